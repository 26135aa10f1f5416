//! The library embedded as a hypervisor embeds it: from outside the crate, with a
//! `Platform` of its own, guest memory of its own (raw bytes behind a host pointer),
//! and no board feature; the partitions' side written as raw SBALs and SLSB bytes.
//!
//! Covers the execution contract (issue 17 item 1), suspend and resume (item 4), the
//! interrupt cookie and the delivery result (item 5), and the errors' manners (item 6).

use std::net::{IpAddr, Ipv4Addr};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use iqdio::{
    CallContext, ConditionCode, Fabric, FabricConfig, InterruptDelivery, InterruptTarget, Platform,
    QueueSetParams, Reason, RegistrationError, SIGA_BUSY_BIT, SigaError, Window,
};

// ---------------------------------------------------------------------------------
// The hypervisor's side.

/// The embedder's platform: a clock it sets by hand, the context it reports, whether
/// its interrupt controller accepts interrupts, and every interrupt target it was given.
#[derive(Default)]
struct Hypervisor {
    clock: AtomicU64,
    /// `CallContext` as a number: 0 Unknown, 1 Masked, 2 Interruptible, 3 Interrupt.
    context: AtomicU8,
    /// The interrupt controller refuses (no free list register, say).
    refuse: AtomicBool,
    raised: Mutex<Vec<(InterruptTarget, InterruptDelivery)>>,
}

impl Platform for Hypervisor {
    fn raise_interrupt(&self, target: InterruptTarget) -> InterruptDelivery {
        let d = if self.refuse.load(Ordering::SeqCst) {
            InterruptDelivery::Dropped
        } else {
            InterruptDelivery::Delivered
        };
        self.raised.lock().unwrap().push((target, d));
        d
    }

    fn now_ns(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    fn context(&self) -> CallContext {
        match self.context.load(Ordering::SeqCst) {
            1 => CallContext::Masked,
            2 => CallContext::Interruptible,
            3 => CallContext::Interrupt,
            _ => CallContext::Unknown,
        }
    }
}

impl Hypervisor {
    fn take_raised(&self) -> Vec<(InterruptTarget, InterruptDelivery)> {
        std::mem::take(&mut *self.raised.lock().unwrap())
    }
}

type Hv = Fabric<Hypervisor, 8, 16>;

const DELAY_NS: u64 = 1_000_000;

/// A fabric on the heap, made on a thread with room for it (`new` returns by value).
fn fabric() -> Arc<Hv> {
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(|| {
            let config = FabricConfig {
                interrupt_delay_ns: DELAY_NS,
                ..FabricConfig::DEFAULT
            };
            Arc::new(Fabric::new(Hypervisor::default(), config))
        })
        .unwrap()
        .join()
        .unwrap()
}

// ---------------------------------------------------------------------------------
// A partition: its RAM and the program side, as raw bytes.

/// Guest-physical base of every partition (each has its own address space).
const BASE: u64 = 0x8000_0000;
const RAM: usize = 0x4_0000;
const OUT_SBALS: u64 = BASE;
const IN_SBALS: u64 = BASE + 0x8000;
const OUT_SLSB: u64 = BASE + 0x1_0000;
const IN_SLSB: u64 = BASE + 0x1_0100;
const INDICATORS: u64 = BASE + 0x1_0200;
const TX_DATA: u64 = BASE + 0x1_1000;
const RX_DATA: u64 = BASE + 0x2_0000;
const PAGE: u64 = 4096;

#[repr(C, align(4096))]
struct Ram([u8; RAM]);

/// A partition's RAM, held by the hypervisor through a host pointer only.
struct Guest {
    lpar: u8,
    host: NonNull<u8>,
}

// SAFETY: the RAM is plain memory owned by this value; shared use goes through raw
// pointers only, as the fabric's does.
unsafe impl Send for Guest {}
// SAFETY: as for Send.
unsafe impl Sync for Guest {}

impl Guest {
    /// A partition with its RAM, made known to the fabric, and a queue set on
    /// `subchannel` whose interrupts carry `cookie`, with `addr` registered.
    fn attach(f: &Hv, lpar: u8, subchannel: u16, cookie: u64, addr: Ipv4Addr) -> Self {
        // Leaked: the fabric's window must stay valid for as long as the fabric lives.
        let ram = Box::into_raw(Box::new(Ram([0; RAM])));
        let g = Self {
            lpar,
            host: NonNull::new(ram).unwrap().cast(),
        };
        // SAFETY: the RAM is never freed, and Rust code reaches it only through raw
        // pointers.
        let window = unsafe { Window::new(BASE, g.host, RAM) };
        f.add_partition(lpar, &[window]).unwrap();
        f.establish(lpar, subchannel, &params(cookie)).unwrap();
        f.register_address(lpar, subchannel, IpAddr::V4(addr))
            .unwrap();
        g
    }

