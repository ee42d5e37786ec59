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
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cloudinit::{self, Seed, SeedInput, SeedLink, UserSpec};
use crate::compose::{ImageSource, Project, Vm};
use crate::disk::qcow2::{self, Backing, Header, ImageFormat, Qcow2Error, Qcow2Image};
use crate::disk::{fat, signature};
use crate::image::{Progress, Sha256Digest};
use crate::qemu::accel::{self, Accel, AccelChoice};
use crate::qemu::arch::{self, Arch};
use crate::qemu::argv::{
    BaseImage, DriveFormat, DriveSpec, Firmware, KernelBoot, LaunchSpec, MacAddress, NetSpec,
    PortForward,
};
use crate::state::secrets::InstanceHostKey;
use crate::state::{InstancePaths, ProjectSecrets, StateDir, StateError, VolumeRegistry, atomic};

use super::mounts::{self, MountPlan, PlanFacts, SourceKind};
use super::network::{Link, Networks};
use super::workspace::instance_paths;
use super::{EngineError, HostEnv, ssh};

/// The result of looking at the host for one VM.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The kind of each bind source.
    pub source_kinds: BTreeMap<PathBuf, SourceKind>,
}

/// Checks what must hold before anything is created for `vm`.
pub fn check(vm: &Vm) -> Result<Checked, EngineError> {
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
        let Some(path) = path else { continue };
        if path.is_dir() {
            return Err(EngineError::vm(
                &vm.name,
                format!("{what} {} is a directory, not a file", path.display()),
            ));
        }
        if !path.is_file() {
            return Err(EngineError::MissingFile {
                vm: vm.name.clone(),
                what,
                path: path.to_path_buf(),
            });
        }
    }
    check_kernel_arch(vm)?;
    check_local_checksum(vm)?;
    Ok(Checked {
        source_kinds: mounts::check_bind_sources(vm)?,
    })
}

/// Refuses a `kernel:` whose header names another architecture than the VM's: QEMU would
/// start it and the guest would hang with nothing on its console. Compressed kernels say
/// nothing and pass.
fn check_kernel_arch(vm: &Vm) -> Result<(), EngineError> {
    use std::io::Read as _;
    let Some(kernel) = &vm.kernel else {
        return Ok(());
    };
    let mut head = Vec::with_capacity(arch::KERNEL_HEAD_LEN);
    fs::File::open(kernel)
        .and_then(|f| f.take(arch::KERNEL_HEAD_LEN as u64).read_to_end(&mut head))
        .map_err(|e| StateError::io(kernel, e))?;
    let guest = Arch::from(vm.guest_arch());
    match arch::kernel_arch(&head) {
        Some(found) if found != guest => Err(EngineError::vm(
            &vm.name,
            format!(
                "kernel {} is an {found} kernel but the VM is {guest}{}; set `arch: {found}` or use a {guest} kernel",
                kernel.display(),
                if vm.arch.is_none() {
                    " (the host's architecture, as no `arch:` is set)"
                } else {
                    ""
                }
            ),
        )),
        _ => Ok(()),
    }
}

