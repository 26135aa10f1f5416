//! A Linux guest's virtio-net rings as its layer-2 queue set on the fabric (issue 16).
//!
//! The guest is a partition of the fabric whose memory ([`HypMemory`]) is its RAM
//! (IPA `linux::CONFIG.ram_ipa`, as [`GuestRam`] maps it) and a queue area in the
//! core's bare-metal partition window (`board::partition_window`), hypervisor memory
//! that the guest's stage 2 never maps, at IPA [`GUEST_BASE`] (outside the guest's RAM).
//! The queue area holds the queue set the hypervisor establishes for the guest on
//! subchannel 0 in layer-2 mode: the input queue, two output queues (0 unicast, 1 the
//! multicast queue, as Linux's qeth has at least: `QETH_IQD_MIN_TXQ`), their SBALs and
//! SLSBs, the three indicator bytes, and a 32-byte `qeth_hdr_layer2` slot per buffer and
//! queue. The guest never sees any of it; the fabric reaches it through its own window
//! checks like any partition's memory.
//!
//! ```text
//! queue area (IPA GUEST_BASE + offset; 128 KiB registered)
//! 0x0_0000  input SBALs        128 x 256 B
//! 0x0_8000  output 0 SBALs     unicast frames
//! 0x1_0000  output 1 SBALs     broadcast and group frames (the multicast queue)
//! 0x1_8000  SLSBs              input, output 0, output 1: 128 B each
//! 0x1_8180  indicators         queue, middle, global: one byte each, 8 B apart
//! 0x1_9000  header slots       input, output 0, output 1: 128 x 32 B each
//! ```
//!
//! **A virtio ring becomes SBALs** (the mapping `vdev::virtio_net`'s module doc
//! intends; no frame byte is copied by the hypervisor, the fabric makes the one copy):
//!
//! - transmit: every chain the driver made available ([`VirtioNet::pop`]) is checked by
//!   [`VirtioNet::transmit`], which gives the frame's segments (the 12-byte virtio-net
//!   header stripped). Its output SBAL (queue 0 for a unicast destination MAC, queue 1
//!   otherwise) is element 0: the buffer's header slot, where the hypervisor wrote the
//!   `qeth_hdr_layer2` Linux's `qeth_l2_fill_header` would (`L2Header::for_frame`: id
//!   0x02, cast flag from the destination MAC, `pkt_length`, VLAN flag and TCI from an
//!   802.1Q tag), fragment FIRST; elements 1..=n: the frame's segments, guest IPAs in
//!   its RAM, MIDDLE and LAST with `LAST_ENTRY`; SLSB 0x62. One SIGA write-multiple
//!   for the guest (LPAR id, subchannel 0, both queues' bits) sends them all; each
//!   buffer then reads 0xA1 (delivered: counted sent) or 0xAF (refused: counted by its
//!   sbalf15 reason), and its chain goes back to the driver
//!   ([`VirtioNet::complete_transmit`]).
//! - receive: the input queue is kept primed with the driver's receive chains (taken at
//!   DRIVER_OK, at each receive notification and after each harvest): element 0 the
//!   buffer's header slot (32 bytes), elements 1.. the chain's
//!   [`VirtioNet::rx_segments`], the element after them length 0 (the armed list's
//!   end); SLSB 0x41. The chain is kept by buffer index ([`Held`], a per-core static).
//!   The fabric copies the header into the slot and the Ethernet frame straight into
//!   the guest's buffers, sets 0x82 and the indicator bytes, and interrupts the guest's
//!   core when its summary went idle → pending ([`interrupt_cookie`]: an SGI to the
//!   core, which leaves the guest and comes here). The harvest resets the global and
//!   middle indicators first (the receiver's side of the three-tier protocol: a frame
//!   that arrives after the reset raises the next interrupt), then takes every filled
//!   buffer in order: frame length from the header slot, checked against what the
//!   elements say and what the chain can hold, then [`VirtioNet::complete_receive`]
//!   (used length 12 + frame) and the buffer back to the program (0x80). The guest's
//!   trap exits look at the global indicator too, so a frame is taken at the next exit
//!   whatever becomes of the SGI.
//! - reset, a stopped queue or a ring violation: the queue set is deregistered (under
//!   the fabric's exclusive lock, so no send is in flight into a posted buffer after
//!   it), every held chain forgotten, and the next DRIVER_OK establishes it again: the
//!   fabric never writes into buffers the guest took back.
//!
//! Every guest address reaches an SBALE only after the device model checked it against
//! the guest's window ([`GuestRam`]), and the fabric checks it again against the guest's
//! memory; the hypervisor's own addresses (header slots) lie in the queue area, which no guest
//! address the model accepts can name.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::net::Ipv6Addr;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use iqdio::phy::{IPV6_ALL_NODES_MAC, solicited_node_mac};
use iqdio::qdio::l2::{L2Header, Mac, MacCast};
use iqdio::qdio::{
    Eflags, Fragment, HEADER_SIZE, QUEUE_BUFFERS, SBAL_SIZE, SBALE_SIZE, SBALES_PER_SBAL, Sbale,
    SlsbState,
};
use iqdio::{
    CounterSnapshot, GuestMemory as _, LparId, QueueAddresses, QueueSetParams, Reason,
    RegistrationError, SigaError, SigaFunction, Window,
};
use iqdio_vdev::virtio_net::{self as vnet, Chain, Completion, Queue, VirtioNet};

