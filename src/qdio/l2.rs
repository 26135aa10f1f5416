//! The 32-byte layer-2 frame header (Linux's `struct qeth_hdr_layer2`,
//! `drivers/s390/net/qeth_core.h`), in front of a whole Ethernet frame on a queue set
//! established in layer-2 mode:
//!
//! ```text
//! 0x00  1  id          0x02 (layer 2)
//! 0x01  3  flags[3]    flags[2]: 0x01 multicast, 0x02 broadcast, 0x04 unicast,
//!                      0x10 VLAN (vlan_id valid)
//! 0x04  1  port_no
//! 0x05  1  hdr_length
//! 0x06  2  pkt_length  bytes of the Ethernet frame after this header
//! 0x08  2  seq_no
//! 0x0A  2  vlan_id     the 802.1Q TCI when flags[2] & 0x10
//! 0x0C 20  reserved
//! ```
//!
//! Linux's `qeth_l2_fill_header` (`drivers/s390/net/qeth_l2_main.c`) sets the cast flag
//! from the destination MAC and, for an 802.1Q-tagged frame, the VLAN flag and the
//! frame's TCI; the tag stays in the frame.

use super::HEADER_SIZE;

/// Header id of a layer-2 frame.
pub const ID_LAYER2: u8 = 0x02;
/// `flags[2]`: multicast destination.
pub const FLAG_MULTICAST: u8 = 0x01;
/// `flags[2]`: broadcast destination.
pub const FLAG_BROADCAST: u8 = 0x02;
/// `flags[2]`: unicast destination.
pub const FLAG_UNICAST: u8 = 0x04;
/// `flags[2]`: `vlan_id` is valid.
pub const FLAG_VLAN: u8 = 0x10;
/// The Ethernet bytes the fabric routes by: destination and source MAC, and an
/// 802.1Q tag (TPID 0x8100, TCI) when there is one.
pub const ETH_ROUTING: usize = 18;
/// The shortest Ethernet frame the fabric routes: two MACs and the EtherType.
pub const ETH_MIN: usize = 14;
/// The 802.1Q tag protocol identifier.
pub const TPID_8021Q: u16 = 0x8100;

/// A MAC address.
pub type Mac = [u8; 6];

/// The broadcast MAC.
pub const BROADCAST_MAC: Mac = [0xFF; 6];

/// What kind of destination a MAC is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MacCast {
    /// One station.
    Unicast,
    /// A group (the I/G bit set), not the broadcast address.
    Multicast,
    /// ff:ff:ff:ff:ff:ff.
    Broadcast,
}

impl MacCast {
    /// The cast of destination `mac`.
    pub const fn of(mac: &Mac) -> Self {
        if mac[0] == 0xFF
            && mac[1] == 0xFF
            && mac[2] == 0xFF
            && mac[3] == 0xFF
            && mac[4] == 0xFF
            && mac[5] == 0xFF
        {
            Self::Broadcast
        } else if mac[0] & 0x01 != 0 {
            Self::Multicast
        } else {
            Self::Unicast
        }
    }

    /// Its `flags[2]` bit.
    pub const fn flag(self) -> u8 {
        match self {
            Self::Unicast => FLAG_UNICAST,
            Self::Multicast => FLAG_MULTICAST,
            Self::Broadcast => FLAG_BROADCAST,
        }
    }
}

/// A decoded layer-2 frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Header {
    /// `flags[2]` but for the VLAN bit (which `vlan_tci` carries): the cast flag.
    pub flags: u8,
    /// Bytes of the Ethernet frame after the header.
    pub pkt_length: u16,
    /// The 802.1Q TCI, when the VLAN flag is set.
    pub vlan_tci: Option<u16>,
    /// `seq_no`, carried as is.
    pub seq_no: u16,
}

impl L2Header {
    /// The header Linux's `qeth_l2_fill_header` writes for `frame` (the Ethernet frame
    /// that follows): cast from its destination MAC, VLAN from its 802.1Q tag. `None`
    /// if the frame is shorter than two MACs and an EtherType, or longer than 65535.
    pub fn for_frame(frame: &[u8]) -> Option<Self> {
        if frame.len() < ETH_MIN {
            return None;
        }
        let mut dest = [0u8; 6];
        dest.copy_from_slice(&frame[..6]);
        let tagged = u16::from_be_bytes([frame[12], frame[13]]) == TPID_8021Q;
        let vlan_tci = match frame.get(14..16) {
            Some(t) if tagged => Some(u16::from_be_bytes([t[0], t[1]])),
            _ => None,
        };
        Some(Self {
            flags: MacCast::of(&dest).flag(),
            pkt_length: u16::try_from(frame.len()).ok()?,
            vlan_tci,
            seq_no: 0,
        })
    }

