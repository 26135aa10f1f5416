//! The hostile partition's virtio cases (issue 16): in its refusal run the hypervisor
//! gives it a virtio-net device (`hyp/src/vm/vnetdev.rs`: the Linux guests' device
//! model at the same slot, its transmit queue looped back into its receive queue). The
//! partition drives it as a driver would (virtio 1.2 §3.1.1: reset, ACKNOWLEDGE, DRIVER,
//! features with VERSION_1, FEATURES_OK read back, the queues, DRIVER_OK), checks that a
//! good frame goes round, then presents bad rings, each on a fresh device reset:
//! descriptor loops, buffers outside its window (past its end, straddling it, in the
//! guard, on the hypervisor's image, in another partition's window, on the hypervisor's
//! two store targets), wrapped lengths, an available index that jumps, bad queue sizes
//! and ring areas at QueueReady, rings moved while in use, an indirect descriptor (not
//! offered), a chain longer than the queue.
//!
//! Each case is refused when, read back from the device, Status has
//! DEVICE_NEEDS_RESET (64) and either the configuration-change interrupt is pending
//! (the device was live) or QueueReady reads 0 (the write that enabled the queue was
//! refused); and no buffer was returned on either queue. The partition checks more on
//! its side: its ring pages outside the three ring areas, its buffer page outside its
//! buffers, and the last page of its window (where a descriptor straddling the window's
//! end begins) are canaries that must be unchanged, and so must its receive buffer. The
//! hypervisor counts every refusal itself, and compares its two store targets before and
//! after the run. A good frame after the last case shows the device still works.
//!
//! The device is reached with single 32-bit LDR/STR instructions (the form whose stage-2
//! fault carries a syndrome the hypervisor can emulate); rings with volatile accesses
//! to this partition's own memory (identity-mapped).

use core::arch::asm;
use core::sync::atomic::{Ordering, fence};

use iqdio_hvc::hostile::{
    HYPERVISOR, HYPERVISOR_TARGET, OTHER_WINDOW, OTHER_WINDOW_TARGET, VIRTIO_NET,
};
use iqdio_vdev::virtio_net::{
    CONFIG, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, DESC_SIZE, DEVICE_FEATURES,
    DEVICE_FEATURES_SEL, DEVICE_ID, DRIVER_FEATURES, DRIVER_FEATURES_SEL, F_MAC, F_VERSION_1,
    INT_CONFIG, INT_VRING, INTERRUPT_ACK, INTERRUPT_STATUS, MAGIC, MAGIC_VALUE, NET_DEVICE_ID,
    NET_HDR_LEN, QUEUE_DESC_LOW, QUEUE_DEVICE_LOW, QUEUE_DRIVER_LOW, QUEUE_NOTIFY, QUEUE_NUM,
    QUEUE_NUM_MAX, QUEUE_READY, QUEUE_SEL, Queue, S_ACKNOWLEDGE, S_DEVICE_NEEDS_RESET, S_DRIVER,
    S_DRIVER_OK, S_FEATURES_OK, STATUS, VERSION,
};

use crate::rt;
use crate::say;

/// QueueNum of both queues in every case.
const SIZE: u16 = 8;
/// One past this partition's window (IPA).
const WINDOW_END: u64 = rt::WINDOW_BASE + (48 << 20);
const PAGE: u64 = 4096;
/// The four pages at the window's end: the receive ring, the transmit ring, the
/// buffers, and the window's last page (a canary only, from `WINDOW_END - PAGE`).
const RX_PAGE: u64 = WINDOW_END - 4 * PAGE;
const TX_PAGE: u64 = WINDOW_END - 3 * PAGE;
const BUF_PAGE: u64 = WINDOW_END - 2 * PAGE;
/// Offsets of the three ring areas in a ring page (§2.7: 16-, 2- and 4-aligned).
const DESC: u64 = 0x000;
const AVAIL: u64 = 0x400;
const USED: u64 = 0x800;
/// The transmit buffer: a virtio-net header and a 60-byte Ethernet frame.
const TX_BUF: u64 = BUF_PAGE + 0x100;
const TX_LEN: u32 = NET_HDR_LEN as u32 + 60;
/// An indirect table (one descriptor) for the indirect case.
const INDIRECT: u64 = BUF_PAGE + 0x300;
/// The receive buffer: room for a header and a 1518-byte frame.
const RX_BUF: u64 = BUF_PAGE + 0x800;
const RX_LEN: u32 = 0x600;
/// What every byte outside the areas holds.
const CANARY: u8 = 0xC5;
/// What the receive buffer holds until a frame lands in it.
const RX_FILL: u8 = 0xA5;
/// Status of a live device.
const LIVE: u32 = S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK;

