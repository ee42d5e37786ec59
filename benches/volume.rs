//! Creating a formatted named volume, side by side with the rootless peer pipeline, each timed
//! as the whole thing a user runs.
//!
//! For each size, two benchmarks in one run:
//! - `volume/<size>/qemu-compose`: `qemu-compose volume create v --size S`, the release binary:
//!   process start, compose file, project lock, registry and every fsync included;
//! - `volume/<size>/peer`: `qemu-img create -f raw` + `mkfs.ext4 -q -F` +
//!   `qemu-img convert -O qcow2` and an fsync of the result, the pipeline a tool without root
//!   would run.
//!
//! Each prints the size of the file it makes. `scripts/bench-volume.sh` runs this and prints
//! the ratios of the medians. The formatter alone is `benches/ext4.rs`.

use std::fs::{self, File};
use std::process::Command;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};

#[path = "common/mod.rs"]
mod common;
use common::{BIN, allocated, project, remove_volume, run};

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let project = project(dir.path());
    let ours_image = project.join(".qemu-compose/volumes/v/volume.qcow2");
    let raw = dir.path().join("peer.raw");
    let peer_image = dir.path().join("peer.qcow2");
    for size in ["1G", "10G", "1T"] {
        let mut group = c.benchmark_group(format!("volume/{size}"));
        group.sample_size(20);
        group.bench_function("qemu-compose", |b| {
            b.iter_batched(
                || remove_volume(&project, "v"),
                |()| {
                    run(Command::new(BIN)
                        .args(["volume", "create", "v", "--size", size])
                        .current_dir(&project))
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function("peer", |b| {
            b.iter_batched(
                || {
                    let _ = fs::remove_file(&raw);
                    let _ = fs::remove_file(&peer_image);
                },
                |()| {
                    let raw = raw.to_str().unwrap();
                    run(Command::new("qemu-img").args(["create", "-q", "-f", "raw", raw, size]));
                    run(Command::new("mkfs.ext4").args(["-q", "-F", raw]));
                    run(Command::new("qemu-img").args([
                        "convert",
                        "-O",
                        "qcow2",
                        raw,
                        peer_image.to_str().unwrap(),
                    ]));
                    File::open(&peer_image).unwrap().sync_all().unwrap();
                },
                BatchSize::PerIteration,
            )
        });
        group.finish();
        println!(
            "volume/{size}: qemu-compose file {} bytes allocated, peer file {} bytes allocated",
            allocated(&ours_image),
            allocated(&peer_image)
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
