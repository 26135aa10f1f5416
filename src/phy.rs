//! A [`smoltcp`] network device on a partition's queue set (feature `smoltcp`).
//!
//! [`IqdioDevice`] implements [`smoltcp::phy::Device`] with [`Medium::Ip`] (or, on a
//! layer-2 queue set, [`Medium::Ethernet`]: see below) on top of a
//! partition's [`QueueDriver`] and any [`Siga`] (the fabric's [`Port`](crate::Port),
//! or a hypervisor's trap path). It is `no_std` and allocates nothing: the caller
//! lends it the driver and two scratch buffers.
//!
//! - **Transmit.** smoltcp writes an IP packet straight into the next free output
//!   buffer (zero-copy: the fabric's copy is the packet's only one); the device reads
//!   the packet's IP destination (IPv4 bytes 16-19, IPv6 bytes 24-39), the driver
//!   writes the 32-byte frame header with that address as next hop and its elements,
//!   and issues SIGA write. (Should no output buffer be free, smoltcp writes into the
//!   transmit buffer and [`QueueDriver::send`] copies it.)
//!   The send is synchronous: when it returns, the frame is in the target's input
//!   queue or the fabric said why not.
//! - **Receive.** The device takes the next input buffer the fabric filled (0x82).
//!   When it holds one frame (what the fabric delivers for each SIGA of a single
//!   packet), smoltcp reads the packet where it landed (zero-copy: the fabric's copy
//!   is its only one), and the device hands the buffer back to the fabric (the
//!   driver re-arms it with the same data pages) at its next `receive`, `transmit`,
//!   [`driver_mut`](IqdioDevice::driver_mut) or drop, when no token can borrow it any
//!   more. A buffer of several frames is copied into the receive buffer, handed back
//!   at once, and its packets given to smoltcp one by one.
//! - **Capabilities.** Medium IP; MTU [`Mfs::mtu`] of the driver's maximum frame size
//!   (56 KiB for 64 KiB frames); checksums computed on transmit, so every packet is
//!   valid IP for any receiver, and not verified on receive: the fabric copies memory
//!   to memory and has no wire to corrupt a packet on ([`IqdioDevice::set_checksums`]
//!   changes this).
//!
//! ## The Ethernet device (layer 2)
//!
//! [`IqdioDevice::new_ethernet`] makes a [`Medium::Ethernet`] device on a layer-2
//! queue set ([`DriverConfig::layer2`](crate::driver::DriverConfig::layer2)) for one
//! VLAN (0: the untagged LAN), so that the stack runs ARP and IPv6 neighbour discovery
//! itself, with no static neighbour entries:
//!
//! - **Transmit.** smoltcp writes its Ethernet frame straight into the next output
//!   buffer of queue 0, after 4 bytes of room; on a VLAN the device moves the two MACs
//!   into the room and writes the 802.1Q tag after them (as a Linux VLAN device
//!   does), untagged it uses no room. The driver writes Linux's `qeth_hdr_layer2` for
//!   the frame ([`L2Header`](crate::qdio::l2::L2Header)) and sends it: a unicast MAC
//!   on queue 0, a broadcast or group MAC (ARP requests, neighbour solicitations) on
//!   the multicast queue, where the frame moves with one copy.
//! - **Receive.** As the IP device, in place when the buffer holds one frame; a frame
//!   of the device's VLAN is handed over with its tag removed (the MACs move 4 bytes
//!   on, over it, in the held buffer), a frame of any other VLAN is not
//!   ([`DeviceCounters::rx_other_vlan`]).
//! - **Capabilities.** MTU (which counts the Ethernet header for smoltcp) the maximum
//!   frame size's, less the tag on a VLAN.
//!
//! The queue set needs its MAC registered, its VLAN joined and the IPv6 group MACs
//! the stack listens on registered ([`IPV6_ALL_NODES_MAC`], [`solicited_node_mac`] of
//! each address); ARP needs only the broadcast MAC, which every VLAN member gets.
//!
//! ## Back-pressure and loss
//!
//! A target whose input queue has no empty buffer refuses the frame with
//! [`Reason::TargetFull`] (sbalf15 0x10); the frame is intact. The device retries the
//! send at once, up to [`IqdioDevice::retry_limit`] times with a growing spin between
//! tries, so that the receiver, running on its own CPU, can drain. While it retries
//! it drains nothing from its own input queue: those frames belong to the stack,
//! which gets them from the next [`receive`](smoltcp::phy::Device::receive). If the
//! target is still full after the last try, the packet is not sent: the device counts
//! it in [`DeviceCounters::tx_dropped_full`] and returns, and the stack recovers as it
//! does from any loss (TCP retransmits; a UDP datagram or an echo request is lost,
//! visibly). Two partitions that both retry towards each other's full queues so
//! cannot deadlock: each gives up after a bounded time and drains its input again.
//!
//! No packet is ever dropped silently: every packet smoltcp hands the device ends in
//! exactly one of [`DeviceCounters::tx_packets`], [`DeviceCounters::tx_dropped_full`],
//! [`DeviceCounters::tx_unreachable`] (no active queue set has the next hop:
//! [`Reason::Unreachable`], [`Reason::TargetNotActive`]) or
//! [`DeviceCounters::tx_errors`] (anything else; [`IqdioDevice::last_error`] says
//! what).
//!
//! ## Example
//!
//! A partition with one queue set, its stack, and a UDP datagram it sends to its own
//! address: out through its output queue, through the fabric, into its input queue.
//!
//! ```
//! use core::ptr::NonNull;
//! use iqdio::driver::{DriverConfig, Indicators, QueueDriver, Region};
//! use iqdio::phy::{IqdioDevice, rx_buffer_len, tx_buffer_len};
//! use iqdio::{Fabric, FabricConfig, InterruptDelivery, InterruptTarget, Mfs, Platform};
//! use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
//! use smoltcp::socket::udp;
//! use smoltcp::time::Instant;
//! use smoltcp::wire::{HardwareAddress, IpCidr, Ipv4Address};
//!
//! struct Host;
//! impl Platform for Host {
//!     fn raise_interrupt(&self, _: InterruptTarget) -> InterruptDelivery {
//!         InterruptDelivery::Delivered
//!     }
//!     fn now_ns(&self) -> u64 { 0 }
//! }
//! static FABRIC: Fabric<Host, 4, 16> = Fabric::new(Host, FabricConfig::DEFAULT);
//!
//! // The partition's memory: 2 MiB, page-aligned (an image uses the partition's RAM).
//! #[repr(C, align(4096))]
//! #[derive(Clone, Copy)]
//! struct Page([u8; 4096]);
//! let ram: &'static mut [Page] = Vec::leak(vec![Page([0; 4096]); 512]);
//! // A pointer to the whole slice: it may reach all 512 pages (one made from
//! // `&mut ram[0]` would reach the first page only).
//! let host = NonNull::from(ram).cast::<u8>();
//! // SAFETY: the memory is leaked, so it outlives the fabric's use, and no Rust
//! // reference to it is used from here on.
//! let mut region = unsafe { Region::new(host, 0x4000_0000, 512 * 4096) }.unwrap();
//! let indicators = Indicators::new(&mut region).unwrap();
//! let mut driver =
//!     QueueDriver::new(&mut region, &indicators, DriverConfig::new(0, Mfs::K64)).unwrap();
//! let me = Ipv4Address::new(10, 0, 1, 1);
//! FABRIC.add_partition(1, &[region.window()]).unwrap();
//! FABRIC.establish(1, 0, &driver.params()).unwrap();
//! FABRIC.register_address(1, 0, me.into()).unwrap();
//!
//! // The device and the stack on it.
//! let (mut rx, mut tx) = (vec![0; rx_buffer_len(Mfs::K64)], vec![0; tx_buffer_len(Mfs::K64)]);
//! let mut dev = IqdioDevice::new(&mut driver, FABRIC.port(1), &mut rx, &mut tx).unwrap();
//! let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut dev, Instant::ZERO);
//! iface.update_ip_addrs(|a| a.push(IpCidr::new(me.into(), 16)).unwrap());
//!
//! let (mut meta, mut bytes) = ([udp::PacketMetadata::EMPTY; 4], [0u8; 4096]);
//! let (rm, tm) = meta.split_at_mut(2);
//! let (rb, tb) = bytes.split_at_mut(2048);
//! let mut sock = udp::Socket::new(udp::PacketBuffer::new(rm, rb), udp::PacketBuffer::new(tm, tb));
//! sock.bind(7).unwrap();
//! let mut storage: [SocketStorage; 1] = Default::default();
//! let mut sockets = SocketSet::new(&mut storage[..]);
//! let h = sockets.add(sock);
//! sockets.get_mut::<udp::Socket>(h).send_slice(b"hello", (me, 7)).unwrap();
//!
//! // The partition's loop: poll (send, then receive what arrived), use the sockets.
//! for ms in 0..2 {
//!     iface.poll(Instant::from_millis(ms), &mut dev, &mut sockets);
//! }
//! let (data, _) = sockets.get_mut::<udp::Socket>(h).recv().unwrap();
//! assert_eq!(data, b"hello");
//! assert_eq!(dev.counters().tx_packets, 1);
//! assert_eq!(dev.counters().tx_dropped(), 0);
//! ```

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::driver::{Dest, QueueDriver, SendError};
use crate::fabric::Siga;
use crate::guest::GuestSlice;
use crate::qdio::l2::{ETH_MIN, Mac, TPID_8021Q};
use crate::qdio::{HEADER_SIZE, Mfs, QUEUE_BUFFERS, Reason, SBALES_PER_SBAL};

