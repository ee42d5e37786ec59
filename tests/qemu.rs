//! The process layer against the real `qemu-system-x86_64` (TCG, 64 MiB, an empty qcow2 disk:
//! QEMU runs fine without a bootable OS). Every test holds a guard that ends its QEMU, so none
//! survives a failing assertion; tests run one at a time to keep the shared CPUs usable.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use qemu_compose::qemu::accel::Accel;
use qemu_compose::qemu::argv::{
    DriveFormat, DriveSpec, KernelBoot, LaunchSpec, MacAddress, NetSpec, PortForward, Protocol,
    SecurityModel, ShareSpec,
};
use qemu_compose::qemu::ports::allocate_ssh_port;
use qemu_compose::qemu::process::{self, ProcState, StartError, StopOutcome, VmHandle};
use qemu_compose::qemu::qmp::Qmp;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
const START_TIMEOUT: Duration = Duration::from_secs(20);

fn qemu_binary() -> PathBuf {
    process::find_qemu(None, std::env::var_os("PATH").as_deref()).unwrap_or_else(|e| {
        panic!("these tests need the real qemu-system-x86_64 (apt install qemu-system-x86): {e}")
    })
}

/// An empty 64 MiB qcow2 made by the reference tool.
fn qemu_img_create(path: &Path) {
    let out = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg("64M")
        .output()
        .unwrap_or_else(|e| panic!("these tests need qemu-img (apt install qemu-utils): {e}"));
    assert!(
        out.status.success(),
        "qemu-img: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small TCG VM whose every file lives in `dir`.
fn spec(dir: &Path, ssh_port: u16) -> LaunchSpec {
    let disk = dir.join("disk.qcow2");
    qemu_img_create(&disk);
    LaunchSpec {
        name: "test-vm".into(),
        accel: Accel::Tcg,
        cpus: 1,
        memory_mib: 64,
        kernel: None,
        drives: vec![DriveSpec {
            id: "disk".into(),
            path: disk,
            format: DriveFormat::Qcow2,
            serial: "qc-disk".into(),
            read_only: false,
        }],
        shares: vec![],
        net: NetSpec {
            mac: MacAddress::derived_from("test/vm"),
            ssh_port,
            ports: vec![],
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

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
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
    let _one = serial();
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
    let _one = serial();
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
    let _one = serial();
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
    let _one = serial();
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
    let _one = serial();
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
    let _one = serial();
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
    let blocks = qmp.execute("query-block", None).unwrap();
    let file = blocks[0]["inserted"]["file"].as_str().unwrap().to_owned();
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
    let _one = serial();
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
