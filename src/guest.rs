//! Partition memory: windows, checked addresses, and every access to guest memory.
//!
//! This is the only module that reads or writes a partition's memory, for the fabric
//! and for the program-side driver alike. Every guest address is checked here to lie
//! wholly inside one of the owning partition's windows, with overflow-safe arithmetic,
//! before it becomes a [`GuestSlice`]; a slice's accessors stay inside it.
//!
//! # Why the accesses are sound
//!
//! Guest memory is shared with code that Rust does not see (the partition, or another
//! core playing it). No Rust reference to it is ever formed except to atomics:
//! control bytes (SLSB, indicators) and SBALE words are read and written as atomics,
//! so a program racing the fabric on them is a well-defined race. Frame data is moved
//! (copied, filled) only by the primitive in `copy.rs`: inline assembly on x86_64 and
//! aarch64 whose every byte access is single-copy atomic, so in Rust's model it is a
//! sequence of relaxed atomic byte accesses (which is what Miri runs instead), and a
//! partition writing the bytes during the copy is a defined race, not undefined
//! behaviour. It was kept against word-wise atomics and volatile words because it
//! alone copies at memcpy speed (`cargo xtask bench`, group `copy`; numbers in
//! `docs/bench/`); `copy.rs` has the full argument. Small copies (the 32-byte headers
//! this module reads and writes, small packets) are straight-line blocks of loads then
//! stores, two overlapping halves, rather than a loop: the same kind of accesses, so
//! the same argument holds (`copy.rs`, "Small copies"). The SLSB protocol gives the
//! fabric the buffer it copies (0x62 output, 0x41 input) and the acquire/release pairs
//! on the SLSB bytes order the copy against the owner's own accesses. A program that
//! writes a buffer it has handed to the fabric breaks that protocol: the packet bytes
//! the receiver gets are then unspecified (each one a value the byte held during the
//! copy), but only they are, because the fabric never interprets copied data: it reads
//! every descriptor and header once into a local before checking it, and delivers that
//! checked header, not a second copy.
//!
//! A frame over several elements that follow one another in guest memory is copied
//! with one call (`transfer::deliver_whole`) only through a slice that
//! [`GuestMemory::translate`] gave for the whole range: its contract says the whole
//! range is the partition's and contiguous in host memory, so the one copy touches the
//! bytes the per-element copies would, through one pointer the embedder vouches for
//! (never two slices that merely lie side by side in host memory, which may be two
//! allocations).
//!
//! The module is crate-private (public, hidden, only with feature `fuzzing`): its
//! handles are `Copy` and carry no lifetime, so only the fabric, which drops them when
//! a partition is removed, and the driver, on its own partition's memory, hold them.

use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use crate::error::RegistrationError;
use crate::qdio::{SBAL_SIZE, SBALE_SIZE, Sbale};
use crate::sync::{GuestU8, GuestU64, check_plain_write, guest_u8, guest_u64};

/// Most windows one partition may have with the default [`Windows`] memory.
pub const MAX_WINDOWS: usize = 4;

/// What the fabric needs of a host address that backs an SBAL: the same address
/// modulo 256 as the guest address (SBALs are 256-aligned in guest memory, and their
/// 8-byte words are accessed as 8-byte atomics, which need 8-aligned host addresses).
/// A page-granular stage-2 map keeps every address modulo its page size, so this
/// holds for any such map.
pub const HOST_ALIGN: u64 = SBAL_SIZE as u64;

/// How the fabric reaches one partition's memory: the hypervisor's translation of a
/// guest range to host memory.
///
/// The fabric stores only guest addresses (of SBALs, SLSBs, indicator bytes), never
/// host pointers, and translates each range when it uses it, once per buffer, under
/// its locks: so a hypervisor with its own stage-2 map can back a partition with
/// pages that are not contiguous in host memory, and move them
/// ([`Fabric::replace_memory`](crate::Fabric::replace_memory)). The default
/// implementation, [`Windows`], is a list of contiguous [`Window`]s.
///
/// `EMPTY` is the value of a partition slot nobody uses: it translates nothing (and,
/// for a fabric in a `static` to start in `.bss`, is best all-zero bytes).
///
/// # Safety
///
/// For every `Some(host)` that [`translate`](Self::translate)`(guest, len)` returns:
///
/// - `host .. host + len` is valid for reads and writes until this value is next
///   changed through `&mut` or dropped (the fabric does either only under its
///   exclusive table lock, when none of its calls is using a translation), and no
///   Rust reference to that memory exists meanwhile: others may touch it only as
///   [`Window::new`] describes;
/// - distinct guest bytes translate to distinct host bytes, and no host byte belongs
///   to two partitions' memories: the fabric refuses a partition's memory that
///   [`overlaps`](Self::overlaps) another's, so an implementation whose `overlaps`
///   cannot tell (the default, `false`) must keep them apart itself;
/// - `host .. host + len` does not wrap the address space.
///
/// It need not keep `host ≡ guest (mod` [`HOST_ALIGN`]`)`: the fabric checks that
/// wherever it matters and refuses, with
/// [`RegistrationError::MisalignedWindow`], a queue set whose SBAL translates
/// otherwise.
pub unsafe trait GuestMemory: Send + Sync {
    /// A memory that translates nothing (a free partition slot).
    const EMPTY: Self;

