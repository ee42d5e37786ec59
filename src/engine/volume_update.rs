//! `volume import` and `cp` into an existing volume: the source's files written into the
//! volume's filesystem in place, as one copy-on-write transaction of its qcow2 image.
//!
//! The volume's tree is read with our ext4 reader (for `cp`'s destination rules and to refuse
//! a folder meeting a file before anything is written), the space the new files take is
//! checked against what is free, then [`Editor`] adds the files (folders merge, a file or
//! symbolic link of the same name is replaced, its other hard links keep the old one) and
//! [`Qcow2Update`] makes every write land in clusters the old image does not use, until one
//! header write switches to the new tables. A crash or an error at any point leaves the old
//! volume exactly as it was; the cost is the size of what is imported, not of the volume.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rustix::fs::OFlags;

use crate::compose::Project;
use crate::disk::BlockSink;
use crate::disk::ext4::edit::{self, Editor};
use crate::disk::ext4::read::{FileType, Filesystem, Stat};
use crate::disk::ext4::tree::{Kind, Meta, Node, NodeId, Tree};
use crate::disk::ext4::{DataRun, Ext4Error};
use crate::disk::qcow2::Qcow2Update;
use crate::state::StateDir;

use super::volume_io::{
    ContentReader, ImportError, ImportSource, ImportSummary, Loaded, import_error, into_components,
    load, load_entry,
};
use super::volumes::{self, VolumeError};
use super::{EngineError, Reporter};

/// The filesystem being edited: the volume's ext4 over its qcow2 update transaction.
type VolumeEditor = Editor<Qcow2Update<File>>;

/// Merges what `load` reads (given the volume's current tree and its size) into the existing
/// volume `name`, in place and crash-safely. The caller holds the project lock.
pub(super) fn merge_into(
    state: &StateDir,
    name: &str,
    load: impl FnOnce(&Tree, u64) -> Result<Loaded, VolumeError>,
) -> Result<ImportSummary, VolumeError> {
    // The volume's image, locked against QEMU until the transaction is committed.
    let locked = volumes::lock_unused(state, name)?;
    let image = volumes::image_path(state, name)?;
    let length_before = locked
        .metadata()
        .map_err(|e| bad_image(name, &image, e.to_string()))?
        .len();
    let merged = merge_locked(name, &image, locked, load);
    if merged.is_err() {
        // New clusters past the old end of the file are referenced by nothing: give the space
        // back (the lock went with the transaction; the project lock keeps QEMU away).
        if let Ok(file) = fs::OpenOptions::new()
            .write(true)
            .custom_flags(OFlags::NOFOLLOW.bits() as i32)
            .open(&image)
            && file.metadata().is_ok_and(|m| m.len() > length_before)
        {
            let _ = file.set_len(length_before);
        }
    }
    merged
}

fn bad_image(name: &str, image: &Path, reason: String) -> VolumeError {
    VolumeError::BadImage {
        name: name.to_string(),
        path: image.to_path_buf(),
        reason,
    }
}

fn merge_locked(
    name: &str,
    image: &Path,
    locked: File,
    load: impl FnOnce(&Tree, u64) -> Result<Loaded, VolumeError>,
) -> Result<ImportSummary, VolumeError> {
    let bad = |reason: String| bad_image(name, image, reason);
    let fit = |e: Ext4Error| import_error(name, ImportError::Fit(e));
    let update = Qcow2Update::open(locked).map_err(|e| bad(e.to_string()))?;
    let size = update.len();
    let tree = read_tree(&Filesystem::open(&update).map_err(fit)?).map_err(fit)?;
    let source = load(&tree, size)?;
    check_conflicts(&tree, &source.tree, Tree::ROOT, Tree::ROOT, String::new())
        .map_err(|e| import_error(name, e))?;

    let mut editor = Editor::open(update).map_err(fit)?;
    check_room(&editor, &source).map_err(fit)?;
    let mut apply = Apply {
        editor: &mut editor,
        source: &source,
        reader: ContentReader::new(&source.contents),
        made: HashMap::new(),
        buf: vec![0; 1 << 20],
    };
    let root = apply.editor.root();
    apply
        .graft(Tree::ROOT, root)
        .map_err(|e| import_error(name, e))?;
    let update = editor.finish().map_err(fit)?;
    update.commit().map_err(|e| bad(e.to_string()))?;
    Ok(source.summary)
}

fn meta_of(stat: &Stat) -> Meta {
    Meta {
        perm: stat.perm,
        uid: stat.uid,
        gid: stat.gid,
        atime: stat.atime,
        mtime: stat.mtime,
        ctime: stat.ctime,
    }
}

