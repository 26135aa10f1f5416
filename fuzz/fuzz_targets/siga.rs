//! Whole SIGA calls over arbitrary guest memory.
//!
//! Three partitions on one fabric: A (LPAR 1) sends on 1 to 4 output queues (the
//! highest of two or more is its multicast queue); its output SBALs and SLSBs and
//! 16 KiB of frame data are what the fuzz input writes. B (LPAR 2) is a
//! well-behaved receiver run by the library's driver. C (LPAR 3) is a receiver whose
//! input SBALs and SLSB the fuzz input writes too. The input is a stream of
//! operations: raw SBALs, single SBALEs (addresses inside, across and outside A's
//! window), frame headers, data bytes, SLSB bytes, well-formed frames, C's receive
//! buffers, frames of every cast type to unicast addresses, groups and the broadcast
//! domain on any queue, SIGA with any function code, subchannel, LPAR and queue mask
//! (over the queues A has and beyond), B draining, C and A deregistering and
//! establishing again (A with another number of queues), A, B and C joining and
//! leaving groups and switching broadcast on and off.
//!
//! After every operation that runs library code (SIGA, B's driver, registration) and
//! at the end: no guard byte around any window changed (and under ASan no
//! byte outside a window was read). After every SIGA: its condition code is the one
//! the rules give; a SIGA that ran handled exactly the primed (0x62) buffers from the
//! queue's cursor (one for SIGA write, all consecutive ones for write-multiple) and
//! each of them now reads 0xA1 or 0xAF (0xA3 for WRITEQ), an 0xAF with a documented
//! sbalf15 reason, and a WRITEQ naming a QAOB still pending (not posted by the SIGA's
//! flush of A's pending buffers) exactly 0xAF with 0x2A at element 0; each queue's
//! counters grew by the buffers it completed 0xA1. When no handled buffer's
//! elements reach into a structure the SIGA writes (an SLSB, another handled SBAL),
//! each outcome is predicted from the buffer before the call: a parse fault is that
//! 0xAF reason and element, a group buffer (multicast or broadcast on the multicast
//! queue) completes 0xA1, and the receivers' buffers grew by the unicast buffers
//! delivered plus the group copies, and the sender's copies and skips by the members
//! of each group but itself. Registration answers follow a model of the memberships.
//! At the end: B's driver finds exactly the frames and bytes the fabric counted for
//! it, and the buffers B and C received are the ones A's SIGAs delivered.
#![no_main]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use iqdio::driver::{DriverConfig, Indicators, QueueDriver, Region};
use iqdio::fabric::{BROADCAST_GROUP, QueueAddresses};
use iqdio::guest::{Memory, MemoryExt};
use iqdio::qdio::{CastType, Fragment, HEADER_SIZE, L3Header, Mfs, SBAL_SIZE, Sbale};
use iqdio::transfer::{Outgoing, parse_outgoing_into};
use iqdio::{
    Fabric, FabricConfig, PENDING_PER_QUEUE_SET, QueueSetParams, Reason, RegistrationError,
    SigaError, SigaFunction,
};
use iqdio_fuzz::{FuzzPlatform, GuardedMem, Input, PAGE};
use libfuzzer_sys::fuzz_target;

const Q0: u32 = 1 << 31;
const OUT_SBALS: u64 = 0x0000;
const IN_SBALS: u64 = 0x8000;
const OUT_SLSB: u64 = 0x1_0000;
const IN_SLSB: u64 = 0x1_0080;
const IND: u64 = 0x1_0100;
const DATA: u64 = 0x1_1000;
const DATA_LEN: u64 = 0x4000;
/// Output queues 1-3: their SBALs and SLSBs.
const MORE_SBALS: u64 = 0x1_5000;
const MORE_SLSBS: u64 = 0x1_0200;
/// The completion queue (A only): its SLSB, SBALs, and 64 QAOBs.
const CQ_SLSB: u64 = 0x1_0380;
const CQ_SBALS: u64 = 0x2_D000;
const QAOBS: u64 = 0x3_5000;
const RAW_LEN: usize = 0x3_9000;

const A_BASE: u64 = 0x10_0000;
const B_BASE: u64 = 0x20_0000;
const C_BASE: u64 = 0x30_0000;

type Fab = Fabric<FuzzPlatform, 8, 16>;

fn b_v4() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2))
}
fn b_v6() -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2))
}
fn c_v4() -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3))
}
const G4: IpAddr = IpAddr::V4(Ipv4Addr::new(224, 1, 1, 1));
const G6: IpAddr = IpAddr::V6(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 3));

/// Output queue `q`'s SBAL `n` and SLSB in a raw partition at `base`.
fn out_sbal(base: u64, q: usize, n: u8) -> u64 {
    let first = if q == 0 {
        OUT_SBALS
    } else {
        MORE_SBALS + (q as u64 - 1) * 0x8000
    };
    base + first + u64::from(n % 128) * SBAL_SIZE as u64
}

