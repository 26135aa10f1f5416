//! The memory map of the QEMU `virt` machine as this board uses it, and the translation
//! tables that describe it.
//!
//! `linker/memory.ld` holds the same numbers; its `ASSERT`s fail the link if the image
//! puts the translation tables or the stacks anywhere else than the constants below.
//!
//! ```text
//! 0x0800_0000  GICv3 distributor, ITS, redistributors (device, 16 MiB mapped)
//! 0x0900_0000  PL011 UART and other small devices   (device, 2 MiB mapped)
//!              everything else below 1 GiB (flash at 0, PCIe) is unmapped, so a null
//!              pointer dereference faults
//! 0x4000_0000  RAM: device tree (QEMU), then the image from 0x4008_0000  (normal)
//! 0x4400_0000  level-2/level-3 translation tables                       (normal, XN)
//! 0x4420_0000  stacks: 8 slots of 256 KiB = [guard | exception stack | guard | main stack]
//! 0x4440_0000  unmapped
//! 0x5000_0000  partition windows, 48 MiB each, 64 MiB apart (16 MiB unmapped guard)
//! 0x7000_0000  unmapped up to the end of RAM at 0x8000_0000 (QEMU `-m 1G`)
//! 0x8000_0000  the Linux guests' windows (`vm::linux::CONFIG`), 2 MiB blocks (normal,
//!              XN), exactly as many as the build's guests have; the rest of 2-4 GiB
//!              unmapped. The hypervisor reads and writes them only through the
//!              window-checked `vm::linux` guest memory (the virtio rings and buffers).
//! ```

/// Most cores the board supports: the stack region and the window map have 8 slots.
pub const MAX_CORES: usize = 8;

/// Size of a translation granule (page).
pub const PAGE_SIZE: usize = 4096;

/// PL011 UART (console) base address.
pub const UART_BASE: usize = 0x0900_0000;
/// GICv3 distributor base address.
pub const GICD_BASE: usize = 0x0800_0000;
/// First GICv3 redistributor; one per core, `GICR_STRIDE` apart.
pub const GICR_BASE: usize = 0x080A_0000;
/// Distance between two redistributors (RD frame + SGI frame).
pub const GICR_STRIDE: usize = 0x2_0000;
/// End of the redistributor region of the `virt` machine (room for 123 cores).
pub const GICR_END: usize = 0x0900_0000;

/// Start of RAM.
pub const RAM_BASE: usize = 0x4000_0000;
/// RAM the board maps and needs: run QEMU with `-m 1G`.
pub const RAM_SIZE: usize = 0x4000_0000;
/// Where the image is loaded.
pub const IMAGE_BASE: usize = 0x4008_0000;
/// End of the room for the image (code, data, .bss).
pub const IMAGE_END: usize = 0x4400_0000;

/// The level-2 table for the first GiB (devices); fixed by `linker/image.ld`.
pub const PAGETABLE_L2_DEVICE: usize = 0x4400_0000;
/// The level-2 table for the second GiB (RAM); fixed by `linker/image.ld`.
pub const PAGETABLE_L2_RAM: usize = 0x4400_1000;
/// The level-3 table for the stack region; fixed by `linker/image.ld`.
pub const PAGETABLE_L3_STACKS: usize = 0x4400_2000;
/// The two level-2 tables for the third and fourth GiB (the Linux guests' windows);
/// fixed by `linker/image.ld`.
pub const PAGETABLE_L2_LINUX: usize = 0x4400_3000;

/// Where the Linux guests' windows are physically: `[start, end)`, empty without
/// Linux guests (the build's `IQDIO_LINUX_*`, see `vm::linux::CONFIG`).
pub const LINUX_WINDOWS: (usize, usize) = {
    let c = crate::vm::linux::CONFIG;
    let start = c.phys as usize;
    (start, start + c.guests * ((c.ram_mib as usize) << 20))
};
/// The part of the physical address space the Linux window tables cover: 2-4 GiB.
const LINUX_SPAN: (usize, usize) = (0x8000_0000, 0x1_0000_0000);

