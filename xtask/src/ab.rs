//! `cargo xtask bench --against REV [--rounds N] [--seconds S] [FILTER]`: the same-time
//! A/B comparison of the transport benchmarks between a commit and the working tree.
//!
//! On a shared, noisy machine two runs taken minutes apart differ by more than most
//! changes, so a change is measured by running both builds alternately, round after
//! round, and reading the two columns side by side. This does it: it checks `REV` out
//! into a detached worktree (`target/ab/worktree`), builds its
//! `benches/transport.rs` (into `target/ab/target`, apart from the tree's own build),
//! builds the working tree's, copies both executables to `target/ab/`, and then runs
//! them in turn, `N` rounds (3 by default), each for `S` seconds of measurement a
//! benchmark (3 by default) after one of warm-up, on the benchmarks whose id matches
//! the criterion FILTER (a regular expression; all of them by default, which takes
//! long). It prints each benchmark's median per round for both, and the ratio of their
//! means (working tree / `REV`: below 1 is faster). Criterion's own files go to
//! `target/ab/criterion`, so the report of `cargo xtask bench` is not touched.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::cargo;

/// What to compare and how long.
pub struct AbArgs {
    /// The commit (any git revision) to compare the working tree with.
    pub rev: String,
    /// Rounds: each runs both builds once.
    pub rounds: u32,
    /// Criterion's measurement time a benchmark, in seconds.
    pub seconds: u32,
    /// Criterion's filter (a regular expression over benchmark ids).
    pub filter: Option<String>,
}

/// Builds both, runs them alternately, prints the table.
pub fn run(args: &AbArgs) -> Result<()> {
    let root = cargo::workspace_root();
    let ab = cargo::target_dir().join("ab");
    fs::create_dir_all(&ab)?;
    let worktree = ab.join("worktree");
    let worktree_str = path_str(&worktree)?;
    let commit = git(&root, &["rev-parse", "--short", &args.rev])?;
    eprintln!(
        "xtask: bench --against: {} ({commit}) in {}",
        args.rev,
        worktree.display()
    );
    // A worktree left by an earlier run goes first (it may be at another commit).
    if worktree.exists() {
        if git(&root, &["worktree", "remove", "--force", &worktree_str]).is_err() {
            fs::remove_dir_all(&worktree)
                .with_context(|| format!("removing {}", worktree.display()))?;
        }
        let _ = git(&root, &["worktree", "prune"]);
    }
    git(
        &root,
        &["worktree", "add", "--detach", &worktree_str, &commit],
    )?;
    let base = build(&worktree, Some(&ab.join("target")))
        .with_context(|| format!("building the benchmarks at {commit}"));
    let _ = git(&root, &["worktree", "remove", "--force", &worktree_str]);
    let base = keep(&base?, &ab.join(format!("transport-{commit}")))?;
    let head = keep(
        &build(&root, None).context("building the working tree's benchmarks")?,
        &ab.join("transport-head"),
    )?;
    let criterion = ab.join("criterion");
    let builds = [(commit.as_str(), base.as_path()), ("tree", head.as_path())];
    // Medians in ns by benchmark id, one per round, for each build.
    let mut medians: [BTreeMap<String, Vec<f64>>; 2] = Default::default();
    for round in 1..=args.rounds {
        for (i, (label, exe)) in builds.iter().enumerate() {
            eprintln!(
                "xtask: bench --against: round {round}/{}, {label}",
                args.rounds
            );
            let out = run_bench(exe, &root, &criterion, args)?;
            let found = parse_medians(&out);
            if found.is_empty() {
                bail!("{label}: no benchmark matched (filter {:?})", args.filter);
            }
            for (id, ns) in found {
                medians[i].entry(id).or_default().push(ns);
            }
        }
    }
    print!("{}", table(&commit, &medians[0], &medians[1]));
    Ok(())
}

