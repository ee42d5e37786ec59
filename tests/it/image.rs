//! The image cache against an HTTP server run by the test on 127.0.0.1: nothing else on the
//! network is touched (the proxy test names a host that the "proxy" below answers for).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qemu_compose::image::{ImageCache, ImageError, ProxyEnv, Sha256Digest};
use qemu_compose::progress::{LineProgress, NoProgress};
use sha2::{Digest, Sha256};

use crate::harness::{Project, pattern, qemu_img_create_with, text};

fn digest(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

const LEN: usize = 3 << 20;

/// A tiny HTTP/1.1 server, a thread per connection, `Connection: close`:
/// `/a/<name>` and `/b/<name>` serve different payloads, `/drop/<name>` announces the full
/// length and hangs up half-way, `/chunked-drop` hangs up inside a chunked body, `/slow/<name>`
/// sends a third of its body and then stalls for a minute, `/f/<name>` serves what the test
/// [`Server::put`] there, `/redirect/<path>` answers 302 to `/<path>`, anything else is 404. A proxy's absolute-form request is served by its path, and `CONNECT` is accepted.
struct Server {
    base: String,
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    /// What `/f/<name>` serves; tests change it between requests.
    files: Files,
}

type Files = Arc<Mutex<BTreeMap<String, Vec<u8>>>>;

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        let files: Files = Arc::new(Mutex::new(BTreeMap::new()));
        let served = Arc::clone(&files);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let log = Arc::clone(&log);
                let files = Arc::clone(&files);
                std::thread::spawn(move || serve(stream, &log, &files));
            }
        });
        Server {
            base: format!("http://127.0.0.1:{port}"),
            port,
            requests,
            files: served,
        }
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Serves `bytes` at `/f/<name>` from now on; returns the URL.
    fn put(&self, name: &str, bytes: Vec<u8>) -> String {
        self.files.lock().unwrap().insert(name.to_owned(), bytes);
        format!("{}/f/{name}", self.base)
    }
}

fn read_head(reader: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    let mut first = String::new();
    reader.read_line(&mut first)?;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            return Ok(first.trim_end().to_owned());
        }
    }
}

fn serve(stream: TcpStream, log: &Mutex<Vec<String>>, files: &Files) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    let mut line = read_head(&mut reader)?;
    log.lock().unwrap().push(line.clone());
    if line.starts_with("CONNECT ") {
        out.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")?;
        line = read_head(&mut reader)?;
        log.lock().unwrap().push(line.clone());
    }
    let target = line.split(' ').nth(1).unwrap_or("/");
    // Absolute form (through a proxy): keep only the path.
    let path = match target.strip_prefix("http://") {
        Some(rest) => &rest[rest.find('/').unwrap_or(rest.len())..],
        None => target,
    };
    let head = |len: usize| {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n")
    };
    if path.starts_with("/a/") || path.starts_with("/proxied/") {
        out.write_all(head(LEN).as_bytes())?;
        out.write_all(&pattern(1, LEN))?;
    } else if let Some(name) = path.strip_prefix("/f/")
        && let Some(bytes) = files.lock().unwrap().get(name).cloned()
    {
        out.write_all(head(bytes.len()).as_bytes())?;
        out.write_all(&bytes)?;
    } else if let Some(rest) = path.strip_prefix("/redirect/") {
        out.write_all(
            format!("HTTP/1.1 302 Found\r\nLocation: /{rest}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )?;
    } else if path.starts_with("/slow/") {
        out.write_all(head(LEN).as_bytes())?;
        out.write_all(&pattern(1, LEN)[..LEN / 3])?;
        out.flush()?;
        std::thread::sleep(Duration::from_secs(60));
    } else if path.starts_with("/b/") {
        out.write_all(head(LEN).as_bytes())?;
        out.write_all(&pattern(2, LEN))?;
    } else if path.starts_with("/drop/") {
        out.write_all(head(LEN).as_bytes())?;
        out.write_all(&pattern(1, LEN)[..LEN / 2])?;
        out.flush()?;
    } else if path == "/chunked-drop" {
        out.write_all(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        )?;
        out.write_all(b"10\r\n0123456789abcdef\r\n")?;
        out.flush()?;
    } else {
        out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    }
    out.shutdown(std::net::Shutdown::Both)
}

fn cache(dir: &Path) -> ImageCache {
    // Direct connections whatever proxy variables the test runner has.
    ImageCache::new(dir).with_proxy(ProxyEnv::default())
}

/// Every file in the cache directory, hidden ones included, except the cache's lock file.
fn all_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".lock")
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

