//! The cloud-init seed end to end: golden documents, injection attempts read back by
//! cloud-init's own YAML parser and shell quoting, `cloud-init schema`, and the CIDATA image
//! checked with fsck.fat, blkid and mtools.
//!
//! Regenerate the golden files with `UPDATE_GOLDEN=1 cargo test --test it seed::`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use qemu_compose::cloudinit::{
    GuestMount, HostKey, Seed, SeedError, SeedInput, SeedLink, TargetKind, UserSpec, build_seed,
    hash_password,
};
use qemu_compose::disk::fat::{CIDATA_LABEL, build_fat_image};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{assert_golden, run_tool, text, tool};

pub(crate) const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHc0d1ZpR3Jvb3Qtbm90LWEtcmVhbC1rZXktanVzdC1ieXRlcw qemu-compose-demo";
/// A host key made for these tests with `ssh-keygen -t ed25519 -N '' -C ''`; it guards
/// nothing.
const HOST_KEY_PRIVATE: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACCAA4pKfv9zj9ZgcfxqR1AP7rsCDthhM5u+yVB9yUN3hAAAAIiD5YtNg+WL
TQAAAAtzc2gtZWQyNTUxOQAAACCAA4pKfv9zj9ZgcfxqR1AP7rsCDthhM5u+yVB9yUN3hA
AAAECcO3NpZuCc2c0wO5b9JmhundFc27W6Rh4wo8PUK1k14IADikp+/3OP1mBx/GpHUA/u
uwIO2GEzm77JUH3JQ3eEAAAAAAECAwQF
-----END OPENSSH PRIVATE KEY-----
";
const HOST_KEY_PUBLIC: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIADikp+/3OP1mBx/GpHUA/uuwIO2GEzm77JUH3JQ3eE";
/// The Python that cloud-init runs under; its PyYAML is the parser that reads user-data.
const CLOUD_INIT_PYTHON: &str = "/usr/bin/python3";

/// Hashed once: 5000 rounds of SHA-512 are slow in a debug build.
pub(crate) static PASSWORD_HASH: LazyLock<String> =
    LazyLock::new(|| hash_password("correct-horse", "qcsalt0123456789").unwrap());

fn base() -> SeedInput {
    SeedInput {
        hostname: "db".into(),
        user: UserSpec {
            name: "debian".into(),
            uid: Some(1000),
            ssh_authorized_key: KEY.into(),
            password_hash: PASSWORD_HASH.clone(),
        },
        mounts: Vec::new(),
        environment: BTreeMap::new(),
        provision: Vec::new(),
        mac: "52:54:00:12:34:56".into(),
        links: Vec::new(),
        host_key: host_key(),
    }
}

pub(crate) fn host_key() -> HostKey {
    HostKey {
        private_openssh: HOST_KEY_PRIVATE.into(),
        public: HOST_KEY_PUBLIC.into(),
    }
}

fn volume(uuid: &str, target: &str, options: &str) -> GuestMount {
    GuestMount {
        device: format!("UUID={uuid}"),
        target: target.into(),
        fstype: "ext4".into(),
        options: options.into(),
        pass: 2,
        target_kind: TargetKind::Dir,
    }
}

fn share(tag: usize, target: &str, options: &str) -> GuestMount {
    GuestMount {
        device: format!("mount{tag}"),
        target: target.into(),
        fstype: "9p".into(),
        options: options.into(),
        pass: 0,
        target_kind: TargetKind::Dir,
    }
}

const NINEP: &str = "trans=virtio,version=9p2000.L,nofail";

