//! TCP/IP between partitions: two threads each run a smoltcp `Interface` over an
//! `IqdioDevice` on their own partition's queue set, through one fabric.
#![cfg(feature = "smoltcp")]

mod common;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant as StdInstant};

use common::*;
use iqdio::Mfs;
use iqdio::driver::DriverConfig;
use iqdio::phy::{DeviceCounters, IqdioDevice, rx_buffer_len, tx_buffer_len};
use iqdio::{FabricConfig, Port};
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::phy::{ChecksumCapabilities, Device, RxToken};
use smoltcp::socket::{icmp, tcp, udp};
use smoltcp::time::Instant;
use smoltcp::wire::{
    HardwareAddress, Icmpv4Packet, Icmpv4Repr, Icmpv6Packet, Icmpv6Repr, IpAddress, IpCidr,
    IpEndpoint,
};

/// A phase that takes longer than this has failed (it normally takes well under 1 s).
const TIMEOUT: Duration = Duration::from_secs(20);
/// Bytes the TCP connection moves.
const TCP_BYTES: usize = 4 << 20;
const TCP_PORT: u16 = 5001;
const UDP_PORT: u16 = 7;
const ICMP_IDENT: u16 = 0x1d10;

type TestPort<'f> = Port<'f, TestPlatform, 64, 4096>;
type Dev<'d, 'f> = IqdioDevice<'d, TestPort<'f>>;

/// The tests here each spin two partition threads; on a small machine they run one
/// at a time, so that each has the cores it needs.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn addr(ip: IpAddr) -> IpAddress {
    ip.into()
}

/// Completion of the two sides of a scenario: each side keeps its interface running
/// until both are done (the other may still need its ACKs), or one has failed.
#[derive(Default)]
struct Done {
    count: AtomicU8,
    failed: AtomicBool,
}

/// Marks the scenario failed if the thread holding it panics, so the peer stops
/// waiting at once.
struct FailOnPanic(Arc<Done>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, Ordering::SeqCst);
        }
    }
}

/// One partition's stack: its device and interface, and the smoltcp clock (real
/// time since the partition started, from `std::time::Instant` deltas).
struct Stack<'d, 'f> {
    name: &'static str,
    dev: Dev<'d, 'f>,
    iface: Interface,
    start: StdInstant,
}

impl<'d, 'f> Stack<'d, 'f> {
    fn new(name: &'static str, mut dev: Dev<'d, 'f>, lpar: u8) -> Self {
        let start = StdInstant::now();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = 0x1d10_0000 + u64::from(lpar);
        let mut iface = Interface::new(config, &mut dev, Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(addr(v4(lpar, 0)), 16)).unwrap();
            a.push(IpCidr::new(addr(v6(lpar, 0)), 64)).unwrap();
        });
        Self {
            name,
            dev,
            iface,
            start,
        }
    }

    fn now(&self) -> Instant {
        Instant::from_micros(self.start.elapsed().as_micros() as i64)
    }

    /// Polls the interface and calls `step` after each poll until `step` has
    /// returned true and the peer is done too. Fails on timeout or a peer failure.
    fn run<'s>(
        &mut self,
        sockets: &mut SocketSet<'s>,
        done: &Done,
        mut step: impl FnMut(&mut Interface, &mut SocketSet<'s>, Instant) -> bool,
    ) {
        let deadline = StdInstant::now() + TIMEOUT;
        let mut mine = false;
        loop {
            let now = self.now();
            self.iface.poll(now, &mut self.dev, sockets);
            if !mine && step(&mut self.iface, sockets, now) {
                mine = true;
                done.count.fetch_add(1, Ordering::SeqCst);
            }
            if mine && done.count.load(Ordering::SeqCst) >= 2 {
                return;
            }
            assert!(
                !done.failed.load(Ordering::SeqCst),
                "{}: the peer failed",
                self.name
            );
            assert!(
                StdInstant::now() < deadline,
                "{}: timed out; counters {:?}, last error {:?}",
                self.name,
                self.dev.counters(),
                self.dev.last_error()
            );
            if !self.dev.has_input() {
                std::thread::yield_now();
            }
        }
    }
}

/// A partition that is leaked, not freed, if its thread panics: the peer may still
/// be sending into its memory until it notices the failure.
struct Keep(Option<Partition>);

impl Drop for Keep {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}

