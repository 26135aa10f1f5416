//! The adversarial catalogue (issue 4): what a hostile partition may try through the
//! fabric, one test per case.
//!
//! Every case runs in a world of four partitions with guard pages around their windows:
//! A (LPAR 1) attacks, B (LPAR 2) is its peer or victim, C (LPAR 3) and D (LPAR 4)
//! stand by. Each case asserts
//!
//! 1. the exact code the attack ends in: an sbalf15 reason in the attacker's own SBAL
//!    (with the failing element in element 14), a SIGA condition code, or a
//!    registration return code;
//! 2. that no byte outside the partitions' windows changed: the guard pages of every
//!    partition in the case (and of any extra memory it made) are checked after it;
//! 3. that other partitions' traffic goes on: a good frame C → D and D → C passes
//!    intact after the attack ([`World::finish`]).
//!
//! `tests/descriptors.rs` keeps its 17 malformed-descriptor cases (two partitions);
//! the catalogue repeats each of them here in the four-partition world.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};

use common::*;
use iqdio::driver::{DriverConfig, SendError};
use iqdio::qdio::{HEADER_SIZE, L3Header, SBAL_SIZE, Sbale, SlsbState};
use iqdio::{FabricConfig, Mfs, QueueField, Reason, RegistrationError, SigaError, Window};

/// The one queue mask that names an existing queue (output queue 0).
const Q0: u32 = 1 << 31;
/// The interrupt fallback delay of the manual-clock worlds.
const DELAY: u64 = 1_000_000;

/// A: 64 KiB frames, 4 output and 8 input buffers.
fn big() -> DriverConfig {
    DriverConfig {
        tx_buffers: 4,
        rx_buffers: 8,
        ..config(Mfs::K64)
    }
}

/// C and D: 16 KiB receive buffers (4 elements), 4 input buffers.
fn small() -> DriverConfig {
    DriverConfig {
        tx_buffers: 2,
        rx_buffers: 4,
        ..config(Mfs::K16)
    }
}

/// Four partitions on one fabric (64 KiB MFS).
struct World {
    platform: TestPlatform,
    fab: Arc<TestFabric>,
    a: Partition,
    b: Partition,
    c: Partition,
    d: Partition,
    /// Other memory a case made (extra partitions, windows): guards checked too.
    extra: Vec<GuestRam>,
    /// Extra partitions a case made.
    more: Vec<Partition>,
}

impl World {
    fn new() -> Self {
        Self::with(TestPlatform::new(), FabricConfig::DEFAULT)
    }

    /// A world whose clock moves only by `platform.set_clock`.
    fn manual() -> Self {
        Self::with(
            TestPlatform::manual(),
            FabricConfig {
                mfs: Mfs::K64,
                interrupt_delay_ns: DELAY,
                ..FabricConfig::DEFAULT
            },
        )
    }

    fn with(platform: TestPlatform, config: FabricConfig) -> Self {
        let fab = fabric(platform.clone(), config);
        let a = Partition::new(&fab, 1, 1, big());
        let b = Partition::new(&fab, 2, 2, big());
        let c = Partition::new(&fab, 3, 1, small());
        let d = Partition::new(&fab, 4, 1, small());
        Self {
            platform,
            fab,
            a,
            b,
            c,
            d,
            extra: Vec::new(),
            more: Vec::new(),
        }
    }

    /// Guard pages of every partition and every extra memory.
    fn assert_guards(&self) {
        for p in [&self.a, &self.b, &self.c, &self.d]
            .into_iter()
            .chain(self.more.iter())
        {
            assert!(
                p.ram.guards_intact(),
                "guard pages of LPAR {} changed",
                p.lpar
            );
        }
        for (i, r) in self.extra.iter().enumerate() {
            assert!(r.guards_intact(), "guard pages of extra memory {i} changed");
        }
    }

    /// The end of every case: guards intact, and C and D still exchange frames.
    fn finish(mut self) {
        self.assert_guards();
        let (c, d) = (&mut self.c, &mut self.d);
        let to_d = payload((3, 0), 0xC0D, 1200);
        c.queues[0]
            .send(&self.fab.port(3), v4(4, 0), &to_d)
            .expect("C -> D after the attack");
        assert_eq!(take_all(d, 0), vec![to_d], "D got C's frame intact");
        let to_c = payload((4, 0), 0xD0C, 5000);
        d.queues[0]
            .send(&self.fab.port(4), v6(3, 0), &to_c)
            .expect("D -> C after the attack");
        assert_eq!(take_all(c, 0), vec![to_c], "C got D's frame intact");
        self.assert_guards();
    }

    /// A sends one good frame to B, which gets it intact (the attacker itself goes on).
    fn a_to_b_passes(&mut self) {
        let data = payload((1, 0), 0xAB, 700);
        self.a.queues[0]
            .send(&self.fab.port(1), v6(2, 0), &data)
            .expect("A -> B");
        let got = take_all(&mut self.b, 0);
        assert_eq!(got.last(), Some(&data));
    }
}

/// Every frame waiting on `p`'s queue `q`, in order.
fn take_all(p: &mut Partition, q: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    drain(&mut p.queues[q], &mut got);
    got
}

fn el(ram: &GuestRam, sbal: u64, i: usize) -> Sbale {
    let mut raw = [0u8; 16];
    ram.read(sbal + (i * 16) as u64, &mut raw);
    Sbale::decode(&raw)
}

fn set_el(ram: &GuestRam, sbal: u64, i: usize, e: Sbale) {
    ram.write(sbal + (i * 16) as u64, &e.encode());
}

fn end_of(ram: &GuestRam) -> u64 {
    GUEST_BASE + ram.len() as u64
}

// ---------------------------------------------------------------------------------
// The attacker's own SBAL: malformed descriptors and headers.
// ---------------------------------------------------------------------------------

/// A's output buffer primed with a good 9000-byte, 3-element frame to B; the case then
/// breaks it.
struct Primed {
    w: World,
    n: u8,
    sbal: u64,
    elements: Vec<Sbale>,
}

impl Primed {
    fn new() -> Self {
        Self::to(v4(2, 0), 9000)
    }

    fn to(dest: IpAddr, len: usize) -> Self {
        let mut w = World::new();
        let n = w.a.queues[0].prime(dest, &payload((1, 0), 0, len)).unwrap();
        let sbal = w.a.queues[0].params().output_sbals[usize::from(n)];
        let elements = (0..16).map(|i| el(&w.a.ram, sbal, i)).collect();
        Self {
            w,
            n,
            sbal,
            elements,
        }
    }

    fn set(&self, i: usize, e: Sbale) {
        set_el(&self.w.a.ram, self.sbal, i, e);
    }

    fn header(&self) -> u64 {
        self.elements[0].addr
    }

    /// SIGA write-multiple; the buffer must end 0xAF with sbalf15 `code` and the
    /// failing element `element`, nothing delivered anywhere, and everyone goes on.
    fn expect(mut self, code: u8, element: u8) {
        let reason = Reason::from_code(code).expect("a documented sbalf15 code");
        let w = &mut self.w;
        let r = w.a.queues[0].flush(&w.fab.port(1)).expect("cc0");
        assert_eq!(r.refused.as_slice(), &[(0, reason)]);
        assert_eq!(w.a.queues[0].output_state(self.n), SlsbState::OUTPUT_ERROR);
        assert_eq!(el(&w.a.ram, self.sbal, 15).sflags, code, "sbalf15");
        assert_eq!(
            el(&w.a.ram, self.sbal, 14).sflags & 0x0F,
            element,
            "failing element"
        );
        for (p, qs) in [(&w.b, 2), (&w.c, 1), (&w.d, 1)] {
            for q in 0..qs {
                assert!(!p.queues[q].has_input(), "delivered to LPAR {}", p.lpar);
            }
        }
        assert_eq!(w.fab.counters_of(1, 0).unwrap().errors_for(reason), 1);
        assert_eq!(w.fab.counters_of(1, 0).unwrap().frames_sent, 0);
        w.assert_guards();
        w.a_to_b_passes();
        self.w.finish();
    }
}

#[test]
fn sbale_address_outside_the_window() {
    let c = Primed::new();
    c.set(
        2,
        Sbale {
            addr: GUEST_BASE - 4096, // the guard page below A's window
            ..c.elements[2]
        },
    );
    c.expect(0x22, 2);
}

#[test]
fn sbale_address_in_another_partitions_window() {
    // Guest addresses are the issuer's own: B's window does not exist for A. An address
    // past A's window, where B's memory would be if the spaces were one, is outside.
    let c = Primed::new();
    let beyond = end_of(&c.w.a.ram) + 0x10_0000;
    c.set(
        0,
        Sbale {
            addr: beyond,
            ..c.elements[0]
        },
    );
    c.expect(0x22, 0);
}

#[test]
fn sbale_straddling_the_end_of_the_window() {
    let c = Primed::new();
    let end = end_of(&c.w.a.ram);
    c.set(
        2,
        Sbale {
            addr: end - 100,
            ..c.elements[2]
        },
    );
    c.expect(0x22, 2);
}

#[test]
fn sbale_straddling_the_start_of_the_window() {
    let c = Primed::new();
    c.set(
        1,
        Sbale {
            addr: GUEST_BASE - 16,
            ..c.elements[1]
        },
    );
    c.expect(0x22, 1);
}

#[test]
fn sbale_wrapping_past_the_top_of_the_address_space() {
    let c = Primed::new();
    c.set(
        1,
        Sbale {
            addr: u64::MAX - 2047,
            ..c.elements[1]
        },
    );
    c.expect(0x22, 1);
}

#[test]
fn sbale_zero_length() {
    let c = Primed::new();
    c.set(
        1,
        Sbale {
            length: 0,
            ..c.elements[1]
        },
    );
    c.expect(0x21, 1);
}

#[test]
fn sbale_length_larger_than_the_window() {
    let c = Primed::new();
    c.set(
        0,
        Sbale {
            length: u32::MAX,
            ..c.elements[0]
        },
    );
    c.expect(0x22, 0);
}

#[test]
fn sixteen_elements_without_last_entry() {
    let c = Primed::new();
    for i in 0..16 {
        let mut e = c.elements[i];
        e.eflags &= !0x40;
        if i >= 3 {
            e = Sbale {
                length: 16,
                addr: c.elements[0].addr,
                eflags: 0x08,
                ..e
            };
        }
        c.set(i, e);
    }
    c.expect(0x20, 15);
}

#[test]
fn fragment_middle_without_first() {
    let c = Primed::new();
    c.set(
        0,
        Sbale {
            eflags: 0x08,
            ..c.elements[0]
        },
    );
    c.expect(0x23, 0);
}

#[test]
fn fragment_first_after_first() {
    let c = Primed::new();
    c.set(
        1,
        Sbale {
            eflags: 0x04,
            ..c.elements[1]
        },
    );
    c.expect(0x23, 1);
}

