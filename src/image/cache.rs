//! The cache directory: images kept by content, never replaced while something uses them.
//!
//! Layout, all in one flat directory shared by every project:
//!
//! - `<key>-<digest>-<name>`: one downloaded image. `key` is the first 16 hex digits of
//!   SHA-256 of the URL (two URLs ending in the same file name never share a file), `digest`
//!   the first 12 hex digits of SHA-256 of the *content* (computed while downloading), `name`
//!   the URL's sanitised file name. A new download of a URL whose content changed (upstream
//!   published a new build, `pull --force`, another `image_checksum`) is a new file beside the
//!   old one: an existing image file is never written, truncated or renamed over, so the
//!   copy-on-write instance disks based on it keep their data on the base they were made on.
//!   Files named `<key>-<name>` (without the digest) come from older versions and are used the
//!   same way.
//! - `<image>.json`: the sidecar ([`ImageMeta`]: URL, size, full digest, download time). The
//!   sidecars are the index: the image for a URL is the most recently downloaded file whose
//!   sidecar names that URL (and, with a checksum, has that digest). There is no separate
//!   pointer file that could disagree with them.
//! - `<image>.users`: the instance disks (absolute paths) made on the image, a JSON array
//!   kept by [`record_overlay`] each time `up` uses a disk. `image rm` refuses an image that a
//!   recorded disk still names as its backing file (checked in the disk's qcow2 header).
//! - `.lock`: taken (`flock`) around every change of a `.users` file and by `image rm`.
//! - `.partial-*`: a download (or sidecar) being written. Its writer holds a `flock` on it
//!   until it is renamed into place or deleted, and registers it with [`crate::cleanup`] so
//!   Ctrl-C removes it. A partial left by a killed process is unlocked, and the next `pull`
//!   removes it; one being written by a concurrent command is locked and left alone.
//!
//! A download is hashed, checked against the checksum, checked to be self-contained (a qcow2
//! image naming a backing file or an external data file would hand host files to the guest),
//! synced, and only then renamed to its final name, after its sidecar: a file under its final
//! name is always a complete, checked image.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ImageError;
use super::download::{ProxyEnv, Sha256Digest, fetch};
use crate::cleanup::{self, TempGuard};
use crate::disk::qcow2::{Header, HeaderExtension, Qcow2Image};
use crate::progress::Progress;

const SIDECAR_SUFFIX: &str = ".json";
const USERS_SUFFIX: &str = ".users";
const PARTIAL_PREFIX: &str = ".partial-";
const LOCK_NAME: &str = ".lock";
/// Longest file-name part kept from a URL.
const MAX_NAME: usize = 80;
/// Hex digits of the content digest in a file name.
const DIGEST_DIGITS: usize = 12;

