//! What the transport benchmarks (`benches/transport.rs`) and the instruction counter
//! (`examples/send_cost.rs`) share: partitions on the host, as the integration tests
//! build them (`tests/common`), with a choice of platform.
//!
//! Not a bench target itself: cargo only discovers `benches/*.rs` and
//! `benches/*/main.rs`.
#![allow(dead_code)] // each including target uses a part of it

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use iqdio::driver::{DriverConfig, Indicators, QueueDriver, Region};
use iqdio::{Fabric, FabricConfig, InterruptDelivery, InterruptTarget, Mfs, Platform, Window};

pub const PAGE: usize = 4096;
/// Guest-physical base of every partition's window (each has its own address space).
pub const GUEST_BASE: u64 = 0x4000_0000;

/// Frame sizes of the throughput comparison: 64 B, 256 B, 1500 B, 9000 B, 16 KiB,
/// 56 KiB (the largest packet of a 64 KiB maximum frame size).
pub const SIZES: [usize; 6] = [64, 256, 1500, 9000, 16 << 10, 56 << 10];

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; PAGE]);

/// A partition's RAM: page-aligned host memory, guest addresses from [`GUEST_BASE`].
pub struct GuestRam {
    pages: Vec<Page>,
}

impl GuestRam {
    pub fn new(bytes: usize) -> Self {
        Self {
            pages: vec![Page([0; PAGE]); bytes.div_ceil(PAGE)],
        }
    }

    fn len(&self) -> usize {
        self.pages.len() * PAGE
    }

    fn host(&mut self) -> std::ptr::NonNull<u8> {
        // From the whole slice, so the pointer may reach every page (one from
        // `&mut self.pages[0]` would reach the first page only).
        std::ptr::NonNull::from(self.pages.as_mut_slice()).cast()
    }

    fn region(&mut self) -> Region {
        let len = self.len();
        // SAFETY: the pages live as long as the Partition that owns this GuestRam; the
        // fabric touches a partition's memory only inside a SIGA that reaches it, and
        // no bench issues one once the partition is dropped. No Rust reference to the
        // pages is formed after this point (drivers and fabric use raw accesses).
        unsafe { Region::new(self.host(), GUEST_BASE, len) }.expect("page-aligned RAM")
    }
}

/// The benches' platform, as the tests': an interrupt wakes the partition's thread
/// (a condvar per LPAR); the clock is real time, read as a hypervisor reads it
/// ([`Clock`]).
#[derive(Clone)]
pub struct WakePlatform(Arc<WakeInner>);

pub struct WakeInner {
    clock: Clock,
    wake: Vec<(Mutex<u64>, Condvar)>,
}

impl Default for WakePlatform {
    fn default() -> Self {
        Self(Arc::new(WakeInner {
            clock: Clock::new(),
            wake: (0..256).map(|_| (Mutex::new(0), Condvar::new())).collect(),
        }))
    }
}

/// Real time in nanoseconds, read as a hypervisor reads it: a counter register (the
/// TSC on x86-64, as `CNTVCT_EL0` on aarch64), scaled by a rate measured once against
/// `Instant`. The fabric reads its platform's clock on every delivery (the interrupt
/// decision); `Instant::now` costs 24 ns on this VM (`clock_gettime`), the TSC 8 ns,
/// and the first is the Linux host's price, not an embedding's. Elsewhere, `Instant`.
#[derive(Clone, Copy)]
pub struct Clock {
    #[cfg(target_arch = "x86_64")]
    start: u64,
    /// Nanoseconds a tick, as a 32.32 fixed-point number.
    #[cfg(target_arch = "x86_64")]
    ns_per_tick: u64,
    #[cfg(not(target_arch = "x86_64"))]
    start: Instant,
}

impl Clock {
    /// A clock that reads 0 now (after measuring the counter's rate for 20 ms).
    #[cfg(target_arch = "x86_64")]
    pub fn new() -> Self {
        // SAFETY: RDTSC exists on every x86-64 CPU and reads a register only.
        let tsc = || unsafe { core::arch::x86_64::_rdtsc() };
        let (t0, c0) = (Instant::now(), tsc());
        std::thread::sleep(Duration::from_millis(20));
        let (ns, ticks) = (t0.elapsed().as_nanos(), u128::from(tsc() - c0).max(1));
        Self {
            start: tsc(),
            ns_per_tick: ((ns << 32) / ticks) as u64,
        }
    }

