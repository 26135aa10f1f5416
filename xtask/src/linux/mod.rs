//! Linux guests (issue 15 groundwork): Debian's arm64 kernel and busybox fetched and
//! cached ([`fetch`]), the initramfs built here ([`cpio`], [`initramfs`]), each guest's
//! own device tree ([`dtb`]) and where everything sits in its window ([`layout`]).
//!
//! `cargo xtask linux-bare` proves the pieces without the hypervisor: it boots the
//! kernel directly under QEMU with exactly the blobs and addresses a partition will get
//! (QEMU's generic loader writes them into RAM at the layout's places, the tree is ours,
//! not QEMU's) and checks what the init reports.
//!
//! The hypervisor's side: [`guest_boot`] gives, for partition `index` with its physical
//! window, the QEMU loader arguments and the device tree file, plus the entry point and
//! x0 it enters the kernel with.

pub mod cpio;
pub mod dtb;
pub mod fetch;
pub mod hypboots;
pub mod layout;
pub mod netload;
pub mod qemunet;

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use self::{
    dtb::{GuestTree, VirtioMmio},
    fetch::Fetched,
    layout::{Layout, MIB, Placement, qemu_escape},
};
use crate::{cargo, qemu};

/// Every line the init prints starts with this, so a check can tell them from the
/// kernel's.
pub const MARK: &str = "iqdio-guest:";

/// `cargo xtask linux-bare`'s options.
#[derive(clap::Args, Debug)]
pub struct BareArgs {
    /// Boot this arm64 kernel Image instead of Debian's cloud kernel (which is fetched
    /// with apt on first use and cached under target/linux-guest/).
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Use this initramfs (gzip newc cpio with its own /init) instead of building one;
    /// with --kernel too, nothing is fetched. Its init must print the `iqdio-guest:`
    /// lines the check reads, or the check fails.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Run this shell script in the guest instead of the workload, after the init has
    /// mounted /proc, /sys, /dev and loaded the virtio modules; the guest powers off
    /// when it returns.
    #[arg(long, value_name = "FILE", conflicts_with = "initrd")]
    pub guest_init: Option<PathBuf>,
    /// Give the guest a virtio-net device (QEMU user networking, restricted to the
    /// guest and QEMU) through the tree's optional virtio-mmio node; the check then
    /// wants eth0.
    #[arg(long)]
    pub net: bool,
    /// Words added to the kernel command line.
    #[arg(long, value_name = "ARGS", default_value = "")]
    pub append: String,
    /// Stop QEMU after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub timeout: u64,
}

/// The output directory for built blobs (initramfs, device trees, the bare boot stub).
fn out_dir() -> PathBuf {
    cargo::target_dir().join("linux-guest").join("out")
}

/// The init's set-up, the same in every guest: busybox's applets, the pseudo
/// filesystems, the virtio modules, loopback, and a report of what the guest sees.
const INIT_HEAD: &str = r#"#!/bin/busybox sh
# iqdio Linux guest init, written by `cargo xtask`: set up, run the workload, power off.
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
loaded=0
for m in virtio_ring virtio virtio_mmio failover net_failover virtio_net; do
    if insmod /lib/modules/$m.ko; then
        loaded=$((loaded + 1))
    else
        echo "iqdio-guest: insmod $m failed"
    fi
done
echo "iqdio-guest: modules loaded $loaded of 6"
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
    ip link set eth0 up
    echo "iqdio-guest: eth0 $(cat /sys/class/net/eth0/address)"
fi
echo "iqdio-guest: uname -r $(uname -r)"
echo "iqdio-guest: cpus $(grep -c ^processor /proc/cpuinfo)"
echo "iqdio-guest: memory $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) kB"
echo "iqdio-guest: uptime $(cut -d ' ' -f 1 /proc/uptime) s"
echo "iqdio-guest: timer interrupts $(awk '/arch_timer/ {print $2}' /proc/interrupts)"
"#;

/// The init's end: the tick count again (it must have grown while the workload ran)
/// and a power-off that cannot be skipped (a panic or a hung init would otherwise keep
/// the guest, and QEMU, alive).
const INIT_TAIL: &str = r#"echo "iqdio-guest: timer interrupts $(awk '/arch_timer/ {print $2}' /proc/interrupts)"
echo "iqdio-guest: powering off"
poweroff -f
"#;

/// The bare boot's workload: one second of sleep, which ends only through a timer
/// interrupt. (Debian's 6.1 cloud kernel stops its 250 Hz tick when idle: about 400
/// ticks by the end of boot, then about 14 during the second.)
pub const BARE_WORKLOAD: &str = "sleep 1\n";

/// The workload that runs a `--guest-init` script (kept in the image as /guest-init).
pub const GUEST_INIT_WORKLOAD: &str =
    "sh /guest-init\necho \"iqdio-guest: guest-init exited $?\"\n";

/// The `/init` script around a workload (shell lines).
pub fn init_script(workload: &str) -> String {
    format!("{INIT_HEAD}{workload}{INIT_TAIL}")
}

