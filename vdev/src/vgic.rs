//! A GICv3 distributor and one redistributor (RD and SGI frames) for one vCPU, and the
//! list-register side of injecting its interrupts.
//!
//! Register offsets come from `arm-gic`'s register structs (`Gicd`, `Gicr`, `Sgi`, laid
//! out `#[repr(C)]` as in the GIC architecture specification, IHI 0069, 12.8-12.11) with
//! `core::mem::offset_of!`, and the GICD_CTLR/GICR_WAKER bits from its bitflags: the
//! crate cannot be used as a model itself (its structs are MMIO views, not state), but
//! its layout is the one a driver programs. Values Linux needs and the access order the
//! tests replay are from LINUX-GUESTS.md ("Under a hypervisor").
//!
//! The model: affinity routing always on (GICD_CTLR.ARE reads as written, Linux sets it),
//! one security state (DS = 1), no LPIs, no ITS, 96 interrupt IDs (SGIs 0-15, PPIs 16-31,
//! SPIs 32-95). With ARE, the distributor's registers for IDs 0-31 are RAZ/WI (IHI 0069
//! 12.9: "GICD_ISENABLER0 ... RAZ/WI when affinity routing is enabled"): those live in the
//! redistributor's SGI frame. Unknown or reserved offsets and accesses of a width the
//! architecture does not allow there read as zero, ignore writes and are counted.
//!
//! Once an interrupt is in a list register its state there belongs to the hardware: a
//! guest write to ICPENDR/ICACTIVER does not reach into the LR (the guest acknowledges
//! and deactivates through its virtual CPU interface), and ISACTIVER does not reflect an
//! LR's active state.

use arm_gic::gicv3::registers::{Gicd, GicdCtlr, Gicr, GicrSgi, Waker};
use core::mem::offset_of;

use aarch64_cpu::registers::ICH_LR0_EL2;

/// Interrupt IDs the model implements: GICD_TYPER.ITLinesNumber 2 = 32 * (2 + 1) IDs.
pub const INTID_LIMIT: u32 = 96;
/// The first SPI (IHI 0069 2.2).
pub const SPI_BASE: u32 = 32;
/// The first PPI.
pub const PPI_BASE: u32 = 16;
/// The virtual timer's PPI (the device tree's "arm,armv8-timer" third interrupt).
pub const VTIMER_PPI: u32 = 27;
/// The maintenance interrupt's PPI.
pub const MAINTENANCE_PPI: u32 = 25;

const WORDS: usize = (INTID_LIMIT / 32) as usize;
const SPIS: usize = (INTID_LIMIT - SPI_BASE) as usize;

/// GICD_TYPER: IDbits 9 (bits 23:19, 10-bit INTIDs), ITLinesNumber 2, no LPIs, no
/// security extension (DS); the value Linux booted with (LINUX-GUESTS.md).
pub const GICD_TYPER_VALUE: u32 = (9 << 19) | ((INTID_LIMIT / 32) - 1);
/// GICD_IIDR and GICR_IIDR: Arm (0x43B) product 3, the value that worked.
pub const IIDR_VALUE: u32 = 0x0300_043B;
/// GICD_PIDR2 / GICR_PIDR2: ArchRev 3 (GICv3) in bits 7:4, JEP106 bits; 0 makes Linux
/// find no GIC.
pub const PIDR2_VALUE: u32 = 0x3B;
/// SGIs are always edge-triggered: GICR_ICFGR0 reads 0b10 per SGI (IHI 0069 12.11.7).
pub const ICFGR0_VALUE: u32 = 0xAAAA_AAAA;

// GICD_CTLR bits with DS = 1 (IHI 0069 12.9.4): EnableGrp0 (0), EnableGrp1 (1), ARE (4),
// DS (6). `arm-gic` names bits 1 and 4 by their secure-view names.
const CTLR_GRP0: u32 = GicdCtlr::EnableGrp0.bits();
const CTLR_GRP1: u32 = GicdCtlr::EnableGrp1NS.bits();
const CTLR_ARE: u32 = GicdCtlr::ARE_S.bits();
const CTLR_WRITABLE: u32 = CTLR_GRP0 | CTLR_GRP1 | CTLR_ARE;
const CTLR_DS: u32 = GicdCtlr::DS.bits();

const WAKER_PROCESSOR_SLEEP: u32 = Waker::PROCESSOR_SLEEP.bits();
const WAKER_CHILDREN_ASLEEP: u32 = Waker::CHILDREN_ASLEEP.bits();

// GICR_TYPER (IHI 0069 12.11.34): Last (bit 4), affinity in bits 63:32.
const GICR_TYPER_LAST: u64 = 1 << 4;

/// Distributor register offsets, from `arm-gic`'s `Gicd`.
pub mod gicd {
    use super::*;
    /// GICD_CTLR.
    pub const CTLR: usize = offset_of!(Gicd, ctlr);
    /// GICD_TYPER.
    pub const TYPER: usize = offset_of!(Gicd, typer);
    /// GICD_IIDR.
    pub const IIDR: usize = offset_of!(Gicd, iidr);
    /// GICD_TYPER2.
    pub const TYPER2: usize = offset_of!(Gicd, typer2);
    /// `GICD_IGROUPR<n>`.
    pub const IGROUPR: usize = offset_of!(Gicd, igroupr);
    /// `GICD_ISENABLER<n>`.
    pub const ISENABLER: usize = offset_of!(Gicd, isenabler);
    /// `GICD_ICENABLER<n>`.
    pub const ICENABLER: usize = offset_of!(Gicd, icenabler);
    /// `GICD_ISPENDR<n>`.
    pub const ISPENDR: usize = offset_of!(Gicd, ispendr);
    /// `GICD_ICPENDR<n>`.
    pub const ICPENDR: usize = offset_of!(Gicd, icpendr);
    /// `GICD_ISACTIVER<n>`.
    pub const ISACTIVER: usize = offset_of!(Gicd, isactiver);
    /// `GICD_ICACTIVER<n>`.
    pub const ICACTIVER: usize = offset_of!(Gicd, icactiver);
    /// `GICD_IPRIORITYR<n>`.
    pub const IPRIORITYR: usize = offset_of!(Gicd, ipriorityr);
    /// `GICD_ICFGR<n>`.
    pub const ICFGR: usize = offset_of!(Gicd, icfgr);
    /// `GICD_IGRPMODR<n>`: RAZ/WI with DS = 1.
    pub const IGRPMODR: usize = offset_of!(Gicd, igrpmodr);
    /// `GICD_IROUTER<n>` (64-bit; index n is INTID n).
    pub const IROUTER: usize = offset_of!(Gicd, irouter);
    /// GICD_PIDR2.
    pub const PIDR2: usize = offset_of!(Gicd, pidr2);
    /// The distributor's size (64 KiB).
    pub const SIZE: usize = core::mem::size_of::<Gicd>();
}

