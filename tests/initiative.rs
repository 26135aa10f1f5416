//! The completion vector and the interrupt decision, end to end through the fabric:
//! interrupts are raised exactly when the decision says so.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use iqdio::driver::{DriverConfig, SendError};
use iqdio::{FabricConfig, Mfs, Reason};

const DELAY: u64 = 1_000_000;

fn setup() -> (TestPlatform, Arc<TestFabric>, Partition, Partition) {
    let platform = TestPlatform::manual();
    let fab = fabric(
        platform.clone(),
        FabricConfig {
            mfs: Mfs::K16,
            interrupt_delay_ns: DELAY,
            ..FabricConfig::DEFAULT
        },
    );
    let cfg = DriverConfig {
        rx_buffers: 32,
        ..config(Mfs::K16)
    };
    let a = Partition::new(&fab, 1, 1, cfg);
    let b = Partition::new(&fab, 2, 1, cfg);
    (platform, fab, a, b)
}

#[test]
fn interrupts_follow_the_decision_step_by_step() {
    let (platform, fab, mut a, mut b) = setup();
    let port = fab.port(1);
    let send = |a: &mut Partition| a.queues[0].send(&port, v4(2, 0), &[0xAB; 40]).unwrap();
    let counters = |fab: &TestFabric| {
        let c = fab.counters_of(2, 0).unwrap();
        (c.interrupts_raised, c.interrupts_suppressed)
    };

    // Idle receiver: the summary goes idle -> pending, an interrupt is raised.
    platform.set_clock(10);
    send(&mut a);
    assert_eq!(platform.raised(2), 1);
    assert_eq!(counters(&fab), (1, 0));
    assert!(b.indicators.pending(), "global summary byte set");

    // The receiver has not reset its summary: it will poll, no interrupt.
    platform.set_clock(10 + DELAY - 1);
    send(&mut a);
    assert_eq!(platform.raised(2), 1);
    assert_eq!(counters(&fab), (1, 1));

    // Pending for the whole delay: the fallback fires, once.
    platform.set_clock(10 + DELAY);
    send(&mut a);
    assert_eq!(platform.raised(2), 2);
    send(&mut a);
    assert_eq!(
        platform.raised(2),
        2,
        "restamped: no second fallback at once"
    );
    assert_eq!(counters(&fab), (2, 2));

    // The receiver polls high -> low, resetting each byte first, and drains.
    assert!(b.indicators.take());
    assert!(b.queues[0].take_initiative());
    assert!(!b.indicators.take(), "reset");
    let mut n = 0;
    while let Some(k) = b.queues[0].receive(|_| {}) {
        n += k;
    }
    assert_eq!(n, 4);
    // Idle again: the next delivery interrupts.
    send(&mut a);
    assert_eq!(platform.raised(2), 3);

    // A polling receiver (newest consumed buffer 0x81) is not interrupted, even with
    // an idle summary.
    b.queues[0].start_polling();
    while b.queues[0].receive(|_| {}).is_some() {}
    assert!(b.indicators.take());
    send(&mut a);
    assert_eq!(platform.raised(2), 3);
    assert_eq!(counters(&fab), (3, 3));

    // Stopping polling re-checks and finds the frame that raised no interrupt.
    assert!(b.queues[0].stop_polling(), "work arrived while polling");
    assert!(b.indicators.take());
    assert!(b.queues[0].take_initiative());
    while b.queues[0].receive(|_| {}).is_some() {}
    assert!(!b.queues[0].stop_polling());
    send(&mut a);
    assert_eq!(platform.raised(2), 4, "not polling any more: interrupt");

    // The override: every delivery interrupts.
    fab.set_interrupt_immediately(2, 0, true).unwrap();
    for _ in 0..3 {
        send(&mut a);
    }
    assert_eq!(platform.raised(2), 7);
    fab.set_interrupt_immediately(2, 0, false).unwrap();
    send(&mut a);
    assert_eq!(platform.raised(2), 7);
    let (raised, suppressed) = counters(&fab);
    assert_eq!(raised, platform.raised(2));
    assert_eq!(raised + suppressed, 11, "one decision per delivery");
    assert_eq!(platform.raised(1), 0, "the sender is never interrupted");
}

#[test]
fn the_delay_fallback_also_fires_from_the_timer_without_a_send() {
    let (platform, fab, mut a, _b) = setup();
    platform.set_clock(100);
    a.queues[0].send(&fab.port(1), v6(2, 0), &[1]).unwrap();
    assert_eq!(platform.raised(2), 1);
    platform.set_clock(100 + DELAY - 1);
    assert_eq!(fab.expire_delays(), 0);
    platform.set_clock(100 + DELAY);
    assert_eq!(fab.expire_delays(), 1);
    assert_eq!(fab.expire_delays(), 0, "restamped");
    assert_eq!(platform.raised(2), 2);
}

