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
//! outside the partitions' own windows is touched (every guest address is checked
//! against the partition's [`Window`]s in one crate-private module, `guest`).
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
//! - [`Window`]: one range of a partition's memory, as the embedding declares it; the
//!   crate-private `guest` module checks every guest address against them and is the
//!   only one that touches guest memory.
//! - [`initiative`]: the completion vector protocol and the interrupt decision.
//! - [`fabric`]: registration, deregistration, SIGA.
//! - [`driver`]: the program side a partition runs.
//! - [`platform`]: what an embedding environment provides.
//!
//! ## Embedding in a hypervisor
//!
//! The hypervisor provides a [`Platform`] (raise an adapter interrupt for a
//! partition, read a monotonic clock, optionally say where a call runs), tells the fabric each partition's memory
//! windows, and forwards the partition's requests: establishing queues and
//! registering addresses (its QDIO/IPA command path) and SIGA (its instruction trap,
//! with the issuing LPAR taken from the trapping vCPU, never from guest input).
//!
//! ```
//! use core::ptr::NonNull;
//! use core::sync::atomic::{AtomicU32, Ordering};
//! use iqdio::{Fabric, FabricConfig, InterruptTarget, Platform, Window};
//!
//! /// The hypervisor's side: how it interrupts a partition and tells the time.
//! struct Hypervisor {
//!     interrupts: AtomicU32,
//! }
//!
//! impl Platform for Hypervisor {
//!     fn raise_interrupt(&self, target: InterruptTarget) {
//!         // Inject an adapter interrupt into `target.lpar`'s vCPU.
//!         self.interrupts.fetch_add(1, Ordering::Relaxed);
//!     }
//!     fn now_ns(&self) -> u64 {
//!         0 // the hypervisor's monotonic clock
//!     }
//! }
//!
//! static FABRIC: Fabric<Hypervisor, 16, 256> = Fabric::new(
//!     Hypervisor { interrupts: AtomicU32::new(0) },
//!     FabricConfig::DEFAULT,
//! );
//!
//! # #[repr(C, align(4096))] struct Ram([u8; 1 << 16]);
//! # let ram: &'static mut Ram = Box::leak(Box::new(Ram([0; 1 << 16])));
//! # let guest_ram = NonNull::from(&mut ram.0).cast::<u8>();
//! // When partition 1 is created: its guest-physical RAM and where it lives.
//! // SAFETY: the partition's RAM outlives its registration and is not otherwise
//! // referenced by Rust code.
//! let window = unsafe { Window::new(0x0, guest_ram, 1 << 16) };
//! FABRIC.add_partition(1, &[window]).unwrap();
//!
//! // On the partition's SIGA trap (function code, subchannel and queue mask from its
//! // registers; the LPAR from the vCPU that trapped): what crosses back is the
//! // condition code and the busy bit.
//! let (cc, busy) = match FABRIC.siga(1, 0x0100, 0, 1 << 31) {
//!     Ok(_) => (0, 0),
//!     Err(e) => (e.condition_code() as u64, u64::from(e.busy_bit())),
//! };
//! assert_eq!((cc, busy), (3, 0), "subchannel 0x0100 was never established: not IQDIO");
//! ```
//!
//! This is what the repository's hypervisor image does (`hyp/`, crate `iqdio-hyp`): its
//! fabric is a static, each core's partition runs at EL1 in its own stage-2 space, the
//! window registered at the partition's guest-physical address, and its HVC trap
//! handler (`hyp/src/vm/trap.rs`) makes exactly this call for SIGA, `establish` from a
//! byte-exact block it reads with [`Fabric::copy_from_partition`], and
//! `raise_interrupt` becomes an SGI that the receiver's core turns into a virtual IRQ.
//! The program side, for a partition's own driver, is in [`driver`]; the crate's
//! integration tests and the hypervisor's partition program show whole partitions.
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
    DelayReport, Fabric, FabricConfig, Port, QueueSetHandle, QueueSetParams, Siga, SigaFunction,
    SigaReport,
};
pub use guest::Window;
#[cfg(feature = "test-hooks")]
pub use platform::LockPoint;
pub use platform::{CallContext, InterruptTarget, Platform};
pub use qdio::{Mfs, Reason};
pub use queue::CounterSnapshot;
pub use table::{HashSeed, LparId, SourceKey};
