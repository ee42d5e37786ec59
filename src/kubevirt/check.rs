//! What a compose project says that a cluster cannot do: every such field, located, before
//! anything is written or created.

use std::collections::BTreeMap;

use crate::compose::{
    Accel, BindExport, ComposeError, ComposeErrors, ImageSource, MountKind, Project, Subnet, Vm,
};

use super::names;

/// Every field of `project` that `export kubevirt` cannot translate, each with its file,
/// line and column; `Ok` when there is none.
pub fn check(project: &Project) -> Result<(), ComposeErrors> {
    let mut errors = Vec::new();
    let at =
        |vm: Option<&str>, field: &str, message: String| project.places.error(vm, field, message);
    if !names::is_label_value(&project.name) {
        errors.push(at(
            None,
            "name",
            format!(
                "project name {:?} cannot be a Kubernetes label value (at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit)",
                project.name
            ),
        ));
    }
    for network in &project.networks {
        if let Subnet::Cidr { .. } = network.subnet {
            errors.push(at(
                None,
                &format!("networks.{}.subnet", network.name),
                "a fixed subnet has no KubeVirt equivalent: pod addresses come from the cluster"
                    .into(),
            ));
        }
    }
    for decl in &project.volumes {
        if !names::is_volume_name(&decl.name) {
            errors.push(at(
                None,
                &format!("volumes.{}", decl.name),
                names::not_a_name("volume", &decl.name),
            ));
        }
    }
    for vm in &project.vms {
        vm_errors(project, vm, &mut errors);
    }
    shared_volumes(project, &mut errors);
    duplicate_names(project, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        errors.sort_by_key(|e| (e.file.clone(), e.line, e.column));
        Err(ComposeErrors(errors))
    }
}

/// The refusals of one VM.
fn vm_errors(project: &Project, vm: &Vm, errors: &mut Vec<ComposeError>) {
    let here = format!("vms.{}", vm.name);
    let mut push = |field: &str, message: String| {
        let path = if field.is_empty() {
            here.clone()
        } else {
            format!("{here}.{field}")
        };
        errors.push(project.places.error(Some(&vm.name), &path, message));
    };
    if !names::is_service_name(&vm.name) || vm.name.len() > names::MAX_VM_NAME {
        push(
            "",
            format!(
                "VM name {:?} cannot name a Kubernetes Service and its objects (a lowercase letter, then lowercase letters, digits or '-', at most {} characters, not ending with '-')",
                vm.name,
                names::MAX_VM_NAME
            ),
        );
    }
    if let ImageSource::Path(path) = &vm.image
        && !path.is_file()
    {
        push(
            "image",
            format!(
                "{} is not a file: the upload command would have nothing to send",
                path.display()
            ),
        );
    }
    for (target, rule) in &vm.kubevirt_binds {
        if let BindExport::Volume { name, .. } = rule
            && !names::is_volume_name(name)
        {
            push(
                &format!("x-kubevirt.bind_mounts.{target}.volume"),
                names::not_a_name("volume", name),
            );
        }
    }
    let direct_boot = "KubeVirt boots a kernel directly only from a container image (kernelBoot.container), not from a file";
    if vm.kernel.is_some() {
        push("kernel", format!("direct kernel boot: {direct_boot}"));
    }
    if vm.initrd.is_some() {
        push("initrd", format!("direct kernel boot: {direct_boot}"));
    }
    if vm.cmdline.is_some() {
        push(
            "cmdline",
            "a kernel command line goes with direct kernel boot, which KubeVirt does only from a container image".into(),
        );
    }
    if vm.firmware.is_some() {
        push(
            "firmware",
            "a UEFI code file on the host has no KubeVirt equivalent: KubeVirt boots the firmware its virt-launcher image carries (domain.firmware.bootloader chooses BIOS or EFI, not a file)".into(),
        );
    }
    for (i, port) in vm.ports.iter().enumerate() {
        if let Some(ip) = port.host_ip.filter(|ip| !ip.is_unspecified()) {
            push(
                &format!("ports[{i}]"),
                format!(
                    "host_ip {ip}: a Service has no host address to bind to; it is reached in the cluster (or through `kubectl port-forward`); leave the address out, or write 0.0.0.0"
                ),
            );
        }
    }
    let start_interval = format!("{here}.healthcheck.start_interval");
    if vm.healthcheck.is_some() && project.places.is_written(&start_interval) {
        push(
            "healthcheck.start_interval",
            "a probe has one period, and KubeVirt VMs have no startupProbe to run at another during the start period".into(),
        );
    }
    if vm.accel == Accel::Tcg {
        push(
            "accel",
            "KubeVirt chooses software emulation for the whole cluster (useEmulation), not per VM"
                .into(),
        );
    }
    for network in &vm.networks {
        if network.ipv4_address.is_some() {
            push(
                &format!("networks.{}.ipv4_address", network.name),
                "a fixed address has no KubeVirt equivalent: pod addresses come from the cluster"
                    .into(),
            );
        }
        for (i, alias) in network.aliases.iter().enumerate() {
            if !names::is_service_name(alias) {
                push(
                    &format!("networks.{}.aliases[{i}]", network.name),
                    format!(
                        "alias {alias:?} cannot name a Kubernetes Service (a lowercase letter, then lowercase letters, digits or '-', at most 63, not ending with '-')"
                    ),
                );
            }
        }
    }
    for (i, mount) in vm.volumes.iter().enumerate() {
        let MountKind::Bind { source, .. } = &mount.kind else {
            continue;
        };
        match vm.kubevirt_binds.get(&mount.target) {
            None => push(
                &format!("volumes[{i}]"),
                format!(
                    "bind mount {mount}: a cluster has no host files to share; say what to do with it in `x-kubevirt: {{bind_mounts: {{{}: skip}}}}`, or `{{volume: NAME}}` for a folder (docs/kubevirt.md)",
                    mount.target
                ),
            ),
            Some(BindExport::Skip) => {}
            Some(BindExport::Volume { .. }) => {
                if !source.is_dir() {
                    push(
                        &format!("x-kubevirt.bind_mounts.{}", mount.target),
                        format!(
                            "only a folder can become a volume; {} is not one",
                            source.display()
                        ),
                    );
                }
            }
        }
    }
}

