//! The program side: what a partition's device driver does with its queues.
//!
//! A partition carves its queue structures out of its own memory ([`Region`]), makes
//! its partition-level indicator bytes ([`Indicators`]) and one [`QueueDriver`] per
//! subchannel, gives the fabric the addresses ([`QueueDriver::params`]), and then:
//! primes frames into free output buffers, issues SIGA, polls its indicators high →
//! low, takes received frames, acknowledges and refills. The image, the tests and the
//! smoltcp device all use it.
//!
//! Buffer discipline: output buffers are primed in ring order and SIGA handles them
//! from its cursor in the same order. Input buffers are armed in ring order, at most
//! `rx_buffers` ahead of the next one to consume; consumed buffers go to 0x80 (or
//! 0x81 for the newest, while polling) and the buffer `rx_buffers` further on is armed
//! with the same data pages.

use core::net::IpAddr;
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use crate::error::{SigaError, SigaStatus};
use crate::fabric::{QUEUE_0_MASK, QueueSetParams, Siga, SigaFunction};
use crate::guest::{GuestSlice, Sbal, Window};
use crate::initiative::{self, IndicatorByte};
use crate::qdio::{
    Eflags, Fragment, HEADER_SIZE, L3Header, Mfs, QUEUE_BUFFERS, RX_ELEMENT_SIZE, Reason,
    SBAL_SIZE, SBALES_PER_SBAL, SLSB_LEN, Sbale, SlsbState,
};

/// Page size the driver aligns data buffers to; frames are split at page boundaries.
const PAGE: usize = 4096;

/// Errors of the program side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverError {
    /// The region has no room left for the queue structures.
    OutOfMemory,
    /// The region's host or guest base is not 4 KiB-aligned.
    Misaligned,
    /// A configuration value is out of range (buffer counts must be powers of two).
    InvalidConfig,
    /// Every output buffer is primed or not yet returned: issue SIGA first.
    NoFreeBuffer,
    /// The frames are larger than the maximum frame size, or more than 16 elements.
    TooLarge,
    /// No frame given, or a frame longer than a header's length field can say.
    InvalidFrame,
}

/// Errors of a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The fabric refused the buffer (0xAF) with this reason; the frame is intact and,
    /// if the reason is retryable, may be sent again.
    Refused(Reason),
    /// SIGA itself failed (condition code 1, 2 or 3): what it returned.
    Siga(SigaStatus),
    /// The driver could not prime the frame.
    Driver(DriverError),
}

impl core::fmt::Display for DriverError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::OutOfMemory => "region has no room left for the queue structures",
            Self::Misaligned => "region base not 4 KiB-aligned",
            Self::InvalidConfig => "driver configuration out of range",
            Self::NoFreeBuffer => "no free output buffer: issue SIGA first",
            Self::TooLarge => "frames larger than the MFS or 16 elements",
            Self::InvalidFrame => "no frame, or a frame too long for the header",
        })
    }
}

impl core::error::Error for DriverError {}

impl core::fmt::Display for SendError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Refused(r) => write!(f, "send refused: {r}"),
            Self::Siga(e) => write!(f, "send failed: {e}"),
            Self::Driver(e) => write!(f, "send not primed: {e}"),
        }
    }
}

impl core::error::Error for SendError {
    /// The refusal reason, the SIGA error or the driver error behind the send's.
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(match self {
            Self::Refused(r) => r,
            Self::Siga(e) => e,
            Self::Driver(e) => e,
        })
    }
}

/// A bump allocator over a partition's own memory.
pub struct Region {
    mem: GuestSlice,
    guest_base: u64,
    used: usize,
}

/// A piece of a [`Region`]: its memory and its guest address.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    mem: GuestSlice,
    guest: u64,
}

impl Region {
    /// A region of `len` bytes of partition memory at host `host`, guest `guest_base`.
    ///
    /// # Safety
    ///
    /// As [`Window::new`]: the memory is valid for reads and writes for as long as the
    /// region, the drivers made from it and any fabric given its window are used, and
    /// no Rust reference to it exists meanwhile.
    pub unsafe fn new(host: NonNull<u8>, guest_base: u64, len: usize) -> Result<Self, DriverError> {
        if !(host.as_ptr() as usize).is_multiple_of(PAGE) || !guest_base.is_multiple_of(PAGE as u64)
        {
            return Err(DriverError::Misaligned);
        }
        Ok(Self {
            // SAFETY: forwarded from this function's contract.
            mem: unsafe { GuestSlice::from_raw(host, len) },
            guest_base,
            used: 0,
        })
    }

    /// The whole region as a fabric window (for `Fabric::add_partition`).
    pub fn window(&self) -> Window {
        // SAFETY: the region's memory satisfies Window::new's contract by Region::new's.
        unsafe { Window::new(self.guest_base, self.mem.host_ptr(), self.mem.len()) }
    }

    /// Bytes not yet handed out.
    pub fn remaining(&self) -> usize {
        self.mem.len() - self.used
    }

