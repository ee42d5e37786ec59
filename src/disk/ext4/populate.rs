//! Where a [`Tree`] goes in a fresh filesystem: inode numbers and blocks, decided before
//! anything is written (a pure function, as `mkfs.ext4 -d` would place it, though not in the
//! same blocks).
//!
//! Inodes are numbered breadth-first from 12 (the root keeps 2); blocks are handed out in
//! inode order from the first free block on, so a directory's blocks, a file's data and its
//! extent tree blocks are each as contiguous as the free space allows. Holes get no blocks.

use super::dir;
use super::extent::{self, Extent};
use super::htree::{self, Index};
use super::layout::{BLOCK_SIZE, Cursor, Layout, MAX_EXTENT_LEN, Run};
use super::tree::{Kind, MAX_LINKS, NodeId, Tree};
use super::{Ext4Error, LOST_FOUND_INO, ROOT_INO};

/// The first inode number for the tree's nodes (`s_first_ino` + 1; 11 is `lost+found`).
pub const FIRST_INO: u32 = LOST_FOUND_INO + 1;
/// A symbolic link target shorter than this is stored in the inode's 60-byte `i_block`.
pub const FAST_SYMLINK_MAX: usize = 59;
/// The largest file: logical block numbers are 32 bits wide.
pub const MAX_FILE_BLOCKS: u64 = 1 << 32;

/// `len` bytes of file `node`, from `file_offset` on, go to byte `offset` of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataRun {
    /// Where on the device (block-aligned).
    pub offset: u64,
    /// How many bytes (whole blocks, except at the end of the file).
    pub len: u64,
    /// Which file.
    pub node: NodeId,
    /// From where in the file (block-aligned).
    pub file_offset: u64,
}

/// One reachable node of the tree, placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placed {
    /// The node.
    pub node: NodeId,
    /// Its inode number.
    pub ino: u32,
    /// `i_links_count`.
    pub links: u16,
    /// Its blocks: directory blocks, file data, a slow symbolic link's target.
    pub extents: Vec<Extent>,
    /// Its extent tree blocks, leaves first (see [`extent::tree`]).
    pub tree_blocks: Vec<u64>,
}

impl Placed {
    /// 512-byte sectors the inode uses (`i_blocks`): its blocks and its tree blocks.
    pub fn sectors(&self) -> u64 {
        let blocks: u64 = self.extents.iter().map(|e| e.len).sum();
        (blocks + self.tree_blocks.len() as u64) * (BLOCK_SIZE / 512)
    }
}

/// The whole placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The fresh filesystem's layout with the tree's blocks marked used.
    pub layout: Layout,
    /// The reachable nodes in inode order: the root, then inodes 12, 13, ...
    pub placed: Vec<Placed>,
    /// Each node's inode number (0: unreachable).
    pub ino_of: Vec<u32>,
    /// Inodes in use per group (always the first ones of the group).
    pub used_inodes: Vec<u64>,
    /// Directories per group.
    pub used_dirs: Vec<u64>,
    /// Where the files' data go, in inode order.
    pub data: Vec<DataRun>,
}

/// Names of a directory's entries in the order they are stored: `.`, `..`, (for the root)
/// `lost+found`, then the tree's entries in byte order.
pub fn entry_names(tree: &Tree, dir: NodeId) -> impl Iterator<Item = &[u8]> {
    let lost_found: &[&[u8]] = if dir == Tree::ROOT {
        &[b"lost+found"]
    } else {
        &[]
    };
    let children = match &tree.node(dir).kind {
        Kind::Dir(entries) => Some(entries.keys().map(Vec::as_slice)),
        _ => None,
    };
    [&b"."[..], b".."]
        .into_iter()
        .chain(lost_found.iter().copied())
        .chain(children.into_iter().flatten())
}

/// The index of directory `dir` when it is large enough to have one (see [`htree::plan`]).
pub fn dir_index(tree: &Tree, dir: NodeId, hash_seed: &[u8; 16]) -> Option<Index> {
    let names: Vec<&[u8]> = entry_names(tree, dir).skip(2).collect();
    htree::plan(&names, hash_seed)
}

