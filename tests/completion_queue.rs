//! The completion queue (issue 11 item 3), driven with raw queues as Linux's qeth lays
//! them out: SIGA WRITEQ to a full receiver leaves the buffer PENDING (0xA3) with its
//! elements recorded in the QAOB; once the receiver has room (seen at the sender's
//! next SIGA, or at the `expire_delays` tick) the fabric delivers it, writes `aorc`
//! and posts the QAOB's address on the sender's completion queue. Deregistering
//! either side completes what it concerns with an error.

mod common;

use common::raw::*;
use common::{GUEST_BASE, TestFabric, TestPlatform, fabric, v4};
use iqdio::qdio::{L3Header, Reason, Sbale, qaob};
use iqdio::{FabricConfig, PENDING_PER_QUEUE_SET, SigaError, SigaFunction};

fn world(cq: bool) -> (std::sync::Arc<TestFabric>, Raw, Raw) {
    let f = fabric(TestPlatform::manual(), FabricConfig::default());
    let a = Raw::new(&f, 1, Mode { cq, layer2: false });
    let b = Raw::new(&f, 2, Mode::default());
    f.register_address(1, 0, v4(1, 0)).unwrap();
    f.register_address(2, 0, v4(2, 0)).unwrap();
    (f, a, b)
}

#[test]
fn writeq_to_a_full_receiver_goes_pending_and_completes_through_the_qaob() {
    let (f, a, b) = world(true);
    for n in 0..2 {
        b.arm_input(n);
    }
    for n in 0..4 {
        a.prime(n, v4(2, 0), 0x10 + n as u8, 100 + n);
    }
    for n in 0..4 {
        let r = f.siga_writeq(1, 0, Q0, a.qaob(n)).unwrap();
        assert_eq!(r.buffers, 1);
    }
    // Two fit; two wait, PENDING, recorded in their QAOBs.
    assert_eq!(
        (0..4).map(|n| a.slsb(OUT_SLSB, n)).collect::<Vec<_>>(),
        [0xA1, 0xA1, 0xA3, 0xA3]
    );
    for n in 2..4 {
        let q = a.qaob_bytes(n);
        assert_eq!(q[qaob::SB_COUNT], 1);
        let sba = u64::from_be_bytes(q[qaob::SBA..qaob::SBA + 8].try_into().unwrap());
        assert_eq!(sba, g(TX_DATA) + SLOT * n as u64);
        let dcount = u16::from_be_bytes(q[qaob::DCOUNT..qaob::DCOUNT + 2].try_into().unwrap());
        assert_eq!(usize::from(dcount), 32 + 100 + n);
    }
    let c = f.counters_of(1, 0).unwrap();
    assert_eq!((c.pending, c.completed, c.errors_total()), (2, 0, 0));
    // Linux scrubs and reuses the SBAL at once: the fabric must not need it.
    for e in 0..16 {
        a.set_element(OUT_SBALS, 2, e, &Sbale::default());
        a.set_element(OUT_SBALS, 3, e, &Sbale::default());
    }
    // The receiver drains and re-arms; the fabric does not see that yet.
    assert_eq!((b.received_tag(0), b.received_tag(1)), (0x10, 0x11));
    for n in 2..4 {
        b.arm_input(n);
    }
    // The completion queue gets an empty buffer; the tick delivers.
    a.set_slsb(CQ_SLSB, 0, 0x41);
    // try_expire_delays (interrupt context) takes no lock it would wait for, so it
    // does not deliver; expire_delays (thread context) does, both in order, in one
    // completion-queue buffer.
    assert_eq!(f.try_expire_delays().completed, 0);
    assert_eq!(b.slsb(IN_SLSB, 2), 0x41);
    f.expire_delays();
    assert_eq!((b.slsb(IN_SLSB, 2), b.slsb(IN_SLSB, 3)), (0x82, 0x82));
    assert_eq!((b.received_tag(2), b.received_tag(3)), (0x12, 0x13));
    assert_eq!(a.slsb(CQ_SLSB, 0), 0x82);
    assert_eq!(a.completions(0), [a.qaob(2), a.qaob(3)]);
    for n in 2..4 {
        assert_eq!(a.qaob_bytes(n)[qaob::AORC], 0, "aorc of buffer {n}");
    }
    let c = f.counters_of(1, 0).unwrap();
    assert_eq!((c.pending, c.completed, c.completed_with_error), (2, 2, 0));
    // The sender's own initiative was signalled (its queue byte set).
    assert_ne!(a.ram.read_vec(g(IND), 1)[0], 0);
}

