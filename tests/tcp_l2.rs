//! TCP over layer 2 (issue 13 item 4): three partitions, each a thread running a
//! smoltcp `Interface` with `Medium::Ethernet` over an `IqdioDevice::new_ethernet` on
//! its layer-2 queue set. A and B are on VLAN 10, C on VLAN 20. No neighbour entry is
//! made by hand: ARP and IPv6 neighbour discovery run over the fabric (broadcast and
//! group MACs on the multicast queue). B moves data to A over TCP/IPv4 and TCP/IPv6; C,
//! in the same IP subnets but on the other VLAN, tries to connect to A and must not.
#![cfg(feature = "smoltcp")]

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant as StdInstant};

use common::*;
use iqdio::driver::{DriverConfig, Indicators, QueueDriver};
use iqdio::phy::{
    DeviceCounters, DeviceError, IPV6_ALL_NODES_MAC, IqdioDevice, rx_buffer_len,
    solicited_node_mac, tx_buffer_len,
};
use iqdio::qdio::l2::Mac;
use iqdio::{FabricConfig, Mfs};
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes moved on each connection.
const BYTES: usize = 1 << 20;
const PORT4: u16 = 5001;
const PORT6: u16 = 5002;

fn mac(lpar: u8) -> Mac {
    [0x02, 0, 0, 0, 0, lpar]
}

fn v6addr(lpar: u8) -> std::net::Ipv6Addr {
    match v6(lpar, 0) {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => unreachable!(),
    }
}

/// The byte at `i` of connection `conn`'s stream.
fn pattern(conn: u8, i: usize) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add(conn)
}

/// One layer-2 partition: memory, indicators, driver; its MAC registered, on `vlan`,
/// and receiving the IPv6 all-nodes and its own solicited-node group MACs.
struct Node {
    lpar: u8,
    vlan: u16,
    _ram: GuestRam,
    _ind: Indicators,
    q: QueueDriver,
}

fn node(f: &TestFabric, lpar: u8, vlan: u16) -> Node {
    let cfg = DriverConfig::layer2(0, Mfs::K64);
    let ram = GuestRam::new(PAGE + cfg.footprint());
    let mut region = ram.region();
    let ind = Indicators::new(&mut region).unwrap();
    let q = QueueDriver::new(&mut region, &ind, cfg).unwrap();
    f.add_partition(lpar, &[ram.window()]).unwrap();
    f.establish(lpar, 0, &q.params()).unwrap();
    f.register_mac(lpar, 0, mac(lpar)).unwrap();
    f.join_vlan(lpar, 0, vlan).unwrap();
    f.register_group_mac(lpar, 0, IPV6_ALL_NODES_MAC).unwrap();
    f.register_group_mac(lpar, 0, solicited_node_mac(v6addr(lpar)))
        .unwrap();
    Node {
        lpar,
        vlan,
        _ram: ram,
        _ind: ind,
        q,
    }
}

/// Shared state of the run.
#[derive(Default)]
struct Run {
    /// A and B finished.
    done: AtomicU8,
    failed: AtomicBool,
}

/// A partition leaked, not freed, if its thread panics.
struct Keep(Option<Node>);

impl Drop for Keep {
    fn drop(&mut self) {
        if std::thread::panicking() {
            std::mem::forget(self.0.take());
        }
    }
}

struct FailOnPanic(Arc<Run>);

impl Drop for FailOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, Ordering::SeqCst);
        }
    }
}

/// What a side reports: bytes received per connection (A), whether any connection
/// was established (C), its device counters.
struct Outcome {
    received: [usize; 2],
    established: bool,
    counters: DeviceCounters,
}

