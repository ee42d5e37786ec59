//! The commands of running VMs (`ps`, `inspect`, `logs`, `console`, `ssh`, `pull`, `image`,
//! `doctor`) run as the real binary in temporary projects, with the real
//! `qemu-system-x86_64` under TCG. The guests have no OS: either an empty qcow2 made by
//! `qemu-img` (the firmware finds nothing to boot and waits), or a one-sector raw disk whose
//! boot sector prints a banner on the serial port and echoes what it receives. Every project
//! holds a guard that runs `destroy --force` when the test ends, however it ends.
//!
//! Projects live under Cargo's target tmp folder rather than /tmp, so that no stray compose
//! file in a parent folder is discovered.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::{
    BIN, Project, one_qemu_at_a_time, private_dir, qemu_img_create, qemu_img_info, text, tool,
};

/// What the boot sector prints first.
const BANNER: &str = "QEMU-COMPOSE TEST GUEST READY";

/// A 16-bit real-mode boot sector (loaded at 0000:7C00 by the BIOS): print the banner on
/// COM1, then forever wait for a received byte (LSR bit 0), clear its bit 5 (ASCII letters
/// become upper case) and send it back. The upper-casing tells the guest's echo apart from a
/// terminal's local echo.
fn boot_sector() -> Vec<u8> {
    #[rustfmt::skip]
    let code: [u8; 35] = [
        0x31, 0xC0,             // 00 xor ax, ax
        0x8E, 0xD8,             // 02 mov ds, ax
        0xBA, 0xF8, 0x03,       // 04 mov dx, 0x3f8       ; COM1 data
        0xBE, 0x23, 0x7C,       // 07 mov si, 0x7c23      ; the banner
        0xAC,                   // 0a lodsb
        0x84, 0xC0,             // 0b test al, al
        0x74, 0x03,             // 0d jz 0x12
        0xEE,                   // 0f out dx, al
        0xEB, 0xF8,             // 10 jmp 0x0a
        0xBA, 0xFD, 0x03,       // 12 mov dx, 0x3fd       ; line status
        0xEC,                   // 15 in al, dx
        0xA8, 0x01,             // 16 test al, 1          ; data ready?
        0x74, 0xF8,             // 18 jz 0x12
        0xBA, 0xF8, 0x03,       // 1a mov dx, 0x3f8
        0xEC,                   // 1d in al, dx
        0x24, 0xDF,             // 1e and al, 0xdf
        0xEE,                   // 20 out dx, al
        0xEB, 0xEF,             // 21 jmp 0x12
    ];
    let mut sector = code.to_vec();
    sector.extend_from_slice(BANNER.as_bytes());
    sector.extend_from_slice(b"\r\n\0");
    sector.resize(510, 0);
    sector.extend_from_slice(&[0x55, 0xAA]);
    sector.resize(1 << 20, 0);
    sector
}

impl Project {
    fn serial_log(&self, vm: &str) -> PathBuf {
        self.private_dir(vm).join("serial.log")
    }

