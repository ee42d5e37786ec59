//! What state a VM is in, as `ps`, `inspect` and `up` see it.
//!
//! A VM is ready once an SSH login worked since its QEMU started. The first success is kept
//! in a marker file naming that QEMU run, so `ps` does not log in again (a login takes the
//! time of a key exchange, and a booting guest makes the client wait for its timeout); a VM
//! not known ready is `starting` as long as no SSH banner arrives within a few milliseconds.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::qemu::process::{self, ProcState, VmHandle};
use crate::qemu::qmp::Qmp;
use crate::state::{InstancePaths, InstanceRecord, atomic};

/// How long a status probe may wait for QMP.
const QMP_TIMEOUT: Duration = Duration::from_secs(2);

/// The state of one VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "reason", rename_all = "kebab-case")]
pub enum VmStatus {
    /// No instance folder or disk: `up` has not made it (or `destroy` removed it).
    NotCreated,
    /// Made, but QEMU is not running.
    Stopped,
    /// QEMU runs; SSH does not answer yet.
    Starting,
    /// QEMU runs and an SSH login with the project key works.
    Ready,
    /// QEMU runs with the guest frozen (`pause`).
    Paused,
    /// QEMU runs and the VM's health check passed last.
    Healthy,
    /// QEMU runs and the VM's health check failed `retries` times in a row.
    Unhealthy,
    /// The pidfile and the processes disagree, or QEMU does not answer QMP.
    Broken(String),
}

impl VmStatus {
    /// The word `ps` shows.
    pub fn word(&self) -> &'static str {
        match self {
            VmStatus::NotCreated => "not-created",
            VmStatus::Stopped => "stopped",
            VmStatus::Starting => "starting",
            VmStatus::Ready => "ready",
            VmStatus::Paused => "paused",
            VmStatus::Healthy => "healthy",
            VmStatus::Unhealthy => "unhealthy",
            VmStatus::Broken(_) => "broken",
        }
    }

    /// Whether QEMU runs for the VM.
    pub fn is_running(&self) -> bool {
        matches!(
            self,
            VmStatus::Starting
                | VmStatus::Ready
                | VmStatus::Paused
                | VmStatus::Healthy
                | VmStatus::Unhealthy
        )
    }
}

/// The handle through which a VM's QEMU is found.
pub fn handle(paths: &InstancePaths) -> VmHandle {
    VmHandle {
        pidfile: paths.pidfile.clone(),
        qmp_socket: paths.qmp_socket.clone(),
    }
}

/// Looks at a VM. `ssh_ready` is asked only when QEMU runs and answers QMP.
pub fn status(paths: &InstancePaths, ssh_ready: impl FnOnce() -> bool) -> VmStatus {
    // `.qemu-compose/`, above `vms/<vm>/`: another user's folder cannot even be looked into.
    let state_root = paths.dir.parent().and_then(Path::parent);
    if let Some(Err(e)) = state_root.map(atomic::refuse_foreign) {
        return VmStatus::Broken(e.to_string());
    }
    if !paths.disk.exists() {
        return VmStatus::NotCreated;
    }
    if let Err(e) = paths.check_socket_dir() {
        return VmStatus::Broken(e.to_string());
    }
    match process::state(&handle(paths)) {
        ProcState::NotRunning => VmStatus::Stopped,
        ProcState::Stale { reason, .. } => VmStatus::Broken(reason),
        ProcState::Running { pid } => {
            let answer =
                Qmp::connect(&paths.qmp_socket, QMP_TIMEOUT).and_then(|mut qmp| qmp.query_status());
            match answer {
                Err(e) => VmStatus::Broken(format!("QEMU (pid {pid}) does not answer QMP: {e}")),
                Ok(state) if state == "paused" => VmStatus::Paused,
                Ok(_) if ssh_ready() => VmStatus::Ready,
                Ok(_) => VmStatus::Starting,
            }
        }
    }
}

/// Records that the QEMU run `record` describes answered an SSH login. Best effort: without
/// the marker the next `ps` logs in again.
pub fn mark_ready(paths: &InstancePaths, record: &InstanceRecord) {
    let _ = atomic::write_atomic(&paths.ready, record.started.as_bytes(), 0o600);
}

/// Whether the QEMU run `record` describes is known to have answered an SSH login.
pub fn known_ready(paths: &InstancePaths, record: &InstanceRecord) -> bool {
    atomic::read_optional(&paths.ready)
        .ok()
        .flatten()
        .is_some_and(|started| started == record.started)
}
