//! The data movement of one send, as two steps over guest memory: read and check the
//! sender's SBAL ([`parse_outgoing`]), then copy its frames into a receiver's SBAL
//! ([`deliver`]). No locks and no policy here: the fabric calls these under its locks.

use core::net::IpAddr;

use crate::guest::{GuestSlice, Memory, Sbal};
use crate::qdio::{
    Eflags, Fragment, HEADER_SIZE, HeaderError, L3Header, Mfs, Reason, SBALES_PER_SBAL, Sbale,
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

/// One frame of an outgoing SBAL: elements `first..=last`.
#[derive(Clone, Copy, Debug)]
struct FrameSpan {
    first: u8,
    last: u8,
    bytes: usize,
}

/// A checked outgoing SBAL: its elements translated, its frames delimited, its
/// destination read once from the frame headers.
#[derive(Debug)]
pub struct Outgoing {
    elements: [Option<GuestSlice>; SBALES_PER_SBAL],
    frames: heapless::Vec<FrameSpan, SBALES_PER_SBAL>,
    /// The next hop all frames name.
    pub dest: IpAddr,
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
        self.elements.get(usize::from(i)).copied().flatten()
    }

    /// An empty descriptor, to parse into with [`parse_outgoing_into`].
    pub const fn empty() -> Self {
        Self {
            elements: [None; SBALES_PER_SBAL],
            frames: heapless::Vec::new(),
            dest: IpAddr::V4(core::net::Ipv4Addr::UNSPECIFIED),
            total: 0,
            payload: 0,
        }
    }
}

/// Reads the sender's SBAL once and checks it: `LAST_ENTRY` within 16 elements, no
/// empty element, every element inside the issuer's memory, fragment flags in order,
/// each frame's header well-formed with a length that matches its elements, one next
/// hop for all frames, and the whole within the maximum frame size.
pub fn parse_outgoing(sbal: &Sbal, memory: &Memory, mfs: Mfs) -> Result<Outgoing, Fault> {
    let mut out = Outgoing::empty();
    parse_outgoing_into(sbal, memory, mfs, &mut out)?;
    Ok(out)
}