#[test]
fn downloads_bytes_exactly_with_a_sidecar() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    let url = format!("{}/a/disk.img", server.base);
    let mut progress = LineProgress::new(Vec::new());
    let path = cache.pull(&url, None, false, &mut progress).unwrap();
    assert_eq!(Some(&path), cache.find(&url, None).as_ref());
    assert_eq!(path, cache.path_for(&url));
    assert_eq!(std::fs::read(&path).unwrap(), pattern(1, LEN));

    let lines = String::from_utf8(progress.into_inner()).unwrap();
    let key = path.file_name().unwrap().to_str().unwrap();
    assert!(
        key.contains(&digest(&pattern(1, LEN)).hex()[..12]),
        "the name carries the content digest: {key}"
    );
    assert!(
        lines.starts_with("pulling disk.img (3.00 MiB)\n"),
        "{lines}"
    );
    assert!(lines.ends_with("done, 3.00 MiB\n"), "{lines}");

    let listed = cache.list().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].path, path);
    assert_eq!(listed[0].size, LEN as u64);
    let meta = listed[0].meta.as_ref().expect("sidecar");
    assert_eq!(meta.url, url);
    assert_eq!(meta.size, LEN as u64);
    assert_eq!(meta.sha256, digest(&pattern(1, LEN)).to_string());
    assert!(
        humantime::parse_rfc3339(&meta.downloaded).is_ok(),
        "{}",
        meta.downloaded
    );
    assert_eq!(
        all_files(dir.path()),
        [key.to_owned(), format!("{key}.json")]
    );

    // Cached: no second request, unless forced; the same content is the same file.
    cache.pull(&url, None, false, &mut NoProgress).unwrap();
    assert_eq!(server.count(), 1);
    assert_eq!(cache.pull(&url, None, true, &mut NoProgress).unwrap(), path);
    assert_eq!(server.count(), 2);
    assert_eq!(cache.list().unwrap().len(), 1);

    cache.remove(&listed[0].name, false).unwrap();
    assert!(all_files(dir.path()).is_empty());
    assert!(matches!(
        cache.remove(&listed[0].name, false),
        Err(ImageError::NotFound { .. })
    ));
    assert!(matches!(
        cache.remove("../etc", false),
        Err(ImageError::NotFound { .. })
    ));
}

#[test]
fn checksum_match_and_mismatch() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    let url = format!("{}/a/noble.img", server.base);
    let good = digest(&pattern(1, LEN));
    let bad = digest(b"something else");

    let err = cache
        .pull(&url, Some(&bad), false, &mut NoProgress)
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ImageError::ChecksumMismatch { .. }), "{text}");
    assert!(
        text.contains(&bad.to_string()) && text.contains(&good.to_string()),
        "{text}"
    );
    assert!(
        all_files(dir.path()).is_empty(),
        "{:?}",
        all_files(dir.path())
    );

    let path = cache
        .pull(&url, Some(&good), false, &mut NoProgress)
        .unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), pattern(1, LEN));
    // A cached copy that matches is reused; one that does not is fetched again (and still
    // refused, leaving the good copy in place).
    cache
        .pull(&url, Some(&good), false, &mut NoProgress)
        .unwrap();
    assert_eq!(server.count(), 2);
    assert!(
        cache
            .pull(&url, Some(&bad), false, &mut NoProgress)
            .is_err()
    );
    assert_eq!(server.count(), 3);
    assert_eq!(std::fs::read(&path).unwrap(), pattern(1, LEN));
}

