//! Hypervisor cases: partitions at EL1 under this image's EL2 code, each case running
//! a probe of the partition program (`hyp/guest/src/probe.rs`) on one or two cores.
//! They run last: they reuse the cores' windows, which the fabric cases used before.

use core::net::{IpAddr, Ipv4Addr};
use core::ptr::NonNull;

use iqdio::Reason;
use iqdio::driver::{DriverConfig, Indicators, QueueDriver, Region, SendError};
use iqdio_hvc::scenario::{
    MARKER, MARKER_OFFSET, PROBE_FAULT, PROBE_PEEK, PROBE_SEND, PROBE_TRAP, PROBE_WAIT,
};
use iqdio_hvc::ExitStatus;
use iqdio_hyp::board::{self, MAX_CORES};
use iqdio_hyp::vm::{self, FABRIC, MFS, Outcome, stage2};

use super::harness::{self, Case, job_failed};

/// The partition program this image embeds (see `iqdio_hyp::guest_image!`).
static GUEST_IMAGE: &[u8] = iqdio_hyp::guest_image!();

/// The hypervisor cases, in order.
pub const CASES: &[Case] = &[
    Case {
        name: "vm_trap_round_trip",
        timeout_ms: 20_000,
        run: trap_round_trip,
    },
    Case {
        name: "vm_virtual_interrupt_wakes_wfi",
        timeout_ms: 30_000,
        run: virtual_interrupt_wakes_wfi,
    },
    Case {
        name: "vm_stage2_isolation_both_ways",
        timeout_ms: 20_000,
        run: stage2_isolation,
    },
    Case {
        name: "vm_stopped_partition_queue_sets_gone",
        timeout_ms: 20_000,
        run: stopped_queue_sets_gone,
    },
];

/// What each core's partition did in the current case.
static OUTCOMES: [spin::Mutex<Option<Outcome>>; MAX_CORES] =
    [const { spin::Mutex::new(None) }; MAX_CORES];

/// The probe each core runs in the current case: (scenario, argument), or none.
static PLAN: [spin::Mutex<Option<(u64, u64)>>; MAX_CORES] =
    [const { spin::Mutex::new(None) }; MAX_CORES];

fn run_plan(plan: &[(usize, u64, u64)]) -> Result<(), &'static str> {
    for (core, p) in PLAN.iter().enumerate() {
        *p.lock() = plan.iter().find(|(c, _, _)| *c == core).map(|(_, s, a)| (*s, *a));
        *OUTCOMES[core].lock() = None;
    }
    let members = plan
        .iter()
        .filter(|(_, s, _)| *s != PROBE_TRAP)
        .fold(0u32, |m, (c, _, _)| m | 1 << c);
    vm::barrier::start(members);
    harness::run_on_all(|core| {
        let Some((scenario, arg)) = *PLAN[core].lock() else {
            return;
        };
        let partitions = PLAN.iter().filter(|p| p.lock().is_some()).count().max(2);
        match vm::run_partition(GUEST_IMAGE, [core as u64, partitions as u64, scenario, arg]) {
            Ok(outcome) => *OUTCOMES[core].lock() = Some(outcome),
            Err(_) => job_failed(core, "the partition did not start"),
        }
    })
}

fn outcome(core: usize) -> Option<Outcome> {
    *OUTCOMES[core].lock()
}

fn passed(core: usize) -> Option<[u64; 5]> {
    match outcome(core)? {
        Outcome::Exited { status, results }
            if ExitStatus::from_raw(status) == Some(ExitStatus::Pass) =>
        {
            Some(results)
        }
        _ => None,
    }
}

/// 100 HVC round trips (SIGAs on a subchannel never established, by hand and through
/// the driver's trait):
/// each answer right (cc3 for the SIGA), and x2-x15, d0, d8, d16 and d31 unchanged
/// across every trap.
fn trap_round_trip() -> Result<(), &'static str> {
    run_plan(&[(1, PROBE_TRAP, 0)])?;
    match passed(1) {
        Some([100, 0, 0, ..]) => Ok(()),
        _ => Err("the trap probe saw changed registers or wrong answers"),
    }
}

