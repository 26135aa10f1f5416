//! The fabric: partitions, queue-set registration and deregistration, and SIGA.

use core::net::IpAddr;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::error::{QueueField, RegistrationError, SigaError, SigaStatus};
use crate::guest::{
    GuestMemory, GuestSlice, MemoryExt, Sbal, SbalError, SliceCache, SliceSet, Window, Windows,
};
use crate::initiative::{self, Decision, DecisionInput, Signalled, SuppressReason, decide};
use crate::platform::{CallContext, InterruptTarget, Platform};
use crate::qdio::l2::{EthRoute, Mac, MacCast};
use crate::qdio::{CastType, qaob};
use crate::qdio::{Mfs, QUEUE_BUFFERS, Reason, SBAL_SIZE, SLSB_LEN, Sbale, SlsbState};
use crate::queue::{
    CompletionRing, CounterSnapshot, Inbound, IndicatorBytes, LiveInbound, LiveRing,
    MAX_OUTPUT_QUEUES, Outbound, PendingList, QueueControl, QueueRing, next, prev,
};
use crate::sync::{MutexGuard, ReadGuard, TableLock, WriteGuard};
use crate::table::{
    HashSeed, IpKey, LastTarget, LparId, QueueTable, SlotRef, SourceKey, TargetEntry,
};
use crate::transfer::{Fault, Outgoing, RxFault, deliver, parse_outgoing_into};

/// LPAR ids there are: every `u8`.
pub const LPAR_IDS: usize = 256;
/// The default of the fabric's `L`, the partitions it can know at once: one per LPAR
/// id. A fabric for fewer partitions names its own `L`; LPAR ids map to its `L`
/// partition slots sparsely (any id may take any free slot).
pub const MAX_PARTITIONS: usize = LPAR_IDS;
/// The default of the fabric's `S`: IQDIO subchannels one partition may have
/// established at once (the size of its subchannel record;
/// [`FabricConfig::queue_sets_per_partition`] may lower it). Deregistered subchannels
/// do not count: their record entries are reused.
pub const MAX_SUBCHANNELS: usize = 16;
/// The only output queue mask a unicast queue set accepts: queue 0 (`1 << 31`).
pub const QUEUE_0_MASK: u32 = 1 << 31;

/// Settings that hold for the whole fabric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FabricConfig {
    /// Maximum frame size: the most bytes one SBAL may carry.
    pub mfs: Mfs,
    /// The interrupt fallback: a summary left pending this long raises an interrupt.
    pub interrupt_delay_ns: u64,
    /// The key of the source and target tables' hash (SipHash-1-3, see `table.rs`).
    /// Give each fabric its own, from a source the partitions can neither read nor
    /// guess: with a known seed a partition can choose addresses that collide and
    /// lengthen every lookup that probes through them.
    pub hash_seed: HashSeed,
    /// Queue sets one partition may have established at once; more is refused with
    /// [`RegistrationError::SubchannelLimit`] (0xF00C). Values above the fabric's
    /// `S` (default [`MAX_SUBCHANNELS`]) mean `S`.
    pub queue_sets_per_partition: u8,
    /// Target addresses one partition may have registered at once, over all its queue
    /// sets; more is refused with [`RegistrationError::AddressQuota`] (0xF00D), so one
    /// partition cannot fill the target table for the others.
    pub addresses_per_partition: u16,
}

impl FabricConfig {
    /// 64 KiB frames, 1 ms fallback delay, 16 queue sets and 256 addresses per
    /// partition (16 partitions at their quota fill the default 4096-entry target
    /// table), and the seed [`FabricConfig::DEFAULT_SEED`].
    pub const DEFAULT: Self = Self {
        mfs: Mfs::K64,
        interrupt_delay_ns: 1_000_000,
        hash_seed: Self::DEFAULT_SEED,
        queue_sets_per_partition: MAX_SUBCHANNELS as u8,
        addresses_per_partition: 256,
    };

    /// The seed of [`FabricConfig::DEFAULT`]: public, so only for tests and images
    /// whose partitions are trusted not to attack the hash. (The first 128 bits of
    /// pi's fraction, a nothing-up-my-sleeve number.)
    pub const DEFAULT_SEED: HashSeed = [0x243f_6a88_85a3_08d3, 0x1319_8a2e_0370_7344];

    /// The default settings with the embedder's own hash seed. `const`, for a fabric
    /// in a `static`.
    pub const fn new(hash_seed: HashSeed) -> Self {
        Self {
            hash_seed,
            ..Self::DEFAULT
        }
    }
}

/// A [`FabricConfig`] as the fabric keeps it (the seed apart, which the tables keep):
/// each field XOR its value in [`FabricConfig::DEFAULT`], so that the default
/// settings are all-zero bytes. With them, and a platform that is zero-sized or
/// all-zero, a whole fabric is zero bytes and a `static` of it starts in `.bss` rather
/// than taking its size in the image file; the embedder then gives its own settings
/// at boot ([`Fabric::set_config`]). One XOR per field read.
#[derive(Clone, Copy, Debug)]
struct StoredConfig {
    /// The MFS's variant number (`Mfs as u8`, 0 to 3), not its KiB: read on every
    /// send, where turning 16/24/40/64 back into an `Mfs` took a dozen instructions
    /// and this takes a mask.
    mfs: u8,
    interrupt_delay_ns: u64,
    queue_sets_per_partition: u8,
    addresses_per_partition: u16,
}

impl StoredConfig {
    const D: FabricConfig = FabricConfig::DEFAULT;

    const fn new(c: &FabricConfig) -> Self {
        Self {
            mfs: c.mfs as u8 ^ Self::D.mfs as u8,
            interrupt_delay_ns: c.interrupt_delay_ns ^ Self::D.interrupt_delay_ns,
            queue_sets_per_partition: c.queue_sets_per_partition ^ Self::D.queue_sets_per_partition,
            addresses_per_partition: c.addresses_per_partition ^ Self::D.addresses_per_partition,
        }
    }

    fn mfs(&self) -> Mfs {
        // Every stored value came from an `Mfs` (0 to 3): the mask changes none.
        match (self.mfs ^ Self::D.mfs as u8) & 3 {
            0 => Mfs::K16,
            1 => Mfs::K24,
            2 => Mfs::K40,
            _ => Mfs::K64,
        }
    }

    fn interrupt_delay_ns(&self) -> u64 {
        self.interrupt_delay_ns ^ Self::D.interrupt_delay_ns
    }

    fn addresses_per_partition(&self) -> u16 {
        self.addresses_per_partition ^ Self::D.addresses_per_partition
    }

    /// The queue-set quota, bounded by the subchannel record of `S` entries.
    fn queue_set_limit<const S: usize>(&self) -> usize {
        usize::from(self.queue_sets_per_partition ^ Self::D.queue_sets_per_partition).min(S)
    }

    fn config(&self, hash_seed: HashSeed) -> FabricConfig {
        FabricConfig {
            mfs: self.mfs(),
            interrupt_delay_ns: self.interrupt_delay_ns(),
            hash_seed,
            queue_sets_per_partition: self.queue_sets_per_partition
                ^ Self::D.queue_sets_per_partition,
            addresses_per_partition: self.addresses_per_partition(),
        }
    }
}

impl Default for FabricConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// SIGA function codes this fabric performs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigaFunction {
    /// SIGA write (0): send the next primed output buffer.
    Write,
    /// SIGA write-multiple (3): send every consecutive primed output buffer from the
    /// cursor, in one call (the "multiple write facility").
    WriteMultiple,
    /// SIGA write with QAOB (4, Linux's `QDIO_SIGA_WRITEQ`): send the next primed
    /// buffer of one unicast queue; if its receiver is full, leave it PENDING (0xA3)
    /// and complete it later through the QAOB and the completion queue. Only on a
    /// queue set established with a completion queue; the QAOB address comes with the
    /// call ([`Fabric::siga_aob`]).
    WriteQ,
}

impl SigaFunction {
    /// The function code.
    pub const fn code(self) -> u32 {
        match self {
            Self::Write => 0,
            Self::WriteMultiple => 3,
            Self::WriteQ => 4,
        }
    }

    /// The function for a code.
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Self::Write),
            3 => Some(Self::WriteMultiple),
            4 => Some(Self::WriteQ),
            _ => None,
        }
    }
}

/// What one run of the delay fallback did ([`Fabric::try_expire_delays`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DelayReport {
    /// Interrupts raised and posted by the platform.
    pub raised: usize,
    /// Interrupts raised that the platform dropped ([`InterruptDelivery::Dropped`](crate::InterruptDelivery::Dropped)):
    /// the summary stays pending, so a later run raises them again.
    pub dropped: usize,
    /// Queue sets not looked at because their inbound lock was held; the next run
    /// looks at them again.
    pub skipped: usize,
    /// Nothing was looked at: an update held or awaited the table lock.
    pub table_busy: bool,
    /// Pending buffers (SIGA WRITEQ) completed and posted on their senders'
    /// completion queues ([`Fabric::expire_delays`] only: it may wait for the locks a
    /// delivery takes).
    pub completed: usize,
}

/// What one SIGA did (condition code 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigaReport {
    /// Primed output buffers handled (each now reads 0xA1 or 0xAF).
    pub buffers: u8,
    /// Of those, delivered (0xA1).
    pub delivered: u8,
    /// Of those, refused (0xAF, reason in sbalf15).
    pub refused: u8,
    /// Frames delivered.
    pub frames: u16,
    /// Packet bytes delivered.
    pub bytes: u64,
    /// Interrupts raised for receivers and posted by the platform.
    pub interrupts: u16,
    /// Interrupts raised for receivers that the platform dropped
    /// ([`InterruptDelivery::Dropped`](crate::InterruptDelivery::Dropped)).
    pub interrupts_dropped: u16,
    /// Copies of multicast and broadcast buffers delivered to group members.
    pub copies: u16,
    /// Of the buffers handled, left PENDING (0xA3): they complete through the QAOB and
    /// the completion queue.
    pub pending: u8,
    /// Earlier pending buffers of this queue set completed (posted on its completion
    /// queue) during this call.
    pub completed: u16,
}

/// One queue's addresses in a partition's memory: its 128 SBALs (each 256-aligned,
/// all within 1 TiB of the lowest) and its SLSB (128 bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueAddresses {
    /// The 128 SBALs, buffer 0 first.
    pub sbals: [u64; QUEUE_BUFFERS],
    /// The SLSB.
    pub slsb: u64,
}

/// The limited broadcast address, under which the fabric keeps a broadcast domain's
/// members ([`Fabric::set_broadcast`]).
pub const BROADCAST_GROUP: IpAddr = IpAddr::V4(core::net::Ipv4Addr::BROADCAST);

/// The addresses a partition gives when it establishes a queue set for a subchannel
/// (guest addresses in its own memory).
///
/// Output queue 0 is `output_sbals` and `output_slsb`; `more_outputs` adds queues 1,
/// 2 and 3 in that order (Linux establishes a HiperSockets device with 2 to 4,
/// `QETH_IQD_MIN_TXQ` to `QETH_MAX_OUT_QUEUES` in `drivers/s390/net/qeth_core.h`). With
/// two or more, the highest-numbered is the **multicast queue**: multicast, broadcast
/// and anycast frames go there, unicast frames on the others (Linux's
/// `multicast_outbound()`, `drivers/s390/cio/qdio.h`). [`Default`] gives all-zero
/// addresses and one output queue, for `..Default::default()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSetParams {
    /// The 128 output SBALs (each 256-aligned).
    pub output_sbals: [u64; QUEUE_BUFFERS],
    /// The 128 input SBALs (each 256-aligned).
    pub input_sbals: [u64; QUEUE_BUFFERS],
    /// The output SLSB (128 bytes).
    pub output_slsb: u64,
    /// The input SLSB (128 bytes).
    pub input_slsb: u64,
    /// The queue's own indicator byte (lowest tier).
    pub queue_indicator: u64,
    /// The middle-tier indicator byte (shared by a group of queues).
    pub middle_indicator: u64,
    /// The global summary byte.
    pub global_indicator: u64,
    /// Interrupt at once for every delivery (the override).
    pub interrupt_immediately: bool,
    /// The hypervisor's routing data for this queue set's interrupts (say, the vCPU
    /// and the virtual INTID), handed back unchanged in every [`InterruptTarget`] the
    /// fabric raises for it. Set by the hypervisor, never taken from partition input:
    /// the fabric does not interpret it, the platform trusts it.
    pub interrupt_cookie: u64,
    /// Output queues 1 to 3, beyond queue 0 (at most the fabric's `O` in all).
    pub more_outputs: heapless::Vec<QueueAddresses, { MAX_OUTPUT_QUEUES - 1 }>,
    /// The completion queue, for SIGA WRITEQ ([`SigaFunction::WriteQ`]): a queue the
    /// program arms like an input queue (0x41) and the fabric fills, one buffer per
    /// batch of completions, each element's address a completed buffer's QAOB (the
    /// element after the last reads address 0), then 0x82. Linux's qeth establishes it
    /// as a second input queue (`QETH_CQ_ENABLED`) and reads it in
    /// `qeth_qdio_cq_handler`. It shares the set's indicator bytes.
    pub completion_queue: Option<QueueAddresses>,
    /// Layer-2 mode: the queue set sends and receives whole Ethernet frames behind
    /// Linux's `qeth_hdr_layer2` header, routed by destination MAC and VLAN
    /// ([`Fabric::register_mac`], [`Fabric::join_vlan`]) instead of IP address. A
    /// layer-2 set registers no IP addresses or groups and has no completion queue.
    pub layer2: bool,
}

impl Default for QueueSetParams {
    fn default() -> Self {
        Self {
            output_sbals: [0; QUEUE_BUFFERS],
            input_sbals: [0; QUEUE_BUFFERS],
            output_slsb: 0,
            input_slsb: 0,
            queue_indicator: 0,
            middle_indicator: 0,
            global_indicator: 0,
            interrupt_immediately: false,
            interrupt_cookie: 0,
            more_outputs: heapless::Vec::new(),
            completion_queue: None,
            layer2: false,
        }
    }
}

impl QueueSetParams {
    /// Output queues these parameters establish (1 to 4).
    pub fn output_queues(&self) -> usize {
        1 + self.more_outputs.len()
    }

    /// Output queue `q`'s SBALs and SLSB.
    fn output(&self, q: usize) -> Option<(&[u64; QUEUE_BUFFERS], u64)> {
        match q {
            0 => Some((&self.output_sbals, self.output_slsb)),
            _ => self.more_outputs.get(q - 1).map(|o| (&o.sbals, o.slsb)),
        }
    }
}

/// A handle on an established queue set. It stays tied to that registration: once
/// the queue set is deregistered, the handle is stale, even if its slot is reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSetHandle {
    /// `LPAR-ID.SUBCHANNEL#` of the queue set.
    pub key: SourceKey,
    slot: SlotRef,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subchannel {
    /// Established: queues active.
    Active(SlotRef),
    /// Carries the IQDIO indicator, but its queue set was deregistered.
    Inactive,
}

/// What one entry of a partition's subchannel record holds (zero: free).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum SubchannelState {
    Free = 0,
    Active = 1,
    Inactive = 2,
}

