//! Shared pieces of iqdio's fuzz targets: guest memory with guard regions, a reader
//! over the fuzz input, and a deterministic platform.
//!
//! Every window the targets give the fabric sits between two guard pages. The guard
//! bytes are checked after every operation (any write outside a window changes them),
//! and under AddressSanitizer (cargo-fuzz's default) the guard pages are also poisoned,
//! so that a *read* outside a window is reported too.
#![feature(cfg_sanitize)]

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

use iqdio::{InterruptDelivery, InterruptTarget, Platform, Window};

/// Page size: windows and guards are whole pages.
pub const PAGE: usize = 4096;
/// The guard byte.
pub const GUARD: u8 = 0xA5;

#[cfg(sanitize = "address")]
unsafe extern "C" {
    fn __asan_poison_memory_region(addr: *const u8, size: usize);
    fn __asan_unpoison_memory_region(addr: *const u8, size: usize);
}

/// `[guard page][window][guard page]`, page-aligned, zeroed window.
pub struct GuardedMem {
    base: NonNull<u8>,
    len: usize,
    guest: u64,
}

impl GuardedMem {
    /// A window of `len` bytes (rounded up to pages) at guest address `guest`.
    pub fn new(guest: u64, len: usize) -> Self {
        let len = len.div_ceil(PAGE) * PAGE;
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size.
        let base = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("allocation");
        let m = Self { base, len, guest };
        // SAFETY: both guard pages lie inside the allocation.
        unsafe {
            std::ptr::write_bytes(base.as_ptr(), GUARD, PAGE);
            std::ptr::write_bytes(base.as_ptr().add(PAGE + len), GUARD, PAGE);
        }
        m.poison(true);
        m
    }

    fn layout(len: usize) -> Layout {
        Layout::from_size_align(len + 2 * PAGE, PAGE).expect("layout")
    }

    #[allow(unused_variables)]
    fn poison(&self, on: bool) {
        #[cfg(sanitize = "address")]
        // SAFETY: both ranges lie inside our allocation.
        unsafe {
            let lo = self.base.as_ptr();
            let hi = self.base.as_ptr().add(PAGE + self.len);
            if on {
                __asan_poison_memory_region(lo, PAGE);
                __asan_poison_memory_region(hi, PAGE);
            } else {
                __asan_unpoison_memory_region(lo, PAGE);
                __asan_unpoison_memory_region(hi, PAGE);
            }
        }
    }

    /// Host address of the window's first byte.
    pub fn host(&self) -> NonNull<u8> {
        // SAFETY: page 1 of the allocation.
        unsafe { self.base.add(PAGE) }
    }

    /// Guest address of the window's first byte.
    pub fn guest(&self) -> u64 {
        self.guest
    }

    /// Bytes in the window.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the window is empty (never: at least one page).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Guest address one past the window.
    pub fn end(&self) -> u64 {
        self.guest + self.len as u64
    }

    /// The window, for the fabric or a `Memory`.
    pub fn window(&self) -> Window {
        // SAFETY: the window's memory lives until `self` is dropped, which every target
        // does only after the fabric and the memories that use it are gone; it is only
        // reached through raw pointers and atomics.
        unsafe { Window::new(self.guest, self.host(), self.len) }
    }

    fn at(&self, guest: u64, n: usize) -> Option<*mut u8> {
        let off = usize::try_from(guest.checked_sub(self.guest)?).ok()?;
        (off.checked_add(n)? <= self.len).then(|| {
            // SAFETY: off + n <= len: inside the window.
            unsafe { self.host().as_ptr().add(off) }
        })
    }

    /// The program writing its own memory (clipped to the window).
    pub fn write(&self, guest: u64, bytes: &[u8]) {
        let Some(room) = usize::try_from(self.end().saturating_sub(guest)).ok() else {
            return;
        };
        let n = bytes.len().min(room);
        if let Some(p) = self.at(guest, n) {
            // SAFETY: `at` checked the range; source is local memory.
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, n) };
        }
    }

    /// The program reading its own memory.
    pub fn read(&self, guest: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        if let Some(p) = self.at(guest, n) {
            // SAFETY: `at` checked the range.
            unsafe { std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), n) };
        }
        v
    }

    /// The whole window.
    pub fn snapshot(&self) -> Vec<u8> {
        self.read(self.guest, self.len)
    }

    /// Whether both guard pages still hold only guard bytes.
    pub fn guards_intact(&self) -> bool {
        self.poison(false);
        // SAFETY: both guard pages lie inside the allocation.
        let ok = unsafe {
            let lo = std::slice::from_raw_parts(self.base.as_ptr(), PAGE);
            let hi = std::slice::from_raw_parts(self.base.as_ptr().add(PAGE + self.len), PAGE);
            // Folded without a comparison per byte: the fuzzer's comparison tracing
            // would otherwise dominate every run.
            lo.iter().chain(hi).fold(0u8, |acc, &b| acc | (b ^ GUARD)) == 0
        };
        self.poison(true);
        ok
    }
}

impl Drop for GuardedMem {
    fn drop(&mut self) {
        self.poison(false);
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.base.as_ptr(), Self::layout(self.len)) };
    }
}

/// Reads the fuzz input front to back; past its end everything reads 0.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    /// A reader over `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }

    /// One byte.
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }

    /// A big-endian u16.
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) << 8 | u16::from(self.u8())
    }

    /// A big-endian u32.
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) << 16 | u32::from(self.u16())
    }

    /// A big-endian u64.
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) << 32 | u64::from(self.u32())
    }
}

/// A platform whose clock ticks once per reading and which counts interrupts.
#[derive(Default)]
pub struct FuzzPlatform {
    clock: AtomicU64,
    /// Interrupts raised, per LPAR.
    pub raised: [AtomicU64; 8],
}

impl Platform for FuzzPlatform {
    fn raise_interrupt(&self, target: InterruptTarget) -> InterruptDelivery {
        if let Some(c) = self.raised.get(usize::from(target.lpar)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        InterruptDelivery::Delivered
    }

    fn now_ns(&self) -> u64 {
        self.clock.fetch_add(100_000, Ordering::Relaxed)
    }
}
