//! Phase 2: raw types -> the validated model, applying defaults and every rule of DESIGN.md
//! sections 1 and 2 that needs no disk access. All problems are collected.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Component, Path, PathBuf};

use super::discover::{PROJECT_NAME_VAR, is_valid_name, normalize_project_name};
use super::interpolate::Env;
use super::model::{
    Accel, ImageSource, MountKind, MountOption, Network, PortForward, Project, Protocol,
    SecurityModel, Subnet, Vm, VolumeDecl, VolumeMount,
};
use super::raw::{At, Errors, Here, RawFile, RawLongMount, RawMount, RawNetwork, RawVm, SizeValue};
use super::size::{MAX_VOLUME_SIZE, MIN_VOLUME_SIZE, format_size, parse_size};
use super::tree::Pos;

/// Default size of a named volume and of a VM's disk.
pub const DEFAULT_SIZE: u64 = 10 << 30;
/// Default VM memory.
pub const DEFAULT_MEMORY_MIB: u64 = 1024;
/// Below this a cloud image does not boot.
pub const MIN_MEMORY_MIB: u64 = 64;
/// 4 TiB, far above any host this runs on; catches `memory: 2048G` typos.
pub const MAX_MEMORY_MIB: u64 = 4 << 20;
/// Most vCPUs accepted (QEMU's q35 limit is higher; this catches typos).
pub const MAX_CPU: i128 = 256;
/// Smallest VM disk; a bare `disk: {size: 10240}` (bytes) is caught here.
pub const MIN_DISK_SIZE: u64 = 1 << 20;
/// Largest VM disk (64 TiB), well inside what qcow2 addresses.
pub const MAX_DISK_SIZE: u64 = 64 << 40;
/// Longest VM, volume and network name (a DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// What the validator needs besides the raw file.
#[derive(Debug)]
pub struct Context<'a> {
    pub dir: &'a Path,
    pub file: &'a Path,
    /// `-p`, if given.
    pub project_name: Option<&'a str>,
    /// For `$QEMU_COMPOSE_PROJECT_NAME` and `~` in bind sources.
    pub env: &'a dyn Env,
}

/// Builds the model, pushing every rule violation into `errors`. The returned project is
/// meaningful only when `errors` stayed empty.
pub fn validate(raw: RawFile, cx: &Context, errors: &mut Errors) -> Project {
    let name = project_name(&raw, cx, errors);
    let here = Here::root();

    let volumes_here = here.field("volumes");
    let mut volumes = Vec::new();
    for (name, vol) in &raw.volumes {
        let here = volumes_here.field(&name.value);
        check_name(name, "volume", &here, errors);
        let size_bytes = match &vol.size {
            Some(size) => bytes(
                size,
                &here.field("size"),
                errors,
                MIN_VOLUME_SIZE,
                MAX_VOLUME_SIZE,
            ),
            None => DEFAULT_SIZE,
        };
        volumes.push(VolumeDecl {
            name: name.value.clone(),
            size_bytes,
        });
    }

    let networks_here = here.field("networks");
    let networks: Vec<Network> = raw
        .networks
        .iter()
        .map(|(name, net)| network(name, net, &networks_here.field(&name.value), errors))
        .collect();

    let lookups = Lookups {
        vms: Names::new(raw.vms.iter().map(|(n, _)| n.value.as_str())),
        volumes: Names::new(volumes.iter().map(|v| v.name.as_str())),
        networks: Names::new(networks.iter().map(|n| n.name.as_str())),
    };
    let vms_here = here.field("vms");
    let mut vms = Vec::new();
    let mut mount_positions = Vec::new();
    for (name, raw_vm) in &raw.vms {
        let here = Here {
            vm: Some(name.value.clone()),
            ..vms_here.field(&name.value)
        };
        check_name(name, "VM", &here, errors);
        let (vm, positions) = vm(name, raw_vm, &here, cx, &lookups, errors);
        vms.push(vm);
        mount_positions.push(positions);
    }

    check_cycles(&raw, &vms_here, errors);
    check_shared_volumes(&vms, &mount_positions, &vms_here, errors);
    check_host_ports(&raw, &vms, &vms_here, errors);

    Project {
        name,
        dir: cx.dir.to_owned(),
        file: cx.file.to_owned(),
        vms,
        volumes,
        networks,
    }
}

