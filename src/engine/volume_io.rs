//! `volume import` and `init_from`: files from a host folder or a tar archive laid down in a
//! new volume at format time, in-process (an existing volume is rewritten the same way with
//! its own files and the new ones: see [`super::volume_update`]).
//!
//! The source is read into a [`Tree`] first (names, types, metadata, where each file holds
//! data), the filesystem is planned from it (refusing, before anything is written, a tree that
//! does not fit), and then the image is written: metadata from memory, file data streamed from
//! the source into the clusters the plan allocated. The volume is made as
//! [`volumes::create_with`] makes every volume (a temporary file, synced, renamed) and recorded
//! only once complete.
//!
//! Host files are read without following symbolic links below the source folder (folders
//! through their descriptors, files checked to be the ones scanned); symbolic links are
//! stored as they are. Sockets, FIFOs and device nodes are refused, naming the path.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use rustix::fs::{Mode, OFlags};

use crate::compose::Project;
use crate::disk::SparseBuffer;
use crate::disk::ext4::tree::{Kind, Meta, Node, NodeId, Time, Tree, TreeError};
use crate::disk::ext4::{self, DataRun, Ext4Error, FormatOptions};
use crate::disk::qcow2;
use crate::state::{StateDir, VolumeRecord, VolumeRegistry};

use super::volumes::{self, VolumeError};
use super::{EngineError, Reporter};

/// Bytes of a filesystem block: a block of a tar member that is all zeros stays a hole.
const BLOCK: usize = 4096;

/// Why files cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading the source failed.
    #[error("reading {}: {source}", .path.display())]
    Read {
        /// What was read.
        path: PathBuf,
        /// Why it failed.
        source: io::Error,
    },
    /// A file type ext4 could hold but an import does not carry.
    #[error(
        "{} is a {kind}: only files, folders and symbolic links are imported (sockets, FIFOs and device nodes are not); nothing was imported",
        .path.display()
    )]
    Unsupported {
        /// The file (or tar entry).
        path: PathBuf,
        /// Its type.
        kind: &'static str,
    },
    /// A name the filesystem cannot hold.
    #[error("{}: {error}", .path.display())]
    Name {
        /// The file (or tar entry).
        path: PathBuf,
        /// What is wrong with its name.
        error: TreeError,
    },
    /// A tar entry whose path is absolute or climbs out with `..`.
    #[error(
        "tar entry {0:?} lies outside the archive's folder (an absolute path or `..`); nothing was imported"
    )]
    Escapes(String),
    /// A tar hard link to something that is not an earlier file of the archive.
    #[error(
        "tar entry {entry:?} is a hard link to {target:?}, which is not an earlier file of the archive"
    )]
    BadHardLink {
        /// The entry.
        entry: String,
        /// Its target.
        target: String,
    },
    /// A tar entry with a value out of range.
    #[error("tar entry {entry:?}: {what}")]
    BadEntry {
        /// The entry.
        entry: String,
        /// What is wrong.
        what: String,
    },
    /// The tar archive cannot be read.
    #[error("reading the tar archive: {0} (only uncompressed tar archives are read)")]
    Tar(io::Error),
    /// `--into` is not an absolute, normalised path.
    #[error("--into {0:?} must be an absolute path without `.` or `..` components")]
    BadInto(String),
    /// The filesystem cannot hold the files (space, inodes, a reserved name).
    #[error("{0}")]
    Fit(Ext4Error),
    /// A file or folder changed while it was imported: shorter than when first read, or
    /// replaced by another (a symbolic link swapped in, say).
    #[error("{} changed while it was imported (shorter than when first read, or replaced); nothing was imported", .0.display())]
    Changed(PathBuf),
    /// A folder and a file (or symbolic link) of the same path, one in the volume and the
    /// other in the source.
    #[error("{path} is a {existing} in the volume and a {new} in the source; nothing was changed")]
    TypeConflict {
        /// The path in the volume.
        path: String,
        /// What the volume has there.
        existing: &'static str,
        /// What the source has there.
        new: &'static str,
    },
    /// `--size` given for an existing volume of another size.
    #[error(
        "the volume exists and is {size} bytes; --size {requested} applies to a new volume only (nothing was changed)"
    )]
    SizeOfExisting {
        /// The size asked for.
        requested: u64,
        /// The volume's size.
        size: u64,
    },
}

