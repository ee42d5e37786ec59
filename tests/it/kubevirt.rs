//! `export kubevirt` without a cluster: every object emitted is validated against the
//! vendored OpenAPI schemas of KubeVirt, CDI and Kubernetes (vendor/README.md), made strict
//! so that an unknown field fails as `kubectl apply` (strict field validation) would refuse
//! it; goldens for a three-VM project and for every refusal; the cloud-init user data passes
//! `cloud-init schema`; the volumes to upload are the ones whose UUIDs the guests mount.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use qemu_compose::compose::{self, LoadOptions};
use qemu_compose::kubevirt::{self, Facts};
use qemu_compose::state::{VolumeRecord, VolumeRegistry};
use serde_json::{Value, json};

use crate::harness::{Project, assert_golden, fixture, text, tool_ok};
use crate::seed::{KEY, PASSWORD_HASH, assert_schema_valid, host_key};

/// One vendored schema document, wrapped as a JSON Schema, and its compiled roots by
/// `(apiVersion, kind)`.
struct Validator {
    schemas: boon::Schemas,
    roots: BTreeMap<(String, String), boon::SchemaIndex>,
}

/// Which vendored definition each kind is checked against.
const KINDS: &[(&str, &str, &str, &str)] = &[
    (
        "kubevirt.io/v1",
        "VirtualMachine",
        "kubevirt-v1.9.0.json",
        "v1.VirtualMachine",
    ),
    (
        "cdi.kubevirt.io/v1beta1",
        "DataVolume",
        "cdi-v1.66.0.json",
        "v1beta1.DataVolume",
    ),
    (
        "v1",
        "Service",
        "kubernetes-v1.36.json",
        "io.k8s.api.core.v1.Service",
    ),
    (
        "v1",
        "Secret",
        "kubernetes-v1.36.json",
        "io.k8s.api.core.v1.Secret",
    ),
    (
        "networking.k8s.io/v1",
        "NetworkPolicy",
        "kubernetes-v1.36.json",
        "io.k8s.api.networking.v1.NetworkPolicy",
    ),
];

static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("vendor/kubernetes-schemas");
    let mut compiler = boon::Compiler::new();
    compiler.set_default_draft(boon::Draft::V4);
    for file in [
        "kubevirt-v1.9.0.json",
        "cdi-v1.66.0.json",
        "kubernetes-v1.36.json",
    ] {
        let doc: Value = serde_json::from_slice(&std::fs::read(dir.join(file)).unwrap()).unwrap();
        let mut definitions = doc["definitions"].clone();
        strict(&mut definitions);
        compiler
            .add_resource(
                &format!("file:///{file}"),
                json!({ "definitions": definitions }),
            )
            .unwrap();
    }
    let mut schemas = boon::Schemas::new();
    let mut roots = BTreeMap::new();
    for (api, kind, file, root) in KINDS {
        let index = compiler
            .compile(&format!("file:///{file}#/definitions/{root}"), &mut schemas)
            .unwrap_or_else(|e| panic!("{root}: {e:#}"));
        roots.insert((api.to_string(), kind.to_string()), index);
    }
    Validator { schemas, roots }
});

/// Makes the Swagger definitions as strict as the API server with strict field validation:
/// an object with declared `properties` takes no other field (Swagger leaves
/// `additionalProperties` out, which JSON Schema reads as "anything goes", so a typo'd field
/// would pass). `IntOrString` is a string with a format in Swagger; JSON Schema needs both
/// types spelled out.
fn strict(node: &mut Value) {
    match node {
        Value::Object(map) => {
            if map.get("format").and_then(Value::as_str) == Some("int-or-string") {
                map.insert("type".into(), json!(["integer", "string"]));
            }
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), false.into());
            }
            map.values_mut().for_each(strict);
        }
        Value::Array(items) => items.iter_mut().for_each(strict),
        _ => {}
    }
}

