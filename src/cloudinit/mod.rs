//! The cloud-init NoCloud documents: typed user-data, meta-data and network-config.
//!
//! [`build_seed`] turns the facts of one VM ([`SeedInput`]) into the three documents, without
//! I/O. Each is serialised from typed structs, never pasted into a template, so no compose
//! value can add a key or a command. The engine writes them into the CIDATA image with
//! [`crate::disk::fat::build_fat_image`], labelled [`crate::disk::fat::CIDATA_LABEL`], using
//! [`Seed::files`]; this module does not import `disk`, to keep the crate's layering.

mod metadata;
mod network;
mod userdata;

use std::collections::BTreeMap;

use serde::Serialize;

pub use metadata::hostname_for_vm;

/// Everything the seed of one VM depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedInput {
    /// The guest's hostname: one RFC 1123 label (see [`hostname_for_vm`]).
    pub hostname: String,
    /// The default user.
    pub user: UserSpec,
    /// Guest mounts, in the order they go to fstab.
    pub mounts: Vec<GuestMount>,
    /// Variables appended to `/etc/environment`.
    pub environment: BTreeMap<String, String>,
    /// Shell commands run once per instance, in order (cloud-init `runcmd`).
    pub provision: Vec<String>,
    /// The MAC address of the VM's user-mode NIC, as given to QEMU.
    pub mac: String,
    /// Its NICs on project networks, in the order QEMU attaches them.
    pub links: Vec<SeedLink>,
    /// The guest's SSH host key.
    pub host_key: HostKey,
}

/// A NIC on a project network: a fixed address, no gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedLink {
    pub mac: String,
    pub address: std::net::Ipv4Addr,
    pub prefix: u8,
}

/// The SSH host key of one instance, made on the host so that the host's `ssh` can pin it:
/// the guest's sshd gets it through the seed (cloud-init `ssh_keys`), and the instance's
/// known_hosts holds its public half.
#[derive(Clone, PartialEq, Eq)]
pub struct HostKey {
    /// The private key in OpenSSH's PEM-like format (`-----BEGIN OPENSSH PRIVATE KEY-----`).
    pub private_openssh: String,
    /// The public key, one `ssh-ed25519 AAAA…` line.
    pub public: String,
}

/// The private half stays out of logs and `--debug` output.
impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey")
            .field("private_openssh", &"<redacted>")
            .field("public", &self.public)
            .finish()
    }
}

/// The default user of the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSpec {
    /// Login name, `[a-z_][a-z0-9_-]*`, at most 32 characters, not `root`.
    pub name: String,
    /// The host user's UID, so shared files have the same owner on both sides; `None` when the
    /// host user is root (the guest user then keeps the image's default UID). If the UID is
    /// already taken in the image, cloud-init fails to create the user.
    pub uid: Option<u32>,
    /// One OpenSSH public key line.
    pub ssh_authorized_key: String,
    /// The console password as a SHA-512 crypt hash, from [`hash_password`].
    pub password_hash: String,
}

/// Whether a mount target is a directory or a single file (bind-mounted onto a file created
/// at boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    /// A directory, created with `mkdir -p`.
    Dir,
    /// A file, created with `touch` after `mkdir -p` of its parent.
    File,
}

/// One guest fstab entry, as the VM's mount plan computed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestMount {
    /// `UUID=…` for a named volume, the 9p tag `mountN` for a share, or the path inside a
    /// hidden share for a file bind mount.
    pub device: String,
    /// Absolute, normalised path in the guest.
    pub target: String,
    /// `ext4`, `9p` or `none` (bind).
    pub fstype: String,
    /// The complete, comma-separated mount options, `nofail` included.
    pub options: String,
    /// fsck order: 2 for volumes, 0 for shares.
    pub pass: u8,
    /// What `bootcmd` creates at the target.
    pub target_kind: TargetKind,
}

/// The three NoCloud documents of one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// `#cloud-config` document.
    pub user_data: String,
    /// `instance-id` and `local-hostname`.
    pub meta_data: String,
    /// Network configuration version 2.
    pub network_config: String,
    /// The `instance-id` written in `meta_data`; it changes whenever any document does.
    pub instance_id: String,
}

