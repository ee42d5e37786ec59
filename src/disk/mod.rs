//! On-disk formats written and read in-process: qcow2 images, ext4 filesystems and the FAT
//! image of the cloud-init seed. Nothing here imports from the rest of the crate.

pub mod ext4;
pub mod fat;
pub mod qcow2;
pub mod sink;

pub use sink::{BlockSink, RawFile, SparseBuffer};
