//! The partitions demo (`cargo xtask run`): every core is a partition with its own
//! memory window; they register IPv4 and IPv6 addresses, exchange frames all-to-all
//! (busy partitions, polling) while one partition deregisters and registers again, then
//! play ping-pong in pairs (idle partitions, asleep in WFI until their interrupt). Every
//! frame is checked end to end (sequence number and checksum). It ends with a table per
//! partition and the line
//! `partitions P, frames sent S, delivered D, lost L, corrupted C`.
//!
//! Build-time options (the xtask sets them): `IQDIO_FRAMES` (data frames each partition
//! sends, default 2000), `IQDIO_MFS` (16, 24, 40 or 64 KiB, default 64),
//! `IQDIO_SCENARIO` (`partitions`, the default, or `tcp`: smoltcp over the queues, see
//! `tcp/mod.rs`).
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
#[path = "node/mod.rs"]
mod node;

#[cfg(target_os = "none")]
#[path = "tcp/mod.rs"]
mod tcp;

#[cfg(target_os = "none")]
mod image {
    use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

    use iqdio::{CounterSnapshot, Fabric, Reason};
    use iqdio_hyp::board::{self, ExitCode, MAX_CORES};

    use super::node::{
        BoardFabric, BoardPlatform, CONFIG, CORRUPTED, DUPLICATED, MFS, Node, PING, RECEIVED, SENT,
        parse,
    };

    static FABRIC: BoardFabric = Fabric::new(BoardPlatform, CONFIG);
    static NODES: [spin::Mutex<Option<Node>>; MAX_CORES] =
        [const { spin::Mutex::new(None) }; MAX_CORES];

    /// Data frames each partition sends in the all-to-all phase.
    const FRAMES: u32 = parse(option_env!("IQDIO_FRAMES"), 2000);
    /// Ping-pong round trips per pair.
    const ROUNDS: u32 = 200;
    /// Time limit of each phase.
    const PHASE_NS: u64 = 120_000_000_000;

    static FAILED: AtomicBool = AtomicBool::new(false);
    static DONE: AtomicUsize = AtomicUsize::new(0);
    static RTT_NS: AtomicU64 = AtomicU64::new(0);
    static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

    iqdio_hyp::board_main!(main);

    fn fail(core: usize, what: &str) {
        defmt::error!("partition {}: {}", core, what);
        FAILED.store(true, Ordering::SeqCst);
    }

    /// Size of data frame `i` of `core`: mostly up to 1500 bytes, every 16th up to
    /// the MTU, so both small and multi-element frames flow.
    fn size(core: usize, i: u32) -> usize {
        let h = (i.wrapping_mul(2_654_435_761) ^ (core as u32).wrapping_mul(40_503)) as usize;
        if i.is_multiple_of(16) {
            16 + h % (MFS.mtu() - 16)
        } else {
            16 + h % 1500
        }
    }

    fn setup(core: usize) {
        match Node::attach(&FABRIC, core) {
            Ok(node) => *NODES[core].lock() = Some(node),
            Err(e) => fail(core, e),
        }
    }

    fn all_to_all(core: usize) {
        let mut guard = NODES[core].lock();
        let Some(node) = guard.as_mut() else { return };
        let n = board::cores();
        let deadline = board::now_ns() + PHASE_NS;
        node.queue.start_polling();
        let reregister_every = (FRAMES / 4).max(1);
        for i in 0..FRAMES {
            let dst = (core + 1 + i as usize % (n - 1)) % n;
            if !node.send_data(&FABRIC, dst, size(core, i), deadline) {
                fail(core, "a frame could not be sent");
                break;
            }
            node.poll(&FABRIC);
            if core == n - 1 && i % reregister_every == reregister_every / 2 {
                if let Err(e) = node.reregister(&FABRIC) {
                    fail(core, e);
                    break;
                }
                node.queue.start_polling();
            }
        }
        DONE.fetch_add(1, Ordering::SeqCst);
        while !(DONE.load(Ordering::SeqCst) == n
            && RECEIVED.load(Ordering::SeqCst) == SENT.load(Ordering::SeqCst))
            && board::now_ns() < deadline
        {
            node.poll(&FABRIC);
        }
        if node.queue.stop_polling() {
            node.poll(&FABRIC);
        }
    }

    fn ping_pong(core: usize) {
        let mut guard = NODES[core].lock();
        let Some(node) = guard.as_mut() else { return };
        let n = board::cores();
        let deadline = board::now_ns() + PHASE_NS;
        if core.is_multiple_of(2) && core + 1 < n {
            let peer = core + 1;
            for r in 0..ROUNDS {
                let t0 = board::now_ns();
                if !node.send(&FABRIC, peer, PING, r, 64, deadline) {
                    return fail(core, "ping could not be sent");
                }
                while node.pongs() <= u64::from(r) {
                    if !node.wait_for_input(deadline) {
                        return fail(core, "no pong before the deadline");
                    }
                    node.poll(&FABRIC);
                }
                RTT_NS.fetch_add(board::now_ns() - t0, Ordering::Relaxed);
                ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
            }
        } else if core % 2 == 1 {
            while node.stats.pings < u64::from(ROUNDS) {
                if !node.wait_for_input(deadline) {
                    return fail(core, "no ping before the deadline");
                }
                node.poll(&FABRIC);
            }
        }
    }

