//! The QEMU command line, built by a pure function from plain data.
//!
//! [`LaunchSpec`] holds everything that varies between VMs; [`build_argv`] turns it into the
//! arguments after the binary name, always in the same order, so the result can be
//! golden-tested and recorded in the instance state. Values placed inside a QEMU option list
//! (`key=value,key=value`) have every `,` doubled, which is QEMU's escape, so a path with a
//! comma cannot add or change an option.
//!
//! # Disks: `-blockdev` JSON, the whole chain spelled out
//!
//! Every disk is one `-blockdev` in QEMU's JSON syntax plus a
//! `-device virtio-blk-pci,drive=<node>,serial=…`. Nothing in an image header decides which
//! host file QEMU opens: a qcow2 node always carries its `backing` explicitly, either the
//! base image's node (the instance disk: a read-only `raw` or `qcow2` node over the cached or
//! local image, itself with `"backing": null`) or `"backing": null` (named volumes). The
//! images sit in the project folder, which guests commonly see read-write through a 9p share;
//! with `-drive file=…,format=qcow2` a guest could write a backing file name such as
//! `~/.ssh/id_ed25519` into a header and be handed that host file on the next start.
//! `-drive` can override the backing (`backing.file.filename=…`) but can only say "no backing"
//! with an empty `backing=`, which QEMU deprecates in favour of `"backing": null`, a JSON
//! value only `-blockdev` takes; one form for every disk keeps the argv uniform. (An external
//! data file named in a header cannot be overridden this way; the engine refuses such images
//! before starting QEMU.)
//!
//! The JSON is produced by `serde_json`, so paths are escaped as JSON strings and no `,`
//! doubling applies inside it. Node names are the drive id plus `-file`, `-base` and
//! `-base-file`; ids are checked to be valid QEMU node names (a letter, then letters, digits,
//! `-`, `.`, `_`; short enough for the longest suffix). Read-only disks are read-only at every
//! node, and a base image node is always read-only.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use super::accel::Accel;
use super::arch::Arch;

/// The longest unix socket path QEMU can bind and we can connect to: the kernel's `sun_path`
/// is 108 bytes including the terminating NUL, so 107 usable bytes.
pub const MAX_SOCKET_PATH: usize = 107;

/// Everything QEMU needs to start one VM. All paths must be absolute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchSpec {
    /// Shown by QEMU in window titles and `query-name`; usually `<project>-<vm>`.
    pub name: String,
    /// Picks the machine (`q35` or `virt`); the binary is the caller's choice.
    pub arch: Arch,
    pub accel: Accel,
    pub cpus: u32,
    pub memory_mib: u64,
    /// Direct kernel boot instead of the firmware's boot from the first disk.
    pub kernel: Option<KernelBoot>,
    /// UEFI in pflash (aarch64 cloud images); `None`: QEMU's default firmware, or none.
    pub firmware: Option<Firmware>,
    /// In the order they are attached: instance disk, named volumes, then the seed.
    pub drives: Vec<DriveSpec>,
    /// 9p shares (bind mounts), in the order of the VM's bind mounts.
    pub shares: Vec<ShareSpec>,
    pub net: NetSpec,
    pub qmp_socket: PathBuf,
    pub serial_socket: PathBuf,
    /// The serial console is appended here as well, for `logs`.
    pub serial_log: PathBuf,
    pub pidfile: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelBoot {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
}

/// The two pflash images of the aarch64 `virt` machine, each exactly 64 MiB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    /// The EDK2 code, opened read-only (shared by every VM).
    pub code: PathBuf,
    /// The instance's own UEFI variable store, writable.
    pub vars: PathBuf,
}

/// Image formats QEMU is told about explicitly (never probed by QEMU, which would let a raw
/// image that looks like qcow2 name a backing file on the host).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriveFormat {
    Qcow2,
    Raw,
}

impl DriveFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            DriveFormat::Qcow2 => "qcow2",
            DriveFormat::Raw => "raw",
        }
    }
}

/// One virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveSpec {
    /// The `-blockdev node-name` the device is connected to; unique per VM and a valid QEMU
    /// node name of at most [`MAX_DRIVE_ID`] bytes.
    pub id: String,
    pub path: PathBuf,
    pub format: DriveFormat,
    /// The virtio serial the guest sees as `/dev/disk/by-id/virtio-<serial>` (at most 20 bytes).
    pub serial: String,
    pub read_only: bool,
    /// For a qcow2 drive, the image QEMU reads below it; `None` means no backing image at all,
    /// whatever the qcow2 header names. Raw drives have none.
    pub backing: Option<BaseImage>,
}

