//! Split virtqueues (virtio 1.2 §2.7) walked as hostile input: guest memory through a
//! window-checked trait, the device's own copies of the indices, every descriptor
//! checked before its buffer is named, chains bounded by the queue size.
//!
//! Layout (§2.7, little-endian): the descriptor table is `size` entries of 16 bytes
//! (`addr u64, len u32, flags u16, next u16`, 16-aligned); the driver area (available
//! ring) is `flags u16, idx u16, ring[size] u16, used_event u16` (2-aligned); the device
//! area (used ring) is `flags u16, idx u16, ring[size] {id u32, len u32}, avail_event
//! u16` (4-aligned). The areas are checked against the window once, when the driver
//! sets QueueReady; descriptor buffers at every pop.

use core::sync::atomic::{Ordering, fence};

/// Descriptor flag: the chain continues at `next` (§2.7.5 `VIRTQ_DESC_F_NEXT`).
pub const DESC_F_NEXT: u16 = 1;
/// Descriptor flag: the buffer is device-writable (`VIRTQ_DESC_F_WRITE`).
pub const DESC_F_WRITE: u16 = 2;
/// Descriptor flag: the buffer holds an indirect table (`VIRTQ_DESC_F_INDIRECT`); refused,
/// since `VIRTIO_F_INDIRECT_DESC` is not offered (§2.7.5.3.1: the driver MUST NOT set it
/// then).
pub const DESC_F_INDIRECT: u16 = 4;
/// Available ring flag: the driver asks for no used-buffer notification
/// (`VIRTQ_AVAIL_F_NO_INTERRUPT`, §2.7.7).
pub const AVAIL_F_NO_INTERRUPT: u16 = 1;
/// Bytes of one descriptor.
pub const DESC_SIZE: u64 = 16;
/// Most segments a [`Chain`] keeps: one SBAL's elements (`SBALES_PER_SBAL`). Longer
/// chains are still walked and checked to their end; [`Chain::is_whole`] tells.
pub const MAX_SEGMENTS: usize = 16;

/// The guest's memory as the device sees it: reads and writes by IPA, each wholly inside
/// the guest's window or refused. The hypervisor implements it over the partition's
/// window (the fabric's window check; 16-bit accesses as single aligned loads and stores,
/// since the driver updates indices while the device reads them); tests over a `Vec`.
///
/// Ordering: the model places `core::sync::atomic::fence`s where §2.7 asks for barriers
/// (after reading the available index, between a used entry and the used index, before
/// reading the available flags); the implementation's accesses must be volatile so the
/// compiler keeps them on their side of each fence.
///
/// The model checks every range with [`GuestMemory::contains`] before it reads or writes
/// it, and never asks for a range that wraps; the `Err` of `read`/`write` is a second
/// line, counted as [`Violation::MemoryFault`] if it ever answers.
pub trait GuestMemory {
    /// Whether `[ipa, ipa + len)` lies wholly inside the window (`len` > 0, no wrap).
    fn contains(&self, ipa: u64, len: u64) -> bool;
    /// Reads `buf.len()` bytes at `ipa`.
    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), OutsideWindow>;
    /// Writes `data` at `ipa`.
    fn write(&mut self, ipa: u64, data: &[u8]) -> Result<(), OutsideWindow>;
    /// A little-endian 16-bit load at a 2-aligned `ipa` (an index or flags word), which
    /// the hypervisor makes one single-copy-atomic access.
    fn read_u16(&self, ipa: u64) -> Result<u16, OutsideWindow> {
        let mut b = [0; 2];
        self.read(ipa, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    /// A little-endian 16-bit store at a 2-aligned `ipa` (the used index).
    fn write_u16(&mut self, ipa: u64, value: u16) -> Result<(), OutsideWindow> {
        self.write(ipa, &value.to_le_bytes())
    }
}

/// A guest memory access refused by its window check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutsideWindow;

/// The two queues of a network device with one queue pair (§5.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queue {
    /// receiveq1 (index 0): device-writable buffers the device fills with frames.
    Rx = 0,
    /// transmitq1 (index 1): device-readable buffers holding frames to send.
    Tx = 1,
}

impl Queue {
    /// The queue with index `index` (QueueSel, QueueNotify), if it exists.
    pub const fn from_index(index: u32) -> Option<Self> {
        match index {
            0 => Some(Self::Rx),
            1 => Some(Self::Tx),
            _ => None,
        }
    }

