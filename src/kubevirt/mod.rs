//! `export kubevirt`: the project as Kubernetes manifests for KubeVirt and CDI
//! (docs/kubevirt.md).
//!
//! [`check`] finds every field a cluster cannot carry; [`translate`] turns a checked project
//! and the [`Facts`] of its state (SSH key, volume UUIDs) into objects, without I/O. The
//! cloud-init documents come from [`crate::cloudinit::build_seed`] and the guest's fstab from
//! [`crate::engine::mounts::plan`], the code `up` uses, so a guest sees the same user, mounts
//! (by the same filesystem UUIDs), environment and provisioning on both.

mod check;
pub mod names;
mod objects;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::cloudinit::{self, HostKey, SeedError, SeedInput, UserSpec};
use crate::compose::{BindExport, ImageSource, MountKind, Project, Vm, VolumeMount};
use crate::engine::instance::mac_for;
use crate::engine::mounts::{self, PlanError, PlanFacts};
use crate::state::VolumeRegistry;

pub use check::check;

/// What the translation takes from the project's state.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The project's SSH public key, authorised for the guest user.
    pub public_key: String,
    /// The console password's crypt hash.
    pub password_hash: String,
    /// Each VM's SSH host key, by VM name.
    pub host_keys: BTreeMap<String, HostKey>,
    /// Every volume the cluster gets (declared, and made from bind mounts): UUIDs and images.
    pub volumes: VolumeRegistry,
}

/// The manifests, grouped by the file they go to in an output folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    /// File stem (a VM's name, or `volumes`) and its objects, in order.
    pub files: Vec<(String, Vec<Value>)>,
    /// Images to upload once the objects exist.
    pub uploads: Vec<Upload>,
    /// What the reader must know that no object says (start order).
    pub notes: Vec<String>,
}

/// One image to upload into an upload DataVolume with `virtctl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub data_volume: String,
    pub image: PathBuf,
    /// `sha256:…` that the file must have (CDI does not check uploads).
    pub checksum: Option<String>,
}

impl Upload {
    /// The `virtctl` command that fills the DataVolume the manifests create.
    pub fn command(&self, namespace: Option<&str>) -> String {
        let ns = namespace.map_or(String::new(), |ns| format!(" --namespace {ns}"));
        format!(
            "virtctl image-upload dv {}{ns} --no-create --image-path={}",
            self.data_volume,
            shell_word(&self.image.to_string_lossy())
        )
    }
}

/// Why the manifests could not be made (after [`check`] passed).
#[derive(Debug, thiserror::Error)]
pub enum KubevirtError {
    #[error("VM {vm}: {error}")]
    Seed { vm: String, error: SeedError },
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("VM {0}: no SSH host key was made for it")]
    NoHostKey(String),
}

/// Labels every object carries; the VM's pods also carry [`VM_LABEL`].
pub const PROJECT_LABEL: &str = "qemu-compose/project";
pub const VM_LABEL: &str = "qemu-compose/vm";

/// The objects of a project that [`check`] accepted.
pub fn translate(
    project: &Project,
    facts: &Facts,
    namespace: Option<&str>,
) -> Result<Export, KubevirtError> {
    let cx = objects::Context { project, namespace };
    let mut export = Export {
        files: Vec::new(),
        uploads: Vec::new(),
        notes: Vec::new(),
    };
    for vm in &project.vms {
        let (user_data, network_data) = seed(project, vm, facts)?;
        let mut objs = vec![
            cx.secret(vm, &user_data, &network_data),
            cx.root_volume(vm),
            cx.virtual_machine(vm),
        ];
        objs.extend(cx.services(vm));
        objs.push(cx.network_policy(vm));
        export.files.push((vm.name.clone(), objs));
        if let ImageSource::Path(path) = &vm.image {
            export.uploads.push(Upload {
                data_volume: names::root_disk(&vm.name),
                image: path.clone(),
                checksum: vm.image_checksum.clone(),
            });
        }
        if !vm.depends_on.is_empty() {
            export.notes.push(format!(
                "VM {} depends on {}: KubeVirt starts VMs together, in no order; the guest must wait for what it needs",
                vm.name,
                vm.depends_on.join(", ")
            ));
        }
    }
    let mut volumes = Vec::new();
    for (name, size_bytes) in volume_sizes(project) {
        volumes.push(cx.upload_volume(&name, size_bytes));
        if let Some(record) = facts.volumes.volumes.get(&name) {
            export.uploads.push(Upload {
                data_volume: name,
                image: record.disk_path.clone(),
                checksum: None,
            });
        }
    }
    if !volumes.is_empty() {
        export.files.push(("volumes".to_owned(), volumes));
    }
    Ok(export)
}

