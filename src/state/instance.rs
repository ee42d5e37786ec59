//! One VM instance's files: its disk in the project's `.qemu-compose/vms/<vm>/`, everything
//! else in the project's private folder (see [`super::layout`]), and the record of how it was
//! started.
//!
//! Unix socket paths are limited to 107 bytes by the kernel (`sun_path` is 108 bytes with the
//! NUL; [`MAX_SOCKET_PATH`]). When a socket path would be too long the sockets move to a short per-project folder
//! under `$XDG_RUNTIME_DIR/qemu-compose/` (or `/tmp/qemu-compose-<uid>/`), named by a hash of
//! the state folder. The `/tmp` name is predictable, so another local user may have made it
//! first: [`InstancePaths::ensure_socket_dir`] creates it with mode 0700 and
//! [`InstancePaths::check_socket_dir`] checks (without following links) that it is ours and
//! private every time before a socket in it is used or anything in it removed.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{StateDir, StateError, write_atomic};
use crate::qemu::argv::MAX_SOCKET_PATH;

/// The files of one VM instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstancePaths {
    /// The instance folder in the project (the disk).
    pub dir: PathBuf,
    /// The instance's private folder (everything else).
    pub private_dir: PathBuf,
    /// The copy-on-write instance disk.
    pub disk: PathBuf,
    /// The cloud-init seed image.
    pub seed: PathBuf,
    /// The UEFI variable store of an aarch64 VM booting its image (made at create time).
    pub efi_vars: PathBuf,
    /// QEMU's pidfile.
    pub pidfile: PathBuf,
    /// The serial console log (QEMU appends to it).
    pub serial_log: PathBuf,
    /// The record of the running instance.
    pub record: PathBuf,
    /// Written once the instance answered an SSH login, holding the record's `started`: the
    /// QEMU run that is known ready (see [`crate::engine::status`]).
    pub ready: PathBuf,
    /// The guest's SSH host key, made on the host (see [`super::secrets::InstanceHostKey`]).
    pub host_key: PathBuf,
    /// The known_hosts file that pins it.
    pub known_hosts: PathBuf,
    /// Folders that hold a single bind-mounted file each (see the mount plan). Private: a hard
    /// link there writes the host file, so no guest may reach it through a project share.
    pub file_shares: PathBuf,
    /// The folder of the guest's `/etc/hosts` on project networks (shared read-only).
    pub hosts: PathBuf,
    /// The QMP socket.
    pub qmp_socket: PathBuf,
    /// The serial console socket.
    pub serial_socket: PathBuf,
    #[serde(skip)]
    sockets: SocketDir,
}

/// A folder of unix sockets: in the private folder, or, when a socket path would be too
/// long there, in a short per-project folder under the runtime folder (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketDir {
    dir: PathBuf,
    /// The per-user folder the sockets moved to when their path was too long.
    base: Option<PathBuf>,
}

impl InstancePaths {
    /// The paths of VM `vm`. `runtime_dir` is `$XDG_RUNTIME_DIR` if set.
    pub fn new(state: &StateDir, vm: &str, runtime_dir: Option<&Path>) -> Self {
        let dir = state.vm_dir(vm);
        let private_dir = state.vm_private_dir(vm);
        // "serial.sock" is the longer of the two names.
        let sockets = SocketDir::new(state, vm, &private_dir, "serial.sock", runtime_dir);
        let socket_dir = sockets.path().to_path_buf();
        Self {
            disk: dir.join("disk.qcow2"),
            file_shares: private_dir.join("file-shares"),
            seed: private_dir.join("seed.img"),
            efi_vars: private_dir.join("efi-vars.fd"),
            pidfile: private_dir.join("qemu.pid"),
            serial_log: private_dir.join("serial.log"),
            record: private_dir.join("instance.json"),
            ready: private_dir.join("ready"),
            host_key: private_dir.join("ssh_host_ed25519_key"),
            known_hosts: private_dir.join("known_hosts"),
            hosts: private_dir.join("hosts"),
            qmp_socket: socket_dir.join("qmp.sock"),
            serial_socket: socket_dir.join("serial.sock"),
            sockets,
            dir,
            private_dir,
        }
    }

    /// Whether the sockets live outside the private folder (a long path).
    pub fn sockets_relocated(&self) -> bool {
        self.sockets.relocated()
    }

    /// The folder that holds the sockets.
    pub fn socket_dir(&self) -> &Path {
        self.sockets.path()
    }

    /// See [`SocketDir::ensure`].
    pub fn ensure_socket_dir(&self) -> Result<(), StateError> {
        self.sockets.ensure()
    }

