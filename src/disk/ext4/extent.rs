//! Extent trees (`struct ext4_extent_header`, `ext4_extent`, `ext4_extent_idx`; 12 bytes each,
//! little-endian) of any depth.
//!
//! The inode's 60-byte `i_block` holds a header and four entries. When a file has more extents
//! than that, they go into leaf blocks of 340 entries, and the inode (or, past four leaves,
//! index blocks of 340 entries each) points at them: each level up holds one index entry per
//! block below, keyed by the first logical block that block maps.

use super::csum;
use super::layout::{BLOCK_SIZE, Run};

/// `eh_magic`.
pub const MAGIC: u16 = 0xF30A;
/// Entries the inode's `i_block` holds after the header.
pub const ROOT_ENTRIES: usize = 4;
/// Entries one 4 KiB tree block holds: (4096 - 12-byte header - 4-byte tail) / 12.
pub const BLOCK_ENTRIES: usize = (BLOCK_SIZE as usize - 12 - 4) / 12;

/// A tree block: where it goes and its bytes.
pub type TreeBlock = (u64, Box<[u8; 4096]>);

/// `len` blocks of a file from logical block `logical` on, stored from physical block `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// First logical block (`ee_block`).
    pub logical: u32,
    /// First physical block (`ee_start_hi/lo`).
    pub start: u64,
    /// Blocks (`ee_len`), at most 32768 for an initialised extent.
    pub len: u64,
}

/// The extents of a file stored in `runs`, one after the other from logical block 0.
pub fn from_runs(runs: &[Run]) -> Vec<Extent> {
    let mut logical = 0u32;
    runs.iter()
        .map(|r| {
            let e = Extent {
                logical,
                start: r.start,
                len: r.len,
            };
            logical += r.len as u32;
            e
        })
        .collect()
}

/// Encodes an extent header: `eh_entries` used of `eh_max`, at `eh_depth` (0 = leaf).
fn header(entries: usize, max: usize, depth: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    b[2..4].copy_from_slice(&(entries as u16).to_le_bytes());
    b[4..6].copy_from_slice(&(max as u16).to_le_bytes());
    b[6..8].copy_from_slice(&depth.to_le_bytes());
    b
}

/// Encodes a leaf entry.
fn leaf_entry(e: &Extent) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&e.logical.to_le_bytes());
    b[4..6].copy_from_slice(&(e.len as u16).to_le_bytes());
    b[6..8].copy_from_slice(&((e.start >> 32) as u16).to_le_bytes());
    b[8..12].copy_from_slice(&(e.start as u32).to_le_bytes());
    b
}

/// Encodes an index entry: the subtree at `block` maps logical blocks from `logical` on.
fn index_entry(logical: u32, block: u64) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&logical.to_le_bytes());
    b[4..8].copy_from_slice(&(block as u32).to_le_bytes());
    b[8..10].copy_from_slice(&((block >> 32) as u16).to_le_bytes());
    b
}

/// Writes a header and entries into `out`, which is `12 * (max + 1)` bytes or more.
fn node(out: &mut [u8], max: usize, depth: u16, entries: &[[u8; 12]]) {
    out[..12].copy_from_slice(&header(entries.len(), max, depth));
    for (i, e) in entries.iter().enumerate() {
        out[12 + 12 * i..24 + 12 * i].copy_from_slice(e);
    }
}

/// Blocks a tree over `extents` extents needs outside the inode.
pub fn tree_blocks(extents: usize) -> usize {
    let mut count = extents;
    let mut total = 0;
    while count > ROOT_ENTRIES {
        count = count.div_ceil(BLOCK_ENTRIES);
        total += count;
    }
    total
}

