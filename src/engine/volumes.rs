//! Named volumes: a qcow2 image holding one ext4 filesystem, made in-process.
//!
//! A volume is created in a temporary file in its own folder, formatted, synced, renamed into
//! place as `volume.qcow2`, and only then recorded in `volumes.json` (by the caller, under the
//! project lock). A crash at any point leaves either nothing, a stray temporary file (removed by
//! the next creation), or a complete image not yet recorded, which [`inspect_image`] verifies
//! before [`ensure_volumes`] adopts it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::compose::{self, MountKind, Project, format_size};
use crate::disk::ext4::{self, FormatOptions, SuperblockInfo};
use crate::disk::qcow2::{self, Qcow2Image};
use crate::disk::sink::SparseBuffer;
use crate::progress::Progress;
use crate::state::{ProjectLock, StateDir, StateError, VolumeRecord, VolumeRegistry, atomic};

use super::{EngineError, HostEnv, Reporter};

/// Prefix of the temporary files volumes are built in.
const TEMP_PREFIX: &str = ".volume-";

/// Why a volume cannot be created or used.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The name is not a valid volume name.
    #[error(
        "invalid volume name {0:?}: use lowercase letters, digits, '_' and '-', starting with a letter or digit, at most 63 characters"
    )]
    BadName(String),
    /// The size is outside what the ext4 formatter supports.
    #[error("volume {name}: size {size} is outside the supported range {min} to {max}")]
    BadSize {
        /// The volume.
        name: String,
        /// The requested size.
        size: String,
        /// The smallest size.
        min: String,
        /// The largest size.
        max: String,
    },
    /// The size is not a whole number of 512-byte sectors.
    #[error("volume {name}: size {size} bytes is not a multiple of 512 bytes")]
    Unaligned {
        /// The volume.
        name: String,
        /// The requested size in bytes.
        size: u64,
    },
    /// A QEMU process has the volume's image open.
    #[error(
        "volume {name} is attached to a running VM (a QEMU process holds a lock on {}); stop that VM first. Nothing was removed",
        .path.display()
    )]
    InUse {
        /// The volume.
        name: String,
        /// Its image.
        path: PathBuf,
    },
    /// The volume is already there.
    #[error("volume {0} already exists")]
    Exists(String),
    /// No volume of that name is recorded or on disk.
    #[error("no volume named {0:?}")]
    Unknown(String),
    /// The compose file declares the volume, but nothing made it yet.
    #[error(
        "volume {0} is declared in the compose file but not created yet; `qemu-compose up` or `qemu-compose volume create {0}` creates it"
    )]
    NotCreated(String),
    /// A running VM of the compose file mounts the volume.
    #[error("volume {name} is in use by the running VM {vm}; stop it first")]
    RunningVm {
        /// The volume.
        name: String,
        /// The VM.
        vm: String,
    },
    /// VMs of the compose file mount the volume, and removing it was not forced.
    #[error(
        "volume {name} is mounted by VM(s) {} of the compose file; the next `up` would create it empty. Use --force to remove it anyway",
        .vms.join(", ")
    )]
    Mounted {
        /// The volume.
        name: String,
        /// The VMs.
        vms: Vec<String>,
    },
    /// A volume named in volumes.json has no image any more.
    #[error(
        "volume {name} is recorded in volumes.json but its image {} is missing; remove it with `qemu-compose volume rm {name}` to start afresh",
        .path.display()
    )]
    ImageMissing {
        /// The volume.
        name: String,
        /// Where its image should be.
        path: PathBuf,
    },
    /// An image is on disk but is not a usable volume.
    #[error("volume {name}: {} is not a usable volume image: {reason}", .path.display())]
    BadImage {
        /// The volume.
        name: String,
        /// The image.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A state file problem.
    #[error(transparent)]
    State(#[from] StateError),
    /// Formatting failed.
    #[error("volume {name}: {error}")]
    Format {
        /// The volume.
        name: String,
        /// The formatter's error (in the message, not repeated as a source).
        error: ext4::Ext4Error,
    },
    /// Filling the volume with files failed.
    #[error("volume {name}: {error}")]
    Import {
        /// The volume.
        name: String,
        /// What went wrong (in the message, not repeated as a source).
        error: Box<super::volume_io::ImportError>,
    },
    /// Copying files out of the volume failed.
    #[error("volume {name}: {error}")]
    Export {
        /// The volume.
        name: String,
        /// What went wrong; also the source, so that a reader of standard output that went
        /// away is recognised (the edge does not print a cause twice).
        #[source]
        error: Box<super::volume_export::ExportError>,
    },
    /// Writing the image failed.
    #[error("volume {name}: {error}")]
    Qcow2 {
        /// The volume.
        name: String,
        /// The writer's error (in the message, not repeated as a source).
        error: qcow2::Qcow2Error,
    },
}

impl VolumeError {
    /// 2 for a name or size the command line got wrong, 1 for a request that failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::BadName(_) | Self::BadSize { .. } => 2,
            _ => 1,
        }
    }
}

