//! The process layer against the real `qemu-system-x86_64` (TCG, 64 MiB, an empty qcow2 disk:
//! QEMU runs fine without a bootable OS). Every test holds a guard that ends its QEMU, so none
//! survives a failing assertion; tests run one at a time to keep the shared CPUs usable.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use qemu_compose::qemu::Arch;
use qemu_compose::qemu::accel::Accel;
use qemu_compose::qemu::argv::{
    BaseImage, DriveFormat, DriveSpec, KernelBoot, LaunchSpec, MacAddress, NetSpec, PortForward,
    Protocol, SecurityModel, ShareSpec,
};
use qemu_compose::qemu::ports::allocate_ssh_port;
use qemu_compose::qemu::process::{self, ProcState, StartError, StopOutcome, VmHandle};
use qemu_compose::qemu::qmp::Qmp;

use crate::harness::{
    Project, one_qemu_at_a_time, qemu_img_create, qemu_img_create_with, qemu_img_info, s, text,
    tool_ok,
};

const START_TIMEOUT: Duration = Duration::from_secs(20);

fn qemu_binary() -> PathBuf {
    process::find_qemu(
        None,
        Arch::X86_64,
        Arch::X86_64,
        std::env::var_os("PATH").as_deref(),
    )
    .unwrap_or_else(|e| {
        panic!("these tests need the real qemu-system-x86_64 (apt install qemu-system-x86): {e}")
    })
}

/// A small TCG VM whose every file lives in `dir`.
fn spec(dir: &Path, ssh_port: u16) -> LaunchSpec {
    let disk = dir.join("disk.qcow2");
    qemu_img_create(&disk, "64M");
    LaunchSpec {
        name: "test-vm".into(),
        arch: Arch::X86_64,
        accel: Accel::Tcg,
        cpus: 1,
        memory_mib: 64,
        kernel: None,
        firmware: None,
        drives: vec![DriveSpec {
            id: "disk".into(),
            path: disk,
            format: DriveFormat::Qcow2,
            serial: "qc-disk".into(),
            read_only: false,
            backing: None,
        }],
        shares: vec![],
        net: NetSpec {
            mac: MacAddress::derived_from("test/vm"),
            ssh_port,
            ports: vec![],
            links: vec![],
        },
        qmp_socket: dir.join("qmp.sock"),
        serial_socket: dir.join("serial.sock"),
        serial_log: dir.join("serial.log"),
        pidfile: dir.join("qemu.pid"),
    }
}

fn free_port() -> u16 {
    allocate_ssh_port(2222, &BTreeSet::new()).unwrap()
}

/// Ends the VM when the test ends, however it ends.
struct Guard(VmHandle);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = process::stop(&self.0, Duration::ZERO, true);
    }
}

fn assert_gone(pid: i32, handle: &VmHandle) {
    assert!(
        !process::is_our_qemu(pid, &handle.pidfile),
        "QEMU {pid} still runs"
    );
    assert_eq!(process::state(handle), ProcState::NotRunning);
}