    /// Nanoseconds since [`new`](Self::new).
    #[cfg(target_arch = "x86_64")]
    #[inline]
    pub fn now_ns(&self) -> u64 {
        // SAFETY: as in `new`.
        let ticks = unsafe { core::arch::x86_64::_rdtsc() }.wrapping_sub(self.start);
        ((u128::from(ticks) * u128::from(self.ns_per_tick)) >> 32) as u64
    }

    /// A clock that reads 0 now.
    #[cfg(not(target_arch = "x86_64"))]
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
        }
    }

    /// Nanoseconds since [`new`](Self::new).
    #[cfg(not(target_arch = "x86_64"))]
    pub fn now_ns(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
}

impl WakePlatform {
    /// Interrupts raised for `lpar` so far.
    pub fn raised(&self, lpar: u8) -> u64 {
        *self.0.wake[usize::from(lpar)].0.lock().unwrap()
    }

    /// Sleeps until the interrupt count of `lpar` exceeds `seen`, or `timeout`;
    /// returns the count.
    pub fn wait(&self, lpar: u8, seen: u64, timeout: Duration) -> u64 {
        let (m, c) = &self.0.wake[usize::from(lpar)];
        let g = m.lock().unwrap();
        let (g, _) = c.wait_timeout_while(g, timeout, |n| *n <= seen).unwrap();
        *g
    }
}

impl Platform for WakePlatform {
    fn raise_interrupt(&self, target: InterruptTarget) -> InterruptDelivery {
        let (m, c) = &self.0.wake[usize::from(target.lpar)];
        *m.lock().unwrap() += 1;
        c.notify_all();
        InterruptDelivery::Delivered
    }

    fn now_ns(&self) -> u64 {
        self.0.clock.now_ns()
    }
}

/// The instruction counter's platform: counts interrupts, and a clock that costs
/// what a hypervisor's does (a counter read), so the count is iqdio's own.
#[derive(Default)]
pub struct QuietPlatform {
    pub interrupts: AtomicU64,
    clock: AtomicU64,
}

impl Platform for QuietPlatform {
    fn raise_interrupt(&self, _target: InterruptTarget) -> InterruptDelivery {
        self.interrupts.fetch_add(1, Ordering::Relaxed);
        InterruptDelivery::Delivered
    }

    fn now_ns(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }
}

/// The fabric the benches use (as the tests': 64 queue sets, 4096 addresses).
pub type BenchFabric<P> = Fabric<P, 64, 4096>;

/// A fabric on the heap, built on a thread with a big stack (`Fabric::new` returns a
/// large value).
pub fn fabric<P: Platform + Send + 'static>(platform: P) -> Arc<BenchFabric<P>> {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(move || {
            // The lookup benchmark fills the whole target table from one partition:
            // its quota is the table (the default quota is a sixteenth of it).
            let config = FabricConfig {
                addresses_per_partition: 4096,
                ..FabricConfig::DEFAULT
            };
            Arc::new(Fabric::new(platform, config))
        })
        .unwrap()
        .join()
        .unwrap()
}

/// The IPv4 address of `lpar`'s subchannel `sch`: 10.0.lpar.(sch + 1).
pub fn v4(lpar: u8, sch: u16) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, lpar, sch as u8 + 1))
}

/// One partition: its RAM, its indicator bytes and one queue driver per subchannel.
pub struct Partition {
    pub lpar: u8,
    pub indicators: Indicators,
    pub queues: Vec<QueueDriver>,
    _ram: GuestRam,
}

impl Partition {
    /// Creates the partition's memory and drivers (16 input, 8 output buffers, 64 KiB
    /// frames) and registers the partition, its queue sets and one IPv4 address per
    /// queue set ([`v4`]).
    pub fn new<P: Platform>(fabric: &BenchFabric<P>, lpar: u8, subchannels: u16) -> Self {
        Self::with_config(fabric, lpar, subchannels, DriverConfig::new(0, Mfs::K64))
    }

