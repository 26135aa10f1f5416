//! The hostile partition (`cargo xtask run --scenario hostile`): it tries to read and
//! write another partition's window and the hypervisor's memory by plain loads and
//! stores, through SBALEs, through the establish block and through the console call.
//!
//! The hypervisor runs it several times: run 0 makes every attempt that must end in a
//! refusal code, then drives a virtio-net device with bad rings (`crate::badring`), and
//! reports (attempts, refused, escaped, bad rings tried, bad rings refused); run k > 0 makes stop attempt k,
//! which must end the partition: the hypervisor stops it (stage-2 fault, SMC, unknown
//! HVC), or, for an undefined instruction (taken at EL1 by the partition's own vectors),
//! its own handler ends it with a panic exit. Execution that goes on after a stop
//! attempt is an escape, reported as such. Addresses of other memory are the machine's
//! physical ones (the QEMU `virt` map the hypervisor uses): as guest addresses they must
//! lead nowhere.

use core::net::IpAddr;

use iqdio::driver::{DriverConfig, Indicators, QueueDriver, Region};
use iqdio::qdio::{SlsbState, qaob};
use iqdio::{QueueField, Reason, RegistrationError, Siga, SigaError, SigaFunction, SigaStatus};
use iqdio_hvc::{
    BLOCK_MAX, EstablishBlock, ExitStatus, HVC_CONSOLE_WRITE, HVC_DEREGISTER_ADDRESS,
    HVC_DEREGISTER_QUEUE_SET, HVC_ESTABLISH, HVC_JOIN_VLAN, HVC_REGISTER_GROUP_MAC,
    HVC_REGISTER_MAC, RC_BAD_ARGUMENT, RC_BAD_BLOCK, RC_OK, RC_OUTSIDE_MEMORY, SL_LEN, encode_sl,
    ip_to_registers, mac_to_register,
};

use crate::node::{self, MFS, v4};
use crate::rt::{self, HvcSiga, hvc};
use crate::say;

use iqdio_hvc::hostile::{
    GICD, HYPERVISOR, HYPERVISOR_TARGET, OTHER_WINDOW, OTHER_WINDOW_TARGET, UART,
};

/// One past this partition's window (IPA).
const WINDOW_END: u64 = rt::WINDOW_BASE + (48 << 20);

struct Tally {
    attempts: u64,
    refused: u64,
    escaped: u64,
}

impl Tally {
    fn expect(&mut self, what: &str, refused: bool) {
        self.attempts += 1;
        if refused {
            self.refused += 1;
        } else {
            self.escaped += 1;
            say!("hostile: NOT refused: {}", what);
        }
    }
}

fn rc_is(rc: u64, code: u64) -> bool {
    rc == code
}

fn outside(field: QueueField) -> u64 {
    u64::from(RegistrationError::OutsideMemory(field).code())
}

