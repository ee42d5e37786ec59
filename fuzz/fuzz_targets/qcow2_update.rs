//! Opens arbitrary bytes as a qcow2 image for an in-place update, writes across a few
//! clusters and commits, all in memory. Any error is fine; a panic, hang or huge allocation is
//! a bug.

#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use qemu_compose::disk::BlockSink;
use qemu_compose::disk::qcow2::{Qcow2Update, ReadAt, UpdateStorage};

/// The image file, in memory.
struct Memory(Vec<u8>);

impl ReadAt for Memory {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.read_exact_at(buf, offset)
    }
}

impl UpdateStorage for Memory {
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput)?;
        let end = start + buf.len();
        // A hostile image may place new clusters far out; keep the fuzzer's memory bounded.
        if end > 64 << 20 {
            return Err(io::ErrorKind::StorageFull.into());
        }
        if self.0.len() < end {
            self.0.resize(end, 0);
        }
        self.0[start..end].copy_from_slice(buf);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn punch_hole(&mut self, offset: u64, len: u64) -> io::Result<()> {
        let start = (offset as usize).min(self.0.len());
        let end = (offset.saturating_add(len) as usize).min(self.0.len());
        self.0[start..end].fill(0);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.0.truncate(len as usize);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(mut update) = Qcow2Update::open_storage(Memory(data.to_vec())) else {
        return;
    };
    let size = update.len();
    let bytes = vec![0x5a; 3 * 512 + 7];
    for offset in [0, size / 3, size.saturating_sub(bytes.len() as u64)] {
        let len = size.saturating_sub(offset).min(bytes.len() as u64) as usize;
        let _ = update.write(offset, &bytes[..len]);
    }
    let mut buf = vec![0u8; 4096];
    let len = size.min(buf.len() as u64) as usize;
    let _ = update.read(0, &mut buf[..len]);
    let _ = update.commit();
});
