//! Atomic file replacement: write a temporary file in the same folder, sync it, rename it over
//! the target, then sync the folder, so readers see the old or the new content, never a mix.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::StateError;

/// Replaces `path` with `contents`, atomically, with the given Unix permission bits.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), StateError> {
    let dir = parent_dir(path);
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| StateError::io(dir, e))?;
    let io = |e| StateError::io(path, e);
    tmp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(io)?;
    tmp.write_all(contents).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    sync_dir(dir)
}

/// Makes a rename or a new entry in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StateError::io(dir, e))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Creates `dir` (and its parents) and gives it the mode `mode`. A symlink in the place of
/// `dir` is refused rather than followed, so a planted link cannot redirect the chmod.
pub fn create_private_dir(dir: &Path, mode: u32) -> Result<(), StateError> {
    fs::create_dir_all(dir).map_err(|e| StateError::io(dir, e))?;
    super::layout::refuse_symlink(dir)?;
    refuse_foreign(dir)?;
    fs::set_permissions(dir, Permissions::from_mode(mode)).map_err(|e| StateError::io(dir, e))
}

/// Refuses a state folder another user owns, naming them: their VMs are theirs, and what
/// the system would say ("Operation not permitted") does not tell whose it is. Root may
/// work in any user's project.
pub fn refuse_foreign(dir: &Path) -> Result<(), StateError> {
    refuse_foreign_to(dir, rustix::process::geteuid().as_raw())
}

/// [`refuse_foreign`] for the user `me`.
fn refuse_foreign_to(dir: &Path, me: u32) -> Result<(), StateError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs::symlink_metadata(dir) else {
        return Ok(());
    };
    if me == 0 || meta.uid() == me {
        return Ok(());
    }
    Err(StateError::Unsafe {
        path: dir.to_path_buf(),
        reason: format!(
            "belongs to {}, not to you; each user's VMs are their own: run the command as that user, or work on your own copy of the project",
            user_name(meta.uid())
        ),
    })
}

