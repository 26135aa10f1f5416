//! The `iqdio-net:` lines of the linux-net scenario's Linux guests, tallied per guest
//! for the hypervisor's `linux-net:` summary.
//!
//! The guests' workload (`xtask/src/linux/netload.rs`) prints one line per result, in
//! the formats issue 16's contract fixes:
//!
//! ```text
//! iqdio-net: ping <ip> <received>/<sent>
//! iqdio-net: ping6 <ip> <received>/<sent>
//! iqdio-net: tcp to <ip> <bytes> bytes in <ms> ms
//! iqdio-net: tcp from <ip> <bytes> bytes sha256 <hex> ok      (or `mismatch`)
//! iqdio-net: smoltcp <ip> <bytes> bytes ok                    (or `failed`)
//! iqdio-net: done
//! ```
//!
//! The console is the guest's, so its lines are hostile input like any other: a line
//! that does not parse is counted as malformed (never a panic), numbers saturate, an
//! address is kept only if it is short enough to be one. A line the hypervisor's
//! console split (longer than its line buffer) does not parse either.
//!
//! [`line`] is called for every console line of a Linux guest (`vm::linux`); the tally
//! lives in a per-core slot, reset by [`reset`] before the guest starts and read by
//! [`tally`] after it ended.

/// Every line this module reads starts with this.
pub const MARK: &[u8] = b"iqdio-net: ";

/// An address as the guest printed it (at most 39 characters: an IPv6 address in full).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addr {
    bytes: [u8; 39],
    len: u8,
}

impl Addr {
    const EMPTY: Self = Self {
        bytes: [0; 39],
        len: 0,
    };

    /// The address's text, if it is one of hex digits, dots and colons.
    fn new(text: &[u8]) -> Option<Self> {
        let ok = |b: &u8| b.is_ascii_hexdigit() || *b == b'.' || *b == b':';
        if text.is_empty() || text.len() > 39 || !text.iter().all(ok) {
            return None;
        }
        let mut a = Self::EMPTY;
        a.bytes[..text.len()].copy_from_slice(text);
        a.len = text.len() as u8;
        Some(a)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        let n = usize::from(self.len).min(self.bytes.len());
        core::str::from_utf8(&self.bytes[..n]).unwrap_or("?")
    }
}

/// One parsed line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Line {
    /// `ping` (v6 false) or `ping6` (v6 true): echo replies received of requests sent.
    Ping {
        /// `ping6`.
        v6: bool,
        /// The peer.
        ip: Addr,
        /// Replies.
        received: u64,
        /// Requests.
        sent: u64,
    },
    /// `tcp to`: the sender's side of a transfer.
    TcpTo {
        /// The receiver.
        ip: Addr,
        /// Bytes sent.
        bytes: u64,
        /// Milliseconds from just before `nc` started to its exit.
        ms: u64,
    },
    /// `tcp from`: the receiver's side, its sha256 compared with the sender's.
    TcpFrom {
        /// The sender.
        ip: Addr,
        /// Bytes received.
        bytes: u64,
        /// The checksums were equal.
        ok: bool,
    },
    /// `smoltcp`: the exchange with the bare-metal smoltcp partition.
    Smoltcp {
        /// The partition.
        ip: Addr,
        /// Bytes that came back.
        bytes: u64,
        /// They were the bytes sent.
        ok: bool,
    },
    /// `done`: the workload ran to its end.
    Done,
}

/// Splits off the next space-separated word.
fn word(rest: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = rest.trim_ascii_start();
    if rest.is_empty() {
        return None;
    }
    let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    Some((&rest[..end], &rest[end..]))
}

/// A decimal number (saturating at `u64::MAX`).
fn number(text: &[u8]) -> Option<u64> {
    if text.is_empty() || !text.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(text.iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    }))
}

