//! A test-side model of Linux 6.12's qeth driver (layer 3) driving a HiperSockets
//! (IQD) device, over the qdio layer beneath it, written from the Linux sources:
//! `drivers/s390/net/qeth_core_main.c`, `qeth_core.h`, `qeth_l3_main.c`,
//! `drivers/s390/cio/qdio_main.c`, `qdio.h`, `arch/s390/include/asm/qdio.h`. Each
//! step names the function it follows. Where the model is simpler than Linux it says
//! so (no TSO, no page frags: every packet is one linear skb; no sysfs; one poll
//! budget per whole input buffer).
//!
//! A [`Card`] is one partition with one qeth device: its own [`GuestRam`], 2 to 4 QDIO
//! output queues and one input queue laid out in it. It talks to the fabric only as a
//! hypervisor routes a guest's requests: SIGA through [`Siga`] (what crosses the trap:
//! condition code and busy bit), guest memory (SLSBs, SBALs, data pages, indicator
//! bytes), and the registration calls a hypervisor makes for the guest's
//! establish / SETIP / SETIPM / broadcast switch.
//!
//! Threads: each output queue has its own lock (Linux: one TX queue per CPU may run
//! at once, `__qeth_xmit` under the netdev TX queue lock), the input side another
//! (NAPI runs on one CPU at a time), so a test may send on several queues of one card
//! from several threads while another thread receives.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iqdio::fabric::QueueAddresses;
use iqdio::qdio::{HEADER_SIZE, QUEUE_BUFFERS, SBAL_SIZE, Sbale};
use iqdio::{ConditionCode, Mfs, QueueSetParams, Siga, SigaFunction};

use crate::common::{GUEST_BASE, GuestRam, PAGE, TestFabric};

/// `QETH_IQD_MCAST_TXQ` (`qeth_core.h`): the network device's transmit queue 0 carries
/// multicast, broadcast and anycast.
pub const IQD_MCAST_TXQ: usize = 0;
/// `QETH_IQD_MIN_UCAST_TXQ` (`qeth_core.h`).
pub const IQD_MIN_UCAST_TXQ: usize = 1;
/// `QETH_IQD_MIN_TXQ` (`qeth_core.h`): one unicast and one multicast queue at least.
pub const IQD_MIN_TXQ: usize = 2;
/// `QETH_MAX_OUT_QUEUES` (`qeth_core.h`).
pub const MAX_OUT_QUEUES: usize = 4;
/// `QDIO_BUSY_BIT_PATIENCE` (`qdio.h`): how long `qdio_siga_output` re-issues a SIGA
/// that answered busy, 100 µs.
pub const BUSY_BIT_PATIENCE: Duration = Duration::from_micros(100);
/// `QDIO_BUSY_BIT_RETRIES` (`qdio.h`): rounds of `qdio_kick_outbound_q`.
pub const BUSY_BIT_RETRIES: u32 = 1000;
/// `QDIO_BUSY_BIT_RETRY_DELAY` (`qdio.h`): `mdelay(10)` between the rounds.
pub const BUSY_BIT_RETRY_DELAY: Duration = Duration::from_millis(10);
/// The NAPI budget qeth registers its poll with (`NAPI_POLL_WEIGHT`, 64).
pub const NAPI_BUDGET: usize = 64;

const SLSB_CU_OUTPUT_PRIMED: u8 = 0x62;
const SLSB_P_OUTPUT_EMPTY: u8 = 0xA1;
const SLSB_P_OUTPUT_PENDING: u8 = 0xA3;
const SLSB_P_OUTPUT_ERROR: u8 = 0xAF;
const SLSB_P_OUTPUT_NOT_INIT: u8 = 0xA0;
const SLSB_CU_INPUT_EMPTY: u8 = 0x41;
const SLSB_P_INPUT_PRIMED: u8 = 0x82;
const SLSB_P_INPUT_ERROR: u8 = 0x8F;
const SLSB_P_INPUT_ACK: u8 = 0x81;
const SLSB_P_INPUT_NOT_INIT: u8 = 0x80;

const SBAL_EFLAGS_LAST_ENTRY: u8 = 0x40;
const SBAL_EFLAGS_FIRST_FRAG: u8 = 0x04;
const SBAL_EFLAGS_MIDDLE_FRAG: u8 = 0x08;
const SBAL_EFLAGS_LAST_FRAG: u8 = 0x0C;

/// `QETH_HEADER_TYPE_LAYER3`.
const HEADER_TYPE_LAYER3: u8 = 0x01;
/// `QETH_HEADER_MASK_INVAL`.
const HEADER_MASK_INVAL: u8 = 0x80;
/// `QETH_HDR_IPV6`.
const HDR_IPV6: u8 = 0x80;
/// `QETH_HDR_CAST_MASK`.
const HDR_CAST_MASK: u8 = 0x07;
/// `QETH_HDR_EXT_VLAN_FRAME`.
const HDR_EXT_VLAN_FRAME: u8 = 0x01;

/// `enum qeth_cast_flags` (`qeth_core.h`).
pub const CAST_UNICAST: u8 = 0x06;
/// Multicast.
pub const CAST_MULTICAST: u8 = 0x04;
/// Broadcast.
pub const CAST_BROADCAST: u8 = 0x05;
/// Anycast.
pub const CAST_ANYCAST: u8 = 0x07;

/// The route type of a packet's destination, as the stack's `dst` gives it
/// (`RTN_UNICAST`, `RTN_MULTICAST`, `RTN_BROADCAST`, `RTN_ANYCAST`); qeth reads it in
/// `qeth_l3_get_cast_type_rcu` (`qeth_l3_main.c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `RTN_UNICAST`.
    Unicast,
    /// `RTN_MULTICAST`.
    Multicast,
    /// `RTN_BROADCAST` (the limited broadcast address or a subnet's).
    Broadcast,
    /// `RTN_ANYCAST` (an IPv6 anycast address).
    Anycast,
}

impl Route {
    /// `qeth_l3_cast_type_to_flag` (`qeth_l3_main.c`).
    pub fn cast_flag(self) -> u8 {
        match self {
            Route::Unicast => CAST_UNICAST,
            Route::Multicast => CAST_MULTICAST,
            Route::Broadcast => CAST_BROADCAST,
            Route::Anycast => CAST_ANYCAST,
        }
    }
}

/// One IP packet handed to the driver (a linear skb).
#[derive(Clone, Debug)]
pub struct Packet {
    /// The destination, which is the next hop (the tests route directly).
    pub dst: IpAddr,
    /// Its route type.
    pub route: Route,
    /// A VLAN tag (`skb_vlan_tag_present`).
    pub vlan: Option<u16>,
    /// A flow hash for `netdev_pick_tx` among the unicast queues.
    pub flow: usize,
    /// The IP packet (header and payload), or an AF_IUCV packet's bytes.
    pub bytes: Vec<u8>,
    /// An AF_IUCV packet (`ETH_P_AF_IUCV`) rather than IP.
    pub iucv: bool,
}

impl Packet {
    /// A UDP-less IP packet (protocol 253, "experimental") from `src` to `dst` carrying
    /// `payload`, with the route type the destination address implies (multicast for a
    /// multicast address, broadcast for 255.255.255.255, else unicast).
    pub fn ip(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Self {
        let route = match dst {
            d if d.is_multicast() => Route::Multicast,
            IpAddr::V4(v4) if v4.is_broadcast() => Route::Broadcast,
            _ => Route::Unicast,
        };
        let bytes = match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = 20 + payload.len();
                let mut h = vec![
                    0x45,
                    0,
                    (total >> 8) as u8,
                    total as u8,
                    0,
                    0,
                    0x40,
                    0,
                    64,
                    253,
                ];
                h.extend([0, 0]);
                h.extend(s.octets());
                h.extend(d.octets());
                let sum = ipv4_checksum(&h);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                h.extend_from_slice(payload);
                h
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let len = payload.len();
                let mut h = vec![0x60, 0, 0, 0, (len >> 8) as u8, len as u8, 253, 64];
                h.extend(s.octets());
                h.extend(d.octets());
                h.extend_from_slice(payload);
                h
            }
            _ => panic!("source and destination of different families"),
        };
        Self {
            dst,
            route,
            vlan: None,
            flow: 0,
            bytes,
            iucv: false,
        }
    }

    /// An AF_IUCV packet over HiperSockets to the IUCV user `user` (its transport
    /// header and data are `bytes`): `qeth_l3_fill_header` makes its next hop
    /// fe80::/64 with the user id in the low 8 bytes, flagged IPv6.
    pub fn iucv(user: [u8; 8], bytes: &[u8]) -> Self {
        Self {
            dst: iucv_address(user),
            route: Route::Unicast,
            vlan: None,
            flow: 0,
            bytes: bytes.to_vec(),
            iucv: true,
        }
    }

    /// The same packet with another route type (a subnet broadcast, an anycast).
    pub fn route(mut self, route: Route) -> Self {
        self.route = route;
        self
    }

    /// The same packet with a VLAN tag.
    pub fn vlan(mut self, tag: u16) -> Self {
        self.vlan = Some(tag);
        self
    }

    /// The same packet with a flow hash.
    pub fn flow(mut self, flow: usize) -> Self {
        self.flow = flow;
        self
    }

    /// The payload after the IP header.
    pub fn payload(bytes: &[u8]) -> &[u8] {
        match bytes.first().map(|b| b >> 4) {
            Some(4) => &bytes[20..],
            Some(6) => &bytes[40..],
            _ => bytes,
        }
    }
}

/// The address a HiperSockets AF_IUCV user is reached at: fe80:: with the user id in
/// bytes 8-15 (`qeth_l3_fill_header`; the receiving card registers it for its
/// `hsuid`).
pub fn iucv_address(user: [u8; 8]) -> IpAddr {
    let mut a = [0u8; 16];
    a[0] = 0xfe;
    a[1] = 0x80;
    a[8..].copy_from_slice(&user);
    IpAddr::V6(Ipv6Addr::from(a))
}

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// A frame as `qeth_extract_skb` / `qeth_l3_rebuild_skb` hand it to the stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RxFrame {
    /// The header's cast bits (`flags & QETH_HDR_CAST_MASK`).
    pub cast: u8,
    /// The header's next hop (what the sender's `qeth_l3_fill_header` wrote).
    pub next_hop: IpAddr,
    /// The VLAN tag, when the header says `QETH_HDR_EXT_VLAN_FRAME`.
    pub vlan: Option<u16>,
    /// The IP packet.
    pub packet: Vec<u8>,
}

