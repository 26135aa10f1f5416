//! The SBAL (storage block address list) and its SBALEs (elements).
//!
//! An SBAL is 16 elements of 16 bytes, 256 bytes in all, 256-aligned. Element layout
//! (s390 `struct qdio_buffer_element`, big-endian):
//! `0x0 eflags | 0x1 reserved | 0x2 scount | 0x3 sflags | 0x4 length u32 | 0x8 addr u64`.

use bitflags::bitflags;

/// Elements in one SBAL.
pub const SBALES_PER_SBAL: usize = 16;
/// Bytes in one SBALE.
pub const SBALE_SIZE: usize = 16;
/// Bytes in one SBAL (and its required alignment).
pub const SBAL_SIZE: usize = SBALES_PER_SBAL * SBALE_SIZE;

bitflags! {
    /// Element flags (`eflags`) other than the fragment field.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Eflags: u8 {
        /// This is the last element in use in the SBAL.
        const LAST_ENTRY = 0x40;
        /// The element's data is contiguous with the next element's.
        const CONTIGUOUS = 0x20;
        /// The fragment field (two bits): see [`Fragment`].
        const FRAGMENT_MASK = 0x0C;
    }
}

/// Where an element stands in a frame that spans several elements (`eflags & 0x0C`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// The element holds a whole frame.
    None,
    /// The first element of a multi-element frame.
    First,
    /// A middle element of a multi-element frame.
    Middle,
    /// The last element of a multi-element frame.
    Last,
}

impl Fragment {
    /// The fragment field of an `eflags` byte.
    pub const fn from_eflags(eflags: u8) -> Self {
        match eflags & 0x0C {
            0x04 => Self::First,
            0x08 => Self::Middle,
            0x0C => Self::Last,
            _ => Self::None,
        }
    }

    /// The bits of this fragment position in `eflags`.
    pub const fn bits(self) -> u8 {
        match self {
            Self::None => 0x00,
            Self::First => 0x04,
            Self::Middle => 0x08,
            Self::Last => 0x0C,
        }
    }

    /// The position of element `i` of a frame made of `n` elements.
    pub const fn for_element(i: usize, n: usize) -> Self {
        if n <= 1 {
            Self::None
        } else if i == 0 {
            Self::First
        } else if i + 1 == n {
            Self::Last
        } else {
            Self::Middle
        }
    }
}

/// One SBALE, decoded to native values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sbale {
    /// Element flags: [`Eflags`] and the [`Fragment`] field.
    pub eflags: u8,
    /// Storage-block count (unused by IQDIO, carried as is).
    pub scount: u8,
    /// Status flags: in element 14 the failing element's index (low nibble), in
    /// element 15 the error reason ("sbalf15").
    pub sflags: u8,
    /// Bytes of data at `addr`.
    pub length: u32,
    /// Guest address of the data.
    pub addr: u64,
}

impl Sbale {
    /// Offset of `sflags` inside an element.
    pub const SFLAGS_OFFSET: usize = 3;
    /// Element whose `sflags` low nibble holds the failing element's index.
    pub const ERROR_INDEX_ELEMENT: usize = 14;
    /// Element whose `sflags` holds the error reason (sbalf15).
    pub const ERROR_REASON_ELEMENT: usize = 15;

    /// Decodes the 16 bytes of an element.
    pub const fn decode(b: &[u8; SBALE_SIZE]) -> Self {
        Self {
            eflags: b[0],
            scount: b[2],
            sflags: b[3],
            length: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            addr: u64::from_be_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
        }
    }

    /// Encodes the element to its 16 bytes (reserved byte zero).
    pub const fn encode(&self) -> [u8; SBALE_SIZE] {
        let l = self.length.to_be_bytes();
        let a = self.addr.to_be_bytes();
        [
            self.eflags,
            0,
            self.scount,
            self.sflags,
            l[0],
            l[1],
            l[2],
            l[3],
            a[0],
            a[1],
            a[2],
            a[3],
            a[4],
            a[5],
            a[6],
            a[7],
        ]
    }

    /// The element as its two 8-byte words, each the number its 8 bytes are in
    /// big-endian order: `eflags | reserved (0) | scount | sflags | length` and
    /// `addr`. The same bytes as [`encode`](Self::encode): `to_be` of each word is
    /// what a native-endian 8-byte store writes them with, on any host (what
    /// `Sbal::store` does, without going through the 16-byte array).
    #[inline(always)]
    pub(crate) const fn to_words(self) -> [u64; 2] {
        [
            ((self.eflags as u64) << 56)
                | ((self.scount as u64) << 40)
                | ((self.sflags as u64) << 32)
                | self.length as u64,
            self.addr,
        ]
    }

    /// The element flags other than the fragment field.
    pub const fn flags(&self) -> Eflags {
        Eflags::from_bits_truncate(self.eflags)
    }

    /// Whether `LAST_ENTRY` is set.
    pub const fn is_last_entry(&self) -> bool {
        self.eflags & Eflags::LAST_ENTRY.bits() != 0
    }

    /// The fragment position.
    pub const fn fragment(&self) -> Fragment {
        Fragment::from_eflags(self.eflags)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbale_is_big_endian_and_byte_exact() {
        let e = Sbale {
            eflags: 0x40 | 0x0C,
            scount: 0x5A,
            sflags: 0x10,
            length: 0x0102_0304,
            addr: 0x1122_3344_5566_7788,
        };
        let b = e.encode();
        assert_eq!(
            b,
            [
                0x4C, 0x00, 0x5A, 0x10, 0x01, 0x02, 0x03, 0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66,
                0x77, 0x88
            ]
        );
        assert_eq!(Sbale::decode(&b), e);
        assert!(e.is_last_entry());
        assert_eq!(e.fragment(), Fragment::Last);
        assert_eq!(e.flags(), Eflags::LAST_ENTRY | Eflags::FRAGMENT_MASK);
    }

    #[test]
    fn words_are_the_encoded_bytes() {
        let e = Sbale {
            eflags: 0x4C,
            scount: 0x5A,
            sflags: 0x10,
            length: 0x0102_0304,
            addr: 0x1122_3344_5566_7788,
        };
        let [w0, w1] = e.to_words();
        let b = e.encode();
        assert_eq!(w0.to_be_bytes(), b[..8]);
        assert_eq!(w1.to_be_bytes(), b[8..]);
    }

    #[test]
    fn decode_ignores_the_reserved_byte() {
        let mut b = Sbale::default().encode();
        b[1] = 0xFF;
        assert_eq!(Sbale::decode(&b), Sbale::default());
    }

    #[test]
    fn fragment_field_round_trips() {
        for f in [
            Fragment::None,
            Fragment::First,
            Fragment::Middle,
            Fragment::Last,
        ] {
            assert_eq!(Fragment::from_eflags(f.bits() | 0x40 | 0x20), f);
        }
    }

    #[test]
    fn fragment_positions_of_a_frame() {
        assert_eq!(Fragment::for_element(0, 1), Fragment::None);
        assert_eq!(Fragment::for_element(0, 2), Fragment::First);
        assert_eq!(Fragment::for_element(1, 2), Fragment::Last);
        assert_eq!(Fragment::for_element(1, 3), Fragment::Middle);
        assert_eq!(Fragment::for_element(2, 3), Fragment::Last);
    }

    #[test]
    fn sbal_geometry() {
        assert_eq!(SBAL_SIZE, 256);
        assert_eq!(
            Sbale::ERROR_REASON_ELEMENT * SBALE_SIZE + Sbale::SFLAGS_OFFSET,
            243
        );
    }
}
