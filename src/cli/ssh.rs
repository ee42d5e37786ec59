//! `ssh VM [CMD…]`: replace this process with the system `ssh`, logged into the VM.
//!
//! `exec` rather than a child: signals, the terminal and the exit status then belong to ssh
//! alone, exactly as if the user had typed the command.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use qemu_compose::engine::ssh;
use qemu_compose::state::InstanceRecord;

use super::project::{self, RunningVm};
use super::{GlobalArgs, SshArgs};

pub fn run(global: &GlobalArgs, args: &SshArgs) -> anyhow::Result<ExitCode> {
    let RunningVm { vm, state, paths } = project::running_vm(global, &args.vm)?;
    let record = InstanceRecord::load(&paths.record)?.with_context(|| {
        format!(
            "VM {} runs but has no instance record ({}); restart it with `qemu-compose up --force-recreate {}`",
            vm.name,
            paths.record.display(),
            vm.name
        )
    })?;
    let key = state.ssh_key();
    if !key.is_file() {
        bail!("the project's SSH key {} is missing", key.display());
    }
    let err = Command::new("ssh")
        .args(ssh::args(&key, &vm.user, record.ssh_port, &args.command))
        .exec();
    Err(err).context(
        "cannot run ssh (is the OpenSSH client installed? Debian: apt install openssh-client)",
    )
}
