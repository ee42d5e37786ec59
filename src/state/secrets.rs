//! Per-project secrets, made once and then reused: the SSH key pair that `ssh` and `up --wait`
//! log in with, and the console password of the guest user.
//!
//! ```text
//! <private>/ssh/id_ed25519       0600, OpenSSH private key
//! <private>/ssh/id_ed25519.pub   0644
//! <private>/console-password     0600, "<password>\n<salt>\n"
//! ```
//! The salt is stored so the password hash in the seed, and with it the seed's instance-id,
//! stays the same from one `up` to the next.
//!
//! Each instance also has its own SSH host key ([`InstanceHostKey`]), made here rather than
//! in the guest so the client can pin it: `ssh` then refuses whatever else answers on the
//! forwarded port (another process that took the port after the VM stopped, say).
//!
//! ```text
//! <private>/vms/<vm>/ssh_host_ed25519_key   0600, the guest's host key
//! <private>/vms/<vm>/known_hosts            "<alias> ssh-ed25519 AAAA…", for ssh's
//!                                           UserKnownHostsFile with HostKeyAlias=<alias>
//! ```

use std::io;
use std::path::{Path, PathBuf};

use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey};

use super::{InstancePaths, StateDir, StateError, write_atomic};
use crate::cloudinit::HostKey;

/// The project's secrets, loaded or created by [`ProjectSecrets::ensure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectSecrets {
    /// The private key file, for `ssh -i`.
    pub private_key_path: PathBuf,
    /// The public key, one `ssh-ed25519 AAAA… comment` line without the newline.
    pub public_key: String,
    /// The guest user's console password, in clear.
    pub console_password: String,
    /// The crypt salt the seed hashes the password with.
    pub password_salt: String,
}

impl ProjectSecrets {
    /// Loads the secrets of the project, creating whichever are missing. Call under the lock.
    pub fn ensure(state: &StateDir, project: &str) -> Result<Self, StateError> {
        state.ensure()?;
        let ssh_dir = state.ssh_dir();
        super::atomic::create_private_dir(&ssh_dir, 0o700)?;
        let private_key_path = state.ssh_key();
        let public_path = ssh_dir.join("id_ed25519.pub");
        let public_key = match read_optional(&private_key_path)? {
            Some(text) => {
                openssh_public(&parse_ed25519(&text, &private_key_path)?, &private_key_path)?
            }
            None => {
                let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
                    .map_err(|e| StateError::io(&private_key_path, io::Error::other(e)))?;
                key.set_comment(format!("qemu-compose:{project}"));
                let text = key
                    .to_openssh(LineEnding::LF)
                    .map_err(|e| StateError::io(&private_key_path, io::Error::other(e)))?;
                let public = openssh_public(&key, &private_key_path)?;
                // The public half first: a crash in between leaves a private key that the
                // next run reads back and derives the public key from again.
                write_atomic(&public_path, format!("{public}\n").as_bytes(), 0o644)?;
                write_atomic(&private_key_path, text.as_bytes(), 0o600)?;
                public
            }
        };
        if read_optional(&public_path)?.as_deref().map(str::trim) != Some(public_key.as_str()) {
            write_atomic(&public_path, format!("{public_key}\n").as_bytes(), 0o644)?;
        }

        let password_path = state.console_password();
        let (console_password, password_salt) = match read_optional(&password_path)? {
            Some(text) => {
                let mut lines = text.lines();
                match (lines.next(), lines.next()) {
                    (Some(p), Some(s)) if !p.is_empty() && !s.is_empty() => {
                        (p.to_string(), s.to_string())
                    }
                    _ => {
                        return Err(StateError::Corrupt {
                            path: password_path,
                            reason: "expected a password line and a salt line".into(),
                        });
                    }
                }
            }
            None => {
                let pair = (random_token(20), random_token(16));
                let text = format!("{}\n{}\n", pair.0, pair.1);
                write_atomic(&password_path, text.as_bytes(), 0o600)?;
                pair
            }
        };
        Ok(Self {
            private_key_path,
            public_key,
            console_password,
            password_salt,
        })
    }
}

/// An instance's SSH host key, and whether it was just made and still has to be saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceHostKey {
    /// The key pair.
    pub key: HostKey,
    unsaved: bool,
}

