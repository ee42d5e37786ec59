//! Choosing the accelerator: KVM or TCG.
//!
//! `/dev/kvm` opening is not enough to trust KVM: hosts running a paravirtual KVM (PVM) expose
//! a working `/dev/kvm` while the CPU shows neither `vmx` nor `svm`, and QEMU with
//! `-accel kvm` then hangs right after the firmware banner. So on x86 KVM is picked only when
//! both facts hold (arm64 CPUs have no such flag: there `/dev/kvm` is trusted). KVM also runs
//! only guests of the host's own architecture. Everything else runs under TCG, which is slow
//! but always works.

use std::fmt;
use std::str::FromStr;

use super::arch::Arch;

/// The accelerator QEMU is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The value of `-machine …,accel=`.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// What the user asked for: the per-VM `accel:` key, or `--accel` (`$QEMU_COMPOSE_ACCEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelMode {
    /// KVM when the host can really run it, else TCG.
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for AccelMode {
    type Err = AccelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(AccelMode::Auto),
            "kvm" => Ok(AccelMode::Kvm),
            "tcg" => Ok(AccelMode::Tcg),
            _ => Err(AccelError::BadMode(s.to_owned())),
        }
    }
}

/// The decision and the one-line reason `doctor` prints and `up` warns with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// The host facts the decision rests on, gathered by [`probe_host`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProbe {
    /// The host's architecture: KVM runs guests of this one only.
    pub arch: Arch,
    /// `Ok` when `/dev/kvm` opened read-write, else why it did not.
    pub kvm_device: Result<(), String>,
    /// `vmx` or `svm` when `/proc/cpuinfo` lists it, else `None`.
    pub cpu_virt_flag: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccelError {
    #[error("unknown accelerator {0:?}: expected auto, kvm or tcg")]
    BadMode(String),
    #[error("KVM was requested by {requested_by} but cannot be used: {why}")]
    KvmUnusable { requested_by: String, why: String },
}

/// Reads `/dev/kvm` and `/proc/cpuinfo`. Never fails: an unreadable fact counts as absent.
pub fn probe_host(arch: Arch) -> HostProbe {
    let kvm_device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm cannot be opened read-write ({e})"));
    let cpu_virt_flag = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| virt_flag(&text));
    HostProbe {
        arch,
        kvm_device,
        cpu_virt_flag,
    }
}

/// Finds `vmx` or `svm` among the `flags` lines of a `/proc/cpuinfo` text.
pub fn virt_flag(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .filter_map(|line| line.split_once(':'))
        .filter(|(key, _)| key.trim() == "flags")
        .flat_map(|(_, flags)| flags.split_whitespace())
        .find(|flag| *flag == "vmx" || *flag == "svm")
        .map(str::to_owned)
}

/// Decides the accelerator for a guest of architecture `guest`. `override_mode` (the user's
/// `--accel` or `$QEMU_COMPOSE_ACCEL`; empty means unset) wins over `requested` (the VM's
/// `accel:` key), which wins over the guess.
pub fn decide(
    guest: Arch,
    requested: AccelMode,
    override_mode: Option<&str>,
    probe: &HostProbe,
) -> Result<AccelChoice, AccelError> {
    let (mode, requested_by) = match override_mode.map(str::trim).filter(|s| !s.is_empty()) {
        Some(text) => (text.parse()?, "--accel/QEMU_COMPOSE_ACCEL"),
        None => (requested, "the VM's accel key"),
    };
    let kvm_problem = kvm_problem(guest, probe);
    match mode {
        AccelMode::Tcg => Ok(AccelChoice {
            accel: Accel::Tcg,
            reason: format!("TCG requested by {requested_by}"),
        }),
        AccelMode::Kvm => match kvm_problem {
            None => Ok(AccelChoice {
                accel: Accel::Kvm,
                reason: format!("KVM requested by {requested_by}"),
            }),
            Some(why) => Err(AccelError::KvmUnusable {
                requested_by: requested_by.to_owned(),
                why,
            }),
        },
        AccelMode::Auto => Ok(match kvm_problem {
            None => AccelChoice {
                accel: Accel::Kvm,
                reason: match &probe.cpu_virt_flag {
                    Some(flag) => format!("KVM: /dev/kvm opens read-write and the CPU has {flag}"),
                    None => "KVM: /dev/kvm opens read-write".to_owned(),
                },
            },
            Some(why) => AccelChoice {
                accel: Accel::Tcg,
                reason: format!("TCG (slow): {why}"),
            },
        }),
    }
}

/// Why KVM cannot run a `guest` on this host, or `None` when it can.
fn kvm_problem(guest: Arch, probe: &HostProbe) -> Option<String> {
    if guest != probe.arch {
        return Some(format!(
            "the guest is {guest} and the host {}: KVM runs only guests of the host's architecture",
            probe.arch
        ));
    }
    if let Err(why) = &probe.kvm_device {
        return Some(why.clone());
    }
    if probe.arch == Arch::X86_64 && probe.cpu_virt_flag.is_none() {
        return Some(
            "/dev/kvm opens but /proc/cpuinfo shows neither vmx nor svm \
             (a paravirtual KVM host, where QEMU hangs under -accel kvm)"
                .to_owned(),
        );
    }
    None
}

