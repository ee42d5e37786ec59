//! HTTP(S) downloads: the proxy choice, the checksum type and the streaming copy.

use std::fmt;
use std::io::{Read, Write};
use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use ureq::http::Uri;

use super::ImageError;
use crate::progress::Progress;

/// A SHA-256 digest, written `sha256:<64 hex digits>` as in `image_checksum:`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    pub fn hex(&self) -> String {
        base16ct::lower::encode_string(&self.0)
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid checksum {0:?}: expected sha256: followed by 64 hex digits")]
pub struct BadDigest(String);

impl FromStr for Sha256Digest {
    type Err = BadDigest;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadDigest(s.to_owned());
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        let mut out = [0u8; 32];
        match base16ct::mixed::decode(hex, &mut out) {
            Ok(bytes) if bytes.len() == 32 => Ok(Sha256Digest(out)),
            _ => Err(bad()),
        }
    }
}

/// The proxy variables, read once so tests can supply their own.
///
/// As curl does: `https_proxy` for https URLs, `http_proxy` for http URLs, `all_proxy` for
/// both, lower case before upper case (except `HTTP_PROXY`, which CGI programs can be made to
/// set from a request header and so is ignored), and `no_proxy` lists hosts reached directly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    pub http: Option<String>,
    pub https: Option<String>,
    pub all: Option<String>,
    pub no_proxy: Option<String>,
}

impl ProxyEnv {
    /// From the process environment.
    pub fn from_env() -> Self {
        Self::from_lookup(|key| std::env::var(key).ok())
    }

    /// From any variable lookup; empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let first = |keys: &[&str]| {
            keys.iter()
                .filter_map(|key| lookup(key))
                .find(|value| !value.trim().is_empty())
        };
        ProxyEnv {
            http: first(&["http_proxy"]),
            https: first(&["https_proxy", "HTTPS_PROXY"]),
            all: first(&["all_proxy", "ALL_PROXY"]),
            no_proxy: first(&["no_proxy", "NO_PROXY"]),
        }
    }

    /// The proxy URL to use for `uri`, or `None` to connect directly.
    pub fn proxy_for(&self, uri: &Uri) -> Option<&str> {
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        if self
            .no_proxy
            .as_deref()
            .is_some_and(|list| bypasses(list, host))
        {
            return None;
        }
        let specific = match uri.scheme_str() {
            Some("https") => self.https.as_deref(),
            _ => self.http.as_deref(),
        };
        specific.or(self.all.as_deref())
    }
}

/// `no_proxy` matching: `*` matches everything; `example.com` and `.example.com` match that
/// host and its subdomains; addresses match literally. Ports in entries are ignored.
fn bypasses(list: &str, host: &str) -> bool {
    let host = host.to_ascii_lowercase();
    list.split(',').map(str::trim).any(|entry| {
        if entry == "*" {
            return true;
        }
        let entry = entry.trim_start_matches("*.").trim_start_matches('.');
        let entry = match entry.rsplit_once(':') {
            Some((name, port))
                if port.bytes().all(|b| b.is_ascii_digit()) && !name.contains(':') =>
            {
                name
            }
            _ => entry,
        };
        let entry = entry.to_ascii_lowercase();
        !entry.is_empty()
            && (host == entry
                || host
                    .strip_suffix(entry.as_str())
                    .is_some_and(|rest| rest.ends_with('.')))
    })
}

/// The agent that downloads `uri`. An `https://` download is `https_only`: ureq then refuses
/// every hop that is not https, so a redirect to plain `http://` (which anyone on the path
/// could answer) fails instead of being followed. A plain `http://` URL the user gave works.
pub(crate) fn agent_for(uri: &Uri, proxy: &ProxyEnv) -> Result<ureq::Agent, ImageError> {
    let proxy = match proxy.proxy_for(uri) {
        Some(p) => Some(ureq::Proxy::new(p).map_err(|e| ImageError::BadProxy {
            proxy: p.to_owned(),
            reason: e.to_string(),
        })?),
        None => None,
    };
    Ok(ureq::Agent::config_builder()
        .proxy(proxy)
        .https_only(uri.scheme_str() == Some("https"))
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        // Compressed transfer would make Content-Length useless as a completeness check.
        .accept_encoding("identity")
        .user_agent(concat!("qemu-compose/", env!("CARGO_PKG_VERSION")))
        .build()
        .into())
}

/// The error the user sees for a failed request of `url`.
fn http_error(url: &str, source: ureq::Error) -> ImageError {
    match source {
        ureq::Error::StatusCode(status) => ImageError::Status {
            url: url.to_owned(),
            status,
        },
        ureq::Error::RequireHttpsOnly(to) => ImageError::InsecureRedirect {
            url: url.to_owned(),
            to,
        },
        source => ImageError::Http {
            url: url.to_owned(),
            source: Box::new(source),
        },
    }
}

/// The result of a completed download.
#[derive(Debug)]
pub(crate) struct Fetched {
    pub size: u64,
    pub sha256: Sha256Digest,
}

