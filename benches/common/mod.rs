//! What the whole-command benchmarks share (included with `#[path]`: each bench is its own
//! crate): running a command, the bytes a file takes, and a project to run `qemu-compose` in.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The release binary the benchmarks time.
pub const BIN: &str = env!("CARGO_BIN_EXE_qemu-compose");

/// Runs `cmd`, which must succeed.
pub fn run(cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?} must run for this benchmark: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Bytes the file occupies on disk (holes excluded).
pub fn allocated(path: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::blocks(&fs::metadata(path).unwrap()) * 512
}

/// A project folder under `dir` whose compose file declares one VM, for volume commands.
pub fn project(dir: &Path) -> PathBuf {
    let project = dir.join("project");
    fs::create_dir(&project).unwrap();
    fs::write(project.join("base.img"), b"").unwrap();
    fs::write(
        project.join("qemu-compose.yaml"),
        "vms:\n  app: {image: ./base.img}\n",
    )
    .unwrap();
    project
}

/// Removes volume `name` of `project`, if there is one (untimed set-up between runs).
pub fn remove_volume(project: &Path, name: &str) {
    let _ = Command::new(BIN)
        .args(["volume", "rm", "--force", name])
        .current_dir(project)
        .output();
}
