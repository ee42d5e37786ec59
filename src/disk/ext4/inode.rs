//! On-disk inodes (`struct ext4_inode`, 256 bytes, little-endian) of the few files a fresh
//! filesystem has.

use super::csum;

/// `i_mode` file type: directory.
pub const S_IFDIR: u16 = 0o040000;
/// `i_mode` file type: regular file.
pub const S_IFREG: u16 = 0o100000;
/// `i_flags`: the inode uses extents.
pub const EXTENTS_FL: u32 = 0x80000;
/// `i_extra_isize` of inodes that have the extended fields (crtime, checksum hi, ...).
pub const EXTRA_ISIZE: u16 = 32;

/// The fields a fresh filesystem's inodes use; the rest are zero.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    /// `i_mode`: type and permission bits.
    pub mode: u16,
    /// `i_uid` (low 16 bits) and `l_i_uid_high`.
    pub uid: u32,
    /// `i_gid` (low 16 bits) and `l_i_gid_high`.
    pub gid: u32,
    /// `i_size_lo/high` in bytes.
    pub size: u64,
    /// `i_atime`, `i_ctime`, `i_mtime` (and `i_crtime` when extended): seconds since 1970.
    pub time: u32,
    /// `i_links_count`.
    pub links: u16,
    /// `i_blocks_lo`: 512-byte sectors used, metadata blocks included.
    pub sectors: u32,
    /// `i_flags`.
    pub flags: u32,
    /// `i_block`: 60 bytes, here an extent tree root.
    pub block: [u8; 60],
    /// `i_extra_isize`: 0 (the reserved inodes, as mke2fs writes them) or [`EXTRA_ISIZE`].
    pub extra_isize: u16,
}

impl Default for Inode {
    /// An all-zero inode (as the reserved inodes 3 to 10 are).
    fn default() -> Self {
        Self {
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            time: 0,
            links: 0,
            sectors: 0,
            flags: 0,
            block: [0; 60],
            extra_isize: 0,
        }
    }
}

impl Inode {
    /// Bytes on disk (`s_inode_size`).
    pub const SIZE: usize = 256;

    /// Encodes inode number `ino` with its checksum: crc32c(inode seed, the inode with
    /// `l_i_checksum_lo` and `i_checksum_hi` zeroed); `i_checksum_hi` exists only when
    /// `i_extra_isize` covers it.
    pub fn encode(&self, ino: u32, fs_seed: u32) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        let mut put16 = |at: usize, v: u16| b[at..at + 2].copy_from_slice(&v.to_le_bytes());
        put16(0x00, self.mode);
        put16(0x02, self.uid as u16);
        put16(0x18, self.gid as u16);
        put16(0x1A, self.links);
        put16(0x78, (self.uid >> 16) as u16);
        put16(0x7A, (self.gid >> 16) as u16);
        put16(0x80, self.extra_isize);
        let mut put32 = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(0x04, self.size as u32);
        put32(0x6C, (self.size >> 32) as u32);
        for at in [0x08, 0x0C, 0x10] {
            put32(at, self.time);
        }
        put32(0x1C, self.sectors);
        put32(0x20, self.flags);
        // Times past 2038 need the epoch bit of the *_extra fields.
        let epoch = u32::from(self.time > i32::MAX as u32);
        if self.extra_isize >= EXTRA_ISIZE {
            for at in [0x84, 0x88, 0x8C, 0x94] {
                put32(at, epoch);
            }
            put32(0x90, self.time); // i_crtime
        }
        b[0x28..0x64].copy_from_slice(&self.block);
        let sum = csum::raw(csum::inode_seed(fs_seed, ino, 0), &b);
        b[0x7C..0x7E].copy_from_slice(&(sum as u16).to_le_bytes());
        if self.extra_isize >= 4 {
            b[0x82..0x84].copy_from_slice(&((sum >> 16) as u16).to_le_bytes());
        }
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: [u8; 16] = *b"\x01\x23\x45\x67\x89\xab\xcd\xef\x01\x23\x45\x67\x89\xab\xcd\xef";

    /// Golden checksums: reserved inode 3 and the bad-blocks inode 1 as mkfs.ext4 1.47.0 wrote
    /// them (UUID above, time 1700000000).
    #[test]
    fn reserved_inodes_match_mke2fs() {
        let seed = csum::fs_seed(&UUID);
        let b = Inode::default().encode(3, seed);
        assert_eq!(&b[0x7C..0x7E], &[0x54, 0xfd]);
        assert!(b[..0x7C].iter().chain(&b[0x7E..]).all(|&x| x == 0));
        let one = Inode {
            time: 1_700_000_000,
            ..Inode::default()
        };
        assert_eq!(&one.encode(1, seed)[0x7C..0x7E], &[0xa7, 0xd6]);
    }
}
