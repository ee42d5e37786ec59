//! Phase 1: the located YAML tree -> strict raw types.
//!
//! Every mapping accepts exactly its documented keys (`deny_unknown_fields` semantics), plus
//! `x-*` extension keys at the top level and in each VM, volume and network. Unlike a derived
//! serde struct, this reader keeps going after a problem, so one run reports every unknown key
//! and every type mismatch. String scalars are interpolated here, where their position is
//! known; keys and ignored `x-*` sections are not.

use std::path::Path;

use super::error::ComposeError;
use super::interpolate::{Env, interpolate};
use super::tree::{Key, Node, Pos, Value};

/// A value and where it was written.
#[derive(Debug, Clone, PartialEq)]
pub struct At<T> {
    pub pos: Pos,
    pub value: T,
}

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
    pub kernel: Option<At<String>>,
    pub initrd: Option<At<String>>,
    pub cmdline: Option<At<String>>,
    pub depends_on: Vec<At<String>>,
    pub environment: Vec<(At<String>, At<String>)>,
    pub provision: Vec<At<String>>,
    pub networks: Vec<At<String>>,
    pub volumes: Vec<RawMount>,
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

const TOP_KEYS: &[&str] = &["name", "version", "volumes", "vms", "networks"];
const VOLUME_KEYS: &[&str] = &["size"];
const NETWORK_KEYS: &[&str] = &["driver", "subnet"];
const VM_KEYS: &[&str] = &[
    "image",
    "image_checksum",
    "cpu",
    "memory",
    "disk",
    "user",
    "ports",
    "ssh",
    "accel",
    "kernel",
    "initrd",
    "cmdline",
    "depends_on",
    "environment",
    "provision",
    "networks",
    "volumes",
];
const DISK_KEYS: &[&str] = &["size"];
const SSH_KEYS: &[&str] = &["port"];
const PROVISION_KEYS: &[&str] = &["type", "inline"];
const MOUNT_KEYS: &[&str] = &[
    "source",
    "target",
    "read_only",
    "automount",
    "mount_options",
    "security_model",
];

/// Where in the file we are: the VM (if any) and the field path, for error messages.
#[derive(Debug, Clone)]
pub struct Here {
    pub vm: Option<String>,
    pub path: String,
}

impl Here {
    pub fn root() -> Self {
        Here {
            vm: None,
            path: String::new(),
        }
    }
    pub fn field(&self, name: &str) -> Self {
        let path = if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        };
        Here {
            vm: self.vm.clone(),
            path,
        }
    }
    pub fn index(&self, i: usize) -> Self {
        Here {
            vm: self.vm.clone(),
            path: format!("{}[{i}]", self.path),
        }
    }
    fn vm(&self, name: &str) -> Self {
        Here {
            vm: Some(name.to_owned()),
            ..self.field(name)
        }
    }
}

/// Collects errors with their file; shared by the raw reader and the validator.
#[derive(Debug)]
pub struct Errors<'a> {
    pub file: &'a Path,
    pub list: Vec<ComposeError>,
}

