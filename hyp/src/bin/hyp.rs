//! The hypervisor image (`cargo xtask run`): every core boots at EL2, and core N runs
//! partition N at EL1 in its own stage-2 address space (VMID N + 1), with the fabric
//! beneath them as a static of the hypervisor. Each partition runs the partition
//! program (`iqdio-guest`, embedded at build time) and reaches the fabric only through
//! HVC; its interrupt is a virtual IRQ.
//!
//! Before the partitions start, the hypervisor counts the cost of a 64-byte SIGA as a
//! direct call (`siga cost: direct ...`); partition 0 counts the same through HVC.
//! The run ends with the partitions' results summed:
//! `partitions P, frames sent S, delivered D, lost L, corrupted C` (or, for
//! `IQDIO_SCENARIO=tcp`, `tcp: connections C, bytes moved B, failed F`; for
//! `IQDIO_SCENARIO=multicast`, `multicast: groups G, frames sent S, copies delivered C,
//! expected E, lost L, corrupted X`, E computed from the memberships the fabric held;
//! for `IQDIO_SCENARIO=l2`, `l2: vlans V, connections C, bytes moved B, failed F,
//! crossed vlans X`;
//! for
//! `IQDIO_SCENARIO=linux`, Linux guests on the last cores ([`iqdio_hyp::vm::linux`]) and
//! `linux: guests G, booted B, kernel K, powered off O; partitions P, frames sent S, ...`;
//! for `IQDIO_SCENARIO=linux-net`, a smoltcp partition on core 0 and Linux guests on
//! the others, all on one layer-2 LAN, a line per guest and
//! `linux-net: guests G, ping N/N, ping6 N/N, tcp bytes B, checksums equal, smoltcp
//! connections C, fabric frames F, copies per frame 1.00, bad rings R`).
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
mod image {
    use core::net::{IpAddr, Ipv4Addr};
    use core::ptr::NonNull;

    use iqdio::driver::{DriverConfig, Indicators, QueueDriver, Region};
    use iqdio_hvc::{ExitStatus, measure};
    use iqdio_hyp::board::{self, ExitCode, MAX_CORES};
    use iqdio_hyp::vm::{self, FABRIC, MFS, Outcome, StartError};

    /// The partition program this image embeds (see `iqdio_hyp::guest_image!`).
    static GUEST_IMAGE: &[u8] = iqdio_hyp::guest_image!();

    /// The scenario the partitions play (x2 at their entry; see the partition program).
    const SCENARIO: Option<&str> = option_env!("IQDIO_SCENARIO");
    use iqdio_hvc::scenario::{
        HOSTILE, L2, LINUX_NET as LINUX_NET_CODE, MULTICAST, PARTITIONS, TCP,
    };
    /// Time limit of a whole run.
    const LIMIT_NS: u64 = 400_000_000_000;
    /// Sends counted for the direct-call figure (as the partition counts through HVC).
    const COST_ROUNDS: u32 = 200;
    /// The LPAR id of the hypervisor's own measuring queue (no core has it).
    const MEASURE_LPAR: u8 = 200;

    static OUTCOMES: [spin::Mutex<Option<Result<Outcome, StartError>>>; MAX_CORES] =
        [const { spin::Mutex::new(None) }; MAX_CORES];

    iqdio_hyp::board_main!(main);

    /// The Linux scenario: Linux guests on the last cores
    /// (`vm::linux::CONFIG.guests`), the demo among the bare-metal partitions before
    /// them.
    const LINUX: bool = same(SCENARIO, "linux");
    /// The linux-net scenario: the smoltcp partition on core 0, Linux guests on all the
    /// other cores, one layer-2 LAN (`vm::netlines` reads the guests' results).
    const LINUX_NET: bool = same(SCENARIO, "linux-net");

