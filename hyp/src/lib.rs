//! The QEMU `virt` side of iqdio: board support (boot, PSCI, GICv3, PL011, defmt logger,
//! critical section, generic timer) and the bare-metal images that run the library.
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
