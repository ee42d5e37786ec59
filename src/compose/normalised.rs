//! The model written back as a compose file (`config`): every default filled in, sizes and
//! paths as the validator resolved them (paths absolute), in a form that loads back to the
//! same model, so `config` output can be given to `-f` (docs/compose.md, "config").
//!
//! Every string the user wrote is interpolated again when the output is loaded, so each `$`
//! in one is written `$$` ([`text`]); otherwise `$$HOME` would come back as the host's home.

use std::collections::BTreeMap;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::model::{
    HealthCheck, HealthTest, ImageSource, MountKind, PortForward, Project, Vm, VolumeMount,
};
use super::size::format_size;

/// A compose file, in the order and spelling `config` prints.
#[derive(Debug, Serialize)]
pub struct ComposeFile<'a> {
    name: &'a str,
    vms: Named<VmEntry<'a>>,
    #[serde(skip_serializing_if = "Named::is_empty")]
    volumes: Named<VolumeEntry>,
    #[serde(skip_serializing_if = "Named::is_empty")]
    networks: Named<NetworkEntry>,
}

/// The compose file that loads back to `project`.
pub fn compose_file(project: &Project) -> ComposeFile<'_> {
    ComposeFile {
        name: &project.name,
        vms: Named(
            project
                .vms
                .iter()
                .map(|vm| (vm.name.clone(), vm_entry(vm)))
                .collect(),
        ),
        volumes: Named(
            project
                .volumes
                .iter()
                .map(|v| {
                    let entry = VolumeEntry {
                        size: format_size(v.size_bytes),
                        init_from: v.init_from.as_deref().map(path_text),
                    };
                    (v.name.clone(), entry)
                })
                .collect(),
        ),
        networks: Named(
            project
                .networks
                .iter()
                .map(|n| {
                    let entry = NetworkEntry {
                        driver: n.driver.clone(),
                        subnet: n.subnet.to_string(),
                    };
                    (n.name.clone(), entry)
                })
                .collect(),
        ),
    }
}

/// A mapping from names to definitions that keeps compose order.
#[derive(Debug)]
struct Named<T>(Vec<(String, T)>);

impl<T> Named<T> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T: Serialize> Serialize for Named<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

#[derive(Debug, Serialize)]
struct VolumeEntry {
    size: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    init_from: Option<String>,
}

#[derive(Debug, Serialize)]
struct NetworkEntry {
    driver: String,
    subnet: String,
}

#[derive(Debug, Serialize)]
struct VmEntry<'a> {
    image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    image_checksum: Option<&'a str>,
    cpu: u32,
    /// MiB, as a bare number means.
    memory: u64,
    disk: Disk,
    user: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ports: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ssh: Option<Ssh>,
    accel: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    arch: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    firmware: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop_grace_period: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    initrd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cmdline: Option<String>,
    #[serde(skip_serializing_if = "Dependencies::is_empty")]
    depends_on: Dependencies<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthcheck: Option<Healthcheck>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    environment: BTreeMap<&'a str, String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    provision: Vec<String>,
    #[serde(skip_serializing_if = "VmNetworks::is_empty")]
    networks: VmNetworks<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    volumes: Vec<Mount>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    profiles: &'a [String],
    #[serde(rename = "x-kubevirt", skip_serializing_if = "Option::is_none")]
    kubevirt: Option<Kubevirt<'a>>,
}

/// `x-kubevirt:`, kept so that `config`'s output exports as the file does.
#[derive(Debug, Serialize)]
struct Kubevirt<'a> {
    bind_mounts: BTreeMap<&'a str, BindRule>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum BindRule {
    Skip(&'static str),
    Volume { volume: String, size: String },
}

/// `depends_on`: the short form, unless a condition other than the default is needed.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Dependencies<'a> {
    Short(Vec<&'a str>),
    Long(Named<Condition>),
}

impl Dependencies<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Dependencies::Short(names) => names.is_empty(),
            Dependencies::Long(named) => named.is_empty(),
        }
    }
}

#[derive(Debug, Serialize)]
struct Condition {
    condition: &'static str,
}

fn dependencies(vm: &Vm) -> Dependencies<'_> {
    if vm.healthy_dependencies.is_empty() {
        return Dependencies::Short(vm.depends_on.iter().map(String::as_str).collect());
    }
    Dependencies::Long(Named(
        vm.depends_on
            .iter()
            .map(|name| {
                let condition = if vm.healthy_dependencies.contains(name) {
                    "service_healthy"
                } else {
                    "service_started"
                };
                (name.clone(), Condition { condition })
            })
            .collect(),
    ))
}

/// A VM's `networks:`: the short form, unless an address or aliases are set.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum VmNetworks<'a> {
    Short(Vec<&'a str>),
    Long(Named<NetworkSettings<'a>>),
}

impl VmNetworks<'_> {
    fn is_empty(&self) -> bool {
        match self {
            VmNetworks::Short(names) => names.is_empty(),
            VmNetworks::Long(named) => named.is_empty(),
        }
    }
}

#[derive(Debug, Serialize)]
struct NetworkSettings<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ipv4_address: Option<String>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    aliases: &'a [String],
}

