//! Top-level `networks:`: their names, driver and subnet.

use std::net::Ipv4Addr;

use super::names::check_name;
use crate::compose::error::{At, Errors, Here};
use crate::compose::model::{Network, Subnet};
use crate::compose::raw::RawNetwork;

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
