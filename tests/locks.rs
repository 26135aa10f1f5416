//! The fabric's locks against updates and interrupts (issue 9 item 8, issue 17 item 1),
//! through the `test-hooks` feature: `Platform::lock_point` reports each lock the
//! fabric takes, on the core (thread) that takes it, while it holds it.

mod common;

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use common::{GuestRam, PAGE, v4, within};
use iqdio::driver::{DriverConfig, Indicators, QueueDriver};
use iqdio::{
    CallContext, Fabric, FabricConfig, InterruptDelivery, InterruptTarget, LockPoint, Mfs,
    Platform, RegistrationError, SigaError,
};

type HookFabric = Fabric<Hooks, 8, 16>;

/// What a test runs at the next interrupt.
type InterruptHook = Box<dyn FnMut(&Arc<HookFabric>) + Send>;

/// What happened, in the order it happened: each event is logged while the lock it
/// names is held, so the log's own mutex orders it against the others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Event {
    Point(LockPoint),
    Interrupt(u8),
}

/// A platform whose hooks a test arms.
struct Hooks {
    fabric: OnceLock<Weak<HookFabric>>,
    clock: AtomicU64,
    log: Mutex<Vec<Event>>,
    /// Set once an update has barred new readers and waits for them.
    writer_waiting: AtomicBool,
    /// Called from raise_interrupt (on the sender's thread, table lock shared).
    on_interrupt: Mutex<Option<InterruptHook>>,
    /// Every lock point runs `interrupt` as an interrupt handler would.
    interrupt_at_every_point: AtomicBool,
    /// What the handler runs saw: (point, its results).
    handled: Mutex<Vec<(LockPoint, Handled)>>,
    /// The context the platform reports outside a handler.
    context: Mutex<CallContext>,
}

#[derive(Clone, Copy, Debug)]
struct Handled {
    delays: iqdio::DelayReport,
    register: Result<(), RegistrationError>,
    siga: Result<iqdio::SigaReport, SigaError>,
}

thread_local! {
    /// This thread is in a (simulated) interrupt handler.
    static IN_HANDLER: Cell<bool> = const { Cell::new(false) };
}

impl Hooks {
    fn fabric(&self) -> Arc<HookFabric> {
        self.fabric
            .get()
            .and_then(Weak::upgrade)
            .expect("fabric alive")
    }

    fn log(&self, e: Event) {
        self.log.lock().unwrap().push(e);
    }

    /// The simulated interrupt: what a timer or management interrupt may do.
    fn interrupt(&self, point: LockPoint) {
        let fab = self.fabric();
        IN_HANDLER.with(|h| h.set(true));
        let delays = fab.try_expire_delays();
        // The waiting entry falls back to the try path from a handler.
        let _ = fab.expire_delays();
        let _ = fab.counters_of(2, 0);
        let register = fab.register_address(2, 0, v4(2, 99));
        let siga = fab.siga_write(1, 0, 1 << 31);
        IN_HANDLER.with(|h| h.set(false));
        self.handled.lock().unwrap().push((
            point,
            Handled {
                delays,
                register,
                siga,
            },
        ));
    }
}

impl Platform for Hooks {
    fn raise_interrupt(&self, t: InterruptTarget) -> InterruptDelivery {
        self.log(Event::Interrupt(t.lpar));
        let hook = self.on_interrupt.lock().unwrap().take();
        if let Some(mut f) = hook {
            f(&self.fabric());
        }
        InterruptDelivery::Delivered
    }

    fn now_ns(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn context(&self) -> CallContext {
        if IN_HANDLER.with(Cell::get) {
            CallContext::Interrupt
        } else {
            *self.context.lock().unwrap()
        }
    }

    fn lock_point(&self, point: LockPoint) {
        if point == LockPoint::TableExclusiveWaiting {
            self.writer_waiting.store(true, Ordering::SeqCst);
        }
        self.log(Event::Point(point));
        if self.interrupt_at_every_point.load(Ordering::SeqCst) && !IN_HANDLER.with(Cell::get) {
            self.interrupt(point);
        }
    }
}

fn new_fabric(delay_ns: u64) -> Arc<HookFabric> {
    let fab = Arc::new(Fabric::new(
        Hooks {
            fabric: OnceLock::new(),
            clock: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            writer_waiting: AtomicBool::new(false),
            on_interrupt: Mutex::new(None),
            interrupt_at_every_point: AtomicBool::new(false),
            handled: Mutex::new(Vec::new()),
            context: Mutex::new(CallContext::Masked),
        },
        FabricConfig {
            mfs: Mfs::K16,
            interrupt_delay_ns: delay_ns,
            ..FabricConfig::DEFAULT
        },
    ));
    let _ = fab.platform().fabric.set(Arc::downgrade(&fab));
    fab
}

struct Part {
    _ram: GuestRam,
    ind: Indicators,
    q: QueueDriver,
}

fn part(fab: &HookFabric, lpar: u8, cfg: DriverConfig) -> Part {
    let ram = GuestRam::new(PAGE + cfg.footprint());
    let mut region = ram.region();
    let ind = Indicators::new(&mut region).unwrap();
    let q = QueueDriver::new(&mut region, &ind, cfg).unwrap();
    fab.add_partition(lpar, &[ram.window()]).unwrap();
    fab.establish(lpar, 0, &q.params()).unwrap();
    fab.register_address(lpar, 0, v4(lpar, 0)).unwrap();
    Part { _ram: ram, ind, q }
}

fn cfg(interrupt_immediately: bool) -> DriverConfig {
    DriverConfig {
        rx_buffers: 16,
        tx_buffers: 16,
        interrupt_immediately,
        ..DriverConfig::new(0, Mfs::K16)
    }
}

/// Spins until `cond`, failing the test (not hanging it) after a generous limit.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(20), "never: {what}");
        std::thread::yield_now();
    }
}

