//! The project state folder `.qemu-compose/`: its layout, the project lock, atomic writes and
//! the volume registry (`volumes.json`).
//!
//! Everything that changes state goes through [`atomic::write_atomic`] under a
//! [`lock::ProjectLock`], so a crash or a concurrent command never leaves a half-written file.

pub mod atomic;
pub mod instance;
pub mod layout;
pub mod lock;
pub mod migrate;
pub mod networks;
pub mod secrets;
pub mod volumes;

use std::io;
use std::path::PathBuf;

pub use atomic::write_atomic;
pub use instance::{InstancePaths, InstanceRecord};
pub use layout::StateDir;
pub use lock::ProjectLock;
pub use networks::NetworkRegistry;
pub use secrets::ProjectSecrets;
pub use volumes::{VolumeRecord, VolumeRegistry};

/// Something went wrong with a file of the state folder.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O error on a named path.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder involved.
        path: PathBuf,
        /// What the system said.
        #[source]
        source: io::Error,
    },
    /// A state file exists but cannot be understood; it is never overwritten silently.
    #[error(
        "{path} is corrupt ({reason}); fix or remove it by hand, qemu-compose will not overwrite it"
    )]
    Corrupt {
        /// The corrupt file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A path inside the state folder is not what qemu-compose made (e.g. a symlink).
    #[error("{path}: {reason}")]
    Unsafe {
        /// The offending path.
        path: PathBuf,
        /// Why it is refused.
        reason: String,
    },
}

impl StateError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}
