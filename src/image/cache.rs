//! The cache directory: one file per URL plus a small JSON sidecar for `image ls`.
//!
//! Layout: `<key>-<name>` where `key` is the first 16 hex digits of SHA-256 of the URL and
//! `name` the URL's sanitised file name, so two URLs ending in the same file name never share
//! a file; `<key>-<name>.json` beside it. Downloads go to a hidden `.partial-*` temporary file
//! in the same directory and are renamed into place only once complete, verified and synced,
//! after the sidecar: a file under its final name is always a complete image.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ImageError;
use super::download::{ProxyEnv, Sha256Digest, fetch};
use super::progress::Progress;

const SIDECAR_SUFFIX: &str = ".json";
const PARTIAL_PREFIX: &str = ".partial-";
/// Longest file-name part kept from a URL.
const MAX_NAME: usize = 80;

/// What the sidecar records about a download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    pub url: String,
    pub size: u64,
    /// `sha256:<hex>`.
    pub sha256: String,
    /// RFC 3339, UTC.
    pub downloaded: String,
}

/// One entry of [`ImageCache::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedImage {
    pub name: String,
    pub path: PathBuf,
    pub size: u64,
    /// `None` when the sidecar is missing or unreadable.
    pub meta: Option<ImageMeta>,
}

#[derive(Debug, Clone)]
pub struct ImageCache {
    dir: PathBuf,
    proxy: ProxyEnv,
}

impl ImageCache {
    /// A cache in `dir` (created on the first pull), using the process's proxy variables.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ImageCache {
            dir: dir.into(),
            proxy: ProxyEnv::from_env(),
        }
    }

    /// The same cache with other proxy settings.
    pub fn with_proxy(self, proxy: ProxyEnv) -> Self {
        ImageCache { proxy, ..self }
    }

    /// `$XDG_DATA_HOME/qemu-compose/images`, else `$HOME/.local/share/qemu-compose/images`;
    /// relative values are ignored, as the XDG base directory spec asks.
    pub fn default_dir(env: impl Fn(&str) -> Option<String>) -> Result<PathBuf, ImageError> {
        let absolute = |key: &str| env(key).map(PathBuf::from).filter(|p| p.is_absolute());
        let data = absolute("XDG_DATA_HOME")
            .or_else(|| absolute("HOME").map(|home| home.join(".local/share")))
            .ok_or(ImageError::NoHome)?;
        Ok(data.join("qemu-compose/images"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `url` is (or will be) cached.
    pub fn path_for(&self, url: &str) -> PathBuf {
        self.dir.join(file_name_for(url))
    }

    /// Makes sure `url` is in the cache and returns its path. A cached copy is reused unless
    /// `force`, or unless `checksum` is given and the copy does not match it; a new download
    /// must match `checksum`.
    pub fn pull(
        &self,
        url: &str,
        checksum: Option<&Sha256Digest>,
        force: bool,
        progress: &mut dyn Progress,
    ) -> Result<PathBuf, ImageError> {
        let dest = self.path_for(url);
        if !force && dest.is_file() && self.cached_copy_matches(&dest, checksum)? {
            return Ok(dest);
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| self.io_error(source))?;

        let mut partial = tempfile::Builder::new()
            .prefix(PARTIAL_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(|source| self.io_error(source))?;
        let label = file_name_for(url);
        let fetched = fetch(url, &self.proxy, partial.as_file_mut(), progress, &label)?;
        if let Some(expected) = checksum
            && *expected != fetched.sha256
        {
            // Dropping `partial` deletes it.
            return Err(ImageError::ChecksumMismatch {
                url: url.to_owned(),
                expected: *expected,
                actual: fetched.sha256,
            });
        }
        partial
            .as_file()
            .sync_all()
            .map_err(|source| ImageError::Write { source })?;

        let meta = ImageMeta {
            url: url.to_owned(),
            size: fetched.size,
            sha256: fetched.sha256.to_string(),
            downloaded: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        self.write_sidecar(&dest, &meta)?;
        partial.persist(&dest).map_err(|e| ImageError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        sync_dir(&self.dir).map_err(|source| self.io_error(source))?;
        Ok(dest)
    }

    /// The complete images in the cache, by name.
    pub fn list(&self) -> Result<Vec<CachedImage>, ImageError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(self.io_error(source)),
        };
        let mut images = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| self.io_error(source))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let file_type = entry.file_type().map_err(|source| self.io_error(source))?;
            if !is_image_name(&name) || !file_type.is_file() {
                continue;
            }
            let path = entry.path();
            let size = entry
                .metadata()
                .map_err(|source| self.io_error(source))?
                .len();
            let meta = read_sidecar(&path);
            images.push(CachedImage {
                name,
                path,
                size,
                meta,
            });
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// Removes a cached image (a name from [`list`](Self::list)) and its sidecar.
    pub fn remove(&self, name: &str) -> Result<(), ImageError> {
        let not_found = || ImageError::NotFound {
            name: name.to_owned(),
        };
        if !is_image_name(name) || name.contains('/') {
            return Err(not_found());
        }
        let path = self.dir.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
            Err(source) => return Err(ImageError::Io { path, source }),
        }
        let sidecar = sidecar_path(&path);
        match std::fs::remove_file(&sidecar) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImageError::Io {
                path: sidecar,
                source: e,
            }),
            _ => Ok(()),
        }
    }

    /// Whether the cached file can be used as is for `checksum`: the sidecar's digest is
    /// trusted when present (hashing a multi-GiB image on every `up` would be slow).
    fn cached_copy_matches(
        &self,
        dest: &Path,
        checksum: Option<&Sha256Digest>,
    ) -> Result<bool, ImageError> {
        let Some(expected) = checksum else {
            return Ok(true);
        };
        let recorded = read_sidecar(dest).and_then(|meta| meta.sha256.parse::<Sha256Digest>().ok());
        let actual = match recorded {
            Some(digest) => digest,
            None => hash_file(dest)?,
        };
        Ok(actual == *expected)
    }

    fn write_sidecar(&self, image: &Path, meta: &ImageMeta) -> Result<(), ImageError> {
        let path = sidecar_path(image);
        let io = |source| ImageError::Io {
            path: path.clone(),
            source,
        };
        let mut tmp = tempfile::Builder::new()
            .prefix(PARTIAL_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(io)?;
        let mut text = serde_json::to_string_pretty(meta).map_err(|e| io(e.into()))?;
        text.push('\n');
        tmp.write_all(text.as_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(&path).map_err(|e| io(e.error))?;
        Ok(())
    }

    fn io_error(&self, source: std::io::Error) -> ImageError {
        ImageError::Io {
            path: self.dir.clone(),
            source,
        }
    }
}

/// `<16 hex digits of sha256(url)>-<sanitised last path segment>`.
fn file_name_for(url: &str) -> String {
    let key: String = Sha256::digest(url.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let last = path.rsplit('/').next().unwrap_or_default();
    let mut name: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME)
        .collect();
    name = name.trim_start_matches('.').to_owned();
    // A name ending like a sidecar would be hidden from `list`.
    if name.ends_with(SIDECAR_SUFFIX) {
        name.push_str(".img");
    }
    if name.is_empty() {
        name = "image".to_owned();
    }
    format!("{key}-{name}")
}

fn is_image_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.ends_with(SIDECAR_SUFFIX)
}

fn sidecar_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(SIDECAR_SUFFIX);
    PathBuf::from(name)
}

