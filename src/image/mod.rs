//! The image cache: base images downloaded once per URL and content, shared by every project.
//!
//! Format detection of a cached or local image belongs to `disk::qcow2`. The cache layout and
//! why a cached image never changes under an instance disk are described in [`cache`].

pub mod cache;
pub mod download;

use std::path::PathBuf;

pub use crate::progress::Progress;
pub use cache::{
    CachedImage, ImageCache, ImageMeta, check_self_contained, hash_file, is_cached_image,
    overlay_base, record_overlay,
};
pub use download::{ProxyEnv, Sha256Digest};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "cannot locate the image cache: neither XDG_DATA_HOME nor HOME is set to an absolute path"
    )]
    NoHome,
    #[error("cannot download {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("invalid proxy {proxy:?}: {reason}")]
    BadProxy { proxy: String, reason: String },
    #[error("download of {url} failed: {source}")]
    Http {
        url: String,
        source: Box<ureq::Error>,
    },
    #[error("download of {url} failed: the server answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("download of {url} was interrupted after {size} bytes: {source}")]
    Interrupted {
        url: String,
        size: u64,
        source: std::io::Error,
    },
    #[error("cannot write the download to the image cache: {source}")]
    Write { source: std::io::Error },
    #[error("checksum mismatch for {url}: expected {expected}, downloaded {actual}")]
    ChecksumMismatch {
        url: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("{path:?}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no cached image named {name:?}")]
    NotFound { name: String },
    #[error("refusing the image downloaded from {url}: {field}")]
    NotSelfContained { url: String, field: String },
    #[error(
        "download of {url} refused: it was redirected to {to}, a plain http:// address; an https:// download may only be redirected to https://"
    )]
    InsecureRedirect { url: String, to: String },
    #[error(
        "image {name} is the base of the instance disk(s) {}; `qemu-compose destroy` their VMs first, or use --force (those VMs will not start again)",
        .users.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    InUse { name: String, users: Vec<PathBuf> },
}
