//! A partition as the images run it: one core, its memory window, a queue driver, and
//! the end-to-end checks (sequence numbers and checksums) of every frame it receives.
//! The self-test's direct-call fabric cases use it: the hypervisor calling its fabric
//! as a Rust function on each core, no partition program involved (the partition
//! program has its own, HVC-based node in `hyp/guest/src/node.rs`).

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use iqdio::driver::{DriverConfig, Indicators, QueueDriver, Region, SendError};
use iqdio::{
    CallContext, CounterSnapshot, Fabric, FabricConfig, InterruptDelivery, InterruptTarget,
    Platform, Port, Reason, Siga, SigaFunction, SigaStatus,
};
use iqdio_hyp::board::{self, MAX_CORES};

/// The board as the fabric's platform: an interrupt is a GICv3 SGI to the partition's
/// core, which each queue set names in its interrupt cookie (set in `Node::register`),
/// the clock is the generic timer.
pub struct BoardPlatform;

impl Platform for BoardPlatform {
    fn raise_interrupt(&self, target: InterruptTarget) -> InterruptDelivery {
        match usize::try_from(target.cookie) {
            Ok(core) if core < board::cores() => {
                board::send_sgi(core);
                InterruptDelivery::Delivered
            }
            _ => InterruptDelivery::Dropped,
        }
    }

    fn now_ns(&self) -> u64 {
        board::now_ns()
    }

    /// DAIF.I tells: the fabric refuses an entry made with IRQs on (its execution
    /// contract), so every call below goes through [`masked`].
    fn context(&self) -> CallContext {
        if board::interrupts_enabled() {
            CallContext::Interruptible
        } else {
            CallContext::Masked
        }
    }
}

/// The fabric type of the images: 16 queue sets, 256 addresses.
pub type BoardFabric = Fabric<BoardPlatform, 16, 256>;

/// Runs a fabric entry with IRQs masked on this core, as the fabric's execution
/// contract asks: no interrupt may enter the fabric on a core that is inside it. The
/// partitions of these images call the fabric from their own cores with IRQs on; a
/// hypervisor's SIGA trap handler would already run masked.
pub fn masked<R>(f: impl FnOnce() -> R) -> R {
    critical_section::with(|_| f())
}

/// A partition's SIGA port whose calls run with IRQs masked ([`masked`]).
pub struct MaskedPort<'f>(pub Port<'f, BoardPlatform, 16, 256>);

impl Siga for MaskedPort<'_> {
    fn siga(&self, subchannel: u16, function: SigaFunction, queue_mask: u32) -> SigaStatus {
        masked(|| self.0.siga(subchannel, function, queue_mask))
    }

    fn siga_writeq(&self, subchannel: u16, queue_mask: u32, qaob: u64) -> SigaStatus {
        masked(|| self.0.siga_writeq(subchannel, queue_mask, qaob))
    }
}

/// Partition `lpar`'s SIGA port on `fabric`, masked.
pub fn port(fabric: &BoardFabric, lpar: u8) -> MaskedPort<'_> {
    MaskedPort(fabric.port(lpar))
}

pub use iqdio_hvc::MFS;


/// The fabric configuration of the images: the MFS above, a 5 ms fallback delay (4
/// vCPUs on 2 host cores are descheduled for milliseconds at a time under TCG).
pub const CONFIG: FabricConfig = FabricConfig {
    mfs: MFS,
    interrupt_delay_ns: 5_000_000,
    ..FabricConfig::DEFAULT
};

/// IPv4 address of partition `core`.
pub fn v4(core: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, core as u8 + 1))
}

/// IPv6 address of partition `core`.
pub fn v6(core: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, core as u16 + 1))
}

/// Frame kinds.
pub const DATA: u8 = 0;
/// A ping: answer with a pong of the same sequence number.
pub const PING: u8 = 1;
/// A pong.
pub const PONG: u8 = 2;
/// Bytes of the end-to-end head: src, dst, kind, 0, seq u32, len u32, checksum u32.
pub const HEAD: usize = 16;

/// Frames accepted by the fabric (0xA1) and frames received intact, over all cores.
pub static SENT: AtomicU64 = AtomicU64::new(0);
/// Frames received intact and in sequence.
pub static RECEIVED: AtomicU64 = AtomicU64::new(0);
/// Frames received with a bad checksum, length, address or sequence number.
pub static CORRUPTED: AtomicU64 = AtomicU64::new(0);
/// Frames received intact a second time (a sequence number already seen).
pub static DUPLICATED: AtomicU64 = AtomicU64::new(0);

