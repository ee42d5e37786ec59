//! `up`, `stop` and `destroy` through the real CLI with the real qemu-system-x86_64 and a
//! bootless image (QEMU runs fine without an OS to boot).

use std::process::Command;
use std::time::Duration;

use qemu_compose::qemu::qmp::Qmp;

use crate::harness::{ONE_VM, Project, alive, one_qemu_at_a_time, text, tool};

impl Project {
    fn qmp_status(&self, vm: &str) -> String {
        let mut qmp = Qmp::connect(
            &self.private_dir(vm).join("qmp.sock"),
            Duration::from_secs(5),
        )
        .expect("QMP answers");
        qmp.query_status().unwrap()
    }
}

#[test]
fn up_stop_destroy_with_a_real_qemu() {
    let _one = one_qemu_at_a_time();
    let p = Project::with_base(ONE_VM, "64M");
    let stderr = p.ok(&["up"]).stderr;
    assert!(
        stderr.contains("started VM app (ssh: 127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("TCG"),
        "TCG is chosen on this host and said so: {stderr}"
    );
    let pid = p.pid("app").expect("a pidfile");
    assert!(alive(pid));
    assert_eq!(p.qmp_status("app"), "running");
    let record: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.private_dir("app").join("instance.json")).unwrap(),
    )
    .unwrap();
    let argv: Vec<&str> = record["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(argv.contains(&"-nodefaults") && argv.contains(&"-daemonize"));

    // A second `up` leaves the running VM alone.
    let stderr = p.ok(&["up"]).stderr;
    assert!(stderr.contains("VM app is already running"), "{stderr}");
    assert_eq!(p.pid("app"), Some(pid));

    // `--wait` also waits for a VM that was already running; a bootless one never answers.
    let out = p.run(&["up", "--wait", "--wait-timeout", "2"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("VM app: did not answer SSH within 2 s"),
        "{stderr}"
    );
    assert_eq!(p.pid("app"), Some(pid));

    // A bootless guest ignores the power button: stop falls back to quitting QEMU.
    let stderr = p.ok(&["stop", "-t", "1"]).stderr;
    assert!(
        stderr.contains("did not power off within 1 s; QEMU was told to quit"),
        "{stderr}"
    );
    assert!(!alive(pid));
    assert_eq!(p.pid("app"), None);
    assert!(p.ok(&["stop"]).stderr.contains("VM app is not running"));

    // destroy removes the instance, never the named volume.
    p.ok(&["up"]);
    let stderr = p.ok(&["destroy", "--force"]).stderr;
    assert!(stderr.contains("removed VM app"), "{stderr}");
    assert!(!p.private_dir("app").exists() && !p.join(".qemu-compose/vms/app").exists());
    assert!(
        p.path()
            .join(".qemu-compose/volumes/data/volume.qcow2")
            .exists()
    );
}

#[test]
fn a_changed_configuration_is_reported_and_applied_on_request() {
    let _one = one_qemu_at_a_time();
    let p = Project::with_base(ONE_VM, "64M");
    p.ok(&["up"]);
    let pid = p.pid("app").unwrap();
    p.write_compose(&ONE_VM.replace("memory: 128", "memory: 160"));
    let stderr = p.ok(&["up"]).stderr;
    assert!(
        stderr.contains("VM app runs with an older configuration"),
        "{stderr}"
    );
    assert_eq!(p.pid("app"), Some(pid));
    let stderr = p.ok(&["up", "--force-recreate", "-t", "1"]).stderr;
    assert!(
        stderr.contains("stopping VM app to apply its new configuration"),
        "{stderr}"
    );
    let new_pid = p.pid("app").unwrap();
    assert_ne!(new_pid, pid);
    assert!(!alive(pid));
    assert_eq!(p.qmp_status("app"), "running");
}

#[test]
fn qemu_failures_are_reported_with_qemus_words() {
    let _one = one_qemu_at_a_time();
    // A fixed SSH port that another program holds.
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port();
    let p = Project::with_base(
        &format!(
            "vms:\n  app:\n    image: ./base.qcow2\n    memory: 128\n    ssh: {{port: {port}}}\n"
        ),
        "64M",
    );
    let out = p.run(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "Could not set up host forwarding rule 'tcp:127.0.0.1:{port}-:22'"
        )),
        "{stderr}"
    );
    assert_eq!(p.pid("app"), None);

    // A missing base image is caught before QEMU, with the path.
    let p = Project::new("vms:\n  app:\n    image: ./nope.qcow2\n");
    let out = p.run(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("VM app: image") && stderr.contains("nope.qcow2 does not exist"),
        "{stderr}"
    );
    assert!(!p.private_dir("app").exists() && !p.join(".qemu-compose/vms/app").exists());

    // A corrupt base image is refused by our own reader.
    let p = Project::new("vms:\n  app:\n    image: ./bad.qcow2\n");
    let mut bytes = b"QFI\xfb\x00\x00\x00\x03".to_vec();
    bytes.resize(512, 0xff);
    std::fs::write(p.join("bad.qcow2"), bytes).unwrap();
    let out = p.run(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("VM app:"));
}

