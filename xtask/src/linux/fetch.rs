//! Debian's arm64 kernel and busybox, fetched on first use through a private apt
//! configuration and cached under `target/linux-guest/`.
//!
//! Why apt and not a download of our own: apt checks the archive's signatures with the
//! machine's Debian keyring and reaches the machine's Debian source, whatever mirror or
//! proxy that is. The private configuration (its own sources list, lists, cache and an
//! empty dpkg status, architecture arm64) leaves the machine's apt set-up untouched: no
//! `dpkg --add-architecture`, nothing installed. apt still reads the machine's
//! `apt.conf.d` before our `-o` options, so its proxy and validity settings apply.
//!
//! The concrete kernel package (`linux-image-6.1.0-NN-cloud-arm64`) is resolved from the
//! meta-package `linux-image-cloud-arm64` every time the cache is empty, never pinned:
//! Debian point releases remove old kernels from the archive.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// The meta-package that names today's cloud kernel for arm64.
pub const KERNEL_META: &str = "linux-image-cloud-arm64";

/// The static busybox: the initramfs's whole userland.
pub const BUSYBOX_PACKAGE: &str = "busybox-static";

/// The keyring apt checks the archive's signatures with (package debian-archive-keyring).
pub const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The virtio modules the initramfs carries, in `insmod` order: every module's
/// dependencies come before it, as the kernel package's `modules.dep` says (checked at
/// fetch time by [`check_module_order`]; in 6.1 `virtio` needs `virtio_ring`'s
/// `virtio_break_device`). Paths under `lib/modules/<version>/kernel/`.
pub const MODULES: [&str; 6] = [
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_mmio.ko",
    "net/core/failover.ko",
    "drivers/net/net_failover.ko",
    "drivers/net/virtio_net.ko",
];

/// What the guests boot: Debian's kernel and the pieces of the initramfs.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// The kernel version (`uname -r`), e.g. `6.1.0-57-cloud-arm64`.
    pub version: String,
    /// The uncompressed arm64 Image.
    pub image: PathBuf,
    /// The modules of [`MODULES`], in that order.
    pub modules: Vec<PathBuf>,
    /// The static arm64 busybox.
    pub busybox: PathBuf,
}

/// The cache under `target/linux-guest/`.
pub struct Cache {
    root: PathBuf,
}

impl Cache {
    /// The cache rooted at `root` (`target/linux-guest`).
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// The private apt directory.
    pub fn apt_dir(&self) -> PathBuf {
        self.root.join("apt")
    }

    /// Where the extracted kernel, modules and busybox are kept.
    fn kept(&self) -> PathBuf {
        self.root.join("kept")
    }

    /// The file naming the cached kernel version, written last: its presence means the
    /// cache is complete.
    fn version_file(&self) -> PathBuf {
        self.kept().join("VERSION")
    }

    fn fetched_for(&self, version: &str) -> Fetched {
        let kept = self.kept();
        Fetched {
            version: version.to_string(),
            image: kept.join("Image"),
            modules: MODULES
                .iter()
                .map(|m| kept.join("modules").join(module_file_name(m)))
                .collect(),
            busybox: kept.join("busybox"),
        }
    }

    /// The cached kernel and busybox, if the cache is complete.
    pub fn cached(&self) -> Option<Fetched> {
        let version = fs::read_to_string(self.version_file()).ok()?;
        let fetched = self.fetched_for(version.trim());
        let complete = fetched.image.is_file()
            && fetched.busybox.is_file()
            && fetched.modules.iter().all(|m| m.is_file());
        complete.then_some(fetched)
    }

    /// The cached kernel and busybox, fetched with apt first when the cache is empty.
    pub fn get(&self) -> Result<Fetched> {
        if let Some(fetched) = self.cached() {
            return Ok(fetched);
        }
        self.fetch()
            .map_err(|error| anyhow::anyhow!("{error:#}\n\n{}", by_hand_hint()))
    }

    /// Resolves, downloads, checks and extracts the packages into the cache.
    fn fetch(&self) -> Result<Fetched> {
        if Command::new("apt-get")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            bail!("apt-get is not on this machine");
        }
        if !Path::new(KEYRING).is_file() {
            bail!(
                "the Debian archive keyring {KEYRING} is missing (package debian-archive-keyring)"
            );
        }
        let codename = codename(&fs::read_to_string("/etc/os-release").unwrap_or_default())
            .context("no VERSION_CODENAME in /etc/os-release: not a Debian release")?;
        let entries = machine_sources()?;
        let list = sources_list(&entries, &codename);
        if list.is_empty() {
            bail!("no Debian source for `{codename}` in /etc/apt/sources.list(.d)");
        }

