//! aarch64 guests (issue 17): a real arm64 Linux under TCG next to an x86 VM, through the
//! real CLI, and what `doctor` says about the other architecture on this host.
//!
//! The guest is Debian's arm64 kernel with a busybox initramfs whose /init mounts the named
//! volume whose serial the kernel command line names (ext4, made by us) and the first 9p share, writes a marker into each, prints
//! to the serial console and powers off (scripts/build-arm64-guest.sh; built without root,
//! cached under /var/tmp, so only the first run needs the Debian mirror). It boots in seconds,
//! which is why it lives here rather than in the long opt-in tests/e2e.rs: every test run
//! proves the whole aarch64 path.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Project, alive, one_qemu_at_a_time, s, text, tool, tool_ok};

/// The guest's files, built (or found in the cache) by the script.
struct Guest {
    kernel: PathBuf,
    initrd: PathBuf,
    cmdline: String,
}

fn arm64_guest() -> Guest {
    let dir = std::env::var_os("QEMU_COMPOSE_ARM64_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/qemu-compose-arm64-guest"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-arm64-guest.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} failed (it needs the Debian mirror apt uses on its first run):\n{}",
        script.display(),
        text(&out.stderr)
    );
    let env = std::fs::read_to_string(dir.join("guest.env")).unwrap();
    let cmdline = env
        .lines()
        .find_map(|l| l.strip_prefix("KERNEL_APPEND="))
        .expect("guest.env names KERNEL_APPEND")
        .replace("\\ ", " ");
    Guest {
        kernel: dir.join("Image"),
        initrd: dir.join("initrd.img"),
        cmdline,
    }
}

/// An arm64 VM and a bootless x86 VM, each with its own named volume and both with the
/// same bind-mounted folder and project network.
fn compose(guest: &Guest) -> String {
    format!(
        "volumes:
  armdata: {{size: 64M}}
  pcdata: {{size: 64M}}
networks:
  back: {{}}
vms:
  arm:
    arch: arm64
    image: ./base.qcow2
    kernel: {kernel}
    initrd: {initrd}
    cmdline: \"{cmdline} qc.volume=armdata\"
    cpu: 2
    memory: 256
    volumes: ['armdata:/data', './share:/share']
    networks: [back]
  pc:
    image: ./base.qcow2
    memory: 128
    stop_grace_period: 1s
    volumes: ['pcdata:/data', './share:/share']
    networks: [back]
",
        kernel = s(&guest.kernel),
        initrd = s(&guest.initrd),
        cmdline = guest.cmdline,
    )
}