/// The read-only image below a qcow2 overlay. Given to QEMU without a backing of its own:
/// a base image that needs one must be flattened first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseImage {
    pub path: PathBuf,
    pub format: DriveFormat,
}

/// The longest drive id: QEMU node names have at most 31 bytes, and the longest one derived
/// from an id is `<id>-base-file`.
pub const MAX_DRIVE_ID: usize = 31 - "-base-file".len();

/// One host directory shared with the guest over virtio-9p.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareSpec {
    /// The fsdev id; unique per VM.
    pub id: String,
    pub path: PathBuf,
    /// The mount tag the guest mounts (`mount0`, `mount1`, …).
    pub tag: String,
    pub security_model: SecurityModel,
    pub read_only: bool,
}

/// User-mode networking: one NIC, SSH forwarded from the host's loopback, plus `ports:`;
/// then one more NIC per project network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetSpec {
    pub mac: MacAddress,
    pub ssh_port: u16,
    pub ports: Vec<PortForward>,
    /// In the order the guest sees them (after the user-mode NIC).
    pub links: Vec<LinkSpec>,
}

/// A NIC on a project network: a `-netdev stream` client of the network switch's unix
/// socket. QEMU connects again every second while the switch is away (`reconnect-ms`, QEMU
/// 9.2+), so a VM may start before the switch and survives its restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSpec {
    pub mac: MacAddress,
    pub socket: PathBuf,
}

/// The protocol of a `hostfwd` rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The spelling in a `hostfwd` rule.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// How a 9p share maps guest file ownership and modes onto the host (`-virtfs
/// security_model=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityModel {
    Passthrough,
    MappedXattr,
    MappedFile,
    None,
}

impl SecurityModel {
    /// The spelling QEMU takes.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityModel::Passthrough => "passthrough",
            SecurityModel::MappedXattr => "mapped-xattr",
            SecurityModel::MappedFile => "mapped-file",
            SecurityModel::None => "none",
        }
    }
}

/// A `hostfwd` rule. QEMU's user-mode network binds only IPv4 host addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortForward {
    pub protocol: Protocol,
    /// `None` listens on every host address, as `ports: ["8080:80"]` does in docker compose.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub guest_port: u16,
}

impl PortForward {
    /// The rule text after `hostfwd=`, which is also how QEMU names the rule in its errors.
    pub fn rule(&self) -> String {
        let ip = self.host_ip.map(|ip| ip.to_string()).unwrap_or_default();
        format!(
            "{}:{ip}:{}-:{}",
            self.protocol.as_str(),
            self.host_port,
            self.guest_port
        )
    }
}

/// An Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddress(pub [u8; 6]);

impl MacAddress {
    /// A stable address in QEMU's locally administered `52:54:00` range, derived from a name
    /// (e.g. `<project>/<vm>`), so a VM keeps its address, and its DHCP lease, across restarts.
    pub fn derived_from(name: &str) -> Self {
        use sha2::{Digest, Sha256};
        let hash = Sha256::digest(name.as_bytes());
        MacAddress([0x52, 0x54, 0x00, hash[0], hash[1], hash[2]])
    }
}

impl fmt::Display for MacAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgvError {
    #[error("{what} path {path:?} is not valid UTF-8, which QEMU's command line needs here")]
    NotUtf8 { what: &'static str, path: PathBuf },
    #[error("{what} path {path:?} must be absolute")]
    Relative { what: &'static str, path: PathBuf },
    #[error(
        "{what} path {path:?} is {len} bytes, longer than the {MAX_SOCKET_PATH} bytes a unix socket path may have"
    )]
    SocketPathTooLong {
        what: &'static str,
        path: PathBuf,
        len: usize,
    },
    #[error("{what} {value:?} contains a NUL byte")]
    Nul { what: &'static str, value: String },
    #[error("{what} must be at least 1")]
    Zero { what: &'static str },
    #[error(
        "drive id {0:?} is not a QEMU node name (a letter, then up to {max} letters, digits, `-`, `.` or `_`)",
        max = MAX_DRIVE_ID - 1
    )]
    BadDriveId(String),
    #[error("drive {0:?} is raw and cannot have a backing image")]
    RawWithBacking(String),
}