        let apt = self.apt_dir();
        for dir in [
            "etc/apt.conf.d",
            "etc/preferences.d",
            "etc/sources.list.d",
            "lists/partial",
            "cache/archives/partial",
        ] {
            fs::create_dir_all(apt.join(dir))?;
        }
        fs::write(apt.join("status"), "")?;
        fs::write(apt.join("etc/sources.list"), &list)?;
        let options = apt_options(&apt);

        eprintln!(
            "xtask: linux: apt-get update (arm64, private lists in {})",
            apt.display()
        );
        run_apt("apt-get", &options, &["-q", "update"], &apt)?;
        let depends = apt_output("apt-cache", &options, &["depends", KERNEL_META])?;
        let package = kernel_package(&depends).with_context(|| {
            format!("`apt-cache depends {KERNEL_META}` names no linux-image package:\n{depends}")
        })?;
        let version = kernel_version(&package)
            .with_context(|| format!("cannot read a kernel version from {package}"))?
            .to_string();
        eprintln!("xtask: linux: {KERNEL_META} is {package}; downloading it and {BUSYBOX_PACKAGE}");

        let debs = self.root.join("debs");
        let _ = fs::remove_dir_all(&debs);
        fs::create_dir_all(&debs)?;
        run_apt(
            "apt-get",
            &options,
            &["-q", "download", &package, BUSYBOX_PACKAGE],
            &debs,
        )?;

        let extract = self.root.join("extract");
        let _ = fs::remove_dir_all(&extract);
        fs::create_dir_all(&extract)?;
        for deb in fs::read_dir(&debs)? {
            let deb = deb?.path();
            if deb.extension().is_some_and(|e| e == "deb") {
                let status = Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(&deb)
                    .arg(&extract)
                    .status()
                    .context("running dpkg-deb")?;
                if !status.success() {
                    bail!("`dpkg-deb -x {}` failed ({status})", deb.display());
                }
            }
        }

        let kept = self.kept();
        let _ = fs::remove_dir_all(&kept);
        fs::create_dir_all(kept.join("modules"))?;
        let fetched = self.fetched_for(&version);
        let vmlinuz = extract.join(format!("boot/vmlinuz-{version}"));
        let image = read_image(&vmlinuz)?;
        fs::write(&fetched.image, image)?;
        let modules = extract.join(format!("lib/modules/{version}/kernel"));
        let mut order = Vec::new();
        for (module, kept) in MODULES.iter().zip(&fetched.modules) {
            let bytes = fs::read(modules.join(module))
                .with_context(|| format!("{module} is not in {package}"))?;
            order.push((module_name(module), module_depends(&bytes)));
            fs::write(kept, bytes)?;
        }
        check_module_order(&order)?;
        fs::copy(extract.join("bin/busybox"), &fetched.busybox)
            .with_context(|| format!("bin/busybox is not in {BUSYBOX_PACKAGE}"))?;
        fs::write(self.version_file(), format!("{version}\n"))?;
        // The packages themselves (22 MB) and the whole module tree are not needed again.
        let _ = fs::remove_dir_all(&extract);
        let _ = fs::remove_dir_all(&debs);
        Ok(fetched)
    }
}

/// What to fetch by hand when apt cannot, and the overrides that take it.
pub fn by_hand_hint() -> String {
    format!(
        "Fetch by hand (arm64, from any Debian mirror): the package that `{KERNEL_META}` \
         depends on (linux-image-<version>-cloud-arm64) and `{BUSYBOX_PACKAGE}`. Then pass \
         `--kernel PATH` = boot/vmlinuz-<version> from the kernel package (an arm64 Image), \
         and `--initrd PATH` = a gzip newc initramfs with an /init that ends in \
         `poweroff -f` (busybox from {BUSYBOX_PACKAGE} as bin/busybox). With both \
         overrides nothing is fetched."
    )
}

/// The `depends=` field of a module's `.modinfo` section: the modules it needs, by
/// name. (The package has no `modules.dep`: depmod writes that at install time.)
pub fn module_depends(module: &[u8]) -> Vec<String> {
    const FIELD: &[u8] = b"\0depends=";
    let Some(at) = module.windows(FIELD.len()).position(|w| w == FIELD) else {
        return Vec::new();
    };
    let value = &module[at + FIELD.len()..];
    let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
    String::from_utf8_lossy(&value[..end])
        .split(',')
        .filter(|d| !d.is_empty())
        .map(String::from)
        .collect()
}

