//! The instances of a project on this host: where each VM's files are, and whether its QEMU
//! runs. The commands that talk to one VM (`console`, `ssh`, `logs`) ask here instead of
//! reading state folders and pidfiles themselves.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::compose::{Project, Vm};
use crate::qemu::console::{self, ConsoleEnd, ConsoleError};
use crate::qemu::process::{self, ProcState};
use crate::state::{InstancePaths, InstanceRecord, StateDir};

use super::{EngineError, HostEnv, lifecycle, ssh, status};

/// The files of VM `vm` of the project whose state folder is `state`: the one place that
/// decides where they are (sockets move to the runtime folder when the project is deep).
pub(crate) fn instance_paths(state: &StateDir, host: &HostEnv, vm: &str) -> InstancePaths {
    InstancePaths::new(state, vm, host.runtime_dir.as_deref())
}

/// A project on this host.
#[derive(Debug)]
pub struct Workspace<'a> {
    project: &'a Project,
    host: &'a HostEnv,
    state: StateDir,
}

impl<'a> Workspace<'a> {
    /// The instances of `project` on `host`.
    pub fn new(project: &'a Project, host: &'a HostEnv) -> Self {
        Self {
            project,
            host,
            state: StateDir::new(&project.dir),
        }
    }

    /// The files of VM `vm`.
    pub fn paths(&self, vm: &str) -> InstancePaths {
        instance_paths(&self.state, self.host, vm)
    }

    /// The serial console log of VM `vm`.
    pub fn serial_log(&self, vm: &str) -> PathBuf {
        self.paths(vm).serial_log
    }

    /// Whether `up` made VM `vm`'s instance (its disk exists).
    pub fn is_created(&self, vm: &str) -> bool {
        self.paths(vm).disk.exists()
    }

    /// Whether VM `vm`'s QEMU runs (by pidfile and process; nothing is asked of QEMU).
    pub fn is_running(&self, vm: &str) -> bool {
        matches!(
            process::state(&status::handle(&self.paths(vm))),
            ProcState::Running { .. }
        )
    }

    /// The VM `name` of the compose file whose QEMU runs, or why it cannot be used.
    pub fn running_vm(&self, name: &str) -> Result<RunningVm, EngineError> {
        let vm = lifecycle::select(self.project, &[name.to_string()], false)?
            .into_iter()
            .next()
            .ok_or_else(|| EngineError::Refused("no VM selected".into()))?
            .clone();
        let paths = self.paths(&vm.name);
        paths.check_socket_dir()?;
        match process::state(&status::handle(&paths)) {
            ProcState::Running { .. } => Ok(RunningVm {
                vm,
                paths,
                ssh_key: self.state.ssh_key(),
                console_password: self.state.console_password(),
            }),
            ProcState::NotRunning => Err(EngineError::Refused(format!(
                "VM {} is not running; start it with `qemu-compose up {}`",
                vm.name, vm.name
            ))),
            ProcState::Stale { reason, .. } => Err(EngineError::Refused(format!(
                "VM {} is not running ({reason}); `qemu-compose up {}` cleans up and starts it",
                vm.name, vm.name
            ))),
        }
    }
}

/// A VM whose QEMU runs, for the commands that talk to it (`console`, `ssh`).
#[derive(Debug)]
pub struct RunningVm {
    /// The VM as the compose file describes it.
    pub vm: Vm,
    paths: InstancePaths,
    ssh_key: PathBuf,
    console_password: PathBuf,
}

impl RunningVm {
    /// The file whose first line is the guest user's console password.
    pub fn console_password(&self) -> &Path {
        &self.console_password
    }

    /// Relays the terminal to the VM's serial console, writing what the VM sends to
    /// `output`, until Ctrl+] or the end of either side; `on_ready` runs once connected.
    pub fn attach_console(
        &self,
        output: impl Write + Send + 'static,
        on_ready: impl FnOnce(),
    ) -> Result<ConsoleEnd, ConsoleError> {
        console::attach(&self.paths.serial_socket, output, on_ready)
    }

    /// What `ssh` needs to log in: the instance record (its SSH port), the project key and
    /// the pinned host key, or why the VM cannot be reached that way.
    pub fn ssh_target(&self) -> Result<SshTarget<'_>, EngineError> {
        let vm = &self.vm.name;
        let record = InstanceRecord::load(&self.paths.record)?.ok_or_else(|| {
            EngineError::Refused(format!(
                "VM {vm} runs but has no instance record ({}); restart it with `qemu-compose up --force-recreate {vm}`",
                self.paths.record.display(),
            ))
        })?;
        if !self.ssh_key.is_file() {
            return Err(EngineError::Refused(format!(
                "the project's SSH key {} is missing",
                self.ssh_key.display()
            )));
        }
        if !self.paths.known_hosts.is_file() {
            return Err(EngineError::Refused(format!(
                "VM {vm} was started before qemu-compose pinned SSH host keys, so its key cannot be checked; restart it with `qemu-compose up --force-recreate {vm}`"
            )));
        }
        Ok(SshTarget {
            running: self,
            record,
        })
    }
}

/// A running VM ssh can log into.
#[derive(Debug)]
pub struct SshTarget<'a> {
    running: &'a RunningVm,
    record: InstanceRecord,
}

impl SshTarget<'_> {
    /// The login: key, user, port and pinned host key.
    pub fn login(&self) -> ssh::Login<'_> {
        ssh::Login {
            key: &self.running.ssh_key,
            user: &self.running.vm.user,
            port: self.record.ssh_port,
            vm: &self.running.vm.name,
            known_hosts: &self.running.paths.known_hosts,
        }
    }

    /// The host port forwarded to the guest's sshd.
    pub fn port(&self) -> u16 {
        self.record.ssh_port
    }

    /// Whether the VM answered SSH since QEMU started (`up --wait` or `ps` saw it).
    pub fn known_ready(&self) -> bool {
        status::known_ready(&self.running.paths, &self.record)
    }
}
