//! Plan and apply: from the validated model to volumes, seeds, overlays and running VMs.
//!
//! Nothing here prints: progress and warnings go through a [`Reporter`] the CLI provides.

pub mod mounts;
pub mod volumes;

/// Where the engine tells the user what it does.
pub trait Reporter {
    /// A step being taken ("creating volume data (10G)").
    fn info(&self, message: &str);
    /// Something the user should know but that does not stop the command.
    fn warn(&self, message: &str);
}
