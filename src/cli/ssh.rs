//! `ssh VM [CMD…]`: replace this process with the system `ssh`, logged into the VM.
//!
//! `exec` rather than a child: signals, the terminal and the exit status then belong to ssh
//! alone, exactly as if the user had typed the command.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};
use qemu_compose::engine::{HostEnv, inspect, ssh, status};
use qemu_compose::qemu::process::{self, ProcState};
use qemu_compose::state::{InstancePaths, InstanceRecord, StateDir};

use super::{GlobalArgs, SshArgs, project};

pub fn run(global: &GlobalArgs, args: &SshArgs) -> anyhow::Result<ExitCode> {
    let project = project::load(global)?;
    let vm = super::ps::selected(&project, std::slice::from_ref(&args.vm))?
        .into_iter()
        .next()
        .context("no VM selected")?;
    let host = HostEnv::from_process()?;
    let state = StateDir::new(&project.dir);
    let paths = InstancePaths::new(&state, &vm.name, host.runtime_dir.as_deref());
    match process::state(&status::handle(&paths)) {
        ProcState::Running { .. } => {}
        ProcState::NotRunning => {
            bail!(
                "VM {} is not running; start it with `qemu-compose up {}`",
                vm.name,
                vm.name
            )
        }
        ProcState::Stale { reason, .. } => bail!(
            "VM {} is not running ({reason}); `qemu-compose up {}` cleans up and starts it",
            vm.name,
            vm.name
        ),
    }
    let record = InstanceRecord::load(&paths.record)?.with_context(|| {
        format!(
            "VM {} runs but has no instance record ({}); restart it with `qemu-compose up --force-recreate {}`",
            vm.name,
            paths.record.display(),
            vm.name
        )
    })?;
    let key = inspect::ssh_key(&state);
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
