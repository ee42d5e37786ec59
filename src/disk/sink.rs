//! The interface disk formatters write through.
//!
//! A formatter (ext4, FAT) describes a device by writing byte ranges into a [`BlockSink`].
//! A device starts as all zeros, so a formatter writes only what is non-zero; what it never
//! writes costs nothing on disk. The same formatter can therefore be tested in memory
//! ([`SparseBuffer`]), on a sparse raw file ([`RawFile`]), and fed to the qcow2 writer, which
//! allocates clusters only for the ranges a [`SparseBuffer`] holds.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A byte-addressed device of fixed length that reads as zeros where nothing was written.
pub trait BlockSink {
    /// The device's size in bytes.
    fn len(&self) -> u64;

    /// Whether the device has no bytes at all.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes `data` at `offset`; later writes overwrite earlier ones.
    ///
    /// Writing past [`BlockSink::len`] is an error of kind [`io::ErrorKind::InvalidInput`].
    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
}

/// A byte-addressed device to read from: a disk image, or bytes in memory. Readers of
/// on-disk formats treat its contents as hostile.
pub trait BlockSource {
    /// The device's size in bytes.
    fn size(&self) -> u64;

    /// Fills `buf` from `offset`; a range past [`BlockSource::size`] is an error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
}

impl<T: BlockSource + ?Sized> BlockSource for &T {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        (**self).read_at(offset, buf)
    }
}

impl BlockSource for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|at| self.get(at..)?.get(..buf.len()))
            .ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl BlockSource for SparseBuffer {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_bounds(self.len, offset, buf)?;
        SparseBuffer::read_at(self, offset, buf);
        Ok(())
    }
}

fn check_bounds(len: u64, offset: u64, data: &[u8]) -> io::Result<()> {
    match offset.checked_add(data.len() as u64) {
        Some(end) if end <= len => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "write of {} bytes at offset {offset} is past the end of a {len}-byte device",
                data.len()
            ),
        )),
    }
}

/// An in-memory device that stores only the ranges written to it.
///
/// Adjacent and overlapping writes are merged, so [`SparseBuffer::extents`] yields disjoint,
/// sorted, non-touching ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SparseBuffer {
    len: u64,
    /// Start offset -> bytes; disjoint and non-adjacent.
    extents: BTreeMap<u64, Vec<u8>>,
}

impl SparseBuffer {
    /// An all-zero device of `len` bytes.
    pub fn new(len: u64) -> Self {
        Self {
            len,
            extents: BTreeMap::new(),
        }
    }

    /// The written ranges as `(offset, bytes)`, sorted by offset, disjoint and non-adjacent.
    pub fn extents(&self) -> impl Iterator<Item = (u64, &[u8])> {
        self.extents.iter().map(|(&o, d)| (o, d.as_slice()))
    }

    /// Total bytes held in memory (the sum of the extents' lengths).
    pub fn stored_bytes(&self) -> u64 {
        self.extents.values().map(|d| d.len() as u64).sum()
    }

    /// Reads `buf.len()` bytes at `offset`; unwritten bytes read as zero.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) {
        buf.fill(0);
        let end = offset.saturating_add(buf.len() as u64);
        // The extent that starts at or before `offset` may reach into the range.
        let first = self
            .extents
            .range(..=offset)
            .next_back()
            .map(|(&o, _)| o)
            .unwrap_or(offset);
        for (&start, data) in self.extents.range(first..end) {
            let ext_end = start + data.len() as u64;
            let lo = start.max(offset);
            let hi = ext_end.min(end);
            if lo < hi {
                buf[(lo - offset) as usize..(hi - offset) as usize]
                    .copy_from_slice(&data[(lo - start) as usize..(hi - start) as usize]);
            }
        }
    }
}

