//! Directory blocks (`struct ext4_dir_entry_2`, little-endian) with the checksum tail
//! (`struct ext4_dir_entry_tail`) that metadata_csum puts in the last 12 bytes of each block.

use super::csum;

/// `file_type` of a directory entry naming a directory.
pub const FT_DIR: u8 = 2;
/// Bytes of the checksum tail.
const TAIL: usize = 12;

/// One entry: inode, name, type.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// Inode number (0 = unused space).
    pub ino: u32,
    /// Name bytes.
    pub name: &'a [u8],
    /// `file_type`.
    pub file_type: u8,
}

/// A 4 KiB directory block holding `entries` (the last one's `rec_len` runs to the tail; an
/// empty slice gives the empty block mke2fs writes: one unused entry spanning the block),
/// checksummed with the directory inode's seed.
pub fn block(entries: &[Entry<'_>], inode_seed: u32) -> Box<[u8; 4096]> {
    let mut b = Box::new([0u8; 4096]);
    let end = 4096 - TAIL;
    let empty = [Entry {
        ino: 0,
        name: b"",
        file_type: 0,
    }];
    let entries = if entries.is_empty() {
        &empty[..]
    } else {
        entries
    };
    let mut at = 0;
    for (i, e) in entries.iter().enumerate() {
        let len = if i + 1 == entries.len() {
            end - at
        } else {
            (8 + e.name.len()).next_multiple_of(4)
        };
        b[at..at + 4].copy_from_slice(&e.ino.to_le_bytes());
        b[at + 4..at + 6].copy_from_slice(&(len as u16).to_le_bytes());
        b[at + 6] = e.name.len() as u8;
        b[at + 7] = e.file_type;
        b[at + 8..at + 8 + e.name.len()].copy_from_slice(e.name);
        at += len;
    }
    // Tail: inode 0, rec_len 12, name_len 0, file type 0xDE, then the checksum.
    b[end + 4..end + 6].copy_from_slice(&(TAIL as u16).to_le_bytes());
    b[end + 7] = 0xDE;
    let sum = csum::raw(inode_seed, &b[..end]);
    b[end + 8..].copy_from_slice(&sum.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_entries_golden_bytes() {
        let b = block(
            &[
                Entry {
                    ino: 11,
                    name: b".",
                    file_type: FT_DIR,
                },
                Entry {
                    ino: 2,
                    name: b"..",
                    file_type: FT_DIR,
                },
            ],
            0,
        );
        assert_eq!(&b[..12], &[11, 0, 0, 0, 12, 0, 1, 2, b'.', 0, 0, 0]);
        assert_eq!(&b[12..22], &[2, 0, 0, 0, 0xe8, 0x0f, 2, 2, b'.', b'.']);
        assert_eq!(&b[4084..4092], &[0, 0, 0, 0, 12, 0, 0, 0xde]);
        assert_eq!(&b[4092..], &csum::raw(0, &b[..4084]).to_le_bytes());
    }

    #[test]
    fn empty_block_spans_to_tail() {
        let b = block(&[], 5);
        assert_eq!(&b[..8], &[0, 0, 0, 0, 0xf4, 0x0f, 0, 0]);
    }
}
