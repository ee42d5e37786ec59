//! Project networks: addresses, names and the switch that joins the VMs.
//!
//! Without root there is no bridge or TAP device. Each VM gets one more NIC per network, a
//! QEMU `-netdev stream` client of the network's unix socket, served by the project's switch
//! ([`crate::net::switch`]): our own binary (`qemu-compose network-switch`), one process per
//! project, started by `up` under the project lock and ended by `stop`/`destroy` once no VM of
//! the project runs. It holds the lock file of [`StateDir::switch_dir`] while it lives; a
//! lock nobody holds is a dead switch, whatever pid the file names.
//!
//! Addresses are allocated once and kept in `networks.json` ([`allocate`]); the guest gets its
//! own through network-config (no gateway, no DNS: the default route stays on the user-mode
//! NIC). Names come from a hosts list per VM ([`hosts_file`]) that `up` rewrites for every VM
//! of the project; the guest sees it through a read-only 9p share bind-mounted on
//! `/etc/hosts`, so a VM that joins later is resolvable from running VMs at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::compose::{Project, Subnet};
/// The switch process's entry point (`qemu-compose network-switch`) and what its lock says.
pub use crate::net::{SwitchInfo, run as run_switch};
use crate::qemu::argv::{LinkSpec, MacAddress};
use crate::state::instance::SocketDir;
use crate::state::networks::{Attachment, NetworkRecord};
use crate::state::{NetworkRegistry, StateDir, StateError, atomic};

use super::{EngineError, HostEnv};

/// Where `subnet: auto` networks are numbered: `10.89.N.0/24`, the first N no other network
/// of the project uses.
const AUTO_BASE: [u8; 2] = [10, 89];

/// The first QEMU with `-netdev stream,reconnect-ms=` (9.2).
pub const MIN_QEMU: (u32, u32) = (9, 2);

/// The (major, minor) version in `qemu-system-* --version`'s first line
/// ("QEMU emulator version 10.0.2 (Debian …)").
pub fn qemu_version(first_line: &str) -> Option<(u32, u32)> {
    let version = first_line
        .split("version ")
        .nth(1)?
        .split_whitespace()
        .next()?;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// Refuses a QEMU older than [`MIN_QEMU`] for VMs on networks, before anything is made.
pub fn check_qemu(qemu: &Path, vms: &[&str]) -> Result<(), NetworkError> {
    let out = Command::new(qemu)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| NetworkError::OldQemu {
            vms: vms.join(", "),
            found: format!("cannot run {}: {e}", qemu.display()),
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next().unwrap_or_default();
    match qemu_version(line) {
        Some(v) if v >= MIN_QEMU => Ok(()),
        _ => Err(NetworkError::OldQemu {
            vms: vms.join(", "),
            found: format!("{} says {line:?}", qemu.display()),
        }),
    }
}

/// Why networks cannot be laid out as the compose file asks.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetworkError {
    /// Two fixed subnets overlap.
    #[error("networks {a} ({a_subnet}) and {b} ({b_subnet}) overlap; give them separate subnets")]
    Overlap {
        a: String,
        a_subnet: String,
        b: String,
        b_subnet: String,
    },
    /// A fixed address is not a host address of the network (an `auto` subnet is known here).
    #[error(
        "VM {vm}: ipv4_address {address} is not a host address of network {network} ({subnet})"
    )]
    OutsideSubnet {
        vm: String,
        network: String,
        address: Ipv4Addr,
        subnet: String,
    },
    /// Two VMs ask for one address.
    #[error("VMs {a} and {b} both ask for {address} on network {network}")]
    Taken {
        a: String,
        b: String,
        network: String,
        address: Ipv4Addr,
    },
    /// No address left.
    #[error("network {network} ({subnet}) has no address left for VM {vm}")]
    Full {
        vm: String,
        network: String,
        subnet: String,
    },
    /// No /24 left under 10.89.0.0/16.
    #[error("network {network}: no free 10.89.N.0/24 subnet is left; give it a `subnet:`")]
    NoSubnet { network: String },
    /// The QEMU cannot join a switch.
    #[error(
        "VM(s) {vms} are on project networks, which need QEMU 9.2 or later (-netdev stream with reconnect-ms); {found}"
    )]
    OldQemu { vms: String, found: String },
    /// The switch process did not come up.
    #[error("the network switch did not start: {reason} (log: {})", .log.display())]
    SwitchStart { reason: String, log: PathBuf },
    /// The switch process did not end when asked.
    #[error("the network switch (process {pid}) did not end within 5 s of SIGTERM")]
    SwitchStuck { pid: u32 },
}

