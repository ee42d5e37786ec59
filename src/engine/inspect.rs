//! What `ps` and `inspect` show about VMs, gathered without changing anything.
//!
//! Status probes (QMP, then an SSH login) can each take seconds on a VM that is still
//! booting, so [`probe_statuses`] runs one thread per VM: `ps` on ten VMs costs one probe's
//! time, not ten. The inspection reuses the mount plan `up` uses, so the drives, shares and
//! guest mounts it lists are the ones QEMU and the seed get.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::compose::{ImageSource, MountKind, PortForward, Project, Vm};
use crate::disk::qcow2::{self, Qcow2Image};
use crate::qemu::Arch;
use crate::qemu::accel;
use crate::qemu::argv::build_argv;
use crate::qemu::ports::allocate_ssh_port;
use crate::state::{
    InstancePaths, InstanceRecord, NetworkRegistry, StateDir, VolumeRecord, VolumeRegistry,
};

use super::health::{self, Health, HealthStatus};
use super::mounts::{self, PlanFacts, SourceKind};
use super::status::{self, VmStatus};
use super::workspace::instance_paths;
use super::{EngineError, HostEnv, instance, lifecycle, ssh};

/// How long the SSH readiness probe of `ps` and `inspect` may take, once a banner came.
const SSH_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long `ps` and `inspect` wait for the SSH banner of a VM not known ready: a guest whose
/// sshd runs sends it at once; a slower one stays `starting` until a later look sees it.
const BANNER_BUDGET: Duration = Duration::from_millis(50);

/// The status of each of `vms`, in the same order, probed in parallel.
pub fn probe_statuses(project: &Project, host: &HostEnv, vms: &[&Vm]) -> Vec<VmStatus> {
    std::thread::scope(|scope| {
        let handles: Vec<_> = vms
            .iter()
            .map(|vm| scope.spawn(move || probe_status(project, host, vm)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    VmStatus::Broken("the status probe failed unexpectedly".to_string())
                })
            })
            .collect()
    })
}

/// The status of one VM: QMP first, then an SSH login with the project key; for a VM with a
/// health check, its health instead of `starting`/`ready` (the check runs when it is due and
/// the VM answers SSH).
pub fn probe_status(project: &Project, host: &HostEnv, vm: &Vm) -> VmStatus {
    let state = StateDir::new(&project.dir);
    let paths = instance_paths(&state, host, &vm.name);
    let key = state.ssh_key();
    let login = |record: &InstanceRecord| ssh::Login {
        key: &key,
        user: &vm.user,
        port: record.ssh_port,
        vm: &vm.name,
        known_hosts: &paths.known_hosts,
    };
    let st = status::status(&paths, || {
        let Some(record) = InstanceRecord::load(&paths.record).ok().flatten() else {
            return false;
        };
        if status::known_ready(&paths, &record) {
            return true;
        }
        if !key.is_file() || !ssh::banner_seen(record.ssh_port, BANNER_BUDGET) {
            return false;
        }
        let ready = ssh::probe(&login(&record), SSH_PROBE_TIMEOUT);
        if ready {
            status::mark_ready(&paths, &record);
        }
        ready
    });
    let (Some(check), VmStatus::Starting | VmStatus::Ready) = (&vm.healthcheck, &st) else {
        return st;
    };
    let Some(record) = InstanceRecord::load(&paths.record).ok().flatten() else {
        return st;
    };
    let now = if st == VmStatus::Ready {
        health::refresh(check, &login(&record), &paths, &record)
    } else {
        health::load(&paths, &record)
    };
    match now.status {
        HealthStatus::Starting => VmStatus::Starting,
        HealthStatus::Healthy => VmStatus::Healthy,
        HealthStatus::Unhealthy => VmStatus::Unhealthy,
    }
}

/// The health check results of a running VM with a check, as the last command left them.
fn health_of(vm: &Vm, paths: &InstancePaths, st: &VmStatus) -> Option<Health> {
    vm.healthcheck.as_ref()?;
    let record = InstanceRecord::load(&paths.record)
        .ok()
        .flatten()
        .filter(|_| st.is_running())?;
    Some(health::load(paths, &record))
}

/// A qcow2 image's size as the guest sees it and what it takes on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DiskUsage {
    /// The virtual size in bytes.
    pub virtual_size: u64,
    /// Bytes allocated on the host file system (sparse files take less than their length).
    pub bytes_used: u64,
}

