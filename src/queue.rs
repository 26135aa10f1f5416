//! Queue sets and queue controls: the state the fabric keeps per established
//! subchannel, behind an outbound lock (sender side) and an inbound lock (receiver
//! side) \[patent\], and its counters.

use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::guest::{GuestMemory, GuestSlice, MemoryExt, Sbal, SbalError, SliceCache, SliceSet};
use crate::platform::InterruptTarget;
use crate::qdio::{QUEUE_BUFFERS, Reason, SLSB_LEN};
use crate::sync::Mutex;
use crate::table::{LastTarget, SlotRef, SourceKey, TargetEntry};

/// One queue in guest memory: the guest addresses of its 128 SBALs and of the SLSB of
/// their 128 state bytes, checked when the queue set is established.
///
/// Guest addresses, not host pointers: the fabric translates them through the
/// partition's [`GuestMemory`] when it uses them (once per buffer), so the hypervisor
/// may remap the partition's memory while the queue set stays established.
///
/// Kept compact, 528 bytes rather than 1 KiB: the lowest SBAL's address and each
/// SBAL's distance from it in 256-byte units (SBALs are 256-aligned), so the 128
/// SBALs of one queue must lie within 1 TiB of the lowest ([`QueueRing::new`]). With
/// up to four output queues and one input queue per queue set this halves what a
/// queue control holds (a hypervisor's fabric for 8 partitions stays within 32 KiB).
#[derive(Clone, Copy, Debug)]
pub(crate) struct QueueRing {
    /// The lowest SBAL's guest address.
    base: u64,
    /// SBAL `n` lies at `base + 256 * units[n]`.
    units: [u32; QUEUE_BUFFERS],
    pub(crate) slsb: u64,
}

impl QueueRing {
    /// All-zero: a free queue control's (never used while its control is inactive).
    pub(crate) const ZERO: Self = Self {
        base: 0,
        units: [0; QUEUE_BUFFERS],
        slsb: 0,
    };

    /// The ring of `sbals` (each 256-aligned: the caller checked) and `slsb`, or the
    /// number of the first SBAL that lies 1 TiB (2^32 units of 256 bytes) or more above
    /// the lowest.
    pub(crate) fn new(sbals: &[u64; QUEUE_BUFFERS], slsb: u64) -> Result<Self, u8> {
        let base = sbals.iter().copied().min().unwrap_or(0) & !0xFF;
        let mut units = [0u32; QUEUE_BUFFERS];
        for (i, (u, a)) in units.iter_mut().zip(sbals).enumerate() {
            *u = u32::try_from(a.wrapping_sub(base) >> 8).map_err(|_| i as u8)?;
        }
        Ok(Self { base, units, slsb })
    }

    /// The guest address of SBAL `n` (wrapping).
    #[inline(always)]
    pub(crate) fn sbal_addr(&self, n: u8) -> u64 {
        self.base + (u64::from(self.units[usize::from(n) % QUEUE_BUFFERS]) << 8)
    }

    /// The guest addresses of the 128 SBALs, buffer 0 first.
    pub(crate) fn sbal_addrs(&self) -> impl Iterator<Item = u64> + '_ {
        (0..QUEUE_BUFFERS as u8).map(|n| self.sbal_addr(n))
    }

    /// The ring with its SLSB translated through `memory`, for one use under the
    /// queue's lock; `None` if the SLSB no longer translates (the hypervisor unmapped
    /// it).
    #[inline(always)]
    pub(crate) fn live<M: GuestMemory>(&self, memory: &M) -> Option<LiveRing<'_>> {
        Some(self.live_at(self.slsb_slice(memory)?))
    }

    /// The SLSB translated through `memory`.
    #[inline(always)]
    pub(crate) fn slsb_slice<M: GuestMemory>(&self, memory: &M) -> Option<GuestSlice> {
        memory.slice(self.slsb, SLSB_LEN as u64)
    }

    /// The ring over its SLSB translated already (by [`slsb_slice`](Self::slsb_slice),
    /// kept in a [`SliceCache`]).
    #[inline(always)]
    pub(crate) fn live_at(&self, slsb: GuestSlice) -> LiveRing<'_> {
        LiveRing { slsb, ring: self }
    }
}

/// A [`QueueRing`] whose SLSB is translated, for the duration of one fabric call.
pub(crate) struct LiveRing<'a> {
    slsb: GuestSlice,
    ring: &'a QueueRing,
}

