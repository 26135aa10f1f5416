//! Test harness: threads play partitions. Each partition has its own RAM (with guard
//! pages around its window that nobody may touch), its indicator bytes and one queue
//! driver per subchannel.
#![allow(dead_code)]

pub mod raw;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use iqdio::driver::{DriverConfig, Indicators, QueueDriver, Region};
use iqdio::{Fabric, FabricConfig, InterruptDelivery, InterruptTarget, Mfs, Platform, Window};

pub const PAGE: usize = 4096;
/// Guest-physical base of every partition's window: each partition has its own
/// guest address space, as real LPARs do.
pub const GUEST_BASE: u64 = 0x4000_0000;
const GUARD: u8 = 0xA5;

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
pub struct Page(pub [u8; PAGE]);

/// A partition's RAM: `[guard page][window][guard page]`.
pub struct GuestRam {
    /// Owns the pages; never touched after `new` (all access goes through `base`, so
    /// one raw pointer with write permission covers the whole allocation).
    _pages: Vec<Page>,
    base: NonNull<Page>,
    window_pages: usize,
}

// SAFETY: the RAM is plain memory owned by this value; the pointer is into `_pages`.
unsafe impl Send for GuestRam {}
// SAFETY: shared use only reads through raw pointers (as a partition's own memory,
// which the fabric also reads and writes through raw pointers and atomics).
unsafe impl Sync for GuestRam {}

impl GuestRam {
    pub fn new(bytes: usize) -> Self {
        let window_pages = bytes.div_ceil(PAGE);
        let mut pages = vec![Page([0; PAGE]); window_pages + 2];
        pages[0].0.fill(GUARD);
        pages[window_pages + 1].0.fill(GUARD);
        let base = NonNull::new(pages.as_mut_ptr()).unwrap();
        Self {
            _pages: pages,
            base,
            window_pages,
        }
    }

    pub fn host(&self) -> NonNull<u8> {
        // SAFETY: page 1 of window_pages + 2 pages.
        unsafe { self.base.add(1) }.cast()
    }

    pub fn len(&self) -> usize {
        self.window_pages * PAGE
    }

    pub fn window(&self) -> Window {
        // SAFETY: the pages live as long as the GuestRam, which every test keeps
        // until the fabric is dropped or the partition removed.
        unsafe { Window::new(GUEST_BASE, self.host(), self.len()) }
    }

    pub fn region(&self) -> Region {
        // SAFETY: as for `window`.
        unsafe { Region::new(self.host(), GUEST_BASE, self.len()) }.unwrap()
    }

    fn ptr(&self, guest: u64, len: usize) -> *mut u8 {
        let off = (guest - GUEST_BASE) as usize;
        assert!(off + len <= self.len(), "test wrote outside its own window");
        // SAFETY: in range (asserted).
        unsafe { self.host().as_ptr().add(off) }
    }

    /// The partition writing its own memory.
    pub fn write(&self, guest: u64, bytes: &[u8]) {
        let p = self.ptr(guest, bytes.len());
        // SAFETY: in the window; the partition owns this memory.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
    }

    /// The partition reading its own memory.
    pub fn read(&self, guest: u64, out: &mut [u8]) {
        let p = self.ptr(guest, out.len());
        // SAFETY: in the window.
        unsafe { std::ptr::copy_nonoverlapping(p, out.as_mut_ptr(), out.len()) };
    }

    pub fn read_vec(&self, guest: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.read(guest, &mut v);
        v
    }

    /// Whether the guard pages around the window are untouched.
    pub fn guards_intact(&self) -> bool {
        let last = self.window_pages + 1;
        // SAFETY: reading our own pages; nothing writes the guards legitimately.
        let (a, b) = unsafe {
            (
                std::ptr::read_volatile(self.base.as_ptr()),
                std::ptr::read_volatile(self.base.as_ptr().add(last)),
            )
        };
        a.0.iter().chain(b.0.iter()).all(|&x| x == GUARD)
    }
}

/// The host platform: an interrupt wakes the partition's thread; the clock is real
/// time or, for deterministic tests, set by hand.
#[derive(Clone)]
pub struct TestPlatform(Arc<PlatformInner>);

pub struct PlatformInner {
    start: Instant,
    manual: AtomicBool,
    clock: AtomicU64,
    raised: Vec<AtomicU64>,
    wake: Vec<(Mutex<u64>, Condvar)>,
}

impl TestPlatform {
    pub fn new() -> Self {
        Self(Arc::new(PlatformInner {
            start: Instant::now(),
            manual: AtomicBool::new(false),
            clock: AtomicU64::new(0),
            raised: (0..256).map(|_| AtomicU64::new(0)).collect(),
            wake: (0..256).map(|_| (Mutex::new(0), Condvar::new())).collect(),
        }))
    }

    /// A platform whose clock only moves by `set_clock`.
    pub fn manual() -> Self {
        let p = Self::new();
        p.0.manual.store(true, Ordering::Relaxed);
        p
    }

    pub fn set_clock(&self, ns: u64) {
        self.0.clock.store(ns, Ordering::Relaxed);
    }

    /// Interrupts raised for `lpar` so far.
    pub fn raised(&self, lpar: u8) -> u64 {
        self.0.raised[usize::from(lpar)].load(Ordering::SeqCst)
    }

