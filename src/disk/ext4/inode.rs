//! On-disk inodes (`struct ext4_inode`, 256 bytes, little-endian).

use super::csum;

/// `i_mode` file type: directory.
pub const S_IFDIR: u16 = 0o040000;
/// `i_mode` file type: regular file.
pub const S_IFREG: u16 = 0o100000;
/// `i_mode` file type: symbolic link.
pub const S_IFLNK: u16 = 0o120000;
/// `i_flags`: the inode uses extents.
pub const EXTENTS_FL: u32 = 0x80000;
/// `i_flags`: the directory has a hashed index (htree).
pub const INDEX_FL: u32 = 0x1000;
/// `i_extra_isize` of inodes that have the extended fields (crtime, checksum hi, ...).
pub const EXTRA_ISIZE: u16 = 32;

/// A time stamp: seconds since 1970 (signed) and nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    /// Seconds since 1970; ext4 stores 34 bits of them (1901 to 2446).
    pub secs: i64,
    /// Nanoseconds, below 10^9.
    pub nanos: u32,
}

impl Time {
    /// A whole second.
    pub fn secs(secs: u32) -> Self {
        Self {
            secs: i64::from(secs),
            nanos: 0,
        }
    }

    /// The base field (the low 32 bits, read as signed by the kernel) and the `*_extra` field:
    /// bits 0-1 extend the seconds past 2038 (the epoch), bits 2-31 hold the nanoseconds.
    pub(super) fn encode(self) -> (u32, u32) {
        let low = self.secs as i32;
        let epoch = ((self.secs - i64::from(low)) >> 32) as u32 & 3;
        (low as u32, epoch | (self.nanos << 2))
    }
}

/// The fields our inodes use; the rest are zero.
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
    /// `i_atime` (and `i_atime_extra`).
    pub atime: Time,
    /// `i_ctime` (and `i_ctime_extra`); also the creation time `i_crtime`.
    pub ctime: Time,
    /// `i_mtime` (and `i_mtime_extra`).
    pub mtime: Time,
    /// `i_links_count`.
    pub links: u16,
    /// `i_blocks_lo` and `l_i_blocks_high`: 512-byte sectors used, metadata blocks included
    /// (48 bits under huge_file).
    pub sectors: u64,
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
            atime: Time::default(),
            ctime: Time::default(),
            mtime: Time::default(),
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
        put16(0x74, (self.sectors >> 32) as u16);
        put16(0x78, (self.uid >> 16) as u16);
        put16(0x7A, (self.gid >> 16) as u16);
        put16(0x80, self.extra_isize);
        let mut put32 = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(0x04, self.size as u32);
        put32(0x6C, (self.size >> 32) as u32);
        put32(0x1C, self.sectors as u32);
        put32(0x20, self.flags);
        // (base, extra) offsets of atime, ctime, mtime and crtime.
        let times = [
            (0x08, 0x8C, self.atime),
            (0x0C, 0x84, self.ctime),
            (0x10, 0x88, self.mtime),
            (0x90, 0x94, self.ctime),
        ];
        for (base, extra, t) in times {
            let (low, high) = t.encode();
            if base < 0x80 || self.extra_isize >= EXTRA_ISIZE {
                put32(base, low);
            }
            if self.extra_isize >= EXTRA_ISIZE {
                put32(extra, high);
            }
        }
        b[0x28..0x64].copy_from_slice(&self.block);
        set_checksum(&mut b, ino, fs_seed);
        b
    }
}

/// Stores the checksum of the 256-byte inode `ino` in `b`: crc32c(inode seed with
/// `i_generation`, the inode with `l_i_checksum_lo` and `i_checksum_hi` zeroed);
/// `i_checksum_hi` exists only when `i_extra_isize` covers it.
pub fn set_checksum(b: &mut [u8; Inode::SIZE], ino: u32, fs_seed: u32) {
    let has_hi = u16::from_le_bytes([b[0x80], b[0x81]]) >= 4;
    b[0x7C..0x7E].fill(0);
    if has_hi {
        b[0x82..0x84].fill(0);
    }
    let generation = u32::from_le_bytes([b[0x64], b[0x65], b[0x66], b[0x67]]);
    let sum = csum::raw(csum::inode_seed(fs_seed, ino, generation), &b[..]);
    b[0x7C..0x7E].copy_from_slice(&(sum as u16).to_le_bytes());
    if has_hi {
        b[0x82..0x84].copy_from_slice(&((sum >> 16) as u16).to_le_bytes());
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
        let t = Time::secs(1_700_000_000);
        let one = Inode {
            atime: t,
            ctime: t,
            mtime: t,
            ..Inode::default()
        };
        assert_eq!(&one.encode(1, seed)[0x7C..0x7E], &[0xa7, 0xd6]);
    }

    /// The kernel's encoding (`ext4_encode_extra_time`): 1901, 2038 + 1 s and 2200, with
    /// nanoseconds.
    #[test]
    fn times_past_2038_and_before_1970() {
        let t = |secs, nanos| Time { secs, nanos }.encode();
        assert_eq!(t(-1, 5), (u32::MAX, 5 << 2));
        assert_eq!(t(i64::from(i32::MAX) + 1, 0), (0x8000_0000, 1));
        assert_eq!(
            t(7_258_118_400, 999_999_999),
            (0xB09E_1900, 999_999_999 << 2 | 2)
        );
    }
}