/// Where the files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportSource {
    /// A host folder.
    Dir(PathBuf),
    /// An uncompressed tar archive.
    Tar(PathBuf),
    /// An uncompressed tar archive on standard input.
    Stdin,
}

impl ImportSource {
    /// `-` is standard input, a folder is a folder, anything else a tar archive.
    pub fn from_arg(arg: &Path) -> Self {
        if arg == Path::new("-") {
            Self::Stdin
        } else if arg.is_dir() {
            Self::Dir(arg.to_path_buf())
        } else {
            Self::Tar(arg.to_path_buf())
        }
    }
}

/// What an import laid down.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportSummary {
    /// Regular files (each hard-linked file once).
    pub files: u64,
    /// Folders, the target folder included.
    pub dirs: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Bytes of file data stored (holes excluded).
    pub data_bytes: u64,
}

/// Where a file's contents are read from when the image is written.
#[derive(Debug)]
pub(super) enum Content {
    /// A host file, opened again (without following symbolic links) when written, and
    /// refused unless it is still the file the scan saw (device and inode).
    Host { path: PathBuf, identity: (u64, u64) },
    /// A tar member's bytes.
    Memory(Vec<u8>),
}

/// A source read into a tree, with the contents of its files.
#[derive(Debug)]
pub(super) struct Loaded {
    pub(super) tree: Tree,
    /// By node: the contents of regular files.
    pub(super) contents: HashMap<NodeId, Content>,
    pub(super) summary: ImportSummary,
    /// Bytes of tar members still allowed in memory: the volume's size, so an archive (a
    /// GNU sparse member declaring a terabyte, say) cannot make the import allocate more
    /// than the volume could hold.
    pub(super) tar_budget: u64,
}

/// `volume import`: the files of `source` under `into` (an absolute path in the volume; `/`
/// when `None`), under the project lock. A new volume `name` is made and recorded (its size
/// `size`, else the compose file's, else the default); an existing one gets the files merged
/// into its tree (see [`super::volume_update`]).
pub fn import(
    project: &Project,
    name: &str,
    source: &ImportSource,
    into: Option<&str>,
    size: Option<u64>,
    reporter: &dyn Reporter,
) -> Result<ImportSummary, EngineError> {
    let state = StateDir::new(&project.dir);
    let requested = size;
    let size = volumes::size_or_declared(project, name, size);
    let _guard = super::lifecycle::lock(&state, reporter)?;
    let mut registry = VolumeRegistry::load(&state.volumes_json())?;
    if registry.volumes.contains_key(name) || state.volume_image(name).exists() {
        let summary = super::volume_update::merge_into(&state, name, |_, size| {
            match requested {
                Some(requested) if requested != size => {
                    Err(ImportError::SizeOfExisting { requested, size })
                }
                _ => load(source, into, size),
            }
            .map_err(|e| import_error(name, e))
        })?;
        return Ok(summary);
    }
    let loaded = load(source, into, size).map_err(|e| import_error(name, e))?;
    let record = write_new(&state, name, size, &loaded)?;
    registry.volumes.insert(name.to_string(), record);
    registry.save(&state.volumes_json())?;
    Ok(loaded.summary)
}

/// A new volume filled from the host folder or tar archive `source` (the compose file's
/// `init_from`, an absolute path); the
/// caller holds the project lock and registers the record.
pub(super) fn create_filled(
    state: &StateDir,
    name: &str,
    size: u64,
    source: &Path,
) -> Result<VolumeRecord, VolumeError> {
    let source = ImportSource::from_arg(source);
    let loaded = load(&source, None, size).map_err(|e| import_error(name, e))?;
    write_new(state, name, size, &loaded)
}

pub(super) fn import_error(name: &str, error: ImportError) -> VolumeError {
    VolumeError::Import {
        name: name.to_string(),
        error: Box::new(error),
    }
}

/// Plans the filesystem and writes the new volume's image.
fn write_new(
    state: &StateDir,
    name: &str,
    size: u64,
    loaded: &Loaded,
) -> Result<VolumeRecord, VolumeError> {
    volumes::create_with(state, name, size, &mut |file, opts| {
        write_image(file, size, opts, loaded).map_err(|e| e.for_volume(name))
    })
}

pub(super) enum WriteError {
    Import(ImportError),
    Qcow2(qcow2::Qcow2Error),
}

