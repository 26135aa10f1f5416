//! ESR_EL2 decoding for the traps the hypervisor handles, and the register values that
//! reflect a synchronous external abort into a guest's EL1.
//!
//! Field positions are from the Arm ARM (DDI 0487, D24.2.40 "ESR_EL2"): the exception
//! class, IL and ISS come from `aarch64-cpu`'s `ESR_EL2` bitfields; the ISS sub-fields
//! per class (data abort, HVC/SMC, WF*, MSR/MRS trap) are not in `aarch64-cpu` and are
//! written here as constants with their section.

use aarch64_cpu::registers::ESR_EL2;

/// Exception classes this module decodes (ESR_ELx.EC, Arm ARM D24.2.40, table "EC").
pub mod ec {
    /// Unknown reason: an undefined instruction, or a trapped one with no class of its own.
    pub const UNKNOWN: u8 = 0x00;
    /// A trapped WFI or WFE (HCR_EL2.TWI/TWE).
    pub const WFX: u8 = 0x01;
    /// HVC from AArch64.
    pub const HVC64: u8 = 0x16;
    /// SMC from AArch64 (trapped by HCR_EL2.TSC).
    pub const SMC64: u8 = 0x17;
    /// A trapped MSR, MRS or system instruction from AArch64.
    pub const SYSREG: u8 = 0x18;
    /// Instruction abort from a lower exception level.
    pub const IABT_LOWER: u8 = 0x20;
    /// Instruction abort taken without a change of exception level.
    pub const IABT_CURRENT: u8 = 0x21;
    /// Data abort from a lower exception level.
    pub const DABT_LOWER: u8 = 0x24;
    /// Data abort taken without a change of exception level.
    pub const DABT_CURRENT: u8 = 0x25;
}

// ISS for a data abort (Arm ARM D24.2.40, "ISS encoding for an exception from a Data Abort").
const ISS_ISV: u32 = 1 << 24;
const ISS_SAS_SHIFT: u32 = 22;
const ISS_SSE: u32 = 1 << 21;
const ISS_SRT_SHIFT: u32 = 16;
const ISS_SF: u32 = 1 << 15;
const ISS_FNV: u32 = 1 << 10;
const ISS_EA: u32 = 1 << 9;
const ISS_S1PTW: u32 = 1 << 7;
const ISS_WNR: u32 = 1 << 6;
const ISS_FSC_MASK: u32 = 0x3F;

// ISS for a trapped MSR/MRS (Arm ARM D24.2.40, "ISS encoding for an exception from MSR,
// MRS, or System instruction execution in AArch64 state").
const SYSREG_OP0_SHIFT: u32 = 20;
const SYSREG_OP2_SHIFT: u32 = 17;
const SYSREG_OP1_SHIFT: u32 = 14;
const SYSREG_CRN_SHIFT: u32 = 10;
const SYSREG_RT_SHIFT: u32 = 5;
const SYSREG_CRM_SHIFT: u32 = 1;
const SYSREG_READ: u32 = 1;

/// Fault status codes (ESR_ELx.DFSC/IFSC, Arm ARM D24.2.40) the decoder tells apart.
pub mod fsc {
    /// Translation fault, levels 0-3 are 0x04-0x07.
    pub const TRANSLATION_L0: u8 = 0x04;
    /// Access flag fault, levels 0-3 are 0x08-0x0B.
    pub const ACCESS_FLAG_L0: u8 = 0x08;
    /// Permission fault, levels 0-3 are 0x0C-0x0F.
    pub const PERMISSION_L0: u8 = 0x0C;
    /// Synchronous external abort, not on a translation table walk.
    pub const EXTERNAL: u8 = 0x10;
}

/// Register number 31 in SRT/Rt: XZR, which reads 0 and discards writes.
pub const XZR: u8 = 31;

/// A guest load or store the hypervisor can emulate: the data abort had ISV = 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioAccess {
    /// The intermediate physical address accessed (HPFAR_EL2's page, FAR_EL2's offset).
    pub ipa: u64,
    /// Access size in bytes: 1, 2, 4 or 8 (SAS).
    pub size: u8,
    /// A store (WnR).
    pub write: bool,
    /// The general register transferred, 0-30, or 31 for XZR (SRT).
    pub reg: u8,
    /// A load that sign-extends to the register's width (SSE).
    pub sign_extend: bool,
    /// The register is the 64-bit X form, not W (SF).
    pub sixty_four: bool,
}

