//! The test boots of `cargo xtask test`, and how each one is counted.
//!
//! To add a boot, append a [`TestBoot`] to [`TEST_BOOTS`]: the image (a `[[bin]]` of
//! the `iqdio-hyp` package), the cores, the build-time environment, a
//! timeout, and a check that turns the run into test results. [`check_selftest`] counts
//! each self-test case; [`check_exit_pass`] counts a boot as one test that passes on
//! exit 0. A check of your own (say, a demo's last line) is a `fn(&BootRun, u32) ->
//! Vec<TestResult>`.

use crate::{
    parse::{self, SelftestLine},
    qemu::{BootRun, Outcome},
};

/// One boot of `cargo xtask test`.
pub struct TestBoot {
    /// Shown in the summary (keep it unique).
    pub name: &'static str,
    /// The image (`--bin`).
    pub bin: &'static str,
    /// QEMU `-smp`.
    pub smp: u32,
    /// Build-time environment of the image (read with `option_env!`); the other
    /// variables of `cargo::IMAGE_ENV` are removed, so the image sees only these.
    pub env: &'static [(&'static str, &'static str)],
    /// Stop QEMU after this many seconds (a timeout counts as a failure).
    pub timeout_s: u64,
    /// Turns the run into test results.
    pub check: fn(&BootRun, u32) -> Vec<TestResult>,
}

/// The boots `cargo xtask test` runs, in order. Boots of the same image with the same
/// environment share one build.
pub const TEST_BOOTS: &[TestBoot] = &[
    TestBoot {
        name: "selftest -smp 2",
        bin: "selftest",
        smp: 2,
        env: &[],
        timeout_s: 120,
        check: check_selftest,
    },
    TestBoot {
        name: "selftest -smp 4",
        bin: "selftest",
        smp: 4,
        env: &[],
        timeout_s: 120,
        check: check_selftest,
    },
    TestBoot {
        name: "selftest -smp 8",
        bin: "selftest",
        smp: 8,
        env: &[],
        timeout_s: 180,
        check: check_selftest,
    },
    TestBoot {
        name: "partitions -smp 2",
        bin: "hyp",
        smp: 2,
        env: &[("IQDIO_FRAMES", "1000")],
        timeout_s: 300,
        check: check_partitions,
    },
    TestBoot {
        name: "partitions -smp 4",
        bin: "hyp",
        smp: 4,
        env: &[],
        timeout_s: 300,
        check: check_partitions,
    },
    TestBoot {
        name: "partitions -smp 8 mfs 16",
        bin: "hyp",
        smp: 8,
        env: &[("IQDIO_FRAMES", "500"), ("IQDIO_MFS", "16")],
        timeout_s: 300,
        check: check_partitions,
    },
    TestBoot {
        name: "hostile -smp 4",
        bin: "hyp",
        smp: 4,
        env: &[("IQDIO_SCENARIO", "hostile"), ("IQDIO_FRAMES", "500")],
        timeout_s: 300,
        check: check_hostile,
    },
    TestBoot {
        name: "multicast -smp 4",
        bin: "hyp",
        smp: 4,
        env: &[("IQDIO_SCENARIO", "multicast"), ("IQDIO_FRAMES", "450")],
        timeout_s: 300,
        check: check_multicast,
    },
    TestBoot {
        name: "tcp -smp 4",
        bin: "hyp",
        smp: 4,
        env: &[("IQDIO_SCENARIO", "tcp")],
        timeout_s: 300,
        check: check_tcp,
    },
    TestBoot {
        name: "l2 -smp 4",
        bin: "hyp",
        smp: 4,
        env: &[("IQDIO_SCENARIO", "l2")],
        timeout_s: 300,
        check: check_l2,
    },
];

/// The image's last line (emergency prints aside).
fn last_line(run: &BootRun) -> Option<&str> {
    run.lines
        .iter()
        .rev()
        .find(|l| !l.emergency)
        .map(|l| l.message.as_str())
}