/// One entry of a partition's subchannel record.
#[derive(Clone, Copy, Debug)]
struct SubchannelEntry {
    state: SubchannelState,
    number: u16,
    /// The queue control, while `Active`.
    slot: SlotRef,
}

impl SubchannelEntry {
    const FREE: Self = Self {
        state: SubchannelState::Free,
        number: 0,
        slot: SlotRef {
            index: 0,
            generation: 0,
        },
    };

    fn get(&self) -> Option<Subchannel> {
        match self.state {
            SubchannelState::Free => None,
            SubchannelState::Active => Some(Subchannel::Active(self.slot)),
            SubchannelState::Inactive => Some(Subchannel::Inactive),
        }
    }

    fn set(&mut self, number: u16, st: Subchannel) {
        *self = match st {
            Subchannel::Active(slot) => Self {
                state: SubchannelState::Active,
                number,
                slot,
            },
            Subchannel::Inactive => Self {
                state: SubchannelState::Inactive,
                number,
                slot: Self::FREE.slot,
            },
        };
    }
}

/// Calls the test hook [`Platform::lock_point`] (feature `test-hooks`; nothing
/// otherwise).
macro_rules! lock_point {
    ($fabric:expr, $point:ident) => {
        #[cfg(feature = "test-hooks")]
        $fabric
            .platform
            .lock_point($crate::platform::LockPoint::$point);
    };
}

/// The interrupt fallback's time stamp of one summary byte (the global indicator the
/// partition's queue sets name). It lives with the byte's owner, the partition, so
/// every queue set that names the byte sees the same stamp and the fallback counts
/// from when the *summary* went pending, not from when one queue set last saw it.
struct SummaryStamp {
    /// Guest address of the byte; meaningful while `users > 0`.
    byte: u64,
    /// Active queue sets that name the byte (changed under the exclusive table lock).
    users: u8,
    /// When the byte last went idle → pending, or the fallback last fired (ns).
    /// Sends write it under the shared table lock and their own queue's inbound lock,
    /// so two queue sets of one receiver may race on it: a compare-exchange lets one
    /// of them fire the fallback per delay. Relaxed: no other access is ordered by
    /// it. A send that finds the summary pending may read the stamp just before the
    /// send that set the byte wrote its own; that costs at most one early fallback,
    /// never a lost interrupt.
    since_ns: AtomicU64,
}

impl SummaryStamp {
    // A value to copy into arrays and free slots (each use is a new atomic), never
    // one shared atomic.
    #[allow(clippy::declare_interior_mutable_const)]
    const NEW: Self = Self {
        byte: 0,
        users: 0,
        since_ns: AtomicU64::new(0),
    };
}

/// One partition slot. All-zero but for `memory` (`M::EMPTY`) while free.
struct PartitionRecord<M, const S: usize> {
    /// The slot is taken (by `lpar`).
    used: bool,
    lpar: LparId,
    memory: M,
    /// Subchannels with the IQDIO indicator: the active ones and, while there is room,
    /// deregistered ones (so a SIGA on those answers cc1, not cc3).
    subchannels: [SubchannelEntry; S],
    /// Target addresses registered over all the partition's queue sets (its quota).
    addresses: usize,
    /// One stamp per summary byte in use: at most one per active queue set.
    summaries: [SummaryStamp; S],
    /// Stopped by the hypervisor ([`Fabric::suspend`]): the fabric neither reads its
    /// output queues nor writes anything into its memory until it is resumed.
    suspended: bool,
}

impl<M: GuestMemory, const S: usize> PartitionRecord<M, S> {
    // As `SummaryStamp::NEW`: a value to initialise slots with.
    #[allow(clippy::declare_interior_mutable_const)]
    const FREE: Self = Self {
        used: false,
        lpar: 0,
        memory: M::EMPTY,
        subchannels: [SubchannelEntry::FREE; S],
        addresses: 0,
        summaries: [SummaryStamp::NEW; S],
        suspended: false,
    };

    /// The stamp of the summary byte at guest address `byte`, shared with the other
    /// queue sets that name it (or a free one). Under the exclusive table lock.
    fn attach_summary(&mut self, byte: u64) -> Option<u8> {
        let i = self
            .summaries
            .iter()
            .position(|s| s.users > 0 && s.byte == byte)
            .or_else(|| self.summaries.iter().position(|s| s.users == 0))?;
        let s = &mut self.summaries[i];
        if s.users == 0 {
            s.byte = byte;
            s.since_ns.store(0, Ordering::Relaxed);
        }
        s.users += 1;
        Some(i as u8)
    }

    /// A queue set stops naming summary `i`. Under the exclusive table lock.
    fn detach_summary(&mut self, i: u8) {
        if let Some(s) = self.summaries.get_mut(usize::from(i)) {
            s.users = s.users.saturating_sub(1);
        }
    }

    /// The time stamp of summary `i` (the index is reduced to the array, so no bounds
    /// check can fail).
    fn summary_since(&self, i: u8) -> &AtomicU64 {
        // S > 0 (checked in `Fabric::new`).
        &self.summaries[usize::from(i) % S].since_ns
    }

    #[inline(always)]
    fn subchannel(&self, sch: u16) -> Option<Subchannel> {
        self.subchannels
            .iter()
            .filter(|e| e.number == sch)
            .find_map(SubchannelEntry::get)
    }

    fn active(&self) -> impl Iterator<Item = (u16, SlotRef)> + '_ {
        self.subchannels.iter().filter_map(|e| match e.get() {
            Some(Subchannel::Active(slot)) => Some((e.number, slot)),
            _ => None,
        })
    }

    /// Records `sch` as `st`. A new number takes a free entry or, when there is none,
    /// the entry of a deregistered subchannel (which from then on answers cc3 as never
    /// established): deregistration frees the number's place, so a partition can go
    /// on establishing new numbers for ever \[issue 9 defect 6\].
    fn set_subchannel(&mut self, sch: u16, st: Subchannel) -> Result<(), RegistrationError> {
        let found = self
            .subchannels
            .iter()
            .position(|e| e.state != SubchannelState::Free && e.number == sch)
            .or_else(|| {
                self.subchannels
                    .iter()
                    .position(|e| e.state == SubchannelState::Free)
            })
            .or_else(|| {
                self.subchannels
                    .iter()
                    .position(|e| e.state == SubchannelState::Inactive)
            });
        match found.and_then(|i| self.subchannels.get_mut(i)) {
            Some(e) => {
                e.set(sch, st);
                Ok(())
            }
            None => Err(RegistrationError::SubchannelLimit),
        }
    }
}

/// What the table lock guards. All-zero bytes (but for the partition slots'
/// `M::EMPTY`) with the default settings: see [`Fabric::init_in_place`].
struct State<const Q: usize, const A: usize, const L: usize, const S: usize, M> {
    config: StoredConfig,
    /// Counts the exclusive acquisitions of the table lock ([`Fabric::update`]): every
    /// change of a partition's memory, a queue set or the tables starts a new epoch,
    /// so what a send works out under the shared lock (translations kept in a
    /// [`SliceCache`], a sender's last target) stays true while the epoch does. Starts
    /// at 0, which no cache matches, and the first update makes it 1.
    epoch: u64,
    /// Partition slot of each LPAR id, plus one (0: unknown). 512 bytes whatever `L`,
    /// for a lookup in one step: a send finds its issuer and its receiver here.
    slot_of: [u16; LPAR_IDS],
    partitions: [PartitionRecord<M, S>; L],
    table: QueueTable<Q, A>,
    in_use: [bool; Q],
}

impl<const Q: usize, const A: usize, const L: usize, const S: usize, M: GuestMemory>
    State<Q, A, L, S, M>
{
    const fn new(config: &FabricConfig) -> Self {
        Self {
            config: StoredConfig::new(config),
            epoch: 0,
            slot_of: [0; LPAR_IDS],
            partitions: [PartitionRecord::FREE; L],
            table: QueueTable::new(config.hash_seed),
            in_use: [false; Q],
        }
    }

    /// The record of partition `lpar`, if it is known.
    #[inline]
    fn partition(&self, lpar: LparId) -> Option<&PartitionRecord<M, S>> {
        let i = usize::from(self.slot_of[usize::from(lpar)]).checked_sub(1)?;
        self.partitions.get(i).filter(|p| p.used)
    }

    #[inline]
    fn partition_mut(&mut self, lpar: LparId) -> Option<&mut PartitionRecord<M, S>> {
        let i = usize::from(self.slot_of[usize::from(lpar)]).checked_sub(1)?;
        self.partitions.get_mut(i).filter(|p| p.used)
    }

    fn known(&self) -> impl Iterator<Item = &PartitionRecord<M, S>> + '_ {
        self.partitions.iter().filter(|p| p.used)
    }
}

/// The fabric: the firmware side of internal queued direct I/O.
///
/// Its capacities are const parameters, so that its size follows what is configured
/// (the README has a table of sizes):
///
/// - `Q`: queue sets (queue controls, and the source table's capacity), a power of
///   two;
/// - `A`: IP addresses (the target table's capacity), a power of two;
/// - `L`: partitions known at once (LPAR ids map to these slots sparsely), at most
///   256;
/// - `S`: queue sets (subchannels) per partition, at least 1;
/// - `M`: how the fabric reaches a partition's memory ([`GuestMemory`]), by default
///   [`Windows`] of at most [`MAX_WINDOWS`](crate::MAX_WINDOWS) windows;
/// - `O`: output queues a queue set may establish, 1 to
///   [`MAX_OUTPUT_QUEUES`] (4, Linux's `QETH_MAX_OUT_QUEUES`); Linux's qeth drives a
///   HiperSockets device with at least 2 (`QETH_IQD_MIN_TXQ`, one of them the
///   multicast queue). Each costs 528 bytes per queue control.
///
/// A fabric for 8 partitions with one queue set each is
/// `Fabric<P, 8, 16, 8, 1, Windows<1>>`. See the [crate docs](crate) for the
/// architecture.
pub struct Fabric<
    P: Platform,
    const Q: usize = 64,
    const A: usize = 4096,
    const L: usize = MAX_PARTITIONS,
    const S: usize = MAX_SUBCHANNELS,
    M: GuestMemory = Windows,
    const O: usize = MAX_OUTPUT_QUEUES,
> {
    platform: P,
    state: TableLock<State<Q, A, L, S, M>>,
    controls: [QueueControl<O>; Q],
}

/// Result of one output buffer's send.
enum BufferOutcome {
    Delivered {
        frames: u16,
        bytes: u64,
    },
    /// Left PENDING (SIGA WRITEQ to a full receiver): recorded in its QAOB.
    Pending,
    Refused(Fault),
}

/// The issuer of a SIGA, for the length of one buffer's send.
struct Sender<'a, M, const S: usize, const O: usize> {
    key: SourceKey,
    record: &'a PartitionRecord<M, S>,
    qc: &'a QueueControl<O>,
}

/// What kind of target-table entry a registration adds or removes.
#[derive(Clone, Copy)]
struct Entry {
    /// A group membership (else a unique key).
    group: bool,
    /// For layer-2 queue sets (else layer 3).
    layer2: bool,
    /// The error for a duplicate (adding) or a missing entry (removing).
    error: RegistrationError,
}

impl Entry {
    const fn unique(layer2: bool, error: RegistrationError) -> Self {
        Self {
            group: false,
            layer2,
            error,
        }
    }

    const fn group(layer2: bool, error: RegistrationError) -> Self {
        Self {
            group: true,
            layer2,
            error,
        }
    }
}

/// The queue a buffer comes from (the multicast queue or not, layer 2 or 3), and the
/// sender's last target lookup, kept under its outbound lock.
struct FromQueue<'a> {
    multicast: bool,
    layer2: bool,
    last_target: &'a mut LastTarget,
}

/// What a SIGA WRITEQ brings to one buffer's send: its QAOB (checked) and the sender's
/// pending list.
struct WriteQ<'a> {
    qaob: GuestSlice,
    qaob_addr: u64,
    /// The output queue the buffer comes from.
    queue: u8,
    pending: &'a mut PendingList,
}

/// The QAOB at `addr` in `memory`: 256 bytes, 256-aligned, wholly inside.
fn qaob_slice<M: GuestMemory>(memory: &M, addr: u64) -> Option<GuestSlice> {
    if !addr.is_multiple_of(qaob::QAOB_SIZE as u64) {
        return None;
    }
    memory.slice(addr, qaob::QAOB_SIZE as u64)
}

/// The pending list's length, for [`QueueControl::pending_hint`].
fn out_pending_len(p: &PendingList) -> u8 {
    p.len() as u8
}

impl<
    P: Platform,
    const Q: usize,
    const A: usize,
    const L: usize,
    const S: usize,
    M: GuestMemory,
    const O: usize,