/// A module's name as `depends=` and `lsmod` write it: the file's base name without
/// `.ko`, dashes as underscores.
pub fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.trim_end_matches(".ko").replace('-', "_")
}

/// Checks that modules can be loaded in the given order with `insmod`, which resolves
/// no dependencies: each module (name, its `depends=`) needs only modules listed
/// before it.
pub fn check_module_order(modules: &[(String, Vec<String>)]) -> Result<()> {
    for (i, (name, depends)) in modules.iter().enumerate() {
        for dep in depends {
            let dep = dep.replace('-', "_");
            if !modules[..i].iter().any(|(earlier, _)| *earlier == dep) {
                bail!("module {name} needs {dep}, which the initramfs does not load before it");
            }
        }
    }
    Ok(())
}

/// The file name a module is kept under (its base name).
fn module_file_name(module: &str) -> &str {
    module.rsplit('/').next().unwrap_or(module)
}

/// apt's options for the private directory `dir`: its own sources list, lists, cache
/// and dpkg status, arm64 only. Everything else stays the machine's.
pub fn apt_options(dir: &Path) -> Vec<String> {
    let d = dir.display();
    [
        format!("Dir::Etc={d}/etc"),
        format!("Dir::State::Lists={d}/lists"),
        format!("Dir::Cache={d}/cache"),
        format!("Dir::State::status={d}/status"),
        "APT::Architecture=arm64".to_string(),
        "APT::Architectures=arm64".to_string(),
        // The AppStream metadata (4 MB) is for software centres, not for us.
        "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_string(),
        "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false".to_string(),
        "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled=false".to_string(),
    ]
    .into_iter()
    .flat_map(|o| ["-o".to_string(), o])
    .collect()
}

fn run_apt(program: &str, options: &[String], args: &[&str], dir: &Path) -> Result<()> {
    let status = Command::new(program)
        .args(options)
        .args(args)
        .current_dir(dir)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn apt_output(program: &str, options: &[String], args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(options)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!("`{program} {}` failed ({})", args.join(" "), output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One `deb` source of the machine: its URIs and suites.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// Archive URIs.
    pub uris: Vec<String>,
    /// Suites (e.g. `bookworm`, `bookworm-security`).
    pub suites: Vec<String>,
}

/// The machine's `deb` sources: `/etc/apt/sources.list.d/*.sources` (deb822) and the
/// one-line `/etc/apt/sources.list` and `sources.list.d/*.list`.
fn machine_sources() -> Result<Vec<Source>> {
    let mut sources = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<_> = dir.filter_map(|e| Some(e.ok()?.path())).collect();
        more.sort();
        files.extend(more);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else {
            continue;
        };
        match file.extension().and_then(|e| e.to_str()) {
            Some("sources") => sources.extend(parse_deb822(&text)),
            Some("list") => sources.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    Ok(sources)
}

/// `deb` stanzas of a deb822 `.sources` file (sources.list(5)); disabled ones skipped.
pub fn parse_deb822(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    for stanza in lines.split(|l| l.trim().is_empty()) {
        let field = |name: &str| -> Vec<String> {
            stanza
                .iter()
                .find_map(|line| {
                    let (key, value) = line.split_once(':')?;
                    key.trim()
                        .eq_ignore_ascii_case(name)
                        .then(|| value.split_whitespace().map(String::from).collect())
                })
                .unwrap_or_default()
        };
        let enabled = field("Enabled").first().is_none_or(|v| v != "no");
        if enabled && field("Types").iter().any(|t| t == "deb") {
            sources.push(Source {
                uris: field("URIs"),
                suites: field("Suites"),
            });
        }
    }
    sources
}

/// `deb` lines of a one-line-style `sources.list`.
pub fn parse_one_line(text: &str) -> Vec<Source> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let rest = line.strip_prefix("deb ")?.trim_start();
            // Skip an option list `[arch=... signed-by=...]`.
            let rest = match rest.strip_prefix('[') {
                Some(options) => options.split_once(']')?.1,
                None => rest,
            };
            let mut words = rest.split_whitespace();
            let uri = words.next()?.to_string();
            let suite = words.next()?.to_string();
            Some(Source {
                uris: vec![uri],
                suites: vec![suite],
            })
        })
        .collect()
}

