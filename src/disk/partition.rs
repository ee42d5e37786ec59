//! The Linux filesystem of a whole-disk image, found the way a cloud image is laid out: a GPT
//! (Debian's genericcloud images: root in partition 1, BIOS boot and EFI partitions beside
//! it), an MBR, or a filesystem on the whole disk.
//!
//! The table comes from the image publisher and is treated as hostile: its checksums are
//! checked, its counts are bounded, and a partition must lie inside the disk. Only 512-byte
//! sectors are read (what QEMU's virtio-blk shows the guest by default).

use std::io;

use super::sink::BlockSource;

const SECTOR: u64 = 512;
/// "EFI PART" at the start of LBA 1.
const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";
/// More entries than any partitioning tool writes (128 is the usual count).
const MAX_GPT_ENTRIES: u32 = 1024;
/// Where the ext2/3/4 superblock's magic number sits, from the start of the filesystem.
const EXT_MAGIC_AT: u64 = 1024 + 56;
const EXT_MAGIC: [u8; 2] = [0x53, 0xEF];

/// GPT partition types that hold a Linux root or data filesystem, as they are stored on disk
/// (the first three fields of the GUID little-endian), with their names.
const LINUX_TYPES: &[([u8; 16], &str)] = &[
    (
        guid(
            0x4F68_BCE8,
            0xE8CD,
            0x4DB1,
            [0x96, 0xE7, 0xFB, 0xCA, 0xF9, 0x84, 0xB7, 0x09],
        ),
        "Linux root (x86-64)",
    ),
    (
        guid(
            0xB921_B045,
            0x1DF0,
            0x41C3,
            [0xAF, 0x44, 0x4C, 0x6F, 0x28, 0x0D, 0x3F, 0xAE],
        ),
        "Linux root (ARM64)",
    ),
    (
        guid(
            0x0FC6_3DAF,
            0x8483,
            0x4772,
            [0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4],
        ),
        "Linux filesystem",
    ),
];

/// MBR partition types of Linux filesystems.
const MBR_LINUX: u8 = 0x83;

/// A GUID in its on-disk byte order.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Why no filesystem could be found.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error("reading the partition table: {0}")]
    Io(#[from] io::Error),
    #[error("the GPT is corrupt: {0}")]
    CorruptGpt(String),
    #[error("no Linux filesystem on the disk ({0})")]
    NotFound(String),
}

/// Where the filesystem lies on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its first byte.
    pub start: u64,
    /// Its length in bytes.
    pub len: u64,
    /// What it is, for messages ("GPT partition 1 (Linux root (x86-64))").
    pub what: String,
}

/// Finds the one Linux filesystem on `dev` that carries an ext2/3/4 superblock: in the GPT
/// if there is one, else in the MBR, else on the whole disk. Among several such partitions a
/// root type wins, then the largest.
pub fn find_linux_filesystem(dev: &(impl BlockSource + ?Sized)) -> Result<Found, PartitionError> {
    let size = dev.size();
    let mut candidates = if let Some(gpt) = read_gpt(dev)? {
        gpt
    } else {
        read_mbr(dev)?
    };
    candidates.retain(|(found, _)| found.start < size && found.len <= size - found.start);
    let mut with_ext = Vec::new();
    for (found, rank) in candidates {
        if has_ext_magic(dev, found.start, found.len)? {
            with_ext.push((found, rank));
        }
    }
    if let Some((found, _)) = with_ext
        .into_iter()
        .max_by_key(|(found, rank)| (*rank, found.len))
    {
        return Ok(found);
    }
    if has_ext_magic(dev, 0, size)? {
        return Ok(Found {
            start: 0,
            len: size,
            what: "the whole disk".to_string(),
        });
    }
    Err(PartitionError::NotFound(
        "no GPT or MBR partition of a Linux type holds an ext2/3/4 filesystem, nor does the whole disk"
            .to_string(),
    ))
}