/// Issue 9, defect 8: a registration that arrives during a write-multiple gets the
/// table lock between two buffers, not after all of them.
#[test]
fn a_waiting_registration_gets_the_table_lock_between_buffers() {
    let fab = new_fabric(u64::MAX);
    let mut a = part(&fab, 1, cfg(false));
    // Every delivery to B interrupts: raise_interrupt marks each buffer in the log.
    let mut b = part(&fab, 2, cfg(true));
    const N: usize = 8;
    for i in 0..N {
        a.q.prime(v4(2, 0), &[i as u8; 64]).unwrap();
    }
    // At the first buffer's interrupt (table lock held shared): start a registration
    // on another core and wait until it has barred new readers.
    let registration: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::default();
    {
        let registration = registration.clone();
        *fab.platform().on_interrupt.lock().unwrap() = Some(Box::new(move |fab| {
            let f = fab.clone();
            *registration.lock().unwrap() = Some(std::thread::spawn(move || {
                f.register_address(2, 0, v4(2, 7)).unwrap();
            }));
            wait_for("the registration waits", || {
                fab.platform().writer_waiting.load(Ordering::SeqCst)
            });
        }));
    }
    fab.platform().log.lock().unwrap().clear();
    fab.platform().writer_waiting.store(false, Ordering::SeqCst);
    let f = fab.clone();
    let (report, a) = within(Duration::from_secs(60), move || {
        let r = a.q.flush(&f.port(1)).unwrap();
        (r, a)
    });
    registration.lock().unwrap().take().unwrap().join().unwrap();
    assert_eq!(usize::from(report.delivered), N);
    assert!(report.refused.is_empty());

    let log = fab.platform().log.lock().unwrap().clone();
    let pos = |e: Event| log.iter().position(|x| *x == e).unwrap();
    let waiting = pos(Event::Point(LockPoint::TableExclusiveWaiting));
    let exclusive = pos(Event::Point(LockPoint::TableExclusive));
    let buffers_at = |range: std::ops::Range<usize>| {
        log[range]
            .iter()
            .filter(|e| **e == Event::Interrupt(2))
            .count()
    };
    assert_eq!(
        buffers_at(0..exclusive),
        1,
        "the registration got in after the first buffer: {log:?}"
    );
    assert_eq!(
        buffers_at(waiting..exclusive),
        0,
        "no buffer moved while it waited"
    );
    assert_eq!(buffers_at(exclusive..log.len()), N - 1);
    // The send re-took the table lock after the registration (and re-checked its
    // queue set), and every buffer reached B in order.
    let shared = |range: std::ops::Range<usize>| {
        log[range]
            .iter()
            .filter(|e| **e == Event::Point(LockPoint::TableShared))
            .count()
    };
    assert!(shared(exclusive..log.len()) >= 1);
    let mut got = Vec::new();
    while b
        .q
        .receive(|fr| {
            let mut p = [0u8; 64];
            fr.copy_to(&mut p);
            got.push(p[0]);
        })
        .is_some()
    {}
    assert_eq!(got, (0..N as u8).collect::<Vec<_>>());
    assert_eq!(fab.address_count(), 3);
    drop((a, b.ind));
}

