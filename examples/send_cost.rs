//! The deterministic cost figure (issue 5): runs `N` iterations of one operation on
//! one frame size, for `valgrind --tool=callgrind` to count instructions.
//!
//! ```text
//! send_cost send    SIZE N [ADDRESSES]   # N cycles; do_send = QueueDriver::send
//! send_cost receive SIZE N [ADDRESSES]   # the same run; do_receive = poll + take
//! send_cost siga    SIZE N [ADDRESSES]   # the same run; do_siga = the fabric's SIGA alone
//! send_cost in_place SIZE N [ADDRESSES]  # N cycles; do_send_in_place = send_with
//! send_cost in_place_receive SIZE N [ADDRESSES]  # the same run; do_receive_in_place
//! send_cost packed  SIZE N [ADDRESSES]   # N buffers of 16 frames; do_send_packed
//! send_cost packed_receive SIZE N [ADDRESSES]  # the same run; do_receive (16 frames)
//! send_cost memcpy  SIZE N               # N copies of SIZE bytes; do_copy
//! ```
//!
//! Each operation is its own `#[inline(never)]` function, so that
//! `valgrind --tool=callgrind --toggle-collect='*do_send*' send_cost send 64 N`
//! counts only it, and instructions per operation are
//! `(total(N2) − total(N1)) / (N2 − N1)`, free of setup. `cargo xtask bench` does this.
//! `siga` splits a send into its two sides: `do_siga` is the fabric's part of it (the
//! SIGA the driver issues through the [`Siga`] trait, as a hypervisor's trap would
//! hand it over), so `send` minus `siga` is the program's side (prime, SLSB, outcome).
//! `ADDRESSES` fills the fabric's target table to that many registered addresses (the
//! sends then go round 8 of the receiver's addresses); without it only the pair's own
//! two are registered.
//!
//! The platform is [`support::QuietPlatform`]: its clock is a counter, as a
//! hypervisor's is a register read, so the figure is iqdio's own.

#[path = "../benches/support/mod.rs"]
mod support;

use std::hint::black_box;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use iqdio::{Siga, SigaFunction, SigaStatus};
use support::{BenchFabric, Buf, Pair, QuietPlatform, fabric, frame, lookup_setup};

/// One send: prime, SIGA (the fabric's lookup, copy and signal).
#[inline(never)]
fn do_send(fab: &BenchFabric<QuietPlatform>, pair: &mut Pair, dest: IpAddr) {
    let port = fab.port(pair.tx.lpar);
    pair.tx.queues[0]
        .send(&port, dest, black_box(&pair.frame))
        .expect("send to a polling receiver");
}

/// One send written in place (zero-copy transmit): `send_with` hands the frame's bytes
/// in the output buffer to the program, which stamps them ([`support::stamp`]), then
/// SIGA; the fabric's copy is the send's only one.
#[inline(never)]
fn do_send_in_place(fab: &BenchFabric<QuietPlatform>, pair: &mut Pair, dest: IpAddr, seq: u64) {
    let port = fab.port(pair.tx.lpar);
    let len = pair.frame.len();
    pair.tx.queues[0]
        .send_with(&port, dest, len, |b| support::stamp(b, seq))
        .map_err(|(_, e)| e)
        .expect("send to a polling receiver");
}

/// Frames [`do_send_packed`] puts into one output buffer: an SBAL's 16 elements, one a
/// frame (up to 4064 bytes of packet each).
const PACKED: usize = 16;

/// [`PACKED`] frames for one destination copied into one output buffer and sent with
/// one SIGA (`prime_frames` + `flush`), as Linux's qeth packs frames that share a next
/// hop (`qeth_iqd_may_bulk`).
#[inline(never)]
fn do_send_packed(fab: &BenchFabric<QuietPlatform>, pair: &mut Pair, dest: IpAddr) {
    let port = fab.port(pair.tx.lpar);
    let frame: &[u8] = black_box(&pair.frame);
    let frames = [frame; PACKED];
    let q = &mut pair.tx.queues[0];
    q.prime_frames(dest, &frames).expect("a free output buffer");
    let report = q.flush(&port).expect("SIGA");
    assert!(report.refused.is_empty(), "delivered");
}

/// The fabric's side of a send: SIGA as the driver issues it (the port's direct call).
#[inline(never)]
fn do_siga<S: Siga>(port: &S, subchannel: u16, function: SigaFunction, mask: u32) -> SigaStatus {
    port.siga(subchannel, function, mask)
}

/// A [`Siga`] that hands every call to [`do_siga`], so that callgrind can count the
/// fabric's part of a send apart from the driver's.
struct Counted<S>(S);

