//! `ps`: the project's VMs, their status and resources, in compose order.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use indicatif::HumanBytes;
use qemu_compose::engine::instance::{self, BaseChange};
use qemu_compose::engine::{inspect, lifecycle};
use serde::Serialize;

use super::output::note;
use super::{GlobalArgs, PsArgs, TableFormat, output, project};

pub fn run(global: &GlobalArgs, args: &PsArgs) -> anyhow::Result<ExitCode> {
    let project = project::load_naming(global, &args.vms)?;
    let vms = project::selected(&project, &args.vms)?;
    let mut out = output::stdout();
    if args.quiet {
        for vm in &vms {
            writeln!(out, "{}", vm.name)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let host = project::host(global)?;
    let orphans = lifecycle::orphans(&project, &host)?;
    if !orphans.is_empty() {
        note!("warning: {}", lifecycle::orphan_warning(&orphans));
    }
    let started = Instant::now();
    let rows = inspect::summaries(&project, &host, &vms);
    if global.debug {
        note!("status probes took {} ms", started.elapsed().as_millis());
    }
    let changes: Vec<Option<BaseChange>> = vms
        .iter()
        .map(|vm| instance::current_base_change(&project, &host, vm))
        .collect();
    match args.format {
        TableFormat::Json => {
            /// A `ps` line plus whether the VM's base is no longer the one the compose file
            /// names.
            #[derive(Serialize)]
            struct Line<'a> {
                #[serde(flatten)]
                summary: &'a inspect::VmSummary,
                base_changed: &'a Option<BaseChange>,
            }
            let lines: Vec<Line> = rows
                .iter()
                .zip(&changes)
                .map(|(summary, base_changed)| Line {
                    summary,
                    base_changed,
                })
                .collect();
            output::json(&mut out, &lines)?;
        }
        TableFormat::Table => {
            let with_networks = rows.iter().any(|r| !r.networks.is_empty());
            let mut header = vec!["NAME", "STATUS", "SSH", "PORTS", "CPU", "MEMORY", "DISK"];
            if with_networks {
                header.push("NETWORKS");
            }
            let mut table = output::table(header);
            for r in &rows {
                let status = match &r.reason {
                    Some(reason) => format!("{} ({reason})", r.status),
                    None => r.status.to_string(),
                };
                let disk = r.disk.map_or_else(
                    || "-".to_string(),
                    |d| {
                        format!(
                            "{} ({} used)",
                            HumanBytes(d.virtual_size),
                            HumanBytes(d.bytes_used)
                        )
                    },
                );
                let mut row = vec![
                    r.name.clone(),
                    status,
                    r.ssh.clone().unwrap_or_else(|| "-".to_string()),
                    if r.ports.is_empty() {
                        "-".to_string()
                    } else {
                        r.ports.join(", ")
                    },
                    r.cpu.to_string(),
                    HumanBytes(r.memory_mib.saturating_mul(1 << 20)).to_string(),
                    disk,
                ];
                if with_networks {
                    row.push(if r.networks.is_empty() {
                        "-".to_string()
                    } else {
                        r.networks.join(", ")
                    });
                }
                table.add_row(row);
            }
            writeln!(out, "{}", table.trim_fmt())?;
            if with_networks {
                let switch = if inspect::switch_running(&project)? {
                    "running"
                } else {
                    "not running"
                };
                writeln!(out, "network switch: {switch}")?;
            }
        }
    }
    for (vm, change) in vms.iter().zip(&changes) {
        if let Some(change) = change {
            note!("warning: {}", change.warning(&vm.name));
        }
    }
    Ok(ExitCode::SUCCESS)
}
