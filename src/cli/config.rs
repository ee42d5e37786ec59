//! `config`: validate the compose file and print the resolved model.

use std::process::ExitCode;

use super::{ConfigArgs, GlobalArgs, ModelFormat, project};

pub fn run(global: &GlobalArgs, args: &ConfigArgs) -> anyhow::Result<ExitCode> {
    let project = project::load(global)?;
    if args.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let text = match args.format {
        ModelFormat::Yaml => serde_saphyr::to_string(&project)?,
        ModelFormat::Json => serde_json::to_string_pretty(&project)? + "\n",
    };
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}
