//! The project network switch as a process: `qemu-compose network-switch`, started by `up`
//! (see [`crate::engine::network`]).
//!
//! It takes its lock file first (a second switch of the project exits at once), records its
//! pid and networks there, binds one socket per network, says [`READY`] on stdout and then
//! serves until it is killed. The kernel drops the lock with the process, so a lock nobody
//! holds means no switch, whatever the file says.

pub mod switch;

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// What the switch's lock file says about the switch holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchInfo {
    pub pid: u32,
    /// The networks it serves.
    pub networks: BTreeSet<String>,
}

/// What the switch prints once its sockets listen.
pub const READY: &str = "ready";

/// Reads the lock file's text: the pid, then one network name per line.
pub fn parse_lock(text: &str) -> Option<SwitchInfo> {
    let mut lines = text.lines();
    let pid = lines.next()?.trim().parse().ok()?;
    let networks: BTreeSet<String> = lines.map(str::to_owned).collect();
    Some(SwitchInfo { pid, networks })
}

/// Runs the switch for `networks` (name and socket path) until the process is killed.
pub fn run(lock: &Path, networks: &[(String, PathBuf)]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(lock)?;
    file.try_lock().map_err(|_| {
        io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("another switch holds {}", lock.display()),
        )
    })?;
    let mut text = format!("{}\n", std::process::id());
    for (name, _) in networks {
        text.push_str(name);
        text.push('\n');
    }
    file.set_len(0)?;
    file.write_all(text.as_bytes())?;

    let uid = rustix::process::geteuid().as_raw();
    let mut hubs = Vec::new();
    for (name, path) in networks {
        remove_stale_socket(path)?;
        let listener = UnixListener::bind(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))?;
        eprintln!("network {name}: listening on {}", path.display());
        hubs.push((switch::Hub::new(), listener));
    }
    println!("{READY}");
    io::stdout().flush()?;
    // `up` reads one line and goes on; nothing more is written there.
    let null = fs::File::options().write(true).open("/dev/null")?;
    rustix::stdio::dup2_stdout(&null)?;

    std::thread::scope(|scope| {
        for (hub, listener) in hubs {
            scope.spawn(move || hub.serve(listener, uid));
        }
    });
    drop(file);
    Ok(())
}

/// A socket left by a switch that died is removed (we hold the lock, so nobody serves it);
/// anything else in its place is refused.
fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(meta) if meta.file_type().is_socket() => fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
    }
}
