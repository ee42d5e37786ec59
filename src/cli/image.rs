//! `image ls` and `image rm`: the download cache, shared by all projects.
//!
//! The cache records the instance disks `up` made on each image (`<image>.users`); `rm`
//! refuses an image that one of them still names as its base. The project in this directory
//! (when there is one) also tells which of its VMs use an image, for `ls` and for disks made
//! before the cache kept that record.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use comfy_table::{Table, presets::NOTHING};
use indicatif::HumanBytes;
use qemu_compose::compose::{ImageSource, Project};
use qemu_compose::engine::HostEnv;
use qemu_compose::image::{Sha256Digest, overlay_base};
use qemu_compose::state::{InstancePaths, StateDir};

use super::output::note;
use super::{GlobalArgs, ImageCommand, output, project};

pub fn run(global: &GlobalArgs, cmd: &ImageCommand) -> anyhow::Result<ExitCode> {
    let host = project::host(global)?;
    let project = project::optional(global)?;
    match cmd {
        ImageCommand::Ls => ls(&host, project.as_ref()),
        ImageCommand::Rm { images, force } => rm(&host, project.as_ref(), images, *force),
    }
}

/// For each base image (canonical path), the project's VMs whose instance overlay is based
/// on it.
fn overlay_users(project: &Project, host: &HostEnv) -> BTreeMap<PathBuf, Vec<String>> {
    let state = StateDir::new(&project.dir);
    let mut users: BTreeMap<PathBuf, Vec<String>> = BTreeMap::new();
    for vm in &project.vms {
        let paths = InstancePaths::new(&state, &vm.name, host.runtime_dir.as_deref());
        if let Some(base) = overlay_base(&paths.disk) {
            users.entry(base).or_default().push(vm.name.clone());
        }
    }
    users
}

#[derive(Debug)]
struct Row {
    name: String,
    size: u64,
    url: Option<String>,
    /// VMs of this project whose instance disk is based on the image; `None` without a project.
    used_by: Option<Vec<String>>,
    /// VMs of this project whose `image:` URL is this file.
    configured_for: Option<Vec<String>>,
}

fn ls(host: &HostEnv, project: Option<&Project>) -> anyhow::Result<ExitCode> {
    let users = project.map(|p| overlay_users(p, host));
    let mut rows = Vec::new();
    for image in host.images.list()? {
        let canonical = image.path.canonicalize().unwrap_or(image.path.clone());
        rows.push(Row {
            used_by: users
                .as_ref()
                .map(|u| u.get(&canonical).cloned().unwrap_or_default()),
            configured_for: project.map(|p| {
                p.vms
                    .iter()
                    .filter(|vm| match &vm.image {
                        ImageSource::Url(url) => {
                            let checksum = vm
                                .image_checksum
                                .as_deref()
                                .and_then(|c| c.parse::<Sha256Digest>().ok());
                            host.images.find(url, checksum.as_ref()).as_ref() == Some(&image.path)
                        }
                        ImageSource::Path(_) => false,
                    })
                    .map(|vm| vm.name.clone())
                    .collect()
            }),
            url: image.meta.as_ref().map(|m| m.url.clone()),
            name: image.name,
            size: image.size,
        });
    }
    let mut table = Table::new();
    table
        .load_preset(NOTHING)
        .set_header(["NAME", "SIZE", "SOURCE", "USED BY"]);
    for r in &rows {
        let used = match (&r.used_by, &r.configured_for) {
            (Some(used), Some(configured)) => {
                let mut words: Vec<String> = used.clone();
                words.extend(
                    configured
                        .iter()
                        .filter(|vm| !used.contains(vm))
                        .map(|vm| format!("{vm} (not created)")),
                );
                if words.is_empty() {
                    "-".to_string()
                } else {
                    words.join(", ")
                }
            }
            _ => "unknown (no compose file)".to_string(),
        };
        table.add_row([
            r.name.clone(),
            HumanBytes(r.size).to_string(),
            r.url.clone().unwrap_or_else(|| "-".to_string()),
            used,
        ]);
    }
    if rows.is_empty() {
        note!("no images in {}", host.images.dir().display());
    } else {
        writeln!(output::stdout(), "{}", table.trim_fmt())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn rm(
    host: &HostEnv,
    project: Option<&Project>,
    names: &[String],
    force: bool,
) -> anyhow::Result<ExitCode> {
    let users = project.map(|p| overlay_users(p, host)).unwrap_or_default();
    let mut out = output::stdout();
    for name in names {
        let path = host.images.dir().join(name);
        let canonical = path.canonicalize().unwrap_or(path.clone());
        if let Some(vms) = users.get(&canonical)
            && !force
        {
            bail!(
                "image {name} is the base of the instance disk of VM(s) {}; `qemu-compose destroy {}` first, or use --force (those VMs will not start again)",
                vms.join(", "),
                vms.join(" ")
            );
        }
        host.images.remove(name, force)?;
        writeln!(out, "{name}")?;
    }
    Ok(ExitCode::SUCCESS)
}
