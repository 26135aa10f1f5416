//! # iqdio: internal queued direct I/O
//!
//! The firmware side of the mechanism behind IBM's HiperSockets: partitions of one
//! machine exchange IP frames memory-to-memory, through QDIO queues that the firmware
//! (here: the [`Fabric`]) moves data between, synchronously, on the sender's CPU, with
//! no network adapter. This crate is `#![no_std]`, uses no heap, and builds for the
//! host and for `aarch64-unknown-none` alike; a hypervisor embeds it.
//!
//! ```text
//!   partition A (LPAR 1)                                   partition B (LPAR 2)
//!   ┌───────────────────────────┐                          ┌───────────────────────────┐
//!   │ driver::QueueDriver       │                          │ driver::QueueDriver       │
//!   │  output SBALs + SLSB 0x62 │   SIGA write (on A's     │  input SBALs + SLSB 0x41  │
//!   │  input  SBALs + SLSB      │   core, synchronous)     │  queue / middle / global  │
//!   └────────────┬──────────────┘                          │  indicator bytes          │
//!                │                                         └─────────────▲─────────────┘
//!   ┌────────────▼─────────────────────────────────────────────────────┐ │ copy, 0x82,
//!   │ Fabric                                                           │ │ bytes low→high
//!   │  table lock (shared per send, exclusive per update)              │─┘
//!   │  source table  LPAR.SUBCHANNEL → queue control ─┐                │
//!   │  target table  IPv4/IPv6 addr  → queue control ─┤                │──► Platform::
//!   │  queue controls: outbound lock │ inbound lock │ cursors │ counters│    raise_interrupt
//!   └──────────────────────────────────────────────────────────────────┘    (decision)
//! ```
//!
//! A send runs the patent's steps: check the subchannel's IQDIO indicator, take the
//! table lock shared, find the issuer's queue control (source table), take its
//! outbound lock, and for each primed output buffer (0x62) from the queue's cursor:
//! read the frame header's next hop, find the target queue control (target table),
//! take its inbound lock, copy the frames into the next empty input buffer (0x41),
//! set the input SLSB to 0x82 and then the output SLSB to 0xA1, set the receiver's
//! completion vector (queue byte, middle byte, global byte, in that order) and decide
//! whether the receiver needs an interrupt ([`initiative::decide`]). Every bad input
//! ends in a precise reason in the sender's own SBAL ([`qdio::Reason`]) or a condition
//! code ([`SigaError`]); nothing panics, no frame is silently lost, and no byte
//! outside the partitions' own memory is touched (every guest address is translated
//! and checked through the partition's [`GuestMemory`] in one crate-private module,
//! `guest`).
//!
//! Lock order: table lock → outbound lock of the source → inbound lock of the target.
//! No inbound lock is ever held while an outbound lock is awaited, so partitions that
//! send to each other at the same moment cannot deadlock.
//!
//! ## Locks and how long they are held
//!
//! - The **table lock** (one per fabric) is a spin lock that prefers writers: updates
//!   (partitions, queue sets, addresses) take it exclusive; a send takes it shared, and
//!   a write-multiple holds it for one buffer at a time while an update waits (it steps
//!   out between buffers, then re-checks that its queue set is still the same), so an
//!   update waits for at most one buffer copy (up to the MFS, 64 KiB) of each send in
//!   flight, and every send behind that update waits for the update only.
//! - The **outbound lock** of a queue set is held by the SIGA on it; a second SIGA on
//!   the same queue meanwhile gets cc2 busy rather than waiting.
//! - The **inbound lock** of the receiving queue set is held while one buffer is copied
//!   into it and its completion vector is set; [`Platform::now_ns`] is called under it.
//! - [`Platform::raise_interrupt`] is called with the table lock (shared) and the
//!   sender's outbound lock held; [`Platform::now_ns`] with the table lock shared and,
//!   in a send, the receiver's inbound lock. An embedding may, in these calls: post an
//!   interrupt (an SGI, a virtual IRQ list register, a flag), read a clock. It may not:
//!   call into the fabric (a SIGA there answers busy, an update would wait for ever for
//!   the shared hold it is inside), wait for another core that may itself be in a
//!   fabric entry, or take a lock that any code holds while calling the fabric.
//!
//! ## Execution contract
//!
//! Every entry except [`Fabric::try_expire_delays`] may wait for the fabric's spin
//! locks. A core that waits for a lock which the code it interrupted holds never
//! returns, so these entries must run where no fabric entry can be interrupted by
//! another on the same core: **with interrupts masked on that core**, as an EL2 trap
//! handler for a partition's SIGA or HVC naturally runs, and never from an interrupt
//! handler that may have interrupted one. [`Fabric::try_expire_delays`], the delay
//! fallback for a periodic timer, never waits: it skips (and reports in a
//! [`DelayReport`]) what is held and is safe from any context, including a timer
//! interrupt taken in the middle of a SIGA on the same core.
//!
//! Where the platform can tell, the fabric checks: [`Platform::context`] answering
//! [`CallContext::Interruptible`] or [`CallContext::Interrupt`] makes SIGA and every
//! update refuse (`InterruptContext`, nothing done), makes
//! [`Fabric::expire_delays`] behave as [`Fabric::try_expire_delays`], and makes the
//! counters lookups look only if the table lock is free. Entries are not re-entrant
//! on one core in any other way either: [`Platform`] calls must not call back.
//!
//! ## Modules
//!
//! - [`qdio`]: the guest-visible formats, byte-exact (SLSB, SBAL/SBALE, frame header,
//!   reason codes).
//! - [`GuestMemory`]: how the fabric translates a partition's guest range to host
//!   memory, the hypervisor's to implement (stage-2 maps, remapping); [`Windows`] of
//!   [`Window`]s is the default. The crate-private `guest` module translates and
//!   checks every guest address and is the only one that touches guest memory.
//! - [`initiative`]: the completion vector protocol and the interrupt decision.
//! - [`fabric`]: registration, deregistration, SIGA.
//! - [`driver`]: the program side a partition runs.
//! - [`platform`]: what an embedding environment provides.
//!
//! ## Embedding in a hypervisor
//!
//! The hypervisor provides a [`Platform`] (raise an adapter interrupt for a
//! partition and say whether it was posted, read a monotonic clock, optionally say
//! where a call runs), tells the fabric each partition's memory windows, and forwards
//! the partition's requests: establishing queues and registering addresses (its
//! QDIO/IPA command path) and SIGA (its instruction trap, with the issuing LPAR taken
//! from the trapping vCPU, never from guest input). At establish it gives each queue
//! set an interrupt cookie of its own choosing (here the vCPU to interrupt), which the
//! fabric hands back in every [`InterruptTarget`] for that queue set. It may
//! [`suspend`](Fabric::suspend) a partition and [`resume`](Fabric::resume) it
//! without losing its registrations or its frames.
//!
//! The whole path below, from outside the crate and with nothing but raw guest bytes:
//! two partitions, a queue set each, one address, one frame sent by SIGA and found in
//! the receiver's input buffer.
//!
//! ```
//! use core::ptr::NonNull;
//! use core::sync::atomic::{AtomicU64, Ordering};
//! use iqdio::{
//!     Fabric, FabricConfig, InterruptDelivery, InterruptTarget, Platform, QueueSetParams,
//!     Window,
//! };
//!
//! /// The hypervisor's side: how it interrupts a partition and tells the time.
//! struct Hypervisor {
//!     /// The cookie of the last interrupt raised (here: the vCPU to interrupt).
//!     last_cookie: AtomicU64,
//! }
//!
//! impl Platform for Hypervisor {
//!     fn raise_interrupt(&self, target: InterruptTarget) -> InterruptDelivery {
//!         // Inject an adapter interrupt into the vCPU the cookie names.
//!         self.last_cookie.store(target.cookie, Ordering::Relaxed);
//!         InterruptDelivery::Delivered
//!     }
//!     fn now_ns(&self) -> u64 {
//!         0 // the hypervisor's monotonic clock
//!     }
//! }
//!
//! static FABRIC: Fabric<Hypervisor, 16, 256> = Fabric::new(
//!     Hypervisor { last_cookie: AtomicU64::new(u64::MAX) },
//!     FabricConfig::DEFAULT,
//! );
//!
//! // Each partition's guest-physical layout (the partition chose it; 128 KiB of RAM).
//! const OUT_SBALS: u64 = 0x0000; // 128 SBALs of 256 bytes
//! const IN_SBALS: u64 = 0x8000; // 128 SBALs of 256 bytes
//! const OUT_SLSB: u64 = 0x1_0000; // 128 state bytes
//! const IN_SLSB: u64 = 0x1_0100;
//! const INDICATORS: u64 = 0x1_0200; // queue, middle, global byte
//! const DATA: u64 = 0x1_1000; // one 4 KiB data buffer
//! const RAM: usize = 0x2_0000;
//!
//! /// A partition's RAM as the hypervisor holds it: a host pointer, never a reference.
//! struct Guest(NonNull<u8>);
//! impl Guest {
//!     fn new() -> Self {
//!         #[repr(C, align(4096))]
//!         struct Ram([u8; RAM]);
//!         let ram = Box::into_raw(Box::new(Ram([0; RAM])));
//!         Guest(NonNull::new(ram).unwrap().cast())
//!     }
//!     // The partition's own stores and loads (in a real system: the guest's code).
//!     fn write(&self, addr: u64, bytes: &[u8]) {
//!         assert!(addr as usize + bytes.len() <= RAM);
//!         // SAFETY: inside the RAM; single-threaded here, no SIGA runs meanwhile.
//!         unsafe { self.0.as_ptr().add(addr as usize).copy_from(bytes.as_ptr(), bytes.len()) }
//!     }
//!     fn read<const N: usize>(&self, addr: u64) -> [u8; N] {
//!         assert!(addr as usize + N <= RAM);
//!         let mut out = [0; N];
//!         // SAFETY: as for `write`.
//!         unsafe { self.0.as_ptr().add(addr as usize).copy_to(out.as_mut_ptr(), N) }
//!         out
//!     }
//!     /// SBALE `e` of the SBAL at `sbal`: 16 bytes, big-endian fields:
//!     /// eflags | reserved | scount | sflags | length u32 | address u64.
//!     fn set_sbale(&self, sbal: u64, e: u64, eflags: u8, length: u32, addr: u64) {
//!         let mut b = [0u8; 16];
//!         b[0] = eflags;
//!         b[4..8].copy_from_slice(&length.to_be_bytes());
//!         b[8..16].copy_from_slice(&addr.to_be_bytes());
//!         self.write(sbal + 16 * e, &b);
//!     }
//! }
//!
//! /// The addresses of one queue set, and the hypervisor's cookie for its interrupts.
//! fn params(cookie: u64) -> QueueSetParams {
//!     QueueSetParams {
//!         output_sbals: core::array::from_fn(|i| OUT_SBALS + 256 * i as u64),
//!         input_sbals: core::array::from_fn(|i| IN_SBALS + 256 * i as u64),
//!         output_slsb: OUT_SLSB,
//!         input_slsb: IN_SLSB,
//!         queue_indicator: INDICATORS,
//!         middle_indicator: INDICATORS + 1,
//!         global_indicator: INDICATORS + 2,
//!         interrupt_immediately: false,
//!         interrupt_cookie: cookie, // set by the hypervisor, never by the partition
//!         ..Default::default()
//!     }
//! }
//!
//! // When partitions 1 and 2 are created: their guest-physical RAM and where it lives.
//! let (a, b) = (Guest::new(), Guest::new());
//! // SAFETY: each RAM outlives its partition's registration (leaked here) and Rust
//! // code reaches it only through raw pointers.
//! let (wa, wb) = unsafe { (Window::new(0, a.0, RAM), Window::new(0, b.0, RAM)) };
//! FABRIC.add_partition(1, &[wa]).unwrap();
//! FABRIC.add_partition(2, &[wb]).unwrap();
//!
//! // Their establish and IPA commands; the cookie is the hypervisor's (vCPU 7 runs B).
//! FABRIC.establish(1, 0x0100, &params(5)).unwrap();
//! FABRIC.establish(2, 0x0200, &params(7)).unwrap();
//! let to_b = "10.0.0.2".parse().unwrap();
//! FABRIC.register_address(2, 0x0200, to_b).unwrap();
//!
//! // B arms input buffer 0: one 4 KiB element, handed to the fabric (SLSB 0x41).
//! b.set_sbale(IN_SBALS, 0, 0, 4096, DATA);
//! b.write(IN_SLSB, &[0x41]);
//!
//! // A primes output buffer 0: a 32-byte layer-3 header (id 0x01, cast unicast 0x06,
//! // packet length at 8, IPv4 next hop at 0x1C), the packet after it, one element
//! // with LAST_ENTRY (0x40), SLSB 0x62.
//! let packet = b"hello, partition 2";
//! let mut frame = [0u8; 32 + 18];
//! frame[0] = 0x01;
//! frame[1] = 0x06;
//! frame[8..10].copy_from_slice(&(packet.len() as u16).to_be_bytes());
//! frame[0x1C..0x20].copy_from_slice(&[10, 0, 0, 2]);
//! frame[32..].copy_from_slice(packet);
//! a.write(DATA, &frame);
//! a.set_sbale(OUT_SBALS, 0, 0x40, frame.len() as u32, DATA);
//! a.write(OUT_SLSB, &[0x62]);
//!
//! // A's SIGA trap (function code in r0, subchannel in r1, mask in r2): cc0.
//! let report = FABRIC.siga(1, 0x0100, 0, 1 << 31).map_err(|e| e.condition_code());
//! assert_eq!(report.map(|r| (r.delivered, r.interrupts)), Ok((1, 1)));
//!
//! // Synchronous: A's buffer is back (0xA1), B's is primed (0x82) with the frame, its
//! // global summary byte is set, and B's vCPU got the interrupt through its cookie.
//! assert_eq!(a.read::<1>(OUT_SLSB), [0xA1]);
//! assert_eq!(b.read::<1>(IN_SLSB), [0x82]);
//! assert_eq!(b.read::<16>(IN_SBALS)[4..8], (frame.len() as u32).to_be_bytes());
//! assert_eq!(b.read::<50>(DATA), frame);
//! assert_ne!(b.read::<1>(INDICATORS + 2), [0]);
//! assert_eq!(FABRIC.platform().last_cookie.load(Ordering::Relaxed), 7);
//!
//! // A SIGA on a subchannel that was never established: what crosses back to the
//! // partition is the condition code and the busy bit, cc3 here, nothing done.
//! let (cc, busy) = match FABRIC.siga(1, 0x0300, 0, 1 << 31) {
//!     Ok(_) => (0, 0),
//!     Err(e) => (e.condition_code() as u64, u64::from(e.busy_bit())),
//! };
//! assert_eq!((cc, busy), (3, 0), "subchannel 0x0300 was never established: not IQDIO");
//! ```
//!
//! This is what the repository's hypervisor image does (`hyp/`, crate `iqdio-hyp`): its
//! fabric is a static, each core's partition runs at EL1 in its own stage-2 space, the
//! window registered at the partition's guest-physical address, and its HVC trap
//! handler (`hyp/src/vm/trap.rs`) makes exactly this call for SIGA, `establish` from a
//! byte-exact block it reads with [`Fabric::copy_from_partition`] (the cookie its own:
//! the partition's core), and `raise_interrupt` becomes an SGI to the core the cookie
//! names, which that core turns into a virtual IRQ.
//! The program side, for a partition's own driver, is in [`driver`]; the crate's
//! integration tests (`tests/embedding.rs` embeds the crate as a hypervisor would) and
//! the hypervisor's partition program show whole partitions.
#![cfg_attr(not(test), no_std)]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod driver;
pub mod error;
pub mod fabric;
pub mod initiative;
#[cfg(feature = "smoltcp")]
pub mod phy;
pub mod platform;
pub mod qdio;
mod queue;
mod sync;
pub mod table;

