//! Initiative: the three-tier completion vector and the interrupt decision.
//!
//! Three bytes in the receiver's memory announce work: one per queue (lowest), one per
//! group of queues (middle, e.g. per partition), one global summary byte (top).
//!
//! - The fabric **sets low → high** ([`INDICATOR_SET`]): queue byte, middle byte, then
//!   swaps the global byte, whose old value says whether the summary was idle.
//! - The receiver **polls high → low and resets each byte before it processes what the
//!   byte announces** (an atomic swap to 0). A set that races with a reset re-arms the
//!   tier above, so no initiative is lost: either the receiver's swap reads the set
//!   (and, through acquire/release, sees the frame), or the set comes after the swap,
//!   and then the global byte goes from idle to pending, which raises an interrupt
//!   unless the receiver is polling.
//!
//! After setting the bytes, the fabric decides whether the receiver needs an interrupt
//! ([`decide`]), a pure function of the state it observed.

/// The value the fabric writes into an indicator byte; 0 means reset.
pub const INDICATOR_SET: u8 = 0x01;

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

/// The interrupt decision (step p) [sister patents][linux]:
///
/// 1. the override "interrupt immediately" raises at once;
/// 2. a summary pending for longer than the delay raises (the fallback), even while
///    the receiver claims to poll, so a receiver that never clears is still woken,
///    at most once per delay;
/// 3. a polling receiver (0x81) gets none;
/// 4. a summary already pending gets none: the receiver will poll;
/// 5. a summary that this delivery moved from idle to pending raises.
pub const fn decide(input: &DecisionInput) -> Decision {
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

    #[test]
    fn polling_receiver_that_never_clears_gets_the_fallback() {
        let i = DecisionInput {
            receiver_polling: true,
            summary_was_pending: true,
            now_ns: 10_000,
            ..BASE
        };
        assert_eq!(decide(&i), Decision::Raise(RaiseReason::DelayExpired));
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
