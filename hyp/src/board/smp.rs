//! The cores: discovery, start with PSCI `CPU_ON`, and jobs that run on every core.
//!
//! After boot, each secondary core sleeps in its job loop (WFI, woken by the doorbell
//! SGI). [`run_on_all`] publishes a job, rings every secondary, runs the job on core 0,
//! and sleeps until every core reported completion (each rings core 0's doorbell).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use aarch64_rt::Stack;

use super::{
    ExitCode, cpu, gic, interrupts,
    layout::{self, MAIN_STACK_PAGES, MAX_CORES},
    timer, uart,
};

/// Number of cores, set once by the boot core before any other reads it.
static CORES: AtomicUsize = AtomicUsize::new(1);
/// Set by each core when it finished its own set-up.
static ONLINE: [AtomicBool; MAX_CORES] = [const { AtomicBool::new(false) }; MAX_CORES];

/// The current job, a `fn(usize)` as `usize`; published before `JOB_GENERATION`.
static JOB: AtomicUsize = AtomicUsize::new(0);
/// Incremented for every job; secondaries start a job when it differs from theirs.
static JOB_GENERATION: AtomicU32 = AtomicU32::new(0);
/// The last job generation each core finished.
static FINISHED: [AtomicU32; MAX_CORES] = [const { AtomicU32::new(0) }; MAX_CORES];
/// Jobs are dispatched by one caller at a time.
static DISPATCHING: AtomicBool = AtomicBool::new(false);

/// Number of cores the machine has (QEMU `-smp N`, 2 to 8 here), discovered at boot from
/// the GICv3 redistributors. Core ids are `0..cores()`.
pub fn cores() -> usize {
    CORES.load(Ordering::Acquire)
}

/// Why [`run_on_all`] did not complete a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobError {
    /// Jobs are dispatched from core 0 only.
    NotCore0,
    /// A job is being dispatched already (`run_on_all` called from inside a job).
    Reentered,
    /// The core is still running an earlier job that timed out.
    Busy {
        /// The busy core.
        core: usize,
    },
    /// The deadline passed before these cores (bit N = core N) finished.
    Timeout {
        /// Cores that had not finished.
        unfinished: u32,
    },
}

impl defmt::Format for JobError {
    fn format(&self, f: defmt::Formatter) {
        match self {
            JobError::NotCore0 => defmt::write!(f, "run_on_all called off core 0"),
            JobError::Reentered => defmt::write!(f, "run_on_all re-entered"),
            JobError::Busy { core } => defmt::write!(f, "core {} still busy", core),
            JobError::Timeout { unfinished } => {
                defmt::write!(f, "timed out; unfinished cores {=u32:#b}", unfinished)
            }
        }
    }
}

/// Runs `job(core)` on every core, core 0 included, and returns on core 0 once all have
/// finished. The secondaries then sleep until the next job. Call it from core 0, with
/// IRQs enabled, as often as needed; pass data to the job through statics.
pub fn run_on_all(job: fn(core: usize)) -> Result<(), JobError> {
    run_on_all_until(job, u64::MAX)
}

/// Like [`run_on_all`], but stops waiting at `deadline_ns` (see [`timer::now_ns`]). A core
/// that had not finished keeps running its job; it makes later jobs fail with
/// [`JobError::Busy`] until it finishes.
pub fn run_on_all_until(job: fn(core: usize), deadline_ns: u64) -> Result<(), JobError> {
    if cpu::core_id() != 0 {
        return Err(JobError::NotCore0);
    }
    if DISPATCHING.swap(true, Ordering::Acquire) {
        return Err(JobError::Reentered);
    }
    let result = dispatch(job, deadline_ns);
    DISPATCHING.store(false, Ordering::Release);
    result
}

