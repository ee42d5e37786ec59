//! The pure planner: from a device size to every block the new filesystem uses.
//!
//! [`plan`] repeats mke2fs's geometry arithmetic (`ext2fs_initialize`, e2fsprogs 1.47) for
//! 4 KiB blocks, so block, inode and reserved counts equal those of
//! `mkfs.ext4 -b 4096 -O ^resize_inode` on a device of the same size. Placement is partly our
//! own: each flex group's bitmaps and inode tables form one chunk, and the chunks take the
//! first free space from the start of the device; the root directory and `lost+found` take
//! the first free blocks after them, and the journal starts at mke2fs's goal. Nothing here
//! touches a device; [`super::format`] writes what the plan says.

use super::Ext4Error;

/// Bytes per block: always 4 KiB (mke2fs uses 1 KiB blocks below 512 MiB; we do not).
pub const BLOCK_SIZE: u64 = 4096;
/// Blocks per group: one block bitmap's worth of bits (mke2fs may take fewer, see [`plan`]).
pub const BLOCKS_PER_GROUP: u64 = BLOCK_SIZE * 8;
/// Bytes per on-disk inode.
pub const INODE_SIZE: u64 = 256;
/// Bytes per group descriptor (the 64bit feature's size).
pub const DESC_SIZE: u64 = 64;
/// Groups per flex group (`s_log_groups_per_flex` = 4).
pub const FLEX_GROUPS: u64 = 16;
/// The smallest filesystem, in blocks: mke2fs refuses a journal below 2048 blocks (8 MiB).
pub const MIN_BLOCKS: u64 = 2048;
/// The largest filesystem, in blocks: 64 TiB. Beyond it the group descriptor table would need
/// `meta_bg`, which this formatter does not implement.
pub const MAX_BLOCKS: u64 = 1 << 34;
/// Blocks in `lost+found` (16 KiB, as mke2fs sizes it).
pub const LOST_FOUND_BLOCKS: u64 = 4;
/// Longest run one initialized extent can describe.
pub const MAX_EXTENT_LEN: u64 = 32768;
/// Extents one 4 KiB extent leaf block holds: (4096 - 12-byte header - 4-byte tail) / 12.
pub const LEAF_EXTENTS: usize = 340;

/// `bg_flags`: the inode bitmap and table are not initialised (the kernel computes them).
pub const BG_INODE_UNINIT: u16 = 0x1;
/// `bg_flags`: the block bitmap is not initialised (the kernel computes it).
pub const BG_BLOCK_UNINIT: u16 = 0x2;
/// `bg_flags`: the inode table reads as zeros.
pub const BG_ITABLE_ZEROED: u16 = 0x4;

/// A run of physical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    /// First block.
    pub start: u64,
    /// Number of blocks.
    pub len: u64,
}

impl Run {
    /// The block after the run.
    pub fn end(self) -> u64 {
        self.start + self.len
    }
}

/// One block group of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// First block of the group.
    pub start: u64,
    /// Blocks in the group (less than [`Layout::blocks_per_group`] only for the last one).
    pub len: u64,
    /// Whether the group starts with a superblock and group descriptor table copy.
    pub has_super: bool,
    /// Where this group's block bitmap lives (in its flex group's first group).
    pub block_bitmap: u64,
    /// Where this group's inode bitmap lives.
    pub inode_bitmap: u64,
    /// First block of this group's inode table.
    pub inode_table: u64,
    /// Blocks of this group nobody uses.
    pub free_blocks: u64,
    /// `bg_flags`.
    pub flags: u16,
}

/// The journal inode's blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalPlan {
    /// Journal length in blocks (mke2fs's size table).
    pub blocks: u64,
    /// Logical block 0 onwards, as extents no longer than [`MAX_EXTENT_LEN`].
    pub extents: Vec<Run>,
    /// The extent leaf block, when more than the inode's four extents are needed.
    pub leaf: Option<u64>,
}