/// Doubles every `,`: QEMU's escape inside `key=value,…` option lists.
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// The arguments after the binary name. Pure: same spec, same list.
pub fn build_argv(spec: &LaunchSpec) -> Result<Vec<String>, ArgvError> {
    if spec.cpus == 0 {
        return Err(ArgvError::Zero { what: "cpu count" });
    }
    if spec.memory_mib == 0 {
        return Err(ArgvError::Zero { what: "memory" });
    }
    let mut args = Args::default();

    args.push([
        "-name",
        &format!("guest={}", escape(&text("VM name", &spec.name)?)),
    ]);
    // aarch64: gic-version=max gives GICv3 (more than 8 vCPUs) under TCG and the host's GIC
    // under KVM; under TCG pauth-impdef=on swaps the architected pointer-authentication hash
    // for a cheap one, which speeds emulation up several times.
    let (machine, cpu) = match (spec.arch, spec.accel) {
        (Arch::X86_64, Accel::Kvm) => ("q35", "host"),
        (Arch::X86_64, Accel::Tcg) => ("q35", "max"),
        (Arch::Aarch64, Accel::Kvm) => ("virt,gic-version=max", "host"),
        (Arch::Aarch64, Accel::Tcg) => ("virt,gic-version=max", "max,pauth-impdef=on"),
    };
    let mut machine = format!("{machine},accel={}", spec.accel.as_str());
    if spec.firmware.is_some() {
        machine.push_str(",pflash0=firmware-code,pflash1=firmware-vars");
    }
    args.push(["-machine", &machine, "-cpu", cpu]);
    if let Some(firmware) = &spec.firmware {
        for (id, file, read_only) in [
            ("firmware-code", &firmware.code, true),
            ("firmware-vars", &firmware.vars, false),
        ] {
            let node = serde_json::json!({
                "driver": "file",
                "node-name": id,
                "filename": path("firmware", file)?,
                "read-only": read_only,
            });
            args.push(["-blockdev", &node.to_string()]);
        }
    }
    args.push(["-smp", &spec.cpus.to_string()]);
    args.push(["-m", &spec.memory_mib.to_string()]);
    // Without -nodefaults QEMU adds an empty CD-ROM, a VGA card and a parallel port.
    args.push(["-nodefaults", "-display", "none"]);

    if let Some(boot) = &spec.kernel {
        // These three are plain arguments, not option lists: no escaping.
        args.push(["-kernel", path("kernel", &boot.kernel)?]);
        if let Some(initrd) = &boot.initrd {
            args.push(["-initrd", path("initrd", initrd)?]);
        }
        if let Some(cmdline) = &boot.cmdline {
            args.push(["-append", &text("kernel command line", cmdline)?]);
        }
    }

    for drive in &spec.drives {
        args.push(["-blockdev", &blockdev(drive)?]);
        // The id is a node name (checked by blockdev()): nothing to escape, escaped anyway.
        let device = format!(
            "virtio-blk-pci,drive={},serial={}",
            escape(&drive.id),
            escape(&text("drive serial", &drive.serial)?)
        );
        args.push(["-device", &device]);
    }

    for share in &spec.shares {
        let mut opts = format!(
            "local,path={},mount_tag={},security_model={},id={}",
            escape(path("share", &share.path)?),
            escape(&text("mount tag", &share.tag)?),
            share.security_model.as_str(),
            escape(&text("share id", &share.id)?)
        );
        if share.read_only {
            opts.push_str(",readonly=on");
        }
        args.push(["-virtfs", &opts]);
    }

    let ssh = PortForward {
        protocol: Protocol::Tcp,
        host_ip: Some(Ipv4Addr::LOCALHOST),
        host_port: spec.net.ssh_port,
        guest_port: 22,
    };
    let mut netdev = "user,id=net0".to_owned();
    for forward in std::iter::once(&ssh).chain(&spec.net.ports) {
        netdev.push_str(",hostfwd=");
        netdev.push_str(&forward.rule());
    }
    // QEMU's default option ROM for virtio-net-pci is iPXE for x86; an aarch64 guest has no
    // use for it (its UEFI drives the NIC itself) and the file may not be installed.
    let romfile = match spec.arch {
        Arch::X86_64 => "",
        Arch::Aarch64 => ",romfile=",
    };
    args.push(["-netdev", &netdev]);
    args.push([
        "-device",
        &format!("virtio-net-pci,netdev=net0,mac={}{romfile}", spec.net.mac),
    ]);
    for (n, link) in spec.net.links.iter().enumerate() {
        let id = format!("link{n}");
        let socket = socket("network socket", &link.socket)?;
        args.push([
            "-netdev",
            &format!(
                "stream,id={id},server=off,addr.type=unix,addr.path={},reconnect-ms=1000",
                escape(socket)
            ),
        ]);
        args.push([
            "-device",
            &format!("virtio-net-pci,netdev={id},mac={}{romfile}", link.mac),
        ]);
    }

    let qmp = socket("QMP socket", &spec.qmp_socket)?;
    args.push(["-qmp", &format!("unix:{},server=on,wait=off", escape(qmp))]);
    let serial = socket("serial socket", &spec.serial_socket)?;
    let chardev = format!(
        "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
        escape(serial),
        escape(path("serial log", &spec.serial_log)?)
    );
    args.push(["-chardev", &chardev, "-serial", "chardev:serial0"]);

    args.push(["-daemonize", "-pidfile", path("pidfile", &spec.pidfile)?]);
    Ok(args.0)
}

