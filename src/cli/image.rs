//! `image ls` and `image rm`: the download cache, shared by all projects.
//!
//! The cache records the instance disks `up` made on each image (`<image>.users`); `rm`
//! refuses an image that one of them still names as its base. The project in this directory
//! (when there is one) also tells which of its VMs use an image, for `ls` and for disks made
//! before the cache kept that record.

use std::io::Write;
use std::process::ExitCode;

use indicatif::HumanBytes;
use qemu_compose::compose::Project;
use qemu_compose::engine::{HostEnv, images};

use super::output::note;
use super::{GlobalArgs, ImageCommand, TableFormat, output, project};

pub fn run(global: &GlobalArgs, cmd: &ImageCommand) -> anyhow::Result<ExitCode> {
    let host = project::host(global)?;
    let project = project::optional(global)?;
    match cmd {
        ImageCommand::Ls { quiet, format } => ls(&host, project.as_ref(), *quiet, *format),
        ImageCommand::Rm { images, force } => rm(&host, project.as_ref(), images, *force),
    }
}

fn ls(
    host: &HostEnv,
    project: Option<&Project>,
    quiet: bool,
    format: TableFormat,
) -> anyhow::Result<ExitCode> {
    let rows = images::list(host, project)?;
    let mut out = output::stdout();
    if quiet {
        for r in &rows {
            writeln!(out, "{}", r.name)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if matches!(format, TableFormat::Json) {
        output::json(&mut out, &rows)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = output::table(["NAME", "SIZE", "SOURCE", "USED BY"]);
    for r in &rows {
        let used = match (&r.used_by, &r.configured_for) {
            (Some(used), Some(configured)) => {
                let mut words: Vec<String> = used.clone();
                words.extend(
                    configured
                        .iter()
                        .filter(|vm| !used.contains(vm))
                        .map(|vm| format!("{vm} (not-created)")),
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
        note!("no images in {}", images::cache_dir(host).display());
    } else {
        writeln!(out, "{}", table.trim_fmt())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn rm(
    host: &HostEnv,
    project: Option<&Project>,
    names: &[String],
    force: bool,
) -> anyhow::Result<ExitCode> {
    let removal = images::ImageRemoval::new(host, project, force);
    let mut out = output::stdout();
    for name in names {
        removal.remove(name)?;
        writeln!(out, "{name}")?;
    }
    Ok(ExitCode::SUCCESS)
}
