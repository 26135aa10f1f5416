//! Runs the cases: one at a time on core 0 (cases fan work out to all cores with
//! [`run_on_all`]), each under a timeout, each reported on one line.
//!
//! A case that returns after its time limit fails; one that never returns is caught by
//! the board's alarm on core 0 (a timer interrupt), which reports it failed and stops
//! the machine. Only a hang with IRQs masked on core 0 is left to the host's timeout.

use core::{
    cell::Cell,
    sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering},
};

use iqdio_hyp::board::{self, ExitCode, JobError, MAX_CORES};

/// One self-test case.
pub struct Case {
    /// Name on the result line (letters, digits, `_`).
    pub name: &'static str,
    /// Time limit; the case fails if it takes longer.
    pub timeout_ms: u32,
    /// The test: `Err(reason)` fails it.
    pub run: fn() -> Result<(), &'static str>,
}

/// Extra time after a case's limit before the alarm declares it hung.
const HANG_GRACE_MS: u64 = 1_000;

static CURRENT: AtomicPtr<Case> = AtomicPtr::new(core::ptr::null_mut());
static CASE_START_NS: AtomicU64 = AtomicU64::new(0);
static CASE_DEADLINE_NS: AtomicU64 = AtomicU64::new(u64::MAX);
static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

/// First failure reported by each core during the current job.
static JOB_FAILURES: critical_section::Mutex<Cell<[Option<&'static str>; MAX_CORES]>> =
    critical_section::Mutex::new(Cell::new([None; MAX_CORES]));

/// Runs every case of every module, prints the summary and stops the machine.
pub fn run(modules: &'static [&'static [Case]]) -> ! {
    let injected = super::settings::inject().get().is_some();
    let total = modules.iter().map(|cases| cases.len()).sum::<usize>() + usize::from(injected);
    let fail = super::settings::fail();
    let forced = fail.get();
    let forced_unknown = forced.is_some_and(|name| {
        !modules
            .iter()
            .flat_map(|c| c.iter())
            .any(|c| c.name == name)
    });
    defmt::println!(
        "selftest: plan cases={=usize} cores={=usize}",
        total + usize::from(forced_unknown),
        board::cores()
    );
    if let Some(name) = forced {
        defmt::warn!("selftest: case {=str} fails on purpose (--fail)", name);
    }
    if forced_unknown {
        FAILED.fetch_add(1, Ordering::Relaxed);
        defmt::println!(
            "selftest: case fail_on_purpose result=FAIL time_us=0 reason=names no case: {=str}",
            forced.unwrap_or("")
        );
    }
    // First, so that what it breaks does not depend on the other cases.
    if injected {
        run_case(&super::inject::CASE, false);
    }
    for case in modules.iter().flat_map(|cases| cases.iter()) {
        run_case(case, forced == Some(case.name));
    }
    let (passed, failed) = (
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    );
    defmt::println!("selftest: done passed={=u32} failed={=u32}", passed, failed);
    board::exit(if failed == 0 {
        ExitCode::Pass
    } else {
        ExitCode::Failure
    })
}

fn run_case(case: &'static Case, fail_on_purpose: bool) {
    let start = board::now_ns();
    let limit_ns = u64::from(case.timeout_ms) * 1_000_000;
    CURRENT.store(core::ptr::from_ref(case).cast_mut(), Ordering::Relaxed);
    CASE_START_NS.store(start, Ordering::Relaxed);
    CASE_DEADLINE_NS.store(start + limit_ns, Ordering::Relaxed);
    board::set_alarm(start + limit_ns + HANG_GRACE_MS * 1_000_000, case_hung);
    let mut result = (case.run)();
    board::cancel_alarm();
    let elapsed = board::now_ns() - start;
    if result.is_ok() && elapsed > limit_ns {
        result = Err("timeout: the case took longer than its limit");
    }
    if fail_on_purpose {
        result = Err("failed on purpose (--fail)");
    }
    report(case.name, elapsed / 1000, result);
}

fn report(name: &str, time_us: u64, result: Result<(), &str>) {
    match result {
        Ok(()) => {
            PASSED.fetch_add(1, Ordering::Relaxed);
            defmt::println!(
                "selftest: case {=str} result=PASS time_us={=u64}",
                name,
                time_us
            );
        }
        Err(reason) => {
            FAILED.fetch_add(1, Ordering::Relaxed);
            defmt::println!(
                "selftest: case {=str} result=FAIL time_us={=u64} reason={=str}",
                name,
                time_us,
                reason
            );
        }
    }
}

/// The alarm hook: the current case did not return in time (core 0, IRQ context).
fn case_hung(_core: usize) {
    let case = CURRENT.load(Ordering::Relaxed);
    // SAFETY: CURRENT only ever holds a pointer to a `'static Case` (set in `run_case`
    // before the alarm is armed).
    let name = unsafe { case.as_ref() }.map_or("?", |case| case.name);
    let elapsed = board::now_ns() - CASE_START_NS.load(Ordering::Relaxed);
    report(
        name,
        elapsed / 1000,
        Err("timeout: the case hung (stopped by the alarm)"),
    );
    defmt::println!(
        "selftest: done passed={=u32} failed={=u32}",
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed)
    );
    board::exit(ExitCode::Failure)
}

/// The current case's deadline (see [`board::now_ns`]); usable from jobs on any core.
pub fn deadline_ns() -> u64 {
    CASE_DEADLINE_NS.load(Ordering::Relaxed)
}

/// Records that `core` found a failure in the current job (the first one counts). The
/// job should then return.
pub fn job_failed(core: usize, reason: &'static str) {
    defmt::error!("selftest: core {=usize}: {=str}", core, reason);
    critical_section::with(|cs| {
        let cell = JOB_FAILURES.borrow(cs);
        let mut failures = cell.get();
        failures[core].get_or_insert(reason);
        cell.set(failures);
    });
}

/// `job_failed(core, reason)` unless `condition` holds; returns `condition`.
pub fn check(core: usize, condition: bool, reason: &'static str) -> bool {
    if !condition {
        job_failed(core, reason);
    }
    condition
}

/// Runs `job` on every core (see [`board::run_on_all`]) until the case's deadline; fails
/// if a core did not finish or reported a failure with [`job_failed`].
pub fn run_on_all(job: fn(core: usize)) -> Result<(), &'static str> {
    critical_section::with(|cs| JOB_FAILURES.borrow(cs).set([None; MAX_CORES]));
    board::run_on_all_until(job, deadline_ns()).map_err(|e| {
        defmt::error!("selftest: run_on_all: {}", e);
        match e {
            JobError::Timeout { .. } => "run_on_all: a core did not finish in time",
            JobError::Busy { .. } => "run_on_all: a core is still busy with an earlier job",
            JobError::NotCore0 | JobError::Reentered => "run_on_all: called from a job",
        }
    })?;
    let failures = critical_section::with(|cs| JOB_FAILURES.borrow(cs).get());
    match failures.iter().flatten().next() {
        Some(reason) => Err(reason),
        None => Ok(()),
    }
}

/// Busy-waits until `condition` holds (for conditions nobody signals with an
/// interrupt); `Err` if the case's deadline comes first.
pub fn spin_until(
    mut condition: impl FnMut() -> bool,
    what: &'static str,
) -> Result<(), &'static str> {
    while !condition() {
        if board::now_ns() > deadline_ns() {
            return Err(what);
        }
        core::hint::spin_loop();
    }
    Ok(())
}
