//! The completion queue: buffers sent with SIGA WRITEQ to a full receiver go PENDING
//! (0xA3) instead of being refused, and complete later through their QAOB and the
//! sender's completion queue (Linux's "completion queue", `QETH_CQ_ENABLED`).
//!
//! When the fabric learns that a receiver has room again: the receiver's refill is a
//! store into its own memory that the fabric does not see (Linux issues no SIGA-r on
//! an IQD input queue), so the fabric tries the pending buffers of a queue set
//! - at every SIGA that queue set issues, before its new buffers (it already holds the
//!   outbound lock that guards the pending list, and a sender that keeps sending is
//!   the common case: its pending buffers go out in order ahead of its new ones), and
//! - at every [`Fabric::expire_delays`] tick, for every queue set with pending buffers
//!   (thread context: it takes the locks a send takes), which bounds the wait when the
//!   sender falls silent.
//!
//! A pending buffer keeps its place: later buffers of the same set to the same receiver
//! go pending behind it (while the list has room), so a receiver sees one sender's
//! frames in order. A QAOB stays the pending buffer's until its completion is posted:
//! a WRITEQ naming it meanwhile is refused at once (0x2A, in `send_next`), before
//! anything is written into it. Deregistering either side completes the pending
//! buffers it concerns at once with an error code (0x15 for the sender's own, 0x12 for
//! a receiver that went away): none is stranded.

use super::*;
use crate::qdio::Eflags;
use crate::qdio::qaob::{self, RECORD_LEN};
use crate::queue::{PENDING_PER_QUEUE_SET, Pending};
use crate::transfer::{load_elements, parse_elements};

impl<
    P: Platform,
    const Q: usize,
    const A: usize,
    const L: usize,
    const S: usize,
    M: GuestMemory,
    const O: usize,
