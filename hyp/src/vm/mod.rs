//! Partitions as EL1 guests: core N runs partition N (LPAR id N) in its own stage-2
//! address space (VMID N + 1), and the fabric is the hypervisor's, reached only through
//! HVC.
//!
//! Every partition sees the same guest-physical (IPA) layout: its 48 MiB window at
//! [`GUEST_BASE`], nothing else. Stage 2 maps that range to the core's own physical
//! window ([`crate::board::partition_window`]) and nothing more: not the hypervisor,
//! not another partition, not the GIC distributor or redistributors, not the UART. The
//! partition program (an ELF linked at [`GUEST_BASE`], embedded at build time) is
//! copied into the window; its stage-1 tables, stack and vectors are its own, inside
//! the window. The fabric knows the window at the same IPA, so every guest address the
//! partition gives (SBALs, SLSBs, indicators, the establish block, console text) goes
//! through the fabric's window checks.
//!
//! ```text
//! IPA (every partition)                    PA (partition N)
//! 0x8000_0000  program image, stacks,      0x5000_0000 + N * 64 MiB
//!              stage-1 tables, then its
//!              queues and buffers
//! 0x8300_0000  end of the window (48 MiB)  (16 MiB unmapped guard follows)
//! anything else: stage-2 fault -> the partition is stopped (but for the
//!              virtio-net slot of a partition given a device, see [`vnetdev`])
//! ```
//!
//! A Linux guest ([`linux`]) is a partition of another kind: its own layout (RAM at IPA
//! 0x4000_0000, emulated GIC and UART), its faults emulated or reflected, not fatal.

pub mod elf;
pub mod linux;
pub mod netlines;
pub mod stage2;
pub mod trap;
pub mod vgic;
pub mod vnet;
pub mod vnetdev;
pub mod window_ram;

use core::cell::UnsafeCell;
use core::net::IpAddr;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

use iqdio::{
    BROADCAST_GROUP, CallContext, CounterSnapshot, Fabric, FabricConfig, GuestMemory,
    InterruptDelivery, InterruptTarget, LparId, Platform, RegistrationError, Window, Windows,
};

use crate::board::{self, MAX_CORES, VcpuRegs};

/// Where every partition's window starts in its own guest-physical address space:
/// above all of the machine's RAM (which ends at 0x8000_0000 with `-m 1G`), so no
/// hypervisor or partition physical address is also a valid IPA of a partition.
pub const GUEST_BASE: u64 = 0x8000_0000;
/// Size of a partition's window.
pub const GUEST_WINDOW: usize = board::WINDOW_SIZE;

/// The fabric type of the hypervisor, sized for what it runs: a partition per core
/// ([`MAX_CORES`], 8), each with one queue set, two addresses (IPv4 and IPv6), up to
/// four memberships (the multicast scenario's three groups and the broadcast domain)
/// and its memory as a [`HypMemory`] (one window, and for a Linux guest the queue area
/// of [`vnet`]); 64 target-table slots keep the table at most three quarters full (48
/// entries); two output queues per set (one unicast, one multicast, as Linux's qeth
/// has at least). Under 32 KiB (the row "the hypervisor image" of `tests/sizes.rs`,
/// with `Windows<1>`, plus 8 bytes per partition for the queue area's pointer), all-zero
/// at build time, so the static below lands in `.bss` (`cargo xtask test` checks that
/// in the image, and that it is at most 32 KiB).
pub type HypFabric = Fabric<HypPlatform, 8, 64, MAX_CORES, 1, HypMemory, 2>;

/// A partition's memory as the hypervisor's fabric knows it: one window (a bare-metal
/// partition's, or a Linux guest's RAM) and, for a Linux guest, the queue area of
/// [`vnet`] at [`GUEST_BASE`] ([`vnet::AREA`] bytes of the core's partition window).
///
/// Why not `Windows<2>`: with the fabric's per-epoch caches it would make
/// [`HypFabric`] 32 896 bytes, over the 32 KiB the image allows it; the area's guest
/// address and length are fixed, so its host address is all a partition needs to
/// keep (8 bytes more than `Windows<1>`: 32 704 bytes in all).
#[derive(Clone, Copy, Debug)]
pub struct HypMemory {
    main: Windows<1>,
    /// The queue area's host address; `None` (all-zero) for a bare-metal partition.
    area: Option<NonNull<u8>>,
}