/// The golden cases: the compose reference's examples and the volume and bind-mount ones.
fn cases() -> Vec<(&'static str, SeedInput)> {
    let mut cases = Vec::new();

    cases.push(("no_mounts", base()));

    let mut host_root = base();
    host_root.user.uid = None;
    host_root.user.name = "ubuntu".into();
    host_root.hostname = "web".into();
    cases.push(("host_user_is_root", host_root));

    let mut mixed = base();
    mixed.mounts = vec![
        volume(
            "3f1c2b9e-8d7a-4e65-b1c0-9a8b7c6d5e4f",
            "/var/lib/postgresql/data",
            "defaults,nofail",
        ),
        share(0, "/etc/app", "trans=virtio,version=9p2000.L,ro,nofail"),
        share(1, "/opt/scripts", NINEP),
    ];
    cases.push(("mixed_volume_and_bind", mixed));

    // `./cache:/cache` has automount: false, so QEMU still exports it as mount0 and the seed
    // mounts only mount1.
    let mut skipped = base();
    skipped.mounts = vec![share(1, "/src", NINEP)];
    cases.push(("automount_false_before_automounted", skipped));

    let mut read_only = base();
    read_only.mounts = vec![
        volume(
            "0b9d6a2c-51e4-4c1f-9e3a-7d2f8a6b4c10",
            "/srv/reference",
            "ro,nofail",
        ),
        share(0, "/etc/app", "trans=virtio,version=9p2000.L,ro,nofail"),
    ];
    cases.push(("read_only_mounts", read_only));

    let mut custom = base();
    custom.mounts = vec![share(
        0,
        "/opt/scripts",
        "trans=virtio,version=9p2000.L,cache=loose,msize=104857600,nofail",
    )];
    cases.push(("custom_9p_options", custom));

    // `./nginx.conf:/etc/nginx/nginx.conf:ro`: a share holding only that file, mounted on a
    // hidden directory, then bound onto the target file.
    let mut file = base();
    file.mounts = vec![
        share(
            0,
            "/run/qemu-compose/mount0",
            "trans=virtio,version=9p2000.L,ro,nofail",
        ),
        GuestMount {
            device: "/run/qemu-compose/mount0/nginx.conf".into(),
            target: "/etc/nginx/nginx.conf".into(),
            fstype: "none".into(),
            options: "bind,ro,nofail".into(),
            pass: 0,
            target_kind: TargetKind::File,
        },
    ];
    cases.push(("file_bind_mount", file));

    let mut provisioned = base();
    provisioned.environment = BTreeMap::from([
        ("APP_ENV".into(), "prod".into()),
        ("GREETING".into(), "hello world".into()),
    ]);
    provisioned.provision = vec![
        "systemctl enable --now postgresql".into(),
        "echo ready > /run/provisioned".into(),
    ];
    cases.push(("environment_and_provision", provisioned));

    // On two project networks: static addresses on eth1 and eth2, and the project's hosts
    // list bound on /etc/hosts, so cloud-init must leave /etc/hosts alone.
    let mut networked = base();
    networked.links = vec![
        SeedLink {
            mac: "52:54:00:AA:00:01".into(),
            address: "10.89.0.2".parse().unwrap(),
            prefix: 24,
        },
        SeedLink {
            mac: "52:54:00:aa:00:02".into(),
            address: "172.30.4.9".parse().unwrap(),
            prefix: 22,
        },
    ];
    networked.mounts = vec![
        GuestMount {
            device: "hosts".into(),
            target: "/run/qemu-compose/hosts".into(),
            fstype: "9p".into(),
            options: "trans=virtio,version=9p2000.L,msize=512000,ro,nofail".into(),
            pass: 0,
            target_kind: TargetKind::Dir,
        },
        GuestMount {
            device: "/run/qemu-compose/hosts/hosts".into(),
            target: "/etc/hosts".into(),
            fstype: "none".into(),
            options: "bind,ro,nofail".into(),
            pass: 0,
            target_kind: TargetKind::File,
        },
    ];
    cases.push(("project_networks", networked));

    cases
}

#[test]
fn documents_match_golden_files() {
    for (case, input) in cases() {
        let seed = build_seed(&input).unwrap();
        // The image is pinned by its SHA-256: any change in fatfs or in our geometry shows.
        let image = build_fat_image(CIDATA_LABEL, &seed.files()).unwrap();
        let image_hash: String = Sha256::digest(&image)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let image_line = format!("{image_hash}  {} bytes\n", image.len());
        let mut documents = seed.files().to_vec();
        documents.push(("seed.img.sha256", image_line.as_bytes()));
        for (name, content) in documents {
            assert_golden(&format!("seed/{case}/{name}"), content);
        }
    }
}