/// The words of `rest` must be `expected`, in order, with the values in the places
/// marked `#` (a number) or `@` (an address): (address, numbers) or `None`.
fn shape(rest: &[u8], expected: &[&[u8]]) -> Option<(Addr, [u64; 2], &'static [u8])> {
    let mut rest = rest;
    let mut ip = None;
    let mut numbers = [0u64; 2];
    let mut k = 0;
    let mut last: &'static [u8] = b"";
    for want in expected {
        let (w, r) = word(rest)?;
        rest = r;
        match *want {
            b"@" => ip = Some(Addr::new(w)?),
            b"#" => {
                *numbers.get_mut(k)? = number(w)?;
                k += 1;
            }
            b"ok|mismatch" | b"ok|failed" => {
                last = match w {
                    b"ok" => b"ok",
                    b"mismatch" | b"failed" => b"no",
                    _ => return None,
                }
            }
            // A sha256 digest: 64 hex digits.
            b"<hex>" if w.len() == 64 && w.iter().all(u8::is_ascii_hexdigit) => {}
            b"<hex>" => return None,
            literal if literal == w => {}
            _ => return None,
        }
    }
    if !rest.trim_ascii().is_empty() {
        return None;
    }
    Some((ip?, numbers, last))
}

/// The rest of a `ping` or `ping6` line: `<ip> <received>/<sent>`.
fn ping(v6: bool, rest: &[u8]) -> Option<Line> {
    let (ip, rest) = word(rest)?;
    let (counts, rest) = word(rest)?;
    if !rest.trim_ascii().is_empty() {
        return None;
    }
    let slash = counts.iter().position(|&b| b == b'/')?;
    Some(Line::Ping {
        v6,
        ip: Addr::new(ip)?,
        received: number(&counts[..slash])?,
        sent: number(counts.get(slash + 1..)?)?,
    })
}

/// Parses a console line (the kernel's timestamp already removed): `None` if it is
/// not an `iqdio-net:` line, `Some(Err(()))` if it is one that does not parse.
pub fn parse(text: &[u8]) -> Option<Result<Line, ()>> {
    let rest = text.strip_prefix(MARK)?;
    let (kind, rest) = match word(rest) {
        Some(w) => w,
        None => return Some(Err(())),
    };
    let line = match kind {
        b"done" if rest.trim_ascii().is_empty() => Some(Line::Done),
        b"ping" | b"ping6" => ping(kind == b"ping6", rest),
        b"tcp" => match word(rest) {
            Some((b"to", r)) => shape(r, &[b"@", b"#", b"bytes", b"in", b"#", b"ms"])
                .map(|(ip, [bytes, ms], _)| Line::TcpTo { ip, bytes, ms }),
            Some((b"from", r)) => shape(
                r,
                &[b"@", b"#", b"bytes", b"sha256", b"<hex>", b"ok|mismatch"],
            )
            .map(|(ip, [bytes, _], last)| Line::TcpFrom {
                ip,
                bytes,
                ok: last == b"ok",
            }),
            _ => None,
        },
        b"smoltcp" => {
            shape(rest, &[b"@", b"#", b"bytes", b"ok|failed"]).map(|(ip, [bytes, _], last)| {
                Line::Smoltcp {
                    ip,
                    bytes,
                    ok: last == b"ok",
                }
            })
        }
        _ => None,
    };
    Some(line.ok_or(()))
}

/// Most `tcp to` lines kept per guest (one per peer).
pub const MAX_PEERS: usize = 8;