/// [`parse_outgoing`] into a caller's descriptor, which the send path keeps in place
/// rather than moving a half-KiB value around. On an error `out` is unspecified.
pub fn parse_outgoing_into(
    sbal: &Sbal,
    memory: &Memory,
    mfs: Mfs,
    out: &mut Outgoing,
) -> Result<(), Fault> {
    // Read each element once, up to the first LAST_ENTRY.
    let mut sbales = [Sbale::default(); SBALES_PER_SBAL];
    let mut last = None;
    for (i, e) in sbales.iter_mut().enumerate() {
        *e = sbal.load(i);
        if e.is_last_entry() {
            last = Some(i);
            break;
        }
    }
    let last = last.ok_or(Fault::at(Reason::NoLastEntry, SBALES_PER_SBAL - 1))?;

    out.frames.clear();
    let elements = &mut out.elements;
    for (i, e) in sbales[..=last].iter().enumerate() {
        if e.length == 0 {
            return Err(Fault::at(Reason::ZeroLength, i));
        }
        elements[i] = Some(
            memory
                .slice(e.addr, u64::from(e.length))
                .ok_or(Fault::at(Reason::AddressOutsideMemory, i))?,
        );
    }

    let frames = &mut out.frames;
    let mut open: Option<FrameSpan> = None;
    for (i, e) in sbales[..=last].iter().enumerate() {
        let len = e.length as usize;
        let idx = i as u8;
        let span = match (e.fragment(), open.take()) {
            (Fragment::None, None) => Some(FrameSpan {
                first: idx,
                last: idx,
                bytes: len,
            }),
            (Fragment::First, None) => {
                open = Some(FrameSpan {
                    first: idx,
                    last: idx,
                    bytes: len,
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
    for f in frames.iter() {
        let first = usize::from(f.first);
        let head = match elements[first] {
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
        if header.cast != crate::qdio::CastType::Unicast {
            return Err(Fault::at(Reason::CastType, first));
        }
        if usize::from(header.length) + HEADER_SIZE != f.bytes {
            return Err(Fault::at(Reason::HeaderLength, first));
        }
        match dest {
            None => dest = Some(header.next_hop),
            Some(d) if d != header.next_hop => {
                return Err(Fault::at(Reason::MixedDestinations, first));
            }
            Some(_) => {}
        }
        total += f.bytes;
        payload += u64::from(header.length);
    }
    if total > mfs.bytes() {
        return Err(Fault::at(Reason::TooLarge, last));
    }
    out.dest = dest.ok_or(Fault::at(Reason::FragmentOrder, last))?;
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
/// `LAST_ENTRY` on the last). The receiver armed the elements with their addresses
/// and capacities (leading elements of non-zero length). Nothing is written unless
/// every frame fits and every element used lies in the receiver's memory.
pub fn deliver(out: &Outgoing, rx: &Sbal, rx_memory: &Memory) -> Result<u8, RxFault> {
    // The armed elements, read once each and only as far as the plan needs them.
    let mut armed = [Sbale::default(); SBALES_PER_SBAL];
    let mut loaded = 0usize;
    let mut capacity = SBALES_PER_SBAL;

    // Plan: which receive element carries what.
    let mut plan = [RxUse::default(); SBALES_PER_SBAL];
    let mut used = 0usize;
    for f in &out.frames {
        let start = used;
        let mut remaining = f.bytes;
        while remaining > 0 {
            if used == loaded && loaded < capacity {
                armed[loaded] = rx.load(loaded);
                if armed[loaded].length == 0 {
                    capacity = loaded;
                } else {
                    loaded += 1;
                }
            }
            if used >= capacity.min(loaded) {
                return Err(RxFault::TooLarge);
            }
            let n = remaining.min(armed[used].length as usize);
            plan[used] = RxUse {
                bytes: n,
                position: (used - start) as u8,
                of: 0,
            };
            remaining -= n;
            used += 1;
        }
        let of = (used - start) as u8;
        for p in &mut plan[start..used] {
            p.of = of;
        }
    }

    // Check every element the plan uses before writing any.
    let mut targets = [None; SBALES_PER_SBAL];
    for (i, p) in plan[..used].iter().enumerate() {
        targets[i] = Some(
            rx_memory
                .slice(armed[i].addr, p.bytes as u64)
                .ok_or(RxFault::BufferInvalid(i as u8))?,
        );
    }

    // Copy, frame by frame, from the source elements' bytes into the planned ones; the
    // plan was made in the same order, so `rx_i` walks it in step.
    let mut rx_i = 0usize;
    for f in &out.frames {
        let mut src = f.first;
        let mut src_off = 0usize;
        let mut remaining = f.bytes;
        while remaining > 0 && rx_i < used {
            let (Some(dst), want) = (targets[rx_i], plan[rx_i].bytes) else {
                break;
            };
            let mut dst_off = 0usize;
            while dst_off < want {
                let Some(s) = out.element(src) else { break };
                let n = (want - dst_off).min(s.len() - src_off);
                GuestSlice::copy(&s, src_off, &dst, dst_off, n);
                dst_off += n;
                src_off += n;
                if src_off == s.len() {
                    src += 1;
                    src_off = 0;
                }
            }
            remaining -= want;
            rx_i += 1;
        }
    }

    for (i, p) in plan[..used].iter().enumerate() {
        let mut eflags = Fragment::for_element(usize::from(p.position), usize::from(p.of)).bits();
        if i + 1 == used {
            eflags |= Eflags::LAST_ENTRY.bits();
        }
        rx.store(
            i,
            &Sbale {
                eflags,
                scount: armed[i].scount,
                sflags: 0,
                length: p.bytes as u32,
                addr: armed[i].addr,
            },
        );
    }
    Ok(used as u8)
}
