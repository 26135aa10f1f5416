//! Board support for QEMU `virt` at EL2 (`-M virt,virtualization=on,gic-version=3 -cpu
//! cortex-a72 -smp N -m 1G`): the hypervisor's side of every core.
//!
//! Compiled only for `aarch64-unknown-none`. Everything that defines a global item
//! (entry point, exception vectors, panic handler, defmt logger, critical-section
//! implementation) lives here, never in the library code a hypervisor embeds.
//!
//! # Boot
//!
//! QEMU starts every core at EL2 (`virtualization=on`). aarch64-rt's `entry` runs on
//! core 0: it enables the EL2 MMU with the initial page table (identity map: GIC and
//! UART as device memory, RAM as normal write-back inner-shareable memory, so atomics
//! work on real cores; stack guard pages and null unmapped, see [`layout`]), turns
//! FP/SIMD on, zeroes `.bss`. The board then installs its own vectors (see
//! `exceptions.rs`: a partition's trap needs every register), moves each core onto its
//! own exception stack, sets the EL2 controls (HCR_EL2 routes IRQs to EL2, the EL1
//! physical timer stays the hypervisor's, the virtual GIC interface is on), sets up the
//! GICv3, counts the cores (one redistributor per core), starts the others with PSCI
//! `CPU_ON` over SMC, and calls the image's main function on core 0 with IRQs enabled:
//!
//! ```ignore
//! #![no_std]
//! #![no_main]
//! iqdio_hyp::board_main!(main);
//! fn main() -> ! {
//!     iqdio_hyp::board::run_on_all(|core| defmt::info!("core {} up", core)).unwrap();
//!     iqdio_hyp::board::exit(iqdio_hyp::board::ExitCode::Pass)
//! }
//! ```
//!
//! # API
//!
//! - Cores: [`cores`] `() -> usize`, [`core_id`] `() -> usize`, [`run_on_all`]
//!   `(fn(usize)) -> Result<(), JobError>` (and [`run_on_all_until`] with a deadline):
//!   runs the job on every core, returns on core 0 when all finished; callable again
//!   and again. A job may run a partition ([`crate::vm`]).
//! - Interrupts: [`send_sgi`] `(core)`; [`take_interrupts`] `() -> u32` (partition SGIs
//!   received since the last take), [`pending_interrupts`], [`interrupts_received`]
//!   `(core) -> u64`; [`wait_for_interrupt`] / [`wait_for_interrupt_until`] and the
//!   general [`wait_until`] `(deadline_ns, condition) -> bool`, which sleep in WFI without
//!   a lost wake-up; [`set_sgi_hook`] to run code when an SGI arrives. A partition SGI
//!   also becomes a virtual interrupt for the partition the core runs.
//! - Time: [`now_ns`] `() -> u64` (generic timer, same clock on all cores), [`Delay`]
//!   (`embedded_hal::delay::DelayNs`), [`set_alarm`] `(at_ns, fn(core))` /
//!   [`cancel_alarm`] (a per-core timer interrupt that calls a hook: a watchdog).
//! - Memory: [`partition_window`] `(core) -> (*mut u8, usize)`: 48 MiB per core, disjoint,
//!   16 MiB unmapped guard after each. The fabric's own memory is ordinary statics.
//! - Logging: defmt over the PL011, lines stamped `core N seconds`; the emergency
//!   console [`emergency`] prints without any lock (fault reports).
//! - Exit: [`exit`] `(ExitCode)` through semihosting (QEMU needs `-semihosting`):
//!   [`ExitCode::Pass`] 0, [`ExitCode::Failure`] 1, [`ExitCode::Panic`] 2 (the panic
//!   handler), [`ExitCode::Fault`] 3 (an unhandled exception, after an emergency report
//!   with ESR/ELR/FAR).
//!
//! # Interrupts
//!
//! SGI 0 is the partition interrupt, SGI 1 the board's doorbell for jobs, PPI 30 (EL1
//! physical timer) wakes [`wait_until`], PPI 26 (EL2 physical timer) is the alarm, PPI 27
//! (the virtual timer) is enabled only on a core running a Linux guest
//! ([`crate::vm::linux`]), whose timer it is. The
//! IRQ entry saves x0-x18, x29, x30, q0-q31, FPCR, FPSR, ELR and SPSR before any Rust code
//! runs; handlers run on the core's exception stack with IRQs masked.

