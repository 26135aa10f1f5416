//! The iqdio hypervisor-call interface: what a partition running at EL1 puts in its
//! registers for `HVC #0`, what it gets back, and the byte-exact establish block it
//! points the hypervisor at. Shared by the hypervisor (`iqdio-hyp`) and the partition
//! program (`iqdio-guest`); pure data and arithmetic, tested on the host.
//!
//! Function ids follow the Arm SMC Calling Convention (DEN 0028, section 6): fast calls
//! (bit 31), 64-bit convention (bit 30), owning entity 6 "vendor-specific hypervisor
//! service" (bits 29:24), so every id is `0xC600_0000 | n`. Arguments go in x1-x6, the
//! results come back in x0 (and x1). The issuing partition is always the vCPU that
//! trapped, never a register.
//!
//! | call | x0 | x1 | x2 | x3 | x4 | x5-x6 | returns |
//! |---|---|---|---|---|---|---|---|
//! | SIGA | `0xC600_0001` | function code (0 write, 3 write-multiple) | subchannel | queue mask | | | x0 condition code, x1 busy bit `0x8000_0000` with cc2 |
//! | establish | `0xC600_0002` | subchannel | guest address of the [establish block](EstablishBlock) | | | | x0 return code |
//! | register address | `0xC600_0003` | subchannel | family 4 or 6 | IPv6 high 64 bits (0 for IPv4) | IPv6 low 64 bits, or the IPv4 address | | x0 return code |
//! | deregister address | `0xC600_0004` | as register | | | | | x0 return code |
//! | deregister queue set | `0xC600_0005` | subchannel | | | | | x0 return code |
//! | console write | `0xC600_0006` | guest address of the text | length, at most [`CONSOLE_MAX`] | | | | x0 return code |
//! | exit | `0xC600_0007` | status ([`ExitStatus`]) | result 0 | result 1 | result 2 | results 3, 4 | does not return |
//! | barrier | `0xC600_0008` | | | | | | x0 partitions still running, once all of them called it |
//!
//! Return codes: 0 done; the fabric's registration codes (`0xE005` duplicate, `0xE006`
//! table full, `0xE00E` not found, `0xF0xx`, see `iqdio::RegistrationError::code`);
//! [`RC_OUTSIDE_MEMORY`] (`0xF005`, the fabric's "outside memory") for a guest address
//! that is not wholly inside the partition's window; [`RC_BAD_BLOCK`] and
//! [`RC_BAD_ARGUMENT`] of this interface. Any other function id, and any SMC, stops
//! the partition.
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_code)]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use iqdio::qdio::QUEUE_BUFFERS;
use iqdio::{Mfs, QueueSetParams};

/// SMCCC: fast call, 64-bit convention, owning entity 6 (vendor-specific hypervisor
/// service), function 0 (DEN 0028 section 6.2).
pub const VENDOR_HYP_BASE: u64 = 0xC600_0000;

/// SIGA: x1 function code, x2 subchannel, x3 queue mask.
pub const HVC_SIGA: u64 = VENDOR_HYP_BASE | 1;
/// Establish a queue set: x1 subchannel, x2 guest address of the establish block.
pub const HVC_ESTABLISH: u64 = VENDOR_HYP_BASE | 2;
/// Register an IP address: x1 subchannel, x2 family, x3/x4 the address.
pub const HVC_REGISTER_ADDRESS: u64 = VENDOR_HYP_BASE | 3;
/// Deregister an IP address: registers as [`HVC_REGISTER_ADDRESS`].
pub const HVC_DEREGISTER_ADDRESS: u64 = VENDOR_HYP_BASE | 4;
/// Deregister a queue set: x1 subchannel.
pub const HVC_DEREGISTER_QUEUE_SET: u64 = VENDOR_HYP_BASE | 5;
/// Write a line of text to the console: x1 guest address, x2 length.
pub const HVC_CONSOLE_WRITE: u64 = VENDOR_HYP_BASE | 6;
/// Stop this partition: x1 status, x2-x6 five results for the hypervisor's report.
pub const HVC_EXIT: u64 = VENDOR_HYP_BASE | 7;
/// Wait until every running partition called it too (phases of a demo).
pub const HVC_BARRIER: u64 = VENDOR_HYP_BASE | 8;

