//! Stage-2 translation: each partition's IPA space maps its own window and nothing else.
//!
//! Hand-written rather than with `aarch64-paging`: a partition needs three fixed pages
//! (two concatenated level-1 tables, one level-2 table of 2 MiB blocks), filled once
//! before it runs, with no allocator and no failure path; the few descriptor bits are
//! below with their source, and a table the size of a page is easy to check by eye.
//! `aarch64-paging`'s `Stage2` regime without `alloc` would need a `Translation`
//! implementation handing out table pages for the same three pages.
//!
//! VTCR_EL2 = 0x8002_3558 (checked on this QEMU, BARE-METAL-NOTES): T0SZ 24 (40-bit IPA),
//! SL0 1 (walks start at level 1, two concatenated level-1 tables, 8 KiB aligned), 4 KiB
//! granule, inner-shareable write-back walks, PS 40 bits.

use core::cell::UnsafeCell;

use super::GUEST_BASE;
use crate::board::{HCR_EL2_HOST, MAX_CORES};

/// VTCR_EL2 (Arm ARM D17.2.180): RES1 bit 31, PS 0b010 (40 bits), TG0 4 KiB, SH0 inner,
/// ORGN0/IRGN0 write-back, SL0 1, T0SZ 24.
const VTCR: u64 = 0x8002_3558;
/// HCR_EL2.VM: stage 2 on for EL1&0.
const HCR_VM: u64 = 1;

/// Level-1 and level-2 stage-2 descriptors (Arm ARM D8.3.1, D8.5.5 stage-2 attributes).
const TABLE: u64 = 0b11;
const BLOCK: u64 = 0b01;
/// MemAttr[5:2] = 0b1111: normal memory, outer and inner write-back.
const S2_MEMATTR_NORMAL_WB: u64 = 0b1111 << 2;
/// S2AP[7:6] = 0b11: read and write.
const S2AP_RW: u64 = 0b11 << 6;
/// SH[9:8] = 0b11: inner shareable.
const SH_INNER: u64 = 0b11 << 8;
/// Access flag.
const AF: u64 = 1 << 10;
const BLOCK_2M: u64 = 2 << 20;

/// Two concatenated level-1 tables (40-bit IPA from level 1: 1024 entries of 1 GiB).
#[repr(C, align(8192))]
struct Level1([u64; 1024]);
/// A level-2 table: 512 entries of 2 MiB.
#[repr(C, align(4096))]
struct Level2([u64; 512]);

struct Tables {
    l1: UnsafeCell<Level1>,
    l2: UnsafeCell<Level2>,
}

struct AllTables([Tables; MAX_CORES]);

// SAFETY: core N writes only its own tables, and only while its partition is not
// running (the walker reads them while it runs).
unsafe impl Sync for AllTables {}

static TABLES: AllTables = AllTables(
    [const {
        Tables {
            l1: UnsafeCell::new(Level1([0; 1024])),
            l2: UnsafeCell::new(Level2([0; 512])),
        }
    }; MAX_CORES],
);

/// The descriptors of a window of `len` bytes at `pa`, seen at [`GUEST_BASE`]: level-1
/// entry of the GiB holding `GUEST_BASE` -> level 2, whose first `len / 2 MiB` entries
/// are 2 MiB blocks of `pa`. Pure, so it is easy to test and to read.
pub fn descriptors(l2_pa: u64, pa: u64, len: usize) -> ([u64; 1024], [u64; 512]) {
    descriptors_at(l2_pa, GUEST_BASE, pa, len)
}

/// The same for a window seen at `ipa` (a Linux guest's RAM at 0x4000_0000): `ipa` is
/// 2 MiB aligned and the window does not cross a 1 GiB boundary, so one level-2 table
/// holds it.
pub fn descriptors_at(l2_pa: u64, ipa: u64, pa: u64, len: usize) -> ([u64; 1024], [u64; 512]) {
    let mut l1 = [0u64; 1024];
    let mut l2 = [0u64; 512];
    l1[((ipa >> 30) & 1023) as usize] = l2_pa | TABLE;
    let first = ((ipa >> 21) & 511) as usize;
    let blocks = (len as u64 / BLOCK_2M) as usize;
    for (i, d) in l2.iter_mut().skip(first).take(blocks).enumerate() {
        *d = (pa + i as u64 * BLOCK_2M) | BLOCK | S2_MEMATTR_NORMAL_WB | S2AP_RW | SH_INNER | AF;
    }
    (l1, l2)
}

/// Fills `core`'s stage-2 tables for its window (`pa`, `len`, 2 MiB aligned) and
/// returns the root's address for VTTBR_EL2.
pub fn build(core: usize, pa: u64, len: usize) -> u64 {
    build_at(core, GUEST_BASE, pa, len)
}

/// [`build`] for a window seen at `ipa` (see [`descriptors_at`]).
pub fn build_at(core: usize, ipa: u64, pa: u64, len: usize) -> u64 {
    let t = &TABLES.0[core];
    let l2_pa = t.l2.get().addr() as u64;
    let (l1, l2) = descriptors_at(l2_pa, ipa, pa, len);
    // SAFETY: this core's tables, while its partition is not running (see `AllTables`).
    unsafe {
        (*t.l1.get()).0 = l1;
        (*t.l2.get()).0 = l2;
    }
    // The walker reads the tables through the caches (inner-shareable write-back walks);
    // on real cores written with the MMU on, a DSB before use is enough.
    // SAFETY: a barrier has no effect besides ordering.
    unsafe { core::arch::asm!("dsb ish", options(nostack, preserves_flags)) };
    t.l1.get().addr() as u64
}

/// Turns stage 2 on with `root` for VMID `vmid`, and invalidates that VMID's stale
/// translations (a previous partition on this core had the same VMID).
pub fn activate(vmid: u16, root: u64) {
    activate_with(vmid, root, 0)
}

/// [`activate`] with more HCR_EL2 bits for this guest (a Linux guest's APK | API).
pub fn activate_with(vmid: u16, root: u64, extra_hcr: u64) {
    let vttbr = u64::from(vmid) << 48 | root;
    // SAFETY: EL2 control registers of this core; no partition runs on it yet. TLBI
    // VMALLS12E1IS invalidates the current VMID's stage-1 and stage-2 entries.
    unsafe {
        core::arch::asm!(
            "msr vtcr_el2, {vtcr}",
            "msr vttbr_el2, {vttbr}",
            "isb",
            "tlbi vmalls12e1is",
            "dsb ish",
            "msr hcr_el2, {hcr}",
            "isb",
            vtcr = in(reg) VTCR,
            vttbr = in(reg) vttbr,
            hcr = in(reg) HCR_EL2_HOST | HCR_VM | extra_hcr,
            options(nostack, preserves_flags),
        )
    };
}

/// Turns stage 2 off again (no partition on this core).
pub fn deactivate() {
    // SAFETY: as in `activate`; the partition no longer runs.
    unsafe {
        core::arch::asm!(
            "msr hcr_el2, {hcr}",
            "isb",
            hcr = in(reg) HCR_EL2_HOST,
            options(nostack, preserves_flags),
        )
    };
}