/// Redistributor offsets from RD_base (the SGI frame is at +64 KiB), from `arm-gic`'s
/// `GicrSgi`.
pub mod gicr {
    use super::*;
    /// GICR_CTLR.
    pub const CTLR: usize = offset_of!(Gicr, ctlr);
    /// GICR_IIDR.
    pub const IIDR: usize = offset_of!(Gicr, iidr);
    /// GICR_TYPER (64-bit).
    pub const TYPER: usize = offset_of!(Gicr, typer);
    /// The upper half of GICR_TYPER, for 32-bit reads.
    pub const TYPER_HIGH: usize = TYPER + 4;
    /// GICR_WAKER.
    pub const WAKER: usize = offset_of!(Gicr, waker);
    /// GICR_PIDR2.
    pub const PIDR2: usize = offset_of!(Gicr, pidr2);
    /// GICR_IGROUPR0 (SGI frame).
    pub const IGROUPR0: usize = offset_of!(GicrSgi, sgi.igroupr);
    /// GICR_ISENABLER0.
    pub const ISENABLER0: usize = offset_of!(GicrSgi, sgi.isenabler);
    /// GICR_ICENABLER0.
    pub const ICENABLER0: usize = offset_of!(GicrSgi, sgi.icenabler);
    /// GICR_ISPENDR0.
    pub const ISPENDR0: usize = offset_of!(GicrSgi, sgi.ispendr);
    /// GICR_ICPENDR0.
    pub const ICPENDR0: usize = offset_of!(GicrSgi, sgi.icpendr);
    /// GICR_ISACTIVER0.
    pub const ISACTIVER0: usize = offset_of!(GicrSgi, sgi.isactiver);
    /// GICR_ICACTIVER0.
    pub const ICACTIVER0: usize = offset_of!(GicrSgi, sgi.icactiver);
    /// GICR_IPRIORITYR0-7.
    pub const IPRIORITYR: usize = offset_of!(GicrSgi, sgi.ipriorityr);
    /// GICR_ICFGR0 (SGIs, read-only) and ICFGR1 (PPIs).
    pub const ICFGR: usize = offset_of!(GicrSgi, sgi.icfgr);
    /// GICR_IGRPMODR0: RAZ/WI with DS = 1.
    pub const IGRPMODR0: usize = offset_of!(GicrSgi, sgi.igrpmodr);
    /// GICR_NSACR: RAZ/WI with DS = 1.
    pub const NSACR: usize = offset_of!(GicrSgi, sgi.nsacr);
    /// The RD and SGI frames together (128 KiB).
    pub const SIZE: usize = core::mem::size_of::<GicrSgi>();
}

/// A refused interrupt ID or configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VgicError {
    /// The INTID is not below [`INTID_LIMIT`].
    NoSuchInterrupt(u32),
    /// Only PPIs and SPIs can have a physical interrupt behind them (an SGI's pINTID
    /// would be below 16, which ICH_LR forbids with HW = 1).
    NotHardwareCapable(u32),
}

/// What a raised interrupt found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Raised {
    /// Enabled in ISENABLER, its group enabled in GICD_CTLR, routed to this vCPU: it will
    /// go to an LR as soon as one is free. Otherwise it stays pending in the model.
    pub deliverable: bool,
    /// Its priority byte.
    pub priority: u8,
    /// Group 1 (IGROUPR bit).
    pub group1: bool,
}

/// Effects of a register write the hypervisor may mirror (e.g. an enabled PPI/SPI that
/// has a physical interrupt behind it onto the physical GIC).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteEffect {
    /// The INTID of bit 0 of the masks below.
    pub first_intid: u32,
    /// IDs this write enabled that were disabled.
    pub enabled: u32,
    /// IDs this write disabled that were enabled.
    pub disabled: u32,
}

/// Accesses answered as RAZ/WI because the model has no such register or does not
/// allow the width there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ignored {
    /// Unknown or reserved offsets.
    pub unknown: u64,
    /// Known registers accessed with a width or alignment the architecture does not
    /// allow (IHI 0069 12.1.3: 32-bit everywhere, 64-bit for IROUTER/TYPER, bytes for
    /// IPRIORITYR; no 16-bit accesses).
    pub bad_width: u64,
}

/// One vCPU's GICv3: distributor, redistributor and the software pending state.
#[derive(Clone, Debug)]
pub struct Vgic {
    mpidr: u64,
    ctlr: u32,
    waker: u32,
    group: [u32; WORDS],
    enabled: [u32; WORDS],
    pending: [u32; WORDS],
    active: [u32; WORDS],
    /// IDs now held in a list register: not injected twice (IHI 0069 4.9.6: two LRs with
    /// one vINTID are UNPREDICTABLE).
    in_lr: [u32; WORDS],
    /// IDs whose LR carries HW = 1 and pINTID = vINTID.
    hw: [u32; WORDS],
    priority: [u8; INTID_LIMIT as usize],
    icfgr: [u32; WORDS * 2],
    irouter: [u64; SPIS],
    ignored: Ignored,
}

/// How a register is laid out, for the width rules and the handlers.
#[derive(Clone, Copy)]
enum Reg {
    /// A plain 32-bit register.
    Word(WordReg),
    /// One bit per interrupt, word `n` (0 = IDs 0-31).
    Bits(BitsReg, usize),
    /// IPRIORITYR byte `n` = priority of INTID `n` (byte access allowed).
    Priority(usize),
    /// ICFGR word `n`: 2 bits per interrupt.
    Cfg(usize),
    /// 64-bit IROUTER of SPI index `n`.
    Router(usize),
    /// 64-bit GICR_TYPER.
    RdTyper,
    /// A defined register that is RAZ/WI in this model, with the widths it allows.
    Raz(Width),
}

/// The access widths a register allows (IHI 0069 12.1.3).
#[derive(Clone, Copy)]
enum Width {
    /// 32-bit only.
    Word,
    /// 8- or 32-bit (IPRIORITYR).
    Byte,
    /// 32- or 64-bit (IROUTER, GICR_TYPER).
    Double,
}