/// `enum qeth_out_q_states`-like state of one output buffer as qeth keeps it
/// (`QETH_QDIO_BUF_EMPTY`, `QETH_QDIO_BUF_PRIMED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BufState {
    Empty,
    Primed,
}

/// `struct qeth_qdio_out_buffer`, what the model needs of it.
#[derive(Clone, Debug)]
struct OutBuf {
    state: BufState,
    next_element_to_fill: usize,
    bytes: u64,
    frames: u64,
    /// The skbs' slots.
    slots: Vec<usize>,
    /// `buf->aob`: the QAOB attached at its first WRITEQ, kept for re-use.
    aob: Option<u64>,
}

/// What one output queue counted (`struct qeth_out_q_stats` and qdio's perf counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxStats {
    /// `tx_packets`: frames of buffers that completed without error.
    pub tx_packets: u64,
    /// `tx_bytes`: their bytes (the IP packets).
    pub tx_bytes: u64,
    /// `tx_errors`: frames of buffers that completed with an error (never re-sent).
    pub tx_errors: u64,
    /// `tx_dropped`: packets dropped before they reached a buffer.
    pub tx_dropped: u64,
    /// `bufs`: buffers flushed.
    pub bufs: u64,
    /// Buffers that carried more than one frame (`bufs_pack`).
    pub bufs_pack: u64,
    /// SIGA write issued (each re-issue after busy counts).
    pub siga_write: u64,
    /// SIGA write-multiple issued.
    pub siga_writem: u64,
    /// SIGAs answered cc2 with the busy bit.
    pub busy: u64,
    /// `mdelay(QDIO_BUSY_BIT_RETRY_DELAY)` rounds taken.
    pub busy_delays: u64,
    /// qdio's `target_full`: error runs whose first buffer read sbalf15 0x10
    /// (`process_buffer_error`, `qdio_main.c`).
    pub target_full: u64,
    /// Buffers completed with an error, by sbalf15 (what `qeth_handle_send_error`
    /// traces).
    pub sbalf15: [u64; 256],
    /// Completed buffers whose error `qeth_handle_send_error` traces as "lnkfail"
    /// (sbalf15 outside 15-31).
    pub lnkfail: u64,
    /// SIGA WRITEQ issued.
    pub siga_writeq: u64,
    /// Buffers that completed PENDING (0xA3) and went to the pending list.
    pub pending: u64,
    /// Pending buffers finished through their QAOB (or drained).
    pub pending_done: u64,
    /// QAOB completion codes seen (`aorc`), by value.
    pub aorc: [u64; 256],
}

impl Default for TxStats {
    fn default() -> Self {
        Self {
            tx_packets: 0,
            tx_bytes: 0,
            tx_errors: 0,
            tx_dropped: 0,
            bufs: 0,
            bufs_pack: 0,
            siga_write: 0,
            siga_writem: 0,
            busy: 0,
            busy_delays: 0,
            target_full: 0,
            sbalf15: [0; 256],
            lnkfail: 0,
            siga_writeq: 0,
            pending: 0,
            pending_done: 0,
            aorc: [0; 256],
        }
    }
}

impl Default for OutBuf {
    fn default() -> Self {
        Self {
            state: BufState::Empty,
            next_element_to_fill: 0,
            bytes: 0,
            frames: 0,
            slots: Vec::new(),
            aob: None,
        }
    }
}

/// Where skbs live: a slot of pages per packet, from a free list per output queue,
/// held until the packet's buffer completes (with the completion queue that may be
/// long after its SIGA: the fabric reads a pending buffer's data through its QAOB).
/// Slot page 0 holds a header-cache object at its start; the packet data starts in
/// page 1 at the offset the layout wants, its pushed header right before it.
struct Slots {
    base: u64,
    size: u64,
    free: Vec<usize>,
    /// Rotates the page offset at which packet data starts, to produce all three of
    /// `qeth_add_hw_header`'s layouts.
    turn: usize,
}

/// Page offsets of the packet data, in turn: the header pushed in front of the data in
/// the same page (>= 32), pushed into the preceding page (0: the header is its own
/// 32-byte element), or in a separate header-cache object (1-31).
const DATA_OFFSETS: [u64; 8] = [64, 0, 17, 2048 + 40, 4000, 32, 31, 600];

impl Slots {
    fn alloc(&mut self) -> usize {
        self.free
            .pop()
            .expect("model: out of skb slots (more packets in flight than the test planned)")
    }

    fn addr(&self, slot: usize) -> u64 {
        self.base + slot as u64 * self.size
    }
}

/// One output queue (`struct qeth_qdio_out_q` with qdio's `struct qdio_q`).
struct TxQueue {
    /// The QDIO queue number.
    no: usize,
    bufs: Vec<OutBuf>,
    bulk_start: usize,
    bulk_count: usize,
    bulk_max: usize,
    /// `queue->prev_hdr`: the header of the last packet put in the current bulk.
    prev_hdr: Option<[u8; HEADER_SIZE]>,
    /// qdio's `first_to_check` and `nr_buf_used` of the queue.
    first_to_check: usize,
    used_buffers: usize,
    slots: Slots,
    /// `queue->pending_bufs`: buffers that went PENDING, waiting for their QAOB.
    pending: Vec<PendingBuf>,
    stats: TxStats,
}

/// A buffer that went PENDING: its QAOB, frames, bytes and skbs.
struct PendingBuf {
    aob: u64,
    frames: u64,
    bytes: u64,
    slots: Vec<usize>,
}

/// `struct qeth_rx` and the input `struct qdio_q`, what the model needs of them.
struct Rx {
    /// Free buffer-pool entries (`in_buf_pool`): each is `elements` pages.
    pool_free: Vec<usize>,
    /// The pool entry each input buffer holds.
    entry_of: [Option<usize>; QUEUE_BUFFERS],
    next_buf_to_init: usize,
    /// qdio: `first_to_check`, `nr_buf_used`, and the ACK batch of `inbound_handle_work`.
    first_to_check: usize,
    nr_buf_used: usize,
    batch_start: usize,
    batch_count: usize,
    /// qeth: `b_index`, `b_count`, `qdio_err`, `bufs_refill`.
    b_index: usize,
    b_count: usize,
    qdio_err: bool,
    bufs_refill: usize,
    /// `QDIO_IRQ_DISABLED` in `poll_state`: NAPI is scheduled or running.
    irq_disabled: bool,
    /// The completion queue (input queue 1).
    cq: CqState,
}

/// The completion queue as qdio and qeth keep it (`card->qdio.c_q`).
#[derive(Clone, Copy, Debug, Default)]
struct CqState {
    first_to_check: usize,
    nr_buf_used: usize,
    next_buf_to_init: usize,
}

/// What the input side counted (`struct qeth_card_stats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RxStats {
    /// `rx_packets`.
    pub rx_packets: u64,
    /// `rx_bytes`.
    pub rx_bytes: u64,
    /// `rx_multicast`: multicast and broadcast frames.
    pub rx_multicast: u64,
    /// `rx_bufs`: input buffers processed.
    pub rx_bufs: u64,
    /// `rx_length_errors`: a frame running past the buffer's last element.
    pub rx_length_errors: u64,
    /// `rx_frame_errors`: a header id with `QETH_HEADER_MASK_INVAL`.
    pub rx_frame_errors: u64,
    /// `rx_dropped_notsupp`: a header id qeth does not know.
    pub rx_dropped_notsupp: u64,
    /// `rx_fifo_errors`: buffers in error with sbalf15 0x12 (still parsed).
    pub rx_fifo_errors: u64,
    /// Buffers in error skipped whole (`qeth_check_qdio_errors` true).
    pub rx_error_bufs: u64,
    /// Thin interrupts taken.
    pub interrupts: u64,
    /// Completion-queue buffers processed.
    pub cq_bufs: u64,
    /// QAOBs found on the completion queue.
    pub qaobs: u64,
    /// NAPI polls run.
    pub polls: u64,
}

/// How a card is set up.
#[derive(Clone, Copy, Debug)]
pub struct CardConfig {
    /// The partition.
    pub lpar: u8,
    /// The device's subchannel number.
    pub subchannel: u16,
    /// Output queues the driver uses (2 to 4: `QETH_IQD_MIN_TXQ` to
    /// `QETH_MAX_OUT_QUEUES`; more on a real machine only with more CPUs).
    pub out_queues: usize,
    /// Output queues established with the fabric (`None`: `out_queues`). Only a test
    /// of a driver/device mismatch sets it.
    pub established_queues: Option<usize>,
    /// The maximum frame size (the device's, `qeth_get_mtu_outof_framesize`).
    pub mfs: Mfs,
    /// `in_buf_pool.buf_count` (`QETH_IN_BUF_COUNT_HSDEFAULT` 128 for IQD; 8 to 128).
    pub in_buf_count: usize,
    /// The device's write-multiple depth, byte 31 of its SSQD (`mmwc`; 0 means 1):
    /// `qeth_tx_select_bulk_max`.
    pub mmwc: u8,
    /// The completion queue on (`QETH_CQ_ENABLED`): a second input queue, SIGA WRITEQ
    /// with a QAOB for each single buffer on a unicast queue, and, as
    /// `qeth_l3_hard_start_xmit` has it, AF_IUCV traffic only (IP is dropped).
    pub cq: bool,
    /// Completion-queue buffers handed to the device (`qeth_cq_init`: 127). Only a
    /// test of a full completion queue arms fewer.
    pub cq_buffers: usize,
}

impl CardConfig {
    /// An IQD card with `out_queues` output queues, 16 KiB frames, 128 input buffers,
    /// write-multiple of up to 8 buffers.
    pub fn new(lpar: u8, out_queues: usize) -> Self {
        Self {
            lpar,
            subchannel: 0,
            out_queues,
            established_queues: None,
            mfs: Mfs::K16,
            in_buf_count: 128,
            mmwc: 8,
            cq: false,
            cq_buffers: 127,
        }
    }
}

/// Why `qeth_xmit` refused a packet (it is dropped and counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XmitError {
    /// `-E2BIG`: more elements than a buffer has (`qeth_add_hw_header`).
    TooBig,
    /// `-EBUSY`: the next buffer is not empty (`__qeth_xmit`'s sanity check).
    Busy,
    /// `tx_drop` in `qeth_l3_hard_start_xmit`: IP with the completion queue on, or
    /// AF_IUCV without it.
    Dropped,
}