/// Start of the stack region (one 2 MiB block mapped page by page).
pub const STACKS_BASE: usize = 0x4420_0000;
/// One core's share of the stack region.
pub const STACK_SLOT_SIZE: usize = 0x4_0000;
/// An unmapped guard page.
pub const STACK_GUARD_SIZE: usize = PAGE_SIZE;
/// Exception stack (SP_EL2): interrupts, fault reports and a partition's traps (its
/// HVCs run the fabric here) run on it.
pub const EXCEPTION_STACK_SIZE: usize = 0x1_0000;
/// Offset of the main stack (SP_EL0) in a slot: after guard, exception stack, guard.
pub const MAIN_STACK_OFFSET: usize = 2 * STACK_GUARD_SIZE + EXCEPTION_STACK_SIZE;
/// Pages of a main stack; `entry!(.., MAIN_STACK_PAGES)` must use the same number.
pub const MAIN_STACK_PAGES: usize = (STACK_SLOT_SIZE - MAIN_STACK_OFFSET) / PAGE_SIZE;

/// First partition window (core 0's).
pub const WINDOWS_BASE: usize = 0x5000_0000;
/// Distance between two partition windows.
pub const WINDOW_STRIDE: usize = 64 << 20;
/// Usable size of a partition window; the rest of the stride is an unmapped guard.
pub const WINDOW_SIZE: usize = 48 << 20;

const _: () = {
    assert!(MAIN_STACK_PAGES == 46);
    assert!(STACKS_BASE.is_multiple_of(2 << 20));
    assert!(STACK_SLOT_SIZE * MAX_CORES == 2 << 20);
    assert!(WINDOWS_BASE + MAX_CORES * WINDOW_STRIDE <= RAM_BASE + RAM_SIZE);
    assert!(WINDOW_SIZE.is_multiple_of(2 << 20) && WINDOW_SIZE < WINDOW_STRIDE);
    assert!(IMAGE_END <= PAGETABLE_L2_DEVICE);
    // The Linux windows fit the two tables, in whole 2 MiB blocks.
    assert!(LINUX_WINDOWS.0 == LINUX_WINDOWS.1 || LINUX_WINDOWS.0 >= LINUX_SPAN.0);
    assert!(LINUX_WINDOWS.1 <= LINUX_SPAN.1);
    assert!(LINUX_WINDOWS.0.is_multiple_of(2 << 20) && LINUX_WINDOWS.1.is_multiple_of(2 << 20));
};

/// Memory window of partition `core`: where that partition's queues and buffers live.
///
/// Windows are disjoint, [`WINDOW_SIZE`] bytes each, and separated by unmapped guard
/// space, so a partition that runs off its window faults instead of corrupting another.
/// Nothing else in the image uses this memory; its contents are undefined at boot.
///
/// # Panics
///
/// If `core` is not below [`MAX_CORES`].
pub fn partition_window(core: usize) -> (*mut u8, usize) {
    assert!(core < MAX_CORES, "no partition window for core {}", core);
    (
        core::ptr::with_exposed_provenance_mut(WINDOWS_BASE + core * WINDOW_STRIDE),
        WINDOW_SIZE,
    )
}

/// The stack slot of `core`: `[guard | exception stack | guard | main stack]`.
pub(crate) const fn stack_slot(core: usize) -> usize {
    STACKS_BASE + core * STACK_SLOT_SIZE
}

/// Initial SP_EL1 of `core`: the top of its exception stack.
pub(crate) const fn exception_stack_top(core: usize) -> usize {
    stack_slot(core) + STACK_GUARD_SIZE + EXCEPTION_STACK_SIZE
}

/// Lowest address of the main stack of `core`.
pub(crate) const fn main_stack_bottom(core: usize) -> usize {
    stack_slot(core) + MAIN_STACK_OFFSET
}

