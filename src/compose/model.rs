//! Phase 2 output: the validated model. Defaults are applied, sizes are bytes, paths are
//! absolute. Everything downstream (plan, seed, argv) reads only these types.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use serde::{Serialize, Serializer};

/// A validated compose project.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Project {
    pub name: String,
    /// Absolute project directory (the compose file's directory).
    pub dir: PathBuf,
    /// Absolute path of the compose file.
    pub file: PathBuf,
    /// In compose order.
    pub vms: Vec<Vm>,
    /// Top-level named volumes, in compose order.
    pub volumes: Vec<VolumeDecl>,
    pub networks: Vec<Network>,
    /// What loading found worth saying that is no error (an unset `${VAR}`); the CLI prints
    /// them. Not part of the model `config` shows.
    #[serde(skip)]
    pub warnings: Vec<super::ComposeError>,
    /// VMs of the file left out by [`Project::with_profiles`]: not orphans, just not used.
    #[serde(skip)]
    pub inactive: Vec<String>,
    /// Where each field was written, for errors found after validation.
    #[serde(skip)]
    pub places: super::Places,
}

impl Project {
    /// VMs in start order: each after the VMs it depends on, compose order among equals.
    /// (Stop in the reverse order.)
    pub fn start_order(&self) -> Vec<&Vm> {
        let mut started: Vec<&Vm> = Vec::with_capacity(self.vms.len());
        let mut pending: Vec<&Vm> = self.vms.iter().collect();
        while !pending.is_empty() {
            let ready = pending.iter().position(|vm| {
                vm.depends_on
                    .iter()
                    .all(|dep| started.iter().any(|s| &s.name == dep))
            });
            // Validation refuses cycles; should one slip through, keep compose order.
            started.push(pending.remove(ready.unwrap_or(0)));
        }
        started
    }

    pub fn vm(&self, name: &str) -> Option<&Vm> {
        self.vms.iter().find(|vm| vm.name == name)
    }

    /// Whether the compose file defines `name`, used or not.
    pub fn defines(&self, name: &str) -> bool {
        self.vm(name).is_some() || self.inactive.iter().any(|n| n == name)
    }

    /// Leaves out the VMs whose `profiles:` are all inactive (docs/compose.md, "Profiles").
    /// A VM is used when it has no profiles, when one of its profiles is in `active`, when it
    /// is in `named` (the VMs a command names), or when a VM that is used depends on it.
    pub fn with_profiles(mut self, active: &[String], named: &[String]) -> Project {
        let mut used: Vec<&str> = self
            .vms
            .iter()
            .filter(|vm| {
                vm.profiles.is_empty()
                    || vm.profiles.iter().any(|p| active.contains(p))
                    || named.contains(&vm.name)
            })
            .map(|vm| vm.name.as_str())
            .collect();
        let mut i = 0;
        while let Some(name) = used.get(i).copied() {
            for dep in self.vm(name).map_or(&[][..], |vm| &vm.depends_on) {
                if !used.contains(&dep.as_str()) {
                    used.push(dep);
                }
            }
            i += 1;
        }
        let used: Vec<String> = used.into_iter().map(str::to_owned).collect();
        let (kept, left_out): (Vec<Vm>, Vec<Vm>) =
            self.vms.into_iter().partition(|vm| used.contains(&vm.name));
        self.vms = kept;
        self.inactive = left_out.into_iter().map(|vm| vm.name).collect();
        self
    }
}

/// A top-level named volume: a qcow2 file holding one ext4 filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeDecl {
    pub name: String,
    pub size_bytes: u64,
    /// `init_from`: a host folder or uncompressed tar archive (resolved against the project
    /// folder) whose files fill the volume when it is created, and never after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

/// A top-level network: an isolated Ethernet segment between the VMs on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    pub name: String,
    /// Always `bridge` (accepted for compose files written for docker; it means this).
    pub driver: String,
    pub subnet: Subnet,
}

/// A network's IPv4 subnet: chosen by the tool, or given as a CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subnet {
    Auto,
    Cidr { address: Ipv4Addr, prefix: u8 },
}

impl Subnet {
    /// The host addresses of a fixed subnet, as numbers: all but the network and broadcast
    /// addresses. Empty for `auto`.
    pub fn hosts(self) -> std::ops::Range<u32> {
        match self {
            Subnet::Auto => 0..0,
            Subnet::Cidr { address, prefix } => {
                let first = u32::from(address);
                let size = 1u32 << (32 - u32::from(prefix));
                first + 1..first + size - 1
            }
        }
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subnet::Auto => f.write_str("auto"),
            Subnet::Cidr { address, prefix } => write!(f, "{address}/{prefix}"),
        }
    }
}

