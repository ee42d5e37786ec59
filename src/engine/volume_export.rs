//! `volume export` and `cp`: a volume's files, or a stopped VM's own root filesystem, copied
//! out without booting into a host folder or a tar archive, read with our own qcow2, partition
//! table and ext4 readers.
//!
//! Writing into a host folder never follows a symbolic link: every file is created relative
//! to an open descriptor of its folder (`openat`, `mkdirat`, `symlinkat`) with `O_EXCL` and
//! `O_NOFOLLOW`, names are single components (the reader refuses `/` and NUL), and an existing
//! name is an error, so links stored in the volume, or already in the destination, cannot
//! send a write outside it. Symbolic links are written as they are stored.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{AtFlags, Mode, OFlags, Timestamps};

use crate::compose::Project;
use crate::disk::BlockSource;
use crate::disk::ext4::Ext4Error;
use crate::disk::ext4::read::{FileType, Filesystem, RecoveryFacts, Stat};
use crate::disk::ext4::replay::Recovered;
use crate::disk::ext4::tree::Time;
use crate::disk::partition::{self, Found, Partition};
use crate::disk::qcow2::Qcow2Image;
use crate::state::{StateDir, VolumeRegistry};

use super::volume_io::ImportSummary;
use super::volumes::{self, VolumeError};
use super::{EngineError, HostEnv, Reporter};

/// Bytes copied at a time.
const CHUNK: usize = 1 << 20;

/// Why files cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the volume failed.
    #[error("{0}")]
    Read(#[from] Ext4Error),
    /// Writing a host file failed.
    #[error("writing {}: {source}", .path.display())]
    Write {
        /// The host path.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The destination already has this name.
    #[error("{} already exists; export writes new files only, and nothing was overwritten", .0.display())]
    Exists(PathBuf),
    /// A folder reached a second time: it contains itself or has two names, which the kernel
    /// never makes.
    #[error("the folder {0:?} is reached a second time (a corrupt volume)")]
    Loop(String),
}

/// Where the files go.
pub enum ExportTarget<'a> {
    /// A host folder, made if missing: what is exported goes inside it.
    Dir(&'a Path),
    /// A host path, by `docker cp`'s rules: inside it when it is a folder, else the copy takes
    /// its name (a file copied as `./name`, a folder's contents into a new `./name`).
    Path(&'a Path),
    /// A tar archive written here.
    Tar(&'a mut dyn Write),
}

impl std::fmt::Debug for ExportTarget<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(dir) => f.debug_tuple("Dir").field(dir).finish(),
            Self::Path(path) => f.debug_tuple("Path").field(path).finish(),
            Self::Tar(_) => f.write_str("Tar(..)"),
        }
    }
}

/// What the files are read from.
#[derive(Debug, Clone, Copy)]
pub enum ExportSource<'a> {
    /// A named volume.
    Volume(&'a str),
    /// The root filesystem of a stopped VM's own disk, read through the base image below it.
    RootDisk {
        /// The VM.
        vm: &'a str,
        /// Where its instance lives and the image cache its base is in.
        host: &'a HostEnv,
    },
}