/// The calls, decoded from x0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// [`HVC_SIGA`].
    Siga,
    /// [`HVC_ESTABLISH`].
    Establish,
    /// [`HVC_REGISTER_ADDRESS`].
    RegisterAddress,
    /// [`HVC_DEREGISTER_ADDRESS`].
    DeregisterAddress,
    /// [`HVC_DEREGISTER_QUEUE_SET`].
    DeregisterQueueSet,
    /// [`HVC_CONSOLE_WRITE`].
    ConsoleWrite,
    /// [`HVC_EXIT`].
    Exit,
    /// [`HVC_BARRIER`].
    Barrier,
}

impl Call {
    /// The call for function id `x0`, or `None` for an id this interface does not have
    /// (the hypervisor stops a partition that makes one).
    pub const fn from_id(x0: u64) -> Option<Self> {
        Some(match x0 {
            HVC_SIGA => Self::Siga,
            HVC_ESTABLISH => Self::Establish,
            HVC_REGISTER_ADDRESS => Self::RegisterAddress,
            HVC_DEREGISTER_ADDRESS => Self::DeregisterAddress,
            HVC_DEREGISTER_QUEUE_SET => Self::DeregisterQueueSet,
            HVC_CONSOLE_WRITE => Self::ConsoleWrite,
            HVC_EXIT => Self::Exit,
            HVC_BARRIER => Self::Barrier,
            _ => return None,
        })
    }

    /// The function id.
    pub const fn id(self) -> u64 {
        match self {
            Self::Siga => HVC_SIGA,
            Self::Establish => HVC_ESTABLISH,
            Self::RegisterAddress => HVC_REGISTER_ADDRESS,
            Self::DeregisterAddress => HVC_DEREGISTER_ADDRESS,
            Self::DeregisterQueueSet => HVC_DEREGISTER_QUEUE_SET,
            Self::ConsoleWrite => HVC_CONSOLE_WRITE,
            Self::Exit => HVC_EXIT,
            Self::Barrier => HVC_BARRIER,
        }
    }
}

/// Return code: done.
pub const RC_OK: u64 = 0;
/// Return code: a guest address (the establish block, a storage list, console text) is
/// not wholly inside the partition's window; the fabric's "outside memory" code.
pub const RC_OUTSIDE_MEMORY: u64 = 0xF005;
/// Return code: the establish block is malformed (format, queue counts, reserved bytes).
pub const RC_BAD_BLOCK: u64 = 0xF010;
/// Return code: an argument register is out of range (subchannel above 0xFFFF, family
/// other than 4 or 6, console length above [`CONSOLE_MAX`]).
pub const RC_BAD_ARGUMENT: u64 = 0xF011;

/// Most bytes one console write may carry.
pub const CONSOLE_MAX: usize = 256;

/// How a partition ended (x1 of [`HVC_EXIT`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum ExitStatus {
    /// Its program completed and its own checks passed.
    Pass = 0,
    /// Its program found a failure.
    Failure = 1,
    /// Its program panicked.
    Panic = 2,
}

impl ExitStatus {
    /// The status for x1, or `None` for another value.
    pub const fn from_raw(x1: u64) -> Option<Self> {
        match x1 {
            0 => Some(Self::Pass),
            1 => Some(Self::Failure),
            2 => Some(Self::Panic),
            _ => None,
        }
    }
}

/// An IP address as the address calls carry it: (family, x3, x4).
pub const fn ip_to_registers(ip: IpAddr) -> (u64, u64, u64) {
    match ip {
        IpAddr::V4(a) => (4, 0, a.to_bits() as u64),
        IpAddr::V6(a) => {
            let bits = a.to_bits();
            (6, (bits >> 64) as u64, bits as u64)
        }
    }
}

