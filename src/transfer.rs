//! The data movement of one send, as two steps over guest memory: read and check the
//! sender's SBAL ([`parse_outgoing`]), then copy its frames into a receiver's SBAL
//! ([`deliver`]). No locks and no policy here: the fabric calls these under its locks.

use core::net::IpAddr;

use crate::guest::{GuestMemory, GuestSlice, MemoryExt, Sbal};
use crate::qdio::l2::{self, ETH_ROUTING, EthRoute, L2Header, MacCast};
use crate::qdio::{
    CastType, Eflags, Fragment, HEADER_SIZE, HeaderError, L3Header, Mfs, Reason, SBALES_PER_SBAL,
    Sbale,
};

/// Why a buffer was refused, and at which element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The sbalf15 reason.
    pub reason: Reason,
    /// The failing element (0-15), written to element 14's sflags.
    pub element: u8,
}

impl Fault {
    const fn at(reason: Reason, element: usize) -> Self {
        Self {
            reason,
            element: element as u8,
        }
    }
}

/// One frame of an outgoing SBAL: elements `first..=last`, and the header as it was
/// read and checked.
#[derive(Clone, Copy, Debug)]
struct FrameSpan {
    first: u8,
    last: u8,
    bytes: usize,
    /// The frame's 32 header bytes, read once from the sender's memory and checked
    /// (next hop, length, cast). [`deliver`] writes these, never the sender's bytes
    /// again: the sender may rewrite its header while SIGA runs, and the receiver must
    /// get the header its frame was routed by.
    header: [u8; HEADER_SIZE],
    /// Layer 2: the first bytes of the Ethernet frame after the header (destination
    /// and source MAC, the 802.1Q tag), read once and routed by; written by
    /// [`deliver`] as `header` is, so the MAC and VLAN the receiver sees are the ones
    /// the fabric checked. `eth_len` is 0 on layer 3.
    eth: [u8; ETH_ROUTING],
    eth_len: u8,
}

impl FrameSpan {
    /// Bytes at the start of the frame that come from the fabric's checked copy
    /// (header, and on layer 2 the Ethernet routing bytes), not from the sender.
    fn routed_len(&self) -> usize {
        HEADER_SIZE + usize::from(self.eth_len)
    }

    /// Writes the routed bytes (the checked header, and on layer 2 the Ethernet
    /// routing bytes read with it) at the start of `dst`, which holds them whole (the
    /// callers' to know). Layer 3 has no routing bytes after the header: no (empty)
    /// copy for them.
    #[inline(always)]
    fn write_routed(&self, dst: &GuestSlice) {
        dst.write(0, &self.header);
        if self.eth_len > 0
            && let Some(eth) = self.eth.get(..usize::from(self.eth_len))
        {
            dst.write(HEADER_SIZE, eth);
        }
    }
}

/// A next hop as the fabric's lookup compares it: the header's 16-byte field as one
/// number (an IPv4 address its low 32 bits) and whether the header says IPv6.
///
/// [`Outgoing`] keeps its destination so rather than as an `IpAddr`: a copy of the
/// enum was stored in pieces (1, 2, 2, 8 and 4 bytes), and the lookup's 4-byte load
/// of an IPv4 next hop straddled two of them, a store-forwarding stall on every send
/// (`perf annotate`). A `u128` and a flag are stored whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NextHop {
    /// The address's bits: `Ipv4Addr::to_bits` or `Ipv6Addr::to_bits`.
    pub bits: u128,
    /// Whether it is an IPv6 address.
    pub v6: bool,
}

impl NextHop {
    /// 0.0.0.0: an empty descriptor's and an empty cached target's (all-zero bytes).
    pub const UNSPECIFIED: Self = Self { bits: 0, v6: false };

    /// The address.
    #[inline(always)]
    pub const fn ip(self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(core::net::Ipv6Addr::from_bits(self.bits))
        } else {
            IpAddr::V4(core::net::Ipv4Addr::from_bits(self.bits as u32))
        }
    }
}

impl From<IpAddr> for NextHop {
    #[inline(always)]
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(a) => Self {
                bits: u128::from(a.to_bits()),
                v6: false,
            },
            IpAddr::V6(a) => Self {
                bits: a.to_bits(),
                v6: true,
            },
        }
    }
}

/// A checked outgoing SBAL: its elements translated, its frames delimited, its
/// destination read once from the frame headers.
///
/// `repr(C)`, in this order, so that [`empty`](Self::empty) writes a handful of
/// scalars and nothing else: each vector is its length, then its uninitialised room.
/// With the fields where rustc put them, the elements' length, their 256 bytes of
/// room and the frames' length lay end to end, and LLVM merged the two zero lengths
/// into one 272-byte `memset` over the room between (about 35 instructions on every
/// buffer sent, callgrind). Here an opaque store (`total`, through `black_box`)
/// separates the two lengths, and the scalars after the frames' room start with
/// another (`payload`), so no two zero stores enclose a vector's room.
#[derive(Debug)]
#[repr(C)]
pub struct Outgoing {
    /// Elements `0..=last`, translated (a vector: an empty one costs one store, where
    /// an array of 16 options was zeroed, 256 bytes, on every send).
    elements: heapless::Vec<GuestSlice, SBALES_PER_SBAL>,
    /// Bytes in all frames, headers included.
    pub total: usize,
    frames: heapless::Vec<FrameSpan, SBALES_PER_SBAL>,
    /// Packet bytes in all frames (headers excluded).
    pub payload: u64,
    /// The next hop all frames name.
    pub dest: NextHop,
    /// The cast type all frames carry.
    pub cast: CastType,
    /// Layer 2: the destination MAC and VLAN all frames carry (`None` on layer 3,
    /// where `dest` is the route).
    pub route: Option<EthRoute>,
    /// The buffer's one frame as one slice, when it spans several elements that follow
    /// one another in the sender's memory (each starts where the one before ended) and
    /// translate as one range ([`GuestMemory::translate`]: contiguous in host memory
    /// too); [`GuestSlice::EMPTY`] otherwise (several frames, one element, a gap).
    /// [`deliver_whole`] copies such a frame with one call of the copy primitive
    /// instead of one an element: the driver's large frames, over consecutive pages.
    whole: GuestSlice,
}

impl Outgoing {
    /// Frames in the SBAL.
    #[inline]
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    /// An empty descriptor, to parse into with [`parse_outgoing_into`].
    ///
    /// Not a `const fn`, and `total` and `payload` take a zero through `black_box`: a
    /// descriptor the compiler can fold to a constant is materialised by zeroing all
    /// of its 1 KiB (the vectors' uninitialised room included: a `memset` of 77
    /// instructions on every send, callgrind); with fields it cannot fold, placed
    /// between the vectors (see the type's docs), only the lengths and scalars are
    /// written. (`black_box` is a hint: should a compiler fold it anyway, the cost
    /// comes back, the result does not change.)
    #[inline]
    pub fn empty() -> Self {
        // One opaque zero serves both fields (a second `black_box` cost its own stack
        // round trip).
        let zero = core::hint::black_box(0usize);
        Self {
            elements: heapless::Vec::new(),
            frames: heapless::Vec::new(),
            dest: NextHop::UNSPECIFIED,
            cast: CastType::Unicast,
            route: None,
            total: zero,
            payload: zero as u64,
            whole: GuestSlice::EMPTY,
        }
    }
}

/// Reads the sender's SBAL once and checks it: `LAST_ENTRY` within 16 elements, no
/// empty element, every element inside the issuer's memory, fragment flags in order,
/// each frame's header well-formed with a length that matches its elements, one next
/// hop for all frames, and the whole within the maximum frame size.
#[cfg(any(test, feature = "fuzzing"))]
pub fn parse_outgoing<M: GuestMemory>(
    sbal: &Sbal,
    memory: &M,
    mfs: Mfs,
) -> Result<Outgoing, Fault> {
    let mut out = Outgoing::empty();
    parse_outgoing_into(sbal, memory, mfs, false, false, &mut out)?;
    Ok(out)
}