    fn ptr(&self, addr: u64, len: usize) -> *mut u8 {
        let off = usize::try_from(addr - BASE).unwrap();
        assert!(off + len <= RAM, "outside the partition's own RAM");
        // SAFETY: in range (asserted).
        unsafe { self.host.as_ptr().add(off) }
    }

    fn write(&self, addr: u64, bytes: &[u8]) {
        // SAFETY: inside the RAM; no SIGA runs while a test thread writes.
        unsafe {
            self.ptr(addr, bytes.len())
                .copy_from(bytes.as_ptr(), bytes.len())
        }
    }

    fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        // SAFETY: as for `write`.
        unsafe { self.ptr(addr, len).copy_to(v.as_mut_ptr(), len) }
        v
    }

    fn byte(&self, addr: u64) -> u8 {
        self.read(addr, 1)[0]
    }

    /// SBALE `e` of SBAL `sbal`: eflags | reserved | scount | sflags | length (BE u32)
    /// | address (BE u64).
    fn set_sbale(&self, sbal: u64, e: u64, eflags: u8, length: u32, addr: u64) {
        let mut b = [0u8; 16];
        b[0] = eflags;
        b[4..8].copy_from_slice(&length.to_be_bytes());
        b[8..].copy_from_slice(&addr.to_be_bytes());
        self.write(sbal + 16 * e, &b);
    }

    fn sbale_length(&self, sbal: u64, e: u64) -> u32 {
        u32::from_be_bytes(self.read(sbal + 16 * e + 4, 4).try_into().unwrap())
    }

    /// Arms input buffer `n` with one page and hands it to the fabric (0x41).
    fn arm(&self, n: u64) {
        self.set_sbale(IN_SBALS + 256 * n, 0, 0, PAGE as u32, RX_DATA + PAGE * n);
        self.write(IN_SLSB + n, &[0x41]);
    }

    /// Primes output buffer `n` with one frame for `dest` (layer-3 header: id 0x01,
    /// unicast 0x06, length at 8, IPv4 next hop at 0x1C; LAST_ENTRY 0x40; SLSB 0x62).
    fn prime(&self, n: u64, dest: Ipv4Addr, packet: &[u8]) -> Vec<u8> {
        let mut frame = vec![0u8; 32 + packet.len()];
        frame[0] = 0x01;
        frame[1] = 0x06;
        frame[8..10].copy_from_slice(&(packet.len() as u16).to_be_bytes());
        frame[0x1C..0x20].copy_from_slice(&dest.octets());
        frame[32..].copy_from_slice(packet);
        let data = TX_DATA + PAGE * n;
        self.write(data, &frame);
        self.set_sbale(OUT_SBALS + 256 * n, 0, 0x40, frame.len() as u32, data);
        self.write(OUT_SLSB + n, &[0x62]);
        frame
    }

    fn out_state(&self, n: u64) -> u8 {
        self.byte(OUT_SLSB + n)
    }