/// Run 0: every attempt that must be refused, with the exact code.
pub fn refusals(lpar: usize) -> ! {
    let mut t = Tally {
        attempts: 0,
        refused: 0,
        escaped: 0,
    };
    // The console call with text elsewhere.
    for (what, addr, len) in [
        (
            "console text in another partition's window",
            OTHER_WINDOW,
            16,
        ),
        ("console text in the hypervisor's memory", HYPERVISOR, 16),
        (
            "console text straddling the window's end",
            WINDOW_END - 8,
            16,
        ),
        ("console text wrapping the address space", u64::MAX - 4, 16),
    ] {
        let rc = hvc(HVC_CONSOLE_WRITE, addr, len, 0, 0, 0).0;
        t.expect(what, rc_is(rc, RC_OUTSIDE_MEMORY));
    }
    // The establish block elsewhere.
    for (what, addr) in [
        ("establish block in the hypervisor's memory", HYPERVISOR),
        (
            "establish block in another partition's window",
            OTHER_WINDOW,
        ),
    ] {
        let rc = hvc(HVC_ESTABLISH, 0, addr, 0, 0, 0).0;
        t.expect(what, rc_is(rc, RC_OUTSIDE_MEMORY));
    }
    // A block of its own whose storage list, SBALs, SLSB or indicator lie elsewhere.
    let mut region = node::region();
    let Ok(indicators) = Indicators::new(&mut region) else {
        rt::exit(ExitStatus::Failure, [0; 5])
    };
    // Two output queues (a unicast one and the multicast queue), as many as the
    // hypervisor's fabric offers.
    let config = DriverConfig {
        rx_buffers: 4,
        tx_buffers: 4,
        output_queues: 2,
        ..DriverConfig::new(0, MFS)
    };
    let Ok(mut queue) = QueueDriver::new(&mut region, &indicators, config) else {
        rt::exit(ExitStatus::Failure, [0; 5])
    };
    let p = queue.params();
    /// The block, the input storage list, the two output storage lists.
    type Area = ([u8; BLOCK_MAX], [u8; SL_LEN], [[u8; SL_LEN]; 2]);
    static AREA: spin::Mutex<Area> =
        spin::Mutex::new(([0; BLOCK_MAX], [0; SL_LEN], [[0; SL_LEN]; 2]));
    // The block for `p` (its first two output queues), output queue 0's storage list
    // at `foreign_sl` if given; `edit` may change the block's bytes before the call.
    let establish_edited = |p: &iqdio::QueueSetParams,
                            foreign_sl: Option<u64>,
                            edit: &dyn Fn(&mut [u8; BLOCK_MAX])| {
        let mut a = AREA.lock();
        let a = &mut *a;
        a.1 = encode_sl(&p.input_sbals);
        a.2[0] = encode_sl(&p.output_sbals);
        if let Some(o) = p.more_outputs.first() {
            a.2[1] = encode_sl(&o.sbals);
        }
        let sls = [
            foreign_sl.unwrap_or(a.2[0].as_ptr() as u64),
            a.2[1].as_ptr() as u64,
        ];
        a.0 = EstablishBlock::for_params(p, a.1.as_ptr() as u64, &sls).encode();
        edit(&mut a.0);
        hvc(HVC_ESTABLISH, 0, a.0.as_ptr() as u64, 0, 0, 0).0
    };
    let establish = |p: &iqdio::QueueSetParams, foreign_sl: Option<u64>| {
        establish_edited(p, foreign_sl, &|_| {})
    };
    let rc = establish(&p, Some(OTHER_WINDOW));
    t.expect(
        "storage list in another partition's window",
        rc_is(rc, RC_OUTSIDE_MEMORY),
    );
    let mut bad = p.clone();
    bad.output_sbals[3] = OTHER_WINDOW;
    let rc = establish(&bad, None);
    t.expect(
        "SBAL in another partition's window",
        rc_is(rc, outside(QueueField::OutputSbal(3))),
    );
    let mut bad = p.clone();
    bad.input_slsb = HYPERVISOR;
    let rc = establish(&bad, None);
    t.expect(
        "SLSB in the hypervisor's memory",
        rc_is(rc, outside(QueueField::InputSlsb)),
    );
    let mut bad = p.clone();
    bad.global_indicator = GICD;
    let rc = establish(&bad, None);
    t.expect(
        "indicator on the GIC distributor",
        rc_is(rc, outside(QueueField::GlobalIndicator)),
    );
    let mut bad = p.clone();
    if let Some(o) = bad.more_outputs.first_mut() {
        o.slsb = OTHER_WINDOW;
    }
    let rc = establish(&bad, None);
    t.expect(
        "multicast queue's SLSB in another partition's window",
        rc_is(rc, outside(QueueField::OutputQueueSlsb(1))),
    );
    // An output queue count the block format does not have (5), and one beyond the
    // fabric's two: a malformed block, and 0xF012.
    let rc = establish_edited(&p, None, &|b| b[3] = 5);
    t.expect(
        "establish block with 5 output queues",
        rc_is(rc, RC_BAD_BLOCK),
    );
    let mut three = DriverConfig {
        output_queues: 3,
        ..config
    };
    three.subchannel = 1;
    match QueueDriver::new(&mut region, &indicators, three) {
        Ok(q3) => {
            let rc = node::establish_params(1, &q3.params());
            t.expect(
                "more output queues than the fabric offers",
                rc_is(rc, u64::from(RegistrationError::OutputQueues.code())),
            );
        }
        Err(_) => t.expect("a driver of three output queues", false),
    }
    // Now a queue set of its own, to send from.
    if establish(&p, None) != RC_OK || node::register_address(0, v4(lpar)) != RC_OK {
        say!("hostile: could not establish its own queue set");
        rt::exit(
            ExitStatus::Failure,
            [t.attempts, t.refused, t.escaped, 0, 0],
        );
    }
    // SBALEs naming memory elsewhere: the buffer ends 0xAF, reason 0x22.
    for (what, addr) in [
        ("SBALE into another partition's window", OTHER_WINDOW),
        ("SBALE into the hypervisor's memory", HYPERVISOR),
        ("SBALE onto the UART", UART),
    ] {
        let refused = match queue.prime(v4(0), &[0x66; 64]) {
            Ok(n) => {
                point_first_element(&p.output_sbals, n, addr);
                let report = queue.flush(&HvcSiga);
                report.is_ok_and(|r| {
                    r.refused
                        .iter()
                        .any(|&(_, reason)| reason == Reason::AddressOutsideMemory)
                }) && queue.output_state(n) == SlsbState::OUTPUT_ERROR
            }
            Err(_) => false,
        };
        t.expect(what, refused);
    }
    // A queue mask naming output queue 2, which its queue set did not establish (it
    // has 0 and 1): cc1, as for a mask naming nothing.
    let r = HvcSiga.siga(0, SigaFunction::Write, 1 << 29);
    t.expect(
        "SIGA mask naming an output queue not established",
        r == SigaStatus::of_error(SigaError::InvalidQueueMask),
    );
    // A multicast frame on the unicast queue: primed as unicast, then its header's
    // cast rewritten to multicast with a group as next hop, as qeth never sends it
    // (it forces unicast there): the buffer ends 0xAF, reason 0x27.
    let refused = match queue.prime(v4(0), &[0x77; 64]) {
        Ok(n) => {
            rewrite_as_multicast(&p.output_sbals, n);
            let report = queue.flush(&HvcSiga);
            report.is_ok_and(|r| {
                r.refused
                    .iter()
                    .any(|&(_, reason)| reason == Reason::CastType)
            }) && queue.output_state(n) == SlsbState::OUTPUT_ERROR
        }
        Err(_) => false,
    };
    t.expect("multicast cast on the unicast queue", refused);
    // A unicast address (its own) as a group; the broadcast switch with a value
    // other than 0 or 1; leaving a group it never joined.
    let rc = node::join_group(0, v4(lpar));
    t.expect(
        "joining a unicast address as a group",
        rc_is(rc, u64::from(RegistrationError::InvalidAddress.code())),
    );
    let rc = node::set_broadcast(0, 2);
    t.expect("broadcast switch of 2", rc_is(rc, RC_BAD_ARGUMENT));
    let rc = node::leave_group(0, iqdio_hvc::multicast::GROUPS[0]);
    t.expect(
        "leaving a group it is not a member of",
        rc_is(rc, u64::from(RegistrationError::NotFound.code())),
    );
    // Joining groups until the fabric says no: its address quota or the target table
    // (which groups share with addresses) ends it, with that code; then every group it
    // got is left again, so the table is as before.
    let group = |k: u16| IpAddr::V4(core::net::Ipv4Addr::new(239, 9, (k >> 8) as u8, k as u8));
    let (mut joined, mut last) = (0u16, 0u64);
    while joined < 1024 {
        last = node::join_group(0, group(joined));
        if last != 0 {
            break;
        }
        joined += 1;
    }
    let full = last == u64::from(RegistrationError::AddressQuota.code())
        || last == u64::from(RegistrationError::TableFull.code());
    let left = (0..joined).all(|k| node::leave_group(0, group(k)) == 0);
    t.expect(
        "joining groups until its quota or the group table is full",
        full && left,
    );
    // SIGA on a subchannel it never established (another partition's number 0 is its
    // own here: the LPAR comes from the trap, never from a register).
    let r = HvcSiga.siga(1, SigaFunction::Write, 1 << 31);
    t.expect(
        "SIGA on a subchannel that is not its own",
        r == SigaStatus::of_error(SigaError::NotIqdio),
    );
    // Another partition's address: taking it, removing it.
    let rc = node::register_address(0, v4(0));
    t.expect(
        "registering another partition's address",
        rc_is(rc, u64::from(RegistrationError::DuplicateFound.code())),
    );
    let (family, hi, lo) = ip_to_registers(v4(0));
    let rc = hvc(HVC_DEREGISTER_ADDRESS, 0, family, hi, lo, 0).0;
    t.expect(
        "deregistering another partition's address",
        rc_is(rc, u64::from(RegistrationError::NotFound.code())),
    );
    let rc = hvc(HVC_DEREGISTER_QUEUE_SET, 7, 0, 0, 0, 0).0;
    t.expect("deregistering a queue set it does not have", rc != RC_OK);
    layer2(&mut t, lpar, &mut queue, &p);
    qaob_cases(&mut t, &mut region, &indicators);
    let _: IpAddr = v4(lpar);
    say!(
        "hostile: {} attempts, {} refused, {} escaped",
        t.attempts,
        t.refused,
        t.escaped
    );
    // The virtio-net device the hypervisor gave this run, driven with bad rings: their
    // escapes are escapes too.
    let rings = crate::badring::run(lpar);
    t.escaped += rings.escaped;
    let status = if t.escaped == 0 {
        ExitStatus::Pass
    } else {
        ExitStatus::Failure
    };
    rt::exit(
        status,
        [t.attempts, t.refused, t.escaped, rings.tried, rings.refused],
    )
}

