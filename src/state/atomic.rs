//! Atomic file replacement: write a temporary file in the same folder, sync it, rename it over
//! the target, then sync the folder, so readers see the old or the new content, never a mix.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
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

/// Creates `dir` (and its parents) and gives it the mode `mode`.
pub fn create_private_dir(dir: &Path, mode: u32) -> Result<(), StateError> {
    fs::create_dir_all(dir).map_err(|e| StateError::io(dir, e))?;
    fs::set_permissions(dir, Permissions::from_mode(mode)).map_err(|e| StateError::io(dir, e))
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
/// command. Looks at the files of `root`, of its folders (instance folders, `ssh/`) and of
/// `volumes/<name>/`; never follows a symbolic link and never looks inside `file-shares/`,
/// whose files are the user's.
pub fn sweep_temporaries(root: &Path) -> Result<Vec<PathBuf>, StateError> {
    let mut removed = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    for entry in read_dir_if_present(root)? {
        if entry.1.is_dir() {
            folders.push(entry.0.clone());
        }
    }
    for (volume, kind) in read_dir_if_present(&root.join("volumes"))? {
        if kind.is_dir() {
            folders.push(volume);
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
                "volumes/data/.volume-q.tmp"
            ]
        );
        for kept in [
            "volumes.json",
            "app/disk.qcow2",
            "app/file-shares/mount0/.tmp-user-file",
            "volumes/data/volume.qcow2",
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
    fn missing_folder_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("no/such/file");
        let err = write_atomic(&path, b"x", 0o600).unwrap_err();
        assert!(err.to_string().contains("no/such"), "{err}");
    }
}