impl<S: Siga> Siga for Counted<S> {
    fn siga(&self, subchannel: u16, function: SigaFunction, queue_mask: u32) -> SigaStatus {
        do_siga(&self.0, subchannel, function, queue_mask)
    }
}

/// The same send as [`do_send`], its SIGA through [`Counted`] (not counted itself).
#[inline(never)]
fn send_counted(fab: &BenchFabric<QuietPlatform>, pair: &mut Pair, dest: IpAddr) {
    let port = Counted(fab.port(pair.tx.lpar));
    pair.tx.queues[0]
        .send(&port, dest, black_box(&pair.frame))
        .expect("send to a polling receiver");
}

/// The receiver's side: poll the indicators, take the buffer, copy out, refill.
#[inline(never)]
fn do_receive(pair: &mut Pair) -> usize {
    pair.rx.take(&mut pair.out)
}

/// The receiver's side of the zero-copy cycle (`in_place` and `in_place_receive`
/// runs): poll the indicators, take the buffer reading its frames where they landed
/// (the first and last byte of each piece), refill.
#[inline(never)]
fn do_receive_in_place(pair: &mut Pair) -> usize {
    pair.rx.take_in_place()
}

/// One copy of the frame with the primitive the fabric and the driver copy partition
/// memory with (`iqdio::copy`), so that "beyond its copies" subtracts what the copies
/// really cost.
#[inline(never)]
fn do_copy(dst: &mut [u8], src: &[u8]) {
    let src = black_box(src);
    let n = dst.len().min(src.len());
    // SAFETY: both ranges lie in their slices, which are distinct borrows (apart).
    unsafe { iqdio::copy::candidates::kept(dst.as_mut_ptr(), src.as_ptr(), n) };
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parse = |i: usize| args.get(i).and_then(|a| a.parse::<usize>().ok());
    let (Some(what), Some(size), Some(n)) = (args.first(), parse(1), parse(2)) else {
        eprintln!(
            "usage: send_cost send|receive|siga|in_place|in_place_receive|packed|packed_receive|memcpy SIZE N [ADDRESSES]"
        );
        return ExitCode::from(2);
    };
    if !(1..=56 << 10).contains(&size) {
        eprintln!("send_cost: SIZE must be 1 to 57344 bytes");
        return ExitCode::from(2);
    }
    match what.as_str() {
        "send" | "receive" | "siga" | "in_place" | "in_place_receive" | "packed"
        | "packed_receive" => {
            let in_place = what.starts_with("in_place");
            let packed = what.starts_with("packed");
            if packed && size > 4064 {
                eprintln!("send_cost: packed frames are at most 4064 bytes (one element each)");
                return ExitCode::from(2);
            }
            let fab = fabric(QuietPlatform::default());
            let (mut pair, _filler, dests) = match parse(3) {
                Some(total) => {
                    let (mut pair, filler, dests) = lookup_setup(&fab, total);
                    pair.frame = frame(size);
                    pair.out = Buf::zeroed(size);
                    (pair, Some(filler), dests)
                }
                None => {
                    let pair = Pair::new(&fab, 1, size);
                    let dest = pair.dest;
                    (pair, None, vec![dest])
                }
            };
            let mut bytes = 0;
            for i in 0..n {
                if what == "siga" {
                    send_counted(&fab, &mut pair, dests[i % dests.len()]);
                } else if in_place {
                    do_send_in_place(&fab, &mut pair, dests[i % dests.len()], i as u64);
                } else if packed {
                    do_send_packed(&fab, &mut pair, dests[i % dests.len()]);
                } else {
                    do_send(&fab, &mut pair, dests[i % dests.len()]);
                }
                bytes += if in_place {
                    do_receive_in_place(&mut pair)
                } else {
                    do_receive(&mut pair)
                };
            }
            // A polling receiver gets no interrupt, except for the very first frame:
            // until it has consumed a buffer, nothing reads 0x81.
            let interrupts = fab.platform().interrupts.load(Ordering::Relaxed);
            let frames = if packed { n * PACKED } else { n };
            if bytes != frames * size || interrupts > 1 {
                eprintln!("send_cost: {bytes} bytes received, {interrupts} interrupts");
                return ExitCode::FAILURE;
            }
        }
        "memcpy" => {
            let src = frame(size);
            let mut dst = Buf::zeroed(size);
            for _ in 0..n {
                do_copy(&mut dst, &src);
            }
            black_box(&dst);
        }
        other => {
            eprintln!("send_cost: unknown operation {other}");
            return ExitCode::from(2);
        }
    }
    ExitCode::SUCCESS
}