/// The TCP scenario: a clean exit, and a last line
/// `tcp: connections C, bytes moved B, failed 0` with C = `-smp` − 1 clients of 1 MiB.
pub fn check_tcp(run: &BootRun, smp: u32) -> Vec<TestResult> {
    let mut results = check_exit_pass(run, smp);
    let last = last_line(run);
    let clients = u64::from(smp) - 1;
    let verdict = match last.and_then(parse::tcp_line) {
        Some((c, bytes, 0)) if c == clients && bytes == clients << 20 => {
            TestResult::pass("tcp result line")
        }
        other => TestResult::fail("tcp result line", format!("{other:?} from {last:?}")),
    };
    results.push(verdict);
    results
}

/// The layer-2 scenario: a clean exit, and a last line `l2: vlans 2, connections C,
/// bytes moved B, failed 0, crossed vlans 0` with C = `-smp` − 2 clients (the two
/// servers aside) of 1 MiB each.
pub fn check_l2(run: &BootRun, smp: u32) -> Vec<TestResult> {
    let mut results = check_exit_pass(run, smp);
    let last = last_line(run);
    let clients = u64::from(smp).saturating_sub(2);
    let verdict = match last.and_then(parse::l2_line) {
        Some(l)
            if l.vlans == 2
                && l.connections == clients
                && clients > 0
                && l.bytes == clients << 20
                && l.failed == 0
                && l.crossed == 0 =>
        {
            TestResult::pass("l2 result line")
        }
        other => TestResult::fail("l2 result line", format!("{other:?} from {last:?}")),
    };
    results.push(verdict);
    results
}

/// The multicast scenario: a clean exit, and a last line `multicast: groups G, frames
/// sent S, copies delivered C, expected C, lost 0, corrupted 0` with the scenario's 3
/// groups, every partition's frames sent (3 per round, whole phases of 3 rounds of the
/// boot's `IQDIO_FRAMES`), and, with 3 cores or more, at least one copy per frame
/// (every group then has two members or more, so every frame has a receiver besides
/// its sender).
pub fn check_multicast(run: &BootRun, smp: u32) -> Vec<TestResult> {
    let mut results = check_exit_pass(run, smp);
    let last = last_line(run);
    let verdict = match last.and_then(parse::multicast_line) {
        Some(m)
            if m.groups == 3
                && m.sent > 0
                && m.sent.is_multiple_of(9 * u64::from(smp))
                && m.delivered == m.expected
                && (smp < 3 || m.expected >= m.sent)
                && m.lost == 0
                && m.corrupted == 0 =>
        {
            TestResult::pass("multicast result line")
        }
        other => TestResult::fail("multicast result line", format!("{other:?} from {last:?}")),
    };
    results.push(verdict);
    results
}

/// The hostile scenario: a clean exit, and a last line
/// `hostile: attempts A, stopped P, refused R, escaped 0; bad rings T tried, T refused;
/// partitions P, frames sent S, delivered S, lost 0, corrupted 0` in which every attempt
/// was stopped or refused, every bad virtio ring refused, and the other `-smp` − 1
/// partitions' traffic all arrived.
pub fn check_hostile(run: &BootRun, smp: u32) -> Vec<TestResult> {
    let mut results = check_exit_pass(run, smp);
    let last = last_line(run);
    let verdict = match last.and_then(parse::hostile_line) {
        Some((h, p))
            if h.escaped == 0
                && h.attempts > 0
                && h.stopped > 0
                && h.refused > 0
                && h.stopped + h.refused == h.attempts
                && h.rings_tried > 0
                && h.rings_refused == h.rings_tried
                && p.partitions + 1 == smp
                && p.sent > 0
                && p.delivered == p.sent
                && p.lost == 0
                && p.corrupted == 0 =>
        {
            TestResult::pass("hostile result line")
        }
        other => TestResult::fail("hostile result line", format!("{other:?} from {last:?}")),
    };
    results.push(verdict);
    results
}

