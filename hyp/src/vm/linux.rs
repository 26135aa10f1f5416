//! Linux guests: a stock arm64 kernel as a partition, unmodified, at EL1 behind its own
//! stage 2, with what it needs emulated here at EL2 and nothing of the machine passed
//! through.
//!
//! The xtask places the kernel's Image, initramfs and device tree in the guest's
//! physical window with QEMU's `-device loader` and tells the image at build time where
//! (`IQDIO_LINUX_*`, see [`Config`]); the hypervisor never reads or writes that memory.
//! Core N enters the kernel as Linux's arm64 boot protocol asks
//! (`Documentation/arch/arm64/booting.rst`): MMU off, x0 = the tree's IPA, x1-x3 = 0,
//! EL1h with DAIF masked.
//!
//! What the guest sees (its device tree says the same, and nothing more):
//!
//! ```text
//! IPA 0x0800_0000  GICv3 distributor     unmapped: stage-2 fault -> vdev::vgic
//! IPA 0x080A_0000  its redistributor     unmapped: stage-2 fault -> vdev::vgic
//! IPA 0x0900_0000  PL011                 unmapped: stage-2 fault -> vdev::vpl011,
//!                                        printed `partition N: <line>`
//! IPA 0x0A00_3E00  virtio-mmio (512 B)   unmapped: stage-2 fault -> a
//!                                        vdev::virtio_net::VirtioNet, SPI 47
//! IPA 0x4000_0000  RAM, 512 MiB          2 MiB blocks -> its physical window
//! anything else    nothing: a load or store there is reflected into the guest as a
//!                  synchronous external abort (a process gets SIGBUS, as under KVM)
//! ```
//!
//! Its interrupts: the virtual timer's PPI 27 arrives at EL2 as the physical PPI 27
//! (enabled on this core's redistributor only while the guest runs); EL2 masks the timer
//! (CNTV_CTL_EL0.IMASK), ends the physical interrupt and makes vINTID 27 pending in the
//! model, which hands it to a list register. Linux's timer handler reprograms the timer,
//! which clears IMASK again (`arch_timer_set_next_event`), so no maintenance interrupt
//! is needed. PSCI over HVC goes to `vdev::psci`; SYSTEM_OFF ends the guest
//! (`partition N: linux powered off`), SYSTEM_RESET ends it too (`linux reset`, or
//! `linux panicked` when its console said `Kernel panic`): a restart would need a
//! pristine copy of the Image, which the running kernel has overwritten.
//!
//! **The network device** (issue 16): a virtio-net device over MMIO (`vdev::virtio_net`,
//! virtio 1.2 §4.2 and §5.1) with MAC `02:49:51:44:00:<LPAR id>` ("IQD", locally
//! administered) and the MTU the fabric's MFS gives ([`vnet_mtu`]). Its rings are read
//! and written through [`GuestRam`], the guest's window as the hypervisor maps it
//! (`board::layout::LINUX_WINDOWS`), every access checked against the window. Its
//! interrupt is SPI 47 (INTID 79), made pending in the vGIC whenever the device asks for
//! one. **The rings are the guest's layer-2 queue set on the fabric** ([`super::vnet`]):
//! the guest is a partition of the fabric whose memory is its RAM and a queue area of
//! hypervisor memory its stage 2 never maps; a transmit notification becomes output
//! SBALs whose elements are the frame's own buffers behind a `qeth_hdr_layer2` the
//! hypervisor writes, and one SIGA for the guest; its posted receive buffers are the
//! input queue's SBALs, which the fabric fills with one copy per frame, and its SGI
//! makes the guest's core take them and raise SPI 47. The closing line counts both
//! ways (`partition N: virtio-net ...`).

use core::cell::UnsafeCell;
use core::sync::atomic::{AtomicBool, Ordering};

use iqdio_vdev::esr::{self, AbortKind, GuestContext, MmioAccess, Trap};
use iqdio_vdev::psci::{self, Psci};
use iqdio_vdev::vgic::Vgic;
use iqdio_vdev::virtio_net::{self as vnet, Effect, Queue, VirtioNet};
use iqdio_vdev::vpl011::Pl011;

use super::vgic::{LIST_REGISTERS, empty_list_registers, read_lr, write_lr};
use super::vnet::{FabricCounts, Wire, WireCounts};
use super::window_ram::WindowRam;
use super::{RUNNING_LPAR, SCTLR_EL1_RESET, SPSR_EL1H_MASKED, parse, set_sctlr_el1, stage2, vmid};
use crate::board::{self, KIND_IRQ, KIND_SYNC, LEAVE, MAX_CORES, RESUME, VcpuRegs};

/// The virtual timer's PPI (Arm ARM D11.2.4; the guest's tree names PPI 11 = INTID 27).
pub const VTIMER_INTID: u32 = 27;

/// HCR_EL2.APK (bit 40) and API (bit 41): the guest's pointer-authentication key
/// registers and instructions do not trap. Debian's kernel writes APIAKeyLo_EL1 0.66 s
/// into its boot; without these it traps (EC 0x18) (LINUX-GUESTS.md, checked).
const HCR_APK_API: u64 = 1 << 40 | 1 << 41;

/// HCR_EL2.TWI (bit 13): the guest's WFI traps, so an idle guest comes back to EL2
/// before it sleeps ([`idle`]). WFE does not trap (spin-lock waits stay native).
const HCR_TWI: u64 = 1 << 13;