impl WriteError {
    pub(super) fn for_volume(self, name: &str) -> VolumeError {
        match self {
            WriteError::Import(e) => import_error(name, e),
            WriteError::Qcow2(error) => VolumeError::Qcow2 {
                name: name.to_string(),
                error,
            },
        }
    }
}

/// The whole image: the plan's metadata from memory, then each file's data streamed from its
/// source into the clusters allocated for it (from `old`, the volume's former filesystem,
/// for files it held).
pub(super) fn write_image(
    file: &File,
    size: u64,
    opts: &FormatOptions,
    loaded: &Loaded,
) -> Result<(), WriteError> {
    let fit = |e| WriteError::Import(ImportError::Fit(e));
    let plan = ext4::plan(size, &loaded.tree, opts).map_err(fit)?;
    let mut metadata = SparseBuffer::new(size);
    plan.write_metadata(&mut metadata).map_err(fit)?;
    let runs: Vec<(u64, u64)> = plan.data().iter().map(|r| (r.offset, r.len)).collect();
    let mut reader = ContentReader::new(&loaded.contents);
    let written = qcow2::write_data_image_with(
        file,
        size,
        &metadata,
        &runs,
        &mut |i, at, buf| reader.read(plan.data()[i], at, buf),
        &mut |_, _| {},
    );
    match (written, reader.failure) {
        (_, Some(failure)) => Err(WriteError::Import(failure)),
        (Err(e), None) => Err(WriteError::Qcow2(e)),
        (Ok(_), None) => Ok(()),
    }
}

/// Reads file data for the writers, keeping the last host file open; the first failure is
/// kept whole (a writer only sees an I/O error).
pub(super) struct ContentReader<'a> {
    contents: &'a HashMap<NodeId, Content>,
    open: Option<(NodeId, File)>,
    failure: Option<ImportError>,
}

impl<'a> ContentReader<'a> {
    pub(super) fn new(contents: &'a HashMap<NodeId, Content>) -> Self {
        ContentReader {
            contents,
            open: None,
            failure: None,
        }
    }

    /// The failure a read returned as an I/O error, whole.
    pub(super) fn take_failure(&mut self) -> ImportError {
        self.failure
            .take()
            .expect("a failed read keeps its failure")
    }

    /// Fills `buf` with the bytes of `run`'s file from `at` bytes into the run.
    pub(super) fn read(&mut self, run: DataRun, at: u64, buf: &mut [u8]) -> io::Result<()> {
        let offset = run.file_offset + at;
        let result = match self.contents.get(&run.node) {
            Some(Content::Memory(bytes)) => {
                let from = offset as usize;
                buf.copy_from_slice(&bytes[from..from + buf.len()]);
                Ok(())
            }
            Some(Content::Host { path, identity }) => {
                self.read_host(run.node, path, *identity, offset, buf)
            }
            None => unreachable!("every file with data has contents"),
        };
        result.map_err(|e| {
            let message = e.to_string();
            self.failure.get_or_insert(e);
            io::Error::other(message)
        })
    }

