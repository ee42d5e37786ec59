//! A pure-Rust mkfs.ext4: plans the layout of a fresh filesystem, then writes only its non-zero metadata.
//!
//! [`format`] lays down what `mkfs.ext4 -b 4096 -O ^resize_inode` of e2fsprogs 1.47 would, with
//! the same block, inode, reserved-block and journal counts (see [`layout`]): features
//! `has_journal ext_attr dir_index filetype extent 64bit flex_bg sparse_super large_file
//! huge_file dir_nlink extra_isize metadata_csum`, 256-byte inodes, flex groups of 16, crc32c
//! checksums on every structure. It writes only what is not zero: superblock and descriptor
//! copies, the bitmaps of groups that are not `BLOCK_UNINIT`, one inode table block, three
//! directory blocks, the journal's superblock (and extent leaf). Inode tables are left unwritten
//! under `ITABLE_ZEROED`; the device must read as zeros where nothing was written.
//!
//! Differences from mke2fs, on purpose:
//! - Blocks are always 4 KiB; mke2fs uses 1 KiB blocks below 512 MiB (the inode ratio of that
//!   size class, one inode per 4 KiB, is kept).
//! - No `resize_inode`: no blocks are reserved for growing the descriptor table in place.
//!   The filesystem still grows. Offline, `resize2fs` moves blocks to make room (verified by
//!   the test `grows_offline_without_resize_inode`: 1 GiB to 40 GiB, e2fsck clean, data kept).
//!   Online, the kernel's `ext4_resize_fs` converts a filesystem without `resize_inode` to
//!   `meta_bg` (`ext4_convert_meta_bg`) and then adds groups; that path is read from the kernel
//!   source, not tested, because the resize ioctl needs CAP_SYS_RESOURCE, which our test
//!   machines lack.
//! - Placement: each flex group's bitmaps and inode tables (one chunk per 16 groups) are
//!   packed from the start of the device rather than into the flex group's first group, so
//!   only the first few groups hold metadata and need written bitmaps (at 1 TiB, 192 touched
//!   64 KiB clusters instead of 687). Root, `lost+found` and the journal's goal are mke2fs's.
//!
//! Sizes: from 8 MiB (2048 blocks, the smallest mke2fs gives a journal) to 64 TiB (beyond that
//! the descriptor table needs `meta_bg`); bytes past the last whole block are left unused.

mod csum;
mod dir;
pub mod edit;
mod extent;
mod group;
mod htree;
mod inode;
mod journal;
pub mod layout;
mod populate;
pub mod read;
pub mod replay;
mod superblock;
pub mod tree;

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::disk::sink::BlockSink;
pub use edit::{Editor, FileRun};
use group::GroupDesc;
use inode::{Inode, Time};
use layout::{BG_BLOCK_UNINIT, BG_INODE_UNINIT, BLOCK_SIZE, LOST_FOUND_BLOCKS, Layout};
pub use populate::DataRun;
use populate::{FAST_SYMLINK_MAX, Placed, Placement};
pub use superblock::{SuperblockInfo, read_superblock};
use tree::{Kind, Meta, Tree};

/// The longest label `s_volume_name` holds, in bytes.
pub const MAX_LABEL: usize = 16;
/// Smallest device [`format`] accepts, in bytes (8 MiB).
pub const MIN_SIZE: u64 = layout::MIN_BLOCKS * BLOCK_SIZE;
/// Largest filesystem [`format`] makes, in bytes (64 TiB); larger devices are refused.
pub const MAX_SIZE: u64 = layout::MAX_BLOCKS * BLOCK_SIZE;

const ROOT_INO: u32 = 2;
const JOURNAL_INO: u32 = 8;
const LOST_FOUND_INO: u32 = 11;
/// The first inode the tree's nodes (other than the root) get.
const FIRST_TREE_INO: u32 = populate::FIRST_INO;