/// CNTV_CTL_EL0.ENABLE and ISTATUS.
const CNTV_ENABLE: u64 = 1 << 0;
const CNTV_ISTATUS: u64 = 1 << 2;

/// The guest's MPIDR (VMPIDR_EL2): affinity 0 with the RES1 bit 31, as its tree's one
/// CPU node (`reg = <0>`) and its redistributor's GICR_TYPER say.
const GUEST_MPIDR: u64 = 1 << 31;

/// CNTV_CTL_EL0.IMASK.
const CNTV_IMASK: u64 = 1 << 1;

/// How long after the `idle` mark the guest's console accesses still belong to the
/// mark's own line (see [`Report::idle_traps`]).
const IDLE_SETTLE_NS: u64 = 200_000_000;

/// Console line length: longer lines are printed in pieces.
const LINE: usize = 200;

/// The guest's devices, by IPA (xtask/src/linux/dtb.rs writes the same into its tree).
const GICD: (u64, u64) = (0x0800_0000, 0x1_0000);
const GICR: (u64, u64) = (0x080A_0000, 0x2_0000);
const UART: (u64, u64) = (0x0900_0000, 0x1000);
/// The virtio-mmio network device: QEMU's `virt` slot for its first virtio device
/// (hw/arm/virt.c: the highest of its 32 transports), as xtask's `QEMU_FIRST_VIRTIO`.
const VIRTIO: (u64, u64) = (0x0A00_3E00, vnet::WINDOW_SIZE);
/// The device's interrupt: SPI 47 (the tree's `interrupts = <0 47 1>`).
pub const VIRTIO_INTID: u32 = 32 + 47;

/// The MTU the guest's device offers: the fabric's, MFS less 8 KiB (57344 with the
/// default 64 KiB), as Linux's qeth gives a HiperSockets device
/// (`qeth_get_mtu_outof_framesize`, `drivers/s390/net/qeth_core_main.c`), capped at
/// 65535 (the config field is 16 bits). What a frame needs beyond it (a tagged
/// Ethernet header, 18 bytes, and the 32-byte `qeth_hdr_layer2`) fits the MFS, and a
/// whole frame fits the receive buffers Linux's `virtio_net` posts for it: with an MTU
/// above 1500 it posts "big packets" (`add_recvbuf_big`, `drivers/net/virtio_net.c`),
/// a 12-byte header descriptor, the rest of that page (4080 bytes) and whole pages,
/// of which one input SBAL takes 15 elements after the header slot: 61 424 bytes,
/// more than 57344 + 18. An MTU closer to the MFS would make the largest frames too big
/// for the receiver's buffer, refused (0x04) on every try.
pub const fn vnet_mtu() -> u16 {
    let mtu = super::MFS.mtu();
    if mtu > u16::MAX as usize {
        u16::MAX
    } else {
        mtu as u16
    }
}

/// The MAC of the guest with LPAR id `lpar`: `02:49:51:44:00:<lpar>`, a locally
/// administered unicast address ("IQD").
pub const fn vnet_mac(lpar: u8) -> [u8; 6] {
    [0x02, b'I', b'Q', b'D', 0, lpar]
}

/// Where the xtask put the guests, given at build time (decimal numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Linux guests in this run (`IQDIO_LINUX_GUESTS`); they run on the last cores.
    pub guests: usize,
    /// The IPA of the guest's RAM (`IQDIO_LINUX_RAM`).
    pub ram_ipa: u64,
    /// Its size in MiB (`IQDIO_LINUX_RAM_MIB`).
    pub ram_mib: u64,
    /// The physical base of guest 0's window (`IQDIO_LINUX_PHYS`); guest k's is
    /// `ram_mib` MiB further per k.
    pub phys: u64,
    /// The kernel's entry IPA (`IQDIO_LINUX_ENTRY`).
    pub entry: u64,
    /// The device tree's IPA, x0 at entry (`IQDIO_LINUX_DTB`).
    pub dtb: u64,
}

/// This build's configuration.
pub const CONFIG: Config = Config {
    guests: parse(option_env!("IQDIO_LINUX_GUESTS"), 0) as usize,
    ram_ipa: parse(option_env!("IQDIO_LINUX_RAM"), 0x4000_0000) as u64,
    ram_mib: parse(option_env!("IQDIO_LINUX_RAM_MIB"), 512) as u64,
    phys: parse(option_env!("IQDIO_LINUX_PHYS"), 0x8000_0000) as u64,
    entry: parse(option_env!("IQDIO_LINUX_ENTRY"), 0x4000_0000) as u64,
    dtb: parse(option_env!("IQDIO_LINUX_DTB"), 0x5FE0_0000) as u64,
};

/// How a Linux guest ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// PSCI SYSTEM_OFF.
    PoweredOff,
    /// PSCI SYSTEM_RESET after its console said `Kernel panic`.
    Panicked,
    /// PSCI SYSTEM_RESET otherwise.
    Reset,
    /// The hypervisor stopped it: a trap it has no answer for.
    Stopped(&'static str),
}