/// What one partition counted end to end.
#[derive(Clone, Copy, Default)]
pub struct Stats {
    /// Frames the fabric delivered for us.
    pub sent: u64,
    /// Their bytes.
    pub sent_bytes: u64,
    /// Sends refused because the target was full (sent again).
    pub refused_full: u64,
    /// Sends refused because the target was not registered (sent again).
    pub refused_unreachable: u64,
    /// Sends refused for any other reason (a failure).
    pub refused_other: u64,
    /// Frames received intact.
    pub received: u64,
    /// Their bytes.
    pub received_bytes: u64,
    /// Frames received damaged or out of sequence.
    pub corrupted: u64,
    /// Frames received a second time.
    pub duplicated: u64,
    /// Times the queue set was deregistered and established again.
    pub reregistrations: u64,
    /// Pongs received for our pings.
    pub pongs: u64,
    /// Pings received (each answered with a pong).
    pub pings: u64,
}

/// One partition.
pub struct Node {
    /// Its core, and LPAR id.
    pub core: usize,
    indicators: Indicators,
    /// Its queue driver (subchannel 0).
    pub queue: QueueDriver,
    tx_seq: [u32; MAX_CORES],
    rx_seq: [u32; MAX_CORES],
    /// Pings received and not answered yet: (peer, seq).
    pending_pongs: heapless::Deque<(usize, u32), 16>,
    /// Its end-to-end counts.
    pub stats: Stats,
    /// Fabric counters of queue sets it deregistered (they restart at 0 each time).
    retired: CounterSnapshot,
}

/// Scratch buffers for building and checking frames, one per core (off the stack).
static SCRATCH: [spin::Mutex<[u8; 65536]>; MAX_CORES] =
    [const { spin::Mutex::new([0; 65536]) }; MAX_CORES];

fn driver_config() -> DriverConfig {
    DriverConfig {
        rx_buffers: 16,
        tx_buffers: 8,
        ..DriverConfig::new(0, MFS)
    }
}

fn region(core: usize) -> Region {
    let (base, len) = board::partition_window(core);
    let host = NonNull::new(base).unwrap_or(NonNull::dangling());
    // SAFETY: the window is this core's own, disjoint from every other and from the
    // image, mapped normal memory, and used only through the fabric and this driver.
    unsafe { Region::new(host, base as u64, len) }
        .unwrap_or_else(|_| defmt::panic!("partition window of core {} is not page aligned", core))
}