/// Runs `cloud-init schema --config-file` on each document, a few at a time.
pub(crate) fn assert_schema_valid(docs: &[(String, String)]) {
    let dir = tempfile::tempdir().unwrap();
    for chunk in docs.chunks(4) {
        let children: Vec<_> = chunk
            .iter()
            .enumerate()
            .map(|(i, (label, doc))| {
                let path = dir.path().join(format!("user-data-{i}"));
                std::fs::write(&path, doc).unwrap();
                let child = tool("cloud-init")
                    .args(["schema", "--config-file"])
                    .arg(&path)
                    .output();
                (label, child)
            })
            .collect();
        for (label, output) in children {
            let output = output.unwrap_or_else(|e| {
                panic!("cannot run cloud-init ({e}); install the cloud-init package")
            });
            assert!(
                output.status.success(),
                "{label}: cloud-init schema failed:\n{}{}",
                text(&output.stdout),
                text(&output.stderr)
            );
        }
    }
}

#[test]
fn every_golden_user_data_passes_cloud_init_schema() {
    let docs: Vec<(String, String)> = cases()
        .into_iter()
        .map(|(case, input)| (case.to_owned(), build_seed(&input).unwrap().user_data))
        .collect();
    assert_schema_valid(&docs);
}

#[test]
fn cloud_init_schema_rejects_a_broken_document() {
    // Proves the check above can fail: `users` must be a list or a string, not a number.
    let broken = "#cloud-config\nusers: 5\nbootcmd: 7\n".to_owned();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("user-data");
    std::fs::write(&path, broken).unwrap();
    let out = run_tool(
        "cloud-init",
        &["schema", "--config-file", path.to_str().unwrap()],
    );
    assert!(!out.status.success());
}

/// Values an attacker (or an unlucky compose file) might try: YAML, fstab and shell syntax.
const HOSTILE: &[&str] = &[
    "a b",
    "a'b",
    "a\"b",
    "a#b",
    "a: b",
    "a;reboot",
    "$(reboot)",
    "`reboot`",
    "a\nruncmd: [reboot]",
    "- x",
    "&anchor *alias",
    "!!python/object:os.system",
    "{x: 1}",
    "'; reboot; '",
    "a\\040b\\nc",
    "yes",
    "0o17",
    "~",
];

/// What each user-data document must contain, parsed back by cloud-init's parser and run
/// through cloud-init's own bootcmd quoting with stand-ins for mkdir, touch and modprobe.
struct Expected {
    input: SeedInput,
}

impl Expected {
    fn bootcmd(&self) -> Vec<Vec<String>> {
        let mut cmds: Vec<Vec<String>> = Vec::new();
        if self.input.mounts.iter().any(|m| m.fstype == "9p") {
            cmds.push(vec!["modprobe".into(), "9p".into()]);
            cmds.push(vec!["modprobe".into(), "9pnet_virtio".into()]);
        }
        for m in &self.input.mounts {
            let new: Vec<Vec<String>> = match m.target_kind {
                TargetKind::Dir => vec![vec!["mkdir".into(), "-p".into(), m.target.clone()]],
                TargetKind::File => {
                    let parent = Path::new(&m.target).parent().unwrap();
                    vec![
                        vec!["mkdir".into(), "-p".into(), parent.to_str().unwrap().into()],
                        vec!["touch".into(), m.target.clone()],
                    ]
                }
            };
            for c in new {
                if !cmds.contains(&c) {
                    cmds.push(c);
                }
            }
        }
        cmds
    }