/// Traps of one guest by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traps {
    /// Emulated accesses to the distributor and redistributor.
    pub gic: u64,
    /// Emulated accesses to the UART.
    pub uart: u64,
    /// Emulated accesses to the virtio-net device.
    pub virtio: u64,
    /// HVCs (PSCI, SMCCC).
    pub hvc: u64,
    /// Virtual timer interrupts (PPI 27 at EL2).
    pub timer: u64,
    /// Other physical interrupts taken while the guest ran.
    pub irq: u64,
    /// Aborts reflected into the guest.
    pub aborts: u64,
    /// WFIs (the guest going idle, trapped to check its wake-up, see [`idle`]).
    pub wfi: u64,
    /// Anything else.
    pub other: u64,
}

/// What a Linux guest did, for the run's summary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// How it ended.
    pub end: End,
    /// Its init reported `uname -r`.
    pub booted: bool,
    /// The kernel version it reported.
    pub version: [u8; 64],
    /// Length of `version`.
    pub version_len: usize,
    /// Nanoseconds from the ERET into the kernel to its `Run /init` line, if seen.
    pub to_init_ns: Option<u64>,
    /// Traps by cause over the whole run.
    pub traps: Traps,
    /// Nanoseconds the guest ran.
    pub ran_ns: u64,
    /// Traps by cause while idle: from its `iqdio-guest: idle` mark (the workload then
    /// sleeps) to its next console output.
    pub idle_traps: Traps,
    /// Nanoseconds of that idle span.
    pub idle_ns: u64,
    /// What its network device did (all zero without one).
    pub net: NetReport,
    /// Times an idle guest's expired virtual timer was found masked with no tick on its
    /// way and the tick was raised again ([`idle`]).
    pub ticks_reraised: u64,
}

impl Report {
    /// The reported kernel version (empty when none).
    pub fn version(&self) -> &str {
        core::str::from_utf8(&self.version[..self.version_len]).unwrap_or("?")
    }
}

/// The guest's RAM as the hypervisor sees it: IPA `[ipa, ipa + size)` is physical
/// `[pa, pa + size)`, mapped in the hypervisor's own tables (`board::layout::LINUX_WINDOWS`),
/// every access checked against the window ([`WindowRam`]).
pub type GuestRam = WindowRam;

/// The window of Linux guest `index` in this build, if the hypervisor maps it (the
/// mapped span is exactly the build's guests' windows, so `index` past the last guest
/// has none).
pub fn guest_ram(index: usize) -> Option<GuestRam> {
    let size = CONFIG.ram_mib << 20;
    let pa = CONFIG.phys.checked_add((index as u64).checked_mul(size)?)?;
    let (start, end) = crate::board::layout::LINUX_WINDOWS;
    // SAFETY: inside the Linux windows the hypervisor maps as normal memory for the
    // whole run (checked here); this guest's own, holding nothing of the hypervisor's,
    // and touched by it only through this type's raw accesses and the fabric's.
    (pa >= start as u64 && pa.checked_add(size)? <= end as u64)
        .then(|| unsafe { WindowRam::new(CONFIG.ram_ipa, pa, size) })
}

/// What the guest's network device did, for its closing line and the run's summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetReport {
    /// Times the driver set DRIVER_OK (the device went live).
    pub live: u64,
    /// Interrupts made pending in the vGIC.
    pub interrupts: u64,
    /// Its queue set on the fabric: frames sent, refused, delivered, ...
    pub wire: WireCounts,
    /// The fabric's own counters of its queue set, over every establishment:
    /// `frames_received` are the copies the fabric made into its receive buffers.
    pub fabric: FabricCounts,
    /// Ring violations the device model counted (DEVICE_NEEDS_RESET).
    pub bad_rings: u64,
}

struct Net {
    dev: VirtioNet,
    ram: GuestRam,
    wire: Wire,
    report: NetReport,
}

impl Net {
    /// Raises the device's interrupt for a new reason (a completion asked for one, or
    /// InterruptStatus went from clear to set since `before`): one edge for the vGIC,
    /// which latches it. A ring violation withdraws the queue set (no frame may land in
    /// buffers the driver takes back at its reset).
    fn settle(&mut self, vgic: &mut Vgic, before: bool, completion_wants_irq: bool) {
        if self.dev.status() & vnet::S_DEVICE_NEEDS_RESET != 0 {
            self.wire.withdraw(true);
        }
        if completion_wants_irq || (!before && self.dev.interrupt_pending()) {
            self.report.interrupts += 1;
            let _ = vgic.raise(VIRTIO_INTID);
        }
    }
}

struct Guest {
    lpar: u8,
    vgic: Vgic,
    uart: Pl011<LINE>,
    psci: Psci,
    /// The network device, when the guest's window is mapped for it.
    net: Option<Net>,
    /// What this core wrote into each list register, to retire it once emptied.
    lrs: [u64; LIST_REGISTERS],
    panicking: bool,
    report: Report,
    start_ns: u64,
    idle_from: Option<(u64, Traps)>,
    idle_to: Option<(u64, Traps)>,
}

