//! The README's error table says, for every sbalf15 code, what iqdio means by it and
//! what Linux qeth does with it; this checks the table against the code: the same set
//! of codes as [`Reason::ALL`], the retry column against [`Reason::is_retryable`], and
//! the Linux column against [`Reason::linux_qeth`] and
//! [`Reason::linux_reads_as_unreachable`].

use iqdio::qdio::Reason;

/// The README's sbalf15 rows: code, retry column, Linux column (backticks removed,
/// "as 0xNN" resolved to that row's text).
fn sbalf15_rows() -> Vec<(u8, String, String)> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let mut rows: Vec<(u8, String, String)> = Vec::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| sbalf15 | code | meaning | retry | linux |" splits into 7 cells.
        if cells.len() != 7 || cells[1] != "sbalf15" {
            continue;
        }
        let code = u8::from_str_radix(cells[2].trim_start_matches("0x"), 16)
            .unwrap_or_else(|_| panic!("README sbalf15 row with code {:?}", cells[2]));
        let mut linux = cells[5].replace('`', "");
        if let Some(other) = linux.strip_prefix("as 0x") {
            let other = u8::from_str_radix(&other[..2], 16).expect("as 0xNN");
            let (_, _, text) = rows
                .iter()
                .find(|(c, _, _)| *c == other)
                .unwrap_or_else(|| panic!("row {code:#04x} refers to {other:#04x}, not above it"));
            linux = text.clone();
        }
        rows.push((code, cells[4].to_string(), linux));
    }
    rows
}

#[test]
fn the_readme_lists_every_sbalf15_code_once() {
    let rows = sbalf15_rows();
    let mut readme: Vec<u8> = rows.iter().map(|(c, _, _)| *c).collect();
    let n = readme.len();
    readme.sort_unstable();
    readme.dedup();
    assert_eq!(readme.len(), n, "a code listed twice");
    let mut code: Vec<u8> = Reason::ALL.iter().map(|r| r.code()).collect();
    code.sort_unstable();
    assert_eq!(readme, code);
}

#[test]
fn the_readme_says_what_linux_qeth_does_with_each_code() {
    for (code, retry, linux) in sbalf15_rows() {
        let r = Reason::from_code(code).expect("a documented code");
        assert!(
            linux.contains(r.linux_qeth()),
            "{code:#04x}: README says {linux:?}, the code says {:?}",
            r.linux_qeth()
        );
        assert_eq!(
            linux.contains("AF_IUCV: unreachable"),
            r.linux_reads_as_unreachable(),
            "{code:#04x}"
        );
        // 0x11 is a "yes, once it registers": the destination's doing, so iqdio's
        // driver does not retry it by itself (`is_retryable` is false).
        assert_eq!(
            retry.starts_with("yes"),
            r.is_retryable() || r == Reason::Unreachable,
            "{code:#04x}: retry column {retry:?}"
        );
    }
}
