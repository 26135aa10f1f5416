//! Cases for the board support: cores, jobs, SGIs and WFI, the critical section, the
//! generic timer, logging from all cores, partition windows, the alarm, and the SIMD
//! state across interrupts.

use core::{
    cell::UnsafeCell,
    sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering},
};

use embedded_hal::delay::DelayNs;
use iqdio_hyp::board::{self, Delay, MAX_CORES};

use super::harness::{self, Case, check};

/// The board's cases, in run order.
pub const CASES: &[Case] = &[
    Case {
        name: "cores_up",
        timeout_ms: 5_000,
        run: cores_up,
    },
    Case {
        name: "run_on_all_repeat",
        timeout_ms: 10_000,
        run: run_on_all_repeat,
    },
    Case {
        name: "sgi_wakeup",
        timeout_ms: 10_000,
        run: sgi_wakeup,
    },
    Case {
        name: "critical_section",
        timeout_ms: 20_000,
        run: critical_section_excludes,
    },
    Case {
        name: "timer",
        timeout_ms: 10_000,
        run: timer,
    },
    Case {
        name: "log_all_cores",
        timeout_ms: 10_000,
        run: log_all_cores,
    },
    Case {
        name: "partition_windows",
        timeout_ms: 5_000,
        run: partition_windows,
    },
    Case {
        name: "alarm",
        timeout_ms: 5_000,
        run: alarm,
    },
    Case {
        name: "irq_preserves_simd",
        timeout_ms: 20_000,
        run: irq_preserves_simd,
    },
];

/// Per-core values written by jobs and read by core 0 afterwards.
static SLOTS: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];

fn clear_slots() {
    for slot in &SLOTS {
        slot.store(0, Ordering::Relaxed);
    }
}

/// Every core runs a job and reports its own id, from its own stack.
fn cores_up() -> Result<(), &'static str> {
    let n = board::cores();
    if !(2..=MAX_CORES).contains(&n) {
        return Err("core count outside 2..=8");
    }
    clear_slots();
    harness::run_on_all(|core| {
        let (low, high) = board::main_stack_bounds(core);
        let sp = board::stack_pointer();
        check(
            core,
            (low..high).contains(&sp),
            "stack pointer outside the core's own stack",
        );
        check(core, board::online(core), "core not marked online");
        // Release pairs with core 0's Acquire after the job (run_on_all orders it too).
        SLOTS[core].store(board::core_id() as u64 + 1, Ordering::Release);
        defmt::info!(
            "cores_up: core {=usize} reports id {=usize}",
            core,
            board::core_id()
        );
    })?;
    for (core, slot) in SLOTS.iter().enumerate().take(n) {
        if slot.load(Ordering::Acquire) != core as u64 + 1 {
            return Err("a core reported another core's id, or nothing");
        }
    }
    Ok(())
}

/// Jobs can be run again and again; every core runs each exactly once.
fn run_on_all_repeat() -> Result<(), &'static str> {
    const ROUNDS: u64 = 200;
    clear_slots();
    for _ in 0..ROUNDS {
        harness::run_on_all(|core| {
            SLOTS[core].fetch_add(1, Ordering::Relaxed);
        })?;
    }
    if SLOTS
        .iter()
        .take(board::cores())
        .all(|s| s.load(Ordering::Relaxed) == ROUNDS)
    {
        Ok(())
    } else {
        Err("a core did not run every job exactly once")
    }
}

static READY: AtomicUsize = AtomicUsize::new(0);
static HOOK_CALLS: [AtomicU32; MAX_CORES] = [const { AtomicU32::new(0) }; MAX_CORES];

fn count_hook(core: usize) {
    HOOK_CALLS[core].fetch_add(1, Ordering::Relaxed);
}

/// Waits in WFI for one SGI and checks it is counted once (and only once, after a
/// pause for duplicates), by the counters and by the hook.
fn await_one_sgi(core: usize) {
    if !check(
        core,
        board::wait_for_interrupt_until(harness::deadline_ns()),
        "no SGI arrived",
    ) {
        return;
    }
    Delay.delay_ms(2);
    check(
        core,
        board::take_interrupts() == 1,
        "SGI counted more than once",
    );
    check(
        core,
        board::pending_interrupts() == 0,
        "take_interrupts left a count",
    );
}