/// The ring cases' tally.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingTally {
    /// Bad rings presented.
    pub tried: u64,
    /// Those the device refused, as checked from this side.
    pub refused: u64,
    /// Bad rings not refused, canaries changed, and good frames that did not go round.
    pub escaped: u64,
}

fn reg_read(offset: u64) -> u32 {
    let v: u32;
    // SAFETY: a 32-bit load from the device's slot, which stage 2 leaves unmapped: it
    // traps, and the hypervisor emulates it (LDR Wt, [Xn] has a syndrome) and returns.
    unsafe {
        asm!("ldr {v:w}, [{a}]", v = out(reg) v, a = in(reg) VIRTIO_NET + offset,
             options(nostack, preserves_flags))
    };
    v
}

fn reg_write(offset: u64, value: u32) {
    // SAFETY: a 32-bit store to the device's slot, trapped and emulated as the load is.
    unsafe {
        asm!("str {v:w}, [{a}]", v = in(reg) value, a = in(reg) VIRTIO_NET + offset,
             options(nostack, preserves_flags))
    };
}

fn poke<T: Copy>(addr: u64, value: T) {
    let p = core::ptr::with_exposed_provenance_mut::<T>(addr as usize);
    // SAFETY: every address passed is in this partition's four ring pages (its own
    // window, identity-mapped, used by nothing else), aligned for `T`.
    unsafe { p.write_volatile(value) };
}

fn peek<T: Copy>(addr: u64) -> T {
    let p = core::ptr::with_exposed_provenance::<T>(addr as usize);
    // SAFETY: as for `poke`.
    unsafe { p.read_volatile() }
}

/// The rings of one queue.
#[derive(Clone, Copy, Debug)]
struct RingSetup {
    size: u32,
    desc: u64,
    driver: u64,
    device: u64,
}

/// The rings of `q` as the good driver places them.
fn rings(q: Queue) -> RingSetup {
    let page = match q {
        Queue::Rx => RX_PAGE,
        Queue::Tx => TX_PAGE,
    };
    RingSetup {
        size: u32::from(SIZE),
        desc: page + DESC,
        driver: page + AVAIL,
        device: page + USED,
    }
}

/// The areas of the four pages the device may write or the partition fills: their
/// bytes are not canaries.
fn areas() -> [(u64, u64); 9] {
    let n = u64::from(SIZE);
    let ring = |page: u64| {
        [
            (page + DESC, DESC_SIZE * n),
            (page + AVAIL, 6 + 2 * n),
            (page + USED, 6 + 8 * n),
        ]
    };
    let [a, b, c] = ring(RX_PAGE);
    let [d, e, f] = ring(TX_PAGE);
    [
        a,
        b,
        c,
        d,
        e,
        f,
        (TX_BUF, 0x100),
        (INDIRECT, DESC_SIZE),
        (RX_BUF, u64::from(RX_LEN)),
    ]
}

/// Fresh memory for a case: canaries everywhere, ring areas zero, the transmit frame,
/// the receive buffer filled.
fn fresh_memory(lpar: usize) {
    for a in RX_PAGE..WINDOW_END {
        poke(a, CANARY);
    }
    for (start, len) in areas() {
        for a in start..start + len {
            poke(a, 0u8);
        }
    }
    for (i, b) in frame(lpar).into_iter().enumerate() {
        poke(TX_BUF + i as u64, b);
    }
    for a in RX_BUF..RX_BUF + u64::from(RX_LEN) {
        poke(a, RX_FILL);
    }
    desc_at(INDIRECT, TX_BUF, TX_LEN, 0, 0);
}

