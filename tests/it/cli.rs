//! The real binary, run on fixture projects: exact exit codes, stdout and stderr.

use std::path::Path;
use std::process::{Command, Output};

use crate::harness::{BIN, Project, apply_env, assert_golden, fixture, text};

/// `qemu-compose ARGS` in `dir`, a folder that is not a [`Project`] (with the one
/// environment policy, and the image cache in `dir/xdg`).
fn command_in(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir);
    apply_env(&mut cmd, &dir.join("xdg"));
    cmd
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    command_in(dir, args).output().expect("the binary runs")
}

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
    // `-V` says the same wherever it is given.
    for args in [&["-V"][..], &["ps", "-V"], &["volume", "ls", "--version"]] {
        let out = p.run(args);
        assert_eq!(
            text(&out.stdout),
            format!("qemu-compose {}\n", env!("CARGO_PKG_VERSION")),
            "{args:?}"
        );
    }
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
        assert!(json["name"].is_string(), "{json}");
        assert!(json["vms"].as_object().is_some_and(|v| !v.is_empty()));
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
    // Blamed on -p, not on the compose file.
    let said = text(&out.stderr);
    assert!(
        said.starts_with("error: invalid value 'Bad Name' for '--project-name <NAME>': a project name must match [a-z0-9][a-z0-9_-]*"),
        "{said}"
    );
    assert!(!said.contains("qemu-compose.yaml"), "{said}");

    let out = p.run_in(&dir, &["-p", "other", "config", "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["name"], "other");

    // -f from anywhere (here, the empty folder of `p`); the project directory is the file's
    // directory.
    let file = dir.join("qemu-compose.yaml");
    let out = p.run(&[
        "-f",
        file.to_str().unwrap(),
        "config",
        "--model",
        "--format",
        "json",
    ]);
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
    assert!(config.contains("memory: 2048"), "{config}");
    let out = p
        .command(&["config"])
        .env("MEM", "768")
        .env("CPUS", "3")
        .output()
        .unwrap();
    let config = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        config.contains("memory: 768") && config.contains("cpu: 3"),
        "{config}"
    );
}

#[test]
fn destroy_volumes_with_vm_names_is_a_usage_error() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // clap names the arguments in the order they were given.
    for (args, message) in [
        (
            &["destroy", "-v", "web"][..],
            "error: the argument '--volumes' cannot be used with '[VMS]...'",
        ),
        (
            &["destroy", "web", "--volumes"][..],
            "error: the argument '[VMS]...' cannot be used with '--volumes'",
        ),
    ] {
        let out = run_in(dir.path(), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.starts_with(message), "{args:?}: {stderr}");
    }
}

/// A project of `count` VMs, each mounting its own named volume.
fn many_vms(count: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut compose = String::from("volumes:\n");
    for i in 0..count {
        compose += &format!("  data{i}: {{}}\n");
    }
    compose += "vms:\n";
    for i in 0..count {
        compose += &format!(
            "  vm{i}:\n    image: https://example.com/debian.qcow2\n    volumes: [\"data{i}:/data\"]\n"
        );
    }
    std::fs::write(dir.path().join("qemu-compose.yaml"), compose).unwrap();
    dir
}

