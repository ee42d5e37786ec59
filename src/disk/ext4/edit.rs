//! Changing an existing ext4 filesystem in place: allocating inodes and blocks, adding files,
//! directories, symbolic and hard links, removing names.
//!
//! [`Editor`] opens what our formatter makes and what `mkfs.ext4` (e2fsprogs 1.47, default
//! features, 4 KiB blocks) makes and the kernel has written to. Every change keeps the
//! bitmaps, their checksums, the group descriptors' counts and flags, the superblock's free
//! counts and every inode, directory and extent checksum exact, so `e2fsck -fn` finds nothing
//! to fix. There is no journal and no write ordering: the device is meant to be committed
//! atomically as a whole (a copy-on-write layer does that), and an error leaves it to be
//! dropped.
//!
//! Inodes are written as soon as they change; a changed directory is kept in memory and laid
//! out again whole by [`Editor::finish`] (linear or hashed, as the formatter decides by size)
//! into newly allocated blocks, so adding thousands of names costs one rebuild. Bitmaps,
//! descriptors and the superblock are written by [`Editor::finish`] too.
//!
//! Times are the caller's: new inodes get the [`Meta`] given, and a changed directory keeps
//! its times unless [`Editor::set_meta`] sets them (the kernel would set them to now).
//! Not handled: 1 KiB blocks (refused), removing directories, ext2/3-style block-mapped files
//! (refused when unlinked), inline data, quotas and the other features [`Editor::open`]
//! refuses.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use super::dir::{self, Entry};
use super::extent::{self, Extent};
use super::group::{self, GroupDesc};
use super::inode::{self, EXTENTS_FL, INDEX_FL, Inode, S_IFDIR, S_IFLNK, S_IFREG};
use super::layout::{self, BG_BLOCK_UNINIT, BG_INODE_UNINIT, MAX_EXTENT_LEN, Run};
use super::populate::{FAST_SYMLINK_MAX, MAX_FILE_BLOCKS, file_blocks};
use super::read::{FileType, Filesystem, Stat};
use super::superblock::{self, MAGIC, get16, get32, put16, put32};
use super::tree::{MAX_LINKS, MAX_SYMLINK, Meta, check_name};
use super::{Ext4Error, ROOT_INO, csum, htree};
use crate::disk::sink::{BlockSink, BlockSource};

/// The only block size edited.
const BS: u64 = 4096;
/// `s_feature_compat` bits kept exact without doing anything: journal, xattrs,
/// `resize_inode` (its reserved blocks are marked used), `dir_index`, fast commit,
/// stable inodes, the orphan file.
const COMPAT_KEPT: u32 = 0x4 | 0x8 | 0x10 | 0x20 | 0x400 | 0x800 | 0x1000;
/// `s_feature_incompat` bits edited: filetype, extent, 64bit, flex_bg, metadata_csum_seed,
/// large_dir.
const INCOMPAT_KEPT: u32 = 0x2 | 0x40 | 0x80 | 0x200 | 0x2000 | 0x4000;
/// `s_feature_incompat`: the journal needs replaying.
const INCOMPAT_RECOVER: u32 = 0x4;
/// `s_feature_incompat`: the checksum seed is stored in the superblock.
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
/// `s_feature_ro_compat` bits edited: sparse_super, large_file, huge_file, dir_nlink,
/// extra_isize, metadata_csum.
const RO_COMPAT_KEPT: u32 = 0x1 | 0x2 | 0x8 | 0x20 | 0x40 | 0x400;
/// The features an edited filesystem must have.
const INCOMPAT_NEEDED: u32 =
    superblock::INCOMPAT_FILETYPE | superblock::INCOMPAT_EXTENTS | superblock::INCOMPAT_64BIT;
/// `s_flags`: directory hashes use unsigned characters (our hash uses signed ones).
const FLAG_UNSIGNED_HASH: u32 = 0x2;
/// The most links a directory counts before it counts 1 (`EXT4_LINK_MAX`, `dir_nlink`).
const DIR_LINK_MAX: u16 = 65000;

/// `len` bytes of a new file, from `file_offset` on, go to byte `offset` of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileRun {
    /// From where in the file (block-aligned).
    pub file_offset: u64,
    /// Where on the device (block-aligned).
    pub offset: u64,
    /// Bytes (whole blocks, except at the end of the file).
    pub len: u64,
}

/// A directory being edited: its entries other than `.` and `..`.
#[derive(Debug)]
struct Dir {
    parent: u32,
    entries: BTreeMap<Vec<u8>, (u32, u8)>,
    dirty: bool,
}

/// A group's bitmap in memory and whether it changed.
#[derive(Debug)]
struct Bitmap {
    bits: Vec<u8>,
    dirty: bool,
    /// No bit below this is clear (a search hint).
    first_free: usize,
}

/// An existing filesystem, opened for editing. See the module documentation.
#[derive(Debug)]
pub struct Editor<D> {
    dev: D,
    sb: Vec<u8>,
    /// Seed of every metadata checksum (from the UUID or `s_checksum_seed`).
    seed: u32,
    blocks: u64,
    blocks_per_group: u64,
    inodes_per_group: u32,
    first_ino: u32,
    sparse_super: bool,
    /// Blocks after each superblock copy: the descriptor table and its reserved growth.
    gdt_blocks: u64,
    hash_seed: [u8; 16],
    /// Whether directories may get a hashed index (our hash matches the filesystem's).
    hashed: bool,
    desc: Vec<[u8; GroupDesc::SIZE]>,
    block_bitmaps: HashMap<u64, Bitmap>,
    inode_bitmaps: HashMap<u64, Bitmap>,
    dirs: HashMap<u32, Dir>,
}

fn unsupported(what: impl Into<String>) -> Ext4Error {
    Ext4Error::Unsupported(what.into())
}

fn invalid(what: impl Into<String>) -> Ext4Error {
    Ext4Error::Invalid(what.into())
}

fn get_bit(bits: &[u8], i: usize) -> bool {
    bits[i / 8] & (1 << (i % 8)) != 0
}

/// A 32-bit descriptor field split into a low and a high half of 16 bits.
#[derive(Clone, Copy)]
struct Field(usize, usize);

const FREE_BLOCKS: Field = Field(0x0C, 0x2C);
const FREE_INODES: Field = Field(0x0E, 0x2E);
const USED_DIRS: Field = Field(0x10, 0x30);
const BLOCK_CSUM: Field = Field(0x18, 0x38);
const INODE_CSUM: Field = Field(0x1A, 0x3A);
const ITABLE_UNUSED: Field = Field(0x1C, 0x32);
const FLAGS: usize = 0x12;

fn get_field(d: &[u8], f: Field) -> u32 {
    u32::from(get16(d, f.0)) | u32::from(get16(d, f.1)) << 16
}

fn set_field(d: &mut [u8], f: Field, v: u32) {
    put16(d, f.0, v as u16);
    put16(d, f.1, (v >> 16) as u16);
}

/// Adds `delta` to a descriptor count.
fn add_field(d: &mut [u8], f: Field, delta: i64) {
    let v = i64::from(get_field(d, f)) + delta;
    set_field(d, f, v as u32);
}

fn get_wide(d: &[u8], lo: usize, hi: usize) -> u64 {
    u64::from(get32(d, lo)) | u64::from(get32(d, hi)) << 32
}

