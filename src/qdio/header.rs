//! The 32-byte layer-3 frame header at the start of every frame (qeth `qeth_hdr_layer3`).
//!
//! `0x00 id` (0x01 layer 3) | `0x01 flags` (0x80 IPv6; cast bits 0x07: 0x06 unicast,
//! 0x04 multicast, 0x05 broadcast, 0x07 anycast) | `0x08 length u16`
//! (packet bytes, header excluded) | `0x0B ext_flags` (0x01 VLAN id valid) |
//! `0x0C vlan_id u16` | `0x10 next hop, 16 bytes` (IPv6 all 16, IPv4 in 0x1C-0x1F).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Bytes in a frame header.
pub const HEADER_SIZE: usize = 32;

/// Header id of a layer-3 frame.
const ID_LAYER3: u8 = 0x01;
/// Flags bit: the next hop is IPv6.
const FLAG_IPV6: u8 = 0x80;
/// Flags bits: the cast type.
const CAST_MASK: u8 = 0x07;
/// ext_flags bit: `vlan_id` is valid.
const EXT_VLAN: u8 = 0x01;

/// Cast type of a frame (flags & 0x07).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CastType {
    /// One receiver (0x06).
    Unicast,
    /// A multicast group (0x04).
    Multicast,
    /// Every queue that enabled broadcast (0x05).
    Broadcast,
    /// An IPv6 anycast address (0x07): Linux's `qeth_l3_fill_header`
    /// (`drivers/s390/net/qeth_l3_main.c`) sets it for an `RTN_ANYCAST` route, and
    /// `qeth_iqd_select_queue` sends every non-unicast frame on the multicast queue.
    Anycast,
}

impl CastType {
    const fn bits(self) -> u8 {
        match self {
            Self::Unicast => 0x06,
            Self::Multicast => 0x04,
            Self::Broadcast => 0x05,
            Self::Anycast => 0x07,
        }
    }
}

/// Why a header does not decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// The id byte is not 0x01 (layer 3).
    Id(u8),
    /// The cast bits name no cast type.
    CastType(u8),
    /// The IPv6 flag and the address bytes disagree: an IPv4-mapped or all-zero-prefix
    /// address under the IPv6 flag, or non-zero bytes 0x10-0x1B under IPv4.
    AddressFamily,
}

impl core::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Id(id) => write!(f, "frame header id {id:#04x} is not layer 3 (0x01)"),
            Self::CastType(c) => write!(f, "frame header cast bits {c:#04x} name no cast type"),
            Self::AddressFamily => f.write_str("frame header IPv6 flag and next hop disagree"),
        }
    }
}

impl core::error::Error for HeaderError {}

/// A decoded layer-3 frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L3Header {
    /// Cast type.
    pub cast: CastType,
    /// Bytes of packet after the header.
    pub length: u16,
    /// VLAN id, when ext_flags says it is valid.
    pub vlan: Option<u16>,
    /// The next-hop address: where the fabric delivers the frame.
    pub next_hop: IpAddr,
}

impl L3Header {
    /// A unicast header for `length` packet bytes to `next_hop`.
    pub const fn unicast(next_hop: IpAddr, length: u16) -> Self {
        Self {
            cast: CastType::Unicast,
            length,
            vlan: None,
            next_hop,
        }
    }

