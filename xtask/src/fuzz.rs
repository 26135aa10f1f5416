//! `cargo xtask fuzz --seconds S`: runs every cargo-fuzz target of `fuzz/` for an equal
//! share of `S` seconds and ends with the line `fuzz: T targets, E execs, K crashes`.
//!
//! The fuzz crate is its own workspace, built with nightly (cargo-fuzz needs
//! `-Zsanitizer=address`): this module runs `rustup run nightly cargo fuzz ...` in
//! `fuzz/`, installing the nightly toolchain and cargo-fuzz first when they are
//! missing. Each target starts from its committed seeds (`fuzz/seeds/<target>`) and
//! keeps what it finds in `fuzz/corpus/<target>`; a crash leaves its input in
//! `fuzz/artifacts/<target>/` and the run's log in `fuzz/target/fuzz-<target>.log`.
//! The count of executions is libFuzzer's `stat::number_of_executed_units`
//! (`-print_final_stats=1`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// What one target's run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetRun {
    /// The fuzz target (a `[[bin]]` of `fuzz/Cargo.toml`).
    pub name: String,
    /// Inputs executed.
    pub execs: u64,
    /// Crashing inputs found (libFuzzer stops at the first one: 0 or 1).
    pub crashes: u64,
    /// Where libFuzzer wrote the crashing inputs.
    pub artifacts: Vec<PathBuf>,
    /// Seconds it was given.
    pub seconds: u64,
}

/// What a whole fuzz run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FuzzSummary {
    /// One entry per target, in `cargo fuzz list` order.
    pub targets: Vec<TargetRun>,
}

impl FuzzSummary {
    /// Inputs executed over all targets.
    pub fn execs(&self) -> u64 {
        self.targets.iter().map(|t| t.execs).sum()
    }

    /// Crashes over all targets.
    pub fn crashes(&self) -> u64 {
        self.targets.iter().map(|t| t.crashes).sum()
    }

    /// The result line: `fuzz: T targets, E execs, K crashes`.
    pub fn line(&self) -> String {
        format!(
            "fuzz: {} targets, {} execs, {} crashes",
            self.targets.len(),
            self.execs(),
            self.crashes()
        )
    }
}

/// The repository root (the xtask lives in `<root>/xtask`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// `rustup run nightly cargo <args>` in `dir`, with the variables that the outer cargo
/// (stable, the xtask's own build) set removed, so they cannot leak into the nightly
/// build of the fuzz workspace.
fn nightly_cargo(dir: &Path, args: &[&str]) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"])
        .args(args)
        .current_dir(dir);
    for var in [
        "RUSTUP_TOOLCHAIN",
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MANIFEST_DIR",
    ] {
        c.env_remove(var);
    }
    c
}

fn succeeds(c: &mut Command) -> bool {
    c.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs the nightly toolchain and cargo-fuzz when they are missing.
fn ensure_tools(fuzz_dir: &Path) -> Result<(), String> {
    let nightly = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .map_err(|e| format!("running rustup: {e}"))?;
    if !String::from_utf8_lossy(&nightly.stdout)
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        eprintln!("xtask: fuzz: installing the nightly toolchain");
        let ok = Command::new("rustup")
            .args(["toolchain", "install", "nightly", "--profile", "minimal"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("rustup toolchain install nightly failed".into());
        }
    }
    if !succeeds(&mut nightly_cargo(fuzz_dir, &["fuzz", "--version"])) {
        eprintln!("xtask: fuzz: installing cargo-fuzz (cargo install cargo-fuzz)");
        let ok = Command::new("cargo")
            .args(["install", "cargo-fuzz", "--locked"])
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("CARGO_TARGET_DIR")
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            return Err("cargo install cargo-fuzz failed".into());
        }
    }
    Ok(())
}

/// The targets, from `cargo fuzz list`.
fn targets(fuzz_dir: &Path) -> Result<Vec<String>, String> {
    let out = nightly_cargo(fuzz_dir, &["fuzz", "list"])
        .output()
        .map_err(|e| format!("running cargo fuzz list: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo fuzz list failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    if names.is_empty() {
        return Err("cargo fuzz list names no target".into());
    }
    Ok(names)
}

/// libFuzzer's `stat::number_of_executed_units: N` (the last one in the log).
pub fn parse_execs(log: &str) -> Option<u64> {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("stat::number_of_executed_units:"))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
}

/// The inputs libFuzzer saved after a crash, leak, timeout or out-of-memory
/// (`Test unit written to <path>`).
pub fn parse_artifacts(log: &str) -> Vec<PathBuf> {
    log.lines()
        .filter_map(|l| l.split_once("Test unit written to "))
        .map(|(_, p)| PathBuf::from(p.trim()))
        .collect()
}

/// When libFuzzer stops before printing final stats (some crash paths), the last
/// progress line still says how many inputs ran: `#12345\t...`.
fn parse_progress(log: &str) -> Option<u64> {
    log.lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .next_back()
}

