//! Writes a planned image into a file: only non-zero bytes are written, the rest stays a hole.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::header::{EXT_BACKING_FORMAT, EXT_END, Header, HeaderExtension, MAGIC};
use super::plan::{Layout, check_virtual_size, plan_layout};
use super::{BackingFormat, CLUSTER_BITS, CLUSTER_SIZE, ImageFormat, MAX_BACKING_NAME, Qcow2Error};
use crate::disk::sink::{BlockSink, SparseBuffer};

/// L1/L2 entry bit 63: the cluster's refcount is exactly 1, so it may be written in place.
pub(super) const COPIED: u64 = 1 << 63;

/// The backing file of an overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backing {
    /// Stored as given: a relative name is resolved against the overlay's directory when the
    /// overlay is opened.
    pub path: String,
    /// The base's format, e.g. from [`probe_format`].
    pub format: BackingFormat,
}

/// What a write produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteSummary {
    /// The file's length in bytes (most of it holes).
    pub file_size: u64,
    /// Guest clusters allocated because they hold non-zero bytes.
    pub data_clusters: u64,
}

/// Fills a buffer with the bytes of streamed range `i` (first argument) from byte `at` on
/// (second argument).
pub type Fill<'a> = dyn FnMut(usize, u64, &mut [u8]) -> io::Result<()> + 'a;

/// Told the bytes written so far and the bytes to write in all, after each write: a volume of
/// tens of terabytes has close to a gigabyte of metadata, seconds of writing.
pub type Advance<'a> = dyn FnMut(u64, u64) + 'a;

/// Writes a qcow2 image of `virtual_size` bytes whose contents are `contents` into `file`,
/// replacing whatever the file held. Only 64 KiB clusters with a non-zero byte are allocated.
///
/// The file is synced before this returns; the caller makes it visible (e.g. by renaming a
/// temporary file) only afterwards.
pub fn write_data_image(
    file: &File,
    virtual_size: u64,
    contents: &SparseBuffer,
) -> Result<WriteSummary, Qcow2Error> {
    write_data_image_with(
        file,
        virtual_size,
        contents,
        &[],
        &mut |_, _, _| Ok(()),
        &mut |_, _| {},
    )
}

