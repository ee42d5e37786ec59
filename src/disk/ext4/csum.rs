//! The checksum every ext4 and jbd2 structure uses.
//!
//! The kernel's `crc32c()` is the *raw* CRC-32C update: no inversion on entry or exit. ext4
//! seeds it with `~0` (or with a value derived from the filesystem UUID) and stores the result
//! as is. The `crc32c` crate implements the standard, inverted form, so the raw update is
//! `!crc32c_append(!seed, data)`.

/// Raw CRC-32C of `data` continuing from `seed`, as the kernel's `crc32c(seed, data, len)`.
pub fn raw(seed: u32, data: &[u8]) -> u32 {
    !crc32c::crc32c_append(!seed, data)
}

/// The per-filesystem seed of all metadata checksums: raw CRC-32C of the UUID, seeded with ~0.
pub fn fs_seed(uuid: &[u8; 16]) -> u32 {
    raw(!0, uuid)
}

/// The per-inode seed: the filesystem seed extended by the inode number and generation.
///
/// Inode, directory block and extent block checksums all start from it.
pub fn inode_seed(fs_seed: u32, ino: u32, generation: u32) -> u32 {
    raw(raw(fs_seed, &ino.to_le_bytes()), &generation.to_le_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_is_uninverted_crc32c() {
        // Standard CRC-32C("123456789") = 0xE3069283 = !raw(!0, ..).
        assert_eq!(!raw(!0, b"123456789"), 0xE306_9283);
        // Raw updates chain: splitting the input does not change the result.
        assert_eq!(raw(raw(!0, b"1234"), b"56789"), raw(!0, b"123456789"));
    }
}
