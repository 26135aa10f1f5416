//! The linux-net workload (issue 16): the shell lines every Linux guest of `cargo xtask
//! run --scenario linux-net` runs as its init's workload, generated from the LAN's node
//! list. The QEMU comparison (`cargo xtask bench`) runs the same workload in two plain
//! QEMU guests, so both measure the same thing the same way.
//!
//! One script serves every guest: it finds its own node by eth0's MAC (the hypervisor
//! derives it from the LPAR id, `vm::linux::vnet_mac`), and so its addresses and its
//! place in the sending order. Then, with no static neighbour entry anywhere (ARP and
//! IPv6 neighbour discovery go through the LAN):
//!
//! 1. listeners for every other Linux guest (its data on port 5000 + its index, then
//!    its sha256 on 6000 + its index), before anything else, so a peer that can be
//!    pinged is one whose listeners are up;
//! 2. eth0's addresses (`accept_dad` 0 first: busybox `ip` has no `nodad`, and a
//!    tentative address would not answer for a second), 16 MiB (or [`NetPlan::bytes`])
//!    of `/dev/urandom` and its sha256;
//! 3. waits until every peer answers a ping and a ping6 (up to [`WAIT_S`] for all: the
//!    other guest may still be booting);
//! 4. `ping` and `ping6` of each peer, [`NetPlan::pings`] requests each:
//!    `iqdio-net: ping <ip> <received>/<sent>`;
//! 5. the exchange with each smoltcp partition: [`ECHO_BYTES`] random bytes to its TCP
//!    echo port, compared byte by byte (`cmp`) with what comes back:
//!    `iqdio-net: smoltcp <ip> <bytes> bytes ok` (or `failed`);
//! 6. the transfers: each guest sends its data to every other Linux guest with busybox
//!    `nc` (again while the connection is refused, up to 10 times), then its sha256 on
//!    the second port (a listener gives up after [`LISTEN_S`]).
//!    Guests take turns in node order (one sends once everything from the guests before
//!    it has arrived), so each transfer has the LAN to itself and its time is the
//!    transfer's own: `iqdio-net: tcp to <ip> <bytes> bytes in <ms> ms`, from just
//!    before `nc` starts to its exit (which is when the receiver has closed, having
//!    everything), in milliseconds from `/proc/uptime` (busybox `date` has no `%N`);
//! 7. each received file's sha256 against the sender's:
//!    `iqdio-net: tcp from <ip> <bytes> bytes sha256 <hex> ok` (or `mismatch`);
//! 8. `ip -s link show eth0`, then `iqdio-net: done`.
//!
//! Busybox `nc` ends its sending side when its standard input ends and exits when the
//! peer's side ends, so a listener's input is a FIFO held open by a long `sleep` that
//! never writes to it (from `/dev/null` it would end the connection at once, and the
//! sender with it; a pipe from `sleep` would make the listener's job, which `wait`
//! waits for whole, last as long as the `sleep`), and a sender's input is the file it
//! sends.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use anyhow::{Result, bail};

/// The TCP echo port of the smoltcp partitions (RFC 862; `hyp/guest/src/linuxnet.rs`).
pub const ECHO_PORT: u16 = 7;
/// Bytes of the exchange with a smoltcp partition: no more than its echo socket's
/// buffers hold (128 KiB each way with two guests), so the echo never stalls however
/// `nc` interleaves its reads and writes.
pub const ECHO_BYTES: u64 = 256 * 1024;
/// A Linux guest's data listener for the guest of index i is on this port + i.
pub const DATA_PORT: u16 = 5000;
/// Its sha256 listener for the guest of index i is on this port + i.
pub const SUM_PORT: u16 = 6000;
/// The transfer size of `cargo xtask run --scenario linux-net`.
pub const DEFAULT_BYTES: u64 = 16 << 20;
/// The transfer size of the test boot.
pub const TEST_BYTES: u64 = 1 << 20;
/// Seconds a guest waits for all its peers to answer (the other guests may still be
/// booting).
pub const WAIT_S: u32 = 120;
/// Seconds a listener waits for its data: a sender that never comes (its guest failed)
/// ends the listener, not the whole workload. Past any transfer's need, short of the
/// hypervisor's 400 s limit of a run.
pub const LISTEN_S: u32 = 300;
/// The transfer size's unit (`dd` block size).
const BLOCK: u64 = 4096;

/// A node of the LAN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetNode {
    /// Its MAC.
    pub mac: [u8; 6],
    /// Its IPv4 address (in a /24).
    pub ipv4: Ipv4Addr,
    /// Its IPv6 address (in a /64).
    pub ipv6: Ipv6Addr,
}