/// The `-blockdev` JSON of one drive: the format node over its `file` node and, for qcow2,
/// its explicit `backing` (a base node, or `null`).
fn blockdev(drive: &DriveSpec) -> Result<String, ArgvError> {
    use serde_json::{Value, json};
    let id = &drive.id;
    let well_formed = id.len() <= MAX_DRIVE_ID
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !well_formed {
        return Err(ArgvError::BadDriveId(id.clone()));
    }
    let node = |name: String, format: DriveFormat, file: &Path, read_only: bool| {
        let mut node = json!({
            "driver": format.as_str(),
            "node-name": name,
            "read-only": read_only,
            "file": {
                "driver": "file",
                "node-name": format!("{name}-file"),
                "filename": path("drive", file)?,
                "read-only": read_only,
            },
        });
        // The guest's TRIM (fstrim, `mount -o discard`) frees qcow2 clusters and punches
        // holes in the host file, so deleted data gives its space back to the host. QEMU
        // ignores discards unless both nodes allow them; a read-only node never gets one.
        if !read_only {
            node["discard"] = json!("unmap");
            node["file"]["discard"] = json!("unmap");
        }
        Ok::<_, ArgvError>(node)
    };
    let mut top = node(id.clone(), drive.format, &drive.path, drive.read_only)?;
    match (drive.format, &drive.backing) {
        (DriveFormat::Raw, None) => {}
        (DriveFormat::Raw, Some(_)) => return Err(ArgvError::RawWithBacking(id.clone())),
        (DriveFormat::Qcow2, backing) => {
            let backing = match backing {
                None => Value::Null,
                Some(base) => {
                    let mut node = node(format!("{id}-base"), base.format, &base.path, true)?;
                    if base.format == DriveFormat::Qcow2 {
                        node["backing"] = Value::Null;
                    }
                    node
                }
            };
            top["backing"] = backing;
        }
    }
    Ok(top.to_string())
}

#[derive(Default)]
struct Args(Vec<String>);

impl Args {
    fn push<const N: usize>(&mut self, items: [&str; N]) {
        self.0.extend(items.iter().map(|s| (*s).to_owned()));
    }
}

/// A free-text value: anything but NUL, which no argv can carry.
fn text(what: &'static str, value: &str) -> Result<String, ArgvError> {
    if value.contains('\0') {
        return Err(ArgvError::Nul {
            what,
            value: value.to_owned(),
        });
    }
    Ok(value.to_owned())
}

/// An absolute UTF-8 path. Relative paths are refused: QEMU would read `a:b.qcow2` as a
/// protocol prefix, and the answer would depend on QEMU's working directory.
fn path<'a>(what: &'static str, path: &'a Path) -> Result<&'a str, ArgvError> {
    let s = path.to_str().ok_or_else(|| ArgvError::NotUtf8 {
        what,
        path: path.to_owned(),
    })?;
    if !path.is_absolute() {
        return Err(ArgvError::Relative {
            what,
            path: path.to_owned(),
        });
    }
    text(what, s)?;
    Ok(s)
}