/// A subnet as numbers: the network address and the prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    address: u32,
    prefix: u8,
}

impl Cidr {
    fn of(record: &NetworkRecord) -> Self {
        Self {
            address: u32::from(record.address),
            prefix: record.prefix,
        }
    }

    fn subnet(self) -> Subnet {
        Subnet::Cidr {
            address: Ipv4Addr::from(self.address),
            prefix: self.prefix,
        }
    }

    fn overlaps(self, other: Cidr) -> bool {
        let prefix = self.prefix.min(other.prefix);
        let mask = u32::MAX << (32 - u32::from(prefix));
        self.address & mask == other.address & mask
    }
}

/// The project's networks as they are to be: every declared network with a subnet, and every
/// VM of the file on it with an address and a MAC. Records of VMs in `keep` (instances of
/// VMs no longer in the file) stay as they were, so a running orphan keeps its address; all
/// else the file does not name any more is dropped.
pub fn allocate(
    project: &Project,
    keep: &BTreeSet<String>,
    old: &NetworkRegistry,
) -> Result<NetworkRegistry, NetworkError> {
    let mut out = NetworkRegistry::default();
    // Networks the file dropped but a kept VM still sits on stay as they are.
    for (name, record) in &old.networks {
        if project.networks.iter().any(|n| &n.name == name) {
            continue;
        }
        let vms: BTreeMap<_, _> = record
            .vms
            .iter()
            .filter(|(vm, _)| keep.contains(*vm))
            .map(|(vm, a)| (vm.clone(), a.clone()))
            .collect();
        if !vms.is_empty() {
            out.networks.insert(
                name.clone(),
                NetworkRecord {
                    vms,
                    ..record.clone()
                },
            );
        }
    }
    let subnets = subnets(project, old, &out)?;
    for network in &project.networks {
        let cidr = subnets[&network.name];
        let old_record = old
            .networks
            .get(&network.name)
            .filter(|r| Cidr::of(r) == cidr);
        let record = addresses(project, &network.name, cidr, old_record, keep)?;
        out.networks.insert(network.name.clone(), record);
    }
    Ok(out)
}

/// A subnet per declared network: fixed ones as written, `auto` ones as before when still
/// free, else the first free `10.89.N.0/24`.
fn subnets(
    project: &Project,
    old: &NetworkRegistry,
    kept: &NetworkRegistry,
) -> Result<BTreeMap<String, Cidr>, NetworkError> {
    let mut taken: Vec<(String, Cidr)> = kept
        .networks
        .iter()
        .map(|(name, r)| (name.clone(), Cidr::of(r)))
        .collect();
    let claim = |name: &str, cidr: Cidr, taken: &mut Vec<(String, Cidr)>| {
        if let Some((other, other_cidr)) = taken.iter().find(|(_, c)| c.overlaps(cidr)) {
            return Err(NetworkError::Overlap {
                a: other.clone(),
                a_subnet: other_cidr.subnet().to_string(),
                b: name.to_owned(),
                b_subnet: cidr.subnet().to_string(),
            });
        }
        taken.push((name.to_owned(), cidr));
        Ok(())
    };
    let mut out = BTreeMap::new();
    for network in &project.networks {
        if let Subnet::Cidr { address, prefix } = network.subnet {
            let cidr = Cidr {
                address: u32::from(address),
                prefix,
            };
            claim(&network.name, cidr, &mut taken)?;
            out.insert(network.name.clone(), cidr);
        }
    }
    let auto = project.networks.iter().filter(|n| n.subnet == Subnet::Auto);
    // First those that had a subnet, so a new network never takes an old one's.
    let mut pending = Vec::new();
    for network in auto {
        let before = old.networks.get(&network.name).map(Cidr::of);
        match before {
            Some(cidr) if !taken.iter().any(|(_, c)| c.overlaps(cidr)) => {
                taken.push((network.name.clone(), cidr));
                out.insert(network.name.clone(), cidr);
            }
            _ => pending.push(network),
        }
    }
    for network in pending {
        let cidr = (0..=255u8)
            .map(|n| Cidr {
                address: u32::from(Ipv4Addr::new(AUTO_BASE[0], AUTO_BASE[1], n, 0)),
                prefix: 24,
            })
            .find(|cidr| !taken.iter().any(|(_, c)| c.overlaps(*cidr)))
            .ok_or_else(|| NetworkError::NoSubnet {
                network: network.name.clone(),
            })?;
        taken.push((network.name.clone(), cidr));
        out.insert(network.name.clone(), cidr);
    }
    Ok(out)
}