    fn keys(&self) -> Vec<&'static str> {
        let mut keys = vec![
            "users",
            "ssh_pwauth",
            "ssh_deletekeys",
            "ssh_keys",
            "manage_etc_hosts",
        ];
        if !self.input.mounts.is_empty() {
            keys.extend(["bootcmd", "mounts"]);
        }
        if !self.input.environment.is_empty() {
            keys.push("write_files");
        }
        if !self.input.provision.is_empty() {
            keys.push("runcmd");
        }
        keys.sort_unstable();
        keys
    }

    /// `bootcmd_run` is the argv lists the shell saw, when the bootcmd was run.
    fn check(&self, parsed: &Value, bootcmd_run: Option<&Value>) {
        let label = format!("{:?}", self.input);
        let map = parsed.as_object().expect("user-data is a mapping");
        let mut keys: Vec<&str> = map.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, self.keys(), "{label}: top-level keys");
        let user = &self.input.user;
        let mut expected_user = json!({
            "name": user.name,
            "sudo": "ALL=(ALL) NOPASSWD:ALL",
            "shell": "/bin/bash",
            "ssh_authorized_keys": [user.ssh_authorized_key],
            "passwd": user.password_hash,
            "lock_passwd": false,
        });
        if let Some(uid) = user.uid {
            expected_user["uid"] = json!(uid);
        }
        assert_eq!(map["users"], json!([expected_user]), "{label}: users");
        assert_eq!(map["ssh_pwauth"], json!(false), "{label}");
        assert_eq!(map["ssh_deletekeys"], json!(true), "{label}");
        assert_eq!(
            map["ssh_keys"],
            json!({"ed25519_private": HOST_KEY_PRIVATE, "ed25519_public": HOST_KEY_PUBLIC}),
            "{label}: the host key comes back byte for byte"
        );
        // A mount on /etc/hosts (the project's hosts list) turns cloud-init's writes off.
        let hosts_mounted = self.input.mounts.iter().any(|m| m.target == "/etc/hosts");
        let manage = if hosts_mounted {
            json!(false)
        } else {
            json!("localhost")
        };
        assert_eq!(map["manage_etc_hosts"], manage, "{label}");
        if !self.input.mounts.is_empty() {
            assert_eq!(map["bootcmd"], json!(self.bootcmd()), "{label}: bootcmd");
            if let Some(run) = bootcmd_run {
                assert_eq!(*run, json!(self.bootcmd()), "{label}: bootcmd as run");
            }
            let mounts = map["mounts"].as_array().unwrap();
            assert_eq!(mounts.len(), self.input.mounts.len(), "{label}: mounts");
            for (entry, m) in mounts.iter().zip(&self.input.mounts) {
                check_fstab_line(entry, m);
            }
        }
        if !self.input.environment.is_empty() {
            let content: String = self
                .input
                .environment
                .iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect();
            assert_eq!(
                map["write_files"],
                json!([{"path": "/etc/environment", "content": content, "append": true}]),
                "{label}: write_files"
            );
        }
        if !self.input.provision.is_empty() {
            assert_eq!(
                map["runcmd"],
                json!(self.input.provision),
                "{label}: runcmd"
            );
        }
    }
}

/// Undoes fstab's three-digit octal escapes, as libmount does.
fn unescape(field: &str) -> String {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

/// Joins the entry the way cloud-init's mounts module writes fstab (tab-separated), then
/// splits it the way fstab readers do and undoes the octal escapes.
fn check_fstab_line(entry: &Value, mount: &GuestMount) {
    let fields: Vec<&str> = entry
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().expect("every mount field is a string"))
        .collect();
    let line = fields.join("\t");
    assert!(!line.starts_with('#'), "{line:?} would be a comment");
    let split: Vec<&str> = line.split([' ', '\t']).collect();
    assert_eq!(split.len(), 6, "{line:?} is not six fstab fields");
    assert_eq!(unescape(split[0]), mount.device);
    assert_eq!(unescape(split[1]), mount.target);
    assert_eq!(split[2], mount.fstype);
    assert_eq!(split[3], mount.options);
    assert_eq!(split[4], "0");
    assert_eq!(split[5], mount.pass.to_string());
}

