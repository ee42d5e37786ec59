//! A learning Ethernet switch over unix stream sockets: the L2 segment of a project network.
//!
//! Each VM's extra NIC is a QEMU `-netdev stream` client of the network's socket. On the
//! stream every frame is a 4-byte big-endian length, then the Ethernet frame (the framing of
//! QEMU's `socket` and `stream` netdevs). A [`Hub`] is one network: it learns which port each
//! source MAC address came from, sends a frame to the one port that owns its destination, and
//! floods broadcast, multicast and unknown destinations to every other port of the same hub
//! only. Hubs share nothing, so networks are isolated from each other.
//!
//! One slow QEMU must not stall the others: every port has a bounded queue drained by its own
//! writer thread, and a frame for a full queue is dropped, as a real switch drops under
//! congestion (TCP retransmits). A port that sends garbage (a length of 0, below an Ethernet
//! header, or above 65,535) is closed; the others go on.

use std::collections::HashMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;

/// The largest frame on the stream: QEMU's netdev limit (and the 16-bit length of
/// `-netdev socket`).
pub const MAX_FRAME: usize = 65_535;
/// Destination and source MAC addresses and the EtherType.
const ETHERNET_HEADER: usize = 14;
/// Frames a port may have waiting before new ones for it are dropped.
const QUEUE_FRAMES: usize = 256;
/// Addresses the MAC table holds: a guest that sends from random source addresses fills it
/// and then only loses learning (unknown destinations flood), never the host's memory.
const MAX_MACS: usize = 4096;

type Mac = [u8; 6];
type PortId = u64;

/// One network's switch: ports (connected QEMUs) and the MAC table.
#[derive(Debug, Default)]
pub struct Hub {
    state: Mutex<HubState>,
}

#[derive(Debug, Default)]
struct HubState {
    next_port: PortId,
    ports: HashMap<PortId, SyncSender<Arc<[u8]>>>,
    macs: HashMap<Mac, PortId>,
}

impl Hub {
    /// A hub with no ports.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Accepts clients of `listener` for ever, each as a port of this hub. A client whose
    /// user is not `allowed_uid` is closed at once: the socket's folder is private, and this
    /// holds even if its mode is loosened.
    pub fn serve(self: &Arc<Self>, listener: UnixListener, allowed_uid: u32) -> io::Result<()> {
        for stream in listener.incoming() {
            let stream = match stream {
                Ok(stream) => stream,
                // A client gone before accept, or no file descriptors left for now.
                Err(_) => {
                    thread::sleep(std::time::Duration::from_millis(100));
                    continue;
                }
            };
            match rustix::net::sockopt::socket_peercred(&stream) {
                Ok(cred) if cred.uid.as_raw() == allowed_uid => {
                    self.attach(stream)?;
                }
                _ => drop(stream),
            }
        }
        Ok(())
    }

    /// Makes `stream` a port: a reader thread switches what it sends, a writer thread sends
    /// it what the hub queued for it. Returns at once.
    pub fn attach(self: &Arc<Self>, stream: UnixStream) -> io::Result<()> {
        let (sender, queue) = sync_channel(QUEUE_FRAMES);
        let port = {
            let mut state = self.lock();
            let port = state.next_port;
            state.next_port += 1;
            state.ports.insert(port, sender);
            port
        };
        let writer = stream.try_clone()?;
        thread::spawn(move || send_queued(writer, queue));
        let hub = Arc::clone(self);
        thread::spawn(move || {
            // Whatever ended the port (EOF, an error, garbage), it is done.
            let _ = hub.switch_from(port, &stream);
            hub.detach(port);
            let _ = stream.shutdown(std::net::Shutdown::Both);
        });
        Ok(())
    }

