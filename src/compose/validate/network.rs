//! Top-level `networks:` (their names, driver and subnet) and the networks of each VM.

use std::net::Ipv4Addr;

use super::names::check_name;
use super::references::{Lookups, referenced_names};
use crate::compose::error::{At, Errors, Here};
use crate::compose::model::{Network, Subnet, VmNetwork};
use crate::compose::raw::{RawNetwork, RawVmNetwork};

pub(super) fn networks(
    raw: &[(At<String>, RawNetwork)],
    here: &Here,
    errors: &mut Errors,
) -> Vec<Network> {
    raw.iter()
        .map(|(name, net)| network(name, net, &here.field(&name.value), errors))
        .collect()
}

fn network(name: &At<String>, net: &RawNetwork, here: &Here, errors: &mut Errors) -> Network {
    check_name(name, "network", here, errors);
    let driver = match &net.driver {
        Some(d) if d.value != "bridge" => {
            errors.push(
                d.pos,
                &here.field("driver"),
                format!("unknown network driver {:?} (only \"bridge\")", d.value),
            );
            d.value.clone()
        }
        Some(d) => d.value.clone(),
        None => "bridge".to_owned(),
    };
    let subnet = match &net.subnet {
        None => Subnet::Auto,
        Some(s) => parse_subnet(&s.value).unwrap_or_else(|why| {
            errors.push(s.pos, &here.field("subnet"), why);
            Subnet::Auto
        }),
    };
    Network {
        name: name.value.clone(),
        driver,
        subnet,
    }
}

/// `auto`, or an IPv4 network in CIDR form with no host bits set.
fn parse_subnet(text: &str) -> Result<Subnet, String> {
    if text == "auto" {
        return Ok(Subnet::Auto);
    }
    let bad = || format!("subnet {text:?} must be \"auto\" or an IPv4 CIDR such as 10.89.0.0/24");
    let (addr, prefix) = text.split_once('/').ok_or_else(bad)?;
    let address: Ipv4Addr = addr.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if !(8..=30).contains(&prefix) {
        return Err(format!(
            "subnet {text:?}: the prefix length must be 8 to 30"
        ));
    }
    let mask = u32::MAX << (32 - u32::from(prefix));
    if u32::from(address) & !mask != 0 {
        let network = Ipv4Addr::from(u32::from(address) & mask);
        return Err(format!(
            "subnet {text:?} has host bits set (did you mean {network}/{prefix}?)"
        ));
    }
    Ok(Subnet::Cidr { address, prefix })
}

/// A VM's `networks:`: declared networks, each once; a fixed address inside the network's
/// subnet (when the subnet is fixed: an `auto` one is checked at `up`); aliases that are
/// host names.
pub(super) fn vm_networks(
    raw: &[RawVmNetwork],
    here: &Here,
    lookups: &Lookups,
    errors: &mut Errors,
) -> Vec<VmNetwork> {
    let names: Vec<At<String>> = raw.iter().map(|n| n.name.clone()).collect();
    let kept = referenced_names(&names, here, &lookups.networks, "network", None, errors);
    let mut out = Vec::new();
    for name in kept {
        let Some(raw) = raw.iter().find(|n| n.name.value == name) else {
            continue;
        };
        let here = here.field(&name);
        let ipv4_address = raw.ipv4_address.as_ref().and_then(|a| {
            let subnet = lookups
                .network_decls
                .iter()
                .find(|n| n.name == name)
                .map_or(Subnet::Auto, |n| n.subnet);
            fixed_address(a, subnet, &here.field("ipv4_address"), errors)
        });
        let here = here.field("aliases");
        let mut aliases: Vec<String> = Vec::new();
        for (i, alias) in raw.aliases.iter().enumerate() {
            if let Err(why) = check_host_name(&alias.value) {
                errors.push(alias.pos, &here.index(i), why);
            } else if !aliases.contains(&alias.value) {
                aliases.push(alias.value.clone());
            }
        }
        out.push(VmNetwork {
            name,
            ipv4_address,
            aliases,
        });
    }
    out
}

/// An `ipv4_address`: an IPv4 address, and a host address of `subnet` when it is fixed.
fn fixed_address(
    written: &At<String>,
    subnet: Subnet,
    here: &Here,
    errors: &mut Errors,
) -> Option<Ipv4Addr> {
    let Ok(address) = written.value.parse::<Ipv4Addr>() else {
        errors.push(
            written.pos,
            here,
            format!("{:?} is not an IPv4 address", written.value),
        );
        return None;
    };
    if let Subnet::Cidr { .. } = subnet
        && !subnet.hosts().contains(&u32::from(address))
    {
        errors.push(
            written.pos,
            here,
            format!("{address} is not a host address of the network's subnet {subnet}"),
        );
        return None;
    }
    Some(address)
}

/// A name `/etc/hosts` and DNS take: labels of letters, digits and `-`, separated by dots.
fn check_host_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "alias {name:?} is not a host name (letters, digits and '-', in labels separated by dots)"
        ))
    }
}
