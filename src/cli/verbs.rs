//! `start`, `restart`, `pause`, `unpause` and `port`.

use std::io::Write;
use std::process::ExitCode;

use qemu_compose::compose::Protocol;
use qemu_compose::engine::verbs;

use super::{GlobalArgs, PortArgs, PortProtocol, StderrReporter, StopArgs, VmsArgs};
use super::{output, progress, project};

pub fn start(global: &GlobalArgs, args: &VmsArgs) -> anyhow::Result<ExitCode> {
    let project = project::load_naming(global, &args.vms)?;
    let host = project::host(global)?;
    let mut progress = progress::for_stderr();
    verbs::start(
        &project,
        &host,
        &args.vms,
        &StderrReporter,
        progress.as_mut(),
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn restart(global: &GlobalArgs, args: &StopArgs) -> anyhow::Result<ExitCode> {
    let project = project::load_naming(global, &args.vms)?;
    let host = project::host(global)?;
    let opts = super::lifecycle::stop_options(args);
    let mut progress = progress::for_stderr();
    verbs::restart(&project, &host, &opts, &StderrReporter, progress.as_mut())?;
    Ok(ExitCode::SUCCESS)
}

pub fn pause(global: &GlobalArgs, args: &VmsArgs, pause: bool) -> anyhow::Result<ExitCode> {
    let project = project::load_naming(global, &args.vms)?;
    let host = project::host(global)?;
    verbs::pause(&project, &host, &args.vms, pause, &StderrReporter)?;
    Ok(ExitCode::SUCCESS)
}

pub fn port(global: &GlobalArgs, args: &PortArgs) -> anyhow::Result<ExitCode> {
    let project = project::load_naming(global, std::slice::from_ref(&args.vm))?;
    let host = project::host(global)?;
    let protocol = match args.protocol {
        PortProtocol::Tcp => Protocol::Tcp,
        PortProtocol::Udp => Protocol::Udp,
    };
    let address = verbs::port(&project, &host, &args.vm, args.guest_port, protocol)?;
    writeln!(output::stdout(), "{address}")?;
    Ok(ExitCode::SUCCESS)
}
