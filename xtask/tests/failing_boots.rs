//! The xtask reports failures on the target as failures: a self-test case failed on
//! purpose, a panic, a stack overflow, a hung case and a machine that never stops each
//! end `cargo xtask selftest` with a non-zero status and say what failed.
//!
//! Each boot is the one cached self-test image with its settings block written by the
//! xtask (`--fail`, `--inject`), so nothing is rebuilt per failure kind. The boots run
//! one at a time (the first one builds the image).

use std::{
    process::{Command, Output},
    sync::Mutex,
};

/// One boot at a time: the first builds the image the others boot.
static BOOTS: Mutex<()> = Mutex::new(());

fn selftest(args: &[&str]) -> (Option<i32>, String) {
    let _one_at_a_time = BOOTS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let Output {
        status,
        stdout,
        stderr,
    } = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("selftest")
        .args(args)
        .output()
        .expect("running the xtask");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    println!("{text}");
    (status.code(), text)
}

#[test]
fn a_case_failed_on_purpose_fails_the_run_and_is_named() {
    let (code, out) = selftest(&["--smp", "2", "--fail", "sgi_wakeup"]);
    assert_eq!(code, Some(1), "exit status");
    assert!(
        out.contains("selftest: case sgi_wakeup result=FAIL"),
        "the image reports the case failed"
    );
    assert!(
        out.contains("FAILED sgi_wakeup: failed on purpose"),
        "the xtask names the failed case"
    );
    assert!(
        out.contains("selftest: case timer result=PASS"),
        "the other cases still run and pass"
    );
    assert!(
        out.contains("FAILURE (exit 1)"),
        "the image exits with FAILURE"
    );
}

#[test]
fn a_panic_on_a_secondary_core_is_a_panic() {
    let (code, out) = selftest(&["--smp", "2", "--inject", "panic"]);
    assert_eq!(code, Some(2), "exit status");
    assert!(out.contains("panic on core 1: panicked at hyp/src/bin/selftest/inject.rs"));
    assert!(out.contains("PANIC (exit 2)"));
}

#[test]
fn a_stack_overflow_hits_the_guard_page_and_is_a_fault() {
    let (code, out) = selftest(&["--smp", "2", "--inject", "stack-overflow"]);
    assert_eq!(code, Some(3), "exit status");
    assert!(out.contains("!! FAULT on core 1: synchronous exception (data abort)"));
    assert!(out.contains("stack overflow: FAR is in core 1's main stack guard"));
}

#[test]
fn a_null_dereference_is_a_fault() {
    let (code, out) = selftest(&["--smp", "2", "--inject", "null"]);
    assert_eq!(code, Some(3), "exit status");
    assert!(out.contains("FAR=0x0000000000000008 "));
    assert!(out.contains("null pointer dereference"));
}

#[test]
fn a_hung_case_is_stopped_by_the_alarm_and_fails() {
    let (code, out) = selftest(&["--smp", "2", "--inject", "hang"]);
    assert_eq!(code, Some(1), "exit status");
    assert!(out.contains("selftest: case inject result=FAIL"));
    assert!(out.contains("the case hung (stopped by the alarm)"));
}

#[test]
fn a_machine_that_never_stops_is_killed_and_fails() {
    let (code, out) = selftest(&["--smp", "2", "--inject", "hang-masked", "--timeout", "3"]);
    assert_eq!(code, Some(124), "exit status");
    assert!(out.contains("QEMU did not stop within 3 s: killed"));
    assert!(out.contains("TIMEOUT (QEMU killed)"));
}