fn project_name(raw: &RawFile, cx: &Context, errors: &mut Errors) -> String {
    let explicit = cx
        .project_name
        .map(str::to_owned)
        .or_else(|| cx.env.var(PROJECT_NAME_VAR).filter(|v| !v.is_empty()));
    if let Some(name) = explicit {
        if !is_valid_name(&name) {
            errors.push(
                Pos::default(),
                &Here::root(),
                format!("project name {name:?} must match [a-z0-9][a-z0-9_-]*"),
            );
        }
        return name;
    }
    if let Some(name) = &raw.name {
        if !is_valid_name(&name.value) {
            errors.push(
                name.pos,
                &Here::root().field("name"),
                format!(
                    "project name {:?} must match [a-z0-9][a-z0-9_-]*",
                    name.value
                ),
            );
        }
        return name.value.clone();
    }
    let dir_name = cx
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    normalize_project_name(&dir_name).unwrap_or_else(|| {
        errors.push(
            Pos::default(),
            &Here::root(),
            format!(
                "cannot make a project name from the directory name {dir_name:?}: set `name:` or use -p"
            ),
        );
        String::new()
    })
}

/// Names of VMs, volumes and networks: `[a-z0-9][a-z0-9_-]*`, at most 63 characters.
fn check_name(name: &At<String>, what: &str, here: &Here, errors: &mut Errors) {
    if !is_valid_name(&name.value) || name.value.len() > MAX_NAME_LEN {
        errors.push(
            name.pos,
            here,
            format!(
                "{what} name {:?} must match [a-z0-9][a-z0-9_-]* and be at most {MAX_NAME_LEN} characters",
                name.value
            ),
        );
    }
}

/// A size in bytes (a bare YAML integer is bytes), within `min..=max`, a multiple of 512.
fn bytes(size: &At<SizeValue>, here: &Here, errors: &mut Errors, min: u64, max: u64) -> u64 {
    let parsed = match &size.value {
        SizeValue::Int(i) if *i <= 0 => Err(format!("size {i} must be a positive number of bytes")),
        SizeValue::Int(i) => u64::try_from(*i).map_err(|_| format!("size {i} is too large")),
        SizeValue::Text(t) => parse_size(t).map_err(|e| e.to_string()),
    };
    let checked = parsed.and_then(|b| {
        if b < min || b > max {
            Err(format!(
                "size {} is out of range: it must be between {} and {}",
                format_size(b),
                format_size(min),
                format_size(max)
            ))
        } else if b % 512 != 0 {
            Err(format!("size {b} must be a multiple of 512 bytes"))
        } else {
            Ok(b)
        }
    });
    checked.unwrap_or_else(|why| {
        errors.push(size.pos, here, why);
        min
    })
}

fn network(name: &At<String>, net: &RawNetwork, here: &Here, errors: &mut Errors) -> Network {
    check_name(name, "network", here, errors);
    let driver = match &net.driver {
        Some(d) if d.value != "bridge" => {
            errors.push(
                d.pos,
                &here.field("driver"),
                format!("unknown network driver {:?} (only \"bridge\")", d.value),
            );
            d.value.clone()
        }
        Some(d) => d.value.clone(),
        None => "bridge".to_owned(),
    };
    let subnet = match &net.subnet {
        None => Subnet::Auto,
        Some(s) => parse_subnet(&s.value).unwrap_or_else(|why| {
            errors.push(s.pos, &here.field("subnet"), why);
            Subnet::Auto
        }),
    };
    Network {
        name: name.value.clone(),
        driver,
        subnet,
    }
}

fn parse_subnet(text: &str) -> Result<Subnet, String> {
    if text == "auto" {
        return Ok(Subnet::Auto);
    }
    let bad = || format!("subnet {text:?} must be \"auto\" or an IPv4 CIDR such as 10.89.0.0/24");
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    let address: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&prefix) {
        return Err(format!(
            "subnet {text:?}: the prefix length must be 8 to 30"
        ));
    }
    let mask = u32::MAX << (32 - u32::from(prefix));
    if u32::from(address) & !mask != 0 {
        let network = Ipv4Addr::from(u32::from(address) & mask);
        return Err(format!(
            "subnet {text:?} has host bits set (did you mean {network}/{prefix}?)"
        ));
    }
    Ok(Subnet::Cidr { address, prefix })
}

/// Declared names that VMs refer to.
struct Lookups<'a> {
    vms: Names<'a>,
    volumes: Names<'a>,
    networks: Names<'a>,
}

/// Names in compose order (for messages) and as a set (for lookups).
struct Names<'a> {
    list: Vec<&'a str>,
    set: HashSet<&'a str>,
}