/// The `file_type` of a directory entry for an inode of `mode`.
fn file_type(mode: u16) -> u8 {
    match mode & 0o170000 {
        S_IFREG => dir::FT_REG_FILE,
        S_IFDIR => dir::FT_DIR,
        S_IFLNK => dir::FT_SYMLINK,
        0o020000 => 3, // character device
        0o060000 => 4, // block device
        0o010000 => 5, // FIFO
        0o140000 => 6, // socket
        _ => 0,
    }
}

/// The extents of `runs` laid one after another from logical block `logical` on, none
/// longer than an initialised extent may be.
fn extents_of(mut logical: u64, runs: &[Run], out: &mut Vec<Extent>) {
    for r in runs {
        let mut done = 0;
        while done < r.len {
            let len = (r.len - done).min(MAX_EXTENT_LEN);
            out.push(Extent {
                logical: logical as u32,
                start: r.start + done,
                len,
            });
            logical += len;
            done += len;
        }
    }
}

/// Blocks a new file of `size` bytes holding data in `data` (offset, length) takes when its
/// data land in as few runs as possible: data blocks plus extent tree blocks. A fragmented
/// free space may need a few tree blocks more.
pub fn file_blocks_needed(size: u64, data: &[(u64, u64)]) -> u64 {
    let ranges = file_blocks(size, data);
    let extents: u64 = ranges.iter().map(|(_, c)| c.div_ceil(MAX_EXTENT_LEN)).sum();
    let blocks: u64 = ranges.iter().map(|(_, c)| c).sum();
    blocks + extent::tree_blocks(extents as usize) as u64
}

impl<D: BlockSource + BlockSink> Editor<D> {
    /// Opens the filesystem on `dev` for editing; refuses, before anything is written, one
    /// that is not clean or uses a feature whose structures edits would have to keep and do
    /// not (the error names it).
    pub fn open(dev: D) -> Result<Self, Ext4Error> {
        let mut sb = vec![0u8; superblock::Superblock::SIZE];
        dev.read_at(superblock::OFFSET, &mut sb)
            .map_err(|_| Ext4Error::NotExt4("the device is smaller than a superblock"))?;
        if get16(&sb, 0x38) != MAGIC {
            return Err(Ext4Error::NotExt4("no ext2/3/4 magic number"));
        }
        if csum::raw(!0, &sb[..0x3FC]) != get32(&sb, 0x3FC) {
            return Err(Ext4Error::Corrupt(
                "the superblock checksum is wrong".into(),
            ));
        }
        let log = get32(&sb, 0x18);
        if log != 2 {
            return Err(unsupported(format!(
                "blocks of {} bytes; only 4096-byte blocks are edited",
                1024u64 << log.min(20)
            )));
        }
        let [compat, incompat, ro_compat] = [0x5C, 0x60, 0x64].map(|at| get32(&sb, at));
        if incompat & INCOMPAT_RECOVER != 0 {
            return Err(Ext4Error::NeedsRecovery);
        }
        let state = get16(&sb, 0x3A);
        if state & 1 == 0 || state & 2 != 0 {
            return Err(unsupported(
                "the filesystem is not clean (not cleanly unmounted, or with errors); run e2fsck on it first",
            ));
        }
        if get32(&sb, 0xE8) != 0 {
            return Err(unsupported(
                "the filesystem has orphan inodes to clean up; run e2fsck on it first",
            ));
        }
        let names = |word: u32, kept: u32| {
            let bits = word & !kept;
            (bits != 0).then_some(bits)
        };
        if let Some(bits) = names(compat, COMPAT_KEPT) {
            return Err(unsupported(format!(
                "compatible features 0x{bits:x} (sparse_super2 or newer) are not kept by edits"
            )));
        }
        if let Some(bits) = names(incompat, INCOMPAT_KEPT) {
            return Err(unsupported(format!(
                "incompatible features 0x{bits:x} (meta_bg, mmp, inline_data, encrypt, casefold or newer) are not kept by edits"
            )));
        }
        if let Some(bits) = names(ro_compat, RO_COMPAT_KEPT) {
            return Err(unsupported(format!(
                "read-only compatible features 0x{bits:x} (bigalloc, quota, project, verity, orphan_present or newer) are not kept by edits"
            )));
        }
        if incompat & INCOMPAT_NEEDED != INCOMPAT_NEEDED
            || ro_compat & superblock::RO_COMPAT_METADATA_CSUM == 0
        {
            return Err(unsupported(
                "only filesystems with filetype, extent, 64bit and metadata_csum are edited",
            ));
        }
        if get16(&sb, 0x58) != 256 || get16(&sb, 0xFE) != GroupDesc::SIZE as u16 {
            return Err(unsupported(format!(
                "inodes of {} bytes and descriptors of {} bytes; only 256 and 64 are edited",
                get16(&sb, 0x58),
                get16(&sb, 0xFE)
            )));
        }
        let blocks = get_wide(&sb, 0x04, 0x150);
        let blocks_per_group = u64::from(get32(&sb, 0x20));
        let inodes_per_group = get32(&sb, 0x28);
        if get32(&sb, 0x14) != 0
            || blocks_per_group == 0
            || blocks_per_group > BS * 8
            || u64::from(get32(&sb, 0x24)) != blocks_per_group
            || inodes_per_group == 0
            || u64::from(inodes_per_group) > BS * 8
            || !inodes_per_group.is_multiple_of(8)
            || blocks.checked_mul(BS).is_none_or(|b| b > dev.size())
        {
            return Err(Ext4Error::Corrupt(
                "the superblock's geometry does not fit the device".into(),
            ));
        }
        let groups = blocks.div_ceil(blocks_per_group);
        if u64::from(get32(&sb, 0x00)) != groups * u64::from(inodes_per_group) {
            return Err(Ext4Error::Corrupt(
                "s_inodes_count is not inodes per group times groups".into(),
            ));
        }
        let seed = if incompat & INCOMPAT_CSUM_SEED != 0 {
            get32(&sb, 0x270)
        } else {
            csum::fs_seed(sb[0x68..0x78].try_into().expect("16 bytes"))
        };
        let desc_blocks = (groups * GroupDesc::SIZE as u64).div_ceil(BS);
        let mut table = vec![0u8; (desc_blocks * BS) as usize];
        dev.read_at(BS, &mut table)?;
        let mut desc = Vec::with_capacity(groups as usize);
        for (g, raw) in table
            .chunks_exact(GroupDesc::SIZE)
            .take(groups as usize)
            .enumerate()
        {
            let mut d: [u8; GroupDesc::SIZE] = raw.try_into().expect("64 bytes");
            let stored = get16(&d, 0x1E);
            group::set_checksum(&mut d, g as u32, seed);
            if get16(&d, 0x1E) != stored {
                return Err(Ext4Error::Corrupt(format!(
                    "group descriptor {g} has a wrong checksum"
                )));
            }
            desc.push(d);
        }
        let flags = get32(&sb, 0x160);
        Ok(Self {
            seed,
            blocks,
            blocks_per_group,
            inodes_per_group,
            first_ino: get32(&sb, 0x54).max(11),
            sparse_super: ro_compat & superblock::RO_COMPAT_SPARSE_SUPER != 0,
            gdt_blocks: desc_blocks + u64::from(get16(&sb, 0xCE)),
            hash_seed: sb[0xEC..0xFC].try_into().expect("16 bytes"),
            hashed: compat & superblock::COMPAT_DIR_INDEX != 0
                && sb[0xFC] == htree::HALF_MD4
                && flags & FLAG_UNSIGNED_HASH == 0,
            desc,
            block_bitmaps: HashMap::new(),
            inode_bitmaps: HashMap::new(),
            dirs: HashMap::new(),
            sb,
            dev,
        })
    }