mod cpu;
pub(crate) mod exceptions;
pub(crate) mod gic;
mod interrupts;
pub mod layout;
mod log;
mod smp;
mod timer;
mod uart;

use core::panic::PanicInfo;

use qemu_exit::QEMUExit;

pub use cpu::{core_id, interrupts_enabled, stack_pointer};
pub use exceptions::{
    KIND_FIQ, KIND_IRQ, KIND_SERROR, KIND_SYNC, LEAVE, RESUME, VcpuRegs, run_vcpu,
};
pub use interrupts::{
    interrupts_received, pending_interrupts, send_sgi, set_sgi_hook, take_interrupts,
    unexpected_interrupts, wait_for_interrupt, wait_for_interrupt_until, wait_until,
};
pub use layout::{MAX_CORES, WINDOW_SIZE, main_stack_bounds, partition_window};
pub use smp::{JobError, cores, online, run_on_all, run_on_all_until};
pub use timer::{Delay, cancel_alarm, frequency, now_ns, now_us, set_alarm, ticks};
pub(crate) use timer::{arm_wakeup, disarm_wakeup};
pub use uart::{EMERGENCY_MARKER, Emergency, emergency};

/// How the machine stops: the QEMU process exit status (semihosting `SYS_EXIT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum ExitCode {
    /// Everything passed.
    Pass = 0,
    /// The image found a failure (a failed test case, a wrong count).
    Failure = 1,
    /// A panic.
    Panic = 2,
    /// An exception the board does not handle (data abort, stack overflow, ...).
    Fault = 3,
}

/// Stops the whole machine (all cores) with `code` as QEMU's exit status.
pub fn exit(code: ExitCode) -> ! {
    qemu_exit::AArch64::new().exit(code as u32)
}

/// Marks the image's main function: `fn() -> !`, called on core 0 once all cores are up,
/// with IRQs enabled. Use it once, in the image's binary crate.
#[macro_export]
macro_rules! board_main {
    ($main:path) => {
        #[unsafe(export_name = "__iqdio_board_image_main")]
        fn __iqdio_board_image_main() -> ! {
            let main: fn() -> ! = $main;
            main()
        }
    };
}

unsafe extern "Rust" {
    /// The image's main function, defined by [`board_main!`].
    safe fn __iqdio_board_image_main() -> !;
}

// Without an `el*` feature aarch64-rt picks the registers of the level it runs at (EL2
// here), so the partition program can use the same crate for EL1 without a clash.
use aarch64_rt::initial_pagetable;
initial_pagetable!(aarch64_rt::InitialPagetable(layout::root_table()));

aarch64_rt::entry!(primary_main, 46);

/// HCR_EL2 while no partition runs: EL1 is AArch64 (RW), physical IRQs, FIQs and
/// SErrors go to EL2 (IMO, FMO, AMO: without IMO an IRQ targets EL1 and is never taken
/// at EL2), SMC from EL1 traps (TSC). `vm` adds VM (stage 2) for a partition.
pub const HCR_EL2_HOST: u64 = 1 << 31 | 1 << 19 | 1 << 5 | 1 << 4 | 1 << 3;

