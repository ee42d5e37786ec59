//! `volume import` and `cp` into an existing volume: the volume's tree and the source's
//! merged, written as a new image beside the old one, which is then renamed over it.
//!
//! The volume's filesystem is read whole into a [`Tree`] (names, types, metadata, where each
//! file's bytes are in the old image), the source is merged into it in memory (folders merge,
//! a file or symbolic link of the same name is replaced, a folder meeting a file is refused),
//! and the result is laid down by the formatter with the volume's own label, UUID and hash
//! seed, file data streamed from the old image and from the source. Every refusal (a type
//! conflict, not enough space or inodes, something of the volume a rewrite would lose) comes
//! before the old image is touched, and the old image is never written: a crash at any point
//! leaves it whole. The cost is a copy of the volume's data, not a reflink.
//!
//! What a rewrite would lose is refused rather than dropped: extended attributes (ACLs,
//! SELinux labels), sockets, FIFOs and device nodes, a non-empty `lost+found`, and a
//! filesystem that is not clean. Inode numbers change; file contents, modes, owners, times,
//! symbolic links and hard links are kept.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::path::Path;

use crate::compose::Project;
use crate::disk::ext4::read::{FileType, Filesystem, Stat};
use crate::disk::ext4::tree::{Kind, Meta, Node, NodeId, Tree};
use crate::disk::ext4::{self, Ext4Error, FormatOptions};
use crate::disk::qcow2::Qcow2Image;
use crate::state::StateDir;

use super::volume_io::{
    Content, ImportError, ImportSource, ImportSummary, Loaded, OldVolume, import_error,
    into_components, load, load_entry, write_image,
};
use super::volumes::{self, VolumeError};
use super::{EngineError, Reporter};

/// Merges what `load` reads (given the volume's current tree and its size) into the existing
/// volume `name`, crash-safely. The caller holds the project lock.
pub(super) fn merge_into(
    state: &StateDir,
    name: &str,
    load: impl FnOnce(&Tree, u64) -> Result<Loaded, VolumeError>,
) -> Result<ImportSummary, VolumeError> {
    // Held until the new image is in place, so no QEMU opens the volume meanwhile.
    let _locked = volumes::lock_unused(state, name)?;
    let image = volumes::image_path(state, name)?;
    let bad = |reason: String| VolumeError::BadImage {
        name: name.to_string(),
        path: image.clone(),
        reason,
    };
    let fit = |e: Ext4Error| import_error(name, ImportError::Fit(e));
    let file = File::open(&image).map_err(|e| bad(e.to_string()))?;
    let qcow2 = Qcow2Image::from_source(file).map_err(|e| bad(e.to_string()))?;
    if qcow2.backing_file().is_some() {
        return Err(bad("it has a backing file".to_string()));
    }
    let size = qcow2.virtual_size();
    let mut raw = [0u8; 1024];
    qcow2
        .read_at(1024, &mut raw)
        .map_err(|e| bad(e.to_string()))?;
    let fs = Filesystem::open(qcow2).map_err(fit)?;
    let opts = rewrite_options(&raw).map_err(fit)?;
    let mut merged = read_volume(&fs).map_err(fit)?;
    let source = load(&merged.tree, size)?;
    let summary = source.summary.clone();
    merge(&mut merged, source).map_err(|e| import_error(name, e))?;
    volumes::replace_with(state, name, &opts, &mut |file, opts| {
        write_image(file, size, opts, &merged, Some(&fs)).map_err(|e| e.for_volume(name))
    })?;
    Ok(summary)
}