impl Seed {
    /// The files of the CIDATA image, under the names NoCloud reads.
    pub fn files(&self) -> [(&'static str, &[u8]); 3] {
        [
            ("user-data", self.user_data.as_bytes()),
            ("meta-data", self.meta_data.as_bytes()),
            ("network-config", self.network_config.as_bytes()),
        ]
    }
}

/// Why a seed could not be built: a value that cannot be carried safely into the guest.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// Not a single RFC 1123 label.
    #[error(
        "invalid hostname {0:?}: use 1 to 63 letters, digits and '-', not starting or ending with '-'"
    )]
    InvalidHostname(String),
    /// Not a portable Linux user name.
    #[error(
        "invalid user name {0:?}: use 1 to 32 characters among a-z, 0-9, '_' and '-', starting with a letter or '_', and not root"
    )]
    InvalidUserName(String),
    /// UID 0 would make the guest user a second root.
    #[error("the guest user cannot get UID 0; pass no UID when the host user is root")]
    RootUid,
    /// Empty or multi-line SSH key.
    #[error("the SSH public key must be one non-empty line")]
    InvalidSshKey,
    /// Not an ed25519 key pair in OpenSSH format.
    #[error("the SSH host key must be an OpenSSH ed25519 private key and its one-line public key")]
    InvalidHostKey,
    /// Not a `$6$` crypt hash.
    #[error("the password hash is not a SHA-512 crypt ($6$) hash")]
    InvalidPasswordHash,
    /// A salt `crypt` cannot store.
    #[error("invalid password salt {0:?}: use 1 to 16 characters among a-z, A-Z, 0-9, '.' and '/'")]
    InvalidSalt(String),
    /// An empty console password.
    #[error("the console password is empty")]
    EmptyPassword,
    /// A mount field that cannot be written to fstab.
    #[error("mount on {target:?}: invalid {field}: {reason}")]
    InvalidMount {
        /// The mount's target, as given.
        target: String,
        /// `device`, `target`, `type`, `options` or `pass`.
        field: &'static str,
        /// What the field must look like.
        reason: &'static str,
    },
    /// Two mounts on one target.
    #[error("two mounts have the same target {0:?}")]
    DuplicateTarget(String),
    /// Not a shell identifier.
    #[error(
        "invalid environment variable name {0:?}: use letters, digits and '_', not starting with a digit"
    )]
    InvalidEnvironmentKey(String),
    /// A control character (such as a newline) in a value.
    #[error(
        "environment variable {0}: the value cannot contain control characters such as newlines"
    )]
    InvalidEnvironmentValue(String),
    /// A NUL byte, which no shell script can hold.
    #[error("provisioning command {0:?} contains a NUL character")]
    InvalidProvision(String),
    /// Not `xx:xx:xx:xx:xx:xx`.
    #[error("invalid MAC address {0:?}: expected six colon-separated hex pairs")]
    InvalidMac(String),
    /// The YAML serializer failed (a bug, not bad input).
    #[error("cannot serialise the seed as YAML: {0}")]
    Yaml(String),
}

/// Serialises a document as block YAML, quoting every scalar that YAML 1.1 (cloud-init's
/// PyYAML) would read as something other than a string.
fn to_yaml<T: Serialize>(value: &T) -> Result<String, SeedError> {
    let options = serde_saphyr::ser_options! {
        // Long values such as SSH keys stay on one line instead of a folded block.
        folded_wrap_chars: usize::MAX,
    };
    serde_saphyr::to_string_with_options(value, options).map_err(|e| SeedError::Yaml(e.to_string()))
}

/// Builds the seed documents of one VM. Pure: the same input always gives the same seed.
pub fn build_seed(input: &SeedInput) -> Result<Seed, SeedError> {
    metadata::check_hostname(&input.hostname)?;
    let user_data = userdata::CloudConfig::new(input)?.render()?;
    let network_config = to_yaml(&network::NetworkConfig::new(&input.mac, &input.links)?)?;
    let instance_id = metadata::instance_id(&user_data, &network_config, &input.hostname);
    let meta_data = to_yaml(&metadata::MetaData {
        instance_id: &instance_id,
        local_hostname: &input.hostname,
    })?;
    Ok(Seed {
        user_data,
        meta_data,
        network_config,
        instance_id,
    })
}

