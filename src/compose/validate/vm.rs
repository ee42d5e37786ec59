//! One VM's settings, apart from its ports ([`super::ports`]) and volumes ([`super::mount`]).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::Context;
use super::health;
use super::mount::mounts;
use super::paths::resolve_path;
use super::ports::{forwards, ssh_port};
use super::references::{Lookups, referenced_names};
use super::sizes::{DEFAULT_SIZE, MAX_DISK_SIZE, MIN_DISK_SIZE, memory_mib, size_bytes};
use crate::compose::error::{At, Errors, Here};
use crate::compose::model::{Accel, Arch, BindExport, ImageSource, MountKind, Vm, VolumeMount};
use crate::compose::raw::{RawBindExport, RawVm, SizeValue};
use crate::compose::size::{MAX_VOLUME_SIZE, MIN_VOLUME_SIZE};
use crate::compose::tree::Pos;

/// Most vCPUs accepted (QEMU's q35 limit is higher; this catches typos).
pub const MAX_CPU: i128 = 256;

/// Builds the VM, and for each mount it keeps, the mount's index and position (see
/// [`mounts`]). Errors that share one position come out in the order of these checks.
pub(super) fn vm(
    name: &At<String>,
    raw: &RawVm,
    here: &Here,
    cx: &Context,
    lookups: &Lookups,
    errors: &mut Errors,
) -> (Vm, Vec<(usize, Pos)>) {
    let field = |key: &str| here.field(key);
    let image = image(raw.image.as_ref(), &field("image"), cx, errors);
    let image_checksum = image_checksum(
        raw.image_checksum.as_ref(),
        &field("image_checksum"),
        errors,
    );
    let cpu = cpu(raw.cpu.as_ref(), &field("cpu"), errors);
    let memory_mib = memory_mib(raw.memory.as_ref(), &field("memory"), errors);
    let disk_size_bytes = disk_size(raw.disk_size.as_ref(), &field("disk").field("size"), errors);
    let (user, user_guessed) = user(raw, &field("user"), errors);
    let ports = forwards(&raw.ports, &field("ports"), errors);
    let ssh_port = ssh_port(raw.ssh_port.as_ref(), &field("ssh").field("port"), errors);
    let accel = accel(raw.accel.as_ref(), &field("accel"), errors);
    let arch = arch(raw.arch.as_ref(), &field("arch"), errors);
    let stop_grace_period_secs = raw
        .stop_grace_period
        .as_ref()
        .and_then(|g| grace_period(g, &field("stop_grace_period"), errors));
    let (kernel, initrd, cmdline) = direct_boot(raw, here, cx, errors);
    let firmware = firmware(raw, arch, here, cx, errors);
    let depends_on = referenced_names(
        &raw.depends_on,
        &field("depends_on"),
        &lookups.vms,
        "VM",
        Some(&name.value),
        errors,
    );
    let networks = super::network::vm_networks(&raw.networks, &field("networks"), lookups, errors);
    let environment = environment(&raw.environment, &field("environment"), errors);
    let provision = provision(&raw.provision, &field("provision"), errors);
    let (volumes, positions) = mounts(&raw.volumes, &field("volumes"), cx, lookups, errors);
    let profiles = profiles(&raw.profiles, &field("profiles"), errors);
    let healthcheck = raw
        .healthcheck
        .as_ref()
        .and_then(|h| health::healthcheck(h, &field("healthcheck"), errors));
    let healthy_dependencies = health::healthy_dependencies(raw, &field("depends_on"), errors);
    let kubevirt_binds = kubevirt_binds(raw, &volumes, &field("x-kubevirt"), lookups, errors);
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
        arch,
        firmware,
        stop_grace_period_secs,
        kernel,
        initrd,
        cmdline,
        depends_on,
        healthy_dependencies,
        healthcheck,
        environment,
        provision,
        networks,
        volumes,
        profiles,
        kubevirt_binds,
    };
    (vm, positions)
}

