//! Guest architectures: which `qemu-system-*` runs them, the UEFI firmware an aarch64 guest
//! boots from, and the cheap look at a kernel file that tells its architecture.
//!
//! x86_64 guests boot with QEMU's built-in SeaBIOS. aarch64 guests on the `virt` machine
//! have no built-in firmware: a cloud image needs UEFI (EDK2 "AAVMF") in the machine's
//! first pflash device and a writable variable store in the second, both exactly 64 MiB.
//! The store starts as a sparse file of zeros, which EDK2 formats on its first boot (so no
//! template has to be found and copied). Direct kernel boot needs neither.

use std::fmt;
use std::path::{Path, PathBuf};

/// A guest (or host) CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

/// The size of each pflash device of QEMU's aarch64 `virt` machine; QEMU refuses a firmware
/// or variable store image of any other size.
pub const PFLASH_SIZE: u64 = 64 << 20;

/// Where distributions install 64 MiB aarch64 EDK2 images: Debian and Ubuntu
/// (`qemu-efi-aarch64`), then QEMU's own install (`make install`, Fedora's `edk2-aarch64`
/// symlinks there too). Debian's `/usr/share/qemu-efi-aarch64/QEMU_EFI.fd` is the same code
/// at 2 MiB, which pflash does not take, so it is not listed.
pub const AARCH64_FIRMWARE: &[&str] = &[
    "/usr/share/AAVMF/AAVMF_CODE.fd",
    "/usr/share/qemu/edk2-aarch64-code.fd",
];

/// The package that ships the firmware on Debian.
pub const AARCH64_FIRMWARE_PACKAGE: &str = "qemu-efi-aarch64";

impl Arch {
    /// `uname -m`'s spelling, which is also the compose file's: QEMU names each system
    /// emulator after the architecture it runs. (The host's architecture is the compose
    /// model's default, which the engine hands down.)
    pub fn as_str(self) -> &'static str {
        &self.qemu_binary()["qemu-system-".len()..]
    }

    /// The QEMU system emulator for guests of this architecture.
    pub fn qemu_binary(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Aarch64 => "qemu-system-aarch64",
        }
    }

    /// The Debian package of [`Arch::qemu_binary`].
    pub fn qemu_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86",
            Arch::Aarch64 => "qemu-system-arm",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many bytes of a kernel file [`kernel_arch`] looks at.
pub const KERNEL_HEAD_LEN: usize = 0x206;

/// The architecture a kernel file is for, when its header says: an x86 bzImage has `HdrS` at
/// 0x202, an arm64 `Image` has `ARM\x64` at 56. A compressed kernel (Debian's arm64 `vmlinuz`
/// is gzip) says nothing: `None`.
pub fn kernel_arch(head: &[u8]) -> Option<Arch> {
    if head.get(0x202..0x206) == Some(b"HdrS") {
        Some(Arch::X86_64)
    } else if head.get(56..60) == Some(b"ARM\x64") {
        Some(Arch::Aarch64)
    } else {
        None
    }
}

/// Why no firmware could be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FirmwareError {
    #[error(
        "no aarch64 UEFI firmware found (tried {}); install the {AARCH64_FIRMWARE_PACKAGE} package, or name a 64 MiB EDK2 code image with the VM's `firmware:` key or QEMU_COMPOSE_AARCH64_FIRMWARE",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotFound { tried: Vec<PathBuf> },
    #[error("firmware {path:?} (from {from}) cannot be read: {why}")]
    Unreadable {
        path: PathBuf,
        from: &'static str,
        why: String,
    },
    #[error(
        "firmware {path:?} (from {from}) is {size} bytes; the aarch64 virt machine's flash takes an image of exactly 64 MiB (Debian: /usr/share/AAVMF/AAVMF_CODE.fd)"
    )]
    WrongSize {
        path: PathBuf,
        from: &'static str,
        size: u64,
    },
}

/// The aarch64 firmware code image: `chosen` (the user's path and where it came from) if
/// given, else the first of `candidates` that exists. It must be exactly [`PFLASH_SIZE`].
pub fn find_aarch64_firmware(
    chosen: Option<(&Path, &'static str)>,
    candidates: &[&str],
) -> Result<PathBuf, FirmwareError> {
    let (path, from) = match chosen {
        Some(chosen) => chosen,
        None => candidates
            .iter()
            .map(Path::new)
            .find(|p| p.exists())
            .map(|p| (p, "the firmware search"))
            .ok_or_else(|| FirmwareError::NotFound {
                tried: candidates.iter().map(PathBuf::from).collect(),
            })?,
    };
    let size = std::fs::metadata(path)
        .map_err(|e| FirmwareError::Unreadable {
            path: path.to_owned(),
            from,
            why: e.to_string(),
        })?
        .len();
    if size != PFLASH_SIZE {
        return Err(FirmwareError::WrongSize {
            path: path.to_owned(),
            from,
            size,
        });
    }
    Ok(path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_headers_tell_their_arch() {
        let mut bz = vec![0u8; KERNEL_HEAD_LEN];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kernel_arch(&bz), Some(Arch::X86_64));
        let mut image = vec![0u8; 64];
        image[56..60].copy_from_slice(b"ARM\x64");
        assert_eq!(kernel_arch(&image), Some(Arch::Aarch64));
        // gzip (Debian's arm64 vmlinuz), or too short to say.
        assert_eq!(kernel_arch(&[0x1f, 0x8b, 8, 0]), None);
        assert_eq!(kernel_arch(&[]), None);
    }

    #[test]
    fn firmware_search_checks_sizes() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, len: u64| {
            let p = dir.path().join(name);
            std::fs::File::create(&p).unwrap().set_len(len).unwrap();
            p
        };
        let code = file("CODE.fd", PFLASH_SIZE);
        let small = file("QEMU_EFI.fd", 2 << 20);
        let c = code.to_str().unwrap();

        assert_eq!(
            find_aarch64_firmware(None, &["/nonexistent.fd", c]),
            Ok(code.clone())
        );
        let err = find_aarch64_firmware(None, &["/nonexistent.fd"]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("/nonexistent.fd"), "{text}");
        assert!(text.contains("qemu-efi-aarch64"), "{text}");
        assert!(text.contains("QEMU_COMPOSE_AARCH64_FIRMWARE"), "{text}");

        let err = find_aarch64_firmware(Some((&small, "the VM's firmware key")), &[c]).unwrap_err();
        assert!(
            matches!(err, FirmwareError::WrongSize { size, .. } if size == 2 << 20),
            "{err}"
        );
        assert!(err.to_string().contains("firmware key"), "{err}");
        assert_eq!(find_aarch64_firmware(Some((&code, "x")), &[]), Ok(code));
    }
}
