//! Looks for the Linux filesystem in arbitrary bytes taken as a whole disk (GPT, MBR, or the
//! whole disk) and reads the first and last bytes of what it finds. Any error is fine; a
//! panic, or a read outside the disk, is a bug.

#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_compose::disk::BlockSource;
use qemu_compose::disk::partition::{Partition, find_linux_filesystem};

fuzz_target!(|data: &[u8]| {
    let Ok(found) = find_linux_filesystem(data) else {
        return;
    };
    assert!(found.start + found.len <= data.len() as u64);
    let part = Partition::new(data, &found);
    let mut byte = [0u8; 1];
    part.read_at(0, &mut byte).expect("the first byte lies inside the disk");
    part.read_at(found.len - 1, &mut byte).expect("the last byte lies inside the disk");
});