/// Every volume the cluster gets, with its size: the declared ones, then those bind mounts
/// become, in compose order.
pub fn volume_sizes(project: &Project) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = project
        .volumes
        .iter()
        .map(|v| (v.name.clone(), v.size_bytes))
        .collect();
    for vm in &project.vms {
        for rule in vm.kubevirt_binds.values() {
            if let BindExport::Volume { name, size_bytes } = rule {
                out.push((name.clone(), *size_bytes));
            }
        }
    }
    out
}

/// The folder each bind-mount volume is filled from, by volume name.
pub fn bind_volume_sources(project: &Project) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for vm in &project.vms {
        for mount in &vm.volumes {
            if let (MountKind::Bind { source, .. }, Some(BindExport::Volume { name, .. })) =
                (&mount.kind, vm.kubevirt_binds.get(&mount.target))
            {
                out.push((name.clone(), source.clone()));
            }
        }
    }
    out
}

/// `vm` as the cluster runs it: bind mounts left out or turned into named volumes, as its
/// `x-kubevirt:` says.
pub(crate) fn cluster_vm(vm: &Vm) -> Vm {
    let mut out = vm.clone();
    out.volumes = vm
        .volumes
        .iter()
        .filter_map(|m| match (&m.kind, vm.kubevirt_binds.get(&m.target)) {
            (MountKind::Named { .. }, _) => Some(m.clone()),
            (MountKind::Bind { .. }, Some(BindExport::Volume { name, .. })) => Some(VolumeMount {
                target: m.target.clone(),
                read_only: m.read_only,
                kind: MountKind::Named {
                    volume: name.clone(),
                },
            }),
            (MountKind::Bind { .. }, _) => None,
        })
        .collect();
    out
}

/// The user-data and network-config of `vm`, built by the seed code `up` uses, with the
/// fstab of its cluster volumes. The guest has one NIC, on the pod network by DHCP, with the
/// MAC address `up` gives it; project networks become Services and NetworkPolicies.
fn seed(project: &Project, vm: &Vm, facts: &Facts) -> Result<(String, String), KubevirtError> {
    let cluster = cluster_vm(vm);
    let plan = mounts::plan(
        &cluster,
        &PlanFacts {
            host_is_root: false,
            volumes: &facts.volumes,
            source_kinds: &BTreeMap::new(),
            file_shares_dir: std::path::Path::new("/"),
            hosts_dir: None,
        },
    )?;
    let host_key = facts
        .host_keys
        .get(&vm.name)
        .ok_or_else(|| KubevirtError::NoHostKey(vm.name.clone()))?;
    let seed_error = |error| KubevirtError::Seed {
        vm: vm.name.clone(),
        error,
    };
    let seed = cloudinit::build_seed(&SeedInput {
        hostname: cloudinit::hostname_for_vm(&vm.name),
        user: UserSpec {
            name: vm.user.clone(),
            // No shared host files in the cluster: the image's default UID.
            uid: None,
            ssh_authorized_key: facts.public_key.clone(),
            password_hash: facts.password_hash.clone(),
        },
        mounts: plan.guest,
        environment: vm.environment.clone(),
        provision: vm.provision.clone(),
        mac: mac_for(project, vm).to_string(),
        links: Vec::new(),
        host_key: host_key.clone(),
    })
    .map_err(seed_error)?;
    Ok((seed.user_data, seed.network_config))
}