/// One partition's thread: makes its device and stack, runs `f`, and returns what
/// `f` returned, the device's counters and the partition.
fn spawn_side<F, R>(
    fab: &Arc<TestFabric>,
    part: Partition,
    name: &'static str,
    done: &Arc<Done>,
    f: F,
) -> std::thread::JoinHandle<(R, DeviceCounters, Partition)>
where
    F: FnOnce(&mut Stack<'_, '_>, &Done) -> R + Send + 'static,
    R: Send + 'static,
{
    let fab = fab.clone();
    let done = done.clone();
    std::thread::spawn(move || {
        let _fail = FailOnPanic(done.clone());
        let mut keep = Keep(Some(part));
        let part = keep.0.as_mut().unwrap();
        let lpar = part.lpar;
        let mut rx = vec![0u8; rx_buffer_len(Mfs::K64)];
        let mut tx = vec![0u8; tx_buffer_len(Mfs::K64)];
        let dev = IqdioDevice::new(&mut part.queues[0], fab.port(lpar), &mut rx, &mut tx).unwrap();
        let mut stack = Stack::new(name, dev, lpar);
        let r = f(&mut stack, &done);
        let counters = stack.dev.counters();
        drop(stack);
        (r, counters, keep.0.take().unwrap())
    })
}

/// Two partitions (LPAR 1 and 2, one queue set each, IPv4 and IPv6 addresses
/// registered) on one fabric, each in its own thread with its own smoltcp stack.
/// Returns what each side's closure returned, and each side's device counters.
fn pair<A, B, RA, RB>(a: A, b: B) -> ((RA, DeviceCounters), (RB, DeviceCounters))
where
    A: FnOnce(&mut Stack<'_, '_>, &Done) -> RA + Send + 'static,
    B: FnOnce(&mut Stack<'_, '_>, &Done) -> RB + Send + 'static,
    RA: Send + 'static,
    RB: Send + 'static,
{
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let cfg = DriverConfig::new(0, Mfs::K64);
    // Both partitions are registered before either stack starts sending.
    let pa = Partition::new(&fab, 1, 1, cfg);
    let pb = Partition::new(&fab, 2, 1, cfg);
    let done = Arc::new(Done::default());
    let ta = spawn_side(&fab, pa, "A", &done, a);
    let tb = spawn_side(&fab, pb, "B", &done, b);
    let (ra, rb) = within(TIMEOUT * 2, move || (ta.join(), tb.join()));
    let (ra, ca, pa) = ra.unwrap_or_else(|e| std::panic::resume_unwind(e));
    let (rb, cb, pb) = rb.unwrap_or_else(|e| std::panic::resume_unwind(e));
    // Both stacks have stopped: nothing sends into the partitions' memory any more.
    for p in [&pa, &pb] {
        assert!(
            p.ram.guards_intact(),
            "guard pages of LPAR {} changed",
            p.lpar
        );
        fab.remove_partition(p.lpar).unwrap();
    }
    ((ra, ca), (rb, cb))
}

/// FNV-1a, 64 bits, as a running checksum.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    const fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// `n` deterministic pseudo-random bytes.
fn stream(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (x >> 24) as u8
        })
        .collect()
}

fn no_loss(name: &str, c: &DeviceCounters) {
    assert_eq!(c.tx_dropped(), 0, "{name}: packets lost: {c:?}");
    assert_eq!(c.rx_errors, 0, "{name}: receive errors: {c:?}");
}

#[test]
fn capabilities_report_the_mtu_of_the_frame_size_and_ip_medium() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut parts: Vec<(Partition, Mfs)> = [(1, Mfs::K16), (2, Mfs::K64)]
        .into_iter()
        .map(|(lpar, mfs)| {
            (
                Partition::new(&fab, lpar, 1, DriverConfig::new(0, mfs)),
                mfs,
            )
        })
        .collect();
    for (part, mfs) in &mut parts {
        let (lpar, mfs) = (part.lpar, *mfs);
        let mut rx = vec![0u8; rx_buffer_len(mfs)];
        let mut tx = vec![0u8; tx_buffer_len(mfs)];
        let dev = IqdioDevice::new(&mut part.queues[0], fab.port(lpar), &mut rx, &mut tx).unwrap();
        let caps = dev.capabilities();
        assert_eq!(caps.medium, smoltcp::phy::Medium::Ip);
        assert_eq!(caps.max_transmission_unit, mfs.mtu());
        assert!(caps.checksum.tcp.tx() && !caps.checksum.tcp.rx());
        assert!(caps.checksum.ipv4.tx() && !caps.checksum.ipv4.rx());
        drop(dev);
        let mut short = vec![0u8; tx_buffer_len(mfs) - 1];
        assert!(
            IqdioDevice::new(&mut part.queues[0], fab.port(lpar), &mut rx, &mut short).is_err()
        );
    }
}