/// The initramfs (gzip newc): busybox, the virtio modules, `/init` around `workload`,
/// and `/guest-init` when given.
pub fn initramfs(fetched: &Fetched, workload: &str, guest_init: Option<&[u8]>) -> Result<Vec<u8>> {
    let mut archive = cpio::Archive::new();
    for dir in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "etc",
        "lib",
        "lib/modules",
        "proc",
        "root",
        "sys",
        "tmp",
    ] {
        archive.dir(dir, 0o755)?;
    }
    archive.char_dev("dev/console", 0o600, 5, 1)?;
    let busybox = fs::read(&fetched.busybox)
        .with_context(|| format!("reading {}", fetched.busybox.display()))?;
    archive.file("bin/busybox", 0o755, &busybox)?;
    for module in &fetched.modules {
        let name = module
            .file_name()
            .and_then(|n| n.to_str())
            .context("module file name")?;
        let data = fs::read(module).with_context(|| format!("reading {}", module.display()))?;
        archive.file(&format!("lib/modules/{name}"), 0o644, &data)?;
    }
    archive.file("init", 0o755, init_script(workload).as_bytes())?;
    if let Some(script) = guest_init {
        archive.file("guest-init", 0o755, script)?;
    }
    cpio::gzip(&archive.finish()?)
}

/// The blobs one Linux guest boots from, and what the hypervisor needs to enter it.
#[derive(Clone, Debug)]
pub struct GuestBoot {
    /// Its window, physical and guest-physical.
    pub placement: Placement,
    /// The device tree written for it.
    pub dtb: PathBuf,
    /// QEMU's `-device loader` arguments that write the Image, initrd and tree into the
    /// physical window.
    pub loader: Vec<String>,
    /// Where the kernel is entered (IPA), with the MMU off at EL1.
    pub entry: u64,
    /// x0 at entry: the device tree's IPA (x1-x3 = 0).
    pub x0: u64,
}

/// The files every Linux guest shares.
#[derive(Clone, Debug)]
pub struct GuestFiles {
    /// The raw arm64 Image.
    pub image: PathBuf,
    /// The memory the Image claims (its header's image_size).
    pub image_size: u64,
    /// The gzip initramfs.
    pub initrd: PathBuf,
    /// Its length.
    pub initrd_len: u64,
    /// Words added to the kernel command line.
    pub extra_bootargs: String,
    /// An optional virtio-mmio slot in the tree.
    pub virtio: Option<VirtioMmio>,
}

/// Partition `index`'s device tree (written as `guest<index>.dtb` in `out`) and the
/// loader arguments for its window: `Placement::new(phys_base)` for a partition whose
/// window is at physical `phys_base` under the hypervisor (the guest sees the default
/// IPA layout), `Placement::identity` for a boot without stage 2.
pub fn guest_boot(
    index: usize,
    placement: Placement,
    files: &GuestFiles,
    out: &Path,
) -> Result<GuestBoot> {
    if !placement.phys_base.is_multiple_of(layout::WINDOW_ALIGN) {
        bail!(
            "partition {index}: physical window {:#x} is not 2 MiB aligned",
            placement.phys_base
        );
    }
    let layout = placement.layout;
    let tree = GuestTree {
        layout,
        initrd_len: files.initrd_len,
        extra_bootargs: files.extra_bootargs.clone(),
        virtio: files.virtio,
    };
    let blob = tree.build()?;
    layout
        .check(files.image_size, files.initrd_len, blob.len() as u64)
        .with_context(|| format!("partition {index}"))?;
    fs::create_dir_all(out)?;
    let dtb = out.join(format!("guest{index}.dtb"));
    fs::write(&dtb, &blob)?;
    let loader = placement.loader_arguments(&files.image, &files.initrd, &dtb);
    Ok(GuestBoot {
        placement,
        dtb,
        loader,
        entry: layout.image(),
        x0: layout.dtb(),
    })
}

/// A few instructions that enter the kernel as booting.rst asks (x0 = the tree, x1-x3 =
/// 0), for the bare boot only: with no `-kernel`, QEMU starts the CPU at EL1 with the
/// MMU off at the address the loader names, and this does the rest. The hypervisor
/// does the same with its ERET.
pub fn boot_stub(dtb: u64, entry: u64) -> Vec<u8> {
    // A64 encodings (Arm ARM C6.2): LDR (literal) 0x58000000 | imm19 << 5 | Rt, the
    // offset counted in words from the instruction; MOV Xd, XZR = ORR Xd, XZR, XZR
    // 0xAA1F03E0 | Rd; BR Xn = 0xD61F0000 | Rn << 5.
    let code: [u32; 6] = [
        0x5800_0000 | (6 << 5),     // 0x00: ldr x0, 0x18 (dtb)
        0xAA1F_03E1,                // 0x04: mov x1, xzr
        0xAA1F_03E2,                // 0x08: mov x2, xzr
        0xAA1F_03E3,                // 0x0c: mov x3, xzr
        0x5800_0000 | (4 << 5) | 4, // 0x10: ldr x4, 0x20 (entry)
        0xD61F_0000 | (4 << 5),     // 0x14: br x4
    ];
    let mut bytes: Vec<u8> = code.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.extend_from_slice(&dtb.to_le_bytes());
    bytes.extend_from_slice(&entry.to_le_bytes());
    bytes
}

/// RAM's base on QEMU's `virt` machine (hw/arm/virt.c, VIRT_MEM).
const QEMU_RAM_BASE: u64 = 0x4000_0000;

/// The bare boot's window base: 2 MiB into RAM, because with no `-kernel` QEMU `virt`
/// writes its own device tree at RAM's base for firmware to find (1 MiB, overlapping
/// an Image there). Outside the guest's `/memory`, Linux never sees that tree, and a
/// base other than QEMU's shows the guest takes its memory from our tree.
pub const BARE_BASE: u64 = QEMU_RAM_BASE + 2 * MIB;