use super::linux::{GuestRam, vnet_mac};
use super::{FABRIC, GUEST_BASE, HypMemory, interrupt_cookie};
use crate::board::{self, MAX_CORES};

/// The guest's one subchannel (the contract: LPAR id k, subchannel 0).
pub const SUBCHANNEL: u16 = 0;
/// The untagged LAN, as [`Fabric::join_vlan`](iqdio::Fabric::join_vlan) names it.
pub const VLAN_UNTAGGED: u16 = 0;

/// Output queues: 0 unicast, 1 the multicast queue (the highest-numbered).
const OUTPUTS: usize = 2;
/// The rings of the queue area: the input queue, then the output queues.
const RINGS: usize = 1 + OUTPUTS;
const INPUT: usize = 0;
const SBALS: u64 = (QUEUE_BUFFERS * SBAL_SIZE) as u64;
const SLSBS: u64 = RINGS as u64 * SBALS;
const INDICATORS: u64 = SLSBS + (RINGS * QUEUE_BUFFERS) as u64;
const HEADER_SLOTS: u64 = SLSBS + 0x1000;
const HEADER_RING: u64 = (QUEUE_BUFFERS * HEADER_SIZE) as u64;
/// Bytes of the queue area the structures use.
const AREA_USED: u64 = HEADER_SLOTS + RINGS as u64 * HEADER_RING;
/// Bytes of the core's partition window the queue area takes (registered with the
/// fabric as the guest's memory at [`GUEST_BASE`]).
pub const AREA: u64 = 128 << 10;
const _: () = assert!(AREA_USED <= AREA && AREA as usize <= board::WINDOW_SIZE);
const _: () = assert!(HEADER_RING <= 0x1000 && INDICATORS + 24 <= HEADER_SLOTS);

/// Most frames put on the output queues before one SIGA sends them (each queue has
/// 128 buffers; a batch never fills one).
const TX_BATCH: u32 = 64;
/// SIGAs tried while the fabric answers busy (cc2), before the buffers are left primed
/// for the next notification or trap exit.
const BUSY_RETRIES: u32 = 64;

/// Ring `ring`'s buffer for counter `n` (indices run on as `u32`, buffers wrap at 128).
const fn buffer(n: u32) -> u64 {
    (n % QUEUE_BUFFERS as u32) as u64
}

fn sbal_ipa(ring: usize, n: u32) -> u64 {
    GUEST_BASE + ring as u64 * SBALS + buffer(n) * SBAL_SIZE as u64
}

fn slsb_ipa(ring: usize, n: u32) -> u64 {
    GUEST_BASE + SLSBS + (ring * QUEUE_BUFFERS) as u64 + buffer(n)
}

fn header_ipa(ring: usize, n: u32) -> u64 {
    GUEST_BASE + HEADER_SLOTS + ring as u64 * HEADER_RING + buffer(n) * HEADER_SIZE as u64
}

/// The indicator bytes: queue, middle, global.
fn indicator_ipa(tier: u64) -> u64 {
    GUEST_BASE + INDICATORS + 8 * tier
}
const GLOBAL: u64 = 2;
const MIDDLE: u64 = 1;

/// Chains held while their buffers are the fabric's, by buffer index. The chains are
/// only written and read through [`Held::put`] and [`Held::take`], which keep `held`
/// true exactly for the initialised entries; uninitialised and all-false at build time,
/// so the statics below take no room in the image file.
struct Held {
    chains: [MaybeUninit<Chain>; QUEUE_BUFFERS],
    held: [bool; QUEUE_BUFFERS],
}

impl Held {
    const EMPTY: Self = Self {
        chains: [const { MaybeUninit::uninit() }; QUEUE_BUFFERS],
        held: [false; QUEUE_BUFFERS],
    };

    /// Keeps `chain` for buffer `n`; gives it back if the slot is taken.
    fn put(&mut self, n: u32, chain: Chain) -> Option<Chain> {
        let i = buffer(n) as usize;
        match (self.held.get_mut(i), self.chains.get_mut(i)) {
            (Some(h @ false), Some(slot)) => {
                slot.write(chain);
                *h = true;
                None
            }
            _ => Some(chain),
        }
    }

    /// The chain kept for buffer `n`, if any.
    fn take(&mut self, n: u32) -> Option<Chain> {
        let i = buffer(n) as usize;
        match (self.held.get_mut(i), self.chains.get(i)) {
            (Some(h @ true), Some(slot)) => {
                *h = false;
                // SAFETY: `held` was true, so `put` initialised this entry, and no
                // `take` read it since (it sets `held` false). `Chain` has no drop
                // glue, so reading it out leaves nothing behind to drop twice.
                Some(unsafe { slot.assume_init_read() })
            }
            _ => None,
        }
    }

