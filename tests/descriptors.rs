//! Malformed descriptors and headers: each gets its own sbalf15 code in the sender's
//! own SBAL (and the failing element's index in element 14), nothing is delivered,
//! no byte outside the windows changes, and other traffic goes on.
//!
//! `tests/adversarial.rs` repeats these cases inside its wider catalogue; this file is
//! the small, single-threaded set that `cargo xtask miri` runs (every unsafe path of a
//! send, in minutes rather than hours under Miri).

mod common;

use common::*;
use iqdio::driver::DriverConfig;
use iqdio::qdio::{HEADER_SIZE, Sbale, SlsbState};
use iqdio::{FabricConfig, Mfs, Reason};

struct Case {
    fab: std::sync::Arc<TestFabric>,
    a: Partition,
    b: Partition,
    /// Output buffer primed with a valid 3-element frame (9000 bytes) to B.
    n: u8,
    sbal: u64,
    elements: Vec<Sbale>,
}

impl Case {
    fn new() -> Self {
        let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
        let cfg = DriverConfig {
            tx_buffers: 4,
            ..config(Mfs::K64)
        };
        let mut a = Partition::new(&fab, 1, 1, cfg);
        let b = Partition::new(&fab, 2, 1, cfg);
        let n = a.queues[0]
            .prime(v4(2, 0), &payload((1, 0), 0, 9000))
            .unwrap();
        let sbal = a.queues[0].params().output_sbals[usize::from(n)];
        let elements = (0..16).map(|i| Self::read_el(&a, sbal, i)).collect();
        Self {
            fab,
            a,
            b,
            n,
            sbal,
            elements,
        }
    }

    fn read_el(a: &Partition, sbal: u64, i: usize) -> Sbale {
        let mut raw = [0u8; 16];
        a.ram.read(sbal + (i * 16) as u64, &mut raw);
        Sbale::decode(&raw)
    }

    fn set(&self, i: usize, e: Sbale) {
        self.a.ram.write(self.sbal + (i * 16) as u64, &e.encode());
    }

    fn header_addr(&self) -> u64 {
        self.elements[0].addr
    }

    /// Issues the SIGA and checks everything a refusal must satisfy.
    fn expect(mut self, reason: Reason, element: u8) {
        let r = self.a.queues[0].flush(&self.fab.port(1)).unwrap();
        assert_eq!(r.refused.as_slice(), &[(0, reason)]);
        assert_eq!(
            self.a.queues[0].output_state(self.n),
            SlsbState::OUTPUT_ERROR
        );
        let e15 = Self::read_el(&self.a, self.sbal, 15);
        let e14 = Self::read_el(&self.a, self.sbal, 14);
        assert_eq!(e15.sflags, reason.code(), "sbalf15");
        assert_eq!(e14.sflags & 0x0F, element, "failing element");
        assert!(!self.b.queues[0].has_input(), "nothing delivered");
        assert_eq!(self.fab.counters_of(1, 0).unwrap().errors_for(reason), 1);
        assert!(self.a.ram.guards_intact() && self.b.ram.guards_intact());
        // The fabric and the partitions go on: a good frame passes.
        let data = payload((1, 0), 1, 500);
        self.a.queues[0]
            .send(&self.fab.port(1), v6(2, 0), &data)
            .unwrap();
        let mut got = Vec::new();
        self.b.queues[0].receive(|f| {
            let mut v = vec![0; f.len()];
            f.copy_to(&mut v);
            got.push(v);
        });
        assert_eq!(got, vec![data]);
    }
}

#[test]
fn no_last_entry_in_16_elements() {
    let c = Case::new();
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
    c.expect(Reason::NoLastEntry, 15);
}

#[test]
fn zero_length_element() {
    let c = Case::new();
    c.set(
        1,
        Sbale {
            length: 0,
            ..c.elements[1]
        },
    );
    c.expect(Reason::ZeroLength, 1);
}

#[test]
fn element_address_outside_the_window() {
    let c = Case::new();
    c.set(
        2,
        Sbale {
            addr: GUEST_BASE - 4096,
            ..c.elements[2]
        },
    );
    c.expect(Reason::AddressOutsideMemory, 2);
}

#[test]
fn element_straddling_the_end_of_the_window() {
    let c = Case::new();
    let end = GUEST_BASE + c.a.ram.len() as u64;
    c.set(
        2,
        Sbale {
            addr: end - 100,
            ..c.elements[2]
        },
    );
    c.expect(Reason::AddressOutsideMemory, 2);
}