#[test]
fn a_dropped_connection_leaves_nothing_that_looks_complete() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    for url in [
        format!("{}/drop/disk.img", server.base),
        format!("{}/chunked-drop", server.base),
    ] {
        let mut progress = LineProgress::new(Vec::new());
        let err = cache.pull(&url, None, false, &mut progress).unwrap_err();
        assert!(
            matches!(err, ImageError::Interrupted { .. }),
            "{url}: {err}"
        );
        assert!(cache.find(&url, None).is_none());
        assert!(
            all_files(dir.path()).is_empty(),
            "{:?}",
            all_files(dir.path())
        );
        assert!(cache.list().unwrap().is_empty());
        let lines = String::from_utf8(progress.into_inner()).unwrap();
        assert!(lines.contains("failed"), "{lines}");
    }
}

#[test]
fn same_file_name_from_two_urls_does_not_collide() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    let a = cache
        .pull(
            &format!("{}/a/disk.img", server.base),
            None,
            false,
            &mut NoProgress,
        )
        .unwrap();
    let b = cache
        .pull(
            &format!("{}/b/disk.img", server.base),
            None,
            false,
            &mut NoProgress,
        )
        .unwrap();
    assert_ne!(a, b);
    assert_eq!(std::fs::read(&a).unwrap(), pattern(1, LEN));
    assert_eq!(std::fs::read(&b).unwrap(), pattern(2, LEN));
    assert_eq!(cache.list().unwrap().len(), 2);
}

#[test]
fn http_errors_are_reported() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    let err = cache
        .pull(
            &format!("{}/missing.img", server.base),
            None,
            false,
            &mut NoProgress,
        )
        .unwrap_err();
    assert!(
        matches!(err, ImageError::Status { status: 404, .. }),
        "{err}"
    );
    let err = cache
        .pull("ftp://127.0.0.1/x.img", None, false, &mut NoProgress)
        .unwrap_err();
    assert!(matches!(err, ImageError::BadUrl { .. }), "{err}");
    assert!(cache.list().unwrap().is_empty());
}

#[test]
fn the_http_proxy_variable_is_used() {
    let proxy = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let env = ProxyEnv::from_lookup(|key| {
        (key == "http_proxy").then(|| format!("http://127.0.0.1:{}", proxy.port))
    });
    let cache = ImageCache::new(dir.path()).with_proxy(env);
    // .invalid never resolves: this only works through the proxy.
    let url = "http://images.example.invalid/proxied/disk.img";
    let path = cache.pull(url, None, false, &mut NoProgress).unwrap();
    assert_eq!(std::fs::read(path).unwrap(), pattern(1, LEN));
    let seen = proxy.requests.lock().unwrap().clone();
    assert!(
        seen.iter().any(|l| l.contains("images.example.invalid")),
        "the proxy saw {seen:?}"
    );
}

// ---- Through the real CLI -------------------------------------------------------------

/// A small qcow2 image made by qemu-img with extra `args` (e.g. `-b`), read back as bytes.
fn qemu_img(args: &[&str], size: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("made.qcow2");
    qemu_img_create_with(&path, args, Some(size));
    std::fs::read(&path).unwrap()
}

fn overlay_base_of(disk: &Path) -> PathBuf {
    qemu_compose::image::overlay_base(disk).expect("the disk names a base")
}