/// qcow2 incompatible feature bit 2: guest data lives in an external data file.
const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
/// qcow2 header extension "external data file name".
const EXT_DATA_FILE: u32 = 0x4441_5441;
/// The largest qcow2 cluster (cluster_bits 21): the header, its extensions and the backing
/// file name all lie in the first cluster.
const MAX_CLUSTER: u64 = 2 << 20;

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

    /// Where `url` is cached now ([`find`](Self::find) without a checksum), or, before its
    /// first download, the name it had before images were kept by content (for display only).
    pub fn path_for(&self, url: &str) -> PathBuf {
        self.find(url, None).unwrap_or_else(|| {
            self.dir
                .join(format!("{}-{}", url_key(url), url_file_name(url)))
        })
    }

    /// The cached image `url` resolves to now, without downloading: the most recent download
    /// of `url` (matching `checksum` when given), or `None`.
    pub fn find(&self, url: &str, checksum: Option<&Sha256Digest>) -> Option<PathBuf> {
        let prefix = format!("{}-", url_key(url));
        let mut best: Option<((String, SystemTime), PathBuf)> = None;
        for entry in std::fs::read_dir(&self.dir).ok()?.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !name.starts_with(&prefix) || !is_image_name(&name) {
                continue;
            }
            let path = entry.path();
            let Some(meta) = read_sidecar(&path) else {
                continue;
            };
            if meta.url != url || !path.is_file() {
                continue;
            }
            if let Some(expected) = checksum
                && meta.sha256.parse::<Sha256Digest>().ok().as_ref() != Some(expected)
            {
                continue;
            }
            let written = std::fs::metadata(sidecar_path(&path))
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let key = (meta.downloaded, written);
            if best.as_ref().is_none_or(|(k, _)| key > *k) {
                best = Some((key, path));
            }
        }
        best.map(|(_, path)| path)
    }

    /// Makes sure `url` is in the cache and returns its path. The most recent download of
    /// `url` (matching `checksum`, when given) is reused unless `force`; a new download must
    /// match `checksum` and be self-contained. A download whose content differs from every
    /// cached one becomes a new file; the others stay as they are.
    pub fn pull(
        &self,
        url: &str,
        checksum: Option<&Sha256Digest>,
        force: bool,
        progress: &mut dyn Progress,
    ) -> Result<PathBuf, ImageError> {
        if !force && let Some(path) = self.find(url, checksum) {
            check_self_contained(&path).map_err(|field| ImageError::NotSelfContained {
                url: url.to_owned(),
                field,
            })?;
            return Ok(path);
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| self.io_error(source))?;
        self.sweep_partials();

        let mut partial = Partial::create(&self.dir)?;
        let fetched = fetch(
            url,
            &self.proxy,
            partial.file.as_file_mut(),
            progress,
            &url_file_name(url),
        )?;
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
        check_self_contained(partial.file.path()).map_err(|field| {
            ImageError::NotSelfContained {
                url: url.to_owned(),
                field,
            }
        })?;
        partial
            .file
            .as_file()
            .sync_all()
            .map_err(|source| ImageError::Write { source })?;

        let dest = self.dir.join(content_name(url, &fetched.sha256));
        let meta = ImageMeta {
            url: url.to_owned(),
            size: fetched.size,
            sha256: fetched.sha256.to_string(),
            downloaded: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        };
        if dest.exists() {
            // The same content again: keep the file (disks may be based on it), note the
            // download so it is the URL's current image again.
            self.same_content(&dest, &meta)?;
            self.write_sidecar(&dest, &meta)?;
            return Ok(dest);
        }
        self.write_sidecar(&dest, &meta)?;
        match partial.persist_noclobber(&dest) {
            Ok(()) => {}
            // A concurrent pull of the same content got there first.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                self.same_content(&dest, &meta)?
            }
            Err(source) => {
                return Err(ImageError::Io {
                    path: dest.clone(),
                    source,
                });
            }
        }
        sync_dir(&self.dir).map_err(|source| self.io_error(source))?;
        Ok(dest)
    }

    /// Refuses to treat `dest` as the download described by `meta` unless its recorded digest
    /// is the same (two contents sharing the 12 digits of a name).
    fn same_content(&self, dest: &Path, meta: &ImageMeta) -> Result<(), ImageError> {
        match read_sidecar(dest) {
            Some(existing) if existing.sha256 != meta.sha256 => Err(ImageError::Io {
                path: dest.to_owned(),
                source: std::io::Error::other(format!(
                    "already holds {} of {}, not {} of {}; remove it with `qemu-compose image rm` first",
                    existing.sha256, existing.url, meta.sha256, meta.url
                )),
            }),
            _ => Ok(()),
        }
    }

    /// Removes the `.partial-*` files nobody is writing: their writer holds a lock on them
    /// while it lives, so one that can be locked was left by a killed process.
    pub fn sweep_partials(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let is_partial = entry
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(PARTIAL_PREFIX));
            if !is_partial {
                continue;
            }
            let path = entry.path();
            let Ok(file) = File::open(&path) else {
                continue;
            };
            if file.try_lock().is_ok() {
                let _ = std::fs::remove_file(&path);
            }
        }
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

    /// The recorded instance disks that still exist and still name the image `name` as their
    /// backing file.
    pub fn users(&self, name: &str) -> Result<Vec<PathBuf>, ImageError> {
        let path = self.image_path(name)?;
        Ok(live_users(&path))
    }

    /// Removes a cached image (a name from [`list`](Self::list)), its sidecar and its list of
    /// users. Refused while a recorded instance disk is based on it, unless `force`.
    pub fn remove(&self, name: &str, force: bool) -> Result<(), ImageError> {
        let path = self.image_path(name)?;
        let _lock = lock_cache(&self.dir)?;
        if !force {
            let users = live_users(&path);
            if !users.is_empty() {
                return Err(ImageError::InUse {
                    name: name.to_owned(),
                    users,
                });
            }
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::NotFound {
                    name: name.to_owned(),
                });
            }
            Err(source) => return Err(ImageError::Io { path, source }),
        }
        for extra in [sidecar_path(&path), users_path(&path)] {
            match std::fs::remove_file(&extra) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(ImageError::Io {
                        path: extra,
                        source: e,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The path of the cached image `name`, which must be a plain image name.
    fn image_path(&self, name: &str) -> Result<PathBuf, ImageError> {
        if !is_image_name(name) || name.contains('/') {
            return Err(ImageError::NotFound {
                name: name.to_owned(),
            });
        }
        Ok(self.dir.join(name))
    }

    fn write_sidecar(&self, image: &Path, meta: &ImageMeta) -> Result<(), ImageError> {
        let mut text = serde_json::to_string_pretty(meta).expect("the sidecar serialises");
        text.push('\n');
        write_atomic(&self.dir, &sidecar_path(image), text.as_bytes())
    }

    fn io_error(&self, source: std::io::Error) -> ImageError {
        ImageError::Io {
            path: self.dir.clone(),
            source,
        }
    }
}

/// A `.partial-*` file being written: locked (so [`ImageCache::sweep_partials`] leaves it
/// alone) and registered for removal on Ctrl-C. Dropping it deletes the file.
struct Partial {
    file: tempfile::NamedTempFile,
    _guard: TempGuard,
}

impl Partial {
    fn create(dir: &Path) -> Result<Self, ImageError> {
        let io = |source| ImageError::Io {
            path: dir.to_owned(),
            source,
        };
        loop {
            let file = tempfile::Builder::new()
                .prefix(PARTIAL_PREFIX)
                .tempfile_in(dir)
                .map_err(io)?;
            let guard = cleanup::register(file.path()).map_err(io)?;
            file.as_file().lock().map_err(io)?;
            // A sweep may have removed it between its creation and the lock: start again.
            if file.as_file().metadata().map_err(io)?.nlink() > 0 {
                return Ok(Partial {
                    file,
                    _guard: guard,
                });
            }
        }
    }

    /// Renames the file to `dest` unless something is there; the lock is held until the
    /// rename is done.
    fn persist_noclobber(self, dest: &Path) -> std::io::Result<()> {
        let Partial { file, _guard } = self;
        match file.persist_noclobber(dest) {
            Ok(file) => {
                drop(file);
                Ok(())
            }
            // Dropping the returned temporary file deletes it.
            Err(e) => Err(e.error),
        }
    }
}

/// Writes `path` (in `dir`) through a locked partial file and a rename.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let io = |source| ImageError::Io {
        path: path.to_owned(),
        source,
    };
    let mut partial = Partial::create(dir)?;
    partial.file.write_all(bytes).map_err(io)?;
    partial.file.as_file().sync_all().map_err(io)?;
    let Partial { file, _guard } = partial;
    file.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

/// Takes the cache-wide lock that serialises changes of `.users` files and removals.
fn lock_cache(dir: &Path) -> Result<File, ImageError> {
    let path = dir.join(LOCK_NAME);
    let io = |source| ImageError::Io {
        path: path.clone(),
        source,
    };
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    file.lock().map_err(io)?;
    Ok(file)
}

/// The base file an overlay names, resolved as QEMU resolves it (relative to the overlay)
/// and made canonical; `None` without an overlay or a base. The base itself need not exist.
pub fn overlay_base(overlay: &Path) -> Option<PathBuf> {
    let image = Qcow2Image::from_source(File::open(overlay).ok()?).ok()?;
    let name = image.backing_file()?;
    let base = overlay.parent().unwrap_or(Path::new("/")).join(name);
    Some(base.canonicalize().unwrap_or(base))
}

/// Whether `path` is an image of an image cache: a cache name with its sidecar beside it.
pub fn is_cached_image(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(is_image_name)
        && read_sidecar(path).is_some()
}

/// Records the instance disk `overlay` as a user of its base, when the base is a cached
/// download (a file of an image cache, with its sidecar). Anything else is left alone.
pub fn record_overlay(overlay: &Path) -> Result<(), ImageError> {
    let Some(base) = overlay_base(overlay) else {
        return Ok(());
    };
    let Some(dir) = base.parent() else {
        return Ok(());
    };
    if !is_cached_image(&base) {
        return Ok(());
    }
    let overlay = std::path::absolute(overlay).map_err(|source| ImageError::Io {
        path: overlay.to_owned(),
        source,
    })?;
    let _lock = lock_cache(dir)?;
    let mut users = read_users(&base);
    if users.contains(&overlay) {
        return Ok(());
    }
    // Forget the disks that are gone or were made on another base since.
    let canonical = base.canonicalize().unwrap_or(base.clone());
    users.retain(|u| overlay_base(u).is_some_and(|b| b == canonical));
    users.push(overlay);
    let text = serde_json::to_string_pretty(&users).expect("paths serialise");
    write_atomic(dir, &users_path(&base), text.as_bytes())
}

fn read_users(image: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string(users_path(image))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// The recorded users of `image` that exist and still name it as their backing file.
fn live_users(image: &Path) -> Vec<PathBuf> {
    let canonical = image.canonicalize().unwrap_or(image.to_owned());
    read_users(image)
        .into_iter()
        .filter(|u| overlay_base(u).is_some_and(|b| b == canonical))
        .collect()
}

/// Checks that the image at `path` reads nothing but itself: a qcow2 image must name no
/// backing file and no external data file. Returns the offending field, described.
pub fn check_self_contained(path: &Path) -> Result<(), String> {
    let mut start = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_CLUSTER).read_to_end(&mut start))
        .map_err(|e| format!("cannot read it: {e}"))?;
    let header = match Header::decode(&start) {
        Ok(header) => header,
        // Not qcow2: used as a raw disk, which refers to nothing.
        Err(crate::disk::qcow2::Qcow2Error::NotQcow2) => return Ok(()),
        Err(e) => return Err(format!("its qcow2 header cannot be read: {e}")),
    };
    if header.backing_file_offset != 0 || header.backing_file_size != 0 {
        let start_at = usize::try_from(header.backing_file_offset).unwrap_or(usize::MAX);
        let name = start_at
            .checked_add(header.backing_file_size as usize)
            .and_then(|end| start.get(start_at..end))
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        return Err(format!(
            "the qcow2 header names a backing file ({name:?}); a downloaded image must be self-contained"
        ));
    }
    if header.incompatible_features & INCOMPAT_EXTERNAL_DATA != 0 {
        return Err(
            "the qcow2 header sets the \"external data file\" feature (incompatible bit 2); a downloaded image must be self-contained"
                .into(),
        );
    }
    let area = start
        .get(header.header_length as usize..)
        .unwrap_or_default();
    let extensions = HeaderExtension::decode_all(area)
        .map_err(|e| format!("its qcow2 header extensions cannot be read: {e}"))?;
    if let Some(ext) = extensions.iter().find(|e| e.kind == EXT_DATA_FILE) {
        return Err(format!(
            "the qcow2 header names an external data file ({:?}, extension 0x44415441); a downloaded image must be self-contained",
            String::from_utf8_lossy(ext.data)
        ));
    }
    Ok(())
}