impl NetNode {
    /// The Linux guest on core `k`, as issue 16's contract fixes it: MAC
    /// `02:49:51:44:00:kk` (`vm::linux::vnet_mac`), `10.0.0.(k+1)`, `fd00::(k+1)`.
    pub fn linux_guest(k: u8) -> Self {
        Self::at(k, [0x02, b'I', b'Q', b'D', 0, k])
    }

    /// The bare-metal smoltcp partition on core `k`: MAC `02:00:00:00:00:(k+1)` (the
    /// layer-2 partitions' `l2::mac`), `10.0.0.(k+1)`, `fd00::(k+1)`.
    pub fn smoltcp_partition(k: u8) -> Self {
        Self::at(k, [0x02, 0, 0, 0, 0, k.wrapping_add(1)])
    }

    fn at(k: u8, mac: [u8; 6]) -> Self {
        let host = k.wrapping_add(1);
        Self {
            mac,
            ipv4: Ipv4Addr::new(10, 0, 0, host),
            ipv6: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, u16::from(host)),
        }
    }

    /// The MAC as Linux prints it in `/sys/class/net/eth0/address`.
    pub fn mac_text(&self) -> String {
        let m = self.mac;
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// What the workload does: who is on the LAN and how much moves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetPlan {
    /// The Linux guests, all running the workload, in their sending order.
    pub linux: Vec<NetNode>,
    /// Bare-metal smoltcp partitions serving TCP echo on [`ECHO_PORT`] (none in the
    /// QEMU comparison).
    pub smoltcp: Vec<NetNode>,
    /// Bytes each Linux guest sends each other one (a positive multiple of 4096).
    pub bytes: u64,
    /// Echo requests of each ping and ping6.
    pub pings: u32,
}

impl NetPlan {
    /// The linux-net scenario on `smp` cores: the smoltcp partition on core 0, a Linux
    /// guest on each other core.
    pub fn linux_net(smp: u32, bytes: u64) -> Self {
        Self {
            linux: (1..smp).map(|k| NetNode::linux_guest(k as u8)).collect(),
            smoltcp: vec![NetNode::smoltcp_partition(0)],
            bytes,
            pings: 4,
        }
    }

    /// The workload's shell lines (for `linux::init_script`).
    pub fn workload(&self) -> Result<String> {
        if self.bytes == 0 || !self.bytes.is_multiple_of(BLOCK) {
            bail!(
                "transfer size {} bytes: a positive multiple of {BLOCK}",
                self.bytes
            );
        }
        if self.linux.is_empty() || self.linux.len() > 64 {
            bail!("{} Linux guests: 1 to 64", self.linux.len());
        }
        if self.pings == 0 {
            bail!("no pings");
        }
        let mut linux = String::new();
        for (i, n) in self.linux.iter().enumerate() {
            let _ = write!(
                linux,
                "{}{},{},{},{}",
                if i == 0 { "" } else { " " },
                i + 1,
                n.mac_text(),
                n.ipv4,
                n.ipv6
            );
        }
        let smoltcp: Vec<String> = self
            .smoltcp
            .iter()
            .map(|n| format!("{},{},{}", n.mac_text(), n.ipv4, n.ipv6))
            .collect();
        Ok(format!(
            "# The linux-net workload, generated by `cargo xtask` (xtask/src/linux/netload.rs).\n\
             # Linux nodes: index,MAC,IPv4,IPv6; smoltcp nodes: MAC,IPv4,IPv6.\n\
             LINUX_NODES=\"{linux}\"\n\
             SMOLTCP_NODES=\"{smoltcp}\"\n\
             BYTES={bytes}\n\
             ECHO_BYTES={ECHO_BYTES}\n\
             ECHO_PORT={ECHO_PORT}\n\
             DATA_PORT={DATA_PORT}\n\
             SUM_PORT={SUM_PORT}\n\
             PINGS={pings}\n\
             WAIT_S={WAIT_S}\n\
             LISTEN_S={LISTEN_S}\n\
             {SCRIPT}",
            smoltcp = smoltcp.join(" "),
            bytes = self.bytes,
            pings = self.pings,
        ))
    }
}