/// `volume export` and `cp`: the files of `source` below `from` (an absolute path in it; `/`
/// when `None`) into `target`, under the project lock. Refuses an image a QEMU has open.
pub fn export(
    project: &Project,
    source: ExportSource<'_>,
    from: Option<&str>,
    target: ExportTarget<'_>,
    reporter: &dyn Reporter,
) -> Result<ImportSummary, EngineError> {
    let state = StateDir::new(&project.dir);
    let _guard = super::lifecycle::lock(&state, reporter)?;
    let name = match source {
        ExportSource::Volume(name) => name,
        ExportSource::RootDisk { vm, host } => {
            let (fs, found, recovery) = open_root_disk(project, host, &state, vm)?;
            let fail = |error: ExportError| {
                EngineError::vm_step(vm, format!("root filesystem ({})", found.what), error)
            };
            let what = format!("VM {vm}");
            warn_replayed(
                reporter,
                &format!("the root filesystem of {what}"),
                recovery,
            );
            return copy_out(&fs, from, target, reporter, &what).map_err(fail);
        }
    };
    let registry = VolumeRegistry::load(&state.volumes_json())?;
    let image = volumes::image_path(&state, name)?;
    if !registry.volumes.contains_key(name) && !image.exists() {
        return Err(VolumeError::Unknown(name.to_string()).into());
    }
    volumes::check_not_in_use(&state, name)?;
    let fail = |error: ExportError| VolumeError::Export {
        name: name.to_string(),
        error: Box::new(error),
    };
    let bad = |reason: String| VolumeError::BadImage {
        name: name.to_string(),
        path: image.clone(),
        reason,
    };
    let file = File::open(&image).map_err(|e| bad(e.to_string()))?;
    let qcow2 = Qcow2Image::from_source(file).map_err(|e| bad(e.to_string()))?;
    if qcow2.backing_file().is_some() {
        return Err(bad("it has a backing file".to_string()).into());
    }
    let (fs, recovery) = Filesystem::open_recovering(qcow2).map_err(|e| fail(e.into()))?;
    let what = format!("volume {name}");
    warn_replayed(reporter, &what, recovery);
    Ok(copy_out(&fs, from, target, reporter, &what).map_err(fail)?)
}

/// A VM's root filesystem, read through its journal replayed in memory when it needs that.
type RootFs = Filesystem<Recovered<Partition<Qcow2Image>>>;

/// The ext4 root filesystem of stopped VM `vm`: its instance disk over the base `up` gives
/// QEMU (a header naming any other file is refused, as before a start), and the Linux
/// partition on it.
fn open_root_disk(
    project: &Project,
    host: &HostEnv,
    state: &StateDir,
    vm: &str,
) -> Result<(RootFs, Found, Option<RecoveryFacts>), EngineError> {
    let decl = super::lifecycle::select(project, &[vm.to_string()], false)?[0];
    let disk = super::workspace::instance_paths(state, host, vm).disk;
    if !disk.exists() {
        return Err(EngineError::Refused(format!(
            "VM {vm} has no disk yet: `qemu-compose up {vm}` makes it"
        )));
    }
    crate::state::layout::refuse_symlink(&disk)?;
    if volumes::image_in_use(&disk)? {
        return Err(EngineError::Refused(format!(
            "VM {vm}: its disk {} is open in a QEMU process; stop the VM first",
            disk.display()
        )));
    }
    let base = super::instance::base_for_reading(decl, host, &disk)?;
    let image = Qcow2Image::open_over(&disk, &base)
        .map_err(|e| EngineError::vm_step(vm, format!("instance disk {}", disk.display()), e))?;
    let found = partition::find_linux_filesystem(&image)
        .map_err(|e| EngineError::vm_step(vm, format!("disk {}", disk.display()), e))?;
    let (fs, recovery) = Filesystem::open_recovering(Partition::new(image, &found))
        .map_err(|e| EngineError::vm_step(vm, format!("root filesystem ({})", found.what), e))?;
    Ok((fs, found, recovery))
}

/// Says, once, that `what` was read through a journal replayed in memory.
fn warn_replayed(reporter: &dyn Reporter, what: &str, recovery: Option<RecoveryFacts>) {
    if let Some(facts) = recovery {
        reporter.warn(&format!(
            "{what} was not cleanly unmounted (a VM crashed?): its journal ({} committed \
             transactions, {} blocks) was replayed in memory to read it; the disk itself is unchanged",
            facts.transactions, facts.blocks
        ));
    }
}

