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
    /// cc1: the queues are not active, or the request names no valid queue.
    Cc1 = 1,
    /// cc2: transient contention; with the busy bit, retry (Linux retries for 100 µs).
    Cc2 = 2,
    /// cc3: not an IQDIO subchannel (not operational).
    Cc3 = 3,
}

/// The busy bit that accompanies cc2 (bit 0 of the returned function-code register,
/// as Linux `do_siga_output` reads it).
pub const SIGA_BUSY_BIT: u32 = 0x8000_0000;

/// Why a SIGA did nothing at all (per-buffer errors go into the SBALs instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigaError {
    /// The subchannel does not carry the IQDIO indicator (never established).
    NotIqdio,
    /// The subchannel's queues are not active (deregistered).
    QueuesNotActive,
    /// The queue mask names a queue that does not exist (only output queue 0 does).
    InvalidQueueMask,
    /// The function code is not one this fabric performs.
    InvalidFunction,
    /// Another SIGA holds this queue: retry.
    Busy,
}

impl SigaError {
    /// The condition code the instruction ends with.
    pub const fn condition_code(self) -> ConditionCode {
        match self {
            Self::NotIqdio => ConditionCode::Cc3,
            Self::QueuesNotActive | Self::InvalidQueueMask | Self::InvalidFunction => {
                ConditionCode::Cc1
            }
            Self::Busy => ConditionCode::Cc2,
        }
    }

    /// The busy bit returned with the condition code.
    pub const fn busy_bit(self) -> u32 {
        match self {
            Self::Busy => SIGA_BUSY_BIT,
            _ => 0,
        }
    }
}

/// Which guest-supplied address of a queue set failed its check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueField {
    /// An output SBAL (with its buffer number).
    OutputSbal(u8),
    /// An input SBAL (with its buffer number).
    InputSbal(u8),
    /// The output SLSB.
    OutputSlsb,
    /// The input SLSB.
    InputSlsb,
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
}

impl RegistrationError {
    /// The IPA-style return code. 0xE005 and 0xE006 are Linux's codes for a duplicate
    /// address and a full address table; 0xE00E is its "address not defined"; the rest
    /// are iqdio's own (0xF0xx).
    pub const fn code(self) -> u16 {
        match self {
            Self::DuplicateFound => 0xE005,
            Self::TableFull => 0xE006,
            Self::NotFound => 0xE00E,
            Self::SourceNotRegistered => 0xF001,
            Self::UnknownPartition => 0xF002,
            Self::InvalidWindow => 0xF003,
            Self::OverlappingWindows => 0xF004,
            Self::OutsideMemory(_) => 0xF005,
            Self::Misaligned(_) => 0xF006,
            Self::InvalidAddress => 0xF007,
            Self::StaleHandle => 0xF008,
        }
    }
}

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
    }

    #[test]
    fn registration_codes_are_linux_where_linux_has_one_and_unique() {
        assert_eq!(RegistrationError::DuplicateFound.code(), 0xE005);
        assert_eq!(RegistrationError::TableFull.code(), 0xE006);
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
        ];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a.code(), b.code(), "{a:?} {b:?}");
            }
        }
    }
}
