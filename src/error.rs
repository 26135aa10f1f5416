//! Errors with their wire codes: SIGA condition codes, registration (IPA-style) codes.
//!
//! Per-buffer send errors are not here: they are [`Reason`](crate::qdio::Reason)s the
//! fabric writes into the sender's own SBAL.

/// A SIGA condition code, as the instruction sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConditionCode {
    /// cc0: the function was done.
    Cc0 = 0,
    /// cc1: the queues are not active, or the request names no valid queue (Linux's
    /// `qdio_kick_outbound_q`, `drivers/s390/cio/qdio_main.c`, makes it `-EIO` and
    /// qeth recovers the card).
    Cc1 = 1,
    /// cc2: transient contention; with the busy bit, retry (Linux's `qdio_siga_output`
    /// spins for 100 µs, then `qdio_kick_outbound_q` retries up to 1000 × 10 ms);
    /// without it Linux's qdio returns `-ENOBUFS`, which qeth ignores.
    Cc2 = 2,
    /// cc3: not an IQDIO subchannel (not operational; Linux: `-EIO`, card recovery).
    Cc3 = 3,
}

/// The busy bit that accompanies cc2 (bit 0 of the returned function-code register,
/// as Linux's `do_siga_output` in `drivers/s390/cio/qdio_main.c` reads it).
pub const SIGA_BUSY_BIT: u32 = 0x8000_0000;

impl ConditionCode {
    /// The condition code for its number (0-3).
    pub const fn from_raw(cc: u64) -> Option<Self> {
        match cc {
            0 => Some(Self::Cc0),
            1 => Some(Self::Cc1),
            2 => Some(Self::Cc2),
            3 => Some(Self::Cc3),
            _ => None,
        }
    }
}

/// What a SIGA returns to the program that issued it: the condition code and, with
/// cc2, the busy bit; exactly what crosses a hypervisor's trap. How each buffer went is
/// in its own SLSB byte and SBAL, not here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigaStatus {
    /// The condition code.
    pub condition_code: ConditionCode,
    /// [`SIGA_BUSY_BIT`] with a transient cc2 (retry), else 0.
    pub busy: u32,
}

impl SigaStatus {
    /// cc0: the function was done.
    pub const DONE: Self = Self {
        condition_code: ConditionCode::Cc0,
        busy: 0,
    };

    /// The status of a SIGA that ended with `error`.
    pub const fn of_error(error: SigaError) -> Self {
        Self {
            condition_code: error.condition_code(),
            busy: error.busy_bit(),
        }
    }

    /// Whether the function was done (cc0).
    pub const fn is_done(self) -> bool {
        matches!(self.condition_code, ConditionCode::Cc0)
    }

    /// Whether another SIGA held the queue (cc2 with the busy bit): retry.
    pub const fn is_busy(self) -> bool {
        matches!(self.condition_code, ConditionCode::Cc2) && self.busy & SIGA_BUSY_BIT != 0
    }
}

impl<T> From<&Result<T, SigaError>> for SigaStatus {
    fn from(result: &Result<T, SigaError>) -> Self {
        match result {
            Ok(_) => Self::DONE,
            Err(e) => Self::of_error(*e),
        }
    }
}

impl core::fmt::Display for SigaStatus {
    /// As the program sees it: the condition code, and the busy bit when set.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "SIGA cc{}", self.condition_code as u8)?;
        if self.busy & SIGA_BUSY_BIT != 0 {
            f.write_str(", busy")?;
        }
        Ok(())
    }
}

/// A status other than cc0 is the program's view of a failed SIGA
/// ([`SendError::Siga`](crate::driver::SendError::Siga)).
impl core::error::Error for SigaStatus {}

/// Why a SIGA did nothing at all (per-buffer errors go into the SBALs instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigaError {
    /// The subchannel does not carry the IQDIO indicator (never established).
    NotIqdio,
    /// The subchannel's queues are not active (deregistered).
    QueuesNotActive,
    /// The queue mask names no queue, or a queue the queue set did not establish
    /// (queue n is bit `1 << (31 - n)`; a set has output queues 0 to 3 at most).
    InvalidQueueMask,
    /// The function code is not one this fabric performs.
    InvalidFunction,
    /// Another SIGA holds this queue: retry.
    Busy,
    /// The issuing partition is suspended ([`Fabric::suspend`](crate::Fabric::suspend)):
    /// nothing was done, its primed buffers stay primed. cc2 with the busy bit, so a
    /// program that does get to run retries, and succeeds once it is resumed.
    Suspended,
    /// The embedding issued the SIGA where an interrupt could re-enter the fabric
    /// (its [`Platform::context`](crate::Platform::context) said so), against the
    /// [execution contract](crate#execution-contract); nothing was done. The
    /// embedding's error, not the partition's: cc2 without the busy bit.
    InterruptContext,
}

