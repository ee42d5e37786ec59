//! `run`: a one-off instance of a VM for one command, as `docker compose run` (README,
//! "Commands").
//!
//! The one-off instance is the VM under another name (`<vm>-run-<6 hex digits>`): its own
//! copy-on-write disk on the same base, its own seed and SSH port, no `ports:` forwards, the
//! VM's bind mounts, and its named volumes as long as no running VM holds them in a way that
//! excludes a second user. It is started by `up` as a VM of the project, waited for until it
//! answers SSH, and the command runs in it over SSH with this process's standard input, output
//! and error. A marker file tells `up` and `ps` that a running one-off instance is no orphan. Without
//! `--rm`, an instance that was made is kept, stopped (an orphan then, which
//! `down --remove-orphans` removes); one that was not made leaves nothing.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::compose::{MountKind, Project, Vm};
use crate::image::Progress;
use crate::state::{InstancePaths, InstanceRecord, StateDir, atomic};

use super::lifecycle::{self, DestroyOptions, StopOptions, UpOptions};
use super::workspace::instance_paths;
use super::{EngineError, HostEnv, Reporter, Workspace, ssh};

/// The signals the CLI turns into the `interrupted` flag [`run`] watches: the same ones that
/// remove the temporary files of an interrupted command.
pub use crate::cleanup::SIGNALS;

/// What `run` was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The VM to make a one-off instance of.
    pub vm: String,
    /// The command; empty for a login shell.
    pub command: Vec<String>,
    /// Remove the instance afterwards, whatever happened.
    pub remove: bool,
    /// Do not start the VMs it depends on.
    pub no_deps: bool,
    /// How long the instance may take to answer SSH.
    pub wait: Duration,
}

/// How `run` ended, when it got as far as running the command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// The command's exit status (ssh's 255 when the login itself failed).
    Exited(i32),
    /// SIGINT, SIGTERM or SIGHUP arrived; the instance was dealt with.
    Interrupted,
}

/// The marker file in a one-off instance's private folder.
fn marker(paths: &InstancePaths) -> PathBuf {
    paths.private_dir.join("one-off")
}

/// Whether the instance `name` is a one-off instance of `run` that still runs (it is then no
/// orphan: a `run` is using it).
pub(super) fn is_running_one_off(state: &StateDir, host: &HostEnv, name: &str) -> bool {
    let paths = instance_paths(state, host, name);
    marker(&paths).exists()
        && matches!(
            crate::qemu::process::state(&super::status::handle(&paths)),
            crate::qemu::process::ProcState::Running { .. }
        )
}

/// Runs the command in a one-off instance; `interrupted` is set by the caller's signal
/// handler, and checked whenever the wait could be cut short.
pub fn run(
    project: &Project,
    host: &HostEnv,
    opts: &RunOptions,
    interrupted: &AtomicBool,
    reporter: &dyn Reporter,
    progress: &mut dyn Progress,
) -> Result<RunOutcome, EngineError> {
    let base = lifecycle::select(project, std::slice::from_ref(&opts.vm), false)?
        .into_iter()
        .next()
        .ok_or_else(|| EngineError::Refused("no VM selected".into()))?;
    let one_off = one_off_vm(project, host, base, opts.no_deps, reporter)?;
    let name = one_off.name.clone();
    let mut with_it = project.clone();
    with_it.vms.push(one_off);
    let instance = Instance {
        paths: instance_paths(&StateDir::new(&project.dir), host, &name),
        project: &with_it,
        host,
        name: &name,
    };

    let ran = instance.start_and_run(opts, interrupted, reporter, progress);
    let kept = !opts.remove && Workspace::new(&with_it, host).is_created(&name);
    let cleaned = if !kept {
        let destroy = DestroyOptions {
            vms: vec![name.clone()],
            force: true,
            ..DestroyOptions::default()
        };
        lifecycle::destroy(&with_it, host, &destroy, reporter)
    } else {
        let stop = StopOptions {
            vms: vec![name.clone()],
            force: true,
            timeout: None,
        };
        let stopped = lifecycle::stop(&with_it, host, &stop, reporter);
        reporter.info(&format!(
            "kept the one-off instance {name} (stopped); `qemu-compose down --remove-orphans` removes it"
        ));
        stopped
    };
    match (ran, cleaned) {
        (Ok(outcome), Ok(())) => Ok(outcome),
        (Err(e), Ok(())) | (Ok(_), Err(e)) => Err(e),
        (Err(e), Err(cleanup)) => {
            reporter.warn(&format!(
                "the one-off instance {name} could not be stopped or removed: {cleanup}"
            ));
            Err(e)
        }
    }
}

