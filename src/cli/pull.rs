//! `pull [VM…] [--force]` and `pull URL`: fill the image cache ahead of `up`.

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Context;
use qemu_compose::compose::ImageSource;
use qemu_compose::engine::HostEnv;
use qemu_compose::image::{self, Sha256Digest};

use super::{GlobalArgs, PullArgs, project};

pub fn run(global: &GlobalArgs, args: &PullArgs) -> anyhow::Result<ExitCode> {
    let host = HostEnv::from_process()?;
    let mut progress = image::for_stderr();
    if let [target] = args.targets.as_slice()
        && is_url(target)
    {
        let path = host
            .images
            .pull(target, None, args.force, progress.as_mut())?;
        println!("{target}: {}", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(url) = args.targets.iter().find(|t| is_url(t)) {
        anyhow::bail!(
            "{url}: a URL is pulled on its own (`qemu-compose pull URL`), not together with VM names"
        );
    }
    let project = project::load(global)?;
    let vms = super::ps::selected(&project, &args.targets)?;
    let mut done = BTreeSet::new();
    for vm in vms {
        match &vm.image {
            ImageSource::Path(path) => {
                println!(
                    "{}: local image {}, nothing to pull",
                    vm.name,
                    path.display()
                );
                if !path.is_file() {
                    eprintln!(
                        "warning: VM {}: {} does not exist; `up` will fail",
                        vm.name,
                        path.display()
                    );
                }
            }
            ImageSource::Url(url) => {
                let checksum = vm
                    .image_checksum
                    .as_deref()
                    .map(str::parse::<Sha256Digest>)
                    .transpose()
                    .with_context(|| format!("VM {}: image_checksum", vm.name))?;
                // Two VMs on one image: one download (and with --force, only one).
                if done.insert(url.clone()) {
                    host.images
                        .pull(url, checksum.as_ref(), args.force, progress.as_mut())?;
                }
                println!(
                    "{}: {url} -> {}",
                    vm.name,
                    host.images.path_for(url).display()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn is_url(target: &str) -> bool {
    target.starts_with("http://") || target.starts_with("https://")
}