/// The VMs on `network`: fixed addresses first, then what each had before, then the lowest
/// free address from `.2` up (`.1` is left for a gateway, as Docker does).
fn addresses(
    project: &Project,
    network: &str,
    cidr: Cidr,
    old: Option<&NetworkRecord>,
    keep: &BTreeSet<String>,
) -> Result<NetworkRecord, NetworkError> {
    let subnet = cidr.subnet();
    let hosts = subnet.hosts();
    let members: Vec<(&str, Option<Ipv4Addr>)> = project
        .vms
        .iter()
        .filter_map(|vm| {
            let on = vm.networks.iter().find(|n| n.name == network)?;
            Some((vm.name.as_str(), on.ipv4_address))
        })
        .collect();
    let mut owner: BTreeMap<u32, String> = BTreeMap::new();
    for (vm, fixed) in &members {
        let Some(address) = fixed else { continue };
        if !hosts.contains(&u32::from(*address)) {
            return Err(NetworkError::OutsideSubnet {
                vm: (*vm).to_owned(),
                network: network.to_owned(),
                address: *address,
                subnet: subnet.to_string(),
            });
        }
        if let Some(other) = owner.insert(u32::from(*address), (*vm).to_owned()) {
            return Err(NetworkError::Taken {
                a: other,
                b: (*vm).to_owned(),
                network: network.to_owned(),
                address: *address,
            });
        }
    }
    let before = |vm: &str| old.and_then(|r| r.vms.get(vm));
    let mut chosen: BTreeMap<String, Ipv4Addr> = members
        .iter()
        .filter_map(|(vm, fixed)| fixed.map(|a| ((*vm).to_owned(), a)))
        .collect();
    // Kept orphans, then VMs of the file that had an address.
    let kept_orphans = old
        .into_iter()
        .flat_map(|r| r.vms.keys())
        .filter(|vm| keep.contains(*vm) && !members.iter().any(|(m, _)| m == vm))
        .map(String::as_str);
    let returning = members
        .iter()
        .filter(|(_, fixed)| fixed.is_none())
        .map(|(vm, _)| *vm);
    let mut fresh = Vec::new();
    for vm in kept_orphans.chain(returning) {
        match before(vm).map(|a| u32::from(a.address)) {
            Some(n) if hosts.contains(&n) && !owner.contains_key(&n) => {
                owner.insert(n, vm.to_owned());
                chosen.insert(vm.to_owned(), Ipv4Addr::from(n));
            }
            _ if keep.contains(vm) && !members.iter().any(|(m, _)| *m == vm) => {}
            _ => fresh.push(vm),
        }
    }
    for vm in fresh {
        let free = hosts.clone().skip(1).find(|n| !owner.contains_key(n));
        let n = free.ok_or_else(|| NetworkError::Full {
            vm: vm.to_owned(),
            network: network.to_owned(),
            subnet: subnet.to_string(),
        })?;
        owner.insert(n, vm.to_owned());
        chosen.insert(vm.to_owned(), Ipv4Addr::from(n));
    }
    let mut macs: BTreeSet<String> = BTreeSet::new();
    let mut vms = BTreeMap::new();
    for (vm, address) in chosen {
        let mut mac = before(&vm)
            .map(|a| a.mac.clone())
            .unwrap_or_else(|| link_mac(&project.name, &vm, network, 0));
        let mut attempt = 1;
        while macs.contains(&mac) {
            mac = link_mac(&project.name, &vm, network, attempt);
            attempt += 1;
        }
        macs.insert(mac.clone());
        vms.insert(vm, Attachment { address, mac });
    }
    Ok(NetworkRecord {
        address: Ipv4Addr::from(cidr.address),
        prefix: cidr.prefix,
        vms,
    })
}

