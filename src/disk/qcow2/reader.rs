//! Reads qcow2 images (version 2 and 3) and their backing chains.
//!
//! The file is untrusted: each offset taken from it is checked against the file's length before
//! it is read, and no allocation is larger than the file.

use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::header::{
    EXT_BACKING_FORMAT, Header, HeaderExtension, INCOMPAT_COMPRESSION_TYPE, INCOMPAT_CORRUPT,
    INCOMPAT_DIRTY, INCOMPAT_EXTENDED_L2, INCOMPAT_EXTERNAL_DATA, be64,
};
use super::writer::probe_format;
use super::{BackingFormat, MAX_BACKING_DEPTH, MAX_BACKING_NAME, Qcow2Error};
use crate::disk::sink::BlockSource;

/// Bits 9-55 of an L1 or L2 entry: the host offset of the table or cluster.
pub(super) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L2 entry bit 62: the cluster is compressed.
pub(super) const COMPRESSED: u64 = 1 << 62;
/// L2 entry bit 0 (version 3): the cluster reads as zeros.
pub(super) const READS_AS_ZERO: u64 = 1;
/// The largest L1 table QEMU opens (32 MiB of entries).
const MAX_L1_ENTRIES: u32 = 32 << 20 >> 3;

/// A source of bytes with a known length: a file, or bytes in memory (for the fuzzer).
pub trait ReadAt {
    /// The source's length in bytes.
    fn size(&self) -> io::Result<u64>;
    /// Fills `buf` from `offset`; the caller has checked that the range lies within `size`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for File {
    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> io::Result<u64> {
        Ok(self.as_slice().len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|at| self.get(at..)?.get(..buf.len()))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// The image below an overlay, where its unallocated clusters are read from.
#[derive(Debug)]
enum BackingLayer {
    /// No backing file: unallocated clusters read as zeros.
    None,
    /// The image names a backing file but was opened without resolving it.
    NotOpened,
    Qcow2(Box<Qcow2Image<File>>),
    Raw {
        file: File,
        len: u64,
    },
}

/// An open qcow2 image.
pub struct Qcow2Image<S: ReadAt = File> {
    source: S,
    source_len: u64,
    header: Header,
    backing_file: Option<String>,
    backing_format: Option<String>,
    /// The L1 entries that map the virtual disk (the table may have more, unused ones).
    l1: Vec<u64>,
    backing: BackingLayer,
}

/// Leaves out the source, which may be a whole image in memory.
impl<S: ReadAt> BlockSource for Qcow2Image<S> {
    fn size(&self) -> u64 {
        self.virtual_size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        Qcow2Image::read_at(self, offset, buf).map_err(io::Error::other)
    }
}

impl<S: ReadAt> fmt::Debug for Qcow2Image<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Qcow2Image")
            .field("header", &self.header)
            .field("host_size", &self.source_len)
            .field("backing_file", &self.backing_file)
            .field("backing_format", &self.backing_format)
            .field("backing", &self.backing)
            .finish_non_exhaustive()
    }
}

impl Qcow2Image<File> {
    /// Opens the image at `path` and its backing chain. A relative backing name is resolved
    /// against the directory of the image that names it; a missing backing-format extension
    /// means the base's format is probed.
    pub fn open(path: &Path) -> Result<Self, Qcow2Error> {
        Self::open_chain(path, &mut Vec::new())
    }

    /// Opens `path`, which is the `seen.len()`-th image of a chain whose earlier images
    /// (canonical paths) are `seen`.
    fn open_chain(path: &Path, seen: &mut Vec<PathBuf>) -> Result<Self, Qcow2Error> {
        let canonical = fs::canonicalize(path)
            .map_err(Qcow2Error::io(format!("opening {}", path.display())))?;
        if seen.contains(&canonical) {
            return Err(Qcow2Error::BackingLoop(canonical));
        }
        if seen.len() > MAX_BACKING_DEPTH {
            return Err(Qcow2Error::BackingTooDeep);
        }
        seen.push(canonical);
        let file =
            File::open(path).map_err(Qcow2Error::io(format!("opening {}", path.display())))?;
        let mut image = Self::from_source(file)?;
        if let Some(name) = &image.backing_file {
            let base = path.parent().unwrap_or(Path::new("")).join(name);
            image.backing = Self::open_backing(&base, image.backing_format.as_deref(), seen)
                .map_err(|e| match e {
                    Qcow2Error::BackingLoop(_)
                    | Qcow2Error::BackingTooDeep
                    | Qcow2Error::Backing { .. } => e,
                    other => Qcow2Error::Backing {
                        path: base.clone(),
                        source: Box::new(other),
                    },
                })?;
        }
        Ok(image)
    }

