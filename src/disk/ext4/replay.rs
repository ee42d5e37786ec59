//! Replaying a jbd2 journal in memory, so that a filesystem left by a crash (`needs_recovery`)
//! reads as the kernel would see it after mounting it, while the device stays untouched.
//!
//! The log is walked from `s_start`/`s_sequence`, wrapping from `s_maxlen` back to `s_first`,
//! transaction by transaction until the first one without a valid commit block. A block is
//! taken from the latest committed transaction that logged it, unless a revoke record of that
//! transaction or a later one names it. With checksums v2/v3, a descriptor, revoke or commit
//! block whose checksum fails ends the log, and a data block whose tag checksum fails is not
//! replayed (the kernel skips it too). The walk reads each journal block at most once.

use std::collections::{BTreeMap, HashMap};
use std::io;

use super::Ext4Error;
use super::csum;
use super::journal::{INCOMPAT_64BIT, INCOMPAT_CSUM_V3, MAGIC};
use super::read::Mapping;
use crate::disk::sink::BlockSource;

const DESCRIPTOR: u32 = 1;
const COMMIT: u32 = 2;
const SUPERBLOCK_V1: u32 = 3;
const SUPERBLOCK_V2: u32 = 4;
const REVOKE: u32 = 5;
/// `s_feature_incompat`: revoke blocks may be in the log.
const INCOMPAT_REVOKE: u32 = 0x1;
/// `s_feature_incompat`: commit blocks may come before their data (no ordering change here).
const INCOMPAT_ASYNC_COMMIT: u32 = 0x4;
/// `s_feature_incompat`: crc32c checksums, version 2 (16-bit tag checksums).
const INCOMPAT_CSUM_V2: u32 = 0x8;
/// `s_feature_incompat`: fast commits, which need an ext4-specific replay this does not do.
const INCOMPAT_FAST_COMMIT: u32 = 0x20;
const KNOWN_INCOMPAT: u32 =
    INCOMPAT_REVOKE | INCOMPAT_64BIT | INCOMPAT_ASYNC_COMMIT | INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3;
/// Tag flags.
const FLAG_ESCAPE: u32 = 0x1;
const FLAG_SAME_UUID: u32 = 0x2;
const FLAG_LAST_TAG: u32 = 0x8;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn corrupt(what: impl std::fmt::Display) -> Ext4Error {
    Ext4Error::Corrupt(format!("journal: {what}"))
}

/// Reads `buf` at device byte `at`; a journal block past the device is corrupt.
fn read_dev(dev: &(impl BlockSource + ?Sized), at: u64, buf: &mut [u8]) -> Result<(), Ext4Error> {
    dev.read_at(at, buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidInput => {
            corrupt(format!("a block at byte {at} lies past the device"))
        }
        _ => Ext4Error::Io(e),
    })
}

/// Where the latest committed copy of a filesystem block is: its journal block's byte offset on
/// the device, and whether its first four bytes were escaped (they are the jbd2 magic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    /// Device byte offset of the journal block holding it.
    pub offset: u64,
    /// The block began with the jbd2 magic, which the log replaced with zeros.
    pub escaped: bool,
}

/// What the replay found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Committed transactions walked.
    pub transactions: u64,
    /// Filesystem block -> where its replayed bytes are.
    pub blocks: BTreeMap<u64, Logged>,
}

/// The journal's layout and features, from its superblock.
struct Journal<'m> {
    map: &'m [Mapping],
    block_size: u64,
    first: u64,
    maxlen: u64,
    incompat: u32,
    seed: u32,
}