/// A DataVolume is ReadWriteOnce: one VM at a time, where locally VMs that only read may
/// share a volume.
fn shared_volumes(project: &Project, errors: &mut Vec<ComposeError>) {
    let mut users: BTreeMap<&str, &str> = BTreeMap::new();
    for vm in &project.vms {
        for (i, volume, _) in cluster_volumes(vm) {
            match users.get(volume) {
                Some(first) if *first != vm.name => errors.push(project.places.error(
                    Some(&vm.name),
                    &format!("vms.{}.volumes[{i}]", vm.name),
                    format!(
                        "volume {volume} is also attached to VM {first}: a cluster volume is attached to one VM at a time (ReadWriteOnce)"
                    ),
                )),
                _ => {
                    users.insert(volume, &vm.name);
                }
            }
        }
    }
}

/// The named volumes a VM has in the cluster (its own, and those its bind mounts become),
/// each with its index in `volumes:` and whether it is mounted read-only.
pub(super) fn cluster_volumes(vm: &Vm) -> Vec<(usize, &str, bool)> {
    vm.volumes
        .iter()
        .enumerate()
        .filter_map(|(i, m)| match &m.kind {
            MountKind::Named { volume } => Some((i, volume.as_str(), m.read_only)),
            MountKind::Bind { .. } => match vm.kubevirt_binds.get(&m.target) {
                Some(BindExport::Volume { name, .. }) => Some((i, name.as_str(), m.read_only)),
                _ => None,
            },
        })
        .collect()
}

/// Two objects of one kind with one name: the second overwrites the first in the cluster.
fn duplicate_names(project: &Project, errors: &mut Vec<ComposeError>) {
    let mut seen: BTreeMap<(&str, String), String> = BTreeMap::new();
    let mut claim = |kind: &'static str, name: String, field: String, vm: Option<&str>| {
        if let Some(first) = seen.get(&(kind, name.clone())) {
            errors.push(project.places.error(
                vm,
                &field,
                format!("the {kind} {name} would be made twice (also for {first})"),
            ));
        } else {
            seen.insert((kind, name), field);
        }
    };
    for decl in &project.volumes {
        claim(
            "DataVolume",
            decl.name.clone(),
            format!("volumes.{}", decl.name),
            None,
        );
    }
    for vm in &project.vms {
        let here = format!("vms.{}", vm.name);
        let vm_name = Some(vm.name.as_str());
        claim(
            "DataVolume",
            names::root_disk(&vm.name),
            here.clone(),
            vm_name,
        );
        for (target, rule) in &vm.kubevirt_binds {
            if let BindExport::Volume { name, .. } = rule {
                let field = format!("{here}.x-kubevirt.bind_mounts.{target}.volume");
                claim("DataVolume", name.clone(), field, vm_name);
            }
        }
        claim("Service", vm.name.clone(), here.clone(), vm_name);
        claim(
            "Service",
            names::ports_service(&vm.name),
            here.clone(),
            vm_name,
        );
        for network in &vm.networks {
            for (i, alias) in network.aliases.iter().enumerate() {
                let field = format!("{here}.networks.{}.aliases[{i}]", network.name);
                claim("Service", alias.clone(), field, vm_name);
            }
        }
    }
}