#[test]
fn element_wrapping_past_the_top_of_the_address_space() {
    let c = Case::new();
    c.set(
        1,
        Sbale {
            addr: u64::MAX - 2047,
            ..c.elements[1]
        },
    );
    c.expect(Reason::AddressOutsideMemory, 1);
}

#[test]
fn element_length_larger_than_the_window() {
    let c = Case::new();
    c.set(
        0,
        Sbale {
            length: u32::MAX,
            ..c.elements[0]
        },
    );
    c.expect(Reason::AddressOutsideMemory, 0);
}

#[test]
fn fragment_middle_without_first() {
    let c = Case::new();
    c.set(
        0,
        Sbale {
            eflags: 0x08,
            ..c.elements[0]
        },
    );
    c.expect(Reason::FragmentOrder, 0);
}

#[test]
fn fragment_first_left_open_by_last_entry() {
    let c = Case::new();
    c.set(
        1,
        Sbale {
            eflags: 0x08 | 0x40,
            ..c.elements[1]
        },
    );
    c.expect(Reason::FragmentOrder, 1);
}

#[test]
fn header_id_other_than_layer3() {
    let c = Case::new();
    c.a.ram.write(c.header_addr(), &[0x03]);
    c.expect(Reason::HeaderId, 0);
}

#[test]
fn layer2_header_on_a_layer3_queue_set() {
    let c = Case::new();
    c.a.ram.write(c.header_addr(), &[0x02]);
    c.expect(Reason::WrongLayer, 0);
}

#[test]
fn header_length_larger_than_the_elements_hold() {
    let c = Case::new();
    c.a.ram.write(c.header_addr() + 8, &9001u16.to_be_bytes());
    c.expect(Reason::HeaderLength, 0);
}

#[test]
fn header_length_smaller_than_the_elements_hold() {
    let c = Case::new();
    c.a.ram.write(c.header_addr() + 8, &8999u16.to_be_bytes());
    c.expect(Reason::HeaderLength, 0);
}

#[test]
fn ipv6_flag_with_an_ipv4_address() {
    let c = Case::new();
    c.a.ram.write(c.header_addr() + 1, &[0x86]);
    c.expect(Reason::AddressFamily, 0);
}

#[test]
fn multicast_cast_type_on_a_unicast_queue() {
    let c = Case::new();
    c.a.ram.write(c.header_addr() + 1, &[0x04]);
    c.expect(Reason::CastType, 0);
}

#[test]
fn first_element_shorter_than_the_header() {
    let c = Case::new();
    let e0 = c.elements[0];
    // Split the first element's first 16 bytes off into an element of their own.
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
    c.expect(Reason::ShortHeader, 0);
}

#[test]
fn frames_for_two_next_hops_in_one_sbal() {
    let c = Case::new();
    // Append a second, 1-element frame whose header names another next hop.
    let extra = c.elements[2].addr + u64::from(c.elements[2].length) + 64;
    let mut h = [0u8; HEADER_SIZE + 4];
    h[..HEADER_SIZE].copy_from_slice(&iqdio::qdio::L3Header::unicast(v4(3, 0), 4).encode());
    c.a.ram.write(extra, &h);
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
    c.expect(Reason::MixedDestinations, 3);
}

#[test]
fn frames_larger_than_the_mfs_in_total() {
    // Two consistent frames whose sum exceeds 64 KiB by one byte.
    let c = Case::new();
    let base = c.elements[0].addr;
    let hdr = |len: u16| iqdio::qdio::L3Header::unicast(v4(2, 0), len).encode();
    // Frame 1: elements 0..8 (8 x 4096 bytes), frame 2: elements 8..16 + 1 byte.
    c.a.ram.write(base, &hdr(8 * 4096 - 32));
    c.a.ram.write(base + 8 * 4096, &hdr(8 * 4096 - 32 + 1));
    for i in 0..16 {
        let pos = i % 8;
        let mut flags = match pos {
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
    c.expect(Reason::TooLarge, 15);
}

#[test]
fn destination_not_registered() {
    let c = Case::new();
    c.a.ram.write(c.header_addr() + 0x1C, &[10, 99, 99, 99]);
    c.expect(Reason::Unreachable, 0);
}