/// Reads the virtual size and allocation of a qcow2 image; `None` when it does not exist or
/// cannot be read.
pub fn disk_usage(path: &Path) -> Option<DiskUsage> {
    let meta = std::fs::metadata(path).ok()?;
    let image = Qcow2Image::open(path).ok()?;
    Some(DiskUsage {
        virtual_size: image.virtual_size(),
        bytes_used: meta.blocks().saturating_mul(512),
    })
}

/// One line of `ps`.
#[derive(Debug, Clone, Serialize)]
pub struct VmSummary {
    /// The VM name.
    pub name: String,
    /// `not-created`, `stopped`, `starting`, `ready`, `paused`, `healthy`, `unhealthy` or
    /// `broken`.
    pub status: &'static str,
    /// Why a VM is broken.
    pub reason: Option<String>,
    /// `127.0.0.1:<port>` while QEMU runs.
    pub ssh: Option<String>,
    /// The forwarded ports, `[ip:]host->guest/proto`.
    pub ports: Vec<String>,
    /// Virtual CPUs.
    pub cpu: u32,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// The instance disk, once created.
    pub disk: Option<DiskUsage>,
    /// Its project networks, `<network> <address>` once allocated (else the network name).
    pub networks: Vec<String>,
    /// The health check's state and last results, for a running VM that has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Health>,
}