fn sgi_phase(job: fn(usize)) -> Result<(), &'static str> {
    READY.store(0, Ordering::Relaxed);
    let before: [u64; MAX_CORES] = core::array::from_fn(board::interrupts_received);
    for calls in &HOOK_CALLS {
        calls.store(0, Ordering::Relaxed);
    }
    harness::run_on_all(job)?;
    for (core, &was) in before.iter().enumerate().take(board::cores()) {
        if board::interrupts_received(core) != was + 1 {
            return Err("a core received other than exactly one SGI");
        }
        if HOOK_CALLS[core].load(Ordering::Relaxed) != 1 {
            return Err("the SGI hook did not run exactly once per SGI");
        }
    }
    Ok(())
}

/// Core 0 sends one SGI to every core (itself included) while they sleep in WFI; then
/// every core sends one to the next. Each SGI wakes its core and is counted once.
fn sgi_wakeup() -> Result<(), &'static str> {
    board::set_sgi_hook(Some(count_hook));
    let result = sgi_phase(|core| {
        board::take_interrupts();
        READY.fetch_add(1, Ordering::AcqRel);
        if core == 0 {
            let n = board::cores();
            // Spin: the others signal readiness without an interrupt.
            let all_ready = harness::spin_until(|| READY.load(Ordering::Acquire) == n, "");
            if all_ready.is_err() {
                harness::job_failed(0, "not every core reached the SGI wait");
            }
            // Let the others reach WFI first: the SGI must wake a sleeping core.
            Delay.delay_ms(5);
            for target in 0..n {
                board::send_sgi(target);
            }
        }
        await_one_sgi(core);
    })
    .and_then(|()| {
        sgi_phase(|core| {
            board::take_interrupts();
            let n = board::cores();
            READY.fetch_add(1, Ordering::AcqRel);
            // Spin: no SGI would wake a sleeper before all are ready.
            if harness::spin_until(|| READY.load(Ordering::Acquire) == n, "").is_err() {
                harness::job_failed(core, "not every core reached the ring");
                return;
            }
            board::send_sgi((core + 1) % n);
            await_one_sgi(core);
        })
    });
    board::set_sgi_hook(None);
    result
}

/// A counter that is deliberately not atomic: only the critical section protects it.
struct RacyCounter(UnsafeCell<u64>);

// SAFETY: every access to the counter happens inside `critical_section::with`, which is
// exactly what the case tests; a broken critical section shows up as a wrong total.
unsafe impl Sync for RacyCounter {}

static RACY: RacyCounter = RacyCounter(UnsafeCell::new(0));
const CS_ROUNDS: u64 = 2_000;

/// Every core increments a plain counter under the critical section; the total is exact.
/// The read-modify-write is spread out so that a second core inside would lose updates.
fn critical_section_excludes() -> Result<(), &'static str> {
    critical_section::with(|_| {
        // SAFETY: inside the critical section, no job is running.
        unsafe { RACY.0.get().write_volatile(0) };
    });
    harness::run_on_all(|core| {
        for round in 0..CS_ROUNDS {
            critical_section::with(|_| {
                // SAFETY: the critical section excludes all other cores and interrupts.
                let value = unsafe { RACY.0.get().read_volatile() };
                for _ in 0..8 {
                    core::hint::spin_loop();
                }
                // Nesting on the same core must work (and not release the outer one).
                critical_section::with(|_| {
                    // SAFETY: as above.
                    unsafe { RACY.0.get().write_volatile(value + 1) };
                });
            });
            if round % 256 == 0 && board::now_ns() > harness::deadline_ns() {
                harness::job_failed(core, "critical section rounds did not finish in time");
                return;
            }
        }
    })?;
    let total = critical_section::with(|_| {
        // SAFETY: inside the critical section, after every job finished.
        unsafe { RACY.0.get().read_volatile() }
    });
    let expected = CS_ROUNDS * board::cores() as u64;
    if total == expected {
        Ok(())
    } else {
        defmt::error!(
            "critical_section: total {=u64}, expected {=u64}",
            total,
            expected
        );
        Err("the total is wrong: the critical section let two cores in")
    }
}