/// Retries of a refused-as-full send before the packet is counted as dropped.
pub const DEFAULT_RETRY_LIMIT: u32 = 64;

/// The longest spin between two retries: `1 << MAX_BACKOFF_SHIFT` spin-loop hints.
const MAX_BACKOFF_SHIFT: u32 = 10;

/// Bytes of receive buffer a device needs for this maximum frame size: one input
/// buffer's packets (every frame in it, headers excluded).
pub const fn rx_buffer_len(mfs: Mfs) -> usize {
    mfs.bytes() - HEADER_SIZE
}

/// Bytes of transmit buffer a device needs for this maximum frame size: one packet of
/// the MTU.
pub const fn tx_buffer_len(mfs: Mfs) -> usize {
    mfs.mtu()
}

/// Why a device could not be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceError {
    /// The receive buffer is shorter than [`rx_buffer_len`] (`needed` bytes).
    RxBufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// The transmit buffer is shorter than [`tx_buffer_len`] (`needed` bytes).
    TxBufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// The driver is of the other layer: [`IqdioDevice::new`] needs a layer-3 driver,
    /// [`IqdioDevice::new_ethernet`] a layer-2 one
    /// ([`DriverConfig::layer2`](crate::driver::DriverConfig::layer2)).
    WrongLayer,
    /// A VLAN id above 4094.
    InvalidVlan,
}