/// Partition 1 sleeps in WFI with nothing to do; partition 0 sends it one frame: the
/// fabric's interrupt becomes an SGI to core 1, a list register there, and the virtual
/// IRQ wakes partition 1, which takes the frame.
fn virtual_interrupt_wakes_wfi() -> Result<(), &'static str> {
    run_plan(&[(0, PROBE_SEND, 1), (1, PROBE_WAIT, 0)])?;
    if passed(0).is_none() {
        return Err("the sender did not send");
    }
    match passed(1) {
        Some([virqs, 1, sleeps, ..]) if virqs >= 1 && sleeps >= 1 => Ok(()),
        Some(_) => Err("the frame arrived without a virtual interrupt or without WFI"),
        None => Err("the sleeping partition did not get its frame"),
    }
}

fn marker(core: usize) -> u64 {
    let (base, _) = board::partition_window(core);
    // SAFETY: the core's window, mapped normal memory; its partition has ended.
    unsafe {
        base.add(MARKER_OFFSET as usize)
            .cast::<u64>()
            .read_volatile()
    }
}

/// Partitions 0 and 1 each store into the other's window (at its physical address):
/// both are stopped by a stage-2 fault, and both markers are intact. The stage-2
/// tables map the window, 24 blocks of 2 MiB, and nothing else.
fn stage2_isolation() -> Result<(), &'static str> {
    let (w0, _) = board::partition_window(0);
    let (w1, _) = board::partition_window(1);
    let target = |w: *mut u8| w.addr() as u64 + MARKER_OFFSET;
    run_plan(&[(0, PROBE_PEEK, target(w1)), (1, PROBE_PEEK, target(w0))])?;
    if outcome(0) != Some(Outcome::Stopped) || outcome(1) != Some(Outcome::Stopped) {
        return Err("a partition stored into another's window and was not stopped");
    }
    if marker(0) != MARKER || marker(1) != MARKER {
        return Err("a marker changed: a store crossed into another window");
    }
    let (l1, l2) = stage2::descriptors(0x1000, w1.addr() as u64, vm::GUEST_WINDOW);
    let mapped_l1 = l1.iter().filter(|d| **d != 0).count();
    let mapped_l2 = l2.iter().filter(|d| **d != 0).count();
    if (mapped_l1, mapped_l2) != (1, vm::GUEST_WINDOW >> 21) {
        return Err("stage 2 maps more than the window");
    }
    Ok(())
}

/// Partition 1 establishes, registers 10.0.0.2, then faults: it is stopped, its queue
/// set is gone from the fabric, and a send to its address is refused with 0x11.
fn stopped_queue_sets_gone() -> Result<(), &'static str> {
    run_plan(&[(1, PROBE_FAULT, 0)])?;
    if outcome(1) != Some(Outcome::Stopped) {
        return Err("the faulting partition was not stopped");
    }
    if vm::masked(|| FABRIC.counters_of(1, 0)).is_some() {
        return Err("the stopped partition's queue set is still registered");
    }
    let refused = send_from_hypervisor(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
    if refused != Some(Err(SendError::Refused(Reason::Unreachable))) {
        return Err("a send to the stopped partition was not refused with 0x11");
    }
    Ok(())
}

/// One 64-byte send from a queue set of the hypervisor's own (LPAR 200, core 0's
/// window) to `dest`: the send's result.
fn send_from_hypervisor(dest: IpAddr) -> Option<Result<(), SendError>> {
    const LPAR: u8 = 200;
    let (base, len) = board::partition_window(0);
    let host = NonNull::new(base)?;
    // SAFETY: core 0's window, which no partition uses in this case.
    let mut region = unsafe { Region::new(host, vm::GUEST_BASE, len) }.ok()?;
    vm::masked(|| {
        vm::add_partition(LPAR, region.window()).ok()?;
        let config = DriverConfig {
            rx_buffers: 2,
            tx_buffers: 2,
            ..DriverConfig::new(0, MFS)
        };
        let result = Indicators::new(&mut region).ok().and_then(|ind| {
            let mut queue = QueueDriver::new(&mut region, &ind, config).ok()?;
            FABRIC.establish(LPAR, 0, &queue.params()).ok()?;
            Some(queue.send(&FABRIC.port(LPAR), dest, &[0x42; 64]))
        });
        let _ = FABRIC.remove_partition(LPAR);
        result
    })
}
