//! `console VM`: the terminal on the VM's serial port until Ctrl+] detaches.

use std::process::ExitCode;

use qemu_compose::qemu::console::{self, ConsoleEnd};

use super::project::{self, RunningVm};
use super::{GlobalArgs, VmArg, output};

pub fn run(global: &GlobalArgs, args: &VmArg) -> anyhow::Result<ExitCode> {
    let RunningVm { vm, paths, .. } = project::running_vm(global, &args.vm)?;
    let name = vm.name.clone();
    let end = console::attach(&paths.serial_socket, output::stdout(), || {
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