/// `x-kubevirt: {bind_mounts: …}`: each target is one of the VM's bind mounts, and each new
/// volume a valid name that no declared volume has.
fn kubevirt_binds(
    raw: &RawVm,
    mounts: &[VolumeMount],
    here: &Here,
    lookups: &Lookups,
    errors: &mut Errors,
) -> BTreeMap<String, BindExport> {
    let here = here.field("bind_mounts");
    let mut out = BTreeMap::new();
    for (target, rule) in &raw.kubevirt_binds {
        let here = here.field(&target.value);
        let is_bind = mounts
            .iter()
            .any(|m| m.target == target.value && matches!(m.kind, MountKind::Bind { .. }));
        if !is_bind {
            errors.push(
                target.pos,
                &here,
                format!("the VM has no bind mount at {:?}", target.value),
            );
            continue;
        }
        let export = match rule {
            RawBindExport::Skip => BindExport::Skip,
            RawBindExport::Volume { name, size } => {
                super::names::check_name(name, "volume", &here.field("volume"), errors);
                if lookups.volumes.contains(&name.value) {
                    errors.push(
                        name.pos,
                        &here.field("volume"),
                        format!(
                            "volume {:?} is declared already; name a new one",
                            name.value
                        ),
                    );
                }
                let size_bytes = size.as_ref().map_or(DEFAULT_SIZE, |size| {
                    let here = here.field("size");
                    size_bytes(size, &here, errors, MIN_VOLUME_SIZE, MAX_VOLUME_SIZE)
                });
                BindExport::Volume {
                    name: name.value.clone(),
                    size_bytes,
                }
            }
        };
        out.insert(target.value.clone(), export);
    }
    out
}

/// Profile names as docker compose allows them, `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, each once.
fn profiles(names: &[At<String>], here: &Here, errors: &mut Errors) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let here = here.index(i);
        let mut chars = name.value.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !valid {
            errors.push(
                name.pos,
                &here,
                format!(
                    "profile name {:?} must match [a-zA-Z0-9][a-zA-Z0-9_.-]*",
                    name.value
                ),
            );
        } else if out.contains(&name.value) {
            errors.push(
                name.pos,
                &here,
                format!("profile {:?} is listed twice", name.value),
            );
        } else {
            out.push(name.value.clone());
        }
    }
    out
}

/// An http(s) URL or a host path. A missing `image:` was reported by the raw reader.
fn image(
    image: Option<&At<String>>,
    here: &Here,
    cx: &Context,
    errors: &mut Errors,
) -> ImageSource {
    let Some(image) = image else {
        return ImageSource::Path(PathBuf::new());
    };
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

/// `sha256:` and 64 hex digits, which are kept in lower case.
fn image_checksum(
    checksum: Option<&At<String>>,
    here: &Here,
    errors: &mut Errors,
) -> Option<String> {
    let checksum = checksum?;
    match checksum.value.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(format!("sha256:{}", h.to_ascii_lowercase()))
        }
        _ => {
            errors.push(
                checksum.pos,
                here,
                format!(
                    "{:?} is not sha256: followed by 64 hex digits",
                    checksum.value
                ),
            );
            None
        }
    }
}

/// 1 unless given.
fn cpu(cpu: Option<&At<i128>>, here: &Here, errors: &mut Errors) -> u32 {
    let Some(cpu) = cpu else {
        return 1;
    };
    if (1..=MAX_CPU).contains(&cpu.value) {
        return u32::try_from(cpu.value).unwrap_or(1);
    }
    errors.push(
        cpu.pos,
        here,
        format!("cpu {} must be between 1 and {MAX_CPU}", cpu.value),
    );
    1
}

/// 10 GiB unless given.
fn disk_size(size: Option<&At<SizeValue>>, here: &Here, errors: &mut Errors) -> u64 {
    size.map_or(DEFAULT_SIZE, |size| {
        size_bytes(size, here, errors, MIN_DISK_SIZE, MAX_DISK_SIZE)
    })
}

