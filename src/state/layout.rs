//! Where a project's state lives.
//!
//! Two folders, split by who may see them. The project folder's `.qemu-compose/` holds the
//! data that belongs to the project and moves with it; a folder under the user's state home
//! holds what a guest must never read or write, because the project folder is often shared
//! with the guest whole (`.:/src`):
//!
//! ```text
//! <project>/.qemu-compose/              0700
//!   volumes.json                        the volume registry (paths relative to this folder)
//!   volumes/<name>/volume.qcow2         named volumes
//!   vms/<vm>/disk.qcow2                 instance disks
//!
//! $XDG_STATE_HOME/qemu-compose/projects/<dir>-<hash>/   0700 (default ~/.local/state)
//!   project                             the project folder's path, for people
//!   lock                                held by every command that changes state
//!   ssh/id_ed25519{,.pub}               the project key pair
//!   console-password                    the guest user's console password and salt
//!   vms/<vm>/                           seed, pidfile, QMP and serial sockets, serial log,
//!                                       record, SSH host key and known_hosts
//!   vms/<vm>/file-shares/               one-file folders for file bind mounts (hard links
//!                                       that write the host files)
//! ```
//!
//! The private folder is named by a hash of the project folder's canonical path, so a copied
//! or moved project gets its own (stop the VMs before moving a project). Every name a user can
//! write (a VM, a volume) selects a folder under `vms/` or `volumes/` and nothing else.
//!
//! Earlier versions kept instance folders at `.qemu-compose/<vm>/`, the secrets and the
//! file-share folders in the project folder; [`super::migrate`] moves (or removes) them on
//! the first state-changing command.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::StateError;
use super::atomic::create_private_dir;

/// The name of the state folder inside the project directory.
pub const STATE_DIR_NAME: &str = ".qemu-compose";

/// The state folders of one project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    root: PathBuf,
    private: PathBuf,
}

impl StateDir {
    /// The state of the project in `project_dir`, with its private folder under the user's
    /// state home (`$XDG_STATE_HOME`, else `~/.local/state`); nothing is created.
    pub fn new(project_dir: &Path) -> Self {
        Self::with_private_home(project_dir, &private_home())
    }

    /// As [`StateDir::new`], with private folders under `home` (`<home>/projects/…`).
    pub fn with_private_home(project_dir: &Path, home: &Path) -> Self {
        let digest = Sha256::digest(project_dir.as_os_str().as_encoded_bytes());
        let tag = base16ct::lower::encode_string(&digest[..8]);
        let base = project_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .and_then(|n| crate::compose::normalize_project_name(&n))
            .map(|n| n.chars().take(32).collect::<String>())
            .unwrap_or_else(|| "project".to_string());
        Self {
            root: project_dir.join(STATE_DIR_NAME),
            private: home.join("projects").join(format!("{base}-{tag}")),
        }
    }

    /// The folder in the project.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The project's private folder, outside the project.
    pub fn private(&self) -> &Path {
        &self.private
    }

    /// Whether the project folder exists (as a real folder).
    pub fn exists(&self) -> bool {
        fs::symlink_metadata(&self.root).is_ok_and(|m| m.is_dir())
    }

    /// Creates both folders with mode 0700, refusing a symlink in the place of any folder.
    pub fn ensure(&self) -> Result<(), StateError> {
        create_private_dir(&self.root, 0o700)?;
        if let Some(parent) = self.private.parent() {
            create_private_dir(parent, 0o700)?;
        }
        create_private_dir(&self.private, 0o700)
    }

    /// Writes which project folder the private folder belongs to, once, for people looking
    /// through their state home. Called under the project lock: a temporary file written
    /// outside it could be swept by the lock holder.
    pub fn note_project_dir(&self) -> Result<(), StateError> {
        let note = self.private.join("project");
        if !note.exists() {
            let mut text = self
                .root
                .parent()
                .unwrap_or(&self.root)
                .as_os_str()
                .to_owned();
            text.push("\n");
            super::write_atomic(&note, text.as_encoded_bytes(), 0o600)?;
        }
        Ok(())
    }

    /// The project name the folder's VMs were first made under (`up` writes it).
    pub fn name_file(&self) -> PathBuf {
        self.private.join("name")
    }

    /// The lock file.
    pub fn lock_file(&self) -> PathBuf {
        self.private.join("lock")
    }

    /// The volume registry.
    pub fn volumes_json(&self) -> PathBuf {
        self.root.join("volumes.json")
    }

    /// The network registry.
    pub fn networks_json(&self) -> PathBuf {
        self.root.join("networks.json")
    }

    /// The network switch's folder: its lock (proof of life) and log.
    pub fn switch_dir(&self) -> PathBuf {
        self.private.join("switch")
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
        self.volume_dir(name).join(VOLUME_IMAGE)
    }

    /// The project's SSH key folder.
    pub fn ssh_dir(&self) -> PathBuf {
        self.private.join("ssh")
    }

    /// The project's private SSH key (its public half has `.pub` appended).
    pub fn ssh_key(&self) -> PathBuf {
        self.ssh_dir().join("id_ed25519")
    }

    /// The guest user's console password and its salt.
    pub fn console_password(&self) -> PathBuf {
        self.private.join("console-password")
    }

