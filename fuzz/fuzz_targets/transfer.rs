//! `transfer::parse_outgoing` and `transfer::deliver` over arbitrary guest memory.
//!
//! Input: byte 0 picks the maximum frame size and whether the receive SBAL lies in the
//! sender's own memory (a partition sending to itself); the rest is copied over the
//! sender's window (its SBAL at the window's start) and the receiver's window (its
//! SBAL at the start too). Invariants: no panic; no byte outside either window changes
//! (and under ASan no byte outside is read); a parsed SBAL is within the MFS with 1-16
//! frames; a delivery writes a well-formed receive SBAL carrying the same frames and,
//! when its elements do not overlap each other or the SBAL, the same bytes; a refused
//! delivery writes nothing at all. The fast paths (one frame in one or two elements,
//! delivered into one element) agree with the general ones: the same descriptor or
//! fault from parse, the same outcome and the same receiver memory from deliver.
#![no_main]

use iqdio::guest::{Memory, MemoryExt};
use iqdio::qdio::{Fragment, HEADER_SIZE, Mfs, SBAL_SIZE, SBALES_PER_SBAL, Sbale};
use iqdio::transfer::{Outgoing, deliver, deliver_general, parse_general, parse_outgoing};
use iqdio_fuzz::{GuardedMem, Input};
use libfuzzer_sys::fuzz_target;

/// Guest bases: small numbers, so the fuzzer finds addresses inside the windows.
const TX_BASE: u64 = 0x1000;
const RX_BASE: u64 = 0x1000;
const TX_LEN: usize = 5 * 4096;
const RX_LEN: usize = 5 * 4096;

fn sbales(mem: &GuardedMem, at: u64) -> [Sbale; SBALES_PER_SBAL] {
    let raw = mem.read(at, SBAL_SIZE);
    core::array::from_fn(|i| Sbale::decode(raw[i * 16..i * 16 + 16].try_into().unwrap()))
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mode = input.u8();
    let mfs = [Mfs::K16, Mfs::K24, Mfs::K40, Mfs::K64][usize::from(mode & 3)];
    let shared = mode & 4 != 0;
    let tx = GuardedMem::new(TX_BASE, TX_LEN);
    let rx = GuardedMem::new(RX_BASE, RX_LEN);
    let split = usize::from(input.u16()) % (data.len() + 1);
    let image = input.bytes(usize::MAX);
    let (a, b) = image.split_at(split.min(image.len()));
    tx.write(TX_BASE, a);
    rx.write(RX_BASE, b);

    let tx_mem = Memory::new(&[tx.window()]).unwrap();
    let rx_mem = if shared {
        tx_mem.clone()
    } else {
        Memory::new(&[rx.window()]).unwrap()
    };
    let (rx_owner, rx_sbal_at) = if shared {
        (&tx, TX_BASE + 8 * SBAL_SIZE as u64)
    } else {
        (&rx, RX_BASE)
    };
    let tx_sbal = tx_mem.sbal(TX_BASE).unwrap();
    let rx_sbal = rx_mem.sbal(rx_sbal_at).unwrap();
    let source = sbales(&tx, TX_BASE);
    let tx_before = tx.snapshot();
    let rx_before = rx_owner.snapshot();

    let parsed = parse_outgoing(&tx_sbal, &tx_mem, mfs);
    assert_eq!(tx.snapshot(), tx_before, "parsing wrote guest memory");
    let mut general = Outgoing::empty();
    let g = parse_general(&tx_sbal, &tx_mem, mfs, false, false, &mut general);
    assert_eq!(
        g.err(),
        parsed.as_ref().err().copied(),
        "fast and general parse differ"
    );
    if let Ok(out) = &parsed {
        assert_eq!(format!("{general:?}"), format!("{out:?}"));
    }
    let Ok(out) = parsed else {
        assert!(tx.guards_intact() && rx.guards_intact());
        return;
    };
    assert!((1..=16).contains(&out.frames()));
    assert!(out.total <= mfs.bytes());
    assert!(out.total >= out.frames() * HEADER_SIZE);
    assert_eq!(out.payload as usize + out.frames() * HEADER_SIZE, out.total);

    // The general path first, then the receiver's memory back as it was, then the
    // path the fabric takes (fast when it applies): the same outcome, the same bytes.
    let general_result = deliver_general(&out, &rx_sbal, &rx_mem);
    let general_after = rx_owner.snapshot();
    rx_owner.write(rx_owner.guest(), &rx_before);
    let result = deliver(&out, &rx_sbal, &rx_mem);
    assert_eq!(result, general_result, "fast and general deliver differ");
    assert!(
        rx_owner.snapshot() == general_after,
        "fast and general deliver wrote different bytes"
    );
    assert!(
        tx.guards_intact() && rx.guards_intact(),
        "a guard byte changed"
    );
    let used = match result {
        Err(_) => {
            assert_eq!(rx_owner.snapshot(), rx_before, "a refused delivery wrote");
            return;
        }
        Ok(used) => usize::from(used),
    };
    assert!((1..=16).contains(&used));
    if std::env::var_os("IQDIO_FUZZ_DEBUG").is_some() {
        eprintln!(
            "transfer: {} frames delivered in {used} elements",
            out.frames()
        );
    }
    // The receive SBAL: `used` elements, LAST_ENTRY on the last only, fragment flags in
    // order, frames as many as sent, lengths adding up to the bytes sent.
    let got = sbales(rx_owner, rx_sbal_at);
    let mut frames = 0;
    let mut open = false;
    let mut total = 0usize;
    for (i, e) in got[..used].iter().enumerate() {
        assert_eq!(
            e.is_last_entry(),
            i + 1 == used,
            "LAST_ENTRY at {i} of {used}"
        );
        assert!(e.length > 0);
        total += e.length as usize;
        match (e.fragment(), open) {
            (Fragment::None, false) => frames += 1,
            (Fragment::First, false) => open = true,
            (Fragment::Middle, true) => {}
            (Fragment::Last, true) => {
                open = false;
                frames += 1;
            }
            other => panic!("fragment flags out of order at {i}: {other:?}"),
        }
    }
    assert!(!open);
    assert_eq!(frames, out.frames(), "frames conserved");
    assert_eq!(total, out.total, "bytes conserved");

    // The same bytes, when nothing the delivery wrote overlaps anything it read or
    // wrote before (the receive elements, the receive SBAL, and in shared memory the
    // sender's elements).
    let mut ranges: Vec<(u64, u64)> = got[..used]
        .iter()
        .map(|e| (e.addr, e.addr + u64::from(e.length)))
        .collect();
    ranges.push((rx_sbal_at, rx_sbal_at + SBAL_SIZE as u64));
    let last = source.iter().position(Sbale::is_last_entry).unwrap();
    if shared {
        for e in &source[..=last] {
            ranges.push((e.addr, e.addr + u64::from(e.length)));
        }
        ranges.push((TX_BASE, TX_BASE + SBAL_SIZE as u64));
    }
    ranges.sort();
    if ranges.windows(2).all(|w| w[0].1 <= w[1].0) {
        let sent: Vec<u8> = source[..=last]
            .iter()
            .flat_map(|e| {
                let off = (e.addr - TX_BASE) as usize;
                tx_before[off..off + e.length as usize].to_vec()
            })
            .collect();
        let received: Vec<u8> = got[..used]
            .iter()
            .flat_map(|e| rx_owner.read(e.addr, e.length as usize))
            .collect();
        assert_eq!(sent, received, "bytes changed in transit");
    }
});