/// The UEFI code image an aarch64 VM booting its image needs (`None` for the others): the
/// VM's `firmware:`, else `--aarch64-firmware` (`$QEMU_COMPOSE_AARCH64_FIRMWARE`), else the
/// first one installed in the usual places.
pub fn firmware_for(vm: &Vm, host: &HostEnv) -> Result<Option<PathBuf>, EngineError> {
    if Arch::from(vm.guest_arch()) != Arch::Aarch64 || vm.kernel.is_some() {
        return Ok(None);
    }
    let chosen = match (&vm.firmware, &host.aarch64_firmware) {
        (Some(path), _) => Some((path.as_path(), "the VM's firmware key")),
        (None, Some(path)) => Some((
            path.as_path(),
            "--aarch64-firmware/QEMU_COMPOSE_AARCH64_FIRMWARE",
        )),
        (None, None) => None,
    };
    arch::find_aarch64_firmware(chosen, arch::AARCH64_FIRMWARE)
        .map(Some)
        .map_err(|e| EngineError::vm(&vm.name, e))
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
            "VM {vm}: its disk was made on {}, the compose file now names {}; the VM keeps its disk and its old base (a cached image never changes under a disk); `qemu-compose up --force-recreate {vm}` makes a new disk on the new image (the changes the guest made to its root disk are lost; volumes are kept)",
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
    let paths = instance_paths(&StateDir::new(&project.dir), host, &vm.name);
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

/// The base an existing instance disk keeps: a cached image is never replaced under a disk, so
/// when a newer download of the VM's image exists, the disk goes on with the cached image it
/// was made on (`up` warns, see [`base_change`]). Only a file inside the image cache qualifies,
/// so a disk header changed through a share cannot name any other host file; for anything
/// else the base the compose file names is used and the pre-start check refuses a mismatch.
pub(crate) fn kept_cached_base(disk: &Path, base: PathBuf, host: &HostEnv) -> PathBuf {
    let Some(made_on) = crate::image::overlay_base(disk) else {
        return base;
    };
    let cache = host.images.dir().canonicalize();
    let in_cache = cache.is_ok_and(|c| made_on.starts_with(c) && made_on.is_file());
    if in_cache && made_on != base.canonicalize().unwrap_or_else(|_| base.clone()) {
        made_on
    } else {
        base
    }
}

/// The base image that instance disk `disk` of `vm` is read through, chosen as `up` chooses it
/// and without downloading anything: the cached image the disk was made on, else the local
/// image the compose file names. The disk's header must name that file; a header naming any
/// other (changed through a share, say) is refused, never followed.
pub fn base_for_reading(vm: &Vm, host: &HostEnv, disk: &Path) -> Result<PathBuf, EngineError> {
    let made_on = crate::image::overlay_base(disk).ok_or_else(|| {
        EngineError::vm(
            &vm.name,
            format!("instance disk {} names no base image", disk.display()),
        )
    })?;
    let cache = host.images.dir().canonicalize();
    if cache.is_ok_and(|c| made_on.starts_with(c) && made_on.is_file()) {
        return Ok(made_on);
    }
    let named = local_image(vm).ok_or_else(|| {
        EngineError::vm(
            &vm.name,
            format!(
                "instance disk {} names {}, which is not in the image cache",
                disk.display(),
                made_on.display()
            ),
        )
    })?;
    if named.canonicalize().ok().as_ref() != Some(&made_on) {
        return Err(EngineError::vm(
            &vm.name,
            format!(
                "instance disk {} names base image {}, not the VM's image {}; it is not read",
                disk.display(),
                made_on.display(),
                named.display()
            ),
        ));
    }
    Ok(made_on)
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
    /// The instance disk's virtual size: the compose file's, or the base's when larger.
    pub disk_size: u64,
    /// The base's virtual size.
    pub base_size: u64,
    /// The disk is made again on a new base (`--force-recreate` after an image change).
    pub rebuild_disk: bool,
    /// Drives, shares and guest mounts.
    pub mounts: MountPlan,
    /// The cloud-init documents.
    pub seed: Seed,
    /// The guest's SSH host key, which the seed carries.
    pub host_key: InstanceHostKey,
    /// The accelerator and why.
    pub accel: AccelChoice,
    /// The UEFI code image (aarch64 VMs booting their image).
    pub firmware: Option<PathBuf>,
    /// The NIC's address, stable per project and VM.
    pub mac: MacAddress,
    /// Its NICs on project networks.
    pub links: Vec<Link>,
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
    /// The project networks, allocated.
    pub networks: &'a Networks,
    /// `up --force-recreate`: a disk made on another base than the compose file names now is
    /// made again on the new one.
    pub rebuild_changed_disks: bool,
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
        networks,
        rebuild_changed_disks,
    } = *cx;
    let paths = instance_paths(state, host, &vm.name);
    let rebuild_disk = rebuild_changed_disks && base_change(&paths.disk, &base).is_some();
    let base = if rebuild_disk {
        base
    } else {
        kept_cached_base(&paths.disk, base, host)
    };
    let links = networks.links(project, &vm.name);
    let plan = mounts::plan(
        vm,
        &PlanFacts {
            host_is_root: host.is_root(),
            volumes: registry,
            source_kinds: &checked.source_kinds,
            file_shares_dir: &paths.file_shares,
            hosts_dir: (!links.is_empty()).then_some(paths.hosts.as_path()),
        },
    )?;

    let base_format = qcow2::probe_format(&base).map_err(|e| EngineError::vm(&vm.name, e))?;
    let base_size = match base_format {
        ImageFormat::Qcow2 { .. } => {
            if local_image(vm).is_some() {
                check_local_base(&vm.name, &base)?;
            }
            // The header only: QEMU gets the base without its backing file (if it names one).
            let file = fs::File::open(&base).map_err(|e| StateError::io(&base, e))?;
            Qcow2Image::from_source(file)
                .map_err(|e| {
                    EngineError::vm_step(&vm.name, format!("image {}", base.display()), e)
                })?
                .virtual_size()
        }
        ImageFormat::Raw => check_raw_disk(vm, &base)?,
    };
    // Never smaller than the base: the guest's partitions would run off the end.
    let disk_size = vm.disk_size_bytes.max(base_size.next_multiple_of(512));

    let mac = mac_for(project, vm);
    let host_key = InstanceHostKey::load_or_make(&paths.host_key)?;
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
        links: links
            .iter()
            .map(|l| SeedLink {
                mac: l.nic.mac.to_string(),
                address: l.address,
                prefix: l.prefix,
            })
            .collect(),
        host_key: host_key.key.clone(),
    })
    .map_err(|e| EngineError::vm(&vm.name, e))?;

    let accel = accel::decide(
        vm.guest_arch().into(),
        vm.accel.into(),
        host.accel_override.as_deref(),
        &host.probe,
    )
    .map_err(|e| EngineError::vm(&vm.name, e))?;
    let firmware = firmware_for(vm, host)?;

    let mut hash = Sha256::new();
    hash.update(serde_json::to_vec(vm).expect("the model serialises"));
    hash.update(seed.instance_id.as_bytes());
    hash.update(base.as_os_str().as_encoded_bytes());
    hash.update(accel.accel.as_str());
    if let Some(firmware) = &firmware {
        hash.update(firmware.as_os_str().as_encoded_bytes());
    }
    let config_hash = base16ct::lower::encode_string(&hash.finalize()[..16]);

    Ok(PreparedVm {
        name: vm.name.clone(),
        paths,
        base,
        base_format,
        disk_size,
        base_size,
        rebuild_disk,
        mounts: plan,
        seed,
        host_key,
        accel,
        firmware,
        mac,
        links,
        config_hash,
    })
}