impl Guest {
    fn new(lpar: u8, index: usize) -> Self {
        let net = guest_ram(index).and_then(|ram| {
            let dev = VirtioNet::new(vnet_mac(lpar), vnet_mtu()).ok()?;
            let wire = Wire::new(lpar, usize::from(lpar), &ram)?;
            Some(Net {
                dev,
                ram,
                wire,
                report: NetReport::default(),
            })
        });
        Self {
            lpar,
            vgic: Vgic::new(GUEST_MPIDR),
            uart: Pl011::new(),
            psci: Psci::new(GUEST_MPIDR),
            net,
            lrs: [0; LIST_REGISTERS],
            panicking: false,
            report: Report {
                end: End::Stopped("did not run"),
                booted: false,
                version: [0; 64],
                version_len: 0,
                to_init_ns: None,
                traps: Traps::default(),
                ran_ns: 0,
                idle_traps: Traps::default(),
                idle_ns: 0,
                net: NetReport::default(),
                ticks_reraised: 0,
            },
            start_ns: 0,
            idle_from: None,
            idle_to: None,
        }
    }
}

struct Slots([UnsafeCell<Option<Guest>>; MAX_CORES]);

// SAFETY: slot N is only touched on core N: by `run` before and after the guest runs,
// and by its traps and IRQ handler while it runs, all with IRQs masked on that core
// (so never two at once).
unsafe impl Sync for Slots {}

static GUESTS: Slots = Slots([const { UnsafeCell::new(None) }; MAX_CORES]);
/// Set while core N runs a Linux guest; read by the trap entry and the IRQ handler of
/// the same core only, so Relaxed is enough (no other memory is published through it).
static LINUX_ON: [AtomicBool; MAX_CORES] = [const { AtomicBool::new(false) }; MAX_CORES];

/// Whether `core` runs a Linux guest now.
pub fn runs_linux(core: usize) -> bool {
    LINUX_ON
        .get(core)
        .is_some_and(|f| f.load(Ordering::Relaxed))
}

/// This core's guest.
///
/// # Safety
///
/// Called on `core` itself with IRQs masked, and the returned reference dropped before
/// any other call of this function on the same core (see `Slots`).
unsafe fn guest(core: usize) -> Option<&'static mut Guest> {
    // SAFETY: per the caller's promise no other reference to this slot is live.
    unsafe { (*GUESTS.0.get(core)?.get()).as_mut() }
}

fn sysreg_write(f: impl FnOnce()) {
    f();
    // SAFETY: a barrier only orders.
    unsafe { core::arch::asm!("isb", options(nomem, nostack, preserves_flags)) };
}

/// Runs Linux guest `index` (0-based among the run's Linux guests) on this core as
/// partition `core`, until it powers off, resets, or is stopped.
pub fn run(index: usize) -> Report {
    let core = board::core_id();
    let lpar = core as u8;
    let window = (CONFIG.ram_mib << 20) as usize;
    let pa = CONFIG.phys + index as u64 * (CONFIG.ram_mib << 20);
    // SAFETY: this core's slot, nothing runs on it yet (see `Slots`).
    unsafe { *GUESTS.0[core].get() = Some(Guest::new(lpar, index)) };
    let root = stage2::build_at(core, CONFIG.ram_ipa, pa, window);
    let mut regs = VcpuRegs::new();
    regs.x[0] = CONFIG.dtb;
    regs.elr = CONFIG.entry;
    regs.spsr = SPSR_EL1H_MASKED;
    defmt::info!(
        "partition {} (linux) at EL1, VMID {}: RAM IPA {=u64:#x}..{=u64:#x} -> PA {=u64:#x}, entry {=u64:#x}, tree {=u64:#x}",
        lpar,
        vmid(lpar),
        CONFIG.ram_ipa,
        CONFIG.ram_ipa + window as u64,
        pa,
        CONFIG.entry,
        CONFIG.dtb
    );
    super::vgic::clear();
    // SAFETY: EL1 and EL2 registers of this core while no guest runs on it: the guest
    // sees MPIDR affinity 0 (its tree's CPU), its virtual timer starts off.
    unsafe {
        core::arch::asm!(
            "msr vmpidr_el2, {m}",
            "msr cntv_ctl_el0, xzr",
            "isb",
            m = in(reg) GUEST_MPIDR,
            options(nostack, preserves_flags),
        )
    };
    RUNNING_LPAR[core].store(lpar, Ordering::Release);
    LINUX_ON[core].store(true, Ordering::Relaxed);
    board::gic::set_ppi_enabled(core, VTIMER_INTID, true);
    stage2::activate_with(vmid(lpar), root, HCR_APK_API | HCR_TWI);
    critical_section::with(|_| {
        // SAFETY: on this core, IRQs masked; the reference ends with the closure.
        if let Some(g) = unsafe { guest(core) } {
            g.start_ns = board::now_ns();
            // On the fabric from here on; the queue set comes at DRIVER_OK.
            if let Some(net) = g.net.as_mut()
                && let Err(e) = net.wire.attach()
            {
                defmt::error!(
                    "partition {}: virtio-net: the fabric refused the partition: {=u16:#x}",
                    lpar,
                    e.code()
                );
            }
        }
    });
    // SAFETY: stage 2, VMID, HCR_EL2 and the EL1 reset state are set for this guest; a
    // job on SP_EL0; `regs` is used by nothing else while the guest runs.
    unsafe {
        set_sctlr_el1(SCTLR_EL1_RESET);
        board::run_vcpu(&mut regs);
    }
    let end_ns = board::now_ns();
    stage2::deactivate();
    board::gic::set_ppi_enabled(core, VTIMER_INTID, false);
    LINUX_ON[core].store(false, Ordering::Relaxed);
    RUNNING_LPAR[core].store(super::NONE, Ordering::Release);
    super::vgic::clear();
    // SAFETY: as above: the guest no longer runs; the timer it left running is stopped
    // and this core's own identity comes back.
    unsafe {
        core::arch::asm!(
            "msr cntv_ctl_el0, xzr",
            "mrs {t}, mpidr_el1",
            "msr vmpidr_el2, {t}",
            "isb",
            t = out(reg) _,
            options(nostack, preserves_flags),
        )
    };
    critical_section::with(|_| {
        // SAFETY: on this core, IRQs masked; the guest no longer runs.
        let slot = unsafe { &mut *GUESTS.0[core].get() };
        let Some(mut g) = slot.take() else {
            return Report {
                end: End::Stopped("lost its state"),
                ..Guest::new(lpar, usize::MAX).report
            };
        };
        if let Some(net) = g.net.as_mut() {
            net.wire.detach();
            g.report.net = net_report(net);
        }
        let mut report = g.report;
        report.ran_ns = end_ns.saturating_sub(g.start_ns);
        if let Some((from, traps)) = g.idle_from {
            let (to, to_traps) = g.idle_to.unwrap_or((end_ns, report.traps));
            report.idle_ns = to.saturating_sub(from);
            report.idle_traps = diff(to_traps, traps);
        }
        report
    })
}

