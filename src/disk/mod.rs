//! On-disk formats written and read in-process: qcow2 images, ext4 filesystems and the FAT
//! image of the cloud-init seed, and the signatures that tell a raw disk image from a file
//! that is not one. Nothing here imports from the rest of the crate.

pub mod ext4;
pub mod fat;
pub mod partition;
pub mod qcow2;
pub mod signature;
pub mod sink;

pub use sink::{BlockSink, BlockSource, RawFile, SparseBuffer};