#[test]
fn tcp_moves_4_mib_between_two_partitions_and_the_checksums_agree() {
    let _serial = serial();
    let data = stream(TCP_BYTES, 0x5eed);
    let mut sent_sum = Fnv::new();
    sent_sum.update(&data);
    let server_addr = addr(v4(2, 0));

    // A: the client, sends the stream and closes.
    let client = move |stack: &mut Stack<'_, '_>, done: &Done| {
        let mut rx = vec![0u8; 16 << 10];
        let mut tx = vec![0u8; 512 << 10];
        let mut storage: [SocketStorage; 1] = Default::default();
        let mut sockets = SocketSet::new(&mut storage[..]);
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(&mut rx[..]),
            tcp::SocketBuffer::new(&mut tx[..]),
        );
        sock.set_nagle_enabled(false);
        sock.connect(stack.iface.context(), (server_addr, TCP_PORT), 49152u16)
            .unwrap();
        let h = sockets.add(sock);
        let mut off = 0;
        let mut closed = false;
        stack.run(&mut sockets, done, |_, sockets, _| {
            let s = sockets.get_mut::<tcp::Socket>(h);
            if off < data.len() && s.can_send() {
                off += s.send_slice(&data[off..]).unwrap();
            }
            if off == data.len() && !closed {
                s.close();
                closed = true;
            }
            closed && matches!(s.state(), tcp::State::TimeWait | tcp::State::Closed)
        });
        off
    };

    // B: the server, receives until the client's FIN, checksumming as it goes.
    let server = move |stack: &mut Stack<'_, '_>, done: &Done| {
        let mut rx = vec![0u8; 512 << 10];
        let mut tx = vec![0u8; 16 << 10];
        let mut storage: [SocketStorage; 1] = Default::default();
        let mut sockets = SocketSet::new(&mut storage[..]);
        let mut sock = tcp::Socket::new(
            tcp::SocketBuffer::new(&mut rx[..]),
            tcp::SocketBuffer::new(&mut tx[..]),
        );
        sock.set_ack_delay(None);
        sock.listen(TCP_PORT).unwrap();
        let h = sockets.add(sock);
        let mut sum = Fnv::new();
        let mut got = 0usize;
        let mut first: Option<StdInstant> = None;
        let mut elapsed = Duration::ZERO;
        let mut closed = false;
        stack.run(&mut sockets, done, |_, sockets, _| {
            let s = sockets.get_mut::<tcp::Socket>(h);
            while s.can_recv() {
                let n = s
                    .recv(|b| {
                        sum.update(b);
                        (b.len(), b.len())
                    })
                    .unwrap();
                got += n;
                first.get_or_insert_with(StdInstant::now);
            }
            if !closed && got > 0 && !s.may_recv() {
                elapsed = first.map_or(Duration::ZERO, |t| t.elapsed());
                s.close();
                closed = true;
            }
            closed && s.state() == tcp::State::Closed
        });
        (got, sum.0, elapsed)
    };

    let ((sent, ca), ((got, sum, elapsed), cb)) = pair(client, server);
    let secs = elapsed.as_secs_f64().max(1e-9);
    println!(
        "tcp: {got} bytes in {:.3} s: {:.1} MiB/s ({} segments A->B, {} B->A; \
         target-full retries A {} B {})",
        secs,
        got as f64 / secs / f64::from(1 << 20),
        ca.tx_packets,
        cb.tx_packets,
        ca.tx_full_retries,
        cb.tx_full_retries,
    );
    assert_eq!(sent, TCP_BYTES);
    assert_eq!(got, TCP_BYTES, "bytes received");
    assert_eq!(sum, sent_sum.0, "checksum of the received bytes");
    assert!(ca.tx_bytes > TCP_BYTES as u64 && cb.rx_bytes > TCP_BYTES as u64);
    // Large segments: the connection used the 56 KiB MTU (4 MiB in ~75 full ones).
    assert!(ca.tx_bytes / ca.tx_packets > 32 << 10, "{ca:?}");
    no_loss("A", &ca);
    no_loss("B", &cb);
}

