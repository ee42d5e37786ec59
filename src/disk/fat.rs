//! The FAT image labelled CIDATA that carries the cloud-init NoCloud seed.
//!
//! cloud-init's NoCloud datasource looks for a filesystem of type vfat (or iso9660) labelled
//! `cidata`/`CIDATA` and reads `user-data`, `meta-data` and `network-config` from its root.
//! The image is formatted and filled with `fatfs`; this module decides the geometry (a pure
//! function, [`plan_geometry`]) so the image is as small as its content allows, and pins
//! everything that would otherwise vary between runs (timestamps, volume id) so that the same
//! files always give the same bytes.

use std::io::{Cursor, Write};

use sha2::{Digest, Sha256};

/// The volume label cloud-init's NoCloud datasource searches for.
pub const CIDATA_LABEL: &str = "CIDATA";

/// Logical sector size. 512 is what every FAT driver reads without question.
const SECTOR: u32 = 512;
/// Two copies of the allocation table, as mkfs.fat writes; readers expect the mirror.
const FATS: u32 = 2;
/// fatfs reserves one sector (the boot sector) on FAT12 volumes.
const RESERVED_SECTORS: u32 = 1;
/// "A FAT12 volume cannot contain more than 4084 clusters" (Microsoft FAT specification):
/// drivers pick the FAT type from the cluster count, so staying below 4085 keeps it FAT12.
const FAT12_MAX_CLUSTERS: u32 = 4084;
/// Whole 12-bit FAT entries per 512-byte sector (512 * 8 / 12, rounded down).
const FAT12_ENTRIES_PER_SECTOR: u32 = SECTOR * 8 / 12;
/// Directory entries are 32 bytes, so one sector holds 16.
const DIR_ENTRIES_PER_SECTOR: u32 = SECTOR / 32;
/// A long file name entry holds 13 UTF-16 code units.
const LFN_CHARS_PER_ENTRY: usize = 13;
/// Largest cluster size FAT drivers accept everywhere (32 KiB).
const MAX_CLUSTER_BYTES: u32 = 32 * 1024;
/// fatfs refuses volumes with fewer than 8 sectors for the FATs and data together.
const MIN_FAT_AND_DATA_SECTORS: u32 = 9;

/// Why a FAT image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum FatError {
    /// The label does not fit the 11-byte boot sector field or uses characters FAT forbids.
    #[error("invalid FAT volume label {0:?}: use 1 to 11 characters among A-Z, 0-9, '_' and '-'")]
    InvalidLabel(String),
    /// A file name that FAT cannot store in the root directory.
    #[error("invalid file name {name:?} for the FAT image: {reason}")]
    InvalidFileName {
        /// The offending name.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two files whose names FAT considers equal (it ignores case).
    #[error("file {0:?} is given twice (FAT file names ignore case)")]
    DuplicateFileName(String),
    /// More content than a FAT12 volume with 32 KiB clusters holds (about 127 MiB).
    #[error("{0} bytes of files are too many for a FAT12 seed image")]
    TooLarge(u64),
    /// fatfs failed while formatting or writing.
    #[error("cannot write the FAT image: {0}")]
    Io(#[from] std::io::Error),
}

/// The shape of a FAT12 volume: what [`fatfs::format_volume`] is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FatGeometry {
    /// Size of the volume in 512-byte sectors.
    pub total_sectors: u32,
    /// Allocation unit; a power of two from 512 to 32 KiB.
    pub bytes_per_cluster: u32,
    /// Capacity of the fixed-size FAT12 root directory, a multiple of 16.
    pub root_entries: u16,
}

impl FatGeometry {
    /// The image size in bytes.
    pub fn bytes(&self) -> u64 {
        u64::from(self.total_sectors) * u64::from(SECTOR)
    }
}

/// Root directory entries needed for `name`: its long-name entries plus the 8.3 entry.
///
/// fatfs may skip the long-name entries for a name that is already a valid 8.3 name; counting
/// them anyway only over-reserves a few 32-byte entries.
fn dir_entries_for(name: &str) -> u32 {
    let units = name.encode_utf16().count();
    // Validated names are at most 255 code units, so this cannot overflow.
    (units.div_ceil(LFN_CHARS_PER_ENTRY) + 1) as u32
}

