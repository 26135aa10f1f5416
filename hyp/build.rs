//! Passes the linker scripts to the bare-metal images, and only to them, and names the
//! partition program the hypervisor embeds.
//!
//! The crate's host builds (tests, clippy) link with the host's defaults; only the
//! `aarch64-unknown-none` bins get the QEMU `virt` memory map from `linker/`.
//!
//! `IQDIO_GUEST_ELF` is the path of the partition program (`iqdio-guest`, built first by
//! the xtask). Without it (a plain `cargo build` or clippy) an empty file stands in and
//! the hypervisor says at boot that no program was embedded.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=linker/image.ld");
    println!("cargo:rerun-if-changed=linker/memory.ld");
    println!("cargo:rerun-if-env-changed=IQDIO_GUEST_ELF");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    let image = match env::var_os("IQDIO_GUEST_ELF") {
        // No `rerun-if-changed` on the program itself: a rerun of this script would
        // rebuild the library too. The bins that include it (`guest_image!`) see it
        // change through rustc's own record of included files.
        Some(path) => PathBuf::from(path),
        None => {
            let empty = out.join("no-guest.elf");
            std::fs::write(&empty, b"").expect("writing to OUT_DIR");
            empty
        }
    };
    println!("cargo:rustc-env=IQDIO_GUEST_IMAGE={}", image.display());
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
