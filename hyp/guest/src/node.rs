//! The partition as its program sees it: its window, a queue driver, and the end-to-end
//! checks (sequence numbers and checksums) of every frame it receives. Establishing,
//! registering and SIGA are hypervisor calls; the LPAR id it uses in frames is the one
//! the hypervisor passed at entry, while the fabric takes the issuer from the trap.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::ptr::NonNull;

use iqdio::MAX_OUTPUT_QUEUES;
use iqdio::Reason;
use iqdio::driver::{DriverConfig, DriverError, Indicators, QueueDriver, Region, SendError};
use iqdio::qdio::{QUEUE_BUFFERS, SlsbState};
use iqdio_hvc::{
    BLOCK_MAX, EstablishBlock, HVC_BROADCAST, HVC_DEREGISTER_QUEUE_SET, HVC_ESTABLISH,
    HVC_JOIN_GROUP, HVC_LEAVE_GROUP, HVC_REGISTER_ADDRESS, RC_OK, SL_LEN, encode_sl,
    ip_to_registers,
};

use crate::rt::{self, HvcSiga, hvc};

/// Most partitions (the hypervisor's core count).
pub const MAX_PARTITIONS: usize = 8;

pub use iqdio_hvc::{MFS, parse_option as parse};

/// Build-time switch `IQDIO_CQ=1` (`cargo xtask stress --completion-queue`): the queue
/// set has a completion queue and sends with SIGA WRITEQ, its receive ring is small
/// and it takes its input less often than it sends (receivers slower than senders), so
/// buffers go PENDING (0xA3) and complete through their QAOBs instead of being
/// refused.
pub const CQ: bool = parse(option_env!("IQDIO_CQ"), 0) != 0;

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
    /// Completion queue: buffers that went PENDING.
    pub pending: u64,
    /// Completion queue: pending buffers completed delivered (`aorc` 0).
    pub completed: u64,
    /// Completion queue: pending buffers completed with an error (their frames sent
    /// again, counted in `refused_unreachable`).
    pub completed_with_error: u64,
    /// Completion queue: sends that waited for completions first (pending capacity
    /// or data slot taken; not a refusal, nothing sent twice).
    pub waited: u64,
    /// Flushes of a frame a busy SIGA had left primed (the frame is not primed twice).
    pub busy: u64,
}

/// A frame in flight: (dst, kind, seq, len), enough to build it again.
type FrameId = (usize, u8, u32, usize);

/// One partition.
pub struct Node {
    /// Its LPAR id (as the hypervisor passed it; used in frames and addresses only).
    pub core: usize,
    /// Partitions running.
    pub partitions: usize,
    indicators: Indicators,
    /// How its queue driver is laid out (again on re-registration).
    config: DriverConfig,
    /// Its queue driver (subchannel 0).
    pub queue: QueueDriver,
    tx_seq: [u32; MAX_PARTITIONS],
    rx_seq: [u32; MAX_PARTITIONS],
    /// Data frames received in sequence from each partition.
    pub rx_data: [u64; MAX_PARTITIONS],
    /// Pings received and not answered yet: (peer, seq).
    pending_pongs: heapless::Deque<(usize, u32), 16>,
    /// Completion queue: the frame of each output buffer that went PENDING.
    in_flight: [Option<FrameId>; QUEUE_BUFFERS],
    /// Completion queue: frames whose buffer completed with an error, to send again.
    resend: heapless::Deque<FrameId, QUEUE_BUFFERS>,
    /// Its end-to-end counts.
    pub stats: Stats,
}

/// Scratch buffer for building and checking frames (off the stack).
static SCRATCH: spin::Mutex<[u8; 65536]> = spin::Mutex::new([0; 65536]);

/// The establish block and its storage lists, in the partition's own memory (the
/// hypervisor reads them at these addresses through the fabric's window check).
struct EstablishArea {
    block: [u8; BLOCK_MAX],
    input_sl: [u8; SL_LEN],
    output_sls: [[u8; SL_LEN]; MAX_OUTPUT_QUEUES],
    completion_sl: [u8; SL_LEN],
}