/// The smallest FAT12 geometry that holds files of the given names and sizes in its root
/// directory.
///
/// The cluster size is the smallest that keeps the cluster count FAT12; the FAT is sized with
/// whole entries per sector (341), which is never smaller than what fatfs derives from the same
/// total, so fatfs always finds at least the clusters planned here.
pub fn plan_geometry(files: &[(&str, u64)]) -> Result<FatGeometry, FatError> {
    let total_bytes: u64 = files
        .iter()
        .map(|&(_, len)| len)
        .fold(0, u64::saturating_add);
    let entries = files
        .iter()
        .map(|&(name, _)| dir_entries_for(name))
        .fold(0, u32::saturating_add);
    let root_sectors = entries.div_ceil(DIR_ENTRIES_PER_SECTOR).max(1);
    let root_entries = u16::try_from(root_sectors * DIR_ENTRIES_PER_SECTOR)
        .map_err(|_| FatError::TooLarge(total_bytes))?;

    let mut bytes_per_cluster = SECTOR;
    loop {
        let clusters = files
            .iter()
            .map(|&(_, len)| len.div_ceil(u64::from(bytes_per_cluster)))
            .fold(0, u64::saturating_add);
        if clusters <= u64::from(FAT12_MAX_CLUSTERS) {
            // Bounded by FAT12_MAX_CLUSTERS, so these products stay far below u32::MAX.
            let clusters = clusters as u32;
            let sectors_per_cluster = bytes_per_cluster / SECTOR;
            let fat_sectors = (clusters + 2).div_ceil(FAT12_ENTRIES_PER_SECTOR);
            let fat_and_data =
                (FATS * fat_sectors + clusters * sectors_per_cluster).max(MIN_FAT_AND_DATA_SECTORS);
            return Ok(FatGeometry {
                total_sectors: RESERVED_SECTORS + root_sectors + fat_and_data,
                bytes_per_cluster,
                root_entries,
            });
        }
        if bytes_per_cluster == MAX_CLUSTER_BYTES {
            return Err(FatError::TooLarge(total_bytes));
        }
        bytes_per_cluster *= 2;
    }
}

/// A clock frozen at the DOS epoch, 1980-01-01 00:00:00, for every timestamp fatfs writes.
///
/// Without the `chrono` feature fatfs would write the raw value 0, which decodes as month 0,
/// day 0: not a date at all.
#[derive(Debug)]
struct FixedClock;

impl fatfs::TimeProvider for FixedClock {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 1980,
            month: 1,
            day: 1,
        }
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

static FIXED_CLOCK: FixedClock = FixedClock;

/// The volume id (serial number) for this content: the first four bytes of a SHA-256 over the
/// label and every file, length-prefixed so that no two inputs hash the same bytes.
pub fn volume_id(label: &str, files: &[(&str, &[u8])]) -> u32 {
    let mut hash = Sha256::new();
    for part in
        std::iter::once(label.as_bytes()).chain(files.iter().flat_map(|&(n, d)| [n.as_bytes(), d]))
    {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    let digest = hash.finalize();
    u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]])
}

fn check_label(label: &str) -> Result<[u8; 11], FatError> {
    let valid = (1..=11).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !valid {
        return Err(FatError::InvalidLabel(label.to_owned()));
    }
    let mut field = [b' '; 11];
    field[..label.len()].copy_from_slice(label.as_bytes());
    Ok(field)
}

