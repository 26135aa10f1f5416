//! `cargo xtask panics`: no panic path in what partitions drive (issue 17 item 6).
//!
//! Builds the hypervisor image (release, as it ships), disassembles it with
//! `llvm-objdump`, and walks the static call graph from every function of the
//! library's `fabric` module (SIGA, registration, the delay fallback, and whatever
//! they inline or call, the hypervisor's `Platform` among it). Any panic entry it
//! reaches (`core::panicking::*`, bounds and slice-index failures, `unwrap`/`expect`
//! failures, the panic handler) is a path on which a partition could stop the
//! hypervisor, and fails the check with the chain of calls that leads there.
//!
//! Only direct branches count as edges (`bl`, `b`, `b.cond`, `cbz`/`cbnz`,
//! `tbz`/`tbnz` to another function): an `adrp` that lands near a symbol is an address,
//! not a call. Indirect calls (`blr`, `br`) are not followed; the library makes none
//! (its `Platform` is a generic, statically dispatched).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

use crate::cargo;

/// The image whose partition-driven paths are checked: the hypervisor.
const IMAGE: &str = "hyp";

/// Names of panic entries, as `llvm-objdump -C` prints them.
const PANIC_MARKS: &[&str] = &[
    "core::panicking::",
    "panic_bounds_check",
    "slice_index_fail",
    "slice_start_index_len_fail",
    "slice_end_index_len_fail",
    "slice_index_order_fail",
    "unwrap_failed",
    "expect_failed",
    "panic_on_ord_violation",
    "rust_begin_unwind",
];

/// Whether a function is a root: the library's fabric (its methods, the `Port`'s SIGA).
fn is_root(name: &str) -> bool {
    name.starts_with("iqdio::fabric::") || name.contains("iqdio..fabric..Port")
}

fn is_panic(name: &str) -> bool {
    PANIC_MARKS.iter().any(|m| name.contains(m))
}