    /// The device, to write the data of new files where [`Editor::create_file`] says.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// The root directory's inode.
    pub fn root(&self) -> u32 {
        ROOT_INO
    }

    /// Free blocks, reserved ones included (the editor writes as root).
    pub fn free_blocks(&self) -> u64 {
        self.desc
            .iter()
            .map(|d| u64::from(get_field(d, FREE_BLOCKS)))
            .sum()
    }

    /// Free inodes.
    pub fn free_inodes(&self) -> u64 {
        self.desc
            .iter()
            .map(|d| u64::from(get_field(d, FREE_INODES)))
            .sum()
    }

    /// What inode `ino` says (as on the device now).
    pub fn stat(&self, ino: u32) -> Result<Stat, Ext4Error> {
        Filesystem::open(&self.dev)?.stat(ino)
    }

    /// The inode and type that `name` names in directory `parent`, if any.
    pub fn lookup(
        &mut self,
        parent: u32,
        name: &[u8],
    ) -> Result<Option<(u32, FileType)>, Ext4Error> {
        Ok(self.dir(parent)?.entries.get(name).map(|&(ino, ft)| {
            let kind = match ft {
                dir::FT_DIR => FileType::Dir,
                dir::FT_REG_FILE => FileType::File,
                dir::FT_SYMLINK => FileType::Symlink,
                _ => FileType::Special,
            };
            (ino, kind)
        }))
    }

    /// Makes directory `name` in `parent`; returns its inode.
    pub fn mkdir(&mut self, parent: u32, name: &[u8], meta: Meta) -> Result<u32, Ext4Error> {
        self.check_new_name(parent, name)?;
        let ino = self.alloc_inode(parent, true)?;
        let node = Inode {
            mode: S_IFDIR | (meta.perm & 0o7777),
            uid: meta.uid,
            gid: meta.gid,
            atime: meta.atime,
            ctime: meta.ctime,
            mtime: meta.mtime,
            links: 2,
            flags: EXTENTS_FL,
            block: extent::tree(&[], &[], 0).0,
            extra_isize: inode::EXTRA_ISIZE,
            ..Inode::default()
        };
        self.write_inode(ino, node.encode(ino, self.seed))?;
        self.dirs.insert(
            ino,
            Dir {
                parent,
                entries: BTreeMap::new(),
                dirty: true,
            },
        );
        self.add_entry(parent, name, ino, dir::FT_DIR)?;
        let mut p = self.read_inode(parent)?;
        let links = get16(&p, 0x1A);
        let links = if links == 1 || links >= DIR_LINK_MAX {
            1
        } else {
            links + 1
        };
        put16(&mut p, 0x1A, links);
        self.write_inode(parent, p)?;
        Ok(ino)
    }

    /// Makes regular file `name` in `parent`, `size` bytes long with data in the byte ranges
    /// `data` (offset, length; ascending, disjoint) and holes elsewhere. Returns its inode and
    /// where on the device each range of its bytes goes: the caller writes them there.
    pub fn create_file(
        &mut self,
        parent: u32,
        name: &[u8],
        meta: Meta,
        size: u64,
        data: &[(u64, u64)],
    ) -> Result<(u32, Vec<FileRun>), Ext4Error> {
        self.check_new_name(parent, name)?;
        if size.div_ceil(BS) > MAX_FILE_BLOCKS {
            return Err(Ext4Error::FileTooLarge { size });
        }
        let needed = file_blocks_needed(size, data);
        if needed > self.free_blocks() {
            return Err(Ext4Error::NoSpace {
                needed,
                free: self.free_blocks(),
            });
        }
        let ino = self.alloc_inode(parent, false)?;
        let mut goal = self.group_start(self.group_of(ino));
        let mut extents = Vec::new();
        for (first, count) in file_blocks(size, data) {
            let runs = self.alloc_blocks(goal, count)?;
            goal = runs.last().map_or(goal, |r| r.end());
            extents_of(first, &runs, &mut extents);
        }
        let runs = extents
            .iter()
            .map(|e| {
                let file_offset = u64::from(e.logical) * BS;
                FileRun {
                    file_offset,
                    offset: e.start * BS,
                    len: (e.len * BS).min(size - file_offset),
                }
            })
            .collect();
        let (block, owned) = self.write_extent_tree(ino, &extents, goal)?;
        let node = Inode {
            mode: S_IFREG | (meta.perm & 0o7777),
            uid: meta.uid,
            gid: meta.gid,
            size,
            atime: meta.atime,
            ctime: meta.ctime,
            mtime: meta.mtime,
            links: 1,
            sectors: owned * (BS / 512),
            flags: EXTENTS_FL,
            block,
            extra_isize: inode::EXTRA_ISIZE,
        };
        self.write_inode(ino, node.encode(ino, self.seed))?;
        self.add_entry(parent, name, ino, dir::FT_REG_FILE)?;
        Ok((ino, runs))
    }

    /// Makes symbolic link `name` in `parent` pointing at `target`: in the inode itself when
    /// shorter than 60 bytes, else in a block. Returns its inode.
    pub fn symlink(
        &mut self,
        parent: u32,
        name: &[u8],
        meta: Meta,
        target: &[u8],
    ) -> Result<u32, Ext4Error> {
        self.check_new_name(parent, name)?;
        if !(1..=MAX_SYMLINK).contains(&target.len()) {
            return Err(invalid(format!(
                "a symbolic link target of {} bytes; it must be 1 to {MAX_SYMLINK} bytes",
                target.len()
            )));
        }
        let ino = self.alloc_inode(parent, false)?;
        let (flags, block, sectors) = if target.len() <= FAST_SYMLINK_MAX {
            let mut block = [0u8; 60];
            block[..target.len()].copy_from_slice(target);
            (0, block, 0)
        } else {
            let goal = self.group_start(self.group_of(ino));
            let runs = self.alloc_blocks(goal, 1)?;
            let mut b = vec![0u8; BS as usize];
            b[..target.len()].copy_from_slice(target);
            self.dev.write_at(runs[0].start * BS, &b)?;
            let mut extents = Vec::new();
            extents_of(0, &runs, &mut extents);
            let (block, owned) = self.write_extent_tree(ino, &extents, runs[0].end())?;
            (EXTENTS_FL, block, owned * (BS / 512))
        };
        let node = Inode {
            mode: S_IFLNK | (meta.perm & 0o7777),
            uid: meta.uid,
            gid: meta.gid,
            size: target.len() as u64,
            atime: meta.atime,
            ctime: meta.ctime,
            mtime: meta.mtime,
            links: 1,
            sectors,
            flags,
            block,
            extra_isize: inode::EXTRA_ISIZE,
        };
        self.write_inode(ino, node.encode(ino, self.seed))?;
        self.add_entry(parent, name, ino, dir::FT_SYMLINK)?;
        Ok(ino)
    }

