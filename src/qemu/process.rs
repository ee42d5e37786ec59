//! Starting and stopping a daemonised QEMU.
//!
//! With `-daemonize` the process we spawn forks; the child becomes the VM and the parent
//! exits once the child has finished initialising: status 0 on success, non-zero with QEMU's
//! own error text on stderr otherwise. From then on the VM is not our child, so it is found
//! again through its pidfile, and `/proc/<pid>/cmdline` must name that same pidfile before we
//! believe the pid (a recycled pid belongs to some other program). It is controlled through
//! its QMP socket and, as a last resort, SIGKILL.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use super::arch::Arch;
use super::argv::{ArgvError, LaunchSpec, build_argv};
use super::qmp::{Qmp, QmpError};

/// How long one QMP read or write may take before QEMU counts as not answering.
const QMP_IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long `quit` and SIGKILL each get to end the process.
const END_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(50);
/// QEMU's stderr is a few lines; more than this is cut.
const MAX_STDERR: u64 = 64 * 1024;

/// The two files through which a running VM is found and controlled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmHandle {
    pub pidfile: PathBuf,
    pub qmp_socket: PathBuf,
}

impl From<&LaunchSpec> for VmHandle {
    fn from(spec: &LaunchSpec) -> Self {
        VmHandle {
            pidfile: spec.pidfile.clone(),
            qmp_socket: spec.qmp_socket.clone(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FindError {
    #[error(
        "{name} not found on PATH; install QEMU (Debian: apt install {package}){}",
        if *host_arch { " or name it with --qemu or QEMU_COMPOSE_QEMU" } else { "" }
    )]
    NotOnPath {
        name: String,
        package: &'static str,
        /// The binary is for the host's architecture, where `--qemu` applies.
        host_arch: bool,
    },
    #[error("QEMU binary {path:?} (from --qemu or QEMU_COMPOSE_QEMU) is not an executable file")]
    NotExecutable { path: PathBuf },
}

/// The QEMU binary for `arch` guests: `override_bin` (the user's `--qemu` or
/// `$QEMU_COMPOSE_QEMU`) if set, as a path when it contains `/` and otherwise as a name looked
/// up on `path_env` (`$PATH`); else `qemu-system-<arch>` on `path_env`. `host` is the
/// host's architecture, the one `override_bin` is for.
pub fn find_qemu(
    override_bin: Option<&OsStr>,
    arch: Arch,
    host: Arch,
    path_env: Option<&OsStr>,
) -> Result<PathBuf, FindError> {
    let name = override_bin
        .filter(|s| !s.is_empty())
        .unwrap_or(OsStr::new(arch.qemu_binary()));
    if name.as_bytes().contains(&b'/') {
        let path = PathBuf::from(name);
        return if is_executable(&path) {
            Ok(path)
        } else {
            Err(FindError::NotExecutable { path })
        };
    }
    std::env::split_paths(path_env.unwrap_or_default())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| FindError::NotOnPath {
            name: name.to_string_lossy().into_owned(),
            package: arch.qemu_package(),
            host_arch: arch == host,
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Argv(#[from] ArgvError),
    #[error("QEMU already runs for this VM (pid {pid})")]
    AlreadyRunning { pid: i32 },
    #[error("cannot start {binary:?}: {source}")]
    Spawn {
        binary: PathBuf,
        source: std::io::Error,
    },
    /// A host port was taken: for the SSH port the caller may retry with another one.
    #[error("QEMU could not forward host port {}: {stderr}", host_port.map_or("?".to_owned(), |p| p.to_string()))]
    HostForward {
        /// The rule as QEMU quotes it, e.g. `tcp:127.0.0.1:2222-:22`.
        rule: String,
        host_port: Option<u16>,
        stderr: String,
    },
    #[error("QEMU failed to start ({status}){}", said(stderr))]
    Failed { status: ExitStatus, stderr: String },
    #[error("QEMU did not finish starting within {0:?}")]
    Timeout(Duration),
    #[error("QEMU started but its pidfile {path:?} is unusable: {reason}")]
    Pidfile { path: PathBuf, reason: String },
    #[error("QEMU started but its QMP socket does not answer: {0}")]
    Qmp(QmpError),
    #[error("cannot prepare the pidfile {path:?}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A QEMU that has daemonised and answers QMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub pid: i32,
    /// The arguments QEMU was started with (after the binary).
    pub argv: Vec<String>,
    /// Whatever QEMU printed while starting (warnings), usually empty.
    pub stderr: String,
}

/// Starts QEMU for `spec` and returns once it has daemonised and `query-status` answers, or
/// fails within about `timeout`. On any failure after the launch nothing is left running.
pub fn start(qemu: &Path, spec: &LaunchSpec, timeout: Duration) -> Result<Started, StartError> {
    let argv = build_argv(spec)?;
    let handle = VmHandle::from(spec);
    match state(&handle) {
        ProcState::Running { pid } => return Err(StartError::AlreadyRunning { pid }),
        ProcState::Stale { .. } => {
            remove_if_present(&handle.pidfile).map_err(|source| StartError::Io {
                path: handle.pidfile.clone(),
                source,
            })?
        }
        ProcState::NotRunning => {}
    }
    let deadline = Instant::now() + timeout;

    let mut child = Command::new(qemu)
        .args(&argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| StartError::Spawn {
            binary: qemu.to_owned(),
            source,
        })?;
    let stderr = child.stderr.take().map(collect_in_background);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(POLL),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                end_started(&handle);
                return Err(StartError::Timeout(timeout));
            }
        }
    };
    // After a failure every writer has exited, so the text is complete; after success the
    // daemon has pointed its stderr at /dev/null and only startup warnings are there.
    let stderr = stderr
        .and_then(|rx| rx.recv_timeout(Duration::from_secs(2)).ok())
        .unwrap_or_default();
    if !status.success() {
        return Err(classify_failure(status, stderr));
    }

    let pid = match state(&handle) {
        ProcState::Running { pid } => pid,
        ProcState::NotRunning => {
            return Err(StartError::Pidfile {
                path: handle.pidfile,
                reason: "QEMU exited with status 0 but wrote no pidfile".into(),
            });
        }
        ProcState::Stale { reason, .. } => {
            return Err(StartError::Pidfile {
                path: handle.pidfile,
                reason,
            });
        }
    };
    loop {
        let attempt =
            Qmp::connect(&handle.qmp_socket, QMP_IO_TIMEOUT).and_then(|mut qmp| qmp.query_status());
        match attempt {
            Ok(_) => return Ok(Started { pid, argv, stderr }),
            Err(e) if Instant::now() >= deadline => {
                end_started(&handle);
                return Err(StartError::Qmp(e));
            }
            Err(_) => thread::sleep(POLL),
        }
    }
}

/// Reads a pipe to its end (bounded) on a thread, so a daemon that keeps it open cannot block us.
fn collect_in_background(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = (&mut pipe).take(MAX_STDERR).read_to_end(&mut bytes);
        // Keep draining past the limit so a chatty QEMU never blocks on a full pipe.
        let _ = std::io::copy(&mut pipe, &mut std::io::sink());
        let _ = tx.send(String::from_utf8_lossy(&bytes).trim_end().to_owned());
    });
    rx
}