impl Errors<'_> {
    pub fn push(&mut self, pos: Pos, here: &Here, message: impl Into<String>) {
        self.list.push(ComposeError {
            file: self.file.to_owned(),
            line: pos.line,
            column: pos.column,
            vm: here.vm.clone(),
            field: (!here.path.is_empty()).then(|| here.path.clone()),
            message: message.into(),
        });
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
        let Some(entries) = self.mapping(root, &here, TOP_KEYS, true) else {
            return raw;
        };
        let mut saw_vms = false;
        for (key, node) in entries {
            let here = here.field(&key.name);
            match key.name.as_str() {
                "name" => raw.name = self.string(node, &here),
                "version" => {}
                "volumes" => {
                    for (k, v) in self.named_map(node, &here) {
                        let here = here.field(&k.name);
                        let mut vol = RawVolume::default();
                        for (key, node) in self.optional_mapping(v, &here, VOLUME_KEYS) {
                            vol.size = self.size(node, &here.field(&key.name));
                        }
                        raw.volumes.push((at(k), vol));
                    }
                }
                "networks" => {
                    for (k, v) in self.named_map(node, &here) {
                        let here = here.field(&k.name);
                        let mut net = RawNetwork::default();
                        for (key, node) in self.optional_mapping(v, &here, NETWORK_KEYS) {
                            let value = self.string(node, &here.field(&key.name));
                            match key.name.as_str() {
                                "driver" => net.driver = value,
                                _ => net.subnet = value,
                            }
                        }
                        raw.networks.push((at(k), net));
                    }
                }
                _ => {
                    saw_vms = true;
                    // `vms:` with nothing under it (null or `{}`) is no better than no `vms:`.
                    if matches!(&node.value, Value::Null)
                        || matches!(&node.value, Value::Map(entries) if entries.is_empty())
                    {
                        self.errors
                            .push(node.pos, &here, "no VMs: define at least one VM");
                    }
                    for (k, v) in self.named_map(node, &here) {
                        let vm = self.vm(v, &here.vm(&k.name));
                        raw.vms.push((at(k), vm));
                    }
                }
            }
        }
        if !saw_vms {
            self.errors
                .push(root.pos, &here, "no `vms:` section: define at least one VM");
        }
        raw
    }

    fn vm(&mut self, node: &Node, here: &Here) -> RawVm {
        let mut vm = RawVm::default();
        let Some(entries) = self.mapping(node, here, VM_KEYS, true) else {
            return vm;
        };
        if !entries.iter().any(|(k, _)| k.name == "image") {
            self.errors.push(
                node.pos,
                here,
                "`image:` is required (a URL or a local path)",
            );
        }
        for (key, node) in entries {
            let here = here.field(&key.name);
            match key.name.as_str() {
                "image" => vm.image = self.string(node, &here),
                "image_checksum" => vm.image_checksum = self.string(node, &here),
                "cpu" => vm.cpu = self.int(node, &here),
                "memory" => vm.memory = self.size(node, &here),
                "disk" => {
                    if let Some(entries) = self.mapping(node, &here, DISK_KEYS, false) {
                        for (key, node) in entries {
                            vm.disk_size = self.size(node, &here.field(&key.name));
                        }
                    }
                }
                "user" => vm.user = self.string(node, &here),
                "ports" => vm.ports = self.string_list(node, &here, true),
                "ssh" => {
                    if let Some(entries) = self.mapping(node, &here, SSH_KEYS, false) {
                        for (key, node) in entries {
                            vm.ssh_port = self.int(node, &here.field(&key.name));
                        }
                    }
                }
                "accel" => vm.accel = self.string(node, &here),
                "kernel" => vm.kernel = self.string(node, &here),
                "initrd" => vm.initrd = self.string(node, &here),
                "cmdline" => vm.cmdline = self.string(node, &here),
                "depends_on" => vm.depends_on = self.string_list(node, &here, false),
                "environment" => vm.environment = self.environment(node, &here),
                "provision" => vm.provision = self.provision(node, &here),
                "networks" => vm.networks = self.string_list(node, &here, false),
                _ => vm.volumes = self.mounts(node, &here),
            }
        }
        vm
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
                let Some(entries) = self.mapping(item, &here, PROVISION_KEYS, false) else {
                    continue;
                };
                let mut inline = None;
                for (key, node) in entries {
                    let here = here.field(&key.name);
                    let Some(value) = self.string(node, &here) else {
                        continue;
                    };
                    if key.name == "inline" {
                        inline = Some(value);
                    } else if value.value != "shell" {
                        self.errors.push(
                            value.pos,
                            &here,
                            format!(
                                "unknown provisioner type {:?} (only \"shell\")",
                                value.value
                            ),
                        );
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
                let Some(entries) = self.mapping(item, &here, MOUNT_KEYS, false) else {
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
                for (key, node) in entries {
                    let here = here.field(&key.name);
                    match key.name.as_str() {
                        "source" => m.source = self.string(node, &here),
                        "target" => m.target = self.string(node, &here),
                        "read_only" => m.read_only = self.bool(node, &here),
                        "automount" => m.automount = self.bool(node, &here),
                        "mount_options" => m.mount_options = self.string(node, &here),
                        _ => m.security_model = self.string(node, &here),
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

    /// A mapping whose keys must be in `allowed` (or `x-*` when `extensions`); unknown keys
    /// are reported with the closest valid one. Returns only the known entries.
    fn mapping<'n>(
        &mut self,
        node: &'n Node,
        here: &Here,
        allowed: &[&str],
        extensions: bool,
    ) -> Option<Vec<(&'n Key, &'n Node)>> {
        let Value::Map(entries) = &node.value else {
            self.wrong_type(node, here, "a mapping");
            return None;
        };
        let mut known = Vec::new();
        for (key, value) in entries {
            if allowed.contains(&key.name.as_str()) {
                known.push((key, value));
            } else if !(extensions && key.name.starts_with("x-")) {
                self.unknown_key(key, here, allowed);
            }
        }
        Some(known)
    }

    /// Like [`Self::mapping`] with `x-*` allowed, but `null` (e.g. `pgdata:` with nothing
    /// after it) means "all defaults".
    fn optional_mapping<'n>(
        &mut self,
        node: &'n Node,
        here: &Here,
        allowed: &[&str],
    ) -> Vec<(&'n Key, &'n Node)> {
        if matches!(node.value, Value::Null) {
            return Vec::new();
        }
        self.mapping(node, here, allowed, true).unwrap_or_default()
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
        match interpolate(s, self.env) {
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

fn at(key: &Key) -> At<String> {
    At {
        pos: key.pos,
        value: key.name.clone(),
    }
}
