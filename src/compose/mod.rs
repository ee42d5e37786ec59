//! The compose file: discovery, interpolation, strict types and the validated model.
//!
//! Pipeline: text --[`tree`: YAML, anchors, merge keys, budget]--> located tree
//! --[`raw`: strict keys, types, interpolation]--> raw types
//! --[`validate`: defaults, rules]--> [`Project`]. Every stage collects all its errors.

mod discover;
mod error;
mod interpolate;
mod model;
mod raw;
mod size;
mod tree;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::Path;

pub use discover::{
    DiscoverError, DiscoverOptions, FILE_NAMES, FILE_VAR, Located, PROJECT_NAME_VAR, discover,
    is_valid_name, normalize_project_name,
};
pub use error::{ComposeError, ComposeErrors};
pub use interpolate::{Env, Layered, ProcessEnv, interpolate, parse_dotenv};
pub use model::{
    Accel, ImageSource, MountKind, MountOption, Network, PortForward, Project, Protocol,
    SecurityModel, Subnet, Vm, VmNetwork, VolumeDecl, VolumeMount,
};
pub use size::{MAX_VOLUME_SIZE, MIN_VOLUME_SIZE, SizeError, format_size, parse_size};
pub use validate::{
    DEFAULT_MEMORY_MIB, DEFAULT_SIZE, MAX_CPU, MAX_DISK_SIZE, MAX_MEMORY_MIB, MAX_NAME_LEN,
    MIN_DISK_SIZE, MIN_MEMORY_MIB,
};

/// A compose file larger than this is refused before parsing (real ones are a few KiB).
pub const MAX_FILE_SIZE: u64 = 4 << 20;

/// How to load a project besides the file itself.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// `-p/--project-name`.
    pub project_name: Option<&'a str>,
    /// The process environment (or a map in tests). `load` layers the project's `.env`
    /// under it.
    pub env: &'a dyn Env,
}

/// Reads, parses and validates the compose file at `path` (normally found by [`discover`]),
/// with the project's `.env` (beside the file) under the environment.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Project, ComposeErrors> {
    let whole_file = |file: &Path, message: String| ComposeError {
        file: file.to_owned(),
        line: 0,
        column: 0,
        vm: None,
        field: None,
        message,
    };
    let (file, dir) =
        discover::project_file(path).map_err(|e| whole_file(path, format!("cannot open: {e}")))?;
    if let Err(e) = std::fs::metadata(&file) {
        return Err(whole_file(&file, format!("cannot open: {e}")).into());
    }
    let text = read_limited(&file).map_err(|m| whole_file(&file, m))?;

    let dotenv_path = dir.join(".env");
    let dotenv = if dotenv_path.is_file() {
        let text = read_limited(&dotenv_path).map_err(|m| whole_file(&dotenv_path, m))?;
        parse_dotenv(&text).map_err(|(line, message)| ComposeError {
            line,
            column: 1,
            ..whole_file(&dotenv_path, message)
        })?
    } else {
        BTreeMap::new()
    };
    let env = Layered {
        first: opts.env,
        then: &dotenv,
    };
    parse_str(
        &text,
        &file,
        &dir,
        &LoadOptions {
            project_name: opts.project_name,
            env: &env,
        },
    )
}

fn read_limited(path: &Path) -> Result<String, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if len > MAX_FILE_SIZE {
        return Err(format!(
            "is {} bytes; a compose file may be at most {}",
            len,
            format_size(MAX_FILE_SIZE)
        ));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))
}

/// Parses and validates compose text without touching the disk. `file` is used in messages
/// and in [`Project::file`]; relative paths resolve against `project_dir`; variables come only
/// from `opts.env`.
pub fn parse_str(
    text: &str,
    file: &Path,
    project_dir: &Path,
    opts: &LoadOptions,
) -> Result<Project, ComposeErrors> {
    let mut errors = error::Errors {
        file,
        list: Vec::new(),
        warnings: Vec::new(),
    };
    let root = tree::parse(text).map_err(|e| ComposeError {
        file: file.to_owned(),
        line: e.pos.line,
        column: e.pos.column,
        vm: None,
        field: None,
        message: format!("invalid YAML: {}", e.message),
    })?;
    let raw = raw::read(&root, opts.env, &mut errors);
    let cx = validate::Context {
        dir: project_dir,
        file,
        project_name: opts.project_name,
        env: opts.env,
    };
    let mut project = validate::validate(raw, &cx, &mut errors);
    if errors.list.is_empty() {
        project.warnings = errors.warnings;
        Ok(project)
    } else {
        let mut list = errors.list;
        list.sort_by_key(|e| (e.line, e.column));
        Err(ComposeErrors(list))
    }
}
