//! Phase 2: raw types -> the validated model, applying the defaults and every rule of
//! docs/compose.md that needs no disk access. All problems are collected.
//!
//! Errors are sorted by position in the end; those at one position (the source and target of
//! a short volume entry, say) stay in the order the checks ran, so that order is kept here.

mod health;
mod mount;
mod names;
mod network;
mod paths;
mod ports;
mod references;
mod sizes;
mod vm;

use std::path::Path;

use super::error::{Errors, Here};
use super::interpolate::Env;
use super::model::{Project, Vm, VolumeDecl};
use super::raw::RawFile;
use super::size::{MAX_VOLUME_SIZE, MIN_VOLUME_SIZE};
use super::tree::Pos;
use references::Lookups;

pub use names::MAX_NAME_LEN;
pub use sizes::{
    DEFAULT_MEMORY_MIB, DEFAULT_SIZE, MAX_DISK_SIZE, MAX_MEMORY_MIB, MIN_DISK_SIZE, MIN_MEMORY_MIB,
};
pub use vm::MAX_CPU;

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
    let name = names::project_name(&raw, cx, errors);
    let here = Here::root();
    let volumes = volume_decls(&raw, &here.field("volumes"), cx, errors);
    let networks = network::networks(&raw.networks, &here.field("networks"), errors);
    let lookups = Lookups::new(&raw, &volumes, &networks);
    let vms_here = here.field("vms");
    let (vms, mount_positions) = vms(&raw, &vms_here, cx, &lookups, errors);
    references::check_cycles(&raw, &vms_here, errors);
    health::check_healthy_dependencies(&raw, &vms, &vms_here, errors);
    mount::check_shared_volumes(&vms, &mount_positions, &vms_here, errors);
    ports::check_host_ports(&raw, &vms, &vms_here, errors);
    Project {
        name,
        dir: cx.dir.to_owned(),
        file: cx.file.to_owned(),
        vms,
        volumes,
        networks,
        warnings: Vec::new(),
        inactive: Vec::new(),
        places: Default::default(),
    }
}

/// Top-level `volumes:`: a valid name, a size (10 GiB unless given) and the folder that fills
/// it.
fn volume_decls(raw: &RawFile, here: &Here, cx: &Context, errors: &mut Errors) -> Vec<VolumeDecl> {
    let mut volumes = Vec::new();
    for (name, vol) in &raw.volumes {
        let here = here.field(&name.value);
        names::check_name(name, "volume", &here, errors);
        let size_bytes = vol.size.as_ref().map_or(DEFAULT_SIZE, |size| {
            let here = here.field("size");
            sizes::size_bytes(size, &here, errors, MIN_VOLUME_SIZE, MAX_VOLUME_SIZE)
        });
        let init_from = vol.init_from.as_ref().and_then(|path| {
            paths::resolve_path(&path.value, cx)
                .map_err(|why| errors.push(path.pos, &here.field("init_from"), why))
                .ok()
        });
        volumes.push(VolumeDecl {
            name: name.value.clone(),
            size_bytes,
            init_from,
        });
    }
    volumes
}

/// Every VM, with the index and position of each mount it keeps.
fn vms(
    raw: &RawFile,
    here: &Here,
    cx: &Context,
    lookups: &Lookups,
    errors: &mut Errors,
) -> (Vec<Vm>, Vec<Vec<(usize, Pos)>>) {
    raw.vms
        .iter()
        .map(|(name, raw_vm)| {
            let here = here.vm(&name.value);
            names::check_name(name, "VM", &here, errors);
            vm::vm(name, raw_vm, &here, cx, lookups, errors)
        })
        .unzip()
}