    fn alloc(&mut self, size: usize, align: usize) -> Result<Chunk, DriverError> {
        let start = self.used.next_multiple_of(align);
        let mem = self.mem.sub(start, size).ok_or(DriverError::OutOfMemory)?;
        self.used = start + size;
        mem.fill(0, size, 0);
        Ok(Chunk {
            mem,
            guest: self.guest_base + start as u64,
        })
    }
}

/// The partition-level indicator bytes: the middle byte of its group of queues and
/// the global summary byte. Polled high → low: global, then middle, then each queue.
pub struct Indicators {
    middle: Chunk,
    global: Chunk,
}

impl Indicators {
    /// Allocates the two bytes (each on its own cache line).
    pub fn new(region: &mut Region) -> Result<Self, DriverError> {
        let ind = Self {
            global: region.alloc(1, 64)?,
            middle: region.alloc(1, 64)?,
        };
        ind.global.mem.model_atomics();
        ind.middle.mem.model_atomics();
        Ok(ind)
    }

    /// Resets the global summary byte, then the middle byte, each before the work it
    /// announces is looked at; true if either was set. The swaps (AcqRel) pair with
    /// the fabric's Release sets: a set seen here makes the frames behind it visible.
    pub fn take(&self) -> bool {
        initiative::take(&self.global.mem, &self.middle.mem)
    }

    /// Whether the global summary byte is set, without resetting it.
    pub fn pending(&self) -> bool {
        self.global.mem.load(0, Ordering::Acquire) != 0
    }
}

/// How a [`QueueDriver`] lays out its queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    /// The subchannel the queue set is established for.
    pub subchannel: u16,
    /// The fabric's maximum frame size (sizes the data buffers).
    pub mfs: Mfs,
    /// Input buffers armed at once: a power of two from 2 to 64.
    pub rx_buffers: u8,
    /// Output buffers with data of their own: a power of two from 1 to 128.
    pub tx_buffers: u8,
    /// Ask for an interrupt on every delivery (the override).
    pub interrupt_immediately: bool,
}

impl DriverConfig {
    /// 16 input buffers, 8 output buffers.
    pub const fn new(subchannel: u16, mfs: Mfs) -> Self {
        Self {
            subchannel,
            mfs,
            rx_buffers: 16,
            tx_buffers: 8,
            interrupt_immediately: false,
        }
    }

    /// Bytes of region a driver with this configuration takes (at most).
    pub const fn footprint(&self) -> usize {
        2 * QUEUE_BUFFERS * SBAL_SIZE
            + 2 * 256
            + 64
            + (self.rx_buffers as usize + self.tx_buffers as usize) * self.mfs.bytes()
            + 3 * PAGE
    }
}

/// Outcome of a write-multiple flush.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Buffers delivered.
    pub delivered: u8,
    /// Buffers refused: (position among the buffers primed since the last flush,
    /// reason).
    pub refused: heapless::Vec<(u8, Reason), QUEUE_BUFFERS>,
    /// Buffers the SIGA did not reach: it ended early (the partition was suspended, or
    /// its queue set changed, while it ran). They are the last ones primed, still
    /// primed (0x62), and the next flush sends them.
    pub pending: u8,
}

/// What a queue driver's receive side saw since it was made. Every frame the fabric
/// put into an input buffer is in exactly one of `frames` and `bad_frames`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxCounters {
    /// Frames handed to the program ([`QueueDriver::receive`]'s callback).
    pub frames: u64,
    /// Frames received but not handed over because their buffer no longer describes
    /// them: an element outside the buffer's own slot of receive data or of length zero, fragment
    /// flags out of order, a frame not ended by the last element, a first element
    /// shorter than the header, a header that does not decode, or a header length
    /// other than the bytes the elements hold. (The input buffers are the program's
    /// own memory once the fabric hands them over; whatever wrote there, a frame is
    /// counted here rather than skipped.)
    pub bad_frames: u64,
    /// Input buffers the fabric marked in error (0x8F) because their own elements were
    /// bad; they hold no frame (the sender was refused, sbalf15 0x13).
    pub error_buffers: u64,
}

/// One frame in a received buffer, its header checked against its elements.
pub struct RxFrame<'a> {
    header: L3Header,
    /// Packet bytes: what the elements hold after the header, which the header's
    /// length was checked to equal.
    len: usize,
    pieces: &'a [(GuestSlice, usize)],
}

