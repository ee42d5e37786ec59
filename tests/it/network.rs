//! Project networks with real QEMU (bootless guests): allocation kept in `networks.json`, the
//! switch started by `up`, every NIC connected to it, a killed switch replaced by the next
//! `up` with the NICs reconnecting, and the switch ended by `stop`. What crosses the wire
//! between booted guests is the real-guest test's part (tests/e2e.rs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use qemu_compose::state::StateDir;

use crate::harness::{Project, alive, one_qemu_at_a_time, tool_ok};

const NETWORKED: &str = "
networks:
  back: {}
  other: {driver: bridge, subnet: 10.99.0.0/24}
vms:
  a: {image: ./base.qcow2, memory: 128, networks: [back]}
  b:
    image: ./base.qcow2
    memory: 128
    networks:
      back: {ipv4_address: 10.89.0.20, aliases: [pg]}
  c: {image: ./base.qcow2, memory: 128, networks: [other]}
";

impl Project {
    fn state(&self) -> StateDir {
        StateDir::new(&self.path().canonicalize().unwrap())
    }

    /// The pid of the project's switch while a process holds its lock. The lock, not the
    /// pid, is what says a switch runs: a killed switch's command line is gone before its
    /// files are closed, and `up` in that gap still sees the lock held.
    fn switch_pid(&self) -> Option<i32> {
        let running = qemu_compose::engine::network::switch_status(&self.state()).unwrap()?;
        Some(running.pid as i32)
    }

    /// The socket of the `nth` project-network NIC, as QEMU's argv of `vm` names it.
    fn socket_of(&self, vm: &str, nth: usize) -> PathBuf {
        let argv = self.record(vm)["argv"].clone();
        let stream = argv
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .filter(|a| a.starts_with("stream,"))
            .nth(nth)
            .unwrap()
            .to_owned();
        assert!(stream.contains(",reconnect-ms=1000"), "{stream}");
        let path = stream.split(",addr.path=").nth(1).unwrap();
        PathBuf::from(path.split(',').next().unwrap())
    }
}

/// How many clients are connected to the unix socket `path` (by `ss`).
fn clients(path: &Path) -> usize {
    let out = tool_ok("ss", &["-xHn", "state", "established"]);
    out.lines()
        .filter(|l| l.split_whitespace().any(|w| w == path.to_str().unwrap()))
        .count()
}