/// What an existing image holds, read with our own qcow2 and ext4 readers.
#[derive(Debug, Clone)]
pub struct ImageFacts {
    /// The qcow2 virtual size.
    pub virtual_size: u64,
    /// Bytes the image file occupies on disk.
    pub disk_bytes: u64,
    /// The ext4 superblock.
    pub superblock: SuperblockInfo,
}

/// Volume names follow the compose file's rule for names, length included.
fn valid_name(name: &str) -> bool {
    compose::is_valid_name(name) && name.len() <= compose::MAX_NAME_LEN
}

/// The image of volume `name`, asked first by every command that opens a volume by a name
/// from the command line: `name` must be one a volume can have (so `../x` cannot name another
/// file), and the path must go through no symbolic link.
pub(super) fn image_path(state: &StateDir, name: &str) -> Result<PathBuf, VolumeError> {
    if !valid_name(name) {
        return Err(VolumeError::BadName(name.to_string()));
    }
    let image = state.volume_image(name);
    state.check_inside(&image)?;
    Ok(image)
}

/// The ext4 label of a volume: its name, cut to the 16 bytes ext4 allows (names are ASCII).
pub fn label_for(name: &str) -> String {
    name.chars().take(ext4::MAX_LABEL).collect()
}

/// Writes a new volume's image into a file: the filesystem [`FormatOptions`] say, and
/// whatever goes in it. The file is synced before this returns.
pub type WriteImage<'a> = dyn FnMut(&fs::File, &FormatOptions) -> Result<(), VolumeError> + 'a;

/// Creates the image of volume `name`, an empty filesystem, and returns its record; the
/// caller registers it. The writing of a large image is reported to `progress`.
pub fn create(
    state: &StateDir,
    name: &str,
    size: u64,
    progress: &mut dyn Progress,
) -> Result<VolumeRecord, VolumeError> {
    create_with(state, name, size, &mut |file, opts| {
        let mut contents = SparseBuffer::new(size);
        ext4::format(&mut contents, opts).map_err(|error| VolumeError::Format {
            name: name.to_string(),
            error,
        })?;
        let mut report = WriteProgress::new(name, progress);
        let written = qcow2::write_data_image_with(
            file,
            size,
            &contents,
            &[],
            &mut |_, _, _| Ok(()),
            &mut |done, total| report.advance(done, total),
        );
        report.finish(written.is_ok());
        written.map_err(|error| VolumeError::Qcow2 {
            name: name.to_string(),
            error,
        })?;
        Ok(())
    })
}

/// Shows the writing of a volume's image once it is large enough to take a while: the
/// metadata of a 64T volume is about 870 MiB, seconds of writing; a 10G volume's is 2 MiB and
/// stays silent.
struct WriteProgress<'a> {
    name: &'a str,
    progress: &'a mut dyn Progress,
    shown: bool,
}

