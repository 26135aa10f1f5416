//! Locks: the table lock (shared for sends, exclusive for updates) and the queue
//! controls' outbound and inbound locks.

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicU32, Ordering};

/// The per-queue-control lock (outbound and inbound): a spin mutex.
pub(crate) type Mutex<T> = spin::mutex::SpinMutex<T>;

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
    pub(crate) const fn new(data: T) -> Self {
        Self {
            state: AtomicU32::new(0),
            data: UnsafeCell::new(data),
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
            core::hint::spin_loop();
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
            core::hint::spin_loop();
        }
        // Acquire pairs with each reader's Release in ReadGuard::drop: their reads of
        // the tables happen before our writes.
        while self.state.load(Ordering::Acquire) != WRITER {
            core::hint::spin_loop();
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

#[cfg(test)]
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
