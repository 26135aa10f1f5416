//! The copy primitive for partition memory (issue 12 item 1).
//!
//! Every byte of frame data that crosses partition memory (the fabric's copy from an
//! output buffer into an input buffer, the driver's copies into and out of its own
//! buffers, the fills that set them up) goes through [`copy`] or [`fill`].
//!
//! # Why it is sound
//!
//! A partition may write the bytes the fabric copies while it copies them. A plain
//! `memcpy` (`ptr::copy`) over such memory is a data race in Rust's memory model, so
//! undefined behaviour: the compiler may assume nobody else writes the source during
//! the copy (re-read it, split it, fold it with later reads). The primitive kept here
//! is a copy in inline assembly: on x86_64 straight-line `mov`s up to 64 bytes, a loop
//! of 32 bytes a round below 256, and `rep movsb` (fast strings, ERMSB) from 256 on; on
//! aarch64 a loop of `ldp`/`stp` pairs, 64 then 16 bytes a round, and single bytes for
//! the tail. An `asm!` block is
//! opaque to the compiler: it cannot see, merge, repeat or elide the accesses inside,
//! and Rust's rules for inline assembly (the reference's "the behaviour of an asm block
//! must be expressible as some Rust code") are met by the Rust code the Miri build runs
//! instead: a sequence of relaxed atomic byte loads and stores, whose races with any
//! other thread's atomic or assembly accesses are defined. The hardware gives the asm
//! exactly that: every naturally aligned byte access, and each byte of a wider access,
//! is single-copy atomic on both architectures (Intel SDM vol. 3A 9.1.1; Arm ARM
//! B2.2.1), so a racing writer can only make each destination byte one of the values
//! its source byte held during the copy: the bytes are unspecified, never the program.
//! This is how hypervisors copy guest memory (`rust-vmm`'s `vm-memory` does it with
//! volatile accesses, which Rust's model does not exempt from races; Linux with
//! assembly `copy_from_user`).
//!
//! The candidates it was measured against (`cargo xtask bench`, group `copy`, numbers
//! in `docs/bench/`): `memcpy` (the unsound limit), word-wise relaxed atomics (the
//! `atomic-memcpy` way: sound in Rust's model, but the compiler may not merge or
//! vectorise atomic accesses, so it moves 8 bytes per instruction pair) and volatile
//! words (`vm-memory`'s way, as slow, and not sound in the model either). Other
//! architectures, which have no assembly here, use the atomic words.
//!
//! # Small copies
//!
//! Most copies of the send path are small: the 32-byte frame header (read once to
//! check it, written into the receiver's buffer), the SBALE words (atomics, not this
//! primitive) and, for small frames, the packet. A loop pays its compare and branch
//! per word and `rep movsb` tens of cycles of start-up, so on x86_64 a copy of up to 64
//! bytes is one straight-line block, chosen by size: two accesses of the largest
//! power of two that fits, one from each end (1, 2, 4 or 8 bytes in general
//! registers; two 16-byte `movdqu` from each end for 33 to 64 bytes, with SSE2, which
//! every x86_64 hosted target has), every load before the first store. Between 65
//! and 255 bytes, the last 32 bytes are loaded first, then 32 bytes a round, then the
//! last 32 stored. (64 B: 39 instructions a call with its dispatch, against 90 for the
//! word loop it replaces; callgrind, `examples/send_cost.rs memcpy 64`.) This stays
//! sound for the same reason as the rest: the blocks are assembly, each byte access
//! single-copy atomic, and the only new thing, a byte stored twice by the two
//! overlapping halves, stores each time a value just loaded from its source byte, so
//! with a partition writing the source meanwhile every destination byte still ends as
//! one of the values its source byte held during the copy; in Rust's model it is still
//! a sequence of relaxed atomic byte loads and stores (some bytes loaded and stored
//! twice), which is what Miri runs. Loading everything a block stores before storing
//! keeps a destination below an overlapping source right (the `memmove` case).
//!
//! Overlap: a partition may point an output and an input element at the same bytes of
//! its own memory; [`copy`] is then a `memmove` (copying from the end when the
//! destination lies above the source), so the result is defined there too.

#[cfg(any(miri, not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
use core::sync::atomic::{AtomicU8, Ordering};

