//! The driver in layer-2 mode (issue 13): Ethernet frames behind Linux's
//! `qeth_hdr_layer2`, unicast MACs on queue 0, broadcast and group MACs on the
//! multicast queue, received frames checked and handed over without their header, the
//! other layer's calls refused.

mod common;

use common::*;
use iqdio::driver::{DriverConfig, DriverError, FrameHeader, Indicators, QueueDriver, SendError};
use iqdio::qdio::l2::{
    BROADCAST_MAC, FLAG_BROADCAST, FLAG_MULTICAST, FLAG_UNICAST, Mac, TPID_8021Q,
};
use iqdio::qdio::{L3Header, SlsbState};
use iqdio::{FabricConfig, Mfs, Reason};

fn mac(n: u8) -> Mac {
    [0x02, 0, 0, 0, 0, n]
}

/// An Ethernet frame from `src` to `dest`, tagged with `vlan` (if any), EtherType
/// 0x88B5, `len` payload bytes counting up from `tag`.
fn eth(dest: Mac, src: Mac, vlan: Option<u16>, tag: u8, len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dest);
    f.extend_from_slice(&src);
    if let Some(v) = vlan {
        f.extend_from_slice(&TPID_8021Q.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&0x88B5u16.to_be_bytes());
    f.extend((0..len).map(|i| tag.wrapping_add(i as u8)));
    f
}

/// One partition with one queue set on subchannel 0.
struct Part {
    lpar: u8,
    ram: GuestRam,
    _ind: Indicators,
    q: QueueDriver,
}

/// A partition with a driver of `cfg`: layer 2, its MAC registered and on `vlans`;
/// layer 3, its IPv4 address registered.
fn part(f: &TestFabric, lpar: u8, cfg: DriverConfig, vlans: &[u16]) -> Part {
    let ram = GuestRam::new(PAGE + cfg.footprint());
    let mut region = ram.region();
    let ind = Indicators::new(&mut region).unwrap();
    let q = QueueDriver::new(&mut region, &ind, cfg).unwrap();
    f.add_partition(lpar, &[ram.window()]).unwrap();
    f.establish(lpar, 0, &q.params()).unwrap();
    if cfg.layer2 {
        f.register_mac(lpar, 0, mac(lpar)).unwrap();
        for &v in vlans {
            f.join_vlan(lpar, 0, v).unwrap();
        }
    } else {
        f.register_address(lpar, 0, v4(lpar, 0)).unwrap();
    }
    Part {
        lpar,
        ram,
        _ind: ind,
        q,
    }
}

fn l2(rx: u8) -> DriverConfig {
    DriverConfig {
        rx_buffers: rx,
        ..DriverConfig::layer2(0, Mfs::K16)
    }
}

/// Every frame waiting: its header and its packet (the Ethernet frame on layer 2).
fn take(q: &mut QueueDriver) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut out = Vec::new();
    while q
        .receive(|f| {
            let mut buf = vec![0u8; f.len()];
            assert_eq!(f.copy_to(&mut buf), f.len());
            out.push((*f.frame_header(), buf));
        })
        .is_some()
    {}
    out
}

/// Input buffer 0's first element: (its address, its length).
fn rx_element0(p: &Part) -> (u64, u32) {
    let at = p.q.params().input_sbals[0];
    let mut e = [0u8; 16];
    p.ram.read(at, &mut e);
    (
        u64::from_be_bytes(e[8..16].try_into().unwrap()),
        u32::from_be_bytes(e[4..8].try_into().unwrap()),
    )
}

fn lan() -> (std::sync::Arc<TestFabric>, Vec<Part>) {
    let f = fabric(TestPlatform::new(), FabricConfig::default());
    // 1, 2, 3 on VLAN 10; 4 on VLAN 20; 5 a layer-3 partition.
    let ps = vec![
        part(&f, 1, l2(4), &[10]),
        part(&f, 2, l2(4), &[10]),
        part(&f, 3, l2(4), &[10]),
        part(&f, 4, l2(4), &[20]),
        part(&f, 5, config(Mfs::K16), &[]),
    ];
    (f, ps)
}

