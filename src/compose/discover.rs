//! Finding the compose file and naming the project (docs/compose.md, "Finding the file and
//! naming the project").

use std::path::{Path, PathBuf};

use super::interpolate::Env;

/// File names looked for in the current directory and then each parent.
pub const FILE_NAMES: [&str; 2] = ["qemu-compose.yaml", "qemu-compose.yml"];
/// Merged over the main file when it was found by searching (not named by `-f`).
pub const OVERRIDE_NAMES: [&str; 2] = ["qemu-compose.override.yaml", "qemu-compose.override.yml"];
/// `-f -`: the compose file is read from standard input, and the project directory is the
/// current one.
pub const STDIN: &str = "-";
/// Names the compose file when `-f` is not given.
pub const FILE_VAR: &str = "QEMU_COMPOSE_FILE";
/// Names the project when `-p` is not given.
pub const PROJECT_NAME_VAR: &str = "QEMU_COMPOSE_PROJECT_NAME";

/// What the command line says about where the compose file is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoverOptions {
    /// `-f/--file`, each relative to `cwd`, in merge order.
    pub files: Vec<PathBuf>,
    /// Where the search starts (the process's current directory in the CLI).
    pub cwd: PathBuf,
}

/// The compose files that exist, and the project directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Absolute path of the main compose file (its folder canonical, a symlinked file not
    /// followed), or [`STDIN`].
    pub file: PathBuf,
    /// The files merged over it, in order: the other `-f` files, or the
    /// `qemu-compose.override.yaml` found beside it.
    pub overrides: Vec<PathBuf>,
    /// Canonical directory the compose file was found in: relative paths, `.env` and
    /// `.qemu-compose/` live here.
    pub dir: PathBuf,
    /// `qemu-compose.yml` beside the `qemu-compose.yaml` that was chosen: ignored, which the
    /// user should hear about.
    pub ignored: Option<PathBuf>,
}

