//! The fabric driven the way Linux 6.12's qeth drives a HiperSockets device (issue 11
//! item 5): every partition runs the test-side model of qeth's IQD logic in
//! `tests/qeth/mod.rs` (queue choice, header fill, bulking, the SIGA function, its
//! reaction to each outcome, receive with ACK, refill and stop-polling), from threads:
//! a sender per queue kind and a receiver woken by the fabric's interrupts, with the
//! embedder's periodic `expire_delays` timer.
//!
//! qeth re-sends nothing and recovers the card on cc1, so each test asserts exact
//! counts: every frame sent arrives once and intact where it should and nowhere else,
//! no `tx_errors` unless the test provokes one, no recovery unless the test provokes one.

mod common;
mod qeth;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use iqdio::{FabricConfig, SigaError, SigaFunction};
use qeth::*;

/// A multicast group every partition joins.
const G1: IpAddr = IpAddr::V4(Ipv4Addr::new(224, 1, 1, 1));
/// An IPv6 multicast group some partitions join.
const G2: IpAddr = IpAddr::V6(Ipv6Addr::new(0xff05, 0, 0, 0, 0, 0, 0, 2));

fn ip4(lpar: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, lpar, 1))
}

fn ip6(lpar: u8) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, u16::from(lpar), 1))
}

/// A change to a card's settings before it is made.
type Tweak = fn(CardConfig) -> CardConfig;

/// What a receiver got: (source LPAR, kind, sequence) of each frame, with its cast.
type Got = Vec<((u8, u16), u32, u8)>;