/// Runs `node`'s stack in a thread: `step` is called after every poll with the
/// sockets and returns true once this side is done; the thread ends when it is done
/// and A and B both are (C is never "done" by itself: it keeps trying until then).
fn spawn<F>(
    fab: &Arc<TestFabric>,
    run: &Arc<Run>,
    node: Node,
    counts_done: bool,
    setup: fn(&mut SocketSet<'static>, &mut Interface) -> Vec<smoltcp::iface::SocketHandle>,
    mut step: F,
) -> std::thread::JoinHandle<(Outcome, Node)>
where
    F: FnMut(
            &mut SocketSet<'static>,
            &mut Interface,
            &[smoltcp::iface::SocketHandle],
            &mut Outcome,
        ) -> bool
        + Send
        + 'static,
{
    let fab = fab.clone();
    let run = run.clone();
    std::thread::spawn(move || {
        let _fail = FailOnPanic(run.clone());
        // Kept (returned) or leaked: the peers may send into its memory until they
        // are done too.
        let mut keep = Keep(Some(node));
        let node = keep.0.as_mut().unwrap();
        let lpar = node.lpar;
        let mut rx = vec![0u8; rx_buffer_len(Mfs::K64)];
        let mut tx = vec![0u8; tx_buffer_len(Mfs::K64)];
        let mut dev =
            IqdioDevice::new_ethernet(&mut node.q, fab.port(lpar), &mut rx, &mut tx, node.vlan)
                .unwrap();
        let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress(mac(lpar))));
        config.random_seed = 0x12_0000 + u64::from(lpar);
        let start = StdInstant::now();
        let now = || Instant::from_micros(start.elapsed().as_micros() as i64);
        let mut iface = Interface::new(config, &mut dev, now());
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::from(v4(lpar, 0)), 16))
                .unwrap();
            a.push(IpCidr::new(IpAddress::from(v6(lpar, 0)), 64))
                .unwrap();
        });
        let storage: &'static mut [SocketStorage<'static>] =
            Vec::leak((0..4).map(|_| SocketStorage::EMPTY).collect());
        let mut sockets = SocketSet::new(storage);
        let handles = setup(&mut sockets, &mut iface);
        let mut out = Outcome {
            received: [0; 2],
            established: false,
            counters: DeviceCounters::default(),
        };
        let deadline = StdInstant::now() + TIMEOUT;
        let mut mine = false;
        loop {
            iface.poll(now(), &mut dev, &mut sockets);
            if !mine && step(&mut sockets, &mut iface, &handles, &mut out) {
                mine = true;
                if counts_done {
                    run.done.fetch_add(1, Ordering::SeqCst);
                }
            }
            if (mine || !counts_done) && run.done.load(Ordering::SeqCst) >= 2 {
                break;
            }
            assert!(!run.failed.load(Ordering::SeqCst), "{lpar}: a peer failed");
            assert!(
                StdInstant::now() < deadline,
                "{lpar}: timed out; counters {:?}, last error {:?}",
                dev.counters(),
                dev.last_error()
            );
            if !dev.has_input() {
                std::thread::yield_now();
            }
        }
        out.counters = dev.counters();
        drop(dev);
        (out, keep.0.take().unwrap())
    })
}

fn tcp_socket() -> tcp::Socket<'static> {
    // Leaked: the sockets live as long as the test's threads.
    let rx = tcp::SocketBuffer::new(Vec::leak(vec![0u8; 64 << 10]));
    let tx = tcp::SocketBuffer::new(Vec::leak(vec![0u8; 64 << 10]));
    tcp::Socket::new(rx, tx)
}

fn two_sockets(
    sockets: &mut SocketSet<'static>,
    _: &mut Interface,
) -> Vec<smoltcp::iface::SocketHandle> {
    vec![sockets.add(tcp_socket()), sockets.add(tcp_socket())]
}

#[test]
fn the_ethernet_device_needs_a_layer2_driver() {
    let f = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut n = node(&f, 1, 10);
    let mut l3 = Partition::new(&f, 2, 1, DriverConfig::new(0, Mfs::K64));
    let (mut rx, mut tx) = (
        vec![0u8; rx_buffer_len(Mfs::K64)],
        vec![0u8; tx_buffer_len(Mfs::K64)],
    );
    assert_eq!(
        IqdioDevice::new(&mut n.q, f.port(1), &mut rx, &mut tx).err(),
        Some(DeviceError::WrongLayer)
    );
    assert_eq!(
        IqdioDevice::new_ethernet(&mut n.q, f.port(1), &mut rx, &mut tx, 4095).err(),
        Some(DeviceError::InvalidVlan)
    );
    assert_eq!(
        IqdioDevice::new_ethernet(&mut l3.queues[0], f.port(2), &mut rx, &mut tx, 0).err(),
        Some(DeviceError::WrongLayer)
    );
    assert_eq!(
        solicited_node_mac(v6addr(3)),
        [0x33, 0x33, 0xff, 3, 0, 1],
        "fd00::3:1's solicited-node group ff02::1:ff03:1"
    );
}

