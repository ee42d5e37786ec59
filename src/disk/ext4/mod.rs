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
mod extent;
mod group;
mod inode;
mod journal;
pub mod layout;
mod superblock;

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::disk::sink::BlockSink;
use group::GroupDesc;
use inode::Inode;
use layout::{BG_BLOCK_UNINIT, BLOCK_SIZE, LOST_FOUND_BLOCKS, Layout, Run};
pub use superblock::{SuperblockInfo, read_superblock};

/// The longest label `s_volume_name` holds, in bytes.
pub const MAX_LABEL: usize = 16;
/// Smallest device [`format`] accepts, in bytes (8 MiB).
pub const MIN_SIZE: u64 = layout::MIN_BLOCKS * BLOCK_SIZE;
/// Largest filesystem [`format`] makes, in bytes (64 TiB); larger devices are refused.
pub const MAX_SIZE: u64 = layout::MAX_BLOCKS * BLOCK_SIZE;

const ROOT_INO: u32 = 2;
const JOURNAL_INO: u32 = 8;
const LOST_FOUND_INO: u32 = 11;

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
    if opts.label.len() > MAX_LABEL {
        return Err(Ext4Error::LabelTooLong {
            label: opts.label.clone(),
        });
    }
    let layout = layout::plan(sink.len())?;
    Writer {
        sink,
        opts,
        layout: &layout,
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

/// Writes a [`Layout`] to a sink.
struct Writer<'a, S> {
    sink: &'a mut S,
    opts: &'a FormatOptions,
    layout: &'a Layout,
    /// crc32c of the UUID: the seed of every metadata checksum.
    seed: u32,
}

/// Inodes the kernel expects to be in use on a fresh filesystem: 1 to 11.
const USED_INODES: u64 = LOST_FOUND_INO as u64;

