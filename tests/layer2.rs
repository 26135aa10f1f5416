//! Layer-2 mode (issue 13): queue sets that send whole Ethernet frames behind Linux's
//! `qeth_hdr_layer2` header, routed by destination MAC and VLAN, beside layer-3 sets on
//! the same fabric. Driven with raw queues (tests/common/raw.rs).

mod common;

use common::raw::*;
use common::{TestFabric, TestPlatform, fabric, v4};
use iqdio::qdio::l2::{BROADCAST_MAC, L2Header, Mac, TPID_8021Q};
use iqdio::qdio::{L3Header, Reason};
use iqdio::{FabricConfig, RegistrationError};

const Q0: u32 = 1 << 31;
const Q1: u32 = 1 << 30;

fn mac(n: u8) -> Mac {
    [0x02, 0, 0, 0, 0, n]
}

/// An Ethernet frame from `src` to `dest`, tagged with `vlan` (if any), EtherType
/// 0x88B5 (local experimental), `len` payload bytes of `tag`.
fn eth(dest: Mac, src: Mac, vlan: Option<u16>, tag: u8, len: usize) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dest);
    f.extend_from_slice(&src);
    if let Some(v) = vlan {
        f.extend_from_slice(&TPID_8021Q.to_be_bytes());
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&0x88B5u16.to_be_bytes());
    f.extend(std::iter::repeat_n(tag, len));
    f
}

/// `frame` behind the layer-2 header Linux's `qeth_l2_fill_header` writes for it.
fn l2(frame: &[u8]) -> Vec<u8> {
    let mut v = L2Header::for_frame(frame).unwrap().encode().to_vec();
    v.extend_from_slice(frame);
    v
}

/// Seven partitions: 1-5 layer 2 (1, 2, 3 on VLAN 10; 4 on VLAN 20; 5 and 1 untagged),
/// 6 and 7 layer 3. Every receiver has 4 input buffers armed.
struct Lan {
    f: std::sync::Arc<TestFabric>,
    p: Vec<Raw>,
}

impl Lan {
    fn new() -> Self {
        let f = fabric(TestPlatform::manual(), FabricConfig::default());
        let mut p = Vec::new();
        for lpar in 1..=7u8 {
            let layer2 = lpar <= 5;
            let r = Raw::new(&f, lpar, Mode { cq: false, layer2 });
            for n in 0..4 {
                r.arm_input(n);
            }
            if layer2 {
                f.register_mac(lpar, 0, mac(lpar)).unwrap();
            } else {
                f.register_address(lpar, 0, v4(lpar, 0)).unwrap();
            }
            p.push(r);
        }
        for lpar in 1..=3 {
            f.join_vlan(lpar, 0, 10).unwrap();
        }
        f.join_vlan(4, 0, 20).unwrap();
        f.join_vlan(5, 0, 0).unwrap();
        f.join_vlan(1, 0, 0).unwrap();
        Self { f, p }
    }

    fn part(&self, lpar: u8) -> &Raw {
        &self.p[usize::from(lpar - 1)]
    }

    /// Sends `frame` from `lpar` on queue `q` (1 is the multicast queue): the reason
    /// if it was refused.
    fn send(&self, lpar: u8, q: usize, n: usize, frame: &[u8]) -> Option<u8> {
        let p = self.part(lpar);
        p.prime_frame(q, n, frame);
        let r = self
            .f
            .siga_write(lpar, 0, if q == 0 { Q0 } else { Q1 })
            .unwrap();
        assert_eq!(r.buffers, 1);
        let (slsb, sbals) = if q == 0 {
            (OUT_SLSB, OUT_SBALS)
        } else {
            (MC_SLSB, MC_SBALS)
        };
        match p.slsb(slsb, n) {
            0xA1 => None,
            0xAF => Some(p.element(sbals, n, 15).sflags),
            other => panic!("output state {other:#x}"),
        }
    }

    /// Which partitions hold a frame in input buffer 0.
    fn got(&self) -> Vec<u8> {
        (1..=7)
            .filter(|&l| self.part(l).received(0).is_some())
            .collect()
    }
}

