//! The Arm generic timer: time since boot, a busy-wait `DelayNs`, a wake-up timer for
//! sleeping with a deadline, and a per-core alarm that calls a hook.
//!
//! The system counter (CNTPCT_EL0) is shared by all cores, so times read on different
//! cores compare. The EL1 physical timer (PPI 30) wakes [`super::wait_until`] (the
//! hypervisor keeps it: CNTHCTL_EL2.EL1PCEN = 0 denies it to partitions); the EL2
//! physical timer (PPI 26) is the alarm. The virtual timer is left to the partitions.

use core::{
    arch::asm,
    sync::atomic::{AtomicUsize, Ordering},
};

use super::{cpu, layout::MAX_CORES};

/// INTID of the EL1 physical timer: the wake-up timer.
pub(crate) const WAKEUP_INTID: u32 = 30;
/// INTID of the EL2 physical timer (CNTHP): the alarm.
pub(crate) const ALARM_INTID: u32 = 26;

/// CNTx_CTL_EL0.ENABLE (IMASK clear).
const CTL_ENABLE: u64 = 1;

/// Counter ticks since boot (CNTPCT_EL0), ordered after earlier instructions.
#[inline]
pub fn ticks() -> u64 {
    let t: u64;
    // SAFETY: reading the counter has no side effects; the ISB keeps it from being read
    // early, out of program order.
    unsafe {
        asm!("isb", "mrs {}, cntpct_el0", out(reg) t, options(nomem, nostack, preserves_flags))
    };
    t
}

/// Counter frequency in Hz (CNTFRQ_EL0; 62.5 MHz under QEMU).
#[inline]
pub fn frequency() -> u64 {
    let f: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack, preserves_flags)) };
    f
}

/// Converts counter ticks to nanoseconds (rounding down).
pub fn ticks_to_ns(ticks: u64) -> u64 {
    // `max(1)`: CNTFRQ is never 0 once firmware set it, and this leaves no panic path in
    // the SIGA that reads the clock.
    (u128::from(ticks) * 1_000_000_000 / u128::from(frequency().max(1))) as u64
}

/// Converts nanoseconds to counter ticks, rounding up (so a wait is never short).
pub fn ns_to_ticks(ns: u64) -> u64 {
    let f = u128::from(frequency());
    (u128::from(ns) * f)
        .div_ceil(1_000_000_000)
        .min(u128::from(u64::MAX)) as u64
}

/// Nanoseconds since the counter started (boot). Monotonic, and the same clock on all
/// cores.
pub fn now_ns() -> u64 {
    ticks_to_ns(ticks())
}

/// Microseconds since boot (the log timestamp).
pub fn now_us() -> u64 {
    now_ns() / 1000
}

/// Busy-waits until the counter reaches `deadline_ticks`.
fn spin_until_ticks(deadline_ticks: u64) {
    while ticks() < deadline_ticks {
        core::hint::spin_loop();
    }
}

/// A busy-wait delay on the generic timer: waits at least the time asked, on any core,
/// with or without interrupts. For long waits prefer [`super::wait_until`], which sleeps.
#[derive(Clone, Copy, Debug, Default)]
pub struct Delay;

impl embedded_hal::delay::DelayNs for Delay {
    fn delay_ns(&mut self, ns: u32) {
        // One extra tick: the start may lie anywhere inside the current tick.
        spin_until_ticks(ticks() + ns_to_ticks(u64::from(ns)) + 1);
    }

    fn delay_us(&mut self, us: u32) {
        spin_until_ticks(ticks() + ns_to_ticks(u64::from(us) * 1_000) + 1);
    }

    fn delay_ms(&mut self, ms: u32) {
        spin_until_ticks(ticks() + ns_to_ticks(u64::from(ms) * 1_000_000) + 1);
    }
}

/// Arms this core's wake-up timer to fire at `deadline_ns` (an IRQ that only wakes WFI).
pub(crate) fn arm_wakeup(deadline_ns: u64) {
    let cval = ns_to_ticks(deadline_ns);
    // SAFETY: programs this core's EL1 physical timer, which only the board uses.
    unsafe {
        asm!(
            "msr cntp_cval_el0, {cval}",
            "msr cntp_ctl_el0, {ctl}",
            "isb",
            cval = in(reg) cval,
            ctl = in(reg) CTL_ENABLE,
            options(nomem, nostack, preserves_flags),
        )
    };
}

/// Stops this core's wake-up timer (also from its interrupt: it is level-triggered).
pub(crate) fn disarm_wakeup() {
    // SAFETY: disables this core's EL1 physical timer, which only the board uses.
    unsafe {
        asm!(
            "msr cntp_ctl_el0, xzr",
            "isb",
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// Per-core alarm hooks: a `fn(usize)` as `usize`, 0 for none.
static ALARM_HOOKS: [AtomicUsize; MAX_CORES] = [const { AtomicUsize::new(0) }; MAX_CORES];

/// Arms this core's alarm: at `at_ns` (see [`now_ns`]), `hook(core)` runs on this core in
/// interrupt context (IRQs masked; it may log, and may [`super::exit`]). Replaces an
/// armed alarm. Fires only while IRQs are enabled on this core.
pub fn set_alarm(at_ns: u64, hook: fn(core: usize)) {
    let core = cpu::core_id();
    // Release: the hook is stored before the timer can fire (same core; keeps it simple).
    ALARM_HOOKS[core].store(hook as usize, Ordering::Release);
    let cval = ns_to_ticks(at_ns);
    // SAFETY: programs this core's EL2 physical timer, which only the alarm uses.
    unsafe {
        asm!(
            "msr cnthp_cval_el2, {cval}",
            "msr cnthp_ctl_el2, {ctl}",
            "isb",
            cval = in(reg) cval,
            ctl = in(reg) CTL_ENABLE,
            options(nomem, nostack, preserves_flags),
        )
    };
}

/// Cancels this core's alarm, if armed.
pub fn cancel_alarm() {
    // SAFETY: disables this core's EL2 physical timer, which only the alarm uses.
    unsafe {
        asm!(
            "msr cnthp_ctl_el2, xzr",
            "isb",
            options(nomem, nostack, preserves_flags)
        )
    };
    ALARM_HOOKS[cpu::core_id()].store(0, Ordering::Relaxed);
}

/// The alarm interrupt: stop the timer, run the hook once.
pub(crate) fn alarm_fired(core: usize) {
    // SAFETY: as in `cancel_alarm`.
    unsafe {
        asm!(
            "msr cnthp_ctl_el2, xzr",
            "isb",
            options(nomem, nostack, preserves_flags)
        )
    };
    let hook = ALARM_HOOKS[core].swap(0, Ordering::Acquire);
    if hook != 0 {
        // SAFETY: non-zero values in ALARM_HOOKS are only ever stored from a `fn(usize)`.
        let hook = unsafe { core::mem::transmute::<usize, fn(usize)>(hook) };
        hook(core);
    }
}
