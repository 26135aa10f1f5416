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
//!
//! Output queues: a queue set has 1 to 4 ([`DriverConfig::output_queues`]), each with
//! its own ring, SLSB, data and cursor. With two or more the highest-numbered is the
//! **multicast queue**: frames to a group, to the broadcast domain or to an anycast
//! address ([`Dest`]) go there with their cast type in the header, unicast frames on
//! queue 0 (or, with [`QueueDriver::prime_frames_on`], on any queue the program picks),
//! as Linux's qeth does (`qeth_iqd_select_queue`, `drivers/s390/net/qeth_core_main.c`).
//!
//! Layer 2 ([`DriverConfig::layer2`]): the queue set carries whole Ethernet frames
//! behind Linux's `qeth_hdr_layer2` ([`L2Header`]) instead of IP packets behind the
//! layer-3 header. [`QueueDriver::prime_eth`] and [`QueueDriver::send_eth`] write the
//! header `qeth_l2_fill_header` (`drivers/s390/net/qeth_l2_main.c`) writes for the
//! frame and choose the queue by its destination MAC: unicast on queue 0, broadcast and
//! group MACs on the multicast queue. The receive side checks each frame's layer-2
//! header and hands over the Ethernet frame behind it; the layer-3 calls are refused
//! on a layer-2 driver and the layer-2 calls on a layer-3 one
//! ([`DriverError::WrongLayer`]).
//!
//! Completion queue ([`DriverConfig::completion_queue`]): the driver also lays out a
//! completion queue and one QAOB per output buffer of its unicast queues, and sends on
//! those queues with SIGA WRITEQ, one buffer per SIGA, as Linux does with
//! `QETH_CQ_ENABLED` (`qdio_siga_output` in `drivers/s390/cio/qdio_main.c` picks WRITEQ
//! for a single buffer with a QAOB). A buffer the fabric leaves PENDING (0xA3) keeps
//! its frame data untouched until its QAOB completes, while its SBAL is free at once
//! (Linux's `qeth_iqd_tx_complete` reuses it the same way);
//! [`QueueDriver::complete`] takes the completion queue's buffers, reports each
//! completion ([`Completion`]: `aorc` 0 delivered, else the reason) and re-arms them
//! (0x41). The driver keeps at most [`PENDING_PER_QUEUE_SET`] buffers primed or
//! pending on its WRITEQ queues, so the fabric's synchronous 0x10 for a full pending
//! list never comes.

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::ptr::NonNull;
use core::sync::atomic::Ordering;

use crate::error::{SigaError, SigaStatus};
use crate::fabric::{QueueAddresses, QueueSetParams, Siga, SigaFunction};
use crate::guest::{GuestSlice, Sbal, Window};
use crate::initiative::{self, IndicatorByte};
use crate::qdio::l2::{ETH_MIN, ETH_ROUTING, ID_LAYER2, L2Header, Mac, MacCast};
use crate::qdio::qaob;
use crate::qdio::{
    CastType, Eflags, Fragment, HEADER_SIZE, L3Header, Mfs, QUEUE_BUFFERS, RX_ELEMENT_SIZE, Reason,
    SBAL_SIZE, SBALES_PER_SBAL, SLSB_LEN, Sbale, SlsbState,
};
use crate::queue::{MAX_OUTPUT_QUEUES, PENDING_PER_QUEUE_SET, prev};

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
    /// Completion queue: [`PENDING_PER_QUEUE_SET`] buffers of the WRITEQ queues are
    /// primed or pending already; take the completions
    /// ([`QueueDriver::complete`]) first.
    PendingFull,
    /// A multicast, broadcast or anycast frame, but the queue set has one output queue
    /// and so no multicast queue ([`DriverConfig::output_queues`] below 2).
    NoMulticastQueue,
    /// The destination does not fit its kind (a group that is not a multicast address,
    /// an anycast address that is), or the output queue named does not exist or cannot
    /// carry it (a multicast, broadcast or anycast frame on a unicast queue, which the
    /// fabric would refuse with 0x27).
    InvalidDest,
    /// A layer-3 call (an IP destination) on a layer-2 driver, or a layer-2 call (an
    /// Ethernet frame) on a layer-3 one ([`DriverConfig::layer2`]); the fabric would
    /// refuse the frame (0x2B).
    WrongLayer,
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
            Self::PendingFull => {
                "pending buffers at the fabric's capacity: take the completions first"
            }
            Self::NoMulticastQueue => "one output queue: no multicast queue",
            Self::InvalidDest => "destination not of its kind, or not for that output queue",
            Self::WrongLayer => "a frame of the other layer than the queue set's",
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

/// Where a frame goes: the next hop its header names and its cast type, which also
/// chooses the output queue: unicast on queue 0, the others on the multicast queue (the
/// highest-numbered, with two output queues or more).
///
/// `From<IpAddr>` ([`Dest::of`]) chooses by the address, as Linux's qeth does for a
/// packet with no neighbour entry (`qeth_l3_get_cast_type_rcu`,
/// `drivers/s390/net/qeth_l3_main.c`): a multicast address is a group, the limited
/// broadcast 255.255.255.255 the broadcast domain, anything else unicast. A subnet's
/// broadcast address or an anycast address needs its variant named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// The one queue set that registered the address (cast 0x06), on queue 0.
    Unicast(IpAddr),
    /// Every member of the multicast group (IPv4 224.0.0.0/4, IPv6 ff00::/8) but the
    /// sender's own queue set (cast 0x04), on the multicast queue.
    Group(IpAddr),
    /// Every queue set that switched broadcast on but the sender's own (cast 0x05), on
    /// the multicast queue; the address (the limited broadcast or a subnet's) is the
    /// header's next hop, the fabric delivers whatever it is (it is one LAN).
    Broadcast(Ipv4Addr),
    /// The one queue set that registered the IPv6 address (cast 0x07), on the multicast
    /// queue, where Linux sends anycast (`qeth_iqd_select_queue`).
    Anycast(Ipv6Addr),
}

impl Dest {
    /// The destination an address names by itself: a multicast address a
    /// [`Group`](Self::Group), 255.255.255.255 [`Broadcast`](Self::Broadcast), any
    /// other [`Unicast`](Self::Unicast).
    #[inline]
    pub const fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) if v4.is_broadcast() => Self::Broadcast(v4),
            _ if ip.is_multicast() => Self::Group(ip),
            _ => Self::Unicast(ip),
        }
    }

    /// The next hop the frame header names.
    #[inline]
    pub const fn next_hop(&self) -> IpAddr {
        match *self {
            Self::Unicast(ip) | Self::Group(ip) => ip,
            Self::Broadcast(v4) => IpAddr::V4(v4),
            Self::Anycast(v6) => IpAddr::V6(v6),
        }
    }

    /// The cast type the frame header names.
    #[inline]
    pub const fn cast(&self) -> CastType {
        match self {
            Self::Unicast(_) => CastType::Unicast,
            Self::Group(_) => CastType::Multicast,
            Self::Broadcast(_) => CastType::Broadcast,
            Self::Anycast(_) => CastType::Anycast,
        }
    }

    /// Whether the frame goes on a unicast queue (only [`Unicast`](Self::Unicast)).
    pub const fn is_unicast(&self) -> bool {
        matches!(self, Self::Unicast(_))
    }

    /// The destination a frame header names (for a frame sent again), if its next hop
    /// fits its cast type.
    fn from_header(h: &L3Header) -> Option<Self> {
        let d = match (h.cast, h.next_hop) {
            (CastType::Unicast, ip) => Self::Unicast(ip),
            (CastType::Multicast, ip) => Self::Group(ip),
            (CastType::Broadcast, IpAddr::V4(v4)) => Self::Broadcast(v4),
            (CastType::Anycast, IpAddr::V6(v6)) => Self::Anycast(v6),
            _ => return None,
        };
        d.valid().then_some(d)
    }

    /// Whether the address fits the kind.
    #[inline]
    const fn valid(&self) -> bool {
        match self {
            Self::Group(ip) => ip.is_multicast(),
            Self::Anycast(v6) => !v6.is_multicast(),
            Self::Unicast(_) | Self::Broadcast(_) => true,
        }
    }
}

impl From<IpAddr> for Dest {
    #[inline]
    fn from(ip: IpAddr) -> Self {
        Self::of(ip)
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
    /// Output buffers with data of their own, per output queue: a power of two from 1
    /// to 128, and at most 128 over all output queues (so one flush reports at most 128
    /// buffers).
    pub tx_buffers: u8,
    /// Output queues: 1 to 4 ([`MAX_OUTPUT_QUEUES`], and at most the fabric's `O`).
    /// With 2 or more the highest-numbered is the multicast queue, which multicast,
    /// broadcast and anycast frames need; Linux establishes a HiperSockets device with
    /// at least 2 (`QETH_IQD_MIN_TXQ`, `drivers/s390/net/qeth_core.h`).
    pub output_queues: u8,
    /// Ask for an interrupt on every delivery (the override).
    pub interrupt_immediately: bool,
    /// Layer-2 mode: the queue set is established layer 2 ([`QueueSetParams::layer2`])
    /// and carries Ethernet frames behind the layer-2 header ([`L2Header`]).
    pub layer2: bool,
    /// Establish with a completion queue and send on the unicast queues with SIGA
    /// WRITEQ, one QAOB per output buffer (see the [module docs](self)). The SIGA
    /// implementation must carry the QAOB address ([`Siga::siga_writeq`]).
    pub completion_queue: bool,
}

impl DriverConfig {
    /// 16 input buffers, one output queue of 8 output buffers.
    pub const fn new(subchannel: u16, mfs: Mfs) -> Self {
        Self {
            subchannel,
            mfs,
            rx_buffers: 16,
            tx_buffers: 8,
            output_queues: 1,
            interrupt_immediately: false,
            layer2: false,
            completion_queue: false,
        }
    }

    /// As [`new`](Self::new), in layer-2 mode with two output queues (queue 1 the
    /// multicast queue, for broadcast and group MACs: ARP and neighbour discovery).
    pub const fn layer2(subchannel: u16, mfs: Mfs) -> Self {
        let mut c = Self::new(subchannel, mfs);
        c.output_queues = 2;
        c.layer2 = true;
        c
    }

    /// Bytes of region a driver with this configuration takes (at most).
    pub const fn footprint(&self) -> usize {
        let queues = self.output_queues as usize;
        (1 + queues) * QUEUE_BUFFERS * SBAL_SIZE
            + (1 + queues) * 256
            + 64
            + (self.rx_buffers as usize + queues * self.tx_buffers as usize) * self.mfs.bytes()
            + (1 + 2 * queues) * PAGE
            + if self.completion_queue {
                // The completion queue's ring and SLSB, and the QAOBs (at most one per
                // output buffer of every queue).
                QUEUE_BUFFERS * SBAL_SIZE
                    + 256
                    + queues * self.tx_buffers as usize * qaob::QAOB_SIZE
                    + 2 * PAGE
            } else {
                0
            }
    }
}

/// Outcome of a write-multiple flush.
///
/// A flush sends the buffers primed on every output queue in one SIGA, whose mask
/// names each queue that has some; the fabric handles them queue by queue, lowest
/// first, each queue in ring order. A buffer's *position* counts in that order: queue
/// 0's buffers first, then queue 1's, and so on ([`locate`](Self::locate) maps it back).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlushReport {
    /// Buffers delivered.
    pub delivered: u8,
    /// Buffers refused: (position among the buffers primed since the last flush,
    /// reason).
    pub refused: heapless::Vec<(u8, Reason), QUEUE_BUFFERS>,
    /// Buffers the SIGA did not reach: it ended early (the partition was suspended, or
    /// its queue set changed, while it ran). They are the last ones primed on their
    /// queues, still primed (0x62), and the next flush sends them.
    pub pending: u8,
    /// Buffers each output queue had primed when the flush began.
    pub primed: [u8; MAX_OUTPUT_QUEUES],
    /// Completion queue: buffers (positions, as in `refused`) the fabric left PENDING
    /// (0xA3); each completes later through [`QueueDriver::complete`]. Taken, not
    /// refused: they count neither in `delivered` nor in `refused`.
    pub went_pending: heapless::Vec<u8, QUEUE_BUFFERS>,
}

impl FlushReport {
    /// The output queue of the buffer at `position`, and which of that queue's
    /// buffers primed since the last flush it was (0 the oldest).
    pub fn locate(&self, position: u8) -> Option<(u8, u8)> {
        let mut rest = position;
        for (q, &n) in self.primed.iter().enumerate() {
            if rest < n {
                return Some((q as u8, rest));
            }
            rest -= n;
        }
        None
    }
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
    /// Of `bad_frames`: frames whose header is the other layer's (a layer-3 header on
    /// a layer-2 queue set, or the reverse).
    pub wrong_layer: u64,
    /// Of `bad_frames`, layer 2 only: Ethernet frames shorter than two MACs and an
    /// EtherType (14 bytes).
    pub short_frames: u64,
}

/// The header of a received frame, checked against its elements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameHeader {
    /// A layer-3 frame: an IP packet behind it.
    Layer3(L3Header),
    /// A layer-2 frame: an Ethernet frame behind it.
    Layer2(L2Header),
}

/// Why a gathered frame was not handed over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BadFrame {
    /// A header of the other layer.
    WrongLayer,
    /// Layer 2: an Ethernet frame shorter than 14 bytes.
    Short,
    /// Anything else ([`RxCounters::bad_frames`]).
    Other,
}

/// The bad frames of one input buffer, by why.
#[derive(Clone, Copy, Debug, Default)]
struct BadFrames {
    wrong_layer: u64,
    short: u64,
    other: u64,
}

