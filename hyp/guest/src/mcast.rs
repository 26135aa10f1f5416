//! The multicast scenario (`cargo xtask run --scenario multicast`), as one partition
//! plays it: it joins groups and the broadcast domain by the rules of
//! `iqdio_hvc::multicast` (and joins and leaves a spare group, the leave call's
//! exercise), then in every round sends one frame to a group, one to the broadcast
//! address and one unicast, each on its queue (the group and the broadcast on the
//! multicast queue), and checks every copy it receives: its header's cast type and
//! next hop, its checksum, and its sequence number on its channel (sender and group,
//! broadcast or unicast).
//!
//! Receivers keep up by construction: a phase of a few rounds fits in the 64 input
//! buffers each partition arms, and every partition takes its input between two
//! barriers before the next phase starts, so no member is ever full and no copy is
//! missed (the hypervisor checks the fabric's `group_missed` counters for that).

use core::net::IpAddr;

use iqdio::Reason;
use iqdio::driver::{Dest, DriverConfig, SendError};
use iqdio::qdio::CastType;
use iqdio_hvc::multicast::{
    BROADCAST_BIT, GROUPS, ROUNDS_PER_PHASE, SPARE, broadcast, copies_from, group_of, joins,
    memberships, phases, unicast_to,
};
use iqdio_hvc::{ExitStatus, RC_OK};

use crate::node::{
    self, DATA, HEAD, MAX_PARTITIONS, MFS, Node, build, checksum, join_group, leave_group, parse,
    set_broadcast,
};
use crate::rt::{self, HvcSiga};
use crate::say;

/// Frames each partition sends (`IQDIO_FRAMES`): rounded down to whole phases.
const FRAMES: u32 = parse(option_env!("IQDIO_FRAMES"), 2000);
/// Frame kind of a group frame (its dst byte is the group's index).
const GROUP: u8 = 3;
/// Frame kind of a broadcast frame (its dst byte is [`ANY`]).
const BCAST: u8 = 4;
/// The dst byte of a broadcast frame.
const ANY: u8 = 0xFF;
/// Channels a sender's frames are numbered on: one per group, the broadcast domain,
/// unicast.
const CHANNELS: usize = GROUPS.len() + 2;
const BCAST_CHANNEL: usize = GROUPS.len();
const UNICAST_CHANNEL: usize = GROUPS.len() + 1;
/// Time limit of the whole scenario.
const LIMIT_NS: u64 = 300_000_000_000;

/// What one partition counts.
#[derive(Default)]
struct Counts {
    sent: u64,
    received: u64,
    corrupted: u64,
    duplicated: u64,
}

/// Scratch for building and checking frames (off the stack).
static SCRATCH: spin::Mutex<[u8; 65536]> = spin::Mutex::new([0; 65536]);

/// Size of frame `i` of `core`: mostly up to 1500 bytes, every 8th up to the MTU.
fn size(core: usize, i: u32) -> usize {
    let h = (i.wrapping_mul(2_654_435_761) ^ (core as u32).wrapping_mul(40_503)) as usize;
    if i.is_multiple_of(8) {
        HEAD + h % (MFS.mtu() - HEAD)
    } else {
        HEAD + h % 1500
    }
}

fn fail(what: &str, counts: &Counts) -> ! {
    say!("multicast: {}", what);
    rt::exit(
        ExitStatus::Failure,
        [
            counts.sent,
            counts.received,
            counts.corrupted,
            counts.duplicated,
            0,
        ],
    )
}

