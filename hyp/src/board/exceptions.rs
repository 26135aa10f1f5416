//! Exception vectors (aarch64-rt's table), the IRQ entry that saves the SIMD state, IRQ
//! dispatch, and the fault report.

use core::arch::naked_asm;

use aarch64_rt::{ExceptionHandlers, RegisterStateRef};

use super::{
    ExitCode, cpu, exit, gic, interrupts, layout,
    timer::{self, ALARM_INTID, WAKEUP_INTID},
    uart::{self, Emergency},
};

/// The board's exception handlers: IRQs are dispatched, everything else is a fault.
struct Exceptions;

aarch64_rt::exception_handlers!(Exceptions);

impl ExceptionHandlers for Exceptions {
    extern "C" fn sync_current(state: RegisterStateRef) {
        fault("synchronous exception", &state)
    }

    /// aarch64-rt's vector saved x0-x18, x29, x30, ELR and SPSR. Rust code uses the SIMD
    /// registers, so this entry also saves all of q0-q31 (the interrupted code may hold
    /// 128-bit values in q8-q15 too: only their low halves are callee-saved), FPCR and
    /// FPSR, then calls the Rust handler.
    #[unsafe(naked)]
    extern "C" fn irq_current(_state: RegisterStateRef) {
        naked_asm!(
            "sub sp, sp, #{frame}",
            "stp x29, x30, [sp, #0]",
            "mrs x9, fpcr",
            "mrs x10, fpsr",
            "stp x9, x10, [sp, #16]",
            "stp q0, q1, [sp, #32 + 16 * 0]",
            "stp q2, q3, [sp, #32 + 16 * 2]",
            "stp q4, q5, [sp, #32 + 16 * 4]",
            "stp q6, q7, [sp, #32 + 16 * 6]",
            "stp q8, q9, [sp, #32 + 16 * 8]",
            "stp q10, q11, [sp, #32 + 16 * 10]",
            "stp q12, q13, [sp, #32 + 16 * 12]",
            "stp q14, q15, [sp, #32 + 16 * 14]",
            "stp q16, q17, [sp, #32 + 16 * 16]",
            "stp q18, q19, [sp, #32 + 16 * 18]",
            "stp q20, q21, [sp, #32 + 16 * 20]",
            "stp q22, q23, [sp, #32 + 16 * 22]",
            "stp q24, q25, [sp, #32 + 16 * 24]",
            "stp q26, q27, [sp, #32 + 16 * 26]",
            "stp q28, q29, [sp, #32 + 16 * 28]",
            "stp q30, q31, [sp, #32 + 16 * 30]",
            "mov x29, sp",
            "bl {handler}",
            "ldp q0, q1, [sp, #32 + 16 * 0]",
            "ldp q2, q3, [sp, #32 + 16 * 2]",
            "ldp q4, q5, [sp, #32 + 16 * 4]",
            "ldp q6, q7, [sp, #32 + 16 * 6]",
            "ldp q8, q9, [sp, #32 + 16 * 8]",
            "ldp q10, q11, [sp, #32 + 16 * 10]",
            "ldp q12, q13, [sp, #32 + 16 * 12]",
            "ldp q14, q15, [sp, #32 + 16 * 14]",
            "ldp q16, q17, [sp, #32 + 16 * 16]",
            "ldp q18, q19, [sp, #32 + 16 * 18]",
            "ldp q20, q21, [sp, #32 + 16 * 20]",
            "ldp q22, q23, [sp, #32 + 16 * 22]",
            "ldp q24, q25, [sp, #32 + 16 * 24]",
            "ldp q26, q27, [sp, #32 + 16 * 26]",
            "ldp q28, q29, [sp, #32 + 16 * 28]",
            "ldp q30, q31, [sp, #32 + 16 * 30]",
            "ldp x9, x10, [sp, #16]",
            "msr fpcr, x9",
            "msr fpsr, x10",
            "ldp x29, x30, [sp, #0]",
            "add sp, sp, #{frame}",
            "ret",
            frame = const 32 + 32 * 16,
            handler = sym handle_irq,
        )
    }

    extern "C" fn fiq_current(state: RegisterStateRef) {
        fault("FIQ", &state)
    }

    extern "C" fn serror_current(state: RegisterStateRef) {
        fault("SError", &state)
    }

    extern "C" fn sync_lower(state: RegisterStateRef) {
        fault("synchronous exception from a lower EL", &state)
    }

    extern "C" fn irq_lower(state: RegisterStateRef) {
        fault("IRQ from a lower EL", &state)
    }

    extern "C" fn fiq_lower(state: RegisterStateRef) {
        fault("FIQ from a lower EL", &state)
    }

    extern "C" fn serror_lower(state: RegisterStateRef) {
        fault("SError from a lower EL", &state)
    }
}

/// Acknowledges and handles every pending interrupt, then returns (IRQs stay masked
/// throughout: handlers do not nest).
extern "C" fn handle_irq() {
    let core = cpu::core_id();
    loop {
        let intid = gic::acknowledge();
        if intid >= gic::SPECIAL_INTID_START {
            break;
        }
        match intid {
            gic::PARTITION_SGI => interrupts::partition_sgi_received(core),
            gic::DOORBELL_SGI => {}
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

/// Exception class names (ESR_ELx.EC, Arm ARM D17.2.37) for the report.
fn exception_class(ec: u64) -> &'static str {
    match ec {
        0x00 => "unknown reason",
        0x01 => "trapped WFI/WFE",
        0x07 => "SIMD/FP access trap",
        0x0e => "illegal execution state",
        0x15 => "SVC",
        0x16 => "HVC",
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

/// Reports an exception the board does not handle on the emergency console and stops
/// the machine with [`ExitCode::Fault`]. Takes no lock: it must work whatever state the
/// faulting core was in.
fn fault(kind: &str, state: &RegisterStateRef) -> ! {
    let (esr, far): (u64, u64);
    // SAFETY: reading the syndrome and fault address registers has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, esr_el1", "mrs {}, far_el1", out(reg) esr, out(reg) far,
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
            .hex(state.elr as u64)
            .str(" FAR=")
            .hex(far)
            .str(" SPSR=")
            .hex(state.spsr)
            .str(" LR=")
            .hex(state.sp);
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