    fn in_state(&self, n: u64) -> u8 {
        self.byte(IN_SLSB + n)
    }

    /// The sbalf15 reason of output buffer `n`.
    fn sbalf15(&self, n: u64) -> u8 {
        self.byte(OUT_SBALS + 256 * n + 16 * 15 + 3)
    }

    /// The frame in input buffer `n` (one element).
    fn received(&self, n: u64) -> Vec<u8> {
        let len = self.sbale_length(IN_SBALS + 256 * n, 0) as usize;
        self.read(RX_DATA + PAGE * n, len)
    }

    fn global(&self) -> u8 {
        self.byte(INDICATORS + 2)
    }

    /// The program takes the initiative: resets its bytes high → low.
    fn clear_indicators(&self) {
        self.write(INDICATORS + 2, &[0]);
        self.write(INDICATORS + 1, &[0]);
        self.write(INDICATORS, &[0]);
    }
}

fn params(cookie: u64) -> QueueSetParams {
    QueueSetParams {
        output_sbals: std::array::from_fn(|i| OUT_SBALS + 256 * i as u64),
        input_sbals: std::array::from_fn(|i| IN_SBALS + 256 * i as u64),
        output_slsb: OUT_SLSB,
        input_slsb: IN_SLSB,
        queue_indicator: INDICATORS,
        middle_indicator: INDICATORS + 1,
        global_indicator: INDICATORS + 2,
        interrupt_immediately: false,
        interrupt_cookie: cookie,
        ..Default::default()
    }
}

const Q0: u32 = 1 << 31;
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const A_SCH: u16 = 0x0100;
const B_SCH: u16 = 0x0200;
/// The hypervisor's cookies: vCPU in the high half, virtual INTID in the low.
const A_COOKIE: u64 = (3 << 32) | 48;
const B_COOKIE: u64 = (5 << 32) | 49;

fn pair() -> (Arc<Hv>, Guest, Guest) {
    let f = fabric();
    let a = Guest::attach(&f, 1, A_SCH, A_COOKIE, A_IP);
    let b = Guest::attach(&f, 2, B_SCH, B_COOKIE, B_IP);
    (f, a, b)
}

// ---------------------------------------------------------------------------------
// The embedding example, end to end.

#[test]
fn a_frame_from_raw_bytes_to_raw_bytes() {
    let (f, a, b) = pair();
    b.arm(0);
    let frame = a.prime(0, B_IP, b"from A to B");
    let r = f.siga(a.lpar, A_SCH, 0, Q0).unwrap();
    assert_eq!((r.buffers, r.delivered, r.refused, r.frames), (1, 1, 0, 1));
    assert_eq!(r.bytes, 11);
    assert_eq!((a.out_state(0), b.in_state(0)), (0xA1, 0x82));
    assert_eq!(b.received(0), frame);
    assert_eq!(b.global(), 1);
    // The interrupt went where B's cookie says, and was counted as posted.
    let raised = f.platform().take_raised();
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].0.lpar, b.lpar);
    assert_eq!(raised[0].0.subchannel, B_SCH);
    assert_eq!(raised[0].0.cookie, B_COOKIE);
    assert_eq!(r.interrupts, 1);
    let c = f.counters_of(b.lpar, B_SCH).unwrap();
    assert_eq!((c.interrupts_raised, c.interrupts_dropped), (1, 0));
}

// ---------------------------------------------------------------------------------
// Item 5: the cookie and the delivery result.

#[test]
fn each_queue_set_interrupts_with_its_own_cookie() {
    let f = fabric();
    let a = Guest::attach(&f, 1, A_SCH, A_COOKIE, A_IP);
    let b = Guest::attach(&f, 2, B_SCH, B_COOKIE, B_IP);
    a.arm(0);
    b.arm(0);
    a.prime(0, B_IP, b"to B");
    b.prime(0, A_IP, b"to A");
    f.siga_write(a.lpar, A_SCH, Q0).unwrap();
    f.siga_write(b.lpar, B_SCH, Q0).unwrap();
    let cookies: Vec<(u8, u64)> = f
        .platform()
        .take_raised()
        .iter()
        .map(|(t, _)| (t.lpar, t.cookie))
        .collect();
    assert_eq!(cookies, [(2, B_COOKIE), (1, A_COOKIE)]);
}

