//! The driver's completion-queue mode (issue 11 item 3, `DriverConfig::completion_queue`):
//! the driver lays out the completion queue and the QAOBs, sends on its unicast queues
//! with SIGA WRITEQ (one buffer per SIGA), keeps a PENDING buffer's data until its QAOB
//! completes while its SBAL is reused, takes the completion queue and reports each
//! completion, and never has more buffers pending than the fabric holds.

mod common;

use std::cell::RefCell;

use common::*;
use iqdio::driver::{Completion, DriverConfig, DriverError, Indicators, QueueDriver, SendError};
use iqdio::qdio::{SlsbState, qaob};
use iqdio::{FabricConfig, Mfs, PENDING_PER_QUEUE_SET, Reason, Siga, SigaFunction, SigaStatus};

fn cq_config() -> DriverConfig {
    DriverConfig {
        completion_queue: true,
        // The receiver's ring is small, so it fills.
        rx_buffers: 2,
        tx_buffers: 16,
        ..config(Mfs::K16)
    }
}

/// A SIGA that records every call (function, mask, QAOB address) it passes on.
struct Recording<'a, S: Siga> {
    inner: &'a S,
    calls: RefCell<Vec<(SigaFunction, u32, u64)>>,
}

impl<'a, S: Siga> Recording<'a, S> {
    fn new(inner: &'a S) -> Self {
        Self {
            inner,
            calls: RefCell::new(Vec::new()),
        }
    }

    fn take(&self) -> Vec<(SigaFunction, u32, u64)> {
        std::mem::take(&mut self.calls.borrow_mut())
    }
}

impl<S: Siga> Siga for Recording<'_, S> {
    fn siga(&self, subchannel: u16, function: SigaFunction, queue_mask: u32) -> SigaStatus {
        self.calls.borrow_mut().push((function, queue_mask, 0));
        self.inner.siga(subchannel, function, queue_mask)
    }

    fn siga_writeq(&self, subchannel: u16, queue_mask: u32, qaob: u64) -> SigaStatus {
        self.calls
            .borrow_mut()
            .push((SigaFunction::WriteQ, queue_mask, qaob));
        self.inner.siga_writeq(subchannel, queue_mask, qaob)
    }
}

/// Sender (lpar 1, completion queue) and receiver (lpar 2, two input buffers).
fn pair() -> (std::sync::Arc<TestFabric>, Partition, Partition) {
    let f = fabric(TestPlatform::manual(), FabricConfig::default());
    let a = Partition::new(&f, 1, 1, cq_config());
    let b = Partition::new(
        &f,
        2,
        1,
        DriverConfig {
            rx_buffers: 2,
            ..config(Mfs::K16)
        },
    );
    (f, a, b)
}

fn take_all(q: &mut QueueDriver) -> Vec<Completion> {
    let mut v = Vec::new();
    q.complete(|c| v.push(*c));
    v
}

/// The sequence numbers of the frames waiting at `q`, each payload checked.
fn received(q: &mut QueueDriver) -> Vec<u32> {
    let mut frames = Vec::new();
    drain(q, &mut frames);
    frames
        .iter()
        .map(|p| check_payload(p).expect("intact payload").1)
        .collect()
}

#[test]
fn the_driver_establishes_a_completion_queue_and_sends_with_writeq() {
    let (f, mut a, mut b) = pair();
    assert!(a.queues[0].params().completion_queue.is_some());
    assert!(a.queues[0].uses_writeq(0));
    let port = f.port(1);
    let siga = Recording::new(&port);
    let q = &mut a.queues[0];
    q.send(&siga, v4(2, 0), &payload((1, 0), 0, 100)).unwrap();
    let n = q.last_primed();
    assert_eq!(
        siga.take(),
        [(SigaFunction::WriteQ, 1 << 31, q.qaob_address(0, n).unwrap())]
    );
    assert_eq!(q.output_state(n), SlsbState::OUTPUT_EMPTY);
    assert_eq!(received(&mut b.queues[0]), [0]);
    // A flush of several primed buffers: one WRITEQ each, each with its own QAOB.
    for seq in 1..4 {
        q.prime(v4(2, 0), &payload((1, 0), seq, 64)).unwrap();
    }
    let r = q.flush(&siga).unwrap();
    let calls = siga.take();
    assert_eq!(calls.len(), 3);
    assert!(calls.iter().all(|c| c.0 == SigaFunction::WriteQ));
    let qaobs: std::collections::HashSet<_> = calls.iter().map(|c| c.2).collect();
    assert_eq!(qaobs.len(), 3);
    // Two input buffers at the receiver, one taken again above: two fit, one waits.
    assert_eq!((r.delivered, r.went_pending.as_slice()), (2, &[2u8][..]));
    assert!(r.refused.is_empty());
    assert_eq!(q.pending_tx(), 1);
}