impl InstanceHostKey {
    /// The instance's host key from `path`, or a new one that [`InstanceHostKey::save`] will
    /// write: planning an instance (`inspect`) writes nothing.
    pub fn load_or_make(path: &Path) -> Result<Self, StateError> {
        let (key, unsaved) = match read_optional(path)? {
            Some(text) => (parse_ed25519(&text, path)?, false),
            None => (
                PrivateKey::random(&mut OsRng, Algorithm::Ed25519)
                    .map_err(|e| StateError::io(path, io::Error::other(e)))?,
                true,
            ),
        };
        let private_openssh = key
            .to_openssh(LineEnding::LF)
            .map_err(|e| StateError::io(path, io::Error::other(e)))?
            .to_string();
        Ok(Self {
            key: HostKey {
                private_openssh,
                public: openssh_public(&key, path)?,
            },
            unsaved,
        })
    }

    /// Writes the key if it is new, and the known_hosts line that pins it under `alias`.
    /// The key is written first: a seed is only ever built from a key that is on disk or
    /// about to be, and known_hosts follows what is on disk.
    pub fn save(&self, paths: &InstancePaths, alias: &str) -> Result<(), StateError> {
        if self.unsaved {
            write_atomic(&paths.host_key, self.key.private_openssh.as_bytes(), 0o600)?;
        }
        let line = format!("{alias} {}\n", self.key.public);
        if read_optional(&paths.known_hosts)?.as_deref() != Some(line.as_str()) {
            write_atomic(&paths.known_hosts, line.as_bytes(), 0o600)?;
        }
        Ok(())
    }
}

/// The ed25519 private key in `text`, an OpenSSH key file read from `path`.
fn parse_ed25519(text: &str, path: &Path) -> Result<PrivateKey, StateError> {
    let corrupt = |reason: String| StateError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let key = PrivateKey::from_openssh(text.trim()).map_err(|e| corrupt(e.to_string()))?;
    if key.algorithm() != Algorithm::Ed25519 {
        return Err(corrupt(format!(
            "an {} key, expected ed25519",
            key.algorithm()
        )));
    }
    Ok(key)
}

fn openssh_public(key: &PrivateKey, path: &Path) -> Result<String, StateError> {
    key.public_key()
        .to_openssh()
        .map_err(|e| StateError::io(path, io::Error::other(e)))
}

fn read_optional(path: &Path) -> Result<Option<String>, StateError> {
    super::atomic::read_optional(path)
}

/// A random string over `[A-Za-z0-9./]`, the crypt salt alphabet (so it serves as both a
/// password and a salt).
fn random_token(len: usize) -> String {
    const ALPHABET: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    bytes
        .iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn created_once_then_reused() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::with_private_home(dir.path(), &dir.path().join("home"));
        let first = ProjectSecrets::ensure(&state, "demo").unwrap();
        let again = ProjectSecrets::ensure(&state, "demo").unwrap();
        assert_eq!(first, again);
        assert!(
            first.public_key.starts_with("ssh-ed25519 "),
            "{}",
            first.public_key
        );
        assert!(first.public_key.ends_with(" qemu-compose:demo"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&first.private_key_path), 0o600);
        assert_eq!(mode(&state.console_password()), 0o600);
        assert_eq!(first.console_password.len(), 20);
    }

    #[test]
    fn a_host_key_is_made_once_saved_and_pinned() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::with_private_home(dir.path(), &dir.path().join("home"));
        let paths = InstancePaths::new(&state, "web", None);
        fs::create_dir_all(&paths.private_dir).unwrap();
        let made = InstanceHostKey::load_or_make(&paths.host_key).unwrap();
        assert!(!paths.host_key.exists(), "planning writes nothing");
        assert_ne!(
            made,
            InstanceHostKey::load_or_make(&paths.host_key).unwrap()
        );
        made.save(&paths, "web").unwrap();
        let again = InstanceHostKey::load_or_make(&paths.host_key).unwrap();
        assert_eq!(again.key, made.key);
        assert!(again.key.public.starts_with("ssh-ed25519 "));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.host_key), 0o600);
        assert_eq!(
            fs::read_to_string(&paths.known_hosts).unwrap(),
            format!("web {}\n", made.key.public)
        );
    }

    #[test]
    fn corrupt_password_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::with_private_home(dir.path(), &dir.path().join("home"));
        state.ensure().unwrap();
        fs::write(state.console_password(), "only-one-line\n").unwrap();
        let err = ProjectSecrets::ensure(&state, "demo").unwrap_err();
        assert!(err.to_string().contains("console-password"), "{err}");
    }
}
