//! Partition interrupts (an SGI per partition core), their per-core counts, an optional
//! hook, and sleeping in WFI without losing a wake-up.

use core::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use super::{cores, cpu, gic, layout::MAX_CORES, timer};

/// Partition SGIs received and not yet taken, per core.
static PENDING: [AtomicU32; MAX_CORES] = [const { AtomicU32::new(0) }; MAX_CORES];
/// Partition SGIs received since boot, per core.
static RECEIVED: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];
/// Interrupts with an INTID the board does not use, per core.
static UNEXPECTED: [AtomicU32; MAX_CORES] = [const { AtomicU32::new(0) }; MAX_CORES];
/// The SGI hook: a `fn(usize)` as `usize`, 0 for none.
static SGI_HOOK: AtomicUsize = AtomicUsize::new(0);

/// Raises the partition interrupt of `core`: a GICv3 SGI to that core (which may be the
/// calling core). Stores made before the call are visible to `core` when it counts it.
///
/// # Panics
///
/// If `core` is not below [`cores`].
pub fn send_sgi(core: usize) {
    assert!(core < cores(), "send_sgi: no core {}", core);
    gic::send_sgi_raw(core, gic::PARTITION_SGI);
}

/// Takes the partition interrupts this core received since the last call: their number.
pub fn take_interrupts() -> u32 {
    // Acquire pairs with the Release in `partition_sgi_received`, and through it with
    // the sender's stores (ordered before the SGI by `send_sgi`).
    PENDING[cpu::core_id()].swap(0, Ordering::Acquire)
}

/// Partition interrupts this core received and has not taken yet.
pub fn pending_interrupts() -> u32 {
    PENDING[cpu::core_id()].load(Ordering::Acquire)
}

/// Partition interrupts `core` received since boot (taken or not).
pub fn interrupts_received(core: usize) -> u64 {
    RECEIVED[core].load(Ordering::Relaxed)
}

/// Interrupts with an INTID the board does not use that `core` took since boot.
pub fn unexpected_interrupts(core: usize) -> u32 {
    UNEXPECTED[core].load(Ordering::Relaxed)
}

/// Installs (or with `None` removes) a hook that runs on the receiving core, in
/// interrupt context (IRQs masked), for every partition SGI, after it is counted.
/// Keep it short; it may log.
pub fn set_sgi_hook(hook: Option<fn(core: usize)>) {
    SGI_HOOK.store(hook.map_or(0, |f| f as usize), Ordering::Release);
}

/// IRQ handler part: count the SGI and run the hook.
pub(crate) fn partition_sgi_received(core: usize) {
    RECEIVED[core].fetch_add(1, Ordering::Relaxed);
    PENDING[core].fetch_add(1, Ordering::Release);
    let hook = SGI_HOOK.load(Ordering::Acquire);
    if hook != 0 {
        // SAFETY: non-zero values in SGI_HOOK are only ever stored from a `fn(usize)`.
        let hook = unsafe { core::mem::transmute::<usize, fn(usize)>(hook) };
        hook(core);
    }
}

/// IRQ handler part: an interrupt nobody enabled.
pub(crate) fn unexpected_interrupt(core: usize, _intid: u32) {
    UNEXPECTED[core].fetch_add(1, Ordering::Relaxed);
}

/// Sleeps in WFI until `condition()` holds or the time reaches `deadline_ns` (see
/// [`timer::now_ns`]; `u64::MAX` for no deadline). Returns whether the condition holds.
///
/// There is no lost wake-up: the condition is checked with IRQs masked just before WFI,
/// and WFI returns at once if an interrupt became pending since. Whoever makes the
/// condition true must therefore also interrupt this core (an SGI), unless a deadline
/// bounds the wait. Interrupts are taken (counted, hooks run) as they arrive.
///
/// # Panics
///
/// If IRQs are masked on entry (inside a critical section): nothing could wake the core.
pub fn wait_until(deadline_ns: u64, mut condition: impl FnMut() -> bool) -> bool {
    assert!(
        cpu::interrupts_enabled(),
        "wait_until with interrupts masked (inside a critical section?)"
    );
    loop {
        if condition() {
            return true;
        }
        if timer::now_ns() >= deadline_ns {
            return false;
        }
        let daif = cpu::mask_interrupts();
        if !condition() {
            if deadline_ns != u64::MAX {
                timer::arm_wakeup(deadline_ns);
            }
            cpu::wfi();
            timer::disarm_wakeup();
        }
        // Pending interrupts are taken here.
        cpu::restore_daif(daif);
    }
}

/// Sleeps in WFI until this core has a partition interrupt not yet taken (returns at
/// once if it has one). Does not take it: see [`take_interrupts`].
pub fn wait_for_interrupt() {
    wait_until(u64::MAX, || pending_interrupts() > 0);
}

/// Like [`wait_for_interrupt`], but gives up at `deadline_ns`; returns whether an
/// interrupt is pending.
pub fn wait_for_interrupt_until(deadline_ns: u64) -> bool {
    wait_until(deadline_ns, || pending_interrupts() > 0)
}
