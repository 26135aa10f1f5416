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
//! | SIGA | `0xC600_0001` | function code (0 write, 3 write-multiple, 4 WRITEQ) | subchannel | queue mask | QAOB address (WRITEQ; 0 otherwise) | | x0 condition code, x1 busy bit `0x8000_0000` with cc2 |
//! | establish | `0xC600_0002` | subchannel | guest address of the [establish block](EstablishBlock) | | | | x0 return code |
//! | register address | `0xC600_0003` | subchannel | family 4 or 6 | IPv6 high 64 bits (0 for IPv4) | IPv6 low 64 bits, or the IPv4 address | | x0 return code |
//! | deregister address | `0xC600_0004` | as register | | | | | x0 return code |
//! | deregister queue set | `0xC600_0005` | subchannel | | | | | x0 return code |
//! | console write | `0xC600_0006` | guest address of the text | length, at most [`CONSOLE_MAX`] | | | | x0 return code |
//! | exit | `0xC600_0007` | status ([`ExitStatus`]) | result 0 | result 1 | result 2 | results 3, 4 | does not return |
//! | barrier | `0xC600_0008` | | | | | | x0 partitions still running, once all of them called it |
//! | join group | `0xC600_0009` | subchannel | family 4 or 6 | IPv6 high 64 bits (0 for IPv4) | IPv6 low 64 bits, or the IPv4 address | | x0 return code |
//! | leave group | `0xC600_000A` | as join | | | | | x0 return code |
//! | broadcast | `0xC600_000B` | subchannel | 1 on, 0 off | | | | x0 return code |
//! | register MAC | `0xC600_000C` | subchannel | MAC ([`mac_to_register`]) | | | | x0 return code |
//! | deregister MAC | `0xC600_000D` | as register MAC | | | | | x0 return code |
//! | join VLAN | `0xC600_000E` | subchannel | VLAN id (0 untagged, 1-4094) | | | | x0 return code |
//! | leave VLAN | `0xC600_000F` | as join VLAN | | | | | x0 return code |
//! | register group MAC | `0xC600_0010` | subchannel | group MAC ([`mac_to_register`]) | | | | x0 return code |
//! | deregister group MAC | `0xC600_0011` | as register group MAC | | | | | x0 return code |
//!
//! Return codes: 0 done; the fabric's registration codes (`0xE005` duplicate, `0xE006`
//! table full, `0xE00B` not found, `0xF0xx`, see `iqdio::RegistrationError::code`);
//! [`RC_OUTSIDE_MEMORY`] (`0xF005`, the fabric's "outside memory") for a guest address
//! that is not wholly inside the partition's window; [`RC_BAD_BLOCK`] and
//! [`RC_BAD_ARGUMENT`] of this interface (0xF1xx, outside the fabric's 0xF0xx, so a
//! code names one cause). Any other function id, and any SMC, stops the partition.
//!
//! The group calls are the address calls' counterparts for multicast (Linux's
//! SETIPM/DELIPM): join makes the queue set a member of the group (IPv4 224.0.0.0/4,
//! IPv6 ff00::/8; another address is `0xF007`, a member already `0xE005`), leave ends
//! it (`0xE00B` if it is none). The broadcast call switches the queue set's broadcast
//! reception (on when on `0xE005`, off when off `0xE00B`). Each membership counts
//! toward the partition's address quota (`0xF00D`) and takes a place in the target
//! table (`0xE006`), as an address does.
//!
//! The layer-2 calls are for a queue set established in layer-2 mode (the establish
//! block's flag 0x02; on a layer-3 set they are `0xF013`, as the address and group
//! calls are on a layer-2 one): register MAC and deregister MAC are Linux's
//! SETVMAC/DELVMAC (a group or all-zero MAC `0xF007`, a MAC taken `0x2005`, not held
//! `0x2010`), join and leave VLAN make the set a member of a VLAN or end it (a member
//! already `0x2016`, none `0xE00B`, above 4094 `0xF007`), the group MAC calls are
//! SETGMAC/DELGMAC (not a group MAC, or the broadcast MAC, `0xF007`). A MAC travels in
//! the low 48 bits of x2, first byte highest; higher bits set are [`RC_BAD_ARGUMENT`].
#![no_std]
#![deny(missing_docs)]
#![deny(unsafe_code)]

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use iqdio::qdio::QUEUE_BUFFERS;
use iqdio::{MAX_OUTPUT_QUEUES, Mfs, QueueAddresses, QueueSetParams};

/// SMCCC: fast call, 64-bit convention, owning entity 6 (vendor-specific hypervisor
/// service), function 0 (DEN 0028 section 6.2).
pub const VENDOR_HYP_BASE: u64 = 0xC600_0000;

