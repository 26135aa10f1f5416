//! The QDIO adapter output block (QAOB): how a buffer sent with SIGA WRITEQ completes
//! asynchronously. Linux's `struct qaob` (`arch/s390/include/asm/qdio.h`), 256 bytes,
//! packed, 256-aligned, big-endian:
//!
//! ```text
//! 0x00  48  res0     reserved; iqdio keeps the 16 elements' eflags in 0x00-0x0F
//! 0x30   3  res1-3   reserved
//! 0x33   1  aorc     completion code: 0 delivered, else the sbalf15 reason
//! 0x34   1  flags
//! 0x35   2  cbtbs
//! 0x37   1  sb_count elements of the buffer (1-16)
//! 0x38 128  sba[16]  the elements' addresses
//! 0xB8  32  dcount[16] the elements' lengths (16 bits each)
//! 0xD8   8  user0    the program's
//! 0xE0  16  res4     reserved
//! 0xF0  16  user1    the program's (Linux keeps its buffer pointer and state here)
//! ```
//!
//! When a WRITEQ buffer goes PENDING (0xA3), the fabric copies the buffer's elements
//! into `sb_count`, `sba` and `dcount` (Linux's `qeth_iqd_tx_complete` scrubs and
//! reuses the SBAL at once and frees the data through `sba` once the QAOB completes,
//! `qeth_qdio_handle_aob`); it keeps the fragment flags in reserved bytes. When the
//! buffer completes, the fabric writes `aorc` and posts the QAOB's address on the
//! sender's completion queue. `user0` and `user1` are never touched.

use super::{Eflags, SBALES_PER_SBAL, Sbale};

/// Bytes of a QAOB (and its alignment).
pub const QAOB_SIZE: usize = 256;
/// Offset of the fragment flags iqdio keeps (one byte per element), in `res0`.
pub const EFLAGS: usize = 0x00;
/// Offset of `aorc`.
pub const AORC: usize = 0x33;
/// Offset of `flags`.
pub const FLAGS: usize = 0x34;
/// Offset of `sb_count`.
pub const SB_COUNT: usize = 0x37;
/// Offset of `sba[0]`.
pub const SBA: usize = 0x38;
/// Offset of `dcount[0]`.
pub const DCOUNT: usize = 0xB8;
/// Offset of `user0`.
pub const USER0: usize = 0xD8;
/// Offset of `user1`.
pub const USER1: usize = 0xF0;

/// The bytes from `EFLAGS` to the end of `dcount` that record a buffer: what the
/// fabric writes at PENDING time (`user0`, `user1` excluded).
pub const RECORD_LEN: usize = USER0;

/// Records a buffer's elements (1 to 16, the last with `LAST_ENTRY`) into a QAOB image
/// (the bytes `0..RECORD_LEN`): eflags, `sb_count`, `sba`, `dcount`, `aorc` and
/// `flags` zero. `None` if there are none or more than 16, or an element is longer
/// than `dcount`'s 16 bits hold.
pub fn record(used: &[Sbale]) -> Option<[u8; RECORD_LEN]> {
    let mut b = [0u8; RECORD_LEN];
    if used.is_empty() || used.len() > SBALES_PER_SBAL {
        return None;
    }
    for (i, e) in used.iter().enumerate() {
        let len = u16::try_from(e.length).ok()?;
        b[EFLAGS + i] = e.eflags;
        b[SBA + 8 * i..SBA + 8 * i + 8].copy_from_slice(&e.addr.to_be_bytes());
        b[DCOUNT + 2 * i..DCOUNT + 2 * i + 2].copy_from_slice(&len.to_be_bytes());
    }
    b[SB_COUNT] = used.len() as u8;
    Some(b)
}

/// The elements a QAOB image records, as an SBAL's (the last carrying `LAST_ENTRY`),
/// with the index of the last; `None` if `sb_count` is not 1 to 16.
pub fn elements(b: &[u8; RECORD_LEN]) -> Option<([Sbale; SBALES_PER_SBAL], usize)> {
    let count = usize::from(b[SB_COUNT]);
    if count == 0 || count > SBALES_PER_SBAL {
        return None;
    }
    let mut out = [Sbale::default(); SBALES_PER_SBAL];
    for (i, e) in out.iter_mut().enumerate().take(count) {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[SBA + 8 * i..SBA + 8 * i + 8]);
        let mut l = [0u8; 2];
        l.copy_from_slice(&b[DCOUNT + 2 * i..DCOUNT + 2 * i + 2]);
        let last = Eflags::LAST_ENTRY.bits();
        *e = Sbale {
            eflags: (b[EFLAGS + i] & !last) | if i + 1 == count { last } else { 0 },
            scount: 0,
            sflags: 0,
            length: u32::from(u16::from_be_bytes(l)),
            addr: u64::from_be_bytes(a),
        };
    }
    Some((out, count - 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::qdio::Fragment;

    #[test]
    fn the_layout_is_linuxs() {
        // struct qaob: res0[6] u64, res1..3, aorc, flags, cbtbs u16, sb_count,
        // sba[16] u64, dcount[16] u16, user0 u64, res4[2] u64, user1[16].
        assert_eq!(AORC, 6 * 8 + 3);
        assert_eq!(FLAGS, AORC + 1);
        assert_eq!(SB_COUNT, FLAGS + 1 + 2);
        assert_eq!(SBA, SB_COUNT + 1);
        assert_eq!(DCOUNT, SBA + 16 * 8);
        assert_eq!(USER0, DCOUNT + 16 * 2);
        assert_eq!(USER1, USER0 + 8 + 16);
        assert_eq!(USER1 + 16, QAOB_SIZE);
    }

    #[test]
    fn a_recorded_buffer_reads_back_as_its_elements() {
        let e = |addr, length, f: Fragment| Sbale {
            eflags: f.bits(),
            addr,
            length,
            ..Sbale::default()
        };
        let mut s = [Sbale::default(); SBALES_PER_SBAL];
        s[0] = e(0x1000, 32, Fragment::First);
        s[1] = e(0x2000, 1000, Fragment::Last);
        s[2] = e(0x3000, 60, Fragment::None);
        s[2].eflags |= Eflags::LAST_ENTRY.bits();
        let b = record(&s[..3]).unwrap();
        assert_eq!(b[SB_COUNT], 3);
        let (e, last) = elements(&b).unwrap();
        assert_eq!(last, 2);
        assert_eq!(&e[..3], &s[..3]);
        assert!(!e[0].is_last_entry() && e[2].is_last_entry());
    }

    #[test]
    fn bad_counts_and_long_elements_are_refused() {
        let mut s = [Sbale::default(); SBALES_PER_SBAL];
        s[0] = Sbale {
            addr: 0x1000,
            length: 70_000,
            ..Sbale::default()
        };
        assert!(record(&s[..1]).is_none());
        assert!(record(&[]).is_none());
        let mut b = [0u8; RECORD_LEN];
        assert!(elements(&b).is_none());
        b[SB_COUNT] = 17;
        assert!(elements(&b).is_none());
    }
}
