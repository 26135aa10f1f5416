//! GICv3 (`-M virt,gic-version=3`): distributor set-up on the boot core, redistributor
//! and CPU interface set-up on each core, core discovery, SGIs.
//!
//! The CPU interface is system registers, so sending, acknowledging and ending an
//! interrupt take no lock. QEMU's `virt` GIC has no security extensions (GICD_CTLR.DS
//! reads 1): one security state, Group 1 interrupts. Register offsets are from the
//! GICv3/v4 architecture specification (IHI 0069).

use core::arch::asm;

use super::{
    cpu,
    layout::{GICD_BASE, GICR_BASE, GICR_END, GICR_STRIDE},
    timer,
};

/// SGI that signals a partition: counted per core (`take_interrupts`).
pub(crate) const PARTITION_SGI: u32 = 0;
/// SGI the board uses to wake a core for a job or for a job's completion; not counted.
pub(crate) const DOORBELL_SGI: u32 = 1;
/// INTIDs from 1020 up are special: 1023 means no pending interrupt.
pub(crate) const SPECIAL_INTID_START: u32 = 1020;

const GICD_CTLR: usize = 0x0000;
const GICD_CTLR_RWP: u32 = 1 << 31;
const GICD_CTLR_ARE: u32 = 1 << 4;
const GICD_CTLR_ENABLE_G1: u32 = 1 << 1;
const GICD_CTLR_ENABLE_G0: u32 = 1 << 0;

const GICR_TYPER: usize = 0x0008;
const GICR_TYPER_LAST: u64 = 1 << 4;
const GICR_WAKER: usize = 0x0014;
const GICR_WAKER_PROCESSOR_SLEEP: u32 = 1 << 1;
const GICR_WAKER_CHILDREN_ASLEEP: u32 = 1 << 2;
/// The SGI/PPI frame follows the RD frame.
const SGI_FRAME: usize = 0x1_0000;
const GICR_IGROUPR0: usize = SGI_FRAME + 0x0080;
const GICR_ISENABLER0: usize = SGI_FRAME + 0x0100;
const GICR_ICENABLER0: usize = SGI_FRAME + 0x0180;
const GICR_IPRIORITYR: usize = SGI_FRAME + 0x0400;
const GICR_IGRPMODR0: usize = SGI_FRAME + 0x0d00;

/// Priority of every interrupt the board uses (all equal: no preemption).
const PRIORITY: u32 = 0x80;

fn read32(addr: usize) -> u32 {
    // SAFETY: callers pass GIC registers, mapped as device memory by the page table.
    unsafe { core::ptr::with_exposed_provenance::<u32>(addr).read_volatile() }
}

fn write32(addr: usize, value: u32) {
    // SAFETY: callers pass GIC registers, mapped as device memory by the page table.
    unsafe { core::ptr::with_exposed_provenance_mut::<u32>(addr).write_volatile(value) }
}

fn read64(addr: usize) -> u64 {
    // SAFETY: callers pass GIC registers, mapped as device memory by the page table.
    unsafe { core::ptr::with_exposed_provenance::<u64>(addr).read_volatile() }
}

/// Counts the redistributors: one per core that QEMU created (`-smp N`), the last one
/// flagged by GICR_TYPER.Last.
pub(crate) fn count_redistributors() -> usize {
    let mut count = 0;
    let mut frame = GICR_BASE;
    while frame < GICR_END {
        count += 1;
        if read64(frame + GICR_TYPER) & GICR_TYPER_LAST != 0 {
            break;
        }
        frame += GICR_STRIDE;
    }
    count
}

/// The redistributor whose GICR_TYPER affinity is `core` (Aff0; upper levels zero).
fn redistributor(core: usize) -> Option<usize> {
    let mut frame = GICR_BASE;
    while frame < GICR_END {
        let typer = read64(frame + GICR_TYPER);
        if typer >> 32 == core as u64 {
            return Some(frame);
        }
        if typer & GICR_TYPER_LAST != 0 {
            return None;
        }
        frame += GICR_STRIDE;
    }
    None
}

/// Enables (`on`) or disables PPI `intid` (16-31) on this core's redistributor: a Linux
/// guest's virtual timer (PPI 27) reaches EL2 only while its guest runs.
pub(crate) fn set_ppi_enabled(core: usize, intid: u32, on: bool) {
    if !(16..32).contains(&intid) {
        return;
    }
    let Some(rd) = redistributor(core) else {
        return;
    };
    let reg = if on { GICR_ISENABLER0 } else { GICR_ICENABLER0 };
    write32(rd + reg, 1 << intid);
}

