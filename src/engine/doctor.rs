//! `doctor`'s facts: what this host can and cannot do for qemu-compose, and why.
//!
//! Each check is one line, `ok`, `warn` or `FAIL`. Only what makes `up` fail is a `FAIL`: no
//! QEMU, a QEMU without 9p while the project has bind mounts, an accelerator the project
//! demands but the host lacks, a missing QEMU or firmware for the project's aarch64 VMs, a
//! socket path that cannot be made short enough. Slow TCG, a missing ssh client, what guests
//! of the other architecture would lack, and low disk space are warnings.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use indicatif::HumanBytes;

use crate::compose::{MountKind, Project};
use crate::qemu::accel::{self, Accel, AccelError, AccelMode};
use crate::qemu::arch::{self, Arch};
use crate::qemu::argv::MAX_SOCKET_PATH;
use crate::state::{InstancePaths, StateDir};

use super::HostEnv;
use super::workspace::instance_paths;

/// Below this much free space a warning is printed: a cloud image plus a few overlays.
const LOW_SPACE: u64 = 5 << 30;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine.
    Ok,
    /// Works, but worse or not for everything.
    Warn,
    /// `up` would fail.
    Fail,
}

/// One line of the report.
#[derive(Debug, serde::Serialize)]
pub struct Check {
    /// How it came out.
    pub level: Level,
    /// What was checked (`qemu`, `kvm`, `socket path`, ...).
    pub topic: &'static str,
    /// What was found.
    pub text: String,
}

impl Check {
    fn new(level: Level, topic: &'static str, text: impl Into<String>) -> Self {
        Self {
            level,
            topic,
            text: text.into(),
        }
    }
}

/// Checks the host, and with a project its VMs' needs, without changing anything.
pub fn report(host: &HostEnv, project: Option<&Project>) -> Vec<Check> {
    let mut out = Vec::new();
    let uses_9p = project.is_some_and(|p| {
        p.vms.iter().any(|vm| {
            vm.volumes
                .iter()
                .any(|m| matches!(m.kind, MountKind::Bind { .. }))
        })
    });

    let host_arch = host.probe.arch;
    match host.qemu(host_arch) {
        Err(e) => out.push(Check::new(Level::Fail, "qemu", e.to_string())),
        Ok(qemu) => {
            let version = first_line(&qemu, &["--version"]).unwrap_or_else(|e| e);
            out.push(Check::new(
                Level::Ok,
                "qemu",
                format!("{} ({version})", qemu.display()),
            ));
            let uses_networks = project.is_some_and(|p| !p.networks.is_empty());
            out.push(match super::network::qemu_version(&version) {
                Some(v) if v >= super::network::MIN_QEMU => Check::new(
                    Level::Ok,
                    "networks",
                    "-netdev stream with reconnect-ms (QEMU 9.2+): project networks work",
                ),
                _ => Check::new(
                    if uses_networks { Level::Fail } else { Level::Warn },
                    "networks",
                    "project networks need QEMU 9.2 or later (-netdev stream with reconnect-ms); Debian 12 has it in bookworm-backports",
                ),
            });
            out.push(match output(&qemu, &["-device", "help"]) {
                Ok(text) if text.contains("\"virtio-9p-pci\"") => {
                    Check::new(Level::Ok, "9p", "virtio-9p-pci available (bind mounts work)")
                }
                Ok(_) => Check::new(
                    if uses_9p { Level::Fail } else { Level::Warn },
                    "9p",
                    "this QEMU has no virtio-9p-pci, so bind mounts cannot work (Debian: the qemu-system-x86 package has it)",
                ),
                Err(e) => Check::new(Level::Warn, "9p", format!("cannot ask QEMU: {e}")),
            });
        }
    }

    out.push(match &host.probe.kvm_device {
        Err(why) => Check::new(Level::Warn, "kvm", format!("not usable: {why}")),
        Ok(()) => match accel::decide(host_arch, AccelMode::Kvm, None, &host.probe) {
            Ok(_) => Check::new(Level::Ok, "kvm", "usable"),
            Err(AccelError::KvmUnusable { why, .. }) => {
                Check::new(Level::Warn, "kvm", format!("not usable: {why}"))
            }
            Err(e) => Check::new(Level::Warn, "kvm", e.to_string()),
        },
    });
    out.push(
        match accel::decide(
            host_arch,
            AccelMode::Auto,
            host.accel_override.as_deref(),
            &host.probe,
        ) {
            Ok(choice) if choice.accel == Accel::Kvm => {
                Check::new(Level::Ok, "accelerator", choice.reason)
            }
            // The reason is on the kvm line already: said once.
            Ok(choice) if choice.reason.starts_with("TCG (slow)") => Check::new(
                Level::Warn,
                "accelerator",
                "TCG: VMs are emulated, several times slower (why: the kvm line)",
            ),
            Ok(choice) => Check::new(Level::Warn, "accelerator", choice.reason),
            Err(e) => Check::new(Level::Fail, "accelerator", e.to_string()),
        },
    );
    if let Some(p) = project {
        for vm in &p.vms {
            if let Err(e) = accel::decide(
                vm.guest_arch().into(),
                vm.accel.into(),
                host.accel_override.as_deref(),
                &host.probe,
            ) {
                out.push(Check::new(
                    Level::Fail,
                    "accelerator",
                    format!("VM {}: {e}", vm.name),
                ));
            }
        }
    }

    out.extend(other_arch_checks(host, project));

    out.push(match first_line(Path::new("ssh"), &["-V"]) {
        Ok(version) => Check::new(Level::Ok, "ssh", version),
        Err(e) => Check::new(
            Level::Warn,
            "ssh",
            format!(
                "no ssh client ({e}); `qemu-compose ssh` and `up --wait` need it (Debian: apt install openssh-client)"
            ),
        ),
    });

    if let Some(p) = project {
        let state = StateDir::new(&p.dir);
        for vm in &p.vms {
            out.push(socket_check(&instance_paths(&state, host, &vm.name)));
        }
        out.push(space_check("state folder", state.root()));
    }
    out.push(space_check("image cache", host.images.dir()));
    out
}

