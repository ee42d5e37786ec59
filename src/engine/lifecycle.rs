//! `up`, `stop` and `destroy`.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::compose::{Project, Vm, format_size};
use crate::image::Progress;
use crate::qemu::ports;
use crate::qemu::process::{self, ProcState, StartError, StopOutcome};
use crate::state::{
    InstanceRecord, ProjectLock, ProjectSecrets, StateDir, StateError, VolumeRegistry,
};

use super::instance::{self, DiskChange, PreparedVm};
use super::status;
use super::workspace::instance_paths;
use super::{EngineError, HostEnv, Reporter, health, network, run, ssh, volumes};

/// The first port tried for SSH forwarding.
pub(super) const FIRST_SSH_PORT: u16 = 2222;
/// How many other ports `up` tries when the SSH port is taken between allocation and start.
const PORT_RETRIES: usize = 8;
/// How long QEMU may take to daemonise and answer QMP.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// What `up` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct UpOptions {
    /// VMs to start (with their dependencies); empty for all.
    pub vms: Vec<String>,
    /// Create everything but start nothing.
    pub no_start: bool,
    /// Restart VMs whose configuration changed.
    pub force_recreate: bool,
    /// How long a VM being recreated gets to power off; `None`: its `stop_grace_period`, else
    /// [`DEFAULT_STOP_TIMEOUT`].
    pub stop_timeout: Option<Duration>,
    /// Wait this long for every started VM to answer SSH.
    pub wait: Option<Duration>,
    /// Stop and remove the instances of VMs the compose file no longer has.
    pub remove_orphans: bool,
    /// How long to wait for a dependency with `condition: service_healthy` to be healthy;
    /// `None`: [`health::DEFAULT_HEALTH_WAIT`].
    pub health_wait: Option<Duration>,
}

/// How long a guest gets to power off when neither the command nor the VM's
/// `stop_grace_period` says: a TCG guest needs 5-25 s on a busy machine, and cutting it short
/// risks its data.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// The power-off time VM `vm` gets: the command's `-t`, else its `stop_grace_period`.
fn grace(given: Option<Duration>, vm: Option<&Vm>) -> Duration {
    given
        .or_else(|| {
            vm.and_then(|vm| vm.stop_grace_period_secs)
                .map(Duration::from_secs)
        })
        .unwrap_or(DEFAULT_STOP_TIMEOUT)
}

/// What `stop` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct StopOptions {
    /// VMs to stop; empty for all.
    pub vms: Vec<String>,
    /// Skip the guest power-off.
    pub force: bool,
    /// How long the guest gets to power off; `None`: each VM's `stop_grace_period`, else
    /// [`DEFAULT_STOP_TIMEOUT`].
    pub timeout: Option<Duration>,
}

/// What `destroy` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct DestroyOptions {
    /// VMs to destroy; empty for all.
    pub vms: Vec<String>,
    /// Skip the guest power-off.
    pub force: bool,
    /// How long the guest gets to power off; as [`StopOptions::timeout`].
    pub timeout: Option<Duration>,
    /// Also remove the named volumes the compose file declares.
    pub volumes: bool,
    /// Also stop and remove the instances of VMs the compose file no longer has.
    pub remove_orphans: bool,
}