/// The checks of `parse_outgoing`, into a caller's descriptor, which the send path
/// keeps in place rather than moving a 1 KiB value around (16 frame spans with their
/// checked headers). On an error `out` is unspecified.
///
/// `multicast_queue`: the buffer comes from the queue set's multicast queue, where
/// every cast type is valid (Linux sends multicast, broadcast and anycast there,
/// `qeth_l3_fill_header` in `drivers/s390/net/qeth_l3_main.c`); on any other queue
/// only unicast is. A multicast frame must name a multicast next hop. All frames of
/// one buffer share next hop and cast type (Linux bulks only such frames).
///
/// A buffer of one frame in one or two elements, the common small send, takes the
/// fast path ([`parse_small`]); anything else, and any buffer the fast path does not
/// accept whole, the general one ([`parse_general`]), which also finds the precise
/// fault. Both make the same checks: the results are the same for the same SBAL.
#[inline]
pub fn parse_outgoing_into<M: GuestMemory>(
    sbal: &Sbal,
    memory: &M,
    mfs: Mfs,
    multicast_queue: bool,
    layer2: bool,
    out: &mut Outgoing,
) -> Result<(), Fault> {
    if !layer2
        && (parse_small(sbal, memory, mfs, multicast_queue, out)
            || parse_run(sbal, memory, mfs, multicast_queue, out))
    {
        return Ok(());
    }
    parse_general(sbal, memory, mfs, multicast_queue, layer2, out)
}

/// The bits of an element's flags that the general parse looks at: `LAST_ENTRY` and
/// the fragment field; the fast paths compare them with the shapes below.
const SHAPE: u8 = Eflags::LAST_ENTRY.bits() | Eflags::FRAGMENT_MASK.bits();
/// A whole frame (`Fragment::None`) that ends the list.
const WHOLE_AND_LAST: u8 = Eflags::LAST_ENTRY.bits();
/// A frame's first element (`Fragment::First`), not the last entry.
const FIRST: u8 = 0x04;
/// A frame's middle element (`Fragment::Middle`), not the last entry.
const MIDDLE: u8 = 0x08;
/// A frame's last element (`Fragment::Last`) that ends the list.
const LAST_AND_LAST: u8 = Eflags::LAST_ENTRY.bits() | 0x0C;

/// The large-frame path of [`parse_outgoing_into`]: an SBAL of one frame over three
/// to 16 elements that follow one another in the issuer's memory (each starts where
/// the one before ended: the driver's frames over consecutive pages), as `First`,
/// `Middle`s, then `Last` with `LAST_ENTRY`. It reads each element once and checks it
/// (not empty, where the run continues, its fragment flag), then translates the run
/// as one range, once, and takes each element's bytes from it, where
/// [`scan_elements`] translates each element on its own. Sound: every element lies
/// inside the range the embedder's translation vouched for (as for `deliver_whole`'s
/// one copy, which uses the same range). The same bytes: a range translates only when
/// it is contiguous in host memory ([`GuestMemory::translate`]), so each element's
/// part of it is where the element translates on its own (the differential test
/// compares the two descriptors, element pointers included).
/// Then the frame checks it shares with [`parse_small`] ([`one_frame`]): the header
/// well-formed (whole in the first element, checked above), of a cast type the queue
/// carries, with a length that matches the elements, and the frame within the MFS.
///
/// Returns true with `out` filled as [`parse_general`] fills it (the one frame, its
/// elements, the run as `whole`). Otherwise false, with `out` unspecified and nothing
/// else done: [`parse_general`] reads the SBAL again and names any fault.
#[inline]
fn parse_run<M: GuestMemory>(
    sbal: &Sbal,
    memory: &M,
    mfs: Mfs,
    multicast_queue: bool,
    out: &mut Outgoing,
) -> bool {
    let e0 = sbal.load(0);
    if e0.eflags & SHAPE != FIRST || (e0.length as usize) < HEADER_SIZE {
        return false;
    }
    let start = e0.addr;
    // Each element's length, and where the next one must start.
    let mut lengths = [0u32; SBALES_PER_SBAL];
    lengths[0] = e0.length;
    let Some(mut next) = start.checked_add(u64::from(e0.length)) else {
        return false;
    };
    let mut last = 0;
    for (i, length) in lengths.iter_mut().enumerate().skip(1) {
        let e = sbal.load(i);
        if e.length == 0 || e.addr != next {
            return false;
        }
        *length = e.length;
        next = match next.checked_add(u64::from(e.length)) {
            Some(n) => n,
            None => return false,
        };
        match e.eflags & SHAPE {
            MIDDLE => {}
            // Two elements are `parse_small`'s: a buffer it declined goes to the
            // general path.
            LAST_AND_LAST if i >= 2 => {
                last = i;
                break;
            }
            _ => return false,
        }
    }
    if last == 0 {
        return false;
    }
    // The MFS is `one_frame`'s to check, with the rest.
    let Some(whole) = memory.slice(start, next - start) else {
        return false;
    };
    out.elements.clear();
    out.frames.clear();
    let mut at = 0usize;
    for &length in lengths.iter().take(last + 1) {
        let Some(element) = whole.sub(at, length as usize) else {
            return false;
        };
        // At most 16 elements: the push cannot fail.
        let _ = out.elements.push(element);
        at += length as usize;
    }
    out.whole = whole;
    one_frame(&whole, at, mfs, multicast_queue, out)
}

/// The fast path of [`parse_outgoing_into`] (issue 12 item 5): an SBAL whose first
/// element holds a whole frame and ends the list (`LAST_ENTRY`, no fragment flag), or
/// whose first two elements hold one frame (first, then last and `LAST_ENTRY`), read
/// and checked in straight-line code. It makes every check of [`parse_general`]:
/// non-empty elements inside the issuer's memory, the header whole in the first
/// element, well-formed, of a cast type the queue carries, with a length that matches the elements, and the
/// frame within the MFS.
///
/// Returns true with `out` filled when all of them pass. Otherwise false, with `out`
/// unspecified, and nothing else done: the caller runs [`parse_general`], which reads
/// the SBAL again and names the fault (a program that changes its SBAL in between
/// gets the verdict on what the general path read, which is all that counts).
#[inline]
pub fn parse_small<M: GuestMemory>(
    sbal: &Sbal,
    memory: &M,
    mfs: Mfs,
    multicast_queue: bool,
    out: &mut Outgoing,
) -> bool {
    let e0 = sbal.load(0);
    let second = match e0.eflags & SHAPE {
        WHOLE_AND_LAST => None,
        FIRST => {
            let e1 = sbal.load(1);
            if e1.eflags & SHAPE != LAST_AND_LAST || e1.length == 0 {
                return false;
            }
            Some(e1)
        }
        _ => return false,
    };
    // The header whole in the first element (which is then not empty either).
    if (e0.length as usize) < HEADER_SIZE {
        return false;
    }
    let Some(head) = memory.slice(e0.addr, u64::from(e0.length)) else {
        return false;
    };
    out.elements.clear();
    out.frames.clear();
    out.whole = GuestSlice::EMPTY;
    // Two pushes at most: neither fails.
    let _ = out.elements.push(head);
    let mut bytes = head.len();
    if let Some(e1) = second {
        let Some(tail) = memory.slice(e1.addr, u64::from(e1.length)) else {
            return false;
        };
        bytes += tail.len();
        let _ = out.elements.push(tail);
        // As `scan_elements` has it: the two elements as one range when the second
        // starts where the first ended (the rest of this path does not use it).
        if e1.addr == e0.addr.wrapping_add(u64::from(e0.length)) {
            out.whole = memory
                .slice(e0.addr, bytes as u64)
                .unwrap_or(GuestSlice::EMPTY);
        }
    }
    one_frame(&head, bytes, mfs, multicast_queue, out)
}

/// The frame checks and the descriptor of the fast paths ([`parse_small`],
/// [`parse_run`]), once `out.elements` holds the buffer's one frame, `bytes` in all,
/// its header at the start of `head`: the header read once, well-formed, of a cast
/// type the queue carries, with a length that matches the elements, the frame within
/// the MFS. True with the frame and the destination in `out`; false, with `out`
/// unspecified, when a check fails.
#[inline(always)]
fn one_frame(
    head: &GuestSlice,
    bytes: usize,
    mfs: Mfs,
    multicast_queue: bool,
    out: &mut Outgoing,
) -> bool {
    let mut raw = [0u8; HEADER_SIZE];
    head.read(0, &mut raw);
    let Ok(header) = L3Header::decode(&raw) else {
        return false;
    };
    if !cast_allowed(&header, multicast_queue)
        || usize::from(header.length) + HEADER_SIZE != bytes
        || bytes > mfs.bytes()
    {
        return false;
    }
    let _ = out.frames.push(FrameSpan {
        first: 0,
        last: out.elements.len() as u8 - 1,
        bytes,
        header: raw,
        eth: [0; ETH_ROUTING],
        eth_len: 0,
    });
    out.dest = NextHop::from(header.next_hop);
    out.cast = header.cast;
    out.total = bytes;
    out.payload = u64::from(header.length);
    true
}

