//! Creating a formatted named volume, side by side with the rootless peer pipeline.
//!
//! For each size, two benchmarks in one run:
//! - `volume/<size>/qemu-compose`: our path, `ext4::format` into memory then the qcow2 writer
//!   into a file, synced (what `qemu-compose volume create` does);
//! - `volume/<size>/peer`: `qemu-img create -f raw` + `mkfs.ext4 -q -F` +
//!   `qemu-img convert -O qcow2`, the pipeline a tool without root would run.
//!
//! Each prints the size of the file it makes. `scripts/bench-volume.sh` runs this and prints
//! the ratios of the medians.

use std::fs::File;
use std::path::Path;
use std::process::Command;

use criterion::{Criterion, criterion_group, criterion_main};
use qemu_compose::disk::SparseBuffer;
use qemu_compose::disk::ext4::{self, FormatOptions};
use qemu_compose::disk::qcow2;

const G: u64 = 1 << 30;

fn ours(path: &Path, size: u64) {
    let mut contents = SparseBuffer::new(size);
    ext4::format(&mut contents, &FormatOptions::new("bench")).expect("a supported size");
    let file = File::create(path).expect("a scratch file");
    qcow2::write_data_image(&file, size, &contents).expect("the image is written");
}

fn run(tool: &str, args: &[&str]) {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} must be installed for this benchmark: {e}"));
    assert!(
        out.status.success(),
        "{tool} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn peer(dir: &Path, out: &Path, size: u64) {
    let raw = dir.join("peer.raw");
    let raw = raw.to_str().unwrap();
    run(
        "qemu-img",
        &["create", "-q", "-f", "raw", raw, &size.to_string()],
    );
    run("mkfs.ext4", &["-q", "-F", raw]);
    run(
        "qemu-img",
        &["convert", "-O", "qcow2", raw, out.to_str().unwrap()],
    );
    std::fs::remove_file(raw).unwrap();
}

/// Bytes the file occupies on disk (holes excluded).
fn allocated(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(&std::fs::metadata(path).unwrap()) * 512
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    for (name, size) in [("1G", G), ("10G", 10 * G), ("1T", 1024 * G)] {
        let mut group = c.benchmark_group(format!("volume/{name}"));
        group.sample_size(10);
        let mine = dir.path().join("ours.qcow2");
        let theirs = dir.path().join("peer.qcow2");
        group.bench_function("qemu-compose", |b| b.iter(|| ours(&mine, size)));
        group.bench_function("peer", |b| b.iter(|| peer(dir.path(), &theirs, size)));
        group.finish();
        println!(
            "volume/{name}: qemu-compose file {} bytes allocated, peer file {} bytes allocated",
            allocated(&mine),
            allocated(&theirs)
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
