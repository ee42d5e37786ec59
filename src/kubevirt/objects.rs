//! The Kubernetes objects of one VM or volume, as JSON values: small functions, no I/O.

use serde_json::{Map, Value, json};

use super::check::cluster_volumes;
use super::names::{self, CLOUDINIT_DISK, ROOT_DISK};
use super::{PROJECT_LABEL, VM_LABEL};
use crate::compose::{Arch, HealthTest, ImageSource, Project, Protocol, Vm};
use crate::engine::instance::mac_for;
use crate::engine::ssh::quoted_line;

/// Asks CDI to bind an upload DataVolume's claim at once, so that the upload can start before
/// any VM uses it (with `WaitForFirstConsumer` storage it would wait for its VM, and the VM
/// for the upload).
const BIND_IMMEDIATE: &str = "cdi.kubevirt.io/storage.bind.immediate.requested";

/// Where the objects go.
pub(super) struct Context<'a> {
    pub project: &'a Project,
    pub namespace: Option<&'a str>,
}

impl Context<'_> {
    /// `metadata`: name, namespace, the project label, and the VM label when given.
    fn metadata(&self, name: &str, vm: Option<&str>) -> Value {
        let mut meta = Map::new();
        meta.insert("name".into(), name.into());
        if let Some(ns) = self.namespace {
            meta.insert("namespace".into(), ns.into());
        }
        meta.insert("labels".into(), self.labels(vm));
        Value::Object(meta)
    }

    fn labels(&self, vm: Option<&str>) -> Value {
        let mut labels = Map::new();
        labels.insert(PROJECT_LABEL.into(), self.project.name.as_str().into());
        if let Some(vm) = vm {
            labels.insert(VM_LABEL.into(), vm.into());
        }
        Value::Object(labels)
    }

    /// The cloud-init documents, kept in a Secret: the user-data holds the console password's
    /// hash and the guest's SSH host key, which a VM's spec would show to anyone who may
    /// read VMs.
    pub fn secret(&self, vm: &Vm, user_data: &str, network_data: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self.metadata(&names::cloudinit_secret(&vm.name), Some(&vm.name)),
            "type": "Opaque",
            "stringData": {"userdata": user_data, "networkdata": network_data},
        })
    }

    /// The VirtualMachine: its root disk imported (or uploaded) by a DataVolume template,
    /// cloud-init from the Secret, the named volumes as virtio disks, one NIC on the pod
    /// network with the MAC address `up` gives it.
    pub fn virtual_machine(&self, vm: &Vm) -> Value {
        let cluster = super::cluster_vm(vm);
        let mut disks = vec![
            json!({"name": ROOT_DISK, "disk": {"bus": "virtio"}, "bootOrder": 1}),
            json!({"name": CLOUDINIT_DISK, "disk": {"bus": "virtio"}}),
        ];
        let secret = names::cloudinit_secret(&vm.name);
        let mut volumes = vec![
            json!({"name": ROOT_DISK, "dataVolume": {"name": names::root_disk(&vm.name)}}),
            json!({"name": CLOUDINIT_DISK, "cloudInitNoCloud": {
                "secretRef": {"name": secret},
                "networkDataSecretRef": {"name": secret},
            }}),
        ];
        for (_, volume, read_only) in cluster_volumes(vm) {
            let mut disk = json!({"name": volume, "disk": {"bus": "virtio"}});
            if read_only {
                disk["disk"]["readonly"] = true.into();
            }
            disks.push(disk);
            volumes.push(json!({"name": volume, "dataVolume": {"name": volume}}));
        }
        let mut template_spec = json!({
            "domain": {
                "cpu": {"cores": cluster.cpu},
                "memory": {"guest": format!("{}Mi", cluster.memory_mib)},
                "devices": {
                    "disks": disks,
                    "interfaces": [{
                        "name": "default",
                        "masquerade": {},
                        "macAddress": mac_for(self.project, vm).to_string(),
                    }],
                },
            },
            "networks": [{"name": "default", "pod": {}}],
            "volumes": volumes,
        });
        if let Some(arch) = vm.arch {
            template_spec["architecture"] = architecture(arch).into();
        }
        if let Some(secs) = vm.stop_grace_period_secs {
            template_spec["terminationGracePeriodSeconds"] = secs.into();
        }
        if let Some(probe) = readiness_probe(vm) {
            template_spec["readinessProbe"] = probe;
        }
        let mut metadata = self.metadata(&vm.name, Some(&vm.name));
        if !vm.depends_on.is_empty() {
            metadata["annotations"] = json!({"qemu-compose/depends-on": vm.depends_on.join(",")});
        }
        json!({
            "apiVersion": "kubevirt.io/v1",
            "kind": "VirtualMachine",
            "metadata": metadata,
            "spec": {
                "runStrategy": "Always",
                "template": {
                    "metadata": {"labels": self.labels(Some(&vm.name))},
                    "spec": template_spec,
                },
            },
        })
    }

    /// The root disk: the image URL imported by CDI, which checks `image_checksum`, or an
    /// upload of the local file. A DataVolume of its own rather than one of the VM's
    /// `dataVolumeTemplates`: KubeVirt 1.9 embeds CDI 1.64's types there, which have no
    /// `checksum` (the API server would drop it).
    pub fn root_volume(&self, vm: &Vm) -> Value {
        let source = match &vm.image {
            ImageSource::Url(url) => {
                let mut http = json!({ "url": url });
                if let Some(sum) = &vm.image_checksum {
                    http["checksum"] = sum.as_str().into();
                }
                json!({ "http": http })
            }
            ImageSource::Path(_) => json!({"upload": {}}),
        };
        self.data_volume(
            &names::root_disk(&vm.name),
            Some(&vm.name),
            source,
            vm.disk_size_bytes,
        )
    }

    /// A headless Service named after the VM (and one per network alias), so that `db`
    /// resolves in the cluster as on the host, as soon as the VM has an address (locally the
    /// name is in /etc/hosts whether the VM is healthy or not); then the published ports.
    pub fn services(&self, vm: &Vm) -> Vec<Value> {
        let mut names = vec![vm.name.clone()];
        for network in &vm.networks {
            names.extend(network.aliases.iter().cloned());
        }
        let mut out: Vec<Value> = names
            .iter()
            .map(|name| {
                json!({
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": self.metadata(name, Some(&vm.name)),
                    "spec": {
                        "clusterIP": "None",
                        "publishNotReadyAddresses": true,
                        "selector": self.labels(Some(&vm.name)),
                        "ports": [{"name": "ssh", "port": 22, "protocol": "TCP"}],
                    },
                })
            })
            .collect();
        let mut ports: Vec<Value> = vm
            .ports
            .iter()
            .map(|p| {
                json!({
                    "name": format!("{}-{}", p.protocol.as_str(), p.host_port),
                    "port": p.host_port,
                    "targetPort": p.guest_port,
                    "protocol": protocol(p.protocol),
                })
            })
            .collect();
        if let Some(port) = vm.ssh_port {
            ports.push(json!({"name": "ssh", "port": port, "targetPort": 22, "protocol": "TCP"}));
        }
        if !ports.is_empty() {
            out.push(json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": self.metadata(&names::ports_service(&vm.name), Some(&vm.name)),
                "spec": {
                    "type": "ClusterIP",
                    "selector": self.labels(Some(&vm.name)),
                    "ports": ports,
                },
            }));
        }
        out
    }

    /// Who may reach the VM: the VMs that share a network with it, on any port, and anyone
    /// on its published ports (and its fixed SSH port). A VM on no network with no ports
    /// accepts nothing, as locally.
    pub fn network_policy(&self, vm: &Vm) -> Value {
        let peers: Vec<&str> = self
            .project
            .vms
            .iter()
            .filter(|other| {
                other.name != vm.name
                    && other
                        .networks
                        .iter()
                        .any(|n| vm.networks.iter().any(|m| m.name == n.name))
            })
            .map(|other| other.name.as_str())
            .collect();
        let mut ingress = Vec::new();
        if !peers.is_empty() {
            ingress.push(json!({"from": [{"podSelector": {
                "matchLabels": self.labels(None),
                "matchExpressions": [{"key": VM_LABEL, "operator": "In", "values": peers}],
            }}]}));
        }
        let mut ports: Vec<Value> = vm
            .ports
            .iter()
            .map(|p| json!({"port": p.guest_port, "protocol": protocol(p.protocol)}))
            .collect();
        if vm.ssh_port.is_some() {
            ports.push(json!({"port": 22, "protocol": "TCP"}));
        }
        if !ports.is_empty() {
            ingress.push(json!({"ports": ports}));
        }
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": self.metadata(&vm.name, Some(&vm.name)),
            "spec": {
                "podSelector": {"matchLabels": self.labels(Some(&vm.name))},
                "policyTypes": ["Ingress"],
                "ingress": ingress,
            },
        })
    }

    /// A named volume: an empty claim of the declared size that `virtctl image-upload` fills
    /// with the volume's image (our ext4, so the UUID in the guest's fstab matches).
    pub fn upload_volume(&self, name: &str, size_bytes: u64) -> Value {
        self.data_volume(name, None, json!({"upload": {}}), size_bytes)
    }

    /// A DataVolume of `size_bytes` (CDI adds the filesystem overhead) filled from `source`.
    fn data_volume(&self, name: &str, vm: Option<&str>, source: Value, size_bytes: u64) -> Value {
        let mut metadata = self.metadata(name, vm);
        if source.get("upload").is_some() {
            metadata["annotations"] = json!({ BIND_IMMEDIATE: "true" });
        }
        json!({
            "apiVersion": "cdi.kubevirt.io/v1beta1",
            "kind": "DataVolume",
            "metadata": metadata,
            "spec": {
                "source": source,
                "storage": {"resources": {"requests": {"storage": quantity(size_bytes)}}},
            },
        })
    }
}