#[test]
fn an_arm64_guest_boots_next_to_an_x86_vm_and_writes_our_volume_and_share() {
    let _one = one_qemu_at_a_time();
    tool("qemu-system-aarch64");
    let guest = arm64_guest();
    let p = Project::with_base(&compose(&guest), "64M");
    std::fs::create_dir(p.join("share")).unwrap();
    // The guest writes as its root: as an ordinary user, 9p maps that to us anyway.
    std::fs::set_permissions(
        p.join("share"),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();

    let t = Instant::now();
    let stderr = p.ok(&["up"]).stderr;
    if cfg!(target_arch = "x86_64") {
        assert!(
            stderr.contains(
                "TCG (slow): the guest is aarch64 and the host x86_64: KVM runs only guests of the host's architecture"
            ),
            "{stderr}"
        );
    }
    assert!(stderr.contains("started VM arm"), "{stderr}");
    assert!(stderr.contains("started VM pc"), "{stderr}");
    let argv = |vm: &str| -> Vec<String> {
        p.record(vm)["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_owned())
            .collect()
    };
    let arm_argv = argv("arm");
    assert!(
        p.record("arm")["qemu"]
            .as_str()
            .unwrap()
            .ends_with("qemu-system-aarch64")
    );
    assert!(
        p.record("pc")["qemu"]
            .as_str()
            .unwrap()
            .ends_with("qemu-system-x86_64")
    );
    assert!(
        arm_argv.iter().any(|a| a.starts_with("virt,")),
        "{arm_argv:?}"
    );
    assert!(argv("pc").iter().any(|a| a.starts_with("q35,")));
    // Direct kernel boot: no firmware, no variable store.
    assert!(!arm_argv.iter().any(|a| a.contains("pflash")));
    assert!(!p.private_dir("arm").join("efi-vars.fd").exists());

    // The guest powers itself off once its markers are written.
    let serial = p.private_dir("arm").join("serial.log");
    let pid = p.pid("arm").expect("a pidfile");
    let deadline = Instant::now() + Duration::from_secs(180);
    while alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = t.elapsed();
    let console = std::fs::read_to_string(&serial).unwrap_or_default();
    assert!(!alive(pid), "the arm64 guest did not power off:\n{console}");
    assert!(
        console.contains("ARM64-GUEST-DONE arm64-marker aarch64"),
        "{console}"
    );
    assert!(!console.contains("ARM64-GUEST-FAIL"), "{console}");
    eprintln!(
        "arm64: up to power-off under TCG in {:.1} s",
        elapsed.as_secs_f64()
    );

    // The share, on the host.
    assert_eq!(
        std::fs::read_to_string(p.join("share/arm64-marker")).unwrap(),
        "arm64-marker aarch64\n"
    );
    // The volume, read by the reference tools from a raw copy.
    let raw = p.join("armdata.raw");
    let qcow2 = p.join(".qemu-compose/volumes/armdata/volume.qcow2");
    tool_ok("qemu-img", &["convert", "-O", "raw", s(&qcow2), s(&raw)]);
    tool_ok("e2fsck", &["-fn", s(&raw)]);
    assert_eq!(
        tool_ok("debugfs", &["-R", "cat /arm64-marker", s(&raw)]),
        "arm64-marker aarch64\n"
    );

    // ps sees the arm64 VM stopped, the x86 one up (bootless: never SSH-ready, so
    // "starting"); stop ends both cleanly.
    let ps = p.json(&["ps", "--format", "json"]);
    let status = |vm: &str| {
        ps.as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == vm)
            .map(|v| v["status"].as_str().unwrap_or_default().to_owned())
            .unwrap()
    };
    assert_eq!(status("arm"), "stopped", "{ps}");
    assert_eq!(status("pc"), "starting", "{ps}");
    let stderr = p.ok(&["stop"]).stderr;
    assert!(
        stderr.contains("QEMU was told to quit"),
        "pc ignores the power button: {stderr}"
    );
    let ps = p.json(&["ps", "--format", "json"]);
    for vm in ps.as_array().unwrap() {
        assert_eq!(vm["status"], "stopped", "{ps}");
    }
}

#[test]
fn an_x86_kernel_for_an_arm64_vm_is_refused_before_anything_starts() {
    let p = Project::with_base(
        "vms:\n  arm:\n    arch: aarch64\n    image: ./base.qcow2\n    kernel: ./bzImage\n",
        "64M",
    );
    let mut bz = vec![0u8; 0x400];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    std::fs::write(p.join("bzImage"), bz).unwrap();
    let stderr = p.fails(&["up"]);
    assert!(
        stderr.contains("VM arm") && stderr.contains("is an x86_64 kernel but the VM is aarch64"),
        "{stderr}"
    );
    assert!(!p.join(".qemu-compose/vms/arm").exists());
}

#[test]
fn a_cloud_image_vm_gets_firmware_and_its_own_variable_store() {
    let _one = one_qemu_at_a_time();
    tool("qemu-system-aarch64");
    let p = Project::with_base(
        "vms:\n  arm:\n    arch: aarch64\n    image: ./base.qcow2\n    memory: 256\n    stop_grace_period: 1s\n",
        "64M",
    );
    // A firmware of the wrong size is named in the error, with where it came from.
    let small = p.join("QEMU_EFI.fd");
    std::fs::File::create(&small)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let out = p
        .command(&["up", "--no-start"])
        .env("QEMU_COMPOSE_AARCH64_FIRMWARE", &small)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("QEMU_COMPOSE_AARCH64_FIRMWARE") && stderr.contains("exactly 64 MiB"),
        "{stderr}"
    );
    assert!(!p.private_dir("arm").join("efi-vars.fd").exists());

    // The Debian firmware (qemu-efi-aarch64, which .ci/install-deps installs) is found.
    p.ok(&["up"]);
    let argv = p.record("arm")["argv"].to_string();
    assert!(
        argv.contains("pflash0=firmware-code,pflash1=firmware-vars"),
        "{argv}"
    );
    assert!(argv.contains("/usr/share/AAVMF/AAVMF_CODE.fd"), "{argv}");
    let vars = p.private_dir("arm").join("efi-vars.fd");
    assert_eq!(std::fs::metadata(&vars).unwrap().len(), 64 << 20);
    // UEFI starts and, with no OS on the disk, says so on the serial console.
    let serial = p.private_dir("arm").join("serial.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut console = String::new();
    while Instant::now() < deadline && !console.contains("UEFI firmware") {
        std::thread::sleep(Duration::from_millis(500));
        console = std::fs::read_to_string(&serial).unwrap_or_default();
    }
    assert!(console.contains("UEFI firmware"), "{console}");
    p.ok(&["destroy"]);
    assert!(!vars.exists());
}

#[test]
fn doctor_says_what_arm64_guests_get_on_this_host() {
    tool("qemu-system-aarch64");
    let p = Project::new("vms:\n  arm:\n    arch: aarch64\n    image: ./base.qcow2\n");
    let stdout = p.ok(&["doctor"]).stdout;
    let line = |topic: &str| {
        stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(topic))
            .unwrap_or_else(|| panic!("no {topic} line:\n{stdout}"))
            .to_owned()
    };
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("ok")
                && l.contains("/qemu-system-aarch64 (QEMU emulator version")),
        "{stdout}"
    );
    assert!(
        line("firmware").starts_with("ok") && line("firmware").contains("AAVMF_CODE.fd"),
        "{stdout}"
    );
    if cfg!(target_arch = "x86_64") {
        assert!(
            line("aarch64").starts_with("warn") && line("aarch64").contains("TCG (host is x86_64)"),
            "{stdout}"
        );
    }

    // Without firmware, a project whose aarch64 VM boots its image cannot start: FAIL.
    let out = p
        .command(&["doctor"])
        .env("QEMU_COMPOSE_AARCH64_FIRMWARE", "/nonexistent/CODE.fd")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("FAIL")
            && l.contains("firmware")
            && l.contains("/nonexistent/CODE.fd")),
        "{stdout}"
    );

    // A VM that names its own firmware needs none from the host: a warning, not a failure.
    std::fs::write(p.join("CODE.fd"), vec![0u8; 1 << 20]).unwrap();
    p.write_compose(
        "vms:\n  arm:\n    arch: aarch64\n    image: ./base.qcow2\n    firmware: ./CODE.fd\n",
    );
    let out = p
        .command(&["doctor"])
        .env("QEMU_COMPOSE_AARCH64_FIRMWARE", "/nonexistent/CODE.fd")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("warn") && l.contains("firmware")),
        "{stdout}"
    );
    assert!(!stdout.lines().any(|l| l.starts_with("FAIL")), "{stdout}");
}