#[test]
fn a_pending_buffer_keeps_its_data_while_its_sbal_is_reused_and_completes() {
    let (f, mut a, mut b) = pair();
    let port = f.port(1);
    let q = &mut a.queues[0];
    // Two fit, the third goes pending.
    for seq in 0..3 {
        q.send(&port, v4(2, 0), &payload((1, 0), seq, 200)).unwrap();
    }
    let pending = q.last_primed();
    assert_eq!(q.output_state(pending), SlsbState::OUTPUT_PENDING);
    assert_eq!(q.cq_counters().pending, 1);
    let qaob_addr = q.qaob_address(0, pending).unwrap();
    assert_eq!(a.ram.read_vec(qaob_addr + qaob::SB_COUNT as u64, 1)[0], 1);
    // The SBAL is reused at once (16 slots, so the next buffer has another slot).
    q.prime(v4(2, 0), &payload((1, 0), 3, 200)).unwrap();
    assert_eq!(q.last_primed(), (pending + 1) % 128);
    // The receiver drains and re-arms; the tick delivers the pending buffer.
    assert_eq!(received(&mut b.queues[0]), [0, 1]);
    f.expire_delays();
    let c = take_all(q);
    assert_eq!(
        c,
        [Completion {
            queue: 0,
            buffer: pending,
            aorc: 0
        }]
    );
    assert!(c[0].delivered() && c[0].reason().is_none());
    assert_eq!(q.pending_tx(), 0);
    let k = q.cq_counters();
    assert_eq!((k.pending, k.completed, k.completed_with_error), (1, 1, 0));
    assert_eq!(k.cq_buffers, 1);
    // The primed buffer goes next, after the pending one: order kept.
    q.flush(&port).unwrap();
    assert_eq!(received(&mut b.queues[0]), [2, 3]);
    // Nothing more to take; the completion queue buffer is armed again.
    assert!(!q.has_completions());
    assert_eq!(take_all(q), []);
}