    /// Sleeps until an interrupt for `lpar` beyond `seen` arrives, or `timeout`.
    /// Returns the new interrupt count.
    pub fn wait(&self, lpar: u8, seen: u64, timeout: Duration) -> u64 {
        let (m, c) = &self.0.wake[usize::from(lpar)];
        let g = m.lock().unwrap();
        let (g, _) = c.wait_timeout_while(g, timeout, |n| *n <= seen).unwrap();
        *g
    }
}

impl Platform for TestPlatform {
    fn raise_interrupt(&self, target: InterruptTarget) -> InterruptDelivery {
        let i = usize::from(target.lpar);
        self.0.raised[i].fetch_add(1, Ordering::SeqCst);
        let (m, c) = &self.0.wake[i];
        *m.lock().unwrap() += 1;
        c.notify_all();
        InterruptDelivery::Delivered
    }

    fn now_ns(&self) -> u64 {
        if self.0.manual.load(Ordering::Relaxed) {
            self.0.clock.load(Ordering::Relaxed)
        } else {
            self.0.start.elapsed().as_nanos() as u64
        }
    }
}

pub type TestFabric = Fabric<TestPlatform, 64, 4096>;

/// A fabric on the heap (it is large for a stack).
pub fn fabric(platform: TestPlatform, config: FabricConfig) -> Arc<TestFabric> {
    // Build it on a thread with a big stack: `Fabric::new` returns by value.
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || Arc::new(Fabric::new(platform, config)))
        .unwrap()
        .join()
        .unwrap()
}

pub fn v4(lpar: u8, sch: u16) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, lpar, sch as u8 + 1))
}

pub fn v6(lpar: u8, sch: u16) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(
        0xfd00,
        0,
        0,
        0,
        0,
        0,
        u16::from(lpar),
        sch + 1,
    ))
}

/// One partition: its RAM, indicators and queue drivers (subchannels 0, 1, ...).
pub struct Partition {
    pub lpar: u8,
    pub ram: GuestRam,
    pub indicators: Indicators,
    pub queues: Vec<QueueDriver>,
}

impl Partition {
    /// Creates the partition's memory and drivers and registers it with the fabric:
    /// partition, queue sets, and one IPv4 and one IPv6 address per queue set.
    pub fn new(fabric: &TestFabric, lpar: u8, subchannels: u16, cfg: DriverConfig) -> Self {
        let per_queue = cfg.footprint();
        let ram = GuestRam::new(PAGE + per_queue * usize::from(subchannels));
        let mut region = ram.region();
        let indicators = Indicators::new(&mut region).unwrap();
        let queues: Vec<_> = (0..subchannels)
            .map(|sch| {
                QueueDriver::new(
                    &mut region,
                    &indicators,
                    DriverConfig {
                        subchannel: sch,
                        ..cfg
                    },
                )
                .unwrap()
            })
            .collect();
        fabric.add_partition(lpar, &[ram.window()]).unwrap();
        for q in &queues {
            fabric.establish(lpar, q.subchannel(), &q.params()).unwrap();
            fabric
                .register_address(lpar, q.subchannel(), v4(lpar, q.subchannel()))
                .unwrap();
            fabric
                .register_address(lpar, q.subchannel(), v6(lpar, q.subchannel()))
                .unwrap();
        }
        Self {
            lpar,
            ram,
            indicators,
            queues,
        }
    }
}

pub fn config(mfs: Mfs) -> DriverConfig {
    DriverConfig::new(0, mfs)
}

/// A deterministic payload: (src, dst, seq) and a length decide every byte; the first
/// 16 bytes carry src lpar/sch, seq, len so the receiver can check what it got.
pub fn payload(src: (u8, u16), seq: u32, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    let head = [
        &[src.0][..],
        &src.1.to_le_bytes()[..],
        &seq.to_le_bytes()[..],
        &(len as u32).to_le_bytes()[..],
    ]
    .concat();
    let mut x = (u32::from(src.0) * 7919)
        .wrapping_add(u32::from(src.1).wrapping_mul(104_729))
        .wrapping_add(seq.wrapping_mul(2_654_435_761));
    for i in 0..len {
        if i < head.len() {
            v.push(head[i]);
        } else {
            x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            v.push((x >> 24) as u8);
        }
    }
    v
}

/// Decodes (src, seq) from a payload made by [`payload`] and checks every byte.
pub fn check_payload(p: &[u8]) -> Option<((u8, u16), u32)> {
    if p.len() < 11 {
        return None; // too short to carry the head: the caller checks these otherwise
    }
    let src = (p[0], u16::from_le_bytes([p[1], p[2]]));
    let seq = u32::from_le_bytes([p[3], p[4], p[5], p[6]]);
    (payload(src, seq, p.len()) == p).then_some((src, seq))
}

/// Runs `f` and fails the test if it takes longer than `limit` (a deadlock).
pub fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .expect("timed out: deadlock or lost wake-up")
}

/// A tiny deterministic PRNG (xorshift64*): the same seed gives the same run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Takes every frame waiting on `q` into `out` (each copied out whole); returns how
/// many.
pub fn drain(q: &mut QueueDriver, out: &mut Vec<Vec<u8>>) -> usize {
    let mut n = 0;
    while let Some(k) = q.receive(|f| {
        let mut buf = vec![0u8; f.len()];
        assert_eq!(f.copy_to(&mut buf), f.len());
        out.push(buf);
    }) {
        n += k;
    }
    n
}
