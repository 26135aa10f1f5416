//! Locks: the table lock (shared for sends, exclusive for updates) and the queue
//! controls' outbound and inbound locks; and the atomics over guest memory.
//!
//! Under `cfg(iqdio_loom)` this module is the shim that swaps the lock's atomic, the
//! queue locks, the fences and the guest-memory atomics (SLSB bytes, indicator bytes,
//! SBALE words: [`guest_u8`], [`guest_u64`]) for loom's, so the loom tests
//! (`tests/loom.rs`) explore every interleaving of registration, the real send path and
//! the real driver at these points, with the orderings the code really uses. The cfg is
//! named for the crate so that a consumer's own `--cfg loom` leaves iqdio as it is
//! (`Fabric::new` stays `const`, a `static` fabric keeps compiling).

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::Ordering;

#[cfg(not(iqdio_loom))]
pub(crate) use core::sync::atomic::fence;
#[cfg(not(iqdio_loom))]
use core::sync::atomic::{AtomicBool, AtomicU32};
#[cfg(iqdio_loom)]
pub(crate) use loom::sync::atomic::fence;
#[cfg(iqdio_loom)]
use loom::sync::atomic::{AtomicBool, AtomicU32};

/// A SeqCst fence placed directly after an atomic read-modify-write, with no access
/// between the two: Linux's `smp_mb__after_atomic()`.
///
/// On x86-64 every locked instruction, so every atomic read-modify-write, is already
/// a full barrier: no load or store moves across it (Intel SDM vol. 3A, 9.2.2, "Reads
/// or writes cannot be reordered with I/O instructions, locked instructions, or
/// serializing instructions"; AMD APM vol. 2, 7.4.2). There the fence is an empty
/// `asm!` block: opaque to the compiler, which must assume it fences and so moves no
/// memory access across it, which keeps the read-modify-write before it and the loads
/// after it in that order in the machine code, where the read-modify-write orders
/// them as `mfence` would. The pair thus behaves as the read-modify-write followed by
/// `fence(SeqCst)`, minus the `mfence` (about 5 ns each on this machine's Xeon).
///
/// Elsewhere, under loom (which models the fence exactly) and under Miri, it is
/// `fence(SeqCst)`. The unit test `a_fence_after_a_read_modify_write_forbids_store_buffering`
/// runs the store-buffering litmus test through it on the machine the tests run on.
#[inline(always)]
pub(crate) fn fence_after_rmw() {
    #[cfg(all(target_arch = "x86_64", not(iqdio_loom), not(miri)))]
    // SAFETY: an empty instruction sequence: it reads, writes and clobbers nothing (no
    // stack, no flags); without `nomem`, the compiler treats it as a possible fence.
    unsafe {
        core::arch::asm!("", options(nostack, preserves_flags));
    }
    #[cfg(not(all(target_arch = "x86_64", not(iqdio_loom), not(miri))))]
    fence(Ordering::SeqCst);
}