/// Whether a frame of this header may be sent on this queue: Linux's
/// `qeth_l3_fill_header` (`drivers/s390/net/qeth_l3_main.c`) forces the unicast cast
/// type on every unicast queue, so anything else there is a program that is not
/// qeth's; on the multicast queue every cast type is valid, a multicast frame naming a
/// multicast next hop.
#[inline]
fn cast_allowed(header: &L3Header, multicast_queue: bool) -> bool {
    match header.cast {
        CastType::Unicast => true,
        CastType::Multicast => multicast_queue && header.next_hop.is_multicast(),
        CastType::Broadcast | CastType::Anycast => multicast_queue,
    }
}

/// The general path of [`parse_outgoing_into`]: any SBAL, every fault named with its
/// element. On an error `out` is unspecified.
pub fn parse_general<M: GuestMemory>(
    sbal: &Sbal,
    memory: &M,
    mfs: Mfs,
    multicast_queue: bool,
    layer2: bool,
    out: &mut Outgoing,
) -> Result<(), Fault> {
    let last = scan_elements(|i| Some(sbal.load(i)), true, memory, out)?;
    check_frames(mfs, multicast_queue, layer2, last, out)
}

/// Reads each element of `sbal` once, up to the first `LAST_ENTRY` (into a vector:
/// nothing is zeroed first); elements `0..=last`.
pub fn load_elements(sbal: &Sbal) -> Result<heapless::Vec<Sbale, SBALES_PER_SBAL>, Fault> {
    let mut sbales = heapless::Vec::<Sbale, SBALES_PER_SBAL>::new();
    let mut last = None;
    for i in 0..SBALES_PER_SBAL {
        let e = sbal.load(i);
        // At most 16 pushes: none fails.
        let _ = sbales.push(e);
        if e.is_last_entry() {
            last = Some(i);
            break;
        }
    }
    last.ok_or(Fault::at(Reason::NoLastEntry, SBALES_PER_SBAL - 1))?;
    Ok(sbales)
}

/// The checks of [`parse_outgoing_into`] over the elements of a buffer read already,
/// up to and including the one with `LAST_ENTRY` (from an SBAL, or from the QAOB that
/// recorded a pending buffer's); at most 16 are looked at.
pub fn parse_elements<M: GuestMemory>(
    sbales: &[Sbale],
    memory: &M,
    mfs: Mfs,
    multicast_queue: bool,
    layer2: bool,
    out: &mut Outgoing,
) -> Result<(), Fault> {
    let last = scan_elements(|i| sbales.get(i).copied(), false, memory, out)?;
    check_frames(mfs, multicast_queue, layer2, last, out)
}

/// The element checks of [`parse_general`] and [`parse_elements`], in one pass that
/// takes each element once from `load` (up to 16, until it returns `None`, and with
/// `until_last_entry` until the first `LAST_ENTRY`): it checks the element, translates
/// it into `out`'s elements, and delimits the frames by their fragment flags into
/// `out`'s frames (headers still to check, [`check_frames`]). Returns the last
/// element's index.
///
/// One pass, the faults in the order separate passes over the elements found them:
/// with `until_last_entry`, no `LAST_ENTRY` in 16 elements (`NoLastEntry`, 15) before
/// anything else; then the first element that is empty (`ZeroLength`) or outside the
/// issuer's memory (`AddressOutsideMemory`); then the first fragment flag out of order,
/// and a frame still open after the last element (`FragmentOrder`). So the first fault
/// of each kind is kept while the pass goes on, and they are returned in that order.
#[inline(always)]
fn scan_elements<M: GuestMemory>(
    mut load: impl FnMut(usize) -> Option<Sbale>,
    until_last_entry: bool,
    memory: &M,
    out: &mut Outgoing,
) -> Result<usize, Fault> {
    out.frames.clear();
    out.elements.clear();
    out.whole = GuestSlice::EMPTY;
    let elements = &mut out.elements;
    let frames = &mut out.frames;
    let mut element_fault: Option<Fault> = None;
    let mut order_fault: Option<Fault> = None;
    // Whether a frame is begun and not yet ended, and the last frame begun: its first
    // element and its bytes so far.
    let mut open = false;
    let mut first = 0u8;
    let mut bytes = 0usize;
    // The last frame's guest range while its elements follow one another: where it
    // starts, where the next element must start to continue it, and whether all have.
    let mut run_start = 0u64;
    let mut run_next = 0u64;
    let mut run = false;
    let mut last: Option<usize> = None;
    let mut ended = !until_last_entry;
    for i in 0..SBALES_PER_SBAL {
        let Some(e) = load(i) else { break };
        last = Some(i);
        let len = e.length as usize;
        if element_fault.is_none() {
            if len == 0 {
                element_fault = Some(Fault::at(Reason::ZeroLength, i));
            } else if let Some(slice) = memory.slice(e.addr, u64::from(e.length)) {
                // At most 16 elements: the push cannot fail.
                let _ = elements.push(slice);
            } else {
                element_fault = Some(Fault::at(Reason::AddressOutsideMemory, i));
            }
        }
        if order_fault.is_none() {
            // The fragment field as a state machine on whether a frame is open: a
            // `Middle` or `Last` element continues the open frame, a `None` or `First`
            // one begins a new frame, and any other pairing is out of order; a `None`
            // or `Last` element ends its frame.
            let bits = e.eflags & Eflags::FRAGMENT_MASK.bits();
            let continues = bits >= Fragment::Middle.bits();
            if continues != open {
                order_fault = Some(Fault::at(Reason::FragmentOrder, i));
            } else {
                if !continues {
                    first = i as u8;
                    bytes = 0;
                    run_start = e.addr;
                    run = true;
                } else {
                    run &= e.addr == run_next;
                }
                run_next = e.addr.wrapping_add(u64::from(e.length));
                bytes += len;
                let ends = bits == Fragment::None.bits() || bits == Fragment::Last.bits();
                open = !ends;
                if ends {
                    // At most 16 elements, so at most 16 frames: the push cannot fail.
                    let _ = frames.push(FrameSpan {
                        first,
                        last: i as u8,
                        bytes,
                        header: [0; HEADER_SIZE],
                        eth: [0; ETH_ROUTING],
                        eth_len: 0,
                    });
                }
            }
        }
        if until_last_entry && e.is_last_entry() {
            ended = true;
            break;
        }
    }
    let last = match last {
        Some(last) if ended => last,
        _ => return Err(Fault::at(Reason::NoLastEntry, SBALES_PER_SBAL - 1)),
    };
    if let Some(f) = element_fault.or(order_fault) {
        return Err(f);
    }
    if open {
        return Err(Fault::at(Reason::FragmentOrder, last));
    }
    // One frame over several elements, one after the other: the frame as one range,
    // if it translates as one (as each element did).
    if let [f] = frames.as_slice()
        && f.first < f.last
        && run
    {
        out.whole = memory
            .slice(run_start, f.bytes as u64)
            .unwrap_or(GuestSlice::EMPTY);
    }
    Ok(last)
}

/// The frame checks of [`parse_outgoing_into`], over the frames [`scan_elements`]
/// delimited (`last` the last element's index): each header read once and checked,
/// one destination for all, the whole within the MFS.
fn check_frames(
    mfs: Mfs,
    multicast_queue: bool,
    layer2: bool,
    last: usize,
    out: &mut Outgoing,
) -> Result<(), Fault> {
    let elements = &out.elements;
    let frames = &mut out.frames;
    if layer2 {
        return parse_layer2(mfs, multicast_queue, last, out);
    }
    let mut dest = None;
    let mut total = 0usize;
    let mut payload = 0u64;
    for f in frames.iter_mut() {
        let first = usize::from(f.first);
        let head = match elements.get(first).copied() {
            Some(s) if s.len() >= HEADER_SIZE => s,
            _ => return Err(Fault::at(Reason::ShortHeader, first)),
        };
        let mut raw = [0u8; HEADER_SIZE];
        head.read(0, &mut raw);
        if raw[0] == l2::ID_LAYER2 {
            return Err(Fault::at(Reason::WrongLayer, first));
        }
        let header = L3Header::decode(&raw).map_err(|e| {
            let reason = match e {
                HeaderError::Id(_) => Reason::HeaderId,
                HeaderError::CastType(_) => Reason::CastType,
                HeaderError::AddressFamily => Reason::AddressFamily,
            };
            Fault::at(reason, first)
        })?;
        // Only the cast types Linux sends on this queue (see `cast_allowed`).
        if !cast_allowed(&header, multicast_queue) {
            return Err(Fault::at(Reason::CastType, first));
        }
        if usize::from(header.length) + HEADER_SIZE != f.bytes {
            return Err(Fault::at(Reason::HeaderLength, first));
        }
        match dest {
            None => dest = Some((header.next_hop, header.cast)),
            Some(d) if d != (header.next_hop, header.cast) => {
                return Err(Fault::at(Reason::MixedDestinations, first));
            }
            Some(_) => {}
        }
        f.header = raw;
        total += f.bytes;
        payload += u64::from(header.length);
    }
    if total > mfs.bytes() {
        return Err(Fault::at(Reason::TooLarge, last));
    }
    let (dest, cast) = dest.ok_or(Fault::at(Reason::FragmentOrder, last))?;
    (out.dest, out.cast) = (NextHop::from(dest), cast);
    out.route = None;
    out.total = total;
    out.payload = payload;
    Ok(())
}

