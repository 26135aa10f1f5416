//! The layer-2 scenario (`cargo xtask run --scenario l2`): the TCP scenario over
//! Ethernet frames. Every partition establishes its queue set in layer-2 mode and, through
//! hypervisor calls, registers its MAC (02:00:00:00:00:NN), joins its VLAN (even
//! partitions VLAN 10, odd VLAN 20) and registers the IPv6 group MACs its stack listens
//! on (all-nodes and its solicited-node). Its smoltcp stack runs on an Ethernet device
//! ([`IqdioDevice::new_ethernet`]) and finds its peers with ARP and neighbour discovery,
//! no static entries. All partitions share one IPv4 /24 and one IPv6 /64, so nothing but
//! the VLANs keeps them apart.
//!
//! Partition 0 serves VLAN 10, partition 1 VLAN 20; every other partition connects to
//! its VLAN's server (even partitions over IPv4, odd over IPv6) and moves 1 MiB, which
//! the server checks byte by byte. Each client also tries to connect to the other
//! VLAN's server (over the other IP version) for as long as the run lasts: that must
//! never succeed. A partition counts as *crossed* the frames it received tagged with a
//! VLAN other than its own (the device reads the tags) and its cross-VLAN connections
//! that got established; the hypervisor sums them into
//! `l2: vlans V, connections C, bytes moved B, failed F, crossed vlans X`.

use core::net::IpAddr;

use iqdio::driver::{DriverConfig, Indicators, QueueDriver};
use iqdio::phy::{
    IPV6_ALL_NODES_MAC, IqdioDevice, rx_buffer_len, solicited_node_mac, tx_buffer_len,
};
use iqdio_hvc::{
    ExitStatus, HVC_JOIN_VLAN, HVC_REGISTER_GROUP_MAC, HVC_REGISTER_MAC, RC_OK, mac_to_register,
};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use crate::node::{self, MAX_PARTITIONS, MFS, v4, v6};
use crate::rt::{self, HvcSiga, hvc};
use crate::say;
use crate::tcp::{BYTES, ip, now, pattern};

/// The server's TCP port.
const PORT: u16 = 5000;
/// Time limit of the whole scenario.
const LIMIT_NS: u64 = 240_000_000_000;
/// How long a client keeps trying the other VLAN's server at least (ARP and
/// neighbour discovery retry about once a second).
const CROSS_TRY_NS: u64 = 3_000_000_000;
use iqdio_hvc::scenario::L2_VLANS as VLANS;
/// Size of each of [`Buffers::big`].
pub const SOCKET_BUF: usize = 64 * 1024;
const SMALL_BUF: usize = 4 * 1024;
const RX_LEN: usize = rx_buffer_len(MFS);
const TX_LEN: usize = tx_buffer_len(MFS);

/// The stack's memory, off the stack (the linux-net scenario's smoltcp partition's
/// too).
pub struct Buffers {
    /// The device's staging buffer for a received frame.
    pub dev_rx: [u8; RX_LEN],
    /// Its staging buffer for a frame to send.
    pub dev_tx: [u8; TX_LEN],
    /// Socket buffers of a connection's bulk direction.
    pub big: [[u8; SOCKET_BUF]; MAX_PARTITIONS],
    /// Socket buffers of a connection's other direction.
    pub small: [[u8; SMALL_BUF]; MAX_PARTITIONS],
}

/// The one set of [`Buffers`] (a partition plays one scenario).
pub static BUFFERS: spin::Mutex<Buffers> = spin::Mutex::new(Buffers {
    dev_rx: [0; RX_LEN],
    dev_tx: [0; TX_LEN],
    big: [[0; SOCKET_BUF]; MAX_PARTITIONS],
    small: [[0; SMALL_BUF]; MAX_PARTITIONS],
});

/// The VLAN of partition `core`.
pub const fn vlan(core: usize) -> u16 {
    VLANS[core % 2]
}

/// The MAC of partition `core`.
pub const fn mac(core: usize) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, core as u8 + 1]
}

