//! Reading an ext4 filesystem, ours or the kernel's, from any [`BlockSource`].
//!
//! The device is hostile: every number taken from it is checked before it is used as an
//! offset, a count or a size. The filesystem must fit the device; extent trees are walked with
//! a depth limit, keys that strictly increase (so no node is read twice and no extent is
//! empty) and a cap on the extents one file may have ([`MAX_EXTENTS`]); a directory may not be
//! larger than [`MAX_DIR_SIZE`]. Directories are read linearly, which also reads hashed (htree) directories, whose index blocks look like empty
//! entries to a linear reader. Nothing is followed: a symbolic link is returned as its target.
//!
//! What is read: 1 to 64 KiB blocks, 32- and 64-byte group descriptors, 128-byte and larger
//! inodes with the extended times, extent-mapped files and directories, fast and slow symbolic
//! links. A journal that needs recovery is refused by [`Filesystem::open`] and replayed in
//! memory by [`Filesystem::open_recovering`]. Refused with a reason: `meta_bg`, inline data,
//! encryption and other incompatible features, block-mapped (ext2/3 style) files.

use std::io;

use super::Ext4Error;
use super::inode::{EXTENTS_FL, Time};
use super::replay::{self, Recovered};
use super::superblock::{
    INCOMPAT_64BIT, INCOMPAT_EXTENTS, INCOMPAT_FILETYPE, INCOMPAT_FLEX_BG, MAGIC, OFFSET,
    get16 as le16, get32 as le32,
};
use crate::disk::sink::BlockSource;

/// `s_feature_incompat` bits this reader understands, besides the ones our formatter sets.
const INCOMPAT_RECOVER: u32 = 0x4;
/// `s_feature_compat`: the filesystem has a journal (`s_journal_inum` names its inode).
const COMPAT_HAS_JOURNAL: u32 = 0x4;
const INCOMPAT_MMP: u32 = 0x100;
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const INCOMPAT_LARGEDIR: u32 = 0x4000;
const KNOWN_INCOMPAT: u32 = INCOMPAT_FILETYPE
    | INCOMPAT_RECOVER
    | INCOMPAT_EXTENTS
    | INCOMPAT_64BIT
    | INCOMPAT_MMP
    | INCOMPAT_FLEX_BG
    | INCOMPAT_CSUM_SEED
    | INCOMPAT_LARGEDIR;
/// `i_flags`: the inode's data are inline.
const INLINE_DATA_FL: u32 = 0x1000_0000;
/// The deepest extent tree the kernel builds is 5 levels below the inode.
const MAX_DEPTH: u16 = 5;
/// An extent longer than this is unwritten (reads as zeros); its length is `len - 32768`.
const UNWRITTEN: u16 = 32768;
/// The most extents one file may have here: a fully used 16 TiB file needs 131,072 (each
/// covers at most 128 MiB); a hostile tree cannot make the reader hold more than 32 MiB of
/// mappings or read more than about twice as many tree blocks.
pub const MAX_EXTENTS: usize = 1 << 20;
/// The largest directory read: far above what the kernel makes without `largedir` (a
/// three-level htree of 4 KiB blocks), and a bound on the entries a hostile one can yield.
pub const MAX_DIR_SIZE: u64 = 1 << 30;

/// The type of an inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileType {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link.
    Symlink,
    /// A socket, FIFO or device node.
    Special,
}

/// What an inode says about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// The inode number.
    pub ino: u32,
    /// Its type.
    pub kind: FileType,
    /// `mode & 0o7777`.
    pub perm: u16,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Bytes.
    pub size: u64,
    /// `i_links_count`.
    pub links: u16,
    /// Last access.
    pub atime: Time,
    /// Last modification.
    pub mtime: Time,
    /// Last inode change.
    pub ctime: Time,
    flags: u32,
    block: [u8; 60],
    xattrs: bool,
}

impl Stat {
    /// Whether the inode has extended attributes (in an xattr block or in the inode's own
    /// spare bytes), which this reader does not read.
    pub fn has_xattrs(&self) -> bool {
        self.xattrs
    }
}