#[test]
fn a_receiver_that_polls_forever_gets_at_most_one_interrupt_per_delay() {
    let (platform, fab, mut a, mut b) = setup();
    let port = fab.port(1);
    b.queues[0].start_polling();
    let mut clock = 0;
    let mut sent = 0u64;
    let mut by_timer = 0;
    for round in 0..40u64 {
        for _ in 0..5 {
            clock += DELAY / 10;
            platform.set_clock(clock);
            match a.queues[0].send(&port, v4(2, 0), &[round as u8; 8]) {
                Ok(()) => sent += 1,
                Err(SendError::Refused(Reason::TargetFull)) => {}
                Err(e) => panic!("{e:?}"),
            }
        }
        // Takes frames (leaving 0x81 set) but never resets its indicator bytes.
        while b.queues[0].receive(|_| {}).is_some() {}
        // The embedding's periodic timer runs the fallback.
        by_timer += fab.expire_delays() as u64;
    }
    let elapsed_delays = clock / DELAY;
    let raised = platform.raised(2);
    assert!(sent >= 150);
    // Only the first delivery (summary idle, no buffer consumed yet) interrupted; a
    // delivery to a polling queue whose summary is pending raises none.
    assert_eq!(raised - by_timer, 1);
    assert!(by_timer >= 1, "the timer's fallback wakes it");
    assert!(
        raised <= elapsed_delays + 1,
        "{raised} interrupts in {elapsed_delays} delays"
    );
}

/// A poller that leaves its bytes set (as the streaming benchmark's receiver and
/// Linux's NAPI poll do) goes idle by resetting them high -> low before it stops
/// polling. Each step of that sequence is needed: a queue byte left set makes
/// `stop_polling` report work, and a summary left set keeps the next delivery from
/// interrupting until the fallback.
#[test]
fn a_poller_that_left_its_bytes_set_resets_them_to_sleep() {
    let (platform, fab, mut a, mut b) = setup();
    let port = fab.port(1);
    let send = |a: &mut Partition| a.queues[0].send(&port, v4(2, 0), &[5; 20]).unwrap();
    platform.set_clock(10);
    b.queues[0].start_polling();
    for _ in 0..20 {
        send(&mut a);
        assert_eq!(b.queues[0].receive(|f| assert_eq!(f.len(), 20)), Some(1));
    }
    // The first delivery found no consumed buffer at 0x81 yet: it interrupted. None
    // since.
    assert_eq!(platform.raised(2), 1, "no interrupt after the first");
    assert!(b.indicators.pending(), "the bytes were left set");

    // Skipping the resets: the queue byte reads as work.
    assert!(b.queues[0].stop_polling(), "queue byte left set");
    // Resetting the queue byte but not the summary: no work, yet the next delivery
    // finds the summary pending and raises nothing; the receiver would sleep on it
    // until the fallback.
    assert!(b.queues[0].take_initiative());
    assert!(!b.queues[0].stop_polling());
    send(&mut a);
    assert_eq!(platform.raised(2), 1, "summary left pending: no interrupt");
    platform.set_clock(10 + DELAY);
    send(&mut a);
    assert_eq!(platform.raised(2), 2, "only the fallback wakes it");
    while b.queues[0].receive(|_| {}).is_some() {}

    // The sequence: start polling again, take frames leaving the bytes set, then reset
    // high -> low, stop polling (no work), and the next delivery interrupts at once.
    b.queues[0].start_polling();
    send(&mut a);
    assert_eq!(b.queues[0].receive(|_| {}), Some(1));
    assert_eq!(platform.raised(2), 2);
    assert!(b.indicators.take(), "summary and middle byte were set");
    assert!(b.queues[0].take_initiative(), "queue byte was set");
    assert!(!b.queues[0].stop_polling(), "nothing waiting");
    send(&mut a);
    assert_eq!(platform.raised(2), 3, "idle summary: interrupt at once");
}