impl core::fmt::Display for DeviceError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::RxBufferTooSmall { needed } => {
                write!(f, "receive buffer too small: {needed} bytes needed")
            }
            Self::TxBufferTooSmall { needed } => {
                write!(f, "transmit buffer too small: {needed} bytes needed")
            }
            Self::WrongLayer => f.write_str("driver of the other layer"),
            Self::InvalidVlan => f.write_str("VLAN id above 4094"),
        }
    }
}

impl core::error::Error for DeviceError {}

/// What a device did since it was made. Every packet the stack transmitted is in
/// exactly one of `tx_packets`, `tx_dropped_full`, `tx_unreachable`, `tx_errors`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    /// Packets delivered into a target's input queue.
    pub tx_packets: u64,
    /// Bytes of those packets (frame headers excluded).
    pub tx_bytes: u64,
    /// Retries after a [`Reason::TargetFull`] (or [`Reason::TargetBufferInvalid`])
    /// refusal: back-pressure that was absorbed.
    pub tx_full_retries: u64,
    /// Packets not sent because the target was still full after the last retry.
    pub tx_dropped_full: u64,
    /// Packets not sent because no active queue set has the next hop
    /// ([`Reason::Unreachable`], [`Reason::TargetNotActive`]).
    pub tx_unreachable: u64,
    /// Packets not sent for any other reason: not an IPv4/IPv6 packet, another
    /// refusal, a SIGA condition code, a driver error ([`IqdioDevice::last_error`]).
    pub tx_errors: u64,
    /// Packets handed to the stack.
    pub rx_packets: u64,
    /// Bytes of those packets.
    pub rx_bytes: u64,
    /// Received frames not handed to the stack: frames the driver counted bad
    /// ([`RxCounters::bad_frames`](crate::driver::RxCounters::bad_frames)), input
    /// buffers the fabric marked in error (0x8F, no frame in them), and frames that
    /// could not be staged (empty, or more frames than the receive buffer holds).
    pub rx_errors: u64,
    /// Ethernet device only: received frames of another VLAN than the device's (read
    /// from the frame's 802.1Q tag; untagged is VLAN 0), not handed to the stack. The
    /// fabric delivers a VLAN's frames to its members only, so this stays 0 unless the
    /// queue set is the bridge port or a member of several VLANs.
    pub rx_other_vlan: u64,
}

impl DeviceCounters {
    /// Packets the stack transmitted that did not reach a target.
    pub const fn tx_dropped(&self) -> u64 {
        self.tx_dropped_full + self.tx_unreachable + self.tx_errors
    }
}

/// Why the latest packet that was not sent was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxError {
    /// The driver or the fabric refused it.
    Send(SendError),
    /// The packet is neither IPv4 nor IPv6, or shorter than its IP header.
    NotIp,
    /// The stack asked for more bytes than the transmit buffer holds.
    TooLong(usize),
}

/// A received packet waiting for the stack.
#[derive(Clone, Copy)]
enum Staged {
    /// Copied into the receive buffer: (offset, length) there.
    Copied(usize, usize),
    /// In place in the input buffer the driver holds ([`QueueDriver::hold_single`]).
    InPlace(GuestSlice),
}