    fn read_host(
        &mut self,
        node: NodeId,
        path: &Path,
        identity: (u64, u64),
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), ImportError> {
        if self.open.as_ref().is_none_or(|(n, _)| *n != node) {
            let file = open_nofollow(path).map_err(|e| read_error(path, e))?;
            let m = file.metadata().map_err(|e| read_error(path, e))?;
            if (m.dev(), m.ino()) != identity {
                return Err(ImportError::Changed(path.to_path_buf()));
            }
            self.open = Some((node, file));
        }
        let (_, file) = self.open.as_ref().expect("opened above");
        file.read_exact_at(buf, offset).map_err(|source| {
            if source.kind() == io::ErrorKind::UnexpectedEof {
                ImportError::Changed(path.to_path_buf())
            } else {
                ImportError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })
    }
}

fn read_error(path: &Path, source: io::Error) -> ImportError {
    ImportError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// Opens a host file for reading, refusing a symbolic link in its place.
fn open_nofollow(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags(OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Reads `source` into a tree for a volume of `size` bytes, its files under `into`.
pub(super) fn load(
    source: &ImportSource,
    into: Option<&str>,
    size: u64,
) -> Result<Loaded, ImportError> {
    let (mut loaded, base, folder) = start(into, size)?;
    match source {
        ImportSource::Dir(dir) => loaded.scan_dir(dir, base)?,
        ImportSource::Tar(path) => {
            let file = File::open(path).map_err(|source| ImportError::Read {
                path: path.clone(),
                source,
            })?;
            loaded.scan_tar(io::BufReader::new(file), base, folder)?
        }
        ImportSource::Stdin => loaded.scan_tar(io::stdin().lock(), base, folder)?,
    }
    Ok(loaded)
}

/// Reads the one host file, folder or symbolic link `path` (not followed) into a tree, as
/// `name` in folder `into` (`cp`'s source).
pub(super) fn load_entry(
    path: &Path,
    into: &str,
    name: &[u8],
    size: u64,
) -> Result<Loaded, ImportError> {
    let (mut loaded, base, _) = start(Some(into), size)?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let host_name = path
        .file_name()
        .ok_or_else(|| read_error(path, io::ErrorKind::InvalidInput.into()))?;
    let dir = rustix::fs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| read_error(parent, e.into()))?;
    let mut links = HashMap::new();
    loaded.scan_entry(path, &dir, host_name.as_bytes(), base, name, &mut links)?;
    Ok(loaded)
}

/// An empty tree holding the folders of `into` (made now, owned by root) and where the files
/// go, with the metadata of those folders.
fn start(into: Option<&str>, size: u64) -> Result<(Loaded, NodeId, Meta), ImportError> {
    let now = now();
    let folder = Meta {
        perm: 0o755,
        uid: 0,
        gid: 0,
        atime: now,
        mtime: now,
        ctime: now,
    };
    let mut loaded = Loaded {
        tree: Tree::new(folder),
        contents: HashMap::new(),
        summary: ImportSummary {
            dirs: 1,
            ..ImportSummary::default()
        },
        tar_budget: size,
    };
    let base = match into {
        None => Tree::ROOT,
        Some(path) => {
            let components = into_components(path)?;
            loaded.ensure_dirs(Tree::ROOT, &components, folder, Path::new(path))?
        }
    };
    Ok((loaded, base, folder))
}

fn now() -> Time {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    Time {
        secs: d.as_secs() as i64,
        nanos: d.subsec_nanos(),
    }
}

/// The components of `--into`: absolute, without `.`, `..` or empty components (a trailing
/// `/` is fine).
pub(super) fn into_components(path: &str) -> Result<Vec<&[u8]>, ImportError> {
    let bad = || ImportError::BadInto(path.to_string());
    let rest = path.strip_prefix('/').ok_or_else(bad)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&[u8]> = rest.split('/').map(str::as_bytes).collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || *p == b"." || *p == b"..")
    {
        return Err(bad());
    }
    Ok(parts)
}

/// The metadata of a host file as `lstat` gives it.
fn host_meta(m: &fs::Metadata) -> Meta {
    Meta {
        perm: (m.mode() & 0o7777) as u16,
        uid: m.uid(),
        gid: m.gid(),
        atime: Time {
            secs: m.atime(),
            nanos: m.atime_nsec() as u32,
        },
        mtime: Time {
            secs: m.mtime(),
            nanos: m.mtime_nsec() as u32,
        },
        ctime: Time {
            secs: m.ctime(),
            nanos: m.ctime_nsec() as u32,
        },
    }
}

/// The byte ranges of `file` that hold data, by `SEEK_DATA`/`SEEK_HOLE`; the whole file when
/// the host filesystem cannot tell.
fn host_data_ranges(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    use rustix::fs::SeekFrom;
    let mut out = Vec::new();
    let mut at = 0;
    while at < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(at)) {
            Ok(start) => start,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) if at == 0 => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = rustix::fs::seek(file, SeekFrom::Hole(start))?.min(size);
        out.push((start, end - start));
        at = end;
    }
    Ok(out)
}

/// The 4 KiB blocks of `data` that are not all zeros, as byte ranges.
fn nonzero_ranges(data: &[u8]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, block) in data.chunks(BLOCK).enumerate() {
        if block.iter().all(|&b| b == 0) {
            continue;
        }
        let at = (i * BLOCK) as u64;
        match out.last_mut() {
            Some((start, len)) if *start + *len == at => *len += block.len() as u64,
            _ => out.push((at, block.len() as u64)),
        }
    }
    out
}

