//! The TCP scenario (`cargo xtask run --scenario tcp`): smoltcp, a TCP/IP stack nobody
//! here wrote, over iqdio queues. Partition 0 serves TCP on port 5000; every other
//! partition connects and moves 1 MiB, which the server checks byte by byte. Prints a
//! line per connection (bytes, time, throughput) and ends with
//! `tcp: connections C, bytes moved B, failed F`.

use core::sync::atomic::{AtomicU64, Ordering};

use crate::node::MAX_PARTITIONS as MAX_CORES;
use crate::rt::{self, HvcSiga};
use iqdio::phy::{IqdioDevice, rx_buffer_len, tx_buffer_len};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, Ipv4Address, Ipv6Address};

use crate::node::{MFS, Node, v4, v6};

/// The server's TCP port.
const PORT: u16 = 5000;
/// Bytes each client moves.
pub const BYTES: usize = 1 << 20;
/// Time limit of the whole scenario.
const LIMIT_NS: u64 = 240_000_000_000;
/// Socket buffer of each connection's receiving (server) and sending (client) side.
const SOCKET_BUF: usize = 64 * 1024;
/// The small opposite-direction buffer of each socket.
const SMALL_BUF: usize = 4 * 1024;

const RX_LEN: usize = rx_buffer_len(MFS);
const TX_LEN: usize = tx_buffer_len(MFS);

/// The memory of the stack: the device's staging buffers and the socket buffers
/// (off the stacks; the server needs one big buffer per client).
struct Buffers {
    dev_rx: [u8; RX_LEN],
    dev_tx: [u8; TX_LEN],
    big: [[u8; SOCKET_BUF]; MAX_CORES - 1],
    small: [[u8; SMALL_BUF]; MAX_CORES - 1],
}

static BUFFERS: spin::Mutex<Buffers> = spin::Mutex::new(Buffers {
    dev_rx: [0; RX_LEN],
    dev_tx: [0; TX_LEN],
    big: [[0; SOCKET_BUF]; MAX_CORES - 1],
    small: [[0; SMALL_BUF]; MAX_CORES - 1],
});

/// Bytes the server received intact, per client core.
static RECEIVED: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];
/// Bytes received damaged, per client core.
static DAMAGED: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];
/// Microseconds from the connection's first byte to its last, per client core.
static MICROS: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];

/// Byte `offset` of client `core`'s stream (the layer-2 scenario's too).
pub fn pattern(core: usize, offset: usize) -> u8 {
    ((offset >> 8) as u8) ^ (offset as u8).wrapping_mul(31) ^ (core as u8).wrapping_mul(0x5B)
}

/// smoltcp's clock: the partition's counter (every smoltcp scenario's).
pub fn now() -> Instant {
    Instant::from_micros((rt::now_ns() / 1000) as i64)
}

/// An address as smoltcp spells it (every smoltcp scenario's).
pub fn ip(a: core::net::IpAddr) -> IpAddress {
    match a {
        core::net::IpAddr::V4(a) => IpAddress::Ipv4(Ipv4Address::from_octets(a.octets())),
        core::net::IpAddr::V6(a) => IpAddress::Ipv6(Ipv6Address::from_octets(a.octets())),
    }
}

fn ipv4(core: usize) -> IpAddress {
    ip(v4(core))
}

fn ipv6(core: usize) -> IpAddress {
    ip(v6(core))
}

