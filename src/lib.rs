//! iqdio: internal queued direct I/O (architecture docs are written with the core).
#![cfg_attr(not(test), no_std)]

#[cfg(all(feature = "qemu-virt", target_os = "none"))]
pub mod board;