/// The EL2 controls of this core: vectors, traps, timers, virtual GIC interface.
/// Before any other set-up, with IRQs masked.
fn el2_init_this_core() {
    exceptions::install_vectors();
    // CPTR_EL2: RES1 bits 13:12 and 9:0, TFP = 0 (FP/SIMD not trapped at EL2 or below).
    // CNTHCTL_EL2: EL1PCTEN (the physical counter readable at EL1), not EL1PCEN (the
    // EL1 physical timer is the hypervisor's wake-up timer). CNTVOFF 0: a partition's
    // virtual count is the physical one. VPIDR/VMPIDR: the core's own identity.
    // ICH_HCR_EL2.En: the virtual CPU interface on; ICH_VMCR_EL2: VPMR 0xff, VENG1.
    // SAFETY: EL2 control registers of this core; nothing runs at EL1 yet.
    unsafe {
        core::arch::asm!(
            "msr cptr_el2, {cptr}",
            "msr cnthctl_el2, {cnthctl}",
            "msr cntvoff_el2, xzr",
            "mrs {t}, midr_el1",
            "msr vpidr_el2, {t}",
            "mrs {t}, mpidr_el1",
            "msr vmpidr_el2, {t}",
            "msr hcr_el2, {hcr}",
            "msr ich_hcr_el2, {ich_hcr}",
            "msr ich_vmcr_el2, {vmcr}",
            "isb",
            cptr = in(reg) 0x33ffu64,
            cnthctl = in(reg) 1u64,
            hcr = in(reg) HCR_EL2_HOST,
            ich_hcr = in(reg) 1u64,
            vmcr = in(reg) 0xffu64 << 24 | 1 << 1,
            t = out(reg) _,
            options(nostack, preserves_flags),
        )
    };
}

/// Rust entry of core 0 (aarch64-rt: MMU, FP, .bss done; IRQs masked).
fn primary_main(_x0: u64, _x1: u64, _x2: u64, _x3: u64) -> ! {
    // SAFETY: first thing on core 0, IRQs masked, on aarch64-rt's boot stack (SP_EL2);
    // core 0's exception stack is reserved for it by the linker script.
    unsafe { cpu::use_separate_exception_stack(layout::exception_stack_top(0)) };
    el2_init_this_core();
    if cpu::core_id() != 0 || cpu::upper_affinity() != 0 {
        smp::boot_failure(cpu::core_id(), "booted on a core other than 0");
    }
    if !layout::tables_in_place() {
        smp::boot_failure(0, "translation tables are not where the level-1 table says");
    }
    gic::init_distributor();
    let found = gic::count_redistributors();
    if let Err(why) = gic::init_this_core(0) {
        smp::boot_failure(0, why);
    }
    let n = found.min(MAX_CORES);
    // Fault now, with a clear report, if QEMU has less RAM than the windows need.
    let (last_window, size) = partition_window(n - 1);
    // SAFETY: the window is mapped normal memory that nothing uses yet; reading a byte
    // has no effect besides the access (which faults if RAM is missing).
    unsafe { last_window.add(size - 1).read_volatile() };
    if let Err((core, why)) = smp::start_secondaries(n) {
        smp::boot_failure(core, why);
    }
    cpu::enable_interrupts();
    if found > MAX_CORES {
        defmt::warn!("board: {} cores found, using {}", found, MAX_CORES);
    }
    defmt::info!(
        "board: {} cores up, timer {} Hz, windows {} MiB",
        n,
        timer::frequency(),
        WINDOW_SIZE >> 20
    );
    __iqdio_board_image_main()
}

/// Set while a core panics, so a panic inside the panic handler stops at once.
static PANICKING: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    let core = cpu::core_id();
    let nested = PANICKING.swap(true, core::sync::atomic::Ordering::Relaxed);
    if nested || log::logging_on_this_core() {
        // The logger is unusable from here: print without it.
        emergency(|w| {
            use core::fmt::Write;
            w.str("PANIC on core ").dec(core as u64).str(": ");
            let _ = write!(w, "{}", info);
        });
    } else {
        defmt::error!("panic on core {}: {}", core, defmt::Display2Format(info));
    }
    exit(ExitCode::Panic)
}