/// The SHA-512 crypt (`$6$salt$hash`, 5000 rounds) of `password` with `salt`.
///
/// Deterministic for a given salt, so the caller keeps the salt (with the password) in the
/// state folder and the seed stays reproducible. The salt is 1 to 16 characters of crypt's
/// alphabet `[./0-9A-Za-z]`; longer salts are refused rather than silently cut.
pub fn hash_password(password: &str, salt: &str) -> Result<String, SeedError> {
    if password.is_empty() {
        return Err(SeedError::EmptyPassword);
    }
    let salt_ok = (1..=16).contains(&salt.len())
        && salt
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/');
    if !salt_ok {
        return Err(SeedError::InvalidSalt(salt.to_owned()));
    }
    let params = sha_crypt::Sha512Params::new(sha_crypt::ROUNDS_DEFAULT)
        .map_err(|_| SeedError::InvalidPasswordHash)?;
    let hash = sha_crypt::sha512_crypt_b64(password.as_bytes(), salt.as_bytes(), &params)
        .map_err(|_| SeedError::InvalidPasswordHash)?;
    Ok(format!("$6${salt}${hash}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> SeedInput {
        SeedInput {
            hostname: "db".into(),
            user: UserSpec {
                name: "debian".into(),
                uid: Some(1000),
                ssh_authorized_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPk qemu-compose".into(),
                password_hash: hash_password("console", "abcdefgh").unwrap(),
            },
            mounts: Vec::new(),
            environment: BTreeMap::new(),
            provision: Vec::new(),
            mac: "52:54:00:12:34:56".into(),
            links: Vec::new(),
            host_key: HostKey {
                private_openssh:
                    "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
                        .into(),
                public: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHost".into(),
            },
        }
    }

    #[test]
    fn known_sha512_crypt_answer() {
        // From the SHA-crypt specification's test vectors (default rounds).
        assert_eq!(
            hash_password("Hello world!", "saltstring").unwrap(),
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
        );
    }

    #[test]
    fn bad_salts_and_empty_passwords_are_refused() {
        for salt in ["", "has space", "dollar$", "seventeen_chars_x", "ümlaut"] {
            assert!(
                matches!(hash_password("pw", salt), Err(SeedError::InvalidSalt(_))),
                "{salt:?}"
            );
        }
        assert!(matches!(
            hash_password("", "salt"),
            Err(SeedError::EmptyPassword)
        ));
    }

    #[test]
    fn seed_is_deterministic_and_the_instance_id_follows_the_content() {
        let a = build_seed(&input()).unwrap();
        assert_eq!(a, build_seed(&input()).unwrap());
        assert!(a.user_data.starts_with("#cloud-config\n"));
        assert!(a.meta_data.contains(&a.instance_id));
        let mut changed = input();
        changed.provision.push("true".into());
        assert_ne!(a.instance_id, build_seed(&changed).unwrap().instance_id);
        let mut renamed = input();
        renamed.hostname = "db2".into();
        assert_ne!(a.instance_id, build_seed(&renamed).unwrap().instance_id);
    }

    #[test]
    fn uid_zero_and_multi_line_keys_are_refused() {
        let mut root = input();
        root.user.uid = Some(0);
        assert!(matches!(build_seed(&root), Err(SeedError::RootUid)));
        let mut two_keys = input();
        two_keys.user.ssh_authorized_key = "ssh-ed25519 AAAA a\nssh-rsa BBBB b".into();
        assert!(matches!(
            build_seed(&two_keys),
            Err(SeedError::InvalidSshKey)
        ));
    }

    #[test]
    fn host_keys_of_the_wrong_shape_are_refused() {
        let good = input().host_key;
        let bad = [
            HostKey {
                public: "ssh-rsa AAAAB3Nza".into(),
                ..good.clone()
            },
            HostKey {
                public: format!("{}\nssh-ed25519 AAAA", good.public),
                ..good.clone()
            },
            HostKey {
                private_openssh: "AAAA".into(),
                ..good.clone()
            },
            HostKey {
                private_openssh: format!("{}\n#cloud-config", good.private_openssh),
                ..good.clone()
            },
        ];
        for key in bad {
            let mut with = input();
            with.host_key = key.clone();
            assert!(
                matches!(build_seed(&with), Err(SeedError::InvalidHostKey)),
                "{key:?}"
            );
        }
        assert!(
            !format!("{good:?}").contains("PRIVATE"),
            "redacted in Debug"
        );
    }

    #[test]
    fn seed_files_carry_the_nocloud_names() {
        let seed = build_seed(&input()).unwrap();
        let names: Vec<&str> = seed.files().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["user-data", "meta-data", "network-config"]);
        assert_eq!(seed.files()[0].1, seed.user_data.as_bytes());
    }
}