/// Why no compose file could be used.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    #[error(
        "no qemu-compose.yaml or qemu-compose.yml in {} or any parent directory (use -f FILE)",
        .cwd.display()
    )]
    NotFound { cwd: PathBuf },
    #[error("compose file {}: {source}", .path.display())]
    Unusable {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Finds the compose files: the `-f` files (the first is the main one), else
/// `$QEMU_COMPOSE_FILE`, else the nearest `qemu-compose.yaml`/`.yml` from `cwd` upward with
/// the `qemu-compose.override.yaml`/`.yml` beside it.
pub fn discover(opts: &DiscoverOptions, env: &dyn Env) -> Result<Located, DiscoverError> {
    let explicit = if opts.files.is_empty() {
        env.var(FILE_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .into_iter()
            .collect()
    } else {
        opts.files.clone()
    };
    if let Some((main, overrides)) = explicit.split_first() {
        let mut located = if main.as_os_str() == STDIN {
            let dir = opts
                .cwd
                .canonicalize()
                .map_err(|source| DiscoverError::Unusable {
                    path: opts.cwd.clone(),
                    source,
                })?;
            Located {
                file: main.clone(),
                overrides: Vec::new(),
                dir,
                ignored: None,
            }
        } else {
            locate(&opts.cwd.join(main))?
        };
        for file in overrides {
            located.overrides.push(if file.as_os_str() == STDIN {
                file.clone()
            } else {
                locate(&opts.cwd.join(file))?.file
            });
        }
        return Ok(located);
    }
    for dir in opts.cwd.ancestors() {
        let mut found = FILE_NAMES
            .iter()
            .map(|n| dir.join(n))
            .filter(|p| p.is_file());
        if let Some(chosen) = found.next() {
            let mut located = locate(&chosen)?;
            located.ignored = found.next();
            if let Some(over) = OVERRIDE_NAMES
                .iter()
                .map(|n| located.dir.join(n))
                .find(|p| p.is_file())
            {
                located.overrides.push(over);
            }
            return Ok(located);
        }
    }
    Err(DiscoverError::NotFound {
        cwd: opts.cwd.clone(),
    })
}

fn locate(path: &Path) -> Result<Located, DiscoverError> {
    let unusable = |source| DiscoverError::Unusable {
        path: path.to_owned(),
        source,
    };
    let (file, dir) = project_file(path).map_err(unusable)?;
    if !file.is_file() {
        return Err(unusable(std::io::Error::other("not a regular file")));
    }
    Ok(Located {
        file,
        overrides: Vec::new(),
        dir,
        ignored: None,
    })
}

/// The compose file `path` and its project directory: the directory the path names, made
/// canonical, with the file's own name kept. A symlinked compose file is not followed to its
/// target's folder (docker compose does the same), so two projects that link one shared file
/// keep their own state.
pub fn project_file(path: &Path) -> std::io::Result<(PathBuf, PathBuf)> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("names no file"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = parent.canonicalize()?;
    Ok((dir.join(name), dir))
}

/// Whether `name` is a valid explicit project name: `[a-z0-9][a-z0-9_-]*`.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// Turns a directory name into a project name as docker compose does: lowercase, drop every
/// character outside `[a-z0-9_-]`, then drop leading `_` and `-`. `None` if nothing is left.
pub fn normalize_project_name(dir_name: &str) -> Option<String> {
    let kept: String = dir_name
        .to_lowercase()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-')
        .collect();
    let trimmed = kept.trim_start_matches(['_', '-']);
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn no_env() -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    #[test]
    fn finds_the_nearest_file_upward_and_prefers_yaml() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let deep = root.join("a/b/c");
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(root.join("qemu-compose.yml"), "vms: {}\n").unwrap();
        std::fs::write(root.join("a/qemu-compose.yml"), "vms: {}\n").unwrap();
        std::fs::write(root.join("a/qemu-compose.yaml"), "vms: {}\n").unwrap();
        let opts = DiscoverOptions {
            files: Vec::new(),
            cwd: deep.clone(),
        };
        let found = discover(&opts, &no_env()).unwrap();
        assert_eq!(found.file, root.join("a/qemu-compose.yaml"));
        assert_eq!(found.ignored, Some(root.join("a/qemu-compose.yml")));
        assert_eq!(found.dir, root.join("a"));

        // -f wins over the environment, which wins over the search.
        let env: BTreeMap<_, _> =
            [(FILE_VAR.to_owned(), "../../../qemu-compose.yml".to_owned())].into();
        assert_eq!(
            discover(&opts, &env).unwrap().file,
            root.join("qemu-compose.yml")
        );
        let with_f = DiscoverOptions {
            files: vec!["../../qemu-compose.yml".into()],
            cwd: deep,
        };
        assert_eq!(
            discover(&with_f, &env).unwrap().file,
            root.join("a/qemu-compose.yml")
        );
    }

    #[test]
    fn override_file_beside_a_found_file_and_several_f() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("sub")).unwrap();
        for name in [
            "qemu-compose.yaml",
            "qemu-compose.override.yml",
            "sub/ci.yaml",
        ] {
            std::fs::write(root.join(name), "vms: {}\n").unwrap();
        }
        let found = discover(
            &DiscoverOptions {
                files: Vec::new(),
                cwd: root.join("sub"),
            },
            &no_env(),
        )
        .unwrap();
        assert_eq!(found.file, root.join("qemu-compose.yaml"));
        assert_eq!(found.overrides, [root.join("qemu-compose.override.yml")]);

        // With -f, only the files named, in order; the project directory is the first's.
        let named = discover(
            &DiscoverOptions {
                files: vec!["sub/ci.yaml".into(), "qemu-compose.yaml".into()],
                cwd: root.clone(),
            },
            &no_env(),
        )
        .unwrap();
        assert_eq!(named.file, root.join("sub/ci.yaml"));
        assert_eq!(named.dir, root.join("sub"));
        assert_eq!(named.overrides, [root.join("qemu-compose.yaml")]);

        let stdin = discover(
            &DiscoverOptions {
                files: vec![STDIN.into()],
                cwd: root.join("sub"),
            },
            &no_env(),
        )
        .unwrap();
        assert_eq!(stdin.file, Path::new(STDIN));
        assert_eq!(stdin.dir, root.join("sub"));
    }

    #[test]
    fn reports_missing_files() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = DiscoverOptions {
            files: vec!["nope.yaml".into()],
            cwd: tmp.path().to_owned(),
        };
        let err = discover(&opts, &no_env()).unwrap_err().to_string();
        assert!(err.contains("nope.yaml"), "{err}");
        let dir_as_file = DiscoverOptions {
            files: vec![".".into()],
            cwd: tmp.path().to_owned(),
        };
        assert!(
            discover(&dir_as_file, &no_env())
                .unwrap_err()
                .to_string()
                .contains("not a regular file")
        );
    }

    #[test]
    fn project_names() {
        assert!(is_valid_name("demo"));
        assert!(is_valid_name("0a_b-c"));
        for bad in ["", "Demo", "-a", "_a", "a b", "a.b", "é"] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        assert_eq!(
            normalize_project_name("My App.v2").as_deref(),
            Some("myappv2")
        );
        assert_eq!(normalize_project_name("__x-Y").as_deref(), Some("x-y"));
        assert_eq!(normalize_project_name("..."), None);
    }
}
