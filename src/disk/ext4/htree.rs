//! Hashed directory indexes (htree, `dir_index`): the name hash and the index blocks.
//!
//! A large directory is a root index block (logical block 0: `.` and `..`, then
//! `struct dx_root_info` and `dx_entry`s of hash and block), optionally one level of index
//! blocks below it, and leaf blocks holding ordinary entries sorted by hash. Index entries
//! give the lowest hash of the block they point to; bit 0 of that hash says the block
//! continues the previous one's hash (a collision split across two leaves).

use super::csum;
use super::dir::{self, Entry};

/// `dx_root_info.hash_version`: half MD4, as `s_def_hash_version` says (signed characters, as
/// `s_flags` says).
pub const HALF_MD4: u8 = 1;
/// The hash's default seed when `s_hash_seed` is all zeros.
const DEFAULT_SEED: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// The kernel's `str2hashbuf_signed`: up to `4 * out.len()` bytes of `msg`, as signed
/// characters, packed big-end-first into words, padded with the length.
fn str2hashbuf(msg: &[u8], out: &mut [u32; 8]) {
    let mut pad = msg.len() as u32 | ((msg.len() as u32) << 8);
    pad |= pad << 16;
    let mut val = pad;
    let len = msg.len().min(32);
    let mut n = 0;
    for (i, &c) in msg[..len].iter().enumerate() {
        val = (c as i8 as i32 as u32).wrapping_add(val << 8);
        if i % 4 == 3 {
            out[n] = val;
            val = pad;
            n += 1;
        }
    }
    if n < 8 {
        out[n] = val;
        n += 1;
    }
    for word in &mut out[n..] {
        *word = pad;
    }
}

