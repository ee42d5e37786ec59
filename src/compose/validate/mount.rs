//! A VM's `volumes:`: bind mounts of host folders and named volumes, in the short or the long
//! form, and which named volumes VMs may share.

use std::collections::{HashMap, HashSet};

use super::Context;
use super::paths::resolve_path;
use super::references::Lookups;
use crate::compose::error::{At, Errors, Here};
use crate::compose::model::{MountKind, MountOption, SecurityModel, Vm, VolumeMount};
use crate::compose::raw::{RawLongMount, RawMount};
use crate::compose::tree::Pos;

/// A VM's mounts; two on one target are refused. Each kept mount comes with its index in the
/// list and its position, for [`check_shared_volumes`].
pub(super) fn mounts(
    raw: &[RawMount],
    here: &Here,
    cx: &Context,
    lookups: &Lookups,
    errors: &mut Errors,
) -> (Vec<VolumeMount>, Vec<(usize, Pos)>) {
    let mut volumes: Vec<VolumeMount> = Vec::new();
    let mut positions = Vec::new();
    let mut targets = HashSet::new();
    for (i, m) in raw.iter().enumerate() {
        let here = here.index(i);
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
    (volumes, positions)
}

/// One volume entry as written, in either form.
struct Written<'a> {
    source: At<String>,
    target: At<String>,
    read_only: bool,
    /// Where the entry starts, blamed for problems of the whole entry.
    pos: Pos,
    /// The long form, whose keys have places of their own and options of their own.
    long: Option<&'a RawLongMount>,
}

/// One volume entry; returns the mount and the position to blame for cross-mount problems.
fn mount(
    raw: &RawMount,
    here: &Here,
    cx: &Context,
    lookups: &Lookups,
    errors: &mut Errors,
) -> Option<(VolumeMount, Pos)> {
    let written = match raw {
        RawMount::Short(spec) => short_form(spec, here, errors)?,
        RawMount::Long(m) => long_form(m, here, errors)?,
    };
    let (source_here, target_here) = match written.long {
        Some(_) => (here.field("source"), here.field("target")),
        None => (here.clone(), here.clone()),
    };
    let target = normalize_target(&written.target.value).unwrap_or_else(|why| {
        errors.push(written.target.pos, &target_here, why);
        written.target.value.clone()
    });
    let source = &written.source;
    let kind = if source.value.is_empty() {
        errors.push(source.pos, &source_here, "the source is empty");
        return None;
    } else if is_bind_source(&source.value) {
        bind(source, written.long, &source_here, here, cx, errors)?
    } else {
        named(source, written.long, &source_here, here, lookups, errors)
    };
    Some((
        VolumeMount {
            target,
            read_only: written.read_only,
            kind,
        },
        written.pos,
    ))
}

/// `source:target[:ro|:rw]`
fn short_form<'a>(spec: &At<String>, here: &Here, errors: &mut Errors) -> Option<Written<'a>> {
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
    Some(Written {
        source: at(parts[0]),
        target: at(parts[1]),
        read_only,
        pos: spec.pos,
        long: None,
    })
}

/// `{source: …, target: …, read_only: …, …}`; `source` and `target` are required.
fn long_form<'a>(m: &'a RawLongMount, here: &Here, errors: &mut Errors) -> Option<Written<'a>> {
    let (Some(source), Some(target)) = (&m.source, &m.target) else {
        for (field, key) in [(&m.source, "source"), (&m.target, "target")] {
            if field.is_none() {
                errors.push(m.pos, here, format!("`{key}:` is required"));
            }
        }
        return None;
    };
    Some(Written {
        source: source.clone(),
        target: target.clone(),
        read_only: m.read_only.as_ref().is_some_and(|r| r.value),
        pos: m.pos,
        long: Some(m),
    })
}

/// The seed's detection rule: a source containing `/` or `\`, or starting with `.` (or `~`,
/// expanded like docker does), is a host path; anything else names a volume.
fn is_bind_source(source: &str) -> bool {
    source.contains(['/', '\\']) || source.starts_with(['.', '~'])
}