/// The VMs named on the command line (all when none), checked to exist, in start order;
/// `with_dependencies` adds what they depend on.
pub fn select<'p>(
    project: &'p Project,
    names: &[String],
    with_dependencies: bool,
) -> Result<Vec<&'p Vm>, EngineError> {
    for name in names {
        if project.vm(name).is_none() {
            return Err(EngineError::UnknownVm {
                name: name.clone(),
                known: project
                    .vms
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    if names.is_empty() {
        return Ok(project.start_order());
    }
    let mut wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    if with_dependencies {
        let mut queue: Vec<&str> = wanted.iter().copied().collect();
        while let Some(name) = queue.pop() {
            for dep in project
                .vm(name)
                .map(|v| v.depends_on.as_slice())
                .unwrap_or(&[])
            {
                if wanted.insert(dep) {
                    queue.push(dep);
                }
            }
        }
    }
    Ok(project
        .start_order()
        .into_iter()
        .filter(|vm| wanted.contains(vm.name.as_str()))
        .collect())
}

/// Takes the project lock, then removes the temporary files an interrupted command left.
pub(super) fn lock(state: &StateDir, reporter: &dyn Reporter) -> Result<ProjectLock, StateError> {
    let lock = ProjectLock::acquire(state, || {
        reporter.info("waiting for another qemu-compose command on this project to finish")
    })?;
    for note in &lock.migration_notes {
        reporter.warn(note);
    }
    crate::state::atomic::sweep_temporaries(state.root())?;
    crate::state::atomic::sweep_temporaries(state.private())?;
    Ok(lock)
}

/// Creates what is missing and starts the VMs.
pub fn up(
    project: &Project,
    host: &HostEnv,
    opts: &UpOptions,
    reporter: &dyn Reporter,
    progress: &mut dyn Progress,
) -> Result<(), EngineError> {
    let state = StateDir::new(&project.dir);
    let selected = select(project, &opts.vms, true)?;
    // Everything that can be checked without changing anything, for every VM, first.
    let checked = selected
        .iter()
        .map(|vm| instance::check(vm))
        .collect::<Result<Vec<_>, _>>()?;
    // Each VM's QEMU binary (per architecture), in the order of `selected`.
    let qemu = if opts.no_start {
        None
    } else {
        Some(
            selected
                .iter()
                .map(|vm| host.qemu(vm.guest_arch().into()))
                .collect::<Result<Vec<_>, _>>()?,
        )
    };
    if let Some(binaries) = &qemu {
        for binary in binaries.iter().collect::<BTreeSet<_>>() {
            let networked: Vec<&str> = selected
                .iter()
                .zip(binaries)
                .filter(|(vm, b)| !vm.networks.is_empty() && *b == binary)
                .map(|(vm, _)| vm.name.as_str())
                .collect();
            if !networked.is_empty() {
                network::check_qemu(binary, &networked)?;
            }
        }
    }

    let guard = lock(&state, reporter)?;
    note_project_name(&state, project, reporter)?;
    let orphans = orphans(project, host)?;
    if opts.remove_orphans {
        for orphan in &orphans {
            remove_instance(
                &state,
                host,
                &orphan.name,
                grace(opts.stop_timeout, None),
                false,
                reporter,
            )?;
        }
    } else if !orphans.is_empty() {
        reporter.warn(&orphan_warning(&orphans));
    }
    // Addresses before anything is made: a conflict leaves everything as it was.
    let starting: Vec<&str> = selected.iter().map(|vm| vm.name.as_str()).collect();
    let networks = network::update(&state, host, project, &starting)?;
    let mut checked = checked;
    for (vm, checked) in selected.iter().zip(&mut checked) {
        let private = state.private();
        for warning in
            super::mounts::settle_file_sources(&vm.name, &mut checked.source_kinds, private)
        {
            reporter.warn(&warning);
        }
    }
    let bases = selected
        .iter()
        .map(|vm| instance::resolve_image(vm, host, false, progress))
        .collect::<Result<Vec<_>, _>>()?;
    let secrets = ProjectSecrets::ensure(&state, &project.name)?;
    let mut registry = VolumeRegistry::load(&state.volumes_json())?;
    volumes::ensure_volumes(&state, project, &mut registry, reporter, progress)?;

    if qemu.is_some() && selected.iter().any(|vm| !vm.networks.is_empty()) {
        network::ensure_switch(&state, &networks, reporter)?;
    }

    let cx = instance::UpContext {
        project,
        state: &state,
        host,
        registry: &registry,
        secrets: &secrets,
        networks: &networks,
        rebuild_changed_disks: opts.force_recreate,
    };
    // Every VM that runs once `up` is done, with its SSH port: what `--wait` waits for.
    let mut running = Vec::new();
    let mut tcg_said = BTreeSet::new();
    for (i, ((vm, checked), base)) in selected.iter().zip(&checked).zip(bases).enumerate() {
        if qemu.is_some() {
            let key = &secrets.private_key_path;
            health::wait_for_dependencies(project, host, vm, key, opts.health_wait, reporter)?;
        }
        let resolved = base.clone();
        let prepared = instance::prepare(&cx, vm, checked, base)?;
        prepared.paths.check_socket_dir()?;
        // Against the base the compose file names now; the disk keeps the one it was made on
        // unless `--force-recreate` makes it again.
        if let Some(change) = instance::base_change(&prepared.paths.disk, &resolved)
            && !prepared.rebuild_disk
        {
            reporter.warn(&change.warning(&vm.name));
        }
        if host.is_root() {
            for share in unwritable_shares(&prepared, state.root()) {
                reporter.warn(&format!("VM {}: {share}", vm.name));
            }
        }
        if vm.disk_size_bytes < prepared.base_size {
            reporter.warn(&format!(
                "VM {}: disk size {} is smaller than its image ({}); the disk gets the image's size",
                vm.name,
                format_size(vm.disk_size_bytes),
                format_size(prepared.base_size)
            ));
        }
        let handle = status::handle(&prepared.paths);
        let record = InstanceRecord::load(&prepared.paths.record)?;
        match process::state(&handle) {
            ProcState::Running { .. } => {
                let current = record
                    .as_ref()
                    .is_some_and(|r| r.config_hash == prepared.config_hash);
                let port = record.as_ref().map(|r| r.ssh_port);
                if current {
                    reporter.info(&format!("VM {} is already running", vm.name));
                    running.extend(port.map(|p| (*vm, p)));
                    continue;
                }
                if !opts.force_recreate {
                    reporter.warn(&format!(
                        "VM {} runs with an older configuration; `qemu-compose up --force-recreate {}` restarts it to apply the change",
                        vm.name, vm.name
                    ));
                    running.extend(port.map(|p| (*vm, p)));
                    continue;
                }
                reporter.info(&format!(
                    "stopping VM {} to apply its new configuration",
                    vm.name
                ));
                stop_one(
                    &vm.name,
                    &handle,
                    grace(opts.stop_timeout, Some(vm)),
                    false,
                    reporter,
                )?;
            }
            ProcState::Stale { reason, .. } => {
                reporter.warn(&format!("VM {}: {reason}; cleaning up", vm.name));
                stop_one(&vm.name, &handle, Duration::ZERO, true, reporter)?;
            }
            ProcState::NotRunning => {}
        }
        let change = instance::materialise(&state, &prepared)?;
        match change {
            DiskChange::Rebuilt => reporter.warn(&format!(
                "VM {}: its disk was made again on the new image; what the guest had written to its root disk is gone (volumes are kept)",
                vm.name
            )),
            DiskChange::Grown { from } => reporter.info(&format!(
                "VM {}: disk grown from {} to {}; the guest grows its partition and file system at boot (cloud-init growpart and resizefs)",
                vm.name,
                format_size(from),
                format_size(prepared.disk_size)
            )),
            DiskChange::KeptLarger { size } => reporter.warn(&format!(
                "VM {}: the compose file asks for a {} disk, but its disk is {}; disks never shrink, it stays {}",
                vm.name,
                format_size(prepared.disk_size),
                format_size(size),
                format_size(size)
            )),
            DiskChange::Created | DiskChange::Unchanged => {}
        }
        if let Some(total) = host_memory()
            && vm.memory_mib << 20 > total
        {
            reporter.warn(&format!(
                "VM {}: memory {} MiB is more than this host has ({} MiB); QEMU may fail to start, or the host swap",
                vm.name,
                vm.memory_mib,
                total >> 20
            ));
        }
        let Some(qemu) = qemu.as_ref().map(|binaries| &binaries[i]) else {
            if change == DiskChange::Created {
                reporter.info(&format!("created VM {} (not started)", vm.name));
            } else {
                reporter.info(&format!("VM {} is up to date (not started)", vm.name));
            }
            continue;
        };
        if prepared.accel.accel == crate::qemu::accel::Accel::Tcg {
            // A host-wide reason (no KVM here, or none for this guest architecture) is the
            // same for every such VM: each is said once per `up`.
            let reason = &prepared.accel.reason;
            if !reason.starts_with("TCG (slow)") {
                reporter.warn(&format!("VM {}: {reason}", vm.name));
            } else if !tcg_said.contains(reason) {
                reporter.warn(reason);
                tcg_said.insert(reason.clone());
            }
        }
        instance::check_images_before_start(&prepared)?;
        let port = start_with_port(&cx, vm, &prepared, qemu, record.as_ref(), reporter)?;
        reporter.info(&format!(
            "started VM {} (ssh: 127.0.0.1:{port}, qemu-compose ssh {})",
            vm.name, vm.name
        ));
        running.push((*vm, port));
    }
    drop(guard);

    if let Some(limit) = opts.wait {
        let deadline = Instant::now() + limit;
        for (vm, port) in running {
            let paths = instance_paths(&state, host, &vm.name);
            // A VM with a health check is waited for until healthy, not only for SSH.
            let key = &secrets.private_key_path;
            if health::wait_if_checked(vm, key, &paths, deadline, reporter)? {
                continue;
            }
            reporter.info(&format!("waiting for VM {} to answer SSH", vm.name));
            let login = ssh::Login {
                key: &secrets.private_key_path,
                user: &vm.user,
                port,
                vm: &vm.name,
                known_hosts: &paths.known_hosts,
            };
            let record = InstanceRecord::load(&paths.record)?;
            if ssh::wait_ready(&login, deadline, || false) != ssh::Wait::Ready {
                return Err(EngineError::vm(
                    &vm.name,
                    format!(
                        "did not answer SSH within {} s; `qemu-compose logs {}` shows its console",
                        limit.as_secs(),
                        vm.name
                    ),
                ));
            }
            if let Some(record) = &record {
                status::mark_ready(&paths, record);
            }
            reporter.info(&format!("VM {} is ready", vm.name));
        }
    }
    Ok(())
}

/// Starts QEMU, moving to another SSH port when the chosen one is taken by the time QEMU binds
/// it (unless the compose file fixes it), and records the instance.
fn start_with_port(
    cx: &instance::UpContext,
    vm: &Vm,
    prepared: &PreparedVm,
    qemu: &Path,
    previous: Option<&InstanceRecord>,
    reporter: &dyn Reporter,
) -> Result<u16, EngineError> {
    // Whatever the last run answered, this one has not yet.
    match fs::remove_file(&prepared.paths.ready) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StateError::io(&prepared.paths.ready, e).into()),
    }
    let mut taken = ports_of_other_vms(cx.project, vm, cx.state, cx.host)?;
    let mut port = match (vm.ssh_port, previous) {
        (Some(fixed), _) => fixed,
        // Keep the port the VM had, so saved ssh commands keep working.
        (None, Some(rec)) if !taken.contains(&rec.ssh_port) && port_free(rec.ssh_port) => {
            rec.ssh_port
        }
        (None, _) => ports::allocate_ssh_port(FIRST_SSH_PORT, &taken)
            .map_err(|e| EngineError::vm(&vm.name, e))?,
    };
    for attempt in 0..=PORT_RETRIES {
        let spec = instance::launch_spec(cx.project, vm, prepared, port);
        let clock = Instant::now();
        match process::start(qemu, &spec, START_TIMEOUT) {
            Ok(started) => {
                let words: Vec<String> = started
                    .argv
                    .iter()
                    .map(|w| {
                        if w.contains(|c: char| c.is_whitespace() || c == '\'') {
                            format!("{w:?}")
                        } else {
                            w.clone()
                        }
                    })
                    .collect();
                reporter.detail(&format!(
                    "VM {}: {} {} (QEMU up and answering QMP in {} ms)",
                    vm.name,
                    qemu.display(),
                    words.join(" "),
                    clock.elapsed().as_millis()
                ));
                if !started.stderr.is_empty() {
                    reporter.warn(&format!("VM {}: QEMU said: {}", vm.name, started.stderr));
                }
                let record = InstanceRecord {
                    vm: vm.name.clone(),
                    ssh_port: port,
                    mac: prepared.mac.to_string(),
                    config_hash: prepared.config_hash.clone(),
                    instance_id: prepared.seed.instance_id.clone(),
                    qemu: qemu.to_path_buf(),
                    argv: started.argv,
                    started: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                        .to_string(),
                };
                record.save(&prepared.paths.record)?;
                return Ok(port);
            }
            Err(StartError::HostForward {
                host_port: Some(p), ..
            }) if p == port && vm.ssh_port.is_none() && attempt < PORT_RETRIES => {
                taken.insert(port);
                port = ports::allocate_ssh_port(port, &taken)
                    .map_err(|e| EngineError::vm(&vm.name, e))?;
            }
            Err(e) => return Err(EngineError::vm(&vm.name, e)),
        }
    }
    unreachable!("the last attempt returns")
}

pub(super) fn port_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Host ports the other VMs of the project use or will use.
pub(super) fn ports_of_other_vms(
    project: &Project,
    vm: &Vm,
    state: &StateDir,
    host: &HostEnv,
) -> Result<BTreeSet<u16>, EngineError> {
    let mut taken = BTreeSet::new();
    for other in &project.vms {
        taken.extend(other.ports.iter().map(|p| p.host_port));
        if other.name == vm.name {
            continue;
        }
        taken.extend(other.ssh_port);
        let paths = instance_paths(state, host, &other.name);
        if let Some(rec) = InstanceRecord::load(&paths.record)? {
            taken.insert(rec.ssh_port);
        }
    }
    Ok(taken)
}

fn stop_one(
    vm: &str,
    handle: &process::VmHandle,
    timeout: Duration,
    force: bool,
    reporter: &dyn Reporter,
) -> Result<StopOutcome, EngineError> {
    if !force {
        // A paused guest cannot hear the power-off request.
        super::verbs::resume_if_paused(&handle.qmp_socket);
    }
    let outcome = process::stop(handle, timeout, force).map_err(|e| EngineError::vm(vm, e))?;
    match outcome {
        StopOutcome::PoweredOff => reporter.info(&format!("VM {} powered off", vm)),
        StopOutcome::Quit if force => reporter.info(&format!("VM {} stopped", vm)),
        StopOutcome::Quit => reporter.warn(&format!(
            "VM {} did not power off within {} s; QEMU was told to quit",
            vm,
            timeout.as_secs()
        )),
        StopOutcome::Killed => {
            reporter.warn(&format!("VM {}: QEMU did not answer and was killed", vm))
        }
        StopOutcome::AlreadyStopped => {}
    }
    Ok(outcome)
}

/// Stops running VMs: those nothing else depends on first, each wave in parallel, so a
/// project waits for its slowest guest rather than for the sum of them.
pub fn stop(
    project: &Project,
    host: &HostEnv,
    opts: &StopOptions,
    reporter: &dyn Reporter,
) -> Result<(), EngineError> {
    let state = StateDir::new(&project.dir);
    let selected = select(project, &opts.vms, false)?;
    let _guard = lock(&state, reporter)?;
    for wave in stop_waves(&selected) {
        let mut running = Vec::new();
        for vm in wave {
            let paths = instance_paths(&state, host, &vm.name);
            paths.check_socket_dir()?;
            let handle = status::handle(&paths);
            match process::state(&handle) {
                ProcState::NotRunning => {
                    reporter.info(&format!("VM {} is not running", vm.name));
                }
                ProcState::Stale { reason, .. } => {
                    reporter.warn(&format!("VM {}: {reason}; cleaning up", vm.name));
                    stop_one(&vm.name, &handle, Duration::ZERO, true, reporter)?;
                }
                ProcState::Running { .. } => running.push((vm, handle)),
            }
        }
        if running.is_empty() {
            continue;
        }
        if !opts.force {
            let names: Vec<&str> = running.iter().map(|(vm, _)| vm.name.as_str()).collect();
            reporter.info(&format!(
                "stopping VM {} (waiting up to {} s for the guest{} to power off)",
                names.join(", "),
                running
                    .iter()
                    .map(|(vm, _)| grace(opts.timeout, Some(vm)).as_secs())
                    .max()
                    .unwrap_or(0),
                if names.len() > 1 { "s" } else { "" }
            ));
        }
        std::thread::scope(|scope| {
            let stops: Vec<_> = running
                .iter()
                .map(|(vm, handle)| {
                    scope.spawn(move || {
                        let timeout = grace(opts.timeout, Some(vm));
                        stop_one(&vm.name, handle, timeout, opts.force, reporter)
                    })
                })
                .collect();
            stops.into_iter().try_for_each(|stop| {
                stop.join()
                    .unwrap_or_else(|_| Err(EngineError::vm("?", "the stop thread panicked")))
                    .map(drop)
            })
        })?;
    }
    end_switch_if_idle(&state, host)
}

/// Ends the project's network switch once no QEMU of the project runs (orphans included).
fn end_switch_if_idle(state: &StateDir, host: &HostEnv) -> Result<(), EngineError> {
    for vm in state.instance_names()? {
        let paths = instance_paths(state, host, &vm);
        if matches!(
            process::state(&status::handle(&paths)),
            ProcState::Running { .. }
        ) {
            return Ok(());
        }
    }
    network::stop_switch(state)
}

/// `vms` (in start order) in the waves `stop` takes: first every VM no other selected VM
/// depends on, then those only they depended on, and so on; the VMs of one wave do not
/// depend on each other.
fn stop_waves<'p>(vms: &[&'p Vm]) -> Vec<Vec<&'p Vm>> {
    // A VM's height: the longest chain of selected VMs that depend on it. In start order
    // what depends on a VM comes after it, so going backwards the heights it needs are known.
    let mut height = vec![0usize; vms.len()];
    for i in (0..vms.len()).rev() {
        height[i] = (i + 1..vms.len())
            .filter(|&j| vms[j].depends_on.contains(&vms[i].name))
            .map(|j| height[j] + 1)
            .max()
            .unwrap_or(0);
    }
    let highest = height.iter().copied().max().unwrap_or(0);
    (0..=highest)
        .map(|level| {
            vms.iter()
                .zip(&height)
                .filter(|(_, h)| **h == level)
                .map(|(vm, _)| *vm)
                .collect::<Vec<_>>()
        })
        .filter(|wave| !wave.is_empty())
        .collect()
}