fn read_sidecar(image: &Path) -> Option<ImageMeta> {
    let text = std::fs::read_to_string(sidecar_path(image)).ok()?;
    serde_json::from_str(&text).ok()
}

fn hash_file(path: &Path) -> Result<Sha256Digest, ImageError> {
    let io = |source| ImageError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(io)?;
    Ok(Sha256Digest(hasher.finalize().into()))
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_never_collide_and_stay_safe() {
        let a = file_name_for("https://a.example/noble/current/noble-server-cloudimg-amd64.img");
        let b = file_name_for("https://b.example/noble/current/noble-server-cloudimg-amd64.img");
        assert_ne!(a, b);
        assert!(a.ends_with("-noble-server-cloudimg-amd64.img"), "{a}");
        assert_eq!(a.len(), 17 + "noble-server-cloudimg-amd64.img".len());
        assert_eq!(&file_name_for("http://x/y.img?token=1#frag")[17..], "y.img");
        assert_eq!(&file_name_for("http://x/a%20b c,d")[17..], "a_20b_c_d");
        assert_eq!(&file_name_for("http://x/..")[17..], "image");
        assert_eq!(&file_name_for("http://x/")[17..], "image");
        assert_eq!(&file_name_for("http://x/meta.json")[17..], "meta.json.img");
        assert_eq!(
            file_name_for(&format!("http://x/{}", "n".repeat(500))).len(),
            17 + MAX_NAME
        );
        for url in [
            "http://x/.hidden",
            "http://x/../../etc/passwd",
            "http://x/é",
        ] {
            let name = file_name_for(url);
            assert!(
                is_image_name(&name) && !name.contains('/'),
                "{url} -> {name}"
            );
        }
    }

    #[test]
    fn default_dir_follows_xdg() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |key: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(
            ImageCache::default_dir(env(&[("XDG_DATA_HOME", "/d"), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/d/qemu-compose/images")
        );
        assert_eq!(
            ImageCache::default_dir(env(&[("XDG_DATA_HOME", "rel"), ("HOME", "/h")])).unwrap(),
            PathBuf::from("/h/.local/share/qemu-compose/images")
        );
        assert!(matches!(
            ImageCache::default_dir(env(&[])),
            Err(ImageError::NoHome)
        ));
    }
}