/// Defines a function that is `const` except under loom, whose primitives have no
/// `const` constructors.
macro_rules! const_unless_loom {
    ($(#[$m:meta])* $vis:vis fn $name:ident $args:tt -> $ret:ty $body:block) => {
        #[cfg(not(iqdio_loom))]
        $(#[$m])* $vis const fn $name $args -> $ret $body
        #[cfg(iqdio_loom)]
        $(#[$m])* $vis fn $name $args -> $ret $body
    };
}
pub(crate) use const_unless_loom;

/// An atomic byte of guest memory (an SLSB or indicator byte).
#[cfg(not(iqdio_loom))]
pub(crate) type GuestU8 = core::sync::atomic::AtomicU8;
/// An atomic 8-byte word of guest memory (half an SBALE).
#[cfg(not(iqdio_loom))]
pub(crate) type GuestU64 = core::sync::atomic::AtomicU64;

/// The atomic byte at `p`.
///
/// # Safety
///
/// `p` is valid for reads and writes for `'a`, and the byte is only accessed
/// atomically meanwhile (as `AtomicU8::from_ptr` requires).
#[cfg(not(iqdio_loom))]
pub(crate) unsafe fn guest_u8<'a>(p: *mut u8) -> &'a GuestU8 {
    // SAFETY: forwarded from this function's contract; AtomicU8 has alignment 1.
    unsafe { GuestU8::from_ptr(p) }
}

/// The atomic word at `p`.
///
/// # Safety
///
/// As [`guest_u8`], and `p` is 8-aligned.
#[cfg(not(iqdio_loom))]
pub(crate) unsafe fn guest_u64<'a>(p: *mut u64) -> &'a GuestU64 {
    // SAFETY: forwarded from this function's contract.
    unsafe { GuestU64::from_ptr(p) }
}

#[cfg(iqdio_loom)]
pub(crate) use shadow::{GuestU8, GuestU64, guest_u8, guest_u64};

/// Guest-memory atomics under loom. Loom cannot put its atomics on memory it did not
/// create, so each guest byte or word that is accessed atomically gets a loom atomic
/// of its own (a shadow), created on its first atomic access with the memory's value
/// then, and kept for the model's execution. Every store also writes the guest memory
/// itself, so plain copies that read those bytes (a test reading an SBAL) see the
/// newest value; loom runs one model thread at a time, so that write races nothing.
/// A plain write over a shadowed byte would bypass the model: [`check_plain_write`]
/// fails the model if the code ever does one.
#[cfg(iqdio_loom)]
mod shadow {
    extern crate std;

    use core::sync::atomic::Ordering;
    use std::boxed::Box;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    use loom::sync::atomic::{AtomicU8, AtomicU64};

    /// Shadows by host address; boxed, so their addresses stay put while the map grows.
    #[derive(Default)]
    struct Shadows {
        bytes: BTreeMap<usize, Box<GuestU8>>,
        words: BTreeMap<usize, Box<GuestU64>>,
    }

    loom::lazy_static! {
        // Per model execution (loom resets its lazy statics between executions). A
        // std mutex: it guards bookkeeping, not a step of the protocol under test.
        static ref SHADOWS: Mutex<Shadows> = Mutex::new(Shadows::default());
    }

    /// A guest byte as loom sees it.
    pub(crate) struct GuestU8 {
        atomic: AtomicU8,
        real: *mut u8,
    }

    /// A guest word as loom sees it.
    pub(crate) struct GuestU64 {
        atomic: AtomicU64,
        real: *mut u64,
    }

    // SAFETY: the raw pointer is guest memory valid for the execution (guest_u8's
    // contract); loom runs one model thread at a time.
    unsafe impl Send for GuestU8 {}
    // SAFETY: as for Send.
    unsafe impl Sync for GuestU8 {}
    // SAFETY: as for GuestU8.
    unsafe impl Send for GuestU64 {}
    // SAFETY: as for GuestU8.
    unsafe impl Sync for GuestU64 {}

    impl GuestU8 {
        pub(crate) fn load(&self, order: Ordering) -> u8 {
            self.atomic.load(order)
        }
        pub(crate) fn store(&self, v: u8, order: Ordering) {
            self.atomic.store(v, order);
            // SAFETY: valid guest memory (guest_u8's contract), one model thread runs.
            unsafe { self.real.write_volatile(v) };
        }
        pub(crate) fn swap(&self, v: u8, order: Ordering) -> u8 {
            let old = self.atomic.swap(v, order);
            // SAFETY: as in store.
            unsafe { self.real.write_volatile(v) };
            old
        }
    }

    impl GuestU64 {
        pub(crate) fn load(&self, order: Ordering) -> u64 {
            self.atomic.load(order)
        }
        pub(crate) fn store(&self, v: u64, order: Ordering) {
            self.atomic.store(v, order);
            // SAFETY: as in GuestU8::store; 8-aligned by guest_u64's contract.
            unsafe { self.real.write_volatile(v) };
        }
        pub(crate) fn fetch_and(&self, v: u64, order: Ordering) -> u64 {
            let old = self.atomic.fetch_and(v, order);
            // SAFETY: as in store.
            unsafe { self.real.write_volatile(old & v) };
            old
        }
        pub(crate) fn fetch_or(&self, v: u64, order: Ordering) -> u64 {
            let old = self.atomic.fetch_or(v, order);
            // SAFETY: as in store.
            unsafe { self.real.write_volatile(old | v) };
            old
        }
    }

    /// The shadow of the byte at `p`.
    ///
    /// # Safety
    ///
    /// As the non-loom `guest_u8`, and only called inside a loom model.
    pub(crate) unsafe fn guest_u8<'a>(p: *mut u8) -> &'a GuestU8 {
        let mut s = SHADOWS.lock().unwrap_or_else(|e| e.into_inner());
        let b = s.bytes.entry(p as usize).or_insert_with(|| {
            Box::new(GuestU8 {
                // SAFETY: valid guest memory by this function's contract.
                atomic: AtomicU8::new(unsafe { p.read_volatile() }),
                real: p,
            })
        });
        let r: *const GuestU8 = &**b;
        // SAFETY: boxed and never removed during the execution; the reference is used
        // within the access that asked for it.
        unsafe { &*r }
    }

    /// The shadow of the word at `p`.
    ///
    /// # Safety
    ///
    /// As [`guest_u8`], and `p` is 8-aligned.
    pub(crate) unsafe fn guest_u64<'a>(p: *mut u64) -> &'a GuestU64 {
        let mut s = SHADOWS.lock().unwrap_or_else(|e| e.into_inner());
        let b = s.words.entry(p as usize).or_insert_with(|| {
            Box::new(GuestU64 {
                // SAFETY: valid, aligned guest memory by this function's contract.
                atomic: AtomicU64::new(unsafe { p.read_volatile() }),
                real: p,
            })
        });
        let r: *const GuestU64 = &**b;
        // SAFETY: as in guest_u8.
        unsafe { &*r }
    }

    /// Fails the model if `[start, start + len)` holds a byte or word that is also
    /// accessed atomically: the code must never mix the two on one location.
    pub(crate) fn check_plain_write(start: usize, len: usize) {
        if len == 0 {
            return;
        }
        let s = SHADOWS.lock().unwrap_or_else(|e| e.into_inner());
        let end = start + len;
        let byte = s.bytes.range(start..end).next().map(|(a, _)| *a);
        let word = s
            .words
            .range(start.saturating_sub(7)..end)
            .next()
            .map(|(a, _)| *a);
        assert!(
            byte.is_none() && word.is_none(),
            "plain write over atomically accessed guest memory at {:#x}",
            byte.or(word).unwrap_or(0)
        );
    }
}

#[cfg(iqdio_loom)]
pub(crate) use shadow::check_plain_write;

/// Checks a plain write to guest memory (nothing to check outside loom).
#[cfg(not(iqdio_loom))]
#[inline(always)]
pub(crate) fn check_plain_write(_start: usize, _len: usize) {}

/// A pause in a spin loop (under loom: a yield, so the model lets others run).
fn spin_hint() {
    #[cfg(iqdio_loom)]
    loom::thread::yield_now();
    #[cfg(not(iqdio_loom))]
    core::hint::spin_loop();
}

/// The per-queue-control lock (outbound and inbound): a test-and-set spin mutex.
///
/// The crate's own rather than `spin`'s so that its all-zero bytes are, by this
/// definition, the unlocked state: a fabric starts all-zero ([`Fabric::init_in_place`]
/// zero-fills it, and a `static` of it lands in `.bss`), which must not rest on the
/// private layout of a dependency.
///
/// [`Fabric::init_in_place`]: crate::Fabric::init_in_place
#[cfg(not(iqdio_loom))]
pub(crate) struct Mutex<T> {
    /// Held. `false` (zero) is unlocked.
    locked: AtomicBool,
    data: UnsafeCell<T>,
}

// SAFETY: the lock hands out `&mut T` to one thread at a time, as a mutex does.
#[cfg(not(iqdio_loom))]
unsafe impl<T: Send> Sync for Mutex<T> {}
// SAFETY: owning the lock owns the T.
#[cfg(not(iqdio_loom))]
unsafe impl<T: Send> Send for Mutex<T> {}

#[cfg(not(iqdio_loom))]
impl<T> Mutex<T> {
    pub(crate) const fn new(v: T) -> Self {
        Self {
            locked: AtomicBool::new(false),
            data: UnsafeCell::new(v),
        }
    }

    /// Takes the lock, spinning (on a plain load, so the line stays shared while
    /// held) until it is free. The first attempt is inlined into the caller, the
    /// spinning is a call of its own.
    #[inline(always)]
    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        match self.try_lock() {
            Some(g) => g,
            None => self.lock_contended(),
        }
    }

    /// [`lock`](Self::lock) after a first attempt failed.
    #[cold]
    #[inline(never)]
    fn lock_contended(&self) -> MutexGuard<'_, T> {
        loop {
            while self.locked.load(Ordering::Relaxed) {
                spin_hint();
            }
            if let Some(g) = self.try_lock() {
                return g;
            }
        }
    }

    /// Takes the lock if it is free at once.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        // Acquire pairs with the Release in MutexGuard::drop: the previous holder's
        // writes to the data are visible.
        self.locked
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| MutexGuard { lock: self })
    }
}