> Fabric<P, Q, A, L, S, M, O>
{
    /// The capacities must be as the type's docs say.
    const CHECK: () = assert!(
        Q.is_power_of_two()
            && A.is_power_of_two()
            && Q <= u16::MAX as usize
            && L >= 1
            && L <= LPAR_IDS
            && S >= 1
            && S <= u8::MAX as usize
            && O >= 1
            && O <= MAX_OUTPUT_QUEUES
    );

    /// A fabric with no partitions. `const`, so an image can keep it in a static.
    ///
    /// With [`FabricConfig::DEFAULT`] and a platform that is zero-sized (or all-zero
    /// bytes), and `M::EMPTY` all-zero (as [`Windows`]'s is), the fabric is all-zero
    /// bytes, so a `static` of it lands in `.bss`, not in the image file; give the
    /// real settings at boot with [`set_config`](Self::set_config). Built at run time,
    /// use [`init_in_place`](Self::init_in_place), which needs no stack for it.
    #[cfg(not(iqdio_loom))]
    pub const fn new(platform: P, config: FabricConfig) -> Self {
        let () = Self::CHECK;
        Self {
            platform,
            state: TableLock::new(State::new(&config)),
            controls: [const { QueueControl::new() }; Q],
        }
    }

    /// A fabric with no partitions (under loom, whose locks cannot be `const`).
    #[cfg(iqdio_loom)]
    pub fn new(platform: P, config: FabricConfig) -> Self {
        let () = Self::CHECK;
        Self {
            platform,
            state: TableLock::new(State::new(&config)),
            controls: core::array::from_fn(|_| QueueControl::new()),
        }
    }

    /// Builds a fabric in `slot` without building it on the stack first (a default
    /// fabric is over 400 KB; [`Fabric::new`]'s value may be built on the stack and
    /// then copied), and returns it. For a fabric made at run time, in memory the
    /// embedder gives (a page it allocated, a `MaybeUninit` static).
    ///
    /// It zero-fills the slot, then writes the platform, the settings and each free
    /// partition slot's `M::EMPTY` in place: every other part of a fabric with no
    /// partitions is all-zero bytes by construction (locks free, counters and
    /// generations 0, flags instead of `Option`s, table keys as plain bytes, the
    /// settings stored as their difference from the default), which the crate's
    /// tests check against [`Fabric::new`] byte for byte.
    #[cfg(not(iqdio_loom))]
    pub fn init_in_place(
        slot: &mut core::mem::MaybeUninit<Self>,
        platform: P,
        config: FabricConfig,
    ) -> &mut Self {
        let () = Self::CHECK;
        let p = slot.as_mut_ptr();
        // SAFETY: `p` is valid for writes of one `Self` (it comes from `slot`); the
        // writes below go to fields of it through raw pointers, no reference to the
        // uninitialised parts is made. All-zero is a valid value of every field not
        // written afterwards: `TableLock` and the queue `Mutex`es (free: zero flags
        // and reader counts), `QueueControl` (atomics, send hints zero: none, `active: false`, plain
        // integers), `State`'s `slot_of`, `in_use`, `QueueTable` (free slots are
        // `used: false` with zero keys and values, all plain integers; the seed as
        // its XOR with the default, zero for the default, then set in place) and
        // `PartitionRecord` but for `memory`
        // (`used: false`, free subchannel entries are `SubchannelState::Free` = 0,
        // atomics). The platform, the settings and each `memory` are then written
        // whole. So once this block ends the slot holds a valid `Self`, the one
        // `Fabric::new(platform, config)` gives.
        unsafe {
            p.write_bytes(0, 1);
            core::ptr::addr_of_mut!((*p).platform).write(platform);
            let st = TableLock::data_ptr(core::ptr::addr_of_mut!((*p).state));
            core::ptr::addr_of_mut!((*st).config).write(StoredConfig::new(&config));
            QueueTable::init_seed(core::ptr::addr_of_mut!((*st).table), config.hash_seed);
            let parts = core::ptr::addr_of_mut!((*st).partitions).cast::<PartitionRecord<M, S>>();
            for i in 0..L {
                core::ptr::addr_of_mut!((*parts.add(i)).memory).write(M::EMPTY);
            }
            slot.assume_init_mut()
        }
    }

    /// The fabric's settings: as given to [`Fabric::new`] or [`Fabric::set_config`],
    /// with the hash seed in use. Waits for the table lock (thread context).
    pub fn config(&self) -> FabricConfig {
        let st = self.state.read();
        st.config.config(st.table.seed())
    }

    /// Replaces the fabric's settings, for a fabric in a `static` that starts with the
    /// defaults (so that it lands in `.bss`) and learns its settings, its secret hash
    /// seed among them, at boot. A new seed only while no queue set is established
    /// (the entries would be in the wrong places under it): otherwise
    /// [`RegistrationError::SeedInUse`] (0xF00E) and nothing changes. The other
    /// settings apply from the next call on; a lower quota refuses new queue sets
    /// and addresses only, it does not remove any.
    pub fn set_config(&self, config: FabricConfig) -> Result<(), RegistrationError> {
        let mut st = self.update()?;
        if config.hash_seed != st.table.seed() {
            if st.in_use.iter().any(|u| *u) {
                return Err(RegistrationError::SeedInUse);
            }
            st.table.reseed(config.hash_seed)?;
        }
        st.config = StoredConfig::new(&config);
        Ok(())
    }

    /// Replaces the tables' hash seed, for a fabric in a `static` whose embedder learns
    /// a secret seed only at boot (a hardware random number, say). Only while no queue
    /// set is established: the entries would be in the wrong places under the new
    /// seed. Otherwise [`RegistrationError::SeedInUse`] (0xF00E).
    pub fn set_hash_seed(&self, seed: HashSeed) -> Result<(), RegistrationError> {
        let mut st = self.update()?;
        if st.in_use.iter().any(|u| *u) {
            return Err(RegistrationError::SeedInUse);
        }
        st.table.reseed(seed)
    }

    /// The embedding platform.
    pub const fn platform(&self) -> &P {
        &self.platform
    }

    /// Makes a partition known with the memory the hypervisor backs it with (see
    /// [`GuestMemory`]). Refused: an LPAR id known already (0xE005), no free partition
    /// slot (`L` of them: 0xE006), a memory that [`GuestMemory::overlaps`] another
    /// partition's (0xF004).
    pub fn add_partition_memory(&self, lpar: LparId, memory: M) -> Result<(), RegistrationError> {
        let mut st = self.update()?;
        let st = &mut *st;
        if st.partition(lpar).is_some() {
            return Err(RegistrationError::DuplicateFound);
        }
        if st.known().any(|p| p.memory.overlaps(&memory)) {
            return Err(RegistrationError::OverlappingWindows);
        }
        let Some(i) = st.partitions.iter().position(|p| !p.used) else {
            return Err(RegistrationError::TableFull);
        };
        let Some(rec) = st.partitions.get_mut(i) else {
            return Err(RegistrationError::TableFull);
        };
        *rec = PartitionRecord {
            used: true,
            lpar,
            memory,
            ..PartitionRecord::FREE
        };
        // i < L <= 256, so i + 1 fits.
        st.slot_of[usize::from(lpar)] = (i + 1) as u16;
        Ok(())
    }

    /// Replaces partition `lpar`'s memory (the hypervisor remapped it), and returns the
    /// old one, which the fabric no longer uses from then on: it holds the table lock
    /// exclusive meanwhile, so no call of the fabric is using a translation of the old
    /// memory, and the next ones translate through the new.
    ///
    /// Every structure of the partition's established queue sets must translate in the
    /// new memory as at establish, or nothing changes: 0xF005 naming the first that
    /// does not, 0xF010 if an SBAL translates misaligned. 0xF002 for an unknown
    /// partition, 0xF004 if the new memory overlaps another partition's.
    pub fn replace_memory(&self, lpar: LparId, memory: M) -> Result<M, RegistrationError> {
        let mut st = self.update()?;
        let st = &mut *st;
        let p = st
            .partition(lpar)
            .ok_or(RegistrationError::UnknownPartition)?;
        if st
            .known()
            .any(|o| o.lpar != lpar && o.memory.overlaps(&memory))
        {
            return Err(RegistrationError::OverlappingWindows);
        }
        for (_, slot) in p.active() {
            let Some(qc) = self.controls.get(usize::from(slot.index)) else {
                continue;
            };
            // No send holds these for long: sends hold the table lock shared (counted,
            // or pinned by the outbound lock, which a hinted SIGA takes only to find
            // this update waiting and let go), we hold it exclusive.
            let out = qc.outbound.lock();
            lock_point!(self, Outbound);
            let inb = qc.inbound.lock();
            lock_point!(self, Inbound);
            if let Some((i, d)) = inb.ring() {
                check_structures(&memory, out.rings(), i, out.completion_ring(), d)?;
            }
        }
        let p = st
            .partition_mut(lpar)
            .ok_or(RegistrationError::UnknownPartition)?;
        Ok(core::mem::replace(&mut p.memory, memory))
    }

    /// Suspends a partition, as a hypervisor stops its vCPUs (to migrate or snapshot
    /// it, or to pause it): every registration stays, and from the moment this returns
    /// the fabric touches none of the partition's memory. Suspending a suspended
    /// partition changes nothing.
    ///
    /// While it is suspended:
    /// - a SIGA on its behalf does nothing and answers cc2 with the busy bit
    ///   ([`SigaError::Suspended`]): its primed output buffers stay primed (0x62) and
    ///   its output cursor stays where it was, so nothing it queued is lost or sent;
    /// - a send to one of its addresses is refused with sbalf15 0x10, target full
    ///   ([`Reason::TargetFull`]), whatever room its input queue has: what a real
    ///   machine shows for a stopped LPAR whose input queue nobody empties. Linux
    ///   counts 0x10 (`target_full`, `process_buffer_error` in
    ///   `drivers/s390/cio/qdio_main.c`) and, for AF_IUCV, reads it as one of the
    ///   UNREACHABLE codes 4, 16, 17, 18 (`qeth_compute_cq_notification`,
    ///   `qeth_core_main.c`:399-413, Linux 6.12); qeth re-sends nothing, iqdio's own
    ///   driver does, and after [`resume`](Self::resume) the same frame goes through. The receiving
    ///   queue set counts these in
    ///   [`CounterSnapshot::refused_suspended`], not in `refused_full`;
    /// - the frames already in its input buffers stay there (0x82), as do its indicator
    ///   bytes; the delay fallback raises no interrupt for it. A summary left pending
    ///   gets its fallback interrupt at the first [`expire_delays`](Self::expire_delays)
    ///   after the resume (its delay has long run).
    ///
    /// Takes the table lock exclusive, so when it returns no send from or to the
    /// partition is in flight (a write-multiple steps out between buffers and ends).
    /// The hypervisor's own updates (establish, addresses, deregistration,
    /// [`remove_partition`](Self::remove_partition)) still work on a suspended
    /// partition. Errors: [`RegistrationError::UnknownPartition`].
    pub fn suspend(&self, lpar: LparId) -> Result<(), RegistrationError> {
        self.set_suspended(lpar, true)
    }

    /// Resumes a suspended partition: its queue sets, addresses, cursors and buffers
    /// are as they were, and its SIGAs and the sends to it work again. Resuming a
    /// running partition changes nothing. Errors: [`RegistrationError::UnknownPartition`].
    pub fn resume(&self, lpar: LparId) -> Result<(), RegistrationError> {
        self.set_suspended(lpar, false)
    }

    fn set_suspended(&self, lpar: LparId, suspended: bool) -> Result<(), RegistrationError> {
        let mut st = self.update()?;
        let p = st
            .partition_mut(lpar)
            .ok_or(RegistrationError::UnknownPartition)?;
        // Under the exclusive lock: sends read it under the shared one.
        p.suspended = suspended;
        Ok(())
    }

    /// Forgets a partition, deregistering its queue sets first.
    pub fn remove_partition(&self, lpar: LparId) -> Result<(), RegistrationError> {
        let mut st = self.update()?;
        let Some(p) = st.partition(lpar) else {
            return Err(RegistrationError::UnknownPartition);
        };
        // Into an array of S by zip: no collect, no slicing, no panic path.
        let mut active = [0u16; S];
        let mut n = 0;
        for ((sch, _), a) in p.active().zip(active.iter_mut()) {
            *a = sch;
            n += 1;
        }
        for sch in active.iter().take(n) {
            self.deregister_locked(
                &mut st,
                SourceKey {
                    lpar,
                    subchannel: *sch,
                },
            )?;
        }
        if let Some(i) = usize::from(st.slot_of[usize::from(lpar)]).checked_sub(1)
            && let Some(p) = st.partitions.get_mut(i)
        {
            *p = PartitionRecord::FREE;
        }
        st.slot_of[usize::from(lpar)] = 0;
        Ok(())
    }

    /// Establishes a queue set for `lpar`'s `subchannel`: checks every address against
    /// the partition's memory, checks that its structures overlap neither one another
    /// nor those of the partition's other queue sets, registers `LPAR-ID.SUBCHANNEL#`
    /// in the source table and gives the subchannel the IQDIO indicator.
    ///
    /// In this order: unknown partition (0xF002), more output queues than the fabric's
    /// `O` (0xF012), an address outside memory or misaligned (0xF005, 0xF006), an SBAL
    /// that the partition's memory translates to a host address not 256-aligned
    /// (0xF010, the hypervisor's error: it cannot happen with [`Windows`], which refuse
    /// such a window when the partition is added), an SBAL 1 TiB or more above its
    /// queue's lowest (0xF011), the subchannel active already (0xE005), the
    /// partition at its queue-set quota (0xF00C), overlapping structures (0xF00B),
    /// no queue control left in the fabric (0xE006).
    pub fn establish(
        &self,
        lpar: LparId,
        subchannel: u16,
        params: &QueueSetParams,
    ) -> Result<QueueSetHandle, RegistrationError> {
        let key = SourceKey { lpar, subchannel };
        let mut st = self.update()?;
        let p = st
            .partition(lpar)
            .ok_or(RegistrationError::UnknownPartition)?;
        let layout = Layout::<O>::new(params, &p.memory)?;
        let outs = layout
            .outputs
            .get(..usize::from(layout.queues))
            .unwrap_or(&[]);
        if matches!(p.subchannel(subchannel), Some(Subchannel::Active(_))) {
            return Err(RegistrationError::DuplicateFound);
        }
        if p.active().count() >= st.config.queue_set_limit::<S>() {
            return Err(RegistrationError::SubchannelLimit);
        }
        self.check_overlaps(
            p,
            outs,
            &layout.input,
            layout.cq.as_ref(),
            &layout.indicators,
        )?;
        let indicators = layout.indicators;
        let index = st
            .in_use
            .iter()
            .position(|u| !u)
            .ok_or(RegistrationError::TableFull)?;
        let qc = &self.controls[index];
        let slot = SlotRef {
            index: index as u16,
            generation: qc.generation.load(Ordering::Relaxed),
        };
        st.table.add_source(key, slot)?;
        let Some(p) = st.partition_mut(lpar) else {
            st.table.remove_queue_set(key);
            return Err(RegistrationError::UnknownPartition);
        };
        // At most one summary per active queue set, and this subchannel is not
        // active: a stamp is always free. Checked all the same.
        let Some(summary) = p.attach_summary(indicators.global) else {
            st.table.remove_queue_set(key);
            return Err(RegistrationError::TableFull);
        };
        if let Err(e) = p.set_subchannel(subchannel, Subchannel::Active(slot)) {
            p.detach_summary(summary);
            st.table.remove_queue_set(key);
            return Err(e);
        }
        st.in_use[index] = true;
        // No send can hold these locks for long: sends hold the table lock shared
        // (counted, or pinned by the outbound lock: see `update`).
        {
            let mut out = qc.outbound.lock();
            lock_point!(self, Outbound);
            out.rings = layout.outputs;
            out.queues = layout.queues;
            out.active = true;
            out.cursors = [0; O];
            out.cq = CompletionRing {
                active: layout.cq.is_some(),
                ring: layout.cq.unwrap_or(QueueRing::ZERO),
                cursor: 0,
                owner: key,
            };
            out.pending = PendingList::EMPTY;
            out.layer2 = params.layer2;
            out.slsbs = SliceCache::EMPTY;
            out.last_target = LastTarget::EMPTY;
            qc.pending_hint.store(0, Ordering::Relaxed);
        }
        {
            let mut inb = qc.inbound.lock();
            lock_point!(self, Inbound);
            *inb = Inbound {
                active: true,
                ring: layout.input,
                cursor: 0,
                indicators,
                summary,
                interrupt_immediately: params.interrupt_immediately,
                cookie: params.interrupt_cookie,
                owner: key,
                live: SliceSet::EMPTY,
            };
        }
        qc.counters.reset();
        Ok(QueueSetHandle { key, slot })
    }

    /// Registers `ip` as a target address of `lpar`'s queue set on `subchannel`.
    /// An address is unique in the fabric: another queue set's address, or this one's
    /// again, is Duplicate Found (0xE005). Then: no such queue set (0xF00A), the
    /// partition at its address quota (0xF00D), the target table full (0xE006).
    pub fn register_address(
        &self,
        lpar: LparId,
        subchannel: u16,
        ip: IpAddr,
    ) -> Result<(), RegistrationError> {
        if !is_unicast(&ip) {
            return Err(RegistrationError::InvalidAddress);
        }
        let entry = Entry::unique(false, RegistrationError::DuplicateFound);
        self.add_entry(SourceKey { lpar, subchannel }, IpKey::from(&ip), entry)
    }

    /// Makes `lpar`'s queue set on `subchannel` a member of the multicast group `group`
    /// (IPv4 224.0.0.0/4, IPv6 ff00::/8): the counterpart of Linux's SETIPM. From then
    /// on it gets a copy of every multicast frame to `group` that another queue set
    /// sends on its multicast queue. A membership takes a place in the target table
    /// and counts toward the partition's address quota, as an address does.
    ///
    /// Refused: not a multicast address (0xF007), a member already (0xE005), no such
    /// queue set (0xF00A), the partition at its address quota (0xF00D), the target
    /// table full (0xE006).
    pub fn register_group(
        &self,
        lpar: LparId,
        subchannel: u16,
        group: IpAddr,
    ) -> Result<(), RegistrationError> {
        if !group.is_multicast() {
            return Err(RegistrationError::InvalidAddress);
        }
        self.add_membership(SourceKey { lpar, subchannel }, group)
    }

    /// Ends a membership [`register_group`](Self::register_group) made (Linux's
    /// DELIPM): 0xE00B if there is none.
    pub fn deregister_group(
        &self,
        lpar: LparId,
        subchannel: u16,
        group: IpAddr,
    ) -> Result<(), RegistrationError> {
        if !group.is_multicast() {
            return Err(RegistrationError::InvalidAddress);
        }
        self.remove_membership(SourceKey { lpar, subchannel }, group)
    }

    /// Switches broadcast reception on or off for `lpar`'s queue set on `subchannel`.
    /// While on, it gets a copy of every broadcast frame (cast type 0x05) that another
    /// queue set sends on its multicast queue, whatever the frame's broadcast address
    /// (the limited 255.255.255.255 or a subnet's: the fabric is one LAN). The
    /// membership is kept under [`BROADCAST_GROUP`] and counts as one address.
    /// Switching on twice is 0xE005, off when off 0xE00B; then as
    /// [`register_group`](Self::register_group).
    pub fn set_broadcast(
        &self,
        lpar: LparId,
        subchannel: u16,
        on: bool,
    ) -> Result<(), RegistrationError> {
        let key = SourceKey { lpar, subchannel };
        if on {
            self.add_membership(key, BROADCAST_GROUP)
        } else {
            self.remove_membership(key, BROADCAST_GROUP)
        }
    }

    /// The member queue sets of `group` (a multicast address, or [`BROADCAST_GROUP`]
    /// for the broadcast domain). Waits for the table lock (thread context).
    pub fn group_members(&self, group: IpAddr) -> heapless::Vec<SourceKey, Q> {
        debug_assert!(self.may_wait(), "group_members from interrupt context");
        let st = self.state.read();
        let mut out = heapless::Vec::new();
        for e in st.table.members(&group) {
            // At most one membership per queue set, Q of them: no push fails.
            if out.push(e.owner).is_err() {
                break;
            }
        }
        out
    }

    fn add_membership(&self, key: SourceKey, group: IpAddr) -> Result<(), RegistrationError> {
        let entry = Entry::group(false, RegistrationError::DuplicateFound);
        self.add_entry(key, IpKey::from(&group), entry)
    }

    fn remove_membership(&self, key: SourceKey, group: IpAddr) -> Result<(), RegistrationError> {
        let entry = Entry::group(false, RegistrationError::NotFound);
        self.remove_entry(key, IpKey::from(&group), entry)
    }

    /// Adds a target-table entry under `tkey` for the queue set `key`: in this order,
    /// a unique key taken by anyone (`entry.error`), no such queue set (0xF00A), the
    /// set of the other layer (0xF013), a group it is a member of already
    /// (`entry.error`), the partition at its address quota (0xF00D), the table full
    /// (0xE006). Every entry, address or membership, counts toward the quota.
    fn add_entry(
        &self,
        key: SourceKey,
        tkey: IpKey,
        entry: Entry,
    ) -> Result<(), RegistrationError> {
        let mut st = self.update()?;
        let st = &mut *st;
        if !entry.group && st.table.unique(tkey).is_some() {
            return Err(entry.error);
        }
        // A queue set in the source table has its partition's record.
        let quota = usize::from(st.config.addresses_per_partition());
        let (Some(slot), Some(p)) = (st.table.source(&key), st.partition(key.lpar)) else {
            return Err(RegistrationError::SourceNotRegistered);
        };
        if self.is_layer2(slot) != entry.layer2 {
            return Err(RegistrationError::WrongLayer);
        }
        if entry.group && st.table.members_key(tkey).any(|e| e.owner == key) {
            return Err(entry.error);
        }
        if p.addresses >= quota {
            return Err(RegistrationError::AddressQuota);
        }
        if entry.group {
            st.table.add_member_key(tkey, key)?;
        } else {
            st.table.add_unique(tkey, key)?;
        }
        if let Some(p) = st.partition_mut(key.lpar) {
            p.addresses += 1;
        }
        Ok(())
    }

    /// Removes the entry under `tkey` that the queue set `key` holds; `entry.error`
    /// if it holds none.
    fn remove_entry(
        &self,
        key: SourceKey,
        tkey: IpKey,
        entry: Entry,
    ) -> Result<(), RegistrationError> {
        let mut st = self.update()?;
        let st = &mut *st;
        let removed = if entry.group {
            st.table.remove_member_key(tkey, key)
        } else {
            st.table.remove_unique(tkey, key)
        };
        removed.map_err(|_| entry.error)?;
        if let Some(p) = st.partition_mut(key.lpar) {
            p.addresses = p.addresses.saturating_sub(1);
        }
        Ok(())
    }

    /// Whether the queue set in `slot` was established in layer-2 mode. Under the
    /// exclusive table lock (no send holds the outbound lock).
    fn is_layer2(&self, slot: SlotRef) -> bool {
        self.controls
            .get(usize::from(slot.index))
            .is_some_and(|qc| {
                let out = qc.outbound.lock();
                lock_point!(self, Outbound);
                out.layer2
            })
    }

    /// Registers `mac` as a unicast MAC address of `lpar`'s layer-2 queue set on
    /// `subchannel` (Linux's SETVMAC): frames to it on a VLAN the set is a member of
    /// reach the set. Unique in the fabric. Refused: a group or all-zero MAC (0xF007),
    /// taken already (0x2005, Linux's duplicate MAC), then as
    /// [`register_address`](Self::register_address), a layer-3 set (0xF013).
    pub fn register_mac(
        &self,
        lpar: LparId,
        subchannel: u16,
        mac: Mac,
    ) -> Result<(), RegistrationError> {
        if MacCast::of(&mac) != MacCast::Unicast || mac == [0; 6] {
            return Err(RegistrationError::InvalidAddress);
        }
        let entry = Entry::unique(true, RegistrationError::DuplicateMac);
        self.add_entry(SourceKey { lpar, subchannel }, IpKey::mac(&mac), entry)
    }

    /// Removes a MAC address [`register_mac`](Self::register_mac) registered (Linux's
    /// DELVMAC): 0x2010 if the set does not hold it.
    pub fn deregister_mac(
        &self,
        lpar: LparId,
        subchannel: u16,
        mac: Mac,
    ) -> Result<(), RegistrationError> {
        let entry = Entry::unique(true, RegistrationError::MacNotFound);
        self.remove_entry(SourceKey { lpar, subchannel }, IpKey::mac(&mac), entry)
    }

    /// Makes `lpar`'s layer-2 queue set on `subchannel` a member of VLAN `vid` (1 to
    /// 4094), or of the untagged LAN (`vid` 0): it sends and receives that VLAN's
    /// frames (tagged with `vid`, or untagged). A layer-2 set starts a member of none.
    /// Refused: `vid` above 4094 (0xF007), a member already (0x2016, Linux's duplicate
    /// VLAN id), then as [`register_mac`](Self::register_mac).
    pub fn join_vlan(
        &self,
        lpar: LparId,
        subchannel: u16,
        vid: u16,
    ) -> Result<(), RegistrationError> {
        if vid > 4094 {
            return Err(RegistrationError::InvalidAddress);
        }
        let entry = Entry::group(true, RegistrationError::DuplicateVlan);
        self.add_entry(SourceKey { lpar, subchannel }, IpKey::vlan(vid), entry)
    }

    /// Ends a VLAN membership [`join_vlan`](Self::join_vlan) made: 0xE00B if there is
    /// none.
    pub fn leave_vlan(
        &self,
        lpar: LparId,
        subchannel: u16,
        vid: u16,
    ) -> Result<(), RegistrationError> {
        let entry = Entry::group(true, RegistrationError::NotFound);
        self.remove_entry(SourceKey { lpar, subchannel }, IpKey::vlan(vid), entry)
    }

    /// Makes `lpar`'s layer-2 queue set on `subchannel` a receiver of the group MAC
    /// `mac` (Linux's SETGMAC; IPv6 neighbour discovery's 33:33:… addresses, say): it
    /// gets the frames to `mac` on the VLANs it is a member of. Refused: not a group
    /// MAC, or the broadcast MAC, which every VLAN member gets anyway (0xF007), a
    /// receiver already (0x2005), then as [`register_mac`](Self::register_mac).
    pub fn register_group_mac(
        &self,
        lpar: LparId,
        subchannel: u16,
        mac: Mac,
    ) -> Result<(), RegistrationError> {
        if MacCast::of(&mac) != MacCast::Multicast {
            return Err(RegistrationError::InvalidAddress);
        }
        let entry = Entry::group(true, RegistrationError::DuplicateMac);
        self.add_entry(
            SourceKey { lpar, subchannel },
            IpKey::group_mac(&mac),
            entry,
        )
    }

    /// Ends a group MAC registration (Linux's DELGMAC): 0x2010 if there is none.
    pub fn deregister_group_mac(
        &self,
        lpar: LparId,
        subchannel: u16,
        mac: Mac,
    ) -> Result<(), RegistrationError> {
        let entry = Entry::group(true, RegistrationError::MacNotFound);
        self.remove_entry(
            SourceKey { lpar, subchannel },
            IpKey::group_mac(&mac),
            entry,
        )
    }

    /// Makes `lpar`'s layer-2 queue set on `subchannel` the fabric's bridge port, or
    /// stops it being one: the set that bridges the fabric to an outside LAN (IBM's
    /// HiperSockets bridge port, one active per HiperSockets LAN). It gets every
    /// layer-2 frame whose unicast destination no member of the frame's VLAN
    /// registered (instead of the sender's 0x11), and a copy of broadcast and group
    /// frames, on every VLAN. Another set holding the role: 0xE005; off when not on:
    /// 0xE00B; then as [`register_mac`](Self::register_mac).
    pub fn set_bridge_port(
        &self,
        lpar: LparId,
        subchannel: u16,
        on: bool,
    ) -> Result<(), RegistrationError> {
        let key = SourceKey { lpar, subchannel };
        if on {
            if let Some(st) = self.view()
                && st
                    .table
                    .members_key(IpKey::bridge())
                    .any(|e| e.owner != key)
            {
                return Err(RegistrationError::DuplicateFound);
            }
            self.add_entry(
                key,
                IpKey::bridge(),
                Entry::group(true, RegistrationError::DuplicateFound),
            )
        } else {
            self.remove_entry(
                key,
                IpKey::bridge(),
                Entry::group(true, RegistrationError::NotFound),
            )
        }
    }

    /// Removes one address of `lpar`'s queue set on `subchannel`.
    pub fn deregister_address(
        &self,
        lpar: LparId,
        subchannel: u16,
        ip: IpAddr,
    ) -> Result<(), RegistrationError> {
        let entry = Entry::unique(false, RegistrationError::NotFound);
        self.remove_entry(SourceKey { lpar, subchannel }, IpKey::from(&ip), entry)
    }

    /// Deregisters `lpar`'s queue set on `subchannel`: removes its addresses from the
    /// target table, then its source entry, then frees its queue control, all under
    /// the exclusive lock, so no send is in flight meanwhile. Afterwards a send to its
    /// addresses is unreachable (0x11), and a SIGA on it answers cc1. Returns the
    /// queue set's final counters.
    pub fn deregister_queue_set(
        &self,
        lpar: LparId,
        subchannel: u16,
    ) -> Result<CounterSnapshot, RegistrationError> {
        let mut st = self.update()?;
        self.deregister_locked(&mut st, SourceKey { lpar, subchannel })
    }

    fn deregister_locked(
        &self,
        st: &mut State<Q, A, L, S, M>,
        key: SourceKey,
    ) -> Result<CounterSnapshot, RegistrationError> {
        let (slot, addresses) = st
            .table
            .remove_queue_set(key)
            .ok_or(RegistrationError::NotFound)?;
        // Its pending buffers and those waiting for it complete now, with an error.
        self.cancel_pending(st, key, slot);
        // A slot's index is below Q by construction; `% Q` (a mask: Q is a power of two)
        // says so to the compiler, so no bounds-check panic path is left.
        let index = usize::from(slot.index) % Q;
        let qc = &self.controls[index];
        {
            let mut out = qc.outbound.lock();
            lock_point!(self, Outbound);
            out.active = false;
        }
        let summary = {
            let mut inb = qc.inbound.lock();
            lock_point!(self, Inbound);
            inb.active = false;
            inb.summary
        };
        if let Some(p) = st.partition_mut(key.lpar) {
            // The entry exists (it was Active), so this replaces it and cannot fail.
            let _ = p.set_subchannel(key.subchannel, Subchannel::Inactive);
            p.addresses = p.addresses.saturating_sub(addresses);
            p.detach_summary(summary);
        }
        // Written under the exclusive lock; readers of generations hold it shared.
        qc.generation.fetch_add(1, Ordering::Relaxed);
        st.in_use[index] = false;
        Ok(qc.counters.snapshot())
    }

    /// Refuses a new queue set whose structures overlap one another or those of
    /// `p`'s established queue sets \[issue 9 defect 5\]: the fabric writes SBALs
    /// (8-byte atomics), SLSBs and indicator bytes (1-byte atomics) that the program
    /// reads and writes too, and frame data into buffers the SBALs name; two
    /// structures on the same bytes would have the fabric overwrite one with the
    /// other and mix atomic sizes on the same bytes. Other partitions' memory cannot
    /// overlap (their windows never do). Only a middle or global indicator byte may be
    /// shared, by queue sets that each use it in that role (Linux shares the summary
    /// indicator among all its devices, `drivers/s390/cio/qdio_thinint.c`).
    ///
    /// In guest addresses: a [`GuestMemory`] maps distinct guest bytes to distinct
    /// host bytes, so two ranges share host bytes exactly when they share guest
    /// bytes, and the answer stays true when the hypervisor remaps the memory.
    fn check_overlaps(
        &self,
        p: &PartitionRecord<M, S>,
        outs: &[QueueRing],
        inp: &QueueRing,
        cq: Option<&QueueRing>,
        ind: &IndicatorBytes,
    ) -> Result<(), RegistrationError> {
        let mut new = [Extent::EMPTY; EXTENTS];
        let mut n = 0;
        extents(outs, inp, cq, ind, |e| {
            if let Some(slot) = new.get_mut(n) {
                *slot = e;
                n += 1;
            }
        });
        // `get_mut`: n <= EXTENTS by the closure above, without a slicing panic path.
        let new = new.get_mut(..n).unwrap_or(&mut []);
        // Sorted by start, two of them overlap if and only if two neighbours do.
        sort_by_start(new);
        for w in new.windows(2) {
            if w[0].end() > w[1].start {
                return Err(RegistrationError::OverlappingQueues {
                    field: w[1].field,
                    with: w[0].field,
                });
            }
        }
        let new = &*new;
        let mut found = None;
        for (_, slot) in p.active() {
            let Some(qc) = self.controls.get(usize::from(slot.index)) else {
                continue;
            };
            // No send holds these for long: sends hold the table lock shared (counted,
            // or pinned by the outbound lock, which a hinted SIGA takes only to find
            // this update waiting and let go), and we hold it exclusive.
            let outbound = qc.outbound.lock();
            lock_point!(self, Outbound);
            let inbound = qc.inbound.lock();
            lock_point!(self, Inbound);
            let Some((i, d)) = inbound.ring() else {
                continue;
            };
            extents(outbound.rings(), i, outbound.completion_ring(), d, |old| {
                if found.is_some() {
                    return;
                }
                // The new extents are disjoint and sorted, so only the last one that
                // starts before `old` ends can reach into it.
                let k = new.partition_point(|e| e.start < old.end());
                let Some(e) = k.checked_sub(1).and_then(|k| new.get(k)) else {
                    return;
                };
                let shared = e.start == old.start
                    && e.field == old.field
                    && matches!(
                        e.field,
                        QueueField::MiddleIndicator | QueueField::GlobalIndicator
                    );
                if e.end() > old.start && !shared {
                    found = Some(RegistrationError::OverlappingQueues {
                        field: e.field,
                        with: old.field,
                    });
                }
            });
            if let Some(err) = found {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Addresses registered in the target table, across all partitions. Waits for the
    /// table lock: thread context only (see the [execution contract](crate#execution-contract)).
    pub fn address_count(&self) -> usize {
        debug_assert!(self.may_wait(), "address_count from interrupt context");
        self.state.read().table.target_len()
    }

    /// The table lock shared, for a read-only look: waiting for it where the context
    /// allows, else only if it is free at once.
    fn view(&self) -> Option<ReadGuard<'_, State<Q, A, L, S, M>>> {
        if self.may_wait() {
            Some(self.state.read())
        } else {
            self.state.try_read()
        }
    }

    /// The counters of a queue set, or `StaleHandle` once it has been deregistered.
    /// From interrupt context it does not wait: `InterruptContext` if an update holds
    /// the table lock.
    pub fn counters(&self, handle: &QueueSetHandle) -> Result<CounterSnapshot, RegistrationError> {
        let st = self.view().ok_or(RegistrationError::InterruptContext)?;
        lock_point!(self, TableShared);
        let live = st.table.source(&handle.key) == Some(handle.slot);
        if !live {
            return Err(RegistrationError::StaleHandle);
        }
        // A slot's index is below Q by construction; `get` keeps a panic path out.
        self.controls
            .get(usize::from(handle.slot.index))
            .map(|qc| qc.counters.snapshot())
            .ok_or(RegistrationError::StaleHandle)
    }

    /// The counters of `lpar`'s queue set on `subchannel`, if it is established.
    /// From interrupt context it does not wait: `None` if an update holds the lock.
    pub fn counters_of(&self, lpar: LparId, subchannel: u16) -> Option<CounterSnapshot> {
        let st = self.view()?;
        lock_point!(self, TableShared);
        let slot = st.table.source(&SourceKey { lpar, subchannel })?;
        self.controls
            .get(usize::from(slot.index))
            .map(|qc| qc.counters.snapshot())
    }

    /// Copies `dst.len()` bytes of partition `lpar`'s memory at guest address `addr` into
    /// `dst`, after the same window check every queue-set address gets (wholly inside
    /// one of the partition's windows, overflow-safe).
    ///
    /// For a hypervisor's own calls that pass a guest address (a parameter block, a
    /// console line): every byte is read once, and the hypervisor uses only the copy.
    /// `None` if `lpar` is unknown or the range is not inside its memory; `dst` is then
    /// left as it was. From interrupt context it does not wait for the table lock
    /// (the [execution contract](crate#execution-contract)): `None` too if an update
    /// holds it.
    pub fn copy_from_partition(&self, lpar: LparId, addr: u64, dst: &mut [u8]) -> Option<()> {
        let st = self.view()?;
        lock_point!(self, TableShared);
        let p = st.partition(lpar)?;
        let slice = p.memory.slice(addr, dst.len() as u64)?;
        slice.read(0, dst);
        Some(())
    }

    /// Sets or clears the receiver's "interrupt immediately" override.
    pub fn set_interrupt_immediately(
        &self,
        lpar: LparId,
        subchannel: u16,
        on: bool,
    ) -> Result<(), RegistrationError> {
        if !self.may_wait() {
            return Err(RegistrationError::InterruptContext);
        }
        let st = self.state.read();
        lock_point!(self, TableShared);
        let slot = st
            .table
            .source(&SourceKey { lpar, subchannel })
            .ok_or(RegistrationError::NotFound)?;
        let mut inb = self.controls[usize::from(slot.index)].inbound.lock();
        lock_point!(self, Inbound);
        inb.interrupt_immediately = on;
        Ok(())
    }

    /// The delay fallback without a send: raises an interrupt for every summary byte
    /// that has stayed pending longer than the delay, and (thread context only) delivers
    /// and completes the buffers SIGA WRITEQ left PENDING whose receivers have room
    /// again (the completion queue: see [`SigaFunction::WriteQ`]). An embedding calls
    /// this from a periodic timer, with interrupts masked. Returns the interrupts raised.
    ///
    /// It waits for the fabric's locks, so it follows the execution contract of the
    /// [crate docs](crate#execution-contract): where the platform says the call may
    /// interrupt a fabric entry ([`CallContext::Interruptible`] or
    /// [`CallContext::Interrupt`]) it waits for nothing and behaves as
    /// [`try_expire_delays`](Self::try_expire_delays). From an interrupt handler, call
    /// that one.
    pub fn expire_delays(&self) -> usize {
        self.expire(self.may_wait()).raised
    }

    /// The delay fallback for interrupt context: as [`expire_delays`](Self::expire_delays),
    /// but it never waits for a lock. A queue set whose lock is held (by a send, a
    /// registration, or the very fabric entry this call interrupted on the same core)
    /// is skipped and counted; the next call looks at it again, so a skipped fallback
    /// fires one timer period late, never not at all. Safe from any context.
    pub fn try_expire_delays(&self) -> DelayReport {
        self.expire(false)
    }

    fn expire(&self, wait: bool) -> DelayReport {
        let mut report = DelayReport::default();
        let st = if wait {
            self.state.read()
        } else {
            let Some(st) = self.state.try_read() else {
                report.table_busy = true;
                return report;
            };
            st
        };
        lock_point!(self, TableShared);
        let now = self.platform.now_ns();
        for (qc, _) in self
            .controls
            .iter()
            .zip(st.in_use.iter())
            .filter(|(_, u)| **u)
        {
            let target = {
                let inb = if wait {
                    qc.inbound.lock()
                } else {
                    let Some(inb) = qc.inbound.try_lock() else {
                        report.skipped += 1;
                        continue;
                    };
                    inb
                };
                lock_point!(self, Inbound);
                let Some((_, ind)) = inb.ring() else { continue };
                let Some(owner) = st.partition(inb.owner.lpar) else {
                    continue;
                };
                if owner.suspended {
                    // No interrupt into a stopped partition; after its resume the
                    // stamp is old, so the first run then fires.
                    continue;
                }
                // A summary byte the hypervisor unmapped since cannot be pending.
                let Some(global) = owner.memory.slice(ind.global, 1) else {
                    continue;
                };
                let pending = global.load(0, Ordering::Acquire) != 0;
                let stamp = owner.summary_since(inb.summary);
                let since = stamp.load(Ordering::Relaxed);
                if !pending || now.saturating_sub(since) < st.config.interrupt_delay_ns() {
                    continue;
                }
                // One fallback per summary and delay: a queue set sharing the summary
                // (here or in a send) that restamped first wins.
                if stamp
                    .compare_exchange(since, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                InterruptTarget {
                    lpar: inb.owner.lpar,
                    subchannel: inb.owner.subchannel,
                    cookie: inb.cookie,
                }
            };
            let delivered = self.platform.raise_interrupt(target).delivered();
            qc.counters.raised(delivered);
            if delivered {
                report.raised += 1;
            } else {
                report.dropped += 1;
            }
        }
        if wait {
            report.completed = self.flush_all_pending(&st);
        }
        report
    }

    /// Whether this call may wait for the fabric's locks: not where the platform says
    /// it could have interrupted a fabric entry on its own core.
    fn may_wait(&self) -> bool {
        matches!(
            self.platform.context(),
            CallContext::Unknown | CallContext::Masked
        )
    }

    /// Takes the table lock exclusive for an update, after checking the context.
    fn update(&self) -> Result<WriteGuard<'_, State<Q, A, L, S, M>>, RegistrationError> {
        if !self.may_wait() {
            return Err(RegistrationError::InterruptContext);
        }
        let mut st = self.state.write_then(|| {
            lock_point!(self, TableExclusiveWaiting);
        });
        // The counted readers are out; the pinned ones (hinted SIGAs) hold their
        // outbound lock instead: take and release each, so that each is either out or
        // will see the update waiting (`TableLock::read_pinned`).
        for qc in &self.controls {
            drop(qc.outbound.lock());
        }
        lock_point!(self, TableExclusive);
        // A new epoch: what sends kept from the last one is stale. Never 0 again
        // (`max`), which would wrap only after 2^64 updates anyway.
        st.epoch = st.epoch.wrapping_add(1).max(1);
        Ok(st)
    }

    /// A port through which partition `lpar` issues SIGA (the partition's identity
    /// comes from the embedding, never from the partition's own input).
    pub const fn port(&self, lpar: LparId) -> Port<'_, P, Q, A, L, S, M, O> {
        Port { fabric: self, lpar }
    }

    /// SIGA with a raw function code, as a hypervisor decodes it from the
    /// instruction's registers (for WRITEQ, code 4, use [`siga_aob`](Self::siga_aob)).
    pub fn siga(
        &self,
        lpar: LparId,
        subchannel: u16,
        function: u32,
        queue_mask: u32,
    ) -> Result<SigaReport, SigaError> {
        self.siga_aob(lpar, subchannel, function, queue_mask, 0)
    }

    /// SIGA with a raw function code and the QAOB address SIGA WRITEQ carries (Linux's
    /// `qdio_siga_output` passes it in a register; other functions ignore it).
    pub fn siga_aob(
        &self,
        lpar: LparId,
        subchannel: u16,
        function: u32,
        queue_mask: u32,
        qaob: u64,
    ) -> Result<SigaReport, SigaError> {
        let f = SigaFunction::from_code(function).ok_or(SigaError::InvalidFunction)?;
        self.siga_inner(lpar, subchannel, f, queue_mask, qaob)
    }

    /// SIGA write: sends the next primed output buffer.
    pub fn siga_write(
        &self,
        lpar: LparId,
        subchannel: u16,
        queue_mask: u32,
    ) -> Result<SigaReport, SigaError> {
        self.siga_function(lpar, subchannel, SigaFunction::Write, queue_mask)
    }

    /// SIGA write-multiple: sends every consecutive primed output buffer.
    pub fn siga_write_multiple(
        &self,
        lpar: LparId,
        subchannel: u16,
        queue_mask: u32,
    ) -> Result<SigaReport, SigaError> {
        self.siga_function(lpar, subchannel, SigaFunction::WriteMultiple, queue_mask)
    }

    /// SIGA WRITEQ: sends the next primed buffer of the one unicast queue `queue_mask`
    /// names, with the QAOB at guest address `qaob` (256 bytes, 256-aligned, in the
    /// sender's memory, and not the QAOB of a buffer of this queue set still pending or
    /// with its completion not yet posted; else the buffer is refused, sbalf15 0x2A).
    /// If the receiver is full, the buffer is left PENDING (0xA3),
    /// its elements recorded in the QAOB, and completes later (see
    /// [`SigaFunction::WriteQ`]).
    pub fn siga_writeq(
        &self,
        lpar: LparId,
        subchannel: u16,
        queue_mask: u32,
        qaob: u64,
    ) -> Result<SigaReport, SigaError> {
        self.siga_inner(lpar, subchannel, SigaFunction::WriteQ, queue_mask, qaob)
    }

    /// The send, steps c to p of the patent: check the IQDIO indicator, take the table
    /// lock shared, find the issuer's queue control, take its outbound lock, and for
    /// each primed buffer from the cursor of each queue the mask names: read the
    /// destination, look the target up, take its inbound lock, fill an empty receive
    /// buffer, set the receive SLSB 0x82 and then the send SLSB 0xA1, set the
    /// completion vector low → high, and decide on the interrupt. Synchronous: every
    /// buffer handled reads 0xA1, 0xAF or (WRITEQ only) 0xA3 on return. Before its new
    /// buffers, a SIGA delivers what it can of the queue set's pending buffers.
    ///
    /// A write-multiple holds the table lock for one buffer at a time while an update
    /// waits for it: between buffers it steps out (table lock and outbound lock) when
    /// a registration is waiting, lets it in, then re-takes both and checks that its
    /// queue set is still the one it started on (same slot and generation); if not, it
    /// ends with the buffers it has handled. So an update waits for at most one buffer
    /// copy of each send in flight, not for a whole write-multiple of 128 buffers.
    pub fn siga_function(
        &self,
        lpar: LparId,
        subchannel: u16,
        function: SigaFunction,
        queue_mask: u32,
    ) -> Result<SigaReport, SigaError> {
        self.siga_inner(lpar, subchannel, function, queue_mask, 0)
    }

    /// [`siga_into`](Self::siga_into) with a report of its own, returned.
    ///
    /// The report is the caller's, written in place by `siga_into` and read after it
    /// returns, past the table lock's release (a locked instruction, which drains the
    /// store buffer). Returned from inside, it was copied out with 16- and 8-byte loads
    /// right after the 1-byte increments of its counters, loads that a store cannot
    /// forward to: a stall on every SIGA (`perf annotate`).
    #[inline(always)]
    fn siga_inner(
        &self,
        lpar: LparId,
        subchannel: u16,
        function: SigaFunction,
        queue_mask: u32,
        qaob: u64,
    ) -> Result<SigaReport, SigaError> {
        let mut report = SigaReport::default();
        self.siga_into(lpar, subchannel, function, queue_mask, qaob, &mut report)?;
        Ok(report)
    }

    /// A SIGA's way in through its issuer's send hint: the queue control the issuer's
    /// last SIGA used, its outbound lock taken, and the tables pinned by that lock
    /// rather than counted ([`TableLock::read_pinned`]): two locked instructions fewer
    /// than [`enter_counted`](Self::enter_counted). `None`, with nothing held, when the
    /// hint is not the issuer's, the lock is busy, an update is under way or the hint
    /// is stale (the control is no longer active, or another queue set's): the counted
    /// entry then answers, with the same checks and errors as ever. The control's
    /// index comes back with the guards.
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    fn enter_hinted(
        &self,
        lpar: LparId,
        subchannel: u16,
    ) -> Option<(
        MutexGuard<'_, Outbound<O>>,
        ReadGuard<'_, State<Q, A, L, S, M>>,
        &QueueControl<O>,
        usize,
    )> {
        let hint = &self
            .controls
            .get(hint_slot::<Q>(lpar, subchannel))?
            .send_hint;
        let index = SendHint::index(hint.load(Ordering::Relaxed), lpar, subchannel)?;
        let qc = self.controls.get(index)?;
        let out = qc.outbound.try_lock()?;
        lock_point!(self, Outbound);
        // SAFETY: `out` was taken just above by a read-modify-write of the lock, which
        // every update takes and releases after barring readers and before it writes
        // the tables (`update`); it is held as long as the guard: both are returned
        // together, and siga_into drops them together.
        let st = unsafe { self.state.read_pinned() }?;
        lock_point!(self, TableShared);
        // Established by the issuer and not released since (deregistration clears
        // `active` under the update, and a new owner's establishment rewrites `owner`).
        (out.active && out.cq.owner == SourceKey { lpar, subchannel })
            .then_some((out, st, qc, index))
    }

    /// A SIGA's way in by the table lock, counted: finds the issuer's queue set, takes
    /// its outbound lock, and leaves the issuer's send hint at it for the next SIGA
    /// ([`enter_hinted`](Self::enter_hinted)).
    #[inline(never)]
    #[allow(clippy::type_complexity)]
    fn enter_counted(
        &self,
        lpar: LparId,
        subchannel: u16,
    ) -> Result<
        (
            MutexGuard<'_, Outbound<O>>,
            ReadGuard<'_, State<Q, A, L, S, M>>,
            &QueueControl<O>,
            usize,
        ),
        SigaError,
    > {
        let st = self.state.read_in(usize::from(lpar));
        lock_point!(self, TableShared);
        let (slot, _) = issuer_slot(&st, lpar, subchannel)?;
        // A slot's index is below Q by construction; `get` keeps a panic path out of SIGA.
        let Some(qc) = self.controls.get(usize::from(slot.index)) else {
            return Err(SigaError::QueuesNotActive);
        };
        let Some(out) = qc.outbound.try_lock() else {
            qc.counters.busy();
            return Err(SigaError::Busy);
        };
        lock_point!(self, Outbound);
        if let Some(hinted) = self.controls.get(hint_slot::<Q>(lpar, subchannel)) {
            let hint = SendHint::pack(lpar, subchannel, slot.index);
            hinted.send_hint.store(hint, Ordering::Relaxed);
        }
        Ok((out, st, qc, usize::from(slot.index)))
    }

    /// The SIGA, its counts added to `report` (see [`siga_inner`](Self::siga_inner)).
    #[inline(never)]
    fn siga_into(
        &self,
        lpar: LparId,
        subchannel: u16,
        function: SigaFunction,
        queue_mask: u32,
        qaob: u64,
        report: &mut SigaReport,
    ) -> Result<(), SigaError> {
        if !self.may_wait() {
            return Err(SigaError::InterruptContext);
        }
        let (mut out, mut st, qc, index) = match self.enter_hinted(lpar, subchannel) {
            Some(entered) => entered,
            None => self.enter_counted(lpar, subchannel)?,
        };
        // The issuer, its queue set active, from the tables the entry holds (counted or
        // pinned); a hinted entry found the control active and owned by the issuer,
        // which the tables confirm.
        let (slot, issuer) = issuer_slot(&st, lpar, subchannel)?;
        if usize::from(slot.index) != index {
            return Err(SigaError::QueuesNotActive);
        }
        // Queue n is bit 1 << (31 - n) (Linux's `qdio_siga_output`,
        // `drivers/s390/cio/qdio_main.c`); a bit naming a queue the set did not
        // establish, or no bit at all, is cc1.
        let queues = u32::from(out.queues);
        if queue_mask == 0 || unestablished(queue_mask, queues) != 0 {
            return Err(SigaError::InvalidQueueMask);
        }
        let limit = match function {
            SigaFunction::Write => 1,
            SigaFunction::WriteMultiple => QUEUE_BUFFERS,
            SigaFunction::WriteQ => {
                // Linux issues WRITEQ for one buffer of one unicast queue, and only with
                // the completion queue on (`qdio_main.c` `qdio_kick_outbound_q`,
                // `qeth_core_main.c` `qeth_flush_buffers`).
                if !out.cq.active {
                    return Err(SigaError::InvalidFunction);
                }
                let multicast = out
                    .multicast_queue()
                    .is_some_and(|m| queue_mask == 1 << (31 - u32::from(m)));
                if queue_mask.count_ones() != 1 || multicast {
                    return Err(SigaError::InvalidQueueMask);
                }
                1
            }
        };
        let writeq = (function == SigaFunction::WriteQ).then_some(qaob);
        let issuer_key = SourceKey { lpar, subchannel };
        let sender = Sender {
            key: issuer_key,
            record: issuer,
            qc,
        };
        self.flush_pending(&st, &sender, &mut out, report);
        if function == SigaFunction::Write && queue_mask.is_power_of_two() {
            // The common send, straight: SIGA write of one queue handles one buffer,
            // so there is nothing to step out between and no loop over the queues;
            // the issuer's record found above serves. The mask was checked against
            // the established queues; a queue beyond `O` is skipped as the loop
            // below skips it.
            let q = queue_mask.leading_zeros();
            if q < queues.min(O as u32) {
                self.send_next(&st, &sender, &mut out, q as u8, None, report);
            }
            return Ok(());
        }
        let mut handled = 0usize;
        'queues: for q in 0..queues.min(O as u32) as u8 {
            if queue_mask & (1 << (31 - u32::from(q))) == 0 {
                continue;
            }
            for _ in 0..limit {
                if handled > 0 && st.writer_waiting() {
                    // Step out of a waiting update's way (outbound first: lock order),
                    // and come back once it is done.
                    drop(out);
                    drop(st);
                    st = self.state.read_in(usize::from(lpar));
                    lock_point!(self, TableShared);
                    if issuer_slot(&st, lpar, subchannel).map(|(s, _)| s) != Ok(slot) {
                        // Deregistered (and perhaps re-established) meanwhile.
                        break 'queues;
                    }
                    // Another SIGA on this queue may hold it now: it ends or steps out
                    // too.
                    out = qc.outbound.lock();
                    lock_point!(self, Outbound);
                }
                let Some(issuer) = st.partition(lpar) else {
                    break 'queues;
                };
                let sender = Sender {
                    key: issuer_key,
                    record: issuer,
                    qc,
                };
                if !self.send_next(&st, &sender, &mut out, q, writeq, report) {
                    break;
                }
                handled += 1;
            }
        }
        Ok(())
    }

    /// Sends the output buffer at queue `q`'s cursor if it is primed; false if it is
    /// not (or the queue is gone). `writeq`: SIGA WRITEQ's QAOB address.
    ///
    /// Always inlined into [`siga_inner`](Self::siga_inner)'s two calls, so that the
    /// one-buffer SIGA write makes no call (and saves the registers) to send it.
    #[inline(always)]
    fn send_next(
        &self,
        st: &State<Q, A, L, S, M>,
        sender: &Sender<'_, M, S, O>,
        out: &mut Outbound<O>,
        q: u8,
        writeq: Option<u64>,
        report: &mut SigaReport,
    ) -> bool {
        let multicast = out.multicast_queue() == Some(q);
        let qi = usize::from(q);
        let issuer = &sender.record.memory;
        let qc = sender.qc;
        let Outbound {
            active,
            queues,
            rings,
            cursors,
            pending,
            layer2,
            slsbs,
            last_target,
            ..
        } = out;
        let mut from = FromQueue {
            multicast,
            layer2: *layer2,
            last_target,
        };
        if !*active || qi >= usize::from(*queues) {
            return false;
        }
        // Borrow the ring in place (528 bytes: no copy on the send path).
        let (Some(ring), Some(cursor)) = (rings.get(qi), cursors.get_mut(qi)) else {
            return false;
        };
        // Translated once per epoch: the hypervisor may have remapped the memory
        // since the last call (never during one: it waits for the table lock, and
        // starts a new epoch). An SLSB it unmapped leaves nothing to send.
        let Some(slsb) = slsbs.get_or(st.epoch, qi, || ring.slsb_slice(issuer)) else {
            return false;
        };
        let ring = ring.live_at(slsb);
        let n = *cursor;
        // Acquire pairs with the program's Release store of 0x62: its SBAL and
        // data writes are visible.
        if ring.state(n, Ordering::Acquire) != SlsbState::OUTPUT_PRIMED.0 {
            return false;
        }
        let Ok(sbal) = ring.sbal(n, issuer) else {
            // The SBAL no longer translates (or does misaligned): no element to write
            // the reason into; the error state alone tells the program.
            ring.set_state(n, SlsbState::OUTPUT_ERROR.0, Ordering::Release);
            qc.counters.error(Reason::AddressOutsideMemory);
            report.buffers += 1;
            report.refused += 1;
            *cursor = next(n);
            return true;
        };
        let outcome = match writeq {
            None => self.send_buffer(st, sender, &sbal, &mut from, None, report),
            // A QAOB still on the pending list (its buffer waiting, or delivered with
            // its completion not yet posted) belongs to the buffer that named it: a
            // second buffer naming it would overwrite that buffer's record (its frames
            // lost, the second's delivered twice) and have the address posted twice.
            // Refused always, not only when this buffer would go pending (known only
            // after its parse and delivery attempt): one rule, checked first, and
            // nothing is written into the QAOB. Linux never reuses a QAOB in flight;
            // iqdio's driver cannot (one QAOB per output buffer slot, and a slot is not
            // primed again while its QAOB is held).
            Some(qaob) if pending.holds_qaob(qaob) => refuse(Reason::QaobInvalid),
            Some(qaob) => match qaob_slice(issuer, qaob) {
                Some(slice) => {
                    let wq = WriteQ {
                        qaob: slice,
                        qaob_addr: qaob,
                        queue: q,
                        pending,
                    };
                    self.send_buffer(st, sender, &sbal, &mut from, Some(wq), report)
                }
                None => refuse(Reason::QaobInvalid),
            },
        };
        report.buffers += 1;
        match outcome {
            BufferOutcome::Delivered { frames, bytes } => {
                // Release: our reads of the buffer happen before the program
                // reuses it.
                ring.set_state(n, SlsbState::OUTPUT_EMPTY.0, Ordering::Release);
                qc.counters.sent(q, u64::from(frames), bytes);
                report.delivered += 1;
                report.frames += frames;
                report.bytes += bytes;
            }
            BufferOutcome::Pending => {
                // Release: the QAOB's record of the elements is visible with the
                // state; the program may reuse the SBAL now, not the data.
                ring.set_state(n, SlsbState::OUTPUT_PENDING.0, Ordering::Release);
                qc.counters.went_pending();
                qc.pending_hint
                    .store(out_pending_len(pending), Ordering::Relaxed);
                report.pending = report.pending.saturating_add(1);
            }
            BufferOutcome::Refused(fault) => {
                let e14 = sbal.load(Sbale::ERROR_INDEX_ELEMENT).sflags;
                sbal.set_sflags(
                    Sbale::ERROR_INDEX_ELEMENT,
                    (e14 & 0xF0) | (fault.element & 0x0F),
                );
                sbal.set_sflags(Sbale::ERROR_REASON_ELEMENT, fault.reason.code());
                // Release publishes the reason with the error state.
                ring.set_state(n, SlsbState::OUTPUT_ERROR.0, Ordering::Release);
                qc.counters.error(fault.reason);
                report.refused += 1;
            }
        }
        *cursor = next(n);
        true
    }

    /// One output buffer: parse, look up, deliver, signal. On the multicast queue a
    /// multicast or broadcast buffer goes to every member of its group but the sender's
    /// own queue set ([`Fabric::register_group`]). With `writeq`, a unicast buffer
    /// whose receiver is full (or has earlier pending buffers of this set waiting)
    /// goes pending instead of being refused, while the pending list has room.
    ///
    /// Always inlined into [`send_next`](Self::send_next), its one caller, so that
    /// SIGA write's copy (`writeq` a constant `None`) drops the WRITEQ branches.
    #[inline(always)]
    fn send_buffer(
        &self,
        st: &State<Q, A, L, S, M>,
        sender: &Sender<'_, M, S, O>,
        sbal: &Sbal,
        from: &mut FromQueue<'_>,
        writeq: Option<WriteQ<'_>>,
        report: &mut SigaReport,
    ) -> BufferOutcome {
        let mut outgoing = Outgoing::empty();
        if let Err(f) = parse_outgoing_into(
            sbal,
            &sender.record.memory,
            st.config.mfs(),
            from.multicast,
            from.layer2,
            &mut outgoing,
        ) {
            return BufferOutcome::Refused(f);
        }
        if let Some(route) = outgoing.route {
            return self.send_layer2(st, sender, &outgoing, route, report);
        }
        let group = match outgoing.cast {
            // Anycast (IPv6, Linux sends it on the multicast queue) reaches the one
            // queue set that registered the address, as unicast does.
            CastType::Unicast | CastType::Anycast => None,
            CastType::Multicast => Some(outgoing.dest.ip()),
            CastType::Broadcast => Some(BROADCAST_GROUP),
        };
        let Some(group) = group else {
            let Some(entry) = st
                .table
                .target_cached(outgoing.dest, st.epoch, from.last_target)
            else {
                return refuse(Reason::Unreachable);
            };
            let delivered = match &writeq {
                // Behind this set's earlier pending buffers to the same receiver: in
                // order, so pending too.
                Some(wq) if wq.pending.waits_for(entry.slot) => Err(Reason::TargetFull),
                _ => self.deliver_to_inlined(st, entry, &outgoing, report),
            };
            return match (delivered, writeq) {
                (Ok(()), _) => BufferOutcome::Delivered {
                    frames: outgoing.frames() as u16,
                    bytes: outgoing.payload,
                },
                (Err(Reason::TargetFull), Some(wq)) => self.go_pending(sbal, entry, wq),
                (Err(reason), _) => refuse(reason),
            };
        };
        // Every member but the sender's own queue set gets its copy, with its own
        // initiative and interrupt decision; a member that cannot take it (full,
        // suspended, its buffer unusable) is skipped and counts the miss, so it holds
        // up no one and nothing is lost uncounted. The sender's buffer completes
        // 0xA1 either way, as a LAN's multicast does (HiperSockets delivers group
        // traffic best-effort: QDIO-FACTS section 4).
        self.fan_out(st, sender, st.table.members(&group), &outgoing, report)
    }

    /// Delivers a group buffer to each of `members` but the sender's own queue set;
    /// a member that cannot take it is skipped and counts the miss.
    fn fan_out(
        &self,
        st: &State<Q, A, L, S, M>,
        sender: &Sender<'_, M, S, O>,
        members: impl Iterator<Item = TargetEntry>,
        outgoing: &Outgoing,
        report: &mut SigaReport,
    ) -> BufferOutcome {
        let (mut copies, mut skipped) = (0u64, 0u64);
        for member in members {
            if member.owner == sender.key {
                continue;
            }
            match self.deliver_to(st, member, outgoing, report) {
                Ok(()) => copies += 1,
                Err(_) => {
                    skipped += 1;
                    if let Some(mqc) = self.controls.get(usize::from(member.slot.index))
                        && mqc.generation.load(Ordering::Relaxed) == member.slot.generation
                    {
                        mqc.counters.group_missed();
                    }
                }
            }
        }
        sender.qc.counters.group_sent(copies, skipped);
        report.copies = report.copies.saturating_add(copies as u16);
        BufferOutcome::Delivered {
            frames: outgoing.frames() as u16,
            bytes: outgoing.payload,
        }
    }

    /// A layer-2 buffer, routed by destination MAC and VLAN: a unicast MAC to the
    /// queue set that registered it, if that set is on the frame's VLAN; broadcast to
    /// every member of the VLAN; a group MAC to the VLAN's members that registered it.
    /// A unicast MAC the VLAN does not know goes to the bridge port if one is set (and
    /// is not the sender), else it is unreachable (0x11); group traffic reaches the
    /// bridge port too. A sender that is not a member of the frame's VLAN is refused
    /// (0x2E), the bridge port excepted. A VLAN's frames never reach a set that is not its member
    /// (other than the bridge port, which carries every VLAN to the outside LAN).
    fn send_layer2(
        &self,
        st: &State<Q, A, L, S, M>,
        sender: &Sender<'_, M, S, O>,
        outgoing: &Outgoing,
        route: EthRoute,
        report: &mut SigaReport,
    ) -> BufferOutcome {
        let vlan = IpKey::vlan(route.vlan);
        let on_vlan = |owner: SourceKey| st.table.members_key(vlan).any(|e| e.owner == owner);
        let bridge = st.table.members_key(IpKey::bridge()).next();
        // A set sends only on the VLANs it is a member of (the bridge port on any):
        // no frame enters a VLAN from outside it.
        if !on_vlan(sender.key) && bridge.is_none_or(|b| b.owner != sender.key) {
            return refuse(Reason::NotOnVlan);
        }
        let bridge = bridge.filter(|b| b.owner != sender.key);
        match MacCast::of(&route.dest) {
            MacCast::Unicast => {
                let target = st
                    .table
                    .unique(IpKey::mac(&route.dest))
                    .filter(|e| on_vlan(e.owner))
                    .or(bridge);
                let Some(entry) = target else {
                    return refuse(Reason::Unreachable);
                };
                match self.deliver_to(st, entry, outgoing, report) {
                    Ok(()) => BufferOutcome::Delivered {
                        frames: outgoing.frames() as u16,
                        bytes: outgoing.payload,
                    },
                    Err(reason) => refuse(reason),
                }
            }
            MacCast::Broadcast => {
                let members = st.table.members_key(vlan);
                let extra = bridge.filter(|b| !on_vlan(b.owner));
                self.fan_out(st, sender, members.chain(extra), outgoing, report)
            }
            MacCast::Multicast => {
                let members = st
                    .table
                    .members_key(IpKey::group_mac(&route.dest))
                    .filter(|e| on_vlan(e.owner));
                let extra = bridge.filter(|b| {
                    !(on_vlan(b.owner)
                        && st
                            .table
                            .members_key(IpKey::group_mac(&route.dest))
                            .any(|e| e.owner == b.owner))
                });
                self.fan_out(st, sender, members.chain(extra), outgoing, report)
            }
        }
    }

    /// Delivers `outgoing` to the queue set of `entry`: fills its next input buffer,
    /// signals it, raises its interrupt if the decision says so (after its inbound
    /// lock is released).
    fn deliver_to(
        &self,
        st: &State<Q, A, L, S, M>,
        entry: TargetEntry,
        outgoing: &Outgoing,
        report: &mut SigaReport,
    ) -> Result<(), Reason> {
        self.deliver_to_inlined(st, entry, outgoing, report)
    }

    /// [`deliver_to`](Self::deliver_to), always inlined: the unicast send's one
    /// delivery makes no call for it (group, layer-2 and pending deliveries call
    /// `deliver_to`, which holds one copy of it).
    #[inline(always)]
    fn deliver_to_inlined(
        &self,
        st: &State<Q, A, L, S, M>,
        entry: TargetEntry,
        outgoing: &Outgoing,
        report: &mut SigaReport,
    ) -> Result<(), Reason> {
        let tqc = self
            .controls
            .get(usize::from(entry.slot.index))
            .ok_or(Reason::TargetNotActive)?;
        let receiver = st
            .partition(entry.owner.lpar)
            .ok_or(Reason::TargetNotActive)?;
        if tqc.generation.load(Ordering::Relaxed) != entry.slot.generation {
            return Err(Reason::TargetNotActive);
        }
        if receiver.suspended {
            // Its memory is not to be touched (see `suspend`): target full, retryable.
            tqc.counters.refused_suspended();
            return Err(Reason::TargetFull);
        }
        let interrupt = {
            let mut inb = tqc.inbound.lock();
            lock_point!(self, Inbound);
            // Translated once for the fill and the signal, and kept for the epoch.
            let live = inb.live(&receiver.memory, st.epoch)?;
            if let Err(reason) = self.fill(&mut inb, &live, outgoing, &receiver.memory) {
                if reason == Reason::TargetFull {
                    tqc.counters.refused_full();
                }
                return Err(reason);
            }
            tqc.counters
                .received(outgoing.frames() as u64, outgoing.payload);
            let stamp = receiver.summary_since(inb.summary);
            let delay_ns = st.config.interrupt_delay_ns();
            self.signal(&inb, &live, tqc, stamp, delay_ns)
        };
        if let Some(t) = interrupt {
            let delivered = self.platform.raise_interrupt(t).delivered();
            tqc.counters.raised(delivered);
            if delivered {
                report.interrupts = report.interrupts.saturating_add(1);
            } else {
                report.interrupts_dropped = report.interrupts_dropped.saturating_add(1);
            }
        }
        Ok(())
    }

    /// Fills the receiver's next input buffer (under its inbound lock), `live` its
    /// translated structures ([`Inbound::live`]: the control is active).
    fn fill(
        &self,
        inb: &mut Inbound,
        live: &LiveInbound,
        out: &Outgoing,
        rx_memory: &M,
    ) -> Result<(), Reason> {
        let Inbound { ring, cursor, .. } = inb;
        let ring = ring.live_at(live.slsb);
        let n = *cursor;
        // Acquire pairs with the receiver's Release store of 0x41: its SBALE writes
        // (addresses, capacities) are visible.
        if ring.state(n, Ordering::Acquire) != SlsbState::INPUT_EMPTY.0 {
            return Err(Reason::TargetFull);
        }
        let Ok(rx) = ring.sbal(n, rx_memory) else {
            // The receiver's SBAL no longer translates: its buffer is unusable, as in
            // the `BufferInvalid` case below, without an element to say so in.
            ring.set_state(n, SlsbState::INPUT_ERROR.0, Ordering::Release);
            *cursor = next(n);
            return Err(Reason::TargetBufferInvalid);
        };
        match deliver(out, &rx, rx_memory) {
            Ok(_) => {
                // Release: the data and SBALEs are visible before the receiver can
                // see 0x82 (it loads the SLSB with Acquire).
                ring.set_state(n, SlsbState::INPUT_PRIMED.0, Ordering::Release);
                *cursor = next(n);
                Ok(())
            }
            Err(RxFault::TooLarge) => Err(Reason::TooLarge),
            Err(RxFault::BufferInvalid(element)) => {
                // The receiver's own buffer is bad: report it in that buffer and move
                // on; the sender may retry into the next one.
                let e14 = rx.load(Sbale::ERROR_INDEX_ELEMENT).sflags;
                rx.set_sflags(Sbale::ERROR_INDEX_ELEMENT, (e14 & 0xF0) | (element & 0x0F));
                rx.set_sflags(
                    Sbale::ERROR_REASON_ELEMENT,
                    Reason::AddressOutsideMemory.code(),
                );
                ring.set_state(n, SlsbState::INPUT_ERROR.0, Ordering::Release);
                *cursor = next(n);
                Err(Reason::TargetBufferInvalid)
            }
        }
    }

    /// Sets the receiver's completion vector low → high and makes the interrupt
    /// decision; returns the interrupt to raise, if any. `stamp` is the fallback's time
    /// stamp of the receiver's summary byte, shared by every queue set naming it.
    ///
    /// `live`: the receiver's structures ([`Inbound::live`], so the control is
    /// active); indicators that do not translate interrupt rather than leave the
    /// delivery unannounced.
    ///
    /// Always inlined: [`deliver_to`](Self::deliver_to) is its one caller, once a
    /// delivery.
    #[inline(always)]
    fn signal(
        &self,
        inb: &Inbound,
        live: &LiveInbound,
        tqc: &QueueControl<O>,
        stamp: &AtomicU64,
        delay_ns: u64,
    ) -> Option<InterruptTarget> {
        let target = inb.interrupt_target();
        let Some(ind) = live.indicators else {
            return Some(target);
        };
        let ring = inb.ring.live_at(live.slsb);
        let cursor = inb.cursor;
        let seen = initiative::signal(&ind.queue, &ind.middle, &ind.global, || {
            receiver_polling(&ring, cursor)
        });
        // A delivery to a polling receiver with its summary pending (streaming) is
        // decided without the clock: no read of it, no stamp.
        let decision = initiative::decide_without_clock(
            inb.interrupt_immediately,
            seen.summary_was_pending,
            seen.receiver_polling,
        )
        .unwrap_or_else(|| self.decide_now(inb.interrupt_immediately, seen, stamp, delay_ns));
        if !decision.raises() {
            tqc.counters.suppressed();
        }
        decision.raises().then_some(target)
    }

    /// The interrupt decision that depends on the time ([`signal`](Self::signal) when
    /// `decide_without_clock` has no answer): reads the clock, decides, and restamps
    /// the summary when the decision says so.
    #[inline(always)]
    fn decide_now(
        &self,
        interrupt_immediately: bool,
        seen: Signalled,
        stamp: &AtomicU64,
        delay_ns: u64,
    ) -> Decision {
        let now = self.platform.now_ns();
        let since = stamp.load(Ordering::Relaxed);
        let input = DecisionInput {
            interrupt_immediately,
            summary_was_pending: seen.summary_was_pending,
            pending_since_ns: since,
            now_ns: now,
            delay_ns,
            receiver_polling: seen.receiver_polling,
        };
        let mut decision = decide(&input);
        if decision.restamps(&input) {
            if seen.summary_was_pending {
                // The fallback: one per summary and delay. Another queue set of the
                // same summary (or the timer) that restamped first has fired it.
                if stamp
                    .compare_exchange(since, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
                {
                    decision = Decision::Suppress(SuppressReason::Pending);
                }
            } else {
                // This delivery moved the summary idle → pending: the delay runs from now.
                stamp.store(now, Ordering::Relaxed);
            }
        }
        decision
    }
}

/// The slot of `lpar`'s active queue set on `subchannel` and the partition's record (the
/// send uses it, no second lookup), or why a SIGA on it fails. Always inlined: the
/// SIGA is its one caller, and a call returned the pair through the stack.
#[inline(always)]
fn issuer_slot<const Q: usize, const A: usize, const L: usize, const S: usize, M: GuestMemory>(
    st: &State<Q, A, L, S, M>,
    lpar: LparId,
    subchannel: u16,
) -> Result<(SlotRef, &PartitionRecord<M, S>), SigaError> {
    let issuer = st.partition(lpar).ok_or(SigaError::NotIqdio)?;
    match issuer.subchannel(subchannel) {
        None => Err(SigaError::NotIqdio),
        Some(Subchannel::Inactive) => Err(SigaError::QueuesNotActive),
        Some(Subchannel::Active(_)) if issuer.suspended => Err(SigaError::Suspended),
        Some(Subchannel::Active(slot)) => Ok((slot, issuer)),
    }
}

/// A send hint: an issuer (`LPAR.subchannel`) and the index of the queue control its
/// last SIGA found, packed in a word (bits 0-15 the index, 32-47 the subchannel, 48-55
/// the LPAR, bit 56 set), so that a hint is read and written whole.
struct SendHint;

impl SendHint {
    /// The issuer's half of a hint (its upper 32 bits).
    #[inline(always)]
    fn key(lpar: LparId, subchannel: u16) -> u32 {
        1 << 24 | u32::from(lpar) << 16 | u32::from(subchannel)
    }

    /// The hint for `lpar.subchannel` at queue control `index`.
    #[inline(always)]
    fn pack(lpar: LparId, subchannel: u16, index: u16) -> u64 {
        u64::from(Self::key(lpar, subchannel)) << 32 | u64::from(index)
    }

    /// The queue control index `hint` gives, if it is a hint for `lpar.subchannel`.
    #[inline(always)]
    fn index(hint: u64, lpar: LparId, subchannel: u16) -> Option<usize> {
        ((hint >> 32) as u32 == Self::key(lpar, subchannel)).then_some(hint as u16 as usize)
    }
}

/// Which of the `Q` queue controls (a power of two) keeps `lpar.subchannel`'s send
/// hint: distinct for up to `Q` consecutive LPARs of one subchannel number (31 is odd),
/// and a collision only sends a SIGA the counted way.
#[inline(always)]
fn hint_slot<const Q: usize>(lpar: LparId, subchannel: u16) -> usize {
    (usize::from(lpar) * 31 + usize::from(subchannel)) & (Q - 1)
}

/// The bits of a SIGA queue mask that name no queue of a set that established
/// `queues` output queues (queue n is bit `1 << (31 - n)`, so the established ones are
/// the top `queues` bits): shifted out, the rest is left (and moved up, which does not
/// change whether any is).
#[inline]
fn unestablished(queue_mask: u32, queues: u32) -> u32 {
    (u64::from(queue_mask) << queues.min(32)) as u32
}

/// Whether the receiver is polling: its newest consumed input buffer reads 0x81.
///
/// `cursor` is the next buffer the fabric will fill, so the buffers behind it that
/// still read 0x82 are the receiver's backlog; the first one behind those is the newest
/// it consumed. The walk is bounded by the ring and, for a polling receiver that keeps
/// up, ends at the first step.
#[inline]
fn receiver_polling(ring: &LiveRing<'_>, cursor: u8) -> bool {
    // Start at the buffer just filled: a receiver polling on another core may have
    // taken it already (0x81 on it, 0x80 on the one before).
    let mut n = cursor;
    for _ in 0..QUEUE_BUFFERS {
        n = prev(n);
        match ring.state(n, Ordering::Relaxed) {
            s if s == SlsbState::INPUT_PRIMED.0 => continue,
            s => return s == SlsbState::INPUT_ACKED.0,
        }
    }
    false
}

fn refuse(reason: Reason) -> BufferOutcome {
    BufferOutcome::Refused(Fault { reason, element: 0 })
}

fn is_unicast(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()),
        IpAddr::V6(v6) => {
            !(v6.is_unspecified() || v6.is_multicast() || v6.to_ipv4_mapped().is_some())
        }
    }
}