    /// Forgets every chain (their buffers were withdrawn from the fabric; a chain is
    /// plain data, so forgetting it frees nothing).
    fn clear(&mut self) {
        self.held = [false; QUEUE_BUFFERS];
    }
}

/// One core's held chains: the input queue's, then each output queue's.
struct Slab([Held; RINGS]);

struct Slabs([UnsafeCell<Slab>; MAX_CORES]);

// SAFETY: slab N is only touched on core N, by its Linux guest's traps (IRQs masked)
// and by `linux::run` before and after the guest runs, never two at once: the same
// discipline as `linux::GUESTS`.
unsafe impl Sync for Slabs {}

static SLABS: Slabs = Slabs([const { UnsafeCell::new(Slab([Held::EMPTY; RINGS])) }; MAX_CORES]);

/// Set by the partition interrupt (the fabric's SGI) on a core that runs a Linux
/// guest; the guest's next trap exit harvests.
static KICK: [AtomicBool; MAX_CORES] = [const { AtomicBool::new(false) }; MAX_CORES];

/// The fabric interrupted `core`, which runs a Linux guest (IRQ context; the SGI made
/// the guest leave, so its trap exit follows and harvests).
pub(crate) fn fabric_interrupt(core: usize) {
    if let Some(k) = KICK.get(core) {
        k.store(true, Ordering::Relaxed);
    }
}

/// What the guest's queue set did, for the closing line and the run's summary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WireCounts {
    /// Transmit chains taken off the ring.
    pub tx_chains: u64,
    /// Frames the fabric delivered (their output buffers read 0xA1).
    pub tx_sent: u64,
    /// Frames it refused (0xAF), all reasons.
    pub tx_refused: u64,
    /// Refused frames by sbalf15 reason, in the order of [`Reason::ALL`].
    pub tx_refused_by: [u64; Reason::ALL.len()],
    /// Frames not put on the fabric: the model dropped them (offloads, runts, ...) or
    /// the queue set was not established.
    pub tx_dropped: u64,
    /// SIGAs issued for the guest.
    pub sigas: u64,
    /// SIGAs answered with an error other than busy (the buffers were kept and tried
    /// again at the next one).
    pub siga_errors: u64,
    /// Frames handed to the driver, each after the fabric copied it into the guest's
    /// receive buffer.
    pub rx_delivered: u64,
    /// Filled receive buffers returned to the driver empty: the header slot and the
    /// elements disagreed, or the buffer read 0x8F.
    pub rx_bad: u64,
    /// Frames the fabric delivered that the withdrawal found not yet taken (the driver
    /// had reset the device, so they had nowhere to go).
    pub rx_discarded: u64,
    /// Receive chains posted on the input queue.
    pub rx_posted: u64,
    /// Harvests that found the input queue's indicator set or were kicked by the SGI.
    pub harvests: u64,
    /// Times the posted buffers were withdrawn (reset, queue stopped, violation).
    pub withdrawn: u64,
    /// Queue sets established (one per DRIVER_OK).
    pub established: u64,
    /// Registrations the fabric refused (establish, MAC, VLAN, group MACs).
    pub refused_registrations: u64,
    /// The fabric's counters of the queue set, summed over every establishment.
    pub fabric: FabricCounts,
}

impl WireCounts {
    /// Frames the fabric put into the guest's receive buffers, as the hypervisor found
    /// them: handed to the driver, returned empty as bad, or discarded at a reset.
    pub fn rx_frames(&self) -> u64 {
        self.rx_delivered + self.rx_bad + self.rx_discarded
    }
}

/// The fabric's own counters of the guest's queue set ([`CounterSnapshot`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FabricCounts {
    /// Frames it sent (delivered to a target).
    pub frames_sent: u64,
    /// Frames the fabric copied into the guest's receive buffers: one copy each.
    pub frames_received: u64,
    /// Copies of its broadcast and group frames delivered to other members.
    pub group_copies: u64,
    /// Group frames meant for it that it missed (input queue full).
    pub group_missed: u64,
    /// Sends to it refused because its input queue was full.
    pub refused_full: u64,
    /// Interrupts the fabric raised for it.
    pub interrupts: u64,
    /// Deliveries that raised none (the summary was pending already).
    pub suppressed: u64,
}

impl FabricCounts {
    fn add(&mut self, c: &CounterSnapshot) {
        self.frames_sent += c.frames_sent;
        self.frames_received += c.frames_received;
        self.group_copies += c.group_copies;
        self.group_missed += c.group_missed;
        self.refused_full += c.refused_full;
        self.interrupts += c.interrupts_raised;
        self.suppressed += c.interrupts_suppressed;
    }
}