    /// Opens the overlay at `overlay` over `base`, a file the caller chose (never one its
    /// header names: the caller checks the header names `base`). The base must stand alone: a
    /// qcow2 base with a backing file of its own is refused.
    pub fn open_over(overlay: &Path, base: &Path) -> Result<Self, Qcow2Error> {
        let file = File::open(overlay)
            .map_err(Qcow2Error::io(format!("opening {}", overlay.display())))?;
        let mut image = Self::from_source(file)?;
        let what = || format!("opening {}", base.display());
        image.backing = match probe_format(base)?.backing_format() {
            BackingFormat::Qcow2 => {
                let file = File::open(base).map_err(Qcow2Error::io(what()))?;
                let base_image = Self::from_source(file)?;
                if base_image.backing_file.is_some() {
                    return Err(Qcow2Error::Unsupported(format!(
                        "base image {} has a backing file of its own",
                        base.display()
                    )));
                }
                BackingLayer::Qcow2(Box::new(base_image))
            }
            BackingFormat::Raw => {
                let file = File::open(base).map_err(Qcow2Error::io(what()))?;
                let len = ReadAt::size(&file).map_err(Qcow2Error::io(what()))?;
                BackingLayer::Raw { file, len }
            }
        };
        Ok(image)
    }

    fn open_backing(
        path: &Path,
        format: Option<&str>,
        seen: &mut Vec<PathBuf>,
    ) -> Result<BackingLayer, Qcow2Error> {
        let format = match format {
            Some("qcow2") => BackingFormat::Qcow2,
            Some("raw") => BackingFormat::Raw,
            Some(other) => {
                return Err(Qcow2Error::Unsupported(format!(
                    "backing file format {other:?} (only qcow2 and raw are supported)"
                )));
            }
            None => probe_format(path)?.backing_format(),
        };
        match format {
            BackingFormat::Qcow2 => {
                Ok(BackingLayer::Qcow2(Box::new(Self::open_chain(path, seen)?)))
            }
            BackingFormat::Raw => {
                let what = || format!("opening {}", path.display());
                let file = File::open(path).map_err(Qcow2Error::io(what()))?;
                let len = ReadAt::size(&file).map_err(Qcow2Error::io(what()))?;
                Ok(BackingLayer::Raw { file, len })
            }
        }
    }
}

impl<S: ReadAt> Qcow2Image<S> {
    /// Parses the header and L1 table of the image in `source` without opening its backing
    /// file: reads that reach the backing file then fail with [`Qcow2Error::BackingNotOpened`].
    pub fn from_source(source: S) -> Result<Self, Qcow2Error> {
        let source_len = source
            .size()
            .map_err(Qcow2Error::io("reading the image size"))?;
        let mut start = vec![0u8; source_len.min(Header::SIZE as u64) as usize];
        read_checked(&source, source_len, &mut start, 0, "the header")?;
        let header = Header::decode(&start)?;
        validate_header(&header)?;

        let cluster_size = header.cluster_size();
        let mut cluster0 = vec![0u8; source_len.min(cluster_size) as usize];
        read_checked(&source, source_len, &mut cluster0, 0, "the header")?;
        let (backing_file, backing_format) = parse_first_cluster(&header, &cluster0)?;

        // One L1 entry maps one L2 table: cluster_size / 8 clusters.
        let per_l1_entry = cluster_size * (cluster_size / 8);
        let needed = header.size.div_ceil(per_l1_entry);
        if needed > u64::from(header.l1_size) {
            return Err(Qcow2Error::Corrupt(format!(
                "the L1 table has {} entries but the {}-byte disk needs {needed}",
                header.l1_size, header.size
            )));
        }
        let l1_bytes = needed * 8;
        if header
            .l1_table_offset
            .checked_add(l1_bytes)
            .is_none_or(|end| end > source_len)
        {
            return Err(Qcow2Error::Truncated("the L1 table"));
        }
        let mut raw_l1 = vec![0u8; l1_bytes as usize];
        read_checked(
            &source,
            source_len,
            &mut raw_l1,
            header.l1_table_offset,
            "the L1 table",
        )?;
        let l1 = raw_l1.chunks_exact(8).map(|e| be64(e, 0)).collect();

        let backing = if backing_file.is_some() {
            BackingLayer::NotOpened
        } else {
            BackingLayer::None
        };
        Ok(Qcow2Image {
            source,
            source_len,
            header,
            backing_file,
            backing_format,
            l1,
            backing,
        })
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The qcow2 version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// The disk size the guest sees, in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.header.size
    }

