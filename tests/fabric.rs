//! Integration tests: threads play partitions exchanging frames through one fabric.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use iqdio::driver::{DriverConfig, DriverError, QueueDriver, SendError};
use iqdio::qdio::{Fragment, HEADER_SIZE, Sbale, SlsbState};
use iqdio::{FabricConfig, Mfs, Reason, RegistrationError, SigaError};

/// Frame sizes from 1 byte up to the largest packet one 64 KiB frame carries.
fn sizes(mfs: Mfs) -> Vec<usize> {
    let max = mfs.bytes() - HEADER_SIZE;
    let mut v = vec![1, 2, 11, 64, 100, 1500, 4064, 4065, 8192, 9000, 16384];
    v.retain(|&s| s <= max);
    v.extend([max - 1, max]);
    v
}

#[test]
fn four_partitions_with_two_subchannels_exchange_ipv4_and_ipv6_frames_of_every_size() {
    let platform = TestPlatform::new();
    let fab = fabric(platform.clone(), FabricConfig::DEFAULT);
    let cfg = DriverConfig {
        rx_buffers: 16,
        tx_buffers: 4,
        ..config(Mfs::K64)
    };
    let parts: Vec<Partition> = (1..=4).map(|l| Partition::new(&fab, l, 2, cfg)).collect();
    let sizes = sizes(Mfs::K64);
    // Every queue set sends every size to every queue set (its own partition's other
    // subchannel included, and itself), alternating IPv4 and IPv6.
    let targets: Vec<(u8, u16)> = (1..=4u8).flat_map(|l| [(l, 0u16), (l, 1u16)]).collect();
    let expected_per_target = targets.len() * sizes.len();
    let done = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = parts
        .into_iter()
        .map(|mut p| {
            let fab = fab.clone();
            let targets = targets.clone();
            let sizes = sizes.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let port = fab.port(p.lpar);
                let mut got: Vec<Vec<Vec<u8>>> = vec![Vec::new(), Vec::new()];
                let mut seq = 0u32;
                let mut resent = 0u64;
                for (ti, &(tl, ts)) in targets.iter().enumerate() {
                    for &len in &sizes {
                        for qi in 0..2 {
                            let src = (p.lpar, qi as u16);
                            let data = payload(src, seq, len);
                            let dest = if (seq + ti as u32).is_multiple_of(2) {
                                v4(tl, ts)
                            } else {
                                v6(tl, ts)
                            };
                            loop {
                                match p.queues[qi].send(&port, dest, &data) {
                                    Ok(()) => break,
                                    Err(SendError::Refused(Reason::TargetFull)) => {
                                        resent += 1;
                                        for (q, g) in p.queues.iter_mut().zip(got.iter_mut()) {
                                            drain(q, g);
                                        }
                                        std::thread::yield_now();
                                    }
                                    Err(e) => panic!("send {src:?} -> {dest}: {e:?}"),
                                }
                            }
                            seq += 1;
                        }
                        for (q, g) in p.queues.iter_mut().zip(got.iter_mut()) {
                            drain(q, g);
                        }
                    }
                }
                done.fetch_add(1, Ordering::SeqCst);
                // Keep receiving until everyone has sent and our queues hold it all.
                while got.iter().map(Vec::len).sum::<usize>() < 2 * expected_per_target {
                    for (q, g) in p.queues.iter_mut().zip(got.iter_mut()) {
                        drain(q, g);
                    }
                    std::thread::yield_now();
                }
                (p, got, resent)
            })
        })
        .collect();
    let results = within(Duration::from_secs(120), move || {
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for (p, got, _) in &results {
        assert!(
            p.ram.guards_intact(),
            "guard pages of LPAR {} changed",
            p.lpar
        );
        for (qi, frames) in got.iter().enumerate() {
            assert_eq!(
                frames.len(),
                expected_per_target,
                "LPAR {} sch {qi}",
                p.lpar
            );
            // From each source queue set: every size once, in send order.
            let mut per_src: HashMap<(u8, u16), Vec<(u32, usize)>> = HashMap::new();
            for f in frames {
                let ((sl, ss), seq) = match check_payload(f) {
                    Some(x) => x,
                    None => {
                        // 1- and 2-byte frames are too short to carry their own head.
                        assert!(f.len() < 11, "corrupted frame of {} bytes", f.len());
                        continue;
                    }
                };
                per_src.entry((sl, ss)).or_default().push((seq, f.len()));
            }
            assert_eq!(
                per_src.len(),
                targets.len(),
                "a source is missing at LPAR {} sch {qi}",
                p.lpar
            );
            for (src, seqs) in &per_src {
                assert!(
                    seqs.windows(2).all(|w| w[0].0 < w[1].0),
                    "out of order from {src:?}"
                );
                let long_sizes = sizes.iter().filter(|&&s| s >= 11).count();
                assert_eq!(seqs.len(), long_sizes, "from {src:?}");
            }
        }
        let c = fab.counters_of(p.lpar, 0).unwrap();
        assert_eq!(c.frames_received, expected_per_target as u64);
        assert_eq!(c.frames_sent, expected_per_target as u64);
        assert_eq!(c.malformed(), 0);
    }
    let total_bytes: u64 = sizes.iter().map(|&s| s as u64).sum::<u64>() * targets.len() as u64;
    for l in 1..=4 {
        for s in 0..2 {
            let c = fab.counters_of(l, s).unwrap();
            assert_eq!(c.bytes_sent, total_bytes);
            assert_eq!(c.bytes_received, total_bytes);
        }
    }
}

#[test]
fn frames_span_several_elements_on_both_sides_with_fragment_flags() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, config(Mfs::K64));
    let mut b = Partition::new(&fab, 2, 1, config(Mfs::K64));
    let data = payload((1, 0), 7, 9000);
    let port = fab.port(1);
    let n = a.queues[0].prime(v4(2, 0), &data).unwrap();
    // Sender side: 9032 bytes from a page-aligned buffer: 4096 + 4096 + 840.
    let out_sbal = a.queues[0].params().output_sbals[usize::from(n)];
    let sbale = |ram: &GuestRam, sbal: u64, i: usize| {
        let mut raw = [0u8; 16];
        ram.read(sbal + (i * 16) as u64, &mut raw);
        Sbale::decode(&raw)
    };
    let e: Vec<Sbale> = (0..4).map(|i| sbale(&a.ram, out_sbal, i)).collect();
    assert_eq!(
        e.iter()
            .map(|e| (e.fragment(), e.length))
            .collect::<Vec<_>>()[..3],
        [
            (Fragment::First, 4096),
            (Fragment::Middle, 4096),
            (Fragment::Last, 840)
        ]
    );
    assert!(e[2].is_last_entry() && !e[1].is_last_entry());
    assert_eq!(e[3], Sbale::default());
    a.queues[0].flush(&port).unwrap();
    assert_eq!(a.queues[0].output_state(n), SlsbState::OUTPUT_EMPTY);
    // Receiver side: 4 KiB elements, the same split, LAST_ENTRY on the third.
    assert_eq!(b.queues[0].input_state(0), SlsbState::INPUT_PRIMED);
    let in_sbal = b.queues[0].params().input_sbals[0];
    let r: Vec<Sbale> = (0..3).map(|i| sbale(&b.ram, in_sbal, i)).collect();
    assert_eq!(
        r.iter()
            .map(|e| (e.fragment(), e.length, e.is_last_entry()))
            .collect::<Vec<_>>(),
        [
            (Fragment::First, 4096, false),
            (Fragment::Middle, 4096, false),
            (Fragment::Last, 840, true)
        ]
    );
    let mut got = Vec::new();
    assert_eq!(drain(&mut b.queues[0], &mut got), 1);
    assert_eq!(got, vec![data]);
}