/// Partitions running the qeth model on one fabric, each with a receiver thread, and
/// the embedder's 1 ms timer.
struct Net {
    platform: TestPlatform,
    fab: Arc<TestFabric>,
    cards: Vec<Arc<Card>>,
    got: Vec<Arc<Mutex<Got>>>,
    paused: Vec<Arc<AtomicBool>>,
    /// Microseconds each receiver spends on a frame (a slow receiver).
    slow: Vec<Arc<AtomicU64>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Net {
    /// Cards for LPARs 1, 2, ... with the given output queue counts; each registers its
    /// IPv4 and IPv6 address.
    fn new(queues: &[usize]) -> Self {
        let same: Tweak = |c| c;
        Self::with(queues.iter().map(|&q| (q, same)).collect())
    }

    fn with(cfgs: Vec<(usize, Tweak)>) -> Self {
        let platform = TestPlatform::new();
        let fab = fabric(platform.clone(), FabricConfig::DEFAULT);
        let stop = Arc::new(AtomicBool::new(false));
        let mut net = Self {
            platform,
            fab,
            cards: Vec::new(),
            got: Vec::new(),
            paused: Vec::new(),
            slow: Vec::new(),
            stop,
            threads: Vec::new(),
        };
        for (i, (queues, f)) in cfgs.into_iter().enumerate() {
            let lpar = i as u8 + 1;
            let card = Arc::new(Card::new(&net.fab, f(CardConfig::new(lpar, queues))));
            card.register_ip(ip4(lpar));
            card.register_ip(ip6(lpar));
            net.cards.push(card);
            net.got.push(Arc::new(Mutex::new(Vec::new())));
            net.paused.push(Arc::new(AtomicBool::new(false)));
            net.slow.push(Arc::new(AtomicU64::new(0)));
        }
        for i in 0..net.cards.len() {
            net.spawn_receiver(i);
        }
        let (fab, stop) = (net.fab.clone(), net.stop.clone());
        net.threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                fab.expire_delays();
                std::thread::sleep(Duration::from_millis(1));
            }
        }));
        net
    }

    /// The receiver of card `i`: sleeps until the fabric interrupts its partition, then
    /// runs the thin-interrupt handler and NAPI. Every frame must be one a test made
    /// with `payload` (checked byte for byte).
    fn spawn_receiver(&mut self, i: usize) {
        let card = self.cards[i].clone();
        let got = self.got[i].clone();
        let paused = self.paused[i].clone();
        let slow = self.slow[i].clone();
        let (platform, stop) = (self.platform.clone(), self.stop.clone());
        self.threads.push(std::thread::spawn(move || {
            let lpar = card.cfg.lpar;
            let mut seen = 0;
            while !stop.load(Ordering::Relaxed) {
                let now = platform.wait(lpar, seen, Duration::from_millis(5));
                if paused.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
                if now <= seen {
                    continue;
                }
                seen = now;
                card.service(&mut |f| {
                    let body = Packet::payload(&f.packet);
                    let (src, seq) = check_payload(body).unwrap_or_else(|| {
                        panic!("LPAR {lpar}: a frame that is not intact: {f:?}")
                    });
                    got.lock().unwrap().push((src, seq, f.cast));
                    let us = slow.load(Ordering::Relaxed);
                    if us > 0 {
                        std::thread::sleep(Duration::from_micros(us));
                    }
                });
            }
        }));
    }

    fn card(&self, lpar: u8) -> &Arc<Card> {
        &self.cards[usize::from(lpar) - 1]
    }

    fn got(&self, lpar: u8) -> Got {
        self.got[usize::from(lpar) - 1].lock().unwrap().clone()
    }

    fn count(&self, lpar: u8) -> usize {
        self.got[usize::from(lpar) - 1].lock().unwrap().len()
    }

    /// Waits until every card has received at least `want[i]` frames (10 s at most).
    fn wait_for(&self, want: &[usize]) {
        let t = Instant::now();
        loop {
            let have: Vec<usize> = (1..=self.cards.len() as u8)
                .map(|l| self.count(l))
                .collect();
            if have.iter().zip(want).all(|(h, w)| h >= w) {
                return;
            }
            if t.elapsed() > Duration::from_secs(10) {
                for c in &self.cards {
                    let l = c.cfg.lpar;
                    eprintln!(
                        "LPAR {l}: tx {:?}\n  rx {:?}\n  fabric {:?}\n  recoveries {}",
                        (0..c.cfg.out_queues)
                            .map(|q| {
                                let s = c.tx_stats(q);
                                (s.tx_packets, s.tx_errors, s.bufs, s.busy, s.target_full)
                            })
                            .collect::<Vec<_>>(),
                        c.rx_stats(),
                        self.fab.counters_of(l, 0),
                        c.recoveries()
                    );
                }
                panic!("frames never arrived: have {have:?}, want {want:?}");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits a moment and checks that no card received more than `want[i]` frames.
    fn settle(&self, want: &[usize]) {
        self.wait_for(want);
        std::thread::sleep(Duration::from_millis(20));
        let have: Vec<usize> = (1..=self.cards.len() as u8)
            .map(|l| self.count(l))
            .collect();
        assert_eq!(have, want, "frames received");
    }

    /// No card saw a transmit error or dropped a packet, none recovered, and the
    /// fabric's per-queue counters agree with each card's (buffers, frames, bytes).
    fn assert_clean(&self) {
        for c in &self.cards {
            let lpar = c.cfg.lpar;
            let t = c.tx_total();
            assert_eq!(
                (t.tx_errors, t.tx_dropped, c.recoveries()),
                (0, 0, 0),
                "LPAR {lpar}: errors, drops, recoveries"
            );
            let fc = self.fab.counters_of(lpar, 0).unwrap();
            assert_eq!(fc.errors_total(), 0, "LPAR {lpar}: fabric errors");
            for q in 0..c.cfg.out_queues {
                let s = c.tx_stats(q);
                let f = fc.output_queues[q];
                assert_eq!(
                    (f.sbals, f.frames, f.bytes),
                    (s.bufs, s.tx_packets, s.tx_bytes),
                    "LPAR {lpar} queue {q}: fabric counters against the driver's"
                );
                if c.is_mcast_queue(q) {
                    assert_eq!(s.siga_writem, 0, "WRITEM on the multicast queue");
                }
            }
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let r = t.join();
            if !std::thread::panicking() {
                r.expect("a receiver thread failed");
            }
        }
    }
}

/// The kinds of traffic a payload's source field carries beside the LPAR.
const UNICAST: u16 = 0;
const TO_G1: u16 = 1;
const TO_G2: u16 = 2;
const BCAST: u16 = 3;
const BCAST_SUBNET: u16 = 4;
const ANYCAST: u16 = 5;

fn packet(src: IpAddr, dst: IpAddr, from: (u8, u16), seq: u32, len: usize) -> Packet {
    Packet::ip(src, dst, &payload(from, seq, len))
}

/// Frame sizes from tiny to several pages (the MTU of 16 KiB frames is 8 KiB).
fn size(rng: &mut Rng) -> usize {
    match rng.below(4) {
        0 => 16 + rng.below(100) as usize,
        1 => 200 + rng.below(1400) as usize,
        2 => 3000 + rng.below(3000) as usize,
        _ => 8192 - 40 - rng.below(64) as usize,
    }
}

/// Unicast and multicast among four partitions with 2, 3, 4 and 4 output queues, from
/// two sender threads per partition (unicast, multicast: they contend for the queue
/// set, so some SIGAs answer busy and are retried as qdio does) over six rounds. Each
/// round stays within the input buffers a receiver has armed (at least 64 of 127:
/// qeth refills in halves of its pool), so nothing may be refused. Every partition
/// gets every unicast frame sent to it and every multicast frame of its groups sent by
/// the others, once, intact; none of its own; the multicast queue only ever sees
/// SIGA WRITE; unicast bursts to one next hop are bulked and sent with WRITEM.
#[test]
fn unicast_and_multicast_among_four_partitions() {
    const ROUNDS: u32 = 6;
    const UNI: u32 = 8; // per destination and round
    const MULTI: u32 = 4; // per group and round
    let net = Net::new(&[2, 3, 4, 4]);
    for c in &net.cards {
        c.join(G1);
    }
    let g2_members = [2u8, 4];
    for &l in &g2_members {
        net.card(l).join(G2);
    }
    let n = net.cards.len();
    let barrier = Arc::new(Barrier::new(2 * n + 1));
    let mut senders = Vec::new();
    let mut mcast = Vec::new();
    for i in 0..n {
        let lpar = i as u8 + 1;
        // Unicast: bursts of four to each other partition, IPv4 and IPv6 by turns.
        let (card, b) = (net.cards[i].clone(), barrier.clone());
        senders.push(std::thread::spawn(move || {
            let mut rng = Rng(0x5EED + u64::from(lpar));
            for round in 0..ROUNDS {
                for to in (1..=n as u8).filter(|&t| t != lpar) {
                    // One flow per burst: `xmit_more` speaks of one TX queue, the one
                    // the flow hashes to.
                    let mut flow = 0;
                    for k in 0..UNI {
                        if k % 4 == 0 {
                            flow = rng.below(8) as usize;
                        }
                        let seq = (round * UNI + k) * 16 + u32::from(to);
                        let (src, dst) = if k % 8 < 4 {
                            (ip4(lpar), ip4(to))
                        } else {
                            (ip6(lpar), ip6(to))
                        };
                        let p = packet(src, dst, (lpar, UNICAST), seq, size(&mut rng)).flow(flow);
                        card.xmit(&p, k % 4 != 3).expect("xmit");
                    }
                }
                b.wait();
                b.wait();
            }
        }));
        // Multicast: G1 (IPv4), then G2 (IPv6), in pairs (two frames to one group may
        // share a buffer). Returns the buffers each group took, for the copy count.
        let (card, b) = (net.cards[i].clone(), barrier.clone());
        mcast.push(std::thread::spawn(move || {
            let mut rng = Rng(0xC0FFEE + u64::from(lpar));
            let mq = card.cfg.out_queues - 1;
            let mut bufs = (0, 0);
            for round in 0..ROUNDS {
                for (group, kind, src, took) in [
                    (G1, TO_G1, ip4(lpar), &mut bufs.0),
                    (G2, TO_G2, ip6(lpar), &mut bufs.1),
                ] {
                    let before = card.tx_stats(mq).bufs;
                    for k in 0..MULTI {
                        let seq = round * MULTI + k;
                        let p = packet(src, group, (lpar, kind), seq, size(&mut rng));
                        assert_eq!(card.xmit(&p, k % 2 == 0), Ok(mq));
                    }
                    *took += card.tx_stats(mq).bufs - before;
                }
                b.wait();
                b.wait();
            }
            bufs
        }));
    }
    let mut want = vec![0usize; n];
    for _ in 0..ROUNDS {
        barrier.wait();
        for (i, w) in want.iter_mut().enumerate() {
            let lpar = i as u8 + 1;
            *w += (n - 1) * UNI as usize + (n - 1) * MULTI as usize;
            if g2_members.contains(&lpar) {
                *w += (n - 1) * MULTI as usize;
            }
        }
        net.wait_for(&want);
        barrier.wait();
    }
    for s in senders {
        s.join().unwrap();
    }
    let group_bufs: Vec<(u64, u64)> = mcast.into_iter().map(|t| t.join().unwrap()).collect();
    net.settle(&want);

    for i in 0..n {
        let lpar = i as u8 + 1;
        let mut expect = BTreeSet::new();
        for from in (1..=n as u8).filter(|&f| f != lpar) {
            for round in 0..ROUNDS {
                for k in 0..UNI {
                    expect.insert((
                        (from, UNICAST),
                        (round * UNI + k) * 16 + u32::from(lpar),
                        CAST_UNICAST,
                    ));
                }
                for k in 0..MULTI {
                    expect.insert(((from, TO_G1), round * MULTI + k, CAST_MULTICAST));
                    if g2_members.contains(&lpar) {
                        expect.insert(((from, TO_G2), round * MULTI + k, CAST_MULTICAST));
                    }
                }
            }
        }
        let got = net.got(lpar);
        let set: BTreeSet<_> = got.iter().copied().collect();
        assert_eq!(set.len(), got.len(), "LPAR {lpar}: a frame arrived twice");
        assert_eq!(set, expect, "LPAR {lpar}: frames received");
        let rx = net.card(lpar).rx_stats();
        let multi = got.iter().filter(|g| g.2 == CAST_MULTICAST).count() as u64;
        assert_eq!(rx.rx_multicast, multi, "LPAR {lpar}: rx_multicast");
        let fc = net.fab.counters_of(lpar, 0).unwrap();
        assert_eq!(fc.frames_received, got.len() as u64);
        assert_eq!((fc.group_missed, fc.group_skipped), (0, 0));
    }
    net.assert_clean();
    // Bulking happened: some unicast buffers carried several frames, some SIGAs several
    // buffers (WRITEM), none on the multicast queues (checked in assert_clean).
    let writem: u64 = net.cards.iter().map(|c| c.tx_total().siga_writem).sum();
    let packed: u64 = net.cards.iter().map(|c| c.tx_total().bufs_pack).sum();
    assert!(
        writem > 0 && packed > 0,
        "no WRITEM ({writem}) or packed buffer ({packed})"
    );
    // Busy answers the fabric counted are the ones the drivers saw and retried.
    for c in &net.cards {
        let busy = net.fab.counters_of(c.cfg.lpar, 0).unwrap().busy;
        assert_eq!(busy, c.tx_total().busy, "LPAR {}: busy answers", c.cfg.lpar);
    }
    // Every multicast copy is accounted for at the senders: one per buffer and member
    // but the sender.
    for (i, (g1, g2)) in group_bufs.iter().enumerate() {
        let lpar = i as u8 + 1;
        let g2_others = g2_members.iter().filter(|&&m| m != lpar).count() as u64;
        let fc = net.fab.counters_of(lpar, 0).unwrap();
        assert_eq!(
            fc.group_copies,
            g1 * (n as u64 - 1) + g2 * g2_others,
            "LPAR {lpar}"
        );
    }
}

/// Broadcast reaches exactly the queue sets that switched it on, the sender's own
/// excepted, whether to the limited broadcast address or a subnet's (a route of type
/// broadcast); switching it off and on again takes effect for the next frame.
#[test]
fn broadcast_reaches_the_sets_that_switched_it_on() {
    let net = Net::new(&[2, 2, 3, 4]);
    let subnet = IpAddr::V4(Ipv4Addr::new(10, 0, 255, 255));
    let mut want = vec![0usize; 4];
    let mut on = [true, true, true, false];
    for (i, c) in net.cards.iter().enumerate() {
        if on[i] {
            c.set_broadcast(true);
        }
    }
    let mut seq = 0;
    for phase in 0..2 {
        if phase == 1 {
            net.card(2).set_broadcast(false);
            net.card(4).set_broadcast(true);
            on = [true, false, true, true];
        }
        for from in 1..=4u8 {
            let c = net.card(from);
            for k in 0..5 {
                let p = packet(
                    ip4(from),
                    IpAddr::V4(Ipv4Addr::BROADCAST),
                    (from, BCAST),
                    seq,
                    300 + k * 700,
                );
                assert_eq!(c.xmit(&p, false), Ok(c.cfg.out_queues - 1));
                let p = packet(ip4(from), subnet, (from, BCAST_SUBNET), seq, 100)
                    .route(Route::Broadcast);
                c.xmit(&p, false).unwrap();
                seq += 1;
            }
            for (i, w) in want.iter_mut().enumerate() {
                if on[i] && i + 1 != usize::from(from) {
                    *w += 10;
                }
            }
            net.wait_for(&want);
        }
    }
    net.settle(&want);
    for lpar in 1..=4u8 {
        let got = net.got(lpar);
        assert!(got.iter().all(|g| g.2 == CAST_BROADCAST && g.0.0 != lpar));
        assert_eq!(net.card(lpar).rx_stats().rx_multicast, got.len() as u64);
    }
    // LPAR 2 heard only the first phase, LPAR 4 only the second.
    assert!(net.got(2).iter().all(|g| g.1 < 20));
    assert!(net.got(4).iter().all(|g| g.1 >= 20));
    net.assert_clean();
}

/// A member that does not empty its input queue: once its 127 armed buffers are full,
/// the others still get every frame, the sender's buffers complete 0xA1 (no
/// `tx_errors`, nothing to re-send), and the member counts each copy it missed; the
/// sender counts them as skipped. When it polls again it finds exactly the frames it
/// had room for, intact, and takes new ones once it has refilled.
#[test]
fn a_full_member_is_skipped_and_counted() {
    let net = Net::new(&[2, 2, 2, 3]);
    for c in &net.cards {
        c.join(G1);
    }
    net.paused[3].store(true, Ordering::SeqCst);
    let sender = net.card(1);
    const N: u32 = 200;
    for seq in 0..N {
        let p = packet(ip4(1), G1, (1, TO_G1), seq, 64 + (seq as usize * 37) % 3000);
        sender.xmit(&p, false).unwrap();
        if seq % 32 == 31 {
            net.wait_for(&[0, seq as usize + 1, seq as usize + 1, 0]);
        }
    }
    net.settle(&[0, N as usize, N as usize, 0]);
    let armed = 127u64;
    let missed = u64::from(N) - armed;
    let t = sender.tx_total();
    assert_eq!((t.tx_packets, t.tx_errors), (u64::from(N), 0));
    let fs = net.fab.counters_of(1, 0).unwrap();
    assert_eq!(fs.group_copies, 2 * u64::from(N) + armed);
    assert_eq!(fs.group_skipped, missed);
    let f4 = net.fab.counters_of(4, 0).unwrap();
    assert_eq!((f4.group_missed, f4.frames_received), (missed, armed));
    assert_eq!(net.card(4).rx_buffers_with_device(), 127);

    // LPAR 4 polls again: the interrupt it slept through is still counted, and the
    // fallback re-raises it while its summary stays pending.
    net.paused[3].store(false, Ordering::SeqCst);
    net.settle(&[0, N as usize, N as usize, armed as usize]);
    let got: Vec<u32> = net.got(4).iter().map(|g| g.1).collect();
    assert_eq!(got, (0..armed as u32).collect::<Vec<_>>());
    for seq in N..N + 10 {
        sender
            .xmit(&packet(ip4(1), G1, (1, TO_G1), seq, 500), false)
            .unwrap();
    }
    net.settle(&[0, N as usize + 10, N as usize + 10, armed as usize + 10]);
    assert_eq!(net.fab.counters_of(4, 0).unwrap().group_missed, missed);
    net.assert_clean();
}

/// An IPv6 anycast route: qeth sends it on the multicast queue with cast 7; the fabric
/// delivers it to the one queue set that registered the address, as unicast. The same
/// address by a unicast route goes on a unicast queue with cast 6.
#[test]
fn anycast_goes_on_the_multicast_queue_to_the_one_owner() {
    let net = Net::new(&[3, 2, 2]);
    let any = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0xa, 0, 0, 0, 1));
    net.card(2).register_ip(any);
    let c = net.card(1);
    for seq in 0..6 {
        let p =
            packet(ip6(1), any, (1, ANYCAST), seq, 100 + seq as usize * 1000).route(Route::Anycast);
        assert_eq!(c.xmit(&p, seq % 3 != 2), Ok(2), "the multicast queue");
    }
    for seq in 0..4 {
        // Three queues: TX queue 1 is QDIO queue 1 (TX queue 2 would be QDIO queue 0).
        let p = packet(ip6(1), any, (1, UNICAST), seq, 200);
        assert_eq!(c.xmit(&p, false), Ok(1));
    }
    net.settle(&[0, 10, 0]);
    let got = net.got(2);
    assert_eq!(got.iter().filter(|g| g.2 == CAST_ANYCAST).count(), 6);
    assert_eq!(got.iter().filter(|g| g.2 == CAST_UNICAST).count(), 4);
    let fc = net.fab.counters_of(1, 0).unwrap();
    assert_eq!(fc.output_queues[2].frames, 6);
    assert_eq!(fc.output_queues[1].frames, 4);
    assert_eq!(fc.group_copies, 0, "anycast is no group traffic");
    net.assert_clean();
}