    /// Its index.
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// A rule of the ring the driver broke. Each puts the device into DEVICE_NEEDS_RESET and
/// stops every queue until the driver resets the device; each kind is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// QueueReady set with a size that is 0, above QueueNumMax or not a power of 2 (§2.7:
    /// split queue sizes are powers of 2), or a ring area misaligned (§2.7: 16, 2, 4).
    BadQueueSetup,
    /// QueueReady set with a ring area outside the window, or wrapping.
    RingOutsideWindow,
    /// A queue's size or ring address written while it is ready (§4.2.2.2: the driver
    /// MUST NOT), or a queue enabled again after being stopped without a device reset
    /// (only `VIRTIO_F_RING_RESET`, not offered, allows that).
    RingMoved,
    /// The available index ran more than the queue size ahead of the device's.
    IndexJump,
    /// An available ring entry names a descriptor at or past the queue size.
    HeadOutOfRange,
    /// A descriptor's `next` is at or past the queue size.
    NextOutOfRange,
    /// A chain longer than the queue size: a descriptor loop (§2.7.5.2: the driver MUST
    /// NOT create one).
    DescriptorLoop,
    /// A descriptor with `VIRTQ_DESC_F_INDIRECT`, which is not offered.
    Indirect,
    /// A buffer not wholly inside the guest's window.
    BufferOutsideWindow,
    /// A buffer whose address plus length wraps the address space.
    WrappedBuffer,
    /// A descriptor of length 0 (QEMU refuses them too: "zero sized buffers are not
    /// allowed", `hw/virtio/virtio.c`).
    ZeroLength,
    /// A device-readable buffer on the receive queue, or a device-writable one on the
    /// transmit queue (§5.1.6: receive buffers are written, transmit buffers read).
    WrongDirection,
    /// A chain too short for the 12-byte `virtio_net_hdr_v1` (§5.1.6) at its start.
    ShortChain,
    /// The memory trait refused an access the model had checked (never expected).
    MemoryFault,
}

impl Violation {
    /// Every kind, in counter order.
    pub const ALL: [Self; 14] = [
        Self::BadQueueSetup,
        Self::RingOutsideWindow,
        Self::RingMoved,
        Self::IndexJump,
        Self::HeadOutOfRange,
        Self::NextOutOfRange,
        Self::DescriptorLoop,
        Self::Indirect,
        Self::BufferOutsideWindow,
        Self::WrappedBuffer,
        Self::ZeroLength,
        Self::WrongDirection,
        Self::ShortChain,
        Self::MemoryFault,
    ];

    /// A short name for the hypervisor's report.
    pub const fn name(self) -> &'static str {
        match self {
            Self::BadQueueSetup => "bad queue setup",
            Self::RingOutsideWindow => "ring outside window",
            Self::RingMoved => "ring moved",
            Self::IndexJump => "index jump",
            Self::HeadOutOfRange => "head out of range",
            Self::NextOutOfRange => "next out of range",
            Self::DescriptorLoop => "descriptor loop",
            Self::Indirect => "indirect",
            Self::BufferOutsideWindow => "buffer outside window",
            Self::WrappedBuffer => "wrapped buffer",
            Self::ZeroLength => "zero length",
            Self::WrongDirection => "wrong direction",
            Self::ShortChain => "short chain",
            Self::MemoryFault => "memory fault",
        }
    }
}

/// Violations counted per kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Violations {
    counts: [u64; Violation::ALL.len()],
}

impl Violations {
    /// How many of `kind`.
    pub fn count(&self, kind: Violation) -> u64 {
        self.counts[kind as usize]
    }

    /// All kinds together.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    pub(crate) fn add(&mut self, kind: Violation) {
        self.counts[kind as usize] += 1;
    }
}

/// One guest buffer: `len` bytes at guest address `ipa`, inside the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Guest physical (intermediate physical) address.
    pub ipa: u64,
    /// Bytes.
    pub len: u32,
}

/// Up to [`MAX_SEGMENTS`] checked segments, in chain order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segments {
    segs: [Segment; MAX_SEGMENTS],
    count: u8,
}

impl Segments {
    /// The segments.
    pub fn as_slice(&self) -> &[Segment] {
        self.segs.get(..usize::from(self.count)).unwrap_or(&[])
    }

    /// Total bytes.
    pub fn bytes(&self) -> u64 {
        self.as_slice().iter().map(|s| u64::from(s.len)).sum()
    }