#[test]
fn several_frames_in_one_sbal_arrive_as_several_frames() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, config(Mfs::K64));
    let mut b = Partition::new(&fab, 2, 1, config(Mfs::K64));
    let frames: Vec<Vec<u8>> = [100, 5000, 1]
        .iter()
        .enumerate()
        .map(|(i, &l)| payload((1, 0), i as u32, l))
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    a.queues[0].prime_frames(v6(2, 0), &refs).unwrap();
    let r = a.queues[0].flush(&fab.port(1)).unwrap();
    assert_eq!((r.delivered, r.refused.len()), (1, 0));
    let mut got = Vec::new();
    assert_eq!(drain(&mut b.queues[0], &mut got), 3);
    assert_eq!(got, frames);
    let c = fab.counters_of(2, 0).unwrap();
    assert_eq!(
        (c.frames_received, c.sbals_received, c.bytes_received),
        (3, 1, 5101)
    );
}

#[test]
fn the_queue_index_wraps_past_128_many_times() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let cfg = DriverConfig {
        rx_buffers: 8,
        tx_buffers: 2,
        ..config(Mfs::K16)
    };
    let mut a = Partition::new(&fab, 1, 1, cfg);
    let mut b = Partition::new(&fab, 2, 1, cfg);
    let port = fab.port(1);
    let rounds = 128 * 20 + 5;
    let mut got = Vec::new();
    for seq in 0..rounds {
        let data = payload((1, 0), seq, 64 + (seq as usize % 200));
        a.queues[0].send(&port, v4(2, 0), &data).unwrap();
        assert_eq!(drain(&mut b.queues[0], &mut got), 1);
        assert_eq!(got.last().unwrap(), &data);
    }
    assert_eq!(got.len(), rounds as usize);
    // Every output buffer ends 0xA1 (the program's again), none is left primed.
    for n in 0..128 {
        assert_eq!(
            a.queues[0].output_state(n),
            SlsbState::OUTPUT_EMPTY,
            "buffer {n}"
        );
    }
    let c = fab.counters_of(1, 0).unwrap();
    assert_eq!((c.sbals_sent, c.errors_total()), (u64::from(rounds), 0));
}