/// `VERSION_CODENAME` of an os-release file.
pub fn codename(os_release: &str) -> Option<String> {
    os_release.lines().find_map(|line| {
        let value = line.strip_prefix("VERSION_CODENAME=")?;
        let value = value.trim().trim_matches('"');
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// The private sources list: every suite of this release (`codename`, `codename-*`:
/// updates, security) from the machine's sources, component main, arm64, signed by the
/// Debian archive keyring. Other releases and third-party suites are left out.
pub fn sources_list(sources: &[Source], codename: &str) -> String {
    let mut list = String::new();
    for source in sources {
        for suite in &source.suites {
            let ours = suite == codename
                || suite
                    .strip_prefix(codename)
                    .is_some_and(|rest| rest.starts_with('-'));
            if !ours {
                continue;
            }
            for uri in &source.uris {
                let line = format!("deb [arch=arm64 signed-by={KEYRING}] {uri} {suite} main\n");
                if !list.contains(&line) {
                    list.push_str(&line);
                }
            }
        }
    }
    list
}

/// The concrete kernel package in `apt-cache depends linux-image-cloud-arm64`'s output:
/// the first dependency named `linux-image-*`.
pub fn kernel_package(depends: &str) -> Option<String> {
    depends.lines().find_map(|line| {
        let (_, name) = line.trim().trim_start_matches('|').split_once("Depends:")?;
        let name = name.trim().trim_start_matches('<').trim_end_matches('>');
        (name.starts_with("linux-image-") && name != KERNEL_META).then(|| name.to_string())
    })
}

/// The kernel version (`uname -r`) a kernel package carries in its name:
/// `linux-image-6.1.0-57-cloud-arm64[-unsigned]` → `6.1.0-57-cloud-arm64`.
pub fn kernel_version(package: &str) -> Option<&str> {
    let version = package.strip_prefix("linux-image-")?;
    let version = version.strip_suffix("-unsigned").unwrap_or(version);
    version
        .starts_with(|c: char| c.is_ascii_digit())
        .then_some(version)
}

/// The arm64 Image header fields the layout needs (booting.rst, "The Image header").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageHeader {
    /// Where the Image goes past a 2 MiB-aligned base.
    pub text_offset: u64,
    /// Memory the kernel claims from its load address, BSS included.
    pub image_size: u64,
}

/// The magic at byte 56 of an arm64 Image: "ARM\x64".
const ARM64_MAGIC: u32 = 0x644d_5241;

/// Reads an Image header.
pub fn image_header(image: &[u8]) -> Result<ImageHeader> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(image.get(at..at + 8)?.try_into().ok()?))
    };
    let magic = image
        .get(56..60)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
    if magic != Some(ARM64_MAGIC) {
        bail!("not an arm64 Image (no \"ARM\\x64\" magic at byte 56)");
    }
    let (Some(text_offset), Some(image_size)) = (word(8), word(16)) else {
        bail!("arm64 Image header cut short");
    };
    Ok(ImageHeader {
        text_offset,
        image_size,
    })
}

/// Reads a kernel file as a raw Image: a gzip-compressed one (`vmlinuz` on some
/// distributions) is unpacked, since QEMU's loader and a hypervisor take raw bytes.
pub fn read_image(path: &Path) -> Result<Vec<u8>> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut raw)
            .with_context(|| format!("unpacking {}", path.display()))?;
        raw
    } else {
        bytes
    };
    image_header(&bytes).with_context(|| path.display().to_string())?;
    Ok(bytes)
}