/// The names and types of the volume's tree (no contents), for `cp`'s destination rules and
/// the conflict check. Special files count as files: a source file replaces one.
fn read_tree<S: crate::disk::BlockSource>(fs: &Filesystem<S>) -> Result<Tree, Ext4Error> {
    let root = fs.lookup(b"/")?;
    let mut tree = Tree::new(meta_of(&root));
    let mut dirs = HashSet::from([root.ino]);
    let mut pending = vec![(root, Tree::ROOT)];
    while let Some((dir, node)) = pending.pop() {
        for entry in fs.read_dir(&dir)? {
            let stat = fs.stat(entry.ino)?;
            let kind = match stat.kind {
                FileType::Dir => {
                    if !dirs.insert(stat.ino) {
                        return Err(Ext4Error::Corrupt(format!(
                            "folder inode {} has two names",
                            stat.ino
                        )));
                    }
                    Kind::Dir(Default::default())
                }
                FileType::Symlink => Kind::Symlink(fs.read_link(&stat)?),
                FileType::File | FileType::Special => Kind::File {
                    size: 0,
                    data: Vec::new(),
                },
            };
            let id = tree
                .add(
                    node,
                    &entry.name,
                    Node {
                        meta: meta_of(&stat),
                        kind,
                    },
                )
                .map_err(|e| Ext4Error::Corrupt(e.to_string()))?;
            if stat.kind == FileType::Dir {
                pending.push((stat, id));
            }
        }
    }
    Ok(tree)
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Dir(_) => "folder",
        Kind::File { .. } => "file",
        Kind::Symlink(_) => "symbolic link",
    }
}