/// Recognises QEMU's "Could not set up host forwarding rule 'tcp:127.0.0.1:2222-:22'".
fn classify_failure(status: ExitStatus, stderr: String) -> StartError {
    const MARK: &str = "Could not set up host forwarding rule '";
    let rule = stderr
        .find(MARK)
        .map(|at| &stderr[at + MARK.len()..])
        .and_then(|rest| rest.split_once('\''))
        .map(|(rule, _)| rule.to_owned());
    match rule {
        Some(rule) => StartError::HostForward {
            host_port: host_port_of(&rule),
            rule,
            stderr,
        },
        None => StartError::Failed { status, stderr },
    }
}

/// What QEMU printed, after a colon; or that it printed nothing.
fn said(stderr: &str) -> String {
    match stderr.trim() {
        "" => " and printed no message".to_string(),
        text => format!(": {text}"),
    }
}

/// The host port in a rule `proto:[ip]:port-[ip]:port`.
fn host_port_of(rule: &str) -> Option<u16> {
    let (host, _guest) = rule.split_once('-')?;
    host.rsplit(':').next()?.parse().ok()
}

/// Ends a QEMU that started but is unusable; best effort, the error being reported matters more.
fn end_started(handle: &VmHandle) {
    if let ProcState::Running { pid } = state(handle) {
        let _ = kill(pid);
        wait_gone(pid, &handle.pidfile, END_TIMEOUT);
    }
    let _ = remove_if_present(&handle.pidfile);
}