/// The options that make the formatter lay down a filesystem like the one whose superblock
/// is `raw`: its label, UUID and directory hash seed. Refuses a filesystem that is not clean
/// or not one the formatter could have made (4 KiB blocks).
fn rewrite_options(raw: &[u8; 1024]) -> Result<FormatOptions, Ext4Error> {
    let info = ext4::read_superblock(raw)?;
    if info.state != "clean" {
        return Err(Ext4Error::Unsupported(format!(
            "the filesystem's state is {:?}; boot a VM that mounts it cleanly, or run e2fsck on it, first",
            info.state
        )));
    }
    if info.block_size != 4096 {
        return Err(Ext4Error::Unsupported(format!(
            "blocks of {} bytes (only volumes of 4 KiB blocks, as qemu-compose makes them, are rewritten)",
            info.block_size
        )));
    }
    let mut opts = FormatOptions::new(info.label);
    opts.uuid = info.uuid;
    // s_hash_seed: names keep their hashes, so an htree stays what a guest expects.
    opts.hash_seed.copy_from_slice(&raw[0xEC..0xFC]);
    Ok(opts)
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

/// The whole tree of the volume, files' contents pointing into the old image.
fn read_volume(fs: &OldVolume) -> Result<Loaded, Ext4Error> {
    let unsupported = |path: &str, what: &str| {
        Ext4Error::Unsupported(format!(
            "{path} {what}, which rewriting the volume would lose; nothing was changed"
        ))
    };
    let root = fs.lookup(b"/")?;
    if root.has_xattrs() {
        return Err(unsupported("/", "has extended attributes"));
    }
    let mut loaded = Loaded {
        tree: Tree::new(meta_of(&root)),
        contents: HashMap::new(),
        summary: ImportSummary::default(),
        tar_budget: 0,
    };
    let mut links: HashMap<u32, NodeId> = HashMap::new();
    let mut dirs = HashSet::from([root.ino]);
    let mut pending = vec![(root, Tree::ROOT, String::new())];
    while let Some((dir, node, path)) = pending.pop() {
        for entry in fs.read_dir(&dir)? {
            let shown = format!("{path}/{}", String::from_utf8_lossy(&entry.name));
            let stat = fs.stat(entry.ino)?;
            if node == Tree::ROOT && entry.name == b"lost+found" && stat.kind == FileType::Dir {
                // The formatter makes a new one; one holding files is e2fsck's to sort out.
                if !fs.read_dir(&stat)?.is_empty() {
                    return Err(unsupported(&shown, "holds files"));
                }
                continue;
            }
            if stat.has_xattrs() {
                return Err(unsupported(&shown, "has extended attributes"));
            }
            let name_error = |e| Ext4Error::Corrupt(format!("{shown}: {e}"));
            if let Some(&id) = links.get(&stat.ino) {
                loaded
                    .tree
                    .link(node, &entry.name, id)
                    .map_err(name_error)?;
                continue;
            }
            let mut mappings = None;
            let kind = match stat.kind {
                FileType::Dir => {
                    if !dirs.insert(stat.ino) {
                        return Err(Ext4Error::Corrupt(format!(
                            "{shown}: folder inode {} has two names",
                            stat.ino
                        )));
                    }
                    Kind::Dir(Default::default())
                }
                FileType::File => {
                    let mapped = mappings.insert(fs.data(&stat)?);
                    let mut data: Vec<(u64, u64)> = Vec::new();
                    for m in mapped.iter().filter(|m| m.offset.is_some()) {
                        match data.last_mut() {
                            Some((at, len)) if *at + *len == m.file_offset => *len += m.len,
                            _ => data.push((m.file_offset, m.len)),
                        }
                    }
                    Kind::File {
                        size: stat.size,
                        data,
                    }
                }
                FileType::Symlink => Kind::Symlink(fs.read_link(&stat)?),
                FileType::Special => {
                    return Err(unsupported(&shown, "is a socket, FIFO or device node"));
                }
            };
            let id = loaded
                .tree
                .add(
                    node,
                    &entry.name,
                    Node {
                        meta: meta_of(&stat),
                        kind,
                    },
                )
                .map_err(name_error)?;
            if stat.kind != FileType::Dir && stat.links > 1 {
                links.insert(stat.ino, id);
            }
            if let Some(mappings) = mappings {
                loaded.contents.insert(id, Content::Volume(mappings));
            }
            if stat.kind == FileType::Dir {
                pending.push((stat, id, shown));
            }
        }
    }
    Ok(loaded)
}

fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Dir(_) => "folder",
        Kind::File { .. } => "file",
        Kind::Symlink(_) => "symbolic link",
    }
}

/// Merges `source` into `into`, root to root: folders that exist keep their metadata and
/// gain the source's entries; a file or symbolic link replaces one of the same name (the
/// old one's other hard links keep it); a folder and a non-folder of one path are refused.
fn merge(into: &mut Loaded, mut source: Loaded) -> Result<(), ImportError> {
    let mut copied = HashMap::new();
    graft(
        into,
        &mut source,
        Tree::ROOT,
        Tree::ROOT,
        String::new(),
        &mut copied,
    )
}