/// The guest's side of the fabric: its memory as the fabric knows it, its queue set's
/// cursors, and its counts.
pub struct Wire {
    lpar: LparId,
    core: usize,
    /// Its RAM and the queue area: what the fabric was given, used here for every
    /// access to the queue area.
    memory: HypMemory,
    /// Whether the partition is on the fabric (added at start).
    attached: bool,
    /// Whether the queue set is established.
    up: bool,
    /// The next input buffer the fabric fills (and the harvest looks at).
    rx_next: u32,
    /// The next input buffer to post a chain on.
    rx_post: u32,
    /// Per output queue: the next buffer to prime, the next one to complete.
    tx_prime: [u32; OUTPUTS],
    tx_done: [u32; OUTPUTS],
    /// Counts.
    pub counts: WireCounts,
}

impl Wire {
    /// The guest on `core` (LPAR id `lpar`) with RAM `ram`: its memory.
    pub fn new(lpar: LparId, core: usize, ram: &GuestRam) -> Option<Self> {
        let (ipa, pa, size) = ram.bounds();
        let ram_host = NonNull::new(core::ptr::with_exposed_provenance_mut::<u8>(
            usize::try_from(pa).ok()?,
        ))?;
        if core >= MAX_CORES {
            return None;
        }
        let (area_host, len) = board::partition_window(core);
        let area_host = NonNull::new(area_host)?;
        if (len as u64) < AREA {
            return None;
        }
        // SAFETY: `ram` is the guest's window, mapped by the hypervisor as normal memory
        // for as long as the image runs, and touched by the hypervisor only through
        // volatile accesses (GuestRam) and the queue area accessors below; the area is
        // the core's partition window, used by nothing else while a Linux guest runs on
        // the core. Both stay registered no longer than the guest runs (`detach`).
        let memory = unsafe {
            let ram = Window::new(ipa, ram_host, usize::try_from(size).ok()?);
            HypMemory::with_area(ram, area_host)
        }
        .ok()?;
        Some(Self {
            lpar,
            core,
            memory,
            attached: false,
            up: false,
            rx_next: 0,
            rx_post: 0,
            tx_prime: [0; OUTPUTS],
            tx_done: [0; OUTPUTS],
            counts: WireCounts::default(),
        })
    }

    /// Puts the guest on the fabric as a partition with its memory (at start,
    /// IRQs masked).
    pub fn attach(&mut self) -> Result<(), RegistrationError> {
        FABRIC.add_partition_memory(self.lpar, self.memory)?;
        self.attached = true;
        Ok(())
    }

    /// Takes the guest off the fabric (when it ended, IRQs masked).
    pub fn detach(&mut self) {
        self.withdraw(false);
        if self.attached {
            let _ = FABRIC.remove_partition(self.lpar);
            self.attached = false;
        }
    }

    /// Whether the queue set is established.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// The host address of `[ipa, ipa + len)` in the guest's memory as the fabric
    /// knows it.
    fn at(&self, ipa: u64, len: usize) -> Option<NonNull<u8>> {
        self.memory.translate(ipa, len as u64)
    }

    /// SLSB byte `n` of `ring`.
    fn slsb(&self, ring: usize, n: u32) -> Option<&AtomicU8> {
        let p = self.at(slsb_ipa(ring, n), 1)?;
        // SAFETY: a byte inside the queue area (checked by `at`), which lives as long
        // as the image; the fabric accesses SLSB bytes only as atomics too.
        Some(unsafe { AtomicU8::from_ptr(p.as_ptr()) })
    }

    fn write_area(&self, ipa: u64, data: &[u8]) {
        if let Some(p) = self.at(ipa, data.len()) {
            for (i, &b) in data.iter().enumerate() {
                // SAFETY: inside the queue area (checked by `at`); the fabric does not
                // access these bytes now: the buffer they belong to is the program's
                // (its SLSB state says so), and the SLSB store that hands it over
                // (Release) publishes them.
                unsafe { p.as_ptr().add(i).write_volatile(b) };
            }
        }
    }

    fn read_area(&self, ipa: u64, buf: &mut [u8]) -> bool {
        let Some(p) = self.at(ipa, buf.len()) else {
            return false;
        };
        for (i, b) in buf.iter_mut().enumerate() {
            // SAFETY: as in `write_area`: the fabric handed the buffer back (its
            // SLSB state, loaded with Acquire, says so) and does not touch it.
            *b = unsafe { p.as_ptr().add(i).read_volatile() };
        }
        true
    }

    fn store_sbale(&self, ring: usize, n: u32, element: usize, e: &Sbale) {
        self.write_area(
            sbal_ipa(ring, n) + (element * SBALE_SIZE) as u64,
            &e.encode(),
        );
    }

    fn load_sbale(&self, ring: usize, n: u32, element: usize) -> Option<Sbale> {
        let mut b = [0u8; SBALE_SIZE];
        self.read_area(sbal_ipa(ring, n) + (element * SBALE_SIZE) as u64, &mut b)
            .then(|| Sbale::decode(&b))
    }