    /// Gives file (or symbolic link) `ino` the further name `name` in `parent`.
    pub fn link(&mut self, parent: u32, name: &[u8], ino: u32) -> Result<(), Ext4Error> {
        self.check_new_name(parent, name)?;
        let mut b = self.read_inode(ino)?;
        let mode = get16(&b, 0x00);
        let links = get16(&b, 0x1A);
        if mode & 0o170000 == S_IFDIR {
            return Err(invalid(format!(
                "inode {ino} is a directory, which cannot have a second name"
            )));
        }
        if links == 0 {
            return Err(invalid(format!("inode {ino} is not in use")));
        }
        if usize::from(links) >= MAX_LINKS {
            return Err(Ext4Error::TooManyLinks {
                links: usize::from(links) + 1,
            });
        }
        put16(&mut b, 0x1A, links + 1);
        self.write_inode(ino, b)?;
        self.add_entry(parent, name, ino, file_type(mode))
    }

    /// Removes the name `name` (a file, symbolic link or special file, not a directory) from
    /// `parent`; the inode's last name frees it and all its blocks, extent tree included.
    pub fn unlink(&mut self, parent: u32, name: &[u8]) -> Result<(), Ext4Error> {
        let shown = || String::from_utf8_lossy(name).into_owned();
        let &(ino, ft) = self
            .dir(parent)?
            .entries
            .get(name)
            .ok_or_else(|| Ext4Error::NotFound(shown()))?;
        if ft == dir::FT_DIR {
            return Err(invalid(format!(
                "{:?} in directory inode {parent} is a directory; removing directories is not supported",
                shown()
            )));
        }
        let mut b = self.read_inode(ino)?;
        let links = get16(&b, 0x1A);
        if links <= 1 {
            self.free_inode(ino, &mut b)?;
        } else {
            put16(&mut b, 0x1A, links - 1);
        }
        self.write_inode(ino, b)?;
        let d = self.dir(parent)?;
        d.entries.remove(name);
        d.dirty = true;
        Ok(())
    }

    /// Sets the permissions, owner and times of inode `ino` (its type stays).
    pub fn set_meta(&mut self, ino: u32, meta: Meta) -> Result<(), Ext4Error> {
        let mut b = self.read_inode(ino)?;
        let mode = get16(&b, 0x00) & 0o170000 | (meta.perm & 0o7777);
        put16(&mut b, 0x00, mode);
        put16(&mut b, 0x02, meta.uid as u16);
        put16(&mut b, 0x78, (meta.uid >> 16) as u16);
        put16(&mut b, 0x18, meta.gid as u16);
        put16(&mut b, 0x7A, (meta.gid >> 16) as u16);
        let extra = get16(&b, 0x80);
        for (base, extra_at, t) in [
            (0x08, 0x8C, meta.atime),
            (0x0C, 0x84, meta.ctime),
            (0x10, 0x88, meta.mtime),
        ] {
            let (low, high) = t.encode();
            put32(&mut b, base, low);
            if usize::from(extra) + 128 >= extra_at + 4 {
                put32(&mut b, extra_at, high);
            }
        }
        self.write_inode(ino, b)
    }

    /// Lays out every changed directory again, writes the bitmaps, group descriptors and
    /// superblock, and returns the device.
    pub fn finish(mut self) -> Result<D, Ext4Error> {
        let mut dirty: Vec<u32> = self
            .dirs
            .iter()
            .filter(|(_, d)| d.dirty)
            .map(|(&ino, _)| ino)
            .collect();
        dirty.sort_unstable();
        for ino in dirty {
            self.rebuild_dir(ino)?;
        }
        let bpg_bytes = (self.blocks_per_group / 8) as usize;
        let ipg_bytes = (self.inodes_per_group / 8) as usize;
        let mut block_maps: Vec<(u64, Vec<u8>)> = self
            .block_bitmaps
            .drain()
            .filter(|(_, b)| b.dirty)
            .map(|(g, b)| (g, b.bits))
            .collect();
        block_maps.sort_unstable_by_key(|(g, _)| *g);
        for (g, bits) in block_maps {
            let d = &mut self.desc[g as usize];
            set_field(
                d,
                BLOCK_CSUM,
                group::bitmap_csum(self.seed, &bits[..bpg_bytes]),
            );
            let flags = get16(d, FLAGS);
            put16(d, FLAGS, flags & !BG_BLOCK_UNINIT);
            let at = get_wide(d, 0x00, 0x20);
            self.dev.write_at(at * BS, &bits)?;
        }
        let mut inode_maps: Vec<(u64, Vec<u8>)> = self
            .inode_bitmaps
            .drain()
            .filter(|(_, b)| b.dirty)
            .map(|(g, b)| (g, b.bits))
            .collect();
        inode_maps.sort_unstable_by_key(|(g, _)| *g);
        for (g, bits) in inode_maps {
            let d = &mut self.desc[g as usize];
            set_field(
                d,
                INODE_CSUM,
                group::bitmap_csum(self.seed, &bits[..ipg_bytes]),
            );
            let flags = get16(d, FLAGS);
            put16(d, FLAGS, flags & !BG_INODE_UNINIT);
            let at = get_wide(d, 0x04, 0x24);
            self.dev.write_at(at * BS, &bits)?;
        }
        let mut table = Vec::with_capacity(self.desc.len() * GroupDesc::SIZE);
        for (g, d) in self.desc.iter_mut().enumerate() {
            group::set_checksum(d, g as u32, self.seed);
            table.extend_from_slice(&d[..]);
        }
        self.dev.write_at(BS, &table)?;
        let free_blocks = self.free_blocks();
        let free_inodes = self.free_inodes();
        let sb = &mut self.sb;
        put32(sb, 0x0C, free_blocks as u32);
        put32(sb, 0x158, (free_blocks >> 32) as u32);
        put32(sb, 0x10, free_inodes as u32);
        let sum = csum::raw(!0, &sb[..0x3FC]);
        put32(sb, 0x3FC, sum);
        self.dev.write_at(superblock::OFFSET, &self.sb)?;
        Ok(self.dev)
    }

    // ---- Directories -----------------------------------------------------------------------

    /// Refuses a name that is invalid or already in `parent`.
    fn check_new_name(&mut self, parent: u32, name: &[u8]) -> Result<(), Ext4Error> {
        check_name(name).map_err(|e| invalid(e.to_string()))?;
        if self.dir(parent)?.entries.contains_key(name) {
            return Err(invalid(format!(
                "{:?} already exists in directory inode {parent}",
                String::from_utf8_lossy(name)
            )));
        }
        Ok(())
    }

    fn add_entry(&mut self, parent: u32, name: &[u8], ino: u32, ft: u8) -> Result<(), Ext4Error> {
        let d = self.dir(parent)?;
        d.entries.insert(name.to_vec(), (ino, ft));
        d.dirty = true;
        Ok(())
    }

    /// Directory `ino`, read from the device the first time.
    fn dir(&mut self, ino: u32) -> Result<&mut Dir, Ext4Error> {
        if !self.dirs.contains_key(&ino) {
            let loaded = self.load_dir(ino)?;
            self.dirs.insert(ino, loaded);
        }
        Ok(self.dirs.get_mut(&ino).expect("inserted above"))
    }