/// Copies `n` bytes from `src` to `dst` with the primitive described in the module
/// docs; the ranges may overlap (the copy then behaves as `memmove`).
///
/// # Safety
///
/// `src .. src + n` must be valid for reads and `dst .. dst + n` for writes, and no
/// Rust reference to either range may exist during the copy other than to atomics
/// (others may access the bytes at the same time through atomics or through this
/// module; those accesses race only in the defined way described above).
///
/// Always inlined, as [`GuestSlice::copy`](crate::guest::GuestSlice::copy) is: with a
/// third call site on the transfer paths it went out of line, and the call cost the
/// small frames' copies more than their straight-line blocks.
#[inline(always)]
pub unsafe fn copy(dst: *mut u8, src: *const u8, n: usize) {
    let (d, s) = (dst as usize, src as usize);
    if d > s && d - s < n {
        // The destination overlaps the source from above: copy chunks no longer than
        // the distance, from the end, so no chunk reads what an earlier one wrote.
        let distance = d - s;
        let mut end = n;
        while end > 0 {
            let chunk = end.min(distance);
            let start = end - chunk;
            // SAFETY: [start, end) lies inside both ranges of the contract; the chunk's
            // source and destination do not overlap (chunk <= distance).
            unsafe { forward(dst.add(start), src.add(start), chunk) };
            end = start;
        }
    } else {
        // SAFETY: the caller's contract; a destination below the source (or apart) is
        // copied correctly front to back, each load before the store that could hit it.
        unsafe { forward(dst, src, n) }
    }
}

/// Sets `n` bytes at `dst` to `value`, with the same kind of accesses as [`copy`].
///
/// # Safety
///
/// `dst .. dst + n` valid for writes, no Rust reference to it except to atomics.
#[inline]
pub unsafe fn fill(dst: *mut u8, value: u8, n: usize) {
    #[cfg(miri)]
    for i in 0..n {
        // SAFETY: in range by the contract; AtomicU8 has alignment 1.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(value, Ordering::Relaxed);
    }
    #[cfg(all(not(miri), target_arch = "x86_64"))]
    // SAFETY: `rep stosb` writes exactly rcx = n bytes at rdi = dst, forward (the ABI
    // guarantees DF = 0 on entry to asm), valid by the contract; it touches no stack
    // and no flags.
    unsafe {
        core::arch::asm!(
            "rep stosb",
            inout("rcx") n => _,
            inout("rdi") dst => _,
            in("al") value,
            options(nostack, preserves_flags),
        );
    }
    #[cfg(all(not(miri), target_arch = "aarch64"))]
    // SAFETY: stores exactly n bytes from dst forward (16 a round, then one at a time),
    // valid by the contract; only the named registers are changed.
    unsafe {
        let word = u64::from_ne_bytes([value; 8]);
        core::arch::asm!(
            "2:",
            "cmp {n}, #16",
            "b.lo 3f",
            "stp {w}, {w}, [{dst}], #16",
            "sub {n}, {n}, #16",
            "b 2b",
            "3:",
            "cbz {n}, 4f",
            "strb {w:w}, [{dst}], #1",
            "sub {n}, {n}, #1",
            "b 3b",
            "4:",
            n = inout(reg) n => _,
            dst = inout(reg) dst => _,
            w = in(reg) word,
            options(nostack),
        );
    }
    #[cfg(all(not(miri), not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
    for i in 0..n {
        // SAFETY: in range by the contract; AtomicU8 has alignment 1.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(value, Ordering::Relaxed);
    }
}

/// Copies a Rust slice into partition memory (the checked frame header, a program's
/// bytes in the tests): [`copy`] with a source that nothing else can write while it is
/// borrowed, always inlined.
///
/// Under Miri the source is read plainly: an atomic view of bytes behind a shared
/// reference would claim write permission that the reference does not have (Stacked
/// Borrows refuses it), and with the borrow alive no one else writes them anyway.
///
/// # Safety
///
/// `dst .. dst + src.len()` must be valid for writes, with no Rust reference to it
/// other than to atomics (as for [`copy`]); `src` is not inside it.
#[inline(always)]
pub unsafe fn copy_from_slice(dst: *mut u8, src: &[u8]) {
    #[cfg(miri)]
    for (i, b) in src.iter().enumerate() {
        // SAFETY: in range by the contract; AtomicU8 has alignment 1.
        unsafe { AtomicU8::from_ptr(dst.add(i)) }.store(*b, Ordering::Relaxed);
    }
    #[cfg(not(miri))]
    // SAFETY: forwarded contract; a borrowed slice never overlaps partition memory that
    // Rust code holds no reference to, so no overlap handling is needed: front to back
    // is right. Straight into `forward`, which is always inlined: with a length the
    // caller knows (the 32-byte header) the size dispatch folds to the one block.
    unsafe {
        forward(dst, src.as_ptr(), src.len())
    }
}

