//! `config`: validate the compose files and print them merged and normalised, as a compose
//! file that `-f` takes back.

use std::io::Write;
use std::process::ExitCode;

use qemu_compose::compose::compose_file;
use serde::Serialize;

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
    if args.model {
        print(&mut out, args.format, &project)?;
    } else {
        print(&mut out, args.format, &compose_file(&project))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print(out: &mut impl Write, format: ModelFormat, value: &impl Serialize) -> anyhow::Result<()> {
    match format {
        ModelFormat::Yaml => out.write_all(serde_saphyr::to_string(value)?.as_bytes())?,
        ModelFormat::Json => output::json(out, value)?,
    }
    Ok(())
}