impl fmt::Display for AccelChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(kvm: bool, flag: Option<&str>) -> HostProbe {
        HostProbe {
            arch: Arch::X86_64,
            kvm_device: if kvm {
                Ok(())
            } else {
                Err("/dev/kvm cannot be opened read-write (No such file or directory)".into())
            },
            cpu_virt_flag: flag.map(str::to_owned),
        }
    }

    #[test]
    fn decision_table() {
        use Accel::*;
        use AccelMode as M;
        /// (requested, override, kvm opens, flag) -> Some(accel), or None for an error.
        type Row = (
            AccelMode,
            Option<&'static str>,
            bool,
            Option<&'static str>,
            Option<Accel>,
        );
        let rows: &[Row] = &[
            (M::Auto, None, true, Some("vmx"), Some(Kvm)),
            (M::Auto, None, true, Some("svm"), Some(Kvm)),
            (M::Auto, None, true, None, Some(Tcg)), // this machine: PVM
            (M::Auto, None, false, Some("vmx"), Some(Tcg)),
            (M::Auto, None, false, None, Some(Tcg)),
            (M::Tcg, None, true, Some("vmx"), Some(Tcg)),
            (M::Kvm, None, true, Some("vmx"), Some(Kvm)),
            (M::Kvm, None, true, None, None),
            (M::Kvm, None, false, Some("svm"), None),
            (M::Kvm, Some("tcg"), true, None, Some(Tcg)),
            (M::Tcg, Some("KVM"), true, Some("vmx"), Some(Kvm)),
            (M::Tcg, Some("kvm"), true, None, None),
            (M::Tcg, Some(""), true, Some("vmx"), Some(Tcg)),
            (M::Kvm, Some("auto"), true, None, Some(Tcg)),
        ];
        for (requested, over, kvm, flag, want) in rows {
            let got = decide(Arch::X86_64, *requested, *over, &probe(*kvm, *flag));
            assert_eq!(
                got.as_ref().ok().map(|c| c.accel),
                *want,
                "{requested:?} {over:?} kvm={kvm} flag={flag:?}: {got:?}"
            );
        }
    }

    #[test]
    fn reasons_explain_the_choice() {
        let pvm = decide(Arch::X86_64, AccelMode::Auto, None, &probe(true, None)).unwrap();
        assert!(pvm.reason.contains("neither vmx nor svm"), "{}", pvm.reason);
        let err = decide(Arch::X86_64, AccelMode::Kvm, None, &probe(true, None)).unwrap_err();
        assert!(err.to_string().contains("accel key"), "{err}");
        assert!(err.to_string().contains("neither vmx nor svm"), "{err}");
        let err = decide(
            Arch::X86_64,
            AccelMode::Auto,
            Some("kvm"),
            &probe(false, None),
        )
        .unwrap_err();
        assert!(err.to_string().contains("QEMU_COMPOSE_ACCEL"), "{err}");
        assert!(
            err.to_string().contains("/dev/kvm cannot be opened"),
            "{err}"
        );
        let tcg = decide(
            Arch::X86_64,
            AccelMode::Tcg,
            None,
            &probe(true, Some("vmx")),
        )
        .unwrap();
        assert_eq!(tcg.reason, "TCG requested by the VM's accel key");
    }

    #[test]
    fn kvm_runs_only_the_hosts_architecture() {
        let x86 = probe(true, Some("vmx"));
        let choice = decide(Arch::Aarch64, AccelMode::Auto, None, &x86).unwrap();
        assert_eq!(choice.accel, Accel::Tcg);
        assert_eq!(
            choice.reason,
            "TCG (slow): the guest is aarch64 and the host x86_64: KVM runs only guests of the host's architecture"
        );
        let err = decide(Arch::Aarch64, AccelMode::Kvm, None, &x86).unwrap_err();
        assert!(err.to_string().contains("guest is aarch64"), "{err}");
        // An arm64 host has no vmx/svm flag: a working /dev/kvm is enough there.
        let arm = HostProbe {
            arch: Arch::Aarch64,
            ..probe(true, None)
        };
        let choice = decide(Arch::Aarch64, AccelMode::Auto, None, &arm).unwrap();
        assert_eq!(choice.accel, Accel::Kvm);
        assert_eq!(choice.reason, "KVM: /dev/kvm opens read-write");
        let choice = decide(Arch::X86_64, AccelMode::Auto, None, &arm).unwrap();
        assert_eq!(choice.accel, Accel::Tcg);
    }

    #[test]
    fn bad_override_is_an_error() {
        let err = decide(
            Arch::X86_64,
            AccelMode::Auto,
            Some("hvf"),
            &probe(true, Some("vmx")),
        )
        .unwrap_err();
        assert_eq!(err, AccelError::BadMode("hvf".into()));
    }

    #[test]
    fn cpuinfo_flags() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme vmx sse\nbugs\t\t: spectre\n";
        assert_eq!(virt_flag(intel).as_deref(), Some("vmx"));
        let amd = "flags\t\t: fpu svm\n";
        assert_eq!(virt_flag(amd).as_deref(), Some("svm"));
        // "vmx" in another field or as part of a word does not count.
        let pvm = "model name\t: vmx svm\nflags\t\t: fpu hypervisor vmxx\n";
        assert_eq!(virt_flag(pvm), None);
    }

    #[test]
    fn this_host_never_picks_kvm_without_flags() {
        // The engine hands in the host's architecture; x86_64 here, the one whose CPU flags
        // (`vmx`, `svm`) this reads.
        let probe = probe_host(Arch::X86_64);
        let choice = decide(probe.arch, AccelMode::Auto, None, &probe).unwrap();
        if probe.cpu_virt_flag.is_none() {
            assert_eq!(choice.accel, Accel::Tcg);
        }
    }
}
