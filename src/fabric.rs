//! The fabric: partitions, queue-set registration and deregistration, and SIGA.

use core::net::IpAddr;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::error::{QueueField, RegistrationError, SigaError, SigaStatus};
use crate::guest::{GuestMemory, MemoryExt, Sbal, SbalError, Window, Windows};
use crate::initiative::{self, Decision, DecisionInput, SuppressReason, decide};
use crate::platform::{CallContext, InterruptTarget, Platform};
use crate::qdio::{Mfs, QUEUE_BUFFERS, Reason, SBAL_SIZE, SLSB_LEN, Sbale, SlsbState};
use crate::queue::{
    CounterSnapshot, Inbound, IndicatorBytes, LiveRing, Outbound, QueueControl, QueueRing, next,
    prev,
};
use crate::sync::{ReadGuard, TableLock, WriteGuard};
use crate::table::{HashSeed, LparId, QueueTable, SlotRef, SourceKey};
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
    mfs_kib: u32,
    interrupt_delay_ns: u64,
    queue_sets_per_partition: u8,
    addresses_per_partition: u16,
}

impl StoredConfig {
    const D: FabricConfig = FabricConfig::DEFAULT;

    const fn new(c: &FabricConfig) -> Self {
        Self {
            mfs_kib: c.mfs.kib() ^ Self::D.mfs.kib(),
            interrupt_delay_ns: c.interrupt_delay_ns ^ Self::D.interrupt_delay_ns,
            queue_sets_per_partition: c.queue_sets_per_partition ^ Self::D.queue_sets_per_partition,
            addresses_per_partition: c.addresses_per_partition ^ Self::D.addresses_per_partition,
        }
    }

    fn mfs(&self) -> Mfs {
        // Every stored value came from an `Mfs`: the fallback is never taken.
        Mfs::from_kib(self.mfs_kib ^ Self::D.mfs.kib()).unwrap_or(Self::D.mfs)
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
}

impl SigaFunction {
    /// The function code.
    pub const fn code(self) -> u32 {
        match self {
            Self::Write => 0,
            Self::WriteMultiple => 3,
        }
    }