/// The first 16 hex digits of SHA-256 of the URL.
fn url_key(url: &str) -> String {
    base16ct::lower::encode_string(&Sha256::digest(url.as_bytes())[..8])
}

/// The URL's last path segment, sanitised.
fn url_file_name(url: &str) -> String {
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
    if name.ends_with(SIDECAR_SUFFIX) || name.ends_with(USERS_SUFFIX) {
        name.push_str(".img");
    }
    if name.is_empty() {
        name = "image".to_owned();
    }
    name
}

/// `<url key>-<12 hex digits of the content digest>-<sanitised last path segment>`.
fn content_name(url: &str, content: &Sha256Digest) -> String {
    format!(
        "{}-{}-{}",
        url_key(url),
        &content.hex()[..DIGEST_DIGITS],
        url_file_name(url)
    )
}

fn is_image_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.ends_with(SIDECAR_SUFFIX)
        && !name.ends_with(USERS_SUFFIX)
}

fn with_suffix(image: &Path, suffix: &str) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

fn sidecar_path(image: &Path) -> PathBuf {
    with_suffix(image, SIDECAR_SUFFIX)
}

fn users_path(image: &Path) -> PathBuf {
    with_suffix(image, USERS_SUFFIX)
}

fn read_sidecar(image: &Path) -> Option<ImageMeta> {
    let text = std::fs::read_to_string(sidecar_path(image)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The SHA-256 of a file's content.
pub fn hash_file(path: &Path) -> Result<Sha256Digest, ImageError> {
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
        let content = Sha256Digest([0xab; 32]);
        let a = content_name(
            "https://a.example/noble/current/noble-server-cloudimg-amd64.img",
            &content,
        );
        let b = content_name(
            "https://b.example/noble/current/noble-server-cloudimg-amd64.img",
            &content,
        );
        assert_ne!(a, b);
        assert!(
            a.ends_with("-abababababab-noble-server-cloudimg-amd64.img"),
            "{a}"
        );
        assert_eq!(a.len(), 30 + "noble-server-cloudimg-amd64.img".len());
        let other = content_name(
            "https://a.example/noble/current/noble-server-cloudimg-amd64.img",
            &Sha256Digest([0xcd; 32]),
        );
        assert_ne!(a, other, "another content of the same URL is another file");
        assert_eq!(url_file_name("http://x/y.img?token=1#frag"), "y.img");
        assert_eq!(url_file_name("http://x/a%20b c,d"), "a_20b_c_d");
        assert_eq!(url_file_name("http://x/.."), "image");
        assert_eq!(url_file_name("http://x/"), "image");
        assert_eq!(url_file_name("http://x/meta.json"), "meta.json.img");
        assert_eq!(url_file_name("http://x/a.users"), "a.users.img");
        assert_eq!(
            url_file_name(&format!("http://x/{}", "n".repeat(500))).len(),
            MAX_NAME
        );
        for url in [
            "http://x/.hidden",
            "http://x/../../etc/passwd",
            "http://x/é",
            "http://x/a.users",
        ] {
            let name = content_name(url, &content);
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