static ESTABLISH: spin::Mutex<EstablishArea> = spin::Mutex::new(EstablishArea {
    block: [0; BLOCK_MAX],
    input_sl: [0; SL_LEN],
    output_sls: [[0; SL_LEN]; MAX_OUTPUT_QUEUES],
    completion_sl: [0; SL_LEN],
});

/// The queue set every scenario's partitions use: 16 input buffers, two output queues
/// (a unicast one and the multicast queue, as the hypervisor's fabric offers and
/// Linux's qeth uses) of 8 buffers each; with [`CQ`], 4 input buffers, 16 output buffers
/// and a completion queue.
pub fn driver_config() -> DriverConfig {
    DriverConfig {
        rx_buffers: if CQ { 4 } else { 16 },
        tx_buffers: if CQ { 16 } else { 8 },
        output_queues: 2,
        completion_queue: CQ,
        ..DriverConfig::new(0, MFS)
    }
}

/// Bytes of the window.
const WINDOW_LEN: u64 = 48 << 20;

/// The queue area: the window after the program (identity-mapped, so its addresses
/// are both the pointers and the guest addresses the fabric checks).
pub fn region() -> Region {
    let len = (rt::WINDOW_BASE + WINDOW_LEN - rt::QUEUE_AREA) as usize;
    let host = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(
        rt::QUEUE_AREA as usize,
    ))
    .unwrap_or(NonNull::dangling());
    // SAFETY: the queue area is this partition's own memory, mapped by its stage-1 table
    // and the hypervisor's stage 2, outside the program image, and used only through
    // the driver and the fabric.
    match unsafe { Region::new(host, rt::QUEUE_AREA, len) } {
        Ok(r) => r,
        Err(_) => panic!("queue area not page aligned"),
    }
}

/// Establishes the driver's queue set through the hypervisor: the return code.
pub fn establish(queue: &QueueDriver) -> u64 {
    establish_params(queue.subchannel(), &queue.params())
}

/// Establishes a queue set with these parameters on `sch` through the hypervisor (an
/// establish block naming one storage list per output queue): the return code.
pub fn establish_params(sch: u16, p: &iqdio::QueueSetParams) -> u64 {
    let mut area = ESTABLISH.lock();
    let area = &mut *area;
    area.input_sl = encode_sl(&p.input_sbals);
    let outputs = core::iter::once(&p.output_sbals).chain(p.more_outputs.iter().map(|o| &o.sbals));
    let mut sls = [0u64; MAX_OUTPUT_QUEUES];
    for ((sl, bytes), addr) in outputs.zip(area.output_sls.iter_mut()).zip(sls.iter_mut()) {
        *bytes = encode_sl(sl);
        *addr = bytes.as_ptr() as u64;
    }
    let block = EstablishBlock::for_params(
        p,
        area.input_sl.as_ptr() as u64,
        &sls[..p.output_queues().min(MAX_OUTPUT_QUEUES)],
    );
    let block = match &p.completion_queue {
        Some(cq) => {
            area.completion_sl = encode_sl(&cq.sbals);
            block.with_completion_queue(area.completion_sl.as_ptr() as u64, cq.slsb)
        }
        None => block,
    };
    area.block = block.encode();
    hvc(
        HVC_ESTABLISH,
        u64::from(sch),
        area.block.as_ptr() as u64,
        0,
        0,
        0,
    )
    .0
}

/// Makes subchannel `sch` a member of `group`: the return code.
pub fn join_group(sch: u16, group: IpAddr) -> u64 {
    let (family, hi, lo) = ip_to_registers(group);
    hvc(HVC_JOIN_GROUP, u64::from(sch), family, hi, lo, 0).0
}