#[derive(Clone, Copy)]
enum WordReg {
    DistCtlr,
    DistTyper,
    Iidr,
    DistTyper2,
    Pidr2,
    RdCtlr,
    Waker,
}

#[derive(Clone, Copy)]
enum BitsReg {
    Group,
    SetEnable,
    ClearEnable,
    SetPending,
    ClearPending,
    SetActive,
    ClearActive,
}

fn in_words(offset: usize, base: usize, words: usize) -> Option<usize> {
    (offset >= base && offset < base + words * 4).then(|| (offset - base) / 4)
}

impl Vgic {
    /// A GIC in its reset state for the vCPU whose MPIDR (VMPIDR_EL2) is `mpidr`:
    /// everything disabled, Group 0, priority 0, the redistributor asleep (WAKER 0x6).
    pub fn new(mpidr: u64) -> Self {
        let mut icfgr = [0; WORDS * 2];
        icfgr[0] = ICFGR0_VALUE;
        Self {
            mpidr,
            ctlr: 0,
            waker: WAKER_PROCESSOR_SLEEP | WAKER_CHILDREN_ASLEEP,
            group: [0; WORDS],
            enabled: [0; WORDS],
            pending: [0; WORDS],
            active: [0; WORDS],
            in_lr: [0; WORDS],
            hw: [0; WORDS],
            priority: [0; INTID_LIMIT as usize],
            icfgr,
            irouter: [0; SPIS],
            ignored: Ignored::default(),
        }
    }

    /// Accesses answered RAZ/WI so far.
    pub fn ignored(&self) -> Ignored {
        self.ignored
    }

    /// Whether `intid` is enabled (ISENABLER).
    pub fn is_enabled(&self, intid: u32) -> bool {
        intid < INTID_LIMIT && bit(&self.enabled, intid)
    }

    /// Whether `intid` waits in the model's pending set (not yet in an LR).
    pub fn is_pending(&self, intid: u32) -> bool {
        intid < INTID_LIMIT && bit(&self.pending, intid)
    }

    /// Marks `intid` (a PPI or SPI) as backed by the physical interrupt of the same
    /// number: its LR gets HW = 1 and pINTID, so the guest's EOI deactivates the physical
    /// one (the virtual timer, PPI 27, with EL2 running EOImode = 1).
    pub fn set_hardware(&mut self, intid: u32, hw: bool) -> Result<(), VgicError> {
        check(intid)?;
        if intid < PPI_BASE {
            return Err(VgicError::NotHardwareCapable(intid));
        }
        set_bit(&mut self.hw, intid, hw);
        Ok(())
    }

    fn dist_reg(offset: usize) -> Option<Reg> {
        use gicd::*;
        let reg = match offset {
            CTLR => Reg::Word(WordReg::DistCtlr),
            TYPER => Reg::Word(WordReg::DistTyper),
            IIDR => Reg::Word(WordReg::Iidr),
            TYPER2 => Reg::Word(WordReg::DistTyper2),
            PIDR2 => Reg::Word(WordReg::Pidr2),
            _ => {
                let bits = [
                    (IGROUPR, BitsReg::Group),
                    (ISENABLER, BitsReg::SetEnable),
                    (ICENABLER, BitsReg::ClearEnable),
                    (ISPENDR, BitsReg::SetPending),
                    (ICPENDR, BitsReg::ClearPending),
                    (ISACTIVER, BitsReg::SetActive),
                    (ICACTIVER, BitsReg::ClearActive),
                ];
                for (base, kind) in bits {
                    if let Some(n) = in_words(offset, base, 32) {
                        // Word 0 (SGIs, PPIs) is in the redistributor under ARE.
                        return Some(if n == 0 || n >= WORDS {
                            Reg::Raz(Width::Word)
                        } else {
                            Reg::Bits(kind, n)
                        });
                    }
                }
                if in_words(offset, IPRIORITYR, 255).is_some() {
                    let byte = offset - IPRIORITYR;
                    return Some(
                        if (SPI_BASE as usize..INTID_LIMIT as usize).contains(&byte) {
                            Reg::Priority(byte)
                        } else {
                            Reg::Raz(Width::Byte)
                        },
                    );
                }
                if let Some(n) = in_words(offset, ICFGR, 64) {
                    return Some(if (2..WORDS * 2).contains(&n) {
                        Reg::Cfg(n)
                    } else {
                        Reg::Raz(Width::Word)
                    });
                }
                if in_words(offset, IGRPMODR, 32).is_some() {
                    return Some(Reg::Raz(Width::Word));
                }
                if (IROUTER..IROUTER + 988 * 8).contains(&offset) {
                    // IROUTER<n> for n = 32..1019 sits at 0x6000 + 8n (n < 32 reserved).
                    let n = (offset - gicd::IROUTER) / 8 + SPI_BASE as usize;
                    return Some(if n < INTID_LIMIT as usize {
                        Reg::Router(n - SPI_BASE as usize)
                    } else {
                        Reg::Raz(Width::Double)
                    });
                }
                return None;
            }
        };
        Some(reg)
    }

    fn redist_reg(offset: usize) -> Option<Reg> {
        use gicr::*;
        let reg = match offset {
            CTLR => Reg::Word(WordReg::RdCtlr),
            IIDR => Reg::Word(WordReg::Iidr),
            // Either half of the 64-bit TYPER.
            TYPER | TYPER_HIGH => Reg::RdTyper,
            WAKER => Reg::Word(WordReg::Waker),
            PIDR2 => Reg::Word(WordReg::Pidr2),
            IGROUPR0 => Reg::Bits(BitsReg::Group, 0),
            ISENABLER0 => Reg::Bits(BitsReg::SetEnable, 0),
            ICENABLER0 => Reg::Bits(BitsReg::ClearEnable, 0),
            ISPENDR0 => Reg::Bits(BitsReg::SetPending, 0),
            ICPENDR0 => Reg::Bits(BitsReg::ClearPending, 0),
            ISACTIVER0 => Reg::Bits(BitsReg::SetActive, 0),
            ICACTIVER0 => Reg::Bits(BitsReg::ClearActive, 0),
            IGRPMODR0 | NSACR => Reg::Raz(Width::Word),
            _ => {
                if (IPRIORITYR..IPRIORITYR + 32).contains(&offset) {
                    return Some(Reg::Priority(offset - IPRIORITYR));
                }
                if let Some(n) = in_words(offset, ICFGR, 2) {
                    return Some(Reg::Cfg(n));
                }
                return None;
            }
        };
        Some(reg)
    }