#[test]
fn fragment_last_without_first() {
    let c = Primed::new();
    c.set(
        0,
        Sbale {
            eflags: 0x0C,
            ..c.elements[0]
        },
    );
    c.expect(0x23, 0);
}

#[test]
fn fragment_left_open_by_last_entry() {
    let c = Primed::new();
    c.set(
        1,
        Sbale {
            eflags: 0x08 | 0x40,
            ..c.elements[1]
        },
    );
    c.expect(0x23, 1);
}

#[test]
fn header_id_other_than_layer3() {
    let c = Primed::new();
    c.w.a.ram.write(c.header(), &[0x03]);
    c.expect(0x24, 0);
}

#[test]
fn a_layer2_header_on_a_layer3_queue_set() {
    let c = Primed::new();
    c.w.a.ram.write(c.header(), &[0x02]);
    c.expect(0x2B, 0);
}

#[test]
fn header_length_larger_than_the_elements_hold() {
    let c = Primed::new();
    c.w.a.ram.write(c.header() + 8, &9001u16.to_be_bytes());
    c.expect(0x25, 0);
}

#[test]
fn header_length_smaller_than_the_elements_hold() {
    let c = Primed::new();
    c.w.a.ram.write(c.header() + 8, &8999u16.to_be_bytes());
    c.expect(0x25, 0);
}

#[test]
fn ipv6_flag_with_an_ipv4_address() {
    let c = Primed::new();
    c.w.a.ram.write(c.header() + 1, &[0x86]);
    c.expect(0x26, 0);
}

#[test]
fn ipv4_next_hop_with_bytes_in_the_ipv6_part() {
    let c = Primed::new();
    c.w.a.ram.write(c.header() + 0x10, &[0xfd]);
    c.expect(0x26, 0);
}

#[test]
fn multicast_broadcast_and_anycast_cast_types_on_a_unicast_queue() {
    // Linux puts only unicast frames on a unicast queue (qeth_l3_fill_header forces the
    // cast type there); multicast, broadcast and anycast belong on the multicast queue.
    for flags in [0x04u8, 0x05, 0x07] {
        let c = Primed::new();
        c.w.a.ram.write(c.header() + 1, &[flags]);
        c.expect(0x27, 0);
    }
}

#[test]
fn cast_bits_that_name_no_cast_type() {
    let c = Primed::new();
    c.w.a.ram.write(c.header() + 1, &[0x03]);
    c.expect(0x27, 0);
}

#[test]
fn first_element_shorter_than_the_header() {
    let c = Primed::new();
    let e0 = c.elements[0];
    let mut els = vec![
        Sbale {
            length: 16,
            eflags: 0x04,
            ..e0
        },
        Sbale {
            addr: e0.addr + 16,
            length: e0.length - 16,
            eflags: 0x08,
            ..e0
        },
    ];
    els.extend_from_slice(&c.elements[1..3]);
    for (i, e) in els.iter().enumerate() {
        c.set(i, *e);
    }
    c.expect(0x28, 0);
}

#[test]
fn frames_for_two_next_hops_in_one_sbal() {
    let c = Primed::new();
    let extra = c.elements[2].addr + u64::from(c.elements[2].length) + 64;
    let mut h = [0u8; HEADER_SIZE + 4];
    h[..HEADER_SIZE].copy_from_slice(&L3Header::unicast(v4(3, 0), 4).encode());
    c.w.a.ram.write(extra, &h);
    c.set(
        2,
        Sbale {
            eflags: 0x0C,
            ..c.elements[2]
        },
    );
    c.set(
        3,
        Sbale {
            eflags: 0x40,
            length: (HEADER_SIZE + 4) as u32,
            addr: extra,
            ..Sbale::default()
        },
    );
    c.expect(0x29, 3);
}

#[test]
fn frame_larger_than_the_maximum_frame_size() {
    // Two consistent frames whose sum exceeds the 64 KiB MFS by one byte.
    let c = Primed::new();
    let base = c.elements[0].addr;
    let hdr = |len: u16| L3Header::unicast(v4(2, 0), len).encode();
    c.w.a.ram.write(base, &hdr(8 * 4096 - 32));
    c.w.a.ram.write(base + 8 * 4096, &hdr(8 * 4096 - 32 + 1));
    for i in 0..16 {
        let mut flags = match i % 8 {
            0 => 0x04,
            7 => 0x0C,
            _ => 0x08,
        };
        let mut len = 4096;
        if i == 15 {
            flags |= 0x40;
            len = 4097;
        }
        c.set(
            i,
            Sbale {
                eflags: flags,
                length: len,
                addr: base + (i as u64) * 4096,
                ..Sbale::default()
            },
        );
    }
    c.expect(0x14, 15);
}

#[test]
fn frame_larger_than_the_receivers_buffer() {
    // D arms 16 KiB receive buffers; a well-formed 20 000-byte frame cannot fit.
    let c = Primed::to(v4(4, 0), 20_000);
    c.expect(0x14, 0);
}

#[test]
fn destination_not_registered() {
    let c = Primed::new();
    c.w.a.ram.write(c.header() + 0x1C, &[10, 99, 99, 99]);
    c.expect(0x11, 0);
}

#[test]
fn sbale_spanning_two_adjacent_windows() {
    // A partition with two windows, guest-contiguous but separate host memory: an
    // element may not run from one into the other (a range lies inside one window).
    let mut w = World::new();
    let low = GuestRam::new(PAGE + small().footprint());
    let high = GuestRam::new(2 * PAGE);
    let high_base = GUEST_BASE + low.len() as u64;
    // SAFETY: `high`'s pages live in the world until the end of the case, and only the
    // fabric (and this test through `GuestRam`) touches them.
    let high_window = unsafe { Window::new(high_base, high.host(), high.len()) };
    let mut region = low.region();
    let ind = iqdio::driver::Indicators::new(&mut region).unwrap();
    let mut q = iqdio::driver::QueueDriver::new(&mut region, &ind, small()).unwrap();
    w.fab
        .add_partition(5, &[low.window(), high_window])
        .unwrap();
    w.fab.establish(5, 0, &q.params()).unwrap();
    // A frame wholly in the second window goes through.
    let frame = |len: u16| {
        let mut f = L3Header::unicast(v4(3, 0), len).encode().to_vec();
        f.extend(payload((5, 0), 1, usize::from(len)));
        f
    };
    let good = frame(100);
    // `GuestRam` addresses its own pages from GUEST_BASE; the fabric sees them at
    // `high_base`.
    high.write(GUEST_BASE + 64, &good);
    let sbal = q.params().output_sbals[0];
    let slsb = q.params().output_slsb;
    set_el(
        &low,
        sbal,
        0,
        Sbale {
            eflags: 0x40,
            length: good.len() as u32,
            addr: high_base + 64,
            ..Sbale::default()
        },
    );
    low.write(slsb, &[0x62]);
    let r = w.fab.siga_write(5, 0, Q0).unwrap();
    assert_eq!((r.delivered, r.frames), (1, 1));
    assert_eq!(take_all(&mut w.c, 0), vec![good[HEADER_SIZE..].to_vec()]);
    // The same frame laid across the boundary: 0x22 at element 0.
    let across = low.len() as u64 - 50;
    low.write(GUEST_BASE + across, &good[..50]);
    high.write(GUEST_BASE, &good[50..]);
    set_el(
        &low,
        sbal + SBAL_SIZE as u64,
        0,
        Sbale {
            eflags: 0x40,
            length: good.len() as u32,
            addr: GUEST_BASE + across,
            ..Sbale::default()
        },
    );
    low.write(slsb + 1, &[0x62]);
    let r = w.fab.siga_write(5, 0, Q0).unwrap();
    assert_eq!((r.refused, r.delivered), (1, 0));
    assert_eq!(q.output_state(1), SlsbState::OUTPUT_ERROR);
    assert_eq!(el(&low, sbal + SBAL_SIZE as u64, 15).sflags, 0x22);
    assert!(!w.c.queues[0].has_input());
    let _ = q.receive(|_| {});
    w.extra.push(low);
    w.extra.push(high);
    w.finish();
}

// ---------------------------------------------------------------------------------
// The receiver's own input buffers.
// ---------------------------------------------------------------------------------

/// B breaks its armed input buffer 0 with `mutate`; A's send to B gets sbalf15 0x13,
/// B's buffer reads 0x8F with reason 0x22 at `element`, and A's retry lands in B's next
/// buffer.
fn broken_receive_buffer(mutate: impl FnOnce(&World, u64), element: u8) {
    let mut w = World::new();
    let rx = w.b.queues[0].params().input_sbals[0];
    mutate(&w, rx);
    let data = payload((1, 0), 5, 9000);
    let port = w.fab.port(1);
    assert_eq!(
        w.a.queues[0].send(&port, v4(2, 0), &data),
        Err(SendError::Refused(Reason::TargetBufferInvalid))
    );
    assert_eq!(Reason::TargetBufferInvalid.code(), 0x13);
    assert_eq!(w.b.queues[0].input_state(0), SlsbState::INPUT_ERROR);
    assert_eq!(SlsbState::INPUT_ERROR.0, 0x8F);
    assert_eq!(el(&w.b.ram, rx, 15).sflags, 0x22);
    assert_eq!(el(&w.b.ram, rx, 14).sflags & 0x0F, element);
    w.assert_guards();
    // The retry uses B's next buffer; B skips the bad one.
    w.a.queues[0].send(&port, v4(2, 0), &data).unwrap();
    assert_eq!(w.b.queues[0].receive(|_| {}), Some(0), "the 0x8F buffer");
    assert_eq!(
        w.b.queues[0].rx_counters().error_buffers,
        1,
        "and counts it"
    );
    assert_eq!(take_all(&mut w.b, 0), vec![data]);
    let cb = w.fab.counters_of(2, 0).unwrap();
    assert_eq!((cb.frames_received, cb.sbals_received), (1, 1));
    w.finish();
}

#[test]
fn receive_sbale_outside_the_receivers_window() {
    broken_receive_buffer(
        |w, rx| {
            let e = el(&w.b.ram, rx, 0);
            set_el(
                &w.b.ram,
                rx,
                0,
                Sbale {
                    addr: GUEST_BASE - 4096, // B's guard page
                    ..e
                },
            );
        },
        0,
    );
}

#[test]
fn receive_sbale_straddling_the_receivers_window_end() {
    broken_receive_buffer(
        |w, rx| {
            let e = el(&w.b.ram, rx, 1);
            set_el(
                &w.b.ram,
                rx,
                1,
                Sbale {
                    addr: end_of(&w.b.ram) - 10,
                    ..e
                },
            );
        },
        1,
    );
}