/// A header with the multicast cast on a unicast queue, which qeth never writes: the
/// fabric refuses the buffer with sbalf15 0x27, qeth counts the frame in `tx_errors`,
/// traces it ("lnkfail": outside 15-31), re-sends nothing and does not recover;
/// nothing is delivered, and the next proper multicast frame goes through.
#[test]
fn a_multicast_cast_on_a_unicast_queue_is_refused_0x27() {
    let net = Net::new(&[2, 2, 2]);
    net.card(2).join(G1);
    let c = net.card(1);
    let p = packet(ip4(1), G1, (1, TO_G1), 0, 300);
    c.xmit_header(0, fill_header(IQD_MCAST_TXQ, &p), &p, false)
        .unwrap();
    // Completed at once (the TX completion qeth fakes after its SIGA): the state
    // stays, the buffer's elements and sbalf15 are scrubbed.
    assert_eq!(c.out_state(0, 0), 0xAF);
    assert_eq!(c.out_sbalf15(0, 0), 0);
    let t = c.tx_stats(0);
    assert_eq!(
        (t.tx_errors, t.tx_packets, t.sbalf15[0x27], t.lnkfail),
        (1, 0, 1, 1)
    );
    assert_eq!(t.siga_write, 1, "one SIGA, no re-send");
    assert_eq!(c.recoveries(), 0);
    // The buffer went back to the driver scrubbed: the next frame reuses the queue.
    let p = packet(ip4(1), G1, (1, TO_G1), 1, 300);
    assert_eq!(c.xmit(&p, false), Ok(1));
    let p = packet(ip4(1), ip4(3), (1, UNICAST), 2, 300);
    assert_eq!(c.xmit(&p, false), Ok(0));
    net.settle(&[0, 1, 1]);
    assert_eq!(net.got(2)[0].1, 1);
    let fc = net.fab.counters_of(1, 0).unwrap();
    assert_eq!(fc.errors_for(iqdio::Reason::CastType), 1);
}