/// Copies the files below `from` of an open filesystem (`what` names it in warnings).
fn copy_out<D: BlockSource>(
    fs: &Filesystem<D>,
    from: Option<&str>,
    target: ExportTarget<'_>,
    reporter: &dyn Reporter,
    what: &str,
) -> Result<ImportSummary, ExportError> {
    let path = from.unwrap_or("/");
    let start = fs.lookup(path.as_bytes())?;
    let mut copier = Copier {
        fs,
        summary: ImportSummary::default(),
        links: HashMap::new(),
        folders: HashSet::new(),
        skipped: Vec::new(),
    };
    let base = Path::new(path)
        .file_name()
        .map_or_else(|| PathBuf::from("."), PathBuf::from);
    match target {
        ExportTarget::Dir(dir) => copier.write_dir(&start, dir, &base),
        ExportTarget::Path(dest) => {
            let (parent, name) = if dest.is_dir() {
                (dest, base.as_path())
            } else {
                match (dest.parent(), dest.file_name()) {
                    (Some(parent), Some(name)) => (parent, Path::new(name)),
                    _ => {
                        return Err(ExportError::Write {
                            path: dest.to_path_buf(),
                            source: io::ErrorKind::InvalidInput.into(),
                        });
                    }
                }
            };
            if start.kind == FileType::Dir {
                copier.write_dir(&start, &parent.join(name), name)
            } else {
                copier.write_dir(&start, parent, name)
            }
        }
        ExportTarget::Tar(out) => copier.write_tar(&start, out, &base),
    }?;
    for skipped in &copier.skipped {
        reporter.warn(&format!(
            "{what}: {skipped} is a socket, FIFO or device node: not exported"
        ));
    }
    Ok(copier.summary)
}

/// Where a path of a stopped VM lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmPlace {
    /// On a named volume the VM mounts: the volume and the path inside it.
    Volume(String, String),
    /// On the VM's own root filesystem.
    RootDisk(String),
}

/// Where path `path` of stopped VM `vm` lives: the named volume the VM mounts there (the
/// mount with the longest target that contains it) and the path inside that volume, else the
/// VM's own disk. A bind-mounted path is the host's own folder: it is refused, with where it is.
pub fn vm_path(
    project: &Project,
    host: &HostEnv,
    vm: &str,
    path: &str,
) -> Result<VmPlace, EngineError> {
    let decl = super::lifecycle::select(project, &[vm.to_string()], false)?[0];
    if super::running_vms(project, host).contains(vm) {
        return Err(EngineError::Refused(format!(
            "VM {vm} is running; cp reads and writes the disks of a stopped VM only: stop it first"
        )));
    }
    if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
        return Err(EngineError::Refused(format!(
            "{vm}:{path}: the path in the VM must be absolute, without `..`"
        )));
    }
    let inside = |target: &str| {
        let target = target.trim_end_matches('/');
        match path.strip_prefix(target) {
            Some("") => Some("/".to_string()),
            Some(rest) if rest.starts_with('/') => Some(rest.to_string()),
            _ => None,
        }
    };
    let mount = decl
        .volumes
        .iter()
        .filter(|m| {
            !matches!(
                m.kind,
                crate::compose::MountKind::Bind {
                    automount: false,
                    ..
                }
            )
        })
        .filter_map(|m| inside(&m.target).map(|rest| (m.target.len(), m, rest)))
        .max_by_key(|(len, _, _)| *len);
    match mount {
        Some((_, m, rest)) => match &m.kind {
            crate::compose::MountKind::Named { volume } => {
                Ok(VmPlace::Volume(volume.clone(), rest))
            }
            crate::compose::MountKind::Bind { source, .. } => Err(EngineError::Refused(format!(
                "{vm}:{path} is on a bind mount of {}: that host folder is the VM's, use it directly",
                source.display()
            ))),
        },
        None => Ok(VmPlace::RootDisk(path.to_string())),
    }
}

/// Walks the volume and writes what it finds.
struct Copier<'f, D> {
    fs: &'f Filesystem<D>,
    summary: ImportSummary,
    /// Inodes with several names: the first name written (for hard links).
    links: HashMap<u32, Written>,
    /// Folders written so far: a folder is written once, so a hostile volume whose folders
    /// share inodes cannot make the export loop or grow exponentially.
    folders: HashSet<u32>,
    /// Paths of special files left out.
    skipped: Vec<String>,
}

