//! qemu-compose: run QEMU virtual machines from a compose file, rootless, with every disk
//! image (qcow2 volumes and overlays, ext4 filesystems, the cloud-init seed) written
//! in-process.
//!
//! Data flows one way: [`compose`] (file -> validated model) -> [`engine`] (plan, then apply)
//! -> [`qemu`]. [`disk`], [`cloudinit`] and [`compose`] import nothing from the rest of the
//! crate.

pub mod cleanup;
pub mod cloudinit;
pub mod compose;
pub mod disk;
pub mod engine;
pub mod image;
pub mod kubevirt;
pub mod net;
pub mod progress;
pub mod qemu;
pub mod state;
