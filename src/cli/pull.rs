//! `pull [VM…] [--force]` and `pull URL`: fill the image cache ahead of `up`.

use std::io::Write;
use std::process::ExitCode;

use qemu_compose::engine::images::{self, Pulled};
use qemu_compose::engine::instance;

use super::output::note;
use super::{GlobalArgs, PullArgs, output, progress, project};

pub fn run(global: &GlobalArgs, args: &PullArgs) -> anyhow::Result<ExitCode> {
    let host = project::host(global)?;
    let mut progress = progress::for_stderr();
    let mut out = output::stdout();
    if let [target] = args.targets.as_slice()
        && is_url(target)
    {
        let path = images::pull_url(&host, target, args.force, progress.as_mut())?;
        writeln!(out, "{target}: {}", path.display())?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(url) = args.targets.iter().find(|t| is_url(t)) {
        anyhow::bail!(
            "{url}: a URL is pulled on its own (`qemu-compose pull URL`), not together with VM names"
        );
    }
    let project = project::load_naming(global, &args.targets)?;
    let vms = project::selected(&project, &args.targets)?;
    let mut puller = images::Puller::new(&host, args.force);
    for vm in vms {
        match puller.pull(vm, progress.as_mut())? {
            Pulled::Local { path, exists } => {
                writeln!(
                    out,
                    "{}: local image {}, nothing to pull",
                    vm.name,
                    path.display()
                )?;
                if !exists {
                    note!(
                        "warning: VM {}: {} does not exist; `up` will fail",
                        vm.name,
                        path.display()
                    );
                } else {
                    instance::check_local_checksum(vm)?;
                }
            }
            Pulled::Url { url, path } => {
                writeln!(out, "{}: {url} -> {}", vm.name, path.display())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn is_url(target: &str) -> bool {
    target.starts_with("http://") || target.starts_with("https://")
}