impl Loaded {
    fn add(
        &mut self,
        parent: NodeId,
        name: &[u8],
        node: Node,
        path: &Path,
    ) -> Result<NodeId, ImportError> {
        match &node.kind {
            Kind::Dir(_) => self.summary.dirs += 1,
            Kind::File { data, .. } => {
                self.summary.files += 1;
                self.summary.data_bytes += data.iter().map(|(_, len)| len).sum::<u64>();
            }
            Kind::Symlink(_) => self.summary.symlinks += 1,
        }
        self.tree
            .add(parent, name, node)
            .map_err(|error| ImportError::Name {
                path: path.to_path_buf(),
                error,
            })
    }

    /// The folder `components` below `from`, made with `meta` where missing.
    fn ensure_dirs(
        &mut self,
        from: NodeId,
        components: &[&[u8]],
        meta: Meta,
        path: &Path,
    ) -> Result<NodeId, ImportError> {
        let mut at = from;
        for name in components {
            at = match self.tree.lookup(at, name) {
                Some(id) if matches!(self.tree.node(id).kind, Kind::Dir(_)) => id,
                _ => self.add(
                    at,
                    name,
                    Node {
                        meta,
                        kind: Kind::Dir(Default::default()),
                    },
                    path,
                )?,
            };
        }
        Ok(at)
    }

