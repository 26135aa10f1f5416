//! The figure `linux_tcp_vs_qemu_net` (issue 16 item 6): the 16 MiB TCP transfer
//! between two Linux guests over iqdio, against the same transfer between the same two
//! guests joined by QEMU's own inter-VM networking.
//!
//! **The QEMU side.** Two plain `qemu-system-aarch64` processes, no hypervisor, one
//! Linux guest each, booted exactly as `cargo xtask linux-bare` boots one (the same
//! kernel, the same initramfs builder, our own device tree, QEMU's generic loader, the
//! boot stub), with the `-cpu` of the hypervisor's Linux guests
//! ([`super::HYP_GUEST_CPU`]), TCG, one vCPU and the 512 MiB window each. Each has a
//! `virtio-net-device` at the slot the tree names ([`super::QEMU_FIRST_VIRTIO`]) with
//! the contract's MAC of the guest on "core" 1 or 2 (`02:49:51:44:00:01` / `:02`, so
//! the workload finds its own addresses as it does under the hypervisor) and the MTU
//! the hypervisor's device offers (`host_mtu`, VIRTIO_NET_F_MTU: the guests configure
//! the same MTU on both sides). The two are joined by `-netdev socket`: the first QEMU
//! listens on a loopback port chosen at run time, the second connects once the port is
//! listening (QEMU's `net/socket.c`: Ethernet frames over one TCP stream, each behind
//! its 4-byte length). Both QEMUs are killed on every path out (a guard each), and a
//! run has a time limit. The guests run the linux-net workload ([`super::netload`],
//! generated for the two Linux guests alone: there is no smoltcp partition here), so
//! they configure, find each other, ping, and take turns sending exactly as under the
//! hypervisor.
//!
//! **The iqdio side.** `cargo xtask run --scenario linux-net --net-bytes B` (the same
//! executable, as a child process), whose guests run that workload over the fabric.
//!
//! **The figure.** Each side's guests print the contract's
//! `iqdio-net: tcp to <ip> <bytes> bytes in <ms> ms` line, measured by the sending
//! guest itself (busybox in both cases, the same clock); a side's throughput is the
//! mean over its two directions of bytes/s, and the ratio is iqdio's over QEMU's, both
//! measured in one bench run. `cargo xtask bench --linux-net` measures it alone;
//! the full `cargo xtask bench` includes it. The result goes to
//! `target/criterion/iqdio-linux-net.json`, then into `docs/bench/results.json`
//! (`ratios.linux_tcp_vs_qemu_net`, `details.linux_tcp_vs_qemu_net`) and a section of
//! `docs/bench/results.md` ([`write_report`]).

use std::{
    fs,
    io::{BufRead, BufReader},
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::{
    BARE_BASE, GuestBoot, HYP_GUEST_CPU, RunningQemu, bare_arguments, boot_stub, collect,
    guest_boot, hyp_guest_files,
    hypboots::{VIRTIO_NET_MTU, virtio_net_mac},
    layout::Placement,
    netload::{NetNode, NetPlan},
    out_dir,
};
use crate::qemu;

/// The "cores" of the two guests: the linux-net scenario's Linux guests (`-smp 3`, core
/// 0 the smoltcp partition), whose MACs and addresses the QEMU guests take.
pub const CORES: [u32; 2] = [1, 2];

/// The transfer size of the figure: 16 MiB each way.
pub const BYTES: u64 = 16 << 20;

/// The IPv4 address of the guest on core `k` (the contract: `10.0.0.(k+1)`).
pub fn guest_ip(core: u32) -> String {
    format!("10.0.0.{}", core + 1)
}

/// One `iqdio-net: tcp to <ip> <bytes> bytes in <ms> ms` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpTo {
    /// The receiver's address.
    pub to: String,
    /// Bytes sent.
    pub bytes: u64,
    /// The sender's time, from just before `nc` starts to its exit.
    pub ms: u64,
}

/// The sender's line of the contract.
const TCP_TO: &str = "iqdio-net: tcp to ";
/// The receiver's line of the contract.
const TCP_FROM: &str = "iqdio-net: tcp from ";