impl Journal<'_> {
    /// The device offset of journal block `j`; a hole or a block past the file is corrupt.
    fn offset(&self, j: u64) -> Result<u64, Ext4Error> {
        let at = j * self.block_size;
        let i = self.map.partition_point(|m| m.file_offset <= at);
        i.checked_sub(1)
            .map(|i| self.map[i])
            .filter(|m| at < m.file_offset + m.len)
            .and_then(|m| Some(m.offset? + (at - m.file_offset)))
            .ok_or_else(|| corrupt(format!("block {j} is not mapped")))
    }

    fn read(
        &self,
        dev: &(impl BlockSource + ?Sized),
        j: u64,
        buf: &mut [u8],
    ) -> Result<u64, Ext4Error> {
        let at = self.offset(j)?;
        read_dev(dev, at, buf)?;
        Ok(at)
    }

    fn next(&self, j: u64) -> u64 {
        if j + 1 >= self.maxlen {
            self.first
        } else {
            j + 1
        }
    }

    fn csum(&self) -> bool {
        self.incompat & (INCOMPAT_CSUM_V2 | INCOMPAT_CSUM_V3) != 0
    }

    /// Bytes of one block tag.
    fn tag_bytes(&self) -> usize {
        if self.incompat & INCOMPAT_CSUM_V3 != 0 {
            return 16;
        }
        let sz = if self.incompat & INCOMPAT_CSUM_V2 != 0 {
            14
        } else {
            12
        };
        if self.incompat & INCOMPAT_64BIT != 0 {
            sz
        } else {
            sz - 4
        }
    }

    /// Whether a descriptor or revoke block's tail checksum holds (true without checksums).
    fn tail_ok(&self, b: &[u8]) -> bool {
        if !self.csum() {
            return true;
        }
        let n = b.len();
        let mut copy = b.to_vec();
        copy[n - 4..].fill(0);
        csum::raw(self.seed, &copy) == be32(b, n - 4)
    }
}

/// Replays the journal whose file maps as `map` (the journal inode's mappings) on `dev`, for a
/// filesystem of `block_size`-byte blocks.
pub fn replay(
    dev: &(impl BlockSource + ?Sized),
    map: &[Mapping],
    block_size: u64,
) -> Result<Replay, Ext4Error> {
    let mut jsb = vec![0u8; 1024];
    let at = map
        .first()
        .filter(|m| m.file_offset == 0)
        .and_then(|m| m.offset)
        .ok_or_else(|| corrupt("its first block is not mapped"))?;
    read_dev(dev, at, &mut jsb)?;
    let kind = be32(&jsb, 4);
    if be32(&jsb, 0) != MAGIC || !(kind == SUPERBLOCK_V1 || kind == SUPERBLOCK_V2) {
        return Err(corrupt("no jbd2 superblock"));
    }
    let incompat = if kind == SUPERBLOCK_V2 {
        be32(&jsb, 0x28)
    } else {
        0
    };
    if incompat & INCOMPAT_FAST_COMMIT != 0 {
        return Err(Ext4Error::Unsupported(
            "the journal uses fast commits, which cannot be replayed here".into(),
        ));
    }
    if incompat & !KNOWN_INCOMPAT != 0 {
        return Err(Ext4Error::Unsupported(format!(
            "journal features 0x{:x}",
            incompat & !KNOWN_INCOMPAT
        )));
    }
    if u64::from(be32(&jsb, 0x0C)) != block_size {
        return Err(corrupt(format!(
            "its block size {} is not the filesystem's {block_size}",
            be32(&jsb, 0x0C)
        )));
    }
    let file_blocks = map
        .last()
        .map_or(0, |m| (m.file_offset + m.len) / block_size);
    let maxlen = u64::from(be32(&jsb, 0x10));
    let first = u64::from(be32(&jsb, 0x14));
    if first == 0 || first >= maxlen || maxlen > file_blocks {
        return Err(corrupt(format!(
            "log blocks {first} to {maxlen} do not fit its {file_blocks} blocks"
        )));
    }
    let start = u64::from(be32(&jsb, 0x1C));
    let mut out = Replay::default();
    if start == 0 {
        return Ok(out);
    }
    if start < first || start >= maxlen {
        return Err(corrupt(format!("s_start {start} is outside the log")));
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&jsb[0x30..0x40]);
    let j = Journal {
        map,
        block_size,
        first,
        maxlen,
        incompat,
        seed: csum::raw(!0, &uuid),
    };
    let mut sequence = be32(&jsb, 0x18);
    walk(dev, &j, start, &mut sequence, &mut out)?;
    Ok(out)
}