#[test]
fn target_full_is_reported_to_the_sender_with_its_frame_intact_and_recovers() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let cfg = DriverConfig {
        rx_buffers: 4,
        tx_buffers: 2,
        ..config(Mfs::K16)
    };
    let mut a = Partition::new(&fab, 1, 1, cfg);
    let mut b = Partition::new(&fab, 2, 1, cfg);
    let mut c = Partition::new(&fab, 3, 1, cfg);
    let port = fab.port(1);
    for seq in 0..4 {
        a.queues[0]
            .send(&port, v4(2, 0), &payload((1, 0), seq, 300))
            .unwrap();
    }
    let data = payload((1, 0), 4, 300);
    let n = a.queues[0].prime(v4(2, 0), &data).unwrap();
    let r = a.queues[0].flush(&port).unwrap();
    assert_eq!(r.refused.as_slice(), &[(0, Reason::TargetFull)]);
    assert_eq!(a.queues[0].output_state(n), SlsbState::OUTPUT_ERROR);
    assert_eq!(a.queues[0].reason(n), Reason::TargetFull);
    // sbalf15 reads 0x10 in the sender's own SBAL, and the frame is as it was.
    let sbal = a.queues[0].params().output_sbals[usize::from(n)];
    let mut e15 = [0u8; 16];
    a.ram.read(sbal + 15 * 16, &mut e15);
    assert_eq!(e15[3], 0x10);
    let mut e0 = [0u8; 16];
    a.ram.read(sbal, &mut e0);
    let first = Sbale::decode(&e0);
    assert_eq!(a.ram.read_vec(first.addr + HEADER_SIZE as u64, 300), data);
    // Others are unaffected: A still reaches C.
    a.queues[0]
        .send(&port, v4(3, 0), &payload((1, 0), 99, 10))
        .unwrap();
    let mut got_c = Vec::new();
    assert_eq!(drain(&mut c.queues[0], &mut got_c), 1);
    // B drains one buffer; the same frame, primed again, goes through.
    let mut got = Vec::new();
    assert!(
        b.queues[0]
            .receive(|f| {
                let mut v = vec![0; f.len()];
                f.copy_to(&mut v);
                got.push(v);
            })
            .is_some()
    );
    a.queues[0].send(&port, v4(2, 0), &data).unwrap();
    drain(&mut b.queues[0], &mut got);
    assert_eq!(got.len(), 5);
    assert_eq!(got[4], data);
    let ca = fab.counters_of(1, 0).unwrap();
    let cb = fab.counters_of(2, 0).unwrap();
    assert_eq!(ca.errors_for(Reason::TargetFull), 1);
    assert_eq!(cb.refused_full, 1);
    assert_eq!(cb.frames_received, 5);
}

#[test]
fn write_multiple_sends_every_primed_buffer_and_reports_each_outcome() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let cfg = DriverConfig {
        tx_buffers: 8,
        ..config(Mfs::K24)
    };
    let mut a = Partition::new(&fab, 1, 1, cfg);
    let mut b = Partition::new(&fab, 2, 2, cfg);
    let nowhere = v4(9, 9);
    let dests = [
        v4(2, 0),
        v6(2, 1),
        v4(2, 1),
        nowhere,
        v6(2, 0),
        v4(2, 0),
        v6(2, 1),
        v4(2, 0),
    ];
    let mut primed = Vec::new();
    for (i, d) in dests.iter().enumerate() {
        primed.push(
            a.queues[0]
                .prime(*d, &payload((1, 0), i as u32, 1000 * (i + 1)))
                .unwrap(),
        );
    }
    assert_eq!(
        a.queues[0].prime(v4(2, 0), &[1]),
        Err(DriverError::NoFreeBuffer)
    );
    let r = a.queues[0].flush(&fab.port(1)).unwrap();
    assert_eq!(r.delivered, 7);
    assert_eq!(r.refused.as_slice(), &[(3, Reason::Unreachable)]);
    for (i, n) in primed.iter().enumerate() {
        let want = if i == 3 {
            SlsbState::OUTPUT_ERROR
        } else {
            SlsbState::OUTPUT_EMPTY
        };
        assert_eq!(a.queues[0].output_state(*n), want);
    }
    let (mut g0, mut g1) = (Vec::new(), Vec::new());
    assert_eq!(drain(&mut b.queues[0], &mut g0), 4);
    assert_eq!(drain(&mut b.queues[1], &mut g1), 3);
    let c = fab.counters_of(1, 0).unwrap();
    assert_eq!((c.sbals_sent, c.errors_for(Reason::Unreachable)), (7, 1));
}

#[test]
fn siga_write_handles_one_buffer_and_write_multiple_the_rest() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, config(Mfs::K16));
    let _b = Partition::new(&fab, 2, 1, config(Mfs::K16));
    for i in 0..3 {
        a.queues[0]
            .prime(v4(2, 0), &payload((1, 0), i, 50))
            .unwrap();
    }
    let r = fab.siga_write(1, 0, 1 << 31).unwrap();
    assert_eq!((r.buffers, r.delivered), (1, 1));
    assert_eq!(a.queues[0].output_state(0), SlsbState::OUTPUT_EMPTY);
    assert_eq!(a.queues[0].output_state(1), SlsbState::OUTPUT_PRIMED);
    let r = fab.siga_write_multiple(1, 0, 1 << 31).unwrap();
    assert_eq!((r.buffers, r.delivered, r.frames, r.bytes), (2, 2, 2, 100));
    assert_eq!(a.queues[0].output_state(2), SlsbState::OUTPUT_EMPTY);
    // Nothing primed: cc0, nothing handled.
    assert_eq!(fab.siga_write_multiple(1, 0, 1 << 31).unwrap().buffers, 0);
}

#[test]
fn every_mfs_carries_its_largest_frame_and_refuses_a_larger_one() {
    for mfs in [Mfs::K16, Mfs::K24, Mfs::K40, Mfs::K64] {
        let fab = fabric(
            TestPlatform::new(),
            FabricConfig {
                mfs,
                ..FabricConfig::DEFAULT
            },
        );
        let mut a = Partition::new(&fab, 1, 1, config(mfs));
        let mut b = Partition::new(&fab, 2, 1, config(mfs));
        let port = fab.port(1);
        let max = mfs.bytes() - HEADER_SIZE;
        let data = payload((1, 0), 1, max);
        a.queues[0].send(&port, v6(2, 0), &data).unwrap();
        let mut got = Vec::new();
        drain(&mut b.queues[0], &mut got);
        assert_eq!(got, vec![data], "{mfs:?}");
        assert_eq!(
            a.queues[0].prime(v6(2, 0), &vec![0; max + 1]),
            Err(DriverError::TooLarge)
        );
    }
}