    /// The host address of guest range `guest .. guest + len` (`len > 0`) if the
    /// whole range is the partition's and contiguous in host memory, or `None`.
    fn translate(&self, guest: u64, len: u64) -> Option<NonNull<u8>>;

    /// Whether this memory and `other` (another partition's) share host bytes. The
    /// fabric asks when a partition is added or its memory replaced, and refuses an
    /// overlap ([`RegistrationError::OverlappingWindows`]). The default cannot tell.
    fn overlaps(&self, other: &Self) -> bool {
        let _ = other;
        false
    }
}

/// The fabric's checked accessors over any [`GuestMemory`].
pub trait MemoryExt: GuestMemory {
    /// The checked slice `[addr, addr + len)`: `None` unless `len > 0` and the whole
    /// range translates.
    #[inline]
    fn slice(&self, addr: u64, len: u64) -> Option<GuestSlice> {
        let n = usize::try_from(len).ok().filter(|n| *n > 0)?;
        addr.checked_add(len)?;
        let ptr = self.translate(addr, len)?;
        Some(GuestSlice { ptr, len: n })
    }

    /// The checked, 256-aligned SBAL at `addr`.
    #[inline]
    fn sbal(&self, addr: u64) -> Result<Sbal, SbalError> {
        if !addr.is_multiple_of(SBAL_SIZE as u64) {
            return Err(SbalError::Misaligned);
        }
        let s = self
            .slice(addr, SBAL_SIZE as u64)
            .ok_or(SbalError::OutsideMemory)?;
        // A translation that does not keep the address modulo 256 would give a
        // misaligned host SBAL: refuse it rather than access it (the hypervisor's
        // doing, not the partition's).
        Sbal::new(s).ok_or(SbalError::HostMisaligned)
    }
}

impl<M: GuestMemory> MemoryExt for M {}

/// One contiguous range of a partition's memory: guest addresses
/// `guest_base .. guest_base + len`, backed by host memory at `host`.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    guest_base: u64,
    len: u64,
    /// Null only in the unused entries of [`Windows`] (all-zero, so a fabric in a
    /// `static` can start in `.bss`).
    host: *mut u8,
}

// SAFETY: a Window is an address range; the memory behind it is only touched through
// GuestSlice's atomic and raw-pointer accessors, which are sound from any thread (see
// the module docs), and `Window::new`'s contract makes the memory outlive its users.
unsafe impl Send for Window {}
// SAFETY: as for Send: shared use only reads the range's bounds.
unsafe impl Sync for Window {}

impl Window {
    const UNUSED: Self = Self {
        guest_base: 0,
        len: 0,
        host: core::ptr::null_mut(),
    };

    /// A window of `len` bytes at guest address `guest_base`, backed by `host`.
    ///
    /// `host` must be congruent to `guest_base` modulo [`HOST_ALIGN`] (256), or
    /// [`Fabric::add_partition`](crate::Fabric::add_partition) refuses the window
    /// with [`RegistrationError::MisalignedWindow`].
    ///
    /// # Safety
    ///
    /// `host .. host + len` must be valid for reads and writes for as long as any
    /// fabric or driver holding this window may use it (for a fabric: until the
    /// partition is removed or its memory replaced), and no Rust reference (`&`,
    /// `&mut`, a slice) to that memory may exist while they do.
    ///
    /// What else may touch the memory meanwhile: the partition itself (its vCPUs, on
    /// any core, at any time: that is the point), a device model or DMA of the
    /// hypervisor, and the hypervisor's own code, all through raw pointers, volatile
    /// or atomic accesses, or from outside Rust (assembly, another address space),
    /// never through references. The fabric copies frame data that the partition
    /// may be changing and reads every control word once (see the module docs), so
    /// such accesses can garble only the partition's own frames, never the fabric.
    pub const unsafe fn new(guest_base: u64, host: NonNull<u8>, len: usize) -> Self {
        Self {
            guest_base,
            len: len as u64,
            host: host.as_ptr(),
        }
    }