/// Bytes of a file stored on the device: `len` bytes from `file_offset` on are at device
/// byte `offset` (`None`: unwritten, they read as zeros).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Offset in the file.
    pub file_offset: u64,
    /// Offset on the device, if written.
    pub offset: Option<u64>,
    /// Bytes.
    pub len: u64,
}

/// One entry of a directory (not `.` or `..`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    /// The name, 1 to 255 bytes, no `/` or NUL.
    pub name: Vec<u8>,
    /// The inode it names.
    pub ino: u32,
    /// The entry's `file_type` (1 file, 2 directory, 7 symbolic link, ...).
    pub file_type: u8,
}

/// What [`Filesystem::open_recovering`] replayed from a journal that needed recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryFacts {
    /// Committed transactions found in the log.
    pub transactions: u64,
    /// Filesystem blocks whose logged copy is read instead of the device's.
    pub blocks: u64,
}

/// An open ext4 filesystem.
#[derive(Debug)]
pub struct Filesystem<D> {
    dev: D,
    block_size: u64,
    blocks: u64,
    first_data_block: u64,
    inodes: u32,
    inodes_per_group: u32,
    inode_size: u64,
    desc_size: u64,
    is_64bit: bool,
}

fn corrupt(what: impl Into<String>) -> Ext4Error {
    Ext4Error::Corrupt(what.into())
}

/// A time from its base field (signed seconds) and `*_extra` field (epoch bits, nanoseconds).
fn decode_time(base: u32, extra: Option<u32>) -> Time {
    let extra = extra.unwrap_or(0);
    Time {
        secs: i64::from(base as i32) + (i64::from(extra & 3) << 32),
        nanos: (extra >> 2).min(999_999_999),
    }
}

impl<D: BlockSource> Filesystem<D> {
    /// Reads the superblock and checks that this reader can read the filesystem; refuses one
    /// whose journal needs recovery.
    pub fn open(dev: D) -> Result<Self, Ext4Error> {
        Self::open_as(dev, false)
    }

    /// Opens the filesystem as the kernel would see it after mounting it: a journal that
    /// needs recovery is replayed in memory ([`replay`](super::replay)), never on `dev`.
    /// The facts say whether that happened.
    pub fn open_recovering(
        dev: D,
    ) -> Result<(Filesystem<Recovered<D>>, Option<RecoveryFacts>), Ext4Error> {
        let raw = Filesystem::open_as(&dev, true)?;
        let block_size = raw.block_size;
        let mut sb = [0u8; 1024];
        raw.read(OFFSET, &mut sb)?;
        if le32(&sb, 0x60) & INCOMPAT_RECOVER == 0 {
            return Ok((Filesystem::open(Recovered::clean(dev, block_size))?, None));
        }
        let journal_ino = le32(&sb, 0xE0);
        if le32(&sb, 0x5C) & COMPAT_HAS_JOURNAL == 0 || journal_ino == 0 {
            return Err(Ext4Error::Unsupported(
                "the filesystem needs recovery from an external journal".into(),
            ));
        }
        let journal = raw.stat(journal_ino)?;
        let map = raw.mappings(&journal)?;
        let replayed = replay::replay(&dev, &map, block_size)?;
        let facts = RecoveryFacts {
            transactions: replayed.transactions,
            blocks: replayed.blocks.len() as u64,
        };
        let recovered = Recovered::new(dev, block_size, replayed).map_err(Ext4Error::Io)?;
        Ok((Filesystem::open(recovered)?, Some(facts)))
    }

