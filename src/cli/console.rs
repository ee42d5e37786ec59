//! `console VM`: the terminal on the VM's serial port until Ctrl+] detaches.

use std::process::ExitCode;

use anyhow::{Context, bail};
use qemu_compose::engine::{HostEnv, status};
use qemu_compose::qemu::console::{self, ConsoleEnd};
use qemu_compose::qemu::process::{self, ProcState};
use qemu_compose::state::{InstancePaths, StateDir};

use super::{GlobalArgs, VmArg, project};

pub fn run(global: &GlobalArgs, args: &VmArg) -> anyhow::Result<ExitCode> {
    let project = project::load(global)?;
    let vm = super::ps::selected(&project, std::slice::from_ref(&args.vm))?
        .into_iter()
        .next()
        .context("no VM selected")?;
    let host = HostEnv::from_process()?;
    let state = StateDir::new(&project.dir);
    let paths = InstancePaths::new(&state, &vm.name, host.runtime_dir.as_deref());
    if !matches!(
        process::state(&status::handle(&paths)),
        ProcState::Running { .. }
    ) {
        bail!(
            "VM {} is not running; start it with `qemu-compose up {}`",
            vm.name,
            vm.name
        );
    }
    let name = vm.name.clone();
    let end = console::attach(&paths.serial_socket, || {
        eprintln!("Connected to {name}'s console; Ctrl+] detaches");
    })?;
    match end {
        ConsoleEnd::Detached => eprintln!("\r\nDetached from {}'s console", vm.name),
        ConsoleEnd::VmClosed => eprintln!("\r\nVM {} closed its console (it stopped)", vm.name),
        ConsoleEnd::InputClosed => {}
        ConsoleEnd::Signalled(sig) => {
            eprintln!("\r\nLeft {}'s console on signal {sig}", vm.name);
            return Ok(ExitCode::from(128 + sig as u8));
        }
    }
    Ok(ExitCode::SUCCESS)
}