impl MmioAccess {
    /// The bytes a store writes, from the value of `x[reg]`: the low `size` bytes, and 0
    /// for XZR (register 31 in a load/store is XZR, not SP).
    pub fn store_value(&self, reg_value: u64) -> u64 {
        if self.reg == XZR {
            return 0;
        }
        reg_value & size_mask(self.size)
    }

    /// What a load writes back: `Some((reg, value))` with the device's `raw` value
    /// truncated to the access size, sign-extended if SSE, and cut to 32 bits for a W
    /// register (writes to Wn zero the upper half); `None` for XZR (the value is dropped).
    pub fn load_result(&self, raw: u64) -> Option<(u8, u64)> {
        if self.reg == XZR {
            return None;
        }
        let bits = u32::from(self.size) * 8;
        let mut value = raw & size_mask(self.size);
        if self.sign_extend && bits < 64 {
            let shift = 64 - bits;
            value = (((value << shift) as i64) >> shift) as u64;
        }
        if !self.sixty_four {
            value &= 0xFFFF_FFFF;
        }
        Some((self.reg, value))
    }
}

fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

/// Why a data abort cannot be emulated: the hypervisor reflects it into the guest as a
/// synchronous external abort ([`external_abort`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotEmulable {
    /// ISV = 0: no syndrome (a load/store pair, writeback, SIMD, atomics...). Emulating
    /// it would need decoding the instruction from guest memory; iqdio refuses instead.
    NoSyndrome,
    /// FnV = 1: FAR_EL2 does not hold the address, so the access's offset is unknown.
    FarNotValid,
    /// The fault happened on the guest's own stage-1 table walk (S1PTW): its page tables
    /// point outside its RAM.
    StageOneWalk,
    /// A fault status other than translation, access flag or permission (DFSC given):
    /// an external abort, alignment, TLB conflict...
    FaultStatus(u8),
}

/// A trapped MSR/MRS (EC 0x18), named by its encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SysRegAccess {
    /// op0.
    pub op0: u8,
    /// op1.
    pub op1: u8,
    /// CRn.
    pub crn: u8,
    /// CRm.
    pub crm: u8,
    /// op2.
    pub op2: u8,
    /// The general register, 31 = XZR.
    pub rt: u8,
    /// MRS (a read into `rt`); false for MSR.
    pub read: bool,
}

/// One trap from a guest, decoded from ESR_EL2 (with FAR_EL2 and HPFAR_EL2 for aborts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trap {
    /// EC 0x24 with ISV = 1 and a stage-2 translation, access-flag or permission fault:
    /// emulate, write back a load's register, ELR_EL2 += 4.
    Mmio(MmioAccess),
    /// EC 0x24 the hypervisor cannot emulate: reflect as an external abort at `ipa`
    /// (`ipa` is `None` when HPFAR/FAR are not valid for this fault).
    DataAbort {
        /// Why it cannot be emulated.
        reason: NotEmulable,
        /// The IPA when known.
        ipa: Option<u64>,
        /// The access was a store, as far as the syndrome tells (WnR).
        write: bool,
    },
    /// EC 0x20: the guest fetched an instruction from an IPA it has no memory at.
    InstructionAbort {
        /// The fault status (IFSC).
        fsc: u8,
    },
    /// EC 0x16: HVC #imm; ELR_EL2 already points past it.
    Hvc {
        /// The immediate.
        imm: u16,
    },
    /// EC 0x17: SMC #imm trapped by HCR_EL2.TSC; ELR_EL2 is the SMC itself (add 4).
    Smc {
        /// The immediate.
        imm: u16,
    },
    /// EC 0x01: WFI or WFE trapped by HCR_EL2.TWI/TWE; ELR_EL2 is the instruction (add 4).
    Wfx {
        /// WFE (or WFET); false for WFI (or WFIT).
        wfe: bool,
    },
    /// EC 0x18: a trapped system-register access.
    SysReg(SysRegAccess),
    /// EC 0x00: an undefined or unallocated instruction reached EL2.
    Unknown,
    /// Any other class: the raw EC and ISS, for the hypervisor to report.
    Other {
        /// The exception class.
        ec: u8,
        /// The instruction-specific syndrome.
        iss: u32,
    },
}

