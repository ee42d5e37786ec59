//! Opens arbitrary bytes as a qcow2 image and reads a few ranges. Backing files are never
//! resolved (reads that need one fail with `BackingNotOpened`), so only the header and table
//! parsing of the image itself is exercised. Any error is fine; a panic, hang or huge
//! allocation is a bug.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_compose::disk::qcow2::Qcow2Image;

fuzz_target!(|data: &[u8]| {
    let Ok(image) = Qcow2Image::from_source(data.to_vec()) else {
        return;
    };
    let size = image.virtual_size();
    let _ = image.allocated_clusters();
    let mut buf = vec![0u8; 4096];
    for offset in [0, size / 2, size.saturating_sub(4096), size.saturating_sub(1)] {
        let len = size.saturating_sub(offset).min(buf.len() as u64) as usize;
        let _ = image.read_at(offset, &mut buf[..len]);
    }
    // A read across several clusters, and one past the end.
    let mut big = vec![0u8; 3 * 512 + 7];
    let _ = image.read_at(size.saturating_sub(big.len() as u64) / 3, &mut big);
    let _ = image.read_at(size, &mut buf[..1]);
});