/// One structure of a queue set in guest memory (`start`, `len`) and its role.
#[derive(Clone, Copy, Debug)]
struct Extent {
    start: u64,
    len: u64,
    field: QueueField,
}

impl Extent {
    const EMPTY: Self = Self {
        start: 0,
        len: 0,
        field: QueueField::OutputSlsb,
    };

    fn end(&self) -> u64 {
        // Each structure translated, so it does not wrap (`MemoryExt::slice`).
        self.start.saturating_add(self.len)
    }
}

/// Sorts extents by start address: an insertion sort with no panic path (core's sorts
/// keep one for inconsistent orderings, and establish is a partition's to drive).
/// Extents come in ring order, so the input is two nearly sorted runs interleaved: a
/// few thousand moves for a queue set's 261 extents.
fn sort_by_start(v: &mut [Extent]) {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 {
            // `get_mut` and a slice pattern: no index that could fail.
            let Some([a, b]) = v.get_mut(j - 1..=j) else {
                break;
            };
            if a.start <= b.start {
                break;
            }
            core::mem::swap(a, b);
            j -= 1;
        }
    }
}

/// Structures of one queue set at most: 128 SBALs per queue (up to four output queues
/// and the input queue), an SLSB per queue, 3 indicator bytes.
const EXTENTS: usize = (MAX_OUTPUT_QUEUES + 2) * (QUEUE_BUFFERS + 1) + 3;