impl RxFrame<'_> {
    /// The frame's header.
    pub fn header(&self) -> &L3Header {
        &self.header
    }

    /// Packet bytes (header excluded): the bytes the frame's elements hold after the
    /// header, which the header's length field matches.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the packet is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The packet in place (zero-copy receive): its bytes in the input buffer, one
    /// slice per element it spans (header excluded), in order. The slices borrow the
    /// frame, so they end before [`QueueDriver::receive`] hands the buffer back.
    pub fn pieces(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut skip = HEADER_SIZE;
        self.pieces.iter().filter_map(move |(piece, len)| {
            let from = skip.min(*len);
            skip -= from;
            (from < *len).then(|| Self::bytes(piece, from, len - from))
        })
    }

    /// The packet in place as one slice, when its pieces lie one after the other in
    /// memory (always so for a frame the fabric put into a buffer this driver armed:
    /// its elements are consecutive pages of one slot); `None` otherwise, and for an
    /// empty packet.
    pub fn contiguous(&self) -> Option<&[u8]> {
        let (first, _) = self.pieces.first()?;
        let mut end = first.host_addr();
        for (piece, len) in self.pieces {
            if piece.host_addr() != end {
                return None;
            }
            end += len;
        }
        (self.len > 0).then(|| Self::bytes(first, HEADER_SIZE, self.len))
    }

    /// `len` bytes at `offset` of a piece (or of the pieces after it, for
    /// [`contiguous`](Self::contiguous), which checked they are adjacent), borrowed.
    fn bytes(piece: &GuestSlice, offset: usize, len: usize) -> &[u8] {
        let ptr = piece.host_ptr().as_ptr().wrapping_add(offset);
        // SAFETY: the bytes lie in the slot of the input buffer being received (each
        // piece was checked to lie inside it by `receive`, and adjacent pieces make
        // one range of it): a buffer the fabric handed over (0x82) and that is not
        // armed again before `receive` returns, so nothing writes these bytes while
        // the frame, and so this borrow, lives.
        unsafe { core::slice::from_raw_parts(ptr, len) }
    }

    /// Copies the packet into `out`; returns the bytes copied (at most `out.len()`).
    pub fn copy_to(&self, out: &mut [u8]) -> usize {
        let mut skip = HEADER_SIZE;
        let mut done = 0;
        for (piece, len) in self.pieces {
            if skip >= *len {
                skip -= len;
                continue;
            }
            let n = (len - skip).min(out.len() - done);
            piece.read(skip, &mut out[done..done + n]);
            done += n;
            skip = 0;
            if done == out.len() {
                break;
            }
        }
        done.min(self.len())
    }
}

/// Where the frames of one output buffer go: each frame's first byte (its header) in
/// the output data, and the buffer's elements.
#[derive(Default)]
struct TxLayout {
    starts: heapless::Vec<usize, SBALES_PER_SBAL>,
    elements: heapless::Vec<Sbale, SBALES_PER_SBAL>,
}

/// The driver of one queue set: its output and input queues in partition memory.
pub struct QueueDriver {
    cfg: DriverConfig,
    out_sbals: Chunk,
    in_sbals: Chunk,
    out_ring: [Sbal; QUEUE_BUFFERS],
    in_ring: [Sbal; QUEUE_BUFFERS],
    out_slsb: Chunk,
    in_slsb: Chunk,
    queue_ind: Chunk,
    tx_data: Chunk,
    rx_data: Chunk,
    middle_guest: u64,
    global_guest: u64,
    /// Next output buffer to prime.
    tx_next: u8,
    /// Buffers primed since the last SIGA (they end at `tx_next`).
    tx_primed: u8,
    /// Next input buffer to consume.
    rx_next: u8,
    polling: bool,
    acked: Option<u8>,
    rx: RxCounters,
}

impl QueueDriver {
    /// Lays the queue set out in `region` and initialises it: output buffers 0xA0,
    /// the first `rx_buffers` input buffers armed (0x41), the rest 0x80.
    pub fn new(
        region: &mut Region,
        indicators: &Indicators,
        cfg: DriverConfig,
    ) -> Result<Self, DriverError> {
        let rx_ok = cfg.rx_buffers.is_power_of_two() && (2..=64).contains(&cfg.rx_buffers);
        let tx_ok =
            cfg.tx_buffers.is_power_of_two() && usize::from(cfg.tx_buffers) <= QUEUE_BUFFERS;
        if !rx_ok || !tx_ok {
            return Err(DriverError::InvalidConfig);
        }
        let ring = QUEUE_BUFFERS * SBAL_SIZE;
        let out_sbals = region.alloc(ring, PAGE)?;
        let in_sbals = region.alloc(ring, PAGE)?;
        let d = Self {
            cfg,
            out_ring: Self::ring(&out_sbals)?,
            in_ring: Self::ring(&in_sbals)?,
            out_sbals,
            in_sbals,
            out_slsb: region.alloc(SLSB_LEN, 256)?,
            in_slsb: region.alloc(SLSB_LEN, 256)?,
            queue_ind: region.alloc(1, 64)?,
            tx_data: region.alloc(usize::from(cfg.tx_buffers) * cfg.mfs.bytes(), PAGE)?,
            rx_data: region.alloc(usize::from(cfg.rx_buffers) * cfg.mfs.bytes(), PAGE)?,
            middle_guest: indicators.middle.guest,
            global_guest: indicators.global.guest,
            tx_next: 0,
            tx_primed: 0,
            rx_next: 0,
            polling: false,
            acked: None,
            rx: RxCounters::default(),
        };
        d.out_slsb
            .mem
            .fill(0, SLSB_LEN, SlsbState::OUTPUT_NOT_INIT.0);
        d.in_slsb.mem.fill(0, SLSB_LEN, SlsbState::INPUT_NOT_INIT.0);
        for c in [&d.out_slsb, &d.in_slsb, &d.queue_ind] {
            c.mem.model_atomics();
        }
        for n in 0..cfg.rx_buffers {
            d.arm(n);
        }
        Ok(d)
    }

