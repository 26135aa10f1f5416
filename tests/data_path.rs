//! The frame data path against a partition that rewrites its own memory (issue 9,
//! defects 3, 4 and 10).
//!
//! - A sender rewrites its frame header while SIGA runs: every frame a receiver gets
//!   carries a header that was valid for routing to that receiver.
//! - A receiver's input buffer is corrupted after the fabric filled it and before the
//!   driver takes it: every frame is handed over or counted bad, never skipped.
//! - A refusal writes only the `sflags` bytes the fabric owns in elements 14 and 15.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use common::*;
use iqdio::driver::{DriverConfig, RxCounters, SendError};
use iqdio::qdio::{HEADER_SIZE, L3Header, Sbale, SlsbState};
use iqdio::{FabricConfig, Mfs, Reason};

/// The one queue mask that names an existing queue (output queue 0).
const Q0: u32 = 1 << 31;

/// 64 KiB frames, 4 output and 8 input buffers.
fn cfg() -> DriverConfig {
    DriverConfig {
        tx_buffers: 4,
        rx_buffers: 8,
        ..config(Mfs::K64)
    }
}

/// A (LPAR 1, one queue set) and B (LPAR 2, two queue sets) on one fabric.
struct Pair {
    fab: std::sync::Arc<TestFabric>,
    a: Partition,
    b: Partition,
}

impl Pair {
    fn new() -> Self {
        let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
        let a = Partition::new(&fab, 1, 1, cfg());
        let b = Partition::new(&fab, 2, 2, cfg());
        Self { fab, a, b }
    }

    fn guards(&self) {
        assert!(self.a.ram.guards_intact() && self.b.ram.guards_intact());
    }

    /// A sends B frame `p` (send `i` of a test) and B takes exactly it, whole.
    fn send_whole(&mut self, i: u32, p: &[u8]) {
        let port = self.fab.port(1);
        self.a.queues[0]
            .send(&port, v4(2, 0), p)
            .unwrap_or_else(|e| panic!("send {i} of {} bytes: {e:?}", p.len()));
        let got = take(&mut self.b, 0);
        assert_eq!(got.len(), 1, "send {i}");
        assert!(
            got[0].1 == p,
            "send {i} of {} bytes arrived changed",
            p.len()
        );
    }
}

/// Partition memory written with atomics, as another core of the partition writes it
/// while the fabric reads it (the fabric's SBALE and SLSB accesses are atomics too).
#[derive(Clone, Copy)]
struct Racy<'r> {
    ram: &'r GuestRam,
}

impl Racy<'_> {
    fn host(&self, guest: u64, len: usize) -> *mut u8 {
        let off = (guest - GUEST_BASE) as usize;
        assert!(
            off + len <= self.ram.len(),
            "outside the partition's window"
        );
        // SAFETY: inside the window (asserted).
        unsafe { self.ram.host().as_ptr().add(off) }
    }

    fn byte(&self, guest: u64, v: u8, order: Ordering) {
        // SAFETY: inside the window (`host` asserts it), which outlives the scope the
        // racing threads run in; guest memory is only accessed through atomics or raw
        // copies, never through a Rust reference.
        unsafe { AtomicU8::from_ptr(self.host(guest, 1)) }.store(v, order);
    }

    fn bytes(&self, guest: u64, v: &[u8]) {
        for (i, b) in v.iter().enumerate() {
            self.byte(guest + i as u64, *b, Ordering::Relaxed);
        }
    }

    fn sbale(&self, sbal: u64, i: usize, e: &Sbale) {
        let b = e.encode();
        for (k, half) in b.chunks(8).enumerate() {
            let p = self.host(sbal + (i * 16 + k * 8) as u64, 8);
            assert!((p as usize).is_multiple_of(8));
            // SAFETY: as for `byte`; 8-aligned (asserted).
            unsafe { AtomicU64::from_ptr(p.cast::<u64>()) }.store(
                u64::from_ne_bytes(half.try_into().unwrap()),
                Ordering::Relaxed,
            );
        }
    }
}