/// Queues an echo request with `data` from `from` to `to` on the ICMP socket.
fn echo_request(
    s: &mut icmp::Socket<'_>,
    from: IpAddress,
    to: IpAddress,
    seq_no: u16,
    data: &[u8],
) {
    let caps = ChecksumCapabilities::default();
    match (from, to) {
        (IpAddress::Ipv4(_), IpAddress::Ipv4(_)) => {
            let repr = Icmpv4Repr::EchoRequest {
                ident: ICMP_IDENT,
                seq_no,
                data,
            };
            let buf = s.send(8 + data.len(), to).unwrap();
            repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
        }
        (IpAddress::Ipv6(src), IpAddress::Ipv6(dst)) => {
            let repr = Icmpv6Repr::EchoRequest {
                ident: ICMP_IDENT,
                seq_no,
                data,
            };
            let buf = s.send(repr.buffer_len(), to).unwrap();
            repr.emit(&src, &dst, &mut Icmpv6Packet::new_unchecked(buf), &caps);
        }
        _ => unreachable!("mixed families"),
    }
}

/// Decodes an echo message: (is request, seq_no, data).
fn echo_parse(buf: &[u8], from: IpAddress, to: IpAddress) -> (bool, u16, Vec<u8>) {
    let caps = ChecksumCapabilities::default();
    match (from, to) {
        (IpAddress::Ipv4(_), IpAddress::Ipv4(_)) => {
            let p = Icmpv4Packet::new_checked(buf).unwrap();
            match Icmpv4Repr::parse(&p, &caps).unwrap() {
                Icmpv4Repr::EchoRequest {
                    ident,
                    seq_no,
                    data,
                } => {
                    assert_eq!(ident, ICMP_IDENT);
                    (true, seq_no, data.to_vec())
                }
                Icmpv4Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                } => {
                    assert_eq!(ident, ICMP_IDENT);
                    (false, seq_no, data.to_vec())
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        (IpAddress::Ipv6(src), IpAddress::Ipv6(dst)) => {
            let p = Icmpv6Packet::new_checked(buf).unwrap();
            match Icmpv6Repr::parse(&src, &dst, &p, &caps).unwrap() {
                Icmpv6Repr::EchoRequest {
                    ident,
                    seq_no,
                    data,
                } => {
                    assert_eq!(ident, ICMP_IDENT);
                    (true, seq_no, data.to_vec())
                }
                Icmpv6Repr::EchoReply {
                    ident,
                    seq_no,
                    data,
                } => {
                    assert_eq!(ident, ICMP_IDENT);
                    (false, seq_no, data.to_vec())
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        _ => unreachable!("mixed families"),
    }
}

fn echo_reply(s: &mut icmp::Socket<'_>, from: IpAddress, to: IpAddress, seq_no: u16, data: &[u8]) {
    let caps = ChecksumCapabilities::default();
    match (from, to) {
        (IpAddress::Ipv4(_), IpAddress::Ipv4(_)) => {
            let repr = Icmpv4Repr::EchoReply {
                ident: ICMP_IDENT,
                seq_no,
                data,
            };
            let buf = s.send(8 + data.len(), to).unwrap();
            repr.emit(&mut Icmpv4Packet::new_unchecked(buf), &caps);
        }
        (IpAddress::Ipv6(src), IpAddress::Ipv6(dst)) => {
            let repr = Icmpv6Repr::EchoReply {
                ident: ICMP_IDENT,
                seq_no,
                data,
            };
            let buf = s.send(repr.buffer_len(), to).unwrap();
            repr.emit(&src, &dst, &mut Icmpv6Packet::new_unchecked(buf), &caps);
        }
        _ => unreachable!("mixed families"),
    }
}

fn icmp_socket<'a>(meta: &'a mut [icmp::PacketMetadata], bytes: &'a mut [u8]) -> icmp::Socket<'a> {
    let (rm, tm) = meta.split_at_mut(meta.len() / 2);
    let (rb, tb) = bytes.split_at_mut(bytes.len() / 2);
    let mut s = icmp::Socket::new(
        icmp::PacketBuffer::new(rm, rb),
        icmp::PacketBuffer::new(tm, tb),
    );
    s.bind(icmp::Endpoint::Ident(ICMP_IDENT)).unwrap();
    s
}

#[test]
fn icmp_echo_round_trips_over_ipv4_and_ipv6() {
    let _serial = serial();
    let targets = [addr(v4(2, 0)), addr(v6(2, 0))];
    let sources = [addr(v4(1, 0)), addr(v6(1, 0))];

    // A pings B over each family, with a small and a 16 KiB payload.
    let pinger = move |stack: &mut Stack<'_, '_>, done: &Done| {
        let mut meta = vec![icmp::PacketMetadata::EMPTY; 8];
        let mut bytes = vec![0u8; 128 << 10];
        let mut storage: [SocketStorage; 1] = Default::default();
        let mut sockets = SocketSet::new(&mut storage[..]);
        let h = sockets.add(icmp_socket(&mut meta, &mut bytes));
        let pings: Vec<(usize, Vec<u8>)> = [(0, 56), (1, 56), (0, 16 << 10), (1, 16 << 10)]
            .iter()
            .enumerate()
            .map(|(i, &(fam, len))| (fam, stream(len, i as u32)))
            .collect();
        let mut next = 0;
        let mut sent_at = StdInstant::now();
        let mut rtts = Vec::new();
        let mut waiting = false;
        stack.run(&mut sockets, done, |_, sockets, _| {
            let s = sockets.get_mut::<icmp::Socket>(h);
            if !waiting && next < pings.len() {
                let (fam, data) = &pings[next];
                echo_request(s, sources[*fam], targets[*fam], next as u16, data);
                sent_at = StdInstant::now();
                waiting = true;
            }
            if let Ok((buf, from)) = s.recv() {
                let (fam, data) = &pings[next];
                assert_eq!(from, targets[*fam]);
                let (request, seq, got) = echo_parse(buf, from, sources[*fam]);
                assert!(!request, "a reply");
                assert_eq!(usize::from(seq), next);
                assert_eq!(&got, data, "echoed data");
                rtts.push(sent_at.elapsed());
                next += 1;
                waiting = false;
            }
            next == pings.len()
        });
        rtts
    };

    // B answers every echo request on its ICMP socket.
    let responder = move |stack: &mut Stack<'_, '_>, done: &Done| {
        let mut meta = vec![icmp::PacketMetadata::EMPTY; 8];
        let mut bytes = vec![0u8; 128 << 10];
        let mut storage: [SocketStorage; 1] = Default::default();
        let mut sockets = SocketSet::new(&mut storage[..]);
        let h = sockets.add(icmp_socket(&mut meta, &mut bytes));
        let mut answered = 0;
        stack.run(&mut sockets, done, |_, sockets, _| {
            let s = sockets.get_mut::<icmp::Socket>(h);
            if s.can_recv() {
                let (buf, from) = s.recv().unwrap();
                let me = match from {
                    IpAddress::Ipv4(_) => addr(v4(2, 0)),
                    IpAddress::Ipv6(_) => addr(v6(2, 0)),
                };
                let (request, seq, data) = echo_parse(buf, from, me);
                assert!(request);
                echo_reply(s, me, from, seq, &data);
                answered += 1;
            }
            answered == 4
        });
        answered
    };

    let ((rtts, ca), (answered, cb)) = pair(pinger, responder);
    println!("icmp: 4 echo round trips (IPv4, IPv6, 56 B and 16 KiB): {rtts:?}");
    assert_eq!(rtts.len(), 4);
    assert_eq!(answered, 4);
    assert_eq!((ca.tx_packets, ca.rx_packets), (4, 4), "{ca:?}");
    assert_eq!((cb.tx_packets, cb.rx_packets), (4, 4), "{cb:?}");
    no_loss("A", &ca);
    no_loss("B", &cb);
}

fn udp_socket<'a>(meta: &'a mut [udp::PacketMetadata], bytes: &'a mut [u8]) -> udp::Socket<'a> {
    let (rm, tm) = meta.split_at_mut(meta.len() / 2);
    let (rb, tb) = bytes.split_at_mut(bytes.len() / 2);
    let mut s = udp::Socket::new(
        udp::PacketBuffer::new(rm, rb),
        udp::PacketBuffer::new(tm, tb),
    );
    s.bind(UDP_PORT).unwrap();
    s
}

/// UDP payload sizes: from one byte to the largest datagram the MTU carries over
/// IPv6 (56 KiB less 40 bytes of IPv6 and 8 of UDP header).
const UDP_SIZES: [usize; 6] = [1, 512, 1472, 9000, 32 << 10, (56 << 10) - 48];

#[test]
fn udp_datagrams_cross_over_ipv4_and_ipv6() {
    let _serial = serial();
    let peers = [addr(v4(2, 0)), addr(v6(2, 0))];

    // A sends each size over each family to B's echo port and checks what comes back.
    let client = move |stack: &mut Stack<'_, '_>, done: &Done| {
        let mut meta = vec![udp::PacketMetadata::EMPTY; 8];
        let mut bytes = vec![0u8; 256 << 10];
        let mut storage: [SocketStorage; 1] = Default::default();
        let mut sockets = SocketSet::new(&mut storage[..]);
        let h = sockets.add(udp_socket(&mut meta, &mut bytes));
        let plan: Vec<(IpAddress, Vec<u8>)> = peers
            .iter()
            .flat_map(|&p| UDP_SIZES.iter().map(move |&n| (p, n)))
            .enumerate()
            .map(|(i, (p, n))| (p, stream(n, 1000 + i as u32)))
            .collect();
        let mut next = 0;
        let mut waiting = false;
        let mut echoed = Vec::new();
        stack.run(&mut sockets, done, |_, sockets, _| {
            let s = sockets.get_mut::<udp::Socket>(h);
            if !waiting && next < plan.len() {
                let (to, data) = &plan[next];
                s.send_slice(data, IpEndpoint::new(*to, UDP_PORT)).unwrap();
                waiting = true;
            }
            if let Ok((data, meta)) = s.recv() {
                let (to, want) = &plan[next];
                assert_eq!(meta.endpoint, IpEndpoint::new(*to, UDP_PORT));
                assert_eq!(data, &want[..], "datagram {next} echoed intact");
                echoed.push((matches!(to, IpAddress::Ipv6(_)), data.len()));
                next += 1;
                waiting = false;
            }
            next == plan.len()
        });
        echoed
    };

    // B echoes every datagram to its sender.
    let server = move |stack: &mut Stack<'_, '_>, done: &Done| {
        let mut meta = vec![udp::PacketMetadata::EMPTY; 8];
        let mut bytes = vec![0u8; 256 << 10];
        let mut storage: [SocketStorage; 1] = Default::default();
        let mut sockets = SocketSet::new(&mut storage[..]);
        let h = sockets.add(udp_socket(&mut meta, &mut bytes));
        let mut count = 0;
        let mut buf = vec![0u8; 64 << 10];
        stack.run(&mut sockets, done, |_, sockets, _| {
            let s = sockets.get_mut::<udp::Socket>(h);
            if s.can_recv() && s.can_send() {
                let (n, meta) = s.recv_slice(&mut buf).unwrap();
                s.send_slice(&buf[..n], meta.endpoint).unwrap();
                count += 1;
            }
            count == 2 * UDP_SIZES.len()
        });
        count
    };

    let ((echoed, ca), (count, cb)) = pair(client, server);
    println!("udp: {} datagrams echoed: {echoed:?}", echoed.len());
    assert_eq!(count, 2 * UDP_SIZES.len());
    assert_eq!(
        echoed.iter().filter(|(v6, _)| *v6).count(),
        UDP_SIZES.len(),
        "over IPv6"
    );
    assert_eq!(
        echoed.iter().filter(|(v6, _)| !*v6).count(),
        UDP_SIZES.len(),
        "over IPv4"
    );
    let n = 2 * UDP_SIZES.len() as u64;
    assert_eq!((ca.tx_packets, ca.rx_packets), (n, n), "{ca:?}");
    assert_eq!((cb.tx_packets, cb.rx_packets), (n, n), "{cb:?}");
    no_loss("A", &ca);
    no_loss("B", &cb);
}

/// A target that never drains: its 16 input buffers fill, after which every
/// datagram is refused as target-full, retried, and then counted as dropped; a
/// datagram to an address no queue set has is counted as unreachable. Nothing is
/// lost without a count.
#[test]
fn a_full_target_and_an_unknown_next_hop_are_counted_not_silently_dropped() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let cfg = DriverConfig::new(0, Mfs::K64);
    let mut a = Partition::new(&fab, 1, 1, cfg);
    let mut b = Partition::new(&fab, 2, 1, cfg);
    let mut rx = vec![0u8; rx_buffer_len(Mfs::K64)];
    let mut tx = vec![0u8; tx_buffer_len(Mfs::K64)];
    let mut dev = IqdioDevice::new(&mut a.queues[0], fab.port(1), &mut rx, &mut tx).unwrap();
    dev.set_retry_limit(3);
    let mut stack_a = Stack::new("A", dev, 1);
    let mut meta = vec![udp::PacketMetadata::EMPTY; 64];
    let mut bytes = vec![0u8; 64 << 10];
    let mut storage: [SocketStorage; 1] = Default::default();
    let mut sockets = SocketSet::new(&mut storage[..]);
    let h = sockets.add(udp_socket(&mut meta, &mut bytes));
    let rx_buffers = u64::from(cfg.rx_buffers);
    let sent = rx_buffers + 4;
    let s = sockets.get_mut::<udp::Socket>(h);
    for i in 0..sent {
        s.send_slice(&i.to_le_bytes(), IpEndpoint::new(addr(v4(2, 0)), UDP_PORT))
            .unwrap();
    }
    let nowhere: IpAddress = smoltcp::wire::Ipv4Address::new(10, 0, 9, 1).into();
    s.send_slice(b"lost", IpEndpoint::new(nowhere, UDP_PORT))
        .unwrap();
    for _ in 0..4 {
        let now = stack_a.now();
        stack_a.iface.poll(now, &mut stack_a.dev, &mut sockets);
    }
    let c = stack_a.dev.counters();
    println!(
        "back-pressure: {c:?}, last error {:?}",
        stack_a.dev.last_error()
    );
    assert_eq!(c.tx_packets, rx_buffers, "one per empty input buffer");
    assert_eq!(c.tx_dropped_full, sent - rx_buffers);
    assert_eq!(c.tx_full_retries, 3 * (sent - rx_buffers));
    assert_eq!(c.tx_unreachable, 1);
    assert_eq!(c.tx_errors, 0);
    assert_eq!(c.tx_dropped(), sent - rx_buffers + 1);
    // The receiver has exactly the datagrams that were counted as sent, in order.
    let mut seen = Vec::new();
    while let Some(k) = b.queues[0].receive(|f| {
        let mut p = vec![0u8; f.len()];
        f.copy_to(&mut p);
        // IPv4 (20) + UDP (8) headers, then the 8-byte sequence number.
        seen.push(u64::from_le_bytes(p[28..36].try_into().unwrap()));
    }) {
        assert_eq!(k, 1);
    }
    assert_eq!(seen, (0..rx_buffers).collect::<Vec<_>>());
    assert_eq!(fab.counters_of(2, 0).unwrap().frames_received, rx_buffers);
}

/// A frame the receiver's driver cannot hand over (its header overwritten in the
/// receiver's memory after the fabric delivered it) is counted in the device's
/// `rx_errors`, and the frame beside it in the same buffer and the next buffer's still
/// reach the stack.
#[test]
fn a_received_frame_the_driver_cannot_hand_over_is_counted_in_rx_errors() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let cfg = DriverConfig::new(0, Mfs::K64);
    let mut a = Partition::new(&fab, 1, 1, cfg);
    let mut b = Partition::new(&fab, 2, 1, cfg);
    let port = fab.port(1);
    a.queues[0]
        .prime_frames(v4(2, 0), &[&[0; 60], &[1; 60]])
        .unwrap();
    assert_eq!(a.queues[0].flush(&port).unwrap().delivered, 1);
    a.queues[0].send(&port, v4(2, 0), &[2; 60]).unwrap();
    // B's first buffer: the first frame's header id overwritten in B's own memory.
    let sbal = b.queues[0].params().input_sbals[0];
    let mut raw = [0u8; 16];
    b.ram.read(sbal, &mut raw);
    b.ram.write(iqdio::qdio::Sbale::decode(&raw).addr, &[0x02]);
    let mut rx = vec![0u8; rx_buffer_len(Mfs::K64)];
    let mut tx = vec![0u8; tx_buffer_len(Mfs::K64)];
    let mut dev = IqdioDevice::new(&mut b.queues[0], fab.port(2), &mut rx, &mut tx).unwrap();
    let mut got = Vec::new();
    while let Some((token, _)) = dev.receive(Instant::ZERO) {
        token.consume(|p| got.push(p.to_vec()));
    }
    assert_eq!(got, vec![vec![1; 60], vec![2; 60]]);
    let c = dev.counters();
    assert_eq!((c.rx_packets, c.rx_errors), (2, 1), "{c:?}");
}