/// Reads up to `buf.len()` bytes of frame `f` from its offset `at`, across its
/// elements; returns how many it read.
fn read_frame(elements: &[GuestSlice], f: &FrameSpan, mut at: usize, buf: &mut [u8]) -> usize {
    let mut got = 0;
    let span = elements
        .get(usize::from(f.first)..=usize::from(f.last))
        .unwrap_or(&[]);
    for s in span {
        if got == buf.len() {
            break;
        }
        if at >= s.len() {
            at -= s.len();
            continue;
        }
        let n = (s.len() - at).min(buf.len() - got);
        if let Some(dst) = buf.get_mut(got..got + n) {
            s.read(at, dst);
        }
        got += n;
        at = 0;
    }
    got
}

/// The frame checks of [`parse_elements`] for a layer-2 queue set: each frame's header
/// is Linux's `qeth_hdr_layer2` (id 0x02; a layer-3 header is 0x2B), its length
/// matches the elements, the Ethernet frame has its MACs and EtherType (and its tag
/// when tagged: 0x2C), the header's cast flag agrees with the destination MAC (0x27;
/// group MACs only on the multicast queue) and its VLAN with the frame's tag (0x2D);
/// all frames share destination MAC and VLAN.
fn parse_layer2(
    mfs: Mfs,
    multicast_queue: bool,
    last: usize,
    out: &mut Outgoing,
) -> Result<(), Fault> {
    let elements = &out.elements;
    let frames = &mut out.frames;
    let mut route: Option<EthRoute> = None;
    let mut total = 0usize;
    let mut payload = 0u64;
    for f in frames.iter_mut() {
        let first = usize::from(f.first);
        let head = match elements.get(first).copied() {
            Some(s) if s.len() >= HEADER_SIZE => s,
            _ => return Err(Fault::at(Reason::ShortHeader, first)),
        };
        let mut raw = [0u8; HEADER_SIZE];
        head.read(0, &mut raw);
        let header = match L2Header::decode(&raw) {
            Some(h) => h,
            None if raw[0] == 0x01 => return Err(Fault::at(Reason::WrongLayer, first)),
            None => return Err(Fault::at(Reason::HeaderId, first)),
        };
        if usize::from(header.pkt_length) + HEADER_SIZE != f.bytes {
            return Err(Fault::at(Reason::HeaderLength, first));
        }
        let mut eth = [0u8; ETH_ROUTING];
        let n = read_frame(elements, f, HEADER_SIZE, &mut eth);
        let r = eth
            .get(..n)
            .and_then(EthRoute::read)
            .ok_or(Fault::at(Reason::EthernetFrame, first))?;
        let cast = MacCast::of(&r.dest);
        if header.flags != cast.flag() || (cast != MacCast::Unicast && !multicast_queue) {
            return Err(Fault::at(Reason::CastType, first));
        }
        if header.vlan_tci != r.tci {
            return Err(Fault::at(Reason::VlanMismatch, first));
        }
        match route {
            None => route = Some(r),
            Some(d) if (d.dest, d.vlan) != (r.dest, r.vlan) => {
                return Err(Fault::at(Reason::MixedDestinations, first));
            }
            Some(_) => {}
        }
        f.header = raw;
        f.eth = eth;
        f.eth_len = n as u8;
        total += f.bytes;
        payload += u64::from(header.pkt_length);
    }
    if total > mfs.bytes() {
        return Err(Fault::at(Reason::TooLarge, last));
    }
    let route = route.ok_or(Fault::at(Reason::FragmentOrder, last))?;
    out.cast = match MacCast::of(&route.dest) {
        MacCast::Unicast => CastType::Unicast,
        MacCast::Multicast => CastType::Multicast,
        MacCast::Broadcast => CastType::Broadcast,
    };
    out.route = Some(route);
    out.dest = NextHop::UNSPECIFIED;
    out.total = total;
    out.payload = payload;
    Ok(())
}

/// Why a delivery into a receive buffer failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxFault {
    /// The frames do not fit the receive buffer's elements.
    TooLarge,
    /// The receive buffer's element `0` lies outside the receiver's memory.
    BufferInvalid(u8),
}

/// Plan of one receive element, made and checked in one pass before anything is
/// written: the bytes it gets (checked to lie in the receiver's memory) and the
/// element as it will be stored.
#[derive(Clone, Copy, Debug)]
struct RxUse {
    /// The element's first `bytes` bytes; [`GuestSlice::EMPTY`] when they do not
    /// translate (the plan is then refused, after `TooLarge` had its chance).
    target: GuestSlice,
    /// What [`deliver_general`] stores, as the element's two words
    /// ([`Sbale::to_words`]): the receiver's address and `scount`, the frame's bytes
    /// in it and the fragment flags (`LAST_ENTRY` added on the last).
    words: [u64; 2],
}

/// [`Eflags::LAST_ENTRY`] in an element's first word ([`Sbale::to_words`]).
const LAST_ENTRY_WORD: u64 = (Eflags::LAST_ENTRY.bits() as u64) << 56;
/// The fragment field in an element's first word ([`Sbale::to_words`]).
const FRAGMENT_WORD: u64 = (Eflags::FRAGMENT_MASK.bits() as u64) << 56;

/// Copies the frames of `out` into the receive SBAL `rx`, each frame starting in a
/// fresh element, and rewrites the used elements (lengths, fragment flags,
/// `LAST_ENTRY` on the last). Each frame's header is the one `parse_outgoing` checked
/// and routed by; only the packet bytes after it are copied from the sender's memory. The receiver armed the elements with their addresses
/// and capacities (leading elements of non-zero length). Nothing is written unless
/// every frame fits and every element used lies in the receiver's memory.
///
/// One frame that fits the receiver's first armed element, the common small send,
/// takes the fast path ([`deliver_small`]); anything else the general one
/// ([`deliver_general`]). Both write the same bytes and elements, and refuse the same
/// way (the fast path leaves every refusal to the general one).
#[inline]
pub fn deliver<M: GuestMemory>(out: &Outgoing, rx: &Sbal, rx_memory: &M) -> Result<u8, RxFault> {
    if let Some(used) = deliver_small(out, rx, rx_memory) {
        return Ok(used);
    }
    if !out.whole.is_empty()
        && let Some(used) = deliver_whole(out, rx, rx_memory)
    {
        return Ok(used);
    }
    deliver_general(out, rx, rx_memory)
}

/// The fast path of [`deliver`] (issue 12 item 5): one frame into the receiver's first
/// armed element, in straight-line code. It checks what [`deliver_general`] checks
/// for that case (the element holds the frame, and its first `bytes` bytes lie in the
/// receiver's memory) and writes what it writes: the checked header, the packet bytes
/// from the sender's elements, and element 0 (the frame's length, no fragment flag,
/// `LAST_ENTRY`, the receiver's address and `scount`). `None`, with nothing written,
/// when the case does not apply or a check fails: the general path then decides (and
/// names the refusal).
#[inline]
pub fn deliver_small<M: GuestMemory>(out: &Outgoing, rx: &Sbal, rx_memory: &M) -> Option<u8> {
    let [f] = out.frames.as_slice() else {
        return None;
    };
    let armed = rx.load(0);
    if (armed.length as usize) < f.bytes {
        return None;
    }
    let dst = rx_memory.slice(armed.addr, f.bytes as u64)?;
    let sources = out
        .elements
        .get(usize::from(f.first)..=usize::from(f.last))?;
    let (mut s, mut rest) = sources.split_first()?;
    let routed = f.routed_len();
    f.write_routed(&dst);
    // The packet: the sender's elements in order, from the end of the routed bytes
    // (parse checked that the first holds the header whole, and that the elements add
    // up to `bytes`). One copy call site (with two, the copy was left out of line),
    // and a frame in one element, the common small frame, is the walk's first step
    // with no loop around it.
    let mut at = 0usize; // frame offset of the element's start
    loop {
        let skip = routed.saturating_sub(at).min(s.len());
        let n = s.len() - skip;
        let n = n.min(f.bytes.saturating_sub(at + skip));
        GuestSlice::copy(s, skip, &dst, at + skip, n);
        let Some((next, more)) = rest.split_first() else {
            break;
        };
        at += s.len();
        (s, rest) = (next, more);
    }
    rx.store(
        0,
        &Sbale {
            eflags: Fragment::None.bits() | Eflags::LAST_ENTRY.bits(),
            scount: armed.scount,
            sflags: 0,
            length: f.bytes as u32,
            addr: armed.addr,
        },
    );
    Some(1)
}

