//! The jbd2 journal superblock (`journal_superblock_t`, 1024 bytes, **big-endian**), the only
//! block of a fresh journal that is not zero.

use super::csum;

/// `h_magic` of every jbd2 block.
pub const MAGIC: u32 = 0xC03B_3998;
/// `h_blocktype`: superblock version 2.
const SUPERBLOCK_V2: u32 = 4;
/// `s_feature_incompat`: block numbers are 64-bit.
pub const INCOMPAT_64BIT: u32 = 0x2;
/// `s_feature_incompat`: crc32c checksums, version 3.
pub const INCOMPAT_CSUM_V3: u32 = 0x10;
/// `s_checksum_type`: crc32c.
const CRC32C: u8 = 4;

/// Encodes a clean, empty journal's superblock: `s_start` = 0 means there is nothing to
/// replay, so the remaining journal blocks may be anything (they read as zeros).
///
/// `s_checksum` = crc32c(~0, the superblock with the checksum field zeroed).
pub fn superblock(blocks: u32, uuid: &[u8; 16]) -> [u8; 1024] {
    let mut b = [0u8; 1024];
    let mut put = |at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    put(0x00, MAGIC);
    put(0x04, SUPERBLOCK_V2);
    put(0x0C, 4096); // s_blocksize
    put(0x10, blocks); // s_maxlen
    put(0x14, 1); // s_first: log blocks start after this superblock
    put(0x18, 1); // s_sequence: first transaction ID expected
    put(0x28, INCOMPAT_64BIT | INCOMPAT_CSUM_V3);
    put(0x40, 1); // s_nr_users: the one filesystem this internal journal serves
    b[0x30..0x40].copy_from_slice(uuid);
    b[0x50] = CRC32C;
    let sum = csum::raw(!0, &b);
    b[0xFC..0x100].copy_from_slice(&sum.to_be_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_head() {
        let b = superblock(1024, &[0xAB; 16]);
        assert_eq!(
            &b[..0x30],
            &[
                0xc0, 0x3b, 0x39, 0x98, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0x10, 0, //
                0, 0, 4, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, //
                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x12, 0, 0, 0, 0,
            ][..]
        );
        let mut zeroed = b;
        zeroed[0xFC..0x100].fill(0);
        assert_eq!(&b[0xFC..0x100], &csum::raw(!0, &zeroed).to_be_bytes());
    }
}