#[test]
fn a_new_download_never_replaces_a_base_that_disks_use() {
    let server = Server::start();
    let first = qemu_img(&[], "64M");
    let url = server.put("base.qcow2", first.clone());
    let cli = Project::new(&format!(
        "vms:\n  app:\n    image: {url}\n    memory: 128\n"
    ));
    cli.ok(&["up", "--no-start"]);
    let disk = cli.join(".qemu-compose/vms/app/disk.qcow2");
    let old_base = overlay_base_of(&disk);
    assert!(std::fs::read(&old_base).unwrap() == first);

    // Upstream publishes a new build; `pull --force` fetches it as a new file.
    let second = qemu_img(&[], "96M");
    server.put("base.qcow2", second.clone());
    cli.ok(&["pull", "--force"]);
    assert!(
        std::fs::read(&old_base).unwrap() == first,
        "the base of an existing disk was changed under it"
    );
    let listed = ImageCache::new(cli.image_cache()).list().unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");
    let new_base = listed
        .iter()
        .map(|i| i.path.canonicalize().unwrap())
        .find(|p| *p != old_base)
        .unwrap();
    assert!(std::fs::read(&new_base).unwrap() == second);

    // `up` says so and leaves the disk alone; `ps` shows it.
    let stderr = cli.ok(&["up", "--no-start"]).stderr;
    assert!(
        stderr.contains(&format!(
            "VM app: its disk was made on {}, the compose file now names {}",
            old_base.display(),
            new_base.display()
        )) && stderr.contains("`qemu-compose up --force-recreate app` makes a new disk"),
        "{stderr}"
    );
    assert_eq!(overlay_base_of(&disk), old_base);
    let stdout = cli.ok(&["ps", "--format", "json"]).stdout;
    let rows: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        rows[0]["base_changed"]["made_on"],
        old_base.display().to_string(),
        "{stdout}"
    );
    assert_eq!(
        rows[0]["base_changed"]["now"],
        new_base.display().to_string()
    );
    // `inspect` shows the disk on its old base, and QEMU would be given that one.
    let stdout = cli.ok(&["inspect", "app", "--format", "json"]).stdout;
    let inspected: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let instance = &inspected["disks"]["instance"];
    assert_eq!(instance["base_image"], old_base.to_str().unwrap());
    assert_eq!(instance["base_format"], "qcow2");
    assert_eq!(
        instance["base_changed"]["compose_image"],
        new_base.to_str().unwrap()
    );
    let argv = inspected["qemu"]["argv"].to_string();
    assert!(
        argv.contains(old_base.to_str().unwrap()) && !argv.contains(new_base.to_str().unwrap()),
        "{argv}"
    );

    // The old base cannot be removed while the disk uses it, even from a folder without a
    // compose file (the cache's own record of users); the new one can.
    let elsewhere = Project::empty();
    let old_name = old_base.file_name().unwrap().to_str().unwrap();
    let out = cli.run_in(elsewhere.path(), &["image", "rm", old_name]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(old_name) && stderr.contains(&disk.display().to_string()),
        "{stderr}"
    );
    assert!(old_base.is_file());
    let new_name = new_base.file_name().unwrap().to_str().unwrap();
    let out = cli.run_in(elsewhere.path(), &["image", "rm", new_name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!new_base.exists());

    // Once the disk is gone, the base is free.
    cli.ok(&["destroy", "--force"]);
    let out = cli.run_in(elsewhere.path(), &["image", "rm", old_name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        all_files(&cli.image_cache()).is_empty(),
        "{:?}",
        all_files(&cli.image_cache())
    );
}

#[test]
fn image_rm_force_removes_a_used_base() {
    let server = Server::start();
    let url = server.put("base.qcow2", qemu_img(&[], "64M"));
    let cli = Project::new(&format!(
        "vms:\n  app:\n    image: {url}\n    memory: 128\n"
    ));
    cli.ok(&["up", "--no-start"]);
    let base = overlay_base_of(&cli.join(".qemu-compose/vms/app/disk.qcow2"));
    let name = base.file_name().unwrap().to_str().unwrap();
    let elsewhere = Project::empty();
    let out = cli.run_in(elsewhere.path(), &["image", "rm", "--force", name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!base.exists());
}

#[test]
fn downloaded_images_must_be_self_contained() {
    let server = Server::start();
    let hostile = [
        (
            "backing.qcow2",
            qemu_img(&["-b", "../../../../etc/hostname", "-F", "raw"], "1M"),
            "backing file",
        ),
        (
            "datafile.qcow2",
            qemu_img(&["-o", "data_file=/tmp/qemu-compose-test-data.raw"], "1M"),
            "external data file",
        ),
    ];
    let _ = std::fs::remove_file("/tmp/qemu-compose-test-data.raw");
    let cli = Project::new("vms: {}\n");
    for (name, bytes, field) in hostile {
        let url = server.put(name, bytes);
        let stderr = cli.fails(&["pull", &url]);
        assert!(
            stderr.contains(&url) && stderr.contains(field),
            "{name}: {stderr}"
        );
        assert!(
            all_files(&cli.image_cache()).is_empty(),
            "{name}: {:?}",
            all_files(&cli.image_cache())
        );
    }
    // A self-contained qcow2 image and a raw one are fine.
    let url = server.put("fine.qcow2", qemu_img(&[], "1M"));
    cli.ok(&["pull", &url]);
    let url = server.put("fine.raw", vec![0x55; 4096]);
    cli.ok(&["pull", &url]);
}

#[test]
fn plain_http_redirects_still_work() {
    let server = Server::start();
    let url = format!("{}/redirect/a/disk.img", server.base);
    let dir = tempfile::tempdir().unwrap();
    let path = cache(dir.path())
        .pull(&url, None, false, &mut NoProgress)
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), pattern(1, LEN));
}

