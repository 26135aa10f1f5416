//! Locks: the table lock (shared for sends, exclusive for updates) and the queue
//! controls' outbound and inbound locks.
//!
//! Under `cfg(loom)` this module is the shim that swaps the lock's atomic and the queue
//! locks for loom's, so the loom tests (`tests/loom.rs`) explore every interleaving of
//! registration, sends and receivers at these points.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::Ordering;

#[cfg(not(loom))]
use core::sync::atomic::AtomicU32;
#[cfg(not(loom))]
pub(crate) use core::sync::atomic::fence;
#[cfg(loom)]
use loom::sync::atomic::AtomicU32;
#[cfg(loom)]
pub(crate) use loom::sync::atomic::fence;

/// Defines a function that is `const` except under loom, whose primitives have no
/// `const` constructors.
macro_rules! const_unless_loom {
    ($(#[$m:meta])* $vis:vis fn $name:ident $args:tt -> $ret:ty $body:block) => {
        #[cfg(not(loom))]
        $(#[$m])* $vis const fn $name $args -> $ret $body
        #[cfg(loom)]
        $(#[$m])* $vis fn $name $args -> $ret $body
    };
}
pub(crate) use const_unless_loom;

/// A pause in a spin loop (under loom: a yield, so the model lets others run).
fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    core::hint::spin_loop();
}

/// The per-queue-control lock (outbound and inbound): a spin mutex.
#[cfg(not(loom))]
pub(crate) type Mutex<T> = spin::mutex::SpinMutex<T>;

/// The per-queue-control lock under loom: loom's mutex behind the same interface.
#[cfg(loom)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

#[cfg(loom)]
impl<T> Mutex<T> {
    pub(crate) fn new(v: T) -> Self {
        Self(loom::sync::Mutex::new(v))
    }

    pub(crate) fn lock(&self) -> loom::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn try_lock(&self) -> Option<loom::sync::MutexGuard<'_, T>> {
        self.0.try_lock().ok()
    }
}

/// Bit of [`TableLock::state`] that a writer holds, or waits with.
const WRITER: u32 = 1 << 31;

/// A reader-writer spin lock that prefers writers.
///
/// Sends take it shared for their whole duration; registration takes it exclusive.
/// A plain reader-writer spin lock would starve registration while partitions keep
/// sending (some reader always holds it); here a writer first raises [`WRITER`], after
/// which new readers wait, so the writer gets in as soon as the sends in flight end.
pub(crate) struct TableLock<T> {
    /// Bit 31: a writer holds or awaits the lock; bits 0-30: readers inside.
    state: AtomicU32,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out &T to several threads only while no &mut T exists, and
// &mut T to one thread at a time, as RwLock does; T must be Send + Sync for that.
unsafe impl<T: Send + Sync> Sync for TableLock<T> {}
// SAFETY: owning the lock owns the T.
unsafe impl<T: Send> Send for TableLock<T> {}

impl<T> TableLock<T> {
    const_unless_loom! {
        pub(crate) fn new(data: T) -> Self {
            Self {
                state: AtomicU32::new(0),
                data: UnsafeCell::new(data),
            }
        }
    }

    /// Takes the lock shared, waiting while a writer holds or awaits it.
    pub(crate) fn read(&self) -> ReadGuard<'_, T> {
        loop {
            let s = self.state.load(Ordering::Relaxed);
            // Acquire pairs with the writer's Release in WriteGuard::drop.
            if s & WRITER == 0
                && self
                    .state
                    .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return ReadGuard { lock: self };
            }
            spin_hint();
        }
    }

    /// Takes the lock exclusive: first bars new readers, then waits for the ones inside.
    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        loop {
            let s = self.state.load(Ordering::Relaxed);
            if s & WRITER == 0
                && self
                    .state
                    .compare_exchange_weak(s, s | WRITER, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                break;
            }
            spin_hint();
        }
        // Acquire pairs with each reader's Release in ReadGuard::drop: their reads of
        // the tables happen before our writes.
        while self.state.load(Ordering::Acquire) != WRITER {
            spin_hint();
        }
        WriteGuard { lock: self }
    }
}

/// Shared access to a [`TableLock`]'s data.
pub(crate) struct ReadGuard<'a, T> {
    lock: &'a TableLock<T>,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: readers are inside only while no writer is (WRITER is set before a
        // writer waits for the count to drain, and readers never enter with it set).
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        // Release pairs with the writer's Acquire wait for the count to reach zero.
        self.lock.state.fetch_sub(1, Ordering::Release);
    }
}

/// Exclusive access to a [`TableLock`]'s data.
pub(crate) struct WriteGuard<'a, T> {
    lock: &'a TableLock<T>,
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the writer is alone: no reader is inside and no other writer.
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as for deref; &mut self makes this the only reference.
        unsafe { &mut *self.lock.data.get() }
    }
}

impl<T> Drop for WriteGuard<'_, T> {
    fn drop(&mut self) {
        // No reader entered while WRITER was set, so the count is zero. Release pairs
        // with the Acquire of the next reader's or writer's compare_exchange.
        self.lock.state.store(0, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn readers_share_and_writers_exclude() {
        let lock = Arc::new(TableLock::new((0u64, 0u64)));
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let lock = lock.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut seen = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let g = lock.read();
                        assert_eq!(g.0, g.1, "a reader saw a half-done update");
                        seen += 1;
                    }
                    seen
                })
            })
            .collect();
        // The writer must get in 1000 times although readers never stop coming.
        for i in 1..=1000u64 {
            let mut g = lock.write();
            g.0 = i;
            std::hint::spin_loop();
            g.1 = i;
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        assert_eq!(*lock.read(), (1000, 1000));
    }
}