fn vm_networks(vm: &Vm) -> VmNetworks<'_> {
    if vm
        .networks
        .iter()
        .all(|n| n.ipv4_address.is_none() && n.aliases.is_empty())
    {
        return VmNetworks::Short(vm.networks.iter().map(|n| n.name.as_str()).collect());
    }
    VmNetworks::Long(Named(
        vm.networks
            .iter()
            .map(|n| {
                let settings = NetworkSettings {
                    ipv4_address: n.ipv4_address.map(|a| a.to_string()),
                    aliases: &n.aliases,
                };
                (n.name.clone(), settings)
            })
            .collect(),
    ))
}

#[derive(Debug, Serialize)]
struct Healthcheck {
    test: Vec<String>,
    interval: String,
    timeout: String,
    retries: u32,
    start_period: String,
    start_interval: String,
}

fn healthcheck(check: &HealthCheck) -> Healthcheck {
    Healthcheck {
        test: match &check.test {
            HealthTest::Cmd(words) => std::iter::once("CMD".to_owned())
                .chain(words.iter().map(|w| text(w)))
                .collect(),
            HealthTest::CmdShell(line) => vec!["CMD-SHELL".to_owned(), text(line)],
        },
        interval: duration(check.interval_ms),
        timeout: duration(check.timeout_ms),
        retries: check.retries,
        start_period: duration(check.start_period_ms),
        start_interval: duration(check.start_interval_ms),
    }
}

/// `30s`, or `1500ms` when not whole seconds.
fn duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[derive(Debug, Serialize)]
struct Disk {
    size: String,
}

#[derive(Debug, Serialize)]
struct Ssh {
    port: u16,
}

/// A named volume in the short form; a bind mount in the long form, which carries every
/// setting.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Mount {
    Short(String),
    Long(BindMount),
}

#[derive(Debug, Serialize)]
struct BindMount {
    source: String,
    target: String,
    read_only: bool,
    automount: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    mount_options: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    security_model: Option<&'static str>,
}

/// A string as the file must spell it to load back as `s`: `$` doubled.
fn text(s: &str) -> String {
    s.replace('$', "$$")
}

fn path_text(p: &std::path::Path) -> String {
    text(&p.to_string_lossy())
}

fn vm_entry(vm: &Vm) -> VmEntry<'_> {
    VmEntry {
        image: match &vm.image {
            ImageSource::Url(url) => text(url),
            ImageSource::Path(p) => path_text(p),
        },
        image_checksum: vm.image_checksum.as_deref(),
        cpu: vm.cpu,
        memory: vm.memory_mib,
        disk: Disk {
            size: format_size(vm.disk_size_bytes),
        },
        user: &vm.user,
        ports: vm.ports.iter().map(port_spec).collect(),
        ssh: vm.ssh_port.map(|port| Ssh { port }),
        accel: match vm.accel {
            super::Accel::Auto => "auto",
            super::Accel::Kvm => "kvm",
            super::Accel::Tcg => "tcg",
        },
        arch: vm.arch.map(super::Arch::as_str),
        firmware: vm.firmware.as_deref().map(path_text),
        stop_grace_period: vm.stop_grace_period_secs.map(|s| format!("{s}s")),
        kernel: vm.kernel.as_deref().map(path_text),
        initrd: vm.initrd.as_deref().map(path_text),
        cmdline: vm.cmdline.as_deref().map(text),
        depends_on: dependencies(vm),
        healthcheck: vm.healthcheck.as_ref().map(healthcheck),
        environment: vm
            .environment
            .iter()
            .map(|(k, v)| (k.as_str(), text(v)))
            .collect(),
        provision: vm.provision.iter().map(|c| text(c)).collect(),
        networks: vm_networks(vm),
        volumes: vm.volumes.iter().map(mount).collect(),
        profiles: &vm.profiles,
        kubevirt: (!vm.kubevirt_binds.is_empty()).then(|| Kubevirt {
            bind_mounts: vm
                .kubevirt_binds
                .iter()
                .map(|(target, rule)| {
                    let rule = match rule {
                        super::BindExport::Skip => BindRule::Skip("skip"),
                        super::BindExport::Volume { name, size_bytes } => BindRule::Volume {
                            volume: text(name),
                            size: format_size(*size_bytes),
                        },
                    };
                    (target.as_str(), rule)
                })
                .collect(),
        }),
    }
}

/// `[ip:]host:guest/protocol`, an IPv6 address in brackets.
fn port_spec(p: &PortForward) -> String {
    let ip = match p.host_ip {
        Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]:"),
        Some(ip) => format!("{ip}:"),
        None => String::new(),
    };
    format!(
        "{ip}{}:{}/{}",
        p.host_port,
        p.guest_port,
        p.protocol.as_str()
    )
}

fn mount(m: &VolumeMount) -> Mount {
    match &m.kind {
        MountKind::Named { .. } => Mount::Short(text(&m.to_string())),
        MountKind::Bind {
            source,
            automount,
            mount_options,
            security_model,
            ..
        } => Mount::Long(BindMount {
            source: path_text(source),
            target: text(&m.target),
            read_only: m.read_only,
            automount: *automount,
            mount_options: (!mount_options.is_empty()).then(|| {
                text(
                    &mount_options
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                )
            }),
            security_model: security_model.map(|m| m.as_str()),
        }),
    }
}
