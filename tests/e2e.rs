//! The whole path in a real guest (issue 9): our binary boots Debian with the real cloud-init,
//! which mounts our ext4 volumes and our 9p shares; `stop` powers it off through QMP.
//!
//! Opt-in, because one run boots a TCG guest three times (about 4-6 minutes on 2 cores):
//! - `QEMU_COMPOSE_E2E` unset or empty: the test prints a note and passes without doing anything;
//! - `QEMU_COMPOSE_E2E=1` (CI): everything must be there and work, or the test fails loudly.
//!
//! The guest comes from `scripts/build-guest.sh` (Debian bookworm with the real cloud-init, sshd
//! for `qemu-compose ssh` and sudo, which the product's user gets without a password and the
//! checks use). It is built once and then reused from `QEMU_COMPOSE_E2E_GUEST_DIR` (default
//! `/var/tmp/qemu-compose-guest`); building it needs root and the Debian mirror apt uses.
//!
//! CI runs it twice: as root, and as an ordinary user (scripts/test.sh), as our users run it.
//! As root, as docs/compose.md says, the guest user keeps the image's default UID (never 0)
//! and 9p runs with `security_model=passthrough`, so the guest user's files appear on the host
//! with that UID; the host folders the guest user writes to are therefore made world-writable
//! by the test, as a shared folder would be. As an ordinary user, the guest user gets the host
//! user's UID, 9p runs with `security_model=none`, and nothing qemu-compose makes may belong
//! to root.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

#[path = "common/env.rs"]
mod common_env;
use common_env::clean_env;

const VM: &str = "box";
const USER: &str = "tester";
/// How long `up --wait` may wait for SSH (about 10x the measured boot).
const WAIT_SECS: u64 = 300;
/// `stop`'s power-off timeout: the guest needs 7-25 s on a busy 2-core machine.
const STOP_SECS: u64 = 120;
/// A hard limit for any one command, so a hang fails the test instead of CI's job.
const COMMAND_LIMIT: Duration = Duration::from_secs(420);

#[test]
fn real_guest_mounts_volumes_and_shares() {
    match std::env::var("QEMU_COMPOSE_E2E").as_deref() {
        Err(_) | Ok("" | "0") => {
            eprintln!(
                "note: end-to-end guest test not run; set QEMU_COMPOSE_E2E=1 to boot a real guest (CI does)"
            );
            return;
        }
        Ok("1") => {}
        Ok(other) => {
            panic!("QEMU_COMPOSE_E2E={other:?}: set it to 1 to run the test, or 0 to leave it out")
        }
    }
    let started = Instant::now();
    require_tools();
    let guest = build_guest();
    let run = Run::new(&guest);
    run.import_volume();
    run.first_boot();
    run.host_edits_seen();
    run.trimmed_space_returns_to_the_host();
    run.check_imported_volumes();
    run.stop_cleanly();
    run.nothing_belongs_to_root();
    run.check_volume_offline();
    run.destroy_and_boot_again();
    run.recreate_with_new_mount();
    run.health_and_run(&guest);
    run.destroy_everything();
    drop(run);
    networks(&guest);
    image_alone(&guest);
    eprintln!("e2e: whole test {:.1} s", started.elapsed().as_secs_f64());
}

/// Every host tool the test or the product starts must be there.
fn require_tools() {
    for tool in [
        "qemu-system-x86_64",
        "qemu-img",
        "e2fsck",
        "debugfs",
        "ssh",
        "sh",
    ] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        assert!(
            found,
            "QEMU_COMPOSE_E2E=1 but {tool} is not on PATH; install it (`bash .ci/install-deps` installs them all)"
        );
    }
}

/// The kernel, initrd and root file system of the guest, built or taken from the cache, and
/// the same system as a whole disk shaped like Debian's genericcloud image.
struct Guest {
    kernel: PathBuf,
    initrd: PathBuf,
    rootfs: PathBuf,
    cmdline: String,
    disk: PathBuf,
}

impl Guest {
    /// The compose keys that boot this guest directly, one per line, each after `indent`.
    fn boot_keys(&self, indent: &str) -> String {
        format!(
            "{indent}image: \"{}\"\n{indent}kernel: \"{}\"\n{indent}initrd: \"{}\"\n{indent}cmdline: \"{}\"\n",
            self.rootfs.display(),
            self.kernel.display(),
            self.initrd.display(),
            self.cmdline
        )
    }
}

fn build_guest() -> Guest {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/build-guest.sh");
    let dir = std::env::var_os("QEMU_COMPOSE_E2E_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/qemu-compose-guest"));
    let t = Instant::now();
    let out = run_limited(
        Command::new("bash").arg(&script).arg(&dir),
        Duration::from_secs(900),
    );
    assert!(
        out.status.success(),
        "{} {} failed ({}):\n{}{}",
        script.display(),
        dir.display(),
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    eprintln!(
        "e2e: guest build {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        dir.display()
    );
    let env = fs::read_to_string(dir.join("guest.env")).expect("build-guest.sh writes guest.env");
    let cmdline = env
        .lines()
        .find_map(|l| l.strip_prefix("KERNEL_APPEND="))
        .map(|v| v.trim_matches('"').to_string())
        .expect("guest.env has KERNEL_APPEND");
    Guest {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
        rootfs: dir.join("rootfs.img"),
        cmdline,
        disk: dir.join("disk.img"),
    }
}

/// The compose file: one VM with every kind of mount the issue lists.
fn compose_file(guest: &Guest) -> String {
    format!(
        r#"name: e2e
volumes:
  data: {{size: 1G}}
  ref: {{size: 256M}}
  seeded: {{size: 256M, init_from: ./seed}}
  imported: {{size: 256M}}
vms:
  {VM}:
{boot}    memory: 1024
    cpu: 2
    user: {USER}
    volumes:
      - data:/data
      - ref:/ref:ro
      - seeded:/seeded
      - imported:/imported:ro
      - ./rw:/mnt/rw
      - source: ./ro
        target: /mnt/ro
        read_only: true
        mount_options: "cache=none,msize=262144"
      - source: ./manual
        target: /mnt/manual
        automount: false
      - "./with, comma and space:/mnt/comma"
      - ./app.conf:/etc/app.conf:ro
      - ./view:/mnt/view:ro
"#,
        boot = guest.boot_keys("    "),
    )
}

/// One test project: its folder, the markers it writes, and a guard that leaves no QEMU behind.
struct Run {
    dir: tempfile::TempDir,
    guest_compose: String,
    /// Unique per run, so an old image can never satisfy a check.
    token: String,
}