impl<'a> Names<'a> {
    fn new(names: impl Iterator<Item = &'a str>) -> Self {
        let list: Vec<&str> = names.collect();
        let set = list.iter().copied().collect();
        Names { list, set }
    }

    fn contains(&self, name: &str) -> bool {
        self.set.contains(name)
    }

    /// `a, b, c`, or `none`, for "(declared: …)" hints.
    fn listed(&self) -> String {
        if self.list.is_empty() {
            "none".to_owned()
        } else {
            self.list.join(", ")
        }
    }
}

fn vm(
    name: &At<String>,
    raw: &RawVm,
    here: &Here,
    cx: &Context,
    lookups: &Lookups,
    errors: &mut Errors,
) -> (Vm, Vec<(usize, Pos)>) {
    // A missing image was reported by the raw reader.
    let image_text = raw.image.as_ref().map_or("", |i| i.value.as_str());
    let image = match &raw.image {
        Some(image) => image_source(image, &here.field("image"), cx, errors),
        None => ImageSource::Path(PathBuf::new()),
    };

    let image_checksum = raw.image_checksum.as_ref().and_then(|c| {
        let hex = c.value.strip_prefix("sha256:");
        match hex {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(format!("sha256:{}", h.to_ascii_lowercase()))
            }
            _ => {
                errors.push(
                    c.pos,
                    &here.field("image_checksum"),
                    format!("{:?} is not sha256: followed by 64 hex digits", c.value),
                );
                None
            }
        }
    });

    let cpu = match &raw.cpu {
        None => 1,
        Some(c) if (1..=MAX_CPU).contains(&c.value) => u32::try_from(c.value).unwrap_or(1),
        Some(c) => {
            errors.push(
                c.pos,
                &here.field("cpu"),
                format!("cpu {} must be between 1 and {MAX_CPU}", c.value),
            );
            1
        }
    };

    let memory_mib = raw.memory.as_ref().map_or(DEFAULT_MEMORY_MIB, |m| {
        memory(m, &here.field("memory"), errors)
    });
    let disk_size_bytes = raw.disk_size.as_ref().map_or(DEFAULT_SIZE, |d| {
        bytes(
            d,
            &here.field("disk").field("size"),
            errors,
            MIN_DISK_SIZE,
            MAX_DISK_SIZE,
        )
    });

    let (user, user_guessed) = match &raw.user {
        Some(u) => {
            check_user(u, &here.field("user"), errors);
            (u.value.clone(), false)
        }
        None => (guess_user(image_text).to_owned(), true),
    };

    let ports_here = here.field("ports");
    let ports = raw
        .ports
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            parse_port(&p.value)
                .map_err(|why| errors.push(p.pos, &ports_here.index(i), why))
                .ok()
        })
        .collect();

    let ssh_port = raw.ssh_port.as_ref().and_then(|p| {
        port_number(p.value)
            .map_err(|why| errors.push(p.pos, &here.field("ssh").field("port"), why))
            .ok()
    });

    let accel = match raw.accel.as_ref().map(|a| (a, a.value.as_str())) {
        None | Some((_, "auto")) => Accel::Auto,
        Some((_, "kvm")) => Accel::Kvm,
        Some((_, "tcg")) => Accel::Tcg,
        Some((a, other)) => {
            errors.push(
                a.pos,
                &here.field("accel"),
                format!("accel {other:?} must be auto, kvm or tcg"),
            );
            Accel::Auto
        }
    };

    let path_field = |field: &Option<At<String>>, key: &str, errors: &mut Errors| {
        field.as_ref().and_then(|p| {
            resolve_path(&p.value, cx)
                .map_err(|why| errors.push(p.pos, &here.field(key), why))
                .ok()
        })
    };
    let kernel = path_field(&raw.kernel, "kernel", errors);
    let initrd = path_field(&raw.initrd, "initrd", errors);
    if raw.kernel.is_none() {
        for (field, key) in [(&raw.initrd, "initrd"), (&raw.cmdline, "cmdline")] {
            if let Some(f) = field {
                errors.push(f.pos, &here.field(key), format!("`{key}` needs `kernel`"));
            }
        }
    }
    let cmdline = raw.cmdline.as_ref().map(|c| {
        if c.value.chars().any(char::is_control) {
            errors.push(
                c.pos,
                &here.field("cmdline"),
                "the kernel command line must be one line without control characters",
            );
        }
        c.value.clone()
    });

    let depends_on = names_list(
        &raw.depends_on,
        &here.field("depends_on"),
        &lookups.vms,
        "VM",
        Some(&name.value),
        errors,
    );
    let networks = names_list(
        &raw.networks,
        &here.field("networks"),
        &lookups.networks,
        "network",
        None,
        errors,
    );

    let environment = environment(&raw.environment, &here.field("environment"), errors);

    let provision_here = here.field("provision");
    let provision = raw
        .provision
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if p.value.trim().is_empty() || p.value.contains('\0') {
                errors.push(
                    p.pos,
                    &provision_here.index(i),
                    "a provision command must be non-empty text without NUL",
                );
            }
            p.value.clone()
        })
        .collect();

    let volumes_here = here.field("volumes");
    let mut volumes: Vec<VolumeMount> = Vec::new();
    // For each mount kept: its index in the file's list and its position.
    let mut positions = Vec::new();
    let mut targets = HashSet::new();
    for (i, m) in raw.volumes.iter().enumerate() {
        let here = volumes_here.index(i);
        let Some((mount, pos)) = mount(m, &here, cx, lookups, errors) else {
            continue;
        };
        if !targets.insert(mount.target.clone()) {
            errors.push(
                pos,
                &here,
                format!(
                    "target {:?} is used by another volume of this VM",
                    mount.target
                ),
            );
        }
        volumes.push(mount);
        positions.push((i, pos));
    }

    let vm = Vm {
        name: name.value.clone(),
        image,
        image_checksum,
        cpu,
        memory_mib,
        disk_size_bytes,
        user,
        user_guessed,
        ports,
        ssh_port,
        accel,
        kernel,
        initrd,
        cmdline,
        depends_on,
        environment,
        provision,
        networks,
        volumes,
    };
    (vm, positions)
}