#[test]
fn receive_sbale_wrapping_past_the_top_of_the_address_space() {
    broken_receive_buffer(
        |w, rx| {
            let e = el(&w.b.ram, rx, 2);
            set_el(
                &w.b.ram,
                rx,
                2,
                Sbale {
                    addr: u64::MAX - 100,
                    ..e
                },
            );
        },
        2,
    );
}

#[test]
fn receive_sbal_with_no_capacity() {
    // B arms input buffer 0 with zero-length elements: its own senders get 0x14 (the
    // frame fits nowhere) and the buffer stays B's (0x41); others flow.
    let mut w = World::new();
    let rx = w.b.queues[0].params().input_sbals[0];
    for i in 0..16 {
        set_el(&w.b.ram, rx, i, Sbale::default());
    }
    let port = w.fab.port(1);
    assert_eq!(
        w.a.queues[0].send(&port, v4(2, 0), &[1; 10]),
        Err(SendError::Refused(Reason::TooLarge))
    );
    assert_eq!(Reason::TooLarge.code(), 0x14);
    assert_eq!(w.b.queues[0].input_state(0), SlsbState::INPUT_EMPTY);
    // B's other queue set is a separate receiver and still takes frames.
    w.a.queues[0].send(&port, v4(2, 1), &[2; 10]).unwrap();
    assert_eq!(take_all(&mut w.b, 1), vec![vec![2; 10]]);
    w.finish();
}

#[test]
fn receive_buffer_smaller_than_the_frame() {
    // One element of 100 bytes: a 200-byte frame does not fit (0x14).
    let mut w = World::new();
    let rx = w.b.queues[0].params().input_sbals[0];
    let e0 = el(&w.b.ram, rx, 0);
    set_el(&w.b.ram, rx, 0, Sbale { length: 100, ..e0 });
    for i in 1..16 {
        set_el(&w.b.ram, rx, i, Sbale::default());
    }
    assert_eq!(
        w.a.queues[0].send(&w.fab.port(1), v4(2, 0), &[3; 200]),
        Err(SendError::Refused(Reason::TooLarge))
    );
    // A frame that fits still lands there.
    w.a.queues[0]
        .send(&w.fab.port(1), v4(2, 0), &[4; 60])
        .unwrap();
    assert_eq!(take_all(&mut w.b, 0), vec![vec![4; 60]]);
    w.finish();
}

#[test]
fn receiver_that_never_refills() {
    // B never takes a frame: its 8 armed buffers fill, then its senders (A and C) see
    // 0x10 with their frames intact, while A and C still reach D.
    let mut w = World::new();
    let pa = w.fab.port(1);
    let pc = w.fab.port(3);
    for seq in 0..8 {
        w.a.queues[0]
            .send(&pa, v4(2, 0), &payload((1, 0), seq, 100))
            .unwrap();
    }
    let data = payload((1, 0), 8, 100);
    let n = w.a.queues[0].prime(v4(2, 0), &data).unwrap();
    let r = w.a.queues[0].flush(&pa).unwrap();
    assert_eq!(r.refused.as_slice(), &[(0, Reason::TargetFull)]);
    let sbal = w.a.queues[0].params().output_sbals[usize::from(n)];
    assert_eq!(el(&w.a.ram, sbal, 15).sflags, 0x10);
    let e0 = el(&w.a.ram, sbal, 0);
    assert_eq!(
        w.a.ram.read_vec(e0.addr + HEADER_SIZE as u64, data.len()),
        data,
        "the refused frame is intact"
    );
    assert_eq!(
        w.c.queues[0].send(&pc, v6(2, 0), &[9; 9]),
        Err(SendError::Refused(Reason::TargetFull))
    );
    // Only B's senders see it: A and C reach D, and D reaches C.
    w.a.queues[0].send(&pa, v4(4, 0), &[1; 33]).unwrap();
    w.c.queues[0].send(&pc, v4(4, 0), &[2; 33]).unwrap();
    assert_eq!(take_all(&mut w.d, 0), vec![vec![1; 33], vec![2; 33]]);
    assert_eq!(w.fab.counters_of(2, 0).unwrap().refused_full, 2);
    assert_eq!(take_all(&mut w.b, 0).len(), 8, "B's 8 frames wait intact");
    w.finish();
}

#[test]
fn receiver_that_leaves_0x81_set_forever() {
    // B polls, takes frames and leaves its newest consumed buffer 0x81, but never
    // resets its indicator bytes and never stops polling: deliveries go on, raising
    // nothing once its summary is pending (a polling queue is not interrupted), and
    // the fallback of the embedding's periodic timer interrupts it at most once per
    // delay.
    let mut w = World::manual();
    w.b.queues[0].start_polling();
    let port = w.fab.port(1);
    let mut clock = 0;
    let mut delivered = 0u64;
    let mut by_timer = 0;
    for round in 0..50u64 {
        for k in 0..4 {
            clock += DELAY / 7;
            w.platform.set_clock(clock);
            w.a.queues[0]
                .send(
                    &port,
                    v4(2, 0),
                    &payload((1, 0), (round * 4 + k) as u32, 64),
                )
                .unwrap();
            delivered += 1;
        }
        assert_eq!(take_all(&mut w.b, 0).len(), 4);
        // The newest consumed buffer reads 0x81.
        let acked = ((round * 4 + 3) % 128) as u8;
        assert_eq!(w.b.queues[0].input_state(acked), SlsbState::INPUT_ACKED);
        // The timer's tick.
        by_timer += w.fab.expire_delays() as u64;
    }
    let raised = w.platform.raised(2);
    // The first delivery found the summary idle and B not yet polling (no consumed
    // buffer at 0x81): it interrupted. No delivery since.
    assert_eq!(
        raised - by_timer,
        1,
        "deliveries to a polling queue raise none"
    );
    assert!(by_timer >= 2, "the timer's fallback wakes it: {by_timer}");
    assert!(
        raised <= 1 + clock / DELAY,
        "{raised} interrupts in {} delays",
        clock / DELAY
    );
    let cb = w.fab.counters_of(2, 0).unwrap();
    assert_eq!(cb.frames_received, delivered);
    assert_eq!(cb.interrupts_raised, raised);
    assert_eq!(cb.interrupts_suppressed, delivered - 1);
    w.finish();
}

#[test]
fn receiver_that_writes_0x81_over_its_whole_input_slsb() {
    // The polling walk sees 0x81 everywhere: it stays bounded, B's senders get 0x10
    // (no 0x41 buffer), others flow.
    let mut w = World::new();
    let slsb = w.b.queues[0].params().input_slsb;
    w.b.ram.write(slsb, &[0x81; 128]);
    assert_eq!(
        w.a.queues[0].send(&w.fab.port(1), v4(2, 0), &[1; 50]),
        Err(SendError::Refused(Reason::TargetFull))
    );
    assert_eq!(
        w.c.queues[0].send(&w.fab.port(3), v6(2, 0), &[1; 50]),
        Err(SendError::Refused(Reason::TargetFull))
    );
    assert_eq!(Reason::TargetFull.code(), 0x10);
    assert_eq!(w.b.ram.read_vec(slsb, 128), vec![0x81; 128], "untouched");
    assert_eq!(w.platform.raised(2), 0);
    w.a.queues[0]
        .send(&w.fab.port(1), v4(2, 1), &[5; 50])
        .unwrap();
    assert_eq!(take_all(&mut w.b, 1), vec![vec![5; 50]]);
    w.finish();
}

#[test]
fn sender_hammering_one_receiver() {
    // A and C send to B as fast as they can on a manual clock; B drains now and then,
    // resetting its bytes high -> low. Interrupts stay bounded by the decision: one per
    // idle -> pending transition (the first, and one after each reset that found the
    // summary set) plus at most one fallback per elapsed delay.
    let mut w = World::manual();
    let (pa, pc) = (w.fab.port(1), w.fab.port(3));
    let mut clock = 0;
    let mut resets = 0u64;
    let mut sent = 0u64;
    let mut full = 0u64;
    let mut got = 0u64;
    for i in 0..3000u32 {
        clock += DELAY / 13;
        w.platform.set_clock(clock);
        let (q, port, src) = if i % 3 == 0 {
            (&mut w.c.queues[0], &pc, 3u8)
        } else {
            (&mut w.a.queues[0], &pa, 1u8)
        };
        match q.send(
            port,
            v4(2, 0),
            &payload((src, 0), i, 40 + (i as usize % 300)),
        ) {
            Ok(()) => sent += 1,
            Err(SendError::Refused(Reason::TargetFull)) => full += 1,
            Err(e) => panic!("{e:?}"),
        }
        if i % 37 == 36 {
            if w.b.indicators.pending() {
                resets += 1;
            }
            w.b.indicators.take();
            w.b.queues[0].take_initiative();
            for f in take_all(&mut w.b, 0) {
                assert!(check_payload(&f).is_some(), "corrupted frame");
                got += 1;
            }
        }
    }
    got += take_all(&mut w.b, 0).len() as u64;
    let raised = w.platform.raised(2);
    let bound = 1 + resets + clock / DELAY;
    assert!(raised <= bound, "{raised} interrupts > bound {bound}");
    assert!(raised >= 1 && full > 0, "raised {raised}, full {full}");
    assert_eq!(got, sent, "every delivered frame found");
    let cb = w.fab.counters_of(2, 0).unwrap();
    assert_eq!(cb.interrupts_raised, raised);
    assert_eq!(cb.interrupts_raised + cb.interrupts_suppressed, sent);
    assert_eq!(cb.refused_full, full);
    assert_eq!(w.platform.raised(1) + w.platform.raised(3), 0);
    w.finish();
}

// ---------------------------------------------------------------------------------
// Establishing queues and registering.
// ---------------------------------------------------------------------------------

/// A tries to establish subchannel 5 with A's own (good) queue addresses changed by
/// `mutate`: refused with `want`, nothing registered, SIGA on 5 is cc3.
fn establish_refused(mutate: impl Fn(&mut iqdio::QueueSetParams, u64), want: RegistrationError) {
    let w = World::new();
    let mut p = w.a.queues[0].params();
    mutate(&mut p, end_of(&w.a.ram));
    assert_eq!(w.fab.establish(1, 5, &p), Err(want));
    assert!(w.fab.counters_of(1, 5).is_none());
    assert_eq!(w.fab.siga_write(1, 5, Q0), Err(SigaError::NotIqdio));
    w.finish();
}

#[test]
fn slsb_outside_the_window_at_establish() {
    let f = RegistrationError::OutsideMemory;
    for (m, field) in [
        (
            (|p: &mut iqdio::QueueSetParams, end: u64| p.output_slsb = end - 64)
                as fn(&mut iqdio::QueueSetParams, u64),
            QueueField::OutputSlsb,
        ),
        (
            |p, _| p.output_slsb = GUEST_BASE - 1,
            QueueField::OutputSlsb,
        ),
        (|p, _| p.input_slsb = u64::MAX - 10, QueueField::InputSlsb),
        (|p, end| p.input_slsb = end, QueueField::InputSlsb),
    ] {
        establish_refused(m, f(field));
        assert_eq!(f(field).code(), 0xF005);
    }
}