/// A queue set's structures in guest memory, as the fabric keeps them.
struct Layout<const O: usize> {
    /// Output queues established: `outputs[..queues]`.
    queues: u8,
    outputs: [QueueRing; O],
    input: QueueRing,
    /// The completion queue, if any.
    cq: Option<QueueRing>,
    indicators: IndicatorBytes,
}

/// The field naming SBAL `n` of output queue `q`.
fn output_sbal_field(q: usize, n: u8) -> QueueField {
    match q {
        0 => QueueField::OutputSbal(n),
        _ => QueueField::OutputQueueSbal {
            queue: q as u8,
            buffer: n,
        },
    }
}

/// The field naming output queue `q`'s SLSB.
fn output_slsb_field(q: usize) -> QueueField {
    match q {
        0 => QueueField::OutputSlsb,
        _ => QueueField::OutputQueueSlsb(q as u8),
    }
}

impl<const O: usize> Layout<O> {
    /// The layout of `params` in `memory`: at most `O` output queues (0xF012), then,
    /// structure by structure (output queues, input queue, indicator bytes), each
    /// wholly inside the memory (0xF005) and each SBAL 256-aligned in guest memory
    /// (0xF006) and host memory (0xF010), then each queue's SBALs within 1 TiB of its
    /// lowest (0xF011).
    fn new<M: GuestMemory>(params: &QueueSetParams, memory: &M) -> Result<Self, RegistrationError> {
        let queues = params.output_queues();
        if queues > O {
            return Err(RegistrationError::OutputQueues);
        }
        if params.layer2 && params.completion_queue.is_some() {
            return Err(RegistrationError::WrongLayer);
        }
        let sbals = |addrs: &[u64; QUEUE_BUFFERS], field: &dyn Fn(u8) -> QueueField| {
            for (i, a) in addrs.iter().enumerate() {
                memory.sbal(*a).map_err(|e| match e {
                    SbalError::Misaligned => RegistrationError::Misaligned(field(i as u8)),
                    SbalError::OutsideMemory => RegistrationError::OutsideMemory(field(i as u8)),
                    SbalError::HostMisaligned => RegistrationError::MisalignedWindow,
                })?;
            }
            Ok(())
        };
        let bytes = |addr: u64, len: usize, field: QueueField| {
            memory
                .slice(addr, len as u64)
                .map(|_| ())
                .ok_or(RegistrationError::OutsideMemory(field))
        };
        for q in 0..queues {
            if let Some((addrs, slsb)) = params.output(q) {
                sbals(addrs, &|n| output_sbal_field(q, n))?;
                bytes(slsb, SLSB_LEN, output_slsb_field(q))?;
            }
        }
        sbals(&params.input_sbals, &QueueField::InputSbal)?;
        bytes(params.input_slsb, SLSB_LEN, QueueField::InputSlsb)?;
        if let Some(cq) = &params.completion_queue {
            sbals(&cq.sbals, &QueueField::CompletionSbal)?;
            bytes(cq.slsb, SLSB_LEN, QueueField::CompletionSlsb)?;
        }
        bytes(params.queue_indicator, 1, QueueField::QueueIndicator)?;
        bytes(params.middle_indicator, 1, QueueField::MiddleIndicator)?;
        bytes(params.global_indicator, 1, QueueField::GlobalIndicator)?;
        let ring = |addrs: &[u64; QUEUE_BUFFERS], slsb, field: &dyn Fn(u8) -> QueueField| {
            QueueRing::new(addrs, slsb).map_err(|n| RegistrationError::SbalSpread(field(n)))
        };
        let mut outputs = [QueueRing::ZERO; O];
        for (q, o) in outputs.iter_mut().enumerate().take(queues) {
            if let Some((addrs, slsb)) = params.output(q) {
                *o = ring(addrs, slsb, &|n| output_sbal_field(q, n))?;
            }
        }
        let input = ring(
            &params.input_sbals,
            params.input_slsb,
            &QueueField::InputSbal,
        )?;
        let cq = match &params.completion_queue {
            Some(cq) => Some(ring(&cq.sbals, cq.slsb, &QueueField::CompletionSbal)?),
            None => None,
        };
        Ok(Self {
            queues: queues as u8,
            outputs,
            input,
            cq,
            indicators: IndicatorBytes {
                queue: params.queue_indicator,
                middle: params.middle_indicator,
                global: params.global_indicator,
            },
        })
    }
}