#[test]
fn the_senders_next_siga_delivers_its_pending_buffers_first_and_in_order() {
    let (f, a, b) = world(true);
    b.arm_input(0);
    a.set_slsb(CQ_SLSB, 0, 0x41);
    for n in 0..3 {
        a.prime(n, v4(2, 0), 0x20 + n as u8, 64);
        f.siga_writeq(1, 0, Q0, a.qaob(n)).unwrap();
    }
    assert_eq!(a.slsb(OUT_SLSB, 2), 0xA3);
    // Room for two more: the next WRITEQ first delivers the two pending, then its own
    // buffer finds the receiver full again and waits behind nothing.
    b.arm_input(1);
    b.arm_input(2);
    a.prime(3, v4(2, 0), 0x23, 64);
    let r = f.siga_writeq(1, 0, Q0, a.qaob(3)).unwrap();
    assert_eq!(r.completed, 2);
    assert_eq!(r.pending, 1);
    assert_eq!(
        (b.received_tag(0), b.received_tag(1), b.received_tag(2)),
        (0x20, 0x21, 0x22)
    );
    assert_eq!(a.completions(0), [a.qaob(1), a.qaob(2)]);
    assert_eq!(a.slsb(OUT_SLSB, 3), 0xA3);
}

#[test]
fn a_later_buffer_waits_behind_a_pending_one_to_the_same_receiver() {
    let (f, a, b) = world(true);
    a.prime(0, v4(2, 0), 0x30, 64);
    f.siga_writeq(1, 0, Q0, a.qaob(0)).unwrap();
    assert_eq!(a.slsb(OUT_SLSB, 0), 0xA3);
    // The receiver has room now, but the fabric has not looked: the next buffer goes
    // after the pending one, not ahead of it.
    b.arm_input(0);
    b.arm_input(1);
    a.prime(1, v4(2, 0), 0x31, 64);
    f.siga_writeq(1, 0, Q0, a.qaob(1)).unwrap();
    assert_eq!((b.received_tag(0), b.received_tag(1)), (0x30, 0x31));
}

#[test]
fn beyond_the_pending_capacity_a_full_receiver_is_refused_synchronously() {
    let (f, a, _b) = world(true);
    for n in 0..PENDING_PER_QUEUE_SET + 1 {
        a.prime(n, v4(2, 0), n as u8, 64);
        f.siga_writeq(1, 0, Q0, a.qaob(n)).unwrap();
    }
    for n in 0..PENDING_PER_QUEUE_SET {
        assert_eq!(a.slsb(OUT_SLSB, n), 0xA3);
    }
    let n = PENDING_PER_QUEUE_SET;
    assert_eq!(a.slsb(OUT_SLSB, n), 0xAF);
    assert_eq!(
        a.element(OUT_SBALS, n, 15).sflags,
        Reason::TargetFull.code()
    );
}

#[test]
fn a_full_completion_queue_holds_completions_until_it_has_room() {
    let (f, a, b) = world(true);
    a.prime(0, v4(2, 0), 0x40, 64);
    f.siga_writeq(1, 0, Q0, a.qaob(0)).unwrap();
    b.arm_input(0);
    // No completion-queue buffer armed: delivered, but the completion waits.
    f.expire_delays();
    assert_eq!(b.received_tag(0), 0x40);
    assert_eq!(a.slsb(CQ_SLSB, 0), 0x00);
    let c = f.counters_of(1, 0).unwrap();
    assert!(c.cq_full >= 1);
    assert_eq!(c.completed, 0);
    a.set_slsb(CQ_SLSB, 0, 0x41);
    f.expire_delays();
    assert_eq!(a.completions(0), [a.qaob(0)]);
    assert_eq!(f.counters_of(1, 0).unwrap().completed, 1);
    // Delivered once only.
    assert_eq!(b.slsb(IN_SLSB, 1), 0x00);
}

#[test]
fn deregistering_the_receiver_completes_what_waits_for_it_with_0x12() {
    let (f, a, _b) = world(true);
    a.set_slsb(CQ_SLSB, 0, 0x41);
    for n in 0..2 {
        a.prime(n, v4(2, 0), n as u8, 64);
        f.siga_writeq(1, 0, Q0, a.qaob(n)).unwrap();
    }
    f.deregister_queue_set(2, 0).unwrap();
    assert_eq!(a.completions(0), [a.qaob(0), a.qaob(1)]);
    for n in 0..2 {
        assert_eq!(a.qaob_bytes(n)[qaob::AORC], Reason::TargetNotActive.code());
    }
    let c = f.counters_of(1, 0).unwrap();
    assert_eq!((c.completed, c.completed_with_error), (0, 2));
}