/// The received packets of one input buffer: copied out of partition memory, or one
/// packet in place.
struct RxStage<'d> {
    buf: &'d mut [u8],
    /// The staged packets, in order.
    packets: heapless::Vec<Staged, SBALES_PER_SBAL>,
    /// The next packet to hand out.
    next: usize,
}

/// Everything a transmit token needs.
struct TxPath<'d, S: Siga> {
    driver: &'d mut QueueDriver,
    siga: S,
    /// Ethernet device: `Some` with its VLAN (0 untagged).
    vlan: Option<u16>,
    buf: &'d mut [u8],
    counters: DeviceCounters,
    last_error: Option<TxError>,
    retry_limit: u32,
}

/// A smoltcp device ([`Medium::Ip`]) on one queue set of a partition.
///
/// `S` issues SIGA for the partition: the fabric's [`Port`](crate::Port) on a host,
/// or whatever traps to the hypervisor in a guest. See the [module docs](self) for
/// the transmit, receive, back-pressure and loss behaviour.
pub struct IqdioDevice<'d, S: Siga> {
    rx: RxStage<'d>,
    tx: TxPath<'d, S>,
    checksums: ChecksumCapabilities,
}

impl<'d, S: Siga> IqdioDevice<'d, S> {
    /// A device on `driver`'s queue set (established with the fabric, its addresses
    /// registered), issuing SIGA through `siga`. `rx_buf` must hold at least
    /// [`rx_buffer_len`] bytes and `tx_buf` at least [`tx_buffer_len`] for the
    /// driver's maximum frame size.
    pub fn new(
        driver: &'d mut QueueDriver,
        siga: S,
        rx_buf: &'d mut [u8],
        tx_buf: &'d mut [u8],
    ) -> Result<Self, DeviceError> {
        if driver.config().layer2 {
            return Err(DeviceError::WrongLayer);
        }
        Self::make(driver, siga, rx_buf, tx_buf, None)
    }

    /// An Ethernet device ([`Medium::Ethernet`]) on `driver`'s layer-2 queue set, for
    /// VLAN `vlan` (0: the untagged LAN): the stack's frames go out tagged with `vlan`
    /// (the device inserts the 802.1Q tag, as a Linux VLAN device does), and frames of
    /// `vlan` come in with the tag removed; frames of any other VLAN are not handed to
    /// the stack ([`DeviceCounters::rx_other_vlan`]). Buffers as for
    /// [`new`](Self::new).
    ///
    /// The queue set must be set up so the stack's ARP and neighbour discovery work:
    /// its MAC registered, a member of `vlan`, and the group MACs the stack listens on
    /// registered: for IPv6 the all-nodes MAC ([`IPV6_ALL_NODES_MAC`]) and each
    /// address's solicited-node MAC ([`solicited_node_mac`]). On a host that is
    /// [`Fabric::register_mac`](crate::Fabric::register_mac),
    /// [`join_vlan`](crate::Fabric::join_vlan) and
    /// [`register_group_mac`](crate::Fabric::register_group_mac); in a partition,
    /// the hypervisor's calls for them.
    pub fn new_ethernet(
        driver: &'d mut QueueDriver,
        siga: S,
        rx_buf: &'d mut [u8],
        tx_buf: &'d mut [u8],
        vlan: u16,
    ) -> Result<Self, DeviceError> {
        if !driver.config().layer2 {
            return Err(DeviceError::WrongLayer);
        }
        if vlan > 4094 {
            return Err(DeviceError::InvalidVlan);
        }
        Self::make(driver, siga, rx_buf, tx_buf, Some(vlan))
    }

    fn make(
        driver: &'d mut QueueDriver,
        siga: S,
        rx_buf: &'d mut [u8],
        tx_buf: &'d mut [u8],
        vlan: Option<u16>,
    ) -> Result<Self, DeviceError> {
        let mfs = driver.config().mfs;
        if rx_buf.len() < rx_buffer_len(mfs) {
            return Err(DeviceError::RxBufferTooSmall {
                needed: rx_buffer_len(mfs),
            });
        }
        if tx_buf.len() < tx_buffer_len(mfs) {
            return Err(DeviceError::TxBufferTooSmall {
                needed: tx_buffer_len(mfs),
            });
        }
        let mut checksums = ChecksumCapabilities::default();
        checksums.ipv4 = Checksum::Tx;
        checksums.udp = Checksum::Tx;
        checksums.tcp = Checksum::Tx;
        checksums.icmpv4 = Checksum::Tx;
        checksums.icmpv6 = Checksum::Tx;
        Ok(Self {
            rx: RxStage {
                buf: rx_buf,
                packets: heapless::Vec::new(),
                next: 0,
            },
            tx: TxPath {
                driver,
                siga,
                vlan,
                buf: tx_buf,
                counters: DeviceCounters::default(),
                last_error: None,
                retry_limit: DEFAULT_RETRY_LIMIT,
            },
            checksums,
        })
    }