impl BadFrames {
    fn count(&mut self, why: BadFrame) {
        match why {
            BadFrame::WrongLayer => self.wrong_layer += 1,
            BadFrame::Short => self.short += 1,
            BadFrame::Other => self.other += 1,
        }
    }

    fn total(&self) -> u64 {
        self.wrong_layer + self.short + self.other
    }
}

/// One frame in a received buffer, its header checked against its elements.
pub struct RxFrame<'a> {
    header: FrameHeader,
    /// Packet bytes: what the elements hold after the header, which the header's
    /// length was checked to equal.
    len: usize,
    /// The slot of the input buffer being received: every piece lies inside it.
    slot: GuestSlice,
    /// The frame's elements' bytes (header included), one `(offset, length)` range
    /// of `slot` per element, each checked to lie inside it.
    pieces: &'a [(usize, usize)],
    /// Whether the pieces lie one after the other in the slot (always so for a frame
    /// the fabric put into a buffer this driver armed), making the frame one range
    /// of it, from the first piece's start, of header and packet bytes:
    /// [`copy_to`](Self::copy_to) then copies the packet in one call, and
    /// [`contiguous`](Self::contiguous) lends it as one slice. Never a range across
    /// two slots or windows: it is a range of the one slot.
    whole: bool,
}

impl RxFrame<'_> {
    /// The frame's layer-3 header (`None` for a layer-2 frame).
    pub fn header(&self) -> Option<&L3Header> {
        match &self.header {
            FrameHeader::Layer3(h) => Some(h),
            FrameHeader::Layer2(_) => None,
        }
    }

    /// The frame's layer-2 header (`None` for a layer-3 frame).
    pub fn l2_header(&self) -> Option<&L2Header> {
        match &self.header {
            FrameHeader::Layer2(h) => Some(h),
            FrameHeader::Layer3(_) => None,
        }
    }

    /// The frame's header, of either layer.
    pub fn frame_header(&self) -> &FrameHeader {
        &self.header
    }

    /// Packet bytes (header excluded): the bytes the frame's elements hold after the
    /// header, which the header's length field matches. On a layer-2 queue set the
    /// packet is the whole Ethernet frame (at least 14 bytes).
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
        self.pieces.iter().filter_map(move |&(at, len)| {
            let from = skip.min(len);
            skip -= from;
            (from < len).then(|| self.bytes(at + from, len - from))
        })
    }

    /// The packet in place as one slice, when its pieces lie one after the other in
    /// memory (always so for a frame the fabric put into a buffer this driver armed:
    /// its elements are consecutive pages of one slot); `None` otherwise, and for an
    /// empty packet.
    pub fn contiguous(&self) -> Option<&[u8]> {
        let at = self.whole_at()?;
        (self.len > 0).then(|| self.bytes(at + HEADER_SIZE, self.len))
    }

    /// Where the frame starts in the slot, when it is one range of it (`whole`).
    #[inline(always)]
    fn whole_at(&self) -> Option<usize> {
        self.pieces
            .first()
            .filter(|_| self.whole)
            .map(|&(at, _)| at)
    }

    /// `len` bytes at `offset` of the slot (inside a piece, or the frame's whole
    /// range), borrowed.
    fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        let ptr = self.slot.host_ptr().as_ptr().wrapping_add(offset);
        // SAFETY: the bytes lie in the slot of the input buffer being received (each
        // piece, and the whole range, was checked to lie inside it by `gather`): a
        // buffer the fabric handed over (0x82) and that is not armed again before
        // `receive` returns, so nothing writes these bytes while the frame, and so
        // this borrow, lives.
        unsafe { core::slice::from_raw_parts(ptr, len) }
    }

    /// Copies the packet into `out`; returns the bytes copied (at most `out.len()`).
    /// One copy when the pieces lie one after the other in the slot (as for
    /// [`contiguous`](Self::contiguous)), else one per piece.
    #[inline]
    pub fn copy_to(&self, out: &mut [u8]) -> usize {
        if let Some(at) = self.whole_at() {
            // The whole range holds the header and then exactly `len` packet bytes.
            let n = out.len().min(self.len);
            self.slot.read(at + HEADER_SIZE, &mut out[..n]);
            return n;
        }
        Self::copy_pieces_to(self.slot, self.pieces, self.len, out)
    }

    /// [`copy_to`](Self::copy_to) of a frame whose pieces do not follow one another:
    /// one copy per piece. Out of line, so that the one-copy path inlines alone; it
    /// takes the frame's parts rather than the frame, which so never leaves the
    /// caller's registers (its header is not stored for this call).
    #[inline(never)]
    fn copy_pieces_to(
        slot: GuestSlice,
        pieces: &[(usize, usize)],
        frame_len: usize,
        out: &mut [u8],
    ) -> usize {
        let mut skip = HEADER_SIZE;
        let mut done = 0;
        for &(at, len) in pieces {
            if skip >= len {
                skip -= len;
                continue;
            }
            let n = (len - skip).min(out.len() - done);
            slot.read(at + skip, &mut out[done..done + n]);
            done += n;
            skip = 0;
            if done == out.len() {
                break;
            }
        }
        done.min(frame_len)
    }
}

/// What a primed frame's header says: a layer-3 destination, or (layer 2) what the
/// Ethernet frame behind it says.
#[derive(Clone, Copy, Debug)]
enum Framing {
    Layer3(Dest),
    Layer2,
}

impl From<Dest> for Framing {
    fn from(d: Dest) -> Self {
        Self::Layer3(d)
    }
}

/// Where the frames of one output buffer go: each frame's first byte (its header) in
/// the output data, and the buffer's elements.
#[derive(Default)]
struct TxLayout {
    starts: heapless::Vec<usize, SBALES_PER_SBAL>,
    elements: heapless::Vec<Sbale, SBALES_PER_SBAL>,
    /// The output buffer's data slot (an index, not an offset).
    slot: u8,
}

/// Where [`QueueDriver::place_one`] put one frame: output buffer `n`, whose slot
/// starts at `slot` in the queue's data (guest address `addr`), the frame's `bytes`
/// (header and packet, at most the MFS) from there.
struct OneFrame {
    n: u8,
    /// The slot's index ([`TxQueue::hand_over`] records it).
    index: u8,
    slot: usize,
    addr: u64,
    bytes: usize,
}

impl OneFrame {
    /// The frame's elements: one for each page it touches (the slot starts a page),
    /// at most 16 as the MFS is at most 64 KiB.
    #[inline(always)]
    fn count(&self) -> usize {
        self.bytes.div_ceil(PAGE).clamp(1, SBALES_PER_SBAL)
    }

    /// Element `i` of the frame's [`count`](Self::count), as the general layout cuts
    /// them at page boundaries: page `i` of the slot, as much of the frame as it
    /// holds; no fragment flag when it is the only one, else `First`, `Middle`s and
    /// `Last`; the last with `LAST_ENTRY`.
    #[inline(always)]
    fn element(&self, i: usize, count: usize) -> Sbale {
        let at = i * PAGE;
        let last = i + 1 == count;
        let fragment = match (i, last) {
            (0, true) => Fragment::None,
            (0, false) => Fragment::First,
            (_, true) => Fragment::Last,
            (_, false) => Fragment::Middle,
        };
        let entry = if last { Eflags::LAST_ENTRY.bits() } else { 0 };
        Sbale {
            eflags: fragment.bits() | entry,
            length: self.bytes.saturating_sub(at).min(PAGE) as u32,
            addr: self.addr + at as u64,
            ..Sbale::default()
        }
    }
}

/// One output queue: its ring of SBALs, its SLSB, the data of its buffers and its
/// cursor.
struct TxQueue {
    sbals: Chunk,
    ring: [Sbal; QUEUE_BUFFERS],
    slsb: Chunk,
    data: Chunk,
    /// Next output buffer to prime.
    next: u8,
    /// Buffers primed since the last SIGA (they end at `next`).
    primed: u8,
    /// The data slot each output buffer was last primed with
    /// ([`QueueDriver::next_free`] chooses it; [`hand_over`](Self::hand_over) records
    /// it).
    slot_of: [u8; QUEUE_BUFFERS],
}

impl TxQueue {
    /// The queue over its three pieces of region; every buffer 0xA0. Every buffer
    /// starts as if it had used the last of the `tx_buffers` slots, so that buffer 0,
    /// whose predecessor was never sent, takes slot 0.
    fn new(sbals: Chunk, slsb: Chunk, data: Chunk, tx_buffers: u8) -> Result<Self, DriverError> {
        let q = Self {
            ring: QueueDriver::ring(&sbals)?,
            sbals,
            slsb,
            data,
            next: 0,
            primed: 0,
            slot_of: [tx_buffers.wrapping_sub(1); QUEUE_BUFFERS],
        };
        q.slsb.mem.fill(0, SLSB_LEN, SlsbState::OUTPUT_NOT_INIT.0);
        q.slsb.mem.model_atomics();
        Ok(q)
    }

    fn sbal(&self, n: u8) -> Sbal {
        self.ring[usize::from(n) % QUEUE_BUFFERS]
    }

    /// The data slot buffer `n` was last primed with.
    #[inline(always)]
    fn slot(&self, n: u8) -> u8 {
        self.slot_of[usize::from(n) % QUEUE_BUFFERS]
    }

    /// Hands buffer `n`, its frames, headers and elements written in data slot
    /// `slot`, to the fabric (0x62) and moves the cursor past it. Release pairs with
    /// the fabric's Acquire load of 0x62: what was written (in place or copied) is
    /// seen by its copy.
    #[inline(always)]
    fn hand_over(&mut self, n: u8, slot: u8) {
        self.slot_of[usize::from(n) % QUEUE_BUFFERS] = slot;
        QueueDriver::set_state(&self.slsb, n, SlsbState::OUTPUT_PRIMED, Ordering::Release);
        self.next = (n + 1) % QUEUE_BUFFERS as u8;
        self.primed += 1;
    }

    #[inline]
    fn state(&self, n: u8) -> SlsbState {
        SlsbState(QueueDriver::state(&self.slsb, n, Ordering::Acquire))
    }

    /// The SLSB's queue mask bit of queue `q` (Linux's `qdio_siga_output`,
    /// `drivers/s390/cio/qdio_main.c`: queue n is bit `1 << (31 - n)`).
    const fn mask(q: u8) -> u32 {
        1 << (31 - q as u32)
    }

    /// The buffer primed `k` buffers after the oldest primed since the last SIGA.
    fn primed_buffer(&self, k: u8) -> u8 {
        let first = (self.next + QUEUE_BUFFERS as u8 - self.primed) % QUEUE_BUFFERS as u8;
        (first + k) % QUEUE_BUFFERS as u8
    }
}

/// One buffer the fabric completed asynchronously: it had gone PENDING (0xA3), and its
/// QAOB came back on the completion queue ([`QueueDriver::complete`]). Its frame data
/// is the program's again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The output queue it was sent on.
    pub queue: u8,
    /// The output buffer (SBAL number) it was sent from. The SBAL itself was free from
    /// the moment it went pending; its data slot (`buffer % tx_buffers`) was held until
    /// now, so while it is pending no other buffer of the queue has the same slot.
    pub buffer: u8,
    /// The QAOB's `aorc`: 0 delivered, else the sbalf15 reason code it failed with.
    pub aorc: u8,
}

impl Completion {
    /// Whether the buffer was delivered (`aorc` 0).
    pub const fn delivered(&self) -> bool {
        self.aorc == 0
    }

    /// The reason it was not delivered; `None` when it was, or for a code the crate
    /// does not know.
    pub fn reason(&self) -> Option<Reason> {
        if self.aorc == 0 {
            None
        } else {
            Reason::from_code(self.aorc)
        }
    }
}

/// What a queue driver's completion queue saw since it was made
/// ([`QueueDriver::cq_counters`]). Every buffer counted in `pending` ends in exactly
/// one of `completed` and `completed_with_error` once its completion is taken.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CqCounters {
    /// Buffers the fabric left PENDING (0xA3).
    pub pending: u64,
    /// Pending buffers completed with `aorc` 0: delivered.
    pub completed: u64,
    /// Pending buffers completed with an error `aorc` (the receiver went away 0x12,
    /// the queue set was deregistered 0x15, the QAOB or the data went bad).
    pub completed_with_error: u64,
    /// Completion-queue buffers taken (each announces 1 to 16 QAOBs).
    pub cq_buffers: u64,
    /// Completion-queue entries that named no QAOB of a pending buffer of this driver
    /// (not one of its QAOBs, or one not pending): ignored, counted.
    pub bad_entries: u64,
    /// Completion-queue buffers the fabric marked in error (0x8F): re-armed, counted.
    pub error_buffers: u64,
}

/// The completion queue of a driver: its ring and SLSB, the QAOBs (one per output
/// buffer slot of each WRITEQ queue, `q * tx_buffers + slot`), which of them are
/// pending and what each was sent from.
struct Cq {
    sbals: Chunk,
    ring: [Sbal; QUEUE_BUFFERS],
    slsb: Chunk,
    qaobs: Chunk,
    /// QAOBs laid out.
    count: usize,
    /// Next completion-queue buffer to take.
    next: u8,
    /// QAOB i is pending (its slot's data held) while bit i is set.
    held: u128,
    /// The output buffer each pending QAOB's buffer was sent from.
    sent_from: [u8; QUEUE_BUFFERS],
    counters: CqCounters,
}

impl Cq {
    fn held_count(&self) -> usize {
        self.held.count_ones() as usize
    }

    fn is_held(&self, i: usize) -> bool {
        i < 128 && self.held & (1u128 << i) != 0
    }

    fn qaob_addr(&self, i: usize) -> u64 {
        self.qaobs.guest + (i * qaob::QAOB_SIZE) as u64
    }
}

