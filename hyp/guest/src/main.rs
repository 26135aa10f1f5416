//! The partition program: what each partition runs at EL1 under the iqdio hypervisor
//! (`iqdio-hyp`). It reaches the fabric only through HVC (`iqdio-hvc`): its queue
//! driver, the demo traffic, smoltcp in the TCP and layer-2 scenarios and beside the
//! Linux guests of linux-net, the multicast scenario, and
//! the hostile partition of the hostile scenario are all here.
//!
//! The hypervisor starts it at its ELF entry with x0 = its LPAR id, x1 = the partitions
//! running, x2 = the scenario (`iqdio_hvc::scenario`), x3 = an argument of the scenario.
//! Build-time options: `IQDIO_FRAMES` (data frames each partition sends, default 2000)
//! and `IQDIO_MFS` (the fabric's maximum frame size; the hypervisor uses the same).
#![cfg_attr(target_os = "none", no_std)]
#![cfg_attr(target_os = "none", no_main)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(target_os = "none")]
mod badring;
#[cfg(target_os = "none")]
mod demo;
#[cfg(target_os = "none")]
mod hostile;
#[cfg(target_os = "none")]
mod l2;
#[cfg(target_os = "none")]
mod linuxnet;
#[cfg(target_os = "none")]
mod mcast;
#[cfg(target_os = "none")]
mod node;
#[cfg(target_os = "none")]
mod probe;
#[cfg(target_os = "none")]
mod rt;
#[cfg(target_os = "none")]
mod tcp;

#[cfg(target_os = "none")]
use iqdio_hvc::scenario;

#[cfg(target_os = "none")]
aarch64_rt::entry!(main, 64);

#[cfg(target_os = "none")]
fn main(lpar: u64, partitions: u64, scenario: u64, arg: u64) -> ! {
    use iqdio_hvc::ExitStatus;
    say!(
        "partition {} up: running at EL{}, {} partitions, scenario {}",
        lpar,
        rt::current_el(),
        partitions,
        scenario
    );
    rt::enable_interrupts();
    let (lpar, n) = (lpar as usize, partitions as usize);
    if !(2..=node::MAX_PARTITIONS).contains(&n) || lpar >= n {
        say!("bad start arguments");
        rt::exit(ExitStatus::Failure, [0; 5]);
    }
    match scenario {
        scenario::PARTITIONS => demo::partitions(lpar, n),
        scenario::TCP => demo::tcp(lpar, n),
        scenario::HOSTILE if arg == 0 => hostile::refusals(lpar),
        scenario::HOSTILE => hostile::stop_attempt(arg),
        scenario::MULTICAST => mcast::run(lpar, n),
        scenario::L2 => l2::run(lpar, n),
        scenario::LINUX_NET => linuxnet::run(lpar, n),
        scenario::PROBE_TRAP => probe::trap_round_trip(),
        scenario::PROBE_WAIT => probe::wait_for_frame(lpar, n),
        scenario::PROBE_SEND => probe::send_frame(lpar, n, arg as usize),
        scenario::PROBE_PEEK => probe::peek(arg),
        scenario::PROBE_FAULT => probe::fault_after_establish(lpar, n),
        _ => {
            say!("unknown scenario {}", scenario);
            rt::exit(ExitStatus::Failure, [0; 5])
        }
    }
}

/// On the host this program has nothing to do: it exists for `aarch64-unknown-none`.
#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!("the partition program runs under the iqdio hypervisor: `cargo xtask run`");
    std::process::exit(2);
}