    /// A host folder: its own metadata goes to `base`, its contents below it.
    ///
    /// Each folder is opened (without following a link) from its parent's descriptor and
    /// read through that descriptor (`/proc/self/fd/N/…`), and must be the folder the scan
    /// saw, so a folder swapped for a symbolic link while the import runs (a guest writing
    /// through a share, say) cannot bring in files from elsewhere on the host.
    fn scan_dir(&mut self, root: &Path, base: NodeId) -> Result<(), ImportError> {
        let fd = rustix::fs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| read_error(root, e.into()))?;
        let meta = File::from(fd.try_clone().map_err(|e| read_error(root, e))?)
            .metadata()
            .map_err(|e| read_error(root, e))?;
        self.tree.node_mut(base).meta = host_meta(&meta);
        let mut links = HashMap::new();
        self.scan_folder(root, &fd, base, &mut links)?;
        self.drop_empty_lost_found(base);
        Ok(())
    }

    /// The entries of the open folder `dir` (shown as `path`) below `node`, folders first
    /// opened and checked, then scanned depth first (one descriptor per level).
    fn scan_folder(
        &mut self,
        path: &Path,
        dir: &OwnedFd,
        node: NodeId,
        links: &mut HashMap<(u64, u64), NodeId>,
    ) -> Result<(), ImportError> {
        let via = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        let mut names = fs::read_dir(&via)
            .map_err(|e| read_error(path, e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<Vec<_>, io::Error>>()
            .map_err(|e| read_error(path, e))?;
        names.sort();
        for name in names {
            let shown = path.join(&name);
            self.scan_entry(&shown, dir, name.as_bytes(), node, name.as_bytes(), links)?;
        }
        Ok(())
    }

    /// The entry `host_name` of the open folder `dir`, shown as `shown`, as `name` in the
    /// tree's folder `node` (a folder scanned whole).
    fn scan_entry(
        &mut self,
        shown: &Path,
        dir: &OwnedFd,
        host_name: &[u8],
        node: NodeId,
        name: &[u8],
        links: &mut HashMap<(u64, u64), NodeId>,
    ) -> Result<(), ImportError> {
        let shown = shown.to_path_buf();
        let at = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .join(std::ffi::OsStr::from_bytes(host_name));
        {
            let m = fs::symlink_metadata(&at).map_err(|e| read_error(&shown, e))?;
            let ft = m.file_type();
            let key = (m.dev(), m.ino());
            if !ft.is_dir()
                && m.nlink() > 1
                && let Some(&id) = links.get(&key)
            {
                self.tree
                    .link(node, name, id)
                    .map_err(|error| ImportError::Name {
                        path: shown.clone(),
                        error,
                    })?;
                return Ok(());
            }
            let kind = if ft.is_dir() {
                Kind::Dir(Default::default())
            } else if ft.is_file() {
                // Only a file with fewer blocks than its size can have holes.
                let data = if m.blocks() * 512 >= m.len() {
                    vec![(0, m.len())]
                } else {
                    let file = open_nofollow(&at).map_err(|e| read_error(&shown, e))?;
                    host_data_ranges(&file, m.len()).map_err(|e| read_error(&shown, e))?
                };
                Kind::File {
                    size: m.len(),
                    data,
                }
            } else if ft.is_symlink() {
                let target = fs::read_link(&at).map_err(|e| read_error(&shown, e))?;
                Kind::Symlink(target.as_os_str().as_bytes().to_vec())
            } else {
                return Err(ImportError::Unsupported {
                    path: shown,
                    kind: unsupported_kind(&ft),
                });
            };
            let id = self.add(
                node,
                name,
                Node {
                    meta: host_meta(&m),
                    kind,
                },
                &shown,
            )?;
            if ft.is_file() {
                self.contents.insert(
                    id,
                    Content::Host {
                        path: shown.clone(),
                        identity: key,
                    },
                );
            }
            if !ft.is_dir() && m.nlink() > 1 {
                links.insert(key, id);
            }
            if ft.is_dir() {
                let child = rustix::fs::openat(
                    dir,
                    host_name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| read_error(&shown, e.into()))?;
                let opened = rustix::fs::fstat(&child).map_err(|e| read_error(&shown, e.into()))?;
                if (opened.st_dev, opened.st_ino) != key {
                    return Err(ImportError::Changed(shown));
                }
                self.scan_folder(&shown, &child, id, links)?;
            }
        }
        Ok(())
    }

    /// An empty `lost+found` at the volume's root (as an exported volume has) is the
    /// filesystem's own: the new one has it already.
    fn drop_empty_lost_found(&mut self, base: NodeId) {
        if base != Tree::ROOT {
            return;
        }
        if let Some(id) = self.tree.lookup(Tree::ROOT, b"lost+found")
            && matches!(&self.tree.node(id).kind, Kind::Dir(e) if e.is_empty())
        {
            self.tree.unlink(Tree::ROOT, b"lost+found");
            self.summary.dirs -= 1;
        }
    }

    /// An uncompressed tar archive: members below `base`; folders the archive implies but
    /// does not list get `folder`.
    fn scan_tar(
        &mut self,
        reader: impl Read,
        base: NodeId,
        folder: Meta,
    ) -> Result<(), ImportError> {
        let mut archive = tar::Archive::new(reader);
        for entry in archive.entries().map_err(ImportError::Tar)? {
            let mut entry = entry.map_err(ImportError::Tar)?;
            let raw = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw).into_owned();
            let path = PathBuf::from(std::ffi::OsStr::from_bytes(&raw));
            let kind = entry.header().entry_type();
            if kind.is_pax_global_extensions() {
                continue;
            }
            let components =
                tar_components(&raw).ok_or_else(|| ImportError::Escapes(shown.clone()))?;
            let meta = tar_meta(&mut entry, &shown)?;
            let Some((name, parents)) = components.split_last() else {
                // The archive's own folder (`./`).
                if kind.is_dir() {
                    self.tree.node_mut(base).meta = meta;
                }
                continue;
            };
            let parent = self.ensure_dirs(base, parents, folder, &path)?;
            use tar::EntryType as T;
            let node_kind = match kind {
                T::Directory => {
                    if let Some(id) = self.tree.lookup(parent, name)
                        && matches!(self.tree.node(id).kind, Kind::Dir(_))
                    {
                        self.tree.node_mut(id).meta = meta;
                        continue;
                    }
                    Kind::Dir(Default::default())
                }
                T::Regular | T::Continuous | T::GNUSparse => {
                    let mut bytes = Vec::new();
                    (&mut entry)
                        .take(self.tar_budget.saturating_add(1))
                        .read_to_end(&mut bytes)
                        .map_err(ImportError::Tar)?;
                    self.tar_budget = self
                        .tar_budget
                        .checked_sub(bytes.len() as u64)
                        .ok_or_else(|| ImportError::BadEntry {
                            entry: shown.clone(),
                            what: "the archive's files hold more bytes than the volume's size; nothing was imported".to_string(),
                        })?;
                    let id = self.add(
                        parent,
                        name,
                        Node {
                            meta,
                            kind: Kind::File {
                                size: bytes.len() as u64,
                                data: nonzero_ranges(&bytes),
                            },
                        },
                        &path,
                    )?;
                    self.contents.insert(id, Content::Memory(bytes));
                    continue;
                }
                T::Symlink => Kind::Symlink(
                    entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default(),
                ),
                T::Link => {
                    let target = entry
                        .link_name_bytes()
                        .map(|t| t.into_owned())
                        .unwrap_or_default();
                    let bad = || ImportError::BadHardLink {
                        entry: shown.clone(),
                        target: String::from_utf8_lossy(&target).into_owned(),
                    };
                    let id = tar_components(&target)
                        .and_then(|c| self.lookup_path(base, &c))
                        .filter(|&id| !matches!(self.tree.node(id).kind, Kind::Dir(_)))
                        .ok_or_else(bad)?;
                    self.tree
                        .link(parent, name, id)
                        .map_err(|error| ImportError::Name { path, error })?;
                    continue;
                }
                T::Char => return Err(unsupported(path, "character device")),
                T::Block => return Err(unsupported(path, "block device")),
                T::Fifo => return Err(unsupported(path, "FIFO")),
                _ => return Err(unsupported(path, "tar entry of an unknown type")),
            };
            self.add(
                parent,
                name,
                Node {
                    meta,
                    kind: node_kind,
                },
                &path,
            )?;
        }
        self.drop_empty_lost_found(base);
        Ok(())
    }

    fn lookup_path(&self, from: NodeId, components: &[&[u8]]) -> Option<NodeId> {
        components
            .iter()
            .try_fold(from, |at, name| self.tree.lookup(at, name))
    }
}

