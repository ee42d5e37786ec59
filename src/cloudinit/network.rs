//! `network-config` (version 2): the VM's one NIC, found by its MAC address, on DHCP.

use std::collections::BTreeMap;

use serde::Serialize;

use super::SeedError;

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
    ethernets: BTreeMap<&'static str, Ethernet>,
}

#[derive(Debug, Serialize)]
struct Ethernet {
    #[serde(rename = "match")]
    matching: Match,
    #[serde(rename = "set-name")]
    set_name: &'static str,
    dhcp4: bool,
}

#[derive(Debug, Serialize)]
struct Match {
    macaddress: String,
}

impl NetworkConfig {
    /// One ethernet matched by `mac`, renamed to `eth0`, configured by DHCPv4.
    pub(super) fn dhcp(mac: &str) -> Result<Self, SeedError> {
        let ethernet = Ethernet {
            matching: Match {
                macaddress: normalize_mac(mac)?,
            },
            set_name: NIC_NAME,
            dhcp4: true,
        };
        Ok(Self {
            version: 2,
            ethernets: BTreeMap::from([(NIC_NAME, ethernet)]),
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