impl BlockSink for SparseBuffer {
    fn len(&self) -> u64 {
        self.len
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        check_bounds(self.len, offset, data)?;
        if data.is_empty() {
            return Ok(());
        }
        let end = offset + data.len() as u64;
        // Collect every extent that overlaps or touches [offset, end] and merge them.
        let mut start = offset;
        let mut merge_keys = Vec::new();
        if let Some((&o, d)) = self.extents.range(..offset).next_back()
            && o + d.len() as u64 >= offset
        {
            start = o;
            merge_keys.push(o);
        }
        merge_keys.extend(self.extents.range(offset..=end).map(|(&o, _)| o));
        let mut merged_end = end;
        for &k in &merge_keys {
            merged_end = merged_end.max(k + self.extents[&k].len() as u64);
        }
        let mut merged = vec![0u8; (merged_end - start) as usize];
        for k in merge_keys {
            let d = self.extents.remove(&k).expect("key collected above");
            let at = (k - start) as usize;
            merged[at..at + d.len()].copy_from_slice(&d);
        }
        let at = (offset - start) as usize;
        merged[at..at + data.len()].copy_from_slice(data);
        self.extents.insert(start, merged);
        Ok(())
    }
}

/// A raw image file: writes go straight to the file, and what is never written stays a hole.
#[derive(Debug)]
pub struct RawFile {
    file: File,
    len: u64,
}

impl RawFile {
    /// Wraps `file`, setting its length to `len` (which leaves the file sparse).
    pub fn new(file: File, len: u64) -> io::Result<Self> {
        file.set_len(len)?;
        Ok(Self { file, len })
    }

    /// Flushes the data to stable storage and returns the file.
    pub fn finish(self) -> io::Result<File> {
        self.file.sync_all()?;
        Ok(self.file)
    }
}

impl BlockSource for RawFile {
    fn size(&self) -> u64 {
        self.len
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        check_bounds(self.len, offset, buf)?;
        self.file.read_exact_at(buf, offset)
    }
}

impl BlockSink for RawFile {
    fn len(&self) -> u64 {
        self.len
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        check_bounds(self.len, offset, data)?;
        self.file.write_all_at(data, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(buf: &SparseBuffer, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0xAA; len];
        buf.read_at(offset, &mut out);
        out
    }

    #[test]
    fn unwritten_reads_as_zero() {
        let buf = SparseBuffer::new(100);
        assert_eq!(read(&buf, 10, 5), vec![0; 5]);
        assert_eq!(buf.stored_bytes(), 0);
    }

    #[test]
    fn overlapping_and_adjacent_writes_merge() {
        let mut buf = SparseBuffer::new(100);
        buf.write_at(10, &[1; 10]).unwrap();
        buf.write_at(30, &[3; 5]).unwrap();
        buf.write_at(15, &[2; 10]).unwrap(); // overlaps the first, touches nothing else
        buf.write_at(25, &[4; 5]).unwrap(); // touches both neighbours
        let extents: Vec<_> = buf.extents().map(|(o, d)| (o, d.len())).collect();
        assert_eq!(extents, vec![(10, 25)]);
        let mut expected = vec![1u8; 5];
        expected.extend([2; 10]);
        expected.extend([4; 5]);
        expected.extend([3; 5]);
        assert_eq!(read(&buf, 10, 25), expected);
        assert_eq!(read(&buf, 8, 3), vec![0, 0, 1]);
    }

    #[test]
    fn write_past_end_is_refused() {
        let mut buf = SparseBuffer::new(16);
        let err = buf.write_at(10, &[0; 7]).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(buf.write_at(u64::MAX, &[1]).is_err());
        buf.write_at(10, &[0; 6]).unwrap();
    }

    #[test]
    fn raw_file_is_sparse_and_readable() {
        let file = tempfile::tempfile().unwrap();
        let mut raw = RawFile::new(file, 1 << 20).unwrap();
        raw.write_at(4096, b"hello").unwrap();
        let file = raw.finish().unwrap();
        let mut out = [0u8; 5];
        file.read_exact_at(&mut out, 4096).unwrap();
        assert_eq!(&out, b"hello");
        assert_eq!(file.metadata().unwrap().len(), 1 << 20);
    }
}