fn image_source(image: &At<String>, here: &Here, cx: &Context, errors: &mut Errors) -> ImageSource {
    let text = image.value.trim();
    let lower = text.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let host = text.split_once("://").map_or("", |(_, rest)| rest);
        if host.is_empty()
            || host.starts_with('/')
            || text.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            errors.push(image.pos, here, format!("{text:?} is not a valid URL"));
        }
        return ImageSource::Url(text.to_owned());
    }
    if let Some((scheme, _)) = text.split_once("://") {
        errors.push(
            image.pos,
            here,
            format!("unsupported URL scheme {scheme:?}: use http://, https:// or a local path"),
        );
        return ImageSource::Url(text.to_owned());
    }
    match resolve_path(text, cx) {
        Ok(path) => ImageSource::Path(path),
        Err(why) => {
            errors.push(image.pos, here, why);
            ImageSource::Path(PathBuf::new())
        }
    }
}

/// The default user of well-known cloud images, guessed from the image name.
fn guess_user(image: &str) -> &'static str {
    let lower = image.to_ascii_lowercase();
    for (needle, user) in [
        ("fedora", "fedora"),
        ("ubuntu", "ubuntu"),
        ("debian", "debian"),
        ("centos", "centos"),
        ("rhel", "cloud-user"),
    ] {
        if lower.contains(needle) {
            return user;
        }
    }
    "ubuntu"
}

/// A Linux user name as useradd accepts it, and not root (the guest user gets sudo anyway).
fn check_user(user: &At<String>, here: &Here, errors: &mut Errors) {
    let name = user.value.as_str();
    let body = name.strip_suffix('$').unwrap_or(name);
    let mut chars = body.chars();
    let valid = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && name.len() <= 32;
    if !valid {
        errors.push(
            user.pos,
            here,
            format!(
                "user {name:?} must be a Linux user name: [a-z_][a-z0-9_-]*, at most 32 characters"
            ),
        );
    } else if name == "root" {
        errors.push(
            user.pos,
            here,
            "user must not be root: the guest user is an ordinary user with sudo",
        );
    }
}

fn memory(m: &At<SizeValue>, here: &Here, errors: &mut Errors) -> u64 {
    let mib = match &m.value {
        SizeValue::Int(i) if *i <= 0 => Err(format!("memory {i} must be a positive number of MiB")),
        SizeValue::Int(i) => u64::try_from(*i).map_err(|_| format!("memory {i} is too large")),
        SizeValue::Text(t) => parse_size(t).map_err(|e| e.to_string()).and_then(|b| {
            if b % (1 << 20) == 0 {
                Ok(b >> 20)
            } else {
                Err(format!("memory {t:?} must be a whole number of MiB"))
            }
        }),
    };
    let checked = mib.and_then(|mib| {
        if (MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&mib) {
            Ok(mib)
        } else {
            Err(format!(
                "memory {mib} MiB is out of range: it must be between {MIN_MEMORY_MIB} MiB and {} MiB",
                MAX_MEMORY_MIB
            ))
        }
    });
    checked.unwrap_or_else(|why| {
        errors.push(m.pos, here, why);
        DEFAULT_MEMORY_MIB
    })
}

