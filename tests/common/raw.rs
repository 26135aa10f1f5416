//! A queue set laid out by hand in a test partition's memory, as Linux's qeth lays out
//! its queues: for tests that drive the fabric with raw SBALs and SLSB bytes (the
//! completion queue, layer 2), below the crate's driver.

use std::net::IpAddr;

use super::{GUEST_BASE, GuestRam, TestFabric};
use iqdio::qdio::{Eflags, L3Header, Sbale};
use iqdio::{QueueAddresses, QueueSetParams};

pub const Q0: u32 = 1 << 31;
pub const Q1: u32 = 1 << 30;

// A partition's layout (offsets from GUEST_BASE).
pub const IND: u64 = 0x0;
pub const OUT_SBALS: u64 = 0x1000;
pub const OUT_SLSB: u64 = 0x9000;
pub const IN_SLSB: u64 = 0x9100;
pub const CQ_SLSB: u64 = 0x9200;
pub const MC_SLSB: u64 = 0x9300;
pub const IN_SBALS: u64 = 0xA000;
pub const CQ_SBALS: u64 = 0x12000;
pub const QAOBS: u64 = 0x1A000;
pub const TX_DATA: u64 = 0x22000;
pub const RX_DATA: u64 = 0x32000;
pub const MC_SBALS: u64 = 0x42000;
pub const RAM: usize = 0x4A000;
pub const SLOT: u64 = 0x1000;

/// How a [`Raw`] queue set is established.
#[derive(Clone, Copy, Default)]
pub struct Mode {
    /// With a completion queue.
    pub cq: bool,
    /// In layer-2 mode.
    pub layer2: bool,
}

/// One partition with one queue set (subchannel 0, output queues 0 and 1, 1 the
/// multicast queue) laid out by hand, as Linux's qeth lays out its queues.
pub struct Raw {
    pub ram: GuestRam,
}

pub fn g(off: u64) -> u64 {
    GUEST_BASE + off
}

impl Raw {
    pub fn new(f: &TestFabric, lpar: u8, mode: Mode) -> Self {
        let ram = GuestRam::new(RAM);
        f.add_partition(lpar, &[ram.window()]).unwrap();
        let ring = |base: u64| core::array::from_fn(|i| g(base) + 256 * i as u64);
        let mut more = heapless::Vec::new();
        more.push(QueueAddresses {
            sbals: ring(MC_SBALS),
            slsb: g(MC_SLSB),
        })
        .unwrap();
        let params = QueueSetParams {
            output_sbals: ring(OUT_SBALS),
            input_sbals: ring(IN_SBALS),
            output_slsb: g(OUT_SLSB),
            input_slsb: g(IN_SLSB),
            queue_indicator: g(IND),
            middle_indicator: g(IND + 1),
            global_indicator: g(IND + 2),
            more_outputs: more,
            layer2: mode.layer2,
            completion_queue: mode.cq.then(|| QueueAddresses {
                sbals: ring(CQ_SBALS),
                slsb: g(CQ_SLSB),
            }),
            ..Default::default()
        };
        f.establish(lpar, 0, &params).unwrap();
        Self { ram }
    }

    pub fn slsb(&self, at: u64, n: usize) -> u8 {
        self.ram.read_vec(g(at) + n as u64, 1)[0]
    }

    pub fn set_slsb(&self, at: u64, n: usize, v: u8) {
        self.ram.write(g(at) + n as u64, &[v]);
    }

    pub fn element(&self, sbals: u64, n: usize, e: usize) -> Sbale {
        let b = self
            .ram
            .read_vec(g(sbals) + 256 * n as u64 + 16 * e as u64, 16);
        Sbale::decode(&b.try_into().unwrap())
    }

    pub fn set_element(&self, sbals: u64, n: usize, e: usize, s: &Sbale) {
        self.ram
            .write(g(sbals) + 256 * n as u64 + 16 * e as u64, &s.encode());
    }

    /// Primes output buffer `n` with one frame of `len` payload bytes (filled with
    /// `tag`) to `dest`.
    pub fn prime(&self, n: usize, dest: IpAddr, tag: u8, len: usize) {
        let mut frame = L3Header::unicast(dest, len as u16).encode().to_vec();
        frame.extend(std::iter::repeat_n(tag, len));
        self.prime_frame(0, n, &frame);
    }

    /// Primes buffer `n` of output queue `q` (0, or 1 the multicast queue) with
    /// `frame` (header included) in one element.
    pub fn prime_frame(&self, q: usize, n: usize, frame: &[u8]) {
        let (sbals, slsb) = if q == 0 {
            (OUT_SBALS, OUT_SLSB)
        } else {
            (MC_SBALS, MC_SLSB)
        };
        let data = g(TX_DATA) + SLOT * ((n + 8 * q) % 16) as u64;
        self.ram.write(data, frame);
        for e in 0..16 {
            self.set_element(sbals, n, e, &Sbale::default());
        }
        let s = Sbale {
            eflags: Eflags::LAST_ENTRY.bits(),
            length: frame.len() as u32,
            addr: data,
            ..Sbale::default()
        };
        self.set_element(sbals, n, 0, &s);
        self.set_slsb(slsb, n, 0x62);
    }

    /// The frame (header included) in input buffer `n`, if it is primed (0x82).
    pub fn received(&self, n: usize) -> Option<Vec<u8>> {
        if self.slsb(IN_SLSB, n) != 0x82 {
            return None;
        }
        let e = self.element(IN_SBALS, n, 0);
        Some(self.ram.read_vec(e.addr, e.length as usize))
    }

    /// Arms input buffer `n` (one 4 KiB element) with 0x41.
    pub fn arm_input(&self, n: usize) {
        let s = Sbale {
            length: SLOT as u32,
            addr: g(RX_DATA) + SLOT * (n % 16) as u64,
            ..Sbale::default()
        };
        self.set_element(IN_SBALS, n, 0, &s);
        self.set_element(IN_SBALS, n, 1, &Sbale::default());
        self.set_slsb(IN_SLSB, n, 0x41);
    }

    /// The payload tag of the frame in input buffer `n`.
    pub fn received_tag(&self, n: usize) -> u8 {
        let e = self.element(IN_SBALS, n, 0);
        assert!(e.length > 32);
        self.ram.read_vec(e.addr + 32, 1)[0]
    }

    pub fn qaob(&self, k: usize) -> u64 {
        g(QAOBS) + 256 * k as u64
    }

    pub fn qaob_bytes(&self, k: usize) -> Vec<u8> {
        self.ram.read_vec(self.qaob(k), 256)
    }

    /// The QAOB addresses the completion-queue buffer `n` announces (Linux's
    /// `qeth_qdio_cq_handler`: elements until one with address 0).
    pub fn completions(&self, n: usize) -> Vec<u64> {
        (0..16)
            .map(|e| self.element(CQ_SBALS, n, e).addr)
            .take_while(|a| *a != 0)
            .collect()
    }
}