impl LiveRing<'_> {
    /// The state byte of buffer `n` (wrapping). Always inlined, as are the guest
    /// accessors under it, so that each caller's constant ordering folds and no
    /// invalid-ordering panic path is left in the send path.
    #[inline(always)]
    pub(crate) fn state(&self, n: u8, order: Ordering) -> u8 {
        self.slsb.load(usize::from(n) % QUEUE_BUFFERS, order)
    }

    /// Sets the state byte of buffer `n` (wrapping); always inlined, as `state`.
    #[inline(always)]
    pub(crate) fn set_state(&self, n: u8, state: u8, order: Ordering) {
        self.slsb
            .store(usize::from(n) % QUEUE_BUFFERS, state, order);
    }

    /// The SBAL of buffer `n` (wrapping), translated through `memory`.
    #[inline]
    pub(crate) fn sbal<M: GuestMemory>(&self, n: u8, memory: &M) -> Result<Sbal, SbalError> {
        memory.sbal(self.ring.sbal_addr(n))
    }
}

/// Next buffer number after `n` on a 128-buffer ring.
pub(crate) const fn next(n: u8) -> u8 {
    (n + 1) % QUEUE_BUFFERS as u8
}

/// Previous buffer number before `n` on a 128-buffer ring.
pub(crate) const fn prev(n: u8) -> u8 {
    (n + QUEUE_BUFFERS as u8 - 1) % QUEUE_BUFFERS as u8
}

/// Output queues a queue set may have: Linux's `QETH_MAX_OUT_QUEUES`
/// (`drivers/s390/net/qeth_core.h`). With two or more, the highest-numbered is the
/// multicast queue (Linux's `multicast_outbound()`, `drivers/s390/cio/qdio.h`).
pub const MAX_OUTPUT_QUEUES: usize = 4;

/// Output buffers one queue set may have pending on its completion queue at once
/// (SIGA WRITEQ to a full receiver). Beyond it a full receiver is answered
/// synchronously with sbalf15 0x10, as without a completion queue.
pub const PENDING_PER_QUEUE_SET: usize = 8;

/// One output buffer left PENDING (0xA3): its QAOB (in the sender's memory, holding
/// the buffer's elements since the program reuses the SBAL at once) and the queue set
/// it waits to be delivered to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Pending {
    /// Guest address of the QAOB (256 bytes, 256-aligned, checked at the SIGA).
    pub(crate) qaob: u64,
    /// The receiver it was routed to when it went pending.
    pub(crate) target: TargetEntry,
    /// The output queue it came from (for the per-queue counters).
    pub(crate) queue: u8,
    /// Finished: delivered or failed, its completion code (`aorc`: 0, or an sbalf15
    /// reason) waits to be posted on the completion queue.
    pub(crate) done: bool,
    pub(crate) aorc: u8,
}

impl Pending {
    const ZERO: Self = Self {
        qaob: 0,
        target: TargetEntry {
            slot: SlotRef {
                index: 0,
                generation: 0,
            },
            owner: SourceKey {
                lpar: 0,
                subchannel: 0,
            },
            group: false,
        },
        queue: 0,
        done: false,
        aorc: 0,
    };
}

/// A queue set's pending buffers, oldest first (under the outbound lock).
pub(crate) struct PendingList {
    entries: [Pending; PENDING_PER_QUEUE_SET],
    len: u8,
}

impl PendingList {
    pub(crate) const EMPTY: Self = Self {
        entries: [Pending::ZERO; PENDING_PER_QUEUE_SET],
        len: 0,
    };

