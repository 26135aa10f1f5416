//! Model checking with loom (`cargo xtask loom`, i.e. `RUSTFLAGS="--cfg iqdio_loom" cargo test
//! --release --test loom`). Under `cfg(iqdio_loom)` the table lock and the queue locks are
//! loom's (src/sync.rs), so loom explores every interleaving of them:
//!
//! (a) registration and deregistration against a concurrent send;
//! (b) the fabric setting the completion vector against the receiver's reset-and-poll,
//!     and against a receiver that stops polling: the receiver either sees the frame
//!     or gets an interrupt;
//! (c) two partitions sending to each other at once: no deadlock.
#![cfg(iqdio_loom)]

mod common;

use std::sync::Arc;

use common::{GuestRam, PAGE, v4};
use iqdio::driver::{DriverConfig, Indicators, QueueDriver, SendError};
use iqdio::initiative::{self, DecisionInput, IndicatorByte, decide};
use iqdio::{Fabric, FabricConfig, InterruptTarget, Mfs, Platform, Reason};
use loom::sync::atomic::{AtomicU8, AtomicU32, Ordering};

#[derive(Default)]
struct LoomPlatform {
    raised: [AtomicU32; 4],
}

impl Platform for LoomPlatform {
    fn raise_interrupt(&self, t: InterruptTarget) {
        self.raised[usize::from(t.lpar)].fetch_add(1, Ordering::SeqCst);
    }
    fn now_ns(&self) -> u64 {
        0
    }
}

type LoomFabric = Fabric<LoomPlatform, 4, 4>;

/// `loom::model`, with the body on a model thread whose stack has room for a fabric
/// (`Fabric::new` returns it by value).
fn model<F: Fn() + Sync + Send + 'static>(f: F) {
    let f = Arc::new(f);
    loom::model(move || {
        let f = f.clone();
        loom::thread::Builder::new()
            .stack_size(32 << 20)
            .spawn(move || f())
            .unwrap()
            .join()
            .unwrap();
    });
}

struct Part {
    _ram: GuestRam,
    _ind: Indicators,
    q: QueueDriver,
}

fn cfg() -> DriverConfig {
    DriverConfig {
        rx_buffers: 2,
        tx_buffers: 1,
        ..DriverConfig::new(0, Mfs::K16)
    }
}

fn part(fab: &LoomFabric, lpar: u8) -> Part {
    let ram = GuestRam::new(PAGE + cfg().footprint());
    let mut region = ram.region();
    let ind = Indicators::new(&mut region).unwrap();
    let q = QueueDriver::new(&mut region, &ind, cfg()).unwrap();
    fab.add_partition(lpar, &[ram.window()]).unwrap();
    fab.establish(lpar, 0, &q.params()).unwrap();
    fab.register_address(lpar, 0, v4(lpar, 0)).unwrap();
    Part {
        _ram: ram,
        _ind: ind,
        q,
    }
}

fn new_fabric() -> Arc<LoomFabric> {
    Arc::new(Fabric::new(
        LoomPlatform::default(),
        FabricConfig {
            mfs: Mfs::K16,
            interrupt_delay_ns: u64::MAX,
            ..FabricConfig::DEFAULT
        },
    ))
}

#[test]
fn deregistration_against_a_concurrent_send() {
    model(|| {
        let fab = new_fabric();
        let mut a = part(&fab, 1);
        let mut b = part(&fab, 2);
        let f = fab.clone();
        let sender = loom::thread::spawn(move || {
            let r = a.q.send(&f.port(1), v4(2, 0), &[1, 2, 3]);
            (r, a)
        });
        let last = fab.deregister_queue_set(2, 0).unwrap();
        let (r, a) = sender.join().unwrap();
        let got = b.q.receive(|_| {}).is_some();
        match r {
            // Delivered before the deregistration: the receiver has it, and the
            // counters it got back say so.
            Ok(()) => assert!(got && last.frames_received == 1),
            // After it: unreachable, nothing delivered, nothing left behind.
            Err(SendError::Refused(Reason::Unreachable)) => {
                assert!(!got && last.frames_received == 0)
            }
            Err(e) => panic!("unexpected {e:?}"),
        }
        // Every primed buffer ends 0xA1 or 0xAF.
        let s = a.q.output_state(0).0;
        assert!(s == 0xA1 || s == 0xAF);
        assert_eq!(
            fab.address_count(),
            1,
            "only the sender's own address remains"
        );
    });
}