/// Everything about the new filesystem that is decided before writing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Blocks in the filesystem (the device's whole blocks, less a too-small last group).
    pub blocks: u64,
    /// Blocks reserved for root (5%).
    pub reserved_blocks: u64,
    /// Blocks per group: [`BLOCKS_PER_GROUP`] except for a few small sizes.
    pub blocks_per_group: u64,
    /// Inodes per group (a multiple of 8 that fills whole inode table blocks).
    pub inodes_per_group: u64,
    /// Blocks of one group's inode table.
    pub inode_table_blocks: u64,
    /// Blocks of the group descriptor table.
    pub desc_blocks: u64,
    /// The groups, in order.
    pub groups: Vec<Group>,
    /// The journal (inode 8).
    pub journal: JournalPlan,
    /// The root directory's single block.
    pub root_block: u64,
    /// First of `lost+found`'s [`LOST_FOUND_BLOCKS`] contiguous blocks.
    pub lost_found_block: u64,
    /// Every used block, as sorted, disjoint runs.
    pub used: Vec<Run>,
    /// Blocks taken by filesystem metadata and the journal's data (`s_overhead_clusters`):
    /// everything the fresh filesystem uses except the directories' blocks and the journal's
    /// extent leaf, which mke2fs does not count either.
    pub overhead: u64,
}

impl Layout {
    /// Total inodes.
    pub fn inodes(&self) -> u64 {
        self.inodes_per_group * self.groups.len() as u64
    }

    /// Free blocks over all groups.
    pub fn free_blocks(&self) -> u64 {
        self.groups.iter().map(|g| g.free_blocks).sum()
    }

    /// Marks `runs` (sorted, disjoint, free until now) used and recounts the groups.
    pub fn add_used(&mut self, runs: &[Run]) {
        self.used.extend_from_slice(runs);
        self.used.sort_by_key(|r| r.start);
        self.recount();
    }

    /// Free counts and flags from [`Layout::used`]. A group may stay BLOCK_UNINIT only if all
    /// it holds is its own superblock copy (that is what the kernel reconstructs); the last
    /// group never does, because its bitmap needs the padding bits.
    fn recount(&mut self) {
        let last = self.groups.len() - 1;
        let super_len = 1 + self.desc_blocks;
        for (g, group) in self.groups.iter_mut().enumerate() {
            let used: u64 = used_in(&self.used, group.start, group.start + group.len)
                .map(|r| r.len)
                .sum();
            group.free_blocks = group.len - used;
            let own_super = if group.has_super { super_len } else { 0 };
            group.flags = BG_ITABLE_ZEROED;
            if g != 0 {
                group.flags |= BG_INODE_UNINIT;
            }
            if g != 0 && g != last && used == own_super {
                group.flags |= BG_BLOCK_UNINIT;
            }
        }
    }

    /// The used runs that overlap blocks `[start, end)`, clipped to it.
    pub fn used_in(&self, start: u64, end: u64) -> impl Iterator<Item = Run> + '_ {
        used_in(&self.used, start, end)
    }
}

/// The runs of sorted, disjoint `runs` that overlap `[start, end)`, clipped to it.
fn used_in(runs: &[Run], start: u64, end: u64) -> impl Iterator<Item = Run> + '_ {
    let first = runs.partition_point(|r| r.end() <= start);
    runs[first..]
        .iter()
        .take_while(move |r| r.start < end)
        .map(move |r| {
            let s = r.start.max(start);
            Run {
                start: s,
                len: r.end().min(end) - s,
            }
        })
}

