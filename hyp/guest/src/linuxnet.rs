//! The bare-metal side of the linux-net scenario (`cargo xtask run --scenario
//! linux-net`): a smoltcp partition on the same layer-2 LAN as the Linux guests, whose
//! virtio-net rings are their queue sets on the fabric (`hyp/src/vm/linux.rs`).
//!
//! It is partition 0; the Linux guests are partitions 1 to n - 1. Its queue set is
//! set up as the layer-2 scenario's ([`l2::attach`]) on the untagged LAN (VLAN 0, where
//! every member gets the LAN's broadcast frames): MAC `02:00:00:00:00:01`, IPv4
//! `10.0.0.1/24`, IPv6 `fd00::1/64`, the IPv6 all-nodes and its solicited-node group
//! MACs registered. smoltcp answers the guests' ARP requests, neighbour solicitations
//! and echo requests (ping and ping6) itself, with no static entries anywhere.
//!
//! It serves TCP echo (RFC 862) on port [`PORT`], one connection per Linux guest, the
//! layer-2 scenario's socket memory ([`l2::BUFFERS`], 512 KiB) shared out among them,
//! half of each share per direction: what a guest sends comes back unchanged, and once the guest has shut its side down and
//! everything is echoed, the partition closes. The guest compares the bytes it gets
//! back with the ones it sent (byte-exactly: the check is on that side). The partition
//! exits when every guest's connection is done, or at [`LIMIT_NS`], with (connections
//! completed, bytes echoed, connections that failed, 0, 1); the hypervisor prints them
//! in its `linux-net:` summary.
//!
//! Between events it sleeps in WFI (woken by the fabric's adapter interrupt, or by the
//! hypervisor's tick for smoltcp's timers), so it leaves the host's CPU to the Linux
//! guests, whose throughput the scenario measures.

use iqdio::driver::Indicators;
use iqdio::phy::IqdioDevice;
use iqdio_hvc::ExitStatus;
use smoltcp::iface::{SocketHandle, SocketSet, SocketStorage};
use smoltcp::socket::tcp;

use crate::l2::{self, BUFFERS};
use crate::node::MAX_PARTITIONS;
use crate::rt::{self, HvcSiga};
use crate::say;
use crate::tcp::now;

/// The echo port (RFC 862).
pub const PORT: u16 = 7;
/// The LAN: untagged.
const VLAN: u16 = 0;
/// Time limit: the partition gives up on guests that have not finished by then (a
/// guest boots in about 10 s, and runs its pings and its exchange with this partition
/// before its transfers with the other guests).
const LIMIT_NS: u64 = 300_000_000_000;
/// How long the partition keeps answering after the last connection closed: the
/// final ACKs, and a retransmitted FIN if one was lost.
const LINGER_NS: u64 = 1_000_000_000;
/// Longest WFI sleep when smoltcp has no timer due sooner.
const MAX_SLEEP_NS: u64 = 10_000_000;

/// What one connection did.
#[derive(Clone, Copy, Default)]
struct Echo {
    /// Bytes received (and so far echoed back).
    got: usize,
    /// Bytes sent back.
    sent: usize,
    /// Counted as completed or failed.
    done: bool,
    /// It has been connected.
    opened: bool,
}

/// Echoes what socket `s` received, as far as its send buffer has room.
fn echo(s: &mut tcp::Socket, e: &mut Echo) {
    let mut chunk = [0u8; 4096];
    while s.can_recv() && s.can_send() {
        let room = s.send_capacity() - s.send_queue();
        let want = chunk.len().min(room);
        let n = s.recv_slice(&mut chunk[..want]).unwrap_or(0);
        if n == 0 {
            break;
        }
        e.got += n;
        e.sent += s.send_slice(&chunk[..n]).unwrap_or(0);
    }
}

/// Sleeps until a frame is waiting, an interrupt came, or `until` passes: the
/// indicator bytes are reset (high → low) and the queue's initiative taken first, as
/// the driver's idle path asks ([`crate::node::Node::wait_for_input`]).
fn idle(dev: &IqdioDevice<'_, HvcSiga>, ind: &Indicators, until: u64) {
    rt::take_interrupts();
    if ind.take() {
        dev.driver().take_initiative();
    }
    rt::wait_until(until, || rt::pending_interrupts() > 0 || dev.has_input());
}

/// (connections completed, bytes echoed, failed).
type Report = [u64; 3];