impl SigaError {
    /// The condition code the instruction ends with.
    pub const fn condition_code(self) -> ConditionCode {
        match self {
            Self::NotIqdio => ConditionCode::Cc3,
            Self::QueuesNotActive | Self::InvalidQueueMask | Self::InvalidFunction => {
                ConditionCode::Cc1
            }
            Self::Busy | Self::Suspended | Self::InterruptContext => ConditionCode::Cc2,
        }
    }

    /// The busy bit returned with the condition code.
    pub const fn busy_bit(self) -> u32 {
        match self {
            Self::Busy | Self::Suspended => SIGA_BUSY_BIT,
            _ => 0,
        }
    }
}

/// Which guest-supplied address of a queue set failed its check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueField {
    /// An SBAL of output queue 0 (with its buffer number).
    OutputSbal(u8),
    /// An input SBAL (with its buffer number).
    InputSbal(u8),
    /// The output SLSB (of output queue 0).
    OutputSlsb,
    /// An SBAL of output queue 1, 2 or 3 (queue 0's are `OutputSbal`).
    OutputQueueSbal {
        /// The output queue.
        queue: u8,
        /// The buffer number.
        buffer: u8,
    },
    /// The SLSB of output queue 1, 2 or 3 (queue 0's is `OutputSlsb`).
    OutputQueueSlsb(u8),
    /// The input SLSB.
    InputSlsb,
    /// An SBAL of the completion queue (with its buffer number).
    CompletionSbal(u8),
    /// The completion queue's SLSB.
    CompletionSlsb,
    /// The queue (lowest-tier) indicator byte.
    QueueIndicator,
    /// The middle-tier indicator byte.
    MiddleIndicator,
    /// The global summary byte.
    GlobalIndicator,
}

