//! `cargo xtask`: iqdio's front door. Builds the bare-metal images, boots them under
//! `qemu-system-aarch64`, decodes their defmt logs, and runs the whole test suite.
//!
//! ```text
//! cargo xtask run                 # boot the hypervisor: 4 partitions at EL1, the demo
//! cargo xtask test                # host tests, clippy, target build, test boots
//! cargo xtask selftest --smp 8    # boot the on-target self-test alone
//! ```

mod ab;
mod bench;
mod boots;
mod cargo;
mod checks;
mod decode;
mod fuzz;
mod image;
mod linux;
mod panics;
mod parse;
mod qemu;
mod settings;
mod stress;
mod test;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::qemu::Outcome;

/// Build, boot and test iqdio: partitions exchanging frames through QDIO queues, one
/// per core of an emulated Arm machine.
#[derive(Parser, Debug)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Build the hypervisor image `hyp` (with the partition program it embeds) and boot
    /// it: every core at EL2 runs one partition at EL1.
    ///
    /// The options reach the image as build-time environment variables (IQDIO_FRAMES,
    /// IQDIO_MFS, IQDIO_SCENARIO), so changing one rebuilds only the image. The exit
    /// status is the image's: 0 pass, 1 failure, 2 panic, 3 fault, 124 timeout.
    Run {
        /// Cores, one partition each (QEMU `-smp`), 2 to 8; 4 if omitted, 3 for
        /// `--scenario linux-net`.
        #[arg(long, value_parser = clap::value_parser!(u32).range(2..=8))]
        smp: Option<u32>,
        /// Frames each partition sends (IQDIO_FRAMES); the image's default if omitted.
        #[arg(long, value_name = "K")]
        frames: Option<u64>,
        /// Maximum frame size in KiB (IQDIO_MFS).
        #[arg(long, value_parser = ["16", "24", "40", "64"])]
        mfs: Option<String>,
        /// Scenario to run (IQDIO_SCENARIO): `partitions` (the default), `tcp`,
        /// `multicast` (groups, broadcast and unicast, every copy checked), `l2` (TCP
        /// over layer 2 on two VLANs, 4 cores or more),
        /// `hostile` (3 cores or more), `linux` (Debian's arm64 kernel in the last
        /// `--linux-guests` partitions, the demo among the others), or `linux-net`
        /// (a smoltcp partition on core 0 and a Linux guest on every other core, on one
        /// layer-2 LAN through their virtio-net devices: pings, TCP transfers, checksums;
        /// ends with the `linux-net:` line).
        #[arg(long, value_name = "NAME")]
        scenario: Option<String>,
        /// Stop QEMU after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 600)]
        timeout: u64,
        /// Linux guests in `--scenario linux` (on the last cores; the demo runs among
        /// the bare-metal partitions before them, so those are none or at least two).
        #[arg(long, value_name = "N", default_value_t = 2)]
        linux_guests: u32,
        /// With `--scenario linux` or `linux-net`: run this shell script in every Linux
        /// guest instead of the workload, and print its console lines.
        #[arg(long, value_name = "FILE")]
        guest_init: Option<std::path::PathBuf>,
        /// With `--scenario linux-net`: bytes each Linux guest sends each other one
        /// over TCP (a multiple of 4096).
        #[arg(long, value_name = "BYTES", default_value_t = linux::netload::DEFAULT_BYTES)]
        net_bytes: u64,
    },
    /// Run everything: host tests, clippy (host and target), the bare-metal library
    /// build, and the test boots under QEMU.
    ///
    /// Each host test and each on-target case counts as one test; a failed clippy or
    /// build step, or a boot that faults or times out, counts as a failure. Ends with
    /// one line `N passed, M failed` and exits non-zero on any failure.
    Test {
        /// Only the test boots (skip host tests, clippy and the library build).
        #[arg(long)]
        boots_only: bool,
        /// Only the Linux test boots (Linux guests under the hypervisor).
        #[arg(long)]
        linux_only: bool,
    },
    /// Run the transport benchmarks (criterion, callgrind) and write docs/bench/:
    /// results.json, results.md and the throughput plot throughput.png.
    Bench(bench::BenchArgs),
    /// The zero-loss stress runs: the host (4 partitions x 100 000 frames of mixed sizes
    /// to random peers, receivers slower than senders) and the image (4 cores x 10 000
    /// frames each). Ends with `frames F, delivered F, resent R, lost 0, duplicated 0,
    /// corrupted 0`, the two summed. With `--completion-queue` the senders use SIGA
    /// WRITEQ and the completion queue (host: tests/stress_cq.rs; image: the partition
    /// program built with `IQDIO_CQ=1`), and `resent` must be 0.
    Stress {
        /// Data frames each core sends in the image.
        #[arg(long, default_value_t = 10_000)]
        frames: u64,
        /// Cores (partitions) of the image.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=8))]
        smp: u32,
        /// Send through the completion queue (SIGA WRITEQ, buffers PENDING instead of
        /// refused): no frame may be sent twice.
        #[arg(long)]
        completion_queue: bool,
    },
    /// Fuzz every cargo-fuzz target in `fuzz/` (decoding, transfer, whole SIGA calls over
    /// arbitrary guest memory) for an equal share of the time. Nightly; installs the
    /// toolchain and cargo-fuzz when missing. Ends with `fuzz: T targets, E execs, K
    /// crashes`.
    Fuzz {
        /// Total seconds, shared by the targets.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Check that no panic path is reachable from the library's fabric entries (SIGA,
    /// registration, the delay fallback) in the release hypervisor image: disassemble
    /// it (llvm-objdump), walk the static call graph, print every chain to a panic
    /// entry. Ends with `panics: R roots, F functions reached, P panic paths`; fails
    /// if P > 0. Also a step of `test`.
    Panics,
    /// Model-check the locks and the completion-vector protocol with loom
    /// (`--cfg iqdio_loom`, release, its own target directory). Also a step of `test`.
    Loom,
    /// Run the library's unit tests and the malformed-descriptor tests under Miri
    /// (nightly; installs the `miri` component when missing). About 5 minutes.
    Miri {
        /// Only the unit tests (about 1 minute).
        #[arg(long)]
        quick: bool,
    },
    /// Boot a Linux guest's pieces without the hypervisor (issue 15 groundwork): fetch
    /// Debian's arm64 cloud kernel and busybox on first use (cached in
    /// target/linux-guest/), build the initramfs and the guest's device tree, load them
    /// at the partition layout's addresses under QEMU, and check the init's report and
    /// its clean poweroff. Ends with `N passed, M failed`.
    LinuxBare(linux::BareArgs),
    /// Build and boot the on-target self-test image alone; print each case's result.
    Selftest {
        /// Cores (QEMU `-smp`), 2 to 8.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(2..=8))]
        smp: u32,
        /// Make this case fail on purpose. Written into a copy of the built image (its
        /// settings block), so the normal build stays as it is.
        #[arg(long, value_name = "CASE")]
        fail: Option<String>,
        /// Add a case that fails the hard way: `panic`, `stack-overflow`, `null`, `hang`,
        /// `hang-masked`. Shows each failure path ends the boot with the right status.
        /// Written into a copy of the built image too.
        #[arg(long, value_name = "KIND", value_parser = ["panic", "stack-overflow", "null", "hang", "hang-masked"])]
        inject: Option<String>,
        /// Boot this many times (stops at the first failing boot).
        #[arg(long, value_name = "N", default_value_t = 1)]
        repeat: u32,
        /// Stop QEMU after this many seconds.
        #[arg(long, value_name = "SECONDS", default_value_t = 120)]
        timeout: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("xtask: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> Result<ExitCode> {
    // Booting needs QEMU: find (or install) it before spending time on a build.
    if matches!(command, Command::Run { .. } | Command::Selftest { .. }) {
        qemu::ensure_installed()?;
    }
    match command {
        Command::Run {
            smp,
            frames,
            mfs,
            scenario,
            timeout,
            linux_guests,
            guest_init,
            net_bytes,
        } => {
            let frames = frames.map(|k| k.to_string());
            let mut env: Vec<(&str, &str)> = [
                ("IQDIO_FRAMES", frames.as_deref()),
                ("IQDIO_MFS", mfs.as_deref()),
                ("IQDIO_SCENARIO", scenario.as_deref()),
            ]
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?)))
            .collect();
            let linux = scenario.as_deref() == Some("linux");
            let linux_net = scenario.as_deref() == Some("linux-net");
            if guest_init.is_some() && !linux && !linux_net {
                anyhow::bail!("--guest-init needs --scenario linux or linux-net");
            }
            let smp = smp.unwrap_or(if linux_net { 3 } else { 4 });
            // The bare-metal cores beside the guests play the demo, which takes a pair.
            if linux && smp.checked_sub(linux_guests) == Some(1) {
                anyhow::bail!(
                    "--scenario linux --linux-guests {linux_guests} --smp {smp} leaves one bare-metal partition, and the demo beside the guests needs none or at least two: use --smp {} or {}",
                    smp + 1,
                    linux_guests
                );
            }
            let guests = if linux {
                Some(linux::hyp_guests(
                    smp,
                    linux_guests,
                    guest_init.as_deref(),
                    linux::HYP_WORKLOAD,
                )?)
            } else if linux_net {
                Some(linux::net_guests(smp, net_bytes, guest_init.as_deref())?)
            } else {
                None
            };
            let mut extra = qemu::Extra::default();
            if let Some(guests) = &guests {
                env.extend(guests.env.iter().map(|(k, v)| (*k, v.as_str())));
                extra = guests.qemu_extra();
            }
            let elf = cargo::build_image("hyp", &env)?;
            let run = qemu::boot_with(&elf, smp, timeout, true, &extra)?;
            // On a pass, the image's own last line stays the last line.
            if run.outcome != Outcome::Pass {
                eprintln!("xtask: hyp: {}", run.outcome);
            }
            Ok(ExitCode::from(run.outcome.exit_status()))
        }
        Command::Test {
            boots_only,
            linux_only,
        } => test::run_all(boots_only, linux_only),
        Command::Stress {
            frames,
            smp,
            completion_queue,
        } => stress::run(frames, smp, completion_queue),
        Command::Fuzz { seconds } => {
            // `fuzz::run` prints the result line last.
            let summary = fuzz::run(seconds).map_err(anyhow::Error::msg)?;
            Ok(if summary.crashes() == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Loom => checks::subcommand("loom", checks::loom),
        Command::Panics => panics::run(),
        Command::Miri { quick } => checks::subcommand("miri", || checks::miri(quick)),
        Command::Bench(args) => bench::run(args),
        Command::LinuxBare(args) => linux::bare(args),
        Command::Selftest {
            smp,
            fail,
            inject,
            repeat,
            timeout,
        } => {
            let built = cargo::build_image("selftest", &[])?;
            // The failure settings go into a copy of the one cached image: nothing is
            // rebuilt per failure kind.
            let elf = if fail.is_some() || inject.is_some() {
                settings::selftest_copy(&built, fail.as_deref(), inject.as_deref())?
            } else {
                built
            };
            for round in 1..=repeat {
                let run = qemu::boot(&elf, smp, timeout, true)?;
                let results = boots::check_selftest(&run, smp);
                let failed: Vec<_> = results.iter().filter(|r| !r.passed).collect();
                eprintln!(
                    "xtask: selftest -smp {smp} boot {round}/{repeat}: {} cases, {} failed; {} in {:.2} s",
                    results.len(),
                    failed.len(),
                    run.outcome,
                    run.elapsed.as_secs_f64()
                );
                for result in &failed {
                    eprintln!("xtask:   FAILED {}: {}", result.name, result.detail);
                }
                if !failed.is_empty() {
                    let status = match run.outcome {
                        Outcome::Pass => Outcome::Failure.exit_status(),
                        other => other.exit_status(),
                    };
                    return Ok(ExitCode::from(status));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