/// A held [`Mutex`].
#[cfg(not(iqdio_loom))]
pub(crate) struct MutexGuard<'a, T> {
    lock: &'a Mutex<T>,
}

#[cfg(not(iqdio_loom))]
impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this thread holds the lock.
        unsafe { &*self.lock.data.get() }
    }
}

#[cfg(not(iqdio_loom))]
impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in deref; `&mut self` makes this the only reference.
        unsafe { &mut *self.lock.data.get() }
    }
}

#[cfg(not(iqdio_loom))]
impl<T> Drop for MutexGuard<'_, T> {
    fn drop(&mut self) {
        // Release pairs with the Acquire of the next try_lock.
        self.lock.locked.store(false, Ordering::Release);
    }
}

/// The per-queue-control lock under loom: loom's mutex behind the same interface.
#[cfg(iqdio_loom)]
pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

/// The guard of a [`Mutex`] under loom.
#[cfg(iqdio_loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

#[cfg(iqdio_loom)]
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
///
/// A reader may also be *pinned* rather than counted ([`read_pinned`](Self::read_pinned)):
/// it holds a lock that every writer takes, and releases, after raising `writer` and
/// before it writes (the fabric's queue controls' outbound locks, which its updates
/// take in turn once the counted readers are out). Such a reader takes that lock, then
/// reads `writer` with Acquire, and writes no count. Either the writer took the lock
/// after the reader released it, and so waited for the reader (its reads of the data
/// happen before the writer's writes); or the reader took it after the writer released
/// it, which makes the writer's raising of `writer` happen before the reader's load,
/// so the reader sees the flag (or the writer's Release of it, with the writer's writes
/// before it) and backs off. No fence is needed: the lock's Release and Acquire order
/// it. A send saves the count's two read-modify-writes.
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

    /// The data of a lock being built in place (`Fabric::init_in_place`).
    #[cfg(not(iqdio_loom))]
    pub(crate) const fn data_ptr(this: *mut Self) -> *mut T {
        // SAFETY: only a field address is computed; nothing is read or referenced.
        UnsafeCell::raw_get(unsafe { core::ptr::addr_of_mut!((*this).data) })
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
            fence_after_rmw();
            if !self.writer.load(Ordering::Acquire) {
                return ReadGuard {
                    lock: self,
                    slot: Some(slot),
                };
            }
            // A writer came: step back out of its way and wait.
            slot.fetch_sub(1, Ordering::Release);
        }
    }

    /// Shared access for a reader pinned by a lock it holds rather than counted in a
    /// slot (see the type's docs): `None` while a writer holds or awaits the lock,
    /// when the caller must release its lock and take the counted way in (`read_in`,
    /// which waits).
    ///
    /// # Safety
    ///
    /// The caller holds a lock that it took with an Acquire read-modify-write and that
    /// every writer of this lock's data takes and releases after `write_then` returns
    /// and before it writes the data; the caller holds it until after the guard is
    /// dropped, and reads the data only through the guard.
    #[inline(always)]
    pub(crate) unsafe fn read_pinned(&self) -> Option<ReadGuard<'_, T>> {
        // Acquire pairs with the last writer's Release in WriteGuard::drop.
        (!self.writer.load(Ordering::Acquire)).then_some(ReadGuard {
            lock: self,
            slot: None,
        })
    }

    /// Takes the lock shared (reader slot 0) if that needs no waiting: `None` while a
    /// writer holds or awaits it. For interrupt context, which must never wait for
    /// the code it interrupted.
    pub(crate) fn try_read(&self) -> Option<ReadGuard<'_, T>> {
        let slot = &self.readers[0].0;
        if self.writer.load(Ordering::Relaxed) {
            return None;
        }
        // As in read_in: count in, SeqCst fence, look for a writer (Acquire pairs
        // with the last writer's Release in WriteGuard::drop).
        slot.fetch_add(1, Ordering::Relaxed);
        fence_after_rmw();
        if !self.writer.load(Ordering::Acquire) {
            return Some(ReadGuard {
                lock: self,
                slot: Some(slot),
            });
        }
        slot.fetch_sub(1, Ordering::Release);
        None
    }

    /// Takes the lock exclusive: first bars new readers, then waits for the ones inside.
    #[cfg(test)]
    pub(crate) fn write(&self) -> WriteGuard<'_, T> {
        self.write_then(|| {})
    }

    /// [`write`](Self::write), calling `waiting` once new readers are barred and
    /// before it waits for the ones inside (a test hook's "writer waiting" point).
    pub(crate) fn write_then(&self, waiting: impl FnOnce()) -> WriteGuard<'_, T> {
        while self
            .writer
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            spin_hint();
        }
        waiting();
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