/// Runs each command with stdout on a pipe whose reader is gone before anything is written;
/// each must end with status 0 and say nothing.
fn assert_quiet_into_closed_pipe(dir: &Path, commands: &[&[&str]]) {
    let mut failures = Vec::new();
    for args in commands {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = command_in(dir, args)
            .stdout(writer)
            .output()
            .expect("the binary runs");
        if out.status.code() != Some(0) || !out.stderr.is_empty() {
            failures.push(format!(
                "{args:?}: {:?}, {}",
                out.status.code(),
                text(&out.stderr)
                    .lines()
                    .take(2)
                    .collect::<Vec<_>>()
                    .join(" / ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn config_stops_quietly_when_the_reader_leaves_early() {
    // `qemu-compose config | head -1`: the reader takes one line and closes the pipe while
    // far more than a pipe buffer is still to come.
    use std::io::BufRead;
    let dir = many_vms(3000);
    let mut child = command_in(dir.path(), &["config"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("name: "), "{first}");
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "");
}

#[test]
fn printing_commands_stop_quietly_when_stdout_is_closed() {
    let dir = many_vms(3);
    assert_quiet_into_closed_pipe(
        dir.path(),
        &[
            &["config"],
            &["config", "--format", "json"],
            &["ps"],
            &["ps", "--format", "json"],
            &["ps", "-q"],
            &["volume", "ls"],
            &["volume", "ls", "--format", "json"],
            &["inspect", "vm1"],
            &["inspect", "vm1", "--format", "json"],
            &["version"],
            &["completion", "bash"],
            &["doctor"],
        ],
    );
}

#[test]
fn logs_stop_quietly_when_stdout_is_closed() {
    let dir = many_vms(2);
    let inspect = run_in(dir.path(), &["inspect", "vm0", "--format", "json"]);
    assert_eq!(inspect.status.code(), Some(0), "{}", text(&inspect.stderr));
    let info: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let log = Path::new(info["paths"]["serial_log"].as_str().unwrap());
    std::fs::create_dir_all(log.parent().unwrap()).unwrap();
    std::fs::write(log, "a line of the serial console\n".repeat(40_000)).unwrap();
    assert_quiet_into_closed_pipe(
        dir.path(),
        &[&["logs", "vm0"], &["logs"], &["logs", "--tail", "5"]],
    );
}

#[test]
fn a_full_stdout_is_an_error() {
    let dir = many_vms(1);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let out = command_in(dir.path(), &["config"])
        .stdout(full)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        "error: cannot write to standard output: No space left on device (os error 28)\n"
    );
}

/// The `QEMU_COMPOSE_*` names the program's source mentions.
fn variables_in_source() -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut dirs = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let source = std::fs::read_to_string(&path).unwrap();
            for (i, _) in source.match_indices("QEMU_COMPOSE_") {
                let name: String = source[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                names.insert(name.trim_end_matches('_').to_string());
            }
        }
    }
    names
}

#[test]
fn help_lists_every_environment_variable() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let help = text(&run_in(dir.path(), &["--help"]).stdout);
    // clap wraps long lines, even inside `[env: …]`.
    let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
    let names = variables_in_source();
    assert!(names.contains("QEMU_COMPOSE_ACCEL"), "{names:?}");
    for name in names {
        assert!(help.contains(&format!("[env: {name}")), "{name}:\n{help}");
    }
}

#[test]
fn environment_variables_work_as_before_and_empty_ones_count_as_unset() {
    let dir = fixture("seed-short-form");
    let config = |vars: &[(&str, &str)], args: &[&str]| {
        let mut cmd = command_in(&dir, args);
        cmd.envs(vars.iter().copied());
        let out = cmd
            .args(["config", "--model", "--format", "json"])
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{vars:?}: {}",
            text(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (json["name"].clone(), json["file"].clone())
    };
    let here = config(&[], &[]);
    assert_eq!(here.0, "seed-short-form");
    let empty = [
        ("QEMU_COMPOSE_FILE", ""),
        ("QEMU_COMPOSE_PROJECT_NAME", ""),
        ("QEMU_COMPOSE_QEMU", ""),
        ("QEMU_COMPOSE_ACCEL", ""),
    ];
    assert_eq!(config(&empty, &[]), here);
    assert_eq!(
        config(&[("QEMU_COMPOSE_PROJECT_NAME", "from-env")], &[]).0,
        "from-env"
    );
    assert_eq!(
        config(
            &[("QEMU_COMPOSE_PROJECT_NAME", "from-env")],
            &["-p", "flag"]
        )
        .0,
        "flag"
    );

    // The file named by the variable, relative to the current directory.
    let other = fixture("seed-long-form");
    let file = other.join("qemu-compose.yaml");
    let (name, found) = config(&[("QEMU_COMPOSE_FILE", file.to_str().unwrap())], &[]);
    assert_eq!(
        (name, found),
        ("seed-long-form".into(), file.to_str().into())
    );

    // The accelerator override reaches the decision, and says where it came from.
    let mut cmd = command_in(&dir, &["inspect", "named", "--format", "json"]);
    let out = cmd.env("QEMU_COMPOSE_ACCEL", "tcg").output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reason = json["accel"]["reason"].as_str().unwrap();
    assert!(reason.contains("QEMU_COMPOSE_ACCEL"), "{reason}");
}

#[test]
fn a_closed_stderr_does_not_stop_a_command() {
    let dir = many_vms(2);
    let closed = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        writer
    };
    // Progress first, on stderr, then the table on stdout.
    let out = command_in(dir.path(), &["--debug", "ps"])
        .stderr(closed())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("vm1"), "{}", text(&out.stdout));
    // An error nobody can read still gives its status.
    let out = command_in(dir.path(), &["inspect", "nosuchvm"])
        .stderr(closed())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // clap's own messages and help.
    let out = command_in(dir.path(), &["frobnicate"])
        .stderr(closed())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = command_in(dir.path(), &["--help"])
        .stdout(closed())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn boolean_variables_take_the_usual_spellings() {
    let p = Project::new("vms:\n  a: {image: ./x.img}\n");
    for (value, on) in [
        ("1", true),
        ("true", true),
        ("yes", true),
        ("on", true),
        ("0", false),
        ("false", false),
        ("no", false),
        ("off", false),
        ("", false),
    ] {
        let out = p
            .command(&["ps"])
            .env("QEMU_COMPOSE_DEBUG", value)
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{value:?}: {stderr}");
        assert_eq!(
            stderr.contains("status probes took"),
            on,
            "{value:?}: {stderr}"
        );
    }
    let out = p
        .command(&["ps"])
        .env("QEMU_COMPOSE_DEBUG", "maybe")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn loading_warns_about_unset_variables_and_an_ignored_yml() {
    let p = Project::new("vms:\n  a: {image: \"./${IMAGE_DIR}x.img\", user: \"${NO_USER}u\"}\n");
    std::fs::write(
        p.join("qemu-compose.yml"),
        "vms:\n  other: {image: ./y.img}\n",
    )
    .unwrap();
    let said = p.ok(&["config"]).stderr;
    assert!(
        said.contains(
            "qemu-compose.yaml:2:14: vms.a.image: the \"IMAGE_DIR\" variable is not set; using an empty string"
        ),
        "{said}"
    );
    assert!(said.contains("\"NO_USER\" variable is not set"), "{said}");
    assert!(said.contains("qemu-compose.yml; using "), "{said}");
}

#[test]
fn config_lists_vms_and_volumes() {
    let p = Project::new(
        "volumes:\n  b: {}\n  a: {}\nvms:\n  web: {image: ./x.img, depends_on: [db]}\n  db: {image: ./x.img}\n",
    );
    assert_eq!(p.ok(&["config", "--services"]).stdout, "web\ndb\n");
    assert_eq!(p.ok(&["config", "--vms"]).stdout, "web\ndb\n");
    assert_eq!(p.ok(&["config", "--volumes"]).stdout, "b\na\n");
}

#[test]
fn doctor_speaks_json_too() {
    let p = Project::empty();
    let out = p.run(&["doctor", "--format", "json"]);
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let checks = checks.as_array().unwrap();
    assert!(checks.iter().any(|c| c["topic"] == "qemu"), "{checks:?}");
    let failed = checks.iter().any(|c| c["level"] == "fail");
    assert_eq!(out.status.code(), Some(if failed { 1 } else { 0 }));
}
