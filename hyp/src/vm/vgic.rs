//! Virtual interrupts: the partition interrupt becomes a pending virtual IRQ in a GICv3
//! list register of the receiving core.
//!
//! The sender's `Platform::raise_interrupt` sends SGI 0 to the receiver's core. That
//! core takes it at EL2 (HCR_EL2.IMO), whether its partition was running or not, and
//! [`partition_interrupt`] writes a list register: state pending, Group 1, vINTID
//! [`ADAPTER_VINTID`]. The partition takes it at its VBAR_EL1 + 0x280 after the ERET,
//! acknowledges with ICC_IAR1_EL1 and ends it with ICC_EOIR1_EL1 (both go to the virtual
//! interface under IMO); a partition idle in WFI wakes for it even with PSTATE.I set.
//! One pending virtual interrupt carries all the work that arrived: a second one is
//! not queued while the first is still pending (the indicators say what is there).

use core::arch::asm;

/// The virtual INTID of the adapter (partition) interrupt, as the partition sees it.
pub const ADAPTER_VINTID: u64 = 48;
/// List registers used: QEMU's GICv3 has 4 (ICH_VTR_EL2.ListRegs = 3).
pub(crate) const LIST_REGISTERS: usize = 4;

/// ICH_LR<n>_EL2 fields (GICv3 spec, 12.4.6): State [63:62], HW [61], Group [60],
/// Priority [55:48], vINTID [31:0].
const LR_STATE_PENDING: u64 = 0b01 << 62;
const LR_STATE_MASK: u64 = 0b11 << 62;
const LR_GROUP1: u64 = 1 << 60;
const LR_PRIORITY: u64 = 0xa0 << 48;
const LR_VINTID_MASK: u64 = 0xffff_ffff;

pub(crate) fn read_lr(n: usize) -> u64 {
    let v: u64;
    // SAFETY: reading a list register of this core has no side effects.
    unsafe {
        match n {
            0 => asm!("mrs {}, ich_lr0_el2", out(reg) v, options(nomem, nostack, preserves_flags)),
            1 => asm!("mrs {}, ich_lr1_el2", out(reg) v, options(nomem, nostack, preserves_flags)),
            2 => asm!("mrs {}, ich_lr2_el2", out(reg) v, options(nomem, nostack, preserves_flags)),
            _ => asm!("mrs {}, ich_lr3_el2", out(reg) v, options(nomem, nostack, preserves_flags)),
        }
    }
    v
}

pub(crate) fn write_lr(n: usize, v: u64) {
    // SAFETY: list registers only affect the virtual interrupts of the partition this
    // core runs; called with IRQs masked, at EL2.
    unsafe {
        match n {
            0 => asm!("msr ich_lr0_el2, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            1 => asm!("msr ich_lr1_el2, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            2 => asm!("msr ich_lr2_el2, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
            _ => asm!("msr ich_lr3_el2, {}", in(reg) v, options(nomem, nostack, preserves_flags)),
        }
    }
}

/// ICH_ELRSR_EL2: bit n set when list register n holds no interrupt. After the
/// partition's EOI a register keeps its other fields with state 00, so "empty" is read
/// here, never guessed from the register being zero.
pub(crate) fn empty_list_registers() -> u64 {
    let v: u64;
    // SAFETY: reading ICH_ELRSR_EL2 has no side effects.
    unsafe { asm!("mrs {}, ich_elrsr_el2", out(reg) v, options(nomem, nostack, preserves_flags)) };
    v
}

/// What to write, given the list registers' contents and the empty bitmap: the list
/// register to use, or `None` when the interrupt is pending already (or all are busy,
/// which cannot happen with one vINTID). Pure, for reading and testing.
pub fn choose(lrs: [u64; LIST_REGISTERS], empty: u64, vintid: u64) -> Option<usize> {
    let busy = |n: usize| empty & (1 << n) == 0;
    if (0..LIST_REGISTERS).any(|n| {
        busy(n) && lrs[n] & LR_VINTID_MASK == vintid && lrs[n] & LR_STATE_MASK == LR_STATE_PENDING
    }) {
        return None;
    }
    (0..LIST_REGISTERS).find(|&n| !busy(n))
}

/// The partition interrupt arrived at this core (IRQ context): if the core runs a
/// partition, make the adapter interrupt pending for it.
pub fn partition_interrupt(core: usize) {
    // A Linux guest has no adapter interrupt: its queue set feeds its virtio-net
    // device, which the core's next trap exit serves (`vnet`).
    if super::linux::runs_linux(core) {
        super::vnet::fabric_interrupt(core);
        return;
    }
    if super::running_lpar(core).is_none() {
        return;
    }
    let lrs = core::array::from_fn(read_lr);
    if let Some(n) = choose(lrs, empty_list_registers(), ADAPTER_VINTID) {
        write_lr(
            n,
            LR_STATE_PENDING | LR_GROUP1 | LR_PRIORITY | ADAPTER_VINTID,
        );
    }
}

/// Empties every list register (a partition starts or ended on this core).
pub fn clear() {
    for n in 0..LIST_REGISTERS {
        write_lr(n, 0);
    }
}
