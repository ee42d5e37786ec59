//! `ssh VM [CMD…]`: replace this process with the system `ssh`, logged into the VM.
//!
//! `exec` rather than a child: signals, the terminal and the exit status then belong to ssh
//! alone, exactly as if the user had typed the command.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use qemu_compose::engine::{ssh, status};
use qemu_compose::state::{InstancePaths, InstanceRecord};

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
    if !paths.known_hosts.is_file() {
        bail!(
            "VM {} was started before qemu-compose pinned SSH host keys, so its key cannot be checked; restart it with `qemu-compose up --force-recreate {}`",
            vm.name,
            vm.name
        );
    }
    let login = ssh::Login {
        key: &key,
        user: &vm.user,
        port: record.ssh_port,
        vm: &vm.name,
        known_hosts: &paths.known_hosts,
    };
    let (options, command) =
        ssh::split_words(&args.words, &args.command).map_err(super::UsageError)?;
    let wait = Duration::from_secs(args.wait_timeout);
    wait_for_sshd(&vm.name, &paths, &record, wait)?;
    let err = Command::new("ssh")
        .args(ssh::args(&login, &options, &command))
        .exec();
    Err(err).context(
        "cannot run ssh (is the OpenSSH client installed? Debian: apt install openssh-client)",
    )
}

/// Returns once the VM's sshd answers, saying so while it waits: a guest that boots holds
/// the connection, and ssh would wait in silence.
fn wait_for_sshd(
    vm: &str,
    paths: &InstancePaths,
    record: &InstanceRecord,
    limit: Duration,
) -> anyhow::Result<()> {
    if status::known_ready(paths, record)
        || ssh::banner_seen(record.ssh_port, Duration::from_millis(300))
    {
        return Ok(());
    }
    eprintln!(
        "VM {vm} is starting: its SSH server does not answer yet; waiting up to {} s (Ctrl+C gives up)",
        limit.as_secs()
    );
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ssh::banner_seen(record.ssh_port, Duration::from_secs(1)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!(
        "VM {vm} did not answer SSH within {} s; `qemu-compose logs {vm}` shows its console",
        limit.as_secs()
    )
}
