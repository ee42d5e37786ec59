//! The small verbs docker compose users reach for: `start`, `restart`, `pause`, `unpause` and
//! `port` (README, "Commands"). Each is built on `up`, `stop` and QMP; none makes anything
//! new.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use crate::compose::{Project, Protocol};
use crate::qemu::qmp::Qmp;
use crate::state::InstanceRecord;

use super::lifecycle::{self, StopOptions, UpOptions};
use super::{EngineError, HostEnv, Reporter, Workspace};
use crate::image::Progress;

/// How long a QMP `stop`/`cont` may take.
const QMP_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts VMs that `up` made before (and the VMs they depend on), creating nothing: a VM
/// never created is refused, before anything starts.
pub fn start(
    project: &Project,
    host: &HostEnv,
    vms: &[String],
    reporter: &dyn Reporter,
    progress: &mut dyn Progress,
) -> Result<(), EngineError> {
    refuse_never_created(project, host, vms)?;
    let opts = UpOptions {
        vms: vms.to_vec(),
        ..UpOptions::default()
    };
    lifecycle::up(project, host, &opts, reporter, progress)
}

/// Stops the VMs, then starts them again as [`start`] does.
pub fn restart(
    project: &Project,
    host: &HostEnv,
    opts: &StopOptions,
    reporter: &dyn Reporter,
    progress: &mut dyn Progress,
) -> Result<(), EngineError> {
    // Everything `start` will refuse, refused before anything stops.
    refuse_never_created(project, host, &opts.vms)?;
    lifecycle::stop(project, host, opts, reporter)?;
    start(project, host, &opts.vms, reporter, progress)
}

/// Refuses `vms` (and the VMs they depend on, which `start` starts too) when one of them was
/// never created.
fn refuse_never_created(
    project: &Project,
    host: &HostEnv,
    vms: &[String],
) -> Result<(), EngineError> {
    let ws = Workspace::new(project, host);
    let never: Vec<&str> = lifecycle::select(project, vms, true)?
        .into_iter()
        .filter(|vm| !ws.is_created(&vm.name))
        .map(|vm| vm.name.as_str())
        .collect();
    if never.is_empty() {
        return Ok(());
    }
    Err(EngineError::Refused(format!(
        "VM {} was never created (or was destroyed); `qemu-compose up {}` creates and starts it",
        never.join(", "),
        never.join(" ")
    )))
}

/// Freezes (`pause`) or thaws (`unpause`) the guests of running VMs through QMP `stop` and
/// `cont`; the VM keeps its memory and QEMU keeps running. Without names, every running VM;
/// a named VM that is not running is refused.
pub fn pause(
    project: &Project,
    host: &HostEnv,
    vms: &[String],
    pause: bool,
    reporter: &dyn Reporter,
) -> Result<(), EngineError> {
    let ws = Workspace::new(project, host);
    let mut done = 0;
    for vm in lifecycle::select(project, vms, false)? {
        if !ws.is_running(&vm.name) {
            if vms.is_empty() {
                continue;
            }
            return Err(EngineError::Refused(format!(
                "VM {} is not running",
                vm.name
            )));
        }
        let command = if pause { "stop" } else { "cont" };
        Qmp::connect(&ws.paths(&vm.name).qmp_socket, QMP_TIMEOUT)
            .and_then(|mut qmp| qmp.execute(command, None))
            .map_err(|e| EngineError::vm(&vm.name, e))?;
        let word = if pause { "paused" } else { "unpaused" };
        reporter.info(&format!("{word} VM {}", vm.name));
        done += 1;
    }
    if done == 0 {
        return Err(EngineError::Refused(
            "no VM of the project is running".into(),
        ));
    }
    Ok(())
}

/// Lets a paused guest run again so that it can power off (best effort: a QEMU that does not
/// answer is dealt with by the stop that follows).
pub(super) fn resume_if_paused(qmp_socket: &Path) {
    if let Ok(mut qmp) = Qmp::connect(qmp_socket, QMP_TIMEOUT)
        && qmp.query_status().is_ok_and(|s| s == "paused")
    {
        let _ = qmp.execute("cont", None);
    }
}

/// The host address forwarded to `guest_port`/`protocol` of VM `vm`: from its `ports:`, or
/// for guest port 22 over TCP, the SSH port `up` chose (once the VM was started).
pub fn port(
    project: &Project,
    host: &HostEnv,
    vm: &str,
    guest_port: u16,
    protocol: Protocol,
) -> Result<SocketAddr, EngineError> {
    let vm = lifecycle::select(project, &[vm.to_owned()], false)?
        .into_iter()
        .next()
        .ok_or_else(|| EngineError::Refused("no VM selected".into()))?;
    if let Some(forward) = vm
        .ports
        .iter()
        .find(|p| p.guest_port == guest_port && p.protocol == protocol)
    {
        let ip = forward.host_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        return Ok(SocketAddr::new(ip, forward.host_port));
    }
    if guest_port == 22 && protocol == Protocol::Tcp {
        let paths = Workspace::new(project, host).paths(&vm.name);
        let ssh_port = match vm.ssh_port {
            Some(port) => Some(port),
            None => InstanceRecord::load(&paths.record)?.map(|r| r.ssh_port),
        };
        if let Some(port) = ssh_port {
            return Ok(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port));
        }
        return Err(EngineError::Refused(format!(
            "VM {} has no SSH port yet: `up` chooses one when it starts the VM",
            vm.name
        )));
    }
    Err(EngineError::Refused(format!(
        "VM {} forwards no host port to its port {guest_port}/{}",
        vm.name,
        protocol.as_str()
    )))
}