/// The IP address in the address calls' registers, or `None` if they do not hold one
/// (family other than 4 or 6, an IPv4 address with bits above 32).
pub const fn ip_from_registers(family: u64, x3: u64, x4: u64) -> Option<IpAddr> {
    match family {
        4 if x3 == 0 && x4 <= u32::MAX as u64 => Some(IpAddr::V4(Ipv4Addr::from_bits(x4 as u32))),
        6 => Some(IpAddr::V6(Ipv6Addr::from_bits(
            (x3 as u128) << 64 | x4 as u128,
        ))),
        _ => None,
    }
}

/// The establish block: the counterpart of the QDIO data region (QDR) that a real
/// program hands the channel subsystem with Establish-QDIO-Queues. Like Linux's
/// `struct qdr` (`arch/s390/include/asm/qdio.h`) it carries a format, the queue counts and one queue descriptor per
/// queue (as `struct qdesfmt0`: storage list address, SLSB address), and adds the three
/// completion-vector bytes iqdio signals through. All fields are big-endian, as the
/// QDIO formats are; reserved bytes must be zero.
///
/// ```text
/// offset size  field
/// 0x00   1     format: 0
/// 0x01   1     flags: 0x01 interrupt immediately (the override), other bits zero
/// 0x02   1     input queues: 1
/// 0x03   1     output queues: 1
/// 0x04   4     reserved
/// 0x08   8     global summary byte address
/// 0x10   8     middle indicator byte address
/// 0x18   8     queue indicator byte address
/// 0x20   32    input queue descriptor:  0x20 reserved 8, 0x28 storage list address 8,
///                                       0x30 SLSB address 8, 0x38 reserved 8
/// 0x40   32    output queue descriptor: same layout from 0x40
/// 0x60         end (96 bytes)
/// ```
///
/// A storage list is 128 big-endian 8-byte SBAL addresses (1 KiB, as Linux's
/// `struct sl` in `asm/qdio.h`), buffer 0 first. The hypervisor reads the block and both storage lists
/// once, through the fabric's window check, and hands the fabric only its copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EstablishBlock {
    /// Flag byte 0x01: interrupt immediately.
    pub interrupt_immediately: bool,
    /// The global summary byte.
    pub global_indicator: u64,
    /// The middle indicator byte.
    pub middle_indicator: u64,
    /// The queue indicator byte.
    pub queue_indicator: u64,
    /// The input queue's storage list (128 SBAL addresses).
    pub input_sl: u64,
    /// The input SLSB.
    pub input_slsb: u64,
    /// The output queue's storage list.
    pub output_sl: u64,
    /// The output SLSB.
    pub output_slsb: u64,
}

/// Bytes of an [`EstablishBlock`].
pub const BLOCK_LEN: usize = 0x60;
/// Bytes of a storage list.
pub const SL_LEN: usize = 8 * QUEUE_BUFFERS;

const FLAG_INTERRUPT_IMMEDIATELY: u8 = 0x01;
const INPUT_DESCRIPTOR: usize = 0x20;
const OUTPUT_DESCRIPTOR: usize = 0x40;

fn be64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(w)
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

impl EstablishBlock {
    /// The block's bytes.
    pub fn encode(&self) -> [u8; BLOCK_LEN] {
        let mut b = [0u8; BLOCK_LEN];
        b[1] = if self.interrupt_immediately {
            FLAG_INTERRUPT_IMMEDIATELY
        } else {
            0
        };
        b[2] = 1;
        b[3] = 1;
        put64(&mut b, 0x08, self.global_indicator);
        put64(&mut b, 0x10, self.middle_indicator);
        put64(&mut b, 0x18, self.queue_indicator);
        put64(&mut b, INPUT_DESCRIPTOR + 0x08, self.input_sl);
        put64(&mut b, INPUT_DESCRIPTOR + 0x10, self.input_slsb);
        put64(&mut b, OUTPUT_DESCRIPTOR + 0x08, self.output_sl);
        put64(&mut b, OUTPUT_DESCRIPTOR + 0x10, self.output_slsb);
        b
    }