/// The layer-2 cases: the other layer's calls and frames, then, on a layer-2 queue set
/// that replaces the layer-3 one, frames whose layer-2 header lies: the other layer's
/// id, a VLAN flag the frame's tag contradicts, an Ethernet frame too short, a VLAN the
/// set did not join. Each refused with its code.
fn layer2(t: &mut Tally, lpar: usize, queue: &mut QueueDriver, p: &iqdio::QueueSetParams) {
    let wrong_layer = u64::from(RegistrationError::WrongLayer.code());
    let mac = [0x02, 0, 0, 0, 0xEE, lpar as u8];
    let rc = hvc(HVC_REGISTER_MAC, 0, mac_to_register(mac), 0, 0, 0).0;
    t.expect(
        "registering a MAC on a layer-3 queue set",
        rc_is(rc, wrong_layer),
    );
    let rc = hvc(HVC_JOIN_VLAN, 0, 10, 0, 0, 0).0;
    t.expect(
        "joining a VLAN on a layer-3 queue set",
        rc_is(rc, wrong_layer),
    );
    // A layer-2 header (id 0x02) on the layer-3 set: 0x2B.
    let refused = match queue.prime(v4(0), &[0x55; 64]) {
        Ok(n) => {
            edit_frame(&p.output_sbals, n, |h| h[0] = 0x02, None);
            refused_with(queue, 0, n, Reason::WrongLayer)
        }
        Err(_) => false,
    };
    t.expect("a layer-2 header on a layer-3 queue set", refused);
    // The layer-3 set goes; a layer-2 one takes subchannel 0 (one queue set per
    // partition in the hypervisor's fabric).
    if hvc(HVC_DEREGISTER_QUEUE_SET, 0, 0, 0, 0, 0).0 != RC_OK {
        t.expect("deregistering its own layer-3 queue set", false);
        return;
    }
    let mut region = node::region();
    let Ok(ind) = Indicators::new(&mut region) else {
        t.expect("indicators for the layer-2 queue set", false);
        return;
    };
    let config = DriverConfig {
        rx_buffers: 4,
        tx_buffers: 4,
        ..DriverConfig::layer2(0, MFS)
    };
    let Ok(mut l2q) = QueueDriver::new(&mut region, &ind, config) else {
        t.expect("a layer-2 driver", false);
        return;
    };
    let p2 = l2q.params();
    if node::establish(&l2q) != RC_OK
        || hvc(HVC_REGISTER_MAC, 0, mac_to_register(mac), 0, 0, 0).0 != RC_OK
        || hvc(HVC_JOIN_VLAN, 0, 30, 0, 0, 0).0 != RC_OK
    {
        t.expect("a layer-2 queue set of its own", false);
        return;
    }
    let invalid = u64::from(RegistrationError::InvalidAddress.code());
    let rc = hvc(HVC_JOIN_VLAN, 0, 4095, 0, 0, 0).0;
    t.expect("joining VLAN 4095", rc_is(rc, invalid));
    let rc = hvc(HVC_REGISTER_GROUP_MAC, 0, mac_to_register(mac), 0, 0, 0).0;
    t.expect("a unicast MAC as a group MAC", rc_is(rc, invalid));
    let rc = hvc(HVC_REGISTER_MAC, 0, 1 << 48, 0, 0, 0).0;
    t.expect(
        "a MAC register with bits above 48",
        rc_is(rc, RC_BAD_ARGUMENT),
    );
    let rc = node::register_address(0, v4(lpar));
    t.expect(
        "registering an IP address on a layer-2 queue set",
        rc_is(rc, wrong_layer),
    );
    // Frames to a MAC nobody has, tagged with VLAN 30 (joined) unless said otherwise.
    let frame = |vid: u16| {
        let mut f = [0u8; 64];
        f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0xEE, 0x7F]);
        f[6..12].copy_from_slice(&mac);
        f[12..14].copy_from_slice(&0x8100u16.to_be_bytes());
        f[14..16].copy_from_slice(&vid.to_be_bytes());
        f[16..18].copy_from_slice(&0x88B5u16.to_be_bytes());
        f
    };
    type Edit = (&'static str, u16, fn(&mut [u8; 32]), Option<u32>, Reason);
    let cases: [Edit; 4] = [
        (
            "a layer-3 header on a layer-2 queue set",
            30,
            |h| h[0] = 0x01,
            None,
            Reason::WrongLayer,
        ),
        (
            "a layer-2 header whose VLAN flag the frame's tag contradicts",
            30,
            |h| h[3] &= !0x10,
            None,
            Reason::VlanMismatch,
        ),
        (
            "an Ethernet frame of 10 bytes",
            30,
            |h| h[6..8].copy_from_slice(&10u16.to_be_bytes()),
            Some(32 + 10),
            Reason::EthernetFrame,
        ),
        (
            "a frame on a VLAN it did not join",
            40,
            |_| {},
            None,
            Reason::NotOnVlan,
        ),
    ];
    for (what, vid, edit, len, want) in cases {
        let refused = match l2q.prime_eth(&frame(vid)) {
            Ok((q, n)) => {
                let sbals = if q == 0 {
                    &p2.output_sbals
                } else {
                    &p2.more_outputs[0].sbals
                };
                edit_frame(sbals, n, edit, len);
                refused_with(&mut l2q, q, n, want)
            }
            Err(_) => false,
        };
        t.expect(what, refused);
    }
}