/// Waits up to 10 s for `n` clients on `path`.
fn wait_for_clients(path: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while clients(path) != n {
        assert!(
            Instant::now() < deadline,
            "{} has {} clients, not {n}",
            path.display(),
            clients(path)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn vms_on_a_network_are_joined_by_the_project_switch() {
    let _one = one_qemu_at_a_time();
    let p = Project::with_base(NETWORKED, "64M");
    p.ok(&["up"]);

    let registry: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.join(".qemu-compose/networks.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(registry["back"]["address"], "10.89.0.0");
    assert_eq!(registry["back"]["vms"]["a"]["address"], "10.89.0.2");
    assert_eq!(registry["back"]["vms"]["b"]["address"], "10.89.0.20");
    assert_eq!(registry["other"]["vms"]["c"]["address"], "10.99.0.2");

    // One switch, and every NIC is its client: two on `back`, one on `other`.
    let switch = p.switch_pid().expect("a running switch");
    let back = p.socket_of("a", 0);
    assert_eq!(p.socket_of("b", 0), back);
    let other = p.socket_of("c", 0);
    assert_ne!(back, other);
    wait_for_clients(&back, 2);
    wait_for_clients(&other, 1);

    // The guests' names: a sees b (with its alias), not c.
    let hosts = std::fs::read_to_string(p.private_dir("a").join("hosts/hosts")).unwrap();
    assert!(hosts.contains("10.89.0.20\tb.back b pg\n"), "{hosts}");
    assert!(!hosts.contains("10.99."), "{hosts}");
    let ps = p.ok(&["ps"]).stdout;
    assert!(ps.contains("back 10.89.0.2"), "{ps}");
    assert!(ps.contains("network switch: running"), "{ps}");
    let inspect = p.json(&["inspect", "b", "--format", "json"]);
    assert_eq!(
        inspect["network"]["networks"][0]["address"],
        "10.89.0.20/24"
    );
    assert_eq!(inspect["network"]["switch_running"], true);

    // A dead switch is replaced by the next `up`, and the NICs find it again.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(switch).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while p.switch_pid().is_some() {
        assert!(Instant::now() < deadline, "the killed switch lingers");
        std::thread::sleep(Duration::from_millis(50));
    }
    let stderr = p.ok(&["up"]).stderr;
    assert!(stderr.contains("VM a is already running"), "{stderr}");
    assert!(p.switch_pid().is_some_and(|pid| pid != switch));
    wait_for_clients(&back, 2);
    wait_for_clients(&other, 1);

    // A VM added later gets the next address; the running ones see it at once.
    p.write_compose(&format!(
        "{NETWORKED}  d: {{image: ./base.qcow2, memory: 128, networks: [back]}}\n"
    ));
    p.ok(&["up", "d"]);
    let hosts = std::fs::read_to_string(p.private_dir("a").join("hosts/hosts")).unwrap();
    assert!(hosts.contains("10.89.0.3\td.back d\n"), "{hosts}");
    wait_for_clients(&back, 3);

    // `stop` of one VM keeps the switch; of the last one ends it.
    p.ok(&["stop", "--force", "d"]);
    assert!(p.switch_pid().is_some());
    let last = p.switch_pid().unwrap();
    p.ok(&["stop", "--force"]);
    assert!(!alive(last), "the switch ends with the last VM");
    p.ok(&["destroy", "--force"]);
    assert!(!p.join(".qemu-compose/networks.json").exists());
}

#[test]
fn address_conflicts_are_refused_before_anything_starts() {
    let p = Project::with_base(
        &NETWORKED.replace(
            "c: {image: ./base.qcow2, memory: 128, networks: [other]}",
            "c: {image: ./base.qcow2, memory: 128, networks: {back: {ipv4_address: 10.89.0.20}}}",
        ),
        "64M",
    );
    let out = p.run(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = crate::harness::text(&out.stderr);
    assert!(
        stderr.contains("VMs b and c both ask for 10.89.0.20 on network back"),
        "{stderr}"
    );
    assert!(p.switch_pid().is_none());
    assert!(!p.private_dir("a").join("qemu.pid").exists());
    assert!(
        !p.join(".qemu-compose/vms").exists() && !p.join(".qemu-compose/networks.json").exists(),
        "nothing is made"
    );
}

#[test]
fn a_qemu_older_than_9_2_is_refused_for_networks() {
    let p = Project::with_base(NETWORKED, "64M");
    let fake = p.join("old-qemu");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho 'QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7)'\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = p.run(&["--qemu", fake.to_str().unwrap(), "up"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = crate::harness::text(&out.stderr);
    assert!(
        stderr.contains("VM(s) a, b, c are on project networks, which need QEMU 9.2 or later")
            && stderr.contains("QEMU emulator version 7.2.15"),
        "{stderr}"
    );
    assert!(!p.join(".qemu-compose/vms").exists(), "nothing is made");
    let doctor = p.run(&["--qemu", fake.to_str().unwrap(), "doctor"]);
    let said = crate::harness::all_text(&doctor);
    assert!(
        said.contains("project networks need QEMU 9.2 or later"),
        "{said}"
    );
}

/// `destroy` ends a running switch itself (no `stop` first), and when the sockets had to move
/// under the runtime folder (a long state path), nothing of the project is left there.
#[test]
fn destroy_ends_the_switch_and_leaves_no_relocated_socket() {
    let _one = one_qemu_at_a_time();
    let p = Project::with_base(
        "networks:\n  back: {}\nvms:\n  a: {image: ./base.qcow2, memory: 128, networks: [back]}\n",
        "64M",
    );
    // A state home so deep that the sockets move to the runtime folder.
    let deep = p.join("state").join("d".repeat(90));
    let runtime = p.join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    let run = |args: &[&str]| {
        let out = p
            .command(args)
            .env("XDG_STATE_HOME", &deep)
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["up"]);
    let projects: Vec<PathBuf> = std::fs::read_dir(runtime.join("qemu-compose"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(projects.len(), 1, "{projects:?}");
    let net = projects[0].join(".net");
    let socket = std::fs::read_dir(&net)
        .unwrap()
        .map(|e| e.unwrap().path())
        .next()
        .expect("the switch's socket");
    wait_for_clients(&socket, 1);
    let listening = || {
        tool_ok("ss", &["-xlHn"])
            .lines()
            .any(|l| l.split_whitespace().any(|w| w == socket.to_str().unwrap()))
    };
    assert!(listening(), "no switch listens on {}", socket.display());

    run(&["destroy", "-t", "1"]);
    assert!(
        !listening(),
        "the switch still listens on {}",
        socket.display()
    );
    assert_eq!(
        std::fs::read_dir(runtime.join("qemu-compose"))
            .unwrap()
            .count(),
        0,
        "destroy left the project's sockets under the runtime folder"
    );
}