fn out_slsb(base: u64, q: usize) -> u64 {
    if q == 0 {
        base + OUT_SLSB
    } else {
        base + MORE_SLSBS + (q as u64 - 1) * 0x80
    }
}

/// The queue set of a raw partition (A or C) at `base` with `queues` output queues,
/// and a completion queue if `cq`.
fn raw_params(base: u64, queues: usize, cq: bool) -> QueueSetParams {
    QueueSetParams {
        output_sbals: core::array::from_fn(|i| base + OUT_SBALS + (i * SBAL_SIZE) as u64),
        input_sbals: core::array::from_fn(|i| base + IN_SBALS + (i * SBAL_SIZE) as u64),
        output_slsb: base + OUT_SLSB,
        input_slsb: base + IN_SLSB,
        queue_indicator: base + IND,
        middle_indicator: base + IND + 0x40,
        global_indicator: base + IND + 0x80,
        interrupt_immediately: false,
        interrupt_cookie: 0,
        more_outputs: (1..queues)
            .map(|q| QueueAddresses {
                sbals: core::array::from_fn(|n| out_sbal(base, q, n as u8)),
                slsb: out_slsb(base, q),
            })
            .collect(),
        completion_queue: cq.then(|| QueueAddresses {
            sbals: core::array::from_fn(|n| base + CQ_SBALS + (n * SBAL_SIZE) as u64),
            slsb: base + CQ_SLSB,
        }),
        ..Default::default()
    }
}

fn dest(sel: u8, input: &mut Input<'_>) -> IpAddr {
    match sel % 10 {
        0 | 1 => b_v4(),
        2 => b_v6(),
        3 => c_v4(),
        4 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
        5 => IpAddr::V6(Ipv6Addr::from(
            input.u64() as u128 | (u128::from(input.u64()) << 64),
        )),
        6 => G4,
        7 => G6,
        8 => IpAddr::V4(Ipv4Addr::BROADCAST),
        _ => IpAddr::V4(Ipv4Addr::new(10, 0, 255, 255)),
    }
}

fn cast(sel: u8) -> CastType {
    match sel % 8 {
        0..=3 => CastType::Unicast,
        4 | 5 => CastType::Multicast,
        6 => CastType::Broadcast,
        _ => CastType::Anycast,
    }
}

/// What a SIGA's buffer is predicted to do, from its SBAL before the call.
enum Predicted {
    /// Refused by the parse: this reason at this element.
    Fault(Reason, u8),
    /// A group buffer: completes 0xA1, a copy for each of `members` (or skipped).
    Group { members: u64 },
    /// Unicast or anycast: 0xA1, or 0xAF with a delivery reason.
    Unicast,
}

fn write_sbale(mem: &GuardedMem, sbal: u64, i: usize, e: &Sbale) {
    mem.write(sbal + (i * 16) as u64, &e.encode());
}

struct World {
    fab: Box<Fab>,
    mfs: Mfs,
    a: GuardedMem,
    a_mem: Memory,
    b: GuardedMem,
    c: GuardedMem,
    b_driver: QueueDriver,
    _b_ind: Indicators,
    /// The fabric's output cursors of A's queues, mirrored.
    cursors: [u8; 4],
    /// A's output queues (1-4).
    a_queues: usize,
    a_active: bool,
    c_active: bool,
    /// Group memberships: (LPAR, group), the broadcast domain as `BROADCAST_GROUP`.
    members: BTreeSet<(u8, IpAddr)>,
    /// A's completion queue is established.
    a_cq: bool,
    /// The QAOBs of A's buffers that went PENDING and are not posted yet (each once:
    /// a WRITEQ naming one of them is refused with 0x2A).
    pending: Vec<u64>,
    /// The next completion-queue buffer the fabric fills, mirrored.
    cq_cursor: u8,
    /// A hands a completion-queue buffer back as soon as it has read one.
    cq_rearm: bool,
    /// The completion-queue buffer A hands back next.
    cq_next_init: u8,
    /// Buffers A's SIGAs delivered to receivers: unicast buffers plus group copies.
    buffers_delivered: u64,
    /// Buffers C was counted as receiving by queue sets since deregistered.
    c_sbals_before: u64,
    /// What B's driver found.
    b_found: (u64, u64),
}