/// Where the bare boot puts its stub: the window's last 4 KiB, inside the tree's 2 MiB
/// region and far past the tree itself (Linux may reuse it once booted).
fn stub_address(layout: &Layout) -> u64 {
    layout.end() - 4096
}

/// The virtio-mmio slot QEMU's `virt` gives the first `-device virtio-net-device`: the
/// highest of its 32 transports (hw/arm/virt.c: devices plug in from the last-created
/// transport down), 0x0a00_3e00, SPI 16 + 31.
pub const QEMU_FIRST_VIRTIO: VirtioMmio = VirtioMmio {
    base: 0x0a00_0000 + 31 * 0x200,
    spi: 16 + 31,
};

/// QEMU's arguments for the bare boot of one guest.
pub fn bare_arguments(boot: &GuestBoot, stub: &Path, net: bool) -> Vec<String> {
    let memory_mib = boot.placement.layout.end().saturating_sub(QEMU_RAM_BASE) / MIB;
    let mut args: Vec<String> = [
        "-M",
        "virt,gic-version=3",
        "-nodefaults",
        "-nic",
        "none",
        // pauth-impdef: QEMU's own pointer-authentication algorithm, 3.7 times faster
        // than the architected one for a kernel that signs every return.
        "-cpu",
        "max,pauth-impdef=on",
        "-smp",
        "1",
        "-m",
        &format!("{memory_mib}M"),
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        // A panic=-1 reboot ends QEMU instead of looping.
        "-no-reboot",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(boot.loader.iter().cloned());
    args.push("-device".into());
    args.push(format!(
        "loader,file={},addr={:#x},cpu-num=0,force-raw=on",
        qemu_escape(&stub.display().to_string()),
        stub_address(&boot.placement.layout)
    ));
    if net {
        args.extend(
            [
                "-netdev",
                "user,id=n0,restrict=on",
                "-device",
                "virtio-net-device,netdev=n0",
            ]
            .map(String::from),
        );
    }
    args
}

/// What the bare boot expects of the guest.
#[derive(Clone, Debug)]
pub struct Expect {
    /// The kernel version `uname -r` must print, when known.
    pub version: Option<String>,
    /// The window size.
    pub window: u64,
    /// Whether eth0 must be there.
    pub net: bool,
}

/// One check of the bare boot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// What was checked.
    pub name: &'static str,
    /// `None` when it passed, or why it failed.
    pub failure: Option<String>,
}

/// The values after `iqdio-guest: <key> ` on every such line.
fn reported<'a>(lines: &'a [String], key: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter_map(|line| {
            let rest = line[line.find(MARK)? + MARK.len()..].trim_start();
            Some(rest.strip_prefix(key)?.strip_prefix(' ')?.trim())
        })
        .collect()
}

/// Checks the console of a bare boot and QEMU's exit status.
pub fn check_console(lines: &[String], exit: Option<i32>, expect: &Expect) -> Vec<Verdict> {
    let mut verdicts = Vec::new();
    let mut verdict = |name, failure: Option<String>| verdicts.push(Verdict { name, failure });
    let one = |key: &str| reported(lines, key).first().map(|s| s.to_string());

    verdict(
        "kernel version",
        match (one("uname -r"), &expect.version) {
            (None, _) => Some("no `uname -r` line".into()),
            (Some(got), Some(want)) if &got != want => Some(format!("{got}, expected {want}")),
            _ => None,
        },
    );
    verdict(
        "one CPU",
        match one("cpus").as_deref() {
            Some("1") => None,
            other => Some(format!("cpus {other:?}")),
        },
    );
    let memory = one("memory").and_then(|m| m.strip_suffix(" kB")?.parse::<u64>().ok());
    verdict(
        "memory is the window",
        match memory {
            // MemTotal leaves out the kernel's image and reservations, never more than
            // the window, and far more than half of it.
            Some(kb) if kb * 1024 <= expect.window && kb * 1024 > expect.window / 2 => None,
            other => Some(format!(
                "MemTotal {other:?} kB for a window of {} kB",
                expect.window / 1024
            )),
        },
    );
    verdict(
        "virtio modules",
        match one("modules loaded").as_deref() {
            Some("6 of 6") => None,
            other => Some(format!("loaded {other:?}; {:?}", reported(lines, "insmod"))),
        },
    );
    let ticks: Vec<Option<u64>> = reported(lines, "timer interrupts")
        .iter()
        .map(|t| t.parse().ok())
        .collect();
    verdict(
        "timer ticks",
        match ticks[..] {
            // Ticks through boot, and more while the workload slept.
            [Some(before), Some(after)] if before > 0 && after > before => None,
            _ => Some(format!("timer interrupt counts {ticks:?}")),
        },
    );
    if expect.net {
        verdict(
            "eth0",
            one("eth0")
                .is_none()
                .then(|| "no eth0 (virtio-net)".to_string()),
        );
    }
    let panicked = lines.iter().find(|l| l.contains("Kernel panic"));
    let powered_off = lines.iter().any(|l| l.contains("reboot: Power down"));
    verdict(
        "clean poweroff",
        match (panicked, powered_off, exit) {
            (Some(panic), _, _) => Some(panic.trim().to_string()),
            (None, true, Some(0)) => None,
            (None, powered_off, exit) => Some(format!(
                "power down seen: {powered_off}, QEMU exit {exit:?}"
            )),
        },
    );
    verdicts
}