/// The queue set in layer-2 mode, set up through the hypervisor: established, its
/// MAC ([`mac`]) registered, a member of VLAN `vlan` (0: the untagged LAN, whose
/// members get every broadcast frame of it), receiving the IPv6 all-nodes and its
/// solicited-node group MACs. The linux-net scenario's smoltcp partition uses it too.
pub fn attach(core: usize, vlan: u16) -> Result<(Indicators, QueueDriver), &'static str> {
    let mut region = node::region();
    let ind = Indicators::new(&mut region).map_err(|_| "indicators")?;
    let config = DriverConfig {
        rx_buffers: 16,
        tx_buffers: 8,
        ..DriverConfig::layer2(0, MFS)
    };
    let queue = QueueDriver::new(&mut region, &ind, config).map_err(|_| "driver")?;
    if node::establish(&queue) != RC_OK {
        return Err("establish (layer 2) refused");
    }
    let IpAddr::V6(me6) = v6(core) else {
        return Err("no IPv6 address");
    };
    let calls = [
        (HVC_REGISTER_MAC, mac_to_register(mac(core)), "register MAC"),
        (HVC_JOIN_VLAN, u64::from(vlan), "join VLAN"),
        (
            HVC_REGISTER_GROUP_MAC,
            mac_to_register(IPV6_ALL_NODES_MAC),
            "register all-nodes MAC",
        ),
        (
            HVC_REGISTER_GROUP_MAC,
            mac_to_register(solicited_node_mac(me6)),
            "register solicited-node MAC",
        ),
    ];
    for (call, x2, what) in calls {
        let rc = hvc(call, 0, x2, 0, 0, 0).0;
        if rc != RC_OK {
            say!("l2: {} refused: {:#x}", what, rc);
            return Err("layer-2 registration refused");
        }
    }
    Ok((ind, queue))
}

/// What one partition reports: (connections completed, bytes moved, failed, crossed).
type Report = [u64; 4];

/// The smoltcp interface of partition `core` on its Ethernet device: its MAC, its
/// IPv4 /24 and IPv6 /64 addresses, random seed `seed_base + core`.
pub fn interface<D: smoltcp::phy::Device>(core: usize, seed_base: u64, dev: &mut D) -> Interface {
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac(core))));
    config.random_seed = seed_base + core as u64;
    let mut iface = Interface::new(config, dev, now());
    iface.update_ip_addrs(|a| {
        let _ = a.push(IpCidr::new(ip(v4(core)), 24));
        let _ = a.push(IpCidr::new(ip(v6(core)), 64));
    });
    iface
}

