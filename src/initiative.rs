//! Initiative: the three-tier completion vector and the interrupt decision.
//!
//! Three bytes in the receiver's memory announce work: one per queue (lowest), one per
//! group of queues (middle, e.g. per partition), one global summary byte (top).
//!
//! - The fabric **sets low → high** ([`INDICATOR_SET`]): queue byte, middle byte, then
//!   swaps the global byte, whose old value says whether the summary was idle.
//! - The receiver **polls high → low and resets each byte before it processes what the
//!   byte announces** (an acquire load, then an atomic swap to 0 only when the load
//!   read the byte set, so that an idle poll writes nothing: a receiver polling on
//!   another core does not pull the line away from the fabric on every round). A set
//!   that races with a reset re-arms the tier above, so no initiative is lost: either
//!   the receiver's swap reads the set (and, through acquire/release, sees the frame),
//!   or the set comes after the swap, and then the global byte goes from idle to
//!   pending, which raises an interrupt unless the receiver is polling; or the load
//!   read 0 before the set, which then stays in the byte for the next poll (and the
//!   swap that set it found the summary idle and decided as above).
//!
//! A receiver that polls (its newest consumed buffer reads 0x81) needs none of the
//! bytes to find its work: it reads its SLSB, and may leave them set while it polls,
//! as Linux's qeth does under NAPI. Its deliveries then raise nothing (the receiver
//! polls, and the summary stays pending: [`decide`], rule 2); only the timer's run of
//! the fallback interrupts it, once per delay. Before it stops polling it resets them,
//! high → low, so that the next delivery finds the summary idle and interrupts.
//!
//! After setting the bytes, the fabric decides whether the receiver needs an interrupt
//! ([`decide`]), a pure function of the state it observed.

use core::sync::atomic::Ordering;

use crate::guest::GuestSlice;
use crate::sync::{fence, fence_after_rmw};

/// The value the fabric writes into an indicator byte; 0 means reset.
pub const INDICATOR_SET: u8 = 0x01;

/// One byte of the completion vector, as the protocol touches it. Guest memory
/// implements it (byte 0 of a crate-private `GuestSlice`); the loom tests implement it
/// with loom's atomics to check the orderings below.
pub trait IndicatorByte {
    /// Sets the byte (Release: what was stored before is visible to whoever sees it).
    fn set(&self);
    /// Sets the byte and returns whether it was set already (AcqRel), with one atomic
    /// read-modify-write: [`signal`]'s SeqCst fence after it is the crate's
    /// `fence_after_rmw`, which on x86-64 relies on it.
    fn swap_set(&self) -> bool;
    /// Resets the byte and returns whether it was set (AcqRel: a set seen here makes
    /// the stores before that set visible). Reads first and writes only a byte it
    /// found set, so a poll that finds nothing leaves the cache line shared with the
    /// fabric instead of taking it exclusive on every poll.
    fn reset(&self) -> bool;
    /// Whether the byte is set (Acquire).
    fn is_set(&self) -> bool;
}

impl IndicatorByte for GuestSlice {
    #[inline]
    fn set(&self) {
        self.store(0, INDICATOR_SET, Ordering::Release);
    }

    #[inline]
    fn swap_set(&self) -> bool {
        self.swap(0, INDICATOR_SET, Ordering::AcqRel) != 0
    }

    fn reset(&self) -> bool {
        // A 0 read here leaves the byte alone. If a set raced with the load (a 0 read
        // while the set is already in the byte's modification order), the byte stays
        // set: the next poll finds it, and the fabric's swap of the global byte reads
        // "pending", as it would for a set the receiver had not polled yet. The set
        // whose swap found the summary idle decided an interrupt (or saw the receiver
        // polling), as before; nothing announced is lost, only a write saved.
        self.load(0, Ordering::Acquire) != 0 && self.swap(0, 0, Ordering::AcqRel) != 0
    }

    fn is_set(&self) -> bool {
        self.load(0, Ordering::Acquire) != 0
    }
}

/// What the fabric observed when it signalled a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Signalled {
    /// The global summary byte was set before this delivery.
    pub summary_was_pending: bool,
    /// The receiver's newest consumed input buffer read 0x81.
    pub receiver_polling: bool,
}

/// The fabric's side of a delivery, called after the input SLSB byte was set to 0x82
/// (Release): sets the queue, middle and global bytes low → high, then reads whether
/// the receiver polls (`polling`). The SeqCst fence between the two pairs with the
/// one in [`stop_polling`]: of a send and a receiver that stops polling at the same
/// moment, at least one sees the other (the send sees 0x80, or the receiver sees the
/// set bytes or 0x82), so no initiative is lost.
///
/// Always inlined: once a delivery, and a call built the three slices on the stack.
#[inline(always)]
pub fn signal<B: IndicatorByte + ?Sized>(
    queue: &B,
    middle: &B,
    global: &B,
    polling: impl FnOnce() -> bool,
) -> Signalled {
    queue.set();
    middle.set();
    let summary_was_pending = global.swap_set();
    // The swap is a read-modify-write: on x86-64 it fences already.
    fence_after_rmw();
    Signalled {
        summary_was_pending,
        receiver_polling: polling(),
    }
}