    /// Decodes a header, checking id, cast bits and address family.
    #[inline]
    pub fn decode(b: &[u8; HEADER_SIZE]) -> Result<Self, HeaderError> {
        if b[0] != ID_LAYER3 {
            return Err(HeaderError::Id(b[0]));
        }
        let flags = b[1];
        let cast = match flags & CAST_MASK {
            0x06 => CastType::Unicast,
            0x04 => CastType::Multicast,
            0x05 => CastType::Broadcast,
            0x07 => CastType::Anycast,
            other => return Err(HeaderError::CastType(other)),
        };
        let length = u16::from_be_bytes([b[8], b[9]]);
        let vlan = (b[0x0B] & EXT_VLAN != 0).then(|| u16::from_be_bytes([b[0x0C], b[0x0D]]));
        // The next hop as one big-endian number (bytes 0x10-0x1F), as `encode` writes
        // it: an IPv4 address is its low 32 bits, the 96 above them zero.
        let mut addr = [0u8; 16];
        addr.copy_from_slice(&b[0x10..0x20]);
        let hop = u128::from_be_bytes(addr);
        let above_v4 = hop >> 32;
        let next_hop = if flags & FLAG_IPV6 != 0 {
            // An IPv4 address dressed as IPv6 (::a.b.c.d or ::ffff:a.b.c.d, what
            // `Ipv6Addr::to_ipv4` converts: bits 127-32 are 0 or 0xFFFF) is a
            // program that set the flag by mistake, not a next hop.
            if above_v4 == 0 || above_v4 == 0xFFFF {
                return Err(HeaderError::AddressFamily);
            }
            IpAddr::V6(Ipv6Addr::from_bits(hop))
        } else {
            if above_v4 != 0 {
                return Err(HeaderError::AddressFamily);
            }
            IpAddr::V4(Ipv4Addr::from_bits(hop as u32))
        };
        Ok(Self {
            cast,
            length,
            vlan,
            next_hop,
        })
    }

    /// Sets the `length` field of the encoded header `b` (bytes 0x08-0x09), the one
    /// field in which the headers of frames packed for one destination differ: what
    /// [`encode`](Self::encode) writes there.
    #[inline(always)]
    pub(crate) fn encode_length(b: &mut [u8; HEADER_SIZE], length: u16) {
        let [hi, lo] = length.to_be_bytes();
        b[8] = hi;
        b[9] = lo;
    }

    /// Encodes the header to its 32 bytes: two 16-byte big-endian numbers, the fields
    /// of bytes 0x00-0x0F shifted to their places and the next hop (an IPv4 address
    /// is its own number, so it lands in bytes 0x1C-0x1F), rather than byte by byte.
    #[inline]
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let (family, next_hop) = match self.next_hop {
            IpAddr::V4(v4) => (0, u128::from(v4.to_bits())),
            IpAddr::V6(v6) => (FLAG_IPV6, v6.to_bits()),
        };
        let (ext, vlan) = match self.vlan {
            Some(vlan) => (EXT_VLAN, vlan),
            None => (0, 0),
        };
        // Byte k of the 16 is bits 127 - 8k down to 120 - 8k.
        let fields = (u128::from(ID_LAYER3) << 120)
            | (u128::from(self.cast.bits() | family) << 112)
            | (u128::from(self.length) << 48)
            | (u128::from(ext) << 32)
            | (u128::from(vlan) << 16);
        let mut b = [0u8; HEADER_SIZE];
        let (head, tail) = b.split_at_mut(HEADER_SIZE / 2);
        head.copy_from_slice(&fields.to_be_bytes());
        tail.copy_from_slice(&next_hop.to_be_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_is_byte_exact() {
        let h = L3Header::unicast(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 0x1234);
        let b = h.encode();
        let mut want = [0u8; 32];
        want[0] = 0x01;
        want[1] = 0x06;
        want[8] = 0x12;
        want[9] = 0x34;
        want[0x1C..0x20].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(b, want);
        assert_eq!(L3Header::decode(&b), Ok(h));
    }

    #[test]
    fn ipv6_header_is_byte_exact() {
        let ip: Ipv6Addr = "fd00::1:2".parse().unwrap();
        let mut h = L3Header::unicast(IpAddr::V6(ip), 7);
        h.vlan = Some(0x0ABC);
        let b = h.encode();
        assert_eq!(b[1], 0x86);
        assert_eq!(&b[8..10], &[0, 7]);
        assert_eq!(b[0x0B], 0x01);
        assert_eq!(&b[0x0C..0x0E], &[0x0A, 0xBC]);
        assert_eq!(&b[0x10..0x20], &ip.octets());
        assert_eq!(L3Header::decode(&b), Ok(h));
    }

    #[test]
    fn encode_length_patches_what_encode_writes() {
        let ip: Ipv6Addr = "fd00::1:2".parse().unwrap();
        for next_hop in [IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), IpAddr::V6(ip)] {
            let mut b = L3Header::unicast(next_hop, 0).encode();
            for length in [0, 1, 0x1234, u16::MAX] {
                L3Header::encode_length(&mut b, length);
                assert_eq!(b, L3Header::unicast(next_hop, length).encode());
            }
        }
    }

