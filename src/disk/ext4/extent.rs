//! Extent trees (`struct ext4_extent_header`, `ext4_extent`, `ext4_extent_idx`; 12 bytes each,
//! little-endian), as the journal inode needs them.

use super::csum;
use super::layout::Run;

/// `eh_magic`.
pub const MAGIC: u16 = 0xF30A;

/// Encodes an extent header: `eh_entries` used of `eh_max`, at `eh_depth` (0 = leaf).
fn header(entries: usize, max: usize, depth: u16) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    b[2..4].copy_from_slice(&(entries as u16).to_le_bytes());
    b[4..6].copy_from_slice(&(max as u16).to_le_bytes());
    b[6..8].copy_from_slice(&depth.to_le_bytes());
    b
}

/// Encodes a leaf entry: logical block `ee_block` maps `ee_len` blocks from `ee_start_hi/lo`.
fn leaf(logical: u32, run: Run) -> [u8; 12] {
    let mut b = [0u8; 12];
    b[0..4].copy_from_slice(&logical.to_le_bytes());
    b[4..6].copy_from_slice(&(run.len as u16).to_le_bytes());
    b[6..8].copy_from_slice(&((run.start >> 32) as u16).to_le_bytes());
    b[8..12].copy_from_slice(&(run.start as u32).to_le_bytes());
    b
}

/// Writes a header and entries into `out`, which is `12 * (max + 1)` bytes or more.
fn node(out: &mut [u8], max: usize, depth: u16, entries: &[[u8; 12]]) {
    out[..12].copy_from_slice(&header(entries.len(), max, depth));
    for (i, e) in entries.iter().enumerate() {
        out[12 + 12 * i..24 + 12 * i].copy_from_slice(e);
    }
}

fn leaves(runs: &[Run]) -> Vec<[u8; 12]> {
    let mut logical = 0u32;
    runs.iter()
        .map(|&r| {
            let e = leaf(logical, r);
            logical += r.len as u32;
            e
        })
        .collect()
}

/// The extent tree of a file made of `runs` (in logical order).
///
/// Returns the inode's 60-byte `i_block` and, when the runs do not fit its four slots, the
/// contents of the one leaf block at `leaf_block` that holds them (depth 1). The caller
/// guarantees at most 340 runs, each at most 32768 blocks.
pub fn tree(
    runs: &[Run],
    leaf_block: Option<u64>,
    seed: u32,
) -> ([u8; 60], Option<Box<[u8; 4096]>>) {
    let mut i_block = [0u8; 60];
    match leaf_block {
        None => {
            node(&mut i_block, 4, 0, &leaves(runs));
            (i_block, None)
        }
        Some(at) => {
            let mut index = [0u8; 12];
            index[4..8].copy_from_slice(&(at as u32).to_le_bytes());
            index[8..10].copy_from_slice(&((at >> 32) as u16).to_le_bytes());
            node(&mut i_block, 4, 1, &[index]);
            let mut block = Box::new([0u8; 4096]);
            let max = (4096 - 12) / 12;
            node(&mut block[..], max, 0, &leaves(runs));
            // struct ext4_extent_tail: crc32c(inode seed, header and all eh_max slots).
            let tail = 12 + 12 * max;
            let sum = csum::raw(seed, &block[..tail]);
            block[tail..tail + 4].copy_from_slice(&sum.to_le_bytes());
            (i_block, Some(block))
        }
    }
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
        let (b, leaf) = tree(&runs, None, 0);
        assert!(leaf.is_none());
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
        let (b, leaf) = tree(&runs, Some(0x2_0000_0007), 7);
        assert_eq!(&b[..12], &[0x0a, 0xf3, 1, 0, 4, 0, 1, 0, 0, 0, 0, 0]);
        assert_eq!(&b[12..24], &[0, 0, 0, 0, 7, 0, 0, 0, 2, 0, 0, 0]);
        let leaf = leaf.unwrap();
        assert_eq!(&leaf[..8], &[0x0a, 0xf3, 6, 0, 0x54, 0x01, 0, 0]);
        // The last entry maps logical block 15.
        assert_eq!(&leaf[72..76], &15u32.to_le_bytes());
        assert_eq!(&leaf[4092..], &csum::raw(7, &leaf[..4092]).to_le_bytes());
    }
}