fn port_number(n: i128) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port {n} must be between 1 and 65535"))
}

/// `[ip:]host:guest[/tcp|/udp]`; an IPv6 address goes in brackets: `[::1]:8080:80`.
pub(super) fn parse_port(spec: &str) -> Result<PortForward, String> {
    let bad = |why: &str| format!("port {spec:?}: {why} (expected [IP:]HOST:GUEST[/tcp|/udp])");
    let (body, protocol) = match spec.rsplit_once('/') {
        Some((b, "tcp")) => (b, Protocol::Tcp),
        Some((b, "udp")) => (b, Protocol::Udp),
        Some(_) => return Err(bad("the protocol must be tcp or udp")),
        None => (spec, Protocol::Tcp),
    };
    let (ip_text, ports) = if let Some(rest) = body.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        let ports = after
            .strip_prefix(':')
            .ok_or_else(|| bad("expected : after the address"))?;
        (Some(ip), ports)
    } else {
        match body.matches(':').count() {
            1 => (None, body),
            2 => body
                .split_once(':')
                .map(|(ip, ports)| (Some(ip), ports))
                .ok_or_else(|| bad("malformed"))?,
            _ => return Err(bad("expected two or three parts separated by :")),
        }
    };
    let host_ip = ip_text
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map_err(|_| bad(&format!("{ip:?} is not an IP address")))
        })
        .transpose()?;
    let (host, guest) = ports
        .split_once(':')
        .ok_or_else(|| bad("missing the guest port"))?;
    let number = |p: &str| -> Result<u16, String> {
        if p.contains('-') {
            return Err(bad("port ranges are not supported"));
        }
        let n: i128 = p
            .parse()
            .map_err(|_| bad(&format!("{p:?} is not a port number")))?;
        port_number(n).map_err(|why| bad(&why))
    };
    Ok(PortForward {
        host_ip,
        host_port: number(host)?,
        guest_port: number(guest)?,
        protocol,
    })
}

/// A list of references to declared names (`depends_on`, `networks`): unknown, duplicate
/// and (for `depends_on`) self references are errors.
fn names_list(
    items: &[At<String>],
    here: &Here,
    declared: &Names,
    what: &str,
    itself: Option<&str>,
    errors: &mut Errors,
) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut out: Vec<String> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let here = here.index(i);
        let name = item.value.as_str();
        if itself == Some(name) {
            errors.push(item.pos, &here, format!("a {what} cannot depend on itself"));
        } else if !declared.contains(name) {
            errors.push(
                item.pos,
                &here,
                format!("unknown {what} {name:?} (declared: {})", declared.listed()),
            );
        } else if !seen.insert(name) {
            errors.push(item.pos, &here, format!("{what} {name:?} is listed twice"));
        } else {
            out.push(name.to_owned());
        }
    }
    out
}

fn environment(
    entries: &[(At<String>, At<String>)],
    here: &Here,
    errors: &mut Errors,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (key, value) in entries {
        let here = here.field(&key.value);
        let mut chars = key.value.chars();
        let valid_key = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            errors.push(
                key.pos,
                &here,
                format!(
                    "environment name {:?} must match [A-Za-z_][A-Za-z0-9_]*",
                    key.value
                ),
            );
        } else if value.value.contains(['\n', '\r', '\0']) {
            errors.push(
                value.pos,
                &here,
                "an environment value must be one line without NUL (it goes to /etc/environment)",
            );
        } else if out.insert(key.value.clone(), value.value.clone()).is_some() {
            errors.push(key.pos, &here, format!("{:?} is set twice", key.value));
        }
    }
    out
}