/// On every core: the time never goes back, `DelayNs` waits at least what it is asked,
/// and a sleep with a deadline ends at the deadline.
fn timer() -> Result<(), &'static str> {
    harness::run_on_all(|core| {
        let mut last = board::now_ns();
        for _ in 0..20_000 {
            let now = board::now_ns();
            if !check(core, now >= last, "now_ns went backwards") {
                return;
            }
            last = now;
        }
        let mut delay = Delay;
        for ns in [1u32, 100, 1_000, 50_000] {
            let start = board::now_ns();
            delay.delay_ns(ns);
            if !check(
                core,
                board::now_ns() - start >= u64::from(ns),
                "delay_ns returned early",
            ) {
                return;
            }
        }
        for us in [1u32, 10, 100, 1_000] {
            let start = board::now_ns();
            delay.delay_us(us);
            let took = board::now_ns() - start;
            if !check(
                core,
                took >= u64::from(us) * 1_000,
                "delay_us returned early",
            ) {
                return;
            }
        }
        let start = board::now_ns();
        delay.delay_ms(3);
        check(
            core,
            board::now_ns() - start >= 3_000_000,
            "delay_ms returned early",
        );
        // A sleep in WFI with nothing to wake it but its deadline.
        let start = board::now_ns();
        let woke = board::wait_until(start + 2_000_000, || false);
        let took = board::now_ns() - start;
        check(
            core,
            !woke,
            "wait_until reported a condition that never held",
        );
        check(
            core,
            took >= 2_000_000,
            "wait_until returned before its deadline",
        );
    })
}

const LOG_LINES: u32 = 25;

/// All cores log at once; the host decodes the stream and counts the lines (the `expect`
/// line below tells it what to count), and any undecodable frame fails the boot.
fn log_all_cores() -> Result<(), &'static str> {
    harness::run_on_all(|core| {
        for seq in 0..LOG_LINES {
            defmt::info!(
                "logstorm core={=usize} seq={=u32} payload={=[u8]}",
                core,
                seq,
                &[core as u8, seq as u8, 0, 0xff, 0x55, 0xaa][..]
            );
        }
    })?;
    defmt::println!(
        "selftest: expect case=log_all_cores prefix=logstorm count={=u32}",
        LOG_LINES * board::cores() as u32
    );
    Ok(())
}

static WINDOW_OK: AtomicBool = AtomicBool::new(true);

/// Each core stamps its own window at both ends; core 0 then finds every stamp intact
/// (windows disjoint) and the windows at least 16 MiB, apart by at least 16 MiB.
fn partition_windows() -> Result<(), &'static str> {
    WINDOW_OK.store(true, Ordering::Relaxed);
    harness::run_on_all(|core| {
        let (base, size) = board::partition_window(core);
        let stamp = 0x1d10_0000_0000_0000 | core as u64;
        // SAFETY: the window of this core is mapped memory that only this case uses now;
        // the accesses are in bounds and aligned.
        unsafe {
            base.cast::<u64>().write_volatile(stamp);
            base.add(size - 8).cast::<u64>().write_volatile(!stamp);
        }
    })?;
    let n = board::cores();
    for core in 0..n {
        let (base, size) = board::partition_window(core);
        let stamp = 0x1d10_0000_0000_0000 | core as u64;
        // SAFETY: as in the job; all jobs finished.
        let (first, last) = unsafe {
            (
                base.cast::<u64>().read_volatile(),
                base.add(size - 8).cast::<u64>().read_volatile(),
            )
        };
        if first != stamp || last != !stamp {
            return Err("a window's stamp was overwritten: windows overlap");
        }
        if size < 16 << 20 {
            return Err("a window is smaller than 16 MiB");
        }
        if core + 1 < n {
            let (next, _) = board::partition_window(core + 1);
            if (next.addr()).saturating_sub(base.addr() + size) < 16 << 20 {
                return Err("less than 16 MiB of guard between two windows");
            }
        }
    }
    Ok(())
}

static ALARMS: [AtomicU32; MAX_CORES] = [const { AtomicU32::new(0) }; MAX_CORES];

fn alarm_hook(core: usize) {
    ALARMS[core].fetch_add(1, Ordering::Relaxed);
}

/// The alarm (the harness's watchdog on core 0) fires once, on time, on the secondaries.
fn alarm() -> Result<(), &'static str> {
    for count in &ALARMS {
        count.store(0, Ordering::Relaxed);
    }
    harness::run_on_all(|core| {
        if core == 0 {
            return; // core 0's alarm is the harness's watchdog for this very case
        }
        let at = board::now_ns() + 1_000_000;
        board::set_alarm(at, alarm_hook);
        let fired = board::wait_until(harness::deadline_ns(), || {
            ALARMS[core].load(Ordering::Relaxed) > 0
        });
        if check(core, fired, "the alarm did not fire") {
            check(core, board::now_ns() >= at, "the alarm fired early");
            Delay.delay_ms(3);
            check(
                core,
                ALARMS[core].load(Ordering::Relaxed) == 1,
                "the alarm fired twice",
            );
        }
    })
}

