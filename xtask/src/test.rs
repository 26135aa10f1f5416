//! `cargo xtask test`: every check the project has, counted into one line.

use std::{
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::Result;

use crate::{
    boots::{TEST_BOOTS, TestResult},
    cargo::{self, TARGET},
    checks, image, panics, parse, qemu, stress,
};

/// Features of the host test and clippy runs: every optional part of the library.
pub const HOST_FEATURES: &str = "smoltcp";

/// Lints both clippy runs deny.
const CLIPPY_LINTS: &[&str] = &[
    "--",
    "-D",
    "warnings",
    "-D",
    "clippy::undocumented_unsafe_blocks",
];

/// Passes and failures so far, and what each step took.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    steps: Vec<(String, Duration, String)>,
    failures: Vec<String>,
}

impl Tally {
    fn step(&mut self, name: &str, took: Duration, summary: String) {
        eprintln!("xtask: == {name}: {summary} ({:.1} s)", took.as_secs_f64());
        self.steps.push((name.to_string(), took, summary));
    }

    /// A test boot's checks: each result counted, each failure named, one step line.
    fn boot(&mut self, name: &str, start: Instant, results: &[TestResult], run: &qemu::BootRun) {
        let failed: Vec<&TestResult> = results.iter().filter(|r| !r.passed).collect();
        self.passed += (results.len() - failed.len()) as u64;
        self.failed += failed.len() as u64;
        for result in &failed {
            self.failures
                .push(format!("{name}: {}: {}", result.name, result.detail));
        }
        let summary = format!(
            "{} of {} passed; {} in {:.2} s",
            results.len() - failed.len(),
            results.len(),
            run.outcome,
            run.elapsed.as_secs_f64()
        );
        self.step(name, start.elapsed(), summary);
    }
}

/// A step that must succeed: counts one failure if it does not (and nothing if it does).
fn must_succeed(tally: &mut Tally, name: &str, args: &[&str]) -> Result<()> {
    must_succeed_with(tally, name, args, &[])
}