/// Whether flushing makes output buffer `n` of queue `q` end 0xAF with `want`.
fn refused_with(queue: &mut QueueDriver, q: u8, n: u8, want: Reason) -> bool {
    let report = queue.flush(&HvcSiga);
    report.is_ok_and(|r| r.refused.iter().any(|&(_, reason)| reason == want))
        && queue.output_state_on(q, n) == SlsbState::OUTPUT_ERROR
}

/// Rewrites the 32-byte header of the first frame of output buffer `n` (after the
/// driver primed it) with `edit`, and element 0's length to `len` if given.
fn edit_frame(sbals: &[u64; 128], n: u8, edit: impl FnOnce(&mut [u8; 32]), len: Option<u32>) {
    let element = sbals[usize::from(n)] as usize;
    let addr = core::ptr::with_exposed_provenance::<u64>(element + 8);
    // SAFETY: the SBAL is this partition's own memory (the driver's output ring, primed
    // and not yet sent), identity-mapped; element addresses are big-endian.
    let header = u64::from_be(unsafe { addr.read_volatile() }) as usize;
    let bytes = core::ptr::with_exposed_provenance_mut::<u8>(header);
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        // SAFETY: the header is the frame's first 32 bytes in the buffer's own data (the
        // driver wrote it there, whole in element 0), this partition's memory, which
        // the fabric reads only during the SIGA that follows.
        *b = unsafe { bytes.add(i).read_volatile() };
    }
    edit(&mut h);
    for (i, b) in h.into_iter().enumerate() {
        // SAFETY: as the read above.
        unsafe { bytes.add(i).write_volatile(b) };
    }
    if let Some(len) = len {
        let field = core::ptr::with_exposed_provenance_mut::<u32>(element + 4);
        // SAFETY: element 0's length field of the same SBAL (big-endian), this
        // partition's own memory, not yet sent.
        unsafe { field.write_volatile(len.to_be()) };
    }
}