    /// The cluster size in bytes.
    pub fn cluster_size(&self) -> u64 {
        self.header.cluster_size()
    }

    /// The backing file name as stored in the image.
    pub fn backing_file(&self) -> Option<&str> {
        self.backing_file.as_deref()
    }

    /// The backing file's format as stored in the backing-format extension, if present.
    pub fn backing_format(&self) -> Option<&str> {
        self.backing_format.as_deref()
    }

    /// The length of the image file in bytes.
    pub fn host_size(&self) -> u64 {
        self.source_len
    }

    /// Guest clusters this image (not its backing files) maps to host clusters, including
    /// compressed ones and preallocated clusters that read as zero.
    pub fn allocated_clusters(&self) -> Result<u64, Qcow2Error> {
        let mut tables: Vec<u64> = self.l1.iter().map(|e| e & OFFSET_MASK).collect();
        tables.retain(|&t| t != 0);
        tables.sort_unstable();
        // A table listed twice would be counted twice; it is also a sign of a corrupt image.
        if tables.windows(2).any(|w| w[0] == w[1]) {
            return Err(Qcow2Error::Corrupt(
                "two L1 entries point to the same L2 table".into(),
            ));
        }
        // Distinct tables inside the file: reading them all reads at most the file once.
        let mut table = vec![0u8; self.cluster_size() as usize];
        let mut count = 0;
        for offset in tables {
            self.check_aligned(offset, "an L2 table")?;
            read_checked(
                &self.source,
                self.source_len,
                &mut table,
                offset,
                "an L2 table",
            )?;
            count += table
                .chunks_exact(8)
                .map(|e| be64(e, 0))
                .filter(|e| e & (OFFSET_MASK | COMPRESSED) != 0)
                .count() as u64;
        }
        Ok(count)
    }

    /// Reads `buf.len()` bytes of the virtual disk at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), Qcow2Error> {
        let size = self.virtual_size();
        let len = buf.len() as u64;
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Qcow2Error::OutOfRange { offset, len, size });
        }
        let cluster_size = self.cluster_size();
        let mut pos = offset;
        let mut rest = buf;
        while !rest.is_empty() {
            let in_cluster = pos % cluster_size;
            let n = rest.len().min((cluster_size - in_cluster) as usize);
            let (chunk, tail) = rest.split_at_mut(n);
            match self.map_cluster(pos)? {
                Mapping::Host(host) => read_checked(
                    &self.source,
                    self.source_len,
                    chunk,
                    host + in_cluster,
                    "a data cluster",
                )?,
                Mapping::Zero => chunk.fill(0),
                Mapping::Unallocated => self.read_backing(pos, chunk)?,
            }
            pos += n as u64;
            rest = tail;
        }
        Ok(())
    }

    /// Where the guest cluster containing `pos` (< virtual size) lives.
    fn map_cluster(&self, pos: u64) -> Result<Mapping, Qcow2Error> {
        let bits = self.header.cluster_bits;
        let l2_entries = self.cluster_size() / 8;
        // `pos` < size, so the index is < `self.l1.len()`.
        let l1_entry = self.l1[(pos >> bits) as usize / l2_entries as usize];
        let table = l1_entry & OFFSET_MASK;
        if table == 0 {
            return Ok(Mapping::Unallocated);
        }
        self.check_aligned(table, "an L2 table")?;
        let mut raw = [0u8; 8];
        let at = table + ((pos >> bits) % l2_entries) * 8;
        read_checked(&self.source, self.source_len, &mut raw, at, "an L2 table")?;
        let entry = u64::from_be_bytes(raw);
        if entry & COMPRESSED != 0 {
            return Err(Qcow2Error::Unsupported("compressed clusters".into()));
        }
        if self.header.version >= 3 && entry & READS_AS_ZERO != 0 {
            return Ok(Mapping::Zero);
        }
        match entry & OFFSET_MASK {
            0 => Ok(Mapping::Unallocated),
            host => {
                self.check_aligned(host, "a data cluster")?;
                Ok(Mapping::Host(host))
            }
        }
    }

    fn check_aligned(&self, offset: u64, what: &str) -> Result<(), Qcow2Error> {
        if !offset.is_multiple_of(self.cluster_size()) {
            return Err(Qcow2Error::Corrupt(format!(
                "{what} at offset {offset:#x} is not cluster-aligned"
            )));
        }
        Ok(())
    }

    /// Reads unallocated guest bytes from the backing file; past its end they are zeros.
    fn read_backing(&self, offset: u64, buf: &mut [u8]) -> Result<(), Qcow2Error> {
        let base_len = match &self.backing {
            BackingLayer::None => 0,
            BackingLayer::NotOpened => return Err(Qcow2Error::BackingNotOpened),
            BackingLayer::Qcow2(image) => image.virtual_size(),
            BackingLayer::Raw { len, .. } => *len,
        };
        let available = base_len.saturating_sub(offset).min(buf.len() as u64) as usize;
        let (inside, past_end) = buf.split_at_mut(available);
        past_end.fill(0);
        if inside.is_empty() {
            return Ok(());
        }
        match &self.backing {
            BackingLayer::Qcow2(image) => image.read_at(offset, inside),
            BackingLayer::Raw { file, .. } => FileExt::read_exact_at(file, inside, offset)
                .map_err(Qcow2Error::io("reading the raw backing file")),
            BackingLayer::None | BackingLayer::NotOpened => Ok(()),
        }
    }
}