/// A block logged by a transaction not yet known to be committed.
struct Pending {
    block: u64,
    logged: Logged,
}

/// Walks the log from journal block `pos`, transaction `sequence` on, into `out`.
fn walk(
    dev: &(impl BlockSource + ?Sized),
    j: &Journal<'_>,
    mut pos: u64,
    sequence: &mut u32,
    out: &mut Replay,
) -> Result<(), Ext4Error> {
    let bs = j.block_size as usize;
    let mut b = vec![0u8; bs];
    let mut data = vec![0u8; bs];
    // Each step reads one log block; one lap of the log is the most a valid log holds.
    let mut budget = j.maxlen - j.first;
    // Filesystem block -> sequence of the latest transaction that revoked it.
    let mut revoked: HashMap<u64, u32> = HashMap::new();
    // Every committed write in log order: (filesystem block, sequence, where).
    let mut writes: Vec<(u64, u32, Logged)> = Vec::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut pending_revokes: Vec<u64> = Vec::new();
    let mut step = |pos: &mut u64| {
        let here = *pos;
        *pos = j.next(*pos);
        budget = budget.checked_sub(1)?;
        Some(here)
    };
    while let Some(here) = step(&mut pos) {
        j.read(dev, here, &mut b)?;
        if be32(&b, 0) != MAGIC || be32(&b, 8) != *sequence {
            break;
        }
        match be32(&b, 4) {
            DESCRIPTOR => {
                if !j.tail_ok(&b) {
                    break;
                }
                let tag_bytes = j.tag_bytes();
                let end = if j.csum() { bs - 4 } else { bs };
                let mut at = 12;
                let mut complete = true;
                while at + tag_bytes <= end {
                    let tag = &b[at..at + tag_bytes];
                    let (flags, sum) = if j.incompat & INCOMPAT_CSUM_V3 != 0 {
                        (be32(tag, 4), be32(tag, 12))
                    } else {
                        (
                            u32::from(u16::from_be_bytes([tag[6], tag[7]])),
                            u32::from(u16::from_be_bytes([tag[4], tag[5]])),
                        )
                    };
                    let hi = if j.incompat & INCOMPAT_64BIT != 0 {
                        u64::from(be32(tag, 8)) << 32
                    } else {
                        0
                    };
                    let block = u64::from(be32(tag, 0)) | hi;
                    at += tag_bytes;
                    if flags & FLAG_SAME_UUID == 0 {
                        at += 16;
                    }
                    let Some(data_at) = step(&mut pos) else {
                        complete = false;
                        break;
                    };
                    let offset = j.read(dev, data_at, &mut data)?;
                    let escaped = flags & FLAG_ESCAPE != 0;
                    // The checksum covers the block as logged, escaped.
                    if data_ok(j, *sequence, &data, sum) {
                        pending.push(Pending {
                            block,
                            logged: Logged { offset, escaped },
                        });
                    }
                    if flags & FLAG_LAST_TAG != 0 {
                        break;
                    }
                }
                if !complete {
                    break;
                }
            }
            REVOKE => {
                if !j.tail_ok(&b) {
                    break;
                }
                let count = be32(&b, 12) as usize;
                let limit = if j.csum() { bs - 4 } else { bs };
                if count < 16 || count > limit {
                    break;
                }
                let record = if j.incompat & INCOMPAT_64BIT != 0 {
                    8
                } else {
                    4
                };
                let mut at = 16;
                while at + record <= count {
                    pending_revokes.push(if record == 8 {
                        u64::from(be32(&b, at)) << 32 | u64::from(be32(&b, at + 4))
                    } else {
                        u64::from(be32(&b, at))
                    });
                    at += record;
                }
            }
            COMMIT => {
                if j.csum() {
                    let mut copy = b.clone();
                    copy[0x10..0x14].fill(0);
                    if csum::raw(j.seed, &copy) != be32(&b, 0x10) {
                        break;
                    }
                }
                for r in pending_revokes.drain(..) {
                    revoked.insert(r, *sequence);
                }
                writes.extend(pending.drain(..).map(|p| (p.block, *sequence, p.logged)));
                out.transactions += 1;
                *sequence = sequence.wrapping_add(1);
            }
            _ => break,
        }
    }
    for (block, seq, logged) in writes {
        // Revoked by this transaction or a later one: not replayed (jbd2's tid_gt test).
        let is_revoked = revoked
            .get(&block)
            .is_some_and(|&r| r.wrapping_sub(seq) as i32 >= 0);
        if !is_revoked {
            out.blocks.insert(block, logged);
        }
    }
    Ok(())
}

