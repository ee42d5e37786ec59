//! What the integration tests share: temporary projects and the one environment every
//! `qemu-compose` they start runs in, reference tools that say what to install when missing,
//! golden files, and the lock that keeps QEMU guests one at a time.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};

use qemu_compose::state::StateDir;
use qemu_compose::state::layout::STATE_DIR_NAME;
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_qemu-compose");

/// Bytes a command printed, as text.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A command's stdout, then its stderr.
pub fn all_text(out: &Output) -> String {
    text(&out.stdout) + &text(&out.stderr)
}

/// A path as an argument (every path in these tests is UTF-8).
pub fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[path = "../common/pattern.rs"]
mod common_pattern;
pub use common_pattern::pattern;

#[path = "../common/env.rs"]
mod common_env;
use common_env::clean_env;

/// The fixture project `tests/fixtures/compose/NAME`, canonical.
pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/compose")
        .join(name)
        .canonicalize()
        .unwrap()
}

// ---- The environment -----------------------------------------------------------------------

/// The one environment policy, for every command that runs `qemu-compose` (directly or, like
/// `script`, through a shell): no `QEMU_COMPOSE_*` variable and nothing else of the developer's
/// shell that changes the binary leaks in ([`clean_env`]),
/// from the developer's shell, and the image cache is `data_home` (`XDG_DATA_HOME`). `HOME`
/// and `XDG_STATE_HOME` are kept: [`private_dir`] finds a project's private folder from this
/// process's environment, so the binary must see the same state home. A test that needs a
/// variable sets it on the command afterwards.
pub fn apply_env<'c>(cmd: &'c mut Command, data_home: &Path) -> &'c mut Command {
    clean_env(cmd).env("XDG_DATA_HOME", data_home)
}

// ---- Projects ------------------------------------------------------------------------------

/// A temporary project folder under Cargo's target tmp folder (no stray compose file in a
/// parent folder such as /tmp can be found from there), with its own image cache in `xdg/`.
///
/// Dropping it runs `destroy --force` if any of its VMs has a pidfile, so no QEMU outlives the
/// test however it ends, then removes its private folders under the state home (its own and
/// those of the projects some tests make in its subfolders).
#[derive(Debug)]
pub struct Project {
    dir: tempfile::TempDir,
    data_home: PathBuf,
}

impl Project {
    /// A project whose `qemu-compose.yaml` is `compose`.
    pub fn new(compose: &str) -> Self {
        let p = Self::empty();
        p.write_compose(compose);
        p
    }

    /// A folder without a compose file.
    pub fn empty() -> Self {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let data_home = dir.path().join("xdg");
        Self { dir, data_home }
    }

    /// A project whose VMs can boot from `./base.qcow2`, an empty image of `size` made by
    /// qemu-img (QEMU runs fine without an OS to boot).
    pub fn with_base(compose: &str, size: &str) -> Self {
        let p = Self::new(compose);
        qemu_img_create(&p.join("base.qcow2"), size);
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A path in the project folder.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path().join(rel)
    }

    /// Replaces the compose file.
    pub fn write_compose(&self, compose: &str) {
        std::fs::write(self.join("qemu-compose.yaml"), compose).unwrap();
    }

    /// The image cache in this project's `XDG_DATA_HOME`.
    pub fn image_cache(&self) -> PathBuf {
        self.data_home.join("qemu-compose/images")
    }