/// A SIGA whose mask names an output queue the queue set did not establish is cc1:
/// a driver that believes in three queues where the device was established with two
/// gets `-EIO` on its multicast queue and recovers the card (its buffer is untouched,
/// 0x62); after the recovery its unicast traffic flows. The mask checks themselves:
/// no bit, a bit beyond the queues, a mix of good and bad.
#[test]
fn a_mask_naming_a_queue_not_established_is_cc1() {
    fn mismatch(c: CardConfig) -> CardConfig {
        CardConfig {
            established_queues: Some(2),
            ..c
        }
    }
    let same: Tweak = |c| c;
    let net = Net::with(vec![(3, mismatch), (2, same), (2, same)]);
    net.card(2).join(G1);
    for mask in [0, 1 << 29, 1 << 27, (1 << 31) | (1 << 29), 1] {
        for f in [SigaFunction::Write, SigaFunction::WriteMultiple] {
            assert_eq!(
                net.fab.siga_function(1, 0, f, mask),
                Err(SigaError::InvalidQueueMask),
                "mask {mask:#x}"
            );
        }
    }
    let c = net.card(1);
    let p = packet(ip4(1), G1, (1, TO_G1), 0, 100);
    assert_eq!(c.xmit(&p, false), Ok(2));
    assert_eq!(c.recoveries(), 1, "cc1 is -EIO: a recovery");
    assert_eq!(
        c.out_state(2, 0),
        0x62,
        "the fabric did not touch the buffer"
    );
    c.recover();
    assert_eq!(c.tx_stats(2).tx_errors, 1, "dropped by the recovery");
    let p = packet(ip4(1), ip4(3), (1, UNICAST), 1, 100);
    assert_eq!(c.xmit(&p, false), Ok(1));
    net.settle(&[0, 0, 1]);
    assert_eq!(c.recoveries(), 1);
}

