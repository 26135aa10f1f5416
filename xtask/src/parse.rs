//! Reading results out of text: cargo's test summaries and the self-test's lines.

/// Passed and failed counts from every `test result: ... N passed; M failed; ...` line
/// of a `cargo test` run (one line per test binary and doc-test run).
pub fn test_results(output: &str) -> (u64, u64, usize) {
    let mut passed = 0;
    let mut failed = 0;
    let mut lines = 0;
    for line in output.lines() {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        let count = |what: &str| {
            rest.split(';')
                .filter_map(|part| part.trim().rsplit_once(' '))
                .find(|(_, word)| *word == what)
                .and_then(|(number, _)| number.rsplit(' ').next()?.parse::<u64>().ok())
        };
        if let (Some(p), Some(f)) = (count("passed"), count("failed")) {
            passed += p;
            failed += f;
            lines += 1;
        }
    }
    (passed, failed, lines)
}

/// `selftest: plan cases=N cores=C`
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    /// Cases the image will report.
    pub cases: usize,
    /// Cores the image found.
    pub cores: u32,
}

/// `selftest: case NAME result=PASS|FAIL time_us=T [reason=...]`
#[derive(Debug, PartialEq, Eq)]
pub struct CaseResult {
    /// Case name.
    pub name: String,
    /// Whether the image reported it passed.
    pub passed: bool,
    /// Time the case took on the target.
    pub time_us: u64,
    /// Why it failed.
    pub reason: Option<String>,
}

/// `selftest: expect case=NAME prefix=P count=N`: the host must see exactly N decoded
/// lines starting with `P ` (the image cannot check what the host decoded).
#[derive(Debug, PartialEq, Eq)]
pub struct Expectation {
    /// The case this check belongs to.
    pub case: String,
    /// First word of the lines to count.
    pub prefix: String,
    /// How many there must be.
    pub count: usize,
}

/// One self-test line, parsed.
#[derive(Debug, PartialEq, Eq)]
pub enum SelftestLine {
    /// The plan.
    Plan(Plan),
    /// A case result.
    Case(CaseResult),
    /// A host-side check.
    Expect(Expectation),
    /// The summary: passed, failed.
    Done(u64, u64),
}

fn fields(text: &str) -> impl Iterator<Item = (&str, &str)> {
    text.split(' ').filter_map(|word| word.split_once('='))
}

fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    fields(text).find(|(k, _)| *k == key).map(|(_, v)| v)
}

/// Parses a decoded message of the self-test image (`None` for other lines).
pub fn selftest_line(message: &str) -> Option<SelftestLine> {
    let rest = message.strip_prefix("selftest: ")?;
    let (kind, rest) = rest.split_once(' ')?;
    match kind {
        "plan" => Some(SelftestLine::Plan(Plan {
            cases: field(rest, "cases")?.parse().ok()?,
            cores: field(rest, "cores")?.parse().ok()?,
        })),
        "case" => {
            let (name, rest) = rest.split_once(' ')?;
            // The reason is last and may contain spaces.
            let (head, reason) = match rest.split_once(" reason=") {
                Some((head, reason)) => (head, Some(reason.to_string())),
                None => (rest, None),
            };
            let passed = match field(head, "result")? {
                "PASS" => true,
                "FAIL" => false,
                _ => return None,
            };
            Some(SelftestLine::Case(CaseResult {
                name: name.to_string(),
                passed,
                time_us: field(head, "time_us")?.parse().ok()?,
                reason,
            }))
        }
        "expect" => Some(SelftestLine::Expect(Expectation {
            case: field(rest, "case")?.to_string(),
            prefix: field(rest, "prefix")?.to_string(),
            count: field(rest, "count")?.parse().ok()?,
        })),
        "done" => Some(SelftestLine::Done(
            field(rest, "passed")?.parse().ok()?,
            field(rest, "failed")?.parse().ok()?,
        )),
        _ => None,
    }
}

/// The partitions demo's result line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionsLine {
    /// Partitions (cores).
    pub partitions: u32,
    /// Frames counted as sent.
    pub sent: u64,
    /// Frames delivered intact.
    pub delivered: u64,
    /// Frames lost.
    pub lost: u64,
    /// Frames corrupted.
    pub corrupted: u64,
}

/// Parses the TCP scenario's `tcp: connections C, bytes moved B, failed F` into
/// (C, B, F).
pub fn tcp_line(line: &str) -> Option<(u64, u64, u64)> {
    let rest = line.trim_end().strip_prefix("tcp: connections ")?;
    let (c, rest) = rest.split_once(", bytes moved ")?;
    let (b, f) = rest.split_once(", failed ")?;
    Some((c.parse().ok()?, b.parse().ok()?, f.parse().ok()?))
}

/// The layer-2 scenario's last line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct L2Line {
    /// VLANs.
    pub vlans: u64,
    /// Connections completed.
    pub connections: u64,
    /// Bytes moved intact.
    pub bytes: u64,
    /// Connections that failed.
    pub failed: u64,
    /// Frames that reached a partition off their VLAN, and connections across VLANs.
    pub crossed: u64,
}