/// Stops VMs and removes their instance folders; with `volumes`, the named volumes too.
pub fn destroy(
    project: &Project,
    host: &HostEnv,
    opts: &DestroyOptions,
    reporter: &dyn Reporter,
) -> Result<(), EngineError> {
    let state = StateDir::new(&project.dir);
    let selected = select(project, &opts.vms, false)?;
    if opts.volumes && !opts.vms.is_empty() {
        return Err(EngineError::vm(
            &opts.vms.join(", "),
            "-v/--volumes removes the volumes the compose file declares and so cannot be combined with VM names; use `qemu-compose volume rm NAME` for single volumes",
        ));
    }
    if !state.exists() {
        reporter.info("nothing to destroy");
        return Ok(());
    }
    let _guard = lock(&state, reporter)?;
    for vm in selected.into_iter().rev() {
        let timeout = grace(opts.timeout, Some(vm));
        remove_instance(&state, host, &vm.name, timeout, opts.force, reporter)?;
    }
    if opts.remove_orphans {
        for orphan in orphans(project, host)? {
            remove_instance(
                &state,
                host,
                &orphan.name,
                grace(opts.timeout, None),
                opts.force,
                reporter,
            )?;
        }
    }
    end_switch_if_idle(&state, host)?;
    if state.instance_names()?.is_empty() {
        // As `docker compose down` removes the project's networks: addresses start afresh.
        crate::state::NetworkRegistry::default().save(&state.networks_json())?;
        network::remove_relocated_sockets(&state, host)?;
    }
    if opts.volumes {
        // Only the volumes the compose file declares, as `docker compose down -v`; and none of
        // them while any QEMU (of a VM since removed from the file, say) still holds one.
        let mut registry = VolumeRegistry::load(&state.volumes_json())?;
        for decl in &project.volumes {
            volumes::check_not_in_use(&state, &decl.name)?;
        }
        for decl in &project.volumes {
            let name = &decl.name;
            let existed = registry.volumes.contains_key(name) || state.volume_dir(name).exists();
            volumes::remove(&state, &mut registry, name)?;
            if existed {
                reporter.info(&format!("removed volume {name}"));
            }
        }
        for name in registry.volumes.keys() {
            reporter.info(&format!(
                "kept volume {name}: the compose file does not declare it (`qemu-compose volume rm {name}` removes it)"
            ));
        }
    }
    Ok(())
}