    /// The function for a code.
    pub const fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(Self::Write),
            3 => Some(Self::WriteMultiple),
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
    pub interrupts: u8,
    /// Interrupts raised for receivers that the platform dropped
    /// ([`InterruptDelivery::Dropped`](crate::InterruptDelivery::Dropped)).
    pub interrupts_dropped: u8,
}

/// The addresses a partition gives when it establishes a queue set for a subchannel
/// (guest addresses in its own memory).
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
///   [`Windows`] of at most [`MAX_WINDOWS`](crate::MAX_WINDOWS) windows.
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
> {
    platform: P,
    state: TableLock<State<Q, A, L, S, M>>,
    controls: [QueueControl; Q],
}

/// Result of one output buffer's send.
enum BufferOutcome {
    Delivered {
        frames: u16,
        bytes: u64,
        /// The interrupt to raise, and the index of the receiver's queue control
        /// (whose counters learn whether it was posted).
        interrupt: Option<(InterruptTarget, u16)>,
    },
    Refused(Fault),
}

impl<P: Platform, const Q: usize, const A: usize, const L: usize, const S: usize, M: GuestMemory>
    Fabric<P, Q, A, L, S, M>
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
        // and reader counts), `QueueControl` (atomics, `active: false`, plain
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
            // No send holds these: sends hold the table lock shared, we hold it
            // exclusive.
            let out = qc.outbound.lock();
            lock_point!(self, Outbound);
            let inb = qc.inbound.lock();
            lock_point!(self, Inbound);
            if let (Some(o), Some((i, d))) = (out.ring(), inb.ring()) {
                check_structures(&memory, o, i, d)?;
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
    /// In this order: unknown partition (0xF002), an address outside memory or
    /// misaligned (0xF005, 0xF006), an SBAL that the partition's memory translates to
    /// a host address not 256-aligned (0xF010, the hypervisor's error: it cannot
    /// happen with [`Windows`], which refuse such a window when the partition is
    /// added), the subchannel active already (0xE005), the
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
        let (out_ring, in_ring, indicators) = queue_set(params);
        check_structures(&p.memory, &out_ring, &in_ring, &indicators)?;
        if matches!(p.subchannel(subchannel), Some(Subchannel::Active(_))) {
            return Err(RegistrationError::DuplicateFound);
        }
        if p.active().count() >= st.config.queue_set_limit::<S>() {
            return Err(RegistrationError::SubchannelLimit);
        }
        self.check_overlaps(p, &out_ring, &in_ring, &indicators)?;
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
        // No send can hold these locks: sends hold the table lock shared.
        {
            let mut out = qc.outbound.lock();
            lock_point!(self, Outbound);
            out.ring = out_ring;
            out.active = true;
            out.cursor = 0;
        }
        {
            let mut inb = qc.inbound.lock();
            lock_point!(self, Inbound);
            *inb = Inbound {
                active: true,
                ring: in_ring,
                cursor: 0,
                indicators,
                summary,
                interrupt_immediately: params.interrupt_immediately,
                cookie: params.interrupt_cookie,
                owner: key,
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
        let key = SourceKey { lpar, subchannel };
        let mut st = self.update()?;
        let st = &mut *st;
        if st.table.has_target(&ip) {
            return Err(RegistrationError::DuplicateFound);
        }
        // A queue set in the source table has its partition's record.
        let quota = usize::from(st.config.addresses_per_partition());
        let (Some(_), Some(p)) = (st.table.source(&key), st.partition(lpar)) else {
            return Err(RegistrationError::SourceNotRegistered);
        };
        if p.addresses >= quota {
            return Err(RegistrationError::AddressQuota);
        }
        st.table.add_target(ip, key)?;
        if let Some(p) = st.partition_mut(lpar) {
            p.addresses += 1;
        }
        Ok(())
    }

    /// Removes one address of `lpar`'s queue set on `subchannel`.
    pub fn deregister_address(
        &self,
        lpar: LparId,
        subchannel: u16,
        ip: IpAddr,
    ) -> Result<(), RegistrationError> {
        let mut st = self.update()?;
        let st = &mut *st;
        st.table
            .remove_target(&ip, SourceKey { lpar, subchannel })?;
        if let Some(p) = st.partition_mut(lpar) {
            p.addresses = p.addresses.saturating_sub(1);
        }
        Ok(())
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
        out: &QueueRing,
        inp: &QueueRing,
        ind: &IndicatorBytes,
    ) -> Result<(), RegistrationError> {
        let mut new = [Extent::EMPTY; EXTENTS];
        let mut n = 0;
        extents(out, inp, ind, |e| {
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
            // No send holds these: sends hold the table lock shared, and we hold it
            // exclusive.
            let outbound = qc.outbound.lock();
            lock_point!(self, Outbound);
            let inbound = qc.inbound.lock();
            lock_point!(self, Inbound);
            let (Some(o), Some((i, d))) = (outbound.ring(), inbound.ring()) else {
                continue;
            };
            extents(o, i, d, |old| {
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
        Ok(self.controls[usize::from(handle.slot.index)]
            .counters
            .snapshot())
    }

    /// The counters of `lpar`'s queue set on `subchannel`, if it is established.
    /// From interrupt context it does not wait: `None` if an update holds the lock.
    pub fn counters_of(&self, lpar: LparId, subchannel: u16) -> Option<CounterSnapshot> {
        let st = self.view()?;
        lock_point!(self, TableShared);
        let slot = st.table.source(&SourceKey { lpar, subchannel })?;
        Some(self.controls[usize::from(slot.index)].counters.snapshot())
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
    /// that has stayed pending longer than the delay. An embedding calls this from a
    /// periodic timer. Returns the interrupts raised.
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
        let st = self.state.write_then(|| {
            lock_point!(self, TableExclusiveWaiting);
        });
        lock_point!(self, TableExclusive);
        Ok(st)
    }

    /// A port through which partition `lpar` issues SIGA (the partition's identity
    /// comes from the embedding, never from the partition's own input).
    pub const fn port(&self, lpar: LparId) -> Port<'_, P, Q, A, L, S, M> {
        Port { fabric: self, lpar }
    }

    /// SIGA with a raw function code, as a hypervisor decodes it from the
    /// instruction's registers.
    pub fn siga(
        &self,
        lpar: LparId,
        subchannel: u16,
        function: u32,
        queue_mask: u32,
    ) -> Result<SigaReport, SigaError> {
        let f = SigaFunction::from_code(function).ok_or(SigaError::InvalidFunction)?;
        self.siga_function(lpar, subchannel, f, queue_mask)
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

    /// The send, steps c to p of the patent: check the IQDIO indicator, take the table
    /// lock shared, find the issuer's queue control, take its outbound lock, and for
    /// each primed buffer from the cursor: read the destination, look the target up,
    /// take its inbound lock, fill an empty receive buffer, set the receive SLSB 0x82
    /// and then the send SLSB 0xA1, set the completion vector low → high, and decide
    /// on the interrupt. Synchronous: every buffer handled reads 0xA1 or 0xAF on return.
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
        if !self.may_wait() {
            return Err(SigaError::InterruptContext);
        }
        let mut st = self.state.read_in(usize::from(lpar));
        lock_point!(self, TableShared);
        let slot = issuer_slot(&st, lpar, subchannel)?;
        if queue_mask != QUEUE_0_MASK {
            return Err(SigaError::InvalidQueueMask);
        }
        // A slot's index is below Q by construction; `get` keeps a panic path out of SIGA.
        let Some(qc) = self.controls.get(usize::from(slot.index)) else {
            return Err(SigaError::QueuesNotActive);
        };
        let Some(mut out) = qc.outbound.try_lock() else {
            qc.counters.busy();
            return Err(SigaError::Busy);
        };
        lock_point!(self, Outbound);
        let limit = match function {
            SigaFunction::Write => 1,
            SigaFunction::WriteMultiple => QUEUE_BUFFERS,
        };
        let mut report = SigaReport::default();
        for k in 0..limit {
            if k > 0 && st.writer_waiting() {
                // Step out of a waiting update's way (outbound first: lock order), and
                // come back once it is done.
                drop(out);
                drop(st);
                st = self.state.read_in(usize::from(lpar));
                lock_point!(self, TableShared);
                if issuer_slot(&st, lpar, subchannel) != Ok(slot) {
                    // Deregistered (and perhaps re-established) meanwhile.
                    break;
                }
                // Another SIGA on this queue may hold it now: it ends or steps out too.
                out = qc.outbound.lock();
                lock_point!(self, Outbound);
            }
            let Some(issuer) = st.partition(lpar) else {
                break;
            };
            if !self.send_next(&st, &issuer.memory, &mut out, qc, &mut report) {
                break;
            }
        }
        Ok(report)
    }

    /// Sends the output buffer at the cursor if it is primed; false if it is not (or
    /// the queue is gone).
    fn send_next(
        &self,
        st: &State<Q, A, L, S, M>,
        issuer: &M,
        out: &mut Outbound,
        qc: &QueueControl,
        report: &mut SigaReport,
    ) -> bool {
        // Borrow the ring in place (it is 1 KiB: no copy on the send path).
        let Outbound {
            active,
            ring,
            cursor,
        } = out;
        if !*active {
            return false;
        }
        // Translated once per buffer: the hypervisor may have remapped the memory
        // since the last call (never during one: it waits for the table lock). An
        // SLSB it unmapped leaves nothing to send.
        let Some(ring) = ring.live(issuer) else {
            return false;
        };
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
        let outcome = self.send_buffer(st, issuer, &sbal);
        report.buffers += 1;
        match outcome {
            BufferOutcome::Delivered {
                frames,
                bytes,
                interrupt,
            } => {
                // Release: our reads of the buffer happen before the program
                // reuses it.
                ring.set_state(n, SlsbState::OUTPUT_EMPTY.0, Ordering::Release);
                qc.counters.sent(u64::from(frames), bytes);
                report.delivered += 1;
                report.frames += frames;
                report.bytes += bytes;
                if let Some((t, index)) = interrupt {
                    let delivered = self.platform.raise_interrupt(t).delivered();
                    if let Some(tqc) = self.controls.get(usize::from(index)) {
                        tqc.counters.raised(delivered);
                    }
                    if delivered {
                        report.interrupts += 1;
                    } else {
                        report.interrupts_dropped += 1;
                    }
                }
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

    /// One output buffer: parse, look up, deliver, signal.
    fn send_buffer(&self, st: &State<Q, A, L, S, M>, issuer: &M, sbal: &Sbal) -> BufferOutcome {
        let mut outgoing = Outgoing::empty();
        if let Err(f) = parse_outgoing_into(sbal, issuer, st.config.mfs(), &mut outgoing) {
            return BufferOutcome::Refused(f);
        }
        let Some(entry) = st.table.target(&outgoing.dest) else {
            return refuse(Reason::Unreachable);
        };
        let Some(tqc) = self.controls.get(usize::from(entry.slot.index)) else {
            return refuse(Reason::TargetNotActive);
        };
        let Some(receiver) = st.partition(entry.owner.lpar) else {
            return refuse(Reason::TargetNotActive);
        };
        if tqc.generation.load(Ordering::Relaxed) != entry.slot.generation {
            return refuse(Reason::TargetNotActive);
        }
        if receiver.suspended {
            // Its memory is not to be touched (see `suspend`): target full, retryable.
            tqc.counters.refused_suspended();
            return refuse(Reason::TargetFull);
        }
        let mut inb = tqc.inbound.lock();
        lock_point!(self, Inbound);
        match self.fill(&mut inb, &outgoing, &receiver.memory) {
            Ok(()) => {}
            Err(reason) => {
                if reason == Reason::TargetFull {
                    tqc.counters.refused_full();
                }
                return refuse(reason);
            }
        }
        tqc.counters
            .received(outgoing.frames() as u64, outgoing.payload);
        let stamp = receiver.summary_since(inb.summary);
        let delay_ns = st.config.interrupt_delay_ns();
        let interrupt = self
            .signal(&mut inb, tqc, stamp, &receiver.memory, delay_ns)
            .map(|t| (t, entry.slot.index));
        BufferOutcome::Delivered {
            frames: outgoing.frames() as u16,
            bytes: outgoing.payload,
            interrupt,
        }
    }

    /// Fills the receiver's next input buffer (under its inbound lock).
    fn fill(&self, inb: &mut Inbound, out: &Outgoing, rx_memory: &M) -> Result<(), Reason> {
        let Inbound {
            active,
            ring,
            cursor,
            ..
        } = inb;
        if !*active {
            return Err(Reason::TargetNotActive);
        }
        // Translated per buffer, as the sender's (see `send_next`).
        let ring = ring.live(rx_memory).ok_or(Reason::TargetBufferInvalid)?;
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
    fn signal(
        &self,
        inb: &mut Inbound,
        tqc: &QueueControl,
        stamp: &AtomicU64,
        rx_memory: &M,
        delay_ns: u64,
    ) -> Option<InterruptTarget> {
        let (ring, ind) = inb.ring()?;
        let target = InterruptTarget {
            lpar: inb.owner.lpar,
            subchannel: inb.owner.subchannel,
            cookie: inb.cookie,
        };
        // Both were translated in `fill` a moment ago, under the same locks; should
        // either fail now, interrupt rather than leave the delivery unannounced.
        let (Some(ring), Some(ind)) = (ring.live(rx_memory), ind.live(rx_memory)) else {
            return Some(target);
        };
        let cursor = inb.cursor;
        let seen = initiative::signal(&ind.queue, &ind.middle, &ind.global, || {
            receiver_polling(&ring, cursor)
        });
        let now = self.platform.now_ns();
        let since = stamp.load(Ordering::Relaxed);
        let input = DecisionInput {
            interrupt_immediately: inb.interrupt_immediately,
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
        if !decision.raises() {
            tqc.counters.suppressed();
        }
        decision.raises().then_some(target)
    }
}

/// The slot of `lpar`'s active queue set on `subchannel`, or why a SIGA on it fails.
fn issuer_slot<const Q: usize, const A: usize, const L: usize, const S: usize, M: GuestMemory>(
    st: &State<Q, A, L, S, M>,
    lpar: LparId,
    subchannel: u16,
) -> Result<SlotRef, SigaError> {
    let issuer = st.partition(lpar).ok_or(SigaError::NotIqdio)?;
    match issuer.subchannel(subchannel) {
        None => Err(SigaError::NotIqdio),
        Some(Subchannel::Inactive) => Err(SigaError::QueuesNotActive),
        Some(Subchannel::Active(_)) if issuer.suspended => Err(SigaError::Suspended),
        Some(Subchannel::Active(slot)) => Ok(slot),
    }
}

/// Whether the receiver is polling: its newest consumed input buffer reads 0x81.
///
/// `cursor` is the next buffer the fabric will fill, so the buffers behind it that
/// still read 0x82 are the receiver's backlog; the first one behind those is the newest
/// it consumed. The walk is bounded by the ring and, for a polling receiver that keeps
/// up, ends at the first step.
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

/// Structures of one queue set: 128 SBALs each way, 2 SLSBs, 3 indicator bytes.
const EXTENTS: usize = 2 * QUEUE_BUFFERS + 5;

/// Calls `f` with each structure of a queue set.
fn extents(out: &QueueRing, inp: &QueueRing, ind: &IndicatorBytes, mut f: impl FnMut(Extent)) {
    let e = |start: u64, len: usize, field: QueueField| Extent {
        start,
        len: len as u64,
        field,
    };
    for (i, (o, n)) in out.sbals.iter().zip(inp.sbals.iter()).enumerate() {
        f(e(*o, SBAL_SIZE, QueueField::OutputSbal(i as u8)));
        f(e(*n, SBAL_SIZE, QueueField::InputSbal(i as u8)));
    }
    f(e(out.slsb, SLSB_LEN, QueueField::OutputSlsb));
    f(e(inp.slsb, SLSB_LEN, QueueField::InputSlsb));
    f(e(ind.queue, 1, QueueField::QueueIndicator));
    f(e(ind.middle, 1, QueueField::MiddleIndicator));
    f(e(ind.global, 1, QueueField::GlobalIndicator));
}

/// A queue set's guest addresses as the fabric keeps them.
fn queue_set(params: &QueueSetParams) -> (QueueRing, QueueRing, IndicatorBytes) {
    (
        QueueRing {
            sbals: params.output_sbals,
            slsb: params.output_slsb,
        },
        QueueRing {
            sbals: params.input_sbals,
            slsb: params.input_slsb,
        },
        IndicatorBytes {
            queue: params.queue_indicator,
            middle: params.middle_indicator,
            global: params.global_indicator,
        },
    )
}

/// Checks that every structure of a queue set translates in `memory`: wholly inside
/// it (0xF005), SBALs 256-aligned in guest memory (0xF006, the partition's error) and
/// in host memory (0xF010, the hypervisor's).
fn check_structures<M: GuestMemory>(
    memory: &M,
    out: &QueueRing,
    inp: &QueueRing,
    ind: &IndicatorBytes,
) -> Result<(), RegistrationError> {
    let sbals = |addrs: &[u64; QUEUE_BUFFERS], field: fn(u8) -> QueueField| {
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
    sbals(&out.sbals, QueueField::OutputSbal)?;
    bytes(out.slsb, SLSB_LEN, QueueField::OutputSlsb)?;
    sbals(&inp.sbals, QueueField::InputSbal)?;
    bytes(inp.slsb, SLSB_LEN, QueueField::InputSlsb)?;
    bytes(ind.queue, 1, QueueField::QueueIndicator)?;
    bytes(ind.middle, 1, QueueField::MiddleIndicator)?;
    bytes(ind.global, 1, QueueField::GlobalIndicator)
}

impl<P: Platform, const Q: usize, const A: usize, const L: usize, const S: usize, const W: usize>
    Fabric<P, Q, A, L, S, Windows<W>>
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
> {
    fabric: &'f Fabric<P, Q, A, L, S, M>,
    lpar: LparId,
}

impl<P: Platform, const Q: usize, const A: usize, const L: usize, const S: usize, M: GuestMemory>
    Port<'_, P, Q, A, L, S, M>
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
}

impl<P: Platform, const Q: usize, const A: usize, const L: usize, const S: usize, M: GuestMemory>
    Siga for Port<'_, P, Q, A, L, S, M>
{
    fn siga(&self, subchannel: u16, function: SigaFunction, queue_mask: u32) -> SigaStatus {
        SigaStatus::from(
            &self
                .fabric
                .siga_function(self.lpar, subchannel, function, queue_mask),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