    /// Decodes a block, or `None` if it is malformed (format other than 0, queue counts
    /// other than 1, unknown flags, non-zero reserved bytes).
    pub fn decode(b: &[u8; BLOCK_LEN]) -> Option<Self> {
        let reserved_zero = b[4..8].iter().all(|&x| x == 0)
            && [INPUT_DESCRIPTOR, OUTPUT_DESCRIPTOR]
                .iter()
                .all(|&d| be64(b, d) == 0 && be64(b, d + 0x18) == 0);
        if b[0] != 0 || b[1] & !FLAG_INTERRUPT_IMMEDIATELY != 0 || b[2] != 1 || b[3] != 1 {
            return None;
        }
        if !reserved_zero {
            return None;
        }
        Some(Self {
            interrupt_immediately: b[1] & FLAG_INTERRUPT_IMMEDIATELY != 0,
            global_indicator: be64(b, 0x08),
            middle_indicator: be64(b, 0x10),
            queue_indicator: be64(b, 0x18),
            input_sl: be64(b, INPUT_DESCRIPTOR + 0x08),
            input_slsb: be64(b, INPUT_DESCRIPTOR + 0x10),
            output_sl: be64(b, OUTPUT_DESCRIPTOR + 0x08),
            output_slsb: be64(b, OUTPUT_DESCRIPTOR + 0x10),
        })
    }

    /// The fabric's parameters from this block and the two storage lists read at
    /// `input_sl` and `output_sl`. The interrupt cookie is 0: it is not the
    /// partition's to give; the hypervisor sets its own before it establishes.
    pub fn params(&self, input_sl: &[u8; SL_LEN], output_sl: &[u8; SL_LEN]) -> QueueSetParams {
        QueueSetParams {
            output_sbals: decode_sl(output_sl),
            input_sbals: decode_sl(input_sl),
            output_slsb: self.output_slsb,
            input_slsb: self.input_slsb,
            queue_indicator: self.queue_indicator,
            middle_indicator: self.middle_indicator,
            global_indicator: self.global_indicator,
            interrupt_immediately: self.interrupt_immediately,
            interrupt_cookie: 0,
            ..Default::default()
        }
    }
}

/// A storage list's bytes: 128 SBAL addresses, big-endian.
pub fn encode_sl(sbals: &[u64; QUEUE_BUFFERS]) -> [u8; SL_LEN] {
    let mut b = [0u8; SL_LEN];
    for (i, a) in sbals.iter().enumerate() {
        put64(&mut b, 8 * i, *a);
    }
    b
}

/// The 128 SBAL addresses of a storage list.
pub fn decode_sl(b: &[u8; SL_LEN]) -> [u64; QUEUE_BUFFERS] {
    core::array::from_fn(|i| be64(b, 8 * i))
}

