//! The integration tests, in one binary: the real `qemu-compose` binary, the library against
//! the reference tools (qemu-img, qemu-system-x86_64, e2fsprogs, dosfstools, mtools,
//! cloud-init, OpenSSH), and what they share in [`harness`].
//!
//! One binary links once, and its tests share one process: one environment policy for every
//! command they start, and one lock that keeps QEMU guests one at a time. Run a part with a
//! filter on the module: `cargo test --test it seed::`. The real-guest test stays in
//! `tests/e2e.rs`, apart from the tiny arm64 guest of `arm64`, which boots in seconds.

mod harness;

mod arm64;
mod cli;
mod compose;
mod contents;
mod ext4;
mod ext4_edit;
mod habits;
mod image;
mod interact;
mod kubevirt;
mod layering;
mod lifecycle;
mod network;
mod qcow2;
mod qcow2_update;
mod qemu;
mod seed;
mod ssh;
mod volumes;