#[test]
fn deregistering_the_sender_completes_its_pending_buffers_with_0x15() {
    let (f, a, b) = world(true);
    a.set_slsb(CQ_SLSB, 0, 0x41);
    a.prime(0, v4(2, 0), 1, 64);
    f.siga_writeq(1, 0, Q0, a.qaob(0)).unwrap();
    let last = f.deregister_queue_set(1, 0).unwrap();
    assert_eq!(last.completed_with_error, 1);
    assert_eq!(a.completions(0), [a.qaob(0)]);
    assert_eq!(a.qaob_bytes(0)[qaob::AORC], Reason::Cancelled.code());
    // Nothing reaches the receiver afterwards, even once it has room.
    b.arm_input(0);
    f.expire_delays();
    assert_eq!(b.slsb(IN_SLSB, 0), 0x41);
}

#[test]
fn a_bad_qaob_refuses_the_buffer_with_0x2a() {
    let (f, a, _b) = world(true);
    for (n, bad) in [g(QAOBS) + 8, GUEST_BASE + RAM as u64, 0]
        .into_iter()
        .enumerate()
    {
        a.prime(n, v4(2, 0), 1, 64);
        f.siga_writeq(1, 0, Q0, bad).unwrap();
        assert_eq!(a.slsb(OUT_SLSB, n), 0xAF);
        assert_eq!(
            a.element(OUT_SBALS, n, 15).sflags,
            Reason::QaobInvalid.code()
        );
    }
}

#[test]
fn a_rewritten_qaob_completes_with_an_error_not_a_wild_access() {
    let (f, a, b) = world(true);
    a.set_slsb(CQ_SLSB, 0, 0x41);
    a.prime(0, v4(2, 0), 1, 64);
    f.siga_writeq(1, 0, Q0, a.qaob(0)).unwrap();
    // The program points the recorded element outside its memory.
    let at = a.qaob(0) + qaob::SBA as u64;
    a.ram.write(at, &0xFFFF_FFFF_0000u64.to_be_bytes());
    b.arm_input(0);
    f.expire_delays();
    assert_eq!(
        a.qaob_bytes(0)[qaob::AORC],
        Reason::AddressOutsideMemory.code()
    );
    assert_eq!(b.slsb(IN_SLSB, 0), 0x41, "nothing delivered");
    assert!(a.ram.guards_intact() && b.ram.guards_intact());
}

#[test]
fn writeq_needs_a_completion_queue_and_one_unicast_queue() {
    let (f, a, _b) = world(false);
    a.prime(0, v4(2, 0), 1, 64);
    assert_eq!(
        f.siga_writeq(1, 0, Q0, a.qaob(0)),
        Err(SigaError::InvalidFunction)
    );
    let (f, a, _b) = world(true);
    a.prime(0, v4(2, 0), 1, 64);
    // Queue 1 is the multicast queue (two queues); both queues at once is not one.
    assert_eq!(
        f.siga_writeq(1, 0, Q1, a.qaob(0)),
        Err(SigaError::InvalidQueueMask)
    );
    assert_eq!(
        f.siga_writeq(1, 0, Q0 | Q1, a.qaob(0)),
        Err(SigaError::InvalidQueueMask)
    );
    // The raw entry a hypervisor decodes (function code 4, QAOB in a register).
    let r = f
        .siga_aob(1, 0, SigaFunction::WriteQ.code(), Q0, a.qaob(0))
        .unwrap();
    assert_eq!((r.delivered, r.pending), (0, 1), "receiver full: pending");
    assert_eq!(a.slsb(OUT_SLSB, 0), 0xA3);
}

