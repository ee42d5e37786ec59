//! Rule-by-rule tests of the whole pipeline through [`parse_str`] and [`load`].

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;

use super::*;

fn env() -> BTreeMap<String, String> {
    [
        ("HOME", "/home/me"),
        ("TAG", "noble"),
        ("CPUS", "4"),
        ("EMPTY", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

fn parse_with(
    yaml: &str,
    project_name: Option<&str>,
    env: &dyn Env,
) -> Result<Project, ComposeErrors> {
    parse_str(
        yaml,
        Path::new("qemu-compose.yaml"),
        Path::new("/proj"),
        &LoadOptions { project_name, env },
    )
}

fn parse(yaml: &str) -> Result<Project, ComposeErrors> {
    parse_with(yaml, None, &env())
}

fn ok(yaml: &str) -> Project {
    match parse(yaml) {
        Ok(p) => p,
        Err(e) => panic!("expected a valid file, got:\n{e}"),
    }
}

fn errors(yaml: &str) -> Vec<String> {
    match parse(yaml) {
        Ok(p) => panic!("expected errors, got {p:#?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

/// The single error of an invalid file.
fn error(yaml: &str) -> String {
    let all = errors(yaml);
    assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
    all.into_iter().next().unwrap_or_default()
}

/// A file with one VM `a` whose body is `vm` (indented by 4), after `top`.
fn one_vm(top: &str, vm: &str) -> String {
    let body: String = vm.lines().map(|l| format!("    {l}\n")).collect();
    format!("{top}vms:\n  a:\n    image: ./img.qcow2\n{body}")
}

#[test]
fn minimal_file_gets_every_default() {
    let p = ok("vms:\n  web:\n    image: images/web.qcow2\n");
    assert_eq!(p.name, "proj");
    assert_eq!(p.dir, Path::new("/proj"));
    assert_eq!(p.file, Path::new("qemu-compose.yaml"));
    let vm = &p.vms[0];
    assert_eq!(vm.name, "web");
    assert_eq!(vm.image, ImageSource::Path("/proj/images/web.qcow2".into()));
    assert_eq!(vm.cpu, 1);
    assert_eq!(vm.memory_mib, 1024);
    assert_eq!(vm.disk_size_bytes, 10 << 30);
    assert_eq!((vm.user.as_str(), vm.user_guessed), ("ubuntu", true));
    assert_eq!(vm.accel, Accel::Auto);
    assert_eq!(vm.ssh_port, None);
    assert!(vm.ports.is_empty() && vm.volumes.is_empty() && vm.provision.is_empty());
}

#[test]
fn unknown_keys_name_the_path_and_the_closest_key() {
    let yaml = "vms:\n  db:\n    image: x.img\n    memroy: 2G\n    volumes:\n      - source: ./d\n        targt: /d\n";
    let all = errors(yaml);
    assert_eq!(
        all,
        [
            "qemu-compose.yaml:4:5: vms.db.memroy: unknown key \"memroy\" (did you mean \"memory\"?)",
            "qemu-compose.yaml:6:9: vms.db.volumes[0]: `target:` is required",
            "qemu-compose.yaml:7:9: vms.db.volumes[0].targt: unknown key \"targt\" (did you mean \"target\"?)",
        ]
    );
    let far = error("vmz: {}\nvms: {a: {image: x}}\n");
    assert!(
        far.contains("unknown key \"vmz\" (did you mean \"vms\"?)"),
        "{far}"
    );
    let nothing_close = error(&one_vm("", "zzzzzzzz: 1"));
    assert!(
        nothing_close.contains("(valid keys: image, image_checksum, cpu"),
        "{nothing_close}"
    );
}

#[test]
fn errors_carry_the_vm_and_field() {
    let err = parse("vms:\n  db:\n    image: x\n    cpu: 0\n").unwrap_err();
    let e = &err.0[0];
    assert_eq!((e.line, e.column), (4, 10));
    assert_eq!(e.vm.as_deref(), Some("db"));
    assert_eq!(e.field.as_deref(), Some("vms.db.cpu"));
    assert_eq!(e.message, "cpu 0 must be between 1 and 256");
}

#[test]
fn extension_keys_are_ignored_where_allowed_only() {
    ok(
        "x-top: {anything: [1]}\nvolumes:\n  v: {size: 1G, x-note: hi}\nnetworks:\n  n: {x-y: 1}\nvms:\n  a:\n    image: i\n    x-owner: me\n    x-bad: ${UNSET:?never interpolated}\n",
    );
    let e = error(&one_vm("", "disk: {size: 1G, x-note: no}"));
    assert!(e.contains("vms.a.disk.x-note: unknown key"), "{e}");
}

#[test]
fn all_errors_are_collected_in_file_order() {
    let yaml = "vms:\n  Bad_Name:\n    image: x\n    cpu: 999\n  ok:\n    image: y\n    accel: fast\n    ports: [\"70000:80\"]\n";
    let all = errors(yaml);
    assert_eq!(all.len(), 4, "{all:#?}");
    assert!(
        all[0].starts_with("qemu-compose.yaml:2:3: vms.Bad_Name: VM name \"Bad_Name\" must match"),
        "{all:#?}"
    );
    assert!(all[1].starts_with("qemu-compose.yaml:4:10: vms.Bad_Name.cpu:"));
    assert!(all[2].starts_with(
        "qemu-compose.yaml:7:12: vms.ok.accel: accel \"fast\" must be auto, kvm or tcg"
    ));
    assert!(
        all[3]
            .contains("vms.ok.ports[0]: port \"70000:80\": port 70000 must be between 1 and 65535"),
        "{all:#?}"
    );
}

#[test]
fn names_are_checked() {
    let long = "a".repeat(64);
    let e = error(&format!("vms:\n  {long}:\n    image: x\n"));
    assert!(e.contains("at most 63 characters"), "{e}");
    ok(&format!("vms:\n  {}:\n    image: x\n", "a".repeat(63)));
    let e = error("volumes:\n  My-Vol:\nvms:\n  a: {image: x}\n");
    assert!(
        e.contains("volumes.My-Vol: volume name \"My-Vol\" must match"),
        "{e}"
    );
    let e = error("networks:\n  -n: {}\nvms:\n  a: {image: x}\n");
    assert!(e.contains("network name \"-n\""), "{e}");
}

#[test]
fn short_volume_detection_follows_the_seed_rule() {
    let p = ok(&one_vm(
        "volumes:\n  data: {size: 1G}\n",
        "volumes:\n  - data:/var/data\n  - ./cfg:/etc/app:ro\n  - /srv/x:/x:rw\n  - a\\b:/ab\n  - .hidden:/h\n  - ~/src:/src\n  - ../up/./y:/y",
    ));
    let v = &p.vms[0].volumes;
    assert_eq!(
        v[0].kind,
        MountKind::Named {
            volume: "data".into()
        }
    );
    assert!(!v[0].read_only);
    let bind_source = |m: &VolumeMount| match &m.kind {
        MountKind::Bind { source, .. } => source.clone(),
        other => panic!("expected a bind mount, got {other:?}"),
    };
    assert_eq!(bind_source(&v[1]), Path::new("/proj/cfg"));
    assert!(v[1].read_only);
    assert_eq!(bind_source(&v[2]), Path::new("/srv/x"));
    assert!(!v[2].read_only);
    assert_eq!(bind_source(&v[3]), Path::new("/proj/a\\b"));
    assert_eq!(bind_source(&v[4]), Path::new("/proj/.hidden"));
    assert_eq!(bind_source(&v[5]), Path::new("/home/me/src"));
    assert_eq!(bind_source(&v[6]), Path::new("/up/y"));
    assert_eq!(v[1].to_string(), "./cfg:/etc/app:ro");
    let MountKind::Bind {
        automount,
        mount_options,
        security_model,
        source_written,
        ..
    } = &v[1].kind
    else {
        unreachable!()
    };
    assert!(*automount && mount_options.is_empty() && security_model.is_none());
    assert_eq!(source_written, "./cfg");
}

#[test]
fn undeclared_named_volume_lists_the_declared_ones() {
    let e = error(&one_vm(
        "volumes:\n  pgdata:\n  logs: {}\n",
        "volumes: [\"pgdat:/var/lib/pg\"]",
    ));
    assert_eq!(
        e,
        "qemu-compose.yaml:7:15: vms.a.volumes[0]: named volume \"pgdat\" is not declared under top-level volumes (declared: pgdata, logs); a host path must start with ./ or /"
    );
    let none = error(&one_vm("", "volumes: [\"data:/d\"]"));
    assert!(none.contains("(declared: none)"), "{none}");
}

#[test]
fn targets_must_be_absolute_normalised_and_unique() {
    let cases = [
        ("./d:relative", "must be an absolute path"),
        ("./d:/", "would hide the guest's root filesystem"),
        ("./d:/a//b", "empty component"),
        ("./d:/a/../b", "must be normalised"),
        ("./d:/a/./b", "must be normalised"),
        ("\"./d:/a\\nb\"", "control character"),
        ("\"./d:/a\\tb\"", "control character"),
    ];
    for (spec, want) in cases {
        let e = error(&one_vm("", &format!("volumes:\n  - {spec}")));
        assert!(e.contains(want), "{spec}: {e}");
    }
    ok(&one_vm("", "volumes: [\"./d:/with space/ok\"]"));
    let p = ok(&one_vm("", "volumes: [\"./d/:/mnt/\"]"));
    assert_eq!(p.vms[0].volumes[0].target, "/mnt");
    assert!(error(&one_vm("", "volumes: [\"./d://\"]")).contains("empty component"));
    let e = error(&one_vm(
        "",
        "volumes:\n  - ./a:/x\n  - source: ./b\n    target: /x",
    ));
    assert!(
        e.contains("vms.a.volumes[1]: target \"/x\" is used by another volume of this VM"),
        "{e}"
    );
    for bad in ["./a:/x:rx", "./a:/x:ro:extra", "justone"] {
        let e = error(&one_vm("", &format!("volumes: [\"{bad}\"]")));
        assert!(
            e.contains("ro or rw") || e.contains("source:target"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn long_form_options() {
    let p = ok(&one_vm(
        "",
        "volumes:\n  - source: ./scripts\n    target: /opt/scripts\n    read_only: true\n    automount: false\n    mount_options: \"cache=loose,msize=104857600,posixacl\"\n    security_model: mapped-xattr",
    ));
    let m = &p.vms[0].volumes[0];
    assert!(m.read_only);
    let MountKind::Bind {
        automount,
        mount_options,
        security_model,
        ..
    } = &m.kind
    else {
        panic!("{m:?}")
    };
    assert!(!automount);
    let opts: Vec<String> = mount_options.iter().map(ToString::to_string).collect();
    assert_eq!(opts, ["cache=loose", "msize=104857600", "posixacl"]);
    assert_eq!(*security_model, Some(SecurityModel::MappedXattr));
    for (opts, want) in [
        ("a b", "must not contain ' '"),
        ("a,,b", "comma-separated"),
        ("=v", "comma-separated"),
        ("k=", "comma-separated"),
        ("a'b", "must not contain"),
    ] {
        let e = error(&one_vm(
            "",
            &format!("volumes:\n  - source: ./s\n    target: /s\n    mount_options: \"{opts}\""),
        ));
        assert!(
            e.contains("vms.a.volumes[0].mount_options:") && e.contains(want),
            "{opts}: {e}"
        );
    }
    let e = error(&one_vm(
        "",
        "volumes:\n  - {source: ./s, target: /s, security_model: strict}",
    ));
    assert!(
        e.contains("must be one of passthrough, mapped-xattr, mapped-file, none"),
        "{e}"
    );
    let e = error(&one_vm(
        "",
        "volumes:\n  - {source: ./s, read_only: maybe, target: /s}",
    ));
    assert!(e.contains("expected true or false, found \"maybe\""), "{e}");
}

#[test]
fn bind_only_keys_on_a_named_volume_are_errors() {
    ok(&one_vm(
        "volumes:\n  v:\n",
        "volumes:\n  - source: v\n    target: /v\n    automount: true\n    mount_options: \"\"",
    ));
    let all = errors(&one_vm(
        "volumes:\n  v:\n",
        "volumes:\n  - source: v\n    target: /v\n    automount: false\n    mount_options: cache=loose\n    security_model: none",
    ));
    assert_eq!(all.len(), 3, "{all:#?}");
    assert!(all[0].contains("vms.a.volumes[0].automount: `automount` applies to bind mounts only, not to named volume \"v\""));
    assert!(all[1].contains("vms.a.volumes[0].mount_options:"));
    assert!(all[2].contains("vms.a.volumes[0].security_model:"));
}

#[test]
fn a_named_volume_written_by_one_vm_is_not_shared() {
    let top = "volumes:\n  v:\nvms:\n";
    let vm =
        |name: &str, spec: &str| format!("  {name}:\n    image: x\n    volumes: [\"{spec}\"]\n");
    ok(&format!(
        "{top}{}{}",
        vm("a", "v:/v:ro"),
        vm("b", "v:/data:ro")
    ));
    let e = error(&format!("{top}{}{}", vm("a", "v:/v"), vm("b", "v:/v")));
    assert_eq!(
        e,
        "qemu-compose.yaml:9:15: vms.b.volumes[0]: named volume \"v\" is also attached by VM \"a\"; a volume can be shared only when every attachment is read-only"
    );
    let e = error(&format!("{top}{}{}", vm("a", "v:/v:ro"), vm("b", "v:/v")));
    assert!(e.contains("vms.b.volumes[0]"), "{e}");
    let all = errors(&format!(
        "{top}{}{}{}",
        vm("a", "v:/v"),
        vm("b", "v:/v:ro"),
        vm("c", "v:/v:ro")
    ));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all[0].contains("vms.b.volumes[0]: named volume \"v\" is also attached by VM \"a\""),
        "{all:#?}"
    );
    assert!(all[1].contains("vms.c.volumes[0]"), "{all:#?}");
    let e = error(&format!(
        "{top}  a:\n    image: x\n    volumes: [\"v:/one\", \"v:/two\"]\n"
    ));
    assert!(e.contains("also attached by this VM already"), "{e}");
}

#[test]
fn sizes_are_checked() {
    let p = ok(
        "volumes:\n  a: {size: 20G}\n  b:\n  c: {size: 16777216}\nvms:\n  v:\n    image: x\n    memory: 2G\n    disk: {size: 40GiB}\n",
    );
    let sizes: Vec<u64> = p.volumes.iter().map(|v| v.size_bytes).collect();
    assert_eq!(sizes, [20 << 30, 10 << 30, 16 << 20]);
    assert_eq!(p.vms[0].memory_mib, 2048);
    assert_eq!(p.vms[0].disk_size_bytes, 40 << 30);
    assert_eq!(ok(&one_vm("", "memory: 512")).vms[0].memory_mib, 512);
    let vol = |size: &str| {
        error(&format!(
            "volumes:\n  v: {{size: {size}}}\nvms:\n  a: {{image: x}}\n"
        ))
    };
    assert!(
        vol("4M")
            .contains("volumes.v.size: size 4M is out of range: it must be between 8M and 64T")
    );
    assert!(vol("65T").contains("out of range"));
    assert!(vol("1.5G").contains("is not a whole number"));
    assert!(vol("0").contains("must be a positive number of bytes"));
    assert!(vol("\"0G\"").contains("is zero"));
    assert!(vol("-1").contains("positive"));
    let huge = vol("99999999999999999999999");
    assert!(
        huge.contains("size 99999999999999999999999 is too large"),
        "{huge}"
    );
    assert!(vol("1.5").contains("size 1.5 is not a whole number"));
    assert!(vol("\"16777217\"").contains("multiple of 512"));
    assert!(vol("[1]").contains("expected a size such as 10G"));
    for (mem, want) in [
        (
            "32",
            "memory 32 MiB is too small: it must be at least 64 MiB",
        ),
        (
            "\"32\"",
            "memory 32 MiB is too small: it must be at least 64 MiB",
        ),
        (
            "1024K",
            "memory 1 MiB is too small: it must be at least 64 MiB",
        ),
        ("\"1536K\"", "whole number of MiB"),
        ("\"5T\"", "too large: it must be at most 4194304 MiB (4T)"),
        ("0", "positive"),
        ("\"lots\"", "not a whole number"),
    ] {
        let e = error(&one_vm("", &format!("memory: {mem}")));
        assert!(
            e.contains("vms.a.memory:") && e.contains(want),
            "{mem}: {e}"
        );
    }
    // Interpolation gives text: numbers in strings are numbers, in the unit a bare number has.
    let vm = |text: &str| ok(&one_vm("", text)).vms[0].clone();
    assert_eq!(vm("memory: \"512\"").memory_mib, 512);
    assert_eq!(vm("memory: \" 2048 \"").memory_mib, 2048);
    assert_eq!(vm("cpu: \"4\"").cpu, 4);
    assert_eq!(vm("ssh: {port: \"2300\"}").ssh_port, Some(2300));
    assert_eq!(
        vm("disk: {size: \"21474836480\"}").disk_size_bytes,
        20 << 30
    );
    // The short forms people try get the long form in the message.
    let e = error(&one_vm("", "disk: 20G"));
    assert!(
        e.contains("vms.a.disk: expected a mapping; write the size as `disk: {size: 20G}`"),
        "{e}"
    );
    let e = error(&one_vm("", "ssh: 2300"));
    assert!(
        e.contains("vms.a.ssh: expected a mapping; write the port as `ssh: {port: 2300}`"),
        "{e}"
    );
    let e = error(&one_vm("", "disk: {size: 10240}"));
    assert!(
        e.contains("vms.a.disk.size: size 10K is out of range"),
        "{e}"
    );
}

#[test]
fn ports_and_ssh() {
    let p = ok(&one_vm(
        "",
        "ports: [\"8080:80\", \"127.0.0.1:5433:5432/tcp\", \"[::1]:53:53/udp\", 9000:9000]\nssh: {port: 2222}",
    ));
    let vm = &p.vms[0];
    assert_eq!(vm.ssh_port, Some(2222));
    let pf = |ip: Option<&str>, h, g, protocol| PortForward {
        host_ip: ip.map(|i| i.parse().unwrap()),
        host_port: h,
        guest_port: g,
        protocol,
    };
    assert_eq!(
        vm.ports,
        [
            pf(None, 8080, 80, Protocol::Tcp),
            pf(Some("127.0.0.1"), 5433, 5432, Protocol::Tcp),
            pf(Some("::1"), 53, 53, Protocol::Udp),
            pf(None, 9000, 9000, Protocol::Tcp),
        ]
    );
    for (spec, want) in [
        ("80", "expected two or three parts"),
        ("8080:80/sctp", "protocol must be tcp or udp"),
        ("8080-8090:80", "ranges are not supported"),
        ("x:80", "\"x\" is not a port number"),
        ("0:80", "must be between 1 and 65535"),
        ("1.2.3:80:80", "is not an IP address"),
        ("[::1:80:80", "unclosed ["),
    ] {
        let e = error(&one_vm("", &format!("ports: [\"{spec}\"]")));
        assert!(
            e.contains("vms.a.ports[0]: port") && e.contains(want),
            "{spec}: {e}"
        );
    }
    let e = error(&one_vm("", "ssh: {port: 70000}"));
    assert!(
        e.contains("vms.a.ssh.port: port 70000 must be between 1 and 65535"),
        "{e}"
    );
    let dup = "vms:\n  a:\n    image: x\n    ports: [\"8080:80\"]\n  b:\n    image: x\n    ports: [\"127.0.0.1:8080:81\", \"8080:80/udp\"]\n    ssh: {port: 8080}\n";
    let all = errors(dup);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(
        all[0].contains("vms.b.ports[0]: host port 8080/tcp is already used by VM \"a\""),
        "{all:#?}"
    );
    assert!(
        all[1].contains("vms.b.ssh.port: host port 8080/tcp is already used by VM \"a\""),
        "{all:#?}"
    );
    ok(
        "vms:\n  a:\n    image: x\n    ports: [\"127.0.0.1:80:80\"]\n  b:\n    image: x\n    ports: [\"127.0.0.2:80:80\"]\n",
    );
    // A wildcard forward clashing with several VMs names the first of them, every time.
    let several = "vms:\n  a:\n    image: x\n    ports: [\"127.0.0.3:80:80\"]\n  b:\n    image: x\n    ports: [\"127.0.0.2:80:80\"]\n  c:\n    image: x\n    ports: [\"127.0.0.1:80:80\"]\n  d:\n    image: x\n    ports: [\"80:80\"]\n";
    for _ in 0..20 {
        let e = error(several);
        assert!(e.contains("is already used by VM \"a\""), "{e}");
    }
    for (first, second) in [
        ("127.0.0.1:80:80", "0.0.0.0:80:80"),
        ("80:80", "127.0.0.1:80:81"),
        ("127.0.0.1:80:80", "80:81"),
    ] {
        let e = error(&one_vm("", &format!("ports: [\"{first}\", \"{second}\"]")));
        assert!(
            e.contains(
                "vms.a.ports[1]: host port 80/tcp is already used by another forward of this VM"
            ),
            "{e}"
        );
    }
}

#[test]
fn networks_must_be_declared() {
    let p = ok(&one_vm(
        "networks:\n  backend: {driver: bridge, subnet: auto}\n  front: {subnet: 10.89.0.0/24}\n  plain:\n",
        "networks: [backend, front]",
    ));
    let names: Vec<&str> = p.vms[0].networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(names, ["backend", "front"]);
    assert_eq!(p.networks[1].subnet.to_string(), "10.89.0.0/24");
    assert_eq!(p.networks[2].driver, "bridge");
    let e = error(&one_vm("networks:\n  backend:\n", "networks: [frontend]"));
    assert!(
        e.contains("vms.a.networks[0]: unknown network \"frontend\" (declared: backend)"),
        "{e}"
    );
    let e = error(&one_vm("networks:\n  n: {driver: overlay}\n", ""));
    assert!(
        e.contains("networks.n.driver: unknown network driver \"overlay\""),
        "{e}"
    );
    let e = error(&one_vm("networks:\n  n: {subnet: 10.89.0.1/24}\n", ""));
    assert!(e.contains("did you mean 10.89.0.0/24?"), "{e}");
    let e = error(&one_vm("networks:\n  n: {subnet: 10.0.0.0/31}\n", ""));
    assert!(e.contains("prefix length must be 8 to 30"), "{e}");
    let e = error(&one_vm("networks:\n  n: {subnet: banana}\n", ""));
    assert!(e.contains("must be \"auto\" or an IPv4 CIDR"), "{e}");
}

#[test]
fn vm_networks_take_the_long_form() {
    let nets = "networks:\n  backend: {subnet: 10.89.7.0/24}\n  other: {}\n";
    let p = ok(&one_vm(
        nets,
        "networks:\n      backend: {ipv4_address: 10.89.7.10, aliases: [pg, db.local]}\n      other:",
    ));
    let backend = &p.vms[0].networks[0];
    assert_eq!(backend.ipv4_address, Some("10.89.7.10".parse().unwrap()));
    assert_eq!(backend.aliases, ["pg", "db.local"]);
    assert_eq!(p.vms[0].networks[1].name, "other");
    for (entry, message) in [
        (
            "{backend: {ipv4_address: 10.89.8.1}}",
            "vms.a.networks.backend.ipv4_address: 10.89.8.1 is not a host address of the network's subnet 10.89.7.0/24",
        ),
        (
            "{backend: {ipv4_address: 10.89.7.255}}",
            "is not a host address",
        ),
        (
            "{other: {ipv4_address: banana}}",
            "vms.a.networks.other.ipv4_address: \"banana\" is not an IPv4 address",
        ),
        (
            "{other: {aliases: [\"bad name\"]}}",
            "vms.a.networks.other.aliases[0]: alias \"bad name\" is not a host name",
        ),
        (
            "{other: {priority: 3}}",
            "vms.a.networks.other.priority: unknown key \"priority\"",
        ),
        (
            "{nope: {}}",
            "unknown network \"nope\" (declared: backend, other)",
        ),
    ] {
        let e = error(&one_vm(nets, &format!("networks: {entry}")));
        assert!(e.contains(message), "{entry}: {e}");
    }
}

#[test]
fn depends_on_order_and_errors() {
    let p = ok(
        "vms:\n  web:\n    image: x\n    depends_on: [db, cache]\n  db:\n    image: x\n    depends_on: [cache]\n  cache:\n    image: x\n  other:\n    image: x\n",
    );
    let order: Vec<&str> = p.start_order().iter().map(|v| v.name.as_str()).collect();
    assert_eq!(order, ["cache", "db", "web", "other"]);
    let e = error("vms:\n  a:\n    image: x\n    depends_on: [b]\n");
    assert!(
        e.contains("vms.a.depends_on[0]: unknown VM \"b\" (declared: a)"),
        "{e}"
    );
    let e = error("vms:\n  a:\n    image: x\n    depends_on: [a]\n");
    assert!(e.contains("cannot depend on itself"), "{e}");
    let e = error("vms:\n  b:\n    image: x\n  a:\n    image: x\n    depends_on: [b, b]\n");
    assert!(e.contains("listed twice"), "{e}");
    let e = error(
        "vms:\n  a:\n    image: x\n    depends_on: [b]\n  b:\n    image: x\n    depends_on: [c]\n  c:\n    image: x\n    depends_on: [a]\n",
    );
    assert!(
        e.contains("depends_on has a cycle: a -> b -> c -> a"),
        "{e}"
    );
    assert!(
        e.starts_with("qemu-compose.yaml:10:18: vms.c.depends_on[0]:"),
        "{e}"
    );
}

#[test]
fn image_checksum_user_and_accel() {
    let sum = "AB".repeat(32);
    let p = ok(&format!(
        "vms:\n  a:\n    image: https://cloud.debian.org/images/debian-12-generic-amd64.qcow2\n    image_checksum: sha256:{sum}\n    accel: tcg\n"
    ));
    let vm = &p.vms[0];
    assert_eq!(
        vm.image_checksum,
        Some(format!("sha256:{}", "ab".repeat(32)))
    );
    assert_eq!((vm.user.as_str(), vm.user_guessed), ("debian", true));
    assert_eq!(vm.accel, Accel::Tcg);
    assert!(matches!(&vm.image, ImageSource::Url(u) if u.starts_with("https://cloud.debian.org")));
    for (image, user) in [
        (
            "https://cloud-images.ubuntu.com/noble/current/noble-server-cloudimg-amd64.img",
            "ubuntu",
        ),
        ("./Fedora-Cloud-Base-40.qcow2", "fedora"),
        ("./CentOS-Stream-9.qcow2", "centos"),
        ("./rhel-9.4-x86_64-kvm.qcow2", "cloud-user"),
        ("./alpine.qcow2", "ubuntu"),
    ] {
        let p = ok(&format!("vms:\n  a:\n    image: {image}\n"));
        assert_eq!(p.vms[0].user, user, "{image}");
    }
    let p = ok(&one_vm("", "user: admin_2"));
    assert_eq!(
        (p.vms[0].user.as_str(), p.vms[0].user_guessed),
        ("admin_2", false)
    );
    assert!(error(&one_vm("", "user: root")).contains("vms.a.user: user must not be root"));
    assert!(error(&one_vm("", "user: Bob")).contains("must be a Linux user name"));
    assert!(
        error(&one_vm("", "image_checksum: md5:abc"))
            .contains("is not sha256: followed by 64 hex digits")
    );
    assert!(error(&one_vm("", "image_checksum: sha256:abc")).contains("64 hex"));
    assert!(
        error("vms:\n  a:\n    image: ftp://x/y.img\n").contains("unsupported URL scheme \"ftp\"")
    );
    assert!(error("vms:\n  a:\n    image: https://\n").contains("is not a valid URL"));
    assert!(error("vms:\n  a:\n    cpu: 2\n").contains("vms.a: `image:` is required"));
}

#[test]
fn kernel_initrd_cmdline() {
    let p = ok(&one_vm(
        "",
        "kernel: ./vmlinuz\ninitrd: ./initrd.img\ncmdline: \"root=LABEL=rootfs rw console=ttyS0\"",
    ));
    let vm = &p.vms[0];
    assert_eq!(vm.kernel.as_deref(), Some(Path::new("/proj/vmlinuz")));
    assert_eq!(vm.initrd.as_deref(), Some(Path::new("/proj/initrd.img")));
    assert_eq!(
        vm.cmdline.as_deref(),
        Some("root=LABEL=rootfs rw console=ttyS0")
    );
    let all = errors(&one_vm("", "initrd: ./i\ncmdline: x"));
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all[0].contains("vms.a.initrd: `initrd` needs `kernel`"));
    assert!(all[1].contains("vms.a.cmdline: `cmdline` needs `kernel`"));
    assert!(error(&one_vm("", "kernel: k\ncmdline: \"a\\nb\"")).contains("one line"));
}

#[test]
fn environment_forms() {
    let p = ok(&one_vm(
        "",
        "environment: {APP_ENV: prod, PORT: 8080, DEBUG: true, _x1: \"a b\"}",
    ));
    let env = &p.vms[0].environment;
    assert_eq!(env.get("APP_ENV").map(String::as_str), Some("prod"));
    assert_eq!(env.get("PORT").map(String::as_str), Some("8080"));
    assert_eq!(env.get("DEBUG").map(String::as_str), Some("true"));
    assert_eq!(env.get("_x1").map(String::as_str), Some("a b"));
    let p = ok(&one_vm("", "environment: {ZIP: 01234, V: 1.10}"));
    assert_eq!(
        p.vms[0].environment.get("ZIP").map(String::as_str),
        Some("01234")
    );
    assert_eq!(
        p.vms[0].environment.get("V").map(String::as_str),
        Some("1.10")
    );
    let p = ok(&one_vm("", "environment: [\"A=1\", \"B=x=y\", \"C=\"]"));
    let env = &p.vms[0].environment;
    assert_eq!(env.get("B").map(String::as_str), Some("x=y"));
    assert_eq!(env.get("C").map(String::as_str), Some(""));
    assert!(
        error(&one_vm("", "environment: {1A: x}")).contains("must match [A-Za-z_][A-Za-z0-9_]*")
    );
    assert!(error(&one_vm("", "environment: {A: \"x\\ny\"}")).contains("one line"));
    assert!(error(&one_vm("", "environment: [\"A=1\", \"A=2\"]")).contains("\"A\" is set twice"));
    assert!(error(&one_vm("", "environment: [\"NOVALUE\"]")).contains("expected KEY=VALUE"));
    assert!(
        error(&one_vm("", "environment: {A: [1]}"))
            .contains("expected a string or number, found a list")
    );
    assert!(
        error(&one_vm("", "environment: hello")).contains("a mapping of names to values or a list")
    );
}

#[test]
fn provision_forms() {
    let p = ok(&one_vm(
        "",
        "provision:\n  - \"systemctl enable --now postgresql\"\n  - {type: shell, inline: \"echo ready > /run/provisioned\"}\n  - inline: |\n      echo one\n      echo two",
    ));
    assert_eq!(
        p.vms[0].provision,
        [
            "systemctl enable --now postgresql",
            "echo ready > /run/provisioned",
            "echo one\necho two\n"
        ]
    );
    assert!(
        error(&one_vm("", "provision: [{type: ansible, inline: x}]"))
            .contains("unknown provisioner type \"ansible\"")
    );
    assert!(error(&one_vm("", "provision: [{type: shell}]")).contains("needs `inline:`"));
    let both = errors(&one_vm("", "provision: [{type: shell, inlin: x}]"));
    assert!(both[0].contains("needs `inline:`"), "{both:#?}");
    assert!(both[1].contains("did you mean \"inline\"?"), "{both:#?}");
    assert!(error(&one_vm("", "provision: [\"  \"]")).contains("non-empty"));
}

#[test]
fn interpolation_in_values_only() {
    let p = ok(
        "vms:\n  a:\n    image: https://example.com/${TAG}.img\n    cpu: ${CPUS}\n    memory: ${MEM:-2G}\n    environment: {HOME_VAR: \"$$HOME\"}\n    provision: [\"echo $${USER}\"]\n",
    );
    let vm = &p.vms[0];
    assert_eq!(
        vm.image,
        ImageSource::Url("https://example.com/noble.img".into())
    );
    assert_eq!(vm.cpu, 4);
    assert_eq!(vm.memory_mib, 2048);
    assert_eq!(vm.provision, ["echo ${USER}"]);
    assert_eq!(
        vm.environment.get("HOME_VAR").map(String::as_str),
        Some("$HOME")
    );
    // Keys are not interpolated, so this key is refused as written.
    let e = error("vms:\n  a:\n    image: x\n    environment: {'${TAG}': v}\n");
    assert!(e.contains("\"${TAG}\" must match"), "{e}");
    let e = error("vms:\n  a:\n    image: x\n    user: ${NAME:?set NAME in .env}\n");
    assert_eq!(
        e,
        "qemu-compose.yaml:4:11: vms.a.user: variable NAME is not set: set NAME in .env"
    );
    let e = error("vms:\n  a:\n    image: x\n    cpu: ${EMPTY:-two}\n");
    assert!(
        e.contains("vms.a.cpu: expected a whole number, found \"two\""),
        "{e}"
    );
    let e = error("vms:\n  a:\n    image: x\n    cmdline: cost 5$\n");
    assert!(e.contains("write $$ for a literal $"), "{e}");
}

#[test]
fn project_name_sources() {
    let yaml = "vms:\n  a: {image: x}\n";
    let named = "name: fromfile\nvms:\n  a: {image: x}\n";
    assert_eq!(ok(yaml).name, "proj");
    assert_eq!(ok(named).name, "fromfile");
    let var: BTreeMap<String, String> =
        [(PROJECT_NAME_VAR.to_owned(), "fromenv".to_owned())].into();
    assert_eq!(parse_with(named, None, &var).unwrap().name, "fromenv");
    assert_eq!(parse_with(named, Some("flag"), &var).unwrap().name, "flag");
    let e = parse_with(yaml, Some("Bad Name"), &env())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "qemu-compose.yaml: project name \"Bad Name\" must match [a-z0-9][a-z0-9_-]*"
    );
    let e = error("name: Demo\nvms:\n  a: {image: x}\n");
    assert!(
        e.starts_with("qemu-compose.yaml:1:7: name: project name \"Demo\""),
        "{e}"
    );
    let p = parse_str(
        yaml,
        Path::new("f.yaml"),
        Path::new("/srv/My Project!"),
        &LoadOptions {
            project_name: None,
            env: &env(),
        },
    )
    .unwrap();
    assert_eq!(p.name, "myproject");
    let e = parse_str(
        yaml,
        Path::new("f.yaml"),
        Path::new("/srv/..."),
        &LoadOptions {
            project_name: None,
            env: &env(),
        },
    );
    assert!(
        e.unwrap_err()
            .to_string()
            .contains("cannot make a project name")
    );
}

#[test]
fn structural_errors() {
    assert!(error("").contains("the file is empty") || error("").contains("invalid YAML"));
    assert_eq!(
        error("name: x\n"),
        "qemu-compose.yaml:1:1: no `vms:` section: define at least one VM"
    );
    // `vms: {}` and a bare `vms:` define no VM either: the same refusal, at the `vms:` value.
    assert_eq!(
        error("name: x\nvms: {}\n"),
        "qemu-compose.yaml:2:6: vms: no VMs: define at least one VM"
    );
    assert_eq!(
        error("vms:\n"),
        "qemu-compose.yaml:1:4: vms: no VMs: define at least one VM"
    );
    assert!(error("[1, 2]\n").contains("expected a mapping, found a list"));
    assert!(
        error("vms: []\n")
            .contains("vms: expected a mapping of names to definitions, found a list")
    );
    assert!(
        error(&one_vm("", "ports: \"8080:80\""))
            .contains("vms.a.ports: expected a list, found a string")
    );
    assert!(error(&one_vm("", "cpu: [1]")).contains("expected a whole number, found a list"));
    assert!(
        error(&one_vm("", "image_checksum: 5")).contains("expected a string, found an integer")
    );
    let e = error("vms:\n  a: {image: x\n");
    assert!(
        e.starts_with("qemu-compose.yaml:") && e.contains("invalid YAML"),
        "{e}"
    );
    let e = error("vms:\n  a:\n    image: x\n    image: y\n");
    assert!(
        e.starts_with("qemu-compose.yaml:4:") && e.contains("duplicate"),
        "{e}"
    );
    ok("version: \"1.0\"\nvms:\n  a: {image: x}\n");
    ok("version: 3\nvms:\n  a: {image: x}\n");
}

#[test]
fn merge_keys_share_vm_settings() {
    let p = ok(
        "x-base: &base\n  image: ./base.qcow2\n  cpu: 2\n  environment: {A: b}\nvms:\n  one:\n    <<: *base\n  two:\n    <<: *base\n    cpu: 4\n",
    );
    assert_eq!(p.vms[0].cpu, 2);
    assert_eq!(p.vms[1].cpu, 4);
    assert_eq!(p.vms[1].image, ImageSource::Path("/proj/base.qcow2".into()));
}

#[test]
fn three_hundred_vms_merging_one_anchor_validate() {
    let mut text = String::from(
        "x-common: &common\n  image: ./base.qcow2\n  cpu: 2\n  memory: 2G\n  disk: {size: 20G}\n  environment: {A: b}\n  provision: [\"echo hi\"]\nvms:\n",
    );
    for i in 0..300 {
        text.push_str(&format!(
            "  vm{i}:\n    <<: *common\n    ports: [\"{}:80\"]\n",
            10000 + i
        ));
    }
    let p = ok(&text);
    assert_eq!(p.vms.len(), 300);
    assert!(p.vms.iter().all(|vm| vm.cpu == 2 && vm.memory_mib == 2048));
    assert_eq!(p.vms[299].ports[0].host_port, 10299);
}

#[test]
fn load_reads_dotenv_under_the_environment() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().canonicalize().unwrap();
    let file = dir.join("qemu-compose.yaml");
    std::fs::write(&file, "vms:\n  a:\n    image: ./${IMG}\n    user: ${WHO}\n").unwrap();
    std::fs::write(
        dir.join(".env"),
        "# settings\nIMG=from-dotenv.qcow2\nWHO=dotenv\n",
    )
    .unwrap();
    let process: BTreeMap<String, String> = [("WHO".to_owned(), "envuser".to_owned())].into();
    let opts = LoadOptions {
        project_name: Some("t"),
        env: &process,
    };
    let located = |file: &Path| Located {
        file: file.to_owned(),
        overrides: Vec::new(),
        dir: dir.clone(),
        ignored: None,
    };
    let p = load(&located(&file), &opts).unwrap();
    assert_eq!(
        p.vms[0].image,
        ImageSource::Path(dir.join("from-dotenv.qcow2"))
    );
    assert_eq!(p.vms[0].user, "envuser");
    assert_eq!(p.file, file);
    assert_eq!(p.dir, dir);

    std::fs::write(dir.join(".env"), "IMG=x\nthis is wrong\n").unwrap();
    let e = load(&located(&file), &opts).unwrap_err().to_string();
    assert_eq!(
        e,
        format!(
            "{}:2:1: expected KEY=value, found \"this is wrong\"",
            dir.join(".env").display()
        )
    );
    let missing = load(&located(&dir.join("nope.yaml")), &opts)
        .unwrap_err()
        .to_string();
    assert!(missing.contains("nope.yaml: cannot open"), "{missing}");
}

/// Characters a short-form source or target may use without changing its meaning.
fn path_part() -> impl Strategy<Value = String> {
    "[a-z0-9_][a-z0-9_.-]{0,8}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn short_volume_form_round_trips(
        named in any::<bool>(),
        source in path_part(),
        volume in "[a-z0-9][a-z0-9_-]{0,8}",
        target in proptest::collection::vec(path_part().prop_filter("no dots", |p| p != "." && p != ".." && !p.starts_with('.')), 1..4),
        mode in prop_oneof![Just(""), Just(":ro"), Just(":rw")],
    ) {
        let source = if named { volume } else { format!("./{source}") };
        let target = format!("/{}", target.join("/"));
        let spec = format!("{source}:{target}{mode}");
        let top = if named { format!("volumes:\n  {source}:\n") } else { String::new() };
        let p = ok(&one_vm(&top, &format!("volumes: [\"{spec}\"]")));
        let m = &p.vms[0].volumes[0];
        prop_assert_eq!(&m.target, &target);
        prop_assert_eq!(m.read_only, mode == ":ro");
        prop_assert_eq!(matches!(m.kind, MountKind::Named { .. }), named);
        let canonical = spec.strip_suffix(":rw").unwrap_or(&spec).to_owned();
        prop_assert_eq!(m.to_string(), canonical.clone());
        // And the printed form parses to the same mount.
        let again = ok(&one_vm(&top, &format!("volumes: [\"{canonical}\"]")));
        prop_assert_eq!(&again.vms[0].volumes[0], m);
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,200}") {
        let _ = parse(&text);
    }

    #[test]
    fn yaml_like_text_never_panics(
        lines in proptest::collection::vec(
            prop_oneof![
                Just("vms:".to_owned()),
                Just("  a:".to_owned()),
                Just("    image: x".to_owned()),
                Just("volumes:".to_owned()),
                "    [a-z_]{1,8}: [ -~]{0,20}",
                "  - [ -~]{0,20}",
                "[ -~]{0,30}",
            ],
            0..12,
        )
    ) {
        let _ = parse(&lines.join("\n"));
    }
}

#[test]
fn serializes_for_config() {
    let p = ok(&one_vm(
        "volumes:\n  v:\n",
        "volumes: [\"v:/v\", \"./b:/b:ro\"]\nports: [\"8080:80\"]",
    ));
    let json = serde_json::to_value(&p).unwrap();
    assert_eq!(
        json["vms"][0]["volumes"][0]["kind"],
        serde_json::json!({"type": "named", "volume": "v"})
    );
    assert_eq!(json["vms"][0]["volumes"][1]["kind"]["type"], "bind");
    assert_eq!(json["vms"][0]["volumes"][1]["kind"]["source"], "/proj/b");
    assert_eq!(
        json["vms"][0]["image"],
        serde_json::json!({"path": "/proj/img.qcow2"})
    );
    assert_eq!(json["vms"][0]["ports"][0]["protocol"], "tcp");
    assert_eq!(json["volumes"][0]["size_bytes"], 10u64 << 30);
    let yaml = serde_saphyr::to_string(&p).unwrap();
    assert!(yaml.contains("memory_mib: 1024"), "{yaml}");
}

#[test]
fn unset_variables_are_warnings_once_each() {
    let p = ok(&one_vm(
        "",
        "user: u${NOPE}\nenvironment: {A: \"${NOPE} ${ALSO} ${EMPTY} ${DEF:-d}\"}",
    ));
    let warnings: Vec<String> = p.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:#?}");
    assert!(
        warnings[0].contains("vms.a.user: the \"NOPE\" variable is not set; using an empty string"),
        "{warnings:#?}"
    );
    assert!(warnings[1].contains("\"ALSO\""), "{warnings:#?}");
    assert!(ok(&one_vm("", "user: ${TAG}")).warnings.is_empty());
}

#[test]
fn stop_grace_period_reads_like_docker() {
    let grace = |text: &str| {
        ok(&one_vm("", &format!("stop_grace_period: {text}"))).vms[0].stop_grace_period_secs
    };
    assert_eq!(grace("10s"), Some(10));
    assert_eq!(grace("1m30s"), Some(90));
    assert_eq!(grace("2h"), Some(7200));
    assert_eq!(grace("500ms"), Some(1));
    assert_eq!(grace("45"), Some(45));
    assert_eq!(
        ok(&one_vm("", "cpu: 1")).vms[0].stop_grace_period_secs,
        None
    );
    for bad in ["soon", "10x", "1.5s", "\"\""] {
        let e = error(&one_vm("", &format!("stop_grace_period: {bad}")));
        assert!(
            e.contains("vms.a.stop_grace_period: stop_grace_period"),
            "{bad}: {e}"
        );
        assert!(e.contains("is not a duration such as 10s"), "{bad}: {e}");
    }
}

#[test]
fn profiles_select_vms_and_keep_what_they_depend_on() {
    let p = ok("vms:
  db: {image: ./i, profiles: [backend]}
  web: {image: ./i, depends_on: [db], profiles: [web, all]}
  base: {image: ./i}
  tool: {image: ./i, profiles: [debug]}
");
    let used = |active: &[&str], named: &[&str]| {
        let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = p.clone().with_profiles(&strings(active), &strings(named));
        let names: Vec<String> = p.vms.iter().map(|vm| vm.name.clone()).collect();
        (names.join(","), p.inactive.join(","))
    };
    assert_eq!(used(&[], &[]), ("base".into(), "db,web,tool".into()));
    // web's dependency db comes with it.
    assert_eq!(used(&["all"], &[]), ("db,web,base".into(), "tool".into()));
    assert_eq!(used(&[], &["tool"]), ("base,tool".into(), "db,web".into()));
    assert!(p.clone().with_profiles(&[], &[]).defines("tool"));
}

#[test]
fn profile_names_are_checked() {
    assert_eq!(
        error(&one_vm("", "profiles: [ok.1, -bad]")),
        "qemu-compose.yaml:4:22: vms.a.profiles[1]: profile name \"-bad\" must match [a-zA-Z0-9][a-zA-Z0-9_.-]*"
    );
    assert_eq!(
        error(&one_vm("", "profiles: [x, x]")),
        "qemu-compose.yaml:4:19: vms.a.profiles[1]: profile \"x\" is listed twice"
    );
}

#[test]
fn health_checks_in_every_form_docker_writes() {
    let p = ok("vms:
  a:
    image: ./i
    healthcheck: {test: [CMD, pg_isready, -U, app], interval: 10s, timeout: 2s, retries: 5, start_period: 1m, start_interval: 500ms}
  b:
    image: ./i
    healthcheck: {test: [CMD-SHELL, 'test -e /run/ok || exit 1']}
  c:
    image: ./i
    healthcheck: {test: curl -f localhost}
  d:
    image: ./i
    healthcheck: {test: [NONE]}
  e:
    image: ./i
    healthcheck: {test: [CMD, x], disable: true}
  f:
    image: ./i
    healthcheck: {disable: true}
    depends_on: {a: {condition: service_healthy}, b: {condition: service_started}, c: null}
");
    let check = |name: &str| p.vm(name).unwrap().healthcheck.clone();
    assert_eq!(
        check("a"),
        Some(HealthCheck {
            test: HealthTest::Cmd(vec!["pg_isready".into(), "-U".into(), "app".into()]),
            interval_ms: 10_000,
            timeout_ms: 2_000,
            retries: 5,
            start_period_ms: 60_000,
            start_interval_ms: 500,
        })
    );
    // docker's defaults.
    let b = check("b").unwrap();
    assert_eq!(
        b.test,
        HealthTest::CmdShell("test -e /run/ok || exit 1".into())
    );
    assert_eq!(
        (
            b.interval_ms,
            b.timeout_ms,
            b.retries,
            b.start_period_ms,
            b.start_interval_ms
        ),
        (30_000, 30_000, 3, 0, 5_000)
    );
    assert_eq!(
        check("c").unwrap().test,
        HealthTest::CmdShell("curl -f localhost".into())
    );
    assert_eq!((check("d"), check("e"), check("f")), (None, None, None));
    let f = p.vm("f").unwrap();
    assert_eq!(f.depends_on, ["a", "b", "c"]);
    assert_eq!(f.healthy_dependencies, ["a"]);
}

#[test]
fn health_check_errors_are_located_and_say_what_to_write() {
    let errors = errors("vms:
  a:
    image: ./i
    healthcheck: {test: [CMD], interval: 0s, timeout: soon, retries: 0, tset: x}
  b:
    image: ./i
    healthcheck: {test: [CMD-SHELL, a, b], start_period: -1s}
  c:
    image: ./i
    healthcheck: {test: [RUN, x]}
  d:
    image: ./i
    healthcheck: {interval: 5s}
  e:
    image: ./i
    healthcheck: {test: ''}
    depends_on: {d: {condition: service_completed_successfully}, c: {condition: service_ready}, b: {condition: service_healthy, restart: true}}
");
    assert_eq!(
        errors,
        [
            "qemu-compose.yaml:4:25: vms.a.healthcheck.test: [\"CMD\"] needs the program to run after it",
            "qemu-compose.yaml:4:42: vms.a.healthcheck.interval: interval must be longer than 0",
            "qemu-compose.yaml:4:55: vms.a.healthcheck.timeout: timeout \"soon\" is not a duration such as 10s, 1m30s or 500ms",
            "qemu-compose.yaml:4:70: vms.a.healthcheck.retries: retries must be from 1 to 1000, not 0",
            "qemu-compose.yaml:4:73: vms.a.healthcheck.tset: unknown key \"tset\" (did you mean \"test\"?)",
            "qemu-compose.yaml:7:25: vms.b.healthcheck.test: [\"CMD-SHELL\", …] takes exactly one command line after it",
            "qemu-compose.yaml:7:58: vms.b.healthcheck.start_period: start_period \"-1s\" is not a duration such as 10s, 1m30s or 500ms",
            "qemu-compose.yaml:10:25: vms.c.healthcheck.test: a list test starts with \"CMD\", \"CMD-SHELL\" or \"NONE\"",
            "qemu-compose.yaml:13:18: vms.d.healthcheck: `test:` is required (e.g. [\"CMD\", \"pg_isready\"]), or `disable: true`",
            "qemu-compose.yaml:16:25: vms.e.healthcheck.test: the command is empty",
            "qemu-compose.yaml:17:33: vms.e.depends_on.d.condition: service_completed_successfully is not supported: a VM does not exit when its work is done (use service_healthy with a health check that tells)",
            "qemu-compose.yaml:17:81: vms.e.depends_on.c.condition: unknown condition \"service_ready\" (service_started or service_healthy)",
            "qemu-compose.yaml:17:112: vms.e.depends_on.b.condition: VM b has no health check, so it can never be healthy (give it a `healthcheck:`, or use service_started)",
            "qemu-compose.yaml:17:129: vms.e.depends_on.b.restart: unknown key \"restart\" (valid keys: condition)",
        ]
    );
}

#[test]
fn unused_new_keys_leave_the_serialised_vm_as_before() {
    // The serialised VM feeds the configuration hash of running instances: a VM without
    // profiles, health check or conditions must serialise as before those keys existed.
    let p = ok("vms:\n  a: {image: ./i}\n");
    let json = serde_json::to_value(&p.vms[0]).unwrap();
    for key in ["profiles", "healthcheck", "healthy_dependencies"] {
        assert!(json.get(key).is_none(), "{key} in {json}");
    }
}

#[test]
fn arch_and_firmware() {
    use crate::compose::Arch;
    let p = ok(&one_vm("", "arch: aarch64\nfirmware: fw/CODE.fd"));
    assert_eq!(p.vms[0].arch, Some(Arch::Aarch64));
    assert_eq!(
        p.vms[0].firmware.as_deref(),
        Some(Path::new("/proj/fw/CODE.fd"))
    );
    // Debian's and docker's names are taken, and the default is the host's.
    assert_eq!(
        ok(&one_vm("", "arch: arm64")).vms[0].arch,
        Some(Arch::Aarch64)
    );
    assert_eq!(
        ok(&one_vm("", "arch: amd64")).vms[0].arch,
        Some(Arch::X86_64)
    );
    let p = ok(&one_vm("", ""));
    assert_eq!(p.vms[0].arch, None);
    assert_eq!(p.vms[0].guest_arch(), Arch::host());

    let e = error(&one_vm("", "arch: riscv64"));
    assert_eq!(
        e,
        "qemu-compose.yaml:4:11: vms.a.arch: arch \"riscv64\" must be x86_64 or aarch64 (or amd64, arm64)"
    );
    let e = error(&one_vm("", "arch: x86_64\nfirmware: /fw.fd"));
    assert!(
        e.starts_with("qemu-compose.yaml:5:15: vms.a.firmware: `firmware` is for aarch64 VMs"),
        "{e}"
    );
    let e = error(&one_vm("", "arch: aarch64\nkernel: /k\nfirmware: /fw.fd"));
    assert!(
        e.contains("vms.a.firmware: `firmware` and `kernel` exclude each other"),
        "{e}"
    );
}
