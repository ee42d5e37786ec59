//! What the project, VMs, volumes and networks may be called, and where the project's name
//! comes from.

use crate::compose::discover::{PROJECT_NAME_VAR, is_valid_name, normalize_project_name};
use crate::compose::error::{At, Errors, Here};
use crate::compose::raw::RawFile;
use crate::compose::tree::Pos;

use super::Context;

/// Longest VM, volume and network name (a DNS label).
pub const MAX_NAME_LEN: usize = 63;

/// `-p` or `$QEMU_COMPOSE_PROJECT_NAME`, else `name:`, else the directory's name made valid.
pub(super) fn project_name(raw: &RawFile, cx: &Context, errors: &mut Errors) -> String {
    let explicit = cx
        .project_name
        .map(str::to_owned)
        .or_else(|| cx.env.var(PROJECT_NAME_VAR).filter(|v| !v.is_empty()));
    if let Some(name) = explicit {
        check_project_name(&name, Pos::default(), &Here::root(), errors);
        return name;
    }
    if let Some(name) = &raw.name {
        check_project_name(&name.value, name.pos, &Here::root().field("name"), errors);
        return name.value.clone();
    }
    project_name_from_dir(cx, errors)
}

fn check_project_name(name: &str, pos: Pos, here: &Here, errors: &mut Errors) {
    if !is_valid_name(name) {
        errors.push(
            pos,
            here,
            format!("project name {name:?} must match [a-z0-9][a-z0-9_-]*"),
        );
    }
}

fn project_name_from_dir(cx: &Context, errors: &mut Errors) -> String {
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
pub(super) fn check_name(name: &At<String>, what: &str, here: &Here, errors: &mut Errors) {
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
