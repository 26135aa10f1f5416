//! Passes the linker scripts to the bare-metal images, and only to them.
//!
//! The library and host builds (tests, benches, the xtask) link with the host's defaults;
//! only the `aarch64-unknown-none` bins get the QEMU `virt` memory map from `linker/`.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=linker/image.ld");
    println!("cargo:rerun-if-changed=linker/memory.ld");
    if env::var("TARGET").as_deref() != Ok("aarch64-unknown-none") {
        return;
    }
    let linker =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("linker");
    // `memory.ld` first: it defines the MEMORY regions that `image.ld` places sections in.
    // `image.ld` INCLUDEs defmt.x, found in the defmt crate's OUT_DIR (on the link path).
    println!(
        "cargo:rustc-link-arg-bins=-T{}",
        linker.join("memory.ld").display()
    );
    println!(
        "cargo:rustc-link-arg-bins=-T{}",
        linker.join("image.ld").display()
    );
}