#[test]
fn start_query_and_stop_falling_back_to_quit() {
    let _one = one_qemu_at_a_time();
    let qemu = qemu_binary();
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let seed = dir.path().join("seed.img");
    std::fs::write(&seed, vec![0u8; 1 << 20]).unwrap();

    let mut spec = spec(dir.path(), free_port());
    // Exercise every kind of option the product emits, read-only forms included.
    spec.drives.push(DriveSpec {
        id: "seed".into(),
        path: seed,
        format: DriveFormat::Raw,
        serial: "qc-seed".into(),
        read_only: true,
        backing: None,
    });
    spec.shares.push(ShareSpec {
        id: "fs0".into(),
        path: share,
        tag: "mount0".into(),
        security_model: SecurityModel::None,
        read_only: true,
    });
    let taken: BTreeSet<u16> = [spec.net.ssh_port].into();
    let tcp = allocate_ssh_port(2300, &taken).unwrap();
    spec.net.ports = vec![
        PortForward {
            protocol: Protocol::Tcp,
            host_ip: Some(Ipv4Addr::LOCALHOST),
            host_port: tcp,
            guest_port: 80,
        },
        PortForward {
            protocol: Protocol::Udp,
            host_ip: Some(Ipv4Addr::LOCALHOST),
            host_port: tcp,
            guest_port: 53,
        },
    ];
    let handle = VmHandle::from(&spec);
    let _guard = Guard(handle.clone());

    let t = Instant::now();
    let started = process::start(&qemu, &spec, START_TIMEOUT).unwrap();
    eprintln!("start took {:?}", t.elapsed());

    let pid_text = std::fs::read_to_string(&spec.pidfile).unwrap();
    assert_eq!(pid_text.trim().parse::<i32>().unwrap(), started.pid);
    assert!(process::is_our_qemu(started.pid, &spec.pidfile));
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", started.pid)).unwrap();
    assert!(
        comm.starts_with("qemu-system"),
        "pid {} is {comm:?}",
        started.pid
    );
    assert_eq!(
        process::state(&handle),
        ProcState::Running { pid: started.pid }
    );
    let mut qmp = Qmp::connect(&spec.qmp_socket, Duration::from_secs(5)).unwrap();
    assert_eq!(qmp.query_status().unwrap(), "running");
    drop(qmp);
    assert!(spec.serial_log.is_file(), "serial log missing");
    assert!(spec.serial_socket.exists(), "serial socket missing");

    // A second start of the same VM is refused, the first one untouched.
    assert!(matches!(
        process::start(&qemu, &spec, START_TIMEOUT),
        Err(StartError::AlreadyRunning { pid }) if pid == started.pid
    ));

    // Nothing in a bootless guest handles the ACPI power button.
    let t = Instant::now();
    let outcome = process::stop(&handle, Duration::from_millis(500), false).unwrap();
    eprintln!("stop took {:?}", t.elapsed());
    assert_eq!(outcome, StopOutcome::Quit);
    assert_gone(started.pid, &handle);
    assert_eq!(
        process::stop(&handle, Duration::ZERO, false).unwrap(),
        StopOutcome::AlreadyStopped
    );
}

#[test]
fn force_stop_skips_the_power_button() {
    let _one = one_qemu_at_a_time();
    let qemu = qemu_binary();
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), free_port());
    let handle = VmHandle::from(&spec);
    let _guard = Guard(handle.clone());
    let started = process::start(&qemu, &spec, START_TIMEOUT).unwrap();
    let t = Instant::now();
    // A long graceful timeout that `force` must not wait for.
    let outcome = process::stop(&handle, Duration::from_secs(60), true).unwrap();
    assert_eq!(outcome, StopOutcome::Quit);
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_gone(started.pid, &handle);
}

#[test]
fn a_taken_ssh_port_fails_with_qemus_message() {
    let _one = one_qemu_at_a_time();
    let qemu = qemu_binary();
    let dir = tempfile::tempdir().unwrap();
    let holder = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = holder.local_addr().unwrap().port();
    let spec = spec(dir.path(), port);
    let handle = VmHandle::from(&spec);
    let _guard = Guard(handle.clone());
    match process::start(&qemu, &spec, START_TIMEOUT) {
        Err(StartError::HostForward {
            rule,
            host_port,
            stderr,
        }) => {
            assert_eq!(rule, format!("tcp:127.0.0.1:{port}-:22"));
            assert_eq!(host_port, Some(port));
            assert!(
                stderr.contains("Could not set up host forwarding rule"),
                "{stderr}"
            );
        }
        other => panic!("expected a host forwarding failure, got {other:?}"),
    }
    assert_eq!(process::state(&handle), ProcState::NotRunning);
}

#[test]
fn a_missing_image_fails_with_qemus_message() {
    let _one = one_qemu_at_a_time();
    let qemu = qemu_binary();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), free_port());
    let missing = dir.path().join("no-such-image.qcow2");
    spec.drives[0].path = missing.clone();
    let handle = VmHandle::from(&spec);
    let _guard = Guard(handle.clone());
    match process::start(&qemu, &spec, START_TIMEOUT) {
        Err(err @ StartError::Failed { .. }) => {
            let text = err.to_string();
            assert!(text.contains(missing.to_str().unwrap()), "{text}");
            assert!(text.contains("No such file or directory"), "{text}");
        }
        other => panic!("expected QEMU to fail, got {other:?}"),
    }
    assert_eq!(process::state(&handle), ProcState::NotRunning);
}

