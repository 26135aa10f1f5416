//! `cargo xtask bench [--quick]`: the transport benchmarks (issue 5), the deterministic
//! instruction counts, and their report under `docs/bench/`.
//!
//! 1. `cargo bench -p iqdio-bench --bench transport` (criterion; `--quick`: short warm-up and
//!    measurement, 10 samples), results read from
//!    `target/criterion/<group>/<function>/<parameter>/new/estimates.json` (the median).
//!    Then `cargo bench -p iqdio-bench --bench tcp` (`benches/tcp.rs`; `--quick`:
//!    16 MiB instead of 64), TCP over the smoltcp device against Linux TCP loopback,
//!    read from `target/criterion/iqdio-tcp.json`.
//! 2. `valgrind --tool=callgrind` on `examples/send_cost.rs` (release): instructions
//!    per operation as `(total(N2) − total(N1)) / (N2 − N1)`, each operation counted
//!    alone with `--toggle-collect`.
//! 3. `docs/bench/results.json`, `docs/bench/results.md` and the plot
//!    `docs/bench/throughput.png` (plotters, bitmap backend, embedded DejaVu font).
//!
//! `--against REV [FILTER]` compares the working tree with a commit instead, both
//! builds run alternately (`ab.rs`), and writes nothing.
//!
//! `--instructions` runs step 2 alone and prints its counts (and a 64 B send's
//! instructions beyond its two frame copies, and how they split between the driver
//! and the fabric's SIGA, `send_cost siga`), writing nothing.
//!
//! Benchmarks measure; nothing here fails on a missed target.

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::{Command, ExitCode, Stdio},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::cargo;
use crate::linux::qemunet;

/// Options of `cargo xtask bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Short warm-up and measurement times and 10 samples per benchmark: the whole run
    /// takes under 3 minutes once built (numbers are noisier).
    #[arg(long)]
    quick: bool,
    /// Measure nothing: write the report again from the last run's results.
    #[arg(long)]
    report_only: bool,
    /// Only the Linux network figure (issue 16): 16 MiB over TCP each way between two
    /// Linux guests over iqdio (`cargo xtask run --scenario linux-net`) and between two
    /// plain QEMUs joined by `-netdev socket`; updates `ratios.linux_tcp_vs_qemu_net`
    /// in results.json and its section of results.md, nothing else.
    #[arg(long, conflicts_with_all = ["quick", "report_only"])]
    linux_net: bool,
    /// Only the callgrind instruction counts (step 2), printed and not written to the
    /// report: a fast figure that does not depend on the machine's load, for working on
    /// the send path.
    #[arg(long, conflicts_with_all = ["quick", "report_only", "linux_net"])]
    instructions: bool,
    /// Compare the working tree with this commit, at the same time (see `ab.rs`): both
    /// builds of `benches/transport.rs` run alternately, `--rounds` times, on the
    /// benchmarks FILTER matches; prints each one's medians and the ratio of their
    /// means, writing nothing under `docs/bench/`.
    #[arg(long, value_name = "REV", conflicts_with_all = ["quick", "report_only", "linux_net", "instructions"])]
    against: Option<String>,
    /// With `--against`: rounds, each running both builds once.
    #[arg(long, default_value_t = 3, requires = "against", value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// With `--against`: criterion's measurement time a benchmark, in seconds.
    #[arg(long, default_value_t = 3, requires = "against", value_parser = clap::value_parser!(u32).range(1..=60))]
    seconds: u32,
    /// With `--against`: criterion's filter, a regular expression over benchmark ids
    /// (for example `'^cycle/iqdio_zc/(64|57344)$'`); every benchmark if omitted.
    #[arg(requires = "against", value_name = "FILTER")]
    filter: Option<String>,
}

/// Frame sizes of the throughput comparison (as `benches/support/mod.rs`).
const SIZES: [u64; 6] = [64, 256, 1500, 9000, 16 << 10, 56 << 10];
/// The largest frame: 56 KiB.
const K56: u64 = 56 << 10;
/// Transports of the throughput comparison: criterion function name, label.
const TRANSPORTS: [(&str, &str); 5] = [
    ("iqdio", "iqdio (whole cycle, copying calls)"),
    ("iqdio_zc", "iqdio (whole cycle, zero-copy)"),
    ("memcpy", "memcpy (the limit)"),
    ("spsc", "heapless::spsc ring"),
    ("udp", "UDP over loopback"),
];
/// Criterion's groups in `benches/transport.rs`; removed before a run, so a result that
/// was not measured cannot be read from an older run.
const GROUPS: [&str; 6] = ["copy", "cycle", "stream", "scaling", "lookup", "receiver"];
/// The two-core streaming benchmark (issue 12 item 6): criterion function name, label.
const STREAMS: [(&str, &str); 2] = [
    ("iqdio", "iqdio streaming, two threads (zero-copy)"),
    (
        "spsc",
        "heapless::spsc ring streaming, two threads (stamps 8 bytes)",
    ),
];
/// The frame sizes at which the one-copy controls (`cycle/memcpy_ring`,
/// `stream/spsc_copy`) are measured, and the plot's label of the two-core one.
const ONE_COPY: ([u64; 2], &str) = (
    [16 << 10, K56],
    "heapless::spsc ring streaming, two threads (copies the frame)",
);
/// Frame sizes of the copy-primitive comparison (as `COPY_SIZES` in the bench).
const COPY_SIZES: [u64; 4] = [64, 1500, 16 << 10, K56];
/// The copy primitives compared (issue 12 item 1): criterion function name, label.
const COPIES: [(&str, &str); 4] = [
    ("memcpy", "memcpy (unsound on racing memory; the limit)"),
    ("asm", "inline assembly (kept)"),
    ("atomic_words", "relaxed atomic words"),
    ("volatile_words", "volatile words"),
];
/// Iterations of the two callgrind runs whose difference gives the cost of one
/// (multiples of the 128-buffer ring, and of the 8 lookup destinations).
const N1: u64 = 256;
const N2: u64 = 1280;

/// The targets: key, comparison, bound.
const TARGETS: [(&str, Cmp, f64); 8] = [
    ("memcpy_56k", Cmp::AtLeast, 0.9),
    ("stream_56k", Cmp::AtLeast, 0.8),
    ("stream_spsc_64", Cmp::AtMost, 2.0),
    ("spsc_64", Cmp::AtMost, 10.0),
    ("udp_1500", Cmp::AtLeast, 20.0),
    ("scaling_2pairs", Cmp::AtLeast, 1.8),
    ("lookup_4096_vs_16", Cmp::AtMost, 1.1),
    ("send_64_beyond_copy", Cmp::AtMost, 300.0),
];

#[derive(Clone, Copy)]
enum Cmp {
    AtLeast,
    AtMost,
}

impl Cmp {
    fn met(self, value: f64, bound: f64) -> bool {
        match self {
            Self::AtLeast => value >= bound,
            Self::AtMost => value <= bound,
        }
    }