/// Why a filesystem could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// The label does not fit `s_volume_name`.
    #[error("the ext4 label {label:?} is {} bytes long; at most {MAX_LABEL} bytes fit", label.len())]
    LabelTooLong {
        /// The label given.
        label: String,
    },
    /// The device is below [`MIN_SIZE`].
    #[error(
        "{size} bytes is too small for an ext4 filesystem with a journal; the minimum is {min} bytes (8 MiB)"
    )]
    TooSmall {
        /// Device bytes.
        size: u64,
        /// The minimum.
        min: u64,
    },
    /// The device is above [`MAX_SIZE`].
    #[error(
        "{size} bytes is larger than the biggest ext4 filesystem this formatter makes ({max} bytes, 64 TiB)"
    )]
    TooLarge {
        /// Device bytes.
        size: u64,
        /// The maximum.
        max: u64,
    },
    /// The planner could not place the metadata (a formatter bug for a supported size).
    #[error("cannot lay out an ext4 filesystem on {size} bytes: the metadata does not fit")]
    Layout {
        /// Device bytes.
        size: u64,
    },
    /// Writing to the device failed.
    #[error("writing the ext4 filesystem failed: {0}")]
    Io(#[from] io::Error),
    /// The bytes given to [`read_superblock`] are not an ext4 superblock.
    #[error("not an ext4 superblock: {0}")]
    NotExt4(&'static str),
    /// The files do not fit in the free blocks.
    #[error(
        "not enough space: the files need {needed} blocks of 4 KiB and the filesystem has {free} free"
    )]
    NoSpace {
        /// Blocks needed (data, directories, symbolic links).
        needed: u64,
        /// Free blocks.
        free: u64,
    },
    /// There are more files than free inodes.
    #[error("not enough inodes: the files need {needed} and the filesystem has {free} free")]
    NoInodes {
        /// Inodes needed.
        needed: u64,
        /// Free inodes.
        free: u64,
    },
    /// A file larger than ext4 with 4 KiB blocks stores (16 TiB).
    #[error("a file of {size} bytes is larger than ext4 allows (16 TiB)")]
    FileTooLarge {
        /// Its size.
        size: u64,
    },
    /// A file with more names than ext4 counts.
    #[error("a file has {links} hard links; ext4 allows at most 65000")]
    TooManyLinks {
        /// Its names.
        links: usize,
    },
    /// The filesystem read is damaged (or hostile).
    #[error("corrupt ext4 filesystem: {0}")]
    Corrupt(String),
    /// The filesystem uses something this reader does not read.
    #[error("unsupported ext4 filesystem: {0}")]
    Unsupported(String),
    /// The journal holds transactions not yet written to the filesystem.
    #[error(
        "the filesystem needs journal recovery (it was not cleanly unmounted); boot a VM that mounts it, or run e2fsck on it, first"
    )]
    NeedsRecovery,
    /// A path that is not in the filesystem.
    #[error("no such file or folder in the volume: {0}")]
    NotFound(String),
    /// An edit that cannot be made: a name that exists or is invalid, a directory given a
    /// second name, an inode that is not a directory where one is needed.
    #[error("cannot edit the ext4 filesystem: {0}")]
    Invalid(String),
    /// A name the filesystem itself uses at the root.
    #[error("the root directory's {0} is the filesystem's own; the files cannot have one there")]
    Reserved(&'static str),
}

/// What to make. Fix `uuid`, `hash_seed` and `timestamp` for reproducible output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatOptions {
    /// Volume label, at most [`MAX_LABEL`] bytes.
    pub label: String,
    /// Filesystem UUID.
    pub uuid: [u8; 16],
    /// Seed of the directory hash (`s_hash_seed`).
    pub hash_seed: [u8; 16],
    /// Creation time of the filesystem and its inodes, seconds since 1970.
    pub timestamp: u32,
    /// Owner of the root directory and `lost+found`.
    pub root_uid: u32,
    /// Group of the root directory and `lost+found`.
    pub root_gid: u32,
}

