//! Host ports for the SSH forward.
//!
//! A port is free "at allocation time" only: another program may take it before QEMU binds
//! it, which QEMU reports as a host forwarding failure; the caller then allocates again (see
//! [`super::process::StartError::HostForward`]).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, TcpListener};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "no free TCP port on 127.0.0.1 from {start} to 65535 (excluding {taken} already used by this project)"
)]
pub struct NoFreePort {
    pub start: u16,
    pub taken: usize,
}

/// The first port from `start` upward that is not in `taken` (ports this project's VMs
/// already use, running or not) and that can be bound on 127.0.0.1 right now.
pub fn allocate_ssh_port(start: u16, taken: &BTreeSet<u16>) -> Result<u16, NoFreePort> {
    (start.max(1)..=u16::MAX)
        .filter(|port| !taken.contains(port))
        .find(|&port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok())
        .ok_or(NoFreePort {
            start,
            taken: taken.len(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_taken_and_bound_ports() {
        // Find two adjacent bindable ports high up, hold the first, mark nothing taken.
        let held = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = held.local_addr().unwrap().port();
        let got = allocate_ssh_port(port, &BTreeSet::new()).unwrap();
        assert!(got > port, "{got} must skip the bound {port}");

        let taken: BTreeSet<u16> = [got].into();
        let next = allocate_ssh_port(port, &taken).unwrap();
        assert!(next > got, "{next} must skip the taken {got}");
        assert!(TcpListener::bind((Ipv4Addr::LOCALHOST, next)).is_ok());
    }

    #[test]
    fn exhaustion_is_an_error() {
        let taken: BTreeSet<u16> = [65534, 65535].into();
        assert_eq!(
            allocate_ssh_port(65534, &taken),
            Err(NoFreePort {
                start: 65534,
                taken: 2
            })
        );
    }
}