/// Parses each document with cloud-init's PyYAML and runs its bootcmd through cloud-init's
/// `shellify` and `/bin/sh`, with mkdir, touch and modprobe replaced by functions that print
/// their argv. Takes `[user-data, meta-data]` pairs; returns `(user-data, bootcmd argv lists,
/// meta-data)` per pair.
fn read_back_with_cloud_init(docs: &[[String; 2]]) -> Vec<(Value, Value, Value)> {
    let script = r#"
import json, subprocess, sys, yaml
from cloudinit.util import shellify
PRELUDE = "\n".join(
    "%s() { printf '%%s\\037' %s \"$@\"; printf '\\036'; }" % (n, n)
    for n in ("mkdir", "touch", "modprobe"))
out = []
for doc, meta in json.load(sys.stdin):
    cfg = yaml.safe_load(doc)
    argvs = []
    if "bootcmd" in cfg:
        script = PRELUDE + "\n" + shellify(cfg["bootcmd"])
        res = subprocess.run(["/bin/sh", "-c", script], capture_output=True, check=True)
        for rec in res.stdout.decode().split("\x1e")[:-1]:
            argvs.append(rec.split("\x1f")[:-1])
    out.append([cfg, argvs, yaml.safe_load(meta)])
json.dump(out, sys.stdout)
"#;
    let mut child = tool(CLOUD_INIT_PYTHON)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {CLOUD_INIT_PYTHON} ({e}); install cloud-init"));
    serde_json::to_writer(child.stdin.take().unwrap(), docs).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cloud-init's python failed: {}",
        text(&out.stderr)
    );
    let parsed: Vec<(Value, Value, Value)> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(parsed.len(), docs.len());
    parsed
}

/// Every way of placing a hostile value into the input, with whether the documented rules
/// accept it: paths, values and commands carry anything but control characters; options,
/// user names, hostnames and variable names are plain tokens.
fn hostile_inputs() -> Vec<(String, SeedInput, bool)> {
    let no_control = |s: &str| !s.chars().any(char::is_control);
    let token = |s: &str, extra: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    let mut inputs = Vec::new();
    for &bad in HOSTILE {
        let mut i = base();
        i.mounts = vec![share(0, &format!("/srv/{bad}"), NINEP)];
        inputs.push((format!("target {bad:?}"), i, no_control(bad)));

        let mut i = base();
        i.mounts = vec![GuestMount {
            target_kind: TargetKind::File,
            ..share(0, &format!("/etc/{bad}/x.conf"), NINEP)
        }];
        inputs.push((format!("file-target {bad:?}"), i, no_control(bad)));

        let mut i = base();
        i.mounts = vec![share(0, "/srv", &format!("{NINEP},{bad}"))];
        let ok = !bad
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#' || c == '\\');
        inputs.push((format!("options {bad:?}"), i, ok));

        let mut i = base();
        i.mounts = vec![GuestMount {
            device: format!("/run/qemu-compose/mount0/{bad}"),
            fstype: "none".into(),
            options: "bind,nofail".into(),
            ..share(0, "/srv", NINEP)
        }];
        inputs.push((format!("device {bad:?}"), i, no_control(bad)));

        let mut i = base();
        i.user.name = bad.into();
        let ok = bad.starts_with(|c: char| c.is_ascii_lowercase()) && token(bad, "_-");
        inputs.push((format!("user {bad:?}"), i, ok));

        let mut i = base();
        i.hostname = bad.into();
        let ok = bad.starts_with(|c: char| c.is_ascii_alphanumeric()) && token(bad, "-");
        inputs.push((format!("hostname {bad:?}"), i, ok));

        let mut i = base();
        i.environment = BTreeMap::from([("VALUE".into(), bad.into())]);
        inputs.push((format!("environment-value {bad:?}"), i, no_control(bad)));

        let mut i = base();
        i.environment = BTreeMap::from([(bad.into(), "x".into())]);
        let ok = bad.starts_with(|c: char| c.is_ascii_alphabetic()) && token(bad, "_");
        inputs.push((format!("environment-key {bad:?}"), i, ok));

        let mut i = base();
        i.provision = vec![bad.into(), "true".into()];
        inputs.push((format!("provision {bad:?}"), i, true));
    }
    inputs
}