/// `git ARGS` in `dir`; its trimmed standard output.
fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stderr(Stdio::inherit())
        .output()
        .context("running git")?;
    if !out.status.success() {
        bail!("git {} failed: {}", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn path_str(p: &Path) -> Result<String> {
    p.to_str()
        .map(str::to_string)
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// `cargo bench -p iqdio-bench --bench transport --no-run` in `dir` (into `target` if
/// given); the executable cargo names.
fn build(dir: &Path, target: Option<&Path>) -> Result<PathBuf> {
    let mut c = cargo::command(&[
        "bench",
        "-p",
        "iqdio-bench",
        "--bench",
        "transport",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ]);
    c.current_dir(dir).stderr(Stdio::inherit());
    if let Some(t) = target {
        c.env("CARGO_TARGET_DIR", t);
    }
    let out = c.output().context("running cargo bench --no-run")?;
    if !out.status.success() {
        bail!(
            "cargo bench --no-run failed in {}: {}",
            dir.display(),
            out.status
        );
    }
    cargo::executable_from_messages(&String::from_utf8_lossy(&out.stdout), "transport")
        .context("cargo named no executable for benches/transport.rs")
}

/// Copies `exe` to `to` (a later build may overwrite cargo's copy); returns `to`.
fn keep(exe: &Path, to: &Path) -> Result<PathBuf> {
    fs::copy(exe, to).with_context(|| format!("copying {} to {}", exe.display(), to.display()))?;
    Ok(to.to_path_buf())
}

/// One criterion run of `exe`; its standard output.
fn run_bench(exe: &Path, root: &Path, criterion: &Path, args: &AbArgs) -> Result<String> {
    let seconds = args.seconds.to_string();
    let mut c = Command::new(exe);
    c.args([
        "--bench",
        "--warm-up-time",
        "1",
        "--measurement-time",
        &seconds,
    ])
    .args(args.filter.as_deref())
    .current_dir(root.join("benches"))
    .env("CRITERION_HOME", criterion);
    // Criterion's progress lines go to standard error: kept, and shown on a failure.
    let out = c
        .output()
        .with_context(|| format!("running {}", exe.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        bail!("{} failed: {}\n{tail}", exe.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Each benchmark's median (the middle of criterion's `time: [low median high]`) in
/// ns, by id. Criterion prints the id before `time:` on the same line, or alone on the
/// line before when it is long.
fn parse_medians(out: &str) -> Vec<(String, f64)> {
    let mut found = Vec::new();
    let mut previous: Option<&str> = None;
    for line in out.lines() {
        if let Some(at) = line.find("time:") {
            let before = line[..at].trim();
            let id = if before.is_empty() {
                previous
            } else {
                Some(before)
            };
            let values = line[at + "time:".len()..]
                .trim()
                .trim_start_matches('[')
                .trim_end_matches(']');
            let words: Vec<&str> = values.split_whitespace().collect();
            // low unit median unit high unit
            if let (Some(id), [_, _, median, unit, _, _]) = (id, words.as_slice())
                && let Some(ns) = to_ns(median, unit)
            {
                found.push((id.to_string(), ns));
            }
            previous = None;
        } else if !line.trim().is_empty() && !line.starts_with(' ') {
            previous = line.split_whitespace().next();
        }
    }
    found
}

/// `value unit` (criterion's ps, ns, µs, ms, s) in ns.
fn to_ns(value: &str, unit: &str) -> Option<f64> {
    let v: f64 = value.parse().ok()?;
    let scale = match unit {
        "ps" => 1e-3,
        "ns" => 1.0,
        "µs" | "us" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return None,
    };
    Some(v * scale)
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The comparison: each benchmark measured by both, its medians per round, the ratio
/// of the means.
fn table(
    commit: &str,
    base: &BTreeMap<String, Vec<f64>>,
    head: &BTreeMap<String, Vec<f64>>,
) -> String {
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|ns| format!("{ns:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut s = format!(
        "| benchmark | `{commit}` (ns a round) | working tree (ns a round) | tree / `{commit}` |\n|---|---:|---:|---:|\n"
    );
    for (id, b) in base {
        let Some(h) = head.get(id) else { continue };
        s.push_str(&format!(
            "| `{id}` | {} | {} | {:.3} |\n",
            fmt(b),
            fmt(h),
            mean(h) / mean(b)
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both of criterion's layouts, its units, and the change lines that follow.
    #[test]
    fn medians_are_read_from_criterion_output() {
        let out = "\
Benchmarking cycle/iqdio/64: Warming up for 1.0000 s
cycle/iqdio/64          time:   [148.10 ns 149.51 ns 151.02 ns]
                        change: [-1.2% +0.3% +1.9%] (p = 0.71 > 0.05)
No change in performance detected.
cycle/iqdio_zc_1/57344
                        time:   [1.6495 µs 1.6626 µs 1.6754 µs]
Found 3 outliers among 100 measurements (3.00%)
copy/asm/64             time:   [2.1000 ns 2.1372 ns 2.2000 ns]
tiny/x                  time:   [400.00 ps 500.00 ps 600.00 ps]
";
        let got = parse_medians(out);
        assert_eq!(got.len(), 4, "{got:?}");
        assert_eq!(got[0], ("cycle/iqdio/64".to_string(), 149.51));
        assert_eq!(got[1].0, "cycle/iqdio_zc_1/57344");
        assert!((got[1].1 - 1662.6).abs() < 1e-6);
        assert_eq!(got[2], ("copy/asm/64".to_string(), 2.1372));
        assert!((got[3].1 - 0.5).abs() < 1e-9);
    }

    #[test]
    fn the_table_pairs_ids_and_gives_the_ratio_of_means() {
        let base = BTreeMap::from([
            ("a".to_string(), vec![100.0, 110.0]),
            ("only_base".to_string(), vec![1.0]),
        ]);
        let head = BTreeMap::from([("a".to_string(), vec![84.0, 84.0])]);
        let t = table("abc1234", &base, &head);
        assert!(
            t.contains("| `a` | 100.0, 110.0 | 84.0, 84.0 | 0.800 |"),
            "{t}"
        );
        assert!(!t.contains("only_base"), "{t}");
    }

    #[test]
    fn the_transport_executable_is_found_in_cargo_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"iqdio"},"executable":null}
{"reason":"compiler-artifact","target":{"name":"transport"},"executable":"/t/release/deps/transport-1"}
{"reason":"build-finished","success":true}"#;
        let find = |m| cargo::executable_from_messages(m, "transport");
        assert_eq!(
            find(messages),
            Some(PathBuf::from("/t/release/deps/transport-1"))
        );
        assert_eq!(find("{\"reason\":\"build-finished\"}"), None);
    }
}
