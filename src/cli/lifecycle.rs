//! `up`, `stop` and `destroy`.

use std::process::ExitCode;
use std::time::Duration;

use qemu_compose::engine::{self, DestroyOptions, StopOptions, UpOptions};

use super::{DestroyArgs, GlobalArgs, StderrReporter, StopArgs, UpArgs, progress, project};

pub fn up(global: &GlobalArgs, args: &UpArgs) -> anyhow::Result<ExitCode> {
    let project = project::load_naming(global, &args.vms)?;
    let host = project::host(global)?;
    let opts = UpOptions {
        vms: args.vms.clone(),
        no_start: args.no_start,
        force_recreate: args.force_recreate,
        stop_timeout: args.timeout.map(Duration::from_secs),
        wait: args.wait.then(|| Duration::from_secs(args.wait_timeout)),
        remove_orphans: args.remove_orphans,
        health_wait: Some(Duration::from_secs(args.wait_timeout)),
    };
    let mut progress = progress::for_stderr();
    engine::up(&project, &host, &opts, &StderrReporter, progress.as_mut())?;
    Ok(ExitCode::SUCCESS)
}

pub fn stop(global: &GlobalArgs, args: &StopArgs) -> anyhow::Result<ExitCode> {
    let project = project::load_naming(global, &args.vms)?;
    let host = project::host(global)?;
    engine::stop(&project, &host, &stop_options(args), &StderrReporter)?;
    Ok(ExitCode::SUCCESS)
}

/// `stop`'s options, which `restart` takes too.
pub fn stop_options(args: &StopArgs) -> StopOptions {
    StopOptions {
        vms: args.vms.clone(),
        force: args.force,
        timeout: args.timeout.map(Duration::from_secs),
    }
}

pub fn destroy(global: &GlobalArgs, args: &DestroyArgs) -> anyhow::Result<ExitCode> {
    let project = project::load_naming(global, &args.vms)?;
    let host = project::host(global)?;
    let opts = DestroyOptions {
        vms: args.vms.clone(),
        force: args.force,
        timeout: args.timeout.map(Duration::from_secs),
        volumes: args.volumes,
        remove_orphans: args.remove_orphans,
    };
    engine::destroy(&project, &host, &opts, &StderrReporter)?;
    Ok(ExitCode::SUCCESS)
}