/// The addresses of a card's structures in its partition's memory.
#[derive(Clone, Copy, Debug)]
struct Layout {
    indicators: u64,
    slsbs: u64,
    in_sbals: u64,
    out_sbals: u64,
    cq_sbals: u64,
    qaobs: u64,
    pool: u64,
    slots: u64,
    slot_size: u64,
    slots_per_queue: usize,
    elements: usize,
}

/// QAOBs a card keeps (`qeth_qaob_cache`): one per output buffer and pending buffer.
const QAOBS: usize = MAX_OUT_QUEUES * QUEUE_BUFFERS + 64;
/// `struct qeth_qaob_priv1` in the QAOB's `user1` (offset 0xF0): `state` (a byte
/// here), then `queue_no` at 0xF4.
const QAOB_PRIV_STATE: u64 = 0xF0;
const QAOB_PRIV_QUEUE: u64 = 0xF4;
/// `QETH_QAOB_ISSUED`, `QETH_QAOB_PENDING`, `QETH_QAOB_DONE`.
const QAOB_ISSUED: u8 = 0;
const QAOB_PENDING: u8 = 1;
const QAOB_DONE: u8 = 2;
/// `aorc` in `struct qaob`.
const QAOB_AORC: u64 = 0x33;

impl Layout {
    fn queue_indicator(&self) -> u64 {
        self.indicators
    }
    fn middle_indicator(&self) -> u64 {
        self.indicators + 0x40
    }
    fn global_indicator(&self) -> u64 {
        self.indicators + 0x80
    }
    fn in_slsb(&self) -> u64 {
        self.slsbs
    }
    fn out_slsb(&self, q: usize) -> u64 {
        self.slsbs + 0x80 * (1 + q as u64)
    }
    fn in_sbal(&self, n: usize) -> u64 {
        self.in_sbals + (n * SBAL_SIZE) as u64
    }
    fn out_sbal(&self, q: usize, n: usize) -> u64 {
        self.out_sbals + ((q * QUEUE_BUFFERS + n) * SBAL_SIZE) as u64
    }
    fn pool_page(&self, entry: usize, i: usize) -> u64 {
        self.pool + ((entry * self.elements + i) * PAGE) as u64
    }
    fn cq_slsb(&self) -> u64 {
        self.slsbs + 0x80 * (1 + MAX_OUT_QUEUES as u64)
    }
    fn cq_sbal(&self, n: usize) -> u64 {
        self.cq_sbals + (n * SBAL_SIZE) as u64
    }
    fn qaob(&self, i: usize) -> u64 {
        self.qaobs + (i * 256) as u64
    }
    fn slots_of(&self, q: usize) -> u64 {
        self.slots + (q * self.slots_per_queue) as u64 * self.slot_size
    }
}

/// One qeth IQD card in one partition.
pub struct Card {
    /// How it was set up.
    pub cfg: CardConfig,
    /// The partition's memory.
    pub ram: GuestRam,
    fab: Arc<TestFabric>,
    lay: Layout,
    /// Output queues by QDIO queue number.
    tx: Vec<Mutex<TxQueue>>,
    rx: Mutex<Rx>,
    /// Free QAOBs (`qeth_qaob_cache`).
    qaob_free: Mutex<Vec<u64>>,
    rx_stats: Mutex<RxStats>,
    /// Card recoveries scheduled (`qeth_schedule_recovery`): after `-EIO` or `-EBUSY`
    /// from a SIGA.
    pub recoveries: AtomicU64,
    /// What the hypervisor registered for the guest, to register again after a
    /// recovery: addresses (SETIP), groups (SETIPM), broadcast.
    registered: Mutex<(Vec<IpAddr>, Vec<IpAddr>, bool)>,
}

impl Card {
    /// Lays the card out in a new partition's memory, makes the partition known and
    /// establishes the queue set, then initialises the queues as
    /// `qeth_init_qdio_queues` (`qeth_core_main.c`) does.
    pub fn new(fab: &Arc<TestFabric>, cfg: CardConfig) -> Self {
        assert!((IQD_MIN_TXQ..=MAX_OUT_QUEUES).contains(&cfg.out_queues));
        let elements = cfg.mfs.rx_elements();
        let bulk_max = usize::from(cfg.mmwc.max(1));
        // Live skbs: the buffers of one bulk and the one being filled, each at most
        // `elements` pages of data plus a page of slack for the data offsets.
        // Packets in flight per queue: the buffers of one bulk, the one being filled
        // and the pending ones (the fabric keeps 8 per queue set), a packet taking at
        // least one element of a buffer.
        let slots_per_queue = (bulk_max + 2 + 9) * elements;
        let sbal_bytes = ((2 + MAX_OUT_QUEUES) * QUEUE_BUFFERS * SBAL_SIZE) as u64;
        let in_sbals = GUEST_BASE + 2 * PAGE as u64;
        let qaobs = in_sbals + sbal_bytes;
        let pool = qaobs + (QAOBS * 256) as u64;
        let slots = pool + (cfg.in_buf_count * elements * PAGE) as u64;
        let lay = Layout {
            indicators: GUEST_BASE,
            slsbs: GUEST_BASE + PAGE as u64,
            in_sbals,
            out_sbals: in_sbals + (QUEUE_BUFFERS * SBAL_SIZE) as u64,
            cq_sbals: in_sbals + ((1 + MAX_OUT_QUEUES) * QUEUE_BUFFERS * SBAL_SIZE) as u64,
            qaobs,
            pool,
            slots,
            slot_size: ((elements + 1) * PAGE) as u64,
            slots_per_queue,
            elements,
        };
        let bytes = (slots - GUEST_BASE) as usize
            + cfg.out_queues * slots_per_queue * lay.slot_size as usize;
        let ram = GuestRam::new(bytes);
        fab.add_partition(cfg.lpar, &[ram.window()]).unwrap();
        let tx = (0..cfg.out_queues)
            .map(|no| {
                Mutex::new(TxQueue {
                    no,
                    bufs: vec![OutBuf::default(); QUEUE_BUFFERS],
                    bulk_start: 0,
                    bulk_count: 0,
                    bulk_max: 1,
                    prev_hdr: None,
                    first_to_check: 0,
                    used_buffers: 0,
                    slots: Slots {
                        base: lay.slots_of(no),
                        size: lay.slot_size,
                        free: (0..slots_per_queue).rev().collect(),
                        turn: no,
                    },
                    pending: Vec::new(),
                    stats: TxStats::default(),
                })
            })
            .collect();
        let card = Self {
            cfg,
            ram,
            fab: fab.clone(),
            lay,
            tx,
            rx: Mutex::new(Rx {
                pool_free: Vec::new(),
                entry_of: [None; QUEUE_BUFFERS],
                next_buf_to_init: 0,
                first_to_check: 0,
                nr_buf_used: 0,
                batch_start: 0,
                batch_count: 0,
                b_index: 0,
                b_count: 0,
                qdio_err: false,
                bufs_refill: 0,
                irq_disabled: false,
                cq: CqState::default(),
            }),
            qaob_free: Mutex::new(Vec::new()),
            rx_stats: Mutex::new(RxStats::default()),
            recoveries: AtomicU64::new(0),
            registered: Mutex::new((Vec::new(), Vec::new(), false)),
        };
        card.establish();
        card
    }

    /// The queue-set parameters the hypervisor passes on for the guest's establish.
    pub fn params(&self) -> QueueSetParams {
        let l = &self.lay;
        let queues = self.cfg.established_queues.unwrap_or(self.cfg.out_queues);
        let sbals = |q: usize| core::array::from_fn(|n| l.out_sbal(q, n));
        QueueSetParams {
            output_sbals: sbals(0),
            input_sbals: core::array::from_fn(|n| l.in_sbal(n)),
            output_slsb: l.out_slsb(0),
            input_slsb: l.in_slsb(),
            queue_indicator: l.queue_indicator(),
            middle_indicator: l.middle_indicator(),
            global_indicator: l.global_indicator(),
            interrupt_immediately: false,
            interrupt_cookie: u64::from(self.cfg.lpar),
            more_outputs: (1..queues)
                .map(|q| QueueAddresses {
                    sbals: sbals(q),
                    slsb: l.out_slsb(q),
                })
                .collect(),
            completion_queue: self.cfg.cq.then(|| QueueAddresses {
                sbals: core::array::from_fn(|n| l.cq_sbal(n)),
                slsb: l.cq_slsb(),
            }),
            ..Default::default()
        }
    }

    /// Rings zeroed (`qdio_reset_buffers`), output SLSBs not initialised, then
    /// `qeth_init_qdio_queues`: the input pool, `buf_count - 1` input buffers handed to
    /// the device from buffer 0, every output queue empty with its bulk depth
    /// (`qeth_tx_select_bulk_max`), and with the completion queue on `qeth_cq_init`:
    /// 127 completion-queue buffers handed to the device from buffer 0.
    fn establish(&self) {
        let l = self.lay;
        self.ram.write(
            l.in_sbals,
            &vec![0; (2 + MAX_OUT_QUEUES) * QUEUE_BUFFERS * SBAL_SIZE],
        );
        self.ram.write(l.qaobs, &vec![0; QAOBS * 256]);
        for q in 0..MAX_OUT_QUEUES {
            self.ram
                .write(l.out_slsb(q), &[SLSB_P_OUTPUT_NOT_INIT; QUEUE_BUFFERS]);
        }
        self.ram
            .write(l.in_slsb(), &[SLSB_P_INPUT_NOT_INIT; QUEUE_BUFFERS]);
        self.ram
            .write(l.cq_slsb(), &[SLSB_P_INPUT_NOT_INIT; QUEUE_BUFFERS]);
        self.ram.write(l.indicators, &[0; 0x100]);
        *self.qaob_free.lock().unwrap() = (0..QAOBS).rev().map(|i| l.qaob(i)).collect();
        self.fab
            .establish(self.cfg.lpar, self.cfg.subchannel, &self.params())
            .expect("establish");
        for (no, txq) in self.tx.iter().enumerate() {
            let mut q = txq.lock().unwrap();
            q.bufs = vec![OutBuf::default(); QUEUE_BUFFERS];
            q.bulk_start = 0;
            q.bulk_count = 0;
            q.prev_hdr = None;
            q.first_to_check = 0;
            q.used_buffers = 0;
            q.pending.clear();
            q.slots.free = (0..l.slots_per_queue).rev().collect();
            // qeth_tx_select_bulk_max: 1 on the multicast queue and with the
            // completion queue on, else the SSQD's mmwc (0 means 1).
            q.bulk_max = if self.is_mcast_queue(no) || self.cfg.cq {
                1
            } else {
                usize::from(self.cfg.mmwc.max(1))
            };
        }
        let mut rx = self.rx.lock().unwrap();
        let count = self.cfg.in_buf_count;
        rx.pool_free = (0..count).rev().collect();
        rx.entry_of = [None; QUEUE_BUFFERS];
        rx.first_to_check = 0;
        rx.nr_buf_used = 0;
        rx.batch_count = 0;
        rx.b_count = 0;
        rx.b_index = 0;
        rx.bufs_refill = 0;
        rx.irq_disabled = false;
        // qeth_init_qdio_queues: "give only as many buffers to hardware as we have
        // buffer pool entries": buf_count - 1 of them, from buffer 0.
        for n in 0..count - 1 {
            assert!(self.init_input_buffer(&mut rx, n));
        }
        rx.next_buf_to_init = (count - 1) % QUEUE_BUFFERS;
        self.add_bufs_to_input_queue(&mut rx, 0, count - 1);
        rx.cq = CqState::default();
        if self.cfg.cq {
            let n = self.cfg.cq_buffers;
            rx.cq.next_buf_to_init = n % QUEUE_BUFFERS;
            self.add_bufs_to_cq(&mut rx, 0, n);
        }
    }

