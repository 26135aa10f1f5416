//! Issue 17 item 3, as an embedder sees it: a hypervisor that owns guest memory backs
//! the fabric with its own [`GuestMemory`] (here a stage-2-like page table whose
//! guest pages lie scattered in host memory), remaps a partition's pages while its
//! queue set stays established, and gets its own error, not the guest's, for a window
//! that breaks the alignment rule.
//!
//! The test plays the partitions by hand (SBALs, SLSBs and frames written at guest
//! addresses through the same page table), so nothing here assumes that a
//! partition's memory is contiguous in host memory.

use core::net::{IpAddr, Ipv4Addr};
use core::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use iqdio::fabric::{QUEUE_0_MASK, QueueSetParams};
use iqdio::qdio::{
    Eflags, Fragment, HEADER_SIZE, L3Header, QUEUE_BUFFERS, SBAL_SIZE, SLSB_LEN, Sbale, SlsbState,
};
use iqdio::{
    Fabric, FabricConfig, GuestMemory, InterruptDelivery, InterruptTarget, Platform,
    RegistrationError, Window,
};

const PAGE: usize = 4096;
/// Every partition's guest-physical memory starts here.
const GUEST_BASE: u64 = 0x10_0000;
/// Guest pages per partition: page 0 SLSBs and indicators, pages 1-8 output SBALs,
/// 9-16 input SBALs, 17-18 the output buffer's data, 19 the input buffer's, 20 spare.
const GUEST_PAGES: usize = 21;
const SBAL_PAGES: usize = QUEUE_BUFFERS * SBAL_SIZE / PAGE;
const OUT_SBALS: usize = 1;
const IN_SBALS: usize = OUT_SBALS + SBAL_PAGES;
const TX_DATA: usize = IN_SBALS + SBAL_PAGES;
const RX_DATA: usize = TX_DATA + 2;
const SCH: u16 = 0x100;

/// The hypervisor's view of one partition's memory: a page table from guest pages to
/// host pages (0: unmapped), as its stage-2 tables would have it.
#[derive(Clone, Copy, Debug)]
struct PagedMemory {
    host_pages: [usize; GUEST_PAGES],
    /// Added to every translation: 0, except to model a broken map.
    skew: usize,
}

// SAFETY: every page a `PagedMemory` names is a page of a `HostPool` that outlives the
// fabric in each test and is reached only through raw pointers; the tests map each
// host page to at most one guest page of one partition (`overlaps` lets the fabric
// check the second half); a translation never leaves its pages.
unsafe impl GuestMemory for PagedMemory {
    const EMPTY: Self = Self {
        host_pages: [0; GUEST_PAGES],
        skew: 0,
    };

    fn translate(&self, guest: u64, len: u64) -> Option<NonNull<u8>> {
        let offset = usize::try_from(guest.checked_sub(GUEST_BASE)?).ok()?;
        let len = usize::try_from(len).ok()?;
        let end = offset.checked_add(len)?;
        if len == 0 || end > GUEST_PAGES * PAGE {
            return None;
        }
        // The range must be contiguous in host memory: each following guest page
        // mapped right after the one before.
        let first = offset / PAGE;
        let host = *self.host_pages.get(first)?;
        for p in first + 1..end.div_ceil(PAGE) {
            if self.host_pages[p] == 0 || self.host_pages[p] != host + (p - first) * PAGE {
                return None;
            }
        }
        if host == 0 {
            return None;
        }
        NonNull::new((host + offset % PAGE + self.skew) as *mut u8)
    }

    fn overlaps(&self, other: &Self) -> bool {
        self.host_pages
            .iter()
            .filter(|h| **h != 0)
            .any(|h| other.host_pages.contains(h))
    }
}

impl PagedMemory {
    /// The host address of guest address `guest` (for the test's own writes).
    fn host(&self, guest: u64) -> *mut u8 {
        let p = self.translate(guest, 1).expect("mapped");
        p.as_ptr()
    }

    fn write(&self, guest: u64, bytes: &[u8]) {
        for (i, b) in bytes.iter().enumerate() {
            // SAFETY: mapped (checked in `host`), a pool page; byte-wise, as a
            // partition's plain stores, with no fabric call running.
            unsafe { self.host(guest + i as u64).write_volatile(*b) };
        }
    }

    fn read(&self, guest: u64, len: usize) -> Vec<u8> {
        (0..len)
            // SAFETY: as in `write`.
            .map(|i| unsafe { self.host(guest + i as u64).read_volatile() })
            .collect()
    }
}

#[repr(C, align(4096))]
#[derive(Clone, Copy)]
struct Page([u8; PAGE]);

