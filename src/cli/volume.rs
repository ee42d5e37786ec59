//! `volume ls|create|inspect|rm`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::ExitCode;

use anyhow::bail;
use comfy_table::{Table, presets::NOTHING};
use qemu_compose::compose::{self, MountKind, Project};
use qemu_compose::engine::{self, volumes};
use qemu_compose::state::{ProjectLock, StateDir, VolumeRegistry};
use serde::Serialize;

use super::{GlobalArgs, StderrReporter, TableFormat, VolumeCommand, output, project};
use qemu_compose::engine::Reporter;

pub fn run(global: &GlobalArgs, cmd: &VolumeCommand) -> anyhow::Result<ExitCode> {
    let project = project::load(global)?;
    let state = StateDir::new(&project.dir);
    match cmd {
        VolumeCommand::Ls { format } => ls(global, &project, &state, *format),
        VolumeCommand::Create { name, size } => create(&project, &state, name, size.as_deref()),
        VolumeCommand::Inspect { name } => inspect(&project, &state, name),
        VolumeCommand::Rm { names, force } => rm(global, &project, &state, names, *force),
    }
}

/// The VMs of the compose file that mount each volume.
fn users(project: &Project) -> BTreeMap<&str, Vec<&str>> {
    let mut out: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for vm in &project.vms {
        for mount in &vm.volumes {
            if let MountKind::Named { volume } = &mount.kind {
                out.entry(volume).or_default().push(&vm.name);
            }
        }
    }
    out
}

#[derive(Debug, Serialize)]
struct Row {
    name: String,
    /// `ok`, `not created`, `image missing` or `not registered`.
    status: &'static str,
    size: Option<String>,
    disk_bytes: Option<u64>,
    in_use_by: Vec<String>,
    running_in: Vec<String>,
    created: Option<String>,
}

fn rows(global: &GlobalArgs, project: &Project, state: &StateDir) -> anyhow::Result<Vec<Row>> {
    let registry = VolumeRegistry::load(&state.volumes_json())?;
    let host = project::host(global)?;
    let running = engine::running_vms(project, &host);
    let users = users(project);
    let mut names: BTreeSet<String> = registry.volumes.keys().cloned().collect();
    names.extend(project.volumes.iter().map(|v| v.name.clone()));
    if let Ok(entries) = std::fs::read_dir(state.volumes_dir()) {
        names.extend(
            entries
                .flatten()
                .filter(|e| e.path().join("volume.qcow2").exists())
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| compose::is_valid_name(n)),
        );
    }
    let mut rows = Vec::new();
    for name in names {
        let image = state.volume_image(&name);
        let record = registry.volumes.get(&name);
        let facts = image
            .exists()
            .then(|| volumes::inspect_image(&name, &image).ok())
            .flatten();
        let status = match (record, image.exists()) {
            (Some(_), true) => "ok",
            (Some(_), false) => "image missing",
            (None, true) => "not registered",
            (None, false) => "not created",
        };
        let vm_users: Vec<String> = users
            .get(name.as_str())
            .map(|v| v.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default();
        rows.push(Row {
            status,
            size: facts
                .as_ref()
                .map(|f| compose::format_size(f.virtual_size))
                .or_else(|| record.map(|r| r.size.clone())),
            disk_bytes: facts.as_ref().map(|f| f.disk_bytes),
            running_in: vm_users
                .iter()
                .filter(|vm| running.contains(*vm))
                .cloned()
                .collect(),
            in_use_by: vm_users,
            created: record.map(|r| r.created.clone()),
            name,
        });
    }
    Ok(rows)
}