    /// Width rule (IHI 0069 12.1.3): whether `size` at `offset` is an access the
    /// architecture allows on `reg` (naturally aligned, of a width the register has).
    fn width_ok(reg: Reg, offset: usize, size: u8) -> bool {
        if !matches!(size, 1 | 4 | 8) || !offset.is_multiple_of(usize::from(size)) {
            return false;
        }
        let width = match reg {
            Reg::Priority(_) => Width::Byte,
            Reg::Router(_) | Reg::RdTyper => Width::Double,
            Reg::Raz(width) => width,
            Reg::Word(_) | Reg::Bits(..) | Reg::Cfg(_) => Width::Word,
        };
        match width {
            Width::Word => size == 4,
            Width::Byte => size != 8,
            // 64-bit registers allow 32-bit accesses to either half.
            Width::Double => size != 1,
        }
    }

    /// A guest read of `size` bytes at `offset` in the distributor's 64 KiB frame.
    pub fn dist_read(&mut self, offset: u64, size: u8) -> u64 {
        let reg = usize::try_from(offset)
            .ok()
            .filter(|&o| o < gicd::SIZE)
            .and_then(Self::dist_reg);
        self.read(reg, offset as usize, size)
    }

    /// A guest write to the distributor.
    pub fn dist_write(&mut self, offset: u64, size: u8, value: u64) -> WriteEffect {
        let reg = usize::try_from(offset)
            .ok()
            .filter(|&o| o < gicd::SIZE)
            .and_then(Self::dist_reg);
        self.write(reg, offset as usize, size, value)
    }

    /// A guest read at `offset` from RD_base of the redistributor (RD frame, then the
    /// SGI frame at +64 KiB).
    pub fn redist_read(&mut self, offset: u64, size: u8) -> u64 {
        let reg = usize::try_from(offset)
            .ok()
            .filter(|&o| o < gicr::SIZE)
            .and_then(Self::redist_reg);
        self.read(reg, offset as usize, size)
    }

    /// A guest write to the redistributor.
    pub fn redist_write(&mut self, offset: u64, size: u8, value: u64) -> WriteEffect {
        let reg = usize::try_from(offset)
            .ok()
            .filter(|&o| o < gicr::SIZE)
            .and_then(Self::redist_reg);
        self.write(reg, offset as usize, size, value)
    }

    fn checked(&mut self, reg: Option<Reg>, offset: usize, size: u8) -> Option<Reg> {
        let Some(reg) = reg else {
            self.ignored.unknown += 1;
            return None;
        };
        if !Self::width_ok(reg, offset, size) {
            self.ignored.bad_width += 1;
            return None;
        }
        Some(reg)
    }

    fn read(&mut self, reg: Option<Reg>, offset: usize, size: u8) -> u64 {
        let Some(reg) = self.checked(reg, offset, size) else {
            return 0;
        };
        match reg {
            Reg::Word(word) => u64::from(match word {
                // RWP (bit 31) reads 0: writes take effect at once.
                WordReg::DistCtlr => self.ctlr | CTLR_DS,
                WordReg::DistTyper => GICD_TYPER_VALUE,
                WordReg::Iidr => IIDR_VALUE,
                WordReg::DistTyper2 => 0,
                WordReg::Pidr2 => PIDR2_VALUE,
                // No LPIs: EnableLPIs stays 0; RWP/UWP read 0.
                WordReg::RdCtlr => 0,
                WordReg::Waker => self.waker,
            }),
            Reg::Bits(kind, n) => u64::from(match kind {
                BitsReg::Group => self.group[n],
                BitsReg::SetEnable | BitsReg::ClearEnable => self.enabled[n],
                // An interrupt sitting in an LR is still pending as far as the guest asks.
                BitsReg::SetPending | BitsReg::ClearPending => self.pending[n] | self.in_lr[n],
                BitsReg::SetActive | BitsReg::ClearActive => self.active[n],
            }),
            Reg::Priority(first) => {
                let mut value = 0u64;
                for lane in 0..usize::from(size) {
                    value |= u64::from(self.priority[first + lane]) << (8 * lane);
                }
                value
            }
            Reg::Cfg(n) => u64::from(self.icfgr[n]),
            Reg::Router(n) => half(self.irouter[n], offset, size),
            Reg::RdTyper => half(self.rd_typer(), offset, size),
            Reg::Raz(_) => 0,
        }
    }

    fn write(&mut self, reg: Option<Reg>, offset: usize, size: u8, value: u64) -> WriteEffect {
        let mut effect = WriteEffect::default();
        let Some(reg) = self.checked(reg, offset, size) else {
            return effect;
        };
        let word = value as u32;
        match reg {
            Reg::Word(WordReg::DistCtlr) => self.ctlr = word & CTLR_WRITABLE,
            Reg::Word(WordReg::Waker) => {
                // ChildrenAsleep follows ProcessorSleep at once (IHI 0069 12.11.41): Linux
                // clears ProcessorSleep and polls ChildrenAsleep to read 0.
                let sleep = word & WAKER_PROCESSOR_SLEEP;
                self.waker = if sleep != 0 {
                    sleep | WAKER_CHILDREN_ASLEEP
                } else {
                    0
                };
            }
            Reg::Word(_) | Reg::RdTyper | Reg::Raz(_) => {}
            Reg::Bits(kind, n) => {
                let first = n as u32 * 32;
                match kind {
                    BitsReg::Group => self.group[n] = word,
                    BitsReg::SetEnable => {
                        effect = WriteEffect {
                            first_intid: first,
                            enabled: word & !self.enabled[n],
                            disabled: 0,
                        };
                        self.enabled[n] |= word;
                    }
                    BitsReg::ClearEnable => {
                        effect = WriteEffect {
                            first_intid: first,
                            enabled: 0,
                            disabled: word & self.enabled[n],
                        };
                        self.enabled[n] &= !word;
                    }
                    BitsReg::SetPending => self.pending[n] |= word,
                    BitsReg::ClearPending => self.pending[n] &= !word,
                    BitsReg::SetActive => self.active[n] |= word,
                    BitsReg::ClearActive => self.active[n] &= !word,
                }
            }
            Reg::Priority(first) => {
                for lane in 0..usize::from(size) {
                    self.priority[first + lane] = (value >> (8 * lane)) as u8;
                }
            }
            // ICFGR0 (SGIs) is read-only; elsewhere only the odd bit of each pair (edge)
            // is writable (IHI 0069 12.9.9).
            Reg::Cfg(0) => {}
            Reg::Cfg(n) => self.icfgr[n] = word & 0xAAAA_AAAA,
            Reg::Router(n) => {
                // IRM (bit 31) and Aff3.Aff2.Aff1.Aff0 (bits 39:32, 23:0) are writable.
                let writable = 0xFF_8000_0000 | 0xFF_FFFF;
                let merged = match (size, offset % 8) {
                    (8, _) => value,
                    (_, 0) => (self.irouter[n] & !0xFFFF_FFFF) | u64::from(word),
                    _ => (self.irouter[n] & 0xFFFF_FFFF) | (u64::from(word) << 32),
                };
                self.irouter[n] = merged & writable;
            }
        }
        effect
    }