    /// Establishes the queue set (at DRIVER_OK): a clean queue area, the layer-2 set
    /// with its two output queues, the guest's MAC, the untagged LAN, and the IPv6
    /// group MACs of the contract (all-nodes, the solicited-node MACs of its link-local
    /// and `fd00::` addresses). Refusals are counted and logged; a set that could not be
    /// established leaves the guest off the fabric until its next DRIVER_OK.
    pub fn establish(&mut self) {
        if !self.attached || self.up {
            return;
        }
        if let Some(p) = self.at(GUEST_BASE, AREA as usize) {
            // SAFETY: the whole queue area (checked by `at`), no queue set on it.
            unsafe { core::ptr::write_bytes(p.as_ptr(), 0, AREA as usize) };
        }
        for n in 0..QUEUE_BUFFERS as u32 {
            if let Some(s) = self.slsb(INPUT, n) {
                s.store(SlsbState::INPUT_NOT_INIT.0, Ordering::Relaxed);
            }
            for q in 0..OUTPUTS {
                if let Some(s) = self.slsb(1 + q, n) {
                    s.store(SlsbState::OUTPUT_NOT_INIT.0, Ordering::Relaxed);
                }
            }
        }
        let sbals = |ring: usize| core::array::from_fn(|n| sbal_ipa(ring, n as u32));
        let mut more = heapless::Vec::new();
        let _ = more.push(QueueAddresses {
            sbals: sbals(2),
            slsb: slsb_ipa(2, 0),
        });
        let params = QueueSetParams {
            output_sbals: sbals(1),
            input_sbals: sbals(INPUT),
            output_slsb: slsb_ipa(1, 0),
            input_slsb: slsb_ipa(INPUT, 0),
            queue_indicator: indicator_ipa(0),
            middle_indicator: indicator_ipa(MIDDLE),
            global_indicator: indicator_ipa(GLOBAL),
            interrupt_immediately: false,
            interrupt_cookie: interrupt_cookie(self.lpar),
            more_outputs: more,
            completion_queue: None,
            layer2: true,
        };
        (self.rx_next, self.rx_post) = (0, 0);
        (self.tx_prime, self.tx_done) = ([0; OUTPUTS], [0; OUTPUTS]);
        if let Err(e) = FABRIC.establish(self.lpar, SUBCHANNEL, &params) {
            self.refused("establish", e);
            return;
        }
        self.up = true;
        self.counts.established += 1;
        let mac = vnet_mac(self.lpar);
        let r = FABRIC.register_mac(self.lpar, SUBCHANNEL, mac);
        self.check("MAC", r);
        let r = FABRIC.join_vlan(self.lpar, SUBCHANNEL, VLAN_UNTAGGED);
        self.check("VLAN", r);
        for group in group_macs(self.lpar) {
            let r = FABRIC.register_group_mac(self.lpar, SUBCHANNEL, group);
            self.check("group MAC", r);
        }
    }

    fn check(&mut self, what: &'static str, r: Result<(), RegistrationError>) {
        if let Err(e) = r {
            self.refused(what, e);
        }
    }

    fn refused(&mut self, what: &'static str, e: RegistrationError) {
        self.counts.refused_registrations += 1;
        defmt::error!(
            "partition {}: virtio-net: the fabric refused the {=str}: {=u16:#x}",
            self.lpar,
            what,
            e.code()
        );
    }

    /// Withdraws the queue set (a reset, a stopped queue, a violation, the end): the
    /// fabric deregisters it under its exclusive lock, so no send is in flight into a
    /// posted buffer afterwards, and the chains held for it are forgotten (the device
    /// treats them as stale after a reset anyway). `counted`: a withdrawal the driver
    /// caused, not the guest's end.
    pub fn withdraw(&mut self, counted: bool) {
        if !self.up {
            return;
        }
        self.up = false;
        if let Ok(c) = FABRIC.deregister_queue_set(self.lpar, SUBCHANNEL) {
            self.counts.fabric.add(&c);
        }
        // Nothing arrives any more: count what the fabric filled and nobody took.
        let mut n = self.rx_next;
        while n != self.rx_post {
            if self
                .slsb(INPUT, n)
                .is_some_and(|s| s.load(Ordering::Acquire) == SlsbState::INPUT_PRIMED.0)
            {
                self.counts.rx_discarded += 1;
            }
            n = n.wrapping_add(1);
        }
        self.counts.withdrawn += u64::from(counted);
        // SAFETY: this core's slab (the guest runs here), IRQs masked.
        let slab = unsafe { slab(self.core) };
        for h in &mut slab.0 {
            h.clear();
        }
    }

    /// The fabric's counters so far: the withdrawn sets' and the live one's.
    pub fn fabric_counts(&self) -> FabricCounts {
        let mut f = self.counts.fabric;
        if self.up
            && let Some(c) = FABRIC.counters_of(self.lpar, SUBCHANNEL)
        {
            f.add(&c);
        }
        f
    }