#[test]
fn a_missing_kernel_is_named_verbatim() {
    let _one = one_qemu_at_a_time();
    let qemu = qemu_binary();
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(dir.path(), free_port());
    // -kernel takes a plain path: a comma must reach QEMU undoubled.
    let kernel = dir.path().join("vm,linuz");
    spec.kernel = Some(KernelBoot {
        kernel: kernel.clone(),
        initrd: None,
        cmdline: Some("console=ttyS0,115200".into()),
    });
    let _guard = Guard(VmHandle::from(&spec));
    let err = process::start(&qemu, &spec, START_TIMEOUT).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StartError::Failed { .. }), "{text}");
    assert!(text.contains(kernel.to_str().unwrap()), "{text}");
}

#[test]
fn paths_with_a_comma_and_a_space_work() {
    let _one = one_qemu_at_a_time();
    let qemu = qemu_binary();
    let top = tempfile::tempdir().unwrap();
    let dir = top.path().join("a,b c");
    std::fs::create_dir(&dir).unwrap();
    let share = dir.join("sh,are d");
    std::fs::create_dir(&share).unwrap();
    let mut spec = spec(&dir, free_port());
    spec.name = "odd,name".into();
    spec.shares.push(ShareSpec {
        id: "fs0".into(),
        path: share,
        tag: "mount0".into(),
        security_model: SecurityModel::None,
        read_only: false,
    });
    let handle = VmHandle::from(&spec);
    let _guard = Guard(handle.clone());
    let started = process::start(&qemu, &spec, START_TIMEOUT).unwrap();
    assert!(process::is_our_qemu(started.pid, &spec.pidfile));
    let mut qmp = Qmp::connect(&spec.qmp_socket, Duration::from_secs(5)).unwrap();
    assert_eq!(qmp.query_status().unwrap(), "running");
    // QEMU got the name with its comma, and the disk at its real path.
    let name = qmp.execute("query-name", None).unwrap();
    assert_eq!(name["name"], "odd,name");
    let nodes = qmp.execute("query-named-block-nodes", None).unwrap();
    let file = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "disk-file")
        .expect("the disk's file node")["file"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(Path::new(&file), spec.drives[0].path);
    drop(qmp);
    assert!(
        spec.serial_log.is_file(),
        "serial log not at {:?}",
        spec.serial_log
    );
    assert_eq!(
        process::stop(&handle, Duration::ZERO, true).unwrap(),
        StopOutcome::Quit
    );
    assert_gone(started.pid, &handle);
}

#[test]
fn an_unreachable_qmp_socket_ends_in_sigkill() {
    let _one = one_qemu_at_a_time();
    let qemu = qemu_binary();
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path(), free_port());
    let _guard = Guard(VmHandle::from(&spec));
    let started = process::start(&qemu, &spec, START_TIMEOUT).unwrap();
    // As if the socket had been deleted: neither powerdown nor quit can be asked for.
    let handle = VmHandle {
        pidfile: spec.pidfile.clone(),
        qmp_socket: dir.path().join("gone.sock"),
    };
    let t = Instant::now();
    let outcome = process::stop(&handle, Duration::from_secs(60), false).unwrap();
    assert_eq!(outcome, StopOutcome::Killed);
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_gone(started.pid, &handle);
}

// ---------------------------------------------------------------------------------------------
// Image headers never choose host files.
//
// A guest that can write the project folder (the usual `.:/src` share) can rewrite the header
// of a volume or of its instance disk to name any host file as backing file. QEMU must be given
// the whole chain, so that such a header is inert.

/// Points the header of `image` at `target` as a raw backing file, as a hostile guest would.
fn plant_backing(image: &Path, target: &Path) {
    tool_ok(
        "qemu-img",
        &["rebase", "-u", "-b", s(target), "-F", "raw", s(image)],
    );
    let info = qemu_img_info(image);
    assert_eq!(
        info["backing-filename"],
        s(target),
        "the header was not changed"
    );
}

/// A host file no guest may see.
fn secret(dir: &Path) -> PathBuf {
    let path = dir.join("id_ed25519");
    let mut bytes = b"-----BEGIN OPENSSH PRIVATE KEY-----\n".to_vec();
    bytes.resize(1 << 20, b'k');
    std::fs::write(&path, bytes).unwrap();
    path
}

/// The files the process `pid` has open.
fn open_files(pid: i32) -> Vec<PathBuf> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect()
}

/// The host files of QEMU's protocol nodes, from QMP.
fn node_files(qmp_socket: &Path) -> BTreeSet<PathBuf> {
    let mut qmp = Qmp::connect(qmp_socket, Duration::from_secs(5)).unwrap();
    let nodes = qmp.execute("query-named-block-nodes", None).unwrap();
    nodes
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["drv"] == "file")
        .map(|n| PathBuf::from(n["file"].as_str().unwrap()))
        .collect()
}