// SAFETY: the area pointer names memory that `with_area`'s contract makes valid for
// any thread, touched only through the fabric's atomic and copy accessors (as
// `Window`'s memory is, which is Send and Sync for the same reason).
unsafe impl Send for HypMemory {}
// SAFETY: as for Send: shared use only reads the bounds.
unsafe impl Sync for HypMemory {}

impl HypMemory {
    /// The memory of one window.
    pub fn new(window: Window) -> Result<Self, RegistrationError> {
        Ok(Self {
            main: Windows::new(&[window])?,
            area: None,
        })
    }

    /// A Linux guest's memory: its RAM window, and the queue area at [`GUEST_BASE`],
    /// [`vnet::AREA`] bytes from `area`. Refused as `Windows::new` refuses: the RAM
    /// overlapping the area in guest or host addresses (0xF004), `area` not 256-aligned
    /// (0xF010).
    ///
    /// # Safety
    ///
    /// As [`Window::new`]'s, for `area .. area + vnet::AREA`.
    pub unsafe fn with_area(ram: Window, area: NonNull<u8>) -> Result<Self, RegistrationError> {
        let main = Windows::new(&[ram])?;
        let this = Self {
            main,
            area: Some(area),
        };
        let end = ram.guest_base().saturating_add(ram.len());
        if ram.guest_base() < GUEST_BASE + vnet::AREA && GUEST_BASE < end {
            return Err(RegistrationError::OverlappingWindows);
        }
        if (area.as_ptr().addr() as u64) % iqdio::HOST_ALIGN != GUEST_BASE % iqdio::HOST_ALIGN {
            return Err(RegistrationError::MisalignedWindow);
        }
        let mut ranges = this.host_ranges();
        if let (Some(a), Some(b)) = (ranges.next(), ranges.next())
            && a.0 < b.1
            && b.0 < a.1
        {
            return Err(RegistrationError::OverlappingWindows);
        }
        Ok(this)
    }

    /// The queue area's host address of `[guest, guest + len)`, if it lies in it.
    fn area_translate(&self, guest: u64, len: u64) -> Option<NonNull<u8>> {
        let host = self.area?;
        let off = guest.checked_sub(GUEST_BASE)?;
        let end = off.checked_add(len)?;
        if len == 0 || end > vnet::AREA {
            return None;
        }
        // In bounds (checked above) of the area `with_area`'s contract makes valid.
        NonNull::new(host.as_ptr().wrapping_add(off as usize))
    }

    /// The host ranges `[start, end)` of the window and the area.
    fn host_ranges(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        let window = self.main.windows().iter().filter_map(|w| {
            let host = self.main.translate(w.guest_base(), w.len())?;
            let start = host.as_ptr().addr();
            Some((start, start.saturating_add(usize::try_from(w.len()).ok()?)))
        });
        let area = self.area.map(|a| {
            let start = a.as_ptr().addr();
            (start, start.saturating_add(vnet::AREA as usize))
        });
        window.chain(area)
    }
}

// SAFETY: `translate` returns the window's translation (`Windows`' own, sound by its
// impl) or a range inside the queue area, which `with_area`'s contract makes valid and
// which it refused to let overlap the window in guest or host addresses; neither
// wraps (`Windows` refuses wrapping windows; the area's range was checked against its
// fixed length). `overlaps` compares every host range of both memories.
unsafe impl GuestMemory for HypMemory {
    const EMPTY: Self = Self {
        main: <Windows<1> as GuestMemory>::EMPTY,
        area: None,
    };

