//! Temporary files that must not outlive an interrupted command.
//!
//! A command that writes a temporary file somewhere shared (a download in the image cache,
//! say) [`register`]s its path and keeps the returned [`TempGuard`] while the file exists.
//! When SIGINT, SIGTERM or SIGHUP arrives, a thread removes every registered path and exits
//! with `128 + signal` (130 for Ctrl-C), as a shell reports a process killed by that signal.
//! Dropping the guard (after the file was renamed into place, or deleted) unregisters it.
//!
//! The signal thread is installed by the first [`register`] (or an explicit [`install`]),
//! not for every command: `console` handles SIGTERM/SIGHUP itself to restore the terminal, and
//! a process that never registers anything keeps the default signal behaviour.
//!
//! SIGKILL cannot be caught; owners of temporaries should also sweep stale ones they can
//! prove nobody is writing (see `image::cache`, which holds a lock on each partial download).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// The signals that remove the registered paths and end the process.
pub const SIGNALS: [i32; 3] = [SIGINT, SIGTERM, SIGHUP];

static REGISTRY: Mutex<BTreeMap<u64, PathBuf>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

fn registry() -> MutexGuard<'static, BTreeMap<u64, PathBuf>> {
    // A panic while holding the lock cannot leave the map inconsistent.
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a path registered for removal on a signal; dropping it unregisters the path (it does
/// not remove the file: the owner either renamed it into place or deletes it itself).
#[derive(Debug)]
#[must_use = "the path is unregistered as soon as the guard is dropped"]
pub struct TempGuard {
    id: u64,
}

impl TempGuard {
    /// The registered path.
    pub fn path(&self) -> Option<PathBuf> {
        registry().get(&self.id).cloned()
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        registry().remove(&self.id);
    }
}

/// Registers `path` for removal if the process is interrupted, installing the signal thread
/// the first time. Fails only if the signal handlers cannot be installed.
pub fn register(path: impl Into<PathBuf>) -> std::io::Result<TempGuard> {
    install()?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    registry().insert(id, path.into());
    Ok(TempGuard { id })
}

/// The paths registered now, in registration order.
pub fn registered() -> Vec<PathBuf> {
    registry().values().cloned().collect()
}

/// Installs the signal thread (once per process; later calls return the first result).
pub fn install() -> std::io::Result<()> {
    INSTALLED
        .get_or_init(|| {
            let mut signals = Signals::new(SIGNALS).map_err(|e| e.to_string())?;
            std::thread::Builder::new()
                .name("cleanup-on-signal".into())
                .spawn(move || {
                    if let Some(signal) = signals.forever().next() {
                        // Hold the lock to the end: no guard can unregister (nor a new path
                        // be registered and then escape) while we remove and exit.
                        let paths = registry();
                        remove_all(paths.values());
                        std::process::exit(128 + signal);
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(())
        })
        .clone()
        .map_err(std::io::Error::other)
}

fn remove_all<'a>(paths: impl Iterator<Item = &'a PathBuf>) {
    for path in paths {
        remove(path);
    }
}

fn remove(path: &Path) {
    // A file, or (for owners that register a folder) a whole tree; gone already is fine.
    if std::fs::remove_file(path).is_err() {
        let _ = std::fs::remove_dir_all(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_register_and_unregister() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        let b = dir.path().join("b");
        let ga = register(&a).unwrap();
        let gb = register(&b).unwrap();
        assert_eq!(ga.path(), Some(a.clone()));
        let now = registered();
        assert!(now.contains(&a) && now.contains(&b), "{now:?}");
        drop(ga);
        let now = registered();
        assert!(!now.contains(&a) && now.contains(&b), "{now:?}");
        drop(gb);
        assert!(!registered().contains(&b));
    }

    #[test]
    fn remove_takes_files_and_folders() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        let tree = dir.path().join("t");
        std::fs::write(&file, b"x").unwrap();
        std::fs::create_dir_all(tree.join("sub")).unwrap();
        std::fs::write(tree.join("sub/g"), b"y").unwrap();
        remove_all([file.clone(), tree.clone(), dir.path().join("missing")].iter());
        assert!(!file.exists() && !tree.exists());
    }
}
