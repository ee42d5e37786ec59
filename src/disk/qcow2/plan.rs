//! The layout of a new image, computed without touching a file.
//!
//! The file is a run of clusters, each used once:
//! `0 header | refcount table | L1 | refcount blocks | L2 tables | data`.
//! The refcount blocks must count every cluster, themselves and the refcount table included, so
//! their number is found by iterating to a fixed point.

use super::{CLUSTER_SIZE, MAX_VIRTUAL_SIZE, Qcow2Error};

/// 8-byte entries in one L1 or L2 table cluster, or in one refcount table cluster.
const ENTRIES_PER_TABLE: u64 = CLUSTER_SIZE / 8;
/// Guest bytes one L2 table maps (512 MiB at 64 KiB clusters).
const BYTES_PER_L2: u64 = ENTRIES_PER_TABLE * CLUSTER_SIZE;
/// 16-bit refcounts (refcount_order 4) in one refcount block.
const REFCOUNTS_PER_BLOCK: u64 = CLUSTER_SIZE / 2;

/// Where every structure of a new image goes. Offsets are in bytes and cluster-aligned; tables
/// are contiguous, so the n-th L2 table or data cluster sits `n * CLUSTER_SIZE` after the first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The disk size the guest sees.
    pub virtual_size: u64,
    /// Entries in the L1 table: one per 512 MiB of virtual disk.
    pub l1_size: u32,
    /// Offset of the refcount table (cluster 1).
    pub refcount_table_offset: u64,
    /// Clusters of the refcount table.
    pub refcount_table_clusters: u32,
    /// Offset of the L1 table.
    pub l1_table_offset: u64,
    /// Clusters of the L1 table.
    pub l1_clusters: u64,
    /// Offset of the first refcount block.
    pub refcount_blocks_offset: u64,
    /// Number of refcount blocks; they cover all `host_clusters`.
    pub refcount_blocks: u64,
    /// Offset of the first L2 table.
    pub l2_tables_offset: u64,
    /// The L1 index each L2 table serves, ascending.
    pub l2_tables: Vec<u64>,
    /// Offset of the first data cluster.
    pub data_offset: u64,
    /// The guest cluster index each data cluster holds, ascending.
    pub data_clusters: Vec<u64>,
    /// Clusters in the file; every one has refcount 1.
    pub host_clusters: u64,
}

impl Layout {
    /// The length of the file in bytes.
    pub fn file_size(&self) -> u64 {
        self.host_clusters * CLUSTER_SIZE
    }
}

/// Refuses sizes the writer cannot represent or QEMU would not accept.
pub(super) fn check_virtual_size(size: u64) -> Result<(), Qcow2Error> {
    let reason = if size == 0 {
        "it must not be zero"
    } else if !size.is_multiple_of(512) {
        "it must be a multiple of 512 bytes"
    } else if size > MAX_VIRTUAL_SIZE {
        "it must be at most 1 PiB"
    } else {
        return Ok(());
    };
    Err(Qcow2Error::InvalidSize { size, reason })
}

