//! Fabric cases: the transport core on real (emulated) cores, each core a partition,
//! SIGA on the sender's core, interrupts as GICv3 SGIs.

use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use iqdio_hyp::board::{self, MAX_CORES};
use iqdio::driver::SendError;
use iqdio::{Fabric, Reason, RegistrationError};

use super::harness::{self, Case, check, job_failed};

// Shared with the partitions demo; not every item is used by both images.
#[allow(dead_code)]
#[path = "../node/mod.rs"]
mod node;

use node::{
    BoardFabric, BoardPlatform, CONFIG, CORRUPTED, Node, PING, RECEIVED, SENT, masked, v4, v6,
};

/// The fabric cases, in order: the first attaches every partition, the others use them.
pub const CASES: &[Case] = &[
    Case {
        name: "fabric_attach",
        timeout_ms: 10_000,
        run: attach,
    },
    Case {
        name: "fabric_all_to_all",
        timeout_ms: 60_000,
        run: all_to_all,
    },
    Case {
        name: "fabric_interrupt_wakes_wfi",
        timeout_ms: 20_000,
        run: interrupt_wakes_wfi,
    },
    Case {
        name: "fabric_polling_suppresses",
        timeout_ms: 30_000,
        run: polling_suppresses,
    },
    Case {
        name: "fabric_reregister",
        timeout_ms: 20_000,
        run: reregister,
    },
];

static FABRIC: BoardFabric = Fabric::new(BoardPlatform, CONFIG);
static NODES: [spin::Mutex<Option<Node>>; MAX_CORES] =
    [const { spin::Mutex::new(None) }; MAX_CORES];
static SLOTS: [AtomicU64; MAX_CORES] = [const { AtomicU64::new(0) }; MAX_CORES];
static DONE: AtomicUsize = AtomicUsize::new(0);

fn with_node(core: usize, f: impl FnOnce(&mut Node)) {
    match NODES[core].lock().as_mut() {
        Some(node) => f(node),
        None => job_failed(core, "partition not attached"),
    }
}

/// Every core attaches its partition; a second establish of the same key is refused.
fn attach() -> Result<(), &'static str> {
    harness::run_on_all(|core| match Node::attach(&FABRIC, core) {
        Ok(node) => {
            let dup = masked(|| FABRIC.establish(core as u8, 0, &node.queue.params()));
            check(
                core,
                dup == Err(RegistrationError::DuplicateFound),
                "duplicate establish accepted",
            );
            *NODES[core].lock() = Some(node);
        }
        Err(e) => job_failed(core, e),
    })?;
    if masked(|| FABRIC.address_count()) != 2 * board::cores() {
        return Err("not every partition registered its two addresses");
    }
    Ok(())
}

/// Every core sends 60 frames (1 to 3 elements) to every other core while polling its
/// own input; every frame arrives once, intact, in sequence.
fn all_to_all() -> Result<(), &'static str> {
    let sent0 = SENT.load(Ordering::SeqCst);
    DONE.store(0, Ordering::SeqCst);
    harness::run_on_all(|core| {
        with_node(core, |node| {
            let n = board::cores();
            for i in 0..60 * (n - 1) {
                let dst = (core + 1 + i % (n - 1)) % n;
                let len = 16 + (i * 977) % 9000;
                if !node.send_data(&FABRIC, dst, len, harness::deadline_ns()) {
                    return job_failed(core, "send failed");
                }
                node.poll(&FABRIC);
            }
            // Keep taking frames until every core has sent all of its own and all
            // arrived (counts alone can match while a core is still sending).
            DONE.fetch_add(1, Ordering::SeqCst);
            while DONE.load(Ordering::SeqCst) != n
                || RECEIVED.load(Ordering::SeqCst) != SENT.load(Ordering::SeqCst)
            {
                if board::now_ns() > harness::deadline_ns() {
                    return job_failed(core, "frames missing at the deadline");
                }
                node.poll(&FABRIC);
            }
        })
    })?;
    let n = board::cores() as u64;
    if SENT.load(Ordering::SeqCst) - sent0 != 60 * n * (n - 1) {
        return Err("wrong number of frames sent");
    }
    if CORRUPTED.load(Ordering::SeqCst) != 0 {
        return Err("corrupted or out-of-sequence frames");
    }
    Ok(())
}