#[test]
fn a_dropped_interrupt_is_not_counted_as_raised_and_the_fallback_raises_it_again() {
    let (f, a, b) = pair();
    let hv = f.platform();
    hv.refuse.store(true, Ordering::SeqCst);
    b.arm(0);
    a.prime(0, B_IP, b"lost interrupt");
    let r = f.siga_write(a.lpar, A_SCH, Q0).unwrap();
    assert_eq!((r.delivered, r.interrupts, r.interrupts_dropped), (1, 0, 1));
    assert_eq!(b.in_state(0), 0x82, "the frame itself is delivered");
    let c = f.counters_of(b.lpar, B_SCH).unwrap();
    assert_eq!(
        (
            c.interrupts_raised,
            c.interrupts_dropped,
            c.interrupts_suppressed
        ),
        (0, 1, 0)
    );
    assert_eq!(hv.take_raised()[0].1, InterruptDelivery::Dropped);

    // The summary stays pending: before the delay nothing, after it the fallback
    // raises again; still dropped, then posted once the controller accepts.
    let d = f.try_expire_delays();
    assert_eq!((d.raised, d.dropped), (0, 0), "the delay has not run out");
    hv.clock.store(DELAY_NS, Ordering::SeqCst);
    let d = f.try_expire_delays();
    assert_eq!(
        (d.raised, d.dropped, d.skipped, d.table_busy),
        (0, 1, 0, false)
    );
    hv.refuse.store(false, Ordering::SeqCst);
    hv.clock.store(2 * DELAY_NS, Ordering::SeqCst);
    let d = f.try_expire_delays();
    assert_eq!((d.raised, d.dropped), (1, 0));
    let raised = hv.take_raised();
    assert_eq!(raised.len(), 2);
    assert!(raised.iter().all(|(t, _)| t.cookie == B_COOKIE));
    assert_eq!(raised[1].1, InterruptDelivery::Delivered);
    let c = f.counters_of(b.lpar, B_SCH).unwrap();
    assert_eq!((c.interrupts_raised, c.interrupts_dropped), (1, 2));
}

// ---------------------------------------------------------------------------------
// Item 4: suspend and resume.

#[test]
fn sends_to_a_suspended_partition_are_refused_target_full_and_touch_nothing() {
    let (f, a, b) = pair();
    // B has one frame waiting and two more buffers armed.
    b.arm(0);
    b.arm(1);
    b.arm(2);
    let first = a.prime(0, B_IP, b"before");
    f.siga_write(a.lpar, A_SCH, Q0).unwrap();
    assert_eq!(b.in_state(0), 0x82);
    let b_before = b.read(BASE, RAM);
    let addresses = f.address_count();

    f.suspend(b.lpar).unwrap();
    f.suspend(b.lpar).unwrap(); // again: no change
    let second = a.prime(1, B_IP, b"while suspended");
    let r = f.siga_write(a.lpar, A_SCH, Q0).unwrap();
    assert_eq!((r.buffers, r.delivered, r.refused), (1, 0, 1));
    assert_eq!(a.out_state(1), 0xAF);
    assert_eq!(a.sbalf15(1), Reason::TargetFull.code());
    assert!(Reason::TargetFull.is_retryable());
    // Not one byte of B changed: its waiting frame, its armed buffers, its indicators.
    assert!(
        b.read(BASE, RAM) == b_before,
        "a suspended partition's RAM changed"
    );
    assert_eq!(b.received(0), first);
    assert_eq!(f.address_count(), addresses, "registrations kept");
    let c = f.counters_of(b.lpar, B_SCH).unwrap();
    assert_eq!((c.refused_suspended, c.refused_full), (1, 0));

    // Resumed: the same frame, primed again (in A's next buffer: the cursor moved on
    // past the refused one), goes through into B's next buffer.
    f.resume(b.lpar).unwrap();
    assert_eq!(a.prime(2, B_IP, b"while suspended"), second);
    let r = f.siga_write(a.lpar, A_SCH, Q0).unwrap();
    assert_eq!(r.delivered, 1);
    assert_eq!(
        (b.in_state(0), b.in_state(1), b.in_state(2)),
        (0x82, 0x82, 0x41)
    );
    assert_eq!(b.received(0), first);
    assert_eq!(b.received(1), second);
}

