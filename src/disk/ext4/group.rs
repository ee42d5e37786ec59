//! Group descriptors (`struct ext4_group_desc`, 64 bytes with the 64bit feature, little-endian)
//! and the block and inode bitmaps they point to.

use super::csum;

/// One group descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupDesc {
    /// `bg_block_bitmap_lo/hi`.
    pub block_bitmap: u64,
    /// `bg_inode_bitmap_lo/hi`.
    pub inode_bitmap: u64,
    /// `bg_inode_table_lo/hi`: first block of the inode table.
    pub inode_table: u64,
    /// `bg_free_blocks_count_lo/hi`.
    pub free_blocks: u32,
    /// `bg_free_inodes_count_lo/hi`.
    pub free_inodes: u32,
    /// `bg_used_dirs_count_lo/hi`.
    pub used_dirs: u32,
    /// `bg_flags`: INODE_UNINIT, BLOCK_UNINIT, ITABLE_ZEROED.
    pub flags: u16,
    /// `bg_block_bitmap_csum_lo/hi`: crc32c of the block bitmap (0 while uninitialised).
    pub block_bitmap_csum: u32,
    /// `bg_inode_bitmap_csum_lo/hi`: crc32c of the inode bitmap's used bytes.
    pub inode_bitmap_csum: u32,
    /// `bg_itable_unused_lo/hi`: inodes at the end of the table never used.
    pub itable_unused: u32,
}

impl GroupDesc {
    /// Bytes on disk.
    pub const SIZE: usize = 64;

    /// Encodes descriptor number `group`; `bg_checksum` is the low 16 bits of
    /// crc32c(fs seed, group number, descriptor with the checksum field zeroed).
    pub fn encode(&self, group: u32, fs_seed: u32) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        let mut put32 = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        put32(0x00, self.block_bitmap as u32);
        put32(0x04, self.inode_bitmap as u32);
        put32(0x08, self.inode_table as u32);
        put32(0x20, (self.block_bitmap >> 32) as u32);
        put32(0x24, (self.inode_bitmap >> 32) as u32);
        put32(0x28, (self.inode_table >> 32) as u32);
        let mut put16 =
            |at: usize, v: u32| b[at..at + 2].copy_from_slice(&(v as u16).to_le_bytes());
        put16(0x0C, self.free_blocks);
        put16(0x0E, self.free_inodes);
        put16(0x10, self.used_dirs);
        put16(0x12, u32::from(self.flags));
        put16(0x18, self.block_bitmap_csum);
        put16(0x1A, self.inode_bitmap_csum);
        put16(0x1C, self.itable_unused);
        put16(0x2C, self.free_blocks >> 16);
        put16(0x2E, self.free_inodes >> 16);
        put16(0x30, self.used_dirs >> 16);
        put16(0x32, self.itable_unused >> 16);
        put16(0x38, self.block_bitmap_csum >> 16);
        put16(0x3A, self.inode_bitmap_csum >> 16);
        set_checksum(&mut b, group, fs_seed);
        b
    }
}

/// Stores `bg_checksum` of descriptor number `group`: the low 16 bits of crc32c(fs seed,
/// group number, the descriptor with the checksum field zeroed).
pub fn set_checksum(b: &mut [u8; GroupDesc::SIZE], group: u32, fs_seed: u32) {
    b[0x1E..0x20].fill(0);
    let sum = csum::raw(csum::raw(fs_seed, &group.to_le_bytes()), &b[..]) & 0xFFFF;
    b[0x1E..0x20].copy_from_slice(&(sum as u16).to_le_bytes());
}

/// Sets bits `[from, to)` of a bitmap (bit i is bit i % 8 of byte i / 8).
pub fn set_bits(bitmap: &mut [u8], from: usize, to: usize) {
    let mut i = from;
    while i < to && !i.is_multiple_of(8) {
        bitmap[i / 8] |= 1 << (i % 8);
        i += 1;
    }
    while i + 8 <= to {
        bitmap[i / 8] = 0xFF;
        i += 8;
    }
    while i < to {
        bitmap[i / 8] |= 1 << (i % 8);
        i += 1;
    }
}

/// The checksum of a bitmap as stored in the descriptor: crc32c(fs seed, the bytes that
/// describe real blocks or inodes).
pub fn bitmap_csum(fs_seed: u32, used_bytes: &[u8]) -> u32 {
    csum::raw(fs_seed, used_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_bits_spans_bytes() {
        let mut b = [0u8; 4];
        set_bits(&mut b, 3, 21);
        assert_eq!(b, [0xF8, 0xFF, 0x1F, 0x00]);
    }

    /// Golden bytes: group 0 of the 100 MiB mkfs.ext4 1.47.0 image whose UUID is
    /// 01234567-89ab-cdef-0123-456789abcdef (bitmap checksums copied from its descriptor).
    #[test]
    fn descriptor_matches_mke2fs() {
        let uuid = *b"\x01\x23\x45\x67\x89\xab\xcd\xef\x01\x23\x45\x67\x89\xab\xcd\xef";
        let d = GroupDesc {
            block_bitmap: 2,
            inode_bitmap: 18,
            inode_table: 34,
            free_blocks: 22967,
            free_inodes: 25589,
            used_dirs: 2,
            flags: 0x4,
            block_bitmap_csum: 0x30e1_98a6,
            inode_bitmap_csum: 0xba56_cd9d,
            itable_unused: 25589,
        };
        let b = d.encode(0, csum::fs_seed(&uuid));
        let golden: [u8; 0x40] = [
            0x02, 0, 0, 0, 0x12, 0, 0, 0, 0x22, 0, 0, 0, 0xb7, 0x59, 0xf5, 0x63, //
            0x02, 0x00, 0x04, 0x00, 0, 0, 0, 0, 0xa6, 0x98, 0x9d, 0xcd, 0xf5, 0x63, 0x8d, 0xdf, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, //
            0, 0, 0, 0, 0, 0, 0, 0, 0xe1, 0x30, 0x56, 0xba, 0, 0, 0, 0,
        ];
        assert_eq!(b, golden);
    }
}