    /// What the device did so far.
    pub fn counters(&self) -> DeviceCounters {
        self.tx.counters
    }

    /// Why the latest packet that was not sent was not sent.
    pub fn last_error(&self) -> Option<TxError> {
        self.tx.last_error
    }

    /// Retries of a send refused as target-full before the packet is dropped
    /// (counted in [`DeviceCounters::tx_dropped_full`]).
    pub fn retry_limit(&self) -> u32 {
        self.tx.retry_limit
    }

    /// Sets the retry limit (default [`DEFAULT_RETRY_LIMIT`]). 0 means no retry.
    pub fn set_retry_limit(&mut self, limit: u32) {
        self.tx.retry_limit = limit;
    }

    /// Sets the checksum behaviour reported to the stack (default: compute on
    /// transmit, do not verify on receive).
    pub fn set_checksums(&mut self, checksums: ChecksumCapabilities) {
        self.checksums = checksums;
    }

    /// Whether a received packet is waiting for the stack: staged in the device, or
    /// in an input buffer the fabric filled. A partition checks this (after
    /// resetting its indicator bytes) before it sleeps.
    pub fn has_input(&self) -> bool {
        self.rx.next < self.rx.packets.len() || self.tx.driver.has_input()
    }

    /// The queue driver, for indicator and polling management.
    pub fn driver(&self) -> &QueueDriver {
        self.tx.driver
    }

    /// The queue driver, mutably (e.g. [`QueueDriver::start_polling`]). Sending or
    /// receiving through it directly bypasses the device and its counters. An input
    /// buffer the device held for a packet read in place is handed back first.
    pub fn driver_mut(&mut self) -> &mut QueueDriver {
        self.release();
        self.tx.driver
    }

    /// Hands back the input buffer of the packet smoltcp read in place, once it has
    /// (every staged packet given out; no token outlives the `&mut self` this runs
    /// under).
    fn release(&mut self) {
        if self.rx.next >= self.rx.packets.len() {
            self.tx.driver.release_held();
        }
    }

    /// The SIGA path.
    pub fn siga(&self) -> &S {
        &self.tx.siga
    }

    /// Ethernet device: a staged frame as the stack gets it: of the device's VLAN
    /// (else counted in [`DeviceCounters::rx_other_vlan`] and `None`), its 802.1Q tag
    /// removed (the two MACs move 4 bytes on, over it, in the input buffer held or the
    /// receive buffer). The IP device's packets as they are.
    fn untag(&mut self, staged: Staged) -> Option<Staged> {
        let Some(vid) = self.tx.vlan else {
            return Some(staged);
        };
        let mut head = [0u8; 16];
        let (vlan, tagged) = match staged {
            Staged::Copied(off, len) => frame_vlan(self.rx.buf.get(off..off + len)?),
            Staged::InPlace(g) => {
                let k = g.len().min(head.len());
                g.read(0, &mut head[..k]);
                frame_vlan(&head[..k])
            }
        }
        .or_else(|| {
            // Shorter than a frame: the driver hands over none such (it checks 14 bytes).
            self.tx.counters.rx_errors += 1;
            None
        })?;
        if vlan != vid {
            self.tx.counters.rx_other_vlan += 1;
            return None;
        }
        if !tagged {
            return Some(staged);
        }
        // Tagged: at least 16 bytes (`frame_vlan` read the TCI).
        match staged {
            Staged::Copied(off, len) => {
                self.rx.buf.copy_within(off..off + 12, off + 4);
                Some(Staged::Copied(off + 4, len - 4))
            }
            Staged::InPlace(g) => {
                // The buffer is held (0x82, the program's): the fabric does not write
                // it, and no borrow of its bytes is alive (tokens end before `&mut self`
                // methods run).
                GuestSlice::copy(&g, 0, &g, 4, 12);
                g.sub(4, g.len() - 4).map(Staged::InPlace)
            }
        }
    }

