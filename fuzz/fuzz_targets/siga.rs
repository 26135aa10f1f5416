//! Whole SIGA calls over arbitrary guest memory.
//!
//! Three partitions on one fabric: A (LPAR 1) sends; its 128 output SBALs, output SLSB
//! and 16 KiB of frame data are what the fuzz input writes. B (LPAR 2) is a
//! well-behaved receiver run by the library's driver. C (LPAR 3) is a receiver whose
//! input SBALs and SLSB the fuzz input writes too. The input is a stream of
//! operations: raw SBALs, single SBALEs (addresses inside, across and outside A's
//! window), frame headers, data bytes, SLSB bytes, well-formed frames, C's receive
//! buffers, SIGA with any function code, subchannel, LPAR and queue mask, B draining,
//! C and A deregistering and establishing again.
//!
//! After every operation that runs library code (SIGA, B's driver, registration) and
//! at the end: no guard byte around any window changed (and under ASan no
//! byte outside a window was read). After every SIGA: its condition code is the one
//! the rules give; a SIGA that ran handled exactly the primed (0x62) buffers from the
//! queue's cursor (one for SIGA write, all consecutive ones for write-multiple) and
//! each of them now reads 0xA1 or 0xAF, an 0xAF with a documented sbalf15 reason. At
//! the end: frames conserved. The frames A's SIGAs delivered equal the frames B and C
//! were counted as receiving, and B's driver finds exactly the frames and bytes the
//! fabric counted for it.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use iqdio::driver::{DriverConfig, Indicators, QueueDriver, Region};
use iqdio::qdio::{Fragment, HEADER_SIZE, L3Header, Mfs, SBAL_SIZE, Sbale};
use iqdio::{Fabric, FabricConfig, QueueSetParams, Reason, SigaError, SigaFunction};
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
const RAW_LEN: usize = 0x1_5000;

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

/// The queue set of a raw partition (A or C) at `base`.
fn raw_params(base: u64) -> QueueSetParams {
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
        ..Default::default()
    }
}

fn dest(sel: u8, input: &mut Input<'_>) -> IpAddr {
    match sel % 6 {
        0 | 1 => b_v4(),
        2 => b_v6(),
        3 => c_v4(),
        4 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
        _ => IpAddr::V6(Ipv6Addr::from(
            input.u64() as u128 | (u128::from(input.u64()) << 64),
        )),
    }
}

fn write_sbale(mem: &GuardedMem, sbal: u64, i: usize, e: &Sbale) {
    mem.write(sbal + (i * 16) as u64, &e.encode());
}

struct World {
    fab: Box<Fab>,
    a: GuardedMem,
    b: GuardedMem,
    c: GuardedMem,
    b_driver: QueueDriver,
    _b_ind: Indicators,
    /// The fabric's output cursor of A's queue, mirrored.
    cursor: u8,
    a_active: bool,
    c_active: bool,
    /// Frames A's SIGAs delivered.
    frames_sent: u64,
    /// Frames C was counted as receiving by queue sets since deregistered.
    c_frames_before: u64,
    /// What B's driver found.
    b_found: (u64, u64),
}