/// Like [`write_data_image`], plus the guest byte ranges `streamed` (offset, length; ascending,
/// disjoint from each other and from the non-zero bytes of `contents`), whose bytes are not in
/// memory:
/// `fill(i, at, buf)` must fill `buf` with the bytes of range `i` from `at` on. Those ranges'
/// clusters are allocated whatever they hold, so a caller streams only bytes worth storing.
/// `advance` follows the writing of data (tables are small next to it).
///
/// The file is synced before this returns.
pub fn write_data_image_with(
    file: &File,
    virtual_size: u64,
    contents: &SparseBuffer,
    streamed: &[(u64, u64)],
    fill: &mut Fill<'_>,
    advance: &mut Advance<'_>,
) -> Result<WriteSummary, Qcow2Error> {
    check_virtual_size(virtual_size)?;
    if contents.len() > virtual_size {
        return Err(Qcow2Error::ContentsTooLarge {
            contents: contents.len(),
            size: virtual_size,
        });
    }
    if let Some(&(at, len)) = streamed
        .iter()
        .find(|(at, len)| at.checked_add(*len).is_none_or(|end| end > virtual_size))
    {
        return Err(Qcow2Error::ContentsTooLarge {
            contents: at.saturating_add(len),
            size: virtual_size,
        });
    }
    let pieces = nonzero_pieces(contents);
    let mut clusters: Vec<u64> = pieces.iter().map(|(at, _)| at / CLUSTER_SIZE).collect();
    for &(at, len) in streamed.iter().filter(|(_, len)| *len > 0) {
        clusters.extend(at / CLUSTER_SIZE..=(at + len - 1) / CLUSTER_SIZE);
    }
    let layout = plan_layout(virtual_size, clusters)?;
    let total = pieces
        .iter()
        .map(|(_, bytes)| bytes.len() as u64)
        .sum::<u64>()
        + streamed.iter().map(|(_, len)| len).sum::<u64>();
    let mut done = 0;
    let mut wrote = |n: usize| {
        done = (done + n as u64).min(total);
        advance(done, total);
    };
    wrote(0);
    let summary = write_layout(file, &layout, None)?;
    // Ranges are gathered into writes of up to STREAM_CHUNK bytes; a gap between two of them
    // is written as zeros when it lies in their own clusters (small files one after another).
    // The pieces of `contents` are written afterwards, over any such zeros.
    let mut buf: Vec<u8> = Vec::with_capacity(STREAM_CHUNK);
    let mut buf_at = 0;
    for (i, &(at, len)) in streamed.iter().enumerate() {
        let mut done = 0;
        while done < len {
            let piece_at = at + done;
            let end = buf_at + buf.len() as u64;
            let joins = !buf.is_empty()
                && piece_at >= end
                && piece_at / CLUSTER_SIZE <= (end - 1) / CLUSTER_SIZE + 1
                && piece_at - end < (STREAM_CHUNK - buf.len()) as u64;
            if joins {
                buf.resize(buf.len() + (piece_at - end) as usize, 0);
            } else {
                write_guest(file, &layout, buf_at, &buf)?;
                wrote(buf.len());
                buf.clear();
                buf_at = piece_at;
            }
            let n = (len - done).min((STREAM_CHUNK - buf.len()) as u64) as usize;
            let start = buf.len();
            buf.resize(start + n, 0);
            fill(i, done, &mut buf[start..]).map_err(Qcow2Error::io("reading the contents"))?;
            done += n as u64;
        }
    }
    write_guest(file, &layout, buf_at, &buf)?;
    wrote(buf.len());
    write_pieces(file, &layout, &pieces, &mut wrote)?;
    file.sync_all()
        .map_err(Qcow2Error::io("syncing the image file"))?;
    Ok(summary)
}

/// Bytes read and written at a time for streamed ranges.
const STREAM_CHUNK: usize = 1 << 20;

/// Where guest byte `guest` is stored in the file; its cluster must be in the layout.
fn host_offset(layout: &Layout, guest: u64) -> u64 {
    let index = layout
        .data_clusters
        .binary_search(&(guest / CLUSTER_SIZE))
        .expect("an allocated cluster");
    layout.data_offset + index as u64 * CLUSTER_SIZE + guest % CLUSTER_SIZE
}

/// Writes `bytes` at guest offset `guest`, in as few writes as the clusters' places allow.
fn write_guest(file: &File, layout: &Layout, guest: u64, bytes: &[u8]) -> Result<(), Qcow2Error> {
    let mut at = guest;
    let mut rest = bytes;
    while !rest.is_empty() {
        // Consecutive guest clusters sit consecutively in the file when all are allocated.
        let host = host_offset(layout, at);
        let mut len = chunk_len(at, rest.len());
        while len < rest.len() && host_offset(layout, at + len as u64) == host + len as u64 {
            len += chunk_len(at + len as u64, rest.len() - len);
        }
        file.write_all_at(&rest[..len], host)
            .map_err(Qcow2Error::io("writing the data"))?;
        at += len as u64;
        rest = &rest[len..];
    }
    Ok(())
}

/// Writes an empty copy-on-write overlay of `virtual_size` bytes over `backing` into `file`,
/// replacing whatever the file held, and syncs it. The virtual size may differ from the base's;
/// bytes past the end of a smaller base read as zeros.
pub fn write_overlay(
    file: &File,
    virtual_size: u64,
    backing: &Backing,
) -> Result<WriteSummary, Qcow2Error> {
    let name = backing.path.as_bytes();
    if name.is_empty() {
        return Err(Qcow2Error::InvalidBackingName("it is empty"));
    }
    if name.len() > MAX_BACKING_NAME {
        return Err(Qcow2Error::InvalidBackingName(
            "it is longer than 1023 bytes",
        ));
    }
    if name.contains(&0) {
        return Err(Qcow2Error::InvalidBackingName("it contains a NUL byte"));
    }
    let layout = plan_layout(virtual_size, Vec::new())?;
    let summary = write_layout(file, &layout, Some(backing))?;
    file.sync_all()
        .map_err(Qcow2Error::io("syncing the image file"))?;
    Ok(summary)
}