    fn load_dir(&self, ino: u32) -> Result<Dir, Ext4Error> {
        let fs = Filesystem::open(&self.dev)?;
        let stat = fs.stat(ino)?;
        if stat.kind != FileType::Dir || stat.links == 0 {
            return Err(invalid(format!("inode {ino} is not a directory")));
        }
        let mut entries = BTreeMap::new();
        for e in fs.read_dir(&stat)? {
            entries.insert(e.name, (e.ino, e.file_type));
        }
        // `..` is the second entry of the first block, after the 12 bytes of `.`.
        let first = fs
            .data(&stat)?
            .first()
            .and_then(|m| m.offset)
            .ok_or_else(|| Ext4Error::Corrupt(format!("directory inode {ino} has no blocks")))?;
        let mut dots = [0u8; 24];
        fs.read_mapped(first, &mut dots)?;
        if get16(&dots, 4) != 12 || &dots[20..22] != b".." {
            return Err(Ext4Error::Corrupt(format!(
                "directory inode {ino} does not start with . and .."
            )));
        }
        Ok(Dir {
            parent: get32(&dots, 12),
            entries,
            dirty: false,
        })
    }

    /// Lays directory `ino` out again into new blocks, freeing its old ones.
    fn rebuild_dir(&mut self, ino: u32) -> Result<(), Ext4Error> {
        let mut b = self.read_inode(ino)?;
        if get16(&b, 0x28) == extent::MAGIC && get16(&b, 0x2A) > 0 {
            let stat = self.stat(ino)?;
            let owned = Filesystem::open(&self.dev)?.owned_blocks(&stat)?;
            for (start, len) in owned {
                self.free_blocks_at(start, len)?;
            }
        }
        let generation = get32(&b, 0x64);
        let iseed = csum::inode_seed(self.seed, ino, generation);
        let d = &self.dirs[&ino];
        let dot = |ino| Entry {
            ino,
            name: b".",
            file_type: dir::FT_DIR,
        };
        let mut entries = vec![
            dot(ino),
            Entry {
                ino: d.parent,
                name: b"..",
                file_type: dir::FT_DIR,
            },
        ];
        entries.extend(d.entries.iter().map(|(name, &(ino, file_type))| Entry {
            ino,
            name,
            file_type,
        }));
        let index = if self.hashed {
            let names: Vec<&[u8]> = entries[2..].iter().map(|e| e.name).collect();
            htree::plan(&names, &self.hash_seed)
        } else {
            None
        };
        let blocks = match &index {
            Some(index) => index.encode(ino, d.parent, &entries[2..], iseed),
            None => dir::blocks(&entries, iseed),
        };
        let count = blocks.len() as u64;
        let goal = self.group_start(self.group_of(ino));
        let runs = self.alloc_blocks(goal, count)?;
        let physical = runs.iter().flat_map(|r| r.start..r.end());
        for (at, block) in physical.zip(&blocks) {
            self.dev.write_at(at * BS, &block[..])?;
        }
        let mut extents = Vec::new();
        extents_of(0, &runs, &mut extents);
        let after = runs.last().map_or(goal, |r| r.end());
        let (block, owned) = self.write_extent_tree_seeded(iseed, &extents, after)?;
        let size = count * BS;
        put32(&mut b, 0x04, size as u32);
        put32(&mut b, 0x6C, (size >> 32) as u32);
        let sectors = owned * (BS / 512);
        put32(&mut b, 0x1C, sectors as u32);
        put16(&mut b, 0x74, (sectors >> 32) as u16);
        let flags =
            get32(&b, 0x20) & !INDEX_FL | EXTENTS_FL | if index.is_some() { INDEX_FL } else { 0 };
        put32(&mut b, 0x20, flags);
        b[0x28..0x64].copy_from_slice(&block);
        self.write_inode(ino, b)?;
        if let Some(d) = self.dirs.get_mut(&ino) {
            d.dirty = false;
        }
        Ok(())
    }

    // ---- Inodes ----------------------------------------------------------------------------

    fn group_of(&self, ino: u32) -> u64 {
        u64::from((ino - 1) / self.inodes_per_group)
    }

    fn group_start(&self, g: u64) -> u64 {
        g * self.blocks_per_group
    }

    fn inode_offset(&self, ino: u32) -> Result<u64, Ext4Error> {
        if ino == 0 || u64::from(ino) > self.desc.len() as u64 * u64::from(self.inodes_per_group) {
            return Err(invalid(format!("inode number {ino} out of range")));
        }
        let d = &self.desc[self.group_of(ino) as usize];
        let table = get_wide(d, 0x08, 0x28);
        let index = u64::from((ino - 1) % self.inodes_per_group);
        Ok(table * BS + index * Inode::SIZE as u64)
    }

    fn read_inode(&self, ino: u32) -> Result<[u8; Inode::SIZE], Ext4Error> {
        let mut b = [0u8; Inode::SIZE];
        self.dev.read_at(self.inode_offset(ino)?, &mut b)?;
        Ok(b)
    }

    /// Writes inode `ino` with its checksum recomputed.
    fn write_inode(&mut self, ino: u32, mut b: [u8; Inode::SIZE]) -> Result<(), Ext4Error> {
        inode::set_checksum(&mut b, ino, self.seed);
        let at = self.inode_offset(ino)?;
        self.dev.write_at(at, &b)?;
        Ok(())
    }

    /// Frees inode `ino` (whose bytes are `b`) and its blocks, as the kernel leaves a deleted
    /// inode: no links, no size, no blocks, an empty extent tree, `i_dtime` now.
    fn free_inode(&mut self, ino: u32, b: &mut [u8; Inode::SIZE]) -> Result<(), Ext4Error> {
        let xattr_block = u64::from(get32(b, 0x68)) | u64::from(get16(b, 0x76)) << 32;
        if xattr_block != 0 {
            self.release_xattr_block(ino, xattr_block)?;
            put32(b, 0x68, 0);
            put16(b, 0x76, 0);
        }
        let flags = get32(b, 0x20);
        if flags & EXTENTS_FL != 0 {
            let stat = self.stat(ino)?;
            let owned = Filesystem::open(&self.dev)?.owned_blocks(&stat)?;
            for (start, len) in owned {
                self.free_blocks_at(start, len)?;
            }
            b[0x28..0x64].copy_from_slice(&extent::tree(&[], &[], 0).0);
        } else if get32(b, 0x1C) != 0 || get16(b, 0x74) != 0 {
            return Err(unsupported(format!(
                "inode {ino} maps its blocks without extents (ext2/3 style)"
            )));
        }
        let g = self.group_of(ino);
        let index = ((ino - 1) % self.inodes_per_group) as usize;
        let map = self.inode_bitmap(g)?;
        if !get_bit(&map.bits, index) {
            return Err(Ext4Error::Corrupt(format!(
                "inode {ino} is linked but free in its bitmap"
            )));
        }
        map.bits[index / 8] &= !(1 << (index % 8));
        map.dirty = true;
        map.first_free = map.first_free.min(index);
        let d = &mut self.desc[g as usize];
        add_field(d, FREE_INODES, 1);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        put16(b, 0x1A, 0);
        put32(b, 0x14, u32::try_from(now).unwrap_or(u32::MAX));
        put32(b, 0x04, 0);
        put32(b, 0x6C, 0);
        put32(b, 0x1C, 0);
        put16(b, 0x74, 0);
        Ok(())
    }