/// The transmitted bytes: a zero virtio-net header, then a frame to its own MAC
/// (EtherType 0x88B5, local experimental) with a payload pattern.
fn frame(lpar: usize) -> [u8; TX_LEN as usize] {
    let mut f = [0u8; TX_LEN as usize];
    let h = NET_HDR_LEN as usize;
    let mac = [0x02, 0, 0, 0, 0xEE, lpar as u8];
    f[h..h + 6].copy_from_slice(&mac);
    f[h + 6..h + 12].copy_from_slice(&mac);
    f[h + 12..h + 14].copy_from_slice(&0x88B5u16.to_be_bytes());
    for (i, b) in f[h + 14..].iter_mut().enumerate() {
        *b = i as u8 ^ 0x5A;
    }
    f
}

/// Every canary byte unchanged.
fn canaries_intact() -> bool {
    let areas = areas();
    (RX_PAGE..WINDOW_END)
        .filter(|a| !areas.iter().any(|&(s, l)| (s..s + l).contains(a)))
        .all(|a| peek::<u8>(a) == CANARY)
}

/// The receive buffer as it was filled.
fn rx_untouched() -> bool {
    (RX_BUF..RX_BUF + u64::from(RX_LEN)).all(|a| peek::<u8>(a) == RX_FILL)
}

fn desc_at(at: u64, addr: u64, len: u32, flags: u16, next: u16) {
    poke(at, addr.to_le());
    poke(at + 8, len.to_le());
    poke(at + 12, flags.to_le());
    poke(at + 14, next.to_le());
}

/// Descriptor `i` of queue `q`'s table.
fn desc(q: Queue, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
    desc_at(
        rings(q).desc + DESC_SIZE * u64::from(i),
        addr,
        len,
        flags,
        next,
    );
}

/// Makes the chain at `head` available on `q` (§2.7.13): the ring entry, then the
/// index behind a barrier.
fn offer(q: Queue, head: u16) {
    let avail = rings(q).driver;
    let idx = u16::from_le(peek(avail + 2));
    poke(avail + 4 + 2 * u64::from(idx % SIZE), head.to_le());
    fence(Ordering::SeqCst);
    poke(avail + 2, idx.wrapping_add(1).to_le());
    fence(Ordering::SeqCst);
}

fn notify(q: Queue) {
    reg_write(QUEUE_NOTIFY, q as u32);
}

fn used_idx(q: Queue) -> u16 {
    u16::from_le(peek(rings(q).device + 2))
}

fn select(q: Queue) {
    reg_write(QUEUE_SEL, q as u32);
}

fn write_addr(low: u64, addr: u64) {
    reg_write(low, addr as u32);
    reg_write(low + 4, (addr >> 32) as u32);
}

