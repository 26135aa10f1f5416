//! Model checking with loom (`cargo xtask loom`, i.e. `RUSTFLAGS="--cfg iqdio_loom" cargo
//! test --profile loom --test loom`). Under `cfg(iqdio_loom)` the table lock, the queue
//! locks, the fences and every atomic access to guest memory (SLSB bytes, indicator
//! bytes, SBALE words) are loom's (src/sync.rs), so loom explores the interleavings and
//! the weak-memory outcomes of the real fabric (`Fabric::siga`) and the real driver
//! (prime, poll, take), on tiny configurations:
//!
//! (a) registration and deregistration against a concurrent send, and a registration
//!     that a write-multiple lets in between its buffers;
//! (b) the fabric setting the completion vector against the receiver's reset-and-poll
//!     (whose reset reads first and writes only a byte it found set), and against a
//!     receiver that stops polling: the receiver either takes the frame, whole, or
//!     gets an interrupt, or finds the summary still set at its next poll;
//! (c) two partitions sending to each other at once: no deadlock;
//! (d) the completion queue: a pending buffer's delivery (at the sender's next SIGA or
//!     the tick) against the receiver's refill, delivered and completed exactly once;
//! (e) the same against the receiver's deregistration: exactly one completion, `aorc`
//!     0 (delivered) or 0x12 (not).
//!
//! Frame data is copied with plain memory copies, which loom does not see; its
//! visibility rides on the same SLSB Release/Acquire pairs as the SBALE words, which
//! loom does check.
#![cfg(iqdio_loom)]

mod common;

use std::sync::Arc;

use common::{GuestRam, PAGE, v4};
use iqdio::driver::{DriverConfig, Indicators, QueueDriver, SendError};
use iqdio::{Fabric, FabricConfig, InterruptDelivery, InterruptTarget, Mfs, Platform, Reason};
use loom::sync::atomic::{AtomicU32, Ordering};

#[derive(Default)]
struct LoomPlatform {
    raised: [AtomicU32; 4],
}