/// What one guest reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tally {
    /// `ping` lines, replies and requests summed.
    pub ping: [u64; 2],
    /// `ping` lines.
    pub ping_lines: u64,
    /// `ping6` lines, replies and requests summed.
    pub ping6: [u64; 2],
    /// `ping6` lines.
    pub ping6_lines: u64,
    /// `tcp to` lines: (receiver, bytes, ms), the first [`MAX_PEERS`].
    pub sent: [Option<(Addr, u64, u64)>; MAX_PEERS],
    /// `tcp to` lines.
    pub sent_lines: u64,
    /// Bytes of the `tcp to` lines.
    pub sent_bytes: u64,
    /// `tcp from` lines whose checksums were equal.
    pub received_ok: u64,
    /// `tcp from` lines whose checksums differed.
    pub received_mismatch: u64,
    /// Bytes of the `tcp from` lines.
    pub received_bytes: u64,
    /// `smoltcp ... ok` lines.
    pub smoltcp_ok: u64,
    /// `smoltcp ... failed` lines.
    pub smoltcp_failed: u64,
    /// Bytes of the `smoltcp` lines.
    pub smoltcp_bytes: u64,
    /// `done` seen.
    pub done: bool,
    /// `iqdio-net:` lines that did not parse.
    pub malformed: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl Tally {
    /// Nothing reported.
    pub const EMPTY: Self = Self {
        ping: [0; 2],
        ping_lines: 0,
        ping6: [0; 2],
        ping6_lines: 0,
        sent: [None; MAX_PEERS],
        sent_lines: 0,
        sent_bytes: 0,
        received_ok: 0,
        received_mismatch: 0,
        received_bytes: 0,
        smoltcp_ok: 0,
        smoltcp_failed: 0,
        smoltcp_bytes: 0,
        done: false,
        malformed: 0,
    };

    /// Counts one console line (any line: those not `iqdio-net:` are ignored).
    pub fn add(&mut self, text: &[u8]) {
        let Some(line) = parse(text) else { return };
        match line {
            Err(()) => self.malformed += 1,
            Ok(Line::Ping {
                v6, received, sent, ..
            }) => {
                let (sum, lines) = if v6 {
                    (&mut self.ping6, &mut self.ping6_lines)
                } else {
                    (&mut self.ping, &mut self.ping_lines)
                };
                sum[0] = sum[0].saturating_add(received);
                sum[1] = sum[1].saturating_add(sent);
                *lines += 1;
            }
            Ok(Line::TcpTo { ip, bytes, ms }) => {
                if let Some(slot) = self.sent.get_mut(self.sent_lines as usize) {
                    *slot = Some((ip, bytes, ms));
                }
                self.sent_lines += 1;
                self.sent_bytes = self.sent_bytes.saturating_add(bytes);
            }
            Ok(Line::TcpFrom { bytes, ok, .. }) => {
                if ok {
                    self.received_ok += 1;
                } else {
                    self.received_mismatch += 1;
                }
                self.received_bytes = self.received_bytes.saturating_add(bytes);
            }
            Ok(Line::Smoltcp { bytes, ok, .. }) => {
                if ok {
                    self.smoltcp_ok += 1;
                } else {
                    self.smoltcp_failed += 1;
                }
                self.smoltcp_bytes = self.smoltcp_bytes.saturating_add(bytes);
            }
            Ok(Line::Done) => self.done = true,
        }
    }
}

#[cfg(target_os = "none")]
mod slots {
    use super::Tally;
    use crate::board::MAX_CORES;

    /// Each core's guest's tally (only that core writes it, while its guest runs).
    static TALLIES: [spin::Mutex<Tally>; MAX_CORES] =
        [const { spin::Mutex::new(Tally::EMPTY) }; MAX_CORES];

    /// A console line of the Linux guest on `core` (its trap, IRQs masked).
    pub fn line(core: usize, text: &[u8]) {
        if text.starts_with(super::MARK)
            && let Some(t) = TALLIES.get(core)
        {
            t.lock().add(text);
        }
    }

    /// Clears `core`'s tally before its guest starts.
    pub fn reset(core: usize) {
        if let Some(t) = TALLIES.get(core) {
            *t.lock() = Tally::EMPTY;
        }
    }

    /// What the guest on `core` reported.
    pub fn tally(core: usize) -> Tally {
        TALLIES.get(core).map_or(Tally::EMPTY, |t| *t.lock())
    }
}

#[cfg(target_os = "none")]
pub use slots::{line, reset, tally};

#[cfg(test)]
mod tests {
    extern crate std;
    use std::{format, string::ToString};

    use super::*;