#[test]
fn sbal_outside_the_window_at_establish() {
    type M = fn(&mut iqdio::QueueSetParams, u64);
    let cases: [(M, QueueField); 4] = [
        (|p, _| p.output_sbals[5] = 0x1000, QueueField::OutputSbal(5)),
        (|p, end| p.output_sbals[0] = end, QueueField::OutputSbal(0)),
        (
            |p, _| p.input_sbals[127] = u64::MAX - 255,
            QueueField::InputSbal(127),
        ),
        (
            |p, _| p.input_sbals[64] = GUEST_BASE - 256,
            QueueField::InputSbal(64),
        ),
    ];
    for (m, field) in cases {
        establish_refused(m, RegistrationError::OutsideMemory(field));
    }
}

#[test]
fn indicator_outside_the_window_at_establish() {
    type M = fn(&mut iqdio::QueueSetParams, u64);
    let cases: [(M, QueueField); 4] = [
        (|p, end| p.queue_indicator = end, QueueField::QueueIndicator),
        (
            |p, _| p.middle_indicator = GUEST_BASE - 1,
            QueueField::MiddleIndicator,
        ),
        (|p, _| p.global_indicator = 0, QueueField::GlobalIndicator),
        (
            |p, _| p.global_indicator = u64::MAX,
            QueueField::GlobalIndicator,
        ),
    ];
    for (m, field) in cases {
        establish_refused(m, RegistrationError::OutsideMemory(field));
    }
}

#[test]
fn sbal_misaligned_at_establish() {
    type M = fn(&mut iqdio::QueueSetParams, u64);
    let cases: [(M, QueueField); 3] = [
        (|p, _| p.output_sbals[3] += 16, QueueField::OutputSbal(3)),
        (|p, _| p.input_sbals[0] += 1, QueueField::InputSbal(0)),
        (
            |p, end| p.input_sbals[9] = end - 128,
            QueueField::InputSbal(9),
        ),
    ];
    for (m, field) in cases {
        establish_refused(m, RegistrationError::Misaligned(field));
        assert_eq!(RegistrationError::Misaligned(field).code(), 0xF006);
    }
}

#[test]
fn windows_of_two_partitions_that_overlap() {
    let w = World::new();
    let b = w.b.ram.host();
    let len = w.b.ram.len();
    // SAFETY: never accessed: the fabric refuses each window before keeping it.
    let windows = unsafe {
        [
            Window::new(GUEST_BASE, b, len),                       // all of B
            Window::new(GUEST_BASE, b.add(PAGE), PAGE),            // inside B
            Window::new(GUEST_BASE, b.add(len - PAGE), 2 * PAGE),  // over B's end
            Window::new(0, w.c.ram.host().sub(PAGE), 2 * PAGE),    // over C's start
            Window::new(0x10_0000, w.a.ram.host(), w.a.ram.len()), // A's own, new guest
        ]
    };
    for win in windows {
        let e = w.fab.add_partition(9, &[win]).unwrap_err();
        assert_eq!(
            (e, e.code()),
            (RegistrationError::OverlappingWindows, 0xF004)
        );
        assert_eq!(w.fab.siga_write(9, 0, Q0), Err(SigaError::NotIqdio));
    }
    w.finish();
}

#[test]
fn windows_of_one_partition_that_overlap() {
    let mut w = World::new();
    let ram = GuestRam::new(4 * PAGE);
    let h = ram.host();
    // SAFETY: never accessed: the fabric refuses these windows.
    let (x, y, z) = unsafe {
        (
            Window::new(GUEST_BASE, h, 2 * PAGE),
            Window::new(GUEST_BASE + PAGE as u64, h.add(2 * PAGE), PAGE), // guest overlap
            Window::new(GUEST_BASE + 0x10_0000, h.add(PAGE), PAGE),       // host overlap
        )
    };
    for pair in [[x, y], [x, z]] {
        let e = w.fab.add_partition(9, &pair).unwrap_err();
        assert_eq!(
            (e, e.code()),
            (RegistrationError::OverlappingWindows, 0xF004)
        );
    }
    w.extra.push(ram);
    w.finish();
}

#[test]
fn windows_that_are_empty_wrap_or_too_many() {
    let mut w = World::new();
    let ram = GuestRam::new(8 * PAGE);
    let h = ram.host();
    // SAFETY: never accessed: the fabric refuses these windows.
    let (wrap, empty, five) = unsafe {
        (
            Window::new(u64::MAX - 10, h, PAGE),
            Window::new(GUEST_BASE, h, 0),
            core::array::from_fn::<Window, 5, _>(|i| {
                Window::new((i * PAGE) as u64, h.add(i * PAGE), PAGE)
            }),
        )
    };
    for ws in [&[wrap][..], &[empty], &[], &five] {
        let e = w.fab.add_partition(9, ws).unwrap_err();
        assert_eq!((e, e.code()), (RegistrationError::InvalidWindow, 0xF003));
    }
    w.extra.push(ram);
    w.finish();
}

#[test]
fn registering_an_address_another_partition_owns() {
    let mut w = World::new();
    for ip in [v4(2, 0), v6(3, 0), v4(4, 0)] {
        let e = w.fab.register_address(1, 0, ip).unwrap_err();
        assert_eq!((e, e.code()), (RegistrationError::DuplicateFound, 0xE005));
    }
    // The owner keeps getting its frames: C -> B's address still reaches B.
    w.c.queues[0]
        .send(&w.fab.port(3), v4(2, 0), &[7; 70])
        .unwrap();
    assert_eq!(take_all(&mut w.b, 0), vec![vec![7; 70]]);
    assert!(!w.a.queues[0].has_input());
    w.finish();
}

#[test]
fn duplicate_keys() {
    let mut w = World::new();
    let dup = RegistrationError::DuplicateFound;
    // The same LPAR.SUBCHANNEL, the same LPAR id, the same address twice.
    assert_eq!(w.fab.establish(1, 0, &w.a.queues[0].params()), Err(dup));
    assert_eq!(w.fab.establish(2, 1, &w.b.queues[1].params()), Err(dup));
    let spare = GuestRam::new(4 * PAGE);
    assert_eq!(w.fab.add_partition(1, &[spare.window()]), Err(dup));
    assert_eq!(w.fab.register_address(1, 0, v4(1, 0)), Err(dup));
    assert_eq!(dup.code(), 0xE005);
    // The original registrations still work.
    w.a.queues[0]
        .send(&w.fab.port(1), v4(2, 1), &[1; 10])
        .unwrap();
    assert_eq!(take_all(&mut w.b, 1), vec![vec![1; 10]]);
    w.a_to_b_passes();
    w.extra.push(spare);
    w.finish();
}

/// Bytes one queue set's structures take in [`layout`]: 256 SBALs, then a page for the
/// SLSBs and the indicator bytes.
const SET_BYTES: usize = 2 * 128 * SBAL_SIZE + PAGE;

/// The structures (no buffers) of queue set `i` in a window from [`bare_partition`]:
/// disjoint from every other `i`.
fn layout(i: usize) -> iqdio::QueueSetParams {
    let base = GUEST_BASE + (i * SET_BYTES) as u64;
    let ctl = base + (256 * SBAL_SIZE) as u64;
    iqdio::QueueSetParams {
        output_sbals: std::array::from_fn(|n| base + (n * SBAL_SIZE) as u64),
        input_sbals: std::array::from_fn(|n| base + ((128 + n) * SBAL_SIZE) as u64),
        output_slsb: ctl,
        input_slsb: ctl + 128,
        queue_indicator: ctl + 256,
        middle_indicator: ctl + 257,
        global_indicator: ctl + 258,
        interrupt_immediately: false,
        interrupt_cookie: 0,
        ..Default::default()
    }
}

/// Registers partition `lpar` with room for `sets` queue sets laid out by [`layout`],
/// none established.
fn bare_partition(w: &mut World, lpar: u8, sets: usize) {
    let ram = GuestRam::new(sets * SET_BYTES);
    w.fab.add_partition(lpar, &[ram.window()]).unwrap();
    w.extra.push(ram);
}

#[test]
fn full_source_table() {
    // 64 queue controls: four more partitions establish queue sets, each within its
    // quota of 16, until the fabric has none left: 0xE006, the table's own code.
    let mut w = World::new();
    let mut active = 5; // A 1, B 2, C 1, D 1
    let mut refused = None;
    for lpar in 5..=8u8 {
        bare_partition(&mut w, lpar, 16);
    }
    'fill: for lpar in 5..=8u8 {
        for i in 0..16 {
            match w.fab.establish(lpar, i as u16, &layout(i)) {
                Ok(_) => active += 1,
                Err(e) => {
                    refused = Some((lpar, i, e));
                    break 'fill;
                }
            }
        }
    }
    let (lpar, i, e) = refused.expect("the table filled");
    assert_eq!(
        (lpar, i, e, e.code(), active),
        (8, 11, RegistrationError::TableFull, 0xE006, 64)
    );
    // Established queue sets go on; the table takes one again once one leaves.
    w.fab.deregister_queue_set(5, 3).unwrap();
    w.fab.establish(8, 11, &layout(11)).unwrap();
    assert_eq!(
        w.fab.establish(5, 3, &layout(3)),
        Err(RegistrationError::TableFull)
    );
    w.a_to_b_passes();
    w.finish();
}

#[test]
fn full_target_table() {
    // With the address quota out of the way, one partition fills the table.
    let mut w = World::with(
        TestPlatform::new(),
        FabricConfig {
            addresses_per_partition: u16::MAX,
            ..FabricConfig::DEFAULT
        },
    );
    let mut n = w.fab.address_count();
    let err = loop {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 200, (n >> 8) as u8, n as u8));
        match w.fab.register_address(1, 0, ip) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
    };
    assert_eq!((err, err.code()), (RegistrationError::TableFull, 0xE006));
    assert_eq!(w.fab.address_count(), 4096);
    // Lookups in a full table end: a miss is 0x11, hits deliver.
    assert_eq!(
        w.a.queues[0].send(&w.fab.port(1), v4(99, 9), &[1]),
        Err(SendError::Refused(Reason::Unreachable))
    );
    w.c.queues[0]
        .send(
            &w.fab.port(3),
            IpAddr::V4(Ipv4Addr::new(10, 200, 0, 10)),
            &[2],
        )
        .unwrap();
    assert_eq!(take_all(&mut w.a, 0), vec![vec![2]]);
    w.finish();
}