#[cfg(not(iqdio_loom))]
const fn new_slots() -> [ReaderSlot; READER_SLOTS] {
    [const { ReaderSlot(AtomicU32::new(0)) }; READER_SLOTS]
}

#[cfg(iqdio_loom)]
fn new_slots() -> [ReaderSlot; READER_SLOTS] {
    core::array::from_fn(|_| ReaderSlot(AtomicU32::new(0)))
}

/// Shared access to a [`TableLock`]'s data.
pub(crate) struct ReadGuard<'a, T> {
    lock: &'a TableLock<T>,
    /// The reader slot it counted itself in; `None` for a pinned reader.
    slot: Option<&'a AtomicU32>,
}

impl<T> ReadGuard<'_, T> {
    /// Whether a writer awaits the lock: a long reader should step out of its way.
    /// Relaxed: a hint; the reader's next `read_in` synchronises properly.
    pub(crate) fn writer_waiting(&self) -> bool {
        self.lock.writer.load(Ordering::Relaxed)
    }
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
        // Release pairs with the writer's Acquire loads of the slot (its wait for the
        // slot to drain, after its SeqCst fence): our reads happen before its writes.
        // A pinned reader has no count: the lock it holds is released after this.
        if let Some(slot) = self.slot {
            slot.fetch_sub(1, Ordering::Release);
        }
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
        // Release pairs with the next reader's Acquire load of `writer` (after its
        // SeqCst fence) and the next writer's Acquire compare_exchange: our writes to
        // the tables happen before their reads.
        self.lock.writer.store(false, Ordering::Release);
    }
}

