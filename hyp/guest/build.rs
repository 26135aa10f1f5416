//! Links the partition program at its guest-physical address (`linker/memory.ld`), with
//! aarch64-rt's section script; only for `aarch64-unknown-none`.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=linker/memory.ld");
    if env::var("TARGET").as_deref() != Ok("aarch64-unknown-none") {
        return;
    }
    let linker =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo")).join("linker");
    println!(
        "cargo:rustc-link-arg-bins=-T{}",
        linker.join("memory.ld").display()
    );
    // aarch64-rt's build script puts its `image.ld` on the link path.
    println!("cargo:rustc-link-arg-bins=-Timage.ld");
}