/// Errors of partition, queue-set and address registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegistrationError {
    /// The key (LPAR.subchannel, IP address or LPAR id) is registered already.
    DuplicateFound,
    /// The table has no room for another entry.
    TableFull,
    /// The address or queue set to remove is not registered (for this issuer).
    NotFound,
    /// A target registration names a queue set that is not in the source table.
    SourceNotRegistered,
    /// The LPAR is not known to the fabric.
    UnknownPartition,
    /// A memory window is empty, overflows the address space, or there are too many.
    InvalidWindow,
    /// A memory window overlaps one of another partition (or of the same one).
    OverlappingWindows,
    /// A queue-set address lies outside the partition's memory.
    OutsideMemory(QueueField),
    /// A queue-set address is not aligned as the format requires (SBALs: 256 bytes).
    Misaligned(QueueField),
    /// The address cannot be a unicast target (unspecified, multicast, broadcast).
    InvalidAddress,
    /// A handle refers to a queue set that has been deregistered since.
    StaleHandle,
    /// The fabric has queue sets established: its hash seed can change only before
    /// the first ([`Fabric::set_hash_seed`](crate::Fabric::set_hash_seed)). Never a
    /// partition's doing.
    SeedInUse,
    /// Two of a queue set's structures (SBALs, SLSBs, indicator bytes) share bytes, or
    /// one of them shares bytes with a structure of another of the partition's queue
    /// sets. `field` is the new queue set's, `with` the one it meets (in the same set
    /// or another). Only the middle and the global indicator byte may be shared, and
    /// only as the same byte in the same role in each set.
    OverlappingQueues {
        /// The new queue set's structure.
        field: QueueField,
        /// The structure it overlaps.
        with: QueueField,
    },
    /// The partition has as many queue sets as it may: its quota
    /// ([`FabricConfig::queue_sets_per_partition`](crate::FabricConfig::queue_sets_per_partition)),
    /// at most the fabric's `S` (by default
    /// [`MAX_SUBCHANNELS`](crate::fabric::MAX_SUBCHANNELS)). Other partitions may still
    /// establish; the table itself may have room.
    SubchannelLimit,
    /// The partition has as many addresses as it may
    /// ([`FabricConfig::addresses_per_partition`](crate::FabricConfig::addresses_per_partition)).
    /// Other partitions may still register; the table itself may have room.
    AddressQuota,
    /// Called where an interrupt could re-enter the fabric (the platform's
    /// [`context`](crate::Platform::context) said so), against the
    /// [execution contract](crate#execution-contract); nothing was done.
    InterruptContext,
    /// The hypervisor's error, never a partition's: a [`Window`](crate::Window)'s host
    /// address is not congruent to its guest address modulo 256
    /// ([`HOST_ALIGN`](crate::HOST_ALIGN)), refused when the partition is added;
    /// or a [`GuestMemory`](crate::GuestMemory) translated a partition's 256-aligned
    /// SBAL to a host address that is not (at establish, or when the memory is
    /// replaced).
    MisalignedWindow,
    /// An SBAL lies 1 TiB or more above the lowest SBAL of its queue: the fabric keeps
    /// a queue's SBALs as distances from the lowest, in 32 bits of 256-byte units.
    SbalSpread(QueueField),
    /// More output queues than the fabric offers (its `O`, at most 4).
    OutputQueues,
    /// The call does not apply to the queue set's layer: an IP address, a multicast
    /// group or the broadcast switch on a layer-2 set; a MAC, a VLAN or the bridge port
    /// on a layer-3 set; a completion queue with layer 2.
    WrongLayer,
    /// Layer 2: the MAC address is registered already (Linux's
    /// `IPA_RC_L2_DUP_MAC`, 0x2005).
    DuplicateMac,
    /// Layer 2: the MAC address is not registered for this queue set (Linux's
    /// `IPA_RC_L2_MAC_NOT_FOUND`, 0x2010).
    MacNotFound,
    /// Layer 2: the queue set is a member of that VLAN already (Linux's
    /// `IPA_RC_L2_DUP_VLAN_ID`, 0x2016).
    DuplicateVlan,
}

impl RegistrationError {
    /// The IPA-style return code.
    ///
    /// Where Linux qeth gives a code the meaning, that code (`qeth_core_mpc.h`, enum
    /// `qeth_ipa_return_codes`, Linux 6.12): 0xE005 `IPA_RC_DUPLICATE_IP_ADDRESS`,
    /// 0xE006 `IPA_RC_IP_ADDR_TABLE_FULL` (the table itself, never a quota), 0xE00B
    /// `IPA_RC_MC_ADDR_NOT_FOUND` (qeth_l3 reads it as -ENOENT on delete).
    ///
    /// The rest are iqdio's own, in 0xF002..=0xF013 (0xF009 retired with the variant
    /// it named, not reused): codes no Linux qeth return code
    /// uses (its 0xFxxx codes are 0xF001 `IPA_RC_INVALID_IP_VERSION2` and 0xFFFF
    /// `IPA_RC_FFFF`), so a Linux-minded embedder never misreads one.
    /// 0xE00E (`IPA_RC_UNSUPPORTED_SUBCMD`) and 0xF001 are therefore not used.
    pub const fn code(self) -> u16 {
        match self {
            Self::DuplicateFound => 0xE005,
            Self::TableFull => 0xE006,
            Self::NotFound => 0xE00B,
            Self::UnknownPartition => 0xF002,
            Self::InvalidWindow => 0xF003,
            Self::OverlappingWindows => 0xF004,
            Self::OutsideMemory(_) => 0xF005,
            Self::Misaligned(_) => 0xF006,
            Self::InvalidAddress => 0xF007,
            Self::StaleHandle => 0xF008,
            Self::SourceNotRegistered => 0xF00A,
            Self::OverlappingQueues { .. } => 0xF00B,
            Self::SubchannelLimit => 0xF00C,
            Self::AddressQuota => 0xF00D,
            Self::SeedInUse => 0xF00E,
            Self::InterruptContext => 0xF00F,
            Self::MisalignedWindow => 0xF010,
            Self::SbalSpread(_) => 0xF011,
            Self::OutputQueues => 0xF012,
            Self::WrongLayer => 0xF013,
            Self::DuplicateMac => 0x2005,
            Self::MacNotFound => 0x2010,
            Self::DuplicateVlan => 0x2016,
        }
    }
}