/// Bounds `[low, high)` of the main stack of `core` (its stack pointer lives there).
pub fn main_stack_bounds(core: usize) -> (usize, usize) {
    (main_stack_bottom(core), stack_slot(core) + STACK_SLOT_SIZE)
}

/// If `addr` is a stack guard page, the core whose stack it guards and whether it is the
/// guard below the main stack (true) or below the exception stack (false).
pub(crate) fn stack_guard_owner(addr: usize) -> Option<(usize, bool)> {
    if !(STACKS_BASE..STACKS_BASE + MAX_CORES * STACK_SLOT_SIZE).contains(&addr) {
        return None;
    }
    let core = (addr - STACKS_BASE) / STACK_SLOT_SIZE;
    let offset = (addr - STACKS_BASE) % STACK_SLOT_SIZE;
    if offset < STACK_GUARD_SIZE {
        Some((core, false))
    } else if (MAIN_STACK_OFFSET - STACK_GUARD_SIZE..MAIN_STACK_OFFSET).contains(&offset) {
        Some((core, true))
    } else {
        None
    }
}

/// If `addr` lies in the unmapped guard after a partition window, the window's core.
pub(crate) fn window_guard_owner(addr: usize) -> Option<usize> {
    if !(WINDOWS_BASE..WINDOWS_BASE + MAX_CORES * WINDOW_STRIDE).contains(&addr) {
        return None;
    }
    let core = (addr - WINDOWS_BASE) / WINDOW_STRIDE;
    ((addr - WINDOWS_BASE) % WINDOW_STRIDE >= WINDOW_SIZE).then_some(core)
}

// Translation table descriptors of the EL2 stage-1 regime (Arm ARM D8.3, VMSAv8-64, 4 KiB
// granule, HCR_EL2.E2H = 0: one privilege level, so AP[1] is RES1 and bit 54 is XN).
const DESC_TABLE: usize = 0b11; // level 1/2: next-level table
const DESC_BLOCK: usize = 0b01; // level 1/2: block
const DESC_PAGE: usize = 0b11; // level 3: page
const ATTR_INDEX_DEVICE: usize = 0 << 2; // MAIR slot 0: Device-nGnRE (aarch64-rt DEFAULT_MAIR)
const ATTR_INDEX_NORMAL: usize = 1 << 2; // MAIR slot 1: Normal write-back RW-allocate
const AP1_RES1: usize = 1 << 6; // AP[1]: RES1 in a one-level regime; AP[2] = 0: writable
const SH_INNER: usize = 0b11 << 8; // inner shareable: coherent, atomics valid across cores
const AF: usize = 1 << 10; // access flag: set, so the first access does not fault
const XN: usize = 1 << 54; // execute never (EL2 regime)

const DEVICE: usize = ATTR_INDEX_DEVICE | AP1_RES1 | AF | XN;
const NORMAL: usize = ATTR_INDEX_NORMAL | AP1_RES1 | SH_INNER | AF;
const NORMAL_XN: usize = NORMAL | XN;

const BLOCK_2M: usize = 2 << 20;

/// A 4 KiB-aligned translation table of 512 descriptors.
#[repr(C, align(4096))]
pub(crate) struct Table(pub(crate) [usize; 512]);

/// Level 1: the first GiB through the device table, the second through the RAM table,
/// the third and fourth through the Linux window tables.
pub(crate) const fn root_table() -> [usize; 512] {
    let mut t = [0; 512];
    t[0] = PAGETABLE_L2_DEVICE | DESC_TABLE;
    t[1] = PAGETABLE_L2_RAM | DESC_TABLE;
    t[2] = PAGETABLE_L2_LINUX | DESC_TABLE;
    t[3] = (PAGETABLE_L2_LINUX + PAGE_SIZE) | DESC_TABLE;
    t
}