impl<'a> WriteProgress<'a> {
    /// Bytes to write from which progress is shown.
    const SHOWN_FROM: u64 = 128 << 20;

    fn new(name: &'a str, progress: &'a mut dyn Progress) -> Self {
        WriteProgress {
            name,
            progress,
            shown: false,
        }
    }

    fn advance(&mut self, done: u64, total: u64) {
        if !self.shown && total >= Self::SHOWN_FROM {
            self.shown = true;
            self.progress
                .start(&format!("writing volume {}", self.name), Some(total));
        }
        if self.shown {
            self.progress.advance(done);
        }
    }

    fn finish(self, ok: bool) {
        if self.shown {
            self.progress.finish(ok);
        }
    }
}

/// Creates the image of volume `name` with `write` and returns its record; the caller
/// registers it.
pub fn create_with(
    state: &StateDir,
    name: &str,
    size: u64,
    write: &mut WriteImage<'_>,
) -> Result<VolumeRecord, VolumeError> {
    if !valid_name(name) {
        return Err(VolumeError::BadName(name.to_string()));
    }
    if !(ext4::MIN_SIZE..=ext4::MAX_SIZE).contains(&size) {
        return Err(VolumeError::BadSize {
            name: name.to_string(),
            size: format_size(size),
            min: format_size(ext4::MIN_SIZE),
            max: format_size(ext4::MAX_SIZE),
        });
    }
    if !size.is_multiple_of(512) {
        return Err(VolumeError::Unaligned {
            name: name.to_string(),
            size,
        });
    }
    let dir = state.volume_dir(name);
    let image = state.volume_image(name);
    state.ensure()?;
    state.check_inside(&image)?;
    let made_dir = !dir.exists();
    atomic::create_private_dir(&dir, 0o700)?;
    let made = create_in(name, size, &dir, &image, write);
    if made.is_err() && made_dir {
        // A failed creation leaves nothing behind; the folder is ours and its temporary file
        // is gone by now.
        let _ = fs::remove_dir_all(&dir);
    }
    made
}

/// The part of [`create_with`] that runs in the volume's folder.
fn create_in(
    name: &str,
    size: u64,
    dir: &Path,
    image: &Path,
    write: &mut WriteImage<'_>,
) -> Result<VolumeRecord, VolumeError> {
    if image.exists() {
        return Err(VolumeError::Exists(name.to_string()));
    }
    remove_stale_temporaries(dir)?;

    let label = label_for(name);
    let opts = FormatOptions::new(label.clone());
    write_temporary(dir, image, &opts, write)?;
    Ok(VolumeRecord {
        name: name.to_string(),
        size: format_size(size),
        disk_path: image.to_path_buf(),
        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        uuid: uuid::Uuid::from_bytes(opts.uuid).hyphenated().to_string(),
        label,
    })
}

/// Writes an image into a temporary file of `dir` (removed on a failure) and renames it to
/// `image`, which must not exist yet.
fn write_temporary(
    dir: &Path,
    image: &Path,
    opts: &FormatOptions,
    write: &mut WriteImage<'_>,
) -> Result<(), VolumeError> {
    let tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(|e| StateError::io(dir, e))?;
    write(tmp.as_file(), opts)?;
    tmp.persist_noclobber(image)
        .map_err(|e| StateError::io(image, e.error))?;
    atomic::sync_dir(dir)?;
    Ok(())
}

/// Temporary files of a creation that was interrupted; only ever ours, under the lock.
fn remove_stale_temporaries(dir: &Path) -> Result<(), StateError> {
    let entries = fs::read_dir(dir).map_err(|e| StateError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StateError::io(dir, e))?;
        if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            fs::remove_file(entry.path()).map_err(|e| StateError::io(entry.path(), e))?;
        }
    }
    Ok(())
}