/// The version in an Image's banner (`Linux version 6.1.0-57-cloud-arm64 (...)`), for a
/// kernel given with `--kernel`.
pub fn banner_version(image: &[u8]) -> Option<String> {
    const BANNER: &[u8] = b"Linux version ";
    let at = image.windows(BANNER.len()).position(|w| w == BANNER)? + BANNER.len();
    let rest = &image[at..image.len().min(at + 128)];
    let end = rest.iter().position(|&b| b == b' ' || b == 0)?;
    let version = std::str::from_utf8(&rest[..end]).ok()?;
    (!version.is_empty()).then(|| version.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_options_keep_everything_private_and_arm64() {
        let options = apt_options(Path::new("/w/target/linux-guest/apt"));
        assert_eq!(options.len() % 2, 0);
        assert!(options.iter().step_by(2).all(|o| o == "-o"));
        let values: Vec<&str> = options
            .iter()
            .skip(1)
            .step_by(2)
            .map(String::as_str)
            .collect();
        for expected in [
            "Dir::Etc=/w/target/linux-guest/apt/etc",
            "Dir::State::Lists=/w/target/linux-guest/apt/lists",
            "Dir::Cache=/w/target/linux-guest/apt/cache",
            "Dir::State::status=/w/target/linux-guest/apt/status",
            "APT::Architecture=arm64",
            "APT::Architectures=arm64",
        ] {
            assert!(
                values.contains(&expected),
                "{expected} missing from {values:?}"
            );
        }
        // Nothing points at the machine's own state.
        assert!(
            !values
                .iter()
                .any(|v| v.contains("/var/lib") || v.contains("=/etc"))
        );
    }

    const DEBIAN_SOURCES: &str = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main

Types: deb
URIs: http://example.invalid/off
Suites: bookworm
Enabled: no
";

    #[test]
    fn deb822_sources_become_a_private_arm64_list() {
        let sources = parse_deb822(DEBIAN_SOURCES);
        assert_eq!(sources.len(), 2, "deb-src and disabled stanzas skipped");
        assert_eq!(
            sources[0],
            Source {
                uris: vec!["http://deb.debian.org/debian".into()],
                suites: vec!["bookworm".into(), "bookworm-updates".into()],
            }
        );
        let list = sources_list(&sources, "bookworm");
        let k = KEYRING;
        assert_eq!(
            list,
            format!(
                "deb [arch=arm64 signed-by={k}] http://deb.debian.org/debian bookworm main\n\
                 deb [arch=arm64 signed-by={k}] http://deb.debian.org/debian bookworm-updates main\n\
                 deb [arch=arm64 signed-by={k}] http://deb.debian.org/debian-security bookworm-security main\n"
            )
        );
    }

    #[test]
    fn one_line_sources_and_other_releases() {
        let text = "\
# comment
deb http://mirror.example/debian bookworm main contrib
deb [arch=amd64 signed-by=/x.gpg] http://mirror.example/debian-security bookworm-security main
deb-src http://mirror.example/debian bookworm main
deb http://mirror.example/debian trixie main
deb http://third.party.example/apt bookworm-backportsish main
";
        let sources = parse_one_line(text);
        assert_eq!(sources.len(), 4);
        let list = sources_list(&sources, "bookworm");
        assert!(list.contains("http://mirror.example/debian bookworm main\n"));
        assert!(list.contains("http://mirror.example/debian-security bookworm-security main\n"));
        assert!(!list.contains("trixie"));
        // A suite of this release from any source is taken (the machine's own choice).
        assert!(list.contains("bookworm-backportsish"));
        assert_eq!(sources_list(&sources, "bullseye"), "");
        // Duplicates are written once.
        let twice = [sources[0].clone(), sources[0].clone()];
        assert_eq!(sources_list(&twice, "bookworm").lines().count(), 1);
    }

    #[test]
    fn codename_from_os_release() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(codename(text).as_deref(), Some("bookworm"));
        assert_eq!(
            codename("VERSION_CODENAME=\"trixie\"\n").as_deref(),
            Some("trixie")
        );
        assert_eq!(codename("ID=debian\nVERSION_CODENAME=\n"), None);
    }

    #[test]
    fn resolves_the_concrete_kernel_package() {
        let depends = "linux-image-cloud-arm64\n  Depends: linux-image-6.1.0-57-cloud-arm64\n";
        assert_eq!(
            kernel_package(depends).as_deref(),
            Some("linux-image-6.1.0-57-cloud-arm64")
        );
        let unsigned = "linux-image-cloud-arm64\n |Depends: <linux-image-6.1.0-50-cloud-arm64-unsigned>\n  Depends: kmod\n";
        assert_eq!(
            kernel_package(unsigned).as_deref(),
            Some("linux-image-6.1.0-50-cloud-arm64-unsigned")
        );
        assert_eq!(
            kernel_package("linux-image-cloud-arm64\n  Depends: kmod\n"),
            None
        );
        assert_eq!(
            kernel_version("linux-image-6.1.0-50-cloud-arm64-unsigned"),
            Some("6.1.0-50-cloud-arm64")
        );
        assert_eq!(
            kernel_version("linux-image-6.1.0-57-cloud-arm64"),
            Some("6.1.0-57-cloud-arm64")
        );
        assert_eq!(kernel_version("linux-image-cloud-arm64"), None);
        assert_eq!(kernel_version("busybox-static"), None);
    }

    #[test]
    fn module_order_follows_each_modules_depends() {
        // .modinfo strings as in 6.1.0-57-cloud-arm64's modules.
        let modinfo = |fields: &str| format!("\x7fELF...\0license=GPL\0{fields}\0vermagic=6.1\0");
        assert_eq!(
            module_depends(modinfo("depends=virtio_ring").as_bytes()),
            ["virtio_ring"]
        );
        assert_eq!(
            module_depends(modinfo("depends=net_failover,virtio,virtio_ring").as_bytes()),
            ["net_failover", "virtio", "virtio_ring"]
        );
        assert!(module_depends(modinfo("depends=").as_bytes()).is_empty());
        assert!(module_depends(b"no modinfo at all").is_empty());
        assert_eq!(module_name("drivers/net/virtio_net.ko"), "virtio_net");
        assert_eq!(module_name("x/some-mod.ko"), "some_mod");

        let deps = |name: &str, d: &[&str]| {
            (
                name.to_string(),
                d.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            )
        };
        let good = [
            deps("virtio_ring", &[]),
            deps("virtio", &["virtio_ring"]),
            deps("virtio_mmio", &["virtio", "virtio_ring"]),
            deps("failover", &[]),
            deps("net_failover", &["failover"]),
            deps("virtio_net", &["net_failover", "virtio", "virtio_ring"]),
        ];
        check_module_order(&good).unwrap();
        let names: Vec<String> = MODULES.iter().map(|m| module_name(m)).collect();
        let good_names: Vec<&String> = good.iter().map(|(n, _)| n).collect();
        assert_eq!(
            names.iter().collect::<Vec<_>>(),
            good_names,
            "MODULES in this order"
        );
        let swapped = [good[1].clone(), good[0].clone()];
        let error = check_module_order(&swapped).unwrap_err().to_string();
        assert!(error.contains("virtio needs virtio_ring"), "{error}");
    }

    fn fake_image(image_size: u64) -> Vec<u8> {
        let mut image = vec![0u8; 128];
        image[8..16].copy_from_slice(&0u64.to_le_bytes());
        image[16..24].copy_from_slice(&image_size.to_le_bytes());
        image[56..60].copy_from_slice(b"ARM\x64");
        image.extend_from_slice(b"..Linux version 6.1.0-99-test (debian-kernel@lists) #1 SMP\0");
        image
    }

    #[test]
    fn reads_the_image_header_and_banner() {
        let image = fake_image(27_918_336);
        assert_eq!(
            image_header(&image).unwrap(),
            ImageHeader {
                text_offset: 0,
                image_size: 27_918_336
            }
        );
        assert_eq!(banner_version(&image).as_deref(), Some("6.1.0-99-test"));
        let mut wrong = image.clone();
        wrong[56] = b'X';
        assert!(image_header(&wrong).is_err());
        assert!(image_header(&image[..40]).is_err());
        assert_eq!(banner_version(b"no banner here"), None);
    }

    #[test]
    fn a_gzipped_kernel_is_unpacked() {
        let image = fake_image(4096);
        let dir = std::env::temp_dir().join(format!("iqdio-xtask-image-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let packed = dir.join("vmlinuz.gz");
        fs::write(&packed, super::super::cpio::gzip(&image).unwrap()).unwrap();
        let raw = dir.join("Image");
        fs::write(&raw, &image).unwrap();
        assert_eq!(read_image(&packed).unwrap(), image);
        assert_eq!(read_image(&raw).unwrap(), image);
        fs::write(&raw, b"not a kernel").unwrap();
        assert!(read_image(&raw).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cache_is_complete_only_with_every_file() {
        let root = std::env::temp_dir().join(format!("iqdio-xtask-cache-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let cache = Cache::new(root.clone());
        assert!(cache.cached().is_none());
        let want = cache.fetched_for("6.1.0-1-test");
        fs::create_dir_all(root.join("kept/modules")).unwrap();
        for file in [&want.image, &want.busybox] {
            fs::write(file, b"x").unwrap();
        }
        for module in &want.modules {
            fs::write(module, b"x").unwrap();
        }
        // Every file there but the version record (written last): still empty.
        assert!(cache.cached().is_none());
        fs::write(root.join("kept/VERSION"), "6.1.0-1-test\n").unwrap();
        let got = cache.cached().unwrap();
        assert_eq!(got.version, "6.1.0-1-test");
        assert!(got.modules[5].ends_with("kept/modules/virtio_net.ko"));
        fs::remove_file(&want.modules[2]).unwrap();
        assert!(cache.cached().is_none());
        fs::remove_dir_all(&root).unwrap();
    }
}
