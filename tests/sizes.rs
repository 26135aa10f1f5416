//! Issue 17 item 2: the fabric's size follows its configuration, a `static` of it
//! starts all-zero (in `.bss`), and `init_in_place` builds one at run time without a
//! big stack frame.
//!
//! `sizes_of_typical_configurations` prints the README's table of sizes from
//! `size_of` and fails if the README's copy differs.

mod common;

use core::mem::size_of;
use std::sync::Arc;

use common::{Partition, TestFabric, TestPlatform, config, drain, v4};
use iqdio::qdio::Mfs;
use iqdio::{Fabric, FabricConfig, InterruptDelivery, InterruptTarget, Platform, Windows};

/// A platform of no bytes, as a hypervisor's usually is (its state is elsewhere).
struct Zst;

impl Platform for Zst {
    fn raise_interrupt(&self, _target: InterruptTarget) -> InterruptDelivery {
        InterruptDelivery::Delivered
    }
    fn now_ns(&self) -> u64 {
        0
    }
}

/// One row: partitions (`L`), queue sets in all (`Q`), queue sets per partition
/// (`S`), windows per partition (`W`), addresses (`A`), output queues per queue set
/// (`O`), bytes.
fn row<
    const Q: usize,
    const A: usize,
    const L: usize,
    const S: usize,
    const W: usize,
    const O: usize,
>(
    what: &str,
) -> (String, usize) {
    let bytes = size_of::<Fabric<Zst, Q, A, L, S, Windows<W>, O>>();
    (
        format!("| {what} | {L} | {Q} | {S} | {W} | {A} | {O} | {bytes} |"),
        bytes,
    )
}

#[test]
fn sizes_of_typical_configurations() {
    let rows = [
        row::<8, 16, 8, 1, 1, 2>("8 partitions × 1 queue set, 2 output queues"),
        row::<8, 64, 8, 1, 1, 2>("the hypervisor image (`hyp`)"),
        row::<8, 16, 8, 1, 1, 1>("8 partitions × 1 queue set, one output queue"),
        row::<8, 16, 8, 1, 1, 4>("8 partitions × 1 queue set, 4 output queues"),
        row::<64, 4096, 64, 1, 1, 4>("64 partitions × 1 queue set, 4096 addresses"),
        row::<256, 4096, 64, 4, 4, 4>("64 partitions × 4 queue sets, 4096 addresses"),
        row::<256, 4096, 256, 1, 1, 4>("256 partitions × 1 queue set, 4096 addresses"),
        row::<64, 4096, 256, 16, 4, 4>("the defaults (`Fabric<P>`)"),
    ];
    let header = "| configuration | partitions `L` | queue sets `Q` | per partition `S` | windows `W` | addresses `A` | output queues `O` | bytes |";
    println!("{header}");
    println!("|---|---|---|---|---|---|---|---|");
    for (line, _) in &rows {
        println!("{line}");
    }
    // The goal of the issue: 8 partitions with one queue set each in 32 KiB, with the
    // two output queues (one unicast, one multicast) Linux's qeth needs at least
    // (`QETH_IQD_MIN_TXQ`), as the hypervisor image has them.
    assert!(rows[0].1 <= 32 * 1024, "{}", rows[0].0);
    assert!(rows[1].1 <= 32 * 1024, "{}", rows[1].0);
    // The README carries the same table.
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    for line in std::iter::once(header.to_string()).chain(rows.iter().map(|(l, _)| l.clone())) {
        assert!(
            readme.lines().any(|l| l.trim() == line),
            "README.md lacks (or has another figure than) the row\n{line}\n(run `cargo test --test sizes -- --nocapture` and copy the table)"
        );
    }
}

/// The fabric of the first row, in a `static` as an image keeps it.
static SMALL: Fabric<Zst, 8, 16, 8, 1, Windows<1>> = Fabric::new(Zst, FabricConfig::DEFAULT);

#[cfg(target_os = "linux")]
#[test]
fn a_static_fabric_with_the_defaults_lands_in_bss() {
    // The linker's bounds of `.bss` (GNU ld and lld define both on Linux).
    unsafe extern "C" {
        static __bss_start: u8;
        static _end: u8;
    }
    // Only the symbols' addresses are taken (safe for an extern static): nothing is
    // read.
    let (start, end) = (&raw const __bss_start as usize, &raw const _end as usize);
    let at = &raw const SMALL as usize;
    assert!(
        start <= at && at + size_of_val(&SMALL) <= end,
        "SMALL at {at:#x} is outside .bss {start:#x}..{end:#x}: not all-zero at build time"
    );
    // And it works as a fabric (its settings given at run time).
    SMALL
        .set_config(FabricConfig {
            interrupt_delay_ns: 7,
            ..FabricConfig::new([1, 2])
        })
        .unwrap();
    let c = SMALL.config();
    assert_eq!((c.interrupt_delay_ns, c.hash_seed), (7, [1, 2]));
    assert_eq!(c.mfs, Mfs::K64);
}

#[test]
fn init_in_place_builds_a_working_default_fabric_on_a_small_stack() {
    // The default fabric is over 400 KB; the thread's stack is 256 KiB, so neither
    // the fabric nor its tables may pass through the stack.
    let platform = TestPlatform::new();
    let seed = [0x1234, 0x5678];
    let fabric: Arc<TestFabric> = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(move || {
            let mut slot = Box::<TestFabric>::new_uninit();
            let config = FabricConfig {
                interrupt_delay_ns: 3_000,
                ..FabricConfig::new(seed)
            };
            TestFabric::init_in_place(&mut slot, platform, config);
            // SAFETY: init_in_place initialised it.
            Arc::from(unsafe { slot.assume_init() })
        })
        .unwrap()
        .join()
        .unwrap();
    assert!(size_of::<TestFabric>() > 400_000);
    let c = fabric.config();
    assert_eq!((c.hash_seed, c.interrupt_delay_ns), (seed, 3_000));
    assert_eq!(
        c,
        FabricConfig {
            interrupt_delay_ns: 3_000,
            ..FabricConfig::new(seed)
        }
    );

    // Partitions on LPAR ids far apart (slots are taken sparsely), a frame each way.
    let mut a = Partition::new(&fabric, 3, 1, config(Mfs::K16));
    let mut b = Partition::new(&fabric, 250, 1, config(Mfs::K16));
    let port_a = fabric.port(3);
    let port_b = fabric.port(250);
    a.queues[0].send(&port_a, v4(250, 0), b"to b").unwrap();
    b.queues[0].send(&port_b, v4(3, 0), b"to a").unwrap();
    let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
    assert_eq!(drain(&mut b.queues[0], &mut got_b), 1);
    assert_eq!(drain(&mut a.queues[0], &mut got_a), 1);
    assert_eq!(got_b, [b"to b".to_vec()]);
    assert_eq!(got_a, [b"to a".to_vec()]);
    assert!(a.ram.guards_intact() && b.ram.guards_intact());
    // The seed is in use now: only the other settings may change.
    assert_eq!(
        fabric.set_config(FabricConfig::DEFAULT).unwrap_err(),
        iqdio::RegistrationError::SeedInUse
    );
    fabric.remove_partition(3).unwrap();
    fabric.remove_partition(250).unwrap();
}