fn raw_el(ram: &GuestRam, sbal: u64, i: usize) -> [u8; 16] {
    let mut raw = [0u8; 16];
    ram.read(sbal + (i * 16) as u64, &mut raw);
    raw
}

// ---------------------------------------------------------------------------------
// Defect 3: the header a receiver gets is the one the fabric checked and routed by.
// ---------------------------------------------------------------------------------

#[test]
fn header_rewritten_during_siga_reaches_no_receiver_unrouted() {
    // A primes one frame (100 packet bytes) at a time by hand and issues SIGA write,
    // while a second thread keeps flipping the header's next hop (B's queue set 0 or
    // 1), length (right or one too many) and cast (unicast or multicast). Each frame
    // is delivered or refused by what the fabric read; whatever arrives at B's queue
    // set k must carry next hop k, length 100, unicast, and the packet intact, and
    // every frame delivered is one B's driver hands over (none counted bad).
    const LEN: usize = 100;
    const ROUNDS: u32 = 4000;
    let mut w = Pair::new();
    let params = w.a.queues[0].params();
    let hops = [v4(2, 0), v4(2, 1)];
    let packet = payload((1, 0), 9, LEN);
    // Where A's driver puts the header of output buffer 0's frame: A's own data page,
    // which the driver is not used for from here on.
    w.a.queues[0].prime(hops[0], &packet).unwrap();
    let head = el_addr(&w.a.ram, params.output_sbals[0]);
    assert_eq!(w.a.queues[0].flush(&w.fab.port(1)).unwrap().delivered, 1);
    let mut got = [Vec::new(), Vec::new()];
    got[0].extend(take(&mut w.b, 0));
    let stop = AtomicBool::new(false);
    let (mut delivered, mut frames) = (0u64, 0u64);
    let mut refusals = [0u64; 256];
    let racy = Racy { ram: &w.a.ram };
    let flips = std::thread::scope(|s| {
        let flipper = s.spawn(|| {
            let mut rng = Rng(0x5EED_1234);
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = rng.next();
                let pick = (r >> 8) & 1 == 0;
                match r % 3 {
                    // IPv4 next hop in bytes 0x1C-0x1F: 10.0.2.1 or 10.0.2.2.
                    0 => racy.byte(head + 0x1F, if pick { 1 } else { 2 }, Ordering::Relaxed),
                    // Length, low byte (0x09): right, or one more than the bytes held.
                    1 => racy.byte(head + 9, LEN as u8 + u8::from(pick), Ordering::Relaxed),
                    // Flags (0x01): unicast 0x06 or multicast 0x04.
                    _ => racy.byte(head + 1, if pick { 0x06 } else { 0x04 }, Ordering::Relaxed),
                }
                flips += 1;
            }
            flips
        });
        // From buffer 1: the driver's send above moved the fabric's cursor past 0.
        for i in 0..ROUNDS {
            let n = ((i + 1) % 128) as usize;
            let sbal = params.output_sbals[n];
            // A valid frame to one of B's queue sets, then hand it over.
            racy.bytes(
                head,
                &L3Header::unicast(hops[i as usize % 2], LEN as u16).encode(),
            );
            racy.sbale(
                sbal,
                0,
                &Sbale {
                    eflags: 0x40,
                    length: (HEADER_SIZE + LEN) as u32,
                    addr: head,
                    ..Sbale::default()
                },
            );
            // Release: the header and element before 0x62 (the fabric loads it Acquire).
            racy.byte(params.output_slsb + n as u64, 0x62, Ordering::Release);
            let r = w.fab.siga_write(1, 0, Q0).expect("cc0");
            assert_eq!((r.buffers, r.delivered + r.refused), (1, 1));
            delivered += u64::from(r.delivered);
            frames += u64::from(r.frames);
            match w.a.ram.read_vec(params.output_slsb + n as u64, 1)[0] {
                0xA1 => {}
                0xAF => refusals[usize::from(raw_el(&w.a.ram, sbal, 15)[3])] += 1,
                other => panic!("buffer {n} ends {other:#x}"),
            }
            for (k, g) in got.iter_mut().enumerate() {
                g.extend(take(&mut w.b, k));
            }
        }
        stop.store(true, Ordering::Relaxed);
        flipper.join().unwrap()
    });
    // Only the flipper's own refusals: a wrong length or a multicast cast.
    let length = refusals[usize::from(Reason::HeaderLength.code())];
    let cast = refusals[usize::from(Reason::CastType.code())];
    assert_eq!(
        refusals.iter().sum::<u64>(),
        length + cast,
        "other refusals"
    );
    for (k, frames) in got.iter().enumerate() {
        let want = L3Header::unicast(hops[k], LEN as u16);
        for (header, data) in frames {
            assert_eq!(header, &want, "a frame at B's queue set {k}");
            assert_eq!(data, &packet, "its packet");
        }
        let rx = w.b.queues[k].rx_counters();
        assert_eq!(rx.bad_frames, 0, "B's queue set {k} counted bad frames");
    }
    let received = (got[0].len() + got[1].len()) as u64;
    assert_eq!(received, 1 + frames, "every delivery handed over");
    assert!(flips > 0);
    eprintln!(
        "{flips} flips; {delivered} delivered ({} and {}), refused: {length} length, {cast} cast",
        got[0].len(),
        got[1].len()
    );
    w.guards();
}

