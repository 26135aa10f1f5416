//! A virtio network device over MMIO, version 2 (virtio 1.2 §4.2.2, device ID 1,
//! §5.1), with split virtqueues (§2.7) read as hostile input. Pure: the hypervisor
//! passes every MMIO trap of the device's window to [`VirtioNet::read`] /
//! [`VirtioNet::write`], and guest memory through the window-checked [`GuestMemory`].
//!
//! **Offered features**: `VIRTIO_F_VERSION_1` (32), `VIRTIO_NET_F_MAC` (5),
//! `VIRTIO_NET_F_MTU` (3), `VIRTIO_NET_F_STATUS` (16), and the ring feature
//! `VIRTIO_F_EVENT_IDX` (29: the driver notifies only when the device asked, and takes an
//! interrupt only at the entry it names, which cuts traps on both paths; without it,
//! `VIRTQ_AVAIL_F_NO_INTERRUPT` suppresses interrupts). Nothing the fabric cannot honour:
//! no checksum or segmentation offloads (CSUM, GUEST_CSUM, TSO/UFO), no mergeable
//! receive buffers, no control queue, no multiqueue, no indirect descriptors.
//! FEATURES_OK is refused unless the driver accepted VERSION_1 (§6.1: a device MAY
//! refuse to work without it; virtio-mmio version 2 is the modern interface) and no
//! feature beyond the offer.
//!
//! **Config space** (§5.1.4, from offset 0x100, little-endian): `mac[6]` at 0, `status`
//! at 6 (`VIRTIO_NET_S_LINK_UP`), `max_virtqueue_pairs` at 8 (reads 1: one pair,
//! although MQ is not offered and Linux does not read it), `mtu` at 10. Read-only: writes
//! are ignored and counted. Aligned 8-, 16- and 32-bit reads of any bytes are answered
//! (Linux's `vm_get` in `drivers/virtio/virtio_mmio.c` reads the MAC a byte at a time
//! and `mtu`/`status` as 16 bits); ConfigGeneration changes with the link state.
//!
//! **Register file**: control registers (0x000-0x0FC) only as aligned 32-bit accesses
//! (§4.2.2.2); anything else, unknown offsets, reads of write-only and writes of
//! read-only registers read as zero and are ignored, counted in [`Ignored`], never a
//! panic. No shared memory regions (SHMLen/SHMBase read all ones, §4.2.2: "a length of
//! -1"), no QueueReset (`VIRTIO_F_RING_RESET` is not offered).
//!
//! **Status** (§2.1, §3.1.1): writing 0 resets the device (queues stopped, InterruptStatus
//! cleared, every [`Chain`] held becomes stale). A write that would clear a bit is refused
//! (§2.1.2: the driver MUST NOT clear one); FEATURES_OK is only set with DRIVER set and an
//! acceptable feature set (the driver re-reads it, as `virtio_features_ok` in
//! `drivers/virtio/virtio.c` does); DRIVER_OK only after FEATURES_OK. DEVICE_NEEDS_RESET
//! (64) is the device's: set on any [`Violation`], with a configuration change interrupt
//! if DRIVER_OK was set (§2.1.2), after which no queue is used until a reset.
//!
//! **Queues**: receiveq1 (0) and transmitq1 (1), QueueNumMax [`QUEUE_NUM_MAX`]. QueueReady
//! = 1 checks the size (non-zero, a power of 2, at most the maximum) and the three ring
//! areas (alignment, inside the window, no wrap); rewriting a ready queue's size or
//! addresses, or enabling a queue again without a reset, is [`Violation::RingMoved`].
//!
//! # How the rings become the fabric's queues (the intended wiring)
//!
//! The device model names guest buffers and never copies frames; the fabric makes the
//! one copy per frame, between SBALEs that point at the guests' virtio buffers.
//!
//! - **Transmit**: QueueNotify(1) → [`Effect::Notify`]`(`[`Queue::Tx`]`)`. The hypervisor
//!   loops [`VirtioNet::pop`]`(Tx)` until `None` (with EVENT_IDX that empty pop is what
//!   asks the driver for its next notification); for each chain
//!   [`VirtioNet::transmit`] reads and checks the 12-byte `virtio_net_hdr_v1` and gives
//!   the frame's [`Segments`] (the header stripped: a segment of exactly 12 bytes
//!   disappears, a longer first one starts 12 bytes later). The output SBAL is then
//!   element 0: the 32-byte `qeth_hdr_layer2` the hypervisor writes into a per-device
//!   header slot (a second window of the guest's partition, hypervisor memory outside
//!   the guest's stage 2), elements 1..=n: the frame segments, at most
//!   [`MAX_FRAME_SEGMENTS`] (15: one SBAL less its header element). The SIGA the hypervisor issues for the guest (its LPAR id and
//!   subchannel) copies the frame once, into the receiver's buffer; then
//!   [`VirtioNet::complete_transmit`] returns the chain (used length 0: nothing written)
//!   and raises the interrupt if the driver wants it.
//! - **Receive**: the driver's posted chains ([`VirtioNet::pop`]`(Rx)` after
//!   QueueNotify(0), at DRIVER_OK, and whenever the hypervisor has input buffers to
//!   prime again: no notification is needed to take what is already available) become
//!   input SBALs: element 0 the 32-byte header slot, elements 1.. the chain's
//!   [`VirtioNet::rx_segments`] (its buffers after the 12 bytes kept for the virtio-net
//!   header), then the buffer is primed. When the fabric
//!   has delivered a frame into it, [`VirtioNet::complete_receive`] writes the header
//!   (zeros, `num_buffers` 1) and publishes `12 + frame length` in the used ring.
//!   Linux's small receive buffers (MTU 1500) are one descriptor; with a larger MTU it
//!   posts "big packets": a 12-byte header descriptor then `ceil(mtu / 4096) + 1` pages
//!   (`add_recvbuf_big`, `drivers/net/virtio_net.c`), so 56 KiB (MFS 64 KiB) fills 15
//!   elements exactly.
//! - **Reset, QueueReady 0, a violation**: [`Effect::Reset`], [`Effect::QueueStopped`] or
//!   [`Effect::NeedsReset`] tell the hypervisor to withdraw the posted input buffers; any
//!   chain still held completes as [`Completion::Stale`] (nothing written). A frame the
//!   fabric delivered meanwhile lands in memory the guest owns, inside its window.
//! - **Interrupt**: one SPI, level-like: the hypervisor raises it whenever
//!   [`VirtioNet::interrupt_pending`] turns true (a completion that wants it, a config
//!   change, a violation after DRIVER_OK); the driver's handler reads InterruptStatus and
//!   writes InterruptACK (`vm_interrupt`, `drivers/virtio/virtio_mmio.c`).
//! - **Locking**: a [`VirtioNet`] is one guest's device state, touched by that guest's
//!   MMIO traps and by deliveries other partitions' SIGAs make; the hypervisor keeps it
//!   under one lock per guest. Guest memory is shared with the running guest: that is
//!   what the fences in the ring code and [`GuestMemory`]'s single 16-bit accesses are
//!   for.