    /// QueueNotify(1): every available transmit chain, through the fabric. True when a
    /// completion asked for a used-buffer interrupt.
    pub fn transmit(&mut self, dev: &mut VirtioNet, ram: &mut GuestRam) -> bool {
        let mut raise = self.flush(dev, ram);
        // At most a ring's worth per notification (the guest does not run meanwhile,
        // but the bound does not depend on that).
        let mut budget = u32::from(vnet::QUEUE_NUM_MAX);
        while budget > 0 {
            let mut batch = 0;
            while batch < TX_BATCH && budget > 0 && self.tx_room() {
                let chain = match dev.pop(Queue::Tx, ram) {
                    Ok(Some(chain)) => chain,
                    // An empty ring, or a violation (DEVICE_NEEDS_RESET is set and
                    // counted; the caller sees the interrupt through
                    // `interrupt_pending` and withdraws).
                    Ok(None) | Err(_) => {
                        budget = 0;
                        break;
                    }
                };
                budget -= 1;
                self.counts.tx_chains += 1;
                match self.prime_tx(dev, ram, chain) {
                    None => batch += 1,
                    Some(chain) => {
                        self.counts.tx_dropped += 1;
                        raise |= complete_tx(dev, ram, chain);
                    }
                }
            }
            if batch == 0 {
                break;
            }
            raise |= self.flush(dev, ram);
        }
        raise
    }

    /// Whether every output queue has room for a whole batch.
    fn tx_room(&self) -> bool {
        (0..OUTPUTS).all(|q| {
            self.tx_prime[q].wrapping_sub(self.tx_done[q]) < QUEUE_BUFFERS as u32 - TX_BATCH
        })
    }

    /// Puts the frame of `chain` on its output queue (primed); gives the chain back if
    /// the model refuses the frame or there is no queue set.
    fn prime_tx(&mut self, dev: &mut VirtioNet, ram: &mut GuestRam, chain: Chain) -> Option<Chain> {
        let Ok(frame) = dev.transmit(&chain, ram) else {
            return Some(chain);
        };
        if !self.up {
            return Some(chain);
        }
        let mut prefix = [0u8; iqdio::qdio::l2::ETH_ROUTING];
        let n = frame.segments.read_prefix(ram, &mut prefix).unwrap_or(0);
        let Some(mut header) = prefix.get(..n).and_then(L2Header::for_frame) else {
            return Some(chain);
        };
        let Ok(len) = u16::try_from(frame.len) else {
            return Some(chain);
        };
        header.pkt_length = len;
        let segments = frame.segments.as_slice();
        let q = if header.flags == MacCast::Unicast.flag() {
            0
        } else {
            1
        };
        let ring = 1 + q;
        let Some(&k) = self.tx_prime.get(q) else {
            return Some(chain);
        };
        if segments.is_empty() || segments.len() >= SBALES_PER_SBAL {
            return Some(chain);
        }
        self.write_area(header_ipa(ring, k), &header.encode());
        self.store_sbale(
            ring,
            k,
            0,
            &Sbale {
                eflags: Fragment::First.bits(),
                length: HEADER_SIZE as u32,
                addr: header_ipa(ring, k),
                ..Sbale::default()
            },
        );
        for (i, s) in segments.iter().enumerate() {
            let last = i + 1 == segments.len();
            let eflags = if last {
                Fragment::Last.bits() | Eflags::LAST_ENTRY.bits()
            } else {
                Fragment::Middle.bits()
            };
            self.store_sbale(
                ring,
                k,
                1 + i,
                &Sbale {
                    eflags,
                    length: s.len,
                    addr: s.ipa,
                    ..Sbale::default()
                },
            );
        }
        // SAFETY: this core's slab (the guest runs here), IRQs masked.
        let slab = unsafe { slab(self.core) };
        match slab.0.get_mut(ring) {
            Some(h) => {
                if let Some(chain) = h.put(k, chain) {
                    return Some(chain);
                }
            }
            None => return Some(chain),
        }
        let Some(s) = self.slsb(ring, k) else {
            // Cannot happen (the area is translated whole); the chain is held and
            // forgotten at the next withdrawal.
            return None;
        };
        // Release: the header slot and the SBAL are visible to the fabric's Acquire
        // load of 0x62.
        s.store(SlsbState::OUTPUT_PRIMED.0, Ordering::Release);
        if let Some(p) = self.tx_prime.get_mut(q) {
            *p = k.wrapping_add(1);
        }
        None
    }

    /// One SIGA write-multiple for the guest when buffers are primed, then every
    /// buffer the fabric finished goes back to the driver. True when a completion
    /// asked for an interrupt.
    fn flush(&mut self, dev: &mut VirtioNet, ram: &mut GuestRam) -> bool {
        let mut mask = 0u32;
        for q in 0..OUTPUTS {
            if self.tx_prime[q] != self.tx_done[q] {
                mask |= 1 << (31 - q);
            }
        }
        if mask == 0 {
            return false;
        }
        if self.up {
            for _ in 0..BUSY_RETRIES {
                self.counts.sigas += 1;
                match FABRIC.siga(
                    self.lpar,
                    SUBCHANNEL,
                    SigaFunction::WriteMultiple.code(),
                    mask,
                ) {
                    Err(SigaError::Busy) => core::hint::spin_loop(),
                    Err(_) => {
                        self.counts.siga_errors += 1;
                        break;
                    }
                    Ok(_) => break,
                }
            }
        }
        let mut raise = false;
        for q in 0..OUTPUTS {
            raise |= self.complete_sent(q, dev, ram);
        }
        raise
    }