/// The user as written, or guessed from the image name; `true` when guessed.
fn user(raw: &RawVm, here: &Here, errors: &mut Errors) -> (String, bool) {
    match &raw.user {
        Some(u) => {
            check_user(u, here, errors);
            (u.value.clone(), false)
        }
        None => {
            let image = raw.image.as_ref().map_or("", |i| i.value.as_str());
            (guess_user(image).to_owned(), true)
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

/// `auto` unless given.
fn accel(accel: Option<&At<String>>, here: &Here, errors: &mut Errors) -> Accel {
    let Some(accel) = accel else {
        return Accel::Auto;
    };
    match accel.value.as_str() {
        "auto" => Accel::Auto,
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        other => {
            errors.push(
                accel.pos,
                here,
                format!("accel {other:?} must be auto, kvm or tcg"),
            );
            Accel::Auto
        }
    }
}

/// `None` (the host's) unless given. `arm64` and `amd64` are taken too: Debian and docker
/// name architectures so, and cloud image file names carry those words.
fn arch(arch: Option<&At<String>>, here: &Here, errors: &mut Errors) -> Option<Arch> {
    let arch = arch?;
    match arch.value.as_str() {
        "x86_64" | "amd64" => Some(Arch::X86_64),
        "aarch64" | "arm64" => Some(Arch::Aarch64),
        other => {
            errors.push(
                arch.pos,
                here,
                format!("arch {other:?} must be x86_64 or aarch64 (or amd64, arm64)"),
            );
            None
        }
    }
}

/// `firmware`: a host path, for aarch64 VMs that boot their image (x86 VMs use QEMU's own
/// BIOS; a `kernel:` boots without firmware).
fn firmware(
    raw: &RawVm,
    arch: Option<Arch>,
    here: &Here,
    cx: &Context,
    errors: &mut Errors,
) -> Option<PathBuf> {
    let firmware = raw.firmware.as_ref()?;
    let here = here.field("firmware");
    let arch = arch.unwrap_or_else(Arch::host);
    if arch != Arch::Aarch64 {
        errors.push(
            firmware.pos,
            &here,
            format!(
                "`firmware` is for aarch64 VMs (this one is {}: QEMU's own BIOS boots it)",
                arch.as_str()
            ),
        );
        return None;
    }
    if raw.kernel.is_some() {
        errors.push(
            firmware.pos,
            &here,
            "`firmware` and `kernel` exclude each other: a kernel boots without firmware",
        );
        return None;
    }
    resolve_path(&firmware.value, cx)
        .map_err(|why| errors.push(firmware.pos, &here, why))
        .ok()
}

/// `kernel`, `initrd` and `cmdline`, for booting a kernel directly instead of the image's
/// boot loader; the last two mean nothing without a kernel.
fn direct_boot(
    raw: &RawVm,
    here: &Here,
    cx: &Context,
    errors: &mut Errors,
) -> (Option<PathBuf>, Option<PathBuf>, Option<String>) {
    let mut host_path = |field: &Option<At<String>>, key: &str| {
        field.as_ref().and_then(|p| {
            resolve_path(&p.value, cx)
                .map_err(|why| errors.push(p.pos, &here.field(key), why))
                .ok()
        })
    };
    let kernel = host_path(&raw.kernel, "kernel");
    let initrd = host_path(&raw.initrd, "initrd");
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
    (kernel, initrd, cmdline)
}

/// Written to the guest's `/etc/environment`: shell-style names, one-line values, each name
/// once.
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

/// Shell commands run in the guest; an empty one is surely a mistake.
fn provision(commands: &[At<String>], here: &Here, errors: &mut Errors) -> Vec<String> {
    commands
        .iter()
        .enumerate()
        .map(|(i, p)| {
            if p.value.trim().is_empty() || p.value.contains('\0') {
                errors.push(
                    p.pos,
                    &here.index(i),
                    "a provision command must be non-empty text without NUL",
                );
            }
            p.value.clone()
        })
        .collect()
}

/// `stop_grace_period` as docker compose writes it (`10s`, `1m30s`, `2m`, `500ms`), in whole
/// seconds (rounded up); a bare number is seconds.
fn grace_period(text: &At<String>, here: &Here, errors: &mut Errors) -> Option<u64> {
    match parse_duration_ms(text.value.trim()) {
        Ok(ms) => Some(ms.div_ceil(1000)),
        Err(why) => {
            errors.push(
                text.pos,
                here,
                format!("stop_grace_period {:?} {why}", text.value),
            );
            None
        }
    }
}

/// A duration as docker compose writes it (`10s`, `1m30s`, `500ms`; a bare number is
/// seconds), in milliseconds.
pub(super) fn parse_duration_ms(text: &str) -> Result<u64, &'static str> {
    const INVALID: &str = "is not a duration such as 10s, 1m30s or 500ms";
    if text.is_empty() {
        return Err(INVALID);
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return text
            .parse::<u64>()
            .ok()
            .and_then(|secs| secs.checked_mul(1000))
            .ok_or("is too long");
    }
    let mut millis: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let units = rest[digits..]
            .bytes()
            .take_while(u8::is_ascii_alphabetic)
            .count();
        let number: u64 = rest[..digits].parse().map_err(|_| INVALID)?;
        let scale = match &rest[digits..digits + units] {
            "h" => 3_600_000,
            "m" => 60_000,
            "s" => 1_000,
            "ms" => 1,
            _ => return Err(INVALID),
        };
        millis = number
            .checked_mul(scale)
            .and_then(|m| millis.checked_add(m))
            .ok_or("is too long")?;
        rest = &rest[digits + units..];
    }
    Ok(millis)
}
