//! The self-test image's settings block (`hyp/src/bin/selftest/settings.rs`): the case
//! to fail on purpose and the failure to inject, written into a copy of the built image
//! so that every failure kind boots the one cached build.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail, ensure};
use object::{Object, ObjectSection, ObjectSymbol};

/// The block's symbol in the image.
const SYMBOL: &str = "IQDIO_SELFTEST_SETTINGS";
/// The block's first bytes (`settings::MAGIC` in the image).
const MAGIC: [u8; 8] = *b"IQDSET\x00\x01";
/// Bytes per field.
const FIELD: usize = 32;
/// The whole block: the magic, the case to fail, the kind to inject.
const SIZE: usize = MAGIC.len() + 2 * FIELD;

/// The block's bytes for these settings.
fn encode(fail: Option<&str>, inject: Option<&str>) -> Result<[u8; SIZE]> {
    let mut block = [0; SIZE];
    block[..MAGIC.len()].copy_from_slice(&MAGIC);
    for (i, (what, text)) in [("--fail", fail), ("--inject", inject)]
        .into_iter()
        .enumerate()
    {
        let text = text.unwrap_or("");
        ensure!(
            text.len() <= FIELD && !text.contains('\0'),
            "{what} {text:?}: at most {FIELD} bytes, no NUL"
        );
        let start = MAGIC.len() + i * FIELD;
        block[start..start + text.len()].copy_from_slice(text.as_bytes());
    }
    Ok(block)
}

/// Where the block lies in the ELF file `data`: its file offset.
fn block_offset(data: &[u8]) -> Result<usize> {
    let file = object::File::parse(data).context("parsing the self-test image")?;
    let Some(symbol) = file.symbols().find(|s| s.name() == Ok(SYMBOL)) else {
        bail!("the self-test image has no symbol {SYMBOL}");
    };
    ensure!(
        symbol.size() == SIZE as u64,
        "{SYMBOL} is {} bytes, not {SIZE}: the image and the xtask disagree on its layout",
        symbol.size()
    );
    let index = symbol
        .section_index()
        .with_context(|| format!("{SYMBOL} is in no section"))?;
    let section = file.section_by_index(index)?;
    let (file_start, file_size) = section
        .file_range()
        .with_context(|| format!("{SYMBOL}'s section has no bytes in the file"))?;
    let within = symbol.address() - section.address();
    ensure!(
        within + SIZE as u64 <= file_size,
        "{SYMBOL} lies outside its section's bytes"
    );
    let offset = usize::try_from(file_start + within)?;
    ensure!(
        data.get(offset..offset + MAGIC.len()) == Some(&MAGIC[..]),
        "{SYMBOL} does not start with the settings magic"
    );
    Ok(offset)
}

/// A copy of the self-test image `elf` with these settings, beside it.
pub fn selftest_copy(elf: &Path, fail: Option<&str>, inject: Option<&str>) -> Result<PathBuf> {
    let mut data = fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
    let block = encode(fail, inject)?;
    let offset = block_offset(&data)?;
    data[offset..offset + SIZE].copy_from_slice(&block);
    let tag: String = format!(
        "fail-{}.inject-{}",
        fail.unwrap_or(""),
        inject.unwrap_or("")
    )
    .chars()
    .map(|c| {
        if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
            c
        } else {
            '_'
        }
    })
    .collect();
    let copy = elf.with_file_name(format!(
        "{}.{tag}",
        elf.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("selftest")
    ));
    fs::write(&copy, &data).with_context(|| format!("writing {}", copy.display()))?;
    eprintln!("xtask: settings written into {}", copy.display());
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fields_follow_the_magic_padded_with_nul() {
        let block = encode(Some("sgi_wakeup"), Some("panic")).unwrap();
        assert_eq!(&block[..8], &MAGIC);
        assert_eq!(&block[8..18], b"sgi_wakeup");
        assert!(block[18..40].iter().all(|&b| b == 0));
        assert_eq!(&block[40..45], b"panic");
        assert!(block[45..].iter().all(|&b| b == 0));
        let none = encode(None, None).unwrap();
        assert!(none[8..].iter().all(|&b| b == 0));
    }

    #[test]
    fn a_field_that_does_not_fit_is_refused() {
        let long = "x".repeat(FIELD + 1);
        assert!(encode(Some(&long), None).is_err());
        assert!(encode(None, Some("a\0b")).is_err());
        assert!(encode(Some(&"y".repeat(FIELD)), None).is_ok());
    }

    #[test]
    fn a_file_that_is_not_the_image_is_refused() {
        assert!(block_offset(b"not an ELF file").is_err());
        // The xtask's own executable is an ELF without the block.
        let me = fs::read(std::env::current_exe().unwrap()).unwrap();
        let err = block_offset(&me).unwrap_err().to_string();
        assert!(err.contains("no symbol"), "{err}");
    }
}
