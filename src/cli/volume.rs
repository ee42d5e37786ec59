//! `volume ls|create|inspect|import|export|rm`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use indicatif::HumanBytes;
use qemu_compose::compose::{self, Project};
use qemu_compose::engine::volume_export::{self, ExportSource, ExportTarget};
use qemu_compose::engine::volume_io::{self, ImportSource, ImportSummary};
use qemu_compose::engine::{Reporter, volumes};

use super::output::note;
use super::{
    GlobalArgs, StderrReporter, TableFormat, TextFormat, VolumeCommand, output, progress, project,
};

pub fn run(global: &GlobalArgs, cmd: &VolumeCommand) -> anyhow::Result<ExitCode> {
    let project = project::load(global)?;
    match cmd {
        VolumeCommand::Ls { format, quiet } => ls(global, &project, *format, *quiet),
        VolumeCommand::Create { name, size } => create(&project, name, size.as_deref()),
        VolumeCommand::Inspect { name, format } => inspect(&project, name, *format),
        VolumeCommand::Import {
            name,
            source,
            into,
            size,
        } => import(&project, name, source, into, size.as_deref()),
        VolumeCommand::Export { name, dest, from } => export(&project, name, dest, from),
        VolumeCommand::Rm { names, force } => rm(global, &project, names, *force),
    }
}

fn ls(
    global: &GlobalArgs,
    project: &Project,
    format: TableFormat,
    quiet: bool,
) -> anyhow::Result<ExitCode> {
    let host = project::host(global)?;
    let rows = volumes::list(project, &host)?;
    let mut out = output::stdout();
    if quiet {
        for r in &rows {
            writeln!(out, "{}", r.name)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    match format {
        TableFormat::Json => output::json(&mut out, &rows)?,
        TableFormat::Table => {
            let mut table =
                output::table(["NAME", "SIZE", "ON DISK", "IN USE BY", "CREATED", "STATUS"]);
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
                        .map(|bytes| HumanBytes(bytes).to_string())
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
        .filter(|r| r.status == "image-missing" || r.status == "not-registered")
    {
        StderrReporter.warn(&format!(
            "volume {}: {}",
            r.name,
            if r.status == "image-missing" {
                "recorded in volumes.json but its image is missing"
            } else {
                "its image exists but is not recorded in volumes.json (the next `up` verifies and records it)"
            }
        ));
    }
    Ok(ExitCode::SUCCESS)
}

/// `--size`, parsed as the compose file's sizes are.
fn size_arg(size: Option<&str>) -> anyhow::Result<Option<u64>> {
    Ok(match size {
        Some(text) => Some(
            compose::parse_size(text)
                .map_err(|e| super::UsageError(format!("invalid --size {text:?}: {e}")))?,
        ),
        None => None,
    })
}

fn create(project: &Project, name: &str, size: Option<&str>) -> anyhow::Result<ExitCode> {
    let size = size_arg(size)?;
    let mut progress = progress::for_stderr();
    volumes::create_recorded(project, name, size, &StderrReporter, progress.as_mut())?;
    writeln!(output::stdout(), "{name}")?;
    Ok(ExitCode::SUCCESS)
}

fn inspect(project: &Project, name: &str, format: TextFormat) -> anyhow::Result<ExitCode> {
    let v = volumes::inspect(project, name)?;
    let mut out = output::stdout();
    if matches!(format, TextFormat::Json) {
        output::json(&mut out, &v)?;
        return Ok(ExitCode::SUCCESS);
    }
    let fs = &v.filesystem;
    let used = |total: u64, free: u64| total.saturating_sub(free);
    writeln!(out, "Volume {name}")?;
    writeln!(out, "  image:     {}", v.image)?;
    writeln!(
        out,
        "  size:      {} ({} on disk)",
        HumanBytes(v.virtual_size),
        HumanBytes(v.disk_bytes)
    )?;
    if let Some(record) = &v.record {
        writeln!(out, "  created:   {}", record.created)?;
    }
    writeln!(
        out,
        "  in use by: {}",
        if v.in_use_by.is_empty() {
            "-".to_string()
        } else {
            v.in_use_by.join(", ")
        }
    )?;
    writeln!(out, "Filesystem (ext4)")?;
    writeln!(out, "  label:     {}", fs.label)?;
    writeln!(out, "  uuid:      {}", fs.uuid_text())?;
    writeln!(
        out,
        "  used:      {} of {} blocks of {} bytes, {} of {} inodes",
        used(fs.blocks, fs.free_blocks),
        fs.blocks,
        fs.block_size,
        used(u64::from(fs.inodes), u64::from(fs.free_inodes)),
        fs.inodes
    )?;
    writeln!(
        out,
        "  state:     {}{}",
        fs.state,
        if fs.checksum_valid {
            ""
        } else {
            " (superblock checksum wrong)"
        }
    )?;
    writeln!(out, "  features:  {}", fs.features.join(" "))?;
    Ok(ExitCode::SUCCESS)
}

fn import(
    project: &Project,
    name: &str,
    source: &Path,
    into: &str,
    size: Option<&str>,
) -> anyhow::Result<ExitCode> {
    let size = size_arg(size)?;
    let source = ImportSource::from_arg(source);
    let into = (into != "/").then_some(into);
    let s = volume_io::import(project, name, &source, into, size, &StderrReporter)?;
    note!("volume {name}: imported {}", output::tree_counts(&s));
    writeln!(output::stdout(), "{name}")?;
    Ok(ExitCode::SUCCESS)
}

fn export(project: &Project, name: &str, dest: &Path, from: &str) -> anyhow::Result<ExitCode> {
    let summary = export_to(project, ExportSource::Volume(name), dest, from, false)?;
    note!("volume {name}: exported {}", output::tree_counts(&summary));
    Ok(ExitCode::SUCCESS)
}

/// The files of `source` below `from` into `dest`: a tar archive on standard output (`-`), a
/// new `.tar` file (removed again if the export fails), or a host path: a folder they go
/// into, or with `cp_rules` `docker cp`'s rules (see [`ExportTarget::Path`]).
pub(super) fn export_to(
    project: &Project,
    source: ExportSource<'_>,
    dest: &Path,
    from: &str,
    cp_rules: bool,
) -> anyhow::Result<ImportSummary> {
    let from = (from != "/").then_some(from);
    let export = |target| volume_export::export(project, source, from, target, &StderrReporter);
    if dest == Path::new("-") {
        return Ok(export(ExportTarget::Tar(&mut output::stdout()))?);
    }
    if dest.extension().is_none_or(|e| e != "tar") {
        let target = if cp_rules {
            ExportTarget::Path(dest)
        } else {
            ExportTarget::Dir(dest)
        };
        return Ok(export(target)?);
    }
    let mut file = std::fs::File::create_new(dest)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", dest.display()))?;
    match export(ExportTarget::Tar(&mut file)) {
        Ok(summary) => {
            file.sync_all()?;
            Ok(summary)
        }
        Err(e) => {
            // The archive is ours and incomplete.
            let _ = std::fs::remove_file(dest);
            Err(e.into())
        }
    }
}

fn rm(
    global: &GlobalArgs,
    project: &Project,
    names: &[String],
    force: bool,
) -> anyhow::Result<ExitCode> {
    let host = project::host(global)?;
    let mut removal = volumes::Removal::begin(project, &host, names, force, &StderrReporter)?;
    let mut out = output::stdout();
    for name in names {
        removal.remove(name)?;
        writeln!(out, "{name}")?;
    }
    Ok(ExitCode::SUCCESS)
}