/// The size of the raw image at `path`, once it is known to hold a disk: a partition table
/// or a file system. Anything else (a text file, an HTML error page saved as an image) would
/// give a VM that never boots, with nothing said.
fn check_raw_disk(vm: &Vm, path: &Path) -> Result<u64, EngineError> {
    use std::io::Read as _;
    let file = fs::File::open(path).map_err(|e| StateError::io(path, e))?;
    let len = file.metadata().map_err(|e| StateError::io(path, e))?.len();
    let mut head = Vec::with_capacity(signature::HEAD_LEN);
    file.take(signature::HEAD_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|e| StateError::io(path, e))?;
    if signature::raw_content(&head).is_none() {
        let cached = match vm.image {
            ImageSource::Path(_) => "",
            ImageSource::Url(_) => " (downloaded; `qemu-compose image rm` removes it)",
        };
        return Err(EngineError::vm(
            &vm.name,
            format!(
                "image {}{cached} is not a disk image: {len} bytes, neither qcow2 nor raw with a partition table or a file system",
                path.display()
            ),
        ));
    }
    Ok(len)
}

/// The qcow2 incompatible feature bit for an external data file (`incompatible_features`
/// bit 2): the image's data lives in another host file, named in a header extension.
const EXTERNAL_DATA_FILE: u64 = 1 << 2;

/// The header of the qcow2 image at `path`, without following or validating anything else.
fn qcow2_header(path: &Path) -> Result<Header, Qcow2Error> {
    use std::io::Read as _;
    let mut start = Vec::with_capacity(Header::SIZE);
    fs::File::open(path)
        .and_then(|f| f.take(Header::SIZE as u64).read_to_end(&mut start))
        .map_err(|source| Qcow2Error::Io {
            what: format!("reading {}", path.display()),
            source,
        })?;
    Header::decode(&start)
}