/// Tells a qcow2 image from a raw one by its first bytes.
pub fn probe_format(path: &Path) -> Result<ImageFormat, Qcow2Error> {
    let what = || format!("reading {}", path.display());
    let file = File::open(path).map_err(Qcow2Error::io(what()))?;
    let mut start = Vec::with_capacity(8);
    file.take(8)
        .read_to_end(&mut start)
        .map_err(Qcow2Error::io(what()))?;
    if start.len() < 4 || start[..4] != MAGIC.to_be_bytes() {
        return Ok(ImageFormat::Raw);
    }
    match start.get(4..8) {
        Some(v) => match u32::from_be_bytes([v[0], v[1], v[2], v[3]]) {
            version @ (2 | 3) => Ok(ImageFormat::Qcow2 { version }),
            version => Err(Qcow2Error::UnsupportedVersion(version)),
        },
        None => Err(Qcow2Error::Truncated("the header")),
    }
}

/// The non-zero bytes of `contents` as `(guest offset, bytes)`, ascending: each piece lies in
/// one cluster and starts and ends with a non-zero byte. Everything else reads as zero.
fn nonzero_pieces(contents: &SparseBuffer) -> Vec<(u64, &[u8])> {
    let mut pieces = Vec::new();
    for (offset, bytes) in contents.extents() {
        let mut at = offset;
        let mut rest = bytes;
        while !rest.is_empty() {
            let (chunk, tail) = rest.split_at(chunk_len(at, rest.len()));
            if let Some(first) = chunk.iter().position(|&b| b != 0) {
                let last = chunk.iter().rposition(|&b| b != 0).unwrap_or(first);
                pieces.push((at + first as u64, &chunk[first..=last]));
            }
            at += chunk.len() as u64;
            rest = tail;
        }
    }
    pieces
}

/// Bytes from `at` to the end of its cluster, at most `len`.
fn chunk_len(at: u64, len: usize) -> usize {
    let to_boundary = CLUSTER_SIZE - at % CLUSTER_SIZE;
    len.min(to_boundary as usize)
}

/// Cluster 0: the header, the header extensions and the backing file name.
fn encode_first_cluster(layout: &Layout, backing: Option<&Backing>) -> Vec<u8> {
    let mut header = Header {
        l1_size: layout.l1_size,
        l1_table_offset: layout.l1_table_offset,
        refcount_table_offset: layout.refcount_table_offset,
        refcount_table_clusters: layout.refcount_table_clusters,
        ..Header::v3(CLUSTER_BITS, layout.virtual_size)
    };
    let mut extensions = Vec::new();
    if let Some(b) = backing {
        HeaderExtension {
            kind: EXT_BACKING_FORMAT,
            data: b.format.as_str().as_bytes(),
        }
        .encode_into(&mut extensions);
    }
    HeaderExtension {
        kind: EXT_END,
        data: &[],
    }
    .encode_into(&mut extensions);
    if let Some(b) = backing {
        header.backing_file_offset = (Header::SIZE + extensions.len()) as u64;
        header.backing_file_size = b.path.len() as u32;
    }
    let mut out = header.encode().to_vec();
    out.extend_from_slice(&extensions);
    if let Some(b) = backing {
        out.extend_from_slice(b.path.as_bytes());
    }
    out
}