/// Reset and feature negotiation (§3.1.1 steps 1-6): true when the device is what it
/// says and FEATURES_OK stuck.
fn negotiate() -> bool {
    reg_write(STATUS, 0);
    let identity = reg_read(MAGIC_VALUE) == MAGIC
        && reg_read(VERSION) == 2
        && reg_read(DEVICE_ID) == NET_DEVICE_ID
        && reg_read(STATUS) == 0;
    reg_write(STATUS, S_ACKNOWLEDGE);
    reg_write(STATUS, S_ACKNOWLEDGE | S_DRIVER);
    reg_write(DEVICE_FEATURES_SEL, 1);
    let offered = reg_read(DEVICE_FEATURES) & (F_VERSION_1 >> 32) as u32 != 0;
    reg_write(DRIVER_FEATURES_SEL, 1);
    reg_write(DRIVER_FEATURES, (F_VERSION_1 >> 32) as u32);
    reg_write(DRIVER_FEATURES_SEL, 0);
    reg_write(DRIVER_FEATURES, F_MAC as u32);
    reg_write(STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
    identity && offered && reg_read(STATUS) & S_FEATURES_OK != 0
}

/// Sets up queue `q` with `r` and enables it (§4.2.3.2).
fn set_up(q: Queue, r: RingSetup) {
    select(q);
    reg_write(QUEUE_NUM, r.size);
    write_addr(QUEUE_DESC_LOW, r.desc);
    write_addr(QUEUE_DRIVER_LOW, r.driver);
    write_addr(QUEUE_DEVICE_LOW, r.device);
    reg_write(QUEUE_READY, 1);
}

fn queue_ready(q: Queue) -> bool {
    select(q);
    reg_read(QUEUE_READY) == 1
}

/// The whole bring-up with the good rings: true when the device is live.
fn start() -> bool {
    if !negotiate() {
        return false;
    }
    select(Queue::Tx);
    if reg_read(iqdio_vdev::virtio_net::QUEUE_NUM_MAX_REG) < u32::from(SIZE) {
        return false;
    }
    set_up(Queue::Rx, rings(Queue::Rx));
    set_up(Queue::Tx, rings(Queue::Tx));
    reg_write(STATUS, LIVE);
    reg_read(STATUS) == LIVE
}

/// Posts the good receive buffer and sends the good frame.
fn post_and_send() {
    desc(Queue::Rx, 0, RX_BUF, RX_LEN, DESC_F_WRITE, 0);
    offer(Queue::Rx, 0);
    notify(Queue::Rx);
    send_one(TX_BUF, TX_LEN, 0);
}

/// One transmit descriptor (head 0), offered and notified.
fn send_one(addr: u64, len: u32, flags: u16) {
    desc(Queue::Tx, 0, addr, len, flags, 0);
    offer(Queue::Tx, 0);
    notify(Queue::Tx);
}

/// A good frame goes round: both buffers returned, the frame in the receive buffer
/// after a header with `num_buffers` 1, the rest of the buffer untouched, the used
/// interrupt pending, the device still live.
fn good_frame(lpar: usize) -> bool {
    fresh_memory(lpar);
    if !start() {
        return false;
    }
    post_and_send();
    let used = rings(Queue::Rx).device + 4;
    let sent = frame(lpar);
    let h = NET_HDR_LEN as usize;
    let header_ok = (0..h).all(|i| peek::<u8>(RX_BUF + i as u64) == u8::from(i == 10));
    let frame_ok = sent[h..]
        .iter()
        .enumerate()
        .all(|(i, &b)| peek::<u8>(RX_BUF + (h + i) as u64) == b);
    let rest_ok =
        (RX_BUF + u64::from(TX_LEN)..RX_BUF + u64::from(RX_LEN)).all(|a| peek::<u8>(a) == RX_FILL);
    let irq = reg_read(INTERRUPT_STATUS) & INT_VRING != 0;
    reg_write(INTERRUPT_ACK, INT_VRING);
    let ok = reg_read(STATUS) == LIVE
        && used_idx(Queue::Tx) == 1
        && used_idx(Queue::Rx) == 1
        && u32::from_le(peek(used)) == 0
        && u32::from_le(peek(used + 4)) == TX_LEN
        && header_ok
        && frame_ok
        && rest_ok
        && irq
        && canaries_intact();
    reg_write(STATUS, 0);
    ok
}

/// Where a case's refusal shows.
enum Shown {
    /// The device was live: the configuration-change interrupt is pending.
    Live,
    /// QueueReady for this queue was refused: it reads 0.
    NotReady(Queue),
}

/// A case: what it is, and its steps after the memory is fresh (`None`: the device
/// could not even be brought up to the point of the case).
type Case = (&'static str, fn() -> Option<Shown>);

/// A bad transmit descriptor alone: (what, address, length, flags).
type BadTx = (&'static str, u64, u32, u16);
const BAD_TX: [BadTx; 11] = [
    ("a descriptor at the window's end", WINDOW_END, TX_LEN, 0),
    (
        "a descriptor straddling the window's end",
        WINDOW_END - 16,
        TX_LEN,
        0,
    ),
    (
        "a descriptor in the guard after the window",
        WINDOW_END + 0x10_0000,
        TX_LEN,
        0,
    ),
    (
        "a descriptor on the hypervisor's image",
        HYPERVISOR,
        TX_LEN,
        0,
    ),
    (
        "a descriptor in another partition's window",
        OTHER_WINDOW,
        TX_LEN,
        0,
    ),
    (
        "a wrapped length (address + length overflowing)",
        u64::MAX - 15,
        TX_LEN,
        0,
    ),
    (
        "a length running past the window's end",
        TX_BUF,
        u32::MAX,
        0,
    ),
    (
        "an indirect descriptor (not offered)",
        INDIRECT,
        DESC_SIZE as u32,
        DESC_F_INDIRECT,
    ),
    ("a descriptor of length 0", TX_BUF, 0, 0),
    (
        "a device-writable descriptor on the transmit queue",
        TX_BUF,
        TX_LEN,
        DESC_F_WRITE,
    ),
    ("a chain shorter than the virtio-net header", TX_BUF, 8, 0),
];

/// A bad receive descriptor, met when the good frame needs a receive buffer.
const BAD_RX: [BadTx; 4] = [
    (
        "a receive buffer on the hypervisor's store target",
        HYPERVISOR_TARGET,
        RX_LEN,
        DESC_F_WRITE,
    ),
    (
        "a receive buffer on another partition's store target",
        OTHER_WINDOW_TARGET,
        RX_LEN,
        DESC_F_WRITE,
    ),
    (
        "a receive buffer straddling the window's end",
        WINDOW_END - 0x100,
        RX_LEN,
        DESC_F_WRITE,
    ),
    (
        "a receive buffer with a wrapped length",
        u64::MAX - 0xFF,
        RX_LEN,
        DESC_F_WRITE,
    ),
];

/// A bad setting of the transmit queue when it is enabled.
type BadSetup = (&'static str, fn(&mut RingSetup));
const BAD_SETUP: [BadSetup; 8] = [
    ("queue size 6 (not a power of two) at QueueReady", |r| {
        r.size = 6
    }),
    ("queue size 0 at QueueReady", |r| r.size = 0),
    ("queue size 512 (above QueueNumMax) at QueueReady", |r| {
        r.size = u32::from(QUEUE_NUM_MAX) * 2
    }),
    (
        "a descriptor table straddling the window's end at QueueReady",
        |r| r.desc = WINDOW_END - 64,
    ),
    ("a misaligned descriptor table at QueueReady", |r| {
        r.desc += 8
    }),
    ("a used ring on the hypervisor's image at QueueReady", |r| {
        r.device = HYPERVISOR
    }),
    (
        "an available ring in another partition's window at QueueReady",
        |r| r.driver = OTHER_WINDOW,
    ),
    (
        "a used ring wrapping the address space at QueueReady",
        |r| r.device = u64::MAX - 63,
    ),
];

/// The cases that need steps of their own.
const SPECIAL: [Case; 8] = [
    ("a descriptor loop (next pointing back)", || {
        start().then(|| {
            desc(Queue::Tx, 0, TX_BUF, NET_HDR_LEN as u32, DESC_F_NEXT, 1);
            desc(
                Queue::Tx,
                1,
                TX_BUF + NET_HDR_LEN,
                TX_LEN - 12,
                DESC_F_NEXT,
                0,
            );
            offer(Queue::Tx, 0);
            notify(Queue::Tx);
            Shown::Live
        })
    }),
    (
        "a chain longer than the queue (every descriptor, the last naming the first)",
        || {
            start().then(|| {
                for i in 0..SIZE {
                    let at = TX_BUF + 8 * u64::from(i);
                    desc(Queue::Tx, i, at, 8, DESC_F_NEXT, (i + 1) % SIZE);
                }
                offer(Queue::Tx, 0);
                notify(Queue::Tx);
                Shown::Live
            })
        },
    ),
    ("a next index past the queue size", || {
        start().then(|| {
            desc(Queue::Tx, 0, TX_BUF, 12, DESC_F_NEXT, SIZE);
            offer(Queue::Tx, 0);
            notify(Queue::Tx);
            Shown::Live
        })
    }),
    ("an available entry past the queue size", || {
        start().then(|| {
            desc(Queue::Tx, 0, TX_BUF, TX_LEN, 0, 0);
            offer(Queue::Tx, SIZE);
            notify(Queue::Tx);
            Shown::Live
        })
    }),
    (
        "an available index jumping more than the queue size",
        || {
            start().then(|| {
                desc(Queue::Tx, 0, TX_BUF, TX_LEN, 0, 0);
                poke(rings(Queue::Tx).driver + 2, (SIZE + 1).to_le());
                notify(Queue::Tx);
                Shown::Live
            })
        },
    ),
    (
        "the ring moved while in use (QueueDesc rewritten after QueueReady)",
        || {
            start().then(|| {
                // One register: every write to a ready queue's registers is a violation.
                select(Queue::Tx);
                reg_write(QUEUE_DESC_LOW, BUF_PAGE as u32);
                Shown::Live
            })
        },
    ),
    ("the queue size rewritten after QueueReady", || {
        start().then(|| {
            select(Queue::Tx);
            reg_write(QUEUE_NUM, 4);
            Shown::Live
        })
    }),
    ("a queue enabled again without a reset", || {
        start().then(|| {
            select(Queue::Tx);
            reg_write(QUEUE_READY, 0);
            reg_write(QUEUE_READY, 1);
            Shown::Live
        })
    }),
];

/// Runs one case on fresh memory and a reset device; true when it was refused and
/// nothing it must not touch changed.
fn refused(lpar: usize, steps: impl FnOnce() -> Option<Shown>) -> bool {
    fresh_memory(lpar);
    let Some(shown) = steps() else {
        return false;
    };
    let status = reg_read(STATUS);
    let signalled = match shown {
        Shown::Live => reg_read(INTERRUPT_STATUS) & INT_CONFIG != 0,
        Shown::NotReady(q) => !queue_ready(q),
    };
    let ok = status & S_DEVICE_NEEDS_RESET != 0
        && signalled
        && used_idx(Queue::Rx) == 0
        && used_idx(Queue::Tx) == 0
        && rx_untouched()
        && canaries_intact();
    reg_write(STATUS, 0);
    ok
}

/// Every case, reported a line each; the good frame before the first and after the last.
pub fn run(lpar: usize) -> RingTally {
    let mut t = RingTally::default();
    let mac_ok = {
        let (lo, hi) = (reg_read(CONFIG), reg_read(CONFIG + 4));
        let mac = [
            lo as u8,
            (lo >> 8) as u8,
            (lo >> 16) as u8,
            (lo >> 24) as u8,
            hi as u8,
            (hi >> 8) as u8,
        ];
        mac == [0x02, 0, 0, 0, 0xEE, lpar as u8]
    };
    let control = |t: &mut RingTally, when: &str| {
        if mac_ok && good_frame(lpar) {
            say!("hostile: virtio-net: a good frame looped back ({})", when);
        } else {
            say!(
                "hostile: virtio-net: the good frame did NOT go round ({})",
                when
            );
            t.escaped += 1;
        }
    };
    control(&mut t, "before the bad rings");
    let mut case = |what: &str, ok: bool| {
        t.tried += 1;
        if ok {
            t.refused += 1;
            say!("hostile: bad ring refused: {}", what);
        } else {
            t.escaped += 1;
            say!("hostile: bad ring NOT refused: {}", what);
        }
    };
    for (what, addr, len, flags) in BAD_TX {
        case(
            what,
            refused(lpar, || {
                start().then(|| {
                    send_one(addr, len, flags);
                    Shown::Live
                })
            }),
        );
    }
    for (what, addr, len, flags) in BAD_RX {
        case(
            what,
            refused(lpar, || {
                start().then(|| {
                    desc(Queue::Rx, 0, addr, len, flags, 0);
                    offer(Queue::Rx, 0);
                    notify(Queue::Rx);
                    send_one(TX_BUF, TX_LEN, 0);
                    Shown::Live
                })
            }),
        );
    }
    for (what, edit) in BAD_SETUP {
        case(
            what,
            refused(lpar, || {
                if !negotiate() {
                    return None;
                }
                set_up(Queue::Rx, rings(Queue::Rx));
                let mut r = rings(Queue::Tx);
                edit(&mut r);
                set_up(Queue::Tx, r);
                Some(Shown::NotReady(Queue::Tx))
            }),
        );
    }
    for (what, steps) in SPECIAL {
        case(what, refused(lpar, steps));
    }
    control(&mut t, "after the bad rings");
    say!(
        "hostile: bad rings {} tried, {} refused",
        t.tried,
        t.refused
    );
    t
}
