//! Formatting ext4 into memory at 1G, 10G and 1T.
//!
//! The `SparseBuffer` holds exactly the ranges the formatter wrote, which is what a qcow2 volume
//! will store; its size is printed once per case. Run with `cargo bench --bench ext4`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use qemu_compose::disk::SparseBuffer;
use qemu_compose::disk::ext4::{self, FormatOptions};

const G: u64 = 1 << 30;

fn options() -> FormatOptions {
    FormatOptions {
        label: "bench".into(),
        uuid: [0x42; 16],
        hash_seed: [0x17; 16],
        timestamp: 1_700_000_000,
        root_uid: 0,
        root_gid: 0,
    }
}

fn format(size: u64) -> SparseBuffer {
    let mut buf = SparseBuffer::new(size);
    ext4::format(&mut buf, &options()).expect("a supported size");
    buf
}

fn bench(c: &mut Criterion) {
    for (name, size) in [("1G", G), ("10G", 10 * G), ("1T", 1024 * G)] {
        let buf = format(size);
        // What a qcow2 image with 64 KiB clusters must allocate for these extents.
        let mut clusters: Vec<u64> = buf
            .extents()
            .flat_map(|(at, data)| at >> 16..=(at + data.len() as u64 - 1) >> 16)
            .collect();
        clusters.dedup();
        println!(
            "ext4 {name}: the SparseBuffer holds {} bytes in {} extents, touching {} 64 KiB clusters",
            buf.stored_bytes(),
            buf.extents().count(),
            clusters.len()
        );
        c.bench_function(&format!("ext4_format_{name}"), |b| {
            b.iter(|| format(black_box(size)))
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