/// The path of [`deliver`] for a buffer's one frame over several elements that follow
/// one another in the sender's memory ([`Outgoing::whole`]), into receive elements that
/// follow one another too (each starts where the one before ended) and translate as
/// one range: the frame is copied with one call of the copy primitive, where
/// [`deliver_general`] makes one for each piece that lies in one sender and one
/// receiver element (a 56 KiB frame over pages: 14, each paying the primitive's
/// start-up). The same bytes go to the same places, and it writes what the general
/// path writes: the checked header (and layer-2 routing bytes), the rest of the frame
/// from the sender's memory, then the used elements (the frame's bytes in each, `First`,
/// `Middle`, `Last` with `LAST_ENTRY`, the receiver's address and `scount`). Each
/// receive element is read once. `None`, with nothing written, when the case does not
/// apply or a check fails (too few elements, an empty one, a gap, a range that does not
/// translate as one): the general path then decides, and names any refusal.
fn deliver_whole<M: GuestMemory>(out: &Outgoing, rx: &Sbal, rx_memory: &M) -> Option<u8> {
    let [f] = out.frames.as_slice() else {
        return None;
    };
    let src = out.whole;
    let routed = f.routed_len();
    if src.len() != f.bytes || f.bytes < routed {
        return None;
    }
    // The receive elements the frame fills, as they will be stored: element 0 gives
    // the start, each next must begin where the one before ended.
    let mut words = heapless::Vec::<[u64; 2], SBALES_PER_SBAL>::new();
    let start = rx.load(0).addr;
    let mut next = start;
    let mut remaining = f.bytes;
    while remaining > 0 {
        // 16 elements used and bytes left: the frame does not fit (the general path
        // says so).
        if words.is_full() {
            return None;
        }
        let a = rx.load(words.len());
        if a.length == 0 || a.addr != next {
            return None;
        }
        let n = remaining.min(a.length as usize);
        let fragment = if words.is_empty() {
            Fragment::First
        } else if n == remaining {
            Fragment::Last
        } else {
            Fragment::Middle
        };
        let w = Sbale {
            eflags: fragment.bits(),
            scount: a.scount,
            sflags: 0,
            length: n as u32,
            addr: a.addr,
        }
        .to_words();
        // Not full (checked above): the push cannot fail.
        let _ = words.push(w);
        next = a.addr.checked_add(n as u64)?;
        remaining -= n;
    }
    if words.len() < 2 {
        return None;
    }
    let dst = rx_memory.slice(start, f.bytes as u64)?;
    f.write_routed(&dst);
    GuestSlice::copy(&src, routed, &dst, routed, f.bytes - routed);
    store_used(rx, &words, |w| *w);
    Some(words.len() as u8)
}

/// Stores the receive elements a delivery used, in order, each as its two words
/// (`words` of each), `LAST_ENTRY` added to the last: once every byte is in place.
#[inline(always)]
fn store_used<T>(rx: &Sbal, used: &[T], words: impl Fn(&T) -> [u64; 2]) {
    if let Some((last, rest)) = used.split_last() {
        // At most 15 before the last: `take` changes nothing but lets the compiler
        // see each index in range, without the store's own check.
        for (i, u) in rest.iter().take(SBALES_PER_SBAL).enumerate() {
            rx.store_words(i, words(u));
        }
        let [w0, w1] = words(last);
        rx.store_words(rest.len(), [w0 | LAST_ENTRY_WORD, w1]);
    }
}

/// The general path of [`deliver`]: any number of frames, each across as many
/// receive elements as it needs.
///
/// Two passes over the receive elements. The plan reads each armed element once, as
/// far as the frames need them (an element of length 0 ends the list), and checks
/// its bytes at once: nothing is written unless every frame fits (else `TooLarge`)
/// and every element used translates (else `BufferInvalid` naming the first that does
/// not; `TooLarge` takes precedence, as the whole plan is made before either is
/// returned). Then the copy walks the frames, the sender's elements and the planned
/// elements in step, one copy call for each piece that lies in one sender and one
/// receiver element, and the used elements are stored last.
pub fn deliver_general<M: GuestMemory>(
    out: &Outgoing,
    rx: &Sbal,
    rx_memory: &M,
) -> Result<u8, RxFault> {
    // In a vector: nothing is zeroed first.
    let mut plan = heapless::Vec::<RxUse, SBALES_PER_SBAL>::new();
    let mut invalid: Option<u8> = None;
    for f in &out.frames {
        let start = plan.len();
        let mut remaining = f.bytes;
        // Fragment flags as if the element were not the frame's last, which the end
        // of the frame corrects (`First` for its first element, `Middle` after).
        let mut fragment = Fragment::First;
        while remaining > 0 {
            let used = plan.len();
            if used >= SBALES_PER_SBAL {
                return Err(RxFault::TooLarge);
            }
            let a = rx.load(used);
            if a.length == 0 {
                return Err(RxFault::TooLarge);
            }
            let n = remaining.min(a.length as usize);
            let target = rx_memory.slice(a.addr, n as u64).unwrap_or_else(|| {
                invalid.get_or_insert(used as u8);
                GuestSlice::EMPTY
            });
            // used < 16 (checked above): the push cannot fail.
            let _ = plan.push(RxUse {
                target,
                words: Sbale {
                    eflags: fragment.bits(),
                    scount: a.scount,
                    sflags: 0,
                    length: n as u32,
                    addr: a.addr,
                }
                .to_words(),
            });
            fragment = Fragment::Middle;
            remaining -= n;
        }
        // The frame's last element: `Last`, or no fragment flag when it is the only
        // one. (A frame has at least one element: parse refuses empty elements.)
        let single = plan.len() - start == 1;
        if let Some(p) = plan.last_mut() {
            let bits = if single {
                Fragment::None.bits()
            } else {
                Fragment::Last.bits()
            };
            p.words[0] = (p.words[0] & !FRAGMENT_WORD) | (u64::from(bits) << 56);
        }
    }
    if let Some(i) = invalid {
        return Err(RxFault::BufferInvalid(i));
    }

    // Copy, frame by frame, into the planned elements; the plan was made in the same
    // order, so `targets` walks it in step. A frame's first bytes come from the header
    // (and layer-2 routing bytes) checked in `parse_outgoing_into`, the rest from the
    // sender's elements, starting after them in its first element (which holds the
    // header whole: checked there too).
    let mut targets = plan.iter().map(|p| p.target);
    for f in &out.frames {
        let Some(mut dst) = targets.next() else { break };
        let mut dst_off = 0usize;
        let routed = f.routed_len();
        let eth = f.eth.get(..usize::from(f.eth_len)).unwrap_or(&[]);
        if dst.len() >= routed {
            // The common case: the routed bytes lie in the frame's first element.
            dst.write(0, &f.header);
            if !eth.is_empty() {
                dst.write(HEADER_SIZE, eth);
            }
            dst_off = routed;
        } else {
            // Receive elements smaller than the routed bytes: piece by piece.
            let mut head = [0u8; HEADER_SIZE + ETH_ROUTING];
            let (h, e) = head.split_at_mut(HEADER_SIZE);
            h.copy_from_slice(&f.header);
            if let Some(e) = e.get_mut(..eth.len()) {
                e.copy_from_slice(eth);
            }
            let mut pos = 0usize;
            while pos < routed {
                if dst_off == dst.len() {
                    let Some(next) = targets.next() else { break };
                    dst = next;
                    dst_off = 0;
                }
                let n = (routed - pos).min(dst.len() - dst_off);
                dst.write(dst_off, head.get(pos..pos + n).unwrap_or(&[]));
                pos += n;
                dst_off += n;
            }
        }
        // The sender's bytes after the routed ones (which may run past the first
        // element on layer 2), into the planned elements. The sources add up to the
        // frame's bytes, as do the planned elements: they run out together.
        let mut sources = out
            .elements
            .get(usize::from(f.first)..=usize::from(f.last))
            .unwrap_or(&[])
            .iter();
        let mut src_off = routed;
        let Some(mut src) = sources.next() else {
            continue;
        };
        loop {
            if src_off >= src.len() {
                src_off -= src.len();
                let Some(next) = sources.next() else { break };
                src = next;
                continue;
            }
            if dst_off == dst.len() {
                let Some(next) = targets.next() else { break };
                dst = next;
                dst_off = 0;
            }
            let n = (src.len() - src_off).min(dst.len() - dst_off);
            GuestSlice::copy(src, src_off, &dst, dst_off, n);
            src_off += n;
            dst_off += n;
        }
    }

    // The elements, stored once every byte is in place.
    let used = plan.len();
    store_used(rx, &plan, |p| p.words);
    Ok(used as u8)
}