    fn open_as(dev: D, recovering: bool) -> Result<Self, Ext4Error> {
        let mut sb = [0u8; 1024];
        dev.read_at(OFFSET, &mut sb)
            .map_err(|_| Ext4Error::NotExt4("the device is smaller than a superblock"))?;
        if le16(&sb, 0x38) != MAGIC {
            return Err(Ext4Error::NotExt4("no ext2/3/4 magic number"));
        }
        let log = le32(&sb, 0x18);
        if log > 6 {
            return Err(Ext4Error::NotExt4("block size out of range"));
        }
        let block_size = 1024u64 << log;
        let incompat = le32(&sb, 0x60);
        if incompat & INCOMPAT_RECOVER != 0 && !recovering {
            return Err(Ext4Error::NeedsRecovery);
        }
        let unknown = incompat & !KNOWN_INCOMPAT;
        if unknown != 0 {
            return Err(Ext4Error::Unsupported(format!(
                "incompatible features 0x{unknown:x} (meta_bg, inline_data, encryption or newer)"
            )));
        }
        let is_64bit = incompat & INCOMPAT_64BIT != 0;
        let blocks = u64::from(le32(&sb, 0x04))
            | if is_64bit {
                u64::from(le32(&sb, 0x150)) << 32
            } else {
                0
            };
        let desc_size = if is_64bit {
            u64::from(le16(&sb, 0xFE))
        } else {
            32
        };
        if !(32..=1024).contains(&desc_size) || !desc_size.is_power_of_two() {
            return Err(corrupt(format!("group descriptor size {desc_size}")));
        }
        let inode_size = if le32(&sb, 0x4C) == 0 {
            128
        } else {
            u64::from(le16(&sb, 0x58))
        };
        if inode_size < 128 || inode_size > block_size || !inode_size.is_power_of_two() {
            return Err(corrupt(format!("inode size {inode_size}")));
        }
        let fs = Self {
            block_size,
            blocks,
            first_data_block: u64::from(le32(&sb, 0x14)),
            inodes: le32(&sb, 0x00),
            inodes_per_group: le32(&sb, 0x28),
            inode_size,
            desc_size,
            is_64bit,
            dev,
        };
        if fs.inodes_per_group == 0 || blocks == 0 || fs.first_data_block >= blocks {
            return Err(corrupt("zero inodes per group or no blocks"));
        }
        if blocks
            .checked_mul(block_size)
            .is_none_or(|bytes| bytes > fs.dev.size())
        {
            return Err(corrupt(format!(
                "{blocks} blocks of {block_size} bytes do not fit the {}-byte device",
                fs.dev.size()
            )));
        }
        Ok(fs)
    }

    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), Ext4Error> {
        self.dev.read_at(offset, buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::InvalidInput => {
                corrupt(format!("a structure at byte {offset} lies past the device"))
            }
            _ => Ext4Error::Io(e),
        })
    }

    /// Reads block `block`, which must be inside the filesystem.
    fn read_block(&self, block: u64, buf: &mut [u8]) -> Result<(), Ext4Error> {
        if block >= self.blocks {
            return Err(corrupt(format!(
                "block {block} is past the filesystem's end"
            )));
        }
        self.read(block * self.block_size, buf)
    }

    /// The inode table's first block of group `group`.
    fn inode_table(&self, group: u64) -> Result<u64, Ext4Error> {
        let at = (self.first_data_block + 1) * self.block_size + group * self.desc_size;
        let mut d = [0u8; 64];
        let len = self.desc_size.min(64) as usize;
        self.read(at, &mut d[..len])?;
        let hi = if self.is_64bit && len >= 64 {
            u64::from(le32(&d, 0x28)) << 32
        } else {
            0
        };
        Ok(u64::from(le32(&d, 0x08)) | hi)
    }

    /// The inode `ino`.
    pub fn stat(&self, ino: u32) -> Result<Stat, Ext4Error> {
        if ino == 0 || ino > self.inodes {
            return Err(corrupt(format!("inode number {ino} out of range")));
        }
        let index = u64::from(ino - 1);
        let group = index / u64::from(self.inodes_per_group);
        let table = self.inode_table(group)?;
        let at = table
            .checked_mul(self.block_size)
            .and_then(|t| {
                t.checked_add((index % u64::from(self.inodes_per_group)) * self.inode_size)
            })
            .ok_or_else(|| corrupt(format!("inode {ino} lies past the device")))?;
        let mut b = vec![0u8; self.inode_size.min(256) as usize];
        self.read(at, &mut b)?;
        let mode = le16(&b, 0x00);
        let kind = match mode & 0o170000 {
            0o040000 => FileType::Dir,
            0o100000 => FileType::File,
            0o120000 => FileType::Symlink,
            _ => FileType::Special,
        };
        let extra_isize = if b.len() > 128 {
            usize::from(le16(&b, 0x80))
        } else {
            0
        };
        let extra =
            |at: usize| (128 + extra_isize >= at + 4 && b.len() >= at + 4).then(|| le32(&b, at));
        let mut block = [0u8; 60];
        block.copy_from_slice(&b[0x28..0x64]);
        // i_file_acl (lo at 0x68, hi at 0x76) names an xattr block; the in-inode area starts
        // after the extra fields with the magic 0xEA020000.
        let xattr_block = le32(&b, 0x68) != 0 || le16(&b, 0x76) != 0;
        let in_inode =
            128 + extra_isize + 4 <= b.len() && le32(&b, 128 + extra_isize) == 0xEA02_0000;
        Ok(Stat {
            ino,
            kind,
            perm: mode & 0o7777,
            uid: u32::from(le16(&b, 0x02)) | u32::from(le16(&b, 0x78)) << 16,
            gid: u32::from(le16(&b, 0x18)) | u32::from(le16(&b, 0x7A)) << 16,
            size: u64::from(le32(&b, 0x04)) | u64::from(le32(&b, 0x6C)) << 32,
            links: le16(&b, 0x1A),
            atime: decode_time(le32(&b, 0x08), extra(0x8C)),
            ctime: decode_time(le32(&b, 0x0C), extra(0x84)),
            mtime: decode_time(le32(&b, 0x10), extra(0x88)),
            flags: le32(&b, 0x20),
            block,
            xattrs: xattr_block || in_inode,
        })
    }

    /// Where a file's or directory's bytes are, in logical order; holes are left out.
    pub fn mappings(&self, stat: &Stat) -> Result<Vec<Mapping>, Ext4Error> {
        if stat.flags & INLINE_DATA_FL != 0 {
            return Err(Ext4Error::Unsupported(format!(
                "inode {} keeps its data inline",
                stat.ino
            )));
        }
        if stat.flags & EXTENTS_FL == 0 {
            if stat.size == 0 {
                return Ok(Vec::new());
            }
            return Err(Ext4Error::Unsupported(format!(
                "inode {} maps its blocks without extents (ext2/3 style)",
                stat.ino
            )));
        }
        let mut out = Vec::new();
        self.walk_extents(&stat.block, None, &mut out, &mut Vec::new(), stat)?;
        Ok(out)
    }

    /// Every block an extent-mapped inode owns, as `(first, count)` runs: its data, written or
    /// not, and its extent tree blocks (what freeing the inode gives back).
    pub fn owned_blocks(&self, stat: &Stat) -> Result<Vec<(u64, u64)>, Ext4Error> {
        if stat.flags & EXTENTS_FL == 0 {
            return Err(Ext4Error::Unsupported(format!(
                "inode {} maps its blocks without extents (ext2/3 style)",
                stat.ino
            )));
        }
        let mut owned = Vec::new();
        self.walk_extents(&stat.block, None, &mut Vec::new(), &mut owned, stat)?;
        Ok(owned)
    }

    /// Collects the extents of one tree node (`node` holds its header and entries).
    fn walk_extents(
        &self,
        node: &[u8],
        expect_depth: Option<u16>,
        out: &mut Vec<Mapping>,
        owned: &mut Vec<(u64, u64)>,
        stat: &Stat,
    ) -> Result<(), Ext4Error> {
        let bad = |what: &str| corrupt(format!("inode {}: extent tree: {what}", stat.ino));
        if le16(node, 0) != super::extent::MAGIC {
            return Err(bad("bad magic"));
        }
        let entries = usize::from(le16(node, 2));
        let max = usize::from(le16(node, 4));
        let depth = le16(node, 6);
        if entries > max || 12 * (max + 1) > node.len() {
            return Err(bad("more entries than fit"));
        }
        if depth > MAX_DEPTH || expect_depth.is_some_and(|d| d != depth) {
            return Err(bad("wrong depth"));
        }
        // Only the root (in the inode) may be empty: a node below holds something.
        if entries == 0 && expect_depth.is_some() {
            return Err(bad("an empty node below the root"));
        }
        let bs = self.block_size;
        let mut previous_key: Option<u64> = None;
        for i in 0..entries {
            let e = &node[12 + 12 * i..24 + 12 * i];
            let logical = u64::from(le32(e, 0));
            // Keys strictly increase: with non-empty nodes and extents this reads every tree
            // block at most once per file.
            if previous_key.is_some_and(|k| k >= logical) {
                return Err(bad("keys out of order"));
            }
            previous_key = Some(logical);
            if depth == 0 {
                let raw_len = le16(e, 4);
                let (len, written) = if raw_len > UNWRITTEN {
                    (raw_len - UNWRITTEN, false)
                } else {
                    (raw_len, true)
                };
                if len == 0 {
                    return Err(bad("an empty extent"));
                }
                let start = u64::from(le16(e, 6)) << 32 | u64::from(le32(e, 8));
                let len = u64::from(len);
                if start.checked_add(len).is_none_or(|end| end > self.blocks) {
                    return Err(bad("an extent lies past the filesystem's end"));
                }
                if out
                    .last()
                    .is_some_and(|m| m.file_offset + m.len > logical * bs)
                {
                    return Err(bad("extents overlap or are out of order"));
                }
                if out.len() as u64 >= self.blocks || out.len() >= MAX_EXTENTS {
                    return Err(bad("more extents than this reader takes"));
                }
                owned.push((start, len));
                out.push(Mapping {
                    file_offset: logical * bs,
                    offset: written.then_some(start * bs),
                    len: len * bs,
                });
            } else {
                let child = u64::from(le16(e, 8)) << 32 | u64::from(le32(e, 4));
                let mut block = vec![0u8; bs as usize];
                self.read_block(child, &mut block)?;
                owned.push((child, 1));
                self.walk_extents(&block, Some(depth - 1), out, owned, stat)?;
            }
        }
        Ok(())
    }

    /// The bytes of a file or directory that lie before its size, clipped to it.
    pub fn data(&self, stat: &Stat) -> Result<Vec<Mapping>, Ext4Error> {
        let mut out = self.mappings(stat)?;
        out.retain_mut(|m| {
            m.len = m.len.min(stat.size.saturating_sub(m.file_offset));
            m.len > 0
        });
        Ok(out)
    }

    /// Reads `buf.len()` bytes of the device at `offset` (from a [`Mapping`]).
    pub fn read_mapped(&self, offset: u64, buf: &mut [u8]) -> Result<(), Ext4Error> {
        self.read(offset, buf)
    }

    /// The entries of directory `stat`, without `.` and `..`.
    pub fn read_dir(&self, stat: &Stat) -> Result<Vec<DirEntry>, Ext4Error> {
        if stat.kind != FileType::Dir {
            return Err(corrupt(format!("inode {} is not a directory", stat.ino)));
        }
        if stat.size > MAX_DIR_SIZE {
            return Err(corrupt(format!(
                "directory inode {} claims {} bytes",
                stat.ino, stat.size
            )));
        }
        let bs = self.block_size as usize;
        let mut block = vec![0u8; bs];
        let mut out = Vec::new();
        for m in self.data(stat)? {
            let Some(start) = m.offset else { continue };
            for k in 0..m.len.div_ceil(bs as u64) {
                self.read(start + k * bs as u64, &mut block)?;
                self.parse_dir_block(&block, stat.ino, &mut out)?;
            }
        }
        Ok(out)
    }

    fn parse_dir_block(
        &self,
        b: &[u8],
        dir: u32,
        out: &mut Vec<DirEntry>,
    ) -> Result<(), Ext4Error> {
        let mut at = 0;
        while at + 8 <= b.len() {
            let ino = le32(b, at);
            let rec_len = usize::from(le16(b, at + 4));
            let name_len = usize::from(b[at + 6]);
            if rec_len < 8 || at + rec_len > b.len() || 8 + name_len > rec_len {
                return Err(corrupt(format!(
                    "directory inode {dir}: an entry overruns its block"
                )));
            }
            let name = &b[at + 8..at + 8 + name_len];
            if ino != 0 && name != b"." && name != b".." {
                if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
                    return Err(corrupt(format!(
                        "directory inode {dir}: invalid name {:?}",
                        String::from_utf8_lossy(name)
                    )));
                }
                out.push(DirEntry {
                    name: name.to_vec(),
                    ino,
                    file_type: b[at + 7],
                });
            }
            at += rec_len;
        }
        Ok(())
    }

    /// The target of symbolic link `stat`, as stored.
    pub fn read_link(&self, stat: &Stat) -> Result<Vec<u8>, Ext4Error> {
        if stat.kind != FileType::Symlink || stat.size > 65536 {
            return Err(corrupt(format!(
                "inode {} is not a symbolic link",
                stat.ino
            )));
        }
        let len = stat.size as usize;
        // A fast link keeps its target in i_block and has no extent tree.
        if stat.flags & EXTENTS_FL == 0 && len < 60 {
            return Ok(stat.block[..len].to_vec());
        }
        let mut out = vec![0u8; len];
        for m in self.data(stat)? {
            let from = m.file_offset as usize;
            let to = from + m.len as usize;
            if let Some(offset) = m.offset {
                self.read(offset, &mut out[from..to])?;
            }
        }
        Ok(out)
    }

    /// The inode at `path` (absolute, `/`-separated), following no symbolic link.
    pub fn lookup(&self, path: &[u8]) -> Result<Stat, Ext4Error> {
        let mut at = self.stat(super::ROOT_INO)?;
        for name in path
            .split(|&b| b == b'/')
            .filter(|n| !n.is_empty() && *n != b".")
        {
            let shown = || String::from_utf8_lossy(path).into_owned();
            if at.kind != FileType::Dir {
                return Err(Ext4Error::NotFound(shown()));
            }
            let entry = self
                .read_dir(&at)?
                .into_iter()
                .find(|e| e.name == name)
                .ok_or_else(|| Ext4Error::NotFound(shown()))?;
            at = self.stat(entry.ino)?;
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tree::{Kind, Meta, Node, Tree};
    use super::super::{FormatOptions, plan};
    use super::*;
    use crate::disk::sink::{BlockSink, SparseBuffer};

    /// A filesystem made by our writer, data included.
    fn image(tree: &Tree, contents: &dyn Fn(usize) -> Vec<u8>) -> SparseBuffer {
        let mut dev = SparseBuffer::new(64 << 20);
        let plan = plan(64 << 20, tree, &FormatOptions::new("t")).unwrap();
        plan.write_metadata(&mut dev).unwrap();
        for run in plan.data() {
            let data = contents(run.node);
            let from = run.file_offset as usize;
            dev.write_at(run.offset, &data[from..from + run.len as usize])
                .unwrap();
        }
        dev
    }

    fn meta(perm: u16) -> Meta {
        let t = Time {
            secs: 4_102_444_800,
            nanos: 7,
        };
        Meta {
            perm,
            uid: 70000,
            gid: 3,
            atime: t,
            mtime: t,
            ctime: t,
        }
    }

    #[test]
    fn reads_back_what_the_writer_made() {
        let mut t = Tree::new(meta(0o755));
        let d = t
            .add(
                Tree::ROOT,
                b"d",
                Node {
                    meta: meta(0o1777),
                    kind: Kind::Dir(Default::default()),
                },
            )
            .unwrap();
        // Every other block: 20 extents, a leaf block.
        let data: Vec<(u64, u64)> = (0..20).map(|i| (i * 8192, 4096)).collect();
        let f = t
            .add(
                d,
                b"f",
                Node {
                    meta: meta(0o4755),
                    kind: Kind::File {
                        size: 20 * 8192,
                        data,
                    },
                },
            )
            .unwrap();
        t.add(
            Tree::ROOT,
            b"slow",
            Node {
                meta: meta(0o777),
                kind: Kind::Symlink(vec![b'x'; 100]),
            },
        )
        .unwrap();
        t.link(Tree::ROOT, b"again", f).unwrap();
        let bytes: Vec<u8> = (0..20 * 8192).map(|i| (i % 251) as u8).collect();
        let dev = image(&t, &|_| bytes.clone());
        let fs = Filesystem::open(dev).unwrap();
        let root = fs.stat(2).unwrap();
        let names: Vec<Vec<u8>> = fs
            .read_dir(&root)
            .unwrap()
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, [&b"lost+found"[..], b"again", b"d", b"slow"]);
        let file = fs.lookup(b"/d/f").unwrap();
        assert_eq!(
            (file.kind, file.perm, file.uid, file.links),
            (FileType::File, 0o4755, 70000, 2)
        );
        assert_eq!(file.mtime, meta(0).mtime);
        let maps = fs.data(&file).unwrap();
        assert_eq!(maps.len(), 20);
        let mut got = vec![0u8; 4096];
        fs.read_mapped(maps[3].offset.unwrap(), &mut got).unwrap();
        assert_eq!(got, bytes[3 * 8192..3 * 8192 + 4096]);
        assert_eq!(
            fs.read_link(&fs.lookup(b"/slow").unwrap()).unwrap(),
            vec![b'x'; 100]
        );
        assert!(matches!(
            fs.lookup(b"/d/missing"),
            Err(Ext4Error::NotFound(_))
        ));
    }

    #[test]
    fn refuses_recovery_and_garbage() {
        let t = Tree::new(meta(0o755));
        let mut dev = image(&t, &|_| Vec::new());
        let mut sb = [0u8; 1024];
        dev.read_at(1024, &mut sb);
        let incompat = le32(&sb, 0x60) | INCOMPAT_RECOVER;
        dev.write_at(1024 + 0x60, &incompat.to_le_bytes()).unwrap();
        assert!(matches!(
            Filesystem::open(&dev),
            Err(Ext4Error::NeedsRecovery)
        ));
        // Nothing to replay (s_start = 0): the recovering open reads it, flag cleared.
        let (fs, facts) = Filesystem::open_recovering(&dev).unwrap();
        assert_eq!(
            facts,
            Some(RecoveryFacts {
                transactions: 0,
                blocks: 0
            })
        );
        let mut sb = [0u8; 1024];
        fs.read(OFFSET, &mut sb).unwrap();
        assert_eq!(le32(&sb, 0x60) & INCOMPAT_RECOVER, 0);
        assert!(fs.lookup(b"/lost+found").is_ok());
        assert!(Filesystem::open(vec![0u8; 4096].as_slice()).is_err());
    }

    #[test]
    fn refuses_hostile_extent_trees_and_a_device_too_small() {
        let mut t = Tree::new(meta(0o755));
        let data: Vec<(u64, u64)> = (0..20).map(|i| (i * 8192, 4096)).collect();
        let file = Node {
            meta: meta(0o644),
            kind: Kind::File {
                size: 20 * 8192,
                data,
            },
        };
        t.add(Tree::ROOT, b"f", file).unwrap();
        let dev = image(&t, &|_| vec![1u8; 20 * 8192]);
        let (leaf, bs) = {
            let fs = Filesystem::open(&dev).unwrap();
            let f = fs.lookup(b"/f").unwrap();
            assert_eq!(le16(&f.block, 6), 1, "the root indexes one leaf block");
            let leaf = u64::from(le32(&f.block, 16)) | u64::from(le16(&f.block, 20)) << 32;
            (leaf, fs.block_size)
        };
        let entry = |i: u64| leaf * bs + 12 + 12 * i;
        for (what, at, bytes) in [
            ("an empty extent", entry(3) + 4, &0u16.to_le_bytes()[..]),
            ("keys out of order", entry(3), &0u32.to_le_bytes()[..]),
            (
                "an empty node below the root",
                leaf * bs + 2,
                &0u16.to_le_bytes()[..],
            ),
        ] {
            let mut bad = dev.clone();
            bad.write_at(at, bytes).unwrap();
            let fs = Filesystem::open(&bad).unwrap();
            let err = fs.mappings(&fs.lookup(b"/f").unwrap()).unwrap_err();
            assert!(err.to_string().contains(what), "{what}: {err}");
        }
        // The superblock says 64 MiB; the device holds 32.
        let mut half = vec![0u8; 32 << 20];
        SparseBuffer::read_at(&dev, 0, &mut half);
        let err = Filesystem::open(half.as_slice()).err().unwrap().to_string();
        assert!(err.contains("do not fit the 33554432-byte device"), "{err}");
    }
}