/// Host memory the hypervisor hands out page by page.
struct HostPool {
    pages: NonNull<Page>,
    len: usize,
    _owner: Vec<Page>,
}

impl HostPool {
    fn new(len: usize) -> Self {
        let mut owner = vec![Page([0; PAGE]); len];
        let pages = NonNull::new(owner.as_mut_ptr()).unwrap();
        Self {
            pages,
            len,
            _owner: owner,
        }
    }

    fn page(&self, i: usize) -> usize {
        assert!(i < self.len);
        // SAFETY: inside the allocation (asserted).
        unsafe { self.pages.add(i) }.as_ptr() as usize
    }
}

fn guest(page: usize, offset: usize) -> u64 {
    GUEST_BASE + (page * PAGE + offset) as u64
}

/// A partition's queue set laid out on its guest pages.
fn params() -> QueueSetParams {
    QueueSetParams {
        output_sbals: core::array::from_fn(|i| guest(OUT_SBALS, i * SBAL_SIZE)),
        input_sbals: core::array::from_fn(|i| guest(IN_SBALS, i * SBAL_SIZE)),
        output_slsb: guest(0, 0),
        input_slsb: guest(0, SLSB_LEN),
        queue_indicator: guest(0, 2 * SLSB_LEN),
        middle_indicator: guest(0, 2 * SLSB_LEN + 1),
        global_indicator: guest(0, 2 * SLSB_LEN + 2),
        interrupt_immediately: true,
        interrupt_cookie: 0,
        ..Default::default()
    }
}

/// Maps guest page `g` of partition `k` (of `n`) to pool page
/// `(GUEST_PAGES - 1 - g) * n + k`: pages in reverse order and interleaved with the other partitions', so
/// no two consecutive guest pages are neighbours in host memory.
fn scattered(pool: &HostPool, k: usize, n: usize) -> PagedMemory {
    PagedMemory {
        host_pages: core::array::from_fn(|g| pool.page((GUEST_PAGES - 1 - g) * n + k)),
        skew: 0,
    }
}

struct Hyp {
    interrupts: AtomicU32,
}

impl Platform for Hyp {
    fn raise_interrupt(&self, _target: InterruptTarget) -> InterruptDelivery {
        self.interrupts.fetch_add(1, Ordering::Relaxed);
        InterruptDelivery::Delivered
    }
    fn now_ns(&self) -> u64 {
        0
    }
}

/// Four partitions at most, one queue set each: the hypervisor's memory type.
type HypFabric = Fabric<Hyp, 4, 8, 4, 1, PagedMemory>;

fn ip(lpar: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 9, 0, lpar))
}

/// Primes output buffer `n` with one frame to `dest` whose packet is `packet`, in two
/// elements: the header and the packet's first part at the end of guest page
/// `TX_DATA`, the rest at the start of page `TX_DATA + 1` (not adjacent in host
/// memory, so each element is translated on its own).
fn prime(m: &PagedMemory, n: usize, dest: IpAddr, packet: &[u8]) {
    assert!(packet.len() > 100, "both elements carry bytes");
    let split = 100;
    let first = guest(TX_DATA, PAGE - HEADER_SIZE - split);
    let header = L3Header::unicast(dest, packet.len() as u16).encode();
    m.write(first, &header);
    m.write(first + HEADER_SIZE as u64, &packet[..split]);
    m.write(guest(TX_DATA + 1, 0), &packet[split..]);
    let elements = [
        (first, HEADER_SIZE + split),
        (guest(TX_DATA + 1, 0), packet.len() - split),
    ];
    for (i, (addr, len)) in elements.iter().enumerate() {
        let mut eflags = Fragment::for_element(i, 2).bits();
        if i == 1 {
            eflags |= Eflags::LAST_ENTRY.bits();
        }
        let e = Sbale {
            eflags,
            addr: *addr,
            length: *len as u32,
            ..Sbale::default()
        };
        m.write(guest(OUT_SBALS, n * SBAL_SIZE + i * 16), &e.encode());
    }
    m.write(guest(0, n), &[SlsbState::OUTPUT_PRIMED.0]);
}

/// Arms input buffer `n` with the page `RX_DATA`.
fn arm(m: &PagedMemory, n: usize) {
    let e = Sbale {
        addr: guest(RX_DATA, 0),
        length: PAGE as u32,
        ..Sbale::default()
    };
    m.write(guest(IN_SBALS, n * SBAL_SIZE), &e.encode());
    m.write(guest(0, SLSB_LEN + n), &[SlsbState::INPUT_EMPTY.0]);
}

