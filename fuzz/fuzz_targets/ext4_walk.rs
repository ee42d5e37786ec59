//! Opens arbitrary bytes as an ext4 filesystem (replaying its journal in memory when it needs
//! recovery) and walks it from the root: every directory,
//! every file's block map and some of its bytes, every symbolic link. Any error is fine; a
//! panic, hang or huge allocation is a bug. Walks at most a few thousand inodes per input so
//! that a filesystem full of hard-linked folders ends quickly.

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use qemu_compose::disk::ext4::read::{FileType, Filesystem};

fuzz_target!(|data: &[u8]| {
    let Ok((fs, _)) = Filesystem::open_recovering(data) else {
        return;
    };
    let mut seen = HashSet::new();
    let mut stack = vec![2u32];
    let mut buf = vec![0u8; 4096];
    while let Some(ino) = stack.pop() {
        if seen.len() > 4096 || !seen.insert(ino) {
            continue;
        }
        let Ok(stat) = fs.stat(ino) else { continue };
        match stat.kind {
            FileType::Dir => {
                if let Ok(entries) = fs.read_dir(&stat) {
                    stack.extend(entries.into_iter().map(|e| e.ino));
                }
            }
            FileType::File => {
                if let Ok(maps) = fs.data(&stat) {
                    for m in maps.iter().take(16) {
                        if let Some(offset) = m.offset {
                            let len = m.len.min(buf.len() as u64) as usize;
                            let _ = fs.read_mapped(offset, &mut buf[..len]);
                        }
                    }
                }
            }
            FileType::Symlink => {
                let _ = fs.read_link(&stat);
            }
            FileType::Special => {}
        }
    }
    let _ = fs.lookup(b"/a/b/../c");
});