    #[cfg(test)]
    pub(crate) fn push_for_test(&mut self, seg: Segment) {
        assert!(self.push(seg));
    }

    fn push(&mut self, seg: Segment) -> bool {
        match self.segs.get_mut(usize::from(self.count)) {
            Some(slot) => {
                *slot = seg;
                self.count += 1;
                true
            }
            None => false,
        }
    }

    /// The same buffers without their first `skip` bytes (the virtio-net header): a
    /// segment wholly skipped is dropped, one partly skipped starts later.
    pub fn after(&self, skip: u64) -> Segments {
        let mut out = Segments::default();
        let mut skip = skip;
        for s in self.as_slice() {
            let len = u64::from(s.len);
            if skip >= len {
                skip -= len;
                continue;
            }
            out.push(Segment {
                ipa: s.ipa + skip,
                len: (len - skip) as u32,
            });
            skip = 0;
        }
        out
    }

    /// The first `n` segments.
    pub fn first(&self, n: usize) -> Segments {
        let mut out = Segments::default();
        for s in self.as_slice().iter().take(n) {
            out.push(*s);
        }
        out
    }

    /// Reads the first `buf.len()` bytes the segments hold into `buf`; `Ok(n)` with the
    /// bytes read (fewer when the segments are shorter).
    pub fn read_prefix<M: GuestMemory + ?Sized>(
        &self,
        mem: &M,
        buf: &mut [u8],
    ) -> Result<usize, OutsideWindow> {
        let mut done = 0;
        for s in self.as_slice() {
            let Some(rest) = buf.get_mut(done..) else {
                break;
            };
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(s.len as usize);
            mem.read(s.ipa, &mut rest[..n])?;
            done += n;
        }
        Ok(done)
    }

    /// Writes `data` over the start of the segments, spanning them in order; `Ok(n)` with
    /// the bytes written (fewer when the segments are shorter).
    pub fn write_prefix<M: GuestMemory + ?Sized>(
        &self,
        mem: &mut M,
        data: &[u8],
    ) -> Result<usize, OutsideWindow> {
        let mut done = 0;
        for s in self.as_slice() {
            let Some(rest) = data.get(done..) else { break };
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(s.len as usize);
            mem.write(s.ipa, &rest[..n])?;
            done += n;
        }
        Ok(done)
    }
}

/// One descriptor chain taken from a queue's available ring, every descriptor checked.
/// Not `Clone`: it goes back to the device once (`complete_transmit`/`complete_receive`).
#[derive(Debug, PartialEq, Eq)]
pub struct Chain {
    queue: Queue,
    head: u16,
    epoch: u32,
    segments: Segments,
    descriptors: u16,
    bytes: u64,
}

impl Chain {
    /// The queue it came from.
    pub fn queue(&self) -> Queue {
        self.queue
    }

    /// Its head descriptor index (the used entry's `id`).
    pub fn head(&self) -> u16 {
        self.head
    }

    /// Its first [`MAX_SEGMENTS`] buffers.
    pub fn segments(&self) -> &Segments {
        &self.segments
    }

    /// Descriptors in the chain.
    pub fn descriptors(&self) -> u16 {
        self.descriptors
    }

    /// Bytes in all its descriptors.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether [`Chain::segments`] holds every descriptor (at most [`MAX_SEGMENTS`]).
    pub fn is_whole(&self) -> bool {
        usize::from(self.descriptors) == self.segments.as_slice().len()
    }
}

/// Whether a used entry asked for a used-buffer notification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Written; the driver wants an interrupt (InterruptStatus bit 0 is now set).
    Interrupt,
    /// Written; the driver set `VIRTQ_AVAIL_F_NO_INTERRUPT`, or (with EVENT_IDX) its
    /// `used_event` is not the entry just written.
    Suppressed,
    /// Not written: the chain is from before a reset, a stop or a violation (its queue
    /// is no longer the one it came from), or the device is not live.
    Stale,
    /// The length was beyond the chain's bytes (a hypervisor error): the entry was
    /// written with length 0, returning the buffer empty, and no notification decided.
    Overrun,
}

