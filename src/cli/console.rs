//! `console VM`: the terminal on the VM's serial port until Ctrl+] detaches.

use std::process::ExitCode;

use qemu_compose::qemu::console::{self, ConsoleEnd};

use super::output::note;
use super::project::{self, RunningVm};
use super::{GlobalArgs, VmArg, output};

pub fn run(global: &GlobalArgs, args: &VmArg) -> anyhow::Result<ExitCode> {
    let RunningVm { vm, state, paths } = project::running_vm(global, &args.vm)?;
    let name = vm.name.clone();
    let login = format!(
        "log in as {} with the password on the first line of {}",
        vm.user,
        state.console_password().display()
    );
    let end = console::attach(&paths.serial_socket, output::stdout(), || {
        note!("Connected to {name}'s console ({login}); Ctrl+] detaches");
    })?;
    match end {
        ConsoleEnd::Detached => note!("\r\nDetached from {}'s console", vm.name),
        ConsoleEnd::VmClosed => note!("\r\nVM {} closed its console (it stopped)", vm.name),
        ConsoleEnd::InputClosed => {}
        ConsoleEnd::Signalled(sig) => {
            note!("\r\nLeft {}'s console on signal {sig}", vm.name);
            return Ok(ExitCode::from(128 + sig as u8));
        }
    }
    Ok(ExitCode::SUCCESS)
}