/// The scenario; ends with the exit call carrying (frames sent, copies received intact,
/// corrupted, duplicated, copies it expected by the rules).
pub fn run(lpar: usize, n: usize) -> ! {
    let mut counts = Counts::default();
    let config = DriverConfig {
        rx_buffers: 64,
        ..node::driver_config()
    };
    let mut node = match Node::attach_with(lpar, n, config) {
        Ok(node) => node,
        Err(e) => fail(e, &counts),
    };
    for (g, group) in GROUPS.iter().enumerate() {
        if joins(lpar, g) && join_group(0, *group) != RC_OK {
            fail("join refused", &counts);
        }
    }
    // The leave call: join and leave a spare group; leaving it twice is "not found".
    let not_found = u64::from(iqdio::RegistrationError::NotFound.code());
    if join_group(0, SPARE) != RC_OK
        || leave_group(0, SPARE) != RC_OK
        || leave_group(0, SPARE) != not_found
    {
        fail("spare group join/leave", &counts);
    }
    if broadcast(lpar, n) && set_broadcast(0, 1) != RC_OK {
        fail("broadcast switch refused", &counts);
    }
    let phases = phases(FRAMES);
    let rounds = phases * ROUNDS_PER_PHASE;
    let mut bits = [0u32; MAX_PARTITIONS];
    for (p, b) in bits.iter_mut().enumerate().take(n) {
        *b = memberships(p, n);
    }
    let expected: u64 = (0..n)
        .map(|src| copies_from(src, lpar, n, rounds, &bits[..n]))
        .sum();
    node.queue.start_polling();
    let deadline = rt::now_ns() + LIMIT_NS;
    let mut tx_seq = [0u32; CHANNELS];
    let mut tx_unicast = [0u32; MAX_PARTITIONS];
    let mut rx_seq = [[0u32; CHANNELS]; MAX_PARTITIONS];
    // Everyone joined before anyone sends.
    rt::barrier();
    for phase in 0..phases {
        for k in 0..ROUNDS_PER_PHASE {
            let r = phase * ROUNDS_PER_PHASE + k;
            let g = group_of(lpar, r);
            let sends = [
                (Dest::Group(GROUPS[g]), GROUP, g as u8, g),
                (
                    Dest::Broadcast(core::net::Ipv4Addr::BROADCAST),
                    BCAST,
                    ANY,
                    BCAST_CHANNEL,
                ),
            ];
            for (i, (dest, kind, dst, channel)) in sends.into_iter().enumerate() {
                let len = size(lpar, r * 3 + i as u32);
                if !send(&mut node, dest, (kind, dst), tx_seq[channel], len, deadline) {
                    fail("a group or broadcast frame could not be sent", &counts);
                }
                tx_seq[channel] += 1;
                counts.sent += 1;
            }
            let to = unicast_to(lpar, n, r);
            let dest = Dest::Unicast(if r.is_multiple_of(2) {
                node::v4(to)
            } else {
                node::v6(to)
            });
            let len = size(lpar, r * 3 + 2);
            if !send(
                &mut node,
                dest,
                (DATA, to as u8),
                tx_unicast[to],
                len,
                deadline,
            ) {
                fail("a unicast frame could not be sent", &counts);
            }
            tx_unicast[to] += 1;
            counts.sent += 1;
        }
        // Every send of the phase has been delivered (SIGA is synchronous): take it
        // all, then let the next phase start.
        rt::barrier();
        take(&mut node, lpar, n, &mut rx_seq, &mut counts);
        rt::barrier();
    }
    if node.queue.stop_polling() {
        take(&mut node, lpar, n, &mut rx_seq, &mut counts);
    }
    say!(
        "multicast: groups joined {}, broadcast {}, sent {} frames, received {} copies of {} expected, corrupted {}, duplicated {}",
        (0..GROUPS.len()).filter(|&g| joins(lpar, g)).count(),
        if bits[lpar] & BROADCAST_BIT != 0 {
            "on"
        } else {
            "off"
        },
        counts.sent,
        counts.received,
        expected,
        counts.corrupted,
        counts.duplicated
    );
    let ok = counts.received == expected && counts.corrupted == 0 && counts.duplicated == 0;
    rt::exit(
        if ok {
            ExitStatus::Pass
        } else {
            ExitStatus::Failure
        },
        [
            counts.sent,
            counts.received,
            counts.corrupted,
            counts.duplicated,
            expected,
        ],
    )
}

/// Sends one frame of `len` bytes to `dest` with head (kind, dst byte) and `seq`; a
/// refusal (only "target full" is expected, and never here) is retried until the
/// deadline, other refusals give up.
fn send(
    node: &mut Node,
    dest: Dest,
    (kind, dst): (u8, u8),
    seq: u32,
    len: usize,
    deadline: u64,
) -> bool {
    let len = len.clamp(HEAD, MFS.mtu());
    let core = node.core;
    loop {
        let mut scratch = SCRATCH.lock();
        build(&mut scratch[..len], core, usize::from(dst), kind, seq);
        match node.queue.send(&HvcSiga, dest, &scratch[..len]) {
            Ok(()) => return true,
            Err(SendError::Refused(Reason::TargetFull)) if rt::now_ns() < deadline => {}
            Err(e) => {
                say!("multicast: send to {:?} failed: {:?}", dest, e);
                return false;
            }
        }
    }
}

/// Takes every frame waiting and checks each: cast type and next hop against its
/// kind, checksum, and sequence number on its channel.
fn take(
    node: &mut Node,
    me: usize,
    n: usize,
    rx_seq: &mut [[u32; CHANNELS]; MAX_PARTITIONS],
    counts: &mut Counts,
) {
    loop {
        let mut scratch = SCRATCH.lock();
        let got = node.queue.receive(|f| {
            let len = f.copy_to(&mut scratch[..]);
            // A layer-3 queue set: every frame has a layer-3 header (`None` would be a
            // layer-2 frame, which the driver does not hand over here).
            let checked = f
                .header()
                .and_then(|h| check(&scratch[..len], h.cast, h.next_hop, me, n));
            match checked {
                Some((src, channel, seq)) => match rx_seq[src][channel] {
                    want if seq == want => {
                        rx_seq[src][channel] += 1;
                        counts.received += 1;
                    }
                    want if seq < want => counts.duplicated += 1,
                    _ => counts.corrupted += 1,
                },
                None => counts.corrupted += 1,
            }
        });
        if got.is_none() {
            return;
        }
    }
}

/// (src, channel, seq) of an intact frame for `me`, whose header's cast type and next
/// hop fit its kind.
fn check(
    frame: &[u8],
    cast: CastType,
    next_hop: IpAddr,
    me: usize,
    n: usize,
) -> Option<(usize, usize, u32)> {
    if frame.len() < HEAD {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes([frame[i], frame[i + 1], frame[i + 2], frame[i + 3]]);
    let (src, dst, kind) = (usize::from(frame[0]), frame[1], frame[2]);
    if src >= n || src == me || word(8) as usize != frame.len() || word(12) != checksum(frame) {
        return None;
    }
    let channel = match (kind, cast) {
        (GROUP, CastType::Multicast)
            if GROUPS.get(usize::from(dst)) == Some(&next_hop) && joins(me, usize::from(dst)) =>
        {
            usize::from(dst)
        }
        (BCAST, CastType::Broadcast) if dst == ANY => BCAST_CHANNEL,
        (DATA, CastType::Unicast) if usize::from(dst) == me => UNICAST_CHANNEL,
        _ => return None,
    };
    Some((src, channel, word(4)))
}