/// Refuses a local qcow2 base image that names another host file: a backing file or an
/// external data file. QEMU is given the base alone, so such an image would show the guest an
/// incomplete disk, and following its names would let the header choose host files.
fn check_local_base(vm: &str, base: &Path) -> Result<(), EngineError> {
    let flatten = |what: String| {
        EngineError::vm(
            vm,
            format!(
                "image {} {what}; qemu-compose gives QEMU only the image itself, so flatten it first \
                 (`qemu-img convert -O qcow2 {} flat.qcow2`) and point `image:` at the result",
                base.display(),
                base.display()
            ),
        )
    };
    let header = qcow2_header(base).map_err(|e| EngineError::vm(vm, e))?;
    if header.incompatible_features & EXTERNAL_DATA_FILE != 0 {
        return Err(flatten(
            "keeps its data in an external data file".to_string(),
        ));
    }
    let file = fs::File::open(base).map_err(|e| StateError::io(base, e))?;
    let image = Qcow2Image::from_source(file)
        .map_err(|e| EngineError::vm_step(vm, format!("image {}", base.display()), e))?;
    if let Some(name) = image.backing_file() {
        return Err(flatten(format!("has a backing file of its own ({name:?})")));
    }
    Ok(())
}

/// Checks, just before QEMU starts, the headers of the qcow2 images it will be given: none may
/// declare an external data file (whose host path the header names and QEMU would open), and
/// the instance disk must still name the base image QEMU is given below it (a different one
/// would show the guest a corrupt disk). The header is never used to choose a file.
pub fn check_images_before_start(prepared: &PreparedVm) -> Result<(), EngineError> {
    let vm = &prepared.name;
    let disk = &prepared.paths.disk;
    let mut images: Vec<(String, &Path)> = vec![("instance disk".to_string(), disk)];
    for drive in &prepared.mounts.drives {
        if drive.format == DriveFormat::Qcow2 {
            images.push((format!("volume image (drive {})", drive.id), &drive.path));
        }
    }
    if matches!(prepared.base_format, ImageFormat::Qcow2 { .. }) {
        images.push(("base image".to_string(), &prepared.base));
    }
    for (what, path) in images {
        // Ours are real files in the state folder; a link there (planted through a share of
        // the project folder) would make QEMU write the guest's disk into its target. The
        // base is the user's own file and may be a link.
        if what != "base image" {
            crate::state::layout::refuse_symlink(path)?;
        }
        let header = qcow2_header(path)
            .map_err(|e| EngineError::vm_step(vm, format!("{what} {}", path.display()), e))?;
        if header.incompatible_features & EXTERNAL_DATA_FILE != 0 {
            return Err(EngineError::vm(
                vm,
                format!(
                    "{what} {} declares an external data file (qcow2 incompatible feature bit 2), \
                     a host file named in its header; qemu-compose never writes such images and \
                     refuses to give it to QEMU (was it changed through a share?)",
                    path.display()
                ),
            ));
        }
    }
    let file = fs::File::open(disk).map_err(|e| StateError::io(disk, e))?;
    let overlay = Qcow2Image::from_source(file)
        .map_err(|e| EngineError::vm_step(vm, format!("instance disk {}", disk.display()), e))?;
    let made_on = crate::image::overlay_base(disk);
    if made_on != Some(canonical(&prepared.base)) {
        return Err(EngineError::vm(
            vm,
            format!(
                "instance disk {} was made over base image {}, but the VM's base image is now {}; \
                 QEMU is given the base explicitly and a different one would corrupt the disk. \
                 Restore the original image, or `qemu-compose destroy {vm}` to recreate the disk \
                 (its data is lost)",
                disk.display(),
                overlay
                    .backing_file()
                    .map_or_else(|| "(none)".to_string(), |n| format!("{n:?}")),
                prepared.base.display()
            ),
        ));
    }
    Ok(())
}