#[test]
fn hostile_values_are_rejected_or_inert() {
    let mut accepted = Vec::new();
    for (label, input, expect_ok) in hostile_inputs() {
        match build_seed(&input) {
            Ok(seed) => {
                assert!(expect_ok, "{label}: accepted, should be refused");
                accepted.push((input, seed));
            }
            Err(e) => {
                assert!(!expect_ok, "{label}: refused: {e}");
                assert!(e.to_string().len() > 20, "{label}: terse error {e}");
            }
        }
    }
    let docs: Vec<[String; 2]> = accepted
        .iter()
        .map(|(_, s)| [s.user_data.clone(), s.meta_data.clone()])
        .collect();
    let parsed = read_back_with_cloud_init(&docs);
    for ((input, seed), (doc, bootcmd_run, meta)) in accepted.iter().zip(&parsed) {
        Expected {
            input: input.clone(),
        }
        .check(doc, Some(bootcmd_run));
        assert_eq!(
            *meta,
            json!({"instance-id": seed.instance_id, "local-hostname": input.hostname})
        );
    }
}

#[test]
fn hostile_documents_pass_cloud_init_schema() {
    // One accepted document per kind of field is enough to show the quoting is schema-clean.
    let mut seen = std::collections::BTreeSet::new();
    let docs: Vec<(String, String)> = hostile_inputs()
        .into_iter()
        .filter_map(|(label, input, _)| {
            let kind = label.split(' ').next().unwrap().to_owned();
            let seed = build_seed(&input).ok()?;
            seen.insert(kind).then_some((label, seed.user_data))
        })
        .collect();
    assert!(docs.len() >= 5, "{docs:?}");
    assert_schema_valid(&docs);
}