impl Platform for LoomPlatform {
    fn raise_interrupt(&self, t: InterruptTarget) -> InterruptDelivery {
        self.raised[usize::from(t.lpar)].fetch_add(1, Ordering::SeqCst);
        InterruptDelivery::Delivered
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
    let mut builder = loom::model::Builder::new();
    // Every atomic access to guest memory is a branch point, and the set-up alone
    // (SLSBs, armed SBALEs) makes several hundred of them.
    builder.max_branches = 20_000;
    builder.check(move || {
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
    ind: Indicators,
    q: QueueDriver,
}

fn cfg(tx_buffers: u8) -> DriverConfig {
    DriverConfig {
        rx_buffers: 2,
        tx_buffers,
        ..DriverConfig::new(0, Mfs::K16)
    }
}

fn part(fab: &LoomFabric, lpar: u8) -> Part {
    part_with(fab, lpar, 1)
}

fn part_with(fab: &LoomFabric, lpar: u8, tx_buffers: u8) -> Part {
    let cfg = cfg(tx_buffers);
    let ram = GuestRam::new(PAGE + cfg.footprint());
    let mut region = ram.region();
    let ind = Indicators::new(&mut region).unwrap();
    let q = QueueDriver::new(&mut region, &ind, cfg).unwrap();
    fab.add_partition(lpar, &[ram.window()]).unwrap();
    fab.establish(lpar, 0, &q.params()).unwrap();
    fab.register_address(lpar, 0, v4(lpar, 0)).unwrap();
    Part { _ram: ram, ind, q }
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

/// The receiver's queue set deregistered during a send (after a first, `warm`, send
/// when `hinted`, so that this one takes the hinted entry): the send delivers before
/// the deregistration, or finds its target gone; the counters the deregistration
/// hands back agree, and nothing is left behind.
fn deregistration_against_a_send(hinted: bool) {
    model(move || {
        let fab = new_fabric();
        let mut a = part(&fab, 1);
        let mut b = part(&fab, 2);
        let before = if hinted {
            warm(&fab, &mut a, &mut b);
            1
        } else {
            0
        };
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
            Ok(()) => assert!(got && last.frames_received == before + 1),
            // After it: unreachable, nothing delivered, nothing left behind.
            Err(SendError::Refused(Reason::Unreachable)) => {
                assert!(!got && last.frames_received == before)
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

/// The receiver's address registered during a send (the hinted entry when `hinted`,
/// as above): delivered when the send saw it, unreachable when not.
fn registration_against_a_send(hinted: bool) {
    model(move || {
        let fab = new_fabric();
        let mut a = part(&fab, 1);
        let mut b = part(&fab, 2);
        if hinted {
            warm(&fab, &mut a, &mut b);
        }
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
fn deregistration_against_a_concurrent_send() {
    deregistration_against_a_send(false);
}

#[test]
fn registration_against_a_concurrent_send() {
    registration_against_a_send(false);
}

/// A first send, taken by the receiver: it leaves the sender's send hint at its
/// queue control, so that the sender's next SIGA takes the hinted entry (its outbound
/// lock pins the tables: no reader count), which the models below run against updates.
fn warm(fab: &LoomFabric, a: &mut Part, b: &mut Part) {
    a.q.send(&fab.port(1), v4(2, 0), &[7]).unwrap();
    assert_eq!(b.q.receive(|_| {}), Some(1));
}

/// The same deregistration against a hinted send: the update takes and releases the
/// sender's outbound lock before it writes, so the send either ends before the update
/// or sees it waiting and takes the counted entry after it.
#[test]
fn deregistration_against_a_concurrent_hinted_send() {
    deregistration_against_a_send(true);
}

/// The sender's own queue set deregistered during its hinted SIGA: the SIGA either
/// delivers before the update, or finds its queue set gone (the hint, now stale, is
/// checked against the tables), as a counted SIGA would; never a frame from a queue
/// set that is no longer there.
#[test]
fn a_hinted_send_against_the_deregistration_of_its_queue_set() {
    model(|| {
        let fab = new_fabric();
        let mut a = part(&fab, 1);
        let mut b = part(&fab, 2);
        warm(&fab, &mut a, &mut b);
        let f = fab.clone();
        let sender = loom::thread::spawn(move || {
            let r = a.q.send(&f.port(1), v4(2, 0), &[4]);
            (r, a)
        });
        let last = fab.deregister_queue_set(1, 0).unwrap();
        let (r, mut a) = sender.join().unwrap();
        let got = b.q.receive(|_| {}).is_some();
        match r {
            Ok(()) => assert!(got && last.frames_sent == 2),
            Err(SendError::Siga(_)) => assert!(!got && last.frames_sent == 1),
            Err(e) => panic!("unexpected {e:?}"),
        }
        // The stale hint answers as the counted entry does.
        assert!(matches!(
            a.q.send(&fab.port(1), v4(2, 0), &[5]),
            Err(SendError::Siga(_)) | Err(SendError::Driver(_))
        ));
    });
}

/// The same registration against a hinted send.
#[test]
fn registration_against_a_concurrent_hinted_send() {
    registration_against_a_send(true);
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

/// What the receiver got: the packet of every frame it took.
fn take_all(p: &mut Part) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while p
        .q
        .receive(|f| {
            let mut v = vec![0; f.len()];
            f.copy_to(&mut v);
            got.push(v);
        })
        .is_some()
    {}
    got
}

/// One model run of (b): partitions 1 → 2, the sender with `tx_buffers` output
/// buffers, the receiver's summary left pending by an earlier frame it took without
/// resetting its bytes if `pending`. The sender sends `frames` in a row on a thread
/// of its own while the receiver polls once, high → low, each byte reset before the
/// work it announces is looked at. Returns what the poll took, whether an interrupt
/// was raised for the receiver since, and the receiver.
fn poll_against_sends(
    pending: bool,
    tx_buffers: u8,
    frames: &'static [&'static [u8]],
) -> (Vec<Vec<u8>>, bool, Part) {
    let fab = new_fabric();
    let mut a = part_with(&fab, 1, tx_buffers);
    let mut b = part(&fab, 2);
    if pending {
        a.q.send(&fab.port(1), v4(2, 0), &[7]).unwrap();
        assert_eq!(take_all(&mut b), vec![vec![7]]);
    }
    let raised_before = fab.platform().raised[2].load(Ordering::SeqCst);
    let f = fab.clone();
    let sender = loom::thread::spawn(move || {
        for frame in frames {
            a.q.send(&f.port(1), v4(2, 0), frame).unwrap();
        }
        a
    });
    b.ind.take();
    b.q.take_initiative();
    let got = take_all(&mut b);
    let _a = sender.join().unwrap();
    let raised = fab.platform().raised[2].load(Ordering::SeqCst) > raised_before;
    (got, raised, b)
}

/// The receiver polls high → low with the real driver while the real fabric delivers:
/// it either finds the frame, whole (the SBALEs it reads through 0x82 are the ones the
/// fabric wrote), or the fabric raised an interrupt for it. With the summary idle, and
/// with it left pending by earlier work that the receiver took without resetting it.
#[test]
fn reset_and_poll_never_loses_initiative() {
    for pending in [false, true] {
        model(move || {
            let (got, raised, _b) = poll_against_sends(pending, 1, &[&[1, 2, 3]]);
            match got.as_slice() {
                [] => assert!(raised, "the receiver would sleep on a frame"),
                [frame] => assert_eq!(frame, &[1, 2, 3]),
                more => panic!("unexpected frames {more:?}"),
            }
        });
    }
}

/// The receiver's poll reads each indicator byte before it resets it and writes
/// nothing when it reads 0 (`IndicatorByte::reset`). One poll against two sends in a
/// row: every frame the poll did not take is still announced, by an interrupt raised
/// since, or by the global summary byte left set for the next poll. A poll that read
/// 0 while the first send's set was already in the byte must not turn the second
/// send's "summary pending, no interrupt" into a lost wake-up. With the summary idle,
/// and left pending by earlier work.
#[test]
fn a_poll_that_reads_zero_writes_nothing_and_loses_nothing() {
    for pending in [false, true] {
        model(move || {
            let (got, raised, b) = poll_against_sends(pending, 2, &[&[1], &[2]]);
            let frames: Vec<&[u8]> = got.iter().map(Vec::as_slice).collect();
            match frames.as_slice() {
                [[1], [2]] => {}
                [] | [[1]] => assert!(
                    raised || b.ind.pending(),
                    "a frame neither taken nor announced: {got:?}"
                ),
                more => panic!("unexpected frames {more:?}"),
            }
        });
    }
}

/// One model run: a receiver that polls takes a frame, then stops polling while the
/// real fabric delivers another. With `resets`, its poll reset the indicator bytes
/// high → low before taking; without, it left them set and resets them only to go
/// idle, before `stop_polling`. Either the re-check finds the work, or the fabric,
/// having seen 0x80 (and the summary idle), raised an interrupt; the frame is whole.
fn stop_polling_against_a_send(resets: bool) {
    let fab = new_fabric();
    let mut a = part(&fab, 1);
    let mut b = part(&fab, 2);
    b.q.start_polling();
    a.q.send(&fab.port(1), v4(2, 0), &[7]).unwrap();
    if resets {
        b.ind.take();
        b.q.take_initiative();
    }
    assert_eq!(take_all(&mut b), vec![vec![7]]);
    assert_eq!(b.ind.pending(), !resets, "the bytes left set, or reset");
    let raised_before = fab.platform().raised[2].load(Ordering::SeqCst);
    let f = fab.clone();
    let sender = loom::thread::spawn(move || {
        a.q.send(&f.port(1), v4(2, 0), &[9, 9]).unwrap();
        a
    });
    if !resets {
        b.ind.take();
        b.q.take_initiative();
    }
    let work = b.q.stop_polling();
    let _a = sender.join().unwrap();
    let raised = fab.platform().raised[2].load(Ordering::SeqCst) > raised_before;
    assert!(work || raised, "a send was neither found nor announced");
    assert_eq!(take_all(&mut b), vec![vec![9, 9]]);
}

/// A receiver that stops polling (the real driver's 0x81 → 0x80 and re-check) while
/// the real fabric delivers: either the re-check finds the work or the fabric, having
/// seen 0x80, raised an interrupt.
#[test]
fn stopping_polling_never_loses_initiative() {
    model(|| stop_polling_against_a_send(true));
}

/// The same for a receiver that polled without resetting its bytes (they stay set, as
/// under Linux's NAPI) and resets them high → low to go idle. Without the summary's
/// reset, a delivery after the 0x80 finds it pending and raises nothing: this test
/// fails.
#[test]
fn a_poller_that_left_its_bytes_set_goes_idle_without_losing_initiative() {
    model(|| stop_polling_against_a_send(false));
}

/// A write-multiple steps out of a waiting registration's way between its two
/// buffers and comes back to the same queue set: every interleaving delivers both
/// buffers, in order, and the registration completes.
#[test]
fn a_write_multiple_lets_a_registration_in_between_buffers() {
    model(|| {
        let fab = new_fabric();
        let mut a = part_with(&fab, 1, 2);
        let mut b = part(&fab, 2);
        a.q.prime(v4(2, 0), &[1]).unwrap();
        a.q.prime(v4(2, 0), &[2]).unwrap();
        let f = fab.clone();
        let sender = loom::thread::spawn(move || {
            let r = a.q.flush(&f.port(1)).unwrap();
            (r, a)
        });
        fab.register_address(2, 0, v4(2, 1)).unwrap();
        let (r, _a) = sender.join().unwrap();
        assert_eq!(r.delivered, 2);
        assert_eq!(take_all(&mut b), vec![vec![1], vec![2]]);
        assert_eq!(fab.address_count(), 3);
    });
}

/// The receiver re-arms a buffer (its SBALEs, then 0x41) while the fabric looks for
/// an empty one: the fabric either finds the queue full or fills the buffer through
/// the SBALEs the receiver wrote (never stale ones, which would read as a buffer too
/// small for the frame).
#[test]
fn a_buffer_rearmed_during_a_send_is_filled_or_found_full() {
    model(|| {
        let fab = new_fabric();
        let mut a = part(&fab, 1);
        let mut b = part(&fab, 2);
        // Two input buffers armed, both filled: the queue is full.
        a.q.send(&fab.port(1), v4(2, 0), &[1]).unwrap();
        a.q.send(&fab.port(1), v4(2, 0), &[2]).unwrap();
        let f = fab.clone();
        let sender = loom::thread::spawn(move || {
            let r = a.q.send(&f.port(1), v4(2, 0), &[3]);
            (r, a)
        });
        // Takes the first buffer, which re-arms the one after the two in use.
        let mut first = Vec::new();
        b.q.receive(|fr| {
            let mut v = vec![0; fr.len()];
            fr.copy_to(&mut v);
            first.push(v);
        });
        let (r, _a) = sender.join().unwrap();
        assert_eq!(first, vec![vec![1]]);
        let rest = take_all(&mut b);
        match r {
            Ok(()) => assert_eq!(rest, vec![vec![2], vec![3]]),
            Err(SendError::Refused(Reason::TargetFull)) => assert_eq!(rest, vec![vec![2]]),
            Err(e) => panic!("unexpected {e:?}"),
        }
    });
}

/// A partition whose queue set has a completion queue (SIGA WRITEQ on queue 0).
fn part_cq(fab: &LoomFabric, lpar: u8) -> Part {
    let cfg = DriverConfig {
        completion_queue: true,
        ..cfg(2)
    };
    let ram = GuestRam::new(PAGE + cfg.footprint());
    let mut region = ram.region();
    let ind = Indicators::new(&mut region).unwrap();
    let q = QueueDriver::new(&mut region, &ind, cfg).unwrap();
    fab.add_partition(lpar, &[ram.window()]).unwrap();
    fab.establish(lpar, 0, &q.params()).unwrap();
    fab.register_address(lpar, 0, v4(lpar, 0)).unwrap();
    Part { _ram: ram, ind, q }
}

/// Sender 1 (completion queue) and receiver 2 (two input buffers), the receiver full
/// and frame [3] pending at the fabric for it.
fn one_pending() -> (Arc<LoomFabric>, Part, Part) {
    let fab = new_fabric();
    let mut a = part_cq(&fab, 1);
    let b = part(&fab, 2);
    for k in 1..=3u8 {
        a.q.send(&fab.port(1), v4(2, 0), &[k]).unwrap();
    }
    assert_eq!(a.q.pending_tx(), 1, "the third frame waits");
    (fab, a, b)
}

/// The completions the sender takes: their `aorc` codes.
fn completions(p: &mut Part) -> Vec<u8> {
    let mut v = Vec::new();
    p.q.complete(|c| v.push(c.aorc));
    v
}

/// (d) Pending delivery against the receiver's refill: the receiver takes a buffer
/// (which re-arms one, 0x41) while the fabric looks for room for the pending buffer,
/// at the sender's next SIGA or at the tick. Either sees the 0x41 or not; after a
/// final tick the frame is delivered exactly once and completed exactly once with
/// `aorc` 0.
#[test]
fn pending_delivery_against_the_receivers_refill() {
    for by_siga in [false, true] {
        model(move || {
            let (fab, mut a, mut b) = one_pending();
            let f = fab.clone();
            let looker = loom::thread::spawn(move || {
                if by_siga {
                    // The sender's next SIGA, with no new buffer: pending ones first.
                    f.siga_write(1, 0, 1 << 31).unwrap();
                } else {
                    f.expire_delays();
                }
            });
            let mut first = Vec::new();
            b.q.receive(|fr| {
                let mut v = vec![0; fr.len()];
                fr.copy_to(&mut v);
                first.push(v);
            });
            looker.join().unwrap();
            fab.expire_delays();
            assert_eq!(first, vec![vec![1]]);
            assert_eq!(take_all(&mut b), vec![vec![2], vec![3]]);
            assert_eq!(completions(&mut a), vec![0]);
            // Once: nothing more, even after another tick.
            fab.expire_delays();
            assert!(completions(&mut a).is_empty());
            assert!(take_all(&mut b).is_empty());
            assert_eq!(a.q.pending_tx(), 0);
        });
    }
}

/// (e) Pending delivery against the receiver's deregistration: the tick tries the
/// pending buffer (the receiver has room) while the receiver deregisters. Exactly one
/// completion: `aorc` 0 and the frame in the receiver's buffer, or 0x12 and not; never
/// both, never none.
#[test]
fn pending_delivery_against_deregistration_of_the_receiver() {
    model(|| {
        let (fab, mut a, mut b) = one_pending();
        // Room again: the first buffer taken and one re-armed.
        assert_eq!(b.q.receive(|_| {}), Some(1));
        let f = fab.clone();
        let tick = loom::thread::spawn(move || {
            f.expire_delays();
        });
        fab.deregister_queue_set(2, 0).unwrap();
        tick.join().unwrap();
        fab.expire_delays();
        let codes = completions(&mut a);
        let got = take_all(&mut b);
        match codes.as_slice() {
            [0] => assert_eq!(got, vec![vec![2], vec![3]]),
            [0x12] => assert_eq!(got, vec![vec![2]]),
            other => panic!("completions {other:?}, frames {got:?}"),
        }
        fab.expire_delays();
        assert!(completions(&mut a).is_empty());
        assert_eq!(a.q.pending_tx(), 0);
    });
}
