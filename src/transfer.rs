//! The data movement of one send, as two steps over guest memory: read and check the
//! sender's SBAL ([`parse_outgoing`]), then copy its frames into a receiver's SBAL
//! ([`deliver`]). No locks and no policy here: the fabric calls these under its locks.

use core::net::IpAddr;

use crate::guest::{GuestMemory, GuestSlice, MemoryExt, Sbal};
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
}

/// A checked outgoing SBAL: its elements translated, its frames delimited, its
/// destination read once from the frame headers.
#[derive(Debug)]
pub struct Outgoing {
    /// Elements `0..=last`, translated (a vector: an empty one costs one store, where
    /// an array of 16 options was zeroed, 256 bytes, on every send).
    elements: heapless::Vec<GuestSlice, SBALES_PER_SBAL>,
    frames: heapless::Vec<FrameSpan, SBALES_PER_SBAL>,
    /// The next hop all frames name.
    pub dest: IpAddr,
    /// The cast type all frames carry.
    pub cast: CastType,
    /// Bytes in all frames, headers included.
    pub total: usize,
    /// Packet bytes in all frames (headers excluded).
    pub payload: u64,
}

impl Outgoing {
    /// Frames in the SBAL.
    pub fn frames(&self) -> usize {
        self.frames.len()
    }

    fn element(&self, i: u8) -> Option<GuestSlice> {
        self.elements.get(usize::from(i)).copied()
    }