#[test]
fn a_frame_larger_than_the_fabric_mfs_is_refused_not_truncated() {
    // The sender's driver thinks frames may be 64 KiB; the fabric says 16 KiB.
    let fab = fabric(
        TestPlatform::new(),
        FabricConfig {
            mfs: Mfs::K16,
            ..FabricConfig::DEFAULT
        },
    );
    let mut a = Partition::new(&fab, 1, 1, config(Mfs::K64));
    let b = Partition::new(&fab, 2, 1, config(Mfs::K16));
    let port = fab.port(1);
    let err = a.queues[0]
        .send(&port, v4(2, 0), &vec![7; 16 * 1024])
        .unwrap_err();
    assert_eq!(err, SendError::Refused(Reason::TooLarge));
    assert!(!b.queues[0].has_input());
    // A frame within the fabric's MFS but larger than the receiver's armed buffer
    // (the receiver armed 16 KiB buffers, the fabric allows 64 KiB).
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, config(Mfs::K64));
    let b = Partition::new(&fab, 2, 1, config(Mfs::K16));
    let err = a.queues[0]
        .send(&fab.port(1), v4(2, 0), &vec![7; 20_000])
        .unwrap_err();
    assert_eq!(err, SendError::Refused(Reason::TooLarge));
    assert!(!b.queues[0].has_input());
    assert_eq!(
        fab.counters_of(1, 0).unwrap().errors_for(Reason::TooLarge),
        1
    );
}

#[test]
fn siga_condition_codes() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let a = Partition::new(&fab, 1, 1, config(Mfs::K16));
    // Unknown partition, unknown subchannel: not IQDIO, cc3.
    assert_eq!(fab.siga_write(7, 0, 1 << 31), Err(SigaError::NotIqdio));
    assert_eq!(fab.siga_write(1, 5, 1 << 31), Err(SigaError::NotIqdio));
    assert_eq!(SigaError::NotIqdio.condition_code() as u8, 3);
    // A queue that does not exist, a function that does not exist: cc1.
    assert_eq!(
        fab.siga_write(1, 0, 1 << 30),
        Err(SigaError::InvalidQueueMask)
    );
    assert_eq!(fab.siga_write(1, 0, 0), Err(SigaError::InvalidQueueMask));
    assert_eq!(fab.siga(1, 0, 1, 1 << 31), Err(SigaError::InvalidFunction));
    assert!(fab.siga(1, 0, 3, 1 << 31).is_ok());
    // After deregistration: the subchannel keeps its IQDIO indicator, queues inactive.
    fab.deregister_queue_set(1, 0).unwrap();
    assert_eq!(
        fab.siga_write(1, 0, 1 << 31),
        Err(SigaError::QueuesNotActive)
    );
    assert_eq!(SigaError::QueuesNotActive.condition_code() as u8, 1);
    drop(a);
}

#[test]
fn a_siga_on_a_queue_another_siga_holds_is_busy_cc2() {
    use iqdio::{InterruptDelivery, InterruptTarget, Platform};
    // A platform that, when asked to interrupt, issues SIGA on the sending queue:
    // the sender's outbound lock is held at that moment, so that SIGA must be busy.
    struct Reenter {
        fabric: std::sync::OnceLock<Arc<iqdio::Fabric<Reenter, 8, 16>>>,
        seen: std::sync::Mutex<Vec<Result<iqdio::SigaReport, SigaError>>>,
    }
    impl Platform for Reenter {
        fn raise_interrupt(&self, _t: InterruptTarget) -> InterruptDelivery {
            let f = self.fabric.get().unwrap();
            self.seen.lock().unwrap().push(f.siga_write(1, 0, 1 << 31));
            InterruptDelivery::Delivered
        }
        fn now_ns(&self) -> u64 {
            0
        }
    }
    let fab: Arc<iqdio::Fabric<Reenter, 8, 16>> = Arc::new(iqdio::Fabric::new(
        Reenter {
            fabric: std::sync::OnceLock::new(),
            seen: std::sync::Mutex::new(Vec::new()),
        },
        FabricConfig::DEFAULT,
    ));
    let _ = fab.platform().fabric.set(fab.clone());
    let ram_a = GuestRam::new(PAGE + config(Mfs::K16).footprint());
    let ram_b = GuestRam::new(PAGE + config(Mfs::K16).footprint());
    let mut drivers = Vec::new();
    for (lpar, ram) in [(1u8, &ram_a), (2u8, &ram_b)] {
        let mut region = ram.region();
        let ind = iqdio::driver::Indicators::new(&mut region).unwrap();
        let q = QueueDriver::new(&mut region, &ind, config(Mfs::K16)).unwrap();
        fab.add_partition(lpar, &[ram.window()]).unwrap();
        fab.establish(lpar, 0, &q.params()).unwrap();
        fab.register_address(lpar, 0, v4(lpar, 0)).unwrap();
        drivers.push((q, ind));
    }
    drivers[0].0.prime(v4(2, 0), &[1, 2, 3]).unwrap();
    let r = fab.siga_write(1, 0, 1 << 31).unwrap();
    assert_eq!((r.delivered, r.interrupts), (1, 1));
    let seen = fab.platform().seen.lock().unwrap().clone();
    assert_eq!(seen, vec![Err(SigaError::Busy)]);
    assert_eq!(SigaError::Busy.condition_code() as u8, 2);
    assert_eq!(SigaError::Busy.busy_bit(), 0x8000_0000);
    assert_eq!(fab.counters_of(1, 0).unwrap().busy, 1);
    // Break the Arc cycle.
    drop(drivers);
}