fn link_mac(project: &str, vm: &str, network: &str, attempt: u32) -> String {
    MacAddress::derived_from(&format!("{project}/{vm}/{network}/{attempt}")).to_string()
}

/// The `/etc/hosts` of VM `vm`: the usual local lines, then every VM on a network it is on,
/// as `<vm>.<network>`, `<vm>` and its aliases there (a name already given by an earlier
/// line is left out: the first line wins in every resolver).
pub fn hosts_file(project: &Project, registry: &NetworkRegistry, vm: &str) -> String {
    let hostname = crate::cloudinit::hostname_for_vm(vm);
    let mut out = format!(
        "# /etc/hosts of VM {vm}, written by qemu-compose at each `up` (read-only here).\n\
         127.0.0.1\tlocalhost\n\
         127.0.1.1\t{hostname}\n\
         ::1\tlocalhost ip6-localhost ip6-loopback\n\
         ff02::1\tip6-allnodes\n\
         ff02::2\tip6-allrouters\n"
    );
    let mut given: BTreeSet<String> = ["localhost".to_owned(), hostname].into();
    for (network, record, _) in registry.of_vm(vm) {
        for (peer, attachment) in &record.vms {
            let aliases = project
                .vm(peer)
                .and_then(|p| p.networks.iter().find(|n| n.name == network))
                .map(|n| n.aliases.as_slice())
                .unwrap_or_default();
            let names: Vec<String> = [format!("{peer}.{network}"), peer.clone()]
                .into_iter()
                .chain(aliases.iter().cloned())
                .filter(|name| given.insert(name.clone()))
                .collect();
            if !names.is_empty() {
                out.push_str(&format!("{}\t{}\n", attachment.address, names.join(" ")));
            }
        }
    }
    out
}

/// The NICs of `vm` on project networks, in the order of its `networks:` (the guest names
/// them `eth1`, `eth2`, …), with their addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub network: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub nic: LinkSpec,
}

/// The project's networks for one `up`: the registry and where the switch's sockets are.
#[derive(Debug, Clone)]
pub struct Networks {
    pub registry: NetworkRegistry,
    pub sockets: SocketDir,
}

impl Networks {
    /// The registry as saved and the socket folder; nothing is created.
    pub fn load(state: &StateDir, host: &HostEnv) -> Result<Self, StateError> {
        Ok(Self {
            registry: NetworkRegistry::load(&state.networks_json())?,
            sockets: socket_dir(state, host),
        })
    }

    /// The links of `vm`, in compose order.
    pub fn links(&self, project: &Project, vm: &str) -> Vec<Link> {
        let Some(decl) = project.vm(vm) else {
            return Vec::new();
        };
        decl.networks
            .iter()
            .filter_map(|n| {
                let record = self.registry.networks.get(&n.name)?;
                let attachment = record.vms.get(vm)?;
                let mac = parse_mac(&attachment.mac)?;
                Some(Link {
                    network: n.name.clone(),
                    address: attachment.address,
                    prefix: record.prefix,
                    nic: LinkSpec {
                        mac,
                        socket: self.sockets.path().join(socket_name(&n.name)),
                    },
                })
            })
            .collect()
    }
}

fn parse_mac(text: &str) -> Option<MacAddress> {
    let bytes: Vec<u8> = text
        .split(':')
        .map(|p| u8::from_str_radix(p, 16).ok())
        .collect::<Option<_>>()?;
    Some(MacAddress(bytes.try_into().ok()?))
}