#[test]
fn registration_against_a_concurrent_send() {
    model(|| {
        let fab = new_fabric();
        let mut a = part(&fab, 1);
        let mut b = part(&fab, 2);
        fab.deregister_address(2, 0, v4(2, 0)).unwrap();
        let f = fab.clone();
        let sender = loom::thread::spawn(move || a.q.send(&f.port(1), v4(2, 0), &[9]));
        fab.register_address(2, 0, v4(2, 0)).unwrap();
        let r = sender.join().unwrap();
        let got = b.q.receive(|_| {}).is_some();
        match r {
            Ok(()) => assert!(got),
            Err(SendError::Refused(Reason::Unreachable)) => assert!(!got),
            Err(e) => panic!("unexpected {e:?}"),
        }
    });
}

#[test]
fn two_partitions_sending_to_each_other_do_not_deadlock() {
    model(|| {
        let fab = new_fabric();
        let mut a = part(&fab, 1);
        let mut b = part(&fab, 2);
        let f = fab.clone();
        let t = loom::thread::spawn(move || {
            let r = a.q.send(&f.port(1), v4(2, 0), &[1]);
            (r, a)
        });
        let rb = b.q.send(&fab.port(2), v4(1, 0), &[2]);
        let (ra, mut a) = t.join().unwrap();
        assert_eq!((ra, rb), (Ok(()), Ok(())));
        assert_eq!(a.q.receive(|_| {}), Some(1));
        assert_eq!(b.q.receive(|_| {}), Some(1));
    });
}

/// A completion-vector byte on loom's atomics.
struct Byte(AtomicU8);

impl Byte {
    fn new(v: u8) -> Self {
        Self(AtomicU8::new(v))
    }
}

impl IndicatorByte for Byte {
    fn set(&self) {
        self.0.store(initiative::INDICATOR_SET, Ordering::Release);
    }
    fn swap_set(&self) -> bool {
        self.0.swap(initiative::INDICATOR_SET, Ordering::AcqRel) != 0
    }
    fn reset(&self) -> bool {
        self.0.swap(0, Ordering::AcqRel) != 0
    }
    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire) != 0
    }
}

struct Vector {
    slsb: AtomicU8,
    ack: AtomicU8,
    queue: Byte,
    middle: Byte,
    global: Byte,
}

/// The fabric's side as `Fabric::fill` and `Fabric::signal` run it: 0x82 (Release),
/// the bytes low → high, the polling check, the decision. Returns whether it raised.
fn deliver(v: &Vector) -> bool {
    v.slsb.store(0x82, Ordering::Release);
    let seen = initiative::signal(&v.queue, &v.middle, &v.global, || {
        v.ack.load(Ordering::Relaxed) == 0x81
    });
    decide(&DecisionInput {
        interrupt_immediately: false,
        summary_was_pending: seen.summary_was_pending,
        pending_since_ns: 0,
        now_ns: 0,
        delay_ns: u64::MAX,
        receiver_polling: seen.receiver_polling,
    })
    .raises()
}

fn vector(global: u8, ack: u8) -> Arc<Vector> {
    Arc::new(Vector {
        slsb: AtomicU8::new(0x41),
        ack: AtomicU8::new(ack),
        queue: Byte::new(0),
        middle: Byte::new(global),
        global: Byte::new(global),
    })
}

#[test]
fn reset_and_poll_never_loses_initiative() {
    // With the summary idle, and with it left pending from earlier work.
    for initial in [0, 1] {
        model(move || {
            let v = vector(initial, 0x80);
            let f = v.clone();
            let fabric = loom::thread::spawn(move || deliver(&f));
            // The receiver: high -> low, each byte reset before the work is looked at.
            initiative::take(&v.global, &v.middle);
            v.queue.reset();
            let saw_frame = v.slsb.load(Ordering::Acquire) == 0x82;
            let raised = fabric.join().unwrap();
            assert!(saw_frame || raised, "the receiver would sleep on a frame");
        });
    }
}

#[test]
fn stopping_polling_never_loses_initiative() {
    model(|| {
        // The receiver polls: its newest consumed buffer reads 0x81, summary reset.
        let v = vector(0, 0x81);
        let f = v.clone();
        let fabric = loom::thread::spawn(move || deliver(&f));
        let work = initiative::stop_polling(
            || v.ack.store(0x80, Ordering::Relaxed),
            || v.queue.is_set() || v.slsb.load(Ordering::Acquire) == 0x82,
        );
        let raised = fabric.join().unwrap();
        assert!(
            work || raised,
            "a send that saw 0x81 left the receiver asleep"
        );
    });
}
