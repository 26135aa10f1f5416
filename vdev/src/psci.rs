//! The SMCCC/PSCI dispatcher for a guest's HVC #0 (the device tree's `/psci` method
//! "hvc"): what Linux 6.1 asks at boot and at poweroff, answered for a guest with one
//! vCPU, and the hypervisor's own calls passed on.
//!
//! Function IDs and return codes are the `smccc` crate's (SMC Calling Convention, DEN
//! 0028; PSCI, DEN 0022). Results are returned in x0 sign-extended to 64 bits, as KVM
//! does; a 32-bit convention caller reads W0.

use smccc::arch::{SMCCC_ARCH_FEATURES, SMCCC_VERSION};
use smccc::psci::{
    PSCI_AFFINITY_INFO_32, PSCI_AFFINITY_INFO_64, PSCI_CPU_OFF, PSCI_CPU_ON_32, PSCI_CPU_ON_64,
    PSCI_FEATURES, PSCI_MIGRATE_INFO_TYPE, PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET, PSCI_VERSION,
};

/// PSCI version 1.1 (major 1 in bits 31:16, minor 1).
pub const PSCI_VERSION_1_1: u64 = 0x1_0001;
/// SMCCC version 1.1: SMCCC_ARCH_FEATURES exists, so Linux asks it before using anything.
pub const SMCCC_VERSION_1_1: u64 = 0x1_0001;
/// MIGRATE_INFO_TYPE 2: no trusted OS that needs migrating (PSCI 5.1.7).
pub const MIGRATE_INFO_NOT_PRESENT: u64 = 2;
/// TRNG_VERSION (DEN 0098): Linux probes for an entropy source; none here.
pub const TRNG_VERSION: u32 = 0x8400_0050;
/// VENDOR_HYP_CALL_UID (owner 6, function 0xFF01): KVM's UID query.
pub const VENDOR_HYP_CALL_UID: u32 = 0x8600_FF01;
/// The start of the SMC64 vendor-specific hypervisor service range (SMCCC owner 6, DEN
/// 0028 table 6-4), `iqdio-hvc`'s base: iqdio's own hypercalls, for the hypervisor's
/// dispatcher (which refuses the IDs it does not define).
pub const IQDIO_HVC_BASE: u32 = iqdio_hvc::VENDOR_HYP_BASE as u32;
/// The last function ID of that range (SMCCC function numbers are 16 bits).
pub const IQDIO_HVC_LAST: u32 = IQDIO_HVC_BASE | 0xFFFF;

// Return codes (PSCI 5.2.2, SMCCC 7.1), as x0 values.
const SUCCESS: u64 = smccc::error::SUCCESS as i64 as u64;
const NOT_SUPPORTED: u64 = smccc::psci::error::NOT_SUPPORTED as i64 as u64;
const INVALID_PARAMETERS: u64 = smccc::psci::error::INVALID_PARAMETERS as i64 as u64;
const DENIED: u64 = smccc::psci::error::DENIED as i64 as u64;
const ALREADY_ON: u64 = smccc::psci::error::ALREADY_ON as i64 as u64;
// AFFINITY_INFO's answer for a core that is on (PSCI 5.1.5).
const AFFINITY_ON: u64 = 0;

/// What the hypervisor does with one HVC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Write this to the guest's x0 and return to it (ELR_EL2 already points past HVC).
    Return(u64),
    /// SYSTEM_OFF: this guest alone ends; the other partitions keep running.
    PowerOff,
    /// SYSTEM_RESET: this guest alone restarts from its image.
    Reset,
    /// Not a PSCI/SMCCC call: the hypervisor's own calls (iqdio's vendor range, or an HVC
    /// immediate other than 0), for its own dispatcher.
    PassOn,
}

/// The calling vCPU: its MPIDR (VMPIDR_EL2), the only core the guest has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Psci {
    mpidr: u64,
}

// MPIDR affinity fields (Aff3 39:32, Aff2-0 23:0) as PSCI's target_cpu carries them.
const MPIDR_AFF_MASK: u64 = 0xFF_00FF_FFFF;

impl Psci {
    /// The dispatcher for a guest whose single vCPU has MPIDR `mpidr`.
    pub const fn new(mpidr: u64) -> Self {
        Self { mpidr }
    }

    fn is_self(&self, target: u64) -> bool {
        target & MPIDR_AFF_MASK == self.mpidr & MPIDR_AFF_MASK
    }