    /// First guest address of the window.
    pub const fn guest_base(&self) -> u64 {
        self.guest_base
    }

    /// Bytes in the window.
    pub const fn len(&self) -> u64 {
        self.len
    }

    /// Whether the window is empty.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn host_range(&self) -> (usize, usize) {
        let start = self.host as usize;
        (start, start.saturating_add(self.len as usize))
    }

    /// The host address of `[addr, addr + len)` if it lies wholly inside this window.
    #[inline]
    fn translate(&self, addr: u64, len: u64) -> Option<NonNull<u8>> {
        let offset = addr.checked_sub(self.guest_base)?;
        let end = offset.checked_add(len)?;
        if len == 0 || end > self.len {
            return None;
        }
        // `wrapping_add` keeps this free of unsafe: the offset is inside the window
        // (checked above), which `new`'s contract makes one valid allocation, and an
        // unused entry (null, length 0) never gets here.
        NonNull::new(self.host.wrapping_add(offset as usize))
    }
}

/// The default [`GuestMemory`]: up to `W` disjoint [`Window`]s, each contiguous in
/// host memory.
#[derive(Clone, Copy, Debug)]
pub struct Windows<const W: usize = MAX_WINDOWS> {
    windows: [Window; W],
    count: usize,
}

/// The memory of one partition as the default fabric keeps it (for the unit tests and
/// the fuzz targets).
#[cfg(any(test, feature = "fuzzing"))]
pub type Memory = Windows<MAX_WINDOWS>;

impl<const W: usize> Default for Windows<W> {
    fn default() -> Self {
        Self::EMPTY
    }
}

// SAFETY: `translate` returns only addresses inside a window, and each window's
// validity is `Window::new`'s contract; `Windows::new` refuses windows that overlap
// in guest or host memory or wrap; the fabric checks host overlap between partitions
// (`Fabric::add_partition`).
unsafe impl<const W: usize> GuestMemory for Windows<W> {
    const EMPTY: Self = Self {
        windows: [Window::UNUSED; W],
        count: 0,
    };

    #[inline]
    fn translate(&self, guest: u64, len: u64) -> Option<NonNull<u8>> {
        self.windows
            .iter()
            .take(self.count)
            .find_map(|w| w.translate(guest, len))
    }

    fn overlaps(&self, other: &Self) -> bool {
        self.windows()
            .iter()
            .any(|a| other.windows().iter().any(|b| host_overlap(a, b)))
    }
}

impl<const W: usize> Windows<W> {
    /// Memory made of `windows`: at most `W`, each non-empty, not wrapping the guest
    /// or host address space, not overlapping another (neither in guest nor in host
    /// addresses), and with its host address congruent to its guest address modulo
    /// [`HOST_ALIGN`] (else [`RegistrationError::MisalignedWindow`]: the embedder's
    /// error, before any partition could be blamed for it).
    pub fn new(windows: &[Window]) -> Result<Self, RegistrationError> {
        if windows.is_empty() || windows.len() > W {
            return Err(RegistrationError::InvalidWindow);
        }
        let mut memory = Self::EMPTY;
        for w in windows {
            let host_start = w.host as usize;
            if w.len == 0
                || w.host.is_null()
                || w.guest_base.checked_add(w.len).is_none()
                || usize::try_from(w.len)
                    .ok()
                    .and_then(|l| host_start.checked_add(l))
                    .is_none()
            {
                return Err(RegistrationError::InvalidWindow);
            }
            if (host_start as u64) % HOST_ALIGN != w.guest_base % HOST_ALIGN {
                return Err(RegistrationError::MisalignedWindow);
            }
            for o in memory.windows() {
                let guest_overlap =
                    w.guest_base < o.guest_base + o.len && o.guest_base < w.guest_base + w.len;
                if guest_overlap || host_overlap(w, o) {
                    return Err(RegistrationError::OverlappingWindows);
                }
            }
            let Some(slot) = memory.windows.get_mut(memory.count) else {
                return Err(RegistrationError::InvalidWindow);
            };
            *slot = *w;
            memory.count += 1;
        }
        Ok(memory)
    }