impl World {
    fn new(mfs: Mfs) -> Self {
        let fab = Box::new(Fabric::new(
            FuzzPlatform::default(),
            FabricConfig {
                mfs,
                interrupt_delay_ns: 1_000_000,
                ..FabricConfig::DEFAULT
            },
        ));
        let a = GuardedMem::new(A_BASE, RAW_LEN);
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
            m.write(m.guest() + OUT_SLSB, &[0xA0; 128]);
            m.write(m.guest() + IN_SLSB, &[0x41; 128]);
        }
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
        fab.establish(1, 0, &raw_params(A_BASE)).unwrap();
        fab.establish(2, 0, &b_driver.params()).unwrap();
        fab.establish(3, 0, &raw_params(C_BASE)).unwrap();
        fab.register_address(2, 0, b_v4()).unwrap();
        fab.register_address(2, 0, b_v6()).unwrap();
        fab.register_address(3, 0, c_v4()).unwrap();
        Self {
            fab,
            a,
            b,
            c,
            b_driver,
            _b_ind: b_ind,
            cursor: 0,
            a_active: true,
            c_active: true,
            frames_sent: 0,
            c_frames_before: 0,
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

    fn a_out_sbal(&self, n: u8) -> u64 {
        A_BASE + OUT_SBALS + u64::from(n % 128) * SBAL_SIZE as u64
    }

    fn a_state(&self, n: u8) -> u8 {
        self.a.read(A_BASE + OUT_SLSB + u64::from(n % 128), 1)[0]
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
        let fc = match input.u8() % 4 {
            0 => 0,
            1 | 2 => 3,
            _ => input.u32(),
        };
        let mask = if input.u8() < 0xF0 { Q0 } else { input.u32() };
        let sch = if input.u8() < 0xF0 { 0 } else { input.u16() };
        let lpar = match input.u8() {
            0..=0xEF => 1,
            0xF0..=0xF7 => 2,
            x => x,
        };
        // The condition code the rules give, in the order the fabric checks them.
        let known = matches!(lpar, 1..=3);
        let active = match lpar {
            1 => self.a_active,
            3 => self.c_active,
            _ => true,
        };
        let expect = match SigaFunction::from_code(fc) {
            None => Err(SigaError::InvalidFunction),
            Some(_) if !known || sch != 0 => Err(SigaError::NotIqdio),
            Some(_) if !active => Err(SigaError::QueuesNotActive),
            Some(_) if mask != Q0 => Err(SigaError::InvalidQueueMask),
            Some(f) => Ok(f),
        };
        // The primed buffers the call must handle: consecutive 0x62 from the cursor.
        let primed = if lpar == 1 {
            let limit = match expect {
                Ok(SigaFunction::Write) => 1,
                Ok(SigaFunction::WriteMultiple) => 128,
                Err(_) => 0,
            };
            (0..limit)
                .take_while(|k| self.a_state(self.cursor.wrapping_add(*k as u8) % 128) == 0x62)
                .count()
        } else {
            0
        };
        let result = self.fab.siga(lpar, sch, fc, mask);
        match (expect, result) {
            (Err(want), got) => assert_eq!(got, Err(want), "fc {fc} sch {sch} lpar {lpar}"),
            (Ok(_), Err(e)) => panic!("SIGA refused: {e:?}"),
            (Ok(_), Ok(r)) => {
                assert_eq!(usize::from(r.buffers), primed, "buffers handled");
                assert_eq!(r.buffers, r.delivered + r.refused);
                if lpar != 1 {
                    return;
                }
                for k in 0..r.buffers {
                    let n = self.cursor.wrapping_add(k) % 128;
                    match self.a_state(n) {
                        0xA1 => {}
                        0xAF => {
                            let code = self.a.read(self.a_out_sbal(n) + 15 * 16 + 3, 1)[0];
                            assert!(
                                Reason::from_code(code).is_some(),
                                "undocumented sbalf15 {code:#x}"
                            );
                        }
                        s => panic!("buffer {n} handled but reads {s:#x}"),
                    }
                }
                self.cursor = (self.cursor + r.buffers) % 128;
                self.frames_sent += u64::from(r.frames);
            }
        }
    }

    /// One operation; true when it ran library code that may write guest memory (the
    /// fabric or B's driver), after which the guards are checked. The others are the
    /// program writing its own memory, clipped to its window by the harness.
    fn op(&mut self, input: &mut Input<'_>) -> bool {
        let a = &self.a;
        let code = input.u8() % 11;
        match code {
            // A raw SBAL.
            0 => {
                let n = input.u8();
                let raw = input.bytes(SBAL_SIZE);
                a.write(self.a_out_sbal(n), raw);
            }
            // One SBALE, its address chosen to land inside, across or outside A.
            1 => {
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
                write_sbale(a, self.a_out_sbal(n), i, &e);
            }
            // A frame header in the data area.
            2 => {
                let off = u64::from(input.u16()) % (DATA_LEN - HEADER_SIZE as u64);
                let sel = input.u8();
                let mut h = L3Header::unicast(dest(sel, input), input.u16()).encode();
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
                let n = input.u8() % 128;
                let v = if input.u8() < 0xC0 { 0x62 } else { input.u8() };
                a.write(A_BASE + OUT_SLSB + u64::from(n), &[v]);
            }
            // A well-formed frame in elements of a chosen size, primed.
            5 => {
                let n = input.u8();
                let sel = input.u8();
                let to = dest(sel, input);
                let len = usize::from(input.u16()) % (DATA_LEN as usize - HEADER_SIZE);
                let piece = 32 + usize::from(input.u16()) % 8192;
                let mut frame = L3Header::unicast(to, len as u16).encode().to_vec();
                frame.extend((0..len).map(|i| (i as u8) ^ n));
                a.write(A_BASE + DATA, &frame);
                let pieces = frame.len().div_ceil(piece).min(16);
                let piece = frame.len().div_ceil(pieces);
                let sbal = self.a_out_sbal(n);
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
                a.write(A_BASE + OUT_SLSB + u64::from(n % 128), &[0x62]);
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
            // Deregister and establish again: C's queue set, or A's.
            _ => {
                if input.u8() < 0x80 {
                    if self.c_active {
                        let snap = self.fab.deregister_queue_set(3, 0).unwrap();
                        self.c_frames_before += snap.frames_received;
                        self.c_active = false;
                    } else {
                        self.fab.establish(3, 0, &raw_params(C_BASE)).unwrap();
                        self.fab.register_address(3, 0, c_v4()).unwrap();
                        self.c_active = true;
                    }
                } else if self.a_active {
                    self.fab.deregister_queue_set(1, 0).unwrap();
                    self.a_active = false;
                } else {
                    self.fab.establish(1, 0, &raw_params(A_BASE)).unwrap();
                    self.a_active = true;
                    self.cursor = 0;
                }
            }
        }
        code >= 6 && code != 9
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let mfs = [Mfs::K16, Mfs::K24, Mfs::K40, Mfs::K64][usize::from(input.u8() % 4)];
    let mut w = World::new(mfs);
    let mut ops = 0;
    while !input.is_empty() && ops < 256 {
        let fabric_ran = w.op(&mut input);
        if fabric_ran {
            w.guards();
        }
        ops += 1;
    }
    // Frames conserved: what A's SIGAs delivered is what B and C were counted as
    // receiving, and B's driver finds every frame and byte counted for it.
    w.drain_b(128);
    let cb = w.fab.counters_of(2, 0).unwrap();
    let c_now = w.fab.counters_of(3, 0).map_or(0, |c| c.frames_received);
    assert_eq!(
        w.frames_sent,
        cb.frames_received + w.c_frames_before + c_now,
        "frames delivered vs frames received"
    );
    assert_eq!(
        w.b_found,
        (cb.frames_received, cb.bytes_received),
        "B's frames"
    );
    w.guards();
    if std::env::var_os("IQDIO_FUZZ_DEBUG").is_some() {
        let ca = w.fab.counters_of(1, 0).unwrap_or_default();
        eprintln!(
            "siga: {ops} ops, {} frames delivered (B {}, C {}), A's errors {:?}",
            w.frames_sent,
            cb.frames_received,
            w.c_frames_before + c_now,
            ca.errors
        );
    }
});
