//! The driver's output queues: a queue set with 1 to 4, unicast on queue 0, multicast,
//! broadcast and anycast on the multicast queue (the highest) with their cast types,
//! one SIGA naming every queue with work, and what the sender is told about a full
//! member.

mod common;

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use common::*;
use iqdio::driver::{Dest, DriverConfig, DriverError, Indicators, QueueDriver, SendError};
use iqdio::qdio::{CastType, SlsbState};
use iqdio::{FabricConfig, Mfs, Reason, Siga, SigaFunction, SigaStatus};

const G4: IpAddr = IpAddr::V4(Ipv4Addr::new(239, 1, 2, 3));
const G6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 0, 0x42));

fn queues(n: u8) -> DriverConfig {
    DriverConfig {
        output_queues: n,
        ..config(Mfs::K16)
    }
}

/// A SIGA that records every call it passes on.
struct Recording<'a, S: Siga> {
    inner: &'a S,
    calls: RefCell<Vec<(SigaFunction, u32)>>,
}

impl<'a, S: Siga> Recording<'a, S> {
    fn new(inner: &'a S) -> Self {
        Self {
            inner,
            calls: RefCell::new(Vec::new()),
        }
    }

    fn take(&self) -> Vec<(SigaFunction, u32)> {
        std::mem::take(&mut self.calls.borrow_mut())
    }
}

impl<S: Siga> Siga for Recording<'_, S> {
    fn siga(&self, subchannel: u16, function: SigaFunction, queue_mask: u32) -> SigaStatus {
        self.calls.borrow_mut().push((function, queue_mask));
        self.inner.siga(subchannel, function, queue_mask)
    }
}

/// Every frame waiting on `q`: (cast, next hop, payload).
fn take(q: &mut QueueDriver) -> Vec<(CastType, IpAddr, Vec<u8>)> {
    let mut out = Vec::new();
    while q
        .receive(|f| {
            let mut buf = vec![0u8; f.len()];
            f.copy_to(&mut buf);
            let h = f.header().expect("a layer-3 frame");
            out.push((h.cast, h.next_hop, buf));
        })
        .is_some()
    {}
    out
}

#[test]
fn output_queue_counts_are_checked_and_the_footprint_holds_them() {
    for (n, tx, ok) in [
        (0, 8, false),
        (1, 8, true),
        (2, 8, true),
        (4, 32, true),
        (4, 64, false),
        (5, 8, false),
    ] {
        let cfg = DriverConfig {
            tx_buffers: tx,
            ..queues(n)
        };
        // A region of exactly the footprint (plus the indicators' page).
        let ram = GuestRam::new(PAGE + cfg.footprint().max(PAGE));
        let mut region = ram.region();
        let ind = Indicators::new(&mut region).unwrap();
        let r = QueueDriver::new(&mut region, &ind, cfg);
        match (ok, r) {
            (true, Ok(d)) => {
                assert_eq!(d.output_queues(), n);
                assert_eq!(d.multicast_queue(), (n >= 2).then(|| n - 1));
                let p = d.params();
                assert_eq!(p.output_queues(), usize::from(n));
                // Every queue's SBALs and SLSB distinct, and inside the window.
                let mut starts = vec![p.output_sbals[0], p.output_slsb];
                for o in &p.more_outputs {
                    starts.extend([o.sbals[0], o.slsb]);
                }
                let mut dedup = starts.clone();
                dedup.sort();
                dedup.dedup();
                assert_eq!(dedup.len(), starts.len(), "{n} queues");
                let end = GUEST_BASE + ram.len() as u64;
                assert!(starts.iter().all(|&a| (GUEST_BASE..end).contains(&a)));
            }
            (false, Err(e)) => assert_eq!(e, DriverError::InvalidConfig, "{n} x {tx}"),
            (ok, r) => panic!("{n} queues x {tx}: expected ok={ok}, got {:?}", r.err()),
        }
    }
}

#[test]
fn destinations_follow_the_address_as_linux_does() {
    assert_eq!(Dest::of(G4), Dest::Group(G4));
    assert_eq!(Dest::of(G6), Dest::Group(G6));
    assert_eq!(
        Dest::of(IpAddr::V4(Ipv4Addr::BROADCAST)),
        Dest::Broadcast(Ipv4Addr::BROADCAST)
    );
    assert_eq!(Dest::of(v4(2, 0)), Dest::Unicast(v4(2, 0)));
    assert_eq!(Dest::from(v6(2, 0)), Dest::Unicast(v6(2, 0)));
    assert_eq!(Dest::Group(G4).cast(), CastType::Multicast);
    assert_eq!(
        Dest::Broadcast(Ipv4Addr::new(10, 0, 255, 255)).next_hop(),
        IpAddr::V4(Ipv4Addr::new(10, 0, 255, 255))
    );
    assert!(!Dest::Anycast(Ipv6Addr::LOCALHOST).is_unicast());
}