    fn translate(&self, guest: u64, len: u64) -> Option<NonNull<u8>> {
        self.main
            .translate(guest, len)
            .or_else(|| self.area_translate(guest, len))
    }

    fn overlaps(&self, other: &Self) -> bool {
        self.host_ranges()
            .any(|(a0, a1)| other.host_ranges().any(|(b0, b1)| a0 < b1 && b0 < a1))
    }
}

/// Makes partition `lpar` known to the fabric with one window (the hypervisor's own
/// partitions: the SIGA measurement's, the self-test's); with IRQs masked.
pub fn add_partition(lpar: LparId, window: Window) -> Result<(), RegistrationError> {
    FABRIC.add_partition_memory(lpar, HypMemory::new(window)?)
}

pub use iqdio_hvc::{MFS, parse_option as parse};

/// The hypervisor's fabric configuration: the MFS above, a 5 ms fallback delay (vCPUs
/// on a loaded host are descheduled for milliseconds at a time under TCG).
pub const CONFIG: FabricConfig = FabricConfig {
    mfs: MFS,
    interrupt_delay_ns: 5_000_000,
    ..FabricConfig::DEFAULT
};

/// Gives the fabric its settings ([`CONFIG`]) and seeds its table hash, before any
/// partition runs. QEMU's cortex-a72 has no
/// random-number instruction (RNDR), so the seed mixes the counter at the moment of the
/// call with its frequency: unknown to the partitions, which start later and cannot
/// read the hypervisor's memory, though not strong. A hypervisor on real hardware takes
/// its entropy source instead.
pub fn seed_fabric() {
    let t = board::ticks();
    let seed = [
        t.rotate_left(17) ^ 0x6a09_e667_f3bc_c908,
        t.wrapping_mul(board::frequency() | 1) ^ 0xbb67_ae85_84ca_a73b,
    ];
    let config = FabricConfig {
        hash_seed: seed,
        ..CONFIG
    };
    if let Err(e) = masked(|| FABRIC.set_config(config)) {
        defmt::error!("fabric: settings refused: {}", defmt::Debug2Format(&e));
    }
}

/// The interrupt cookie the hypervisor gives each of `lpar`'s queue sets at establish:
/// the core that runs the partition (LPAR ids are core numbers here), where the SGI
/// goes; that core injects [`vgic::ADAPTER_VINTID`]. The fabric hands it back in every
/// interrupt target, so raising needs no lookup.
pub const fn interrupt_cookie(lpar: LparId) -> u64 {
    lpar as u64
}

/// The hypervisor as the fabric's platform: an interrupt is a GICv3 SGI to the
/// receiver's core (the queue set's cookie, [`interrupt_cookie`]), which injects a
/// virtual IRQ into its partition ([`vgic::partition_interrupt`]); the clock is the
/// generic timer.
pub struct HypPlatform;

impl Platform for HypPlatform {
    fn raise_interrupt(&self, target: InterruptTarget) -> InterruptDelivery {
        // The cookie names the core; one without a core (a partition of the
        // hypervisor's own, such as the SIGA measurement's) has nobody to interrupt:
        // dropped, and counted so. No panic path: this runs inside a partition's SIGA.
        match usize::try_from(target.cookie) {
            Ok(core) if core < board::cores() => {
                board::gic::send_sgi_raw(core, board::gic::PARTITION_SGI);
                InterruptDelivery::Delivered
            }
            _ => InterruptDelivery::Dropped,
        }
    }

    fn now_ns(&self) -> u64 {
        board::now_ns()
    }

    /// DAIF.I tells. A partition's trap enters the fabric with IRQs masked (as every
    /// exception to EL2 does); the hypervisor's own calls go through [`masked`].
    fn context(&self) -> CallContext {
        if board::interrupts_enabled() {
            CallContext::Interruptible
        } else {
            CallContext::Masked
        }
    }
}

/// Runs a fabric entry of the hypervisor's own code with IRQs masked on this core, as
/// the fabric's execution contract asks (a trap from a partition is masked already).
pub fn masked<R>(f: impl FnOnce() -> R) -> R {
    critical_section::with(|_| f())
}