/// Whether `stat`'s other names are written as links to its first: files and symbolic links.
/// Special files are left out, so a later name could not link to them; folders never share.
fn has_hard_links(stat: &Stat) -> bool {
    matches!(stat.kind, FileType::File | FileType::Symlink) && stat.links > 1
}

/// Where the first name of a multiply-linked inode went.
enum Written {
    /// In a host folder: that folder's descriptor and the name.
    Host(Rc<OwnedFd>, Vec<u8>),
    /// In a tar archive: the member's path.
    Tar(PathBuf),
}

fn timespec(t: Time) -> rustix::fs::Timespec {
    rustix::fs::Timespec {
        tv_sec: t.secs,
        tv_nsec: i64::from(t.nanos),
    }
}

fn times(stat: &Stat) -> Timestamps {
    Timestamps {
        last_access: timespec(stat.atime),
        last_modification: timespec(stat.mtime),
    }
}

/// Owner and group to set, when the process may give files away (root) and the ids are
/// real ones (not -1).
fn owner(stat: &Stat) -> Option<(rustix::fs::Uid, rustix::fs::Gid)> {
    (rustix::process::geteuid().is_root() && stat.uid != u32::MAX && stat.gid != u32::MAX).then(
        || {
            (
                rustix::fs::Uid::from_raw(stat.uid),
                rustix::fs::Gid::from_raw(stat.gid),
            )
        },
    )
}

