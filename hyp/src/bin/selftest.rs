//! The on-target self-test image: named cases run one after another on QEMU `virt`, each
//! under a timeout on the generic timer, each printing one machine-readable line:
//!
//! ```text
//! selftest: plan cases=8 cores=4
//! selftest: case sgi_wakeup result=PASS time_us=10432
//! selftest: case timer result=FAIL time_us=52 reason=DelayNs returned early
//! selftest: done passed=7 failed=1
//! ```
//!
//! The image exits with `ExitCode::Pass` only if every case passed. `cargo xtask test`
//! boots it (at several `-smp`) and counts each case as one test; `cargo xtask selftest`
//! boots it alone.
//!
//! `cargo xtask selftest --fail <case>` makes that case fail on purpose (the xtask's own
//! test uses it to show a failing case fails the run), and `--inject <kind>` adds a case
//! that panics, faults or hangs (see `selftest/inject.rs`). Both are written into a copy
//! of the built image, not compiled in (see `selftest/settings.rs`).
//!
//! To add a module of cases: write `src/bin/selftest/<name>.rs` with
//! `pub const CASES: &[Case] = &[...]` and add `<name>` to the `case_modules!` line.
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

/// Declares the case modules (files in `src/bin/selftest/`) and `MODULES`, the list the
/// harness runs, in this order.
#[cfg(target_os = "none")]
macro_rules! case_modules {
    ($($module:ident),* $(,)?) => {
        $(pub mod $module;)*
        /// Every case module's cases, in run order.
        pub const MODULES: &[&[harness::Case]] = &[$($module::CASES),*];
    };
}

/// The harness and the case modules, from `src/bin/selftest/`.
#[cfg(target_os = "none")]
#[path = "selftest"]
mod suite {
    pub mod harness;
    pub mod inject;
    pub mod settings;

    // One line per module of cases: add yours here.
    case_modules!(board, fabric, vm);
}

#[cfg(target_os = "none")]
iqdio_hyp::board_main!(main);

#[cfg(target_os = "none")]
fn main() -> ! {
    suite::harness::run(suite::MODULES)
}

/// On the host this image has nothing to do: it exists for `aarch64-unknown-none`.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the selftest image runs on aarch64-unknown-none under QEMU: `cargo xtask selftest`");
    std::process::exit(2);
}