    /// The windows.
    pub fn windows(&self) -> &[Window] {
        self.windows.get(..self.count).unwrap_or(&[])
    }
}

fn host_overlap(a: &Window, b: &Window) -> bool {
    let (a0, a1) = a.host_range();
    let (b0, b1) = b.host_range();
    a0 < b1 && b0 < a1
}

/// Why an SBAL address was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SbalError {
    /// Not 256-aligned (the partition's error).
    Misaligned,
    /// Not wholly inside the partition's memory.
    OutsideMemory,
    /// 256-aligned in guest memory but not in host memory: the translation does not
    /// keep addresses modulo [`HOST_ALIGN`] (the hypervisor's error).
    HostMisaligned,
}

/// `N` [`GuestSlice`]s of `LEN` bytes kept from one call of the fabric to the next,
/// tagged with the epoch of the memory they were translated in (issue 12: the send
/// path translated the receiver's SLSB and indicator bytes on every delivery, the
/// SLSB twice, and the sender's SLSB on every buffer).
///
/// The fabric numbers its epochs: every exclusive acquisition of its table lock, the
/// only way a partition's memory (or a queue set's addresses) changes, starts a new
/// one, and sends run under the shared lock. A slice kept in epoch `e` is handed back
/// only while the epoch is still `e`, so it is what a translation in the memory of now
/// would give. Only pointers are kept (the length is the type's), null for none: an
/// empty cache is all-zero bytes, as the fabric's `.bss` start wants.
#[derive(Clone, Copy, Debug)]
pub struct SliceCache<const N: usize, const LEN: usize> {
    epoch: u64,
    ptrs: [*mut u8; N],
}

// SAFETY: the cache holds GuestSlices' pointers; they are only turned back into
// GuestSlices (see `get_or`), whose Send and Sync reasoning holds.
unsafe impl<const N: usize, const LEN: usize> Send for SliceCache<N, LEN> {}
// SAFETY: as for Send.
unsafe impl<const N: usize, const LEN: usize> Sync for SliceCache<N, LEN> {}

impl<const N: usize, const LEN: usize> SliceCache<N, LEN> {
    /// Nothing kept (all-zero bytes).
    pub const EMPTY: Self = Self {
        epoch: 0,
        ptrs: [core::ptr::null_mut(); N],
    };

    /// Slice `i` of `epoch`: the one kept, or else `translate`'s, kept from now on (if
    /// it is `LEN` bytes long). A new epoch forgets every slice of the last.
    #[inline(always)]
    pub fn get_or(
        &mut self,
        epoch: u64,
        i: usize,
        translate: impl FnOnce() -> Option<GuestSlice>,
    ) -> Option<GuestSlice> {
        if self.epoch != epoch {
            *self = Self {
                epoch,
                ..Self::EMPTY
            };
        }
        let kept = self.ptrs.get_mut(i)?;
        if let Some(ptr) = NonNull::new(*kept) {
            return Some(GuestSlice { ptr, len: LEN });
        }
        let s = translate()?;
        if s.len == LEN {
            *kept = s.ptr.as_ptr();
        }
        Some(s)
    }
}

/// `N` [`GuestSlice`]s of lengths `lens` translated together and kept together for
/// one epoch, as [`SliceCache`] keeps its slices: all of them or none, so that a
/// call in the same epoch finds them with one comparison and one null test (the
/// inbound side's SLSB and three indicator bytes were four `SliceCache` look-ups of
/// two caches, each with its own epoch check). Only pointers are kept: all-zero bytes
/// are an empty set, and it is smaller than the two caches it replaces.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SliceSet<const N: usize> {
    epoch: u64,
    ptrs: [*mut u8; N],
}

// SAFETY: as for SliceCache: the pointers are only turned back into GuestSlices (see
// `get_or`), whose Send and Sync reasoning holds.
unsafe impl<const N: usize> Send for SliceSet<N> {}
// SAFETY: as for Send.
unsafe impl<const N: usize> Sync for SliceSet<N> {}

impl<const N: usize> SliceSet<N> {
    /// Nothing kept (all-zero bytes).
    pub(crate) const EMPTY: Self = Self {
        epoch: 0,
        ptrs: [core::ptr::null_mut(); N],
    };