/// The name an instance disk's header gives its base `base`: relative to the disk's folder
/// (`.qemu-compose/vms/<vm>/`) when the base is a local image inside the project folder, so
/// that a project moved or copied whole (`mv`, `cp -a`) finds its own image; the absolute
/// path otherwise (a cached download, a file elsewhere). QEMU never reads this name (it is
/// given the base explicitly); qemu-compose and `qemu-img` resolve it.
fn backing_name(state: &StateDir, base: &Path) -> String {
    let base = canonical(base);
    let project = state.root().parent().map(canonical);
    let inside = project
        .filter(|_| !crate::image::is_cached_image(&base))
        .and_then(|p| base.strip_prefix(p).ok().map(Path::to_path_buf));
    match inside {
        Some(inside) => Path::new("../../..")
            .join(inside)
            .to_string_lossy()
            .into_owned(),
        None => base.to_string_lossy().into_owned(),
    }
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// The NIC address of `vm`: stable per project and VM, so its DHCP lease survives restarts.
pub fn mac_for(project: &Project, vm: &Vm) -> MacAddress {
    MacAddress::derived_from(&format!("{}/{}", project.name, vm.name))
}

/// What [`materialise`] did to the instance disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskChange {
    /// Made now, on the base.
    Created,
    /// Made again on a new base; what the guest wrote to its root disk is gone.
    Rebuilt,
    /// Grown to the larger size the compose file asks for.
    Grown {
        /// The size before.
        from: u64,
    },
    /// Larger than the compose file asks for: disks do not shrink.
    KeptLarger {
        /// Its size.
        size: u64,
    },
    /// As it was.
    Unchanged,
}

/// Writes the instance folder: the disk if missing (or made again, or grown), the file
/// shares, the seed. QEMU must not be running for this instance.
pub fn materialise(state: &StateDir, vm: &PreparedVm) -> Result<DiskChange, EngineError> {
    let paths = &vm.paths;
    state.check_inside(&paths.dir)?;
    state.check_inside(&paths.private_dir)?;
    atomic::create_private_dir(&paths.dir, 0o700)?;
    atomic::create_private_dir(&paths.private_dir, 0o700)?;
    paths.ensure_socket_dir()?;

    if vm.rebuild_disk {
        match fs::remove_file(&paths.disk) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StateError::io(&paths.disk, e).into()),
        }
    }
    crate::state::layout::refuse_symlink(&paths.disk)?;
    let change = if paths.disk.exists() {
        resize_disk(vm)?
    } else if vm.rebuild_disk {
        DiskChange::Rebuilt
    } else {
        DiskChange::Created
    };
    if !paths.disk.exists() {
        let dir = &paths.dir;
        let tmp = tempfile::Builder::new()
            .prefix(".disk-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .map_err(|e| StateError::io(dir, e))?;
        let backing = Backing {
            path: backing_name(state, &vm.base),
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

    if vm.firmware.is_some() && !paths.efi_vars.exists() {
        make_efi_vars(&paths.efi_vars)?;
    }

    vm.host_key.save(paths, &ssh::host_alias(&vm.name))?;
    let image = fat::build_fat_image(fat::CIDATA_LABEL, &vm.seed.files())
        .map_err(|e| EngineError::vm(&vm.name, e))?;
    atomic::write_atomic(&paths.seed, &image, 0o600)?;
    Ok(change)
}

/// The UEFI variable store: a sparse file of zeros at the pflash size, which EDK2 formats
/// on its first boot. Kept across restarts (boot entries live there); removed with the
/// instance.
fn make_efi_vars(path: &Path) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        // A name the sweep of stale temporaries knows (`atomic::is_temporary_name`).
        .prefix(".tmp-efi-vars-")
        .tempfile_in(dir)
        .map_err(|e| StateError::io(dir, e))?;
    tmp.as_file()
        .set_len(arch::PFLASH_SIZE)
        .map_err(|e| StateError::io(path, e))?;
    tmp.persist_noclobber(path)
        .map_err(|e| StateError::io(path, e.error))?;
    atomic::sync_dir(dir)
}

/// Grows the existing instance disk to the size asked for, when that is larger; a smaller
/// size leaves it as it is (a shrunk disk would cut off the guest's file system).
fn resize_disk(vm: &PreparedVm) -> Result<DiskChange, EngineError> {
    let disk = &vm.paths.disk;
    let file = fs::File::options()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(disk)
        .map_err(|e| StateError::io(disk, e))?;
    let size = qcow2_header(disk)
        .map_err(|e| EngineError::vm(&vm.name, e))?
        .size;
    if vm.disk_size > size {
        qcow2::grow(&file, vm.disk_size).map_err(|e| {
            EngineError::vm_step(
                &vm.name,
                format!("cannot grow the disk {}", disk.display()),
                e,
            )
        })?;
        Ok(DiskChange::Grown { from: size })
    } else if vm.disk_size < size {
        Ok(DiskChange::KeptLarger { size })
    } else {
        Ok(DiskChange::Unchanged)
    }
}

/// Puts the file `source` names (a symbolic link is followed) at `link`: a hard link, so host
/// edits in place reach the guest, or a copy when it cannot be linked (another file system
/// than the private folder, another user's file under `protected_hardlinks`, ...); the mount
/// plan shares such a file
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

/// What the QEMU launch facts need of an instance besides the compose VM and the SSH port;
/// `inspect` builds it for a VM that is not running, `up` from a [`PreparedVm`].
#[derive(Debug, Clone, Copy)]
pub struct LaunchFacts<'a> {
    /// The instance's files.
    pub paths: &'a InstancePaths,
    /// Its drives and shares.
    pub mounts: &'a MountPlan,
    /// The accelerator.
    pub accel: Accel,
    /// The UEFI code image, if the VM boots with one.
    pub firmware: Option<&'a Path>,
    /// The NIC's address.
    pub mac: MacAddress,
    /// The NICs on project networks.
    pub links: &'a [Link],
    /// The base image below the instance disk, given to QEMU explicitly.
    pub base: &'a Path,
    /// The base's format.
    pub base_format: ImageFormat,
}