#[test]
fn registration_refuses_duplicates_and_unknown_sources() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let a = Partition::new(&fab, 1, 1, config(Mfs::K16));
    let b = Partition::new(&fab, 2, 1, config(Mfs::K16));
    // The same LPAR.SUBCHANNEL again.
    let e = fab.establish(1, 0, &a.queues[0].params()).unwrap_err();
    assert_eq!((e, e.code()), (RegistrationError::DuplicateFound, 0xE005));
    // An address another partition owns, and one's own again.
    assert_eq!(
        fab.register_address(2, 0, v4(1, 0)),
        Err(RegistrationError::DuplicateFound)
    );
    assert_eq!(
        fab.register_address(1, 0, v6(1, 0)),
        Err(RegistrationError::DuplicateFound)
    );
    // A target for a queue set that is not registered.
    assert_eq!(
        fab.register_address(1, 7, v4(1, 7)),
        Err(RegistrationError::SourceNotRegistered)
    );
    // Addresses that cannot be unicast targets.
    for ip in [
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::",
        "ff02::1",
        "::ffff:10.0.0.1",
    ] {
        assert_eq!(
            fab.register_address(1, 0, ip.parse().unwrap()),
            Err(RegistrationError::InvalidAddress),
            "{ip}"
        );
    }
    // A partition id twice, and windows that overlap another partition's memory.
    assert_eq!(
        fab.add_partition(1, &[b.ram.window()]),
        Err(RegistrationError::DuplicateFound)
    );
    assert_eq!(
        fab.add_partition(3, &[b.ram.window()]),
        Err(RegistrationError::OverlappingWindows)
    );
    // Deregistering what is not there, or what another partition owns.
    assert_eq!(
        fab.deregister_address(2, 0, v4(1, 0)),
        Err(RegistrationError::NotFound)
    );
    assert_eq!(
        fab.deregister_queue_set(1, 9),
        Err(RegistrationError::NotFound)
    );
}

#[test]
fn full_tables_answer_table_full() {
    let fab = Arc::new(iqdio::Fabric::<TestPlatform, 2, 4>::new(
        TestPlatform::new(),
        FabricConfig::DEFAULT,
    ));
    let ram = GuestRam::new(PAGE + 3 * config(Mfs::K16).footprint());
    let mut region = ram.region();
    let ind = iqdio::driver::Indicators::new(&mut region).unwrap();
    let qs: Vec<_> = (0..3)
        .map(|s| {
            QueueDriver::new(
                &mut region,
                &ind,
                DriverConfig {
                    subchannel: s,
                    ..config(Mfs::K16)
                },
            )
            .unwrap()
        })
        .collect();
    fab.add_partition(1, &[ram.window()]).unwrap();
    fab.establish(1, 0, &qs[0].params()).unwrap();
    fab.establish(1, 1, &qs[1].params()).unwrap();
    let e = fab.establish(1, 2, &qs[2].params()).unwrap_err();
    assert_eq!((e, e.code()), (RegistrationError::TableFull, 0xE006));
    for i in 0..4 {
        fab.register_address(1, 0, v4(1, i)).unwrap();
    }
    assert_eq!(
        fab.register_address(1, 1, v4(1, 9)),
        Err(RegistrationError::TableFull)
    );
    assert_eq!(fab.address_count(), 4);
}

#[test]
fn establishing_checks_every_address_against_the_partition_memory() {
    use iqdio::QueueField;
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let a = Partition::new(&fab, 1, 1, config(Mfs::K16));
    fab.deregister_queue_set(1, 0).unwrap();
    let good = a.queues[0].params();
    let end = GUEST_BASE + a.ram.len() as u64;
    type Mutation = Box<dyn Fn(&mut iqdio::QueueSetParams)>;
    let cases: Vec<(Mutation, RegistrationError)> = vec![
        (
            Box::new(|p| p.output_sbals[5] = 0x1000),
            RegistrationError::OutsideMemory(QueueField::OutputSbal(5)),
        ),
        (
            Box::new(|p| p.input_sbals[127] += 8),
            RegistrationError::Misaligned(QueueField::InputSbal(127)),
        ),
        (
            Box::new(move |p| p.input_sbals[0] = end - 128),
            RegistrationError::Misaligned(QueueField::InputSbal(0)),
        ),
        (
            Box::new(move |p| p.output_sbals[0] = end),
            RegistrationError::OutsideMemory(QueueField::OutputSbal(0)),
        ),
        (
            Box::new(move |p| p.output_slsb = end - 64),
            RegistrationError::OutsideMemory(QueueField::OutputSlsb),
        ),
        (
            Box::new(|p| p.input_slsb = u64::MAX - 10),
            RegistrationError::OutsideMemory(QueueField::InputSlsb),
        ),
        (
            Box::new(move |p| p.queue_indicator = end),
            RegistrationError::OutsideMemory(QueueField::QueueIndicator),
        ),
        (
            Box::new(|p| p.middle_indicator = GUEST_BASE - 1),
            RegistrationError::OutsideMemory(QueueField::MiddleIndicator),
        ),
        (
            Box::new(|p| p.global_indicator = 0),
            RegistrationError::OutsideMemory(QueueField::GlobalIndicator),
        ),
    ];
    for (mutate, want) in cases {
        let mut p = good.clone();
        mutate(&mut p);
        assert_eq!(fab.establish(1, 0, &p), Err(want));
        assert!(
            fab.counters_of(1, 0).is_none(),
            "nothing registered after {want:?}"
        );
    }
    fab.establish(1, 0, &good).unwrap();
    assert!(a.ram.guards_intact());
}