/// SIGA: x1 function code, x2 subchannel, x3 queue mask, x4 the QAOB's guest address
/// for WRITEQ (function code 4; Linux's `qdio_siga_output` passes it in a register as
/// well, `drivers/s390/cio/qdio_main.c`), ignored by the others.
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
/// Join a multicast group: x1 subchannel, x2 family, x3/x4 the group's address.
pub const HVC_JOIN_GROUP: u64 = VENDOR_HYP_BASE | 9;
/// Leave a multicast group: registers as [`HVC_JOIN_GROUP`].
pub const HVC_LEAVE_GROUP: u64 = VENDOR_HYP_BASE | 10;
/// Switch broadcast reception: x1 subchannel, x2 1 (on) or 0 (off).
pub const HVC_BROADCAST: u64 = VENDOR_HYP_BASE | 11;
/// Register a unicast MAC address (layer 2): x1 subchannel, x2 the MAC.
pub const HVC_REGISTER_MAC: u64 = VENDOR_HYP_BASE | 12;
/// Deregister a MAC address: registers as [`HVC_REGISTER_MAC`].
pub const HVC_DEREGISTER_MAC: u64 = VENDOR_HYP_BASE | 13;
/// Join a VLAN (layer 2): x1 subchannel, x2 the VLAN id (0: the untagged LAN).
pub const HVC_JOIN_VLAN: u64 = VENDOR_HYP_BASE | 14;
/// Leave a VLAN: registers as [`HVC_JOIN_VLAN`].
pub const HVC_LEAVE_VLAN: u64 = VENDOR_HYP_BASE | 15;
/// Receive a group MAC (layer 2): x1 subchannel, x2 the group MAC.
pub const HVC_REGISTER_GROUP_MAC: u64 = VENDOR_HYP_BASE | 16;
/// Stop receiving a group MAC: registers as [`HVC_REGISTER_GROUP_MAC`].
pub const HVC_DEREGISTER_GROUP_MAC: u64 = VENDOR_HYP_BASE | 17;

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
    /// [`HVC_JOIN_GROUP`].
    JoinGroup,
    /// [`HVC_LEAVE_GROUP`].
    LeaveGroup,
    /// [`HVC_BROADCAST`].
    Broadcast,
    /// [`HVC_REGISTER_MAC`].
    RegisterMac,
    /// [`HVC_DEREGISTER_MAC`].
    DeregisterMac,
    /// [`HVC_JOIN_VLAN`].
    JoinVlan,
    /// [`HVC_LEAVE_VLAN`].
    LeaveVlan,
    /// [`HVC_REGISTER_GROUP_MAC`].
    RegisterGroupMac,
    /// [`HVC_DEREGISTER_GROUP_MAC`].
    DeregisterGroupMac,
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
            HVC_JOIN_GROUP => Self::JoinGroup,
            HVC_LEAVE_GROUP => Self::LeaveGroup,
            HVC_BROADCAST => Self::Broadcast,
            HVC_REGISTER_MAC => Self::RegisterMac,
            HVC_DEREGISTER_MAC => Self::DeregisterMac,
            HVC_JOIN_VLAN => Self::JoinVlan,
            HVC_LEAVE_VLAN => Self::LeaveVlan,
            HVC_REGISTER_GROUP_MAC => Self::RegisterGroupMac,
            HVC_DEREGISTER_GROUP_MAC => Self::DeregisterGroupMac,
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
            Self::JoinGroup => HVC_JOIN_GROUP,
            Self::LeaveGroup => HVC_LEAVE_GROUP,
            Self::Broadcast => HVC_BROADCAST,
            Self::RegisterMac => HVC_REGISTER_MAC,
            Self::DeregisterMac => HVC_DEREGISTER_MAC,
            Self::JoinVlan => HVC_JOIN_VLAN,
            Self::LeaveVlan => HVC_LEAVE_VLAN,
            Self::RegisterGroupMac => HVC_REGISTER_GROUP_MAC,
            Self::DeregisterGroupMac => HVC_DEREGISTER_GROUP_MAC,
        }
    }
}

/// Return code: done.
pub const RC_OK: u64 = 0;
/// Return code: a guest address (the establish block, a storage list, console text) is
/// not wholly inside the partition's window; the fabric's "outside memory" code.
pub const RC_OUTSIDE_MEMORY: u64 = 0xF005;
/// Return code: the establish block is malformed (format, queue counts, reserved bytes).
/// Outside the fabric's own 0xF0xx codes (its 0xF010 and 0xF011 name other causes).
pub const RC_BAD_BLOCK: u64 = 0xF101;
/// Return code: an argument register is out of range (subchannel above 0xFFFF, family
/// other than 4 or 6, broadcast switch other than 0 or 1, console length above
/// [`CONSOLE_MAX`]).
pub const RC_BAD_ARGUMENT: u64 = 0xF102;

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

/// A MAC address as the layer-2 calls carry it: the low 48 bits, its first byte
/// highest.
pub const fn mac_to_register(mac: [u8; 6]) -> u64 {
    u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])
}