/// One split virtqueue's device side.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Virtqueue {
    pub(crate) size: u16,
    pub(crate) desc: u64,
    pub(crate) driver: u64,
    pub(crate) device: u64,
    pub(crate) ready: bool,
    /// Enabled once since the last device reset: a second QueueReady = 1 is a move.
    pub(crate) used_before: bool,
    last_avail: u16,
    used_idx: u16,
    pub(crate) epoch: u32,
    /// `VIRTIO_F_EVENT_IDX` negotiated: `used_event`/`avail_event` instead of the flags.
    event_idx: bool,
}

impl Virtqueue {
    /// A queue at device reset with QueueNum = `size`.
    pub(crate) const fn reset(size: u16, epoch: u32) -> Self {
        Self {
            size,
            desc: 0,
            driver: 0,
            device: 0,
            ready: false,
            used_before: false,
            last_avail: 0,
            used_idx: 0,
            epoch,
            event_idx: false,
        }
    }

    /// Bytes of the three areas for this size.
    fn areas(&self) -> [(u64, u64, u64); 3] {
        let n = u64::from(self.size);
        [
            (self.desc, DESC_SIZE * n, 16),
            (self.driver, 6 + 2 * n, 2),
            (self.device, 6 + 8 * n, 4),
        ]
    }

    /// The checks of QueueReady = 1 (§4.2.2 and §2.7): size, alignment, window.
    pub(crate) fn check_setup<M: GuestMemory + ?Sized>(
        &self,
        max: u16,
        mem: &M,
    ) -> Result<(), Violation> {
        if self.size == 0 || self.size > max || !self.size.is_power_of_two() {
            return Err(Violation::BadQueueSetup);
        }
        for (addr, len, align) in self.areas() {
            if !addr.is_multiple_of(align) {
                return Err(Violation::BadQueueSetup);
            }
            if addr.checked_add(len).is_none() || !mem.contains(addr, len) {
                return Err(Violation::RingOutsideWindow);
            }
        }
        Ok(())
    }

    /// Starts the queue with fresh indices (QueueReady = 1 after the checks).
    pub(crate) fn start(&mut self, epoch: u32, event_idx: bool) {
        self.ready = true;
        self.event_idx = event_idx;
        self.used_before = true;
        self.last_avail = 0;
        self.used_idx = 0;
        self.epoch = epoch;
    }

    /// Buffers the driver made available that the device has not taken.
    fn pending<M: GuestMemory + ?Sized>(&self, mem: &M) -> Result<u16, Violation> {
        let avail_idx = mem
            .read_u16(self.driver + 2)
            .map_err(|_| Violation::MemoryFault)?;
        // §2.7.13.2 (and Linux's `virtio_rmb` in virtqueue_get_buf's counterpart): the
        // ring entries are read after the index that published them.
        fence(Ordering::Acquire);
        Ok(avail_idx.wrapping_sub(self.last_avail))
    }

    /// Takes the next available chain, if any. `writable` is the direction every
    /// descriptor of this queue must have; `min_bytes` the least a chain must hold. With
    /// EVENT_IDX, a pop that finds the ring empty asks for the next notification: after
    /// a notification, pop until `None`.
    pub(crate) fn pop<M: GuestMemory + ?Sized>(
        &mut self,
        queue: Queue,
        writable: bool,
        min_bytes: u64,
        mem: &mut M,
    ) -> Result<Option<Chain>, Violation> {
        let size = self.size;
        let mut pending = self.pending(mem)?;
        if pending == 0 && self.event_idx {
            // §2.7.10: ask for a notification when the driver adds the next buffer
            // (avail_event = the next index the device will read), then look again: a
            // buffer added before the driver could see avail_event sent no notification
            // (Linux's virtqueue_kick_prepare reads avail_event after publishing, behind
            // `virtio_mb`, drivers/virtio/virtio_ring.c).
            mem.write_u16(self.device + 4 + 8 * u64::from(size), self.last_avail)
                .map_err(|_| Violation::MemoryFault)?;
            fence(Ordering::SeqCst);
            pending = self.pending(mem)?;
        }
        if pending == 0 {
            return Ok(None);
        }
        if pending > size {
            return Err(Violation::IndexJump);
        }
        let slot = u64::from(self.last_avail % size);
        let head = mem
            .read_u16(self.driver + 4 + 2 * slot)
            .map_err(|_| Violation::MemoryFault)?;
        if head >= size {
            return Err(Violation::HeadOutOfRange);
        }

        let mut chain = Chain {
            queue,
            head,
            epoch: self.epoch,
            segments: Segments::default(),
            descriptors: 0,
            bytes: 0,
        };
        let mut index = head;
        loop {
            // A chain of more descriptors than the table has must revisit one: a loop.
            if chain.descriptors == size {
                return Err(Violation::DescriptorLoop);
            }
            let mut d = [0u8; DESC_SIZE as usize];
            mem.read(self.desc + DESC_SIZE * u64::from(index), &mut d)
                .map_err(|_| Violation::MemoryFault)?;
            let addr = u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]);
            let len = u32::from_le_bytes([d[8], d[9], d[10], d[11]]);
            let flags = u16::from_le_bytes([d[12], d[13]]);
            let next = u16::from_le_bytes([d[14], d[15]]);