    fn rd_typer(&self) -> u64 {
        // MPIDR Aff3 (39:32), Aff2 (23:16), Aff1 (15:8), Aff0 (7:0) -> GICR_TYPER 63:32.
        let aff = ((self.mpidr >> 32) & 0xFF) << 24 | (self.mpidr & 0xFF_FFFF);
        (aff << 32) | GICR_TYPER_LAST
    }

    fn routed_here(&self, intid: u32) -> bool {
        if intid < SPI_BASE {
            return true;
        }
        let route = self.irouter[(intid - SPI_BASE) as usize];
        // IRM = 1: any participating PE, and this vCPU is the only one.
        let aff_mask = 0xFF_00FF_FFFF;
        route & (1 << 31) != 0 || route & aff_mask == self.mpidr & aff_mask
    }

    fn deliverable(&self, intid: u32) -> bool {
        let group_on = if bit(&self.group, intid) {
            self.ctlr & CTLR_GRP1 != 0
        } else {
            self.ctlr & CTLR_GRP0 != 0
        };
        bit(&self.enabled, intid) && group_on && self.routed_here(intid)
    }

    /// An interrupt for this vCPU (the timer PPI at EL2, the UART's SPI, an SGI the guest
    /// sent itself): latched pending in the model until [`Vgic::next_lr`] puts it in an LR.
    /// Every source is latched as an edge: a level-sensitive source still asserted after
    /// the guest's EOI is raised again by the hypervisor (or, with HW = 1, by the
    /// physical GIC re-signalling it).
    pub fn raise(&mut self, intid: u32) -> Result<Raised, VgicError> {
        check(intid)?;
        set_bit(&mut self.pending, intid, true);
        Ok(Raised {
            deliverable: self.deliverable(intid),
            priority: self.priority[intid as usize],
            group1: bit(&self.group, intid),
        })
    }

    /// The next list-register value to write into a free LR (found with ICH_ELRSR_EL2):
    /// the deliverable pending interrupt with the highest priority (lowest value, then
    /// lowest ID), moved from the pending set to "in an LR". `None` when nothing is
    /// deliverable; call again whenever an LR frees or a write enables something.
    pub fn next_lr(&mut self) -> Option<u64> {
        let mut best: Option<u32> = None;
        for intid in 0..INTID_LIMIT {
            if bit(&self.pending, intid) && !bit(&self.in_lr, intid) && self.deliverable(intid) {
                let better =
                    best.is_none_or(|b| self.priority[intid as usize] < self.priority[b as usize]);
                if better {
                    best = Some(intid);
                }
            }
        }
        let intid = best?;
        set_bit(&mut self.pending, intid, false);
        set_bit(&mut self.in_lr, intid, true);
        let hw = bit(&self.hw, intid).then_some(intid);
        Some(lr_pending(
            intid,
            self.priority[intid as usize],
            bit(&self.group, intid),
            hw,
        ))
    }

    /// A list register that still holds an interrupt (`lr`, read back from the hardware
    /// at a trap): if the model latched the same interrupt again meanwhile, the value to
    /// write back so the new edge is not lost, and the latch is consumed.
    ///
    /// The case this exists for: the guest's timer fires again while the guest is still
    /// in its handler for the previous tick (it re-armed a deadline that passed before
    /// its EOI, which TCG makes common). EL2 masks the timer and raises 27, but 27's LR
    /// is active, so the raise stays in the model; the guest's EOI then empties the LR
    /// without a trap, and with the timer masked and the guest in WFI nothing brings EL2
    /// back to inject it: the guest sleeps for ever. Here an active LR becomes pending
    /// and active (state 0b11, IHI 0069 12.4.6), so the guest takes the interrupt again
    /// right after its EOI; a pending one absorbs the edge (two edges before the guest
    /// acknowledged the first are one interrupt, as on a physical GIC). `None` when
    /// nothing was latched, the LR is invalid, or it has HW = 1 (pending and active is
    /// not allowed then; the physical GIC re-signals such interrupts itself).
    pub fn merge_pending(&mut self, lr: u64) -> Option<u64> {
        const LR_STATE_ACTIVE: u8 = 0b10;
        let intid = lr_vintid(lr);
        let state = lr_state(lr);
        if intid >= INTID_LIMIT
            || state == 0
            || ICH_LR0_EL2::HW.is_set(lr)
            || !bit(&self.in_lr, intid)
            || !bit(&self.pending, intid)
        {
            return None;
        }
        set_bit(&mut self.pending, intid, false);
        // Only an active LR takes the edge as pending and active. A pending one (or one
        // pending and active already) absorbs it: the CPU interface signals only LRs
        // in state pending (QEMU's `hppvi_index` skips any other), so a pending LR made
        // pending and active would never be taken, its interrupt lost for good.
        (state == LR_STATE_ACTIVE).then_some(
            (lr & !ICH_LR0_EL2::State::SET.value) | ICH_LR0_EL2::State::PendingAndActive.value,
        )
    }

    /// An LR the hardware emptied (its state read 00 in ICH_ELRSR_EL2 after the guest's
    /// EOI): its vINTID may be injected again. `lr` is the value read back from the LR.
    pub fn lr_retired(&mut self, lr: u64) {
        let intid = lr_vintid(lr);
        if intid < INTID_LIMIT {
            set_bit(&mut self.in_lr, intid, false);
        }
    }
}