#[test]
fn a_layer2_config_establishes_a_layer2_set_with_a_multicast_queue() {
    let c = DriverConfig::layer2(3, Mfs::K16);
    assert!(c.layer2);
    assert_eq!((c.subchannel, c.output_queues), (3, 2));
    assert!(!DriverConfig::new(3, Mfs::K16).layer2);
    let (_f, ps) = lan();
    assert!(ps[0].q.params().layer2);
    assert!(!ps[4].q.params().layer2);
    assert_eq!(ps[0].q.multicast_queue(), Some(1));
}

#[test]
fn a_unicast_frame_arrives_as_its_ethernet_frame_with_the_header_checked() {
    let (f, mut ps) = lan();
    let tagged = eth(mac(2), mac(1), Some(10), 7, 300);
    ps[0].q.send_eth(&f.port(1), &tagged).unwrap();
    assert_eq!(ps[0].q.output_state_on(0, 0), SlsbState::OUTPUT_EMPTY);
    let got = take(&mut ps[1].q);
    assert_eq!(got.len(), 1);
    let FrameHeader::Layer2(h) = got[0].0 else {
        panic!("a layer-3 header on a layer-2 set");
    };
    assert_eq!(h.flags, FLAG_UNICAST);
    assert_eq!(h.vlan_tci, Some(10));
    assert_eq!(usize::from(h.pkt_length), tagged.len());
    assert_eq!(
        got[0].1, tagged,
        "the Ethernet frame, tag kept, header stripped"
    );
    assert!(take(&mut ps[2].q).is_empty());
    let c = ps[1].q.rx_counters();
    assert_eq!((c.frames, c.bad_frames), (1, 0));
    // A frame received in the callback: no layer-3 header, the layer-2 one.
    let frame = eth(mac(3), mac(1), Some(10), 1, 60);
    ps[0].q.send_eth(&f.port(1), &frame).unwrap();
    let mut seen = 0;
    ps[2].q.receive(|fr| {
        assert!(fr.header().is_none());
        assert_eq!(fr.l2_header().map(|h| h.flags), Some(FLAG_UNICAST));
        assert_eq!(fr.contiguous(), Some(&frame[..]));
        seen += 1;
    });
    assert_eq!(seen, 1);
}

#[test]
fn broadcast_and_group_macs_go_on_the_multicast_queue() {
    let (f, mut ps) = lan();
    let arp = eth(BROADCAST_MAC, mac(1), Some(10), 0, 28);
    assert_eq!(ps[0].q.eth_queue_for(&BROADCAST_MAC), Ok(1));
    assert_eq!(ps[0].q.eth_queue_for(&mac(2)), Ok(0));
    ps[0].q.send_eth(&f.port(1), &arp).unwrap();
    assert_eq!(ps[0].q.output_state_on(1, 0), SlsbState::OUTPUT_EMPTY);
    assert_eq!(ps[0].q.output_state_on(0, 0), SlsbState::OUTPUT_NOT_INIT);
    for p in [1, 2] {
        let got = take(&mut ps[p].q);
        assert_eq!(got.len(), 1, "partition {}", ps[p].lpar);
        assert_eq!(got[0].1, arp);
        assert!(matches!(got[0].0, FrameHeader::Layer2(h) if h.flags == FLAG_BROADCAST));
    }
    assert!(take(&mut ps[3].q).is_empty(), "VLAN 20");
    assert!(take(&mut ps[0].q).is_empty(), "not the sender");
    // A group MAC: only the VLAN members that registered it.
    let all_nodes: Mac = [0x33, 0x33, 0, 0, 0, 1];
    f.register_group_mac(3, 0, all_nodes).unwrap();
    let ns = eth(all_nodes, mac(1), Some(10), 0, 72);
    let (q, _) = ps[0].q.prime_eth(&ns).unwrap();
    assert_eq!(q, 1);
    let report = ps[0].q.flush(&f.port(1)).unwrap();
    assert_eq!((report.delivered, report.primed[1]), (1, 1));
    assert!(take(&mut ps[1].q).is_empty());
    let got = take(&mut ps[2].q);
    assert_eq!(got.len(), 1);
    assert!(matches!(got[0].0, FrameHeader::Layer2(h) if h.flags == FLAG_MULTICAST));
    // Not on a unicast queue; not at all without a multicast queue.
    assert_eq!(ps[0].q.prime_eth_on(0, &arp), Err(DriverError::InvalidDest));
    let one = DriverConfig {
        output_queues: 1,
        ..l2(4)
    };
    let mut solo = part(&f, 6, one, &[10]);
    assert_eq!(
        solo.q.send_eth(&f.port(6), &arp),
        Err(SendError::Driver(DriverError::NoMulticastQueue))
    );
    // Unicast still goes.
    solo.q
        .send_eth(&f.port(6), &eth(mac(2), mac(6), Some(10), 0, 60))
        .unwrap();
    assert_eq!(take(&mut ps[1].q).len(), 1);
}