/// Level 2 for 2..4 GiB (two tables): the Linux guests' windows as 2 MiB blocks of
/// normal memory (the guests map it normal write-back too), never executable.
const fn l2_linux() -> [Table; 2] {
    let mut t = [Table([0; 512]), Table([0; 512])];
    let mut i = 0;
    while i < 1024 {
        let addr = LINUX_SPAN.0 + i * BLOCK_2M;
        if addr >= LINUX_WINDOWS.0 && addr < LINUX_WINDOWS.1 {
            t[i / 512].0[i % 512] = addr | NORMAL_XN | DESC_BLOCK;
        }
        i += 1;
    }
    t
}

/// Level 2 for 0..1 GiB: only the GIC and the UART page of devices.
const fn l2_device() -> Table {
    let mut t = [0; 512];
    let mut i = 0;
    while i < 512 {
        let addr = i * BLOCK_2M;
        if addr >= GICD_BASE && addr < GICR_END + BLOCK_2M {
            t[i] = addr | DEVICE | DESC_BLOCK;
        }
        i += 1;
    }
    Table(t)
}

/// Level 2 for 1..2 GiB: image, translation tables, stacks (via level 3), windows.
const fn l2_ram() -> Table {
    let mut t = [0; 512];
    let mut i = 0;
    while i < 512 {
        let addr = RAM_BASE + i * BLOCK_2M;
        t[i] = if addr < IMAGE_END {
            addr | NORMAL | DESC_BLOCK
        } else if addr == PAGETABLE_L2_DEVICE {
            addr | NORMAL_XN | DESC_BLOCK
        } else if addr == STACKS_BASE {
            PAGETABLE_L3_STACKS | DESC_TABLE
        } else if addr >= WINDOWS_BASE
            && addr < WINDOWS_BASE + MAX_CORES * WINDOW_STRIDE
            && (addr - WINDOWS_BASE) % WINDOW_STRIDE < WINDOW_SIZE
        {
            addr | NORMAL_XN | DESC_BLOCK
        } else {
            0
        };
        i += 1;
    }
    Table(t)
}

/// Level 3 for the stack region: every page mapped except the guard pages.
const fn l3_stacks() -> Table {
    let mut t = [0; 512];
    let mut i = 0;
    while i < 512 {
        let addr = STACKS_BASE + i * PAGE_SIZE;
        let offset = (addr - STACKS_BASE) % STACK_SLOT_SIZE;
        let guard = offset < STACK_GUARD_SIZE
            || (offset >= MAIN_STACK_OFFSET - STACK_GUARD_SIZE && offset < MAIN_STACK_OFFSET);
        if !guard {
            t[i] = addr | NORMAL_XN | DESC_PAGE;
        }
        i += 1;
    }
    Table(t)
}

#[used]
#[unsafe(link_section = ".pagetables.l2_device")]
static L2_DEVICE: Table = l2_device();

#[used]
#[unsafe(link_section = ".pagetables.l2_ram")]
static L2_RAM: Table = l2_ram();

#[used]
#[unsafe(link_section = ".pagetables.l3_stacks")]
static L3_STACKS: Table = l3_stacks();

#[used]
#[unsafe(link_section = ".pagetables.l2_linux")]
static L2_LINUX: [Table; 2] = l2_linux();

/// Checks that the linker put the tables where the level-1 table says they are.
///
/// The link already asserts it; this also keeps the tables' object in the link.
pub(crate) fn tables_in_place() -> bool {
    core::ptr::addr_of!(L2_DEVICE).addr() == PAGETABLE_L2_DEVICE
        && core::ptr::addr_of!(L2_RAM).addr() == PAGETABLE_L2_RAM
        && core::ptr::addr_of!(L3_STACKS).addr() == PAGETABLE_L3_STACKS
        && core::ptr::addr_of!(L2_LINUX).addr() == PAGETABLE_L2_LINUX
}
