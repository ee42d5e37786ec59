//! Phase 1: the located YAML tree -> strict raw types.
//!
//! Every mapping accepts exactly its documented keys (`deny_unknown_fields` semantics), plus
//! `x-*` extension keys at the top level and in each VM, volume and network. Unlike a derived
//! serde struct, this reader keeps going after a problem, so one run reports every unknown key
//! and every type mismatch. String scalars are interpolated here, where their position is
//! known; keys and ignored `x-*` sections are not.

use super::error::{At, Errors, Here};
use super::interpolate::{Env, interpolate};
use super::tree::{Key, Node, Pos, Value};

/// The whole file, as written.
#[derive(Debug, Default)]
pub struct RawFile {
    pub name: Option<At<String>>,
    pub volumes: Vec<(At<String>, RawVolume)>,
    pub vms: Vec<(At<String>, RawVm)>,
    pub networks: Vec<(At<String>, RawNetwork)>,
}

#[derive(Debug, Default)]
pub struct RawVolume {
    pub size: Option<At<SizeValue>>,
    pub init_from: Option<At<String>>,
}

#[derive(Debug, Default)]
pub struct RawNetwork {
    pub driver: Option<At<String>>,
    pub subnet: Option<At<String>>,
}

/// A size as written: a YAML integer, or a string such as `"10G"`.
#[derive(Debug, Clone, PartialEq)]
pub enum SizeValue {
    Int(i128),
    Text(String),
}

#[derive(Debug, Default)]
pub struct RawVm {
    pub image: Option<At<String>>,
    pub image_checksum: Option<At<String>>,
    pub cpu: Option<At<i128>>,
    pub memory: Option<At<SizeValue>>,
    pub disk_size: Option<At<SizeValue>>,
    pub user: Option<At<String>>,
    pub ports: Vec<At<String>>,
    pub ssh_port: Option<At<i128>>,
    pub accel: Option<At<String>>,
    pub arch: Option<At<String>>,
    pub firmware: Option<At<String>>,
    pub stop_grace_period: Option<At<String>>,
    pub kernel: Option<At<String>>,
    pub initrd: Option<At<String>>,
    pub cmdline: Option<At<String>>,
    pub depends_on: Vec<At<String>>,
    /// The `condition:` of each `depends_on` entry written in the long form, by VM name.
    pub depends_conditions: Conditions,
    pub healthcheck: Option<RawHealthcheck>,
    pub environment: Vec<(At<String>, At<String>)>,
    pub provision: Vec<At<String>>,
    pub networks: Vec<RawVmNetwork>,
    pub volumes: Vec<RawMount>,
    pub profiles: Vec<At<String>>,
    /// `x-kubevirt:` bind mount rules, by guest target.
    pub kubevirt_binds: Vec<(At<String>, RawBindExport)>,
}

/// What `x-kubevirt: {bind_mounts: {TARGET: …}}` says to do with one bind mount.
#[derive(Debug, Clone, PartialEq)]
pub enum RawBindExport {
    /// `skip`
    Skip,
    /// `{volume: NAME, size: SIZE}`
    Volume {
        name: At<String>,
        size: Option<At<SizeValue>>,
    },
}

/// `depends_on` conditions: the VM depended on, and the condition.
pub type Conditions = Vec<(At<String>, At<String>)>;

/// `healthcheck:` as written.
#[derive(Debug, Clone, PartialEq)]
pub struct RawHealthcheck {
    pub pos: Pos,
    pub test: Option<At<RawTest>>,
    pub interval: Option<At<String>>,
    pub timeout: Option<At<String>>,
    pub retries: Option<At<i128>>,
    pub start_period: Option<At<String>>,
    pub start_interval: Option<At<String>>,
    pub disable: Option<At<bool>>,
}

/// A health check's `test:`: a list (`["CMD", …]`, `["CMD-SHELL", "…"]`, `["NONE"]`) or a
/// string (a shell command line).
#[derive(Debug, Clone, PartialEq)]
pub enum RawTest {
    List(Vec<String>),
    Shell(String),
}