/// Reads a volume image with our own readers: the qcow2 header and the ext4 superblock.
pub fn inspect_image(name: &str, path: &Path) -> Result<ImageFacts, VolumeError> {
    let bad = |reason: String| VolumeError::BadImage {
        name: name.to_string(),
        path: path.to_path_buf(),
        reason,
    };
    // The header only: a volume's image is ours and has no backing file; one that names a
    // host file (a tampered image) is refused without opening that file.
    let file = fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let image = Qcow2Image::from_source(file).map_err(|e| bad(e.to_string()))?;
    if image.backing_file().is_some() {
        return Err(bad("it has a backing file".to_string()));
    }
    let mut sb = vec![0u8; 1024];
    image
        .read_at(1024, &mut sb)
        .map_err(|e| bad(e.to_string()))?;
    let superblock = ext4::read_superblock(&sb).map_err(|e| bad(e.to_string()))?;
    let disk_bytes = fs::metadata(path)
        .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
        .map_err(|e| bad(e.to_string()))?;
    Ok(ImageFacts {
        virtual_size: image.virtual_size(),
        disk_bytes,
        superblock,
    })
}

/// Makes sure every volume the project declares exists: creates the missing ones, adopts a
/// complete image whose registration a crash cut short, warns when the declared size differs
/// from the image's. Each volume is registered as soon as it is complete. Call under the
/// project lock.
pub fn ensure_volumes(
    state: &StateDir,
    project: &Project,
    registry: &mut VolumeRegistry,
    reporter: &dyn Reporter,
    progress: &mut dyn Progress,
) -> Result<(), VolumeError> {
    for decl in &project.volumes {
        let image = state.volume_image(&decl.name);
        state.check_inside(&image)?;
        let on_disk = match fs::symlink_metadata(&image) {
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => false,
            Err(e) => return Err(StateError::io(&image, e).into()),
        };
        match (registry.volumes.get(&decl.name), on_disk) {
            (Some(_), false) => {
                return Err(VolumeError::ImageMissing {
                    name: decl.name.clone(),
                    path: image,
                });
            }
            (Some(_), true) => {
                let facts = inspect_image(&decl.name, &image)?;
                if facts.virtual_size != decl.size_bytes {
                    reporter.warn(&format!(
                        "volume {} is {} but the compose file now declares {}; keeping the existing volume and its data",
                        decl.name,
                        format_size(facts.virtual_size),
                        format_size(decl.size_bytes)
                    ));
                }
            }
            (None, true) => {
                let facts = inspect_image(&decl.name, &image)?;
                reporter.warn(&format!(
                    "volume {}: {} exists but was not recorded in volumes.json (an interrupted creation?); it is a valid volume, recording it",
                    decl.name,
                    image.display()
                ));
                registry.volumes.insert(
                    decl.name.clone(),
                    VolumeRecord {
                        name: decl.name.clone(),
                        size: format_size(facts.virtual_size),
                        disk_path: image,
                        created: humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                            .to_string(),
                        uuid: facts.superblock.uuid_text(),
                        label: facts.superblock.label,
                    },
                );
                registry.save(&state.volumes_json())?;
            }
            (None, false) => {
                reporter.info(&format!(
                    "creating volume {} ({})",
                    decl.name,
                    format_size(decl.size_bytes)
                ));
                let record = match &decl.init_from {
                    Some(source) => {
                        reporter.info(&format!(
                            "filling volume {} from {}",
                            decl.name,
                            source.display()
                        ));
                        super::volume_io::create_filled(state, &decl.name, decl.size_bytes, source)?
                    }
                    None => create(state, &decl.name, decl.size_bytes, progress)?,
                };
                registry.volumes.insert(decl.name.clone(), record);
                registry.save(&state.volumes_json())?;
            }
        }
    }
    Ok(())
}

