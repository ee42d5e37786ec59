//! Named volumes through the real CLI, checked with qemu-img and e2fsprogs: creation, the
//! registry, persistence across destroy, crashes mid-creation, concurrent commands and hostile
//! names.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::harness::{ONE_VM, Project, alive, one_qemu_at_a_time, s, text, tool, tool_ok};

impl Project {
    fn registry(&self) -> BTreeMap<String, serde_json::Value> {
        let text = std::fs::read_to_string(self.path().join(".qemu-compose/volumes.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn image(&self, name: &str) -> PathBuf {
        self.path()
            .join(format!(".qemu-compose/volumes/{name}/volume.qcow2"))
    }
}

/// qemu-img check is clean, and the ext4 inside passes e2fsck -fn; returns dumpe2fs -h.
fn check_volume(image: &Path, scratch: &Path) -> String {
    tool_ok("qemu-img", &["check", s(image)]);
    let raw = scratch.join("volume.raw");
    tool_ok("qemu-img", &["convert", "-O", "raw", s(image), s(&raw)]);
    tool_ok("e2fsck", &["-fn", s(&raw)]);
    let dump = tool_ok("dumpe2fs", &["-h", s(&raw)]);
    std::fs::remove_file(&raw).unwrap();
    dump
}

fn dump_field<'a>(dump: &'a str, field: &str) -> &'a str {
    dump.lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim_start_matches(':').trim())
        })
        .unwrap_or_else(|| panic!("dumpe2fs shows no {field}:\n{dump}"))
}

const COMPOSE: &str = "
volumes:
  data: {size: 2G}
vms:
  app:
    image: ./base.qcow2
    volumes: ['data:/srv/data']
";