/// Copies partition memory into a Rust slice (the frame header read once to check it,
/// a received frame copied out): [`copy`] into a destination that cannot overlap the
/// source, so without the overlap test, and always inlined (a header's length is a
/// constant there, and the size dispatch folds).
///
/// # Safety
///
/// `src .. src + dst.len()` must be valid for reads, with no Rust reference to it
/// other than to atomics (as for [`copy`]).
#[inline(always)]
pub unsafe fn copy_to_slice(dst: &mut [u8], src: *const u8) {
    // SAFETY: the caller's contract for the source; the destination is an exclusive
    // borrow of local memory, which partition memory (never referenced by Rust code)
    // cannot overlap, so front to back is right.
    unsafe { forward(dst.as_mut_ptr(), src, dst.len()) }
}

/// Front-to-back copy of `n` bytes.
///
/// # Safety
///
/// As [`copy`], and `dst` is not inside `(src, src + n)` (so front to back is right).
#[inline(always)]
unsafe fn forward(dst: *mut u8, src: *const u8, n: usize) {
    #[cfg(miri)]
    for i in 0..n {
        // SAFETY: in range by the contract; AtomicU8 has alignment 1. Miri checks the
        // Rust model to the letter: this is what the assembly is in it.
        unsafe {
            let b = AtomicU8::from_ptr(src.add(i).cast_mut()).load(Ordering::Relaxed);
            AtomicU8::from_ptr(dst.add(i)).store(b, Ordering::Relaxed);
        }
    }
    #[cfg(all(not(miri), target_arch = "x86_64"))]
    // SAFETY: see `x86_64_forward`.
    unsafe {
        x86_64_forward(dst, src, n)
    }
    #[cfg(all(not(miri), target_arch = "aarch64"))]
    // SAFETY: see `aarch64_forward`.
    unsafe {
        aarch64_forward(dst, src, n)
    }
    #[cfg(all(not(miri), not(any(target_arch = "x86_64", target_arch = "aarch64"))))]
    // SAFETY: forwarded contract.
    unsafe {
        candidates::atomic_words(dst, src, n)
    }
}

/// Copies of at least this many bytes use `rep movsb`: below it, its start-up cost
/// (tens of cycles on the machines measured) exceeds a plain loop's.
#[cfg(all(not(miri), target_arch = "x86_64"))]
const REP_MOVSB_FROM: usize = 256;

