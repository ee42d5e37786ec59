//! The real binary, run on fixture projects: exact exit codes, stdout and stderr.

use std::path::Path;
use std::process::{Command, Output};

/// Runs `qemu-compose ARGS` in `dir` with a clean environment (no QEMU_COMPOSE_* leaking in).
fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qemu-compose"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn version_prints_the_crate_version() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        format!("qemu-compose {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn completion_scripts_name_every_command() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = run_in(dir.path(), &["completion", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = text(&out.stdout);
        for cmd in ["up", "destroy", "volume", "config", "doctor"] {
            assert!(script.contains(cmd), "{shell} completion lacks {cmd}");
        }
    }
}

#[test]
fn help_lists_every_command_of_the_design() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for cmd in [
        "up",
        "stop",
        "destroy",
        "ps",
        "inspect",
        "console",
        "ssh",
        "logs",
        "pull",
        "image",
        "volume",
        "config",
        "doctor",
        "version",
        "completion",
    ] {
        assert!(
            help.lines()
                .any(|l| l.trim_start().starts_with(&format!("{cmd} "))),
            "--help lacks {cmd}:\n{help}"
        );
    }
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_in(dir.path(), &["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unrecognized subcommand 'frobnicate'"));
    let out = run_in(dir.path(), &["stop", "--timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2));
}
