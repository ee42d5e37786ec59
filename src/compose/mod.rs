//! The compose file: discovery, interpolation, strict types and the validated model.
//!
//! Pipeline: text --[`tree`: YAML, anchors, merge keys, budget]--> located tree
//! --[`raw`: strict keys, types, interpolation]--> raw types
//! --[`validate`: defaults, rules]--> [`Project`]. Every stage collects all its errors.

mod discover;
mod error;
mod interpolate;
mod merge;
mod model;
mod normalised;
mod places;
mod raw;
mod size;
mod tree;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use discover::{
    DiscoverError, DiscoverOptions, FILE_NAMES, FILE_VAR, Located, OVERRIDE_NAMES,
    PROJECT_NAME_VAR, STDIN, discover, is_valid_name, normalize_project_name,
};
pub use error::{ComposeError, ComposeErrors};
pub use interpolate::{Env, Layered, ProcessEnv, interpolate, parse_dotenv};
pub use model::{
    Accel, Arch, BindExport, HealthCheck, HealthTest, ImageSource, MountKind, MountOption, Network,
    PortForward, Project, Protocol, SecurityModel, Subnet, Vm, VmNetwork, VolumeDecl, VolumeMount,
};
pub use normalised::{ComposeFile, compose_file};
pub use places::Places;
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

/// Reads, merges and validates the project's compose files as [`discover`] found them (the
/// main file, or standard input for `-`, then each override in order), with the project's
/// `.env` (in the project directory) under the environment.
pub fn load(located: &Located, opts: &LoadOptions) -> Result<Project, ComposeErrors> {
    let whole_file = |file: &Path, message: String| ComposeError {
        file: file.to_owned(),
        line: 0,
        column: 0,
        vm: None,
        field: None,
        message,
    };
    let mut texts = Vec::new();
    for file in std::iter::once(&located.file).chain(&located.overrides) {
        let text = if file.as_os_str() == STDIN {
            read_limited(std::io::stdin().lock())
        } else {
            std::fs::File::open(file)
                .map_err(|e| format!("cannot open: {e}"))
                .and_then(read_limited)
        };
        texts.push(ComposeText {
            file: file.clone(),
            text: text.map_err(|m| whole_file(file, m))?,
        });
    }

    let dotenv_path = located.dir.join(".env");
    let dotenv = if dotenv_path.is_file() {
        let text = std::fs::File::open(&dotenv_path)
            .map_err(|e| format!("cannot open: {e}"))
            .and_then(read_limited)
            .map_err(|m| whole_file(&dotenv_path, m))?;
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
    parse_files(
        &texts,
        &located.dir,
        &LoadOptions {
            project_name: opts.project_name,
            env: &env,
        },
    )
}

/// Reads a compose file or `.env` as text, refusing one larger than [`MAX_FILE_SIZE`]
/// (read up to one byte past the limit, so that standard input is bounded too).
fn read_limited(source: impl Read) -> Result<String, String> {
    let mut bytes = Vec::new();
    source
        .take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_SIZE {
        return Err(format!(
            "is larger than {}, the most a compose file may be",
            format_size(MAX_FILE_SIZE)
        ));
    }
    String::from_utf8(bytes).map_err(|_| "cannot read: stream did not contain valid UTF-8".into())
}

/// One compose file's name and text, for [`parse_files`].
#[derive(Debug, Clone)]
pub struct ComposeText {
    pub file: PathBuf,
    pub text: String,
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
    let files = [ComposeText {
        file: file.to_owned(),
        text: text.to_owned(),
    }];
    parse_files(&files, project_dir, opts)
}

/// `yaml` as the project `t` in `/p`, with no variables: the model the unit tests of other
/// layers start from.
#[cfg(test)]
pub(crate) fn test_project(yaml: &str) -> Project {
    let opts = LoadOptions {
        project_name: Some("t"),
        env: &BTreeMap::new(),
    };
    parse_str(
        yaml,
        Path::new("/p/qemu-compose.yaml"),
        Path::new("/p"),
        &opts,
    )
    .unwrap()
}

/// Parses several compose files, merges them in order (docs/compose.md, "Several files") and
/// validates the result as one file. Errors name the file each problem was written in; the
/// project's file is the first.
pub fn parse_files(
    files: &[ComposeText],
    project_dir: &Path,
    opts: &LoadOptions,
) -> Result<Project, ComposeErrors> {
    let paths: Vec<PathBuf> = files.iter().map(|f| f.file.clone()).collect();
    let mut errors = error::Errors {
        files: &paths,
        list: Vec::new(),
        warnings: Vec::new(),
    };
    let mut syntax = Vec::new();
    let mut merged: Option<tree::Node> = None;
    for (i, f) in files.iter().enumerate() {
        match tree::parse(&f.text, i) {
            Ok(root) => {
                merged = Some(match merged {
                    None => merge::resolve_tags(root),
                    Some(base) => merge::merge_files(base, root),
                });
            }
            Err(refused) => syntax.extend(refused.into_iter().map(|e| ComposeError {
                file: f.file.clone(),
                line: e.pos.line,
                column: e.pos.column,
                vm: None,
                field: None,
                message: e.message,
            })),
        }
    }
    let root = match merged {
        Some(root) if syntax.is_empty() => root,
        _ => return Err(ComposeErrors(syntax)),
    };
    let places = Places::record(&root, &paths);
    let raw = raw::read(&root, opts.env, &mut errors);
    let main = paths.first().map_or(Path::new(""), PathBuf::as_path);
    let cx = validate::Context {
        dir: project_dir,
        file: main,
        project_name: opts.project_name,
        env: opts.env,
    };
    let mut project = validate::validate(raw, &cx, &mut errors);
    if errors.list.is_empty() {
        project.warnings = errors.warnings;
        project.places = places;
        Ok(project)
    } else {
        let mut list = errors.list;
        // In file order, then by place; a file's index is its place in `files`.
        list.sort_by_key(|e| (paths.iter().position(|p| *p == e.file), e.line, e.column));
        Err(ComposeErrors(list))
    }
}