/// Issue 17 item 4: suspending a partition in the middle of its write-multiple. The
/// suspension waits for one buffer only (the send steps out between buffers); the
/// send then ends with what it handled, the rest stays primed in the partition's
/// queue (its driver reports them pending, not refused), and after the resume its next
/// SIGA sends the rest, in order: nothing lost.
#[test]
fn a_suspension_gets_in_between_buffers_and_the_rest_waits_for_the_resume() {
    let fab = new_fabric(u64::MAX);
    let mut a = part(&fab, 1, cfg(false));
    let mut b = part(&fab, 2, cfg(true));
    const N: usize = 8;
    for i in 0..N {
        a.q.prime(v4(2, 0), &[i as u8; 64]).unwrap();
    }
    // At the first buffer's interrupt (the send holds the table lock shared): suspend
    // the sender from another core, and wait until the suspension waits.
    let suspension: Arc<Mutex<Option<std::thread::JoinHandle<()>>>> = Arc::default();
    {
        let suspension = suspension.clone();
        *fab.platform().on_interrupt.lock().unwrap() = Some(Box::new(move |fab| {
            let f = fab.clone();
            *suspension.lock().unwrap() = Some(std::thread::spawn(move || {
                f.suspend(1).unwrap();
            }));
            wait_for("the suspension waits", || {
                fab.platform().writer_waiting.load(Ordering::SeqCst)
            });
        }));
    }
    fab.platform().writer_waiting.store(false, Ordering::SeqCst);
    // The partition's own driver flushes: one write-multiple (cc0) that ends early.
    let f = fab.clone();
    let (first, mut a) = within(Duration::from_secs(60), move || {
        let r = a.q.flush(&f.port(1)).unwrap();
        (r, a)
    });
    suspension.lock().unwrap().take().unwrap().join().unwrap();
    assert_eq!((first.delivered, first.pending), (1, N as u8 - 1));
    assert!(first.refused.is_empty(), "not reached is not refused");
    let states: Vec<u8> = (0..N as u8).map(|n| a.q.output_state(n).0).collect();
    let mut want = vec![0x62; N];
    want[0] = 0xA1;
    assert_eq!(states, want, "the rest still primed");
    assert_eq!(
        fab.siga_write_multiple(1, 0, 1 << 31),
        Err(SigaError::Suspended)
    );

    fab.resume(1).unwrap();
    let rest = a.q.flush(&fab.port(1)).unwrap();
    assert_eq!((usize::from(rest.delivered), rest.pending), (N - 1, 0));
    assert!(rest.refused.is_empty());
    let mut got = Vec::new();
    while b
        .q
        .receive(|fr| {
            let mut p = [0u8; 64];
            fr.copy_to(&mut p);
            got.push(p[0]);
        })
        .is_some()
    {}
    assert_eq!(got, (0..N as u8).collect::<Vec<_>>());
    drop((a, b.ind));
}

/// Issue 9, defect 8, under load: registrations keep completing while another
/// partition streams write-multiples, and none waits for more than one buffer of it.
#[test]
fn registrations_complete_while_a_partition_streams_write_multiples() {
    let fab = new_fabric(u64::MAX);
    let mut a = part(&fab, 1, cfg(false));
    let mut b = part(&fab, 2, cfg(false));
    fab.platform().log.lock().unwrap().clear();
    let stop = Arc::new(AtomicBool::new(false));
    // Flushes so far: the updates start only once the sender streams, so they really
    // meet it however the threads are scheduled.
    let flushed = Arc::new(AtomicU64::new(0));
    let streamer = {
        let f = fab.clone();
        let stop = stop.clone();
        let flushed = flushed.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                while a.q.free_tx() > 0 {
                    a.q.prime(v4(2, 0), &[7; 8000]).unwrap();
                }
                a.q.flush(&f.port(1)).unwrap();
                flushed.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let receiver = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                while b.q.receive(|_| {}).is_some() {}
                std::thread::yield_now();
            }
        })
    };
    let f = fab.clone();
    let started = flushed.clone();
    within(Duration::from_secs(120), move || {
        while started.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        for i in 0..200u16 {
            let ip = v4(3, i % 200 + 1);
            if i == 0 {
                let ram = Box::leak(Box::new(GuestRam::new(PAGE)));
                f.add_partition(3, &[ram.window()]).unwrap();
            }
            f.register_address(2, 0, ip).unwrap();
            f.deregister_address(2, 0, ip).unwrap();
        }
    });
    stop.store(true, Ordering::SeqCst);
    streamer.join().unwrap();
    receiver.join().unwrap();
    assert!(flushed.load(Ordering::SeqCst) > 0);
    // Between an update barring readers and getting the lock, the one sender moved at
    // most the buffer it was in (each buffer takes B's inbound lock once).
    let log = fab.platform().log.lock().unwrap().clone();
    let mut windows = 0;
    let mut i = 0;
    while let Some(w) = log[i..]
        .iter()
        .position(|e| *e == Event::Point(LockPoint::TableExclusiveWaiting))
    {
        let w = i + w;
        let x = w + log[w..]
            .iter()
            .position(|e| *e == Event::Point(LockPoint::TableExclusive))
            .unwrap();
        let moved = log[w..x]
            .iter()
            .filter(|e| **e == Event::Point(LockPoint::Inbound))
            .count();
        assert!(moved <= 1, "{moved} buffers while an update waited");
        windows += 1;
        i = x;
    }
    assert!(windows >= 400, "every update was seen waiting");
}

