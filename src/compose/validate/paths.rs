//! Host paths written in the compose file (images, kernels, bind sources), resolved the same
//! way wherever they appear.

use std::path::{Component, Path, PathBuf};

use super::Context;

/// Resolves a host path written in the compose file: `~` from `$HOME`, relative paths against
/// the project directory, then `.` and `..` removed lexically (the path need not exist).
pub(super) fn resolve_path(written: &str, cx: &Context) -> Result<PathBuf, String> {
    if written.is_empty() {
        return Err("the path is empty".to_owned());
    }
    if written.contains('\0') {
        return Err("the path contains NUL".to_owned());
    }
    let expanded = match written.strip_prefix('~') {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            let home = cx
                .env
                .var("HOME")
                .filter(|h| h.starts_with('/'))
                .ok_or_else(|| format!("{written:?} uses ~ but $HOME is not set"))?;
            PathBuf::from(format!("{home}{rest}"))
        }
        Some(_) => return Err(format!("{written:?}: ~user paths are not supported")),
        None => PathBuf::from(written),
    };
    Ok(normalize(&cx.dir.join(expanded)))
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