static STOP_SIMD: AtomicU32 = AtomicU32::new(0);

/// SGI hook that scribbles over every SIMD register and FPCR/FPSR: if the IRQ entry did
/// not save and restore them, the interrupted loop below sees the damage.
fn clobber_simd(_core: usize) {
    // SAFETY: overwrites only registers declared as clobbered, and FPCR/FPSR, which the
    // IRQ entry restores on return (this is the last code of the hook, and it uses no
    // floating point afterwards).
    unsafe {
        core::arch::asm!(
            "movi v0.16b, #0xa5", "movi v1.16b, #0xa5", "movi v2.16b, #0xa5", "movi v3.16b, #0xa5",
            "movi v4.16b, #0xa5", "movi v5.16b, #0xa5", "movi v6.16b, #0xa5", "movi v7.16b, #0xa5",
            "movi v8.16b, #0xa5", "movi v9.16b, #0xa5", "movi v10.16b, #0xa5", "movi v11.16b, #0xa5",
            "movi v12.16b, #0xa5", "movi v13.16b, #0xa5", "movi v14.16b, #0xa5", "movi v15.16b, #0xa5",
            "movi v16.16b, #0xa5", "movi v17.16b, #0xa5", "movi v18.16b, #0xa5", "movi v19.16b, #0xa5",
            "movi v20.16b, #0xa5", "movi v21.16b, #0xa5", "movi v22.16b, #0xa5", "movi v23.16b, #0xa5",
            "movi v24.16b, #0xa5", "movi v25.16b, #0xa5", "movi v26.16b, #0xa5", "movi v27.16b, #0xa5",
            "movi v28.16b, #0xa5", "movi v29.16b, #0xa5", "movi v30.16b, #0xa5", "movi v31.16b, #0xa5",
            "msr fpcr, {fpcr}",
            "msr fpsr, {fpsr}",
            fpcr = in(reg) 0b01u64 << 22, // round towards plus infinity
            fpsr = in(reg) 0x9fu64,       // every cumulative exception flag
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
            out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _, out("v16") _, out("v17") _,
            out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
            out("v30") _, out("v31") _,
            options(nostack),
        )
    };
}