    fn addr(s: &str) -> Addr {
        Addr::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn each_contract_line_parses() {
        let p = |s: &str| parse(s.as_bytes());
        assert_eq!(
            p("iqdio-net: ping 10.0.0.3 5/5"),
            Some(Ok(Line::Ping {
                v6: false,
                ip: addr("10.0.0.3"),
                received: 5,
                sent: 5
            }))
        );
        assert_eq!(
            p("iqdio-net: ping6 fd00::1 4/5"),
            Some(Ok(Line::Ping {
                v6: true,
                ip: addr("fd00::1"),
                received: 4,
                sent: 5
            }))
        );
        assert_eq!(
            p("iqdio-net: tcp to 10.0.0.3 16777216 bytes in 4321 ms"),
            Some(Ok(Line::TcpTo {
                ip: addr("10.0.0.3"),
                bytes: 16_777_216,
                ms: 4321
            }))
        );
        let sum = "ab".repeat(32);
        assert_eq!(
            p(&format!(
                "iqdio-net: tcp from 10.0.0.2 1048576 bytes sha256 {sum} ok"
            )),
            Some(Ok(Line::TcpFrom {
                ip: addr("10.0.0.2"),
                bytes: 1 << 20,
                ok: true
            }))
        );
        assert_eq!(
            p(&format!(
                "iqdio-net: tcp from 10.0.0.2 1048576 bytes sha256 {sum} mismatch"
            )),
            Some(Ok(Line::TcpFrom {
                ip: addr("10.0.0.2"),
                bytes: 1 << 20,
                ok: false
            }))
        );
        assert_eq!(
            p("iqdio-net: smoltcp 10.0.0.1 65536 bytes failed"),
            Some(Ok(Line::Smoltcp {
                ip: addr("10.0.0.1"),
                bytes: 65536,
                ok: false
            }))
        );
        assert_eq!(p("iqdio-net: done"), Some(Ok(Line::Done)));
        assert_eq!(p("iqdio-guest: uname -r 6.1"), None);
    }

    #[test]
    fn hostile_lines_are_malformed_never_a_panic() {
        for bad in [
            "iqdio-net: ",
            "iqdio-net: ping",
            "iqdio-net: ping 10.0.0.3",
            "iqdio-net: ping 10.0.0.3 5",
            "iqdio-net: ping 10.0.0.3 /5",
            "iqdio-net: ping 10.0.0.3 5/",
            "iqdio-net: ping 10.0.0.3 5/5 extra",
            "iqdio-net: ping 10.0.0.3 -1/5",
            "iqdio-net: ping 10.0.0.3; 5/5",
            "iqdio-net: ping 1234567890123456789012345678901234567890 5/5",
            "iqdio-net: tcp to 10.0.0.3 12 bytes in ms",
            "iqdio-net: tcp to 10.0.0.3 12 bytes in 5 ms and more",
            "iqdio-net: tcp from 10.0.0.2 1 bytes sha256 abc ok",
            "iqdio-net: tcp sideways 10.0.0.2",
            "iqdio-net: smoltcp 10.0.0.1 1 bytes maybe",
            "iqdio-net: done now",
            "iqdio-net: \u{0}\u{ff}",
        ] {
            assert_eq!(parse(bad.as_bytes()), Some(Err(())), "{bad:?}");
        }
        // Numbers saturate.
        let huge = parse(b"iqdio-net: ping 10.0.0.3 99999999999999999999999/1");
        assert!(matches!(
            huge,
            Some(Ok(Line::Ping {
                received: u64::MAX,
                ..
            }))
        ));
    }

    #[test]
    fn the_tally_sums_a_guest() {
        let sum = "0f".repeat(32);
        let mut t = Tally::default();
        for line in [
            "iqdio-net: ping 10.0.0.3 5/5".to_string(),
            "iqdio-net: ping 10.0.0.1 5/5".into(),
            "iqdio-net: ping6 fd00::3 5/5".into(),
            "iqdio-net: ping6 fd00::1 3/5".into(),
            "iqdio-net: smoltcp 10.0.0.1 1048576 bytes ok".into(),
            "iqdio-net: tcp to 10.0.0.3 16777216 bytes in 8000 ms".into(),
            format!("iqdio-net: tcp from 10.0.0.3 16777216 bytes sha256 {sum} ok"),
            "iqdio-net: what".into(),
            "[    1.0] a kernel line".into(),
            "iqdio-net: done".into(),
        ] {
            t.add(line.as_bytes());
        }
        assert_eq!((t.ping, t.ping_lines), ([10, 10], 2));
        assert_eq!((t.ping6, t.ping6_lines), ([8, 10], 2));
        assert_eq!((t.sent_lines, t.sent_bytes), (1, 16 << 20));
        assert_eq!(t.sent[0], Some((addr("10.0.0.3"), 16 << 20, 8000)));
        assert_eq!(
            t.sent[0].map(|(a, ..)| a.as_str().to_string()).as_deref(),
            Some("10.0.0.3")
        );
        assert_eq!((t.received_ok, t.received_mismatch), (1, 0));
        assert_eq!((t.smoltcp_ok, t.smoltcp_bytes), (1, 1 << 20));
        assert_eq!(t.malformed, 1);
        assert!(t.done);
    }
}