/// Function name → the functions it branches to, from `llvm-objdump -d -C` text.
pub fn call_graph(disassembly: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in disassembly.lines() {
        // A function: `0000000040080cdc <name>:`
        if let Some(name) = line
            .strip_suffix(">:")
            .and_then(|l| l.split_once(" <"))
            .filter(|(addr, _)| addr.chars().all(|c| c.is_ascii_hexdigit()))
            .map(|(_, name)| name.to_string())
        {
            graph.entry(name.clone()).or_default();
            current = Some(name);
            continue;
        }
        let Some(from) = current.as_ref() else {
            continue;
        };
        // An instruction: `40080830:  \tmnemonic\toperands`
        let mut fields = line.split('\t').map(str::trim).filter(|f| !f.is_empty());
        let (Some(_addr), Some(mnemonic), Some(operands)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let branch = matches!(mnemonic, "bl" | "b" | "cbz" | "cbnz" | "tbz" | "tbnz")
            || mnemonic.starts_with("b.");
        if !branch {
            continue;
        }
        // The target: `0x40080034 <name+0x34>` or `0x... <name>`.
        let Some(target) = operands
            .rsplit_once(" <")
            .and_then(|(_, t)| t.strip_suffix('>'))
        else {
            continue;
        };
        let target = target.rsplit_once("+0x").map_or(target, |(name, _)| name);
        if target != from {
            graph
                .entry(from.clone())
                .or_default()
                .insert(target.to_string());
        }
    }
    graph
}

/// Every panic entry reachable from a root, each with one chain of calls from a root
/// (breadth first: a shortest one).
pub fn panic_paths(graph: &BTreeMap<String, BTreeSet<String>>) -> (usize, usize, Vec<Vec<String>>) {
    let roots: Vec<&String> = graph.keys().filter(|n| is_root(n)).collect();
    let mut parent: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    let mut queue: VecDeque<&str> = VecDeque::new();
    for r in &roots {
        parent.insert(r.as_str(), None);
        queue.push_back(r.as_str());
    }
    while let Some(f) = queue.pop_front() {
        if is_panic(f) {
            // A panic entry's own callees are the panic machinery: one report is enough.
            continue;
        }
        for g in graph.get(f).into_iter().flatten() {
            if !parent.contains_key(g.as_str()) {
                parent.insert(g.as_str(), Some(f));
                queue.push_back(g.as_str());
            }
        }
    }
    let mut paths = Vec::new();
    for (&f, _) in parent.iter().filter(|(f, _)| is_panic(f)) {
        let mut path = vec![f.to_string()];
        let mut at = f;
        while let Some(Some(p)) = parent.get(at) {
            path.push(p.to_string());
            at = p;
        }
        path.reverse();
        paths.push(path);
    }
    (roots.len(), parent.len(), paths)
}

/// The subcommand: build, disassemble, walk; `panics: R roots, F functions reached,
/// P panic paths` last, and a failure exit if P > 0.
pub fn run() -> Result<ExitCode> {
    Ok(if check()? {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the check, prints what it found; true when no panic path is reachable.
pub fn check() -> Result<bool> {
    let elf = cargo::build_image(IMAGE, &[])?;
    let output = Command::new("llvm-objdump")
        .args(["-d", "--no-show-raw-insn", "-C"])
        .arg(&elf)
        .output()
        .context("running llvm-objdump (install LLVM's binutils: it disassembles aarch64)")?;
    if !output.status.success() {
        bail!(
            "llvm-objdump failed on {}: {}",
            elf.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let graph = call_graph(&String::from_utf8_lossy(&output.stdout));
    let (roots, reached, paths) = panic_paths(&graph);
    if roots == 0 {
        bail!("no function of iqdio::fabric in {}", elf.display());
    }
    for path in &paths {
        println!("panics: reachable: {}", path.join(" -> "));
    }
    println!(
        "panics: {roots} roots, {reached} functions reached, {} panic paths",
        paths.len()
    );
    Ok(paths.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
target/aarch64-unknown-none/release/hyp:\tfile format elf64-littleaarch64

Disassembly of section .text:

0000000040080800 <iqdio::fabric::Fabric$LT$P$GT$::siga_function::h01>:
40080800:      \tadrp\tx9, 0x4042f000 <iqdio_el2_vectors+0x240>
40080804:      \tcbz\tw0, 0x4008084c <iqdio::fabric::Fabric$LT$P$GT$::siga_function::h01+0x4c>
40080808:      \tbl\t0x40090000 <iqdio::transfer::deliver::h02>
4008080c:      \tb.hs\t0x40091000 <helper::h03+0x8>
40080810:      \tret

0000000040090000 <iqdio::transfer::deliver::h02>:
40090000:      \tbl\t0x400a71cc <core::panicking::panic_bounds_check>
40090004:      \tret

0000000040091000 <helper::h03>:
40091000:      \tret

0000000040092000 <iqdio_el2_vectors>:
40092000:      \tbl\t0x400a7218 <core::panicking::panic_fmt>

00000000400a71cc <core::panicking::panic_bounds_check>:
400a71cc:      \tbl\t0x400a7218 <core::panicking::panic_fmt>

00000000400a7218 <core::panicking::panic_fmt>:
400a7218:      \tb\t0x400a7300 <rust_begin_unwind>
";

    #[test]
    fn branches_are_edges_addresses_and_local_jumps_are_not() {
        let g = call_graph(SAMPLE);
        let root = &g["iqdio::fabric::Fabric$LT$P$GT$::siga_function::h01"];
        let want: BTreeSet<String> = ["iqdio::transfer::deliver::h02", "helper::h03"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(root, &want, "no adrp edge, no edge to itself");
    }

    #[test]
    fn a_reachable_panic_is_reported_with_its_chain_and_only_once() {
        let (roots, reached, paths) = panic_paths(&call_graph(SAMPLE));
        assert_eq!(roots, 1);
        // siga_function, deliver, helper, panic_bounds_check; not the vectors' panic_fmt.
        assert_eq!(reached, 4);
        assert_eq!(
            paths,
            [[
                "iqdio::fabric::Fabric$LT$P$GT$::siga_function::h01",
                "iqdio::transfer::deliver::h02",
                "core::panicking::panic_bounds_check",
            ]]
        );
    }

    #[test]
    fn without_a_branch_to_a_panic_there_is_no_path() {
        let clean = SAMPLE.replace(
            "40090000:      \tbl\t0x400a71cc <core::panicking::panic_bounds_check>",
            "40090000:      \tnop",
        );
        let (roots, reached, paths) = panic_paths(&call_graph(&clean));
        assert_eq!((roots, reached), (1, 3));
        assert!(paths.is_empty());
    }
}