/// Whether a data block's tag checksum holds (true without checksums v2/v3).
fn data_ok(j: &Journal<'_>, sequence: u32, data: &[u8], sum: u32) -> bool {
    if !j.csum() {
        return true;
    }
    let c = csum::raw(csum::raw(j.seed, &sequence.to_be_bytes()), data);
    if j.incompat & INCOMPAT_CSUM_V3 != 0 {
        c == sum
    } else {
        c & 0xFFFF == sum
    }
}

/// The device as it reads after the replay: logged blocks substituted, and the superblock's
/// `needs_recovery` bit cleared. The device itself is only read.
#[derive(Debug)]
pub struct Recovered<D> {
    dev: D,
    block_size: u64,
    blocks: BTreeMap<u64, Logged>,
    /// The primary superblock (bytes 1024..2048) as replayed, without `needs_recovery`.
    superblock: Option<Box<[u8; 1024]>>,
}

impl<D: BlockSource> Recovered<D> {
    /// `dev` with the blocks of `replay` substituted and the superblock's `needs_recovery`
    /// (bit 0x4 of `s_feature_incompat`) cleared.
    pub fn new(dev: D, block_size: u64, replay: Replay) -> io::Result<Self> {
        let mut r = Self {
            dev,
            block_size,
            blocks: replay.blocks,
            superblock: None,
        };
        let mut sb = Box::new([0u8; 1024]);
        r.read_at(1024, &mut sb[..])?;
        let incompat = u32::from_le_bytes([sb[0x60], sb[0x61], sb[0x62], sb[0x63]]) & !0x4;
        sb[0x60..0x64].copy_from_slice(&incompat.to_le_bytes());
        r.superblock = Some(sb);
        Ok(r)
    }

    /// `dev` as it is.
    pub fn clean(dev: D, block_size: u64) -> Self {
        Self {
            dev,
            block_size,
            blocks: BTreeMap::new(),
            superblock: None,
        }
    }
}

impl<D: BlockSource> BlockSource for Recovered<D> {
    fn size(&self) -> u64 {
        self.dev.size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.dev.read_at(offset, buf)?;
        let end = offset + buf.len() as u64;
        if buf.is_empty() {
            return Ok(());
        }
        let bs = self.block_size;
        let mut block = vec![0u8; bs as usize];
        for (&n, logged) in self.blocks.range(offset / bs..=(end - 1) / bs) {
            self.dev.read_at(logged.offset, &mut block)?;
            if logged.escaped {
                block[..4].copy_from_slice(&MAGIC.to_be_bytes());
            }
            overlay(&mut *buf, offset, n * bs, &block);
        }
        if let Some(sb) = &self.superblock {
            overlay(buf, offset, 1024, &sb[..]);
        }
        Ok(())
    }
}