fn diff(a: Traps, b: Traps) -> Traps {
    Traps {
        gic: a.gic.saturating_sub(b.gic),
        uart: a.uart.saturating_sub(b.uart),
        virtio: a.virtio.saturating_sub(b.virtio),
        hvc: a.hvc.saturating_sub(b.hvc),
        timer: a.timer.saturating_sub(b.timer),
        irq: a.irq.saturating_sub(b.irq),
        aborts: a.aborts.saturating_sub(b.aborts),
        wfi: a.wfi.saturating_sub(b.wfi),
        other: a.other.saturating_sub(b.other),
    }
}

/// PPI 27 at EL2 (IRQ context, this core): the guest's virtual timer fired. Mask it
/// (the physical PPI is level-sensitive: unmasked, it would re-enter EL2 at once) and
/// make vINTID 27 pending for the guest.
pub(crate) fn vtimer_interrupt(core: usize) {
    // SAFETY: CNTV_CTL_EL0 is the running guest's virtual timer (HCR_EL2.E2H = 0); a
    // read-modify-write of IMASK only, with IRQs masked.
    unsafe {
        core::arch::asm!(
            "mrs {t}, cntv_ctl_el0",
            "orr {t}, {t}, #{imask}",
            "msr cntv_ctl_el0, {t}",
            "isb",
            t = out(reg) _,
            imask = const CNTV_IMASK,
            options(nostack, preserves_flags),
        )
    };
    // SAFETY: on this core, IRQ context (masked); no other reference is live: the trap
    // path takes its reference only after `handle_irq` returned.
    if let Some(g) = unsafe { guest(core) } {
        g.report.traps.timer += 1;
        let _ = g.vgic.raise(VTIMER_INTID);
    }
}

/// The trap entry for a Linux guest (`vm::trap::guest_exit` sends it here).
pub(crate) fn guest_exit(core: usize, regs: &mut VcpuRegs, kind: u64) -> u64 {
    let leave = match kind {
        KIND_IRQ => {
            let timer_before = {
                // SAFETY: on this core, IRQs masked; dropped before `handle_irq`.
                unsafe { guest(core) }.map_or(0, |g| g.report.traps.timer)
            };
            board::exceptions::handle_irq();
            // SAFETY: as above.
            if let Some(g) = unsafe { guest(core) }
                && g.report.traps.timer == timer_before
            {
                g.report.traps.irq += 1;
            }
            false
        }
        KIND_SYNC => {
            // SAFETY: on this core, IRQs masked (a trap).
            match unsafe { guest(core) } {
                Some(g) => sync(g, regs),
                None => true,
            }
        }
        // SAFETY: as above.
        _ => match unsafe { guest(core) } {
            Some(g) => end(g, End::Stopped("SError or FIQ")),
            None => true,
        },
    };
    if leave {
        return LEAVE;
    }
    // SAFETY: as above.
    if let Some(g) = unsafe { guest(core) } {
        service(g);
        refill(g);
    }
    RESUME
}

/// What the fabric delivered to the guest's network device since its last exit, and
/// output buffers a busy SIGA left; the device's interrupt raised if it asks.
fn service(g: &mut Guest) {
    if let Some(net) = g.net.as_mut() {
        let before = net.dev.interrupt_pending();
        let wants = net.wire.service(&mut net.dev, &mut net.ram);
        net.settle(&mut g.vgic, before, wants);
    }
}

