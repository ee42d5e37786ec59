//! Creating 10 GiB qcow2 images: empty, and with 1,000 scattered 4 KiB blocks of data, beside
//! `qemu-img create -f qcow2` in the same run. `scripts/bench-qcow2.sh` prints the medians and
//! the ratios.

use std::fs::File;
use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use criterion::BatchSize::PerIteration;
use criterion::{Criterion, criterion_group, criterion_main};
use qemu_compose::disk::qcow2::write_data_image;
use qemu_compose::disk::{BlockSink, SparseBuffer};

const SIZE: u64 = 10 << 30;

/// 1,000 distinct 4 KiB-aligned blocks spread over the disk by a fixed linear congruential
/// sequence, each filled with a non-zero pattern.
fn scattered_blocks() -> SparseBuffer {
    let mut contents = SparseBuffer::new(SIZE);
    let blocks = SIZE / 4096;
    let mut x: u64 = 12345;
    let mut written = 0;
    while written < 1000 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let block = (x >> 20) % blocks;
        let mut probe = [0u8; 1];
        contents.read_at(block * 4096, &mut probe);
        if probe[0] == 0 {
            contents
                .write_at(block * 4096, &[(written % 255 + 1) as u8; 4096])
                .unwrap();
            written += 1;
        }
    }
    contents
}

fn write_ours(path: &Path, contents: &SparseBuffer) {
    let file = File::create(path).unwrap();
    black_box(write_data_image(&file, SIZE, contents).unwrap());
}

fn qemu_img_create(path: &Path) {
    let status = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("10G")
        .status()
        .expect("qemu-img is required for the comparison (install qemu-utils)");
    assert!(status.success(), "qemu-img create failed");
}

/// Removes the previous iteration's image, outside the timed part: truncating or unlinking a
/// freshly synced file costs tens of milliseconds on ext4 and is not part of creating one.
fn fresh(path: &Path) -> &Path {
    let _ = std::fs::remove_file(path);
    path
}

fn create_10g(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.qcow2");
    let empty = SparseBuffer::new(0);
    let scattered = scattered_blocks();

    let mut group = c.benchmark_group("create_10g");
    group
        .sample_size(30)
        .measurement_time(Duration::from_secs(5));
    group.bench_function("ours_empty", |b| {
        b.iter_batched(|| fresh(&path), |p| write_ours(p, &empty), PerIteration)
    });
    group.bench_function("ours_1000_blocks", |b| {
        b.iter_batched(|| fresh(&path), |p| write_ours(p, &scattered), PerIteration)
    });
    group.bench_function("qemu_img_create", |b| {
        b.iter_batched(|| fresh(&path), qemu_img_create, PerIteration)
    });
    group.finish();
}

criterion_group!(benches, create_10g);
criterion_main!(benches);