/// Calls `f` with each structure of a queue set: its output queues `outs`, its input
/// queue `inp`, its completion queue `cq`, its indicator bytes `ind`.
fn extents(
    outs: &[QueueRing],
    inp: &QueueRing,
    cq: Option<&QueueRing>,
    ind: &IndicatorBytes,
    mut f: impl FnMut(Extent),
) {
    let e = |start: u64, len: usize, field: QueueField| Extent {
        start,
        len: len as u64,
        field,
    };
    for (q, out) in outs.iter().enumerate() {
        for (i, a) in out.sbal_addrs().enumerate() {
            f(e(a, SBAL_SIZE, output_sbal_field(q, i as u8)));
        }
        f(e(out.slsb, SLSB_LEN, output_slsb_field(q)));
    }
    for (i, a) in inp.sbal_addrs().enumerate() {
        f(e(a, SBAL_SIZE, QueueField::InputSbal(i as u8)));
    }
    f(e(inp.slsb, SLSB_LEN, QueueField::InputSlsb));
    if let Some(cq) = cq {
        for (i, a) in cq.sbal_addrs().enumerate() {
            f(e(a, SBAL_SIZE, QueueField::CompletionSbal(i as u8)));
        }
        f(e(cq.slsb, SLSB_LEN, QueueField::CompletionSlsb));
    }
    f(e(ind.queue, 1, QueueField::QueueIndicator));
    f(e(ind.middle, 1, QueueField::MiddleIndicator));
    f(e(ind.global, 1, QueueField::GlobalIndicator));
}