            if flags & DESC_F_INDIRECT != 0 {
                return Err(Violation::Indirect);
            }
            if (flags & DESC_F_WRITE != 0) != writable {
                return Err(Violation::WrongDirection);
            }
            if len == 0 {
                return Err(Violation::ZeroLength);
            }
            if addr.checked_add(u64::from(len)).is_none() {
                return Err(Violation::WrappedBuffer);
            }
            if !mem.contains(addr, u64::from(len)) {
                return Err(Violation::BufferOutsideWindow);
            }
            chain.segments.push(Segment { ipa: addr, len });
            chain.descriptors += 1;
            chain.bytes += u64::from(len);

            if flags & DESC_F_NEXT == 0 {
                break;
            }
            if next >= size {
                return Err(Violation::NextOutOfRange);
            }
            index = next;
        }
        if chain.bytes < min_bytes {
            return Err(Violation::ShortChain);
        }
        self.last_avail = self.last_avail.wrapping_add(1);
        Ok(Some(chain))
    }

    /// Puts `chain` in the used ring with `len` bytes written (§2.7.8), then decides on
    /// the notification (§2.7.7) from the available ring's flags. `None`, or a length
    /// beyond the chain, is an overrun.
    pub(crate) fn push_used<M: GuestMemory + ?Sized>(
        &mut self,
        chain: Chain,
        len: Option<u32>,
        mem: &mut M,
    ) -> Result<Completion, Violation> {
        if !self.ready || chain.epoch != self.epoch {
            return Ok(Completion::Stale);
        }
        // A length beyond the buffers is never published: the buffer goes back empty
        // (Linux's receive_buf drops a used buffer shorter than its header as a length
        // error, drivers/net/virtio_net.c) and the caller hears of it.
        let (len, overrun) = match len {
            Some(len) if u64::from(len) <= chain.bytes => (len, false),
            _ => (0, true),
        };
        let size = self.size;
        let slot = u64::from(self.used_idx % size);
        let mut entry = [0u8; 8];
        entry[..4].copy_from_slice(&u32::from(chain.head).to_le_bytes());
        entry[4..].copy_from_slice(&len.to_le_bytes());
        mem.write(self.device + 4 + 8 * slot, &entry)
            .map_err(|_| Violation::MemoryFault)?;
        // §2.7.8.2: the used element is visible before the index that publishes it
        // (Linux reads them in the other order behind `virtio_rmb`, virtio_ring.c).
        fence(Ordering::Release);
        self.used_idx = self.used_idx.wrapping_add(1);
        mem.write_u16(self.device + 2, self.used_idx)
            .map_err(|_| Violation::MemoryFault)?;
        // The index store is ordered before the flags load, as the driver's side orders
        // its flags store before re-reading the used index (`virtio_mb`): otherwise a
        // driver that just re-enabled interrupts could miss this buffer.
        fence(Ordering::SeqCst);
        let wanted = if self.event_idx {
            // §2.7.10: notify when the index passes used_event; deciding at every entry,
            // the old index is one less (vring_need_event(event, new, new - 1)). The
            // flags' low bit is ignored then (§2.7.7.2).
            let used_event = mem
                .read_u16(self.driver + 4 + 2 * u64::from(size))
                .map_err(|_| Violation::MemoryFault)?;
            self.used_idx.wrapping_sub(used_event).wrapping_sub(1) == 0
        } else {
            let flags = mem
                .read_u16(self.driver)
                .map_err(|_| Violation::MemoryFault)?;
            flags & AVAIL_F_NO_INTERRUPT == 0
        };
        Ok(if overrun {
            Completion::Overrun
        } else if wanted {
            Completion::Interrupt
        } else {
            Completion::Suppressed
        })
    }
}