impl<D: BlockSource> Copier<'_, D> {
    /// The entries of a folder, `lost+found` of the volume's root left out when it is empty
    /// (the filesystem's own, not the user's).
    fn entries(&self, dir: &Stat) -> Result<Vec<(Vec<u8>, Stat)>, ExportError> {
        let mut out = Vec::new();
        for e in self.fs.read_dir(dir)? {
            let stat = self.fs.stat(e.ino)?;
            if dir.ino == 2
                && e.name == b"lost+found"
                && stat.kind == FileType::Dir
                && self.fs.read_dir(&stat)?.is_empty()
            {
                continue;
            }
            out.push((e.name, stat));
        }
        Ok(out)
    }

    fn count(&mut self, stat: &Stat) {
        match stat.kind {
            FileType::Dir => self.summary.dirs += 1,
            FileType::File => {
                self.summary.files += 1;
                self.summary.data_bytes += stat.size;
            }
            FileType::Symlink => self.summary.symlinks += 1,
            FileType::Special => {}
        }
    }

    /// Copies the file's bytes (holes as holes) into `out`, which is `stat.size` long.
    fn copy_data(&self, stat: &Stat, out: &File, path: &Path) -> Result<(), ExportError> {
        let write = |e| ExportError::Write {
            path: path.to_path_buf(),
            source: e,
        };
        out.set_len(stat.size).map_err(write)?;
        let mut buf = vec![0u8; CHUNK];
        for m in self.fs.data(stat)? {
            let Some(offset) = m.offset else { continue };
            let mut done = 0;
            while done < m.len {
                let n = (m.len - done).min(CHUNK as u64) as usize;
                self.fs.read_mapped(offset + done, &mut buf[..n])?;
                out.write_all_at(&buf[..n], m.file_offset + done)
                    .map_err(write)?;
                done += n as u64;
            }
        }
        Ok(())
    }

    /// Into host folder `dest` (made if missing; the root's metadata applied only then).
    fn write_dir(&mut self, start: &Stat, dest: &Path, base: &Path) -> Result<(), ExportError> {
        let io_err = |path: &Path| {
            let path = path.to_path_buf();
            move |source: io::Error| ExportError::Write { path, source }
        };
        if start.kind != FileType::Dir {
            fs::create_dir_all(dest).map_err(io_err(dest))?;
            let dir = open_dir(rustix::fs::CWD, dest).map_err(io_err(dest))?;
            return self.write_entry(&Rc::new(dir), dest, base.as_os_str().as_bytes(), start);
        }
        let made = !dest.exists();
        fs::create_dir_all(dest).map_err(io_err(dest))?;
        let dir = Rc::new(open_dir(rustix::fs::CWD, dest).map_err(io_err(dest))?);
        self.folders.insert(start.ino);
        self.count(start);
        for (name, stat) in self.entries(start)? {
            self.write_entry(&dir, dest, &name, &stat)?;
        }
        if made {
            set_meta(&dir, start).map_err(io_err(dest))?;
        }
        Ok(())
    }

    /// Writes `stat` as `name` in the open folder `dir` (host path `dir_path`).
    fn write_entry(
        &mut self,
        dir: &Rc<OwnedFd>,
        dir_path: &Path,
        name: &[u8],
        stat: &Stat,
    ) -> Result<(), ExportError> {
        let path = dir_path.join(std::ffi::OsStr::from_bytes(name));
        let fail = |source: io::Error| {
            if source.kind() == io::ErrorKind::AlreadyExists {
                ExportError::Exists(path.clone())
            } else {
                ExportError::Write {
                    path: path.clone(),
                    source,
                }
            }
        };
        if has_hard_links(stat) {
            if let Some(Written::Host(first_dir, first_name)) = self.links.get(&stat.ino) {
                rustix::fs::linkat(
                    &**first_dir,
                    first_name.as_slice(),
                    &**dir,
                    name,
                    AtFlags::empty(),
                )
                .map_err(|e| fail(e.into()))?;
                return Ok(());
            }
            self.links
                .insert(stat.ino, Written::Host(Rc::clone(dir), name.to_vec()));
        }
        self.count(stat);
        match stat.kind {
            FileType::File => {
                let fd = rustix::fs::openat(
                    &**dir,
                    name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| fail(e.into()))?;
                let file = File::from(fd);
                self.copy_data(stat, &file, &path)?;
                set_meta(&file, stat).map_err(fail)?;
            }
            FileType::Symlink => {
                let target = self.fs.read_link(stat)?;
                rustix::fs::symlinkat(target.as_slice(), &**dir, name)
                    .map_err(|e| fail(e.into()))?;
                if let Some((uid, gid)) = owner(stat) {
                    rustix::fs::chownat(
                        &**dir,
                        name,
                        Some(uid),
                        Some(gid),
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| fail(e.into()))?;
                }
                rustix::fs::utimensat(&**dir, name, &times(stat), AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| fail(e.into()))?;
            }
            FileType::Dir => {
                if !self.folders.insert(stat.ino) {
                    return Err(ExportError::Loop(path.display().to_string()));
                }
                rustix::fs::mkdirat(&**dir, name, Mode::from_raw_mode(0o700))
                    .map_err(|e| fail(e.into()))?;
                let child = Rc::new(open_dir(&**dir, name).map_err(fail)?);
                for (child_name, child_stat) in self.entries(stat)? {
                    self.write_entry(&child, &path, &child_name, &child_stat)?;
                }
                set_meta(&child, stat).map_err(fail)?;
            }
            FileType::Special => self.skipped.push(path.display().to_string()),
        }
        Ok(())
    }

    /// As a tar archive (GNU format: long names, whole-second times), members named below
    /// `base` (the exported folder's name, `.` for the root).
    fn write_tar(
        &mut self,
        start: &Stat,
        out: &mut dyn Write,
        base: &Path,
    ) -> Result<(), ExportError> {
        let mut builder = tar::Builder::new(out);
        let tar_err = |source| ExportError::Write {
            path: PathBuf::from("the tar archive"),
            source,
        };
        self.tar_entry(&mut builder, base, start)?;
        builder.finish().map_err(tar_err)?;
        Ok(())
    }

    fn tar_entry(
        &mut self,
        builder: &mut tar::Builder<&mut dyn Write>,
        path: &Path,
        stat: &Stat,
    ) -> Result<(), ExportError> {
        let tar_err = |source| ExportError::Write {
            path: PathBuf::from("the tar archive"),
            source,
        };
        let mut header = tar::Header::new_gnu();
        header.set_mode(u32::from(stat.perm));
        header.set_uid(u64::from(stat.uid));
        header.set_gid(u64::from(stat.gid));
        header.set_mtime(u64::try_from(stat.mtime.secs).unwrap_or(0));
        header.set_size(0);
        if has_hard_links(stat) {
            if let Some(Written::Tar(first)) = self.links.get(&stat.ino) {
                header.set_entry_type(tar::EntryType::Link);
                return builder
                    .append_link(&mut header, path, first)
                    .map_err(tar_err);
            }
            self.links
                .insert(stat.ino, Written::Tar(path.to_path_buf()));
        }
        self.count(stat);
        match stat.kind {
            FileType::File => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(stat.size);
                let reader = DataReader {
                    fs: self.fs,
                    mappings: self.fs.data(stat)?,
                    size: stat.size,
                    at: 0,
                };
                builder
                    .append_data(&mut header, path, reader)
                    .map_err(tar_err)?;
            }
            FileType::Symlink => {
                header.set_entry_type(tar::EntryType::Symlink);
                let target = self.fs.read_link(stat)?;
                builder
                    .append_link(&mut header, path, std::ffi::OsStr::from_bytes(&target))
                    .map_err(tar_err)?;
            }
            FileType::Dir => {
                if !self.folders.insert(stat.ino) {
                    return Err(ExportError::Loop(path.display().to_string()));
                }
                header.set_entry_type(tar::EntryType::Directory);
                builder
                    .append_data(&mut header, path, io::empty())
                    .map_err(tar_err)?;
                for (name, child) in self.entries(stat)? {
                    let child_path = path.join(std::ffi::OsStr::from_bytes(&name));
                    self.tar_entry(builder, &child_path, &child)?;
                }
            }
            FileType::Special => self.skipped.push(path.display().to_string()),
        }
        Ok(())
    }
}