/// Blocks of directory `dir`: its index and leaves, or its linear blocks.
fn dir_blocks(tree: &Tree, dir: NodeId, hash_seed: &[u8; 16]) -> u64 {
    match dir_index(tree, dir, hash_seed) {
        Some(index) => index.blocks() as u64,
        None => dir::pack(entry_names(tree, dir).map(<[u8]>::len)).len() as u64,
    }
}

/// The logical block ranges `(first, count)` a file's data ranges need, merged.
pub(super) fn file_blocks(size: u64, data: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let end_block = size.div_ceil(BLOCK_SIZE);
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(offset, len) in data {
        let first = offset / BLOCK_SIZE;
        let end = offset
            .saturating_add(len)
            .div_ceil(BLOCK_SIZE)
            .min(end_block);
        if first >= end {
            continue;
        }
        match out.last_mut() {
            Some((s, c)) if *s + *c >= first => *c = (*c).max(end - *s),
            _ => out.push((first, end - first)),
        }
    }
    out
}

/// Places `tree` in the fresh filesystem `layout`; `hash_seed` is `s_hash_seed`, which
/// orders the entries of indexed directories.
pub fn place(
    mut layout: Layout,
    tree: &Tree,
    hash_seed: &[u8; 16],
) -> Result<Placement, Ext4Error> {
    // Inode numbers, breadth first; hard links count names.
    let mut ino_of = vec![0u32; tree.node_count()];
    let mut names = vec![0usize; tree.node_count()];
    let mut subdirs = vec![0usize; tree.node_count()];
    let mut order = vec![Tree::ROOT];
    ino_of[Tree::ROOT] = ROOT_INO;
    let mut i = 0;
    while i < order.len() {
        let id = order[i];
        i += 1;
        let Kind::Dir(entries) = &tree.node(id).kind else {
            continue;
        };
        if id == Tree::ROOT && entries.contains_key(&b"lost+found"[..]) {
            return Err(Ext4Error::Reserved("lost+found"));
        }
        for &child in entries.values() {
            names[child] += 1;
            if matches!(tree.node(child).kind, Kind::Dir(_)) {
                subdirs[id] += 1;
            }
            if ino_of[child] == 0 {
                ino_of[child] = FIRST_INO - 1 + order.len() as u32;
                order.push(child);
            }
        }
    }
    let free_inodes = layout.inodes() - u64::from(LOST_FOUND_INO);
    if order.len() as u64 - 1 > free_inodes {
        return Err(Ext4Error::NoInodes {
            needed: order.len() as u64 - 1,
            free: free_inodes,
        });
    }

    // Blocks each node needs, as logical ranges; checked against the free space first.
    let needs: Vec<Vec<(u64, u64)>> = order
        .iter()
        .map(|&id| match &tree.node(id).kind {
            Kind::Dir(_) => vec![(0, dir_blocks(tree, id, hash_seed))],
            Kind::File { size, data } => file_blocks(*size, data),
            Kind::Symlink(target) if target.len() > FAST_SYMLINK_MAX => vec![(0, 1)],
            Kind::Symlink(_) => Vec::new(),
        })
        .collect();
    for (&id, need) in order.iter().zip(&needs) {
        if let Kind::File { size, .. } = tree.node(id).kind
            && size.div_ceil(BLOCK_SIZE) > MAX_FILE_BLOCKS
        {
            return Err(Ext4Error::FileTooLarge { size });
        }
        if names[id] > MAX_LINKS && !matches!(tree.node(id).kind, Kind::Dir(_)) {
            return Err(Ext4Error::TooManyLinks { links: names[id] });
        }
        debug_assert!(need.iter().all(|(s, c)| s + c <= MAX_FILE_BLOCKS));
    }
    // The root's first block is the fresh filesystem's.
    let wanted: u64 = needs.iter().flatten().map(|(_, c)| c).sum::<u64>() - 1;
    if wanted > layout.free_blocks() {
        return Err(Ext4Error::NoSpace {
            needed: wanted,
            free: layout.free_blocks(),
        });
    }

    let mut runs: Vec<Run> = Vec::new();
    let mut placed = Vec::with_capacity(order.len());
    let mut data = Vec::new();
    {
        let mut cursor = Cursor::new(&layout.used, 0, layout.blocks);
        let no_space = || Ext4Error::NoSpace {
            needed: wanted,
            free: layout.free_blocks(),
        };
        let mut take = |want: u64, runs: &mut Vec<Run>| {
            let run = cursor.take(want).ok_or_else(no_space)?;
            match runs.last_mut() {
                Some(last) if last.end() == run.start => last.len += run.len,
                _ => runs.push(run),
            }
            Ok::<Run, Ext4Error>(run)
        };
        for (&id, need) in order.iter().zip(&needs) {
            let mut extents: Vec<Extent> = Vec::new();
            for &(first, count) in need {
                let mut logical = first;
                let mut missing = count;
                if id == Tree::ROOT && logical == 0 {
                    extents.push(Extent {
                        logical: 0,
                        start: layout.root_block,
                        len: 1,
                    });
                    logical = 1;
                    missing -= 1;
                }
                while missing > 0 {
                    let run = take(missing.min(MAX_EXTENT_LEN), &mut runs)?;
                    match extents.last_mut() {
                        Some(e)
                            if u64::from(e.logical) + e.len == logical
                                && e.start + e.len == run.start
                                && e.len + run.len <= MAX_EXTENT_LEN =>
                        {
                            e.len += run.len
                        }
                        _ => extents.push(Extent {
                            logical: logical as u32,
                            start: run.start,
                            len: run.len,
                        }),
                    }
                    logical += run.len;
                    missing -= run.len;
                }
            }
            let tree_blocks = (0..extent::tree_blocks(extents.len()))
                .map(|_| take(1, &mut runs).map(|r| r.start))
                .collect::<Result<Vec<u64>, Ext4Error>>()?;
            let node = tree.node(id);
            if let Kind::File { size, .. } = node.kind {
                for e in &extents {
                    let file_offset = u64::from(e.logical) * BLOCK_SIZE;
                    data.push(DataRun {
                        offset: e.start * BLOCK_SIZE,
                        len: (e.len * BLOCK_SIZE).min(size - file_offset),
                        node: id,
                        file_offset,
                    });
                }
            }
            let links = match node.kind {
                Kind::Dir(_) => {
                    // `.`, the parent's entry and each subdirectory's `..` (and lost+found's
                    // for the root); past the limit, dir_nlink's 1 means "many".
                    let n = 2 + subdirs[id] + usize::from(id == Tree::ROOT);
                    if n > MAX_LINKS { 1 } else { n as u16 }
                }
                _ => names[id] as u16,
            };
            placed.push(Placed {
                node: id,
                ino: ino_of[id],
                links,
                extents,
                tree_blocks,
            });
        }
    }
    layout.add_used(&runs);

    let ipg = layout.inodes_per_group;
    let mut used_inodes = vec![0u64; layout.groups.len()];
    let mut used_dirs = vec![0u64; layout.groups.len()];
    used_inodes[0] = u64::from(LOST_FOUND_INO);
    used_dirs[0] = 1; // lost+found
    for p in &placed {
        let g = (u64::from(p.ino - 1) / ipg) as usize;
        if p.ino >= FIRST_INO {
            used_inodes[g] += 1;
        }
        if matches!(tree.node(p.node).kind, Kind::Dir(_)) {
            used_dirs[g] += 1;
        }
    }
    Ok(Placement {
        layout,
        placed,
        ino_of,
        used_inodes,
        used_dirs,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::super::layout;
    use super::super::tree::{Meta, Node, Time};
    use super::*;

    fn meta() -> Meta {
        Meta {
            perm: 0o644,
            uid: 1,
            gid: 2,
            atime: Time::default(),
            mtime: Time::default(),
            ctime: Time::default(),
        }
    }

    fn file(size: u64, data: Vec<(u64, u64)>) -> Node {
        Node {
            meta: meta(),
            kind: Kind::File { size, data },
        }
    }

    fn dir() -> Node {
        Node {
            meta: meta(),
            kind: Kind::Dir(Default::default()),
        }
    }

    fn place_default(layout: Layout, tree: &Tree) -> Result<Placement, Ext4Error> {
        place(layout, tree, &[0; 16])
    }

    #[test]
    fn blocks_of_sparse_files() {
        assert_eq!(file_blocks(0, &[]), []);
        assert_eq!(file_blocks(1, &[(0, 1)]), [(0, 1)]);
        // Ranges inside one block merge; a hole of a whole block stays a hole.
        assert_eq!(
            file_blocks(
                5 * BLOCK_SIZE,
                &[(10, 20), (100, 4000), (3 * BLOCK_SIZE, 1)]
            ),
            [(0, 2), (3, 1)]
        );
    }

    #[test]
    fn inodes_breadth_first_and_links_counted() {
        let mut t = Tree::new(meta());
        let d = t.add(Tree::ROOT, b"d", dir()).unwrap();
        let f = t.add(d, b"f", file(1, vec![(0, 1)])).unwrap();
        t.add(Tree::ROOT, b"z", file(0, vec![])).unwrap();
        t.link(Tree::ROOT, b"a", f).unwrap();
        let p = place_default(layout::plan(64 << 20).unwrap(), &t).unwrap();
        // Root entries in byte order: a (= f), d, z; then d's f is already numbered.
        assert_eq!(p.ino_of[f], 12);
        assert_eq!(p.ino_of[d], 13);
        let by_node = |n| p.placed.iter().find(|x| x.node == n).unwrap();
        assert_eq!(by_node(f).links, 2);
        assert_eq!(by_node(d).links, 2);
        assert_eq!(by_node(Tree::ROOT).links, 4);
        assert_eq!(p.used_inodes[0], 14);
        assert_eq!(p.used_dirs[0], 3);
        assert_eq!(p.data.len(), 1);
        assert_eq!(p.data[0].len, 1);
    }

    #[test]
    fn space_and_inodes_are_checked_before_placing() {
        let mut t = Tree::new(meta());
        t.add(Tree::ROOT, b"big", file(64 << 20, vec![(0, 64 << 20)]))
            .unwrap();
        assert!(matches!(
            place_default(layout::plan(64 << 20).unwrap(), &t),
            Err(Ext4Error::NoSpace { .. })
        ));
        let mut t = Tree::new(meta());
        let inodes = layout::plan(8 << 20).unwrap().inodes();
        for i in 0..inodes {
            t.add(Tree::ROOT, format!("{i}").as_bytes(), file(0, vec![]))
                .unwrap();
        }
        assert!(matches!(
            place_default(layout::plan(8 << 20).unwrap(), &t),
            Err(Ext4Error::NoInodes { .. })
        ));
        let mut t = Tree::new(meta());
        t.add(Tree::ROOT, b"lost+found", dir()).unwrap();
        assert!(matches!(
            place_default(layout::plan(8 << 20).unwrap(), &t),
            Err(Ext4Error::Reserved(_))
        ));
    }

    #[test]
    fn fragmented_files_get_tree_blocks() {
        let mut t = Tree::new(meta());
        // Every other block holds data: 600 extents, two leaves under the inode.
        let data = (0..600).map(|i| (2 * i * BLOCK_SIZE, BLOCK_SIZE)).collect();
        let f = t
            .add(Tree::ROOT, b"f", file(1200 * BLOCK_SIZE, data))
            .unwrap();
        let p = place_default(layout::plan(64 << 20).unwrap(), &t).unwrap();
        let placed = p.placed.iter().find(|x| x.node == f).unwrap();
        assert_eq!(placed.extents.len(), 600);
        assert_eq!(placed.tree_blocks.len(), 2);
        assert_eq!(placed.sectors(), 602 * 8);
    }
}