/// x86_64: below [`REP_MOVSB_FROM`], general-register `mov`s in straight-line code
/// for up to 64 bytes (two overlapping accesses of the largest power of two that fits:
/// 1, 2, 4, 8, 16 or 32 bytes from each end), and a loop of 32 bytes a round with the
/// last 32 bytes loaded first and stored last above that; `rep movsb` from there on.
///
/// Every variant loads each byte before it stores any byte that could be that byte's
/// source (all loads first in the straight-line ones; in the loop, a round's loads
/// before its stores, and the tail loaded before the loop), so a destination below an
/// overlapping source is right, as [`forward`] requires. Overlapping stores write some
/// destination bytes twice, each time with a value loaded from its source byte: with a
/// partition writing the source meanwhile, every destination byte still ends as one of
/// the values its source byte held during the copy (the module docs' argument).
///
/// # Safety
///
/// As [`forward`].
#[cfg(all(not(miri), target_arch = "x86_64"))]
#[inline(always)]
unsafe fn x86_64_forward(dst: *mut u8, src: *const u8, n: usize) {
    if n >= REP_MOVSB_FROM {
        // SAFETY: `rep movsb` moves exactly rcx = n bytes from rsi = src to rdi = dst
        // front to back (DF = 0 is guaranteed on entry to asm), both ranges valid by
        // the contract; defined as byte-by-byte moves, so a destination below the
        // source is right even when they overlap. No stack, no flags.
        unsafe {
            core::arch::asm!(
                "rep movsb",
                inout("rcx") n => _,
                inout("rdi") dst => _,
                inout("rsi") src => _,
                options(nostack, preserves_flags),
            );
        }
    } else if n > 32 {
        // SAFETY: forwarded contract, 32 < n < 256.
        unsafe { x86_64_medium(dst, src, n) }
    } else if n > 16 {
        // SAFETY: 16 < n <= 32: [0, 16) and [n - 16, n); loads first; in range.
        unsafe {
            core::arch::asm!(
                "mov {a}, qword ptr [{src}]",
                "mov {b}, qword ptr [{src} + 8]",
                "mov {c}, qword ptr [{src} + {n} - 16]",
                "mov {d}, qword ptr [{src} + {n} - 8]",
                "mov qword ptr [{dst}], {a}",
                "mov qword ptr [{dst} + 8], {b}",
                "mov qword ptr [{dst} + {n} - 16], {c}",
                "mov qword ptr [{dst} + {n} - 8], {d}",
                n = in(reg) n,
                src = in(reg) src,
                dst = in(reg) dst,
                a = out(reg) _,
                b = out(reg) _,
                c = out(reg) _,
                d = out(reg) _,
                options(nostack, preserves_flags),
            );
        }
    } else if n >= 8 {
        // SAFETY: 8 <= n <= 16: [0, 8) and [n - 8, n); loads first; in range.
        unsafe {
            core::arch::asm!(
                "mov {a}, qword ptr [{src}]",
                "mov {b}, qword ptr [{src} + {n} - 8]",
                "mov qword ptr [{dst}], {a}",
                "mov qword ptr [{dst} + {n} - 8], {b}",
                n = in(reg) n,
                src = in(reg) src,
                dst = in(reg) dst,
                a = out(reg) _,
                b = out(reg) _,
                options(nostack, preserves_flags),
            );
        }
    } else if n >= 4 {
        // SAFETY: 4 <= n < 8: [0, 4) and [n - 4, n); loads first; in range.
        unsafe {
            core::arch::asm!(
                "mov {a:e}, dword ptr [{src}]",
                "mov {b:e}, dword ptr [{src} + {n} - 4]",
                "mov dword ptr [{dst}], {a:e}",
                "mov dword ptr [{dst} + {n} - 4], {b:e}",
                n = in(reg) n,
                src = in(reg) src,
                dst = in(reg) dst,
                a = out(reg) _,
                b = out(reg) _,
                options(nostack, preserves_flags),
            );
        }
    } else if n >= 2 {
        // SAFETY: 2 <= n < 4: [0, 2) and [n - 2, n); loads first; in range.
        unsafe {
            core::arch::asm!(
                "mov {a:x}, word ptr [{src}]",
                "mov {b:x}, word ptr [{src} + {n} - 2]",
                "mov word ptr [{dst}], {a:x}",
                "mov word ptr [{dst} + {n} - 2], {b:x}",
                n = in(reg) n,
                src = in(reg) src,
                dst = in(reg) dst,
                a = out(reg) _,
                b = out(reg) _,
                options(nostack, preserves_flags),
            );
        }
    } else if n == 1 {
        // SAFETY: one byte, in range by the contract.
        unsafe {
            core::arch::asm!(
                "mov {a:l}, byte ptr [{src}]",
                "mov byte ptr [{dst}], {a:l}",
                src = in(reg) src,
                dst = in(reg) dst,
                a = out(reg) _,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// x86_64 without SSE2, 32 < n < 256: the general-register variants (see
/// [`x86_64_forward`]).
///
/// # Safety
///
/// As [`forward`], and 32 < n < 256.
#[cfg(all(not(miri), target_arch = "x86_64", not(target_feature = "sse2")))]
#[inline(always)]
unsafe fn x86_64_medium(dst: *mut u8, src: *const u8, n: usize) {
    if n > 64 {
        // SAFETY: 64 < n < 256: the tail [n - 32, n) is loaded first, then rounds of 32
        // bytes while more than 32 remain (loads before stores), then the tail stored at
        // the end; every access lies in [0, n) of both ranges, valid by the contract.
        // Only the named registers and the flags change.
        unsafe {
            core::arch::asm!(
                "mov {t0}, qword ptr [{src} + {n} - 32]",
                "mov {t1}, qword ptr [{src} + {n} - 24]",
                "mov {t2}, qword ptr [{src} + {n} - 16]",
                "mov {t3}, qword ptr [{src} + {n} - 8]",
                "2:",
                "mov {a}, qword ptr [{src}]",
                "mov {b}, qword ptr [{src} + 8]",
                "mov {c}, qword ptr [{src} + 16]",
                "mov {d}, qword ptr [{src} + 24]",
                "mov qword ptr [{dst}], {a}",
                "mov qword ptr [{dst} + 8], {b}",
                "mov qword ptr [{dst} + 16], {c}",
                "mov qword ptr [{dst} + 24], {d}",
                "add {src}, 32",
                "add {dst}, 32",
                "sub {n}, 32",
                "cmp {n}, 32",
                "ja 2b",
                "mov qword ptr [{dst} + {n} - 32], {t0}",
                "mov qword ptr [{dst} + {n} - 24], {t1}",
                "mov qword ptr [{dst} + {n} - 16], {t2}",
                "mov qword ptr [{dst} + {n} - 8], {t3}",
                n = inout(reg) n => _,
                src = inout(reg) src => _,
                dst = inout(reg) dst => _,
                t0 = out(reg) _,
                t1 = out(reg) _,
                t2 = out(reg) _,
                t3 = out(reg) _,
                a = out(reg) _,
                b = out(reg) _,
                c = out(reg) _,
                d = out(reg) _,
                options(nostack),
            );
        }
    } else {
        // SAFETY: 32 < n <= 64: [0, 32) and [n - 32, n) cover the range; all eight loads
        // come before the stores. In range of both by the contract; no flags changed.
        unsafe {
            core::arch::asm!(
                "mov {a}, qword ptr [{src}]",
                "mov {b}, qword ptr [{src} + 8]",
                "mov {c}, qword ptr [{src} + 16]",
                "mov {d}, qword ptr [{src} + 24]",
                "mov {e}, qword ptr [{src} + {n} - 32]",
                "mov {f}, qword ptr [{src} + {n} - 24]",
                "mov {g}, qword ptr [{src} + {n} - 16]",
                "mov {h}, qword ptr [{src} + {n} - 8]",
                "mov qword ptr [{dst}], {a}",
                "mov qword ptr [{dst} + 8], {b}",
                "mov qword ptr [{dst} + 16], {c}",
                "mov qword ptr [{dst} + 24], {d}",
                "mov qword ptr [{dst} + {n} - 32], {e}",
                "mov qword ptr [{dst} + {n} - 24], {f}",
                "mov qword ptr [{dst} + {n} - 16], {g}",
                "mov qword ptr [{dst} + {n} - 8], {h}",
                n = in(reg) n,
                src = in(reg) src,
                dst = in(reg) dst,
                a = out(reg) _,
                b = out(reg) _,
                c = out(reg) _,
                d = out(reg) _,
                e = out(reg) _,
                f = out(reg) _,
                g = out(reg) _,
                h = out(reg) _,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// x86_64 with SSE2, 32 < n < 256: as the general-register variants of
/// [`x86_64_forward`] with 16-byte `movdqu`s (no callee-saved register to spill): up
/// to 64 bytes the first and last 32 bytes, all loads first; above, the last 32 bytes
/// loaded first, rounds of 32 bytes, the last 32 stored at the end.
///
/// # Safety
///
/// As [`forward`], and 32 < n < 256.
#[cfg(all(not(miri), target_arch = "x86_64", target_feature = "sse2"))]
#[inline(always)]
unsafe fn x86_64_medium(dst: *mut u8, src: *const u8, n: usize) {
    if n > 64 {
        // SAFETY: 64 < n < 256: every access in [0, n) of both ranges (valid by the
        // contract); the tail loaded before the loop, each round's loads before its
        // stores (see `x86_64_forward`). Only the named registers and flags change.
        unsafe {
            core::arch::asm!(
                "movdqu {t0}, xmmword ptr [{src} + {n} - 32]",
                "movdqu {t1}, xmmword ptr [{src} + {n} - 16]",
                "2:",
                "movdqu {a}, xmmword ptr [{src}]",
                "movdqu {b}, xmmword ptr [{src} + 16]",
                "movdqu xmmword ptr [{dst}], {a}",
                "movdqu xmmword ptr [{dst} + 16], {b}",
                "add {src}, 32",
                "add {dst}, 32",
                "sub {n}, 32",
                "cmp {n}, 32",
                "ja 2b",
                "movdqu xmmword ptr [{dst} + {n} - 32], {t0}",
                "movdqu xmmword ptr [{dst} + {n} - 16], {t1}",
                n = inout(reg) n => _,
                src = inout(reg) src => _,
                dst = inout(reg) dst => _,
                t0 = out(xmm_reg) _,
                t1 = out(xmm_reg) _,
                a = out(xmm_reg) _,
                b = out(xmm_reg) _,
                options(nostack),
            );
        }
    } else {
        // SAFETY: 32 < n <= 64: [0, 32) and [n - 32, n), all four loads before the
        // stores; in range of both by the contract; no flags changed.
        unsafe {
            core::arch::asm!(
                "movdqu {a}, xmmword ptr [{src}]",
                "movdqu {b}, xmmword ptr [{src} + 16]",
                "movdqu {c}, xmmword ptr [{src} + {n} - 32]",
                "movdqu {d}, xmmword ptr [{src} + {n} - 16]",
                "movdqu xmmword ptr [{dst}], {a}",
                "movdqu xmmword ptr [{dst} + 16], {b}",
                "movdqu xmmword ptr [{dst} + {n} - 32], {c}",
                "movdqu xmmword ptr [{dst} + {n} - 16], {d}",
                n = in(reg) n,
                src = in(reg) src,
                dst = in(reg) dst,
                a = out(xmm_reg) _,
                b = out(xmm_reg) _,
                c = out(xmm_reg) _,
                d = out(xmm_reg) _,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// aarch64: 64 bytes a round (four `ldp`, then four `stp`), then 16, then single bytes.
/// Unaligned `ldp`/`stp` are fine on Normal memory (SCTLR.A clear, as every image here
/// runs with the MMU on; partition memory is Normal memory).
///
/// # Safety
///
/// As [`forward`].
#[cfg(all(not(miri), target_arch = "aarch64"))]
#[inline(always)]
unsafe fn aarch64_forward(dst: *mut u8, src: *const u8, n: usize) {
    // SAFETY: moves exactly n bytes front to back, every load of a round before its
    // stores (so an overlapping destination below the source is right), both ranges
    // valid by the contract; only the named registers and the flags change.
    unsafe {
        core::arch::asm!(
            "2:",
            "cmp {n}, #64",
            "b.lo 3f",
            "ldp {a}, {b}, [{src}]",
            "ldp {c}, {d}, [{src}, #16]",
            "ldp {e}, {f}, [{src}, #32]",
            "ldp {g}, {h}, [{src}, #48]",
            "stp {a}, {b}, [{dst}]",
            "stp {c}, {d}, [{dst}, #16]",
            "stp {e}, {f}, [{dst}, #32]",
            "stp {g}, {h}, [{dst}, #48]",
            "add {src}, {src}, #64",
            "add {dst}, {dst}, #64",
            "sub {n}, {n}, #64",
            "b 2b",
            "3:",
            "cmp {n}, #16",
            "b.lo 4f",
            "ldp {a}, {b}, [{src}], #16",
            "stp {a}, {b}, [{dst}], #16",
            "sub {n}, {n}, #16",
            "b 3b",
            "4:",
            "cbz {n}, 5f",
            "ldrb {a:w}, [{src}], #1",
            "strb {a:w}, [{dst}], #1",
            "sub {n}, {n}, #1",
            "b 4b",
            "5:",
            n = inout(reg) n => _,
            src = inout(reg) src => _,
            dst = inout(reg) dst => _,
            a = out(reg) _,
            b = out(reg) _,
            c = out(reg) _,
            d = out(reg) _,
            e = out(reg) _,
            f = out(reg) _,
            g = out(reg) _,
            h = out(reg) _,
            options(nostack),
        );
    }
}

/// The other candidates, kept to be measured against the kept one (`cargo xtask bench`,
/// group `copy`) and, for the atomic words, as the primitive of architectures with no
/// assembly here. Front to back; the ranges must not overlap.
#[cfg_attr(not(feature = "copy-candidates"), allow(dead_code))]
pub mod candidates {
    use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

    const WORD: usize = size_of::<usize>();

    /// The primitive kept (see the module docs), for the benchmark.
    ///
    /// # Safety
    ///
    /// As [`super::copy`].
    pub unsafe fn kept(dst: *mut u8, src: *const u8, n: usize) {
        // SAFETY: forwarded contract.
        unsafe { super::copy(dst, src, n) }
    }

    /// `ptr::copy_nonoverlapping`: the limit, a data race if anyone writes the source.
    ///
    /// # Safety
    ///
    /// As [`super::copy`], the ranges apart, and nobody else accesses them during the
    /// copy (or the behaviour is undefined: what the kept primitive avoids).
    pub unsafe fn memcpy(dst: *mut u8, src: *const u8, n: usize) {
        // SAFETY: forwarded contract.
        unsafe { core::ptr::copy_nonoverlapping(src, dst, n) }
    }

    /// Word-wise relaxed atomics (as the `atomic-memcpy` crate): bytes up to the
    /// destination's word alignment, then aligned words when source and destination
    /// are equally misaligned, then bytes.
    ///
    /// # Safety
    ///
    /// As [`super::copy`], the ranges apart.
    pub unsafe fn atomic_words(dst: *mut u8, src: *const u8, n: usize) {
        let mut i = 0;
        if (dst as usize ^ src as usize).is_multiple_of(WORD) {
            while i < n && !(dst as usize + i).is_multiple_of(WORD) {
                // SAFETY: i < n: in range; AtomicU8 has alignment 1.
                unsafe { byte(dst, src, i) };
                i += 1;
            }
            while i + WORD <= n {
                // SAFETY: in range (i + WORD <= n); both addresses word-aligned (dst + i
                // is, and src has dst's misalignment).
                unsafe {
                    let w = AtomicUsize::from_ptr(src.add(i).cast_mut().cast::<usize>())
                        .load(Ordering::Relaxed);
                    AtomicUsize::from_ptr(dst.add(i).cast::<usize>()).store(w, Ordering::Relaxed);
                }
                i += WORD;
            }
        }
        while i < n {
            // SAFETY: i < n: in range.
            unsafe { byte(dst, src, i) };
            i += 1;
        }
    }

    /// Volatile words (as `vm-memory`): as [`atomic_words`] with volatile accesses.
    ///
    /// # Safety
    ///
    /// As [`super::copy`], the ranges apart. (Rust's model does not exempt volatile
    /// accesses from data races: a racing writer is still undefined behaviour there.)
    pub unsafe fn volatile_words(dst: *mut u8, src: *const u8, n: usize) {
        let mut i = 0;
        if (dst as usize ^ src as usize).is_multiple_of(WORD) {
            while i < n && !(dst as usize + i).is_multiple_of(WORD) {
                // SAFETY: in range.
                unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
                i += 1;
            }
            while i + WORD <= n {
                // SAFETY: in range, both word-aligned (as in `atomic_words`).
                unsafe {
                    let w = src.add(i).cast::<usize>().read_volatile();
                    dst.add(i).cast::<usize>().write_volatile(w);
                }
                i += WORD;
            }
        }
        while i < n {
            // SAFETY: in range.
            unsafe { dst.add(i).write_volatile(src.add(i).read_volatile()) };
            i += 1;
        }
    }

    /// One byte, `src + i` to `dst + i`, as relaxed atomics.
    ///
    /// # Safety
    ///
    /// Both bytes valid.
    unsafe fn byte(dst: *mut u8, src: *const u8, i: usize) {
        // SAFETY: the caller's contract; AtomicU8 has alignment 1.
        unsafe {
            let b = AtomicU8::from_ptr(src.add(i).cast_mut()).load(Ordering::Relaxed);
            AtomicU8::from_ptr(dst.add(i)).store(b, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};
    use std::sync::Arc;
    use std::vec::Vec;

    fn pattern(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Every length around the loops' steps and thresholds, at every misalignment of
    /// source and destination, with guard bytes around the destination.
    #[test]
    fn copies_exactly_the_bytes_asked_at_any_alignment() {
        // Miri runs every byte as an atomic access: a sample of the lengths there.
        let lens: Vec<usize> = if cfg!(miri) {
            std::vec![0, 1, 7, 8, 9, 16, 63, 64, 65, 257]
        } else {
            (0..=80)
                .chain([
                    96, 97, 127, 128, 129, 160, 200, 224, 255, 256, 257, 1500, 4099,
                ])
                .collect()
        };
        let offsets = if cfg!(miri) { 0..3 } else { 0..8 };
        for n in lens {
            for so in offsets.clone() {
                for d_off in offsets.clone() {
                    let src = pattern(n + 16, 7);
                    let mut dst = std::vec![0xEEu8; n + 32];
                    // SAFETY: both ranges inside their vectors, which are apart.
                    unsafe { copy(dst.as_mut_ptr().add(8 + d_off), src.as_ptr().add(so), n) };
                    assert!(dst[..8 + d_off].iter().all(|&b| b == 0xEE), "n {n}");
                    assert_eq!(&dst[8 + d_off..8 + d_off + n], &src[so..so + n], "n {n}");
                    assert!(dst[8 + d_off + n..].iter().all(|&b| b == 0xEE), "n {n}");
                    let mut a = std::vec![0u8; n];
                    let mut v = std::vec![0u8; n];
                    // SAFETY: as above.
                    unsafe {
                        candidates::atomic_words(a.as_mut_ptr(), src.as_ptr().add(so), n);
                        candidates::volatile_words(v.as_mut_ptr(), src.as_ptr().add(so), n);
                    }
                    assert_eq!(&a[..], &src[so..so + n]);
                    assert_eq!(&v[..], &src[so..so + n]);
                }
            }
        }
    }

    /// Overlapping ranges either way behave as `memmove` (`copy_within`).
    #[test]
    fn overlapping_copies_are_memmove() {
        let (lens, shifts): (&[usize], &[usize]) = if cfg!(miri) {
            (&[1, 9, 65], &[1, 8, 64])
        } else {
            (
                &[
                    1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 40, 63, 64, 65, 100, 200, 255,
                    300, 1000,
                ],
                &[1, 3, 8, 17, 64, 255, 256, 999],
            )
        };
        for &n in lens {
            for &shift in shifts {
                let base = pattern(n + shift + 8, 3);
                let mut up = base.clone();
                let mut want_up = base.clone();
                want_up.copy_within(0..n, shift);
                // SAFETY: both ranges inside `up`.
                unsafe { copy(up.as_mut_ptr().add(shift), up.as_ptr(), n) };
                assert_eq!(up, want_up, "up n {n} shift {shift}");
                let mut down = base.clone();
                let mut want_down = base;
                want_down.copy_within(shift..shift + n, 0);
                // SAFETY: both ranges inside `down`.
                unsafe { copy(down.as_mut_ptr(), down.as_ptr().add(shift), n) };
                assert_eq!(down, want_down, "down n {n} shift {shift}");
            }
        }
    }

    #[test]
    fn fill_sets_exactly_the_bytes_asked() {
        for n in [0usize, 1, 15, 16, 17, 63, 64, 65, 300] {
            for off in 0..4 {
                let mut v = std::vec![0x11u8; n + 8];
                // SAFETY: inside `v`.
                unsafe { fill(v.as_mut_ptr().add(off), 0xA5, n) };
                assert!(v[..off].iter().all(|&b| b == 0x11));
                assert!(v[off..off + n].iter().all(|&b| b == 0xA5));
                assert!(v[off + n..].iter().all(|&b| b == 0x11));
            }
        }
    }

    /// A partition rewriting its buffer during the copy: another thread keeps setting
    /// every source byte to 0x00 or 0xFF (relaxed atomic stores) while this one copies
    /// it. Each copied byte must be one of those two values: the copy moves bytes the
    /// source held, never invents one, and never strays outside the range (guards).
    #[test]
    fn copy_from_a_buffer_rewritten_during_the_copy_gets_its_bytes() {
        const N: usize = if cfg!(miri) { 256 } else { 4096 };
        let src: Arc<Vec<AtomicU8>> = Arc::new((0..N).map(|_| AtomicU8::new(0)).collect());
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (src, stop) = (src.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut v = 0u8;
                while !stop.load(Ordering::Relaxed) {
                    v = !v;
                    for b in src.iter() {
                        b.store(v, Ordering::Relaxed);
                    }
                }
            })
        };
        let rounds = if cfg!(miri) { 2 } else { 2000 };
        let mut mixed = 0;
        for _ in 0..rounds {
            let mut dst = std::vec![0x5Au8; N + 2];
            // SAFETY: the source is N atomics (same layout as u8s), accessed by the
            // other thread through atomics only; the destination is local.
            unsafe { copy(dst.as_mut_ptr().add(1), src.as_ptr().cast::<u8>(), N) };
            assert_eq!((dst[0], dst[N + 1]), (0x5A, 0x5A));
            assert!(dst[1..=N].iter().all(|&b| b == 0 || b == 0xFF));
            mixed += usize::from(dst[1..=N].contains(&0) && dst[1..=N].contains(&0xFF));
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        // How often a copy saw the writer mid-way (not asserted: it depends on timing).
        std::println!("copies that saw both values: {mixed}");
    }
}