/// `qemu-img info` of the instance disk of `vm`.
fn disk_info(p: &Project, vm: &str) -> serde_json::Value {
    let disk = p.path().join(format!(".qemu-compose/vms/{vm}/disk.qcow2"));
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output", "json"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(out.status.success());
    let check = Command::new("qemu-img")
        .arg("check")
        .arg(&disk)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn disk_changes_are_applied_or_said() {
    let compose = |image: &str, size: &str| {
        format!("vms:\n  app: {{image: ./{image}, disk: {{size: {size}}}}}\n")
    };
    let p = Project::with_base(&compose("base.qcow2", "1G"), "64M");
    let write = |text: String| std::fs::write(p.path().join("qemu-compose.yaml"), text).unwrap();
    p.ok(&["up", "--no-start"]);
    assert_eq!(disk_info(&p, "app")["virtual-size"], 1u64 << 30);

    // Larger: grown in place, on the same base.
    write(compose("base.qcow2", "2G"));
    let said = p.ok(&["up", "--no-start"]).stderr;
    assert!(said.contains("VM app: disk grown from 1G to 2G"), "{said}");
    let info = disk_info(&p, "app");
    assert_eq!(info["virtual-size"], 2u64 << 30);
    assert!(
        info["full-backing-filename"]
            .as_str()
            .unwrap()
            .ends_with("/base.qcow2")
    );

    // Smaller: kept, and said.
    write(compose("base.qcow2", "512M"));
    let said = p.ok(&["up", "--no-start"]).stderr;
    assert!(said.contains("disks never shrink, it stays 2G"), "{said}");
    assert_eq!(disk_info(&p, "app")["virtual-size"], 2u64 << 30);

    // Below the image's size: the image's size, and said.
    write(compose("base.qcow2", "32M"));
    let said = p.ok(&["up", "--no-start"]).stderr;
    assert!(
        said.contains("disk size 32M is smaller than its image (64M)"),
        "{said}"
    );

    // Another image: kept on the old base until --force-recreate makes the disk again.
    let other = p.path().join("other.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&other)
        .arg("128M")
        .status()
        .unwrap();
    assert!(made.success());
    write(compose("other.qcow2", "1G"));
    let said = p.ok(&["up", "--no-start"]).stderr;
    assert!(
        said.contains("`qemu-compose up --force-recreate app` makes a new disk"),
        "{said}"
    );
    let backing = |p: &Project| disk_info(p, "app")["full-backing-filename"].clone();
    assert!(backing(&p).as_str().unwrap().ends_with("/base.qcow2"));
    // inspect shows the base the disk is on, the compose file's image and what moves it.
    let base = p.path().join("base.qcow2").canonicalize().unwrap();
    let other = other.canonicalize().unwrap();
    let hint = "`qemu-compose up --force-recreate app` makes the disk again on it (the changes the guest made to its root disk are lost; volumes are kept)";
    let shown = p.ok(&["inspect", "app"]).stdout;
    assert!(
        shown.contains(&format!(
            "             base {}\n             the compose file names {}: {hint}\n",
            base.display(),
            other.display()
        )),
        "{shown}"
    );
    let inspect_json = |p: &Project| -> serde_json::Value {
        serde_json::from_str(&p.ok(&["inspect", "app", "--format", "json"]).stdout).unwrap()
    };
    let instance = inspect_json(&p)["disks"]["instance"].clone();
    assert_eq!(instance["base_image"], base.to_str().unwrap());
    // Only the base QEMU would be given is read (the header naming it is the guest's to write).
    assert_eq!(instance["base_format"], serde_json::Value::Null);
    assert_eq!(
        instance["base_changed"],
        serde_json::json!({"compose_image": other.to_str().unwrap(), "hint": hint})
    );
    let said = p.ok(&["up", "--no-start", "--force-recreate"]).stderr;
    assert!(
        said.contains("its disk was made again on the new image"),
        "{said}"
    );
    assert!(backing(&p).as_str().unwrap().ends_with("/other.qcow2"));
    let instance = inspect_json(&p)["disks"]["instance"].clone();
    assert_eq!(instance["base_image"], other.to_str().unwrap());
    assert_eq!(instance["base_changed"], serde_json::Value::Null);
    assert!(
        !p.ok(&["inspect", "app"])
            .stdout
            .contains("the compose file names")
    );
    assert_eq!(disk_info(&p, "app")["virtual-size"], 1u64 << 30);
}

#[test]
fn vms_removed_from_the_file_are_found_and_removed_on_request() {
    let _qemu = one_qemu_at_a_time();
    let p = Project::with_base(
        "vms:\n  a: {image: ./base.qcow2, memory: 64}\n  b: {image: ./base.qcow2, memory: 64}\n  c: {image: ./base.qcow2, memory: 64}\n",
        "64M",
    );
    p.ok(&["up", "--no-start", "a", "c"]);
    p.ok(&["up", "b"]);
    let pid = p.pid("b").expect("b runs");
    std::fs::write(
        p.path().join("qemu-compose.yaml"),
        "vms:\n  a: {image: ./base.qcow2, memory: 64}\n",
    )
    .unwrap();

    let out = p.run(&["ps"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("Found orphan VMs (b (running), c) for this project"),
        "{said}"
    );
    let said = p.ok(&["up", "--no-start"]).stderr;
    assert!(
        said.contains("run `qemu-compose up --remove-orphans`"),
        "{said}"
    );
    assert!(alive(pid), "a warning stops nothing");

    let said = p
        .ok(&["destroy", "--force", "--remove-orphans", "a"])
        .stderr;
    assert!(said.contains("removed VM b"), "{said}");
    assert!(said.contains("removed VM c"), "{said}");
    assert!(!alive(pid), "the orphan's QEMU was stopped");
    for vm in ["a", "b", "c"] {
        assert!(!p.path().join(format!(".qemu-compose/vms/{vm}")).exists());
        assert!(!p.private_dir(vm).exists());
    }
    let out = p.run(&["ps"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("orphan"));

    // `up --remove-orphans` does the same before starting anything.
    std::fs::write(
        p.path().join("qemu-compose.yaml"),
        "vms:\n  a: {image: ./base.qcow2, memory: 64}\n  d: {image: ./base.qcow2, memory: 64}\n",
    )
    .unwrap();
    p.ok(&["up", "--no-start"]);
    std::fs::write(
        p.path().join("qemu-compose.yaml"),
        "vms:\n  a: {image: ./base.qcow2, memory: 64}\n",
    )
    .unwrap();
    let said = p.ok(&["up", "--no-start", "--remove-orphans"]).stderr;
    assert!(said.contains("removed VM d"), "{said}");
    assert!(!p.private_dir("d").exists());
}

#[test]
fn files_that_are_not_disk_images_are_refused_with_what_they_are() {
    let p = Project::new("vms:\n  app: {image: ./notes.txt}\n  dir: {image: ./images}\n");
    std::fs::write(p.path().join("notes.txt"), "notes\n").unwrap();
    std::fs::create_dir(p.path().join("images")).unwrap();
    let out = p.run(&["up", "--no-start", "app"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("notes.txt is not a disk image: 6 bytes, neither qcow2 nor raw"),
        "{stderr}"
    );
    let out = p.run(&["up", "--no-start", "dir"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("images is a directory, not a file"),
        "{stderr}"
    );
    assert!(
        !p.path().join(".qemu-compose/vms").exists(),
        "no instance is made"
    );
    // A raw disk with a partition table is a disk.
    let mut mbr = vec![0u8; 1 << 20];
    mbr[510..512].copy_from_slice(&[0x55, 0xAA]);
    std::fs::write(p.path().join("notes.txt"), mbr).unwrap();
    p.ok(&["up", "--no-start", "app"]);
}

#[test]
fn the_project_key_is_a_valid_openssh_key() {
    let p = Project::with_base(ONE_VM, "64M");
    p.ok(&["up", "--no-start"]);
    let ssh = qemu_compose::state::StateDir::new(&p.path().canonicalize().unwrap()).ssh_dir();
    let out = tool("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(ssh.join("id_ed25519"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let derived = String::from_utf8(out.stdout).unwrap();
    let public = std::fs::read_to_string(ssh.join("id_ed25519.pub")).unwrap();
    assert!(derived.starts_with("ssh-ed25519 "), "{derived}");
    assert!(public.starts_with(derived.trim()), "{public} vs {derived}");
    let mode = |f: &str| {
        std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(ssh.join(f)).unwrap().permissions(),
        ) & 0o777
    };
    assert_eq!(mode("id_ed25519"), 0o600);
}

#[test]
fn vms_named_like_state_folders_cannot_touch_volumes_or_the_key() {
    let p = Project::with_base(
        "volumes:\n  data: {size: 64M}\nvms:\n  volumes:\n    image: ./base.qcow2\n    volumes: [data:/data]\n  ssh: {image: ./base.qcow2}\n",
        "64M",
    );
    p.ok(&["up", "--no-start"]);
    let volume = p.join(".qemu-compose/volumes/data/volume.qcow2");
    let key = qemu_compose::state::StateDir::new(&p.path().canonicalize().unwrap()).ssh_key();
    assert!(volume.is_file() && key.is_file());
    p.ok(&["destroy", "volumes"]);
    p.ok(&["destroy", "ssh"]);
    assert!(volume.is_file(), "destroy of VM `volumes` removed a volume");
    assert!(key.is_file(), "destroy of VM `ssh` removed the project key");
    assert!(!p.join(".qemu-compose/vms/volumes").exists());
}

#[test]
fn secrets_and_control_files_stay_out_of_the_project_folder() {
    let p = Project::with_base(ONE_VM, "64M");
    p.ok(&["up", "--no-start"]);
    let mut found = Vec::new();
    let mut stack = vec![p.join(".qemu-compose")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            found.push(path.strip_prefix(p.path()).unwrap().to_path_buf());
        }
    }
    let names: Vec<String> = found.iter().map(|f| f.display().to_string()).collect();
    // A share of the project folder (`.:/src`) shows the guest only data, never the key, the
    // console password, the seed (host key, password hash), the pidfile, the log or a socket.
    for name in &names {
        let file = name.rsplit('/').next().unwrap();
        assert!(
            [
                ".qemu-compose/volumes.json",
                ".qemu-compose/volumes",
                ".qemu-compose/volumes/data",
                ".qemu-compose/volumes/data/volume.qcow2",
                ".qemu-compose/vms",
                ".qemu-compose/vms/app",
                ".qemu-compose/vms/app/disk.qcow2",
            ]
            .contains(&name.as_str()),
            "{file}: unexpected file in the project's state folder: {names:?}"
        );
    }
}

#[test]
fn a_planted_symlink_in_the_state_folder_is_never_followed() {
    let p = Project::with_base(ONE_VM, "64M");
    p.ok(&["up", "--no-start"]);
    let secret = p.join("secret.txt");
    std::fs::write(&secret, "host secret\n").unwrap();
    let registry = p.join(".qemu-compose/volumes.json");
    std::fs::remove_file(&registry).unwrap();
    std::os::unix::fs::symlink(&secret, &registry).unwrap();
    let out = p.run(&["up", "--no-start"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "host secret\n");
}

#[test]
fn a_copied_project_uses_its_own_volumes() {
    let p = Project::with_base(ONE_VM, "64M");
    let original = p.join("orig");
    std::fs::create_dir(&original).unwrap();
    for f in ["qemu-compose.yaml", "base.qcow2"] {
        std::fs::rename(p.join(f), original.join(f)).unwrap();
    }
    p.ok_in(&original, &["up", "--no-start"]);
    let copy = p.join("copy");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&original)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    p.ok_in(&copy, &["destroy", "-v"]);
    assert!(!copy.join(".qemu-compose/volumes/data").exists());
    assert!(
        original
            .join(".qemu-compose/volumes/data/volume.qcow2")
            .is_file(),
        "destroy -v in the copy removed the original's volume"
    );
    p.ok_in(&original, &["destroy", "-v"]);
}

#[test]
fn a_moved_or_copied_project_starts_on_its_own_image() {
    let _one = one_qemu_at_a_time();
    let p = Project::with_base(ONE_VM, "64M");
    let original = p.join("orig");
    std::fs::create_dir(&original).unwrap();
    for f in ["qemu-compose.yaml", "base.qcow2"] {
        std::fs::rename(p.join(f), original.join(f)).unwrap();
    }
    p.ok_in(&original, &["up", "--no-start"]);
    // The disk names its base relative to itself, and qemu-img finds it so.
    let disk = original.join(".qemu-compose/vms/app/disk.qcow2");
    let out = tool("qemu-img")
        .args(["info", "--output", "json"])
        .arg(&disk)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["backing-filename"], "../../../base.qcow2", "{info}");

    let copy = p.join("copy");
    let status = Command::new("cp")
        .arg("-a")
        .arg(&original)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(status.success());
    let moved = p.join("moved");
    std::fs::rename(&original, &moved).unwrap();
    for dir in [&copy, &moved] {
        let stderr = p.ok_in(dir, &["up"]).stderr;
        assert!(
            stderr.contains("started VM app"),
            "{}: {stderr}",
            dir.display()
        );
        p.ok_in(dir, &["stop", "--force"]);
        p.ok_in(dir, &["destroy", "-v"]);
    }
}

#[test]
fn projects_sharing_a_symlinked_compose_file_keep_their_own_state() {
    let p = Project::with_base(ONE_VM, "64M");
    let (a, b) = (p.join("a"), p.join("b"));
    for dir in [&a, &b] {
        std::fs::create_dir(dir).unwrap();
        std::os::unix::fs::symlink(p.join("qemu-compose.yaml"), dir.join("qemu-compose.yaml"))
            .unwrap();
        std::os::unix::fs::symlink(p.join("base.qcow2"), dir.join("base.qcow2")).unwrap();
    }
    p.ok_in(&a, &["up", "--no-start"]);
    assert!(a.join(".qemu-compose/volumes/data/volume.qcow2").is_file());
    assert!(
        !p.join(".qemu-compose").exists(),
        "state went to the link's target"
    );
    p.ok_in(&b, &["destroy", "-v"]);
    assert!(
        a.join(".qemu-compose/volumes/data/volume.qcow2").is_file(),
        "destroy -v in b removed a's volume"
    );
    p.ok_in(&a, &["destroy", "-v"]);
}

#[test]
fn a_socket_folder_planted_by_someone_else_is_refused() {
    let p = Project::with_base(ONE_VM, "64M");
    // A state home so deep that the sockets move to the runtime folder.
    let deep = p.join("state").join("d".repeat(90));
    let runtime = p.join("run");
    let victim = p.join("victim");
    std::fs::create_dir_all(&runtime).unwrap();
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("keep"), "x").unwrap();
    std::os::unix::fs::symlink(&victim, runtime.join("qemu-compose")).unwrap();
    let run = |args: &[&str]| {
        p.command(args)
            .env("XDG_STATE_HOME", &deep)
            .env("XDG_RUNTIME_DIR", &runtime)
            .output()
            .unwrap()
    };
    let out = run(&["up", "--no-start"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is a symbolic link"), "{stderr}");
    let out = run(&["destroy"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        std::fs::read_dir(&victim).unwrap().count(),
        1,
        "the victim folder changed"
    );
    // Ours, made by us, works; `destroy` leaves nothing of the project there.
    std::fs::remove_file(runtime.join("qemu-compose")).unwrap();
    let out = run(&["up", "--no-start"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_dir(runtime.join("qemu-compose"))
            .unwrap()
            .count(),
        1
    );
    let out = run(&["destroy"]);
    assert!(out.status.success());
    assert_eq!(
        std::fs::read_dir(runtime.join("qemu-compose"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn stop_takes_independent_vms_together_and_dependencies_last() {
    let _qemu = one_qemu_at_a_time();
    let p = Project::with_base(
        "x-vm: &vm {image: ./base.qcow2, memory: 64, stop_grace_period: 1s}\nvms:\n  a: *vm\n  b: {<<: *vm, depends_on: [a]}\n  c: *vm\n",
        "64M",
    );
    let said = p.ok(&["up"]).stderr;
    // Without KVM every VM runs under TCG for the same reason: said once, not per VM.
    assert!(said.matches("TCG (slow)").count() <= 1, "{said}");
    let pids: Vec<i32> = ["a", "b", "c"]
        .iter()
        .map(|vm| p.pid(vm).unwrap())
        .collect();
    // No OS answers the power button: each VM is quit after its stop_grace_period.
    let said = p.ok(&["stop"]).stderr;
    let lines: Vec<&str> = said.lines().collect();
    let first = lines
        .iter()
        .position(|l| *l == "stopping VM b, c (waiting up to 1 s for the guests to power off)")
        .unwrap_or_else(|| panic!("{said}"));
    let last = lines
        .iter()
        .position(|l| *l == "stopping VM a (waiting up to 1 s for the guest to power off)")
        .unwrap_or_else(|| panic!("{said}"));
    assert!(first < last, "{said}");
    for vm in ["a", "b", "c"] {
        assert!(
            said.contains(&format!("VM {vm} did not power off within 1 s")),
            "a final line for {vm}: {said}"
        );
    }
    assert!(pids.iter().all(|pid| !alive(*pid)));
}

#[test]
fn more_memory_than_the_host_has_is_a_warning() {
    let p = Project::with_base("vms:\n  big: {image: ./base.qcow2, memory: 4T}\n", "64M");
    let said = p.ok(&["up", "--no-start"]).stderr;
    assert!(
        said.contains("VM big: memory 4194304 MiB is more than this host has ("),
        "{said}"
    );
}

#[test]
fn a_second_up_no_start_says_up_to_date() {
    let p = Project::with_base("vms:\n  a: {image: ./base.qcow2}\n", "64M");
    let first = p.ok(&["up", "--no-start"]).stderr;
    assert!(first.contains("created VM a (not started)"), "{first}");
    let again = p.ok(&["up", "--no-start"]).stderr;
    assert!(
        again.contains("VM a is up to date (not started)"),
        "{again}"
    );
}

#[test]
fn logs_say_why_there_is_nothing_to_show() {
    let p = Project::with_base("vms:\n  a: {image: ./base.qcow2}\n", "64M");
    p.ok(&["up", "--no-start"]);
    let said = p.ok(&["logs", "a"]).stderr;
    assert!(
        said.contains("VM a has no console log yet (it has not been started)"),
        "{said}"
    );
    std::fs::write(p.private_dir("a").join("serial.log"), "").unwrap();
    let said = p.ok(&["logs", "a"]).stderr;
    assert!(said.contains("VM a's console log is empty"), "{said}");
    // Not running: `-f` shows what there is and ends.
    let said = p.ok(&["logs", "-f", "a"]);
    assert_eq!(said.stdout, "");
}

#[test]
fn a_share_the_guest_user_cannot_write_is_named_when_running_as_root() {
    use std::os::unix::fs::PermissionsExt;
    let p = Project::with_base(
        "vms:\n  a:\n    image: ./base.qcow2\n    volumes: [\"./closed:/c\", \"./open:/o\", \"./ro:/r:ro\"]\n",
        "64M",
    );
    for (dir, mode) in [("closed", 0o755), ("open", 0o777), ("ro", 0o755)] {
        std::fs::create_dir(p.join(dir)).unwrap();
        std::fs::set_permissions(p.join(dir), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let said = p.ok(&["up", "--no-start"]).stderr;
    let root = rustix::process::geteuid().is_root();
    // As an ordinary user the guest user gets the host user's UID, and the share is theirs.
    assert_eq!(
        said.contains("cannot write the shared folder"),
        root,
        "{said}"
    );
    if root {
        assert!(said.contains("closed (owner uid 0, mode 755)"), "{said}");
        assert_eq!(
            said.matches("cannot write the shared folder").count(),
            1,
            "{said}"
        );
    }
}

#[test]
fn another_project_name_in_the_same_folder_is_said_to_be_the_same_vms() {
    let p = Project::with_base("vms:\n  a: {image: ./base.qcow2}\n", "64M");
    let first = p.ok(&["up", "--no-start"]).stderr;
    assert!(!first.contains("project name"), "{first}");
    let again = p.ok(&["up", "--no-start"]).stderr;
    assert!(!again.contains("project name"), "{again}");
    let other = p.ok(&["-p", "other", "up", "--no-start"]).stderr;
    assert!(
        other.contains("were made under the project name")
            && other.contains("as \"other\" they are the same VMs"),
        "{other}"
    );
}

#[test]
fn debug_up_shows_the_qemu_command_line_and_its_time() {
    let _qemu = one_qemu_at_a_time();
    let p = Project::with_base("vms:\n  a: {image: ./base.qcow2, memory: 64}\n", "64M");
    let said = p.ok(&["--debug", "up"]).stderr;
    let line = said
        .lines()
        .find(|l| l.starts_with("debug: VM a: "))
        .unwrap_or_else(|| panic!("{said}"));
    assert!(line.contains("qemu-system-x86_64 -name guest="), "{line}");
    assert!(line.contains("QEMU up and answering QMP in "), "{line}");
    p.ok(&["stop", "--force"]);
    let quiet = p.ok(&["up"]).stderr;
    assert!(quiet.contains("started VM a"), "{quiet}");
    assert!(!quiet.contains("debug:"), "{quiet}");
}

#[test]
fn a_disk_or_volume_image_replaced_by_a_link_is_never_opened() {
    let _qemu = one_qemu_at_a_time();
    let p = Project::with_base(ONE_VM, "64M");
    p.ok(&["up", "--no-start"]);
    // Another qcow2 file of the user's, which a guest writing through a share of the project
    // folder would like QEMU (or the disk growth) to write into.
    let victim = p.join("victim.qcow2");
    tool("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&victim)
        .arg("64M")
        .status()
        .unwrap();
    let before = std::fs::read(&victim).unwrap();
    let disk = p.join(".qemu-compose/vms/app/disk.qcow2");
    std::fs::remove_file(&disk).unwrap();
    std::os::unix::fs::symlink(&victim, &disk).unwrap();
    p.write_compose(&ONE_VM.replace("memory: 128", "memory: 128\n    disk: {size: 20G}"));
    let said = p.fails(&["up"]);
    assert!(said.contains("disk.qcow2: is a symbolic link"), "{said}");
    assert_eq!(std::fs::read(&victim).unwrap(), before);
    assert!(p.pid("app").is_none(), "QEMU must not start");

    // The same for a named volume's image.
    std::fs::remove_file(&disk).unwrap();
    p.write_compose(ONE_VM);
    p.ok(&["up", "--no-start"]);
    let volume = p.join(".qemu-compose/volumes/data/volume.qcow2");
    std::fs::remove_file(&volume).unwrap();
    std::os::unix::fs::symlink(&victim, &volume).unwrap();
    let said = p.fails(&["up"]);
    assert!(said.contains("volume.qcow2: is a symbolic link"), "{said}");
    assert_eq!(std::fs::read(&victim).unwrap(), before);
    assert!(p.pid("app").is_none(), "QEMU must not start");
}