/// The receiver's poll of its partition-level bytes, high → low: resets the global
/// byte, then the middle byte, before looking at the work they announce. Returns
/// whether either was set.
pub fn take<B: IndicatorByte + ?Sized>(global: &B, middle: &B) -> bool {
    let g = global.reset();
    let m = middle.reset();
    g || m
}

/// The receiver's side of stopping polling: `unmark` rewrites the acknowledged buffer
/// (0x81 → 0x80), then after a SeqCst fence (pairing with [`signal`]'s) `recheck`
/// looks for work that a send which still saw 0x81 delivered without an interrupt.
/// Returns what `recheck` found: work waiting means the receiver must not sleep.
pub fn stop_polling(unmark: impl FnOnce(), recheck: impl FnOnce() -> bool) -> bool {
    unmark();
    fence(Ordering::SeqCst);
    recheck()
}

/// What the fabric observed at the end of a delivery, for [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecisionInput {
    /// The receiver asked to be interrupted at once for every delivery.
    pub interrupt_immediately: bool,
    /// The global summary byte was already set (work pending) before this delivery.
    pub summary_was_pending: bool,
    /// When the summary last went from idle to pending (or last fired the fallback).
    pub pending_since_ns: u64,
    /// Now.
    pub now_ns: u64,
    /// The fallback delay: a pending summary older than this raises an interrupt.
    pub delay_ns: u64,
    /// The receiver's newest consumed input buffer reads 0x81: it is polling.
    pub receiver_polling: bool,
}

/// Why an interrupt is raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RaiseReason {
    /// The receiver set the "interrupt immediately" override.
    Override,
    /// The summary went from idle to pending and the receiver is not polling.
    Idle,
    /// The summary has stayed pending longer than the delay: the fallback.
    DelayExpired,
}

/// Why no interrupt is raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SuppressReason {
    /// The receiver is polling (its newest consumed buffer reads 0x81).
    Polling,
    /// The summary was already pending: the receiver will poll it.
    Pending,
}

/// The interrupt decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Raise an interrupt.
    Raise(RaiseReason),
    /// Raise none.
    Suppress(SuppressReason),
}

/// [`decide`]'s answer where it does not depend on the time, and the time stamp is not
/// written ([`Decision::restamps`] false): a summary that was already pending, with the
/// override set (raise) or the receiver polling (none). `None` otherwise: then the
/// fabric reads its clock and calls [`decide`]. A streaming delivery to a polling
/// receiver takes this path, and reads no clock.
pub const fn decide_without_clock(
    interrupt_immediately: bool,
    summary_was_pending: bool,
    receiver_polling: bool,
) -> Option<Decision> {
    if !summary_was_pending {
        return None;
    }
    if interrupt_immediately {
        Some(Decision::Raise(RaiseReason::Override))
    } else if receiver_polling {
        Some(Decision::Suppress(SuppressReason::Polling))
    } else {
        None
    }
}

impl Decision {
    /// Whether an interrupt is raised.
    pub const fn raises(self) -> bool {
        matches!(self, Self::Raise(_))
    }

    /// Whether the summary's time stamp is set to now after this decision: when the
    /// summary went idle → pending, and when the fallback fired (so that it fires at
    /// most once per delay).
    pub const fn restamps(self, input: &DecisionInput) -> bool {
        !input.summary_was_pending || matches!(self, Self::Raise(RaiseReason::DelayExpired))
    }
}