#[test]
fn a_sleeping_receiver_is_woken_for_every_frame_it_must_take() {
    // Real clock; the receiver sleeps until its interrupt and must never miss one.
    let platform = TestPlatform::new();
    let fab = fabric(platform.clone(), FabricConfig::DEFAULT);
    let cfg = DriverConfig {
        rx_buffers: 16,
        ..config(Mfs::K16)
    };
    let mut a = Partition::new(&fab, 1, 1, cfg);
    let mut b = Partition::new(&fab, 2, 1, cfg);
    const N: u32 = 5_000;
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let platform = platform.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut got = 0u32;
            let mut sleeps = 0u32;
            while got < N {
                let seen = platform.raised(2);
                // High -> low, each byte reset before the work it announces.
                if b.indicators.take() {
                    b.queues[0].take_initiative();
                }
                while let Some(n) = b.queues[0].receive(|_| {}) {
                    got += n as u32;
                }
                if got == N {
                    break;
                }
                let now = platform.wait(2, seen, Duration::from_secs(10));
                assert!(
                    now > seen || b.queues[0].has_input(),
                    "lost wake-up after {got} frames"
                );
                sleeps += 1;
            }
            done.store(true, Ordering::SeqCst);
            (got, sleeps)
        })
    };
    let port = fab.port(1);
    let mut sent = 0;
    while sent < N {
        match a.queues[0].send(&port, v4(2, 0), &sent.to_le_bytes()) {
            Ok(()) => sent += 1,
            Err(SendError::Refused(Reason::TargetFull)) => std::thread::yield_now(),
            Err(e) => panic!("{e:?}"),
        }
    }
    let (got, sleeps) = within(Duration::from_secs(60), move || receiver.join().unwrap());
    assert_eq!(got, N);
    let c = fab.counters_of(2, 0).unwrap();
    assert_eq!(c.interrupts_raised, platform.raised(2));
    assert!(u64::from(sleeps) <= c.interrupts_raised + 1);
    assert_eq!(
        c.interrupts_raised + c.interrupts_suppressed,
        c.sbals_received
    );
}

/// Issue 9, defect 9: the fallback's stamp belongs to the summary byte, which every
/// queue set of a partition shares, not to one queue set.
#[test]
fn the_fallback_runs_from_when_the_summary_went_pending_across_queue_sets() {
    let platform = TestPlatform::manual();
    let fab = fabric(
        platform.clone(),
        FabricConfig {
            mfs: Mfs::K16,
            interrupt_delay_ns: DELAY,
            ..FabricConfig::DEFAULT
        },
    );
    let cfg = DriverConfig {
        rx_buffers: 8,
        ..config(Mfs::K16)
    };
    let mut a = Partition::new(&fab, 1, 1, cfg);
    // Two queue sets of one receiver: one global summary byte, one middle byte.
    let b = Partition::new(&fab, 2, 2, cfg);
    let port = fab.port(1);
    let mut send = |sch: u16| {
        a.queues[0]
            .send(&port, v4(2, sch), &[sch as u8; 16])
            .unwrap()
    };

    // Late enough that a stamp of 0 (a queue set that never stamped) looks expired.
    let t0 = 10 * DELAY;
    platform.set_clock(t0);
    send(0);
    assert_eq!(platform.raised(2), 1, "idle -> pending raises");
    assert!(b.indicators.pending());

    // The second queue set's first delivery finds the summary pending: no interrupt,
    // although that queue set has never stamped anything.
    platform.set_clock(t0 + DELAY / 2);
    send(1);
    assert_eq!(
        platform.raised(2),
        1,
        "pending summary: the receiver will poll"
    );
    platform.set_clock(t0 + DELAY - 1);
    send(1);
    send(0);
    assert_eq!(
        platform.raised(2),
        1,
        "within the delay since the summary went pending"
    );

    // The delay since the *summary* went pending is up: the fallback fires once, for
    // whichever queue set gets there first, and the other one sees it restamped.
    platform.set_clock(t0 + DELAY);
    send(1);
    assert_eq!(platform.raised(2), 2);
    send(0);
    assert_eq!(platform.raised(2), 2, "one fallback per summary and delay");
    let c0 = fab.counters_of(2, 0).unwrap();
    let c1 = fab.counters_of(2, 1).unwrap();
    assert_eq!((c0.interrupts_raised, c1.interrupts_raised), (1, 1));
    assert_eq!(c0.interrupts_suppressed + c1.interrupts_suppressed, 4);

    // The timer's fallback shares the stamp too: nothing until a delay after the last
    // firing, then one interrupt for the summary, not one per queue set.
    platform.set_clock(t0 + 2 * DELAY - 1);
    assert_eq!(fab.expire_delays(), 0);
    platform.set_clock(t0 + 2 * DELAY);
    assert_eq!(fab.expire_delays(), 1);
    assert_eq!(fab.expire_delays(), 0);
    assert_eq!(platform.raised(2), 3);
    let r = fab.try_expire_delays();
    assert_eq!((r.raised, r.skipped, r.table_busy), (0, 0, false));
}