/// Parses `l2: vlans V, connections C, bytes moved B, failed F, crossed vlans X`
/// (exactly).
pub fn l2_line(line: &str) -> Option<L2Line> {
    let rest = line.trim_end().strip_prefix("l2: vlans ")?;
    let (v, rest) = rest.split_once(", connections ")?;
    let (c, rest) = rest.split_once(", bytes moved ")?;
    let (b, rest) = rest.split_once(", failed ")?;
    let (f, x) = rest.split_once(", crossed vlans ")?;
    Some(L2Line {
        vlans: v.parse().ok()?,
        connections: c.parse().ok()?,
        bytes: b.parse().ok()?,
        failed: f.parse().ok()?,
        crossed: x.parse().ok()?,
    })
}

/// Parses `partitions P, frames sent S, delivered D, lost L, corrupted C` (exactly).
pub fn partitions_line(line: &str) -> Option<PartitionsLine> {
    let rest = line.trim_end().strip_prefix("partitions ")?;
    let (p, rest) = rest.split_once(", frames sent ")?;
    let (s, rest) = rest.split_once(", delivered ")?;
    let (d, rest) = rest.split_once(", lost ")?;
    let (l, c) = rest.split_once(", corrupted ")?;
    Some(PartitionsLine {
        partitions: p.parse().ok()?,
        sent: s.parse().ok()?,
        delivered: d.parse().ok()?,
        lost: l.parse().ok()?,
        corrupted: c.parse().ok()?,
    })
}

/// The multicast scenario's result line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MulticastLine {
    /// Groups with members.
    pub groups: u64,
    /// Frames the partitions sent (group, broadcast and unicast).
    pub sent: u64,
    /// Copies received intact.
    pub delivered: u64,
    /// Copies the memberships call for.
    pub expected: u64,
    /// Copies lost.
    pub lost: u64,
    /// Copies corrupted.
    pub corrupted: u64,
}

/// Parses `multicast: groups G, frames sent S, copies delivered C, expected E, lost L,
/// corrupted X` (exactly).
pub fn multicast_line(line: &str) -> Option<MulticastLine> {
    let rest = line.trim_end().strip_prefix("multicast: groups ")?;
    let (g, rest) = rest.split_once(", frames sent ")?;
    let (s, rest) = rest.split_once(", copies delivered ")?;
    let (d, rest) = rest.split_once(", expected ")?;
    let (e, rest) = rest.split_once(", lost ")?;
    let (l, c) = rest.split_once(", corrupted ")?;
    Some(MulticastLine {
        groups: g.parse().ok()?,
        sent: s.parse().ok()?,
        delivered: d.parse().ok()?,
        expected: e.parse().ok()?,
        lost: l.parse().ok()?,
        corrupted: c.parse().ok()?,
    })
}

/// The hostile scenario's tally: `hostile: attempts A, stopped P, refused R, escaped E;
/// bad rings T tried, T2 refused`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostileLine {
    /// Attempts made.
    pub attempts: u64,
    /// Attempts that ended in the partition being stopped.
    pub stopped: u64,
    /// Attempts refused with a code.
    pub refused: u64,
    /// Attempts, bad rings and canaries that got through.
    pub escaped: u64,
    /// Bad virtio rings presented to the partition's device.
    pub rings_tried: u64,
    /// Bad rings the device refused (DEVICE_NEEDS_RESET or a refused register write).
    pub rings_refused: u64,
}

