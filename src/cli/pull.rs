//! `pull [VM…] [--force]` and `pull URL`: fill the image cache ahead of `up`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use qemu_compose::compose::ImageSource;
use qemu_compose::engine::{images, instance};

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
    let project = project::load(global)?;
    let vms = project::selected(&project, &args.targets)?;
    let mut done = BTreeMap::new();
    for vm in vms {
        match &vm.image {
            ImageSource::Path(path) => {
                writeln!(
                    out,
                    "{}: local image {}, nothing to pull",
                    vm.name,
                    path.display()
                )?;
                if !path.is_file() {
                    note!(
                        "warning: VM {}: {} does not exist; `up` will fail",
                        vm.name,
                        path.display()
                    );
                } else {
                    instance::check_local_checksum(vm)?;
                }
            }
            ImageSource::Url(url) => {
                // Two VMs on one image: one download (and with --force, only one).
                let key = (url.clone(), vm.image_checksum.clone());
                let path = match done.get(&key) {
                    Some(path) => PathBuf::clone(path),
                    None => {
                        let path =
                            instance::resolve_image(vm, &host, args.force, progress.as_mut())?;
                        done.insert(key, path.clone());
                        path
                    }
                };
                writeln!(out, "{}: {url} -> {}", vm.name, path.display())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn is_url(target: &str) -> bool {
    target.starts_with("http://") || target.starts_with("https://")
}
