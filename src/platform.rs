//! What an embedding environment provides to the fabric.

use crate::table::LparId;

/// Where an interrupt goes: the receiving partition, its subchannel, and the
/// hypervisor's own routing data for that queue set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptTarget {
    /// The partition to interrupt.
    pub lpar: LparId,
    /// The subchannel whose queue got work.
    pub subchannel: u16,
    /// The queue set's interrupt cookie, as the hypervisor gave it at establish
    /// ([`QueueSetParams::interrupt_cookie`](crate::QueueSetParams::interrupt_cookie)):
    /// e.g. the receiving vCPU and the virtual INTID, so that raising needs no lookup.
    /// The fabric never interprets it.
    pub cookie: u64,
}

/// What became of an interrupt the fabric asked for ([`Platform::raise_interrupt`]).
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptDelivery {
    /// Posted: the partition will take it (an SGI sent, a list register written).
    Delivered,
    /// Not posted (no vCPU to take it, no free list register, the partition is being
    /// torn down). The fabric counts it apart from the raised ones
    /// ([`CounterSnapshot::interrupts_dropped`](crate::CounterSnapshot::interrupts_dropped)),
    /// and since the receiver's summary byte stays pending, the delay fallback
    /// ([`Fabric::expire_delays`](crate::Fabric::expire_delays)) raises it again once
    /// the delay has passed.
    Dropped,
}

impl InterruptDelivery {
    /// Whether the interrupt was posted.
    pub const fn delivered(self) -> bool {
        matches!(self, Self::Delivered)
    }
}

/// Where a fabric entry runs, as the platform tells it ([`Platform::context`]); see
/// the [execution contract](crate#execution-contract).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallContext {
    /// The platform cannot tell: the fabric trusts the embedding to keep the contract.
    Unknown,
    /// Interrupts are masked on this core and no interrupt handler runs: nothing can
    /// interrupt a fabric entry here, so waiting for the fabric's locks is safe (an EL2
    /// trap handler for a partition's SIGA or HVC).
    Masked,
    /// Interrupts are enabled on this core: a handler may run in the middle of the call.
    Interruptible,
    /// An interrupt handler: it may have interrupted a fabric entry on this core.
    Interrupt,
}

/// A point where the fabric has just taken a lock (or, for
/// `TableExclusiveWaiting`, barred new readers and is about to wait for the ones
/// inside), reported to [`Platform::lock_point`]. Feature `test-hooks` only: tests use
/// it to interrupt the fabric at each of these points.
#[cfg(feature = "test-hooks")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockPoint {
    /// The table lock, shared (a send, the delay fallback, a read-only look).
    TableShared,
    /// An update has barred new readers and waits for the readers inside.
    TableExclusiveWaiting,
    /// The table lock, exclusive (an update).
    TableExclusive,
    /// A queue control's outbound lock.
    Outbound,
    /// A queue control's inbound lock.
    Inbound,
}

/// The services a hypervisor (or the bare-metal image, or a test) gives the fabric.
///
/// `raise_interrupt` and `now_ns` are called from inside fabric entries (a SIGA or the
/// delay fallback), on the calling core, with the fabric's table lock held shared and,
/// for `raise_interrupt`, the sender's outbound lock held too (for `now_ns` in a send,
/// the receiver's inbound lock): they must not call back into the fabric, must not
/// wait for anything a fabric entry on another core may hold, and should be quick
/// (post an interrupt, read a counter).
pub trait Platform: Sync {
    /// Raises an I/O interrupt (adapter interrupt) for `target`, and says whether it
    /// was posted. The fabric calls this exactly when its interrupt decision says so;
    /// `target.cookie` is the hypervisor's own routing data for the queue set.
    fn raise_interrupt(&self, target: InterruptTarget) -> InterruptDelivery;

    /// A monotonic clock in nanoseconds, for the interrupt decision's time stamps.
    fn now_ns(&self) -> u64;

    /// Where the current call runs. The fabric asks at each entry that may wait for
    /// its locks and refuses the call (`InterruptContext`) when the answer is
    /// [`CallContext::Interruptible`] or [`CallContext::Interrupt`]; the delay
    /// fallback then skips what it cannot take at once. The default, `Unknown`, trusts
    /// the embedding.
    fn context(&self) -> CallContext {
        CallContext::Unknown
    }

    /// Test hook (feature `test-hooks`): called at each [`LockPoint`], on the core
    /// that reached it, with that lock held.
    #[cfg(feature = "test-hooks")]
    fn lock_point(&self, point: LockPoint) {
        let _ = point;
    }
}

impl<P: Platform + ?Sized> Platform for &P {
    fn raise_interrupt(&self, target: InterruptTarget) -> InterruptDelivery {
        (**self).raise_interrupt(target)
    }

    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }

    fn context(&self) -> CallContext {
        (**self).context()
    }

    #[cfg(feature = "test-hooks")]
    fn lock_point(&self, point: LockPoint) {
        (**self).lock_point(point);
    }
}