    /// Drops inode `ino`'s reference to its extended attribute block `block`: frees the
    /// block when it was the last, else stores the lower `h_refcount` with the block's
    /// checksum (crc32c(fs seed, block number as 64 bits, the block with `h_checksum`
    /// zeroed)).
    fn release_xattr_block(&mut self, ino: u32, block: u64) -> Result<(), Ext4Error> {
        if block >= self.blocks {
            return Err(Ext4Error::Corrupt(format!(
                "inode {ino}: extended attribute block {block} is past the filesystem's end"
            )));
        }
        let mut b = vec![0u8; BS as usize];
        self.dev.read_at(block * BS, &mut b)?;
        if get32(&b, 0) != 0xEA02_0000 || get32(&b, 8) != 1 {
            return Err(Ext4Error::Corrupt(format!(
                "inode {ino}: block {block} is not an extended attribute block"
            )));
        }
        let refs = get32(&b, 4);
        if refs <= 1 {
            return self.free_blocks_at(block, 1);
        }
        put32(&mut b, 4, refs - 1);
        put32(&mut b, 0x10, 0);
        let sum = csum::raw(csum::raw(self.seed, &block.to_le_bytes()), &b);
        put32(&mut b, 0x10, sum);
        self.dev.write_at(block * BS, &b)?;
        Ok(())
    }

    /// Takes a free inode, from `parent`'s group onwards.
    fn alloc_inode(&mut self, parent: u32, is_dir: bool) -> Result<u32, Ext4Error> {
        let groups = self.desc.len() as u64;
        let ipg = self.inodes_per_group as usize;
        let start = self.group_of(parent);
        for k in 0..groups {
            let g = (start + k) % groups;
            if get_field(&self.desc[g as usize], FREE_INODES) == 0 {
                continue;
            }
            let lowest = if g == 0 {
                self.first_ino as usize - 1
            } else {
                0
            };
            let map = self.inode_bitmap(g)?;
            let Some(index) = find_clear(&map.bits, map.first_free.max(lowest), ipg) else {
                continue;
            };
            map.bits[index / 8] |= 1 << (index % 8);
            map.dirty = true;
            map.first_free = index + 1;
            let d = &mut self.desc[g as usize];
            add_field(d, FREE_INODES, -1);
            if is_dir {
                add_field(d, USED_DIRS, 1);
            }
            let unused = get_field(d, ITABLE_UNUSED) as usize;
            if index >= ipg - unused.min(ipg) {
                set_field(d, ITABLE_UNUSED, (ipg - index - 1) as u32);
            }
            return Ok(g as u32 * self.inodes_per_group + index as u32 + 1);
        }
        Err(Ext4Error::NoInodes {
            needed: 1,
            free: self.free_inodes(),
        })
    }

    /// Group `g`'s inode bitmap (all free, with the padding bits set, while INODE_UNINIT).
    fn inode_bitmap(&mut self, g: u64) -> Result<&mut Bitmap, Ext4Error> {
        if !self.inode_bitmaps.contains_key(&g) {
            let d = &self.desc[g as usize];
            let mut bits = vec![0u8; BS as usize];
            if get16(d, FLAGS) & BG_INODE_UNINIT != 0 {
                group::set_bits(&mut bits, self.inodes_per_group as usize, BS as usize * 8);
            } else {
                self.dev.read_at(get_wide(d, 0x04, 0x24) * BS, &mut bits)?;
            }
            self.inode_bitmaps.insert(
                g,
                Bitmap {
                    bits,
                    dirty: false,
                    first_free: 0,
                },
            );
        }
        Ok(self.inode_bitmaps.get_mut(&g).expect("inserted above"))
    }

    // ---- Blocks ----------------------------------------------------------------------------

    /// Writes the extent tree of new inode `ino` (generation 0) over `extents`, its tree
    /// blocks allocated from `goal` on; returns `i_block` and the blocks the inode owns.
    fn write_extent_tree(
        &mut self,
        ino: u32,
        extents: &[Extent],
        goal: u64,
    ) -> Result<([u8; 60], u64), Ext4Error> {
        let seed = csum::inode_seed(self.seed, ino, 0);
        self.write_extent_tree_seeded(seed, extents, goal)
    }

    fn write_extent_tree_seeded(
        &mut self,
        inode_seed: u32,
        extents: &[Extent],
        goal: u64,
    ) -> Result<([u8; 60], u64), Ext4Error> {
        let count = extent::tree_blocks(extents.len()) as u64;
        let tree_at: Vec<u64> = self
            .alloc_blocks(goal, count)?
            .iter()
            .flat_map(|r| r.start..r.end())
            .collect();
        let (root, blocks) = extent::tree(extents, &tree_at, inode_seed);
        for (at, block) in blocks {
            self.dev.write_at(at * BS, &block[..])?;
        }
        let data: u64 = extents.iter().map(|e| e.len).sum();
        Ok((root, data + count))
    }

