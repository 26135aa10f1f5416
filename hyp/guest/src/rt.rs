//! The partition's runtime at EL1: its stage-1 table, the hypervisor calls, the console,
//! the virtual interrupt, time, and what ends the program (exit, panic, a fault).
//!
//! The partition has no device: no UART (text goes out through the console call), no
//! GIC distributor (its interrupt comes through the virtual CPU interface, system
//! registers only), no timer interrupt. Its SIGA is an HVC ([`HvcSiga`]).

use core::arch::{asm, naked_asm};
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use aarch64_rt::{ExceptionHandlers, InitialPagetable, RegisterStateRef, initial_pagetable};
use iqdio::{ConditionCode, SigaFunction, SigaStatus};
use iqdio_hvc::{CONSOLE_MAX, ExitStatus, HVC_BARRIER, HVC_CONSOLE_WRITE, HVC_EXIT, HVC_SIGA};

/// Where the partition's window starts (its IPA; the same for every partition).
pub const WINDOW_BASE: u64 = 0x8000_0000;
/// Where its queues and buffers start: after the 8 MiB of the program (linker/memory.ld).
pub const QUEUE_AREA: u64 = WINDOW_BASE + 0x80_0000;

/// Stage-1 block descriptors for EL1 (Arm ARM D8.3): AttrIndx (aarch64-rt's MAIR: 0
/// device nGnRE, 1 normal write-back), AF, SH inner for normal memory, PXN/UXN for
/// devices. 1 GiB blocks at level 1.
const BLOCK: usize = 0b01;
const DEVICE: usize = BLOCK | 1 << 10 | 1 << 53 | 1 << 54;
const NORMAL: usize = BLOCK | 1 << 2 | 0b11 << 8 | 1 << 10;

/// The partition's own identity map: the first three GiB. What lies behind it is stage
/// 2's business: only the window (at 2 GiB) is mapped there, so a load or store
/// anywhere else (devices in the first GiB, the hypervisor's and other partitions' RAM
/// in the second) is a stage-2 fault that stops the partition.
const fn pagetable() -> [usize; 512] {
    let mut t = [0; 512];
    t[0] = DEVICE;
    t[1] = 0x4000_0000 | NORMAL;
    t[2] = 0x8000_0000 | NORMAL;
    t
}

initial_pagetable!(InitialPagetable(pagetable()));

/// A hypervisor call: x0 the function id, x1-x5 its arguments; returns x0 and x1.
pub fn hvc(x0: u64, x1: u64, x2: u64, x3: u64, x4: u64, x5: u64) -> (u64, u64) {
    hvc6(x0, x1, x2, x3, x4, x5, 0)
}

/// [`hvc`] with x6 too (the exit call's fifth result).
pub fn hvc6(x0: u64, x1: u64, x2: u64, x3: u64, x4: u64, x5: u64, x6: u64) -> (u64, u64) {
    let (r0, r1);
    // SAFETY: the iqdio hypervisor's calls (iqdio-hvc) read the argument registers and
    // write x0 and x1; every other register comes back unchanged. Memory is a clobber:
    // a call may read the memory an argument points at.
    unsafe {
        asm!(
            "hvc #0",
            inout("x0") x0 => r0,
            inout("x1") x1 => r1,
            in("x2") x2,
            in("x3") x3,
            in("x4") x4,
            in("x5") x5,
            in("x6") x6,
            options(nostack),
        )
    };
    (r0, r1)
}

/// SIGA as this partition issues it: an HVC whose answer is the condition code and the
/// busy bit, what crosses the trap (`iqdio::Siga` returns exactly that).
#[derive(Clone, Copy, Debug, Default)]
pub struct HvcSiga;

impl iqdio::Siga for HvcSiga {
    fn siga(&self, subchannel: u16, function: SigaFunction, queue_mask: u32) -> SigaStatus {
        let (cc, busy) = hvc(
            HVC_SIGA,
            u64::from(function.code()),
            u64::from(subchannel),
            u64::from(queue_mask),
            0,
            0,
        );
        status(cc, busy)
    }

