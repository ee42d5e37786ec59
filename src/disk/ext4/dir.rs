//! Directory blocks (`struct ext4_dir_entry_2`, little-endian) with the checksum tail
//! (`struct ext4_dir_entry_tail`) that metadata_csum puts in the last 12 bytes of each block.

use super::csum;

/// `file_type` of a directory entry naming a regular file.
pub const FT_REG_FILE: u8 = 1;
/// `file_type` of a directory entry naming a directory.
pub const FT_DIR: u8 = 2;
/// `file_type` of a directory entry naming a symbolic link.
pub const FT_SYMLINK: u8 = 7;
/// Bytes of the checksum tail.
const TAIL: usize = 12;
/// Bytes of a block that entries may use (all but the tail).
pub const ROOM: usize = 4096 - TAIL;

/// `rec_len` of an entry whose name is `name_len` bytes: 8 bytes of header, the name, padded
/// to 4 bytes.
pub fn entry_len(name_len: usize) -> usize {
    (8 + name_len).next_multiple_of(4)
}

/// How many of the entries, whose names are `name_lens` bytes long and which are stored in
/// this order, each block of a linear directory holds: a block is filled until the next
/// entry does not fit.
pub fn pack(name_lens: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut per_block = vec![0];
    let mut used = 0;
    for len in name_lens {
        let len = entry_len(len);
        if used + len > ROOM {
            per_block.push(0);
            used = 0;
        }
        used += len;
        *per_block.last_mut().expect("one block at least") += 1;
    }
    per_block
}

/// The blocks of a linear directory holding `entries` in order, split as [`pack`] says.
pub fn blocks(entries: &[Entry<'_>], inode_seed: u32) -> Vec<Box<[u8; 4096]>> {
    let mut rest = entries;
    pack(entries.iter().map(|e| e.name.len()))
        .into_iter()
        .map(|n| {
            let (these, tail) = rest.split_at(n);
            rest = tail;
            block(these, inode_seed)
        })
        .collect()
}

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
    let end = ROOM;
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
            entry_len(e.name.len())
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
    fn full_blocks_spill_into_the_next() {
        // 255-byte names take 264 bytes: 15 fit in the 4084 bytes before the tail.
        assert_eq!(pack([255; 31]), [15, 15, 1]);
        assert_eq!(pack([1; 0]), [0]);
        let name = [b'x'; 255];
        let entries = vec![
            Entry {
                ino: 12,
                name: &name,
                file_type: FT_REG_FILE,
            };
            16
        ];
        let b = blocks(&entries, 0);
        assert_eq!(b.len(), 2);
        // The 15th entry of the first block runs to the tail.
        assert_eq!(
            &b[0][14 * 264 + 4..14 * 264 + 6],
            &(4084 - 14 * 264_u16).to_le_bytes()
        );
    }

    #[test]
    fn empty_block_spans_to_tail() {
        let b = block(&[], 5);
        assert_eq!(&b[..8], &[0, 0, 0, 0, 0xf4, 0x0f, 0, 0]);
    }
}