    /// Takes `count` free blocks, the first free ones from `goal` on (wrapping around), as
    /// runs in the order taken.
    fn alloc_blocks(&mut self, goal: u64, count: u64) -> Result<Vec<Run>, Ext4Error> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let free = self.free_blocks();
        if count > free {
            return Err(Ext4Error::NoSpace {
                needed: count,
                free,
            });
        }
        let groups = self.desc.len() as u64;
        let first_group = goal.min(self.blocks - 1) / self.blocks_per_group;
        let mut missing = count;
        let mut runs: Vec<Run> = Vec::new();
        for k in 0..=groups {
            if missing == 0 {
                break;
            }
            let g = (first_group + k) % groups;
            if get_field(&self.desc[g as usize], FREE_BLOCKS) == 0 {
                continue;
            }
            let start = self.group_start(g);
            let len = (self.blocks - start).min(self.blocks_per_group) as usize;
            let from = if k == 0 {
                (goal.saturating_sub(start) as usize).min(len)
            } else {
                0
            };
            let map = self.block_bitmap(g)?;
            let mut i = from.max(map.first_free);
            let mut taken = 0u32;
            while missing > 0 {
                let Some(s) = find_clear(&map.bits, i, len) else {
                    break;
                };
                let mut e = s;
                while e < len && ((e - s) as u64) < missing && !get_bit(&map.bits, e) {
                    map.bits[e / 8] |= 1 << (e % 8);
                    e += 1;
                }
                taken += (e - s) as u32;
                missing -= (e - s) as u64;
                if map.first_free == s {
                    map.first_free = e;
                }
                let run = Run {
                    start: start + s as u64,
                    len: (e - s) as u64,
                };
                match runs.last_mut() {
                    Some(last) if last.end() == run.start => last.len += run.len,
                    _ => runs.push(run),
                }
                i = e;
            }
            if taken > 0 {
                map.dirty = true;
                let d = &mut self.desc[g as usize];
                add_field(d, FREE_BLOCKS, -i64::from(taken));
            }
        }
        if missing > 0 {
            return Err(Ext4Error::NoSpace {
                needed: count,
                free,
            });
        }
        Ok(runs)
    }

    /// Gives back blocks `[start, start + len)`.
    fn free_blocks_at(&mut self, start: u64, len: u64) -> Result<(), Ext4Error> {
        for block in start..start + len {
            let g = block / self.blocks_per_group;
            let i = (block % self.blocks_per_group) as usize;
            let map = self.block_bitmap(g)?;
            if !get_bit(&map.bits, i) {
                return Err(Ext4Error::Corrupt(format!(
                    "block {block} is in use but free in its bitmap"
                )));
            }
            map.bits[i / 8] &= !(1 << (i % 8));
            map.dirty = true;
            map.first_free = map.first_free.min(i);
            let d = &mut self.desc[g as usize];
            add_field(d, FREE_BLOCKS, 1);
        }
        Ok(())
    }

    /// Whether group `g` holds a superblock copy.
    fn has_super(&self, g: u64) -> bool {
        !self.sparse_super || layout::has_super(g)
    }

    /// Group `g`'s block bitmap; a BLOCK_UNINIT group's is made from what the group holds:
    /// its superblock and descriptor copy (with reserved growth blocks), any group's bitmaps
    /// and inode table placed in it (flex_bg), and padding past its end.
    fn block_bitmap(&mut self, g: u64) -> Result<&mut Bitmap, Ext4Error> {
        if !self.block_bitmaps.contains_key(&g) {
            let d = &self.desc[g as usize];
            let mut bits = vec![0u8; BS as usize];
            let start = self.group_start(g);
            let len = (self.blocks - start).min(self.blocks_per_group);
            if get16(d, FLAGS) & BG_BLOCK_UNINIT != 0 {
                if self.has_super(g) {
                    group::set_bits(&mut bits, 0, (1 + self.gdt_blocks).min(len) as usize);
                }
                let table_blocks =
                    (u64::from(self.inodes_per_group) * Inode::SIZE as u64).div_ceil(BS);
                for other in &self.desc {
                    for (at, n) in [
                        (get_wide(other, 0x00, 0x20), 1),
                        (get_wide(other, 0x04, 0x24), 1),
                        (get_wide(other, 0x08, 0x28), table_blocks),
                    ] {
                        let from = at.max(start);
                        let to = (at + n).min(start + len);
                        if from < to {
                            group::set_bits(
                                &mut bits,
                                (from - start) as usize,
                                (to - start) as usize,
                            );
                        }
                    }
                }
                group::set_bits(&mut bits, len as usize, BS as usize * 8);
            } else {
                self.dev.read_at(get_wide(d, 0x00, 0x20) * BS, &mut bits)?;
            }
            self.block_bitmaps.insert(
                g,
                Bitmap {
                    bits,
                    dirty: false,
                    first_free: 0,
                },
            );
        }
        Ok(self.block_bitmaps.get_mut(&g).expect("inserted above"))
    }
}