fn run_target(fuzz_dir: &Path, name: &str, seconds: u64) -> Result<TargetRun, String> {
    let corpus = fuzz_dir.join("corpus").join(name);
    fs::create_dir_all(&corpus).map_err(|e| format!("creating {}: {e}", corpus.display()))?;
    let seeds = fuzz_dir.join("seeds").join(name);
    let corpus_arg = format!("corpus/{name}");
    let seeds_arg = format!("seeds/{name}");
    let time = format!("-max_total_time={seconds}");
    let mut args = vec!["fuzz", "run", name, corpus_arg.as_str()];
    if seeds.is_dir() {
        args.push(seeds_arg.as_str());
    }
    args.extend([
        "--",
        time.as_str(),
        "-print_final_stats=1",
        "-timeout=10",
        "-rss_limit_mb=4096",
    ]);
    eprintln!(
        "xtask: fuzz: {name} for {seconds} s: cargo +nightly {}",
        args.join(" ")
    );
    let out = nightly_cargo(fuzz_dir, &args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running cargo fuzz run {name}: {e}"))?;
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log_path = fuzz_dir.join("target").join(format!("fuzz-{name}.log"));
    let _ = fs::create_dir_all(fuzz_dir.join("target"));
    let _ = fs::write(&log_path, &log);
    let artifacts = parse_artifacts(&log);
    let execs = parse_execs(&log).or_else(|| parse_progress(&log));
    if !out.status.success() && artifacts.is_empty() {
        // Neither a clean stop nor a crash libFuzzer reported: the build failed.
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "cargo fuzz run {name} failed ({}):\n{}",
            out.status,
            tail.join("\n")
        ));
    }
    let run = TargetRun {
        name: name.to_string(),
        execs: execs.unwrap_or(0),
        crashes: artifacts.len() as u64,
        artifacts,
        seconds,
    };
    eprintln!(
        "xtask: fuzz: {name}: {} execs, {} crashes{}",
        run.execs,
        run.crashes,
        if run.crashes > 0 {
            format!(" (log {})", log_path.display())
        } else {
            String::new()
        }
    );
    for a in &run.artifacts {
        eprintln!(
            "xtask: fuzz:   crash input {}; reproduce: cd fuzz && cargo +nightly fuzz run {name} {}",
            a.display(),
            a.display()
        );
    }
    Ok(run)
}

/// Runs every fuzz target for `seconds / targets` seconds each (at least 1), prints
/// `fuzz: T targets, E execs, K crashes` and returns the summary. Crashes are not an
/// `Err`: the caller turns `crashes() > 0` into a failing exit status. `Err` means
/// the run itself could not be done (tools, build).
pub fn run(seconds: u64) -> Result<FuzzSummary, String> {
    let fuzz_dir = root().join("fuzz");
    if !fuzz_dir.join("Cargo.toml").is_file() {
        return Err(format!("no fuzz crate at {}", fuzz_dir.display()));
    }
    ensure_tools(&fuzz_dir)?;
    let names = targets(&fuzz_dir)?;
    eprintln!("xtask: fuzz: building {} targets", names.len());
    let build = nightly_cargo(&fuzz_dir, &["fuzz", "build"])
        .status()
        .map_err(|e| format!("running cargo fuzz build: {e}"))?;
    if !build.success() {
        return Err(format!("cargo fuzz build failed ({build})"));
    }
    let each = (seconds / names.len() as u64).max(1);
    let mut summary = FuzzSummary::default();
    for name in &names {
        summary.targets.push(run_target(&fuzz_dir, name, each)?);
    }
    println!("{}", summary.line());
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = "INFO: Running with entropic power schedule (0xFF, 100).
#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 30Mb
#8192\tpulse  cov: 12 ft: 13 corp: 2/2b lim: 4 exec/s: 4096 rss: 31Mb
Done 951413 runs in 16 second(s)
stat::number_of_executed_units: 951413
stat::average_exec_per_sec:     59463
stat::new_units_added:          61
";

    #[test]
    fn reads_the_executed_units() {
        assert_eq!(parse_execs(LOG), Some(951_413));
        assert_eq!(parse_execs("nothing here"), None);
        assert_eq!(parse_progress(LOG), Some(8192));
    }

    #[test]
    fn reads_crash_artifacts() {
        let log = "==1==ERROR: AddressSanitizer: heap-buffer-overflow
artifact_prefix='/w/fuzz/artifacts/siga/'; Test unit written to /w/fuzz/artifacts/siga/crash-da39a3ee
Base64: AAE=";
        assert_eq!(
            parse_artifacts(log),
            vec![PathBuf::from("/w/fuzz/artifacts/siga/crash-da39a3ee")]
        );
        assert!(parse_artifacts(LOG).is_empty());
    }

    #[test]
    fn the_result_line() {
        let t = |name: &str, execs, crashes| TargetRun {
            name: name.into(),
            execs,
            crashes,
            artifacts: Vec::new(),
            seconds: 20,
        };
        let s = FuzzSummary {
            targets: vec![t("decode", 100, 0), t("siga", 20, 1), t("transfer", 5, 0)],
        };
        assert_eq!(s.line(), "fuzz: 3 targets, 125 execs, 1 crashes");
    }
}