/// The fabric: a static of the hypervisor, reached by partitions only through HVC.
///
/// Built with the default settings, which the fabric stores as zero bytes, so the
/// static is all-zero and takes no room in the image; [`seed_fabric`] gives it
/// [`CONFIG`] and a boot-time seed before any partition runs.
pub static FABRIC: HypFabric = Fabric::new(HypPlatform, FabricConfig::DEFAULT);

/// The partition program, embedded at build time (`IQDIO_GUEST_ELF`, see build.rs):
/// `static GUEST_IMAGE: &[u8] = iqdio_hyp::guest_image!();` in an image's bin.
///
/// A bin includes it, not this library: a program built with other settings
/// (`IQDIO_FRAMES`, `IQDIO_CQ`) then rebuilds only the bin that embeds it, not the
/// library under it (each test boot's image costs seconds less).
#[macro_export]
macro_rules! guest_image {
    () => {
        include_bytes!(env!("IQDIO_GUEST_IMAGE"))
    };
}

/// How a partition ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It called exit: its status (see `iqdio_hvc::ExitStatus`) and four results.
    Exited {
        /// x1 of the exit call.
        status: u64,
        /// x2-x6 of the exit call.
        results: [u64; 5],
    },
    /// The hypervisor stopped it (a fault, an unknown HVC, an SMC, ...).
    Stopped,
}

/// Why a partition could not be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartError {
    /// The embedded program is not a loadable ELF for the window.
    BadImage(&'static str),
    /// The fabric refused the partition's window.
    Fabric(u16),
    /// The core has no partition window.
    NoWindow,
}

/// Per-core state of the partition the core runs.
struct CoreVm {
    regs: UnsafeCell<VcpuRegs>,
    outcome: UnsafeCell<Outcome>,
}

/// Per-core slots.
struct CoreVms([CoreVm; MAX_CORES]);

// SAFETY: slot N is only touched on core N: by `run_partition` before and after
// `run_vcpu`, and by the trap handler while the partition runs (never both at once,
// since the trap handler runs on the same core inside `run_vcpu`).
unsafe impl Sync for CoreVms {}

static VMS: CoreVms = CoreVms(
    [const {
        CoreVm {
            regs: UnsafeCell::new(VcpuRegs::new()),
            outcome: UnsafeCell::new(Outcome::Stopped),
        }
    }; MAX_CORES],
);

/// The LPAR id of the partition each core runs, `NONE` when it runs none.
pub(crate) static RUNNING_LPAR: [AtomicU8; MAX_CORES] = [const { AtomicU8::new(NONE) }; MAX_CORES];
pub(crate) const NONE: u8 = u8::MAX;

/// The partition `core` runs, if any.
pub fn running_lpar(core: usize) -> Option<LparId> {
    let lpar = RUNNING_LPAR.get(core)?.load(Ordering::Acquire);
    (lpar != NONE).then_some(lpar)
}

/// What the fabric held for a partition's queue set 0 when the partition exited: its
/// final counters and its memberships (bit g: group g of
/// [`iqdio_hvc::multicast::GROUPS`], [`iqdio_hvc::multicast::BROADCAST_BIT`]: the
/// broadcast domain), as the fabric granted them to its join, leave and broadcast
/// calls. Read by the hypervisor's summaries after the run (the partition has left the
/// fabric by then).
#[derive(Clone, Copy, Debug, Default)]
pub struct ExitRecord {
    /// The counters, if the queue set was established.
    pub counters: Option<CounterSnapshot>,
    /// The membership bits.
    pub memberships: u32,
}

/// Each core's partition's [`ExitRecord`], written by its exit call.
pub static EXITS: [spin::Mutex<Option<ExitRecord>>; MAX_CORES] =
    [const { spin::Mutex::new(None) }; MAX_CORES];

