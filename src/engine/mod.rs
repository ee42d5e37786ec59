//! Plan and apply: from the validated model to volumes, seeds, overlays and running VMs.
//!
//! The order of `up` is: check everything that can be checked without changing anything
//! (bind sources, local images, kernels, networks), then create what is missing (image
//! downloads, volumes, instance disks, seeds), then start QEMU in dependency order. Nothing
//! here prints: progress and warnings go through a [`Reporter`] the CLI provides.

pub mod doctor;
pub mod health;
pub mod host;
pub mod images;
pub mod inspect;
pub mod instance;
pub mod kubevirt;
pub mod lifecycle;
pub mod mounts;
pub mod network;
pub mod run;
pub mod ssh;
pub mod status;
mod to_qemu;
pub mod verbs;
pub mod volume_export;
pub mod volume_io;
pub mod volume_update;
pub mod volumes;
pub mod workspace;

use std::path::PathBuf;

pub use host::HostEnv;
pub use lifecycle::running_vms;
pub use lifecycle::{DestroyOptions, StopOptions, UpOptions, destroy, stop, up};
pub use status::VmStatus;
pub use workspace::{RunningVm, SshTarget, Workspace};

/// How a download (`up`, `pull`) reports its progress, and a plain-lines reporter.
pub use crate::progress::{LineProgress, Progress};
/// How a console session ended ([`RunningVm::attach_console`]).
pub use crate::qemu::console::ConsoleEnd;
/// A state file problem, the cause of [`EngineError::State`].
pub use crate::state::StateError;

/// Where the engine tells the user what it does. `Sync`: VMs are stopped in parallel.
pub trait Reporter: Sync {
    /// A step being taken ("creating volume data (10G)").
    fn info(&self, message: &str);
    /// Something the user should know but that does not stop the command.
    fn warn(&self, message: &str);
    /// What `--debug` adds: the commands run and how long steps took.
    fn detail(&self, _message: &str) {}
}

/// Why a command could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A VM name on the command line is not in the compose file.
    #[error("no VM named {name:?} in the compose file (VMs: {known})")]
    UnknownVm {
        /// The name given.
        name: String,
        /// The names there are.
        known: String,
    },
    /// Something the compose file asks for that this version cannot do yet.
    #[error("VM {vm}: {what}")]
    Unsupported {
        /// The VM.
        vm: String,
        /// What cannot be done.
        what: String,
    },
    /// A file the VM needs is missing.
    #[error("VM {vm}: {what} {} does not exist", .path.display())]
    MissingFile {
        /// The VM.
        vm: String,
        /// Which file ("image", "kernel", "initrd").
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A request that cannot be carried out as things are, with what to do about it.
    #[error("{0}")]
    Refused(String),
    /// An image of the cache is the base of instance disks, and removing it was not forced.
    #[error(
        "image {name} is the base of the instance disk of VM(s) {}; `qemu-compose destroy {}` first, or use --force (those VMs will not start again)",
        .vms.join(", "),
        .vms.join(" ")
    )]
    ImageInUse {
        /// The image.
        name: String,
        /// The VMs.
        vms: Vec<String>,
    },
    /// A step of a VM failed; the cause is kept for `--debug`'s chain.
    #[error("VM {vm}")]
    Vm {
        /// The VM.
        vm: String,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The mount plan could not be made.
    #[error(transparent)]
    Plan(#[from] mounts::PlanError),
    /// A volume could not be made or used.
    #[error(transparent)]
    Volume(#[from] volumes::VolumeError),
    /// The project networks could not be laid out or joined.
    #[error(transparent)]
    Network(#[from] network::NetworkError),
    /// A state file problem.
    #[error(transparent)]
    State(#[from] StateError),
    /// The image cache failed.
    #[error(transparent)]
    Image(#[from] crate::image::ImageError),
    /// QEMU could not be found.
    #[error(transparent)]
    FindQemu(#[from] crate::qemu::process::FindError),
}

/// What a VM's step was doing (`image /path`, `cannot run ssh`), with the error that stopped it
/// kept as the source rather than flattened into the text.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct StepError {
    what: String,
    #[source]
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl EngineError {
    /// A failed step of VM `vm`, caused by `source` (an error, or a message).
    pub(crate) fn vm(
        vm: &str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Vm {
            vm: vm.to_string(),
            source: source.into(),
        }
    }

    /// A failed step of VM `vm`: `what` names the step or its file, `source` is why; the
    /// one-line message reads `VM vm: what: source` and `--debug` shows `source`'s own chain.
    pub(crate) fn vm_step(
        vm: &str,
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::vm(
            vm,
            StepError {
                what: what.into(),
                source: source.into(),
            },
        )
    }

    /// The process exit status this error calls for: 2 when the command line asked for
    /// something invalid, 1 when a valid request failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::UnknownVm { .. } => 2,
            Self::Volume(e) => e.exit_code(),
            _ => 1,
        }
    }
}
