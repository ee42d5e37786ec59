//! The network registry, `.qemu-compose/networks.json`: each project network's subnet and
//! the address and MAC of every VM on it. Kept so that adding a VM or a network never
//! renumbers the others, and a restarted VM gets its address back.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{StateError, write_atomic};

/// One network as allocated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkRecord {
    /// The network address (host bits zero).
    pub address: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
    /// The VMs on it, by name.
    pub vms: BTreeMap<String, Attachment>,
}

/// One VM's NIC on a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    pub address: Ipv4Addr,
    /// Six colon-separated lowercase hex pairs.
    pub mac: String,
}

/// All networks, keyed by name (the on-disk JSON object has the same shape).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkRegistry {
    pub networks: BTreeMap<String, NetworkRecord>,
}

impl NetworkRegistry {
    /// Reads the registry; a missing file is an empty registry, an unreadable one an error.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let Some(text) = super::atomic::read_optional(path)? else {
            return Ok(Self::default());
        };
        let networks = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Self { networks })
    }

    /// Writes the registry atomically (mode 0600); an empty registry removes the file.
    pub fn save(&self, path: &Path) -> Result<(), StateError> {
        if self.networks.is_empty() {
            return match std::fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::io(path, e)),
                _ => Ok(()),
            };
        }
        let mut json = serde_json::to_vec_pretty(&self.networks).expect("records serialise");
        json.push(b'\n');
        write_atomic(path, &json, 0o600)
    }

    /// The networks `vm` is on, with its attachment, in name order.
    pub fn of_vm<'a>(
        &'a self,
        vm: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a NetworkRecord, &'a Attachment)> {
        self.networks
            .iter()
            .filter_map(move |(name, net)| net.vms.get(vm).map(|a| (name.as_str(), net, a)))
    }
}