    /// SIGA WRITEQ: the QAOB's address goes in x4 (iqdio-hvc's register convention).
    fn siga_writeq(&self, subchannel: u16, queue_mask: u32, qaob: u64) -> SigaStatus {
        let (cc, busy) = hvc(
            HVC_SIGA,
            u64::from(SigaFunction::WriteQ.code()),
            u64::from(subchannel),
            u64::from(queue_mask),
            qaob,
            0,
        );
        status(cc, busy)
    }
}

/// What a SIGA call returned in x0 and x1.
fn status(cc: u64, busy: u64) -> SigaStatus {
    SigaStatus {
        // The hypervisor answers 0-3; anything else would be its bug, read as "not
        // operational".
        condition_code: ConditionCode::from_raw(cc).unwrap_or(ConditionCode::Cc3),
        busy: u32::try_from(busy).unwrap_or(0),
    }
}

/// Waits until every running partition reached the same point.
pub fn barrier() -> u64 {
    hvc(HVC_BARRIER, 0, 0, 0, 0, 0).0
}

/// Ends the partition with `status` and four results for the hypervisor's report.
pub fn exit(status: ExitStatus, results: [u64; 5]) -> ! {
    hvc6(
        HVC_EXIT,
        status as u64,
        results[0],
        results[1],
        results[2],
        results[3],
        results[4],
    );
    // The hypervisor never resumes a partition after exit.
    loop {
        // SAFETY: WFI only suspends this vCPU.
        unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
    }
}

/// One console line being built (at most [`CONSOLE_MAX`] bytes; the rest is cut).
pub struct Line {
    buf: [u8; CONSOLE_MAX],
    len: usize,
}

impl Line {
    /// An empty line.
    pub const fn new() -> Self {
        Self {
            buf: [0; CONSOLE_MAX],
            len: 0,
        }
    }

    /// Sends the line through the console call.
    pub fn send(&self) {
        hvc(
            HVC_CONSOLE_WRITE,
            self.buf.as_ptr() as u64,
            self.len as u64,
            0,
            0,
            0,
        );
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(CONSOLE_MAX - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Prints one line on the hypervisor's console (prefixed there with the partition).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        let mut line = $crate::rt::Line::new();
        let _ = core::fmt::Write::write_fmt(&mut line, format_args!($($arg)*));
        line.send();
    }};
}

/// The exception level this code runs at (CurrentEL).
pub fn current_el() -> u64 {
    let el: u64;
    // SAFETY: reading CurrentEL has no side effects.
    unsafe { asm!("mrs {}, CurrentEL", out(reg) el, options(nomem, nostack, preserves_flags)) };
    el >> 2 & 3
}

/// Virtual counter ticks (CNTVCT_EL0; the hypervisor sets CNTVOFF 0).
pub fn ticks() -> u64 {
    let t: u64;
    // SAFETY: reading the counter has no side effects; ISB keeps it in program order.
    unsafe {
        asm!("isb", "mrs {}, cntvct_el0", out(reg) t, options(nomem, nostack, preserves_flags))
    };
    t
}

/// Counter frequency in Hz.
pub fn frequency() -> u64 {
    let f: u64;
    // SAFETY: reading CNTFRQ_EL0 has no side effects.
    unsafe { asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack, preserves_flags)) };
    f
}

/// Nanoseconds since boot.
pub fn now_ns() -> u64 {
    (u128::from(ticks()) * 1_000_000_000 / u128::from(frequency().max(1))) as u64
}

/// The virtual adapter interrupts taken, not yet taken by [`take_interrupts`].
static PENDING: AtomicU32 = AtomicU32::new(0);
/// Virtual interrupts taken since boot.
pub static RECEIVED: AtomicU64 = AtomicU64::new(0);
/// Times [`wait_until`] slept in WFI.
pub static WFI_SLEEPS: AtomicU64 = AtomicU64::new(0);