    /// The number of connected ports.
    pub fn port_count(&self) -> usize {
        self.lock().ports.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads frames from `port` until it closes or sends garbage, and forwards each.
    fn switch_from(&self, port: PortId, stream: &UnixStream) -> io::Result<()> {
        let mut reader = BufReader::with_capacity(MAX_FRAME + 4, stream);
        loop {
            let Some(frame) = read_frame(&mut reader)? else {
                return Ok(());
            };
            self.forward(port, frame.into());
        }
    }

    fn forward(&self, from: PortId, frame: Arc<[u8]>) {
        let dst: Mac = frame[..6].try_into().unwrap_or_default();
        let src: Mac = frame[6..12].try_into().unwrap_or_default();
        let mut state = self.lock();
        // Only unicast sources are learned: a multicast source address is bogus.
        if src[0] & 1 == 0 && (state.macs.len() < MAX_MACS || state.macs.contains_key(&src)) {
            state.macs.insert(src, from);
        }
        let unicast_to = (dst[0] & 1 == 0)
            .then(|| state.macs.get(&dst).copied())
            .flatten();
        match unicast_to {
            Some(to) if to == from => {}
            Some(to) => {
                if let Some(queue) = state.ports.get(&to) {
                    offer(queue, &frame);
                }
            }
            None => {
                for (_, queue) in state.ports.iter().filter(|(id, _)| **id != from) {
                    offer(queue, &frame);
                }
            }
        }
    }

    /// Removes `port` and forgets the addresses learned on it (the VM may come back on
    /// another port).
    fn detach(&self, port: PortId) {
        let mut state = self.lock();
        state.ports.remove(&port);
        state.macs.retain(|_, owner| *owner != port);
    }
}

/// Queues `frame`, or drops it when the port is behind (or its writer is gone).
fn offer(queue: &SyncSender<Arc<[u8]>>, frame: &Arc<[u8]>) {
    match queue.try_send(Arc::clone(frame)) {
        Ok(()) | Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {}
    }
}

/// One frame from the stream: `None` at a clean end between frames.
fn read_frame(reader: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut length = [0u8; 4];
    match reader.read_exact(&mut length) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u32::from_be_bytes(length) as usize;
    if !(ETHERNET_HEADER..=MAX_FRAME).contains(&length) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame length {length} is not an Ethernet frame"),
        ));
    }
    let mut frame = vec![0u8; length];
    reader.read_exact(&mut frame)?;
    Ok(Some(frame))
}