/// Each core's partition's memberships of the multicast scenario's groups and of the
/// broadcast domain (bits as [`ExitRecord::memberships`]), as the fabric granted them.
static MEMBERSHIPS: [AtomicU32; MAX_CORES] = [const { AtomicU32::new(0) }; MAX_CORES];

/// The fabric granted (`on`) or ended a membership of `group` (a multicast address, or
/// [`BROADCAST_GROUP`]) to the partition on `core`'s subchannel `sch` (trap handler,
/// after the fabric's answer). Only subchannel 0 and the scenario's groups are noted.
pub(crate) fn note_membership(core: usize, sch: u16, group: IpAddr, on: bool) {
    use iqdio_hvc::multicast::{BROADCAST_BIT, GROUPS};
    let bit = if group == BROADCAST_GROUP {
        BROADCAST_BIT
    } else {
        match GROUPS.iter().position(|g| *g == group) {
            Some(i) => 1 << i,
            None => return,
        }
    };
    if let (0, Some(m)) = (sch, MEMBERSHIPS.get(core)) {
        if on {
            m.fetch_or(bit, Ordering::Relaxed);
        } else {
            m.fetch_and(!bit, Ordering::Relaxed);
        }
    }
}

/// Records what the fabric holds for the exiting partition: deregisters its queue set
/// 0 for its final counters (it would go with the partition anyway), and keeps its
/// memberships (trap handler, before the partition leaves the fabric).
pub(crate) fn record_exit(core: usize, lpar: LparId) {
    let record = ExitRecord {
        counters: FABRIC.deregister_queue_set(lpar, 0).ok(),
        memberships: MEMBERSHIPS
            .get(core)
            .map_or(0, |m| m.swap(0, Ordering::Relaxed)),
    };
    if let Some(slot) = EXITS.get(core) {
        *slot.lock() = Some(record);
    }
}

/// How often a core that runs a partition gives the fabric its delay tick
/// ([`Fabric::expire_delays`]): interrupts whose delay ran out are raised, and buffers
/// pending for a receiver that has room again (SIGA WRITEQ) are delivered and
/// completed, even when every sender has fallen silent.
pub const TICK_NS: u64 = 1_000_000;

/// When each core's timer next fires for the tick (ns, [`board::now_ns`]).
static NEXT_TICK: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];
/// When the fabric's next tick is due, for all cores: the first core whose timer fires
/// after it takes the tick (one `expire_delays` per period for the whole machine, not
/// one per core: each holds a sender's queue while it delivers, and a SIGA that finds
/// it held is busy).
static FABRIC_TICK: AtomicU64 = AtomicU64::new(0);

/// The fabric's delay tick for the partition on `core`, called from its trap after an
/// interrupt: IRQs are masked and the trap interrupted the partition, never a fabric
/// entry (the hypervisor's own fabric calls run masked), so this is thread context as
/// the fabric's execution contract means it, and `expire_delays` may wait for locks.
/// The core's EL1 physical timer (the board's wake-up timer, idle while the core runs
/// a partition) is armed for the next tick, so the tick comes while the partition
/// sleeps in WFI too.
pub(crate) fn tick(core: usize) {
    let Some(next) = NEXT_TICK.get(core) else {
        return;
    };
    let now = board::now_ns();
    if now >= next.load(Ordering::Relaxed) {
        next.store(now + TICK_NS, Ordering::Relaxed);
        let due = FABRIC_TICK.load(Ordering::Relaxed);
        if now >= due
            && FABRIC_TICK
                .compare_exchange(due, now + TICK_NS, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            FABRIC.expire_delays();
        }
    }
    board::arm_wakeup(next.load(Ordering::Relaxed));
}

/// Records how the partition on this core ended (trap handler, before [`board::LEAVE`]).
pub(crate) fn set_outcome(core: usize, outcome: Outcome) {
    // SAFETY: this core's slot, see `CoreVms`.
    unsafe { *VMS.0[core].outcome.get() = outcome };
}