/// What a lock attempt on a volume image found.
#[derive(Debug)]
enum ImageLock {
    /// There is no image.
    Missing,
    /// Nobody else holds a lock; ours lasts as long as this file stays open.
    Free(fs::File),
    /// Another process, a QEMU, holds a lock on it.
    Held,
}

/// Tries a whole-file POSIX write lock (`F_SETLK`) on a volume image. QEMU holds OFD
/// byte-range locks on every image it has open (read-only ones too), and those conflict with
/// it, so this asks the image itself whether any QEMU uses it, whichever project or compose
/// file started that QEMU. The file is opened read-write without truncating; nothing is
/// written.
fn lock_image(path: &Path) -> Result<ImageLock, StateError> {
    let file = match fs::OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(ImageLock::Missing),
        Err(e) => return Err(StateError::io(path, e)),
    };
    match rustix::fs::fcntl_lock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(ImageLock::Free(file)),
        Err(e) if e == rustix::io::Errno::AGAIN || e == rustix::io::Errno::ACCESS => {
            Ok(ImageLock::Held)
        }
        Err(e) => Err(StateError::io(path, e.into())),
    }
}

/// Whether a QEMU process has the image at `path` open (see [`lock_image`]); the probe lock
/// is released at once.
pub fn image_in_use(path: &Path) -> Result<bool, StateError> {
    Ok(matches!(lock_image(path)?, ImageLock::Held))
}

/// Refuses when a QEMU process holds the image of volume `name`.
pub fn check_not_in_use(state: &StateDir, name: &str) -> Result<(), VolumeError> {
    let image = state.volume_image(name);
    state.check_inside(&image)?;
    if image_in_use(&image)? {
        return Err(VolumeError::InUse {
            name: name.to_string(),
            path: image,
        });
    }
    Ok(())
}

/// Like [`check_not_in_use`], but keeps the lock: the image, opened with our lock on it, which
/// no QEMU can open until it is dropped. Refuses a volume without an image.
pub(super) fn lock_unused(state: &StateDir, name: &str) -> Result<fs::File, VolumeError> {
    let image = image_path(state, name)?;
    match lock_image(&image)? {
        ImageLock::Free(file) => Ok(file),
        ImageLock::Held => Err(VolumeError::InUse {
            name: name.to_string(),
            path: image,
        }),
        ImageLock::Missing => Err(VolumeError::Unknown(name.to_string())),
    }
}

/// Removes volume `name`: its folder first, then its record, so an interruption leaves at
/// worst a record without an image, which a second `remove` clears. Refuses, removing
/// nothing, when a QEMU process holds the image; the lock taken to find out is held until
/// the image is gone, so no QEMU can open it in between. Call under the project lock.
pub fn remove(
    state: &StateDir,
    registry: &mut VolumeRegistry,
    name: &str,
) -> Result<(), VolumeError> {
    let image = image_path(state, name)?;
    let dir = state.volume_dir(name);
    let _held_until_removed = match lock_image(&image)? {
        ImageLock::Held => {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                path: image,
            });
        }
        ImageLock::Free(file) => Some(file),
        ImageLock::Missing => None,
    };
    match fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StateError::io(&dir, e).into()),
    }
    if registry.volumes.remove(name).is_some() {
        registry.save(&state.volumes_json())?;
    }
    Ok(())
}

/// The VMs of the compose file that mount each volume.
fn users(project: &Project) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for vm in &project.vms {
        for mount in &vm.volumes {
            if let MountKind::Named { volume } = &mount.kind {
                out.entry(volume).or_default().push(&vm.name);
            }
        }
    }
    out
}

/// One line of `volume ls`.
#[derive(Debug, Serialize)]
pub struct VolumeRow {
    /// The volume.
    pub name: String,
    /// `ok`, `not-created`, `image-missing` or `not-registered`.
    pub status: &'static str,
    /// The virtual size (from the image, else from the record).
    pub size: Option<String>,
    /// The bytes the image takes on disk.
    pub disk_bytes: Option<u64>,
    /// The VMs of the compose file that mount it.
    pub in_use_by: Vec<String>,
    /// Those of them that run.
    pub running_in: Vec<String>,
    /// When it was created, RFC 3339.
    pub created: Option<String>,
}