// Partition memory and the data movement of a send are the fabric's internals: their
// types are `Copy` handles on partition memory with no lifetime, which must not
// outlive the partition's registration, so only the fabric and the driver hold them.
// The fuzz targets drive them directly, through feature `fuzzing` (never for an
// embedding).
// The copy primitive for partition memory (issue 12): its candidates are public,
// hidden, only with feature `copy-candidates`, for the benchmark that compares them.
#[cfg(feature = "copy-candidates")]
#[doc(hidden)]
pub mod copy;
#[cfg(not(feature = "copy-candidates"))]
mod copy;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod guest;
#[cfg(not(feature = "fuzzing"))]
mod guest;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod transfer;
#[cfg(not(feature = "fuzzing"))]
mod transfer;

pub use error::{
    ConditionCode, QueueField, RegistrationError, SIGA_BUSY_BIT, SigaError, SigaStatus,
};
pub use fabric::{
    BROADCAST_GROUP, DelayReport, Fabric, FabricConfig, Port, QueueAddresses, QueueSetHandle,
    QueueSetParams, Siga, SigaFunction, SigaReport,
};
pub use guest::{GuestMemory, HOST_ALIGN, MAX_WINDOWS, Window, Windows};
#[cfg(feature = "test-hooks")]
pub use platform::LockPoint;
pub use platform::{CallContext, InterruptDelivery, InterruptTarget, Platform};
pub use qdio::{Mfs, Reason};
pub use queue::{CounterSnapshot, MAX_OUTPUT_QUEUES, OutputQueueCounts, PENDING_PER_QUEUE_SET};
pub use table::{HashSeed, LparId, SourceKey};
