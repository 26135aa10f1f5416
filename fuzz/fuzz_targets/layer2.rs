//! The layer-2 header (`qeth_hdr_layer2`) and the Ethernet frame behind it, as a
//! layer-2 queue set's SIGA parses them (`transfer::parse_outgoing_into` with `layer2`):
//! one frame in one element, its 32 header bytes and its Ethernet bytes from the input
//! (nudged towards consistency by a mode byte so the fuzzer reaches every check).
//! Invariants: no panic; the outcome is exactly what an independent model of the checks
//! says, in their order: the other layer's id 0x2B, another id 0x20, a length that is
//! not the frame's 0x24, a frame too short for its MACs and EtherType (or its tag) 0x2C,
//! a cast flag other than the destination MAC's, or group traffic off the multicast
//! queue, 0x27, a VLAN flag and id other than the frame's 802.1Q tag 0x2D; a frame that
//! passes is routed by its destination MAC and tag. `L2Header::decode` and `encode`
//! round-trip.
#![no_main]

use iqdio::Reason;
use iqdio::guest::{Memory, MemoryExt};
use iqdio::qdio::l2::{EthRoute, L2Header, MacCast};
use iqdio::qdio::{Eflags, HEADER_SIZE, Mfs, Sbale};
use iqdio::transfer::{Outgoing, parse_outgoing_into};
use iqdio_fuzz::{GuardedMem, Input};
use libfuzzer_sys::fuzz_target;

const BASE: u64 = 0x1000;
const LEN: usize = 2 * 4096;
/// Where the frame (header first) lies.
const DATA: u64 = BASE + 0x400;

/// What the checks say of a header `h` in front of Ethernet bytes `eth`, in order.
fn model(h: &[u8; HEADER_SIZE], eth: &[u8], multicast_queue: bool) -> Result<EthRoute, Reason> {
    match h[0] {
        0x02 => {}
        0x01 => return Err(Reason::WrongLayer),
        _ => return Err(Reason::HeaderId),
    }
    if usize::from(u16::from_be_bytes([h[6], h[7]])) != eth.len() {
        return Err(Reason::HeaderLength);
    }
    if eth.len() < 14 {
        return Err(Reason::EthernetFrame);
    }
    let tagged = eth[12..14] == [0x81, 0x00];
    if tagged && eth.len() < 18 {
        return Err(Reason::EthernetFrame);
    }
    let dest: [u8; 6] = eth[..6].try_into().unwrap();
    let cast = if dest == [0xFF; 6] {
        0x02
    } else if dest[0] & 1 != 0 {
        0x01
    } else {
        0x04
    };
    if h[3] & !0x10 != cast || (cast != 0x04 && !multicast_queue) {
        return Err(Reason::CastType);
    }
    let tci = tagged.then(|| u16::from_be_bytes([eth[14], eth[15]]));
    let flagged = (h[3] & 0x10 != 0).then(|| u16::from_be_bytes([h[10], h[11]]));
    if flagged != tci {
        return Err(Reason::VlanMismatch);
    }
    Ok(EthRoute {
        dest,
        vlan: tci.map_or(0, |t| t & 0x0FFF),
        tci,
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8();
    let multicast_queue = mode & 1 != 0;
    let eth_len = usize::from(input.u16()) % 160;
    let mut h = [0u8; HEADER_SIZE];
    h.copy_from_slice(&{
        let b = input.bytes(HEADER_SIZE);
        let mut v = [0u8; HEADER_SIZE];
        v[..b.len()].copy_from_slice(b);
        v
    });
    let mut eth = vec![0u8; eth_len];
    let b = input.bytes(eth_len);
    eth[..b.len()].copy_from_slice(b);
    // Nudges: the header Linux would write for the frame, then the fuzzer's bytes
    // over the fields the mode leaves alone.
    if mode & 2 != 0
        && let Some(good) = L2Header::for_frame(&eth)
    {
        let g = good.encode();
        h[0] = g[0];
        h[6..8].copy_from_slice(&g[6..8]);
        if mode & 4 != 0 {
            h[3] = g[3];
            h[10..12].copy_from_slice(&g[10..12]);
        }
    }
    if mode & 8 != 0 && eth_len >= 16 {
        eth[12..14].copy_from_slice(&[0x81, 0x00]);
    }
    // The decoder round-trips whatever it accepts.
    if let Some(d) = L2Header::decode(&h) {
        assert_eq!(h[0], 0x02);
        assert_eq!(L2Header::decode(&d.encode()), Some(d));
        assert_eq!(d.flags & 0x10, 0, "the VLAN bit is carried by vlan_tci");
        assert_eq!(d.vlan_tci.is_some(), h[3] & 0x10 != 0);
    }
    let mem = GuardedMem::new(BASE, LEN);
    mem.write(DATA, &h);
    mem.write(DATA + HEADER_SIZE as u64, &eth);
    let e = Sbale {
        addr: DATA,
        length: (HEADER_SIZE + eth_len) as u32,
        eflags: Eflags::LAST_ENTRY.bits(),
        ..Sbale::default()
    };
    mem.write(BASE, &e.encode());
    let memory = Memory::new(&[mem.window()]).unwrap();
    let sbal = memory.sbal(BASE).unwrap();
    let mut out = Outgoing::empty();
    let got = parse_outgoing_into(&sbal, &memory, Mfs::K16, multicast_queue, true, &mut out);
    match (model(&h, &eth, multicast_queue), got) {
        (Ok(route), Ok(())) => {
            assert_eq!(out.route, Some(route));
            assert_eq!(out.frames(), 1);
            assert_eq!(out.payload, eth_len as u64);
            let cast = MacCast::of(&route.dest);
            assert!(cast == MacCast::Unicast || multicast_queue);
        }
        (Err(want), Err(f)) => {
            assert_eq!(f.reason, want, "header {h:02x?} frame {eth:02x?}");
            assert_eq!(f.element, 0);
        }
        (want, got) => panic!("model {want:?}, parse {got:?}: header {h:02x?} frame {eth:02x?}"),
    }
    assert!(mem.guards_intact());
});