    /// Whether QDIO output queue `no` is the multicast queue: the highest-numbered when
    /// there are two or more (`multicast_outbound`, `drivers/s390/cio/qdio.h`;
    /// `qeth_iqd_is_mcast_queue`, `qeth_core.h`).
    pub fn is_mcast_queue(&self, no: usize) -> bool {
        self.cfg.out_queues > 1 && no == self.cfg.out_queues - 1
    }

    /// SETIP: the hypervisor registers `ip` for the guest.
    pub fn register_ip(&self, ip: IpAddr) {
        self.fab
            .register_address(self.cfg.lpar, self.cfg.subchannel, ip)
            .expect("SETIP");
        self.registered.lock().unwrap().0.push(ip);
    }

    /// SETIPM: joins multicast group `group`.
    pub fn join(&self, group: IpAddr) {
        self.fab
            .register_group(self.cfg.lpar, self.cfg.subchannel, group)
            .expect("SETIPM");
        self.registered.lock().unwrap().1.push(group);
    }

    /// DELIPM: leaves multicast group `group`.
    pub fn leave(&self, group: IpAddr) {
        self.fab
            .deregister_group(self.cfg.lpar, self.cfg.subchannel, group)
            .expect("DELIPM");
        self.registered.lock().unwrap().1.retain(|g| *g != group);
    }

    /// Switches broadcast reception on or off.
    pub fn set_broadcast(&self, on: bool) {
        self.fab
            .set_broadcast(self.cfg.lpar, self.cfg.subchannel, on)
            .expect("broadcast switch");
        self.registered.lock().unwrap().2 = on;
    }

    // -----------------------------------------------------------------------------
    // Memory access as the guest does it: SLSB and indicator bytes atomically.
    // -----------------------------------------------------------------------------

    fn byte(&self, guest: u64) -> &AtomicU8 {
        assert!(guest >= GUEST_BASE && guest < GUEST_BASE + self.ram.len() as u64);
        // SAFETY: the byte lies in the partition's window (asserted), which lives as
        // long as `self.ram`, hence as long as the returned borrow of `self`; the
        // fabric and the model access SLSB and indicator bytes only atomically.
        unsafe {
            &*self
                .ram
                .host()
                .as_ptr()
                .add((guest - GUEST_BASE) as usize)
                .cast()
        }
    }

    fn sbale(&self, sbal: u64, i: usize) -> Sbale {
        let mut raw = [0u8; 16];
        self.ram.read(sbal + (i * 16) as u64, &mut raw);
        Sbale::decode(&raw)
    }

    fn set_sbale(&self, sbal: u64, i: usize, e: &Sbale) {
        self.ram.write(sbal + (i * 16) as u64, &e.encode());
    }

    /// Output queue `q`'s SLSB byte of buffer `n`.
    pub fn out_state(&self, q: usize, n: usize) -> u8 {
        self.byte(self.lay.out_slsb(q) + n as u64)
            .load(Ordering::Acquire)
    }

    /// Input buffer `n`'s SLSB byte.
    pub fn in_state(&self, n: usize) -> u8 {
        self.byte(self.lay.in_slsb() + n as u64)
            .load(Ordering::Acquire)
    }

    /// The sbalf15 byte of output queue `q`'s buffer `n`.
    pub fn out_sbalf15(&self, q: usize, n: usize) -> u8 {
        self.sbale(self.lay.out_sbal(q, n), 15).sflags
    }

    /// Output queue `q`'s counters.
    pub fn tx_stats(&self, q: usize) -> TxStats {
        self.tx[q].lock().unwrap().stats
    }

    /// The sum of every output queue's counters (sbalf15 histogram included).
    pub fn tx_total(&self) -> TxStats {
        let mut t = TxStats::default();
        for q in &self.tx {
            let s = q.lock().unwrap().stats;
            t.tx_packets += s.tx_packets;
            t.tx_bytes += s.tx_bytes;
            t.tx_errors += s.tx_errors;
            t.tx_dropped += s.tx_dropped;
            t.bufs += s.bufs;
            t.bufs_pack += s.bufs_pack;
            t.siga_write += s.siga_write;
            t.siga_writem += s.siga_writem;
            t.busy += s.busy;
            t.busy_delays += s.busy_delays;
            t.target_full += s.target_full;
            t.lnkfail += s.lnkfail;
            t.siga_writeq += s.siga_writeq;
            t.pending += s.pending;
            t.pending_done += s.pending_done;
            for (a, b) in t.sbalf15.iter_mut().zip(s.sbalf15.iter()) {
                *a += b;
            }
            for (a, b) in t.aorc.iter_mut().zip(s.aorc.iter()) {
                *a += b;
            }
        }
        t
    }

    /// The input side's counters.
    pub fn rx_stats(&self) -> RxStats {
        *self.rx_stats.lock().unwrap()
    }

