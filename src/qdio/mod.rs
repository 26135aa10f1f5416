//! Guest-visible formats, byte-exact: SLSB state bytes, SBAL/SBALE, the layer-3 frame
//! header and the sbalf15 reason codes.
//!
//! Encode and decode only, no policy: the fabric and the driver decide what to do with
//! what these types say. Every layout here is the one s390 Linux uses (`asm/qdio.h`,
//! `qeth_core.h`), with multi-byte fields big-endian whatever the host's byte order.

mod header;
pub mod l2;
pub mod qaob;
mod reason;
mod sbal;
mod slsb;

pub use header::{CastType, HEADER_SIZE, HeaderError, L3Header};
pub use reason::Reason;
pub use sbal::{Eflags, Fragment, SBAL_SIZE, SBALE_SIZE, SBALES_PER_SBAL, Sbale};
pub use slsb::{QUEUE_BUFFERS, SLSB_LEN, SlsbFlags, SlsbState};

/// Maximum frame size of a fabric: the largest SBAL's worth of data one send moves.
///
/// HiperSockets offers four sizes; the MTU is the MFS less 8 KiB and a receive SBAL is
/// made of MFS / 4 KiB elements of 4 KiB each \[ibm\]\[linux: `qeth_get_mtu_outof_framesize`
/// in `drivers/s390/net/qeth_core_main.c` maps frame sizes 16, 24, 40, 64 KiB to MTUs
/// 8, 16, 32, 56 KiB\].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mfs {
    /// 16 KiB frames, MTU 8 KiB, 4 receive elements.
    K16,
    /// 24 KiB frames, MTU 16 KiB, 6 receive elements.
    K24,
    /// 40 KiB frames, MTU 32 KiB, 10 receive elements.
    K40,
    /// 64 KiB frames, MTU 56 KiB, 16 receive elements.
    K64,
}

/// Size of one receive element: a 4 KiB page, as qeth allocates them.
pub const RX_ELEMENT_SIZE: usize = 4096;

impl Mfs {
    /// The MFS for a size in KiB (16, 24, 40 or 64).
    pub const fn from_kib(kib: u32) -> Option<Self> {
        match kib {
            16 => Some(Self::K16),
            24 => Some(Self::K24),
            40 => Some(Self::K40),
            64 => Some(Self::K64),
            _ => None,
        }
    }

    /// The size in bytes.
    pub const fn bytes(self) -> usize {
        self.kib() as usize * 1024
    }

    /// The size in KiB.
    pub const fn kib(self) -> u32 {
        match self {
            Self::K16 => 16,
            Self::K24 => 24,
            Self::K40 => 40,
            Self::K64 => 64,
        }
    }

    /// The MTU this MFS allows: MFS less 8 KiB \[ibm\].
    pub const fn mtu(self) -> usize {
        self.bytes() - 8 * 1024
    }

    /// Elements of [`RX_ELEMENT_SIZE`] bytes in one receive SBAL.
    pub const fn rx_elements(self) -> usize {
        self.bytes() / RX_ELEMENT_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mfs_sizes_follow_the_architecture() {
        let table = [(16, 8, 4), (24, 16, 6), (40, 32, 10), (64, 56, 16)];
        for (kib, mtu_kib, elements) in table {
            let mfs = Mfs::from_kib(kib).unwrap();
            assert_eq!(mfs.bytes(), kib as usize * 1024);
            assert_eq!(mfs.mtu(), mtu_kib * 1024);
            assert_eq!(mfs.rx_elements(), elements);
            assert!(mfs.rx_elements() <= SBALES_PER_SBAL);
        }
        assert_eq!(Mfs::from_kib(32), None);
        assert_eq!(Mfs::from_kib(0), None);
    }
}