/// A WRITEQ naming a QAOB that is still on the sender's pending list: the second
/// buffer's record would overwrite the first's in the shared QAOB, and both pending
/// entries would deliver the second buffer's elements (the first's frames lost, the
/// second's twice). The fabric refuses the second buffer at once with 0x2A, writes
/// nothing into the QAOB, and delivers the buffer the QAOB belongs to as before. Until
/// its completion is posted the QAOB stays in flight: refused also when the receiver
/// has room and the pending buffer was delivered but the completion queue was full.
#[test]
fn a_writeq_naming_a_qaob_still_pending_is_refused_with_0x2a() {
    let (f, a, b) = world(true);
    // Receiver full: buffer 0 goes pending with QAOB 0.
    a.prime(0, v4(2, 0), 0xA0, 100);
    let r = f.siga_writeq(1, 0, Q0, a.qaob(0)).unwrap();
    assert_eq!((r.buffers, r.pending), (1, 1));
    assert_eq!(a.slsb(OUT_SLSB, 0), 0xA3);
    let recorded = a.qaob_bytes(0);
    // Buffer 1 names the same QAOB while it is pending: refused, nothing written.
    a.prime(1, v4(2, 0), 0xB1, 200);
    let r = f.siga_writeq(1, 0, Q0, a.qaob(0)).unwrap();
    assert_eq!((r.buffers, r.delivered, r.pending, r.refused), (1, 0, 0, 1));
    assert_eq!(a.slsb(OUT_SLSB, 1), 0xAF);
    assert_eq!(
        a.element(OUT_SBALS, 1, 15).sflags,
        Reason::QaobInvalid.code()
    );
    assert_eq!(a.element(OUT_SBALS, 1, 14).sflags & 0x0F, 0);
    assert_eq!(
        a.qaob_bytes(0),
        recorded,
        "the pending buffer's QAOB untouched"
    );
    assert_eq!(a.slsb(OUT_SLSB, 0), 0xA3);
    let c = f.counters_of(1, 0).unwrap();
    assert_eq!((c.pending, c.completed, c.completed_with_error), (1, 0, 0));
    assert_eq!(c.errors_for(Reason::QaobInvalid), 1);
    assert_eq!((c.errors_total(), c.sbals_sent), (1, 0));
    // The receiver refills; the completion queue has no empty buffer. The next WRITEQ
    // delivers buffer 0 first, but its completion waits, so QAOB 0 is still in flight:
    // buffer 2 naming it is refused although the receiver has room.
    b.arm_input(0);
    b.arm_input(1);
    a.prime(2, v4(2, 0), 0xC2, 300);
    let r = f.siga_writeq(1, 0, Q0, a.qaob(0)).unwrap();
    assert_eq!(
        (r.completed, r.delivered, r.pending, r.refused),
        (0, 0, 0, 1)
    );
    assert_eq!(a.slsb(OUT_SLSB, 2), 0xAF);
    assert_eq!(
        a.element(OUT_SBALS, 2, 15).sflags,
        Reason::QaobInvalid.code()
    );
    assert_eq!(b.slsb(IN_SLSB, 1), 0x41, "only buffer 0 delivered");
    // The completion queue gets a buffer: the next WRITEQ posts QAOB 0's completion,
    // then its own buffer (with another QAOB) goes to the receiver's next buffer.
    a.set_slsb(CQ_SLSB, 0, 0x41);
    a.prime(3, v4(2, 0), 0xD3, 50);
    let r = f.siga_writeq(1, 0, Q0, a.qaob(3)).unwrap();
    assert_eq!(
        (r.completed, r.delivered, r.pending, r.refused),
        (1, 1, 0, 0)
    );
    assert_eq!(a.completions(0), [a.qaob(0)]);
    assert_eq!(a.qaob_bytes(0)[qaob::AORC], 0);
    // Buffer 0's frame exactly once and intact, then buffer 3's; 1's and 2's never.
    let mut want = L3Header::unicast(v4(2, 0), 100).encode().to_vec();
    want.extend(std::iter::repeat_n(0xA0, 100));
    assert_eq!(b.received(0).unwrap(), want);
    assert_eq!(b.received_tag(1), 0xD3);
    assert_eq!(b.slsb(IN_SLSB, 2), 0x00, "nothing more delivered");
    let c = f.counters_of(1, 0).unwrap();
    assert_eq!((c.pending, c.completed, c.completed_with_error), (1, 1, 0));
    assert_eq!((c.sbals_sent, c.frames_sent, c.bytes_sent), (2, 2, 150));
    assert_eq!(c.errors_for(Reason::QaobInvalid), 2);
    assert_eq!(c.errors_total(), 2);
    let cb = f.counters_of(2, 0).unwrap();
    assert_eq!(
        (cb.sbals_received, cb.frames_received, cb.bytes_received),
        (2, 2, 150)
    );
    assert!(a.ram.guards_intact() && b.ram.guards_intact());
}