    /// Answers one HVC #`imm` with x0-x3 as the guest passed them. The function ID is
    /// W0 (SMCCC 2.5: the upper half of X0 is ignored); 32-bit convention arguments are
    /// W registers.
    pub fn call(&self, imm: u16, x: [u64; 4]) -> Outcome {
        // SMCCC calls use HVC #0 (DEN 0028 2.5.3); other immediates are not ours.
        if imm != 0 {
            return Outcome::PassOn;
        }
        let fid = x[0] as u32;
        // Bit 30: SMC64/HVC64 convention, 64-bit arguments.
        let arg = |n: usize| {
            if fid & (1 << 30) != 0 {
                x[n]
            } else {
                x[n] & 0xFFFF_FFFF
            }
        };
        let answer = match fid {
            IQDIO_HVC_BASE..=IQDIO_HVC_LAST => return Outcome::PassOn,
            PSCI_SYSTEM_OFF => return Outcome::PowerOff,
            PSCI_SYSTEM_RESET => return Outcome::Reset,
            PSCI_VERSION => PSCI_VERSION_1_1,
            PSCI_MIGRATE_INFO_TYPE => MIGRATE_INFO_NOT_PRESENT,
            PSCI_FEATURES => self.psci_features(arg(1) as u32),
            SMCCC_VERSION => SMCCC_VERSION_1_1,
            SMCCC_ARCH_FEATURES => Self::arch_features(arg(1) as u32),
            // The only vCPU is on: starting it again is ALREADY_ON; any other target does
            // not exist (PSCI 5.1.4: INVALID_PARAMETERS for a bad target_cpu).
            PSCI_CPU_ON_32 | PSCI_CPU_ON_64 => {
                if self.is_self(arg(1)) {
                    ALREADY_ON
                } else {
                    INVALID_PARAMETERS
                }
            }
            PSCI_AFFINITY_INFO_32 | PSCI_AFFINITY_INFO_64 => {
                // Level 0 only (the lowest affinity level is a core).
                if arg(2) == 0 && self.is_self(arg(1)) {
                    AFFINITY_ON
                } else {
                    INVALID_PARAMETERS
                }
            }
            // Turning off the last core is what SYSTEM_OFF is for; PSCI lets an
            // implementation refuse CPU_OFF with DENIED (5.1.3).
            PSCI_CPU_OFF => DENIED,
            _ => NOT_SUPPORTED,
        };
        Outcome::Return(answer)
    }

    /// PSCI_FEATURES (PSCI 5.1.14): 0 for what [`Psci::call`] implements, NOT_SUPPORTED
    /// for the rest (CPU_SUSPEND, SYSTEM_SUSPEND, SYSTEM_RESET2, unknown IDs).
    fn psci_features(&self, queried: u32) -> u64 {
        match queried {
            PSCI_VERSION
            | PSCI_CPU_ON_32
            | PSCI_CPU_ON_64
            | PSCI_CPU_OFF
            | PSCI_AFFINITY_INFO_32
            | PSCI_AFFINITY_INFO_64
            | PSCI_MIGRATE_INFO_TYPE
            | PSCI_SYSTEM_OFF
            | PSCI_SYSTEM_RESET
            | PSCI_FEATURES
            | SMCCC_VERSION => SUCCESS,
            _ => NOT_SUPPORTED,
        }
    }

