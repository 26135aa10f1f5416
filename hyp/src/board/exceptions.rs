//! The EL2 exception vectors: interrupts and faults of the hypervisor itself, and the
//! way in and out of a partition (the vCPU register file, `run_vcpu`, the trap entry).
//!
//! aarch64-rt's vector table saves x0-x18, x29, x30 only: too little for a trap from a
//! partition, whose every register (x0-x30, SP_EL0, the SIMD registers, FPCR, FPSR) must
//! come back unchanged, and whose trap may end in a return to the hypervisor code that
//! started it instead of an ERET. So the table is this crate's own.
//!
//! - Current EL (the hypervisor, on SP_EL0 or SP_EL2): IRQs save the caller-saved
//!   registers, the SIMD registers, FPCR/FPSR, ELR and SPSR on the exception stack, run
//!   [`handle_irq`] and ERET; every other exception is a fault report and a stop.
//! - Lower EL (a partition at EL1): every register goes into the core's [`VcpuRegs`]
//!   (TPIDR_EL2 points at it), then `vm::trap::guest_exit` decides: resume the
//!   partition (ERET with its registers) or return from [`run_vcpu`] to the hypervisor.

use core::arch::global_asm;
use core::mem::offset_of;

use super::{
    ExitCode, cpu, exit, gic, interrupts, layout,
    timer::{self, ALARM_INTID, WAKEUP_INTID},
    uart::{self, Emergency},
};

/// A partition's registers while it is not running (and the hypervisor's callee-saved
/// registers while it is). Laid out for the assembly below.
#[repr(C, align(16))]
#[derive(Clone, Copy)]
pub struct VcpuRegs {
    /// x0-x30.
    pub x: [u64; 31],
    /// SP_EL0.
    pub sp_el0: u64,
    /// Where the partition resumes (ELR_EL2).
    pub elr: u64,
    /// Its PSTATE (SPSR_EL2).
    pub spsr: u64,
    /// q0-q31.
    pub q: [u128; 32],
    /// FPCR.
    pub fpcr: u64,
    /// FPSR.
    pub fpsr: u64,
    /// The hypervisor's x19-x30, SP and DAIF while the partition runs.
    host: [u64; 14],
    /// The hypervisor's d8-d15 while the partition runs.
    host_d: [u64; 8],
}

impl VcpuRegs {
    /// All zero: a vCPU that has not run yet.
    pub const fn new() -> Self {
        Self {
            x: [0; 31],
            sp_el0: 0,
            elr: 0,
            spsr: 0,
            q: [0; 32],
            fpcr: 0,
            fpsr: 0,
            host: [0; 14],
            host_d: [0; 8],
        }
    }
}

impl Default for VcpuRegs {
    fn default() -> Self {
        Self::new()
    }
}

// The offsets the assembly uses.
const _: () = {
    assert!(offset_of!(VcpuRegs, x) == 0);
    assert!(offset_of!(VcpuRegs, sp_el0) == 248);
    assert!(offset_of!(VcpuRegs, elr) == 256);
    assert!(offset_of!(VcpuRegs, spsr) == 264);
    assert!(offset_of!(VcpuRegs, q) == 272);
    assert!(offset_of!(VcpuRegs, fpcr) == 784);
    assert!(offset_of!(VcpuRegs, fpsr) == 792);
    assert!(offset_of!(VcpuRegs, host) == 800);
    assert!(offset_of!(VcpuRegs, host_d) == 912);
};

/// What the trap handler tells the entry code.
pub const RESUME: u64 = 0;
/// Return from [`run_vcpu`] to the hypervisor code that started the partition.
pub const LEAVE: u64 = 1;

/// Exception kinds from a lower EL, as `vm::trap::guest_exit` receives them.
pub const KIND_SYNC: u64 = 0;
/// An IRQ while the partition ran.
pub const KIND_IRQ: u64 = 1;
/// An FIQ while the partition ran (none is configured).
pub const KIND_FIQ: u64 = 2;
/// An SError while the partition ran.
pub const KIND_SERROR: u64 = 3;

unsafe extern "C" {
    /// Runs the partition whose registers `regs` holds at EL1 until its trap handler
    /// says [`LEAVE`]; then returns, with `regs` holding the partition's registers.
    ///
    /// # Safety
    ///
    /// Call from the hypervisor's main code (SP_EL0 selected, not inside an exception
    /// handler), with the core's stage 2, HCR_EL2 and the partition's EL1 state set up,
    /// and `regs` valid and used by nothing else until it returns.
    pub fn run_vcpu(regs: *mut VcpuRegs);
}