/// One volume entry; returns the mount and the position to blame for cross-mount problems.
fn mount(
    raw: &RawMount,
    here: &Here,
    cx: &Context,
    lookups: &Lookups,
    errors: &mut Errors,
) -> Option<(VolumeMount, Pos)> {
    let (source, target, read_only, pos, long) = match raw {
        RawMount::Short(spec) => {
            let parts: Vec<&str> = spec.value.split(':').collect();
            let read_only = match parts.as_slice() {
                [_, _] => false,
                [_, _, "ro"] => true,
                [_, _, "rw"] => false,
                [_, _, mode] => {
                    errors.push(
                        spec.pos,
                        here,
                        format!("mode {mode:?} in {:?} must be ro or rw", spec.value),
                    );
                    return None;
                }
                _ => {
                    errors.push(
                        spec.pos,
                        here,
                        format!(
                            "{:?} is not source:target[:ro|:rw] (use the long form for a path containing :)",
                            spec.value
                        ),
                    );
                    return None;
                }
            };
            let at = |s: &str| At {
                pos: spec.pos,
                value: s.to_owned(),
            };
            (at(parts[0]), at(parts[1]), read_only, spec.pos, None)
        }
        RawMount::Long(m) => {
            let (Some(source), Some(target)) = (&m.source, &m.target) else {
                for (field, key) in [(&m.source, "source"), (&m.target, "target")] {
                    if field.is_none() {
                        errors.push(m.pos, here, format!("`{key}:` is required"));
                    }
                }
                return None;
            };
            let ro = m.read_only.as_ref().is_some_and(|r| r.value);
            (source.clone(), target.clone(), ro, m.pos, Some(m.as_ref()))
        }
    };
    let target_here = if long.is_some() {
        here.field("target")
    } else {
        here.clone()
    };
    let target_path = normalize_target(&target.value).unwrap_or_else(|why| {
        errors.push(target.pos, &target_here, why);
        target.value.clone()
    });
    let source_here = if long.is_some() {
        here.field("source")
    } else {
        here.clone()
    };
    let kind = if source.value.is_empty() {
        errors.push(source.pos, &source_here, "the source is empty");
        return None;
    } else if is_bind_source(&source.value) {
        bind(&source, long, &source_here, here, cx, errors)?
    } else {
        if !lookups.volumes.contains(&source.value) {
            errors.push(
                source.pos,
                &source_here,
                format!(
                    "named volume {:?} is not declared under top-level volumes (declared: {}); a host path must start with ./ or /",
                    source.value,
                    lookups.volumes.listed()
                ),
            );
        }
        if let Some(m) = long {
            // Values that change nothing (`automount: true`, `mount_options: ""`, as in the
            // seed's long-form example) are accepted; anything that would be ignored is not.
            let disables = |a: &At<bool>| (!a.value).then_some(a.pos);
            let sets = |o: &At<String>| (!o.value.is_empty()).then_some(o.pos);
            for (pos, key) in [
                (m.automount.as_ref().and_then(disables), "automount"),
                (m.mount_options.as_ref().and_then(sets), "mount_options"),
                (m.security_model.as_ref().map(|a| a.pos), "security_model"),
            ] {
                if let Some(pos) = pos {
                    errors.push(
                        pos,
                        &here.field(key),
                        format!(
                            "`{key}` applies to bind mounts only, not to named volume {:?} (named volumes are always mounted, as ext4)",
                            source.value
                        ),
                    );
                }
            }
        }
        MountKind::Named {
            volume: source.value.clone(),
        }
    };
    Some((
        VolumeMount {
            target: target_path,
            read_only,
            kind,
        },
        pos,
    ))
}

/// The seed's detection rule: a source containing `/` or `\`, or starting with `.` (or `~`,
/// expanded like docker does), is a host path; anything else names a volume.
fn is_bind_source(source: &str) -> bool {
    source.contains(['/', '\\']) || source.starts_with(['.', '~'])
}

fn bind(
    source: &At<String>,
    long: Option<&RawLongMount>,
    source_here: &Here,
    here: &Here,
    cx: &Context,
    errors: &mut Errors,
) -> Option<MountKind> {
    let resolved = resolve_path(&source.value, cx)
        .map_err(|why| errors.push(source.pos, source_here, why))
        .ok()?;
    let mut automount = true;
    let mut mount_options = Vec::new();
    let mut security_model = None;
    if let Some(m) = long {
        automount = m.automount.as_ref().is_none_or(|a| a.value);
        if let Some(opts) = &m.mount_options {
            mount_options = parse_mount_options(&opts.value)
                .map_err(|why| errors.push(opts.pos, &here.field("mount_options"), why))
                .unwrap_or_default();
        }
        if let Some(sm) = &m.security_model {
            security_model = SecurityModel::ALL
                .into_iter()
                .find(|s| s.as_str() == sm.value);
            if security_model.is_none() {
                let valid: Vec<&str> = SecurityModel::ALL.iter().map(|s| s.as_str()).collect();
                errors.push(
                    sm.pos,
                    &here.field("security_model"),
                    format!(
                        "security_model {:?} must be one of {}",
                        sm.value,
                        valid.join(", ")
                    ),
                );
            }
        }
    }
    Some(MountKind::Bind {
        source_written: source.value.clone(),
        source: resolved,
        automount,
        mount_options,
        security_model,
    })
}