/// Bytes as a Kubernetes quantity, in the largest binary unit that divides them.
fn quantity(bytes: u64) -> String {
    for (unit, shift) in [("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)] {
        if bytes.is_multiple_of(1 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// KubeVirt's name of an architecture (Go's `GOARCH`).
fn architecture(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "amd64",
        Arch::Aarch64 => "arm64",
    }
}

fn protocol(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "TCP",
        Protocol::Udp => "UDP",
    }
}

/// The health check as a readiness probe run by the guest agent (an `exec` probe needs
/// qemu-guest-agent in the image): the same command, interval, timeout, retries and start
/// period. Kubernetes counts whole seconds, at least one. `CMD` words are quoted for the
/// shell as `up` quotes them for SSH, so each stays one argument.
fn readiness_probe(vm: &Vm) -> Option<Value> {
    let check = vm.healthcheck.as_ref()?;
    let command = match &check.test {
        HealthTest::Cmd(words) => quoted_line(words),
        HealthTest::CmdShell(line) => line.clone(),
    };
    let secs = |ms: u64| ms.div_ceil(1000).max(1);
    Some(json!({
        "exec": {"command": ["/bin/sh", "-c", command]},
        "initialDelaySeconds": check.start_period_ms / 1000,
        "periodSeconds": secs(check.interval_ms),
        "timeoutSeconds": secs(check.timeout_ms),
        "failureThreshold": check.retries.max(1),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compose::test_project;

    /// The VirtualMachine of the one VM of `compose`.
    fn vm_object(compose: &str) -> Value {
        let project = test_project(compose);
        let cx = Context {
            project: &project,
            namespace: None,
        };
        cx.virtual_machine(&project.vms[0])
    }

    #[test]
    fn a_cmd_health_check_keeps_each_word_one_argument() {
        let vm = vm_object(
            r#"vms:
  a:
    image: https://e/x.img
    healthcheck: {test: ["CMD", "printf", "%s|", "b c", "it's", "$$HOME"]}
"#,
        );
        let exec = &vm["spec"]["template"]["spec"]["readinessProbe"]["exec"]["command"];
        assert_eq!(exec[0], "/bin/sh");
        assert_eq!(exec[1], "-c");
        let line = exec[2].as_str().unwrap();
        assert_eq!(line, r"'printf' '%s|' 'b c' 'it'\''s' '$HOME'");
        // What the guest's shell makes of it: the words as written, none split or expanded.
        let out = std::process::Command::new("/bin/sh")
            .args(["-c", line])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "b c|it's|$HOME|");
    }

    #[test]
    fn arch_is_the_vm_architecture_and_unset_is_the_cluster_default() {
        let spec = |arch: &str| {
            vm_object(&format!("vms:\n  a:\n    image: https://e/x.img\n{arch}"))["spec"]
                ["template"]["spec"]
                .clone()
        };
        assert_eq!(spec("    arch: aarch64\n")["architecture"], "arm64");
        assert_eq!(spec("    arch: x86_64\n")["architecture"], "amd64");
        assert!(spec("").get("architecture").is_none());
    }

    #[test]
    fn quantities_use_the_largest_exact_unit() {
        assert_eq!(quantity(10 << 30), "10Gi");
        assert_eq!(quantity(1536 << 20), "1536Mi");
        assert_eq!(quantity(512), "512");
        assert_eq!(quantity(3 << 40), "3Ti");
    }
}