/// Validates one object against the schema of its kind; the error says which object and why.
fn validate(object: &Value) -> Result<(), String> {
    let key = (
        object["apiVersion"].as_str().unwrap_or_default().to_owned(),
        object["kind"].as_str().unwrap_or_default().to_owned(),
    );
    let index = VALIDATOR
        .roots
        .get(&key)
        .ok_or_else(|| format!("no vendored schema for {key:?}"))?;
    VALIDATOR
        .schemas
        .validate(object, *index)
        .map_err(|e| format!("{} {}: {e:#}", key.1, object["metadata"]["name"]))
}

/// A multi-document YAML stream as JSON values.
fn documents(yaml: &str) -> Vec<Value> {
    serde_saphyr::from_multiple(yaml).unwrap()
}

fn assert_all_valid(objects: &[Value]) {
    assert!(!objects.is_empty());
    for object in objects {
        if let Err(e) = validate(object) {
            panic!("{e}\n{object:#}");
        }
    }
}

/// The facts the goldens are made with: fixed keys and UUIDs.
fn golden_facts(project: &compose::Project) -> Facts {
    let mut volumes = VolumeRegistry::default();
    for (i, (name, _)) in kubevirt::volume_sizes(project).into_iter().enumerate() {
        volumes.volumes.insert(
            name.clone(),
            VolumeRecord {
                name: name.clone(),
                size: "1G".into(),
                disk_path: PathBuf::from(format!("/state/volumes/{name}/volume.qcow2")),
                created: "2026-01-01T00:00:00Z".into(),
                uuid: format!("00000000-0000-4000-8000-00000000000{i}"),
                label: name,
            },
        );
    }
    Facts {
        public_key: KEY.into(),
        password_hash: PASSWORD_HASH.clone(),
        host_keys: project
            .vms
            .iter()
            .map(|vm| (vm.name.clone(), host_key()))
            .collect(),
        volumes,
    }
}

/// The fixture project `name`, loaded as the CLI would with no variables.
fn load(name: &str) -> compose::Project {
    let dir = fixture(name);
    let file = dir.join("qemu-compose.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    compose::parse_str(
        &text,
        &file,
        &dir,
        &LoadOptions {
            project_name: None,
            env: &BTreeMap::new(),
        },
    )
    .unwrap()
}