fn has_ext_magic(dev: &(impl BlockSource + ?Sized), start: u64, len: u64) -> io::Result<bool> {
    if len < EXT_MAGIC_AT + 2 {
        return Ok(false);
    }
    let mut magic = [0u8; 2];
    dev.read_at(start + EXT_MAGIC_AT, &mut magic)?;
    Ok(magic == EXT_MAGIC)
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The GPT's Linux partitions with their rank (2 for a root type, 1 for data), or `None`
/// without a GPT signature.
fn read_gpt(dev: &(impl BlockSource + ?Sized)) -> Result<Option<Vec<(Found, u8)>>, PartitionError> {
    if dev.size() < 2 * SECTOR {
        return Ok(None);
    }
    let mut header = [0u8; SECTOR as usize];
    dev.read_at(SECTOR, &mut header)?;
    if &header[..8] != GPT_SIGNATURE {
        return Ok(None);
    }
    let corrupt = |what: String| PartitionError::CorruptGpt(what);
    let header_size = le32(&header, 12) as usize;
    if !(92..=SECTOR as usize).contains(&header_size) {
        return Err(corrupt(format!("header size {header_size}")));
    }
    let mut checked = header[..header_size].to_vec();
    checked[16..20].fill(0);
    if crc32fast::hash(&checked) != le32(&header, 16) {
        return Err(corrupt("the header checksum does not match".to_string()));
    }
    let entries_at = le64(&header, 72);
    let count = le32(&header, 80);
    let entry_size = le32(&header, 84);
    if count > MAX_GPT_ENTRIES
        || entry_size < 128
        || !entry_size.is_multiple_of(128)
        || entry_size > 4096
    {
        return Err(corrupt(format!("{count} entries of {entry_size} bytes")));
    }
    let table_len = u64::from(count) * u64::from(entry_size);
    let table_at = entries_at
        .checked_mul(SECTOR)
        .filter(|at| {
            at.checked_add(table_len)
                .is_some_and(|end| end <= dev.size())
        })
        .ok_or_else(|| {
            corrupt(format!(
                "the entries at LBA {entries_at} lie outside the disk"
            ))
        })?;
    let mut table = vec![0u8; table_len as usize];
    dev.read_at(table_at, &mut table)?;
    if crc32fast::hash(&table) != le32(&header, 88) {
        return Err(corrupt("the entries' checksum does not match".to_string()));
    }
    let mut found = Vec::new();
    for (i, entry) in table.chunks_exact(entry_size as usize).enumerate() {
        let Some((_, name)) = LINUX_TYPES.iter().find(|(t, _)| entry[..16] == t[..]) else {
            continue;
        };
        let (first, last) = (le64(entry, 32), le64(entry, 40));
        if last < first {
            continue;
        }
        let (Some(start), Some(len)) = (
            first.checked_mul(SECTOR),
            (last - first + 1).checked_mul(SECTOR),
        ) else {
            continue;
        };
        let rank = if name.starts_with("Linux root") { 2 } else { 1 };
        found.push((
            Found {
                start,
                len,
                what: format!("GPT partition {} ({name})", i + 1),
            },
            rank,
        ));
    }
    Ok(Some(found))
}

/// The MBR's primary Linux partitions (rank 1); none without a boot signature.
fn read_mbr(dev: &(impl BlockSource + ?Sized)) -> Result<Vec<(Found, u8)>, PartitionError> {
    if dev.size() < SECTOR {
        return Ok(Vec::new());
    }
    let mut mbr = [0u8; SECTOR as usize];
    dev.read_at(0, &mut mbr)?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for i in 0..4 {
        let entry = &mbr[446 + 16 * i..446 + 16 * (i + 1)];
        let (start, sectors) = (le32(entry, 8), le32(entry, 12));
        if entry[4] == MBR_LINUX && sectors > 0 {
            found.push((
                Found {
                    start: u64::from(start) * SECTOR,
                    len: u64::from(sectors) * SECTOR,
                    what: format!("MBR partition {}", i + 1),
                },
                1,
            ));
        }
    }
    Ok(found)
}

/// The bytes of one partition of a device, as a device of its own.
#[derive(Debug)]
pub struct Partition<D> {
    dev: D,
    start: u64,
    len: u64,
}

impl<D: BlockSource> Partition<D> {
    /// `found` must come from [`find_linux_filesystem`] on `dev` (it lies inside the disk).
    pub fn new(dev: D, found: &Found) -> Self {
        Partition {
            dev,
            start: found.start,
            len: found.len,
        }
    }
}

impl<D: BlockSource> BlockSource for Partition<D> {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.len => self.dev.read_at(self.start + offset, buf),
            _ => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    /// A disk of `size` bytes with a GPT of 128 entries whose partitions are `parts`
    /// (type, first LBA, last LBA), and an ext magic at the start of each.
    fn gpt_disk(size: u64, parts: &[([u8; 16], u64, u64)]) -> Vec<u8> {
        let mut disk = vec![0u8; size as usize];
        let mut table = vec![0u8; 128 * 128];
        for (i, (kind, first, last)) in parts.iter().enumerate() {
            let e = &mut table[i * 128..(i + 1) * 128];
            e[..16].copy_from_slice(kind);
            e[16] = 1; // a unique GUID, not read
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            let magic = (*first * SECTOR + EXT_MAGIC_AT) as usize;
            disk[magic..magic + 2].copy_from_slice(&EXT_MAGIC);
        }
        disk[2 * SECTOR as usize..2 * SECTOR as usize + table.len()].copy_from_slice(&table);
        let h = &mut disk[SECTOR as usize..2 * SECTOR as usize];
        h[..8].copy_from_slice(GPT_SIGNATURE);
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&crc32fast::hash(&table).to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        disk
    }

    const BIOS_BOOT: [u8; 16] = guid(
        0x2168_6148,
        0x6449,
        0x6E6F,
        [0x74, 0x4E, 0x65, 0x65, 0x64, 0x45, 0x46, 0x49],
    );

    #[test]
    fn the_root_partition_of_a_cloud_layout_is_found() {
        let root = LINUX_TYPES[0].0;
        let data = LINUX_TYPES[2].0;
        // Root in partition 1 after a data partition that is larger: the root type wins.
        let disk = gpt_disk(
            8 * MIB,
            &[
                (BIOS_BOOT, 34, 2047),
                (root, 2048, 4095),
                (data, 4096, 16000),
            ],
        );
        let found = find_linux_filesystem(&disk[..]).unwrap();
        assert_eq!(found.start, 2048 * SECTOR);
        assert_eq!(found.len, 2048 * SECTOR);
        assert_eq!(found.what, "GPT partition 2 (Linux root (x86-64))");

        let part = Partition::new(&disk[..], &found);
        let mut magic = [0u8; 2];
        part.read_at(EXT_MAGIC_AT, &mut magic).unwrap();
        assert_eq!(magic, EXT_MAGIC);
        assert!(part.read_at(found.len - 1, &mut magic).is_err());
    }

    #[test]
    fn hostile_tables_are_refused_or_ignored() {
        let root = LINUX_TYPES[0].0;
        // A partition past the end of the disk is not a candidate.
        let disk = gpt_disk(4 * MIB, &[(root, 2048, 8191)]);
        assert!(find_linux_filesystem(&disk[..]).is_ok());
        let mut past = disk.clone();
        past.truncate(3 * MIB as usize);
        assert!(matches!(
            find_linux_filesystem(&past[..]),
            Err(PartitionError::NotFound(_))
        ));
        // A flipped byte in the entries breaks their checksum.
        let mut flipped = disk.clone();
        flipped[2 * SECTOR as usize + 40] ^= 1;
        let err = find_linux_filesystem(&flipped[..]).unwrap_err();
        assert!(err.to_string().contains("entries' checksum"), "{err}");
        // Too many entries.
        let mut many = disk;
        many[SECTOR as usize + 80..SECTOR as usize + 84]
            .copy_from_slice(&(MAX_GPT_ENTRIES + 1).to_le_bytes());
        many[SECTOR as usize + 16..SECTOR as usize + 20].fill(0);
        let crc = crc32fast::hash(&many[SECTOR as usize..SECTOR as usize + 92]);
        many[SECTOR as usize + 16..SECTOR as usize + 20].copy_from_slice(&crc.to_le_bytes());
        let err = find_linux_filesystem(&many[..]).unwrap_err();
        assert!(err.to_string().contains("1025 entries"), "{err}");
    }

    #[test]
    fn an_mbr_partition_or_the_whole_disk_is_found_too() {
        let mut disk = vec![0u8; 4 * MIB as usize];
        disk[510..512].copy_from_slice(&[0x55, 0xAA]);
        disk[446 + 16 + 4] = MBR_LINUX;
        disk[446 + 16 + 8..446 + 16 + 12].copy_from_slice(&2048u32.to_le_bytes());
        disk[446 + 16 + 12..446 + 16 + 16].copy_from_slice(&4096u32.to_le_bytes());
        let magic = (2048 * SECTOR + EXT_MAGIC_AT) as usize;
        disk[magic..magic + 2].copy_from_slice(&EXT_MAGIC);
        let found = find_linux_filesystem(&disk[..]).unwrap();
        assert_eq!(
            (found.start, found.what.as_str()),
            (2048 * SECTOR, "MBR partition 2")
        );

        let mut whole = vec![0u8; MIB as usize];
        whole[EXT_MAGIC_AT as usize..EXT_MAGIC_AT as usize + 2].copy_from_slice(&EXT_MAGIC);
        let found = find_linux_filesystem(&whole[..]).unwrap();
        assert_eq!((found.start, found.len), (0, MIB));

        let empty = vec![0u8; MIB as usize];
        assert!(matches!(
            find_linux_filesystem(&empty[..]),
            Err(PartitionError::NotFound(_))
        ));
    }
}