/// The address its completion-queue queue set registers (and sends to: the fabric
/// delivers a unicast frame to its sender's own queue set like to any other).
fn own_receiver() -> IpAddr {
    IpAddr::V4(core::net::Ipv4Addr::new(10, 0, 0, 200))
}

/// Completions taken within `ns` (the hypervisor's tick delivers and posts them).
fn completions_within(queue: &mut QueueDriver, ns: u64) -> heapless::Vec<u8, 16> {
    let mut codes = heapless::Vec::new();
    let deadline = rt::now_ns() + ns;
    while codes.is_empty() && rt::now_ns() < deadline {
        queue.complete(|c| {
            let _ = codes.push(c.aorc);
        });
    }
    codes
}

/// The completion queue's attempts (SIGA WRITEQ and QAOBs), on a queue set with a
/// completion queue that replaces its first one (the hypervisor's fabric gives a
/// partition one) and sends to itself (two input buffers, taken only when told). A
/// QAOB elsewhere or misaligned: 0xAF, 0x2A. Another buffer naming the QAOB of a
/// buffer still pending: 0xAF, 0x2A. A QAOB rewritten while its buffer is pending, to
/// name the hypervisor's memory: completes with 0x22 and delivers nothing.
/// Its completion queue made full (every buffer taken from the fabric): the completion
/// waits, and comes once one is armed.
fn qaob_cases(t: &mut Tally, region: &mut Region, indicators: &Indicators) {
    let config = DriverConfig {
        rx_buffers: 2,
        tx_buffers: 4,
        completion_queue: true,
        ..DriverConfig::new(0, MFS)
    };
    let set_up = hvc(HVC_DEREGISTER_QUEUE_SET, 0, 0, 0, 0, 0).0 == RC_OK;
    let tx = QueueDriver::new(region, indicators, config);
    let Some(mut tx) = tx.ok().filter(|_| set_up) else {
        say!("hostile: no queue set for the completion-queue cases");
        t.expect("completion-queue cases set up", false);
        return;
    };
    if node::establish(&tx) != RC_OK || node::register_address(0, own_receiver()) != RC_OK {
        t.expect("completion-queue cases set up", false);
        return;
    }
    // Bad QAOB addresses: checked before anything else, the buffer refused 0x2A.
    for (what, bad) in [
        (
            "WRITEQ with a QAOB in another partition's window",
            OTHER_WINDOW,
        ),
        ("WRITEQ with a QAOB in the hypervisor's memory", HYPERVISOR),
        (
            "WRITEQ with a QAOB straddling the window's end",
            WINDOW_END - 128,
        ),
        (
            "WRITEQ with a misaligned QAOB",
            tx.qaob_address(0, 0).unwrap_or(0) + 8,
        ),
    ] {
        let refused = match tx.prime(own_receiver(), &[0x51; 64]) {
            Ok(n) => {
                let status = HvcSiga.siga_writeq(0, 1 << 31, bad);
                let ok = status.is_done()
                    && tx.output_state(n) == SlsbState::OUTPUT_ERROR
                    && tx.reason(n) == Reason::QaobInvalid;
                // The driver counted the buffer primed; a flush sends nothing more
                // (it reads 0xAF) and settles its count.
                let _ = tx.flush(&HvcSiga);
                ok
            }
            Err(_) => false,
        };
        t.expect(what, refused);
    }
    // Fill its own receive ring: two delivered, the third pending.
    for k in 0..3u8 {
        if tx.send(&HvcSiga, own_receiver(), &[k; 64]).is_err() {
            t.expect("completion-queue cases: sends", false);
            return;
        }
    }
    let n = tx.last_primed();
    let pending = tx.output_state(n) == SlsbState::OUTPUT_PENDING;
    t.expect("a buffer to a full receiver goes PENDING", pending);
    // Another buffer naming that QAOB while it is still pending: refused 0x2A, the
    // QAOB left as it was (the case below still finds the pending buffer's record).
    let in_flight = tx.qaob_address(0, n).unwrap_or(0);
    let refused = match tx.prime(own_receiver(), &[0x52; 64]) {
        Ok(m) => {
            let status = HvcSiga.siga_writeq(0, 1 << 31, in_flight);
            let ok = status.is_done()
                && tx.output_state(m) == SlsbState::OUTPUT_ERROR
                && tx.reason(m) == Reason::QaobInvalid
                && tx.output_state(n) == SlsbState::OUTPUT_PENDING;
            let _ = tx.flush(&HvcSiga);
            ok
        }
        Err(_) => false,
    };
    t.expect("WRITEQ naming the QAOB of a buffer still pending", refused);
    // Rewrite the pending buffer's recorded element to name the hypervisor's memory.
    if let Some(q) = tx.qaob_address(0, n) {
        let field = core::ptr::with_exposed_provenance_mut::<u64>((q as usize) + qaob::SBA);
        // SAFETY: the QAOB is this partition's own memory (the driver's, identity
        // mapped); the fabric reads it only when it delivers the pending buffer.
        unsafe { field.write_volatile(HYPERVISOR.to_be()) };
    }
    // Room again: the tick tries the buffer and completes it.
    let _ = tx.receive(|_| {});
    let codes = completions_within(&mut tx, 200_000_000);
    let delivered = {
        let _ = tx.receive(|_| {});
        tx.has_input()
    };
    t.expect(
        "a QAOB rewritten while pending to name the hypervisor's memory",
        codes.as_slice() == [Reason::AddressOutsideMemory.code()] && !delivered,
    );
    // A completion queue with no empty buffer: the program took every one back.
    let Some(cq) = tx.params().completion_queue else {
        t.expect("completion queue laid out", false);
        return;
    };
    let set_cq = |v: u8| {
        for b in 0..128u64 {
            let s = core::ptr::with_exposed_provenance_mut::<u8>((cq.slsb + b) as usize);
            // SAFETY: the completion queue's SLSB, this partition's own memory; the
            // fabric reads it with atomics of its own, a byte store races with nothing
            // it relies on.
            unsafe { s.write_volatile(v) };
        }
    };
    set_cq(0x00);
    while tx.receive(|_| {}).is_some() {}
    let mut sent = 0;
    for k in 0..3u8 {
        sent += u8::from(tx.send(&HvcSiga, own_receiver(), &[k; 64]).is_ok());
    }
    let _ = tx.receive(|_| {});
    let early = completions_within(&mut tx, 20_000_000);
    set_cq(SlsbState::INPUT_EMPTY.0);
    let late = completions_within(&mut tx, 200_000_000);
    t.expect(
        "a completion queue with no empty buffer holds the completion",
        sent == 3 && early.is_empty() && late.as_slice() == [0],
    );
}