    /// Decodes a header: `None` unless its id is 0x02.
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Option<Self> {
        if b[0] != ID_LAYER2 {
            return None;
        }
        let flags = b[3];
        Some(Self {
            flags: flags & !FLAG_VLAN,
            pkt_length: u16::from_be_bytes([b[6], b[7]]),
            vlan_tci: (flags & FLAG_VLAN != 0).then(|| u16::from_be_bytes([b[10], b[11]])),
            seq_no: u16::from_be_bytes([b[8], b[9]]),
        })
    }

    /// Encodes the header to its 32 bytes (`port_no` and `hdr_length` 0, as Linux
    /// leaves them).
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0] = ID_LAYER2;
        b[3] = self.flags
            | if self.vlan_tci.is_some() {
                FLAG_VLAN
            } else {
                0
            };
        b[6..8].copy_from_slice(&self.pkt_length.to_be_bytes());
        b[8..10].copy_from_slice(&self.seq_no.to_be_bytes());
        if let Some(tci) = self.vlan_tci {
            b[10..12].copy_from_slice(&tci.to_be_bytes());
        }
        b
    }
}

/// Where an Ethernet frame goes, read from its first bytes: destination MAC and VLAN
/// id (0 when untagged, or for a priority tag with VID 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EthRoute {
    /// Destination MAC.
    pub dest: Mac,
    /// VLAN id (12 bits; 0 untagged).
    pub vlan: u16,
    /// The 802.1Q TCI when the frame is tagged.
    pub tci: Option<u16>,
}

impl EthRoute {
    /// The route of a frame whose first `min(len, 18)` bytes are `prefix[..n]`; `None`
    /// if it has fewer than 14 bytes or is tagged with fewer than 18.
    pub fn read(prefix: &[u8]) -> Option<Self> {
        let head = prefix.get(..ETH_MIN)?;
        let mut dest = [0u8; 6];
        dest.copy_from_slice(&head[..6]);
        let tci = if u16::from_be_bytes([head[12], head[13]]) == TPID_8021Q {
            // The tag and the EtherType after it: 18 bytes in all.
            let t = prefix.get(14..ETH_ROUTING)?;
            Some(u16::from_be_bytes([t[0], t[1]]))
        } else {
            None
        };
        Some(Self {
            dest,
            vlan: tci.map_or(0, |t| t & 0x0FFF),
            tci,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_linuxs_qeth_hdr_layer2() {
        let h = L2Header {
            flags: FLAG_UNICAST,
            pkt_length: 0x1234,
            vlan_tci: Some(0x2064),
            seq_no: 0x0102,
        };
        let b = h.encode();
        assert_eq!(b[0], 0x02);
        assert_eq!(b[3], FLAG_UNICAST | FLAG_VLAN);
        assert_eq!(&b[6..8], &[0x12, 0x34]);
        assert_eq!(&b[8..10], &[0x01, 0x02]);
        assert_eq!(&b[10..12], &[0x20, 0x64]);
        assert!(b[12..].iter().all(|&x| x == 0));
        assert_eq!(L2Header::decode(&b), Some(h));
        let mut l3 = b;
        l3[0] = 0x01;
        assert_eq!(L2Header::decode(&l3), None);
    }

    #[test]
    fn the_header_for_a_frame_follows_its_destination_and_tag() {
        let mut f = vec![0u8; 60];
        f[..6].copy_from_slice(&BROADCAST_MAC);
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        let h = L2Header::for_frame(&f).unwrap();
        assert_eq!(
            (h.flags, h.vlan_tci, h.pkt_length),
            (FLAG_BROADCAST, None, 60)
        );
        f[..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&TPID_8021Q.to_be_bytes());
        f[14..16].copy_from_slice(&0x000Au16.to_be_bytes());
        let h = L2Header::for_frame(&f).unwrap();
        assert_eq!(h.flags, FLAG_MULTICAST);
        assert_eq!(h.encode()[3], FLAG_MULTICAST | FLAG_VLAN);
        assert_eq!(h.vlan_tci, Some(10));
        let r = EthRoute::read(&f[..18]).unwrap();
        assert_eq!((r.vlan, r.tci), (10, Some(10)));
        f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 7]);
        assert_eq!(MacCast::of(&r.dest), MacCast::Multicast);
        assert_eq!(MacCast::of(&[0x02, 0, 0, 0, 0, 7]), MacCast::Unicast);
        assert!(L2Header::for_frame(&f[..13]).is_none());
        assert!(EthRoute::read(&f[..15]).is_none(), "tagged but cut short");
        // Found by the layer2 fuzz target: a tagged frame of 16 or 17 bytes (its TCI
        // but not its whole EtherType) was routed.
        assert!(EthRoute::read(&f[..16]).is_none(), "tagged, no EtherType");
        assert!(
            EthRoute::read(&f[..17]).is_none(),
            "tagged, half an EtherType"
        );
        assert!(EthRoute::read(&f[..18]).is_some());
    }
}