/// Enables the distributor with affinity routing. Boot core, once, before the others.
pub(crate) fn init_distributor() {
    write32(GICD_BASE + GICD_CTLR, GICD_CTLR_ARE);
    while read32(GICD_BASE + GICD_CTLR) & GICD_CTLR_RWP != 0 {
        core::hint::spin_loop();
    }
    write32(
        GICD_BASE + GICD_CTLR,
        GICD_CTLR_ARE | GICD_CTLR_ENABLE_G1 | GICD_CTLR_ENABLE_G0,
    );
    while read32(GICD_BASE + GICD_CTLR) & GICD_CTLR_RWP != 0 {
        core::hint::spin_loop();
    }
}

/// Wakes this core's redistributor, enables the board's SGIs and timer PPIs, and turns
/// on the CPU interface. Each core calls it for itself, with IRQs masked.
pub(crate) fn init_this_core(core: usize) -> Result<(), &'static str> {
    let rd = redistributor(core).ok_or("no GICv3 redistributor for this core")?;
    let waker = read32(rd + GICR_WAKER);
    write32(rd + GICR_WAKER, waker & !GICR_WAKER_PROCESSOR_SLEEP);
    while read32(rd + GICR_WAKER) & GICR_WAKER_CHILDREN_ASLEEP != 0 {
        core::hint::spin_loop();
    }
    // All SGIs and PPIs: Group 1, one priority, and only the board's enabled.
    write32(rd + GICR_IGROUPR0, u32::MAX);
    write32(rd + GICR_IGRPMODR0, 0);
    write32(rd + GICR_ICENABLER0, u32::MAX);
    for word in 0..8 {
        write32(rd + GICR_IPRIORITYR + 4 * word, PRIORITY * 0x0101_0101);
    }
    write32(
        rd + GICR_ISENABLER0,
        1 << PARTITION_SGI | 1 << DOORBELL_SGI | 1 << timer::WAKEUP_INTID | 1 << timer::ALARM_INTID,
    );
    // SAFETY: configures this core's GIC CPU interface: system-register access (SRE),
    // accept all priorities (PMR), no preemption grouping (BPR1), EOI also deactivates
    // (CTLR.EOImode = 0), Group 1 on. Interrupts are still masked by PSTATE.
    unsafe {
        asm!(
            "mrs {t}, icc_sre_el1",
            "orr {t}, {t}, #1",
            "msr icc_sre_el1, {t}",
            "isb",
            "msr icc_pmr_el1, {pmr}",
            "msr icc_bpr1_el1, xzr",
            "msr icc_ctlr_el1, xzr",
            "msr icc_igrpen1_el1, {one}",
            "isb",
            t = out(reg) _,
            pmr = in(reg) 0xffu64,
            one = in(reg) 1u64,
            options(nomem, nostack, preserves_flags),
        )
    };
    Ok(())
}

/// Sends SGI `intid` to `core`. Stores before the call are visible to `core` when it
/// takes the interrupt.
pub(crate) fn send_sgi_raw(core: usize, intid: u32) {
    debug_assert!(core < 16 && intid < 16);
    // ICC_SGI1R_EL1: INTID [27:24], Aff1 [23:16] = 0, TargetList [15:0] = Aff0 bit.
    let value = u64::from(intid) << 24 | 1u64 << core;
    cpu::dsb_ishst();
    // SAFETY: generating an SGI has no memory-safety effect on this core.
    unsafe {
        asm!("msr icc_sgi1r_el1, {}", "isb", in(reg) value, options(nomem, nostack, preserves_flags))
    };
}

/// Acknowledges the highest-priority pending interrupt: its INTID, or 1023 if none.
pub(crate) fn acknowledge() -> u32 {
    let iar: u64;
    // SAFETY: reading ICC_IAR1_EL1 in the IRQ handler acknowledges the interrupt it
    // returns; the handler always ends it with `end_of_interrupt`.
    unsafe { asm!("mrs {}, icc_iar1_el1", out(reg) iar, options(nomem, nostack, preserves_flags)) };
    (iar & 0xff_ffff) as u32
}

/// Ends (drops priority and deactivates) an acknowledged interrupt.
pub(crate) fn end_of_interrupt(intid: u32) {
    // SAFETY: ends an interrupt this core acknowledged.
    unsafe {
        asm!("msr icc_eoir1_el1, {}", in(reg) u64::from(intid), options(nomem, nostack, preserves_flags))
    };
}
