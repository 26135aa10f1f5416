//! The partitions demo and the TCP scenario, as one partition plays them.
//!
//! Partitions share no memory: a phase ends for a partition when it received every frame
//! the others send it (the traffic pattern is fixed, so each knows how many to expect),
//! and the hypervisor's barrier call keeps the phases apart.

use iqdio_hvc::ExitStatus;
use iqdio_hvc::measure;

use crate::node::{CQ, MFS, Node, PING, parse, v4};
use crate::rt;
use crate::say;

/// Data frames each partition sends in the all-to-all phase.
const FRAMES: u32 = parse(option_env!("IQDIO_FRAMES"), 2000);
/// Ping-pong round trips per pair.
const ROUNDS: u32 = 200;
/// Time limit of each phase.
const PHASE_NS: u64 = 120_000_000_000;
/// Sends counted for the cost of a 64-byte SIGA through HVC.
pub const COST_ROUNDS: u32 = 200;

/// Size of data frame `i` of `core`: mostly up to 1500 bytes, every 16th up to the MTU,
/// so both small and multi-element frames flow.
fn size(core: usize, i: u32) -> usize {
    let h = (i.wrapping_mul(2_654_435_761) ^ (core as u32).wrapping_mul(40_503)) as usize;
    if i.is_multiple_of(16) {
        16 + h % (MFS.mtu() - 16)
    } else {
        16 + h % 1500
    }
}

/// Data frames `src` sends to `me` in the all-to-all phase (frame i of `src` goes to
/// `(src + 1 + i % (n - 1)) % n`).
fn expected(src: usize, me: usize, n: usize) -> u64 {
    if src == me {
        return 0;
    }
    let k = (me + n - src - 1) % n;
    let per = u64::from(FRAMES) / (n as u64 - 1);
    per + u64::from((k as u64) < u64::from(FRAMES) % (n as u64 - 1))
}

fn attach(lpar: usize, n: usize) -> Node {
    match Node::attach(lpar, n) {
        Ok(node) => node,
        Err(e) => {
            say!("attach failed: {}", e);
            rt::exit(ExitStatus::Failure, [0; 5])
        }
    }
}

/// The cost of a 64-byte SIGA through HVC, counted as the hypervisor counts its direct
/// call (`iqdio_hvc::measure`): printed as `siga cost: hvc ...` for the README figure.
fn siga_cost(node: &mut Node) {
    match measure::siga_cost(
        &mut node.queue,
        &rt::HvcSiga,
        v4(node.core),
        COST_ROUNDS,
        rt::ticks,
    ) {
        Ok(ticks) => say!(
            "siga cost: hvc {} sends of {} B, {} ticks, {} ns per send",
            COST_ROUNDS,
            measure::FRAME,
            ticks,
            ticks * 1_000_000_000 / rt::frequency().max(1) / u64::from(COST_ROUNDS)
        ),
        Err(e) => say!("siga cost: send failed: {:?}", e),
    }
}

fn all_to_all(node: &mut Node) -> bool {
    let (core, n) = (node.core, node.partitions);
    let deadline = rt::now_ns() + PHASE_NS;
    node.queue.start_polling();
    let reregister_every = (FRAMES / 4).max(1);
    let mut ok = true;
    for i in 0..FRAMES {
        let dst = (core + 1 + i as usize % (n - 1)) % n;
        if !node.send_data(dst, size(core, i), deadline) {
            say!("a frame could not be sent");
            ok = false;
            break;
        }
        // With the completion queue the receivers are slower than the senders: input
        // is taken every eighth frame only (and whenever a send waits for completions).
        if !CQ || i % 8 == 7 {
            node.poll();
        }
        // Re-registration drops what is pending for it (0x12): not in the completion
        // queue's stress, where nothing may be sent twice.
        if !CQ && core == n - 1 && i % reregister_every == reregister_every / 2 {
            if let Err(e) = node.reregister() {
                say!("re-registration failed: {}", e);
                ok = false;
                break;
            }
            node.queue.start_polling();
        }
    }
    let all_in = |node: &Node| (0..n).all(|src| node.rx_data[src] >= expected(src, core, n));
    while (!all_in(node) || node.pending() > 0) && rt::now_ns() < deadline {
        node.poll();
        if CQ && node.pending() > 0 {
            node.wait_for_input(deadline);
        }
    }
    if node.queue.stop_polling() {
        node.poll();
    }
    ok && all_in(node)
}