/// The packet delivered into input buffer `n`, if it reads 0x82.
fn received(m: &PagedMemory, n: usize) -> Option<Vec<u8>> {
    if m.read(guest(0, SLSB_LEN + n), 1)[0] != SlsbState::INPUT_PRIMED.0 {
        return None;
    }
    let mut e = [0u8; 16];
    e.copy_from_slice(&m.read(guest(IN_SBALS, n * SBAL_SIZE), 16));
    let e = Sbale::decode(&e);
    let frame = m.read(e.addr, e.length as usize);
    Some(frame[HEADER_SIZE..].to_vec())
}

fn packet(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add((i * 7) as u8)).collect()
}

/// Two partitions whose memories are scattered page by page in one pool, each with
/// its queue set and address.
fn two_partitions(pool: &HostPool) -> (Box<HypFabric>, PagedMemory, PagedMemory) {
    let mut slot = Box::new(core::mem::MaybeUninit::<HypFabric>::uninit());
    let hyp = Hyp {
        interrupts: AtomicU32::new(0),
    };
    HypFabric::init_in_place(&mut slot, hyp, FabricConfig::DEFAULT);
    // SAFETY: init_in_place initialised it.
    let fabric: Box<HypFabric> = unsafe { Box::from_raw(Box::into_raw(slot).cast()) };
    let a = scattered(pool, 0, 3);
    let b = scattered(pool, 1, 3);
    for (lpar, m) in [(1u8, a), (2u8, b)] {
        fabric.add_partition_memory(lpar, m).unwrap();
        fabric.establish(lpar, SCH, &params()).unwrap();
        fabric.register_address(lpar, SCH, ip(lpar)).unwrap();
    }
    (fabric, a, b)
}

#[test]
fn a_hypervisor_memory_with_scattered_pages_carries_frames() {
    let pool = HostPool::new(3 * GUEST_PAGES);
    let (fabric, a, b) = two_partitions(&pool);
    // Not contiguous in host memory: the data pages are far apart and reversed.
    assert_ne!(a.host_pages[TX_DATA + 1], a.host_pages[TX_DATA] + PAGE);
    // The frame's two elements straddle the guest page boundary: one translation
    // each; a single range over both pages does not translate.
    assert!(a.translate(guest(TX_DATA, PAGE - 8), 16).is_none());

    arm(&b, 0);
    let sent = packet(1, 300);
    prime(&a, 0, ip(2), &sent);
    let r = fabric.siga_write(1, SCH, QUEUE_0_MASK).unwrap();
    assert_eq!((r.delivered, r.frames, r.bytes), (1, 1, 300));
    assert_eq!(received(&b, 0).as_deref(), Some(&sent[..]));
    assert_eq!(a.read(guest(0, 0), 1)[0], SlsbState::OUTPUT_EMPTY.0);
    assert_eq!(fabric.platform().interrupts.load(Ordering::Relaxed), 1);
    // The receiver's summary byte, at its own scattered page, is set.
    assert_eq!(b.read(guest(0, 2 * SLSB_LEN + 2), 1)[0], 1);
    // copy_from_partition translates the same way.
    let mut out = [0u8; 4];
    fabric
        .copy_from_partition(2, guest(RX_DATA, HEADER_SIZE), &mut out)
        .unwrap();
    assert_eq!(out, sent[..4]);
}