/// Opens folder `name` of `dir` without following a symbolic link.
fn open_dir(dir: impl std::os::fd::AsFd, name: impl rustix::path::Arg) -> io::Result<OwnedFd> {
    Ok(rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Owner (as root), then mode (a change of owner clears set-user-ID), then times.
fn set_meta(fd: impl std::os::fd::AsFd, stat: &Stat) -> io::Result<()> {
    if let Some((uid, gid)) = owner(stat) {
        rustix::fs::fchown(&fd, Some(uid), Some(gid))?;
    }
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(u32::from(stat.perm)))?;
    rustix::fs::futimens(&fd, &times(stat))?;
    Ok(())
}

/// A file's bytes, holes read as zeros, for the tar writer.
struct DataReader<'f, D> {
    fs: &'f Filesystem<D>,
    mappings: Vec<crate::disk::ext4::read::Mapping>,
    size: u64,
    at: u64,
}

impl<D: BlockSource> Read for DataReader<'_, D> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.at >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.size - self.at) as usize;
        let buf = &mut buf[..n];
        buf.fill(0);
        let (from, to) = (self.at, self.at + n as u64);
        let first = self
            .mappings
            .partition_point(|m| m.file_offset + m.len <= from);
        for m in self.mappings[first..]
            .iter()
            .take_while(|m| m.file_offset < to)
        {
            let (lo, hi) = (m.file_offset.max(from), (m.file_offset + m.len).min(to));
            if let (Some(offset), true) = (m.offset, lo < hi) {
                let dst = &mut buf[(lo - from) as usize..(hi - from) as usize];
                self.fs
                    .read_mapped(offset + (lo - m.file_offset), dst)
                    .map_err(io::Error::other)?;
            }
        }
        self.at = to;
        Ok(n)
    }
}