/// Write-multiple (and write) over two queues in one SIGA, which qeth never issues but
/// the fabric offers: primed buffers of queues 0 and 1 go in one call, queue by queue;
/// SIGA write takes one buffer of each queue named. Per-queue counters follow.
#[test]
fn write_multiple_across_two_queues_in_one_siga() {
    let net = Net::new(&[3, 2]);
    let c = net.card(1);
    let mut seq = 0;
    let mut prime = |queue: usize, txq: usize, n: usize| {
        for _ in 0..n {
            let p = packet(ip4(1), ip4(2), (1, UNICAST), seq, 500 + seq as usize * 300);
            c.prime_only(queue, txq, &p);
            seq += 1;
        }
    };
    prime(0, 2, 2);
    prime(1, 1, 3);
    let mask = (1 << 31) | (1 << 30);
    let r = net
        .fab
        .siga_function(1, 0, SigaFunction::WriteMultiple, mask)
        .unwrap();
    assert_eq!((r.buffers, r.delivered, r.frames), (5, 5, 5));
    prime(0, 2, 2);
    prime(1, 1, 2);
    let r = net
        .fab
        .siga_function(1, 0, SigaFunction::Write, mask)
        .unwrap();
    assert_eq!((r.buffers, r.delivered), (2, 2), "one buffer per queue");
    assert_eq!((c.out_state(0, 3), c.out_state(1, 4)), (0x62, 0x62));
    let r = net
        .fab
        .siga_function(1, 0, SigaFunction::Write, mask)
        .unwrap();
    assert_eq!(r.buffers, 2);
    let r = net
        .fab
        .siga_function(1, 0, SigaFunction::Write, mask)
        .unwrap();
    assert_eq!(r.buffers, 0, "nothing left primed");
    c.reap(0);
    c.reap(1);
    net.settle(&[0, 9]);
    let fc = net.fab.counters_of(1, 0).unwrap();
    assert_eq!(
        (fc.output_queues[0].sbals, fc.output_queues[1].sbals),
        (4, 5)
    );
    assert_eq!(fc.output_queues[2].sbals, 0);
    assert_eq!((c.tx_stats(0).tx_packets, c.tx_stats(1).tx_packets), (4, 5));
    let mut seqs: Vec<u32> = net.got(2).iter().map(|g| g.1).collect();
    seqs.sort();
    assert_eq!(seqs, (0..9).collect::<Vec<_>>());
    net.assert_clean();
}

