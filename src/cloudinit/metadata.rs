//! `meta-data`: the instance id and the hostname.

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::SeedError;

#[derive(Debug, Serialize)]
pub(super) struct MetaData<'a> {
    #[serde(rename = "instance-id")]
    pub instance_id: &'a str,
    #[serde(rename = "local-hostname")]
    pub local_hostname: &'a str,
}

/// `iid-` and the first 16 hex digits of a SHA-256 over the documents that configure the guest.
///
/// cloud-init runs its per-instance modules (users, mounts, write_files, runcmd) again only
/// when the instance id changes, so the id must change whenever the configuration does. Each
/// part is length-prefixed so that moving bytes from one part to the next changes the hash.
pub(super) fn instance_id(user_data: &str, network_config: &str, hostname: &str) -> String {
    let mut hash = Sha256::new();
    for part in [user_data, network_config, hostname] {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part.as_bytes());
    }
    format!(
        "iid-{}",
        base16ct::lower::encode_string(&hash.finalize()[..8])
    )
}

/// Checks that `hostname` is one RFC 1123 label: 1 to 63 letters, digits and hyphens, not
/// starting or ending with a hyphen. cloud-init hands it to `hostnamectl`, which refuses
/// anything else.
pub(super) fn check_hostname(hostname: &str) -> Result<(), SeedError> {
    let valid = (1..=63).contains(&hostname.len())
        && hostname
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !hostname.starts_with('-')
        && !hostname.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(SeedError::InvalidHostname(hostname.to_owned()))
    }
}

/// A valid hostname for a VM name (`[a-z0-9][a-z0-9_-]*`, at most 63 characters): underscores
/// become hyphens and hyphens at either end are dropped; a name with nothing left gives `vm`.
pub fn hostname_for_vm(vm_name: &str) -> String {
    let mapped: String = vm_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .map(|c| {
            if c == '_' {
                '-'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .take(63)
        .collect();
    let trimmed = mapped.trim_matches('-');
    if trimmed.is_empty() {
        "vm".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_id_is_16_hex_digits_and_follows_every_part() {
        let id = instance_id("a", "b", "c");
        assert_eq!(id.len(), 4 + 16);
        assert!(id.starts_with("iid-"));
        assert!(id[4..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(id, instance_id("a", "b", "c"));
        assert_ne!(id, instance_id("a", "b", "d"));
        assert_ne!(id, instance_id("ab", "", "c"));
        // sha256 of three length-prefixed parts, computed independently.
        let mut bytes = Vec::new();
        for part in ["a", "b", "c"] {
            bytes.extend_from_slice(&1u64.to_le_bytes());
            bytes.extend_from_slice(part.as_bytes());
        }
        let digest = Sha256::digest(&bytes);
        assert_eq!(id[4..], base16ct::lower::encode_string(&digest[..8]));
    }

    #[test]
    fn hostnames_are_single_rfc1123_labels() {
        for good in ["db", "web-1", "A1", &"x".repeat(63)] {
            assert!(check_hostname(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "-db",
            "db-",
            "my_vm",
            "a.b",
            "a b",
            "a\nb",
            "$(id)",
            &"x".repeat(64),
        ] {
            assert!(
                matches!(check_hostname(bad), Err(SeedError::InvalidHostname(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn vm_names_map_to_valid_hostnames() {
        for (vm, host) in [("db", "db"), ("my_vm", "my-vm"), ("db_", "db"), ("_", "vm")] {
            assert_eq!(hostname_for_vm(vm), host);
            assert!(check_hostname(&hostname_for_vm(vm)).is_ok());
        }
        assert_eq!(hostname_for_vm(&"a".repeat(80)).len(), 63);
    }
}