/// Where a guest cluster's bytes come from.
enum Mapping {
    /// The host cluster at this offset.
    Host(u64),
    /// Nowhere: it reads as zeros.
    Zero,
    /// The backing file (or zeros without one).
    Unallocated,
}

/// Reads `buf` at `offset` after checking that the range lies inside the `len`-byte source.
pub(super) fn read_checked<S: ReadAt>(
    source: &S,
    len: u64,
    buf: &mut [u8],
    offset: u64,
    what: &'static str,
) -> Result<(), Qcow2Error> {
    if offset
        .checked_add(buf.len() as u64)
        .is_none_or(|end| end > len)
    {
        return Err(Qcow2Error::Truncated(what));
    }
    source
        .read_exact_at(buf, offset)
        .map_err(Qcow2Error::io(format!("reading {what}")))
}

/// Refuses headers this reader cannot follow correctly.
pub(super) fn validate_header(h: &Header) -> Result<(), Qcow2Error> {
    if !(9..=21).contains(&h.cluster_bits) {
        return Err(Qcow2Error::Corrupt(format!(
            "cluster_bits {} is outside 9..=21",
            h.cluster_bits
        )));
    }
    if h.crypt_method != 0 {
        return Err(Qcow2Error::Unsupported("encrypted images".into()));
    }
    let f = h.incompatible_features;
    if f & INCOMPAT_CORRUPT != 0 {
        return Err(Qcow2Error::Corrupt(
            "QEMU marked the image corrupt; `qemu-img check -r all` may repair it".into(),
        ));
    }
    if f & INCOMPAT_EXTERNAL_DATA != 0 {
        return Err(Qcow2Error::Unsupported("external data files".into()));
    }
    if f & INCOMPAT_EXTENDED_L2 != 0 {
        return Err(Qcow2Error::Unsupported(
            "extended L2 entries (subclusters)".into(),
        ));
    }
    let known = INCOMPAT_DIRTY
        | INCOMPAT_CORRUPT
        | INCOMPAT_EXTERNAL_DATA
        | INCOMPAT_COMPRESSION_TYPE
        | INCOMPAT_EXTENDED_L2;
    if f & !known != 0 {
        return Err(Qcow2Error::Unsupported(format!(
            "incompatible feature bits {:#x}",
            f & !known
        )));
    }
    if h.refcount_order > 6 {
        return Err(Qcow2Error::Corrupt(format!(
            "refcount_order {} is larger than 6",
            h.refcount_order
        )));
    }
    if u64::from(h.header_length) > h.cluster_size() {
        return Err(Qcow2Error::Corrupt(
            "the header is larger than a cluster".into(),
        ));
    }
    if h.l1_size > MAX_L1_ENTRIES {
        return Err(Qcow2Error::Corrupt(format!(
            "the L1 table has {} entries, more than QEMU allows",
            h.l1_size
        )));
    }
    for (offset, what) in [
        (h.l1_table_offset, "the L1 table"),
        (h.refcount_table_offset, "the refcount table"),
    ] {
        if !offset.is_multiple_of(h.cluster_size()) {
            return Err(Qcow2Error::Corrupt(format!(
                "{what} at offset {offset:#x} is not cluster-aligned"
            )));
        }
    }
    Ok(())
}