    /// Applies the environment policy with this project's image cache to `cmd`.
    pub fn env<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        apply_env(cmd, &self.data_home)
    }

    /// `qemu-compose ARGS` in the project folder, stdin empty.
    pub fn command(&self, args: &[&str]) -> Command {
        self.command_in(self.path(), args)
    }

    /// `qemu-compose ARGS` in another folder (one without a compose file, a nested project)
    /// with this project's image cache.
    pub fn command_in(&self, cwd: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.args(args).current_dir(cwd).stdin(Stdio::null());
        self.env(&mut cmd);
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_in(self.path(), args)
    }

    pub fn run_in(&self, cwd: &Path, args: &[&str]) -> Output {
        self.command_in(cwd, args)
            .output()
            .expect("qemu-compose runs")
    }

    /// Runs and requires success.
    pub fn ok(&self, args: &[&str]) -> Ran {
        self.ok_in(self.path(), args)
    }

    pub fn ok_in(&self, cwd: &Path, args: &[&str]) -> Ran {
        let out = self.run_in(cwd, args);
        let ran = Ran {
            stdout: text(&out.stdout),
            stderr: text(&out.stderr),
        };
        assert!(
            out.status.success(),
            "qemu-compose {args:?} failed ({}):\n{}",
            out.status,
            ran.stderr
        );
        ran
    }

    /// Runs a command that must fail with status 1; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stderr = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "qemu-compose {args:?} should fail: {stderr}"
        );
        stderr
    }

    /// Runs and requires success; parses stdout as JSON.
    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(args).stdout).expect("JSON output")
    }

    /// The private folder of VM `vm`: pidfile, sockets, serial log, seed, record.
    pub fn private_dir(&self, vm: &str) -> PathBuf {
        private_dir(self.path(), vm)
    }

    /// The pid in VM `vm`'s pidfile.
    pub fn pid(&self, vm: &str) -> Option<i32> {
        std::fs::read_to_string(self.private_dir(vm).join("qemu.pid"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// VM `vm`'s instance record (`instance.json`).
    pub fn record(&self, vm: &str) -> Value {
        let path = self.private_dir(vm).join("instance.json");
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    }

    /// Whether a VM of this project may run: one has a pidfile.
    fn has_pidfile(&self) -> bool {
        let Ok(dir) = self.path().canonicalize() else {
            return false;
        };
        let vms = StateDir::new(&dir).private().join("vms");
        std::fs::read_dir(vms).is_ok_and(|mut entries| {
            entries.any(|e| e.is_ok_and(|e| e.path().join("qemu.pid").exists()))
        })
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        if self.has_pidfile() {
            let _ = self.run(&["destroy", "--force"]);
        }
        let nested = std::fs::read_dir(self.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join(STATE_DIR_NAME).is_dir());
        for dir in std::iter::once(self.path().to_owned()).chain(nested) {
            if let Ok(dir) = dir.canonicalize() {
                let state = StateDir::new(&dir);
                // A network switch left by a test that failed half-way (its pid counts only
                // while the lock is held).
                let lock = state.switch_dir().join("lock");
                let held = std::fs::File::open(&lock)
                    .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
                let text = std::fs::read_to_string(&lock).unwrap_or_default();
                if held
                    && let Some(pid) = text.lines().next().and_then(|t| t.parse().ok())
                    && let Some(pid) = rustix::process::Pid::from_raw(pid)
                {
                    let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
                }
                let _ = std::fs::remove_dir_all(state.private());
            }
        }
    }
}

/// What a successful command printed.
#[derive(Debug)]
pub struct Ran {
    pub stdout: String,
    pub stderr: String,
}

/// The private folder of VM `vm` of the project in `project` (outside the project; see
/// `state::layout`): pidfile, sockets, serial log, seed, record.
pub fn private_dir(project: &Path, vm: &str) -> PathBuf {
    let dir = project.canonicalize().unwrap();
    StateDir::new(&dir).vm_private_dir(vm)
}

/// Whether process `pid` exists (and is no zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty())
}

/// One bootless VM with 128 MiB and the named volume `data` (1G) at /data, booting from
/// `./base.qcow2` (see [`Project::with_base`]).
pub const ONE_VM: &str = "
volumes:
  data: {size: 1G}
vms:
  app:
    image: ./base.qcow2
    memory: 128
    volumes: ['data:/data']
";

// ---- QEMU ----------------------------------------------------------------------------------

/// Held by every test that starts `qemu-system-x86_64`: the tests share one process, the
/// guests run under TCG, and the machine has few CPUs.
static QEMU: Mutex<()> = Mutex::new(());

/// Takes the QEMU lock for the rest of the test; `qemu-system-x86_64` must be installed.
pub fn one_qemu_at_a_time() -> MutexGuard<'static, ()> {
    let guard = QEMU.lock().unwrap_or_else(PoisonError::into_inner);
    tool("qemu-system-x86_64");
    guard
}