/// The guest user's UID in the usual cloud image (the first user `useradd` makes). As root,
/// qemu-compose gives the guest user no UID, so it keeps the image's.
const USUAL_GUEST_UID: u32 = 1000;

/// What to tell a root user about each read-write share the guest user cannot write: as
/// root, shares use 9p `passthrough`, so the guest sees the host's owners and modes, and a
/// folder root made with mode 755 is read-only to the guest's ordinary user.
fn unwritable_shares(prepared: &PreparedVm, state_root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    prepared
        .mounts
        .shares
        .iter()
        .filter(|share| !share.read_only && !share.path.starts_with(state_root))
        .filter_map(|share| {
            let meta = fs::metadata(&share.path).ok()?;
            let mode = meta.mode() & 0o7777;
            let writable = mode & 0o002 != 0 || (meta.uid() == USUAL_GUEST_UID && mode & 0o200 != 0);
            (!writable && meta.is_dir()).then(|| {
                format!(
                    "the guest user (uid {USUAL_GUEST_UID} in most images) cannot write the shared folder {} (owner uid {}, mode {mode:o}): as root, shares keep the host's owners; `chmod o+w` or `chown {USUAL_GUEST_UID}` on it lets the guest write",
                    share.path.display(),
                    meta.uid()
                )
            })
        })
        .collect()
}