/// The interrupt decision (step p) \[sister patents\]\[linux\]:
///
/// 1. the override "interrupt immediately" raises at once;
/// 2. a polling receiver (0x81) whose summary was already pending gets none: the
///    fabric does not interrupt a queue in that state \[linux\], and the receiver finds
///    its work in its SLSB;
/// 3. a summary pending for longer than the delay raises (the fallback), at most once
///    per delay;
/// 4. a polling receiver gets none;
/// 5. a summary already pending gets none: the receiver will poll;
/// 6. a summary that this delivery moved from idle to pending raises.
///
/// A receiver that claims to poll and never clears is still woken once per delay,
/// by the timer's run of the fallback ([`Fabric::expire_delays`], which looks at the
/// summary alone), not by the deliveries: rule 2 is what lets a delivery to a polling
/// receiver decide without reading the clock ([`decide_without_clock`]).
///
/// [`Fabric::expire_delays`]: crate::Fabric::expire_delays
pub const fn decide(input: &DecisionInput) -> Decision {
    // Rules 1 and 2 where the summary was pending: the same answer without the time.
    if let Some(decision) = decide_without_clock(
        input.interrupt_immediately,
        input.summary_was_pending,
        input.receiver_polling,
    ) {
        return decision;
    }
    if input.interrupt_immediately {
        return Decision::Raise(RaiseReason::Override);
    }
    if input.summary_was_pending
        && input.now_ns.saturating_sub(input.pending_since_ns) >= input.delay_ns
    {
        return Decision::Raise(RaiseReason::DelayExpired);
    }
    if input.receiver_polling {
        return Decision::Suppress(SuppressReason::Polling);
    }
    if input.summary_was_pending {
        return Decision::Suppress(SuppressReason::Pending);
    }
    Decision::Raise(RaiseReason::Idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: DecisionInput = DecisionInput {
        interrupt_immediately: false,
        summary_was_pending: false,
        pending_since_ns: 1_000,
        now_ns: 1_500,
        delay_ns: 1_000,
        receiver_polling: false,
    };

    #[test]
    fn idle_summary_raises() {
        assert_eq!(decide(&BASE), Decision::Raise(RaiseReason::Idle));
        assert!(decide(&BASE).restamps(&BASE));
    }

    #[test]
    fn pending_summary_within_the_delay_is_suppressed() {
        let i = DecisionInput {
            summary_was_pending: true,
            ..BASE
        };
        assert_eq!(decide(&i), Decision::Suppress(SuppressReason::Pending));
        assert!(
            !decide(&i).restamps(&i),
            "the stamp keeps the first pending time"
        );
    }

    #[test]
    fn pending_summary_past_the_delay_raises_the_fallback() {
        let i = DecisionInput {
            summary_was_pending: true,
            now_ns: 2_000,
            ..BASE
        };
        assert_eq!(decide(&i), Decision::Raise(RaiseReason::DelayExpired));
        assert!(decide(&i).restamps(&i));
        let just_before = DecisionInput { now_ns: 1_999, ..i };
        assert_eq!(
            decide(&just_before),
            Decision::Suppress(SuppressReason::Pending)
        );
    }

    #[test]
    fn polling_receiver_is_not_interrupted() {
        let i = DecisionInput {
            receiver_polling: true,
            ..BASE
        };
        assert_eq!(decide(&i), Decision::Suppress(SuppressReason::Polling));
        assert!(
            decide(&i).restamps(&i),
            "idle -> pending stamps even when suppressed"
        );
    }

    /// A polling receiver whose summary stays pending gets no interrupt from a
    /// delivery, however old the summary: its fallback is the timer's
    /// (`tests/initiative.rs` shows the timer waking it).
    #[test]
    fn polling_receiver_with_a_pending_summary_gets_none_from_a_delivery() {
        let i = DecisionInput {
            receiver_polling: true,
            summary_was_pending: true,
            now_ns: 10_000,
            ..BASE
        };
        assert_eq!(decide(&i), Decision::Suppress(SuppressReason::Polling));
        assert!(!decide(&i).restamps(&i), "the stamp keeps its time");
        let not_polling = DecisionInput {
            receiver_polling: false,
            ..i
        };
        assert_eq!(
            decide(&not_polling),
            Decision::Raise(RaiseReason::DelayExpired)
        );
    }

    /// Where `decide_without_clock` answers, `decide` gives the same at every time and
    /// writes no stamp; where it does not, `decide` depends on the time or restamps.
    #[test]
    fn the_answer_without_the_clock_is_decide_at_any_time() {
        for override_ in [false, true] {
            for pending in [false, true] {
                for polling in [false, true] {
                    let early = decide_without_clock(override_, pending, polling);
                    let at = |now_ns| DecisionInput {
                        interrupt_immediately: override_,
                        summary_was_pending: pending,
                        receiver_polling: polling,
                        now_ns,
                        ..BASE
                    };
                    let times = [0, 1_500, 1_999, 2_000, u64::MAX];
                    match early {
                        Some(d) => {
                            for now in times {
                                assert_eq!(decide(&at(now)), d);
                                assert!(!d.restamps(&at(now)));
                            }
                        }
                        None => assert!(times.iter().any(|&now| {
                            let d = decide(&at(now));
                            d.restamps(&at(now)) || d != decide(&at(0))
                        })),
                    }
                }
            }
        }
    }

    #[test]
    fn override_wins_over_everything() {
        for polling in [false, true] {
            for pending in [false, true] {
                let i = DecisionInput {
                    interrupt_immediately: true,
                    receiver_polling: polling,
                    summary_was_pending: pending,
                    ..BASE
                };
                assert_eq!(decide(&i), Decision::Raise(RaiseReason::Override));
            }
        }
    }

    #[test]
    fn a_clock_that_goes_backwards_does_not_fire_the_fallback() {
        let i = DecisionInput {
            summary_was_pending: true,
            now_ns: 0,
            ..BASE
        };
        assert_eq!(decide(&i), Decision::Suppress(SuppressReason::Pending));
    }

    #[test]
    fn zero_delay_makes_every_pending_delivery_raise() {
        let i = DecisionInput {
            summary_was_pending: true,
            delay_ns: 0,
            now_ns: 1_000,
            ..BASE
        };
        assert!(decide(&i).raises());
    }
}