/// A host folder shared over 9p, with the long form's options.
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
    let automount = long
        .and_then(|m| m.automount.as_ref())
        .is_none_or(|a| a.value);
    let mount_options = long
        .and_then(|m| m.mount_options.as_ref())
        .and_then(|opts| {
            parse_mount_options(&opts.value)
                .map_err(|why| errors.push(opts.pos, &here.field("mount_options"), why))
                .ok()
        })
        .unwrap_or_default();
    let security_model = long
        .and_then(|m| m.security_model.as_ref())
        .and_then(|sm| security_model(sm, &here.field("security_model"), errors));
    Some(MountKind::Bind {
        source_written: source.value.clone(),
        source: resolved,
        automount,
        mount_options,
        security_model,
    })
}

fn security_model(sm: &At<String>, here: &Here, errors: &mut Errors) -> Option<SecurityModel> {
    let found = SecurityModel::ALL
        .into_iter()
        .find(|s| s.as_str() == sm.value);
    if found.is_none() {
        let valid: Vec<&str> = SecurityModel::ALL.iter().map(|s| s.as_str()).collect();
        errors.push(
            sm.pos,
            here,
            format!(
                "security_model {:?} must be one of {}",
                sm.value,
                valid.join(", ")
            ),
        );
    }
    found
}

/// A named volume: it must be declared, and the long form must not set options that only
/// bind mounts have.
fn named(
    source: &At<String>,
    long: Option<&RawLongMount>,
    source_here: &Here,
    here: &Here,
    lookups: &Lookups,
    errors: &mut Errors,
) -> MountKind {
    if !lookups.volumes.contains(&source.value) {
        errors.push(
            source.pos,
            source_here,
            format!(
                "named volume {:?} is not declared under top-level volumes (declared: {}); a host path must start with ./ or /",
                source.value,
                lookups.volumes.listed()
            ),
        );
    }
    if let Some(m) = long {
        check_no_bind_options(m, &source.value, here, errors);
    }
    MountKind::Named {
        volume: source.value.clone(),
    }
}

/// Values that change nothing (`automount: true`, `mount_options: ""`, as in the seed's
/// long-form example) are accepted; anything that would be ignored is not.
fn check_no_bind_options(m: &RawLongMount, volume: &str, here: &Here, errors: &mut Errors) {
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
                    "`{key}` applies to bind mounts only, not to named volume {volume:?} (named volumes are always mounted, as ext4)"
                ),
            );
        }
    }
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

/// Who has attached a named volume so far: the first VM, and the first writer if any.
struct Users<'a> {
    first: &'a str,
    writer: Option<&'a str>,
}

/// A named volume written by one VM may not be attached anywhere else (ext4 is not a cluster
/// filesystem and QEMU's image lock would refuse anyway); read-only users may share.
pub(super) fn check_shared_volumes(
    vms: &[Vm],
    mount_positions: &[Vec<(usize, Pos)>],
    here: &Here,
    errors: &mut Errors,
) {
    let mut users: HashMap<&str, Users> = HashMap::new();
    for (vm, positions) in vms.iter().zip(mount_positions) {
        for (mount, &(i, pos)) in vm.volumes.iter().zip(positions) {
            let MountKind::Named { volume } = &mount.kind else {
                continue;
            };
            let Some(other) = attach(&mut users, volume, &vm.name, !mount.read_only) else {
                continue;
            };
            let whom = if other == vm.name {
                "this VM already".to_owned()
            } else {
                format!("VM {other:?}")
            };
            errors.push(
                pos,
                &here.vm(&vm.name).field("volumes").index(i),
                format!(
                    "named volume {volume:?} is also attached by {whom}; a volume can be shared only when every attachment is read-only"
                ),
            );
        }
    }
}

/// Records that `vm` attaches `volume`; returns the VM this clashes with: for a writer the
/// first user, else the first writer.
fn attach<'a>(
    users: &mut HashMap<&'a str, Users<'a>>,
    volume: &'a str,
    vm: &'a str,
    writes: bool,
) -> Option<&'a str> {
    let writer = writes.then_some(vm);
    let Some(earlier) = users.get_mut(volume) else {
        users.insert(volume, Users { first: vm, writer });
        return None;
    };
    let clash = match writer {
        Some(_) => Some(earlier.first),
        None => earlier.writer,
    };
    earlier.writer = earlier.writer.or(writer);
    clash
}