#[test]
fn a_suspended_partition_sends_nothing_and_loses_nothing() {
    let (f, a, b) = pair();
    a.arm(0);
    b.prime(0, A_IP, b"one");
    b.prime(1, A_IP, b"two");
    f.suspend(b.lpar).unwrap();
    for function in [0, 3] {
        let e = f.siga(b.lpar, B_SCH, function, Q0).unwrap_err();
        assert_eq!(e, SigaError::Suspended);
        assert_eq!(e.condition_code(), ConditionCode::Cc2);
        assert_eq!(e.busy_bit(), SIGA_BUSY_BIT, "a program retries");
    }
    assert_eq!((b.out_state(0), b.out_state(1)), (0x62, 0x62));
    assert_eq!(a.in_state(0), 0x41);
    // A subchannel it never established still answers cc3 (permanent beats retry).
    assert_eq!(f.siga_write(b.lpar, 0x0999, Q0), Err(SigaError::NotIqdio));

    f.resume(b.lpar).unwrap();
    f.resume(b.lpar).unwrap(); // again: no change
    a.arm(1);
    let r = f.siga_write_multiple(b.lpar, B_SCH, Q0).unwrap();
    assert_eq!(
        (r.buffers, r.delivered),
        (2, 2),
        "both, in order, from the cursor"
    );
    assert_eq!(&a.received(0)[32..], b"one");
    assert_eq!(&a.received(1)[32..], b"two");
}

#[test]
fn a_suspended_partition_gets_no_fallback_interrupt_until_it_is_resumed() {
    let (f, a, b) = pair();
    let hv = f.platform();
    b.arm(0);
    b.arm(1);
    a.prime(0, B_IP, b"first");
    f.siga_write(a.lpar, A_SCH, Q0).unwrap();
    assert_eq!(hv.take_raised().len(), 1);
    // B does not clear its summary; it is suspended, and the delay runs out.
    f.suspend(b.lpar).unwrap();
    hv.clock.store(5 * DELAY_NS, Ordering::SeqCst);
    assert_eq!(f.expire_delays(), 0);
    assert_eq!(f.try_expire_delays().raised, 0);
    assert!(hv.take_raised().is_empty());
    // Resumed: the pending summary's fallback fires at the first run.
    f.resume(b.lpar).unwrap();
    assert_eq!(f.expire_delays(), 1);
    let raised = hv.take_raised();
    assert_eq!(raised.len(), 1);
    assert_eq!(raised[0].0.cookie, B_COOKIE);
    // And B, once it takes the initiative, receives as before.
    b.clear_indicators();
    a.prime(1, B_IP, b"second");
    f.siga_write(a.lpar, A_SCH, Q0).unwrap();
    assert_eq!(b.in_state(1), 0x82);
    assert_eq!(hv.take_raised().len(), 1, "idle summary → pending raises");
}