impl<S: BlockSink> Writer<'_, S> {
    fn write(mut self) -> Result<(), Ext4Error> {
        let descriptors = self.write_bitmaps()?;
        let jnl_blocks = self.write_inodes()?;
        self.write_directories()?;
        self.write_super_copies(&descriptors, jnl_blocks)?;
        Ok(())
    }

    fn at(block: u64) -> u64 {
        block * BLOCK_SIZE
    }

    /// Writes the bitmaps of initialised groups and returns the descriptor table (padded to
    /// whole blocks) with their checksums.
    fn write_bitmaps(&mut self) -> Result<Vec<u8>, Ext4Error> {
        let l = self.layout;
        let ipg = l.inodes_per_group;
        let mut table = vec![0u8; (l.desc_blocks * BLOCK_SIZE) as usize];
        let mut bitmap = vec![0u8; BLOCK_SIZE as usize];
        for (g, group) in l.groups.iter().enumerate() {
            let mut d = GroupDesc {
                block_bitmap: group.block_bitmap,
                inode_bitmap: group.inode_bitmap,
                inode_table: group.inode_table,
                free_blocks: group.free_blocks as u32,
                free_inodes: ipg as u32,
                used_dirs: 0,
                flags: group.flags,
                block_bitmap_csum: 0,
                inode_bitmap_csum: 0,
                itable_unused: ipg as u32,
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
            if g == 0 {
                bitmap.fill(0);
                group::set_bits(&mut bitmap, 0, USED_INODES as usize);
                group::set_bits(&mut bitmap, ipg as usize, BLOCK_SIZE as usize * 8);
                d.inode_bitmap_csum = group::bitmap_csum(self.seed, &bitmap[..(ipg / 8) as usize]);
                d.free_inodes = (ipg - USED_INODES) as u32;
                d.itable_unused = (ipg - USED_INODES) as u32;
                d.used_dirs = 2;
                self.sink.write_at(Self::at(group.inode_bitmap), &bitmap)?;
            }
            table[g * GroupDesc::SIZE..(g + 1) * GroupDesc::SIZE]
                .copy_from_slice(&d.encode(g as u32, self.seed));
        }
        Ok(table)
    }

    /// Writes the first inode table block (inodes 1 to 16), the journal superblock and its
    /// extent leaf; returns the journal inode's `s_jnl_blocks` copy.
    fn write_inodes(&mut self) -> Result<[u32; 17], Ext4Error> {
        let l = self.layout;
        let o = self.opts;
        let dir_tree = |start: u64, len: u64| extent::tree(&[Run { start, len }], None, 0).0;
        let directory = |mode: u16, size: u64, links: u16, block: [u8; 60]| Inode {
            mode: inode::S_IFDIR | mode,
            uid: o.root_uid,
            gid: o.root_gid,
            size,
            time: o.timestamp,
            links,
            sectors: (size / 512) as u32,
            flags: inode::EXTENTS_FL,
            block,
            extra_isize: inode::EXTRA_ISIZE,
        };
        let root = directory(0o755, BLOCK_SIZE, 3, dir_tree(l.root_block, 1));
        let lost_found = directory(
            0o700,
            LOST_FOUND_BLOCKS * BLOCK_SIZE,
            2,
            dir_tree(l.lost_found_block, LOST_FOUND_BLOCKS),
        );

        let j = &l.journal;
        let journal_seed = csum::inode_seed(self.seed, JOURNAL_INO, 0);
        let (i_block, leaf) = extent::tree(&j.extents, j.leaf, journal_seed);
        let journal_size = j.blocks * BLOCK_SIZE;
        let journal = Inode {
            mode: inode::S_IFREG | 0o600,
            size: journal_size,
            time: o.timestamp,
            links: 1,
            sectors: ((j.blocks + u64::from(j.leaf.is_some())) * (BLOCK_SIZE / 512)) as u32,
            flags: inode::EXTENTS_FL,
            block: i_block,
            extra_isize: inode::EXTRA_ISIZE,
            ..Inode::default()
        };
        if let (Some(at), Some(leaf)) = (j.leaf, leaf) {
            self.sink.write_at(Self::at(at), &leaf[..])?;
        }
        let first = j.extents.first().ok_or(Ext4Error::Layout {
            size: self.sink.len(),
        })?;
        let jsb = journal::superblock(j.blocks as u32, &o.uuid);
        self.sink.write_at(Self::at(first.start), &jsb)?;

        let mut block = vec![0u8; BLOCK_SIZE as usize];
        for ino in 1..=USED_INODES as u32 {
            let node = match ino {
                1 => Inode {
                    time: o.timestamp,
                    ..Inode::default()
                },
                ROOT_INO => root.clone(),
                JOURNAL_INO => journal.clone(),
                LOST_FOUND_INO => lost_found.clone(),
                _ => Inode::default(),
            };
            let at = (ino as usize - 1) * Inode::SIZE;
            block[at..at + Inode::SIZE].copy_from_slice(&node.encode(ino, self.seed));
        }
        self.sink
            .write_at(Self::at(l.groups[0].inode_table), &block)?;

        let mut jnl_blocks = [0u32; 17];
        for (i, w) in i_block.chunks_exact(4).enumerate() {
            jnl_blocks[i] = u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        }
        jnl_blocks[15] = (journal_size >> 32) as u32;
        jnl_blocks[16] = journal_size as u32;
        Ok(jnl_blocks)
    }

    /// Writes the root directory's block and `lost+found`'s four.
    fn write_directories(&mut self) -> Result<(), Ext4Error> {
        let l = self.layout;
        let entry = |ino, name| dir::Entry {
            ino,
            name,
            file_type: dir::FT_DIR,
        };
        let root = dir::block(
            &[
                entry(ROOT_INO, b"."),
                entry(ROOT_INO, b".."),
                entry(LOST_FOUND_INO, b"lost+found"),
            ],
            csum::inode_seed(self.seed, ROOT_INO, 0),
        );
        self.sink.write_at(Self::at(l.root_block), &root[..])?;
        let seed = csum::inode_seed(self.seed, LOST_FOUND_INO, 0);
        let first = dir::block(&[entry(LOST_FOUND_INO, b"."), entry(ROOT_INO, b"..")], seed);
        self.sink
            .write_at(Self::at(l.lost_found_block), &first[..])?;
        let empty = dir::block(&[], seed);
        for i in 1..LOST_FOUND_BLOCKS {
            self.sink
                .write_at(Self::at(l.lost_found_block + i), &empty[..])?;
        }
        Ok(())
    }

    /// Writes the superblock and descriptor table into every group that has a copy.
    fn write_super_copies(&mut self, table: &[u8], jnl_blocks: [u32; 17]) -> Result<(), Ext4Error> {
        let l = self.layout;
        let o = self.opts;
        let mut volume_name = [0u8; 16];
        volume_name[..o.label.len()].copy_from_slice(o.label.as_bytes());
        let mut sb = superblock::Superblock {
            inodes_count: l.inodes() as u32,
            blocks_count: l.blocks,
            r_blocks_count: l.reserved_blocks,
            free_blocks_count: l.free_blocks(),
            free_inodes_count: (l.inodes() - USED_INODES) as u32,
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
            overhead_clusters: l.overhead_blocks() as u32,
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
