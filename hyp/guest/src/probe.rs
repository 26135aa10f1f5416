//! Probes for the hypervisor's self-test (`hyp/src/bin/selftest/vm.rs`): small partition
//! programs that each show one thing of the hypervisor from the inside.

use core::sync::atomic::Ordering;

use iqdio::{Siga, SigaError, SigaFunction, SigaStatus};
use iqdio_hvc::{ExitStatus, HVC_SIGA};

use crate::node::{Node, PONG};
use crate::rt::{self, HvcSiga};
use crate::say;

use iqdio_hvc::scenario::{MARKER, MARKER_OFFSET};

/// Trap round trip: HVCs come back with the right answers, and every register the
/// calling convention leaves alone (x2-x15, d0, d8, d16, d31 here) unchanged. Each round
/// is a SIGA on a subchannel never established (condition code 3, busy bit clear)
/// with patterns in the registers, then a SIGA through the driver's trait. Results:
/// (round trips, registers found changed, wrong answers).
pub fn trap_round_trip() -> ! {
    const ROUNDS: u64 = 100;
    let mut changed = 0u64;
    let mut wrong = 0u64;
    for round in 0..ROUNDS {
        let p = 0x1111_0000_0000_0000 | round << 8;
        let (mut x, mut v) = ([0u64; 14], [0u64; 4]);
        let (r0, r1): (u64, u64);
        // SAFETY: a SIGA for subchannel 9, which this partition never established: the
        // hypervisor answers cc3 and touches no memory; every register the block names
        // is declared, and the hypervisor writes only x0 and x1.
        unsafe {
            core::arch::asm!(
                "hvc #0",
                inout("x0") HVC_SIGA => r0,
                inout("x1") 0u64 => r1,
                inout("x2") 9u64 => x[0],
                inout("x3") 1u64 << 31 => x[1],
                inout("x4") p + 4 => x[2],
                inout("x5") p + 5 => x[3],
                inout("x6") p + 6 => x[4],
                inout("x7") p + 7 => x[5],
                inout("x8") p + 8 => x[6],
                inout("x9") p + 9 => x[7],
                inout("x10") p + 10 => x[8],
                inout("x11") p + 11 => x[9],
                inout("x12") p + 12 => x[10],
                inout("x13") p + 13 => x[11],
                inout("x14") p + 14 => x[12],
                inout("x15") p + 15 => x[13],
                inout("d0") p + 100 => v[0],
                inout("d8") p + 108 => v[1],
                inout("d16") p + 116 => v[2],
                inout("d31") p + 131 => v[3],
                options(nomem, nostack),
            )
        };
        wrong += u64::from(r0 != 3 || r1 != 0);
        let expected_x = |i: usize| match i {
            0 => 9,
            1 => 1 << 31,
            _ => p + 2 + i as u64,
        };
        changed += x
            .iter()
            .enumerate()
            .filter(|(i, r)| **r != expected_x(*i))
            .count() as u64;
        changed += [100, 108, 116, 131]
            .iter()
            .zip(v)
            .filter(|(k, r)| *r != p + **k)
            .count() as u64;
        wrong += u64::from(
            HvcSiga.siga(9, SigaFunction::Write, 1 << 31)
                != SigaStatus::of_error(SigaError::NotIqdio),
        );
    }
    say!(
        "probe: {} trap round trips, {} registers changed, {} wrong answers",
        ROUNDS,
        changed,
        wrong
    );
    let status = if changed == 0 && wrong == 0 {
        ExitStatus::Pass
    } else {
        ExitStatus::Failure
    };
    rt::exit(status, [ROUNDS, changed, wrong, 0, 0])
}

fn attach(lpar: usize, n: usize) -> Node {
    match Node::attach(lpar, n) {
        Ok(node) => node,
        Err(e) => {
            say!("probe: attach failed: {}", e);
            rt::exit(ExitStatus::Failure, [0; 5])
        }
    }
}

/// Waits in WFI for one frame: attach, barrier, sleep. Results: (virtual interrupts
/// taken, frames received, times it slept in WFI).
pub fn wait_for_frame(lpar: usize, n: usize) -> ! {
    let mut node = attach(lpar, n);
    rt::barrier();
    let deadline = rt::now_ns() + 20_000_000_000;
    let got = node.wait_for_input(deadline);
    node.poll();
    let status = if got && node.stats.received == 1 {
        ExitStatus::Pass
    } else {
        ExitStatus::Failure
    };
    rt::exit(
        status,
        [
            rt::RECEIVED.load(Ordering::Relaxed),
            node.stats.received,
            rt::WFI_SLEEPS.load(Ordering::Relaxed),
            0,
            0,
        ],
    )
}

/// Sends one frame to partition `peer` once it sleeps: attach, barrier, wait a while
/// (the peer goes to sleep), send. Results: (frames sent).
pub fn send_frame(lpar: usize, n: usize, peer: usize) -> ! {
    let mut node = attach(lpar, n);
    rt::barrier();
    let until = rt::now_ns() + 50_000_000;
    while rt::now_ns() < until {
        core::hint::spin_loop();
    }
    let ok = node.send(peer, PONG, 0, 64, rt::now_ns() + 5_000_000_000);
    let status = if ok {
        ExitStatus::Pass
    } else {
        ExitStatus::Failure
    };
    rt::exit(status, [node.stats.sent, 0, 0, 0, 0])
}

/// Stage-2 isolation: writes `MARKER` into its own queue area, waits for the other
/// prober, then stores into `target` (the other partition's marker, by its physical
/// address): the store must stop it. Returns only if it did not.
pub fn peek(target: u64) -> ! {
    let own =
        core::ptr::with_exposed_provenance_mut::<u64>((rt::WINDOW_BASE + MARKER_OFFSET) as usize);
    // SAFETY: this partition's own queue area, mapped and unused in this probe.
    unsafe { own.write_volatile(MARKER) };
    rt::barrier();
    let other = core::ptr::with_exposed_provenance_mut::<u64>(target as usize);
    // SAFETY: not sound on purpose: `target` is outside this partition's window, so
    // stage 2 faults and the hypervisor stops the partition.
    unsafe { other.write_volatile(0xdead) };
    say!("probe: a store to {:#x} got through", target);
    rt::exit(ExitStatus::Failure, [1, 0, 0, 0, 0])
}

/// Establishes its queue set and registers its address, then faults (a load from the
/// hypervisor's memory): the hypervisor must stop it and remove its queue sets.
pub fn fault_after_establish(lpar: usize, n: usize) -> ! {
    let _node = attach(lpar, n);
    say!("probe: established; now a load from the hypervisor's memory");
    let p = core::ptr::with_exposed_provenance::<u64>(0x4008_0000);
    // SAFETY: not sound on purpose: the address is outside the window; stage 2 faults.
    let v = unsafe { p.read_volatile() };
    say!("probe: the load got through ({:#x})", v);
    rt::exit(ExitStatus::Failure, [1, 0, 0, 0, 0])
}