/// The IPA of a stage-2 abort: HPFAR_EL2.FIPA (bits 43:4, IPA bits 51:12; Arm ARM
/// D24.2.64) with the page offset from FAR_EL2.
pub fn fault_ipa(far_el2: u64, hpfar_el2: u64) -> u64 {
    let fipa = (hpfar_el2 >> 4) & ((1 << 40) - 1);
    (fipa << 12) | (far_el2 & 0xFFF)
}

/// Decodes one trap. `far_el2` and `hpfar_el2` are only read for aborts.
pub fn decode(esr_el2: u64, far_el2: u64, hpfar_el2: u64) -> Trap {
    let class = ESR_EL2::EC.read(esr_el2) as u8;
    let iss = ESR_EL2::ISS.read(esr_el2) as u32;
    match class {
        ec::DABT_LOWER => decode_data_abort(iss, far_el2, hpfar_el2),
        ec::IABT_LOWER => Trap::InstructionAbort {
            fsc: (iss & ISS_FSC_MASK) as u8,
        },
        ec::HVC64 => Trap::Hvc { imm: iss as u16 },
        ec::SMC64 => Trap::Smc { imm: iss as u16 },
        // TI, bits 1:0: 0b00 WFI, 0b01 WFE, 0b10 WFIT, 0b11 WFET.
        ec::WFX => Trap::Wfx { wfe: iss & 1 == 1 },
        ec::SYSREG => Trap::SysReg(SysRegAccess {
            op0: ((iss >> SYSREG_OP0_SHIFT) & 0x3) as u8,
            op2: ((iss >> SYSREG_OP2_SHIFT) & 0x7) as u8,
            op1: ((iss >> SYSREG_OP1_SHIFT) & 0x7) as u8,
            crn: ((iss >> SYSREG_CRN_SHIFT) & 0xF) as u8,
            rt: ((iss >> SYSREG_RT_SHIFT) & 0x1F) as u8,
            crm: ((iss >> SYSREG_CRM_SHIFT) & 0xF) as u8,
            read: iss & SYSREG_READ != 0,
        }),
        ec::UNKNOWN => Trap::Unknown,
        _ => Trap::Other { ec: class, iss },
    }
}

fn decode_data_abort(iss: u32, far_el2: u64, hpfar_el2: u64) -> Trap {
    let write = iss & ISS_WNR != 0;
    let dfsc = (iss & ISS_FSC_MASK) as u8;
    // HPFAR_EL2 is valid for translation, access flag and permission faults on stage 2
    // (Arm ARM D24.2.64); every other status leaves the IPA unknown.
    let stage2_fault = matches!(
        dfsc & !0x3,
        fsc::TRANSLATION_L0 | fsc::ACCESS_FLAG_L0 | fsc::PERMISSION_L0
    );
    let far_valid = iss & ISS_FNV == 0;
    let ipa = (stage2_fault && far_valid).then(|| fault_ipa(far_el2, hpfar_el2));
    let refuse = |reason| Trap::DataAbort { reason, ipa, write };
    if !stage2_fault || iss & ISS_EA != 0 {
        return refuse(NotEmulable::FaultStatus(dfsc));
    }
    if iss & ISS_S1PTW != 0 {
        return refuse(NotEmulable::StageOneWalk);
    }
    if iss & ISS_ISV == 0 {
        return refuse(NotEmulable::NoSyndrome);
    }
    let Some(ipa) = ipa else {
        return refuse(NotEmulable::FarNotValid);
    };
    Trap::Mmio(MmioAccess {
        ipa,
        size: 1 << ((iss >> ISS_SAS_SHIFT) & 0x3),
        write,
        reg: ((iss >> ISS_SRT_SHIFT) & 0x1F) as u8,
        sign_extend: iss & ISS_SSE != 0,
        sixty_four: iss & ISS_SF != 0,
    })
}

/// Which kind of abort to reflect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortKind {
    /// A load or store (EC 0x24/0x25 in ESR_EL1).
    Data,
    /// An instruction fetch (EC 0x20/0x21 in ESR_EL1).
    Instruction,
}