/// The extent tree of a file made of `extents` (in logical order), with its tree blocks at
/// `blocks` (exactly [`tree_blocks`] of them, leaves first, then each level up).
///
/// Returns the inode's 60-byte `i_block` and the tree blocks as `(block, bytes)`, each with
/// the tail checksum: crc32c(inode seed, header and all `eh_max` slots).
pub fn tree(extents: &[Extent], blocks: &[u64], seed: u32) -> ([u8; 60], Vec<TreeBlock>) {
    debug_assert_eq!(blocks.len(), tree_blocks(extents.len()));
    let mut level: Vec<(u32, [u8; 12])> =
        extents.iter().map(|e| (e.logical, leaf_entry(e))).collect();
    let mut depth = 0u16;
    let mut out = Vec::with_capacity(blocks.len());
    let mut next_block = blocks.iter();
    while level.len() > ROOT_ENTRIES {
        let mut up = Vec::with_capacity(level.len().div_ceil(BLOCK_ENTRIES));
        for chunk in level.chunks(BLOCK_ENTRIES) {
            let at = *next_block.next().expect("tree_blocks() blocks");
            let mut block = Box::new([0u8; 4096]);
            let entries: Vec<[u8; 12]> = chunk.iter().map(|(_, e)| *e).collect();
            node(&mut block[..], BLOCK_ENTRIES, depth, &entries);
            let tail = 12 + 12 * BLOCK_ENTRIES;
            let sum = csum::raw(seed, &block[..tail]);
            block[tail..tail + 4].copy_from_slice(&sum.to_le_bytes());
            out.push((at, block));
            up.push((chunk[0].0, index_entry(chunk[0].0, at)));
        }
        level = up;
        depth += 1;
    }
    let mut i_block = [0u8; 60];
    let entries: Vec<[u8; 12]> = level.iter().map(|(_, e)| *e).collect();
    node(&mut i_block, ROOT_ENTRIES, depth, &entries);
    (i_block, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_tree_golden_bytes() {
        let runs = [
            Run { start: 8, len: 10 },
            Run {
                start: 0x1_0000_0013,
                len: 15,
            },
        ];
        let (b, blocks) = tree(&from_runs(&runs), &[], 0);
        assert!(blocks.is_empty());
        let golden: [u8; 36] = [
            0x0a, 0xf3, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, //
            0, 0, 0, 0, 10, 0, 0, 0, 8, 0, 0, 0, //
            10, 0, 0, 0, 15, 0, 1, 0, 0x13, 0, 0, 0,
        ];
        assert_eq!(&b[..36], &golden);
        assert!(b[36..].iter().all(|&x| x == 0));
    }

    #[test]
    fn leaf_tree_points_at_its_block() {
        let runs: Vec<Run> = (0..6)
            .map(|i| Run {
                start: 100 * i + 50,
                len: 3,
            })
            .collect();
        let (b, blocks) = tree(&from_runs(&runs), &[0x2_0000_0007], 7);
        assert_eq!(&b[..12], &[0x0a, 0xf3, 1, 0, 4, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(&b[12..24], &[0, 0, 0, 0, 7, 0, 0, 0, 2, 0, 0, 0]);
        let (at, leaf) = &blocks[0];
        assert_eq!(*at, 0x2_0000_0007);
        assert_eq!(&leaf[..8], &[0x0a, 0xf3, 6, 0, 0x54, 0x01, 0, 0]);
        // The last entry maps logical block 15.
        assert_eq!(&leaf[72..76], &15u32.to_le_bytes());
        assert_eq!(&leaf[4092..], &csum::raw(7, &leaf[..4092]).to_le_bytes());
    }

    #[test]
    fn block_counts_per_depth() {
        assert_eq!(tree_blocks(4), 0);
        assert_eq!(tree_blocks(5), 1);
        assert_eq!(tree_blocks(4 * 340), 4);
        // Five leaves need an index block above them: depth 2.
        assert_eq!(tree_blocks(4 * 340 + 1), 5 + 1);
        assert_eq!(tree_blocks(5 * 340 * 340), 5 * 340 + 5 + 1);
    }

    #[test]
    fn depth_two_tree_indexes_its_leaves() {
        let n = 4 * 340 + 1;
        let extents: Vec<Extent> = (0..n)
            .map(|i| Extent {
                logical: 2 * i as u32,
                start: 1000 + 2 * i as u64,
                len: 1,
            })
            .collect();
        let blocks: Vec<u64> = (0..6).map(|i| 10 + i).collect();
        let (root, out) = tree(&extents, &blocks, 0);
        assert_eq!(&root[..8], &[0x0a, 0xf3, 1, 0, 4, 0, 2, 0]);
        assert_eq!(&root[16..20], &15u32.to_le_bytes()); // the index block
        let (at, index) = &out[5];
        assert_eq!(*at, 15);
        assert_eq!(&index[..8], &[0x0a, 0xf3, 5, 0, 0x54, 0x01, 1, 0]);
        // The fifth leaf starts at extent 1360, logical block 2720.
        assert_eq!(&index[12 + 48..12 + 52], &2720u32.to_le_bytes());
        assert_eq!(&index[12 + 52..12 + 56], &14u32.to_le_bytes());
        assert_eq!(&out[4].1[..8], &[0x0a, 0xf3, 1, 0, 0x54, 0x01, 0, 0]);
    }
}
