//! The model checks: loom (`cargo xtask loom`, also a step of `cargo xtask test`) and
//! Miri (`cargo xtask miri`).

use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::{cargo, parse};

/// Passed and failed tests of one checker run, and whether the run itself worked.
pub struct CheckRun {
    /// Tests that passed.
    pub passed: u64,
    /// Tests that failed.
    pub failed: u64,
    /// The command succeeded (built, and every test binary exited 0).
    pub success: bool,
}

/// `RUSTFLAGS="--cfg iqdio_loom" cargo test --profile loom --test loom`, in its own target
/// directory (a different cfg would otherwise rebuild everything each time).
pub fn loom() -> Result<CheckRun> {
    let mut command = cargo::command(&["test", "--profile", "loom", "--test", "loom"]);
    command
        .env("RUSTFLAGS", "--cfg iqdio_loom")
        .env("CARGO_TARGET_DIR", cargo::target_dir().join("loom"))
        .env("LOOM_MAX_PREEMPTIONS", "3");
    run_counted(command)
}

/// Makes sure the nightly toolchain has Miri (installs the component when missing).
fn ensure_miri() -> Result<()> {
    let ok = Command::new("rustup")
        .args(["run", "nightly", "cargo", "miri", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Ok(());
    }
    eprintln!("xtask: installing Miri: rustup toolchain install nightly --component miri,rust-src");
    let status = Command::new("rustup")
        .args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "miri,rust-src",
        ])
        .status()
        .context("running rustup (Miri needs the nightly toolchain through rustup)")?;
    if !status.success() {
        bail!(
            "could not install Miri: rustup toolchain install nightly --component miri,rust-src failed"
        );
    }
    Ok(())
}

/// `cargo +nightly miri test` over the library's unit tests (the modules with `unsafe`:
/// guest memory, the table lock, the driver's rings) and, unless `quick`, the
/// malformed-descriptor integration tests, which drive every unsafe path of a send.
pub fn miri(quick: bool) -> Result<CheckRun> {
    ensure_miri()?;
    let mut args = vec!["run", "nightly", "cargo", "miri", "test", "--lib"];
    if !quick {
        args.extend(["--test", "descriptors"]);
    }
    // Without weak-memory emulation: the library accesses partition memory with byte
    // atomics under Miri (`guest.rs`) and an SBAL's elements with 8-byte ones, and
    // Miri's store buffers do not take accesses of two sizes to one location (the
    // nightly of 2026-05 stops with an internal error, "cannot have partially
    // overlapping store buffer"). Data races, aliasing and bounds are still checked;
    // the orderings are checked by the loom models (`cargo test --test loom`).
    let mut flags = std::env::var("MIRIFLAGS").unwrap_or_default();
    if !flags.is_empty() {
        flags.push(' ');
    }
    flags.push_str("-Zmiri-disable-weak-memory-emulation");
    let mut command = Command::new("rustup");
    command
        .args(&args)
        .current_dir(cargo::workspace_root())
        .env("MIRIFLAGS", flags)
        .env("CARGO_TARGET_DIR", cargo::target_dir().join("miri"));
    run_counted(command)
}

fn run_counted(command: Command) -> Result<CheckRun> {
    let (success, output) = cargo::run_tee(command)?;
    let (passed, failed, _) = parse::test_results(&output);
    Ok(CheckRun {
        passed,
        failed,
        success,
    })
}

/// Runs a checker as a subcommand: prints `NAME: N passed, M failed` last.
pub fn subcommand(name: &str, run: impl FnOnce() -> Result<CheckRun>) -> Result<ExitCode> {
    let start = Instant::now();
    let r = run()?;
    let failed = r.failed + u64::from(!r.success && r.failed == 0);
    eprintln!("xtask: {name} took {:.1} s", start.elapsed().as_secs_f64());
    println!("{name}: {} passed, {failed} failed", r.passed);
    Ok(if failed == 0 && r.passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
