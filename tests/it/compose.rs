//! The compose examples of the reference (docs/compose.md) and of the volume and bind-mount
//! design, and a file in the earlier Go tool's
//! style, loaded from disk through `load` exactly as the CLI does.

use std::collections::BTreeMap;

use qemu_compose::compose::{
    Accel, ComposeErrors, DiscoverOptions, HealthTest, ImageSource, LoadOptions, MountKind,
    Project, Protocol, discover, load,
};

use crate::harness::fixture;

fn try_load(name: &str) -> Result<Project, ComposeErrors> {
    let env = BTreeMap::new();
    let opts = DiscoverOptions {
        files: Vec::new(),
        cwd: fixture(name),
    };
    let found = discover(&opts, &env).unwrap();
    load(
        &found,
        &LoadOptions {
            project_name: None,
            env: &env,
        },
    )
}

fn load_ok(name: &str) -> Project {
    try_load(name).unwrap_or_else(|e| panic!("{name} should be valid:\n{e}"))
}

#[test]
fn design_example_is_valid() {
    let p = load_ok("design-example");
    let dir = fixture("design-example");
    assert_eq!(p.name, "demo");
    assert_eq!(p.dir, dir);
    assert_eq!(p.volumes[0].size_bytes, 20 << 30);
    assert_eq!(p.networks[0].name, "backend");
    let db = p.vm("db").unwrap();
    assert_eq!(
        db.image,
        ImageSource::Url("https://…/noble-server-cloudimg-amd64.img".into())
    );
    assert_eq!(
        (db.cpu, db.memory_mib, db.disk_size_bytes),
        (2, 2048, 10 << 30)
    );
    assert_eq!((db.user.as_str(), db.user_guessed), ("ubuntu", false));
    assert_eq!(db.ports.len(), 2);
    assert_eq!(db.ports[1].host_ip, Some([127, 0, 0, 1].into()));
    assert_eq!(
        (db.ports[1].host_port, db.ports[1].guest_port),
        (5433, 5432)
    );
    assert_eq!(db.ports[1].protocol, Protocol::Tcp);
    assert_eq!(db.ssh_port, Some(2222));
    assert_eq!(db.accel, Accel::Auto);
    assert_eq!(db.kernel.as_deref(), Some(dir.join("vmlinuz").as_path()));
    assert_eq!(db.initrd.as_deref(), Some(dir.join("initrd.img").as_path()));
    assert_eq!(db.depends_on, ["cache"]);
    assert_eq!(
        db.environment.get("APP_ENV").map(String::as_str),
        Some("prod")
    );
    assert_eq!(db.provision.len(), 2);
    let networks: Vec<&str> = db.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(networks, ["backend"]);
    let shown: Vec<String> = db.volumes.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "pgdata:/var/lib/postgresql/data",
            "./config:/etc/app:ro",
            "./scripts:/opt/scripts"
        ]
    );
    let MountKind::Bind {
        source,
        mount_options,
        automount,
        ..
    } = &db.volumes[2].kind
    else {
        panic!("{:?}", db.volumes[2]);
    };
    assert_eq!(source, &dir.join("scripts"));
    assert!(*automount);
    assert_eq!(mount_options.len(), 2);
    let cache = p.vm("cache").unwrap();
    assert_eq!(
        cache.image,
        ImageSource::Path(dir.join("images/cache.qcow2"))
    );
    let order: Vec<&str> = p.start_order().iter().map(|v| v.name.as_str()).collect();
    assert_eq!(order, ["cache", "db"]);
}

#[test]
fn seed_examples_are_valid() {
    let short = load_ok("seed-short-form");
    assert_eq!(short.name, "seed-short-form");
    let kinds: Vec<bool> = short
        .vms
        .iter()
        .flat_map(|vm| &vm.volumes)
        .map(|m| matches!(m.kind, MountKind::Named { .. }))
        .collect();
    assert_eq!(kinds, [true, false, false, false]);
    assert!(short.vm("absolute").unwrap().volumes[1].read_only);

    let long = load_ok("seed-long-form");
    assert!(matches!(
        long.vm("named").unwrap().volumes[0].kind,
        MountKind::Named { .. }
    ));
    let bind = &long.vm("bind").unwrap().volumes[0];
    assert!(bind.read_only);
    assert!(matches!(
        bind.kind,
        MountKind::Bind {
            automount: false,
            ..
        }
    ));
}

#[test]
fn go_style_file_is_valid() {
    let p = load_ok("go-style");
    let check = p.vm("database").unwrap().healthcheck.as_ref().unwrap();
    assert_eq!(
        check.test,
        HealthTest::CmdShell("pg_isready -U postgres".into())
    );
    assert_eq!(
        (check.interval_ms, check.timeout_ms, check.retries),
        (10_000, 5_000, 5)
    );
    let web = p.vm("web").unwrap();
    assert_eq!((web.user.as_str(), web.user_guessed), ("fedora", true));
    assert_eq!(web.disk_size_bytes, 8 << 30);
    assert_eq!(web.volumes[0].target, "/mnt");
    assert_eq!(
        web.environment.get("DB_HOST").map(String::as_str),
        Some("database")
    );
    assert_eq!(
        web.provision,
        ["dnf install -y nginx\nsystemctl enable --now nginx\n"]
    );
    let order: Vec<&str> = p.start_order().iter().map(|v| v.name.as_str()).collect();
    assert_eq!(order, ["database", "web"]);
}

#[test]
fn invalid_file_reports_every_error_with_its_place() {
    let file = fixture("invalid-many").join("qemu-compose.yaml");
    let shown = try_load("invalid-many").unwrap_err().to_string();
    let f = file.display();
    let expected = [
        format!(
            "{f}:2:18: volumes.pgdata.size: size 4M is out of range: it must be between 8M and 64T"
        ),
        format!("{f}:6:5: vms.db.memroy: unknown key \"memroy\" (did you mean \"memory\"?)"),
        format!(
            "{f}:8:9: vms.db.volumes[0]: named volume \"pgdat\" is not declared under top-level volumes (declared: pgdata); a host path must start with ./ or /"
        ),
        format!("{f}:9:9: vms.db.volumes[1]: `target:` is required"),
        format!(
            "{f}:10:9: vms.db.volumes[1].targt: unknown key \"targt\" (did you mean \"target\"?)"
        ),
        format!("{f}:13:22: vms.web.depends_on[1]: unknown VM \"cache\" (declared: db, web)"),
        format!(
            "{f}:14:24: vms.web.ports[1]: host port 8080/tcp is already used by another forward of this VM"
        ),
    ];
    assert_eq!(shown, expected.join("\n"));
}