impl Serialize for Subnet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One VM, with every default applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vm {
    pub name: String,
    pub image: ImageSource,
    /// `sha256:<64 lowercase hex>`.
    pub image_checksum: Option<String>,
    pub cpu: u32,
    pub memory_mib: u64,
    pub disk_size_bytes: u64,
    pub user: String,
    /// True when `user` was not written and was guessed from the image name.
    pub user_guessed: bool,
    pub ports: Vec<PortForward>,
    /// Fixed host port for SSH; `None`: allocated from 2222 upward at `up`.
    pub ssh_port: Option<u16>,
    pub accel: Accel,
    /// `None`: the host's architecture. Left out of the serialised model when unset, as is
    /// `firmware`, so that the configuration hash of VMs written before these keys existed
    /// stays what it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arch: Option<Arch>,
    /// The UEFI code image of an aarch64 VM booting its image (absolute); `None`: searched
    /// for on the host.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub firmware: Option<PathBuf>,
    /// How long `stop` waits for the guest to power off (docker's `stop_grace_period`);
    /// `None`: the command's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_period_secs: Option<u64>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub depends_on: Vec<String>,
    /// The VMs of `depends_on` that must be healthy, not only started, before this one
    /// starts (`condition: service_healthy`). Left out of the serialised model when empty, as
    /// are `healthcheck` and `profiles`, so that the configuration hash of a VM that uses
    /// none of them stays what it was before they existed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub healthy_dependencies: Vec<String>,
    /// `None`: no check (none written, `disable: true` or `test: ["NONE"]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthcheck: Option<HealthCheck>,
    pub environment: BTreeMap<String, String>,
    /// Shell commands, run once per instance, in order.
    pub provision: Vec<String>,
    /// The project networks the VM is on, in compose order.
    pub networks: Vec<VmNetwork>,
    /// In compose order (named volumes become drives in this order).
    pub volumes: Vec<VolumeMount>,
    /// The VM is used only when one of these profiles is active (none: always).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<String>,
    /// `x-kubevirt:` bind mount rules by guest target, for `export kubevirt` only (left out
    /// when empty, so that the configuration hash does not change).
    #[serde(rename = "x-kubevirt", skip_serializing_if = "BTreeMap::is_empty")]
    pub kubevirt_binds: BTreeMap<String, BindExport>,
}

/// What `export kubevirt` does with one bind mount, which a cluster has no equivalent of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BindExport {
    /// Leave it out of the cluster VM.
    Skip,
    /// Fill a new named volume with the folder's files and mount that instead.
    Volume { name: String, size_bytes: u64 },
}

impl Vm {
    /// The guest's architecture: `arch:`, else the host's.
    pub fn guest_arch(&self) -> Arch {
        self.arch.unwrap_or_else(Arch::host)
    }
}

/// docker's `healthcheck:`, run in the guest over SSH (docs/compose.md, "Health checks").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCheck {
    pub test: HealthTest,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Failures in a row, after the start period, that make the VM unhealthy.
    pub retries: u32,
    /// Failures within this time of the start do not count.
    pub start_period_ms: u64,
    /// The interval within the start period.
    pub start_interval_ms: u64,
}

/// What a health check runs in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthTest {
    /// `["CMD", program, args…]`: the words, each quoted for the guest's shell.
    Cmd(Vec<String>),
    /// `["CMD-SHELL", line]` or a plain string: a shell command line.
    CmdShell(String),
}

/// A VM's place on a project network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmNetwork {
    pub name: String,
    /// A fixed address (inside the network's subnet); `None`: allocated at `up`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ipv4_address: Option<Ipv4Addr>,
    /// More names the VM answers to on this network.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// Where the base image comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageSource {
    /// An `http://` or `https://` URL, downloaded into the cache.
    Url(String),
    /// A local file, absolute (resolved against the project directory).
    Path(PathBuf),
}

/// A host port forwarded to a guest port (user-mode networking).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PortForward {
    /// `None`: all host addresses.
    pub host_ip: Option<IpAddr>,
    pub host_port: u16,
    pub guest_port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// The QEMU accelerator: `auto` uses KVM when /dev/kvm is usable, else TCG.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Auto,
    Kvm,
    Tcg,
}

/// A guest CPU architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    /// The host's architecture (the one qemu-compose was built for): a VM's default.
    pub fn host() -> Arch {
        if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::X86_64
        }
    }

    /// The canonical spelling (`uname -m`'s).
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }
}

/// One entry of a VM's `volumes:`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeMount {
    /// Absolute, normalised path in the guest.
    pub target: String,
    pub read_only: bool,
    pub kind: MountKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum MountKind {
    /// A top-level named volume (a virtio-blk drive holding ext4).
    Named { volume: String },
    /// A host directory or file shared over 9p.
    Bind {
        /// The source as written in the compose file (after interpolation).
        source_written: String,
        /// Absolute and lexically normalised; existence is checked at `up`, not here.
        source: PathBuf,
        automount: bool,
        /// Added to the defaults `trans=virtio,version=9p2000.L,msize=512000`.
        mount_options: Vec<MountOption>,
        /// `None`: chosen at `up` (passthrough as root, none otherwise).
        security_model: Option<SecurityModel>,
    },
}

/// The short form `source:target[:ro]`, as `config` can print it back.
impl fmt::Display for VolumeMount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            MountKind::Named { volume } => write!(f, "{volume}:{}", self.target)?,
            MountKind::Bind { source_written, .. } => {
                write!(f, "{source_written}:{}", self.target)?;
            }
        }
        if self.read_only {
            f.write_str(":ro")?;
        }
        Ok(())
    }
}

/// One `key[=value]` 9p mount option.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountOption {
    pub key: String,
    pub value: Option<String>,
}

impl fmt::Display for MountOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.key),
            None => f.write_str(&self.key),
        }
    }
}

/// QEMU's `-virtfs security_model=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecurityModel {
    Passthrough,
    MappedXattr,
    MappedFile,
    None,
}

impl SecurityModel {
    pub const ALL: [SecurityModel; 4] = [
        SecurityModel::Passthrough,
        SecurityModel::MappedXattr,
        SecurityModel::MappedFile,
        SecurityModel::None,
    ];

    /// The spelling QEMU and the compose file use.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityModel::Passthrough => "passthrough",
            SecurityModel::MappedXattr => "mapped-xattr",
            SecurityModel::MappedFile => "mapped-file",
            SecurityModel::None => "none",
        }
    }
}
