//! Finding and loading the project the command works on.

use anyhow::Context;
use qemu_compose::compose::{
    self, DiscoverError, DiscoverOptions, LoadOptions, ProcessEnv, Project, Vm,
};
use qemu_compose::engine::{EngineError, HostEnv, RunningVm, Workspace, lifecycle};

use super::GlobalArgs;
use super::output::note;

/// Discovers the compose files and loads the validated project, with the VMs of inactive
/// profiles left out.
pub fn load(global: &GlobalArgs) -> anyhow::Result<Project> {
    load_naming(global, &[])
}

/// [`load`] for a command that names VMs: a named VM is used whatever its profiles.
pub fn load_naming(global: &GlobalArgs, names: &[String]) -> anyhow::Result<Project> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let opts = DiscoverOptions {
        files: global.file.clone(),
        cwd,
    };
    let located = compose::discover(&opts, &ProcessEnv)?;
    if let Some(ignored) = &located.ignored {
        note!(
            "warning: found {} and {}; using {}",
            located.file.display(),
            ignored.display(),
            located.file.display()
        );
    }
    let project = compose::load(
        &located,
        &LoadOptions {
            project_name: global.project_name.as_deref(),
            env: &ProcessEnv,
        },
    )?;
    for warning in &project.warnings {
        note!("warning: {warning}");
    }
    Ok(project.with_profiles(&global.profile, names))
}

/// The host as the engine sees it, with the user's `--qemu`, `--accel` and
/// `--aarch64-firmware` (made absolute: QEMU is given absolute paths only).
pub fn host(global: &GlobalArgs) -> Result<HostEnv, EngineError> {
    let firmware = global
        .aarch64_firmware
        .as_deref()
        .map(std::path::absolute)
        .transpose()
        .map_err(|e| EngineError::Refused(format!("--aarch64-firmware: {e}")))?;
    HostEnv::from_process(global.qemu.clone(), global.accel.clone(), firmware)
}

/// Loads the project and finds the running VM `name`, or says why it cannot be used.
pub fn running_vm(global: &GlobalArgs, name: &str) -> anyhow::Result<RunningVm> {
    let project = load_naming(global, &[name.to_owned()])?;
    let host = host(global)?;
    Ok(Workspace::new(&project, &host).running_vm(name)?)
}

/// The project of this directory, or `None` when no compose file is found (an explicit
/// `-f` that does not exist, or an invalid file, is still an error). For the commands that
/// also work outside a project (`image`, `doctor`).
pub fn optional(global: &GlobalArgs) -> anyhow::Result<Option<Project>> {
    match load(global) {
        Ok(p) => Ok(Some(p)),
        Err(e) if matches!(e.downcast_ref(), Some(DiscoverError::NotFound { .. })) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The VMs named (all when none), checked to exist, in compose order.
pub fn selected<'p>(project: &'p Project, names: &[String]) -> anyhow::Result<Vec<&'p Vm>> {
    let chosen = lifecycle::select(project, names, false)?;
    Ok(project
        .vms
        .iter()
        .filter(|vm| chosen.iter().any(|c| c.name == vm.name))
        .collect())
}