/// A card with four queues: unicast flows spread over TX queues 1-3 (QDIO queues 1, 2
/// and 0), multicast on TX queue 0 (QDIO queue 3); bursts to one next hop share
/// buffers, a change of next hop or VLAN starts a new one. The fabric's per-queue
/// counters equal the driver's.
#[test]
fn per_queue_counters_follow_qeths_queue_choice() {
    let net = Net::new(&[4, 2, 2]);
    net.card(2).join(G1);
    let c = net.card(1);
    let mut per_qdio: BTreeMap<usize, u64> = BTreeMap::new();
    let mut seq = 0;
    for flow in 0..8usize {
        for k in 0..3 {
            let dst = if flow % 2 == 0 { ip4(2) } else { ip4(3) };
            let mut p = packet(ip4(1), dst, (1, UNICAST), seq, 100 + k * 40).flow(flow);
            if k == 2 {
                p = p.vlan(7); // a new VLAN: no bulking with the frames before
            }
            let q = c.xmit(&p, k != 2).unwrap();
            *per_qdio.entry(q).or_default() += 1;
            seq += 1;
        }
    }
    for k in 0..4u32 {
        let q = c
            .xmit(&packet(ip4(1), G1, (1, TO_G1), seq + k, 64), k != 3)
            .unwrap();
        *per_qdio.entry(q).or_default() += 1;
    }
    // txq = flow % 4 (0 becomes 1): txq 1 → QDIO 1, txq 2 → QDIO 2, txq 3 → QDIO 0.
    assert_eq!(per_qdio, BTreeMap::from([(0, 6), (1, 12), (2, 6), (3, 4)]));
    net.settle(&[0, 16, 12]);
    let fc = net.fab.counters_of(1, 0).unwrap();
    for (q, n) in &per_qdio {
        assert_eq!(fc.output_queues[*q].frames, *n, "QDIO queue {q}");
    }
    let tagged = net.got(2).len();
    assert_eq!(tagged, 16);
    // Each burst's VLAN frame needed a buffer of its own: at least two per burst.
    let bufs: u64 = (0..3).map(|q| c.tx_stats(q).bufs).sum();
    assert!(bufs >= 16, "{bufs} unicast buffers for 8 bursts");
    net.assert_clean();
}

// ---------------------------------------------------------------------------------
// The completion queue: qeth with `QETH_CQ_ENABLED` sends AF_IUCV traffic with SIGA
// WRITEQ and a QAOB per buffer; a buffer to a full receiver completes PENDING and
// finishes through the QAOB posted on the completion queue.
// ---------------------------------------------------------------------------------

