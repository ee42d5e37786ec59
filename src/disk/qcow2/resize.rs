//! Growing the virtual size of an existing image in place, as `qemu-img resize` does for a
//! larger size, limited to what needs no new cluster.
//!
//! The L1 table has one 8-byte entry per L2 table (per `cluster_size² / 8` bytes of disk), and
//! occupies whole clusters: growing only has to mark the new entries unallocated (zero) inside
//! the clusters the table already owns, then write the new `size` and `l1_size` into the
//! header. Nothing is allocated, so the refcounts stay right. The entries are zeroed and synced
//! before the header names them: a crash in between leaves the old, consistent image. A size
//! that needs more L1 clusters (more than 4 TiB with 64 KiB clusters) is refused.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::header::{INCOMPAT_CORRUPT, INCOMPAT_DIRTY};
use super::{Header, Qcow2Error};

/// Byte offset of `size` (u64, big-endian) in the header.
const SIZE_OFFSET: u64 = 24;
/// Byte offset of `l1_size` (u32, big-endian) in the header.
const L1_SIZE_OFFSET: u64 = 36;

/// Grows the image in `file` to `new_size` bytes. The image must not be in use (QEMU holds a
/// lock on images it runs; the caller checks). Returns the old size.
pub fn grow(file: &File, new_size: u64) -> Result<u64, Qcow2Error> {
    let mut bytes = vec![0u8; Header::SIZE];
    let read = file
        .read_at(&mut bytes, 0)
        .map_err(Qcow2Error::io("reading the header"))?;
    let header = Header::decode(&bytes[..read])?;
    let old_size = header.size;
    if new_size < old_size {
        return Err(Qcow2Error::InvalidSize {
            size: new_size,
            reason: "it is smaller than the image; shrinking would cut off data",
        });
    }
    if !new_size.is_multiple_of(512) {
        return Err(Qcow2Error::InvalidSize {
            size: new_size,
            reason: "it is not a multiple of 512 bytes",
        });
    }
    if header.incompatible_features & (INCOMPAT_DIRTY | INCOMPAT_CORRUPT) != 0 {
        return Err(Qcow2Error::Unsupported(
            "the image is marked dirty or corrupt; `qemu-img check -r all` repairs it".into(),
        ));
    }
    if header.nb_snapshots != 0 {
        return Err(Qcow2Error::Unsupported(
            "the image has internal snapshots".into(),
        ));
    }
    if !(9..=21).contains(&header.cluster_bits) {
        return Err(Qcow2Error::Corrupt(format!(
            "cluster_bits {} is out of range",
            header.cluster_bits
        )));
    }
    let cluster = header.cluster_size();
    let per_l2 = cluster / 8 * cluster;
    let old_entries = u64::from(header.l1_size);
    let new_entries = new_size.div_ceil(per_l2);
    let owned_entries = (old_entries * 8).div_ceil(cluster).max(1) * cluster / 8;
    if new_entries > owned_entries {
        return Err(Qcow2Error::InvalidSize {
            size: new_size,
            reason: "growing this far needs a larger L1 table, which is not relocated here",
        });
    }
    let new_l1_size = u32::try_from(new_entries).map_err(|_| Qcow2Error::InvalidSize {
        size: new_size,
        reason: "the L1 table would have too many entries",
    })?;
    if new_entries > old_entries {
        let zeros = vec![0u8; ((new_entries - old_entries) * 8) as usize];
        file.write_all_at(&zeros, header.l1_table_offset + old_entries * 8)
            .map_err(Qcow2Error::io("clearing the new L1 entries"))?;
        file.sync_data()
            .map_err(Qcow2Error::io("syncing the L1 table"))?;
    }
    file.write_all_at(&new_l1_size.to_be_bytes(), L1_SIZE_OFFSET)
        .map_err(Qcow2Error::io("writing the header"))?;
    file.write_all_at(&new_size.to_be_bytes(), SIZE_OFFSET)
        .map_err(Qcow2Error::io("writing the header"))?;
    file.sync_data()
        .map_err(Qcow2Error::io("syncing the header"))?;
    Ok(old_size)
}

#[cfg(test)]
mod tests {
    use super::super::{Backing, BackingFormat, Qcow2Image, write_overlay};
    use super::*;

    fn overlay(size: u64) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.qcow2");
        let file = File::create(&path).unwrap();
        let backing = Backing {
            path: "/base.img".into(),
            format: BackingFormat::Raw,
        };
        write_overlay(&file, size, &backing).unwrap();
        (dir, path)
    }

    #[test]
    fn growing_updates_the_size_and_the_l1_length() {
        let (_dir, path) = overlay(1 << 30);
        let file = File::options().read(true).write(true).open(&path).unwrap();
        assert_eq!(grow(&file, 3 << 30).unwrap(), 1 << 30);
        let image = Qcow2Image::from_source(File::open(&path).unwrap()).unwrap();
        assert_eq!(image.virtual_size(), 3 << 30);
        assert_eq!(image.header().l1_size, 6);
        // Same size again: nothing to do, nothing wrong.
        assert_eq!(grow(&file, 3 << 30).unwrap(), 3 << 30);
    }

    #[test]
    fn shrinking_and_overflowing_the_l1_clusters_are_refused() {
        let (_dir, path) = overlay(1 << 30);
        let file = File::options().read(true).write(true).open(&path).unwrap();
        assert!(matches!(
            grow(&file, 1 << 29),
            Err(Qcow2Error::InvalidSize { .. })
        ));
        // One L1 cluster holds 8192 entries of 512 MiB: 4 TiB.
        assert!(grow(&file, 4 << 40).is_ok());
        assert!(matches!(
            grow(&file, (4 << 40) + (1 << 29)),
            Err(Qcow2Error::InvalidSize { .. })
        ));
    }
}