#[test]
fn newlines_and_fstab_breakers_are_refused_with_reasons() {
    let mut i = base();
    i.mounts = vec![share(0, "/srv/a\nb", NINEP)];
    let e = build_seed(&i).unwrap_err();
    assert!(
        matches!(
            e,
            SeedError::InvalidMount {
                field: "target",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("control characters"), "{e}");

    let mut i = base();
    i.mounts = vec![share(0, "/srv", "ro nofail")];
    let e = build_seed(&i).unwrap_err();
    assert!(
        matches!(
            e,
            SeedError::InvalidMount {
                field: "options",
                ..
            }
        ),
        "{e}"
    );

    let mut i = base();
    i.environment = BTreeMap::from([("X".into(), "a\nEVIL=1".into())]);
    assert!(matches!(
        build_seed(&i),
        Err(SeedError::InvalidEnvironmentValue(_))
    ));

    let mut i = base();
    i.mounts = vec![share(0, "/srv", NINEP), share(1, "/srv", NINEP)];
    assert!(matches!(build_seed(&i), Err(SeedError::DuplicateTarget(_))));
}

#[test]
fn golden_cases_read_back_exactly() {
    let cases = cases();
    let docs: Vec<[String; 2]> = cases
        .iter()
        .map(|(_, i)| {
            let seed = build_seed(i).unwrap();
            [seed.user_data, seed.meta_data]
        })
        .collect();
    for ((_, input), (doc, run, _)) in cases.iter().zip(read_back_with_cloud_init(&docs)) {
        Expected {
            input: input.clone(),
        }
        .check(&doc, Some(&run));
    }
}

#[test]
fn password_hash_matches_openssl() {
    for (password, salt) in [
        ("correct-horse", "qcsalt0123456789"),
        ("p@ss w'rd", "./Az09"),
    ] {
        let out = run_tool("openssl", &["passwd", "-6", "-salt", salt, password]);
        assert!(out.status.success(), "openssl passwd failed");
        assert_eq!(
            String::from_utf8(out.stdout).unwrap().trim_end(),
            hash_password(password, salt).unwrap()
        );
    }
}

fn write_image(dir: &Path, seed: &Seed) -> PathBuf {
    let image = build_fat_image(CIDATA_LABEL, &seed.files()).unwrap();
    let path = dir.join("seed.img");
    std::fs::write(&path, image).unwrap();
    path
}

fn blkid(path: &Path) -> String {
    let out = run_tool("blkid", &["-p", path.to_str().unwrap()]);
    assert!(out.status.success(), "blkid -p found nothing");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn seed_image_passes_fsck_blkid_and_mtools() {
    let dir = tempfile::tempdir().unwrap();
    for (case, input) in cases() {
        let seed = build_seed(&input).unwrap();
        let path = write_image(dir.path(), &seed);
        let img = path.to_str().unwrap();

        let fsck = run_tool("fsck.fat", &["-n", img]);
        let fsck_text = text(&fsck.stdout);
        assert!(fsck.status.success(), "{case}: fsck.fat -n:\n{fsck_text}");
        assert!(
            fsck_text.contains(" 3 files") || fsck_text.contains(" 4 files"),
            "{fsck_text}"
        );

        let id = blkid(&path);
        assert!(id.contains(r#"TYPE="vfat""#), "{case}: {id}");
        assert!(id.contains(r#"LABEL="CIDATA""#), "{case}: {id}");

        let listing = run_tool("mdir", &["-i", img, "::"]);
        let listing = text(&listing.stdout);
        for (name, content) in seed.files() {
            assert!(
                listing.contains(name),
                "{case}: mdir lacks {name}:\n{listing}"
            );
            let line = listing.lines().find(|l| l.ends_with(name)).unwrap();
            // Every timestamp is pinned to the DOS epoch.
            assert!(line.contains("1980-01-01   0:00"), "{case}: {line}");
            let out = run_tool("mtype", &["-i", img, &format!("::{name}")]);
            assert!(out.status.success(), "{case}: mtype {name} failed");
            assert_eq!(out.stdout, content, "{case}: {name} read back differs");
        }
    }
}

#[test]
fn seed_image_is_reproducible_and_its_volume_id_follows_the_content() {
    let seed = build_seed(&base()).unwrap();
    let a = build_fat_image(CIDATA_LABEL, &seed.files()).unwrap();
    let b = build_fat_image(CIDATA_LABEL, &seed.files()).unwrap();
    assert_eq!(a, b);

    let mut other = base();
    other.hostname = "db2".into();
    let other = build_seed(&other).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let first = blkid(&write_image(dir.path(), &seed));
    let second = blkid(&write_image(dir.path(), &other));
    let uuid = |s: &str| {
        s.split(' ')
            .find(|f| f.starts_with("UUID="))
            .map(str::to_owned)
            .unwrap()
    };
    assert_ne!(uuid(&first), uuid(&second));
}

#[test]
fn large_content_still_makes_a_valid_image() {
    // 3 MB of provisioning: past 4084 clusters of 512 bytes, so the cluster size grows.
    let mut input = base();
    input.provision = (0..45_000)
        .map(|i| format!("echo line {i} of a long provisioning script >> /var/log/p"))
        .collect();
    let seed = build_seed(&input).unwrap();
    assert!(seed.user_data.len() > 2_100_000);
    let dir = tempfile::tempdir().unwrap();
    let path = write_image(dir.path(), &seed);
    let img = path.to_str().unwrap();
    let fsck = run_tool("fsck.fat", &["-n", img]);
    assert!(fsck.status.success(), "{}", text(&fsck.stdout));
    let out = run_tool("mtype", &["-i", img, "::user-data"]);
    assert_eq!(out.stdout, seed.user_data.as_bytes());
}

/// Printable ASCII (all of YAML's, fstab's and the shell's punctuation) or any non-control
/// Unicode.
fn tricky() -> impl Strategy<Value = String> {
    prop_oneof!["[ -~]{0,16}", "\\PC{0,16}"]
}

/// An input with the generated values in a directory target, a file target, mount options,
/// an environment value and a provisioning command.
fn random_input(dir: &str, file: &str, options: &str, value: String, command: String) -> SeedInput {
    let mut input = base();
    input.mounts = vec![
        share(0, &format!("/srv/{dir}"), &format!("{NINEP},{options}")),
        GuestMount {
            target_kind: TargetKind::File,
            ..share(1, &format!("/etc/{dir}/{file}"), NINEP)
        },
    ];
    input.environment = BTreeMap::from([("VALUE".to_owned(), value)]);
    input.provision = vec![command];
    input
}

fn random_inputs() -> impl Strategy<Value = SeedInput> {
    (tricky(), "[a-z]{1,8}", tricky(), tricky(), any::<String>())
        .prop_map(|(d, f, o, v, c)| random_input(&d, &f, &o, v, c))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Whatever build_seed accepts reads back, with serde-saphyr, as exactly the data given.
    #[test]
    fn accepted_values_read_back_unchanged(input in random_inputs()) {
        match build_seed(&input) {
            Ok(seed) => {
                let parsed: Value = serde_saphyr::from_str(&seed.user_data).unwrap();
                Expected { input }.check(&parsed, None);
                let meta: Value = serde_saphyr::from_str(&seed.meta_data).unwrap();
                prop_assert_eq!(&meta["instance-id"], &json!(seed.instance_id));
            }
            Err(e) => prop_assert!(
                matches!(
                    e,
                    SeedError::InvalidMount { .. }
                        | SeedError::InvalidEnvironmentValue(_)
                        | SeedError::InvalidProvision(_)
                ),
                "{}",
                e
            ),
        }
    }
}

/// The same random values, read back by cloud-init's PyYAML and shell rather than by the
/// library that wrote them, in one Python process.
#[test]
fn random_values_read_back_with_cloud_init() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = random_inputs();
    let accepted: Vec<(SeedInput, Seed)> = (0..300)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .filter_map(|input| build_seed(&input).ok().map(|seed| (input, seed)))
        .collect();
    assert!(accepted.len() > 100, "only {} accepted", accepted.len());
    let docs: Vec<[String; 2]> = accepted
        .iter()
        .map(|(_, s)| [s.user_data.clone(), s.meta_data.clone()])
        .collect();
    for ((input, _), (doc, run, _)) in accepted.iter().zip(read_back_with_cloud_init(&docs)) {
        Expected {
            input: input.clone(),
        }
        .check(&doc, Some(&run));
    }
}

/// Renders network-config with cloud-init's own converter, as Debian's 22.4 does at boot
/// (ENI plus a udev rename rule) and as netplan images do. An all-digit MAC is the trap:
/// unquoted, YAML 1.1 reads `52:54:00:12:34:56` as a base-60 integer.
#[test]
fn network_config_renders_with_cloud_init() {
    for (mac, expected) in [
        ("52:54:00:12:34:56", "52:54:00:12:34:56"),
        ("52:54:00:AB:CD:EF", "52:54:00:ab:cd:ef"),
    ] {
        let mut input = base();
        input.mac = mac.into();
        let seed = build_seed(&input).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("network-config");
        std::fs::write(&config, &seed.network_config).unwrap();
        let render = |distro: &str, kind: &str| {
            let out_dir = dir.path().join(kind);
            let (config, out) = (config.to_str().unwrap(), out_dir.to_str().unwrap());
            let args = [
                "devel",
                "net-convert",
                "-p",
                config,
                "-k",
                "yaml",
                "-D",
                distro,
            ];
            let out = run_tool(
                "cloud-init",
                &[&args[..], &["-O", kind, "-d", out]].concat(),
            );
            assert!(
                out.status.success(),
                "net-convert {kind}: {}",
                text(&out.stderr)
            );
            out_dir
        };
        let eni = render("debian", "eni");
        let interfaces =
            std::fs::read_to_string(eni.join("etc/network/interfaces.d/50-cloud-init")).unwrap();
        assert!(
            interfaces.contains("auto eth0\niface eth0 inet dhcp"),
            "{interfaces}"
        );
        let udev =
            std::fs::read_to_string(eni.join("etc/udev/rules.d/70-persistent-net.rules")).unwrap();
        let rule = format!(r#"ATTR{{address}}=="{expected}", NAME="eth0""#);
        assert!(udev.contains(&rule), "{udev}");
        let netplan = render("ubuntu", "netplan");
        let netplan =
            std::fs::read_to_string(netplan.join("etc/netplan/50-cloud-init.yaml")).unwrap();
        for needle in [expected, "set-name: eth0", "dhcp4: true"] {
            assert!(netplan.contains(needle), "{needle} missing from {netplan}");
        }
    }
}