impl Node {
    /// Makes partition `core` known to the fabric with its window, establishes its
    /// queue set on subchannel 0 and registers its IPv4 and IPv6 addresses.
    pub fn attach(fabric: &BoardFabric, core: usize) -> Result<Self, &'static str> {
        let mut region = region(core);
        masked(|| fabric.add_partition(core as u8, &[region.window()]))
            .map_err(|_| "add_partition refused")?;
        let indicators = Indicators::new(&mut region).map_err(|_| "indicators")?;
        let queue =
            QueueDriver::new(&mut region, &indicators, driver_config()).map_err(|_| "driver")?;
        let mut node = Self {
            core,
            indicators,
            queue,
            tx_seq: [0; MAX_CORES],
            rx_seq: [0; MAX_CORES],
            pending_pongs: heapless::Deque::new(),
            stats: Stats::default(),
            retired: CounterSnapshot::default(),
        };
        node.register(fabric)?;
        Ok(node)
    }

    fn register(&mut self, fabric: &BoardFabric) -> Result<(), &'static str> {
        let lpar = self.core as u8;
        let mut params = self.queue.params();
        // The core to interrupt: this partition's own.
        params.interrupt_cookie = self.core as u64;
        masked(|| fabric.establish(lpar, 0, &params)).map_err(|_| "establish refused")?;
        for ip in [v4(self.core), v6(self.core)] {
            masked(|| fabric.register_address(lpar, 0, ip))
                .map_err(|_| "register_address refused")?;
        }
        Ok(())
    }

    /// Deregisters the queue set, takes what had arrived, and establishes a fresh one
    /// with the same addresses: while it is away, senders see "unreachable".
    pub fn reregister(&mut self, fabric: &BoardFabric) -> Result<(), &'static str> {
        let lpar = self.core as u8;
        let last =
            masked(|| fabric.deregister_queue_set(lpar, 0)).map_err(|_| "deregister refused")?;
        add(&mut self.retired, &last);
        self.reestablish(fabric)
    }

    /// After the queue set was deregistered: takes what had arrived before, lays out a
    /// fresh queue set over the window (the fabric's cursors start at 0 again), and
    /// establishes it with the same addresses.
    pub fn reestablish(&mut self, fabric: &BoardFabric) -> Result<(), &'static str> {
        while self.poll(fabric) > 0 {}
        let mut region = region(self.core);
        self.indicators = Indicators::new(&mut region).map_err(|_| "indicators")?;
        self.queue = QueueDriver::new(&mut region, &self.indicators, driver_config())
            .map_err(|_| "driver")?;
        self.register(fabric)?;
        self.stats.reregistrations += 1;
        Ok(())
    }

    /// The fabric counters of this partition, over all its registrations.
    pub fn counters(&self, fabric: &BoardFabric) -> CounterSnapshot {
        let mut c = self.retired;
        if let Some(now) = masked(|| fabric.counters_of(self.core as u8, 0)) {
            add(&mut c, &now);
        }
        c
    }

    /// Sends a frame of `len` bytes (at least [`HEAD`]) of `kind` to `dst`, over IPv4
    /// or IPv6 by turns. A refused frame (target full, or unreachable while the target
    /// re-registers) is counted and sent again after taking our own input, so every
    /// frame counted as sent is delivered once. Gives up (false) on other refusals or
    /// after `deadline_ns`.
    pub fn send(
        &mut self,
        fabric: &BoardFabric,
        dst: usize,
        kind: u8,
        seq: u32,
        len: usize,
        deadline_ns: u64,
    ) -> bool {
        let len = len.clamp(HEAD, MFS.mtu());
        let port = port(fabric, self.core as u8);
        let dest = if seq.is_multiple_of(2) {
            v4(dst)
        } else {
            v6(dst)
        };
        let mut scratch = SCRATCH[self.core].lock();
        build(&mut scratch[..len], self.core, dst, kind, seq);
        loop {
            match self.queue.send(&port, dest, &scratch[..len]) {
                Ok(()) => {
                    self.stats.sent += 1;
                    self.stats.sent_bytes += len as u64;
                    SENT.fetch_add(1, Ordering::SeqCst);
                    return true;
                }
                Err(SendError::Refused(Reason::TargetFull)) => self.stats.refused_full += 1,
                Err(SendError::Refused(Reason::Unreachable)) => self.stats.refused_unreachable += 1,
                Err(e) => {
                    defmt::error!(
                        "partition {}: send to {} failed: {}",
                        self.core,
                        dst,
                        defmt::Debug2Format(&e)
                    );
                    self.stats.refused_other += 1;
                    return false;
                }
            }
            if board::now_ns() > deadline_ns {
                return false;
            }
            drop(scratch);
            self.poll(fabric);
            scratch = SCRATCH[self.core].lock();
            build(&mut scratch[..len], self.core, dst, kind, seq);
        }
    }

    /// Sends the next data frame to `dst`.
    pub fn send_data(
        &mut self,
        fabric: &BoardFabric,
        dst: usize,
        len: usize,
        deadline_ns: u64,
    ) -> bool {
        let seq = self.tx_seq[dst];
        let ok = self.send(fabric, dst, DATA, seq, len, deadline_ns);
        if ok {
            self.tx_seq[dst] += 1;
        }
        ok
    }

    /// Takes every frame waiting, checks each end to end, answers pings. Returns the
    /// frames taken.
    pub fn poll(&mut self, fabric: &BoardFabric) -> usize {
        let mut total = 0;
        // High -> low: reset the summary bytes before taking the work they announce.
        if self.indicators.take() {
            self.queue.take_initiative();
        }
        loop {
            let core = self.core;
            let mut scratch = SCRATCH[core].lock();
            let rx_seq = &mut self.rx_seq;
            let stats = &mut self.stats;
            let pongs = &mut self.pending_pongs;
            let got = self.queue.receive(|f| {
                let n = f.copy_to(&mut scratch[..]);
                match check(&scratch[..n], core) {
                    Some((src, kind, seq)) => {
                        let in_order = kind != DATA || seq == rx_seq[src];
                        if in_order {
                            if kind == DATA {
                                rx_seq[src] += 1;
                            } else if kind == PING {
                                stats.pings += 1;
                                let _ = pongs.push_back((src, seq));
                            } else {
                                stats.pongs += 1;
                            }
                            stats.received += 1;
                            stats.received_bytes += n as u64;
                            RECEIVED.fetch_add(1, Ordering::SeqCst);
                        } else if seq < rx_seq[src] {
                            // A sequence number seen before: delivered twice.
                            stats.duplicated += 1;
                            DUPLICATED.fetch_add(1, Ordering::SeqCst);
                        } else {
                            // One skipped: out of order (a loss shows as sent - delivered).
                            stats.corrupted += 1;
                            CORRUPTED.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                    None => {
                        stats.corrupted += 1;
                        CORRUPTED.fetch_add(1, Ordering::SeqCst);
                    }
                }
            });
            drop(scratch);
            match got {
                Some(n) => total += n,
                None => break,
            }
        }
        while let Some((peer, seq)) = self.pending_pongs.pop_front() {
            self.send(fabric, peer, PONG, seq, 64, board::now_ns() + 5_000_000_000);
        }
        total
    }

    /// The idle path: resets the indicator bytes high → low, and if nothing is
    /// waiting, sleeps in WFI until the partition interrupt (or `deadline_ns`).
    /// Returns whether input is waiting.
    pub fn wait_for_input(&mut self, deadline_ns: u64) -> bool {
        loop {
            board::take_interrupts();
            if self.indicators.take() {
                self.queue.take_initiative();
            }
            if self.queue.has_input() {
                return true;
            }
            let q = &self.queue;
            if !board::wait_until(deadline_ns, || {
                board::pending_interrupts() > 0 || q.has_input()
            }) {
                return self.queue.has_input();
            }
        }
    }

    /// Pongs received so far.
    pub fn pongs(&self) -> u64 {
        self.stats.pongs
    }
}

fn add(acc: &mut CounterSnapshot, c: &CounterSnapshot) {
    acc.frames_sent += c.frames_sent;
    acc.bytes_sent += c.bytes_sent;
    acc.sbals_sent += c.sbals_sent;
    acc.frames_received += c.frames_received;
    acc.bytes_received += c.bytes_received;
    acc.sbals_received += c.sbals_received;
    for (a, b) in acc.errors.iter_mut().zip(c.errors.iter()) {
        *a += b;
    }
    acc.refused_full += c.refused_full;
    acc.busy += c.busy;
    acc.interrupts_raised += c.interrupts_raised;
    acc.interrupts_suppressed += c.interrupts_suppressed;
}

/// FNV-1a over the head (without its checksum field) and the body.
fn checksum(frame: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for (i, &b) in frame.iter().enumerate() {
        if (12..16).contains(&i) {
            continue;
        }
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Writes a frame: head, then a body that depends on (src, dst, seq).
fn build(frame: &mut [u8], src: usize, dst: usize, kind: u8, seq: u32) {
    let len = frame.len();
    frame[0] = src as u8;
    frame[1] = dst as u8;
    frame[2] = kind;
    frame[3] = 0;
    frame[4..8].copy_from_slice(&seq.to_le_bytes());
    frame[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    let mut x = (seq as u64) << 16 ^ (src as u64) << 8 ^ dst as u64 ^ 0x9E37_79B9_7F4A_7C15;
    for chunk in frame[HEAD..].chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    let sum = checksum(frame);
    frame[12..16].copy_from_slice(&sum.to_le_bytes());
}

/// Checks a received frame addressed to `me`: (src, kind, seq) if it is intact.
fn check(frame: &[u8], me: usize) -> Option<(usize, u8, u32)> {
    if frame.len() < HEAD {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
    let (src, dst, kind) = (usize::from(frame[0]), usize::from(frame[1]), frame[2]);
    let ok = dst == me
        && src < board::cores()
        && kind <= PONG
        && word(8) as usize == frame.len()
        && word(12) == checksum(frame);
    ok.then_some((src, kind, word(4)))
}