/// Every volume of the project: recorded, declared in the compose file, or on disk.
pub fn list(project: &Project, host: &HostEnv) -> Result<Vec<VolumeRow>, EngineError> {
    let state = StateDir::new(&project.dir);
    let registry = VolumeRegistry::load(&state.volumes_json())?;
    let running = super::running_vms(project, host);
    let users = users(project);
    let mut names: BTreeSet<String> = registry.volumes.keys().cloned().collect();
    names.extend(project.volumes.iter().map(|v| v.name.clone()));
    if let Ok(entries) = fs::read_dir(state.volumes_dir()) {
        names.extend(
            entries
                .flatten()
                .filter(|e| e.path().join("volume.qcow2").exists())
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| compose::is_valid_name(n)),
        );
    }
    let mut rows = Vec::new();
    for name in names {
        let image = state.volume_image(&name);
        let record = registry.volumes.get(&name);
        let facts = image
            .exists()
            .then(|| inspect_image(&name, &image).ok())
            .flatten();
        let status = match (record, image.exists()) {
            (Some(_), true) => "ok",
            (Some(_), false) => "image-missing",
            (None, true) => "not-registered",
            (None, false) => "not-created",
        };
        let vm_users: Vec<String> = users
            .get(name.as_str())
            .map(|v| v.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default();
        rows.push(VolumeRow {
            status,
            size: facts
                .as_ref()
                .map(|f| format_size(f.virtual_size))
                .or_else(|| record.map(|r| r.size.clone())),
            disk_bytes: facts.as_ref().map(|f| f.disk_bytes),
            running_in: vm_users
                .iter()
                .filter(|vm| running.contains(*vm))
                .cloned()
                .collect(),
            in_use_by: vm_users,
            created: record.map(|r| r.created.clone()),
            name,
        });
    }
    Ok(rows)
}

/// `size`, else the size the compose file declares for volume `name`, else the default.
pub(super) fn size_or_declared(project: &Project, name: &str, size: Option<u64>) -> u64 {
    size.unwrap_or_else(|| {
        project
            .volumes
            .iter()
            .find(|v| v.name == name)
            .map_or(compose::DEFAULT_SIZE, |d| d.size_bytes)
    })
}

/// `volume create`: makes volume `name` of `size` bytes (the compose file's size, else the
/// default, when `None`), filled from the compose file's `init_from` if it has one, and
/// records it, under the project lock.
pub fn create_recorded(
    project: &Project,
    name: &str,
    size: Option<u64>,
    reporter: &dyn Reporter,
    progress: &mut dyn Progress,
) -> Result<(), EngineError> {
    let state = StateDir::new(&project.dir);
    let decl = project.volumes.iter().find(|v| v.name == name);
    let size = size_or_declared(project, name, size);
    let _guard = super::lifecycle::lock(&state, reporter)?;
    let mut registry = VolumeRegistry::load(&state.volumes_json())?;
    if registry.volumes.contains_key(name) {
        return Err(VolumeError::Exists(name.to_string()).into());
    }
    let record = match decl.and_then(|d| d.init_from.as_ref()) {
        Some(source) => super::volume_io::create_filled(&state, name, size, source)?,
        None => create(&state, name, size, progress)?,
    };
    registry.volumes.insert(name.to_string(), record);
    registry.save(&state.volumes_json())?;
    Ok(())
}

