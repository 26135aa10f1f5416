//! Failures on purpose, to show that each one stops the run with the right outcome: the
//! `inject` case runs only when the boot's settings name a kind
//! (`cargo xtask selftest --inject <kind>`, see `settings.rs`; the xtask's own tests use
//! it).
//!
//! | kind             | what happens                          | QEMU exit  |
//! |------------------|---------------------------------------|------------|
//! | `panic`          | core 1 panics                         | 2 (panic)  |
//! | `stack-overflow` | core 1 runs into its stack guard page | 3 (fault)  |
//! | `null`           | core 0 reads address 8                | 3 (fault)  |
//! | `hang`           | the case never returns                | 1 (alarm)  |
//! | `hang-masked`    | ... with IRQs masked                  | host timeout |

use core::hint::black_box;

use super::harness::{self, Case};

/// The injected case (run before all others when the settings name a kind).
pub static CASE: Case = Case {
    name: "inject",
    timeout_ms: 2_000,
    run,
};

fn run() -> Result<(), &'static str> {
    match super::settings::inject().get().unwrap_or("") {
        "panic" => harness::run_on_all(|core| {
            if core == 1 {
                panic!("injected panic");
            }
        }),
        "stack-overflow" => harness::run_on_all(|core| {
            if core == 1 {
                black_box(recurse(0));
            }
        }),
        "null" => {
            let near_null = core::ptr::with_exposed_provenance::<u64>(8);
            // SAFETY: not sound on purpose: address 8 is unmapped, so this read faults and
            // the board's fault handler stops the machine before anything uses the value.
            let value = unsafe { near_null.read_volatile() };
            black_box(value);
            Err("reading address 8 did not fault")
        }
        "hang" => loop {
            core::hint::spin_loop();
        },
        "hang-masked" => critical_section::with(|_| {
            loop {
                core::hint::spin_loop();
            }
        }),
        _ => Err("--inject names no known kind"),
    }
}

/// Recurses until the stack runs into its guard page (the condition is never false, but
/// the compiler cannot know).
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 32]);
    if black_box(true) {
        recurse(depth + 1) + frame[0]
    } else {
        frame[1]
    }
}