#[test]
fn volume_create_makes_a_clean_registered_volume() {
    let p = Project::new(COMPOSE);
    assert_eq!(
        p.ok(&["volume", "create", "scratch", "--size", "3G"])
            .stdout,
        "scratch\n"
    );
    let rec = &p.registry()["scratch"];
    assert_eq!(rec["size"], "3G");
    assert_eq!(rec["label"], "scratch");
    // Relative to the state folder, so a copied project uses its own copy.
    assert_eq!(rec["disk_path"], "volumes/scratch/volume.qcow2");
    assert!(p.image("scratch").is_file());

    let info: serde_json::Value = serde_json::from_str(&tool_ok(
        "qemu-img",
        &["info", "--output=json", s(&p.image("scratch"))],
    ))
    .unwrap();
    assert_eq!(info["format"], "qcow2");
    assert_eq!(info["virtual-size"], 3u64 << 30);
    assert_eq!(info["cluster-size"], 65536);

    let dump = check_volume(&p.image("scratch"), p.path());
    assert_eq!(dump_field(&dump, "Filesystem volume name"), "scratch");
    assert_eq!(dump_field(&dump, "Filesystem UUID"), rec["uuid"]);
    assert_eq!(
        dump_field(&dump, "Block count"),
        (3u64 << 30 >> 12).to_string()
    );

    // A declared volume without --size gets its declared size; a second create is refused.
    p.ok(&["volume", "create", "data"]);
    assert_eq!(p.registry()["data"]["size"], "2G");
    let again = p.run(&["volume", "create", "data"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("volume data already exists"));
}

/// A volume of tens of terabytes has hundreds of MiB of metadata to write: its creation says
/// how far it is (lines here, stderr being no terminal), a small one stays silent.
#[test]
fn a_very_large_volume_create_shows_progress() {
    let p = Project::new(COMPOSE);
    let small = p.ok(&["volume", "create", "small", "--size", "10G"]);
    assert_eq!(small.stderr, "", "{}", small.stderr);

    let large = p.ok(&["volume", "create", "large", "--size", "16T"]).stderr;
    let lines: Vec<&str> = large.lines().collect();
    assert!(lines.len() >= 3, "{large}");
    assert!(
        lines[0].starts_with("writing volume large (") && lines[0].ends_with(" MiB)"),
        "{large}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("writing volume large: 50% (")),
        "{large}"
    );
    assert!(
        lines[lines.len() - 2].starts_with("writing volume large: 100% ("),
        "{large}"
    );
    assert!(
        lines[lines.len() - 1].starts_with("writing volume large: done, "),
        "{large}"
    );
    // A raw copy of 16T cannot be made here for e2fsck; qemu-img checks the image.
    tool_ok("qemu-img", &["check", s(&p.image("large"))]);
}

#[test]
fn data_survives_destroy_and_a_new_up() {
    let p = Project::with_base(COMPOSE, "1G");
    p.ok(&["up", "--no-start"]);
    let image = p.image("data");
    let uuid = p.registry()["data"]["uuid"].as_str().unwrap().to_string();

    // Write a file through a real kernel mount of the volume's raw form, then put it back.
    let raw = p.join("data.raw");
    tool_ok("qemu-img", &["convert", "-O", "raw", s(&image), s(&raw)]);
    let mnt = p.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    tool_ok("mount", &["-o", "loop", s(&raw), s(&mnt)]);
    std::fs::write(mnt.join("marker"), "kept\n").unwrap();
    tool_ok("umount", &[s(&mnt)]);
    tool_ok("qemu-img", &["convert", "-O", "qcow2", s(&raw), s(&image)]);

    p.ok(&["destroy"]);
    assert!(image.exists(), "destroy must keep named volumes");
    assert!(!p.join(".qemu-compose/vms/app").exists());
    p.ok(&["up", "--no-start"]);
    assert_eq!(p.registry()["data"]["uuid"], uuid.as_str());
    tool_ok("qemu-img", &["convert", "-O", "raw", s(&image), s(&raw)]);
    let cat = tool_ok("debugfs", &["-R", "cat /marker", s(&raw)]);
    assert_eq!(cat, "kept\n");

    p.ok(&["destroy", "-v"]);
    assert!(!image.exists());
    assert!(p.registry().is_empty());
}

#[test]
fn size_change_warns_and_keeps_the_volume() {
    let p = Project::with_base(COMPOSE, "1G");
    p.ok(&["up", "--no-start"]);
    p.write_compose(&COMPOSE.replace("size: 2G", "size: 5G"));
    let out = p.run(&["up", "--no-start"]);
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("volume data is 2G but the compose file now declares 5G"),
        "{stderr}"
    );
    assert_eq!(p.registry()["data"]["size"], "2G");
}

#[test]
fn killed_creations_never_register_a_broken_volume() {
    let p = Project::with_base(
        "volumes:\n  big: {size: 1T}\nvms:\n  a:\n    image: ./base.qcow2\n    volumes: ['big:/big']\n",
        "1G",
    );
    // Time one whole run, then spread the kills over that duration and count the rounds that
    // stopped the command with the volume half-made.
    let state = p.join(".qemu-compose");
    let started = std::time::Instant::now();
    p.ok(&["up", "--no-start"]);
    let whole = started.elapsed();
    std::fs::remove_dir_all(&state).unwrap();
    let rounds = 16u32;
    let mut interrupted_mid_creation = 0;
    for i in 0..rounds * 2 {
        let mut child = p
            .command(&["up", "--no-start"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(whole * (i % rounds) / rounds);
        let _ = child.kill();
        child.wait().unwrap();
        let registry_path = state.join("volumes.json");
        let registered = registry_path.exists() && p.registry().contains_key("big");
        if registered {
            tool_ok("qemu-img", &["check", s(&p.image("big"))]);
        } else if state.join("volumes/big").exists() {
            interrupted_mid_creation += 1;
        }
        if state.exists() {
            std::fs::remove_dir_all(&state).unwrap();
        }
        if i + 1 >= rounds && interrupted_mid_creation > 0 {
            break;
        }
    }
    assert!(
        interrupted_mid_creation > 0,
        "no kill landed while the volume was being made; the test proves nothing"
    );
    // After an interruption, a rerun completes the volume.
    let mut child = p
        .command(&["up", "--no-start"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(15));
    let _ = child.kill();
    child.wait().unwrap();
    p.ok(&["up", "--no-start"]);
    assert!(p.registry().contains_key("big"));
    check_volume(&p.image("big"), p.path());
}

#[test]
fn concurrent_commands_serialise_on_the_project_lock() {
    let p = Project::with_base(COMPOSE, "1G");
    let spawn = |args: &[&str]| {
        p.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn(&["volume", "create", "one", "--size", "1T"]);
    let b = spawn(&["volume", "create", "two", "--size", "1T"]);
    let c = spawn(&["up", "--no-start"]);
    let d = spawn(&["volume", "create", "one", "--size", "1G"]);
    let outs: Vec<Output> = [a, b, c, d]
        .into_iter()
        .map(|ch| ch.wait_with_output().unwrap())
        .collect();
    assert!(
        outs[0].status.success() ^ outs[3].status.success(),
        "exactly one creates 'one'"
    );
    for out in &outs[1..3] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let reg = p.registry();
    assert_eq!(
        reg.keys().map(String::as_str).collect::<Vec<_>>(),
        ["data", "one", "two"]
    );
    for name in ["data", "one", "two"] {
        tool_ok("qemu-img", &["check", s(&p.image(name))]);
    }
}

#[test]
fn hostile_names_and_paths_are_refused() {
    let p = Project::new(COMPOSE);
    for name in [
        "../x",
        "a/b",
        "bad\nname",
        &"x".repeat(300),
        "Upper",
        "-dash",
        "",
    ] {
        // Every command that takes a volume name, reading ones included: `../x` would
        // otherwise name ../x/volume.qcow2 outside the volumes folder.
        for args in [
            &["volume", "create", "--", name][..],
            &["volume", "inspect", "--", name],
            &["volume", "export", "--", name, "out"],
        ] {
            let out = p.run(args);
            assert_eq!(out.status.code(), Some(2), "{args:?} was accepted");
            let stderr = text(&out.stderr);
            assert!(stderr.contains("invalid volume name"), "{args:?}: {stderr}");
        }
    }
    assert!(!p.join("out").exists());
    assert!(!p.join("x").exists() && !p.join(".qemu-compose/vms/x").exists());

    // A planted symlink in place of a volume folder must not be followed.
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(p.join(".qemu-compose/volumes")).unwrap();
    std::os::unix::fs::symlink(outside.path(), p.join(".qemu-compose/volumes/data")).unwrap();
    let out = p.run(&["volume", "create", "data"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("symbolic link"));
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

#[test]
fn corrupt_registry_is_reported_and_kept() {
    let p = Project::new(COMPOSE);
    std::fs::create_dir_all(p.join(".qemu-compose")).unwrap();
    let registry = p.join(".qemu-compose/volumes.json");
    std::fs::write(&registry, "{ oops").unwrap();
    let out = p.run(&["volume", "create", "data"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("volumes.json is corrupt"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&registry).unwrap(), "{ oops");
}

#[test]
fn missing_and_unregistered_images_are_reported() {
    let p = Project::with_base(COMPOSE, "1G");
    p.ok(&["volume", "create", "data"]);
    p.ok(&["volume", "create", "gone"]);
    std::fs::remove_file(p.image("gone")).unwrap();
    // An image that a crash left unregistered.
    let reg_path = p.join(".qemu-compose/volumes.json");
    let mut reg = p.registry();
    reg.remove("data");
    std::fs::write(&reg_path, serde_json::to_string(&reg).unwrap()).unwrap();

    let out = p.run(&["volume", "ls"]);
    assert!(out.status.success());
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("gone") && l.contains("image-missing")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("data") && l.contains("not-registered")),
        "{stdout}"
    );
    assert!(stderr.contains("volume gone: recorded in volumes.json but its image is missing"));

    // `up` adopts the verified unregistered image and names the missing one.
    let out = p.run(&["up", "--no-start"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("was not recorded in volumes.json"));
    assert!(p.registry().contains_key("data"));
    p.write_compose(&COMPOSE.replace("data: {size: 2G}", "data: {size: 2G}\n  gone: {}"));
    let out = p.run(&["up", "--no-start"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("volume gone is recorded in volumes.json but its image"));
}

/// Plants the temporary files a killed command leaves behind and returns their paths.
fn plant_temporaries(p: &Project) -> Vec<PathBuf> {
    let state = p.join(".qemu-compose");
    let planted: Vec<PathBuf> = [
        ".tmp-volumes.json.x1",
        "app/.disk-killed.tmp",
        "app/.tmp-seed.x2",
        "ssh/.tmp-key.x3",
        "volumes/data/.volume-killed.tmp",
    ]
    .iter()
    .map(|f| state.join(f))
    .collect();
    for path in &planted {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"half-written").unwrap();
    }
    planted
}

#[test]
fn stale_temporaries_are_swept_by_the_next_command() {
    let p = Project::with_base(COMPOSE, "1G");
    p.ok(&["up", "--no-start"]);
    for args in [
        &["up", "--no-start"][..],
        &["volume", "create", "other"][..],
    ] {
        let planted = plant_temporaries(&p);
        p.ok(args);
        for path in planted {
            assert!(!path.exists(), "{args:?} left {}", path.display());
        }
    }
    // What is not a temporary stays.
    assert!(p.image("data").exists() && p.image("other").exists());
    assert!(p.join(".qemu-compose/vms/app/disk.qcow2").exists());
}

#[test]
fn a_failed_volume_create_leaves_nothing() {
    let p = Project::new(COMPOSE);
    let out = p.run(&["volume", "create", "odd", "--size", "10000001"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!p.join(".qemu-compose/volumes/odd").exists());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("volume odd: size 10000001 bytes is not a multiple of 512 bytes"),
        "{stderr}"
    );
    let registry = p.join(".qemu-compose/volumes.json");
    assert!(!registry.exists() || !p.registry().contains_key("odd"));
}

/// Kills a QEMU that no compose file names any more, whatever the test did.
struct KillOnDrop(i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-9", &self.0.to_string()])
            .status();
        // Until the process is gone, not only no longer alive: a dying process drops its
        // memory (and its cmdline) before it closes its files, and so the image lock.
        for _ in 0..200 {
            if !Path::new(&format!("/proc/{}", self.0)).exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn volumes_held_by_a_vm_gone_from_the_file_are_not_removed() {
    let _one = one_qemu_at_a_time();
    let p = Project::with_base(ONE_VM, "1G");
    p.ok(&["up"]);
    let qemu = KillOnDrop(p.pid("app").expect("a pidfile"));
    assert!(alive(qemu.0));
    // The VM leaves the compose file; its QEMU keeps running with the volume attached.
    p.write_compose("volumes:\n  data: {size: 1G}\nvms:\n  other: {image: ./base.qcow2}\n");
    for args in [
        &["volume", "rm", "data"][..],
        &["volume", "rm", "--force", "data"][..],
        &["destroy", "-v"][..],
    ] {
        let out = p.run(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("volume data is attached to a running VM"),
            "{args:?}: {stderr}"
        );
        assert!(p.image("data").exists(), "{args:?} removed the image");
        assert!(p.registry().contains_key("data"), "{args:?}");
    }
    assert!(alive(qemu.0));
    drop(qemu);
    p.ok(&["volume", "rm", "data"]);
    assert!(!p.image("data").exists());
}

#[test]
fn volume_rm_refuses_an_image_any_qemu_holds_read_only() {
    let _one = one_qemu_at_a_time();
    let p = Project::new(COMPOSE);
    p.ok(&["volume", "create", "solo", "--size", "64M"]);
    p.ok(&["volume", "create", "spare", "--size", "64M"]);
    let image = p.image("solo");
    let mut child = tool("qemu-system-x86_64")
        .args(["-S", "-nodefaults", "-display", "none", "-drive"])
        .arg(format!(
            "file={},format=qcow2,if=none,readonly=on",
            s(&image)
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let qemu = KillOnDrop(child.id() as i32);
    // QEMU takes its image locks once it has opened the drive: wait for them on this inode.
    let inode = format!(
        ":{} ",
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&image).unwrap())
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string("/proc/locks")
        .unwrap()
        .lines()
        .any(|l| l.contains("OFDLCK") && l.contains(&inode))
    {
        assert!(std::time::Instant::now() < deadline, "QEMU took no lock");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Two names: the held one stops the command before anything is removed.
    let out = p.run(&["volume", "rm", "spare", "solo"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("volume solo is attached to a running VM"),
        "{stderr}"
    );
    assert!(image.exists() && p.image("spare").exists());
    drop(qemu);
    child.wait().unwrap();
    p.ok(&["volume", "rm", "spare", "solo"]);
    assert!(!image.exists() && !p.image("spare").exists());
}

#[test]
fn destroy_v_keeps_volumes_the_file_does_not_declare() {
    let p = Project::with_base(COMPOSE, "1G");
    p.ok(&["up", "--no-start"]);
    p.ok(&["volume", "create", "scratch"]);
    let out = p.run(&["destroy", "-v"]);
    assert!(out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("removed volume data"), "{stderr}");
    assert!(
        stderr.contains("kept volume scratch: the compose file does not declare it"),
        "{stderr}"
    );
    assert!(!p.image("data").exists());
    assert!(p.image("scratch").exists());
    assert_eq!(
        p.registry().keys().map(String::as_str).collect::<Vec<_>>(),
        ["scratch"]
    );
}

/// Removes a file outside the project, whatever the test did.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn file_bind_sources_follow_symlinks_and_fall_back_to_read_only_copies() {
    use std::os::unix::fs::MetadataExt;
    let _one = one_qemu_at_a_time();
    // A source on another file system than the project cannot be hard-linked (EXDEV), as a
    // file of another user cannot under protected_hardlinks (EPERM, which root never gets).
    let other_fs = RemoveOnDrop(PathBuf::from(format!(
        "/dev/shm/qemu-compose-test-{}.conf",
        std::process::id()
    )));
    std::fs::write(&other_fs.0, "from another file system\n").unwrap();
    let p = Project::with_base(
        &format!(
            "vms:\n  app:\n    image: ./base.qcow2\n    memory: 128\n    volumes:\n      - ./app.conf:/etc/app.conf\n      - {}:/etc/other.conf\n",
            s(&other_fs.0)
        ),
        "1G",
    );
    assert_ne!(
        std::fs::metadata(&other_fs.0).unwrap().dev(),
        std::fs::metadata(p.path()).unwrap().dev(),
        "/dev/shm must be another file system than the test's temporary folder"
    );
    std::fs::create_dir(p.join("real")).unwrap();
    let real = p.join("real/app.conf.real");
    std::fs::write(&real, "the real content\n").unwrap();
    std::os::unix::fs::symlink("real/app.conf.real", p.join("app.conf")).unwrap();

    let out = p.run(&["up"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let _qemu = KillOnDrop(p.pid("app").expect("a pidfile"));

    // The symlink is followed: the share holds a hard link to the file it names.
    let shares = p.private_dir("app").join("file-shares");
    let linked = shares.join("mount0/app.conf");
    let meta = std::fs::symlink_metadata(&linked).unwrap();
    assert!(meta.file_type().is_file(), "{meta:?}");
    assert_eq!(meta.ino(), std::fs::metadata(&real).unwrap().ino());
    assert_eq!(
        std::fs::read_to_string(&linked).unwrap(),
        "the real content\n"
    );
    // The unlinkable file is copied, with a warning, and shared read-only.
    let name = other_fs.0.file_name().unwrap();
    let copied = shares.join("mount1").join(name);
    assert_eq!(
        std::fs::read_to_string(&copied).unwrap(),
        "from another file system\n"
    );
    assert!(
        stderr.contains(&format!(
            "VM app: {}: it is on another file system than the private state folder",
            s(&other_fs.0)
        )) && stderr.contains(
            "shared as a read-only copy, and host edits are not seen until the next `up`"
        ),
        "{stderr}"
    );
    assert!(
        !stderr.contains("app.conf: it is on another file system"),
        "{stderr}"
    );
    let record = p.record("app");
    let virtfs = |tag: &str| {
        record["argv"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|a| a.as_str())
            .find(|a| {
                a.contains(&format!("mount_tag={tag},")) || a.ends_with(&format!("mount_tag={tag}"))
            })
            .unwrap_or_else(|| panic!("no -virtfs for {tag}: {record}"))
            .to_string()
    };
    assert!(
        !virtfs("mount0").contains("readonly=on"),
        "{}",
        virtfs("mount0")
    );
    assert!(
        virtfs("mount1").contains("readonly=on"),
        "{}",
        virtfs("mount1")
    );
    assert!(virtfs("mount0").contains(&format!("path={},", s(&shares.join("mount0")))));

    // A VM still running from the project's file shares of an earlier version: they go, and
    // the note says how to get the file mounts back.
    let old = p.join(".qemu-compose/vms/app/file-shares/mount0");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::hard_link(&real, old.join("app.conf")).unwrap();
    let again = p.run(&["up"]);
    let stderr = text(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains("VM app runs with its file shares in the project folder, where a guest given the project could write the shared files; they were removed, so its file bind mounts are gone until `qemu-compose up --force-recreate app` restarts it"),
        "{stderr}"
    );
    assert!(!p.join(".qemu-compose/vms/app/file-shares").exists());
    assert_eq!(std::fs::metadata(&real).unwrap().nlink(), 2);
    p.ok(&["destroy", "--force"]);
}

/// Every hard link to `file` under `dir` (same device and inode), symbolic links not followed.
fn hard_links_under(dir: &Path, file: &Path) -> Vec<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let want = std::fs::metadata(file).unwrap();
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(folder) = todo.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                todo.push(path);
            } else if (meta.dev(), meta.ino()) == (want.dev(), want.ino()) {
                found.push(path);
            }
        }
    }
    found
}

/// The `path=` of the `-virtfs` that exports `tag` in an `inspect --format json` answer.
fn virtfs_path(inspect: &serde_json::Value, tag: &str) -> PathBuf {
    let argv = inspect["qemu"]["argv"].as_array().expect("an argv");
    let arg = argv
        .iter()
        .filter_map(|a| a.as_str())
        .find(|a| a.starts_with("local,") && a.contains(&format!(",mount_tag={tag},")))
        .unwrap_or_else(|| panic!("no -virtfs for {tag}: {inspect}"));
    let path = arg.split(',').find_map(|o| o.strip_prefix("path="));
    PathBuf::from(path.expect("a path="))
}

#[test]
fn file_shares_live_in_the_private_folder_never_in_the_shared_project() {
    use std::os::unix::fs::MetadataExt;
    // A file outside the project, as `~/.gitconfig` would be.
    let outside = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let gitconfig = outside.path().join("gitconfig");
    std::fs::write(&gitconfig, "[user]\n").unwrap();
    let p = Project::with_base(
        &format!(
            "vms:\n  app:\n    image: ./base.qcow2\n    memory: 128\n    volumes:\n      - .:/src\n      - ./nginx.conf:/etc/nginx/nginx.conf:ro\n      - {}:/home/u/.gitconfig:ro\n",
            s(&gitconfig)
        ),
        "1G",
    );
    let conf = p.join("nginx.conf");
    std::fs::write(&conf, "events {}\n").unwrap();
    // What an earlier version left in the project: the guest's `/src` reached it.
    let old = p.join(".qemu-compose/vms/app/file-shares/mount1");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::hard_link(&conf, old.join("nginx.conf")).unwrap();

    p.ok(&["up", "--no-start"]);

    let state = p.join(".qemu-compose");
    for file in [&conf, &gitconfig] {
        let links = hard_links_under(&state, file);
        assert!(
            links.is_empty(),
            "{} is linked at {links:?}",
            file.display()
        );
    }
    assert!(!state.join("vms/app/file-shares").exists());
    // Still hard links (host edits reach the guest), in the private folder.
    let shares = p.private_dir("app").join("file-shares");
    for (tag, file) in [("mount1", &conf), ("mount2", &gitconfig)] {
        let link = shares.join(tag).join(file.file_name().unwrap());
        let meta = std::fs::symlink_metadata(&link).unwrap();
        assert_eq!(
            meta.ino(),
            std::fs::metadata(file).unwrap().ino(),
            "{}",
            link.display()
        );
    }
    // The folders QEMU exports are those.
    let inspect = p.json(&["inspect", "app", "--format", "json"]);
    assert_eq!(inspect["qemu"]["planned"], true, "{inspect}");
    assert_eq!(
        virtfs_path(&inspect, "mount0"),
        p.path().canonicalize().unwrap()
    );
    for tag in ["mount1", "mount2"] {
        assert_eq!(virtfs_path(&inspect, tag), shares.join(tag));
    }
}

#[test]
fn a_file_on_another_file_system_than_the_private_folder_is_shared_as_a_copy() {
    use std::os::unix::fs::MetadataExt;
    let state_home = tempfile::tempdir_in("/dev/shm").unwrap();
    let p = Project::with_base(
        "vms:\n  app:\n    image: ./base.qcow2\n    memory: 128\n    volumes:\n      - .:/src\n      - ./app.conf:/etc/app.conf\n",
        "1G",
    );
    let conf = p.join("app.conf");
    std::fs::write(&conf, "the content\n").unwrap();
    assert_ne!(
        std::fs::metadata(state_home.path()).unwrap().dev(),
        std::fs::metadata(&conf).unwrap().dev(),
        "/dev/shm must be another file system than the test's temporary folder"
    );
    let run = |args: &[&str]| {
        let out = p
            .command(args)
            .env("XDG_STATE_HOME", state_home.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        out
    };

    let out = run(&["up", "--no-start"]);
    let private = qemu_compose::state::StateDir::with_private_home(
        &p.path().canonicalize().unwrap(),
        &state_home.path().join("qemu-compose"),
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "app.conf: it is on another file system than the private state folder {}; it is shared as a read-only copy, and host edits are not seen until the next `up`",
            private.private().display()
        )),
        "{stderr}"
    );
    let copy = private
        .vm_private_dir("app")
        .join("file-shares/mount1/app.conf");
    assert_eq!(std::fs::read_to_string(&copy).unwrap(), "the content\n");
    assert_eq!(std::fs::metadata(&conf).unwrap().nlink(), 1);
    assert!(hard_links_under(&p.join(".qemu-compose"), &conf).is_empty());
    let inspect: serde_json::Value =
        serde_json::from_slice(&run(&["inspect", "app", "--format", "json"]).stdout).unwrap();
    assert_eq!(virtfs_path(&inspect, "mount1"), copy.parent().unwrap());
}

#[test]
fn a_declared_volume_not_yet_made_is_said_so() {
    let p = Project::new(COMPOSE);
    let said = p.fails(&["volume", "inspect", "data"]);
    assert!(
        said.contains("volume data is declared in the compose file but not created yet"),
        "{said}"
    );
    let said = p.fails(&["volume", "inspect", "nope"]);
    assert!(said.contains("no volume named \"nope\""), "{said}");
}

#[test]
fn a_tampered_volume_is_refused_without_opening_the_file_it_names() {
    let p = Project::new(COMPOSE);
    p.ok(&["volume", "create", "data"]);
    // A FIFO blocks whoever opens it for reading: inspecting must not open it.
    let fifo = p.join("trap");
    assert!(tool("mkfifo").arg(&fifo).status().unwrap().success());
    let image = p.join(".qemu-compose/volumes/data/volume.qcow2");
    tool_ok(
        "qemu-img",
        &[
            "rebase",
            "-u",
            "-f",
            "qcow2",
            "-b",
            s(&fifo),
            "-F",
            "raw",
            s(&image),
        ],
    );
    let mut child = p
        .command(&["volume", "inspect", "data"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("volume inspect opened the backing file it names and hung");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("it has a backing file"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn listings_have_quiet_and_json_forms_and_tables_start_at_the_margin() {
    let p = Project::new(COMPOSE);
    assert_eq!(p.ok(&["volume", "ls", "-q"]).stdout, "data\n");
    let table = p.ok(&["volume", "ls"]).stdout;
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME   SIZE"), "{table}");
    assert!(lines[1].starts_with("data   "), "{table}");
    assert!(lines[1].ends_with("not-created"), "{table}");
    let rows: serde_json::Value =
        serde_json::from_str(&p.ok(&["volume", "ls", "--format", "json"]).stdout).unwrap();
    assert_eq!(rows[0]["status"], "not-created");
    assert_eq!(p.ok(&["image", "ls", "-q"]).stdout, "");
    assert_eq!(p.ok(&["image", "ls", "--format", "json"]).stdout, "[]\n");
}

#[test]
fn volume_inspect_reads_as_text_by_default() {
    let p = Project::new(COMPOSE);
    p.ok(&["volume", "create", "data"]);
    let json: serde_json::Value = serde_json::from_str(
        &p.ok(&["volume", "inspect", "data", "--format", "json"])
            .stdout,
    )
    .unwrap();
    let text = p.ok(&["volume", "inspect", "data"]).stdout;
    assert!(text.starts_with("Volume data\n"), "{text}");
    let uuid = json["filesystem"]["uuid"].as_str().unwrap();
    assert!(text.contains(&format!("  uuid:      {uuid}\n")), "{text}");
    assert!(text.contains("  in use by: app\n"), "{text}");
    assert!(text.contains("  state:     clean\n"), "{text}");
}