/// The one-off VM: `base` under a new name, without forwards or a fixed SSH port, and
/// without dependencies when `no_deps`.
fn one_off_vm(
    project: &Project,
    host: &HostEnv,
    base: &Vm,
    no_deps: bool,
    reporter: &dyn Reporter,
) -> Result<Vm, EngineError> {
    let ws = Workspace::new(project, host);
    let mut vm = base.clone();
    vm.name = loop {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let stem: String = base.name.chars().take(52).collect();
        let name = format!("{stem}-run-{}", &suffix[..6]);
        if !project.defines(&name) && !ws.is_created(&name) {
            break name;
        }
    };
    vm.ports.clear();
    vm.ssh_port = None;
    vm.profiles.clear();
    if no_deps {
        vm.depends_on.clear();
        vm.healthy_dependencies.clear();
    }
    // A named volume is one ext4 file system: a running writer excludes everyone else, and
    // running readers exclude a writer (QEMU's image lock would refuse both).
    for mount in &mut vm.volumes {
        let MountKind::Named { volume } = &mount.kind else {
            continue;
        };
        let users: Vec<(&str, bool)> = project
            .vms
            .iter()
            .filter(|other| ws.is_running(&other.name))
            .flat_map(|other| {
                other.volumes.iter().filter_map(move |m| match &m.kind {
                    MountKind::Named { volume: v } if v == volume => {
                        Some((other.name.as_str(), !m.read_only))
                    }
                    _ => None,
                })
            })
            .collect();
        if let Some((writer, _)) = users.iter().find(|(_, writes)| *writes) {
            return Err(EngineError::Refused(format!(
                "volume {volume} is attached read-write by the running VM {writer}, so a one-off instance of {} cannot attach it; stop {writer}, or run the command there with `qemu-compose ssh {writer} -- …`",
                base.name
            )));
        }
        if let Some((reader, _)) = users.first()
            && !mount.read_only
        {
            reporter.warn(&format!(
                "volume {volume} is attached read-only to the one-off instance: the running VM {reader} reads it"
            ));
            mount.read_only = true;
        }
    }
    Ok(vm)
}

/// The one-off instance, in the project that has it.
struct Instance<'a> {
    project: &'a Project,
    host: &'a HostEnv,
    name: &'a str,
    paths: InstancePaths,
}

impl Instance<'_> {
    /// Starts the instance (and what it depends on), waits for SSH and runs the command.
    fn start_and_run(
        &self,
        opts: &RunOptions,
        interrupted: &AtomicBool,
        reporter: &dyn Reporter,
        progress: &mut dyn Progress,
    ) -> Result<RunOutcome, EngineError> {
        let name = self.name;
        let up = UpOptions {
            vms: vec![name.to_owned()],
            health_wait: Some(opts.wait),
            ..UpOptions::default()
        };
        // Marked before QEMU starts, so that no `up` or `ps` ever sees it as an orphan.
        let state = StateDir::new(&self.project.dir);
        state.ensure()?;
        state.check_inside(&self.paths.private_dir)?;
        atomic::create_private_dir(&self.paths.private_dir, 0o700)?;
        atomic::write_atomic(&marker(&self.paths), b"", 0o600)?;
        lifecycle::up(self.project, self.host, &up, reporter, progress)?;
        let vm = self
            .project
            .vm(name)
            .ok_or_else(|| EngineError::Refused(format!("no VM {name}")))?;
        let record = InstanceRecord::load(&self.paths.record)?
            .ok_or_else(|| EngineError::vm(name, "has no instance record after it started"))?;
        let key = state.ssh_key();
        let login = ssh::Login {
            key: &key,
            user: &vm.user,
            port: record.ssh_port,
            vm: name,
            known_hosts: &self.paths.known_hosts,
        };
        reporter.info(&format!("waiting for {name} to answer SSH"));
        let deadline = Instant::now() + opts.wait;
        match ssh::wait_ready(&login, deadline, || interrupted.load(Ordering::Relaxed)) {
            ssh::Wait::Ready => super::status::mark_ready(&self.paths, &record),
            ssh::Wait::GaveUp => return Ok(RunOutcome::Interrupted),
            ssh::Wait::TimedOut => {
                return Err(EngineError::vm(
                    name,
                    format!("did not answer SSH within {} s", opts.wait.as_secs()),
                ));
            }
        }
        let status = Command::new("ssh")
            .args(ssh::args(&login, &[], &opts.command))
            .status()
            .map_err(|e| EngineError::vm_step(name, "cannot run ssh", e))?;
        if interrupted.load(Ordering::Relaxed) {
            return Ok(RunOutcome::Interrupted);
        }
        Ok(RunOutcome::Exited(status.code().unwrap_or(255)))
    }
}