/// A guest mount point: absolute, normalised, not `/`, no control characters. One trailing
/// `/` is dropped rather than refused, because files written for the earlier Go tool use
/// targets such as `/mnt/`. Returns the normalised target.
fn normalize_target(t: &str) -> Result<String, String> {
    if t.chars().any(char::is_control) {
        return Err(format!("target {t:?} contains a control character"));
    }
    if !t.starts_with('/') {
        return Err(format!(
            "target {t:?} must be an absolute path (start with /)"
        ));
    }
    let trimmed = t.strip_suffix('/').unwrap_or(t);
    if trimmed.is_empty() {
        return Err("target / would hide the guest's root filesystem".to_owned());
    }
    for component in trimmed[1..].split('/') {
        match component {
            "" => return Err(format!("target {t:?} has an empty component (//)")),
            "." | ".." => {
                return Err(format!(
                    "target {t:?} must be normalised (no . or .. components)"
                ));
            }
            _ => {}
        }
    }
    Ok(trimmed.to_owned())
}

/// `k[=v],k[=v]…` 9p mount options, written into fstab, so no blanks, quotes or NUL.
fn parse_mount_options(text: &str) -> Result<Vec<MountOption>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(c) = text
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\'' | '\\' | '#'))
    {
        return Err(format!("mount_options {text:?} must not contain {c:?}"));
    }
    text.split(',')
        .map(|item| {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (item, None),
            };
            if key.is_empty() || value == Some("") {
                return Err(format!(
                    "mount_options {text:?} must be comma-separated key or key=value items"
                ));
            }
            Ok(MountOption {
                key: key.to_owned(),
                value: value.map(str::to_owned),
            })
        })
        .collect()
}

/// Resolves a host path written in the compose file: `~` from `$HOME`, relative paths against
/// the project directory, then `.` and `..` removed lexically (the path need not exist).
fn resolve_path(written: &str, cx: &Context) -> Result<PathBuf, String> {
    if written.is_empty() {
        return Err("the path is empty".to_owned());
    }
    if written.contains('\0') {
        return Err("the path contains NUL".to_owned());
    }
    let expanded = match written.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            let home = cx
                .env
                .var("HOME")
                .filter(|h| h.starts_with('/'))
                .ok_or_else(|| format!("{written:?} uses ~ but $HOME is not set"))?;
            PathBuf::from(format!("{home}{rest}"))
        }
        Some(_) => return Err(format!("{written:?}: ~user paths are not supported")),
        None => PathBuf::from(written),
    };
    Ok(normalize(&cx.dir.join(expanded)))
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// `depends_on` cycles: reported once per cycle, on the dependency that closes it.
fn check_cycles(raw: &RawFile, here: &Here, errors: &mut Errors) {
    let index: HashMap<&str, usize> = raw
        .vms
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.value.as_str(), i))
        .collect();
    // 0 = unvisited, 1 = on the current path, 2 = done.
    let mut state = vec![0u8; raw.vms.len()];
    for start in 0..raw.vms.len() {
        if state[start] != 0 {
            continue;
        }
        // Iterative DFS: (vm, next dependency to look at).
        let mut stack = vec![(start, 0usize)];
        state[start] = 1;
        while let Some(&mut (vm, ref mut next)) = stack.last_mut() {
            let deps = &raw.vms[vm].1.depends_on;
            let Some(dep) = deps.get(*next) else {
                state[vm] = 2;
                stack.pop();
                continue;
            };
            let dep_index = *next;
            *next += 1;
            let Some(&d) = index.get(dep.value.as_str()) else {
                continue;
            };
            match state[d] {
                0 => {
                    state[d] = 1;
                    stack.push((d, 0));
                }
                1 if d != vm => {
                    let from = stack.iter().position(|(v, _)| *v == d).unwrap_or(0);
                    let mut names: Vec<&str> = stack[from..]
                        .iter()
                        .map(|(v, _)| raw.vms[*v].0.value.as_str())
                        .collect();
                    names.push(raw.vms[d].0.value.as_str());
                    let closing = &raw.vms[vm].0.value;
                    let here = Here {
                        vm: Some(closing.clone()),
                        ..here.field(closing).field("depends_on").index(dep_index)
                    };
                    errors.push(
                        dep.pos,
                        &here,
                        format!("depends_on has a cycle: {}", names.join(" -> ")),
                    );
                }
                _ => {}
            }
        }
    }
}