/// Where mke2fs starts looking for journal blocks (`get_midpoint_journal_block`): the group
/// holding the middle block, moved to the start of its flex group when past the first, then
/// whichever of it and its neighbours has the most free blocks.
fn journal_goal(groups: &[Group], used: &[Run], blocks: u64, blocks_per_group: u64) -> u64 {
    let free = |g: usize| {
        let group = &groups[g];
        group.len
            - used_in(used, group.start, group.start + group.len)
                .map(|r| r.len)
                .sum::<u64>()
    };
    let n = groups.len();
    let mut group = (blocks / 2 / blocks_per_group) as usize;
    let start = if group > FLEX_GROUPS as usize {
        group &= !(FLEX_GROUPS as usize - 1);
        while group < n && free(group) == 0 {
            group += 1;
        }
        if group == n {
            group = 0;
        }
        group
    } else {
        group.saturating_sub(1)
    };
    let end = if group + 1 < n { group + 1 } else { group };
    let mut best = start;
    for g in start + 1..=end {
        if free(g) > free(best) {
            best = g;
        }
    }
    groups[best].start
}

/// Whether group `g` holds a superblock copy under `sparse_super`: groups 0 and 1 and the
/// powers of 3, 5 and 7.
pub fn has_super(g: u64) -> bool {
    fn power_of(mut g: u64, base: u64) -> bool {
        while g > 1 && g.is_multiple_of(base) {
            g /= base;
        }
        g == 1
    }
    g <= 1 || power_of(g, 3) || power_of(g, 5) || power_of(g, 7)
}

/// Bytes of device per inode, by mke2fs.conf's size class (`small` below 512 MiB, `default`
/// below 4 TiB, `big` below 16 TiB, `huge` above).
fn inode_ratio(blocks: u64) -> u64 {
    const MIB: u64 = (1 << 20) / BLOCK_SIZE;
    if blocks < 512 * MIB {
        4096
    } else if blocks < 4 * 1024 * 1024 * MIB {
        16384
    } else if blocks < 16 * 1024 * 1024 * MIB {
        32768
    } else {
        65536
    }
}

/// Journal blocks for a filesystem of `blocks` blocks (`ext2fs_default_journal_size`):
/// (filesystems below this many blocks, get this many journal blocks).
const JOURNAL_TABLE: [(u64, u64); 7] = [
    (32_768, 1024),        // < 128 MiB: 4 MiB
    (262_144, 4096),       // < 1 GiB: 16 MiB
    (524_288, 8192),       // < 2 GiB: 32 MiB
    (4_194_304, 16_384),   // < 16 GiB: 64 MiB
    (8_388_608, 32_768),   // < 32 GiB: 128 MiB
    (16_777_216, 65_536),  // < 64 GiB: 256 MiB
    (33_554_432, 131_072), // < 128 GiB: 512 MiB
];

/// Journal blocks for a filesystem of `blocks` blocks: [`JOURNAL_TABLE`], else 1 GiB.
pub fn journal_blocks(blocks: u64) -> u64 {
    JOURNAL_TABLE
        .iter()
        .find(|(below, _)| blocks < *below)
        .map_or(262_144, |(_, journal)| *journal)
}

/// The counts mke2fs settles on before placing anything.
struct Geometry {
    blocks: u64,
    blocks_per_group: u64,
    reserved_blocks: u64,
    groups: u64,
    inodes_per_group: u64,
    inode_table_blocks: u64,
    desc_blocks: u64,
}

