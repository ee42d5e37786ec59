//! One VM instance: what `up` checks, plans and writes before QEMU starts.
//!
//! [`check`] looks at the host without changing it, [`prepare`] computes everything (mount
//! plan, seed, launch facts) without writing, [`materialise`] writes the instance folder:
//! the copy-on-write disk (only if missing, so the guest's data survives `stop`/`up`), the
//! single-file shares and the seed.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cloudinit::{self, Seed, SeedInput, UserSpec};
use crate::compose::{ImageSource, Project, Vm};
use crate::disk::fat;
use crate::disk::qcow2::{self, Backing, ImageFormat, Qcow2Image};
use crate::image::{Progress, Sha256Digest};
use crate::qemu::accel::{self, AccelChoice};
use crate::qemu::argv::{
    DriveFormat, DriveSpec, KernelBoot, LaunchSpec, MacAddress, NetSpec, PortForward,
};
use crate::state::{InstancePaths, ProjectSecrets, StateDir, StateError, VolumeRegistry, atomic};

use super::mounts::{self, MountPlan, PlanFacts, SourceKind};
use super::{EngineError, HostEnv};

/// The result of looking at the host for one VM.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The kind of each bind source.
    pub source_kinds: BTreeMap<PathBuf, SourceKind>,
}

/// Checks what must hold before anything is created for `vm`.
pub fn check(vm: &Vm) -> Result<Checked, EngineError> {
    if !vm.networks.is_empty() {
        return Err(EngineError::Unsupported {
            vm: vm.name.clone(),
            what: format!(
                "is attached to network(s) {}, but VM-to-VM networking is not implemented yet; remove `networks:` from the VM to start it",
                vm.networks.join(", ")
            ),
        });
    }
    for port in &vm.ports {
        if let Some(IpAddr::V6(ip)) = port.host_ip {
            return Err(EngineError::Unsupported {
                vm: vm.name.clone(),
                what: format!(
                    "port {}: QEMU's user-mode network cannot listen on the IPv6 address {ip}",
                    port.host_port
                ),
            });
        }
    }
    let files = [
        ("image", local_image(vm)),
        ("kernel", vm.kernel.as_deref()),
        ("initrd", vm.initrd.as_deref()),
    ];
    for (what, path) in files {
        if let Some(path) = path
            && !path.is_file()
        {
            return Err(EngineError::MissingFile {
                vm: vm.name.clone(),
                what,
                path: path.to_path_buf(),
            });
        }
    }
    check_local_checksum(vm)?;
    Ok(Checked {
        source_kinds: mounts::check_bind_sources(vm)?,
    })
}

/// Checks a local image against the VM's `image_checksum` (downloads are checked by the
/// cache). Hashes the whole file, so it costs a read of the image when a checksum is given.
pub fn check_local_checksum(vm: &Vm) -> Result<(), EngineError> {
    let (Some(path), Some(text)) = (local_image(vm), vm.image_checksum.as_deref()) else {
        return Ok(());
    };
    let expected: Sha256Digest = text.parse().map_err(|e| EngineError::vm(&vm.name, e))?;
    let actual = crate::image::hash_file(path)?;
    if actual != expected {
        return Err(EngineError::vm(
            &vm.name,
            format!(
                "image {} does not match image_checksum: expected {expected}, the file has {actual}",
                path.display()
            ),
        ));
    }
    Ok(())
}

fn local_image(vm: &Vm) -> Option<&Path> {
    match &vm.image {
        ImageSource::Path(p) => Some(p),
        ImageSource::Url(_) => None,
    }
}

/// The base image of `vm` on this host: the local file, or the cached download (fetched now
/// when missing, or again when `force`), checked against the VM's `image_checksum`.
pub fn resolve_image(
    vm: &Vm,
    host: &HostEnv,
    force: bool,
    progress: &mut dyn Progress,
) -> Result<PathBuf, EngineError> {
    match &vm.image {
        ImageSource::Path(p) => Ok(p.clone()),
        ImageSource::Url(url) => {
            let checksum = vm
                .image_checksum
                .as_deref()
                .map(str::parse::<Sha256Digest>)
                .transpose()
                .map_err(|e| EngineError::vm(&vm.name, e))?;
            Ok(host.images.pull(url, checksum.as_ref(), force, progress)?)
        }
    }
}

/// The base an instance disk was made on, and the one the compose file names now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseChange {
    /// The backing file the instance disk's qcow2 header names.
    pub made_on: PathBuf,
    /// The image the compose file resolves to now (a URL not downloaded yet: the URL).
    pub now: String,
}

impl BaseChange {
    /// What `up` and `ps` tell the user.
    pub fn warning(&self, vm: &str) -> String {
        format!(
            "VM {vm}: its disk was made on {}, the compose file now names {}; `qemu-compose up --force-recreate {vm}` makes a new disk on it (the changes the guest made to its disk are lost); until then the VM keeps its disk and its old base",
            self.made_on.display(),
            self.now
        )
    }
}

