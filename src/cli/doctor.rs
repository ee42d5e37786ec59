//! `doctor`: what this host can and cannot do for qemu-compose, and why.
//!
//! Each check prints one line, `ok`, `warn` or `FAIL`; a `FAIL` (what makes `up` fail) ends
//! with exit 1. The checks themselves are `engine::doctor`'s.

use std::io::Write;
use std::process::ExitCode;

use qemu_compose::engine::doctor::{self, Level};

use super::{DoctorArgs, GlobalArgs, TableFormat, output};

pub fn run(global: &GlobalArgs, args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let host = super::project::host(global)?;
    let project = super::project::optional(global)?;
    let checks = doctor::report(&host, project.as_ref());
    let failed = checks.iter().any(|c| c.level == Level::Fail);
    let mut out = output::stdout();
    if matches!(args.format, TableFormat::Json) {
        output::json(&mut out, &checks)?;
        return Ok(if failed {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    for c in &checks {
        let word = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        writeln!(out, "{word}  {:<13} {}", c.topic, c.text)?;
    }
    if project.is_none() {
        writeln!(out, "(no compose file here: project checks skipped)")?;
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