#[test]
fn unicast_reaches_the_owner_of_the_mac_on_its_vlan_byte_for_byte() {
    let lan = Lan::new();
    let frame = l2(&eth(mac(2), mac(1), Some(10), 0xAB, 300));
    assert_eq!(lan.send(1, 0, 0, &frame), None);
    assert_eq!(lan.got(), [2]);
    assert_eq!(lan.part(2).received(0).unwrap(), frame);
    // Untagged, between the untagged LAN's members.
    let frame = l2(&eth(mac(5), mac(1), None, 0xCD, 60));
    assert_eq!(lan.send(1, 0, 1, &frame), None);
    assert_eq!(lan.part(5).received(0).unwrap(), frame);
}

#[test]
fn vlans_are_separate() {
    let lan = Lan::new();
    // 4 is on VLAN 20 only: not reachable on 10, nor untagged.
    let to4 = |vlan| l2(&eth(mac(4), mac(1), vlan, 1, 60));
    assert_eq!(
        lan.send(1, 0, 0, &to4(Some(10))),
        Some(Reason::Unreachable.code())
    );
    assert_eq!(
        lan.send(1, 0, 1, &to4(None)),
        Some(Reason::Unreachable.code())
    );
    // 1 is not a member of VLAN 20: it cannot send there at all.
    assert_eq!(
        lan.send(1, 0, 2, &to4(Some(20))),
        Some(Reason::NotOnVlan.code())
    );
    // 2 is on VLAN 10 only: untagged frames do not reach it.
    let to2 = l2(&eth(mac(2), mac(5), None, 1, 60));
    assert_eq!(lan.send(5, 0, 0, &to2), Some(Reason::Unreachable.code()));
    assert!(lan.got().is_empty());
}

#[test]
fn broadcast_reaches_every_member_of_the_vlan_but_the_sender() {
    let lan = Lan::new();
    let arp = l2(&eth(BROADCAST_MAC, mac(1), Some(10), 7, 28));
    // Only on the multicast queue.
    assert_eq!(lan.send(1, 0, 0, &arp), Some(Reason::CastType.code()));
    assert_eq!(lan.send(1, 1, 0, &arp), None);
    assert_eq!(lan.got(), [2, 3]);
    let c = lan.f.counters_of(1, 0).unwrap();
    assert_eq!((c.group_copies, c.group_skipped), (2, 0));
    // The untagged LAN's broadcast reaches 5, not the VLAN-10 members.
    let arp = l2(&eth(BROADCAST_MAC, mac(1), None, 7, 28));
    assert_eq!(lan.send(1, 1, 1, &arp), None);
    assert!(lan.part(5).received(0).is_some());
    assert!(lan.part(2).received(1).is_none());
}

#[test]
fn a_group_mac_reaches_the_vlan_members_that_registered_it() {
    let lan = Lan::new();
    let all_nodes: Mac = [0x33, 0x33, 0, 0, 0, 1];
    lan.f.register_group_mac(2, 0, all_nodes).unwrap();
    lan.f.register_group_mac(4, 0, all_nodes).unwrap();
    assert_eq!(
        lan.f.register_group_mac(2, 0, all_nodes),
        Err(RegistrationError::DuplicateMac)
    );
    let ns = l2(&eth(all_nodes, mac(1), Some(10), 9, 72));
    assert_eq!(lan.send(1, 1, 0, &ns), None);
    // 4 registered it but is on VLAN 20; 3 is on VLAN 10 but did not register it.
    assert_eq!(lan.got(), [2]);
    lan.f.deregister_group_mac(2, 0, all_nodes).unwrap();
    assert_eq!(
        lan.f.deregister_group_mac(2, 0, all_nodes),
        Err(RegistrationError::MacNotFound)
    );
}

#[test]
fn the_bridge_port_gets_what_no_member_claims() {
    let lan = Lan::new();
    lan.f.set_bridge_port(5, 0, true).unwrap();
    assert_eq!(
        lan.f.set_bridge_port(3, 0, true),
        Err(RegistrationError::DuplicateFound)
    );
    // An unknown MAC on VLAN 10: to the bridge port (not a member of VLAN 10).
    let out = l2(&eth(mac(0x77), mac(1), Some(10), 3, 60));
    assert_eq!(lan.send(1, 0, 0, &out), None);
    assert_eq!(lan.got(), [5]);
    // A known MAC still goes to its owner.
    let to2 = l2(&eth(mac(2), mac(1), Some(10), 4, 60));
    assert_eq!(lan.send(1, 0, 1, &to2), None);
    assert!(lan.part(2).received(0).is_some());
    assert!(lan.part(5).received(1).is_none());
    // Broadcast on VLAN 10 reaches the bridge port too.
    let arp = l2(&eth(BROADCAST_MAC, mac(2), Some(10), 5, 28));
    assert_eq!(lan.send(2, 1, 0, &arp), None);
    assert!(lan.part(5).received(1).is_some());
    // The bridge port may send on any VLAN.
    let from_outside = l2(&eth(mac(4), mac(0x77), Some(20), 6, 60));
    assert_eq!(lan.send(5, 0, 0, &from_outside), None);
    assert!(lan.part(4).received(0).is_some());
    lan.f.set_bridge_port(5, 0, false).unwrap();
    assert_eq!(lan.send(1, 0, 2, &out), Some(Reason::Unreachable.code()));
}