/// The guest is about to sleep in WFI (trapped by [`HCR_TWI`]): make sure something
/// will wake it, then sleep here in its place until a physical interrupt arrives (its
/// timer's PPI, an SGI for its network device, the hypervisor's own), which the trap
/// entry takes as soon as the guest resumes.
///
/// What could otherwise be lost is the virtual timer: EL2 masks it (IMASK) when its
/// PPI fires and hands vINTID 27 to the guest, whose handler unmasks it by
/// reprogramming. Should 27 never reach the guest's handler, the timer stays masked and
/// a sleeping guest never wakes (the hang seen as "stops after its init's last line").
/// So: a timer that is enabled, expired and masked, with 27 neither pending in the
/// model nor in a list register, is raised again (counted in
/// [`Report::ticks_reraised`], the first time printed). The network device is
/// serviced (a frame the fabric delivered without an interrupt is not left waiting for
/// the next tick), the list registers refilled; with one pending the guest takes it at
/// once, else this core waits.
fn idle(g: &mut Guest) {
    service(g);
    let ctl: u64;
    // SAFETY: reading this core's virtual timer control (the guest's, E2H = 0) has no
    // side effects.
    unsafe {
        core::arch::asm!("mrs {}, cntv_ctl_el0", out(reg) ctl, options(nomem, nostack, preserves_flags))
    };
    let expired_masked = CNTV_ENABLE | CNTV_ISTATUS | CNTV_IMASK;
    let held = |g: &Guest| {
        g.lrs
            .iter()
            .any(|&lr| lr != 0 && iqdio_vdev::vgic::lr_vintid(lr) == VTIMER_INTID)
    };
    if ctl & expired_masked == expired_masked && !g.vgic.is_pending(VTIMER_INTID) && !held(g) {
        if g.report.ticks_reraised == 0 {
            defmt::println!(
                "partition {}: virtual timer expired and masked with no tick pending: raised again",
                g.lpar
            );
        }
        g.report.ticks_reraised += 1;
        let _ = g.vgic.raise(VTIMER_INTID);
    }
    refill(g);
    let empty = empty_list_registers();
    let pending = (0..LIST_REGISTERS)
        .any(|n| empty & (1 << n) == 0 && iqdio_vdev::vgic::lr_state(read_lr(n)) & 1 != 0);
    if !pending {
        // SAFETY: WFI only suspends this core until an interrupt is pending (IRQs are
        // masked at EL2: the interrupt is taken after the return to the guest).
        unsafe { core::arch::asm!("wfi", options(nomem, nostack, preserves_flags)) };
    }
}

/// Retires the list registers the guest emptied, adds an interrupt raised again while
/// its register is still held to that register ([`Vgic::merge_pending`]: else the
/// guest's EOI would empty it without a trap and the new edge would wait for a trap
/// that may never come), and fills free ones from the model.
fn refill(g: &mut Guest) {
    let empty = empty_list_registers();
    for (n, lr) in g.lrs.iter_mut().enumerate() {
        if *lr == 0 {
            continue;
        }
        if empty & (1 << n) != 0 {
            g.vgic.lr_retired(*lr);
            *lr = 0;
        } else if let Some(v) = g.vgic.merge_pending(read_lr(n)) {
            write_lr(n, v);
            *lr = v;
        }
    }
    for n in 0..LIST_REGISTERS {
        if empty & (1 << n) == 0 || g.lrs[n] != 0 {
            continue;
        }
        let Some(value) = g.vgic.next_lr() else { break };
        write_lr(n, value);
        g.lrs[n] = value;
    }
}

fn syndrome() -> (u64, u64, u64) {
    let (esr, far, hpfar): (u64, u64, u64);
    // SAFETY: reading the syndrome registers has no side effects.
    unsafe {
        core::arch::asm!(
            "mrs {}, esr_el2", "mrs {}, far_el2", "mrs {}, hpfar_el2",
            out(reg) esr, out(reg) far, out(reg) hpfar,
            options(nomem, nostack, preserves_flags)
        )
    };
    (esr, far, hpfar)
}

/// A synchronous trap; true to leave the guest.
fn sync(g: &mut Guest, regs: &mut VcpuRegs) -> bool {
    let (esr_el2, far, hpfar) = syndrome();
    match esr::decode(esr_el2, far, hpfar) {
        Trap::Mmio(access) => mmio(g, regs, access, far),
        Trap::DataAbort { ipa, .. } => reflect(g, regs, far, ipa, AbortKind::Data),
        Trap::InstructionAbort { .. } => {
            let ipa = esr::fault_ipa(far, hpfar);
            reflect(g, regs, far, Some(ipa), AbortKind::Instruction)
        }
        Trap::Hvc { imm } => {
            g.report.traps.hvc += 1;
            match g
                .psci
                .call(imm, [regs.x[0], regs.x[1], regs.x[2], regs.x[3]])
            {
                psci::Outcome::Return(v) => {
                    regs.x[0] = v;
                    false
                }
                psci::Outcome::PowerOff => end(g, End::PoweredOff),
                psci::Outcome::Reset if g.panicking => end(g, End::Panicked),
                psci::Outcome::Reset => end(g, End::Reset),
                // iqdio's own calls are for partitions attached to the fabric; this
                // guest is not (yet): SMCCC's NOT_SUPPORTED, as for any unknown call.
                psci::Outcome::PassOn => {
                    regs.x[0] = u64::MAX;
                    false
                }
            }
        }
        // The guest's tree says PSCI is over HVC; an SMC (trapped by TSC) answers
        // NOT_SUPPORTED and moves on (ELR_EL2 is the SMC itself).
        Trap::Smc { .. } => {
            g.report.traps.other += 1;
            regs.x[0] = u64::MAX;
            regs.elr += 4;
            false
        }
        Trap::Wfx { .. } => {
            g.report.traps.wfi += 1;
            regs.elr += 4;
            idle(g);
            false
        }
        Trap::SysReg(_) => end(g, End::Stopped("trapped system register")),
        Trap::Unknown => end(g, End::Stopped("undefined instruction at EL2")),
        Trap::Other { ec, iss } => {
            defmt::println!(
                "partition {}: linux trap EC {=u8:#x} ISS {=u32:#x} at {=u64:#x}",
                g.lpar,
                ec,
                iss,
                regs.elr
            );
            end(
                g,
                End::Stopped(board::exceptions::exception_class(u64::from(ec))),
            )
        }
    }
}