/// Parses a `tcp to` line anywhere in a console line (the hypervisor puts
/// `partition N: ` before a guest's lines).
pub fn tcp_to(line: &str) -> Option<TcpTo> {
    let rest = &line[line.find(TCP_TO)? + TCP_TO.len()..];
    let mut words = rest.split_whitespace();
    let to = words.next()?.to_string();
    let bytes = words.next()?.parse().ok()?;
    let ms = match (words.next()?, words.next()?, words.next()?, words.next()?) {
        ("bytes", "in", ms, "ms") => ms.parse().ok()?,
        _ => return None,
    };
    if words.next().is_some() {
        return None;
    }
    Some(TcpTo { to, bytes, ms })
}

/// One side's two directions, checked: one `tcp to` line to each guest, each with the
/// transfer's bytes and a time above zero.
#[derive(Clone, Debug, PartialEq)]
pub struct Side {
    /// To the guest on core 2, then to the guest on core 1.
    pub directions: [TcpTo; 2],
}

impl Side {
    /// The side from its console lines: for each direction its sender's `tcp to` line
    /// and its receiver's `tcp from <sender> <bytes> bytes sha256 <hex> ok` (a transfer
    /// that arrived damaged or short does not count).
    pub fn from_lines<S: AsRef<str>>(lines: &[S], bytes: u64) -> Result<Self> {
        let found: Vec<TcpTo> = lines.iter().filter_map(|l| tcp_to(l.as_ref())).collect();
        let one = |from: u32, to: u32| -> Result<TcpTo> {
            let (from, ip) = (guest_ip(from), guest_ip(to));
            let mut sent = found.iter().filter(|t| t.to == ip);
            let Some(t) = sent.next() else {
                bail!("no `{TCP_TO}{ip}` line");
            };
            if sent.next().is_some() {
                bail!("more than one `{TCP_TO}{ip}` line");
            }
            if t.bytes != bytes || t.ms == 0 {
                bail!(
                    "`{TCP_TO}{ip}`: {} bytes in {} ms, expected {bytes} bytes in more than 0 ms",
                    t.bytes,
                    t.ms
                );
            }
            let arrived = format!("{TCP_FROM}{from} {bytes} bytes sha256 ");
            if !lines.iter().any(|l| {
                let l = l.as_ref();
                l.find(&arrived)
                    .is_some_and(|at| l[at + arrived.len()..].ends_with(" ok"))
            }) {
                bail!(
                    "{ip} did not report {bytes} bytes from {from} with the sender's sha256 (`{arrived}<hex> ok`)"
                );
            }
            Ok(t.clone())
        };
        Ok(Self {
            directions: [one(CORES[0], CORES[1])?, one(CORES[1], CORES[0])?],
        })
    }

    /// The mean over both directions of bytes per second.
    pub fn bytes_per_s(&self) -> f64 {
        self.directions
            .iter()
            .map(|t| t.bytes as f64 * 1000.0 / t.ms as f64)
            .sum::<f64>()
            / self.directions.len() as f64
    }

    /// As JSON: each direction's bytes and ms, and the mean.
    pub fn json(&self) -> Value {
        let sender = |to: &str| {
            guest_ip(if to == guest_ip(CORES[1]) {
                CORES[0]
            } else {
                CORES[1]
            })
        };
        json!({
            "directions": self.directions.iter().map(|t| json!({
                "from": sender(&t.to),
                "to": t.to,
                "bytes": t.bytes,
                "ms": t.ms,
            })).collect::<Vec<_>>(),
            "bytes_per_s": self.bytes_per_s(),
        })
    }
}

/// Which end of the `-netdev socket` link a QEMU is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// `listen=127.0.0.1:PORT`: started first.
    Listen(u16),
    /// `connect=127.0.0.1:PORT`: started once the other end listens.
    Connect(u16),
}

/// The network arguments of one QEMU: the socket netdev and the virtio-net device with
/// the guest's MAC and the MTU it offers.
pub fn net_arguments(end: End, core: u32, mtu: u32) -> Vec<String> {
    let socket = match end {
        End::Listen(port) => format!("listen=127.0.0.1:{port}"),
        End::Connect(port) => format!("connect=127.0.0.1:{port}"),
    };
    vec![
        "-netdev".into(),
        format!("socket,id=n0,{socket}"),
        "-device".into(),
        format!(
            "virtio-net-device,netdev=n0,mac={},host_mtu={mtu}",
            virtio_net_mac(core)
        ),
    ]
}