/// The HiperSockets IUCV user id of LPAR `lpar`'s card.
fn user(lpar: u8) -> [u8; 8] {
    [b'L', b'P', b'A', b'R', b'0', b'0', b'0', b'0' + lpar]
}

fn cq(c: CardConfig) -> CardConfig {
    CardConfig { cq: true, ..c }
}

/// Cards with the completion queue on (two output queues each), each reachable at
/// its IUCV address.
fn cq_net(cards: usize, tweak: Tweak) -> Net {
    let net = Net::with((0..cards).map(|_| (2, tweak)).collect());
    for c in &net.cards {
        c.register_ip(iucv_address(user(c.cfg.lpar)));
    }
    net
}

fn iucv(from: u8, to: u8, kind: u16, seq: u32, len: usize) -> Packet {
    Packet::iucv(user(to), &payload((from, kind), seq, len))
}

/// Waits until `cond` holds (10 s at most).
fn until(what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Two senders and a receiver that takes 200 µs per frame: once its 127 buffers are
/// full, the senders' WRITEQ buffers go PENDING and complete through their QAOBs as
/// it catches up (the fabric sees its refills at the senders' next SIGA or the
/// timer's tick). Each sender keeps at most 8 frames unfinished, the fabric's pending
/// capacity per queue set (as a window protocol would). Every frame arrives once,
/// intact and in order; no sender sees an error, none re-sends or recovers; the
/// QAOBs completed are the buffers that went pending, on both sides' counts.
#[test]
fn completion_queue_under_receivers_slower_than_senders() {
    const N: u32 = 300;
    let net = cq_net(3, cq);
    net.slow[2].store(200, Ordering::SeqCst);
    // IP is not sent with the completion queue on (qeth_l3_hard_start_xmit).
    let ip = packet(ip4(1), ip4(3), (1, UNICAST), 0, 10);
    assert_eq!(net.card(1).xmit(&ip, false), Err(XmitError::Dropped));
    let senders: Vec<_> = [1u8, 2]
        .into_iter()
        .map(|from| {
            let card = net.card(from).clone();
            std::thread::spawn(move || {
                for seq in 0..N {
                    if seq % 8 == 0 {
                        until("the sender's window drained", || card.pending(0) == 0);
                    }
                    let p = iucv(from, 3, UNICAST, seq, 200 + (seq as usize * 97) % 3000);
                    assert_eq!(card.xmit(&p, false), Ok(0));
                }
                until("the last window drained", || card.pending(0) == 0);
            })
        })
        .collect();
    for s in senders {
        s.join().unwrap();
    }
    net.settle(&[0, 0, 2 * N as usize]);
    for from in [1u8, 2] {
        let seqs: Vec<u32> = net
            .got(3)
            .iter()
            .filter(|g| g.0.0 == from)
            .map(|g| g.1)
            .collect();
        assert_eq!(
            seqs,
            (0..N).collect::<Vec<_>>(),
            "LPAR {from}'s frames in order"
        );
        let c = net.card(from);
        let t = c.tx_stats(0);
        assert_eq!(
            (t.tx_packets, t.tx_errors, t.bufs, c.recoveries()),
            (u64::from(N), 0, u64::from(N), 0)
        );
        assert_eq!(
            t.siga_writeq - t.busy,
            t.bufs,
            "one WRITEQ per buffer (busy re-issues apart)"
        );
        let f = net.fab.counters_of(from, 0).unwrap();
        assert_eq!(f.errors_total(), 0, "LPAR {from}: no 0x10");
        assert_eq!((f.pending, f.completed), (t.pending, t.pending_done));
        assert_eq!(f.completed_with_error, 0);
        assert_eq!(t.aorc[0], t.pending_done);
    }
    let pending = net.card(1).tx_stats(0).pending + net.card(2).tx_stats(0).pending;
    assert!(
        pending > 0,
        "no buffer went pending: the receiver was not slower"
    );
    assert!(net.card(1).rx_stats().qaobs + net.card(2).rx_stats().qaobs >= pending);
}

/// Deregistration with buffers pending. The receiver goes away: the fabric completes
/// what waited for it with `aorc` 0x12 through the completion queue, and qeth
/// finishes those buffers (counted sent: `qeth_tx_complete_pending_bufs` passes
/// `error = drain`, the code only picks the AF_IUCV notification). The sender goes
/// away (its recovery): its pending buffers' QAOBs read 0x15, qeth drains them as
/// errors, none reaches the receiver later, and after the recovery it sends again.
#[test]
fn deregistration_with_buffers_pending_on_either_side() {
    let net = cq_net(4, cq);
    // LPAR 1 → LPAR 2, which never empties its queue, then goes away.
    net.paused[1].store(true, Ordering::SeqCst);
    let s = net.card(1);
    for seq in 0..132 {
        s.xmit(&iucv(1, 2, UNICAST, seq, 100), false).unwrap();
    }
    assert_eq!(s.pending(0), 5);
    net.fab.deregister_queue_set(2, 0).unwrap();
    until("the 0x12 completions", || s.pending(0) == 0);
    let t = s.tx_stats(0);
    assert_eq!((t.aorc[0x12], t.tx_packets, t.tx_errors), (5, 132, 0));
    assert_eq!(net.fab.counters_of(1, 0).unwrap().completed_with_error, 5);
    assert_eq!(s.recoveries(), 0);

    // LPAR 3 → LPAR 4 (paused), then LPAR 3 is recovered.
    net.paused[3].store(true, Ordering::SeqCst);
    let s = net.card(3);
    for seq in 0..130 {
        s.xmit(&iucv(3, 4, UNICAST, seq, 100), false).unwrap();
    }
    let qaobs = s.pending_qaobs(0);
    assert_eq!(qaobs.len(), 3);
    net.paused[2].store(true, Ordering::SeqCst); // LPAR 3's own completion queue
    net.fab.deregister_queue_set(3, 0).unwrap();
    for q in &qaobs {
        assert_eq!(s.qaob_aorc(*q), 0x15, "cancelled");
    }
    s.recover();
    net.paused[2].store(false, Ordering::SeqCst);
    let t = s.tx_stats(0);
    assert_eq!((t.tx_packets, t.tx_errors, s.pending(0)), (127, 3, 0));
    net.paused[3].store(false, Ordering::SeqCst);
    net.settle(&[0, 0, 0, 127]);
    for seq in 130..133 {
        s.xmit(&iucv(3, 4, UNICAST, seq, 100), false).unwrap();
    }
    net.settle(&[0, 0, 0, 130]);
    let seqs: Vec<u32> = net.got(4).iter().map(|g| g.1).collect();
    assert_eq!(seqs, (0..127).chain(130..133).collect::<Vec<_>>());
    assert_eq!(s.recoveries(), 0, "recover() was the test's, not an -EIO");
}

/// A WRITEQ whose QAOB address is misaligned, outside the partition or runs past its
/// end: the buffer is refused 0x2A, qeth counts it in `tx_errors` and re-sends
/// nothing; with a good QAOB the next buffer goes through.
#[test]
fn a_bad_qaob_address_refuses_the_buffer_0x2a() {
    let net = cq_net(2, cq);
    let s = net.card(1);
    let end = GUEST_BASE + s.ram.len() as u64;
    for (k, bad) in [GUEST_BASE + 0x80, 0x100, end, end - 0x80, !0xFF]
        .into_iter()
        .enumerate()
    {
        let n = s.prime_only(0, 1, &iucv(1, 2, UNICAST, k as u32, 300));
        let r = net.fab.siga_writeq(1, 0, 1 << 31, bad).unwrap();
        assert_eq!((r.buffers, r.refused), (1, 1), "QAOB {bad:#x}");
        assert_eq!((s.out_state(0, n), s.out_sbalf15(0, n)), (0xAF, 0x2A));
        s.reap(0);
    }
    let t = s.tx_stats(0);
    assert_eq!((t.tx_errors, t.sbalf15[0x2A], t.lnkfail), (5, 5, 5));
    s.xmit(&iucv(1, 2, UNICAST, 9, 300), false).unwrap();
    net.settle(&[0, 1]);
    assert_eq!(net.got(2)[0].1, 9);
    assert_eq!(s.recoveries(), 0);
}

/// A completion queue with no empty buffer: the fabric keeps the finished buffers'
/// completions (counting `cq_full`) until the driver hands a buffer back, then posts
/// them; nothing is lost. (The card arms one completion-queue buffer instead of 127
/// to get there quickly.)
#[test]
fn a_full_completion_queue_holds_completions_until_it_has_room() {
    fn one_cq_buffer(c: CardConfig) -> CardConfig {
        CardConfig {
            cq: true,
            cq_buffers: 1,
            ..c
        }
    }
    let net = cq_net(3, one_cq_buffer);
    let s = net.card(1);
    net.paused[0].store(true, Ordering::SeqCst); // LPAR 1 reads no completions
    net.paused[1].store(true, Ordering::SeqCst);
    net.paused[2].store(true, Ordering::SeqCst);
    let mut seq = 0;
    for to in [2u8, 3] {
        for _ in 0..129 {
            s.xmit(&iucv(1, to, UNICAST, seq, 64), false).unwrap();
            seq += 1;
        }
        // Two buffers pending for `to`; it goes away: 0x12 for both.
        net.fab.deregister_queue_set(to, 0).unwrap();
    }
    // The first pair took the one completion-queue buffer; the second waits.
    until("the completion queue full", || {
        net.fab.counters_of(1, 0).unwrap().cq_full > 0
    });
    assert_eq!(s.pending(0), 4, "LPAR 1 has read no completion yet");
    net.paused[0].store(false, Ordering::SeqCst);
    until("every completion read", || s.pending(0) == 0);
    let t = s.tx_stats(0);
    assert_eq!((t.aorc[0x12], t.pending_done, t.tx_errors), (4, 4, 0));
    assert_eq!(t.tx_packets, 258);
    let f = net.fab.counters_of(1, 0).unwrap();
    assert_eq!((f.pending, f.completed_with_error), (4, 4));
    assert_eq!(
        s.rx_stats().cq_bufs,
        2,
        "two completion-queue buffers, one at a time"
    );
    assert_eq!(s.recoveries(), 0);
}