    /// The configuration.
    pub fn config(&self) -> &DriverConfig {
        &self.cfg
    }

    /// The subchannel.
    pub fn subchannel(&self) -> u16 {
        self.cfg.subchannel
    }

    /// The addresses to establish this queue set with. The interrupt cookie is 0: it
    /// is the hypervisor's routing data, which the program side does not know; a
    /// hypervisor sets its own before it establishes.
    pub fn params(&self) -> QueueSetParams {
        let sbals = |c: &Chunk| core::array::from_fn(|i| c.guest + (i * SBAL_SIZE) as u64);
        QueueSetParams {
            output_sbals: sbals(&self.out_sbals),
            input_sbals: sbals(&self.in_sbals),
            output_slsb: self.out_slsb.guest,
            input_slsb: self.in_slsb.guest,
            queue_indicator: self.queue_ind.guest,
            middle_indicator: self.middle_guest,
            global_indicator: self.global_guest,
            interrupt_immediately: self.cfg.interrupt_immediately,
            interrupt_cookie: 0,
            ..Default::default()
        }
    }

    fn ring(chunk: &Chunk) -> Result<[Sbal; QUEUE_BUFFERS], DriverError> {
        let mut v = heapless::Vec::<Sbal, QUEUE_BUFFERS>::new();
        for n in 0..QUEUE_BUFFERS {
            let s = chunk
                .mem
                .sub(n * SBAL_SIZE, SBAL_SIZE)
                .and_then(Sbal::new)
                .ok_or(DriverError::Misaligned)?;
            v.push(s).map_err(|_| DriverError::Misaligned)?;
        }
        v.into_array().map_err(|_| DriverError::Misaligned)
    }

    fn out_sbal(&self, n: u8) -> Sbal {
        self.out_ring[usize::from(n) % QUEUE_BUFFERS]
    }

    fn in_sbal(&self, n: u8) -> Sbal {
        self.in_ring[usize::from(n) % QUEUE_BUFFERS]
    }

    fn state(slsb: &Chunk, n: u8, order: Ordering) -> u8 {
        slsb.mem.load(usize::from(n) % QUEUE_BUFFERS, order)
    }

    fn set_state(slsb: &Chunk, n: u8, s: SlsbState, order: Ordering) {
        slsb.mem.store(usize::from(n) % QUEUE_BUFFERS, s.0, order);
    }

    /// The SLSB state of output buffer `n`.
    pub fn output_state(&self, n: u8) -> SlsbState {
        SlsbState(Self::state(&self.out_slsb, n, Ordering::Acquire))
    }

    /// The SLSB state of input buffer `n`.
    pub fn input_state(&self, n: u8) -> SlsbState {
        SlsbState(Self::state(&self.in_slsb, n, Ordering::Acquire))
    }

    /// Hands input buffer `n` to the fabric: its data pages in its SBALEs, then 0x41.
    fn arm(&self, n: u8) {
        let sbal = self.in_sbal(n);
        let slot = usize::from(n % self.cfg.rx_buffers);
        let base = self.rx_data.guest + (slot * self.cfg.mfs.bytes()) as u64;
        // The MFS's elements, then (if room) an empty one that ends the list: the
        // fabric reads no further.
        let k = self.cfg.mfs.rx_elements();
        for i in 0..(k + 1).min(SBALES_PER_SBAL) {
            let e = if i < k {
                Sbale {
                    addr: base + (i * RX_ELEMENT_SIZE) as u64,
                    length: RX_ELEMENT_SIZE as u32,
                    ..Sbale::default()
                }
            } else {
                Sbale::default()
            };
            sbal.store(i, &e);
        }
        // Release pairs with the fabric's Acquire load of 0x41: the SBALEs are seen.
        Self::set_state(&self.in_slsb, n, SlsbState::INPUT_EMPTY, Ordering::Release);
    }

    /// Output buffers free to prime now.
    pub fn free_tx(&self) -> u8 {
        self.cfg.tx_buffers - self.tx_primed
    }

    /// Primes one frame to `dest` into the next output buffer; SIGA sends it.
    pub fn prime(&mut self, dest: IpAddr, packet: &[u8]) -> Result<u8, DriverError> {
        self.prime_frames(dest, &[packet])
    }

    /// Primes several frames for one next hop into one output buffer (as Linux's qeth
    /// packs packets that share next hop and VLAN, `qeth_l3_may_bulk`/`qeth_xmit` in
    /// `drivers/s390/net/qeth_core_main.c`). Each frame is a header and its packet; frames
    /// are split into elements at page boundaries of the buffer's data. The packets
    /// are copied in; [`prime_frames_with`](Self::prime_frames_with) lets the program
    /// write them in place instead.
    pub fn prime_frames(&mut self, dest: IpAddr, packets: &[&[u8]]) -> Result<u8, DriverError> {
        let mut lens = heapless::Vec::<usize, SBALES_PER_SBAL>::new();
        for p in packets {
            lens.push(p.len()).map_err(|_| DriverError::TooLarge)?;
        }
        let mut layout = TxLayout::default();
        let n = self.layout(&lens, &mut layout)?;
        for (p, &at) in packets.iter().zip(layout.starts.iter()) {
            self.tx_data.mem.write(at + HEADER_SIZE, p);
        }
        self.commit(n, dest, &lens, &layout);
        Ok(n)
    }

