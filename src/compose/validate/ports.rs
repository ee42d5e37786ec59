//! Host ports: each VM's forwards and SSH port, and no host port bound twice across the
//! project.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::compose::error::{At, Errors, Here};
use crate::compose::model::{PortForward, Protocol, Vm};
use crate::compose::raw::{RawFile, RawVm};
use crate::compose::tree::Pos;

/// A VM's `ports:`; a forward that does not parse is reported and left out.
pub(super) fn forwards(raw: &[At<String>], here: &Here, errors: &mut Errors) -> Vec<PortForward> {
    raw.iter()
        .enumerate()
        .filter_map(|(i, p)| {
            parse_port(&p.value)
                .map_err(|why| errors.push(p.pos, &here.index(i), why))
                .ok()
        })
        .collect()
}

/// `ssh: {port: …}`, the fixed host port forwarded to the guest's SSH server.
pub(super) fn ssh_port(port: Option<&At<i128>>, here: &Here, errors: &mut Errors) -> Option<u16> {
    let port = port?;
    port_number(port.value)
        .map_err(|why| errors.push(port.pos, here, why))
        .ok()
}

fn port_number(n: i128) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("port {n} must be between 1 and 65535"))
}

/// `[ip:]host:guest[/tcp|/udp]`; an IPv6 address goes in brackets: `[::1]:8080:80`.
fn parse_port(spec: &str) -> Result<PortForward, String> {
    let bad = |why: &str| format!("port {spec:?}: {why} (expected [IP:]HOST:GUEST[/tcp|/udp])");
    let (body, protocol) = match spec.rsplit_once('/') {
        Some((b, "tcp")) => (b, Protocol::Tcp),
        Some((b, "udp")) => (b, Protocol::Udp),
        Some(_) => return Err(bad("the protocol must be tcp or udp")),
        None => (spec, Protocol::Tcp),
    };
    let (ip_text, ports) = split_address(body).map_err(bad)?;
    let host_ip = ip_text
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map_err(|_| bad(&format!("{ip:?} is not an IP address")))
        })
        .transpose()?;
    let (host, guest) = ports
        .split_once(':')
        .ok_or_else(|| bad("missing the guest port"))?;
    let number = |p: &str| forwarded_port_number(p).map_err(|why| bad(&why));
    Ok(PortForward {
        host_ip,
        host_port: number(host)?,
        guest_port: number(guest)?,
        protocol,
    })
}

/// Splits `[ip:]host:guest` into the address, if any, and `host:guest`.
fn split_address(body: &str) -> Result<(Option<&str>, &str), &'static str> {
    if let Some(rest) = body.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or("unclosed [")?;
        let ports = after
            .strip_prefix(':')
            .ok_or("expected : after the address")?;
        return Ok((Some(ip), ports));
    }
    match body.matches(':').count() {
        1 => Ok((None, body)),
        2 => body
            .split_once(':')
            .map(|(ip, ports)| (Some(ip), ports))
            .ok_or("malformed"),
        _ => Err("expected two or three parts separated by :"),
    }
}

/// The host or guest port of a forward: one number, not a range.
fn forwarded_port_number(p: &str) -> Result<u16, String> {
    if p.contains('-') {
        return Err("port ranges are not supported".to_owned());
    }
    let n: i128 = p
        .parse()
        .map_err(|_| format!("{p:?} is not a port number"))?;
    port_number(n)
}

/// A host port one VM asks for, and where.
struct Wanted<'a> {
    vm: &'a str,
    ip: Option<IpAddr>,
    port: u16,
    protocol: Protocol,
    pos: Pos,
    here: Here,
}

/// Who binds one port and protocol: on all addresses, or on particular ones (in compose
/// order, so a clash always names the first VM that bound).
#[derive(Default)]
struct Binders<'a> {
    wildcard: Option<&'a str>,
    by_ip: Vec<(IpAddr, &'a str)>,
}

impl<'a> Binders<'a> {
    /// Records that `vm` binds `ip` (every address when `None` or unspecified); returns the VM
    /// that already binds an address this clashes with, if any.
    fn claim(&mut self, vm: &'a str, ip: Option<IpAddr>) -> Option<&'a str> {
        let ip = ip.filter(|ip| !ip.is_unspecified());
        let clash = match ip {
            None => self.wildcard.or_else(|| self.by_ip.first().map(|b| b.1)),
            Some(ip) => self
                .wildcard
                .or_else(|| self.by_ip.iter().find(|b| b.0 == ip).map(|b| b.1)),
        };
        match ip {
            None => self.wildcard = self.wildcard.or(Some(vm)),
            Some(ip) if !self.by_ip.iter().any(|b| b.0 == ip) => self.by_ip.push((ip, vm)),
            Some(_) => {}
        }
        clash
    }
}

/// Two forwards of the same host port and protocol (or an SSH port reused) cannot both bind.
pub(super) fn check_host_ports(raw: &RawFile, vms: &[Vm], here: &Here, errors: &mut Errors) {
    let mut bound: HashMap<(u16, Protocol), Binders> = HashMap::new();
    for (vm, (_, raw_vm)) in vms.iter().zip(&raw.vms) {
        for wanted in wanted_ports(vm, raw_vm, &here.vm(&vm.name)) {
            let binders = bound.entry((wanted.port, wanted.protocol)).or_default();
            let Some(other) = binders.claim(wanted.vm, wanted.ip) else {
                continue;
            };
            let whom = if other == wanted.vm {
                "another forward of this VM".to_owned()
            } else {
                format!("VM {other:?}")
            };
            errors.push(
                wanted.pos,
                &wanted.here,
                format!(
                    "host port {}/{} is already used by {whom}",
                    wanted.port,
                    wanted.protocol.as_str()
                ),
            );
        }
    }
}

/// The VM's SSH port, then its forwards. Forwards that failed to parse are missing from
/// `vm.ports`, so the written ones are parsed again to keep each one's place.
fn wanted_ports<'a>(vm: &'a Vm, raw: &RawVm, here: &Here) -> Vec<Wanted<'a>> {
    let mut wanted = Vec::new();
    if let (Some(port), Some(raw_port)) = (vm.ssh_port, &raw.ssh_port) {
        wanted.push(Wanted {
            vm: &vm.name,
            ip: None,
            port,
            protocol: Protocol::Tcp,
            pos: raw_port.pos,
            here: here.field("ssh").field("port"),
        });
    }
    for (i, raw_port) in raw.ports.iter().enumerate() {
        if let Ok(p) = parse_port(&raw_port.value) {
            wanted.push(Wanted {
                vm: &vm.name,
                ip: p.host_ip,
                port: p.host_port,
                protocol: p.protocol,
                pos: raw_port.pos,
                here: here.field("ports").index(i),
            });
        }
    }
    wanted
}