/// Element 0's address of the SBAL at `sbal`.
fn el_addr(ram: &GuestRam, sbal: u64) -> u64 {
    Sbale::decode(&raw_el(ram, sbal, 0)).addr
}

/// Every frame waiting on `p`'s queue set `q`: its header and packet.
fn take(p: &mut Partition, q: usize) -> Vec<(L3Header, Vec<u8>)> {
    let mut out = Vec::new();
    while p.queues[q]
        .receive(|f| {
            let mut data = vec![0u8; f.len()];
            assert_eq!(f.copy_to(&mut data), f.len());
            out.push((*f.header().expect("a layer-3 frame"), data));
        })
        .is_some()
    {}
    out
}

// ---------------------------------------------------------------------------------
// Defect 4: every frame a receiver gets is handed over or counted as bad.
// ---------------------------------------------------------------------------------

/// A change to a partition's memory, given the guest address of an input SBAL.
type Corruption = Box<dyn Fn(&GuestRam, u64)>;

/// Ways a received buffer holding two frames (elements 0 and 1) can stop describing
/// its first frame: applied to B's memory after the fabric filled the buffer, before
/// B's driver takes it.
fn corruptions() -> Vec<(&'static str, Corruption)> {
    fn header_byte(at: usize, f: fn(u8) -> u8) -> Corruption {
        Box::new(move |ram, sbal| {
            let head = el_addr(ram, sbal) + at as u64;
            let b = ram.read_vec(head, 1)[0];
            ram.write(head, &[f(b)]);
        })
    }
    fn element(f: fn(Sbale) -> Sbale) -> Corruption {
        Box::new(move |ram, sbal| {
            let e = Sbale::decode(&raw_el(ram, sbal, 0));
            ram.write(sbal, &f(e).encode());
        })
    }
    vec![
        ("header id 0x02", header_byte(0, |_| 0x02)),
        ("header length one more", header_byte(9, |b| b + 1)),
        ("header length one less", header_byte(9, |b| b - 1)),
        ("cast bits naming no cast type", header_byte(1, |_| 0x03)),
        (
            "IPv6 flag over an IPv4 next hop",
            header_byte(1, |b| b | 0x80),
        ),
        (
            "element shorter than the header",
            element(|e| Sbale { length: 16, ..e }),
        ),
        (
            "element of length zero",
            element(|e| Sbale { length: 0, ..e }),
        ),
        (
            "element outside the driver's receive data",
            element(|e| Sbale {
                addr: GUEST_BASE,
                ..e
            }),
        ),
        (
            "element past the end of the address space",
            element(|e| Sbale {
                addr: u64::MAX - 8,
                ..e
            }),
        ),
        (
            "a middle element with no frame open",
            element(|e| Sbale {
                eflags: e.eflags | 0x08,
                ..e
            }),
        ),
        (
            "a first element whose frame never ends",
            element(|e| Sbale {
                eflags: e.eflags | 0x04,
                ..e
            }),
        ),
    ]
}