impl FormatOptions {
    /// Options with `label`, a random UUID and hash seed, the current time and root ownership.
    pub fn new(label: impl Into<String>) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self {
            label: label.into(),
            uuid: *uuid::Uuid::new_v4().as_bytes(),
            hash_seed: *uuid::Uuid::new_v4().as_bytes(),
            timestamp: u32::try_from(now).unwrap_or(u32::MAX),
            root_uid: 0,
            root_gid: 0,
        }
    }
}

impl Default for FormatOptions {
    /// No label, random UUID and hash seed, the current time.
    fn default() -> Self {
        Self::new("")
    }
}

/// What [`format`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatSummary {
    /// Bytes per block (4096).
    pub block_size: u64,
    /// Blocks in the filesystem.
    pub blocks: u64,
    /// Inodes in the filesystem.
    pub inodes: u64,
    /// Block groups.
    pub groups: u64,
    /// Journal blocks.
    pub journal_blocks: u64,
    /// Free blocks.
    pub free_blocks: u64,
    /// Blocks reserved for root.
    pub reserved_blocks: u64,
    /// The filesystem UUID.
    pub uuid: [u8; 16],
}

/// Formats the whole of `sink` (its length rounded down to 4 KiB blocks) as ext4.
///
/// The sink must read as zeros wherever this does not write.
pub fn format(sink: &mut impl BlockSink, opts: &FormatOptions) -> Result<FormatSummary, Ext4Error> {
    let time = Time::secs(opts.timestamp);
    let tree = Tree::new(Meta {
        perm: 0o755,
        uid: opts.root_uid,
        gid: opts.root_gid,
        atime: time,
        mtime: time,
        ctime: time,
    });
    plan(sink.len(), &tree, opts)?.write_metadata(sink)
}

/// A filesystem holding a [`Tree`], planned: what [`Plan::write_metadata`] writes and where
/// each file's data go ([`Plan::data`]). The caller writes the data itself, so that contents
/// can be streamed from where they are into the device.
#[derive(Debug)]
pub struct Plan<'t> {
    tree: &'t Tree,
    opts: FormatOptions,
    placement: Placement,
}

/// Plans a filesystem of `device_bytes` (whole 4 KiB blocks) holding `tree`, made with
/// `opts`; refuses, before anything is written, a tree that does not fit.
pub fn plan<'t>(
    device_bytes: u64,
    tree: &'t Tree,
    opts: &FormatOptions,
) -> Result<Plan<'t>, Ext4Error> {
    if opts.label.len() > MAX_LABEL {
        return Err(Ext4Error::LabelTooLong {
            label: opts.label.clone(),
        });
    }
    let placement = populate::place(layout::plan(device_bytes)?, tree, &opts.hash_seed)?;
    Ok(Plan {
        tree,
        opts: opts.clone(),
        placement,
    })
}

impl Plan<'_> {
    /// Where the files' data go: the device must hold these bytes of these files, in addition
    /// to what [`Plan::write_metadata`] writes, for the filesystem to be whole.
    pub fn data(&self) -> &[DataRun] {
        &self.placement.data
    }

    /// Writes every structure of the filesystem (not the files' data) into `sink`, which must
    /// read as zeros wherever nothing is written.
    pub fn write_metadata(&self, sink: &mut impl BlockSink) -> Result<FormatSummary, Ext4Error> {
        let opts = &self.opts;
        let p = &self.placement;
        let layout = &p.layout;
        if sink.len() / BLOCK_SIZE < layout.blocks {
            return Err(Ext4Error::Layout { size: sink.len() });
        }
        Writer {
            sink,
            opts,
            tree: self.tree,
            placement: p,
            layout,
            seed: csum::fs_seed(&opts.uuid),
        }
        .write()?;
        Ok(FormatSummary {
            block_size: BLOCK_SIZE,
            blocks: layout.blocks,
            inodes: layout.inodes(),
            groups: layout.groups.len() as u64,
            journal_blocks: layout.journal.blocks,
            free_blocks: layout.free_blocks(),
            reserved_blocks: layout.reserved_blocks,
            uuid: opts.uuid,
        })
    }
}

