//! Loads the partition program (an ELF64 for AArch64, linked at the window's IPA) into a
//! partition's window: every `PT_LOAD` segment copied, its `.bss` part zeroed.
//!
//! The image is the hypervisor's own (embedded at build time), but it is still checked:
//! every segment must lie inside the file and inside the window.

use core::ptr::NonNull;

const PT_LOAD: u32 = 1;
const EM_AARCH64: u16 = 183;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// One loadable segment: where it goes (offset in the window), its file bytes, and its
/// size in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Offset of the segment in the window.
    pub offset: usize,
    /// Offset of its bytes in the file.
    pub file_offset: usize,
    /// Bytes in the file.
    pub file_len: usize,
    /// Bytes in memory (the rest is zero).
    pub mem_len: usize,
}

/// The entry point and the loadable segments of `image` for a window of `len` bytes at
/// IPA `base`, each checked to lie inside the file and the window. Pure.
pub fn parse(
    image: &[u8],
    len: usize,
    base: u64,
    mut each: impl FnMut(Segment),
) -> Result<u64, &'static str> {
    if image.get(..4) != Some(b"\x7fELF".as_slice())
        || image.get(4) != Some(&2)
        || image.get(5) != Some(&1)
    {
        return Err("not a little-endian ELF64 (was the partition program embedded?)");
    }
    if u16_at(image, 18) != Some(EM_AARCH64) {
        return Err("not an AArch64 ELF");
    }
    let entry = u64_at(image, 24).ok_or("truncated header")?;
    let phoff = u64_at(image, 32).ok_or("truncated header")? as usize;
    let phentsize = usize::from(u16_at(image, 54).ok_or("truncated header")?);
    let phnum = usize::from(u16_at(image, 56).ok_or("truncated header")?);
    let end = base.checked_add(len as u64).ok_or("window wraps")?;
    if !(base..end).contains(&entry) {
        return Err("entry point outside the window");
    }
    for i in 0..phnum {
        let ph = phoff
            .checked_add(i.checked_mul(phentsize).ok_or("program headers overflow")?)
            .ok_or("program headers overflow")?;
        if u32_at(image, ph).ok_or("truncated program header")? != PT_LOAD {
            continue;
        }
        let file_offset = u64_at(image, ph + 8).ok_or("truncated program header")?;
        let paddr = u64_at(image, ph + 24).ok_or("truncated program header")?;
        let file_len = u64_at(image, ph + 32).ok_or("truncated program header")?;
        let mem_len = u64_at(image, ph + 40).ok_or("truncated program header")?;
        let file_end = file_offset
            .checked_add(file_len)
            .ok_or("segment overflows")?;
        let mem_end = paddr.checked_add(mem_len).ok_or("segment overflows")?;
        if file_end > image.len() as u64 || file_len > mem_len {
            return Err("segment outside the file");
        }
        if paddr < base || mem_end > end {
            return Err("segment outside the window");
        }
        each(Segment {
            offset: (paddr - base) as usize,
            file_offset: file_offset as usize,
            file_len: file_len as usize,
            mem_len: mem_len as usize,
        });
    }
    Ok(entry)
}

/// Copies `image`'s segments into the window at `host` (`len` bytes, seen by the
/// partition at IPA `base`) and returns the entry point.
///
/// # Safety
///
/// `host` must be valid for writes of `len` bytes, and nothing else may use that memory.
pub unsafe fn load(
    image: &[u8],
    host: NonNull<u8>,
    len: usize,
    base: u64,
) -> Result<u64, &'static str> {
    let entry = parse(image, len, base, |s| {
        // SAFETY: `parse` checked the segment lies inside the file and the window (and
        // file_len <= mem_len); the caller vouches for the window.
        unsafe {
            let dst = host.as_ptr().add(s.offset);
            core::ptr::copy_nonoverlapping(image.as_ptr().add(s.file_offset), dst, s.file_len);
            core::ptr::write_bytes(dst.add(s.file_len), 0, s.mem_len - s.file_len);
        }
        clean_to_pou(host.as_ptr().addr() + s.offset, s.file_len);
    })?;
    // The partition fetches as instructions what was just written as data: with the data
    // cleaned to the point of unification, drop stale instructions (Arm ARM D7.5.9,
    // instruction cache coherency). QEMU needs none of it; real cores do.
    // SAFETY: cache maintenance and barriers have no effect besides coherency.
    unsafe {
        core::arch::asm!(
            "dsb ish",
            "ic ialluis",
            "dsb ish",
            "isb",
            options(nostack, preserves_flags)
        )
    };
    Ok(entry)
}

/// Cleans `len` bytes from `addr` to the point of unification, line by line (the
/// smallest data-cache line, from CTR_EL0.DminLine).
fn clean_to_pou(addr: usize, len: usize) {
    let ctr: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, ctr_el0", out(reg) ctr, options(nomem, nostack, preserves_flags))
    };
    let line = 4usize << (ctr >> 16 & 0xf);
    let mut a = addr & !(line - 1);
    while a < addr + len {
        // SAFETY: DC CVAU on mapped memory (the window) only cleans a cache line.
        unsafe { core::arch::asm!("dc cvau, {}", in(reg) a, options(nostack, preserves_flags)) };
        a += line;
    }
}