/// The Secret's user-data documents, labelled by Secret name.
fn user_data(objects: &[Value]) -> Vec<(String, String)> {
    objects
        .iter()
        .filter(|o| o["kind"] == "Secret")
        .map(|o| {
            let name = o["metadata"]["name"].as_str().unwrap().to_owned();
            (
                name,
                o["stringData"]["userdata"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn three_vm_project_matches_golden_and_every_object_is_valid() {
    let project = load("kubevirt-three-vms");
    kubevirt::check(&project).unwrap();
    let export = kubevirt::translate(&project, &golden_facts(&project), Some("shop")).unwrap();
    let stems: Vec<&str> = export.files.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(stems, ["db", "app", "web", "volumes"]);
    let objects: Vec<Value> = export.files.iter().flat_map(|(_, o)| o.clone()).collect();
    let yaml = kubevirt::to_yaml(&objects).unwrap();
    assert_golden("kubevirt/three-vms.yaml", &yaml);
    assert_eq!(
        documents(&yaml),
        objects,
        "the YAML reads back as the objects"
    );
    assert_all_valid(&objects);
    assert_schema_valid(&user_data(&objects));

    let uploads: Vec<String> = export
        .uploads
        .iter()
        .map(|u| u.command(Some("shop")))
        .collect();
    assert_eq!(
        uploads,
        [
            "virtctl image-upload dv pgdata --namespace shop --no-create --image-path=/state/volumes/pgdata/volume.qcow2",
            "virtctl image-upload dv uploads --namespace shop --no-create --image-path=/state/volumes/uploads/volume.qcow2",
            "virtctl image-upload dv site --namespace shop --no-create --image-path=/state/volumes/site/volume.qcow2",
        ]
    );
    assert_eq!(
        export.notes,
        [
            "VM app depends on db: KubeVirt starts VMs together, in no order; the guest must wait for what it needs",
            "VM web depends on app: KubeVirt starts VMs together, in no order; the guest must wait for what it needs",
        ]
    );
}

#[test]
fn config_prints_x_kubevirt_back() {
    let project = load("kubevirt-three-vms");
    let printed = serde_saphyr::to_string(&compose::compose_file(&project)).unwrap();
    assert!(printed.contains("x-kubevirt:"), "{printed}");
    let again = compose::parse_str(
        &printed,
        &project.file,
        &project.dir,
        &LoadOptions {
            project_name: None,
            env: &BTreeMap::new(),
        },
    )
    .unwrap();
    for (a, b) in again.vms.iter().zip(&project.vms) {
        assert_eq!(a.kubevirt_binds, b.kubevirt_binds);
    }
    assert_eq!(again.vms[1].kubevirt_binds.len(), 2);
}

#[test]
fn a_typo_or_a_missing_field_fails_the_schemas() {
    let project = load("kubevirt-three-vms");
    let export = kubevirt::translate(&project, &golden_facts(&project), None).unwrap();
    let vm = export.files[0]
        .1
        .iter()
        .find(|o| o["kind"] == "VirtualMachine")
        .unwrap();
    validate(vm).unwrap();
    let mut typo = vm.clone();
    typo["spec"]["template"]["spec"]["domain"]["cpu"]["coress"] = 2.into();
    assert!(
        validate(&typo).unwrap_err().contains("coress"),
        "a typo is refused"
    );
    let mut missing = vm.clone();
    missing["spec"].as_object_mut().unwrap().remove("template");
    assert!(validate(&missing).is_err(), "a required field is required");
    let mut wrong_type = vm.clone();
    wrong_type["spec"]["template"]["spec"]["domain"]["cpu"]["cores"] = "two".into();
    assert!(validate(&wrong_type).is_err());
    // KubeVirt's embedded CDI types have no checksum: the root disk is its own DataVolume.
    let mut template = vm.clone();
    template["spec"]["dataVolumeTemplates"] = json!([{
        "metadata": {"name": "x"},
        "spec": {"source": {"http": {"url": "https://e/x", "checksum": "sha256:00"}}},
    }]);
    assert!(validate(&template).unwrap_err().contains("checksum"));
    let service = export.files[0]
        .1
        .iter()
        .find(|o| o["kind"] == "Service")
        .unwrap();
    let mut port = service.clone();
    port["spec"]["ports"][0]["targetPort"] = "ssh".into();
    validate(&port).unwrap();
    port["spec"]["ports"][0]["port"] = "ssh".into();
    assert!(validate(&port).is_err(), "a port number is a number");
    assert!(validate(&json!({"apiVersion": "v1", "kind": "Pod"})).is_err());
}

/// The CLI end to end on the three-VM project: volumes created (the bind-mounted folder
/// imported), a folder of manifests and a README with the upload commands, every object
/// valid, each guest mounting its volumes by the UUIDs of the images to upload.
#[test]
fn export_to_a_folder_makes_the_volumes_it_names() {
    let p = Project::empty();
    let src = fixture("kubevirt-three-vms");
    for name in ["qemu-compose.yaml", "app.conf", "site/index.html"] {
        std::fs::create_dir_all(p.join(name).parent().unwrap()).unwrap();
        std::fs::copy(src.join(name), p.join(name)).unwrap();
    }
    let ran = p.ok(&["export", "kubevirt", "-o", "k8s", "--namespace", "shop"]);
    let mut files: Vec<String> = std::fs::read_dir(p.join("k8s"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "README.txt",
            "app.yaml",
            "db.yaml",
            "volumes.yaml",
            "web.yaml"
        ]
    );
    // The manifests hold the guests' SSH host keys and the password hash: the owner's only.
    assert_eq!(mode(&p.join("k8s")), 0o700);
    for file in &files {
        assert_eq!(mode(&p.join("k8s").join(file)), 0o600, "{file}");
    }
    let mut objects = Vec::new();
    for file in &files[1..] {
        objects.extend(documents(
            &std::fs::read_to_string(p.join("k8s").join(file)).unwrap(),
        ));
    }
    assert_eq!(
        objects.len(),
        20,
        "3 x (Secret, DataVolume, VM, NetworkPolicy), 5 Services, 3 volumes"
    );
    assert!(objects.iter().all(|o| o["metadata"]["namespace"] == "shop"));
    assert_all_valid(&objects);
    assert_schema_valid(&user_data(&objects));

    let readme = std::fs::read_to_string(p.join("k8s/README.txt")).unwrap();
    assert!(
        readme.contains("kubectl apply --namespace shop -f ."),
        "{readme}"
    );
    let all_user_data: String = user_data(&objects).into_iter().map(|(_, u)| u).collect();
    for volume in ["pgdata", "uploads", "site"] {
        let image = p.join(format!(".qemu-compose/volumes/{volume}/volume.qcow2"));
        let command = format!(
            "virtctl image-upload dv {volume} --namespace shop --no-create --image-path={}",
            image.display()
        );
        assert!(readme.contains(&command), "{readme}");
        tool_ok("qemu-img", &["check", image.to_str().unwrap()]);
        let uuid = p.json(&["volume", "inspect", volume, "--format", "json"])["filesystem"]["uuid"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            all_user_data.contains(&format!("UUID={uuid}")),
            "{volume}: {uuid}"
        );
    }
    assert!(readme.contains("Note: VM app depends on db"), "{readme}");
    assert!(
        ran.stderr.contains("creating volume site (16M) from"),
        "{}",
        ran.stderr
    );

    // The folder's files went into `site`, as `volume import` puts them.
    let out = p.ok(&["cp", "volume:site:/index.html", "-"]);
    assert!(out.stdout.contains("<h1>shop</h1>"));

    // Again: the same volumes, keys and so the same manifests. A folder that was there keeps
    // its mode; a file written before with another mode is replaced by one of 0600.
    let before = std::fs::read_to_string(p.join("k8s/db.yaml")).unwrap();
    set_mode(&p.join("k8s"), 0o755);
    set_mode(&p.join("k8s/db.yaml"), 0o644);
    p.ok(&["export", "kubevirt", "-o", "k8s", "--namespace", "shop"]);
    assert_eq!(
        std::fs::read_to_string(p.join("k8s/db.yaml")).unwrap(),
        before
    );
    assert_eq!(mode(&p.join("k8s")), 0o755);
    assert_eq!(mode(&p.join("k8s/db.yaml")), 0o600);

    // On standard output: the same objects, the upload commands on standard error.
    let out = p.ok(&["export", "kubevirt", "--namespace", "shop"]);
    let streamed = documents(&out.stdout);
    assert_eq!(streamed.len(), objects.len());
    assert!(out.stderr.contains("virtctl image-upload dv site"));
}

/// The permission bits of `path`.
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Compares the refusal of fixture `name` with `tests/golden/kubevirt/NAME.txt`, and checks
/// that it changed nothing.
fn assert_refusal_golden(name: &str) {
    let p = Project::empty();
    let dir = fixture(name);
    let out = p.run_in(
        &dir,
        &["export", "kubevirt", "-o", p.join("out").to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "");
    assert_golden(
        &format!("kubevirt/{name}.txt"),
        text(&out.stderr).replace(dir.to_str().unwrap(), "$DIR"),
    );
    assert!(!p.join("out").exists());
    assert!(!dir.join(".qemu-compose").exists());
}

#[test]
fn every_refusal_is_listed_with_its_place() {
    assert_refusal_golden("kubevirt-refusals");
}

/// A project name that is no label value, aliases and an `x-kubevirt` volume that cannot name
/// a Service or a DataVolume, a VM name one character too long (the longest allowed passes).
#[test]
fn names_kubernetes_does_not_take_are_refused_with_their_place() {
    assert_refusal_golden("kubevirt-bad-names");
}

#[test]
fn a_namespace_that_is_no_label_is_a_usage_error() {
    let p = Project::new("vms:\n  a: {image: https://e/x.img}\n");
    for bad in ["Shop", "shop_1", "shop-", &"n".repeat(64)] {
        let out = p.run(&["export", "kubevirt", "-o", "k8s", "--namespace", bad]);
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert_eq!(
            text(&out.stderr).lines().next().unwrap(),
            format!(
                "error: invalid value '{bad}' for '--namespace <NS>': a namespace is lowercase letters, digits and '-', at most 63, not beginning or ending with '-'"
            )
        );
        assert!(!p.join("k8s").exists());
        assert!(!p.join(".qemu-compose").exists());
    }
}

#[test]
fn the_design_example_is_refused_for_direct_boot_bind_mounts_and_host_ip() {
    assert_refusal_golden("design-example");
}

#[test]
fn the_readme_example_exports_once_its_bind_mounts_are_settled() {
    let readme_example = "
volumes:
  pgdata: {size: 20G}
vms:
  db:
    image: https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2
    cpu: 2
    memory: 2G
    volumes:
      - pgdata:/var/lib/postgresql/data
      - ./config:/etc/app:ro
      - ./nginx.conf:/etc/nginx/nginx.conf:ro
    ports: [\"127.0.0.1:5433:5432\"]
";
    let p = Project::new(readme_example);
    std::fs::create_dir(p.join("config")).unwrap();
    std::fs::write(p.join("config/app.ini"), "x=1\n").unwrap();
    std::fs::write(p.join("nginx.conf"), "events {}\n").unwrap();
    let out = p.run(&["export", "kubevirt"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert_eq!(
        err.matches("a cluster has no host files to share").count(),
        2,
        "{err}"
    );
    assert!(
        err.contains("qemu-compose.yaml:13:13: vms.db.ports[0]: host_ip 127.0.0.1: a Service has no host address to bind to"),
        "{err}"
    );
    assert!(
        err.contains("qemu-compose.yaml:11:9: vms.db.volumes[1]: bind mount ./config:/etc/app:ro"),
        "{err}"
    );

    let readme_example = readme_example.replace("127.0.0.1:5433", "5433");
    p.write_compose(&format!(
        "{readme_example}    x-kubevirt:\n      bind_mounts:\n        /etc/app: {{volume: appconfig, size: 64M}}\n        /etc/nginx/nginx.conf: skip\n"
    ));
    let out = p.ok(&["export", "kubevirt"]);
    let objects = documents(&out.stdout);
    assert_all_valid(&objects);
    let vm = objects
        .iter()
        .find(|o| o["kind"] == "VirtualMachine")
        .unwrap();
    let disks: Vec<&str> = vm["spec"]["template"]["spec"]["domain"]["devices"]["disks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(disks, ["rootdisk", "cloudinitdisk", "pgdata", "appconfig"]);
    let user_data = user_data(&objects);
    assert!(
        !user_data[0].1.contains("nginx"),
        "the skipped mount is left out"
    );
    assert_schema_valid(&user_data);
}

#[test]
fn a_local_image_is_uploaded_into_the_root_data_volume() {
    let p = Project::with_base(
        "vms:\n  vm1:\n    image: ./base.qcow2\n    image_checksum: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
        "64M",
    );
    let out = p.ok(&["export", "kubevirt"]);
    let objects = documents(&out.stdout);
    assert_all_valid(&objects);
    let root = objects
        .iter()
        .find(|o| o["kind"] == "DataVolume" && o["metadata"]["name"] == "vm1-root")
        .unwrap();
    assert_eq!(root["spec"]["source"], json!({"upload": {}}));
    let command = format!(
        "virtctl image-upload dv vm1-root --no-create --image-path={}",
        p.join("base.qcow2").display()
    );
    assert!(out.stderr.contains(&command), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("check first that `sha256sum` prints 0123456789abcdef"),
        "{}",
        out.stderr
    );
}