#[test]
fn the_other_layers_calls_are_refused() {
    let (f, mut ps) = lan();
    let p1 = f.port(1);
    assert_eq!(
        ps[0].q.prime(v4(2, 0), &[0x45; 40]),
        Err(DriverError::WrongLayer)
    );
    assert_eq!(
        ps[0].q.send(&p1, v4(2, 0), &[0x45; 40]),
        Err(SendError::Driver(DriverError::WrongLayer))
    );
    assert_eq!(
        ps[0].q.prime_frames_with(v4(2, 0), &[40], |_, _| {}),
        Err(DriverError::WrongLayer)
    );
    assert_eq!(
        ps[0].q.prime_frames_on(1, v4(2, 0), &[&[0x45; 40]]),
        Err(DriverError::WrongLayer)
    );
    let frame = eth(mac(1), mac(5), None, 0, 60);
    assert_eq!(ps[4].q.prime_eth(&frame), Err(DriverError::WrongLayer));
    assert_eq!(
        ps[4].q.send_eth(&f.port(5), &frame),
        Err(SendError::Driver(DriverError::WrongLayer))
    );
    assert!(matches!(
        ps[4].q.prime_eth_with(60, |_| ()),
        Err((_, DriverError::WrongLayer))
    ));
    // Shorter than two MACs and an EtherType.
    assert_eq!(
        ps[0].q.prime_eth(&frame[..13]),
        Err(DriverError::InvalidFrame)
    );
    assert_eq!(ps[0].q.free_tx_on(0), 8, "nothing primed");
}

#[test]
fn a_frame_written_in_place_goes_where_its_destination_mac_says() {
    let (f, mut ps) = lan();
    let uni = eth(mac(2), mac(1), Some(10), 3, 500);
    let (r, at) = ps[0]
        .q
        .prime_eth_with(uni.len(), |b| {
            b.copy_from_slice(&uni);
            42
        })
        .ok()
        .unwrap();
    assert_eq!((r, at), (42, Ok((0, 0))));
    // A broadcast written into queue 0's buffer moves to the multicast queue.
    let bc = eth(BROADCAST_MAC, mac(1), Some(10), 9, 28);
    let (_, at) = ps[0]
        .q
        .prime_eth_with(bc.len(), |b| b.copy_from_slice(&bc))
        .ok()
        .unwrap();
    assert_eq!(at, Ok((1, 0)));
    assert_eq!(ps[0].q.free_tx_on(0), 7, "queue 0's buffer stays free");
    // A frame too short to route: written, not primed.
    let (_, at) = ps[0].q.prime_eth_with(10, |b| b.fill(0x02)).ok().unwrap();
    assert_eq!(at, Err(DriverError::InvalidFrame));
    assert_eq!(ps[0].q.free_tx_on(0), 7);
    let report = ps[0].q.flush(&f.port(1)).unwrap();
    assert_eq!(report.delivered, 2);
    let got = take(&mut ps[1].q);
    assert_eq!(
        got.iter().map(|g| g.1.clone()).collect::<Vec<_>>(),
        [uni, bc.clone()]
    );
    assert_eq!(take(&mut ps[2].q)[0].1, bc);
}