    /// The slices of `epoch`, of lengths `lens` (the same at every call): the ones
    /// kept, or else `translate`'s, kept from now on if each has its length in `lens`.
    /// `None` when `translate` gives none (nothing is kept then). A new epoch forgets
    /// the last one's.
    #[inline(always)]
    pub(crate) fn get_or(
        &mut self,
        epoch: u64,
        lens: [usize; N],
        translate: impl FnOnce() -> Option<[GuestSlice; N]>,
    ) -> Option<[GuestSlice; N]> {
        // Kept together, so all are null or none. (Loops over the arrays, not
        // `array::map`, which the optimizer left as calls; the check of each pointer
        // folds the null tests below away.)
        if self.epoch == epoch && self.ptrs.iter().all(|p| !p.is_null()) {
            let mut out = [GuestSlice::EMPTY; N];
            for ((o, &p), len) in out.iter_mut().zip(&self.ptrs).zip(lens) {
                // A null one (never, see above) stays empty: no access.
                if let Some(ptr) = NonNull::new(p) {
                    *o = GuestSlice { ptr, len };
                }
            }
            return Some(out);
        }
        let slices = translate()?;
        *self = Self::EMPTY;
        if slices.iter().zip(lens).all(|(s, len)| s.len == len) {
            self.epoch = epoch;
            for (p, s) in self.ptrs.iter_mut().zip(&slices) {
                *p = s.ptr.as_ptr();
            }
        }
        Some(slices)
    }
}

/// A checked range of guest memory. Its accessors never leave the range: an offset
/// past its end reads 0 and writes nothing (and trips a debug assertion, as it would
/// be a fabric bug, never a partition's doing).
#[derive(Clone, Copy, Debug)]
pub struct GuestSlice {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: see the module docs: every access is atomic or a raw copy ordered by the SLSB
// protocol, and the memory outlives the slice by Window::new's / Region's contract.
unsafe impl Send for GuestSlice {}
// SAFETY: as for Send.
unsafe impl Sync for GuestSlice {}

impl GuestSlice {
    /// The empty slice: every access is out of range, so it touches no memory.
    pub(crate) const EMPTY: Self = Self {
        ptr: NonNull::dangling(),
        len: 0,
    };

    /// A slice over raw memory.
    ///
    /// # Safety
    ///
    /// As [`Window::new`]: valid for reads and writes for as long as the slice or a
    /// copy of it is used, and no Rust reference to the memory exists meanwhile.
    pub const unsafe fn from_raw(ptr: NonNull<u8>, len: usize) -> Self {
        Self { ptr, len }
    }

    /// Bytes in the slice.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether the slice is empty ([`EMPTY`](Self::EMPTY), or no bytes).
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Host address of the first byte (for diagnostics and overlap checks).
    pub fn host_addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Host pointer to the first byte.
    pub fn host_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The sub-range `[offset, offset + len)`, if it lies inside this slice.
    pub fn sub(&self, offset: usize, len: usize) -> Option<GuestSlice> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(GuestSlice {
            // SAFETY: offset <= end <= self.len: inside the range.
            ptr: unsafe { self.ptr.add(offset) },
            len,
        })
    }

    fn in_range(&self, offset: usize, n: usize) -> bool {
        let ok = offset.checked_add(n).is_some_and(|e| e <= self.len);
        debug_assert!(ok, "guest access {offset}+{n} past {}", self.len);
        ok
    }

    /// The byte at `offset` as an atomic, through the `sync` shim (so that the loom
    /// models see the SLSB and indicator orderings of the real code).
    #[inline(always)]
    fn atomic_u8(&self, offset: usize) -> Option<&GuestU8> {
        if !self.in_range(offset, 1) {
            return None;
        }
        // SAFETY: in range; the memory is valid for the slice's lifetime and only
        // accessed atomically at control-byte offsets.
        Some(unsafe { guest_u8(self.ptr.as_ptr().add(offset)) })
    }

    /// Makes every byte of the slice known to the loom model as an atomic now, on this
    /// thread (under `cfg(iqdio_loom)`; nothing otherwise). The driver calls it for
    /// its SLSBs and indicator bytes when it sets them up, before other threads touch
    /// them: a model location first met by two threads at once has no creator that
    /// both are ordered after.
    pub(crate) fn model_atomics(&self) {
        #[cfg(iqdio_loom)]
        for i in 0..self.len {
            let _ = self.load(i, Ordering::Relaxed);
        }
    }