/// Parses a decimal build-time option (read with `option_env!`): `default` when it is
/// absent, empty or not a decimal number. The hypervisor and the partition program read
/// their build-time settings (`IQDIO_MFS`, `IQDIO_FRAMES`, the Linux layout) with it.
pub const fn parse_option(s: Option<&str>, default: u32) -> u32 {
    let Some(s) = s else { return default };
    let b = s.as_bytes();
    if b.is_empty() {
        return default;
    }
    let mut v: u32 = 0;
    let mut i = 0;
    while i < b.len() {
        if !b[i].is_ascii_digit() {
            return default;
        }
        v = v * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    v
}

/// The maximum frame size the hypervisor's fabric and every partition program are built
/// with, from `IQDIO_MFS` (16, 24, 40 or 64 KiB; default 64): one definition, so the two
/// sides cannot disagree.
pub const MFS: Mfs = match Mfs::from_kib(parse_option(option_env!("IQDIO_MFS"), 64)) {
    Some(m) => m,
    None => Mfs::K64,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_options_parse_as_decimal_or_fall_back() {
        assert_eq!(parse_option(None, 7), 7);
        assert_eq!(parse_option(Some(""), 7), 7);
        assert_eq!(parse_option(Some("4096"), 7), 4096);
        assert_eq!(parse_option(Some("0x10"), 7), 7);
        assert_eq!(parse_option(Some("12a"), 7), 7);
        assert_eq!(MFS.kib() % 8, 0);
    }

    fn block() -> EstablishBlock {
        EstablishBlock {
            interrupt_immediately: true,
            global_indicator: 0x8000_1000,
            middle_indicator: 0x8000_1001,
            queue_indicator: 0x8000_1002,
            input_sl: 0x8000_2000,
            input_slsb: 0x8000_3000,
            output_sl: 0x8000_2400,
            output_slsb: 0x8000_3080,
        }
    }

    #[test]
    fn block_is_byte_exact_big_endian() {
        let b = block().encode();
        assert_eq!(&b[0..4], &[0, 1, 1, 1]);
        assert_eq!(&b[0x08..0x10], &[0, 0, 0, 0, 0x80, 0, 0x10, 0]);
        assert_eq!(&b[0x18..0x20], &[0, 0, 0, 0, 0x80, 0, 0x10, 2]);
        assert_eq!(&b[0x28..0x30], &[0, 0, 0, 0, 0x80, 0, 0x20, 0]);
        assert_eq!(&b[0x30..0x38], &[0, 0, 0, 0, 0x80, 0, 0x30, 0]);
        assert_eq!(&b[0x48..0x50], &[0, 0, 0, 0, 0x80, 0, 0x24, 0]);
        assert_eq!(&b[0x50..0x58], &[0, 0, 0, 0, 0x80, 0, 0x30, 0x80]);
        assert_eq!(EstablishBlock::decode(&b), Some(block()));
    }

    #[test]
    fn malformed_blocks_are_refused() {
        let good = block().encode();
        for (at, value) in [
            (0, 1),
            (1, 0x02),
            (2, 2),
            (3, 0),
            (5, 1),
            (0x20, 1),
            (0x5f, 1),
        ] {
            let mut b = good;
            b[at] = value;
            assert_eq!(
                EstablishBlock::decode(&b),
                None,
                "byte {at:#x} = {value:#x}"
            );
        }
    }

    #[test]
    fn storage_lists_round_trip_into_the_fabric_parameters() {
        let out: [u64; QUEUE_BUFFERS] = core::array::from_fn(|i| 0x9000_0000 + 256 * i as u64);
        let inp: [u64; QUEUE_BUFFERS] = core::array::from_fn(|i| 0xA000_0000 + 256 * i as u64);
        let (out_b, in_b) = (encode_sl(&out), encode_sl(&inp));
        assert_eq!(&out_b[8..16], &[0, 0, 0, 0, 0x90, 0, 1, 0]);
        let p = block().params(&in_b, &out_b);
        assert_eq!(p.output_sbals, out);
        assert_eq!(p.input_sbals, inp);
        assert_eq!(p.output_slsb, 0x8000_3080);
        assert_eq!(p.input_slsb, 0x8000_3000);
        assert_eq!(p.global_indicator, 0x8000_1000);
        assert!(p.interrupt_immediately);
    }

    #[test]
    fn addresses_cross_in_registers() {
        for ip in [
            "10.0.0.1".parse::<IpAddr>().unwrap(),
            "fd00::1:2".parse().unwrap(),
            "255.255.255.254".parse().unwrap(),
        ] {
            let (f, hi, lo) = ip_to_registers(ip);
            assert_eq!(ip_from_registers(f, hi, lo), Some(ip));
        }
        assert_eq!(ip_from_registers(5, 0, 1), None);
        assert_eq!(ip_from_registers(4, 1, 1), None);
        assert_eq!(ip_from_registers(4, 0, 1 << 32), None);
    }

    #[test]
    fn function_ids_are_vendor_hypervisor_fast_calls() {
        for call in [
            Call::Siga,
            Call::Establish,
            Call::RegisterAddress,
            Call::DeregisterAddress,
            Call::DeregisterQueueSet,
            Call::ConsoleWrite,
            Call::Exit,
            Call::Barrier,
        ] {
            assert_eq!(call.id() >> 24, 0xC6, "{call:?}");
            assert_eq!(Call::from_id(call.id()), Some(call));
        }
        assert_eq!(Call::from_id(0xC600_0000), None);
        assert_eq!(Call::from_id(0x8400_0000), None, "PSCI is not ours");
    }
}

/// The cost of a 64-byte SIGA, counted the same way wherever SIGA is issued (a direct
/// call into the fabric, or an HVC from a partition): timer ticks over `rounds` sends
/// of one 64-byte frame from `queue` to `dest` (the queue's own address: the frame comes
/// back into the same partition, taken after each send, outside the count).
pub mod measure {
    use core::net::IpAddr;

    use iqdio::Siga;
    use iqdio::driver::{QueueDriver, SendError};

    /// Bytes of the frame.
    pub const FRAME: usize = 64;

    /// Ticks (of `ticks`) spent in `rounds` calls of `QueueDriver::send` (prime, SIGA,
    /// result), the sum; after as many calls uncounted, so that neither side pays for
    /// first-time costs (cold caches, QEMU translating the code) the other does not.
    pub fn siga_cost<S: Siga + ?Sized>(
        queue: &mut QueueDriver,
        siga: &S,
        dest: IpAddr,
        rounds: u32,
        ticks: impl Fn() -> u64,
    ) -> Result<u64, SendError> {
        let frame = [0x5au8; FRAME];
        let mut total = 0;
        // Polling: the fabric raises no interrupt for the frames coming back, so the
        // count is the SIGA path alone on both sides (a direct call's queue has no core
        // to interrupt; a partition's would take a virtual interrupt per frame).
        queue.start_polling();
        for round in 0..2 * rounds {
            let t0 = ticks();
            queue.send(siga, dest, &frame)?;
            if round >= rounds {
                total += ticks() - t0;
            }
            while queue.receive(|_| {}).is_some() {}
        }
        if queue.stop_polling() {
            while queue.receive(|_| {}).is_some() {}
        }
        Ok(total)
    }
}

/// What the hostile scenario's two sides agree on: the partition program attacks, the
/// hypervisor counts. Physical addresses of the QEMU `virt` map the hypervisor uses.
pub mod hostile {
    /// Partition 0's window.
    pub const OTHER_WINDOW: u64 = 0x5000_0000;
    /// A page of partition 0's program code (stable once loaded): the target of the
    /// store into another window; the hypervisor compares it before and after.
    pub const OTHER_WINDOW_TARGET: u64 = OTHER_WINDOW + 0x1000;
    /// The hypervisor's image.
    pub const HYPERVISOR: u64 = 0x4008_0000;
    /// Inside the hypervisor's image (its code): the target of the store into the
    /// hypervisor; compared before and after.
    pub const HYPERVISOR_TARGET: u64 = 0x4010_0000;
    /// The GIC distributor.
    pub const GICD: u64 = 0x0800_0000;
    /// The PL011 UART.
    pub const UART: u64 = 0x0900_0000;
    /// Stop attempts: runs 1..=STOP_ATTEMPTS of the hostile partition.
    pub const STOP_ATTEMPTS: u64 = 9;
}

/// The scenarios of the partition program (x2 at its entry), as the hypervisor images
/// start them; x3 is the scenario's argument.
pub mod scenario {
    /// The partitions demo: all-to-all, then ping-pong.
    pub const PARTITIONS: u64 = 0;
    /// smoltcp TCP: partition 0 serves, the others each move 1 MiB.
    pub const TCP: u64 = 1;
    /// The hostile partition (the others run [`PARTITIONS`]): x3 = 0 for the refusal
    /// attempts, k > 0 for stop attempt k.
    pub const HOSTILE: u64 = 2;
    /// Self-test probe: HVC round trips keep the registers.
    pub const PROBE_TRAP: u64 = 16;
    /// Self-test probe: sleep in WFI until a frame arrives.
    pub const PROBE_WAIT: u64 = 17;
    /// Self-test probe: send one frame to partition x3.
    pub const PROBE_SEND: u64 = 18;
    /// Self-test probe: write [`MARKER`] at [`MARKER_OFFSET`] of its own window, then
    /// store into physical address x3 (another window's marker).
    pub const PROBE_PEEK: u64 = 19;
    /// Self-test probe: establish and register, then fault.
    pub const PROBE_FAULT: u64 = 20;
    /// What [`PROBE_PEEK`] writes into its own window.
    pub const MARKER: u64 = 0xa5a5_5a5a_0123_4567;
    /// Where, from the window's start (the partition program's queue area).
    pub const MARKER_OFFSET: u64 = 0x80_0000;
}