    /// Primes one frame of `len` packet bytes to `dest`, written in place (zero-copy
    /// transmit): `write` gets the packet's bytes in the next free output buffer and
    /// fills them (they hold whatever the buffer held before). The driver then writes
    /// the frame's header and elements and hands the buffer to the fabric (0x62);
    /// SIGA sends it. Returns the buffer's number and what `write` returned.
    pub fn prime_with<R>(
        &mut self,
        dest: IpAddr,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<(u8, R), DriverError> {
        match self.prime_routed(len, write, |_| Some(dest)) {
            Ok((n, r, _)) => Ok((n, r)),
            Err((_, e)) => Err(e),
        }
    }

    /// As [`prime_with`](Self::prime_with), the next hop read by `route` from the
    /// packet once written (the smoltcp device's transmit: the IP destination). When
    /// `route` finds none, the buffer is not handed over (it stays free) and the hop is
    /// `None`. When no frame of `len` bytes can be primed, `write` is given back
    /// unused, with the reason.
    pub(crate) fn prime_routed<F, R>(
        &mut self,
        len: usize,
        write: F,
        route: impl FnOnce(&[u8]) -> Option<IpAddr>,
    ) -> Result<(u8, R, Option<IpAddr>), (F, DriverError)>
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut layout = TxLayout::default();
        let n = match self.layout(&[len], &mut layout) {
            Ok(n) => n,
            Err(e) => return Err((write, e)),
        };
        // The layout holds one frame here.
        let at = layout.starts.first().copied().unwrap_or(0);
        let bytes = self.tx_bytes(at + HEADER_SIZE, len);
        let r = write(bytes);
        let dest = route(bytes);
        if let Some(dest) = dest {
            self.commit(n, dest, &[len], &layout);
        }
        Ok((n, r, dest))
    }

    /// The output buffer primed last (where [`resend`](Self::resend) put a frame it
    /// was refused again).
    pub fn last_primed(&self) -> u8 {
        (self.tx_next + QUEUE_BUFFERS as u8 - 1) % QUEUE_BUFFERS as u8
    }

    /// Primes several frames for one next hop into one output buffer, each written in
    /// place: `write(i, bytes)` fills frame `i`'s `lens[i]` packet bytes, in order.
    pub fn prime_frames_with(
        &mut self,
        dest: IpAddr,
        lens: &[usize],
        mut write: impl FnMut(usize, &mut [u8]),
    ) -> Result<u8, DriverError> {
        let mut layout = TxLayout::default();
        let n = self.layout(lens, &mut layout)?;
        for (i, (&at, &len)) in layout.starts.iter().zip(lens).enumerate() {
            write(i, self.tx_bytes(at + HEADER_SIZE, len));
        }
        self.commit(n, dest, lens, &layout);
        Ok(n)
    }

    /// The `len` bytes at `at` of the output buffers' data, borrowed mutably.
    ///
    /// Called only on bytes [`layout`](Self::layout) placed in the slot of the next
    /// output buffer, which the program owns: its state is not 0x62 (checked there), so
    /// the fabric does not read it, and no other buffer's elements point into it (each
    /// buffer's frames lie in its own slot). `&mut self` keeps the borrow unique.
    fn tx_bytes(&mut self, at: usize, len: usize) -> &mut [u8] {
        match self.tx_data.mem.sub(at, len) {
            // SAFETY: inside this driver's own output data (checked by `sub`), in the
            // slot of a buffer the program owns (see above): nothing else reads or
            // writes these bytes until `commit` hands the buffer over (0x62, Release),
            // which is after the borrow ends (it is tied to `&mut self`).
            Some(bytes) if len > 0 => unsafe {
                core::slice::from_raw_parts_mut(bytes.host_ptr().as_ptr(), len)
            },
            _ => &mut [],
        }
    }

    /// Lays frames of `lens` packet bytes out in the next free output buffer's slot:
    /// each starts where the last ended, except that a header never straddles a page
    /// (the fabric needs it whole in the frame's first element), and each is cut into
    /// elements at page boundaries. Into the caller's `layout` (empty): returned by
    /// value, its 400 bytes were copied twice a send.
    fn layout(&self, lens: &[usize], layout: &mut TxLayout) -> Result<u8, DriverError> {
        if self.tx_primed >= self.cfg.tx_buffers {
            return Err(DriverError::NoFreeBuffer);
        }
        let n = self.tx_next;
        let state = self.output_state(n);
        if state.owned_by_fabric() {
            return Err(DriverError::NoFreeBuffer);
        }
        if lens.is_empty() || lens.iter().any(|&l| l > usize::from(u16::MAX)) {
            return Err(DriverError::InvalidFrame);
        }
        let slot = usize::from(n % self.cfg.tx_buffers) * self.cfg.mfs.bytes();
        let slot_end = slot + self.cfg.mfs.bytes();
        let mut off = slot;
        let mut total = 0usize;
        for &len in lens {
            if off % PAGE + HEADER_SIZE > PAGE {
                off = off.next_multiple_of(PAGE);
            }
            let frame_end = off + HEADER_SIZE + len;
            total += HEADER_SIZE + len;
            if frame_end > slot_end || total > self.cfg.mfs.bytes() {
                return Err(DriverError::TooLarge);
            }
            layout.starts.push(off).map_err(|_| DriverError::TooLarge)?;
            let first_el = layout.elements.len();
            let mut at = off;
            while at < frame_end {
                let end = ((at / PAGE + 1) * PAGE).min(frame_end);
                layout
                    .elements
                    .push(Sbale {
                        addr: self.tx_data.guest + at as u64,
                        length: (end - at) as u32,
                        ..Sbale::default()
                    })
                    .map_err(|_| DriverError::TooLarge)?;
                at = end;
            }
            let count = layout.elements.len() - first_el;
            for (i, e) in layout.elements[first_el..].iter_mut().enumerate() {
                e.eflags = Fragment::for_element(i, count).bits();
            }
            off = frame_end;
        }
        if let Some(last) = layout.elements.last_mut() {
            last.eflags |= Eflags::LAST_ENTRY.bits();
        }
        Ok(n)
    }