    /// Completes output queue `q`'s buffers the fabric finished, in order.
    fn complete_sent(&mut self, q: usize, dev: &mut VirtioNet, ram: &mut GuestRam) -> bool {
        let ring = 1 + q;
        let mut raise = false;
        while self.tx_done[q] != self.tx_prime[q] {
            let k = self.tx_done[q];
            let state = self.slsb(ring, k).map(|s| s.load(Ordering::Acquire));
            if state == Some(SlsbState::OUTPUT_EMPTY.0) {
                self.counts.tx_sent += 1;
            } else if state == Some(SlsbState::OUTPUT_ERROR.0) {
                self.counts.tx_refused += 1;
                let code = self
                    .load_sbale(ring, k, Sbale::ERROR_REASON_ELEMENT)
                    .map_or(0, |e| e.sflags);
                if let Some(i) = Reason::ALL.iter().position(|r| r.code() == code)
                    && let Some(c) = self.counts.tx_refused_by.get_mut(i)
                {
                    *c += 1;
                }
            } else {
                // Still primed: the SIGA did not get to it (busy, or an error); it
                // goes with the next one.
                break;
            }
            self.tx_done[q] = k.wrapping_add(1);
            // SAFETY: this core's slab (the guest runs here), IRQs masked.
            let slab = unsafe { slab(self.core) };
            if let Some(chain) = slab.0.get_mut(ring).and_then(|h| h.take(k)) {
                raise |= complete_tx(dev, ram, chain);
            }
        }
        raise
    }

    /// Whether output buffers wait for a SIGA (one answered busy).
    pub fn tx_pending(&self) -> bool {
        self.tx_prime != self.tx_done
    }

    /// At a trap exit: what the fabric delivered since (when the SGI kicked or the
    /// global indicator is set), and output buffers a busy SIGA left. True when the
    /// driver wants an interrupt.
    pub fn service(&mut self, dev: &mut VirtioNet, ram: &mut GuestRam) -> bool {
        let kicked = KICK
            .get(self.core)
            .is_some_and(|k| k.swap(false, Ordering::Relaxed));
        if !self.up {
            return false;
        }
        let mut raise = false;
        let pending = self.at(indicator_ipa(GLOBAL), 1).is_some_and(|p| {
            // SAFETY: a byte inside the queue area; the fabric accesses indicator
            // bytes only as atomics too.
            unsafe { AtomicU8::from_ptr(p.as_ptr()) }.load(Ordering::Relaxed) != 0
        });
        if kicked || pending {
            raise |= self.harvest(dev, ram);
        }
        if self.tx_pending() {
            raise |= self.flush(dev, ram);
        }
        raise
    }