/// The partition's VMID: its LPAR id + 1 (VMID 0 is left unused).
pub const fn vmid(lpar: LparId) -> u16 {
    lpar as u16 + 1
}

/// SPSR for the first entry: EL1h, DAIF masked (the program unmasks what it handles).
pub(crate) const SPSR_EL1H_MASKED: u64 = 0x3c5;
/// SCTLR_EL1 for the first entry: MMU and caches off, RES1 bits only (Arm ARM
/// D17.2.118: bits 29, 28, 23, 22, 20, 11); the program turns its own MMU on.
pub(crate) const SCTLR_EL1_RESET: u64 = 0x30d0_0800;

/// Runs the partition program on this core as partition `core` (LPAR id = core) until
/// it exits or is stopped, with `args` in x0-x3 at its entry. Call from a job on each
/// core (core N runs partition N); the core's own stage-2 tables, VMID and window
/// are used, and the partition is removed from the fabric when it ends.
pub fn run_partition(image: &[u8], args: [u64; 4]) -> Result<Outcome, StartError> {
    let core = board::core_id();
    if core >= MAX_CORES {
        return Err(StartError::NoWindow);
    }
    let lpar = core as LparId;
    let (host, len) = board::partition_window(core);
    let host = NonNull::new(host).ok_or(StartError::NoWindow)?;
    // SAFETY: the window is this core's own: mapped normal memory, disjoint from the
    // hypervisor and from every other window, and nothing else uses it while the
    // partition is not running.
    unsafe { core::ptr::write_bytes(host.as_ptr(), 0, len) };
    // SAFETY: as above; `load` writes only inside `len` bytes.
    let entry = unsafe { elf::load(image, host, len, GUEST_BASE) }.map_err(StartError::BadImage)?;
    // SAFETY: the window outlives the partition's registration (it is removed below,
    // before the window is used again), and Rust code does not reference it otherwise.
    let window = unsafe { Window::new(GUEST_BASE, host, len) };
    masked(|| add_partition(lpar, window)).map_err(|e| StartError::Fabric(e.code()))?;
    // A new partition: no memberships yet, nothing recorded for this run.
    MEMBERSHIPS[core].store(0, Ordering::Relaxed);
    *EXITS[core].lock() = None;
    let root = stage2::build(core, host.as_ptr().addr() as u64, len);
    // SAFETY: this core's slot (see `CoreVms`); the partition is not running.
    let regs = unsafe { &mut *VMS.0[core].regs.get() };
    *regs = VcpuRegs::new();
    regs.x[..4].copy_from_slice(&args);
    regs.elr = entry;
    regs.spsr = SPSR_EL1H_MASKED;
    set_outcome(core, Outcome::Stopped);
    defmt::info!(
        "partition {} at EL1, VMID {}: window IPA {=u64:#x}..{=u64:#x} -> PA {=u64:#x}, entry {=u64:#x}",
        lpar,
        vmid(lpar),
        GUEST_BASE,
        GUEST_BASE + len as u64,
        host.as_ptr().addr() as u64,
        entry
    );
    vgic::clear();
    RUNNING_LPAR[core].store(lpar, Ordering::Release);
    NEXT_TICK[core].store(board::now_ns() + TICK_NS, Ordering::Relaxed);
    board::arm_wakeup(board::now_ns() + TICK_NS);
    stage2::activate(vmid(lpar), root);
    // SAFETY: the stage-2 tables, VMID, HCR_EL2 and EL1 reset state are set for this
    // partition; called from a job (SP_EL0, not in an exception handler); `regs` is
    // this core's slot, used by nothing else while the partition runs.
    unsafe {
        set_sctlr_el1(SCTLR_EL1_RESET);
        board::run_vcpu(regs);
    }
    stage2::deactivate();
    board::disarm_wakeup();
    RUNNING_LPAR[core].store(NONE, Ordering::Release);
    vgic::clear();
    // A partition that exited or was stopped already left the fabric; this catches
    // nothing else, but makes sure its window is free for the next run.
    let _ = masked(|| FABRIC.remove_partition(lpar));
    // SAFETY: this core's slot; the partition is not running any more.
    Ok(unsafe { *VMS.0[core].outcome.get() })
}