impl core::fmt::Display for SigaError {
    /// The meaning, then the condition code (and the busy bit) a partition sees.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let what = match self {
            Self::NotIqdio => "not an IQDIO subchannel",
            Self::QueuesNotActive => "queues not active",
            Self::InvalidQueueMask => "queue mask names no queue of this subchannel",
            Self::InvalidFunction => "function code not performed",
            Self::Busy => "queue busy, retry",
            Self::Suspended => "partition suspended, retry",
            Self::InterruptContext => "called from interrupt context (execution contract)",
        };
        write!(f, "SIGA: {what} (cc{}", self.condition_code() as u8)?;
        if self.busy_bit() != 0 {
            f.write_str(", busy")?;
        }
        f.write_str(")")
    }
}

impl core::error::Error for SigaError {}

impl core::fmt::Display for QueueField {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::OutputSbal(n) => write!(f, "output SBAL {n}"),
            Self::InputSbal(n) => write!(f, "input SBAL {n}"),
            Self::OutputSlsb => f.write_str("output SLSB"),
            Self::OutputQueueSbal { queue, buffer } => {
                write!(f, "output queue {queue} SBAL {buffer}")
            }
            Self::OutputQueueSlsb(q) => write!(f, "output queue {q} SLSB"),
            Self::InputSlsb => f.write_str("input SLSB"),
            Self::CompletionSbal(n) => write!(f, "completion queue SBAL {n}"),
            Self::CompletionSlsb => f.write_str("completion queue SLSB"),
            Self::QueueIndicator => f.write_str("queue indicator byte"),
            Self::MiddleIndicator => f.write_str("middle indicator byte"),
            Self::GlobalIndicator => f.write_str("global summary byte"),
        }
    }
}

impl core::fmt::Display for RegistrationError {
    /// The meaning, then the IPA-style return code ([`RegistrationError::code`]).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::DuplicateFound => f.write_str("duplicate found")?,
            Self::TableFull => f.write_str("table full")?,
            Self::NotFound => f.write_str("not found")?,
            Self::SourceNotRegistered => f.write_str("queue set not in the source table")?,
            Self::UnknownPartition => f.write_str("unknown partition")?,
            Self::InvalidWindow => f.write_str("invalid memory window")?,
            Self::OverlappingWindows => f.write_str("memory windows overlap")?,
            Self::OutsideMemory(field) => write!(f, "{field} outside the partition's memory")?,
            Self::Misaligned(field) => write!(f, "{field} misaligned")?,
            Self::InvalidAddress => f.write_str("not a unicast address")?,
            Self::StaleHandle => f.write_str("stale queue-set handle")?,
            Self::SeedInUse => f.write_str("hash seed in use by established queue sets")?,
            Self::OverlappingQueues { field, with } => write!(f, "{field} overlaps {with}")?,
            Self::SubchannelLimit => f.write_str("partition at its queue-set limit")?,
            Self::AddressQuota => f.write_str("partition at its address quota")?,
            Self::InterruptContext => {
                f.write_str("called from interrupt context (execution contract)")?
            }
            Self::MisalignedWindow => {
                f.write_str("host memory not congruent to guest memory modulo 256")?
            }
            Self::SbalSpread(field) => {
                write!(f, "{field} 1 TiB or more above its queue's lowest SBAL")?
            }
            Self::OutputQueues => f.write_str("more output queues than the fabric offers")?,
            Self::WrongLayer => f.write_str("not for a queue set of this layer")?,
            Self::DuplicateMac => f.write_str("duplicate MAC address")?,
            Self::MacNotFound => f.write_str("MAC address not found")?,
            Self::DuplicateVlan => f.write_str("duplicate VLAN id")?,
        }
        write!(f, " ({:#06X})", self.code())
    }
}