/// Checks that every structure of an established queue set translates in `memory`
/// (a new memory for the partition): wholly inside it (0xF005), SBALs 256-aligned in
/// host memory (0xF010, the hypervisor's error; in guest memory they are, checked by
/// [`Layout::new`] at establish).
fn check_structures<M: GuestMemory>(
    memory: &M,
    outs: &[QueueRing],
    inp: &QueueRing,
    cq: Option<&QueueRing>,
    ind: &IndicatorBytes,
) -> Result<(), RegistrationError> {
    let sbals = |ring: &QueueRing, field: &dyn Fn(u8) -> QueueField| {
        for (i, a) in ring.sbal_addrs().enumerate() {
            memory.sbal(a).map_err(|e| match e {
                SbalError::Misaligned => RegistrationError::Misaligned(field(i as u8)),
                SbalError::OutsideMemory => RegistrationError::OutsideMemory(field(i as u8)),
                SbalError::HostMisaligned => RegistrationError::MisalignedWindow,
            })?;
        }
        Ok(())
    };
    let bytes = |addr: u64, len: usize, field: QueueField| {
        memory
            .slice(addr, len as u64)
            .map(|_| ())
            .ok_or(RegistrationError::OutsideMemory(field))
    };
    for (q, out) in outs.iter().enumerate() {
        sbals(out, &|n| output_sbal_field(q, n))?;
        bytes(out.slsb, SLSB_LEN, output_slsb_field(q))?;
    }
    sbals(inp, &QueueField::InputSbal)?;
    bytes(inp.slsb, SLSB_LEN, QueueField::InputSlsb)?;
    if let Some(cq) = cq {
        sbals(cq, &QueueField::CompletionSbal)?;
        bytes(cq.slsb, SLSB_LEN, QueueField::CompletionSlsb)?;
    }
    bytes(ind.queue, 1, QueueField::QueueIndicator)?;
    bytes(ind.middle, 1, QueueField::MiddleIndicator)?;
    bytes(ind.global, 1, QueueField::GlobalIndicator)
}