/// Runs partition `core`'s side of the scenario on its own core.
pub fn partition(node: &mut Node) -> Result<(), &'static str> {
    let core = node.core;
    let mut guard = BUFFERS.lock();
    let b = &mut *guard;
    let mut dev = IqdioDevice::new(&mut node.queue, HvcSiga, &mut b.dev_rx, &mut b.dev_tx)
        .map_err(|_| "device buffers too small")?;
    let mut config = Config::new(HardwareAddress::Ip);
    config.random_seed = 0x1d10 + core as u64;
    let mut iface = Interface::new(config, &mut dev, now());
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(ipv4(core), 24));
        let _ = a.push(IpCidr::new(ipv6(core), 64));
    });
    let mut storage = [SocketStorage::EMPTY; MAX_CORES];
    let mut sockets = SocketSet::new(&mut storage[..]);
    let deadline = rt::now_ns() + LIMIT_NS;
    let n = node.partitions;
    let (big, small) = (&mut b.big, &mut b.small);
    if core == 0 {
        // One listening socket per client.
        let mut handles: heapless::Vec<SocketHandle, MAX_CORES> = heapless::Vec::new();
        for (rx, tx) in big.iter_mut().zip(small.iter_mut()).take(n - 1) {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(&mut rx[..]),
                tcp::SocketBuffer::new(&mut tx[..]),
            );
            s.set_ack_delay(None);
            s.listen(PORT).map_err(|_| "listen failed")?;
            let _ = handles.push(sockets.add(s));
        }
        let mut peer = [None::<usize>; MAX_CORES];
        let mut got = [0usize; MAX_CORES];
        let mut first = [0u64; MAX_CORES];
        let mut done = [false; MAX_CORES];
        let mut finished = 0;
        while finished < n - 1 {
            if rt::now_ns() > deadline {
                return Err("server: connections unfinished at the deadline");
            }
            iface.poll(now(), &mut dev, &mut sockets);
            for (i, h) in handles.iter().enumerate() {
                let s = sockets.get_mut::<tcp::Socket>(*h);
                if peer[i].is_none() {
                    // Which client: its address is 10.0.0.(core+1) or fd00::(core+1).
                    if let Some(ep) = s.remote_endpoint() {
                        let last = match ep.addr {
                            IpAddress::Ipv4(a) => a.octets()[3],
                            IpAddress::Ipv6(a) => a.octets()[15],
                        };
                        peer[i] = Some(usize::from(last).saturating_sub(1).min(MAX_CORES - 1));
                    }
                }
                let Some(c) = peer[i] else { continue };
                while s.can_recv() {
                    let start = got[i];
                    let taken = s
                        .recv(|data| {
                            let bad = data
                                .iter()
                                .enumerate()
                                .filter(|(k, x)| **x != pattern(c, start + k))
                                .count();
                            (data.len(), (data.len(), bad))
                        })
                        .unwrap_or((0, 0));
                    if got[i] == 0 && taken.0 > 0 {
                        first[i] = rt::now_ns() / 1000;
                    }
                    got[i] += taken.0;
                    DAMAGED[c].fetch_add(taken.1 as u64, Ordering::Relaxed);
                    if taken.0 == 0 {
                        break;
                    }
                }
                if !done[i] && got[i] > 0 && !s.may_recv() {
                    done[i] = true;
                    MICROS[c].store((rt::now_ns() / 1000) - first[i], Ordering::Relaxed);
                    RECEIVED[c].store(got[i] as u64, Ordering::Relaxed);
                    s.close();
                    finished += 1;
                }
            }
        }
        // Let the FINs and ACKs of the close go out.
        let until = rt::now_ns() + 50_000_000;
        while rt::now_ns() < until {
            iface.poll(now(), &mut dev, &mut sockets);
        }
    } else {
        let (rx, tx) = (&mut small[0], &mut big[0]);
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(&mut rx[..]),
            tcp::SocketBuffer::new(&mut tx[..]),
        );
        s.set_nagle_enabled(false);
        // Clients alternate between the server's IPv4 and IPv6 address.
        let server = if core % 2 == 1 { ipv4(0) } else { ipv6(0) };
        s.connect(iface.context(), (server, PORT), 49152 + core as u16)
            .map_err(|_| "connect failed")?;
        let h = sockets.add(s);
        let mut off = 0usize;
        let mut chunk = [0u8; 4096];
        let mut closed = false;
        loop {
            if rt::now_ns() > deadline {
                return Err("client: transfer unfinished at the deadline");
            }
            iface.poll(now(), &mut dev, &mut sockets);
            let s = sockets.get_mut::<tcp::Socket>(h);
            while off < BYTES && s.can_send() {
                let len = chunk.len().min(BYTES - off);
                for (k, x) in chunk[..len].iter_mut().enumerate() {
                    *x = pattern(core, off + k);
                }
                let sent = s.send_slice(&chunk[..len]).unwrap_or(0);
                off += sent;
                if sent < len {
                    break;
                }
            }
            if off == BYTES && !closed {
                s.close();
                closed = true;
            }
            if closed && matches!(s.state(), tcp::State::TimeWait | tcp::State::Closed) {
                break;
            }
        }
    }
    let c = dev.counters();
    if c.tx_dropped() > 0 {
        crate::say!(
            "tcp: partition {}: {} packets not sent (target full {}, unreachable {}, errors {}); TCP retransmitted them",
            core,
            c.tx_dropped(),
            c.tx_dropped_full,
            c.tx_unreachable,
            c.tx_errors
        );
    }
    Ok(())
}

/// Prints one line per connection (the server); returns (connections, bytes moved,
/// failed connections) for the hypervisor's result line.
pub fn report(n: usize) -> (u64, u64, u64) {
    let mut total = 0u64;
    let mut failed = 0;
    for c in 1..n {
        let bytes = RECEIVED[c].load(Ordering::Relaxed);
        let damaged = DAMAGED[c].load(Ordering::Relaxed);
        let us = MICROS[c].load(Ordering::Relaxed).max(1);
        let ok = bytes == BYTES as u64 && damaged == 0;
        failed += u64::from(!ok);
        total += bytes;
        crate::say!(
            "tcp: partition {} -> partition 0 ({}): {} bytes in {} ms, {} KiB/s, {} damaged{}",
            c,
            if c % 2 == 1 { "IPv4" } else { "IPv6" },
            bytes,
            us / 1000,
            bytes * 1_000_000 / 1024 / us,
            damaged,
            if ok { "" } else { " FAILED" }
        );
    }
    ((n - 1) as u64, total, failed)
}