    #[test]
    fn bad_id_is_refused() {
        let mut b = L3Header::unicast(IpAddr::V4(Ipv4Addr::LOCALHOST), 1).encode();
        b[0] = 0x02;
        assert_eq!(L3Header::decode(&b), Err(HeaderError::Id(2)));
    }

    #[test]
    fn bad_cast_bits_are_refused() {
        let mut b = L3Header::unicast(IpAddr::V4(Ipv4Addr::LOCALHOST), 1).encode();
        b[1] = 0x03;
        assert_eq!(L3Header::decode(&b), Err(HeaderError::CastType(3)));
        b[1] = 0x04;
        assert_eq!(L3Header::decode(&b).unwrap().cast, CastType::Multicast);
        b[1] = 0x05;
        assert_eq!(L3Header::decode(&b).unwrap().cast, CastType::Broadcast);
        b[1] = 0x07;
        let anycast = L3Header::decode(&b).unwrap();
        assert_eq!(anycast.cast, CastType::Anycast);
        assert_eq!(anycast.encode()[1], 0x07);
        for bits in [0x00, 0x01, 0x02] {
            b[1] = bits;
            assert_eq!(L3Header::decode(&b), Err(HeaderError::CastType(bits)));
        }
    }

    #[test]
    fn ipv6_flag_with_an_ipv4_address_is_refused() {
        let mut b = L3Header::unicast(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)), 1).encode();
        b[1] |= 0x80;
        assert_eq!(L3Header::decode(&b), Err(HeaderError::AddressFamily));
        // ::ffff:10.0.0.9 too.
        b[0x1A] = 0xFF;
        b[0x1B] = 0xFF;
        assert_eq!(L3Header::decode(&b), Err(HeaderError::AddressFamily));
    }

    /// The next hop decoded as one number refuses and builds what the byte-wise
    /// form did (`Ipv6Addr::to_ipv4` under the IPv6 flag, bytes 0x10-0x1B zero
    /// under IPv4), for addresses with one or two bytes set (0x01, 0xFF) anywhere,
    /// on top of zero and of the ::ffff:0:0/96 prefix, under both flags.
    #[test]
    fn next_hop_as_one_number_matches_the_bytewise_checks() {
        let mut bases = vec![[0u8; 16]];
        let mut mapped = [0u8; 16];
        mapped[10] = 0xFF;
        mapped[11] = 0xFF;
        bases.push(mapped);
        let mut addrs = Vec::new();
        for base in bases {
            addrs.push(base);
            for i in 0..16 {
                for v in [0x01, 0xFF] {
                    let mut a = base;
                    a[i] = v;
                    addrs.push(a);
                    for j in 0..16 {
                        let mut b = a;
                        b[j] = 0xFF;
                        addrs.push(b);
                    }
                }
            }
        }
        for addr in addrs {
            for flags in [0x06u8, 0x86] {
                let mut b = [0u8; HEADER_SIZE];
                b[0] = ID_LAYER3;
                b[1] = flags;
                b[0x10..0x20].copy_from_slice(&addr);
                let want = if flags & FLAG_IPV6 != 0 {
                    let v6 = Ipv6Addr::from(addr);
                    v6.to_ipv4()
                        .map_or(Ok(IpAddr::V6(v6)), |_| Err(HeaderError::AddressFamily))
                } else if addr[..12].iter().any(|&x| x != 0) {
                    Err(HeaderError::AddressFamily)
                } else {
                    Ok(IpAddr::V4(Ipv4Addr::new(
                        addr[12], addr[13], addr[14], addr[15],
                    )))
                };
                assert_eq!(
                    L3Header::decode(&b).map(|h| h.next_hop),
                    want,
                    "{addr:02x?} {flags:#x}"
                );
            }
        }
    }

    #[test]
    fn ipv4_with_garbage_in_the_upper_address_bytes_is_refused() {
        let mut b = L3Header::unicast(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)), 1).encode();
        b[0x10] = 1;
        assert_eq!(L3Header::decode(&b), Err(HeaderError::AddressFamily));
    }
}
