//! Where things live under the project's `.qemu-compose/` folder.
//!
//! ```text
//! .qemu-compose/                 0700: its sockets give full control of the VMs
//!   lock                         held by every command that changes state
//!   volumes.json                 the volume registry
//!   volumes/<name>/volume.qcow2  named volumes
//!   ssh/id_ed25519{,.pub}        the project key pair
//!   <vm>/                        one folder per VM instance (disk, seed, sockets, log, record)
//! ```

use std::fs;
use std::path::{Path, PathBuf};

use super::StateError;
use super::atomic::create_private_dir;

/// The name of the state folder inside the project directory.
pub const STATE_DIR_NAME: &str = ".qemu-compose";

/// The state folder of one project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The state folder of the project in `project_dir`; nothing is created.
    pub fn new(project_dir: &Path) -> Self {
        Self {
            root: project_dir.join(STATE_DIR_NAME),
        }
    }

    /// The folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the folder exists (as a real folder).
    pub fn exists(&self) -> bool {
        fs::symlink_metadata(&self.root).is_ok_and(|m| m.is_dir())
    }

    /// Creates the folder with mode 0700, refusing a symlink in its place.
    pub fn ensure(&self) -> Result<(), StateError> {
        refuse_symlink(&self.root)?;
        create_private_dir(&self.root, 0o700)
    }

    /// The lock file.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// The volume registry.
    pub fn volumes_json(&self) -> PathBuf {
        self.root.join("volumes.json")
    }

    /// The parent of every named volume's folder.
    pub fn volumes_dir(&self) -> PathBuf {
        self.root.join("volumes")
    }

    /// The folder of the named volume `name` (a validated name).
    pub fn volume_dir(&self, name: &str) -> PathBuf {
        self.volumes_dir().join(name)
    }

    /// The image of the named volume `name`.
    pub fn volume_image(&self, name: &str) -> PathBuf {
        self.volume_dir(name).join("volume.qcow2")
    }

    /// The project's SSH key folder.
    pub fn ssh_dir(&self) -> PathBuf {
        self.root.join("ssh")
    }

    /// The project's private SSH key (its public half has `.pub` appended).
    pub fn ssh_key(&self) -> PathBuf {
        self.ssh_dir().join("id_ed25519")
    }

    /// The instance folder of the VM `vm` (a validated name).
    pub fn vm_dir(&self, vm: &str) -> PathBuf {
        self.root.join(vm)
    }

    /// Checks that `path`, which must lie inside this folder, goes through no symlink, so a
    /// planted link cannot make qemu-compose write or delete outside the project.
    pub fn check_inside(&self, path: &Path) -> Result<(), StateError> {
        let rel = path
            .strip_prefix(&self.root)
            .map_err(|_| StateError::Unsafe {
                path: path.to_path_buf(),
                reason: format!("is not inside {}", self.root.display()),
            })?;
        refuse_symlink(&self.root)?;
        let mut at = self.root.clone();
        for part in rel.components() {
            at.push(part);
            refuse_symlink(&at)?;
        }
        Ok(())
    }
}

fn refuse_symlink(path: &Path) -> Result<(), StateError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(StateError::Unsafe {
            path: path.to_path_buf(),
            reason: "is a symbolic link; qemu-compose only uses folders it created itself"
                .to_string(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn ensure_creates_a_private_folder() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        assert!(!state.exists());
        state.ensure().unwrap();
        assert!(state.exists());
        let mode = fs::metadata(state.root()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn symlinked_volume_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        state.ensure().unwrap();
        fs::create_dir_all(state.volumes_dir()).unwrap();
        std::os::unix::fs::symlink(outside.path(), state.volume_dir("data")).unwrap();
        let err = state.check_inside(&state.volume_image("data")).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        state.check_inside(&state.volume_image("other")).unwrap();
    }

    #[test]
    fn symlinked_state_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join(STATE_DIR_NAME)).unwrap();
        assert!(StateDir::new(dir.path()).ensure().is_err());
    }
}