impl PreparedVm {
    /// The facts [`launch_spec_from`] needs.
    pub fn launch_facts(&self) -> LaunchFacts<'_> {
        LaunchFacts {
            paths: &self.paths,
            mounts: &self.mounts,
            accel: self.accel.accel,
            firmware: self.firmware.as_deref(),
            mac: self.mac,
            links: &self.links,
            base: &self.base,
            base_format: self.base_format,
        }
    }
}

/// The QEMU launch facts of a prepared VM with its SSH port.
pub fn launch_spec(project: &Project, vm: &Vm, prepared: &PreparedVm, ssh_port: u16) -> LaunchSpec {
    launch_spec_from(project, vm, &prepared.launch_facts(), ssh_port)
}

/// The QEMU launch facts of `vm` with its SSH port.
pub fn launch_spec_from(
    project: &Project,
    vm: &Vm,
    facts: &LaunchFacts,
    ssh_port: u16,
) -> LaunchSpec {
    let paths = facts.paths;
    let mut drives = vec![DriveSpec {
        id: "disk0".to_string(),
        path: paths.disk.clone(),
        format: DriveFormat::Qcow2,
        serial: "disk0".to_string(),
        read_only: false,
        // The base QEMU reads below the overlay: ours, never the one its header names.
        backing: Some(BaseImage {
            path: facts.base.to_path_buf(),
            format: match facts.base_format {
                ImageFormat::Qcow2 { .. } => DriveFormat::Qcow2,
                ImageFormat::Raw => DriveFormat::Raw,
            },
        }),
    }];
    drives.extend(facts.mounts.drives.iter().cloned());
    drives.push(DriveSpec {
        id: "seed".to_string(),
        path: paths.seed.clone(),
        format: DriveFormat::Raw,
        serial: "cidata".to_string(),
        read_only: true,
        backing: None,
    });
    let ports = vm
        .ports
        .iter()
        .map(|p| PortForward {
            protocol: p.protocol.into(),
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
        arch: vm.guest_arch().into(),
        accel: facts.accel,
        cpus: vm.cpu,
        memory_mib: vm.memory_mib,
        kernel: vm.kernel.as_ref().map(|kernel| KernelBoot {
            kernel: kernel.clone(),
            initrd: vm.initrd.clone(),
            cmdline: vm.cmdline.clone(),
        }),
        firmware: facts.firmware.map(|code| Firmware {
            code: code.to_path_buf(),
            vars: paths.efi_vars.clone(),
        }),
        drives,
        shares: facts.mounts.shares.clone(),
        net: NetSpec {
            mac: facts.mac,
            ssh_port,
            ports,
            links: facts.links.iter().map(|l| l.nic.clone()).collect(),
        },
        qmp_socket: paths.qmp_socket.clone(),
        serial_socket: paths.serial_socket.clone(),
        serial_log: paths.serial_log.clone(),
        pidfile: paths.pidfile.clone(),
    }
}