    /// Writes the frames' headers and the buffer's elements, and hands output buffer
    /// `n` to the fabric (0x62): the packets are in place by now.
    fn commit(&mut self, n: u8, dest: IpAddr, lens: &[usize], layout: &TxLayout) {
        for (&len, &at) in lens.iter().zip(layout.starts.iter()) {
            // `layout` checked every length against u16::MAX.
            let header = L3Header::unicast(dest, len as u16).encode();
            self.tx_data.mem.write(at, &header);
        }
        // Only the elements in use: the fabric reads up to the first LAST_ENTRY.
        let sbal = self.out_sbal(n);
        for (i, e) in layout.elements.iter().enumerate() {
            sbal.store(i, e);
        }
        // Release pairs with the fabric's Acquire load of 0x62: the packets, headers
        // and elements written above (in place or copied) are seen by its copy.
        Self::set_state(
            &self.out_slsb,
            n,
            SlsbState::OUTPUT_PRIMED,
            Ordering::Release,
        );
        self.tx_next = (n + 1) % QUEUE_BUFFERS as u8;
        self.tx_primed += 1;
    }

    /// Primes one frame and sends it with SIGA write. A busy SIGA (cc2) is retried a
    /// bounded number of times, then returned.
    pub fn send<S: Siga + ?Sized>(
        &mut self,
        siga: &S,
        dest: IpAddr,
        packet: &[u8],
    ) -> Result<(), SendError> {
        self.flush_pending(siga)?;
        let n = self.prime(dest, packet).map_err(SendError::Driver)?;
        self.siga_write(siga, n)
    }

    /// Flushes the buffers primed earlier, before a send primes its own.
    pub(crate) fn flush_pending<S: Siga + ?Sized>(&mut self, siga: &S) -> Result<(), SendError> {
        while self.tx_primed > 0 {
            // Earlier primed buffers go first, in ring order; a flush that ended early
            // leaves some primed, and another sends them.
            let before = self.tx_primed;
            self.flush(siga).map_err(SendError::Siga)?;
            if self.tx_primed == before {
                // cc0, yet the queue did not move: as busy, for the caller to retry.
                return Err(SendError::Siga(SigaStatus::of_error(SigaError::Busy)));
            }
        }
        Ok(())
    }