impl core::error::Error for RegistrationError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn condition_codes() {
        assert_eq!(SigaError::NotIqdio.condition_code() as u8, 3);
        assert_eq!(SigaError::QueuesNotActive.condition_code() as u8, 1);
        assert_eq!(SigaError::InvalidQueueMask.condition_code() as u8, 1);
        assert_eq!(SigaError::InvalidFunction.condition_code() as u8, 1);
        assert_eq!(SigaError::Busy.condition_code() as u8, 2);
        assert_eq!(SigaError::Busy.busy_bit(), SIGA_BUSY_BIT);
        assert_eq!(SigaError::NotIqdio.busy_bit(), 0);
        assert_eq!(SigaError::InterruptContext.condition_code() as u8, 2);
        assert_eq!(SigaError::InterruptContext.busy_bit(), 0);
        assert_eq!(SigaError::Suspended.condition_code() as u8, 2);
        assert_eq!(SigaError::Suspended.busy_bit(), SIGA_BUSY_BIT);
    }

    /// Each message names the wire code a partition sees, so a log line and a trace of
    /// the guest agree; every error is a `core::error::Error`.
    #[test]
    fn messages_carry_the_wire_codes() {
        fn error(e: &dyn core::error::Error) -> std::string::String {
            std::format!("{e}")
        }
        assert_eq!(
            error(&SigaError::Busy),
            "SIGA: queue busy, retry (cc2, busy)"
        );
        assert_eq!(
            error(&SigaError::NotIqdio),
            "SIGA: not an IQDIO subchannel (cc3)"
        );
        assert_eq!(
            error(&RegistrationError::DuplicateFound),
            "duplicate found (0xE005)"
        );
        assert_eq!(
            error(&RegistrationError::OverlappingQueues {
                field: QueueField::InputSlsb,
                with: QueueField::OutputSbal(3),
            }),
            "input SLSB overlaps output SBAL 3 (0xF00B)"
        );
        assert_eq!(
            error(&SigaStatus::of_error(SigaError::Busy)),
            "SIGA cc2, busy"
        );
        assert_eq!(
            error(&SigaStatus::of_error(SigaError::QueuesNotActive)),
            "SIGA cc1"
        );
        assert_eq!(
            error(&crate::Reason::TargetFull),
            "target receive queue full (sbalf15 0x10)"
        );
    }

    #[test]
    fn registration_codes_are_linux_where_linux_has_one_and_unique() {
        assert_eq!(RegistrationError::DuplicateFound.code(), 0xE005);
        assert_eq!(RegistrationError::TableFull.code(), 0xE006);
        assert_eq!(RegistrationError::NotFound.code(), 0xE00B);
        // Layer 2 (qeth_core_mpc.h): duplicate MAC, MAC not found, duplicate VLAN id.
        assert_eq!(RegistrationError::DuplicateMac.code(), 0x2005);
        assert_eq!(RegistrationError::MacNotFound.code(), 0x2010);
        assert_eq!(RegistrationError::DuplicateVlan.code(), 0x2016);
        // Codes Linux qeth gives another meaning (qeth_core_mpc.h, Linux 6.12).
        let linux_other = [
            0xE001, 0xE002, 0xE003, 0xE004, 0xE007, 0xE008, 0xE009, 0xE00A, 0xE00D, 0xE00E, 0xE00F,
            0xE010, 0xE011, 0xE012, 0xE013, 0xE080, 0xE090, 0xF001, 0xFFFF,
        ];
        let all = [
            RegistrationError::DuplicateFound,
            RegistrationError::TableFull,
            RegistrationError::NotFound,
            RegistrationError::SourceNotRegistered,
            RegistrationError::UnknownPartition,
            RegistrationError::InvalidWindow,
            RegistrationError::OverlappingWindows,
            RegistrationError::OutsideMemory(QueueField::OutputSlsb),
            RegistrationError::Misaligned(QueueField::InputSbal(0)),
            RegistrationError::InvalidAddress,
            RegistrationError::StaleHandle,
            RegistrationError::OverlappingQueues {
                field: QueueField::InputSlsb,
                with: QueueField::OutputSbal(3),
            },
            RegistrationError::SubchannelLimit,
            RegistrationError::AddressQuota,
            RegistrationError::SeedInUse,
            RegistrationError::InterruptContext,
            RegistrationError::MisalignedWindow,
            RegistrationError::SbalSpread(QueueField::InputSbal(1)),
            RegistrationError::OutputQueues,
            RegistrationError::WrongLayer,
        ];
        for (i, a) in all.iter().enumerate() {
            assert!(!linux_other.contains(&a.code()), "{a:?} takes a Linux code");
            for b in &all[i + 1..] {
                assert_ne!(a.code(), b.code(), "{a:?} {b:?}");
            }
        }
    }
}