mod ring;

pub use ring::{
    AVAIL_F_NO_INTERRUPT, Chain, Completion, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE,
    GuestMemory, MAX_SEGMENTS, OutsideWindow, Queue, Segment, Segments, Violation, Violations,
};

use ring::Virtqueue;

/// MagicValue: "virt" in little-endian.
pub const MAGIC_VALUE: u64 = 0x000;
/// Version: 2 (modern).
pub const VERSION: u64 = 0x004;
/// DeviceID: 1 (network card).
pub const DEVICE_ID: u64 = 0x008;
/// VendorID.
pub const VENDOR_ID: u64 = 0x00C;
/// DeviceFeatures: 32 feature bits selected by DeviceFeaturesSel.
pub const DEVICE_FEATURES: u64 = 0x010;
/// DeviceFeaturesSel.
pub const DEVICE_FEATURES_SEL: u64 = 0x014;
/// DriverFeatures: 32 accepted feature bits selected by DriverFeaturesSel.
pub const DRIVER_FEATURES: u64 = 0x020;
/// DriverFeaturesSel.
pub const DRIVER_FEATURES_SEL: u64 = 0x024;
/// QueueSel.
pub const QUEUE_SEL: u64 = 0x030;
/// QueueNumMax.
pub const QUEUE_NUM_MAX_REG: u64 = 0x034;
/// QueueNum.
pub const QUEUE_NUM: u64 = 0x038;
/// QueueReady.
pub const QUEUE_READY: u64 = 0x044;
/// QueueNotify.
pub const QUEUE_NOTIFY: u64 = 0x050;
/// InterruptStatus.
pub const INTERRUPT_STATUS: u64 = 0x060;
/// InterruptACK.
pub const INTERRUPT_ACK: u64 = 0x064;
/// Status.
pub const STATUS: u64 = 0x070;
/// QueueDescLow (QueueDescHigh at +4).
pub const QUEUE_DESC_LOW: u64 = 0x080;
/// QueueDriverLow (QueueDriverHigh at +4): the available ring.
pub const QUEUE_DRIVER_LOW: u64 = 0x090;
/// QueueDeviceLow (QueueDeviceHigh at +4): the used ring.
pub const QUEUE_DEVICE_LOW: u64 = 0x0A0;
/// SHMSel.
pub const SHM_SEL: u64 = 0x0AC;
/// SHMLenLow; SHMLenHigh, SHMBaseLow, SHMBaseHigh follow every 4 bytes.
pub const SHM_LEN_LOW: u64 = 0x0B0;
/// QueueReset (only with `VIRTIO_F_RING_RESET`, not offered).
pub const QUEUE_RESET: u64 = 0x0C0;
/// ConfigGeneration.
pub const CONFIG_GENERATION: u64 = 0x0FC;
/// The device-specific configuration space.
pub const CONFIG: u64 = 0x100;
/// Bytes of the device's MMIO window (QEMU's virtio-mmio transports are 0x200 apart).
pub const WINDOW_SIZE: u64 = 0x200;

/// "virt".
pub const MAGIC: u32 = 0x7472_6976;
/// The network device's ID (§5.1.1).
pub const NET_DEVICE_ID: u32 = 1;
/// VendorID: "IQDO" in little-endian (drivers match any vendor).
pub const VENDOR: u32 = 0x4F44_5149;
/// QueueNumMax of both queues (QEMU's default for virtio-net).
pub const QUEUE_NUM_MAX: u16 = 256;

/// `VIRTIO_NET_F_MTU`: `mtu` in config space is valid.
pub const F_MTU: u64 = 1 << 3;
/// `VIRTIO_NET_F_MAC`: `mac` in config space is valid.
pub const F_MAC: u64 = 1 << 5;
/// `VIRTIO_NET_F_STATUS`: `status` in config space is valid.
pub const F_STATUS: u64 = 1 << 16;
/// `VIRTIO_F_EVENT_IDX`: `used_event` and `avail_event` suppress notifications.
pub const F_EVENT_IDX: u64 = 1 << 29;
/// `VIRTIO_F_VERSION_1`: the modern interface.
pub const F_VERSION_1: u64 = 1 << 32;
/// Every feature offered.
pub const FEATURES: u64 = F_VERSION_1 | F_EVENT_IDX | F_MAC | F_MTU | F_STATUS;

