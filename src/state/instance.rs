//! One VM instance's folder, `.qemu-compose/<vm>/`, and the record of how it was started.
//!
//! Unix socket paths are limited to 107 bytes by the kernel (`sun_path` is 108 bytes with the
//! NUL). A project deep in the file system would make QEMU fail with a confusing message, so
//! when a socket path would be too long the sockets move to a short per-project folder under
//! `$XDG_RUNTIME_DIR/qemu-compose/` (or `/tmp/qemu-compose-<uid>/`), named by a hash of the
//! state folder.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{StateDir, StateError, write_atomic};

/// The longest socket path the kernel accepts (`sizeof(sun_path) - 1`).
pub const MAX_SOCKET_PATH: usize = 107;

/// The files of one VM instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstancePaths {
    /// The instance folder.
    pub dir: PathBuf,
    /// The copy-on-write instance disk.
    pub disk: PathBuf,
    /// The cloud-init seed image.
    pub seed: PathBuf,
    /// QEMU's pidfile.
    pub pidfile: PathBuf,
    /// The serial console log (QEMU appends to it).
    pub serial_log: PathBuf,
    /// The record of the running instance.
    pub record: PathBuf,
    /// The known_hosts file for this VM's host key.
    pub known_hosts: PathBuf,
    /// Folders that hold a single bind-mounted file each (see the mount plan).
    pub file_shares: PathBuf,
    /// The QMP socket.
    pub qmp_socket: PathBuf,
    /// The serial console socket.
    pub serial_socket: PathBuf,
}

impl InstancePaths {
    /// The paths of VM `vm`. `runtime_dir` is `$XDG_RUNTIME_DIR` if set.
    pub fn new(state: &StateDir, vm: &str, runtime_dir: Option<&Path>) -> Self {
        let dir = state.vm_dir(vm);
        let socket_dir = socket_dir(state, vm, &dir, runtime_dir);
        Self {
            disk: dir.join("disk.qcow2"),
            seed: dir.join("seed.img"),
            pidfile: dir.join("qemu.pid"),
            serial_log: dir.join("serial.log"),
            record: dir.join("instance.json"),
            known_hosts: dir.join("known_hosts"),
            file_shares: dir.join("file-shares"),
            qmp_socket: socket_dir.join("qmp.sock"),
            serial_socket: socket_dir.join("serial.sock"),
            dir,
        }
    }

    /// Whether the sockets live outside the instance folder (a long project path).
    pub fn sockets_relocated(&self) -> bool {
        !self.qmp_socket.starts_with(&self.dir)
    }
}

fn socket_dir(state: &StateDir, vm: &str, vm_dir: &Path, runtime_dir: Option<&Path>) -> PathBuf {
    // "serial.sock" is the longer of the two names.
    if vm_dir.join("serial.sock").as_os_str().len() <= MAX_SOCKET_PATH {
        return vm_dir.to_path_buf();
    }
    let digest = Sha256::digest(state.root().as_os_str().as_encoded_bytes());
    let tag: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    let base = match runtime_dir {
        Some(dir) => dir.join("qemu-compose"),
        None => PathBuf::from(format!(
            "/tmp/qemu-compose-{}",
            rustix::process::getuid().as_raw()
        )),
    };
    base.join(tag).join(vm)
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
        match fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| StateError::Corrupt {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StateError::io(path, e)),
        }
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
        let state = StateDir::new(Path::new("/home/me/proj"));
        let paths = InstancePaths::new(&state, "db", None);
        assert_eq!(
            paths.qmp_socket,
            Path::new("/home/me/proj/.qemu-compose/db/qmp.sock")
        );
        assert!(!paths.sockets_relocated());
    }

    #[test]
    fn long_project_paths_move_sockets_under_the_runtime_dir() {
        let deep = format!("/home/me/{}", "very-long-folder-name/".repeat(5));
        let state = StateDir::new(Path::new(&deep));
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