    /// Interrupts raised, suppressed, and frames received, over all partitions.
    fn interrupt_totals() -> (u64, u64, u64) {
        let mut t = (0, 0, 0);
        for slot in NODES.iter().take(board::cores()) {
            if let Some(node) = slot.lock().as_ref() {
                let c = node.counters(&FABRIC);
                t.0 += c.interrupts_raised;
                t.1 += c.interrupts_suppressed;
                t.2 += c.frames_received;
            }
        }
        t
    }

    fn phase(name: &str, job: fn(usize)) {
        let t0 = board::now_ns();
        if let Err(e) = board::run_on_all_until(job, board::now_ns() + PHASE_NS + 10_000_000_000) {
            defmt::error!("{}: {}", name, e);
            FAILED.store(true, Ordering::SeqCst);
        }
        defmt::info!("{} done in {} ms", name, (board::now_ns() - t0) / 1_000_000);
    }

    fn per_1000(part: u64, whole: u64) -> u64 {
        (part * 1000).checked_div(whole).unwrap_or(0)
    }

    fn report_partition(core: usize, node: &Node, c: &CounterSnapshot) {
        let s = &node.stats;
        defmt::println!(
            "partition {} | sent {} frames {} B | received {} frames {} B | refused: full {} unreachable {} other {} | fabric errors: full {} unreachable {} malformed {} too-large {} | interrupts raised {} suppressed {} | re-registrations {}",
            core,
            s.sent,
            s.sent_bytes,
            s.received,
            s.received_bytes,
            s.refused_full,
            s.refused_unreachable,
            s.refused_other,
            c.errors_for(Reason::TargetFull),
            c.errors_for(Reason::Unreachable),
            c.malformed(),
            c.errors_for(Reason::TooLarge),
            c.interrupts_raised,
            c.interrupts_suppressed,
            s.reregistrations
        );
    }

    fn tcp_job(core: usize) {
        let mut guard = NODES[core].lock();
        let Some(node) = guard.as_mut() else { return };
        if let Err(e) = super::tcp::partition(&FABRIC, node) {
            fail(core, e);
        }
    }

    fn tcp_scenario() -> ! {
        defmt::info!(
            "tcp scenario: partition 0 serves, {} partitions each move {} bytes (smoltcp over iqdio, MTU {} B)",
            board::cores() - 1,
            super::tcp::BYTES,
            MFS.mtu()
        );
        phase("setup", setup);
        phase("tcp", tcp_job);
        let ok = super::tcp::report() && !FAILED.load(Ordering::SeqCst);
        board::exit(if ok {
            ExitCode::Pass
        } else {
            ExitCode::Failure
        })
    }

    fn main() -> ! {
        match option_env!("IQDIO_SCENARIO") {
            None | Some("") | Some("partitions") => {}
            Some("tcp") => tcp_scenario(),
            Some(other) => {
                defmt::error!("unknown scenario {=str}: use partitions or tcp", other);
                board::exit(ExitCode::Failure)
            }
        }
        let n = board::cores();
        defmt::info!(
            "partitions demo: {} partitions, {} data frames each, MFS {} KiB (MTU {} B)",
            n,
            FRAMES,
            MFS.kib(),
            MFS.mtu()
        );
        phase("setup", setup);

        let before = interrupt_totals();
        phase("all-to-all", all_to_all);
        let streamed = interrupt_totals();
        phase("ping-pong", ping_pong);
        let after = interrupt_totals();

        let mut refused_other = 0;
        let mut resent = 0;
        for (core, slot) in NODES.iter().enumerate().take(n) {
            if let Some(node) = slot.lock().as_ref() {
                let c = node.counters(&FABRIC);
                report_partition(core, node, &c);
                refused_other += node.stats.refused_other;
                resent += node.stats.refused_full + node.stats.refused_unreachable;
            }
        }
        let frames = streamed.2 - before.2;
        defmt::println!(
            "streaming (all-to-all, receivers polling): {} frames, interrupts raised {} suppressed {}: {} raised per 1000 frames",
            frames,
            streamed.0 - before.0,
            streamed.1 - before.1,
            per_1000(streamed.0 - before.0, frames)
        );
        let pp_frames = after.2 - streamed.2;
        let trips = ROUND_TRIPS.load(Ordering::Relaxed);
        defmt::println!(
            "ping-pong (receivers asleep in WFI): {} round trips, mean {} us, interrupts raised {} suppressed {}: {} raised per 1000 frames",
            trips,
            RTT_NS
                .load(Ordering::Relaxed)
                .checked_div(trips)
                .unwrap_or(0)
                / 1000,
            after.0 - streamed.0,
            after.1 - streamed.1,
            per_1000(after.0 - streamed.0, pp_frames)
        );
        let sent = SENT.load(Ordering::SeqCst);
        let delivered = RECEIVED.load(Ordering::SeqCst);
        let corrupted = CORRUPTED.load(Ordering::SeqCst);
        let lost = sent.saturating_sub(delivered);
        let duplicated = DUPLICATED.load(Ordering::SeqCst);
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
        defmt::println!(
            "partitions {}, frames sent {}, delivered {}, lost {}, corrupted {}",
            n,
            sent,
            delivered,
            lost,
            corrupted
        );
        let ok = !FAILED.load(Ordering::SeqCst)
            && lost == 0
            && corrupted == 0
            && duplicated == 0
            && delivered == sent
            && refused_other == 0;
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
    eprintln!("the partitions image runs on aarch64-unknown-none under QEMU: `cargo xtask run`");
    std::process::exit(2);
}
