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
pub(crate) use core::sync::atomic::fence;
#[cfg(not(loom))]
use core::sync::atomic::{AtomicBool, AtomicU32};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::fence;
#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, AtomicU32};

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

/// Reader slots of the table lock: a send counts itself in the slot of its partition,
/// so sends of partitions on different cores write different cache lines.
pub(crate) const READER_SLOTS: usize = 8;

/// A reader count alone on its cache lines.
#[repr(C, align(128))]
struct ReaderSlot(AtomicU32);

/// A reader-writer spin lock that prefers writers, with distributed reader counts.
///
/// Sends take it shared for their whole duration; registration takes it exclusive
/// \[patent\]. A single reader count would be one cache line that every send on every
/// core writes twice; here a reader counts itself in one of [`READER_SLOTS`] slots
/// (chosen by its partition), and the rare writer checks them all. A plain
/// reader-writer spin lock would also starve registration while partitions keep
/// sending; here a writer first raises `writer`, after which new readers back off, so
/// it gets in as soon as the sends in flight end.
///
/// The handshake is the store-then-load pattern on both sides, with a SeqCst fence
/// between the store and the load: a reader increments its slot, fences, then reads
/// `writer`; a writer sets `writer`, fences, then reads every slot. The two fences are
/// ordered one before the other, so either the reader sees the writer (and backs off)
/// or the writer sees the reader (and waits for it). (Fences rather than SeqCst
/// accesses: loom models the fences exactly.)
pub(crate) struct TableLock<T> {
    /// A writer holds or awaits the lock.
    writer: AtomicBool,
    /// Readers inside, per slot.
    readers: [ReaderSlot; READER_SLOTS],
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
                writer: AtomicBool::new(false),
                readers: new_slots(),
                data: UnsafeCell::new(data),
            }
        }
    }

    /// Takes the lock shared (reader slot 0), waiting while a writer holds or awaits it.
    pub(crate) fn read(&self) -> ReadGuard<'_, T> {
        self.read_in(0)
    }

    /// Takes the lock shared, counted in reader slot `hint % READER_SLOTS` (a send
    /// passes its partition, so partitions on different cores touch different lines).
    pub(crate) fn read_in(&self, hint: usize) -> ReadGuard<'_, T> {
        let slot = &self.readers[hint % READER_SLOTS].0;
        loop {
            while self.writer.load(Ordering::Relaxed) {
                spin_hint();
            }
            // Count in, SeqCst fence, then look for a writer: see the type's docs.
            // The Acquire load also pairs with the last writer's Release in
            // WriteGuard::drop.
            slot.fetch_add(1, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            if !self.writer.load(Ordering::Acquire) {
                return ReadGuard { lock: self, slot };
            }
            // A writer came: step back out of its way and wait.
            slot.fetch_sub(1, Ordering::Release);
        }
    }

    /// Takes the lock exclusive: first bars new readers, then waits for the ones inside.
    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        while self
            .writer
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spin_hint();
        }
        // SeqCst fence, then look for readers (see the type's docs); the Acquire
        // loads pair with each reader's Release in ReadGuard::drop: their reads of the
        // tables happen before our writes.
        fence(Ordering::SeqCst);
        for slot in &self.readers {
            while slot.0.load(Ordering::Acquire) != 0 {
                spin_hint();
            }
        }
        WriteGuard { lock: self }
    }
}

#[cfg(not(loom))]
const fn new_slots() -> [ReaderSlot; READER_SLOTS] {
    [const { ReaderSlot(AtomicU32::new(0)) }; READER_SLOTS]
}

#[cfg(loom)]
fn new_slots() -> [ReaderSlot; READER_SLOTS] {
    core::array::from_fn(|_| ReaderSlot(AtomicU32::new(0)))
}

/// Shared access to a [`TableLock`]'s data.
pub(crate) struct ReadGuard<'a, T> {
    lock: &'a TableLock<T>,
    slot: &'a AtomicU32,
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: readers are inside only while no writer is (a writer raises `writer`
        // before it waits for every slot to drain, and a reader that counted itself
        // then sees `writer` steps back out).
        unsafe { &*self.lock.data.get() }
    }
}

impl<T> Drop for ReadGuard<'_, T> {
    fn drop(&mut self) {
        // Release pairs with the writer's SeqCst (acquiring) wait for the slot to drain.
        self.slot.fetch_sub(1, Ordering::Release);
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
        // Release pairs with the next reader's SeqCst load of `writer` and the next
        // writer's compare_exchange.
        self.lock.writer.store(false, Ordering::Release);
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
        // Readers in the same slot and in different ones.
        let readers: Vec<_> = [0usize, 0, 1, 5]
            .into_iter()
            .map(|slot| {
                let lock = lock.clone();
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut seen = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let g = lock.read_in(slot);
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