> Fabric<P, Q, A, L, S, M, O>
{
    /// Leaves the buffer in `sbal` pending for the queue set of `entry`: records its
    /// elements in the QAOB and appends it to the sender's pending list. A full list,
    /// or an element longer than the QAOB's 16-bit counts, leaves the synchronous
    /// answer, 0x10.
    pub(super) fn go_pending(
        &self,
        sbal: &Sbal,
        entry: TargetEntry,
        wq: WriteQ<'_>,
    ) -> BufferOutcome {
        if wq.pending.len() >= PENDING_PER_QUEUE_SET {
            return refuse(Reason::TargetFull);
        }
        let Ok(sbales) = load_elements(sbal) else {
            return refuse(Reason::TargetFull);
        };
        let Some(record) = qaob::record(&sbales) else {
            return refuse(Reason::TargetFull);
        };
        wq.qaob.write(0, &record);
        let pushed = wq.pending.push(Pending {
            qaob: wq.qaob_addr,
            target: entry,
            queue: wq.queue,
            done: false,
            aorc: 0,
        });
        if pushed {
            BufferOutcome::Pending
        } else {
            refuse(Reason::TargetFull)
        }
    }

    /// Delivers what it can of the sender's pending buffers, oldest first (stopping at
    /// a receiver still full, so its buffers keep their order), then posts the finished
    /// ones on the completion queue. Under the sender's outbound lock.
    pub(super) fn flush_pending(
        &self,
        st: &State<Q, A, L, S, M>,
        sender: &Sender<'_, M, S, O>,
        out: &mut Outbound<O>,
        report: &mut SigaReport,
    ) {
        if out.pending.len() == 0 {
            return;
        }
        let mut blocked: heapless::Vec<SlotRef, PENDING_PER_QUEUE_SET> = heapless::Vec::new();
        for i in 0..out.pending.len() {
            let Some(p) = out.pending.entries().get(i).copied() else {
                break;
            };
            if p.done || blocked.contains(&p.target.slot) {
                continue;
            }
            let aorc = match self.deliver_pending(st, &sender.record.memory, &p, report) {
                Ok((frames, bytes)) => {
                    // Sent now: counted as a buffer sent at once is (its frames, its
                    // queue), so the sender's counters and the receiver's agree.
                    sender.qc.counters.sent(p.queue, u64::from(frames), bytes);
                    0
                }
                Err(Reason::TargetFull) => {
                    // At most one entry per pending buffer: the push cannot fail.
                    let _ = blocked.push(p.target.slot);
                    continue;
                }
                Err(reason) => reason.code(),
            };
            if let Some(e) = out.pending.entries_mut().get_mut(i) {
                e.done = true;
                e.aorc = aorc;
            }
        }
        self.post_completions(st, sender, out, report);
    }

    /// One pending buffer, read back from its QAOB and checked again from the start
    /// (the QAOB and the data are the program's memory): to the queue set its frames
    /// name now, if the one it went pending for is still registered. Returns the frames
    /// and packet bytes delivered.
    fn deliver_pending(
        &self,
        st: &State<Q, A, L, S, M>,
        memory: &M,
        p: &Pending,
        report: &mut SigaReport,
    ) -> Result<(u16, u64), Reason> {
        let went = self
            .controls
            .get(usize::from(p.target.slot.index))
            .ok_or(Reason::TargetNotActive)?;
        if went.generation.load(Ordering::Relaxed) != p.target.slot.generation {
            return Err(Reason::TargetNotActive);
        }
        let q = qaob_slice(memory, p.qaob).ok_or(Reason::QaobInvalid)?;
        let mut record = [0u8; RECORD_LEN];
        q.read(0, &mut record);
        let (sbales, last) = qaob::elements(&record).ok_or(Reason::QaobInvalid)?;
        let sbales = sbales.get(..=last).ok_or(Reason::QaobInvalid)?;
        let mut outgoing = Outgoing::empty();
        // WRITEQ is for unicast queues of layer-3 sets only: unicast cast.
        parse_elements(sbales, memory, st.config.mfs(), false, false, &mut outgoing)
            .map_err(|f| f.reason)?;
        let entry = st
            .table
            .target(&outgoing.dest.ip())
            .ok_or(Reason::Unreachable)?;
        self.deliver_to(st, entry, &outgoing, report)?;
        Ok((outgoing.frames() as u16, outgoing.payload))
    }

    /// Posts the finished pending buffers (at most 16, one completion-queue buffer) on
    /// the sender's completion queue: writes each QAOB's `aorc`, puts the QAOB
    /// addresses in the next empty completion-queue buffer's elements (address 0 after
    /// the last), sets it 0x82, then signals the sender as a receiver is signalled. A
    /// full completion queue leaves them for the next try (counted).
    fn post_completions(
        &self,
        st: &State<Q, A, L, S, M>,
        sender: &Sender<'_, M, S, O>,
        out: &mut Outbound<O>,
        report: &mut SigaReport,
    ) {
        let memory = &sender.record.memory;
        let qc = sender.qc;
        let mut done: heapless::Vec<(usize, u64, u8), PENDING_PER_QUEUE_SET> = heapless::Vec::new();
        for (i, p) in out.pending.entries().iter().enumerate() {
            if p.done {
                // At most PENDING_PER_QUEUE_SET entries: the push cannot fail.
                let _ = done.push((i, p.qaob, p.aorc));
            }
        }
        if done.is_empty() {
            return;
        }
        let cq = &mut out.cq;
        let Some(ring) = cq.ring.live(memory).filter(|_| cq.active) else {
            qc.counters.cq_full();
            return;
        };
        let n = cq.cursor;
        // Acquire pairs with the program's Release store of 0x41.
        if ring.state(n, Ordering::Acquire) != SlsbState::INPUT_EMPTY.0 {
            qc.counters.cq_full();
            return;
        }
        let Ok(buffer) = ring.sbal(n, memory) else {
            // The program's completion-queue buffer no longer translates: unusable, as
            // a bad input buffer is; the next try takes the next one.
            ring.set_state(n, SlsbState::INPUT_ERROR.0, Ordering::Release);
            cq.cursor = next(n);
            qc.counters.cq_full();
            return;
        };
        for (k, (_, addr, aorc)) in done.iter().enumerate() {
            if let Some(q) = qaob_slice(memory, *addr) {
                q.write(qaob::AORC, &[*aorc, 0]);
            }
            let last = k + 1 == done.len();
            buffer.store(
                k,
                &Sbale {
                    eflags: if last { Eflags::LAST_ENTRY.bits() } else { 0 },
                    length: qaob::QAOB_SIZE as u32,
                    addr: *addr,
                    ..Sbale::default()
                },
            );
            qc.counters.completed(*aorc);
        }
        if done.len() < crate::qdio::SBALES_PER_SBAL {
            buffer.store(done.len(), &Sbale::default());
        }
        // Release: the QAOBs' codes and the elements are visible before 0x82.
        ring.set_state(n, SlsbState::INPUT_PRIMED.0, Ordering::Release);
        cq.cursor = next(n);
        let mut k = 0;
        out.pending.remove_where(|i, _| {
            let posted = done.get(k).is_some_and(|d| d.0 == i);
            if posted {
                k += 1;
            }
            posted
        });
        qc.pending_hint
            .store(out.pending.len() as u8, Ordering::Relaxed);
        report.completed = report.completed.saturating_add(done.len() as u16);
        self.signal_owner(st, sender, report);
    }

    /// Signals the sender's own completion vector after a completion was posted, and
    /// raises its interrupt if the decision says so.
    fn signal_owner(
        &self,
        st: &State<Q, A, L, S, M>,
        sender: &Sender<'_, M, S, O>,
        report: &mut SigaReport,
    ) {
        let qc = sender.qc;
        let interrupt = {
            // Outbound before inbound: the lock order of every send.
            let mut inb = qc.inbound.lock();
            lock_point!(self, Inbound);
            let stamp = sender.record.summary_since(inb.summary);
            let delay_ns = st.config.interrupt_delay_ns();
            match inb.live(&sender.record.memory, st.epoch) {
                Ok(live) => self.signal(&inb, &live, qc, stamp, delay_ns),
                // Deregistered: no one to tell.
                Err(Reason::TargetNotActive) => None,
                // Its SLSB does not translate (nor then, as `signal` has it for the
                // indicators, can the receiver be seen polling): interrupt.
                Err(_) => Some(inb.interrupt_target()),
            }
        };
        if let Some(t) = interrupt {
            let delivered = self.platform.raise_interrupt(t).delivered();
            qc.counters.raised(delivered);
            if delivered {
                report.interrupts = report.interrupts.saturating_add(1);
            } else {
                report.interrupts_dropped = report.interrupts_dropped.saturating_add(1);
            }
        }
    }

    /// The delay tick's part: tries the pending buffers of every queue set that has
    /// some (thread context only). Returns the completions posted.
    pub(super) fn flush_all_pending(&self, st: &State<Q, A, L, S, M>) -> usize {
        let mut report = SigaReport::default();
        for (qc, _) in self
            .controls
            .iter()
            .zip(st.in_use.iter())
            .filter(|(qc, u)| **u && qc.pending_hint.load(Ordering::Relaxed) > 0)
        {
            let mut out = qc.outbound.lock();
            lock_point!(self, Outbound);
            let owner = out.cq.owner;
            let Some(record) = st.partition(owner.lpar).filter(|r| !r.suspended) else {
                continue;
            };
            let sender = Sender {
                key: owner,
                record,
                qc,
            };
            self.flush_pending(st, &sender, &mut out, &mut report);
        }
        usize::from(report.completed)
    }

    /// Deregistration's part (under the exclusive table lock, before the queue control
    /// is freed): completes every pending buffer of `key`'s own queue set with 0x15,
    /// and every other set's pending buffer waiting for it with 0x12.
    pub(super) fn cancel_pending(&self, st: &State<Q, A, L, S, M>, key: SourceKey, slot: SlotRef) {
        let mut report = SigaReport::default();
        for (index, qc) in self.controls.iter().enumerate() {
            if qc.pending_hint.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let mut out = qc.outbound.lock();
            lock_point!(self, Outbound);
            let own = usize::from(slot.index) == index;
            let mut any = false;
            for p in out.pending.entries_mut().iter_mut().filter(|p| !p.done) {
                if own {
                    (p.done, p.aorc) = (true, Reason::Cancelled.code());
                    any = true;
                } else if p.target.slot == slot {
                    (p.done, p.aorc) = (true, Reason::TargetNotActive.code());
                    any = true;
                }
            }
            if !any && !own {
                continue;
            }
            let owner = out.cq.owner;
            if let Some(record) = st.partition(owner.lpar) {
                let sender = Sender {
                    key: owner,
                    record,
                    qc,
                };
                self.post_completions(st, &sender, &mut out, &mut report);
            }
            if own {
                // Whatever the completion queue had no room for: the codes are in the
                // QAOBs, the list goes with the queue set.
                if let Some(record) = st.partition(key.lpar) {
                    for p in out.pending.entries() {
                        if let Some(q) = qaob_slice(&record.memory, p.qaob) {
                            q.write(qaob::AORC, &[p.aorc, 0]);
                        }
                    }
                }
                out.pending = PendingList::EMPTY;
                qc.pending_hint.store(0, Ordering::Relaxed);
            }
        }
    }
}
