//! The project lock: one state-changing command at a time per project.
//!
//! An advisory `flock` on `.qemu-compose/lock` (std's `File::lock`). The kernel releases it
//! when the process dies, so a crash never leaves the project locked.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use super::{StateDir, StateError};

/// Holds the project lock until dropped.
#[derive(Debug)]
pub struct ProjectLock {
    _file: File,
    /// What the move from the earlier state layout could not do (one line per VM).
    pub migration_notes: Vec<String>,
}

impl ProjectLock {
    /// Takes the lock, creating the state folder if needed. When another command holds it,
    /// `on_wait` is called once (to tell the user) and the call blocks until it is free.
    pub fn acquire(state: &StateDir, on_wait: impl FnOnce()) -> Result<Self, StateError> {
        state.ensure()?;
        let path = state.lock_file();
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| StateError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                on_wait();
                file.lock().map_err(|e| StateError::io(&path, e))?;
            }
            Err(TryLockError::Error(e)) => return Err(StateError::io(&path, e)),
        }
        // Record the holder for people debugging a stuck command; not used for locking.
        file.set_len(0).map_err(|e| StateError::io(&path, e))?;
        writeln!(file, "{}", std::process::id()).map_err(|e| StateError::io(&path, e))?;
        state.note_project_dir()?;
        // A state folder of the earlier layout is moved once the lock is ours.
        let migration_notes = super::migrate::migrate(state)?;
        Ok(Self {
            _file: file,
            migration_notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn second_holder_waits_until_the_first_releases() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::with_private_home(dir.path(), &dir.path().join("home"));
        let first = ProjectLock::acquire(&state, || panic!("nobody holds it yet")).unwrap();
        let (waited_tx, waited_rx) = mpsc::channel();
        let (got_tx, got_rx) = mpsc::channel();
        let state2 = state.clone();
        let t = std::thread::spawn(move || {
            let lock = ProjectLock::acquire(&state2, || waited_tx.send(()).unwrap()).unwrap();
            got_tx.send(()).unwrap();
            drop(lock);
        });
        waited_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(got_rx.recv_timeout(Duration::from_millis(200)).is_err());
        drop(first);
        got_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        t.join().unwrap();
    }
}