fn check_names(files: &[(&str, &[u8])]) -> Result<(), FatError> {
    let mut seen: Vec<String> = Vec::with_capacity(files.len());
    for &(name, _) in files {
        let invalid = |reason| FatError::InvalidFileName {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() || name.encode_utf16().count() > 255 {
            return Err(invalid("a name has 1 to 255 characters"));
        }
        if name == "." || name == ".." {
            return Err(invalid("'.' and '..' are reserved"));
        }
        if name
            .chars()
            .any(|c| c.is_control() || "/\\:*?\"<>|".contains(c))
        {
            return Err(invalid(
                "control characters and / \\ : * ? \" < > | are not allowed",
            ));
        }
        if name.ends_with(['.', ' ']) {
            return Err(invalid("a name cannot end with '.' or a space"));
        }
        let folded = name.to_uppercase();
        if seen.contains(&folded) {
            return Err(FatError::DuplicateFileName(name.to_owned()));
        }
        seen.push(folded);
    }
    Ok(())
}

/// Builds a FAT12 image labelled `label` holding `files` (name, content) in its root directory.
///
/// The result is a whole raw disk image of [`plan_geometry`]'s size. It is byte-for-byte the
/// same for the same arguments: every timestamp is 1980-01-01 00:00:00 and the volume id is
/// [`volume_id`] of the content. The label is written to the boot sector, where `blkid` and
/// cloud-init find it.
pub fn build_fat_image(label: &str, files: &[(&str, &[u8])]) -> Result<Vec<u8>, FatError> {
    let label_field = check_label(label)?;
    check_names(files)?;
    let sizes: Vec<(&str, u64)> = files.iter().map(|&(n, d)| (n, d.len() as u64)).collect();
    let geometry = plan_geometry(&sizes)?;
    // At most ~128 MiB (4084 clusters of 32 KiB plus the FATs), bounded by plan_geometry.
    let mut image = Cursor::new(vec![0u8; geometry.bytes() as usize]);

    let options = fatfs::FormatVolumeOptions::new()
        .bytes_per_sector(SECTOR as u16)
        .total_sectors(geometry.total_sectors)
        .bytes_per_cluster(geometry.bytes_per_cluster)
        .fat_type(fatfs::FatType::Fat12)
        .fats(FATS as u8)
        .max_root_dir_entries(geometry.root_entries)
        .volume_id(volume_id(label, files))
        .volume_label(label_field);
    fatfs::format_volume(&mut image, options)?;
    image.set_position(0);

    let fs = fatfs::FileSystem::new(
        &mut image,
        fatfs::FsOptions::new().time_provider(&FIXED_CLOCK),
    )?;
    {
        let root = fs.root_dir();
        for &(name, data) in files {
            let mut file = root.create_file(name)?;
            file.write_all(data)?;
            file.flush()?;
        }
    }
    fs.unmount()?;
    Ok(image.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_content_gets_512_byte_clusters_and_one_root_sector() {
        let g = plan_geometry(&[
            ("user-data", 700),
            ("meta-data", 60),
            ("network-config", 120),
        ])
        .unwrap();
        // 3 clusters of data, 1 FAT sector each, but fatfs's 9-sector floor applies.
        assert_eq!(
            g,
            FatGeometry {
                total_sectors: 1 + 1 + 9,
                bytes_per_cluster: 512,
                root_entries: 16
            }
        );
    }

    #[test]
    fn cluster_size_grows_to_stay_fat12() {
        // 4084 clusters of 512 bytes still fit; one byte more needs 1 KiB clusters.
        let fits = plan_geometry(&[("a", 4084 * 512)]).unwrap();
        assert_eq!(fits.bytes_per_cluster, 512);
        assert_eq!(fits.total_sectors, 1 + 1 + 2 * 12 + 4084);
        let bigger = plan_geometry(&[("a", 4084 * 512 + 1)]).unwrap();
        assert_eq!(bigger.bytes_per_cluster, 1024);
    }

    #[test]
    fn content_beyond_fat12_is_refused() {
        let limit = u64::from(FAT12_MAX_CLUSTERS) * u64::from(MAX_CLUSTER_BYTES);
        assert!(plan_geometry(&[("a", limit)]).is_ok());
        assert!(matches!(
            plan_geometry(&[("a", limit + 1)]),
            Err(FatError::TooLarge(_))
        ));
        assert!(matches!(
            plan_geometry(&[("a", u64::MAX), ("b", u64::MAX)]),
            Err(FatError::TooLarge(_))
        ));
    }

    #[test]
    fn long_names_reserve_more_root_entries() {
        let names: Vec<String> = (0..8).map(|i| format!("{i}-{}", "x".repeat(40))).collect();
        let files: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 1)).collect();
        // 42 characters: 4 long-name entries + 1 short entry each, 40 in all: 3 sectors.
        assert_eq!(plan_geometry(&files).unwrap().root_entries, 48);
    }

    #[test]
    fn fatfs_finds_every_planned_cluster() {
        for size in [
            0u64, 1, 511, 512, 513, 100_000, 2_000_000, 2_091_008, 2_091_009, 5_000_000,
        ] {
            let data = vec![0xA5u8; size as usize];
            let image = build_fat_image("CIDATA", &[("user-data", &data)]).unwrap();
            assert_eq!(
                image.len() as u64,
                plan_geometry(&[("user-data", size)]).unwrap().bytes()
            );
        }
    }

    #[test]
    fn boot_sector_holds_label_volume_id_and_fat12_type() {
        let files: [(&str, &[u8]); 1] = [("meta-data", b"instance-id: x\n")];
        let image = build_fat_image("CIDATA", &files).unwrap();
        // FAT12/16 extended BPB: volume id at 39, label at 43, type string at 54.
        assert_eq!(&image[39..43], &volume_id("CIDATA", &files).to_le_bytes());
        assert_eq!(&image[43..54], b"CIDATA     ");
        assert_eq!(&image[54..62], b"FAT12   ");
        assert_eq!(&image[510..512], &[0x55, 0xAA]);
    }

    #[test]
    fn same_input_same_bytes_and_content_changes_the_volume_id() {
        let a = build_fat_image("CIDATA", &[("user-data", b"a")]).unwrap();
        let b = build_fat_image("CIDATA", &[("user-data", b"a")]).unwrap();
        assert_eq!(a, b);
        assert_ne!(
            volume_id("CIDATA", &[("user-data", b"a")]),
            volume_id("CIDATA", &[("user-data", b"b")])
        );
        // Moving a byte between name and content must change the id too.
        assert_ne!(
            volume_id("CIDATA", &[("ab", b"c")]),
            volume_id("CIDATA", &[("a", b"bc")])
        );
    }

    #[test]
    fn bad_labels_and_names_are_refused() {
        for label in ["", "cidata", "TWELVE_CHARS", "CI DATA"] {
            assert!(matches!(
                build_fat_image(label, &[]),
                Err(FatError::InvalidLabel(_))
            ));
        }
        for name in ["", "a/b", "a\nb", "..", "trailing.", "a:b"] {
            assert!(
                matches!(
                    build_fat_image("CIDATA", &[(name, b"")]),
                    Err(FatError::InvalidFileName { .. })
                ),
                "{name:?}"
            );
        }
        assert!(matches!(
            build_fat_image("CIDATA", &[("user-data", b""), ("USER-DATA", b"")]),
            Err(FatError::DuplicateFileName(_))
        ));
    }
}