/// Compares the base the instance disk at `disk` was made on with `base`; `None` when the
/// disk does not exist, names no base, or names `base`.
pub fn base_change(disk: &Path, base: &Path) -> Option<BaseChange> {
    let made_on = crate::image::overlay_base(disk)?;
    let now = base.canonicalize().unwrap_or(base.to_path_buf());
    (made_on != now).then(|| BaseChange {
        made_on,
        now: now.display().to_string(),
    })
}

/// [`base_change`] for `vm` without downloading anything, for `ps` and `inspect`: the base is
/// the local image, or the cached download of the URL (matching `image_checksum`).
pub fn current_base_change(project: &Project, host: &HostEnv, vm: &Vm) -> Option<BaseChange> {
    let paths = InstancePaths::new(
        &StateDir::new(&project.dir),
        &vm.name,
        host.runtime_dir.as_deref(),
    );
    let checksum = vm
        .image_checksum
        .as_deref()
        .and_then(|c| c.parse::<Sha256Digest>().ok());
    match &vm.image {
        ImageSource::Path(p) => base_change(&paths.disk, p),
        ImageSource::Url(url) => match host.images.find(url, checksum.as_ref()) {
            Some(cached) => base_change(&paths.disk, &cached),
            None => crate::image::overlay_base(&paths.disk).map(|made_on| BaseChange {
                made_on,
                now: format!("{url} (not downloaded yet)"),
            }),
        },
    }
}

/// Everything about one VM that `up` needs, computed without writing anything.
#[derive(Debug, Clone)]
pub struct PreparedVm {
    /// The VM name.
    pub name: String,
    /// Its files.
    pub paths: InstancePaths,
    /// The base image and its format.
    pub base: PathBuf,
    /// The base's format, recorded in the overlay.
    pub base_format: ImageFormat,
    /// The instance disk's virtual size.
    pub disk_size: u64,
    /// Drives, shares and guest mounts.
    pub mounts: MountPlan,
    /// The cloud-init documents.
    pub seed: Seed,
    /// The accelerator and why.
    pub accel: AccelChoice,
    /// The NIC's address, stable per project and VM.
    pub mac: MacAddress,
    /// A digest of everything that shapes the VM; a change means "recreate to apply".
    pub config_hash: String,
}

/// What every VM of one `up` shares.
#[derive(Debug, Clone, Copy)]
pub struct UpContext<'a> {
    /// The project.
    pub project: &'a Project,
    /// Its state folder.
    pub state: &'a StateDir,
    /// The host.
    pub host: &'a HostEnv,
    /// The volumes, all created by now.
    pub registry: &'a VolumeRegistry,
    /// The SSH key and console password.
    pub secrets: &'a ProjectSecrets,
}

/// Computes the instance of `vm` from its checked sources and resolved base image.
pub fn prepare(
    cx: &UpContext,
    vm: &Vm,
    checked: &Checked,
    base: PathBuf,
) -> Result<PreparedVm, EngineError> {
    let UpContext {
        project,
        state,
        host,
        registry,
        secrets,
    } = *cx;
    let paths = InstancePaths::new(state, &vm.name, host.runtime_dir.as_deref());
    let plan = mounts::plan(
        vm,
        &PlanFacts {
            host_is_root: host.is_root(),
            volumes: registry,
            source_kinds: &checked.source_kinds,
            file_shares_dir: &paths.file_shares,
        },
    )?;

    let base_format = qcow2::probe_format(&base).map_err(|e| EngineError::vm(&vm.name, e))?;
    let base_size = match base_format {
        ImageFormat::Qcow2 { .. } => Qcow2Image::open(&base)
            .map_err(|e| EngineError::vm(&vm.name, e))?
            .virtual_size(),
        ImageFormat::Raw => fs::metadata(&base)
            .map_err(|e| StateError::io(&base, e))?
            .len(),
    };
    // Never smaller than the base: the guest's partitions would run off the end.
    let disk_size = vm.disk_size_bytes.max(base_size.next_multiple_of(512));

    let mac = mac_for(project, vm);
    let password_hash = cloudinit::hash_password(&secrets.console_password, &secrets.password_salt)
        .map_err(|e| EngineError::vm(&vm.name, e))?;
    let seed = cloudinit::build_seed(&SeedInput {
        hostname: cloudinit::hostname_for_vm(&vm.name),
        user: UserSpec {
            name: vm.user.clone(),
            // uid 0 is never given to the guest user: it keeps the image's default.
            uid: (!host.is_root()).then_some(host.uid),
            ssh_authorized_key: secrets.public_key.clone(),
            password_hash,
        },
        mounts: plan.guest.clone(),
        environment: vm.environment.clone(),
        provision: vm.provision.clone(),
        mac: mac.to_string(),
    })
    .map_err(|e| EngineError::vm(&vm.name, e))?;

    let accel = accel::decide(vm.accel, host.accel_override.as_deref(), &host.probe)
        .map_err(|e| EngineError::vm(&vm.name, e))?;

    let mut hash = Sha256::new();
    hash.update(serde_json::to_vec(vm).expect("the model serialises"));
    hash.update(seed.instance_id.as_bytes());
    hash.update(base.as_os_str().as_encoded_bytes());
    hash.update(accel.accel.as_str());
    let config_hash = hex(&hash.finalize()[..16]);

    Ok(PreparedVm {
        name: vm.name.clone(),
        paths,
        base,
        base_format,
        disk_size,
        mounts: plan,
        seed,
        accel,
        mac,
        config_hash,
    })
}