#[test]
fn one_output_queue_has_no_multicast_queue() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, queues(1));
    let port = fab.port(1);
    let q = &mut a.queues[0];
    assert_eq!(q.multicast_queue(), None);
    assert_eq!(q.prime_group(G4, b"x"), Err(DriverError::NoMulticastQueue));
    assert_eq!(q.prime_broadcast(b"x"), Err(DriverError::NoMulticastQueue));
    assert_eq!(
        q.send_group(&port, G4, b"x"),
        Err(SendError::Driver(DriverError::NoMulticastQueue))
    );
    // Nothing was primed by the refusals.
    assert_eq!(q.free_tx(), 8);
    assert_eq!(q.output_state(0), SlsbState::OUTPUT_NOT_INIT);
}

#[test]
fn destinations_not_of_their_kind_or_queue_are_refused_by_the_driver() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, queues(3));
    let q = &mut a.queues[0];
    assert_eq!(q.multicast_queue(), Some(2));
    assert_eq!(
        q.prime(Dest::Group(v4(2, 0)), b"x"),
        Err(DriverError::InvalidDest)
    );
    assert_eq!(
        q.prime(
            Dest::Anycast(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1)),
            b"x"
        ),
        Err(DriverError::InvalidDest)
    );
    // A group frame on a unicast queue (the fabric would answer 0x27), a queue that
    // does not exist.
    assert_eq!(
        q.prime_frames_on(1, G4, &[b"x"]),
        Err(DriverError::InvalidDest)
    );
    assert_eq!(
        q.prime_frames_on(3, v4(2, 0), &[b"x"]),
        Err(DriverError::InvalidDest)
    );
    assert_eq!(q.free_tx_on(3), 0);
    // Unicast may go on any queue the program picks.
    assert_eq!(q.prime_frames_on(1, v4(2, 0), &[b"x"]), Ok(0));
    assert_eq!(q.output_state_on(1, 0), SlsbState::OUTPUT_PRIMED);
    assert_eq!(q.free_tx_on(1), 7);
    assert_eq!(q.free_tx(), 8);
}

#[test]
fn group_broadcast_and_unicast_reach_exactly_their_receivers() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut p: Vec<Partition> = (1..=4)
        .map(|l| Partition::new(&fab, l, 1, queues(if l == 4 { 4 } else { 2 })))
        .collect();
    // G4: 1, 2, 3; G6: 2, 4; broadcast: 1, 3, 4.
    for l in [1, 2, 3] {
        fab.register_group(l, 0, G4).unwrap();
    }
    for l in [2, 4] {
        fab.register_group(l, 0, G6).unwrap();
    }
    for l in [1, 3, 4] {
        fab.set_broadcast(l, 0, true).unwrap();
    }
    let port1 = fab.port(1);
    let rec = Recording::new(&port1);
    let g4 = payload((1, 0), 1, 700);
    p[0].queues[0].send_group(&rec, G4, &g4).unwrap();
    let bc = payload((1, 0), 2, 3000);
    p[0].queues[0].send_broadcast(&rec, &bc).unwrap();
    let uni = payload((1, 0), 3, 64);
    p[0].queues[0].send(&rec, v6(2, 0), &uni).unwrap();
    // Each send one SIGA write naming its queue alone: the multicast queue (1) for the
    // group and the broadcast, queue 0 for unicast.
    assert_eq!(
        rec.take(),
        [
            (SigaFunction::Write, 1 << 30),
            (SigaFunction::Write, 1 << 30),
            (SigaFunction::Write, 1 << 31)
        ]
    );
    let bcast = IpAddr::V4(Ipv4Addr::BROADCAST);
    assert_eq!(take(&mut p[0].queues[0]), [], "the sender gets no copy");
    assert_eq!(
        take(&mut p[1].queues[0]),
        [
            (CastType::Multicast, G4, g4.clone()),
            (CastType::Unicast, v6(2, 0), uni.clone())
        ]
    );
    assert_eq!(
        take(&mut p[2].queues[0]),
        [
            (CastType::Multicast, G4, g4.clone()),
            (CastType::Broadcast, bcast, bc.clone())
        ]
    );
    assert_eq!(
        take(&mut p[3].queues[0]),
        [(CastType::Broadcast, bcast, bc.clone())]
    );
    // Partition 4 (four queues: its multicast queue is 3) sends to G6 over IPv6.
    let port4 = fab.port(4);
    let rec4 = Recording::new(&port4);
    let g6 = payload((4, 0), 1, 9000);
    p[3].queues[0].prime_group(G6, &g6).unwrap();
    let r = p[3].queues[0].flush(&rec4).unwrap();
    assert_eq!(rec4.take(), [(SigaFunction::WriteMultiple, 1 << 28)]);
    assert_eq!((r.delivered, r.pending, r.primed), (1, 0, [0, 0, 0, 1]));
    assert_eq!(take(&mut p[1].queues[0]), [(CastType::Multicast, G6, g6)]);
    assert_eq!(take(&mut p[3].queues[0]), []);
    let c1 = fab.counters_of(1, 0).unwrap();
    assert_eq!((c1.group_copies, c1.group_skipped), (2 + 2, 0));
    assert_eq!(c1.output_queues[0].frames, 1);
    assert_eq!(c1.output_queues[1].frames, 2);
    assert_eq!(fab.counters_of(4, 0).unwrap().output_queues[3].frames, 1);
}