/// Runs partition `core`'s side: a server (partitions 0 and 1) or a client.
fn play(core: usize, n: usize, queue: &mut QueueDriver) -> Result<Report, &'static str> {
    let mut guard = BUFFERS.lock();
    let b = &mut *guard;
    let mut dev =
        IqdioDevice::new_ethernet(queue, HvcSiga, &mut b.dev_rx, &mut b.dev_tx, vlan(core))
            .map_err(|_| "device")?;
    let mut iface = interface(core, 0x12_0000, &mut dev);
    let mut storage = [SocketStorage::EMPTY; MAX_PARTITIONS];
    let mut sockets = SocketSet::new(&mut storage[..]);
    let start = rt::now_ns();
    let deadline = start + LIMIT_NS;
    let (big, small) = (&mut b.big, &mut b.small);
    let mut report: Report = [0; 4];
    if core < 2 {
        // Clients of this VLAN: core + 2, core + 4, ...
        let clients = (core + 2..n).step_by(2).count();
        let mut handles: heapless::Vec<SocketHandle, MAX_PARTITIONS> = heapless::Vec::new();
        for (rx, tx) in big.iter_mut().zip(small.iter_mut()).take(clients) {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(&mut rx[..]),
                tcp::SocketBuffer::new(&mut tx[..]),
            );
            s.set_ack_delay(None);
            s.listen(PORT).map_err(|_| "listen failed")?;
            let _ = handles.push(sockets.add(s));
        }
        let mut peer = [None::<usize>; MAX_PARTITIONS];
        let mut got = [0usize; MAX_PARTITIONS];
        let mut damaged = [0usize; MAX_PARTITIONS];
        let mut done = [false; MAX_PARTITIONS];
        let mut finished = 0;
        while finished < clients {
            if rt::now_ns() > deadline {
                return Err("server: connections unfinished at the deadline");
            }
            iface.poll(now(), &mut dev, &mut sockets);
            for (i, h) in handles.iter().enumerate() {
                let s = sockets.get_mut::<tcp::Socket>(*h);
                if peer[i].is_none()
                    && let Some(ep) = s.remote_endpoint()
                {
                    // The client: its address ends in core + 1.
                    let last = match ep.addr {
                        IpAddress::Ipv4(a) => a.octets()[3],
                        IpAddress::Ipv6(a) => a.octets()[15],
                    };
                    let c = usize::from(last).saturating_sub(1).min(MAX_PARTITIONS - 1);
                    if vlan(c) != vlan(core) {
                        // A connection from the other VLAN: it crossed.
                        say!(
                            "l2: partition {} connected from partition {} across VLANs",
                            core,
                            c
                        );
                        report[3] += 1;
                    }
                    peer[i] = Some(c);
                }
                let Some(c) = peer[i] else { continue };
                while s.can_recv() {
                    let at = got[i];
                    let (taken, bad) = s
                        .recv(|data| {
                            let bad = data
                                .iter()
                                .enumerate()
                                .filter(|(k, x)| **x != pattern(c, at + k))
                                .count();
                            (data.len(), (data.len(), bad))
                        })
                        .unwrap_or((0, 0));
                    got[i] += taken;
                    damaged[i] += bad;
                    if taken == 0 {
                        break;
                    }
                }
                if !done[i] && got[i] > 0 && !s.may_recv() {
                    done[i] = true;
                    s.close();
                    finished += 1;
                    let ok = got[i] == BYTES && damaged[i] == 0;
                    say!(
                        "l2: partition {} -> partition {} (VLAN {}): {} bytes, {} damaged{}",
                        c,
                        core,
                        vlan(core),
                        got[i],
                        damaged[i],
                        if ok { "" } else { " FAILED" }
                    );
                    report[0] += 1;
                    report[1] += got[i] as u64;
                    report[2] += u64::from(!ok);
                }
            }
        }
        // Let the FINs and ACKs go out, and keep answering while the clients still
        // try the other VLAN.
        let until = rt::now_ns() + 50_000_000;
        while rt::now_ns() < until {
            iface.poll(now(), &mut dev, &mut sockets);
        }
    } else {
        let server = core % 2;
        let other = 1 - server;
        let (own, cross) = if core.is_multiple_of(2) {
            (ip(v4(server)), ip(v6(other)))
        } else {
            (ip(v6(server)), ip(v4(other)))
        };
        let [s0, s1, ..] = small;
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(&mut s0[..]),
            tcp::SocketBuffer::new(&mut big[0][..]),
        );
        s.set_nagle_enabled(false);
        s.connect(iface.context(), (own, PORT), 49152 + core as u16)
            .map_err(|_| "connect failed")?;
        let h = sockets.add(s);
        let (c0, c1) = s1.split_at_mut(SMALL_BUF / 2);
        let mut x = tcp::Socket::new(tcp::SocketBuffer::new(c0), tcp::SocketBuffer::new(c1));
        x.connect(iface.context(), (cross, PORT), 50152 + core as u16)
            .map_err(|_| "connect failed")?;
        let hx = sockets.add(x);
        let mut off = 0usize;
        let mut chunk = [0u8; 4096];
        let mut closed = false;
        let mut crossed = false;
        loop {
            if rt::now_ns() > deadline {
                return Err("client: transfer unfinished at the deadline");
            }
            iface.poll(now(), &mut dev, &mut sockets);
            let xs = sockets.get_mut::<tcp::Socket>(hx);
            crossed |= xs.state() == tcp::State::Established;
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
            let finished = closed && matches!(s.state(), tcp::State::TimeWait | tcp::State::Closed);
            if finished && rt::now_ns() > start + CROSS_TRY_NS {
                break;
            }
        }
        say!(
            "l2: partition {} -> partition {} (the other VLAN, {}): {} in {} ms of trying",
            core,
            other,
            if core.is_multiple_of(2) {
                "IPv6"
            } else {
                "IPv4"
            },
            if crossed { "CONNECTED" } else { "not reached" },
            (rt::now_ns() - start) / 1_000_000
        );
        report[3] += u64::from(crossed);
    }
    let c = dev.counters();
    report[3] += c.rx_other_vlan;
    say!(
        "l2: partition {} (VLAN {}): sent {} received {} frames, other-VLAN frames {}, not sent {}",
        core,
        vlan(core),
        c.tx_packets,
        c.rx_packets,
        c.rx_other_vlan,
        c.tx_dropped()
    );
    Ok(report)
}

/// The scenario; each partition's exit call carries (connections completed, bytes
/// moved, failed, crossed, 1), which the hypervisor sums.
pub fn run(core: usize, n: usize) -> ! {
    if n < 4 {
        say!("l2: needs 4 partitions or more (two per VLAN)");
        rt::exit(ExitStatus::Failure, [0; 5]);
    }
    let (_ind, mut queue) = match attach(core, vlan(core)) {
        Ok(q) => q,
        Err(e) => {
            say!("l2: attach failed: {}", e);
            rt::exit(ExitStatus::Failure, [0, 0, 1, 0, 0])
        }
    };
    rt::barrier();
    match play(core, n, &mut queue) {
        Ok(r) => {
            let status = if r[2] == 0 && r[3] == 0 {
                ExitStatus::Pass
            } else {
                ExitStatus::Failure
            };
            rt::exit(status, [r[0], r[1], r[2], r[3], 1])
        }
        Err(e) => {
            say!("l2: {}", e);
            rt::exit(ExitStatus::Failure, [0, 0, 1, 0, 1])
        }
    }
}