#[cfg(all(test, not(iqdio_loom)))]
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

    #[test]
    fn try_read_never_waits_and_never_gets_in_beside_a_writer() {
        let lock = TableLock::new(7u32);
        {
            let r = lock.read_in(3);
            // Readers share: a try beside a reader gets in at once.
            let t = lock.try_read().expect("free for readers");
            assert_eq!((*r, *t), (7, 7));
        }
        {
            let mut w = lock.write();
            *w = 8;
            // A writer inside: the try fails rather than waits.
            assert!(lock.try_read().is_none());
        }
        // A writer waiting (barred new readers, a reader still inside): fails too.
        let r = lock.read();
        let waited = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let _w = lock.write_then(|| waited.store(true, Ordering::SeqCst));
            });
            while !waited.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
            assert!(lock.try_read().is_none());
            drop(r);
            writer.join().unwrap();
        });
        assert_eq!(lock.try_read().map(|g| *g), Some(8));
    }

    /// One location of the litmus test, alone on its cache lines.
    #[cfg(not(miri))]
    #[repr(align(128))]
    struct Line(AtomicU32);

    /// The store-buffering litmus test, `rounds` times: two threads meet, then each
    /// writes its own location with `write(location, round)`, and loads the other's.
    /// Returns the rounds in which neither load saw the other thread's write, the
    /// outcome a SeqCst fence between the write and the load forbids. Built where its
    /// one test is (not under Miri).
    #[cfg(not(miri))]
    fn store_buffering(rounds: u32, write: fn(&AtomicU32, u32)) -> usize {
        let (x, y) = (Line(AtomicU32::new(0)), Line(AtomicU32::new(0)));
        let (met_a, met_b) = (Line(AtomicU32::new(0)), Line(AtomicU32::new(0)));
        let side = |mine: &Line, other: &Line, met: &Line, other_met: &Line| {
            let mut seen = std::vec![0u32; rounds as usize + 1];
            for i in 1..=rounds {
                met.0.store(i, Ordering::Release);
                let mut spins = 0u32;
                while other_met.0.load(Ordering::Acquire) < i {
                    spins += 1;
                    if spins > 1_000 {
                        std::thread::yield_now();
                    }
                    core::hint::spin_loop();
                }
                write(&mine.0, i);
                seen[i as usize] = other.0.load(Ordering::Relaxed);
            }
            seen
        };
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| side(&x, &y, &met_a, &met_b));
            let b = s.spawn(|| side(&y, &x, &met_b, &met_a));
            (a.join().unwrap(), b.join().unwrap())
        });
        (1..=rounds as usize)
            .filter(|&i| a[i] < i as u32 && b[i] < i as u32)
            .count()
    }

    /// `fence_after_rmw` after a read-modify-write forbids store buffering on the
    /// machine the tests run on (on x86-64, where it emits no instruction, this checks
    /// that the locked swap orders the load after it). The control, a plain store and
    /// a compiler fence, shows the test sees the outcome when nothing forbids it: on
    /// this 2-core Xeon about 1 round in 20 of 200000 (it is printed, not asserted: a
    /// machine running one thread at a time shows none).
    #[test]
    #[cfg(not(miri))]
    fn a_fence_after_a_read_modify_write_forbids_store_buffering() {
        const ROUNDS: u32 = 200_000;
        let control = store_buffering(ROUNDS, |a, i| {
            a.store(i, Ordering::Relaxed);
            core::sync::atomic::compiler_fence(Ordering::SeqCst);
        });
        std::println!("store buffering with a plain store: {control} of {ROUNDS} rounds");
        let fenced = store_buffering(ROUNDS, |a, i| {
            a.swap(i, Ordering::Relaxed);
            fence_after_rmw();
        });
        assert_eq!(fenced, 0, "store buffering through fence_after_rmw");
    }
}
