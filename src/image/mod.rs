//! The image cache: base images downloaded once per URL and shared by every project.
//!
//! Format detection of a cached or local image belongs to `disk::qcow2`.

pub mod cache;
pub mod download;
pub mod progress;

use std::path::PathBuf;

pub use cache::{CachedImage, ImageCache, ImageMeta};
pub use download::{ProxyEnv, Sha256Digest};
pub use progress::{Progress, for_stderr};

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
}
