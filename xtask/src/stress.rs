//! `cargo xtask stress`: the zero-loss stress runs, on the host (threads: 4 partitions x
//! 100 000 frames of mixed sizes to random peers, slow receivers) and in the image
//! (4 cores x 10 000 frames each), summed into one line
//! `frames F, delivered F, resent R, lost 0, duplicated 0, corrupted 0`.
//!
//! `--completion-queue`: the same with the senders on SIGA WRITEQ and the completion
//! queue (the host's tests/stress_cq.rs; the image's partition program built with
//! `IQDIO_CQ=1`): a full receiver leaves a buffer PENDING rather than refusing it, so
//! nothing is sent twice and `resent` must be 0.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};

use crate::{cargo, qemu};

/// One run's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Frames counted as sent.
    pub frames: u64,
    /// Frames delivered intact.
    pub delivered: u64,
    /// Refusals sent again.
    pub resent: u64,
    /// Frames lost.
    pub lost: u64,
    /// Frames delivered twice.
    pub duplicated: u64,
    /// Frames damaged or out of order.
    pub corrupted: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.frames += o.frames;
        self.delivered += o.delivered;
        self.resent += o.resent;
        self.lost += o.lost;
        self.duplicated += o.duplicated;
        self.corrupted += o.corrupted;
    }

    fn clean(&self) -> bool {
        self.frames > 0
            && self.delivered == self.frames
            && self.lost == 0
            && self.duplicated == 0
            && self.corrupted == 0
    }

    /// The result line.
    pub fn line(&self) -> String {
        format!(
            "frames {}, delivered {}, resent {}, lost {}, duplicated {}, corrupted {}",
            self.frames, self.delivered, self.resent, self.lost, self.duplicated, self.corrupted
        )
    }
}

/// Finds `frames F, delivered D, resent R, lost L, duplicated U, corrupted C` anywhere
/// in `text` (the last such line wins).
pub fn parse(text: &str) -> Option<Counts> {
    text.lines().rev().find_map(|line| {
        let at = line.find("frames ")?;
        let mut fields = line[at..].split(", ");
        let mut next =
            |name: &str| -> Option<u64> { fields.next()?.strip_prefix(name)?.trim().parse().ok() };
        Some(Counts {
            frames: next("frames ")?,
            delivered: next("delivered ")?,
            resent: next("resent ")?,
            lost: next("lost ")?,
            duplicated: next("duplicated ")?,
            corrupted: next("corrupted ")?,
        })
    })
}

/// Result of one stress run.
pub struct StressRun {
    /// Its counts.
    pub counts: Counts,
    /// The run ended well (test passed / image exited 0) and its counts are clean.
    pub passed: bool,
}

/// Whether a run's counts pass: clean, and with the completion queue nothing resent.
fn passes(counts: &Counts, cq: bool) -> bool {
    counts.clean() && (!cq || counts.resent == 0)
}

/// The host stress test (4 x 100 000 frames, release); `cq`: through the completion
/// queue (tests/stress_cq.rs).
pub fn host(cq: bool) -> Result<StressRun> {
    let start = Instant::now();
    let test = if cq { "stress_cq" } else { "stress" };
    eprintln!("xtask: == host stress: cargo test --release --test {test} -- --ignored --nocapture");
    let mut command = cargo::command(&[
        "test",
        "--release",
        "--test",
        test,
        "--",
        "--ignored",
        "--nocapture",
    ]);
    command.env("RUST_TEST_THREADS", "1");
    let (ok, output) = cargo::run_tee(command)?;
    let Some(counts) = parse(&output) else {
        bail!("the host stress test printed no result line");
    };
    eprintln!(
        "xtask: host stress: {} ({:.1} s){}",
        counts.line(),
        start.elapsed().as_secs_f64(),
        if ok { "" } else { ", FAILED" }
    );
    Ok(StressRun {
        passed: ok && passes(&counts, cq),
        counts,
    })
}

/// The image stress run: the partitions demo with `frames` data frames per core; `cq`:
/// the partition program built with `IQDIO_CQ=1` (its senders on SIGA WRITEQ and the
/// completion queue, its receivers slower than its senders).
pub fn image(frames: u64, smp: u32, cq: bool) -> Result<StressRun> {
    let start = Instant::now();
    let frames_s = frames.to_string();
    let mut env = vec![("IQDIO_FRAMES", frames_s.as_str())];
    if cq {
        env.push(("IQDIO_CQ", "1"));
    }
    let elf = cargo::build_image("hyp", &env)?;
    qemu::ensure_installed()?;
    let boot = qemu::boot(&elf, smp, 1200, true)?;
    let text: String = boot
        .lines
        .iter()
        .filter(|l| l.message.starts_with("stress: "))
        .map(|l| format!("{}\n", l.message))
        .collect();
    let Some(counts) = parse(&text) else {
        bail!("the image printed no stress line ({})", boot.outcome);
    };
    eprintln!(
        "xtask: image stress ({smp} cores x {frames} frames{}): {} ({:.1} s, {})",
        if cq { ", completion queue" } else { "" },
        counts.line(),
        start.elapsed().as_secs_f64(),
        boot.outcome
    );
    Ok(StressRun {
        passed: boot.outcome == qemu::Outcome::Pass && passes(&counts, cq),
        counts,
    })
}

/// Runs both stress runs (`cq`: through the completion queue) and prints the summed
/// line last.
pub fn run(image_frames: u64, smp: u32, cq: bool) -> Result<ExitCode> {
    let host = host(cq)?;
    let image = image(image_frames, smp, cq)?;
    let mut total = Counts::default();
    total.add(&host.counts);
    total.add(&image.counts);
    println!("{}", total.line());
    Ok(if host.passed && image.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_host_and_image_lines() {
        let host = "frames 400000, delivered 400000, resent 12, lost 0, duplicated 0, corrupted 0";
        let c = parse(host).unwrap();
        assert_eq!((c.frames, c.resent, c.lost), (400000, 12, 0));
        let image = "stress: frames 8, delivered 7, resent 1, lost 1, duplicated 0, corrupted 0";
        let c = parse(image).unwrap();
        assert!(!c.clean());
        let resent = parse("frames 8, delivered 8, resent 1, lost 0, duplicated 0, corrupted 0");
        let resent = resent.unwrap();
        assert!(passes(&resent, false) && !passes(&resent, true));
        assert_eq!(parse("frames 1, delivered 1"), None);
    }
}