/// A path QEMU binds a unix socket on; the caller moves long ones (e.g. under
/// `$XDG_RUNTIME_DIR`) before QEMU would fail with a less helpful message.
fn socket<'a>(what: &'static str, p: &'a Path) -> Result<&'a str, ArgvError> {
    let s = path(what, p)?;
    if s.len() > MAX_SOCKET_PATH {
        return Err(ArgvError::SocketPathTooLong {
            what,
            path: p.to_owned(),
            len: s.len(),
        });
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A plain VM as the engine would describe it, to be varied per test.
    fn plain() -> LaunchSpec {
        let dir = Path::new("/srv/demo/.qemu-compose/web");
        LaunchSpec {
            name: "demo-web".into(),
            arch: Arch::X86_64,
            accel: Accel::Tcg,
            cpus: 2,
            memory_mib: 2048,
            kernel: None,
            firmware: None,
            drives: vec![
                DriveSpec {
                    id: "disk".into(),
                    path: dir.join("disk.qcow2"),
                    format: DriveFormat::Qcow2,
                    serial: "qc-disk".into(),
                    read_only: false,
                    backing: Some(BaseImage {
                        path: "/home/u/.local/share/qemu-compose/images/debian-12.qcow2".into(),
                        format: DriveFormat::Qcow2,
                    }),
                },
                DriveSpec {
                    id: "seed".into(),
                    path: dir.join("seed.img"),
                    format: DriveFormat::Raw,
                    serial: "qc-seed".into(),
                    read_only: true,
                    backing: None,
                },
            ],
            shares: vec![],
            net: NetSpec {
                mac: MacAddress::derived_from("demo/web"),
                ssh_port: 2222,
                ports: vec![],
                links: vec![],
            },
            qmp_socket: dir.join("qmp.sock"),
            serial_socket: dir.join("serial.sock"),
            serial_log: dir.join("serial.log"),
            pidfile: dir.join("qemu.pid"),
        }
    }

    fn volume(name: &str, read_only: bool) -> DriveSpec {
        DriveSpec {
            id: format!("vol-{name}"),
            path: format!("/srv/demo/.qemu-compose/volumes/{name}/volume.qcow2").into(),
            format: DriveFormat::Qcow2,
            serial: format!("qc-vol-{name}"),
            read_only,
            backing: None,
        }
    }

    fn share(n: usize, path: &str, read_only: bool, model: SecurityModel) -> ShareSpec {
        ShareSpec {
            id: format!("fs{n}"),
            path: path.into(),
            tag: format!("mount{n}"),
            security_model: model,
            read_only,
        }
    }

    /// Compares with `tests/golden/argv/<name>.txt` (one argument per line);
    /// `UPDATE_GOLDEN=1` rewrites the file instead.
    fn golden(name: &str, spec: &LaunchSpec) {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/golden/argv")
            .join(format!("{name}.txt"));
        let mut got = build_argv(spec).unwrap().join("\n");
        got.push('\n');
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, &got).unwrap();
        }
        let want = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", file.display()));
        assert_eq!(got, want, "argv differs from {}", file.display());
    }

    #[test]
    fn golden_plain_tcg() {
        golden("plain-tcg", &plain());
    }

    #[test]
    fn golden_plain_kvm() {
        golden(
            "plain-kvm",
            &LaunchSpec {
                accel: Accel::Kvm,
                ..plain()
            },
        );
    }

    #[test]
    fn golden_named_volumes() {
        let mut spec = plain();
        spec.drives.insert(1, volume("pgdata", false));
        spec.drives.insert(2, volume("reference", true));
        golden("named-volumes", &spec);
    }

    #[test]
    fn golden_shares() {
        let mut spec = plain();
        spec.shares = vec![
            share(0, "/srv/demo/config", true, SecurityModel::None),
            // mount1 has automount: false in the compose file: still numbered, still shared.
            share(1, "/srv/demo/scripts", false, SecurityModel::Passthrough),
            share(2, "/srv/demo/odd, dir", false, SecurityModel::MappedXattr),
        ];
        // Tags are emitted as given, in the order given.
        spec.shares.swap(0, 2);
        golden("shares", &spec);
    }

    #[test]
    fn golden_ports() {
        let mut spec = plain();
        spec.net.ssh_port = 2223;
        spec.net.ports = vec![
            PortForward {
                protocol: Protocol::Tcp,
                host_ip: None,
                host_port: 8080,
                guest_port: 80,
            },
            PortForward {
                protocol: Protocol::Tcp,
                host_ip: Some(Ipv4Addr::new(127, 0, 0, 1)),
                host_port: 5433,
                guest_port: 5432,
            },
            PortForward {
                protocol: Protocol::Udp,
                host_ip: Some(Ipv4Addr::new(192, 168, 1, 10)),
                host_port: 5353,
                guest_port: 53,
            },
        ];
        golden("ports", &spec);
    }

    #[test]
    fn golden_networks() {
        let mut spec = plain();
        spec.net.links = ["backend", "front,end"]
            .iter()
            .map(|net| LinkSpec {
                mac: MacAddress::derived_from(&format!("demo/web/{net}")),
                socket: format!("/run/user/1000/qemu-compose/ab12/.net/{net}.sock").into(),
            })
            .collect();
        golden("networks", &spec);
    }

    #[test]
    fn golden_direct_kernel() {
        let spec = LaunchSpec {
            kernel: Some(KernelBoot {
                kernel: "/srv/demo/boot/vmlinuz".into(),
                initrd: Some("/srv/demo/boot/initrd.img".into()),
                cmdline: Some("root=LABEL=rootfs rw console=ttyS0,115200".into()),
            }),
            ..plain()
        };
        golden("direct-kernel", &spec);
    }

    /// An aarch64 VM as `plain()`, with a volume, a share and a project network, so the
    /// golden shows every device on the `virt` machine.
    fn arm64() -> LaunchSpec {
        let mut spec = plain();
        spec.arch = Arch::Aarch64;
        spec.drives.insert(1, volume("pgdata", false));
        spec.shares = vec![share(0, "/srv/demo/config", false, SecurityModel::None)];
        spec.net.links = vec![LinkSpec {
            mac: MacAddress::derived_from("demo/web/backend"),
            socket: "/run/user/1000/qemu-compose/ab12/.net/backend.sock".into(),
        }];
        spec
    }

    #[test]
    fn golden_aarch64_uefi() {
        let spec = LaunchSpec {
            firmware: Some(Firmware {
                code: "/usr/share/AAVMF/AAVMF_CODE.fd".into(),
                vars: "/srv/demo/.qemu-compose/web/efi-vars.fd".into(),
            }),
            ..arm64()
        };
        golden("aarch64-uefi", &spec);
        golden(
            "aarch64-uefi-kvm",
            &LaunchSpec {
                accel: Accel::Kvm,
                ..spec
            },
        );
    }

    #[test]
    fn golden_aarch64_direct_kernel() {
        let spec = LaunchSpec {
            kernel: Some(KernelBoot {
                kernel: "/srv/demo/boot/Image".into(),
                initrd: Some("/srv/demo/boot/initrd.img".into()),
                cmdline: Some("console=ttyAMA0".into()),
            }),
            ..arm64()
        };
        golden("aarch64-direct-kernel", &spec);
    }

    #[test]
    fn commas_are_escaped_everywhere_inside_options() {
        let dir = Path::new("/tmp/a,b c");
        let mut spec = plain();
        spec.name = "x,y".into();
        spec.drives[0].path = dir.join("disk,1.qcow2");
        spec.drives[0].serial = "s,1".into();
        spec.shares = vec![ShareSpec {
            tag: "t,1".into(),
            ..share(0, "/tmp/a,b c/share", false, SecurityModel::None)
        }];
        spec.qmp_socket = dir.join("qmp.sock");
        spec.serial_socket = dir.join("serial.sock");
        spec.serial_log = dir.join("serial,log");
        spec.pidfile = dir.join("qemu,pid");
        let args = build_argv(&spec).unwrap();
        let after = |flag: &str| {
            let i = args.iter().position(|a| a == flag).unwrap();
            args[i + 1].clone()
        };
        assert_eq!(after("-name"), "guest=x,,y");
        // JSON has its own escaping: the comma stays single there.
        let node: serde_json::Value = serde_json::from_str(&after("-blockdev")).unwrap();
        assert_eq!(node["file"]["filename"], "/tmp/a,b c/disk,1.qcow2");
        assert_eq!(after("-device"), "virtio-blk-pci,drive=disk,serial=s,,1");
        assert_eq!(
            after("-virtfs"),
            "local,path=/tmp/a,,b c/share,mount_tag=t,,1,security_model=none,id=fs0"
        );
        assert_eq!(
            after("-qmp"),
            "unix:/tmp/a,,b c/qmp.sock,server=on,wait=off"
        );
        assert_eq!(
            after("-chardev"),
            "socket,id=serial0,path=/tmp/a,,b c/serial.sock,server=on,wait=off,\
             logfile=/tmp/a,,b c/serial,,log,logappend=on"
        );
        // -pidfile takes a plain path, not an option list.
        assert_eq!(after("-pidfile"), "/tmp/a,b c/qemu,pid");
    }

    proptest::proptest! {
        /// Whatever the paths, QEMU's JSON parser reads back exactly them and no extra key.
        #[test]
        fn blockdev_paths_read_back_intact(
            name in "[^\\x00/]{1,40}",
            base in "[^\\x00]{1,40}",
        ) {
            let mut spec = plain();
            spec.drives.truncate(1);
            spec.drives[0].path = Path::new("/tmp").join(&name);
            spec.drives[0].backing.as_mut().unwrap().path = Path::new("/b").join(&base);
            let args = build_argv(&spec).unwrap();
            let json = &args[args.iter().position(|a| a == "-blockdev").unwrap() + 1];
            let node: serde_json::Value = serde_json::from_str(json).unwrap();
            let want_top = format!("/tmp/{name}");
            proptest::prop_assert_eq!(node["file"]["filename"].as_str(), Some(want_top.as_str()));
            let want_base = Path::new("/b").join(&base);
            proptest::prop_assert_eq!(node["backing"]["file"]["filename"].as_str(), want_base.to_str());
            proptest::prop_assert_eq!(node.as_object().unwrap().len(), 6);
            proptest::prop_assert_eq!(node["file"].as_object().unwrap().len(), 5);
        }
    }

    /// The `-blockdev` JSON of each drive, in order.
    fn blockdevs(spec: &LaunchSpec) -> Vec<serde_json::Value> {
        let args = build_argv(spec).unwrap();
        args.iter()
            .zip(&args[1..])
            .filter(|(flag, _)| *flag == "-blockdev")
            .map(|(_, json)| serde_json::from_str(json).unwrap())
            .collect()
    }

    #[test]
    fn every_qcow2_node_names_its_backing_explicitly() {
        let mut spec = plain();
        spec.drives.insert(1, volume("pgdata", false));
        let nodes = blockdevs(&spec);
        // The instance disk: its base given as a read-only node with no backing of its own.
        let disk = &nodes[0];
        assert_eq!(disk["driver"], "qcow2");
        assert_eq!(disk["node-name"], "disk");
        assert_eq!(disk["read-only"], false);
        let base = &disk["backing"];
        assert_eq!(base["driver"], "qcow2");
        assert_eq!(base["node-name"], "disk-base");
        assert_eq!(base["read-only"], true);
        assert_eq!(base["file"]["read-only"], true);
        assert_eq!(base["backing"], serde_json::Value::Null);
        assert!(base.as_object().unwrap().contains_key("backing"));
        // A raw base has no backing key at all (raw has no such child).
        spec.drives[0].backing.as_mut().unwrap().format = DriveFormat::Raw;
        let raw_base = &blockdevs(&spec)[0]["backing"];
        assert_eq!(raw_base["driver"], "raw");
        assert!(!raw_base.as_object().unwrap().contains_key("backing"));
        // A volume: "backing": null, present, so QEMU never reads the header's name.
        let vol = &nodes[1];
        assert!(vol.as_object().unwrap().contains_key("backing"));
        assert_eq!(vol["backing"], serde_json::Value::Null);
        // The raw seed: no backing key.
        let seed = &nodes[2];
        assert_eq!(seed["driver"], "raw");
        assert!(!seed.as_object().unwrap().contains_key("backing"));
    }

    #[test]
    fn read_only_drives_are_read_only_at_every_node() {
        let mut spec = plain();
        spec.drives.insert(1, volume("ref", true));
        let nodes = blockdevs(&spec);
        for node in &nodes[1..] {
            assert_eq!(node["read-only"], true, "{node}");
            assert_eq!(node["file"]["read-only"], true, "{node}");
        }
        assert_eq!(nodes[0]["read-only"], false);
        assert_eq!(nodes[0]["file"]["read-only"], false);
    }

    #[test]
    fn writable_drives_pass_discards_down_to_the_host_file() {
        let mut spec = plain();
        spec.drives.insert(1, volume("data", false));
        spec.drives.insert(2, volume("ref", true));
        let nodes = blockdevs(&spec);
        // The instance disk and the writable volume, at the format and the file node.
        for node in &nodes[..2] {
            assert_eq!(node["discard"], "unmap", "{node}");
            assert_eq!(node["file"]["discard"], "unmap", "{node}");
        }
        // The base below the instance disk, the read-only volume and the seed: none.
        let read_only = [&nodes[0]["backing"], &nodes[2], &nodes[3]];
        for node in read_only {
            assert_eq!(node["read-only"], true, "{node}");
            assert!(node.get("discard").is_none(), "{node}");
            assert!(node["file"].get("discard").is_none(), "{node}");
        }
    }

    #[test]
    fn drive_ids_must_be_node_names() {
        for bad in [
            "",
            "1disk",
            "d,1",
            "d 1",
            "d\"x",
            &"d".repeat(MAX_DRIVE_ID + 1),
        ] {
            let mut spec = plain();
            spec.drives[1].id = bad.to_string();
            assert_eq!(
                build_argv(&spec),
                Err(ArgvError::BadDriveId(bad.to_string())),
                "{bad:?}"
            );
        }
        let mut spec = plain();
        spec.drives[1].id = format!("v{}", "_.-9".repeat(5));
        assert_eq!(spec.drives[1].id.len(), MAX_DRIVE_ID);
        assert!(build_argv(&spec).is_ok());
    }

    #[test]
    fn a_raw_drive_cannot_have_a_backing_image() {
        let mut spec = plain();
        spec.drives[1].backing = spec.drives[0].backing.clone();
        assert_eq!(
            build_argv(&spec),
            Err(ArgvError::RawWithBacking("seed".into()))
        );
    }

    #[test]
    fn base_paths_are_checked_like_any_path() {
        let mut spec = plain();
        spec.drives[0].backing.as_mut().unwrap().path = "base.qcow2".into();
        assert!(matches!(
            build_argv(&spec),
            Err(ArgvError::Relative { what: "drive", .. })
        ));
    }

    #[test]
    fn escape_doubles_commas_only() {
        assert_eq!(escape("a,b,,c"), "a,,b,,,,c");
        assert_eq!(escape("no commas = here"), "no commas = here");
    }

    #[test]
    fn bad_specs_are_refused() {
        let mut spec = plain();
        spec.drives[0].path = "disk.qcow2".into();
        assert!(matches!(
            build_argv(&spec),
            Err(ArgvError::Relative { what: "drive", .. })
        ));

        let mut spec = plain();
        spec.qmp_socket = PathBuf::from(format!("/{}", "q".repeat(107)));
        let err = build_argv(&spec).unwrap_err();
        assert!(
            matches!(err, ArgvError::SocketPathTooLong { len: 108, .. }),
            "{err}"
        );
        spec.qmp_socket = PathBuf::from(format!("/{}", "q".repeat(106)));
        assert!(build_argv(&spec).is_ok());

        let mut spec = plain();
        spec.kernel = Some(KernelBoot {
            kernel: "/k".into(),
            initrd: None,
            cmdline: Some("a\0b".into()),
        });
        assert!(matches!(build_argv(&spec), Err(ArgvError::Nul { .. })));

        assert_eq!(
            build_argv(&LaunchSpec { cpus: 0, ..plain() }),
            Err(ArgvError::Zero { what: "cpu count" })
        );

        use std::os::unix::ffi::OsStrExt;
        let mut spec = plain();
        spec.pidfile = Path::new(std::ffi::OsStr::from_bytes(b"/tmp/\xff.pid")).into();
        assert!(matches!(build_argv(&spec), Err(ArgvError::NotUtf8 { .. })));
    }

    #[test]
    fn mac_and_rules() {
        let mac = MacAddress([0x52, 0x54, 0x00, 0x0a, 0xbc, 0x01]);
        assert_eq!(mac.to_string(), "52:54:00:0a:bc:01");
        assert_eq!(
            MacAddress::derived_from("p/a"),
            MacAddress::derived_from("p/a")
        );
        assert_ne!(
            MacAddress::derived_from("p/a"),
            MacAddress::derived_from("p/b")
        );
        let rule = PortForward {
            protocol: Protocol::Udp,
            host_ip: None,
            host_port: 1,
            guest_port: 2,
        };
        assert_eq!(rule.rule(), "udp::1-:2");
    }
}