#[test]
fn deregistration_while_others_send_loses_nothing_and_leaves_no_reference() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let cfg = DriverConfig {
        rx_buffers: 16,
        tx_buffers: 4,
        ..config(Mfs::K16)
    };
    let target = Partition::new(&fab, 4, 1, cfg);
    let stop = Arc::new(AtomicBool::new(false));
    let delivered = Arc::new(AtomicU64::new(0));
    let senders: Vec<_> = (1..=3u8)
        .map(|l| {
            let mut p = Partition::new(&fab, l, 1, cfg);
            let (fab, stop, delivered) = (fab.clone(), stop.clone(), delivered.clone());
            std::thread::spawn(move || {
                let port = fab.port(l);
                let mut seq = 0;
                let mut unreachable = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let dest = if seq % 2 == 0 { v4(4, 0) } else { v6(4, 0) };
                    match p.queues[0].send(&port, dest, &payload((l, 0), seq, 200)) {
                        Ok(()) => {
                            delivered.fetch_add(1, Ordering::SeqCst);
                            seq += 1;
                        }
                        Err(SendError::Refused(Reason::Unreachable)) => unreachable += 1,
                        Err(SendError::Refused(Reason::TargetFull)) => std::thread::yield_now(),
                        Err(e) => panic!("{e:?}"),
                    }
                }
                (p, unreachable)
            })
        })
        .collect();
    // The target keeps taking frames, and every so often deregisters its whole queue
    // set and establishes a fresh one (new driver over the same memory).
    let mut q = target.queues;
    let ram = target.ram;
    let mut received: u64 = 0;
    let mut cycles = 0;
    let mut old_handle = None;
    // A fixed number of cycles, not a deadline: on a loaded machine a cycle takes
    // longer, but every one completes (updates are preferred over sends).
    while cycles < 20 {
        for _ in 0..200 {
            while let Some(n) = q[0].receive(|f| assert!(check_payload(&vec_of(f)).is_some())) {
                received += n as u64;
            }
            std::thread::yield_now();
        }
        fab.deregister_queue_set(4, 0).unwrap();
        // Nothing can be delivered now: take what arrived before.
        while let Some(n) = q[0].receive(|_| {}) {
            received += n as u64;
        }
        if let Some(h) = old_handle {
            assert_eq!(fab.counters(&h), Err(RegistrationError::StaleHandle));
        }
        let mut region = ram.region();
        let ind = iqdio::driver::Indicators::new(&mut region).unwrap();
        q = vec![QueueDriver::new(&mut region, &ind, cfg).unwrap()];
        let h = fab.establish(4, 0, &q[0].params()).unwrap();
        fab.register_address(4, 0, v4(4, 0)).unwrap();
        fab.register_address(4, 0, v6(4, 0)).unwrap();
        old_handle = Some(h);
        cycles += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let mut unreachable = 0;
    for s in senders {
        let (p, u) = s.join().unwrap();
        assert!(p.ram.guards_intact());
        unreachable += u;
    }
    while let Some(n) = q[0].receive(|_| {}) {
        received += n as u64;
    }
    assert!(received > 0, "no frame arrived in {cycles} cycles");
    assert_eq!(
        received,
        delivered.load(Ordering::SeqCst),
        "frames lost or invented"
    );
    assert!(ram.guards_intact());
    eprintln!("{cycles} re-registrations, {received} frames, {unreachable} unreachable");
}

fn vec_of(f: &iqdio::driver::RxFrame<'_>) -> Vec<u8> {
    let mut v = vec![0; f.len()];
    f.copy_to(&mut v);
    v
}

#[test]
fn partitions_sending_to_each_other_at_once_do_not_deadlock() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let cfg = DriverConfig {
        rx_buffers: 8,
        tx_buffers: 8,
        ..config(Mfs::K16)
    };
    let parts: Vec<_> = (1..=2u8).map(|l| Partition::new(&fab, l, 1, cfg)).collect();
    const N: u32 = 20_000;
    let handles: Vec<_> = parts
        .into_iter()
        .map(|mut p| {
            let fab = fab.clone();
            std::thread::spawn(move || {
                let port = fab.port(p.lpar);
                let peer = 3 - p.lpar;
                let mut got = 0u32;
                let mut sent = 0u32;
                while sent < N || got < N {
                    if sent < N {
                        match p.queues[0].send(&port, v4(peer, 0), &payload((p.lpar, 0), sent, 64))
                        {
                            Ok(()) => sent += 1,
                            Err(SendError::Refused(Reason::TargetFull)) => {}
                            Err(e) => panic!("{e:?}"),
                        }
                    }
                    while let Some(n) = p.queues[0].receive(|_| {}) {
                        got += n as u32;
                    }
                }
                got
            })
        })
        .collect();
    let got = within(Duration::from_secs(60), move || {
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    assert_eq!(got, vec![N, N]);
}

#[test]
fn a_partition_sends_to_itself_and_between_its_own_subchannels() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 2, config(Mfs::K16));
    let port = fab.port(1);
    let d1 = payload((1, 0), 1, 3000);
    let d2 = payload((1, 0), 2, 3000);
    a.queues[0].send(&port, v4(1, 1), &d1).unwrap();
    a.queues[0].send(&port, v6(1, 0), &d2).unwrap();
    let (mut g0, mut g1) = (Vec::new(), Vec::new());
    drain(&mut a.queues[0], &mut g0);
    drain(&mut a.queues[1], &mut g1);
    assert_eq!((g0, g1), (vec![d2], vec![d1]));
}