    /// The instance folder of the VM `vm` in the project (a validated name): its disk.
    pub fn vm_dir(&self, vm: &str) -> PathBuf {
        self.root.join("vms").join(vm)
    }

    /// The private folder of the VM `vm`: everything QEMU and ssh are told to open.
    pub fn vm_private_dir(&self, vm: &str) -> PathBuf {
        self.private.join("vms").join(vm)
    }

    /// The VMs that have an instance here (a folder in either place), whatever the compose
    /// file says now: what finds the instances of VMs removed from the file. Only names a
    /// compose file could give are listed, and symbolic links are skipped.
    pub fn instance_names(&self) -> Result<BTreeSet<String>, StateError> {
        let mut names = BTreeSet::new();
        for parent in [self.root.join("vms"), self.private.join("vms")] {
            let entries = match fs::read_dir(&parent) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StateError::io(&parent, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| StateError::io(&parent, e))?;
                let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
                let name = entry.file_name().to_string_lossy().into_owned();
                if is_dir && name.len() <= 63 && crate::compose::is_valid_name(&name) {
                    names.insert(name);
                }
            }
        }
        Ok(names)
    }

    /// Checks that `path`, which must lie inside one of the two folders, goes through no
    /// symlink, so a planted link cannot make qemu-compose write or delete elsewhere.
    pub fn check_inside(&self, path: &Path) -> Result<(), StateError> {
        let (base, rel) = [&self.root, &self.private]
            .into_iter()
            .find_map(|base| path.strip_prefix(base).ok().map(|rel| (base, rel)))
            .ok_or_else(|| StateError::Unsafe {
                path: path.to_path_buf(),
                reason: format!("is not inside {}", self.root.display()),
            })?;
        refuse_symlink(base)?;
        let mut at = base.clone();
        for part in rel.components() {
            at.push(part);
            refuse_symlink(&at)?;
        }
        Ok(())
    }
}

/// The file name of a named volume's image in its folder.
pub const VOLUME_IMAGE: &str = "volume.qcow2";

/// `$XDG_STATE_HOME/qemu-compose`, else `~/.local/state/qemu-compose`.
fn private_home() -> PathBuf {
    let state_home = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::home_dir().map(|h| h.join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent-home/.local/state"));
    state_home.join("qemu-compose")
}

pub(crate) fn refuse_symlink(path: &Path) -> Result<(), StateError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(StateError::Unsafe {
            path: path.to_path_buf(),
            reason: "is a symbolic link; qemu-compose only uses folders and files it created \
                     itself"
                .to_string(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn state_in(dir: &Path) -> StateDir {
        StateDir::with_private_home(&dir.join("proj"), &dir.join("home"))
    }

    #[test]
    fn ensure_creates_private_folders() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("proj")).unwrap();
        let state = state_in(dir.path());
        assert!(!state.exists());
        state.ensure().unwrap();
        state.note_project_dir().unwrap();
        assert!(state.exists());
        for folder in [state.root(), state.private()] {
            let mode = fs::metadata(folder).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", folder.display());
        }
        let note = fs::read_to_string(state.private().join("project")).unwrap();
        assert_eq!(note.trim_end(), dir.path().join("proj").to_str().unwrap());
    }

    #[test]
    fn no_vm_or_volume_name_reaches_another_folder() {
        let state = StateDir::with_private_home(Path::new("/p"), Path::new("/h"));
        for name in [
            "volumes",
            "ssh",
            "vms",
            "lock",
            "volumes.json",
            "console-password",
        ] {
            let dirs = [state.vm_dir(name), state.vm_private_dir(name)];
            for dir in dirs {
                assert!(
                    dir.starts_with("/p/.qemu-compose/vms")
                        || dir.parent().unwrap().ends_with("vms"),
                    "{}",
                    dir.display()
                );
                assert_ne!(dir, state.volumes_dir());
                assert_ne!(dir, state.ssh_dir());
            }
            assert!(state.volume_dir(name).starts_with(state.volumes_dir()));
        }
    }

    #[test]
    fn private_folders_differ_per_project_path() {
        let home = Path::new("/h");
        let a = StateDir::with_private_home(Path::new("/src/app"), home);
        let b = StateDir::with_private_home(Path::new("/src/copy/app"), home);
        assert_ne!(a.private(), b.private());
        assert!(
            a.private()
                .to_string_lossy()
                .starts_with("/h/projects/app-")
        );
        assert_eq!(a, StateDir::with_private_home(Path::new("/src/app"), home));
    }

    #[test]
    fn symlinked_volume_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("proj")).unwrap();
        let state = state_in(dir.path());
        state.ensure().unwrap();
        fs::create_dir_all(state.volumes_dir()).unwrap();
        std::os::unix::fs::symlink(outside.path(), state.volume_dir("data")).unwrap();
        let err = state.check_inside(&state.volume_image("data")).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        state.check_inside(&state.volume_image("other")).unwrap();
        state.check_inside(&state.vm_private_dir("db")).unwrap();
    }

    #[test]
    fn symlinked_state_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("proj")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("proj").join(STATE_DIR_NAME))
            .unwrap();
        assert!(state_in(dir.path()).ensure().is_err());
    }
}
