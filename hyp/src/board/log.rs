//! The defmt global logger over the PL011, the critical section it (and everybody else)
//! uses, and the log timestamp.
//!
//! The critical section masks IRQs on the calling core and excludes the other cores with
//! a spin lock that remembers its owner, so it nests on one core. Its restore state is
//! the saved DAIF plus a "nested" bit (feature `restore-state-u64`).

use core::{
    cell::UnsafeCell,
    sync::atomic::{AtomicUsize, Ordering},
};

use super::{cpu, timer, uart};

/// No core owns the lock.
const NO_OWNER: usize = usize::MAX;
/// Restore-state bit: the section was already held by this core (inner, nested acquire).
const NESTED: u64 = 1 << 63;

/// The core holding the critical section, or `NO_OWNER`.
static CS_OWNER: AtomicUsize = AtomicUsize::new(NO_OWNER);

struct BoardCriticalSection;
critical_section::set_impl!(BoardCriticalSection);

// SAFETY: `acquire` returns only once IRQs are masked on this core and this core owns the
// lock, so no other core and no interrupt handler runs inside the section at the same
// time; `release` undoes exactly one `acquire`, the outermost one freeing the lock.
unsafe impl critical_section::Impl for BoardCriticalSection {
    unsafe fn acquire() -> critical_section::RawRestoreState {
        let daif = cpu::mask_interrupts();
        let me = cpu::core_id();
        // Only this core stores its own id, and it cannot be interrupted now: a plain
        // load tells whether this is a nested acquire.
        if CS_OWNER.load(Ordering::Relaxed) == me {
            return daif | NESTED;
        }
        loop {
            // Acquire pairs with the Release in `release`: the previous owner's writes
            // inside its section happen before ours.
            if CS_OWNER
                .compare_exchange_weak(NO_OWNER, me, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                return daif;
            }
            while CS_OWNER.load(Ordering::Relaxed) != NO_OWNER {
                core::hint::spin_loop();
            }
        }
    }

    unsafe fn release(state: critical_section::RawRestoreState) {
        if state & NESTED == 0 {
            CS_OWNER.store(NO_OWNER, Ordering::Release);
        }
        cpu::restore_daif(state & !NESTED);
    }
}

/// Logger state; accessed only by the core that holds the critical section.
struct LoggerState {
    /// The critical section taken in `acquire`, given back in `release`.
    restore: Option<critical_section::RestoreState>,
    encoder: defmt::Encoder,
}

struct LoggerCell(UnsafeCell<LoggerState>);

// SAFETY: the state is only touched between the logger's `acquire` and `release`, that
// is, by the single core that holds the critical section.
unsafe impl Sync for LoggerCell {}

static LOGGER: LoggerCell = LoggerCell(UnsafeCell::new(LoggerState {
    restore: None,
    encoder: defmt::Encoder::new(),
}));

/// The core inside a defmt frame, or `NO_OWNER`.
static LOGGER_CORE: AtomicUsize = AtomicUsize::new(NO_OWNER);

/// Whether this core is in the middle of a defmt frame (then only the emergency console
/// can print: the panic handler checks this).
pub(crate) fn logging_on_this_core() -> bool {
    LOGGER_CORE.load(Ordering::Relaxed) == cpu::core_id()
}

#[defmt::global_logger]
struct Logger;

// SAFETY: `acquire` takes the critical section, which excludes other cores and
// interrupts on this core until `release`; a nested `acquire` on the same core (from a
// `Format` impl) panics instead of interleaving two frames.
unsafe impl defmt::Logger for Logger {
    fn acquire() {
        // SAFETY: paired with the `release` in `Logger::release`.
        let restore = unsafe { critical_section::acquire() };
        if logging_on_this_core() {
            // SAFETY: gives back the nested acquire just made; the outer frame keeps its.
            unsafe { critical_section::release(restore) };
            panic!("defmt logger re-entered on this core");
        }
        LOGGER_CORE.store(cpu::core_id(), Ordering::Relaxed);
        // SAFETY: this core holds the critical section (see `LoggerCell`).
        let state = unsafe { &mut *LOGGER.0.get() };
        state.restore = Some(restore);
        state.encoder.start_frame(uart::write_bytes);
    }

    unsafe fn flush() {}

    unsafe fn release() {
        // SAFETY: defmt calls `release` after `acquire` on this core, which still holds
        // the critical section.
        let state = unsafe { &mut *LOGGER.0.get() };
        state.encoder.end_frame(uart::write_bytes);
        let restore = state.restore.take();
        LOGGER_CORE.store(NO_OWNER, Ordering::Relaxed);
        if let Some(restore) = restore {
            // SAFETY: the critical section taken by the matching `acquire`.
            unsafe { critical_section::release(restore) };
        }
    }

    unsafe fn write(bytes: &[u8]) {
        // SAFETY: between `acquire` and `release` on this core (defmt's contract).
        let state = unsafe { &mut *LOGGER.0.get() };
        state.encoder.write(bytes, uart::write_bytes);
    }
}

defmt::timestamp!(
    "core {=u8} {=u64:us}",
    cpu::core_id() as u8,
    timer::now_us()
);