/// Core 1 sleeps in WFI; core 0's ping wakes it with an SGI, its pong wakes core 0.
fn interrupt_wakes_wfi() -> Result<(), &'static str> {
    for s in &SLOTS {
        s.store(0, Ordering::Relaxed);
    }
    harness::run_on_all(|core| {
        with_node(core, |node| {
            let before = node.counters(&FABRIC).interrupts_raised;
            let deadline = harness::deadline_ns();
            let irqs = board::interrupts_received(core);
            if core == 0 {
                for r in 0..20 {
                    if !node.send(&FABRIC, 1, PING, r, 100, deadline) {
                        return job_failed(core, "ping not sent");
                    }
                    while node.pongs() <= u64::from(r) {
                        if !node.wait_for_input(deadline) {
                            return job_failed(core, "no pong");
                        }
                        node.poll(&FABRIC);
                    }
                }
            } else if core == 1 {
                let want = node.stats.pings + 20;
                while node.stats.pings < want {
                    if !node.wait_for_input(deadline) {
                        return job_failed(core, "no ping");
                    }
                    node.poll(&FABRIC);
                }
            } else {
                return;
            }
            let raised = node.counters(&FABRIC).interrupts_raised - before;
            check(
                core,
                raised >= 1,
                "no interrupt raised for a sleeping partition",
            );
            check(
                core,
                board::interrupts_received(core) > irqs,
                "no SGI arrived",
            );
            SLOTS[core].store(raised, Ordering::Relaxed);
        })
    })?;
    defmt::info!(
        "fabric_interrupt_wakes_wfi: interrupts raised for core 0: {}, core 1: {}",
        SLOTS[0].load(Ordering::Relaxed),
        SLOTS[1].load(Ordering::Relaxed)
    );
    Ok(())
}

/// Core 1 polls (0x81 on its newest buffer, summary reset as it goes) while core 0
/// streams 400 frames to it: interrupts stay within what the decision allows.
fn polling_suppresses() -> Result<(), &'static str> {
    harness::run_on_all(|core| {
        with_node(core, |node| {
            let deadline = harness::deadline_ns();
            let t0 = board::now_ns();
            if core == 1 {
                node.queue.start_polling();
                let before = node.counters(&FABRIC);
                let want = node.stats.received + 400;
                while node.stats.received < want {
                    if board::now_ns() > deadline {
                        return job_failed(core, "frames missing");
                    }
                    node.poll(&FABRIC);
                }
                if node.queue.stop_polling() {
                    node.poll(&FABRIC);
                }
                let c = node.counters(&FABRIC);
                let raised = c.interrupts_raised - before.interrupts_raised;
                let elapsed = board::now_ns() - t0;
                // At most: one fallback for a summary left pending by the case before,
                // one idle -> pending before the first acknowledged (0x81) buffer
                // exists, and one fallback per delay after that. The delays are not
                // aligned with t0 (one may have been armed by the case before), so
                // `elapsed` holds up to floor(elapsed / delay) + 1 of their expiries.
                let bound = 3 + elapsed / CONFIG.interrupt_delay_ns;
                defmt::info!(
                    "fabric_polling_suppresses: 400 frames in {} us, {} interrupts raised, {} suppressed (bound {})",
                    elapsed / 1000,
                    raised,
                    c.interrupts_suppressed - before.interrupts_suppressed,
                    bound
                );
                check(
                    core,
                    raised <= bound,
                    "a polling receiver was interrupted more than the decision allows",
                );
            } else if core == 0 {
                for _ in 0..400 {
                    if !node.send_data(&FABRIC, 1, 200, deadline) {
                        return job_failed(core, "send failed");
                    }
                    node.poll(&FABRIC);
                }
            }
        })
    })
}

/// The last core deregisters: core 0 sees "unreachable" on both addresses; after it
/// registers again, frames flow and nothing was lost.
fn reregister() -> Result<(), &'static str> {
    let n = board::cores();
    let last = n - 1;
    let port = node::port(&FABRIC, 0);
    let mut guard0 = NODES[0].lock();
    let node0 = guard0.as_mut().ok_or("partition 0 not attached")?;
    {
        let mut g = NODES[last].lock();
        let node = g.as_mut().ok_or("last partition not attached")?;
        masked(|| FABRIC.deregister_queue_set(last as u8, 0))
            .map_err(|_| "deregistration refused")?;
        for ip in [v4(last), v6(last)] {
            if node0.queue.send(&port, ip, &[0u8; 40])
                != Err(SendError::Refused(Reason::Unreachable))
            {
                return Err("a deregistered target was reachable");
            }
        }
        if masked(|| FABRIC.siga_write(last as u8, 0, 1 << 31))
            != Err(iqdio::SigaError::QueuesNotActive)
        {
            return Err("SIGA on a deregistered queue set did not answer cc1");
        }
        node.reestablish(&FABRIC)?;
    }
    let deadline = harness::deadline_ns();
    for _ in 0..10 {
        if !node0.send_data(&FABRIC, last, 300, deadline) {
            return Err("send after re-registration failed");
        }
    }
    drop(guard0);
    let mut g = NODES[last].lock();
    let node = g.as_mut().ok_or("last partition not attached")?;
    harness::spin_until(
        || node.queue.has_input(),
        "frame after re-registration missing",
    )?;
    while node.poll(&FABRIC) > 0 {}
    if RECEIVED.load(Ordering::SeqCst) != SENT.load(Ordering::SeqCst)
        || CORRUPTED.load(Ordering::SeqCst) != 0
    {
        return Err("frames lost or damaged across the re-registration");
    }
    Ok(())
}