/// Device status: the guest found the device.
pub const S_ACKNOWLEDGE: u32 = 1;
/// Device status: the guest has a driver for it.
pub const S_DRIVER: u32 = 2;
/// Device status: the driver is ready.
pub const S_DRIVER_OK: u32 = 4;
/// Device status: feature negotiation is complete.
pub const S_FEATURES_OK: u32 = 8;
/// Device status: the device hit an error and needs a reset.
pub const S_DEVICE_NEEDS_RESET: u32 = 64;
/// Device status: the driver gave up on the device.
pub const S_FAILED: u32 = 128;
const S_DRIVER_BITS: u32 = S_ACKNOWLEDGE | S_DRIVER | S_DRIVER_OK | S_FEATURES_OK | S_FAILED;

/// InterruptStatus bit 0: a used buffer notification.
pub const INT_VRING: u32 = 1;
/// InterruptStatus bit 1: a configuration change notification.
pub const INT_CONFIG: u32 = 2;

/// Config `status` bit: the link is up (§5.1.4).
pub const NET_S_LINK_UP: u16 = 1;

/// Bytes of `struct virtio_net_hdr_v1` with VERSION_1 (§5.1.6): flags u8, gso_type u8,
/// hdr_len, gso_size, csum_start, csum_offset, num_buffers (u16 each).
pub const NET_HDR_LEN: u64 = 12;
/// Most frame segments one output or input SBAL carries besides its header element.
pub const MAX_FRAME_SEGMENTS: usize = MAX_SEGMENTS - 1;
/// An Ethernet header: a frame is at least this long.
pub const ETH_HLEN: u64 = 14;
/// An Ethernet header with one 802.1Q tag: a frame is at most `mtu` plus this.
pub const ETH_HLEN_VLAN: u64 = 18;
/// Least MTU the config space may carry (§5.1.4.1: 68 to 65535).
pub const MTU_MIN: u16 = 68;

/// MMIO accesses answered as zero / ignored, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Ignored {
    /// A control register accessed other than as aligned 32 bits, a config access of 8
    /// bytes or misaligned.
    pub bad_width: u64,
    /// An offset no register has (QueueReset included), or past the config fields.
    pub unknown: u64,
    /// A read of a write-only register or a write of a read-only one (config included).
    pub wrong_direction: u64,
    /// A queue register with QueueSel naming no queue, a notification of a queue that
    /// does not exist or is not live.
    pub no_queue: u64,
    /// Status writes refused in part or whole (a cleared bit, FEATURES_OK with
    /// unacceptable features, DRIVER_OK before FEATURES_OK), DriverFeatures written after
    /// FEATURES_OK.
    pub refused: u64,
}

/// Frames through the device, and transmit drops by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetCounters {
    /// Frames handed to the fabric.
    pub tx_frames: u64,
    /// Their bytes (without the virtio-net header).
    pub tx_bytes: u64,
    /// Frames delivered into receive buffers.
    pub rx_frames: u64,
    /// Their bytes (without the virtio-net header).
    pub rx_bytes: u64,
    /// Transmit drops: header asking for an offload (flags or gso_type not 0).
    pub tx_offload: u64,
    /// Transmit drops: shorter than an Ethernet header.
    pub tx_runt: u64,
    /// Transmit drops: longer than the MTU plus a tagged Ethernet header.
    pub tx_oversize: u64,
    /// Transmit drops: more segments than one SBAL carries.
    pub tx_fragmented: u64,
}

/// Why a transmit chain's frame is not sent (counted; the chain is still completed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxDrop {
    /// The header's flags or gso_type are not 0: an offload that was not offered
    /// (`VIRTIO_NET_HDR_F_NEEDS_CSUM` needs `VIRTIO_NET_F_CSUM`, GSO needs the TSO/UFO
    /// features, §5.1.6.2.1).
    Offload,
    /// The frame is shorter than an Ethernet header.
    Runt,
    /// The frame is longer than the MTU plus a tagged Ethernet header.
    Oversize,
    /// The frame takes more than [`MAX_FRAME_SEGMENTS`] segments.
    Fragmented,
    /// The device is not live, or the chain is not a transmit chain of this queue.
    NotLive,
    /// The memory trait refused a read the model had checked (counted as
    /// [`Violation::MemoryFault`]).
    Unreadable,
}

/// A frame to send: the chain's buffers after the virtio-net header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxFrame {
    /// The frame's segments, at most [`MAX_FRAME_SEGMENTS`].
    pub segments: Segments,
    /// Its length in bytes.
    pub len: u64,
}

/// What an MMIO write asks of the hypervisor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Nothing beyond the register.
    None,
    /// QueueNotify on a live queue: transmit what is available, or post new receive
    /// buffers.
    Notify(Queue),
    /// DRIVER_OK set: the device is live; post the receive queue's buffers.
    Live,
    /// The device was reset: withdraw every posted buffer, forget every chain.
    Reset,
    /// QueueReady 0: withdraw this queue's posted buffers.
    QueueStopped(Queue),
    /// The write broke a ring rule: DEVICE_NEEDS_RESET is set, queues stopped.
    NeedsReset(Violation),
}

/// Why [`VirtioNet::new`] refuses a configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// The MTU is below 68 (§5.1.4.1).
    MtuTooSmall,
    /// The MAC is a multicast (group) address or all zeros.
    BadMac,
}

/// One guest's virtio-net device.
#[derive(Clone, Debug)]
pub struct VirtioNet {
    mac: [u8; 6],
    mtu: u16,
    link_up: bool,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// A non-zero DriverFeatures word beyond the two that exist: features never offered.
    stray_features: bool,
    queue_sel: u32,
    queues: [Virtqueue; 2],
    interrupt_status: u32,
    config_generation: u32,
    epoch: u32,
    shm_sel: u32,
    violations: Violations,
    ignored: Ignored,
    net: NetCounters,
}