    /// Primes one frame of `len` packet bytes written in place by `write` (as
    /// [`prime_with`](Self::prime_with)) and sends it with SIGA write, as
    /// [`send`](Self::send). Returns what `write` returned (it has run whenever the
    /// frame could be primed) and the send's outcome. A refused frame stays intact in
    /// its output buffer: [`resend`](Self::resend) sends it again without the program
    /// writing it twice.
    pub fn send_with<S: Siga + ?Sized, R>(
        &mut self,
        siga: &S,
        dest: IpAddr,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, (Option<R>, SendError)> {
        self.flush_pending(siga).map_err(|e| (None, e))?;
        let (n, r) = self
            .prime_with(dest, len, write)
            .map_err(|e| (None, SendError::Driver(e)))?;
        match self.siga_write(siga, n) {
            Ok(()) => Ok(r),
            Err(e) => Err((Some(r), e)),
        }
    }

    /// Sends the frame of output buffer `n` again, after the fabric refused it (0xAF):
    /// the frame (header and packet) moves into the next free output buffer with one
    /// copy inside the partition's memory, and SIGA write sends it. For the retry of a
    /// frame written in place, which the program no longer holds.
    pub fn resend<S: Siga + ?Sized>(&mut self, siga: &S, n: u8) -> Result<(), SendError> {
        if self.output_state(n) != SlsbState::OUTPUT_ERROR {
            return Err(SendError::Driver(DriverError::InvalidFrame));
        }
        self.flush_pending(siga)?;
        // The refused buffer's first frame, as the driver laid it out: its header in
        // the slot's first bytes (a slot starts page-aligned) and its packet after.
        let slot = usize::from(n % self.cfg.tx_buffers) * self.cfg.mfs.bytes();
        let mut raw = [0u8; HEADER_SIZE];
        self.tx_data.mem.read(slot, &mut raw);
        let header =
            L3Header::decode(&raw).map_err(|_| SendError::Driver(DriverError::InvalidFrame))?;
        let len = usize::from(header.length);
        let dest = header.next_hop;
        let mut layout = TxLayout::default();
        let m = self
            .layout(&[len], &mut layout)
            .map_err(SendError::Driver)?;
        let at = layout.starts.first().copied().unwrap_or(0);
        GuestSlice::copy(
            &self.tx_data.mem,
            slot + HEADER_SIZE,
            &self.tx_data.mem,
            at + HEADER_SIZE,
            len,
        );
        self.commit(m, dest, &[len], &layout);
        self.siga_write(siga, m)
    }

    /// SIGA write for output buffer `n`, just primed; its outcome.
    pub(crate) fn siga_write<S: Siga + ?Sized>(
        &mut self,
        siga: &S,
        n: u8,
    ) -> Result<(), SendError> {
        self.issue(siga, SigaFunction::Write)
            .map_err(SendError::Siga)?;
        self.tx_primed = 0;
        match self.output_state(n) {
            SlsbState::OUTPUT_EMPTY => Ok(()),
            _ => Err(SendError::Refused(self.reason(n))),
        }
    }

    /// SIGA until it is not busy (bounded): `Err` with what it returned otherwise.
    fn issue<S: Siga + ?Sized>(&self, siga: &S, f: SigaFunction) -> Result<(), SigaStatus> {
        let mut tries = 0;
        loop {
            let status = siga.siga(self.cfg.subchannel, f, QUEUE_0_MASK);
            if status.is_done() {
                return Ok(());
            }
            if !status.is_busy() || tries >= 1000 {
                return Err(status);
            }
            tries += 1;
            core::hint::spin_loop();
        }
    }

    /// The sbalf15 reason of a refused output buffer.
    pub fn reason(&self, n: u8) -> Reason {
        let code = self.out_sbal(n).load(Sbale::ERROR_REASON_ELEMENT).sflags;
        Reason::from_code(code).unwrap_or(Reason::TargetNotActive)
    }

    /// Sends every buffer primed since the last SIGA with one SIGA write-multiple.
    pub fn flush<S: Siga + ?Sized>(&mut self, siga: &S) -> Result<FlushReport, SigaStatus> {
        let mut report = FlushReport::default();
        if self.tx_primed == 0 {
            return Ok(report);
        }
        self.issue(siga, SigaFunction::WriteMultiple)?;
        let first = (self.tx_next + QUEUE_BUFFERS as u8 - self.tx_primed) % QUEUE_BUFFERS as u8;
        for k in 0..self.tx_primed {
            let n = (first + k) % QUEUE_BUFFERS as u8;
            match self.output_state(n) {
                SlsbState::OUTPUT_EMPTY => report.delivered += 1,
                // Not reached: the fabric handles primed buffers in ring order, so these
                // are the tail, and stay counted as primed for the next flush.
                SlsbState::OUTPUT_PRIMED => report.pending += 1,
                _ => {
                    let _ = report.refused.push((k, self.reason(n)));
                }
            }
        }
        self.tx_primed = report.pending;
        Ok(report)
    }

    /// Resets this queue's indicator byte; true if it was set. Call after
    /// [`Indicators::take`] (high → low), before taking the frames.
    pub fn take_initiative(&self) -> bool {
        self.queue_ind.mem.reset()
    }

    /// Whether the next input buffer holds something (a frame or an error).
    pub fn has_input(&self) -> bool {
        let s = self.input_state(self.rx_next);
        s == SlsbState::INPUT_PRIMED || s == SlsbState::INPUT_ERROR
    }

    /// Takes the next received buffer, if any: calls `f` for each frame in it, then
    /// acknowledges it and arms the buffer `rx_buffers` further on. Returns the frames
    /// handed to `f`, or `None` when no buffer was ready. A frame the buffer no longer
    /// describes soundly is not handed over but counted ([`RxCounters::bad_frames`]);
    /// a buffer the fabric marked 0x8F (its own elements were bad) holds no frame and
    /// is counted ([`RxCounters::error_buffers`]) and re-armed.
    pub fn receive(&mut self, mut f: impl FnMut(&RxFrame<'_>)) -> Option<usize> {
        let n = self.rx_next;
        // Acquire pairs with the fabric's Release store of 0x82: data visible.
        let state = self.input_state(n);
        let mut frames = 0;
        if state == SlsbState::INPUT_PRIMED {
            let mut bad = 0u64;
            let sbal = self.in_sbal(n);
            let slot = usize::from(n % self.cfg.rx_buffers) * self.cfg.mfs.bytes();
            let slot_guest = self.rx_data.guest + slot as u64;
            let slot_mem = self.rx_data.mem.sub(slot, self.cfg.mfs.bytes());
            // The frame being gathered: its pieces, its bytes, whether an element of
            // it was unusable. Frames are delimited by the fragment flags alone, so a
            // bad element costs its own frame and no other.
            let mut pieces = heapless::Vec::<(GuestSlice, usize), SBALES_PER_SBAL>::new();
            let mut bytes = 0usize;
            let mut broken = false;
            let mut open = false;
            for i in 0..SBALES_PER_SBAL {
                // Each element read once; only this copy is used.
                let e = sbal.load(i);
                let frag = e.fragment();
                let starts = matches!(frag, Fragment::None | Fragment::First);
                if starts && open {
                    // The open frame never got its last element.
                    bad += 1;
                    pieces.clear();
                    (bytes, broken) = (0, false);
                }
                // A middle or last element with no frame open is a piece of a frame
                // whose start is lost: gather it as a broken frame, counted once.
                broken |= !starts && !open;
                open = true;
                let len = e.length as usize;
                // Inside this buffer's own slot, which the driver armed it with: the
                // frame is then lent in place (`RxFrame::pieces`), and no other slot,
                // which the fabric may be filling, is ever borrowed.
                let piece = e
                    .addr
                    .checked_sub(slot_guest)
                    .and_then(|off| usize::try_from(off).ok())
                    .and_then(|off| slot_mem.and_then(|m| m.sub(off, len)))
                    .filter(|_| len > 0);
                match piece {
                    // At most 16 elements, so the push cannot fail.
                    Some(p) if !broken => {
                        let _ = pieces.push((p, len));
                        bytes += len;
                    }
                    _ => broken = true,
                }
                if matches!(frag, Fragment::None | Fragment::Last) {
                    match Self::check_frame(&pieces, bytes, broken) {
                        Some(frame) => {
                            f(&frame);
                            frames += 1;
                        }
                        None => bad += 1,
                    }
                    pieces.clear();
                    (bytes, broken, open) = (0, false, false);
                }
                if e.is_last_entry() {
                    break;
                }
            }
            if open {
                // LAST_ENTRY on a first or middle element, or none in 16 elements.
                bad += 1;
            }
            self.rx.frames += frames as u64;
            self.rx.bad_frames += bad;
        } else if state == SlsbState::INPUT_ERROR {
            self.rx.error_buffers += 1;
        } else {
            return None;
        }
        self.consume(n);
        Some(frames)
    }

    /// A gathered frame, if it is one: unbroken, its header whole in its first
    /// element, decoding, and with a length that matches the bytes after it.
    fn check_frame<'p>(
        pieces: &'p [(GuestSlice, usize)],
        bytes: usize,
        broken: bool,
    ) -> Option<RxFrame<'p>> {
        let (first, first_len) = pieces.first()?;
        if broken || *first_len < HEADER_SIZE {
            return None;
        }
        let mut raw = [0u8; HEADER_SIZE];
        first.read(0, &mut raw);
        let header = L3Header::decode(&raw).ok()?;
        let len = bytes - HEADER_SIZE;
        (usize::from(header.length) == len).then_some(RxFrame {
            header,
            len,
            pieces,
        })
    }