/// Copies the part of `src` (at device byte `at`) that falls in `buf` (at device byte `offset`).
fn overlay(buf: &mut [u8], offset: u64, at: u64, src: &[u8]) {
    let end = offset + buf.len() as u64;
    let from = at.max(offset);
    let to = (at + src.len() as u64).min(end);
    if from < to {
        buf[(from - offset) as usize..(to - offset) as usize]
            .copy_from_slice(&src[(from - at) as usize..(to - at) as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BS: usize = 1024;
    /// Where the journal starts on the synthetic device (device block 8).
    const BASE: u64 = 8 * BS as u64;

    /// A journal of `n` blocks on a device of `BASE` plus the journal, built block by block.
    struct Log {
        blocks: Vec<Vec<u8>>,
        incompat: u32,
        seed: u32,
    }

    fn put(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    impl Log {
        fn new(n: usize, incompat: u32, start: u32, sequence: u32) -> Self {
            let mut sb = vec![0u8; BS];
            put(&mut sb, 0, MAGIC);
            put(&mut sb, 4, SUPERBLOCK_V2);
            put(&mut sb, 0x0C, BS as u32);
            put(&mut sb, 0x10, n as u32);
            put(&mut sb, 0x14, 1);
            put(&mut sb, 0x18, sequence);
            put(&mut sb, 0x1C, start);
            put(&mut sb, 0x28, incompat);
            sb[0x30..0x40].copy_from_slice(&[0x5A; 16]);
            let mut blocks = vec![vec![0u8; BS]; n];
            blocks[0] = sb;
            Self {
                blocks,
                incompat,
                seed: csum::raw(!0, &[0x5A; 16]),
            }
        }

        fn v3(&self) -> bool {
            self.incompat & INCOMPAT_CSUM_V3 != 0
        }

        fn header(kind: u32, seq: u32) -> Vec<u8> {
            let mut b = vec![0u8; BS];
            put(&mut b, 0, MAGIC);
            put(&mut b, 4, kind);
            put(&mut b, 8, seq);
            b
        }

        fn tail(&self, b: &mut [u8]) {
            if self.v3() {
                let sum = csum::raw(self.seed, b);
                put(b, BS - 4, sum);
            }
        }

        /// A descriptor at `pos` for `data` (filesystem block, bytes as logged, flags), the
        /// data blocks after it; returns the next position (wrapping).
        fn descriptor(&mut self, mut pos: usize, seq: u32, data: &[(u64, Vec<u8>, u32)]) -> usize {
            let mut d = Self::header(DESCRIPTOR, seq);
            let tag = if self.v3() { 16 } else { 8 };
            let desc_pos = pos;
            for (i, (block, bytes, flags)) in data.iter().enumerate() {
                let at = 12 + i * tag;
                let mut flags = flags | FLAG_SAME_UUID;
                if i + 1 == data.len() {
                    flags |= FLAG_LAST_TAG;
                }
                put(&mut d, at, *block as u32);
                if self.v3() {
                    put(&mut d, at + 4, flags);
                    put(&mut d, at + 8, (*block >> 32) as u32);
                    let sum = csum::raw(csum::raw(self.seed, &seq.to_be_bytes()), bytes);
                    put(&mut d, at + 12, sum);
                } else {
                    d[at + 6..at + 8].copy_from_slice(&(flags as u16).to_be_bytes());
                }
                pos = self.next(pos);
                self.blocks[pos] = bytes.clone();
            }
            self.tail(&mut d);
            self.blocks[desc_pos] = d;
            self.next(pos)
        }

        fn revoke(&mut self, pos: usize, seq: u32, revoked: &[u64]) -> usize {
            let mut b = Self::header(REVOKE, seq);
            let mut at = 16;
            for r in revoked {
                put(&mut b, at, (*r >> 32) as u32);
                put(&mut b, at + 4, *r as u32);
                at += 8;
            }
            put(&mut b, 12, at as u32);
            self.tail(&mut b);
            self.blocks[pos] = b;
            self.next(pos)
        }

        fn commit(&mut self, pos: usize, seq: u32) -> usize {
            let mut b = Self::header(COMMIT, seq);
            if self.v3() {
                let sum = csum::raw(self.seed, &b);
                put(&mut b, 0x10, sum);
            }
            self.blocks[pos] = b;
            self.next(pos)
        }

        fn next(&self, pos: usize) -> usize {
            if pos + 1 >= self.blocks.len() {
                1
            } else {
                pos + 1
            }
        }

        fn device(&self) -> Vec<u8> {
            let mut dev = vec![0u8; BASE as usize];
            for b in &self.blocks {
                dev.extend_from_slice(b);
            }
            dev
        }

        fn map(&self) -> Vec<Mapping> {
            vec![Mapping {
                file_offset: 0,
                offset: Some(BASE),
                len: (self.blocks.len() * BS) as u64,
            }]
        }

        fn replay(&self) -> Result<Replay, Ext4Error> {
            replay(self.device().as_slice(), &self.map(), BS as u64)
        }
    }

    fn filled(byte: u8) -> Vec<u8> {
        vec![byte; BS]
    }

    /// The journal block (index) a replayed filesystem block is read from.
    fn source(r: &Replay, block: u64) -> Option<u64> {
        r.blocks.get(&block).map(|l| (l.offset - BASE) / BS as u64)
    }

    const V3: u32 = INCOMPAT_REVOKE | INCOMPAT_64BIT | INCOMPAT_CSUM_V3;

    #[test]
    fn latest_committed_copy_wins_and_revokes_hide_earlier_ones() {
        let mut log = Log::new(64, V3, 1, 10);
        // 10: blocks 100 and 101. 11: 100 again, revokes 101. 12: 101 again (after the
        // revoke, so replayed). 13: 102, never committed.
        let p = log.descriptor(1, 10, &[(100, filled(1), 0), (101, filled(2), 0)]);
        let p = log.commit(p, 10);
        let p = log.revoke(p, 11, &[101, 5]);
        let p = log.descriptor(p, 11, &[(100, filled(3), 0)]);
        let p = log.commit(p, 11);
        let p = log.descriptor(p, 12, &[(101, filled(4), 0), (5, filled(6), 0)]);
        let p = log.commit(p, 12);
        log.descriptor(p, 13, &[(102, filled(5), 0)]);
        let r = log.replay().unwrap();
        assert_eq!(r.transactions, 3);
        assert_eq!(source(&r, 100), Some(7), "transaction 11's copy");
        assert_eq!(source(&r, 101), Some(10), "transaction 12's copy");
        assert_eq!(source(&r, 5), Some(11));
        assert_eq!(source(&r, 102), None, "uncommitted");
        assert_eq!(r.blocks.len(), 3);
        // The revoke of transaction 11 alone hides 101 of transaction 10.
        let mut log2 = Log::new(64, V3, 1, 10);
        let p = log2.descriptor(1, 10, &[(101, filled(2), 0)]);
        let p = log2.commit(p, 10);
        let p = log2.revoke(p, 11, &[101]);
        log2.commit(p, 11);
        assert_eq!(log2.replay().unwrap().blocks.len(), 0);
    }

    #[test]
    fn an_escaped_block_gets_its_magic_back_through_the_overlay() {
        let mut log = Log::new(16, 0, 1, 1);
        let mut logged = filled(9);
        logged[..4].fill(0);
        let p = log.descriptor(1, 1, &[(3, logged, FLAG_ESCAPE)]);
        log.commit(p, 1);
        let dev = log.device();
        let r = replay(dev.as_slice(), &log.map(), BS as u64).unwrap();
        assert!(r.blocks[&3].escaped);
        let over = Recovered::new(dev.as_slice(), BS as u64, r).unwrap();
        let mut got = vec![0u8; BS + 8];
        over.read_at(3 * BS as u64 - 4, &mut got).unwrap();
        assert_eq!(&got[..4], &dev[3 * BS - 4..3 * BS]);
        assert_eq!(&got[4..8], &MAGIC.to_be_bytes());
        assert_eq!(&got[8..BS + 4], &filled(9)[4..]);
        assert_eq!(&got[BS + 4..], &dev[4 * BS..4 * BS + 4]);
    }

    #[test]
    fn the_log_wraps_from_maxlen_to_first() {
        let mut log = Log::new(8, V3, 5, 3);
        // Descriptor at 5, data at 6 and 7, data at 1 (wrapped), commit at 2.
        let p = log.descriptor(
            5,
            3,
            &[(40, filled(1), 0), (41, filled(2), 0), (42, filled(3), 0)],
        );
        assert_eq!(p, 2);
        log.commit(p, 3);
        let r = log.replay().unwrap();
        assert_eq!(r.transactions, 1);
        assert_eq!(source(&r, 42), Some(1));
        assert_eq!(source(&r, 41), Some(7));
    }

    #[test]
    fn bad_checksums_end_the_log_or_skip_the_block() {
        let mut log = Log::new(32, V3, 1, 1);
        let p = log.descriptor(1, 1, &[(50, filled(1), 0), (51, filled(2), 0)]);
        let p = log.commit(p, 1);
        let p2 = log.descriptor(p, 2, &[(52, filled(3), 0)]);
        log.commit(p2, 2);
        // A data block changed after logging is not replayed; its transaction still counts.
        log.blocks[3][0] ^= 1;
        // A commit block with a bad checksum ends the log.
        log.blocks[p2][0x30] ^= 1;
        let r = log.replay().unwrap();
        assert_eq!(r.transactions, 1);
        assert_eq!(source(&r, 50), Some(2));
        assert_eq!(source(&r, 51), None);
        assert_eq!(source(&r, 52), None);
    }

    #[test]
    fn hostile_journals_are_refused_or_bounded_without_panic() {
        // Start outside the log, a log larger than the file, no superblock.
        for (at, v) in [(0x1C, 99u32), (0x10, 1000), (0, 0)] {
            let mut log = Log::new(16, V3, 1, 1);
            put(&mut log.blocks[0], at, v);
            assert!(
                matches!(log.replay(), Err(Ext4Error::Corrupt(_))),
                "{at:#x}"
            );
        }
        // A descriptor whose tags never end (no LAST_TAG): more tags than the log holds.
        let mut log = Log::new(16, 0, 1, 1);
        let mut d = Log::header(DESCRIPTOR, 1);
        for at in (12..=BS - 8).step_by(8) {
            put(&mut d, at, 7);
            d[at + 7] = FLAG_SAME_UUID as u8;
        }
        log.blocks[1] = d;
        let r = log.replay().unwrap();
        assert_eq!((r.transactions, r.blocks.len()), (0, 0));
        // Every block a commit of the expected sequence, forever: one lap only.
        let mut log = Log::new(16, 0, 1, 1);
        for i in 1..16 {
            log.commit(i, i as u32);
        }
        assert_eq!(log.replay().unwrap().transactions, 15);
        // A revoke count past the block, a journal with a hole: no panic.
        let mut log = Log::new(16, INCOMPAT_REVOKE, 1, 1);
        let p = log.revoke(1, 1, &[3]);
        log.commit(p, 1);
        put(&mut log.blocks[1], 12, u32::MAX);
        assert_eq!(log.replay().unwrap().transactions, 0);
        let hole = [Mapping {
            file_offset: 0,
            offset: Some(BASE),
            len: BS as u64,
        }];
        assert!(replay(log.device().as_slice(), &hole, BS as u64).is_err());
        // Fast commits are refused by name.
        let log = Log::new(16, INCOMPAT_FAST_COMMIT, 1, 1);
        assert!(matches!(log.replay(), Err(Ext4Error::Unsupported(_))));
    }
}
