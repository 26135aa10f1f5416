//! Descriptor and header decoding over arbitrary bytes: `Sbale::decode` and
//! `L3Header::decode` never panic, round-trip through `encode`, and accept only what
//! the formats allow.
#![no_main]

use std::net::IpAddr;

use iqdio::Reason;
use iqdio::qdio::{CastType, Fragment, HEADER_SIZE, L3Header, SBALE_SIZE, Sbale, SlsbState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Every 16-byte window of the input is an SBALE.
    for chunk in data.windows(SBALE_SIZE).step_by(7) {
        let raw: [u8; SBALE_SIZE] = chunk.try_into().unwrap();
        let e = Sbale::decode(&raw);
        let mut want = raw;
        want[1] = 0; // the reserved byte encodes as zero
        assert_eq!(e.encode(), want);
        assert_eq!(Sbale::decode(&e.encode()), e);
        assert_eq!(e.is_last_entry(), raw[0] & 0x40 != 0);
        assert_eq!(Fragment::from_eflags(e.fragment().bits()), e.fragment());
        assert_eq!(e.fragment().bits(), raw[0] & 0x0C);
    }
    // Every 32-byte window is a frame header.
    for chunk in data.windows(HEADER_SIZE).step_by(5) {
        let raw: [u8; HEADER_SIZE] = chunk.try_into().unwrap();
        let Ok(h) = L3Header::decode(&raw) else {
            continue;
        };
        assert_eq!(raw[0], 0x01, "only layer-3 headers decode");
        let cast = match raw[1] & 0x07 {
            0x06 => CastType::Unicast,
            0x04 => CastType::Multicast,
            0x05 => CastType::Broadcast,
            0x07 => CastType::Anycast,
            other => panic!("cast bits {other:#x} decoded"),
        };
        assert_eq!(h.cast, cast);
        assert_eq!(h.length, u16::from_be_bytes([raw[8], raw[9]]));
        match h.next_hop {
            IpAddr::V4(v4) => {
                assert_eq!(raw[1] & 0x80, 0);
                assert!(raw[0x10..0x1C].iter().all(|&b| b == 0));
                assert_eq!(v4.octets(), raw[0x1C..0x20]);
            }
            IpAddr::V6(v6) => {
                assert_ne!(raw[1] & 0x80, 0);
                assert!(
                    v6.to_ipv4().is_none(),
                    "an IPv4 address under the IPv6 flag"
                );
                assert_eq!(v6.octets(), raw[0x10..0x20]);
            }
        }
        // encode gives a header that decodes to the same value.
        assert_eq!(L3Header::decode(&h.encode()), Ok(h));
    }
    for &b in data.iter().take(64) {
        if let Some(r) = Reason::from_code(b) {
            assert_eq!(r.code(), b);
        }
        let s = SlsbState(b);
        assert_eq!(
            s.flags().bits() | s.nibble(),
            b & 0xEF,
            "bit 4 belongs to neither"
        );
        let _ = s.owned_by_fabric();
    }
});