/// The workload's body, after its parameters.
const SCRIPT: &str = r#"field() { echo "$1" | cut -d, -f"$2"; }
# Milliseconds of uptime (busybox's date has no %N; /proc/uptime counts hundredths).
now_ms() {
    read -r up _ < /proc/uptime
    s=${up%.*}
    c=${up#*.}
    echo $((s * 1000 + ${c#0} * 10))
}
# A file's size in bytes (0 if it is missing).
size() {
    n=$(wc -c < "$1" 2>/dev/null)
    echo $((${n:-0}))
}
# `ping` or `ping6` ($1) $2 until it answers (its neighbour entry resolved), until
# $until (ms of uptime).
wait_for() {
    while [ "$(now_ms)" -lt $until ]; do
        $1 -c 1 -W 1 "$2" > /dev/null 2>&1 && return 0
    done
    echo "iqdio-guest: linux-net: $2 never answered $1"
    return 1
}
# `ping` or `ping6` ($1) $PINGS echo requests to $2.
ping_peer() {
    counts=$($1 -c $PINGS -i 0.2 -W 2 "$2" 2>&1 |
        sed -n 's/^\([0-9]*\) packets transmitted, \([0-9]*\) packets received.*/\2\/\1/p')
    echo "iqdio-net: $1 $2 ${counts:-0/$PINGS}"
}
# nc to $1 port $2 from file $3 into file $4, again (up to 10 times) while it fails to
# connect; t0 and t1 bracket the run that succeeded.
send() {
    tries=0
    while :; do
        t0=$(now_ms)
        if nc "$1" "$2" < "$3" > "$4"; then
            t1=$(now_ms)
            return 0
        fi
        tries=$((tries + 1))
        if [ $tries -ge 10 ]; then
            echo "iqdio-guest: linux-net: nc $1 $2 failed $tries times"
            return 1
        fi
        sleep 1
    done
}
netload() {
    mac=$(cat /sys/class/net/eth0/address)
    me=
    for n in $LINUX_NODES; do
        if [ "$(field $n 2)" = "$mac" ]; then
            me=$(field $n 1)
            v4=$(field $n 3)
            v6=$(field $n 4)
        fi
    done
    if [ -z "$me" ]; then
        echo "iqdio-guest: linux-net: eth0's MAC $mac is no node of the workload"
        return 1
    fi
    # Listeners first, reading a FIFO that is never written to (see netload.rs).
    mkfifo /tmp/hold
    sleep 1000000 > /tmp/hold &
    for n in $LINUX_NODES; do
        k=$(field $n 1)
        [ $k = $me ] && continue
        timeout $LISTEN_S nc -l -p $((DATA_PORT + k)) < /tmp/hold > /tmp/from.$k &
        eval "data_pid_$k=\$!"
        timeout $LISTEN_S nc -l -p $((SUM_PORT + k)) < /tmp/hold > /tmp/sum.$k &
        eval "sum_pid_$k=\$!"
    done
    echo 0 > /proc/sys/net/ipv6/conf/eth0/accept_dad
    ip addr add $v4/24 dev eth0
    ip addr add $v6/64 dev eth0
    echo "iqdio-guest: linux-net: node $me, MAC $mac, $v4, $v6"
    dd if=/dev/urandom of=/tmp/data bs=4096 count=$((BYTES / 4096)) 2>/dev/null
    dd if=/dev/urandom of=/tmp/echo bs=4096 count=$((ECHO_BYTES / 4096)) 2>/dev/null
    sha256sum /tmp/data | cut -d' ' -f1 > /tmp/data.sum
    peers4=
    peers6=
    for n in $LINUX_NODES; do
        if [ $(field $n 1) != $me ]; then
            peers4="$peers4 $(field $n 3)"
            peers6="$peers6 $(field $n 4)"
        fi
    done
    for n in $SMOLTCP_NODES; do
        peers4="$peers4 $(field $n 2)"
        peers6="$peers6 $(field $n 3)"
    done
    until=$(($(now_ms) + WAIT_S * 1000))
    for a in $peers4; do wait_for ping $a; done
    for a in $peers6; do wait_for ping6 $a; done
    for a in $peers4; do ping_peer ping $a; done
    for a in $peers6; do ping_peer ping6 $a; done
    for n in $SMOLTCP_NODES; do
        a=$(field $n 2)
        r=failed
        if send $a $ECHO_PORT /tmp/echo /tmp/echo.back && cmp -s /tmp/echo /tmp/echo.back; then
            r=ok
        fi
        echo "iqdio-net: smoltcp $a $(size /tmp/echo.back) bytes $r"
    done
    # Turns: everything from the guests before this one first.
    for n in $LINUX_NODES; do
        k=$(field $n 1)
        [ $k -lt $me ] && eval "wait \$data_pid_$k"
    done
    for n in $LINUX_NODES; do
        k=$(field $n 1)
        a=$(field $n 3)
        [ $k = $me ] && continue
        if send $a $((DATA_PORT + me)) /tmp/data /dev/null; then
            echo "iqdio-net: tcp to $a $BYTES bytes in $((t1 - t0)) ms"
            send $a $((SUM_PORT + me)) /tmp/data.sum /dev/null
        fi
    done
    for n in $LINUX_NODES; do
        k=$(field $n 1)
        a=$(field $n 3)
        [ $k = $me ] && continue
        eval "wait \$data_pid_$k \$sum_pid_$k"
        got=$(sha256sum /tmp/from.$k | cut -d' ' -f1)
        r=mismatch
        [ "$got" = "$(cat /tmp/sum.$k)" ] && r=ok
        echo "iqdio-net: tcp from $a $(size /tmp/from.$k) bytes sha256 $got $r"
    done
    ip -s link show eth0 | while read -r l; do echo "iqdio-guest: ip -s link: $l"; done
    echo "iqdio-net: done"
}
netload
"#;

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn the_contract_addresses() {
        let g = NetNode::linux_guest(2);
        assert_eq!(g.mac_text(), "02:49:51:44:00:02");
        assert_eq!(g.ipv4, Ipv4Addr::new(10, 0, 0, 3));
        assert_eq!(g.ipv6.to_string(), "fd00::3");
        let s = NetNode::smoltcp_partition(0);
        assert_eq!(s.mac_text(), "02:00:00:00:00:01");
        assert_eq!(
            (s.ipv4.to_string(), s.ipv6.to_string()),
            ("10.0.0.1".into(), "fd00::1".into())
        );
        // Core 15: fd00::10 (hex).
        assert_eq!(NetNode::linux_guest(15).ipv6.to_string(), "fd00::10");
    }

    #[test]
    fn the_workload_lists_the_nodes_and_parses() {
        let plan = NetPlan::linux_net(3, TEST_BYTES);
        let w = plan.workload().unwrap();
        assert!(w.contains(
            "LINUX_NODES=\"1,02:49:51:44:00:01,10.0.0.2,fd00::2 2,02:49:51:44:00:02,10.0.0.3,fd00::3\"\n"
        ));
        assert!(w.contains("SMOLTCP_NODES=\"02:00:00:00:00:01,10.0.0.1,fd00::1\"\n"));
        assert!(w.contains("BYTES=1048576\n"));
        assert!(w.trim_end().ends_with("netload"));
        // Each contract line is printed.
        for line in [
            "iqdio-net: $1 $2 ${counts:-0/$PINGS}",
            "iqdio-net: smoltcp $a",
            "iqdio-net: tcp to $a $BYTES bytes in $((t1 - t0)) ms",
            "iqdio-net: tcp from $a",
            "iqdio-net: done",
        ] {
            assert!(w.contains(line), "{line}");
        }
        // The host's sh finds no syntax error in the whole init.
        let init = crate::linux::init_script(&w);
        let out = Command::new("sh")
            .args(["-n", "-c", &init])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Without smoltcp partitions (the QEMU comparison) the list is empty.
        let qemu = NetPlan {
            smoltcp: vec![],
            ..plan.clone()
        };
        assert!(qemu.workload().unwrap().contains("SMOLTCP_NODES=\"\"\n"));
    }

    #[test]
    fn bad_plans_are_refused() {
        let plan = NetPlan::linux_net(3, DEFAULT_BYTES);
        for bad in [
            NetPlan {
                bytes: 0,
                ..plan.clone()
            },
            NetPlan {
                bytes: 1000,
                ..plan.clone()
            },
            NetPlan {
                linux: vec![],
                ..plan.clone()
            },
            NetPlan {
                pings: 0,
                ..plan.clone()
            },
        ] {
            assert!(bad.workload().is_err(), "{bad:?}");
        }
    }

    /// The script's helpers do what the lines need, run by the host's sh.
    #[test]
    fn the_helpers_parse_ping_and_time() {
        let plan = NetPlan::linux_net(3, TEST_BYTES).workload().unwrap();
        let helpers = &plan[..plan.find("netload() {").unwrap()];
        let script = format!(
            "{helpers}\n\
             ping() {{ printf '%s\\n' '--- x ping statistics ---' '4 packets transmitted, 3 packets received, 25% packet loss'; }}\n\
             ping_peer ping 10.0.0.3\n\
             echo $(( $(now_ms) > 0 ))\n\
             echo $(size /nonexistent)"
        );
        let out = Command::new("sh").args(["-c", &script]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(text, "iqdio-net: ping 10.0.0.3 3/4\n1\n0\n", "{text}");
    }
}