impl World {
    fn new(mfs: Mfs, a_queues: usize, a_cq: bool, cq_armed: u8) -> Self {
        let fab = Box::new(Fabric::new(
            FuzzPlatform::default(),
            FabricConfig {
                mfs,
                interrupt_delay_ns: 1_000_000,
                ..FabricConfig::DEFAULT
            },
        ));
        let a = GuardedMem::new(A_BASE, RAW_LEN);
        let a_mem = Memory::new(&[a.window()]).unwrap();
        let c = GuardedMem::new(C_BASE, RAW_LEN);
        let cfg = DriverConfig {
            rx_buffers: 4,
            tx_buffers: 1,
            ..DriverConfig::new(0, Mfs::K16)
        };
        let b = GuardedMem::new(B_BASE, cfg.footprint() + PAGE);
        // SAFETY: B's memory outlives the driver and the fabric (fields dropped in
        // order: the fabric first) and is only reached through the library.
        let mut region = unsafe { Region::new(b.host(), B_BASE, b.len()) }.unwrap();
        let b_ind = Indicators::new(&mut region).unwrap();
        let b_driver = QueueDriver::new(&mut region, &b_ind, cfg).unwrap();
        // A's and C's rings: output buffers not initialised, input buffers empty.
        for m in [&a, &c] {
            for q in 0..4 {
                m.write(out_slsb(m.guest(), q), &[0xA0; 128]);
            }
            m.write(m.guest() + IN_SLSB, &[0x41; 128]);
        }
        a.write(A_BASE + CQ_SLSB, &[0x80; 128]);
        a.write(A_BASE + CQ_SLSB, &vec![0x41; usize::from(cq_armed)]);
        // C's input buffers: four 4 KiB elements each in its data area, by default.
        for n in 0..128u64 {
            for i in 0..4u64 {
                write_sbale(
                    &c,
                    C_BASE + IN_SBALS + n * SBAL_SIZE as u64,
                    i as usize,
                    &Sbale {
                        length: 4096,
                        addr: C_BASE + DATA + i * 4096,
                        ..Sbale::default()
                    },
                );
            }
        }
        fab.add_partition(1, &[a.window()]).unwrap();
        fab.add_partition(2, &[b.window()]).unwrap();
        fab.add_partition(3, &[c.window()]).unwrap();
        fab.establish(1, 0, &raw_params(A_BASE, a_queues, a_cq))
            .unwrap();
        fab.establish(2, 0, &b_driver.params()).unwrap();
        fab.establish(3, 0, &raw_params(C_BASE, 1, false)).unwrap();
        fab.register_address(2, 0, b_v4()).unwrap();
        fab.register_address(2, 0, b_v6()).unwrap();
        fab.register_address(3, 0, c_v4()).unwrap();
        Self {
            fab,
            mfs,
            a,
            a_mem,
            b,
            c,
            b_driver,
            _b_ind: b_ind,
            cursors: [0; 4],
            a_queues,
            a_active: true,
            c_active: true,
            members: BTreeSet::new(),
            a_cq,
            pending: Vec::new(),
            cq_cursor: 0,
            cq_rearm: true,
            cq_next_init: cq_armed % 128,
            buffers_delivered: 0,
            c_sbals_before: 0,
            b_found: (0, 0),
        }
    }

    fn guards(&self) {
        for (name, m) in [("A", &self.a), ("B", &self.b), ("C", &self.c)] {
            assert!(
                m.guards_intact(),
                "a guard byte around {name}'s window changed"
            );
        }
    }

    fn a_state(&self, q: usize, n: u8) -> u8 {
        self.a.read(out_slsb(A_BASE, q) + u64::from(n % 128), 1)[0]
    }

    /// The receivers' input buffers filled so far (C's over all its registrations).
    fn received_sbals(&self) -> u64 {
        let b = self.fab.counters_of(2, 0).unwrap().sbals_received;
        let c = self.fab.counters_of(3, 0).map_or(0, |c| c.sbals_received);
        b + c + self.c_sbals_before
    }

    /// The members of `group` other than A, each an active queue set.
    fn others_in(&self, group: IpAddr) -> u64 {
        self.members
            .iter()
            .filter(|(l, g)| *g == group && *l != 1)
            .count() as u64
    }

    /// Whether LPAR `lpar`'s queue set is established.
    fn active(&self, lpar: u8) -> bool {
        match lpar {
            1 => self.a_active,
            3 => self.c_active,
            _ => true,
        }
    }