    /// Atomically loads the byte at `offset`. Always inlined: the caller's constant
    /// ordering then folds, leaving no invalid-ordering panic path.
    #[inline(always)]
    pub fn load(&self, offset: usize, order: Ordering) -> u8 {
        self.atomic_u8(offset).map_or(0, |a| a.load(order))
    }

    /// Atomically stores `value` at `offset`. Always inlined: the caller's constant
    /// ordering then folds, leaving no invalid-ordering panic path.
    #[inline(always)]
    pub fn store(&self, offset: usize, value: u8, order: Ordering) {
        if let Some(a) = self.atomic_u8(offset) {
            a.store(value, order);
        }
    }

    /// Atomically swaps the byte at `offset`, returning the old value. Always inlined:
    /// the caller's constant ordering then folds, leaving no invalid-ordering panic path.
    #[inline(always)]
    pub fn swap(&self, offset: usize, value: u8, order: Ordering) -> u8 {
        self.atomic_u8(offset).map_or(0, |a| a.swap(value, order))
    }

    /// Copies `dst.len()` bytes at `offset` into local memory.
    #[inline]
    pub fn read(&self, offset: usize, dst: &mut [u8]) {
        if !self.in_range(offset, dst.len()) {
            return;
        }
        // SAFETY: source in range (checked above), destination a local slice that
        // cannot overlap guest memory (no Rust reference to guest memory exists); the
        // copy primitive is sound against a partition writing the source (module docs).
        unsafe { crate::copy::copy_to_slice(dst, self.ptr.as_ptr().add(offset)) };
    }

    /// Copies `src` from local memory to `offset`.
    #[inline]
    pub fn write(&self, offset: usize, src: &[u8]) {
        if !self.in_range(offset, src.len()) {
            return;
        }
        check_plain_write(self.host_addr() + offset, src.len());
        // SAFETY: destination in range (checked above), source is local memory; the
        // copy primitive is sound against a partition accessing the destination.
        unsafe { crate::copy::copy_from_slice(self.ptr.as_ptr().add(offset), src) };
    }

    /// Fills `n` bytes at `offset` with `value`.
    pub fn fill(&self, offset: usize, n: usize, value: u8) {
        if !self.in_range(offset, n) {
            return;
        }
        check_plain_write(self.host_addr() + offset, n);
        // SAFETY: in range (checked above); the fill primitive is sound against a
        // partition accessing the bytes.
        unsafe { crate::copy::fill(self.ptr.as_ptr().add(offset), value, n) };
    }

    /// Copies `n` bytes from `src` at `src_offset` to `dst` at `dst_offset`, guest to
    /// guest: the fabric's one copy of a frame. The ranges may overlap (a partition may
    /// point an output and an input element at the same bytes); the copy then behaves
    /// as `memmove`.
    ///
    /// Always inlined: the transfer paths each have a call site, and out of line the
    /// call and its dispatch cost the small frames' copies more than the copy.
    #[inline(always)]
    pub fn copy(
        src: &GuestSlice,
        src_offset: usize,
        dst: &GuestSlice,
        dst_offset: usize,
        n: usize,
    ) {
        if !src.in_range(src_offset, n) || !dst.in_range(dst_offset, n) {
            return;
        }
        check_plain_write(dst.host_addr() + dst_offset, n);
        // SAFETY: both ranges checked; the primitive allows overlap and is sound
        // against a partition writing either range during the copy (module docs).
        unsafe {
            crate::copy::copy(
                dst.ptr.as_ptr().add(dst_offset),
                src.ptr.as_ptr().add(src_offset),
                n,
            );
        }
    }
}

/// A checked, 256-aligned SBAL in guest memory (its 256 bytes from `ptr`).
#[derive(Clone, Copy, Debug)]
pub struct Sbal {
    ptr: NonNull<u8>,
}

// SAFETY: as for GuestSlice, of which an Sbal is a 256-byte instance.
unsafe impl Send for Sbal {}
// SAFETY: as for Send.
unsafe impl Sync for Sbal {}

impl Sbal {
    /// An SBAL at the start of `slice`.
    ///
    /// Returns `None` unless the slice holds 256 bytes and starts 256-aligned in host
    /// memory (so its 8-byte words can be accessed atomically).
    pub fn new(slice: GuestSlice) -> Option<Self> {
        let s = slice.sub(0, SBAL_SIZE)?;
        s.host_addr()
            .is_multiple_of(SBAL_SIZE)
            .then_some(Self { ptr: s.ptr })
    }