/// Plans an image of `virtual_size` bytes in which the guest clusters `data_clusters` (indices
/// of 64 KiB clusters, in any order, duplicates allowed) hold data and all others are
/// unallocated.
pub fn plan_layout(virtual_size: u64, mut data_clusters: Vec<u64>) -> Result<Layout, Qcow2Error> {
    check_virtual_size(virtual_size)?;
    data_clusters.sort_unstable();
    data_clusters.dedup();
    let guest_clusters = virtual_size.div_ceil(CLUSTER_SIZE);
    if let Some(&last) = data_clusters.last()
        && last >= guest_clusters
    {
        return Err(Qcow2Error::ContentsTooLarge {
            contents: (last + 1) * CLUSTER_SIZE,
            size: virtual_size,
        });
    }

    // At most 2^50 / 2^29 = 2^21 entries, so this fits in u32.
    let l1_size = virtual_size.div_ceil(BYTES_PER_L2);
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER_SIZE);
    let mut l2_tables: Vec<u64> = data_clusters
        .iter()
        .map(|c| c / ENTRIES_PER_TABLE)
        .collect();
    l2_tables.dedup();

    let fixed = 1 + l1_clusters + l2_tables.len() as u64 + data_clusters.len() as u64;
    let (mut refcount_blocks, mut refcount_table_clusters) = (0, 0);
    loop {
        let total = fixed + refcount_table_clusters + refcount_blocks;
        let blocks = total.div_ceil(REFCOUNTS_PER_BLOCK);
        let table = blocks.div_ceil(ENTRIES_PER_TABLE);
        if (blocks, table) == (refcount_blocks, refcount_table_clusters) {
            break;
        }
        (refcount_blocks, refcount_table_clusters) = (blocks, table);
    }

    let refcount_table_offset = CLUSTER_SIZE;
    let l1_table_offset = refcount_table_offset + refcount_table_clusters * CLUSTER_SIZE;
    let refcount_blocks_offset = l1_table_offset + l1_clusters * CLUSTER_SIZE;
    let l2_tables_offset = refcount_blocks_offset + refcount_blocks * CLUSTER_SIZE;
    let data_offset = l2_tables_offset + l2_tables.len() as u64 * CLUSTER_SIZE;
    Ok(Layout {
        virtual_size,
        l1_size: l1_size as u32,
        refcount_table_offset,
        refcount_table_clusters: refcount_table_clusters as u32,
        l1_table_offset,
        l1_clusters,
        refcount_blocks_offset,
        refcount_blocks,
        l2_tables_offset,
        l2_tables,
        data_offset,
        host_clusters: fixed + refcount_table_clusters + refcount_blocks,
        data_clusters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: u64 = CLUSTER_SIZE;

    #[test]
    fn empty_64k_image() {
        let l = plan_layout(64 << 10, vec![]).unwrap();
        // header, refcount table, L1, one refcount block.
        let expected = Layout {
            virtual_size: 64 << 10,
            l1_size: 1,
            refcount_table_offset: C,
            refcount_table_clusters: 1,
            l1_table_offset: 2 * C,
            l1_clusters: 1,
            refcount_blocks_offset: 3 * C,
            refcount_blocks: 1,
            l2_tables_offset: 4 * C,
            l2_tables: vec![],
            data_offset: 4 * C,
            data_clusters: vec![],
            host_clusters: 4,
        };
        assert_eq!(l, expected);
        assert_eq!(l.file_size(), 256 << 10);
    }

    #[test]
    fn ten_gib_image_with_data() {
        // Clusters 0 and 8191 share L2 table 0; 8192 needs table 1; the last cluster of 10 GiB
        // (163839) is in table 19 (= 20 L1 entries of 512 MiB).
        let l = plan_layout(10 << 30, vec![8192, 0, 163_839, 8191, 0]).unwrap();
        assert_eq!(l.l1_size, 20);
        assert_eq!(l.l1_clusters, 1);
        assert_eq!(l.refcount_table_clusters, 1);
        assert_eq!(l.refcount_blocks, 1);
        assert_eq!(l.l2_tables, vec![0, 1, 19]);
        assert_eq!(l.data_clusters, vec![0, 8191, 8192, 163_839]);
        assert_eq!(l.l2_tables_offset, 4 * C);
        assert_eq!(l.data_offset, 7 * C);
        // header + reftable + L1 + refblock + 3 L2 + 4 data
        assert_eq!(l.host_clusters, 11);
    }

    #[test]
    fn empty_64_tib_image() {
        let l = plan_layout(64 << 40, vec![]).unwrap();
        // 64 TiB / 512 MiB = 131072 L1 entries = 1 MiB = 16 clusters.
        assert_eq!(l.l1_size, 131_072);
        assert_eq!(l.l1_clusters, 16);
        assert_eq!(l.l1_table_offset, 2 * C);
        assert_eq!(l.refcount_blocks_offset, 18 * C);
        assert_eq!(l.refcount_blocks, 1);
        assert_eq!(l.host_clusters, 19);
    }

    #[test]
    fn refcount_blocks_reach_a_fixed_point() {
        // header + L1 + 4 L2 + 32760 data = 32766 clusters; with the refcount table and one
        // refcount block that is exactly the 32768 clusters one block counts.
        let l = plan_layout(4 << 30, (0..32_760).collect()).unwrap();
        assert_eq!(l.l2_tables, vec![0, 1, 2, 3]);
        assert_eq!((l.refcount_blocks, l.host_clusters), (1, 32_768));
        // One more data cluster needs a second block, which counts itself too.
        let l = plan_layout(4 << 30, (0..32_761).collect()).unwrap();
        assert_eq!((l.refcount_blocks, l.host_clusters), (2, 32_770));
        assert_eq!(l.data_offset, (1 + 1 + 1 + 2 + 4) * C);
    }

    #[test]
    fn invalid_sizes_and_data_are_refused() {
        for size in [0, 1000, MAX_VIRTUAL_SIZE + 512] {
            assert!(matches!(
                plan_layout(size, vec![]),
                Err(Qcow2Error::InvalidSize { .. })
            ));
        }
        assert!(plan_layout(MAX_VIRTUAL_SIZE, vec![]).is_ok());
        // A 100 KiB disk has clusters 0 and 1 (the second partly past the end) but no 2.
        assert!(plan_layout(100 << 10, vec![1]).is_ok());
        assert!(matches!(
            plan_layout(100 << 10, vec![2]),
            Err(Qcow2Error::ContentsTooLarge { .. })
        ));
    }
}