/// The MAC address in a layer-2 call's register, or `None` if bits above 48 are set.
pub const fn mac_from_register(x: u64) -> Option<[u8; 6]> {
    if x >> 48 != 0 {
        return None;
    }
    let b = x.to_be_bytes();
    Some([b[2], b[3], b[4], b[5], b[6], b[7]])
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
/// `struct qdr` (`arch/s390/include/asm/qdio.h`) it carries a format, the queue counts
/// and one queue descriptor per queue (as `struct qdesfmt0`: storage list address,
/// SLSB address), and adds the three completion-vector bytes iqdio signals through.
/// All fields are big-endian, as the QDIO formats are; reserved bytes must be zero.
///
/// ```text
/// offset size  field
/// 0x00   1     format: 0
/// 0x01   1     flags: 0x01 interrupt immediately (the override), 0x02 layer 2 (the
///              queue set carries Ethernet frames, `QueueSetParams::layer2`), other
///              bits zero
/// 0x02   1     input queues: 1, or 2 with a completion queue (Linux's `struct qdr`
///              counts the completion queue as the second input queue, `QETH_CQ_ENABLED`)
/// 0x03   1     output queues: n, 1 to 4 (at most the hypervisor fabric's, else 0xF012)
/// 0x04   4     reserved
/// 0x08   8     global summary byte address
/// 0x10   8     middle indicator byte address
/// 0x18   8     queue indicator byte address
/// 0x20   32    input queue descriptor:  0x20 reserved 8, 0x28 storage list address 8,
///                                       0x30 SLSB address 8, 0x38 reserved 8
/// 0x40   32    output queue 0 descriptor: same layout from 0x40
/// ...          output queue k's at 0x40 + 32 k
/// 0x40 + 32 n  end without a completion queue (96 bytes with one output queue, 192
///              with four); with one (input queues 2), its descriptor, same layout,
/// 0x60 + 32 n  end (128 to 224 bytes)
/// ```
///
/// With two output queues or more the highest-numbered is the multicast queue (as the
/// fabric's `QueueSetParams` say). A storage list is 128 big-endian 8-byte SBAL
/// addresses (1 KiB, as Linux's `struct sl` in `asm/qdio.h`), buffer 0 first. The
/// hypervisor reads the block's first [`BLOCK_HEAD`] bytes for the count, then the
/// whole block of [`block_len`] bytes once more and decodes that one copy (a count
/// changed in between no longer matches the length: malformed), then each storage list
/// once, through the fabric's window check, and hands the fabric only its copies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EstablishBlock {
    /// Flag byte 0x01: interrupt immediately.
    pub interrupt_immediately: bool,
    /// Flag byte 0x02: layer-2 mode.
    pub layer2: bool,
    /// The global summary byte.
    pub global_indicator: u64,
    /// The middle indicator byte.
    pub middle_indicator: u64,
    /// The queue indicator byte.
    pub queue_indicator: u64,
    /// The input queue's storage list (128 SBAL addresses) and SLSB.
    pub input: QueueDescriptor,
    /// Output queues 0 to `output_queues - 1`; the rest are not part of the block
    /// (zero).
    pub outputs: [QueueDescriptor; MAX_OUTPUT_QUEUES],
    /// Output queues: 1 to 4.
    pub output_queues: u8,
    /// The completion queue's storage list and SLSB, if the queue set has one.
    pub completion_queue: Option<QueueDescriptor>,
}

/// One queue descriptor of an [`EstablishBlock`]: where its storage list and its SLSB
/// are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueDescriptor {
    /// The storage list: 128 SBAL addresses.
    pub sl: u64,
    /// The SLSB.
    pub slsb: u64,
}

/// Bytes of an [`EstablishBlock`] with one output queue.
pub const BLOCK_LEN: usize = block_len(1);
/// Most bytes of an [`EstablishBlock`] (four output queues and a completion queue).
pub const BLOCK_MAX: usize = block_len(MAX_OUTPUT_QUEUES as u8) + DESCRIPTOR_LEN;
/// The index [`EstablishBlock::params`] asks the completion queue's storage list by
/// (after output queues 0 to 3).
pub const COMPLETION_SL: usize = MAX_OUTPUT_QUEUES;
/// Bytes before the output descriptors: the part that says how many there are.
pub const BLOCK_HEAD: usize = OUTPUT_DESCRIPTOR;
/// Bytes of a storage list.
pub const SL_LEN: usize = 8 * QUEUE_BUFFERS;

/// Bytes of an establish block with `output_queues` output queues.
pub const fn block_len(output_queues: u8) -> usize {
    OUTPUT_DESCRIPTOR + DESCRIPTOR_LEN * output_queues as usize
}

const FLAG_INTERRUPT_IMMEDIATELY: u8 = 0x01;
const FLAG_LAYER2: u8 = 0x02;
const INPUT_DESCRIPTOR: usize = 0x20;
const OUTPUT_DESCRIPTOR: usize = 0x40;
const DESCRIPTOR_LEN: usize = 0x20;

fn be64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    if let Some(src) = b.get(at..at + 8) {
        w.copy_from_slice(src);
    }
    u64::from_be_bytes(w)
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    if let Some(dst) = b.get_mut(at..at + 8) {
        dst.copy_from_slice(&v.to_be_bytes());
    }
}

impl EstablishBlock {
    /// The output queue count of a block whose first [`BLOCK_HEAD`] bytes are `head`,
    /// when it is one the block format allows (1 to 4): how many bytes to read.
    pub fn output_queues_of(head: &[u8]) -> Option<u8> {
        head.get(3)
            .copied()
            .filter(|n| (1..=MAX_OUTPUT_QUEUES as u8).contains(n))
    }