/// A network's socket: a hash of its name, so the path has one length whatever the name and
/// the folder never has to move when a network with a longer name appears.
fn socket_name(network: &str) -> String {
    let digest = Sha256::digest(network.as_bytes());
    format!("{}.sock", base16ct::lower::encode_string(&digest[..5]))
}

fn socket_dir(state: &StateDir, host: &HostEnv) -> SocketDir {
    SocketDir::new(
        state,
        ".net",
        &state.switch_dir(),
        &socket_name(""),
        host.runtime_dir.as_deref(),
    )
}

/// Removes the switch's sockets when they were moved under the runtime folder (a long
/// project path), once the project has no VM left and the switch has ended; the project's
/// folder there goes too when it is empty. In the private folder they go with it.
pub fn remove_relocated_sockets(state: &StateDir, host: &HostEnv) -> Result<(), EngineError> {
    let dir = socket_dir(state, host);
    if !dir.relocated() || !dir.path().exists() {
        return Ok(());
    }
    dir.check()?;
    fs::remove_dir_all(dir.path()).map_err(|e| StateError::io(dir.path(), e))?;
    if let Some(project_sockets) = dir.path().parent() {
        let _ = fs::remove_dir(project_sockets);
    }
    Ok(())
}

/// Allocates and saves the project's networks, and writes the hosts list of every VM that
/// has an instance or is in `starting` (under the project lock).
pub fn update(
    state: &StateDir,
    host: &HostEnv,
    project: &Project,
    starting: &[&str],
) -> Result<Networks, EngineError> {
    let path = state.networks_json();
    let old = NetworkRegistry::load(&path)?;
    let instances = state.instance_names()?;
    let keep: BTreeSet<String> = instances
        .iter()
        .filter(|name| project.vm(name).is_none())
        .cloned()
        .collect();
    let registry = allocate(project, &keep, &old)?;
    if registry != old {
        registry.save(&path)?;
    }
    let on_networks: BTreeSet<&str> = registry
        .networks
        .values()
        .flat_map(|r| r.vms.keys().map(String::as_str))
        .collect();
    for vm in on_networks {
        if !(instances.contains(vm) || starting.contains(&vm)) {
            continue;
        }
        let paths = super::workspace::instance_paths(state, host, vm);
        state.check_inside(&paths.hosts)?;
        atomic::create_private_dir(&paths.private_dir, 0o700)?;
        atomic::create_private_dir(&paths.hosts, 0o755)?;
        let text = hosts_file(project, &registry, vm);
        let file = paths.hosts.join("hosts");
        // Written (and synced) only when it changes: most `up`s change no address.
        if atomic::read_optional(&file)?.as_deref() != Some(text.as_str()) {
            atomic::write_atomic(&file, text.as_bytes(), 0o644)?;
        }
    }
    Ok(Networks {
        registry,
        sockets: socket_dir(state, host),
    })
}

// ---- The switch process -------------------------------------------------------------------

fn switch_lock(state: &StateDir) -> PathBuf {
    state.switch_dir().join("lock")
}

/// The switch's lock file, for reading and locking only, never through a symbolic link.
fn open_lock(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path)
}

/// The running switch of the project, if one holds its lock.
pub fn switch_status(state: &StateDir) -> Result<Option<SwitchInfo>, StateError> {
    let path = switch_lock(state);
    let mut file = match open_lock(&path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StateError::io(&path, e)),
    };
    match file.try_lock_shared() {
        Ok(()) => return Ok(None),
        Err(TryLockError::WouldBlock) => {}
        Err(TryLockError::Error(e)) => return Err(StateError::io(&path, e)),
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(|e| StateError::io(&path, e))?;
    Ok(crate::net::parse_lock(&text))
}

