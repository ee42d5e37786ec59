//! Finding and loading the project the command works on.

use anyhow::Context;
use qemu_compose::compose::{self, DiscoverOptions, LoadOptions, ProcessEnv, Project};

use super::GlobalArgs;

/// Discovers the compose file and loads the validated project.
pub fn load(global: &GlobalArgs) -> anyhow::Result<Project> {
    let cwd = std::env::current_dir().context("cannot read the current directory")?;
    let opts = DiscoverOptions {
        file: global.file.clone(),
        cwd,
    };
    let located = compose::discover(&opts, &ProcessEnv)?;
    let project = compose::load(
        &located.file,
        &LoadOptions {
            project_name: global.project_name.as_deref(),
            env: &ProcessEnv,
        },
    )?;
    Ok(project)
}