#[test]
fn a_backing_file_named_in_a_header_is_never_opened() {
    let _one = one_qemu_at_a_time();
    let qemu = qemu_binary();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let secret = secret(dir);
    let p = |name: &str| dir.join(name);
    let s = |name: &str| p(name).to_str().unwrap().to_owned();

    // The instance disk over a raw base, a volume, and a disk over a qcow2 base: every header
    // then rewritten to name the secret.
    tool_ok(
        "qemu-img",
        &["create", "-q", "-f", "raw", &s("base.img"), "64M"],
    );
    qemu_img_create_with(&p("disk.qcow2"), &["-b", &s("base.img"), "-F", "raw"], None);
    qemu_img_create(&p("vol.qcow2"), "64M");
    qemu_img_create(&p("base2.qcow2"), "64M");
    qemu_img_create_with(
        &p("disk2.qcow2"),
        &["-b", &s("base2.qcow2"), "-F", "qcow2"],
        None,
    );
    for image in ["disk.qcow2", "vol.qcow2", "base2.qcow2"] {
        plant_backing(&p(image), &secret);
    }

    // Control: handed over the way the header asks (`-drive …,format=qcow2`), QEMU opens the
    // secret, so the checks below can see it.
    let control = VmHandle {
        pidfile: p("control.pid"),
        qmp_socket: p("control.sock"),
    };
    let _control_guard = Guard(control.clone());
    let out = Command::new(&qemu)
        .args([
            "-machine",
            "q35,accel=tcg",
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
        ])
        .args([
            "-drive",
            &format!("file={},format=qcow2,if=none,id=v", s("vol.qcow2")),
        ])
        .args([
            "-qmp",
            &format!("unix:{},server=on,wait=off", s("control.sock")),
        ])
        .args(["-daemonize", "-pidfile", &s("control.pid")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let ProcState::Running { pid } = process::state(&control) else {
        panic!("the control QEMU does not run");
    };
    assert!(
        open_files(pid).contains(&secret),
        "the control did not open the secret"
    );
    assert!(node_files(&control.qmp_socket).contains(&secret));
    process::stop(&control, Duration::ZERO, true).unwrap();

    let mut spec = spec(dir, free_port());
    spec.drives = vec![
        DriveSpec {
            id: "disk0".into(),
            path: p("disk.qcow2"),
            format: DriveFormat::Qcow2,
            serial: "disk0".into(),
            read_only: false,
            backing: Some(BaseImage {
                path: p("base.img"),
                format: DriveFormat::Raw,
            }),
        },
        DriveSpec {
            id: "vol0".into(),
            path: p("vol.qcow2"),
            format: DriveFormat::Qcow2,
            serial: "vol0".into(),
            read_only: false,
            backing: None,
        },
        DriveSpec {
            id: "vol1".into(),
            path: p("disk2.qcow2"),
            format: DriveFormat::Qcow2,
            serial: "vol1".into(),
            read_only: true,
            backing: Some(BaseImage {
                path: p("base2.qcow2"),
                format: DriveFormat::Qcow2,
            }),
        },
    ];
    let handle = VmHandle::from(&spec);
    let _guard = Guard(handle.clone());
    let started = process::start(&qemu, &spec, START_TIMEOUT).unwrap();

    let files = node_files(&spec.qmp_socket);
    let ours: BTreeSet<PathBuf> = [
        "disk.qcow2",
        "base.img",
        "vol.qcow2",
        "disk2.qcow2",
        "base2.qcow2",
    ]
    .into_iter()
    .map(p)
    .collect();
    assert_eq!(
        files, ours,
        "QEMU's nodes must be exactly the files we named"
    );
    let open = open_files(started.pid);
    assert!(!open.contains(&secret), "QEMU opened the secret: {open:?}");

    // Read-only stays read-only down the chain; bases are always read-only.
    let mut qmp = Qmp::connect(&spec.qmp_socket, Duration::from_secs(5)).unwrap();
    let nodes = qmp.execute("query-named-block-nodes", None).unwrap();
    let ro = |name: &str| {
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node-name"] == name)
            .unwrap_or_else(|| panic!("no node {name}"))["ro"]
            .as_bool()
            .unwrap()
    };
    assert!(!ro("disk0") && !ro("vol0"));
    assert!(ro("disk0-base") && ro("disk0-base-file") && ro("vol1") && ro("vol1-file"));
    assert!(ro("vol1-base") && ro("vol1-base-file"));
}

// The same through `up`: the engine hands QEMU only files it chose and checks the headers of
// the qcow2 images just before QEMU starts.

const WITH_VOLUME: &str = "
volumes:
  data: {size: 64M}
vms:
  app:
    image: ./base.qcow2
    memory: 64
    volumes: ['data:/data']
";

#[test]
fn up_hands_qemu_no_file_that_a_tampered_header_names() {
    let _one = one_qemu_at_a_time();
    let p = Project::with_base(WITH_VOLUME, "64M");
    let secret = secret(p.path());
    p.ok(&["up"]);
    let disk = p.join(".qemu-compose/vms/app/disk.qcow2");
    let pid = p.pid("app").expect("QEMU runs");
    let files = node_files(&p.private_dir("app").join("qmp.sock"));
    let ours: BTreeSet<PathBuf> = [
        disk.clone(),
        p.join("base.qcow2"),
        p.join(".qemu-compose/volumes/data/volume.qcow2"),
        p.private_dir("app").join("seed.img"),
    ]
    .into();
    assert_eq!(files, ours);
    assert!(!open_files(pid).contains(&secret));
    p.ok(&["stop", "--force"]);

    // The instance disk's header now names the secret, as a guest with the project folder
    // shared read-write could make it. QEMU would be given the real base anyway; a disk that
    // no longer names its base is refused before QEMU starts.
    plant_backing(&disk, &secret);
    let stderr = p.fails(&["up"]);
    assert!(
        stderr.contains(&format!(
            "VM app: instance disk {} was made over base image {:?}",
            disk.display(),
            secret.to_str().unwrap()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("qemu-compose destroy app"), "{stderr}");
    assert_eq!(p.pid("app"), None, "QEMU must not start");
}

#[test]
fn an_image_with_an_external_data_file_is_refused_before_qemu_starts() {
    let _one = one_qemu_at_a_time();
    let p = Project::with_base(WITH_VOLUME, "64M");
    p.ok(&["up", "--no-start"]);
    // The instance disk replaced by one over the same base whose data lives in another host
    // file, named in its header. QEMU would open that file (it exists, so QEMU would start).
    let disk = p.join(".qemu-compose/vms/app/disk.qcow2");
    let data = p.join("elsewhere.raw");
    let opt = format!("data_file={}", data.display());
    let base = p.join("base.qcow2");
    std::fs::remove_file(&disk).unwrap();
    qemu_img_create_with(&disk, &["-o", &opt, "-b", s(&base), "-F", "qcow2"], None);
    assert!(data.is_file());
    let stderr = p.fails(&["up"]);
    assert!(
        stderr.contains(&format!(
            "VM app: instance disk {} declares an external data file",
            disk.display()
        )),
        "{stderr}"
    );
    assert_eq!(p.pid("app"), None, "QEMU must not start");
}

#[test]
fn a_local_base_image_must_stand_alone() {
    let p = Project::with_base(
        "vms:\n  app:\n    image: ./child.qcow2\n    memory: 64\n",
        "64M",
    );
    let child = p.join("child.qcow2");
    qemu_img_create_with(
        &child,
        &["-b", s(&p.join("base.qcow2")), "-F", "qcow2"],
        None,
    );
    let stderr = p.fails(&["up", "--no-start"]);
    assert!(
        stderr.contains(&format!(
            "VM app: image {} has a backing file of its own",
            child.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "qemu-img convert -O qcow2 {} flat.qcow2",
            child.display()
        )),
        "{stderr}"
    );
    assert!(!p.join(".qemu-compose/vms/app/disk.qcow2").exists());

    std::fs::remove_file(&child).unwrap();
    let data = p.join("child.raw");
    let opt = format!("data_file={}", data.display());
    qemu_img_create_with(&child, &["-o", &opt], Some("64M"));
    let stderr = p.fails(&["up", "--no-start"]);
    assert!(
        stderr.contains(&format!(
            "VM app: image {} keeps its data in an external data file",
            child.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("qemu-img convert -O qcow2"), "{stderr}");
    assert!(!p.join(".qemu-compose/vms/app/disk.qcow2").exists());
}
