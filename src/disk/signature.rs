//! What a raw disk image holds, told by the signatures at its start: a raw image with none of
//! them is not a disk a guest can boot or mount (a text file, an HTML error page saved as an
//! image), and starting QEMU on it would leave a VM that never comes up.

/// How many bytes of the image [`raw_content`] needs to see every signature it knows.
pub const HEAD_LEN: usize = 0x10040 + 8;

/// One signature: the bytes at an offset, and what they mean.
struct Signature {
    offset: usize,
    magic: &'static [u8],
    what: &'static str,
}

/// Partition tables first, then file systems, each at the offset its format defines.
const SIGNATURES: &[Signature] = &[
    // The GPT header sits in LBA 1 ("EFI PART"); a GPT disk also has a protective MBR.
    Signature {
        offset: 512,
        magic: b"EFI PART",
        what: "a GPT partition table",
    },
    // The boot-sector signature ends an MBR, and also FAT and NTFS boot sectors.
    Signature {
        offset: 510,
        magic: &[0x55, 0xAA],
        what: "an MBR partition table or boot sector",
    },
    // ext2/3/4: s_magic 0xEF53 (little-endian) at byte 56 of the superblock at 1024.
    Signature {
        offset: 1080,
        magic: &[0x53, 0xEF],
        what: "an ext2/3/4 file system",
    },
    Signature {
        offset: 0,
        magic: b"XFSB",
        what: "an XFS file system",
    },
    Signature {
        offset: 0x10040,
        magic: b"_BHRfS_M",
        what: "a Btrfs file system",
    },
    Signature {
        offset: 0,
        magic: b"hsqs",
        what: "a SquashFS file system",
    },
    Signature {
        offset: 0x8001,
        magic: b"CD001",
        what: "an ISO 9660 file system",
    },
    Signature {
        offset: 0,
        magic: b"LUKS\xba\xbe",
        what: "a LUKS volume",
    },
];

/// What the raw image starting with `head` (its first [`HEAD_LEN`] bytes, or all of a
/// shorter image) holds, or `None` when nothing known is there.
pub fn raw_content(head: &[u8]) -> Option<&'static str> {
    SIGNATURES
        .iter()
        .find(|s| head.get(s.offset..s.offset + s.magic.len()) == Some(s.magic))
        .map(|s| s.what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: usize, magic: &[u8]) -> Vec<u8> {
        let mut image = vec![0u8; HEAD_LEN];
        image[offset..offset + magic.len()].copy_from_slice(magic);
        image
    }

    #[test]
    fn disks_are_told_by_their_signatures() {
        assert_eq!(
            raw_content(&at(510, &[0x55, 0xAA])),
            Some("an MBR partition table or boot sector")
        );
        assert_eq!(
            raw_content(&at(512, b"EFI PART")),
            Some("a GPT partition table")
        );
        assert_eq!(
            raw_content(&at(1080, &[0x53, 0xEF])),
            Some("an ext2/3/4 file system")
        );
        assert_eq!(
            raw_content(&at(0x8001, b"CD001")),
            Some("an ISO 9660 file system")
        );
    }

    #[test]
    fn text_zeros_and_short_files_are_not_disks() {
        assert_eq!(raw_content(b"notes\n"), None);
        assert_eq!(raw_content(&vec![0u8; HEAD_LEN]), None);
        assert_eq!(raw_content(b"<html>404 Not Found</html>"), None);
        // A signature cut off by the end of the file does not count.
        assert_eq!(raw_content(&at(510, &[0x55, 0xAA])[..511]), None);
    }

    #[test]
    fn a_real_ext4_image_is_recognised() {
        let mut sink = crate::disk::SparseBuffer::new(64 << 20);
        crate::disk::ext4::format(&mut sink, &crate::disk::ext4::FormatOptions::default()).unwrap();
        let mut head = vec![0u8; HEAD_LEN];
        sink.read_at(0, &mut head);
        assert_eq!(raw_content(&head), Some("an ext2/3/4 file system"));
    }
}