/// [`must_succeed`] with extra environment variables for cargo.
fn must_succeed_with(
    tally: &mut Tally,
    name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<()> {
    eprintln!("xtask: == {name}: cargo {}", args.join(" "));
    let start = Instant::now();
    let mut command = cargo::command(args);
    command.envs(env.iter().copied());
    let status = command.status()?;
    let summary = if status.success() {
        "ok".to_string()
    } else {
        tally.failed += 1;
        tally.failures.push(format!("{name}: {status}"));
        format!("FAILED ({status})")
    };
    tally.step(name, start.elapsed(), summary);
    Ok(())
}

/// Runs the whole suite; the exit status is non-zero on any failure.
pub fn run_all(boots_only: bool, linux_only: bool) -> Result<ExitCode> {
    let mut tally = Tally::default();
    let start = Instant::now();
    cargo::ensure_toolchain()?;
    let boots_only = boots_only || linux_only;
    if !boots_only {
        host_tests(&mut tally)?;
        let mut host_clippy = vec![
            "clippy",
            "--workspace",
            "--all-targets",
            "--features",
            HOST_FEATURES,
        ];
        host_clippy.extend_from_slice(CLIPPY_LINTS);
        must_succeed(&mut tally, "clippy (host)", &host_clippy)?;
        let mut target_clippy = vec![
            "clippy",
            "-p",
            cargo::IMAGE_PACKAGE,
            "--lib",
            "--bins",
            "--target",
            TARGET,
        ];
        target_clippy.extend_from_slice(CLIPPY_LINTS);
        must_succeed(&mut tally, "clippy (target)", &target_clippy)?;
        // The partition program in its own invocation: it and the hypervisor must never
        // share one feature resolution (see `cargo::build_image`).
        let mut guest_clippy = vec![
            "clippy",
            "-p",
            cargo::GUEST_PACKAGE,
            "--bins",
            "--target",
            TARGET,
        ];
        guest_clippy.extend_from_slice(CLIPPY_LINTS);
        must_succeed(&mut tally, "clippy (partition program)", &guest_clippy)?;
        must_succeed(
            &mut tally,
            "library build (target)",
            &["build", "-p", "iqdio", "--lib", "--target", TARGET],
        )?;
        must_succeed_with(
            &mut tally,
            "rustdoc (-D warnings)",
            &[
                "doc",
                "--no-deps",
                "-p",
                "iqdio",
                // The guest device models: their docs are the hypervisor's manual.
                "-p",
                "iqdio-vdev",
                "--features",
                HOST_FEATURES,
            ],
            &[("RUSTDOCFLAGS", "-D warnings")],
        )?;
        loom(&mut tally)?;
        no_panic_paths(&mut tally);
        stress_host(&mut tally);
        stress_host_cq(&mut tally);
    }
    if !linux_only {
        test_boots(&mut tally)?;
    }
    linux_boots(&mut tally)?;
    if !boots_only {
        stress_image(&mut tally);
        stress_image_cq(&mut tally);
    }

    eprintln!();
    eprintln!("xtask: summary ({:.1} s)", start.elapsed().as_secs_f64());
    for (name, took, summary) in &tally.steps {
        eprintln!(
            "xtask:   {name:<26} {:>7.1} s  {summary}",
            took.as_secs_f64()
        );
    }
    for failure in &tally.failures {
        eprintln!("xtask:   FAILED {failure}");
    }
    println!("{} passed, {} failed", tally.passed, tally.failed);
    Ok(if tally.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `cargo test --workspace --features smoltcp`: counts every test from the
/// `test result:` lines.
fn host_tests(tally: &mut Tally) -> Result<()> {
    let name = "host tests";
    eprintln!("xtask: == {name}: cargo test --workspace --features {HOST_FEATURES}");
    let start = Instant::now();
    let (success, output) = cargo::run_tee(cargo::command(&[
        "test",
        "--workspace",
        "--features",
        HOST_FEATURES,
    ]))?;
    let (passed, failed, binaries) = parse::test_results(&output);
    tally.passed += passed;
    tally.failed += failed;
    if failed > 0 {
        tally.failures.push(format!(
            "{name}: {failed} test(s) failed (see `FAILED` above)"
        ));
    }
    let mut summary = format!("{passed} passed, {failed} failed in {binaries} test binaries");
    if !success && failed == 0 {
        // It did not build, or a test binary crashed without a summary line.
        tally.failed += 1;
        tally
            .failures
            .push(format!("{name}: cargo test failed without a failing test"));
        summary.push_str("; cargo test FAILED");
    }
    tally.step(name, start.elapsed(), summary);
    Ok(())
}

/// `cargo xtask panics`, counted as one test: no panic path reachable from the fabric
/// in the release hypervisor image.
fn no_panic_paths(tally: &mut Tally) {
    let name = "no panic paths (image)";
    eprintln!("xtask: == {name}: cargo xtask panics");
    let start = Instant::now();
    let summary = match panics::check() {
        Ok(true) => {
            tally.passed += 1;
            "ok".to_string()
        }
        Ok(false) => {
            tally.failed += 1;
            tally.failures.push(format!(
                "{name}: a panic path is reachable (see `panics:` above)"
            ));
            "FAILED".to_string()
        }
        Err(e) => {
            tally.failed += 1;
            tally.failures.push(format!("{name}: {e:#}"));
            format!("FAILED: {e:#}")
        }
    };
    tally.step(name, start.elapsed(), summary);
}

/// Counts a stress run as one test.
fn count_stress(tally: &mut Tally, name: &str, start: Instant, run: Result<stress::StressRun>) {
    let summary = match run {
        Ok(r) if r.passed => {
            tally.passed += 1;
            r.counts.line()
        }
        Ok(r) => {
            tally.failed += 1;
            tally.failures.push(format!("{name}: {}", r.counts.line()));
            format!("FAILED: {}", r.counts.line())
        }
        Err(e) => {
            tally.failed += 1;
            tally.failures.push(format!("{name}: {e:#}"));
            format!("FAILED: {e:#}")
        }
    };
    tally.step(name, start.elapsed(), summary);
}

/// The host stress run (4 partitions x 100 000 frames, release).
fn stress_host(tally: &mut Tally) {
    let start = Instant::now();
    count_stress(tally, "stress (host)", start, stress::host(false));
}

/// The host stress run through the completion queue (`stress --completion-queue`).
fn stress_host_cq(tally: &mut Tally) {
    let start = Instant::now();
    count_stress(tally, "stress --cq (host)", start, stress::host(true));
}

/// The image stress run (4 cores x 10 000 frames).
fn stress_image(tally: &mut Tally) {
    let start = Instant::now();
    let run = qemu::ensure_installed().and_then(|()| stress::image(10_000, 4, false));
    count_stress(tally, "stress (image)", start, run);
}

/// The image stress run through the completion queue (4 cores x 10 000 frames).
fn stress_image_cq(tally: &mut Tally) {
    let start = Instant::now();
    let run = qemu::ensure_installed().and_then(|()| stress::image(10_000, 4, true));
    count_stress(tally, "stress --cq (image)", start, run);
}

/// The loom model checks, each test counted.
fn loom(tally: &mut Tally) -> Result<()> {
    let name = "loom";
    eprintln!(
        "xtask: == {name}: RUSTFLAGS=\"--cfg iqdio_loom\" cargo test --profile loom --test loom"
    );
    let start = Instant::now();
    let run = checks::loom()?;
    tally.passed += run.passed;
    tally.failed += run.failed;
    let mut summary = format!("{} passed, {} failed", run.passed, run.failed);
    if run.failed > 0 {
        tally
            .failures
            .push(format!("{name}: {} test(s) failed", run.failed));
    }
    if !run.success && run.failed == 0 {
        tally.failed += 1;
        tally.failures.push(format!("{name}: did not build or run"));
        summary.push_str("; FAILED");
    }
    tally.step(name, start.elapsed(), summary);
    Ok(())
}

/// Builds each image once per environment and runs the boots of [`TEST_BOOTS`].
/// The Linux test boots (`linux::hypboots`): the kernel is fetched once (cached in
/// target/linux-guest), then each boot builds its initramfs around its script and
/// rebuilds only the hypervisor image; last the linux-net scenario's boot.
fn linux_boots(tally: &mut Tally) -> Result<()> {
    use crate::linux::{self, hypboots::LINUX_BOOTS};
    for boot in LINUX_BOOTS {
        linux_boot(
            tally,
            &format!("boot {}", boot.name),
            boot.smp,
            || {
                let script = cargo::target_dir()
                    .join("linux-guest")
                    .join("out")
                    .join("test-guest-init.sh");
                std::fs::create_dir_all(script.parent().unwrap_or(&script))?;
                std::fs::write(&script, boot.script)?;
                let guests =
                    linux::hyp_guests(boot.smp, boot.guests, Some(&script), linux::HYP_WORKLOAD)?;
                Ok((
                    guests,
                    &[("IQDIO_SCENARIO", "linux"), ("IQDIO_FRAMES", "200")],
                ))
            },
            |run| (boot.check)(run, boot.smp, boot.guests),
        )?;
    }
    let (smp, bytes) = (3, linux::netload::TEST_BYTES);
    linux_boot(
        tally,
        "boot linux-net -smp 3",
        smp,
        || {
            let guests = linux::net_guests(smp, bytes, None)?;
            Ok((guests, &[("IQDIO_SCENARIO", "linux-net")]))
        },
        |run| linux::hypboots::check_linux_net(run, smp, bytes),
    )
}

/// One Linux test boot: `prepare` places the guests and names the image's settings,
/// the image is built with them and booted, `check` turns the run into results.
fn linux_boot(
    tally: &mut Tally,
    name: &str,
    smp: u32,
    prepare: impl FnOnce() -> Result<(
        crate::linux::HypGuests,
        &'static [(&'static str, &'static str)],
    )>,
    check: impl FnOnce(&qemu::BootRun) -> Vec<TestResult>,
) -> Result<()> {
    let start = Instant::now();
    let prepared = prepare().and_then(|(guests, settings)| {
        let mut env: Vec<(&str, &str)> = settings.to_vec();
        env.extend(guests.env.iter().map(|(k, v)| (*k, v.as_str())));
        let elf = cargo::build_image("hyp", &env)?;
        Ok((elf, guests.qemu_extra()))
    });
    let (elf, extra) = match prepared {
        Ok(p) => p,
        Err(error) => {
            tally.failed += 1;
            tally.failures.push(format!("{name}: {error:#}"));
            tally.step(name, start.elapsed(), format!("FAILED: {error:#}"));
            return Ok(());
        }
    };
    let run = qemu::boot_with(&elf, smp, 300, true, &extra)?;
    tally.boot(name, start, &check(&run), &run);
    Ok(())
}

fn test_boots(tally: &mut Tally) -> Result<()> {
    if let Err(error) = qemu::ensure_installed() {
        tally.failed += 1;
        tally.failures.push(format!("test boots: {error:#}"));
        tally.step("test boots", Duration::ZERO, "FAILED: no QEMU".into());
        return Ok(());
    }
    // Images built so far: (bin, env) -> ELF, or None if the build failed.
    type Built<'a> = (
        &'a str,
        &'a [(&'a str, &'a str)],
        Option<std::path::PathBuf>,
    );
    let mut built: Vec<Built<'_>> = Vec::new();
    for boot in TEST_BOOTS {
        let start = Instant::now();
        let elf = match built
            .iter()
            .find(|(bin, env, _)| *bin == boot.bin && *env == boot.env)
        {
            Some((_, _, elf)) => elf.clone(),
            None => {
                let elf = match cargo::build_image(boot.bin, boot.env) {
                    Ok(elf) => Some(elf),
                    Err(error) => {
                        eprintln!("xtask: {error:#}");
                        None
                    }
                };
                built.push((boot.bin, boot.env, elf.clone()));
                elf
            }
        };
        let name = format!("boot {}", boot.name);
        let Some(elf) = elf else {
            tally.failed += 1;
            tally
                .failures
                .push(format!("{name}: the image did not build"));
            tally.step(&name, start.elapsed(), "FAILED: no image".into());
            continue;
        };
        let run = qemu::boot(&elf, boot.smp, boot.timeout_s, true)?;
        let mut results = (boot.check)(&run, boot.smp);
        if boot.bin == "hyp" && boot.env.is_empty() {
            // The image's own layout (issue 17 item 2), once per default hyp image.
            results.extend(image::check_hyp_fabric(&elf));
        }
        tally.boot(&name, start, &results, &run);
    }
    Ok(())
}