/// A running QEMU whose console lines go, tagged, to a channel as they come; killed
/// when dropped (a timeout, an error, unwinding). Used by the bare boot and by the two
/// QEMUs of the network comparison ([`qemunet`]).
pub(crate) struct RunningQemu {
    child: Child,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl RunningQemu {
    /// Starts QEMU with `args` (the command line echoed); each console line is sent as
    /// `(tag, line)`.
    pub(crate) fn spawn(
        args: &[String],
        tag: usize,
        tx: mpsc::Sender<(usize, String)>,
    ) -> Result<Self> {
        let qemu = qemu::qemu_binary();
        eprintln!("xtask: {qemu} {}", args.join(" "));
        let mut child = Command::new(&qemu)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {qemu}"))?;
        let stdout = child.stdout.take().context("QEMU's stdout")?;
        let reader = std::thread::spawn(move || {
            let mut stdout = BufReader::new(stdout);
            let mut line = Vec::new();
            // Lines as bytes: a console may carry stray non-UTF-8 bytes.
            while stdout.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                line.clear();
                if tx.send((tag, text)).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            child,
            reader: Some(reader),
        })
    }

    /// QEMU's exit code once it has exited (-1 for a signal), `None` while it runs.
    pub(crate) fn exit_code(&mut self) -> Result<Option<i32>> {
        Ok(self
            .child
            .try_wait()
            .context("polling QEMU")?
            .map(|status| status.code().unwrap_or(-1)))
    }
}

impl Drop for RunningQemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// A finished bare boot.
struct Console {
    lines: Vec<String>,
    /// QEMU's exit code; `None` if killed at the timeout.
    exit: Option<i32>,
    /// From QEMU's start to the init's first line.
    to_init: Option<Duration>,
    elapsed: Duration,
}

/// Runs QEMU, echoing the console, until it exits or `timeout` passes.
fn run_qemu(args: &[String], timeout: Duration) -> Result<Console> {
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut qemu = RunningQemu::spawn(args, 0, tx)?;
    let mut lines = Vec::new();
    let mut to_init = None;
    let [exit] = collect([&mut qemu], &rx, start + timeout, |_, line| {
        if to_init.is_none() && line.contains(MARK) {
            to_init = Some(start.elapsed());
        }
        println!("{line}");
        lines.push(line);
    })?;
    if exit.is_none() {
        eprintln!(
            "xtask: QEMU did not stop within {} s: killed",
            timeout.as_secs()
        );
    }
    drop(qemu);
    Ok(Console {
        lines,
        exit,
        to_init,
        elapsed: start.elapsed(),
    })
}

/// Hands every console line of `qemus` (tagged as spawned) to `take` until all of them
/// have exited or `deadline` passes; their exit codes, `None` for one still running
/// at the deadline (its caller drops it, which kills it).
pub(crate) fn collect<const N: usize>(
    mut qemus: [&mut RunningQemu; N],
    rx: &mpsc::Receiver<(usize, String)>,
    deadline: Instant,
    mut take: impl FnMut(usize, String),
) -> Result<[Option<i32>; N]> {
    let mut exits = [None; N];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(exits);
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(50))) {
            Ok((tag, line)) => take(tag, line),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Every reader done: the QEMUs are exiting; poll them.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        for (exit, qemu) in exits.iter_mut().zip(qemus.iter_mut()) {
            if exit.is_none() {
                *exit = qemu.exit_code()?;
            }
        }
        if exits.iter().all(Option::is_some) {
            // Exited; take what is still in the pipes.
            while let Ok((tag, line)) = rx.recv_timeout(Duration::from_millis(200)) {
                take(tag, line);
            }
            return Ok(exits);
        }
    }
}