    /// Bytes of the block whose first [`BLOCK_HEAD`] bytes are `head`: [`block_len`] of
    /// its output queue count, and a descriptor more when its input queue count is 2
    /// (a completion queue); `None` for counts the format does not allow.
    pub fn len_of(head: &[u8]) -> Option<usize> {
        let outputs = Self::output_queues_of(head)?;
        let cq = match head.get(2)? {
            1 => 0,
            2 => DESCRIPTOR_LEN,
            _ => return None,
        };
        Some(block_len(outputs) + cq)
    }

    /// Bytes of this block ([`block_len`] of its output queue count, and a descriptor
    /// more with a completion queue).
    pub const fn byte_len(&self) -> usize {
        block_len(self.output_queues)
            + if self.completion_queue.is_some() {
                DESCRIPTOR_LEN
            } else {
                0
            }
    }

    /// The storage list address [`params`](Self::params) asks for by `k`: output
    /// queue `k`'s, or the completion queue's for [`COMPLETION_SL`].
    pub fn storage_list(&self, k: usize) -> Option<u64> {
        if k == COMPLETION_SL {
            return self.completion_queue.map(|d| d.sl);
        }
        (k < usize::from(self.output_queues))
            .then(|| self.outputs.get(k).map(|d| d.sl))
            .flatten()
    }

    /// This block with a completion queue (its storage list and SLSB).
    pub const fn with_completion_queue(mut self, sl: u64, slsb: u64) -> Self {
        self.completion_queue = Some(QueueDescriptor { sl, slsb });
        self
    }

    /// The block's bytes: the first [`byte_len`](Self::byte_len) of the array (the rest
    /// zero).
    pub fn encode(&self) -> [u8; BLOCK_MAX] {
        let mut b = [0u8; BLOCK_MAX];
        b[1] = if self.interrupt_immediately {
            FLAG_INTERRUPT_IMMEDIATELY
        } else {
            0
        } | if self.layer2 { FLAG_LAYER2 } else { 0 };
        b[2] = if self.completion_queue.is_some() {
            2
        } else {
            1
        };
        b[3] = self.output_queues;
        put64(&mut b, 0x08, self.global_indicator);
        put64(&mut b, 0x10, self.middle_indicator);
        put64(&mut b, 0x18, self.queue_indicator);
        let descriptors = core::iter::once((INPUT_DESCRIPTOR, &self.input)).chain(
            self.outputs
                .iter()
                .take(usize::from(self.output_queues))
                .enumerate()
                .map(|(k, d)| (OUTPUT_DESCRIPTOR + DESCRIPTOR_LEN * k, d)),
        );
        let cq = self
            .completion_queue
            .as_ref()
            .map(|d| (block_len(self.output_queues), d));
        for (at, d) in descriptors.chain(cq) {
            put64(&mut b, at + 0x08, d.sl);
            put64(&mut b, at + 0x10, d.slsb);
        }
        b
    }

