//! Error reasons a send reports in the sender's own SBAL (element 15's `sflags`,
//! "sbalf15"), with the failing element's index in element 14.

/// An sbalf15 error reason: why the fabric set an output buffer to 0xAF.
///
/// Where Linux 6.12 gives an sbalf15 value a meaning, iqdio's code means the same:
/// - `drivers/s390/cio/qdio_main.c` (`process_buffer_error`) reads 0x10 on an IQD output
///   queue as "target buffer full" and only counts it (`target_full`);
/// - `drivers/s390/net/qeth_core_main.c` (`qeth_compute_cq_notification`) tells AF_IUCV
///   that 0x04, 0x10, 0x11 and 0x12 mean "unreachable", every other value "general
///   error";
/// - the same file's `qeth_check_qdio_errors` still parses an *input* buffer flagged 0x12
///   (counted `rx_fifo_errors`).
///
/// Linux never re-sends a refused buffer: `qeth_handle_send_error` only traces the
/// value (15-31 quietly, any other as "lnkfail"), then the frames are freed and counted
/// in `tx_errors`. Only a cc2 with the busy bit is retried. So [`Reason::is_retryable`]
/// is iqdio's own driver's policy, not Linux's.
///
/// iqdio's own codes (0x13, 0x14, 0x20-0x29) lie outside Linux's "unreachable" group, so
/// AF_IUCV reads each of them as a general error, which is what they are. They are kept
/// stable because programs read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Reason {
    /// The target's receive queue has no empty buffer (the frame is intact in the
    /// sender's buffer). Linux qdio's "target full" (`qdio_main.c`).
    TargetFull = 0x10,
    /// No queue set is registered for the destination address.
    Unreachable = 0x11,
    /// The destination's queue set is not active or is being removed.
    TargetNotActive = 0x12,
    /// The target's own receive buffer is malformed (its SBALEs point outside its
    /// memory); that buffer is set to 0x8F and consumed, a retry uses the next one.
    TargetBufferInvalid = 0x13,
    /// The frames are larger than the maximum frame size or the target's buffer.
    ///
    /// Not 0x04: Linux's `qeth_compute_cq_notification` groups 0x04 with 0x10-0x12 as
    /// "unreachable", and a frame too large for the target is not that.
    TooLarge = 0x14,
    /// A pending buffer (SIGA WRITEQ, completion queue) whose own queue set was
    /// deregistered before it could be delivered: its QAOB completes with this code.
    Cancelled = 0x15,
    /// No element among the 16 carries `LAST_ENTRY`.
    NoLastEntry = 0x20,
    /// An element in use has length 0.
    ZeroLength = 0x21,
    /// An element's address or length lies (partly) outside the issuer's memory.
    AddressOutsideMemory = 0x22,
    /// Fragment flags out of order (a middle without a first, a frame left open, ...).
    FragmentOrder = 0x23,
    /// The frame header's id is not 0x01 (layer 3).
    HeaderId = 0x24,
    /// The header's length field disagrees with the bytes the frame's elements hold.
    HeaderLength = 0x25,
    /// The IPv6 flag and the next-hop address disagree.
    AddressFamily = 0x26,
    /// A cast type other than unicast on a unicast queue (Linux's `qeth_l3_fill_header`
    /// forces unicast there).
    CastType = 0x27,
    /// The first element of a frame is shorter than the 32-byte header.
    ShortHeader = 0x28,
    /// The frames of one SBAL name different next hops.
    MixedDestinations = 0x29,
    /// SIGA WRITEQ named a QAOB that is not 256-aligned or not wholly in the
    /// sender's memory, or one a pending buffer of the queue set still holds (its
    /// completion not yet posted), or a pending buffer's QAOB no longer describes a
    /// buffer (`sb_count` not 1 to 16).
    QaobInvalid = 0x2A,
    /// A frame of the other layer: a layer-3 header (id 0x01) on a queue set
    /// established in layer 2, or a layer-2 header (0x02) on a layer-3 set.
    WrongLayer = 0x2B,
    /// Layer 2: the Ethernet frame after the header is shorter than two MACs and an
    /// EtherType (14 bytes), or carries an 802.1Q tag and is shorter than 18.
    EthernetFrame = 0x2C,
    /// Layer 2: the header's VLAN flag and id disagree with the frame's 802.1Q tag.
    VlanMismatch = 0x2D,
    /// Layer 2: the sending queue set is not a member of the frame's VLAN (nor the
    /// bridge port).
    NotOnVlan = 0x2E,
}

impl Reason {
    /// Every reason, in code order.
    pub const ALL: [Reason; 21] = [
        Self::TargetFull,
        Self::Unreachable,
        Self::TargetNotActive,
        Self::TargetBufferInvalid,
        Self::TooLarge,
        Self::Cancelled,
        Self::NoLastEntry,
        Self::ZeroLength,
        Self::AddressOutsideMemory,
        Self::FragmentOrder,
        Self::HeaderId,
        Self::HeaderLength,
        Self::AddressFamily,
        Self::CastType,
        Self::ShortHeader,
        Self::MixedDestinations,
        Self::QaobInvalid,
        Self::WrongLayer,
        Self::EthernetFrame,
        Self::VlanMismatch,
        Self::NotOnVlan,
    ];