/// The guest state at the trap that [`external_abort`] needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestContext {
    /// SPSR_EL2 as trapped: the guest's PSTATE.
    pub spsr_el2: u64,
    /// ELR_EL2 as trapped: the faulting instruction for an abort.
    pub elr_el2: u64,
    /// FAR_EL2: the virtual address the guest accessed.
    pub far_el2: u64,
    /// The guest's VBAR_EL1.
    pub vbar_el1: u64,
    /// The guest's SCTLR_EL1 (SPAN and DSSBS decide PAN and SSBS on entry).
    pub sctlr_el1: u64,
}

/// Register values that deliver a synchronous external abort to the guest's EL1, as an
/// exception entry would (Arm ARM D1.3.1, "Exception entry"; Linux's KVM does the same in
/// `inject_abt64`/`enter_exception64`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortInjection {
    /// ESR_EL1: EC for the guest's level, IL = 1, FSC 0x10 (synchronous external abort).
    pub esr_el1: u64,
    /// FAR_EL1 = the faulting virtual address.
    pub far_el1: u64,
    /// ELR_EL1 = the faulting instruction.
    pub elr_el1: u64,
    /// SPSR_EL1 = the guest's PSTATE at the fault.
    pub spsr_el1: u64,
    /// The new ELR_EL2: VBAR_EL1 plus the synchronous vector offset for the guest's level.
    pub elr_el2: u64,
    /// The new SPSR_EL2: EL1h with D, A, I, F masked, PAN and SSBS as SCTLR_EL1 says.
    pub spsr_el2: u64,
}

/// Why [`external_abort`] cannot build an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InjectError {
    /// The guest was in AArch32 (SPSR.M\[4\] = 1) or at a level iqdio does not run guests
    /// at (EL2/EL3 encodings): iqdio's guests are AArch64 EL1/EL0 only.
    UnsupportedMode(u8),
}

// SPSR.M[3:0] (Arm ARM C5.2.19 SPSR_EL2): EL0t, EL1t, EL1h.
const M_EL0T: u64 = 0b0000;
const M_EL1T: u64 = 0b0100;
const M_EL1H: u64 = 0b0101;
const M_AARCH32: u64 = 1 << 4;
// PSTATE bits kept in SPSR (Arm ARM C5.2.19).
const SPSR_DAIF: u64 = 0xF << 6;
const SPSR_SSBS: u64 = 1 << 12;
const SPSR_PAN: u64 = 1 << 22;
const SPSR_DIT: u64 = 1 << 24;
// SCTLR_EL1.SPAN (bit 23, RES1 without FEAT_PAN) and DSSBS (bit 44, RES0 without SSBS).
const SCTLR_SPAN: u64 = 1 << 23;
const SCTLR_DSSBS: u64 = 1 << 44;
// Vector table offsets (Arm ARM D1.3.2): synchronous from the current EL with SP_EL0,
// current EL with SP_ELx, lower EL in AArch64.
const VECTOR_CURRENT_SP0: u64 = 0x000;
const VECTOR_CURRENT_SPX: u64 = 0x200;
const VECTOR_LOWER_A64: u64 = 0x400;
// ESR_ELx.IL: a 32-bit instruction.
const ESR_IL: u64 = 1 << 25;