// The vector table (Arm ARM D1.10.2: 16 entries of 0x80 bytes, 2 KiB aligned), the
// hypervisor's IRQ entry, the fault entries, and the partition's way in and out.
global_asm!(
    r#"
    .macro GUEST_ENTRY kind
        sub sp, sp, #32
        stp x0, x1, [sp]
        mov x0, #\kind
        str x0, [sp, #16]
        b iqdio_guest_save
    .endm

    .section .text.iqdio_el2_vectors, "ax"
    .balign 2048
    .global iqdio_el2_vectors
iqdio_el2_vectors:
    .balign 0x80
    mov x0, #0
    b iqdio_el2_fault
    .balign 0x80
    b iqdio_el2_irq
    .balign 0x80
    mov x0, #2
    b iqdio_el2_fault
    .balign 0x80
    mov x0, #3
    b iqdio_el2_fault
    .balign 0x80
    mov x0, #0
    b iqdio_el2_fault
    .balign 0x80
    b iqdio_el2_irq
    .balign 0x80
    mov x0, #2
    b iqdio_el2_fault
    .balign 0x80
    mov x0, #3
    b iqdio_el2_fault
    .balign 0x80
    GUEST_ENTRY {kind_sync}
    .balign 0x80
    GUEST_ENTRY {kind_irq}
    .balign 0x80
    GUEST_ENTRY {kind_fiq}
    .balign 0x80
    GUEST_ENTRY {kind_serror}
    .balign 0x80
    mov x0, #4
    b iqdio_el2_fault
    .balign 0x80
    mov x0, #4
    b iqdio_el2_fault
    .balign 0x80
    mov x0, #4
    b iqdio_el2_fault
    .balign 0x80
    mov x0, #4
    b iqdio_el2_fault
    .balign 0x80

iqdio_el2_fault:
    mrs x1, elr_el2
    mrs x2, spsr_el2
    mov x3, x30
    bl {fault}

iqdio_el2_irq:
    sub sp, sp, #736
    stp x0, x1, [sp, #0]
    stp x2, x3, [sp, #16]
    stp x4, x5, [sp, #32]
    stp x6, x7, [sp, #48]
    stp x8, x9, [sp, #64]
    stp x10, x11, [sp, #80]
    stp x12, x13, [sp, #96]
    stp x14, x15, [sp, #112]
    stp x16, x17, [sp, #128]
    stp x18, x29, [sp, #144]
    mrs x0, elr_el2
    stp x30, x0, [sp, #160]
    mrs x1, spsr_el2
    mrs x2, fpcr
    stp x1, x2, [sp, #176]
    mrs x3, fpsr
    str x3, [sp, #192]
    add x0, sp, #208
    stp q0, q1, [x0, #0]
    stp q2, q3, [x0, #32]
    stp q4, q5, [x0, #64]
    stp q6, q7, [x0, #96]
    stp q8, q9, [x0, #128]
    stp q10, q11, [x0, #160]
    stp q12, q13, [x0, #192]
    stp q14, q15, [x0, #224]
    stp q16, q17, [x0, #256]
    stp q18, q19, [x0, #288]
    stp q20, q21, [x0, #320]
    stp q22, q23, [x0, #352]
    stp q24, q25, [x0, #384]
    stp q26, q27, [x0, #416]
    stp q28, q29, [x0, #448]
    stp q30, q31, [x0, #480]
    mov x29, sp
    bl {handle_irq}
    add x0, sp, #208
    ldp q0, q1, [x0, #0]
    ldp q2, q3, [x0, #32]
    ldp q4, q5, [x0, #64]
    ldp q6, q7, [x0, #96]
    ldp q8, q9, [x0, #128]
    ldp q10, q11, [x0, #160]
    ldp q12, q13, [x0, #192]
    ldp q14, q15, [x0, #224]
    ldp q16, q17, [x0, #256]
    ldp q18, q19, [x0, #288]
    ldp q20, q21, [x0, #320]
    ldp q22, q23, [x0, #352]
    ldp q24, q25, [x0, #384]
    ldp q26, q27, [x0, #416]
    ldp q28, q29, [x0, #448]
    ldp q30, q31, [x0, #480]
    ldr x3, [sp, #192]
    msr fpsr, x3
    ldp x1, x2, [sp, #176]
    msr fpcr, x2
    msr spsr_el2, x1
    ldp x30, x0, [sp, #160]
    msr elr_el2, x0
    ldp x18, x29, [sp, #144]
    ldp x16, x17, [sp, #128]
    ldp x14, x15, [sp, #112]
    ldp x12, x13, [sp, #96]
    ldp x10, x11, [sp, #80]
    ldp x8, x9, [sp, #64]
    ldp x6, x7, [sp, #48]
    ldp x4, x5, [sp, #32]
    ldp x2, x3, [sp, #16]
    ldp x0, x1, [sp, #0]
    add sp, sp, #736
    eret

iqdio_guest_save:
    mrs x0, tpidr_el2
    stp x2, x3, [x0, #16]
    stp x4, x5, [x0, #32]
    stp x6, x7, [x0, #48]
    stp x8, x9, [x0, #64]
    stp x10, x11, [x0, #80]
    stp x12, x13, [x0, #96]
    stp x14, x15, [x0, #112]
    stp x16, x17, [x0, #128]
    stp x18, x19, [x0, #144]
    stp x20, x21, [x0, #160]
    stp x22, x23, [x0, #176]
    stp x24, x25, [x0, #192]
    stp x26, x27, [x0, #208]
    stp x28, x29, [x0, #224]
    str x30, [x0, #240]
    ldp x2, x3, [sp]
    stp x2, x3, [x0, #0]
    ldr x20, [sp, #16]
    add sp, sp, #32
    mrs x2, sp_el0
    mrs x3, elr_el2
    stp x2, x3, [x0, #248]
    mrs x2, spsr_el2
    str x2, [x0, #264]
    add x1, x0, #272
    stp q0, q1, [x1, #0]
    stp q2, q3, [x1, #32]
    stp q4, q5, [x1, #64]
    stp q6, q7, [x1, #96]
    stp q8, q9, [x1, #128]
    stp q10, q11, [x1, #160]
    stp q12, q13, [x1, #192]
    stp q14, q15, [x1, #224]
    stp q16, q17, [x1, #256]
    stp q18, q19, [x1, #288]
    stp q20, q21, [x1, #320]
    stp q22, q23, [x1, #352]
    stp q24, q25, [x1, #384]
    stp q26, q27, [x1, #416]
    stp q28, q29, [x1, #448]
    stp q30, q31, [x1, #480]
    mrs x2, fpcr
    mrs x3, fpsr
    add x1, x0, #784
    stp x2, x3, [x1]
    mov x1, x20
    mov x19, x0
    mov x29, #0
    bl {guest_exit}
    mov x1, x0
    mov x0, x19
    cbnz x1, iqdio_leave_guest
iqdio_enter_guest:
    ldp x2, x3, [x0, #248]
    msr sp_el0, x2
    msr elr_el2, x3
    ldr x2, [x0, #264]
    msr spsr_el2, x2
    add x1, x0, #784
    ldp x2, x3, [x1]
    msr fpcr, x2
    msr fpsr, x3
    add x1, x0, #272
    ldp q0, q1, [x1, #0]
    ldp q2, q3, [x1, #32]
    ldp q4, q5, [x1, #64]
    ldp q6, q7, [x1, #96]
    ldp q8, q9, [x1, #128]
    ldp q10, q11, [x1, #160]
    ldp q12, q13, [x1, #192]
    ldp q14, q15, [x1, #224]
    ldp q16, q17, [x1, #256]
    ldp q18, q19, [x1, #288]
    ldp q20, q21, [x1, #320]
    ldp q22, q23, [x1, #352]
    ldp q24, q25, [x1, #384]
    ldp q26, q27, [x1, #416]
    ldp q28, q29, [x1, #448]
    ldp q30, q31, [x1, #480]
    ldp x2, x3, [x0, #16]
    ldp x4, x5, [x0, #32]
    ldp x6, x7, [x0, #48]
    ldp x8, x9, [x0, #64]
    ldp x10, x11, [x0, #80]
    ldp x12, x13, [x0, #96]
    ldp x14, x15, [x0, #112]
    ldp x16, x17, [x0, #128]
    ldp x18, x19, [x0, #144]
    ldp x20, x21, [x0, #160]
    ldp x22, x23, [x0, #176]
    ldp x24, x25, [x0, #192]
    ldp x26, x27, [x0, #208]
    ldp x28, x29, [x0, #224]
    ldr x30, [x0, #240]
    ldp x0, x1, [x0, #0]
    eret

iqdio_leave_guest:
    add x1, x0, #800
    ldp x19, x20, [x1, #0]
    ldp x21, x22, [x1, #16]
    ldp x23, x24, [x1, #32]
    ldp x25, x26, [x1, #48]
    ldp x27, x28, [x1, #64]
    ldp x29, x30, [x1, #80]
    ldp d8, d9, [x1, #112]
    ldp d10, d11, [x1, #128]
    ldp d12, d13, [x1, #144]
    ldp d14, d15, [x1, #160]
    ldp x2, x3, [x1, #96]
    msr spsel, #0
    mov sp, x2
    msr daif, x3
    ret

    .global run_vcpu
run_vcpu:
    add x1, x0, #800
    stp x19, x20, [x1, #0]
    stp x21, x22, [x1, #16]
    stp x23, x24, [x1, #32]
    stp x25, x26, [x1, #48]
    stp x27, x28, [x1, #64]
    stp x29, x30, [x1, #80]
    mov x2, sp
    mrs x3, daif
    stp x2, x3, [x1, #96]
    stp d8, d9, [x1, #112]
    stp d10, d11, [x1, #128]
    stp d12, d13, [x1, #144]
    stp d14, d15, [x1, #160]
    msr daifset, #0xf
    msr tpidr_el2, x0
    msr spsel, #1
    b iqdio_enter_guest
"#,
    kind_sync = const KIND_SYNC,
    kind_irq = const KIND_IRQ,
    kind_fiq = const KIND_FIQ,
    kind_serror = const KIND_SERROR,
    fault = sym fault_entry,
    handle_irq = sym handle_irq,
    guest_exit = sym crate::vm::trap::guest_exit,
);

/// Installs the vector table on this core (VBAR_EL2).
pub(crate) fn install_vectors() {
    // SAFETY: the table above is complete, 2 KiB aligned, and stays mapped and unchanged.
    unsafe {
        core::arch::asm!(
            "adr {t}, iqdio_el2_vectors",
            "msr vbar_el2, {t}",
            "isb",
            t = out(reg) _,
            options(nostack, preserves_flags),
        )
    };
}

/// Acknowledges and handles every pending interrupt, then returns (IRQs stay masked
/// throughout: handlers do not nest). Runs from the hypervisor's IRQ entry and from a
/// partition's trap entry alike.
pub(crate) extern "C" fn handle_irq() {
    let core = cpu::core_id();
    loop {
        let intid = gic::acknowledge();
        if intid >= gic::SPECIAL_INTID_START {
            break;
        }
        match intid {
            gic::PARTITION_SGI => {
                interrupts::partition_sgi_received(core);
                crate::vm::vgic::partition_interrupt(core);
            }
            gic::DOORBELL_SGI => {}
            crate::vm::linux::VTIMER_INTID => crate::vm::linux::vtimer_interrupt(core),
            WAKEUP_INTID => timer::disarm_wakeup(),
            ALARM_INTID => {
                // End it first: the hook may not return (it may exit).
                gic::end_of_interrupt(intid);
                timer::alarm_fired(core);
                continue;
            }
            other => interrupts::unexpected_interrupt(core, other),
        }
        gic::end_of_interrupt(intid);
    }
}

/// Exception class names (ESR_ELx.EC, Arm ARM D17.2.37) for reports.
pub(crate) fn exception_class(ec: u64) -> &'static str {
    match ec {
        0x00 => "unknown reason (undefined instruction)",
        0x01 => "trapped WFI/WFE",
        0x07 => "SIMD/FP access trap",
        0x0e => "illegal execution state",
        0x15 => "SVC",
        0x16 => "HVC",
        0x17 => "SMC",
        0x18 => "trapped MSR/MRS/system instruction",
        0x20 | 0x21 => "instruction abort",
        0x22 => "PC alignment fault",
        0x24 | 0x25 => "data abort",
        0x26 => "SP alignment fault",
        0x2f => "SError",
        0x3c => "BRK instruction",
        _ => "other",
    }
}

/// Reports an exception the hypervisor does not handle on the emergency console and
/// stops the machine with [`ExitCode::Fault`]. Takes no lock: it must work whatever
/// state the faulting core was in.
extern "C" fn fault_entry(kind: u64, elr: u64, spsr: u64, lr: u64) -> ! {
    let kind = match kind {
        0 => "synchronous exception",
        2 => "FIQ",
        3 => "SError",
        _ => "exception from AArch32",
    };
    let (esr, far): (u64, u64);
    // SAFETY: reading the syndrome and fault address registers has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, esr_el2", "mrs {}, far_el2", out(reg) esr, out(reg) far,
                         options(nomem, nostack, preserves_flags))
    };
    let ec = (esr >> 26) & 0x3f;
    let core = cpu::core_id();
    uart::emergency(|w: &mut Emergency| {
        w.str("FAULT on core ")
            .dec(core as u64)
            .str(": ")
            .str(kind)
            .str(" (")
            .str(exception_class(ec))
            .str(") ESR=")
            .hex(esr)
            .str(" ELR=")
            .hex(elr)
            .str(" FAR=")
            .hex(far)
            .str(" SPSR=")
            .hex(spsr)
            .str(" LR=")
            .hex(lr);
        if matches!(ec, 0x20 | 0x21 | 0x24 | 0x25) {
            let far = far as usize;
            if let Some((owner, main)) = layout::stack_guard_owner(far) {
                w.str(" -- stack overflow: FAR is in core ")
                    .dec(owner as u64)
                    .str(if main {
                        "'s main stack guard"
                    } else {
                        "'s exception stack guard"
                    });
            } else if let Some(owner) = layout::window_guard_owner(far) {
                w.str(" -- FAR is in the guard after partition window ")
                    .dec(owner as u64);
            } else if far < layout::PAGE_SIZE {
                w.str(" -- null pointer dereference");
            }
        }
    });
    exit(ExitCode::Fault)
}