fn ls(
    global: &GlobalArgs,
    project: &Project,
    state: &StateDir,
    format: TableFormat,
) -> anyhow::Result<ExitCode> {
    let rows = rows(global, project, state)?;
    let mut out = output::stdout();
    match format {
        TableFormat::Json => output::json(&mut out, &rows)?,
        TableFormat::Table => {
            let mut table = Table::new();
            table.load_preset(NOTHING).set_header([
                "NAME",
                "SIZE",
                "ON DISK",
                "IN USE BY",
                "CREATED",
                "STATUS",
            ]);
            for r in &rows {
                let users = r
                    .in_use_by
                    .iter()
                    .map(|vm| {
                        if r.running_in.contains(vm) {
                            format!("{vm} (running)")
                        } else {
                            vm.clone()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(", ");
                table.add_row([
                    r.name.clone(),
                    r.size.clone().unwrap_or_else(|| "-".into()),
                    r.disk_bytes
                        .map(|bytes| indicatif::HumanBytes(bytes).to_string())
                        .unwrap_or_else(|| "-".into()),
                    if users.is_empty() { "-".into() } else { users },
                    r.created.clone().unwrap_or_else(|| "-".into()),
                    r.status.to_string(),
                ]);
            }
            writeln!(out, "{}", table.trim_fmt())?;
        }
    }
    for r in rows
        .iter()
        .filter(|r| r.status == "image missing" || r.status == "not registered")
    {
        StderrReporter.warn(&format!(
            "volume {}: {}",
            r.name,
            if r.status == "image missing" {
                "recorded in volumes.json but its image is missing"
            } else {
                "its image exists but is not recorded in volumes.json (the next `up` verifies and records it)"
            }
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// Takes the project lock, then removes the temporary files an interrupted command left.
fn lock(state: &StateDir) -> anyhow::Result<ProjectLock> {
    let guard = ProjectLock::acquire(state, || {
        StderrReporter.info("waiting for another qemu-compose command on this project to finish")
    })?;
    qemu_compose::state::atomic::sweep_temporaries(state.root())?;
    Ok(guard)
}

fn create(
    project: &Project,
    state: &StateDir,
    name: &str,
    size: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let declared = project.volumes.iter().find(|v| v.name == name);
    let size = match size {
        Some(text) => compose::parse_size(text)
            .map_err(|e| super::UsageError(format!("invalid --size {text:?}: {e}")))?,
        None => declared.map_or(compose::DEFAULT_SIZE, |d| d.size_bytes),
    };
    let _guard = lock(state)?;
    let mut registry = VolumeRegistry::load(&state.volumes_json())?;
    if registry.volumes.contains_key(name) {
        bail!("volume {name} already exists");
    }
    let record = volumes::create(state, name, size)?;
    registry.volumes.insert(name.to_string(), record);
    registry.save(&state.volumes_json())?;
    writeln!(output::stdout(), "{name}")?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Serialize)]
struct Inspect<'a> {
    record: Option<&'a qemu_compose::state::VolumeRecord>,
    image: String,
    virtual_size: u64,
    disk_bytes: u64,
    filesystem: Filesystem,
    in_use_by: Vec<&'a str>,
}

#[derive(Debug, Serialize)]
struct Filesystem {
    label: String,
    uuid: String,
    block_size: u64,
    blocks: u64,
    free_blocks: u64,
    inodes: u32,
    free_inodes: u32,
    features: Vec<String>,
    state: String,
    checksum_valid: bool,
}

fn inspect(project: &Project, state: &StateDir, name: &str) -> anyhow::Result<ExitCode> {
    let registry = VolumeRegistry::load(&state.volumes_json())?;
    let image = state.volume_image(name);
    let record = registry.volumes.get(name);
    if record.is_none() && !image.exists() {
        bail!("no volume named {name:?}");
    }
    let facts = volumes::inspect_image(name, &image)?;
    let sb = facts.superblock;
    let users = users(project);
    let out = Inspect {
        record,
        image: image.display().to_string(),
        virtual_size: facts.virtual_size,
        disk_bytes: facts.disk_bytes,
        filesystem: Filesystem {
            label: sb.label,
            uuid: uuid::Uuid::from_bytes(sb.uuid).hyphenated().to_string(),
            block_size: sb.block_size,
            blocks: sb.blocks,
            free_blocks: sb.free_blocks,
            inodes: sb.inodes,
            free_inodes: sb.free_inodes,
            features: sb.features,
            state: sb.state,
            checksum_valid: sb.checksum_valid,
        },
        in_use_by: users.get(name).cloned().unwrap_or_default(),
    };
    output::json(&mut output::stdout(), &out)?;
    Ok(ExitCode::SUCCESS)
}

fn rm(
    global: &GlobalArgs,
    project: &Project,
    state: &StateDir,
    names: &[String],
    force: bool,
) -> anyhow::Result<ExitCode> {
    let host = project::host(global)?;
    let users = users(project);
    let _guard = lock(state)?;
    let running = engine::running_vms(project, &host);
    let mut registry = VolumeRegistry::load(&state.volumes_json())?;
    // Every name is checked before anything is removed.
    for name in names {
        let vm_users = users.get(name.as_str()).cloned().unwrap_or_default();
        if let Some(vm) = vm_users.iter().find(|vm| running.contains(**vm)) {
            bail!("volume {name} is in use by the running VM {vm}; stop it first");
        }
        if !registry.volumes.contains_key(name) && !state.volume_image(name).exists() {
            bail!("no volume named {name:?}");
        }
        // Any QEMU, whether or not the compose file still names its VM.
        volumes::check_not_in_use(state, name)?;
        if !vm_users.is_empty() && !force {
            bail!(
                "volume {name} is mounted by VM(s) {} of the compose file; the next `up` would create it empty. Use --force to remove it anyway",
                vm_users.join(", ")
            );
        }
    }
    let mut out = output::stdout();
    for name in names {
        volumes::remove(state, &mut registry, name)?;
        writeln!(out, "{name}")?;
    }
    Ok(ExitCode::SUCCESS)
}