    /// Takes every input buffer the fabric filled, in order, hands each frame to the
    /// driver, and posts new receive chains. True when a completion asked for an
    /// interrupt.
    pub fn harvest(&mut self, dev: &mut VirtioNet, ram: &mut GuestRam) -> bool {
        if !self.up {
            return false;
        }
        self.counts.harvests += 1;
        // High → low, each reset before the work it announces is looked at: a frame
        // delivered after this finds the summary idle and interrupts again.
        for tier in [GLOBAL, MIDDLE, 0] {
            if let Some(p) = self.at(indicator_ipa(tier), 1) {
                // SAFETY: as in `service`.
                unsafe { AtomicU8::from_ptr(p.as_ptr()) }.swap(0, Ordering::AcqRel);
            }
        }
        let mut raise = false;
        while self.rx_next != self.rx_post {
            let n = self.rx_next;
            let Some(slsb) = self.slsb(INPUT, n) else {
                break;
            };
            // Acquire pairs with the fabric's Release store of 0x82: the frame, the
            // header slot and the rewritten SBALEs are visible.
            let state = slsb.load(Ordering::Acquire);
            let frame_len = if state == SlsbState::INPUT_PRIMED.0 {
                self.received_len(n)
            } else if state == SlsbState::INPUT_ERROR.0 {
                None
            } else {
                // Still posted (0x41): nothing more arrived.
                break;
            };
            // The buffer is the program's again; 0x80 (not 0x81: this receiver does
            // not poll), re-posted with a new chain below.
            slsb.store(SlsbState::INPUT_NOT_INIT.0, Ordering::Relaxed);
            self.rx_next = n.wrapping_add(1);
            // SAFETY: this core's slab (the guest runs here), IRQs masked.
            let slab = unsafe { slab(self.core) };
            let Some(chain) = slab.0.get_mut(INPUT).and_then(|h| h.take(n)) else {
                continue;
            };
            let fits =
                frame_len.filter(|&l| u64::from(l) <= VirtioNet::rx_segments(&chain).bytes());
            if fits.is_none() {
                self.counts.rx_bad += 1;
            }
            match dev.complete_receive(chain, fits.unwrap_or(0), ram) {
                Ok(Completion::Interrupt) => {
                    raise = true;
                    self.counts.rx_delivered += u64::from(fits.is_some());
                }
                Ok(Completion::Suppressed) => {
                    self.counts.rx_delivered += u64::from(fits.is_some());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        self.post_rx(dev, ram);
        raise
    }

    /// The Ethernet frame's length in filled input buffer `n`: the header slot's
    /// `pkt_length`, if the header is a layer-2 one and the elements after it hold
    /// exactly that many bytes.
    fn received_len(&self, n: u32) -> Option<u32> {
        let mut raw = [0u8; HEADER_SIZE];
        if !self.read_area(header_ipa(INPUT, n), &mut raw) {
            return None;
        }
        let header = L2Header::decode(&raw)?;
        let first = self.load_sbale(INPUT, n, 0)?;
        if first.length as usize != HEADER_SIZE || first.is_last_entry() {
            return None;
        }
        let mut total = 0u64;
        for i in 1..SBALES_PER_SBAL {
            let e = self.load_sbale(INPUT, n, i)?;
            total += u64::from(e.length);
            if e.is_last_entry() {
                return (total == u64::from(header.pkt_length))
                    .then_some(u32::from(header.pkt_length));
            }
        }
        None
    }

    /// Posts the driver's available receive chains on the input queue, in order,
    /// until it is full or the driver has none.
    pub fn post_rx(&mut self, dev: &mut VirtioNet, ram: &mut GuestRam) {
        while self.up && self.rx_post.wrapping_sub(self.rx_next) < QUEUE_BUFFERS as u32 {
            let chain = match dev.pop(Queue::Rx, ram) {
                Ok(Some(chain)) => chain,
                Ok(None) | Err(_) => break,
            };
            let segments = VirtioNet::rx_segments(&chain);
            let segments = segments.as_slice();
            if segments.is_empty() {
                // Room for the virtio-net header only: back at once, no frame.
                self.counts.rx_bad += 1;
                let _ = dev.complete_receive(chain, 0, ram);
                continue;
            }
            let n = self.rx_post;
            self.store_sbale(
                INPUT,
                n,
                0,
                &Sbale {
                    length: HEADER_SIZE as u32,
                    addr: header_ipa(INPUT, n),
                    ..Sbale::default()
                },
            );
            for (i, s) in segments.iter().enumerate() {
                self.store_sbale(
                    INPUT,
                    n,
                    1 + i,
                    &Sbale {
                        length: s.len,
                        addr: s.ipa,
                        ..Sbale::default()
                    },
                );
            }
            // The armed list ends at an element of length 0.
            if 1 + segments.len() < SBALES_PER_SBAL {
                self.store_sbale(INPUT, n, 1 + segments.len(), &Sbale::default());
            }
            // SAFETY: this core's slab (the guest runs here), IRQs masked.
            let slab = unsafe { slab(self.core) };
            if let Some(Some(chain)) = slab.0.get_mut(INPUT).map(|h| h.put(n, chain)) {
                // Cannot happen (the slot's buffer was harvested), but the chain
                // goes back rather than being lost.
                let _ = dev.complete_receive(chain, 0, ram);
                break;
            }
            let Some(s) = self.slsb(INPUT, n) else {
                break;
            };
            // Release: the SBAL is visible to the fabric's Acquire load of 0x41.
            s.store(SlsbState::INPUT_EMPTY.0, Ordering::Release);
            self.rx_post = n.wrapping_add(1);
            self.counts.rx_posted += 1;
        }
    }
}

/// Returns a transmit chain to the driver; true when it asked for an interrupt.
fn complete_tx(dev: &mut VirtioNet, ram: &mut GuestRam, chain: Chain) -> bool {
    matches!(dev.complete_transmit(chain, ram), Ok(Completion::Interrupt))
}

/// This core's held chains.
///
/// # Safety
///
/// Called on `core` itself with IRQs masked, and the returned reference dropped before
/// any other call of this function on the same core.
unsafe fn slab(core: usize) -> &'static mut Slab {
    let core = core % MAX_CORES;
    // SAFETY: per the caller's promise no other reference to this slab is live.
    unsafe { &mut *SLABS.0[core].get() }
}

/// The group MACs the hypervisor registers for the guest with LPAR id `lpar` (the
/// contract): IPv6 all-nodes, and the solicited-node MACs of its link-local address
/// (EUI-64 from its MAC, RFC 4291 appendix A) and of `fd00::(lpar + 1)`.
pub fn group_macs(lpar: LparId) -> [Mac; 3] {
    let m = vnet_mac(lpar);
    let link_local = Ipv6Addr::new(
        0xfe80,
        0,
        0,
        0,
        u16::from_be_bytes([m[0] ^ 0x02, m[1]]),
        u16::from_be_bytes([m[2], 0xff]),
        u16::from_be_bytes([0xfe, m[3]]),
        u16::from_be_bytes([m[4], m[5]]),
    );
    let ula = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(lpar) + 1);
    [
        IPV6_ALL_NODES_MAC,
        solicited_node_mac(link_local),
        solicited_node_mac(ula),
    ]
}
