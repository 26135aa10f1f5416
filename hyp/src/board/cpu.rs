//! The few processor instructions the board needs: core identity, interrupt masking,
//! sleeping, barriers, and the switch to a separate exception stack.

use core::arch::asm;

/// Which core this code runs on: 0 for the boot core, up to `cores() - 1`.
///
/// QEMU `virt` numbers cores by MPIDR_EL1.Aff0 (clusters of 16 with GICv3, and the board
/// has at most 8 cores).
#[inline]
pub fn core_id() -> usize {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack, preserves_flags)) };
    (mpidr & 0xff) as usize
}

/// MPIDR_EL1 affinity levels 1-3 (all zero on this board).
pub(crate) fn upper_affinity() -> u64 {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack, preserves_flags)) };
    mpidr & 0xff_00ff_ff00
}

/// DAIF.I: IRQs masked.
const DAIF_I: u64 = 1 << 7;

/// Masks IRQs and FIQs on this core and returns the previous DAIF for [`restore_daif`].
#[inline]
pub(crate) fn mask_interrupts() -> u64 {
    let daif: u64;
    // SAFETY: masking interrupts on this core cannot break memory safety. The asm acts as
    // a compiler barrier (no `nomem`), so accesses are not moved out of the masked region.
    unsafe {
        asm!("mrs {}, daif", "msr daifset, #3", out(reg) daif, options(nostack, preserves_flags))
    };
    daif
}

/// Restores a DAIF value saved by [`mask_interrupts`].
#[inline]
pub(crate) fn restore_daif(daif: u64) {
    // SAFETY: restores a mask state this core had before; a compiler barrier like above.
    unsafe { asm!("msr daif, {}", in(reg) daif, options(nostack, preserves_flags)) };
}

/// Unmasks IRQs (and FIQs) on this core.
#[inline]
pub(crate) fn enable_interrupts() {
    // SAFETY: the vectors are installed and the GIC is set up before any caller unmasks.
    unsafe { asm!("msr daifclr, #3", options(nostack, preserves_flags)) };
}

/// Whether IRQs are unmasked on this core.
#[inline]
pub fn interrupts_enabled() -> bool {
    let daif: u64;
    // SAFETY: reading DAIF has no side effects.
    unsafe { asm!("mrs {}, daif", out(reg) daif, options(nomem, nostack, preserves_flags)) };
    daif & DAIF_I == 0
}

/// Waits for an interrupt. Wakes on a pending IRQ even while IRQs are masked.
#[inline]
pub(crate) fn wfi() {
    // SAFETY: WFI only suspends this core until an interrupt or event.
    unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
}

/// Makes this core's earlier stores visible to the inner-shareable domain before what
/// follows (a GIC system-register write such as an SGI is not ordered by `Release`).
#[inline]
pub(crate) fn dsb_ishst() {
    // SAFETY: a barrier has no effect besides ordering.
    unsafe { asm!("dsb ishst", options(nostack, preserves_flags)) };
}

/// Instruction synchronization barrier.
#[inline]
#[allow(dead_code)]
pub(crate) fn isb() {
    // SAFETY: a barrier has no effect besides ordering.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
}

/// Current stack pointer.
#[inline]
pub fn stack_pointer() -> usize {
    let sp: usize;
    // SAFETY: reading SP has no side effects.
    unsafe { asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags)) };
    sp
}

/// Keeps running on the current stack, but as SP_EL0, and gives exceptions their own
/// stack: SP_EL2 = `exception_stack_top`.
///
/// Exceptions taken to EL2 always switch to SP_EL2, so a fault on the main stack's guard
/// page (an overflow) is reported from the exception stack instead of faulting again.
///
/// # Safety
///
/// Call once per core, early, with interrupts masked, while SP_EL2 is the current stack
/// pointer (as aarch64-rt leaves it); `exception_stack_top` must be the 16-byte aligned top
/// of a mapped stack that nothing else uses.
pub(crate) unsafe fn use_separate_exception_stack(exception_stack_top: usize) {
    // SAFETY: the caller upholds the contract. SP keeps its value across the block (it
    // only changes which banked register holds it), so the compiler's frames stay valid.
    unsafe {
        asm!(
            "mov {tmp}, sp",
            "msr sp_el0, {tmp}",
            "mov sp, {top}",
            "msr spsel, #0",
            "isb",
            tmp = out(reg) _,
            top = in(reg) exception_stack_top,
        )
    };
}