#[test]
fn a_refused_frame_is_sent_again_intact() {
    let f = fabric(TestPlatform::new(), FabricConfig::default());
    let mut a = part(&f, 1, l2(4), &[10]);
    let mut b = part(&f, 2, l2(2), &[10]);
    // Unknown MAC on the VLAN, no bridge port: unreachable.
    assert_eq!(
        a.q.send_eth(&f.port(1), &eth(mac(9), mac(1), Some(10), 0, 60)),
        Err(SendError::Refused(Reason::Unreachable))
    );
    // B has two input buffers: the third frame finds it full.
    let frames: Vec<_> = (0..3)
        .map(|i| eth(mac(2), mac(1), Some(10), i, 100 + usize::from(i)))
        .collect();
    a.q.send_eth(&f.port(1), &frames[0]).unwrap();
    a.q.send_eth(&f.port(1), &frames[1]).unwrap();
    assert_eq!(
        a.q.send_eth(&f.port(1), &frames[2]),
        Err(SendError::Refused(Reason::TargetFull))
    );
    let refused = a.q.last_primed_on(0);
    assert_eq!(take(&mut b.q).len(), 2);
    a.q.resend_on(&f.port(1), 0, refused).unwrap();
    let got = take(&mut b.q);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, frames[2]);
    assert!(matches!(got[0].0, FrameHeader::Layer2(h) if h.vlan_tci == Some(10)));
}

#[test]
fn bad_received_frames_are_counted_by_why() {
    let (f, mut ps) = lan();
    // Another layer's header over a delivered layer-2 frame.
    let frame = eth(mac(2), mac(1), Some(10), 0, 60);
    ps[0].q.send_eth(&f.port(1), &frame).unwrap();
    let (addr, len) = rx_element0(&ps[1]);
    assert_eq!(len as usize, 32 + frame.len());
    let l3 = L3Header {
        cast: iqdio::qdio::CastType::Unicast,
        length: frame.len() as u16,
        vlan: None,
        next_hop: v4(2, 0),
    };
    ps[1].ram.write(addr, &l3.encode());
    assert!(take(&mut ps[1].q).is_empty());
    // An Ethernet frame of 10 bytes, its header and element saying so.
    ps[0].q.send_eth(&f.port(1), &frame).unwrap();
    let at = ps[1].q.params().input_sbals[1];
    let mut e = [0u8; 16];
    ps[1].ram.read(at, &mut e);
    let addr = u64::from_be_bytes(e[8..16].try_into().unwrap());
    ps[1].ram.write(at + 4, &42u32.to_be_bytes());
    ps[1].ram.write(addr + 6, &10u16.to_be_bytes());
    assert!(take(&mut ps[1].q).is_empty());
    let c = ps[1].q.rx_counters();
    assert_eq!(
        (c.frames, c.bad_frames, c.wrong_layer, c.short_frames),
        (0, 2, 1, 1)
    );
    // A layer-2 header reaching a layer-3 set: the other layer.
    let mut l3p = vec![0u8; 60];
    l3p[0] = 0x45;
    let mut sender = part(&f, 7, config(Mfs::K16), &[]);
    sender.q.send(&f.port(7), v4(5, 0), &l3p).unwrap();
    let (addr, _) = rx_element0(&ps[4]);
    let mut h = [0u8; 32];
    h[0] = 0x02;
    h[3] = FLAG_UNICAST;
    h[6..8].copy_from_slice(&60u16.to_be_bytes());
    ps[4].ram.write(addr, &h);
    assert!(take(&mut ps[4].q).is_empty());
    let c = ps[4].q.rx_counters();
    assert_eq!((c.bad_frames, c.wrong_layer, c.short_frames), (1, 1, 0));
    // The buffers went back: later frames arrive.
    ps[0].q.send_eth(&f.port(1), &frame).unwrap();
    assert_eq!(take(&mut ps[1].q)[0].1, frame);
}