/// Writes the header and tables of `layout` into `file`; the caller writes the data and
/// syncs the file.
fn write_layout(
    file: &File,
    layout: &Layout,
    backing: Option<&Backing>,
) -> Result<WriteSummary, Qcow2Error> {
    let write = |bytes: &[u8], offset: u64, what: &str| {
        file.write_all_at(bytes, offset)
            .map_err(Qcow2Error::io(format!("writing the {what}")))
    };
    // Truncating first turns every byte not written below into a hole that reads as zero.
    file.set_len(0)
        .and_then(|()| file.set_len(layout.file_size()))
        .map_err(Qcow2Error::io("sizing the image file"))?;

    write(&encode_first_cluster(layout, backing), 0, "header")?;

    let table: Vec<u8> = (0..layout.refcount_blocks)
        .flat_map(|k| (layout.refcount_blocks_offset + k * CLUSTER_SIZE).to_be_bytes())
        .collect();
    write(&table, layout.refcount_table_offset, "refcount table")?;

    // Every cluster of the file is used once: the first `host_clusters` refcounts are 1.
    let refcounts = 1u16.to_be_bytes().repeat(layout.host_clusters as usize);
    write(&refcounts, layout.refcount_blocks_offset, "refcount blocks")?;

    // L1 entries, written in runs of consecutive indices so the rest of the table stays a hole.
    let l2_offset = |j: usize| layout.l2_tables_offset + j as u64 * CLUSTER_SIZE;
    let mut j = 0;
    while j < layout.l2_tables.len() {
        let first = layout.l2_tables[j];
        let mut run = Vec::new();
        while j < layout.l2_tables.len() && layout.l2_tables[j] == first + (run.len() / 8) as u64 {
            run.extend_from_slice(&(l2_offset(j) | COPIED).to_be_bytes());
            j += 1;
        }
        write(&run, layout.l1_table_offset + first * 8, "L1 table")?;
    }

    // Each L2 table from its first to its last used entry.
    let per_table = CLUSTER_SIZE / 8;
    let mut i = 0;
    for (j, &l1_index) in layout.l2_tables.iter().enumerate() {
        let first = layout.data_clusters[i] % per_table;
        let mut entries = Vec::new();
        while i < layout.data_clusters.len() && layout.data_clusters[i] / per_table == l1_index {
            let index = (layout.data_clusters[i] % per_table - first) as usize;
            entries.resize(index * 8, 0);
            let host = layout.data_offset + i as u64 * CLUSTER_SIZE;
            entries.extend_from_slice(&(host | COPIED).to_be_bytes());
            i += 1;
        }
        write(&entries, l2_offset(j) + first * 8, "L2 table")?;
    }

    Ok(WriteSummary {
        file_size: layout.file_size(),
        data_clusters: layout.data_clusters.len() as u64,
    })
}

