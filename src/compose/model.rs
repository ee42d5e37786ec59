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
}

/// A top-level named volume: a qcow2 file holding one ext4 filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeDecl {
    pub name: String,
    pub size_bytes: u64,
    /// `init_from`: a host folder (resolved against the project folder) whose files fill the
    /// volume when it is created, and never after.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

/// A top-level network (parsed and validated; VM-to-VM networking comes later).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Network {
    pub name: String,
    /// Always `bridge` for now.
    pub driver: String,
    pub subnet: Subnet,
}

/// A network's IPv4 subnet: chosen by the tool, or given as a CIDR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subnet {
    Auto,
    Cidr { address: Ipv4Addr, prefix: u8 },
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
    /// How long `stop` waits for the guest to power off (docker's `stop_grace_period`);
    /// `None`: the command's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stop_grace_period_secs: Option<u64>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub depends_on: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// Shell commands, run once per instance, in order.
    pub provision: Vec<String>,
    pub networks: Vec<String>,
    /// In compose order (named volumes become drives in this order).
    pub volumes: Vec<VolumeMount>,
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