#[cfg(test)]
mod tests {
    use core::net::Ipv4Addr;
    use core::ptr::NonNull;

    use super::*;
    use crate::guest::{Memory, Window};
    use crate::qdio::CastType;

    /// Three pages of one partition's memory, at guest address 0.
    #[repr(C, align(4096))]
    struct Ram([u8; 3 * 4096]);

    /// A next hop goes into the descriptor and comes back out as the same address, and
    /// two hops are equal (the fabric's cached-target check) exactly when their
    /// addresses are: an IPv4 address never equals the IPv6 one of the same bits.
    #[test]
    fn a_next_hop_keeps_its_address() {
        let ips = [
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            IpAddr::V4(Ipv4Addr::new(255, 255, 255, 255)),
            IpAddr::V6(core::net::Ipv6Addr::UNSPECIFIED),
            IpAddr::V6(core::net::Ipv6Addr::from_bits(0x0a00_0001)),
            IpAddr::V6(core::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
        ];
        for a in ips {
            assert_eq!(NextHop::from(a).ip(), a);
            for b in ips {
                assert_eq!(NextHop::from(a) == NextHop::from(b), a == b, "{a} {b}");
            }
        }
    }

    fn memory(ram: &mut Ram) -> Memory {
        // SAFETY: the RAM outlives the test's uses of the memory, and is reached only
        // through it from here on.
        let w = unsafe { Window::new(0, NonNull::from(&mut ram.0).cast(), ram.0.len()) };
        Memory::new(&[w]).unwrap()
    }

    fn set(sbal: &Sbal, i: usize, eflags: u8, addr: u64, length: u32) {
        sbal.store(
            i,
            &Sbale {
                eflags,
                addr,
                length,
                ..Sbale::default()
            },
        );
    }

    fn read(m: &Memory, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        m.slice(addr, len as u64).unwrap().read(0, &mut v);
        v
    }

    /// A sender rewrites its frame's header after the fabric checked it (as another
    /// core may while SIGA runs): the receiver gets the header that was checked and
    /// routed by, with the packet bytes from the sender's memory. The header here
    /// sits alone in a 32-byte first element, and the receiver armed elements smaller
    /// than the header, so it is delivered in pieces.
    #[test]
    fn delivers_the_checked_header_not_a_second_copy() {
        let (mut tx_ram, mut rx_ram) = (Box::new(Ram([0; 3 * 4096])), Box::new(Ram([0; 3 * 4096])));
        let (tx, rx) = (memory(&mut tx_ram), memory(&mut rx_ram));
        let routed = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1));
        let checked = L3Header::unicast(routed, 100).encode();
        let packet: Vec<u8> = (0..100u8).collect();
        tx.slice(0x1000, 32).unwrap().write(0, &checked);
        tx.slice(0x1800, 100).unwrap().write(0, &packet);
        let out_sbal = tx.sbal(0).unwrap();
        set(&out_sbal, 0, Fragment::First.bits(), 0x1000, 32);
        set(&out_sbal, 1, Fragment::Last.bits() | 0x40, 0x1800, 100);
        let out = parse_outgoing(&out_sbal, &tx, Mfs::K16).unwrap();
        assert_eq!(out.dest.ip(), routed);

        // Now the sender changes next hop, length and cast in its header.
        let mut forged = L3Header {
            cast: CastType::Multicast,
            length: 7,
            vlan: Some(5),
            next_hop: IpAddr::V4(Ipv4Addr::new(10, 0, 3, 1)),
        }
        .encode();
        forged[2] = 0xEE;
        tx.slice(0x1000, 32).unwrap().write(0, &forged);