fn ping_pong(node: &mut Node) -> bool {
    let (core, n) = (node.core, node.partitions);
    let deadline = rt::now_ns() + PHASE_NS;
    if core.is_multiple_of(2) && core + 1 < n {
        let peer = core + 1;
        let t0 = rt::now_ns();
        for r in 0..ROUNDS {
            if !node.send(peer, PING, r, 64, deadline) {
                say!("ping could not be sent");
                return false;
            }
            while node.pongs() <= u64::from(r) {
                if !node.wait_for_input(deadline) {
                    say!("no pong before the deadline");
                    return false;
                }
                node.poll();
            }
        }
        say!(
            "ping-pong with partition {} (both asleep in WFI between frames): {} round trips, mean {} us",
            peer,
            ROUNDS,
            (rt::now_ns() - t0) / u64::from(ROUNDS) / 1000
        );
    } else if core % 2 == 1 {
        while node.stats.pings < u64::from(ROUNDS) {
            if !node.wait_for_input(deadline) {
                say!("no ping before the deadline");
                return false;
            }
            node.poll();
        }
    }
    true
}

/// The partitions demo; ends with the exit call carrying (sent, delivered to us,
/// corrupted, duplicated, sent again after a refusal).
pub fn partitions(lpar: usize, n: usize) -> ! {
    let mut node = attach(lpar, n);
    if lpar == 0 {
        siga_cost(&mut node);
    }
    rt::barrier();
    let mut ok = all_to_all(&mut node);
    rt::barrier();
    ok &= ping_pong(&mut node);
    rt::barrier();
    let s = &node.stats;
    if CQ {
        say!(
            "completion queue: pending {} completed {} with error {} waited {} busy {} still pending {}",
            s.pending,
            s.completed,
            s.completed_with_error,
            s.waited,
            s.busy,
            node.pending()
        );
        ok &= s.pending == s.completed + s.completed_with_error && node.pending() == 0;
    }
    say!(
        "sent {} frames {} B | received {} frames {} B | refused: full {} unreachable {} other {} | re-registrations {} | virtual interrupts {}",
        s.sent,
        s.sent_bytes,
        s.received,
        s.received_bytes,
        s.refused_full,
        s.refused_unreachable,
        s.refused_other,
        s.reregistrations,
        rt::RECEIVED.load(core::sync::atomic::Ordering::Relaxed)
    );
    let status = if ok && s.refused_other == 0 {
        ExitStatus::Pass
    } else {
        ExitStatus::Failure
    };
    rt::exit(
        status,
        [
            s.sent,
            s.received,
            s.corrupted,
            s.duplicated,
            s.refused_full + s.refused_unreachable,
        ],
    )
}

/// The TCP scenario; the server's exit call carries (connections, bytes moved, failed).
pub fn tcp(lpar: usize, n: usize) -> ! {
    let mut node = attach(lpar, n);
    rt::barrier();
    let result = crate::tcp::partition(&mut node);
    if let Err(e) = result {
        say!("tcp: {}", e);
    }
    if lpar == 0 {
        let (connections, bytes, failed) = crate::tcp::report(n);
        let status = if result.is_ok() && failed == 0 {
            ExitStatus::Pass
        } else {
            ExitStatus::Failure
        };
        rt::exit(status, [connections, bytes, failed, 0, 0])
    }
    let status = if result.is_ok() {
        ExitStatus::Pass
    } else {
        ExitStatus::Failure
    };
    rt::exit(status, [0; 5])
}