    /// Recoveries scheduled so far.
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::SeqCst)
    }

    // -----------------------------------------------------------------------------
    // Transmit.
    // -----------------------------------------------------------------------------

    /// `qeth_iqd_select_queue` (`qeth_core_main.c`): every packet whose route is not
    /// unicast goes to TX queue 0, the multicast one; unicast to queue 1 when there
    /// are only two, else `netdev_pick_tx` among the others (0 picked means 1).
    pub fn select_queue(&self, pkt: &Packet) -> usize {
        if pkt.route != Route::Unicast {
            return IQD_MCAST_TXQ;
        }
        let n = self.cfg.out_queues;
        if n == IQD_MIN_TXQ {
            return IQD_MIN_UCAST_TXQ;
        }
        let txq = pkt.flow % n;
        if txq == IQD_MCAST_TXQ {
            IQD_MIN_UCAST_TXQ
        } else {
            txq
        }
    }

    /// `qeth_iqd_translate_txq` (`qeth_core.h`): TX queue 0 is the highest QDIO queue
    /// and the highest TX queue QDIO queue 0; the others map to themselves.
    pub fn translate_txq(&self, txq: usize) -> usize {
        let n = self.cfg.out_queues;
        if txq == IQD_MCAST_TXQ {
            n - 1
        } else if txq == n - 1 {
            IQD_MCAST_TXQ
        } else {
            txq
        }
    }

    /// `qeth_l3_hard_start_xmit` → `qeth_l3_xmit` → `qeth_xmit` (`qeth_l3_main.c`,
    /// `qeth_core_main.c`) for one packet; `more` is `netdev_xmit_more()`: the stack
    /// has another packet right behind it, so qeth may hold the buffer back to bulk.
    /// Returns the QDIO queue it went to.
    pub fn xmit(&self, pkt: &Packet, more: bool) -> Result<usize, XmitError> {
        let txq = self.select_queue(pkt);
        if pkt.iucv != self.cfg.cq {
            let queue = self.translate_txq(txq);
            self.tx[queue].lock().unwrap().stats.tx_dropped += 1;
            return Err(XmitError::Dropped);
        }
        let queue = self.translate_txq(txq);
        self.xmit_on(queue, txq, pkt, more)?;
        Ok(queue)
    }

    /// `qeth_xmit` on QDIO queue `queue` as TX queue `txq`; what `xmit` does after
    /// choosing the queue. A test may call it with a queue qeth would not choose.
    pub fn xmit_on(
        &self,
        queue: usize,
        txq: usize,
        pkt: &Packet,
        more: bool,
    ) -> Result<(), XmitError> {
        let hdr = fill_header(txq, pkt);
        self.xmit_header(queue, hdr, pkt, more)
    }

    /// `qeth_xmit` with a header the caller made (a test that breaks what qeth would
    /// write).
    pub fn xmit_header(
        &self,
        queue: usize,
        hdr: [u8; HEADER_SIZE],
        pkt: &Packet,
        more: bool,
    ) -> Result<(), XmitError> {
        let mut q = self.tx[queue].lock().unwrap();
        let r = self.__qeth_xmit(&mut q, hdr, pkt, more);
        if r.is_err() {
            q.stats.tx_dropped += 1;
        }
        // The TX completion: qeth_flush_buffers "fakes the TX completion interrupt"
        // on IQD (napi_schedule of the queue's TX NAPI, qeth_tx_poll); the fabric has
        // completed every buffer a SIGA handled by the time SIGA returns.
        self.tx_poll(&mut q);
        r
    }

    /// Hands every buffer the queue holds back (no more packets follow): what the
    /// stack's last `xmit_more == false` does.
    pub fn flush(&self, queue: usize) {
        let mut q = self.tx[queue].lock().unwrap();
        let cur = (q.bulk_start + q.bulk_count) % QUEUE_BUFFERS;
        if q.bufs[cur].next_element_to_fill > 0 {
            q.bufs[cur].state = BufState::Primed;
            q.bulk_count += 1;
        }
        if q.bulk_count > 0 {
            self.flush_queue(&mut q);
        }
        self.tx_poll(&mut q);
    }

    /// `__qeth_xmit` (`qeth_core_main.c`).
    fn __qeth_xmit(
        &self,
        q: &mut TxQueue,
        hdr: [u8; HEADER_SIZE],
        pkt: &Packet,
        more: bool,
    ) -> Result<(), XmitError> {
        let mut idx = (q.bulk_start + q.bulk_count) % QUEUE_BUFFERS;
        if q.bufs[idx].state != BufState::Empty {
            return Err(XmitError::Busy);
        }
        // qeth_add_hw_header: how many elements the packet takes, where its header goes.
        let (off, elements) = self.hw_header_layout(q, pkt.bytes.len());
        if elements > self.lay.elements {
            // A linear skb too large for one buffer: "Dropped an oversized skb".
            return Err(XmitError::TooBig);
        }
        // qeth_iqd_may_bulk: all packets of a bulk share next hop and VLAN.
        let may_bulk = q
            .prev_hdr
            .is_none_or(|prev| same_next_hop(&prev, &hdr) && same_vlan(&prev, &hdr));
        let mut flush = !may_bulk;
        if flush || q.bufs[idx].next_element_to_fill + elements > self.lay.elements {
            if q.bufs[idx].next_element_to_fill > 0 {
                q.bufs[idx].state = BufState::Primed;
                q.bulk_count += 1;
            }
            if q.bulk_count >= q.bulk_max {
                flush = true;
            }
            if flush {
                self.flush_queue(q);
            }
            idx = (q.bulk_start + q.bulk_count) % QUEUE_BUFFERS;
            if q.bufs[idx].state != BufState::Empty {
                return Err(XmitError::Busy);
            }
        }
        if q.bufs[idx].next_element_to_fill == 0 {
            q.used_buffers += 1;
        }
        let next = self.fill_buffer(q, idx, &hdr, pkt, off);
        q.bufs[idx].bytes += pkt.bytes.len() as u64;
        q.bufs[idx].frames += 1;
        q.prev_hdr = Some(hdr);
        // __netdev_tx_sent_queue: flush unless the stack has more right behind.
        let mut flush = !more;
        if flush || next >= self.lay.elements {
            q.bufs[idx].state = BufState::Primed;
            q.bulk_count += 1;
            if q.bulk_count >= q.bulk_max {
                flush = true;
            }
            if flush {
                self.flush_queue(q);
            }
        }
        Ok(())
    }

    /// `qeth_add_hw_header` for a linear L3 skb (`proto_len` 0, so `contiguous` 1):
    /// the page offset its data starts at, and the elements it takes. The header is
    /// pushed in front of the data when header and first data byte share a page; when
    /// the data is page-aligned it is pushed into the preceding page (its own element);
    /// otherwise it goes to a header-cache object (its own element too).
    fn hw_header_layout(&self, q: &mut TxQueue, len: usize) -> (u64, usize) {
        let off = DATA_OFFSETS[q.slots.turn % DATA_OFFSETS.len()];
        let data_elements = elements_for_range(off, off + len as u64);
        let elements = if off >= HEADER_SIZE as u64 {
            elements_for_range(off - HEADER_SIZE as u64, off + len as u64)
        } else {
            1 + data_elements
        };
        (off, elements)
    }

    /// `qeth_fill_buffer` / `__qeth_fill_buffer` (`qeth_core_main.c`): writes the
    /// packet (and its header) into the skb ring, then its elements into buffer `idx`
    /// from `next_element_to_fill`: split at page boundaries, FIRST / MIDDLE / LAST
    /// fragment flags when it takes several, none when one. Returns the next element.
    fn fill_buffer(
        &self,
        q: &mut TxQueue,
        idx: usize,
        hdr: &[u8; HEADER_SIZE],
        pkt: &Packet,
        off: u64,
    ) -> usize {
        let len = pkt.bytes.len() as u64;
        q.slots.turn += 1;
        let slot = q.slots.alloc();
        q.bufs[idx].slots.push(slot);
        let slot = q.slots.addr(slot);
        let data = slot + PAGE as u64 + off;
        self.ram.write(data, &pkt.bytes);
        let sbal = self.lay.out_sbal(q.no, idx);
        let mut element = q.bufs[idx].next_element_to_fill;
        let put = |element: &mut usize, addr: u64, length: u64, eflags: u8| {
            self.set_sbale(
                sbal,
                *element,
                &Sbale {
                    eflags,
                    length: length as u32,
                    addr,
                    ..Sbale::default()
                },
            );
            *element += 1;
        };
        let first = element;
        let (start, mut is_first) = if off >= HEADER_SIZE as u64 || off == 0 {
            // Pushed: the header sits right before the data (skb_push).
            let h = data - HEADER_SIZE as u64;
            self.ram.write(h, hdr);
            (h, true)
        } else {
            // Header cache: the header alone in an element, FIRST_FRAG (the object
            // sits at the start of the packet's slot).
            let h = slot;
            self.ram.write(h, hdr);
            put(&mut element, h, HEADER_SIZE as u64, SBAL_EFLAGS_FIRST_FRAG);
            (data, false)
        };
        let end = data + len;
        let mut at = start;
        while at < end {
            let n = (PAGE as u64 - at % PAGE as u64).min(end - at);
            let eflags = if is_first {
                is_first = false;
                if at + n < end {
                    SBAL_EFLAGS_FIRST_FRAG
                } else {
                    0
                }
            } else {
                SBAL_EFLAGS_MIDDLE_FRAG
            };
            put(&mut element, at, n, eflags);
            at += n;
        }
        // "if (buffer->element[element - 1].eflags) ... = SBAL_EFLAGS_LAST_FRAG".
        let last = self.sbale(sbal, element - 1);
        if last.eflags != 0 {
            self.set_sbale(
                sbal,
                element - 1,
                &Sbale {
                    eflags: SBAL_EFLAGS_LAST_FRAG,
                    ..last
                },
            );
        }
        debug_assert!(element > first);
        q.bufs[idx].next_element_to_fill = element;
        element
    }

    /// `qeth_flush_queue`: flushes the bulk, the next bulk starts after it.
    fn flush_queue(&self, q: &mut TxQueue) {
        let (start, count) = (q.bulk_start, q.bulk_count);
        self.flush_buffers(q, start, count);
        q.bulk_start = (start + count) % QUEUE_BUFFERS;
        q.prev_hdr = None;
        q.bulk_count = 0;
    }

    /// `qeth_flush_buffers` (`qeth_core_main.c`): LAST_ENTRY on each buffer's last
    /// element; with the completion queue on, a single buffer on a unicast queue gets
    /// a QAOB (allocated once per buffer, its `priv1` state ISSUED); then
    /// `qdio_add_bufs_to_output_queue`; on an error other than `-ENOBUFS` a card
    /// recovery.
    fn flush_buffers(&self, q: &mut TxQueue, index: usize, count: usize) {
        for i in index..index + count {
            let n = i % QUEUE_BUFFERS;
            let sbal = self.lay.out_sbal(q.no, n);
            let last = q.bufs[n].next_element_to_fill - 1;
            let mut e = self.sbale(sbal, last);
            e.eflags |= SBAL_EFLAGS_LAST_ENTRY;
            self.set_sbale(sbal, last, &e);
            q.stats.bufs += 1;
            if q.bufs[n].frames > 1 {
                q.stats.bufs_pack += 1;
            }
        }
        let mut aob = None;
        if self.cfg.cq && !self.is_mcast_queue(q.no) && count == 1 {
            let buf = &mut q.bufs[index % QUEUE_BUFFERS];
            if buf.aob.is_none() {
                // kmem_cache_zalloc(qeth_qaob_cache)
                buf.aob = self.qaob_free.lock().unwrap().pop();
                if let Some(a) = buf.aob {
                    self.ram.write(a, &[0; 256]);
                }
            }
            if let Some(a) = buf.aob {
                self.byte(a + QAOB_PRIV_STATE)
                    .store(QAOB_ISSUED, Ordering::Release);
                self.byte(a + QAOB_PRIV_QUEUE)
                    .store(q.no as u8, Ordering::Release);
                aob = Some(a);
            }
        }
        match self.add_bufs_to_output_queue(q, index, count, aob) {
            Ok(()) | Err(Errno::NoBufs) => {}
            Err(Errno::Io) | Err(Errno::Busy) => {
                // "this must not happen under normal circumstances. if it happens
                // something is really wrong -> recover"
                self.recoveries.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// `qdio_add_bufs_to_output_queue` → `handle_outbound` (`qdio_main.c`): the
    /// buffers primed (0x62, after their SBALs: release), then on IQD
    /// `qdio_kick_outbound_q`.
    fn add_bufs_to_output_queue(
        &self,
        q: &mut TxQueue,
        bufnr: usize,
        count: usize,
        aob: Option<u64>,
    ) -> Result<(), Errno> {
        for i in bufnr..bufnr + count {
            self.byte(self.lay.out_slsb(q.no) + (i % QUEUE_BUFFERS) as u64)
                .store(SLSB_CU_OUTPUT_PRIMED, Ordering::Release);
        }
        self.kick_outbound_q(q, count, aob)
    }

    /// `qdio_kick_outbound_q` with `qdio_siga_output` (`qdio_main.c`): the function is
    /// WRITEM for more than one buffer on a unicast queue, else WRITEQ when the buffer
    /// has a QAOB, else WRITE (always WRITE on the multicast queue); the mask names
    /// this queue alone. A busy answer is re-issued for up to `QDIO_BUSY_BIT_PATIENCE`;
    /// still busy, the round is repeated after `mdelay(10)`, up to
    /// `QDIO_BUSY_BIT_RETRIES` rounds, then `-EBUSY`. cc2 without the busy bit is
    /// `-ENOBUFS`, cc1 and cc3 `-EIO`.
    fn kick_outbound_q(
        &self,
        q: &mut TxQueue,
        count: usize,
        aob: Option<u64>,
    ) -> Result<(), Errno> {
        let mcast = self.is_mcast_queue(q.no);
        let function = match aob {
            _ if !mcast && count > 1 => SigaFunction::WriteMultiple,
            Some(_) if !mcast => SigaFunction::WriteQ,
            _ => SigaFunction::Write,
        };
        let mask = 1u32 << (31 - q.no);
        let port = self.fab.port(self.cfg.lpar);
        let mut retries = 0;
        loop {
            let mut start: Option<Instant> = None;
            let status = loop {
                let s = match function {
                    SigaFunction::WriteQ => {
                        q.stats.siga_writeq += 1;
                        port.siga_writeq(self.cfg.subchannel, mask, aob.unwrap_or(0))
                    }
                    f => {
                        if f == SigaFunction::Write {
                            q.stats.siga_write += 1;
                        } else {
                            q.stats.siga_writem += 1;
                        }
                        port.siga(self.cfg.subchannel, f, mask)
                    }
                };
                if s.is_busy() {
                    q.stats.busy += 1;
                    match start {
                        None => {
                            start = Some(Instant::now());
                            continue;
                        }
                        Some(t) if t.elapsed() < BUSY_BIT_PATIENCE => continue,
                        Some(_) => {}
                    }
                }
                break s;
            };
            return match status.condition_code {
                ConditionCode::Cc0 => Ok(()),
                ConditionCode::Cc2 if status.is_busy() => {
                    retries += 1;
                    if retries < BUSY_BIT_RETRIES {
                        q.stats.busy_delays += 1;
                        std::thread::sleep(BUSY_BIT_RETRY_DELAY);
                        continue;
                    }
                    Err(Errno::Busy)
                }
                ConditionCode::Cc2 => Err(Errno::NoBufs),
                ConditionCode::Cc1 | ConditionCode::Cc3 => Err(Errno::Io),
            };
        }
    }

    /// Output queue `q`'s TX completion now (what the queue's NAPI would do).
    pub fn reap(&self, queue: usize) {
        let mut q = self.tx[queue].lock().unwrap();
        self.tx_poll(&mut q);
    }

    /// `qeth_tx_poll` (`qeth_core_main.c`) over `qdio_inspect_output_queue` /
    /// `get_outbound_buffer_frontier` (`qdio_main.c`): first the pending buffers whose
    /// QAOB completed (`qeth_tx_complete_pending_bufs`), then from `first_to_check`
    /// runs of buffers in one state: 0xA1 complete without error, 0xAF with
    /// `QDIO_ERROR_SLSB_STATE` (`process_buffer_error` counts `target_full` when the
    /// run's first buffer reads 0x10), 0xA3 with `QDIO_ERROR_SLSB_PENDING`; a primed
    /// buffer ends the scan. For each completed buffer `qeth_handle_send_error` (a
    /// trace only) and `qeth_iqd_tx_complete`. Nothing is re-sent.
    fn tx_poll(&self, q: &mut TxQueue) {
        self.complete_pending_bufs(q, false);
        while q.used_buffers > 0 {
            let start = q.first_to_check;
            let state = self.out_state(q.no, start);
            match state {
                SLSB_P_OUTPUT_EMPTY | SLSB_P_OUTPUT_ERROR | SLSB_P_OUTPUT_PENDING => {}
                // Primed (the device has not handled it) or anything else: wait.
                _ => break,
            }
            let mut run = 1;
            while run < q.used_buffers
                && self.out_state(q.no, (start + run) % QUEUE_BUFFERS) == state
            {
                run += 1;
            }
            let error = state == SLSB_P_OUTPUT_ERROR;
            if error && self.out_sbalf15(q.no, start) == 0x10 {
                q.stats.target_full += 1;
            }
            for i in start..start + run {
                let n = i % QUEUE_BUFFERS;
                if error {
                    // qeth_handle_send_error: 15-31 traced quietly, others "lnkfail".
                    let f15 = self.out_sbalf15(q.no, n);
                    q.stats.sbalf15[usize::from(f15)] += 1;
                    if !(15..=31).contains(&f15) {
                        q.stats.lnkfail += 1;
                    }
                }
                if state == SLSB_P_OUTPUT_PENDING {
                    self.iqd_tx_complete_pending(q, n);
                } else {
                    self.clear_output_buffer(q, n, error);
                }
            }
            q.used_buffers -= run;
            q.first_to_check = (start + run) % QUEUE_BUFFERS;
        }
    }

    /// `qeth_clear_output_buffer` → `qeth_tx_complete_buf`: `tx_errors`, or
    /// `tx_packets` and `tx_bytes`; the skbs freed, the buffer scrubbed and empty (its
    /// QAOB stays attached for re-use).
    fn clear_output_buffer(&self, q: &mut TxQueue, n: usize, error: bool) {
        let buf = std::mem::take(&mut q.bufs[n]);
        if error {
            q.stats.tx_errors += buf.frames;
        } else {
            q.stats.tx_packets += buf.frames;
            q.stats.tx_bytes += buf.bytes;
        }
        q.slots.free.extend(buf.slots);
        self.scrub(q.no, n);
        q.bufs[n].aob = buf.aob;
    }

    /// `qeth_iqd_tx_complete` for a PENDING buffer: without a QAOB a recovery; if
    /// the QAOB has not completed yet (`xchg(priv->state, PENDING) != DONE`) the SBAL
    /// is scrubbed and the slot gets a new buffer at once, the old one (skbs, QAOB)
    /// waits on the pending list; if it has, its `aorc` decides the error and the
    /// QAOB is cleared.
    fn iqd_tx_complete_pending(&self, q: &mut TxQueue, n: usize) {
        let Some(aob) = q.bufs[n].aob else {
            // "Pending TX buffer %#x without QAOB on TX queue %u"
            self.recoveries.fetch_add(1, Ordering::SeqCst);
            return;
        };
        if self
            .byte(aob + QAOB_PRIV_STATE)
            .swap(QAOB_PENDING, Ordering::AcqRel)
            != QAOB_DONE
        {
            q.stats.pending += 1;
            self.scrub(q.no, n);
            let buf = std::mem::take(&mut q.bufs[n]);
            q.pending.push(PendingBuf {
                aob,
                frames: buf.frames,
                bytes: buf.bytes,
                slots: buf.slots,
            });
            return;
        }
        let aorc = self.byte(aob + QAOB_AORC).load(Ordering::Acquire);
        q.stats.aorc[usize::from(aorc)] += 1;
        self.ram.write(aob, &[0; 256]);
        self.clear_output_buffer(q, n, aorc != 0);
    }

    /// `qeth_tx_complete_pending_bufs`: every pending buffer whose QAOB is DONE (all
    /// of them when draining) completes: `qeth_tx_complete_buf` with `error = drain`
    /// (a QAOB's `aorc` only chooses the AF_IUCV notification, as
    /// `qeth_compute_cq_notification`), the skbs and the QAOB freed.
    fn complete_pending_bufs(&self, q: &mut TxQueue, drain: bool) {
        let mut k = 0;
        while k < q.pending.len() {
            let aob = q.pending[k].aob;
            if !drain && self.byte(aob + QAOB_PRIV_STATE).load(Ordering::Acquire) != QAOB_DONE {
                k += 1;
                continue;
            }
            let p = q.pending.remove(k);
            if drain {
                q.stats.tx_errors += p.frames;
            } else {
                let aorc = self.byte(aob + QAOB_AORC).load(Ordering::Acquire);
                q.stats.aorc[usize::from(aorc)] += 1;
                q.stats.tx_packets += p.frames;
                q.stats.tx_bytes += p.bytes;
            }
            q.stats.pending_done += 1;
            q.slots.free.extend(p.slots);
            self.qaob_free.lock().unwrap().push(aob);
        }
    }

    /// Buffers of output queue `queue` on the pending list.
    pub fn pending(&self, queue: usize) -> usize {
        self.tx[queue].lock().unwrap().pending.len()
    }

    /// The QAOBs of output queue `queue`'s pending buffers.
    pub fn pending_qaobs(&self, queue: usize) -> Vec<u64> {
        self.tx[queue]
            .lock()
            .unwrap()
            .pending
            .iter()
            .map(|p| p.aob)
            .collect()
    }

    /// A QAOB's `aorc` byte.
    pub fn qaob_aorc(&self, aob: u64) -> u8 {
        self.byte(aob + QAOB_AORC).load(Ordering::Acquire)
    }

    /// `qeth_scrub_qdio_buffer`: the elements in use zeroed, sflags of 14 and 15 too.
    fn scrub(&self, q: usize, n: usize) {
        let sbal = self.lay.out_sbal(q, n);
        self.ram.write(sbal, &vec![0; self.lay.elements * 16]);
        for i in [14, 15] {
            let e = self.sbale(sbal, i);
            self.set_sbale(sbal, i, &Sbale { sflags: 0, ..e });
        }
    }

    /// The driver's part of a write-multiple over several queues, which qeth never
    /// issues: puts `pkt` alone into the next buffer of QDIO queue `queue` and primes it
    /// (as `qeth_flush_buffers` before its SIGA) without any SIGA. Returns the buffer.
    pub fn prime_only(&self, queue: usize, txq: usize, pkt: &Packet) -> usize {
        let mut q = self.tx[queue].lock().unwrap();
        assert_eq!(q.bulk_count, 0, "prime_only on a queue with a bulk open");
        let idx = q.bulk_start;
        assert_eq!(q.bufs[idx].state, BufState::Empty);
        let hdr = fill_header(txq, pkt);
        let (off, elements) = self.hw_header_layout(&mut q, pkt.bytes.len());
        assert!(elements <= self.lay.elements);
        q.used_buffers += 1;
        let last = self.fill_buffer(&mut q, idx, &hdr, pkt, off) - 1;
        q.bufs[idx].bytes += pkt.bytes.len() as u64;
        q.bufs[idx].frames += 1;
        q.bufs[idx].state = BufState::Primed;
        let sbal = self.lay.out_sbal(queue, idx);
        let mut e = self.sbale(sbal, last);
        e.eflags |= SBAL_EFLAGS_LAST_ENTRY;
        self.set_sbale(sbal, last, &e);
        q.stats.bufs += 1;
        self.byte(self.lay.out_slsb(queue) + idx as u64)
            .store(SLSB_CU_OUTPUT_PRIMED, Ordering::Release);
        q.bulk_start = (idx + 1) % QUEUE_BUFFERS;
        idx
    }

    /// A card recovery as `qeth_recover` does it, in what reaches the fabric: the
    /// device set offline (`qdio_shutdown`: the queue set deregistered, the queued
    /// buffers dropped and counted as errors by `qeth_drain_output_queues`), then
    /// online again: established anew, addresses and groups registered again.
    /// A queue set the hypervisor already removed is simply gone.
    pub fn recover(&self) {
        match self
            .fab
            .deregister_queue_set(self.cfg.lpar, self.cfg.subchannel)
        {
            Ok(_) | Err(iqdio::RegistrationError::NotFound) => {}
            Err(e) => panic!("qdio_shutdown: {e:?}"),
        }
        for txq in &self.tx {
            // qeth_drain_output_queue: the pending buffers first, then every buffer.
            let mut guard = txq.lock().unwrap();
            let q = &mut *guard;
            self.complete_pending_bufs(q, true);
            for b in q.bufs.iter_mut() {
                if b.next_element_to_fill > 0 {
                    q.stats.tx_errors += b.frames;
                }
                *b = OutBuf::default();
            }
        }
        self.establish();
        let (ips, groups, bcast) = self.registered.lock().unwrap().clone();
        for ip in ips {
            self.fab
                .register_address(self.cfg.lpar, self.cfg.subchannel, ip)
                .expect("SETIP after recovery");
        }
        for g in groups {
            self.fab
                .register_group(self.cfg.lpar, self.cfg.subchannel, g)
                .expect("SETIPM after recovery");
        }
        if bcast {
            self.fab
                .set_broadcast(self.cfg.lpar, self.cfg.subchannel, true)
                .expect("broadcast after recovery");
        }
    }

    // -----------------------------------------------------------------------------
    // Receive.
    // -----------------------------------------------------------------------------

    /// `qeth_init_input_buffer` (`qeth_core_main.c`): a free pool entry's pages into
    /// input buffer `n`'s elements, 4 KiB each, LAST_ENTRY on the last; false when the
    /// pool has none free.
    fn init_input_buffer(&self, rx: &mut Rx, n: usize) -> bool {
        let entry = match rx.entry_of[n] {
            Some(e) => e,
            None => match rx.pool_free.pop() {
                Some(e) => e,
                None => return false,
            },
        };
        rx.entry_of[n] = Some(entry);
        let sbal = self.lay.in_sbal(n);
        for i in 0..self.lay.elements {
            self.set_sbale(
                sbal,
                i,
                &Sbale {
                    eflags: if i + 1 == self.lay.elements {
                        SBAL_EFLAGS_LAST_ENTRY
                    } else {
                        0
                    },
                    length: PAGE as u32,
                    addr: self.lay.pool_page(entry, i),
                    ..Sbale::default()
                },
            );
        }
        true
    }

    /// `qdio_add_bufs_to_input_queue` → `handle_inbound` (`qdio_main.c`): buffers
    /// returned to the device leave the ACK batch; their SLSB bytes become 0x41
    /// (release: after their SBALs). IQD needs no SIGA read.
    fn add_bufs_to_input_queue(&self, rx: &mut Rx, bufnr: usize, count: usize) {
        // overlap = min(count - sub_buf(batch_start, bufnr), batch_count)
        let ahead = (rx.batch_start + QUEUE_BUFFERS - bufnr) % QUEUE_BUFFERS;
        let overlap = (count as isize - ahead as isize).min(rx.batch_count as isize);
        if overlap > 0 {
            rx.batch_start = (rx.batch_start + overlap as usize) % QUEUE_BUFFERS;
            rx.batch_count -= overlap as usize;
        }
        for i in bufnr..bufnr + count {
            self.byte(self.lay.in_slsb() + (i % QUEUE_BUFFERS) as u64)
                .store(SLSB_CU_INPUT_EMPTY, Ordering::Release);
        }
        rx.nr_buf_used += count;
    }

    /// `qeth_rx_refill_queue`: only from `QETH_IN_BUF_REQUEUE_THRESHOLD` (half the
    /// pool) on, "to avoid SIGAs"; returns the buffers handed back.
    fn rx_refill_queue(&self, rx: &mut Rx, count: usize) -> usize {
        if count < self.cfg.in_buf_count / 2 {
            return 0;
        }
        let mut newcount = 0;
        for i in rx.next_buf_to_init..rx.next_buf_to_init + count {
            if !self.init_input_buffer(rx, i % QUEUE_BUFFERS) {
                break;
            }
            newcount += 1;
        }
        if newcount > 0 {
            let start = rx.next_buf_to_init;
            self.add_bufs_to_input_queue(rx, start, newcount);
            rx.next_buf_to_init = (start + newcount) % QUEUE_BUFFERS;
        }
        newcount
    }

    /// The thin-interrupt handler, `tiqdio_thinint_handler` (`qdio_thinint.c`) for a
    /// device with its own indicator, in iqdio's three tiers: the summary bytes reset
    /// high → low, then `xchg(dsci, 0)`; when it was set, `qdio_deliver_irq` →
    /// `qeth_qdio_poll` schedules NAPI unless it already runs (`QDIO_IRQ_DISABLED`).
    /// Returns whether NAPI was scheduled.
    pub fn thinint(&self) -> bool {
        let l = &self.lay;
        self.byte(l.global_indicator()).swap(0, Ordering::AcqRel);
        self.byte(l.middle_indicator()).swap(0, Ordering::AcqRel);
        let dsci = self.byte(l.queue_indicator()).swap(0, Ordering::AcqRel);
        self.rx_stats.lock().unwrap().interrupts += 1;
        if dsci == 0 {
            return false;
        }
        let mut rx = self.rx.lock().unwrap();
        !std::mem::replace(&mut rx.irq_disabled, true)
    }

    /// `qeth_poll` (`qeth_core_main.c`) with `budget` frames: `qeth_rx_poll`, the
    /// refill backlog, then, with budget left, `napi_complete_done` and
    /// `qdio_start_irq` (stop polling: the ACK batch to 0x80, then the indicator and
    /// the next buffer checked again). Returns the frames handed up and whether NAPI
    /// must run again.
    pub fn napi_poll(&self, budget: usize, sink: &mut dyn FnMut(RxFrame)) -> (usize, bool) {
        let mut rx = self.rx.lock().unwrap();
        rx.irq_disabled = true;
        self.rx_stats.lock().unwrap().polls += 1;
        let work = self.rx_poll(&mut rx, budget, sink);
        if self.cfg.cq {
            self.cq_poll(&mut rx);
        }
        let backlog = rx.bufs_refill;
        rx.bufs_refill -= self.rx_refill_queue(&mut rx, backlog);
        if work >= budget {
            return (work, true);
        }
        // qdio_start_irq: clear_nonshared_ind (with iqdio's tiers: the summary bytes
        // high → low, then the device's own), qdio_stop_polling, then re-check "to not
        // lose initiative after resetting the ACK state".
        let l = &self.lay;
        self.byte(l.global_indicator()).swap(0, Ordering::AcqRel);
        self.byte(l.middle_indicator()).swap(0, Ordering::AcqRel);
        self.byte(l.queue_indicator()).swap(0, Ordering::AcqRel);
        if rx.batch_count > 0 {
            for i in rx.batch_start..rx.batch_start + rx.batch_count {
                self.byte(self.lay.in_slsb() + (i % QUEUE_BUFFERS) as u64)
                    .store(SLSB_P_INPUT_NOT_INIT, Ordering::Release);
            }
            rx.batch_count = 0;
        }
        rx.irq_disabled = false;
        let ind = self
            .byte(self.lay.queue_indicator())
            .load(Ordering::Acquire)
            != 0;
        let work_in = |slsb: u64, first: usize, used: usize| {
            let state = self.byte(slsb + first as u64).load(Ordering::Acquire);
            used > 0 && (state == SLSB_P_INPUT_PRIMED || state == SLSB_P_INPUT_ERROR)
        };
        let more = work_in(self.lay.in_slsb(), rx.first_to_check, rx.nr_buf_used)
            || (self.cfg.cq
                && work_in(self.lay.cq_slsb(), rx.cq.first_to_check, rx.cq.nr_buf_used));
        if ind || more {
            rx.irq_disabled = true;
            return (work, true);
        }
        (work, false)
    }

    /// Everything the handler and NAPI do for one interrupt: the handler, then polls
    /// until NAPI completes. Returns the frames handed up.
    pub fn service(&self, sink: &mut dyn FnMut(RxFrame)) -> usize {
        if !self.thinint() {
            return 0;
        }
        let mut total = 0;
        loop {
            let (work, again) = self.napi_poll(NAPI_BUDGET, sink);
            total += work;
            if !again {
                return total;
            }
        }
    }

    /// The inner `qeth_rx_poll`: fetches completed input buffers with
    /// `qdio_inspect_input_queue`, processes each (`qeth_extract_skbs`, or skipped by
    /// `qeth_check_qdio_errors`), returns its pool entry and refills at the threshold.
    fn rx_poll(&self, rx: &mut Rx, mut budget: usize, sink: &mut dyn FnMut(RxFrame)) -> usize {
        let mut work = 0;
        while budget > 0 {
            if rx.b_count == 0 {
                let (start, count, err) = self.inspect_input_queue(rx);
                if count == 0 {
                    break;
                }
                rx.b_index = start;
                rx.b_count = count;
                rx.qdio_err = err;
            }
            let n = rx.b_index;
            let sbal = self.lay.in_sbal(n);
            let skip = rx.qdio_err && {
                // qeth_check_qdio_errors: only 0x12 is still parsed (rx_fifo_errors).
                let f15 = self.sbale(sbal, 15).sflags;
                let mut st = self.rx_stats.lock().unwrap();
                if f15 == 0x12 {
                    st.rx_fifo_errors += 1;
                    false
                } else {
                    st.rx_error_bufs += 1;
                    true
                }
            };
            if !skip {
                let done = self.extract_skbs(sbal, sink);
                work += done;
                budget = budget.saturating_sub(done);
            }
            self.rx_stats.lock().unwrap().rx_bufs += 1;
            if let Some(e) = rx.entry_of[n].take() {
                rx.pool_free.push(e);
            }
            rx.b_count -= 1;
            rx.bufs_refill += 1;
            let want = rx.bufs_refill;
            rx.bufs_refill -= self.rx_refill_queue(rx, want);
            rx.b_index = (n + 1) % QUEUE_BUFFERS;
        }
        work
    }

    /// `qdio_inspect_input_queue` → `get_inbound_buffer_frontier` (`qdio_main.c`): the
    /// run of buffers from `first_to_check` in one state. Primed (0x82) or error
    /// (0x8F): `inbound_handle_work` ACKs the newest (0x81) and adds the run to the
    /// batch; the run is the driver's. Anything else: nothing new.
    fn inspect_input_queue(&self, rx: &mut Rx) -> (usize, usize, bool) {
        let count = rx.nr_buf_used.min(QUEUE_BUFFERS);
        if count == 0 {
            return (0, 0, false);
        }
        let start = rx.first_to_check;
        let state = self.in_state(start);
        let err = match state {
            SLSB_P_INPUT_PRIMED => false,
            SLSB_P_INPUT_ERROR => true,
            _ => return (0, 0, false),
        };
        let mut run = 1;
        while run < count && self.in_state((start + run) % QUEUE_BUFFERS) == state {
            run += 1;
        }
        self.byte(self.lay.in_slsb() + ((start + run - 1) % QUEUE_BUFFERS) as u64)
            .store(SLSB_P_INPUT_ACK, Ordering::Release);
        if rx.batch_count == 0 {
            rx.batch_start = start;
        }
        rx.batch_count += run;
        rx.nr_buf_used -= run;
        rx.first_to_check = (start + run) % QUEUE_BUFFERS;
        (start, run, err)
    }

    /// `qeth_extract_skbs` / `qeth_extract_skb` (`qeth_core_main.c`) and
    /// `qeth_l3_rebuild_skb` (`qeth_l3_main.c`): frames one after another through the
    /// elements; a header never crosses an element (an element with fewer than 32
    /// bytes left is stepped over), a packet may; `LAST_ENTRY` ends the buffer.
    /// Returns the frames handed up.
    fn extract_skbs(&self, sbal: u64, sink: &mut dyn FnMut(RxFrame)) -> usize {
        let mut frames = 0;
        let mut el = 0usize;
        let mut offset = 0usize;
        loop {
            let mut e = self.sbale(sbal, el);
            while (e.length as usize) < offset + HEADER_SIZE {
                if e.is_last_entry() || el == 15 {
                    return frames; // -ENODATA: the buffer is done
                }
                el += 1;
                e = self.sbale(sbal, el);
                offset = 0;
            }
            let mut hdr = [0u8; HEADER_SIZE];
            self.ram.read(e.addr + offset as u64, &mut hdr);
            offset += HEADER_SIZE;
            if hdr[0] != HEADER_TYPE_LAYER3 {
                let mut st = self.rx_stats.lock().unwrap();
                if hdr[0] & HEADER_MASK_INVAL != 0 {
                    st.rx_frame_errors += 1;
                } else {
                    st.rx_dropped_notsupp += 1;
                }
                // "Can't determine packet length, drop the whole buffer."
                return frames;
            }
            let len = usize::from(u16::from_be_bytes([hdr[8], hdr[9]]));
            let mut packet = Vec::with_capacity(len);
            let mut left = len;
            while left > 0 {
                let n = left.min(e.length as usize - offset);
                let at = packet.len();
                packet.resize(at + n, 0);
                self.ram.read(e.addr + offset as u64, &mut packet[at..]);
                left -= n;
                offset += n;
                if left > 0 {
                    if e.is_last_entry() || el == 15 {
                        // "unexeob": the packet runs past the buffer.
                        self.rx_stats.lock().unwrap().rx_length_errors += 1;
                        return frames;
                    }
                    el += 1;
                    e = self.sbale(sbal, el);
                    offset = 0;
                }
            }
            let cast = hdr[1] & HDR_CAST_MASK;
            let next_hop = if hdr[1] & HDR_IPV6 != 0 {
                let mut a = [0u8; 16];
                a.copy_from_slice(&hdr[16..32]);
                IpAddr::V6(Ipv6Addr::from(a))
            } else {
                IpAddr::V4(Ipv4Addr::new(hdr[28], hdr[29], hdr[30], hdr[31]))
            };
            let vlan = (hdr[0x0B] & HDR_EXT_VLAN_FRAME != 0)
                .then(|| u16::from_be_bytes([hdr[0x0C], hdr[0x0D]]));
            {
                let mut st = self.rx_stats.lock().unwrap();
                st.rx_packets += 1;
                st.rx_bytes += len as u64;
                if cast == CAST_MULTICAST || cast == CAST_BROADCAST {
                    st.rx_multicast += 1;
                }
            }
            sink(RxFrame {
                cast,
                next_hop,
                vlan,
                packet,
            });
            frames += 1;
        }
    }

    /// `qeth_cq_poll`: completion-queue buffers the device filled, each handed to
    /// `qeth_qdio_cq_handler`: every element's address up to the first 0 is a QAOB
    /// (`qeth_qdio_handle_aob`), then the buffer is scrubbed and handed back at once.
    /// A buffer in error means a recovery.
    fn cq_poll(&self, rx: &mut Rx) {
        let slsb = self.lay.cq_slsb();
        loop {
            // qdio_inspect_input_queue(cdev, 1, ...): the run in one state from
            // first_to_check, the newest ACKed.
            let cq = rx.cq;
            if cq.nr_buf_used == 0 {
                return;
            }
            let start = cq.first_to_check;
            let state = self.byte(slsb + start as u64).load(Ordering::Acquire);
            if state != SLSB_P_INPUT_PRIMED && state != SLSB_P_INPUT_ERROR {
                return;
            }
            let mut run = 1;
            while run < cq.nr_buf_used
                && self
                    .byte(slsb + ((start + run) % QUEUE_BUFFERS) as u64)
                    .load(Ordering::Acquire)
                    == state
            {
                run += 1;
            }
            self.byte(slsb + ((start + run - 1) % QUEUE_BUFFERS) as u64)
                .store(SLSB_P_INPUT_ACK, Ordering::Release);
            rx.cq.nr_buf_used -= run;
            rx.cq.first_to_check = (start + run) % QUEUE_BUFFERS;
            if state == SLSB_P_INPUT_ERROR {
                self.recoveries.fetch_add(1, Ordering::SeqCst);
                return;
            }
            for i in start..start + run {
                let sbal = self.lay.cq_sbal(i % QUEUE_BUFFERS);
                for e in 0..16 {
                    let addr = self.sbale(sbal, e).addr;
                    if addr == 0 {
                        break;
                    }
                    self.handle_aob(addr);
                }
                self.ram.write(sbal, &[0; SBAL_SIZE]);
                self.rx_stats.lock().unwrap().cq_bufs += 1;
            }
            let next = rx.cq.next_buf_to_init;
            self.add_bufs_to_cq(rx, next, run);
            rx.cq.next_buf_to_init = (next + run) % QUEUE_BUFFERS;
        }
    }

    /// `qdio_add_bufs_to_input_queue` for the completion queue.
    fn add_bufs_to_cq(&self, rx: &mut Rx, bufnr: usize, count: usize) {
        for i in bufnr..bufnr + count {
            self.byte(self.lay.cq_slsb() + (i % QUEUE_BUFFERS) as u64)
                .store(SLSB_CU_INPUT_EMPTY, Ordering::Release);
        }
        rx.cq.nr_buf_used += count;
    }

    /// `qeth_qdio_handle_aob`: the QAOB's `priv1` state becomes DONE; if the buffer
    /// was PENDING already, the TX queue's NAPI runs (`qeth_tx_poll`, which completes
    /// it from the pending list).
    fn handle_aob(&self, aob: u64) {
        let l = &self.lay;
        assert!(
            aob >= l.qaobs && aob < l.qaob(QAOBS) && (aob - l.qaobs).is_multiple_of(256),
            "the fabric posted {aob:#x}, not one of this card's QAOBs"
        );
        self.rx_stats.lock().unwrap().qaobs += 1;
        let queue_no = usize::from(self.byte(aob + QAOB_PRIV_QUEUE).load(Ordering::Acquire));
        if self
            .byte(aob + QAOB_PRIV_STATE)
            .swap(QAOB_DONE, Ordering::AcqRel)
            == QAOB_PENDING
            && queue_no < self.cfg.out_queues
        {
            let mut q = self.tx[queue_no].lock().unwrap();
            self.tx_poll(&mut q);
        }
    }

    /// Input buffers the device holds (handed to it, not yet seen back).
    pub fn rx_buffers_with_device(&self) -> usize {
        self.rx.lock().unwrap().nr_buf_used
    }
}

/// The error a qdio call returns to qeth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Errno {
    /// `-EIO`: cc1 or cc3.
    Io,
    /// `-EBUSY`: busy after every retry.
    Busy,
    /// `-ENOBUFS`: cc2 without the busy bit, ignored by qeth.
    NoBufs,
}

/// `qeth_get_elements_for_range` (`qeth_core_main.c`): pages `[start, end)` touches.
fn elements_for_range(start: u64, end: u64) -> usize {
    let p = PAGE as u64;
    (end.div_ceil(p) - start / p) as usize
}

/// `qeth_l3_fill_header` (`qeth_l3_main.c`) for an IQD device: id layer 3, length of
/// the packet, the VLAN tag with `QETH_HDR_EXT_VLAN_FRAME`, the cast forced to unicast
/// unless the packet is on TX queue 0 (the multicast queue), the next hop (IPv4 in
/// bytes 28-31; IPv6 all 16 bytes with `QETH_HDR_IPV6`).
pub fn fill_header(txq: usize, pkt: &Packet) -> [u8; HEADER_SIZE] {
    let mut h = [0u8; HEADER_SIZE];
    h[0] = HEADER_TYPE_LAYER3;
    h[8..10].copy_from_slice(&(pkt.bytes.len() as u16).to_be_bytes());
    if let Some(tag) = pkt.vlan {
        h[0x0B] |= HDR_EXT_VLAN_FRAME;
        h[0x0C..0x0E].copy_from_slice(&tag.to_be_bytes());
    }
    let cast = if txq != IQD_MCAST_TXQ {
        Route::Unicast
    } else {
        pkt.route
    };
    h[1] |= cast.cast_flag();
    match pkt.dst {
        IpAddr::V4(v4) => h[28..32].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => {
            h[16..32].copy_from_slice(&v6.octets());
            h[1] |= HDR_IPV6;
        }
    }
    h
}

/// `qeth_l3_same_next_hop` (`qeth_core.h`).
fn same_next_hop(a: &[u8; HEADER_SIZE], b: &[u8; HEADER_SIZE]) -> bool {
    (a[1] ^ b[1]) & HDR_IPV6 == 0 && a[16..32] == b[16..32]
}

/// `qeth_l3_iqd_same_vlan` (`qeth_core.h`).
fn same_vlan(a: &[u8; HEADER_SIZE], b: &[u8; HEADER_SIZE]) -> bool {
    (a[0x0B] ^ b[0x0B]) & HDR_EXT_VLAN_FRAME == 0 && a[0x0C..0x0E] == b[0x0C..0x0E]
}