    /// Reads what the fabric posted on A's completion queue since the last look: every
    /// address a QAOB of a buffer that went pending (each once), its `aorc` 0 or a
    /// documented code; A hands the buffer back when it re-arms.
    fn scan_cq(&mut self) {
        if !self.a_cq {
            return;
        }
        while self.a.read(A_BASE + CQ_SLSB + u64::from(self.cq_cursor), 1)[0] == 0x82 {
            let sbal = A_BASE + CQ_SBALS + u64::from(self.cq_cursor) * SBAL_SIZE as u64;
            for i in 0..16 {
                let e = Sbale::decode(&self.a.read(sbal + i * 16, 16).try_into().unwrap());
                if e.addr == 0 {
                    break;
                }
                let k = self
                    .pending
                    .iter()
                    .position(|q| *q == e.addr)
                    .unwrap_or_else(|| panic!("posted {:#x}, not a pending QAOB", e.addr));
                self.pending.swap_remove(k);
                if e.addr >= A_BASE + QAOBS {
                    let aorc = self.a.read(e.addr + 0x33, 1)[0];
                    assert!(
                        aorc == 0 || Reason::from_code(aorc).is_some(),
                        "QAOB {:#x}: undocumented aorc {aorc:#x}",
                        e.addr
                    );
                }
                if e.is_last_entry() {
                    break;
                }
            }
            // Read: not initialised until handed back. A hands buffers back in ring
            // order after the ones it armed (qeth_qdio_cq_handler's next_buf_to_init),
            // unless the input switched that off: then the queue fills.
            self.a
                .write(A_BASE + CQ_SLSB + u64::from(self.cq_cursor), &[0x80]);
            self.cq_cursor = (self.cq_cursor + 1) % 128;
            if self.cq_rearm {
                let n = u64::from(self.cq_next_init);
                self.a
                    .write(A_BASE + CQ_SBALS + n * SBAL_SIZE as u64, &[0; SBAL_SIZE]);
                self.a.write(A_BASE + CQ_SLSB + n, &[0x41]);
                self.cq_next_init = (self.cq_next_init + 1) % 128;
            }
        }
    }

    /// A, B or C joins or leaves a group, or switches broadcast, against the model.
    fn membership(&mut self, input: &mut Input<'_>) {
        let lpar = 1 + input.u8() % 3;
        let sel = input.u8() % 4;
        let join = input.u8() & 1 == 0;
        let group = match sel {
            0 => G4,
            1 => G6,
            2 => BROADCAST_GROUP,
            _ => b_v4(),
        };
        let got = match (sel, join) {
            (2, on) => self.fab.set_broadcast(lpar, 0, on),
            (_, true) => self.fab.register_group(lpar, 0, group),
            (_, false) => self.fab.deregister_group(lpar, 0, group),
        };
        let member = self.members.contains(&(lpar, group));
        let want = match (sel, join) {
            (3, _) => Err(RegistrationError::InvalidAddress),
            (_, true) if !self.active(lpar) => Err(RegistrationError::SourceNotRegistered),
            (_, true) if member => Err(RegistrationError::DuplicateFound),
            (_, false) if !member => Err(RegistrationError::NotFound),
            _ => Ok(()),
        };
        assert_eq!(got, want, "LPAR {lpar} join {join} {group}");
        if got.is_ok() {
            if join {
                self.members.insert((lpar, group));
            } else {
                self.members.remove(&(lpar, group));
            }
        }
    }

    fn drain_b(&mut self, max: u8) {
        for _ in 0..max {
            let mut found = self.b_found;
            let got = self.b_driver.receive(|f| {
                found.0 += 1;
                found.1 += f.len() as u64;
            });
            self.b_found = found;
            if got.is_none() {
                break;
            }
        }
    }