/// Writes a [`Placement`] to a sink.
struct Writer<'a, S> {
    sink: &'a mut S,
    opts: &'a FormatOptions,
    tree: &'a Tree,
    placement: &'a Placement,
    layout: &'a Layout,
    /// crc32c of the UUID: the seed of every metadata checksum.
    seed: u32,
}

impl<S: BlockSink> Writer<'_, S> {
    fn write(mut self) -> Result<(), Ext4Error> {
        let descriptors = self.write_bitmaps()?;
        let jnl_blocks = self.write_journal()?;
        self.write_inodes(jnl_blocks)?;
        self.write_contents()?;
        self.write_super_copies(&descriptors, jnl_blocks)?;
        Ok(())
    }

    fn at(block: u64) -> u64 {
        block * BLOCK_SIZE
    }

    fn used_inodes(&self) -> u64 {
        self.placement.used_inodes.iter().sum()
    }

    /// Writes the bitmaps of initialised groups and returns the descriptor table (padded to
    /// whole blocks) with their checksums.
    fn write_bitmaps(&mut self) -> Result<Vec<u8>, Ext4Error> {
        let l = self.layout;
        let ipg = l.inodes_per_group;
        let mut table = vec![0u8; (l.desc_blocks * BLOCK_SIZE) as usize];
        let mut bitmap = vec![0u8; BLOCK_SIZE as usize];
        for (g, group) in l.groups.iter().enumerate() {
            let used_inodes = self.placement.used_inodes[g];
            let mut d = GroupDesc {
                block_bitmap: group.block_bitmap,
                inode_bitmap: group.inode_bitmap,
                inode_table: group.inode_table,
                free_blocks: group.free_blocks as u32,
                free_inodes: (ipg - used_inodes) as u32,
                used_dirs: self.placement.used_dirs[g] as u32,
                flags: group.flags,
                block_bitmap_csum: 0,
                inode_bitmap_csum: 0,
                itable_unused: (ipg - used_inodes) as u32,
            };
            if group.flags & BG_BLOCK_UNINIT == 0 {
                bitmap.fill(0);
                for r in l.used_in(group.start, group.start + group.len) {
                    let from = (r.start - group.start) as usize;
                    group::set_bits(&mut bitmap, from, from + r.len as usize);
                }
                // Blocks past the end of a short last group are marked used.
                group::set_bits(&mut bitmap, group.len as usize, BLOCK_SIZE as usize * 8);
                // The checksum covers one bit per block of a full group.
                let used_bytes = (l.blocks_per_group / 8) as usize;
                d.block_bitmap_csum = group::bitmap_csum(self.seed, &bitmap[..used_bytes]);
                self.sink.write_at(Self::at(group.block_bitmap), &bitmap)?;
            }
            if used_inodes > 0 {
                d.flags &= !BG_INODE_UNINIT;
                bitmap.fill(0);
                group::set_bits(&mut bitmap, 0, used_inodes as usize);
                group::set_bits(&mut bitmap, ipg as usize, BLOCK_SIZE as usize * 8);
                d.inode_bitmap_csum = group::bitmap_csum(self.seed, &bitmap[..(ipg / 8) as usize]);
                self.sink.write_at(Self::at(group.inode_bitmap), &bitmap)?;
            }
            table[g * GroupDesc::SIZE..(g + 1) * GroupDesc::SIZE]
                .copy_from_slice(&d.encode(g as u32, self.seed));
        }
        Ok(table)
    }

    /// Writes the journal superblock and its extent leaf; returns the journal inode's
    /// `i_block`, which the superblock copies into `s_jnl_blocks`.
    fn write_journal(&mut self) -> Result<[u8; 60], Ext4Error> {
        let j = &self.layout.journal;
        let journal_seed = csum::inode_seed(self.seed, JOURNAL_INO, 0);
        let (i_block, leaf) = extent::tree(
            &extent::from_runs(&j.extents),
            j.leaf.as_slice(),
            journal_seed,
        );
        for (at, block) in leaf {
            self.sink.write_at(Self::at(at), &block[..])?;
        }
        let first = j.extents.first().ok_or(Ext4Error::Layout {
            size: self.sink.len(),
        })?;
        let jsb = journal::superblock(j.blocks as u32, &self.opts.uuid);
        self.sink.write_at(Self::at(first.start), &jsb)?;
        Ok(i_block)
    }

    /// The inode of a reserved number: the bad-blocks inode, the journal, `lost+found`, or
    /// an all-zero one.
    fn reserved_inode(&self, ino: u32, journal_block: [u8; 60]) -> Inode {
        let l = self.layout;
        let o = self.opts;
        let time = Time::secs(o.timestamp);
        let timed = Inode {
            atime: time,
            ctime: time,
            mtime: time,
            ..Inode::default()
        };
        match ino {
            1 => timed,
            JOURNAL_INO => {
                let j = &l.journal;
                Inode {
                    mode: inode::S_IFREG | 0o600,
                    size: j.blocks * BLOCK_SIZE,
                    links: 1,
                    sectors: (j.blocks + u64::from(j.leaf.is_some())) * (BLOCK_SIZE / 512),
                    flags: inode::EXTENTS_FL,
                    block: journal_block,
                    extra_isize: inode::EXTRA_ISIZE,
                    ..timed
                }
            }
            LOST_FOUND_INO => {
                let run = [layout::Run {
                    start: l.lost_found_block,
                    len: LOST_FOUND_BLOCKS,
                }];
                let size = LOST_FOUND_BLOCKS * BLOCK_SIZE;
                Inode {
                    mode: inode::S_IFDIR | 0o700,
                    uid: o.root_uid,
                    gid: o.root_gid,
                    size,
                    links: 2,
                    sectors: size / 512,
                    flags: inode::EXTENTS_FL,
                    block: extent::tree(&extent::from_runs(&run), &[], 0).0,
                    extra_isize: inode::EXTRA_ISIZE,
                    ..timed
                }
            }
            _ => Inode::default(),
        }
    }

    /// The inode of a node of the tree.
    fn tree_inode(&self, p: &Placed) -> Inode {
        let node = self.tree.node(p.node);
        let Meta {
            perm,
            uid,
            gid,
            atime,
            mtime,
            ctime,
        } = node.meta;
        let seed = csum::inode_seed(self.seed, p.ino, 0);
        let extents = || extent::tree(&p.extents, &p.tree_blocks, seed).0;
        let (kind, size, flags, block) = match &node.kind {
            Kind::Dir(_) => {
                let blocks: u64 = p.extents.iter().map(|e| e.len).sum();
                let indexed = populate::dir_index(self.tree, p.node, &self.opts.hash_seed);
                (
                    inode::S_IFDIR,
                    blocks * BLOCK_SIZE,
                    inode::EXTENTS_FL
                        | if indexed.is_some() {
                            inode::INDEX_FL
                        } else {
                            0
                        },
                    extents(),
                )
            }
            Kind::File { size, .. } => (inode::S_IFREG, *size, inode::EXTENTS_FL, extents()),
            Kind::Symlink(target) if target.len() > FAST_SYMLINK_MAX => (
                inode::S_IFLNK,
                target.len() as u64,
                inode::EXTENTS_FL,
                extents(),
            ),
            Kind::Symlink(target) => {
                // A fast symbolic link: the target in i_block itself, no blocks.
                let mut block = [0u8; 60];
                block[..target.len()].copy_from_slice(target);
                (inode::S_IFLNK, target.len() as u64, 0, block)
            }
        };
        Inode {
            mode: kind | (perm & 0o7777),
            uid,
            gid,
            size,
            atime,
            ctime,
            mtime,
            links: p.links,
            sectors: p.sectors(),
            flags,
            block,
            extra_isize: inode::EXTRA_ISIZE,
        }
    }

    /// Writes every inode table block that holds an inode in use: the reserved inodes 1 to
    /// 11 and the tree's.
    fn write_inodes(&mut self, journal_block: [u8; 60]) -> Result<(), Ext4Error> {
        let ipg = self.layout.inodes_per_group;
        let per_block = BLOCK_SIZE / Inode::SIZE as u64;
        let placement = self.placement;
        let (root, rest) = placement
            .placed
            .split_first()
            .expect("the root is always placed");
        let mut block = vec![0u8; BLOCK_SIZE as usize];
        let mut current: Option<u64> = None;
        let inodes = (1..FIRST_TREE_INO)
            .map(|ino| (ino, (ino == ROOT_INO).then_some(root)))
            .chain(rest.iter().map(|p| (p.ino, Some(p))));
        let mut pending: Vec<(u64, Vec<u8>)> = Vec::new();
        for (ino, placed) in inodes {
            let node = match placed {
                Some(p) => self.tree_inode(p),
                None => self.reserved_inode(ino, journal_block),
            };
            let index = u64::from(ino - 1);
            let group = &self.layout.groups[(index / ipg) as usize];
            let at = group.inode_table + (index % ipg) / per_block;
            if current != Some(at) {
                if let Some(done) = current {
                    pending.push((done, block.clone()));
                }
                block.fill(0);
                current = Some(at);
            }
            let slot = ((index % ipg) % per_block) as usize * Inode::SIZE;
            block[slot..slot + Inode::SIZE].copy_from_slice(&node.encode(ino, self.seed));
            if pending.len() >= 256 {
                self.flush(&mut pending)?;
            }
        }
        if let Some(done) = current {
            pending.push((done, block));
        }
        self.flush(&mut pending)
    }

    /// Writes whole blocks, gathered so that consecutive ones go in one write.
    fn flush(&mut self, blocks: &mut Vec<(u64, Vec<u8>)>) -> Result<(), Ext4Error> {
        let mut i = 0;
        while i < blocks.len() {
            let first = blocks[i].0;
            let mut bytes = Vec::new();
            while i < blocks.len() && blocks[i].0 == first + (bytes.len() as u64 / BLOCK_SIZE) {
                bytes.extend_from_slice(&blocks[i].1);
                i += 1;
            }
            self.sink.write_at(Self::at(first), &bytes)?;
        }
        blocks.clear();
        Ok(())
    }

    /// Writes `lost+found`'s blocks and the tree's directory blocks, extent tree blocks and
    /// slow symbolic link targets.
    fn write_contents(&mut self) -> Result<(), Ext4Error> {
        let l = self.layout;
        let seed = csum::inode_seed(self.seed, LOST_FOUND_INO, 0);
        let dot = |ino| dir::Entry {
            ino,
            name: b".",
            file_type: dir::FT_DIR,
        };
        let dotdot = |ino| dir::Entry {
            ino,
            name: b"..",
            file_type: dir::FT_DIR,
        };
        let first = dir::block(&[dot(LOST_FOUND_INO), dotdot(ROOT_INO)], seed);
        self.sink
            .write_at(Self::at(l.lost_found_block), &first[..])?;
        let empty = dir::block(&[], seed);
        for i in 1..LOST_FOUND_BLOCKS {
            self.sink
                .write_at(Self::at(l.lost_found_block + i), &empty[..])?;
        }

        // Each directory's parent, for its `..`.
        let ino_of = &self.placement.ino_of;
        let mut parent = vec![ROOT_INO; ino_of.len()];
        for p in &self.placement.placed {
            if let Kind::Dir(entries) = &self.tree.node(p.node).kind {
                for &child in entries.values() {
                    parent[child] = p.ino;
                }
            }
        }
        for p in &self.placement.placed {
            let seed = csum::inode_seed(self.seed, p.ino, 0);
            let node = self.tree.node(p.node);
            let blocks: Vec<Box<[u8; 4096]>> = match &node.kind {
                Kind::Dir(children) => {
                    let mut entries = vec![dot(p.ino), dotdot(parent[p.node])];
                    if p.node == Tree::ROOT {
                        entries.push(dir::Entry {
                            ino: LOST_FOUND_INO,
                            name: b"lost+found",
                            file_type: dir::FT_DIR,
                        });
                    }
                    entries.extend(children.iter().map(|(name, &child)| dir::Entry {
                        ino: ino_of[child],
                        name,
                        file_type: match self.tree.node(child).kind {
                            Kind::Dir(_) => dir::FT_DIR,
                            Kind::File { .. } => dir::FT_REG_FILE,
                            Kind::Symlink(_) => dir::FT_SYMLINK,
                        },
                    }));
                    match populate::dir_index(self.tree, p.node, &self.opts.hash_seed) {
                        Some(index) => index.encode(p.ino, parent[p.node], &entries[2..], seed),
                        None => dir::blocks(&entries, seed),
                    }
                }
                Kind::Symlink(target) if target.len() > FAST_SYMLINK_MAX => {
                    let mut b = Box::new([0u8; 4096]);
                    b[..target.len()].copy_from_slice(target);
                    vec![b]
                }
                // A file's blocks hold its data, which the caller writes.
                _ => Vec::new(),
            };
            let physical = p.extents.iter().flat_map(|e| e.start..e.start + e.len);
            for (at, b) in physical.zip(blocks) {
                self.sink.write_at(Self::at(at), &b[..])?;
            }
            for (at, b) in extent::tree(&p.extents, &p.tree_blocks, seed).1 {
                self.sink.write_at(Self::at(at), &b[..])?;
            }
        }
        Ok(())
    }

    /// Writes the superblock and descriptor table into every group that has a copy.
    fn write_super_copies(
        &mut self,
        table: &[u8],
        journal_block: [u8; 60],
    ) -> Result<(), Ext4Error> {
        let l = self.layout;
        let o = self.opts;
        let mut volume_name = [0u8; 16];
        volume_name[..o.label.len()].copy_from_slice(o.label.as_bytes());
        let mut jnl_blocks = [0u32; 17];
        for (i, w) in journal_block.chunks_exact(4).enumerate() {
            jnl_blocks[i] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        }
        let journal_size = l.journal.blocks * BLOCK_SIZE;
        jnl_blocks[15] = (journal_size >> 32) as u32;
        jnl_blocks[16] = journal_size as u32;
        let mut sb = superblock::Superblock {
            inodes_count: l.inodes() as u32,
            blocks_count: l.blocks,
            r_blocks_count: l.reserved_blocks,
            free_blocks_count: l.free_blocks(),
            free_inodes_count: (l.inodes() - self.used_inodes()) as u32,
            log_block_size: 2,
            blocks_per_group: l.blocks_per_group as u32,
            inodes_per_group: l.inodes_per_group as u32,
            time: o.timestamp,
            state: 1,
            block_group_nr: 0,
            feature_compat: superblock::COMPAT,
            feature_incompat: superblock::INCOMPAT,
            feature_ro_compat: superblock::RO_COMPAT,
            uuid: o.uuid,
            volume_name,
            hash_seed: o.hash_seed,
            jnl_blocks,
            overhead_clusters: l.overhead as u32,
        };
        for (g, group) in l.groups.iter().enumerate().filter(|(_, g)| g.has_super) {
            // s_block_group_nr is 16 bits wide; mke2fs truncates it the same way.
            sb.block_group_nr = g as u16;
            let offset = if g == 0 {
                superblock::OFFSET
            } else {
                Self::at(group.start)
            };
            self.sink.write_at(offset, &sb.encode())?;
            self.sink.write_at(Self::at(group.start + 1), table)?;
        }
        Ok(())
    }
}