/// The `ps` lines of `vms` (in the given order), probing their status in parallel.
pub fn summaries(project: &Project, host: &HostEnv, vms: &[&Vm]) -> Vec<VmSummary> {
    let state = StateDir::new(&project.dir);
    let statuses = probe_statuses(project, host, vms);
    let allocated = NetworkRegistry::load(&state.networks_json()).unwrap_or_default();
    vms.iter()
        .zip(statuses)
        .map(|(vm, st)| {
            let paths = instance_paths(&state, host, &vm.name);
            let record = InstanceRecord::load(&paths.record).ok().flatten();
            let health = health_of(vm, &paths, &st);
            VmSummary {
                name: vm.name.clone(),
                health,
                status: st.word(),
                ssh: record
                    .filter(|_| st.is_running())
                    .map(|r| format!("127.0.0.1:{}", r.ssh_port)),
                reason: match st {
                    VmStatus::Broken(reason) => Some(reason),
                    _ => None,
                },
                ports: vm.ports.iter().map(port_text).collect(),
                cpu: vm.cpu,
                memory_mib: vm.memory_mib,
                disk: disk_usage(&paths.disk),
                networks: vm
                    .networks
                    .iter()
                    .map(|n| {
                        let address = allocated
                            .networks
                            .get(&n.name)
                            .and_then(|r| r.vms.get(&vm.name));
                        match address {
                            Some(a) => format!("{} {}", n.name, a.address),
                            None => n.name.clone(),
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

/// Whether the project's network switch runs.
pub fn switch_running(project: &Project) -> Result<bool, EngineError> {
    let state = StateDir::new(&project.dir);
    Ok(super::network::switch_status(&state)?.is_some())
}

/// `8080->80/tcp`, or `127.0.0.1:8080->80/tcp` with a host address.
pub fn port_text(p: &PortForward) -> String {
    let ip = p.host_ip.map(|ip| format!("{ip}:")).unwrap_or_default();
    format!(
        "{ip}{}->{}/{}",
        p.host_port,
        p.guest_port,
        p.protocol.as_str()
    )
}

/// Everything about one VM.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection<'a> {
    /// The VM name.
    pub name: String,
    /// The project name.
    pub project: String,
    /// The status and, for `broken`, the reason.
    pub state: VmStatus,
    /// The health check's state and last results, for a running VM that has one.
    pub health: Option<Health>,
    /// The VM as the compose file defines it, with defaults applied.
    pub config: &'a Vm,
    /// The accelerator this host gives the VM, and why.
    pub accel: AccelInfo,
    /// The virtio-blk disks.
    pub disks: Disks,
    /// The bind mounts, as 9p shares.
    pub bind_mounts: Vec<BindMount>,
    /// The NIC and what is forwarded to it.
    pub network: NetworkInfo,
    /// `ssh` and its arguments, once the VM has a port.
    pub ssh_command: Option<Vec<String>>,
    /// The file that holds the guest user's password for `console` (the project's; SSH logs
    /// in with the key only).
    pub console_password_file: PathBuf,
    /// QEMU and its arguments: as `up` started it while it runs, otherwise as the next start
    /// would (`planned`).
    pub qemu: Option<QemuLaunch>,
    /// Why there is no planned argv for a VM that is not running (e.g. the image is not
    /// downloaded yet).
    pub qemu_not_planned: Option<String>,
    /// The instance's files and sockets.
    pub paths: InstancePaths,
}

/// The accelerator decision.
#[derive(Debug, Clone, Serialize)]
pub struct AccelInfo {
    /// `kvm` or `tcg`, or `None` when the VM asks for KVM and this host cannot give it.
    pub accel: Option<&'static str>,
    /// Why.
    pub reason: String,
}

/// The disks of a VM, in the order QEMU attaches them.
#[derive(Debug, Clone, Serialize)]
pub struct Disks {
    /// The copy-on-write instance disk.
    pub instance: InstanceDisk,
    /// The named volumes, in compose order.
    pub volumes: Vec<VolumeDisk>,
    /// The cloud-init seed (FAT, read-only, serial `cidata`).
    pub seed: SeedDisk,
    /// Why the letters are only a guess.
    pub device_note: &'static str,
}

/// The instance disk.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceDisk {
    /// The overlay file.
    pub path: PathBuf,
    /// Always `qcow2`.
    pub format: &'static str,
    /// The usual device in the guest.
    pub device: String,
    /// Size and allocation, once created.
    pub usage: Option<DiskUsage>,
    /// The base image the overlay is on (or, before `up`, the one it will be made on).
    pub base_image: String,
    /// The base's format (`qcow2`, `raw`), when known.
    pub base_format: Option<String>,
    /// Set when the compose file now names another image than the disk's base: the disk
    /// stays on its base until it is made again.
    pub base_changed: Option<NewBase>,
}

/// The image the compose file names when the instance disk is on another one.
#[derive(Debug, Clone, Serialize)]
pub struct NewBase {
    /// The image the compose file resolves to now (a URL not downloaded yet: the URL).
    pub compose_image: String,
    /// How the disk moves to it, and what that costs.
    pub hint: String,
}

/// A named volume attached as a drive.
#[derive(Debug, Clone, Serialize)]
pub struct VolumeDisk {
    /// The volume name.
    pub volume: String,
    /// The usual device in the guest (`vdb`, `vdc`, …).
    pub device: String,
    /// The drive's serial (`/dev/disk/by-id/virtio-<serial>`).
    pub serial: String,
    /// The ext4 UUID the guest mounts it by; `None` until the volume is created.
    pub uuid: Option<String>,
    /// Where it is mounted in the guest.
    pub mount_point: String,
    /// Mounted read-only.
    pub read_only: bool,
    /// The volume's image.
    pub image: PathBuf,
}

/// The seed disk.
#[derive(Debug, Clone, Serialize)]
pub struct SeedDisk {
    /// The FAT image.
    pub path: PathBuf,
    /// The usual device in the guest.
    pub device: String,
    /// Whether `up` has written it.
    pub exists: bool,
}

/// A bind mount.
#[derive(Debug, Clone, Serialize)]
pub struct BindMount {
    /// The host path (absolute).
    pub source: PathBuf,
    /// What the host path is: `dir`, `file` or `missing`.
    pub source_kind: &'static str,
    /// The folder QEMU exports (a one-file folder of the instance for a file).
    pub shared_path: PathBuf,
    /// Where it appears in the guest.
    pub target: String,
    /// The 9p mount tag.
    pub tag: String,
    /// QEMU's `security_model`.
    pub security_model: &'static str,
    /// Read-only.
    pub read_only: bool,
    /// Whether cloud-init mounts it at boot.
    pub automount: bool,
    /// The 9p mount options the guest uses (when automounted).
    pub options: Option<String>,
}

/// The NIC.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkInfo {
    /// QEMU's user-mode network.
    pub mode: &'static str,
    /// The NIC's address.
    pub mac: String,
    /// The host port forwarded to the guest's port 22, once allocated.
    pub ssh_port: Option<u16>,
    /// The compose `ports:`.
    pub ports: Vec<String>,
    /// One NIC per project network, once `up` allocated its address.
    pub networks: Vec<NetworkLink>,
    /// Whether the project's network switch runs (`None` when the VM is on no network).
    pub switch_running: Option<bool>,
}

/// A NIC on a project network.
#[derive(Debug, Clone, Serialize)]
pub struct NetworkLink {
    pub network: String,
    /// `address/prefix`.
    pub address: String,
    pub mac: String,
    /// The names other VMs on the network reach it by.
    pub names: Vec<String>,
}

/// How QEMU was started, or would be started next.
#[derive(Debug, Clone, Serialize)]
pub struct QemuLaunch {
    /// True when QEMU does not run and this is the command line the next `up` would use;
    /// false when it is the one the running QEMU was started with.
    pub planned: bool,
    /// The binary.
    pub binary: PathBuf,
    /// Its arguments.
    pub argv: Vec<String>,
    /// When, RFC 3339; `None` when planned.
    pub started: Option<String>,
    /// The host port forwarded to the guest's port 22 in `argv`.
    pub ssh_port: u16,
    /// Where that port comes from: `running` (the running QEMU's), `fixed` (the compose
    /// file's `ssh.port`), `previous` (the last start's, kept if it is still free then) or
    /// `first-free` (the first free port now; the real one is allocated at start).
    pub ssh_port_basis: &'static str,
}

const DEVICE_NOTE: &str = "device letters are only the usual order: with -device virtio-blk-pci they do not follow the command line, so the guest mounts volumes by UUID";

/// `vda`, `vdb`, … `vdz`, `vdaa`, … for the `index`-th virtio disk.
pub fn device_name(index: usize) -> String {
    let mut name = String::new();
    let mut n = index;
    loop {
        name.insert(0, char::from(b'a' + (n % 26) as u8));
        if n < 26 {
            break;
        }
        n = n / 26 - 1;
    }
    format!("vd{name}")
}

/// Inspects `vm`. `state_now` is its status, probed by the caller (e.g. with
/// [`probe_status`]) so that `inspect` and `ps` can share one probe.
pub fn inspect<'a>(
    project: &Project,
    host: &HostEnv,
    vm: &'a Vm,
    state_now: VmStatus,
) -> Result<Inspection<'a>, EngineError> {
    let state = StateDir::new(&project.dir);
    let paths = instance_paths(&state, host, &vm.name);
    let record = InstanceRecord::load(&paths.record)?;
    let registry = VolumeRegistry::load(&state.volumes_json())?;
    let networks = super::network::Networks::load(&state, host)?;
    let links = networks.links(project, &vm.name);

    // The plan needs every volume's UUID and image and every bind source's kind; what does
    // not exist yet is planned as it will be (a folder, an empty UUID) and reported as such.
    let mut planned = registry.clone();
    let mut source_kinds: BTreeMap<PathBuf, SourceKind> = BTreeMap::new();
    let mut missing_sources = Vec::new();
    for mount in &vm.volumes {
        match &mount.kind {
            MountKind::Named { volume } => {
                planned
                    .volumes
                    .entry(volume.clone())
                    .or_insert_with(|| VolumeRecord {
                        name: volume.clone(),
                        size: String::new(),
                        disk_path: state.volume_image(volume),
                        created: String::new(),
                        uuid: String::new(),
                        label: String::new(),
                    });
            }
            MountKind::Bind { source, .. } => {
                let kind = match std::fs::metadata(source) {
                    Ok(m) if m.is_file() => SourceKind::File,
                    Ok(_) => SourceKind::Dir,
                    Err(_) => {
                        missing_sources.push(source.clone());
                        SourceKind::Dir
                    }
                };
                source_kinds.insert(source.clone(), kind);
            }
        }
    }
    let plan = mounts::plan(
        vm,
        &PlanFacts {
            host_is_root: host.is_root(),
            volumes: &planned,
            source_kinds: &source_kinds,
            file_shares_dir: &paths.file_shares,
            hosts_dir: (!links.is_empty()).then_some(paths.hosts.as_path()),
        },
    )?;

    let named = vm.volumes.iter().filter_map(|m| match &m.kind {
        MountKind::Named { volume } => Some((m, volume)),
        MountKind::Bind { .. } => None,
    });
    let volumes: Vec<VolumeDisk> = named
        .zip(&plan.drives)
        .enumerate()
        .map(|(i, ((mount, volume), drive))| VolumeDisk {
            volume: volume.clone(),
            device: device_name(i + 1),
            serial: drive.serial.clone(),
            uuid: registry.volumes.get(volume).map(|r| r.uuid.clone()),
            mount_point: mount.target.clone(),
            read_only: mount.read_only,
            image: drive.path.clone(),
        })
        .collect();

    let binds = vm.volumes.iter().filter_map(|m| match &m.kind {
        MountKind::Bind {
            source, automount, ..
        } => Some((m, source, *automount)),
        MountKind::Named { .. } => None,
    });
    let bind_mounts = binds
        .zip(&plan.shares)
        .map(|((mount, source, automount), share)| BindMount {
            source: source.clone(),
            source_kind: if missing_sources.contains(source) {
                "missing"
            } else {
                match source_kinds.get(source) {
                    Some(SourceKind::File) => "file",
                    _ => "dir",
                }
            },
            shared_path: share.path.clone(),
            target: mount.target.clone(),
            tag: share.tag.clone(),
            security_model: share.security_model.as_str(),
            read_only: share.read_only,
            automount,
            options: plan
                .guest
                .iter()
                .find(|g| g.device == share.tag)
                .map(|g| g.options.clone()),
        })
        .collect();

    // The base QEMU is given, as `up` chooses it (never a file outside the image cache that
    // the overlay's header names, which a guest could have rewritten).
    let named = match &vm.image {
        ImageSource::Path(p) => p.clone(),
        ImageSource::Url(url) => host.images.path_for(url),
    };
    let base = instance::kept_cached_base(&paths.disk, named, host);
    let base_probe = qcow2::probe_format(&base);
    // The base the disk is on, which stays until the disk is made again, and the image the
    // compose file names now when that is another. Only the base QEMU is given is read for
    // its format.
    let base_change = instance::current_base_change(project, host, vm);
    let on = base_change.as_ref().map_or(&base, |change| &change.made_on);
    let base_image = on.display().to_string();
    let base_format = base_probe
        .as_ref()
        .ok()
        .filter(|_| *on == base)
        .map(|f| f.backing_format().as_str().to_string());
    let base_changed = base_change.map(|change| NewBase {
        compose_image: change.now,
        hint: format!(
            "`qemu-compose up --force-recreate {}` makes the disk again on it (the changes the guest made to its root disk are lost; volumes are kept)",
            vm.name
        ),
    });

    let accel_choice = accel::decide(
        vm.guest_arch().into(),
        vm.accel.into(),
        host.accel_override.as_deref(),
        &host.probe,
    );
    let accel = match &accel_choice {
        Ok(choice) => AccelInfo {
            accel: Some(choice.accel.as_str()),
            reason: choice.reason.clone(),
        },
        Err(e) => AccelInfo {
            accel: None,
            reason: e.to_string(),
        },
    };

    let (qemu, qemu_not_planned) = match &record {
        Some(r) if state_now.is_running() => (
            Some(QemuLaunch {
                planned: false,
                binary: r.qemu.clone(),
                argv: r.argv.clone(),
                started: Some(r.started.clone()),
                ssh_port: r.ssh_port,
                ssh_port_basis: "running",
            }),
            None,
        ),
        _ if state_now.is_running() => (None, None),
        _ => {
            let planned = (|| {
                let base_format = base_probe.map_err(|e| match &vm.image {
                    ImageSource::Url(_) => format!(
                        "the image is not downloaded yet (`qemu-compose pull {}` fetches it)",
                        vm.name
                    ),
                    ImageSource::Path(_) => format!("image {}: {e}", base.display()),
                })?;
                let accel = accel_choice.as_ref().map_err(|e| e.to_string())?.accel;
                let firmware = instance::firmware_for(vm, host).map_err(|e| e.to_string())?;
                let (ssh_port, ssh_port_basis) =
                    planned_ssh_port(project, host, &state, vm, record.as_ref())?;
                let facts = instance::LaunchFacts {
                    paths: &paths,
                    mounts: &plan,
                    accel,
                    firmware: firmware.as_deref(),
                    mac: instance::mac_for(project, vm),
                    links: &links,
                    base: &base,
                    base_format,
                };
                let spec = instance::launch_spec_from(project, vm, &facts, ssh_port);
                let argv = build_argv(&spec).map_err(|e| e.to_string())?;
                Ok::<_, String>(QemuLaunch {
                    planned: true,
                    binary: host.qemu(vm.guest_arch().into()).unwrap_or_else(|_| {
                        PathBuf::from(Arch::from(vm.guest_arch()).qemu_binary())
                    }),
                    argv,
                    started: None,
                    ssh_port,
                    ssh_port_basis,
                })
            })();
            match planned {
                Ok(launch) => (Some(launch), None),
                Err(reason) => (None, Some(reason)),
            }
        }
    };

    let key = state.ssh_key();
    let ssh_command = record.as_ref().map(|r| {
        let mut cmd = vec!["ssh".to_string()];
        cmd.extend(ssh::args(
            &ssh::Login {
                key: &key,
                user: &vm.user,
                port: r.ssh_port,
                vm: &vm.name,
                known_hosts: &paths.known_hosts,
            },
            &[],
            &[],
        ));
        cmd
    });

    Ok(Inspection {
        name: vm.name.clone(),
        project: project.name.clone(),
        health: health_of(vm, &paths, &state_now),
        state: state_now,
        config: vm,
        accel,
        disks: Disks {
            instance: InstanceDisk {
                path: paths.disk.clone(),
                format: "qcow2",
                device: device_name(0),
                usage: disk_usage(&paths.disk),
                base_image,
                base_format,
                base_changed,
            },
            seed: SeedDisk {
                path: paths.seed.clone(),
                device: device_name(volumes.len() + 1),
                exists: paths.seed.exists(),
            },
            volumes,
            device_note: DEVICE_NOTE,
        },
        bind_mounts,
        network: NetworkInfo {
            mode: "user",
            mac: record.as_ref().map_or_else(
                || instance::mac_for(project, vm).to_string(),
                |r| r.mac.clone(),
            ),
            ssh_port: record.as_ref().map(|r| r.ssh_port).or(vm.ssh_port),
            ports: vm.ports.iter().map(port_text).collect(),
            networks: links
                .iter()
                .map(|l| NetworkLink {
                    network: l.network.clone(),
                    address: format!("{}/{}", l.address, l.prefix),
                    mac: l.nic.mac.to_string(),
                    names: [format!("{}.{}", vm.name, l.network), vm.name.clone()]
                        .into_iter()
                        .chain(
                            vm.networks
                                .iter()
                                .filter(|n| n.name == l.network)
                                .flat_map(|n| n.aliases.iter().cloned()),
                        )
                        .collect(),
                })
                .collect(),
            switch_running: if vm.networks.is_empty() {
                None
            } else {
                Some(super::network::switch_status(&state)?.is_some())
            },
        },
        ssh_command,
        console_password_file: state.console_password(),
        qemu,
        qemu_not_planned,
        paths,
    })
}

/// The SSH port the next start of `vm` would try first, and why: the same choice as `up`
/// makes (fixed, else the previous port if still free, else the first free one from 2222).
fn planned_ssh_port(
    project: &Project,
    host: &HostEnv,
    state: &StateDir,
    vm: &Vm,
    record: Option<&InstanceRecord>,
) -> Result<(u16, &'static str), String> {
    if let Some(fixed) = vm.ssh_port {
        return Ok((fixed, "fixed"));
    }
    let taken =
        lifecycle::ports_of_other_vms(project, vm, state, host).map_err(|e| e.to_string())?;
    match record {
        Some(r) if !taken.contains(&r.ssh_port) && lifecycle::port_free(r.ssh_port) => {
            Ok((r.ssh_port, "previous"))
        }
        _ => allocate_ssh_port(lifecycle::FIRST_SSH_PORT, &taken)
            .map(|p| (p, "first-free"))
            .map_err(|e| e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::Protocol;

    #[test]
    fn device_names_follow_the_kernel_scheme() {
        assert_eq!(device_name(0), "vda");
        assert_eq!(device_name(1), "vdb");
        assert_eq!(device_name(25), "vdz");
        assert_eq!(device_name(26), "vdaa");
        assert_eq!(device_name(27), "vdab");
        assert_eq!(device_name(52), "vdba");
    }

    #[test]
    fn ports_read_like_docker() {
        let mut p = PortForward {
            host_ip: None,
            host_port: 8080,
            guest_port: 80,
            protocol: Protocol::Tcp,
        };
        assert_eq!(port_text(&p), "8080->80/tcp");
        p.host_ip = Some("127.0.0.1".parse().unwrap());
        p.protocol = Protocol::Udp;
        assert_eq!(port_text(&p), "127.0.0.1:8080->80/udp");
    }
}