/// The partitions demo: a clean exit, and a last line
/// `partitions P, frames sent S, delivered S, lost 0, corrupted 0` with P = `-smp`.
pub fn check_partitions(run: &BootRun, smp: u32) -> Vec<TestResult> {
    let mut results = check_exit_pass(run, smp);
    let last = last_line(run);
    let verdict = match last.and_then(parse::partitions_line) {
        None => TestResult::fail("result line", format!("last line is {last:?}")),
        Some(r) if r.partitions != smp => TestResult::fail(
            "result line",
            format!("{} partitions, expected {smp}", r.partitions),
        ),
        Some(r) if r.sent == 0 || r.delivered != r.sent || r.lost != 0 || r.corrupted != 0 => {
            TestResult::fail("result line", format!("{r:?}"))
        }
        Some(_) => TestResult::pass("result line"),
    };
    results.push(verdict);
    results
}

/// One counted test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestResult {
    /// What was tested.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub detail: String,
}

impl TestResult {
    pub fn pass(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed: true,
            detail: String::new(),
        }
    }

    pub fn fail(name: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            passed: false,
            detail: detail.into(),
        }
    }
}

/// The boot as one test: passes on exit 0 with a cleanly decoded log.
pub fn check_exit_pass(run: &BootRun, _smp: u32) -> Vec<TestResult> {
    vec![if run.outcome != Outcome::Pass {
        TestResult::fail("boot", run.outcome.to_string())
    } else if run.malformed > 0 {
        TestResult::fail(
            "boot",
            format!("{} defmt frames did not decode", run.malformed),
        )
    } else {
        TestResult::pass("boot")
    }]
}

