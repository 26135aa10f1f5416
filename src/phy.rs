//! A [`smoltcp`] network device on a partition's queue set (feature `smoltcp`).
//!
//! [`IqdioDevice`] implements [`smoltcp::phy::Device`] with [`Medium::Ip`] on top of a
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
        let Some(dest) = next_hop(packet) else {
            self.fail(TxError::NotIp);
            return;
        };
        let mut tries = 0u32;
        loop {
            // Unicast whatever the address, as the zero-copy path (`prime_routed`) sends
            // it: the device sends on output queue 0 only.
            match self.driver.send(&self.siga, Dest::Unicast(dest), packet) {
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
    fn complete(&mut self, n: u8, len: usize) {
        let mut tries = 0u32;
        let mut outcome = self.driver.siga_write(&self.siga, n);
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
                    // The refused frame is in the buffer primed last.
                    let refused = self.driver.last_primed();
                    outcome = self.driver.resend(&self.siga, refused);
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
                path.complete(n, len);
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
        if !self.stage() {
            return None;
        }
        let staged = *self.rx.packets.get(self.rx.next)?;
        self.rx.next += 1;
        let packet: &[u8] = match staged {
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
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.tx.driver.config().mfs.mtu().min(self.tx.buf.len());
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