#[test]
fn deregistering_one_address_stops_delivery_to_it_only() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, config(Mfs::K16));
    let mut b = Partition::new(&fab, 2, 1, config(Mfs::K16));
    let port = fab.port(1);
    fab.deregister_address(2, 0, v4(2, 0)).unwrap();
    assert_eq!(
        a.queues[0].send(&port, v4(2, 0), &[1]),
        Err(SendError::Refused(Reason::Unreachable))
    );
    a.queues[0].send(&port, v6(2, 0), &[2]).unwrap();
    let mut g = Vec::new();
    drain(&mut b.queues[0], &mut g);
    assert_eq!(g, vec![vec![2]]);
    // Another partition may now take the address.
    fab.register_address(1, 0, v4(2, 0)).unwrap();
    a.queues[0].send(&port, v4(2, 0), &[3]).unwrap();
    let mut ga = Vec::new();
    drain(&mut a.queues[0], &mut ga);
    assert_eq!(ga, vec![vec![3]]);
}

#[test]
fn removing_a_partition_deregisters_its_queue_sets() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, config(Mfs::K16));
    let b = Partition::new(&fab, 2, 2, config(Mfs::K16));
    fab.remove_partition(2).unwrap();
    assert_eq!(
        fab.remove_partition(2),
        Err(RegistrationError::UnknownPartition)
    );
    assert_eq!(
        a.queues[0].send(&fab.port(1), v4(2, 1), &[1]),
        Err(SendError::Refused(Reason::Unreachable))
    );
    assert_eq!(fab.address_count(), 2);
    assert_eq!(fab.siga_write(2, 0, 1 << 31), Err(SigaError::NotIqdio));
    // Its memory may now belong to a new partition.
    fab.add_partition(3, &[b.ram.window()]).unwrap();
}

#[test]
fn frame_payload_is_copied_exactly_at_every_offset_of_the_element_boundaries() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, config(Mfs::K24));
    let mut b = Partition::new(&fab, 2, 1, config(Mfs::K24));
    let port = fab.port(1);
    for len in (4096 - HEADER_SIZE - 3)..(4096 - HEADER_SIZE + 3) {
        let d = payload((1, 0), len as u32, len);
        a.queues[0].send(&port, v4(2, 0), &d).unwrap();
        let mut g = Vec::new();
        drain(&mut b.queues[0], &mut g);
        assert_eq!(g, vec![d], "len {len}");
    }
}

/// A configuration for a `static` fabric: `FabricConfig::new` is `const`.
const SEEDED: FabricConfig = FabricConfig::new([0x5eed, 0xf00d]);

#[test]
fn the_hash_seed_is_replaced_only_while_no_queue_set_exists() {
    let fab = fabric(TestPlatform::new(), SEEDED);
    assert_eq!(fab.config().hash_seed, [0x5eed, 0xf00d]);
    assert_eq!(
        fab.config().addresses_per_partition,
        FabricConfig::DEFAULT.addresses_per_partition
    );
    fab.set_hash_seed([7, 8]).unwrap();
    let mut a = Partition::new(&fab, 1, 1, config(Mfs::K16));
    let mut b = Partition::new(&fab, 2, 1, config(Mfs::K16));
    let e = fab.set_hash_seed([9, 10]).unwrap_err();
    assert_eq!((e, e.code()), (RegistrationError::SeedInUse, 0xF00E));
    // Lookups under the new seed find every address.
    a.queues[0].send(&fab.port(1), v6(2, 0), &[1; 50]).unwrap();
    b.queues[0].send(&fab.port(2), v4(1, 0), &[2; 60]).unwrap();
    let mut got = Vec::new();
    drain(&mut b.queues[0], &mut got);
    drain(&mut a.queues[0], &mut got);
    assert_eq!(got, vec![vec![1; 50], vec![2; 60]]);
    // Once every queue set is gone, the seed may change again.
    fab.remove_partition(1).unwrap();
    assert_eq!(
        fab.set_hash_seed([9, 10]),
        Err(RegistrationError::SeedInUse)
    );
    fab.remove_partition(2).unwrap();
    fab.set_hash_seed([9, 10]).unwrap();
}

