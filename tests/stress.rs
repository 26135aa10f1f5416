//! Zero-loss stress on the host (issue 4, item 5): four partitions send frames of mixed
//! sizes to random peers (a seeded PRNG) while their receivers are slower than the
//! senders, so that target-full happens. Every frame must be delivered exactly once
//! and intact, or returned to its sender with an error and sent again.
//!
//! Each partition has two queue sets: subchannel 0 sends (one thread), subchannel 1
//! receives (another thread), so 8 threads play the 4 partitions. Senders prime 1 to 4
//! output buffers (some holding 2 or 3 frames for one next hop) and flush them with one
//! SIGA write-multiple; a buffer refused with a retryable reason (0x10 target full) is
//! primed again later. Receivers sleep on their interrupt, take at most a few buffers
//! at a time, and now and then go deaf for a while with a 4-buffer ring.
//!
//! `cargo test --release --test stress -- --ignored --nocapture` runs the full
//! 4 x 100 000 frames and prints
//! `frames F, delivered F, resent R, lost 0, duplicated 0, corrupted 0`.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use iqdio::driver::DriverConfig;
use iqdio::qdio::HEADER_SIZE;
use iqdio::{FabricConfig, Mfs, Reason};

const PARTITIONS: u8 = 4;
const MFS: Mfs = Mfs::K16;
/// Subchannel that sends, and subchannel that receives, in every partition.
const TX: u16 = 0;
const RX: u16 = 1;

/// A packet size: mostly small, some large, up to the largest one frame can carry.
fn size(rng: &mut Rng) -> usize {
    let max = MFS.bytes() - HEADER_SIZE;
    match rng.below(10) {
        0..=5 => 16 + rng.below(1500) as usize,
        6..=8 => 1500 + rng.below(6500) as usize,
        _ => 8000 + rng.below((max - 8000 + 1) as u64) as usize,
    }
}

/// What one output buffer carries: frames (seq, length) for one peer.
#[derive(Clone, Debug)]
struct Buffer {
    peer: u8,
    frames: Vec<(u32, usize)>,
}

#[derive(Debug, Default)]
struct Summary {
    frames: u64,
    delivered: u64,
    resent: u64,
    lost: u64,
    duplicated: u64,
    corrupted: u64,
    target_full: u64,
}

impl Summary {
    fn line(&self) -> String {
        format!(
            "frames {}, delivered {}, resent {}, lost {}, duplicated {}, corrupted {}",
            self.frames, self.delivered, self.resent, self.lost, self.duplicated, self.corrupted
        )
    }
}