/// Parses `hostile: attempts A, stopped P, refused R, escaped E; bad rings T tried, T2
/// refused; ` followed by a partitions line (exactly).
pub fn hostile_line(line: &str) -> Option<(HostileLine, PartitionsLine)> {
    let rest = line.trim_end().strip_prefix("hostile: attempts ")?;
    let (a, rest) = rest.split_once(", stopped ")?;
    let (s, rest) = rest.split_once(", refused ")?;
    let (r, rest) = rest.split_once(", escaped ")?;
    let (e, rest) = rest.split_once("; bad rings ")?;
    let (rt, rest) = rest.split_once(" tried, ")?;
    let (rr, rest) = rest.split_once(" refused; ")?;
    let tally = HostileLine {
        attempts: a.parse().ok()?,
        stopped: s.parse().ok()?,
        refused: r.parse().ok()?,
        escaped: e.parse().ok()?,
        rings_tried: rt.parse().ok()?,
        rings_refused: rr.parse().ok()?,
    };
    Some((tally, partitions_line(rest)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_multicast_line() {
        let m = multicast_line(
            "multicast: groups 3, frames sent 360, copies delivered 630, expected 630, lost 0, corrupted 0",
        )
        .unwrap();
        assert_eq!(
            m,
            MulticastLine {
                groups: 3,
                sent: 360,
                delivered: 630,
                expected: 630,
                lost: 0,
                corrupted: 0
            }
        );
        assert_eq!(
            multicast_line("multicast: groups 3, frames sent 360, copies delivered 630"),
            None
        );
        assert_eq!(
            multicast_line("multicast: 4 partitions recorded, 30 rounds; fabric: group copies 510"),
            None
        );
    }

    #[test]
    fn reads_the_hostile_line() {
        let (h, p) = hostile_line(
            "hostile: attempts 26, stopped 9, refused 17, escaped 0; bad rings 31 tried, 30 refused; partitions 3, frames sent 6400, delivered 6400, lost 0, corrupted 0",
        )
        .unwrap();
        assert_eq!(
            h,
            HostileLine {
                attempts: 26,
                stopped: 9,
                refused: 17,
                escaped: 0,
                rings_tried: 31,
                rings_refused: 30,
            }
        );
        assert_eq!((p.partitions, p.sent, p.delivered), (3, 6400, 6400));
        assert_eq!(
            hostile_line("hostile: attempts 1, stopped 1, refused 0, escaped 0"),
            None
        );
        // The line before the bad rings joined: no longer the scenario's.
        assert_eq!(
            hostile_line(
                "hostile: attempts 26, stopped 9, refused 17, escaped 0; partitions 3, frames sent 6400, delivered 6400, lost 0, corrupted 0"
            ),
            None
        );
    }

    #[test]
    fn sums_every_test_result_line() {
        let output = "\
running 3 tests
test a ... ok
test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

     Running tests/fabric.rs
test result: FAILED. 10 passed; 2 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.20s
   Doc-tests iqdio
test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

all doctests ran in 1.18s; merged doctests compilation took 1.16s
test result: garbage
some line mentioning 5 passed; 1 failed
";
        // The doc-tests (the crate docs' embedding example among them) count too.
        assert_eq!(test_results(output), (15, 2, 3));
    }

    #[test]
    fn no_result_lines_means_nothing_ran() {
        assert_eq!(
            test_results("error: could not compile `iqdio`\n"),
            (0, 0, 0)
        );
    }

    #[test]
    fn parses_case_lines() {
        assert_eq!(
            selftest_line("selftest: case sgi_wakeup result=PASS time_us=10432"),
            Some(SelftestLine::Case(CaseResult {
                name: "sgi_wakeup".into(),
                passed: true,
                time_us: 10432,
                reason: None
            }))
        );
        assert_eq!(
            selftest_line(
                "selftest: case timer result=FAIL time_us=52 reason=delay_ns returned early"
            ),
            Some(SelftestLine::Case(CaseResult {
                name: "timer".into(),
                passed: false,
                time_us: 52,
                reason: Some("delay_ns returned early".into())
            }))
        );
        assert_eq!(
            selftest_line("selftest: case timer result=MAYBE time_us=1"),
            None
        );
        assert_eq!(selftest_line("selftest: case timer result=PASS"), None);
        assert_eq!(selftest_line("cores_up: core 1 reports id 1"), None);
    }

    #[test]
    fn parses_plan_expect_and_done() {
        assert_eq!(
            selftest_line("selftest: plan cases=8 cores=4"),
            Some(SelftestLine::Plan(Plan { cases: 8, cores: 4 }))
        );
        assert_eq!(
            selftest_line("selftest: expect case=log_all_cores prefix=logstorm count=100"),
            Some(SelftestLine::Expect(Expectation {
                case: "log_all_cores".into(),
                prefix: "logstorm".into(),
                count: 100
            }))
        );
        assert_eq!(
            selftest_line("selftest: done passed=7 failed=1"),
            Some(SelftestLine::Done(7, 1))
        );
    }

    #[test]
    fn partitions_result_line() {
        let line = "partitions 4, frames sent 8800, delivered 8800, lost 0, corrupted 0";
        assert_eq!(
            partitions_line(line),
            Some(PartitionsLine {
                partitions: 4,
                sent: 8800,
                delivered: 8800,
                lost: 0,
                corrupted: 0
            })
        );
        assert_eq!(
            partitions_line("partitions 4, frames sent 1, delivered 1, lost 0"),
            None
        );
        assert_eq!(
            partitions_line("xpartitions 4, frames sent 1, delivered 1, lost 0, corrupted 0"),
            None
        );
        assert_eq!(
            partitions_line("partitions 4, frames sent x, delivered 1, lost 0, corrupted 0"),
            None
        );
    }

    #[test]
    fn tcp_result_line() {
        assert_eq!(
            tcp_line("tcp: connections 3, bytes moved 3145728, failed 0"),
            Some((3, 3145728, 0))
        );
        assert_eq!(tcp_line("tcp: connections 3, bytes moved 3145728"), None);
    }

    #[test]
    fn l2_result_line() {
        assert_eq!(
            l2_line("l2: vlans 2, connections 2, bytes moved 2097152, failed 0, crossed vlans 0"),
            Some(L2Line {
                vlans: 2,
                connections: 2,
                bytes: 2097152,
                failed: 0,
                crossed: 0
            })
        );
        assert_eq!(
            l2_line("l2: vlans 2, connections 2, bytes moved 2097152, failed 0"),
            None
        );
    }
}
