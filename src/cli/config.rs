//! `config`: validate the compose file and print the resolved model.

use std::io::Write;
use std::process::ExitCode;

use super::{ConfigArgs, GlobalArgs, ModelFormat, output, project};

pub fn run(global: &GlobalArgs, args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let project = project::load(global)?;
    if args.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = output::stdout();
    if args.services {
        for vm in &project.vms {
            writeln!(out, "{}", vm.name)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if args.volumes {
        for volume in &project.volumes {
            writeln!(out, "{}", volume.name)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    match args.format {
        ModelFormat::Yaml => out.write_all(serde_saphyr::to_string(&project)?.as_bytes())?,
        ModelFormat::Json => output::json(&mut out, &project)?,
    }
    Ok(ExitCode::SUCCESS)
}