#[test]
fn a_partition_at_its_address_quota() {
    // A registers addresses until its quota (256 by default, its two included):
    // 0xF00D, not 0xE006, while the table has room and others still register.
    let mut w = World::new();
    let quota = usize::from(FabricConfig::DEFAULT.addresses_per_partition);
    let others = w.fab.address_count() - 2;
    let ip = |n: usize| IpAddr::V4(Ipv4Addr::new(10, 200, (n >> 8) as u8, n as u8));
    let mut n = 0;
    let err = loop {
        match w.fab.register_address(1, 0, ip(n)) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
    };
    assert_eq!(
        (err, err.code(), n + 2),
        (RegistrationError::AddressQuota, 0xF00D, quota)
    );
    assert_eq!(w.fab.address_count(), others + quota);
    w.fab.register_address(2, 1, v4(2, 9)).unwrap();
    w.fab.register_address(3, 0, v6(3, 9)).unwrap();
    // A's addresses all work; giving one back makes room for another.
    w.c.queues[0]
        .send(&w.fab.port(3), ip(n - 1), &[7; 40])
        .unwrap();
    assert_eq!(take_all(&mut w.a, 0), vec![vec![7; 40]]);
    w.fab.deregister_address(1, 0, ip(0)).unwrap();
    w.fab.register_address(1, 0, ip(n)).unwrap();
    assert_eq!(
        w.fab.register_address(1, 0, ip(n + 1)),
        Err(RegistrationError::AddressQuota)
    );
    // Deregistering the queue set gives all of them back.
    let params = w.a.queues[0].params();
    w.fab.deregister_queue_set(1, 0).unwrap();
    w.fab.establish(1, 0, &params).unwrap();
    for k in 0..quota {
        w.fab.register_address(1, 0, ip(1000 + k)).unwrap();
    }
    assert_eq!(
        w.fab.register_address(1, 0, v4(1, 0)),
        Err(RegistrationError::AddressQuota)
    );
    w.finish();
}

#[test]
fn full_subchannel_list_of_one_partition() {
    // 16 queue sets at once (MAX_SUBCHANNELS, the default quota): the 17th is 0xF00C,
    // told apart from a full table (0xE006), and another partition still establishes.
    let mut w = World::new();
    bare_partition(&mut w, 5, 17);
    bare_partition(&mut w, 6, 1);
    for i in 0..16 {
        w.fab.establish(5, i as u16, &layout(i)).unwrap();
    }
    let e = w.fab.establish(5, 16, &layout(16)).unwrap_err();
    assert_eq!((e, e.code()), (RegistrationError::SubchannelLimit, 0xF00C));
    assert_eq!(w.fab.siga_write(5, 16, Q0), Err(SigaError::NotIqdio));
    w.fab.establish(6, 0, &layout(0)).unwrap();
    // One leaves: a new number takes its place.
    w.fab.deregister_queue_set(5, 2).unwrap();
    w.fab.establish(5, 16, &layout(2)).unwrap();
    assert_eq!(w.fab.siga_write(5, 16, Q0).unwrap().buffers, 0);
    w.finish();
}

#[test]
fn a_partition_at_its_queue_set_quota() {
    let mut w = World::with(
        TestPlatform::new(),
        FabricConfig {
            queue_sets_per_partition: 2,
            ..FabricConfig::DEFAULT
        },
    );
    bare_partition(&mut w, 5, 3);
    bare_partition(&mut w, 6, 2);
    w.fab.establish(5, 0, &layout(0)).unwrap();
    w.fab.establish(5, 1, &layout(1)).unwrap();
    let e = w.fab.establish(5, 2, &layout(2)).unwrap_err();
    assert_eq!((e, e.code()), (RegistrationError::SubchannelLimit, 0xF00C));
    // B is at the quota too (two queue sets); LPAR 6 still establishes both of its.
    assert_eq!(
        w.fab.establish(2, 7, &layout(0)),
        Err(RegistrationError::SubchannelLimit)
    );
    w.fab.establish(6, 0, &layout(0)).unwrap();
    w.fab.establish(6, 1, &layout(1)).unwrap();
    w.a_to_b_passes();
    w.finish();
}

#[test]
fn establish_and_deregister_on_ever_new_subchannel_numbers() {
    // Deregistration frees the subchannel's place: 10 000 numbers in turn, with one
    // other queue set active all along, never run into a limit (0xE006 at the 16th
    // number before).
    let mut w = World::new();
    bare_partition(&mut w, 5, 2);
    w.fab.establish(5, 0xFFFF, &layout(0)).unwrap();
    let before = w.fab.address_count();
    for sch in 0..10_000u16 {
        w.fab
            .establish(5, sch, &layout(1))
            .unwrap_or_else(|e| panic!("subchannel {sch}: {e:?}"));
        w.fab
            .register_address(5, sch, IpAddr::V4(Ipv4Addr::new(10, 5, 0, 1)))
            .unwrap();
        w.fab.deregister_queue_set(5, sch).unwrap();
        // Just deregistered: queues not active (cc1), as before.
        assert_eq!(
            w.fab.siga_write(5, sch, Q0),
            Err(SigaError::QueuesNotActive)
        );
    }
    assert_eq!(w.fab.address_count(), before);
    // A long-gone number's place was reused: it reads as never established (cc3).
    assert_eq!(w.fab.siga_write(5, 0, Q0), Err(SigaError::NotIqdio));
    assert_eq!(w.fab.siga_write(5, 0xFFFF, Q0).unwrap().buffers, 0);
    w.finish();
}

#[test]
fn registering_a_non_unicast_address() {
    let w = World::new();
    for ip in [
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::",
        "ff02::1",
        "::ffff:10.0.3.1",
    ] {
        let e = w
            .fab
            .register_address(1, 0, ip.parse().unwrap())
            .unwrap_err();
        assert_eq!(
            (e, e.code()),
            (RegistrationError::InvalidAddress, 0xF007),
            "{ip}"
        );
    }
    w.finish();
}

#[test]
fn registering_for_a_queue_set_not_established() {
    let w = World::new();
    // A's subchannel 7 does not exist; nor can A name B's queue set (its LPAR id comes
    // from the embedding, so (1, 1) is A's own, absent, subchannel 1).
    for sch in [7, 1] {
        let e = w.fab.register_address(1, sch, v4(1, 50)).unwrap_err();
        assert_eq!(
            (e, e.code()),
            (RegistrationError::SourceNotRegistered, 0xF00A)
        );
    }
    w.finish();
}

#[test]
fn deregistering_another_partitions_address_or_queue_set() {
    let mut w = World::new();
    let nf = RegistrationError::NotFound;
    assert_eq!(w.fab.deregister_address(1, 0, v4(2, 0)), Err(nf));
    assert_eq!(w.fab.deregister_queue_set(1, 1), Err(nf));
    assert_eq!(nf.code(), 0xE00B);
    w.a_to_b_passes();
    w.finish();
}

#[test]
fn stale_handle_after_reregistration() {
    let mut w = World::new();
    bare_partition(&mut w, 5, 1);
    let h = w.fab.establish(5, 2, &layout(0)).unwrap();
    w.fab.deregister_queue_set(5, 2).unwrap();
    let h2 = w.fab.establish(5, 2, &layout(0)).unwrap();
    let e = w.fab.counters(&h).unwrap_err();
    assert_eq!((e, e.code()), (RegistrationError::StaleHandle, 0xF008));
    assert!(w.fab.counters(&h2).is_ok());
    w.finish();
}

/// Expects `p` refused as overlapping, naming `fields` (in either order), with nothing
/// established.
fn expect_overlap(
    w: &World,
    lpar: u8,
    sch: u16,
    p: &iqdio::QueueSetParams,
    fields: [QueueField; 2],
) {
    let e = w.fab.establish(lpar, sch, p).unwrap_err();
    let RegistrationError::OverlappingQueues { field, with } = e else {
        panic!("{fields:?}: {e:?}");
    };
    assert!(
        [field, with] == fields || [with, field] == fields,
        "{fields:?}: {e:?}"
    );
    assert_eq!(e.code(), 0xF00B);
    assert_eq!(w.fab.siga_write(lpar, sch, Q0), Err(SigaError::NotIqdio));
}

#[test]
fn queue_structures_aliased_onto_each_other() {
    // A establishes subchannel 1 with every SBAL at one address, both SLSBs on one
    // 128-byte block and the indicator bytes inside it: the fabric would write frame
    // data and states over descriptors it and A read atomically. Refused, 0xF00B.
    let mut w = World::new();
    let good = w.a.queues[0].params();
    let x = good.output_sbals[100];
    let s = good.output_slsb;
    let p = iqdio::QueueSetParams {
        output_sbals: [x; 128],
        input_sbals: [x; 128],
        output_slsb: s,
        input_slsb: s,
        queue_indicator: s + 5,
        middle_indicator: s + 5,
        global_indicator: s + 6,
        interrupt_immediately: false,
        interrupt_cookie: 0,
        ..Default::default()
    };
    // Over A's own queue set 0 (its SBAL 100 and its SLSB)...
    let e = w.fab.establish(1, 1, &p).unwrap_err();
    assert_eq!(e.code(), 0xF00B, "{e:?}");
    // ... and with subchannel 0 out of the way, over each other.
    w.fab.deregister_queue_set(1, 0).unwrap();
    let e = w.fab.establish(1, 1, &p).unwrap_err();
    assert!(
        matches!(e, RegistrationError::OverlappingQueues { .. }),
        "{e:?}"
    );
    assert_eq!(w.fab.siga_write(1, 1, Q0), Err(SigaError::NotIqdio));
    // A's own queue set comes back and works.
    w.fab.establish(1, 0, &good).unwrap();
    w.fab.register_address(1, 0, v4(1, 0)).unwrap();
    w.fab.register_address(1, 0, v6(1, 0)).unwrap();
    w.a_to_b_passes();
    w.finish();
}