#[test]
fn a_remap_takes_effect_at_the_next_call_and_must_keep_queue_structures_mapped() {
    let pool = HostPool::new(3 * GUEST_PAGES + 2);
    let (fabric, a, b) = two_partitions(&pool);
    arm(&b, 0);
    arm(&b, 1);
    prime(&a, 0, ip(2), &packet(1, 200));
    fabric.siga_write(1, SCH, QUEUE_0_MASK).unwrap();

    // The hypervisor moves A's two data pages to other host pages (copying them, as a
    // migration would) while the queue set stays established.
    let mut moved = a;
    let spare = [pool.page(3 * GUEST_PAGES), pool.page(3 * GUEST_PAGES + 1)];
    for (k, host) in spare.iter().enumerate() {
        // SAFETY: distinct pool pages, no fabric call running.
        unsafe {
            core::ptr::copy_nonoverlapping(
                a.host_pages[TX_DATA + k] as *const u8,
                *host as *mut u8,
                PAGE,
            )
        };
        moved.host_pages[TX_DATA + k] = *host;
    }
    let old = fabric.replace_memory(1, moved).unwrap();
    assert_eq!(old.host_pages, a.host_pages);

    // A writes its next frame through the new map; the old pages get garbage, which
    // the receiver must not see.
    let sent = packet(9, 250);
    prime(&moved, 1, ip(2), &sent);
    for k in 0..2 {
        // SAFETY: the old pages are no longer A's; no fabric call running.
        unsafe { core::ptr::write_bytes(a.host_pages[TX_DATA + k] as *mut u8, 0xEE, PAGE) };
    }
    let r = fabric.siga_write(1, SCH, QUEUE_0_MASK).unwrap();
    assert_eq!(r.delivered, 1);
    assert_eq!(received(&b, 1).as_deref(), Some(&sent[..]));

    // A map without the page of output SBALs 0-15 would leave the established queue
    // set dangling: refused, naming the first structure it loses, and the map in use
    // stays as it was.
    let mut broken = moved;
    broken.host_pages[OUT_SBALS] = 0;
    assert_eq!(
        fabric.replace_memory(1, broken).unwrap_err(),
        RegistrationError::OutsideMemory(iqdio::QueueField::OutputSbal(0))
    );
    // Nor may a map take another partition's page.
    let mut stolen = moved;
    stolen.host_pages[GUEST_PAGES - 1] = b.host_pages[RX_DATA];
    assert_eq!(
        fabric.replace_memory(1, stolen).unwrap_err(),
        RegistrationError::OverlappingWindows
    );
    arm(&b, 2);
    let again = packet(3, 164);
    prime(&moved, 2, ip(2), &again);
    assert_eq!(
        fabric.siga_write(1, SCH, QUEUE_0_MASK).unwrap().delivered,
        1
    );
    assert_eq!(received(&b, 2).as_deref(), Some(&again[..]));

    // With no queue set, any map will do; the partition's queue set is re-established
    // over the new pages afterwards.
    fabric.deregister_queue_set(1, SCH).unwrap();
    assert_eq!(
        fabric.replace_memory(1, broken).unwrap().host_pages,
        moved.host_pages
    );
    assert_eq!(
        fabric.establish(1, SCH, &params()).unwrap_err(),
        RegistrationError::OutsideMemory(iqdio::QueueField::OutputSbal(0))
    );
}

#[test]
fn a_misaligned_window_is_the_hypervisors_error_at_add_partition() {
    let pool = HostPool::new(4);
    let host = NonNull::new(pool.page(0) as *mut u8).unwrap();
    let fabric = Box::new(Fabric::<Hyp, 4, 8, 4, 1, iqdio::Windows<1>>::new(
        Hyp {
            interrupts: AtomicU32::new(0),
        },
        FabricConfig::DEFAULT,
    ));
    // Host 8 bytes past a page, guest on a page: 256-aligned guest SBALs would be
    // misaligned in host memory.
    // SAFETY: inside the pool, which outlives the fabric; never accessed (refused).
    let skewed = unsafe { Window::new(GUEST_BASE, host.add(8), 3 * PAGE) };
    let e = fabric.add_partition(1, &[skewed]).unwrap_err();
    assert_eq!(e, RegistrationError::MisalignedWindow);
    assert_eq!(e.code(), 0xF010);
    // Refused before anything was recorded: the partition is unknown, the id free.
    assert_eq!(
        fabric.establish(1, SCH, &params()).unwrap_err(),
        RegistrationError::UnknownPartition
    );
    // Congruent modulo 256 is enough (a guest base 0x100 past a page, host too).
    // SAFETY: as above; the window lies inside the pool.
    let ok = unsafe { Window::new(GUEST_BASE + 0x100, host.add(0x100), 3 * PAGE) };
    fabric.add_partition(1, &[ok]).unwrap();

    // A hypervisor memory that translates off the rule is caught at establish, as
    // the hypervisor's error too, not as the partition's 0xF006.
    let paged = Box::new(HypFabric::new(
        Hyp {
            interrupts: AtomicU32::new(0),
        },
        FabricConfig::DEFAULT,
    ));
    let big = HostPool::new(GUEST_PAGES);
    let mut skew = scattered(&big, 0, 1);
    skew.skew = 8;
    paged.add_partition_memory(1, skew).unwrap();
    assert_eq!(
        paged.establish(1, SCH, &params()).unwrap_err(),
        RegistrationError::MisalignedWindow
    );
    // A partition's own misaligned SBAL stays its error.
    let mut p = params();
    p.output_sbals[5] += 16;
    paged.replace_memory(1, scattered(&big, 0, 1)).unwrap();
    assert_eq!(
        paged.establish(1, SCH, &p).unwrap_err(),
        RegistrationError::Misaligned(iqdio::QueueField::OutputSbal(5))
    );
}