/// The whole QEMU command line of one guest: the bare boot's (the window, the loader,
/// the stub), the hypervisor guests' `-cpu`, and the network.
pub fn qemu_arguments(boot: &GuestBoot, stub: &Path, end: End, core: u32, mtu: u32) -> Vec<String> {
    let mut args = bare_arguments(boot, stub, false);
    if let Some(at) = args.iter().position(|a| a == "-cpu") {
        args[at + 1] = HYP_GUEST_CPU.to_string();
    }
    args.extend(net_arguments(end, core, mtu));
    args
}

/// Whether `/proc/net/tcp` (its text) has a socket listening on 127.0.0.1:`port`
/// (state 0A; the local address as the kernel prints it: the IPv4 address's bytes in
/// memory order, then the port, in hex).
pub fn listening_in(proc_net_tcp: &str, port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    proc_net_tcp.lines().skip(1).any(|line| {
        let mut fields = line.split_whitespace();
        let local = fields.nth(1);
        let state = fields.nth(1);
        local == Some(want.as_str()) && state == Some("0A")
    })
}

/// A loopback port free right now (the kernel's choice for port 0).
fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// A finished pair of QEMUs.
#[derive(Debug)]
pub struct PairRun {
    /// Every console line of both guests, each with its guest's core.
    pub lines: Vec<(u32, String)>,
    /// Each QEMU's exit code, `None` if killed at the time limit.
    pub exits: [Option<i32>; 2],
    /// From the first QEMU's start to the last one's end.
    pub elapsed: Duration,
}