    /// See [`SocketDir::check`].
    pub fn check_socket_dir(&self) -> Result<(), StateError> {
        self.sockets.check()
    }
}

impl SocketDir {
    /// The socket folder of `leaf` (a VM, or `.net` for the network switch): `private_dir`
    /// itself when `longest_name` fits there, else `<runtime>/qemu-compose/<hash>/<leaf>`.
    pub fn new(
        state: &StateDir,
        leaf: &str,
        private_dir: &Path,
        longest_name: &str,
        runtime_dir: Option<&Path>,
    ) -> Self {
        if private_dir.join(longest_name).as_os_str().len() <= MAX_SOCKET_PATH {
            return Self {
                dir: private_dir.to_path_buf(),
                base: None,
            };
        }
        let digest = Sha256::digest(state.root().as_os_str().as_encoded_bytes());
        let tag = base16ct::lower::encode_string(&digest[..6]);
        let base = match runtime_dir {
            Some(dir) => dir.join("qemu-compose"),
            None => PathBuf::from(format!(
                "/tmp/qemu-compose-{}",
                rustix::process::geteuid().as_raw()
            )),
        };
        Self {
            dir: base.join(tag).join(leaf),
            base: Some(base),
        }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Whether the folder is outside the private folder (a long path).
    pub fn relocated(&self) -> bool {
        self.base.is_some()
    }

    /// Creates the folder (mode 0700, each level made by us or checked).
    pub fn ensure(&self) -> Result<(), StateError> {
        let Some(base) = &self.base else {
            return super::atomic::create_private_dir(&self.dir, 0o700);
        };
        if let Some(parent) = base.parent()
            && parent != Path::new("/tmp")
        {
            fs::create_dir_all(parent).map_err(|e| StateError::io(parent, e))?;
        }
        let mut at = base.clone();
        mkdir_private(&at)?;
        check_private_dir(&at)?;
        let rel = self.dir.strip_prefix(base).unwrap_or(Path::new(""));
        for part in rel.components() {
            at.push(part);
            mkdir_private(&at)?;
            check_private_dir(&at)?;
        }
        Ok(())
    }

    /// Checks a relocated folder before a socket in it is trusted or anything in it
    /// removed: every level must be a real folder (no symlink), owned by us, with no access
    /// for others. Nothing to check when the sockets are in the private folder.
    pub fn check(&self) -> Result<(), StateError> {
        let Some(base) = &self.base else {
            return Ok(());
        };
        let mut at = base.clone();
        check_private_dir_if_present(&at)?;
        let rel = self.dir.strip_prefix(base).unwrap_or(Path::new(""));
        for part in rel.components() {
            at.push(part);
            check_private_dir_if_present(&at)?;
        }
        Ok(())
    }
}

/// `mkdir` with mode 0700; an existing entry is left for [`check_private_dir`] to judge.
fn mkdir_private(dir: &Path) -> Result<(), StateError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StateError::io(dir, e)),
    }
}

fn check_private_dir_if_present(dir: &Path) -> Result<(), StateError> {
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        _ => check_private_dir(dir),
    }
}