/// The kernel's `half_md4_transform`: three rounds of MD4 over eight words.
fn half_md4_transform(buf: &mut [u32; 4], input: &[u32; 8]) {
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! round {
        ($f:ident, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a
                .wrapping_add($f($b, $c, $d))
                .wrapping_add($x)
                .rotate_left($s);
        };
    }
    let x = input;
    round!(f, a, b, c, d, x[0], 3);
    round!(f, d, a, b, c, x[1], 7);
    round!(f, c, d, a, b, x[2], 11);
    round!(f, b, c, d, a, x[3], 19);
    round!(f, a, b, c, d, x[4], 3);
    round!(f, d, a, b, c, x[5], 7);
    round!(f, c, d, a, b, x[6], 11);
    round!(f, b, c, d, a, x[7], 19);
    round!(g, a, b, c, d, x[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, x[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[6].wrapping_add(K2), 13);
    round!(h, a, b, c, d, x[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, x[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[4].wrapping_add(K3), 15);
    for (w, v) in buf.iter_mut().zip([a, b, c, d]) {
        *w = w.wrapping_add(v);
    }
}

/// The directory hash of `name` (bit 0 clear) with the filesystem's `s_hash_seed`.
pub fn hash(name: &[u8], seed: &[u8; 16]) -> u32 {
    let mut buf = [0u32; 4];
    for (w, b) in buf.iter_mut().zip(seed.chunks_exact(4)) {
        *w = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    }
    if buf == [0; 4] {
        buf = DEFAULT_SEED;
    }
    let mut input = [0u32; 8];
    let mut rest = name;
    loop {
        str2hashbuf(rest, &mut input);
        half_md4_transform(&mut buf, &input);
        if rest.len() <= 32 {
            break;
        }
        rest = &rest[32..];
    }
    let hash = buf[1] & !1;
    // 0x7fffffff << 1 marks the end of the index; the kernel moves a name off it.
    if hash == 0x7fff_ffff << 1 {
        (0x7fff_ffff - 1) << 1
    } else {
        hash
    }
}

/// Bytes of an index block before its `dx_countlimit`: the root's `.` (12), `..` (12) and
/// `dx_root_info` (8); an interior node's empty entry (8).
pub const ROOT_HEADER: usize = 32;
/// See [`ROOT_HEADER`].
pub const NODE_HEADER: usize = 8;

/// Index entries a block with `header` bytes before them holds: 8 bytes each, less the
/// 8-byte `dx_tail` that metadata_csum puts after them.
pub fn limit(header: usize) -> usize {
    (4096 - header - 8) / 8
}

/// An index block: `header` bytes (already in `block`), then `dx_countlimit` and the entries
/// `(hash, block)` (the first one's hash is not stored: the count and limit take its place),
/// then the `dx_tail` checksum: crc32c(inode seed, the block up to the last entry, the tail's
/// reserved word, a zero checksum).
pub fn index_block(block: &mut [u8; 4096], header: usize, entries: &[(u32, u32)], inode_seed: u32) {
    let max = limit(header);
    debug_assert!(!entries.is_empty() && entries.len() <= max);
    block[header..header + 2].copy_from_slice(&(max as u16).to_le_bytes());
    block[header + 2..header + 4].copy_from_slice(&(entries.len() as u16).to_le_bytes());
    for (i, &(hash, child)) in entries.iter().enumerate() {
        let at = header + 8 * i;
        if i > 0 {
            block[at..at + 4].copy_from_slice(&hash.to_le_bytes());
        }
        block[at + 4..at + 8].copy_from_slice(&child.to_le_bytes());
    }
    let tail = header + 8 * max;
    let used = header + 8 * entries.len();
    let sum = csum::raw(inode_seed, &block[..used]);
    let sum = csum::raw(sum, &block[tail..tail + 4]);
    let sum = csum::raw(sum, &[0; 4]);
    block[tail + 4..tail + 8].copy_from_slice(&sum.to_le_bytes());
}

/// How a directory's entries are indexed: one or two index levels above leaf blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// Interior index blocks (0: the root points at the leaves).
    pub nodes: usize,
    /// Each leaf: its index hash (bit 0: continues the previous leaf's hash) and the
    /// positions of its entries in the directory's entry list, in hash order.
    pub leaves: Vec<(u32, Vec<usize>)>,
}

/// The index of a directory whose entries (other than `.` and `..`) are `names`, or `None`
/// when they fit in one block or need more than two index levels (a linear directory then).
pub fn plan(names: &[&[u8]], seed: &[u8; 16]) -> Option<Index> {
    if dir::pack([1, 2].into_iter().chain(names.iter().map(|n| n.len()))).len() <= 1 {
        return None;
    }
    let mut order: Vec<(u32, usize)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (hash(n, seed), i))
        .collect();
    order.sort_unstable();
    let mut leaves: Vec<(u32, Vec<usize>)> = Vec::new();
    let mut used = dir::ROOM;
    let mut last_hash = 0;
    for (h, i) in order {
        let len = dir::entry_len(names[i].len());
        if used + len > dir::ROOM {
            let index_hash = if leaves.is_empty() {
                0
            } else if h == last_hash {
                h | 1
            } else {
                h
            };
            leaves.push((index_hash, Vec::new()));
            used = 0;
        }
        used += len;
        last_hash = h;
        leaves.last_mut().expect("a leaf was pushed").1.push(i);
    }
    let nodes = if leaves.len() <= limit(ROOT_HEADER) {
        0
    } else {
        leaves.len().div_ceil(limit(NODE_HEADER))
    };
    (nodes <= limit(ROOT_HEADER)).then_some(Index { nodes, leaves })
}

impl Index {
    /// Blocks of the directory: the root, the interior nodes, the leaves.
    pub fn blocks(&self) -> usize {
        1 + self.nodes + self.leaves.len()
    }

    /// The directory's blocks in logical order: the root (`.` is `ino`, `..` is `parent`),
    /// the interior nodes, then the leaves holding `entries` (the list `names` was).
    pub fn encode(
        &self,
        ino: u32,
        parent: u32,
        entries: &[Entry<'_>],
        inode_seed: u32,
    ) -> Vec<Box<[u8; 4096]>> {
        let leaf_block = |i: usize| (1 + self.nodes + i) as u32;
        let mut root = Box::new([0u8; 4096]);
        let mut dot = |at: usize, ino: u32, rec_len: u16, name: &[u8]| {
            root[at..at + 4].copy_from_slice(&ino.to_le_bytes());
            root[at + 4..at + 6].copy_from_slice(&rec_len.to_le_bytes());
            root[at + 6] = name.len() as u8;
            root[at + 7] = dir::FT_DIR;
            root[at + 8..at + 8 + name.len()].copy_from_slice(name);
        };
        dot(0, ino, 12, b".");
        dot(12, parent, 4096 - 12, b"..");
        // dx_root_info: reserved, hash version, its own length, levels below the root.
        root[28] = HALF_MD4;
        root[29] = 8;
        root[30] = u8::from(self.nodes > 0);
        let mut out = Vec::with_capacity(self.blocks());
        if self.nodes == 0 {
            let entries: Vec<(u32, u32)> = (0..self.leaves.len())
                .map(|i| (self.leaves[i].0, leaf_block(i)))
                .collect();
            index_block(&mut root, ROOT_HEADER, &entries, inode_seed);
            out.push(root);
        } else {
            let per_node = limit(NODE_HEADER);
            let top: Vec<(u32, u32)> = (0..self.nodes)
                .map(|j| (self.leaves[j * per_node].0, 1 + j as u32))
                .collect();
            index_block(&mut root, ROOT_HEADER, &top, inode_seed);
            out.push(root);
            for j in 0..self.nodes {
                let mut node = Box::new([0u8; 4096]);
                // An empty entry spanning the block hides the index from linear readers.
                node[4..6].copy_from_slice(&4096u16.to_le_bytes());
                let first = j * per_node;
                let last = (first + per_node).min(self.leaves.len());
                let entries: Vec<(u32, u32)> = (first..last)
                    .map(|i| (self.leaves[i].0, leaf_block(i)))
                    .collect();
                index_block(&mut node, NODE_HEADER, &entries, inode_seed);
                out.push(node);
            }
        }
        for (_, members) in &self.leaves {
            let leaf: Vec<Entry<'_>> = members.iter().map(|&i| entries[i]).collect();
            out.push(dir::block(&leaf, inode_seed));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden hashes: `debugfs -R "dx_hash -h half_md4 -s SEED NAME"` (e2fsprogs 1.47.0).
    #[test]
    fn hashes_match_debugfs() {
        let seed = *uuid::Uuid::parse_str("11111111-2222-3333-4444-555555555555")
            .unwrap()
            .as_bytes();
        assert_eq!(hash(b"a", &seed), 0x61ab_28ce);
        assert_eq!(hash(b"hello", &seed), 0xe4a9_77aa);
        assert_eq!(hash(b"entry_number_1", &seed), 0xbc46_2094);
        assert_eq!(hash(&[b'x'; 40], &seed), 0x87e4_a594);
        assert_eq!(hash("é".as_bytes(), &seed), 0x7802_026a);
        assert_eq!(hash(b"hello", &[0; 16]), 0x1746_da32);
    }

    #[test]
    fn small_directories_stay_linear_and_large_ones_split_by_hash() {
        let seed = [7; 16];
        let few: Vec<Vec<u8>> = (0..10).map(|i| format!("f{i}").into_bytes()).collect();
        let few: Vec<&[u8]> = few.iter().map(Vec::as_slice).collect();
        assert_eq!(plan(&few, &seed), None);
        let many: Vec<Vec<u8>> = (0..3000)
            .map(|i| format!("file-{i:05}").into_bytes())
            .collect();
        let many: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
        let index = plan(&many, &seed).unwrap();
        assert_eq!(index.nodes, 0);
        assert_eq!(index.leaves.iter().map(|l| l.1.len()).sum::<usize>(), 3000);
        for pair in index.leaves.windows(2) {
            let last = pair[0]
                .1
                .iter()
                .map(|&i| hash(many[i], &seed))
                .max()
                .unwrap();
            assert!(pair[1].0 & !1 >= last, "leaves are in hash order");
        }
        // 255-byte names: 15 a leaf, so 10,000 of them need an interior level.
        let long: Vec<Vec<u8>> = (0..10_000)
            .map(|i| format!("{i:0>255}").into_bytes())
            .collect();
        let long: Vec<&[u8]> = long.iter().map(Vec::as_slice).collect();
        let index = plan(&long, &seed).unwrap();
        assert_eq!(index.leaves.len(), 667);
        assert_eq!(index.nodes, 2);
    }
}