/// Boots the two guests joined by `-netdev socket` and runs them until both QEMUs
/// exit or `timeout` passes; both are killed on every way out (each is a
/// [`RunningQemu`], killed when dropped).
fn run_pair(boot: &GuestBoot, stub: &Path, mtu: u32, timeout: Duration) -> Result<PairRun> {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    // The listening QEMU first (`connect=` fails at once with nobody listening). A port
    // taken between our check and QEMU's bind makes QEMU exit: another port is tried.
    let mut listening = None;
    for _ in 0..3 {
        let port = free_port()?;
        let args = qemu_arguments(boot, stub, End::Listen(port), CORES[0], mtu);
        let mut qemu = RunningQemu::spawn(&args, 0, tx.clone())?;
        let give_up = Instant::now() + Duration::from_secs(20);
        while !listening_in(
            &fs::read_to_string("/proc/net/tcp").unwrap_or_default(),
            port,
        ) {
            if qemu.exit_code()?.is_some() || Instant::now() > give_up {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if qemu.exit_code()?.is_none()
            && listening_in(
                &fs::read_to_string("/proc/net/tcp").unwrap_or_default(),
                port,
            )
        {
            listening = Some((qemu, port));
            break;
        }
        eprintln!("xtask: qemu-net: QEMU did not listen on 127.0.0.1:{port}; trying another port");
    }
    let (mut first, port) = listening.context("QEMU never listened on a loopback port")?;
    let args = qemu_arguments(boot, stub, End::Connect(port), CORES[1], mtu);
    let mut second = RunningQemu::spawn(&args, 1, tx)?;
    let mut lines = Vec::new();
    let exits = collect(
        [&mut first, &mut second],
        &rx,
        start + timeout,
        |i, line| {
            println!("qemu-net {}: {line}", CORES[i]);
            lines.push((CORES[i], line));
        },
    )?;
    if exits.iter().any(Option::is_none) {
        eprintln!(
            "xtask: qemu-net: the guests did not finish within {} s: QEMU killed",
            timeout.as_secs()
        );
    }
    Ok(PairRun {
        lines,
        exits,
        elapsed: start.elapsed(),
    })
}

/// What the QEMU side's guests run: the linux-net workload ([`NetPlan::workload`]) of
/// the two Linux guests alone (no smoltcp partition on this LAN).
pub fn plan(bytes: u64) -> NetPlan {
    NetPlan {
        linux: CORES
            .iter()
            .map(|&k| NetNode::linux_guest(k as u8))
            .collect(),
        smoltcp: Vec::new(),
        ..NetPlan::linux_net(3, bytes)
    }
}

/// The QEMU side: builds the initramfs around the workload and the guests' tree, boots
/// the pair, and returns its run and the side its lines give.
pub fn measure_qemu(bytes: u64, mtu: u32, timeout: Duration) -> Result<(PairRun, Result<Side>)> {
    qemu::ensure_installed()?;
    let out = out_dir().join("qemu-net");
    let (fetched, files) = hyp_guest_files(&out, "initrd.gz", &plan(bytes).workload()?, None)?;
    // No stage 2: each guest's window is its QEMU's own RAM, at the bare boot's base.
    let boot = guest_boot(0, Placement::identity(BARE_BASE), &files, &out)?;
    let stub = out.join("boot-stub.bin");
    fs::write(&stub, boot_stub(boot.x0, boot.entry))?;
    eprintln!(
        "xtask: qemu-net: kernel {}, two QEMUs joined by -netdev socket, -cpu {HYP_GUEST_CPU}, MTU {mtu}, {} MiB each way",
        fetched.version,
        bytes >> 20
    );
    let run = run_pair(&boot, &stub, mtu, timeout)?;
    let lines: Vec<&str> = run.lines.iter().map(|(_, l)| l.as_str()).collect();
    let side = Side::from_lines(&lines, bytes);
    Ok((run, side))
}

/// The iqdio side's command (arguments of this same executable).
pub const IQDIO_RUN: [&str; 5] = ["run", "--scenario", "linux-net", "--smp", "3"];

/// A child process killed, with everything it started, when dropped while it runs (the
/// scenario's xtask kills its own QEMU at its `--timeout`; this is for our error paths).
struct ChildTree(std::process::Child);

impl ChildTree {
    /// Every process below `pid`, from `/proc/<pid>/task/<tid>/children`.
    fn descendants(pid: u32) -> Vec<u32> {
        let mut all = Vec::new();
        let mut todo = vec![pid];
        while let Some(p) = todo.pop() {
            let Ok(tasks) = fs::read_dir(format!("/proc/{p}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let text = fs::read_to_string(task.path().join("children")).unwrap_or_default();
                for child in text.split_whitespace().filter_map(|c| c.parse().ok()) {
                    all.push(child);
                    todo.push(child);
                }
            }
        }
        all
    }
}

impl Drop for ChildTree {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let below = Self::descendants(self.0.id());
            let _ = self.0.kill();
            if !below.is_empty() {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .args(below.iter().map(u32::to_string))
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = self.0.wait();
    }
}

/// A finished iqdio side.
#[derive(Debug)]
pub struct IqdioRun {
    /// The xtask's exit code.
    pub exit: Option<i32>,
    /// Wall time, the image's build included.
    pub elapsed: Duration,
}

/// The iqdio side: `cargo xtask run --scenario linux-net` (this executable, as a child,
/// its lines echoed as they come), within `timeout` once booted (its own `--timeout`).
pub fn measure_iqdio(bytes: u64, timeout: Duration) -> Result<(IqdioRun, Result<Side>)> {
    let start = Instant::now();
    let exe = std::env::current_exe().context("this executable's path")?;
    let (bytes_arg, timeout) = (bytes.to_string(), timeout.as_secs().to_string());
    let args: Vec<&str> = IQDIO_RUN
        .iter()
        .copied()
        .chain(["--net-bytes", &bytes_arg, "--timeout", &timeout])
        .collect();
    eprintln!("xtask: linux-net: cargo xtask {}", args.join(" "));
    let mut child = ChildTree(
        Command::new(exe)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting `cargo xtask run --scenario linux-net`")?,
    );
    let stdout = child.0.stdout.take().context("the run's stdout")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).split(b'\n') {
        let line = String::from_utf8_lossy(&line.context("reading the run's output")?)
            .trim_end()
            .to_string();
        println!("{line}");
        lines.push(line);
    }
    let exit = child.0.wait().context("waiting for the run")?.code();
    let side = Side::from_lines(&lines, bytes);
    Ok((
        IqdioRun {
            exit,
            elapsed: start.elapsed(),
        },
        side,
    ))
}

/// The measurement, both sides in one run: the QEMU pair, then the linux-net scenario,
/// as the JSON `details.linux_tcp_vs_qemu_net` of the bench results. `ratio` is `null`
/// when either side failed, and that side's `error` says why.
pub fn measure(bytes: u64) -> Result<Value> {
    let mtu = VIRTIO_NET_MTU;
    let (pair, qemu_side) = measure_qemu(bytes, mtu, Duration::from_secs(300))?;
    let (iqdio, iqdio_side) = measure_iqdio(bytes, Duration::from_secs(900))?;
    let side_json = |side: &Result<Side>| match side {
        Ok(side) => side.json(),
        Err(e) => json!({ "error": format!("{e:#}") }),
    };
    let mut qemu = side_json(&qemu_side);
    qemu["how"] = json!(format!(
        "two qemu-system-aarch64 -M virt,gic-version=3 -cpu {HYP_GUEST_CPU} -smp 1, 512 MiB each, \
         virtio-net-device host_mtu={mtu}, joined by -netdev socket listen=/connect= on 127.0.0.1"
    ));
    qemu["exits"] = json!(pair.exits);
    qemu["elapsed_s"] = json!(pair.elapsed.as_secs_f64());
    let mut fabric = side_json(&iqdio_side);
    fabric["how"] = json!(format!(
        "cargo xtask {}: qemu-system-aarch64 -M virt,virtualization=on,gic-version=3 -cpu {HYP_GUEST_CPU} -smp 3, \
         the guests on cores 1 and 2 through the hypervisor's virtio-net device (MTU {mtu}) and the fabric",
        IQDIO_RUN.join(" ")
    ));
    fabric["exit"] = json!(iqdio.exit);
    fabric["elapsed_s"] = json!(iqdio.elapsed.as_secs_f64());
    let ratio = match (&iqdio_side, &qemu_side) {
        (Ok(i), Ok(q)) => Some(i.bytes_per_s() / q.bytes_per_s()),
        _ => None,
    };
    Ok(json!({
        "ratio": ratio,
        "bytes": bytes,
        "cpu": HYP_GUEST_CPU,
        "mtu": mtu,
        "iqdio": fabric,
        "qemu": qemu,
    }))
}

/// Where `cargo xtask bench` keeps the measurement between the run and the report.
pub const RESULT_FILE: &str = "iqdio-linux-net.json";

/// The heading of the figure's section in `results.md`.
const HEADING: &str = "## Linux guests: TCP over iqdio against QEMU's networking (issue 16)";

/// The figure's section of `results.md`.
pub fn markdown(details: &Value) -> String {
    let f2 = |v: &Value| v.as_f64().map_or("n/a".to_string(), |x| format!("{x:.2}"));
    let mib_s = |v: &Value| {
        v.as_f64().map_or("n/a".to_string(), |x| {
            format!("{:.1}", x / f64::from(1 << 20))
        })
    };
    let mut s = format!(
        "{HEADING}\n\n\
         {} MiB of random data over TCP (busybox `nc`) in each direction between two Linux \
         guests (Debian's arm64 kernel, the same initramfs, `-cpu {}`, TCG, one vCPU and 512 MiB \
         each, MTU {}), each direction timed by its sending guest. iqdio: `cargo xtask run \
         --scenario linux-net`, the guests' virtio-net rings on the fabric. QEMU: the same guests \
         in two plain QEMU processes joined by `-netdev socket` on the loopback. Measured \
         together by `cargo xtask bench --linux-net` (or the full `cargo xtask bench`){}.\n\n\
         | side | 10.0.0.2 → 10.0.0.3 | 10.0.0.3 → 10.0.0.2 | mean MiB/s |\n|---|---:|---:|---:|\n",
        details["bytes"].as_u64().unwrap_or(0) >> 20,
        details["cpu"].as_str().unwrap_or("?"),
        details["mtu"],
        details["measured"]
            .as_str()
            .map_or(String::new(), |m| format!(
                ", {m}, commit `{}`",
                details["commit"].as_str().unwrap_or("?")
            )),
    );
    for (label, key) in [
        ("iqdio (hypervisor, fabric)", "iqdio"),
        ("QEMU `-netdev socket`", "qemu"),
    ] {
        let side = &details[key];
        if let Some(error) = side["error"].as_str() {
            s += &format!("| {label} | failed: {error} | | |\n");
            continue;
        }
        let direction = |i: usize| {
            let d = &side["directions"][i];
            format!(
                "{} ms ({} MiB/s)",
                d["ms"],
                mib_s(&json!(
                    d["bytes"].as_f64().unwrap_or(0.0) * 1000.0
                        / d["ms"].as_f64().unwrap_or(f64::NAN)
                ))
            )
        };
        s += &format!(
            "| {label} | {} | {} | {} |\n",
            direction(0),
            direction(1),
            mib_s(&side["bytes_per_s"])
        );
    }
    s += &format!(
        "\n`ratios.linux_tcp_vs_qemu_net` = {} (iqdio's mean bytes/s over QEMU's).\n",
        f2(&details["ratio"])
    );
    s
}

/// Puts the measurement into `results.json` (`ratios.linux_tcp_vs_qemu_net`,
/// `details.linux_tcp_vs_qemu_net`) and its section into `results.md` (replacing the
/// previous one), both in `dir`, keeping everything else.
pub fn write_report(dir: &Path, details: &Value) -> Result<()> {
    let json_path = dir.join("results.json");
    let mut doc: Value = match fs::read_to_string(&json_path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", json_path.display()))?,
        Err(_) => json!({}),
    };
    if !doc.is_object() {
        bail!("{} is not a JSON object", json_path.display());
    }
    for (key, value) in [("ratios", &details["ratio"]), ("details", details)] {
        if !doc[key].is_object() {
            doc[key] = json!({});
        }
        doc[key]["linux_tcp_vs_qemu_net"] = value.clone();
    }
    fs::create_dir_all(dir)?;
    fs::write(&json_path, serde_json::to_string_pretty(&doc)? + "\n")?;
    let md_path = dir.join("results.md");
    let old = fs::read_to_string(&md_path).unwrap_or_else(|_| "# iqdio benchmarks\n".to_string());
    fs::write(&md_path, with_section(&old, &markdown(details)))?;
    Ok(())
}

/// `text` with its `HEADING` section (up to the next `## ` heading or the end)
/// replaced by `section`, or `section` appended when there is none.
pub fn with_section(text: &str, section: &str) -> String {
    let Some(at) = text.find(HEADING) else {
        return format!("{}\n\n{section}", text.trim_end());
    };
    let after = &text[at + HEADING.len()..];
    let rest = after.find("\n## ").map_or("", |end| &after[end + 1..]);
    let mut out = text[..at].to_string();
    out += section;
    if !rest.is_empty() {
        out += "\n";
        out += rest;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::{GuestFiles, QEMU_FIRST_VIRTIO};

    #[test]
    fn tcp_to_lines_parse_and_others_do_not() {
        assert_eq!(
            tcp_to("partition 1: iqdio-net: tcp to 10.0.0.3 16777216 bytes in 4021 ms"),
            Some(TcpTo {
                to: "10.0.0.3".into(),
                bytes: 16_777_216,
                ms: 4021
            })
        );
        assert_eq!(
            tcp_to("iqdio-net: tcp to 10.0.0.2 5 bytes in 1 ms").map(|t| t.ms),
            Some(1)
        );
        for bad in [
            "iqdio-net: tcp from 10.0.0.2 5 bytes sha256 00 ok",
            "iqdio-net: tcp to 10.0.0.2 5 bytes in x ms",
            "iqdio-net: tcp to 10.0.0.2 5 bytes in 7 s",
            "iqdio-net: tcp to 10.0.0.2 -5 bytes in 7 ms",
            "iqdio-net: tcp to 10.0.0.2 5 bytes in 7 ms extra",
            "iqdio-net: tcp to 10.0.0.2",
            "tcp to 10.0.0.2 5 bytes in 7 ms",
        ] {
            assert_eq!(tcp_to(bad), None, "{bad}");
        }
    }

    const BOTH: [&str; 5] = [
        "iqdio-net: tcp to 10.0.0.3 1000 bytes in 500 ms",
        "[    3.1] random kernel line",
        "partition 2: iqdio-net: tcp from 10.0.0.2 1000 bytes sha256 ab12 ok",
        "iqdio-net: tcp to 10.0.0.2 1000 bytes in 250 ms",
        "iqdio-net: tcp from 10.0.0.3 1000 bytes sha256 cd34 ok",
    ];

    #[test]
    fn a_side_is_the_mean_of_its_two_directions() {
        let side = Side::from_lines(&BOTH, 1000).unwrap();
        assert_eq!(side.directions[0].to, "10.0.0.3");
        assert_eq!(side.directions[1].to, "10.0.0.2");
        // 2000 B/s and 4000 B/s.
        assert_eq!(side.bytes_per_s(), 3000.0);
        let j = side.json();
        assert_eq!(j["directions"][0]["from"], "10.0.0.2");
        assert_eq!(j["directions"][1]["from"], "10.0.0.3");
        assert_eq!(j["directions"][1]["ms"], 250);
    }

    #[test]
    fn a_side_with_a_missing_short_doubled_or_damaged_direction_is_refused() {
        let without = |i: usize| {
            let mut lines = BOTH.to_vec();
            lines.remove(i);
            lines
        };
        assert!(Side::from_lines(&without(0), 1000).is_err());
        assert!(Side::from_lines(&without(3), 1000).is_err());
        // Each receiver's confirmation is needed.
        assert!(Side::from_lines(&without(2), 1000).is_err());
        assert!(Side::from_lines(&without(4), 1000).is_err());
        assert!(Side::from_lines(&BOTH, 2000).is_err());
        let doubled = [BOTH.to_vec(), vec![BOTH[0]]].concat();
        assert!(Side::from_lines(&doubled, 1000).is_err());
        let swap = |from: &str, to: &str| -> Vec<String> {
            BOTH.iter().map(|l| l.replace(from, to)).collect()
        };
        assert!(Side::from_lines(&swap("250 ms", "0 ms"), 1000).is_err());
        assert!(Side::from_lines(&swap("cd34 ok", "cd34 mismatch"), 1000).is_err());
        assert!(
            Side::from_lines(
                &swap("10.0.0.3 1000 bytes sha256", "10.0.0.3 999 bytes sha256"),
                1000
            )
            .is_err()
        );
        assert!(Side::from_lines(&swap("nothing", "nothing"), 1000).is_ok());
    }

    #[test]
    fn the_two_ends_listen_and_connect_on_the_loopback_with_the_contract_macs() {
        assert_eq!(
            net_arguments(End::Listen(4321), 1, 1500).join(" "),
            "-netdev socket,id=n0,listen=127.0.0.1:4321 \
             -device virtio-net-device,netdev=n0,mac=02:49:51:44:00:01,host_mtu=1500"
        );
        assert_eq!(
            net_arguments(End::Connect(4321), 2, 65486).join(" "),
            "-netdev socket,id=n0,connect=127.0.0.1:4321 \
             -device virtio-net-device,netdev=n0,mac=02:49:51:44:00:02,host_mtu=65486"
        );
        assert_eq!(guest_ip(CORES[0]), "10.0.0.2");
        assert_eq!(guest_ip(CORES[1]), "10.0.0.3");
    }

    #[test]
    fn proc_net_tcp_listening_is_found_by_address_port_and_state() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0\n\
   1: 0100007F:10E1 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1\n\
   2: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0 100 0 0 10 0\n";
        assert!(listening_in(text, 8080));
        // Established, not listening; and a wildcard listener is not the loopback's.
        assert!(!listening_in(text, 4321));
        assert!(!listening_in(text, 22));
        assert!(!listening_in("", 8080));
    }

    #[test]
    fn each_guest_boots_like_the_bare_boot_with_the_hypervisor_guests_cpu() {
        let files = GuestFiles {
            image: "/k/Image".into(),
            image_size: 1 << 20,
            initrd: "/k/initrd.gz".into(),
            initrd_len: 1 << 20,
            extra_bootargs: "panic=-1".into(),
            virtio: Some(QEMU_FIRST_VIRTIO),
        };
        let dir = std::env::temp_dir().join(format!("iqdio-xtask-qemunet-{}", std::process::id()));
        let boot = guest_boot(0, Placement::identity(BARE_BASE), &files, &dir).unwrap();
        let args = qemu_arguments(&boot, Path::new("/o/stub.bin"), End::Connect(9), 2, 1500);
        let line = args.join(" ");
        assert!(
            line.starts_with(&format!(
                "-M virt,gic-version=3 -nodefaults -nic none -cpu {HYP_GUEST_CPU} -smp 1 -m 514M "
            )),
            "{line}"
        );
        assert_eq!(args.iter().filter(|a| *a == "-cpu").count(), 1);
        assert!(line.contains("-no-reboot"));
        assert!(line.contains("-device loader,file=/k/initrd.gz,addr=0x48200000,force-raw=on"));
        assert!(line.ends_with(
            "-netdev socket,id=n0,connect=127.0.0.1:9 \
             -device virtio-net-device,netdev=n0,mac=02:49:51:44:00:02,host_mtu=1500"
        ));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_qemu_guests_run_linux_nets_workload_without_the_smoltcp_partition() {
        let plan = plan(1 << 20);
        let scenario = NetPlan::linux_net(3, 1 << 20);
        assert_eq!(plan.linux, scenario.linux);
        assert!(plan.smoltcp.is_empty());
        assert_eq!((plan.bytes, plan.pings), (scenario.bytes, scenario.pings));
        // The MACs the QEMU devices get are the nodes' own.
        for (node, core) in plan.linux.iter().zip(CORES) {
            assert_eq!(node.mac_text(), virtio_net_mac(core));
            assert_eq!(node.ipv4.to_string(), guest_ip(core));
        }
    }

    fn details() -> Value {
        json!({
            "ratio": 2.5,
            "bytes": 16 << 20,
            "cpu": HYP_GUEST_CPU,
            "mtu": 65486,
            "measured": "2026-12-02 13:00 UTC",
            "commit": "abc1234",
            "iqdio": {
                "directions": [
                    { "from": "10.0.0.2", "to": "10.0.0.3", "bytes": 16 << 20, "ms": 2000 },
                    { "from": "10.0.0.3", "to": "10.0.0.2", "bytes": 16 << 20, "ms": 2000 },
                ],
                "bytes_per_s": 8.0 * f64::from(1 << 20),
            },
            "qemu": { "error": "no `iqdio-net: tcp to 10.0.0.3` line" },
        })
    }

    #[test]
    fn the_section_gives_both_sides_and_the_ratio() {
        let md = markdown(&details());
        assert!(md.starts_with(HEADING));
        assert!(md.contains(
            "| iqdio (hypervisor, fabric) | 2000 ms (8.0 MiB/s) | 2000 ms (8.0 MiB/s) | 8.0 |"
        ));
        assert!(
            md.contains("| QEMU `-netdev socket` | failed: no `iqdio-net: tcp to 10.0.0.3` line |")
        );
        assert!(md.contains("`ratios.linux_tcp_vs_qemu_net` = 2.50"));
        assert!(md.contains("2026-12-02 13:00 UTC, commit `abc1234`"));
    }

    #[test]
    fn the_section_is_appended_once_then_replaced_in_place() {
        let first = with_section("# t\n\n## A\n\na\n", &format!("{HEADING}\n\nold\n"));
        assert_eq!(first, format!("# t\n\n## A\n\na\n\n{HEADING}\n\nold\n"));
        let again = with_section(&first, &format!("{HEADING}\n\nnew\n"));
        assert_eq!(again, format!("# t\n\n## A\n\na\n\n{HEADING}\n\nnew\n"));
        // A section followed by another keeps the other.
        let middle = format!("# t\n\n{HEADING}\n\nold\n\n## B\n\nb\n");
        assert_eq!(
            with_section(&middle, &format!("{HEADING}\n\nnew\n")),
            format!("# t\n\n{HEADING}\n\nnew\n\n## B\n\nb\n")
        );
    }

    #[test]
    fn the_report_patches_results_json_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("iqdio-xtask-report-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("results.json"),
            r#"{"ratios": {"tcp_vs_loopback": 1.5}, "mode": "full"}"#,
        )
        .unwrap();
        fs::write(
            dir.join("results.md"),
            "# iqdio benchmarks\n\n## Other\n\nx\n",
        )
        .unwrap();
        write_report(&dir, &details()).unwrap();
        let doc: Value =
            serde_json::from_str(&fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
        assert_eq!(doc["ratios"]["tcp_vs_loopback"], 1.5);
        assert_eq!(doc["ratios"]["linux_tcp_vs_qemu_net"], 2.5);
        assert_eq!(doc["details"]["linux_tcp_vs_qemu_net"]["mtu"], 65486);
        assert_eq!(doc["mode"], "full");
        let md = fs::read_to_string(dir.join("results.md")).unwrap();
        assert!(md.starts_with("# iqdio benchmarks\n\n## Other\n\nx\n\n"));
        assert_eq!(md.matches(HEADING).count(), 1);
        write_report(&dir, &details()).unwrap();
        let md = fs::read_to_string(dir.join("results.md")).unwrap();
        assert_eq!(md.matches(HEADING).count(), 1);
        fs::remove_dir_all(&dir).unwrap();
    }
}
