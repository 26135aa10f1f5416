//! The SLSB: one state byte per buffer of a queue.

use bitflags::bitflags;

/// Buffers in one queue; buffer numbers wrap as `n & 127`.
pub const QUEUE_BUFFERS: usize = 128;

/// Bytes in one SLSB: a state byte per buffer.
pub const SLSB_LEN: usize = QUEUE_BUFFERS;

bitflags! {
    /// Owner and type bits of an SLSB state byte (the high nibble).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct SlsbFlags: u8 {
        /// The program (the partition) owns the buffer.
        const OWNER_PROGRAM = 0x80;
        /// The control unit (the fabric) owns the buffer.
        const OWNER_CU = 0x40;
        /// The buffer belongs to an output queue (clear: input queue).
        const TYPE_OUTPUT = 0x20;
    }
}

/// One SLSB state byte: owner and type bits plus the state nibble.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(transparent)]
pub struct SlsbState(pub u8);

impl SlsbState {
    /// Input buffer not initialised; also "stopped polling" (program).
    pub const INPUT_NOT_INIT: Self = Self(0x80);
    /// Input buffer acknowledged: the newest consumed buffer while the program polls.
    pub const INPUT_ACKED: Self = Self(0x81);
    /// Input buffer empty, handed to the fabric to fill (program).
    pub const INPUT_EMPTY: Self = Self(0x41);
    /// Input buffer primed: a frame arrived (fabric).
    pub const INPUT_PRIMED: Self = Self(0x82);
    /// Input buffer in error (fabric).
    pub const INPUT_ERROR: Self = Self(0x8F);
    /// Output buffer not initialised (program).
    pub const OUTPUT_NOT_INIT: Self = Self(0xA0);
    /// Output buffer primed: send this buffer (program).
    pub const OUTPUT_PRIMED: Self = Self(0x62);
    /// Output buffer empty: sent, the buffer is the program's again (fabric).
    pub const OUTPUT_EMPTY: Self = Self(0xA1);
    /// Output buffer pending: completes asynchronously (fabric, multicast queue).
    pub const OUTPUT_PENDING: Self = Self(0xA3);
    /// Output buffer in error, reason in sbalf15 (fabric).
    pub const OUTPUT_ERROR: Self = Self(0xAF);

    /// State nibble: not initialised.
    pub const NIBBLE_NOT_INIT: u8 = 0x0;
    /// State nibble: empty.
    pub const NIBBLE_EMPTY: u8 = 0x1;
    /// State nibble: primed.
    pub const NIBBLE_PRIMED: u8 = 0x2;
    /// State nibble: pending.
    pub const NIBBLE_PENDING: u8 = 0x3;
    /// State nibble: halted.
    pub const NIBBLE_HALTED: u8 = 0xE;
    /// State nibble: error.
    pub const NIBBLE_ERROR: u8 = 0xF;

    /// The owner and type bits.
    pub const fn flags(self) -> SlsbFlags {
        SlsbFlags::from_bits_truncate(self.0)
    }

    /// The state nibble (one of the `NIBBLE_*` values for a well-formed byte).
    pub const fn nibble(self) -> u8 {
        self.0 & 0x0F
    }

    /// Whether the fabric owns a buffer in this state: only such bytes may the fabric
    /// change (0x41 and 0x62).
    pub const fn owned_by_fabric(self) -> bool {
        self.0 & 0x40 != 0
    }

    /// Whether this is an output-queue state.
    pub const fn is_output(self) -> bool {
        self.0 & 0x20 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_state_byte_decodes_to_its_owner_type_and_nibble() {
        use SlsbFlags as F;
        let table = [
            (
                SlsbState::INPUT_NOT_INIT,
                0x80,
                F::OWNER_PROGRAM,
                SlsbState::NIBBLE_NOT_INIT,
            ),
            (
                SlsbState::INPUT_ACKED,
                0x81,
                F::OWNER_PROGRAM,
                SlsbState::NIBBLE_EMPTY,
            ),
            (
                SlsbState::INPUT_EMPTY,
                0x41,
                F::OWNER_CU,
                SlsbState::NIBBLE_EMPTY,
            ),
            (
                SlsbState::INPUT_PRIMED,
                0x82,
                F::OWNER_PROGRAM,
                SlsbState::NIBBLE_PRIMED,
            ),
            (
                SlsbState::INPUT_ERROR,
                0x8F,
                F::OWNER_PROGRAM,
                SlsbState::NIBBLE_ERROR,
            ),
            (
                SlsbState::OUTPUT_NOT_INIT,
                0xA0,
                F::OWNER_PROGRAM.union(F::TYPE_OUTPUT),
                SlsbState::NIBBLE_NOT_INIT,
            ),
            (
                SlsbState::OUTPUT_PRIMED,
                0x62,
                F::OWNER_CU.union(F::TYPE_OUTPUT),
                SlsbState::NIBBLE_PRIMED,
            ),
            (
                SlsbState::OUTPUT_EMPTY,
                0xA1,
                F::OWNER_PROGRAM.union(F::TYPE_OUTPUT),
                SlsbState::NIBBLE_EMPTY,
            ),
            (
                SlsbState::OUTPUT_PENDING,
                0xA3,
                F::OWNER_PROGRAM.union(F::TYPE_OUTPUT),
                SlsbState::NIBBLE_PENDING,
            ),
            (
                SlsbState::OUTPUT_ERROR,
                0xAF,
                F::OWNER_PROGRAM.union(F::TYPE_OUTPUT),
                SlsbState::NIBBLE_ERROR,
            ),
        ];
        for (state, byte, flags, nibble) in table {
            assert_eq!(state.0, byte);
            assert_eq!(state.flags(), flags, "{byte:#x}");
            assert_eq!(state.nibble(), nibble, "{byte:#x}");
            assert_eq!(state.is_output(), flags.contains(F::TYPE_OUTPUT));
        }
        // The fabric owns exactly the two bytes the program hands it.
        let fabric_owned: heapless::Vec<u8, 8> = table
            .iter()
            .filter(|t| t.0.owned_by_fabric())
            .map(|t| t.1)
            .collect();
        assert_eq!(fabric_owned.as_slice(), &[0x41, 0x62]);
    }
}