impl VirtioNet {
    /// A device with this MAC and MTU (the queue set's maximum frame size less the
    /// fabric's overhead), link up, at reset.
    pub fn new(mac: [u8; 6], mtu: u16) -> Result<Self, ConfigError> {
        if mtu < MTU_MIN {
            return Err(ConfigError::MtuTooSmall);
        }
        if mac[0] & 1 != 0 || mac == [0; 6] {
            return Err(ConfigError::BadMac);
        }
        Ok(Self {
            mac,
            mtu,
            link_up: true,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            stray_features: false,
            queue_sel: 0,
            queues: [Virtqueue::reset(QUEUE_NUM_MAX, 0); 2],
            interrupt_status: 0,
            config_generation: 0,
            epoch: 0,
            shm_sel: 0,
            violations: Violations::default(),
            ignored: Ignored::default(),
            net: NetCounters::default(),
        })
    }

    /// The device status register.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// The features the driver accepted (meaningful once FEATURES_OK is set).
    pub fn driver_features(&self) -> u64 {
        self.driver_features
    }

    /// DRIVER_OK set, and neither DEVICE_NEEDS_RESET nor FAILED: queues may be used.
    pub fn is_live(&self) -> bool {
        self.status & S_DRIVER_OK != 0 && self.status & (S_DEVICE_NEEDS_RESET | S_FAILED) == 0
    }

    /// InterruptStatus is not zero: the device's interrupt is asserted.
    pub fn interrupt_pending(&self) -> bool {
        self.interrupt_status != 0
    }

    /// Ring violations by kind.
    pub fn violations(&self) -> &Violations {
        &self.violations
    }

    /// MMIO accesses ignored by reason.
    pub fn ignored(&self) -> &Ignored {
        &self.ignored
    }