/// Takes the interrupts received since the last call: their number.
pub fn take_interrupts() -> u32 {
    // Acquire pairs with the Release in the IRQ handler.
    PENDING.swap(0, Ordering::Acquire)
}

/// Interrupts received and not taken.
pub fn pending_interrupts() -> u32 {
    PENDING.load(Ordering::Acquire)
}

/// Turns the virtual CPU interface on (priority mask open, Group 1 enabled; these
/// registers are the virtual interface's under the hypervisor) and unmasks IRQs.
pub fn enable_interrupts() {
    // SAFETY: the vectors are installed (aarch64-rt's entry), the handler below runs on
    // this partition's own stack.
    unsafe {
        asm!(
            "msr icc_pmr_el1, {pmr}",
            "msr icc_bpr1_el1, xzr",
            "msr icc_igrpen1_el1, {one}",
            "isb",
            "msr daifclr, #2",
            pmr = in(reg) 0xffu64,
            one = in(reg) 1u64,
            options(nomem, nostack, preserves_flags),
        )
    };
}

/// Sleeps in WFI until `condition()` holds or `deadline_ns` passes (checked when the
/// partition wakes: it has no timer interrupt). No lost wake-up: the condition is
/// checked with IRQs masked before WFI, and a pending virtual interrupt ends WFI.
pub fn wait_until(deadline_ns: u64, mut condition: impl FnMut() -> bool) -> bool {
    loop {
        if condition() {
            return true;
        }
        if now_ns() >= deadline_ns {
            return false;
        }
        // SAFETY: masking IRQs on this vCPU; a compiler barrier (no `nomem`).
        unsafe { asm!("msr daifset, #2", options(nostack, preserves_flags)) };
        if !condition() {
            WFI_SLEEPS.fetch_add(1, Ordering::Relaxed);
            // SAFETY: WFI only suspends this vCPU until an interrupt.
            unsafe { asm!("wfi", options(nomem, nostack, preserves_flags)) };
        }
        // SAFETY: unmasking; the pending interrupt is taken here.
        unsafe { asm!("msr daifclr, #2", options(nostack, preserves_flags)) };
    }
}

/// The partition's exception handlers: its virtual IRQ, and faults it reports itself.
struct Handlers;

aarch64_rt::exception_handlers!(Handlers);

impl ExceptionHandlers for Handlers {
    /// aarch64-rt's vector saved x0-x18, x29, x30, ELR and SPSR; Rust uses the SIMD
    /// registers, so q0-q31, FPCR and FPSR are saved here around the handler.
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

    extern "C" fn sync_current(state: RegisterStateRef) {
        let (esr, far): (u64, u64);
        // SAFETY: reading the syndrome registers has no side effects.
        unsafe {
            asm!("mrs {}, esr_el1", "mrs {}, far_el1", out(reg) esr, out(reg) far,
                 options(nomem, nostack, preserves_flags))
        };
        panic!(
            "exception at EL1: ESR {:#x} ELR {:#x} FAR {:#x}",
            esr, state.elr, far
        );
    }
}

/// The virtual adapter interrupt (vINTID 48): count it, end it.
extern "C" fn handle_irq() {
    loop {
        let iar: u64;
        // SAFETY: acknowledging at the virtual interface; ended below.
        unsafe {
            asm!("mrs {}, icc_iar1_el1", out(reg) iar, options(nomem, nostack, preserves_flags))
        };
        let intid = iar & 0xff_ffff;
        if intid >= 1020 {
            break;
        }
        RECEIVED.fetch_add(1, Ordering::Relaxed);
        // Release pairs with the Acquire in `take_interrupts`.
        PENDING.fetch_add(1, Ordering::Release);
        // SAFETY: ends the interrupt just acknowledged.
        unsafe {
            asm!("msr icc_eoir1_el1, {}", in(reg) iar, options(nomem, nostack, preserves_flags))
        };
    }
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    let mut line = Line::new();
    let _ = write!(line, "panic: {}", info);
    line.send();
    exit(ExitStatus::Panic, [0; 5])
}