    /// The pending buffers, oldest first.
    pub(crate) fn entries(&self) -> &[Pending] {
        self.entries.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// As `entries`, to update in place.
    pub(crate) fn entries_mut(&mut self) -> &mut [Pending] {
        self.entries
            .get_mut(..usize::from(self.len))
            .unwrap_or(&mut [])
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether a buffer for the queue set in `slot` waits (a later buffer to it must
    /// wait behind it, to keep the order).
    pub(crate) fn waits_for(&self, slot: SlotRef) -> bool {
        self.entries()
            .iter()
            .any(|p| !p.done && p.target.slot == slot)
    }

    /// Whether a buffer on the list (waiting, or finished with its completion not yet
    /// posted) has its QAOB at guest address `qaob`. Reads no entry when the list is
    /// empty, the common case.
    #[inline]
    pub(crate) fn holds_qaob(&self, qaob: u64) -> bool {
        self.len != 0 && self.entries().iter().any(|p| p.qaob == qaob)
    }

    /// Appends `p`; `false` when the list is full.
    pub(crate) fn push(&mut self, p: Pending) -> bool {
        match self.entries.get_mut(usize::from(self.len)) {
            Some(e) => {
                *e = p;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Removes the entries `gone` says to, keeping the others' order.
    pub(crate) fn remove_where(&mut self, mut gone: impl FnMut(usize, &Pending) -> bool) {
        let mut kept = 0usize;
        for i in 0..self.len() {
            let Some(e) = self.entries.get(i).copied() else {
                break;
            };
            if !gone(i, &e) {
                if let Some(k) = self.entries.get_mut(kept) {
                    *k = e;
                }
                kept += 1;
            }
        }
        self.len = kept as u8;
    }
}

/// A queue set's completion queue: an input-like queue the fabric fills with the
/// QAOB addresses of buffers that completed asynchronously (Linux's `qeth_qdio_cq_handler`
/// reads each element's address as a QAOB until one is 0).
pub(crate) struct CompletionRing {
    /// Established with a completion queue.
    pub(crate) active: bool,
    pub(crate) ring: QueueRing,
    /// The next completion-queue buffer to fill.
    pub(crate) cursor: u8,
    /// The queue set's key (to find its partition from the delay tick).
    pub(crate) owner: SourceKey,
}

/// The sender side of a queue control: its output queues and their cursors, under one
/// outbound lock (a SIGA may name several queues in its mask; one naming a queue that
/// another SIGA is sending on answers busy, cc2, which Linux retries).
pub(crate) struct Outbound<const O: usize> {
    /// The queue control is in use (`rings` meaningful). Flags rather than `Option`s
    /// throughout: a free control is then all-zero bytes by definition.
    pub(crate) active: bool,
    /// Output queues established (1..=O): `rings[..queues]`.
    pub(crate) queues: u8,
    /// The output queues.
    pub(crate) rings: [QueueRing; O],
    /// Per queue, the next output buffer to look at: SIGA handles primed buffers from
    /// here, in ring order, so finding the next one is O(1).
    pub(crate) cursors: [u8; O],
    /// The completion queue, if the set was established with one.
    pub(crate) cq: CompletionRing,
    /// Buffers left pending, waiting for room at their receivers or for a
    /// completion-queue buffer to be announced in.
    pub(crate) pending: PendingList,
    /// Established in layer-2 mode.
    pub(crate) layer2: bool,
    /// Per queue, its SLSB translated in the issuer's memory once per fabric epoch.
    pub(crate) slsbs: SliceCache<O, SLSB_LEN>,
    /// The last unicast target this set sent to ([`LastTarget`]).
    pub(crate) last_target: LastTarget,
}

impl<const O: usize> Outbound<O> {
    /// The established output queues while the control is in use.
    #[inline(always)]
    pub(crate) fn rings(&self) -> &[QueueRing] {
        let n = if self.active {
            usize::from(self.queues)
        } else {
            0
        };
        self.rings.get(..n).unwrap_or(&[])
    }

    /// The completion queue while the control is in use and has one.
    pub(crate) fn completion_ring(&self) -> Option<&QueueRing> {
        (self.active && self.cq.active).then_some(&self.cq.ring)
    }

    /// The multicast queue's number: the highest, when there are two queues or more.
    pub(crate) fn multicast_queue(&self) -> Option<u8> {
        (self.queues >= 2).then(|| self.queues - 1)
    }
}

/// The guest addresses of the receiver's three indicator bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IndicatorBytes {
    pub(crate) queue: u64,
    pub(crate) middle: u64,
    pub(crate) global: u64,
}

/// The indicator bytes translated, for one use.
#[derive(Clone, Copy)]
pub(crate) struct LiveIndicators {
    pub(crate) queue: GuestSlice,
    pub(crate) middle: GuestSlice,
    pub(crate) global: GuestSlice,
}

impl IndicatorBytes {
    /// All-zero: a free queue control's.
    pub(crate) const ZERO: Self = Self {
        queue: 0,
        middle: 0,
        global: 0,
    };
}

/// The receiver side of a queue control: the input queue, its cursor, its indicators
/// and the interrupt decision's state.
pub(crate) struct Inbound {
    /// The queue control is in use (`ring` and `indicators` meaningful).
    pub(crate) active: bool,
    /// The input queue.
    pub(crate) ring: QueueRing,
    /// The next input buffer to fill: it must read 0x41, or the queue is full.
    pub(crate) cursor: u8,
    /// The receiver's completion-vector bytes.
    pub(crate) indicators: IndicatorBytes,
    /// Which of the owning partition's summary stamps guards `indicators.global`: the
    /// fallback's time stamp lives with the summary byte, per partition, not here.
    pub(crate) summary: u8,
    /// The receiver's "interrupt immediately" override.
    pub(crate) interrupt_immediately: bool,
    /// The hypervisor's interrupt cookie, handed back in every interrupt's target.
    pub(crate) cookie: u64,
    /// The owner, for the interrupt's target.
    pub(crate) owner: SourceKey,
    /// `ring`'s SLSB and the three indicator bytes, translated in the receiver's
    /// memory once per fabric epoch ([`Inbound::live`]).
    pub(crate) live: SliceSet<4>,
}

/// The receiver's structures a delivery writes, translated: its input SLSB and, unless
/// one no longer translates, its indicator bytes.
#[derive(Clone, Copy)]
pub(crate) struct LiveInbound {
    pub(crate) slsb: GuestSlice,
    pub(crate) indicators: Option<LiveIndicators>,
}

impl Inbound {
    /// The input queue and the indicators while the control is in use.
    #[inline(always)]
    pub(crate) fn ring(&self) -> Option<(&QueueRing, &IndicatorBytes)> {
        self.active.then_some((&self.ring, &self.indicators))
    }

    /// The interrupt that announces a delivery to this control's owner.
    pub(crate) fn interrupt_target(&self) -> InterruptTarget {
        InterruptTarget {
            lpar: self.owner.lpar,
            subchannel: self.owner.subchannel,
            cookie: self.cookie,
        }
    }

    /// The input SLSB and the indicator bytes translated through `memory`, the
    /// receiver's, in the fabric's `epoch`: the first delivery of an epoch translates
    /// them, the next ones reuse that (a delivery used to translate the SLSB twice and
    /// the indicators once, seven translations with the SBAL's and the element's; now
    /// those two) from one [`SliceSet`]. [`TargetNotActive`](Reason::TargetNotActive)
    /// when the control is not in use, [`TargetBufferInvalid`](Reason::TargetBufferInvalid)
    /// when the SLSB does not translate; indicators that do not are `None` (and nothing
    /// is kept: the next delivery translates again).
    #[inline(always)]
    pub(crate) fn live<M: GuestMemory>(
        &mut self,
        memory: &M,
        epoch: u64,
    ) -> Result<LiveInbound, Reason> {
        if !self.active {
            return Err(Reason::TargetNotActive);
        }
        let (ring, ind) = (&self.ring, &self.indicators);
        let kept = self.live.get_or(epoch, [SLSB_LEN, 1, 1, 1], || {
            let byte = |addr: u64| memory.slice(addr, 1);
            Some([
                ring.slsb_slice(memory)?,
                byte(ind.queue)?,
                byte(ind.middle)?,
                byte(ind.global)?,
            ])
        });
        let (slsb, indicators) = match kept {
            Some([slsb, queue, middle, global]) => (
                slsb,
                Some(LiveIndicators {
                    queue,
                    middle,
                    global,
                }),
            ),
            // Something does not translate (and nothing is kept): the SLSB alone, or
            // why not.
            None => (
                ring.slsb_slice(memory).ok_or(Reason::TargetBufferInvalid)?,
                None,
            ),
        };
        // Every path gives an SLSB of `SLSB_LEN` bytes (`slsb_slice` asks for that
        // many); taken as a sub-slice of that constant length, so that the state
        // accesses of the fill and of the polling check need no bounds checks of
        // their own (a shorter one, which cannot occur, would not translate).
        let slsb = slsb.sub(0, SLSB_LEN).ok_or(Reason::TargetBufferInvalid)?;
        Ok(LiveInbound { slsb, indicators })
    }
}

/// One queue control per established queue set \[patent\]. Its two locks and its two
/// groups of counters each sit on cache lines of their own: the sender's core takes the
/// outbound lock while the receiver's (or another sender's) takes the inbound one. Both the source-table entry
/// and every target-table entry of the queue set resolve to it.
#[repr(C, align(128))]
pub(crate) struct QueueControl<const O: usize> {
    /// Bumped whenever the slot is freed, so a stale [`SlotRef`](crate::table::SlotRef)
    /// never reaches a new owner. Written under the exclusive table lock only.
    pub(crate) generation: AtomicU32,
    /// A send hint (the fabric's `SendHint`): where the last SIGA of an issuer whose
    /// hint lives here (by `hint_slot`, not necessarily this control's owner) found
    /// its queue control. Never trusted: a SIGA checks it under the lock it pins the
    /// tables with. Zero is "no hint". It sits in the padding before the outbound
    /// lock's aligned line, costing no bytes.
    pub(crate) send_hint: core::sync::atomic::AtomicU64,
    /// The outbound lock and what it guards.
    pub(crate) outbound: Aligned<Mutex<Outbound<O>>>,
    /// The inbound lock and what it guards.
    pub(crate) inbound: Aligned<Mutex<Inbound>>,
    /// Counters; atomics, so reading them takes no queue lock.
    pub(crate) counters: Counters,
    /// Buffers on the outbound side's pending list (written under the outbound lock,
    /// read without it by the delay tick and deregistration, to skip sets with none).
    pub(crate) pending_hint: core::sync::atomic::AtomicU8,
}

impl<const O: usize> QueueControl<O> {
    crate::sync::const_unless_loom! {
    pub(crate) fn new() -> Self {
        Self {
            generation: AtomicU32::new(0),
            send_hint: core::sync::atomic::AtomicU64::new(0),
            outbound: Aligned(Mutex::new(Outbound {
                active: false,
                queues: 0,
                rings: [QueueRing::ZERO; O],
                cursors: [0; O],
                cq: CompletionRing {
                    active: false,
                    ring: QueueRing::ZERO,
                    cursor: 0,
                    owner: SourceKey {
                        lpar: 0,
                        subchannel: 0,
                    },
                },
                pending: PendingList::EMPTY,
                layer2: false,
                slsbs: SliceCache::EMPTY,
                last_target: LastTarget::EMPTY,
            })),
            pending_hint: core::sync::atomic::AtomicU8::new(0),
            inbound: Aligned(Mutex::new(Inbound {
                active: false,
                ring: QueueRing::ZERO,
                cursor: 0,
                indicators: IndicatorBytes::ZERO,
                summary: 0,
                interrupt_immediately: false,
                cookie: 0,
                owner: SourceKey {
                    lpar: 0,
                    subchannel: 0,
                },
                live: SliceSet::EMPTY,
            })),
            counters: Counters::new(),
        }
    }
    }
}

/// Number of distinct [`Reason`]s, the size of the per-reason error counters.
const REASONS: usize = Reason::ALL.len();

/// A value alone on its own cache lines (128 bytes: two 64-byte lines, as adjacent-line
/// prefetchers pull pairs), so that what one core writes does not slow another.
#[repr(C, align(128))]
pub(crate) struct Aligned<T>(pub(crate) T);

impl<T> core::ops::Deref for Aligned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The sender's counters: written under the queue control's outbound lock.
///
/// Buffers, frames and bytes sent are counted per output queue only; the queue set's
/// totals are their sums, added up when read ([`Counters::snapshot`]): a send updates
/// three counters, not six.
#[repr(C, align(128))]
struct TxCounters {
    errors: [AtomicU64; REASONS],
    /// Written without the lock (a SIGA that did not get it).
    busy: AtomicU64,
    /// Per output queue: buffers, frames and packet bytes sent.
    per_queue: [[AtomicU64; 3]; MAX_OUTPUT_QUEUES],
    /// Copies of multicast and broadcast buffers delivered to members.
    group_copies: AtomicU64,
    /// Members a multicast or broadcast buffer skipped (full, suspended, or their
    /// receive buffer unusable); each is counted at the member too.
    group_skipped: AtomicU64,
    /// Buffers left PENDING (0xA3), completions posted with aorc 0 and with an error,
    /// and times a completion found the completion queue full.
    pending: AtomicU64,
    completed: AtomicU64,
    completed_with_error: AtomicU64,
    cq_full: AtomicU64,
}

/// The receiver's counters: written under the queue control's inbound lock.
#[repr(C, align(128))]
struct RxCounters {
    frames_received: AtomicU64,
    bytes_received: AtomicU64,
    sbals_received: AtomicU64,
    refused_full: AtomicU64,
    /// Written without the inbound lock (sends to a suspended partition take none).
    refused_suspended: AtomicU64,
    /// Written after the platform answered, without the inbound lock (the interrupt is
    /// raised once it is released): several senders may add at once.
    interrupts_raised: AtomicU64,
    /// As `interrupts_raised`.
    interrupts_dropped: AtomicU64,
    interrupts_suppressed: AtomicU64,
    /// Multicast and broadcast copies this member missed (its input queue full, its
    /// partition suspended, or its receive buffer unusable): nothing is re-sent, so
    /// this is where such a loss is counted.
    group_missed: AtomicU64,
}

/// Counters of one queue control. Relaxed atomics: each is a statistic on its own,
/// no other access is ordered by them. Each is written under the lock of its side
/// (outbound for the sender's, inbound for the receiver's), so a relaxed load and store
/// suffices there and costs no locked instruction; readers need no lock. The sender's
/// and the receiver's counters sit on cache lines of their own, as partitions on two
/// cores write them at once.
pub(crate) struct Counters {
    tx: TxCounters,
    rx: RxCounters,
}

/// Adds `by` to a counter whose writers are serialised by a lock the caller holds.
#[inline(always)]
fn add_locked(c: &AtomicU64, by: u64) {
    c.store(
        c.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

impl Counters {
    const fn new() -> Self {
        Self {
            tx: TxCounters {
                errors: [const { AtomicU64::new(0) }; REASONS],
                busy: AtomicU64::new(0),
                per_queue: [const { [const { AtomicU64::new(0) }; 3] }; MAX_OUTPUT_QUEUES],
                group_copies: AtomicU64::new(0),
                group_skipped: AtomicU64::new(0),
                pending: AtomicU64::new(0),
                completed: AtomicU64::new(0),
                completed_with_error: AtomicU64::new(0),
                cq_full: AtomicU64::new(0),
            },
            rx: RxCounters {
                frames_received: AtomicU64::new(0),
                bytes_received: AtomicU64::new(0),
                sbals_received: AtomicU64::new(0),
                refused_full: AtomicU64::new(0),
                refused_suspended: AtomicU64::new(0),
                interrupts_raised: AtomicU64::new(0),
                interrupts_dropped: AtomicU64::new(0),
                interrupts_suppressed: AtomicU64::new(0),
                group_missed: AtomicU64::new(0),
            },
        }
    }

    /// Zeroes every counter (under the exclusive table lock: no send is running).
    pub(crate) fn reset(&self) {
        let all = [
            &self.tx.busy,
            &self.rx.frames_received,
            &self.rx.bytes_received,
            &self.rx.sbals_received,
            &self.rx.refused_full,
            &self.rx.refused_suspended,
            &self.rx.interrupts_raised,
            &self.rx.interrupts_dropped,
            &self.rx.interrupts_suppressed,
            &self.rx.group_missed,
            &self.tx.group_copies,
            &self.tx.group_skipped,
            &self.tx.pending,
            &self.tx.completed,
            &self.tx.completed_with_error,
            &self.tx.cq_full,
        ];
        for c in all
            .into_iter()
            .chain(self.tx.errors.iter())
            .chain(self.tx.per_queue.iter().flatten())
        {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// A buffer sent on output queue `queue` (outbound lock held; `queue` is below
    /// the fabric's `O`, at most [`MAX_OUTPUT_QUEUES`], so it always counts).
    #[inline]
    pub(crate) fn sent(&self, queue: u8, frames: u64, bytes: u64) {
        if let Some(q) = self.tx.per_queue.get(usize::from(queue)) {
            add_locked(&q[0], 1);
            add_locked(&q[1], frames);
            add_locked(&q[2], bytes);
        }
    }

    /// A multicast or broadcast buffer reached `copies` members and skipped `skipped`
    /// (outbound lock held).
    pub(crate) fn group_sent(&self, copies: u64, skipped: u64) {
        add_locked(&self.tx.group_copies, copies);
        add_locked(&self.tx.group_skipped, skipped);
    }

    /// A buffer left pending (outbound lock held).
    pub(crate) fn went_pending(&self) {
        add_locked(&self.tx.pending, 1);
    }

    /// A completion posted with code `aorc` (outbound lock held).
    pub(crate) fn completed(&self, aorc: u8) {
        add_locked(
            if aorc == 0 {
                &self.tx.completed
            } else {
                &self.tx.completed_with_error
            },
            1,
        );
    }

    /// A completion found the completion queue full (outbound lock held).
    pub(crate) fn cq_full(&self) {
        add_locked(&self.tx.cq_full, 1);
    }

    /// This member missed a multicast or broadcast copy. Its inbound lock may not be
    /// held (a suspended member's is not taken), so other senders may race here.
    pub(crate) fn group_missed(&self) {
        self.rx.group_missed.fetch_add(1, Ordering::Relaxed);
    }

    /// A buffer received (inbound lock held).
    #[inline]
    pub(crate) fn received(&self, frames: u64, bytes: u64) {
        add_locked(&self.rx.sbals_received, 1);
        add_locked(&self.rx.frames_received, frames);
        add_locked(&self.rx.bytes_received, bytes);
    }

    /// A buffer refused (outbound lock held).
    pub(crate) fn error(&self, reason: Reason) {
        if let Some(i) = Reason::ALL.iter().position(|r| *r == reason) {
            add_locked(&self.tx.errors[i], 1);
        }
    }

    /// A send to this queue refused because it was full (inbound lock held).
    pub(crate) fn refused_full(&self) {
        add_locked(&self.rx.refused_full, 1);
    }

    /// A SIGA answered busy: it holds no lock of this queue control.
    pub(crate) fn busy(&self) {
        self.tx.busy.fetch_add(1, Ordering::Relaxed);
    }

    /// A send to this queue refused because its partition is suspended: no lock of
    /// this queue control held.
    pub(crate) fn refused_suspended(&self) {
        self.rx.refused_suspended.fetch_add(1, Ordering::Relaxed);
    }

    /// A delivery to this queue that raised no interrupt (inbound lock held).
    #[inline]
    pub(crate) fn suppressed(&self) {
        add_locked(&self.rx.interrupts_suppressed, 1);
    }

    /// An interrupt raised for this queue, as the platform answered: posted or
    /// dropped. The inbound lock is released by then, so senders may race here.
    pub(crate) fn raised(&self, delivered: bool) {
        let c = if delivered {
            &self.rx.interrupts_raised
        } else {
            &self.rx.interrupts_dropped
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let output_queues: [OutputQueueCounts; MAX_OUTPUT_QUEUES] = core::array::from_fn(|q| {
            let c = &self.tx.per_queue[q];
            OutputQueueCounts {
                sbals: get(&c[0]),
                frames: get(&c[1]),
                bytes: get(&c[2]),
            }
        });
        // The totals are the queues' sums (see `TxCounters`); wrapping, as each
        // counter wraps.
        let total = |f: fn(&OutputQueueCounts) -> u64| {
            output_queues
                .iter()
                .fold(0u64, |sum, c| sum.wrapping_add(f(c)))
        };
        CounterSnapshot {
            frames_sent: total(|c| c.frames),
            bytes_sent: total(|c| c.bytes),
            sbals_sent: total(|c| c.sbals),
            frames_received: get(&self.rx.frames_received),
            bytes_received: get(&self.rx.bytes_received),
            sbals_received: get(&self.rx.sbals_received),
            errors: core::array::from_fn(|i| get(&self.tx.errors[i])),
            refused_full: get(&self.rx.refused_full),
            refused_suspended: get(&self.rx.refused_suspended),
            busy: get(&self.tx.busy),
            interrupts_raised: get(&self.rx.interrupts_raised),
            interrupts_dropped: get(&self.rx.interrupts_dropped),
            interrupts_suppressed: get(&self.rx.interrupts_suppressed),
            output_queues,
            group_copies: get(&self.tx.group_copies),
            group_skipped: get(&self.tx.group_skipped),
            group_missed: get(&self.rx.group_missed),
            pending: get(&self.tx.pending),
            completed: get(&self.tx.completed),
            completed_with_error: get(&self.tx.completed_with_error),
            cq_full: get(&self.tx.cq_full),
        }
    }
}

/// The counters of one queue set at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CounterSnapshot {
    /// Frames this queue set sent (delivered to a target).
    pub frames_sent: u64,
    /// Packet bytes (headers excluded) it sent.
    pub bytes_sent: u64,
    /// Output buffers it sent.
    pub sbals_sent: u64,
    /// Frames delivered to this queue set.
    pub frames_received: u64,
    /// Packet bytes delivered to it.
    pub bytes_received: u64,
    /// Input buffers filled for it.
    pub sbals_received: u64,
    /// Output buffers refused, per reason, in the order of [`Reason::ALL`].
    pub errors: [u64; REASONS],
    /// Sends to this queue set refused because its input queue was full.
    pub refused_full: u64,
    /// Sends to this queue set refused because its partition was suspended
    /// ([`Fabric::suspend`](crate::Fabric::suspend)); the senders read 0x10 (target
    /// full), but these are not in `refused_full`.
    pub refused_suspended: u64,
    /// SIGAs on this queue set answered cc2 busy.
    pub busy: u64,
    /// Interrupts raised for this queue set that the platform posted
    /// ([`InterruptDelivery::Delivered`](crate::InterruptDelivery::Delivered)).
    pub interrupts_raised: u64,
    /// Interrupts the fabric asked for that the platform did not post
    /// ([`InterruptDelivery::Dropped`](crate::InterruptDelivery::Dropped)).
    pub interrupts_dropped: u64,
    /// Deliveries to this queue set that raised no interrupt.
    pub interrupts_suppressed: u64,
    /// What each output queue sent (queue 0 first; queues not established read 0).
    pub output_queues: [OutputQueueCounts; MAX_OUTPUT_QUEUES],
    /// Copies of this queue set's multicast and broadcast buffers delivered, over all
    /// members (a buffer to a group of three other members counts 3).
    pub group_copies: u64,
    /// Members its multicast and broadcast buffers skipped (each counted at the member
    /// as `group_missed`).
    pub group_skipped: u64,
    /// Multicast and broadcast copies meant for this queue set that it missed: its
    /// input queue was full, its partition suspended, or its receive buffer unusable.
    /// Group traffic is not refused back to the sender (a full member must not hold up
    /// the others), so the loss is counted here.
    pub group_missed: u64,
    /// Output buffers left PENDING (0xA3) by SIGA WRITEQ to a full receiver.
    pub pending: u64,
    /// Pending buffers completed through the completion queue with `aorc` 0
    /// (delivered).
    pub completed: u64,
    /// Pending buffers completed with an error `aorc` (the receiver went away, the
    /// frame no longer checks, a side was deregistered).
    pub completed_with_error: u64,
    /// Times a completion waited because the completion queue had no empty buffer.
    pub cq_full: u64,
}

/// What one output queue sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutputQueueCounts {
    /// Output buffers sent.
    pub sbals: u64,
    /// Frames sent.
    pub frames: u64,
    /// Packet bytes sent (headers excluded).
    pub bytes: u64,
}

impl CounterSnapshot {
    /// Output buffers refused for `reason`.
    pub fn errors_for(&self, reason: Reason) -> u64 {
        Reason::ALL
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.errors[i])
    }

    /// Output buffers refused for any reason.
    pub fn errors_total(&self) -> u64 {
        self.errors.iter().sum()
    }

    /// Output buffers refused as malformed (reasons from 0x20).
    pub fn malformed(&self) -> u64 {
        Reason::ALL
            .iter()
            .zip(self.errors.iter())
            .filter(|(r, _)| r.is_malformed())
            .map(|(_, n)| n)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_arithmetic_wraps_at_128() {
        assert_eq!(next(127), 0);
        assert_eq!(next(5), 6);
        assert_eq!(prev(0), 127);
        assert_eq!(prev(6), 5);
    }

    #[test]
    fn counters_count_and_reset() {
        let c = Counters::new();
        c.sent(1, 3, 300);
        c.received(2, 20);
        c.error(Reason::TargetFull);
        c.error(Reason::TargetFull);
        c.error(Reason::ZeroLength);
        c.error(Reason::HeaderId);
        c.raised(true);
        c.raised(false);
        c.raised(false);
        c.raised(false);
        c.suppressed();
        c.suppressed();
        c.busy();
        c.refused_full();
        c.refused_suspended();
        let s = c.snapshot();
        assert_eq!((s.frames_sent, s.bytes_sent, s.sbals_sent), (3, 300, 1));
        assert_eq!(
            s.output_queues[1],
            OutputQueueCounts {
                sbals: 1,
                frames: 3,
                bytes: 300
            }
        );
        assert_eq!(s.output_queues[0], OutputQueueCounts::default());
        assert_eq!(
            (s.frames_received, s.bytes_received, s.sbals_received),
            (2, 20, 1)
        );
        assert_eq!(s.errors_for(Reason::TargetFull), 2);
        assert_eq!(s.malformed(), 2);
        assert_eq!(s.errors_total(), 4);
        assert_eq!(
            (
                s.interrupts_raised,
                s.interrupts_dropped,
                s.interrupts_suppressed
            ),
            (1, 3, 2)
        );
        assert_eq!((s.busy, s.refused_full, s.refused_suspended), (1, 1, 1));
        c.reset();
        assert_eq!(c.snapshot(), CounterSnapshot::default());
    }
}