    /// Frame counters.
    pub fn counters(&self) -> &NetCounters {
        &self.net
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The MTU.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Sets the link state; `true` when that raised a configuration change interrupt
    /// (DRIVER_OK set and `VIRTIO_NET_F_STATUS` negotiated).
    pub fn set_link(&mut self, up: bool) -> bool {
        if up == self.link_up {
            return false;
        }
        self.link_up = up;
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & S_DRIVER_OK != 0 && self.driver_features & F_STATUS != 0 {
            self.interrupt_status |= INT_CONFIG;
            return true;
        }
        false
    }

    fn config_bytes(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[..6].copy_from_slice(&self.mac);
        let status = if self.link_up { NET_S_LINK_UP } else { 0 };
        c[6..8].copy_from_slice(&status.to_le_bytes());
        c[8..10].copy_from_slice(&1u16.to_le_bytes());
        c[10..12].copy_from_slice(&self.mtu.to_le_bytes());
        c
    }

    fn selected(&mut self) -> Option<&mut Virtqueue> {
        let q = Queue::from_index(self.queue_sel)?;
        self.queues.get_mut(q.index())
    }

    /// A guest read of `size` bytes at `offset` in the device's window.
    pub fn read(&mut self, offset: u64, size: u8) -> u64 {
        if offset >= CONFIG {
            return self.read_config(offset - CONFIG, size);
        }
        if size != 4 || !offset.is_multiple_of(4) {
            self.ignored.bad_width += 1;
            return 0;
        }
        let value: u32 = match offset {
            MAGIC_VALUE => MAGIC,
            VERSION => 2,
            DEVICE_ID => NET_DEVICE_ID,
            VENDOR_ID => VENDOR,
            DEVICE_FEATURES => match self.device_features_sel {
                0 => FEATURES as u32,
                1 => (FEATURES >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX_REG => match Queue::from_index(self.queue_sel) {
                Some(_) => u32::from(QUEUE_NUM_MAX),
                // §4.2.2: zero for a queue that is not available.
                None => 0,
            },
            QUEUE_READY => match Queue::from_index(self.queue_sel) {
                Some(q) => u32::from(self.queues[q.index()].ready),
                None => 0,
            },
            INTERRUPT_STATUS => self.interrupt_status,
            STATUS => self.status,
            CONFIG_GENERATION => self.config_generation,
            // No shared memory region has the selected ID: all ones.
            0x0B0..=0x0BC => u32::MAX,
            DEVICE_FEATURES_SEL | DRIVER_FEATURES | DRIVER_FEATURES_SEL | QUEUE_SEL | QUEUE_NUM
            | QUEUE_NOTIFY | INTERRUPT_ACK | SHM_SEL | 0x080 | 0x084 | 0x090 | 0x094 | 0x0A0
            | 0x0A4 => {
                self.ignored.wrong_direction += 1;
                0
            }
            _ => {
                self.ignored.unknown += 1;
                0
            }
        };
        u64::from(value)
    }

    fn read_config(&mut self, offset: u64, size: u8) -> u64 {
        if !matches!(size, 1 | 2 | 4) || !offset.is_multiple_of(u64::from(size)) {
            self.ignored.bad_width += 1;
            return 0;
        }
        let bytes = self.config_bytes();
        let range = usize::try_from(offset)
            .ok()
            .and_then(|start| Some(start..start.checked_add(usize::from(size))?));
        match range.and_then(|r| bytes.get(r)) {
            Some(b) => b
                .iter()
                .rev()
                .fold(0u64, |acc, &x| (acc << 8) | u64::from(x)),
            None => {
                self.ignored.unknown += 1;
                0
            }
        }
    }

    /// A guest write of `size` bytes at `offset`. `mem` is the guest's memory, against
    /// which QueueReady = 1 checks the rings.
    pub fn write<M: GuestMemory + ?Sized>(
        &mut self,
        offset: u64,
        size: u8,
        value: u64,
        mem: &M,
    ) -> Effect {
        if offset >= CONFIG {
            // Every virtio-net config field is read-only for a modern driver (§5.1.4).
            if offset >= WINDOW_SIZE {
                self.ignored.unknown += 1;
            } else {
                self.ignored.wrong_direction += 1;
            }
            return Effect::None;
        }
        if size != 4 || !offset.is_multiple_of(4) {
            self.ignored.bad_width += 1;
            return Effect::None;
        }
        let v = value as u32;
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_sel = v,
            DRIVER_FEATURES => {
                if self.status & S_FEATURES_OK != 0 {
                    // §3.1.1: no new features after FEATURES_OK.
                    self.ignored.refused += 1;
                } else {
                    match self.driver_features_sel {
                        0 => {
                            self.driver_features =
                                (self.driver_features & !0xFFFF_FFFF) | u64::from(v)
                        }
                        1 => {
                            self.driver_features =
                                (self.driver_features & 0xFFFF_FFFF) | (u64::from(v) << 32)
                        }
                        _ => self.stray_features |= v != 0,
                    }
                }
            }
            DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            QUEUE_SEL => self.queue_sel = v,
            QUEUE_NUM => {
                // A value past 16 bits becomes 0, which QueueReady refuses.
                return self.queue_register(|q| q.size = u16::try_from(v).unwrap_or(0));
            }
            0x080 => return self.queue_register(|q| set_low(&mut q.desc, v)),
            0x084 => return self.queue_register(|q| set_high(&mut q.desc, v)),
            0x090 => return self.queue_register(|q| set_low(&mut q.driver, v)),
            0x094 => return self.queue_register(|q| set_high(&mut q.driver, v)),
            0x0A0 => return self.queue_register(|q| set_low(&mut q.device, v)),
            0x0A4 => return self.queue_register(|q| set_high(&mut q.device, v)),
            QUEUE_READY => return self.write_queue_ready(v & 1 != 0, mem),
            QUEUE_NOTIFY => {
                return match Queue::from_index(v) {
                    Some(q) if self.is_live() && self.queues[q.index()].ready => Effect::Notify(q),
                    _ => {
                        self.ignored.no_queue += 1;
                        Effect::None
                    }
                };
            }
            INTERRUPT_ACK => self.interrupt_status &= !v,
            STATUS => return self.write_status(v),
            SHM_SEL => self.shm_sel = v,
            MAGIC_VALUE
            | VERSION
            | DEVICE_ID
            | VENDOR_ID
            | DEVICE_FEATURES
            | QUEUE_NUM_MAX_REG
            | INTERRUPT_STATUS
            | CONFIG_GENERATION
            | 0x0B0..=0x0BC => self.ignored.wrong_direction += 1,
            _ => self.ignored.unknown += 1,
        }
        Effect::None
    }

    /// A write to QueueNum or a ring address of the selected queue.
    fn queue_register(&mut self, set: impl FnOnce(&mut Virtqueue)) -> Effect {
        let Some(q) = self.selected() else {
            self.ignored.no_queue += 1;
            return Effect::None;
        };
        if q.ready {
            return Effect::NeedsReset(self.fail(Violation::RingMoved));
        }
        set(q);
        Effect::None
    }

    fn write_queue_ready<M: GuestMemory + ?Sized>(&mut self, ready: bool, mem: &M) -> Effect {
        let Some(queue) = Queue::from_index(self.queue_sel) else {
            self.ignored.no_queue += 1;
            return Effect::None;
        };
        let q = &self.queues[queue.index()];
        match (q.ready, ready) {
            (true, true) | (false, false) => Effect::None,
            (true, false) => {
                self.epoch = self.epoch.wrapping_add(1);
                let q = &mut self.queues[queue.index()];
                q.ready = false;
                q.epoch = self.epoch;
                Effect::QueueStopped(queue)
            }
            (false, true) => {
                if q.used_before {
                    return Effect::NeedsReset(self.fail(Violation::RingMoved));
                }
                if let Err(v) = q.check_setup(QUEUE_NUM_MAX, mem) {
                    return Effect::NeedsReset(self.fail(v));
                }
                self.epoch = self.epoch.wrapping_add(1);
                let epoch = self.epoch;
                let event_idx = self.driver_features & F_EVENT_IDX != 0;
                self.queues[queue.index()].start(epoch, event_idx);
                Effect::None
            }
        }
    }

    fn write_status(&mut self, v: u32) -> Effect {
        if v == 0 {
            self.reset();
            return Effect::Reset;
        }
        let old = self.status & S_DRIVER_BITS;
        let new = v & S_DRIVER_BITS;
        if new & old != old {
            self.ignored.refused += 1;
            return Effect::None;
        }
        let mut added = new & !old;
        if added & S_FEATURES_OK != 0 && !(old & S_DRIVER != 0 && self.features_acceptable()) {
            added &= !S_FEATURES_OK;
            self.ignored.refused += 1;
        }
        if added & S_DRIVER_OK != 0 && (old | added) & S_FEATURES_OK == 0 {
            added &= !S_DRIVER_OK;
            self.ignored.refused += 1;
        }
        self.status |= added;
        if added & S_DRIVER_OK != 0 && self.is_live() {
            Effect::Live
        } else {
            Effect::None
        }
    }

    fn features_acceptable(&self) -> bool {
        !self.stray_features
            && self.driver_features & !FEATURES == 0
            && self.driver_features & F_VERSION_1 != 0
    }

    /// Device reset (Status 0): §4.2.2.1, InterruptStatus and every QueueReady cleared.
    fn reset(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.stray_features = false;
        self.queue_sel = 0;
        self.queues = [Virtqueue::reset(QUEUE_NUM_MAX, self.epoch); 2];
        self.interrupt_status = 0;
        self.shm_sel = 0;
    }

    /// A violation: counted, DEVICE_NEEDS_RESET, the queues stopped (their chains stale),
    /// a configuration change interrupt if the driver was running the device.
    fn fail(&mut self, kind: Violation) -> Violation {
        self.violations.add(kind);
        self.epoch = self.epoch.wrapping_add(1);
        for q in &mut self.queues {
            q.epoch = self.epoch;
        }
        if self.status & S_DEVICE_NEEDS_RESET == 0 {
            self.status |= S_DEVICE_NEEDS_RESET;
            if self.status & S_DRIVER_OK != 0 {
                self.interrupt_status |= INT_CONFIG;
            }
        }
        kind
    }

    /// The next chain the driver made available on `queue`, every descriptor checked:
    /// `Ok(None)` when there is none or the device or queue is not live. Memory is
    /// written only with EVENT_IDX: `avail_event` when the ring is found empty. A violation
    /// sets DEVICE_NEEDS_RESET and is returned (the hypervisor raises the interrupt if
    /// [`VirtioNet::interrupt_pending`]).
    pub fn pop<M: GuestMemory + ?Sized>(
        &mut self,
        queue: Queue,
        mem: &mut M,
    ) -> Result<Option<Chain>, Violation> {
        let q = &mut self.queues[queue.index()];
        if !(self.status & S_DRIVER_OK != 0
            && self.status & (S_DEVICE_NEEDS_RESET | S_FAILED) == 0
            && q.ready)
        {
            return Ok(None);
        }
        let popped = q.pop(queue, queue == Queue::Rx, NET_HDR_LEN, mem);
        popped.map_err(|v| self.fail(v))
    }

    fn push_used<M: GuestMemory + ?Sized>(
        &mut self,
        chain: Chain,
        len: Option<u32>,
        mem: &mut M,
    ) -> Result<Completion, Violation> {
        if !self.is_live() {
            return Ok(Completion::Stale);
        }
        let q = &mut self.queues[chain.queue().index()];
        let pushed = q.push_used(chain, len, mem);
        let done = pushed.map_err(|v| self.fail(v))?;
        if done == Completion::Interrupt {
            self.interrupt_status |= INT_VRING;
        }
        Ok(done)
    }

    /// Checks a transmit chain's virtio-net header and gives its frame's segments. A
    /// dropped frame is counted by reason; the chain goes back through
    /// [`VirtioNet::complete_transmit`] either way.
    pub fn transmit<M: GuestMemory + ?Sized>(
        &mut self,
        chain: &Chain,
        mem: &M,
    ) -> Result<TxFrame, TxDrop> {
        if chain.queue() != Queue::Tx || !self.is_live() {
            return Err(TxDrop::NotLive);
        }
        let mut hdr = [0u8; NET_HDR_LEN as usize];
        if chain.segments().read_prefix(mem, &mut hdr) != Ok(hdr.len()) {
            self.fail(Violation::MemoryFault);
            return Err(TxDrop::Unreadable);
        }
        // flags (byte 0) and gso_type (byte 1): with no offload negotiated both are 0
        // (Linux's virtio_net_hdr_from_skb, include/linux/virtio_net.h, zeroes the
        // header and sets them only for GSO or CHECKSUM_PARTIAL skbs).
        let len = chain.bytes() - NET_HDR_LEN;
        let segments = chain.segments().after(NET_HDR_LEN);
        let (counter, drop) = if hdr[0] != 0 || hdr[1] != 0 {
            (&mut self.net.tx_offload, TxDrop::Offload)
        } else if len < ETH_HLEN {
            (&mut self.net.tx_runt, TxDrop::Runt)
        } else if len > u64::from(self.mtu) + ETH_HLEN_VLAN {
            (&mut self.net.tx_oversize, TxDrop::Oversize)
        } else if !chain.is_whole() || segments.as_slice().len() > MAX_FRAME_SEGMENTS {
            (&mut self.net.tx_fragmented, TxDrop::Fragmented)
        } else {
            self.net.tx_frames += 1;
            self.net.tx_bytes += len;
            return Ok(TxFrame { segments, len });
        };
        *counter += 1;
        Err(drop)
    }

    /// Returns a transmit chain to the driver (used length 0: the device wrote nothing).
    pub fn complete_transmit<M: GuestMemory + ?Sized>(
        &mut self,
        chain: Chain,
        mem: &mut M,
    ) -> Result<Completion, Violation> {
        self.push_used(chain, Some(0), mem)
    }

    /// The buffers of a receive chain a frame may fill: after the 12 bytes kept for the
    /// virtio-net header, at most [`MAX_FRAME_SEGMENTS`] (the elements of one input SBAL
    /// besides its header element).
    pub fn rx_segments(chain: &Chain) -> Segments {
        chain
            .segments()
            .after(NET_HDR_LEN)
            .first(MAX_FRAME_SEGMENTS)
    }

    /// A frame of `frame_len` bytes was delivered into [`VirtioNet::rx_segments`] of
    /// `chain`: writes the virtio-net header (all zeros but `num_buffers` = 1, §5.1.6.4:
    /// without `VIRTIO_NET_F_MRG_RXBUF` the device sets it to 1) and publishes
    /// `12 + frame_len` bytes in the used ring.
    pub fn complete_receive<M: GuestMemory + ?Sized>(
        &mut self,
        chain: Chain,
        frame_len: u32,
        mem: &mut M,
    ) -> Result<Completion, Violation> {
        if !self.is_live() || chain.queue() != Queue::Rx {
            return Ok(Completion::Stale);
        }
        if u64::from(frame_len) > Self::rx_segments(&chain).bytes() {
            return self.push_used(chain, None, mem);
        }
        let mut hdr = [0u8; NET_HDR_LEN as usize];
        hdr[10..12].copy_from_slice(&1u16.to_le_bytes());
        if chain.segments().write_prefix(mem, &hdr) != Ok(hdr.len()) {
            return Err(self.fail(Violation::MemoryFault));
        }
        let done = self.push_used(chain, Some(NET_HDR_LEN as u32 + frame_len), mem)?;
        if matches!(done, Completion::Interrupt | Completion::Suppressed) {
            self.net.rx_frames += 1;
            self.net.rx_bytes += u64::from(frame_len);
        }
        Ok(done)
    }
}

fn set_low(addr: &mut u64, v: u32) {
    *addr = (*addr & !0xFFFF_FFFF) | u64::from(v);
}

fn set_high(addr: &mut u64, v: u32) {
    *addr = (*addr & 0xFFFF_FFFF) | (u64::from(v) << 32);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A window that holds nothing: register tests never touch guest memory.
    struct NoMemory;

    impl GuestMemory for NoMemory {
        fn contains(&self, _: u64, _: u64) -> bool {
            false
        }
        fn read(&self, _: u64, _: &mut [u8]) -> Result<(), OutsideWindow> {
            Err(OutsideWindow)
        }
        fn write(&mut self, _: u64, _: &[u8]) -> Result<(), OutsideWindow> {
            Err(OutsideWindow)
        }
    }

    fn dev() -> VirtioNet {
        VirtioNet::new([0x02, 0, 0, 0, 0, 1], 1500).unwrap()
    }

    fn w(d: &mut VirtioNet, offset: u64, value: u32) -> Effect {
        d.write(offset, 4, u64::from(value), &NoMemory)
    }

    fn negotiate(d: &mut VirtioNet, high: u32, low: u32) -> u32 {
        w(d, STATUS, S_ACKNOWLEDGE);
        w(d, STATUS, S_ACKNOWLEDGE | S_DRIVER);
        w(d, DRIVER_FEATURES_SEL, 1);
        w(d, DRIVER_FEATURES, high);
        w(d, DRIVER_FEATURES_SEL, 0);
        w(d, DRIVER_FEATURES, low);
        w(d, STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        d.read(STATUS, 4) as u32
    }

    #[test]
    fn identity_and_features_read_as_the_spec_says() {
        let mut d = dev();
        assert_eq!(d.read(MAGIC_VALUE, 4), 0x7472_6976);
        assert_eq!(d.read(VERSION, 4), 2);
        assert_eq!(d.read(DEVICE_ID, 4), 1);
        assert_eq!(
            d.read(DEVICE_FEATURES, 4),
            (1 << 3) | (1 << 5) | (1 << 16) | (1 << 29)
        );
        w(&mut d, DEVICE_FEATURES_SEL, 1);
        assert_eq!(d.read(DEVICE_FEATURES, 4), 1, "VERSION_1 is bit 32");
        w(&mut d, DEVICE_FEATURES_SEL, 2);
        assert_eq!(d.read(DEVICE_FEATURES, 4), 0);
        w(&mut d, QUEUE_SEL, 2);
        assert_eq!(d.read(QUEUE_NUM_MAX_REG, 4), 0, "no third queue");
        w(&mut d, QUEUE_SEL, 1);
        assert_eq!(d.read(QUEUE_NUM_MAX_REG, 4), u64::from(QUEUE_NUM_MAX));
        for offset in [
            SHM_LEN_LOW,
            SHM_LEN_LOW + 4,
            SHM_LEN_LOW + 8,
            SHM_LEN_LOW + 12,
        ] {
            assert_eq!(d.read(offset, 4), 0xFFFF_FFFF, "no shared memory region");
        }
        assert_eq!(*d.ignored(), Ignored::default());
    }

    #[test]
    fn config_space_reads_at_byte_half_and_word_widths() {
        let mut d = VirtioNet::new([0x52, 0x54, 0x00, 0x12, 0x34, 0x56], 9000).unwrap();
        let mac: [u64; 6] = core::array::from_fn(|i| d.read(CONFIG + i as u64, 1));
        assert_eq!(mac, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(d.read(CONFIG + 6, 2), 1, "link up");
        assert_eq!(d.read(CONFIG + 8, 2), 1, "one queue pair");
        assert_eq!(d.read(CONFIG + 10, 2), 9000);
        assert_eq!(d.read(CONFIG, 4), 0x1200_5452);
        assert_eq!(*d.ignored(), Ignored::default());
        // Misaligned, 8-byte, past the fields, writes: zero, ignored, counted.
        assert_eq!(d.read(CONFIG + 1, 2), 0);
        assert_eq!(d.read(CONFIG, 8), 0);
        assert_eq!(d.read(CONFIG + 12, 4), 0);
        assert_eq!(d.write(CONFIG, 1, 0xFF, &NoMemory), Effect::None);
        assert_eq!(d.read(CONFIG, 1), 0x52);
        let i = d.ignored();
        assert_eq!((i.bad_width, i.unknown, i.wrong_direction), (2, 1, 1));
    }

    #[test]
    fn control_registers_of_the_wrong_width_or_direction_are_ignored() {
        let mut d = dev();
        assert_eq!(d.read(MAGIC_VALUE, 2), 0);
        assert_eq!(d.read(MAGIC_VALUE, 8), 0);
        assert_eq!(d.read(MAGIC_VALUE + 1, 4), 0);
        assert_eq!(d.write(STATUS, 1, 1, &NoMemory), Effect::None);
        assert_eq!(d.read(STATUS, 4), 0, "the byte store did not land");
        assert_eq!(d.ignored().bad_width, 4);
        assert_eq!(w(&mut d, MAGIC_VALUE, 0), Effect::None);
        assert_eq!(d.read(QUEUE_NOTIFY, 4), 0);
        assert_eq!(d.ignored().wrong_direction, 2);
        assert_eq!(d.read(0x0F0, 4), 0);
        // Offsets at the top of the address space neither wrap nor panic.
        assert_eq!(d.read(u64::MAX - 3, 4), 0);
        assert_eq!(d.read(u64::MAX, 1), 0);
        assert_eq!(d.write(!3, 4, 1, &NoMemory), Effect::None);
        assert_eq!(w(&mut d, QUEUE_RESET, 1), Effect::None);
        assert_eq!(d.read(WINDOW_SIZE, 4), 0);
        assert_eq!(d.ignored().unknown, 6);
        assert_eq!(d.ignored().bad_width, 4);
        assert_eq!(d.read(MAGIC_VALUE, 4), u64::from(MAGIC));
    }

    #[test]
    fn features_ok_needs_version_1_and_nothing_beyond_the_offer() {
        let mut d = dev();
        assert_eq!(negotiate(&mut d, 0, F_MAC as u32) & S_FEATURES_OK, 0);
        assert_eq!(d.ignored().refused, 1);
        // CSUM (bit 0) is not offered.
        w(&mut d, STATUS, 0);
        assert_eq!(negotiate(&mut d, 1, 1) & S_FEATURES_OK, 0);
        // A feature word beyond the two that exist.
        w(&mut d, STATUS, 0);
        w(&mut d, DRIVER_FEATURES_SEL, 2);
        w(&mut d, DRIVER_FEATURES, 1);
        assert_eq!(negotiate(&mut d, 1, 0) & S_FEATURES_OK, 0);
        // The whole offer is accepted, then frozen.
        w(&mut d, STATUS, 0);
        assert_ne!(negotiate(&mut d, 1, FEATURES as u32) & S_FEATURES_OK, 0);
        assert_eq!(d.driver_features(), FEATURES);
        w(&mut d, DRIVER_FEATURES, 0);
        assert_eq!(d.driver_features(), FEATURES, "no change after FEATURES_OK");
    }

    #[test]
    fn status_bits_are_never_cleared_and_driver_ok_needs_features_ok() {
        let mut d = dev();
        w(&mut d, STATUS, S_ACKNOWLEDGE | S_DRIVER);
        assert_eq!(
            w(&mut d, STATUS, S_ACKNOWLEDGE | S_DRIVER | S_DRIVER_OK),
            Effect::None
        );
        assert_eq!(d.status(), S_ACKNOWLEDGE | S_DRIVER);
        assert_eq!(
            w(&mut d, STATUS, S_ACKNOWLEDGE),
            Effect::None,
            "clears DRIVER"
        );
        assert_eq!(d.status(), S_ACKNOWLEDGE | S_DRIVER);
        // The driver cannot set DEVICE_NEEDS_RESET, nor reserved bits.
        w(
            &mut d,
            STATUS,
            S_ACKNOWLEDGE | S_DRIVER | S_DEVICE_NEEDS_RESET | 0x30,
        );
        assert_eq!(d.status(), S_ACKNOWLEDGE | S_DRIVER);
        assert_eq!(d.ignored().refused, 2);
        assert_eq!(w(&mut d, STATUS, 0), Effect::Reset);
        assert_eq!(d.status(), 0);
    }

    #[test]
    fn a_link_change_bumps_the_generation_and_interrupts_a_running_driver() {
        let mut d = dev();
        assert!(!d.set_link(false), "no driver yet: no interrupt");
        assert_eq!(d.read(CONFIG_GENERATION, 4), 1);
        assert_eq!(d.read(CONFIG + 6, 2), 0);
        negotiate(&mut d, 1, FEATURES as u32);
        let s = d.status();
        assert_eq!(w(&mut d, STATUS, s | S_DRIVER_OK), Effect::Live);
        assert!(!d.set_link(false), "unchanged");
        assert!(d.set_link(true));
        assert_eq!(d.read(INTERRUPT_STATUS, 4), u64::from(INT_CONFIG));
        w(&mut d, INTERRUPT_ACK, INT_CONFIG);
        assert!(!d.interrupt_pending());
        assert_eq!(d.read(CONFIG_GENERATION, 4), 2);
    }

    #[test]
    fn notifications_of_queues_not_live_are_ignored() {
        let mut d = dev();
        assert_eq!(w(&mut d, QUEUE_NOTIFY, 1), Effect::None);
        assert_eq!(w(&mut d, QUEUE_NOTIFY, 7), Effect::None);
        assert_eq!(d.ignored().no_queue, 2);
        w(&mut d, QUEUE_SEL, 9);
        assert_eq!(w(&mut d, QUEUE_NUM, 8), Effect::None);
        assert_eq!(w(&mut d, QUEUE_READY, 1), Effect::None);
        assert_eq!(d.ignored().no_queue, 4);
    }

    #[test]
    fn bad_configurations_are_refused() {
        assert_eq!(
            VirtioNet::new([2, 0, 0, 0, 0, 1], 67).err(),
            Some(ConfigError::MtuTooSmall)
        );
        assert_eq!(
            VirtioNet::new([1, 0, 0, 0, 0, 1], 1500).err(),
            Some(ConfigError::BadMac)
        );
        assert_eq!(
            VirtioNet::new([0; 6], 1500).err(),
            Some(ConfigError::BadMac)
        );
    }

    #[test]
    fn segments_after_a_header_drop_or_shorten_the_leading_buffers() {
        let mut s = Segments::default();
        for (ipa, len) in [(0x1000, 12), (0x2000, 100), (0x3000, 50)] {
            s.push_for_test(Segment { ipa, len });
        }
        assert_eq!(
            s.after(12).as_slice(),
            &[
                Segment {
                    ipa: 0x2000,
                    len: 100
                },
                Segment {
                    ipa: 0x3000,
                    len: 50
                }
            ]
        );
        assert_eq!(
            s.after(20).as_slice(),
            &[
                Segment {
                    ipa: 0x2008,
                    len: 92
                },
                Segment {
                    ipa: 0x3000,
                    len: 50
                }
            ]
        );
        assert_eq!(s.after(162).as_slice(), &[]);
        assert_eq!(
            s.first(1).as_slice(),
            &[Segment {
                ipa: 0x1000,
                len: 12
            }]
        );
        assert_eq!(s.bytes(), 162);
    }
}