    /// Makes sure a received packet is staged; false when no input is waiting.
    fn stage(&mut self) -> bool {
        if self.rx.next < self.rx.packets.len() {
            return true;
        }
        self.release();
        self.rx.packets.clear();
        self.rx.next = 0;
        // Bounded: each round consumes one input buffer, of which there are at most
        // QUEUE_BUFFERS filled.
        for _ in 0..QUEUE_BUFFERS {
            // One frame: lent in place, the buffer held until the next call.
            if let Some(packet) = self.tx.driver.hold_single() {
                // Empty (the vector was cleared above): the push cannot fail.
                let _ = self.rx.packets.push(Staged::InPlace(packet));
                return true;
            }
            let buf = &mut *self.rx.buf;
            let packets = &mut self.rx.packets;
            let mut used = 0;
            let mut bad = 0u64;
            let before = self.tx.driver.rx_counters();
            let taken = self.tx.driver.receive(|frame| {
                let len = frame.len();
                let fits = len > 0 && used + len <= buf.len() && !packets.is_full();
                if !fits || frame.copy_to(&mut buf[used..used + len]) != len {
                    bad += 1;
                    return;
                }
                // Not full (checked above).
                let _ = packets.push(Staged::Copied(used, len));
                used += len;
            });
            if taken.is_none() {
                return false;
            }
            // What the driver could not hand over: bad frames, error buffers.
            let after = self.tx.driver.rx_counters();
            self.tx.counters.rx_errors += bad
                + (after.bad_frames - before.bad_frames)
                + (after.error_buffers - before.error_buffers);
            if !self.rx.packets.is_empty() {
                return true;
            }
        }
        false
    }
}

impl<'d, S: Siga> TxPath<'d, S> {
    /// Sends the first `len` bytes of the transmit buffer, retrying target-full;
    /// counts the outcome.
    fn send(&mut self, len: usize) {
        let packet = &self.buf[..len];
        // The IP device's next hop; the Ethernet device's frame names its own MAC.
        let dest = match (self.vlan, next_hop(packet)) {
            (Some(_), _) => None,
            (None, Some(d)) => Some(d),
            (None, None) => {
                self.fail(TxError::NotIp);
                return;
            }
        };
        let mut tries = 0u32;
        loop {
            // Unicast whatever the address, as the zero-copy path (`prime_routed`) sends
            // it: the IP device sends on output queue 0 only. The Ethernet device's
            // frame goes where its destination MAC says.
            let outcome = match dest {
                Some(d) => self.driver.send(&self.siga, Dest::Unicast(d), packet),
                None => self.driver.send_eth(&self.siga, packet),
            };
            match outcome {
                Ok(()) => {
                    self.counters.tx_packets += 1;
                    self.counters.tx_bytes += len as u64;
                    return;
                }
                Err(SendError::Refused(r)) if r.is_retryable() => {
                    if tries >= self.retry_limit {
                        self.counters.tx_dropped_full += 1;
                        self.last_error = Some(TxError::Send(SendError::Refused(r)));
                        return;
                    }
                    tries += 1;
                    self.counters.tx_full_retries += 1;
                    for _ in 0..1u32 << tries.min(MAX_BACKOFF_SHIFT) {
                        core::hint::spin_loop();
                    }
                }
                Err(e @ SendError::Refused(Reason::Unreachable | Reason::TargetNotActive)) => {
                    self.counters.tx_unreachable += 1;
                    self.last_error = Some(TxError::Send(e));
                    return;
                }
                Err(e) => {
                    self.fail(TxError::Send(e));
                    return;
                }
            }
        }
    }

    /// Sends output buffer `n`, primed in place with a packet of `len` bytes, and
    /// counts the outcome as [`send`](Self::send) does; a target-full refusal is
    /// retried by [`QueueDriver::resend`], which moves the frame into the next
    /// output buffer (the packet is no longer anywhere else).
    fn complete(&mut self, q: u8, n: u8, len: usize) {
        let mut tries = 0u32;
        let mut outcome = self.driver.siga_write_on(&self.siga, q, n);
        loop {
            match outcome {
                Ok(()) => {
                    self.counters.tx_packets += 1;
                    self.counters.tx_bytes += len as u64;
                    return;
                }
                Err(SendError::Refused(r)) if r.is_retryable() => {
                    if tries >= self.retry_limit {
                        self.counters.tx_dropped_full += 1;
                        self.last_error = Some(TxError::Send(SendError::Refused(r)));
                        return;
                    }
                    tries += 1;
                    self.counters.tx_full_retries += 1;
                    for _ in 0..1u32 << tries.min(MAX_BACKOFF_SHIFT) {
                        core::hint::spin_loop();
                    }
                    // The refused frame is in the buffer primed last on its queue.
                    let refused = self.driver.last_primed_on(q);
                    outcome = self.driver.resend_on(&self.siga, q, refused);
                }
                Err(e @ SendError::Refused(Reason::Unreachable | Reason::TargetNotActive)) => {
                    self.counters.tx_unreachable += 1;
                    self.last_error = Some(TxError::Send(e));
                    return;
                }
                Err(e) => {
                    self.fail(TxError::Send(e));
                    return;
                }
            }
        }
    }

    fn fail(&mut self, e: TxError) {
        self.counters.tx_errors += 1;
        self.last_error = Some(e);
    }