#[test]
fn anycast_goes_on_the_multicast_queue_to_the_one_owner() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, queues(2));
    let mut b = Partition::new(&fab, 2, 1, queues(2));
    let IpAddr::V6(any) = v6(2, 0) else {
        unreachable!()
    };
    let data = payload((1, 0), 9, 100);
    a.queues[0]
        .send(&fab.port(1), Dest::Anycast(any), &data)
        .unwrap();
    assert_eq!(
        take(&mut b.queues[0]),
        [(CastType::Anycast, IpAddr::V6(any), data)]
    );
    assert_eq!(
        fab.counters_of(1, 0).unwrap().output_queues[1].frames,
        1,
        "sent on the multicast queue"
    );
}

#[test]
fn one_flush_names_every_queue_with_work_and_locates_refusals() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, queues(2));
    let mut b = Partition::new(&fab, 2, 1, queues(2));
    fab.register_group(2, 0, G4).unwrap();
    let q = &mut a.queues[0];
    q.prime(v4(2, 0), &payload((1, 0), 0, 16)).unwrap();
    q.prime(v4(2, 0), &payload((1, 0), 1, 20)).unwrap();
    let mq = q.multicast_queue().unwrap();
    q.prime_group(G4, &payload((1, 0), 2, 30)).unwrap();
    // Unicast to an address nobody registered, on the multicast queue: refused there.
    let nobody = IpAddr::V4(Ipv4Addr::new(10, 9, 9, 9));
    let n = q
        .prime_frames_on(mq, nobody, &[&payload((1, 0), 3, 40)])
        .unwrap();
    let port = fab.port(1);
    let rec = Recording::new(&port);
    let r = q.flush(&rec).unwrap();
    assert_eq!(
        rec.take(),
        [(SigaFunction::WriteMultiple, (1 << 31) | (1 << 30))]
    );
    assert_eq!(r.delivered, 3);
    assert_eq!(r.refused.as_slice(), &[(3, Reason::Unreachable)]);
    assert_eq!(r.primed, [2, 2, 0, 0]);
    assert_eq!(r.locate(3), Some((mq, 1)));
    assert_eq!(r.locate(1), Some((0, 1)));
    assert_eq!(r.locate(4), None);
    assert_eq!(q.output_state_on(mq, n), SlsbState::OUTPUT_ERROR);
    assert_eq!(q.reason_on(mq, n), Reason::Unreachable);
    // Once the address exists, the refused frame goes again from its own queue.
    fab.register_address(2, 0, nobody).unwrap();
    q.resend_on(&rec, mq, n).unwrap();
    assert_eq!(rec.take(), [(SigaFunction::Write, 1 << 30)]);
    let got = take(&mut b.queues[0]);
    let seqs: Vec<_> = got
        .iter()
        .map(|(_, _, p)| check_payload(p).unwrap().1)
        .collect();
    assert_eq!(seqs, [0, 1, 2, 3]);
    assert_eq!(got[3].0, CastType::Unicast);
    assert_eq!(got[3].1, nobody);
}

#[test]
fn a_full_member_is_skipped_and_counted_and_the_sender_is_not_refused() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, queues(2));
    let small = DriverConfig {
        rx_buffers: 2,
        ..queues(2)
    };
    let mut full = Partition::new(&fab, 2, 1, small);
    let mut roomy = Partition::new(&fab, 3, 1, queues(2));
    for l in [2, 3] {
        fab.register_group(l, 0, G4).unwrap();
    }
    let port = fab.port(1);
    for seq in 0..5 {
        // The member with two input buffers takes nothing out: from the third frame on
        // it is full. The sender's buffer completes all the same.
        a.queues[0]
            .send_group(&port, G4, &payload((1, 0), seq, 200))
            .unwrap();
    }
    let seqs = |q: &mut QueueDriver| -> Vec<u32> {
        take(q)
            .iter()
            .map(|(_, _, p)| check_payload(p).unwrap().1)
            .collect()
    };
    assert_eq!(seqs(&mut roomy.queues[0]), [0, 1, 2, 3, 4]);
    assert_eq!(seqs(&mut full.queues[0]), [0, 1]);
    let sender = fab.counters_of(1, 0).unwrap();
    assert_eq!((sender.group_copies, sender.group_skipped), (7, 3));
    assert_eq!(fab.counters_of(2, 0).unwrap().group_missed, 3);
    assert_eq!(fab.counters_of(3, 0).unwrap().group_missed, 0);
    // Unicast to the full member is still refused with 0x10, as before.
    for seq in 0..2 {
        a.queues[0]
            .send(&port, v4(2, 0), &payload((1, 0), 10 + seq, 10))
            .unwrap();
    }
    assert_eq!(
        a.queues[0].send(&port, v4(2, 0), b"more than it can hold"),
        Err(SendError::Refused(Reason::TargetFull))
    );
}