    /// The sbalf15 byte.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The reason for an sbalf15 byte, if it is one iqdio writes.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.code() == code)
    }

    /// Whether priming the same frame again may succeed later (the target may drain).
    ///
    /// iqdio's driver acts on this; Linux qeth re-sends nothing (see [`Reason`]).
    pub const fn is_retryable(self) -> bool {
        matches!(self, Self::TargetFull | Self::TargetBufferInvalid)
    }

    /// Whether Linux reads this code as "unreachable" (0x04, 0x10, 0x11, 0x12:
    /// `qeth_compute_cq_notification` in `drivers/s390/net/qeth_core_main.c`, what it
    /// tells AF_IUCV); every other code it reads as a general error.
    pub const fn linux_reads_as_unreachable(self) -> bool {
        matches!(self.code(), 0x04 | 0x10..=0x12)
    }

    /// What Linux 6.12's qeth does when a send completes with this code, for logs and
    /// the README's error table (which must agree: `tests/error_table.rs`).
    pub const fn linux_qeth(self) -> &'static str {
        match self.code() {
            // qdio_main.c process_buffer_error: the one output code qdio counts itself.
            0x10 => "qdio counts target_full; frames freed, tx_errors; AF_IUCV: unreachable",
            0x11 | 0x12 => "frames freed, tx_errors; AF_IUCV: unreachable",
            // qeth_handle_send_error traces 15-31 at a quiet level, others as "lnkfail".
            15..=31 => "frames freed, tx_errors; AF_IUCV: general error",
            _ => "traced \"lnkfail\", frames freed, tx_errors; AF_IUCV: general error",
        }
    }

    /// Whether the sender's descriptor or header was at fault (codes from 0x20).
    pub const fn is_malformed(self) -> bool {
        self.code() >= 0x20
    }

    /// A short description, for logs and the error table.
    pub const fn describe(self) -> &'static str {
        match self {
            Self::TooLarge => "frame larger than the MFS or the target buffer",
            Self::TargetFull => "target receive queue full",
            Self::Unreachable => "destination not registered",
            Self::TargetNotActive => "destination queue not active",
            Self::TargetBufferInvalid => "target receive buffer malformed",
            Self::NoLastEntry => "no LAST_ENTRY in 16 elements",
            Self::ZeroLength => "element of length zero",
            Self::AddressOutsideMemory => "element outside the issuer's memory",
            Self::FragmentOrder => "fragment flags out of order",
            Self::HeaderId => "header id is not layer 3",
            Self::HeaderLength => "header length disagrees with the elements",
            Self::AddressFamily => "IPv6 flag and next hop disagree",
            Self::CastType => "cast type not valid on this queue",
            Self::ShortHeader => "first element shorter than the header",
            Self::MixedDestinations => "frames for several next hops in one SBAL",
            Self::Cancelled => "pending buffer cancelled: its queue set was deregistered",
            Self::QaobInvalid => "QAOB misaligned, outside memory, in flight, or not a buffer's",
            Self::WrongLayer => "frame header of the other layer than the queue set's",
            Self::EthernetFrame => "Ethernet frame shorter than its MACs, EtherType and tag",
            Self::VlanMismatch => "header VLAN disagrees with the frame's 802.1Q tag",
            Self::NotOnVlan => "sender not a member of the frame's VLAN",
        }
    }
}

impl core::fmt::Display for Reason {
    /// The description ([`Reason::describe`]) and the sbalf15 byte.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} (sbalf15 {:#04x})", self.describe(), self.code())
    }
}

impl core::error::Error for Reason {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(Reason::from_code(r.code()), Some(*r));
            for other in &Reason::ALL[i + 1..] {
                assert_ne!(r.code(), other.code());
            }
        }
        assert_eq!(Reason::from_code(0x00), None);
        assert_eq!(Reason::from_code(0xFF), None);
    }

    #[test]
    fn the_architected_codes_are_where_linux_reads_them() {
        assert_eq!(Reason::TargetFull.code(), 0x10);
        assert_eq!(Reason::Unreachable.code(), 0x11);
        assert_eq!(Reason::TargetNotActive.code(), 0x12);
        // Linux's "unreachable" group is exactly the codes that mean that here.
        for r in Reason::ALL {
            let unreachable = matches!(
                r,
                Reason::TargetFull | Reason::Unreachable | Reason::TargetNotActive
            );
            assert_eq!(r.linux_reads_as_unreachable(), unreachable, "{r}");
            assert_eq!(r.linux_qeth().contains("AF_IUCV: unreachable"), unreachable);
        }
        // "Too large" is not unreachable, so not 0x04.
        assert_ne!(Reason::TooLarge.code(), 0x04);
        assert_eq!(Reason::TooLarge.code(), 0x14);
        assert_eq!(Reason::from_code(0x04), None);
        assert!(Reason::TargetFull.is_retryable());
        assert!(!Reason::Unreachable.is_retryable());
        assert!(
            Reason::ALL
                .iter()
                .filter(|r| r.is_malformed())
                .all(|r| r.code() >= 0x20)
        );
        assert!(!Reason::TooLarge.is_malformed());
    }
}