impl Run {
    fn new(guest: &Guest) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("qc-e2e-")
            .tempdir()
            .expect("a temporary project folder");
        let p = dir.path();
        for sub in [
            "rw",
            "ro",
            "manual",
            "with, comma and space",
            "late",
            "view",
        ] {
            fs::create_dir(p.join(sub)).unwrap();
        }
        // Written by the guest user (not root): see the module comment.
        for sub in ["rw", "with, comma and space"] {
            fs::set_permissions(p.join(sub), fs::Permissions::from_mode(0o777)).unwrap();
        }
        fs::write(p.join("ro/readme"), "ro-share\n").unwrap();
        fs::write(p.join("manual/which"), "manual-share\n").unwrap();
        fs::write(p.join("with, comma and space/which"), "comma-share\n").unwrap();
        fs::write(p.join("late/which"), "late-share\n").unwrap();
        fs::write(p.join("app.conf"), "file-share\n").unwrap();
        for edited in ["rw/edited", "view/edited"] {
            fs::write(p.join(edited), "before\n").unwrap();
        }
        make_seed_tree(&p.join("seed"));
        let compose = compose_file(guest);
        fs::write(p.join("qemu-compose.yaml"), &compose).unwrap();
        let token = format!("{:x}", std::process::id() as u64 * 1_000_003 + now_secs());
        Run {
            dir,
            guest_compose: compose,
            token,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The VM's private folder (outside the project): pidfile, serial log, record.
    fn vm_dir(&self) -> PathBuf {
        let dir = self.dir.path().canonicalize().unwrap();
        qemu_compose::state::StateDir::new(&dir).vm_private_dir(VM)
    }

    /// Runs `qemu-compose ARGS` in the project folder.
    fn qc(&self, args: &[&str]) -> Output {
        qc_in(self.dir.path(), args)
    }

    /// Runs `qemu-compose ARGS`, which must succeed; returns its stderr and how long it took.
    fn qc_ok(&self, args: &[&str]) -> (String, Duration) {
        let t = Instant::now();
        let out = self.qc(args);
        let took = t.elapsed();
        if !out.status.success() {
            self.fail(&format!(
                "`qemu-compose {}` failed ({}) after {:.1} s\nstdout:\n{}stderr:\n{}",
                args.join(" "),
                out.status,
                took.as_secs_f64(),
                text(&out.stdout),
                text(&out.stderr)
            ));
        }
        (text(&out.stderr), took)
    }

    /// Runs a shell script in the guest as the VM's user through `qemu-compose ssh`, and
    /// returns its `key|value` report lines. The script's last line must be reached.
    fn guest(&self, what: &str, script: &str) -> Report {
        let script = format!("{GUEST_PRELUDE}\n{script}\necho 'end|'\n");
        let out = self.qc(&["ssh", VM, &script]);
        let stdout = text(&out.stdout);
        if !stdout.lines().any(|l| l == "end|") {
            self.fail(&format!(
                "{what}: the guest script did not finish ({})\nstdout:\n{stdout}stderr:\n{}",
                out.status,
                text(&out.stderr)
            ));
        }
        Report {
            lines: stdout.lines().map(str::to_string).collect(),
        }
    }

    /// Issue 14: `volume import` fills volume `imported` from ./seed before anything boots
    /// (`init_from` fills `seeded` from the same folder when `up` makes it).
    fn import_volume(&self) {
        self.qc_ok(&["volume", "import", "imported", "./seed"]);
        // A second import into the volume that now exists is written in place: a new file,
        // and 500 names added to `sub`, a hashed folder of 3000 names the editor lays out again.
        let later = self.path("extra/sub/later");
        fs::create_dir_all(&later).unwrap();
        fs::write(self.path("extra/added.txt"), "added in place\n").unwrap();
        for i in 0..500 {
            fs::write(later.join(format!("f{i}")), format!("{i}\n")).unwrap();
        }
        self.qc_ok(&["volume", "import", "imported", "./extra"]);
    }

    /// Issue 14: the guest's kernel reads the imported tree in both volumes: contents (read
    /// with sudo: one file is another user's, mode 0640), modes, owners, mtimes, link counts,
    /// symbolic links, a 3000-entry (hashed) folder, and a sparse file that stays sparse.
    fn check_imported_volumes(&self) {
        let r = self.guest(
            "imported volumes",
            r#"
for v in seeded imported; do
  cd /$v || { echo "missing|$v"; continue; }
  echo "sum|$v|$(su_ sha256sum hello.txt sub/hard sub/deep/data.bin | cut -d' ' -f1 | tr '\n' ' ')"
  echo "stat|$v|$(stat -c '%a %u %g %Y %h' hello.txt sub/deep/data.bin | tr '\n' ' ')"
  echo "link|$v|$(readlink sub/link) $(cat sub/link)"
  echo "many|$v|$(ls sub | grep -c '^many-') $(cat sub/many-2999)"
  echo "sparse|$v|$(stat -c '%s %b' sparse) $(tail -c 4 sparse)"
done
echo "inplace|imported|$(cat /imported/added.txt) $(ls /imported/sub/later | wc -l) $(cat /imported/sub/later/f499) $(ls /imported/sub | wc -l)"
"#,
        );
        let seed = self.path("seed");
        let sum = |rel: &str| {
            let bytes = fs::read(seed.join(rel)).unwrap();
            let out = Command::new("sha256sum")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    std::io::Write::write_all(&mut child.stdin.take().unwrap(), &bytes)?;
                    child.wait_with_output()
                })
                .expect("sha256sum on the host");
            text(&out.stdout)
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_string()
        };
        let stat = |rel: &str| {
            let m = fs::symlink_metadata(seed.join(rel)).unwrap();
            format!(
                "{:o} {} {} {} {}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                m.mtime(),
                m.nlink()
            )
        };
        for v in ["seeded", "imported"] {
            let expected = [
                (
                    "sum",
                    format!(
                        "{} {} {} ",
                        sum("hello.txt"),
                        sum("sub/hard"),
                        sum("sub/deep/data.bin")
                    ),
                ),
                (
                    "stat",
                    format!("{} {} ", stat("hello.txt"), stat("sub/deep/data.bin")),
                ),
                ("link", "../hello.txt imported".to_string()),
                ("many", "3000 2999".to_string()),
                // 64 MiB long, one 4 KiB block of data (8 sectors), the last bytes.
                ("sparse", format!("{} 8 tail", 64 << 20)),
            ];
            for (key, want) in expected {
                let got = r.keyed(key, v);
                self.check(got == want, || {
                    format!(
                        "volume {v}: {key} in the guest is {got:?}, the host tree gives {want:?}"
                    )
                });
            }
        }
        // What the second import wrote in place; `sub` holds the seed's entries and `later`.
        let seed_sub = fs::read_dir(seed.join("sub")).unwrap().count();
        let want = format!("added in place 500 499 {}", seed_sub + 1);
        let got = r.keyed("inplace", "imported");
        self.check(got == want, || {
            format!("the in-place import in the guest is {got:?}, not {want:?}")
        });
    }

    /// Issue 15 in a real guest: a health check that passes only once a file appears, a VM
    /// that waits for it (`condition: service_healthy`), `ps` going from `starting` to
    /// `healthy`, and `run --rm` giving back a command's non-zero status and leaving no
    /// instance. Its own project in `health/`, so the main VM is left alone.
    fn health_and_run(&self, guest: &Guest) {
        let ready = format!("/tmp/ready-{}", self.token);
        let vm = |name: &str, extra: &str| {
            format!(
                "  {name}:\n{}    memory: 768\n    user: {USER}\n{extra}",
                guest.boot_keys("    ")
            )
        };
        let check = format!(
            "    healthcheck:\n      test: [\"CMD-SHELL\", \"test -e {ready} && echo ready\"]\n      interval: 2s\n      timeout: 30s\n      retries: 3\n      start_period: 900s\n"
        );
        let waits = "    depends_on:\n      db: {condition: service_healthy}\n";
        fs::create_dir_all(self.path("health")).unwrap();
        fs::write(
            self.path("health/qemu-compose.yaml"),
            format!(
                "name: e2e-health\nvms:\n{}{}",
                vm("db", &check),
                vm("waiter", waits)
            ),
        )
        .unwrap();
        let f = ["-f", "health/qemu-compose.yaml"];
        let qc = |args: &[&str]| self.qc(&[&f[..], args].concat());
        let statuses = || -> Vec<String> {
            let out = qc(&["ps", "--format", "json"]);
            let ps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            ps.as_array()
                .map(|vms| {
                    vms.iter()
                        .map(|v| {
                            format!(
                                "{}={}",
                                v["name"].as_str().unwrap_or("?"),
                                v["status"].as_str().unwrap_or("?")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default()
        };

        // `up` starts db, then waits for it to be healthy before it even creates waiter.
        let t = Instant::now();
        let up = qc_command(self.dir.path())
            .args([&f[..], &["up", "--wait-timeout", &WAIT_SECS.to_string()]].concat())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Until db answers SSH: starting, and waiter not created.
        loop {
            let now = statuses();
            self.check(now.contains(&"waiter=not-created".to_string()), || {
                format!("waiter must wait for db to be healthy, ps says {now:?}")
            });
            if qc(&["ssh", "--wait-timeout", "5", "db", "--", "true"])
                .status
                .success()
            {
                break;
            }
            self.check(t.elapsed() < Duration::from_secs(WAIT_SECS), || {
                format!("db did not answer SSH within {WAIT_SECS} s")
            });
            std::thread::sleep(Duration::from_secs(2));
        }
        // The check runs (it fails: no file yet), so db is still starting.
        std::thread::sleep(Duration::from_secs(5));
        let now = statuses();
        self.check(now == ["db=starting", "waiter=not-created"], || {
            format!("before the file: ps says {now:?}")
        });
        let touched = qc(&["ssh", "db", "--", "touch", &ready]);
        self.check(touched.status.success(), || {
            format!("touch in db failed: {}", text(&touched.stderr))
        });
        let out = up.wait_with_output().unwrap();
        let said = text(&out.stderr);
        self.check(out.status.success(), || format!("up failed:\n{said}"));
        let order: Vec<Option<usize>> = [
            "started VM db",
            "VM waiter waits for VM db to be healthy",
            "VM db is healthy",
            "started VM waiter",
        ]
        .iter()
        .map(|line| said.find(line))
        .collect();
        self.check(
            order.iter().all(Option::is_some) && order.is_sorted(),
            || format!("up's steps out of order:\n{said}"),
        );
        eprintln!(
            "e2e: db healthy and waiter started {:.1} s",
            t.elapsed().as_secs_f64()
        );
        let ps = qc(&["ps", "--format", "json"]);
        let ps: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap_or_default();
        self.check(ps[0]["status"] == "healthy", || format!("ps: {ps}"));
        let last = &ps[0]["health"]["log"]
            .as_array()
            .and_then(|l| l.last().cloned())
            .unwrap_or_default();
        self.check(
            last["exit_code"] == 0 && last["output"] == "ready\n",
            || format!("the last check: {last}"),
        );

        // `run --rm`: the command's own status and output, and no instance left after it.
        let t = Instant::now();
        let out = qc(&[
            "run",
            "--rm",
            "--no-deps",
            "--wait-timeout",
            &WAIT_SECS.to_string(),
            "waiter",
            "--",
            "sh",
            "-c",
            "echo from-run; exit 7",
        ]);
        self.check(
            out.status.code() == Some(7) && text(&out.stdout) == "from-run\n",
            || {
                format!(
                    "run --rm: {} stdout {:?} stderr:\n{}",
                    out.status,
                    text(&out.stdout),
                    text(&out.stderr)
                )
            },
        );
        eprintln!("e2e: run --rm {:.1} s", t.elapsed().as_secs_f64());
        let left: Vec<String> = fs::read_dir(self.path("health/.qemu-compose/vms"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("waiter-run-"))
            .collect();
        self.check(left.is_empty(), || format!("run --rm left {left:?}"));
        let qemus = qemu_processes_of(&self.path("health")).len();
        self.check(qemus == 2, || {
            format!("{qemus} QEMUs in health/, expected db and waiter")
        });
        self.qc_ok(&[&f[..], &["down", "-t", &STOP_SECS.to_string()]].concat());
    }

    /// Prints what went wrong with everything that helps to see why, then fails the test.
    fn fail(&self, message: &str) -> ! {
        let mut report = format!("e2e failure: {message}\n");
        let serial = fs::read_to_string(self.vm_dir().join("serial.log")).unwrap_or_default();
        let tail: Vec<&str> = serial.lines().rev().take(60).collect();
        let _ = writeln!(report, "--- last {} lines of serial.log ---", tail.len());
        for line in tail.iter().rev() {
            let _ = writeln!(report, "{line}");
        }
        if self.vm_dir().join("qemu.pid").exists() {
            // Never panics: the failure being reported must not be replaced by another.
            let out = try_run(
                qc_command(self.dir.path()).args([
                    "ssh",
                    VM,
                    &format!("{GUEST_PRELUDE}\n{CLOUD_INIT_DIAGNOSTICS}"),
                ]),
                Duration::from_secs(60),
            );
            let _ = match out {
                Ok(out) => writeln!(
                    report,
                    "--- cloud-init in the guest ({}) ---\n{}{}",
                    out.status,
                    text(&out.stdout),
                    text(&out.stderr)
                ),
                Err(e) => writeln!(report, "--- cloud-init in the guest: {e}"),
            };
        }
        panic!("{report}");
    }

    fn check(&self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.fail(&message());
        }
    }

    /// Step 1 and 2: `up --wait`, then every mount checked from inside the guest.
    fn first_boot(&self) {
        let (said, took) = self.qc_ok(&["up", "--wait", "--wait-timeout", &WAIT_SECS.to_string()]);
        eprintln!("e2e: up --wait to ready {:.1} s", took.as_secs_f64());
        let r = self.guest("first boot", &self.survey_script());
        self.check_cloud_init(&r);
        self.check_share_writability(&said, &r);

        let uid: u32 = r.one("uid").parse().unwrap_or(0);
        self.check(uid != 0, || {
            format!(
                "the guest user must not be root, id -u says {:?}",
                r.one("uid")
            )
        });
        self.check(r.one("sudo") == "0", || {
            format!(
                "passwordless sudo for {USER} does not work: {:?}",
                r.one("sudo")
            )
        });

        let volumes = fs::read_to_string(self.path(".qemu-compose/volumes.json"))
            .unwrap_or_else(|e| self.fail(&format!("volumes.json: {e}")));
        let volumes: serde_json::Value = serde_json::from_str(&volumes).unwrap();
        for (target, volume, ro) in [("/data", "data", false), ("/ref", "ref", true)] {
            let m = r.mount(target);
            let uuid = volumes[volume]["uuid"].as_str().unwrap_or("(none)");
            self.check(m.get("FSTYPE") == "ext4", || {
                format!(
                    "{target}: expected volume {volume} (ext4, UUID {uuid}) mounted there, findmnt shows {}",
                    m.describe()
                )
            });
            self.check(m.get("UUID") == uuid, || {
                format!(
                    "{target}: mounted file system {:?} is not volume {volume} ({uuid})",
                    m.get("UUID")
                )
            });
            self.check(m.read_only() == ro, || {
                format!("{target}: expected read_only={ro}: {}", m.describe())
            });
        }
        for (target, ro) in [
            ("/mnt/rw", false),
            ("/mnt/ro", true),
            ("/mnt/comma", false),
            ("/etc/app.conf", true),
            ("/mnt/view", true),
        ] {
            let m = r.mount(target);
            self.check(m.get("FSTYPE") == "9p", || {
                format!(
                    "{target}: expected a 9p share mounted there, findmnt shows {}",
                    m.describe()
                )
            });
            self.check(m.read_only() == ro, || {
                format!("{target}: expected read_only={ro}: {}", m.describe())
            });
        }
        let custom = r.mount("/mnt/ro");
        self.check(custom.has_option("msize=262144"), || {
            format!(
                "/mnt/ro: mount_options msize=262144 not applied: {}",
                custom.describe()
            )
        });
        let manual = r.mount("/mnt/manual");
        self.check(manual.0.is_empty(), || {
            format!(
                "/mnt/manual has automount: false but is mounted: {}",
                manual.describe()
            )
        });
        let mut tags = r.all("tag");
        tags.sort();
        self.check(
            tags == ["mount0", "mount1", "mount2", "mount3", "mount4", "mount5"],
            || format!("9p tags in the guest: {tags:?}, expected mount0..mount5"),
        );
        // The tag numbering includes the automount: false share: mount2 must be ./manual.
        self.check(r.one("manual") == "manual-share", || {
            format!(
                "mounting tag mount2 by hand did not show ./manual: {:?}",
                r.one("manual")
            )
        });
        self.check(r.one("robdev") == "1", || {
            format!(
                "the read-only volume's block device is writable (blockdev --getro: {:?})",
                r.one("robdev")
            )
        });
        for line in r.all("rowrite") {
            let (path, result) = line.split_once('|').unwrap_or((&line, ""));
            self.check(result.contains("Read-only file system"), || {
                format!(
                    "writing {path} as root in the guest should fail with EROFS, got {result:?}"
                )
            });
        }
        for (path, want) in [
            ("/mnt/ro/readme", "ro-share"),
            ("/etc/app.conf", "file-share"),
            ("/mnt/comma/which", "comma-share"),
        ] {
            let got = r.keyed("read", path);
            self.check(got == want, || {
                format!("{path} in the guest reads {got:?}, expected {want:?}")
            });
        }

        // As an ordinary user the guest user gets the host user's UID, so what it writes
        // through a share is the host user's.
        let me = rustix::process::geteuid().as_raw();
        if me != 0 {
            self.check(uid == me, || {
                format!("the guest user has UID {uid}, the host user {me}")
            });
        }
        // Files the guest user made, seen from the host.
        for rel in ["rw/from-guest", "with, comma and space/from-guest"] {
            let meta = fs::metadata(self.path(rel)).unwrap_or_else(|e| {
                self.fail(&format!(
                    "{rel} written in the guest is not on the host: {e}"
                ))
            });
            self.check(meta.uid() == uid, || {
                format!(
                    "{rel}: host UID {} but the guest user's UID is {uid}",
                    meta.uid()
                )
            });
        }
        let share_marker = fs::read_to_string(self.path("rw/marker")).unwrap_or_default();
        self.check(
            share_marker.trim() == format!("share-{}", self.token),
            || format!("the share marker on the host reads {share_marker:?}"),
        );
    }

    /// ./manual is the host user's, mode 0755. As an ordinary user the guest user is that
    /// user and writes it; as root the guest user cannot (shares keep the host's owners), and
    /// `up` says so, naming the folder and the fix (issue 20, item 16).
    fn check_share_writability(&self, up_said: &str, r: &Report) {
        // `up` runs in the folder, so it names the folder as getcwd does: canonical.
        let manual = self.dir.path().canonicalize().unwrap().join("manual");
        let warned = up_said.lines().any(|l| {
            l.contains("cannot write the shared folder")
                && l.contains(&*manual.to_string_lossy())
                && l.contains("chmod o+w")
        });
        let wrote = r.one("manualwrite");
        if rustix::process::geteuid().is_root() {
            self.check(warned, || {
                format!(
                    "as root, up did not warn that the guest user cannot write {}:
{up_said}",
                    manual.display()
                )
            });
            self.check(wrote.contains("Permission denied"), || {
                format!("as root, the guest user wrote the root-owned 0755 share, or failed otherwise: {wrote:?}")
            });
        } else {
            self.check(!warned, || {
                format!("as an ordinary user, up warned:\n{up_said}")
            });
            self.check(wrote == "written" && self.path("manual/guest-wrote").is_file(), || {
                format!("as an ordinary user, the guest user could not write its own share: {wrote:?}")
            });
        }
    }

    /// The script of the first boot: a report of the mounts, then writes that must fail or
    /// succeed, then the markers.
    fn survey_script(&self) -> String {
        let t = &self.token;
        format!(
            r#"set -u
{CLOUD_INIT_STATUS}
echo "uid|$(id -u)"
echo "sudo|$(su_ id -u 2>&1)"
for t in /data /ref /mnt/rw /mnt/ro /mnt/manual /mnt/comma /etc/app.conf /mnt/view; do
  echo "mnt|$t|$(findmnt -P -n -o FSTYPE,OPTIONS,UUID,SOURCE -M "$t" | head -n 1)"
done
for d in /sys/bus/virtio/drivers/9pnet_virtio/virtio*; do echo "tag|$(tr -d '\000' < "$d/mount_tag")"; done
echo "robdev|$(su_ blockdev --getro "$(findmnt -n -o SOURCE -M /ref)" 2>&1)"
for p in /ref/probe /mnt/ro/probe /etc/app.conf; do
  echo "rowrite|$p|$(su_ sh -c 'echo probe >> "$1"' sh "$p" 2>&1 && echo WRITABLE)"
done
for p in /mnt/ro/readme /etc/app.conf /mnt/comma/which; do echo "read|$p|$(cat "$p" 2>&1)"; done
su_ mkdir -p /mnt/manual
su_ mount -t 9p -o trans=virtio,version=9p2000.L,ro mount2 /mnt/manual 2>&1
echo "manual|$(cat /mnt/manual/which 2>&1)"
su_ umount /mnt/manual
su_ mount -t 9p -o trans=virtio,version=9p2000.L mount2 /mnt/manual 2>&1
echo "manualwrite|$(touch /mnt/manual/guest-wrote 2>&1 && echo written)"
su_ umount /mnt/manual
echo guest > /mnt/rw/from-guest
echo guest > "/mnt/comma/from-guest"
echo share-{t} > /mnt/rw/marker
su_ sh -c 'echo volume-{t} > /data/marker'
echo instance-{t} > ~/instance-marker
sync"#
        )
    }

    fn check_cloud_init(&self, r: &Report) {
        self.check(r.one("ci") == "done", || {
            format!("cloud-init status is {:?}, expected done", r.one("ci"))
        });
        let warnings: Vec<String> = r
            .all("ciwarn")
            .into_iter()
            .filter(|w| !KNOWN_CLOUD_INIT_WARNINGS.iter().any(|k| w.contains(k)))
            .collect();
        self.check(warnings.is_empty(), || {
            format!(
                "cloud-init logged warnings or errors:\n{}",
                warnings.join("\n")
            )
        });
    }

    /// A host edit of a file in a read-write and in a read-only share (default mount options)
    /// is what the guest reads within 1 s. The guest reads both files first (anything it
    /// cached would be stale), says `ready|`, and waits on its stdin; the host then edits both
    /// files in place and writes `go`, so the guest's 1 s deadline starts after the edits.
    /// The loop reads with the shell's `read` (no process per try: TCG makes forks slow).
    fn host_edits_seen(&self) {
        let want = format!("edited-{}", self.token);
        let files = ["/mnt/rw/edited", "/mnt/view/edited"];
        let script = format!(
            r#"set -u
for f in {list}; do echo "before|$f|$(cat "$f" 2>&1)"; done
echo 'ready|'
read -r go || exit 1
start=$(date +%s%N)
for f in {list}; do
  while :; do
    got=; read -r got < "$f"; now=$(date +%s%N)
    if [ "$got" = '{want}' ]; then echo "seen|$f|$(( (now - start) / 1000000 ))"; break; fi
    if [ $((now - start)) -gt 1000000000 ]; then echo "late|$f|$got"; break; fi
    sleep 0.02
  done
done
echo 'end|'"#,
            list = files.join(" ")
        );
        let mut child = qc_command(self.dir.path())
            .args(["ssh", VM, &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| self.fail(&format!("cannot start qemu-compose ssh: {e}")));
        let (stdout, mut stderr) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in
                std::io::BufRead::lines(std::io::BufReader::new(stdout)).map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let errors = std::thread::spawn(move || {
            let mut said = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut said);
            said
        });
        let deadline = Instant::now() + COMMAND_LIMIT;
        let mut stdin = child.stdin.take();
        let mut lines = Vec::new();
        while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            if line == "ready|" {
                for rel in ["rw/edited", "view/edited"] {
                    fs::write(self.path(rel), format!("{want}\n")).unwrap();
                }
                if let Some(mut go) = stdin.take() {
                    let _ = std::io::Write::write_all(&mut go, b"go\n");
                }
            }
            lines.push(line);
        }
        drop(stdin);
        if Instant::now() >= deadline {
            let _ = child.kill();
        }
        let status = child.wait().unwrap();
        let said = format!(
            "({status})\nstdout:\n{}\nstderr:\n{}",
            lines.join("\n"),
            errors.join().unwrap_or_default()
        );
        let r = Report { lines };
        self.check(r.lines.iter().any(|l| l == "end|"), || {
            format!("host edits: the guest script did not finish {said}")
        });
        for f in files {
            let before = r.keyed("before", f);
            self.check(before == "before", || {
                format!("{f} read {before:?} before the host edit {said}")
            });
            let ms = r.keyed("seen", f);
            self.check(ms.parse::<u64>().is_ok_and(|ms| ms <= 1000), || {
                format!("the guest did not read the host's edit of {f} within 1 s {said}")
            });
            eprintln!("e2e: host edit of {f} seen in the guest after {ms} ms");
        }
    }

    /// Space freed in a volume goes back to the host: 64 MiB written to volume `data`, then
    /// deleted and trimmed (`fstrim`) in the guest, leaves the volume's qcow2 file on the host
    /// at least 48 MiB smaller in allocated blocks (QEMU frees the qcow2 clusters and punches
    /// holes in the file: `discard: unmap` on both nodes).
    fn trimmed_space_returns_to_the_host(&self) {
        let qcow2 = self.path(".qemu-compose/volumes/data/volume.qcow2");
        let allocated = || {
            fs::metadata(&qcow2)
                .map(|m| m.blocks() * 512)
                .unwrap_or_else(|e| self.fail(&format!("{}: {e}", qcow2.display())))
        };
        let at_start = allocated();
        let wrote = self.guest(
            "trim: write 64 MiB",
            r#"dev=$(basename "$(findmnt -n -o SOURCE -M /data)")
echo "discard|$dev max $(cat /sys/block/$dev/queue/discard_max_bytes) granularity $(cat /sys/block/$dev/queue/discard_granularity)"
su_ dd if=/dev/urandom of=/data/trim-probe bs=1M count=64 conv=fsync status=none
echo "size|$(stat -c %s /data/trim-probe 2>&1)"
sync"#,
        );
        let disk = wrote.one("discard");
        self.check(wrote.one("size") == (64u64 << 20).to_string(), || {
            format!(
                "the guest did not write 64 MiB to /data: size {:?}",
                wrote.one("size")
            )
        });
        let written = allocated();
        let r = self.guest(
            "trim: delete and fstrim",
            r#"su_ rm /data/trim-probe
sync
echo "fstrim|$(su_ fstrim -v /data 2>&1)"
sync"#,
        );
        let trimmed = allocated();
        let mib = |b: u64| b as f64 / f64::from(1 << 20);
        eprintln!(
            "e2e: volume data allocated on the host: {:.1} MiB, {:.1} MiB after 64 MiB written, {:.1} MiB after rm + fstrim ({}; guest {})",
            mib(at_start),
            mib(written),
            mib(trimmed),
            r.one("fstrim"),
            disk
        );
        self.check(written >= trimmed + (48 << 20), || {
            format!(
                "the volume's qcow2 holds {written} bytes after 64 MiB were written and {trimmed} after they were deleted and trimmed: expected at least 48 MiB back; fstrim said {:?}, the guest's disk: {:?}",
                r.one("fstrim"),
                disk
            )
        });
    }

    /// Step 3: `stop` powers the guest off through QMP, with no fallback.
    fn stop_cleanly(&self) {
        let pid = self.qemu_pid();
        let (stderr, took) = self.qc_ok(&["stop", "-t", &STOP_SECS.to_string()]);
        eprintln!("e2e: stop to powered off {:.1} s", took.as_secs_f64());
        self.check(
            stderr.contains("powered off")
                && !stderr.contains("did not power off")
                && !stderr.contains("killed"),
            || format!("stop did not power the guest off cleanly; its stderr:\n{stderr}"),
        );
        self.check(!process_alive(pid), || {
            format!("QEMU (pid {pid}) still runs after stop")
        });
        let serial = fs::read_to_string(self.vm_dir().join("serial.log")).unwrap_or_default();
        self.check(serial.contains("reboot: Power down"), || {
            "the serial log does not show the guest powering down".to_string()
        });
    }

    /// Run as an ordinary user (CI does it too, see scripts/test.sh): nothing qemu-compose
    /// made in the project or the private folder belongs to root.
    fn nothing_belongs_to_root(&self) {
        if rustix::process::geteuid().is_root() {
            return;
        }
        let private = self
            .vm_dir()
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .to_path_buf();
        let mut rooted = Vec::new();
        for top in [self.dir.path().to_path_buf(), private] {
            let mut stack = vec![top];
            while let Some(dir) = stack.pop() {
                for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
                    let meta = entry.metadata().unwrap();
                    if meta.uid() == 0 {
                        rooted.push(entry.path());
                    }
                    if meta.is_dir() {
                        stack.push(entry.path());
                    }
                }
            }
        }
        self.check(rooted.is_empty(), || {
            format!("files owned by root in a rootless run: {rooted:?}")
        });
    }

    /// Step 4: the volume the guest wrote is a clean ext4 file system holding the marker.
    fn check_volume_offline(&self) {
        let raw = self.path("data.raw");
        let qcow2 = self.path(".qemu-compose/volumes/data/volume.qcow2");
        let out = run_limited(
            Command::new("qemu-img")
                .arg("convert")
                .args(["-O", "raw"])
                .arg(&qcow2)
                .arg(&raw),
            COMMAND_LIMIT,
        );
        self.check(out.status.success(), || {
            format!("qemu-img convert: {}", text(&out.stderr))
        });
        let fsck = run_limited(Command::new("e2fsck").arg("-fn").arg(&raw), COMMAND_LIMIT);
        self.check(fsck.status.success(), || {
            format!(
                "e2fsck -fn on the volume after the guest wrote to it ({}):\n{}{}",
                fsck.status,
                text(&fsck.stdout),
                text(&fsck.stderr)
            )
        });
        let cat = run_limited(
            Command::new("debugfs")
                .args(["-R", "cat /marker"])
                .arg(&raw),
            COMMAND_LIMIT,
        );
        let marker = text(&cat.stdout);
        self.check(marker.trim() == format!("volume-{}", self.token), || {
            format!("debugfs reads /marker of the volume as {marker:?}")
        });
        fs::remove_file(&raw).unwrap();
    }

    /// Step 5a: a new instance keeps the volume but not the old instance disk.
    fn destroy_and_boot_again(&self) {
        let (stderr, _) = self.qc_ok(&["destroy", "-t", &STOP_SECS.to_string()]);
        self.check(!self.vm_dir().exists(), || {
            format!("destroy left {}: {stderr}", self.vm_dir().display())
        });
        let (_, took) = self.qc_ok(&["up", "--wait", "--wait-timeout", &WAIT_SECS.to_string()]);
        eprintln!(
            "e2e: up --wait to ready (second instance) {:.1} s",
            took.as_secs_f64()
        );
        let r = self.guest(
            "second instance",
            &format!(
                r#"{CLOUD_INIT_STATUS}
echo "volume|$(cat /data/marker 2>&1)"
echo "instance|$(cat ~/instance-marker 2>&1)"
echo instance2-{t} > ~/instance-marker
sync"#,
                t = self.token
            ),
        );
        self.check_cloud_init(&r);
        self.check(r.one("volume") == format!("volume-{}", self.token), || {
            format!(
                "the volume marker after destroy + up reads {:?}",
                r.one("volume")
            )
        });
        self.check(r.one("instance").contains("No such file"), || {
            format!(
                "the instance disk was not new: the old marker reads {:?}",
                r.one("instance")
            )
        });
    }

    /// Step 5b: a new bind mount in the compose file reaches the running VM with
    /// `up --force-recreate`; the instance disk stays.
    fn recreate_with_new_mount(&self) {
        // A new mount, and a larger disk (10G by default): `up` grows the qcow2, the guest's
        // cloud-init grows its root file system at boot.
        let compose = format!(
            "{}      - ./late:/mnt/late\n    disk: {{size: 12G}}\n",
            self.guest_compose
        );
        fs::write(self.path("qemu-compose.yaml"), compose).unwrap();
        let (stderr, took) = self.qc_ok(&[
            "up",
            "--force-recreate",
            "--wait",
            "--wait-timeout",
            &WAIT_SECS.to_string(),
        ]);
        eprintln!(
            "e2e: up --force-recreate --wait {:.1} s",
            took.as_secs_f64()
        );
        self.check(stderr.contains("powered off"), || {
            format!("up --force-recreate did not power the old guest off cleanly:\n{stderr}")
        });
        self.check(stderr.contains("disk grown from 10G to 12G"), || {
            format!("up did not grow the disk:\n{stderr}")
        });
        let r = self.guest(
            "recreated instance",
            &format!(
                r#"{CLOUD_INIT_STATUS}
echo "mnt|/mnt/late|$(findmnt -P -n -o FSTYPE,OPTIONS,UUID,SOURCE -M /mnt/late | head -n 1)"
echo "read|/mnt/late/which|$(cat /mnt/late/which 2>&1)"
echo "instance|$(cat ~/instance-marker 2>&1)"
echo "volume|$(cat /data/marker 2>&1)"
echo "rootsize|$(df -B1 --output=size / | tail -n 1 | tr -d ' ')""#
            ),
        );
        self.check_cloud_init(&r);
        let late = r.mount("/mnt/late");
        self.check(
            late.get("FSTYPE") == "9p" && late.get("SOURCE") == "mount6",
            || {
                format!(
                    "the added bind mount is not mounted as tag mount6: {}",
                    late.describe()
                )
            },
        );
        self.check(r.keyed("read", "/mnt/late/which") == "late-share", || {
            format!(
                "/mnt/late/which reads {:?}",
                r.keyed("read", "/mnt/late/which")
            )
        });
        self.check(
            r.one("instance") == format!("instance2-{}", self.token),
            || {
                format!(
                    "--force-recreate lost the instance disk: marker reads {:?}",
                    r.one("instance")
                )
            },
        );
        self.check(r.one("volume") == format!("volume-{}", self.token), || {
            format!(
                "volume marker after --force-recreate: {:?}",
                r.one("volume")
            )
        });
        // ext4's own metadata takes a little of the 12 GiB.
        let root = r.one("rootsize").parse::<u64>().unwrap_or(0);
        self.check(root > 11 << 30, || {
            format!("the root file system did not grow with the disk: {root} bytes")
        });
    }

    /// Step 6: `destroy -v` removes the instance and the volumes, and stops QEMU.
    fn destroy_everything(&self) {
        let pid = self.qemu_pid();
        let (stderr, _) = self.qc_ok(&["destroy", "-v", "-t", &STOP_SECS.to_string()]);
        self.check(!process_alive(pid), || {
            format!("QEMU (pid {pid}) still runs after destroy -v")
        });
        for rel in [
            format!(".qemu-compose/vms/{VM}"),
            ".qemu-compose/volumes/data".into(),
            ".qemu-compose/volumes/ref".into(),
        ] {
            self.check(!self.path(&rel).exists(), || {
                format!("destroy -v left {rel}:\n{stderr}")
            });
        }
        self.check(!self.vm_dir().exists(), || {
            format!("destroy -v left {}:\n{stderr}", self.vm_dir().display())
        });
        let registry =
            fs::read_to_string(self.path(".qemu-compose/volumes.json")).unwrap_or_default();
        self.check(
            !registry.contains("\"data\"") && !registry.contains("\"ref\""),
            || format!("destroy -v left volumes in volumes.json: {registry}"),
        );
        let left = qemu_processes_of(self.dir.path());
        self.check(left.is_empty(), || {
            format!("QEMU processes of the test are left: {left:?}")
        });
    }

    /// The running QEMU's pid, from the pidfile.
    fn qemu_pid(&self) -> i32 {
        let file = self.vm_dir().join("qemu.pid");
        fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or_else(|| self.fail(&format!("no readable pidfile {}", file.display())))
    }
}

impl Drop for Run {
    /// Whatever happened, no QEMU of this test survives it: each one whose command line names
    /// the project folder is killed by its pid.
    fn drop(&mut self) {
        for pid in qemu_processes_of(self.dir.path()) {
            eprintln!("e2e: killing leftover QEMU pid {pid}");
            if let Some(pid) = rustix::process::Pid::from_raw(pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Defines `su_`: passwordless sudo as the product's user-data sets it up, without the
/// "unable to resolve host" line sudo prints because the guest's hostname is not in /etc/hosts.
const GUEST_PRELUDE: &str = r#"su_() {
  sudo -n "$@" 2>/tmp/.su_err; su_rc=$?
  grep -v 'unable to resolve host' /tmp/.su_err >&2
  return $su_rc
}"#;

/// Prints `ci|STATUS` once cloud-init has finished, and its warnings as `ciwarn|LINE`.
const CLOUD_INIT_STATUS: &str = r#"cloud-init status --wait >/dev/null 2>&1
echo "ci|$(cloud-init status 2>&1 | sed -n 's/^status: //p')"
su_ grep -E 'WARNING|ERROR' /var/log/cloud-init.log | sed 's/^/ciwarn|/'"#;

/// What the failure report shows from a guest that still answers SSH.
const CLOUD_INIT_DIAGNOSTICS: &str = "cloud-init status --long; \
    su_ grep -E -A3 'WARNING|ERROR|Traceback' /var/log/cloud-init.log | tail -n 60; \
    echo '--- cloud-init-output.log ---'; su_ tail -n 30 /var/log/cloud-init-output.log; \
    echo '--- fstab ---'; cat /etc/fstab; echo '--- findmnt ---'; findmnt -l; \
    echo '--- lsblk ---'; lsblk -o NAME,SERIAL,FSTYPE,UUID,LABEL,RO,MOUNTPOINT";

/// cloud-init warnings that are known and reported, so they do not hide new ones.
///
/// cc_mounts calls `ensure_dir` on every mount target, which fails for the target of a file
/// bind mount (a file made by bootcmd); the entry is still written and mounted. Remove this
/// entry once file binds no longer go through cloud-init's `mounts:`.
const KNOWN_CLOUD_INIT_WARNINGS: &[&str] = &["Failed to make '/etc/app.conf' config-mount"];

/// The `key|value` lines a guest script printed.
struct Report {
    lines: Vec<String>,
}

impl Report {
    fn all(&self, key: &str) -> Vec<String> {
        let prefix = format!("{key}|");
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix).map(str::to_string))
            .collect()
    }

    fn one(&self, key: &str) -> String {
        self.all(key).into_iter().next().unwrap_or_default()
    }

    /// The value of a `key|name|value` line.
    fn keyed(&self, key: &str, name: &str) -> String {
        self.all(key)
            .into_iter()
            .find_map(|v| v.strip_prefix(&format!("{name}|")).map(str::to_string))
            .unwrap_or_default()
    }

    fn mount(&self, target: &str) -> Mount {
        Mount(parse_pairs(&self.keyed("mnt", target)))
    }
}

/// One `findmnt -P` line as key/value pairs; empty when the target is not a mount point.
struct Mount(Vec<(String, String)>);

impl Mount {
    fn get(&self, key: &str) -> &str {
        self.0.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v)
    }

    fn has_option(&self, option: &str) -> bool {
        self.get("OPTIONS").split(',').any(|o| o == option)
    }

    /// The findmnt fields, or "nothing" when the target is not a mount point.
    fn describe(&self) -> String {
        if self.0.is_empty() {
            return "nothing (not a mount point)".to_string();
        }
        let fields: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        fields.join(" ")
    }

    fn read_only(&self) -> bool {
        self.has_option("ro")
    }
}

/// Parses `KEY="value" KEY2="value"` (findmnt -P; values have no quotes, they are escaped).
fn parse_pairs(line: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = line.trim();
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some((value, tail)) = after.split_once('"') else {
            break;
        };
        out.push((key.trim().to_string(), value.to_string()));
        rest = tail;
    }
    out
}

/// `qemu-compose` in the project folder `dir`, in the one environment every command of this
/// test runs in: no `QEMU_COMPOSE_*` variable (`QEMU_COMPOSE_ACCEL`, `_QEMU`, `_FILE`, …) and
/// nothing else of the developer's shell that changes the binary leaks in ([`clean_env`]). `HOME` and `XDG_STATE_HOME` are
/// kept: the test finds the private folders from its own environment. The test sets none of
/// the product's variables itself.
fn qc_command(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qemu-compose"));
    cmd.current_dir(dir);
    clean_env(&mut cmd);
    cmd
}

/// Runs `qemu-compose ARGS` in the project folder `dir` ([`qc_command`]'s environment) with
/// its output captured, within [`COMMAND_LIMIT`]; fails the test if it cannot run or hangs.
fn qc_in(dir: &Path, args: &[&str]) -> Output {
    run_limited(qc_command(dir).args(args), COMMAND_LIMIT)
}

/// Runs a command with its output captured; fails the test if it cannot run or hangs.
fn run_limited(cmd: &mut Command, limit: Duration) -> Output {
    try_run(cmd, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a command with its output captured, killing it (by pid) if it outlives `limit`.
fn try_run(cmd: &mut Command, limit: Duration) -> Result<Output, String> {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {shown}: {e}"))?;
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(out) => out.map_err(|e| format!("{shown}: {e}")),
        Err(_) => {
            if let Some(pid) = rustix::process::Pid::from_raw(pid as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            Err(format!(
                "{shown} did not finish within {} s and was killed",
                limit.as_secs()
            ))
        }
    }
}

fn process_alive(pid: i32) -> bool {
    // A zombie is gone for our purposes: QEMU daemonised, so it is not our child.
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

/// Pids of QEMU processes whose command line mentions `dir`.
fn qemu_processes_of(dir: &Path) -> Vec<i32> {
    let needle = dir.as_os_str().as_encoded_bytes();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                c.starts_with(b"qemu-system") || c.windows(b"/qemu-system".len()).any(|w| w == b"/qemu-system")
            } && c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

// ---- Project networks ----------------------------------------------------------------------

/// Issue 13 in real guests: `a` and `b` on `backend` reach each other by name (ICMP, TCP,
/// UDP); `c` on `other` reaches neither by name nor by address, even routed through its
/// network NIC; a restarted VM, a killed switch and a VM added later all work again within
/// seconds, without restarting `a`.
fn networks(guest: &Guest) {
    let t = Instant::now();
    let net = NetRun::new(guest);
    net.qc_ok(&["up", "--wait", "--wait-timeout", &WAIT_SECS.to_string()]);
    eprintln!(
        "e2e: three networked guests up in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let token = &net.token;
    let a_address = net.address("backend", "a");
    let b_address = net.address("backend", "b");
    // b's NIC on backend has the address the project gave it.
    let b_before = net.guest_address("b");
    net.check(b_before == b_address, || {
        format!("b's eth1 has {b_before:?}, networks.json gives {b_address:?}")
    });

    // TCP and UDP listeners in b that answer with the run's token.
    net.ssh_ok(
        "b",
        &format!(
            "nohup setsid python3 -c '{LISTENERS}' {token} >/dev/null 2>&1 </dev/null &\nsleep 2; echo listening"
        ),
    );
    let a = net.ssh_ok(
        "a",
        &format!(
            "ping -c1 -W5 b >/dev/null && echo ping-b-ok\n\
             {}\n\
             python3 -c '{CLIENTS}' b",
            resolve_script(&["b", "pg", "b.backend"])
        ),
    );
    for want in [
        "ping-b-ok".to_string(),
        format!("tcp {token}"),
        format!("udp {token}"),
    ] {
        net.check(a.contains(&want), || {
            format!("a -> b: no {want:?} in:\n{a}")
        });
    }
    // Each of b's names, its alias and its network-qualified name, is b's address.
    for name in ["b", "pg", "b.backend"] {
        let got = resolved(&a, name);
        net.check(got == b_address, || {
            format!("in a, {name} resolves to {got:?}, not b's address {b_address}:\n{a}")
        });
    }

    // c: no names of backend, and a's address is unreachable even through eth1 (the switch
    // keeps networks apart); the token listener is not reached through the user-mode NIC
    // either. The routes must be in place and go out of eth1, or "no ping" proves nothing.
    let c = net.ssh(
        "c",
        &format!(
            "{}\n\
             python3 -c '{CLIENTS}' {b_address} || true\n\
             for ip in {a_address} {b_address}; do\n\
               sudo -n ip route add $ip/32 dev eth1 2>&1 && echo \"route|$ip|$(ip route get $ip | head -n 1)\"\n\
             done\n\
             ping -c1 -W3 {a_address} >/dev/null 2>&1 || echo no-ping\n\
             python3 -c '{CLIENTS}' {b_address} || true",
            resolve_script(&["a", "b", "pg"])
        ),
    );
    for name in ["a", "b", "pg"] {
        let got = resolved(&c, name);
        net.check(got == "unresolved", || {
            format!("in c (network other), {name} resolves to {got:?}:\n{c}")
        });
    }
    for ip in [&a_address, &b_address] {
        let route = c
            .lines()
            .find_map(|l| l.strip_prefix(&format!("route|{ip}|")))
            .unwrap_or_default();
        net.check(
            route
                .split_whitespace()
                .take(3)
                .eq([ip.as_str(), "dev", "eth1"]),
            || format!("in c, the route to {ip} through eth1 was not added:\n{c}"),
        );
    }
    net.check(c.contains("no-ping") && !c.contains(token.as_str()), || {
        format!("c reached backend:\n{c}")
    });

    // b restarted: a reaches it again, by name, and b keeps its address.
    net.qc_ok(&["stop", "-t", &STOP_SECS.to_string(), "b"]);
    net.qc_ok(&[
        "up",
        "--wait",
        "--wait-timeout",
        &WAIT_SECS.to_string(),
        "b",
    ]);
    net.expect_ping("a", "b", "after b restarted");
    let b_after = net.guest_address("b");
    net.check(b_after == b_before, || {
        format!("b's address on backend was {b_before:?} and is {b_after:?} after its restart")
    });

    // The switch killed: the next `up` starts it and the NICs reconnect. The lock, not the
    // pid, says a switch runs (engine::network::switch_status): a killed process's files close
    // a little after it is gone, and an `up` in that gap would take the old switch for alive.
    let old = net
        .switch()
        .unwrap_or_else(|| panic!("e2e networks: no switch holds its lock while VMs run"));
    if let Some(pid) = rustix::process::Pid::from_raw(old.pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    let killed = Instant::now();
    while net.switch().is_some() {
        net.check(killed.elapsed() < Duration::from_secs(10), || {
            format!(
                "the killed switch (pid {}) still holds its lock after 10 s",
                old.pid
            )
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "e2e: the killed switch's lock was free {:.2} s after SIGKILL",
        killed.elapsed().as_secs_f64()
    );
    net.qc_ok(&["up"]);
    let new = net.switch();
    net.check(new.as_ref().is_some_and(|s| s.pid != old.pid), || {
        format!("`up` did not start a new switch: {new:?}")
    });
    let t = Instant::now();
    net.expect_ping("a", "b", "after the switch was killed and `up` ran");
    eprintln!(
        "e2e: traffic resumed {:.1} s after the new switch",
        t.elapsed().as_secs_f64()
    );

    // d joins later: a resolves and reaches it without a restart.
    let compose = fs::read_to_string(net.path("qemu-compose.yaml")).unwrap();
    fs::write(
        net.path("qemu-compose.yaml"),
        format!("{compose}  d:\n    <<: *guest\n    networks: [backend]\n"),
    )
    .unwrap();
    net.qc_ok(&[
        "up",
        "--wait",
        "--wait-timeout",
        &WAIT_SECS.to_string(),
        "d",
    ]);
    net.expect_ping("a", "d", "d was added later");
    net.qc_ok(&["destroy", "-t", &STOP_SECS.to_string()]);
    let left = qemu_processes_of(net.dir.path());
    net.check(left.is_empty(), || {
        format!("QEMU processes are left: {left:?}")
    });
    eprintln!("e2e: networks {:.1} s", t.elapsed().as_secs_f64());
}

/// A guest script that prints `name|NAME|ADDRESS` for each of `names`: the first IPv4
/// address the guest's resolver gives, or `unresolved`.
fn resolve_script(names: &[&str]) -> String {
    format!(
        "for n in {}; do set -- $(getent ahostsv4 \"$n\"); echo \"name|$n|${{1:-unresolved}}\"; done",
        names.join(" ")
    )
}

/// The address a [`resolve_script`] printed for `name` (empty if it printed none).
fn resolved(said: &str, name: &str) -> String {
    said.lines()
        .find_map(|l| l.strip_prefix(&format!("name|{name}|")))
        .unwrap_or_default()
        .to_string()
}

/// b's listeners: TCP 7777 and UDP 7778 answer with argv[1].
const LISTENERS: &str = r#"
import socket, sys, threading
token = sys.argv[1].encode()
def tcp():
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 7777)); s.listen()
    while True:
        c, _ = s.accept(); c.sendall(token); c.close()
threading.Thread(target=tcp, daemon=True).start()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", 7778))
while True:
    _, peer = u.recvfrom(64); u.sendto(token, peer)
"#;

/// Asks argv[1] on TCP 7777 and UDP 7778; prints `tcp TOKEN` and `udp TOKEN`.
const CLIENTS: &str = r#"
import socket, sys
host = sys.argv[1]
try:
    print("tcp", socket.create_connection((host, 7777), timeout=5).recv(64).decode())
except Exception as e:
    print("tcp failed:", e)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(5)
try:
    u.sendto(b"?", (host, 7778)); print("udp", u.recv(64).decode())
except Exception as e:
    print("udp failed:", e)
"#;

/// The networks project: its folder and the run's token.
struct NetRun {
    dir: tempfile::TempDir,
    token: String,
}

impl NetRun {
    fn new(guest: &Guest) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("qc-e2e-net-")
            .tempdir()
            .expect("a temporary project folder");
        let compose = format!(
            r#"name: e2enet
x-guest: &guest
{boot}  memory: 512
  cpu: 1
  user: {USER}
networks:
  backend: {{}}
  other: {{driver: bridge}}
vms:
  a:
    <<: *guest
    networks: [backend]
  b:
    <<: *guest
    networks:
      backend: {{aliases: [pg]}}
  c:
    <<: *guest
    networks: [other]
"#,
            boot = guest.boot_keys("  "),
        );
        fs::write(dir.path().join("qemu-compose.yaml"), compose).unwrap();
        let token = format!("net{:x}", std::process::id() as u64 * 7919 + now_secs());
        NetRun { dir, token }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn private(&self) -> PathBuf {
        let dir = self.dir.path().canonicalize().unwrap();
        qemu_compose::state::StateDir::new(&dir)
            .private()
            .to_path_buf()
    }

    fn qc(&self, args: &[&str]) -> Output {
        qc_in(self.dir.path(), args)
    }

    /// The project's switch, while a process holds its lock.
    fn switch(&self) -> Option<qemu_compose::net::SwitchInfo> {
        let dir = self.dir.path().canonicalize().unwrap();
        qemu_compose::engine::network::switch_status(&qemu_compose::state::StateDir::new(&dir))
            .unwrap_or_else(|e| panic!("e2e networks: the switch's lock: {e}"))
    }

    /// The IPv4 address of `vm`'s project-network NIC (`eth1`), as the guest has it.
    fn guest_address(&self, vm: &str) -> String {
        let said = self.ssh_ok(vm, "ip -4 -o addr show dev eth1");
        said.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)
            .and_then(|a| a.split('/').next())
            .unwrap_or_else(|| panic!("e2e networks: no IPv4 address on {vm}'s eth1:\n{said}"))
            .to_string()
    }

    fn qc_ok(&self, args: &[&str]) -> String {
        let out = self.qc(args);
        self.check(out.status.success(), || {
            format!(
                "`qemu-compose {}` failed ({}):\n{}{}",
                args.join(" "),
                out.status,
                text(&out.stdout),
                text(&out.stderr)
            )
        });
        text(&out.stderr)
    }

    /// What `script` printed in VM `vm` (stdout and stderr), whatever its status.
    fn ssh(&self, vm: &str, script: &str) -> String {
        let out = self.qc(&["ssh", vm, script]);
        text(&out.stdout) + &text(&out.stderr)
    }

    fn ssh_ok(&self, vm: &str, script: &str) -> String {
        let out = self.qc(&["ssh", vm, script]);
        let said = text(&out.stdout) + &text(&out.stderr);
        self.check(out.status.success(), || {
            format!("in {vm}: {script}\n{said}")
        });
        said
    }

    /// `from` pings `to` by name, retrying for up to 20 s.
    fn expect_ping(&self, from: &str, to: &str, when: &str) {
        let said = self.ssh(
            from,
            &format!(
                "for i in $(seq 20); do ping -c1 -W1 {to} >/dev/null 2>&1 && {{ echo reached; exit 0; }}; sleep 1; done; getent hosts {to}; ip -br addr"
            ),
        );
        self.check(said.contains("reached"), || {
            format!("{from} cannot ping {to} {when}:\n{said}")
        });
    }

    /// VM `vm`'s address on `network`, from `networks.json`.
    fn address(&self, network: &str, vm: &str) -> String {
        let text = fs::read_to_string(self.path(".qemu-compose/networks.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json[network]["vms"][vm]["address"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn check(&self, ok: bool, message: impl FnOnce() -> String) {
        if ok {
            return;
        }
        let mut report = format!("e2e networks: {}\n", message());
        for vm in ["a", "b", "c", "d"] {
            let log = self.private().join("vms").join(vm).join("serial.log");
            let serial = fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = serial.lines().rev().take(25).collect();
            let _ = writeln!(report, "--- {vm}: last lines of serial.log ---");
            for line in tail.iter().rev() {
                let _ = writeln!(report, "{line}");
            }
        }
        let _ = self.qc(&["destroy", "--force"]);
        panic!("{report}");
    }
}

// ---- A cloud image with `image:` alone -------------------------------------------------------

/// Issue 16: the genericcloud-shaped disk boots the way users write it, `image:` and nothing
/// else (firmware, GRUB, a partition table); cloud-init's growpart grows the root partition
/// to the disk, and a larger `disk.size` at a later `up` grows the disk and then the
/// partition and file system again (issue 20).
fn image_alone(guest: &Guest) {
    let t = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("qc-e2e-cloud-")
        .tempdir()
        .expect("a temporary project folder");
    let compose = |size: &str| {
        format!(
            "name: e2ecloud\nvms:\n  cloud:\n    image: \"{}\"\n    disk: {{size: {size}}}\n    memory: 512\n    user: {USER}\n",
            guest.disk.display()
        )
    };
    let qc = |args: &[&str]| -> String {
        let out = qc_in(dir.path(), args);
        let said = text(&out.stdout) + &text(&out.stderr);
        if !out.status.success() {
            let _ = qc_in(dir.path(), &["destroy", "--force"]);
            panic!(
                "e2e cloud image: `qemu-compose {}` failed:\n{said}",
                args.join(" ")
            );
        }
        said
    };
    let root_size = || -> u64 {
        let said = qc(&[
            "ssh",
            "cloud",
            "findmnt -n -o SOURCE /; df -B1 --output=size / | tail -n 1",
        ]);
        let mut lines = said.lines();
        let source = lines.next().unwrap_or_default().to_string();
        assert_eq!(
            source, "/dev/vda1",
            "the root is not the image's first partition:\n{said}"
        );
        lines.next().unwrap_or_default().trim().parse().unwrap_or(0)
    };
    fs::write(dir.path().join("qemu-compose.yaml"), compose("3G")).unwrap();
    qc(&["up", "--wait", "--wait-timeout", &WAIT_SECS.to_string()]);
    eprintln!(
        "e2e: cloud image up --wait {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let first = root_size();
    assert!(
        first > 2900 << 20,
        "growpart did not grow the root to the 3G disk: {first} bytes"
    );
    qc(&[
        "ssh",
        "cloud",
        "echo written-by-the-guest | sudo tee /var/tmp/marker >/dev/null && sync",
    ]);
    qc(&["stop", "-t", &STOP_SECS.to_string()]);
    // The stopped VM's own disk, read without booting: the guest's writes (in the instance
    // disk, over the base) on a root filesystem growpart and the kernel have grown.
    let out = dir.path().join("from-the-disk");
    fs::create_dir(&out).unwrap();
    qc(&["cp", "cloud:/var/tmp/marker", out.to_str().unwrap()]);
    qc(&["cp", "cloud:/etc/hostname", out.to_str().unwrap()]);
    assert_eq!(
        fs::read_to_string(out.join("marker")).unwrap(),
        "written-by-the-guest\n"
    );
    assert_eq!(fs::read_to_string(out.join("hostname")).unwrap(), "cloud\n");
    fs::write(dir.path().join("qemu-compose.yaml"), compose("4G")).unwrap();
    let said = qc(&["up", "--wait", "--wait-timeout", &WAIT_SECS.to_string()]);
    assert!(said.contains("disk grown from 3G to 4G"), "{said}");
    let second = root_size();
    assert!(
        second > first + (900 << 20),
        "the root did not grow with the disk: {first} then {second} bytes"
    );
    qc(&["destroy", "-t", &STOP_SECS.to_string()]);
    eprintln!("e2e: cloud image {:.1} s", t.elapsed().as_secs_f64());
}

/// The tree issue 14's volumes are filled from: a hard link, a relative symbolic link, an
/// owner and mode of its own, a 3000-entry folder and a 64 MiB file holding 4 bytes.
fn make_seed_tree(seed: &Path) {
    fs::create_dir_all(seed.join("sub/deep")).unwrap();
    fs::write(seed.join("hello.txt"), "imported").unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(seed.join("sub/deep/data.bin"), data).unwrap();
    fs::set_permissions(
        seed.join("sub/deep/data.bin"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    // Another owner, where the test may give files away (CI also runs it as an ordinary user).
    if rustix::process::geteuid().is_root() {
        std::os::unix::fs::chown(seed.join("sub/deep/data.bin"), Some(1234), Some(5678)).unwrap();
    }
    fs::hard_link(seed.join("hello.txt"), seed.join("sub/hard")).unwrap();
    std::os::unix::fs::symlink("../hello.txt", seed.join("sub/link")).unwrap();
    for i in 0..3000 {
        fs::write(seed.join(format!("sub/many-{i:04}")), i.to_string()).unwrap();
    }
    let sparse = fs::File::create(seed.join("sparse")).unwrap();
    sparse.set_len(64 << 20).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&sparse, b"tail", (64 << 20) - 4).unwrap();
}