    fn sign(self) -> &'static str {
        match self {
            Self::AtLeast => "≥",
            Self::AtMost => "≤",
        }
    }
}

/// Runs the benchmarks and writes the report.
pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let root = cargo::workspace_root();
    let criterion = cargo::target_dir().join("criterion");
    // What a report needs besides criterion's files: the run's circumstances and the
    // instruction counts, kept for `--report-only`.
    let run_file = criterion.join("iqdio-run.json");
    let start = Instant::now();
    let out = root.join("docs/bench");
    if let Some(rev) = args.against {
        crate::ab::run(&crate::ab::AbArgs {
            rev,
            rounds: args.rounds,
            seconds: args.seconds,
            filter: args.filter,
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    if args.linux_net {
        let details = measure_linux_net(&root, &criterion)?;
        report_linux_net(&criterion, &out)?;
        eprintln!(
            "xtask: bench (linux-net): wrote docs/bench/results.json, results.md in {:.0} s",
            start.elapsed().as_secs_f64()
        );
        return Ok(if details["ratio"].is_number() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    if args.instructions {
        let counts = count_instructions(&root)?;
        for size in ["64", "56k"] {
            if let Some(beyond) = beyond_copy(&counts, size) {
                eprintln!(
                    "xtask: bench: send_{size} beyond its two frame copies: {beyond:.1} instructions"
                );
            }
        }
        if let Some((driver, fabric)) = send_sides(&counts) {
            eprintln!(
                "xtask: bench: send_64 by side: the fabric's SIGA {fabric:.1} (its one frame copy included), the driver {driver:.1} (its copy included)"
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let run: Value = if args.report_only {
        serde_json::from_str(
            &fs::read_to_string(&run_file).with_context(|| {
                format!("{}: run `cargo xtask bench` first", run_file.display())
            })?,
        )?
    } else {
        let load_before = load_average();
        let commit = command_line_in("git", &["describe", "--always", "--dirty"], &root);
        for group in GROUPS {
            let dir = criterion.join(group);
            if dir.exists() {
                fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        run_criterion(&root, &criterion, args.quick)?;
        let _ = fs::remove_file(criterion.join("iqdio-tcp.json"));
        run_tcp(&root, &criterion, args.quick)?;
        let instructions = count_instructions(&root)?;
        // A failure here leaves the figure out; the rest of the report stands.
        if let Err(error) = measure_linux_net(&root, &criterion) {
            eprintln!("xtask: bench: linux_tcp_vs_qemu_net not measured: {error:#}");
        }
        let run = json!({
            "mode": if args.quick { "quick" } else { "full" },
            "measured": utc_now(),
            "commit": commit,
            "load_average_before": load_before,
            "load_average_after": load_average(),
            "instructions": instructions,
        });
        fs::create_dir_all(&criterion)?;
        fs::write(&run_file, serde_json::to_string_pretty(&run)?)?;
        run
    };
    let results = Results::read(&criterion, run["instructions"].clone())?;
    let machine = json!({
        "cpu": cpu_model(),
        "cores": cores(),
        "load_average_before": run["load_average_before"],
        "load_average_after": run["load_average_after"],
        "os": os_name(),
        "rustc": command_line("rustc", &["--version"]),
    });
    let mode = run["mode"].as_str().unwrap_or("?");
    let doc = results.json(machine, &run);
    fs::create_dir_all(&out)?;
    fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    fs::write(out.join("results.md"), results.markdown(&doc))?;
    plot(&results, &doc, &out.join("throughput.png"))?;
    results.summary(&doc);
    report_linux_net(&criterion, &out)?;
    eprintln!(
        "xtask: bench ({mode}): wrote docs/bench/results.json, results.md, throughput.png in {:.0} s",
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `cargo bench -p iqdio-bench --bench transport`, results under `criterion`.
fn run_criterion(root: &Path, criterion: &Path, quick: bool) -> Result<()> {
    let mut args = vec!["bench", "-p", "iqdio-bench", "--bench", "transport", "--"];
    if quick {
        args.extend([
            "--warm-up-time",
            "0.5",
            "--measurement-time",
            "1",
            "--sample-size",
            "10",
        ]);
    }
    eprintln!("xtask: bench: cargo {}", args.join(" "));
    let status = Command::new(cargo::cargo())
        .args(&args)
        .current_dir(root)
        .env("CRITERION_HOME", criterion)
        .status()
        .context("running cargo bench")?;
    if !status.success() {
        bail!("cargo bench failed: {status}");
    }
    Ok(())
}

/// `cargo bench -p iqdio-bench --bench tcp`: TCP over iqdio against loopback,
/// written to `criterion/iqdio-tcp.json`.
fn run_tcp(root: &Path, criterion: &Path, quick: bool) -> Result<()> {
    let args = ["bench", "-p", "iqdio-bench", "--bench", "tcp"];
    eprintln!("xtask: bench: cargo {}", args.join(" "));
    let mut command = Command::new(cargo::cargo());
    command
        .args(args)
        .current_dir(root)
        .env("CRITERION_HOME", criterion);
    if quick {
        command.env("IQDIO_TCP_QUICK", "1");
    }
    let status = command
        .status()
        .context("running cargo bench --bench tcp")?;
    if !status.success() {
        bail!("cargo bench --bench tcp failed: {status}");
    }
    Ok(())
}

/// Issue 16's figure (`linux::qemunet`): both sides measured, kept in
/// `criterion/iqdio-linux-net.json` (removed first, so a failed run leaves none).
fn measure_linux_net(root: &Path, criterion: &Path) -> Result<Value> {
    let file = criterion.join(qemunet::RESULT_FILE);
    let _ = fs::remove_file(&file);
    let mut details = qemunet::measure(qemunet::BYTES)?;
    details["measured"] = json!(utc_now());
    details["commit"] = json!(command_line_in(
        "git",
        &["describe", "--always", "--dirty"],
        root
    ));
    fs::create_dir_all(criterion)?;
    fs::write(&file, serde_json::to_string_pretty(&details)?)?;
    Ok(details)
}

/// Writes the kept figure, if any, into results.json and results.md.
fn report_linux_net(criterion: &Path, out: &Path) -> Result<()> {
    let Ok(text) = fs::read_to_string(criterion.join(qemunet::RESULT_FILE)) else {
        return Ok(());
    };
    let details: Value = serde_json::from_str(&text)?;
    qemunet::write_report(out, &details)?;
    eprintln!(
        "xtask: bench:   linux_tcp_vs_qemu_net  {:>10} (reported, no target)",
        details["ratio"]
            .as_f64()
            .map_or("n/a".into(), |v| format!("{v:.2}"))
    );
    Ok(())
}

/// Instruction counts per operation under callgrind; `null` ones if valgrind is missing.
fn count_instructions(root: &Path) -> Result<Value> {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("xtask: bench: valgrind not found: no instruction counts");
        return Ok(json!({}));
    }
    eprintln!("xtask: bench: cargo build --release -p iqdio --example send_cost");
    let status = Command::new(cargo::cargo())
        .args([
            "build",
            "--release",
            "-p",
            "iqdio",
            "--example",
            "send_cost",
        ])
        .current_dir(root)
        .status()?;
    if !status.success() {
        bail!("building examples/send_cost.rs failed: {status}");
    }
    let exe = cargo::target_dir().join("release/examples/send_cost");
    let mut counts = serde_json::Map::new();
    let runs: [(&str, &str, u64, Option<u64>); 16] = [
        ("send_64", "send", 64, None),
        ("send_in_place_64", "in_place", 64, None),
        ("send_in_place_56k", "in_place", K56, None),
        ("receive_in_place_64", "in_place_receive", 64, None),
        ("receive_in_place_56k", "in_place_receive", K56, None),
        ("send_64_packed_16", "packed", 64, None),
        ("receive_64_packed_16", "packed_receive", 64, None),
        ("siga_64", "siga", 64, None),
        ("send_56k", "send", K56, None),
        ("siga_56k", "siga", K56, None),
        ("receive_64", "receive", 64, None),
        ("receive_56k", "receive", K56, None),
        ("memcpy_64", "memcpy", 64, None),
        ("memcpy_56k", "memcpy", K56, None),
        ("send_64_16_addresses", "send", 64, Some(16)),
        ("send_64_4096_addresses", "send", 64, Some(4096)),
    ];
    for (key, op, size, addresses) in runs {
        let a = callgrind(&exe, op, size, N1, addresses)?;
        let b = callgrind(&exe, op, size, N2, addresses)?;
        let per = b.saturating_sub(a) as f64 / (N2 - N1) as f64;
        eprintln!("xtask: bench: callgrind {key}: {per:.1} instructions");
        counts.insert(key.to_string(), json!(per));
    }
    Ok(Value::Object(counts))
}

/// Instructions callgrind counts inside `op`'s function over `n` iterations.
fn callgrind(exe: &Path, op: &str, size: u64, n: u64, addresses: Option<u64>) -> Result<u64> {
    let function = match op {
        "send" => "*do_send*",
        "in_place" => "*do_send_in_place*",
        "in_place_receive" => "*do_receive_in_place*",
        "receive" => "*do_receive*",
        "siga" => "*do_siga*",
        "packed" => "*do_send_packed*",
        "packed_receive" => "*do_receive*",
        _ => "*do_copy*",
    };
    let out = std::env::temp_dir().join(format!("iqdio-callgrind-{}.out", std::process::id()));
    let mut command = Command::new("valgrind");
    command
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(format!("--toggle-collect={function}"))
        .arg(exe)
        .args([op.to_string(), size.to_string(), n.to_string()])
        .args(addresses.map(|a| a.to_string()))
        // Valgrind counts each iteration of `rep movsb` as one instruction: glibc's
        // copies over 4 KiB would count one per byte. Its vector loop counts what a
        // CPU retires, for the copies of iqdio and of the plain memcpy alike.
        .env(
            "GLIBC_TUNABLES",
            "glibc.cpu.x86_rep_movsb_threshold=2147483647",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let output = command.output().context("running valgrind")?;
    if !output.status.success() {
        bail!(
            "callgrind {op} {size} {n}: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = fs::read_to_string(&out)?;
    let _ = fs::remove_file(&out);
    text.lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no `summary:` line in callgrind's output")
}

/// Instructions of a send of `size` (`64`, `56k`) beyond its two frame copies, from
/// [`count_instructions`]' counts.
fn beyond_copy(counts: &Value, size: &str) -> Option<f64> {
    let get = |key: String| counts.get(key).and_then(Value::as_f64);
    // A send copies the frame twice: into the output buffer (prime), and from it into
    // the receiver's input buffer (the fabric).
    Some(get(format!("send_{size}"))? - 2.0 * get(format!("memcpy_{size}"))?)
}

/// A 64 B send's instructions split into the driver's side (prime, SLSB, outcome:
/// `send_64 - siga_64`) and the fabric's SIGA (`siga_64`), each with its one copy.
fn send_sides(counts: &Value) -> Option<(f64, f64)> {
    let get = |key: &str| counts.get(key).and_then(Value::as_f64);
    let fabric = get("siga_64")?;
    Some((get("send_64")? - fabric, fabric))
}

/// Median time of one iteration of a criterion benchmark, in nanoseconds.
fn median_ns(criterion: &Path, id: &str) -> Result<f64> {
    let path = criterion.join(id).join("new/estimates.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = serde_json::from_str(&text)?;
    v["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("{}: no median", path.display()))
}

/// The paired calls of one frame size (`stream/paired/SIZE` in `iqdio-extra.json`):
/// the median of their ratios (iqdio's time over the ring's), the smallest and the
/// largest, and how many calls.
struct Paired {
    median: f64,
    min: f64,
    max: f64,
    calls: f64,
}

/// What the report is made of.
struct Results {
    /// Nanoseconds per iteration, by criterion id (`cycle/iqdio/64`, ...).
    ns: BTreeMap<String, f64>,
    /// Instructions per operation (see [`count_instructions`]).
    instructions: Value,
    /// The bench's side results (`iqdio-extra.json`).
    extra: Value,
    /// TCP over iqdio and over loopback (`iqdio-tcp.json`), `null` if not measured.
    tcp: Value,
}

/// Every criterion id the report reads: a run must have measured each of them.
fn criterion_ids() -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for size in SIZES {
        for (t, _) in TRANSPORTS {
            ids.push(format!("cycle/{t}/{size}"));
        }
        // The zero-copy cycle with the smallest rings (`details.smallest_rings`).
        ids.push(format!("cycle/iqdio_zc_1/{size}"));
    }
    for size in [64, 1500] {
        ids.push(format!("scaling/1pair/{size}"));
        ids.push(format!("scaling/2pairs/{size}"));
        // Packed streaming (`details.stream_packed`).
        ids.push(format!("stream/iqdio_packed/{size}"));
        // The spsc ring with the protocol's per-frame fence (`details.stream_fenced`).
        ids.push(format!("stream/spsc_fenced/{size}"));
    }
    // The paired streams (`ratios.stream_spsc_64`, `details.one_copy_ring`).
    ids.push("stream/paired/64".to_string());
    ids.push(format!("stream/paired/{K56}"));
    for size in ONE_COPY.0 {
        // One copy into the same ring, one thread and two (`details.one_copy_ring`).
        ids.push(format!("cycle/memcpy_ring/{size}"));
        ids.push(format!("stream/spsc_copy/{size}"));
    }
    ids.extend(["lookup/send_64/16", "lookup/send_64/4096"].map(String::from));
    ids.extend(["receiver/polling/64", "receiver/sleeping/64"].map(String::from));
    for size in COPY_SIZES {
        for (c, _) in COPIES {
            ids.push(format!("copy/{c}/{size}"));
        }
        for (t, _) in STREAMS {
            ids.push(format!("stream/{t}/{size}"));
        }
    }
    ids
}

impl Results {
    fn read(criterion: &Path, instructions: Value) -> Result<Self> {
        let mut ns = BTreeMap::new();
        for id in criterion_ids() {
            let t = median_ns(criterion, &id)?;
            ns.insert(id, t);
        }
        let extra = fs::read_to_string(criterion.join("iqdio-extra.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(json!({}));
        let tcp = fs::read_to_string(criterion.join("iqdio-tcp.json"))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        Ok(Self {
            ns,
            instructions,
            extra,
            tcp,
        })
    }

    fn t(&self, id: &str) -> f64 {
        *self
            .ns
            .get(id)
            .unwrap_or_else(|| panic!("{id}: not in criterion_ids(), so never read"))
    }

    /// Bytes per second of transport `t` at `size`.
    fn throughput(&self, t: &str, size: u64) -> f64 {
        size as f64 / (self.t(&format!("cycle/{t}/{size}")) * 1e-9)
    }

    /// Throughput of copy primitive `c` over memcpy's, at `size` (1 = memcpy's speed).
    fn copy_vs_memcpy(&self, c: &str, size: u64) -> f64 {
        self.t(&format!("copy/memcpy/{size}")) / self.t(&format!("copy/{c}/{size}"))
    }

    fn instr(&self, key: &str) -> Option<f64> {
        self.instructions.get(key).and_then(Value::as_f64)
    }

    fn ratios(&self) -> Value {
        json!({
            // Throughput is bytes over time: the ratio of throughputs is the inverse
            // ratio of times.
            // Issue 12: the cycles are the zero-copy ones (the copying calls' ratios are
            // under "details").
            "memcpy_56k": self.t(&format!("cycle/memcpy/{K56}")) / self.t(&format!("cycle/iqdio_zc/{K56}")),
            "stream_56k": self.t(&format!("cycle/memcpy/{K56}")) / self.t(&format!("stream/iqdio/{K56}")),
            "stream_spsc_64": self.stream_spsc_64(),
            "spsc_64": self.t("cycle/iqdio_zc/64") / self.t("cycle/spsc/64"),
            "udp_1500": self.t("cycle/udp/1500") / self.t("cycle/iqdio_zc/1500"),
            // TCP over the smoltcp device between two threads / Linux TCP loopback,
            // bytes per second (`benches/tcp.rs`).
            "tcp_vs_loopback": self.tcp_vs_loopback(),
            "scaling_2pairs": self.scaling(1500),
            "lookup_4096_vs_16": self.t("lookup/send_64/4096") / self.t("lookup/send_64/16"),
        })
    }

    /// `stream_spsc_64`: the median of the paired calls' ratios (`stream/paired/64`:
    /// iqdio's 64 B stream and the spsc ring's, back to back in each call, so both in
    /// the same two-core mode of a machine whose two-core timings are bimodal); the
    /// ratio of the two benchmarks' medians when the run has no paired calls.
    fn stream_spsc_64(&self) -> f64 {
        self.paired(64)
            .map_or_else(|| self.stream_spsc_64_medians(), |p| p.median)
    }

    /// iqdio's 64 B stream over the spsc ring's, from the two benchmarks' medians.
    fn stream_spsc_64_medians(&self) -> f64 {
        self.t("stream/iqdio/64") / self.t("stream/spsc/64")
    }

    /// The paired calls at `size`, if the run made any.
    fn paired(&self, size: u64) -> Option<Paired> {
        let get = |suffix: &str| self.extra[format!("stream_paired_{size}{suffix}")].as_f64();
        Some(Paired {
            median: get("")?,
            min: get("_min")?,
            max: get("_max")?,
            calls: get("_calls")?,
        })
    }

    fn tcp_vs_loopback(&self) -> Option<f64> {
        Some(self.tcp["iqdio_bytes_per_s"].as_f64()? / self.tcp["loopback_bytes_per_s"].as_f64()?)
    }

    /// Frames per second of two pairs over one pair (each 2-pair iteration moves 2).
    fn scaling(&self, size: u64) -> f64 {
        2.0 * self.t(&format!("scaling/1pair/{size}")) / self.t(&format!("scaling/2pairs/{size}"))
    }

    /// Two pairs over one pair from each thread's CPU time per cycle: what two pairs
    /// would reach with two free cores (wall time cannot show it when the machine's
    /// other work takes a core).
    fn scaling_cpu(&self, size: u64) -> Option<f64> {
        let cpu = |n: &str| self.extra[format!("scaling_cpu_ns_{n}_{size}")].as_f64();
        Some(2.0 * cpu("1pair")? / cpu("2pairs")?)
    }

    fn beyond_copy(&self, size: &str) -> Option<f64> {
        beyond_copy(&self.instructions, size)
    }

    fn json(&self, machine: Value, run: &Value) -> Value {
        let ratios = self.ratios();
        let send_64_beyond = self.beyond_copy("64");
        let (paired_64, paired_56k) = (self.paired(64), self.paired(K56));
        let mut targets = serde_json::Map::new();
        for (key, cmp, bound) in TARGETS {
            let value = if key == "send_64_beyond_copy" {
                send_64_beyond
            } else {
                ratios[key].as_f64()
            };
            targets.insert(
                key.to_string(),
                json!({
                    "target": format!("{} {bound}", cmp.sign()),
                    "value": value,
                    "met": value.map(|v| cmp.met(v, bound)),
                }),
            );
        }
        let mut throughput = serde_json::Map::new();
        for (t, _) in TRANSPORTS {
            let per_size: serde_json::Map<String, Value> = SIZES
                .iter()
                .map(|&s| (s.to_string(), json!(self.throughput(t, s))))
                .collect();
            throughput.insert(t.to_string(), Value::Object(per_size));
        }
        let round = |v: Option<f64>| v.map(|x| x.round() as u64);
        json!({
            "machine": machine,
            "mode": run["mode"],
            "measured": run["measured"],
            "commit": run["commit"],
            "ratios": ratios,
            // `instructions.send_64_beyond_copy` is the key issue 12 names.
            "instructions": {
                "send_64": round(self.instr("send_64")),
                "send_56k": round(self.instr("send_56k")),
                "send_64_beyond_copy": send_64_beyond.map(|v| v.round()),
            },
            "targets": targets,
            "copy_primitive_vs_memcpy": COPIES
                .iter()
                .map(|(c, _)| {
                    let per_size: serde_json::Map<String, Value> = COPY_SIZES
                        .iter()
                        .map(|&s| (s.to_string(), json!(self.copy_vs_memcpy(c, s))))
                        .collect();
                    (c.to_string(), Value::Object(per_size))
                })
                .collect::<serde_json::Map<String, Value>>(),
            "details": {
                "copying_calls": {
                    "memcpy_56k": self.t(&format!("cycle/memcpy/{K56}")) / self.t(&format!("cycle/iqdio/{K56}")),
                    "spsc_64": self.t("cycle/iqdio/64") / self.t("cycle/spsc/64"),
                    "udp_1500": self.t("cycle/udp/1500") / self.t("cycle/iqdio/1500"),
                },
                "stream_packed": {
                    "ns_per_frame_64": self.t("stream/iqdio_packed/64"),
                    "ns_per_frame_1500": self.t("stream/iqdio_packed/1500"),
                    "stream_spsc_64": self.t("stream/iqdio_packed/64") / self.t("stream/spsc/64"),
                },
                "stream_spsc_64": {
                    "paired_median": paired_64.as_ref().map(|p| p.median),
                    "paired_min": paired_64.as_ref().map(|p| p.min),
                    "paired_max": paired_64.as_ref().map(|p| p.max),
                    "paired_calls": paired_64.as_ref().map(|p| p.calls),
                    "of_the_two_medians": self.stream_spsc_64_medians(),
                },
                "stream_fenced": {
                    "spsc_fenced_ns_64": self.t("stream/spsc_fenced/64"),
                    "spsc_fenced_ns_1500": self.t("stream/spsc_fenced/1500"),
                    "spsc_fenced_vs_spsc_64": self.t("stream/spsc_fenced/64") / self.t("stream/spsc/64"),
                    "iqdio_vs_spsc_fenced_64": self.t("stream/iqdio/64") / self.t("stream/spsc_fenced/64"),
                    "iqdio_vs_spsc_fenced_1500": self.t("stream/iqdio/1500") / self.t("stream/spsc_fenced/1500"),
                },
                "one_copy_ring": {
                    "memcpy_ring_ns_56k": self.t(&format!("cycle/memcpy_ring/{K56}")),
                    "memcpy_56k": self.t(&format!("cycle/memcpy/{K56}")) / self.t(&format!("cycle/memcpy_ring/{K56}")),
                    "iqdio_zc_vs_memcpy_ring_56k": self.t(&format!("cycle/iqdio_zc/{K56}")) / self.t(&format!("cycle/memcpy_ring/{K56}")),
                    "spsc_copy_ns_56k": self.t(&format!("stream/spsc_copy/{K56}")),
                    "stream_56k": self.t(&format!("copy/memcpy/{K56}")) / self.t(&format!("stream/spsc_copy/{K56}")),
                    "iqdio_vs_spsc_copy_56k": self.t(&format!("stream/iqdio/{K56}")) / self.t(&format!("stream/spsc_copy/{K56}")),
                    "iqdio_vs_spsc_copy_56k_paired": paired_56k.as_ref().map(|p| p.median),
                    "iqdio_vs_spsc_copy_56k_paired_min": paired_56k.as_ref().map(|p| p.min),
                    "iqdio_vs_spsc_copy_56k_paired_max": paired_56k.as_ref().map(|p| p.max),
                    "iqdio_vs_spsc_copy_16k": self.t("stream/iqdio/16384") / self.t("stream/spsc_copy/16384"),
                },
                "smallest_rings": {
                    "memcpy_56k": self.t(&format!("cycle/memcpy/{K56}")) / self.t(&format!("cycle/iqdio_zc_1/{K56}")),
                    "spsc_64": self.t("cycle/iqdio_zc_1/64") / self.t("cycle/spsc/64"),
                },
                "throughput_bytes_per_s": throughput,
                "ns_per_iteration_median": self.ns,
                "instructions_per_operation": self.instructions,
                "send_64_beyond_copy": send_64_beyond,
                "send_56k_beyond_copy": self.beyond_copy("56k"),
                "scaling_2pairs_64": self.scaling(64),
                "scaling_2pairs_if_cores_free": {
                    "1500": self.scaling_cpu(1500),
                    "64": self.scaling_cpu(64),
                },
                "frames_per_s_1500": {
                    "iqdio": 1e9 / self.t("cycle/iqdio/1500"),
                    "udp": 1e9 / self.t("cycle/udp/1500"),
                },
                "receiver_frames_per_s": {
                    "polling": 1e9 / self.t("receiver/polling/64"),
                    "sleeping": 1e9 / self.t("receiver/sleeping/64"),
                },
                "bench_extra": self.extra,
                "tcp": self.tcp,
            },
        })
    }

    fn markdown(&self, doc: &Value) -> String {
        let m = &doc["machine"];
        let f2 = |v: &Value| v.as_f64().map_or("n/a".into(), |x| format!("{x:.2}"));
        let f0 = |v: Option<f64>| v.map_or("n/a".into(), |x| format!("{x:.0}"));
        let mut s = String::new();
        s += "# iqdio benchmarks\n\n";
        s += &format!(
            "Measured by `cargo xtask bench{}` on **{}, {} cores** ({}; {}), load average {} before and {} after, commit `{}`, {}. \
             Times are criterion medians; the machine is shared and noisy, so read ratios to one significant figure.\n\n",
            if doc["mode"] == "quick" {
                " --quick"
            } else {
                ""
            },
            m["cpu"].as_str().unwrap_or("?"),
            m["cores"],
            m["os"].as_str().unwrap_or("?"),
            m["rustc"].as_str().unwrap_or("?"),
            m["load_average_before"].as_str().unwrap_or("?"),
            m["load_average_after"].as_str().unwrap_or("?"),
            doc["commit"].as_str().unwrap_or("?"),
            doc["measured"].as_str().unwrap_or("?"),
        );
        let cores = m["cores"].as_f64().unwrap_or(1.0);
        let busiest = ["load_average_before", "load_average_after"]
            .iter()
            .filter_map(|k| {
                m[*k]
                    .as_str()?
                    .split_whitespace()
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .fold(0.0, f64::max);
        if busiest > cores {
            s += &format!(
                "> **The machine was busy** (1-minute load average up to {busiest:.1} on {cores} cores, from \
                 other work): the timings, and the scaling ratio above all, are not trustworthy. The \
                 instruction counts are.\n\n"
            );
        }
        s += "## Against the targets of issues 5 and 12\n\n";
        s += "| key | what | value | target | |\n|---|---|---:|---|---|\n";
        let what = [
            (
                "memcpy_56k",
                "iqdio zero-copy cycle throughput / memcpy throughput, 56 KiB frames",
            ),
            (
                "stream_56k",
                "two-core streaming throughput / memcpy throughput, 56 KiB",
            ),
            (
                "stream_spsc_64",
                "two-core streaming time per 64 B frame / the spsc ring's",
            ),
            (
                "spsc_64",
                "iqdio zero-copy cycle time / spsc ring time per 64 B frame",
            ),
            (
                "udp_1500",
                "iqdio zero-copy frames/s / UDP loopback frames/s, 1500 B",
            ),
            (
                "scaling_2pairs",
                "two disjoint pairs on two threads / one pair (frames/s, 1500 B)",
            ),
            (
                "lookup_4096_vs_16",
                "64 B send time with 4096 / with 16 registered addresses",
            ),
            (
                "send_64_beyond_copy",
                "instructions per 64 B send beyond its two frame copies",
            ),
        ];
        for (key, text) in what {
            let t = &doc["targets"][key];
            let value = if key == "send_64_beyond_copy" {
                f0(t["value"].as_f64())
            } else {
                f2(&t["value"])
            };
            let met = match t["met"].as_bool() {
                Some(true) => "met",
                Some(false) => "**missed**",
                None => "n/a",
            };
            s += &format!(
                "| `{key}` | {text} | {value} | {} | {met} |\n",
                t["target"].as_str().unwrap_or("")
            );
        }
        s += &format!(
            "| `tcp_vs_loopback` | TCP over the smoltcp device between two threads / Linux TCP loopback, bytes/s | {} | report | |\n",
            f2(&doc["ratios"]["tcp_vs_loopback"])
        );
        s += "\n## Instructions (callgrind, deterministic)\n\n";
        s += "Per operation, `(total(N2) − total(N1)) / (N2 − N1)` with N1 = 256, N2 = 1280, counted \
              only inside the operation (`--toggle-collect`), `examples/send_cost.rs` built in release. \
              The copies are iqdio's copy primitive (`src/copy.rs`), for the send and the memcpy row alike; \
              valgrind counts each byte of its `rep movsb` (copies of 256 B and more on x86_64) as one instruction, \
              which inflates the 56 KiB rows but cancels out of \"beyond its two frame copies\".\n\n";
        s += "| operation | 64 B | 56 KiB |\n|---|---:|---:|\n";
        for (label, key) in [
            (
                "`QueueDriver::send`: prime + SIGA (lookup, copy, signal)",
                "send",
            ),
            (
                "receiver: poll indicators + take + copy out + refill",
                "receive",
            ),
            (
                "zero-copy cycle: `send_with` (frame stamped in place) + SIGA",
                "send_in_place",
            ),
            (
                "zero-copy cycle: poll + take (frame read in place) + refill",
                "receive_in_place",
            ),
            ("one copy of the frame (the copy primitive)", "memcpy"),
        ] {
            s += &format!(
                "| {label} | {} | {} |\n",
                f0(self.instr(&format!("{key}_64"))),
                f0(self.instr(&format!("{key}_56k")))
            );
        }
        s += &format!(
            "| send beyond its two frame copies | {} | {} |\n",
            f0(self.beyond_copy("64")),
            f0(self.beyond_copy("56k"))
        );
        s += &format!(
            "| the fabric's SIGA alone (`send_cost siga`) | {} | {} |\n",
            f0(self.instr("siga_64")),
            f0(self.instr("siga_56k"))
        );
        s += &format!(
            "\n16 frames of 64 B packed into one output buffer and sent with one SIGA \
             (`send_cost packed`): {} instructions a frame to send (prime + SIGA), {} to receive.\n",
            f0(self.instr("send_64_packed_16").map(|n| n / 16.0)),
            f0(self.instr("receive_64_packed_16").map(|n| n / 16.0))
        );
        s += &format!(
            "\n64 B send to one of 8 addresses with 16 registered addresses: {} instructions; with 4096: {}.\n",
            f0(self.instr("send_64_16_addresses")),
            f0(self.instr("send_64_4096_addresses"))
        );
        s += "\n## Throughput against frame size\n\n![throughput against frame size](throughput.png)\n\n";
        s += "iqdio: the whole cycle on one thread (sender's `send`: prime + SIGA, the fabric's copy \
              into the receiver's buffer; receiver's poll + take + copy out + refill). memcpy: one copy \
              of the frame. spsc: a `heapless::spsc::Queue` of lengths over 16 frame slots, copy in + \
              copy out. UDP: one datagram over 127.0.0.1 from this thread to a receiving thread. GB/s = 10⁹ bytes/s.\n\n";
        s += "| frame | iqdio (copying) | iqdio (zero-copy) | memcpy | spsc | UDP | iqdio zero-copy ns/frame |\n|---:|---:|---:|---:|---:|---:|---:|\n";
        for size in SIZES {
            s += &format!("| {} |", size_label(size));
            for (t, _) in TRANSPORTS {
                s += &format!(" {:.2} GB/s |", self.throughput(t, size) / 1e9);
            }
            s += &format!(" {:.0} |\n", self.t(&format!("cycle/iqdio_zc/{size}")));
        }
        s += &format!(
            "\nThe zero-copy cycle with the smallest rings the driver takes (2 input buffers, 1 \
             output buffer, `cycle/iqdio_zc_1`: one frame is in flight) against the default 16 and 8, \
             which rotate the copy through 1.5 MiB of buffers: {:.0} against {:.0} ns at 56 KiB \
             (memcpy ratio {:.2} against {:.2}), {:.0} against {:.0} ns at 64 B.\n",
            self.t(&format!("cycle/iqdio_zc_1/{K56}")),
            self.t(&format!("cycle/iqdio_zc/{K56}")),
            self.t(&format!("cycle/memcpy/{K56}")) / self.t(&format!("cycle/iqdio_zc_1/{K56}")),
            self.t(&format!("cycle/memcpy/{K56}")) / self.t(&format!("cycle/iqdio_zc/{K56}")),
            self.t("cycle/iqdio_zc_1/64"),
            self.t("cycle/iqdio_zc/64"),
        );
        s += "\n## Two-core streaming (issue 12)\n\n\
              A sender thread and a polling receiver thread (pinned to CPUs 0 and 1 with `taskset` \
              where it works); iqdio zero-copy (the sender stamps its frame in place, the fabric copies \
              it, the receiver reads it in place) against a `heapless::spsc` ring of 16 frame slots \
              (the producer stamps the slot, the consumer reads it in place). Time per frame.\n\n";
        s += "| frame | iqdio ns | spsc ns | iqdio GB/s | memcpy GB/s |\n|---:|---:|---:|---:|---:|\n";
        for size in COPY_SIZES {
            let t = |id: String| self.t(&id);
            s += &format!(
                "| {} | {:.0} | {:.0} | {:.2} | {:.2} |\n",
                size_label(size),
                t(format!("stream/iqdio/{size}")),
                t(format!("stream/spsc/{size}")),
                size as f64 / t(format!("stream/iqdio/{size}")),
                size as f64 / t(format!("copy/memcpy/{size}")),
            );
        }
        s += &format!(
            "\nPacked (`stream/iqdio_packed`): the sender writes 16 frames of 64 B (8 of 1500 B) \
             into one output buffer and sends them with one SIGA, as Linux's qeth packs frames \
             for one next hop (`qeth_iqd_may_bulk`): {:.0} ns a frame at 64 B ({:.2} times \
             the spsc ring's), {:.0} ns at 1500 B.\n",
            self.t("stream/iqdio_packed/64"),
            self.t("stream/iqdio_packed/64") / self.t("stream/spsc/64"),
            self.t("stream/iqdio_packed/1500"),
        );
        if let Some(p) = self.paired(64) {
            s += &format!(
                "\n`stream_spsc_64` is the median of {:.0} paired calls (`stream/paired/64`: each \
                 streams its frames through iqdio, then as many through the spsc ring, on the \
                 same two threads, so that both halves see the same two-core mode): {:.2} \
                 (from {:.2} to {:.2}). The ratio of the two benchmarks' medians, taken apart \
                 in time, is {:.2}.\n",
                p.calls,
                p.median,
                p.min,
                p.max,
                self.stream_spsc_64_medians(),
            );
        }
        s += &format!(
            "\nThe ring with the protocol's per-frame fence (`stream/spsc_fenced`): after each \
             enqueue the producer issues a SeqCst fence and reads a mark the consumer writes \
             after each frame, as the fabric fences after the summary byte's swap and reads \
             the receiver's 0x81 (`initiative::signal`). {:.0} ns a frame at 64 B ({:.2} times \
             the plain ring's), {:.0} ns at 1500 B; iqdio's one-frame stream takes {:.2} and \
             {:.2} times as long.\n",
            self.t("stream/spsc_fenced/64"),
            self.t("stream/spsc_fenced/64") / self.t("stream/spsc/64"),
            self.t("stream/spsc_fenced/1500"),
            self.t("stream/iqdio/64") / self.t("stream/spsc_fenced/64"),
            self.t("stream/iqdio/1500") / self.t("stream/spsc_fenced/1500"),
        );
        s += &format!(
            "\nOne copy into the same ring, nothing else: the frame copied (memcpy) from one \
             cache-warm source into the next of 16 slots of 64 KiB, the working set of iqdio's \
             16 input buffers, each 4 KiB piece's first and last byte read back. In one thread \
             (`cycle/memcpy_ring`) {:.0} ns at 56 KiB, {:.2} of memcpy's throughput (the \
             `memcpy_56k` ratio of a plain ring); iqdio's zero-copy cycle takes {:.2} times as \
             long. Between the two threads (`stream/spsc_copy`, the spsc ring with the copy) \
             {:.0} ns, {:.2} of memcpy's (the `stream_56k` ratio of a plain ring); iqdio's \
             stream takes {:.2} times as long at 56 KiB, {:.2} at 16 KiB.\n",
            self.t(&format!("cycle/memcpy_ring/{K56}")),
            self.t(&format!("cycle/memcpy/{K56}")) / self.t(&format!("cycle/memcpy_ring/{K56}")),
            self.t(&format!("cycle/iqdio_zc/{K56}")) / self.t(&format!("cycle/memcpy_ring/{K56}")),
            self.t(&format!("stream/spsc_copy/{K56}")),
            self.t(&format!("copy/memcpy/{K56}")) / self.t(&format!("stream/spsc_copy/{K56}")),
            self.t(&format!("stream/iqdio/{K56}")) / self.t(&format!("stream/spsc_copy/{K56}")),
            self.t("stream/iqdio/16384") / self.t("stream/spsc_copy/16384"),
        );
        if let Some(p) = self.paired(K56) {
            s += &format!(
                "Paired at 56 KiB (`stream/paired/{K56}`: each call streams its frames \
                 through iqdio, then as many through the ring with the copy, on the same two \
                 threads, so both halves see the same two-core mode), the median of {:.0} \
                 calls: iqdio {:.2} times the ring (from {:.2} to {:.2}).\n",
                p.calls, p.median, p.min, p.max,
            );
        }
        if let (Some(i), Some(l)) = (
            self.tcp["iqdio_bytes_per_s"].as_f64(),
            self.tcp["loopback_bytes_per_s"].as_f64(),
        ) {
            s += &format!(
                "\n## TCP (issue 12)\n\n\
                 One TCP connection moving {} MiB from a client thread to a server thread \
                 (`benches/tcp.rs`, best of {} runs): smoltcp on both sides over the iqdio device \
                 (two partitions on one fabric, 56 KiB segments) against Linux TCP over loopback, \
                 the same payload, every byte compared on arrival.\n\n\
                 | transport | MiB/s |\n|---|---:|\n\
                 | smoltcp over iqdio | {:.0} |\n| Linux TCP loopback | {:.0} |\n\n\
                 `ratios.tcp_vs_loopback` = {:.2}.\n",
                self.tcp["bytes"].as_f64().unwrap_or(0.0) / f64::from(1 << 20),
                self.tcp["runs"],
                i / f64::from(1 << 20),
                l / f64::from(1 << 20),
                i / l,
            );
        }
        s += "\n## The copy primitive (issue 12)\n\n\
              The fabric's copy of partition memory must be sound while the partition writes it \
              (see `src/copy.rs`). Each candidate copies a page-aligned, cache-warm frame; the table \
              gives its throughput over memcpy's (1.00 = memcpy's speed) and memcpy's time.\n\n";
        s += "| primitive |";
        for size in COPY_SIZES {
            s += &format!(" {} |", size_label(size));
        }
        s += "\n|---|";
        for _ in COPY_SIZES {
            s += "---:|";
        }
        s += "\n";
        for (c, label) in COPIES {
            s += &format!("| {label} |");
            for size in COPY_SIZES {
                s += &format!(" {:.2} |", self.copy_vs_memcpy(c, size));
            }
            s += "\n";
        }
        s += "| memcpy, ns per copy |";
        for size in COPY_SIZES {
            s += &format!(" {:.0} |", self.t(&format!("copy/memcpy/{size}")));
        }
        s += "\n";
        s += "\n## Scaling, lookup, receivers\n\n| benchmark | ns per iteration | |\n|---|---:|---|\n";
        for (id, note) in [
            ("scaling/1pair/64", "one frame"),
            ("scaling/2pairs/64", "one frame per pair, two threads"),
            ("scaling/1pair/1500", "one frame"),
            ("scaling/2pairs/1500", "one frame per pair, two threads"),
            ("lookup/send_64/16", "16 addresses registered"),
            (
                "lookup/send_64/4096",
                "4096 addresses registered (the table's capacity)",
            ),
            ("receiver/polling/64", "streaming, receiver polls"),
            (
                "receiver/sleeping/64",
                "streaming, receiver sleeps until its interrupt",
            ),
        ] {
            s += &format!("| `{id}` | {:.0} | {note} |\n", self.t(id));
        }
        for size in [64u64, 1500] {
            let e = |k: &str| {
                self.extra[format!("scaling_{k}_{size}")]
                    .as_f64()
                    .map_or("n/a".into(), |v| format!("{v:.0}"))
            };
            s += &format!(
                "\nScaling at {size} B, per thread and cycle: CPU time {} ns (one pair) and {} ns (two \
                 pairs), waiting for a CPU {} ns and {} ns. With two free cores two pairs would reach \
                 2 × {} / {} = **{}** (wall time: {:.2}).\n",
                e("cpu_ns_1pair"),
                e("cpu_ns_2pairs"),
                e("wait_ns_1pair"),
                e("wait_ns_2pairs"),
                e("cpu_ns_1pair"),
                e("cpu_ns_2pairs"),
                self.scaling_cpu(size)
                    .map_or("n/a".into(), |v| format!("{v:.2}")),
                self.scaling(size),
            );
        }
        s += &format!(
            "\nInterrupts per frame: polling receiver {}, sleeping receiver {}.\n",
            self.extra["interrupts_per_frame_polling"]
                .as_f64()
                .map_or("n/a".into(), |v| format!("{v:.4}")),
            self.extra["interrupts_per_frame_sleeping"]
                .as_f64()
                .map_or("n/a".into(), |v| format!("{v:.3}")),
        );
        s
    }

    fn summary(&self, doc: &Value) {
        eprintln!(
            "xtask: bench: machine {} ({} cores)",
            doc["machine"]["cpu"], doc["machine"]["cores"]
        );
        for (key, _, _) in TARGETS {
            let t = &doc["targets"][key];
            eprintln!(
                "xtask: bench:   {key:22} {:>10} target {:8} {}",
                t["value"]
                    .as_f64()
                    .map_or("n/a".into(), |v| format!("{v:.2}")),
                t["target"].as_str().unwrap_or(""),
                match t["met"].as_bool() {
                    Some(true) => "met",
                    Some(false) => "MISSED",
                    None => "n/a",
                }
            );
        }
        eprintln!(
            "xtask: bench:   tcp_vs_loopback        {:>10} (reported, no target)",
            doc["ratios"]["tcp_vs_loopback"]
                .as_f64()
                .map_or("n/a".into(), |v| format!("{v:.2}"))
        );
        eprintln!(
            "xtask: bench:   instructions send_64 {} send_56k {}",
            doc["instructions"]["send_64"], doc["instructions"]["send_56k"]
        );
    }
}

fn size_label(size: u64) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

/// Throughput against frame size, log-log, one line per transport.
fn plot(results: &Results, doc: &Value, path: &Path) -> Result<()> {
    use plotters::prelude::*;

    // The font is embedded (the `dejavu` crate), never looked up on the system.
    plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular())
        .map_err(|_| anyhow::anyhow!("DejaVu Sans does not parse"))?;
    let root = BitMapBackend::new(path, (1000, 620)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut series: Vec<(&str, Vec<(f64, f64)>)> = TRANSPORTS
        .iter()
        .map(|&(t, label)| {
            let points = SIZES
                .iter()
                .map(|&s| (s as f64, results.throughput(t, s) / 1e9))
                .collect();
            (label, points)
        })
        .collect();
    // The streaming curves, at their own sizes.
    series.extend(STREAMS.iter().map(|&(t, label)| {
        let points = COPY_SIZES
            .iter()
            .map(|&s| (s as f64, s as f64 / results.t(&format!("stream/{t}/{s}"))))
            .collect();
        (label, points)
    }));
    // The ring that copies each frame, as iqdio's fabric does, at the sizes it runs.
    let (sizes, label) = ONE_COPY;
    let points = sizes
        .iter()
        .map(|&s| {
            (
                s as f64,
                s as f64 / results.t(&format!("stream/spsc_copy/{s}")),
            )
        })
        .collect();
    series.push((label, points));
    let all = series.iter().flat_map(|(_, p)| p.iter().map(|&(_, y)| y));
    let (lo, hi) = all.fold((f64::MAX, f64::MIN), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let caption = format!(
        "Throughput against frame size — {}, {} cores",
        doc["machine"]["cpu"].as_str().unwrap_or("?"),
        doc["machine"]["cores"]
    );
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 24))
        .margin(16)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d(
            (48f64..80_000f64)
                .log_scale()
                .with_key_points(SIZES.map(|s| s as f64).to_vec()),
            // Two decades of room below the lowest point: the legend sits there, in
            // the lower right, under the curves rather than over them.
            ((lo / 100.0)..(hi * 2.0)).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("frame size")
        .y_desc("throughput (GB/s, 10⁹ bytes/s)")
        .x_label_formatter(&|x| size_label(x.round() as u64))
        .y_label_formatter(&|y| {
            if *y >= 1.0 {
                format!("{y:.0}")
            } else if *y >= 0.01 {
                format!("{y:.2}")
            } else {
                format!("{y:.3}")
            }
        })
        .label_style(("sans-serif", 16))
        .axis_desc_style(("sans-serif", 18))
        .draw()?;
    let colors = [
        RGBColor(31, 119, 180),
        BLACK,
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(255, 127, 14),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
    ];
    anyhow::ensure!(
        series.len() <= colors.len(),
        "the plot has a curve without a color"
    );
    for ((label, points), color) in series.into_iter().zip(colors) {
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], color.stroke_width(3))
            });
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 5, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 16))
        .draw()?;
    root.present()?;
    Ok(())
}

fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn cores() -> usize {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .map(|t| t.lines().filter(|l| l.starts_with("processor")).count())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|t| t.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn os_name() -> String {
    fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_else(|| std::env::consts::OS.to_string())
}

fn command_line(program: &str, args: &[&str]) -> String {
    command_line_in(program, args, Path::new("."))
}

fn command_line_in(program: &str, args: &[&str], dir: &Path) -> String {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Now, as `YYYY-MM-DD HH:MM UTC`.
fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every figure the report computes reads ids that `read` reads: with each id of
    /// `criterion_ids` measured (and nothing else), `json`, `markdown` and `summary`
    /// run through. (A report that named an id `read` skipped stopped a whole run
    /// after its 14 minutes of measuring.)
    #[test]
    fn the_report_reads_only_ids_a_run_measures() {
        let ns: BTreeMap<String, f64> = criterion_ids()
            .into_iter()
            .enumerate()
            .map(|(i, id)| (id, 100.0 + i as f64))
            .collect();
        let results = Results {
            ns,
            instructions: json!({}),
            extra: json!({
                "stream_paired_64": 3.5,
                "stream_paired_64_min": 3.0,
                "stream_paired_64_max": 4.0,
                "stream_paired_64_calls": 100.0,
                "stream_paired_57344": 1.1,
                "stream_paired_57344_min": 1.0,
                "stream_paired_57344_max": 1.2,
                "stream_paired_57344_calls": 50.0,
            }),
            tcp: Value::Null,
        };
        let run = json!({ "mode": "full", "commit": "test" });
        let doc = results.json(json!({ "cpu": "test", "cores": 2 }), &run);
        assert!(doc["ratios"]["memcpy_56k"].as_f64().is_some());
        for (group, key) in [
            ("stream_packed", "ns_per_frame_64"),
            ("smallest_rings", "memcpy_56k"),
            ("stream_fenced", "iqdio_vs_spsc_fenced_64"),
            ("one_copy_ring", "iqdio_vs_spsc_copy_56k"),
            ("one_copy_ring", "iqdio_vs_spsc_copy_56k_paired"),
            ("stream_spsc_64", "paired_calls"),
        ] {
            assert!(
                doc["details"][group][key].as_f64().is_some(),
                "details.{group}.{key}"
            );
        }
        let md = results.markdown(&doc);
        assert!(md.contains("iqdio_zc_1") && md.contains("iqdio_packed"));
        assert!(md.contains("spsc_fenced"));
        assert!(md.contains("memcpy_ring") && md.contains("spsc_copy"));
        // The key is the paired calls' median when the run has them.
        assert_eq!(doc["ratios"]["stream_spsc_64"].as_f64(), Some(3.5));
        assert!(md.contains("stream/paired/64") && md.contains("stream/paired/57344"));
        results.summary(&doc);
    }
}