    /// As [`new`](Self::new), each queue set's driver configured as `cfg` (its
    /// subchannel number set per queue set).
    pub fn with_config<P: Platform>(
        fabric: &BenchFabric<P>,
        lpar: u8,
        subchannels: u16,
        cfg: DriverConfig,
    ) -> Self {
        let mut ram = GuestRam::new(PAGE + cfg.footprint() * usize::from(subchannels));
        let mut region = ram.region();
        let window: Window = region.window();
        let indicators = Indicators::new(&mut region).unwrap();
        let queues: Vec<_> = (0..subchannels)
            .map(|sch| {
                let cfg = DriverConfig {
                    subchannel: sch,
                    ..cfg
                };
                QueueDriver::new(&mut region, &indicators, cfg).unwrap()
            })
            .collect();
        fabric.add_partition(lpar, &[window]).unwrap();
        for q in &queues {
            fabric.establish(lpar, q.subchannel(), &q.params()).unwrap();
            fabric
                .register_address(lpar, q.subchannel(), v4(lpar, q.subchannel()))
                .unwrap();
        }
        Self {
            lpar,
            indicators,
            queues,
            _ram: ram,
        }
    }

    /// The indicator bytes high → low, unless the queue polls: a polling receiver
    /// finds its work in the SLSB and leaves them set (`QueueDriver::take_initiative`).
    pub fn initiative(&mut self) {
        if !self.queues[0].is_polling() {
            self.reset_indicators();
        }
    }

    /// Resets the partition's and queue 0's indicator bytes, high → low.
    fn reset_indicators(&mut self) {
        self.indicators.take();
        self.queues[0].take_initiative();
    }

    /// Stops queue 0 polling the way a poller that left its indicator bytes set must:
    /// the bytes high → low, then `QueueDriver::stop_polling` (whose result it
    /// returns: work waiting).
    pub fn stop_polling(&mut self) -> bool {
        self.reset_indicators();
        self.queues[0].stop_polling()
    }

    /// The receiver's side of one cycle: the indicators ([`initiative`](Self::initiative)),
    /// take the next buffer, copy its frames out into `out` (refilling the buffer).
    /// Returns the bytes copied.
    pub fn take(&mut self, out: &mut [u8]) -> usize {
        self.initiative();
        let q = &mut self.queues[0];
        let mut got = 0;
        q.receive(|f| got += f.copy_to(out));
        got
    }

    /// Takes the next received buffer reading its frames in place (zero-copy): the
    /// packet's first and last byte of each piece, as a consumer that looks at them.
    pub fn take_in_place(&mut self) -> usize {
        self.initiative();
        let q = &mut self.queues[0];
        let mut got = 0;
        q.receive(|f| {
            for p in f.pieces() {
                black_box((p.first(), p.last()));
                got += p.len();
            }
        });
        got
    }
}

