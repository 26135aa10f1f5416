//! Static checks of a built image's ELF: where a symbol lives and how big it is.
//!
//! `cargo xtask test` uses them to hold the hypervisor image to issue 17 item 2: its
//! fabric static (8 partitions with one queue set each) is all-zero at build time, so
//! it lies in `.bss` and takes no room in the image file, and it is at most 32 KiB.

use std::path::Path;

use anyhow::{Context, Result, bail};
use object::{Object, ObjectSection, ObjectSymbol};

use crate::boots::TestResult;

/// Where one symbol of an ELF lies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The section holding it (`.bss`, `.data`, ...).
    pub section: String,
    /// Its size in bytes, as the symbol table gives it.
    pub size: u64,
}

/// The placement of the one symbol whose demangled path (hash suffix removed) is
/// `path`, e.g. `iqdio_hyp::vm::FABRIC`.
pub fn placement(elf: &[u8], path: &str) -> Result<Placement> {
    let file = object::File::parse(elf).context("parsing the ELF")?;
    let mut found = Vec::new();
    for sym in file.symbols() {
        let Ok(name) = sym.name() else { continue };
        if format!("{:#}", rustc_demangle::demangle(name)) != path {
            continue;
        }
        let Some(index) = sym.section_index() else {
            continue;
        };
        let section = file
            .section_by_index(index)
            .context("symbol's section")?
            .name()
            .context("section name")?
            .to_string();
        found.push(Placement {
            section,
            size: sym.size(),
        });
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => bail!("no symbol `{path}` in the image"),
        n => bail!("{n} symbols `{path}` in the image"),
    }
}

/// The hypervisor image's fabric static, as `cargo xtask test` checks it.
pub const HYP_FABRIC: &str = "iqdio_hyp::vm::FABRIC";
/// Its bound (issue 17 item 2: 8 partitions × 1 queue set ≤ 32 KiB).
pub const HYP_FABRIC_MAX: u64 = 32 * 1024;

/// Checks the hypervisor image at `elf`: its fabric in `.bss`, at most 32 KiB.
pub fn check_hyp_fabric(elf: &Path) -> Vec<TestResult> {
    let name = "fabric static in .bss, at most 32 KiB";
    let placed = std::fs::read(elf)
        .with_context(|| format!("reading {}", elf.display()))
        .and_then(|bytes| placement(&bytes, HYP_FABRIC));
    vec![match placed {
        Err(e) => TestResult::fail(name, format!("{e:#}")),
        Ok(p) if p.section != ".bss" => TestResult::fail(
            name,
            format!("{HYP_FABRIC} is in {} ({} bytes)", p.section, p.size),
        ),
        Ok(p) if p.size > HYP_FABRIC_MAX => TestResult::fail(
            name,
            format!("{HYP_FABRIC} is {} bytes, over {HYP_FABRIC_MAX}", p.size),
        ),
        Ok(p) => {
            eprintln!("xtask: {HYP_FABRIC}: {} bytes in {}", p.size, p.section);
            TestResult::pass(name)
        }
    }]
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU8, Ordering};

    use super::*;

    /// All-zero: the linker puts it in `.bss`.
    static ZEROED: [AtomicU8; 4096] = [const { AtomicU8::new(0) }; 4096];
    /// One byte set: `.data`.
    static SET: [AtomicU8; 64] = {
        let mut a = [const { AtomicU8::new(0) }; 64];
        a[7] = AtomicU8::new(1);
        a
    };

    #[test]
    fn finds_where_this_test_binarys_statics_live() {
        // Used, so the statics are kept.
        ZEROED[0].store(0, Ordering::Relaxed);
        SET[0].store(0, Ordering::Relaxed);
        let exe = std::env::current_exe().unwrap();
        let elf = std::fs::read(exe).unwrap();
        let zeroed = placement(&elf, "xtask::image::tests::ZEROED").unwrap();
        assert_eq!(zeroed.section, ".bss");
        assert_eq!(zeroed.size, 4096);
        let set = placement(&elf, "xtask::image::tests::SET").unwrap();
        assert_eq!(set.section, ".data");
        assert_eq!(set.size, 64);
        assert!(placement(&elf, "xtask::image::tests::NOT_THERE").is_err());
    }
}