/// The backing file name and the backing-format extension, from the first cluster (or as much
/// of it as the file holds).
fn parse_first_cluster(
    h: &Header,
    cluster0: &[u8],
) -> Result<(Option<String>, Option<String>), Qcow2Error> {
    let has_backing = h.backing_file_offset != 0 && h.backing_file_size != 0;
    let mut backing_file = None;
    // The extensions end at the backing file name, if it follows them, or at the cluster's end.
    let mut ext_end = cluster0.len();
    if has_backing {
        let size = h.backing_file_size as usize;
        if size > MAX_BACKING_NAME {
            return Err(Qcow2Error::Corrupt(format!(
                "the backing file name is {size} bytes long (at most {MAX_BACKING_NAME})"
            )));
        }
        let start = h.backing_file_offset;
        if start.saturating_add(size as u64) > h.cluster_size() {
            return Err(Qcow2Error::Corrupt(
                "the backing file name does not lie in the first cluster".into(),
            ));
        }
        let name = cluster0
            .get(start as usize..start as usize + size)
            .ok_or(Qcow2Error::Truncated("the backing file name"))?;
        let name = std::str::from_utf8(name)
            .map_err(|_| Qcow2Error::Unsupported("a backing file name that is not UTF-8".into()))?;
        backing_file = Some(name.to_owned());
        if start as usize >= h.header_length as usize {
            ext_end = start as usize;
        }
    }
    let ext_area = cluster0
        .get(h.header_length as usize..ext_end)
        .unwrap_or_default();
    let mut backing_format = None;
    for ext in HeaderExtension::decode_all(ext_area)? {
        if ext.kind == EXT_BACKING_FORMAT {
            let name = std::str::from_utf8(ext.data)
                .map_err(|_| Qcow2Error::Corrupt("the backing format name is not UTF-8".into()))?;
            backing_format = Some(name.to_owned());
        }
    }
    Ok((backing_file, backing_format))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::qcow2::writer::COPIED;
    use crate::disk::qcow2::{Backing, write_data_image, write_overlay};
    use crate::disk::{BlockSink, SparseBuffer};

    const C: usize = 1 << 16;
    // Layout of `sample()`: header, refcount table, L1, refcount block, L2, data.
    const L1: usize = 2 * C;
    const L2: usize = 4 * C;
    const DATA: u64 = 5 * C as u64;

    /// A 1 GiB image whose first cluster holds "hello" at byte 100.
    fn sample() -> Vec<u8> {
        let mut contents = SparseBuffer::new(1 << 30);
        contents.write_at(100, b"hello").unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        write_data_image(file.as_file(), 1 << 30, &contents).unwrap();
        fs::read(file.path()).unwrap()
    }

    fn put32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }

    fn put64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_be_bytes());
    }

    fn open(bytes: Vec<u8>) -> Result<Qcow2Image<Vec<u8>>, Qcow2Error> {
        Qcow2Image::from_source(bytes)
    }

    fn read(bytes: Vec<u8>) -> Result<Vec<u8>, Qcow2Error> {
        let mut buf = vec![0xAA; 8];
        open(bytes)?.read_at(98, &mut buf)?;
        Ok(buf)
    }

    fn patched(f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = sample();
        f(&mut b);
        b
    }

    #[test]
    fn sample_reads_back() {
        assert_eq!(read(sample()).unwrap(), b"\0\0hello\0");
        let image = open(sample()).unwrap();
        assert_eq!(image.allocated_clusters().unwrap(), 1);
        assert_eq!(image.host_size(), 6 * C as u64);
    }

    #[test]
    fn truncated_files_are_refused() {
        let full = sample();
        for len in [0, 3, 50, 100, L1 + 4, L2 + 100, DATA as usize + 50] {
            let err = read(full[..len].to_vec()).unwrap_err();
            assert!(
                matches!(err, Qcow2Error::Truncated(_) | Qcow2Error::NotQcow2),
                "{len}: {err}"
            );
        }
    }

    #[test]
    fn absurd_header_fields_are_refused() {
        let corrupt = |f: fn(&mut Vec<u8>)| {
            let err = open(patched(f)).unwrap_err();
            assert!(matches!(err, Qcow2Error::Corrupt(_)), "{err}");
        };
        corrupt(|b| put32(b, 20, 8)); // cluster_bits below 9
        corrupt(|b| put32(b, 20, 22)); // cluster_bits above 21
        corrupt(|b| put32(b, 36, u32::MAX)); // l1_size beyond QEMU's limit
        corrupt(|b| put32(b, 36, 1)); // l1_size smaller than the 1 GiB disk needs
        corrupt(|b| put64(b, 24, 1 << 62)); // a virtual size the L1 table cannot map
        corrupt(|b| put64(b, 40, L1 as u64 + 8)); // misaligned L1 table
        corrupt(|b| put64(b, 48, 0x1_0200)); // misaligned refcount table
        corrupt(|b| put32(b, 96, 7)); // refcount_order
        corrupt(|b| {
            put64(b, 8, 200); // a backing name longer than 1023 bytes
            put32(b, 16, 2000);
        });
        corrupt(|b| {
            put64(b, 8, 0xFFF0); // a backing name running past the first cluster
            put32(b, 16, 100);
        });
        corrupt(|b| {
            put64(b, 8, u64::MAX - 2); // a name offset that would overflow
            put32(b, 16, 8);
        });
        // An L1 table (at a valid offset) that reaches past the end of the file.
        let err = open(patched(|b| put64(b, 40, 5 * C as u64 + C as u64))).unwrap_err();
        assert!(matches!(err, Qcow2Error::Truncated(_)), "{err}");
        // 1 PiB with a matching L1 size: the 16 MiB table cannot be in a 384 KiB file.
        let err = open(patched(|b| {
            put64(b, 24, 1 << 50);
            put32(b, 36, 1 << 21);
        }))
        .unwrap_err();
        assert!(matches!(err, Qcow2Error::Truncated(_)), "{err}");
    }

    #[test]
    fn unsupported_features_are_refused() {
        let unsupported = |f: fn(&mut Vec<u8>)| {
            let err = open(patched(f)).unwrap_err();
            assert!(matches!(err, Qcow2Error::Unsupported(_)), "{err}");
        };
        unsupported(|b| put32(b, 32, 1)); // AES encryption
        unsupported(|b| put32(b, 32, 2)); // LUKS encryption
        unsupported(|b| put64(b, 72, INCOMPAT_EXTERNAL_DATA));
        unsupported(|b| put64(b, 72, INCOMPAT_EXTENDED_L2));
        unsupported(|b| put64(b, 72, 1 << 7));
        let err = open(patched(|b| put64(b, 72, INCOMPAT_CORRUPT))).unwrap_err();
        assert!(matches!(err, Qcow2Error::Corrupt(_)), "{err}");
        // Dirty only means refcounts may be stale; data is still read correctly.
        let b = patched(|b| put64(b, 72, INCOMPAT_DIRTY | INCOMPAT_COMPRESSION_TYPE));
        assert_eq!(read(b).unwrap(), b"\0\0hello\0");
        // A compressed cluster is found only when it is read.
        let b = patched(|b| put64(b, L2, COMPRESSED | DATA));
        let err = read(b).unwrap_err();
        assert!(matches!(err, Qcow2Error::Unsupported(_)), "{err}");
    }

    #[test]
    fn table_entries_pointing_nowhere_are_refused() {
        let check = |f: fn(&mut Vec<u8>), truncated: bool| {
            let err = read(patched(f)).unwrap_err();
            let ok = if truncated {
                matches!(err, Qcow2Error::Truncated(_))
            } else {
                matches!(err, Qcow2Error::Corrupt(_))
            };
            assert!(ok, "{err}");
        };
        check(|b| put64(b, L1, 1 << 40), true); // L2 table past the end
        check(|b| put64(b, L1, (L2 as u64 + 512) | COPIED), false); // misaligned L2 table
        check(|b| put64(b, L2, (1 << 40) | COPIED), true); // data cluster past the end
        check(|b| put64(b, L2, (DATA + 512) | COPIED), false); // misaligned data cluster
        // Two L1 entries sharing one L2 table.
        let b = patched(|b| {
            let entry = be64(b, L1);
            put64(b, L1 + 8, entry);
        });
        let err = open(b).unwrap().allocated_clusters().unwrap_err();
        assert!(matches!(err, Qcow2Error::Corrupt(_)), "{err}");
    }

    #[test]
    fn zero_flag_and_empty_entries_read_as_zeros() {
        let b = patched(|b| put64(b, L2, DATA | COPIED | READS_AS_ZERO));
        assert_eq!(read(b).unwrap(), [0; 8]);
        let b = patched(|b| put64(b, L1, 0));
        assert_eq!(read(b).unwrap(), [0; 8]);
        // Version 2 has no zero flag: bit 0 is ignored.
        let b = patched(|b| {
            put32(b, 4, 2);
            put64(b, L2, DATA | COPIED | READS_AS_ZERO);
        });
        assert_eq!(read(b).unwrap(), b"\0\0hello\0");
    }

    #[test]
    fn reads_outside_the_disk_are_refused() {
        let image = open(sample()).unwrap();
        for (offset, len) in [(1 << 30, 1), ((1 << 30) - 4, 5), (u64::MAX, 2)] {
            let err = image.read_at(offset, &mut vec![0; len]).unwrap_err();
            assert!(matches!(err, Qcow2Error::OutOfRange { .. }), "{err}");
        }
    }

    fn overlay(dir: &Path, name: &str, backing: &str) {
        let file = File::create(dir.join(name)).unwrap();
        let backing = Backing {
            path: backing.into(),
            format: BackingFormat::Qcow2,
        };
        write_overlay(&file, 1 << 20, &backing).unwrap();
    }

    #[test]
    fn backing_loops_and_deep_chains_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        overlay(d, "a.qcow2", "b.qcow2");
        overlay(d, "b.qcow2", "./a.qcow2");
        let err = Qcow2Image::open(&d.join("a.qcow2")).unwrap_err();
        assert!(matches!(err, Qcow2Error::BackingLoop(_)), "{err}");
        overlay(d, "self.qcow2", "self.qcow2");
        let err = Qcow2Image::open(&d.join("self.qcow2")).unwrap_err();
        assert!(matches!(err, Qcow2Error::BackingLoop(_)), "{err}");

        // c0 <- c1 <- ... <- c17: c17 has 17 backing files, one too many; c16 is fine.
        let file = File::create(d.join("c0.qcow2")).unwrap();
        write_data_image(&file, 1 << 20, &SparseBuffer::new(0)).unwrap();
        for i in 1..=17 {
            overlay(d, &format!("c{i}.qcow2"), &format!("c{}.qcow2", i - 1));
        }
        let image = Qcow2Image::open(&d.join("c16.qcow2")).unwrap();
        image.read_at(0, &mut [0; 512]).unwrap();
        let err = Qcow2Image::open(&d.join("c17.qcow2")).unwrap_err();
        assert!(matches!(err, Qcow2Error::BackingTooDeep), "{err}");
    }

    #[test]
    fn backing_files_need_resolving() {
        let dir = tempfile::tempdir().unwrap();
        overlay(dir.path(), "top.qcow2", "missing.qcow2");
        let err = Qcow2Image::open(&dir.path().join("top.qcow2")).unwrap_err();
        assert!(matches!(err, Qcow2Error::Backing { .. }), "{err}");
        // Parsed from bytes, the backing file is named but never opened.
        let image = open(fs::read(dir.path().join("top.qcow2")).unwrap()).unwrap();
        assert_eq!(image.backing_file(), Some("missing.qcow2"));
        assert_eq!(image.backing_format(), Some("qcow2"));
        let err = image.read_at(0, &mut [0; 4]).unwrap_err();
        assert!(matches!(err, Qcow2Error::BackingNotOpened), "{err}");
    }
}