#[test]
fn frames_and_registrations_of_the_other_layer_are_refused() {
    let lan = Lan::new();
    // A layer-3 frame on a layer-2 set, and the other way round.
    let l3 = L3Header::unicast(v4(7, 0), 8).encode().to_vec();
    let mut l3 = l3;
    l3.extend([0u8; 8]);
    assert_eq!(lan.send(1, 0, 0, &l3), Some(Reason::WrongLayer.code()));
    let frame = l2(&eth(mac(2), mac(6), None, 1, 60));
    assert_eq!(lan.send(6, 0, 0, &frame), Some(Reason::WrongLayer.code()));
    // Layer-3 calls on layer-2 sets and the other way round.
    let f = &lan.f;
    assert_eq!(
        f.register_address(1, 0, v4(1, 9)),
        Err(RegistrationError::WrongLayer)
    );
    assert_eq!(
        f.register_mac(6, 0, mac(6)),
        Err(RegistrationError::WrongLayer)
    );
    assert_eq!(f.join_vlan(6, 0, 10), Err(RegistrationError::WrongLayer));
    assert_eq!(
        f.set_bridge_port(6, 0, true),
        Err(RegistrationError::WrongLayer)
    );
    // Layer 3 still works beside it.
    let mut to7 = L3Header::unicast(v4(7, 0), 40).encode().to_vec();
    to7.extend([0x55u8; 40]);
    assert_eq!(lan.send(6, 0, 1, &to7), None);
    assert_eq!(lan.part(7).received(0).unwrap(), to7);
}

#[test]
fn mac_and_vlan_registrations_say_what_is_wrong() {
    let lan = Lan::new();
    let f = &lan.f;
    assert_eq!(
        f.register_mac(3, 0, mac(2)),
        Err(RegistrationError::DuplicateMac)
    );
    assert_eq!(
        f.register_mac(3, 0, BROADCAST_MAC),
        Err(RegistrationError::InvalidAddress)
    );
    assert_eq!(
        f.register_mac(3, 0, [0x01, 0, 0x5E, 0, 0, 1]),
        Err(RegistrationError::InvalidAddress)
    );
    assert_eq!(
        f.register_mac(3, 0, [0; 6]),
        Err(RegistrationError::InvalidAddress)
    );
    assert_eq!(
        f.deregister_mac(3, 0, mac(2)),
        Err(RegistrationError::MacNotFound)
    );
    assert_eq!(f.join_vlan(2, 0, 10), Err(RegistrationError::DuplicateVlan));
    assert_eq!(
        f.join_vlan(2, 0, 4095),
        Err(RegistrationError::InvalidAddress)
    );
    assert_eq!(f.leave_vlan(2, 0, 20), Err(RegistrationError::NotFound));
    assert_eq!(
        f.register_mac(9, 0, mac(9)),
        Err(RegistrationError::SourceNotRegistered)
    );
    // Deregistered, the MAC is free again; leaving the VLAN cuts the set off.
    f.deregister_mac(2, 0, mac(2)).unwrap();
    f.register_mac(3, 0, mac(2)).unwrap();
    f.leave_vlan(3, 0, 10).unwrap();
    let to2 = l2(&eth(mac(2), mac(1), Some(10), 1, 60));
    assert_eq!(lan.send(1, 0, 0, &to2), Some(Reason::Unreachable.code()));
    // A queue set's deregistration removes its MACs and memberships.
    f.deregister_queue_set(1, 0).unwrap();
    f.register_mac(4, 0, mac(1)).unwrap();
}