/// # Safety
///
/// Only while no partition runs on this core.
pub(crate) unsafe fn set_sctlr_el1(value: u64) {
    // SAFETY: the caller guarantees EL1 is not running; EL2 does not use SCTLR_EL1.
    unsafe {
        core::arch::asm!("msr sctlr_el1, {}", "isb", in(reg) value, options(nostack, preserves_flags))
    };
}

/// The phases of a demo: a barrier across the partitions that take part in it.
pub mod barrier {
    use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    use crate::board::MAX_CORES;

    /// (arrived, members still running, generation)
    static STATE: spin::Mutex<(u64, u64, u64)> = spin::Mutex::new((0, 0, 0));
    /// The generation, published on release for the waiters.
    static GENERATION: AtomicU64 = AtomicU64::new(0);
    /// Which cores' partitions take part, and the hypervisor itself ([`HYPERVISOR`]).
    static MEMBERS: [AtomicBool; MAX_CORES + 1] = [const { AtomicBool::new(false) }; MAX_CORES + 1];

    /// The member number of the hypervisor's own code (a job that must pass the same
    /// barriers as the partitions, e.g. to act between two phases).
    pub const HYPERVISOR: usize = MAX_CORES;

    /// Starts a run in which the partitions of `members` (bit N = core N) take part,
    /// and the hypervisor's code if bit [`HYPERVISOR`] is set.
    pub fn start(members: u32) {
        let mut st = STATE.lock();
        st.0 = 0;
        st.1 = 0;
        for (core, m) in MEMBERS.iter().enumerate() {
            let member = members & (1 << core) != 0;
            m.store(member, Ordering::Relaxed);
            st.1 += u64::from(member);
        }
    }

    /// Barriers passed so far.
    pub fn generation() -> u64 {
        GENERATION.load(Ordering::Acquire)
    }

    fn release(st: &mut (u64, u64, u64)) {
        st.0 = 0;
        st.2 += 1;
        // Release pairs with the Acquire loads of the waiters.
        GENERATION.store(st.2, Ordering::Release);
        // The waiters sleep in WFI (a spinning vCPU would take host time from the ones
        // still working): ring every other core's doorbell.
        let me = crate::board::core_id();
        for core in (0..crate::board::cores()).filter(|&c| c != me) {
            crate::board::gic::send_sgi_raw(core, crate::board::gic::DOORBELL_SGI);
        }
    }

    /// The partition on `core` (or [`HYPERVISOR`]) arrives; returns, once every member
    /// still running arrived, how many are running. A non-member passes at once.
    pub fn arrive(core: usize) -> u64 {
        if !MEMBERS.get(core).is_some_and(|m| m.load(Ordering::Relaxed)) {
            return STATE.lock().1;
        }
        let mine = {
            let mut st = STATE.lock();
            let mine = st.2;
            st.0 += 1;
            if st.0 >= st.1 {
                release(&mut st);
            }
            mine
        };
        // No lost wake-up: a doorbell rung between the check and WFI stays pending,
        // and WFI returns at once for a pending interrupt, masked or not.
        while GENERATION.load(Ordering::Acquire) == mine {
            // SAFETY: WFI only suspends this core until an interrupt.
            unsafe { core::arch::asm!("wfi", options(nomem, nostack, preserves_flags)) };
        }
        STATE.lock().1
    }

    /// The partition on `core` stopped or exited: the others no longer wait for it.
    pub fn leave(core: usize) {
        if !MEMBERS
            .get(core)
            .is_some_and(|m| m.swap(false, Ordering::Relaxed))
        {
            return;
        }
        let mut st = STATE.lock();
        st.1 = st.1.saturating_sub(1);
        if st.0 > 0 && st.0 >= st.1 {
            release(&mut st);
        }
    }
}