    fn siga(&mut self, input: &mut Input<'_>) {
        let fc = match input.u8() % 5 {
            0 => 0,
            1 | 2 => 3,
            3 => 4,
            _ => input.u32(),
        };
        let mask = match input.u8() {
            0..=0x9F => Q0,
            0xA0..=0xEF => u32::from(input.u8() & 0x0F) << 28,
            _ => input.u32(),
        };
        let sch = if input.u8() < 0xF0 { 0 } else { input.u16() };
        let lpar = match input.u8() {
            0..=0xEF => 1,
            0xF0..=0xF7 => 2,
            x => x,
        };
        // WRITEQ's QAOB: one of A's, misaligned, in its frame data, anywhere, in B.
        let qaob = if fc == 4 {
            match input.u8() % 10 {
                0..=5 => A_BASE + QAOBS + u64::from(input.u8() % 64) * 256,
                6 => A_BASE + QAOBS + 0x80,
                7 => A_BASE + DATA + u64::from(input.u8() % 64) * 256,
                8 => input.u64(),
                _ => B_BASE + 0x1000,
            }
        } else {
            0
        };
        // An arbitrary address may lie within 256 bytes of the top: no end there.
        let qaob_valid = qaob.is_multiple_of(256)
            && qaob >= A_BASE
            && qaob
                .checked_add(256)
                .is_some_and(|end| end <= A_BASE + RAW_LEN as u64);
        // The condition code the rules give, in the order the fabric checks them.
        let known = matches!(lpar, 1..=3);
        let queues = match lpar {
            1 => self.a_queues,
            _ => 1,
        };
        let established = u32::MAX << (32 - queues);
        let expect = match SigaFunction::from_code(fc) {
            None => Err(SigaError::InvalidFunction),
            Some(_) if !known || sch != 0 => Err(SigaError::NotIqdio),
            Some(_) if !self.active(lpar) => Err(SigaError::QueuesNotActive),
            Some(_) if mask == 0 || mask & !established != 0 => Err(SigaError::InvalidQueueMask),
            // WRITEQ: only with a completion queue (A's, when it has one), for one
            // queue that is not the multicast queue.
            Some(SigaFunction::WriteQ) if lpar != 1 || !self.a_cq => {
                Err(SigaError::InvalidFunction)
            }
            Some(SigaFunction::WriteQ)
                if mask.count_ones() != 1 || (queues > 1 && mask == 1 << (32 - queues)) =>
            {
                Err(SigaError::InvalidQueueMask)
            }
            Some(f) => Ok(f),
        };
        // The buffers the call must handle: on each queue named, from the lowest, the
        // consecutive 0x62 from its cursor (one for SIGA write).
        let mut handled: Vec<(usize, u8)> = Vec::new();
        if lpar == 1
            && let Ok(f) = expect
        {
            let limit = match f {
                SigaFunction::Write => 1,
                SigaFunction::WriteMultiple => 128,
                SigaFunction::WriteQ => 1,
            };
            for q in (0..queues).filter(|q| mask & (1 << (31 - q)) != 0) {
                let c = self.cursors[q];
                handled.extend(
                    (0..limit)
                        .map(|k| c.wrapping_add(k as u8) % 128)
                        .take_while(|n| self.a_state(q, *n) == 0x62)
                        .map(|n| (q, n)),
                );
            }
        }
        let predicted: Vec<Predicted> = handled
            .iter()
            .map(|&(q, n)| {
                if fc == 4 && !qaob_valid {
                    Predicted::Fault(Reason::QaobInvalid, 0)
                } else {
                    self.predict(q, n)
                }
            })
            .collect();
        let exact = !self.interferes(&handled);
        // A SIGA of A first delivers what it can of A's pending buffers.
        let pending_before = lpar == 1 && !self.pending.is_empty();
        let pending_count = self.pending.len() as u64;
        let before = (
            self.received_sbals(),
            self.fab.counters_of(1, 0).unwrap_or_default(),
        );
        let result = if fc == 4 {
            self.fab.siga_writeq(lpar, sch, mask, qaob)
        } else {
            self.fab.siga(lpar, sch, fc, mask)
        };
        match (expect, result) {
            (Err(want), got) => assert_eq!(got, Err(want), "fc {fc} sch {sch} lpar {lpar}"),
            (Ok(_), Err(e)) => panic!("SIGA refused: {e:?}"),
            (Ok(_), Ok(r)) => {
                assert_eq!(usize::from(r.buffers), handled.len(), "buffers handled");
                assert_eq!(
                    u16::from(r.buffers),
                    u16::from(r.delivered) + u16::from(r.refused) + u16::from(r.pending)
                );
                if lpar != 1 {
                    return;
                }
                // What the SIGA's flush of A's pending buffers posted comes off the
                // model's list first: a QAOB still on it is in flight.
                self.scan_cq();
                let mut per_queue = [0u64; 4];
                let (mut unicast_delivered, mut group_members) = (0, 0);
                for (&(q, n), p) in handled.iter().zip(&predicted) {
                    let state = self.a_state(q, n);
                    let sbal = out_sbal(A_BASE, q, n);
                    let code = self.a.read(sbal + 15 * 16 + 3, 1)[0];
                    let element = self.a.read(sbal + 14 * 16 + 3, 1)[0] & 0x0F;
                    // A valid QAOB still pending (its buffer waiting, or delivered
                    // with its completion not yet posted: this SIGA's flush did not
                    // post it) belongs to that buffer: refused at once with 0x2A,
                    // whatever the buffer holds, so it is never on the list twice.
                    // Otherwise a valid QAOB is never the buffer's 0x2A.
                    if fc == 4 && qaob_valid {
                        if self.pending.contains(&qaob) {
                            assert_eq!(
                                (state, code, element),
                                (0xAF, Reason::QaobInvalid.code(), 0),
                                "queue {q} buffer {n}: QAOB {qaob:#x} still pending"
                            );
                            continue;
                        }
                        assert!(
                            state != 0xAF || code != Reason::QaobInvalid.code(),
                            "queue {q} buffer {n}: QAOB {qaob:#x} not pending, refused 0x2A"
                        );
                    }
                    match state {
                        0xA1 => per_queue[q] += 1,
                        0xA3 if fc == 4 => {
                            self.pending.push(qaob);
                            assert!(self.pending.len() <= PENDING_PER_QUEUE_SET);
                        }
                        0xAF => assert!(
                            Reason::from_code(code).is_some(),
                            "undocumented sbalf15 {code:#x}"
                        ),
                        s => panic!("queue {q} buffer {n} handled but reads {s:#x}"),
                    }
                    if !exact {
                        continue;
                    }
                    match *p {
                        Predicted::Fault(reason, at) => assert_eq!(
                            (state, code, element),
                            (0xAF, reason.code(), at),
                            "queue {q} buffer {n}: the parse fault"
                        ),
                        Predicted::Group { members } => {
                            assert_eq!(state, 0xA1, "queue {q} buffer {n}: group buffer");
                            group_members += members;
                        }
                        Predicted::Unicast if state == 0xA1 => unicast_delivered += 1,
                        Predicted::Unicast if state == 0xA3 => {}
                        Predicted::Unicast => assert!(
                            matches!(code, 0x10..=0x14),
                            "queue {q} buffer {n}: unicast refused with {code:#x}"
                        ),
                    }
                }
                for &(q, _) in &handled {
                    self.cursors[q] = (self.cursors[q] + 1) % 128;
                }
                // Each queue's `sbals` grew by its handled buffers that read 0xA1 plus
                // the pending buffers of that queue this SIGA delivered: the fabric
                // tries A's pending buffers before the new ones, and one delivered then
                // counts as sent on its own queue, as a buffer delivered at once does
                // (`OutputQueueCounts::sbals` counts buffers delivered to a target, so
                // the sender's and the receivers' counts agree; see the fabric's
                // `flush_pending` and tests/completion_driver.rs
                // `frames_delivered_from_pending_count_as_sent`). Those come only with
                // pending buffers, only on a WRITEQ queue (a unicast queue A has), at
                // most one per pending buffer, and each filled one input buffer.
                let after = self.fab.counters_of(1, 0).unwrap();
                let mut from_pending = 0;
                for (q, (a, b)) in after
                    .output_queues
                    .iter()
                    .zip(before.1.output_queues.iter())
                    .enumerate()
                {
                    let grew = a.sbals - b.sbals;
                    assert!(grew >= per_queue[q], "queue {q}: buffers counted");
                    let writeq_queue =
                        q < self.a_queues && (self.a_queues == 1 || q + 1 < self.a_queues);
                    if !pending_before || !writeq_queue {
                        assert_eq!(grew, per_queue[q], "queue {q}: buffers counted");
                    }
                    from_pending += grew - per_queue[q];
                }
                assert!(
                    from_pending <= pending_count,
                    "{from_pending} pending buffers counted as sent, {pending_count} were pending"
                );
                let copies = after.group_copies - before.1.group_copies;
                let skipped = after.group_skipped - before.1.group_skipped;
                assert_eq!(copies, u64::from(r.copies));
                let received = self.received_sbals() - before.0;
                if exact {
                    assert_eq!(copies + skipped, group_members, "group copies and skips");
                    assert_eq!(
                        received,
                        unicast_delivered + copies + from_pending,
                        "buffers received"
                    );
                }
                assert!(received >= copies + from_pending);
                assert!(received <= u64::from(r.delivered) + copies + from_pending);
                self.buffers_delivered += received;
            }
        }
    }