fn dispatch(job: fn(usize), deadline_ns: u64) -> Result<(), JobError> {
    let n = cores();
    let previous = JOB_GENERATION.load(Ordering::Relaxed);
    // Acquire pairs with the Release in `job_loop`: the core's last job is over.
    if let Some(core) = (1..n).find(|&core| FINISHED[core].load(Ordering::Acquire) != previous) {
        return Err(JobError::Busy { core });
    }
    let generation = previous.wrapping_add(1);
    JOB.store(job as usize, Ordering::Relaxed);
    // Release: publishes JOB with the generation (Acquire in `job_loop`).
    JOB_GENERATION.store(generation, Ordering::Release);
    for core in 1..n {
        gic::send_sgi_raw(core, gic::DOORBELL_SGI);
    }
    job(0);
    let unfinished = || {
        (1..n)
            .filter(|&core| FINISHED[core].load(Ordering::Acquire) != generation)
            .fold(0u32, |mask, core| mask | 1 << core)
    };
    if interrupts::wait_until(deadline_ns, || unfinished() == 0) {
        Ok(())
    } else {
        Err(JobError::Timeout {
            unfinished: unfinished(),
        })
    }
}

/// A secondary core's life after its set-up: wait for a job, run it, report, repeat.
fn job_loop(core: usize) -> ! {
    let mut done = 0;
    loop {
        interrupts::wait_until(u64::MAX, || JOB_GENERATION.load(Ordering::Acquire) != done);
        let generation = JOB_GENERATION.load(Ordering::Acquire);
        let raw = JOB.load(Ordering::Relaxed);
        // SAFETY: JOB only ever holds a `fn(usize)`, stored before the generation that
        // the Acquire load above observed.
        let job = unsafe { core::mem::transmute::<usize, fn(usize)>(raw) };
        job(core);
        done = generation;
        FINISHED[core].store(generation, Ordering::Release);
        gic::send_sgi_raw(0, gic::DOORBELL_SGI);
    }
}

/// Starts cores `1..n` with PSCI `CPU_ON` (SMC: QEMU's PSCI answers SMC when the cores
/// start at EL2) and waits until each finished its set-up.
pub(crate) fn start_secondaries(n: usize) -> Result<(), (usize, &'static str)> {
    CORES.store(n, Ordering::Release);
    ONLINE[0].store(true, Ordering::Release);
    for core in 1..n {
        let stack = core::ptr::with_exposed_provenance_mut::<Stack<MAIN_STACK_PAGES>>(
            layout::main_stack_bottom(core),
        );
        // SAFETY: `stack` is the main stack of `core`'s slot: mapped normal memory in the
        // initial page table (which the new core uses too), reserved by the linker script
        // for this purpose, and used by nothing else while the core runs (forever).
        let started = unsafe {
            aarch64_rt::start_core::<smccc::Smc, _, MAIN_STACK_PAGES>(
                core as u64,
                stack,
                move || secondary_main(core),
            )
        };
        if started.is_err() {
            return Err((core, "PSCI CPU_ON refused"));
        }
    }
    let deadline = timer::now_ns() + 2_000_000_000;
    for (core, online) in ONLINE.iter().enumerate().take(n).skip(1) {
        while !online.load(Ordering::Acquire) {
            if timer::now_ns() > deadline {
                return Err((core, "did not come up within 2 s"));
            }
            core::hint::spin_loop();
        }
    }
    Ok(())
}

/// Whether `core` finished its set-up.
pub fn online(core: usize) -> bool {
    core < MAX_CORES && ONLINE[core].load(Ordering::Acquire)
}

/// Rust entry of a secondary core at EL2, on its main stack with SP_EL2, MMU and FP set
/// up by aarch64-rt; IRQs masked.
fn secondary_main(core: usize) -> ! {
    // SAFETY: first thing on this core, IRQs masked, running on SP_EL2; the slot's
    // exception stack is reserved for this core.
    unsafe { cpu::use_separate_exception_stack(layout::exception_stack_top(core)) };
    super::el2_init_this_core();
    if cpu::core_id() != core || cpu::upper_affinity() != 0 {
        boot_failure(core, "MPIDR does not match the core number PSCI started");
    }
    if let Err(why) = gic::init_this_core(core) {
        boot_failure(core, why);
    }
    ONLINE[core].store(true, Ordering::Release);
    cpu::enable_interrupts();
    job_loop(core)
}

/// Stops the machine when a core cannot be brought up.
pub(crate) fn boot_failure(core: usize, why: &str) -> ! {
    uart::emergency(|w| {
        w.str("boot failed on core ")
            .dec(core as u64)
            .str(": ")
            .str(why);
    });
    super::exit(ExitCode::Failure)
}