#[test]
fn overlapping_structures_within_one_queue_set() {
    use QueueField::*;
    let mut w = World::new();
    bare_partition(&mut w, 5, 1);
    let g = layout(0);
    let cases: Vec<(iqdio::QueueSetParams, [QueueField; 2])> = vec![
        // Two output SBALs on one address.
        (
            iqdio::QueueSetParams {
                output_sbals: std::array::from_fn(|i| g.output_sbals[if i == 9 { 4 } else { i }]),
                ..g.clone()
            },
            [OutputSbal(4), OutputSbal(9)],
        ),
        // An input SBAL on an output SBAL.
        (
            iqdio::QueueSetParams {
                input_sbals: std::array::from_fn(|i| {
                    if i == 0 {
                        g.output_sbals[127]
                    } else {
                        g.input_sbals[i]
                    }
                }),
                ..g.clone()
            },
            [OutputSbal(127), InputSbal(0)],
        ),
        // The output SLSB inside an SBAL.
        (
            iqdio::QueueSetParams {
                output_slsb: g.input_sbals[5] + 128,
                ..g.clone()
            },
            [InputSbal(5), OutputSlsb],
        ),
        // The input SLSB half over the output SLSB.
        (
            iqdio::QueueSetParams {
                input_slsb: g.output_slsb + 64,
                ..g.clone()
            },
            [OutputSlsb, InputSlsb],
        ),
        // An indicator byte inside an SLSB.
        (
            iqdio::QueueSetParams {
                queue_indicator: g.input_slsb + 127,
                ..g.clone()
            },
            [InputSlsb, QueueIndicator],
        ),
        // An indicator byte inside an SBAL (mixed-size atomics on the same bytes).
        (
            iqdio::QueueSetParams {
                global_indicator: g.output_sbals[7] + 8,
                ..g.clone()
            },
            [OutputSbal(7), GlobalIndicator],
        ),
        // Two tiers on one byte.
        (
            iqdio::QueueSetParams {
                middle_indicator: g.global_indicator,
                ..g.clone()
            },
            [MiddleIndicator, GlobalIndicator],
        ),
        (
            iqdio::QueueSetParams {
                queue_indicator: g.middle_indicator,
                ..g.clone()
            },
            [QueueIndicator, MiddleIndicator],
        ),
    ];
    for (p, fields) in &cases {
        expect_overlap(&w, 5, 0, p, *fields);
    }
    // The same addresses without the overlap are taken.
    w.fab.establish(5, 0, &g).unwrap();
    w.finish();
}

#[test]
fn overlapping_structures_across_a_partitions_queue_sets() {
    use QueueField::*;
    let mut w = World::new();
    bare_partition(&mut w, 5, 2);
    let (s0, s1) = (layout(0), layout(1));
    w.fab.establish(5, 0, &s0).unwrap();
    let cases: Vec<(iqdio::QueueSetParams, [QueueField; 2])> = vec![
        // An SBAL of the new set on one of the established set.
        (
            iqdio::QueueSetParams {
                output_sbals: std::array::from_fn(|i| {
                    if i == 3 {
                        s0.input_sbals[3]
                    } else {
                        s1.output_sbals[i]
                    }
                }),
                ..s1.clone()
            },
            [OutputSbal(3), InputSbal(3)],
        ),
        // The new set's SLSB inside the established set's SBAL.
        (
            iqdio::QueueSetParams {
                input_slsb: s0.output_sbals[0],
                ..s1.clone()
            },
            [InputSlsb, OutputSbal(0)],
        ),
        // The new set's SLSB over the established set's indicator bytes.
        (
            iqdio::QueueSetParams {
                output_slsb: s0.queue_indicator,
                ..s1.clone()
            },
            [OutputSlsb, QueueIndicator],
        ),
        // A queue indicator is the queue's own: not shared.
        (
            iqdio::QueueSetParams {
                queue_indicator: s0.queue_indicator,
                ..s1.clone()
            },
            [QueueIndicator, QueueIndicator],
        ),
        // A byte shared in two roles.
        (
            iqdio::QueueSetParams {
                middle_indicator: s0.global_indicator,
                ..s1.clone()
            },
            [MiddleIndicator, GlobalIndicator],
        ),
        // The new set's indicator inside the established set's SLSB.
        (
            iqdio::QueueSetParams {
                global_indicator: s0.output_slsb + 1,
                ..s1.clone()
            },
            [GlobalIndicator, OutputSlsb],
        ),
    ];
    for (p, fields) in &cases {
        expect_overlap(&w, 5, 1, p, *fields);
    }
    // The middle and the global byte are shared as such (as B's two queue sets and
    // Linux's devices share the summary indicator).
    w.fab
        .establish(
            5,
            1,
            &iqdio::QueueSetParams {
                middle_indicator: s0.middle_indicator,
                global_indicator: s0.global_indicator,
                ..s1.clone()
            },
        )
        .unwrap();
    // Other partitions' structures never meet these: A's queue set keeps its own.
    w.a_to_b_passes();
    w.finish();
}

// ---------------------------------------------------------------------------------
// SIGA.
// ---------------------------------------------------------------------------------

fn cc(e: SigaError) -> u8 {
    e.condition_code() as u8
}

#[test]
fn siga_on_a_non_iqdio_subchannel() {
    let w = World::new();
    for sch in [1u16, 9, 0xFFFF] {
        let e = w.fab.siga_write(1, sch, Q0).unwrap_err();
        assert_eq!((e, cc(e)), (SigaError::NotIqdio, 3));
        assert_eq!(w.fab.siga(1, sch, 3, Q0), Err(SigaError::NotIqdio));
    }
    w.finish();
}

#[test]
fn siga_on_another_partitions_subchannel() {
    // B primes a frame on its subchannel 1; A issues SIGA naming subchannel 1: cc3
    // (A has none), and B's primed buffer is untouched until B sends it.
    let mut w = World::new();
    let n = w.b.queues[1].prime(v4(4, 0), &[0x42; 42]).unwrap();
    for f in [0, 3] {
        let e = w.fab.siga(1, 1, f, Q0).unwrap_err();
        assert_eq!((e, cc(e)), (SigaError::NotIqdio, 3));
    }
    assert_eq!(w.b.queues[1].output_state(n), SlsbState::OUTPUT_PRIMED);
    assert!(!w.d.queues[0].has_input());
    let r = w.b.queues[1].flush(&w.fab.port(2)).unwrap();
    assert_eq!(r.delivered, 1);
    assert_eq!(take_all(&mut w.d, 0), vec![vec![0x42; 42]]);
    w.finish();
}

#[test]
fn siga_after_deregistration() {
    let mut w = World::new();
    let n = w.a.queues[0].prime(v4(2, 0), &[1; 100]).unwrap();
    w.fab.deregister_queue_set(1, 0).unwrap();
    for f in [0, 3] {
        let e = w.fab.siga(1, 0, f, Q0).unwrap_err();
        assert_eq!((e, cc(e)), (SigaError::QueuesNotActive, 1));
    }
    assert_eq!(w.a.queues[0].output_state(n), SlsbState::OUTPUT_PRIMED);
    assert!(!w.b.queues[0].has_input());
    // A's addresses went with its queue set: sends to it are unreachable.
    assert_eq!(
        w.c.queues[0].send(&w.fab.port(3), v4(1, 0), &[1]),
        Err(SendError::Refused(Reason::Unreachable))
    );
    w.finish();
}

#[test]
fn siga_with_a_queue_mask_naming_a_queue_that_does_not_exist() {
    let mut w = World::new();
    let n = w.a.queues[0].prime(v4(2, 0), &[1; 100]).unwrap();
    for mask in [0, 1, 1 << 30, (1 << 31) | 1, u32::MAX] {
        for f in [0, 3] {
            let e = w.fab.siga(1, 0, f, mask).unwrap_err();
            assert_eq!((e, cc(e)), (SigaError::InvalidQueueMask, 1), "{mask:#x}");
        }
    }
    assert_eq!(w.a.queues[0].output_state(n), SlsbState::OUTPUT_PRIMED);
    assert!(!w.b.queues[0].has_input());
    // The same buffer goes with the right mask.
    assert_eq!(w.fab.siga_write(1, 0, Q0).unwrap().delivered, 1);
    assert_eq!(take_all(&mut w.b, 0), vec![vec![1; 100]]);
    w.finish();
}

#[test]
fn siga_with_an_unknown_function_code() {
    let w = World::new();
    for f in [1, 2, 4, 0x8000_0000, u32::MAX] {
        let e = w.fab.siga(1, 0, f, Q0).unwrap_err();
        assert_eq!((e, cc(e)), (SigaError::InvalidFunction, 1), "fc {f:#x}");
    }
    w.finish();
}

#[test]
fn siga_from_an_unknown_or_removed_partition() {
    let mut w = World::new();
    for lpar in [0u8, 9, 255] {
        let e = w.fab.siga_write(lpar, 0, Q0).unwrap_err();
        assert_eq!((e, cc(e)), (SigaError::NotIqdio, 3));
    }
    // A partition that is removed: cc3, and its memory is never touched again.
    let p = Partition::new(&w.fab, 7, 1, small());
    let before = p.ram.read_vec(GUEST_BASE, p.ram.len());
    w.fab.remove_partition(7).unwrap();
    assert_eq!(w.fab.siga_write(7, 0, Q0), Err(SigaError::NotIqdio));
    assert_eq!(
        w.c.queues[0].send(&w.fab.port(3), v4(7, 0), &[1; 10]),
        Err(SendError::Refused(Reason::Unreachable))
    );
    assert_eq!(p.ram.read_vec(GUEST_BASE, p.ram.len()), before);
    w.more.push(p);
    w.finish();
}

#[test]
fn siga_with_no_primed_buffer() {
    // Whatever else the program writes into its output SLSB, only 0x62 is sent.
    let mut w = World::new();
    let slsb = w.a.queues[0].params().output_slsb;
    let n = w.a.queues[0].prime(v4(2, 0), &[1; 10]).unwrap();
    for state in [0x00u8, 0x41, 0x82, 0xA0, 0xA1, 0xAF, 0x63, 0x22, 0xFF] {
        w.a.ram.write(slsb + u64::from(n), &[state]);
        let r = w.fab.siga_write_multiple(1, 0, Q0).unwrap();
        assert_eq!(r, iqdio::SigaReport::default(), "state {state:#x}");
        assert_eq!(w.a.ram.read_vec(slsb + u64::from(n), 1), vec![state]);
    }
    assert!(!w.b.queues[0].has_input());
    w.finish();
}

// ---------------------------------------------------------------------------------
// Races the program starts: it rewrites what it handed to the fabric.
// ---------------------------------------------------------------------------------

/// Host memory of a window, written with atomics from a thread that races the
/// fabric (the fabric's SBALE and SLSB accesses are atomics too).
#[derive(Clone, Copy)]
struct Scribble {
    host: usize,
    len: usize,
}

impl Scribble {
    fn of(ram: &GuestRam, guest: u64, len: usize) -> Self {
        let off = (guest - GUEST_BASE) as usize;
        assert!(off + len <= ram.len());
        Self {
            host: ram.host().as_ptr() as usize + off,
            len,
        }
    }

    fn byte(&self, off: usize, v: u8) {
        assert!(off < self.len);
        // SAFETY: inside the window (asserted), which outlives the scribbling thread
        // (joined before the world is dropped); guest memory is only ever accessed
        // through atomics or raw copies, never through a Rust reference.
        unsafe { AtomicU8::from_ptr((self.host + off) as *mut u8) }.store(v, Ordering::Relaxed);
    }

    fn word(&self, off: usize, v: u64) {
        assert!(off + 8 <= self.len && (self.host + off).is_multiple_of(8));
        // SAFETY: as for `byte`; 8-aligned (asserted).
        unsafe { AtomicU64::from_ptr((self.host + off) as *mut u64) }.store(v, Ordering::Relaxed);
    }