fn within(ipa: u64, (base, size): (u64, u64)) -> Option<u64> {
    ipa.checked_sub(base).filter(|&off| off < size)
}

fn mmio(g: &mut Guest, regs: &mut VcpuRegs, access: MmioAccess, far: u64) -> bool {
    let ipa = access.ipa;
    let value = access.store_value(regs.x.get(usize::from(access.reg)).copied().unwrap_or(0));
    let raw = if let Some(off) = within(ipa, GICD) {
        g.report.traps.gic += 1;
        if access.write {
            let _ = g.vgic.dist_write(off, access.size, value);
            0
        } else {
            g.vgic.dist_read(off, access.size)
        }
    } else if let Some(off) = within(ipa, GICR) {
        g.report.traps.gic += 1;
        if access.write {
            let _ = g.vgic.redist_write(off, access.size, value);
            0
        } else {
            g.vgic.redist_read(off, access.size)
        }
    } else if let Some(off) = within(ipa, UART) {
        // The idle span ends where the guest next writes to its console (more than
        // IDLE_SETTLE_NS after the `idle` mark's line, whose own tail of accesses
        // comes at once), so the figure holds no console output.
        if let Some((from, _)) = g.idle_from
            && g.idle_to.is_none()
        {
            let now = board::now_ns();
            if now.saturating_sub(from) > IDLE_SETTLE_NS {
                g.idle_to = Some((now, g.report.traps));
            }
        }
        g.report.traps.uart += 1;
        if access.write {
            let mut copy = [0u8; LINE];
            let line = g.uart.write(off, access.size, value).map(|line| {
                let n = line.bytes.len().min(LINE);
                copy[..n].copy_from_slice(&line.bytes[..n]);
                n
            });
            if let Some(n) = line {
                console_line(g, &mut copy[..n]);
            }
            0
        } else {
            g.uart.read(off, access.size)
        }
    } else if let Some(off) = within(ipa, VIRTIO)
        && let Some(net) = g.net.as_mut()
    {
        g.report.traps.virtio += 1;
        let before = net.dev.interrupt_pending();
        let (raw, completion_wants_irq) = if access.write {
            let effect = net.dev.write(off, access.size, value, &net.ram);
            (0, device_effect(net, effect))
        } else {
            (net.dev.read(off, access.size), false)
        };
        net.settle(&mut g.vgic, before, completion_wants_irq);
        raw
    } else {
        return reflect(g, regs, far, Some(ipa), AbortKind::Data);
    };
    if !access.write
        && let Some((reg, v)) = access.load_result(raw)
        && let Some(x) = regs.x.get_mut(usize::from(reg))
    {
        *x = v;
    }
    regs.elr += 4;
    false
}

/// Carries out what a register write asked of the hypervisor; true when a completion
/// asked for a used buffer notification.
fn device_effect(net: &mut Net, effect: Effect) -> bool {
    match effect {
        Effect::Notify(Queue::Tx) => net.wire.transmit(&mut net.dev, &mut net.ram),
        Effect::Notify(Queue::Rx) => {
            net.wire.post_rx(&mut net.dev, &mut net.ram);
            false
        }
        Effect::Live => {
            net.report.live += 1;
            net.wire.establish();
            net.wire.post_rx(&mut net.dev, &mut net.ram);
            false
        }
        // The driver takes its buffers back: so does the fabric, first.
        Effect::Reset | Effect::QueueStopped(_) | Effect::NeedsReset(_) => {
            net.wire.withdraw(true);
            false
        }
        Effect::None => false,
    }
}

/// The device's figures for the report.
fn net_report(net: &Net) -> NetReport {
    NetReport {
        wire: net.wire.counts,
        fabric: net.wire.fabric_counts(),
        bad_rings: net.dev.violations().total(),
        ..net.report
    }
}

/// One line of the guest's console: printed with the partition's prefix, and watched
/// for the marks the summary needs.
fn console_line(g: &mut Guest, text: &mut [u8]) {
    const UNAME: &[u8] = b"iqdio-guest: uname -r ";
    const IDLE: &[u8] = b"iqdio-guest: idle";
    const INIT: &[u8] = b"Run /init as init process";
    const PANIC: &[u8] = b"Kernel panic - not syncing";
    for b in text.iter_mut() {
        if !(0x20..0x7f).contains(b) {
            *b = b'?';
        }
    }
    // The kernel's own lines start with a "[    1.234567] " stamp.
    let body = match text.iter().position(|&b| b == b']') {
        Some(i) if text.first() == Some(&b'[') => text.get(i + 2..).unwrap_or(&[]),
        _ => &text[..],
    };
    if let Some(v) = body.strip_prefix(UNAME) {
        let n = v.len().min(g.report.version.len());
        g.report.version[..n].copy_from_slice(&v[..n]);
        g.report.version_len = n;
        g.report.booted = true;
    }
    if body.starts_with(INIT) && g.report.to_init_ns.is_none() {
        g.report.to_init_ns = Some(board::now_ns().saturating_sub(g.start_ns));
    }
    if body.starts_with(IDLE) && g.idle_from.is_none() {
        g.idle_from = Some((board::now_ns(), g.report.traps));
    }
    if body.starts_with(PANIC) {
        g.panicking = true;
    }
    super::netlines::line(usize::from(g.lpar), body);
    let line = core::str::from_utf8(text).unwrap_or("?");
    defmt::println!("partition {}: {=str}", g.lpar, line);
}