/// Starts the project's switch unless one that serves every network runs already; one that
/// lacks a network is replaced (the VMs' NICs reconnect within a second or so).
pub fn ensure_switch(
    state: &StateDir,
    networks: &Networks,
    reporter: &dyn super::Reporter,
) -> Result<(), EngineError> {
    let wanted: BTreeSet<String> = networks.registry.networks.keys().cloned().collect();
    if wanted.is_empty() {
        return Ok(());
    }
    if let Some(running) = switch_status(state)? {
        if wanted.is_subset(&running.networks) {
            return Ok(());
        }
        reporter.info("restarting the network switch for a new network");
        end_switch(state, &running)?;
    }
    networks.sockets.ensure()?;
    atomic::create_private_dir(&state.switch_dir(), 0o700)?;
    let log_path = state.switch_dir().join("switch.log");
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&log_path)
        .map_err(|e| StateError::io(&log_path, e))?;
    let exe =
        std::env::current_exe().map_err(|e| StateError::io(Path::new("/proc/self/exe"), e))?;
    let mut command = Command::new(&exe);
    command
        .arg("network-switch")
        .arg("--lock")
        .arg(switch_lock(state));
    for name in &wanted {
        let mut arg = std::ffi::OsString::from(format!("{name}="));
        arg.push(networks.sockets.path().join(socket_name(name)));
        command.arg("--network").arg(arg);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        // Its own process group: Ctrl-C in the terminal of `up` does not reach it.
        .process_group(0)
        .spawn()
        .map_err(|e| StateError::io(&exe, e))?;
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        let _ = BufReader::new(out).read_line(&mut line);
    }
    if line.trim() != crate::net::READY {
        let _ = child.kill();
        let _ = child.wait();
        let log = fs::read_to_string(&log_path).unwrap_or_default();
        return Err(NetworkError::SwitchStart {
            reason: log.lines().last().unwrap_or("no message").to_owned(),
            log: log_path,
        }
        .into());
    }
    // The switch lives on after `up`: it is reaped by init once it ends.
    drop(child);
    Ok(())
}

/// Ends the project's switch if one runs.
pub fn stop_switch(state: &StateDir) -> Result<(), EngineError> {
    match switch_status(state)? {
        Some(running) => end_switch(state, &running),
        None => Ok(()),
    }
}