/// Fills q0-q31 (each byte of qN = N + 0x10), sets FPCR to round-towards-zero and clears
/// FPSR, spins until `STOP_SIMD` is set (IRQs arrive meanwhile), then stores the
/// registers to `out` and returns (FPCR, FPSR) as they were then.
fn simd_registers_across_interrupts(out: &mut [[u8; 16]; 32]) -> (u64, u64) {
    let (fpcr, fpsr): (u64, u64);
    // SAFETY: writes only `out` (512 bytes, given as a unique reference) and registers
    // declared as clobbered; FPCR is restored to its previous value before the end.
    unsafe {
        core::arch::asm!(
            "mrs {saved}, fpcr",
            "msr fpcr, {rz}",
            "msr fpsr, xzr",
            "movi v0.16b, #0x10", "movi v1.16b, #0x11", "movi v2.16b, #0x12", "movi v3.16b, #0x13",
            "movi v4.16b, #0x14", "movi v5.16b, #0x15", "movi v6.16b, #0x16", "movi v7.16b, #0x17",
            "movi v8.16b, #0x18", "movi v9.16b, #0x19", "movi v10.16b, #0x1a", "movi v11.16b, #0x1b",
            "movi v12.16b, #0x1c", "movi v13.16b, #0x1d", "movi v14.16b, #0x1e", "movi v15.16b, #0x1f",
            "movi v16.16b, #0x20", "movi v17.16b, #0x21", "movi v18.16b, #0x22", "movi v19.16b, #0x23",
            "movi v20.16b, #0x24", "movi v21.16b, #0x25", "movi v22.16b, #0x26", "movi v23.16b, #0x27",
            "movi v24.16b, #0x28", "movi v25.16b, #0x29", "movi v26.16b, #0x2a", "movi v27.16b, #0x2b",
            "movi v28.16b, #0x2c", "movi v29.16b, #0x2d", "movi v30.16b, #0x2e", "movi v31.16b, #0x2f",
            "2:",
            "ldr {t:w}, [{stop}]",
            "cbz {t:w}, 2b",
            "stp q0, q1, [{out}, #0]", "stp q2, q3, [{out}, #32]",
            "stp q4, q5, [{out}, #64]", "stp q6, q7, [{out}, #96]",
            "stp q8, q9, [{out}, #128]", "stp q10, q11, [{out}, #160]",
            "stp q12, q13, [{out}, #192]", "stp q14, q15, [{out}, #224]",
            "stp q16, q17, [{out}, #256]", "stp q18, q19, [{out}, #288]",
            "stp q20, q21, [{out}, #320]", "stp q22, q23, [{out}, #352]",
            "stp q24, q25, [{out}, #384]", "stp q26, q27, [{out}, #416]",
            "stp q28, q29, [{out}, #448]", "stp q30, q31, [{out}, #480]",
            "mrs {fpcr}, fpcr",
            "mrs {fpsr}, fpsr",
            "msr fpcr, {saved}",
            saved = out(reg) _,
            t = out(reg) _,
            rz = in(reg) 0b11u64 << 22, // round towards zero
            stop = in(reg) STOP_SIMD.as_ptr(),
            out = in(reg) out.as_mut_ptr(),
            fpcr = out(reg) fpcr,
            fpsr = out(reg) fpsr,
            out("v0") _, out("v1") _, out("v2") _, out("v3") _, out("v4") _, out("v5") _,
            out("v6") _, out("v7") _, out("v8") _, out("v9") _, out("v10") _, out("v11") _,
            out("v12") _, out("v13") _, out("v14") _, out("v15") _, out("v16") _, out("v17") _,
            out("v18") _, out("v19") _, out("v20") _, out("v21") _, out("v22") _, out("v23") _,
            out("v24") _, out("v25") _, out("v26") _, out("v27") _, out("v28") _, out("v29") _,
            out("v30") _, out("v31") _,
            options(nostack),
        )
    };
    (fpcr, fpsr)
}

const SIMD_SGIS: u32 = 10;

/// Interrupts preserve the interrupted code's SIMD and FP control state: the secondaries
/// hold known values in q0-q31 and FPCR/FPSR while core 0 sends them SGIs whose hook
/// overwrites all of them.
fn irq_preserves_simd() -> Result<(), &'static str> {
    STOP_SIMD.store(0, Ordering::Relaxed);
    READY.store(0, Ordering::Relaxed);
    clear_slots();
    board::set_sgi_hook(Some(clobber_simd));
    let result = harness::run_on_all(|core| {
        let n = board::cores();
        if core == 0 {
            if harness::spin_until(|| READY.load(Ordering::Acquire) == n - 1, "").is_err() {
                harness::job_failed(0, "secondaries did not start the SIMD loop");
                STOP_SIMD.store(1, Ordering::Release);
                return;
            }
            // One SGI at a time per core: a second one sent while the first is still
            // pending would merge with it.
            for round in 1..=u64::from(SIMD_SGIS) {
                for target in 1..n {
                    board::send_sgi(target);
                }
                let landed = harness::spin_until(
                    || {
                        (1..n).all(|c| {
                            board::interrupts_received(c)
                                >= SLOTS[c].load(Ordering::Relaxed) + round
                        })
                    },
                    "",
                );
                if !check(
                    0,
                    landed.is_ok(),
                    "SGIs did not arrive during the SIMD loop",
                ) {
                    break;
                }
            }
            STOP_SIMD.store(1, Ordering::Release);
            return;
        }
        SLOTS[core].store(board::interrupts_received(core), Ordering::Relaxed);
        READY.fetch_add(1, Ordering::AcqRel);
        let mut regs = [[0u8; 16]; 32];
        let (fpcr, fpsr) = simd_registers_across_interrupts(&mut regs);
        board::take_interrupts();
        let intact = regs
            .iter()
            .enumerate()
            .all(|(i, q)| q.iter().all(|&b| b == 0x10 + i as u8));
        check(core, intact, "a SIMD register changed across an interrupt");
        check(core, fpcr == 0b11 << 22, "FPCR changed across an interrupt");
        check(core, fpsr == 0, "FPSR changed across an interrupt");
    });
    board::set_sgi_hook(None);
    result
}