#[test]
fn received_frame_corrupted_before_the_driver_takes_it_is_counted() {
    // For each corruption: A sends B one buffer of two frames; B's first frame is
    // broken in B's own memory; B's driver hands over the second frame intact and
    // counts the first, and the counts add up to what the fabric delivered.
    let mut w = Pair::new();
    let port = w.fab.port(1);
    let (first, second) = (payload((1, 0), 1, 300), payload((1, 0), 2, 500));
    let b_params = w.b.queues[0].params();
    let cases = corruptions();
    for (k, (name, corrupt)) in cases.iter().enumerate() {
        w.a.queues[0]
            .prime_frames(v4(2, 0), &[&first, &second])
            .unwrap();
        let r = w.a.queues[0].flush(&port).unwrap();
        assert_eq!(r.delivered, 1, "{name}");
        let n = k % 128;
        assert_eq!(w.b.queues[0].input_state(n as u8), SlsbState::INPUT_PRIMED);
        corrupt(&w.b.ram, b_params.input_sbals[n]);
        let before = w.b.queues[0].rx_counters();
        let mut handed = Vec::new();
        let frames = w.b.queues[0].receive(|f| {
            let mut data = vec![0u8; f.len()];
            assert_eq!(f.copy_to(&mut data), f.len());
            handed.push(data);
        });
        assert_eq!(frames, Some(1), "{name}");
        assert_eq!(handed, vec![second.clone()], "{name}: the intact frame");
        assert_eq!(
            w.b.queues[0].rx_counters(),
            RxCounters {
                frames: before.frames + 1,
                bad_frames: before.bad_frames + 1,
                // Id 0x02 is the layer-2 header's: the other layer, counted as such
                // too.
                wrong_layer: before.wrong_layer + u64::from(*name == "header id 0x02"),
                ..before
            },
            "{name}: counted"
        );
    }
    // A frame whose buffer ends (LAST_ENTRY) before its last element: the first frame
    // is handed over, the second counted.
    w.a.queues[0]
        .prime_frames(v4(2, 0), &[&first, &second])
        .unwrap();
    w.a.queues[0].flush(&port).unwrap();
    let sbal = b_params.input_sbals[cases.len()];
    let e1 = Sbale::decode(&raw_el(&w.b.ram, sbal, 1));
    w.b.ram.write(
        sbal + 16,
        &Sbale {
            eflags: 0x40 | 0x04,
            ..e1
        }
        .encode(),
    );
    let mut handed = Vec::new();
    assert_eq!(
        w.b.queues[0].receive(|f| {
            let mut data = vec![0u8; f.len()];
            f.copy_to(&mut data);
            handed.push(data);
        }),
        Some(1)
    );
    assert_eq!(handed, vec![first.clone()]);
    let rx = w.b.queues[0].rx_counters();
    let delivered = w.fab.counters_of(2, 0).unwrap().frames_received;
    assert_eq!(delivered, 2 * (cases.len() as u64 + 1));
    assert_eq!(rx.frames + rx.bad_frames, delivered, "none skipped");
    assert_eq!(rx.bad_frames, cases.len() as u64 + 1);
    assert_eq!(rx.error_buffers, 0);
    // B's queue goes on: a good frame after all that is handed over.
    w.a.queues[0].send(&port, v4(2, 0), &first).unwrap();
    assert_eq!(take(&mut w.b, 0).len(), 1);
    w.guards();
}

// ---------------------------------------------------------------------------------
// Defect 10: a refusal writes only the sflags bytes of elements 14 and 15.
// ---------------------------------------------------------------------------------