    /// Bytes of 802.1Q tag the Ethernet device inserts (4 on a VLAN, 0 untagged or
    /// for the IP device).
    fn tag_len(&self) -> usize {
        match self.vlan {
            Some(v) if v != 0 => 4,
            _ => 0,
        }
    }

    /// The Ethernet device's transmit: the stack writes its frame (`len` bytes)
    /// straight into the next output buffer, after room for the tag; the device moves
    /// the two MACs in front of the room and writes the tag there, and the driver the
    /// layer-2 header (the frame's only copy is the fabric's, but for a broadcast or
    /// group frame, which moves to the multicast queue).
    fn transmit_eth<R, F>(&mut self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let extra = self.tag_len();
        let vid = self.vlan.unwrap_or(0);
        let total = len + extra;
        if total > self.buf.len() {
            let r = f(&mut self.buf[..]);
            self.fail(TxError::TooLong(len));
            return r;
        }
        let write = |b: &mut [u8]| {
            let r = f(b.get_mut(extra..).unwrap_or_default());
            insert_tag(b, extra, vid);
            r
        };
        if let Err(e) = self.driver.flush_pending(&self.siga) {
            let r = write(&mut self.buf[..total]);
            self.fail(TxError::Send(e));
            return r;
        }
        match self.driver.prime_eth_with(total, write) {
            Ok((r, Ok((q, n)))) => {
                self.complete(q, n, total);
                r
            }
            Ok((r, Err(e))) => {
                self.fail(TxError::Send(SendError::Driver(e)));
                r
            }
            Err((write, _)) => {
                let r = write(&mut self.buf[..total]);
                self.send(total);
                r
            }
        }
    }
}

/// Turns the untagged Ethernet frame at `b[extra..]` into one tagged with VLAN `vid`
/// at `b`: the two MACs move `extra` (4) bytes forward and the 802.1Q tag (TPID
/// 0x8100, TCI `vid`, priority 0) goes after them. Nothing with `extra` 0, or a frame
/// too short for its MACs.
fn insert_tag(b: &mut [u8], extra: usize, vid: u16) {
    if extra != 4 || b.len() < 16 {
        return;
    }
    b.copy_within(4..16, 0);
    b[12..14].copy_from_slice(&TPID_8021Q.to_be_bytes());
    b[14..16].copy_from_slice(&vid.to_be_bytes());
}

/// The VLAN of an Ethernet frame, from its 802.1Q tag (0 untagged), and whether it is
/// tagged; `None` for a frame too short to say.
fn frame_vlan(frame: &[u8]) -> Option<(u16, bool)> {
    if frame.len() < ETH_MIN {
        return None;
    }
    if u16::from_be_bytes([frame[12], frame[13]]) == TPID_8021Q {
        let tci = frame.get(14..16)?;
        Some((u16::from_be_bytes([tci[0], tci[1]]) & 0x0FFF, true))
    } else {
        Some((0, false))
    }
}

/// The IPv6 all-nodes group MAC (33:33:00:00:00:01), which a stack doing IPv6
/// neighbour discovery listens on (RFC 2464: 33:33 and the group's last 32 bits).
pub const IPV6_ALL_NODES_MAC: Mac = [0x33, 0x33, 0, 0, 0, 1];

/// The group MAC of IPv6 multicast address `group` (RFC 2464, section 7: 33:33 and the
/// address's last 32 bits).
pub const fn ipv6_multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

/// The group MAC of the solicited-node multicast address of `addr` (ff02::1:ffXX:XXXX,
/// RFC 4291 section 2.7.1): 33:33:ff and the address's last 24 bits. Neighbour
/// solicitations for `addr` go there.
pub const fn solicited_node_mac(addr: Ipv6Addr) -> Mac {
    let o = addr.octets();
    [0x33, 0x33, 0xff, o[13], o[14], o[15]]
}

/// The next hop of an IP packet: its destination address (IPv4 bytes 16-19, IPv6
/// bytes 24-39), or `None` if the packet is neither or too short for its header.
pub fn next_hop(packet: &[u8]) -> Option<IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let d: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(d)))
        }
        6 => {
            let d: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(d)))
        }
        _ => None,
    }
}

/// A received packet, staged in the device's receive buffer.
pub struct IqdioRxToken<'a> {
    packet: &'a [u8],
}

impl phy::RxToken for IqdioRxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.packet)
    }
}

/// Permission to send one packet; the send happens in [`consume`](phy::TxToken::consume).
pub struct IqdioTxToken<'a, 'd, S: Siga> {
    path: &'a mut TxPath<'d, S>,
}