/// Issue 17, item 1: an interrupt at every lock point the fabric takes (as a timer
/// interrupt on the same core would come) runs the delay fallback and tries an update
/// and a SIGA; nothing hangs: the fallback skips what is held and reports it, the
/// others refuse (the execution contract), and the skipped fallback fires later.
#[test]
fn an_interrupt_at_every_lock_point_never_hangs() {
    let fab = new_fabric(1_000);
    let f = fab.clone();
    let (a, b) = within(Duration::from_secs(60), move || {
        let fab = f;
        fab.platform()
            .interrupt_at_every_point
            .store(true, Ordering::SeqCst);
        // Registration: exclusive (waiting and held), outbound, inbound.
        let mut a = part(&fab, 1, cfg(false));
        let b = part(&fab, 2, cfg(false));
        // Sends: shared, outbound, inbound (a write and a write-multiple).
        fab.platform().clock.store(10, Ordering::SeqCst);
        a.q.send(&fab.port(1), v4(2, 0), &[1; 32]).unwrap();
        for _ in 0..3 {
            a.q.prime(v4(2, 0), &[2; 32]).unwrap();
        }
        assert_eq!(a.q.flush(&fab.port(1)).unwrap().delivered, 3);
        // The override (shared, inbound) and the fallback itself (shared, inbound).
        fab.set_interrupt_immediately(2, 0, false).unwrap();
        fab.platform().clock.store(10_000, Ordering::SeqCst);
        let _ = fab.expire_delays();
        fab.platform()
            .interrupt_at_every_point
            .store(false, Ordering::SeqCst);
        (a, b)
    });
    let handled = fab.platform().handled.lock().unwrap().clone();
    for point in [
        LockPoint::TableShared,
        LockPoint::TableExclusiveWaiting,
        LockPoint::TableExclusive,
        LockPoint::Outbound,
        LockPoint::Inbound,
    ] {
        assert!(
            handled.iter().any(|(p, _)| *p == point),
            "no interrupt at {point:?}"
        );
    }
    for (p, h) in &handled {
        assert_eq!(
            h.register,
            Err(RegistrationError::InterruptContext),
            "{p:?}"
        );
        assert_eq!(h.siga, Err(SigaError::InterruptContext), "{p:?}");
    }
    // Under an update the fallback saw the table busy; under a send's inbound lock it
    // skipped that queue set.
    assert!(
        handled
            .iter()
            .any(|(p, h)| *p == LockPoint::TableExclusive && h.delays.table_busy)
    );
    assert!(
        handled
            .iter()
            .any(|(p, h)| *p == LockPoint::Inbound && h.delays.skipped > 0)
    );
    // Nothing was registered or sent from a handler.
    assert_eq!(fab.address_count(), 2);
    assert_eq!(fab.counters_of(1, 0).unwrap().sbals_sent, 4);
    // The fallback that handlers had to skip still fired: B's summary went pending
    // at the first send (one interrupt) and the delay's fallback raised another.
    let raised = fab.counters_of(2, 0).unwrap().interrupts_raised;
    assert_eq!(raised, 2, "idle -> pending, then the fallback once");
    assert!(b.ind.pending());
    drop(a);
}

/// The contract where the platform can tell: with interrupts enabled on the core,
/// entries that wait for locks refuse, and the fallback only tries.
#[test]
fn entries_refuse_when_the_platform_says_interrupts_are_enabled() {
    let fab = new_fabric(1_000);
    let mut a = part(&fab, 1, cfg(false));
    let _b = part(&fab, 2, cfg(false));
    a.q.prime(v4(2, 0), &[5; 16]).unwrap();
    *fab.platform().context.lock().unwrap() = CallContext::Interruptible;
    assert_eq!(
        fab.siga_write(1, 0, 1 << 31),
        Err(SigaError::InterruptContext)
    );
    assert_eq!(
        fab.register_address(1, 0, v4(1, 5)),
        Err(RegistrationError::InterruptContext)
    );
    assert_eq!(
        fab.deregister_queue_set(2, 0),
        Err(RegistrationError::InterruptContext)
    );
    assert_eq!(
        fab.set_interrupt_immediately(2, 0, true),
        Err(RegistrationError::InterruptContext)
    );
    assert_eq!(fab.try_expire_delays().raised, 0);
    assert_eq!(fab.expire_delays(), 0);
    assert!(
        fab.counters_of(2, 0).is_some(),
        "a look at a free table lock is fine"
    );
    *fab.platform().context.lock().unwrap() = CallContext::Masked;
    assert_eq!(fab.siga_write(1, 0, 1 << 31).unwrap().delivered, 1);
}