/// Records the name the folder's VMs are made under, and says when `-p` (or the file's
/// `name:`) now differs: docker would make a second set of containers, qemu-compose keeps
/// state per folder and works on the same VMs.
fn note_project_name(
    state: &StateDir,
    project: &Project,
    reporter: &dyn Reporter,
) -> Result<(), EngineError> {
    let path = state.name_file();
    match crate::state::atomic::read_optional(&path)? {
        Some(made) if made.trim() != project.name => reporter.warn(&format!(
            "this folder's VMs were made under the project name {:?}; as {:?} they are the same VMs (qemu-compose keeps state per folder, not per name: a second set needs a copy of the folder)",
            made.trim(),
            project.name
        )),
        Some(_) => {}
        None => crate::state::write_atomic(&path, format!("{}\n", project.name).as_bytes(), 0o600)?,
    }
    Ok(())
}

/// The host's memory (`MemTotal` of /proc/meminfo), in bytes.
fn host_memory() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

/// Stops the QEMU of VM `name` if it runs, and removes its instance: disk, private folder,
/// relocated sockets.
fn remove_instance(
    state: &StateDir,
    host: &HostEnv,
    name: &str,
    timeout: Duration,
    force: bool,
    reporter: &dyn Reporter,
) -> Result<(), EngineError> {
    let paths = instance_paths(state, host, name);
    paths.check_socket_dir()?;
    let handle = status::handle(&paths);
    if !matches!(process::state(&handle), ProcState::NotRunning) {
        reporter.info(&format!("stopping VM {name}"));
        stop_one(name, &handle, timeout, force, reporter)?;
    }
    state.check_inside(&paths.dir)?;
    state.check_inside(&paths.private_dir)?;
    paths.check_socket_dir()?;
    let removed_disk = remove_tree(&paths.dir)?;
    let removed_private = remove_tree(&paths.private_dir)?;
    if removed_disk || removed_private {
        reporter.info(&format!("removed VM {name}"));
    }
    if paths.sockets_relocated() {
        remove_tree(paths.socket_dir())?;
        // The project's folder under the runtime folder goes with its last VM (`remove_dir`
        // only removes an empty folder; the shared parent stays).
        if let Some(project_sockets) = paths.socket_dir().parent() {
            let _ = fs::remove_dir(project_sockets);
        }
    }
    Ok(())
}