/// The 8-byte sequence number a zero-copy sender writes into its frame in place (the
/// rest of the frame stays as the buffer held it: a program that builds its frames
/// where the elements point writes them once, there).
pub fn stamp(buf: &mut [u8], seq: u64) {
    let n = buf.len().min(8);
    buf[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

/// A sender and a receiver on one fabric; the receiver polls (no interrupts).
pub struct Pair {
    pub tx: Partition,
    pub rx: Partition,
    pub dest: IpAddr,
    pub frame: Buf,
    pub out: Buf,
}

impl Pair {
    /// Partitions `lpar` (sender) and `lpar + 1` (receiver, polling), frames of `size`.
    pub fn new<P: Platform>(fabric: &BenchFabric<P>, lpar: u8, size: usize) -> Self {
        Self::with_config(fabric, lpar, size, DriverConfig::new(0, Mfs::K64))
    }

    /// As [`new`](Self::new), both partitions' drivers configured as `cfg`.
    pub fn with_config<P: Platform>(
        fabric: &BenchFabric<P>,
        lpar: u8,
        size: usize,
        cfg: DriverConfig,
    ) -> Self {
        let tx = Partition::with_config(fabric, lpar, 1, cfg);
        let mut rx = Partition::with_config(fabric, lpar + 1, 1, cfg);
        rx.queues[0].start_polling();
        Self {
            tx,
            rx,
            dest: v4(lpar + 1, 0),
            frame: frame(size),
            out: Buf::zeroed(size),
        }
    }

    /// The whole cycle for one frame: prime, SIGA (the fabric's copy and signal),
    /// poll, take (copy out), refill.
    #[inline]
    pub fn cycle<P: Platform>(&mut self, fabric: &BenchFabric<P>) -> usize {
        let port = fabric.port(self.tx.lpar);
        self.tx.queues[0]
            .send(&port, self.dest, &self.frame)
            .expect("send to a polling receiver");
        self.rx.take(&mut self.out)
    }

    /// The zero-copy cycle for one frame: the sender writes its frame in place (a
    /// sequence stamp, see [`stamp`]), SIGA (the fabric's copy, the only one), poll,
    /// take reading in place, refill.
    #[inline]
    pub fn cycle_in_place<P: Platform>(&mut self, fabric: &BenchFabric<P>, seq: u64) -> usize {
        let port = fabric.port(self.tx.lpar);
        let len = self.frame.len();
        self.tx.queues[0]
            .send_with(&port, self.dest, len, |b| stamp(b, seq))
            .map_err(|(_, e)| e)
            .expect("send to a polling receiver");
        self.rx.take_in_place()
    }
}

/// Page-aligned bytes.
///
/// Every buffer the benchmarks copy from or to starts on a page, as iqdio's own data
/// buffers do: where two buffers lie relative to each other changes what a copy costs
/// (on the AMD EPYC host the results were first taken on, glibc's `rep movsb` path for
/// copies over 4 KiB drops to ~1.3 GB/s when the destination is 1 to 63 bytes past
/// the source modulo 4 KiB, which two `Vec`s allocated one after the other often
/// are), and the comparison must not depend on where the allocator put them.
pub struct Buf {
    pages: Vec<Page>,
    len: usize,
}

impl Buf {
    /// `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        Self {
            pages: vec![Page([0; PAGE]); len.div_ceil(PAGE).max(1)],
            len,
        }
    }
}

impl std::ops::Deref for Buf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `Page` is `repr(C)` around a byte array, so the pages are
        // `pages.len() * PAGE >= len` contiguous initialised bytes, borrowed with `self`.
        unsafe { std::slice::from_raw_parts(self.pages.as_ptr().cast(), self.len) }
    }
}

impl std::ops::DerefMut for Buf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, borrowed mutably with `self`.
        unsafe { std::slice::from_raw_parts_mut(self.pages.as_mut_ptr().cast(), self.len) }
    }
}

/// A frame of `size` bytes (any pattern: iqdio never looks inside), page-aligned.
pub fn frame(size: usize) -> Buf {
    let mut b = Buf::zeroed(size);
    for (i, x) in b.iter_mut().enumerate() {
        *x = (i * 31 + 7) as u8;
    }
    b
}

/// Waits politely: spins a little, then yields, so that two threads busy-waiting on
/// each other still progress when the machine has fewer free cores than threads.
pub fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

/// The target-lookup setup: a polling pair (LPARs 1 → 2, 64 B frames) whose receiver
/// owns 8 destinations, and a third partition with four queue sets owning the rest of
/// the fabric's `total` registered addresses (IPv4 and IPv6 alternately). Returns the
/// pair, the filler partition (keep it alive) and the 8 destinations.
pub fn lookup_setup<P: Platform>(
    fab: &BenchFabric<P>,
    total: usize,
) -> (Pair, Partition, Vec<IpAddr>) {
    let pair = Pair::new(fab, 1, 64);
    let filler = Partition::new(fab, 3, 4);
    let mut dests = vec![pair.dest];
    for i in 1..8u8 {
        let ip = IpAddr::V4(Ipv4Addr::new(10, 2, i, 1));
        fab.register_address(pair.rx.lpar, 0, ip).unwrap();
        dests.push(ip);
    }
    let mut k = 0u32;
    while fab.address_count() < total {
        let sch = (k % 4) as u16;
        let ip = if k.is_multiple_of(2) {
            IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + k))
        } else {
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                3,
                0,
                0,
                0,
                0,
                (k >> 16) as u16,
                k as u16,
            ))
        };
        fab.register_address(filler.lpar, sch, ip).unwrap();
        k += 1;
    }
    assert_eq!(
        fab.address_count(),
        total,
        "the setup registers exactly `total`"
    );
    (pair, filler, dests)
}