/// `word` quoted for a POSIX shell when it needs to be.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,@".contains(&b))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The objects as one multi-document YAML stream.
pub fn to_yaml(objects: &[Value]) -> Result<String, serde_saphyr::SerializeError> {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(object)?);
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::test_project;

    const IMAGE: &str = "https://example.org/debian.qcow2";

    #[test]
    fn upload_commands_quote_what_the_shell_would_split() {
        let upload = Upload {
            data_volume: "pgdata".into(),
            image: "/home/me/my project/v.qcow2".into(),
            checksum: None,
        };
        assert_eq!(
            upload.command(Some("shop")),
            "virtctl image-upload dv pgdata --namespace shop --no-create --image-path='/home/me/my project/v.qcow2'"
        );
        assert_eq!(shell_word("/a/b-c_d.qcow2"), "/a/b-c_d.qcow2");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn bind_mounts_are_skipped_or_become_volumes_as_x_kubevirt_says() {
        let project = test_project(&format!(
            "vms:
  app:
    image: {IMAGE}
    volumes: [./site:/srv/site:ro, ./a.conf:/etc/a.conf, ./logs:/var/log/app]
    x-kubevirt:
      bind_mounts:
        /srv/site: {{volume: site, size: 64M}}
        /etc/a.conf: skip
"
        ));
        let vm = cluster_vm(&project.vms[0]);
        assert_eq!(
            vm.volumes,
            [VolumeMount {
                target: "/srv/site".into(),
                read_only: true,
                kind: MountKind::Named {
                    volume: "site".into()
                },
            }]
        );
        assert_eq!(volume_sizes(&project), [("site".to_owned(), 64 << 20)]);
        assert_eq!(
            bind_volume_sources(&project),
            [("site".to_owned(), PathBuf::from("/p/site"))]
        );
        // The mount no rule covers is refused, with its place; so is a folder that is not
        // there (/p/site).
        let errors = check(&project).unwrap_err().to_string();
        assert!(
            errors.contains(
                "/p/qemu-compose.yaml:4:58: vms.app.volumes[2]: bind mount ./logs:/var/log/app"
            ),
            "{errors}"
        );
        assert!(
            errors.contains("7:20: vms.app.x-kubevirt.bind_mounts./srv/site: only a folder can become a volume; /p/site is not one"),
            "{errors}"
        );
    }

    #[test]
    fn a_project_of_plain_vms_passes_the_check() {
        let project = test_project(&format!(
            "networks: {{back: {{}}}}
volumes: {{data: {{}}}}
vms:
  db: {{image: {IMAGE}, networks: {{back: {{aliases: [pg]}}}}, volumes: [data:/d]}}
  web: {{image: {IMAGE}, ports: ['8080:80'], depends_on: [db], networks: [back]}}
"
        ));
        check(&project).unwrap();
    }

    #[test]
    fn x_kubevirt_rules_are_checked_when_the_file_loads() {
        let opts = crate::compose::LoadOptions {
            project_name: Some("t"),
            env: &BTreeMap::new(),
        };
        let text = format!(
            "volumes: {{data: {{}}}}
vms:
  app:
    image: {IMAGE}
    volumes: [./site:/srv/site]
    x-kubevirt:
      bind_mounts:
        /srv/other: skip
        /srv/site: {{volume: data}}
      bind_mount: {{}}
"
        );
        let errors = crate::compose::parse_str(
            &text,
            std::path::Path::new("/p/qemu-compose.yaml"),
            std::path::Path::new("/p"),
            &opts,
        )
        .unwrap_err()
        .to_string();
        assert!(errors.contains("8:9: vms.app.x-kubevirt.bind_mounts./srv/other: the VM has no bind mount at \"/srv/other\""), "{errors}");
        assert!(errors.contains("9:29: vms.app.x-kubevirt.bind_mounts./srv/site.volume: volume \"data\" is declared already"), "{errors}");
        assert!(
            errors.contains("10:7: vms.app.x-kubevirt.bind_mount: unknown key \"bind_mount\" (did you mean \"bind_mounts\"?)"),
            "{errors}"
        );
    }
}