#[test]
fn suspend_and_resume_name_known_partitions_and_survive_updates() {
    let (f, a, b) = pair();
    assert_eq!(f.suspend(9), Err(RegistrationError::UnknownPartition));
    assert_eq!(f.resume(9), Err(RegistrationError::UnknownPartition));
    // The hypervisor's own updates work on a suspended partition.
    f.suspend(b.lpar).unwrap();
    let extra = IpAddr::V4(Ipv4Addr::new(10, 9, 0, 3));
    f.register_address(b.lpar, B_SCH, extra).unwrap();
    f.deregister_address(b.lpar, B_SCH, extra).unwrap();
    f.resume(b.lpar).unwrap();
    b.arm(0);
    a.prime(0, B_IP, b"after");
    assert_eq!(f.siga_write(a.lpar, A_SCH, Q0).unwrap().delivered, 1);
    // Removed while suspended: gone, senders see unreachable.
    f.suspend(b.lpar).unwrap();
    f.remove_partition(b.lpar).unwrap();
    a.prime(1, B_IP, b"gone");
    f.siga_write(a.lpar, A_SCH, Q0).unwrap();
    assert_eq!(a.sbalf15(1), Reason::Unreachable.code());
    assert_eq!(f.resume(b.lpar), Err(RegistrationError::UnknownPartition));
}

// ---------------------------------------------------------------------------------
// Item 1: the execution contract, as the embedder's platform reports it.

#[test]
fn from_interrupt_context_nothing_waits_and_nothing_is_done() {
    let (f, a, b) = pair();
    let hv = f.platform();
    b.arm(0);
    a.prime(0, B_IP, b"contract");
    for context in [2, 3] {
        hv.context.store(context, Ordering::SeqCst);
        let e = f.siga_write(a.lpar, A_SCH, Q0).unwrap_err();
        assert_eq!(e, SigaError::InterruptContext);
        assert_eq!((e.condition_code(), e.busy_bit()), (ConditionCode::Cc2, 0));
        assert_eq!(f.suspend(b.lpar), Err(RegistrationError::InterruptContext));
        assert_eq!(f.resume(b.lpar), Err(RegistrationError::InterruptContext));
        assert_eq!(
            f.establish(a.lpar, 0x0300, &params(0)),
            Err(RegistrationError::InterruptContext)
        );
        assert_eq!(a.out_state(0), 0x62, "nothing sent");
        // The delay fallback never waits: safe from here, and the table is free.
        assert!(!f.try_expire_delays().table_busy);
        assert_eq!(f.expire_delays(), 0);
    }
    hv.context.store(1, Ordering::SeqCst); // masked: as an EL2 trap handler runs
    assert_eq!(f.siga_write(a.lpar, A_SCH, Q0).unwrap().delivered, 1);
    assert_eq!(b.in_state(0), 0x82);
}

// ---------------------------------------------------------------------------------
// Item 6: error manners.

fn is_error<E: core::error::Error + Send + Sync + 'static>(e: E) -> Box<dyn std::error::Error> {
    Box::new(e)
}

#[test]
fn errors_are_core_errors_with_messages_that_name_their_codes() {
    let (f, _a, b) = pair();
    let e = f
        .register_address(b.lpar, B_SCH, IpAddr::V4(B_IP))
        .unwrap_err();
    assert_eq!(is_error(e).to_string(), "duplicate found (0xE005)");
    f.suspend(b.lpar).unwrap();
    let e = f.siga_write(b.lpar, B_SCH, Q0).unwrap_err();
    assert_eq!(
        is_error(e).to_string(),
        "SIGA: partition suspended, retry (cc2, busy)"
    );
    let send = iqdio::driver::SendError::Refused(Reason::TargetFull);
    let boxed = is_error(send);
    assert_eq!(
        boxed.to_string(),
        "send refused: target receive queue full (sbalf15 0x10)"
    );
    assert_eq!(
        boxed.source().map(|s| s.to_string()),
        Some(Reason::TargetFull.to_string())
    );
    is_error(iqdio::driver::DriverError::NoFreeBuffer);
    is_error(iqdio::qdio::HeaderError::AddressFamily);
    #[cfg(feature = "smoltcp")]
    is_error(iqdio::phy::DeviceError::RxBufferTooSmall { needed: 1 });
}
