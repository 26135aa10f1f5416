//! Booting an image under `qemu-system-aarch64`: the command line, installing QEMU when
//! it is missing, a guard that kills it, a timeout, and the decoded output.

use std::{
    fmt,
    io::Read,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    cargo,
    decode::{Decoder, Line, Splitter},
};

/// The QEMU binary; `IQDIO_QEMU` overrides it.
pub fn qemu_binary() -> String {
    std::env::var("IQDIO_QEMU").unwrap_or_else(|_| "qemu-system-aarch64".to_string())
}

/// The Debian package that provides `qemu-system-aarch64`.
pub const QEMU_PACKAGE: &str = "qemu-system-arm";

/// RAM for the machine: the board maps 1 GiB (partition windows up to 0x7000_0000).
pub const MEMORY: &str = "1G";

/// What a run adds to or changes in the standard machine (the Linux scenario).
#[derive(Clone, Debug, Default)]
pub struct Extra {
    /// `-cpu` instead of `cortex-a72`.
    pub cpu: Option<String>,
    /// `-m` instead of [`MEMORY`].
    pub memory: Option<String>,
    /// More arguments at the end (`-device loader,...`).
    pub args: Vec<String>,
}

/// QEMU's arguments for booting `elf` on `smp` cores, with `extra`.
pub fn arguments_with(elf: &Path, smp: u32, extra: &Extra) -> Vec<String> {
    let mut args: Vec<String> = [
        "-M",
        "virt,virtualization=on,gic-version=3",
        // No default devices: `-M virt` otherwise adds a network card whose option ROM
        // (efi-virtio.rom) lives in `ipxe-qemu`, which a minimal QEMU install lacks;
        // the image drives only the UART, GIC and timer.
        "-nodefaults",
        "-nic",
        "none",
        "-cpu",
        extra.cpu.as_deref().unwrap_or("cortex-a72"),
        "-smp",
        &smp.to_string(),
        "-m",
        extra.memory.as_deref().unwrap_or(MEMORY),
        "-display",
        "none",
        "-monitor",
        "none",
        "-serial",
        "stdio",
        "-semihosting",
        "-kernel",
        &elf.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.args.iter().cloned());
    args
}

/// How a boot ended, from QEMU's exit status (the image's semihosting exit code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit 0: the image passed.
    Pass,
    /// Exit 1: the image reported a failure (or QEMU itself failed to start).
    Failure,
    /// Exit 2: the image panicked.
    Panic,
    /// Exit 3: an exception the board does not handle (see the `!!` fault report).
    Fault,
    /// The image did not stop in time; QEMU was killed.
    Timeout,
    /// Any other status (a signal is reported as `None`).
    Other(Option<i32>),
}

impl Outcome {
    /// The outcome for QEMU's exit code.
    pub fn from_code(code: Option<i32>) -> Self {
        match code {
            Some(0) => Outcome::Pass,
            Some(1) => Outcome::Failure,
            Some(2) => Outcome::Panic,
            Some(3) => Outcome::Fault,
            other => Outcome::Other(other),
        }
    }

    /// The xtask's own exit status for this outcome.
    pub fn exit_status(self) -> u8 {
        match self {
            Outcome::Pass => 0,
            Outcome::Failure => 1,
            Outcome::Panic => 2,
            Outcome::Fault => 3,
            Outcome::Timeout => 124,
            Outcome::Other(_) => 1,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pass => write!(f, "PASS (exit 0)"),
            Outcome::Failure => write!(f, "FAILURE (exit 1)"),
            Outcome::Panic => write!(f, "PANIC (exit 2)"),
            Outcome::Fault => write!(f, "FAULT (exit 3)"),
            Outcome::Timeout => write!(f, "TIMEOUT (QEMU killed)"),
            Outcome::Other(Some(code)) => write!(f, "unexpected QEMU exit {code}"),
            Outcome::Other(None) => write!(f, "QEMU killed by a signal"),
        }
    }
}

/// The result of one boot.
pub struct BootRun {
    /// How it ended.
    pub outcome: Outcome,
    /// Every decoded line, in order.
    pub lines: Vec<Line>,
    /// Frames that did not decode, plus a frame cut off at the end.
    pub malformed: usize,
    /// Wall time of the boot.
    pub elapsed: Duration,
}

/// A running QEMU, killed when dropped (a timeout, an error, Ctrl-C unwinding).
struct QemuGuard(Child);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What to do when QEMU is missing.
#[derive(Debug, PartialEq, Eq)]
pub enum Missing {
    /// Install it with apt-get (root, apt available).
    Install,
    /// Stop with an error naming the package.
    Stop,
}

/// Decides what to do when QEMU is missing.
pub fn when_missing(is_root: bool, has_apt: bool) -> Missing {
    if is_root && has_apt {
        Missing::Install
    } else {
        Missing::Stop
    }
}

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Makes sure QEMU is there: installs Debian's `qemu-system-arm` as root with apt-get,
/// or stops with an error that names it.
pub fn ensure_installed() -> Result<()> {
    let qemu = qemu_binary();
    if runs(&qemu, &["--version"]) {
        return Ok(());
    }
    match when_missing(is_root(), runs("apt-get", &["--version"])) {
        Missing::Stop => bail!(
            "`{qemu}` not found: install the `{QEMU_PACKAGE}` package \
             (Debian/Ubuntu: `sudo apt-get install {QEMU_PACKAGE}`)"
        ),
        Missing::Install => {
            eprintln!("xtask: `{qemu}` not found; installing `{QEMU_PACKAGE}` with apt-get");
            for args in [
                &["update"][..],
                &["install", "-y", "--no-install-recommends", QEMU_PACKAGE],
            ] {
                eprintln!("xtask: apt-get {}", args.join(" "));
                let status = Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .stdin(Stdio::null())
                    .status()
                    .context("running apt-get")?;
                if !status.success() {
                    bail!(
                        "`apt-get {}` failed ({status}); install `{QEMU_PACKAGE}` by hand",
                        args.join(" ")
                    );
                }
            }
            if !runs(&qemu, &["--version"]) {
                bail!("installed `{QEMU_PACKAGE}` but `{qemu}` still does not run");
            }
            Ok(())
        }
    }
}