    /// An empty descriptor, to parse into with [`parse_outgoing_into`].
    ///
    /// Not a `const fn`, and `total` passes through `black_box`: a descriptor the
    /// compiler can fold to a constant is materialised by zeroing all of its 1 KiB
    /// (the vectors' uninitialised room included: a `memset` of 77 instructions on
    /// every send, callgrind); with one field it cannot fold, only the lengths and
    /// scalars are written. (`black_box` is a hint: should a compiler fold it anyway,
    /// the cost comes back, the result does not change.)
    #[inline]
    pub fn empty() -> Self {
        Self {
            elements: heapless::Vec::new(),
            frames: heapless::Vec::new(),
            dest: IpAddr::V4(core::net::Ipv4Addr::UNSPECIFIED),
            cast: CastType::Unicast,
            total: core::hint::black_box(0),
            payload: 0,
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
    parse_outgoing_into(sbal, memory, mfs, false, &mut out)?;
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
pub fn parse_outgoing_into<M: GuestMemory>(
    sbal: &Sbal,
    memory: &M,
    mfs: Mfs,
    multicast_queue: bool,
    out: &mut Outgoing,
) -> Result<(), Fault> {
    // Read each element once, up to the first LAST_ENTRY (into a vector: nothing is
    // zeroed first).
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
    let last = last.ok_or(Fault::at(Reason::NoLastEntry, SBALES_PER_SBAL - 1))?;

    out.frames.clear();
    out.elements.clear();
    let elements = &mut out.elements;
    for (i, e) in sbales.iter().enumerate() {
        if e.length == 0 {
            return Err(Fault::at(Reason::ZeroLength, i));
        }
        let slice = memory
            .slice(e.addr, u64::from(e.length))
            .ok_or(Fault::at(Reason::AddressOutsideMemory, i))?;
        // At most 16 elements (`last` < 16): the push cannot fail.
        let _ = elements.push(slice);
    }

    let frames = &mut out.frames;
    let mut open: Option<FrameSpan> = None;
    for (i, e) in sbales.iter().enumerate() {
        let len = e.length as usize;
        let idx = i as u8;
        let span = match (e.fragment(), open.take()) {
            (Fragment::None, None) => Some(FrameSpan {
                first: idx,
                last: idx,
                bytes: len,
                header: [0; HEADER_SIZE],
            }),
            (Fragment::First, None) => {
                open = Some(FrameSpan {
                    first: idx,
                    last: idx,
                    bytes: len,
                    header: [0; HEADER_SIZE],
                });
                None
            }
            (Fragment::Middle, Some(mut f)) => {
                f.last = idx;
                f.bytes += len;
                open = Some(f);
                None
            }
            (Fragment::Last, Some(mut f)) => {
                f.last = idx;
                f.bytes += len;
                Some(f)
            }
            _ => return Err(Fault::at(Reason::FragmentOrder, i)),
        };
        if let Some(f) = span {
            // At most 16 elements, so at most 16 frames: the push cannot fail.
            let _ = frames.push(f);
        }
    }
    if open.is_some() {
        return Err(Fault::at(Reason::FragmentOrder, last));
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
        let header = L3Header::decode(&raw).map_err(|e| {
            let reason = match e {
                HeaderError::Id(_) => Reason::HeaderId,
                HeaderError::CastType(_) => Reason::CastType,
                HeaderError::AddressFamily => Reason::AddressFamily,
            };
            Fault::at(reason, first)
        })?;
        // Linux's qeth_l3_fill_header (qeth_l3_main.c) forces the unicast cast type on
        // every unicast queue, so anything else there is a program that is not qeth's.
        let cast_ok = match header.cast {
            CastType::Unicast => true,
            CastType::Multicast => multicast_queue && header.next_hop.is_multicast(),
            CastType::Broadcast | CastType::Anycast => multicast_queue,
        };
        if !cast_ok {
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
    (out.dest, out.cast) = dest.ok_or(Fault::at(Reason::FragmentOrder, last))?;
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

/// Plan of one receive element: which frame it carries and how many bytes.
#[derive(Clone, Copy, Debug, Default)]
struct RxUse {
    bytes: usize,
    position: u8, // index of this element within its frame
    of: u8,       // elements the frame takes
}

/// Copies the frames of `out` into the receive SBAL `rx`, each frame starting in a
/// fresh element, and rewrites the used elements (lengths, fragment flags,
/// `LAST_ENTRY` on the last). Each frame's header is the one `parse_outgoing` checked
/// and routed by; only the packet bytes after it are copied from the sender's memory. The receiver armed the elements with their addresses
/// and capacities (leading elements of non-zero length). Nothing is written unless
/// every frame fits and every element used lies in the receiver's memory.
pub fn deliver<M: GuestMemory>(out: &Outgoing, rx: &Sbal, rx_memory: &M) -> Result<u8, RxFault> {
    // The armed elements, read once each and only as far as the plan needs them (in
    // vectors: nothing is zeroed first). An element of length 0 ends the list.
    let mut armed = heapless::Vec::<Sbale, SBALES_PER_SBAL>::new();
    let mut ended = false;

    // Plan: which receive element carries what.
    let mut plan = heapless::Vec::<RxUse, SBALES_PER_SBAL>::new();
    for f in &out.frames {
        let start = plan.len();
        let mut remaining = f.bytes;
        while remaining > 0 {
            let used = plan.len();
            if used == armed.len() && !ended && used < SBALES_PER_SBAL {
                let a = rx.load(used);
                if a.length == 0 {
                    ended = true;
                } else {
                    // used < 16: the push cannot fail.
                    let _ = armed.push(a);
                }
            }
            let Some(a) = armed.get(used) else {
                return Err(RxFault::TooLarge);
            };
            let n = remaining.min(a.length as usize);
            // used < armed.len() <= 16: the push cannot fail.
            let _ = plan.push(RxUse {
                bytes: n,
                position: (used - start) as u8,
                of: 0,
            });
            remaining -= n;
        }
        let of = (plan.len() - start) as u8;
        for p in plan.get_mut(start..).into_iter().flatten() {
            p.of = of;
        }
    }
    let used = plan.len();

    // Check every element the plan uses before writing any.
    let mut targets = heapless::Vec::<GuestSlice, SBALES_PER_SBAL>::new();
    for (i, (p, a)) in plan.iter().zip(armed.iter()).enumerate() {
        let t = rx_memory
            .slice(a.addr, p.bytes as u64)
            .ok_or(RxFault::BufferInvalid(i as u8))?;
        // As many as the plan's entries, at most 16: the push cannot fail.
        let _ = targets.push(t);
    }

    // Copy, frame by frame, into the planned elements; the plan was made in the same
    // order, so `rx_i` walks it in step. A frame's first 32 bytes come from the header
    // checked in `parse_outgoing_into`, the rest from the sender's elements, starting
    // after the header in its first element (which holds it whole: checked there too).
    let mut rx_i = 0usize;
    for f in &out.frames {
        let mut pos = 0usize; // bytes of the frame written so far
        let mut src = f.first;
        let mut src_off = HEADER_SIZE;
        while pos < f.bytes && rx_i < used {
            let (Some(&dst), Some(p)) = (targets.get(rx_i), plan.get(rx_i)) else {
                break;
            };
            let want = p.bytes;
            let mut dst_off = 0usize;
            while dst_off < want {
                let n = if pos < HEADER_SIZE {
                    let n = (want - dst_off).min(HEADER_SIZE - pos);
                    dst.write(dst_off, &f.header[pos..pos + n]);
                    n
                } else {
                    let Some(s) = out.element(src) else { break };
                    if src_off >= s.len() {
                        // Only a first element of exactly the header's size ends here
                        // (parse refuses empty elements): the payload starts in the next.
                        src += 1;
                        src_off = 0;
                        continue;
                    }
                    let n = (want - dst_off).min(s.len() - src_off);
                    GuestSlice::copy(&s, src_off, &dst, dst_off, n);
                    src_off += n;
                    n
                };
                dst_off += n;
                pos += n;
            }
            rx_i += 1;
        }
    }

    // Zipped rather than indexed: no bounds check (and no panic path) on the send path.
    for (i, (p, a)) in plan.iter().zip(armed.iter()).take(used).enumerate() {
        let mut eflags = Fragment::for_element(usize::from(p.position), usize::from(p.of)).bits();
        if i + 1 == used {
            eflags |= Eflags::LAST_ENTRY.bits();
        }
        rx.store(
            i,
            &Sbale {
                eflags,
                scount: a.scount,
                sflags: 0,
                length: p.bytes as u32,
                addr: a.addr,
            },
        );
    }
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
        assert_eq!(out.dest, routed);

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
}