/// Streams `url` into `out`, hashing as it goes. A body shorter than its `Content-Length`, or
/// a connection dropped mid-way, is an error.
pub(crate) fn fetch(
    url: &str,
    proxy: &ProxyEnv,
    out: &mut impl Write,
    progress: &mut dyn Progress,
    label: &str,
) -> Result<Fetched, ImageError> {
    let uri: Uri = url.parse().map_err(|e| ImageError::BadUrl {
        url: url.to_owned(),
        reason: format!("{e}"),
    })?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
        return Err(ImageError::BadUrl {
            url: url.to_owned(),
            reason: "only http:// and https:// URLs can be downloaded".into(),
        });
    }
    let agent = agent_for(&uri, proxy)?;
    let mut response = agent
        .get(url)
        .call()
        .map_err(|source| http_error(url, source))?;
    let total = response.body().content_length();
    progress.start(&format!("pulling {label}"), total);

    let mut reader = response.body_mut().as_reader();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size: u64 = 0;
    let result = loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(source) => {
                break Err(ImageError::Interrupted {
                    url: url.to_owned(),
                    size,
                    source,
                });
            }
        };
        let chunk = &buf[..n];
        hasher.update(chunk);
        if let Err(source) = out.write_all(chunk) {
            break Err(ImageError::Write { source });
        }
        size = size.saturating_add(n as u64);
        progress.advance(size);
    };
    let result = result.and_then(|()| match total {
        Some(expected) if expected != size => Err(ImageError::Interrupted {
            url: url.to_owned(),
            size,
            source: std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the server announced {expected} bytes"),
            ),
        }),
        _ => Ok(()),
    });
    progress.finish(result.is_ok());
    result?;
    Ok(Fetched {
        size,
        sha256: Sha256Digest(hasher.finalize().into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trip() {
        let text = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let d: Sha256Digest = text.parse().unwrap();
        assert_eq!(d.0, <[u8; 32]>::from(Sha256::digest(b"")));
        assert_eq!(d.to_string(), text);
        let upper: Sha256Digest = text
            .to_uppercase()
            .replacen("SHA256", "sha256", 1)
            .parse()
            .unwrap();
        assert_eq!(upper, d);
        for bad in [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:e3b0",
            "sha256:+3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:+3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855ff",
            "sha256:zzb0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:é3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
        ] {
            assert!(bad.parse::<Sha256Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn https_downloads_refuse_plain_http_hops() {
        let https: Uri = "https://cloud.example/x.img".parse().unwrap();
        let http: Uri = "http://cloud.example/x.img".parse().unwrap();
        let none = ProxyEnv::default();
        assert!(agent_for(&https, &none).unwrap().config().https_only());
        assert!(!agent_for(&http, &none).unwrap().config().https_only());

        // What ureq does with a plain-http hop under that agent (a redirect target is checked
        // the same way as the first URL), and the error the user sees.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let to = format!("http://{}/x.img", listener.local_addr().unwrap());
        let err = agent_for(&https, &none)
            .unwrap()
            .get(&to)
            .call()
            .unwrap_err();
        assert!(matches!(err, ureq::Error::RequireHttpsOnly(_)), "{err}");
        let text = http_error("https://cloud.example/x.img", err).to_string();
        assert!(
            text.contains("https://cloud.example/x.img")
                && text.contains(&to)
                && text.contains("redirected to"),
            "{text}"
        );
    }

    fn env(pairs: &[(&str, &str)]) -> ProxyEnv {
        ProxyEnv::from_lookup(|key| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn proxy_choice() {
        let https: Uri = "https://cloud-images.ubuntu.com/x.img".parse().unwrap();
        let http: Uri = "http://deb.example.org:8080/x.img".parse().unwrap();
        let e = env(&[
            ("https_proxy", "http://p1:3128"),
            ("http_proxy", "http://p2:3128"),
        ]);
        assert_eq!(e.proxy_for(&https), Some("http://p1:3128"));
        assert_eq!(e.proxy_for(&http), Some("http://p2:3128"));
        // Upper-case HTTP_PROXY is ignored (httpoxy); ALL_PROXY is the fallback.
        let e = env(&[
            ("HTTP_PROXY", "http://bad"),
            ("ALL_PROXY", "socks5://p3:1080"),
        ]);
        assert_eq!(e.proxy_for(&http), Some("socks5://p3:1080"));
        let e = env(&[("HTTPS_PROXY", "http://p4"), ("https_proxy", "")]);
        assert_eq!(e.proxy_for(&https), Some("http://p4"));
        assert_eq!(env(&[]).proxy_for(&https), None);
    }

    #[test]
    fn no_proxy_matching() {
        let uri = |u: &str| u.parse::<Uri>().unwrap();
        let e = env(&[
            ("all_proxy", "http://p:1"),
            (
                "no_proxy",
                "localhost, .internal.example,ubuntu.com:443,10.0.0.1",
            ),
        ]);
        assert_eq!(e.proxy_for(&uri("http://localhost/x")), None);
        assert_eq!(e.proxy_for(&uri("http://a.b.internal.example/x")), None);
        assert_eq!(e.proxy_for(&uri("http://internal.example/x")), None);
        assert_eq!(e.proxy_for(&uri("https://cloud-images.UBUNTU.com/x")), None);
        assert_eq!(e.proxy_for(&uri("http://10.0.0.1/x")), None);
        assert_eq!(
            e.proxy_for(&uri("http://notubuntu.com/x")),
            Some("http://p:1")
        );
        assert_eq!(e.proxy_for(&uri("http://10.0.0.10/x")), Some("http://p:1"));
        let all = env(&[("all_proxy", "http://p:1"), ("NO_PROXY", "*")]);
        assert_eq!(all.proxy_for(&uri("http://example.org/")), None);
    }
}
