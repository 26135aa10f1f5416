//! Running cargo: the images for the bare-metal target, and the test steps.

use std::{
    ffi::OsString,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// The bare-metal target every image is built for.
pub const TARGET: &str = "aarch64-unknown-none";

/// Components of the pinned toolchain the xtask's steps use: clippy (the lint steps of
/// `cargo xtask test`) and rustfmt (the formatting check developers run).
pub const COMPONENTS: &[&str] = &["clippy", "rustfmt"];

/// Makes sure the toolchain that runs this xtask has the bare-metal target and the
/// components the steps need, once per xtask run.
///
/// `rust-toolchain.toml` names them, but rustup honours that list only when it installs
/// a toolchain, not when the pinned toolchain already exists without them (as on a
/// machine image that ships it). `rustup target add` and `rustup component add` are
/// idempotent and answer at once when everything is there. Without rustup, the error
/// names the command to run.
pub fn ensure_toolchain() -> Result<()> {
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| install_toolchain_parts().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The rustup calls behind [`ensure_toolchain`].
fn install_toolchain_parts() -> Result<()> {
    if sysroot_has_target()? {
        return Ok(());
    }
    // `RUSTUP_TOOLCHAIN` is set by rustup's cargo proxy to the toolchain it chose
    // (the pinned one); without it rustup reads rust-toolchain.toml in the workspace.
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").ok();
    let mut calls: Vec<Vec<String>> = vec![vec!["target".into(), "add".into(), TARGET.into()]];
    let mut components = vec!["component".to_string(), "add".to_string()];
    components.extend(COMPONENTS.iter().map(|c| c.to_string()));
    calls.push(components);
    for mut args in calls {
        if let Some(toolchain) = &toolchain {
            args.push("--toolchain".into());
            args.push(toolchain.clone());
        }
        eprintln!("xtask: rustup {}", args.join(" "));
        let status = Command::new("rustup")
            .args(&args)
            .current_dir(workspace_root())
            .stdin(Stdio::null())
            .status();
        match status {
            Ok(status) if status.success() => {}
            Ok(status) => bail!(
                "`rustup {}` failed ({status}); the images need the `{TARGET}` target: \
                 run `rustup target add {TARGET}` in {}",
                args.join(" "),
                workspace_root().display()
            ),
            Err(e) => bail!(
                "rustup not found ({e}): the images need the `{TARGET}` target of the pinned \
                 toolchain; install rustup, or add the target to your toolchain by hand \
                 (`rustup target add {TARGET}`)"
            ),
        }
    }
    if !sysroot_has_target()? {
        bail!("`rustup target add {TARGET}` ran but rustc still lacks `{TARGET}`");
    }
    Ok(())
}

/// Whether the sysroot of the rustc that cargo uses has the bare-metal target's `core`.
fn sysroot_has_target() -> Result<bool> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .current_dir(workspace_root())
        .output()
        .with_context(|| format!("running {rustc:?} --print sysroot"))?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let lib = sysroot.join("lib/rustlib").join(TARGET).join("lib");
    let has_core = std::fs::read_dir(&lib).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
    });
    let has_clippy = Command::new(cargo())
        .args(["clippy", "--version"])
        .current_dir(workspace_root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    Ok(has_core && has_clippy)
}

/// The cargo that runs this xtask (`CARGO`), or `cargo` from `PATH`.
pub fn cargo() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// The workspace root: the xtask lives in `<root>/xtask`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// The build directory (`CARGO_TARGET_DIR`, or `<root>/target`).
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

/// A cargo command in the workspace root.
pub fn command(args: &[&str]) -> Command {
    let mut command = Command::new(cargo());
    command.args(args).current_dir(workspace_root());
    command
}

/// Every variable an image reads with `option_env!`. A build sets the ones it is given
/// and removes the others, so a stray variable in the caller's shell cannot change an
/// image.
pub const IMAGE_ENV: &[&str] = &[
    "IQDIO_FRAMES",
    "IQDIO_CQ",
    "IQDIO_MFS",
    "IQDIO_SCENARIO",
    "IQDIO_LINUX_GUESTS",
    "IQDIO_LINUX_RAM",
    "IQDIO_LINUX_RAM_MIB",
    "IQDIO_LINUX_PHYS",
    "IQDIO_LINUX_ENTRY",
    "IQDIO_LINUX_DTB",
];