    /// The outcome of A's queue `q` buffer `n` as its SBAL reads now.
    fn predict(&self, q: usize, n: u8) -> Predicted {
        let sbal = self.a_mem.sbal(out_sbal(A_BASE, q, n)).unwrap();
        let mut out = Outgoing::empty();
        let multicast_queue = self.a_queues > 1 && q == self.a_queues - 1;
        match parse_outgoing_into(
            &sbal,
            &self.a_mem,
            self.mfs,
            multicast_queue,
            false,
            &mut out,
        ) {
            Err(f) => Predicted::Fault(f.reason, f.element),
            Ok(()) => match out.cast {
                CastType::Multicast => Predicted::Group {
                    members: self.others_in(out.dest.ip()),
                },
                CastType::Broadcast => Predicted::Group {
                    members: self.others_in(BROADCAST_GROUP),
                },
                CastType::Unicast | CastType::Anycast => Predicted::Unicast,
            },
        }
    }

    /// Whether an element of a handled buffer (up to its LAST_ENTRY, or 16) reaches
    /// into bytes the SIGA writes before that buffer is sent: the handled queues'
    /// SLSBs, the other handled SBALs.
    fn interferes(&self, handled: &[(usize, u8)]) -> bool {
        let mut written: Vec<(u64, u64)> = handled
            .iter()
            .map(|&(q, n)| (out_sbal(A_BASE, q, n), SBAL_SIZE as u64))
            .collect();
        written.extend((0..4).map(|q| (out_slsb(A_BASE, q), 128)));
        // Before its new buffers a SIGA completes pending ones: QAOBs, the CQ ring.
        written.extend(self.pending.iter().map(|&q| (q, 256)));
        written.push((A_BASE + CQ_SBALS, 128 * SBAL_SIZE as u64));
        written.push((A_BASE + CQ_SLSB, 128));
        handled.iter().any(|&(q, n)| {
            let sbal = out_sbal(A_BASE, q, n);
            (0..16)
                .map(|i| Sbale::decode(&self.a.read(sbal + i * 16, 16).try_into().unwrap()))
                .scan(false, |done, e| {
                    if *done {
                        return None;
                    }
                    *done = e.is_last_entry();
                    Some(e)
                })
                .any(|e| {
                    let end = e.addr.saturating_add(u64::from(e.length));
                    written.iter().any(|&(s, l)| e.addr < s + l && s < end)
                })
        })
    }

