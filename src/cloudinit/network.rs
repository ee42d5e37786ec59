//! `network-config` (version 2): the user-mode NIC, found by its MAC address, on DHCP; then
//! one NIC per project network with its fixed address, and no gateway or DNS server, so the
//! default route and name servers stay on the user-mode NIC.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{SeedError, SeedLink};

/// The name the guest gives its NIC.
///
/// `set-name` pins it whatever the image's naming policy is (`net.ifnames=0` or predictable
/// names): cloud-init renames the interface that matches the MAC before it renders the
/// configuration, and all its renderers (ENI on Debian's 22.4, netplan, networkd) then agree
/// on `eth0`. This is the shape of cloud-init's own fallback configuration.
const NIC_NAME: &str = "eth0";

/// The document root. `network:` as a wrapper is optional for NoCloud; cloud-init strips it.
#[derive(Debug, Serialize)]
pub(super) struct NetworkConfig {
    version: u8,
    ethernets: BTreeMap<String, Ethernet>,
}

#[derive(Debug, Serialize)]
struct Ethernet {
    #[serde(rename = "match")]
    matching: Match,
    #[serde(rename = "set-name")]
    set_name: String,
    dhcp4: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    addresses: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Match {
    macaddress: String,
}

impl NetworkConfig {
    /// The user-mode NIC matched by `mac`, renamed to `eth0`, configured by DHCPv4; then each
    /// link as `eth1`, `eth2`, … with its address.
    pub(super) fn new(mac: &str, links: &[SeedLink]) -> Result<Self, SeedError> {
        let mut ethernets = BTreeMap::new();
        ethernets.insert(
            NIC_NAME.to_owned(),
            Ethernet {
                matching: Match {
                    macaddress: normalize_mac(mac)?,
                },
                set_name: NIC_NAME.to_owned(),
                dhcp4: true,
                addresses: Vec::new(),
            },
        );
        for (n, link) in links.iter().enumerate() {
            let name = format!("eth{}", n + 1);
            ethernets.insert(
                name.clone(),
                Ethernet {
                    matching: Match {
                        macaddress: normalize_mac(&link.mac)?,
                    },
                    set_name: name,
                    dhcp4: false,
                    addresses: vec![format!("{}/{}", link.address, link.prefix)],
                },
            );
        }
        Ok(Self {
            version: 2,
            ethernets,
        })
    }
}

/// `mac` as six colon-separated lowercase hex pairs, the form udev and cloud-init compare.
fn normalize_mac(mac: &str) -> Result<String, SeedError> {
    let pairs: Vec<&str> = mac.split(':').collect();
    let valid = pairs.len() == 6
        && pairs
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
    if !valid {
        return Err(SeedError::InvalidMac(mac.to_owned()));
    }
    Ok(mac.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_is_lowercased_and_checked() {
        assert_eq!(
            normalize_mac("52:54:00:AB:cd:0F").unwrap(),
            "52:54:00:ab:cd:0f"
        );
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:0f:00",
            "52-54-00-ab-cd-0f",
            "52:54:00:ab:cd:0g",
            "52:54:00:ab:cd:f",
            "52:54:00:ab:cd:0f\n",
        ] {
            assert!(
                matches!(normalize_mac(bad), Err(SeedError::InvalidMac(_))),
                "{bad:?}"
            );
        }
    }
}