/// What the pidfile says about a VM's QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcState {
    /// No pidfile: never started, or QEMU exited and removed it.
    NotRunning,
    Running {
        pid: i32,
    },
    /// A pidfile whose process is gone (or is someone else's), or that cannot be read.
    Stale {
        pid: Option<i32>,
        reason: String,
    },
}

/// Looks at the pidfile and the process it names.
pub fn state(handle: &VmHandle) -> ProcState {
    let text = match std::fs::read_to_string(&handle.pidfile) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return ProcState::NotRunning,
        Err(e) => {
            return ProcState::Stale {
                pid: None,
                reason: format!("cannot read the pidfile: {e}"),
            };
        }
    };
    let Some(pid) = text.trim().parse::<i32>().ok().filter(|p| *p > 0) else {
        return ProcState::Stale {
            pid: None,
            reason: format!("the pidfile holds {:?}, not a process id", text.trim()),
        };
    };
    if is_our_qemu(pid, &handle.pidfile) {
        ProcState::Running { pid }
    } else {
        ProcState::Stale {
            pid: Some(pid),
            reason: format!("process {pid} from the pidfile is not running"),
        }
    }
}

/// True when process `pid` runs with `-pidfile <pidfile>` on its command line. A zombie has
/// an empty command line and so counts as gone.
pub fn is_our_qemu(pid: i32, pidfile: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .any(|w| w[0] == b"-pidfile" && w[1] == pidfile.as_os_str().as_bytes())
}

/// Which step ended the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopOutcome {
    /// The guest powered off after `system_powerdown`.
    PoweredOff,
    /// QEMU ended on QMP `quit`.
    Quit,
    /// QEMU was killed with SIGKILL.
    Killed,
    /// It was not running; a stale pidfile was removed.
    AlreadyStopped,
}

#[derive(Debug, thiserror::Error)]
pub enum StopError {
    #[error("cannot send SIGKILL to QEMU (pid {pid}): {source}")]
    Kill { pid: i32, source: std::io::Error },
    #[error("QEMU (pid {pid}) is still running after SIGKILL")]
    StillRunning { pid: i32 },
    #[error("cannot remove the pidfile {path:?}: {source}")]
    Pidfile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Stops the VM: QMP `system_powerdown` and up to `graceful` for the guest to power off
/// (skipped when `force`), then QMP `quit`, then SIGKILL. Ends with no process and no pidfile.
pub fn stop(handle: &VmHandle, graceful: Duration, force: bool) -> Result<StopOutcome, StopError> {
    let outcome = match state(handle) {
        ProcState::NotRunning | ProcState::Stale { .. } => StopOutcome::AlreadyStopped,
        ProcState::Running { pid } => end(handle, pid, graceful, force)?,
    };
    remove_if_present(&handle.pidfile).map_err(|source| StopError::Pidfile {
        path: handle.pidfile.clone(),
        source,
    })?;
    Ok(outcome)
}

fn end(
    handle: &VmHandle,
    pid: i32,
    graceful: Duration,
    force: bool,
) -> Result<StopOutcome, StopError> {
    if !force
        && qmp_once(handle, "system_powerdown").is_ok()
        && wait_gone(pid, &handle.pidfile, graceful)
    {
        return Ok(StopOutcome::PoweredOff);
    }
    // QEMU may close the socket before its reply to `quit` arrives: only the exit counts.
    // When the socket cannot even be reached, nothing was asked and there is nothing to wait for.
    let quit = qmp_once(handle, "quit");
    let asked = !matches!(quit, Err(QmpError::Connect { .. }));
    if asked && wait_gone(pid, &handle.pidfile, END_TIMEOUT) {
        return Ok(StopOutcome::Quit);
    }
    if is_our_qemu(pid, &handle.pidfile) {
        kill(pid).map_err(|source| StopError::Kill { pid, source })?;
    }
    if wait_gone(pid, &handle.pidfile, END_TIMEOUT) {
        Ok(StopOutcome::Killed)
    } else {
        Err(StopError::StillRunning { pid })
    }
}

fn qmp_once(handle: &VmHandle, command: &str) -> Result<(), QmpError> {
    Qmp::connect(&handle.qmp_socket, QMP_IO_TIMEOUT)?.execute(command, None)?;
    Ok(())
}

fn kill(pid: i32) -> std::io::Result<()> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| std::io::Error::other("pid 0 cannot be signalled"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)?;
    Ok(())
}