    /// One operation; true when it ran library code that may write guest memory (the
    /// fabric or B's driver), after which the guards are checked. The others are the
    /// program writing its own memory, clipped to its window by the harness.
    fn op(&mut self, input: &mut Input<'_>) -> bool {
        let a = &self.a;
        let code = input.u8() % 13;
        match code {
            // A raw SBAL of any output queue (established or not).
            0 => {
                let q = usize::from(input.u8() % 4);
                let n = input.u8();
                let raw = input.bytes(SBAL_SIZE);
                a.write(out_sbal(A_BASE, q, n), raw);
            }
            // One SBALE, its address chosen to land inside, across or outside A.
            1 => {
                let q = usize::from(input.u8() % 4);
                let n = input.u8();
                let i = usize::from(input.u8() % 16);
                let eflags = input.u8();
                let length = u32::from(input.u16());
                let sel = input.u8();
                let off = u64::from(input.u16());
                let addr = match sel % 5 {
                    0 | 1 => A_BASE + DATA + off % DATA_LEN,
                    2 => A_BASE + off * 2,
                    3 => a.end() - off % 64,
                    _ => input.u64(),
                };
                let e = Sbale {
                    eflags,
                    length,
                    addr,
                    ..Sbale::default()
                };
                write_sbale(a, out_sbal(A_BASE, q, n), i, &e);
            }
            // A frame header in the data area, of any cast type.
            2 => {
                let off = u64::from(input.u16()) % (DATA_LEN - HEADER_SIZE as u64);
                let sel = input.u8();
                let mut header = L3Header::unicast(dest(sel, input), input.u16());
                header.cast = cast(input.u8());
                let mut h = header.encode();
                if input.u8() > 0xE0 {
                    h[1] = input.u8();
                }
                a.write(A_BASE + DATA + off, &h);
            }
            // Raw data bytes.
            3 => {
                let off = u64::from(input.u16()) % DATA_LEN;
                let n = usize::from(input.u8());
                let bytes = input.bytes(n);
                a.write(
                    A_BASE + DATA + off,
                    &bytes[..bytes.len().min((DATA_LEN - off) as usize)],
                );
            }
            // An output SLSB byte (0x62 hands a buffer over).
            4 => {
                let q = usize::from(input.u8() % 4);
                let n = input.u8() % 128;
                let v = if input.u8() < 0xC0 { 0x62 } else { input.u8() };
                a.write(out_slsb(A_BASE, q) + u64::from(n), &[v]);
            }
            // A well-formed frame of some cast type in elements of a chosen size, on
            // some queue, primed.
            5 => {
                let q = usize::from(input.u8() % 4);
                let n = input.u8();
                let sel = input.u8();
                let to = dest(sel, input);
                let cast = cast(input.u8());
                let len = usize::from(input.u16()) % (DATA_LEN as usize - HEADER_SIZE);
                let piece = 32 + usize::from(input.u16()) % 8192;
                let header = L3Header {
                    cast,
                    ..L3Header::unicast(to, len as u16)
                };
                let mut frame = header.encode().to_vec();
                frame.extend((0..len).map(|i| (i as u8) ^ n));
                a.write(A_BASE + DATA, &frame);
                let pieces = frame.len().div_ceil(piece).min(16);
                let piece = frame.len().div_ceil(pieces);
                let sbal = out_sbal(A_BASE, q, n);
                for k in 0..pieces {
                    let start = k * piece;
                    let l = piece.min(frame.len() - start);
                    let e = Sbale {
                        eflags: Fragment::for_element(k, pieces).bits()
                            | if k + 1 == pieces { 0x40 } else { 0 },
                        length: l as u32,
                        addr: A_BASE + DATA + start as u64,
                        ..Sbale::default()
                    };
                    write_sbale(a, sbal, k, &e);
                }
                a.write(out_slsb(A_BASE, q) + u64::from(n % 128), &[0x62]);
            }
            6 | 7 => self.siga(input),
            // B takes some buffers.
            8 => {
                let max = input.u8() % 8;
                self.drain_b(max);
            }
            // C's receive side: an input SBALE or an input SLSB byte.
            9 => {
                let n = u64::from(input.u8() % 128);
                if input.u8() < 0x80 {
                    let i = usize::from(input.u8() % 16);
                    let raw = input.bytes(16);
                    self.c.write(
                        C_BASE + IN_SBALS + n * SBAL_SIZE as u64 + (i * 16) as u64,
                        raw,
                    );
                } else {
                    let v = input.u8();
                    self.c.write(C_BASE + IN_SLSB + n, &[v]);
                }
            }
            // Deregister and establish again: C's queue set, or A's (with 1-4 output
            // queues). Deregistration ends the set's memberships.
            10 => {
                let queues = 1 + usize::from(input.u8() % 4);
                if input.u8() < 0x80 {
                    if self.c_active {
                        let snap = self.fab.deregister_queue_set(3, 0).unwrap();
                        self.c_sbals_before += snap.sbals_received;
                        self.c_active = false;
                        self.members.retain(|(l, _)| *l != 3);
                        // A's buffers pending for C complete with 0x12.
                        self.scan_cq();
                    } else {
                        self.fab
                            .establish(3, 0, &raw_params(C_BASE, 1, false))
                            .unwrap();
                        self.fab.register_address(3, 0, c_v4()).unwrap();
                        self.c_active = true;
                    }
                } else if self.a_active {
                    self.fab.deregister_queue_set(1, 0).unwrap();
                    self.a_active = false;
                    self.members.retain(|(l, _)| *l != 1);
                    // A's own pending buffers complete with 0x15: posted while the
                    // completion queue has room, the rest only in their QAOBs.
                    self.scan_cq();
                    self.pending.clear();
                } else {
                    let cq = queues % 2 == 0;
                    self.a.write(A_BASE + CQ_SBALS, &[0; 128 * SBAL_SIZE]);
                    self.a.write(A_BASE + CQ_SLSB, &[0x41; 128]);
                    self.fab
                        .establish(1, 0, &raw_params(A_BASE, queues, cq))
                        .unwrap();
                    self.a_active = true;
                    self.a_queues = queues;
                    self.a_cq = cq;
                    self.cq_cursor = 0;
                    self.cq_next_init = 0;
                    self.cursors = [0; 4];
                }
            }
            // Group membership churn.
            11 => self.membership(input),
            // The embedder's tick (it delivers pending buffers to receivers with room),
            // or A stops or resumes handing completion-queue buffers back.
            _ => {
                if input.u8() & 1 == 0 {
                    let before = self.received_sbals();
                    self.fab.expire_delays();
                    self.buffers_delivered += self.received_sbals() - before;
                    self.scan_cq();
                } else {
                    self.cq_rearm = !self.cq_rearm;
                }
            }
        }
        code >= 6 && code != 9
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mfs = [Mfs::K16, Mfs::K24, Mfs::K40, Mfs::K64][usize::from(input.u8() % 4)];
    let a_queues = 1 + usize::from(input.u8() % 4);
    // A's completion queue, and the buffers it arms on it: 1 to 4, or 127.
    let cq = input.u8();
    let armed = if cq & 2 != 0 { 127 } else { 1 + (cq >> 2) % 4 };
    let mut w = World::new(mfs, a_queues, cq & 1 == 1, armed);
    let mut ops = 0;
    while !input.is_empty() && ops < 256 {
        let fabric_ran = w.op(&mut input);
        if fabric_ran {
            w.guards();
        }
        ops += 1;
    }
    // B's driver finds every frame and byte the fabric counted for it; B and C
    // received buffers only through A's SIGAs (nothing else filled one).
    w.drain_b(128);
    let cb = w.fab.counters_of(2, 0).unwrap();
    assert_eq!(
        w.b_found,
        (cb.frames_received, cb.bytes_received),
        "B's frames"
    );
    assert_eq!(w.buffers_delivered, w.received_sbals(), "buffers received");
    w.guards();
    if std::env::var_os("IQDIO_FUZZ_DEBUG").is_some() {
        let ca = w.fab.counters_of(1, 0).unwrap_or_default();
        eprintln!(
            "siga: {ops} ops, {} buffers delivered (B {}), A's queues {}, copies {}, skipped {}, pending {}, completed {} + {} with error, cq full {}, errors {:?}",
            w.buffers_delivered,
            cb.sbals_received,
            w.a_queues,
            ca.group_copies,
            ca.group_skipped,
            ca.pending,
            ca.completed,
            ca.completed_with_error,
            ca.cq_full,
            ca.errors
        );
    }
});