/// Merges the entries of `source`'s folder `from` into `into`'s folder `to` (shown as
/// `path`); `copied` maps source nodes already copied to their copies, for hard links.
fn graft(
    into: &mut Loaded,
    source: &mut Loaded,
    from: NodeId,
    to: NodeId,
    path: String,
    copied: &mut HashMap<NodeId, NodeId>,
) -> Result<(), ImportError> {
    let Kind::Dir(entries) = source.tree.node(from).kind.clone() else {
        unreachable!("graft merges folders");
    };
    for (name, child) in entries {
        let shown = format!("{path}/{}", String::from_utf8_lossy(&name));
        let new = source.tree.node(child);
        let is_dir = matches!(new.kind, Kind::Dir(_));
        let existing = into.tree.lookup(to, &name);
        if let Some(old) = existing {
            let old_kind = &into.tree.node(old).kind;
            if matches!(old_kind, Kind::Dir(_)) != is_dir {
                return Err(ImportError::TypeConflict {
                    path: shown,
                    existing: kind_name(old_kind),
                    new: kind_name(&new.kind),
                });
            }
            if is_dir {
                graft(into, source, child, old, shown, copied)?;
                continue;
            }
        }
        let name_error = |error| ImportError::Name {
            path: shown.clone().into(),
            error,
        };
        if let Some(&copy) = copied.get(&child) {
            into.tree.link(to, &name, copy).map_err(name_error)?;
            continue;
        }
        let node = Node {
            meta: new.meta,
            kind: match &new.kind {
                Kind::Dir(_) => Kind::Dir(Default::default()),
                other => other.clone(),
            },
        };
        let copy = into.tree.add(to, &name, node).map_err(name_error)?;
        copied.insert(child, copy);
        if let Some(content) = source.contents.remove(&child) {
            into.contents.insert(copy, content);
        }
        if is_dir {
            graft(into, source, child, copy, shown, copied)?;
        }
    }
    Ok(())
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
        let src_meta = std::fs::symlink_metadata(src).map_err(|source| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::ext4::tree::Time;

    fn meta(perm: u16) -> Meta {
        Meta {
            perm,
            uid: 0,
            gid: 0,
            atime: Time::default(),
            mtime: Time::default(),
            ctime: Time::default(),
        }
    }

    fn loaded() -> Loaded {
        Loaded {
            tree: Tree::new(meta(0o755)),
            contents: HashMap::new(),
            summary: ImportSummary::default(),
            tar_budget: 0,
        }
    }

    fn dir(perm: u16) -> Node {
        Node {
            meta: meta(perm),
            kind: Kind::Dir(Default::default()),
        }
    }

    fn file(bytes: &[u8]) -> Node {
        Node {
            meta: meta(0o644),
            kind: Kind::File {
                size: bytes.len() as u64,
                data: vec![(0, bytes.len() as u64)],
            },
        }
    }

    fn bytes_of(l: &Loaded, id: NodeId) -> Vec<u8> {
        match l.contents.get(&id) {
            Some(Content::Memory(b)) => b.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn folders_merge_files_are_replaced_and_hard_links_stay_links() {
        let mut volume = loaded();
        let d = volume.tree.add(Tree::ROOT, b"d", dir(0o700)).unwrap();
        let old = volume.tree.add(d, b"f", file(b"old")).unwrap();
        volume
            .contents
            .insert(old, Content::Memory(b"old".to_vec()));
        volume.tree.link(Tree::ROOT, b"other-name", old).unwrap();

        let mut source = loaded();
        let sd = source.tree.add(Tree::ROOT, b"d", dir(0o777)).unwrap();
        let new = source.tree.add(sd, b"f", file(b"new")).unwrap();
        source
            .contents
            .insert(new, Content::Memory(b"new".to_vec()));
        source.tree.link(Tree::ROOT, b"second", new).unwrap();
        merge(&mut volume, source).unwrap();

        let t = &volume.tree;
        assert_eq!(t.lookup(Tree::ROOT, b"d"), Some(d));
        assert_eq!(
            t.node(d).meta.perm,
            0o700,
            "an existing folder keeps its metadata"
        );
        let f = t.lookup(d, b"f").unwrap();
        assert_eq!(bytes_of(&volume, f), b"new");
        assert_eq!(t.lookup(Tree::ROOT, b"second"), Some(f));
        assert_eq!(t.lookup(Tree::ROOT, b"other-name"), Some(old));
        assert_eq!(bytes_of(&volume, old), b"old");
    }

    #[test]
    fn a_folder_meeting_a_file_is_a_conflict() {
        let mut volume = loaded();
        volume.tree.add(Tree::ROOT, b"x", file(b"")).unwrap();
        let mut source = loaded();
        let x = source.tree.add(Tree::ROOT, b"x", dir(0o755)).unwrap();
        source.tree.add(x, b"y", file(b"")).unwrap();
        let err = merge(&mut volume, source).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/x is a file in the volume and a folder in the source; nothing was changed"
        );
    }
}