/// Each self-test case as one test, with the host's own checks on top: the image saw
/// the cores QEMU has, every planned case reported, `expect` lines hold, the defmt
/// stream decoded cleanly, and the exit status agrees with the cases.
pub fn check_selftest(run: &BootRun, smp: u32) -> Vec<TestResult> {
    let mut plan = None;
    let mut cases: Vec<TestResult> = Vec::new();
    let mut expectations = Vec::new();
    for line in run.lines.iter().filter(|l| !l.emergency) {
        match parse::selftest_line(&line.message) {
            Some(SelftestLine::Plan(p)) => plan = Some(p),
            Some(SelftestLine::Case(case)) => cases.push(if case.passed {
                TestResult::pass(case.name)
            } else {
                TestResult::fail(case.name, case.reason.unwrap_or_default())
            }),
            Some(SelftestLine::Expect(e)) => expectations.push(e),
            Some(SelftestLine::Done(..)) | None => {}
        }
    }
    for e in expectations {
        let seen = run
            .lines
            .iter()
            .filter(|l| {
                l.message
                    .strip_prefix(&e.prefix)
                    .is_some_and(|r| r.starts_with(' '))
            })
            .count();
        if seen != e.count {
            let detail = format!(
                "host decoded {seen} `{}` lines, expected {}",
                e.prefix, e.count
            );
            match cases.iter_mut().find(|c| c.name == e.case) {
                Some(case) if case.passed => *case = TestResult::fail(&e.case, detail),
                Some(_) => {}
                None => cases.push(TestResult::fail(e.case, detail)),
            }
        }
    }
    let mut results = cases;
    let Some(plan) = plan else {
        results.push(TestResult::fail(
            "boot",
            format!("no self-test plan line; {}", run.outcome),
        ));
        return results;
    };
    if plan.cores != smp {
        results.push(TestResult::fail(
            "cores",
            format!("the image found {} cores, QEMU has -smp {smp}", plan.cores),
        ));
    }
    if results.len() < plan.cases {
        let missing = plan.cases - results.len();
        for i in 0..missing {
            results.push(TestResult::fail(
                format!("unreported case {}", i + 1),
                format!("{missing} planned case(s) never reported; {}", run.outcome),
            ));
        }
    }
    let all_passed = results.iter().all(|r| r.passed);
    match run.outcome {
        Outcome::Pass if all_passed => {}
        Outcome::Pass => results.push(TestResult::fail("exit", "exit 0 although a case failed")),
        Outcome::Failure if !all_passed => {}
        other => results.push(TestResult::fail("exit", other.to_string())),
    }
    if run.malformed > 0 {
        results.push(TestResult::fail(
            "defmt stream",
            format!("{} frames did not decode", run.malformed),
        ));
    }
    results
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{cargo::IMAGE_ENV, decode::Line};

    fn run(outcome: Outcome, messages: &[&str]) -> BootRun {
        BootRun {
            outcome,
            lines: messages
                .iter()
                .map(|m| Line {
                    timestamp: Some("core 0 0.000001".into()),
                    level: None,
                    message: m.to_string(),
                    location: None,
                    emergency: false,
                })
                .collect(),
            malformed: 0,
            elapsed: Duration::from_millis(1),
        }
    }

    fn failed(results: &[TestResult]) -> Vec<&str> {
        results
            .iter()
            .filter(|r| !r.passed)
            .map(|r| r.name.as_str())
            .collect()
    }

    #[test]
    fn counts_each_case() {
        let r = run(
            Outcome::Failure,
            &[
                "selftest: plan cases=2 cores=2",
                "selftest: case a result=PASS time_us=1",
                "selftest: case b result=FAIL time_us=1 reason=broken",
                "selftest: done passed=1 failed=1",
            ],
        );
        let results = check_selftest(&r, 2);
        assert_eq!(results.len(), 2);
        assert_eq!(failed(&results), ["b"]);
        assert_eq!(results[1].detail, "broken");
    }

    #[test]
    fn a_fault_fails_the_boot_and_the_missing_cases() {
        let r = run(
            Outcome::Fault,
            &[
                "selftest: plan cases=3 cores=2",
                "selftest: case a result=PASS time_us=1",
            ],
        );
        let results = check_selftest(&r, 2);
        assert_eq!(results.len(), 4);
        assert_eq!(
            failed(&results),
            ["unreported case 1", "unreported case 2", "exit"]
        );
    }

    #[test]
    fn no_plan_is_a_failed_boot() {
        let results = check_selftest(&run(Outcome::Timeout, &[]), 4);
        assert_eq!(failed(&results), ["boot"]);
    }

    #[test]
    fn wrong_core_count_and_pass_with_failures_are_caught() {
        let r = run(
            Outcome::Pass,
            &[
                "selftest: plan cases=1 cores=2",
                "selftest: case a result=FAIL time_us=1 reason=x",
            ],
        );
        assert_eq!(failed(&check_selftest(&r, 4)), ["a", "cores", "exit"]);
    }

    #[test]
    fn expectations_are_checked_on_the_host() {
        let mut lines = vec![
            "selftest: plan cases=1 cores=2",
            "logstorm core=0 seq=0",
            "logstorm core=1 seq=0",
            "logstormy weather",
            "selftest: case log result=PASS time_us=1",
        ];
        lines.push("selftest: expect case=log prefix=logstorm count=2");
        assert!(failed(&check_selftest(&run(Outcome::Pass, &lines), 2)).is_empty());
        lines.push("selftest: expect case=log prefix=logstorm count=3");
        let results = check_selftest(&run(Outcome::Pass, &lines), 2);
        assert_eq!(failed(&results), ["log", "exit"]);
    }

    #[test]
    fn malformed_frames_fail_the_boot() {
        let mut r = run(
            Outcome::Pass,
            &[
                "selftest: plan cases=1 cores=2",
                "selftest: case a result=PASS time_us=1",
            ],
        );
        r.malformed = 1;
        assert_eq!(failed(&check_selftest(&r, 2)), ["defmt stream"]);
        assert_eq!(failed(&check_exit_pass(&r, 2)), ["boot"]);
    }

    #[test]
    fn boot_names_are_unique_and_images_known() {
        for (i, boot) in TEST_BOOTS.iter().enumerate() {
            assert!(
                TEST_BOOTS[..i].iter().all(|b| b.name != boot.name),
                "duplicate {}",
                boot.name
            );
            assert!((2..=8).contains(&boot.smp));
            for (key, _) in boot.env {
                assert!(IMAGE_ENV.contains(key), "{key} missing from IMAGE_ENV");
            }
        }
    }
}
