//! Moving a state folder of the earlier layout (instance folders at `.qemu-compose/<vm>/`,
//! the key and console password inside the project) to the current one (see
//! [`super::layout`]). Runs under the project lock at the start of every state-changing
//! command; a folder already in the current layout is left alone.
//!
//! Earlier versions also kept the file-share folders (hard links to host files) in the
//! project, where a guest given the project (`.:/src`) could write those files. `up` makes
//! them again in the private folder, so the project's are removed, never followed.

use std::fs;
use std::io;
use std::path::Path;

use super::{StateDir, StateError, atomic};

/// Files of an earlier instance folder that stay in the project.
const PROJECT_FILES: [&str; 1] = ["disk.qcow2"];
/// The folder of an instance's file shares, removed from the project (see the module doc).
const FILE_SHARES: &str = "file-shares";
/// Files of an earlier instance folder that move to the private folder.
const PRIVATE_FILES: [&str; 4] = ["seed.img", "serial.log", "instance.json", "known_hosts"];
/// Files of an earlier instance folder that only mean something while its QEMU runs.
const RUNTIME_FILES: [&str; 3] = ["qemu.pid", "qmp.sock", "serial.sock"];

/// Moves what the earlier layout left; returns a line per VM that could not be moved.
pub fn migrate(state: &StateDir) -> Result<Vec<String>, StateError> {
    let mut notes = Vec::new();
    let root = state.root();
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(notes),
        Err(e) => return Err(StateError::io(root, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StateError::io(root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name == "vms" || !crate::compose::is_valid_name(&name) {
            continue;
        }
        if !fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let has = |f: &str| fs::symlink_metadata(path.join(f)).is_ok();
        let instance = PROJECT_FILES
            .iter()
            .chain(&PRIVATE_FILES)
            .chain(&RUNTIME_FILES)
            .chain(&[FILE_SHARES])
            .any(|f| has(f));
        if !instance {
            continue;
        }
        remove_if_present(&path.join(FILE_SHARES))?;
        if has("qemu.pid") && qemu_runs_from(&path) {
            notes.push(format!(
                "VM {name} still runs from the earlier state layout and was left at {} (without its file shares, which guests could reach there); stop it with `kill $(cat {})`, then run the command again",
                path.display(),
                path.join("qemu.pid").display()
            ));
            continue;
        }
        let disk_dir = state.vm_dir(&name);
        let private_dir = state.vm_private_dir(&name);
        atomic::create_private_dir(&disk_dir, 0o700)?;
        atomic::create_private_dir(&private_dir, 0o700)?;
        for file in PROJECT_FILES {
            move_entry(&path.join(file), &disk_dir.join(file))?;
        }
        for file in PRIVATE_FILES {
            move_entry(&path.join(file), &private_dir.join(file))?;
        }
        for file in RUNTIME_FILES {
            remove_if_present(&path.join(file))?;
        }
        // An emptied folder of its own goes; `volumes`/`ssh` keep what else they hold.
        let _ = fs::remove_dir(&path);
    }

    let old_ssh = root.join("ssh");
    for file in ["id_ed25519", "id_ed25519.pub"] {
        let old = old_ssh.join(file);
        if fs::symlink_metadata(&old).is_ok_and(|m| m.is_file()) {
            atomic::create_private_dir(&state.ssh_dir(), 0o700)?;
            move_entry(&old, &state.ssh_dir().join(file))?;
        }
    }
    let _ = fs::remove_dir(&old_ssh);
    let old_password = root.join("console-password");
    if fs::symlink_metadata(&old_password).is_ok_and(|m| m.is_file()) {
        move_entry(&old_password, &state.console_password())?;
    }
    remove_if_present(&root.join("lock"))?;
    remove_project_file_shares(state, &mut notes)?;
    Ok(notes)
}

/// Removes `vms/<vm>/file-shares/` from the project folder, with a note for a VM whose QEMU
/// still exports it (its file bind mounts are gone until it restarts).
fn remove_project_file_shares(state: &StateDir, notes: &mut Vec<String>) -> Result<(), StateError> {
    let vms = state.root().join("vms");
    let entries = match fs::read_dir(&vms) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(StateError::io(&vms, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StateError::io(&vms, e))?;
        let shares = entry.path().join(FILE_SHARES);
        if !fs::symlink_metadata(entry.path()).is_ok_and(|m| m.is_dir())
            || fs::symlink_metadata(&shares).is_err()
        {
            continue;
        }
        remove_if_present(&shares)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if crate::compose::is_valid_name(&name) && qemu_runs_from(&state.vm_private_dir(&name)) {
            notes.push(format!(
                "VM {name} runs with its file shares in the project folder, where a guest given the project could write the shared files; they were removed, so its file bind mounts are gone until `qemu-compose up --force-recreate {name}` restarts it"
            ));
        }
    }
    Ok(())
}

/// Whether the QEMU of the pidfile in `dir` runs.
fn qemu_runs_from(dir: &Path) -> bool {
    let pidfile = dir.join("qemu.pid");
    let Ok(Some(text)) = atomic::read_optional(&pidfile) else {
        return false;
    };
    text.trim()
        .parse::<i32>()
        .is_ok_and(|pid| crate::qemu::process::is_our_qemu(pid, &pidfile))
}

/// Moves `from` to `to` (a rename, or a copy and removal across file systems); nothing to do
/// when `from` is missing; an existing `to` wins and `from` is removed. Symlinks are dropped,
/// never followed.
fn move_entry(from: &Path, to: &Path) -> Result<(), StateError> {
    let Ok(meta) = fs::symlink_metadata(from) else {
        return Ok(());
    };
    if meta.file_type().is_symlink() || fs::symlink_metadata(to).is_ok() {
        return remove_if_present(from);
    }
    match fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::CrossesDevices && meta.is_file() => {
            let text = fs::read(from).map_err(|e| StateError::io(from, e))?;
            atomic::write_atomic(to, &text, 0o600)?;
            remove_if_present(from)
        }
        Err(e) => Err(StateError::io(from, e)),
    }
}

/// Removes a file, a symbolic link (not what it names) or a folder tree; `remove_dir_all`
/// does not follow symbolic links inside the tree either.
fn remove_if_present(path: &Path) -> Result<(), StateError> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(_) => return Ok(()),
    };
    result.map_err(|e| StateError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_earlier_layout_moves_including_vms_named_like_state_folders() {
        let dir = tempfile::tempdir().unwrap();
        let proj = dir.path().join("proj");
        let old = proj.join(".qemu-compose");
        for vm in ["web", "volumes", "ssh"] {
            fs::create_dir_all(old.join(vm)).unwrap();
            fs::write(old.join(vm).join("disk.qcow2"), vm).unwrap();
            fs::write(old.join(vm).join("instance.json"), "{}").unwrap();
        }
        fs::create_dir_all(old.join("volumes/data")).unwrap();
        fs::write(old.join("volumes/data/volume.qcow2"), "vol").unwrap();
        fs::write(old.join("ssh/id_ed25519"), "key").unwrap();
        fs::write(old.join("console-password"), "pw\nsalt\n").unwrap();
        let state = StateDir::with_private_home(&proj, &dir.path().join("home"));
        state.ensure().unwrap();

        assert!(migrate(&state).unwrap().is_empty());
        for vm in ["web", "volumes", "ssh"] {
            assert_eq!(
                fs::read_to_string(state.vm_dir(vm).join("disk.qcow2")).unwrap(),
                vm
            );
            assert!(state.vm_private_dir(vm).join("instance.json").is_file());
        }
        assert_eq!(
            fs::read_to_string(state.volume_image("data")).unwrap(),
            "vol"
        );
        assert_eq!(fs::read_to_string(state.ssh_key()).unwrap(), "key");
        assert!(state.console_password().is_file());
        assert!(!old.join("web").exists() && !old.join("ssh").exists());
        assert!(!old.join("volumes/disk.qcow2").exists());
        // A second run changes nothing.
        assert!(migrate(&state).unwrap().is_empty());
        assert_eq!(fs::read_to_string(state.ssh_key()).unwrap(), "key");
    }

    #[test]
    fn file_shares_leave_the_project_without_following_links() {
        use std::os::unix::fs::{MetadataExt, symlink};
        let dir = tempfile::tempdir().unwrap();
        let proj = dir.path().join("proj");
        let outside = dir.path().join("outside");
        fs::create_dir_all(outside.join("tree")).unwrap();
        fs::write(outside.join("app.conf"), "host file").unwrap();
        fs::write(outside.join("tree/kept"), "kept").unwrap();
        let root = proj.join(".qemu-compose");
        // The current layout: a hard link and a planted symlink to a folder outside.
        let shares = root.join("vms/app/file-shares");
        fs::create_dir_all(shares.join("mount0")).unwrap();
        fs::hard_link(outside.join("app.conf"), shares.join("mount0/app.conf")).unwrap();
        symlink(outside.join("tree"), shares.join("mount1")).unwrap();
        fs::write(root.join("vms/app/disk.qcow2"), "disk").unwrap();
        // `file-shares` itself a symlink to a folder outside.
        fs::create_dir_all(root.join("vms/db")).unwrap();
        symlink(outside.join("tree"), root.join("vms/db/file-shares")).unwrap();
        // The earlier layout: dropped, not moved.
        fs::create_dir_all(root.join("web/file-shares/mount0")).unwrap();
        fs::write(root.join("web/file-shares/mount0/x"), "x").unwrap();
        fs::write(root.join("web/disk.qcow2"), "web").unwrap();
        let state = StateDir::with_private_home(&proj, &dir.path().join("home"));
        state.ensure().unwrap();

        assert!(migrate(&state).unwrap().is_empty());
        for gone in [
            "vms/app/file-shares",
            "vms/db/file-shares",
            "web",
            "vms/web/file-shares",
        ] {
            assert!(fs::symlink_metadata(root.join(gone)).is_err(), "{gone}");
        }
        assert_eq!(
            fs::read_to_string(root.join("vms/app/disk.qcow2")).unwrap(),
            "disk"
        );
        assert_eq!(
            fs::read_to_string(root.join("vms/web/disk.qcow2")).unwrap(),
            "web"
        );
        let host = fs::metadata(outside.join("app.conf")).unwrap();
        assert_eq!(
            (
                host.nlink(),
                fs::read_to_string(outside.join("app.conf"))
                    .unwrap()
                    .as_str()
            ),
            (1, "host file")
        );
        assert_eq!(
            fs::read_to_string(outside.join("tree/kept")).unwrap(),
            "kept"
        );
    }
}