/// The driver of one queue set: its output and input queues in partition memory.
pub struct QueueDriver {
    cfg: DriverConfig,
    /// The output queues, queue 0 first.
    tx: heapless::Vec<TxQueue, MAX_OUTPUT_QUEUES>,
    in_sbals: Chunk,
    in_ring: [Sbal; QUEUE_BUFFERS],
    in_slsb: Chunk,
    queue_ind: Chunk,
    rx_data: Chunk,
    middle_guest: u64,
    global_guest: u64,
    /// Next input buffer to consume.
    rx_next: u8,
    polling: bool,
    acked: Option<u8>,
    /// The input buffer lent in place by `hold_single`, not yet handed back.
    held: Option<u8>,
    /// For each input buffer, how many of its SBAL's first elements its next
    /// [`arm`](Self::arm) rewrites: all it arms until the fabric filled it, then the
    /// elements the fabric wrote ([`gather`](Self::gather) walks exactly those: the
    /// fabric writes the elements it delivers into and no other, the last with
    /// `LAST_ENTRY`, and an armed element carries no `LAST_ENTRY`), all again after
    /// an error buffer (0x8F: the fabric wrote its error elements). The others still
    /// hold what the last arm wrote: only this driver and the fabric write the
    /// receiver's SBALs. A 64 KiB MFS arms 16 elements; a one-frame buffer of up to
    /// 4 KiB is re-armed with one store (receive_64: -150 instructions).
    rx_rearm: [u8; QUEUE_BUFFERS],
    rx: RxCounters,
    /// The completion queue, when [`DriverConfig::completion_queue`] is set.
    cq: Option<Cq>,
}

impl QueueDriver {
    /// Lays the queue set out in `region` and initialises it: output buffers 0xA0,
    /// the first `rx_buffers` input buffers armed (0x41), the rest 0x80. Output queue
    /// 0 and the input queue come first, the further output queues after them.
    pub fn new(
        region: &mut Region,
        indicators: &Indicators,
        cfg: DriverConfig,
    ) -> Result<Self, DriverError> {
        let rx_ok = cfg.rx_buffers.is_power_of_two() && (2..=64).contains(&cfg.rx_buffers);
        let queues = usize::from(cfg.output_queues);
        let tx_ok = cfg.tx_buffers.is_power_of_two()
            && (1..=MAX_OUTPUT_QUEUES).contains(&queues)
            && queues * usize::from(cfg.tx_buffers) <= QUEUE_BUFFERS;
        if !rx_ok || !tx_ok {
            return Err(DriverError::InvalidConfig);
        }
        let ring = QUEUE_BUFFERS * SBAL_SIZE;
        let tx_bytes = usize::from(cfg.tx_buffers) * cfg.mfs.bytes();
        let out_sbals = region.alloc(ring, PAGE)?;
        let in_sbals = region.alloc(ring, PAGE)?;
        let out_slsb = region.alloc(SLSB_LEN, 256)?;
        let in_slsb = region.alloc(SLSB_LEN, 256)?;
        let queue_ind = region.alloc(1, 64)?;
        let tx_data = region.alloc(tx_bytes, PAGE)?;
        let rx_data = region.alloc(usize::from(cfg.rx_buffers) * cfg.mfs.bytes(), PAGE)?;
        let mut tx = heapless::Vec::new();
        let mut queue = Some(TxQueue::new(out_sbals, out_slsb, tx_data, cfg.tx_buffers)?);
        for _ in 0..queues {
            let q = match queue.take() {
                Some(q) => q,
                None => TxQueue::new(
                    region.alloc(ring, PAGE)?,
                    region.alloc(SLSB_LEN, 256)?,
                    region.alloc(tx_bytes, PAGE)?,
                    cfg.tx_buffers,
                )?,
            };
            // At most MAX_OUTPUT_QUEUES (checked above): the push cannot fail.
            tx.push(q).map_err(|_| DriverError::InvalidConfig)?;
        }
        let mut d = Self {
            cfg,
            tx,
            in_ring: Self::ring(&in_sbals)?,
            in_sbals,
            in_slsb,
            queue_ind,
            rx_data,
            middle_guest: indicators.middle.guest,
            global_guest: indicators.global.guest,
            rx_next: 0,
            polling: false,
            acked: None,
            held: None,
            rx_rearm: [Self::arm_elements(&cfg); QUEUE_BUFFERS],
            rx: RxCounters::default(),
            cq: None,
        };
        d.in_slsb.mem.fill(0, SLSB_LEN, SlsbState::INPUT_NOT_INIT.0);
        for c in [&d.in_slsb, &d.queue_ind] {
            c.mem.model_atomics();
        }
        for n in 0..cfg.rx_buffers {
            d.arm(n);
        }
        if cfg.completion_queue {
            d.cq = Some(Self::new_cq(region, &cfg)?);
        }
        Ok(d)
    }

    /// Lays out the completion queue (after everything else, so a driver without one
    /// keeps its layout): its ring, its SLSB with every buffer armed (0x41, as Linux
    /// arms its completion queue whole, `qeth_cq_init`), and the QAOBs of the WRITEQ
    /// queues (every queue but the multicast queue).
    fn new_cq(region: &mut Region, cfg: &DriverConfig) -> Result<Cq, DriverError> {
        let queues = usize::from(cfg.output_queues);
        let unicast = if queues >= 2 { queues - 1 } else { queues };
        let count = unicast * usize::from(cfg.tx_buffers);
        let sbals = region.alloc(QUEUE_BUFFERS * SBAL_SIZE, PAGE)?;
        let slsb = region.alloc(SLSB_LEN, 256)?;
        let qaobs = region.alloc(count * qaob::QAOB_SIZE, PAGE)?;
        let cq = Cq {
            ring: Self::ring(&sbals)?,
            sbals,
            slsb,
            qaobs,
            count,
            next: 0,
            held: 0,
            sent_from: [0; QUEUE_BUFFERS],
            counters: CqCounters::default(),
        };
        cq.slsb.mem.fill(0, SLSB_LEN, SlsbState::INPUT_NOT_INIT.0);
        cq.slsb.mem.model_atomics();
        for n in 0..QUEUE_BUFFERS as u8 {
            // The elements are the fabric's to write: empty until it posts.
            cq.ring[usize::from(n)].store(0, &Sbale::default());
            // Release pairs with the fabric's Acquire load of 0x41.
            Self::set_state(&cq.slsb, n, SlsbState::INPUT_EMPTY, Ordering::Release);
        }
        Ok(cq)
    }

    /// The configuration.
    pub fn config(&self) -> &DriverConfig {
        &self.cfg
    }

    /// The subchannel.
    pub fn subchannel(&self) -> u16 {
        self.cfg.subchannel
    }

    /// The addresses to establish this queue set with, every output queue's among
    /// them (`more_outputs` holds queues 1 and up). The interrupt cookie is 0: it is
    /// the hypervisor's routing data, which the program side does not know; a
    /// hypervisor sets its own before it establishes.
    pub fn params(&self) -> QueueSetParams {
        let sbals = |c: &Chunk| core::array::from_fn(|i| c.guest + (i * SBAL_SIZE) as u64);
        let mut more_outputs = heapless::Vec::new();
        for q in self.tx.iter().skip(1) {
            // At most three queues after queue 0: the push cannot fail.
            let _ = more_outputs.push(QueueAddresses {
                sbals: sbals(&q.sbals),
                slsb: q.slsb.guest,
            });
        }
        let (output_sbals, output_slsb) = match self.tx.first() {
            Some(q0) => (sbals(&q0.sbals), q0.slsb.guest),
            // `new` makes queue 0 always.
            None => ([0; QUEUE_BUFFERS], 0),
        };
        QueueSetParams {
            output_sbals,
            input_sbals: sbals(&self.in_sbals),
            output_slsb,
            input_slsb: self.in_slsb.guest,
            queue_indicator: self.queue_ind.guest,
            middle_indicator: self.middle_guest,
            global_indicator: self.global_guest,
            interrupt_immediately: self.cfg.interrupt_immediately,
            interrupt_cookie: 0,
            more_outputs,
            layer2: self.cfg.layer2,
            completion_queue: self.cq.as_ref().map(|cq| QueueAddresses {
                sbals: sbals(&cq.sbals),
                slsb: cq.slsb.guest,
            }),
        }
    }

    /// Output queues this queue set has (1 to 4).
    pub fn output_queues(&self) -> u8 {
        self.tx.len() as u8
    }

    /// The multicast queue: the highest-numbered output queue, when there are two or
    /// more (Linux's `multicast_outbound()`, `drivers/s390/cio/qdio.h`).
    pub fn multicast_queue(&self) -> Option<u8> {
        let n = self.output_queues();
        (n >= 2).then(|| n - 1)
    }

    /// The output queue a frame to `dest` goes on: queue 0 for unicast, the multicast
    /// queue for the rest ([`DriverError::NoMulticastQueue`] without one), and
    /// [`DriverError::InvalidDest`] for a destination not of its kind.
    #[inline]
    pub fn queue_for(&self, dest: &Dest) -> Result<u8, DriverError> {
        if self.cfg.layer2 {
            return Err(DriverError::WrongLayer);
        }
        if !dest.valid() {
            return Err(DriverError::InvalidDest);
        }
        if dest.is_unicast() {
            Ok(0)
        } else {
            self.multicast_queue().ok_or(DriverError::NoMulticastQueue)
        }
    }

    /// Whether a frame to `dest` may go on output queue `q`: the queue exists, and a
    /// multicast, broadcast or anycast frame goes on the multicast queue only (the
    /// fabric refuses it on a unicast queue, 0x27); unicast may go on any.
    #[inline]
    fn check_queue(&self, q: u8, dest: &Dest) -> Result<(), DriverError> {
        if self.cfg.layer2 {
            return Err(DriverError::WrongLayer);
        }
        if !dest.valid() || usize::from(q) >= self.tx.len() {
            return Err(DriverError::InvalidDest);
        }
        if !dest.is_unicast() && self.multicast_queue() != Some(q) {
            return Err(match self.multicast_queue() {
                None => DriverError::NoMulticastQueue,
                Some(_) => DriverError::InvalidDest,
            });
        }
        Ok(())
    }

    #[inline]
    fn txq(&self, q: u8) -> Result<&TxQueue, DriverError> {
        self.tx.get(usize::from(q)).ok_or(DriverError::InvalidDest)
    }

