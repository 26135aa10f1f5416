//! What an embedding environment provides to the fabric.

use crate::table::LparId;

/// Where an interrupt goes: the receiving partition and its subchannel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterruptTarget {
    /// The partition to interrupt.
    pub lpar: LparId,
    /// The subchannel whose queue got work.
    pub subchannel: u16,
}

/// The services a hypervisor (or the bare-metal image, or a test) gives the fabric.
///
/// Both calls are made from inside a SIGA, on the sender's core, with the fabric's
/// table lock held shared: they must not call back into the fabric, and should be
/// quick (post an interrupt, read a counter).
pub trait Platform: Sync {
    /// Raises an I/O interrupt (adapter interrupt) for `target`. The fabric calls this
    /// exactly when its interrupt decision says so.
    fn raise_interrupt(&self, target: InterruptTarget);

    /// A monotonic clock in nanoseconds, for the interrupt decision's time stamps.
    fn now_ns(&self) -> u64;
}

impl<P: Platform + ?Sized> Platform for &P {
    fn raise_interrupt(&self, target: InterruptTarget) {
        (**self).raise_interrupt(target);
    }

    fn now_ns(&self) -> u64 {
        (**self).now_ns()
    }
}
