//! The iqdio hypervisor for QEMU `virt`: every core at EL2, core N running partition N at
//! EL1 in its own stage-2 address space, the fabric beneath them as a static.
//!
//! - [`board`]: the EL2 side of each core: boot, PSCI, GICv3, PL011, defmt logger,
//!   critical section, generic timer, and the vectors (a partition's trap saves every
//!   register and may return to the hypervisor instead of the partition).
//! - [`vm`]: the partitions: stage-2 tables, virtual interrupts through list registers,
//!   the HVC interface (`iqdio-hvc`) in front of the fabric, the stop of a partition
//!   that misbehaves, the ELF loader of the partition program (`iqdio-guest`).
//! - The images (`src/bin/`): `hyp`, what `cargo xtask run` boots (the demo, `tcp`,
//!   `hostile`), and `selftest`.
//!
//! This crate holds every global item (entry point, exception vectors, panic handler,
//! defmt logger, critical-section implementation), so the `iqdio` library stays free
//! of them and an embedding hypervisor gets none through feature unification. It uses
//! only the library's public API, as another hypervisor would.
//!
//! Everything here is for `aarch64-unknown-none`; on the host the crate is empty (so
//! `cargo test --workspace` and `cargo clippy --workspace` pass over it).
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
pub mod board;
#[cfg(target_os = "none")]
pub mod vm;

/// The linux-net console parser's host tests (the module is `vm::netlines` on the
/// target; it uses nothing of the board but its per-core slots).
#[cfg(all(test, not(target_os = "none")))]
#[path = "vm/netlines.rs"]
mod netlines;
