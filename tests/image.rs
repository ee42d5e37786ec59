//! The image cache against an HTTP server run by the test on 127.0.0.1: nothing else on the
//! network is touched (the proxy test names a host that the "proxy" below answers for).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use qemu_compose::image::progress::{LineProgress, NoProgress};
use qemu_compose::image::{ImageCache, ImageError, ProxyEnv, Sha256Digest};
use sha2::{Digest, Sha256};

/// Deterministic bytes that differ per seed, several read buffers long.
fn payload(seed: u8, len: usize) -> Vec<u8> {
    let mut x = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn digest(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

const LEN: usize = 3 << 20;

/// A tiny HTTP/1.1 server, one connection at a time, `Connection: close`:
/// `/a/<name>` and `/b/<name>` serve different payloads, `/drop/<name>` announces the full
/// length and hangs up half-way, `/chunked-drop` hangs up inside a chunked body, anything else
/// is 404. A proxy's absolute-form request is served by its path, and `CONNECT` is accepted.
struct Server {
    base: String,
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let _ = serve(stream, &log);
            }
        });
        Server {
            base: format!("http://127.0.0.1:{port}"),
            port,
            requests,
        }
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
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

fn serve(stream: TcpStream, log: &Mutex<Vec<String>>) -> std::io::Result<()> {
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
        out.write_all(&payload(1, LEN))?;
    } else if path.starts_with("/b/") {
        out.write_all(head(LEN).as_bytes())?;
        out.write_all(&payload(2, LEN))?;
    } else if path.starts_with("/drop/") {
        out.write_all(head(LEN).as_bytes())?;
        out.write_all(&payload(1, LEN)[..LEN / 2])?;
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

/// Every file in the cache directory, hidden ones included.
fn all_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
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
    assert_eq!(path, cache.path_for(&url));
    assert_eq!(std::fs::read(&path).unwrap(), payload(1, LEN));

    let lines = String::from_utf8(progress.into_inner()).unwrap();
    let key = path.file_name().unwrap().to_str().unwrap();
    assert!(
        lines.starts_with(&format!("pulling {key} (3.00 MiB)\n")),
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
    assert_eq!(meta.sha256, digest(&payload(1, LEN)).to_string());
    assert!(
        humantime::parse_rfc3339(&meta.downloaded).is_ok(),
        "{}",
        meta.downloaded
    );
    assert_eq!(
        all_files(dir.path()),
        [key.to_owned(), format!("{key}.json")]
    );

    // Cached: no second request, unless forced.
    cache.pull(&url, None, false, &mut NoProgress).unwrap();
    assert_eq!(server.count(), 1);
    cache.pull(&url, None, true, &mut NoProgress).unwrap();
    assert_eq!(server.count(), 2);

    cache.remove(&listed[0].name).unwrap();
    assert!(all_files(dir.path()).is_empty());
    assert!(matches!(
        cache.remove(&listed[0].name),
        Err(ImageError::NotFound { .. })
    ));
    assert!(matches!(
        cache.remove("../etc"),
        Err(ImageError::NotFound { .. })
    ));
}

#[test]
fn checksum_match_and_mismatch() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    let url = format!("{}/a/noble.img", server.base);
    let good = digest(&payload(1, LEN));
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
    assert_eq!(std::fs::read(&path).unwrap(), payload(1, LEN));
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
    assert_eq!(std::fs::read(&path).unwrap(), payload(1, LEN));
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
        assert!(!cache.path_for(&url).exists());
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
    assert_eq!(std::fs::read(&a).unwrap(), payload(1, LEN));
    assert_eq!(std::fs::read(&b).unwrap(), payload(2, LEN));
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
    assert_eq!(std::fs::read(path).unwrap(), payload(1, LEN));
    let seen = proxy.requests.lock().unwrap().clone();
    assert!(
        seen.iter().any(|l| l.contains("images.example.invalid")),
        "the proxy saw {seen:?}"
    );
}