    fn sbale(&self, sbal_off: usize, i: usize, e: &Sbale) {
        let b = e.encode();
        let off = sbal_off + i * 16;
        self.word(off, u64::from_ne_bytes(b[..8].try_into().unwrap()));
        self.word(off + 8, u64::from_ne_bytes(b[8..].try_into().unwrap()));
    }
}

#[test]
fn buffer_rewritten_while_the_fabric_copies_it() {
    // A primes good SBALs by hand and issues SIGA write after SIGA write while a second
    // thread keeps scribbling random words over A's SBALs and random bytes over its
    // frame data (addresses inside and outside the window, any lengths and flags).
    // No panic, nothing outside any window changes, every buffer SIGA handled ends
    // 0xA1 or 0xAF (with a documented reason), and what was delivered is counted.
    let mut w = World::new();
    let params = w.a.queues[0].params();
    let sbals = Scribble::of(&w.a.ram, params.output_sbals[0], 128 * SBAL_SIZE);
    let data_base = GUEST_BASE + 0x8_0000;
    let data = Scribble::of(&w.a.ram, data_base, 4 * 4096);
    let window = (GUEST_BASE, w.a.ram.len() as u64);
    let stop = Arc::new(AtomicBool::new(false));
    let scribbler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
            let mut writes = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let r = rng.next();
                match r % 4 {
                    0 => {
                        // A random SBALE word anywhere in the 128 SBALs.
                        let off = (rng.next() as usize % (sbals.len / 8)) * 8;
                        sbals.word(off, rng.next());
                    }
                    1 => {
                        // A plausible SBALE: inside, straddling, outside the window.
                        let addr = match rng.next() % 4 {
                            0 => window.0 + rng.next() % window.1,
                            1 => window.0 + window.1 - rng.next() % 64,
                            2 => rng.next(),
                            _ => data_base + rng.next() % 16384,
                        };
                        let e = Sbale {
                            eflags: [0x00, 0x04, 0x08, 0x0C, 0x40, 0x4C][rng.next() as usize % 6],
                            length: (rng.next() % 20_000) as u32,
                            addr,
                            ..Sbale::default()
                        };
                        let b = (rng.next() as usize % 128) * SBAL_SIZE;
                        sbals.sbale(b, rng.next() as usize % 16, &e);
                    }
                    _ => {
                        let off = rng.next() as usize % data.len;
                        data.byte(off, rng.next() as u8);
                    }
                }
                writes += 1;
            }
            writes
        })
    };
    let slsb = params.output_slsb;
    let mut delivered_frames = 0u64;
    let mut found = 0u64;
    let mut outcomes = [0u64; 2];
    for i in 0..3000u32 {
        let n = (i % 128) as usize;
        let sbal_off = n * SBAL_SIZE;
        let dest = if i % 2 == 0 { v4(2, 0) } else { v4(4, 0) };
        let len = 32 + (i as usize * 97) % 9000;
        let at = data_base + ((i as u64 % 4) * 4096) % 8192;
        // The frame: header + bytes in A's data area, one or several elements.
        let mut frame = L3Header::unicast(dest, (len - 32) as u16).encode().to_vec();
        frame.resize(len, i as u8);
        for (k, b) in frame.iter().enumerate() {
            data.byte((at - data_base) as usize + k, *b);
        }
        let pieces = 1 + (i as usize % 3);
        let step = len.div_ceil(pieces);
        let mut k = 0;
        let mut off = 0;
        while off < len {
            let l = step.min(len - off);
            let frag = iqdio::qdio::Fragment::for_element(k, pieces.min(len.div_ceil(step)));
            let last = if off + l == len { 0x40 } else { 0 };
            sbals.sbale(
                sbal_off,
                k,
                &Sbale {
                    eflags: frag.bits() | last,
                    length: l as u32,
                    addr: at + off as u64,
                    ..Sbale::default()
                },
            );
            off += l;
            k += 1;
        }
        // Hand it over (Release: the words above before 0x62).
        let s = Scribble::of(&w.a.ram, slsb, 128);
        // SAFETY: inside A's window (checked by `Scribble::of`).
        unsafe { AtomicU8::from_ptr((s.host + n) as *mut u8) }.store(0x62, Ordering::Release);
        let r = w.fab.siga_write(1, 0, Q0).expect("cc0");
        assert_eq!(r.buffers, 1);
        assert_eq!(r.delivered + r.refused, 1);
        let state = w.a.ram.read_vec(slsb + n as u64, 1)[0];
        match state {
            0xA1 => outcomes[0] += 1,
            // The reason byte may be scribbled over at once: the fabric's counters
            // say which reasons it wrote (checked below).
            0xAF => outcomes[1] += 1,
            other => panic!("buffer {n} ends {other:#x}"),
        }
        delivered_frames += u64::from(r.frames);
        for p in [&mut w.b, &mut w.d] {
            while p.queues[0].receive(|_| found += 1).is_some() {}
        }
    }
    stop.store(true, Ordering::Relaxed);
    let writes = scribbler.join().unwrap();
    assert!(writes > 0);
    let ca = w.fab.counters_of(1, 0).unwrap();
    assert_eq!(ca.sbals_sent, outcomes[0]);
    assert_eq!(ca.errors_total(), outcomes[1]);
    assert_eq!(ca.frames_sent, delivered_frames);
    // A scribbled next hop may name any registered queue set (C's, B's second one, A's
    // own), so the frames delivered are counted over all of them.
    let received: u64 = [(1, 0), (2, 0), (2, 1), (3, 0), (4, 0)]
        .iter()
        .filter_map(|&(l, s)| w.fab.counters_of(l, s))
        .map(|c| c.frames_received)
        .sum();
    assert_eq!(received, delivered_frames);
    // Take what scribbled next hops sent elsewhere, so the final check starts clean.
    for p in [&mut w.a, &mut w.b, &mut w.c, &mut w.d] {
        for q in p.queues.iter_mut() {
            while q.receive(|_| {}).is_some() {}
        }
    }
    // Every delivered frame reached a driver, which handed it over or, where the
    // scribbler wrote over it after delivery (A's frame data area lies in its own
    // receive buffers), counted it bad: none skipped.
    let (mut handed, mut bad) = (0u64, 0u64);
    for p in [&w.a, &w.b, &w.c, &w.d] {
        for q in &p.queues {
            handed += q.rx_counters().frames;
            bad += q.rx_counters().bad_frames;
        }
    }
    assert_eq!(
        handed + bad,
        delivered_frames,
        "every frame handed over or counted"
    );
    assert!(found <= handed);
    eprintln!(
        "scribbled {writes} times: {} delivered, {} refused, {delivered_frames} frames, {handed} handed over ({found} at B and D), {bad} counted bad",
        outcomes[0], outcomes[1]
    );
    w.finish();
}

#[test]
fn slsb_rewritten_by_the_program_during_siga() {
    // Every output SBAL holds a good frame to B; a thread flips A's output SLSB bytes
    // between 0x62 and other values while A issues SIGA write-multiple. The fabric
    // handles what it finds primed: cc0 each time, counts that add up, B's frames
    // intact, nothing outside the windows.
    let mut w = World::new();
    let params = w.a.queues[0].params();
    let frame = {
        let mut f = L3Header::unicast(v4(2, 0), 64).encode().to_vec();
        f.extend(payload((1, 0), 1, 64));
        f
    };
    let data = GUEST_BASE + 0x8_0000;
    w.a.ram.write(data, &frame);
    for n in 0..128 {
        set_el(
            &w.a.ram,
            params.output_sbals[n],
            0,
            Sbale {
                eflags: 0x40,
                length: frame.len() as u32,
                addr: data,
                ..Sbale::default()
            },
        );
    }
    let slsb = Scribble::of(&w.a.ram, params.output_slsb, 128);
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(7);
            while !stop.load(Ordering::Relaxed) {
                let r = rng.next();
                let v = [0x62, 0x62, 0xA0, 0x41, 0x00, 0xA1][(r >> 8) as usize % 6];
                slsb.byte(r as usize % 128, v);
            }
        })
    };
    let mut frames = 0u64;
    let mut full = 0u64;
    let mut found = Vec::new();
    for _ in 0..2000 {
        let r = w.fab.siga_write_multiple(1, 0, Q0).expect("cc0");
        assert_eq!(r.buffers, r.delivered + r.refused);
        frames += u64::from(r.frames);
        full += u64::from(r.refused);
        found.extend(take_all(&mut w.b, 0));
    }
    stop.store(true, Ordering::Relaxed);
    flipper.join().unwrap();
    found.extend(take_all(&mut w.b, 0));
    let ca = w.fab.counters_of(1, 0).unwrap();
    assert_eq!(ca.frames_sent, frames);
    assert_eq!(
        ca.errors_for(Reason::TargetFull),
        full,
        "only 0x10 refusals"
    );
    assert_eq!(ca.errors_total(), full);
    assert_eq!(found.len() as u64, frames, "every delivered frame found");
    assert!(found.iter().all(|f| f == &frame[HEADER_SIZE..]), "intact");
    // Once the program stops, a buffer it primes is sent as usual.
    let s = Scribble::of(&w.a.ram, params.output_slsb, 128);
    for n in 0..128 {
        s.byte(n, 0xA0);
    }
    assert_eq!(w.fab.siga_write_multiple(1, 0, Q0).unwrap().buffers, 0);
    eprintln!("{frames} frames delivered, {full} refused full");
    w.finish();
}

#[test]
fn self_send_with_overlapping_source_and_target() {
    // A sends to its own address a frame that lies inside the input buffer the fabric
    // will fill, 16 bytes in: the copy overlaps itself (a memmove), the frame arrives
    // intact, and nothing outside A's window changes. Then source = target exactly.
    let mut w = World::new();
    let ap = w.a.queues[0].params();
    let rx0 = el(&w.a.ram, ap.input_sbals[0], 0).addr;
    let rx1 = el(&w.a.ram, ap.input_sbals[1], 0).addr;
    for (k, (at, seq)) in [(rx0 + 16, 1u32), (rx1, 2)].into_iter().enumerate() {
        let mut frame = L3Header::unicast(v4(1, 0), 300).encode().to_vec();
        frame.extend(payload((1, 0), seq, 300));
        w.a.ram.write(at, &frame);
        let sbal = ap.output_sbals[k];
        set_el(
            &w.a.ram,
            sbal,
            0,
            Sbale {
                eflags: 0x40,
                length: frame.len() as u32,
                addr: at,
                ..Sbale::default()
            },
        );
        w.a.ram.write(ap.output_slsb + k as u64, &[0x62]);
        let r = w.fab.siga_write(1, 0, Q0).unwrap();
        assert_eq!((r.delivered, r.frames), (1, 1));
        assert_eq!(w.a.ram.read_vec(ap.output_slsb + k as u64, 1), vec![0xA1]);
        assert_eq!(take_all(&mut w.a, 0), vec![payload((1, 0), seq, 300)]);
    }
    w.finish();
}

