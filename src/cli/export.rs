//! `export kubevirt`: refuse what a cluster cannot carry, make the state the manifests need
//! as `up` would, and write the manifests with the commands that upload the volumes.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use qemu_compose::engine::kubevirt::{self, Export};

use super::output::note;
use super::{GlobalArgs, KubevirtArgs, StderrReporter, output, project};

pub fn kubevirt(global: &GlobalArgs, args: &KubevirtArgs) -> anyhow::Result<ExitCode> {
    let project = project::load(global)?;
    kubevirt::check(&project)?;
    let facts = kubevirt::facts(&project, &StderrReporter)?;
    let export = kubevirt::translate(&project, &facts, args.namespace.as_deref())?;
    let ns = args.namespace.as_deref();
    if args.output.as_os_str() == "-" {
        let objects: Vec<_> = export.files.iter().flat_map(|(_, o)| o.clone()).collect();
        output::stdout().write_all(kubevirt::to_yaml(&objects)?.as_bytes())?;
        for line in after_apply(&export, ns).lines() {
            note!("{line}");
        }
    } else {
        write_folder(&args.output, &export, ns)?;
        note!(
            "wrote the manifests to {}; see {} for what to run",
            args.output.display(),
            args.output.join("README.txt").display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// One file per VM, `volumes.yaml`, and `README.txt`, written by the engine for their owner
/// only.
fn write_folder(dir: &Path, export: &Export, ns: Option<&str>) -> anyhow::Result<()> {
    let mut files = Vec::new();
    for (stem, objects) in &export.files {
        files.push((format!("{stem}.yaml"), kubevirt::to_yaml(objects)?));
    }
    let ns_flag = ns.map_or(String::new(), |ns| format!(" --namespace {ns}"));
    let readme = format!(
        "Made by qemu-compose export kubevirt.\n\nApply the manifests:\n\n    kubectl apply{ns_flag} -f .\n\n{}",
        after_apply(export, ns)
    );
    files.push(("README.txt".to_owned(), readme));
    kubevirt::write_private_files(dir, &files)?;
    Ok(())
}

/// The upload commands, and what no manifest says.
fn after_apply(export: &Export, ns: Option<&str>) -> String {
    let mut text = String::new();
    if !export.uploads.is_empty() {
        text.push_str(
            "Then upload the images into their DataVolumes (the VMs start once they are filled):\n\n",
        );
        for upload in &export.uploads {
            let _ = writeln!(text, "    {}", upload.command(ns));
            if let Some(sum) = &upload.checksum {
                let _ = writeln!(
                    text,
                    "      (CDI does not check an upload: check first that `sha256sum` prints {} for it)",
                    sum.trim_start_matches("sha256:")
                );
            }
        }
        text.push('\n');
    }
    for line in &export.notes {
        let _ = writeln!(text, "Note: {line}");
    }
    text
}