/// One network a VM is on: `networks: [name]`, or the long form
/// `networks: {name: {ipv4_address: …, aliases: […]}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct RawVmNetwork {
    pub name: At<String>,
    pub ipv4_address: Option<At<String>>,
    pub aliases: Vec<At<String>>,
}

/// One entry of a VM's `volumes:` list.
#[derive(Debug, Clone, PartialEq)]
pub enum RawMount {
    /// `source:target[:ro|:rw]`
    Short(At<String>),
    Long(Box<RawLongMount>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RawLongMount {
    pub pos: Pos,
    pub source: Option<At<String>>,
    pub target: Option<At<String>>,
    pub read_only: Option<At<bool>>,
    pub automount: Option<At<bool>>,
    pub mount_options: Option<At<String>>,
    pub security_model: Option<At<String>>,
}

/// The keys one kind of mapping accepts. Each kind is an enum, so the reader's `match` on it
/// must handle every key: a key without an arm does not compile, where a `match` on text
/// needs a catch-all arm that would read a new key as some other one.
trait Keys: Copy {
    /// In the order "valid keys: …" hints list them.
    const NAMES: &[&str];
    fn from_name(name: &str) -> Option<Self>;
}

/// Declares [`Keys`] enums from their variants and their spellings in the file.
macro_rules! keys {
    ($($(#[$meta:meta])* $kind:ident { $($key:ident = $name:literal,)+ })+) => {$(
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum $kind {
            $($key,)+
        }

        impl Keys for $kind {
            const NAMES: &[&str] = &[$($name,)+];

            fn from_name(name: &str) -> Option<Self> {
                match name {
                    $($name => Some(Self::$key),)+
                    _ => None,
                }
            }
        }
    )+};
}

keys! {
    /// The file's top level.
    TopKey {
        Name = "name",
        Version = "version",
        Volumes = "volumes",
        Vms = "vms",
        Networks = "networks",
    }
    /// `volumes.<name>`
    VolumeKey {
        Size = "size",
        InitFrom = "init_from",
    }
    /// `networks.<name>`
    NetworkKey {
        Driver = "driver",
        Subnet = "subnet",
    }
    /// `vms.<name>`
    VmKey {
        Image = "image",
        ImageChecksum = "image_checksum",
        Cpu = "cpu",
        Memory = "memory",
        Disk = "disk",
        User = "user",
        Ports = "ports",
        Ssh = "ssh",
        Accel = "accel",
        Arch = "arch",
        Firmware = "firmware",
        Kernel = "kernel",
        Initrd = "initrd",
        Cmdline = "cmdline",
        DependsOn = "depends_on",
        Environment = "environment",
        Provision = "provision",
        Networks = "networks",
        Volumes = "volumes",
        StopGracePeriod = "stop_grace_period",
        Profiles = "profiles",
        Healthcheck = "healthcheck",
        Kubevirt = "x-kubevirt",
    }
    /// `vms.<name>.x-kubevirt`
    KubevirtKey {
        BindMounts = "bind_mounts",
    }
    /// `vms.<name>.x-kubevirt.bind_mounts.<target>` in the long form
    BindVolumeKey {
        Volume = "volume",
        Size = "size",
    }
    /// `vms.<name>.healthcheck`
    HealthKey {
        Test = "test",
        Interval = "interval",
        Timeout = "timeout",
        Retries = "retries",
        StartPeriod = "start_period",
        StartInterval = "start_interval",
        Disable = "disable",
    }
    /// A `depends_on` entry in the long form.
    DependsKey {
        Condition = "condition",
    }
    /// `vms.<name>.networks.<network>`
    VmNetworkKey {
        Ipv4Address = "ipv4_address",
        Aliases = "aliases",
    }
    /// `vms.<name>.disk`
    DiskKey {
        Size = "size",
    }
    /// `vms.<name>.ssh`
    SshKey {
        Port = "port",
    }
    /// A `provision` entry written as a mapping.
    ProvisionKey {
        Type = "type",
        Inline = "inline",
    }
    /// A `volumes` entry in the long form.
    MountKey {
        Source = "source",
        Target = "target",
        ReadOnly = "read_only",
        Automount = "automount",
        MountOptions = "mount_options",
        SecurityModel = "security_model",
    }
}

/// Reads the tree into raw types, pushing every problem into `errors`.
pub fn read(root: &Node, env: &dyn Env, errors: &mut Errors) -> RawFile {
    let mut r = Reader { env, errors };
    r.file(root)
}

struct Reader<'a, 'e> {
    env: &'a dyn Env,
    errors: &'a mut Errors<'e>,
}

impl Reader<'_, '_> {
    fn file(&mut self, root: &Node) -> RawFile {
        let mut raw = RawFile::default();
        let here = Here::root();
        if matches!(root.value, Value::Null) {
            self.errors.push(
                root.pos,
                &here,
                "the file is empty: expected a mapping with at least `vms:`",
            );
            return raw;
        }
        let Some(entries) = self.mapping::<TopKey>(root, &here, true) else {
            return raw;
        };
        let mut saw_vms = false;
        for (key, node, here) in entries {
            match key {
                TopKey::Name => raw.name = self.string(node, &here),
                TopKey::Version => {}
                TopKey::Volumes => {
                    raw.volumes = self.definitions(node, &here, Self::volume_field);
                }
                TopKey::Vms => {
                    saw_vms = true;
                    raw.vms = self.vms(node, &here);
                }
                TopKey::Networks => {
                    raw.networks = self.definitions(node, &here, Self::network_field);
                }
            }
        }
        if !saw_vms {
            self.errors
                .push(root.pos, &here, "no `vms:` section: define at least one VM");
        }
        raw
    }

    /// Top-level `volumes:` or `networks:`: names, each with a definition whose keys `set`
    /// reads.
    fn definitions<K: Keys, T: Default>(
        &mut self,
        node: &Node,
        here: &Here,
        set: fn(&mut Self, &mut T, K, &Node, &Here),
    ) -> Vec<(At<String>, T)> {
        let mut out = Vec::new();
        for (name, node) in self.named_map(node, here) {
            let here = here.field(&name.name);
            let mut definition = T::default();
            for (key, node, here) in self.optional_mapping(node, &here) {
                set(self, &mut definition, key, node, &here);
            }
            out.push((at(name), definition));
        }
        out
    }

    fn volume_field(&mut self, volume: &mut RawVolume, key: VolumeKey, node: &Node, here: &Here) {
        match key {
            VolumeKey::Size => volume.size = self.size(node, here),
            VolumeKey::InitFrom => volume.init_from = self.string(node, here),
        }
    }

    fn network_field(&mut self, net: &mut RawNetwork, key: NetworkKey, node: &Node, here: &Here) {
        let value = self.string(node, here);
        match key {
            NetworkKey::Driver => net.driver = value,
            NetworkKey::Subnet => net.subnet = value,
        }
    }

    fn vms(&mut self, node: &Node, here: &Here) -> Vec<(At<String>, RawVm)> {
        // `vms:` with nothing under it (null or `{}`) is no better than no `vms:`.
        if matches!(&node.value, Value::Null)
            || matches!(&node.value, Value::Map(entries) if entries.is_empty())
        {
            self.errors
                .push(node.pos, here, "no VMs: define at least one VM");
        }
        let mut out = Vec::new();
        for (name, node) in self.named_map(node, here) {
            let vm = self.vm(node, &here.vm(&name.name));
            out.push((at(name), vm));
        }
        out
    }

    fn vm(&mut self, node: &Node, here: &Here) -> RawVm {
        let mut vm = RawVm::default();
        let Some(entries) = self.mapping::<VmKey>(node, here, true) else {
            return vm;
        };
        if !entries.iter().any(|(key, ..)| *key == VmKey::Image) {
            self.errors.push(
                node.pos,
                here,
                "`image:` is required (a URL or a local path)",
            );
        }
        for (key, node, here) in entries {
            match key {
                VmKey::Image => vm.image = self.string(node, &here),
                VmKey::ImageChecksum => vm.image_checksum = self.string(node, &here),
                VmKey::Cpu => vm.cpu = self.int(node, &here),
                VmKey::Memory => vm.memory = self.size(node, &here),
                VmKey::Disk => vm.disk_size = self.disk_size(node, &here),
                VmKey::User => vm.user = self.string(node, &here),
                VmKey::Ports => vm.ports = self.string_list(node, &here, true),
                VmKey::Ssh => vm.ssh_port = self.ssh_port(node, &here),
                VmKey::Accel => vm.accel = self.string(node, &here),
                VmKey::Arch => vm.arch = self.string(node, &here),
                VmKey::Firmware => vm.firmware = self.string(node, &here),
                VmKey::StopGracePeriod => vm.stop_grace_period = self.scalar_text(node, &here),
                VmKey::Kernel => vm.kernel = self.string(node, &here),
                VmKey::Initrd => vm.initrd = self.string(node, &here),
                VmKey::Cmdline => vm.cmdline = self.string(node, &here),
                VmKey::DependsOn => {
                    (vm.depends_on, vm.depends_conditions) = self.depends_on(node, &here);
                }
                VmKey::Healthcheck => vm.healthcheck = self.healthcheck(node, &here),
                VmKey::Environment => vm.environment = self.environment(node, &here),
                VmKey::Provision => vm.provision = self.provision(node, &here),
                VmKey::Networks => vm.networks = self.vm_networks(node, &here),
                VmKey::Volumes => vm.volumes = self.mounts(node, &here),
                VmKey::Profiles => vm.profiles = self.string_list(node, &here, false),
                VmKey::Kubevirt => vm.kubevirt_binds = self.kubevirt(node, &here),
            }
        }
        vm
    }

    /// `x-kubevirt:` (docs/kubevirt.md): each bind mount target, `skip` or
    /// `{volume: NAME, size: SIZE}`.
    fn kubevirt(&mut self, node: &Node, here: &Here) -> Vec<(At<String>, RawBindExport)> {
        let mut out = Vec::new();
        for (key, node, here) in self
            .mapping::<KubevirtKey>(node, here, false)
            .unwrap_or_default()
        {
            match key {
                KubevirtKey::BindMounts => {
                    for (target, rule) in self.named_map(node, &here) {
                        let here = here.field(&target.name);
                        if let Some(rule) = self.bind_export(rule, &here) {
                            out.push((at(target), rule));
                        }
                    }
                }
            }
        }
        out
    }

    fn bind_export(&mut self, node: &Node, here: &Here) -> Option<RawBindExport> {
        if let Value::Str(s) = &node.value {
            if s == "skip" {
                return Some(RawBindExport::Skip);
            }
            self.errors.push(
                node.pos,
                here,
                format!("expected `skip` or {{volume: NAME}}, found {s:?}"),
            );
            return None;
        }
        let (mut name, mut size) = (None, None);
        for (key, node, here) in self.mapping::<BindVolumeKey>(node, here, false)? {
            match key {
                BindVolumeKey::Volume => name = self.string(node, &here),
                BindVolumeKey::Size => size = self.size(node, &here),
            }
        }
        match name {
            Some(name) => Some(RawBindExport::Volume { name, size }),
            None => {
                self.errors.push(
                    node.pos,
                    here,
                    "`volume:` is required (the new volume's name)",
                );
                None
            }
        }
    }

    /// `depends_on`: a list of names, or docker's long form `{db: {condition: …}}` (the
    /// names, and each condition written).
    fn depends_on(&mut self, node: &Node, here: &Here) -> (Vec<At<String>>, Conditions) {
        let Value::Map(entries) = &node.value else {
            return (self.string_list(node, here, false), Vec::new());
        };
        let mut names = Vec::new();
        let mut conditions = Vec::new();
        for (key, value) in entries {
            let here = here.field(&key.name);
            names.push(at(key));
            for (k, node, here) in self.optional_mapping::<DependsKey>(value, &here) {
                match k {
                    DependsKey::Condition => {
                        if let Some(condition) = self.string(node, &here) {
                            conditions.push((at(key), condition));
                        }
                    }
                }
            }
        }
        (names, conditions)
    }

    /// `healthcheck:`
    fn healthcheck(&mut self, node: &Node, here: &Here) -> Option<RawHealthcheck> {
        let entries = self.mapping::<HealthKey>(node, here, false)?;
        let mut check = RawHealthcheck {
            pos: node.pos,
            test: None,
            interval: None,
            timeout: None,
            retries: None,
            start_period: None,
            start_interval: None,
            disable: None,
        };
        for (key, node, here) in entries {
            match key {
                HealthKey::Test => check.test = self.health_test(node, &here),
                HealthKey::Interval => check.interval = self.scalar_text(node, &here),
                HealthKey::Timeout => check.timeout = self.scalar_text(node, &here),
                HealthKey::Retries => check.retries = self.int(node, &here),
                HealthKey::StartPeriod => check.start_period = self.scalar_text(node, &here),
                HealthKey::StartInterval => check.start_interval = self.scalar_text(node, &here),
                HealthKey::Disable => check.disable = self.bool(node, &here),
            }
        }
        Some(check)
    }

    fn health_test(&mut self, node: &Node, here: &Here) -> Option<At<RawTest>> {
        let value = match &node.value {
            Value::Str(_) => RawTest::Shell(self.string(node, here)?.value),
            Value::Seq(_) => RawTest::List(
                self.string_list(node, here, true)
                    .into_iter()
                    .map(|word| word.value)
                    .collect(),
            ),
            _ => {
                self.wrong_type(
                    node,
                    here,
                    "a list such as [\"CMD\", \"pg_isready\"] or a string",
                );
                return None;
            }
        };
        Some(At {
            pos: node.pos,
            value,
        })
    }

    /// A VM's `networks:`, as a list of names or a mapping of names to settings.
    fn vm_networks(&mut self, node: &Node, here: &Here) -> Vec<RawVmNetwork> {
        let short = |name| RawVmNetwork {
            name,
            ipv4_address: None,
            aliases: Vec::new(),
        };
        if matches!(node.value, Value::Seq(_)) {
            return self
                .string_list(node, here, false)
                .into_iter()
                .map(short)
                .collect();
        }
        let mut out = Vec::new();
        for (name, node) in self.named_map(node, here) {
            let here = here.field(&name.name);
            let mut network = short(at(name));
            for (key, node, here) in self.optional_mapping(node, &here) {
                match key {
                    VmNetworkKey::Ipv4Address => network.ipv4_address = self.string(node, &here),
                    VmNetworkKey::Aliases => network.aliases = self.string_list(node, &here, false),
                }
            }
            out.push(network);
        }
        out
    }

    /// `disk: {size: …}`
    fn disk_size(&mut self, node: &Node, here: &Here) -> Option<At<SizeValue>> {
        if let Some(written) = scalar_spelling(node) {
            self.errors.push(
                node.pos,
                here,
                format!("expected a mapping; write the size as `disk: {{size: {written}}}`"),
            );
            return None;
        }
        let mut size = None;
        for (key, node, here) in self.mapping(node, here, false).unwrap_or_default() {
            match key {
                DiskKey::Size => size = self.size(node, &here),
            }
        }
        size
    }

    /// `ssh: {port: …}`
    fn ssh_port(&mut self, node: &Node, here: &Here) -> Option<At<i128>> {
        if let Some(written) = scalar_spelling(node) {
            self.errors.push(
                node.pos,
                here,
                format!("expected a mapping; write the port as `ssh: {{port: {written}}}`"),
            );
            return None;
        }
        let mut port = None;
        for (key, node, here) in self.mapping(node, here, false).unwrap_or_default() {
            match key {
                SshKey::Port => port = self.int(node, &here),
            }
        }
        port
    }

    fn environment(&mut self, node: &Node, here: &Here) -> Vec<(At<String>, At<String>)> {
        let mut out = Vec::new();
        match &node.value {
            Value::Map(entries) => {
                for (key, value) in entries {
                    let here = here.field(&key.name);
                    if let Some(v) = self.scalar_text(value, &here) {
                        out.push((at(key), v));
                    }
                }
            }
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    let here = here.index(i);
                    let Some(entry) = self.string(item, &here) else {
                        continue;
                    };
                    match entry.value.split_once('=') {
                        Some((k, v)) => out.push((
                            At {
                                pos: entry.pos,
                                value: k.to_owned(),
                            },
                            At {
                                pos: entry.pos,
                                value: v.to_owned(),
                            },
                        )),
                        None => self.errors.push(
                            entry.pos,
                            &here,
                            format!("expected KEY=VALUE, found {:?}", entry.value),
                        ),
                    }
                }
            }
            _ => self.wrong_type(
                node,
                here,
                "a mapping of names to values or a list of KEY=VALUE",
            ),
        }
        out
    }

    fn provision(&mut self, node: &Node, here: &Here) -> Vec<At<String>> {
        let mut out = Vec::new();
        for (i, item) in self.list(node, here).iter().enumerate() {
            let here = here.index(i);
            if let Value::Map(_) = item.value {
                let Some(entries) = self.mapping::<ProvisionKey>(item, &here, false) else {
                    continue;
                };
                let mut inline = None;
                for (key, node, here) in entries {
                    let Some(value) = self.string(node, &here) else {
                        continue;
                    };
                    match key {
                        ProvisionKey::Inline => inline = Some(value),
                        ProvisionKey::Type if value.value != "shell" => self.errors.push(
                            value.pos,
                            &here,
                            format!(
                                "unknown provisioner type {:?} (only \"shell\")",
                                value.value
                            ),
                        ),
                        ProvisionKey::Type => {}
                    }
                }
                match inline {
                    Some(v) => out.push(v),
                    None => {
                        self.errors
                            .push(item.pos, &here, "a shell provisioner needs `inline:`")
                    }
                }
            } else if let Some(v) = self.string(item, &here) {
                out.push(v);
            }
        }
        out
    }

    fn mounts(&mut self, node: &Node, here: &Here) -> Vec<RawMount> {
        let mut out = Vec::new();
        for (i, item) in self.list(node, here).iter().enumerate() {
            let here = here.index(i);
            if let Value::Map(_) = item.value {
                let Some(entries) = self.mapping::<MountKey>(item, &here, false) else {
                    continue;
                };
                let mut m = RawLongMount {
                    pos: item.pos,
                    source: None,
                    target: None,
                    read_only: None,
                    automount: None,
                    mount_options: None,
                    security_model: None,
                };
                for (key, node, here) in entries {
                    match key {
                        MountKey::Source => m.source = self.string(node, &here),
                        MountKey::Target => m.target = self.string(node, &here),
                        MountKey::ReadOnly => m.read_only = self.bool(node, &here),
                        MountKey::Automount => m.automount = self.bool(node, &here),
                        MountKey::MountOptions => m.mount_options = self.string(node, &here),
                        MountKey::SecurityModel => m.security_model = self.string(node, &here),
                    }
                }
                out.push(RawMount::Long(Box::new(m)));
            } else if let Some(v) = self.string(item, &here) {
                out.push(RawMount::Short(v));
            }
        }
        out
    }

    // ---- generic readers ----

    /// A mapping whose keys must be among `K` (or `x-*` when `extensions`); unknown keys
    /// are reported with the closest valid one. Returns only the known entries, each with its
    /// place.
    fn mapping<'n, K: Keys>(
        &mut self,
        node: &'n Node,
        here: &Here,
        extensions: bool,
    ) -> Option<Vec<(K, &'n Node, Here)>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(node, here, "a mapping");
            return None;
        };
        let mut known = Vec::new();
        for (key, value) in entries {
            if let Some(known_key) = K::from_name(&key.name) {
                known.push((known_key, value, here.field(&key.name)));
            } else if !(extensions && key.name.starts_with("x-")) {
                self.unknown_key(key, here, K::NAMES);
            }
        }
        Some(known)
    }

    /// Like [`Self::mapping`] with `x-*` allowed, but `null` (e.g. `pgdata:` with nothing
    /// after it) means "all defaults".
    fn optional_mapping<'n, K: Keys>(
        &mut self,
        node: &'n Node,
        here: &Here,
    ) -> Vec<(K, &'n Node, Here)> {
        if matches!(node.value, Value::Null) {
            return Vec::new();
        }
        self.mapping(node, here, true).unwrap_or_default()
    }

    /// A mapping from user-chosen names (VMs, volumes, networks) to definitions.
    fn named_map<'n>(&mut self, node: &'n Node, here: &Here) -> Vec<(&'n Key, &'n Node)> {
        match &node.value {
            Value::Map(entries) => entries.iter().map(|(k, v)| (k, v)).collect(),
            Value::Null => Vec::new(),
            _ => {
                self.wrong_type(node, here, "a mapping of names to definitions");
                Vec::new()
            }
        }
    }

    fn unknown_key(&mut self, key: &Key, here: &Here, allowed: &[&str]) {
        let best = allowed
            .iter()
            .map(|k| (strsim::normalized_damerau_levenshtein(k, &key.name), *k))
            .filter(|(score, _)| *score >= 0.5)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let hint = match best {
            Some((_, k)) => format!("did you mean {k:?}?"),
            None => format!("valid keys: {}", allowed.join(", ")),
        };
        self.errors.push(
            key.pos,
            &here.field(&key.name),
            format!("unknown key {:?} ({hint})", key.name),
        );
    }

    fn list<'n>(&mut self, node: &'n Node, here: &Here) -> &'n [Node] {
        match &node.value {
            Value::Seq(items) => items,
            Value::Null => &[],
            _ => {
                self.wrong_type(node, here, "a list");
                &[]
            }
        }
    }

    /// A list of strings; `scalars` also accepts numbers written without quotes.
    fn string_list(&mut self, node: &Node, here: &Here, scalars: bool) -> Vec<At<String>> {
        let mut out = Vec::new();
        for (i, item) in self.list(node, here).iter().enumerate() {
            let here = here.index(i);
            let value = if scalars {
                self.scalar_text(item, &here)
            } else {
                self.string(item, &here)
            };
            out.extend(value);
        }
        out
    }

    /// A string scalar, interpolated.
    fn string(&mut self, node: &Node, here: &Here) -> Option<At<String>> {
        match &node.value {
            Value::Str(s) => self.interpolated(s, node.pos, here),
            _ => {
                self.wrong_type(node, here, "a string");
                None
            }
        }
    }

    /// Any scalar as text (`PORT: 8080`, `DEBUG: true`), for environment values and ports.
    fn scalar_text(&mut self, node: &Node, here: &Here) -> Option<At<String>> {
        let text = match &node.value {
            Value::Str(s) => return self.interpolated(s, node.pos, here),
            Value::Int(_) | Value::Float(_) if node.spelling.is_some() => {
                node.spelling.clone().unwrap_or_default()
            }
            Value::Int(i) => i.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                self.wrong_type(node, here, "a string or number");
                return None;
            }
        };
        Some(At {
            pos: node.pos,
            value: text,
        })
    }

    fn interpolated(&mut self, s: &str, pos: Pos, here: &Here) -> Option<At<String>> {
        let mut unset = Vec::new();
        let expanded = interpolate(s, self.env, &mut unset);
        for name in unset {
            // Once per variable, as docker compose does.
            if !self
                .errors
                .warnings
                .iter()
                .any(|w| w.message.contains(&format!("\"{name}\"")))
            {
                self.errors.warn(
                    pos,
                    here,
                    format!("the \"{name}\" variable is not set; using an empty string"),
                );
            }
        }
        match expanded {
            Ok(value) => Some(At { pos, value }),
            Err(why) => {
                self.errors.push(pos, here, why);
                None
            }
        }
    }

    /// An integer, or a string that is one after interpolation (`cpu: ${CPUS:-2}`).
    fn int(&mut self, node: &Node, here: &Here) -> Option<At<i128>> {
        match &node.value {
            Value::Int(i) => Some(At {
                pos: node.pos,
                value: *i,
            }),
            Value::Str(s) => {
                let text = self.interpolated(s, node.pos, here)?;
                match text.value.trim().parse() {
                    Ok(value) => Some(At {
                        pos: node.pos,
                        value,
                    }),
                    Err(_) => {
                        self.errors.push(
                            node.pos,
                            here,
                            format!("expected a whole number, found {:?}", text.value),
                        );
                        None
                    }
                }
            }
            _ => {
                self.wrong_type(node, here, "a whole number");
                None
            }
        }
    }

    fn bool(&mut self, node: &Node, here: &Here) -> Option<At<bool>> {
        let value = match &node.value {
            Value::Bool(b) => *b,
            Value::Str(s) => {
                let text = self.interpolated(s, node.pos, here)?;
                match text.value.as_str() {
                    "true" => true,
                    "false" => false,
                    other => {
                        self.errors.push(
                            node.pos,
                            here,
                            format!("expected true or false, found {other:?}"),
                        );
                        return None;
                    }
                }
            }
            _ => {
                self.wrong_type(node, here, "true or false");
                return None;
            }
        };
        Some(At {
            pos: node.pos,
            value,
        })
    }

    fn size(&mut self, node: &Node, here: &Here) -> Option<At<SizeValue>> {
        let value = match &node.value {
            Value::Int(i) => SizeValue::Int(*i),
            Value::Str(s) => SizeValue::Text(self.interpolated(s, node.pos, here)?.value),
            Value::Float(f) => {
                let written = node.spelling.clone().unwrap_or_else(|| f.to_string());
                let why = if f.fract() == 0.0 {
                    "is too large"
                } else {
                    "is not a whole number (use a smaller unit, e.g. 1536M)"
                };
                self.errors
                    .push(node.pos, here, format!("size {written} {why}"));
                return None;
            }
            _ => {
                self.wrong_type(node, here, "a size such as 10G or a whole number");
                return None;
            }
        };
        Some(At {
            pos: node.pos,
            value,
        })
    }

    fn wrong_type(&mut self, node: &Node, here: &Here, expected: &str) {
        self.errors.push(
            node.pos,
            here,
            format!("expected {expected}, found {}", node.value.kind()),
        );
    }
}

/// A number or string as the user wrote it, for hints; `None` for anything else.
fn scalar_spelling(node: &Node) -> Option<String> {
    match &node.value {
        Value::Int(i) => Some(node.spelling.clone().unwrap_or_else(|| i.to_string())),
        Value::Float(f) => Some(node.spelling.clone().unwrap_or_else(|| f.to_string())),
        Value::Str(s) => Some(s.clone()),
        _ => None,
    }
}

fn at(key: &Key) -> At<String> {
    At {
        pos: key.pos,
        value: key.name.clone(),
    }
}