    /// SMCCC_ARCH_FEATURES (SMCCC 7.3.1): only itself is implemented. The Spectre
    /// workarounds answer NOT_SUPPORTED: Linux then relies on its own mitigations.
    fn arch_features(queried: u32) -> u64 {
        if queried == SMCCC_ARCH_FEATURES {
            SUCCESS
        } else {
            NOT_SUPPORTED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smccc::arch::{SMCCC_ARCH_WORKAROUND_1, SMCCC_ARCH_WORKAROUND_3};
    use smccc::psci::{PSCI_CPU_SUSPEND_64, PSCI_SYSTEM_RESET2_64, PSCI_SYSTEM_SUSPEND_64};

    const MPIDR0: u64 = 0x8000_0000;
    const MINUS_ONE: u64 = u64::MAX;

    fn call(psci: &Psci, x0: u32, x1: u64) -> Outcome {
        psci.call(0, [u64::from(x0), x1, 0, 0])
    }

    #[test]
    fn linux_6_1_boot_calls_in_order_get_the_answers_that_worked() {
        let psci = Psci::new(MPIDR0);
        // (function, argument, answer) in the order LINUX-GUESTS.md lists them.
        let calls: [(u32, u64, u64); 11] = [
            (0x8400_0000, 0, 0x10001),
            (0x8400_0006, 0, 2),
            (0x8400_000A, 0x8000_0000, 0),
            (0x8000_0000, 0, 0x10001),
            (0x8400_0050, 0, MINUS_ONE),
            (0x8400_000A, 0xC400_0001, MINUS_ONE),
            (0x8400_000A, 0xC400_000E, MINUS_ONE),
            (0x8400_000A, 0xC400_0012, MINUS_ONE),
            (0x8600_FF01, 0, MINUS_ONE),
            (0x8000_0001, 0xC500_0020, MINUS_ONE),
            (0x8000_0001, 0x8000_3FFF, MINUS_ONE),
        ];
        for (fid, arg, answer) in calls {
            assert_eq!(
                call(&psci, fid, arg),
                Outcome::Return(answer),
                "function {fid:#x}({arg:#x})"
            );
        }
        // The twelfth, at poweroff.
        assert_eq!(call(&psci, 0x8400_0008, 0), Outcome::PowerOff);
        // The smccc crate's names are the same numbers.
        assert_eq!(
            (
                PSCI_CPU_SUSPEND_64,
                PSCI_SYSTEM_SUSPEND_64,
                PSCI_SYSTEM_RESET2_64,
                SMCCC_ARCH_WORKAROUND_3
            ),
            (0xC400_0001, 0xC400_000E, 0xC400_0012, 0x8000_3FFF)
        );
    }

    #[test]
    fn reset_and_features_of_what_is_implemented() {
        let psci = Psci::new(MPIDR0);
        assert_eq!(call(&psci, PSCI_SYSTEM_RESET, 0), Outcome::Reset);
        for fid in [
            PSCI_CPU_ON_64,
            PSCI_SYSTEM_OFF,
            PSCI_SYSTEM_RESET,
            PSCI_FEATURES,
        ] {
            assert_eq!(
                call(&psci, PSCI_FEATURES, u64::from(fid)),
                Outcome::Return(0)
            );
        }
        assert_eq!(
            call(&psci, PSCI_FEATURES, 0x8400_00FF),
            Outcome::Return(MINUS_ONE)
        );
        assert_eq!(
            call(&psci, SMCCC_ARCH_FEATURES, u64::from(SMCCC_ARCH_FEATURES)),
            Outcome::Return(0)
        );
        assert_eq!(
            call(
                &psci,
                SMCCC_ARCH_FEATURES,
                u64::from(SMCCC_ARCH_WORKAROUND_1)
            ),
            Outcome::Return(MINUS_ONE)
        );
    }

    #[test]
    fn cpu_on_is_already_on_for_self_and_invalid_for_any_other_core() {
        let psci = Psci::new(MPIDR0);
        assert_eq!(call(&psci, PSCI_CPU_ON_64, 0), Outcome::Return(ALREADY_ON));
        assert_eq!(
            call(&psci, PSCI_CPU_ON_64, 1),
            Outcome::Return(INVALID_PARAMETERS)
        );
        assert_eq!(
            call(&psci, PSCI_CPU_ON_64, 0x1_0000_0000),
            Outcome::Return(INVALID_PARAMETERS)
        );
        // 32-bit convention: the upper half of x1 is not part of W1.
        assert_eq!(
            call(&psci, PSCI_CPU_ON_32, 0xFFFF_FFFF_0000_0000),
            Outcome::Return(ALREADY_ON)
        );
        assert_eq!(ALREADY_ON as i64, -4);
        assert_eq!(INVALID_PARAMETERS as i64, -2);
        // A guest on core 1 of the machine sees itself as its MPIDR says.
        let core1 = Psci::new(0x8000_0001);
        assert_eq!(call(&core1, PSCI_CPU_ON_64, 1), Outcome::Return(ALREADY_ON));
        assert_eq!(
            call(&core1, PSCI_CPU_ON_64, 0),
            Outcome::Return(INVALID_PARAMETERS)
        );
    }

    #[test]
    fn affinity_info_and_cpu_off() {
        let psci = Psci::new(MPIDR0);
        assert_eq!(
            psci.call(0, [u64::from(PSCI_AFFINITY_INFO_64), 0, 0, 0]),
            Outcome::Return(0)
        );
        assert_eq!(
            psci.call(0, [u64::from(PSCI_AFFINITY_INFO_64), 1, 0, 0]),
            Outcome::Return(INVALID_PARAMETERS)
        );
        assert_eq!(
            psci.call(0, [u64::from(PSCI_AFFINITY_INFO_64), 0, 1, 0]),
            Outcome::Return(INVALID_PARAMETERS)
        );
        assert_eq!(call(&psci, PSCI_CPU_OFF, 0), Outcome::Return(DENIED));
    }

    #[test]
    fn every_iqdio_hvc_call_passes_on() {
        let psci = Psci::new(MPIDR0);
        let ids = [
            iqdio_hvc::HVC_SIGA,
            iqdio_hvc::HVC_ESTABLISH,
            iqdio_hvc::HVC_REGISTER_ADDRESS,
            iqdio_hvc::HVC_DEREGISTER_ADDRESS,
            iqdio_hvc::HVC_DEREGISTER_QUEUE_SET,
            iqdio_hvc::HVC_CONSOLE_WRITE,
            iqdio_hvc::HVC_EXIT,
            iqdio_hvc::HVC_BARRIER,
        ];
        for id in ids {
            assert_eq!(psci.call(0, [id, 1, 2, 3]), Outcome::PassOn, "{id:#x}");
        }
    }

    #[test]
    fn iqdio_range_and_other_immediates_pass_on_and_the_upper_x0_is_ignored() {
        let psci = Psci::new(MPIDR0);
        assert_eq!(call(&psci, 0xC600_0000, 0), Outcome::PassOn);
        assert_eq!(call(&psci, 0xC600_FFFF, 0), Outcome::PassOn);
        assert_eq!(call(&psci, 0xC601_0000, 0), Outcome::Return(MINUS_ONE));
        assert_eq!(
            psci.call(1, [u64::from(PSCI_VERSION), 0, 0, 0]),
            Outcome::PassOn
        );
        assert_eq!(
            psci.call(0, [0xDEAD_0000_8400_0000, 0, 0, 0]),
            Outcome::Return(0x10001)
        );
    }
}