    /// Element `element`'s two words as atomics, through the `sync` shim.
    fn words(&self, element: usize) -> Option<[&GuestU64; 2]> {
        if element >= crate::qdio::SBALES_PER_SBAL {
            return None;
        }
        let base = element * SBALE_SIZE;
        // SAFETY: the SBAL is 256 bytes and 256-aligned in host memory (checked in
        // `new`), so both words are in range and 8-aligned; SBALE words are only ever
        // accessed atomically through this type.
        unsafe {
            let p = self.ptr.as_ptr().add(base);
            Some([
                guest_u64(p.cast::<u64>()),
                guest_u64(p.add(8).cast::<u64>()),
            ])
        }
    }

    /// Reads element `element` once (two relaxed 8-byte loads).
    #[inline]
    pub fn load(&self, element: usize) -> Sbale {
        let Some([w0, w1]) = self.words(element) else {
            return Sbale::default();
        };
        let mut b = [0u8; SBALE_SIZE];
        b[..8].copy_from_slice(&w0.load(Ordering::Relaxed).to_ne_bytes());
        b[8..].copy_from_slice(&w1.load(Ordering::Relaxed).to_ne_bytes());
        Sbale::decode(&b)
    }

    /// Writes element `element` (two relaxed 8-byte stores; the SLSB store that hands
    /// the buffer over publishes them).
    #[inline]
    pub fn store(&self, element: usize, sbale: &Sbale) {
        // `Sbale::encode`'s bytes in memory order (see `Sbale::to_words`), without the
        // 16-byte array.
        self.store_words(element, sbale.to_words());
    }

    /// Writes element `element` given as its two words ([`Sbale::to_words`]), as
    /// [`store`](Self::store) does (two relaxed 8-byte stores).
    #[inline(always)]
    pub(crate) fn store_words(&self, element: usize, [lo, hi]: [u64; 2]) {
        let Some([w0, w1]) = self.words(element) else {
            return;
        };
        w0.store(lo.to_be(), Ordering::Relaxed);
        w1.store(hi.to_be(), Ordering::Relaxed);
    }

    /// Sets element `element`'s `sflags`, the one byte of it the fabric owns on a
    /// refusal, and no other: the rest of the element (its reserved byte included) is
    /// the program's, and may be changing under us.
    ///
    /// Two read-modify-writes on the element's first word (clear the byte, then set
    /// it), so a program store to the word's other bytes between them is kept, which a
    /// load-and-store of the element would lose, and nothing loops.
    pub fn set_sflags(&self, element: usize, sflags: u8) {
        let Some([w0, _]) = self.words(element) else {
            return;
        };
        // The word is the element's bytes 0-7 in memory order (`load` and `store` use
        // native-endian words), so sflags, byte 3, sits where `from_ne_bytes` puts it.
        let mut mask = [0u8; 8];
        mask[Sbale::SFLAGS_OFFSET] = 0xFF;
        let mut value = [0u8; 8];
        value[Sbale::SFLAGS_OFFSET] = sflags;
        // Relaxed, as `store`: the SLSB store that hands the buffer back publishes it.
        w0.fetch_and(!u64::from_ne_bytes(mask), Ordering::Relaxed);
        w0.fetch_or(u64::from_ne_bytes(value), Ordering::Relaxed);
    }