    /// `s == Some(want)`, in a constant.
    const fn same(s: Option<&str>, want: &str) -> bool {
        let Some(s) = s else { return false };
        let (a, b) = (s.as_bytes(), want.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }

    static LINUX_REPORTS: [spin::Mutex<Option<vm::linux::Report>>; MAX_CORES] =
        [const { spin::Mutex::new(None) }; MAX_CORES];

    /// Linux guests in this run (0 outside the Linux scenario).
    fn linux_guests() -> usize {
        if LINUX || LINUX_NET {
            // More guests than cores: main refuses the run before any job.
            board::cores().saturating_sub(board::cores().saturating_sub(vm::linux::CONFIG.guests))
        } else {
            0
        }
    }

    fn scenario() -> Option<u64> {
        match SCENARIO {
            None | Some("") | Some("partitions") => Some(PARTITIONS),
            Some("linux") => Some(PARTITIONS),
            Some("linux-net") => Some(LINUX_NET_CODE),
            Some("tcp") => Some(TCP),
            Some("hostile") => Some(HOSTILE),
            Some("multicast") => Some(MULTICAST),
            Some("l2") => Some(L2),
            Some(_) => None,
        }
    }

    /// The hostile scenario's tally: attempts, stopped, refused, escaped, bad rings
    /// tried, bad rings refused.
    static HOSTILE_TALLY: spin::Mutex<[u64; 6]> = spin::Mutex::new([0; 6]);

    fn job(core: usize) {
        let n = board::cores();
        let code = scenario().unwrap_or(PARTITIONS);
        if code == HOSTILE && core == n - 1 {
            return hostile_job(core);
        }
        let linux = linux_guests();
        if core >= n - linux {
            vm::netlines::reset(core);
            let report = vm::linux::run(core - (n - linux));
            *LINUX_REPORTS[core].lock() = Some(report);
            return;
        }
        // In the hostile scenario the others play the demo among themselves; in the
        // Linux one the bare-metal partitions before the guests; in linux-net the
        // smoltcp partition serves the guests, all counted.
        let partitions = if code == HOSTILE {
            n - 1
        } else if LINUX_NET {
            n
        } else {
            n - linux
        };
        let code = if code == HOSTILE { PARTITIONS } else { code };
        let args = [core as u64, partitions as u64, code, 0];
        let result = vm::run_partition(GUEST_IMAGE, args);
        *OUTCOMES[core].lock() = Some(result);
    }

    fn read_phys(addr: u64) -> u64 {
        // SAFETY: both targets are mapped normal memory in the hypervisor's own map
        // (partition 0's window, the hypervisor's image); a read has no effect.
        unsafe { core::ptr::with_exposed_provenance::<u64>(addr as usize).read_volatile() }
    }

    /// The hostile partition's core: run 0 (the refusals), then one run per stop
    /// attempt; a store that got through shows as a changed target word.
    fn hostile_job(core: usize) {
        use iqdio_hvc::hostile::{HYPERVISOR_TARGET, OTHER_WINDOW_TARGET, STOP_ATTEMPTS};
        // The refusals run between the others' first barrier (all attached) and their
        // second: an address taken before its owner registered, or after it left,
        // would not be an attack on it. The hypervisor passes their barriers as a
        // member of its own.
        vm::barrier::arrive(vm::barrier::HYPERVISOR);
        let before = [read_phys(OTHER_WINDOW_TARGET), read_phys(HYPERVISOR_TARGET)];
        let n = board::cores() as u64;
        let mut tally = [0u64; 6];
        // The refusal run drives a virtio-net device with bad rings too (results 3 and
        // 4: the cases it tried, those it saw refused). A refusal it saw must be one the
        // device counted: any difference is an escape.
        // A device that could not be attached shows as none below.
        let _ = vm::vnetdev::attach(core);
        let outcome = vm::run_partition(GUEST_IMAGE, [core as u64, n, HOSTILE, 0]);
        let device = vm::vnetdev::detach(core);
        match outcome {
            Ok(Outcome::Exited { results, .. }) => {
                tally[0] += results[0];
                tally[2] += results[1];
                tally[3] += results[2];
                tally[4] = results[3];
                tally[5] = results[4];
            }
            other => {
                defmt::error!(
                    "hostile: the refusal run ended {}",
                    defmt::Debug2Format(&other)
                );
                tally[3] += 1;
            }
        }
        match device {
            Some(d) => {
                let counted = d.violations.total();
                defmt::println!(
                    "hostile: virtio-net accesses {}, frames looped back {}, dropped {}, bad rings counted {}",
                    d.accesses,
                    d.looped,
                    d.rx_dropped + d.tx_dropped,
                    counted
                );
                tally[3] += counted.abs_diff(tally[5]);
            }
            None => {
                defmt::error!("hostile: no virtio-net device for the refusal run");
                tally[3] += 1;
            }
        }
        // The others' second and third barriers (after all-to-all, after ping-pong).
        vm::barrier::arrive(vm::barrier::HYPERVISOR);
        vm::barrier::arrive(vm::barrier::HYPERVISOR);
        for k in 1..=STOP_ATTEMPTS {
            tally[0] += 1;
            match vm::run_partition(GUEST_IMAGE, [core as u64, n, HOSTILE, k]) {
                Ok(Outcome::Stopped) => tally[1] += 1,
                // An undefined instruction is the partition's own exception (EL1): its
                // handler ends it with a panic exit.
                Ok(Outcome::Exited { status, .. })
                    if ExitStatus::from_raw(status) == Some(ExitStatus::Panic) =>
                {
                    tally[1] += 1
                }
                other => {
                    defmt::error!(
                        "hostile: attempt {} ended {}",
                        k,
                        defmt::Debug2Format(&other)
                    );
                    tally[3] += 1;
                }
            }
        }
        let after = [read_phys(OTHER_WINDOW_TARGET), read_phys(HYPERVISOR_TARGET)];
        tally[3] += before.iter().zip(after).filter(|(b, a)| **b != *a).count() as u64;
        *HOSTILE_TALLY.lock() = tally;
    }

    /// The cost of a 64-byte SIGA as a direct call into the fabric, counted as the
    /// partition counts it through HVC (`iqdio_hvc::measure`), on a queue set of the
    /// hypervisor's own in core 0's window before partition 0 runs.
    fn direct_siga_cost() {
        let (base, len) = board::partition_window(0);
        let Some(host) = NonNull::new(base) else {
            return;
        };
        // SAFETY: core 0's window: mapped normal memory that nothing uses until
        // partition 0 starts (after this measurement has removed its partition).
        let region = unsafe { Region::new(host, vm::GUEST_BASE, len) };
        let Ok(mut region) = region else { return };
        // The hypervisor's own fabric calls run with IRQs masked (the execution
        // contract); a partition's SIGA arrives masked by its trap.
        let measured = vm::masked(|| {
            vm::add_partition(MEASURE_LPAR, region.window()).ok()?;
            let ip = IpAddr::V4(Ipv4Addr::new(10, 0, 99, 1));
            let config = DriverConfig {
                rx_buffers: 4,
                tx_buffers: 2,
                ..DriverConfig::new(0, MFS)
            };
            let result = Indicators::new(&mut region).ok().and_then(|ind| {
                let mut queue = QueueDriver::new(&mut region, &ind, config).ok()?;
                let mut params = queue.params();
                params.interrupt_cookie = vm::interrupt_cookie(MEASURE_LPAR);
                FABRIC.establish(MEASURE_LPAR, 0, &params).ok()?;
                FABRIC.register_address(MEASURE_LPAR, 0, ip).ok()?;
                let port = FABRIC.port(MEASURE_LPAR);
                measure::siga_cost(&mut queue, &port, ip, COST_ROUNDS, board::ticks).ok()
            });
            let _ = FABRIC.remove_partition(MEASURE_LPAR);
            result
        });
        match measured {
            Some(ticks) => defmt::println!(
                "siga cost: direct {} sends of {} B, {} ticks, {} ns per send",
                COST_ROUNDS,
                measure::FRAME,
                ticks,
                ticks * 1_000_000_000 / board::frequency().max(1) / u64::from(COST_ROUNDS)
            ),
            None => defmt::error!("siga cost: the direct measurement failed"),
        }
    }

    /// The multicast scenario's figures and its last line; true when every copy the
    /// memberships call for arrived intact, and the fabric's own counters agree.
    ///
    /// The copies to expect come from the memberships the fabric held for each
    /// partition when it exited (`vm::EXITS`), and the sends the scenario's rules say
    /// each partition made (it reports them too, and must have made them all): each
    /// group frame counts once per member but its sender, each broadcast once per
    /// queue set with broadcast on but its sender, each unicast frame once.
    fn multicast_summary(players: usize, results: &[[u64; 5]; MAX_CORES]) -> bool {
        use iqdio_hvc::multicast::ROUNDS_PER_PHASE;
        use iqdio_hvc::multicast::{FRAMES_PER_ROUND, GROUPS, copies_from, phases};
        let frames = vm::parse(option_env!("IQDIO_FRAMES"), 2000);
        let rounds = phases(frames) * ROUNDS_PER_PHASE;
        let mut bits = [0u32; MAX_CORES];
        let (mut fabric_copies, mut skipped, mut missed, mut recorded) = (0u64, 0u64, 0u64, 0);
        for (core, b) in bits.iter_mut().enumerate().take(players) {
            let Some(r) = *vm::EXITS[core].lock() else {
                continue;
            };
            recorded += 1;
            *b = r.memberships;
            if let Some(c) = r.counters {
                fabric_copies += c.group_copies;
                skipped += c.group_skipped;
                missed += c.group_missed;
            }
        }
        let groups = (0..GROUPS.len())
            .filter(|g| bits.iter().take(players).any(|b| b & (1 << g) != 0))
            .count();
        let mut expected = 0;
        for me in 0..players {
            for src in 0..players {
                expected += copies_from(src, me, players, rounds, &bits[..players]);
            }
        }
        let (mut sent, mut delivered, mut corrupted, mut duplicated, mut by_rules) =
            (0, 0, 0, 0, 0);
        for r in results.iter().take(players) {
            sent += r[0];
            delivered += r[1];
            corrupted += r[2];
            duplicated += r[3];
            by_rules += r[4];
        }
        let unicast = u64::from(rounds) * players as u64;
        defmt::println!(
            "multicast: {} partitions recorded, {} rounds; fabric: group copies {}, members skipped {}, copies missed {}; unicast frames {}; copies the partitions expected by the rules {}, duplicated {}",
            recorded,
            rounds,
            fabric_copies,
            skipped,
            missed,
            unicast,
            by_rules,
            duplicated
        );
        let lost = expected.saturating_sub(delivered);
        defmt::println!(
            "multicast: groups {}, frames sent {}, copies delivered {}, expected {}, lost {}, corrupted {}",
            groups,
            sent,
            delivered,
            expected,
            lost,
            corrupted
        );
        recorded == players
            && sent == u64::from(rounds * FRAMES_PER_ROUND) * players as u64
            && expected > 0
            && delivered == expected
            && by_rules == expected
            && fabric_copies + unicast == expected
            && skipped == 0
            && missed == 0
            && corrupted == 0
            && duplicated == 0
    }

    /// The Linux scenario's figures and its last line; true when every guest booted and
    /// powered off.
    fn linux_summary(players: usize, [sent, delivered, lost, corrupted]: [u64; 4]) -> bool {
        let n = board::cores();
        let guests = linux_guests();
        let (mut booted, mut off) = (0, 0);
        let mut version = heapless::String::<64>::new();
        for (core, slot) in LINUX_REPORTS.iter().enumerate().take(n).skip(n - guests) {
            let Some(r) = *slot.lock() else {
                defmt::error!("partition {}: linux guest did not run", core);
                continue;
            };
            booted += usize::from(r.booted);
            off += usize::from(r.end == vm::linux::End::PoweredOff);
            if version.is_empty() {
                let _ = version.push_str(r.version());
            }
            let t = r.traps;
            defmt::println!(
                "partition {}: linux ran {} ms, ERET to init {} ms; traps gic {}, uart {}, virtio {}, hvc {}, timer {}, other irq {}, aborts {}, other {}",
                core,
                r.ran_ns / 1_000_000,
                r.to_init_ns.map_or(0, |ns| ns / 1_000_000),
                t.gic,
                t.uart,
                t.virtio,
                t.hvc,
                t.timer,
                t.irq,
                t.aborts,
                t.other
            );
            if r.idle_ns > 0 {
                let i = r.idle_traps;
                let per_s = |c: u64| c * 1_000_000_000 / r.idle_ns;
                defmt::println!(
                    "partition {}: linux idle {} ms, traps per second: timer {}, gic {}, uart {}, hvc {}, other irq {}, other {}",
                    core,
                    r.idle_ns / 1_000_000,
                    per_s(i.timer),
                    per_s(i.gic),
                    per_s(i.uart),
                    per_s(i.hvc),
                    per_s(i.irq),
                    per_s(i.other)
                );
            }
        }
        defmt::println!(
            "linux: guests {}, booted {}, kernel {=str}, powered off {}; partitions {}, frames sent {}, delivered {}, lost {}, corrupted {}",
            guests,
            booted,
            version.as_str(),
            off,
            players,
            sent,
            delivered,
            lost,
            corrupted
        );
        guests > 0 && booted == guests && off == guests
    }

    /// `whole.hundredths` of `num / den` (0.00 when `den` is 0), for a figure printed
    /// with two decimals.
    fn hundredths(num: u64, den: u64) -> (u64, u64) {
        let x = num.saturating_mul(100).checked_div(den).unwrap_or(0);
        (x / 100, x % 100)
    }

    /// The linux-net scenario's figures: a line per guest (with its `tcp to`
    /// throughputs), then the last line. True when every guest ran its workload to its
    /// end and powered off, every ping and ping6 came back, every transfer's checksums
    /// were equal, every guest's exchange with the smoltcp partition (which reported
    /// `smoltcp`: connections, bytes, failed) checked, each frame was copied once, and
    /// no ring was bad.
    fn linux_net_summary(smoltcp: [u64; 5]) -> bool {
        let n = board::cores();
        let guests = linux_guests() as u64;
        let (mut ping, mut ping6) = ([0u64; 2], [0u64; 2]);
        let (mut ping_lines, mut ping6_lines) = (0, 0);
        let (mut tcp_bytes, mut equal, mut differ) = (0u64, 0u64, 0u64);
        let (mut smoltcp_ok, mut smoltcp_failed, mut malformed) = (0u64, 0u64, 0u64);
        let (mut finished, mut frames, mut copies, mut bad_rings) = (0u64, 0u64, 0u64, 0u64);
        let first = n - guests as usize;
        for (core, slot) in LINUX_REPORTS.iter().enumerate().take(n).skip(first) {
            let t = vm::netlines::tally(core);
            let report = *slot.lock();
            let off = report.is_some_and(|r| r.end == vm::linux::End::PoweredOff);
            let (f, c, b) = report.map_or((0, 0, 0), |r| net_figures(&r));
            frames += f;
            copies += c;
            bad_rings += b;
            for (i, sum) in [(t.ping, &mut ping), (t.ping6, &mut ping6)] {
                sum[0] += i[0];
                sum[1] += i[1];
            }
            ping_lines += t.ping_lines;
            ping6_lines += t.ping6_lines;
            tcp_bytes += t.received_bytes;
            equal += t.received_ok;
            differ += t.received_mismatch;
            smoltcp_ok += t.smoltcp_ok;
            smoltcp_failed += t.smoltcp_failed;
            malformed += t.malformed;
            finished += u64::from(t.done && off);
            defmt::println!(
                "partition {}: linux-net: ping {}/{}, ping6 {}/{}, tcp from: checksums equal {}, differ {}, {} bytes; smoltcp ok {}, failed {}; {=str}{=str}",
                core,
                t.ping[0],
                t.ping[1],
                t.ping6[0],
                t.ping6[1],
                t.received_ok,
                t.received_mismatch,
                t.received_bytes,
                t.smoltcp_ok,
                t.smoltcp_failed,
                if t.done { "done" } else { "NOT DONE" },
                if off {
                    ", powered off"
                } else {
                    ", NOT POWERED OFF"
                }
            );
            for (ip, bytes, ms) in t.sent.iter().flatten() {
                let (mib, frac) = hundredths(bytes.saturating_mul(1000) / 1024 / 1024, *ms);
                defmt::println!(
                    "partition {}: linux-net: tcp to {=str} {} bytes in {} ms, {}.{=u64:02} MiB/s",
                    core,
                    ip.as_str(),
                    bytes,
                    ms,
                    mib,
                    frac
                );
            }
        }
        let [connections, echoed, failed, ..] = smoltcp;
        let (whole, frac) = hundredths(copies, frames);
        defmt::println!(
            "linux-net: smoltcp partition: connections {}, bytes echoed {}, failed {}; guests' console lines that did not parse {}",
            connections,
            echoed,
            failed,
            malformed
        );
        defmt::println!(
            "linux-net: guests {}, ping {}/{}, ping6 {}/{}, tcp bytes {}, checksums {=str}, smoltcp connections {}, fabric frames {}, copies per frame {}.{=u64:02}, bad rings {}",
            guests,
            ping[0],
            ping[1],
            ping6[0],
            ping6[1],
            tcp_bytes,
            if differ == 0 { "equal" } else { "differ" },
            connections,
            frames,
            whole,
            frac,
            bad_rings
        );
        // Each guest pings every peer: the other guests and the smoltcp partition.
        let all_came_back = |[received, sent]: [u64; 2], lines: u64| {
            sent > 0 && received == sent && lines == guests * guests
        };
        guests > 0
            && finished == guests
            && all_came_back(ping, ping_lines)
            && all_came_back(ping6, ping6_lines)
            && differ == 0
            && equal == guests * (guests - 1)
            && smoltcp_ok == guests
            && smoltcp_failed == 0
            && connections == guests
            && failed == 0
            && frames > 0
            && copies == frames
            && bad_rings == 0
    }

    /// A Linux guest's frames through the fabric, the copies the fabric made of them,
    /// and its device's bad rings: (frames, copies, bad rings).
    fn net_figures(report: &vm::linux::Report) -> (u64, u64, u64) {
        let net = &report.net;
        (
            net.wire.rx_frames(),
            net.fabric.frames_received,
            net.bad_rings,
        )
    }

    fn main() -> ! {
        let n = board::cores();
        let Some(code) = scenario() else {
            defmt::error!(
                "unknown scenario {=str}: use partitions, tcp, multicast or hostile",
                SCENARIO.unwrap_or("")
            );
            board::exit(ExitCode::Failure)
        };
        if code == HOSTILE && n < 3 {
            defmt::error!(
                "the hostile scenario needs 3 cores or more (a demo pair and the attacker)"
            );
            board::exit(ExitCode::Failure)
        }
        if LINUX_NET && vm::linux::CONFIG.guests + 1 != n {
            defmt::error!(
                "the linux-net scenario needs a Linux guest on every core but core 0 (IQDIO_LINUX_GUESTS {} of {} cores): use `cargo xtask run --scenario linux-net`",
                vm::linux::CONFIG.guests,
                n
            );
            board::exit(ExitCode::Failure)
        }
        if LINUX && (linux_guests() == 0 || n.checked_sub(vm::linux::CONFIG.guests).is_none()) {
            defmt::error!(
                "the linux scenario needs 1 to {} Linux guests placed by `cargo xtask run --scenario linux` (IQDIO_LINUX_GUESTS)",
                n
            );
            board::exit(ExitCode::Failure)
        }
        if GUEST_IMAGE.is_empty() {
            defmt::error!(
                "no partition program embedded (IQDIO_GUEST_ELF): build with `cargo xtask run`"
            );
            board::exit(ExitCode::Failure)
        }
        defmt::info!(
            "hypervisor at EL2: {} partitions, scenario {=str}, MFS {} KiB, partition program {} bytes",
            n,
            SCENARIO.unwrap_or("partitions"),
            MFS.kib(),
            GUEST_IMAGE.len()
        );
        vm::seed_fabric();
        direct_siga_cost();
        // Every partition takes part in the demo's barriers but the hostile one.
        let members = if code == HOSTILE {
            ((1u32 << (n - 1)) - 1) | (1 << vm::barrier::HYPERVISOR)
        } else {
            (1u32 << (n - linux_guests())) - 1
        };
        vm::barrier::start(members);
        if let Err(e) = board::run_on_all_until(job, board::now_ns() + LIMIT_NS) {
            defmt::error!("partitions did not all end: {}", e);
            board::exit(ExitCode::Failure)
        }
        let mut ok = true;
        let mut totals = [0u64; 5];
        let mut results_of = [[0u64; 5]; MAX_CORES];
        let mut server = [0u64; 5];
        let players = if code == HOSTILE {
            n - 1
        } else {
            n - linux_guests()
        };
        for (core, slot) in OUTCOMES.iter().enumerate().take(players) {
            match *slot.lock() {
                Some(Ok(Outcome::Exited { status, results })) => {
                    let status = ExitStatus::from_raw(status);
                    if status != Some(ExitStatus::Pass) {
                        ok = false;
                    }
                    defmt::info!(
                        "partition {} exited: {}",
                        core,
                        defmt::Debug2Format(&status)
                    );
                    for (t, r) in totals.iter_mut().zip(results) {
                        *t += r;
                    }
                    results_of[core] = results;
                    if core == 0 {
                        server = results;
                    }
                }
                Some(Ok(Outcome::Stopped)) => {
                    ok = false;
                    defmt::info!("partition {} was stopped", core);
                }
                Some(Err(e)) => {
                    ok = false;
                    defmt::error!(
                        "partition {} did not start: {}",
                        core,
                        defmt::Debug2Format(&e)
                    );
                }
                None => {
                    ok = false;
                    defmt::error!("partition {} did not run", core);
                }
            }
        }
        if code == MULTICAST {
            ok &= multicast_summary(players, &results_of);
        } else if code == LINUX_NET_CODE {
            ok &= linux_net_summary(server);
        } else if code == L2 {
            // Every partition reports (connections, bytes, failed, crossed, 1).
            let [connections, bytes, failed, crossed, reported] = totals;
            defmt::println!(
                "l2: vlans {}, connections {}, bytes moved {}, failed {}, crossed vlans {}",
                iqdio_hvc::scenario::L2_VLANS.len(),
                connections,
                bytes,
                failed,
                crossed
            );
            ok &= failed == 0
                && crossed == 0
                && reported == players as u64
                && connections == players as u64 - 2;
        } else if code == TCP {
            let [connections, bytes, failed, ..] = server;
            defmt::println!(
                "tcp: connections {}, bytes moved {}, failed {}",
                connections,
                bytes,
                failed
            );
            ok &= failed == 0 && connections == n as u64 - 1;
        } else {
            let [sent, delivered, corrupted, duplicated, resent] = totals;
            let lost = sent.saturating_sub(delivered);
            // The stress form (`cargo xtask stress` reads it): refusals were sent again.
            defmt::println!(
                "stress: frames {}, delivered {}, resent {}, lost {}, duplicated {}, corrupted {}",
                sent,
                delivered,
                resent,
                lost,
                duplicated,
                corrupted
            );
            if code == HOSTILE {
                let [attempts, stopped, refused, escaped, rings, rings_refused] =
                    *HOSTILE_TALLY.lock();
                defmt::println!(
                    "hostile: attempts {}, stopped {}, refused {}, escaped {}; bad rings {} tried, {} refused; partitions {}, frames sent {}, delivered {}, lost {}, corrupted {}",
                    attempts,
                    stopped,
                    refused,
                    escaped,
                    rings,
                    rings_refused,
                    players,
                    sent,
                    delivered,
                    lost,
                    corrupted
                );
                ok &= escaped == 0
                    && attempts > 0
                    && stopped + refused == attempts
                    && rings > 0
                    && rings_refused == rings;
            } else if LINUX {
                ok &= linux_summary(players, [sent, delivered, lost, corrupted]);
            } else {
                defmt::println!(
                    "partitions {}, frames sent {}, delivered {}, lost {}, corrupted {}",
                    n,
                    sent,
                    delivered,
                    lost,
                    corrupted
                );
            }
            ok &= (players == 0 || sent > 0)
                && lost == 0
                && corrupted == 0
                && duplicated == 0
                && delivered == sent;
        }
        board::exit(if ok {
            ExitCode::Pass
        } else {
            ExitCode::Failure
        })
    }
}

/// On the host this image has nothing to do: it exists for `aarch64-unknown-none`.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the hypervisor image runs on aarch64-unknown-none under QEMU: `cargo xtask run`");
    std::process::exit(2);
}