/// What `volume inspect` shows.
#[derive(Debug, Serialize)]
pub struct VolumeInspection {
    /// The record in `volumes.json`, when there is one.
    pub record: Option<VolumeRecord>,
    /// The image.
    pub image: String,
    /// Its virtual size.
    pub virtual_size: u64,
    /// The bytes it takes on disk.
    pub disk_bytes: u64,
    /// The filesystem inside.
    pub filesystem: SuperblockInfo,
    /// The VMs of the compose file that mount it.
    pub in_use_by: Vec<String>,
}

/// `volume inspect`: the record and the image of volume `name`, read with our own readers.
pub fn inspect(project: &Project, name: &str) -> Result<VolumeInspection, EngineError> {
    let state = StateDir::new(&project.dir);
    let registry = VolumeRegistry::load(&state.volumes_json())?;
    let image = image_path(&state, name)?;
    let record = registry.volumes.get(name);
    if record.is_none() && !image.exists() {
        if project.volumes.iter().any(|v| v.name == name) {
            return Err(VolumeError::NotCreated(name.to_string()).into());
        }
        return Err(VolumeError::Unknown(name.to_string()).into());
    }
    let facts = inspect_image(name, &image)?;
    let sb = facts.superblock;
    let users = users(project);
    Ok(VolumeInspection {
        record: record.cloned(),
        image: image.display().to_string(),
        virtual_size: facts.virtual_size,
        disk_bytes: facts.disk_bytes,
        filesystem: sb,
        in_use_by: users
            .get(name)
            .map(|v| v.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default(),
    })
}

/// `volume rm`: volumes checked for removal, removed one at a time by [`Removal::remove`]
/// under the project lock this holds.
#[derive(Debug)]
pub struct Removal {
    state: StateDir,
    registry: VolumeRegistry,
    _guard: ProjectLock,
}

impl Removal {
    /// Takes the project lock and checks every name before anything is removed: it exists,
    /// no QEMU has it open, and (unless `force`) no VM of the compose file mounts it.
    pub fn begin(
        project: &Project,
        host: &HostEnv,
        names: &[String],
        force: bool,
        reporter: &dyn Reporter,
    ) -> Result<Self, EngineError> {
        let state = StateDir::new(&project.dir);
        let users = users(project);
        let guard = super::lifecycle::lock(&state, reporter)?;
        let running = super::running_vms(project, host);
        let registry = VolumeRegistry::load(&state.volumes_json())?;
        for name in names {
            let vm_users = users.get(name.as_str()).cloned().unwrap_or_default();
            if let Some(vm) = vm_users.iter().find(|vm| running.contains(**vm)) {
                return Err(VolumeError::RunningVm {
                    name: name.clone(),
                    vm: vm.to_string(),
                }
                .into());
            }
            if !registry.volumes.contains_key(name) && !state.volume_image(name).exists() {
                return Err(VolumeError::Unknown(name.clone()).into());
            }
            // Any QEMU, whether or not the compose file still names its VM.
            check_not_in_use(&state, name)?;
            if !vm_users.is_empty() && !force {
                return Err(VolumeError::Mounted {
                    name: name.clone(),
                    vms: vm_users.iter().map(|s| s.to_string()).collect(),
                }
                .into());
            }
        }
        Ok(Self {
            state,
            registry,
            _guard: guard,
        })
    }

    /// Removes volume `name` (see [`remove`]).
    pub fn remove(&mut self, name: &str) -> Result<(), EngineError> {
        Ok(remove(&self.state, &mut self.registry, name)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The compose model cannot import the formatter, so it keeps its own copy of the limits.
    #[test]
    fn compose_volume_limits_are_the_formatters() {
        assert_eq!(compose::MIN_VOLUME_SIZE, ext4::MIN_SIZE);
        assert_eq!(compose::MAX_VOLUME_SIZE, ext4::MAX_SIZE);
    }

    #[test]
    fn labels_are_cut_to_sixteen_bytes() {
        assert_eq!(label_for("data"), "data");
        assert_eq!(label_for("a-rather-long-volume-name"), "a-rather-long-vo");
    }
}