    /// Decodes a block of exactly its own length, or `None` if it is malformed:
    /// format other than 0, unknown flags, an input queue count other than 1 or 2, an
    /// output queue count outside 1 to 4, counts other than the bytes given say,
    /// non-zero reserved bytes.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let outputs = Self::output_queues_of(b)?;
        if Some(b.len()) != Self::len_of(b)
            || b[0] != 0
            || b[1] & !(FLAG_INTERRUPT_IMMEDIATELY | FLAG_LAYER2) != 0
            || b[4..8].iter().any(|&x| x != 0)
        {
            return None;
        }
        let cq_at = block_len(outputs);
        let cq = b.len() > cq_at;
        let starts = core::iter::once(INPUT_DESCRIPTOR)
            .chain((0..usize::from(outputs)).map(|k| OUTPUT_DESCRIPTOR + DESCRIPTOR_LEN * k))
            .chain(cq.then_some(cq_at));
        let mut descriptors = [QueueDescriptor::default(); 2 + MAX_OUTPUT_QUEUES];
        for (d, at) in descriptors.iter_mut().zip(starts) {
            if be64(b, at) != 0 || be64(b, at + 0x18) != 0 {
                return None;
            }
            *d = QueueDescriptor {
                sl: be64(b, at + 0x08),
                slsb: be64(b, at + 0x10),
            };
        }
        let [input, o0, o1, o2, o3, last] = descriptors;
        let mut outs = [o0, o1, o2, o3];
        // With four output queues the completion queue's descriptor is the sixth; with
        // fewer it is the one after the last output queue's.
        let completion = if !cq {
            None
        } else if usize::from(outputs) == MAX_OUTPUT_QUEUES {
            Some(last)
        } else {
            let d = outs.get_mut(usize::from(outputs))?;
            Some(core::mem::take(d))
        };
        Some(Self {
            interrupt_immediately: b[1] & FLAG_INTERRUPT_IMMEDIATELY != 0,
            layer2: b[1] & FLAG_LAYER2 != 0,
            global_indicator: be64(b, 0x08),
            middle_indicator: be64(b, 0x10),
            queue_indicator: be64(b, 0x18),
            input,
            outputs: outs,
            output_queues: outputs,
            completion_queue: completion,
        })
    }

    /// The fabric's parameters from this block and its storage lists, read at the
    /// descriptors' addresses: the input queue's, then output queue `k`'s from
    /// `output_sl(k)`, then, with a completion queue, its list from
    /// `output_sl(COMPLETION_SL)` (`None` stops: a list that could not be read;
    /// [`storage_list`](Self::storage_list) names each address). The interrupt
    /// cookie is 0: it is not the partition's to give; the hypervisor sets its own
    /// before it establishes.
    pub fn params(
        &self,
        input_sl: &[u8; SL_LEN],
        mut output_sl: impl FnMut(usize, &mut [u8; SL_LEN]) -> Option<()>,
    ) -> Option<QueueSetParams> {
        let mut p = QueueSetParams {
            input_sbals: decode_sl(input_sl),
            input_slsb: self.input.slsb,
            queue_indicator: self.queue_indicator,
            middle_indicator: self.middle_indicator,
            global_indicator: self.global_indicator,
            interrupt_immediately: self.interrupt_immediately,
            interrupt_cookie: 0,
            layer2: self.layer2,
            ..Default::default()
        };
        let mut sl = [0u8; SL_LEN];
        for (k, d) in self
            .outputs
            .iter()
            .take(usize::from(self.output_queues))
            .enumerate()
        {
            output_sl(k, &mut sl)?;
            if k == 0 {
                p.output_sbals = decode_sl(&sl);
                p.output_slsb = d.slsb;
            } else {
                // At most three after queue 0 (`output_queues` is at most 4).
                p.more_outputs
                    .push(QueueAddresses {
                        sbals: decode_sl(&sl),
                        slsb: d.slsb,
                    })
                    .ok()?;
            }
        }
        if let Some(d) = self.completion_queue {
            output_sl(COMPLETION_SL, &mut sl)?;
            p.completion_queue = Some(QueueAddresses {
                sbals: decode_sl(&sl),
                slsb: d.slsb,
            });
        }
        Some(p)
    }

    /// The block for a queue set's parameters, with its storage lists at the given
    /// addresses (the input queue's, then each output queue's): as many output queues
    /// as both the parameters and `output_sls` name (at most 4).
    pub fn for_params(p: &QueueSetParams, input_sl: u64, output_sls: &[u64]) -> Self {
        let mut outputs = [QueueDescriptor::default(); MAX_OUTPUT_QUEUES];
        let slsbs = core::iter::once(p.output_slsb).chain(p.more_outputs.iter().map(|o| o.slsb));
        for ((d, slsb), &sl) in outputs.iter_mut().zip(slsbs).zip(output_sls) {
            *d = QueueDescriptor { sl, slsb };
        }
        Self {
            interrupt_immediately: p.interrupt_immediately,
            layer2: p.layer2,
            global_indicator: p.global_indicator,
            middle_indicator: p.middle_indicator,
            queue_indicator: p.queue_indicator,
            input: QueueDescriptor {
                sl: input_sl,
                slsb: p.input_slsb,
            },
            outputs,
            output_queues: p
                .output_queues()
                .min(output_sls.len())
                .min(MAX_OUTPUT_QUEUES) as u8,
            completion_queue: None,
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
        let mut outputs = [QueueDescriptor::default(); MAX_OUTPUT_QUEUES];
        outputs[0] = QueueDescriptor {
            sl: 0x8000_2400,
            slsb: 0x8000_3080,
        };
        EstablishBlock {
            interrupt_immediately: true,
            layer2: false,
            global_indicator: 0x8000_1000,
            middle_indicator: 0x8000_1001,
            queue_indicator: 0x8000_1002,
            input: QueueDescriptor {
                sl: 0x8000_2000,
                slsb: 0x8000_3000,
            },
            outputs,
            output_queues: 1,
            completion_queue: None,
        }
    }

    /// A block with `n` output queues: queue k's list at 0x8000_2400 + 0x400 k, its
    /// SLSB at 0x8000_3080 + 0x80 k.
    fn block_of(n: u8) -> EstablishBlock {
        let mut b = block();
        for k in 0..usize::from(n) {
            b.outputs[k] = QueueDescriptor {
                sl: 0x8000_2400 + 0x400 * k as u64,
                slsb: 0x8000_3080 + 0x80 * k as u64,
            };
        }
        b.output_queues = n;
        b
    }

    #[test]
    fn block_is_byte_exact_big_endian() {
        let raw = block().encode();
        let b = &raw[..BLOCK_LEN];
        assert_eq!(BLOCK_LEN, 0x60);
        assert_eq!(&b[0..4], &[0, 1, 1, 1]);
        assert_eq!(&b[0x08..0x10], &[0, 0, 0, 0, 0x80, 0, 0x10, 0]);
        assert_eq!(&b[0x18..0x20], &[0, 0, 0, 0, 0x80, 0, 0x10, 2]);
        assert_eq!(&b[0x28..0x30], &[0, 0, 0, 0, 0x80, 0, 0x20, 0]);
        assert_eq!(&b[0x30..0x38], &[0, 0, 0, 0, 0x80, 0, 0x30, 0]);
        assert_eq!(&b[0x48..0x50], &[0, 0, 0, 0, 0x80, 0, 0x24, 0]);
        assert_eq!(&b[0x50..0x58], &[0, 0, 0, 0, 0x80, 0, 0x30, 0x80]);
        assert!(raw[BLOCK_LEN..].iter().all(|&x| x == 0));
        assert_eq!(EstablishBlock::decode(b), Some(block()));
    }

    #[test]
    fn the_block_grows_by_one_descriptor_per_output_queue() {
        for n in 1..=4u8 {
            let want = block_of(n);
            let raw = want.encode();
            let len = want.byte_len();
            assert_eq!(len, 0x40 + 0x20 * usize::from(n));
            assert_eq!(raw[3], n);
            assert_eq!(
                EstablishBlock::output_queues_of(&raw[..BLOCK_HEAD]),
                Some(n)
            );
            let last = 0x40 + 0x20 * (usize::from(n) - 1);
            assert_eq!(
                u64::from_be_bytes(raw[last + 8..last + 16].try_into().unwrap()),
                0x8000_2400 + 0x400 * (u64::from(n) - 1)
            );
            assert_eq!(EstablishBlock::decode(&raw[..len]), Some(want));
            // The length must be the count's: one descriptor more or less is malformed.
            assert_eq!(EstablishBlock::decode(&raw[..len - 0x20]), None);
            if n < 4 {
                assert_eq!(EstablishBlock::decode(&raw[..len + 0x20]), None);
            }
        }
        assert_eq!(BLOCK_MAX, 0xE0);
        let mut raw = block().encode();
        for bad in [0, 5, 0xff] {
            raw[3] = bad;
            assert_eq!(EstablishBlock::output_queues_of(&raw), None);
        }
    }

    #[test]
    fn a_completion_queue_is_the_second_input_queue_after_the_outputs() {
        for n in 1..=4u8 {
            let want = block_of(n).with_completion_queue(0x8000_4000, 0x8000_3300);
            let raw = want.encode();
            let len = want.byte_len();
            let at = 0x40 + 0x20 * usize::from(n);
            assert_eq!(len, at + 0x20);
            assert_eq!(raw[2], 2);
            assert_eq!(EstablishBlock::len_of(&raw[..BLOCK_HEAD]), Some(len));
            assert_eq!(&raw[at + 8..at + 16], &[0, 0, 0, 0, 0x80, 0, 0x40, 0]);
            assert_eq!(&raw[at + 16..at + 24], &[0, 0, 0, 0, 0x80, 0, 0x33, 0]);
            assert_eq!(EstablishBlock::decode(&raw[..len]), Some(want));
            // Without its descriptor, or with the count 1 and the descriptor: malformed.
            assert_eq!(EstablishBlock::decode(&raw[..len - 0x20]), None);
            let mut one = raw;
            one[2] = 1;
            assert_eq!(EstablishBlock::decode(&one[..len]), None);
            for reserved in [at, at + 0x1f] {
                let mut bad = raw;
                bad[reserved] = 1;
                assert_eq!(EstablishBlock::decode(&bad[..len]), None);
            }
            assert_eq!(want.storage_list(COMPLETION_SL), Some(0x8000_4000));
            let cq_sl: [u64; QUEUE_BUFFERS] =
                core::array::from_fn(|i| 0xB000_0000 + 256 * i as u64);
            let z = encode_sl(&[0; QUEUE_BUFFERS]);
            let p = want
                .params(&z, |k, sl| {
                    if k == COMPLETION_SL {
                        *sl = encode_sl(&cq_sl);
                    }
                    Some(())
                })
                .unwrap();
            let got = p.completion_queue.clone().unwrap();
            assert_eq!((got.sbals, got.slsb), (cq_sl, 0x8000_3300));
            assert_eq!(p.output_queues(), usize::from(n));
        }
        assert_eq!(EstablishBlock::len_of(&[0, 0, 3, 1]), None);
        assert_eq!(block().storage_list(COMPLETION_SL), None);
        let z = encode_sl(&[0; QUEUE_BUFFERS]);
        let p = block().params(&z, |_, _| Some(())).unwrap();
        assert!(p.completion_queue.is_none());
    }

    #[test]
    fn malformed_blocks_are_refused() {
        let good = block_of(2).encode();
        let len = block_of(2).byte_len();
        for (at, value) in [
            (0, 1),
            // 0x02 is layer 2 now; the bits above it are unknown.
            (1, 0x04),
            (1, 0x80),
            (2, 2),
            (2, 0),
            (3, 0),
            (3, 1),
            (3, 3),
            (5, 1),
            (0x20, 1),
            (0x3f, 1),
            (0x40, 1),
            (0x5f, 1),
            (0x60, 1),
            (0x7f, 1),
        ] {
            let mut b = good;
            b[at] = value;
            assert_eq!(
                EstablishBlock::decode(&b[..len]),
                None,
                "byte {at:#x} = {value:#x}"
            );
        }
        assert_eq!(EstablishBlock::decode(&good[..len]), Some(block_of(2)));
        assert_eq!(EstablishBlock::decode(&[]), None);
    }

    #[test]
    fn storage_lists_round_trip_into_the_fabric_parameters() {
        let sbals =
            |base: u64| -> [u64; QUEUE_BUFFERS] { core::array::from_fn(|i| base + 256 * i as u64) };
        let inp = sbals(0xA000_0000);
        let outs = [sbals(0x9000_0000), sbals(0x9100_0000), sbals(0x9200_0000)];
        let in_b = encode_sl(&inp);
        assert_eq!(&encode_sl(&outs[0])[8..16], &[0, 0, 0, 0, 0x90, 0, 1, 0]);
        let mut asked = [usize::MAX; 4];
        let mut calls = 0;
        let p = block_of(3)
            .params(&in_b, |k, sl| {
                asked[calls] = k;
                calls += 1;
                *sl = encode_sl(&outs[k]);
                Some(())
            })
            .unwrap();
        assert_eq!(asked[..calls], [0, 1, 2]);
        assert_eq!(p.output_sbals, outs[0]);
        assert_eq!(p.input_sbals, inp);
        assert_eq!(p.output_slsb, 0x8000_3080);
        assert_eq!(p.output_queues(), 3);
        assert_eq!(p.more_outputs[0].sbals, outs[1]);
        assert_eq!(p.more_outputs[1].slsb, 0x8000_3180);
        assert_eq!(p.input_slsb, 0x8000_3000);
        assert_eq!(p.global_indicator, 0x8000_1000);
        assert!(p.interrupt_immediately);
        // A list that cannot be read stops it.
        assert_eq!(
            block_of(2).params(&in_b, |k, _| (k == 0).then_some(())),
            None
        );
        // And back: the block for these parameters names the same queues.
        let back =
            EstablishBlock::for_params(&p, 0x8000_2000, &[0x8000_2400, 0x8000_2800, 0x8000_2c00]);
        assert_eq!(back, block_of(3));
    }

    #[test]
    fn multicast_copies_follow_the_memberships() {
        use multicast::*;
        // 4 partitions by the rules: group 0 {0, 2}, group 1 {1, 2}, group 2 all,
        // broadcast {0, 1, 2}.
        let bits: [u32; 4] = core::array::from_fn(|p| memberships(p, 4));
        assert_eq!(bits, [0b1101, 0b1110, 0b1111, 0b0100]);
        // Partition 3 sends to groups 0, 1, 2 in rounds 0, 1, 2 (group_of(3, r)), a
        // broadcast each round, unicast to 0, 1, 2.
        assert_eq!(copies_from(3, 0, 4, 3, &bits), 2 + 3 + 1);
        assert_eq!(copies_from(3, 2, 4, 3, &bits), 3 + 3 + 1);
        // The last partition has broadcast off and only group 2.
        assert_eq!(copies_from(0, 3, 4, 3, &bits), 2, "group 2 and one unicast");
        assert_eq!(copies_from(1, 1, 4, 3, &bits), 0, "no copy to the sender");
        // Over all pairs: group frames times their other members, broadcasts times the
        // other members of the domain, one per unicast frame.
        let total: u64 = (0..4)
            .flat_map(|s| (0..4).map(move |m| (s, m)))
            .map(|(s, m)| copies_from(s, m, 4, 30, &bits))
            .sum();
        assert_eq!(total, 630);
        assert_eq!(phases(450), 50);
        assert_eq!(phases(0), 1);
    }

    #[test]
    fn macs_cross_in_registers_and_the_layer_flag_in_the_block() {
        let mac = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
        assert_eq!(mac_to_register(mac), 0x0211_2233_4455);
        assert_eq!(mac_from_register(0x0211_2233_4455), Some(mac));
        assert_eq!(mac_from_register(1 << 48), None);
        for call in [
            Call::RegisterMac,
            Call::DeregisterMac,
            Call::JoinVlan,
            Call::LeaveVlan,
            Call::RegisterGroupMac,
            Call::DeregisterGroupMac,
        ] {
            assert_eq!(Call::from_id(call.id()), Some(call));
        }
        let mut b = block();
        b.layer2 = true;
        let raw = b.encode();
        assert_eq!(raw[1], 0x03, "interrupt immediately and layer 2");
        let decoded = EstablishBlock::decode(&raw[..BLOCK_LEN]).unwrap();
        assert!(decoded.layer2);
        let p = decoded.params(&[0; SL_LEN], |_, _| Some(())).unwrap();
        assert!(p.layer2);
        assert!(EstablishBlock::for_params(&p, 0, &[0]).layer2);
        let mut bad = raw;
        bad[1] = 0x04;
        assert_eq!(EstablishBlock::decode(&bad[..BLOCK_LEN]), None);
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
            Call::JoinGroup,
            Call::LeaveGroup,
            Call::Broadcast,
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
    /// The hostile partition's virtio-net device (its refusal run only): QEMU `virt`'s
    /// first virtio-mmio slot, where a Linux guest finds its device too; 512 bytes
    /// (`iqdio_vdev::virtio_net::WINDOW_SIZE`), unmapped at stage 2 and emulated.
    pub const VIRTIO_NET: u64 = 0x0A00_3E00;
}

/// What the multicast scenario's two sides agree on (`cargo xtask run --scenario
/// multicast`): the groups, who joins which, and who sends what in which round. The
/// partitions join and send by these rules; the hypervisor computes the copies to
/// expect from the memberships the fabric held when each partition exited, and the
/// sends the rules say were made.
pub mod multicast {
    use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// The groups: two IPv4 (administratively scoped, 239/8) and one IPv6
    /// (site-local scope, ff15::/16).
    pub const GROUPS: [IpAddr; 3] = [
        IpAddr::V4(Ipv4Addr::new(239, 1, 1, 1)),
        IpAddr::V6(Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 0, 0x101)),
        IpAddr::V4(Ipv4Addr::new(239, 1, 1, 2)),
    ];
    /// A group every partition joins and leaves again before any traffic (the leave
    /// call's exercise): nobody is its member while frames flow.
    pub const SPARE: IpAddr = IpAddr::V6(Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 0, 0x1ff));
    /// The membership bit of the broadcast domain (bit g is group g).
    pub const BROADCAST_BIT: u32 = 1 << GROUPS.len();
    /// Rounds between two barriers: in each a partition sends one frame to a group,
    /// one broadcast and one unicast, so a partition receives at most 3 (n - 1) frames
    /// a round; with 3 rounds and 8 partitions 63, within its 64 armed input buffers,
    /// and it takes them all before the next phase: receivers keep up by construction.
    pub const ROUNDS_PER_PHASE: u32 = 3;
    /// Frames of one round: group, broadcast, unicast.
    pub const FRAMES_PER_ROUND: u32 = 3;

    /// Whether partition `p` joins group `g`: group 0 the even partitions, group 1
    /// those not divisible by 3, group 2 all of them.
    pub const fn joins(p: usize, g: usize) -> bool {
        match g {
            0 => p.is_multiple_of(2),
            1 => !p.is_multiple_of(3),
            _ => true,
        }
    }

    /// Whether partition `p` of `n` switches broadcast on: all but the last.
    pub const fn broadcast(p: usize, n: usize) -> bool {
        p + 1 != n
    }

    /// The membership bits partition `p` of `n` sets by the rules.
    pub const fn memberships(p: usize, n: usize) -> u32 {
        let mut bits = 0;
        let mut g = 0;
        while g < GROUPS.len() {
            if joins(p, g) {
                bits |= 1 << g;
            }
            g += 1;
        }
        if broadcast(p, n) {
            bits |= BROADCAST_BIT;
        }
        bits
    }

    /// The group partition `p` sends to in round `r`.
    pub const fn group_of(p: usize, r: u32) -> usize {
        (p + r as usize) % GROUPS.len()
    }

    /// The partition `p` of `n` sends its unicast frame to in round `r`.
    pub const fn unicast_to(p: usize, n: usize, r: u32) -> usize {
        (p + 1 + r as usize % (n - 1)) % n
    }

    /// Phases of a run with `frames` frames per partition (`IQDIO_FRAMES`): at least
    /// one.
    pub const fn phases(frames: u32) -> u32 {
        let p = frames / (ROUNDS_PER_PHASE * FRAMES_PER_ROUND);
        if p == 0 { 1 } else { p }
    }

    /// Copies partition `me` of `n` receives from partition `src` over `rounds`
    /// rounds, given each partition's membership bits.
    pub fn copies_from(src: usize, me: usize, n: usize, rounds: u32, bits: &[u32]) -> u64 {
        if src == me {
            return 0;
        }
        let mine = bits.get(me).copied().unwrap_or(0);
        let mut copies = 0;
        for r in 0..rounds {
            copies += u64::from(mine & (1 << group_of(src, r)) != 0);
            copies += u64::from(mine & BROADCAST_BIT != 0);
            copies += u64::from(unicast_to(src, n, r) == me);
        }
        copies
    }
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
    /// Multicast and broadcast: partitions join groups and a broadcast domain, and
    /// each sends to a group, to the broadcast address and unicast
    /// ([`multicast`](crate::multicast)).
    pub const MULTICAST: u64 = 3;
    /// Layer 2: the TCP scenario over Ethernet frames on two VLANs (even partitions
    /// on VLAN 10, odd on VLAN 20), smoltcp doing ARP and neighbour discovery;
    /// partitions on different VLANs try to reach each other and must not.
    pub const L2: u64 = 4;
    /// The VLANs of the [`L2`] scenario: partition k is on `L2_VLANS[k % 2]`.
    pub const L2_VLANS: [u16; 2] = [10, 20];
    /// linux-net: partition 0 is a smoltcp partition on the Linux guests' untagged
    /// layer-2 LAN (the guests are the other partitions, their virtio-net rings their
    /// queue sets); it answers pings and serves TCP echo to each guest.
    pub const LINUX_NET: u64 = 5;
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