#[test]
fn a_held_slot_is_not_primed_again_until_it_completes() {
    let f = fabric(TestPlatform::manual(), FabricConfig::default());
    let mut a = Partition::new(
        &f,
        1,
        1,
        DriverConfig {
            tx_buffers: 2,
            ..cq_config()
        },
    );
    let mut b = Partition::new(
        &f,
        2,
        1,
        DriverConfig {
            rx_buffers: 2,
            ..config(Mfs::K16)
        },
    );
    let port = f.port(1);
    let q = &mut a.queues[0];
    for seq in 0..4 {
        q.send(&port, v4(2, 0), &payload((1, 0), seq, 64)).unwrap();
    }
    // Buffers 2 and 3 (slots 0 and 1) are pending: no slot is free.
    assert_eq!(q.pending_tx(), 2);
    assert_eq!(
        q.prime(v4(2, 0), &payload((1, 0), 4, 64)),
        Err(DriverError::NoFreeBuffer)
    );
    assert_eq!(received(&mut b.queues[0]), [0, 1]);
    f.expire_delays();
    let c = take_all(q);
    assert_eq!(c.iter().map(|c| c.buffer).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(received(&mut b.queues[0]), [2, 3]);
    // Slot 0 is free again: buffer 4 takes it.
    q.send(&port, v4(2, 0), &payload((1, 0), 4, 64)).unwrap();
    assert_eq!(q.output_state(4), SlsbState::OUTPUT_EMPTY);
    assert_eq!(received(&mut b.queues[0]), [4]);
}

#[test]
fn the_driver_never_has_more_pending_than_the_fabric_holds() {
    let (f, mut a, _b) = pair();
    let port = f.port(1);
    let q = &mut a.queues[0];
    let mut sent = 0;
    let err = loop {
        match q.send(&port, v4(2, 0), &payload((1, 0), sent, 64)) {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
    };
    // Two delivered, PENDING_PER_QUEUE_SET pending, then the driver stops: no 0x10.
    assert_eq!(err, SendError::Driver(DriverError::PendingFull));
    assert_eq!(sent as usize, 2 + PENDING_PER_QUEUE_SET);
    assert_eq!(q.pending_tx(), PENDING_PER_QUEUE_SET);
    let c = f.counters_of(1, 0).unwrap();
    assert_eq!(c.errors_total(), 0);
    // Priming counts too: primed and pending together stay within the capacity.
    assert_eq!(
        q.prime(v4(2, 0), &payload((1, 0), 99, 64)),
        Err(DriverError::PendingFull)
    );
}

#[test]
fn deregistering_the_receiver_completes_with_0x12_and_frees_the_data() {
    let (f, mut a, _b) = pair();
    let port = f.port(1);
    let q = &mut a.queues[0];
    for seq in 0..4 {
        q.send(&port, v4(2, 0), &payload((1, 0), seq, 64)).unwrap();
    }
    assert_eq!(q.pending_tx(), 2);
    f.deregister_queue_set(2, 0).unwrap();
    let c = take_all(q);
    assert_eq!(c.len(), 2);
    assert!(
        c.iter()
            .all(|c| !c.delivered() && c.reason() == Some(Reason::TargetNotActive))
    );
    let k = q.cq_counters();
    assert_eq!((k.completed, k.completed_with_error), (0, 2));
    assert_eq!(q.pending_tx(), 0);
}

#[test]
fn completions_arrive_with_the_senders_initiative_and_interrupt() {
    let platform = TestPlatform::manual();
    let f = fabric(platform.clone(), FabricConfig::default());
    let mut a = Partition::new(&f, 1, 1, cq_config());
    let mut b = Partition::new(
        &f,
        2,
        1,
        DriverConfig {
            rx_buffers: 2,
            ..config(Mfs::K16)
        },
    );
    let port = f.port(1);
    for seq in 0..3 {
        a.queues[0]
            .send(&port, v4(2, 0), &payload((1, 0), seq, 64))
            .unwrap();
    }
    // Clear what the sends left at the sender (nothing: it received nothing).
    a.indicators.take();
    a.queues[0].take_initiative();
    let before = platform.raised(1);
    received(&mut b.queues[0]);
    f.expire_delays();
    // The fabric signalled the sender high to low and raised its interrupt.
    assert!(a.indicators.take());
    assert!(a.queues[0].take_initiative());
    assert!(platform.raised(1) > before);
    assert!(a.queues[0].has_completions());
    assert_eq!(take_all(&mut a.queues[0]).len(), 1);
    // Polling: a completion waiting keeps stop_polling from letting the caller sleep.
    a.queues[0].start_polling();
    a.queues[0]
        .send(&port, v4(2, 0), &payload((1, 0), 3, 64))
        .unwrap();
    a.queues[0]
        .send(&port, v4(2, 0), &payload((1, 0), 4, 64))
        .unwrap();
    a.queues[0]
        .send(&port, v4(2, 0), &payload((1, 0), 5, 64))
        .unwrap();
    received(&mut b.queues[0]);
    f.expire_delays();
    a.queues[0].take_initiative();
    assert!(a.queues[0].stop_polling());
}

#[test]
fn a_bogus_completion_entry_is_counted_not_trusted() {
    let (f, mut a, mut b) = pair();
    let port = f.port(1);
    let q = &mut a.queues[0];
    for seq in 0..3 {
        q.send(&port, v4(2, 0), &payload((1, 0), seq, 64)).unwrap();
    }
    received(&mut b.queues[0]);
    f.expire_delays();
    // The fabric posted the one QAOB in completion-queue buffer 0; a second entry
    // naming a QAOB that is not pending, and one outside the QAOBs, are written over
    // its terminator (the program's own memory, which anything could have written).
    let p = q.params().completion_queue.unwrap();
    let sbal = p.sbals[0];
    let held = q.qaob_address(0, 5).unwrap();
    let entry = |e: u64, addr: u64| {
        let mut bytes = [0u8; 16];
        bytes[8..].copy_from_slice(&addr.to_be_bytes());
        a.ram.write(sbal + 16 * e, &bytes);
    };
    entry(1, held);
    entry(2, held + 8);
    entry(3, 0);
    let c = take_all(q);
    assert_eq!(c.len(), 1);
    assert_eq!(q.cq_counters().bad_entries, 2);
}

#[test]
fn the_multicast_queue_keeps_write_and_the_footprint_holds_the_completion_queue() {
    let cfg = DriverConfig {
        output_queues: 2,
        ..cq_config()
    };
    let ram = GuestRam::new(PAGE + cfg.footprint());
    let mut region = ram.region();
    let ind = Indicators::new(&mut region).unwrap();
    let q = QueueDriver::new(&mut region, &ind, cfg).unwrap();
    assert!(q.uses_writeq(0));
    assert!(!q.uses_writeq(1));
    assert!(q.qaob_address(1, 0).is_none());
    // Every QAOB 256-aligned and inside the window.
    let end = GUEST_BASE + ram.len() as u64;
    for n in 0..16 {
        let a = q.qaob_address(0, n).unwrap();
        assert_eq!(a % 256, 0);
        assert!((GUEST_BASE..end).contains(&(a + 255)));
    }
    // Without a completion queue nothing of it is laid out or sent.
    let plain = DriverConfig {
        completion_queue: false,
        ..cfg
    };
    assert!(plain.footprint() < cfg.footprint());
    let ram = GuestRam::new(PAGE + plain.footprint());
    let mut region = ram.region();
    let ind = Indicators::new(&mut region).unwrap();
    let q = QueueDriver::new(&mut region, &ind, plain).unwrap();
    assert!(!q.uses_writeq(0) && q.params().completion_queue.is_none());
    assert_eq!(q.cq_counters(), Default::default());
}

#[test]
fn a_siga_that_cannot_carry_the_qaob_fails_the_send_without_losing_the_frame() {
    /// Passes plain SIGAs on, has no WRITEQ (the trait's default: cc1).
    struct NoWriteq<'a, S: Siga>(&'a S);
    impl<S: Siga> Siga for NoWriteq<'_, S> {
        fn siga(&self, subchannel: u16, function: SigaFunction, queue_mask: u32) -> SigaStatus {
            self.0.siga(subchannel, function, queue_mask)
        }
    }
    let (f, mut a, mut b) = pair();
    let port = f.port(1);
    let q = &mut a.queues[0];
    let e = q
        .send(&NoWriteq(&port), v4(2, 0), &payload((1, 0), 0, 64))
        .unwrap_err();
    assert!(matches!(e, SendError::Siga(s) if !s.is_done() && !s.is_busy()));
    // Still primed: the next send through a SIGA that has WRITEQ sends it first.
    q.send(&port, v4(2, 0), &payload((1, 0), 1, 64)).unwrap();
    assert_eq!(received(&mut b.queues[0]), [0, 1]);
}

#[test]
fn frames_delivered_from_pending_count_as_sent() {
    let (f, mut a, mut b) = pair();
    let port = f.port(1);
    for seq in 0..3 {
        a.queues[0]
            .send(&port, v4(2, 0), &payload((1, 0), seq, 64))
            .unwrap();
    }
    received(&mut b.queues[0]);
    f.expire_delays();
    assert_eq!(take_all(&mut a.queues[0]).len(), 1);
    let sent = f.counters_of(1, 0).unwrap().frames_sent;
    let got = f.counters_of(2, 0).unwrap().frames_received;
    assert_eq!((sent, got), (3, 3));
}