const LOCAL: &str =
    "vms:\n  app:\n    image: ./base.qcow2\n    memory: 128\n    image_checksum: CHECKSUM\n";

#[test]
fn a_local_image_is_checked_against_its_checksum() {
    let base = qemu_img(&[], "64M");
    let good = digest(&base);
    let bad = digest(b"another image");
    let cli = Project::new(&LOCAL.replace("CHECKSUM", &bad.to_string()));
    std::fs::write(cli.join("base.qcow2"), &base).unwrap();
    let stderr = cli.fails(&["up", "--no-start"]);
    assert!(
        stderr.contains("VM app")
            && stderr.contains("base.qcow2")
            && stderr.contains(&bad.to_string())
            && stderr.contains(&good.to_string()),
        "{stderr}"
    );
    assert!(
        !cli.join(".qemu-compose/vms/app").exists(),
        "a VM was made from an image that fails its checksum"
    );
    let stderr = cli.fails(&["pull"]);
    assert!(stderr.contains(&good.to_string()), "{stderr}");

    cli.write_compose(&LOCAL.replace("CHECKSUM", &good.to_string()));
    cli.ok(&["up", "--no-start"]);
    assert!(
        cli.path()
            .join(".qemu-compose/vms/app/disk.qcow2")
            .is_file()
    );
}

fn partials(dir: &Path) -> Vec<String> {
    all_files(dir)
        .into_iter()
        .filter(|n| n.starts_with(".partial-"))
        .collect()
}

#[test]
fn ctrl_c_during_pull_leaves_no_partial_download() {
    let server = Server::start();
    let cli = Project::new("vms: {}\n");
    let url = format!("{}/slow/disk.img", server.base);
    let mut child = cli
        .command(&["pull", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until part of the body is on disk.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let written = partials(&cli.image_cache())
            .iter()
            .any(|n| std::fs::metadata(cli.image_cache().join(n)).is_ok_and(|m| m.len() > 0));
        if written {
            break;
        }
        assert!(Instant::now() < deadline, "the download never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::INT).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status:?}");
    assert!(
        all_files(&cli.image_cache()).is_empty(),
        "{:?}",
        all_files(&cli.image_cache())
    );
}

#[test]
fn stale_partials_are_swept_but_not_those_being_written() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path()).unwrap();
    // Left by a killed pull: nobody holds its lock.
    std::fs::write(dir.path().join(".partial-stale"), b"half an image").unwrap();
    // Being written by a concurrent pull: locked.
    let busy = std::fs::File::create(dir.path().join(".partial-busy")).unwrap();
    busy.lock().unwrap();
    cache(dir.path())
        .pull(
            &format!("{}/a/disk.img", server.base),
            None,
            false,
            &mut NoProgress,
        )
        .unwrap();
    assert_eq!(partials(dir.path()), [".partial-busy"]);
    drop(busy);
}