/// The NIC address of `vm`: stable per project and VM, so its DHCP lease survives restarts.
pub fn mac_for(project: &Project, vm: &Vm) -> MacAddress {
    MacAddress::derived_from(&format!("{}/{}", project.name, vm.name))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes the instance folder: the disk if missing, the file shares, the seed.
pub fn materialise(state: &StateDir, vm: &PreparedVm) -> Result<(), EngineError> {
    let paths = &vm.paths;
    state.check_inside(&paths.dir)?;
    state.check_inside(&paths.private_dir)?;
    atomic::create_private_dir(&paths.dir, 0o700)?;
    atomic::create_private_dir(&paths.private_dir, 0o700)?;
    paths.ensure_socket_dir()?;

    if !paths.disk.exists() {
        let dir = &paths.dir;
        let tmp = tempfile::Builder::new()
            .prefix(".disk-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| StateError::io(dir, e))?;
        let backing = Backing {
            path: vm.base.to_string_lossy().into_owned(),
            format: vm.base_format.backing_format(),
        };
        qcow2::write_overlay(tmp.as_file(), vm.disk_size, &backing)
            .map_err(|e| EngineError::vm(&vm.name, e))?;
        tmp.persist_noclobber(&paths.disk)
            .map_err(|e| StateError::io(&paths.disk, e.error))?;
        atomic::sync_dir(dir)?;
    }
    // The cache keeps the base while this disk names it (`image rm` checks).
    crate::image::record_overlay(&paths.disk)?;

    for share in &vm.mounts.file_shares {
        atomic::create_private_dir(&share.dir, 0o700)?;
        link_or_copy(&share.source, &share.link)?;
    }

    let image = fat::build_fat_image(fat::CIDATA_LABEL, &vm.seed.files())
        .map_err(|e| EngineError::vm(&vm.name, e))?;
    atomic::write_atomic(&paths.seed, &image, 0o600)?;
    Ok(())
}

/// Puts the file `source` names (a symbolic link is followed) at `link`: a hard link, so host
/// edits in place reach the guest, or a copy when it cannot be linked (another file system,
/// another user's file under `protected_hardlinks`, ...); the mount plan shares such a file
/// read-only (`mounts::settle_file_sources`).
fn link_or_copy(source: &Path, link: &Path) -> Result<(), StateError> {
    let target = fs::canonicalize(source).map_err(|e| StateError::io(source, e))?;
    match fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StateError::io(link, e)),
    }
    match fs::hard_link(&target, link) {
        Ok(()) => Ok(()),
        Err(_) => fs::copy(&target, link)
            .map(drop)
            .map_err(|e| StateError::io(link, e)),
    }
}

/// The QEMU launch facts of a prepared VM with its SSH port.
pub fn launch_spec(project: &Project, vm: &Vm, prepared: &PreparedVm, ssh_port: u16) -> LaunchSpec {
    let paths = &prepared.paths;
    let mut drives = vec![DriveSpec {
        id: "disk0".to_string(),
        path: paths.disk.clone(),
        format: DriveFormat::Qcow2,
        serial: "disk0".to_string(),
        read_only: false,
    }];
    drives.extend(prepared.mounts.drives.iter().cloned());
    drives.push(DriveSpec {
        id: "seed".to_string(),
        path: paths.seed.clone(),
        format: DriveFormat::Raw,
        serial: "cidata".to_string(),
        read_only: true,
    });
    let ports = vm
        .ports
        .iter()
        .map(|p| PortForward {
            protocol: p.protocol,
            host_ip: match p.host_ip {
                Some(IpAddr::V4(ip)) => Some(ip),
                // check() refuses IPv6 addresses.
                _ => None,
            },
            host_port: p.host_port,
            guest_port: p.guest_port,
        })
        .collect();
    LaunchSpec {
        name: format!("{}-{}", project.name, vm.name),
        accel: prepared.accel.accel,
        cpus: vm.cpu,
        memory_mib: vm.memory_mib,
        kernel: vm.kernel.as_ref().map(|kernel| KernelBoot {
            kernel: kernel.clone(),
            initrd: vm.initrd.clone(),
            cmdline: vm.cmdline.clone(),
        }),
        drives,
        shares: prepared.mounts.shares.clone(),
        net: NetSpec {
            mac: prepared.mac,
            ssh_port,
            ports,
        },
        qmp_socket: paths.qmp_socket.clone(),
        serial_socket: paths.serial_socket.clone(),
        serial_log: paths.serial_log.clone(),
        pidfile: paths.pidfile.clone(),
    }
}