/// The instance of a VM the compose file no longer has (removed or renamed): its folders
/// remain, and its QEMU may still run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Orphan {
    /// The VM's name.
    pub name: String,
    /// Whether its QEMU runs.
    pub running: bool,
}

/// The project's orphan instances, by name.
pub fn orphans(project: &Project, host: &HostEnv) -> Result<Vec<Orphan>, EngineError> {
    let state = StateDir::new(&project.dir);
    let names = state.instance_names()?;
    Ok(names
        .into_iter()
        .filter(|name| !project.defines(name) && !run::is_running_one_off(&state, host, name))
        .map(|name| {
            let paths = instance_paths(&state, host, &name);
            let running = matches!(
                process::state(&status::handle(&paths)),
                ProcState::Running { .. }
            );
            Orphan { name, running }
        })
        .collect())
}

/// What `up` and `ps` say about orphans, in docker compose's words.
pub fn orphan_warning(orphans: &[Orphan]) -> String {
    let names: Vec<String> = orphans
        .iter()
        .map(|o| {
            if o.running {
                format!("{} (running)", o.name)
            } else {
                o.name.clone()
            }
        })
        .collect();
    format!(
        "Found orphan VMs ({}) for this project. If you removed or renamed them in the compose file, run `qemu-compose up --remove-orphans` (or `destroy --remove-orphans`) to stop and remove them",
        names.join(", ")
    )
}

