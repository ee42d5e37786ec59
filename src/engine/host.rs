//! Facts about the host and the user's environment that shape what `up` does, gathered once
//! per command so the rest of the engine stays free of global lookups.

use std::ffi::OsString;
use std::path::PathBuf;

use crate::image::ImageCache;
use crate::qemu::accel::{self, HostProbe};
use crate::qemu::arch::Arch;
use crate::qemu::process;

use super::EngineError;

/// The host as the engine sees it.
#[derive(Debug, Clone)]
pub struct HostEnv {
    /// The QEMU binary the user named (`--qemu`, `$QEMU_COMPOSE_QEMU`) for VMs of the host's
    /// architecture; else, and for the others, `qemu-system-<arch>` on `$PATH`. Found lazily
    /// because only starting VMs needs it.
    pub qemu_override: Option<OsString>,
    /// The aarch64 UEFI code image the user named (`--aarch64-firmware`,
    /// `$QEMU_COMPOSE_AARCH64_FIRMWARE`), used by VMs without a `firmware:` key.
    pub aarch64_firmware: Option<PathBuf>,
    /// `$PATH`.
    pub path: Option<OsString>,
    /// The accelerator the user asked for every VM (`--accel`, `$QEMU_COMPOSE_ACCEL`).
    pub accel_override: Option<String>,
    /// `$XDG_RUNTIME_DIR`, where sockets go when the project path is too long.
    pub runtime_dir: Option<PathBuf>,
    /// The user qemu-compose runs as.
    pub uid: u32,
    /// The KVM facts.
    pub probe: HostProbe,
    /// The image cache.
    pub images: ImageCache,
}

impl HostEnv {
    /// Reads the host and the process environment (`$PATH`, the XDG folders). The user's
    /// settings `qemu_override` and `accel_override` come from the command line, which also
    /// reads their `QEMU_COMPOSE_*` variables.
    pub fn from_process(
        qemu_override: Option<OsString>,
        accel_override: Option<String>,
        aarch64_firmware: Option<PathBuf>,
    ) -> Result<Self, EngineError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Ok(Self {
            qemu_override,
            aarch64_firmware,
            path: std::env::var_os("PATH"),
            accel_override,
            runtime_dir: var("XDG_RUNTIME_DIR")
                .map(PathBuf::from)
                .filter(|p| p.is_absolute()),
            uid: rustix::process::getuid().as_raw(),
            probe: accel::probe_host(crate::compose::Arch::host().into()),
            images: ImageCache::new(ImageCache::default_dir(var)?),
        })
    }

    /// Whether qemu-compose (and so QEMU) runs as root.
    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    /// The QEMU binary for guests of architecture `arch`.
    pub fn qemu(&self, arch: Arch) -> Result<PathBuf, EngineError> {
        let override_bin = self
            .qemu_override
            .as_deref()
            .filter(|_| arch == self.probe.arch);
        Ok(process::find_qemu(
            override_bin,
            arch,
            self.probe.arch,
            self.path.as_deref(),
        )?)
    }
}