/// Polls until the process is gone; false if it still runs after `timeout`.
///
/// Gone means its files are closed too: an exiting process drops its memory (and so its
/// command line) before it closes its files, and with them the locks on its disk images, so
/// a command right after `stop` (`up`, `volume rm`) could still find an image locked.
fn wait_gone(pid: i32, pidfile: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !is_our_qemu(pid, pidfile) && files_closed(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL);
    }
}

/// Whether process `pid` has closed its files: it is gone, a zombie, or (its pid reused)
/// another program. An empty command line without the zombie state is a process still
/// exiting.
fn files_closed(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the parenthesised name, which may itself hold ") ".
    let state = stat
        .rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next());
    if matches!(state, Some('Z' | 'X') | None) {
        return true;
    }
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn host_forward_failure_is_recognised() {
        let text = "qemu-system-x86_64: -netdev user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22: \
                    Could not set up host forwarding rule 'tcp:127.0.0.1:2222-:22'";
        match classify_failure(ExitStatus::from_raw(1 << 8), text.into()) {
            StartError::HostForward {
                rule,
                host_port,
                stderr,
            } => {
                assert_eq!(rule, "tcp:127.0.0.1:2222-:22");
                assert_eq!(host_port, Some(2222));
                assert_eq!(stderr, text);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(host_port_of("udp::5353-:53"), Some(5353));
        assert_eq!(host_port_of("garbage"), None);
        let other = classify_failure(ExitStatus::from_raw(1 << 8), "Could not open 'x'".into());
        assert!(matches!(other, StartError::Failed { .. }));
        assert_eq!(
            other.to_string(),
            "QEMU failed to start (exit status: 1): Could not open 'x'"
        );
        let silent = classify_failure(ExitStatus::from_raw(1 << 8), String::new());
        assert_eq!(
            silent.to_string(),
            "QEMU failed to start (exit status: 1) and printed no message"
        );
    }

    #[test]
    fn find_qemu_searches_path_and_checks_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("my-qemu");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        let path_env =
            std::env::join_paths(["/nonexistent", dir.path().to_str().unwrap()]).unwrap();
        assert_eq!(
            find_qemu(
                Some(OsStr::new("my-qemu")),
                Arch::X86_64,
                Arch::X86_64,
                Some(&path_env)
            )
            .ok(),
            None,
            "not executable yet"
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            find_qemu(
                Some(OsStr::new("my-qemu")),
                Arch::X86_64,
                Arch::X86_64,
                Some(&path_env)
            )
            .unwrap(),
            bin
        );
        assert_eq!(
            find_qemu(Some(bin.as_os_str()), Arch::X86_64, Arch::X86_64, None).unwrap(),
            bin
        );
        let err = find_qemu(None, Arch::Aarch64, Arch::X86_64, Some(&path_env)).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("qemu-system-aarch64 not found on PATH; install QEMU (Debian: apt install qemu-system-arm)"),
            "{err}"
        );
        assert!(matches!(
            find_qemu(
                Some(OsStr::new("/nonexistent/qemu")),
                Arch::X86_64,
                Arch::X86_64,
                None
            ),
            Err(FindError::NotExecutable { .. })
        ));
    }

    #[test]
    fn pidfile_states() {
        let dir = tempfile::tempdir().unwrap();
        let handle = VmHandle {
            pidfile: dir.path().join("qemu.pid"),
            qmp_socket: dir.path().join("qmp.sock"),
        };
        assert_eq!(state(&handle), ProcState::NotRunning);
        std::fs::write(&handle.pidfile, "junk\n").unwrap();
        assert!(matches!(state(&handle), ProcState::Stale { pid: None, .. }));
        // Our own pid is alive but is not a QEMU with this pidfile: pid reuse is detected.
        std::fs::write(&handle.pidfile, format!("{}\n", std::process::id())).unwrap();
        assert!(matches!(
            state(&handle),
            ProcState::Stale { pid: Some(_), .. }
        ));
        assert_eq!(
            stop(&handle, Duration::ZERO, false).unwrap(),
            StopOutcome::AlreadyStopped
        );
        assert!(!handle.pidfile.exists(), "stale pidfile is removed");
    }
}