    /// The SBAL's memory (for tests).
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn slice(&self) -> GuestSlice {
        GuestSlice {
            ptr: self.ptr,
            len: SBAL_SIZE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    fn page_window(p: &mut Page, guest: u64) -> Window {
        // SAFETY: the page outlives the test's uses of the window.
        unsafe { Window::new(guest, NonNull::from(&mut p.0).cast(), 4096) }
    }

    #[test]
    fn slices_must_lie_wholly_inside_a_window() {
        let mut p = Page([0; 4096]);
        let m = Memory::new(&[page_window(&mut p, 0x10_000)]).unwrap();
        assert!(m.slice(0x10_000, 4096).is_some());
        assert!(m.slice(0x10_FFF, 1).is_some());
        assert!(m.slice(0x10_FFF, 2).is_none(), "straddles the end");
        assert!(m.slice(0x0_FFFF, 2).is_none(), "straddles the start");
        assert!(m.slice(0x11_000, 1).is_none(), "just past");
        assert!(m.slice(0x10_000, 0).is_none(), "empty");
        assert!(m.slice(u64::MAX, 2).is_none(), "wraps the address space");
        assert!(m.slice(0x10_000, u64::MAX).is_none(), "length wraps");
    }

    #[test]
    fn windows_must_not_overlap_or_wrap() {
        let mut p = Page([0; 4096]);
        let w = page_window(&mut p, 0x1000);
        assert_eq!(
            Memory::new(&[w, w]).unwrap_err(),
            RegistrationError::OverlappingWindows
        );
        // SAFETY: never accessed: Memory::new refuses it.
        let wrap = unsafe { Window::new(u64::MAX - 0xFF, NonNull::from(&mut p.0).cast(), 4096) };
        assert_eq!(
            Memory::new(&[wrap]).unwrap_err(),
            RegistrationError::InvalidWindow
        );
        assert_eq!(
            Memory::new(&[]).unwrap_err(),
            RegistrationError::InvalidWindow
        );
        let mut q = Page([0; 4096]);
        let a = Memory::new(&[page_window(&mut p, 0x1000)]).unwrap();
        let b = Memory::new(&[page_window(&mut q, 0x1000)]).unwrap();
        assert!(!a.overlaps(&b), "same guest addresses, other host memory");
        assert!(a.overlaps(&a.clone()));
    }

    #[test]
    fn sbal_words_round_trip_big_endian() {
        let mut p = Page([0; 4096]);
        let m = Memory::new(&[page_window(&mut p, 0x4000)]).unwrap();
        assert_eq!(m.sbal(0x4010).unwrap_err(), SbalError::Misaligned);
        assert_eq!(m.sbal(0x5000).unwrap_err(), SbalError::OutsideMemory);
        let s = m.sbal(0x4100).unwrap();
        let e = Sbale {
            eflags: 0x40,
            scount: 0,
            sflags: 0,
            length: 0x20,
            addr: 0x4000,
        };
        s.store(3, &e);
        s.set_sflags(15, 0x10);
        assert_eq!(s.load(3), e);
        assert_eq!(s.load(15).sflags, 0x10);
        let mut raw = [0u8; 16];
        s.slice().read(3 * 16, &mut raw);
        assert_eq!(raw[0], 0x40);
        assert_eq!(&raw[4..8], &[0, 0, 0, 0x20]);
        assert_eq!(&raw[8..16], &[0, 0, 0, 0, 0, 0, 0x40, 0]);
    }

    #[test]
    fn set_sflags_writes_only_the_sflags_byte() {
        // Element 15 as a program left it: every byte set, the reserved byte (0x1)
        // included, which `Sbale` does not carry.
        let mut p = Page([0; 4096]);
        let m = Memory::new(&[page_window(&mut p, 0)]).unwrap();
        let s = m.sbal(0x200).unwrap();
        let element: [u8; 16] = core::array::from_fn(|i| 0xA0 + i as u8);
        s.slice().write(15 * 16, &element);
        s.set_sflags(15, 0x10);
        let mut raw = [0u8; 16];
        s.slice().read(15 * 16, &mut raw);
        let mut want = element;
        want[Sbale::SFLAGS_OFFSET] = 0x10;
        assert_eq!(raw, want);
        // Element 14 too, and the neighbours stay as they were.
        s.set_sflags(14, 0x03);
        s.slice().read(14 * 16, &mut raw);
        assert_eq!(raw, [0, 0, 0, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        s.slice().read(15 * 16, &mut raw);
        assert_eq!(raw, want);
    }

    #[test]
    fn accessors_stay_inside_the_slice() {
        let mut p = Page([7; 4096]);
        let m = Memory::new(&[page_window(&mut p, 0)]).unwrap();
        let s = m.slice(16, 16).unwrap();
        let sub = s.sub(8, 8).unwrap();
        assert!(s.sub(8, 9).is_none());
        sub.write(0, &[1; 8]);
        let mut out = [0u8; 16];
        s.read(0, &mut out);
        assert_eq!(out, [7, 7, 7, 7, 7, 7, 7, 7, 1, 1, 1, 1, 1, 1, 1, 1]);
        GuestSlice::copy(&s, 8, &s, 4, 8);
        s.read(0, &mut out);
        assert_eq!(out, [7, 7, 7, 7, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]);
        assert_eq!(s.swap(0, 9, Ordering::Relaxed), 7);
        assert_eq!(s.load(0, Ordering::Relaxed), 9);
    }
}