fn unsupported(path: PathBuf, kind: &'static str) -> ImportError {
    ImportError::Unsupported { path, kind }
}

fn unsupported_kind(ft: &fs::FileType) -> &'static str {
    if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_block_device() {
        "block device"
    } else {
        "file of an unknown type"
    }
}

/// The components of a tar member's path, `.` and empty ones dropped; `None` for an absolute
/// path or one with `..`.
fn tar_components(path: &[u8]) -> Option<Vec<&[u8]>> {
    if path.starts_with(b"/") {
        return None;
    }
    let parts: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    if parts.contains(&&b".."[..]) {
        return None;
    }
    Some(parts)
}

/// A member's metadata: the header's mode, owner and mtime; PAX `mtime`, `atime` and `ctime`
/// (with fractions of a second) when the archive has them; atime and ctime default to mtime.
fn tar_meta<R: Read>(entry: &mut tar::Entry<'_, R>, shown: &str) -> Result<Meta, ImportError> {
    let bad = |what: String| ImportError::BadEntry {
        entry: shown.to_string(),
        what,
    };
    let header = entry.header();
    let mode = header.mode().map_err(|e| bad(e.to_string()))?;
    let id = |v: io::Result<u64>, what: &str| {
        v.map_err(|e| bad(e.to_string())).and_then(|v| {
            u32::try_from(v).map_err(|_| bad(format!("{what} {v} does not fit in 32 bits")))
        })
    };
    let uid = id(header.uid(), "uid")?;
    let gid = id(header.gid(), "gid")?;
    let mtime = header.mtime().map_err(|e| bad(e.to_string()))?;
    let mtime = Time {
        secs: i64::try_from(mtime).map_err(|_| bad(format!("mtime {mtime} is out of range")))?,
        nanos: 0,
    };
    let mut meta = Meta {
        perm: (mode & 0o7777) as u16,
        uid,
        gid,
        atime: mtime,
        mtime,
        ctime: mtime,
    };
    if let Some(extensions) = entry.pax_extensions().map_err(ImportError::Tar)? {
        let mut times: [Option<Time>; 3] = [None; 3];
        for ext in extensions {
            let ext = ext.map_err(ImportError::Tar)?;
            let slot = match ext.key_bytes() {
                b"mtime" => 0,
                b"atime" => 1,
                b"ctime" => 2,
                key if key.starts_with(b"GNU.sparse.") => {
                    return Err(bad(
                        "PAX sparse members (GNU tar --format=posix --sparse) are not supported; make the archive with --format=gnu, or without --sparse".to_string(),
                    ));
                }
                _ => continue,
            };
            times[slot] = Some(pax_time(ext.value_bytes()).ok_or_else(|| {
                bad(format!(
                    "PAX time {:?} is not a number of seconds",
                    String::from_utf8_lossy(ext.value_bytes())
                ))
            })?);
        }
        if let Some(t) = times[0] {
            meta.mtime = t;
            meta.atime = t;
            meta.ctime = t;
        }
        meta.atime = times[1].unwrap_or(meta.atime);
        meta.ctime = times[2].unwrap_or(meta.ctime);
    }
    Ok(meta)
}