/// Writes the frames queued for a port until the hub drops the port or the peer goes away.
fn send_queued(stream: UnixStream, queue: Receiver<Arc<[u8]>>) {
    let mut out = BufWriter::with_capacity(MAX_FRAME + 4, stream);
    while let Ok(frame) = queue.recv() {
        let mut batch = Some(frame);
        // Write what is waiting in one go, then flush once.
        while let Some(frame) = batch {
            let length = (frame.len() as u32).to_be_bytes();
            if out.write_all(&length).and(out.write_all(&frame)).is_err() {
                return;
            }
            batch = queue.try_recv().ok();
        }
        if out.flush().is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const A: Mac = [0x52, 0x54, 0, 0, 0, 0xa];
    const B: Mac = [0x52, 0x54, 0, 0, 0, 0xb];
    const C: Mac = [0x52, 0x54, 0, 0, 0, 0xc];
    const BROADCAST: Mac = [0xff; 6];

    fn frame(dst: Mac, src: Mac, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(payload);
        f
    }

    fn send(stream: &mut UnixStream, frame: &[u8]) {
        stream
            .write_all(&(frame.len() as u32).to_be_bytes())
            .unwrap();
        stream.write_all(frame).unwrap();
    }

    /// A port of `hub`: the VM's end of the stream.
    fn port(hub: &Arc<Hub>) -> UnixStream {
        let (vm, switch) = UnixStream::pair().unwrap();
        hub.attach(switch).unwrap();
        vm.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        vm
    }

    /// The next frame the VM end receives, or `None` within the read timeout.
    fn receive(stream: &mut UnixStream) -> Option<Vec<u8>> {
        read_frame(stream).ok().flatten()
    }

    fn settle() {
        thread::sleep(Duration::from_millis(50));
    }

    #[test]
    fn unknown_destinations_flood_then_learned_ones_go_to_one_port() {
        let hub = Hub::new();
        let (mut a, mut b, mut c) = (port(&hub), port(&hub), port(&hub));
        let hello = frame(BROADCAST, A, b"who has b");
        send(&mut a, &hello);
        assert_eq!(receive(&mut b).unwrap(), hello);
        assert_eq!(receive(&mut c).unwrap(), hello);
        assert_eq!(receive(&mut a), None, "never back to the sender");
        // B answers A: A is learned, so C does not see it; B is learned on the way.
        let reply = frame(A, B, b"b is here");
        send(&mut b, &reply);
        assert_eq!(receive(&mut a).unwrap(), reply);
        assert_eq!(receive(&mut c), None);
        let direct = frame(B, A, b"to b only");
        send(&mut a, &direct);
        assert_eq!(receive(&mut b).unwrap(), direct);
        assert_eq!(receive(&mut c), None);
    }

    #[test]
    fn frames_split_across_reads_arrive_whole() {
        let hub = Hub::new();
        let (mut a, mut b) = (port(&hub), port(&hub));
        let f = frame(BROADCAST, A, &[7u8; 1500]);
        let mut bytes = (f.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&f);
        for piece in bytes.chunks(3).take(4).chain(bytes[12..].chunks(700)) {
            a.write_all(piece).unwrap();
            a.flush().unwrap();
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(receive(&mut b).unwrap(), f);
    }

    #[test]
    fn flooding_stays_in_its_network() {
        let (front, back) = (Hub::new(), Hub::new());
        let (mut a, mut b) = (port(&front), port(&front));
        let mut c = port(&back);
        send(&mut a, &frame(BROADCAST, A, b"front only"));
        assert!(receive(&mut b).is_some());
        assert_eq!(receive(&mut c), None);
        // Even a destination learned in another hub is unknown here.
        send(&mut c, &frame(A, C, b"to a?"));
        assert_eq!(receive(&mut a), None);
    }

    #[test]
    fn a_disconnect_forgets_the_addresses_of_its_port() {
        let hub = Hub::new();
        let (mut a, mut b, mut c) = (port(&hub), port(&hub), port(&hub));
        send(&mut b, &frame(BROADCAST, B, b"b"));
        assert!(receive(&mut a).is_some() && receive(&mut c).is_some());
        drop(b);
        settle();
        assert_eq!(hub.port_count(), 2);
        // B is unknown again, so a frame for it floods to C instead of vanishing.
        let f = frame(B, A, b"b?");
        send(&mut a, &f);
        assert_eq!(receive(&mut c).unwrap(), f);
        // B comes back on a new port and is reached there.
        b = port(&hub);
        send(&mut b, &frame(BROADCAST, B, b"back"));
        assert!(receive(&mut a).is_some());
        let f = frame(B, A, b"b!");
        send(&mut a, &f);
        assert_eq!(receive(&mut b).unwrap(), f);
    }

    #[test]
    fn a_stalled_reader_does_not_block_the_others() {
        let hub = Hub::new();
        let (mut a, mut b) = (port(&hub), port(&hub));
        // Never read: its socket buffer and then its queue fill up.
        let _stalled = port(&hub);
        let big = frame(BROADCAST, A, &[1u8; 9000]);
        let reader = thread::spawn(move || {
            let mut got = 0;
            while receive(&mut b).is_some() {
                got += 1;
            }
            got
        });
        for _ in 0..2000 {
            send(&mut a, &big);
        }
        let got = reader.join().unwrap();
        assert!(
            got >= 1000,
            "the reading port got only {got} of 2000 frames"
        );
    }

    #[test]
    fn the_mac_table_is_bounded() {
        let hub = Hub::new();
        let (mut a, mut b) = (port(&hub), port(&hub));
        for n in 0..MAX_MACS as u32 + 100 {
            let [_, x, y, z] = n.to_be_bytes();
            send(
                &mut a,
                &frame(BROADCAST, [0x52, 0x54, 1, x, y, z], b"spoof"),
            );
        }
        let mut got = 0;
        while receive(&mut b).is_some() {
            got += 1;
        }
        assert!(got > 0);
        assert_eq!(hub.lock().macs.len(), MAX_MACS);
    }

    #[test]
    fn garbage_closes_only_its_port() {
        for bad_length in [0u32, 13, 65_536, u32::MAX] {
            let hub = Hub::new();
            let (mut bad, mut a, mut b) = (port(&hub), port(&hub), port(&hub));
            bad.write_all(&bad_length.to_be_bytes()).unwrap();
            settle();
            assert_eq!(hub.port_count(), 2, "length {bad_length}");
            let mut rest = [0u8; 1];
            assert_eq!(bad.read(&mut rest).unwrap(), 0, "closed: EOF");
            let f = frame(BROADCAST, A, b"still here");
            send(&mut a, &f);
            assert_eq!(receive(&mut b).unwrap(), f);
        }
    }

    #[test]
    fn clients_of_another_user_are_closed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let hub = Hub::new();
        let listener = UnixListener::bind(&path).unwrap();
        let me = rustix::process::geteuid().as_raw();
        let server = Arc::clone(&hub);
        thread::spawn(move || server.serve(listener, me.wrapping_add(1)));
        let mut client = UnixStream::connect(&path).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(client.read(&mut byte).unwrap(), 0, "closed at once");
        assert_eq!(hub.port_count(), 0);
    }
}