/// `copy_from_partition` (a hypervisor reading a parameter block or a console line)
/// copies from inside the partition's window only: the whole window, its last byte,
/// and nothing that straddles an end, wraps, or belongs to an unknown partition.
#[test]
fn copy_from_partition_stays_inside_the_window() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let ram = GuestRam::new(4 * 4096);
    let base = ram.window().guest_base();
    let len = ram.len() as u64;
    fab.add_partition(1, &[ram.window()]).unwrap();
    ram.write(base + 100, b"hello");
    ram.write(base + len - 1, b"z");

    let mut five = [0u8; 5];
    assert_eq!(fab.copy_from_partition(1, base + 100, &mut five), Some(()));
    assert_eq!(&five, b"hello");
    let mut last = [0u8; 1];
    assert_eq!(
        fab.copy_from_partition(1, base + len - 1, &mut last),
        Some(())
    );
    assert_eq!(&last, b"z");
    let mut whole = vec![0u8; ram.len()];
    assert_eq!(fab.copy_from_partition(1, base, &mut whole), Some(()));

    let mut two = [7u8; 2];
    for addr in [base + len - 1, base.wrapping_sub(1), u64::MAX, base + len] {
        assert_eq!(
            fab.copy_from_partition(1, addr, &mut two),
            None,
            "{addr:#x}"
        );
        assert_eq!(two, [7, 7], "left untouched");
    }
    assert_eq!(
        fab.copy_from_partition(2, base, &mut two),
        None,
        "unknown partition"
    );
}

/// `Siga` returns what crosses a trap (condition code, busy bit): the driver retries a
/// busy SIGA a bounded number of times and then hands back exactly what it got; any
/// other condition code comes back at once. A fake SIGA (as a partition's trap to a
/// hypervisor would be) shows it.
#[test]
fn the_driver_acts_on_the_condition_code_and_busy_bit_alone() {
    use iqdio::driver::{Indicators, QueueDriver, SendError};
    use iqdio::{ConditionCode, SIGA_BUSY_BIT, Siga, SigaFunction, SigaStatus};
    use std::cell::Cell;

    struct Fake {
        answer: SigaStatus,
        calls: Cell<u32>,
    }
    impl Siga for Fake {
        fn siga(&self, _sch: u16, _f: SigaFunction, _mask: u32) -> SigaStatus {
            self.calls.set(self.calls.get() + 1);
            self.answer
        }
    }
    let ram = GuestRam::new(2 << 20);
    let mut region = ram.region();
    let ind = Indicators::new(&mut region).unwrap();
    let mut q = QueueDriver::new(&mut region, &ind, config(Mfs::K16)).unwrap();

    let busy = Fake {
        answer: SigaStatus {
            condition_code: ConditionCode::Cc2,
            busy: SIGA_BUSY_BIT,
        },
        calls: Cell::new(0),
    };
    assert_eq!(
        q.send(&busy, v4(2, 0), &[1; 40]),
        Err(SendError::Siga(busy.answer))
    );
    assert_eq!(busy.calls.get(), 1001, "the first try and 1000 retries");

    let not_active = Fake {
        answer: SigaStatus::of_error(SigaError::QueuesNotActive),
        calls: Cell::new(0),
    };
    q.prime(v4(2, 0), &[2; 40]).unwrap();
    assert_eq!(
        q.flush(&not_active).unwrap_err().condition_code,
        ConditionCode::Cc1
    );
    assert_eq!(not_active.calls.get(), 1, "cc1 is not retried");

    assert_eq!(
        SigaStatus::from(&Err::<(), _>(SigaError::Busy)),
        SigaStatus {
            condition_code: ConditionCode::Cc2,
            busy: SIGA_BUSY_BIT
        }
    );
    assert!(SigaStatus::from(&Ok::<_, SigaError>(())).is_done());
    assert!(!SigaStatus::of_error(SigaError::NotIqdio).is_busy());
}

/// A SIGA that ends cc0 before reaching the primed buffers (its partition was
/// suspended while it ran): the driver reports them pending, not refused, keeps them
/// primed for the next flush, and a send behind them answers busy rather than
/// pretending the queue moved.
#[test]
fn buffers_a_siga_did_not_reach_stay_pending() {
    use iqdio::driver::{Indicators, QueueDriver, SendError};
    use iqdio::qdio::SlsbState;
    use iqdio::{Siga, SigaFunction, SigaStatus};
    use std::cell::Cell;

    struct EndsEarly(Cell<u32>);
    impl Siga for EndsEarly {
        fn siga(&self, _sch: u16, _f: SigaFunction, _mask: u32) -> SigaStatus {
            self.0.set(self.0.get() + 1);
            SigaStatus::DONE
        }
    }
    let ram = GuestRam::new(2 << 20);
    let mut region = ram.region();
    let ind = Indicators::new(&mut region).unwrap();
    let mut q = QueueDriver::new(&mut region, &ind, config(Mfs::K16)).unwrap();
    let siga = EndsEarly(Cell::new(0));
    let a = q.prime(v4(2, 0), &[1; 40]).unwrap();
    let b = q.prime(v4(2, 0), &[2; 40]).unwrap();
    let r = q.flush(&siga).unwrap();
    assert_eq!((r.delivered, r.pending), (0, 2));
    assert!(r.refused.is_empty());
    assert_eq!(
        (q.output_state(a), q.output_state(b)),
        (SlsbState::OUTPUT_PRIMED, SlsbState::OUTPUT_PRIMED)
    );
    assert_eq!(q.free_tx(), config(Mfs::K16).tx_buffers - 2, "still in use");
    assert_eq!(
        q.send(&siga, v4(2, 0), &[3; 40]),
        Err(SendError::Siga(SigaStatus::of_error(SigaError::Busy)))
    );
    assert_eq!(
        siga.0.get(),
        2,
        "one flush each, no spinning on a queue that does not move"
    );
}
