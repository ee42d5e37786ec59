//! `cp SRC DEST`: files out of a named volume, or out of a stopped VM by a path in it (on a
//! named volume it mounts, or on its own root disk), into a host folder or a tar archive (a
//! `.tar` file, or `-` for standard output), as `volume export` writes them; or a host file or
//! folder (or a tar archive on standard input, `-`) into a volume, as `docker cp` places them.

use std::path::Path;
use std::process::ExitCode;

use qemu_compose::engine::volume_export::{self, ExportSource, VmPlace};
use qemu_compose::engine::volume_update;

use super::output::note;
use super::{CpArgs, GlobalArgs, StderrReporter, UsageError, output, project};

/// One side of `cp`.
#[derive(Debug, PartialEq, Eq)]
enum Place<'a> {
    /// `volume:NAME:/path`
    Volume(&'a str, &'a str),
    /// `VM:/path`
    Vm(&'a str, &'a str),
    /// A host path, or `-`.
    Host(&'a str),
}

/// `volume:NAME:/path` names a volume; `NAME:/path` (a name without `/` before the first
/// `:`) a VM; anything else is a host path.
fn place(arg: &str) -> Place<'_> {
    if let Some(rest) = arg.strip_prefix("volume:")
        && let Some((name, path)) = rest.split_once(':')
    {
        return Place::Volume(name, path);
    }
    match arg.split_once(':') {
        Some((vm, path)) if !vm.is_empty() && !vm.contains('/') && !vm.starts_with('.') => {
            Place::Vm(vm, path)
        }
        _ => Place::Host(arg),
    }
}

pub fn run(global: &GlobalArgs, args: &CpArgs) -> anyhow::Result<ExitCode> {
    let project = project::load(global)?;
    if let Place::Host(src) = place(&args.src) {
        let (volume, path) = match place(&args.dest) {
            Place::Volume(name, path) => (name.to_string(), path.to_string()),
            Place::Vm(vm, path) => {
                match volume_export::vm_path(&project, &project::host(global)?, vm, path)? {
                    VmPlace::Volume(name, path) => (name, path),
                    VmPlace::RootDisk(_) => anyhow::bail!(
                        "{vm}:{path} is on the VM's own disk; cp writes into its named volumes only (writing into a VM's own disk is not implemented)"
                    ),
                }
            }
            Place::Host(_) => return Err(both_sides_error()),
        };
        let summary =
            volume_update::copy_in(&project, &volume, Path::new(src), &path, &StderrReporter)?;
        note!(
            "copied {} into volume {volume}",
            output::tree_counts(&summary)
        );
        return Ok(ExitCode::SUCCESS);
    }
    // Set in the arm that reads a VM, and borrowed by what it returns.
    let (host, volume);
    let (source, path, what) = match (place(&args.src), place(&args.dest)) {
        (Place::Volume(name, path), Place::Host(_)) => (
            ExportSource::Volume(name),
            path.to_string(),
            format!("volume {name}"),
        ),
        (Place::Vm(vm, path), Place::Host(_)) => {
            host = project::host(global)?;
            match volume_export::vm_path(&project, &host, vm, path)? {
                VmPlace::Volume(name, path) => {
                    volume = name;
                    let what = format!("volume {volume}");
                    (ExportSource::Volume(&volume), path, what)
                }
                VmPlace::RootDisk(path) => (
                    ExportSource::RootDisk { vm, host: &host },
                    path,
                    format!("the disk of VM {vm}"),
                ),
            }
        }
        _ => return Err(both_sides_error()),
    };
    let summary = super::volume::export_to(&project, source, Path::new(&args.dest), &path, true)?;
    note!("copied {} from {what}", output::tree_counts(&summary));
    Ok(ExitCode::SUCCESS)
}

fn both_sides_error() -> anyhow::Error {
    UsageError(
        "one side of cp must be volume:NAME:/path or VM:/path, the other a host path or -"
            .to_string(),
    )
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_told_apart() {
        assert_eq!(place("volume:pg:/base"), Place::Volume("pg", "/base"));
        assert_eq!(place("db:/var/lib"), Place::Vm("db", "/var/lib"));
        assert_eq!(place("./out"), Place::Host("./out"));
        assert_eq!(place("/tmp/a:b"), Place::Host("/tmp/a:b"));
        assert_eq!(place("-"), Place::Host("-"));
    }
}
