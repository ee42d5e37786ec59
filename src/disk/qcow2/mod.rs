//! qcow2 version 3 images: a writer for data images and copy-on-write overlays, and a reader.
//!
//! The writer never runs qemu-img. It plans the whole file first with a pure function
//! ([`plan_layout`]), then writes it through positioned writes, leaving every unused range a hole:
//!
//! ```text
//! cluster 0 header + extensions + backing name | refcount table | L1 | refcount blocks | L2s | data
//! ```
//!
//! Every cluster of that file is used exactly once, so all refcounts are 1 and every table entry
//! carries the COPIED flag, which is what `qemu-img check` expects of a consistent image.
//!
//! The reader ([`Qcow2Image`]) opens version 2 and 3 images, follows the backing chain (qcow2 or
//! raw bases) and reads any byte range. It treats the file as hostile: every offset is checked
//! against the file's length before use and every allocation is bounded by it.

mod header;
mod plan;
mod reader;
mod resize;
mod update;
mod writer;

use std::io;
use std::path::PathBuf;

pub use header::{Header, HeaderExtension};
pub use plan::{Layout, plan_layout};
pub use reader::{Qcow2Image, ReadAt};
pub use resize::grow;
pub use update::{Qcow2Update, UpdateStorage};
pub use writer::{
    Advance, Backing, Fill, WriteSummary, probe_format, write_data_image, write_data_image_with,
    write_overlay,
};

/// log2 of the cluster size the writer uses (64 KiB, qemu-img's default).
pub const CLUSTER_BITS: u32 = 16;
/// The cluster size the writer uses.
pub const CLUSTER_SIZE: u64 = 1 << CLUSTER_BITS;
/// The largest virtual size the writer accepts: 1 PiB. Its L1 table is 16 MiB, half of the
/// 32 MiB QEMU allows.
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 50;
/// The longest backing file name the format allows, in bytes.
pub const MAX_BACKING_NAME: usize = 1023;
/// How many backing files the reader follows below the opened image before giving up.
pub const MAX_BACKING_DEPTH: usize = 16;

/// The format of a backing file, as recorded in the backing-format header extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingFormat {
    /// A qcow2 image (version 2 or 3).
    Qcow2,
    /// A raw image: the file's bytes are the disk's bytes.
    Raw,
}

impl BackingFormat {
    /// The name QEMU uses for the format (`qcow2`, `raw`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackingFormat::Qcow2 => "qcow2",
            BackingFormat::Raw => "raw",
        }
    }
}

/// What [`probe_format`] found at the start of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A qcow2 image of the given version (2 or 3).
    Qcow2 {
        /// The header's version field.
        version: u32,
    },
    /// Anything without the qcow2 magic is treated as a raw image.
    Raw,
}

impl ImageFormat {
    /// The format to record when this image becomes a backing file.
    pub fn backing_format(self) -> BackingFormat {
        match self {
            ImageFormat::Qcow2 { .. } => BackingFormat::Qcow2,
            ImageFormat::Raw => BackingFormat::Raw,
        }
    }
}

/// Everything that can go wrong writing or reading a qcow2 image.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    /// Reading or writing the file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: io::Error,
    },
    /// The requested virtual size cannot be written.
    #[error("invalid virtual size {size} bytes: {reason}")]
    InvalidSize {
        /// The size asked for.
        size: u64,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The contents handed to the writer are longer than the image.
    #[error("the contents ({contents} bytes) are larger than the virtual size ({size} bytes)")]
    ContentsTooLarge {
        /// Length of the contents.
        contents: u64,
        /// The virtual size asked for.
        size: u64,
    },
    /// The backing file name cannot be stored.
    #[error("invalid backing file name: {0}")]
    InvalidBackingName(&'static str),
    /// The file does not start with the qcow2 magic.
    #[error("not a qcow2 image (bad magic)")]
    NotQcow2,
    /// A qcow2 version other than 2 or 3.
    #[error("unsupported qcow2 version {0} (only versions 2 and 3 are supported)")]
    UnsupportedVersion(u32),
    /// A feature this reader does not implement; reading on would return wrong data.
    #[error("unsupported qcow2 feature: {0}")]
    Unsupported(String),
    /// The file ends before a structure it declares.
    #[error("the image is truncated: {0} lies past the end of the file")]
    Truncated(&'static str),
    /// The metadata is inconsistent.
    #[error("corrupt qcow2 image: {0}")]
    Corrupt(String),
    /// A read outside the virtual disk.
    #[error("read of {len} bytes at offset {offset} is past the end of the {size}-byte disk")]
    OutOfRange {
        /// Where the read started.
        offset: u64,
        /// How many bytes were asked for.
        len: u64,
        /// The virtual size.
        size: u64,
    },
    /// The image was opened without its backing file and a read needed it.
    #[error("the image has a backing file, which was not opened")]
    BackingNotOpened,
    /// A backing file could not be opened or read.
    #[error("backing file {}: {source}", path.display())]
    Backing {
        /// The backing file, resolved against the overlay's directory.
        path: PathBuf,
        /// Why it failed.
        source: Box<Qcow2Error>,
    },
    /// The backing chain comes back to an image already in it.
    #[error("the backing chain loops back to {}", .0.display())]
    BackingLoop(PathBuf),
    /// The image is not one [`Qcow2Update`] may change in place.
    #[error("the image cannot be updated in place: {0}")]
    NotUpdatable(String),
    /// A write of this update failed, so its new clusters may hold the wrong bytes.
    #[error(
        "an earlier write of this update failed; the update cannot go on (the image is unchanged)"
    )]
    UpdateAborted,
    /// The backing chain is longer than [`MAX_BACKING_DEPTH`].
    #[error("the backing chain is deeper than {MAX_BACKING_DEPTH} files")]
    BackingTooDeep,
}

impl Qcow2Error {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Qcow2Error {
        let what = what.into();
        move |source| Qcow2Error::Io { what, source }
    }
}