fn check(intid: u32) -> Result<(), VgicError> {
    if intid < INTID_LIMIT {
        Ok(())
    } else {
        Err(VgicError::NoSuchInterrupt(intid))
    }
}

fn bit(words: &[u32; WORDS], intid: u32) -> bool {
    words[(intid / 32) as usize] & (1 << (intid % 32)) != 0
}

fn set_bit(words: &mut [u32; WORDS], intid: u32, on: bool) {
    let word = &mut words[(intid / 32) as usize];
    if on {
        *word |= 1 << (intid % 32);
    } else {
        *word &= !(1 << (intid % 32));
    }
}

fn half(value: u64, offset: usize, size: u8) -> u64 {
    match (size, offset % 8) {
        (8, _) => value,
        (_, 0) => value & 0xFFFF_FFFF,
        _ => value >> 32,
    }
}

/// `ICH_LR<n>_EL2` for a pending virtual interrupt (IHI 0069 12.4.6; fields from
/// `aarch64-cpu`'s `ICH_LR0_EL2`): State = pending, Group, Priority, vINTID, and with
/// `hw = Some(pintid)` HW = 1 and pINTID so the guest's deactivation reaches the
/// physical interrupt.
pub fn lr_pending(vintid: u32, priority: u8, group1: bool, hw: Option<u32>) -> u64 {
    let mut value = (ICH_LR0_EL2::State::Pending
        + ICH_LR0_EL2::Priority.val(u64::from(priority))
        + ICH_LR0_EL2::vINTID.val(u64::from(vintid)))
    .value;
    if group1 {
        value |= ICH_LR0_EL2::Group::SET.value;
    }
    if let Some(pintid) = hw {
        value |= (ICH_LR0_EL2::HW::SET + ICH_LR0_EL2::pINTID.val(u64::from(pintid))).value;
    }
    value
}

/// The vINTID of a list-register value.
pub fn lr_vintid(lr: u64) -> u32 {
    ICH_LR0_EL2::vINTID.read(lr) as u32
}