/// The first clear bit in `[from, to)`, skipping full bytes.
fn find_clear(bits: &[u8], from: usize, to: usize) -> Option<usize> {
    let mut i = from;
    while i < to {
        if i.is_multiple_of(8) && bits[i / 8] == 0xFF {
            i += 8;
            continue;
        }
        if !get_bit(bits, i) {
            return Some(i);
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::ext4::{FormatOptions, format};
    use crate::disk::sink::SparseBuffer;

    fn meta() -> Meta {
        let t = Time {
            secs: 1_700_000_000,
            nanos: 42,
        };
        Meta {
            perm: 0o640,
            uid: 7,
            gid: 8,
            atime: t,
            mtime: t,
            ctime: t,
        }
    }

    use super::super::inode::Time;

    fn fresh(size: u64) -> SparseBuffer {
        let mut dev = SparseBuffer::new(size);
        format(&mut dev, &FormatOptions::new("e")).unwrap();
        dev
    }

    /// Every initialised bitmap's clear bits equal its descriptor's free count, and the
    /// superblock's counts are the sums.
    fn assert_counts_exact(dev: SparseBuffer) -> SparseBuffer {
        let mut ed = Editor::open(dev).unwrap();
        let ipg = ed.inodes_per_group as usize;
        for g in 0..ed.desc.len() as u64 {
            let start = ed.group_start(g);
            let len = (ed.blocks - start).min(ed.blocks_per_group) as usize;
            let free = (0..len)
                .filter(|&i| !get_bit(&ed.block_bitmap(g).unwrap().bits, i))
                .count();
            assert_eq!(free as u32, get_field(&ed.desc[g as usize], FREE_BLOCKS));
            let free = (0..ipg)
                .filter(|&i| !get_bit(&ed.inode_bitmap(g).unwrap().bits, i))
                .count();
            assert_eq!(free as u32, get_field(&ed.desc[g as usize], FREE_INODES));
        }
        assert_eq!(ed.free_blocks(), get_wide(&ed.sb, 0x0C, 0x158));
        assert_eq!(ed.free_inodes(), u64::from(get32(&ed.sb, 0x10)));
        ed.finish().unwrap()
    }

    #[test]
    fn edits_read_back_and_counts_stay_exact() {
        let dev = fresh(64 << 20);
        let mut ed = Editor::open(dev).unwrap();
        let (free_blocks, free_inodes) = (ed.free_blocks(), ed.free_inodes());
        let d = ed.mkdir(2, b"d", meta()).unwrap();
        let data: Vec<(u64, u64)> = (0..9).map(|i| (i * 8192, 4096)).collect();
        let (f, runs) = ed.create_file(d, b"f", meta(), 9 * 8192, &data).unwrap();
        assert_eq!(runs.len(), 9, "one run per data range: holes stay holes");
        assert!(runs.iter().all(|r| r.len == 4096));
        for r in &runs {
            ed.device_mut()
                .write_at(r.offset, &[r.file_offset as u8 + 1; 4096])
                .unwrap();
        }
        ed.symlink(d, b"fast", meta(), b"f").unwrap();
        ed.symlink(2, b"slow", meta(), &[b's'; 100]).unwrap();
        ed.link(2, b"again", f).unwrap();
        assert_eq!(ed.lookup(2, b"again").unwrap(), Some((f, FileType::File)));
        assert_eq!(ed.lookup(d, b"f").unwrap(), Some((f, FileType::File)));
        assert!(matches!(
            ed.mkdir(2, b"d", meta()),
            Err(Ext4Error::Invalid(_))
        ));
        assert!(matches!(ed.link(2, b"x", d), Err(Ext4Error::Invalid(_))));
        assert!(matches!(ed.unlink(2, b"d"), Err(Ext4Error::Invalid(_))));
        assert!(matches!(
            ed.unlink(2, b"missing"),
            Err(Ext4Error::NotFound(_))
        ));
        let later = Meta {
            perm: 0o1777,
            uid: 70_000,
            gid: 80_000,
            mtime: Time {
                secs: 4_102_444_800,
                nanos: 999_999_999,
            },
            ..meta()
        };
        ed.set_meta(d, later).unwrap();
        let dev = assert_counts_exact(ed.finish().unwrap());

        let fs = Filesystem::open(&dev).unwrap();
        let dir = fs.lookup(b"/d").unwrap();
        assert_eq!(
            (dir.kind, dir.perm, dir.uid, dir.gid, dir.mtime, dir.atime),
            (
                FileType::Dir,
                0o1777,
                70_000,
                80_000,
                later.mtime,
                meta().atime
            )
        );
        let file = fs.lookup(b"/d/f").unwrap();
        assert_eq!((file.links, file.perm, file.uid), (2, 0o640, 7));
        assert_eq!(file.mtime, meta().mtime);
        let maps = fs.data(&file).unwrap();
        assert_eq!(maps.len(), 9);
        let mut b = [0u8; 1];
        fs.read_mapped(maps[4].offset.unwrap(), &mut b).unwrap();
        assert_eq!(b[0], (4 * 8192u64) as u8 + 1);
        assert_eq!(
            fs.lookup(b"/").unwrap().links,
            4,
            "root: ., .., lost+found, d"
        );
        assert_eq!(
            fs.read_link(&fs.lookup(b"/slow").unwrap()).unwrap(),
            vec![b's'; 100]
        );
        assert_eq!(fs.read_link(&fs.lookup(b"/d/fast").unwrap()).unwrap(), b"f");

        // Removing every name gives every block and inode back (the directory blocks, laid
        // out again, take the same room).
        let mut ed = Editor::open(dev).unwrap();
        ed.unlink(2, b"again").unwrap();
        ed.unlink(d, b"f").unwrap();
        ed.unlink(d, b"fast").unwrap();
        ed.unlink(2, b"slow").unwrap();
        let stat = ed.stat(f).unwrap();
        assert_eq!((stat.links, stat.size), (0, 0));
        let dev = assert_counts_exact(ed.finish().unwrap());
        let ed = Editor::open(dev).unwrap();
        assert_eq!(ed.free_inodes(), free_inodes - 1);
        assert_eq!(ed.free_blocks(), free_blocks - 1, "d's one block");
    }

    #[test]
    fn extent_trees_of_any_depth() {
        let mut ed = Editor::open(fresh(64 << 20)).unwrap();
        let data: Vec<(u64, u64)> = (0..1400).map(|i| (i * 8192, 1)).collect();
        let size = 1400 * 8192;
        assert_eq!(file_blocks_needed(size, &data), 1400 + 6);
        let before = ed.free_blocks();
        let (f, runs) = ed.create_file(2, b"deep", meta(), size, &data).unwrap();
        assert_eq!(runs.len(), 1400);
        assert_eq!(before - ed.free_blocks(), 1400 + 6);
        let dev = ed.finish().unwrap();
        let fs = Filesystem::open(&dev).unwrap();
        let stat = fs.stat(f).unwrap();
        assert_eq!(fs.owned_blocks(&stat).unwrap().len(), 1400 + 6);
        assert_eq!(fs.data(&stat).unwrap().len(), 1400);
    }

    #[test]
    fn running_out_names_what_ran_out() {
        let mut ed = Editor::open(fresh(8 << 20)).unwrap();
        let free = ed.free_blocks();
        let size = (free + 1) * BS;
        assert!(matches!(
            ed.create_file(2, b"big", meta(), size, &[(0, size)]),
            Err(Ext4Error::NoSpace { needed, .. }) if needed == free + 1
        ));
        for i in 0..ed.free_inodes() {
            ed.create_file(2, format!("{i}").as_bytes(), meta(), 0, &[])
                .unwrap();
        }
        assert!(matches!(
            ed.symlink(2, b"l", meta(), b"t"),
            Err(Ext4Error::NoInodes { .. })
        ));
        assert_counts_exact(ed.finish().unwrap());
    }

    /// A BLOCK_UNINIT group's bitmap is made from what the group holds: on a 10 GiB
    /// filesystem of ours, group 1 holds its superblock copy and the flex_bg bitmaps and
    /// inode tables of groups 48 to 79; group 79 holds nothing. Made as if uninitialised,
    /// their bitmaps equal the ones the formatter wrote.
    #[test]
    fn uninit_bitmap_is_what_the_group_holds() {
        let mut ed = Editor::open(fresh(10 << 30)).unwrap();
        for g in [1u64, 79] {
            assert_eq!(get16(&ed.desc[g as usize], FLAGS) & BG_BLOCK_UNINIT, 0);
            let written = ed.block_bitmap(g).unwrap().bits.clone();
            ed.block_bitmaps.clear();
            let d = &mut ed.desc[g as usize];
            let flags = get16(d, FLAGS);
            put16(d, FLAGS, flags | BG_BLOCK_UNINIT);
            assert!(ed.block_bitmap(g).unwrap().bits == written, "group {g}");
        }
        let used = (0..BS as usize * 8)
            .filter(|&i| get_bit(&ed.block_bitmap(1).unwrap().bits, i))
            .count();
        assert_eq!(
            used,
            1 + 2 + 2 * 16 * (2 + 512),
            "super, 2 GDT blocks, 2 chunks"
        );
    }

    /// Patches the primary superblock (and its checksum).
    fn patched(at: usize, f: impl Fn(u32) -> u32) -> SparseBuffer {
        let mut dev = fresh(8 << 20);
        let mut sb = vec![0u8; 1024];
        SparseBuffer::read_at(&dev, 1024, &mut sb);
        let v = f(get32(&sb, at));
        put32(&mut sb, at, v);
        let sum = csum::raw(!0, &sb[..0x3FC]);
        put32(&mut sb, 0x3FC, sum);
        dev.write_at(1024, &sb).unwrap();
        dev
    }

    /// A directory outgrowing one block gets a hashed index, unless the filesystem hashes
    /// names with unsigned characters (not our hash): then it stays linear.
    #[test]
    fn large_directories_are_indexed_when_the_hash_matches() {
        for (flags, indexed) in [(0x1, true), (0x2, false)] {
            let mut ed = Editor::open(patched(0x160, |_| flags)).unwrap();
            for i in 0..500 {
                ed.create_file(2, format!("file-{i}").as_bytes(), meta(), 0, &[])
                    .unwrap();
            }
            let dev = ed.finish().unwrap();
            let ed = Editor::open(dev).unwrap();
            let root = ed.read_inode(2).unwrap();
            assert_eq!(
                get32(&root, 0x20) & INDEX_FL != 0,
                indexed,
                "s_flags {flags}"
            );
            assert!(get32(&root, 0x04) > 4096);
            let fs = Filesystem::open(&ed.dev).unwrap();
            assert_eq!(fs.read_dir(&fs.stat(2).unwrap()).unwrap().len(), 501);
        }
    }

    #[test]
    fn refuses_what_it_cannot_keep_exact() {
        let err = |dev| Editor::open(dev).err().unwrap().to_string();
        // s_state (16 bits at 0x3A, read with s_minor_rev_level).
        let e = err(patched(0x38, |v| v & !(1 << 16)));
        assert!(e.contains("not clean"), "{e}");
        assert!(matches!(
            Editor::open(patched(0x60, |v| v | INCOMPAT_RECOVER)),
            Err(Ext4Error::NeedsRecovery)
        ));
        let e = err(patched(0x60, |v| v | 0x8000)); // inline_data
        assert!(e.contains("incompatible features 0x8000"), "{e}");
        let e = err(patched(0x64, |v| v | 0x200)); // bigalloc
        assert!(e.contains("read-only compatible features 0x200"), "{e}");
        let e = err(patched(0xE8, |_| 12)); // s_last_orphan
        assert!(e.contains("orphan"), "{e}");
        let e = err(patched(0x18, |_| 0)); // 1 KiB blocks
        assert!(e.contains("only 4096-byte blocks"), "{e}");
        let mut bad = fresh(8 << 20);
        bad.write_at(1024 + 0x100, &[0xFF]).unwrap();
        assert!(err(bad).contains("superblock checksum"));
    }
}