    #[inline]
    fn txq_mut(&mut self, q: u8) -> Result<&mut TxQueue, DriverError> {
        self.tx
            .get_mut(usize::from(q))
            .ok_or(DriverError::InvalidDest)
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

    /// The data slot of input buffer `n`: `n % rx_buffers`, a mask since `new` checked
    /// that `rx_buffers` is a power of two (a division by a value the compiler cannot
    /// see is an 8-bit `div`, tens of cycles on the receive path).
    #[inline(always)]
    fn rx_slot(&self, n: u8) -> usize {
        usize::from(n & self.cfg.rx_buffers.wrapping_sub(1))
    }

    /// The data slot output buffer `n` of queue `q` was last primed with (see
    /// [`next_free`](Self::next_free)).
    #[inline(always)]
    fn tx_slot(&self, q: u8, n: u8) -> u8 {
        self.tx.get(usize::from(q)).map_or(0, |tq| tq.slot(n))
    }

    fn in_sbal(&self, n: u8) -> Sbal {
        self.in_ring[usize::from(n) % QUEUE_BUFFERS]
    }

    #[inline]
    fn state(slsb: &Chunk, n: u8, order: Ordering) -> u8 {
        slsb.mem.load(usize::from(n) % QUEUE_BUFFERS, order)
    }

    #[inline]
    fn set_state(slsb: &Chunk, n: u8, s: SlsbState, order: Ordering) {
        slsb.mem.store(usize::from(n) % QUEUE_BUFFERS, s.0, order);
    }

    /// The SLSB state of output buffer `n` of queue 0.
    pub fn output_state(&self, n: u8) -> SlsbState {
        self.output_state_on(0, n)
    }

    /// The SLSB state of output buffer `n` of output queue `q` (0xA0, not initialised,
    /// for a queue that does not exist).
    pub fn output_state_on(&self, q: u8, n: u8) -> SlsbState {
        self.txq(q)
            .map_or(SlsbState::OUTPUT_NOT_INIT, |tq| tq.state(n))
    }

    /// The SLSB state of input buffer `n`.
    #[inline]
    pub fn input_state(&self, n: u8) -> SlsbState {
        SlsbState(Self::state(&self.in_slsb, n, Ordering::Acquire))
    }

    /// Hands input buffer `n` to the fabric: its data pages in its SBALEs, then 0x41.
    fn arm(&self, n: u8) {
        let sbal = self.in_sbal(n);
        let slot = self.rx_slot(n);
        let base = self.rx_data.guest + (slot * self.cfg.mfs.bytes()) as u64;
        // The MFS's elements, then (if room) an empty one that ends the list: the
        // fabric reads no further. Only the first `rx_rearm` of them: the rest hold
        // what the last arm of this buffer wrote.
        let k = self.cfg.mfs.rx_elements();
        let rewrite = self
            .rx_rearm
            .get(usize::from(n))
            .map_or(SBALES_PER_SBAL, |&r| usize::from(r));
        for i in 0..rewrite.min(k + 1).min(SBALES_PER_SBAL) {
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

    /// The elements [`arm`](Self::arm) writes into an input buffer's SBAL: the MFS's
    /// and, if room, the empty one that ends the list.
    fn arm_elements(cfg: &DriverConfig) -> u8 {
        (cfg.mfs.rx_elements() + 1).min(SBALES_PER_SBAL) as u8
    }

    /// Output buffers of queue 0 free to prime now.
    pub fn free_tx(&self) -> u8 {
        self.free_tx_on(0)
    }

    /// Output buffers of output queue `q` free to prime now (0 for a queue that does
    /// not exist).
    pub fn free_tx_on(&self, q: u8) -> u8 {
        self.txq(q)
            .map_or(0, |tq| self.cfg.tx_buffers.saturating_sub(tq.primed))
    }

    /// Primes one frame to `dest` into the next output buffer of its queue
    /// ([`queue_for`](Self::queue_for)); SIGA sends it. Returns the buffer's number
    /// on that queue.
    pub fn prime(&mut self, dest: impl Into<Dest>, packet: &[u8]) -> Result<u8, DriverError> {
        self.prime_frames(dest, &[packet])
    }

    /// Primes one frame to the multicast group `group` (cast 0x04) on the multicast
    /// queue: every member but this queue set gets a copy once SIGA sends it.
    pub fn prime_group(&mut self, group: IpAddr, packet: &[u8]) -> Result<u8, DriverError> {
        self.prime(Dest::Group(group), packet)
    }

    /// Primes one frame to the broadcast domain (cast 0x05, next hop 255.255.255.255)
    /// on the multicast queue: every queue set that switched broadcast on, but this
    /// one, gets a copy once SIGA sends it.
    pub fn prime_broadcast(&mut self, packet: &[u8]) -> Result<u8, DriverError> {
        self.prime(Dest::Broadcast(Ipv4Addr::BROADCAST), packet)
    }

    /// Primes several frames for one destination into one output buffer (as Linux's
    /// qeth packs packets that share next hop and VLAN, `qeth_l3_may_bulk`/`qeth_xmit`
    /// in `drivers/s390/net/qeth_core_main.c`), on the destination's queue. Each frame
    /// is a header and its packet; frames are split into elements at page boundaries of
    /// the buffer's data. The packets are copied in;
    /// [`prime_frames_with`](Self::prime_frames_with) lets the program write them in
    /// place instead.
    pub fn prime_frames(
        &mut self,
        dest: impl Into<Dest>,
        packets: &[&[u8]],
    ) -> Result<u8, DriverError> {
        let dest = dest.into();
        let q = self.queue_for(&dest)?;
        self.prime_frames_on(q, dest, packets)
    }

    /// As [`prime_frames`](Self::prime_frames), on output queue `q` chosen by the
    /// program: unicast frames may go on any queue (say, to spread flows over the
    /// unicast queues as Linux spreads its transmit queues), the others only on the
    /// multicast queue ([`DriverError::InvalidDest`] otherwise, as for a queue that
    /// does not exist).
    pub fn prime_frames_on(
        &mut self,
        q: u8,
        dest: impl Into<Dest>,
        packets: &[&[u8]],
    ) -> Result<u8, DriverError> {
        let dest = dest.into();
        self.check_queue(q, &dest)?;
        if let [packet] = packets {
            return self.prime_one(q, dest, packet);
        }
        let mut lens = heapless::Vec::<usize, SBALES_PER_SBAL>::new();
        for p in packets {
            lens.push(p.len()).map_err(|_| DriverError::TooLarge)?;
        }
        // Several frames (one went through `prime_one` above).
        let mut layout = TxLayout::default();
        let n = self.layout(q, &lens, &mut layout)?;
        let data = self.txq(q)?.data.mem;
        for (p, &at) in packets.iter().zip(layout.starts.iter()) {
            data.write(at + HEADER_SIZE, p);
        }
        self.commit(q, n, dest, &lens, &layout);
        Ok(n)
    }

    /// One frame to `dest` copied into the next buffer of output queue `q`, which the
    /// caller checked carries it ([`check_queue`](Self::check_queue), or `q` from
    /// [`queue_for`](Self::queue_for)): the common send, in straight line, without
    /// the frame lists of the general [`prime_frames_on`](Self::prime_frames_on).
    ///
    /// The frame is placed by [`place_one`](Self::place_one) and handed over by
    /// [`commit_one`](Self::commit_one), with no [`TxLayout`] in between (the same
    /// checks, elements and bytes as `layout` and `commit`: the tests compare them).
    #[inline]
    fn prime_one(&mut self, q: u8, dest: Dest, packet: &[u8]) -> Result<u8, DriverError> {
        let one = self.place_one(q, packet.len())?;
        self.txq(q)?.data.mem.write(one.slot + HEADER_SIZE, packet);
        self.commit_one(q, dest, packet.len(), &one);
        Ok(one.n)
    }

    /// Primes one frame of `len` packet bytes to `dest`, written in place (zero-copy
    /// transmit): `write` gets the packet's bytes in the next free output buffer of the
    /// destination's queue and fills them (they hold whatever the buffer held before).
    /// The driver then writes the frame's header and elements and hands the buffer to
    /// the fabric (0x62); SIGA sends it. Returns the buffer's number and what `write`
    /// returned.
    pub fn prime_with<R>(
        &mut self,
        dest: impl Into<Dest>,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<(u8, R), DriverError> {
        let dest = dest.into();
        let q = self.queue_for(&dest)?;
        match self.prime_routed_on(q, len, write, |_| Some(dest)) {
            Ok((n, r, _)) => Ok((n, r)),
            Err((_, e)) => Err(e),
        }
    }

    /// As [`prime_with`](Self::prime_with) on queue 0, the next hop read by `route`
    /// from the packet once written (the smoltcp device's transmit: the IP
    /// destination), sent unicast. When `route` finds none, the buffer is not handed
    /// over (it stays free) and the hop is `None`. When no frame of `len` bytes can be
    /// primed, `write` is given back unused, with the reason.
    // The smoltcp device's (src/phy.rs).
    #[cfg_attr(not(feature = "smoltcp"), allow(dead_code))]
    pub(crate) fn prime_routed<F, R>(
        &mut self,
        len: usize,
        write: F,
        route: impl FnOnce(&[u8]) -> Option<IpAddr>,
    ) -> Result<(u8, R, Option<IpAddr>), (F, DriverError)>
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        self.prime_routed_on(0, len, write, |p| route(p).map(Dest::Unicast))
            .map(|(n, r, d)| (n, r, d.map(|d| d.next_hop())))
    }

    /// [`prime_routed`](Self::prime_routed) on queue `q`, `route` giving the whole
    /// destination (checked against the queue once the packet is written: a
    /// destination the queue cannot carry leaves the buffer free, as `None` does).
    fn prime_routed_on<F, R>(
        &mut self,
        q: u8,
        len: usize,
        write: F,
        route: impl FnOnce(&[u8]) -> Option<Dest>,
    ) -> Result<(u8, R, Option<Dest>), (F, DriverError)>
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        // Placed and committed as `prime_one`'s, without the layout's lists (the
        // test `layout_one_matches_the_general_layout` says why they agree).
        let one = match self.place_one(q, len) {
            Ok(one) => one,
            Err(e) => return Err((write, e)),
        };
        let bytes = self.tx_bytes(q, one.slot + HEADER_SIZE, len);
        let r = write(bytes);
        let dest = route(bytes).filter(|d| self.check_queue(q, d).is_ok());
        if let Some(dest) = dest {
            self.commit_one(q, dest, len, &one);
        }
        Ok((one.n, r, dest))
    }

    /// The output buffer of queue 0 primed last (where [`resend`](Self::resend) put a
    /// frame it was refused again).
    pub fn last_primed(&self) -> u8 {
        self.last_primed_on(0)
    }

    /// The output buffer of output queue `q` primed last.
    pub fn last_primed_on(&self, q: u8) -> u8 {
        let next = self.txq(q).map_or(0, |tq| tq.next);
        (next + QUEUE_BUFFERS as u8 - 1) % QUEUE_BUFFERS as u8
    }

    /// Primes several frames for one destination into one output buffer of its queue,
    /// each written in place: `write(i, bytes)` fills frame `i`'s `lens[i]` packet
    /// bytes, in order.
    pub fn prime_frames_with(
        &mut self,
        dest: impl Into<Dest>,
        lens: &[usize],
        mut write: impl FnMut(usize, &mut [u8]),
    ) -> Result<u8, DriverError> {
        let dest = dest.into();
        let q = self.queue_for(&dest)?;
        let mut layout = TxLayout::default();
        let n = self.layout(q, lens, &mut layout)?;
        for (i, (&at, &len)) in layout.starts.iter().zip(lens).enumerate() {
            write(i, self.tx_bytes(q, at + HEADER_SIZE, len));
        }
        self.commit(q, n, dest, lens, &layout);
        Ok(n)
    }

    /// The `len` bytes at `at` of output queue `q`'s data, borrowed mutably.
    ///
    /// Called only on bytes [`layout`](Self::layout) placed in the slot of the queue's
    /// next output buffer, which the program owns: its state is not 0x62 (checked
    /// there), so the fabric does not read it, and no other buffer's elements point
    /// into it (each buffer's frames lie in its own slot). `&mut self` keeps the borrow
    /// unique.
    fn tx_bytes(&mut self, q: u8, at: usize, len: usize) -> &mut [u8] {
        match self.txq(q).ok().and_then(|tq| tq.data.mem.sub(at, len)) {
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

    /// Lays frames of `lens` packet bytes out in the slot of output queue `q`'s next
    /// free buffer: each starts where the last ended, except that a header never
    /// straddles a page (the fabric needs it whole in the frame's first element), and
    /// each is cut into elements at page boundaries. Into the caller's `layout`
    /// (empty): returned by value, its 400 bytes were copied twice a send.
    fn layout(&self, q: u8, lens: &[usize], layout: &mut TxLayout) -> Result<u8, DriverError> {
        let (tq, n, index, slot) = self.next_free(q)?;
        if lens.is_empty() || lens.iter().any(|&l| l > usize::from(u16::MAX)) {
            return Err(DriverError::InvalidFrame);
        }
        layout.slot = index;
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
            // One element per page the frame touches, cut at page boundaries: room
            // for them checked once (what a failing push would say), each written
            // with its fragment position in the one pass.
            let count = (frame_end - 1) / PAGE - off / PAGE + 1;
            if layout.elements.len() + count > SBALES_PER_SBAL {
                return Err(DriverError::TooLarge);
            }
            if count == 1 {
                // The frame lies in one page (packed small frames): its one element,
                // what the loop below writes for it, without the loop.
                let _ = layout.elements.push(Sbale {
                    eflags: Fragment::None.bits(),
                    addr: tq.data.guest + off as u64,
                    length: (frame_end - off) as u32,
                    ..Sbale::default()
                });
                off = frame_end;
                continue;
            }
            let mut at = off;
            for i in 0..count {
                let end = ((at / PAGE + 1) * PAGE).min(frame_end);
                // Room checked above: the push cannot fail.
                let _ = layout.elements.push(Sbale {
                    eflags: Fragment::for_element(i, count).bits(),
                    addr: tq.data.guest + at as u64,
                    length: (end - at) as u32,
                    ..Sbale::default()
                });
                at = end;
            }
            off = frame_end;
        }
        if let Some(last) = layout.elements.last_mut() {
            last.eflags |= Eflags::LAST_ENTRY.bits();
        }
        Ok(n)
    }

    /// Output queue `q`, its next buffer and where that buffer's slot starts in the
    /// queue's data, if the program may prime it: fewer than `tx_buffers` primed, not
    /// owned by the fabric, and with a completion queue its data not held by a
    /// pending buffer and room in the pending list. The checks every layout starts
    /// with.
    ///
    /// Returns the queue, the buffer, the slot's index and its offset in the data.
    /// Always inlined into its two callers, the layouts: out of line, its result came
    /// back through the stack (+16 instructions a send).
    #[inline(always)]
    fn next_free(&self, q: u8) -> Result<(&TxQueue, u8, u8, usize), DriverError> {
        let tq = self.txq(q)?;
        if tq.primed >= self.cfg.tx_buffers {
            return Err(DriverError::NoFreeBuffer);
        }
        let n = tq.next;
        if tq.state(n).owned_by_fabric() {
            return Err(DriverError::NoFreeBuffer);
        }
        // The slot: the one the buffer before used, if the fabric has delivered that
        // buffer (0xA1: its data is free, and still in this core's cache), else the
        // one after it. Buffers primed before a SIGA so take consecutive slots (at
        // most `tx_buffers` of them, so distinct), and a buffer refused (0xAF) or
        // pending (0xA3) keeps its slot until the round comes back to it: at least
        // `tx_buffers - 1` primes later, as with a fixed slot per buffer. A stream of
        // one-buffer SIGAs writes one slot over and over, not `tx_buffers` in turn
        // (`cycle/iqdio_zc/57344`: 0.9 of the time on a 1 MiB L2).
        // The chosen slot's QAOB is looked up once: on reuse, the one just checked.
        let before = prev(n);
        let last = tq.slot(before);
        let reused = (tq.state(before) == SlsbState::OUTPUT_EMPTY)
            .then(|| self.qaob_slot(q, last))
            .filter(|qaob| !qaob.is_some_and(|(cq, i)| cq.is_held(i)));
        let (slot, qaob) = match reused {
            Some(qaob) => (last, qaob),
            None => {
                let after = last.wrapping_add(1) & self.cfg.tx_buffers.wrapping_sub(1);
                (after, self.qaob_slot(q, after))
            }
        };
        if let Some((cq, i)) = qaob {
            // The slot's data belongs to a pending buffer until its QAOB completes.
            if cq.is_held(i) {
                return Err(DriverError::NoFreeBuffer);
            }
            if cq.held_count() + self.writeq_primed() >= PENDING_PER_QUEUE_SET {
                return Err(DriverError::PendingFull);
            }
        }
        Ok((tq, n, slot, usize::from(slot) * self.cfg.mfs.bytes()))
    }

    /// [`layout`](Self::layout) of one frame of `len` packet bytes, in straight-line
    /// code ([`place_one`](Self::place_one) and [`OneFrame::element`], which every
    /// one-frame send uses). The same checks, in the same order, and the same elements
    /// as the general layout: `layout_one_matches_the_general_layout` compares the two.
    #[cfg(test)]
    fn layout_one(&self, q: u8, len: usize, layout: &mut TxLayout) -> Result<u8, DriverError> {
        let one = self.place_one(q, len)?;
        // An empty `layout` (the callers' contract) has room for 16 of each: no push
        // below fails.
        let _ = layout.starts.push(one.slot);
        let k = one.count();
        for i in 0..k {
            let _ = layout.elements.push(one.element(i, k));
        }
        Ok(one.n)
    }

    /// The general layout's checks for one frame of `len` packet bytes: it starts the
    /// (page-aligned) slot of the queue's next free buffer, so its header never
    /// straddles a page, and takes one element for each page it touches, cut at the
    /// page boundaries ([`OneFrame::element`]).
    #[inline(always)]
    fn place_one(&self, q: u8, len: usize) -> Result<OneFrame, DriverError> {
        let bytes = HEADER_SIZE + len;
        let (tq, n, index, slot) = self.next_free(q)?;
        if len > usize::from(u16::MAX) {
            return Err(DriverError::InvalidFrame);
        }
        if bytes > self.cfg.mfs.bytes() {
            return Err(DriverError::TooLarge);
        }
        Ok(OneFrame {
            n,
            index,
            slot,
            addr: tq.data.guest + slot as u64,
            bytes,
        })
    }

    /// The header of a frame of `len` packet bytes at `at` of the output data `data`
    /// (its packet written after it): a layer-3 header naming `dest`'s next hop and
    /// cast type, or the layer-2 header of the Ethernet frame there.
    #[inline(always)]
    fn frame_header(
        data: &GuestSlice,
        framing: Framing,
        at: usize,
        len: usize,
    ) -> [u8; HEADER_SIZE] {
        // The layouts checked every length against u16::MAX.
        match framing {
            Framing::Layer3(dest) => L3Header {
                cast: dest.cast(),
                length: len as u16,
                vlan: None,
                next_hop: dest.next_hop(),
            }
            .encode(),
            Framing::Layer2 => {
                // The frame's first bytes, as written in place.
                let mut prefix = [0u8; ETH_ROUTING];
                let k = len.min(ETH_ROUTING);
                data.read(at + HEADER_SIZE, &mut prefix[..k]);
                // The layer-2 callers checked the frame is at least 14 bytes; should
                // it not be, a unicast header with its length goes out and the
                // fabric refuses the frame with its code.
                Self::l2_header(&prefix[..k], len)
                    .unwrap_or(L2Header {
                        flags: MacCast::Unicast.flag(),
                        pkt_length: len as u16,
                        vlan_tci: None,
                        seq_no: 0,
                    })
                    .encode()
            }
        }
    }

    /// Writes the frames' headers (next hop and cast type of `dest`) and the buffer's
    /// elements, and hands buffer `n` of output queue `q` to the fabric (0x62): the
    /// packets are in place by now.
    fn commit(
        &mut self,
        q: u8,
        n: u8,
        dest: impl Into<Framing>,
        lens: &[usize],
        layout: &TxLayout,
    ) {
        let framing = dest.into();
        let Ok(tq) = self.txq_mut(q) else {
            return;
        };
        match framing {
            // The frames of one buffer share their destination: one header encoded,
            // each frame's with its own length.
            Framing::Layer3(_) => {
                let mut header = Self::frame_header(&tq.data.mem, framing, 0, 0);
                for (&len, &at) in lens.iter().zip(layout.starts.iter()) {
                    // `layout` checked every length against u16::MAX.
                    L3Header::encode_length(&mut header, len as u16);
                    tq.data.mem.write(at, &header);
                }
            }
            Framing::Layer2 => {
                for (&len, &at) in lens.iter().zip(layout.starts.iter()) {
                    let header = Self::frame_header(&tq.data.mem, framing, at, len);
                    tq.data.mem.write(at, &header);
                }
            }
        }
        // Only the elements in use: the fabric reads up to the first LAST_ENTRY. (The
        // layout holds at most 16: `take` changes nothing but lets the compiler see
        // each index in range, without the store's own check.)
        let sbal = tq.sbal(n);
        for (i, e) in layout.elements.iter().take(SBALES_PER_SBAL).enumerate() {
            sbal.store(i, e);
        }
        tq.hand_over(n, layout.slot);
    }

    /// [`commit`](Self::commit) of the one frame [`place_one`](Self::place_one) placed:
    /// its header, its one or two elements, then buffer `one.n` to the fabric (0x62);
    /// the packet is in place by now.
    #[inline(always)]
    fn commit_one(&mut self, q: u8, dest: impl Into<Framing>, len: usize, one: &OneFrame) {
        let framing = dest.into();
        let Ok(tq) = self.txq_mut(q) else {
            return;
        };
        let header = Self::frame_header(&tq.data.mem, framing, one.slot, len);
        tq.data.mem.write(one.slot, &header);
        let sbal = tq.sbal(one.n);
        if one.bytes <= PAGE {
            // The small frame: one element holding it whole (`element(0, 1)`), without
            // the loop's arithmetic (the loop for every frame cost a 64 B send 8 more
            // instructions, callgrind).
            let whole = Sbale {
                eflags: Fragment::None.bits() | Eflags::LAST_ENTRY.bits(),
                length: one.bytes as u32,
                addr: one.addr,
                ..Sbale::default()
            };
            sbal.store(0, &whole);
        } else {
            let k = one.count();
            for i in 0..k {
                sbal.store(i, &one.element(i, k));
            }
        }
        tq.hand_over(one.n, one.index);
    }

    /// Primes one frame to `dest` and sends it with SIGA write on its queue (the mask
    /// naming that queue alone). A busy SIGA (cc2) is retried a bounded number of
    /// times, then returned. Buffers primed earlier, on any queue, are flushed first.
    pub fn send<S: Siga + ?Sized>(
        &mut self,
        siga: &S,
        dest: impl Into<Dest>,
        packet: &[u8],
    ) -> Result<(), SendError> {
        let dest = dest.into();
        let q = self.queue_for(&dest).map_err(SendError::Driver)?;
        self.flush_pending(siga)?;
        // `queue_for` chose a queue that carries `dest`.
        let n = self.prime_one(q, dest, packet).map_err(SendError::Driver)?;
        self.siga_write_on(siga, q, n)
    }

    /// Sends one frame to the multicast group `group` ([`prime_group`](Self::prime_group),
    /// then SIGA write on the multicast queue). `Ok` once the fabric took the buffer
    /// (0xA1): it reached every member that had room; a member that was full is
    /// skipped and counted there and in this queue set's counters (`group_skipped`),
    /// not reported here, as a LAN's multicast does not tell the sender either.
    pub fn send_group<S: Siga + ?Sized>(
        &mut self,
        siga: &S,
        group: IpAddr,
        packet: &[u8],
    ) -> Result<(), SendError> {
        self.send(siga, Dest::Group(group), packet)
    }

    /// Sends one frame to the broadcast domain, as [`send_group`](Self::send_group)
    /// does to a group.
    pub fn send_broadcast<S: Siga + ?Sized>(
        &mut self,
        siga: &S,
        packet: &[u8],
    ) -> Result<(), SendError> {
        self.send(siga, Dest::Broadcast(Ipv4Addr::BROADCAST), packet)
    }

    /// The layer-2 header of an Ethernet frame of `len` bytes whose first bytes (up to
    /// 18) are `prefix`: what Linux's `qeth_l2_fill_header` writes. `None` if the frame
    /// is shorter than 14 bytes or longer than 65535.
    fn l2_header(prefix: &[u8], len: usize) -> Option<L2Header> {
        let mut h = L2Header::for_frame(prefix)?;
        h.pkt_length = u16::try_from(len).ok()?;
        Some(h)
    }

    /// The destination MAC of an Ethernet frame: [`DriverError::InvalidFrame`] if it is
    /// shorter than 14 bytes.
    fn eth_dest(frame: &[u8]) -> Result<Mac, DriverError> {
        let mut dest = [0u8; 6];
        if frame.len() < ETH_MIN {
            return Err(DriverError::InvalidFrame);
        }
        dest.copy_from_slice(frame.get(..6).ok_or(DriverError::InvalidFrame)?);
        Ok(dest)
    }

    /// The output queue an Ethernet frame to `dest` goes on, on a layer-2 driver: queue
    /// 0 for a unicast MAC, the multicast queue for broadcast and group MACs
    /// ([`DriverError::NoMulticastQueue`] without one), as Linux's qeth does for a
    /// HiperSockets device (`qeth_iqd_select_queue`,
    /// `drivers/s390/net/qeth_core_main.c`, from `qeth_get_ether_cast_type`).
    /// [`DriverError::WrongLayer`] on a layer-3 driver.
    pub fn eth_queue_for(&self, dest: &Mac) -> Result<u8, DriverError> {
        if !self.cfg.layer2 {
            return Err(DriverError::WrongLayer);
        }
        match MacCast::of(dest) {
            MacCast::Unicast => Ok(0),
            MacCast::Multicast | MacCast::Broadcast => {
                self.multicast_queue().ok_or(DriverError::NoMulticastQueue)
            }
        }
    }

    /// Whether a frame to `dest` may go on output queue `q` of a layer-2 driver: the
    /// queue exists, and broadcast and group MACs only on the multicast queue (the
    /// fabric refuses them elsewhere, 0x27).
    fn check_eth_queue(&self, q: u8, dest: &Mac) -> Result<(), DriverError> {
        if !self.cfg.layer2 {
            return Err(DriverError::WrongLayer);
        }
        if usize::from(q) >= self.tx.len() {
            return Err(DriverError::InvalidDest);
        }
        if MacCast::of(dest) != MacCast::Unicast && self.multicast_queue() != Some(q) {
            return Err(match self.multicast_queue() {
                None => DriverError::NoMulticastQueue,
                Some(_) => DriverError::InvalidDest,
            });
        }
        Ok(())
    }

    /// Layer 2: primes the Ethernet frame `frame` (destination MAC, source MAC, an
    /// optional 802.1Q tag, EtherType, payload) behind the layer-2 header Linux's
    /// `qeth_l2_fill_header` writes for it, on the queue its destination MAC chooses
    /// ([`eth_queue_for`](Self::eth_queue_for)). Returns the queue and the buffer's
    /// number on it.
    pub fn prime_eth(&mut self, frame: &[u8]) -> Result<(u8, u8), DriverError> {
        let q = self.eth_queue_for(&Self::eth_dest(frame)?)?;
        self.prime_eth_on(q, frame).map(|n| (q, n))
    }

    /// As [`prime_eth`](Self::prime_eth), on output queue `q` chosen by the program
    /// (unicast MACs on any queue, broadcast and group MACs only on the multicast
    /// queue).
    pub fn prime_eth_on(&mut self, q: u8, frame: &[u8]) -> Result<u8, DriverError> {
        self.check_eth_queue(q, &Self::eth_dest(frame)?)?;
        let mut layout = TxLayout::default();
        let n = self.layout(q, &[frame.len()], &mut layout)?;
        let at = layout.starts.first().copied().unwrap_or(0);
        self.txq(q)?.data.mem.write(at + HEADER_SIZE, frame);
        self.commit(q, n, Framing::Layer2, &[frame.len()], &layout);
        Ok(n)
    }

    /// Layer 2: primes one Ethernet frame of `len` bytes written in place (zero-copy
    /// transmit): `write` fills the frame in the next free buffer of queue 0, then the
    /// destination MAC it wrote chooses the queue. A unicast frame stays where it is; a
    /// broadcast or group frame moves (one copy inside the partition's memory) to the
    /// multicast queue's next buffer. `Err` gives `write` back unused when no frame of
    /// `len` bytes can be primed on queue 0; otherwise `write` has run and its result
    /// comes with the (queue, buffer) primed, or why none was (a frame shorter than 14
    /// bytes, no multicast queue or no free buffer on it: the buffer of queue 0 stays
    /// free).
    #[allow(clippy::type_complexity)]
    pub fn prime_eth_with<F, R>(
        &mut self,
        len: usize,
        write: F,
    ) -> Result<(R, Result<(u8, u8), DriverError>), (F, DriverError)>
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        if !self.cfg.layer2 {
            return Err((write, DriverError::WrongLayer));
        }
        let mut layout = TxLayout::default();
        let n = match self.layout(0, &[len], &mut layout) {
            Ok(n) => n,
            Err(e) => return Err((write, e)),
        };
        let at = layout.starts.first().copied().unwrap_or(0);
        let bytes = self.tx_bytes(0, at + HEADER_SIZE, len);
        let r = write(bytes);
        let dest = match Self::eth_dest(bytes) {
            Ok(d) => d,
            Err(e) => return Ok((r, Err(e))),
        };
        let q = match self.eth_queue_for(&dest) {
            Ok(q) => q,
            Err(e) => return Ok((r, Err(e))),
        };
        if q == 0 {
            self.commit(0, n, Framing::Layer2, &[len], &layout);
            return Ok((r, Ok((0, n))));
        }
        let mut moved = TxLayout::default();
        let m = match self.layout(q, &[len], &mut moved) {
            Ok(m) => m,
            Err(e) => return Ok((r, Err(e))),
        };
        let to = moved.starts.first().copied().unwrap_or(0);
        match (self.txq(0), self.txq(q)) {
            (Ok(from), Ok(into)) => GuestSlice::copy(
                &from.data.mem,
                at + HEADER_SIZE,
                &into.data.mem,
                to + HEADER_SIZE,
                len,
            ),
            (Err(e), _) | (_, Err(e)) => return Ok((r, Err(e))),
        }
        self.commit(q, m, Framing::Layer2, &[len], &moved);
        Ok((r, Ok((q, m))))
    }

    /// Layer 2: primes the Ethernet frame `frame` ([`prime_eth`](Self::prime_eth)) and
    /// sends it with SIGA write on its queue, as [`send`](Self::send) does a layer-3
    /// frame. A broadcast or group frame is `Ok` once the fabric took it (it reached
    /// every receiver that had room).
    pub fn send_eth<S: Siga + ?Sized>(&mut self, siga: &S, frame: &[u8]) -> Result<(), SendError> {
        let dest = Self::eth_dest(frame).map_err(SendError::Driver)?;
        let q = self.eth_queue_for(&dest).map_err(SendError::Driver)?;
        self.flush_pending(siga)?;
        let n = self.prime_eth_on(q, frame).map_err(SendError::Driver)?;
        self.siga_write_on(siga, q, n)
    }

    /// Flushes the buffers primed earlier, on every queue, before a send primes its
    /// own.
    pub(crate) fn flush_pending<S: Siga + ?Sized>(&mut self, siga: &S) -> Result<(), SendError> {
        loop {
            // Nothing primed, the common case, is found without the sum (a walk that
            // stops at the first queue with a primed buffer).
            if self.tx.iter().all(|tq| tq.primed == 0) {
                return Ok(());
            }
            let before = self.primed_total();
            // Earlier primed buffers go first, in ring order; a flush that ended early
            // leaves some primed, and another sends them.
            self.flush(siga).map_err(SendError::Siga)?;
            if self.primed_total() == before {
                // cc0, yet no queue moved: as busy, for the caller to retry.
                return Err(SendError::Siga(SigaStatus::of_error(SigaError::Busy)));
            }
        }
    }

    /// Buffers primed since the last SIGA, over every output queue.
    #[inline]
    fn primed_total(&self) -> usize {
        self.tx.iter().map(|tq| usize::from(tq.primed)).sum()
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
        dest: impl Into<Dest>,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, (Option<R>, SendError)> {
        let dest = dest.into();
        let q = self
            .queue_for(&dest)
            .map_err(|e| (None, SendError::Driver(e)))?;
        self.flush_pending(siga).map_err(|e| (None, e))?;
        // `prime_with` on the queue chosen above.
        let (n, r) = match self.prime_routed_on(q, len, write, |_| Some(dest)) {
            Ok((n, r, _)) => (n, r),
            Err((_, e)) => return Err((None, SendError::Driver(e))),
        };
        match self.siga_write_on(siga, q, n) {
            Ok(()) => Ok(r),
            Err(e) => Err((Some(r), e)),
        }
    }

    /// Sends the frame of output buffer `n` of queue 0 again, after the fabric refused
    /// it (0xAF): the frame (header and packet) moves into the next free output buffer
    /// with one copy inside the partition's memory, and SIGA write sends it. For the
    /// retry of a frame written in place, which the program no longer holds.
    pub fn resend<S: Siga + ?Sized>(&mut self, siga: &S, n: u8) -> Result<(), SendError> {
        self.resend_on(siga, 0, n)
    }

    /// [`resend`](Self::resend) for output buffer `n` of output queue `q`: the frame
    /// moves into the next free buffer of the same queue, with the cast type and next
    /// hop its header names.
    pub fn resend_on<S: Siga + ?Sized>(&mut self, siga: &S, q: u8, n: u8) -> Result<(), SendError> {
        if self.output_state_on(q, n) != SlsbState::OUTPUT_ERROR {
            return Err(SendError::Driver(DriverError::InvalidFrame));
        }
        self.flush_pending(siga)?;
        let data = self.txq(q).map_err(SendError::Driver)?.data.mem;
        // The refused buffer's first frame, as the driver laid it out: its header in
        // the slot's first bytes (a slot starts page-aligned) and its packet after.
        let slot = usize::from(self.tx_slot(q, n)) * self.cfg.mfs.bytes();
        let mut raw = [0u8; HEADER_SIZE];
        data.read(slot, &mut raw);
        let (framing, len) = if self.cfg.layer2 {
            // The queue carried it when it was primed (`prime_eth_on` checked), and the
            // header is rewritten from the frame as then.
            let header = L2Header::decode(&raw)
                .filter(|h| usize::from(h.pkt_length) >= ETH_MIN)
                .ok_or(SendError::Driver(DriverError::InvalidFrame))?;
            (Framing::Layer2, usize::from(header.pkt_length))
        } else {
            let header =
                L3Header::decode(&raw).map_err(|_| SendError::Driver(DriverError::InvalidFrame))?;
            let dest =
                Dest::from_header(&header).ok_or(SendError::Driver(DriverError::InvalidFrame))?;
            self.check_queue(q, &dest).map_err(SendError::Driver)?;
            (Framing::Layer3(dest), usize::from(header.length))
        };
        // Placed as `prime_routed_on` places it.
        let one = self.place_one(q, len).map_err(SendError::Driver)?;
        GuestSlice::copy(
            &data,
            slot + HEADER_SIZE,
            &data,
            one.slot + HEADER_SIZE,
            len,
        );
        self.commit_one(q, framing, len, &one);
        self.siga_write_on(siga, q, one.n)
    }

    /// SIGA write naming output queue `q` alone, for its buffer `n`, just primed; its
    /// outcome.
    ///
    /// With a completion queue, on a WRITEQ queue: SIGA WRITEQ with the buffer's QAOB;
    /// a buffer left PENDING (0xA3) is taken (`Ok`), its data held until
    /// [`complete`](Self::complete) reports it.
    #[inline(always)]
    pub(crate) fn siga_write_on<S: Siga + ?Sized>(
        &mut self,
        siga: &S,
        q: u8,
        n: u8,
    ) -> Result<(), SendError> {
        if let Some(i) = self.qaob_index(q, n) {
            return match self.writeq(siga, q, n, i).map_err(SendError::Siga)? {
                SlsbState::OUTPUT_EMPTY | SlsbState::OUTPUT_PENDING => Ok(()),
                _ => Err(SendError::Refused(self.reason_on(q, n))),
            };
        }
        self.issue(siga, SigaFunction::Write, TxQueue::mask(q))
            .map_err(SendError::Siga)?;
        let tq = self.txq_mut(q).map_err(SendError::Driver)?;
        tq.primed = 0;
        match tq.state(n) {
            SlsbState::OUTPUT_EMPTY => Ok(()),
            _ => Err(SendError::Refused(self.reason_on(q, n))),
        }
    }

    /// Whether output queue `q` sends with SIGA WRITEQ: a completion queue, and `q` a
    /// unicast queue (not the multicast queue, where the fabric refuses WRITEQ; Linux
    /// attaches no QAOB there either, `qeth_flush_buffers`).
    #[inline]
    pub fn uses_writeq(&self, q: u8) -> bool {
        self.cq.is_some() && usize::from(q) < self.tx.len() && self.multicast_queue() != Some(q)
    }

    /// The QAOB of output buffer `n` of queue `q`, when that queue sends with WRITEQ.
    #[inline]
    fn qaob_index(&self, q: u8, n: u8) -> Option<usize> {
        // Without a completion queue, nothing to look up (the send's common case).
        self.cq.as_ref()?;
        self.qaob_slot(q, self.tx_slot(q, n)).map(|(_, i)| i)
    }

    /// The completion queue and the QAOB of data slot `slot` of queue `q` (one per
    /// slot), when that queue sends with WRITEQ.
    #[inline]
    fn qaob_slot(&self, q: u8, slot: u8) -> Option<(&Cq, usize)> {
        if !self.uses_writeq(q) {
            return None;
        }
        let tx = usize::from(self.cfg.tx_buffers);
        let i = usize::from(q) * tx + usize::from(slot);
        self.cq.as_ref().filter(|cq| i < cq.count).map(|cq| (cq, i))
    }

    /// Buffers primed (not yet sent) on the WRITEQ queues.
    fn writeq_primed(&self) -> usize {
        (0..self.tx.len() as u8)
            .filter(|&q| self.uses_writeq(q))
            .filter_map(|q| self.tx.get(usize::from(q)))
            .map(|tq| usize::from(tq.primed))
            .sum()
    }

    /// SIGA WRITEQ for the oldest primed buffer of queue `q`, which is `n`, with QAOB
    /// `i`: one buffer per SIGA. Returns the buffer's state after it (0xA1, 0xA3, 0xAF,
    /// or still 0x62 when the SIGA ended before it); a pending buffer's slot is held.
    fn writeq<S: Siga + ?Sized>(
        &mut self,
        siga: &S,
        q: u8,
        n: u8,
        i: usize,
    ) -> Result<SlsbState, SigaStatus> {
        let addr = self.cq.as_ref().map_or(0, |cq| cq.qaob_addr(i));
        let mut tries = 0;
        loop {
            let status = siga.siga_writeq(self.cfg.subchannel, TxQueue::mask(q), addr);
            if status.is_done() {
                break;
            }
            if !status.is_busy() || tries >= 1000 {
                return Err(status);
            }
            tries += 1;
            core::hint::spin_loop();
        }
        let state = self.output_state_on(q, n);
        if state != SlsbState::OUTPUT_PRIMED
            && let Ok(tq) = self.txq_mut(q)
        {
            tq.primed = tq.primed.saturating_sub(1);
        }
        if state == SlsbState::OUTPUT_PENDING
            && let Some(cq) = self.cq.as_mut()
        {
            cq.held |= 1u128 << i;
            if let Some(s) = cq.sent_from.get_mut(i) {
                *s = n;
            }
            cq.counters.pending += 1;
        }
        Ok(state)
    }

    /// Sends the buffers primed on the WRITEQ queues, one SIGA WRITEQ each, oldest
    /// first, into `report` (positions as [`flush`](Self::flush) counts them). A SIGA
    /// that fails (busy past the retries, cc1, cc3) ends it: `Err` if it was the first,
    /// else `Ok(true)`: the buffers not reached stay primed and count in
    /// `report.pending`.
    fn flush_writeq<S: Siga + ?Sized>(
        &mut self,
        siga: &S,
        report: &mut FlushReport,
    ) -> Result<bool, SigaStatus> {
        let mut position = 0u8;
        let mut handled = 0u32;
        let mut stopped = false;
        for q in 0..self.tx.len() as u8 {
            let primed = self.tx.get(usize::from(q)).map_or(0, |tq| tq.primed);
            if !self.uses_writeq(q) {
                position = position.wrapping_add(primed);
                continue;
            }
            if stopped {
                report.pending += primed;
                continue;
            }
            for _ in 0..primed {
                let Some(n) = self.tx.get(usize::from(q)).map(|tq| tq.primed_buffer(0)) else {
                    break;
                };
                let Some(i) = self.qaob_index(q, n) else {
                    break;
                };
                let state = match self.writeq(siga, q, n, i) {
                    Ok(state) => state,
                    Err(status) if handled == 0 => return Err(status),
                    Err(_) => {
                        stopped = true;
                        SlsbState::OUTPUT_PRIMED
                    }
                };
                handled += 1;
                match state {
                    SlsbState::OUTPUT_EMPTY => report.delivered += 1,
                    // At most 128 buffers over all queues: the pushes cannot fail.
                    SlsbState::OUTPUT_PENDING => {
                        let _ = report.went_pending.push(position);
                    }
                    SlsbState::OUTPUT_PRIMED => {
                        // The SIGA ended before it: it and the rest stay primed.
                        let left = self.tx.get(usize::from(q)).map_or(0, |tq| tq.primed);
                        report.pending += left;
                        position = position.wrapping_add(left);
                        break;
                    }
                    _ => {
                        let _ = report.refused.push((position, self.reason_on(q, n)));
                    }
                }
                position = position.wrapping_add(1);
            }
        }
        Ok(stopped)
    }

    /// Takes the completion queue's buffers the fabric posted (0x82), in ring order:
    /// for each QAOB address they announce (Linux's `qeth_qdio_cq_handler`: elements
    /// until one with address 0), reads its `aorc`, frees the pending buffer's data
    /// and calls `f` with the [`Completion`]; then re-arms the buffer (0x41). An entry
    /// naming no pending QAOB of this driver is ignored and counted
    /// ([`CqCounters::bad_entries`]). Returns the completions reported; 0 without a
    /// completion queue.
    ///
    /// The fabric signals this queue set's indicators (and raises its interrupt as for
    /// a delivery) when it posts: call this where [`receive`](Self::receive) is called.
    pub fn complete(&mut self, mut f: impl FnMut(&Completion)) -> usize {
        let tx = usize::from(self.cfg.tx_buffers).max(1);
        let Some(cq) = self.cq.as_mut() else {
            return 0;
        };
        let mut reported = 0;
        loop {
            let n = cq.next;
            // Acquire pairs with the fabric's Release store of 0x82: the elements and
            // the QAOBs' codes are visible.
            let state = SlsbState(Self::state(&cq.slsb, n, Ordering::Acquire));
            if state == SlsbState::INPUT_PRIMED {
                let sbal = cq.ring[usize::from(n) % QUEUE_BUFFERS];
                for e in 0..SBALES_PER_SBAL {
                    let addr = sbal.load(e).addr;
                    if addr == 0 {
                        break;
                    }
                    let i = addr
                        .checked_sub(cq.qaobs.guest)
                        .filter(|off| off % qaob::QAOB_SIZE as u64 == 0)
                        .and_then(|off| usize::try_from(off / qaob::QAOB_SIZE as u64).ok())
                        .filter(|&i| i < cq.count && cq.is_held(i));
                    let Some(i) = i else {
                        cq.counters.bad_entries += 1;
                        continue;
                    };
                    let mut aorc = [0u8];
                    cq.qaobs
                        .mem
                        .read(i * qaob::QAOB_SIZE + qaob::AORC, &mut aorc);
                    cq.held &= !(1u128 << i);
                    let c = Completion {
                        queue: (i / tx) as u8,
                        buffer: cq.sent_from.get(i).copied().unwrap_or(0),
                        aorc: aorc[0],
                    };
                    if c.delivered() {
                        cq.counters.completed += 1;
                    } else {
                        cq.counters.completed_with_error += 1;
                    }
                    reported += 1;
                    f(&c);
                }
                cq.counters.cq_buffers += 1;
            } else if state == SlsbState::INPUT_ERROR {
                cq.counters.error_buffers += 1;
            } else {
                return reported;
            }
            // Empty again for the fabric's next post, then armed: Release pairs with
            // its Acquire load of 0x41.
            cq.ring[usize::from(n) % QUEUE_BUFFERS].store(0, &Sbale::default());
            Self::set_state(&cq.slsb, n, SlsbState::INPUT_EMPTY, Ordering::Release);
            cq.next = (n + 1) % QUEUE_BUFFERS as u8;
        }
    }

    /// Whether the completion queue's next buffer holds completions (or an error) to
    /// take with [`complete`](Self::complete).
    pub fn has_completions(&self) -> bool {
        self.cq.as_ref().is_some_and(|cq| {
            let s = SlsbState(Self::state(&cq.slsb, cq.next, Ordering::Acquire));
            s == SlsbState::INPUT_PRIMED || s == SlsbState::INPUT_ERROR
        })
    }

    /// Buffers sent with WRITEQ that are pending (0xA3) and not yet reported complete:
    /// their data slots are held.
    pub fn pending_tx(&self) -> usize {
        self.cq.as_ref().map_or(0, Cq::held_count)
    }

    /// The completion queue's counters (all zero without one).
    pub fn cq_counters(&self) -> CqCounters {
        self.cq
            .as_ref()
            .map_or(CqCounters::default(), |cq| cq.counters)
    }

    /// The guest address of the QAOB output buffer `n` of queue `q` is sent with, when
    /// that queue sends with WRITEQ (for tests and tools that look at it).
    pub fn qaob_address(&self, q: u8, n: u8) -> Option<u64> {
        let i = self.qaob_index(q, n)?;
        self.cq.as_ref().map(|cq| cq.qaob_addr(i))
    }

    /// SIGA with queue mask `mask` until it is not busy (bounded): `Err` with what it
    /// returned otherwise.
    fn issue<S: Siga + ?Sized>(
        &self,
        siga: &S,
        f: SigaFunction,
        mask: u32,
    ) -> Result<(), SigaStatus> {
        let mut tries = 0;
        loop {
            let status = siga.siga(self.cfg.subchannel, f, mask);
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

    /// The sbalf15 reason of a refused output buffer of queue 0.
    pub fn reason(&self, n: u8) -> Reason {
        self.reason_on(0, n)
    }

    /// The sbalf15 reason of refused output buffer `n` of output queue `q`.
    pub fn reason_on(&self, q: u8, n: u8) -> Reason {
        let code = self
            .txq(q)
            .map_or(0, |tq| tq.sbal(n).load(Sbale::ERROR_REASON_ELEMENT).sflags);
        Reason::from_code(code).unwrap_or(Reason::TargetNotActive)
    }

    /// Sends every buffer primed since the last SIGA, on every output queue, with one
    /// SIGA write-multiple whose mask names each queue that has some. With a completion
    /// queue, the WRITEQ queues' buffers go first, one SIGA WRITEQ each (those left
    /// PENDING are in [`FlushReport::went_pending`]), the multicast queue's with the
    /// write-multiple.
    pub fn flush<S: Siga + ?Sized>(&mut self, siga: &S) -> Result<FlushReport, SigaStatus> {
        let mut report = FlushReport::default();
        let mut mask = 0;
        let mut writeq = false;
        for (q, tq) in self.tx.iter().enumerate() {
            if tq.primed > 0 {
                if self.uses_writeq(q as u8) {
                    writeq = true;
                } else {
                    mask |= TxQueue::mask(q as u8);
                }
            }
            if let Some(p) = report.primed.get_mut(q) {
                *p = tq.primed;
            }
        }
        if writeq && self.flush_writeq(siga, &mut report)? {
            // A SIGA failed after others went through: the rest waits for the next
            // flush, still primed.
            for (q, tq) in self.tx.iter().enumerate() {
                if !self.uses_writeq(q as u8) {
                    report.pending += tq.primed;
                }
            }
            return Ok(report);
        }
        if mask == 0 {
            return Ok(report);
        }
        self.issue(siga, SigaFunction::WriteMultiple, mask)?;
        let mut position = 0u8;
        for q in 0..self.tx.len() {
            if self.uses_writeq(q as u8) {
                position = position.wrapping_add(report.primed.get(q).copied().unwrap_or(0));
                continue;
            }
            let Some(tq) = self.tx.get(q) else { break };
            let mut pending = 0;
            for k in 0..tq.primed {
                let n = tq.primed_buffer(k);
                match tq.state(n) {
                    SlsbState::OUTPUT_EMPTY => report.delivered += 1,
                    // Not reached: the fabric handles primed buffers in ring order, so
                    // these are the queue's tail, and stay counted as primed for the
                    // next flush.
                    SlsbState::OUTPUT_PRIMED => pending += 1,
                    _ => {
                        let code = tq.sbal(n).load(Sbale::ERROR_REASON_ELEMENT).sflags;
                        let reason = Reason::from_code(code).unwrap_or(Reason::TargetNotActive);
                        // At most 128 buffers over all queues (`new`): the push cannot fail.
                        let _ = report.refused.push((position, reason));
                    }
                }
                position = position.wrapping_add(1);
            }
            report.pending += pending;
            if let Some(tq) = self.tx.get_mut(q) {
                tq.primed = pending;
            }
        }
        Ok(report)
    }

    /// Resets this queue's indicator byte; true if it was set. Call after
    /// [`Indicators::take`] (high → low), before taking the frames.
    ///
    /// A driver that is polling ([`start_polling`](Self::start_polling)) need not: it
    /// finds its work in the SLSB ([`receive`](Self::receive)) and may leave its bytes
    /// set, so that it does not pull their cache lines from the fabric's core at every
    /// frame. Linux's qeth polls so under NAPI: its thin-interrupt handler resets the
    /// DSCI (`tiqdio_thinint_handler`), its poll reads only the SLSB. It then resets
    /// them, high → low, before [`stop_polling`](Self::stop_polling).
    pub fn take_initiative(&self) -> bool {
        self.queue_ind.mem.reset()
    }

    /// Whether the next input buffer holds something (a frame or an error).
    pub fn has_input(&self) -> bool {
        // A buffer held in place was handed over already: the next one counts.
        let next = match self.held {
            Some(n) if n == self.rx_next => (n + 1) % QUEUE_BUFFERS as u8,
            _ => self.rx_next,
        };
        let s = self.input_state(next);
        s == SlsbState::INPUT_PRIMED || s == SlsbState::INPUT_ERROR
    }

    /// Takes the next received buffer, if any: calls `f` for each frame in it, then
    /// acknowledges it and arms the buffer `rx_buffers` further on. Returns the frames
    /// handed to `f`, or `None` when no buffer was ready. A frame the buffer no longer
    /// describes soundly is not handed over but counted ([`RxCounters::bad_frames`]);
    /// a buffer the fabric marked 0x8F (its own elements were bad) holds no frame and
    /// is counted ([`RxCounters::error_buffers`]) and re-armed.
    pub fn receive(&mut self, mut f: impl FnMut(&RxFrame<'_>)) -> Option<usize> {
        // A buffer lent in place by `hold_single` goes back first (the device that
        // held it no longer borrows it: see there).
        self.release_held();
        let n = self.rx_next;
        // Acquire pairs with the fabric's Release store of 0x82: data visible.
        let state = self.input_state(n);
        let mut frames = 0;
        if state == SlsbState::INPUT_PRIMED {
            let (handed, bad, walked) = self.gather(n, &mut f);
            self.set_rearm(n, walked, &bad);
            frames = handed;
            self.rx.frames += frames as u64;
            self.rx.bad_frames += bad.total();
            self.rx.wrong_layer += bad.wrong_layer;
            self.rx.short_frames += bad.short;
        } else if state == SlsbState::INPUT_ERROR {
            self.rx.error_buffers += 1;
            self.rx_rearm_all(n);
        } else {
            return None;
        }
        self.consume(n);
        Some(frames)
    }

    /// The zero-copy receive of the smoltcp device (issue 12 item 4): when the next
    /// input buffer holds exactly one frame, sound and contiguous in memory (always so
    /// for what the fabric delivers into the pages this driver armed), the packet's
    /// bytes in the buffer's slot; the buffer is then *held*: counted as received, left
    /// at 0x82 (the program's, so the fabric does not write it), skipped by
    /// [`has_input`](Self::has_input), and handed back (acknowledged and re-armed) by
    /// [`release_held`](Self::release_held), or by the next [`receive`](Self::receive)
    /// or `hold_single`. `None`, with nothing done, for anything else (no buffer,
    /// an error buffer, several frames, a bad one): [`receive`](Self::receive) then
    /// takes it as usual.
    ///
    /// The bytes stay valid and unchanged until the buffer is handed back: the caller
    /// (the device, in this crate) reads them only until it calls `release_held` or
    /// `receive` again, which it does only from `&mut self` methods that no borrow of
    /// the packet can outlive.
    #[cfg(feature = "smoltcp")]
    pub(crate) fn hold_single(&mut self) -> Option<GuestSlice> {
        self.release_held();
        let n = self.rx_next;
        if self.input_state(n) != SlsbState::INPUT_PRIMED {
            return None;
        }
        let slot = self.rx_slot(n) * self.cfg.mfs.bytes();
        let slot_mem = self.rx_data.mem.sub(slot, self.cfg.mfs.bytes())?;
        // The packet as a range of the buffer's slot (where `gather` lends it from).
        let mut packet = None;
        let (frames, bad, walked) = self.gather(n, &mut |frame: &RxFrame<'_>| {
            packet = frame.contiguous().and_then(|bytes| {
                let at = (bytes.as_ptr() as usize).checked_sub(slot_mem.host_addr())?;
                slot_mem.sub(at, bytes.len())
            });
        });
        self.set_rearm(n, walked, &bad);
        let packet = packet.filter(|_| frames == 1 && bad.total() == 0)?;
        self.rx.frames += 1;
        self.held = Some(n);
        Some(packet)
    }

    /// Hands back the input buffer [`hold_single`](Self::hold_single) lent, if any:
    /// acknowledged and re-armed as [`receive`](Self::receive) does.
    #[inline]
    pub(crate) fn release_held(&mut self) {
        if let Some(n) = self.held.take() {
            self.consume(n);
        }
    }

    /// Records that input buffer `n`'s next arm rewrites its first `elements` elements
    /// (at least what an arm writes would be rewritten anyway: see `rx_rearm`), or all
    /// of them when `gather` counted a bad frame: the elements no longer say which ones
    /// the fabric wrote (the program overwrote its own buffer, say), and an element
    /// left as the fabric wrote it would shrink the buffer for every later frame.
    #[inline]
    fn set_rearm(&mut self, n: u8, walked: usize, bad: &BadFrames) {
        if bad.total() != 0 {
            return self.rx_rearm_all(n);
        }
        if let Some(r) = self.rx_rearm.get_mut(usize::from(n)) {
            *r = walked.min(SBALES_PER_SBAL) as u8;
        }
    }

    /// Input buffer `n`'s next arm rewrites every element.
    fn rx_rearm_all(&mut self, n: u8) {
        if let Some(r) = self.rx_rearm.get_mut(usize::from(n)) {
            *r = SBALES_PER_SBAL as u8;
        }
    }

    /// Walks the elements of input buffer `n` (0x82) once and calls `f` for each
    /// sound frame; returns the frames handed to `f`, the frames counted bad and the
    /// elements walked (up to the first `LAST_ENTRY`, or all 16). Moves no state and
    /// no counter.
    fn gather(&self, n: u8, f: &mut impl FnMut(&RxFrame<'_>)) -> (usize, BadFrames, usize) {
        let mut frames = 0;
        let mut bad = BadFrames::default();
        let sbal = self.in_sbal(n);
        let slot = self.rx_slot(n) * self.cfg.mfs.bytes();
        let slot_guest = self.rx_data.guest + slot as u64;
        // The data always holds every slot; were it not so, no piece would be inside
        // the empty slice, and every frame would be counted bad.
        let slot_mem = self
            .rx_data
            .mem
            .sub(slot, self.cfg.mfs.bytes())
            .unwrap_or(GuestSlice::EMPTY);
        let slot_len = slot_mem.len() as u64;
        // The frame being gathered: its pieces (ranges of the slot), whether they
        // follow one another there and where the last ends, whether an element of it
        // was unusable. Frames are delimited by the fragment flags alone, so a bad
        // element costs its own frame and no other.
        let mut pieces = heapless::Vec::<(usize, usize), SBALES_PER_SBAL>::new();
        let mut end = 0usize;
        let mut contiguous = true;
        let mut broken = false;
        let mut open = false;
        let mut walked = SBALES_PER_SBAL;
        for i in 0..SBALES_PER_SBAL {
            // Each element read once; only this copy is used.
            let e = sbal.load(i);
            let frag = e.fragment();
            let starts = matches!(frag, Fragment::None | Fragment::First);
            if starts && open {
                // The open frame never got its last element.
                bad.other += 1;
                pieces.clear();
                broken = false;
            }
            // A middle or last element with no frame open is a piece of a frame
            // whose start is lost: gather it as a broken frame, counted once.
            broken |= !starts && !open;
            open = true;
            // Inside this buffer's own slot, which the driver armed it with: the
            // frame is then lent in place (`RxFrame::pieces`), and no other slot,
            // which the fabric may be filling, is ever borrowed.
            let len = u64::from(e.length);
            match e.addr.checked_sub(slot_guest) {
                Some(off) if !broken && len > 0 && len <= slot_len && off <= slot_len - len => {
                    // Inside the slot, so both fit a usize.
                    let (at, len) = (off as usize, len as usize);
                    contiguous = pieces.is_empty() || (contiguous && at == end);
                    end = at + len;
                    // At most 16 elements, so the push cannot fail.
                    let _ = pieces.push((at, len));
                }
                _ => broken = true,
            }
            if matches!(frag, Fragment::None | Fragment::Last) {
                match self.check_frame(slot_mem, &pieces, contiguous, broken) {
                    Ok(frame) => {
                        f(&frame);
                        frames += 1;
                    }
                    Err(why) => bad.count(why),
                }
                pieces.clear();
                (broken, open) = (false, false);
            }
            if e.is_last_entry() {
                walked = i + 1;
                break;
            }
        }
        if open {
            // LAST_ENTRY on a first or middle element, or none in 16 elements.
            bad.other += 1;
        }
        (frames, bad, walked)
    }

    /// A gathered frame, if it is one: unbroken, its header whole in its first
    /// element, decoding as the queue set's layer, and with a length that matches the
    /// bytes after it; on layer 2 an Ethernet frame of at least 14 bytes. `pieces`
    /// are ranges of `slot`; `contiguous` says each starts where the one before ends.
    /// Inlined into [`gather`](Self::gather), its one caller: the frame is built in
    /// place there rather than returned through the stack (receive_64 -7).
    #[inline(always)]
    fn check_frame<'p>(
        &self,
        slot: GuestSlice,
        pieces: &'p [(usize, usize)],
        contiguous: bool,
        broken: bool,
    ) -> Result<RxFrame<'p>, BadFrame> {
        let &(first, first_len) = pieces.first().ok_or(BadFrame::Other)?;
        if broken || first_len < HEADER_SIZE {
            return Err(BadFrame::Other);
        }
        // The frame's bytes. Adjacent pieces make one range of the slot, from the
        // first piece's start to the last one's end (inside the slot, as they are).
        let bytes = if contiguous {
            pieces.last().map_or(first_len, |&(at, l)| at + l - first)
        } else {
            pieces.iter().map(|&(_, l)| l).sum()
        };
        let mut raw = [0u8; HEADER_SIZE];
        slot.read(first, &mut raw);
        let len = bytes - HEADER_SIZE;
        let (header, length) = if self.cfg.layer2 {
            let h = L2Header::decode(&raw).ok_or(if L3Header::decode(&raw).is_ok() {
                BadFrame::WrongLayer
            } else {
                BadFrame::Other
            })?;
            if usize::from(h.pkt_length) == len && len < ETH_MIN {
                return Err(BadFrame::Short);
            }
            (FrameHeader::Layer2(h), h.pkt_length)
        } else {
            let h = L3Header::decode(&raw).map_err(|_| {
                if raw[0] == ID_LAYER2 {
                    BadFrame::WrongLayer
                } else {
                    BadFrame::Other
                }
            })?;
            (FrameHeader::Layer3(h), h.length)
        };
        if usize::from(length) != len {
            return Err(BadFrame::Other);
        }
        Ok(RxFrame {
            header,
            len,
            slot,
            pieces,
            whole: contiguous,
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
    /// fabric raises no interrupt for deliveries while it does. Only the timer's run
    /// of the fallback (`Fabric::expire_delays`) interrupts a poller whose summary
    /// byte stays set, once per interrupt delay.
    ///
    /// While polling, [`receive`](Self::receive) alone finds the work: the indicator
    /// bytes may stay set (see [`take_initiative`](Self::take_initiative)).
    pub fn start_polling(&mut self) {
        self.polling = true;
    }

    /// Stops polling: writes 0x80 over the acknowledged buffer, then re-checks the
    /// queue indicator and the next buffer, to close the race with a send that saw
    /// 0x81 and so raised no interrupt. Returns true when work is waiting: the caller
    /// must take it rather than sleep.
    ///
    /// A poller that left its indicator bytes set resets them first, high → low
    /// ([`Indicators::take`], then [`take_initiative`](Self::take_initiative)): a queue
    /// byte left set reads as work here (as a DSCI still set sends Linux's
    /// `qdio_start_irq` back to polling), and a summary left set makes the next
    /// delivery find it pending and raise no interrupt (only the fallback, a delay
    /// later).
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
            || self.queue_ind.mem.is_set() || self.has_input() || self.has_completions(),
        )
    }

    /// Whether the driver is polling.
    pub fn is_polling(&self) -> bool {
        self.polling
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(4096))]
    #[derive(Clone, Copy)]
    struct Page([u8; PAGE]);

    /// The straight-line layout of one frame gives what the general layout gives, for
    /// every length around the one- and two-element bounds, the maximum frame size
    /// and the header's length field, and the same errors (no free buffer, a queue
    /// that does not exist).
    /// A driver of `cfg` over pages of its own, which it returns too: they must
    /// outlive the driver.
    fn driver(cfg: DriverConfig) -> (Vec<Page>, QueueDriver) {
        let mut pages = vec![Page([0; PAGE]); 1 + cfg.footprint() / PAGE];
        let len = pages.len() * PAGE;
        let host = NonNull::from(pages.as_mut_slice()).cast::<u8>();
        // SAFETY: the caller keeps the pages as long as the driver (the vector's heap
        // buffer does not move with it), and they are touched only through the driver.
        let mut region = unsafe { Region::new(host, 0x4000_0000, len) }.unwrap();
        let ind = Indicators::new(&mut region).unwrap();
        let d = QueueDriver::new(&mut region, &ind, cfg).unwrap();
        (pages, d)
    }

    #[test]
    fn layout_one_matches_the_general_layout() {
        // Under Miri (every step interpreted; the 64 KiB MFS alone ran for more than
        // 12 minutes) the smallest, whose frames still span up to five pages.
        let all = [Mfs::K16, Mfs::K24, Mfs::K40, Mfs::K64];
        let mfss: &[Mfs] = if cfg!(miri) { &all[..1] } else { &all };
        for &mfs in mfss {
            layout_one_matches_the_general_layout_at(mfs);
        }
    }

    /// [`layout_one_matches_the_general_layout`] for one MFS: frames at every page
    /// boundary up to the MFS and past it, and at the 16-bit length limit.
    fn layout_one_matches_the_general_layout_at(mfs: Mfs) {
        let cfg = DriverConfig::new(0, mfs);
        let (_pages, mut d) = driver(cfg);
        let mfs = cfg.mfs.bytes();
        let mut lens = vec![
            0,
            1,
            64,
            1500,
            usize::from(u16::MAX),
            usize::from(u16::MAX) + 1,
        ];
        for edge in (1..=mfs / PAGE + 1).map(|k| k * PAGE).chain([mfs]) {
            lens.extend([
                edge - HEADER_SIZE - 1,
                edge - HEADER_SIZE,
                edge - HEADER_SIZE + 1,
            ]);
        }
        let compare = |d: &QueueDriver, q: u8| {
            for &len in &lens {
                let (mut one, mut general) = (TxLayout::default(), TxLayout::default());
                let a = d.layout_one(q, len, &mut one);
                let b = d.layout(q, &[len], &mut general);
                assert_eq!(a, b, "length {len}");
                if a.is_ok() {
                    assert_eq!(one.starts, general.starts, "length {len}");
                    assert_eq!(one.elements, general.elements, "length {len}");
                }
            }
        };
        // Every buffer of the ring in turn (slots at different offsets), then all
        // primed: no free buffer.
        for _ in 0..cfg.tx_buffers {
            compare(&d, 0);
            compare(&d, 1);
            d.prime(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), &[1, 2, 3])
                .unwrap();
        }
        compare(&d, 0);
        assert_eq!(
            d.layout_one(0, 64, &mut TxLayout::default()),
            Err(DriverError::NoFreeBuffer)
        );
    }

    /// A frame received in three elements reads the same, copied out whole or in
    /// part, lent in pieces or as one slice, whether its elements lie one after the
    /// other in the buffer's slot (one copy, one slice) or not (the program may
    /// rewrite its own input SBAL: a copy per piece, no one slice).
    #[test]
    fn a_frame_in_adjacent_or_scattered_elements_reads_the_same() {
        let (_pages, mut d) = driver(DriverConfig::new(0, Mfs::K16));
        let packet: Vec<u8> = (0..6000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut frame = L3Header::unicast(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 6000)
            .encode()
            .to_vec();
        frame.extend_from_slice(&packet);
        for offsets in [[0, 2000, 4096], [0, 8192, 12288], [4096, 2000, 8192]] {
            let n = d.rx_next;
            let slot = usize::from(n % d.cfg.rx_buffers) * d.cfg.mfs.bytes();
            let sbal = d.in_sbal(n);
            let (mut from, lens) = (0, [2000, 2096, 1936]);
            for (i, (&at, &len)) in offsets.iter().zip(&lens).enumerate() {
                d.rx_data.mem.write(slot + at, &frame[from..from + len]);
                let mut eflags = Fragment::for_element(i, 3).bits();
                if i == 2 {
                    eflags |= Eflags::LAST_ENTRY.bits();
                }
                let addr = d.rx_data.guest + (slot + at) as u64;
                let length = len as u32;
                sbal.store(
                    i,
                    &Sbale {
                        eflags,
                        length,
                        addr,
                        ..Sbale::default()
                    },
                );
                from += len;
            }
            QueueDriver::set_state(&d.in_slsb, n, SlsbState::INPUT_PRIMED, Ordering::Release);
            let adjacent = offsets == [0, 2000, 4096];
            let mut seen = 0;
            let got = d.receive(|f| {
                assert_eq!(f.len(), packet.len());
                let mut out = vec![0; 7000];
                assert_eq!(f.copy_to(&mut out), packet.len());
                assert_eq!(&out[..packet.len()], packet, "{offsets:?}");
                // Short of the packet, ending inside the second piece.
                let mut part = vec![0; 2500];
                assert_eq!(f.copy_to(&mut part), part.len());
                assert_eq!(part, packet[..part.len()], "{offsets:?}");
                let joined: Vec<u8> = f.pieces().flatten().copied().collect();
                assert_eq!(joined, packet, "{offsets:?}");
                assert_eq!(f.pieces().count(), 3);
                assert_eq!(f.contiguous().is_some(), adjacent, "{offsets:?}");
                if let Some(bytes) = f.contiguous() {
                    assert_eq!(bytes, packet);
                }
                seen += 1;
            });
            assert_eq!((got, seen), (Some(1), 1), "{offsets:?}");
            assert_eq!(d.rx_counters().bad_frames, 0);
        }
    }

    /// The general layout of several frames: each frame's header never straddles a
    /// page, each frame is cut into elements at page boundaries with its fragment
    /// positions, the last element ends the list, and more than 16 elements (or a
    /// slot overflow) is `TooLarge`: checked against a plain element-by-element
    /// rendering of those rules.
    #[test]
    fn the_general_layout_cuts_frames_at_pages() {
        let cfg = DriverConfig::new(0, Mfs::K64);
        let (_pages, d) = driver(cfg);
        let reference = |lens: &[usize]| -> Result<(Vec<usize>, Vec<Sbale>), DriverError> {
            let guest = d.txq(0).unwrap().data.guest;
            let (mut starts, mut elements) = (Vec::new(), Vec::new());
            let (mut off, mut total) = (0usize, 0usize);
            for &len in lens {
                if off % PAGE + HEADER_SIZE > PAGE {
                    off = off.next_multiple_of(PAGE);
                }
                let end = off + HEADER_SIZE + len;
                total += HEADER_SIZE + len;
                if end > cfg.mfs.bytes() || total > cfg.mfs.bytes() {
                    return Err(DriverError::TooLarge);
                }
                starts.push(off);
                let mut cuts = vec![off];
                cuts.extend((off / PAGE + 1..=(end - 1) / PAGE).map(|p| p * PAGE));
                cuts.push(end);
                let count = cuts.len() - 1;
                for (i, w) in cuts.windows(2).enumerate() {
                    elements.push(Sbale {
                        eflags: Fragment::for_element(i, count).bits(),
                        addr: guest + w[0] as u64,
                        length: (w[1] - w[0]) as u32,
                        ..Sbale::default()
                    });
                }
                off = end;
            }
            if starts.len() > SBALES_PER_SBAL || elements.len() > SBALES_PER_SBAL {
                return Err(DriverError::TooLarge);
            }
            if let Some(last) = elements.last_mut() {
                last.eflags |= Eflags::LAST_ENTRY.bits();
            }
            Ok((starts, elements))
        };
        let cases: Vec<Vec<usize>> = vec![
            vec![57344 - HEADER_SIZE],
            vec![57344 - HEADER_SIZE + 1],
            vec![0; 16],
            vec![0; 17],
            vec![4000, 4000, 4000],
            vec![PAGE - 2 * HEADER_SIZE + 1, 10, 5000],
            vec![3 * PAGE; 5],
            vec![3 * PAGE + 100; 4],
            vec![6000; 8],
            vec![4070; 8],
            vec![4070; 9],
            vec![9000, 20000, 1, 1500, 64],
        ];
        for lens in cases {
            let mut layout = TxLayout::default();
            let got = d
                .layout(0, &lens, &mut layout)
                .map(|_| (layout.starts.to_vec(), layout.elements.to_vec()));
            assert_eq!(got, reference(&lens), "{lens:?}");
        }
    }
}