#[test]
fn refusal_writes_only_the_sflags_bytes() {
    // A's output buffer: a frame to an address nobody registered, and elements 14 and
    // 15 full of the program's own bytes (its reserved byte 0x1 included). The fabric
    // refuses it (0x11) and changes element 15's sflags to the reason and the low
    // nibble of element 14's to the failing element, and no other byte.
    let mut w = Pair::new();
    let n = w.a.queues[0].prime(v4(9, 0), &[7; 40]).unwrap();
    let sbal = w.a.queues[0].params().output_sbals[usize::from(n)];
    let e14: [u8; 16] = std::array::from_fn(|i| 0xB0 + i as u8);
    let e15: [u8; 16] = std::array::from_fn(|i| 0xC0 + i as u8);
    w.a.ram.write(sbal + 14 * 16, &e14);
    w.a.ram.write(sbal + 15 * 16, &e15);
    let r = w.a.queues[0].flush(&w.fab.port(1)).unwrap();
    assert_eq!(r.refused.as_slice(), &[(0, Reason::Unreachable)]);
    let mut want15 = e15;
    want15[Sbale::SFLAGS_OFFSET] = Reason::Unreachable.code();
    let mut want14 = e14;
    want14[Sbale::SFLAGS_OFFSET] = e14[Sbale::SFLAGS_OFFSET] & 0xF0; // element 0
    assert_eq!(raw_el(&w.a.ram, sbal, 15), want15, "element 15");
    assert_eq!(raw_el(&w.a.ram, sbal, 14), want14, "element 14");

    // The receiver's side: B's input buffer with a bad element 0 goes 0x8F with reason
    // 0x22 in element 15, whose other bytes (it is one of B's 16 data elements at 64
    // KiB frames, reserved byte set here) stay as B wrote them.
    let rx = w.b.queues[0].params().input_sbals[0];
    let mut bad0 = Sbale::decode(&raw_el(&w.b.ram, rx, 0));
    bad0.addr = GUEST_BASE - 4096;
    w.b.ram.write(rx, &bad0.encode());
    let mut b15 = raw_el(&w.b.ram, rx, 15);
    b15[1] = 0x5A;
    w.b.ram.write(rx + 15 * 16, &b15);
    assert_eq!(
        w.a.queues[0].send(&w.fab.port(1), v4(2, 0), &[1; 10]),
        Err(SendError::Refused(Reason::TargetBufferInvalid))
    );
    assert_eq!(w.b.queues[0].input_state(0), SlsbState::INPUT_ERROR);
    b15[Sbale::SFLAGS_OFFSET] = Reason::AddressOutsideMemory.code();
    assert_eq!(raw_el(&w.b.ram, rx, 15), b15);
    // B skips the 0x8F buffer and counts it.
    assert_eq!(w.b.queues[0].receive(|_| {}), Some(0));
    assert_eq!(w.b.queues[0].rx_counters().error_buffers, 1);
    w.guards();
}

// ---------------------------------------------------------------------------------
// The driver's re-arm: only the elements the fabric wrote are rewritten.
// ---------------------------------------------------------------------------------

/// B's driver re-arms an input buffer with only the elements the fabric wrote into it
/// (the others still hold what the last arm wrote). Over three laps of the ring, with
/// frame sizes whose cycle does not divide 128, every buffer takes a frame of one
/// element, of several and of all 16 after one of another size, and each arrives
/// whole: an element the re-arm left as the fabric wrote it (a shorter length, a
/// `LAST_ENTRY`) would refuse the larger frame or cut it.
#[test]
fn rearmed_input_buffers_take_any_frame_after_any_other() {
    let mut w = Pair::new();
    let max = 64 * 1024 - HEADER_SIZE;
    let sizes = [
        64,
        3 * 4096 + 100,
        64,
        max,
        4096 - HEADER_SIZE,
        11,
        max - 5000,
    ];
    for i in 0..3 * 128 + 7 {
        let p = payload((1, 0), i as u32, sizes[i % sizes.len()]);
        w.send_whole(i as u32, &p);
    }
    assert_eq!(
        w.b.queues[0].rx_counters(),
        RxCounters {
            frames: 3 * 128 + 7,
            ..RxCounters::default()
        }
    );
    w.guards();
}