/// A PAX time: decimal seconds, optionally negative, with an optional fraction.
fn pax_time(value: &[u8]) -> Option<Time> {
    let text = std::str::from_utf8(value).ok()?;
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let secs: i64 = whole.parse().ok()?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let digits: String = fraction
        .chars()
        .chain("000000000".chars())
        .take(9)
        .collect();
    let mut nanos: u32 = digits.parse().ok()?;
    let mut secs = secs;
    // "-1.5" is one and a half seconds before 1970: -2 s plus 0.5 s.
    if whole.starts_with('-') && nanos > 0 {
        secs -= 1;
        nanos = 1_000_000_000 - nanos;
    }
    Some(Time { secs, nanos })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_paths_stay_inside() {
        assert_eq!(
            tar_components(b"./a//b/./c/").unwrap(),
            [&b"a"[..], b"b", b"c"]
        );
        assert_eq!(tar_components(b"./").unwrap(), Vec::<&[u8]>::new());
        assert!(tar_components(b"/etc/passwd").is_none());
        assert!(tar_components(b"a/../../b").is_none());
        assert!(tar_components(b"..").is_none());
    }

    #[test]
    fn into_paths_are_absolute_and_normalised() {
        assert_eq!(into_components("/").unwrap(), Vec::<&[u8]>::new());
        assert_eq!(
            into_components("/srv/data/").unwrap(),
            [&b"srv"[..], b"data"]
        );
        for bad in ["srv", "/a/../b", "/a//b", "/./a", ""] {
            assert!(into_components(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pax_times_keep_their_fractions() {
        assert_eq!(
            pax_time(b"12.5"),
            Some(Time {
                secs: 12,
                nanos: 500_000_000
            })
        );
        assert_eq!(pax_time(b"7"), Some(Time { secs: 7, nanos: 0 }));
        assert_eq!(
            pax_time(b"-1.25"),
            Some(Time {
                secs: -2,
                nanos: 750_000_000
            })
        );
        assert_eq!(
            pax_time(b"1.1234567891"),
            Some(Time {
                secs: 1,
                nanos: 123_456_789
            })
        );
        assert_eq!(pax_time(b"x"), None);
        assert_eq!(pax_time(b"1.x"), None);
    }

    #[test]
    fn zero_blocks_of_tar_members_are_holes() {
        let mut data = vec![0u8; 3 * BLOCK + 10];
        data[BLOCK + 1] = 1;
        data[3 * BLOCK + 9] = 2;
        assert_eq!(
            nonzero_ranges(&data),
            [(BLOCK as u64, BLOCK as u64), (3 * BLOCK as u64, 10)]
        );
        assert!(nonzero_ranges(&[0; 100]).is_empty());
    }

    /// What the scan saw is what is written: a file replaced (here by a symbolic link to a
    /// host file, renamed into place) between the scan and the write stops the import.
    #[test]
    fn a_file_replaced_after_the_scan_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::write(src.join("f"), b"scanned").unwrap();
        let size = 16 << 20;
        let loaded = load(&ImportSource::Dir(src.clone()), None, size).unwrap();
        // The scanned file stays allocated, so no new file can get its inode number.
        fs::hard_link(src.join("f"), dir.path().join("kept")).unwrap();
        fs::write(dir.path().join("secret"), b"not scanned").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), dir.path().join("link")).unwrap();
        fs::rename(dir.path().join("link"), src.join("f")).unwrap();
        let image = tempfile::tempfile().unwrap();
        let result = write_image(&image, size, &FormatOptions::new("t"), &loaded);
        assert!(
            matches!(result, Err(WriteError::Import(ImportError::Read { .. }))),
            "a symbolic link in its place is not opened"
        );
        // Another file in its place (same name, another inode).
        fs::write(dir.path().join("new"), b"swapped").unwrap();
        fs::rename(dir.path().join("new"), src.join("f")).unwrap();
        let result = write_image(&image, size, &FormatOptions::new("t"), &loaded);
        assert!(
            matches!(result, Err(WriteError::Import(ImportError::Changed(ref p))) if p.ends_with("f")),
            "another file in its place is refused"
        );
    }
}