/// A named volume written by one VM may not be attached anywhere else (ext4 is not a cluster
/// filesystem and QEMU's image lock would refuse anyway); read-only users may share.
fn check_shared_volumes(
    vms: &[Vm],
    mount_positions: &[Vec<(usize, Pos)>],
    here: &Here,
    errors: &mut Errors,
) {
    /// Who has attached a volume so far: the first VM, and the first writer if any.
    struct Users<'a> {
        first: &'a str,
        writer: Option<&'a str>,
    }
    let mut users: HashMap<&str, Users> = HashMap::new();
    for (vm, positions) in vms.iter().zip(mount_positions) {
        for (mount, &(i, pos)) in vm.volumes.iter().zip(positions) {
            let MountKind::Named { volume } = &mount.kind else {
                continue;
            };
            let writer = (!mount.read_only).then_some(vm.name.as_str());
            let Some(earlier) = users.get_mut(volume.as_str()) else {
                users.insert(
                    volume,
                    Users {
                        first: &vm.name,
                        writer,
                    },
                );
                continue;
            };
            let clash = match writer {
                Some(_) => Some(earlier.first),
                None => earlier.writer,
            };
            earlier.writer = earlier.writer.or(writer);
            let Some(other) = clash else {
                continue;
            };
            let here = Here {
                vm: Some(vm.name.clone()),
                ..here.field(&vm.name).field("volumes").index(i)
            };
            let whom = if other == vm.name {
                "this VM already".to_owned()
            } else {
                format!("VM {other:?}")
            };
            errors.push(
                pos,
                &here,
                format!(
                    "named volume {volume:?} is also attached by {whom}; a volume can be shared only when every attachment is read-only"
                ),
            );
        }
    }
}

/// Two forwards of the same host port and protocol (or an SSH port reused) cannot both bind.
fn check_host_ports(raw: &RawFile, vms: &[Vm], here: &Here, errors: &mut Errors) {
    struct Bound<'a> {
        vm: &'a str,
        ip: Option<IpAddr>,
        port: u16,
        protocol: Protocol,
    }
    /// Who binds one port and protocol: on all addresses, or on particular ones.
    #[derive(Default)]
    struct Binders<'a> {
        wildcard: Option<&'a str>,
        by_ip: HashMap<IpAddr, &'a str>,
    }
    let mut bound: HashMap<(u16, Protocol), Binders> = HashMap::new();
    for (vm, (_, raw_vm)) in vms.iter().zip(&raw.vms) {
        let vm_here = Here {
            vm: Some(vm.name.clone()),
            ..here.field(&vm.name)
        };
        let mut wanted: Vec<(Bound, Pos, Here)> = Vec::new();
        if let (Some(port), Some(raw_port)) = (vm.ssh_port, &raw_vm.ssh_port) {
            wanted.push((
                Bound {
                    vm: &vm.name,
                    ip: None,
                    port,
                    protocol: Protocol::Tcp,
                },
                raw_port.pos,
                vm_here.field("ssh").field("port"),
            ));
        }
        // Ports that failed to parse are missing from vm.ports; match by spec text.
        for (i, raw_port) in raw_vm.ports.iter().enumerate() {
            if let Ok(p) = parse_port(&raw_port.value) {
                wanted.push((
                    Bound {
                        vm: &vm.name,
                        ip: p.host_ip,
                        port: p.host_port,
                        protocol: p.protocol,
                    },
                    raw_port.pos,
                    vm_here.field("ports").index(i),
                ));
            }
        }
        for (b, pos, h) in wanted {
            let binders = bound.entry((b.port, b.protocol)).or_default();
            let ip = b.ip.filter(|ip| !ip.is_unspecified());
            let clash = match ip {
                None => binders
                    .wildcard
                    .or_else(|| binders.by_ip.values().next().copied()),
                Some(ip) => binders.wildcard.or_else(|| binders.by_ip.get(&ip).copied()),
            };
            match ip {
                None => binders.wildcard = binders.wildcard.or(Some(b.vm)),
                Some(ip) => {
                    binders.by_ip.entry(ip).or_insert(b.vm);
                }
            }
            if let Some(other) = clash {
                let whom = if other == b.vm {
                    "another forward of this VM".to_owned()
                } else {
                    format!("VM {other:?}")
                };
                errors.push(
                    pos,
                    &h,
                    format!(
                        "host port {}/{} is already used by {whom}",
                        b.port,
                        b.protocol.as_str()
                    ),
                );
            }
        }
    }
}