/// Reflects an access to no memory and no device into the guest as a synchronous
/// external abort at its own vector; the guest decides (a process gets SIGBUS).
fn reflect(
    g: &mut Guest,
    regs: &mut VcpuRegs,
    far: u64,
    ipa: Option<u64>,
    kind: AbortKind,
) -> bool {
    g.report.traps.aborts += 1;
    let (vbar, sctlr): (u64, u64);
    // SAFETY: reading the guest's EL1 registers at EL2 has no side effects.
    unsafe {
        core::arch::asm!("mrs {}, vbar_el1", "mrs {}, sctlr_el1", out(reg) vbar, out(reg) sctlr,
                         options(nomem, nostack, preserves_flags))
    };
    let context = GuestContext {
        spsr_el2: regs.spsr,
        elr_el2: regs.elr,
        far_el2: far,
        vbar_el1: vbar,
        sctlr_el1: sctlr,
    };
    let Ok(entry) = esr::external_abort(&context, kind) else {
        return end(g, End::Stopped("abort in a mode iqdio cannot reflect into"));
    };
    defmt::println!(
        "partition {}: linux external abort reflected: IPA {=u64:#x} at {=u64:#x} ({=str})",
        g.lpar,
        ipa.unwrap_or(u64::MAX),
        regs.elr,
        if regs.spsr & 0xf == 0 {
            "a process"
        } else {
            "the kernel"
        }
    );
    sysreg_write(|| {
        // SAFETY: the guest's EL1 exception registers, written at EL2 while it is not
        // running, exactly as an exception entry to its EL1 would (vdev::esr).
        unsafe {
            core::arch::asm!(
                "msr esr_el1, {esr}",
                "msr far_el1, {far}",
                "msr elr_el1, {elr}",
                "msr spsr_el1, {spsr}",
                esr = in(reg) entry.esr_el1,
                far = in(reg) entry.far_el1,
                elr = in(reg) entry.elr_el1,
                spsr = in(reg) entry.spsr_el1,
                options(nomem, nostack, preserves_flags),
            )
        }
    });
    regs.elr = entry.elr_el2;
    regs.spsr = entry.spsr_el2;
    false
}

/// Ends the guest: what is left of its console, the line that says how, and back to
/// the hypervisor.
fn end(g: &mut Guest, how: End) -> bool {
    let mut copy = [0u8; LINE];
    if let Some(n) = g.uart.flush().map(|line| {
        let n = line.bytes.len().min(LINE);
        copy[..n].copy_from_slice(&line.bytes[..n]);
        n
    }) {
        console_line(g, &mut copy[..n]);
    }
    g.report.end = how;
    if let Some(net) = g.net.as_mut() {
        // The guest is gone: so is its queue set, whose final counters the line gives.
        net.wire.withdraw(false);
        let r = net_report(net);
        let d = &net.dev;
        let m = d.mac();
        let ig = d.ignored();
        let w = &r.wire;
        defmt::println!(
            "partition {}: virtio-net {=u8:02x}:{=u8:02x}:{=u8:02x}:{=u8:02x}:{=u8:02x}:{=u8:02x} mtu {}, live {}, status {=u32:#x}, accesses {}, tx chains {}, tx sent {}, tx refused {}, tx dropped {}, rx delivered {}, rx bad {}, rx discarded {}, copies {}, group copies {}, sigas {}, withdrawn {}, interrupts {}, bad rings {}, ignored accesses {}",
            g.lpar,
            m[0],
            m[1],
            m[2],
            m[3],
            m[4],
            m[5],
            d.mtu(),
            r.live,
            d.status(),
            g.report.traps.virtio,
            w.tx_chains,
            w.tx_sent,
            w.tx_refused,
            w.tx_dropped,
            w.rx_delivered,
            w.rx_bad,
            w.rx_discarded,
            r.fabric.frames_received,
            r.fabric.group_copies,
            w.sigas,
            w.withdrawn,
            r.interrupts,
            r.bad_rings,
            ig.bad_width + ig.unknown + ig.wrong_direction + ig.no_queue + ig.refused
        );
        for (reason, n) in iqdio::Reason::ALL.iter().zip(w.tx_refused_by) {
            if n > 0 {
                defmt::println!(
                    "partition {}: virtio-net tx refused {} x sbalf15 {=u8:#04x} ({=str})",
                    g.lpar,
                    n,
                    reason.code(),
                    reason.describe()
                );
            }
        }
        g.report.net = r;
    }
    match how {
        End::PoweredOff => defmt::println!("partition {}: linux powered off", g.lpar),
        End::Panicked => defmt::println!("partition {}: linux panicked", g.lpar),
        End::Reset => defmt::println!("partition {}: linux reset", g.lpar),
        End::Stopped(what) => {
            defmt::println!("partition {}: linux stopped: {=str}", g.lpar, what)
        }
    }
    true
}
