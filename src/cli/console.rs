//! `console VM`: the terminal on the VM's serial port until Ctrl+] detaches.

use std::process::ExitCode;

use qemu_compose::engine::ConsoleEnd;

use super::output::note;
use super::project;
use super::{GlobalArgs, VmArg, output};

pub fn run(global: &GlobalArgs, args: &VmArg) -> anyhow::Result<ExitCode> {
    let running = project::running_vm(global, &args.vm)?;
    let vm = &running.vm;
    let name = vm.name.clone();
    let login = format!(
        "log in as {} with the password on the first line of {}",
        vm.user,
        running.console_password().display()
    );
    let end = running.attach_console(output::stdout(), || {
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