    /// What the receive side saw: frames handed over, frames counted bad, input
    /// buffers the fabric marked in error.
    pub fn rx_counters(&self) -> RxCounters {
        self.rx
    }

    /// Hands buffer `n` back: 0x80, or 0x81 while polling (the previous acknowledged
    /// buffer then goes to 0x80), and arms the buffer `rx_buffers` further on.
    fn consume(&mut self, n: u8) {
        if self.polling {
            // The new mark first, then the old one goes: a send that looks between the
            // two still finds a 0x81 and knows the receiver polls.
            Self::set_state(&self.in_slsb, n, SlsbState::INPUT_ACKED, Ordering::Release);
            if let Some(a) = self.acked.replace(n) {
                Self::set_state(
                    &self.in_slsb,
                    a,
                    SlsbState::INPUT_NOT_INIT,
                    Ordering::Relaxed,
                );
            }
        } else {
            Self::set_state(
                &self.in_slsb,
                n,
                SlsbState::INPUT_NOT_INIT,
                Ordering::Release,
            );
        }
        self.arm((n + self.cfg.rx_buffers) % QUEUE_BUFFERS as u8);
        self.rx_next = (n + 1) % QUEUE_BUFFERS as u8;
    }

    /// Starts polling: from now on the newest consumed buffer reads 0x81, and the
    /// fabric raises no interrupt for deliveries while it does.
    pub fn start_polling(&mut self) {
        self.polling = true;
    }

    /// Stops polling: writes 0x80 over the acknowledged buffer, then re-checks the
    /// queue indicator and the next buffer, to close the race with a send that saw
    /// 0x81 and so raised no interrupt. Returns true when work is waiting: the caller
    /// must take it rather than sleep.
    pub fn stop_polling(&mut self) -> bool {
        self.polling = false;
        let acked = self.acked.take();
        initiative::stop_polling(
            || {
                if let Some(a) = acked {
                    Self::set_state(
                        &self.in_slsb,
                        a,
                        SlsbState::INPUT_NOT_INIT,
                        Ordering::Relaxed,
                    );
                }
            },
            || self.queue_ind.mem.is_set() || self.has_input(),
        )
    }

    /// Whether the driver is polling.
    pub fn is_polling(&self) -> bool {
        self.polling
    }
}