/// A list register's state (bits 63:62): 0 invalid, 1 pending, 2 active, 3 both.
pub fn lr_state(lr: u64) -> u8 {
    ICH_LR0_EL2::State.read(lr) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MPIDR of core 0 as QEMU reports it (bit 31 RES1).
    const MPIDR0: u64 = 0x8000_0000;

    #[test]
    fn offsets_from_arm_gic_match_the_specification() {
        // IHI 0069 12.8 / 12.10 / 12.11 tables.
        assert_eq!(
            (gicd::CTLR, gicd::TYPER, gicd::IIDR, gicd::TYPER2),
            (0, 4, 8, 0xC)
        );
        assert_eq!(
            (gicd::IGROUPR, gicd::ISENABLER, gicd::ICENABLER),
            (0x80, 0x100, 0x180)
        );
        assert_eq!(
            (
                gicd::ISPENDR,
                gicd::ICPENDR,
                gicd::ISACTIVER,
                gicd::ICACTIVER
            ),
            (0x200, 0x280, 0x300, 0x380)
        );
        assert_eq!(
            (gicd::IPRIORITYR, gicd::ICFGR, gicd::IGRPMODR),
            (0x400, 0xC00, 0xD00)
        );
        assert_eq!(
            (gicd::IROUTER, gicd::PIDR2, gicd::SIZE),
            (0x6100, 0xFFE8, 0x10000)
        );
        assert_eq!(
            (
                gicr::CTLR,
                gicr::IIDR,
                gicr::TYPER,
                gicr::WAKER,
                gicr::PIDR2
            ),
            (0, 4, 8, 0x14, 0xFFE8)
        );
        assert_eq!(
            (gicr::IGROUPR0, gicr::ISENABLER0, gicr::ICENABLER0),
            (0x10080, 0x10100, 0x10180)
        );
        assert_eq!(
            (gicr::ICACTIVER0, gicr::IPRIORITYR, gicr::ICFGR),
            (0x10380, 0x10400, 0x10C00)
        );
        assert_eq!(gicr::SIZE, 0x20000);
    }

    /// Linux 6.1's GIC probe and init, in the order LINUX-GUESTS.md lists.
    fn linux_boot(gic: &mut Vgic) {
        assert_eq!(gic.dist_read(0xFFE8, 4), 0x3B);
        assert_eq!(gic.dist_read(0x4, 4), 0x0048_0002);
        assert_eq!(gic.dist_read(0x8, 4), 0x0300_043B);
        assert_eq!(gic.dist_read(0xC, 4), 0);
        assert_eq!(gic.redist_read(0xFFE8, 4), 0x3B);
        let typer = gic.redist_read(0x8, 8);
        assert_ne!(
            typer & GICR_TYPER_LAST,
            0,
            "without Last Linux walks past the frame"
        );
        gic.dist_write(0, 4, 0);
        assert_eq!(gic.dist_read(0, 4) & (1 << 31), 0, "RWP clear");
        for n in 1..3 {
            gic.dist_write(0x80 + 4 * n, 4, 0xFFFF_FFFF);
        }
        for n in 2..6 {
            gic.dist_write(0xC00 + 4 * n, 4, 0);
        }
        for intid in (32..96).step_by(4) {
            gic.dist_write(0x400 + intid, 4, 0xA0A0_A0A0);
        }
        for n in 1..3 {
            gic.dist_write(0x380 + 4 * n, 4, 0xFFFF_FFFF);
            gic.dist_write(0x180 + 4 * n, 4, 0xFFFF_FFFF);
        }
        gic.dist_write(0, 4, 0x13);
        for intid in 32..96 {
            gic.dist_write(0x6000 + 8 * intid, 8, 0);
        }
        // Wake the redistributor: clear ProcessorSleep, poll ChildrenAsleep.
        let waker = gic.redist_read(0x14, 4);
        gic.redist_write(0x14, 4, waker & !0x2);
        assert_eq!(gic.redist_read(0x14, 4) & 0x4, 0);
        gic.redist_write(0x10080, 4, 0xFFFF_FFFF);
        gic.redist_write(0x10380, 4, 0xFFFF_FFFF);
        gic.redist_write(0x10180, 4, 0xFFFF_FFFF);
        for n in 0..8 {
            gic.redist_write(0x10400 + 4 * n, 4, 0xA0A0_A0A0);
        }
        gic.redist_write(0x10100, 4, 0x7F);
        gic.redist_write(0x10100, 4, 1 << VTIMER_PPI);
    }

    #[test]
    fn linux_boot_sequence_reads_what_worked_and_enables_the_timer() {
        let mut gic = Vgic::new(MPIDR0);
        assert_eq!(gic.redist_read(0x14, 4), 0x6, "WAKER resets asleep");
        linux_boot(&mut gic);
        assert_eq!(gic.dist_read(0, 4), 0x53, "stored 0x13 | DS");
        assert_eq!(gic.redist_read(0x10C00, 4), 0xAAAA_AAAA);
        assert!(gic.is_enabled(VTIMER_PPI) && gic.is_enabled(6) && !gic.is_enabled(7));
        assert_eq!(
            gic.ignored(),
            Ignored::default(),
            "Linux's boot touches only modelled registers"
        );
    }

    #[test]
    fn gicr_typer_carries_the_vcpu_affinity_and_last() {
        let gic = &mut Vgic::new(0x8000_0000 | (0x12 << 32) | 0x03_0201);
        assert_eq!(gic.redist_read(0x8, 8), 0x1203_0201_0000_0010);
        // 32-bit halves are allowed too.
        assert_eq!(gic.redist_read(0x8, 4), 0x10);
        assert_eq!(gic.redist_read(0xC, 4), 0x1203_0201);
    }

    #[test]
    fn timer_ppi_becomes_a_hardware_lr_with_the_guest_priority() {
        let mut gic = Vgic::new(MPIDR0);
        linux_boot(&mut gic);
        gic.set_hardware(VTIMER_PPI, true).unwrap();
        let raised = gic.raise(VTIMER_PPI).unwrap();
        assert_eq!(
            raised,
            Raised {
                deliverable: true,
                priority: 0xA0,
                group1: true
            }
        );
        let lr = gic.next_lr().unwrap();
        // State pending (63:62 = 01), HW (61), Group 1 (60), priority 0xA0, pINTID 27, vINTID 27.
        assert_eq!(
            lr,
            (1 << 62) | (1 << 61) | (1 << 60) | (0xA0 << 48) | (27 << 32) | 27
        );
        assert_eq!((lr_state(lr), lr_vintid(lr)), (1, 27));
        // While it sits in an LR, another tick waits in the model instead of a second LR.
        gic.raise(VTIMER_PPI).unwrap();
        assert_eq!(gic.next_lr(), None);
        assert_eq!(
            gic.redist_read(0x10200, 4) & (1 << 27),
            1 << 27,
            "ISPENDR0 shows it"
        );
        gic.lr_retired(lr & !(3 << 62));
        assert_eq!(gic.next_lr(), Some(lr));
    }

    #[test]
    fn a_tick_raised_while_its_lr_is_active_becomes_pending_and_active() {
        let mut gic = Vgic::new(MPIDR0);
        linux_boot(&mut gic);
        gic.raise(VTIMER_PPI).unwrap();
        let lr = gic.next_lr().unwrap();
        // Nothing latched: nothing to merge.
        assert_eq!(gic.merge_pending(lr), None);
        // The guest acknowledged it (active), then the timer fired again.
        let active = (lr & !(3 << 62)) | (2 << 62);
        gic.raise(VTIMER_PPI).unwrap();
        let merged = gic.merge_pending(active).unwrap();
        assert_eq!(lr_state(merged), 3);
        assert_eq!(
            merged & !(3 << 62),
            lr & !(3 << 62),
            "only the state changes"
        );
        assert!(!gic.is_pending(VTIMER_PPI), "the latch is consumed");
        assert_eq!(gic.merge_pending(merged), None);
        // Raised again while still pending in its LR: absorbed, not a second interrupt,
        // and the LR left pending (pending and active would never be signalled).
        gic.raise(VTIMER_PPI).unwrap();
        assert_eq!(gic.merge_pending(lr), None);
        assert!(!gic.is_pending(VTIMER_PPI));
        // An emptied LR or a hardware one is left alone.
        gic.raise(VTIMER_PPI).unwrap();
        assert_eq!(gic.merge_pending(lr & !(3 << 62)), None);
        gic.set_hardware(VTIMER_PPI, true).unwrap();
        assert_eq!(gic.merge_pending(active | (1 << 61)), None);
        assert!(gic.is_pending(VTIMER_PPI));
    }

    #[test]
    fn disabled_or_group_off_interrupts_stay_pending_until_enabled() {
        let mut gic = Vgic::new(MPIDR0);
        linux_boot(&mut gic);
        // The UART's SPI (33 on QEMU virt) before the console opens it.
        let raised = gic.raise(33).unwrap();
        assert!(!raised.deliverable);
        assert_eq!(gic.next_lr(), None);
        assert!(gic.is_pending(33));
        let effect = gic.dist_write(0x104, 4, 1 << 1);
        assert_eq!(
            effect,
            WriteEffect {
                first_intid: 32,
                enabled: 2,
                disabled: 0
            }
        );
        assert_eq!(gic.next_lr(), Some(lr_pending(33, 0xA0, true, None)));
        assert!(!gic.is_pending(33));
        // Group 1 disabled in GICD_CTLR: nothing is delivered.
        gic.dist_write(0, 4, 0x10);
        gic.raise(VTIMER_PPI).unwrap();
        assert_eq!(gic.next_lr(), None);
        gic.dist_write(0, 4, 0x13);
        assert_eq!(lr_vintid(gic.next_lr().unwrap()), VTIMER_PPI);
    }

    #[test]
    fn uart_spi_setup_as_linux_does_it_when_init_opens_the_console() {
        let mut gic = Vgic::new(MPIDR0);
        linux_boot(&mut gic);
        // ICFGR2 (SPIs 32-47): bit 3 is SPI 33's edge bit; Linux configures the UART's
        // interrupt as level (the pair 0b00), as the device tree says.
        gic.dist_write(0xC08, 4, 0x8);
        assert_eq!(gic.dist_read(0xC08, 4), 0x8);
        gic.dist_write(0xC08, 4, 0);
        assert_eq!(gic.dist_read(0xC08, 4), 0);
        // IROUTER33 <- the boot CPU's affinity, then enable, disable, enable.
        gic.dist_write(0x6000 + 8 * 33, 8, MPIDR0 & 0xFF_00FF_FFFF);
        assert_eq!(gic.dist_write(0x104, 4, 1 << 1).enabled, 1 << 1);
        assert_eq!(gic.dist_write(0x184, 4, 1 << 1).disabled, 1 << 1);
        assert_eq!(gic.dist_write(0x104, 4, 1 << 1).enabled, 1 << 1);
        assert!(gic.raise(33).unwrap().deliverable);
        assert_eq!(gic.next_lr(), Some(lr_pending(33, 0xA0, true, None)));
        assert_eq!(gic.ignored(), Ignored::default());
    }

    #[test]
    fn full_lrs_leave_the_rest_pending_in_priority_order() {
        let mut gic = Vgic::new(MPIDR0);
        linux_boot(&mut gic);
        gic.dist_write(0x104, 4, 0xF);
        // Byte writes to IPRIORITYR: 34 most urgent, then 32 and 33 (tie: lower ID), 35.
        for (intid, prio) in [(32u64, 0x80u64), (33, 0x80), (34, 0x40), (35, 0xC0)] {
            gic.dist_write(0x400 + intid, 1, prio);
        }
        for intid in 32..36 {
            gic.raise(intid).unwrap();
        }
        // Two LRs free: 34 and 32 go in, 33 and 35 wait.
        let order: [u32; 2] = [
            lr_vintid(gic.next_lr().unwrap()),
            lr_vintid(gic.next_lr().unwrap()),
        ];
        assert_eq!(order, [34, 32]);
        assert!(gic.is_pending(33) && gic.is_pending(35));
        gic.lr_retired(lr_pending(34, 0x40, true, None) & !(3 << 62));
        assert_eq!(lr_vintid(gic.next_lr().unwrap()), 33);
        assert_eq!(lr_vintid(gic.next_lr().unwrap()), 35);
        assert_eq!(gic.next_lr(), None);
    }

    #[test]
    fn spi_routed_elsewhere_is_not_delivered() {
        let mut gic = Vgic::new(MPIDR0);
        linux_boot(&mut gic);
        gic.dist_write(0x104, 4, 1);
        gic.dist_write(0x6100, 8, 0x1); // Aff0 = 1: another (absent) PE.
        assert!(!gic.raise(32).unwrap().deliverable);
        // Upper half written alone, then lower: IRM = 1 routes to "any".
        gic.dist_write(0x6104, 4, 0);
        gic.dist_write(0x6100, 4, 1 << 31);
        assert_eq!(gic.dist_read(0x6100, 8), 1 << 31);
        assert!(gic.raise(32).unwrap().deliverable);
    }

    #[test]
    fn widths_ranges_and_reserved_offsets_are_raz_wi_and_counted() {
        let mut gic = Vgic::new(MPIDR0);
        // 16-bit and 64-bit accesses to a 32-bit register.
        assert_eq!(gic.dist_read(0x4, 2), 0);
        assert_eq!(gic.dist_read(0x0, 8), 0);
        // Byte access to ISENABLER, misaligned word.
        gic.dist_write(0x104, 1, 0xFF);
        assert_eq!(gic.dist_read(0x102, 4), 0);
        assert_eq!(
            gic.ignored(),
            Ignored {
                unknown: 0,
                bad_width: 4
            }
        );
        assert!(!gic.is_enabled(32));
        // Reserved offsets and beyond the frames.
        assert_eq!(gic.dist_read(0x10, 4), 0);
        gic.redist_write(0x10800, 4, 1);
        assert_eq!(gic.dist_read(0x1_0000, 4), 0);
        assert_eq!(gic.redist_read(u64::MAX, 4), 0);
        assert_eq!(gic.ignored().unknown, 4);
        // Defined but RAZ/WI: GICD word 0 under ARE, SPIs past ours, IGRPMODR.
        gic.dist_write(0x100, 4, 0xFFFF_FFFF);
        assert!(!gic.is_enabled(0));
        gic.dist_write(0x10C, 4, 0xFFFF_FFFF);
        assert_eq!(gic.dist_read(0x10C, 4), 0);
        assert_eq!(gic.dist_read(0xD04, 4), 0);
        gic.dist_write(0x400, 1, 0xFF);
        assert_eq!(gic.dist_read(0x400, 1), 0);
        assert_eq!(gic.dist_read(0x6000 + 8 * 96, 8), 0);
        assert_eq!(
            gic.ignored(),
            Ignored {
                unknown: 4,
                bad_width: 4
            }
        );
        // ICFGR0 is read-only; ICFGR1 keeps only the edge bits.
        gic.redist_write(0x10C00, 4, 0);
        gic.redist_write(0x10C04, 4, 0xFFFF_FFFF);
        assert_eq!(
            (gic.redist_read(0x10C00, 4), gic.redist_read(0x10C04, 4)),
            (0xAAAA_AAAA, 0xAAAA_AAAA)
        );
    }

    #[test]
    fn priority_bytes_and_words_agree_and_pending_active_registers_work() {
        let mut gic = Vgic::new(MPIDR0);
        gic.redist_write(0x10400 + 24, 4, 0x4433_2211);
        assert_eq!(gic.redist_read(0x10400 + 27, 1), 0x44);
        gic.redist_write(0x10400 + 25, 1, 0x99);
        assert_eq!(gic.redist_read(0x10400 + 24, 4), 0x4433_9911);
        gic.redist_write(0x10200, 4, 1 << 3);
        assert!(gic.is_pending(3));
        gic.redist_write(0x10280, 4, 1 << 3);
        assert!(!gic.is_pending(3));
        gic.dist_write(0x304, 4, 0x10);
        assert_eq!(gic.dist_read(0x384, 4), 0x10);
        gic.dist_write(0x384, 4, 0x10);
        assert_eq!(gic.dist_read(0x304, 4), 0);
        let effect = gic.redist_write(0x10180, 4, 0xFFFF_FFFF);
        assert_eq!(effect, WriteEffect::default(), "nothing was enabled");
    }

    #[test]
    fn refused_ids() {
        let mut gic = Vgic::new(MPIDR0);
        assert_eq!(gic.raise(96), Err(VgicError::NoSuchInterrupt(96)));
        assert_eq!(
            gic.set_hardware(1, true),
            Err(VgicError::NotHardwareCapable(1))
        );
        assert_eq!(
            gic.set_hardware(1020, true),
            Err(VgicError::NoSuchInterrupt(1020))
        );
    }

    #[test]
    fn lr_encoding_without_hw_and_group_0() {
        let lr = lr_pending(1, 0xF8, false, None);
        assert_eq!(lr, (1 << 62) | (0xF8 << 48) | 1);
    }
}
