//! `cp SRC DEST`: files out of a named volume, or out of a stopped VM's named volume by the
//! path the VM mounts it at, into a host folder or a tar archive (a `.tar` file, or `-` for
//! standard output), as `volume export` writes them; or a host file or folder (or a tar
//! archive on standard input, `-`) into one, as `docker cp` places them.

use std::path::Path;
use std::process::ExitCode;

use qemu_compose::engine::{volume_export, volume_update};

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
    let into = match place(&args.dest) {
        Place::Volume(name, path) => Some((name.to_string(), path.to_string())),
        Place::Vm(vm, path) => Some(volume_export::vm_path(
            &project,
            &project::host(global)?,
            vm,
            path,
        )?),
        Place::Host(_) => None,
    };
    if let (Place::Host(src), Some((volume, path))) = (place(&args.src), into) {
        let summary =
            volume_update::copy_in(&project, &volume, Path::new(src), &path, &StderrReporter)?;
        note!(
            "copied {} into volume {volume}",
            output::tree_counts(&summary)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (volume, path) = match (place(&args.src), place(&args.dest)) {
        (Place::Volume(name, path), Place::Host(_)) => (name.to_string(), path.to_string()),
        (Place::Vm(vm, path), Place::Host(_)) => {
            let host = project::host(global)?;
            volume_export::vm_path(&project, &host, vm, path)?
        }
        _ => {
            return Err(UsageError(
                "one side of cp must be volume:NAME:/path or VM:/path, the other a host path or -"
                    .to_string(),
            )
            .into());
        }
    };
    let summary = super::volume::export_to(&project, &volume, Path::new(&args.dest), &path)?;
    note!(
        "copied {} from volume {volume}",
        output::tree_counts(&summary)
    );
    Ok(ExitCode::SUCCESS)
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