/// What guests of the architecture other than the host's would run with: their QEMU, the
/// aarch64 UEFI firmware, and the accelerator. `FAIL` only for what the project's VMs need.
fn other_arch_checks(host: &HostEnv, project: Option<&Project>) -> Vec<Check> {
    let mut out = Vec::new();
    let vms = project.map(|p| p.vms.as_slice()).unwrap_or_default();
    let guest = match host.probe.arch {
        Arch::X86_64 => Arch::Aarch64,
        Arch::Aarch64 => Arch::X86_64,
    };
    let used: Vec<&str> = vms
        .iter()
        .filter(|vm| Arch::from(vm.guest_arch()) == guest)
        .map(|vm| vm.name.as_str())
        .collect();
    let needed = |needed: bool| if needed { Level::Fail } else { Level::Warn };
    out.push(match host.qemu(guest) {
        Ok(qemu) => {
            let version = first_line(&qemu, &["--version"]).unwrap_or_else(|e| e);
            Check::new(Level::Ok, "qemu", format!("{} ({version})", qemu.display()))
        }
        Err(e) => Check::new(
            needed(!used.is_empty()),
            "qemu",
            format!("{guest} VMs cannot start: {e}"),
        ),
    });

    // Firmware: only aarch64 VMs booting their image use the host's, whatever the host (a VM
    // naming its own `firmware:` brings it).
    let firmware_users: Vec<&str> = vms
        .iter()
        .filter(|vm| {
            Arch::from(vm.guest_arch()) == Arch::Aarch64
                && vm.kernel.is_none()
                && vm.firmware.is_none()
        })
        .map(|vm| vm.name.as_str())
        .collect();
    let chosen = host
        .aarch64_firmware
        .as_deref()
        .map(|p| (p, "--aarch64-firmware/QEMU_COMPOSE_AARCH64_FIRMWARE"));
    out.push(
        match arch::find_aarch64_firmware(chosen, arch::AARCH64_FIRMWARE) {
            Ok(code) => Check::new(
                Level::Ok,
                "firmware",
                format!(
                    "aarch64 UEFI {} (cloud images boot; kernel: boots need none)",
                    code.display()
                ),
            ),
            Err(e) => Check::new(
                needed(!firmware_users.is_empty()),
                "firmware",
                format!("aarch64 VMs with kernel: only: {e}"),
            ),
        },
    );

    // KVM never runs a guest of another architecture: TCG it is, unless --accel says kvm.
    out.push(
        match accel::decide(guest, AccelMode::Auto, host.accel_override.as_deref(), &host.probe) {
            Ok(_) => Check::new(
                Level::Warn,
                guest.as_str(),
                format!(
                    "TCG (host is {}): {guest} guests are emulated, several times slower than native",
                    host.probe.arch
                ),
            ),
            Err(e) => Check::new(needed(!used.is_empty()), guest.as_str(), e.to_string()),
        },
    );
    out
}

fn socket_check(paths: &InstancePaths) -> Check {
    let socket = &paths.serial_socket;
    let len = socket.as_os_str().len();
    let vm = paths
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let text = format!(
        "VM {vm}: {} is {len} bytes (limit {MAX_SOCKET_PATH}){}",
        socket.display(),
        if paths.sockets_relocated() {
            ", moved out of the deep project folder"
        } else {
            ""
        }
    );
    let level = if len > MAX_SOCKET_PATH {
        Level::Fail
    } else {
        Level::Ok
    };
    Check::new(level, "socket path", text)
}

/// Free space for `path`, measured on its nearest existing ancestor (it may not exist yet).
fn space_check(what: &str, path: &Path) -> Check {
    let existing: PathBuf = path
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"))
        .to_path_buf();
    match rustix::fs::statvfs(&existing) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let level = if free < LOW_SPACE {
                Level::Warn
            } else {
                Level::Ok
            };
            Check::new(
                level,
                "disk space",
                format!("{what} {}: {} free", path.display(), HumanBytes(free)),
            )
        }
        Err(e) => Check::new(
            Level::Warn,
            "disk space",
            format!("{what} {}: cannot measure: {e}", path.display()),
        ),
    }
}

/// Runs `program args` and returns its stdout and stderr together.
fn output(program: &Path, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{} {} failed: {}",
            program.display(),
            args.join(" "),
            text.trim()
        ))
    }
}

/// The first non-empty line of what `program args` prints (ssh -V writes to stderr).
fn first_line(program: &Path, args: &[&str]) -> Result<String, String> {
    let text = output(program, args)?;
    Ok(text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string())
}