    /// Waits until `vm`'s serial log holds `needle`.
    fn wait_for_log(&self, vm: &str, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read(self.serial_log(vm)).unwrap_or_default();
            if text(&log).contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "VM {vm} never printed {needle:?}; its log: {:?}",
                text(&log)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Reads a child's stdout on a thread, so a test can wait for text with a deadline.
struct Reader {
    rx: mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl Reader {
    fn new(mut source: impl Read + Send + 'static) -> Self {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = source.read(&mut buf) {
                if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits until the output so far contains `needle` (after byte `from`); returns where it
    /// ends.
    fn wait_for(&mut self, needle: &str, from: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(pos) = text(&self.seen[from.min(self.seen.len())..]).find(needle) {
                return from + pos + needle.len();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(bytes) => self.seen.extend(bytes),
                Err(_) => panic!(
                    "never saw {needle:?}; output so far: {:?}",
                    text(&self.seen)
                ),
            }
        }
    }

    /// Everything until the writer closes.
    fn rest(&mut self) -> String {
        while let Ok(bytes) = self.rx.recv_timeout(Duration::from_secs(20)) {
            self.seen.extend(bytes);
        }
        text(&self.seen)
    }
}

/// A background qemu-compose process, ended when the test ends however it ends.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ps_and_inspect_follow_the_lifecycle() {
    let _one = one_qemu_at_a_time();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = Project::new(&format!(
        "volumes:\n  data: {{size: 64M}}\nvms:\n  a:\n    image: ./base.qcow2\n    memory: 96\n    cpu: 2\n    user: tester\n    ports: [\"127.0.0.1:{port}:80\"]\n    volumes: [\"data:/srv/data\", \"./share:/mnt/share:ro\"]\n  b: {{image: ./base.qcow2, memory: 64}}\n"
    ));
    qemu_img_create(&p.join("base.qcow2"), "1G");
    std::fs::create_dir(p.join("share")).unwrap();

    assert_eq!(p.ok(&["ps", "-q"]).stdout, "a\nb\n");
    let before = p.json(&["ps", "--format", "json"]);
    for (row, name) in before.as_array().unwrap().iter().zip(["a", "b"]) {
        assert_eq!(row["name"], name);
        assert_eq!(row["status"], "not-created");
        assert_eq!(row["ssh"], Value::Null);
        assert_eq!(row["disk"], Value::Null);
    }
    assert_eq!(before[0]["cpu"], 2);
    assert_eq!(before[0]["memory_mib"], 96);
    assert_eq!(before[0]["ports"][0], format!("127.0.0.1:{port}->80/tcp"));

    p.ok(&["up", "a"]);
    let ssh_port = p.record("a")["ssh_port"].as_u64().unwrap();
    let started = Instant::now();
    let running = p.json(&["ps", "--format", "json"]);
    // The probes are bounded: QMP answers at once, the SSH probe gives up after 2 s.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "ps took {:?}",
        started.elapsed()
    );
    let a = &running[0];
    // No OS, so no sshd: QEMU runs but the VM never becomes ready.
    assert_eq!(a["status"], "starting");
    assert_eq!(a["ssh"], format!("127.0.0.1:{ssh_port}"));
    let disk = p.join(".qemu-compose/vms/a/disk.qcow2");
    let info = qemu_img_info(&disk);
    assert_eq!(a["disk"]["virtual_size"], info["virtual-size"]);
    assert!(a["disk"]["bytes_used"].as_u64().unwrap() > 0);
    assert_eq!(running[1]["status"], "not-created");
    let table = p.ok(&["ps", "a"]).stdout;
    assert!(
        table.contains("NAME") && table.contains("starting"),
        "{table}"
    );
    assert!(!table.contains(" b "), "ps a lists only a:\n{table}");

    let i = p.json(&["inspect", "a", "--format", "json"]);
    assert_eq!(i["state"]["status"], "starting");
    assert_eq!(i["config"]["user"], "tester");
    let base = p.join("base.qcow2").canonicalize().unwrap();
    assert_eq!(
        Path::new(i["disks"]["instance"]["base_image"].as_str().unwrap()),
        base
    );
    // The disk names its base relative to itself (the base is in the project folder).
    assert_eq!(info["backing-filename"], "../../../base.qcow2", "{info}");
    assert_eq!(
        Path::new(info["full-backing-filename"].as_str().unwrap())
            .canonicalize()
            .unwrap(),
        base
    );
    assert_eq!(i["disks"]["instance"]["base_format"], "qcow2");
    assert_eq!(i["disks"]["instance"]["device"], "vda");
    let vol = &i["disks"]["volumes"][0];
    assert_eq!(vol["volume"], "data");
    assert_eq!(vol["device"], "vdb");
    assert_eq!(vol["mount_point"], "/srv/data");
    assert_eq!(vol["read_only"], false);
    let registry: Value =
        serde_json::from_slice(&std::fs::read(p.join(".qemu-compose/volumes.json")).unwrap())
            .unwrap();
    let uuid = registry["data"]["uuid"].as_str().unwrap();
    assert_eq!(vol["uuid"], uuid);
    // ... and the UUID in the volume's ext4 superblock.
    assert_eq!(
        p.json(&["volume", "inspect", "data", "--format", "json"])["filesystem"]["uuid"],
        uuid
    );
    assert_eq!(i["disks"]["seed"]["device"], "vdc");
    assert_eq!(i["disks"]["seed"]["exists"], true);
    let bind = &i["bind_mounts"][0];
    assert_eq!(Path::new(bind["source"].as_str().unwrap()), p.join("share"));
    assert_eq!(bind["target"], "/mnt/share");
    assert_eq!(bind["tag"], "mount0");
    assert_eq!(bind["read_only"], true);
    assert_eq!(bind["automount"], true);
    assert!(bind["options"].as_str().unwrap().contains("trans=virtio"));
    // What inspect shows is what QEMU got: the record's argv has the same share and drive.
    let argv: Vec<String> = serde_json::from_value(i["qemu"]["argv"].clone()).unwrap();
    assert_eq!(
        argv,
        serde_json::from_value::<Vec<String>>(p.record("a")["argv"].clone()).unwrap()
    );
    let joined = argv.join(" ");
    assert!(joined.contains("mount_tag=mount0"), "{joined}");
    assert!(
        joined.contains(&format!(
            "security_model={}",
            bind["security_model"].as_str().unwrap()
        )),
        "{joined}"
    );
    assert!(joined.contains(vol["image"].as_str().unwrap()), "{joined}");
    assert!(
        joined.contains(&format!("hostfwd=tcp:127.0.0.1:{port}-:80")),
        "{joined}"
    );
    assert_eq!(i["network"]["ssh_port"], ssh_port);
    assert_eq!(i["network"]["mac"], p.record("a")["mac"]);
    let ssh: Vec<String> = serde_json::from_value(i["ssh_command"].clone()).unwrap();
    assert_eq!(ssh[0], "ssh");
    assert!(ssh.windows(2).any(|w| w == ["-p", &ssh_port.to_string()]));
    assert!(ssh.windows(2).any(|w| w == ["-l", "tester"]));
    assert_eq!(
        Path::new(i["paths"]["serial_log"].as_str().unwrap()),
        p.serial_log("a")
    );
    let human = p.ok(&["inspect", "a"]).stdout;
    for needle in ["vdb", uuid, "mount0", "UUID", "/srv/data", "-nodefaults"] {
        assert!(
            human.contains(needle),
            "inspect text lacks {needle:?}:\n{human}"
        );
    }

    p.ok(&["stop", "--force", "a"]);
    let after = p.json(&["ps", "--format", "json"]);
    assert_eq!(after[0]["status"], "stopped");
    assert_eq!(after[0]["ssh"], Value::Null);
    assert_eq!(after[0]["disk"]["virtual_size"], info["virtual-size"]);
    assert_eq!(
        p.json(&["inspect", "a", "--format", "json"])["state"]["status"],
        "stopped"
    );

    // A VM name that is not in the compose file is a usage error.
    let unknown = p.run(&["inspect", "nope"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(text(&unknown.stderr).contains("no VM named \"nope\""));
}

/// The argv strings of `inspect --format json`'s `qemu` section.
fn inspect_argv(i: &Value) -> Vec<String> {
    serde_json::from_value(i["qemu"]["argv"].clone()).expect("an argv")
}

#[test]
fn inspect_shows_the_planned_argv_of_a_vm_that_is_not_running() {
    let _one = one_qemu_at_a_time();
    let fixed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let p = Project::new(&format!(
        "volumes:\n  data: {{size: 64M}}\nvms:\n  a:\n    image: ./base.qcow2\n    memory: 64\n    volumes: [\"data:/data\"]\n  b:\n    image: ./base.qcow2\n    memory: 64\n    ssh: {{port: {fixed}}}\n  c: {{image: \"http://127.0.0.1:9/never.qcow2\", memory: 64}}\n"
    ));
    qemu_img_create(&p.join("base.qcow2"), "64M");
    p.ok(&["up", "--no-start", "a", "b"]);

    // Created, never started: the plan, marked as such, with the port it assumes.
    let i = p.json(&["inspect", "a", "--format", "json"]);
    assert_eq!(i["state"]["status"], "stopped");
    let q = &i["qemu"];
    assert_eq!(q["planned"], true, "{q}");
    assert_eq!(q["started"], Value::Null);
    assert_eq!(q["ssh_port_basis"], "first-free");
    let planned_port = q["ssh_port"].as_u64().unwrap();
    let planned = inspect_argv(&i);
    let joined = planned.join(" ");
    for needle in [
        format!("hostfwd=tcp:127.0.0.1:{planned_port}-:22"),
        "-blockdev".to_string(),
        "\"backing\":null".to_string(),
        "volumes/data/volume.qcow2".to_string(),
        "-daemonize".to_string(),
    ] {
        assert!(joined.contains(&needle), "{needle:?} not in {joined}");
    }
    assert_eq!(i["qemu_not_planned"], Value::Null);
    let human = p.ok(&["inspect", "a"]).stdout;
    for needle in [
        "QEMU (planned: not running; the command line the next start would use)",
        &format!(
            "ssh port {planned_port} (the first free port now; the real one is allocated at start)"
        ),
        "-blockdev",
    ] {
        assert!(
            human.contains(needle),
            "inspect text lacks {needle:?}:\n{human}"
        );
    }

    // A fixed port is the one planned.
    let b = p.json(&["inspect", "b", "--format", "json"]);
    assert_eq!(b["qemu"]["ssh_port"], fixed);
    assert_eq!(b["qemu"]["ssh_port_basis"], "fixed");
    assert!(
        inspect_argv(&b)
            .join(" ")
            .contains(&format!("127.0.0.1:{fixed}-:22"))
    );
    assert!(
        p.ok(&["inspect", "b"])
            .stdout
            .contains(&format!("ssh port {fixed} (fixed by the compose file)"))
    );

    // An image not downloaded yet: no plan, and why.
    let c = p.json(&["inspect", "c", "--format", "json"]);
    assert_eq!(c["qemu"], Value::Null);
    assert!(
        c["qemu_not_planned"]
            .as_str()
            .unwrap()
            .contains("not downloaded yet"),
        "{c}"
    );
    assert!(
        p.ok(&["inspect", "c"])
            .stdout
            .contains("no command line planned")
    );

    // Started: the plan was the real command line (up to the port, allocated afresh).
    p.ok(&["up", "a"]);
    let ssh_port = p.record("a")["ssh_port"].as_u64().unwrap();
    let i = p.json(&["inspect", "a", "--format", "json"]);
    assert_eq!(i["qemu"]["planned"], false);
    assert!(i["qemu"]["started"].is_string());
    assert_eq!(i["qemu"]["ssh_port"], ssh_port);
    assert_eq!(i["qemu"]["ssh_port_basis"], "running");
    let started = inspect_argv(&i);
    let with_port = |argv: &[String], port: u64| {
        argv.iter()
            .map(|a| a.replace(&format!("127.0.0.1:{port}-:22"), "127.0.0.1:PORT-:22"))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        with_port(&planned, planned_port),
        with_port(&started, ssh_port)
    );
    assert!(p.ok(&["inspect", "a"]).stdout.contains("QEMU (started "));

    // Stopped again: planned, keeping the last port.
    p.ok(&["stop", "--force", "a"]);
    let i = p.json(&["inspect", "a", "--format", "json"]);
    assert_eq!(i["qemu"]["planned"], true);
    assert_eq!(i["qemu"]["ssh_port"], ssh_port);
    assert_eq!(i["qemu"]["ssh_port_basis"], "previous");
    assert_eq!(inspect_argv(&i), started);
}

#[test]
fn logs_and_a_piped_console_relay_the_serial_port() {
    let _one = one_qemu_at_a_time();
    let p = Project::new(
        "vms:\n  a: {image: ./guest.img, memory: 64}\n  bb: {image: ./guest.img, memory: 64}\n",
    );
    std::fs::write(p.join("guest.img"), boot_sector()).unwrap();
    let no_log = p.run(&["logs"]);
    assert!(no_log.status.success());
    assert_eq!(text(&no_log.stdout), "");
    assert!(
        text(&no_log.stderr).contains("VM bb has no console log: it was never created"),
        "{}",
        text(&no_log.stderr)
    );
    // Following a VM that was never created says so and ends, as there is nothing to wait for.
    let never = p.run(&["logs", "-f", "a"]);
    assert!(never.status.success());
    assert!(text(&never.stderr).contains("VM a has no console log: it was never created"));

    p.ok(&["up"]);
    // Follow a's log while it runs.
    let mut follow = Background(
        p.command(&["logs", "-f", "a"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut followed = Reader::new(follow.0.stdout.take().unwrap());
    p.wait_for_log("a", BANNER);
    p.wait_for_log("bb", BANNER);
    followed.wait_for(BANNER, 0);
    // The guest's CR LF is a line end; its control characters are shown, not sent.
    assert_eq!(p.ok(&["logs", "a"]).stdout, format!("{BANNER}\n"));
    assert_eq!(
        p.ok(&["logs", "--raw", "a"]).stdout,
        format!("{BANNER}\r\n")
    );
    assert_eq!(
        p.ok(&["logs"]).stdout,
        format!("a  | {BANNER}\nbb | {BANNER}\n")
    );

    // Type into a's console from a pipe: the guest's echo reaches the console's stdout, the
    // log, and so the follower.
    let mut console = p
        .command(&["console", "a"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    console
        .stdin
        .take()
        .unwrap()
        .write_all(b"hello\x1d")
        .unwrap();
    let out = console.wait_with_output().unwrap();
    assert!(out.status.success(), "console: {}", text(&out.stderr));
    // Without a terminal Ctrl+] is an ordinary byte (0x1d has no bit 5 to clear).
    assert_eq!(out.stdout, b"HELLO\x1d");
    let password =
        qemu_compose::state::StateDir::new(&p.path().canonicalize().unwrap()).console_password();
    assert!(password.is_file());
    let said = text(&out.stderr);
    assert!(
        said.contains(&format!(
            "with the password on the first line of {}); Ctrl+] detaches",
            password.display()
        )),
        "{said}"
    );
    let inspected = p.json(&["inspect", "a", "--format", "json"]);
    assert_eq!(
        Path::new(inspected["console_password_file"].as_str().unwrap()),
        password
    );
    followed.wait_for("HELLO", 0);

    assert_eq!(p.ok(&["logs", "a", "--tail", "1"]).stdout, "HELLO^]\n");
    assert_eq!(
        p.ok(&["logs", "a", "--tail", "2"]).stdout,
        format!("{BANNER}\nHELLO^]\n")
    );
    // `logs -f` ends when its VM stops.
    p.ok(&["stop", "--force", "a"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while follow.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "logs -f went on after the VM stopped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(follow.0.wait().unwrap().success());

    // A console whose VM stops ends by itself, stdin still open.
    let mut attached = Background(
        p.command(&["console", "bb"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut said = Reader::new(attached.0.stderr.take().unwrap());
    said.wait_for("Connected to bb's console", 0);
    p.ok(&["stop", "--force", "bb"]);
    assert!(said.rest().contains("VM bb closed its console"));
    assert!(attached.0.wait().unwrap().success());
}

/// The `stty -g` lines in a terminal transcript (colon-separated settings).
fn stty_lines(transcript: &str) -> Vec<&str> {
    transcript
        .lines()
        .map(str::trim)
        .filter(|l| l.split(':').count() > 30)
        .collect()
}

#[test]
fn console_through_a_terminal_detaches_and_restores_it() {
    let _one = one_qemu_at_a_time();
    let p = Project::new("vms:\n  db: {image: ./guest.img, memory: 64}\n");
    std::fs::write(p.join("guest.img"), boot_sector()).unwrap();

    let stopped = p.run(&["console", "db"]);
    assert_eq!(stopped.status.code(), Some(1));
    assert!(text(&stopped.stderr).contains("not running"));

    p.ok(&["up"]);
    p.wait_for_log("db", BANNER);
    // `script` gives the shell a pseudo-terminal; the settings are printed before and after.
    let shell = format!("stty -g; {BIN} console db; echo \"rc=$?\"; stty -g");
    let mut script = tool("script");
    let mut child = p
        .env(&mut script)
        .args(["-q", "-e", "-c", &shell, "/dev/null"])
        .current_dir(p.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let mut out = Reader::new(child.stdout.take().unwrap());
    let hint = out.wait_for("Ctrl+] detaches", 0);
    std::thread::sleep(Duration::from_millis(300));
    input.write_all(b"ping").unwrap();
    input.flush().unwrap();
    // Upper case: the guest answered; a terminal in cooked mode would have echoed "ping".
    let echoed = out.wait_for("PING", hint);
    input.write_all(&[0x1d]).unwrap();
    input.flush().unwrap();
    out.wait_for("rc=", echoed);
    let all = out.rest();
    let status = child.wait().unwrap();
    drop(input);
    assert!(status.success(), "script: {all}");
    assert!(all.contains("Detached from db's console"), "{all}");
    assert!(all.contains("rc=0"), "{all}");
    assert!(
        !all[hint..].contains("ping"),
        "raw mode: no local echo: {all:?}"
    );
    let settings = stty_lines(&all);
    assert_eq!(settings.len(), 2, "two `stty -g` lines in {all:?}");
    assert_eq!(
        settings[0], settings[1],
        "the terminal settings were restored"
    );
    assert_eq!(
        text(&std::fs::read(p.serial_log("db")).unwrap()),
        format!("{BANNER}\r\nPING")
    );

    // SIGTERM from outside while in raw mode: the terminal is still restored, exit 128+15.
    let shell = format!(
        "stty -g; (sleep 1; pkill -TERM -x -P $$ qemu-compose) & {BIN} console db; echo \"rc=$?\"; stty -g"
    );
    let mut script = tool("script");
    let out = p
        .env(&mut script)
        .args(["-q", "-e", "-c", &shell, "/dev/null"])
        .current_dir(p.path())
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    let all = text(&out.stdout);
    assert!(all.contains("Left db's console on signal 15"), "{all}");
    assert!(all.contains("rc=143"), "{all}");
    let settings = stty_lines(&all);
    assert_eq!(settings.len(), 2, "two `stty -g` lines in {all:?}");
    assert_eq!(
        settings[0], settings[1],
        "the terminal settings were restored"
    );
}

#[test]
fn ssh_execs_the_system_client_and_passes_its_status_through() {
    let _one = one_qemu_at_a_time();
    let p = Project::new("vms:\n  web: {image: ./base.qcow2, memory: 64, user: alice}\n");
    qemu_img_create(&p.join("base.qcow2"), "64M");
    let stub = p.join("stub");
    std::fs::create_dir(&stub).unwrap();
    let recorded = p.join("ssh-args");
    std::fs::write(
        stub.join("ssh"),
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}'\nexit 7\n",
            recorded.display()
        ),
    )
    .unwrap();
    let chmod = tool("chmod")
        .arg("755")
        .arg(stub.join("ssh"))
        .status()
        .unwrap();
    assert!(chmod.success());
    let path = format!(
        "{}:{}",
        stub.display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let not_running = p
        .command(&["ssh", "web"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(not_running.status.code(), Some(1));
    assert!(text(&not_running.stderr).contains("VM web is not running"));
    assert!(!recorded.exists(), "ssh must not run for a stopped VM");

    p.ok(&["up"]);
    let port = p.record("web")["ssh_port"].as_u64().unwrap().to_string();
    // No OS, so no SSH server: ssh says it waits, and gives up at its limit.
    let booting = p
        .command(&["ssh", "--wait-timeout", "1", "web", "true"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(booting.status.code(), Some(1));
    let said = text(&booting.stderr);
    assert!(
        said.contains("VM web is starting: its SSH server does not answer yet; waiting up to 1 s"),
        "{said}"
    );
    assert!(said.contains("did not answer SSH within 1 s"), "{said}");
    assert!(
        !recorded.exists(),
        "ssh must not run before the guest answers"
    );
    // As if `up --wait` had seen it answer.
    let started = p.record("web")["started"].as_str().unwrap().to_string();
    std::fs::write(private_dir(p.path(), "web").join("ready"), started).unwrap();
    let out = p
        .command(&["ssh", "web", "echo", "hello world", "-x", "--", "--debug"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let args = std::fs::read_to_string(&recorded).unwrap();
    let args: Vec<&str> = args.lines().collect();
    let key = qemu_compose::state::StateDir::new(&p.path().canonicalize().unwrap()).ssh_key();
    assert!(key.is_file());
    let key = key.display().to_string();
    let known_hosts = format!(
        "UserKnownHostsFile=\"{}\"",
        private_dir(p.path(), "web").join("known_hosts").display()
    );
    assert_eq!(
        args,
        [
            "-i",
            key.as_str(),
            "-p",
            port.as_str(),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            known_hosts.as_str(),
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "HostKeyAlias=qemu-compose-web",
            "-o",
            "HostKeyAlgorithms=ssh-ed25519",
            "-o",
            "UpdateHostKeys=no",
            "-o",
            "LogLevel=ERROR",
            "-l",
            "alice",
            "127.0.0.1",
            "--",
            "'echo' 'hello world' '-x' '--' '--debug'"
        ]
    );

    // Options before the command go to ssh, after ours (ssh keeps the first value of an
    // option, so they cannot undo the host-key pinning); the command follows `--`.
    let out = p
        .command(&[
            "ssh",
            "web",
            "-L",
            "8080:localhost:80",
            "-N",
            "--",
            "top",
            "-b",
        ])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    let args = std::fs::read_to_string(&recorded).unwrap();
    let args: Vec<&str> = args.lines().collect();
    assert_eq!(
        args[args.len() - 6..],
        [
            "-L",
            "8080:localhost:80",
            "-N",
            "127.0.0.1",
            "--",
            "'top' '-b'"
        ]
    );
    let out = p
        .command(&["ssh", "web", "-o"])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("the ssh option -o needs a value"));
}

/// A real `sshd` on 127.0.0.1:`port` with the given host key, standing in for the guest's.
struct Sshd(Child);

impl Sshd {
    /// `authorized`: the public key file whose key may log in as the user running sshd.
    fn start(port: u16, host_key: &Path, authorized: Option<&Path>) -> Self {
        let sshd = Path::new("/usr/sbin/sshd");
        assert!(
            sshd.is_file(),
            "/usr/sbin/sshd is missing; install openssh-server (.ci/install-deps does)"
        );
        if rustix::process::geteuid().is_root() {
            // sshd's privilege separation folder, which the package's service unit makes.
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let child = Command::new(sshd)
            .args(["-D", "-e", "-f", "/dev/null"])
            .arg("-h")
            .arg(host_key)
            .args(["-o", &format!("ListenAddress=127.0.0.1:{port}")])
            .args([
                "-o",
                "PidFile=none",
                "-o",
                "PermitRootLogin=prohibit-password",
            ])
            .args([
                "-o",
                &format!(
                    "AuthorizedKeysFile={}",
                    authorized.map_or("none".into(), |p| p.display().to_string())
                ),
            ])
            .args(["-o", "UsePAM=no", "-o", "StrictModes=no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sshd starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd never listened on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self(child)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the `ssh` command line `inspect` printed, with a remote command, and no prompts; as
/// `login` instead of the guest user, when given (the stand-in sshd has only the test's user).
fn ssh_as_printed(printed: &[String], login: Option<&str>) -> Output {
    let mut args = printed[1..].to_vec();
    if let Some(user) = login {
        let at = args.iter().position(|a| a == "-l").unwrap() + 1;
        args[at] = user.to_string();
    }
    args.splice(0..0, ["-o".to_string(), "BatchMode=yes".to_string()]);
    args.extend(["--".to_string(), "echo reached".to_string()]);
    tool("ssh")
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn ssh_only_talks_to_the_host_key_the_instance_was_given() {
    let _one = one_qemu_at_a_time();
    let p = Project::new("vms:\n  web: {image: ./base.qcow2, memory: 64}\n");
    qemu_img_create(&p.join("base.qcow2"), "64M");
    p.ok(&["up"]);
    let private = private_dir(p.path(), "web");
    let host_key = private.join("ssh_host_ed25519_key");
    let public = text(
        &tool("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&host_key)
            .output()
            .unwrap()
            .stdout,
    );
    let known_hosts = std::fs::read_to_string(private.join("known_hosts")).unwrap();
    assert_eq!(
        known_hosts,
        format!("qemu-compose-web {}", public.trim_end()) + "\n"
    );

    // The guest gets that key, and only that key, through the seed.
    let user_data = tool("mtype")
        .arg("-i")
        .arg(private.join("seed.img"))
        .arg("::user-data")
        .output()
        .unwrap();
    let user_data = text(&user_data.stdout);
    assert!(user_data.contains("ssh_deletekeys: true"), "{user_data}");
    assert!(
        user_data.contains(public.split_whitespace().nth(1).unwrap()),
        "{user_data}"
    );

    // The command a user copies from `inspect`, kept after the VM stops.
    let printed: Vec<String> = serde_json::from_value(
        p.json(&["inspect", "web", "--format", "json"])["ssh_command"].clone(),
    )
    .unwrap();
    let port = p.record("web")["ssh_port"].as_u64().unwrap() as u16;
    p.ok(&["stop", "--force", "web"]);

    // Another program takes the port, with a host key of its own.
    let other = p.join("other_key");
    let made = tool("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other)
        .status()
        .unwrap();
    assert!(made.success());
    let impostor = Sshd::start(port, &other, None);
    let refused = ssh_as_printed(&printed, None);
    drop(impostor);
    assert_eq!(refused.status.code(), Some(255));
    assert!(
        text(&refused.stderr).contains("Host key verification failed"),
        "{}",
        text(&refused.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(private.join("known_hosts")).unwrap(),
        known_hosts
    );

    // A server with the instance's key is accepted, and the project key logs in.
    let project_key = qemu_compose::state::StateDir::new(&p.path().canonicalize().unwrap())
        .ssh_key()
        .with_extension("pub");
    let genuine = Sshd::start(port, &host_key, Some(&project_key));
    let me = text(&tool("id").arg("-un").output().unwrap().stdout);
    let accepted = ssh_as_printed(&printed, Some(me.trim()));
    drop(genuine);
    assert!(accepted.status.success(), "{}", text(&accepted.stderr));
    assert_eq!(text(&accepted.stdout), "reached\n");

    // The key lives as long as the instance: a restart keeps it, `destroy` removes it.
    p.ok(&["up"]);
    assert_eq!(
        std::fs::read_to_string(private.join("known_hosts")).unwrap(),
        known_hosts
    );
    std::fs::remove_file(private.join("known_hosts")).unwrap();
    let unpinned = p.run(&["ssh", "web", "true"]);
    assert_eq!(unpinned.status.code(), Some(1));
    assert!(
        text(&unpinned.stderr).contains("up --force-recreate web"),
        "{}",
        text(&unpinned.stderr)
    );
    p.ok(&["destroy", "--force", "web"]);
    assert!(!host_key.exists());
}

/// Serves `body` at every path over HTTP/1.1 on 127.0.0.1, for as long as the test runs.
fn serve(body: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    port
}

#[test]
fn pull_and_image_rm_protect_the_base_of_an_instance() {
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let base = scratch.path().join("base.qcow2");
    qemu_img_create(&base, "32M");
    let port = serve(std::fs::read(&base).unwrap());
    let url = format!("http://127.0.0.1:{port}/images/cloud.qcow2");
    let p = Project::new(&format!(
        "vms:\n  a: {{image: \"{url}\", memory: 64}}\n  local: {{image: ./local.img}}\n"
    ));
    std::fs::write(p.join("local.img"), vec![0u8; 1 << 20]).unwrap();

    let pulled = p.ok(&["pull"]).stdout;
    assert!(pulled.contains("local: local image"), "{pulled}");
    assert!(pulled.contains("nothing to pull"), "{pulled}");
    let cache = p.image_cache();
    let cached: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "qcow2"))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    let cached = &cached[0];
    assert_eq!(
        std::fs::read(cached).unwrap(),
        std::fs::read(&base).unwrap()
    );
    let name = cached.file_name().unwrap().to_str().unwrap().to_string();
    assert!(
        pulled.contains(&format!("a: {url} -> {}", cached.display())),
        "{pulled}"
    );
    let ls = p.ok(&["image", "ls"]).stdout;
    assert!(ls.contains(&name) && ls.contains(&url), "{ls}");
    assert!(ls.contains("a (not-created)"), "{ls}");

    p.ok(&["up", "--no-start", "a"]);
    let overlay = p.join(".qemu-compose/vms/a/disk.qcow2");
    assert_eq!(
        qemu_img_info(&overlay)["full-backing-filename"],
        cached.to_str().unwrap()
    );
    let ls = p.ok(&["image", "ls"]).stdout;
    assert!(
        ls.lines()
            .any(|l| l.contains(&name) && l.trim_end().ends_with(" a")),
        "{ls}"
    );
    let refused = p.run(&["image", "rm", &name]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("VM(s) a"),
        "{}",
        text(&refused.stderr)
    );
    assert!(cached.exists());

    // Without a compose file nothing is known about users.
    let elsewhere = Project::empty();
    let out = p.run_in(elsewhere.path(), &["image", "ls"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("unknown (no compose file)"));

    p.ok(&["destroy"]);
    assert_eq!(p.ok(&["image", "rm", &name]).stdout, format!("{name}\n"));
    assert!(!cached.exists());
    let missing = p.run(&["image", "rm", &name]);
    assert_eq!(missing.status.code(), Some(1));

    let one = p.ok(&["pull", &url]).stdout;
    assert_eq!(one, format!("{url}: {}\n", cached.display()));
    assert!(cached.exists());
    // --force with an image in use.
    p.ok(&["up", "--no-start", "a"]);
    p.ok(&["image", "rm", "--force", &name]);
    assert!(!cached.exists());
}

#[test]
fn doctor_reports_this_host() {
    let p = Project::new(
        "vms:\n  a:\n    image: ./base.qcow2\n    volumes: [\"./share:/mnt/share\"]\n",
    );
    let version = tool("qemu-system-x86_64")
        .arg("--version")
        .output()
        .expect("qemu-system-x86_64 runs");
    let version = text(&version.stdout);
    let version = version.lines().next().unwrap();
    let out = p.run(&["doctor"]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}{}", text(&out.stderr));
    let line = |topic: &str| -> String {
        report
            .lines()
            .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(topic)))
            .unwrap_or_else(|| panic!("no {topic} line in\n{report}"))
            .to_string()
    };
    assert!(line("qemu").starts_with("ok"), "{report}");
    assert!(line("qemu").contains(version), "{report}");
    assert!(line("9p").starts_with("ok"), "{report}");
    let cpu_virt = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap()
        .split_whitespace()
        .any(|w| w == "vmx" || w == "svm");
    let kvm_opens = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let accel = line("accelerator");
    if cpu_virt && kvm_opens {
        assert!(accel.contains("KVM"), "{accel}");
    } else {
        assert!(
            accel.starts_with("warn") && accel.contains("TCG: VMs are emulated"),
            "{accel}"
        );
        // The reason is given once, on the kvm line.
        let kvm = line("kvm");
        let why = kvm.split("not usable: ").nth(1).unwrap();
        assert_eq!(report.matches(why).count(), 1, "{report}");
    }
    assert!(line("ssh").contains("OpenSSH"), "{report}");
    let socket = private_dir(p.path(), "a").join("serial.sock");
    assert!(
        line("socket path").contains(&format!(
            "{} is {} bytes",
            socket.display(),
            socket.as_os_str().len()
        )),
        "{report}"
    );
    assert!(
        report.contains("state folder") && report.contains("image cache"),
        "{report}"
    );

    // No QEMU blocks `up`: exit 1.
    let out = p
        .command(&["doctor"])
        .env("QEMU_COMPOSE_QEMU", "/nonexistent/qemu")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout)
            .lines()
            .any(|l| l.starts_with("FAIL  qemu"))
    );

    // Without a compose file the project lines are skipped.
    let elsewhere = Project::empty();
    let out = elsewhere.run(&["doctor"]);
    assert_eq!(out.status.code(), Some(0));
    let report = text(&out.stdout);
    assert!(report.contains("no compose file here"), "{report}");
    assert!(!report.contains("socket path"), "{report}");
}
