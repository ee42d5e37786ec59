//! Filling a new volume with files, side by side with the rootless peer pipeline, each timed
//! as the whole thing a user runs.
//!
//! For each tree (10,000 small files in 100 folders; 1 GiB in four files), two benchmarks:
//! - `import/<tree>/qemu-compose`: `qemu-compose volume import NAME SRC --size S`, the release
//!   binary, process start, compose file, lock, registry and every fsync included;
//! - `import/<tree>/peer`: a sparse raw file, `mkfs.ext4 -q -F -d SRC` on it, then
//!   `qemu-img convert -O qcow2` and an fsync of the result.
//!
//! Each prints the bytes its image file occupies. `scripts/bench-import.sh` runs this and
//! prints the ratios of the medians.

use std::fs::{self, File};
use std::path::Path;
use std::process::Command;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

#[path = "common/mod.rs"]
mod common;
use common::{BIN, allocated, project, remove_volume, run};

#[path = "../tests/common/pattern.rs"]
mod common_pattern;
use common_pattern::pattern;

fn small_files(dir: &Path) {
    for d in 0..100 {
        let sub = dir.join(format!("d{d:03}"));
        fs::create_dir_all(&sub).unwrap();
        for f in 0..100u64 {
            let seed = d * 100 + f;
            fs::write(
                sub.join(format!("f{f:03}")),
                pattern(seed, 100 + (seed as usize * 37) % 4000),
            )
            .unwrap();
        }
    }
}

fn large_files(dir: &Path) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..4 {
        fs::write(dir.join(format!("blob{i}")), pattern(i, 256 << 20)).unwrap();
    }
}

/// A tree to import: its name, the volume size, and what makes it.
type Tree = (&'static str, &'static str, fn(&Path));

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let project = project(dir.path());
    let trees: [Tree; 2] = [
        ("10k-small", "1G", small_files),
        ("1GiB-large", "2G", large_files),
    ];
    for (name, size, make) in trees {
        let src = dir.path().join(name);
        make(&src);
        let mut group = c.benchmark_group(format!("import/{name}"));
        group.sample_size(10);
        let volume_dir = project.join(".qemu-compose/volumes/v");
        let ours_image = volume_dir.join("volume.qcow2");
        group.bench_function("qemu-compose", |b| {
            b.iter_batched(
                || remove_volume(&project, "v"),
                |()| {
                    run(Command::new(BIN)
                        .args([
                            "volume",
                            "import",
                            "v",
                            src.to_str().unwrap(),
                            "--size",
                            size,
                        ])
                        .current_dir(&project))
                },
                BatchSize::PerIteration,
            )
        });
        let raw = dir.path().join("peer.raw");
        let peer_image = dir.path().join("peer.qcow2");
        group.bench_function("peer", |b| {
            b.iter_batched(
                || {
                    let _ = fs::remove_file(&raw);
                    let _ = fs::remove_file(&peer_image);
                },
                |()| {
                    run(Command::new("truncate").args(["-s", size, raw.to_str().unwrap()]));
                    run(Command::new("mkfs.ext4").args([
                        "-q",
                        "-F",
                        "-d",
                        src.to_str().unwrap(),
                        raw.to_str().unwrap(),
                    ]));
                    run(Command::new("qemu-img").args([
                        "convert",
                        "-O",
                        "qcow2",
                        raw.to_str().unwrap(),
                        peer_image.to_str().unwrap(),
                    ]));
                    File::open(&peer_image).unwrap().sync_all().unwrap();
                },
                BatchSize::PerIteration,
            )
        });
        group.finish();
        println!(
            "import/{name}: qemu-compose file {} bytes allocated, peer file {} bytes allocated",
            allocated(&ours_image),
            allocated(&peer_image)
        );
        fs::remove_dir_all(&src).unwrap();
    }
}

/// 10,000 small files into an existing 10G volume that already holds 1 GiB: written in place,
/// so the time is the new files', not a copy of what the volume holds. No peer pipeline
/// writes into an existing image without root, so this one has no comparison.
fn into_existing(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let project = project(dir.path());
    let large = dir.path().join("large");
    let small = dir.path().join("small");
    large_files(&large);
    small_files(&small);
    run(Command::new(BIN)
        .args([
            "volume",
            "import",
            "v",
            large.to_str().unwrap(),
            "--size",
            "10G",
        ])
        .current_dir(&project));
    let image = project.join(".qemu-compose/volumes/v/volume.qcow2");
    let saved = dir.path().join("saved.qcow2");
    fs::copy(&image, &saved).unwrap();
    let mut group = c.benchmark_group("import/10k-small-into-1GiB-volume");
    group.sample_size(10);
    group.bench_function("qemu-compose", |b| {
        b.iter_batched(
            || fs::copy(&saved, &image).unwrap(),
            |_| {
                run(Command::new(BIN)
                    .args(["volume", "import", "v", small.to_str().unwrap()])
                    .current_dir(&project))
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
    println!(
        "import/10k-small-into-1GiB-volume: qemu-compose file {} bytes allocated before, {} after",
        allocated(&saved),
        allocated(&image)
    );
}

criterion_group!(benches, bench, into_existing);
criterion_main!(benches);