// ---------------------------------------------------------------------------------
// Multicast groups, broadcast and output queues (issue 11).
// ---------------------------------------------------------------------------------

/// The `n`th IPv4 multicast group (224.0.0.0/4).
fn group(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        224 + (n >> 16) as u8,
        (n >> 8) as u8,
        n as u8,
        1,
    ))
}

#[test]
fn group_memberships_that_fill_the_target_table() {
    // A membership takes a place in the target table as an address does: with the
    // quota out of the way A joins groups until the table is full, 0xE006, the
    // table's own code; then no one may join a group or switch broadcast on.
    let mut w = World::with(
        TestPlatform::new(),
        FabricConfig {
            addresses_per_partition: u16::MAX,
            ..FabricConfig::DEFAULT
        },
    );
    let before = w.fab.address_count();
    let mut n = 0;
    let err = loop {
        match w.fab.register_group(1, 0, group(n)) {
            Ok(()) => n += 1,
            Err(e) => break e,
        }
    };
    assert_eq!((err, err.code()), (RegistrationError::TableFull, 0xE006));
    assert_eq!(w.fab.address_count(), 4096);
    assert_eq!(n, 4096 - before, "A's groups after everyone's addresses");
    assert_eq!(
        w.fab.register_group(3, 0, group(0)),
        Err(RegistrationError::TableFull),
        "a second member of an existing group needs a place too"
    );
    assert_eq!(
        w.fab.set_broadcast(4, 0, true),
        Err(RegistrationError::TableFull)
    );
    assert_eq!(
        w.fab.register_address(4, 0, v4(4, 9)),
        Err(RegistrationError::TableFull)
    );
    // Leaving one group frees one place, for anyone.
    w.fab.deregister_group(1, 0, group(7)).unwrap();
    w.fab.register_group(3, 0, group(0)).unwrap();
    assert_eq!(w.fab.group_members(group(0)).len(), 2);
    // Unicast lookups in a table full of group entries still end, hit or miss.
    assert_eq!(
        w.a.queues[0].send(&w.fab.port(1), v4(99, 9), &[1]),
        Err(SendError::Refused(Reason::Unreachable))
    );
    w.a_to_b_passes();
    w.finish();
}

#[test]
fn group_registration_of_a_unicast_address() {
    // Groups are multicast addresses only; unicast addresses are registered as
    // addresses, never as groups, and the other way round: 0xF007 either way, and
    // nothing is registered.
    let w = World::new();
    let before = w.fab.address_count();
    for ip in [
        v4(1, 0),
        v4(2, 0),
        v6(1, 0),
        IpAddr::V4(Ipv4Addr::BROADCAST),
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::new(223, 255, 255, 255)),
        IpAddr::V4(Ipv4Addr::new(240, 0, 0, 1)),
        IpAddr::V6("fe80::1".parse().unwrap()),
    ] {
        let e = w.fab.register_group(1, 0, ip).unwrap_err();
        assert_eq!(
            (e, e.code()),
            (RegistrationError::InvalidAddress, 0xF007),
            "{ip}"
        );
        assert_eq!(
            w.fab.deregister_group(1, 0, ip),
            Err(RegistrationError::InvalidAddress),
            "{ip}"
        );
    }
    for g in [group(0), IpAddr::V6("ff02::1".parse().unwrap())] {
        assert_eq!(
            w.fab.register_address(1, 0, g),
            Err(RegistrationError::InvalidAddress),
            "{g} as a unicast address"
        );
    }
    assert_eq!(w.fab.address_count(), before);
    w.finish();
}

#[test]
fn duplicate_membership() {
    // Joining a group twice is Duplicate Found (0xE005), as is switching broadcast on
    // twice; leaving what one is not in is 0xE00B. Other queue sets, of the same
    // partition or another, join the same group freely: a group has many members.
    let w = World::new();
    let g = group(5);
    w.fab.register_group(2, 0, g).unwrap();
    let e = w.fab.register_group(2, 0, g).unwrap_err();
    assert_eq!((e, e.code()), (RegistrationError::DuplicateFound, 0xE005));
    w.fab.register_group(2, 1, g).unwrap();
    w.fab.register_group(1, 0, g).unwrap();
    assert_eq!(w.fab.group_members(g).len(), 3);
    w.fab.set_broadcast(1, 0, true).unwrap();
    assert_eq!(
        w.fab.set_broadcast(1, 0, true),
        Err(RegistrationError::DuplicateFound)
    );
    let e = w.fab.set_broadcast(3, 0, false).unwrap_err();
    assert_eq!((e, e.code()), (RegistrationError::NotFound, 0xE00B));
    // C is not a member; it cannot end A's or B's membership either (the fabric takes
    // the issuer from the port, the queue set from the issuer).
    let e = w.fab.deregister_group(3, 0, g).unwrap_err();
    assert_eq!((e, e.code()), (RegistrationError::NotFound, 0xE00B));
    assert_eq!(w.fab.group_members(g).len(), 3);
    // A queue set that is not established joins nothing.
    assert_eq!(
        w.fab.register_group(3, 7, g),
        Err(RegistrationError::SourceNotRegistered)
    );
    w.finish();
}

#[test]
fn sbals_of_one_queue_more_than_1_tib_apart() {
    // The fabric keeps a queue's SBALs as 32-bit distances in 256-byte units from its
    // lowest: an SBAL 1 TiB or more above it is refused, 0xF011 naming it, on every
    // queue (output queue 0, the input queue, output queue 1); 1 TiB less 256 bytes
    // is the farthest it takes.
    let mut w = World::new();
    const TIB: u64 = 1 << 40;
    let near = GuestRam::new(2 * SET_BYTES);
    let far = GuestRam::new(2 * SET_BYTES + PAGE);
    // SAFETY: `far`'s pages live in `w.extra` as long as the world, whose fabric is
    // dropped before them.
    let far_window = unsafe { Window::new(GUEST_BASE + TIB - PAGE as u64, far.host(), far.len()) };
    w.fab
        .add_partition(5, &[near.window(), far_window])
        .unwrap();
    w.extra.push(near);
    w.extra.push(far);
    let params = || {
        let mut p = layout(0);
        let q1 = layout(1);
        p.more_outputs
            .push(iqdio::fabric::QueueAddresses {
                sbals: q1.output_sbals,
                slsb: q1.output_slsb,
            })
            .unwrap();
        p
    };
    type Place = fn(&mut iqdio::QueueSetParams, u64);
    let cases: [(Place, QueueField); 3] = [
        (
            |p, d| p.output_sbals[7] = p.output_sbals[0] + d,
            QueueField::OutputSbal(7),
        ),
        (
            |p, d| p.input_sbals[100] = p.input_sbals[0] + d,
            QueueField::InputSbal(100),
        ),
        (
            |p, d| p.more_outputs[0].sbals[3] = p.more_outputs[0].sbals[0] + d,
            QueueField::OutputQueueSbal {
                queue: 1,
                buffer: 3,
            },
        ),
    ];
    for (place, field) in cases {
        let mut p = params();
        place(&mut p, TIB);
        let e = w.fab.establish(5, 0, &p).unwrap_err();
        assert_eq!(
            (e, e.code()),
            (RegistrationError::SbalSpread(field), 0xF011)
        );
        let mut p = params();
        place(&mut p, TIB - SBAL_SIZE as u64);
        w.fab.establish(5, 0, &p).expect("1 TiB less 256 bytes");
        w.fab.deregister_queue_set(5, 0).unwrap();
    }
    w.a_to_b_passes();
    w.finish();
}

#[test]
fn more_output_queues_than_the_fabric_offers() {
    // A fabric built for two output queues per queue set (its `O`) refuses a third
    // with 0xF012, before it looks at any address; two are taken, and a SIGA naming
    // a queue beyond them is cc1.
    type TwoQueues = iqdio::Fabric<TestPlatform, 8, 16, 8, 2, iqdio::Windows, 2>;
    let fab = Box::new(TwoQueues::new(TestPlatform::new(), FabricConfig::DEFAULT));
    let ram = GuestRam::new(3 * SET_BYTES);
    fab.add_partition(1, &[ram.window()]).unwrap();
    let queue = |i: usize| {
        let l = layout(i);
        iqdio::fabric::QueueAddresses {
            sbals: l.output_sbals,
            slsb: l.output_slsb,
        }
    };
    let mut p = layout(0);
    p.more_outputs.push(queue(1)).unwrap();
    p.more_outputs.push(queue(2)).unwrap();
    let e = fab.establish(1, 0, &p).unwrap_err();
    assert_eq!((e, e.code()), (RegistrationError::OutputQueues, 0xF012));
    // Addresses outside the partition's memory do not change the answer.
    p.more_outputs[1].slsb = 0;
    p.input_slsb = u64::MAX;
    assert_eq!(
        fab.establish(1, 0, &p),
        Err(RegistrationError::OutputQueues)
    );
    let mut p = layout(0);
    p.more_outputs.push(queue(1)).unwrap();
    fab.establish(1, 0, &p).expect("two queues");
    let r = fab
        .siga_write_multiple(1, 0, (1 << 31) | (1 << 30))
        .unwrap();
    assert_eq!(r.buffers, 0, "nothing primed");
    assert_eq!(
        fab.siga_write_multiple(1, 0, 1 << 29),
        Err(SigaError::InvalidQueueMask)
    );
    drop(fab);
    assert!(ram.guards_intact());
}

// ---------------------------------------------------------------------------------
// Bugs found while writing the catalogue and the stress test (fixed in src/ by the
// library's owner; the test then loses its `ignore`).
// ---------------------------------------------------------------------------------

#[test]
fn driver_packs_a_frame_whose_header_crosses_a_page() {
    // Two frames for one next hop in one buffer: the first takes 4050 + 32 bytes, so
    // the second starts 14 bytes before a page boundary. The driver cuts its elements
    // at page boundaries, so the second frame's first element holds 14 bytes of its
    // 32-byte header, and the fabric refuses the whole buffer (0x28, element 1): both
    // frames, non-retryable, although the caller handed it two well-formed packets.
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, config(Mfs::K16));
    let mut b = Partition::new(&fab, 2, 1, config(Mfs::K16));
    let p1 = payload((1, 0), 1, 4050);
    let p2 = payload((1, 0), 2, 100);
    a.queues[0].prime_frames(v4(2, 0), &[&p1, &p2]).unwrap();
    let r = a.queues[0].flush(&fab.port(1)).unwrap();
    assert_eq!(r.refused.as_slice(), &[], "refused: {:?}", r.refused);
    assert_eq!(take_all(&mut b, 0), vec![p1, p2]);
}