/// A folder we may trust with sockets: a real folder, ours, closed to everybody else.
fn check_private_dir(dir: &Path) -> Result<(), StateError> {
    let meta = fs::symlink_metadata(dir).map_err(|e| StateError::io(dir, e))?;
    let unsafe_because = |reason: String| StateError::Unsafe {
        path: dir.to_path_buf(),
        reason: format!(
            "{reason}; qemu-compose keeps VM sockets there and will not use it (another user may have made it; remove it or set XDG_RUNTIME_DIR)"
        ),
    };
    if meta.file_type().is_symlink() {
        return Err(unsafe_because("is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(unsafe_because("is not a folder".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if meta.uid() != me {
        return Err(unsafe_because(format!(
            "belongs to uid {}, not to you (uid {me})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(unsafe_because(format!(
            "has mode {:o}, open to other users",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// What `up` recorded about a started instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceRecord {
    /// The VM name.
    pub vm: String,
    /// The host port forwarded to the guest's port 22.
    pub ssh_port: u16,
    /// The NIC's MAC address.
    pub mac: String,
    /// A hash of everything that shapes the VM; a different hash means "recreate to apply".
    pub config_hash: String,
    /// The seed's instance-id.
    pub instance_id: String,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// QEMU's arguments, after the binary.
    pub argv: Vec<String>,
    /// When QEMU was started, RFC 3339.
    pub started: String,
}

impl InstanceRecord {
    /// Reads a record; `None` when the VM was never started.
    pub fn load(path: &Path) -> Result<Option<Self>, StateError> {
        let Some(text) = super::atomic::read_optional(path)? else {
            return Ok(None);
        };
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
    }

    /// Writes the record atomically.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        let mut json = serde_json::to_vec_pretty(self).expect("records serialise");
        json.push(b'\n');
        write_atomic(path, &json, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_project_paths_keep_sockets_in_the_instance_folder() {
        let state = StateDir::with_private_home(Path::new("/home/me/proj"), Path::new("/h"));
        let paths = InstancePaths::new(&state, "db", None);
        assert_eq!(
            paths.disk,
            Path::new("/home/me/proj/.qemu-compose/vms/db/disk.qcow2")
        );
        assert!(
            paths
                .qmp_socket
                .to_string_lossy()
                .starts_with("/h/projects/proj-")
        );
        assert!(paths.qmp_socket.ends_with("vms/db/qmp.sock"));
        assert!(paths.seed.starts_with(state.private()));
        assert!(paths.pidfile.starts_with(state.private()));
        assert!(paths.serial_log.starts_with(state.private()));
        // A file share's hard link writes the host file: never in the project, which a
        // guest may have whole (`.:/src`).
        assert!(paths.file_shares.starts_with(state.private()));
        assert!(!paths.file_shares.starts_with(state.root()));
        assert!(!paths.sockets_relocated());
    }

    #[test]
    fn long_project_paths_move_sockets_under_the_runtime_dir() {
        let deep = format!("/home/me/{}", "very-long-folder-name/".repeat(5));
        let state = StateDir::with_private_home(Path::new(&deep), Path::new(&deep));
        let paths = InstancePaths::new(&state, "db", Some(Path::new("/run/user/1000")));
        assert!(paths.sockets_relocated());
        assert!(paths.qmp_socket.starts_with("/run/user/1000/qemu-compose/"));
        assert!(paths.serial_socket.as_os_str().len() <= MAX_SOCKET_PATH);
        // Stable: the same project always gets the same folder.
        let again = InstancePaths::new(&state, "db", Some(Path::new("/run/user/1000")));
        assert_eq!(paths, again);
        let without_runtime = InstancePaths::new(&state, "db", None);
        assert!(
            without_runtime
                .qmp_socket
                .to_string_lossy()
                .starts_with("/tmp/qemu-compose-")
        );
    }

    fn relocated(runtime: &Path) -> InstancePaths {
        let deep = format!("/home/me/{}", "very-long-folder-name/".repeat(5));
        let state = StateDir::with_private_home(Path::new(&deep), Path::new(&deep));
        let paths = InstancePaths::new(&state, "db", Some(runtime));
        assert!(paths.sockets_relocated());
        paths
    }

    #[test]
    fn the_socket_folder_is_made_private() {
        let run = tempfile::tempdir().unwrap();
        let paths = relocated(run.path());
        paths.check_socket_dir().unwrap();
        paths.ensure_socket_dir().unwrap();
        paths.check_socket_dir().unwrap();
        let mode = fs::metadata(paths.socket_dir()).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_planted_socket_folder_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let run = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        let paths = relocated(run.path());
        // A symlink where our folder should be.
        std::os::unix::fs::symlink(victim.path(), run.path().join("qemu-compose")).unwrap();
        let err = paths.ensure_socket_dir().unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(paths.check_socket_dir().is_err());
        assert_eq!(fs::read_dir(victim.path()).unwrap().count(), 0);
        // A folder open to others.
        fs::remove_file(run.path().join("qemu-compose")).unwrap();
        fs::create_dir(run.path().join("qemu-compose")).unwrap();
        fs::set_permissions(
            run.path().join("qemu-compose"),
            fs::Permissions::from_mode(0o777),
        )
        .unwrap();
        let err = paths.ensure_socket_dir().unwrap_err().to_string();
        assert!(err.contains("open to other users"), "{err}");
    }

    #[test]
    fn record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("instance.json");
        assert_eq!(InstanceRecord::load(&path).unwrap(), None);
        let record = InstanceRecord {
            vm: "db".into(),
            ssh_port: 2222,
            mac: "52:54:00:12:34:56".into(),
            config_hash: "abc".into(),
            instance_id: "iid-0123".into(),
            qemu: "/usr/bin/qemu-system-x86_64".into(),
            argv: vec!["-nodefaults".into()],
            started: "2026-11-29T08:00:00Z".into(),
        };
        record.save(&path).unwrap();
        assert_eq!(InstanceRecord::load(&path).unwrap(), Some(record));
    }
}