// ---- Reference tools -----------------------------------------------------------------------

/// The package that has `tool`, as `.ci/install-deps` installs it.
fn package(tool: &str) -> &str {
    match Path::new(tool).file_name().and_then(OsStr::to_str) {
        Some("qemu-img" | "qemu-io") => "qemu-utils",
        Some("qemu-system-x86_64") => "qemu-system-x86",
        Some("e2fsck" | "dumpe2fs" | "debugfs" | "mkfs.ext4" | "resize2fs") => "e2fsprogs",
        Some("fsck.fat") => "dosfstools",
        Some("mdir" | "mtype") => "mtools",
        Some("cloud-init" | "python3") => "cloud-init",
        Some("ssh" | "ssh-keygen") => "openssh-client",
        Some("sshd") => "openssh-server",
        Some("mount" | "umount" | "blkid" | "script") => "util-linux",
        Some("sfdisk") => "fdisk",
        _ => tool,
    }
}

/// A reference tool the tests use as an oracle (a name on PATH or an absolute path); a
/// missing one fails the test with the package to install.
pub fn tool(name: &str) -> Command {
    let found = if name.contains('/') {
        Path::new(name).is_file()
    } else {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    assert!(
        found,
        "this test needs {name}: install {} (.ci/install-deps installs every test tool)",
        package(name)
    );
    Command::new(name)
}

/// Runs a reference tool.
pub fn run_tool(name: &str, args: &[&str]) -> Output {
    tool(name)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
}

/// Runs a reference tool that must succeed; returns its stdout.
pub fn tool_ok(name: &str, args: &[&str]) -> String {
    let out = run_tool(name, args);
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}): {}",
        out.status,
        all_text(&out)
    );
    text(&out.stdout)
}

/// An empty qcow2 image of `size` made by qemu-img.
pub fn qemu_img_create(path: &Path, size: &str) {
    qemu_img_create_with(path, &[], Some(size));
}

/// `qemu-img create -q -f qcow2 OPTIONS PATH [SIZE]`, OPTIONS such as `-b BASE -F raw` or
/// `-o data_file=…`.
pub fn qemu_img_create_with(path: &Path, options: &[&str], size: Option<&str>) {
    let args = [&["create", "-q", "-f", "qcow2"], options, &[s(path)]].concat();
    tool_ok("qemu-img", &[&args[..], size.as_slice()].concat());
}

/// `qemu-img info --output=json` of an image (`-U`: QEMU may hold it open).
pub fn qemu_img_info(path: &Path) -> Value {
    let info = tool_ok("qemu-img", &["info", "-U", "--output=json", s(path)]);
    serde_json::from_str(&info).expect("qemu-img prints JSON")
}

// ---- Golden files --------------------------------------------------------------------------

/// Compares `actual` with `tests/golden/REL`; with `UPDATE_GOLDEN=1` the file is written first.
pub fn assert_golden(rel: &str, actual: impl AsRef<[u8]>) {
    let actual = actual.as_ref();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(rel);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(
        text(actual),
        text(&expected),
        "{} differs (UPDATE_GOLDEN=1 to accept)",
        path.display()
    );
}

// ---- Kernel mounts --------------------------------------------------------------------------

/// Mounts `image` on a fresh directory; the guard unmounts it.
pub struct Mounted {
    /// Where it is mounted.
    pub dir: PathBuf,
}

impl Mounted {
    pub fn new(image: &Path, dir: PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let o = run_tool(
            "mount",
            &["-o", "loop", image.to_str().unwrap(), dir.to_str().unwrap()],
        );
        assert!(
            o.status.success(),
            "mount -o loop failed:\n{}",
            all_text(&o)
        );
        Self { dir }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let o = run_tool("umount", &[self.dir.to_str().unwrap()]);
        assert!(o.status.success(), "umount failed:\n{}", all_text(&o));
    }
}