/// mke2fs's arithmetic: inode count from the size class, rounded to fill inode table blocks;
/// a last group too small for its own metadata plus 50 blocks is dropped. When dropping it
/// leaves more inodes per group than a bitmap block can track (small sizes, one inode per
/// block), mke2fs shrinks the groups by 8 blocks and starts over; so do we.
fn geometry(device_blocks: u64) -> Result<Geometry, Ext4Error> {
    let size = device_blocks * BLOCK_SIZE;
    if device_blocks < MIN_BLOCKS {
        return Err(Ext4Error::TooSmall {
            size,
            min: MIN_BLOCKS * BLOCK_SIZE,
        });
    }
    if device_blocks > MAX_BLOCKS {
        return Err(Ext4Error::TooLarge {
            size,
            max: MAX_BLOCKS * BLOCK_SIZE,
        });
    }
    let inodes_wanted = (device_blocks * BLOCK_SIZE / inode_ratio(device_blocks)).max(12);
    // mke2fs computes the reserve in floating point; repeat it exactly.
    let reserved0 = (5.0 * device_blocks as f64 / 100.0) as u64;
    let mut blocks = device_blocks;
    let mut reserved_blocks = reserved0;
    let mut bpg = BLOCKS_PER_GROUP;
    loop {
        let groups = blocks.div_ceil(bpg);
        let desc_blocks = (groups * DESC_SIZE).div_ceil(BLOCK_SIZE);
        let per_block = BLOCK_SIZE / INODE_SIZE;
        let ipg = inodes_wanted.div_ceil(groups);
        if ipg > BLOCK_SIZE * 8 {
            // mke2fs keeps the reserve it last computed here, and so do we.
            bpg -= 8;
            blocks = device_blocks;
            if bpg < 256 {
                return Err(Ext4Error::Layout { size });
            }
            continue;
        }
        let ipg = ipg.min(65536 - per_block);
        let ipg = (ipg.div_ceil(per_block) * per_block) & !7;
        let inode_table_blocks = ipg.div_ceil(per_block);
        let mut overhead = 2 + inode_table_blocks;
        if has_super(groups - 1) {
            overhead += 1 + desc_blocks;
        }
        let rem = blocks % bpg;
        if groups == 1 && rem != 0 && rem < overhead {
            return Err(Ext4Error::TooSmall {
                size,
                min: MIN_BLOCKS * BLOCK_SIZE,
            });
        }
        if rem != 0 && rem < overhead + 50 {
            let ratio = 100.0 * reserved0 as f64 / device_blocks as f64;
            blocks -= rem;
            reserved_blocks = (ratio * blocks as f64 / 100.0) as u64;
            continue;
        }
        return Ok(Geometry {
            blocks,
            blocks_per_group: bpg,
            reserved_blocks,
            groups,
            inodes_per_group: ipg,
            inode_table_blocks,
            desc_blocks,
        });
    }
}

/// Hands out free blocks in increasing order, skipping the static metadata runs.
pub(super) struct Cursor<'a> {
    fixed: &'a [Run],
    /// Index of the first fixed run ending after `next`.
    idx: usize,
    next: u64,
    end: u64,
}

impl<'a> Cursor<'a> {
    /// A cursor over the free blocks of `[from, end)`; `fixed` is sorted.
    pub(super) fn new(fixed: &'a [Run], from: u64, end: u64) -> Self {
        Self {
            fixed,
            idx: fixed.partition_point(|r| r.end() <= from),
            next: from,
            end,
        }
    }

    /// The next run of at most `want` free blocks.
    pub(super) fn take(&mut self, want: u64) -> Option<Run> {
        loop {
            while self.idx < self.fixed.len() && self.fixed[self.idx].end() <= self.next {
                self.idx += 1;
            }
            let limit = match self.fixed.get(self.idx) {
                Some(r) if r.start <= self.next => {
                    self.next = r.end();
                    continue;
                }
                Some(r) => r.start,
                None => self.end,
            };
            if self.next >= limit {
                return None;
            }
            let run = Run {
                start: self.next,
                len: want.min(limit - self.next),
            };
            self.next = run.end();
            return Some(run);
        }
    }

    /// `len` contiguous free blocks, if the next free run is long enough.
    fn take_contiguous(&mut self, len: u64) -> Option<u64> {
        loop {
            let run = self.take(len)?;
            if run.len == len {
                return Some(run.start);
            }
        }
    }
}