/// Removes a folder tree; false when it was not there.
fn remove_tree(dir: &Path) -> Result<bool, StateError> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StateError::io(dir, e)),
    }
}

/// The VMs of the project whose QEMU runs (by pidfile and process; no QMP or SSH probe).
pub fn running_vms(project: &Project, host: &HostEnv) -> BTreeSet<String> {
    let state = StateDir::new(&project.dir);
    project
        .vms
        .iter()
        .filter(|vm| {
            let paths = instance_paths(&state, host, &vm.name);
            matches!(
                process::state(&status::handle(&paths)),
                ProcState::Running { .. }
            )
        })
        .map(|vm| vm.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project() -> Project {
        crate::compose::test_project(
            "vms:\n  web: {image: ./a.img, depends_on: [db]}\n  db: {image: ./a.img, depends_on: [cache]}\n  cache: {image: ./a.img}\n  other: {image: ./a.img}\n",
        )
    }

    fn names(vms: Vec<&Vm>) -> Vec<&str> {
        vms.into_iter().map(|v| v.name.as_str()).collect()
    }

    #[test]
    fn selection_adds_dependencies_in_start_order() {
        let p = project();
        assert_eq!(
            names(select(&p, &[], true).unwrap()),
            ["cache", "db", "web", "other"]
        );
        assert_eq!(
            names(select(&p, &["web".into()], true).unwrap()),
            ["cache", "db", "web"]
        );
        assert_eq!(names(select(&p, &["web".into()], false).unwrap()), ["web"]);
    }

    #[test]
    fn unknown_vm_lists_the_known_ones() {
        let err = select(&project(), &["wbe".into()], true)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "no VM named \"wbe\" in the compose file (VMs: web, db, cache, other)"
        );
    }
}