/// `cargo xtask linux-bare`: fetch (or take) the kernel, build the initramfs and the
/// guest's tree, boot it under QEMU with no hypervisor, check the init's report.
pub fn bare(args: BareArgs) -> Result<ExitCode> {
    let total = Instant::now();
    qemu::ensure_installed()?;
    let out = out_dir();
    fs::create_dir_all(&out)?;

    // The kernel and the initramfs's parts: fetched only when something needs them.
    let fetch_start = Instant::now();
    let needs_fetch = args.kernel.is_none() || args.initrd.is_none();
    let cache = fetch::Cache::new(cargo::target_dir().join("linux-guest"));
    let was_cached = cache.cached().is_some();
    let fetched = if needs_fetch {
        Some(cache.get()?)
    } else {
        None
    };
    let fetch_time = fetch_start.elapsed();

    let (image_path, version) = match (&args.kernel, &fetched) {
        (Some(path), _) => {
            let image = fetch::read_image(path)?;
            // A compressed kernel is unpacked once: QEMU's loader takes raw bytes.
            let raw = out.join("Image");
            fs::write(&raw, &image)?;
            (raw, fetch::banner_version(&image))
        }
        (None, Some(fetched)) => (fetched.image.clone(), Some(fetched.version.clone())),
        (None, None) => bail!("no kernel: neither --kernel nor a fetched one"),
    };
    let header = fetch::image_header(&fs::read(&image_path)?)?;
    if header.text_offset != 0 {
        bail!(
            "kernel text_offset is {:#x}; the layout puts the Image at the window's base \
             and wants 0 (kernels since 3.17 built with RANDOMIZE_TEXT_OFFSET off)",
            header.text_offset
        );
    }
    let source = match (&args.kernel, was_cached) {
        (Some(_), _) => "--kernel",
        (None, true) => "cached",
        (None, false) => "fetched",
    };
    eprintln!(
        "xtask: linux: kernel {} ({source}, {})",
        version.as_deref().unwrap_or("of unknown version"),
        image_path.display()
    );
    if let (Some(_), Some(fetched), Some(version)) = (&args.kernel, &fetched, &version)
        && fetched.version != *version
    {
        eprintln!(
            "xtask: linux: warning: the initramfs carries modules of {}, the kernel is {version}: \
             insmod will fail",
            fetched.version
        );
    }

    let initrd_start = Instant::now();
    let initrd_path = match (&args.initrd, &fetched) {
        (Some(path), _) => path.clone(),
        (None, Some(fetched)) => {
            let script = match &args.guest_init {
                Some(file) => {
                    Some(fs::read(file).with_context(|| format!("reading {}", file.display()))?)
                }
                None => None,
            };
            let workload = if script.is_some() {
                GUEST_INIT_WORKLOAD
            } else {
                BARE_WORKLOAD
            };
            let bytes = initramfs(fetched, workload, script.as_deref())?;
            let path = out.join("initrd.gz");
            fs::write(&path, bytes)?;
            path
        }
        (None, None) => bail!("no initramfs: neither --initrd nor fetched parts"),
    };
    let initrd_time = initrd_start.elapsed();
    let initrd_len = fs::metadata(&initrd_path)
        .with_context(|| format!("reading {}", initrd_path.display()))?
        .len();
    eprintln!(
        "xtask: linux: initramfs {} ({} KiB) in {:.2} s",
        initrd_path.display(),
        initrd_len / 1024,
        initrd_time.as_secs_f64()
    );

    let files = GuestFiles {
        image: image_path,
        image_size: header.image_size,
        initrd: initrd_path,
        initrd_len,
        // A panic reboots at once (and -no-reboot ends QEMU) instead of hanging.
        extra_bootargs: format!("panic=-1 {}", args.append).trim().to_string(),
        virtio: args.net.then_some(QEMU_FIRST_VIRTIO),
    };
    // No hypervisor: the window is QEMU's RAM itself, physical = guest-physical.
    let boot = guest_boot(0, Placement::identity(BARE_BASE), &files, &out)?;
    eprintln!(
        "xtask: linux: device tree {} ({} bytes), window {:#x}+{} MiB",
        boot.dtb.display(),
        fs::metadata(&boot.dtb)?.len(),
        boot.placement.layout.base,
        boot.placement.layout.size / MIB
    );
    let stub = out.join("boot-stub.bin");
    fs::write(&stub, boot_stub(boot.x0, boot.entry))?;
    let qemu_args = bare_arguments(&boot, &stub, args.net);
    let console = run_qemu(&qemu_args, Duration::from_secs(args.timeout))?;

    let expect = Expect {
        version,
        window: boot.placement.layout.size,
        net: args.net,
    };
    let verdicts = check_console(&console.lines, console.exit, &expect);
    let failed: Vec<_> = verdicts.iter().filter(|v| v.failure.is_some()).collect();
    for verdict in &failed {
        eprintln!(
            "xtask: linux-bare: FAILED {}: {}",
            verdict.name,
            verdict.failure.as_deref().unwrap_or_default()
        );
    }
    let fetch_note = if needs_fetch {
        format!("fetch {:.2} s", fetch_time.as_secs_f64())
    } else {
        "nothing fetched".to_string()
    };
    eprintln!(
        "xtask: linux-bare: {fetch_note}, initramfs {:.2} s, boot to init {}, QEMU {:.2} s, total {:.2} s",
        initrd_time.as_secs_f64(),
        console
            .to_init
            .map_or("never".to_string(), |t| format!("{:.2} s", t.as_secs_f64())),
        console.elapsed.as_secs_f64(),
        total.elapsed().as_secs_f64()
    );
    eprintln!(
        "xtask: linux-bare: {} passed, {} failed",
        verdicts.len() - failed.len(),
        failed.len()
    );
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The workload of a guest under the hypervisor: a mark, then two seconds idle (the
/// hypervisor counts the traps of that span by cause).
pub const HYP_WORKLOAD: &str = "echo \"iqdio-guest: idle 2 s\"\nsleep 2\n";

/// Where the hypervisor's Linux guests go in physical memory: above the 1 GiB the
/// hypervisor and the bare-metal windows use (RAM from 0x4000_0000), one 512 MiB window
/// each, never mapped in the hypervisor's own tables.
pub const HYP_LINUX_PHYS: u64 = QEMU_RAM_BASE + 1024 * MIB;

/// The `-cpu` of a run with Linux guests (see [`HypGuests::qemu_extra`]); the QEMU
/// network comparison ([`qemunet`]) boots its guests with the same.
pub const HYP_GUEST_CPU: &str = "max,pauth-impdef=on,sve=off,sme=off";

/// What `cargo xtask run --scenario linux` adds to a hypervisor run.
#[derive(Clone, Debug)]
pub struct HypGuests {
    /// Build-time variables for the image (`IQDIO_LINUX_*`).
    pub env: Vec<(&'static str, String)>,
    /// QEMU's loader arguments for every guest's blobs.
    pub loader: Vec<String>,
    /// QEMU's `-m`: the hypervisor's 1 GiB plus the guests' windows.
    pub memory: String,
}

impl HypGuests {
    /// The QEMU machine these guests need: QEMU's own pointer-authentication algorithm
    /// (a kernel that signs its return addresses boots 3.7 times faster than with the
    /// architected one), no SVE or SME (the hypervisor keeps a guest's 128-bit SIMD
    /// registers only; its own NEON code would clobber the upper part of Z registers),
    /// the memory for their windows, and the loader arguments.
    pub fn qemu_extra(&self) -> qemu::Extra {
        qemu::Extra {
            cpu: Some(HYP_GUEST_CPU.to_string()),
            memory: Some(self.memory.clone()),
            args: self.loader.clone(),
        }
    }
}

/// The kernel and busybox fetched (or taken from the cache), and the files every
/// Linux guest of a hypervisor run shares: the initramfs around `workload` (with
/// `script` as `/guest-init`), written as `out/<initrd>`, `panic=-1`, and the
/// virtio-net slot of the hypervisor's device. The QEMU network comparison
/// ([`qemunet`]) boots its guests from the same.
pub fn hyp_guest_files(
    out: &Path,
    initrd: &str,
    workload: &str,
    script: Option<&[u8]>,
) -> Result<(Fetched, GuestFiles)> {
    fs::create_dir_all(out)?;
    let cache = fetch::Cache::new(cargo::target_dir().join("linux-guest"));
    let fetched = cache.get()?;
    let header = fetch::image_header(&fs::read(&fetched.image)?)?;
    if header.text_offset != 0 {
        bail!(
            "kernel text_offset is {:#x}; the layout wants 0",
            header.text_offset
        );
    }
    let initrd = out.join(initrd);
    fs::write(&initrd, initramfs(&fetched, workload, script)?)?;
    let files = GuestFiles {
        image: fetched.image.clone(),
        image_size: header.image_size,
        initrd_len: fs::metadata(&initrd)?.len(),
        initrd,
        // A panic resets the guest at once (PSCI SYSTEM_RESET), which ends it alone
        // (under plain QEMU, -no-reboot ends QEMU).
        extra_bootargs: "panic=-1".to_string(),
        // The hypervisor's virtio-net device (hyp/src/vm/linux.rs: the same slot and SPI).
        virtio: Some(QEMU_FIRST_VIRTIO),
    };
    Ok((fetched, files))
}

/// Fetches (or takes from the cache) the kernel and busybox, builds the initramfs
/// (`guest_init` as its workload, else `workload`, e.g. [`HYP_WORKLOAD`]) and one device
/// tree per guest, and places `guests` Linux guests for the hypervisor: guest k (on
/// core `smp - guests + k`) at [`HYP_LINUX_PHYS`] + k * 512 MiB.
pub fn hyp_guests(
    smp: u32,
    guests: u32,
    guest_init: Option<&Path>,
    workload: &str,
) -> Result<HypGuests> {
    if guests == 0 || guests > smp {
        bail!("--linux-guests {guests}: between 1 and the core count ({smp})");
    }
    let out = out_dir();
    let script = match guest_init {
        Some(file) => Some(fs::read(file).with_context(|| format!("reading {}", file.display()))?),
        None => None,
    };
    let workload = if script.is_some() {
        GUEST_INIT_WORKLOAD
    } else {
        workload
    };
    let (fetched, files) = hyp_guest_files(&out, "initrd-hyp.gz", workload, script.as_deref())?;
    let first_core = smp - guests;
    let mut loader = Vec::new();
    let mut entry = None;
    for k in 0..u64::from(guests) {
        let placement = Placement::new(HYP_LINUX_PHYS + k * layout::WINDOW_SIZE);
        let core = first_core as usize + k as usize;
        let boot = guest_boot(core, placement, &files, &out)?;
        loader.extend(boot.loader);
        entry = Some((boot.entry, boot.x0, placement.layout));
    }
    let (entry, dtb, layout) = entry.context("no guest placed")?;
    let env = vec![
        ("IQDIO_LINUX_GUESTS", guests.to_string()),
        ("IQDIO_LINUX_RAM", layout.base.to_string()),
        ("IQDIO_LINUX_RAM_MIB", (layout.size / MIB).to_string()),
        ("IQDIO_LINUX_PHYS", HYP_LINUX_PHYS.to_string()),
        ("IQDIO_LINUX_ENTRY", entry.to_string()),
        ("IQDIO_LINUX_DTB", dtb.to_string()),
    ];
    let memory_mib = 1024 + u64::from(guests) * layout::WINDOW_SIZE / MIB;
    eprintln!(
        "xtask: linux: kernel {}, {guests} guest(s) on cores {first_core}..{}, windows from PA {:#x}, -m {memory_mib}M",
        fetched.version,
        smp - 1,
        HYP_LINUX_PHYS
    );
    Ok(HypGuests {
        env,
        loader,
        memory: format!("{memory_mib}M"),
    })
}

/// The Linux guests of `cargo xtask run --scenario linux-net` on `smp` cores: one on
/// every core but core 0 (the smoltcp partition's), each running the
/// [`netload`] workload with `bytes` per transfer (or `guest_init`).
pub fn net_guests(smp: u32, bytes: u64, guest_init: Option<&Path>) -> Result<HypGuests> {
    if smp < 2 {
        bail!("--scenario linux-net needs 2 cores or more (the smoltcp partition and a guest)");
    }
    let workload = netload::NetPlan::linux_net(smp, bytes).workload()?;
    hyp_guests(smp, smp - 1, guest_init, &workload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stub_loads_its_literals_and_branches() {
        let stub = boot_stub(0x5fe0_0000, 0x4000_0000);
        assert_eq!(stub.len(), 40);
        let word = |at: usize| u32::from_le_bytes(stub[at..at + 4].try_into().unwrap());
        let dword = |at: usize| u64::from_le_bytes(stub[at..at + 8].try_into().unwrap());
        // Decode each LDR (literal): the literal it names holds the right value.
        for (at, rt, value) in [(0, 0, 0x5fe0_0000), (0x10, 4, 0x4000_0000)] {
            let insn = word(at);
            assert_eq!(insn & 0xff00_0000, 0x5800_0000, "LDR (literal, 64-bit)");
            assert_eq!(insn & 0x1f, rt);
            let target = at + 4 * ((insn >> 5) & 0x7_ffff) as usize;
            assert_eq!(dword(target), value);
        }
        // x1-x3 cleared, then a branch through x4.
        for (at, rd) in [(4, 1), (8, 2), (12, 3)] {
            assert_eq!(word(at), 0xAA1F_03E0 | rd);
        }
        assert_eq!(word(0x14), 0xD61F_0080);
    }

    #[test]
    fn the_init_sets_up_runs_the_workload_and_always_powers_off() {
        let init = init_script("my-workload --now\n");
        assert!(init.starts_with("#!/bin/busybox sh\n"));
        let at = |needle: &str| {
            init.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing"))
        };
        assert!(at("mount -t proc") < at("insmod"));
        assert!(at("insmod") < at("my-workload --now"));
        assert!(at("my-workload --now") < at("poweroff -f"));
        assert!(init.trim_end().ends_with("poweroff -f"));
        // The module order of fetch::MODULES, by base name.
        let names: Vec<&str> = fetch::MODULES
            .iter()
            .map(|m| m.rsplit('/').next().unwrap().trim_end_matches(".ko"))
            .collect();
        assert!(init.contains(&format!("for m in {}; do", names.join(" "))));
        assert!(GUEST_INIT_WORKLOAD.starts_with("sh /guest-init\n"));
    }

    fn fake_fetched(dir: &Path) -> Fetched {
        fs::create_dir_all(dir).unwrap();
        let busybox = dir.join("busybox");
        fs::write(&busybox, b"\x7fELF busybox").unwrap();
        let modules = fetch::MODULES
            .iter()
            .map(|m| {
                let path = dir.join(m.rsplit('/').next().unwrap());
                fs::write(&path, m.as_bytes()).unwrap();
                path
            })
            .collect();
        Fetched {
            version: "6.1.0-1-test".into(),
            image: dir.join("Image"),
            modules,
            busybox,
        }
    }

    #[test]
    fn the_initramfs_holds_busybox_modules_and_init() {
        let dir =
            std::env::temp_dir().join(format!("iqdio-xtask-initramfs-{}", std::process::id()));
        let fetched = fake_fetched(&dir);
        let packed = initramfs(&fetched, GUEST_INIT_WORKLOAD, Some(b"echo hi\n")).unwrap();
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&packed[..]), &mut raw)
            .unwrap();
        let text = String::from_utf8_lossy(&raw);
        for name in [
            "bin/busybox\0",
            "dev/console\0",
            "lib/modules/virtio_net.ko\0",
            "lib/modules/virtio_mmio.ko\0",
            "init\0",
            "guest-init\0",
            "proc\0",
            "sys\0",
            "TRAILER!!!\0",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
        assert!(text.contains("\x7fELF busybox"));
        assert!(text.contains("sh /guest-init"));
        assert!(text.contains("echo hi\n"));
        // A directory comes before what it holds.
        assert!(text.find("lib/modules\0").unwrap() < text.find("lib/modules/virtio.ko").unwrap());
        let without = initramfs(&fetched, BARE_WORKLOAD, None).unwrap();
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&without[..]), &mut raw)
            .unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("guest-init\0"));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn guest_boot_writes_the_tree_and_places_the_blobs() {
        let dir = std::env::temp_dir().join(format!("iqdio-xtask-guest-{}", std::process::id()));
        let files = GuestFiles {
            image: PathBuf::from("/k/Image"),
            image_size: 27_918_336,
            initrd: PathBuf::from("/k/initrd.gz"),
            initrd_len: 3 << 20,
            extra_bootargs: "quiet".into(),
            virtio: None,
        };
        let boot = guest_boot(3, Placement::new(0xc000_0000), &files, &dir).unwrap();
        assert_eq!(boot.dtb, dir.join("guest3.dtb"));
        assert_eq!(boot.entry, 0x4000_0000);
        assert_eq!(boot.x0, 0x5fe0_0000);
        assert!(boot.loader[1].contains("file=/k/Image,addr=0xc0000000"));
        assert!(boot.loader[3].contains("file=/k/initrd.gz,addr=0xc8000000"));
        assert!(boot.loader[5].ends_with(",addr=0xdfe00000,force-raw=on"));
        let blob = fs::read(&boot.dtb).unwrap();
        let tree = fdt::Fdt::new(&blob).unwrap();
        // The guest sees its IPA window, not the physical one.
        let region = tree.memory().regions().next().unwrap();
        assert_eq!(region.starting_address as u64, 0x4000_0000);
        assert!(tree.chosen().bootargs().unwrap().ends_with(" quiet"));
        // A misaligned window and a kernel too big for the layout are refused.
        assert!(guest_boot(3, Placement::new(0xc000_1000), &files, &dir).is_err());
        let huge = GuestFiles {
            image_size: 200 << 20,
            ..files
        };
        assert!(guest_boot(3, Placement::new(0xc000_0000), &huge, &dir).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bare_command_line_covers_the_window_and_starts_at_the_stub() {
        let files = GuestFiles {
            image: PathBuf::from("/k/Image"),
            image_size: 1 << 20,
            initrd: PathBuf::from("/k/initrd.gz"),
            initrd_len: 1 << 20,
            extra_bootargs: String::new(),
            virtio: None,
        };
        let dir = std::env::temp_dir().join(format!("iqdio-xtask-bare-{}", std::process::id()));
        let boot = guest_boot(0, Placement::identity(BARE_BASE), &files, &dir).unwrap();
        let args = bare_arguments(&boot, Path::new("/o/stub.bin"), false).join(" ");
        assert!(args.starts_with(
            "-M virt,gic-version=3 -nodefaults -nic none -cpu max,pauth-impdef=on -smp 1 -m 514M "
        ));
        assert!(args.contains("-device loader,file=/k/Image,addr=0x40200000,force-raw=on"));
        assert!(
            args.ends_with(
                "-device loader,file=/o/stub.bin,addr=0x601ff000,cpu-num=0,force-raw=on"
            )
        );
        assert!(
            !args.contains("-kernel"),
            "QEMU must not place or patch anything itself"
        );
        let with_net = bare_arguments(&boot, Path::new("/o/stub.bin"), true).join(" ");
        assert!(with_net.ends_with("-device virtio-net-device,netdev=n0"));
        fs::remove_dir_all(&dir).unwrap();
    }

    fn console(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    const GOOD: &str = "\
[    0.000000] Linux version 6.1.0-57-cloud-arm64 (debian-kernel@lists.debian.org)
iqdio-guest: modules loaded 6 of 6
iqdio-guest: uname -r 6.1.0-57-cloud-arm64
iqdio-guest: cpus 1
iqdio-guest: memory 486000 kB
iqdio-guest: uptime 1.52 s
iqdio-guest: timer interrupts 380
iqdio-guest: timer interrupts 631
iqdio-guest: powering off
[    2.600000] reboot: Power down";

    fn expect() -> Expect {
        Expect {
            version: Some("6.1.0-57-cloud-arm64".into()),
            window: 512 << 20,
            net: false,
        }
    }

    fn failures(lines: &[String], exit: Option<i32>, expect: &Expect) -> Vec<&'static str> {
        check_console(lines, exit, expect)
            .into_iter()
            .filter(|v| v.failure.is_some())
            .map(|v| v.name)
            .collect()
    }

    #[test]
    fn a_good_console_passes_every_check() {
        let verdicts = check_console(&console(GOOD), Some(0), &expect());
        assert_eq!(verdicts.len(), 6);
        assert!(verdicts.iter().all(|v| v.failure.is_none()), "{verdicts:?}");
    }

    #[test]
    fn each_fault_fails_its_own_check() {
        let good = console(GOOD);
        let swap = |from: &str, to: &str| console(&GOOD.replace(from, to));
        assert_eq!(failures(&good, None, &expect()), ["clean poweroff"]);
        assert_eq!(failures(&good, Some(1), &expect()), ["clean poweroff"]);
        assert_eq!(
            failures(
                &swap("reboot: Power down", "Kernel panic - not syncing"),
                Some(0),
                &expect()
            ),
            ["clean poweroff"]
        );
        assert_eq!(
            failures(&swap("-r 6.1.0-57", "-r 6.1.0-50"), Some(0), &expect()),
            ["kernel version"]
        );
        assert_eq!(
            failures(&swap("cpus 1", "cpus 2"), Some(0), &expect()),
            ["one CPU"]
        );
        assert_eq!(
            failures(&swap("memory 486000", "memory 999000"), Some(0), &expect()),
            ["memory is the window"]
        );
        assert_eq!(
            failures(&swap("6 of 6", "5 of 6"), Some(0), &expect()),
            ["virtio modules"]
        );
        assert_eq!(
            failures(
                &swap("interrupts 631", "interrupts 380"),
                Some(0),
                &expect()
            ),
            ["timer ticks"]
        );
        assert_eq!(
            failures(&swap("interrupts 380", "interrupts 0"), Some(0), &expect()),
            ["timer ticks"]
        );
        let mut want_net = expect();
        want_net.net = true;
        assert_eq!(failures(&good, Some(0), &want_net), ["eth0"]);
        let with_eth0 = swap(
            "iqdio-guest: cpus",
            "iqdio-guest: eth0 52:54:00:12:34:56\niqdio-guest: cpus",
        );
        assert!(failures(&with_eth0, Some(0), &want_net).is_empty());
        // Unknown version (a --kernel without a banner): any uname -r is accepted.
        let mut any = expect();
        any.version = None;
        assert!(failures(&swap("-r 6.1.0-57", "-r 5.10.0-1"), Some(0), &any).is_empty());
        // Nothing from the init at all.
        let silent = console("[ 0.0] Linux version x\n[ 9.0] reboot: Power down");
        assert_eq!(
            failures(&silent, Some(0), &expect()),
            [
                "kernel version",
                "one CPU",
                "memory is the window",
                "virtio modules",
                "timer ticks"
            ]
        );
    }
}