impl<S: Siga> phy::TxToken for IqdioTxToken<'_, '_, S> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let path = self.path;
        if path.vlan.is_some() {
            return path.transmit_eth(len, f);
        }
        if len > path.buf.len() {
            // smoltcp never asks for more than the MTU, which the buffer holds (the
            // constructor checked). Should a caller do so anyway, the packet is not
            // sent, and counted.
            let r = f(&mut path.buf[..]);
            path.fail(TxError::TooLong(len));
            return r;
        }
        // Zero-copy: smoltcp writes the packet straight into the next output buffer,
        // and the fabric's copy is its only one. With no output buffer free (only if
        // the fabric still holds one), it goes through the transmit buffer instead.
        let route = |packet: &[u8]| next_hop(packet);
        // Buffers a write-multiple left primed go first, in ring order, as in `send`.
        if let Err(e) = path.driver.flush_pending(&path.siga) {
            let r = f(&mut path.buf[..len]);
            path.fail(TxError::Send(e));
            return r;
        }
        match path.driver.prime_routed(len, f, route) {
            Ok((n, r, Some(_))) => {
                path.complete(0, n, len);
                r
            }
            Ok((_, r, None)) => {
                path.fail(TxError::NotIp);
                r
            }
            Err((f, _)) => {
                let r = f(&mut path.buf[..len]);
                path.send(len);
                r
            }
        }
    }
}

impl<'d, S: Siga> phy::Device for IqdioDevice<'d, S> {
    type RxToken<'a>
        = IqdioRxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = IqdioTxToken<'a, 'd, S>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        // Bounded: a frame of another VLAN is skipped, and there are at most this many
        // frames waiting.
        let mut found = None;
        for _ in 0..=QUEUE_BUFFERS * SBALES_PER_SBAL {
            if !self.stage() {
                return None;
            }
            let staged = *self.rx.packets.get(self.rx.next)?;
            self.rx.next += 1;
            if let Some(s) = self.untag(staged) {
                found = Some(s);
                break;
            }
        }
        let packet: &[u8] = match found? {
            Staged::Copied(off, len) => self.rx.buf.get(off..off + len)?,
            // SAFETY: the packet's bytes in the input buffer the driver holds
            // (`QueueDriver::hold_single`: inside the buffer's own slot of this
            // driver's receive data, checked there): the buffer stays at 0x82, the
            // program's, which the fabric never writes, until the device hands it
            // back (`release`), and it does so only from `&mut self` methods
            // (receive, transmit, driver_mut, drop), which cannot run while this
            // borrow of `self`, and so the token, lives. The transmit token borrows
            // only the output side. No `&mut` to these bytes exists meanwhile.
            Staged::InPlace(bytes) => unsafe {
                core::slice::from_raw_parts(bytes.host_ptr().as_ptr(), bytes.len())
            },
        };
        self.tx.counters.rx_packets += 1;
        self.tx.counters.rx_bytes += packet.len() as u64;
        Some((IqdioRxToken { packet }, IqdioTxToken { path: &mut self.tx }))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        self.release();
        Some(IqdioTxToken { path: &mut self.tx })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = match self.tx.vlan {
            Some(_) => Medium::Ethernet,
            None => Medium::Ip,
        };
        // For Ethernet, smoltcp's MTU counts the Ethernet header; the tag the device
        // inserts is room the stack does not get.
        caps.max_transmission_unit =
            self.tx.driver.config().mfs.mtu().min(self.tx.buf.len()) - self.tx.tag_len();
        caps.max_burst_size = None;
        caps.checksum = self.checksums.clone();
        caps
    }
}

impl<S: Siga> Drop for IqdioDevice<'_, S> {
    /// Hands back the input buffer of a packet read in place, so the driver does not
    /// hand its frame over a second time.
    fn drop(&mut self) {
        self.tx.driver.release_held();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_hop_reads_the_ip_destination() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[12..16].copy_from_slice(&[10, 0, 1, 1]);
        v4[16..20].copy_from_slice(&[10, 0, 2, 1]);
        assert_eq!(next_hop(&v4), Some(IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1))));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        let dst = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 2, 1);
        v6[24..40].copy_from_slice(&dst.octets());
        assert_eq!(next_hop(&v6), Some(IpAddr::V6(dst)));
        assert_eq!(next_hop(&v4[..19]), None, "short IPv4 header");
        assert_eq!(next_hop(&v6[..39]), None, "short IPv6 header");
        assert_eq!(next_hop(&[]), None);
        assert_eq!(next_hop(&[0x50; 40]), None, "not IP");
    }

    #[test]
    fn buffer_sizes_follow_the_frame_size() {
        assert_eq!(tx_buffer_len(Mfs::K64), 56 * 1024);
        assert_eq!(rx_buffer_len(Mfs::K64), 64 * 1024 - 32);
        assert_eq!(tx_buffer_len(Mfs::K16), 8 * 1024);
    }
}