#[test]
fn macs_and_memberships_count_toward_the_address_quota() {
    let cfg = FabricConfig {
        addresses_per_partition: 3,
        ..FabricConfig::default()
    };
    let f = fabric(TestPlatform::manual(), cfg);
    let _p = Raw::new(
        &f,
        1,
        Mode {
            cq: false,
            layer2: true,
        },
    );
    f.register_mac(1, 0, mac(1)).unwrap();
    f.join_vlan(1, 0, 10).unwrap();
    f.register_group_mac(1, 0, [0x33, 0x33, 0, 0, 0, 1])
        .unwrap();
    assert_eq!(f.join_vlan(1, 0, 11), Err(RegistrationError::AddressQuota));
    f.leave_vlan(1, 0, 10).unwrap();
    f.join_vlan(1, 0, 11).unwrap();
}

#[test]
fn malformed_layer2_frames_name_their_fault() {
    let lan = Lan::new();
    // The header's VLAN disagrees with the frame's tag.
    let frame = eth(mac(2), mac(1), Some(10), 1, 60);
    let mut h = L2Header::for_frame(&frame).unwrap();
    h.vlan_tci = Some(11);
    let mut bad = h.encode().to_vec();
    bad.extend_from_slice(&frame);
    assert_eq!(lan.send(1, 0, 0, &bad), Some(Reason::VlanMismatch.code()));
    // A unicast flag on a broadcast frame.
    let frame = eth(BROADCAST_MAC, mac(1), Some(10), 1, 60);
    let mut h = L2Header::for_frame(&frame).unwrap();
    h.flags = iqdio::qdio::l2::FLAG_UNICAST;
    let mut bad = h.encode().to_vec();
    bad.extend_from_slice(&frame);
    assert_eq!(lan.send(1, 1, 0, &bad), Some(Reason::CastType.code()));
    // Too short to carry two MACs and an EtherType.
    let short = [0x02u8, 0, 0, 0, 0, 2, 0x02, 0, 0, 0];
    let mut h = L2Header::for_frame(&eth(mac(2), mac(1), None, 0, 0)).unwrap();
    h.pkt_length = short.len() as u16;
    let mut bad = h.encode().to_vec();
    bad.extend_from_slice(&short);
    assert_eq!(lan.send(1, 0, 1, &bad), Some(Reason::EthernetFrame.code()));
    // Its length field disagrees with the element.
    let mut bad = l2(&eth(mac(2), mac(1), Some(10), 1, 60));
    bad[7] ^= 1;
    assert_eq!(lan.send(1, 0, 2, &bad), Some(Reason::HeaderLength.code()));
    assert!(lan.got().is_empty());
    for p in &lan.p {
        assert!(p.ram.guards_intact());
    }
}