        let rx_sbal = rx.sbal(0).unwrap();
        set(&rx_sbal, 0, 0, 0x1000, 20);
        set(&rx_sbal, 1, 0, 0x1100, 20);
        set(&rx_sbal, 2, 0, 0x2000, 4096);
        assert_eq!(deliver(&out, &rx_sbal, &rx), Ok(3));
        let mut got = read(&rx, 0x1000, 20);
        got.extend(read(&rx, 0x1100, 20));
        got.extend(read(&rx, 0x2000, 92));
        assert_eq!(&got[..HEADER_SIZE], &checked, "the header that was routed");
        assert_eq!(&got[HEADER_SIZE..], &packet, "the packet from the sender");
        let lengths: Vec<u32> = (0..3).map(|i| rx_sbal.load(i).length).collect();
        assert_eq!(lengths, [20, 20, 92]);
        assert!(rx_sbal.load(2).is_last_entry());
    }

    /// Several frames, each header in the first element with packet bytes after it:
    /// each receiver frame starts with its own checked header, whatever the sender
    /// wrote over the headers after the check.
    #[test]
    fn each_frame_keeps_its_own_checked_header() {
        let (mut tx_ram, mut rx_ram) = (Box::new(Ram([0; 3 * 4096])), Box::new(Ram([0; 3 * 4096])));
        let (tx, rx) = (memory(&mut tx_ram), memory(&mut rx_ram));
        let hop = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1));
        let out_sbal = tx.sbal(0).unwrap();
        let lens = [40usize, 300, 1];
        let mut want = Vec::new();
        for (i, len) in lens.iter().enumerate() {
            let at = 0x1000 + (i as u64) * 0x400;
            let mut frame = L3Header::unicast(hop, *len as u16).encode().to_vec();
            frame.extend((0..*len).map(|b| (b as u8) ^ (i as u8 * 0x55)));
            tx.slice(at, frame.len() as u64).unwrap().write(0, &frame);
            let last = if i + 1 == lens.len() { 0x40 } else { 0 };
            set(&out_sbal, i, last, at, frame.len() as u32);
            want.push(frame);
        }
        let out = parse_outgoing(&out_sbal, &tx, Mfs::K16).unwrap();
        for i in 0..lens.len() {
            let at = 0x1000 + (i as u64) * 0x400;
            tx.slice(at, HEADER_SIZE as u64)
                .unwrap()
                .fill(0, HEADER_SIZE, 0xFF);
        }
        let rx_sbal = rx.sbal(0).unwrap();
        for i in 0..4 {
            set(&rx_sbal, i, 0, 0x1000 + (i as u64) * 0x800, 0x800);
        }
        assert_eq!(deliver(&out, &rx_sbal, &rx), Ok(3));
        for (i, frame) in want.iter().enumerate() {
            let e = rx_sbal.load(i);
            assert_eq!(e.length as usize, frame.len());
            assert_eq!(&read(&rx, e.addr, frame.len()), frame, "frame {i}");
        }
    }

    /// A small deterministic generator (xorshift64*), so the comparisons below cover
    /// many shapes without a test dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn one_in(&mut self, n: u64) -> bool {
            self.below(n) == 0
        }
    }

    /// 24 pages of one partition's memory at guest address 0: room for frames beyond
    /// the smallest MFS.
    #[repr(C, align(4096))]
    #[derive(Clone)]
    struct BigRam([u8; 24 * 4096]);

    const BIG: u64 = 24 * 4096;
    /// Bytes of the memories the generator randomises: all of them, but under Miri
    /// (where every byte written is an interpreted step) the first 12 KiB.
    const FILL: usize = if cfg!(miri) { 3 * 4096 } else { BIG as usize };

    fn big_memory(ram: &mut BigRam) -> Memory {
        // SAFETY: as `memory`.
        let w = unsafe { Window::new(0, NonNull::from(&mut ram.0).cast(), ram.0.len()) };
        Memory::new(&[w]).unwrap()
    }

    /// A header for `payload` bytes, sometimes wrong in one of the ways parse checks.
    fn random_header(rng: &mut Rng, payload: usize, dirty: bool) -> [u8; HEADER_SIZE] {
        let hops = [
            IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1)),
            IpAddr::V4(Ipv4Addr::new(224, 0, 0, 5)),
            "fe80::1".parse().unwrap(),
            "ff02::1".parse().unwrap(),
        ];
        let casts = [
            CastType::Unicast,
            CastType::Multicast,
            CastType::Broadcast,
            CastType::Anycast,
        ];
        let unicast = !dirty || rng.below(3) != 0;
        let length = match if dirty { rng.below(8) } else { 7 } {
            0 => payload.wrapping_add(1) as u16,
            1 => payload.wrapping_sub(1) as u16,
            _ => payload as u16,
        };
        let mut h = L3Header {
            cast: if unicast {
                CastType::Unicast
            } else {
                casts[rng.below(4) as usize]
            },
            length,
            vlan: rng.one_in(4).then_some(7),
            next_hop: hops[rng.below(4) as usize],
        }
        .encode();
        match if dirty { rng.below(16) } else { 15 } {
            0 => h[0] = rng.next() as u8,                 // header id
            1 => h[1] = rng.next() as u8,                 // cast type and family
            2 => h[0x10 + rng.below(12) as usize] = 0x5A, // IPv4 with high bytes set
            _ => {}
        }
        h
    }

    /// Random elements for the sender's SBAL at 0 (data from page 1 on): mostly the
    /// shapes programs send (one frame in one, two or three elements; two frames),
    /// sometimes any flags, empty or short elements, elements outside the memory.
    /// Half the time (`dirty`) with deliberate faults, else well-formed but for sizes.
    /// Half the time each element starts where the one before ended (the driver's
    /// frames over consecutive pages, [`Outgoing::whole`]), else 64 bytes after it.
    fn random_outgoing(rng: &mut Rng, ram: &mut BigRam) -> Vec<Sbale> {
        let dirty = rng.one_in(2);
        let gap = if rng.one_in(2) { 0 } else { 64 };
        const LAST: u8 = 0x40;
        // One frame over all 16 elements (`parse_run`'s longest).
        let mut sixteen = [0x08u8; SBALES_PER_SBAL];
        (sixteen[0], sixteen[15]) = (0x04, 0x0C | LAST);
        let shapes: [&[u8]; 10] = [
            &[LAST],
            &[0x04, 0x0C | LAST],
            &[0x04, 0x08, 0x0C | LAST],
            &[0x00, LAST],
            &[0x04, 0x0C, LAST],
            &[0x04],
            &[0x04, 0x08, 0x08, 0x08, 0x0C | LAST],
            &sixteen,
            &[0x04, 0x08, 0x08 | LAST],
            &[0x04, 0x08, 0x0C, LAST],
        ];
        let flags: Vec<u8> = if dirty && rng.one_in(8) {
            (0..1 + rng.below(4)).map(|_| rng.next() as u8).collect()
        } else {
            shapes[rng.below(shapes.len() as u64) as usize].to_vec()
        };
        let mut elements = Vec::new();
        let mut at = 0x1000u64;
        for f in flags {
            let length = match if dirty {
                rng.below(10)
            } else {
                3 + rng.below(7)
            } {
                0 => 0,
                1 => rng.below(HEADER_SIZE as u64 + 1) as u32,
                2 => 4096 + rng.below(10 * 4096) as u32,
                _ => HEADER_SIZE as u32 + rng.below(300) as u32,
            };
            let addr = match if dirty { rng.below(24) } else { 2 } {
                0 => BIG - u64::from(length) / 2 - 1,
                1 => u64::MAX - 8,
                _ => at,
            };
            elements.push(Sbale {
                eflags: f,
                length,
                addr,
                ..Sbale::default()
            });
            at = (at + u64::from(length) + gap).min(BIG - 1);
        }
        // Data: random bytes, then a header at each frame's first element sized for
        // the frame it starts (fragments up to the next None/First), sometimes wrong.
        for b in ram.0[0x1000..FILL].iter_mut() {
            *b = rng.next() as u8;
        }
        let mut i = 0;
        while i < elements.len() {
            let mut end = i;
            if Fragment::from_eflags(elements[i].eflags) == Fragment::First {
                while end + 1 < elements.len()
                    && matches!(
                        Fragment::from_eflags(elements[end + 1].eflags),
                        Fragment::Middle | Fragment::Last
                    )
                {
                    end += 1;
                    if Fragment::from_eflags(elements[end].eflags) == Fragment::Last {
                        break;
                    }
                }
            }
            let bytes: usize = elements[i..=end].iter().map(|e| e.length as usize).sum();
            let h = random_header(rng, bytes.saturating_sub(HEADER_SIZE), dirty);
            let e = elements[i];
            let start = e.addr as usize;
            if e.length as usize >= HEADER_SIZE && start.saturating_add(HEADER_SIZE) <= ram.0.len()
            {
                ram.0[start..start + HEADER_SIZE].copy_from_slice(&h);
            }
            i = end + 1;
        }
        elements
    }

    /// Random armed elements for the receiver's SBAL at 0: capacities around the
    /// frame's size, sometimes empty, sometimes outside the memory; half the time each
    /// starting where the one before ended, else 128 bytes after it.
    fn random_armed(rng: &mut Rng, total: usize) -> Vec<Sbale> {
        let n = 1 + rng.below(4);
        let gap = if rng.one_in(2) { 0 } else { 128 };
        let mut at = 0x1000u64;
        (0..n)
            .map(|_| {
                let length = match rng.below(8) {
                    0 => 0,
                    1 => total.saturating_sub(1) as u32,
                    2 => total as u32,
                    3 => 16,
                    4 => 4096,
                    _ => total as u32 + rng.below(5000) as u32,
                };
                let addr = match rng.below(16) {
                    0 => BIG - 8,
                    1 => u64::MAX - 4,
                    _ => at,
                };
                at = (at + u64::from(length) + gap).min(BIG - 1);
                Sbale {
                    length,
                    addr,
                    scount: rng.next() as u8,
                    ..Sbale::default()
                }
            })
            .collect()
    }

    /// The fast paths against the general ones (issue 12 item 5), on the same inputs:
    /// the same descriptor or the same fault (reason and element) from parse, the same
    /// outcome and the same receiver memory, byte for byte, from deliver, on both queue
    /// kinds and every MFS. And the fast paths are taken: most well-formed one-frame
    /// sends go through them.
    #[test]
    fn fast_paths_match_the_general_ones() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut tx_ram = Box::new(BigRam([0; 24 * 4096]));
        let mut rx_a = Box::new(BigRam([0; 24 * 4096]));
        let (mut parsed_fast, mut delivered_fast, mut refused) = (0, 0, 0);
        let mut parsed_run = 0;
        let mut delivered_whole = 0;
        let rounds = if cfg!(miri) { 4 } else { 5_000 };
        for _ in 0..rounds {
            let elements = random_outgoing(&mut rng, &mut tx_ram);
            let tx = big_memory(&mut tx_ram);
            let sbal = tx.sbal(0).unwrap();
            for i in 0..SBALES_PER_SBAL {
                sbal.store(i, elements.get(i).unwrap_or(&Sbale::default()));
            }
            let mfs = [Mfs::K16, Mfs::K24, Mfs::K40, Mfs::K64][rng.below(4) as usize];
            let multicast_queue = rng.one_in(3);

            let mut general = Outgoing::empty();
            let g = parse_general(&sbal, &tx, mfs, multicast_queue, false, &mut general);
            let mut either = Outgoing::empty();
            let e = parse_outgoing_into(&sbal, &tx, mfs, multicast_queue, false, &mut either);
            assert_eq!(g, e, "parse of {elements:?}");
            let mut probe = Outgoing::empty();
            if parse_small(&sbal, &tx, mfs, multicast_queue, &mut probe) {
                parsed_fast += 1;
                assert!(g.is_ok(), "the fast path accepted what the general refused");
            }
            let mut run = Outgoing::empty();
            if parse_run(&sbal, &tx, mfs, multicast_queue, &mut run) {
                parsed_run += 1;
                assert!(g.is_ok(), "the run path accepted what the general refused");
                assert_eq!(format!("{general:?}"), format!("{run:?}"));
            }
            if g.is_err() {
                refused += 1;
                continue;
            }
            assert_eq!(format!("{general:?}"), format!("{either:?}"));

            for b in rx_a.0[..FILL].iter_mut() {
                *b = rng.next() as u8;
            }
            let mut rx_b = rx_a.clone();
            let (ma, mb) = (big_memory(&mut rx_a), big_memory(&mut rx_b));
            let (sa, sb) = (ma.sbal(0).unwrap(), mb.sbal(0).unwrap());
            let armed = random_armed(&mut rng, general.total);
            for (i, a) in armed.iter().enumerate() {
                sa.store(i, a);
                sb.store(i, a);
            }
            let mut rx_c = rx_a.clone();
            let pristine = rx_a.clone();
            let mc = big_memory(&mut rx_c);
            let sc = mc.sbal(0).unwrap();
            let want = deliver_general(&general, &sa, &ma);
            let got = deliver(&general, &sb, &mb);
            // The one-copy path, alone: where it takes the frame, exactly what the
            // general path does; where it does not, nothing written.
            match deliver_whole(&general, &sc, &mc) {
                Some(used) => {
                    delivered_whole += 1;
                    assert_eq!(want, Ok(used), "whole: {elements:?} into {armed:?}");
                    assert!(rx_a.0 == rx_c.0, "whole: {elements:?} {armed:?}");
                }
                None => assert!(rx_c.0 == pristine.0, "whole: wrote, then declined"),
            }
            assert_eq!(want, got, "deliver of {elements:?} into {armed:?}");
            assert!(
                rx_a.0 == rx_b.0,
                "receiver memory differs: {elements:?} {armed:?}"
            );
            if got.is_ok() && general.frames() == 1 {
                delivered_fast += 1;
            }
        }
        println!(
            "{parsed_fast} fast parses, {parsed_run} runs, {delivered_fast} one-frame deliveries ({delivered_whole} with one copy), {refused} refused, of {rounds}"
        );
        if !cfg!(miri) {
            assert!(parsed_run > rounds / 50, "run parses: {parsed_run}");
            assert!(
                delivered_whole > 0,
                "one-copy deliveries: {delivered_whole}"
            );
            assert!(parsed_fast > rounds / 10, "fast parses: {parsed_fast}");
            assert!(
                delivered_fast > rounds / 10,
                "one-frame deliveries: {delivered_fast}"
            );
            assert!(refused > rounds / 10, "refusals: {refused}");
        }
    }

    /// The one-copy path takes the driver's large frame: one frame over consecutive
    /// pages, into receive pages that follow one another; it stores the elements the
    /// general path would (`First`, `Middle`, `Last` with `LAST_ENTRY`, each page's
    /// bytes, the receiver's `scount`). A gap on either side leaves it to the general
    /// path, which delivers the same bytes.
    #[test]
    fn one_copy_takes_a_frame_over_consecutive_pages() {
        let (mut tx_ram, mut rx_ram) = (
            Box::new(BigRam([0; 24 * 4096])),
            Box::new(BigRam([0; 24 * 4096])),
        );
        let (tx, rx) = (big_memory(&mut tx_ram), big_memory(&mut rx_ram));
        let hop = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1));
        let len = 2 * 4096 + 1000; // three pages, the last partly used
        let mut frame = L3Header::unicast(hop, (len - HEADER_SIZE) as u16)
            .encode()
            .to_vec();
        frame.extend((0..len - HEADER_SIZE).map(|i| (i * 7) as u8));
        let sbal = tx.sbal(0).unwrap();
        let rx_sbal = rx.sbal(0).unwrap();
        for (tx_gap, rx_gap) in [(0u64, 0u64), (64, 0), (0, 64)] {
            // The sender's three elements (a gap before the second, if any).
            let starts = [0x1000, 0x2000 + tx_gap, 0x3000 + tx_gap];
            let lengths = [4096u32, 4096, 1000];
            for (i, (&at, &n)) in starts.iter().zip(&lengths).enumerate() {
                let from = i * 4096;
                tx.slice(at, u64::from(n))
                    .unwrap()
                    .write(0, &frame[from..from + n as usize]);
                let flags = [0x04, 0x08, 0x0C | 0x40][i];
                set(&sbal, i, flags, at, n);
            }
            let mut out = Outgoing::empty();
            parse_outgoing_into(&sbal, &tx, Mfs::K16, false, false, &mut out).unwrap();
            assert_eq!(out.whole.len(), if tx_gap == 0 { len } else { 0 });
            // The run path takes the consecutive pages, with one translation, and gives
            // what the general path gives; a gap is the general path's.
            let mut run = Outgoing::empty();
            assert_eq!(
                parse_run(&sbal, &tx, Mfs::K16, false, &mut run),
                tx_gap == 0,
                "gap {tx_gap}"
            );
            let mut general = Outgoing::empty();
            parse_general(&sbal, &tx, Mfs::K16, false, false, &mut general).unwrap();
            assert_eq!(format!("{general:?}"), format!("{out:?}"));
            if tx_gap == 0 {
                assert_eq!(format!("{general:?}"), format!("{run:?}"));
            }
            // Four armed pages at 0x8000 (a gap before the second, if any).
            for i in 0..4u64 {
                let gap = if i > 0 { rx_gap } else { 0 };
                rx_sbal.store(
                    i as usize,
                    &Sbale {
                        addr: 0x8000 + i * 4096 + gap,
                        length: 4096,
                        scount: 7,
                        ..Sbale::default()
                    },
                );
            }
            let one = deliver_whole(&out, &rx_sbal, &rx);
            let taken = tx_gap == 0 && rx_gap == 0;
            assert_eq!(one, taken.then_some(3), "gaps {tx_gap} {rx_gap}");
            if !taken {
                assert_eq!(deliver(&out, &rx_sbal, &rx), Ok(3));
            }
            let mut got = Vec::new();
            for i in 0..3 {
                let e = rx_sbal.load(i);
                let want_flags = [0x04, 0x08, 0x0C | 0x40][i];
                assert_eq!((e.eflags, e.length, e.scount), (want_flags, lengths[i], 7));
                got.extend(read(&rx, e.addr, e.length as usize));
            }
            assert_eq!(got, frame, "gaps {tx_gap} {rx_gap}");
        }
    }

    /// The fast paths take what they are for: one frame in one element, and in two.
    #[test]
    fn fast_paths_take_one_and_two_element_frames() {
        let (mut tx_ram, mut rx_ram) = (Box::new(Ram([0; 3 * 4096])), Box::new(Ram([0; 3 * 4096])));
        let (tx, rx) = (memory(&mut tx_ram), memory(&mut rx_ram));
        let hop = IpAddr::V4(Ipv4Addr::new(10, 0, 2, 1));
        let sbal = tx.sbal(0).unwrap();
        let mut frame = L3Header::unicast(hop, 64).encode().to_vec();
        frame.extend(0..64u8);
        tx.slice(0x1000, 96).unwrap().write(0, &frame);
        for split in [96u32, 40] {
            if split == 96 {
                set(&sbal, 0, 0x40, 0x1000, 96);
            } else {
                set(&sbal, 0, 0x04, 0x1000, split);
                set(&sbal, 1, 0x4C, 0x1000 + u64::from(split), 96 - split);
            }
            let mut out = Outgoing::empty();
            assert!(parse_small(&sbal, &tx, Mfs::K16, false, &mut out));
            assert_eq!((out.dest.ip(), out.total, out.payload), (hop, 96, 64));
            let rx_sbal = rx.sbal(0).unwrap();
            set(&rx_sbal, 0, 0, 0x2000, 4096);
            assert_eq!(deliver_small(&out, &rx_sbal, &rx), Some(1));
            assert_eq!(read(&rx, 0x2000, 96), frame);
            let e = rx_sbal.load(0);
            assert_eq!((e.eflags, e.length, e.addr), (0x40, 96, 0x2000));
            // What the fast path leaves to the general one: a receiver element too
            // small, and a frame on a unicast queue with a multicast cast type.
            set(&rx_sbal, 0, 0, 0x2000, 95);
            assert_eq!(deliver_small(&out, &rx_sbal, &rx), None);
        }
        let mut h = L3Header::unicast(hop, 64);
        h.cast = CastType::Broadcast;
        tx.slice(0x1000, 32).unwrap().write(0, &h.encode());
        let mut out = Outgoing::empty();
        assert!(!parse_small(&sbal, &tx, Mfs::K16, false, &mut out));
        assert_eq!(
            parse_outgoing_into(&sbal, &tx, Mfs::K16, false, false, &mut out),
            Err(Fault::at(Reason::CastType, 0))
        );
    }
}