/// `user NAME (uid N)` from /etc/passwd, or `uid N` when it is not there.
fn user_name(uid: u32) -> String {
    let name = fs::read_to_string("/etc/passwd").ok().and_then(|passwd| {
        passwd.lines().find_map(|line| {
            let mut fields = line.split(':');
            let name = fields.next()?;
            (fields.nth(1)? == uid.to_string()).then(|| name.to_string())
        })
    });
    match name {
        Some(name) => format!("user {name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// Opens `path` for reading without following a symlink in its last component: a state file
/// replaced by a link (say, by a guest writing through a share of the project folder) is an
/// error, never a way to make qemu-compose read another file.
pub fn open_nofollow(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// Reads a state file as text without following a symlink; `None` when it does not exist.
pub fn read_optional(path: &Path) -> Result<Option<String>, StateError> {
    let mut text = String::new();
    match open_nofollow(path) {
        Ok(mut file) => {
            file.read_to_string(&mut text)
                .map_err(|e| StateError::io(path, e))?;
            Ok(Some(text))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            Err(StateError::Unsafe {
                path: path.to_path_buf(),
                reason: "is a symbolic link; qemu-compose only reads files it wrote itself"
                    .to_string(),
            })
        }
        Err(e) => Err(StateError::io(path, e)),
    }
}

/// Whether `name` is one of the temporary files qemu-compose writes before renaming them into
/// place: atomic replacements (`.tmp-*`), instance disks (`.disk-*.tmp`) and volume images
/// (`.volume-*.tmp`).
pub fn is_temporary_name(name: &str) -> bool {
    name.starts_with(".tmp-")
        || ((name.starts_with(".disk-") || name.starts_with(".volume-")) && name.ends_with(".tmp"))
}

/// Removes the temporary files that an interrupted command left in the state folder `root`
/// and returns their paths. Call it only under the project lock: every command that writes
/// state holds that lock, so a temporary file found while holding it belongs to no running
/// command. Looks at the files of `root`, of its folders and of `volumes/<name>/` and
/// `vms/<name>/` (the same shape in the project's and the private folder); never follows a symbolic link and never looks inside `file-shares/`,
/// whose files are the user's.
pub fn sweep_temporaries(root: &Path) -> Result<Vec<PathBuf>, StateError> {
    let mut removed = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    for entry in read_dir_if_present(root)? {
        if entry.1.is_dir() {
            folders.push(entry.0.clone());
        }
    }
    for parent in ["volumes", "vms"] {
        for (sub, kind) in read_dir_if_present(&root.join(parent))? {
            if kind.is_dir() {
                folders.push(sub);
            }
        }
    }
    for folder in folders {
        for (path, kind) in read_dir_if_present(&folder)? {
            let temporary = path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_temporary_name);
            if temporary && kind.is_file() {
                match fs::remove_file(&path) {
                    Ok(()) => removed.push(path),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(StateError::io(&path, e)),
                }
            }
        }
    }
    Ok(removed)
}

/// The entries of `dir` with their types (not following symbolic links); none when `dir` is
/// missing.
fn read_dir_if_present(dir: &Path) -> Result<Vec<(PathBuf, fs::FileType)>, StateError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StateError::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| StateError::io(dir, e))?;
        let kind = entry
            .file_type()
            .map_err(|e| StateError::io(entry.path(), e))?;
        out.push((entry.path(), kind));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_removes_only_temporaries_and_skips_file_shares() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let files = [
            ".tmp-abc",
            "volumes.json",
            "app/.disk-x1.tmp",
            "app/.tmp-seed",
            "app/disk.qcow2",
            "app/file-shares/mount0/.tmp-user-file",
            "ssh/.tmp-key",
            "volumes/data/.volume-q.tmp",
            "volumes/data/volume.qcow2",
            "vms/web/.disk-y.tmp",
            "vms/web/.tmp-efi-vars-z",
            "vms/web/efi-vars.fd",
            "vms/web/file-shares/mount1/.tmp-user-file",
        ];
        for f in files {
            let path = root.join(f);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, b"x").unwrap();
        }
        let mut removed: Vec<String> = sweep_temporaries(root)
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(root).unwrap().display().to_string())
            .collect();
        removed.sort();
        assert_eq!(
            removed,
            [
                ".tmp-abc",
                "app/.disk-x1.tmp",
                "app/.tmp-seed",
                "ssh/.tmp-key",
                "vms/web/.disk-y.tmp",
                "vms/web/.tmp-efi-vars-z",
                "volumes/data/.volume-q.tmp"
            ]
        );
        for kept in [
            "volumes.json",
            "app/disk.qcow2",
            "app/file-shares/mount0/.tmp-user-file",
            "volumes/data/volume.qcow2",
            "vms/web/efi-vars.fd",
            "vms/web/file-shares/mount1/.tmp-user-file",
        ] {
            assert!(root.join(kept).exists(), "{kept}");
        }
        assert!(sweep_temporaries(&root.join("missing")).unwrap().is_empty());
    }

    #[test]
    fn replaces_content_and_sets_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomic(&path, b"one", 0o600).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn another_users_folder_is_refused_with_their_name() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let owner = fs::metadata(dir.path()).unwrap().uid();
        let stranger = owner + 4242;
        let err = refuse_foreign_to(dir.path(), stranger)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("(uid {owner}), not to you")), "{err}");
        assert!(err.contains(&*dir.path().to_string_lossy()), "{err}");
        if owner == 0 {
            assert!(err.contains("belongs to user root (uid 0)"), "{err}");
        }
        assert!(refuse_foreign_to(dir.path(), owner).is_ok());
        assert!(
            refuse_foreign_to(dir.path(), 0).is_ok(),
            "root may work anywhere"
        );
    }

    #[test]
    fn a_symlinked_state_file_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        fs::write(&secret, "host secret").unwrap();
        let path = dir.path().join("volumes.json");
        std::os::unix::fs::symlink(&secret, &path).unwrap();
        let err = read_optional(&path).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(read_optional(&dir.path().join("none")).unwrap(), None);
        assert_eq!(
            read_optional(&secret).unwrap().as_deref(),
            Some("host secret")
        );
    }

    #[test]
    fn a_symlink_in_place_of_a_private_folder_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::set_permissions(outside.path(), Permissions::from_mode(0o755)).unwrap();
        let link = dir.path().join("vms");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        assert!(create_private_dir(&link, 0o700).is_err());
        let mode = fs::metadata(outside.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "the link's target was chmodded");
    }

    #[test]
    fn missing_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/file");
        let err = write_atomic(&path, b"x", 0o600).unwrap_err();
        assert!(err.to_string().contains("no/such"), "{err}");
    }
}