#[test]
fn a_frame_rewritten_during_siga_reaches_no_one_outside_its_vlan() {
    // 1 sends to 2 on VLAN 10 while another thread keeps flipping the frame's
    // destination (2 or 3) and its tag's VLAN id (10 or 20). Whatever arrives must be
    // what the fabric routed by: at 2 or 3 a frame to itself on VLAN 10 (header and
    // tag agreeing), at 4 (VLAN 20 only, where 1 is no member) nothing.
    use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
    const ROUNDS: usize = 3000;
    let lan = Lan::new();
    let frame = l2(&eth(mac(2), mac(1), Some(10), 0x5A, 100));
    let p1 = lan.part(1);
    p1.prime_frame(0, 0, &frame);
    let data = p1.element(OUT_SBALS, 0, 0).addr;
    let host = |guest: u64| {
        let off = (guest - iqdio_base()) as usize;
        assert!(off < p1.ram.len());
        // SAFETY: inside the partition's window, which outlives the scope below.
        unsafe { p1.ram.host().as_ptr().add(off) }
    };
    // The destination MAC's last byte, and the tag's VLAN id low byte (32 + 15).
    // As addresses: the flipper turns them back into pointers.
    let (dest_byte, vid_byte) = (host(data + 32 + 5) as usize, host(data + 32 + 15) as usize);
    let stop = AtomicBool::new(false);
    let mut next = [0usize; 8];
    let mut delivered = 0u64;
    let mut refused = [0u64; 256];
    /// Stops the flipper however the main loop ends (a failed assertion too, or the
    /// scope would wait for it for ever).
    struct Stop<'a>(&'a AtomicBool);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    std::thread::scope(|s| {
        let _stop = Stop(&stop);
        s.spawn(|| {
            let mut r = 0x1234_5678u64;
            while !stop.load(Ordering::Relaxed) {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                // SAFETY: as `host` says; guest memory is only touched through atomics
                // here and by the fabric's copies.
                let (d, v) = unsafe {
                    (
                        AtomicU8::from_ptr(dest_byte as *mut u8),
                        AtomicU8::from_ptr(vid_byte as *mut u8),
                    )
                };
                if r & 1 == 0 {
                    d.store(if r & 2 == 0 { 2 } else { 3 }, Ordering::Relaxed);
                } else {
                    v.store(if r & 4 == 0 { 10 } else { 20 }, Ordering::Relaxed);
                }
            }
        });
        // At least ROUNDS sends, then on (yielding, so that a flipper kept off the CPU
        // by a loaded machine gets to run) until one has been delivered: a flipper
        // that happened to stop at VLAN 20 would refuse every send of the first
        // ROUNDS.
        let mut i = 0;
        while i < ROUNDS || (delivered == 0 && i < 100 * ROUNDS) {
            if i >= ROUNDS {
                std::thread::yield_now();
            }
            let n = i % 128;
            i += 1;
            let e = p1.element(OUT_SBALS, 0, 0);
            p1.set_element(OUT_SBALS, n, 0, &e);
            p1.set_slsb(OUT_SLSB, n, 0x62);
            let rep = lan.f.siga_write(1, 0, Q0).unwrap();
            delivered += u64::from(rep.delivered);
            if p1.slsb(OUT_SLSB, n) == 0xAF {
                refused[usize::from(p1.element(OUT_SBALS, n, 15).sflags)] += 1;
            }
            for lpar in [2u8, 3, 4] {
                let p = lan.part(lpar);
                let k = next[usize::from(lpar)];
                if let Some(got) = p.received(k % 128) {
                    assert_ne!(lpar, 4, "a frame crossed into VLAN 20");
                    let h = L2Header::decode(got[..32].try_into().unwrap()).unwrap();
                    assert_eq!(got[32 + 5], lpar, "to its own MAC");
                    assert_eq!(got[32 + 15], 10, "tagged VLAN 10");
                    assert_eq!(h.vlan_tci, Some(10), "header agrees with the tag");
                    assert!(got[50..].iter().all(|&b| b == 0x5A));
                    p.arm_input((k + 4) % 128);
                    next[usize::from(lpar)] = k + 1;
                }
            }
        }
    });
    let got: usize = next.iter().sum();
    assert_eq!(
        got as u64, delivered,
        "every delivery found, none elsewhere"
    );
    // Only the flipper's own doing: a VLAN the sender is not on, a header that no
    // longer agrees with the tag.
    let other: u64 = refused.iter().sum::<u64>()
        - refused[usize::from(Reason::NotOnVlan.code())]
        - refused[usize::from(Reason::VlanMismatch.code())];
    assert_eq!(other, 0, "other refusals: {refused:?}");
    assert!(delivered > 0, "none delivered in {} sends", 100 * ROUNDS);
}

fn iqdio_base() -> u64 {
    common::GUEST_BASE
}

#[test]
fn a_full_target_table_refuses_more_macs_and_vlans_with_0xe006() {
    // The test fabric's target table has 4096 places; with the quota out of the way,
    // MACs fill it (addresses, groups, MACs and VLANs share it), then 0xE006.
    let cfg = FabricConfig {
        addresses_per_partition: u16::MAX,
        ..FabricConfig::default()
    };
    let f = fabric(TestPlatform::manual(), cfg);
    let _p = Raw::new(
        &f,
        1,
        Mode {
            cq: false,
            layer2: true,
        },
    );
    let mut n = 0u32;
    let full = loop {
        let m = [0x02, 0, 0, (n >> 16) as u8, (n >> 8) as u8, n as u8];
        match f.register_mac(1, 0, m) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
        assert!(n <= 4096, "more MACs than the table has places");
    };
    assert_eq!(full, RegistrationError::TableFull);
    assert_eq!(n, 4096);
    assert_eq!(f.join_vlan(1, 0, 10), Err(RegistrationError::TableFull));
    // One out, one in.
    f.deregister_mac(1, 0, [0x02, 0, 0, 0, 0, 0]).unwrap();
    f.join_vlan(1, 0, 10).unwrap();
}
