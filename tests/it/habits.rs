//! Compose as docker compose users know it: several files and the override file, profiles,
//! and `config` printing a compose file that `-f` takes back (docs/compose.md).

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use crate::harness::{Project, assert_golden, fixture, text};

/// Compares `actual` with `tests/golden/config/NAME`, with the fixture folder written as
/// `$DIR`.
fn assert_config_golden(name: &str, dir: &Path, actual: &str) {
    assert_golden(
        &format!("config/{name}"),
        actual.replace(dir.to_str().unwrap(), "$DIR"),
    );
}

/// `config` of the fixture `overrides` with `ci.yaml` instead of the override file, and the
/// profile `debug`.
const CI_DEBUG_CONFIG: [&str; 7] = [
    "-f",
    "qemu-compose.yaml",
    "-f",
    "ci.yaml",
    "--profile",
    "debug",
    "config",
];

/// A project holding copies of the files of the fixture `overrides`.
fn overrides_project() -> Project {
    let p = Project::empty();
    for name in ["qemu-compose.yaml", "qemu-compose.override.yaml", "ci.yaml"] {
        std::fs::copy(fixture("overrides").join(name), p.join(name)).unwrap();
    }
    p
}

/// `qemu-compose ARGS` in `dir` with `input` on standard input; must succeed.
fn with_stdin(p: &Project, dir: &Path, args: &[&str], input: &str) -> String {
    let mut child = p
        .command_in(dir, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    text(&out.stdout)
}

#[test]
fn the_override_file_and_several_f_merge_as_docker_does() {
    let p = Project::empty();
    let dir = fixture("overrides");
    // Without -f, qemu-compose.override.yaml beside the main file is merged.
    let merged = p.ok_in(&dir, &["config"]);
    assert_eq!(merged.stderr, "");
    assert_config_golden("overrides.yaml", &dir, &merged.stdout);
    // With -f, only the files named, in order; --profile adds the VMs of `debug`.
    let ci = p.ok_in(&dir, &CI_DEBUG_CONFIG);
    assert_config_golden("overrides-ci-debug.yaml", &dir, &ci.stdout);
}

#[test]
fn config_output_loads_back_to_the_same_output() {
    let p = Project::empty();
    let dir = fixture("overrides");
    for args in [
        &["config"][..],
        &CI_DEBUG_CONFIG,
        &[&CI_DEBUG_CONFIG[..], &["--format", "json"]].concat(),
    ] {
        let first = p.ok_in(&dir, args).stdout;
        let format = if args.contains(&"json") {
            &["--format", "json"][..]
        } else {
            &[]
        };
        let config_of = |file| [&["-f", file, "--profile", "debug", "config"][..], format].concat();
        // Through standard input, from another folder: paths in the output are absolute.
        let again = with_stdin(&p, p.path(), &config_of("-"), &first);
        assert_eq!(again, first, "{args:?}");
        // And through a file.
        std::fs::write(p.join("printed.yaml"), &first).unwrap();
        assert_eq!(p.ok(&config_of("printed.yaml")).stdout, first, "{args:?}");
    }
    // A `$` the user wrote (as `$$`) stays a `$`: the printed file doubles it again, so
    // loading it back does not put the host's $HOME into the guest.
    let dollars = Project::new(
        "vms:\n  a:\n    image: ./x.img\n    environment: {HOME_LITERAL: \"$$HOME\"}\n    provision: [\"echo $$PATH\"]\n    healthcheck: {test: [CMD-SHELL, \"echo $$USER\"]}\n",
    );
    let first = dollars.ok(&["config"]).stdout;
    assert!(
        first.contains("$$HOME") && first.contains("echo $$USER"),
        "{first}"
    );
    std::fs::write(dollars.join("printed.yaml"), &first).unwrap();
    assert_eq!(dollars.ok(&["-f", "printed.yaml", "config"]).stdout, first);
    let model = dollars.json(&[
        "-f",
        "printed.yaml",
        "config",
        "--model",
        "--format",
        "json",
    ]);
    let vm = &model["vms"][0];
    assert_eq!(vm["environment"]["HOME_LITERAL"], "$HOME", "{model}");
    assert_eq!(vm["provision"][0], "echo $PATH", "{model}");

    // Every example of the design loads back the same way.
    for name in [
        "design-example",
        "go-style",
        "seed-long-form",
        "seed-short-form",
    ] {
        let first = p.ok_in(&fixture(name), &["config"]).stdout;
        assert_eq!(
            with_stdin(&p, p.path(), &["-f", "-", "config"], &first),
            first,
            "{name}"
        );
    }
}

#[test]
fn profiles_leave_vms_out_unless_selected_or_named() {
    let p = overrides_project();
    let vms = |args: &[&str]| p.ok(args).stdout;
    assert_eq!(vms(&["config", "--services"]), "db\nweb\n");
    let ci = ["-f", "qemu-compose.yaml", "-f", "ci.yaml"];
    assert_eq!(
        vms(&[&ci[..], &["--profile", "ci", "config", "--services"]].concat()),
        "db\nweb\ntests\n"
    );
    // The variable takes a comma-separated list.
    let out = p
        .command(&[&ci[..], &["config", "--services"]].concat())
        .env("QEMU_COMPOSE_PROFILES", "debug,ci")
        .output()
        .unwrap();
    assert_eq!(text(&out.stdout), "db\nweb\ndebug\ntests\n");

    // A VM named on the command line is used whatever its profiles; ps without names lists
    // only the VMs in use.
    let names = |json: serde_json::Value| -> Vec<String> {
        json.as_array()
            .unwrap()
            .iter()
            .map(|vm| vm["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(p.json(&["ps", "--format", "json"])), ["db", "web"]);
    assert_eq!(
        names(p.json(&["ps", "debug", "--format", "json"])),
        ["debug"]
    );
    let unknown = p.run(&["ps", "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn errors_name_the_file_they_are_in() {
    let p = Project::new("vms:\n  db:\n    image: ./base.qcow2\n    cpu: two\n");
    std::fs::write(
        p.join("qemu-compose.override.yaml"),
        "vms:\n  db:\n    memroy: 1G\n    profiles: [\"bad name\"]\n",
    )
    .unwrap();
    let out = p.run(&["config"]);
    assert_eq!(out.status.code(), Some(2));
    let dir = p.path().canonicalize().unwrap();
    let main = dir.join("qemu-compose.yaml");
    let over = dir.join("qemu-compose.override.yaml");
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}:4:10: vms.db.cpu: expected a whole number, found \"two\"\n\
             error: {}:3:5: vms.db.memroy: unknown key \"memroy\" (did you mean \"memory\"?)\n\
             error: {}:4:16: vms.db.profiles[0]: profile name \"bad name\" must match [a-zA-Z0-9][a-zA-Z0-9_.-]*\n",
            main.display(),
            over.display(),
            over.display()
        )
    );
    // A syntax error in a later file names that file.
    std::fs::write(p.join("qemu-compose.override.yaml"), "vms: [\n").unwrap();
    let out = p.run(&["config"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).starts_with(&format!("error: {}:", over.display())),
        "{}",
        text(&out.stderr)
    );
}

/// Two bootless VMs, `web` depending on `db`, that give up powering off after 1 s.
const TWO_VMS: &str = "
volumes:
  data: {size: 1G}
vms:
  db:
    image: ./base.qcow2
    memory: 128
    stop_grace_period: 1s
    volumes: ['data:/data']
  web:
    image: ./base.qcow2
    memory: 128
    stop_grace_period: 1s
    depends_on: [db]
";

/// The `ps --format json` status of each VM, in compose order.
fn statuses(p: &Project) -> Vec<String> {
    p.json(&["ps", "--format", "json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|vm| {
            format!(
                "{}={}",
                vm["name"].as_str().unwrap(),
                vm["status"].as_str().unwrap()
            )
        })
        .collect()
}

#[test]
fn start_pause_unpause_restart_and_down_with_a_real_qemu() {
    let _one = crate::harness::one_qemu_at_a_time();
    let p = Project::with_base(TWO_VMS, "64M");

    // `start` creates nothing.
    let refused = p.fails(&["start", "web"]);
    assert!(
        refused.contains("VM db, web was never created (or was destroyed); `qemu-compose up db web` creates and starts it"),
        "{refused}"
    );
    assert!(!p.join(".qemu-compose").join("vms").exists());
    p.ok(&["up", "--no-start"]);
    assert_eq!(statuses(&p), ["db=stopped", "web=stopped"]);

    // `start web` starts what it depends on first.
    let said = p.ok(&["start", "web"]).stderr;
    let db_at = said.find("started VM db").expect(&said);
    let web_at = said.find("started VM web").expect(&said);
    assert!(db_at < web_at, "{said}");
    let (db_pid, web_pid) = (p.pid("db").unwrap(), p.pid("web").unwrap());

    // `port VM 22` names the SSH forward `up` chose, as ps shows it.
    let ssh = p.ok(&["port", "db", "22"]).stdout;
    let ps = p.json(&["ps", "db", "--format", "json"]);
    assert_eq!(ssh.trim(), ps[0]["ssh"].as_str().unwrap());

    // pause freezes the guest: QEMU runs, QMP says paused, ps says paused.
    assert_eq!(p.ok(&["pause", "db"]).stderr, "paused VM db\n");
    assert_eq!(statuses(&p), ["db=paused", "web=starting"]);
    assert_eq!(p.pid("db"), Some(db_pid));
    // unpause without names: every running VM.
    assert_eq!(
        p.ok(&["unpause"]).stderr,
        "unpaused VM db\nunpaused VM web\n"
    );
    assert_eq!(statuses(&p), ["db=starting", "web=starting"]);

    // restart of a paused VM: it is let run so that it can power off, then started again.
    p.ok(&["pause", "db"]);
    let said = p.ok(&["restart", "db"]).stderr;
    assert!(said.contains("started VM db"), "{said}");
    let new_db = p.pid("db").unwrap();
    assert_ne!(new_db, db_pid);
    assert!(crate::harness::alive(new_db));
    assert_eq!(p.pid("web"), Some(web_pid));
    assert_eq!(statuses(&p), ["db=starting", "web=starting"]);

    // restart of a VM whose dependency was destroyed: refused before web stops.
    p.ok(&["destroy", "--force", "db"]);
    let refused = p.fails(&["restart", "web"]);
    assert!(refused.contains("VM db was never created"), "{refused}");
    assert_eq!(p.pid("web"), Some(web_pid));
    p.ok(&["up", "--no-start", "db"]);

    // down is destroy: -v also removes the declared volumes.
    let said = p.ok(&["down", "-v"]).stderr;
    assert!(
        said.contains("removed VM db") && said.contains("removed VM web"),
        "{said}"
    );
    assert_eq!(statuses(&p), ["db=not-created", "web=not-created"]);
    assert!(!p.join(".qemu-compose/volumes/data").exists());
    assert!(!crate::harness::alive(web_pid));
    assert_eq!(
        p.fails(&["pause"]),
        "error: no VM of the project is running\n"
    );
    assert_eq!(p.fails(&["unpause", "db"]), "error: VM db is not running\n");
}

#[test]
fn port_prints_the_host_side_of_a_forward() {
    let p = Project::new(
        "vms:\n  web:\n    image: ./base.qcow2\n    ports: ['127.0.0.1:18080:80', '8053:53/udp', '[::1]:18443:443']\n  db:\n    image: ./base.qcow2\n    ssh: {port: 2299}\n",
    );
    assert_eq!(p.ok(&["port", "web", "80"]).stdout, "127.0.0.1:18080\n");
    assert_eq!(
        p.ok(&["port", "web", "53", "--protocol", "udp"]).stdout,
        "0.0.0.0:8053\n"
    );
    assert_eq!(p.ok(&["port", "web", "443"]).stdout, "[::1]:18443\n");
    assert_eq!(p.ok(&["port", "db", "22"]).stdout, "127.0.0.1:2299\n");
    assert_eq!(
        p.fails(&["port", "web", "53"]),
        "error: VM web forwards no host port to its port 53/tcp\n"
    );
    assert_eq!(
        p.fails(&["port", "web", "22"]),
        "error: VM web has no SSH port yet: `up` chooses one when it starts the VM\n"
    );
    let usage = p.run(&["port", "nope", "80"]);
    assert_eq!(usage.status.code(), Some(2));
    let usage = p.run(&["port", "web", "http"]);
    assert_eq!(usage.status.code(), Some(2));
}

/// A stand-in for the system `ssh`, first on `PATH`: it runs the remote command (the word
/// after `--`) on this host. A bootless VM has no guest to run a health check in; with this,
/// a check passes once a file appears on the host, so what is tested here is the engine's
/// waiting, ordering and bookkeeping (tests/e2e.rs runs checks in a real guest). Returns the
/// `PATH` to give the command.
fn stub_ssh(p: &Project) -> String {
    let bin = p.join("stub-bin");
    std::fs::create_dir_all(&bin).unwrap();
    let script = bin.join("ssh");
    std::fs::write(
        &script,
        "#!/bin/sh\nwhile [ \"$#\" -gt 0 ] && [ \"$1\" != -- ]; do shift; done\n[ \"$#\" -gt 1 ] || exit 255\nshift\nexec sh -c \"$*\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap())
}

/// `db` with a health check that passes once `marker` exists, `web` needing it healthy.
fn healthy_pair(marker: &Path, retries: u32) -> String {
    format!(
        "
vms:
  db:
    image: ./base.qcow2
    memory: 128
    stop_grace_period: 1s
    healthcheck:
      test: [CMD-SHELL, 'test -e {} && echo db is up']
      interval: 1s
      timeout: 5s
      retries: {retries}
  web:
    image: ./base.qcow2
    memory: 128
    stop_grace_period: 1s
    depends_on: {{db: {{condition: service_healthy}}}}
",
        marker.display()
    )
}

#[test]
fn a_vm_starts_once_its_dependency_is_healthy_and_up_wait_reports_unhealthy() {
    let _one = crate::harness::one_qemu_at_a_time();
    let p = Project::empty();
    crate::harness::qemu_img_create(&p.join("base.qcow2"), "64M");
    let marker = p.join("db-ready");
    p.write_compose(&healthy_pair(&marker, 100));
    let path = stub_ssh(&p);
    let json = |args: &[&str]| -> serde_json::Value {
        let out = p.command(args).env("PATH", &path).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let up = p
        .command(&["up"])
        .env("PATH", &path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while p.pid("db").is_none() {
        assert!(std::time::Instant::now() < until, "db did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // db runs and its check fails: web waits, not even created.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let ps = json(&["ps", "--format", "json"]);
    assert_eq!(ps[0]["status"], "starting", "{ps}");
    assert_eq!(ps[1]["status"], "not-created", "{ps}");
    let db_health = &ps[0]["health"];
    assert_eq!(db_health["status"], "starting");
    assert_ne!(db_health["log"][0]["exit_code"], 0, "{db_health}");
    assert!(p.pid("web").is_none());

    std::fs::write(&marker, "").unwrap();
    let out = up.wait_with_output().unwrap();
    let said = text(&out.stderr);
    assert!(out.status.success(), "{said}");
    let order: Vec<usize> = [
        "started VM db",
        "VM web waits for VM db to be healthy",
        "VM db is healthy",
        "started VM web",
    ]
    .iter()
    .map(|line| {
        said.find(line)
            .unwrap_or_else(|| panic!("{line:?} not in:\n{said}"))
    })
    .collect();
    assert!(order.is_sorted(), "{said}");

    let ps = json(&["ps", "--format", "json"]);
    assert_eq!(ps[0]["status"], "healthy", "{ps}");
    assert_eq!(ps[1]["status"], "starting", "{ps}");
    let last = ps[0]["health"]["log"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (last["exit_code"].as_i64(), last["output"].as_str()),
        (Some(0), Some("db is up\n"))
    );
    let inspect = json(&["inspect", "db", "--format", "json"]);
    assert_eq!(inspect["health"]["status"], "healthy");
    assert_eq!(inspect["state"]["status"], "healthy");
    assert!(ps[1].get("health").is_none(), "web has no check: {ps}");

    // `up --wait` waits for the check, not for SSH.
    let out = p
        .command(&["up", "--wait", "db"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("VM db is healthy"));

    // With retries: 2, as docker does: one failure leaves the VM healthy, the second in a
    // row makes it unhealthy, and `up --wait` fails naming it with the check's output.
    std::fs::remove_file(&marker).unwrap();
    p.write_compose(&healthy_pair(&marker, 2));
    let wait_db = || {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        p.command(&["up", "--wait", "--wait-timeout", "30", "db"])
            .env("PATH", &path)
            .output()
            .unwrap()
    };
    let out = wait_db();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ps = json(&["ps", "--format", "json"]);
    assert_eq!(ps[0]["status"], "healthy", "{ps}");
    assert_eq!(ps[0]["health"]["failing_streak"], 1, "{ps}");
    let out = wait_db();
    assert_eq!(out.status.code(), Some(1));
    let said = text(&out.stderr);
    assert!(
        said.ends_with("error: VM db: is unhealthy; last check exited 1\n"),
        "{said}"
    );
    let ps = json(&["ps", "--format", "json"]);
    assert_eq!(ps[0]["status"], "unhealthy", "{ps}");
    assert_eq!(ps[0]["health"]["failing_streak"], 2, "{ps}");
}

/// The one-off instance name `run` reported starting (`web-run-1a2b3c`).
fn one_off_name(stderr: &str) -> String {
    let at = stderr.find("started VM web-run-").expect(stderr) + "started VM ".len();
    stderr[at..].split(' ').next().unwrap().to_owned()
}

/// The one-off instance of `web` whose QEMU runs, once there is one (up to a minute); never
/// panics, so that the caller can wait for its `run` before failing.
fn started_one_off(p: &Project) -> Option<String> {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let one_off = std::fs::read_dir(p.join(".qemu-compose/vms"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .find(|n| n.starts_with("web-run-") && p.pid(n).is_some());
        if one_off.is_some() || std::time::Instant::now() >= until {
            return one_off;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `run --rm --no-deps --wait-timeout SECS web true` in the background.
fn spawn_run_rm(p: &Project, secs: &str) -> std::process::Child {
    p.command(&[
        "run",
        "--rm",
        "--no-deps",
        "--wait-timeout",
        secs,
        "web",
        "true",
    ])
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}

/// Whether a process whose command line mentions `word` exists.
fn process_mentions(word: &str) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        std::fs::read(entry.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains(word))
    })
}

#[test]
fn run_starts_a_one_off_instance_and_rm_leaves_nothing_behind() {
    let _one = crate::harness::one_qemu_at_a_time();
    let p = Project::with_base(TWO_VMS, "64M");
    assert_eq!(p.run(&["run", "nope", "--", "true"]).status.code(), Some(2));
    let gone = |name: &str| {
        !p.join(".qemu-compose/vms").join(name).exists()
            && !p.private_dir(name).exists()
            && !process_mentions(name)
    };

    // --no-deps: only the one-off instance starts; a bootless one never answers SSH, and
    // --rm removes it after that failure.
    let out = p.run(&[
        "run",
        "--rm",
        "--no-deps",
        "--wait-timeout",
        "2",
        "web",
        "--",
        "true",
    ]);
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let name = one_off_name(&said);
    assert!(said.contains(&format!("removed VM {name}")), "{said}");
    assert!(
        said.ends_with(&format!(
            "error: VM {name}: did not answer SSH within 2 s\n"
        )),
        "{said}"
    );
    assert!(gone(&name), "{name} left behind");
    assert_eq!(p.pid("db"), None);

    // Without --no-deps, what the VM depends on starts first, and stays.
    let out = p.run(&["run", "--rm", "--wait-timeout", "2", "web", "true"]);
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let name = one_off_name(&said);
    assert!(
        said.find("started VM db").unwrap() < said.find(&format!("started VM {name}")).unwrap(),
        "{said}"
    );
    assert!(gone(&name), "{name} left behind");
    assert!(p.pid("db").is_some());

    // A volume that a running VM writes cannot be attached to a one-off instance: refused
    // before anything is made.
    let refused = p.fails(&["run", "--rm", "db", "--", "true"]);
    assert_eq!(
        refused,
        "error: volume data is attached read-write by the running VM db, so a one-off instance of db cannot attach it; stop db, or run the command there with `qemu-compose ssh db -- …`\n"
    );

    // While a one-off instance runs, `ps` does not call it an orphan.
    let child = spawn_run_rm(&p, "10");
    // Nothing here may panic before the child is waited for: the project folder would go
    // while the child still needs it to remove its instance.
    let running = started_one_off(&p);
    let ps = p.run(&["ps"]);
    let out = child.wait_with_output().unwrap();
    let running = running.expect("a one-off instance started");
    assert!(!text(&ps.stderr).contains("orphan"), "{}", text(&ps.stderr));
    assert_eq!(out.status.code(), Some(1));
    assert!(gone(&running), "{running} left behind");

    // Ctrl-C while it waits: the instance is removed, and the status is 130.
    let child = spawn_run_rm(&p, "60");
    let waiting = started_one_off(&p);
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let out = child.wait_with_output().unwrap();
    let waiting = waiting.expect("a one-off instance started");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(gone(&waiting), "{waiting} left behind after Ctrl-C");

    // Without --rm the instance is kept, stopped; it is then an orphan that
    // `down --remove-orphans` removes.
    let out = p.run(&["run", "--no-deps", "--wait-timeout", "1", "web", "true"]);
    let said = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    let name = one_off_name(&said);
    assert!(
        said.contains(&format!(
            "kept the one-off instance {name} (stopped); `qemu-compose down --remove-orphans` removes it"
        )),
        "{said}"
    );
    assert!(p.join(".qemu-compose/vms").join(&name).exists());
    assert_eq!(p.pid(&name), None);
    let said = p.ok(&["down", "--remove-orphans", "--force"]).stderr;
    assert!(said.contains(&format!("removed VM {name}")), "{said}");
    assert!(gone(&name));
}

#[test]
fn up_takes_docker_s_detach_flag() {
    let p = Project::with_base(TWO_VMS, "64M");
    let said = p.ok(&["up", "-d", "--no-start", "db"]).stderr;
    assert!(said.contains("created VM db (not started)"), "{said}");
    assert_eq!(statuses(&p), ["db=stopped", "web=not-created"]);
}

#[test]
fn config_writes_network_settings_and_conditions_in_the_long_form() {
    let p = Project::new(
        "networks:\n  back: {subnet: 10.89.0.0/24}\n  front: {}\nvms:\n  db:\n    image: ./base.qcow2\n    networks: {back: {ipv4_address: 10.89.0.10, aliases: [pg]}, front: {}}\n    healthcheck: {test: pg_isready, interval: 1500ms}\n  web:\n    image: ./base.qcow2\n    networks: [front]\n    depends_on: {db: {condition: service_healthy}}\n",
    );
    let first = p.ok(&["config"]).stdout;
    for expected in [
        "    networks:\n      back:\n        ipv4_address: \"10.89.0.10\"\n        aliases:\n        - pg\n      front: {}\n",
        "    healthcheck:\n      test:\n      - CMD-SHELL\n      - pg_isready\n      interval: 1500ms\n",
        "    depends_on:\n      db:\n        condition: service_healthy\n    networks:\n    - front\n",
    ] {
        assert!(first.contains(expected), "{expected:?} not in:\n{first}");
    }
    assert_eq!(
        with_stdin(&p, p.path(), &["-f", "-", "config"], &first),
        first
    );
}

#[test]
fn a_cmd_check_runs_its_words_as_arguments_not_as_shell_text() {
    let _one = crate::harness::one_qemu_at_a_time();
    let p = Project::empty();
    crate::harness::qemu_img_create(&p.join("base.qcow2"), "64M");
    // One word with a space and a `;`: docker runs it as one program; a shell reading it as
    // text would run `…/my` and then `check`.
    let program = p.join("my check;x");
    std::fs::write(&program, "#!/bin/sh\necho checked \"$@\"\n").unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    p.write_compose(&format!(
        "vms:\n  db:\n    image: ./base.qcow2\n    memory: 128\n    stop_grace_period: 1s\n    healthcheck:\n      test: [CMD, {:?}, 'a b']\n      interval: 1s\n",
        program.display().to_string()
    ));
    let path = stub_ssh(&p);
    let out = p
        .command(&["up", "--wait", "--wait-timeout", "30"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = p
        .command(&["ps", "--format", "json"])
        .env("PATH", &path)
        .output()
        .unwrap();
    let ps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let log = ps[0]["health"]["log"].as_array().unwrap();
    assert_eq!(log.last().unwrap()["output"], "checked a b\n", "{ps}");
    // The single-word form too.
    p.write_compose(&format!(
        "vms:\n  db:\n    image: ./base.qcow2\n    memory: 128\n    stop_grace_period: 1s\n    healthcheck:\n      test: [CMD, {:?}]\n      interval: 1s\n",
        program.display().to_string()
    ));
    let out = p
        .command(&["up", "--wait", "--wait-timeout", "30", "--force-recreate"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    p.ok(&["down", "-t", "1"]);
}

/// The main file of the tag tests: everything that a later file's tags take away.
const TAGGED_BASE: &str = "name: tags
vms:
  db:
    image: ./base.qcow2
    cpu: 4
    ports: [\"5432:5432\"]
    volumes: [\"./conf:/etc/db:ro\"]
    environment: {MODE: dev, LOG: info}
";

/// `config` of `TAGGED_BASE` once docker's tags have reset `cpu`, `ports` and `volumes` and
/// replaced `environment`: the defaults, and only the override's variable.
const TAGGED_CONFIG: &str = "name: tags
vms:
  db:
    image: $DIR/base.qcow2
    cpu: 1
    memory: 1024
    disk:
      size: 10G
    user: ubuntu
    accel: auto
    environment:
      A: \"1\"
";

#[test]
fn reset_and_override_tags_change_the_merge_as_docker_does() {
    let p = Project::new(TAGGED_BASE);
    let dir = p.path().canonicalize().unwrap();
    let config = |args: &[&str]| {
        let out = p.ok(args);
        assert_eq!(out.stderr, "", "{args:?}");
        out.stdout.replace(dir.to_str().unwrap(), "$DIR")
    };
    // Without tags the same keys merge: the base's port, volume and variables stay.
    std::fs::write(
        p.join("qemu-compose.override.yaml"),
        "vms:\n  db:\n    cpu: 8\n    ports: []\n    volumes: []\n    environment: {A: 1}\n",
    )
    .unwrap();
    let merged = config(&["config"]);
    for kept in [
        "cpu: 8",
        "5432:5432/tcp",
        "target: /etc/db",
        "MODE: dev",
        "A: \"1\"",
    ] {
        assert!(merged.contains(kept), "{kept}: {merged}");
    }
    // Block style, in the override file; the tags are gone from what config prints.
    std::fs::write(
        p.join("qemu-compose.override.yaml"),
        "vms:\n  db:\n    cpu: !reset 8\n    ports: !reset []\n    volumes: !reset []\n    environment: !override\n      A: 1\n",
    )
    .unwrap();
    assert_eq!(config(&["config"]), TAGGED_CONFIG);
    // Flow style, in a file given with -f.
    std::fs::write(
        p.join("flow.yaml"),
        "vms: {db: {cpu: !reset null, ports: !reset [], volumes: !reset [], environment: !override {A: 1}}}\n",
    )
    .unwrap();
    assert_eq!(
        config(&["-f", "qemu-compose.yaml", "-f", "flow.yaml", "config"]),
        TAGGED_CONFIG
    );
    // A later file sets again what an earlier one reset.
    std::fs::write(
        p.join("again.yaml"),
        "vms:\n  db:\n    ports: ['2222:22']\n",
    )
    .unwrap();
    let again = config(&[
        "-f",
        "qemu-compose.yaml",
        "-f",
        "flow.yaml",
        "-f",
        "again.yaml",
        "config",
    ]);
    assert!(
        again.contains("ports:\n    - 2222:22/tcp\n") && !again.contains("5432"),
        "{again}"
    );
    // In the main file, `!reset` leaves the key out and `!override` is the value.
    p.write_compose(
        "name: tags\nvms:\n  db:\n    image: ./base.qcow2\n    cpu: !reset 4\n    memory: !override 2048\n",
    );
    std::fs::remove_file(p.join("qemu-compose.override.yaml")).unwrap();
    let main = config(&["config"]);
    assert!(
        main.contains("cpu: 1\n") && main.contains("memory: 2048\n") && !main.contains('!'),
        "{main}"
    );
}

#[test]
fn other_tags_are_refused_with_their_place() {
    let p = Project::new(TAGGED_BASE);
    let over = p
        .path()
        .canonicalize()
        .unwrap()
        .join("qemu-compose.override.yaml");
    std::fs::write(
        &over,
        "vms:\n  db:\n    memory: !foo 2048\n    environment: {A: !secret x}\n    ports: [!reset '80:80']\n",
    )
    .unwrap();
    let out = p.run(&["config"]);
    assert_eq!(out.status.code(), Some(2));
    let unknown = "only docker compose's `!reset` and `!override`, and YAML's own tags (`!!str`, `!!int`...), are read";
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {o}:3:13: unknown YAML tag `!foo`: {unknown}\n\
             error: {o}:4:22: unknown YAML tag `!secret`: {unknown}\n\
             error: {o}:5:13: `!reset` applies to the value of a key, not to a list item or the whole file\n",
            o = over.display()
        )
    );
    // YAML's own tags are read as YAML says: a string, a number.
    std::fs::write(
        &over,
        "vms:\n  db:\n    memory: !!str 2048\n    cpu: !!int '2'\n",
    )
    .unwrap();
    let ok = p.ok(&["config"]);
    assert!(
        ok.stdout.contains("memory: 2048\n") && ok.stdout.contains("cpu: 2\n"),
        "{}",
        ok.stdout
    );
}
