//! The real binary, run on fixture projects: exact exit codes, stdout and stderr.

use std::path::Path;

use crate::harness::{Project, assert_golden, fixture, text};

#[test]
fn version_prints_the_crate_version() {
    let p = Project::empty();
    let out = p.run(&["version"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        format!("qemu-compose {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn completion_scripts_name_every_command() {
    let p = Project::empty();
    for shell in ["bash", "zsh", "fish"] {
        let out = p.run(&["completion", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = text(&out.stdout);
        for cmd in ["up", "destroy", "volume", "config", "doctor"] {
            assert!(script.contains(cmd), "{shell} completion lacks {cmd}");
        }
    }
}

#[test]
fn help_lists_every_command_of_the_design() {
    let p = Project::empty();
    let out = p.run(&["--help"]);
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
    let p = Project::empty();
    let out = p.run(&["frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unrecognized subcommand 'frobnicate'"));
    let out = p.run(&["stop", "--timeout", "soon"]);
    assert_eq!(out.status.code(), Some(2));
}

/// Compares `actual` with `tests/golden/config/NAME`, with the fixture folder written as
/// `$DIR`.
fn assert_config_golden(name: &str, dir: &Path, actual: &str) {
    assert_golden(
        &format!("config/{name}"),
        actual.replace(dir.to_str().unwrap(), "$DIR"),
    );
}

#[test]
fn config_accepts_every_example_of_the_design() {
    let p = Project::empty();
    for name in [
        "design-example",
        "go-style",
        "seed-long-form",
        "seed-short-form",
    ] {
        let dir = fixture(name);
        let out = p.run_in(&dir, &["config", "-q"]);
        assert_eq!(out.status.code(), Some(0), "{name}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "", "{name}");
        assert_eq!(text(&out.stderr), "", "{name}");

        let out = p.run_in(&dir, &["config"]);
        assert_eq!(out.status.code(), Some(0));
        assert_config_golden(&format!("{name}.yaml"), &dir, &text(&out.stdout));

        let out = p.run_in(&dir, &["config", "--format", "json"]);
        assert_eq!(out.status.code(), Some(0));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["dir"], dir.to_str().unwrap());
        assert!(json["vms"].as_array().is_some_and(|v| !v.is_empty()));
    }
}

#[test]
fn config_reports_every_error_located_and_exits_2() {
    let p = Project::empty();
    let dir = fixture("invalid-many");
    let out = p.run_in(&dir, &["config"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stdout), "");
    assert_config_golden("invalid-many.stderr", &dir, &text(&out.stderr));
    // -q validates the same way.
    let quiet = p.run_in(&dir, &["config", "-q"]);
    assert_eq!(quiet.status.code(), Some(2));
    assert_eq!(quiet.stderr, out.stderr);
}

#[test]
fn project_name_and_file_options() {
    let p = Project::empty();
    let dir = fixture("seed-short-form");
    let out = p.run_in(&dir, &["-p", "Bad Name", "config", "-q"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("Bad Name"),
        "{}",
        text(&out.stderr)
    );

    let out = p.run_in(&dir, &["-p", "other", "config", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["name"], "other");

    // -f from anywhere (here, the empty folder of `p`); the project directory is the file's
    // directory.
    let file = dir.join("qemu-compose.yaml");
    let out = p.run(&["-f", file.to_str().unwrap(), "config", "--format", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["dir"], dir.to_str().unwrap());
}

#[test]
fn a_missing_compose_file_is_explained() {
    // Under the target folder (see `Project`): no stray qemu-compose.yaml in /tmp can be found
    // from here.
    let p = Project::empty();
    let out = p.run(&["config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no qemu-compose.yaml or qemu-compose.yml in"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn each_cause_of_an_error_is_printed_once() {
    let p = Project::new("vms:\n  a: {image: ./base.img}\n");
    // A file where the state folder should be.
    std::fs::write(p.join(".qemu-compose"), "").unwrap();
    let stderr = p.fails(&["volume", "create", "v", "--size", "8M"]);
    assert_eq!(stderr.matches("File exists").count(), 1, "{stderr}");
    assert!(stderr.contains(".qemu-compose: File exists"), "{stderr}");
}

#[test]
fn interpolated_numbers_are_numbers() {
    let p = Project::new(
        "vms:\n  a: {image: ./x.img, memory: \"${MEM:-2048}\", cpu: \"${CPUS:-2}\"}\n",
    );
    let config = p.ok(&["config"]).stdout;
    assert!(config.contains("memory_mib: 2048"), "{config}");
    let out = p
        .command(&["config"])
        .env("MEM", "768")
        .env("CPUS", "3")
        .output()
        .unwrap();
    let config = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        config.contains("memory_mib: 768") && config.contains("cpu: 3"),
        "{config}"
    );
}