/// The workspace package that holds the hypervisor, the board and the bare-metal images.
pub const IMAGE_PACKAGE: &str = "iqdio-hyp";

/// The package of the partition program every image embeds, and its binary.
pub const GUEST_PACKAGE: &str = "iqdio-guest";
/// The partition program's binary.
pub const GUEST_BIN: &str = "guest";

/// Builds image `bin` of [`IMAGE_PACKAGE`] for the bare-metal target (release profile)
/// and returns its ELF.
///
/// The partition program ([`GUEST_PACKAGE`]) is built first, with the same variables, in
/// its own cargo invocation (so the two never share a feature resolution: it runs at
/// EL1, the hypervisor at EL2), and its path reaches the image's build as
/// `IQDIO_GUEST_ELF`, which embeds it.
///
/// `env` sets build-time variables the images read with `option_env!` (all others of
/// [`IMAGE_ENV`] are removed). `target_dir` builds elsewhere than the shared build
/// directory.
pub fn build_image(bin: &str, env: &[(&str, &str)]) -> Result<PathBuf> {
    ensure_toolchain()?;
    let guest = build_bin(GUEST_PACKAGE, GUEST_BIN, env, &[])?;
    let guest = guest.display().to_string();
    build_bin(
        IMAGE_PACKAGE,
        bin,
        env,
        &[("IQDIO_GUEST_ELF", guest.as_str())],
    )
}

/// Builds `bin` of `package` for the bare-metal target (release) with the image
/// variables `env` (the others of [`IMAGE_ENV`] removed) and `extra`.
fn build_bin(
    package: &str,
    bin: &str,
    env: &[(&str, &str)],
    extra: &[(&str, &str)],
) -> Result<PathBuf> {
    let mut command = command(&[
        "build",
        "--release",
        "--target",
        TARGET,
        "-p",
        package,
        "--bin",
        bin,
        "--message-format=json-render-diagnostics",
    ]);
    for key in IMAGE_ENV {
        command.env_remove(key);
    }
    command.env_remove("IQDIO_GUEST_ELF");
    for (key, value) in env.iter().chain(extra) {
        command.env(key, value);
    }
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v} ")).collect();
    eprintln!(
        "xtask: building `{bin}`: {}cargo build --release --target {TARGET} -p {package} --bin {bin}",
        shown.concat()
    );
    let output = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {:?}", cargo()))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let elf = executable_from_messages(&stdout, bin);
    if !output.status.success() {
        bail!("building `{bin}` failed ({})", output.status);
    }
    elf.with_context(|| format!("cargo built `{bin}` but reported no executable"))
}

/// The executable cargo reported for `bin` in its JSON messages.
pub fn executable_from_messages(messages: &str, bin: &str) -> Option<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .next_back()
}

/// Runs a command, echoing its stdout while collecting it; stderr goes straight through.
pub fn run_tee(mut command: Command) -> Result<(bool, String)> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let mut collected = String::new();
    let stdout = child.stdout.take().expect("piped");
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading the command's output")?;
        println!("{line}");
        collected.push_str(&line);
        collected.push('\n');
    }
    let status = child.wait().context("waiting for the command")?;
    Ok((status.success(), collected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_executable_among_messages() {
        let messages = r#"{"reason":"compiler-artifact","target":{"name":"defmt"},"executable":null}
not json at all
{"reason":"compiler-artifact","target":{"name":"selftest"},"executable":"/t/aarch64-unknown-none/release/selftest"}
{"reason":"build-finished","success":true}"#;
        assert_eq!(
            executable_from_messages(messages, "selftest"),
            Some(PathBuf::from("/t/aarch64-unknown-none/release/selftest"))
        );
        assert_eq!(executable_from_messages(messages, "partitions"), None);
    }
}
