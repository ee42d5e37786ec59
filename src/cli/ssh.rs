//! `ssh VM [CMD…]`: replace this process with the system `ssh`, logged into the VM.
//!
//! `exec` rather than a child: signals, the terminal and the exit status then belong to ssh
//! alone, exactly as if the user had typed the command.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use qemu_compose::engine::{SshTarget, ssh};

use super::output::note;
use super::project;
use super::{GlobalArgs, SshArgs};

pub fn run(global: &GlobalArgs, args: &SshArgs) -> anyhow::Result<ExitCode> {
    let running = project::running_vm(global, &args.vm)?;
    let target = running.ssh_target()?;
    let (options, command) =
        ssh::split_words(&args.words, &args.command).map_err(super::UsageError)?;
    let wait = Duration::from_secs(args.wait_timeout);
    wait_for_sshd(&running.vm.name, &target, wait)?;
    let err = Command::new("ssh")
        .args(ssh::args(&target.login(), &options, &command))
        .exec();
    Err(err).context(
        "cannot run ssh (is the OpenSSH client installed? Debian: apt install openssh-client)",
    )
}

/// Returns once the VM's sshd answers, saying so while it waits: a guest that boots holds
/// the connection, and ssh would wait in silence.
fn wait_for_sshd(vm: &str, target: &SshTarget, limit: Duration) -> anyhow::Result<()> {
    if target.known_ready() || ssh::banner_seen(target.port(), Duration::from_millis(300)) {
        return Ok(());
    }
    note!(
        "VM {vm} is starting: its SSH server does not answer yet; waiting up to {} s (Ctrl+C gives up)",
        limit.as_secs()
    );
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if ssh::banner_seen(target.port(), Duration::from_secs(1)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!(
        "VM {vm} did not answer SSH within {} s; `qemu-compose logs {vm}` shows its console",
        limit.as_secs()
    )
}