/// A program that breaks its own input buffer (here `LAST_ENTRY` added to the first
/// element of a four-element frame) loses that frame, counted, and nothing more: the
/// buffer's next arm rewrites every element, not only those the driver walked, so a
/// frame of the whole MFS fits the buffer on the ring's next lap.
#[test]
fn a_buffer_the_program_broke_is_rearmed_whole() {
    let mut w = Pair::new();
    let port = w.fab.port(1);
    let max = 64 * 1024 - HEADER_SIZE;
    let sbal = w.b.queues[0].params().input_sbals[0];
    let big = payload((1, 0), 0, 3 * 4096 + 100);
    w.a.queues[0].send(&port, v4(2, 0), &big).unwrap();
    let e0 = Sbale::decode(&raw_el(&w.b.ram, sbal, 0));
    w.b.ram.write(
        sbal,
        &Sbale {
            eflags: e0.eflags | 0x40,
            ..e0
        }
        .encode(),
    );
    assert!(
        take(&mut w.b, 0).is_empty(),
        "the broken frame is not handed over"
    );
    assert_eq!(w.b.queues[0].rx_counters().bad_frames, 1, "it is counted");
    // Buffers 1 to 127, then buffer 0 again with a frame of the whole MFS.
    for i in 1..=128u32 {
        let p = payload((1, 0), i, if i == 128 { max } else { 64 });
        w.send_whole(i, &p);
    }
    w.guards();
}

// ---------------------------------------------------------------------------------
// The driver's output slots: the one just delivered is written again.
// ---------------------------------------------------------------------------------

/// A's output buffers take their data slots as `next_free` chooses them. A buffer
/// whose predecessor was delivered (0xA1) reuses that buffer's slot, still in cache,
/// so a stream of one-buffer SIGAs writes one slot. Buffers primed before one SIGA
/// take consecutive slots, distinct, and every frame arrives whole. A refused buffer
/// keeps its slot: the next buffer takes another, and the refused frame stays intact
/// there (what `resend` reads).
#[test]
fn output_slots_reuse_the_delivered_one_and_spare_the_rest() {
    let mut w = Pair::new();
    let fab = w.fab.clone();
    let port = fab.port(1);
    let slot_bytes = Mfs::K64.bytes() as u64;
    let addr_of = |w: &Pair, n: u8| {
        let sbal = w.a.queues[0].params().output_sbals[usize::from(n)];
        el_addr(&w.a.ram, sbal)
    };
    // One frame a SIGA: buffers 0, 1, 2 share buffer 0's slot.
    let mut sent = Vec::new();
    for i in 0..3u8 {
        let frame = vec![i; 100 + usize::from(i)];
        w.send_whole(u32::from(i), &frame);
        sent.push(addr_of(&w, i));
    }
    assert!(sent.iter().all(|&a| a == sent[0]), "one slot: {sent:x?}");

    // Four frames primed, then one flush: four slots, one after another (mod 4).
    for i in 0..4u8 {
        w.a.queues[0].prime(v4(2, 0), &[0x40 + i; 300]).unwrap();
    }
    let r = w.a.queues[0].flush(&port).unwrap();
    assert_eq!(r.delivered, 4);
    let slots: Vec<u64> = (3..7u8)
        .map(|n| (addr_of(&w, n) - sent[0]).div_euclid(slot_bytes))
        .collect();
    let mut distinct = slots.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "four distinct slots: {slots:?}");
    let got = take(&mut w.b, 0);
    assert_eq!(got.len(), 4);
    for (i, (_, data)) in got.iter().enumerate() {
        assert_eq!(data, &vec![0x40 + i as u8; 300], "frame {i} arrived whole");
    }

    // A frame to nobody is refused (0xAF) and keeps its slot: the next buffer,
    // delivered, takes another one, and the refused frame still reads back whole.
    let refused = w.a.queues[0].prime(v4(9, 0), &[0xEE; 200]).unwrap();
    let r = w.a.queues[0].flush(&port).unwrap();
    assert_eq!(r.refused.len(), 1);
    w.send_whole(10, &[0x11; 120]);
    let after = refused.wrapping_add(1);
    assert_ne!(
        addr_of(&w, after),
        addr_of(&w, refused),
        "the refused slot is spared"
    );
    let mut raw = vec![0u8; 200];
    w.a.ram
        .read(addr_of(&w, refused) + HEADER_SIZE as u64, &mut raw);
    assert_eq!(raw, vec![0xEE; 200], "the refused frame is intact");
    w.guards();
}