/// Ends subchannel `sch`'s membership of `group`: the return code.
pub fn leave_group(sch: u16, group: IpAddr) -> u64 {
    let (family, hi, lo) = ip_to_registers(group);
    hvc(HVC_LEAVE_GROUP, u64::from(sch), family, hi, lo, 0).0
}

/// Switches subchannel `sch`'s broadcast reception (`raw` is the register: 1 on, 0
/// off; anything else is refused): the return code.
pub fn set_broadcast(sch: u16, raw: u64) -> u64 {
    hvc(HVC_BROADCAST, u64::from(sch), raw, 0, 0, 0).0
}

/// Registers `ip` for subchannel `sch`: the return code.
pub fn register_address(sch: u16, ip: IpAddr) -> u64 {
    let (family, hi, lo) = ip_to_registers(ip);
    hvc(HVC_REGISTER_ADDRESS, u64::from(sch), family, hi, lo, 0).0
}

impl Node {
    /// Lays out its queues, establishes them on subchannel 0 and registers its IPv4 and
    /// IPv6 addresses, all through the hypervisor.
    pub fn attach(core: usize, partitions: usize) -> Result<Self, &'static str> {
        Self::attach_with(core, partitions, driver_config())
    }

    /// [`attach`](Self::attach) with a queue set laid out by `config`.
    pub fn attach_with(
        core: usize,
        partitions: usize,
        config: DriverConfig,
    ) -> Result<Self, &'static str> {
        let mut region = region();
        let indicators = Indicators::new(&mut region).map_err(|_| "indicators")?;
        let queue = QueueDriver::new(&mut region, &indicators, config).map_err(|_| "driver")?;
        let mut node = Self {
            core,
            partitions,
            indicators,
            config,
            queue,
            tx_seq: [0; MAX_PARTITIONS],
            rx_seq: [0; MAX_PARTITIONS],
            rx_data: [0; MAX_PARTITIONS],
            pending_pongs: heapless::Deque::new(),
            in_flight: [None; QUEUE_BUFFERS],
            resend: heapless::Deque::new(),
            stats: Stats::default(),
        };
        node.register()?;
        Ok(node)
    }

    fn register(&mut self) -> Result<(), &'static str> {
        if establish(&self.queue) != RC_OK {
            return Err("establish refused");
        }
        for ip in [v4(self.core), v6(self.core)] {
            if register_address(0, ip) != RC_OK {
                return Err("register_address refused");
            }
        }
        Ok(())
    }

    /// Deregisters the queue set, takes what had arrived, and establishes a fresh one
    /// with the same addresses: while it is away, senders see "unreachable".
    pub fn reregister(&mut self) -> Result<(), &'static str> {
        if hvc(HVC_DEREGISTER_QUEUE_SET, 0, 0, 0, 0, 0).0 != RC_OK {
            return Err("deregister refused");
        }
        while self.poll() > 0 {}
        let mut region = region();
        self.indicators = Indicators::new(&mut region).map_err(|_| "indicators")?;
        self.queue =
            QueueDriver::new(&mut region, &self.indicators, self.config).map_err(|_| "driver")?;
        self.register()?;
        self.stats.reregistrations += 1;
        Ok(())
    }

    /// Sends a frame of `len` bytes (at least [`HEAD`]) of `kind` to `dst`, over IPv4
    /// or IPv6 by turns. A refused frame (target full, or unreachable while the target
    /// re-registers) is counted and sent again after taking our own input, so every
    /// frame counted as sent is delivered once. Gives up (false) on other refusals or
    /// after `deadline_ns`.
    pub fn send(&mut self, dst: usize, kind: u8, seq: u32, len: usize, deadline_ns: u64) -> bool {
        let len = len.clamp(HEAD, MFS.mtu());
        let dest = if seq.is_multiple_of(2) {
            v4(dst)
        } else {
            v6(dst)
        };
        let mut scratch = SCRATCH.lock();
        build(&mut scratch[..len], self.core, dst, kind, seq);
        loop {
            let result = match self.queue.send(&HvcSiga, dest, &scratch[..len]) {
                // Busy past the driver's retries (another core's tick holds the queue
                // while it delivers pending buffers): the frame stays primed, so it is
                // flushed, never primed a second time.
                Err(SendError::Siga(s)) if s.is_busy() => self.flush_busy(deadline_ns),
                other => other,
            };
            match result {
                Ok(()) => {
                    self.stats.sent += 1;
                    self.stats.sent_bytes += len as u64;
                    let n = self.queue.last_primed();
                    if self.queue.output_state(n) == SlsbState::OUTPUT_PENDING {
                        // Taken: delivered later, its data held until its QAOB completes.
                        self.stats.pending += 1;
                        if let Some(slot) = self.in_flight.get_mut(usize::from(n)) {
                            *slot = Some((dst, kind, seq, len));
                        }
                    }
                    return true;
                }
                Err(SendError::Driver(DriverError::PendingFull | DriverError::NoFreeBuffer))
                    if CQ =>
                {
                    // Not refused: wait for our completions (the hypervisor's tick
                    // delivers the pending buffers once their receivers have room).
                    self.stats.waited += 1;
                    drop(scratch);
                    self.wait_for_input(deadline_ns);
                    self.poll();
                    if rt::now_ns() > deadline_ns {
                        return false;
                    }
                    scratch = SCRATCH.lock();
                    build(&mut scratch[..len], self.core, dst, kind, seq);
                    continue;
                }
                Err(SendError::Refused(Reason::TargetFull)) => self.stats.refused_full += 1,
                Err(SendError::Refused(Reason::Unreachable)) => self.stats.refused_unreachable += 1,
                Err(e) => {
                    crate::say!("send to {} failed: {:?}", dst, e);
                    self.stats.refused_other += 1;
                    return false;
                }
            }
            if rt::now_ns() > deadline_ns {
                return false;
            }
            drop(scratch);
            self.poll();
            scratch = SCRATCH.lock();
            build(&mut scratch[..len], self.core, dst, kind, seq);
        }
    }

    /// Flushes the frame a busy SIGA left primed, until a SIGA is not busy or the
    /// deadline passes: `Ok` once it was delivered or went PENDING, else its refusal or
    /// the SIGA's error.
    fn flush_busy(&mut self, deadline_ns: u64) -> Result<(), SendError> {
        loop {
            self.stats.busy += 1;
            match self.queue.flush(&HvcSiga) {
                Ok(r) if r.pending > 0 => {}
                Ok(r) => {
                    return match r.refused.first() {
                        Some(&(_, reason)) => Err(SendError::Refused(reason)),
                        None => Ok(()),
                    };
                }
                Err(s) if s.is_busy() => {}
                Err(s) => return Err(SendError::Siga(s)),
            }
            if rt::now_ns() > deadline_ns {
                return Err(SendError::Siga(iqdio::SigaStatus::of_error(
                    iqdio::SigaError::Busy,
                )));
            }
        }
    }

    /// Sends the next data frame to `dst`.
    pub fn send_data(&mut self, dst: usize, len: usize, deadline_ns: u64) -> bool {
        let seq = self.tx_seq[dst];
        let ok = self.send(dst, DATA, seq, len, deadline_ns);
        if ok {
            self.tx_seq[dst] += 1;
        }
        ok
    }

    /// Takes every frame waiting, checks each end to end, answers pings. Returns the
    /// frames taken.
    pub fn poll(&mut self) -> usize {
        let mut total = 0;
        // High -> low: reset the summary bytes before taking the work they announce.
        if self.indicators.take() {
            self.queue.take_initiative();
        }
        loop {
            let (core, partitions) = (self.core, self.partitions);
            let mut scratch = SCRATCH.lock();
            let rx_seq = &mut self.rx_seq;
            let rx_data = &mut self.rx_data;
            let stats = &mut self.stats;
            let pongs = &mut self.pending_pongs;
            let got = self.queue.receive(|f| {
                let n = f.copy_to(&mut scratch[..]);
                match check(&scratch[..n], core, partitions) {
                    Some((src, kind, seq)) => {
                        let in_order = kind != DATA || seq == rx_seq[src];
                        if in_order {
                            if kind == DATA {
                                rx_seq[src] += 1;
                                rx_data[src] += 1;
                            } else if kind == PING {
                                stats.pings += 1;
                                let _ = pongs.push_back((src, seq));
                            } else {
                                stats.pongs += 1;
                            }
                            stats.received += 1;
                            stats.received_bytes += n as u64;
                        } else if seq < rx_seq[src] {
                            // A sequence number seen before: delivered twice.
                            stats.duplicated += 1;
                        } else {
                            // One skipped: out of order (a loss shows as sent - delivered).
                            stats.corrupted += 1;
                        }
                    }
                    None => stats.corrupted += 1,
                }
            });
            drop(scratch);
            match got {
                Some(n) => total += n,
                None => break,
            }
        }
        total += self.take_completions();
        while let Some((peer, seq)) = self.pending_pongs.pop_front() {
            self.send(peer, PONG, seq, 64, rt::now_ns() + 5_000_000_000);
        }
        while let Some((dst, kind, seq, len)) = self.resend.pop_front() {
            self.send(dst, kind, seq, len, rt::now_ns() + 5_000_000_000);
        }
        total
    }

    /// Takes the completion queue: counts each completion, and queues the frame of a
    /// buffer that completed with an error to be sent again (counted as a refusal).
    /// Returns the completions taken.
    fn take_completions(&mut self) -> usize {
        let in_flight = &mut self.in_flight;
        let resend = &mut self.resend;
        let stats = &mut self.stats;
        self.queue.complete(|c| {
            let frame = in_flight
                .get_mut(usize::from(c.buffer))
                .and_then(Option::take);
            if c.delivered() {
                stats.completed += 1;
            } else {
                stats.completed_with_error += 1;
                stats.refused_unreachable += 1;
                if let Some(f) = frame {
                    let _ = resend.push_back(f);
                }
            }
        })
    }

    /// Buffers sent that are still pending at the fabric.
    pub fn pending(&self) -> usize {
        self.queue.pending_tx()
    }

    /// The idle path: resets the indicator bytes high → low, and if nothing is
    /// waiting, sleeps in WFI until the virtual interrupt (the deadline is checked when
    /// it wakes). Returns whether input is waiting.
    pub fn wait_for_input(&mut self, deadline_ns: u64) -> bool {
        loop {
            rt::take_interrupts();
            if self.indicators.take() {
                self.queue.take_initiative();
            }
            if self.queue.has_input() || self.queue.has_completions() {
                return true;
            }
            let q = &self.queue;
            if !rt::wait_until(deadline_ns, || {
                rt::pending_interrupts() > 0 || q.has_input() || q.has_completions()
            }) {
                return self.queue.has_input() || self.queue.has_completions();
            }
        }
    }

    /// Pongs received so far.
    pub fn pongs(&self) -> u64 {
        self.stats.pongs
    }
}

/// FNV-1a over the head (without its checksum field) and the body.
pub fn checksum(frame: &[u8]) -> u32 {
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
pub fn build(frame: &mut [u8], src: usize, dst: usize, kind: u8, seq: u32) {
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
fn check(frame: &[u8], me: usize, partitions: usize) -> Option<(usize, u8, u32)> {
    if frame.len() < HEAD {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
    let (src, dst, kind) = (usize::from(frame[0]), usize::from(frame[1]), frame[2]);
    let ok = dst == me
        && src < partitions
        && kind <= PONG
        && word(8) as usize == frame.len()
        && word(12) == checksum(frame);
    ok.then_some((src, kind, word(4)))
}