fn run(per_partition: u32, seed: u64) -> Summary {
    let platform = TestPlatform::new();
    let fab = fabric(
        platform.clone(),
        FabricConfig {
            mfs: MFS,
            ..FabricConfig::DEFAULT
        },
    );
    let cfg = DriverConfig {
        rx_buffers: 4,
        tx_buffers: 4,
        ..config(MFS)
    };
    let parts: Vec<Partition> = (1..=PARTITIONS)
        .map(|l| Partition::new(&fab, l, 2, cfg))
        .collect();
    // Frames delivered to each partition, as the senders saw them (0xA1).
    let delivered_to: Arc<Vec<AtomicU64>> =
        Arc::new((0..=PARTITIONS).map(|_| AtomicU64::new(0)).collect());
    let senders_done = Arc::new(AtomicBool::new(false));

    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for p in parts {
        let Partition {
            lpar,
            ram,
            indicators,
            queues,
        } = p;
        let mut queues = queues.into_iter();
        let mut tx = queues.next().unwrap();
        let mut rx = queues.next().unwrap();
        let fab_s = fab.clone();
        let delivered_s = delivered_to.clone();
        senders.push(std::thread::spawn(move || {
            let port = fab_s.port(lpar);
            let mut rng = Rng(seed ^ (u64::from(lpar) << 32) ^ 0x5EED);
            let mut next_seq = 0u32;
            let mut retry: VecDeque<Buffer> = VecDeque::new();
            let mut resent = 0u64;
            let mut full = 0u64;
            while next_seq < per_partition || !retry.is_empty() {
                // Up to 4 buffers: refused ones first, then new frames.
                let mut batch: Vec<Buffer> = Vec::new();
                while batch.len() < 4 {
                    if let Some(b) = retry.pop_front() {
                        resent += b.frames.len() as u64;
                        batch.push(b);
                        continue;
                    }
                    if next_seq >= per_partition {
                        break;
                    }
                    let mut peer = 1 + rng.below(u64::from(PARTITIONS) - 1) as u8;
                    if peer >= lpar {
                        peer += 1;
                    }
                    let mut b = Buffer {
                        peer,
                        frames: vec![(next_seq, size(&mut rng))],
                    };
                    next_seq += 1;
                    // One buffer in eight packs two or three small frames (wherever
                    // they fall on the buffer's pages).
                    if rng.below(8) == 0 {
                        b.frames[0].1 = 16 + rng.below(2000) as usize;
                        for _ in 0..1 + rng.below(2) {
                            if next_seq < per_partition {
                                b.frames.push((next_seq, 16 + rng.below(2000) as usize));
                                next_seq += 1;
                            }
                        }
                    }
                    batch.push(b);
                }
                if batch.is_empty() {
                    break;
                }
                for b in &batch {
                    let data: Vec<Vec<u8>> = b
                        .frames
                        .iter()
                        .map(|&(seq, len)| payload((lpar, TX), seq, len))
                        .collect();
                    let refs: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
                    let dest = if b.frames[0].0 % 2 == 0 {
                        v4(b.peer, RX)
                    } else {
                        v6(b.peer, RX)
                    };
                    tx.prime_frames(dest, &refs).expect("prime");
                }
                let report = tx.flush(&port).expect("SIGA cc0");
                let mut refused = report.refused.iter().peekable();
                for (k, b) in batch.into_iter().enumerate() {
                    match refused.peek() {
                        Some(&&(pos, reason)) if usize::from(pos) == k => {
                            refused.next();
                            assert!(
                                reason.is_retryable(),
                                "LPAR {lpar}: buffer to {} refused with {reason:?}",
                                b.peer
                            );
                            if reason == Reason::TargetFull {
                                full += 1;
                            }
                            retry.push_back(b);
                        }
                        _ => {
                            delivered_s[usize::from(b.peer)]
                                .fetch_add(b.frames.len() as u64, Ordering::SeqCst);
                        }
                    }
                }
                if !retry.is_empty() {
                    std::thread::yield_now();
                }
            }
            (tx, resent, full)
        }));

        let platform_r = platform.clone();
        let done_r = senders_done.clone();
        let delivered_r = delivered_to.clone();
        receivers.push(std::thread::spawn(move || {
            let mut seen: Vec<Vec<u32>> = vec![Vec::new(); usize::from(PARTITIONS) + 1];
            let mut corrupted = 0u64;
            let mut got = 0u64;
            let mut rounds = 0u64;
            let mut idle_since: Option<Instant> = None;
            loop {
                let irq = platform_r.raised(lpar);
                // High -> low, each byte reset before the work it announces.
                if indicators.take() {
                    rx.take_initiative();
                }
                // Slower than the senders: at most 3 buffers per round.
                let mut took = 0;
                while took < 3 {
                    let Some(_) = rx.receive(|f| {
                        let mut v = vec![0; f.len()];
                        f.copy_to(&mut v);
                        match check_payload(&v) {
                            Some(((src, TX), seq)) if usize::from(src) < seen.len() => {
                                seen[usize::from(src)].push(seq);
                            }
                            _ => corrupted += 1,
                        }
                        got += 1;
                    }) else {
                        break;
                    };
                    took += 1;
                }
                rounds += 1;
                let done = done_r.load(Ordering::SeqCst);
                if done && got >= delivered_r[usize::from(lpar)].load(Ordering::SeqCst) {
                    // Everything the senders saw delivered is here; a last look for
                    // anything beyond it (duplicates) before stopping.
                    while rx
                        .receive(|f| {
                            let mut v = vec![0; f.len()];
                            f.copy_to(&mut v);
                            match check_payload(&v) {
                                Some(((src, TX), seq)) if usize::from(src) < seen.len() => {
                                    seen[usize::from(src)].push(seq)
                                }
                                _ => corrupted += 1,
                            }
                            got += 1;
                        })
                        .is_some()
                    {}
                    break;
                }
                if took == 0 {
                    if done {
                        // Frames the senders counted but that never arrive: lost.
                        let t = *idle_since.get_or_insert_with(Instant::now);
                        if t.elapsed() > Duration::from_secs(10) {
                            break;
                        }
                    }
                    platform_r.wait(lpar, irq, Duration::from_millis(1));
                } else {
                    idle_since = None;
                    if rounds.is_multiple_of(64) {
                        // Deaf for a while: the 4-buffer ring fills up.
                        std::thread::sleep(Duration::from_micros(300));
                    } else {
                        std::thread::yield_now();
                    }
                }
            }
            (lpar, ram, rx, seen, corrupted, got)
        }));
    }

    let mut summary = Summary {
        frames: u64::from(per_partition) * u64::from(PARTITIONS),
        ..Summary::default()
    };
    let mut _keep = Vec::new();
    for s in senders {
        let (tx, resent, full) = s.join().expect("sender");
        summary.resent += resent;
        summary.target_full += full;
        _keep.push(tx);
    }
    senders_done.store(true, Ordering::SeqCst);
    // Per source partition: how often each sequence number arrived.
    let mut counts: Vec<Vec<u32>> =
        vec![vec![0; per_partition as usize]; usize::from(PARTITIONS) + 1];
    for r in receivers {
        let (lpar, ram, rx, seen, corrupted, _got) = r.join().expect("receiver");
        assert!(ram.guards_intact(), "guard pages of LPAR {lpar} changed");
        summary.corrupted += corrupted;
        for (src, seqs) in seen.iter().enumerate() {
            for &seq in seqs {
                match counts[src].get_mut(seq as usize) {
                    Some(c) => *c += 1,
                    None => summary.corrupted += 1,
                }
            }
        }
        _keep.push(rx);
        drop(ram);
    }
    for (src, c) in counts.iter().enumerate().skip(1) {
        for (seq, &n) in c.iter().enumerate() {
            match n {
                0 => {
                    summary.lost += 1;
                    if summary.lost <= 5 {
                        eprintln!("lost: LPAR {src} seq {seq}");
                    }
                }
                1 => summary.delivered += 1,
                n => {
                    summary.delivered += 1;
                    summary.duplicated += u64::from(n - 1);
                }
            }
        }
    }
    // The fabric's own counters agree: every frame sent was received once.
    let (mut sent, mut received) = (0, 0);
    for l in 1..=PARTITIONS {
        sent += fab.counters_of(l, TX).unwrap().frames_sent;
        received += fab.counters_of(l, RX).unwrap().frames_received;
        assert_eq!(fab.counters_of(l, RX).unwrap().malformed(), 0);
    }
    assert_eq!(sent, received, "fabric counters: sent vs received");
    assert_eq!(
        sent,
        summary.delivered + summary.duplicated,
        "fabric counters vs frames found"
    );
    summary
}

fn check(summary: &Summary) {
    println!("{}", summary.line());
    assert_eq!(summary.lost, 0, "lost frames");
    assert_eq!(summary.duplicated, 0, "duplicated frames");
    assert_eq!(summary.corrupted, 0, "corrupted frames");
    assert_eq!(summary.delivered, summary.frames);
    assert!(
        summary.target_full > 0 && summary.resent > 0,
        "target-full never happened: the receivers kept up ({summary:?})"
    );
}

#[test]
fn four_partitions_5000_frames_each_zero_loss() {
    let s = within(Duration::from_secs(300), || run(5_000, 1));
    check(&s);
}

#[test]
#[ignore = "long: 4 x 100 000 frames; cargo test --release --test stress -- --ignored --nocapture"]
fn four_partitions_100000_frames_each_zero_loss() {
    let start = Instant::now();
    let s = within(Duration::from_secs(1800), || run(100_000, 4));
    eprintln!(
        "stress: {:.1} s, {} buffers refused target-full",
        start.elapsed().as_secs_f64(),
        s.target_full
    );
    check(&s);
}