/// Writes `pieces` (from [`nonzero_pieces`]) into their clusters: pieces that continue one
/// another in the file are gathered into one write of at most 1 MiB.
fn write_pieces(
    file: &File,
    layout: &Layout,
    pieces: &[(u64, &[u8])],
    wrote: &mut dyn FnMut(usize),
) -> Result<(), Qcow2Error> {
    let mut write = |bytes: &[u8], offset: u64| {
        file.write_all_at(bytes, offset)
            .map_err(Qcow2Error::io("writing the data"))?;
        wrote(bytes.len());
        Ok(())
    };
    let mut run: Vec<u8> = Vec::new();
    let mut run_at = 0;
    for &(guest, bytes) in pieces {
        let host = host_offset(layout, guest);
        if run_at + run.len() as u64 != host || run.len() + bytes.len() > 1 << 20 {
            if !run.is_empty() {
                write(&run, run_at)?;
            }
            run.clear();
            run_at = host;
        }
        run.extend_from_slice(bytes);
    }
    if !run.is_empty() {
        write(&run, run_at)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::qcow2::header::be64;

    #[test]
    fn overlay_first_cluster_golden_bytes() {
        let layout = plan_layout(1 << 20, Vec::new()).unwrap();
        let backing = Backing {
            path: "base.raw".into(),
            format: BackingFormat::Raw,
        };
        let cluster0 = encode_first_cluster(&layout, Some(&backing));
        let header = Header::decode(&cluster0).unwrap();
        assert_eq!(header.backing_file_offset, 136);
        assert_eq!(header.backing_file_size, 8);
        assert_eq!(header.l1_size, 1);
        assert_eq!(header.l1_table_offset, 0x2_0000);
        assert_eq!(header.refcount_table_offset, 0x1_0000);
        assert_eq!(header.refcount_table_clusters, 1);
        #[rustfmt::skip]
        let tail: &[u8] = &[
            0xE2, 0x79, 0x2A, 0xCA, 0, 0, 0, 3, b'r', b'a', b'w', 0, 0, 0, 0, 0, // backing format
            0, 0, 0, 0, 0, 0, 0, 0, // end of extensions
            b'b', b'a', b's', b'e', b'.', b'r', b'a', b'w', // backing file name
        ];
        assert_eq!(&cluster0[Header::SIZE..], tail);
    }

    #[test]
    fn only_non_zero_bytes_are_kept() {
        let mut contents = SparseBuffer::new(1 << 30);
        contents.write_at(10, &[1]).unwrap();
        contents.write_at(100, &[2; 70_000]).unwrap(); // clusters 0 and 1
        contents.write_at(5 << 16, &[0; 1 << 17]).unwrap(); // zeros: nothing
        let mut tail = vec![0u8; 1 << 17];
        tail[(1 << 17) - 1] = 3; // only the second cluster is non-zero
        contents.write_at(9 << 16, &tail).unwrap();
        let pieces = nonzero_pieces(&contents);
        let expected: Vec<(u64, &[u8])> = vec![
            (10, &[1]),
            (100, &[2; 65_436]), // up to the end of cluster 0
            (1 << 16, &[2; 4564]),
            ((11 << 16) - 1, &[3]),
        ];
        assert_eq!(pieces, expected);
    }

    #[test]
    fn written_tables_match_the_plan() {
        let mut contents = SparseBuffer::new(1 << 30);
        contents.write_at(3 << 16, b"abc").unwrap();
        contents.write_at((600 << 20) + 7, b"xyz").unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        let summary = write_data_image(file.as_file(), 1 << 30, &contents).unwrap();
        // header, reftable, L1, refblock, 2 L2 tables, 2 data clusters.
        assert_eq!(summary.data_clusters, 2);
        assert_eq!(summary.file_size, 8 * CLUSTER_SIZE);
        let bytes = std::fs::read(file.path()).unwrap();
        let c = CLUSTER_SIZE as usize;
        assert_eq!(be64(&bytes, c), 3 * CLUSTER_SIZE); // the refcount table's only entry
        assert_eq!(be64(&bytes, c + 8), 0);
        assert_eq!(be64(&bytes, 2 * c), (4 * CLUSTER_SIZE) | COPIED); // L1[0]
        assert_eq!(be64(&bytes, 2 * c + 8), (5 * CLUSTER_SIZE) | COPIED); // L1[1]
        let refcounts: Vec<u16> = bytes[3 * c..4 * c]
            .chunks_exact(2)
            .map(|r| u16::from_be_bytes([r[0], r[1]]))
            .collect();
        assert!(refcounts[..8].iter().all(|&r| r == 1));
        assert!(refcounts[8..].iter().all(|&r| r == 0));
        assert_eq!(be64(&bytes, 4 * c + 3 * 8), (6 * CLUSTER_SIZE) | COPIED); // L2[0][3]
        let l2_index = ((600 << 20) >> 16) % 8192;
        assert_eq!(
            be64(&bytes, 5 * c + l2_index * 8),
            (7 * CLUSTER_SIZE) | COPIED
        );
        assert_eq!(&bytes[6 * c..6 * c + 3], b"abc");
        assert_eq!(&bytes[7 * c + 7..7 * c + 10], b"xyz");
    }

    #[test]
    fn streamed_ranges_share_clusters_with_metadata() {
        let mut contents = SparseBuffer::new(1 << 30);
        contents.write_at(4096, b"meta").unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        // The first range shares cluster 0 with the metadata; the second spans clusters 3-4.
        let streamed = [(8192, 3), ((4 << 16) - 2, 4)];
        let summary = write_data_image_with(
            file.as_file(),
            1 << 30,
            &contents,
            &streamed,
            &mut |i, at, buf| {
                for (k, b) in buf.iter_mut().enumerate() {
                    *b = b'a' + (i * 10) as u8 + at as u8 + k as u8;
                }
                Ok(())
            },
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(summary.data_clusters, 3);
        let image = crate::disk::qcow2::Qcow2Image::open(file.path()).unwrap();
        let mut out = [0u8; 4];
        image.read_at(4096, &mut out).unwrap();
        assert_eq!(&out, b"meta");
        image.read_at(8192, &mut out[..3]).unwrap();
        assert_eq!(&out[..3], b"abc");
        image.read_at((4 << 16) - 2, &mut out).unwrap();
        assert_eq!(&out, b"klmn");
    }

    #[test]
    fn streamed_ranges_in_neighbouring_clusters_are_written_together() {
        let contents = SparseBuffer::new(1 << 20);
        let file = tempfile::NamedTempFile::new().unwrap();
        // Clusters 0 and 1 (joined, the gap written as zeros), then cluster 5 alone.
        let streamed = [(100, 3), ((1 << 16) + 4096, 2), ((5 << 16) + 1, 1)];
        let summary = write_data_image_with(
            file.as_file(),
            1 << 20,
            &contents,
            &streamed,
            &mut |i, _, b| {
                b.fill(b'1' + i as u8);
                Ok(())
            },
            &mut |_, _| {},
        )
        .unwrap();
        assert_eq!(summary.data_clusters, 3);
        let image = crate::disk::qcow2::Qcow2Image::open(file.path()).unwrap();
        let mut out = vec![0xAAu8; (1 << 16) + 4098];
        image.read_at(0, &mut out).unwrap();
        assert_eq!(&out[100..103], b"111");
        assert!(out[103..(1 << 16) + 4096].iter().all(|&b| b == 0));
        assert_eq!(&out[(1 << 16) + 4096..], b"22");
        image.read_at((5 << 16) + 1, &mut out[..1]).unwrap();
        assert_eq!(out[0], b'3');
    }

    #[test]
    fn advance_counts_every_byte_written_once() {
        let mut contents = SparseBuffer::new(1 << 30);
        contents.write_at(0, &[1; 5000]).unwrap();
        contents.write_at(3 << 20, &[2; 100]).unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        let streamed = [(1 << 20, 70_000)];
        let mut seen = Vec::new();
        write_data_image_with(
            file.as_file(),
            1 << 30,
            &contents,
            &streamed,
            &mut |_, _, b| {
                b.fill(7);
                Ok(())
            },
            &mut |done, total| seen.push((done, total)),
        )
        .unwrap();
        let total = seen[0].1;
        assert_eq!(seen[0].0, 0);
        assert!(seen.iter().all(|&(_, t)| t == total));
        assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
        assert_eq!(seen.last().unwrap().0, total);
        assert!(total >= 70_000 + 5100, "{total}");
    }

    #[test]
    fn probe_tells_qcow2_from_raw() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("raw"), b"hello world").unwrap();
        std::fs::write(path("empty"), b"").unwrap();
        std::fs::write(path("short"), b"QFI\xfb\0\0").unwrap();
        std::fs::write(path("v1"), b"QFI\xfb\0\0\0\x01").unwrap();
        std::fs::write(path("v2"), b"QFI\xfb\0\0\0\x02rest").unwrap();
        assert_eq!(probe_format(&path("raw")).unwrap(), ImageFormat::Raw);
        assert_eq!(probe_format(&path("empty")).unwrap(), ImageFormat::Raw);
        assert!(matches!(
            probe_format(&path("short")),
            Err(Qcow2Error::Truncated(_))
        ));
        assert!(matches!(
            probe_format(&path("v1")),
            Err(Qcow2Error::UnsupportedVersion(1))
        ));
        assert_eq!(
            probe_format(&path("v2")).unwrap(),
            ImageFormat::Qcow2 { version: 2 }
        );
        assert!(matches!(
            probe_format(&path("missing")),
            Err(Qcow2Error::Io { .. })
        ));
    }
}