fn serve(core: usize, guests: usize) -> Result<Report, &'static str> {
    let (ind, mut queue) = l2::attach(core, VLAN)?;
    let mut guard = BUFFERS.lock();
    let b = &mut *guard;
    let mut dev =
        IqdioDevice::new_ethernet(&mut queue, HvcSiga, &mut b.dev_rx, &mut b.dev_tx, VLAN)
            .map_err(|_| "device")?;
    let mut iface = l2::interface(core, 0x1e7_0000, &mut dev);
    let mut storage = [SocketStorage::EMPTY; MAX_PARTITIONS];
    let mut sockets = SocketSet::new(&mut storage[..]);
    // Each connection echoes: the big buffers shared out, half each way (128 KiB each
    // for two guests: an echo of up to twice that can never stall, however the
    // guest's `nc` interleaves its reads and writes).
    let mut handles: heapless::Vec<SocketHandle, MAX_PARTITIONS> = heapless::Vec::new();
    let share = b.big.as_flattened_mut();
    let half = share.len() / (2 * guests.max(1));
    for buffers in share.chunks_exact_mut(2 * half).take(guests) {
        let (rx, tx) = buffers.split_at_mut(half);
        let mut s = tcp::Socket::new(tcp::SocketBuffer::new(rx), tcp::SocketBuffer::new(tx));
        s.set_ack_delay(None);
        s.set_nagle_enabled(false);
        s.listen(PORT).map_err(|_| "listen failed")?;
        handles
            .push(sockets.add(s))
            .map_err(|_| "too many guests")?;
    }
    if handles.len() < guests {
        return Err("too many guests for the socket buffers");
    }
    let start = rt::now_ns();
    let deadline = start + LIMIT_NS;
    let mut conns = [Echo::default(); MAX_PARTITIONS];
    let mut finished = 0;
    let mut report: Report = [0; 3];
    let mut last_done = None;
    loop {
        let t = rt::now_ns();
        if finished == guests && last_done.is_some_and(|d| t > d + LINGER_NS) {
            break;
        }
        if t > deadline {
            say!(
                "linux-net: smoltcp: {} of {} connections unfinished at the time limit",
                guests - finished,
                guests
            );
            report[2] += (guests - finished) as u64;
            break;
        }
        iface.poll(now(), &mut dev, &mut sockets);
        for (h, e) in handles.iter().zip(conns.iter_mut()) {
            let s = sockets.get_mut::<tcp::Socket>(*h);
            if e.done {
                continue;
            }
            e.opened |= s.is_active();
            echo(s, e);
            // The guest shut its side down (FIN: CLOSE-WAIT) and all is echoed: done.
            // Back to LISTEN or CLOSED without that: reset or timed out, failed.
            let state = s.state();
            let drained = state == tcp::State::CloseWait && s.send_queue() == 0;
            let lost = e.opened && matches!(state, tcp::State::Listen | tcp::State::Closed);
            if !(drained || lost) {
                continue;
            }
            let ok = drained && e.got == e.sent && e.got > 0;
            let peer = s.remote_endpoint();
            s.close();
            e.done = true;
            finished += 1;
            last_done = Some(rt::now_ns());
            report[0] += u64::from(ok);
            report[1] += e.sent as u64;
            report[2] += u64::from(!ok);
            match peer {
                Some(p) => say!(
                    "linux-net: smoltcp: echoed {} of {} bytes to {}{}",
                    e.sent,
                    e.got,
                    p.addr,
                    if ok { "" } else { " FAILED" }
                ),
                None => say!(
                    "linux-net: smoltcp: a connection ended after {} bytes: FAILED",
                    e.got
                ),
            }
        }
        let wait = iface
            .poll_delay(now(), &sockets)
            .map_or(MAX_SLEEP_NS, |d| d.total_micros().saturating_mul(1000))
            .min(MAX_SLEEP_NS);
        if wait > 0 {
            idle(&dev, &ind, rt::now_ns() + wait);
        }
    }
    let c = dev.counters();
    say!(
        "linux-net: smoltcp: sent {} received {} frames, not sent {}, in {} ms",
        c.tx_packets,
        c.rx_packets,
        c.tx_dropped(),
        (rt::now_ns() - start) / 1_000_000
    );
    Ok(report)
}

/// The scenario: partition `core` (0) serves the `partitions - 1` Linux guests; its
/// exit call carries (connections completed, bytes echoed, failed, 0, 1).
pub fn run(core: usize, partitions: usize) -> ! {
    let guests = partitions - 1;
    if guests == 0 || guests >= MAX_PARTITIONS {
        say!("linux-net: smoltcp: too many guests");
        rt::exit(ExitStatus::Failure, [0, 0, 1, 0, 1]);
    }
    match serve(core, guests) {
        Ok([done, bytes, failed]) => {
            let ok = failed == 0 && done == guests as u64;
            let status = if ok {
                ExitStatus::Pass
            } else {
                ExitStatus::Failure
            };
            rt::exit(status, [done, bytes, failed, 0, 1])
        }
        Err(e) => {
            say!("linux-net: smoltcp: {}", e);
            rt::exit(ExitStatus::Failure, [0, 0, guests as u64, 0, 1])
        }
    }
}