impl<
    P: Platform,
    const Q: usize,
    const A: usize,
    const L: usize,
    const S: usize,
    const W: usize,
    const O: usize,
> Fabric<P, Q, A, L, S, Windows<W>, O>
{
    /// Makes a partition known with its memory windows (at most `W`), the default
    /// [`GuestMemory`]. Refused, as the embedder's errors: a window empty, wrapping,
    /// or more than `W` (0xF003); windows overlapping one another or another
    /// partition's, in host memory (0xF004); a window whose host address is not
    /// congruent to its guest address modulo 256 (0xF010, [`Window::new`]). Then as
    /// [`add_partition_memory`](Self::add_partition_memory).
    pub fn add_partition(&self, lpar: LparId, windows: &[Window]) -> Result<(), RegistrationError> {
        self.add_partition_memory(lpar, Windows::new(windows)?)
    }
}

/// A partition's SIGA entry: the fabric bound to the issuing LPAR.
#[derive(Clone, Copy)]
pub struct Port<
    'f,
    P: Platform,
    const Q: usize,
    const A: usize,
    const L: usize = MAX_PARTITIONS,
    const S: usize = MAX_SUBCHANNELS,
    M: GuestMemory = Windows,
    const O: usize = MAX_OUTPUT_QUEUES,
> {
    fabric: &'f Fabric<P, Q, A, L, S, M, O>,
    lpar: LparId,
}

impl<
    P: Platform,
    const Q: usize,
    const A: usize,
    const L: usize,
    const S: usize,
    M: GuestMemory,
    const O: usize,
> Port<'_, P, Q, A, L, S, M, O>
{
    /// The issuing partition.
    pub const fn lpar(&self) -> LparId {
        self.lpar
    }
}

/// The SIGA instruction as a partition sees it: it returns what the instruction returns
/// to the program, which is what crosses a hypervisor's trap (the condition code and
/// the busy bit; each buffer's outcome is in its SLSB byte and SBAL). The fabric's
/// [`Port`] implements it as a direct call; a partition under a hypervisor implements
/// it with its trap (the repository's partition program with HVC), a test with a fake.
pub trait Siga {
    /// Issues SIGA `function` for `subchannel` with output-queue mask `queue_mask`.
    fn siga(&self, subchannel: u16, function: SigaFunction, queue_mask: u32) -> SigaStatus;

    /// Issues SIGA WRITEQ ([`SigaFunction::WriteQ`]) with the QAOB at guest address
    /// `qaob`. An implementation that cannot carry the QAOB address does not offer the
    /// completion queue: the default answers cc1, as the fabric does for WRITEQ on a
    /// queue set without one.
    fn siga_writeq(&self, subchannel: u16, queue_mask: u32, qaob: u64) -> SigaStatus {
        let _ = (subchannel, queue_mask, qaob);
        SigaStatus::from(&Err::<SigaReport, _>(SigaError::InvalidFunction))
    }
}

impl<
    P: Platform,
    const Q: usize,
    const A: usize,
    const L: usize,
    const S: usize,
    M: GuestMemory,
    const O: usize,
> Siga for Port<'_, P, Q, A, L, S, M, O>
{
    fn siga(&self, subchannel: u16, function: SigaFunction, queue_mask: u32) -> SigaStatus {
        SigaStatus::from(
            &self
                .fabric
                .siga_function(self.lpar, subchannel, function, queue_mask),
        )
    }

    fn siga_writeq(&self, subchannel: u16, queue_mask: u32, qaob: u64) -> SigaStatus {
        SigaStatus::from(
            &self
                .fabric
                .siga_writeq(self.lpar, subchannel, queue_mask, qaob),
        )
    }
}

// After the `lock_point!` macro, which it uses.
mod completion;

#[cfg(test)]
mod tests {
    use super::*;

    /// `unestablished` finds a bit beyond the established queues exactly when the
    /// mask of those queues (the top `queues` bits) does not cover the mask.
    #[test]
    fn unestablished_matches_the_established_mask() {
        let mut masks: Vec<u32> = (0..32).map(|b| 1u32 << b).collect();
        masks.extend([
            0,
            u32::MAX,
            0xF000_0000,
            0xC000_0000,
            0x8000_0001,
            0x1234_5678,
        ]);
        for queues in 0..=40u32 {
            let established = u32::MAX
                .checked_shl(32u32.saturating_sub(queues))
                .unwrap_or(0);
            let established = if queues >= 32 { u32::MAX } else { established };
            for &m in &masks {
                assert_eq!(
                    unestablished(m, queues) != 0,
                    m & !established != 0,
                    "mask {m:#x}, {queues} queues"
                );
            }
        }
    }

    /// The stored settings give back every MFS they were made from, and the default's
    /// are zero (the all-zero fabric).
    #[test]
    fn stored_config_keeps_each_mfs() {
        for mfs in [Mfs::K16, Mfs::K24, Mfs::K40, Mfs::K64] {
            let c = FabricConfig {
                mfs,
                ..FabricConfig::DEFAULT
            };
            assert_eq!(StoredConfig::new(&c).mfs(), mfs);
            assert_eq!(StoredConfig::new(&c).config(c.hash_seed).mfs, mfs);
        }
        assert_eq!(StoredConfig::new(&FabricConfig::DEFAULT).mfs, 0);
    }

    #[test]
    fn sort_by_start_sorts_what_core_sorts() {
        // Interleaved ascending runs (as a queue set's extents come), reversed input,
        // duplicates, and pseudo-random starts.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut random = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % 4096
        };
        let inputs: [Vec<u64>; 4] = [
            (0..EXTENTS)
                .map(|i| (i as u64 % 2) * 0x8000 + (i as u64 / 2) * 256)
                .collect(),
            (0..EXTENTS as u64).rev().collect(),
            vec![7, 3, 7, 0, 3, 7],
            (0..EXTENTS).map(|_| random()).collect(),
        ];
        for starts in inputs {
            let mut v: Vec<Extent> = starts
                .iter()
                .enumerate()
                .map(|(i, &start)| Extent {
                    start,
                    len: 1,
                    field: QueueField::OutputSbal(i as u8),
                })
                .collect();
            sort_by_start(&mut v);
            let mut want = starts.clone();
            want.sort_unstable();
            let got: Vec<u64> = v.iter().map(|e| e.start).collect();
            assert_eq!(got, want);
        }
        sort_by_start(&mut []);
    }
}