/// Sends SIGTERM to the switch and waits until its lock is free.
fn end_switch(state: &StateDir, running: &SwitchInfo) -> Result<(), EngineError> {
    let path = switch_lock(state);
    if let Some(pid) = rustix::process::Pid::from_raw(running.pid as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let file = open_lock(&path).map_err(|e| StateError::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => return Ok(()),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(NetworkError::SwitchStuck { pid: running.pid }.into());
            }
            Err(TryLockError::Error(e)) => return Err(StateError::io(&path, e).into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::compose::test_project as project;

    const THREE: &str = "
vms:
  a: {image: ./a.img, networks: [backend]}
  b:
    image: ./a.img
    networks:
      backend: {aliases: [pg, db.local]}
      other: {}
  c: {image: ./a.img, networks: {other: {ipv4_address: 10.1.2.9}}}
networks:
  backend: {}
  other: {subnet: 10.1.2.0/24}
";

    fn address(reg: &NetworkRegistry, net: &str, vm: &str) -> String {
        reg.networks[net].vms[vm].address.to_string()
    }

    #[test]
    fn addresses_are_allocated_from_two_and_fixed_ones_are_honoured() {
        let p = project(THREE);
        let reg = allocate(&p, &BTreeSet::new(), &NetworkRegistry::default()).unwrap();
        let backend = &reg.networks["backend"];
        assert_eq!(
            (backend.address.to_string(), backend.prefix),
            ("10.89.0.0".into(), 24)
        );
        assert_eq!(address(&reg, "backend", "a"), "10.89.0.2");
        assert_eq!(address(&reg, "backend", "b"), "10.89.0.3");
        assert_eq!(address(&reg, "other", "c"), "10.1.2.9");
        assert_eq!(address(&reg, "other", "b"), "10.1.2.2");
        let macs: BTreeSet<_> = reg
            .networks
            .values()
            .flat_map(|r| r.vms.values().map(|a| a.mac.clone()))
            .collect();
        assert_eq!(macs.len(), 4, "one MAC per NIC");
    }

    #[test]
    fn a_new_vm_or_network_renumbers_nothing() {
        let first = allocate(
            &project(THREE),
            &BTreeSet::new(),
            &NetworkRegistry::default(),
        )
        .unwrap();
        // `d` comes first in the file and a new auto network sorts before `backend`.
        let grown = THREE
            .replace(
                "vms:\n",
                "vms:\n  d: {image: ./a.img, networks: [backend, aaa]}\n",
            )
            .replace("networks:\n  backend", "networks:\n  aaa: {}\n  backend");
        let second = allocate(&project(&grown), &BTreeSet::new(), &first).unwrap();
        for (net, vm) in [
            ("backend", "a"),
            ("backend", "b"),
            ("other", "b"),
            ("other", "c"),
        ] {
            assert_eq!(
                address(&second, net, vm),
                address(&first, net, vm),
                "{vm} on {net}"
            );
            assert_eq!(
                second.networks[net].vms[vm].mac,
                first.networks[net].vms[vm].mac
            );
        }
        assert_eq!(address(&second, "backend", "d"), "10.89.0.4");
        assert_eq!(second.networks["aaa"].address.to_string(), "10.89.1.0");
    }

    #[test]
    fn orphans_keep_their_address_until_removed() {
        let first = allocate(
            &project(THREE),
            &BTreeSet::new(),
            &NetworkRegistry::default(),
        )
        .unwrap();
        let without_a = THREE.replace("  a: {image: ./a.img, networks: [backend]}\n", "");
        let p = project(&without_a);
        let kept = allocate(&p, &["a".to_owned()].into(), &first).unwrap();
        assert_eq!(address(&kept, "backend", "a"), "10.89.0.2");
        let gone = allocate(&p, &BTreeSet::new(), &first).unwrap();
        assert!(!gone.networks["backend"].vms.contains_key("a"));
    }

    #[test]
    fn conflicts_are_refused_with_names() {
        let taken = THREE.replace("      other: {}", "      other: {ipv4_address: 10.1.2.9}");
        let err = allocate(
            &project(&taken),
            &BTreeSet::new(),
            &NetworkRegistry::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "VMs b and c both ask for 10.1.2.9 on network other"
        );
        let outside = THREE.replace(
            "a: {image: ./a.img, networks: [backend]}",
            "a: {image: ./a.img, networks: {backend: {ipv4_address: 10.89.5.1}}}",
        );
        let err = allocate(
            &project(&outside),
            &BTreeSet::new(),
            &NetworkRegistry::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "VM a: ipv4_address 10.89.5.1 is not a host address of network backend (10.89.0.0/24)"
        );
        let overlap = THREE.replace("backend: {}", "backend: {subnet: 10.1.0.0/16}");
        let err = allocate(
            &project(&overlap),
            &BTreeSet::new(),
            &NetworkRegistry::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "networks backend (10.1.0.0/16) and other (10.1.2.0/24) overlap; give them separate subnets"
        );
    }

    #[test]
    fn qemu_versions_are_read_from_the_first_line() {
        let read = qemu_version;
        assert_eq!(
            read("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2)"),
            Some((10, 0))
        );
        assert_eq!(read("QEMU emulator version 9.2.0"), Some((9, 2)));
        assert_eq!(read("QEMU emulator version 7.2.15 (Debian)"), Some((7, 2)));
        assert_eq!(read("something else"), None);
        assert!(read("QEMU emulator version 9.1.3").unwrap() < MIN_QEMU);
    }

    #[test]
    fn hosts_lists_the_vms_of_shared_networks_only() {
        let p = project(THREE);
        let reg = allocate(&p, &BTreeSet::new(), &NetworkRegistry::default()).unwrap();
        let a = hosts_file(&p, &reg, "a");
        assert!(a.contains("127.0.1.1\ta\n"), "{a}");
        assert!(a.contains("10.89.0.3\tb.backend b pg db.local\n"), "{a}");
        assert!(!a.contains("10.1.2.9"), "c shares no network with a: {a}");
        let c = hosts_file(&p, &reg, "c");
        assert!(c.contains("10.1.2.2\tb.other b\n"), "{c}");
        assert!(!c.contains("10.89."), "{c}");
        // b is on both: its own names once each, `c` by name.
        let b = hosts_file(&p, &reg, "b");
        assert!(b.contains("10.89.0.2\ta.backend a\n"), "{b}");
        assert!(b.contains("10.1.2.9\tc.other c\n"), "{b}");
    }
}