/// Refuses, before anything is written, a folder of the source where the volume has a file
/// or symbolic link, and the other way round.
fn check_conflicts(
    volume: &Tree,
    source: &Tree,
    from: NodeId,
    to: NodeId,
    path: String,
) -> Result<(), ImportError> {
    let Kind::Dir(entries) = &source.node(from).kind else {
        unreachable!("folders are compared");
    };
    for (name, &child) in entries {
        let Some(old) = volume.lookup(to, name) else {
            continue;
        };
        let shown = format!("{path}/{}", String::from_utf8_lossy(name));
        let (old_kind, new_kind) = (&volume.node(old).kind, &source.node(child).kind);
        match (old_kind, new_kind) {
            (Kind::Dir(_), Kind::Dir(_)) => check_conflicts(volume, source, child, old, shown)?,
            (Kind::Dir(_), _) | (_, Kind::Dir(_)) => {
                return Err(ImportError::TypeConflict {
                    path: shown,
                    existing: kind_name(old_kind),
                    new: kind_name(new_kind),
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Refuses, before anything is written, a source that needs more blocks or inodes than the
/// volume has free (files replaced are not counted as freed: the check errs on the side of
/// refusing).
fn check_room(editor: &VolumeEditor, source: &Loaded) -> Result<(), Ext4Error> {
    let mut blocks = 0u64;
    let mut inodes = 0u64;
    let mut seen = HashSet::new();
    let mut pending = vec![Tree::ROOT];
    while let Some(dir) = pending.pop() {
        let Kind::Dir(entries) = &source.tree.node(dir).kind else {
            continue;
        };
        // The folder's entries, laid out again (a block per 128 entries is generous).
        blocks += (entries.len() as u64).div_ceil(128).max(1);
        for &child in entries.values() {
            if !seen.insert(child) {
                continue;
            }
            inodes += 1;
            match &source.tree.node(child).kind {
                Kind::Dir(_) => pending.push(child),
                Kind::File { size, data } => blocks += edit::file_blocks_needed(*size, data),
                Kind::Symlink(target) => blocks += u64::from(target.len() >= 60),
            }
        }
    }
    let (free_blocks, free_inodes) = (editor.free_blocks(), editor.free_inodes());
    if blocks > free_blocks {
        return Err(Ext4Error::NoSpace {
            needed: blocks,
            free: free_blocks,
        });
    }
    if inodes > free_inodes {
        return Err(Ext4Error::NoInodes {
            needed: inodes,
            free: free_inodes,
        });
    }
    Ok(())
}

/// Writes the source's tree into the volume through the editor.
struct Apply<'a> {
    editor: &'a mut VolumeEditor,
    source: &'a Loaded,
    reader: ContentReader<'a>,
    /// Source nodes already written, by the inode they became (for hard links).
    made: HashMap<NodeId, u32>,
    buf: Vec<u8>,
}

impl Apply<'_> {
    /// Merges the entries of the source's folder `from` into the volume's folder `to`.
    fn graft(&mut self, from: NodeId, to: u32) -> Result<(), ImportError> {
        let fit = ImportError::Fit;
        let Kind::Dir(entries) = &self.source.tree.node(from).kind else {
            unreachable!("graft merges folders");
        };
        for (name, &child) in entries {
            let node = self.source.tree.node(child);
            let existing = self.editor.lookup(to, name).map_err(fit)?;
            if let Some((ino, kind)) = existing {
                if matches!(node.kind, Kind::Dir(_)) && kind == FileType::Dir {
                    self.graft(child, ino)?;
                    continue;
                }
                // Checked before: a file or link replaces a file or link.
                self.editor.unlink(to, name).map_err(fit)?;
            }
            if let Some(&ino) = self.made.get(&child) {
                self.editor.link(to, name, ino).map_err(fit)?;
                continue;
            }
            let ino = match &node.kind {
                Kind::Dir(_) => {
                    let ino = self.editor.mkdir(to, name, node.meta).map_err(fit)?;
                    self.graft(child, ino)?;
                    ino
                }
                Kind::File { size, data } => {
                    let (ino, runs) = self
                        .editor
                        .create_file(to, name, node.meta, *size, data)
                        .map_err(fit)?;
                    for run in runs {
                        self.write_run(DataRun {
                            offset: run.offset,
                            len: run.len,
                            node: child,
                            file_offset: run.file_offset,
                        })?;
                    }
                    ino
                }
                Kind::Symlink(target) => self
                    .editor
                    .symlink(to, name, node.meta, target)
                    .map_err(fit)?,
            };
            self.made.insert(child, ino);
        }
        Ok(())
    }

    /// Streams one range of a file's bytes from its source to where the editor placed it.
    fn write_run(&mut self, run: DataRun) -> Result<(), ImportError> {
        let mut done = 0;
        while done < run.len {
            let n = (run.len - done).min(self.buf.len() as u64) as usize;
            let buf = &mut self.buf[..n];
            if self.reader.read(run, done, buf).is_err() {
                return Err(self.reader.take_failure());
            }
            self.editor
                .device_mut()
                .write_at(run.offset + done, buf)
                .map_err(|e| ImportError::Fit(Ext4Error::Io(e)))?;
            done += n as u64;
        }
        Ok(())
    }
}

/// `cp SRC volume:NAME:DEST` (or `VM:DEST`): the host file, folder or symbolic link `src`
/// copied into the existing volume `name` as `docker cp` places it, under the project lock.
/// `DEST` an existing folder: into it, under `src`'s name (its contents, when `src` ends in
/// `/.`); `DEST` an existing file: replaced by a file (a folder there is refused); `DEST`
/// missing: created, its folder must exist (and a `DEST` ending in `/` must exist).
pub fn copy_in(
    project: &Project,
    name: &str,
    src: &Path,
    dest: &str,
    reporter: &dyn Reporter,
) -> Result<ImportSummary, EngineError> {
    let state = StateDir::new(&project.dir);
    let _guard = super::lifecycle::lock(&state, reporter)?;
    Ok(copy_in_locked(&state, name, src, dest)?)
}

fn copy_in_locked(
    state: &StateDir,
    name: &str,
    src: &Path,
    dest: &str,
) -> Result<ImportSummary, VolumeError> {
    let fail = |e| import_error(name, e);
    merge_into(state, name, |tree, size| {
        let folder_exists = into_components(dest).ok().and_then(|parts| {
            parts
                .iter()
                .try_fold(Tree::ROOT, |at, part| tree.lookup(at, part))
        });
        if src == Path::new("-") {
            // A tar archive on standard input unpacks into an existing folder.
            if !folder_exists.is_some_and(|id| matches!(tree.node(id).kind, Kind::Dir(_))) {
                return Err(fail(ImportError::BadInto(dest.to_string())));
            }
            return load(&ImportSource::Stdin, Some(dest), size).map_err(fail);
        }
        let src_meta = fs::symlink_metadata(src).map_err(|source| {
            fail(ImportError::Read {
                path: src.to_path_buf(),
                source,
            })
        })?;
        let parts = into_components(dest).map_err(fail)?;
        let found = folder_exists;
        let contents_only = src.as_os_str().as_encoded_bytes().ends_with(b"/.");
        let refuse = |what: String| {
            fail(ImportError::BadEntry {
                entry: dest.to_string(),
                what,
            })
        };
        let dest_is_dir = found.is_some_and(|id| matches!(tree.node(id).kind, Kind::Dir(_)));
        if contents_only {
            if !src_meta.is_dir() {
                return Err(refuse(format!("{} is not a folder", src.display())));
            }
            if found.is_some() && !dest_is_dir {
                return Err(refuse(
                    "a file is there, not a folder; nothing was changed".into(),
                ));
            }
            return load(&ImportSource::Dir(src.to_path_buf()), Some(dest), size).map_err(fail);
        }
        let src_name = src
            .file_name()
            .ok_or_else(|| refuse(format!("{} names no file", src.display())))?
            .as_encoded_bytes();
        let (folder, target): (Vec<&[u8]>, &[u8]) = if dest_is_dir {
            (parts.clone(), src_name)
        } else {
            let Some((last, parent)) = parts.split_last() else {
                unreachable!("the root is a folder");
            };
            let parent_is_dir = parent
                .iter()
                .try_fold(Tree::ROOT, |at, part| tree.lookup(at, part))
                .is_some_and(|id| matches!(tree.node(id).kind, Kind::Dir(_)));
            if !parent_is_dir {
                return Err(refuse("its folder does not exist in the volume".into()));
            }
            if found.is_none() && dest.ends_with('/') && !src_meta.is_dir() {
                return Err(refuse("no such folder in the volume".into()));
            }
            (parent.to_vec(), *last)
        };
        let mut into = String::new();
        for part in &folder {
            into.push('/');
            into.push_str(&String::from_utf8_lossy(part));
        }
        if into.is_empty() {
            into.push('/');
        }
        load_entry(src, &into, target, size).map_err(fail)
    })
}