/// Boots `elf` on `smp` cores, printing the decoded output as it comes (if `echo`),
/// until QEMU exits or `timeout_s` seconds pass.
pub fn boot(elf: &Path, smp: u32, timeout_s: u64, echo: bool) -> Result<BootRun> {
    boot_with(elf, smp, timeout_s, echo, &Extra::default())
}

/// [`boot`] on a machine changed by `extra`.
pub fn boot_with(
    elf: &Path,
    smp: u32,
    timeout_s: u64,
    echo: bool,
    extra: &Extra,
) -> Result<BootRun> {
    ensure_installed()?;
    let decoder = Decoder::new(elf, &cargo::workspace_root())?;
    let mut stream = decoder.stream();
    let args = arguments_with(elf, smp, extra);
    let qemu = qemu_binary();
    eprintln!("xtask: {qemu} {}", args.join(" "));

    let start = Instant::now();
    let deadline = start + Duration::from_secs(timeout_s);
    let child = Command::new(&qemu)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {qemu}"))?;
    let mut guard = QemuGuard(child);
    let mut stdout = guard.0.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });

    let mut splitter = Splitter::default();
    let mut lines = Vec::new();
    let mut handle = |bytes: &[u8], lines: &mut Vec<Line>| {
        splitter.push(bytes, |chunk| {
            if let Some(line) = stream.decode(chunk) {
                if echo {
                    println!("{line}");
                }
                lines.push(line);
            } else if echo {
                println!("xtask: (a defmt frame did not decode)");
            }
        });
    };
    let mut outcome = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        match rx.recv_timeout((deadline - now).min(Duration::from_millis(50))) {
            Ok(bytes) => handle(&bytes, &mut lines),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Output closed: QEMU is exiting.
                let status = guard.0.wait().context("waiting for QEMU")?;
                outcome = Some(Outcome::from_code(status.code()));
                break;
            }
        }
        if let Some(status) = guard.0.try_wait().context("polling QEMU")? {
            // Exited; take what is still in the pipe.
            while let Ok(bytes) = rx.recv_timeout(Duration::from_millis(200)) {
                handle(&bytes, &mut lines);
            }
            outcome = Some(Outcome::from_code(status.code()));
            break;
        }
    }
    let outcome = outcome.unwrap_or(Outcome::Timeout);
    drop(guard);
    let _ = reader.join();
    let cut_off = usize::from(splitter.leftover() > 0);
    let malformed = stream.malformed + cut_off;
    let elapsed = start.elapsed();
    if outcome == Outcome::Timeout {
        eprintln!("xtask: QEMU did not stop within {timeout_s} s: killed");
    }
    if malformed > 0 {
        eprintln!("xtask: {malformed} defmt frame(s) did not decode");
    }
    Ok(BootRun {
        outcome,
        lines,
        malformed,
        elapsed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_map_to_outcomes_and_back() {
        for (code, outcome, status) in [
            (0, Outcome::Pass, 0),
            (1, Outcome::Failure, 1),
            (2, Outcome::Panic, 2),
            (3, Outcome::Fault, 3),
            (42, Outcome::Other(Some(42)), 1),
        ] {
            assert_eq!(Outcome::from_code(Some(code)), outcome);
            assert_eq!(outcome.exit_status(), status);
        }
        assert_eq!(Outcome::from_code(None), Outcome::Other(None));
        assert_eq!(Outcome::Timeout.exit_status(), 124);
    }

    #[test]
    fn installs_only_as_root_with_apt() {
        assert_eq!(when_missing(true, true), Missing::Install);
        assert_eq!(when_missing(true, false), Missing::Stop);
        assert_eq!(when_missing(false, true), Missing::Stop);
        assert_eq!(when_missing(false, false), Missing::Stop);
    }

    #[test]
    fn command_line_has_the_flags_that_matter() {
        let args = arguments_with(Path::new("/x/selftest"), 4, &Extra::default()).join(" ");
        assert_eq!(
            args,
            "-M virt,virtualization=on,gic-version=3 -nodefaults -nic none -cpu cortex-a72 -smp 4 -m 1G -display none -monitor none \
             -serial stdio -semihosting -kernel /x/selftest"
        );
    }

    #[test]
    fn extra_changes_cpu_and_memory_and_appends() {
        let extra = Extra {
            cpu: Some("max,pauth-impdef=on".into()),
            memory: Some("2048M".into()),
            args: vec![
                "-device".into(),
                "loader,file=x,addr=0x80000000,force-raw=on".into(),
            ],
        };
        let args = arguments_with(Path::new("/x/hyp"), 4, &extra).join(" ");
        assert!(
            args.contains("-cpu max,pauth-impdef=on -smp 4 -m 2048M "),
            "{args}"
        );
        assert!(
            args.ends_with("-kernel /x/hyp -device loader,file=x,addr=0x80000000,force-raw=on"),
            "{args}"
        );
    }
}