/// Rewrites the address of element 0 of output SBAL `n` (after the driver primed it).
fn point_first_element(sbals: &[u64; 128], n: u8, addr: u64) {
    let element = sbals[usize::from(n)] as usize;
    let field = core::ptr::with_exposed_provenance_mut::<u64>(element + 8);
    // SAFETY: the SBAL is this partition's own memory (the driver's output ring, primed
    // and not yet sent), identity-mapped; the fabric reads it only during the SIGA that
    // follows. Element addresses are big-endian (QDIO format).
    unsafe { field.write_volatile(addr.to_be()) };
}

/// Rewrites the first frame header of output buffer `n` (after the driver primed it as
/// unicast): cast bits multicast (0x04), next hop the IPv4 group 239.1.1.1.
fn rewrite_as_multicast(sbals: &[u64; 128], n: u8) {
    let element = sbals[usize::from(n)] as usize;
    let addr = core::ptr::with_exposed_provenance::<u64>(element + 8);
    // SAFETY: the SBAL is this partition's own memory (the driver's output ring, primed
    // and not yet sent), identity-mapped; element addresses are big-endian.
    let header = u64::from_be(unsafe { addr.read_volatile() }) as usize;
    let bytes = core::ptr::with_exposed_provenance_mut::<u8>(header);
    // SAFETY: the header is the frame's first 32 bytes in the buffer's own data (the
    // driver wrote it there, whole in element 0), this partition's memory, which the
    // fabric reads only during the SIGA that follows.
    unsafe {
        bytes.add(1).write_volatile(0x04);
        for (i, b) in [239u8, 1, 1, 1].into_iter().enumerate() {
            bytes.add(0x1C + i).write_volatile(b);
        }
    }
}