/// The register values that reflect a synchronous external abort into the guest: at
/// the same level (EC 0x25/0x21) when the guest was at EL1, from a lower level (EC
/// 0x24/0x20) when it was at EL0. With these written, ERET enters the guest's vector.
pub fn external_abort(
    guest: &GuestContext,
    kind: AbortKind,
) -> Result<AbortInjection, InjectError> {
    let mode = guest.spsr_el2 & 0x1F;
    if mode & M_AARCH32 != 0 {
        return Err(InjectError::UnsupportedMode(mode as u8));
    }
    let (from_el0, offset) = match mode {
        M_EL0T => (true, VECTOR_LOWER_A64),
        M_EL1T => (false, VECTOR_CURRENT_SP0),
        M_EL1H => (false, VECTOR_CURRENT_SPX),
        _ => return Err(InjectError::UnsupportedMode(mode as u8)),
    };
    let class = match (kind, from_el0) {
        (AbortKind::Data, true) => ec::DABT_LOWER,
        (AbortKind::Data, false) => ec::DABT_CURRENT,
        (AbortKind::Instruction, true) => ec::IABT_LOWER,
        (AbortKind::Instruction, false) => ec::IABT_CURRENT,
    };
    let esr_el1 = (u64::from(class) << 26) | ESR_IL | u64::from(fsc::EXTERNAL);
    let mut pstate = M_EL1H | SPSR_DAIF | (guest.spsr_el2 & SPSR_DIT);
    // PAN is set on entry to EL1 when SCTLR_EL1.SPAN is 0 (Arm ARM D1.3.1.4), else kept.
    if guest.sctlr_el1 & SCTLR_SPAN == 0 {
        pstate |= SPSR_PAN;
    } else {
        pstate |= guest.spsr_el2 & SPSR_PAN;
    }
    if guest.sctlr_el1 & SCTLR_DSSBS != 0 {
        pstate |= SPSR_SSBS;
    }
    Ok(AbortInjection {
        esr_el1,
        far_el1: guest.far_el2,
        elr_el1: guest.elr_el2,
        spsr_el1: guest.spsr_el2,
        elr_el2: guest.vbar_el1.wrapping_add(offset),
        spsr_el2: pstate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data abort syndrome as the hardware builds it.
    fn dabt(isv: bool, sas: u32, sse: bool, srt: u32, sf: bool, wnr: bool, dfsc: u32) -> u64 {
        let mut iss = (sas << ISS_SAS_SHIFT) | (srt << ISS_SRT_SHIFT) | dfsc;
        if isv {
            iss |= ISS_ISV;
        }
        if sse {
            iss |= ISS_SSE;
        }
        if sf {
            iss |= ISS_SF;
        }
        if wnr {
            iss |= ISS_WNR;
        }
        (u64::from(ec::DABT_LOWER) << 26) | ESR_IL | u64::from(iss)
    }

    // GICD at IPA 0x0800_0000: HPFAR = IPA >> 12 << 4 (BARE-METAL-NOTES, checked).
    const GICD_HPFAR: u64 = 0x0800_0000 >> 12 << 4;

    #[test]
    fn gicd_pidr2_load_is_a_32_bit_read_of_w_register() {
        // Linux's first GIC access: ldr w1, [x0, #0xffe8], a level-1 translation fault.
        let esr = dabt(true, 2, false, 1, false, false, 0x05);
        let trap = decode(esr, 0xffff_8000_0801_ffe8, GICD_HPFAR + (0xF << 4));
        let Trap::Mmio(access) = trap else {
            panic!("expected MMIO, got {trap:?}");
        };
        assert_eq!(
            access,
            MmioAccess {
                ipa: 0x0800_ffe8,
                size: 4,
                write: false,
                reg: 1,
                sign_extend: false,
                sixty_four: false
            }
        );
        assert_eq!(access.load_result(0xFFFF_FFFF_0000_003B), Some((1, 0x3B)));
    }

    #[test]
    fn irouter_store_is_64_bit_and_store_value_is_the_register() {
        // str x2, [x0, #0x6100] (IROUTER32 <- 0 in Linux's dist init, here with a value).
        let esr = dabt(true, 3, false, 2, true, true, 0x07);
        let Trap::Mmio(access) = decode(esr, 0x6100, GICD_HPFAR + (6 << 4)) else {
            panic!("expected MMIO");
        };
        assert_eq!(
            (access.size, access.write, access.sixty_four, access.ipa),
            (8, true, true, 0x0800_6100)
        );
        assert_eq!(
            access.store_value(0x1234_5678_9abc_def0),
            0x1234_5678_9abc_def0
        );
    }

    #[test]
    fn byte_and_halfword_sizes_mask_and_sign_extend() {
        // strb w3 to the PL011's DR: only the low byte is stored.
        let Trap::Mmio(strb) = decode(dabt(true, 0, false, 3, false, true, 0x06), 0, 0x9000 << 4)
        else {
            panic!("expected MMIO");
        };
        assert_eq!(strb.size, 1);
        assert_eq!(strb.store_value(0x00AB_CD0A), 0x0A);
        // ldrsh x4: a halfword sign-extended to 64 bits.
        let Trap::Mmio(ldrsh) =
            decode(dabt(true, 1, true, 4, true, false, 0x06), 0x18, 0x9000 << 4)
        else {
            panic!("expected MMIO");
        };
        assert_eq!(ldrsh.load_result(0x8001), Some((4, 0xFFFF_FFFF_FFFF_8001)));
        // ldrsh w4: sign-extended to 32 bits, upper half zero.
        let ldrsh_w = MmioAccess {
            sixty_four: false,
            ..ldrsh
        };
        assert_eq!(ldrsh_w.load_result(0x8001), Some((4, 0xFFFF_8001)));
        // ldrh w4: zero-extended, bits above the access dropped.
        let ldrh = MmioAccess {
            sign_extend: false,
            sixty_four: false,
            ..ldrsh
        };
        assert_eq!(ldrh.load_result(0xDEAD_8001), Some((4, 0x8001)));
    }

    #[test]
    fn xzr_loads_are_dropped_and_stores_write_zero() {
        let Trap::Mmio(load) = decode(dabt(true, 2, false, 31, false, false, 0x05), 0, GICD_HPFAR)
        else {
            panic!("expected MMIO");
        };
        assert_eq!(load.reg, XZR);
        assert_eq!(load.load_result(7), None);
        let store = MmioAccess {
            write: true,
            ..load
        };
        assert_eq!(store.store_value(0xFFFF), 0);
    }

    #[test]
    fn isv_zero_is_not_emulable_but_keeps_the_ipa() {
        // ldp / ldr with writeback: ISV = 0 (BARE-METAL-NOTES, checked).
        let trap = decode(
            dabt(false, 0, false, 0, false, false, 0x05),
            0x1234,
            0x4_0000 << 4,
        );
        assert_eq!(
            trap,
            Trap::DataAbort {
                reason: NotEmulable::NoSyndrome,
                ipa: Some(0x4000_0234),
                write: false
            }
        );
    }

    #[test]
    fn other_fault_statuses_and_walks_are_refused() {
        let ext = decode(dabt(true, 2, false, 0, false, true, 0x10), 0, 0);
        assert_eq!(
            ext,
            Trap::DataAbort {
                reason: NotEmulable::FaultStatus(0x10),
                ipa: None,
                write: true
            }
        );
        let walk = decode(
            dabt(true, 2, false, 0, false, false, 0x05) | u64::from(ISS_S1PTW),
            0,
            0x10,
        );
        assert!(matches!(
            walk,
            Trap::DataAbort {
                reason: NotEmulable::StageOneWalk,
                ..
            }
        ));
        let fnv = decode(
            dabt(true, 2, false, 0, false, false, 0x05) | u64::from(ISS_FNV),
            0,
            0x10,
        );
        assert_eq!(
            fnv,
            Trap::DataAbort {
                reason: NotEmulable::FarNotValid,
                ipa: None,
                write: false
            }
        );
        let ea = decode(
            dabt(true, 2, false, 0, false, false, 0x05) | u64::from(ISS_EA),
            0,
            0x10,
        );
        assert!(matches!(
            ea,
            Trap::DataAbort {
                reason: NotEmulable::FaultStatus(0x05),
                ..
            }
        ));
    }

    #[test]
    fn hvc_smc_wfx_unknown_and_other_classes() {
        assert_eq!(decode(0x5A00_0000, 0, 0), Trap::Hvc { imm: 0 });
        assert_eq!(
            decode(0x5E00_0000 | 0x1234, 0, 0),
            Trap::Smc { imm: 0x1234 }
        );
        assert_eq!(decode(0x0600_0000, 0, 0), Trap::Wfx { wfe: false });
        assert_eq!(decode(0x0600_0001, 0, 0), Trap::Wfx { wfe: true });
        assert_eq!(decode(0x0200_0000, 0, 0), Trap::Unknown);
        assert_eq!(
            decode((0x15 << 26) | 7, 0, 0),
            Trap::Other { ec: 0x15, iss: 7 }
        );
        assert_eq!(
            decode((0x20 << 26) | ESR_IL | 0x06, 0, 0),
            Trap::InstructionAbort { fsc: 0x06 }
        );
    }

    #[test]
    fn sysreg_trap_names_apiakeylo_el1_write() {
        // msr APIAKeyLo_EL1, x9: op0 3, op1 0, CRn 2, CRm 1, op2 0 (the trap seen without
        // HCR_EL2.APK, LINUX-GUESTS.md).
        let iss: u32 = (3 << SYSREG_OP0_SHIFT)
            | (2 << SYSREG_CRN_SHIFT)
            | (1 << SYSREG_CRM_SHIFT)
            | (9 << SYSREG_RT_SHIFT);
        let trap = decode((0x18 << 26) | ESR_IL | u64::from(iss), 0, 0);
        assert_eq!(
            trap,
            Trap::SysReg(SysRegAccess {
                op0: 3,
                op1: 0,
                crn: 2,
                crm: 1,
                op2: 0,
                rt: 9,
                read: false
            })
        );
    }

    const KERNEL: GuestContext = GuestContext {
        spsr_el2: 0x3c5,
        elr_el2: 0xffff_8000_0812_3456,
        far_el2: 0xffff_8000_0bad_0000,
        vbar_el1: 0xffff_8000_0801_0800,
        // SCTLR_EL1 at Linux's entry (0x30d00800) has SPAN (bit 23) set: PAN is left as
        // it was.
        sctlr_el1: 0x30d0_0800,
    };

    #[test]
    fn abort_from_el1h_goes_to_current_spx_vector_with_ec_0x25() {
        let entry = external_abort(&KERNEL, AbortKind::Data).unwrap();
        assert_eq!(
            entry,
            AbortInjection {
                esr_el1: 0x9600_0010,
                far_el1: KERNEL.far_el2,
                elr_el1: KERNEL.elr_el2,
                spsr_el1: 0x3c5,
                elr_el2: 0xffff_8000_0801_0a00,
                spsr_el2: 0x3c5,
            }
        );
    }

    #[test]
    fn abort_from_el0_goes_to_lower_el_vector_with_ec_0x24_and_sets_pan_without_span() {
        // A `devmem` in a Linux process: EL0t, interrupts unmasked, PAN clear; Linux
        // clears SPAN once it enables PAN, so entry to EL1 sets PAN.
        let user = GuestContext {
            spsr_el2: 0x0000_0000_2000_0000,
            sctlr_el1: 0x30d0_0800 & !SCTLR_SPAN,
            ..KERNEL
        };
        let entry = external_abort(&user, AbortKind::Data).unwrap();
        assert_eq!(entry.esr_el1, 0x9200_0010);
        assert_eq!(entry.elr_el2, KERNEL.vbar_el1 + 0x400);
        assert_eq!(entry.spsr_el1, 0x2000_0000);
        assert_eq!(entry.spsr_el2, 0x3c5 | SPSR_PAN);
        let fetch = external_abort(&user, AbortKind::Instruction).unwrap();
        assert_eq!(fetch.esr_el1, 0x8200_0010);
    }

    #[test]
    fn abort_from_el1t_uses_sp0_vector_and_keeps_dit_and_ssbs() {
        let el1t = GuestContext {
            spsr_el2: M_EL1T | SPSR_DIT,
            sctlr_el1: KERNEL.sctlr_el1 | SCTLR_DSSBS,
            ..KERNEL
        };
        let entry = external_abort(&el1t, AbortKind::Instruction).unwrap();
        assert_eq!(entry.esr_el1, 0x8600_0010);
        assert_eq!(entry.elr_el2, KERNEL.vbar_el1);
        assert_eq!(entry.spsr_el2, 0x3c5 | SPSR_DIT | SPSR_SSBS);
    }

    #[test]
    fn aarch32_and_el2_modes_are_refused() {
        let a32 = GuestContext {
            spsr_el2: 0x10,
            ..KERNEL
        };
        assert_eq!(
            external_abort(&a32, AbortKind::Data),
            Err(InjectError::UnsupportedMode(0x10))
        );
        let el2h = GuestContext {
            spsr_el2: 0x9,
            ..KERNEL
        };
        assert_eq!(
            external_abort(&el2h, AbortKind::Data),
            Err(InjectError::UnsupportedMode(0x9))
        );
    }
}