/// Plans a filesystem for a device of `device_bytes` bytes (whole 4 KiB blocks only).
pub fn plan(device_bytes: u64) -> Result<Layout, Ext4Error> {
    let geo = geometry(device_bytes / BLOCK_SIZE)?;
    let group_count = geo.groups;
    let not_fit = || Ext4Error::Layout { size: device_bytes };

    // Superblock and descriptor copies.
    let mut fixed = Vec::new();
    for g in (0..group_count).filter(|&g| has_super(g)) {
        fixed.push(Run {
            start: g * geo.blocks_per_group,
            len: 1 + geo.desc_blocks,
        });
    }

    // Each flex group's metadata chunk (16 block bitmaps, 16 inode bitmaps, 16 inode tables)
    // goes in the first free space from the start of the device, not in the flex group's first
    // group as mke2fs puts it. Only the groups holding chunks then need written bitmaps: a few
    // contiguous blocks near the start instead of one block every 2 GiB.
    let mut chunks = Vec::new();
    let mut cursor = Cursor::new(&fixed, 0, geo.blocks);
    for first in (0..group_count).step_by(FLEX_GROUPS as usize) {
        let members = FLEX_GROUPS.min(group_count - first);
        let len = members * (2 + geo.inode_table_blocks);
        let start = cursor.take_contiguous(len).ok_or_else(not_fit)?;
        chunks.push(Run { start, len });
    }
    let mut groups = Vec::with_capacity(usize::try_from(group_count).map_err(|_| not_fit())?);
    for g in 0..group_count {
        let start = g * geo.blocks_per_group;
        let chunk = chunks[(g / FLEX_GROUPS) as usize];
        let i = g % FLEX_GROUPS;
        let members = chunk.len / (2 + geo.inode_table_blocks);
        groups.push(Group {
            start,
            len: (geo.blocks - start).min(geo.blocks_per_group),
            has_super: has_super(g),
            block_bitmap: chunk.start + i,
            inode_bitmap: chunk.start + members + i,
            inode_table: chunk.start + 2 * members + i * geo.inode_table_blocks,
            free_blocks: 0,
            flags: 0,
        });
    }
    fixed.extend(chunks);
    fixed.sort_by_key(|r| r.start);

    // Root and lost+found take the first free blocks.
    let (root_block, lost_found_block) = {
        let mut cursor = Cursor::new(&fixed, 0, geo.blocks);
        let root = cursor.take_contiguous(1).ok_or_else(not_fit)?;
        let lost_found = cursor
            .take_contiguous(LOST_FOUND_BLOCKS)
            .ok_or_else(not_fit)?;
        (root, lost_found)
    };
    fixed.push(Run {
        start: root_block,
        len: 1,
    });
    fixed.push(Run {
        start: lost_found_block,
        len: LOST_FOUND_BLOCKS,
    });
    fixed.sort_by_key(|r| r.start);

    // The journal: the first free blocks from mke2fs's goal on, wrapping around to block 0;
    // its extent leaf, if more than four extents are needed, right after it.
    let journal_len = journal_blocks(geo.blocks);
    let goal = journal_goal(&groups, &fixed, geo.blocks, geo.blocks_per_group);
    let mut extents: Vec<Run> = Vec::new();
    let mut missing = journal_len;
    let mut leaf = None;
    for (from, to) in [(goal, geo.blocks), (0, goal)] {
        let mut cursor = Cursor::new(&fixed, from, to);
        while missing > 0 {
            let Some(run) = cursor.take(missing.min(MAX_EXTENT_LEN)) else {
                break;
            };
            missing -= run.len;
            match extents.last_mut() {
                Some(last) if last.end() == run.start && last.len + run.len <= MAX_EXTENT_LEN => {
                    last.len += run.len
                }
                _ => extents.push(run),
            }
        }
        if missing == 0 {
            if extents.len() > 4 {
                leaf = Some(cursor.take_contiguous(1).ok_or_else(not_fit)?);
            }
            break;
        }
    }
    if missing > 0 || extents.len() > LEAF_EXTENTS {
        return Err(not_fit());
    }

    let mut used = fixed;
    used.extend(extents.iter().copied());
    used.extend(leaf.map(|start| Run { start, len: 1 }));
    used.sort_by_key(|r| r.start);

    let mut layout = Layout {
        blocks: geo.blocks,
        reserved_blocks: geo.reserved_blocks,
        blocks_per_group: geo.blocks_per_group,
        inodes_per_group: geo.inodes_per_group,
        inode_table_blocks: geo.inode_table_blocks,
        desc_blocks: geo.desc_blocks,
        groups: Vec::new(),
        journal: JournalPlan {
            blocks: journal_len,
            extents,
            leaf,
        },
        root_block,
        lost_found_block,
        used,
        overhead: 0,
    };

    layout.groups = groups;
    layout.recount();
    // mke2fs counts neither the directories' blocks nor the journal's extent leaf.
    let leaf = u64::from(layout.journal.leaf.is_some());
    layout.overhead = layout.blocks - layout.free_blocks() - 1 - LOST_FOUND_BLOCKS - leaf;
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: u64 = BLOCKS_PER_GROUP * BLOCK_SIZE;

    #[test]
    fn sparse_super_groups() {
        let with: Vec<u64> = (0..130).filter(|&g| has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125]);
    }

    /// Counts that `mkfs.ext4 -b 4096 -O ^resize_inode` 1.47.0 printed for these sizes
    /// (blocks, inodes, reserved).
    #[test]
    fn counts_match_mke2fs() {
        for (size, blocks, inodes, reserved) in [
            (8 << 20, 2048, 2048, 102),
            (9 << 20, 2304, 2304, 115),
            // One block past three groups: mke2fs shrinks groups to 32232 blocks.
            (3 * G + BLOCK_SIZE, 98305, 98368, 4835),
            (100 << 20, 25600, 25600, 1280),
            (600 << 20, 153_600, 38400, 7680),
            (1 << 30, 262_144, 65536, 13107),
            (10 << 30, 2_621_440, 655_360, 131_072),
            (1 << 40, 268_435_456, 67_108_864, 13_421_772),
            (5 << 40, 1_342_177_280, 167_772_160, 67_108_864),
        ] {
            let l = plan(size).unwrap();
            assert_eq!(
                (l.blocks, l.inodes(), l.reserved_blocks),
                (blocks, inodes, reserved)
            );
        }
    }

    #[test]
    fn journal_size_table() {
        assert_eq!(journal_blocks(2048), 1024);
        assert_eq!(journal_blocks(262_144), 8192); // 1 GiB: 32 MiB
        assert_eq!(journal_blocks(2_621_440), 16384); // 10 GiB: 64 MiB
        assert_eq!(journal_blocks(268_435_456), 262_144); // 1 TiB: 1 GiB
    }

    #[test]
    fn tiny_last_group_is_dropped() {
        // One block past a group boundary: the lone block cannot hold a group's metadata.
        let l = plan(20 * G + BLOCK_SIZE).unwrap();
        assert_eq!(l.blocks, 20 * BLOCKS_PER_GROUP);
        assert_eq!(l.groups.len(), 20);
    }

    #[test]
    fn limits_are_enforced() {
        assert!(matches!(
            plan(MIN_BLOCKS * BLOCK_SIZE - 1),
            Err(Ext4Error::TooSmall { .. })
        ));
        assert!(plan(MIN_BLOCKS * BLOCK_SIZE).is_ok());
        assert!(matches!(
            plan((MAX_BLOCKS + 1) * BLOCK_SIZE),
            Err(Ext4Error::TooLarge { .. })
        ));
    }

    /// Used runs are disjoint and inside the filesystem, free counts add up, the journal is
    /// whole, and only groups holding nothing but their own superblock copy are BLOCK_UNINIT.
    fn check_invariants(l: &Layout) {
        for w in l.used.windows(2) {
            assert!(w[0].end() <= w[1].start, "overlapping runs {w:?}");
        }
        assert!(l.used.last().unwrap().end() <= l.blocks);
        let used: u64 = l.used.iter().map(|r| r.len).sum();
        assert_eq!(l.free_blocks(), l.blocks - used);
        assert_eq!(
            l.journal.extents.iter().map(|r| r.len).sum::<u64>(),
            l.journal.blocks
        );
        assert!(l.journal.extents.iter().all(|r| r.len <= MAX_EXTENT_LEN));
        assert_eq!(l.journal.leaf.is_some(), l.journal.extents.len() > 4);
        for (g, group) in l.groups.iter().enumerate() {
            let super_len = if group.has_super {
                1 + l.desc_blocks
            } else {
                0
            };
            if group.flags & BG_BLOCK_UNINIT != 0 {
                assert_eq!(group.free_blocks, group.len - super_len, "group {g}");
            }
            assert!(group.inode_table + l.inode_table_blocks <= l.blocks);
        }
        assert_eq!(l.groups.last().unwrap().flags & BG_BLOCK_UNINIT, 0);
    }

    #[test]
    fn plans_are_consistent() {
        for size in [
            MIN_BLOCKS * BLOCK_SIZE,
            100 << 20,
            G + 300 * BLOCK_SIZE,
            17 * G + 12345 * BLOCK_SIZE,
            10 << 30,
            1 << 40,
            MAX_BLOCKS * BLOCK_SIZE,
        ] {
            check_invariants(&plan(size).unwrap());
        }
    }

    #[test]
    fn flex_group_packing() {
        let l = plan(10 << 30).unwrap(); // 80 groups, desc table of 2 blocks
        let chunk = 16 * (2 + 512);
        assert_eq!(l.groups[0].block_bitmap, 3);
        assert_eq!(l.groups[1].block_bitmap, 4);
        assert_eq!(l.groups[0].inode_bitmap, 3 + 16);
        assert_eq!(l.groups[0].inode_table, 3 + 32);
        assert_eq!(l.groups[1].inode_table, 3 + 32 + 512);
        // Three chunks fill group 0; the fourth follows group 1's superblock copy.
        assert_eq!(l.groups[16].block_bitmap, 3 + chunk);
        assert_eq!(l.groups[48].block_bitmap, BLOCKS_PER_GROUP + 3);
        assert_eq!(l.groups[64].block_bitmap, BLOCKS_PER_GROUP + 3 + chunk);
        assert_eq!(l.groups[1].flags & BG_BLOCK_UNINIT, 0);
        assert_ne!(l.groups[16].flags & BG_BLOCK_UNINIT, 0);
        // Root and lost+found in the gap after the third chunk.
        assert_eq!(l.root_block, 3 + 3 * chunk);
        assert_eq!(l.lost_found_block, 3 + 3 * chunk + 1);
        // The 64 MiB journal starts where mke2fs would look first: group 32, the start of
        // the middle group's flex group.
        assert_eq!(
            l.journal.extents,
            [Run {
                start: 32 * BLOCKS_PER_GROUP,
                len: 16384
            }]
        );
        assert_eq!(l.groups[32].flags & BG_BLOCK_UNINIT, 0);
        assert_eq!(l.overhead, l.blocks - l.free_blocks() - 5);
        // Written block bitmaps: groups 0 and 1 (metadata), 32 (journal), 79 (the last).
        let initialised: Vec<usize> = (0..80)
            .filter(|&g| l.groups[g].flags & BG_BLOCK_UNINIT == 0)
            .collect();
        assert_eq!(initialised, [0, 1, 32, 79]);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 64, failure_persistence: None, ..Default::default()
        })]

        /// Any supported size up to 8 TiB plans without error and keeps the invariants.
        #[test]
        fn any_size_plans(size in MIN_BLOCKS * BLOCK_SIZE..8u64 << 40) {
            check_invariants(&plan(size).unwrap());
        }
    }
}