/// Run k > 0: stop attempt k. Returns only if the attempt did not stop the partition.
pub fn stop_attempt(k: u64) -> ! {
    let what = match k {
        1 => "load from another partition's window",
        2 => "store to another partition's window",
        3 => "load from the hypervisor's memory",
        4 => "store to the hypervisor's memory",
        5 => "load from the GIC distributor",
        6 => "load from the UART",
        7 => "SMC",
        8 => "unknown HVC",
        _ => "undefined instruction",
    };
    say!("hostile: attempt {}: {}", k, what);
    let load = |addr: u64| {
        // SAFETY: not sound on purpose: the address is outside this partition's window,
        // so stage 2 faults and the hypervisor stops the partition before the value is
        // used; if it did not, the value is only reported.
        unsafe { core::ptr::with_exposed_provenance::<u64>(addr as usize).read_volatile() }
    };
    let store = |addr: u64| {
        // SAFETY: as for the load: the store must fault at stage 2.
        unsafe {
            core::ptr::with_exposed_provenance_mut::<u64>(addr as usize)
                .write_volatile(0xdead_beef_dead_beef)
        }
    };
    match k {
        1 => {
            let _ = load(OTHER_WINDOW);
        }
        2 => store(OTHER_WINDOW_TARGET),
        3 => {
            let _ = load(HYPERVISOR);
        }
        4 => store(HYPERVISOR_TARGET),
        5 => {
            let _ = load(GICD);
        }
        6 => {
            let _ = load(UART);
        }
        7 => {
            // SAFETY: SMC traps to the hypervisor (HCR_EL2.TSC), which stops us.
            unsafe { core::arch::asm!("smc #0", options(nomem, nostack)) };
        }
        8 => {
            let _ = hvc(0xC600_00FF, 0, 0, 0, 0, 0);
        }
        _ => {
            // SAFETY: an undefined instruction is taken at EL1, by this program's own
            // vectors (the architecture has no trap of it to EL2): the handler panics,
            // and the panic handler ends the partition through the exit call.
            unsafe { core::arch::asm!("udf #0", options(nomem, nostack)) };
        }
    }
    say!("hostile: attempt {} ({}) was NOT stopped", k, what);
    rt::exit(ExitStatus::Failure, [1, 0, 1, 0, 0])
}