#[test]
fn tcp_over_ipv4_and_ipv6_with_arp_and_ndp_and_no_way_across_vlans() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let run = Arc::new(Run::default());
    let (a, b, c) = (node(&fab, 1, 10), node(&fab, 2, 10), node(&fab, 3, 20));

    // A: listens on both ports, reads both streams to their end and checks them.
    let ta = spawn(
        &fab,
        &run,
        a,
        true,
        |sockets, iface| {
            let h = two_sockets(sockets, iface);
            sockets.get_mut::<tcp::Socket>(h[0]).listen(PORT4).unwrap();
            sockets.get_mut::<tcp::Socket>(h[1]).listen(PORT6).unwrap();
            h
        },
        |sockets, _, h, out| {
            for (k, &hk) in h.iter().enumerate() {
                let s = sockets.get_mut::<tcp::Socket>(hk);
                while s.can_recv() {
                    let at = out.received[k];
                    let n = s
                        .recv(|buf| {
                            for (i, &b) in buf.iter().enumerate() {
                                assert_eq!(
                                    b,
                                    pattern(k as u8, at + i),
                                    "stream {k} byte {}",
                                    at + i
                                );
                            }
                            (buf.len(), buf.len())
                        })
                        .unwrap();
                    out.received[k] += n;
                }
                if out.received[k] == BYTES && s.state() == tcp::State::CloseWait {
                    s.close();
                }
            }
            out.received == [BYTES; 2]
        },
    );
    // B: connects to A over IPv4 and IPv6, sends each stream, closes.
    let mut sent = [0usize; 2];
    let tb = spawn(
        &fab,
        &run,
        b,
        true,
        |sockets, iface| {
            let h = two_sockets(sockets, iface);
            let cx = iface.context();
            sockets
                .get_mut::<tcp::Socket>(h[0])
                .connect(cx, (IpAddress::from(v4(1, 0)), PORT4), 49152)
                .unwrap();
            sockets
                .get_mut::<tcp::Socket>(h[1])
                .connect(cx, (IpAddress::from(v6(1, 0)), PORT6), 49153)
                .unwrap();
            h
        },
        move |sockets, _, h, out| {
            let mut all = true;
            for (k, &hk) in h.iter().enumerate() {
                let s = sockets.get_mut::<tcp::Socket>(hk);
                if s.state() == tcp::State::Established {
                    out.established = true;
                }
                while s.can_send() && sent[k] < BYTES {
                    let at = sent[k];
                    sent[k] += s
                        .send(|buf| {
                            let n = buf.len().min(BYTES - at);
                            for (i, b) in buf[..n].iter_mut().enumerate() {
                                *b = pattern(k as u8, at + i);
                            }
                            (n, n)
                        })
                        .unwrap();
                }
                if sent[k] == BYTES && s.send_queue() == 0 {
                    s.close();
                }
                all &= sent[k] == BYTES
                    && matches!(
                        s.state(),
                        tcp::State::FinWait2 | tcp::State::TimeWait | tcp::State::Closed
                    );
            }
            all
        },
    );
    // C: on VLAN 20, in the same subnets, tries to reach A until A and B are done.
    let tc = spawn(
        &fab,
        &run,
        c,
        false,
        |sockets, iface| {
            let h = two_sockets(sockets, iface);
            let cx = iface.context();
            sockets
                .get_mut::<tcp::Socket>(h[0])
                .connect(cx, (IpAddress::from(v4(1, 0)), PORT4), 49152)
                .unwrap();
            sockets
                .get_mut::<tcp::Socket>(h[1])
                .connect(cx, (IpAddress::from(v6(1, 0)), PORT6), 49153)
                .unwrap();
            h
        },
        |sockets, _, h, out| {
            for &hk in h {
                let s = sockets.get_mut::<tcp::Socket>(hk);
                if s.state() == tcp::State::Established {
                    out.established = true;
                }
            }
            false
        },
    );
    let (ra, rb, rc) = within(TIMEOUT * 2, move || (ta.join(), tb.join(), tc.join()));
    let unwrap = |r: std::thread::Result<(Outcome, Node)>| {
        r.unwrap_or_else(|e| std::panic::resume_unwind(e))
    };
    // The nodes drop here, after every thread is done.
    let ((ra, _na), (rb, _nb), (rc, _nc)) = (unwrap(ra), unwrap(rb), unwrap(rc));
    assert_eq!(ra.received, [BYTES; 2], "A got both streams whole");
    assert!(rb.established);
    assert!(!rc.established, "C reached A across VLANs");
    for (name, o) in [("A", &ra), ("B", &rb), ("C", &rc)] {
        assert_eq!(
            o.counters.rx_other_vlan, 0,
            "{name}: a frame of another VLAN"
        );
        assert_eq!(o.counters.rx_errors, 0, "{name}");
        assert_eq!(o.counters.tx_errors, 0, "{name}: {:?}", o.counters);
    }
    // ARP and neighbour discovery went as broadcast and group frames on the
    // multicast queue: B's reached A (its VLAN's other member), C's reached no one.
    let cb = fab.counters_of(2, 0).unwrap();
    assert!(cb.group_copies >= 2, "B's ARP request and NS: {cb:?}");
    let cc = fab.counters_of(3, 0).unwrap();
    assert!(rc.counters.tx_packets > 0, "C tried");
    assert_eq!(cc.group_copies, 0, "C's broadcasts reached no one");
    assert_eq!(rc.counters.rx_packets, 0, "nothing reached C");
}
