//! A newc ("new ASCII") cpio writer and its gzip wrapper: the initramfs format Linux
//! unpacks at boot (`Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Written here rather than run through `cpio(1)`, which a fresh Debian machine lacks;
//! the format is one 110-byte ASCII header per entry, the name and the data each padded
//! to 4 bytes, and a last entry named `TRAILER!!!`.

use std::io::Write;

use anyhow::{Result, bail};
use flate2::{Compression, write::GzEncoder};

/// The magic of a newc header without checksums (buffer-format.rst: "070701").
const MAGIC: &str = "070701";

/// The name of the entry that ends an archive.
pub const TRAILER: &str = "TRAILER!!!";

/// File type bits of `st_mode` (POSIX `<sys/stat.h>`, as cpio stores them).
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFCHR: u32 = 0o020_000;

/// An archive being built in memory, entries in the order they are added (a directory
/// must come before what it holds: the kernel creates entries in archive order).
pub struct Archive {
    bytes: Vec<u8>,
    next_ino: u32,
    /// Where the last entry's header starts.
    last_header: usize,
}

impl Default for Archive {
    fn default() -> Self {
        Self::new()
    }
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Self {
            bytes: Vec::new(),
            // Inode 0 is what the trailer carries; real entries start at 1 so that no
            // two of them look like hard links of each other to the unpacker.
            next_ino: 1,
            last_header: 0,
        }
    }

    /// A directory, `mode` its permission bits (e.g. 0o755).
    pub fn dir(&mut self, name: &str, mode: u32) -> Result<()> {
        self.entry(name, S_IFDIR | (mode & 0o7777), 2, &[])
    }

    /// A regular file holding `data`.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.entry(name, S_IFREG | (mode & 0o7777), 1, data)
    }

    /// A character device node `major:minor` (e.g. /dev/console, 5:1), so init has a
    /// console before it mounts devtmpfs.
    pub fn char_dev(&mut self, name: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.entry(name, S_IFCHR | (mode & 0o7777), 1, &[])?;
        // rdevmajor and rdevminor are fields 9 and 10 of the header just written.
        let header = self.last_header;
        for (field, value) in [(9, major), (10, minor)] {
            let at = header + 6 + 8 * field;
            self.bytes[at..at + 8].copy_from_slice(format!("{value:08X}").as_bytes());
        }
        Ok(())
    }

    /// Ends the archive with the trailer and returns its bytes.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        self.push(TRAILER, 0, 0, 1, &[])?;
        Ok(self.bytes)
    }

    fn entry(&mut self, name: &str, mode: u32, nlink: u32, data: &[u8]) -> Result<()> {
        if name.is_empty() || name.starts_with('/') || name == TRAILER {
            bail!("cpio: bad entry name {name:?} (relative, not the trailer)");
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.push(name, ino, mode, nlink, data)
    }

    fn push(&mut self, name: &str, ino: u32, mode: u32, nlink: u32, data: &[u8]) -> Result<()> {
        let Ok(filesize) = u32::try_from(data.len()) else {
            bail!("cpio: {name} is larger than newc's 4 GiB limit");
        };
        // namesize counts the terminating NUL (buffer-format.rst).
        let namesize = name.len() + 1;
        let fields: [u32; 13] = [
            ino,
            mode,
            0, // uid: root
            0, // gid: root
            nlink,
            0, // mtime: fixed, so the same inputs give the same archive
            filesize,
            0, // devmajor
            0, // devminor
            0, // rdevmajor
            0, // rdevminor
            namesize as u32,
            0, // check: always 0 for 070701
        ];
        self.last_header = self.bytes.len();
        self.bytes.extend_from_slice(MAGIC.as_bytes());
        for field in fields {
            self.bytes
                .extend_from_slice(format!("{field:08X}").as_bytes());
        }
        self.bytes.extend_from_slice(name.as_bytes());
        self.bytes.push(0);
        // Header plus name are padded to a multiple of 4, and so is the data.
        self.pad();
        self.bytes.extend_from_slice(data);
        self.pad();
        Ok(())
    }

    fn pad(&mut self) {
        while !self.bytes.len().is_multiple_of(4) {
            self.bytes.push(0);
        }
    }
}

/// Gzip-compresses `data` (RD_GZIP is built into Debian's kernel).
pub fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    /// Length of a newc header: the 6-byte magic and 13 fields of 8 hex digits.
    const HEADER_LEN: usize = 6 + 13 * 8;

    /// One parsed entry: (name, mode, nlink, ino, data, (rdevmajor, rdevminor)).
    type Entry = (String, u32, u32, u32, Vec<u8>, (u32, u32));

    /// An independent reader of the format, field by field, checking every padding.
    fn parse(mut bytes: &[u8]) -> Vec<Entry> {
        let mut entries = Vec::new();
        let total = bytes.len();
        loop {
            let offset = total - bytes.len();
            assert_eq!(offset % 4, 0, "header at {offset} not 4-byte aligned");
            assert_eq!(&bytes[..6], b"070701");
            let field = |i: usize| {
                let text = std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).unwrap();
                assert!(
                    text.chars().all(|c| c.is_ascii_hexdigit()),
                    "field {i} {text:?}"
                );
                u32::from_str_radix(text, 16).unwrap()
            };
            let (ino, mode, nlink, filesize, namesize, check) =
                (field(0), field(1), field(4), field(6), field(11), field(12));
            let rdev = (field(9), field(10));
            assert_eq!((field(2), field(3), check), (0, 0, 0));
            let name_end = HEADER_LEN + namesize as usize;
            assert_eq!(bytes[name_end - 1], 0, "name not NUL-terminated");
            let name = std::str::from_utf8(&bytes[HEADER_LEN..name_end - 1])
                .unwrap()
                .to_string();
            let data_start = name_end.next_multiple_of(4);
            assert!(bytes[name_end..data_start].iter().all(|&b| b == 0));
            let data_end = data_start + filesize as usize;
            let data = bytes[data_start..data_end].to_vec();
            let next = data_end.next_multiple_of(4);
            assert!(bytes[data_end..next].iter().all(|&b| b == 0));
            bytes = &bytes[next..];
            let done = name == TRAILER;
            entries.push((name, mode, nlink, ino, data, rdev));
            if done {
                assert!(bytes.is_empty(), "bytes after the trailer");
                return entries;
            }
        }
    }

    #[test]
    fn entries_round_trip_with_padding_and_trailer() {
        let mut archive = Archive::new();
        archive.dir("bin", 0o755).unwrap();
        // Data lengths 0..=4 exercise every padding amount.
        for len in 0..=4 {
            let data: Vec<u8> = (1..=len).collect();
            archive.file(&format!("bin/f{len}"), 0o644, &data).unwrap();
        }
        archive.file("bin/sh", 0o700, b"busybox").unwrap();
        archive.char_dev("console", 0o600, 5, 1).unwrap();
        let bytes = archive.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = parse(&bytes);
        assert_eq!(entries.len(), 1 + 5 + 1 + 1 + 1);
        assert_eq!(entries[0].0, "bin");
        assert_eq!(entries[0].1, 0o040_755);
        assert_eq!(entries[0].2, 2);
        for len in 0..=4u8 {
            let (name, mode, nlink, _, data, _) = &entries[1 + len as usize];
            assert_eq!(name, &format!("bin/f{len}"));
            assert_eq!(*mode, 0o100_644);
            assert_eq!(*nlink, 1);
            assert_eq!(data, &(1..=len).collect::<Vec<u8>>());
        }
        assert_eq!(entries[6].0, "bin/sh");
        assert_eq!(entries[6].1, 0o100_700);
        assert_eq!(entries[6].4, b"busybox");
        assert_eq!(entries[7].0, "console");
        assert_eq!(entries[7].1, 0o020_600);
        assert_eq!(entries[7].5, (5, 1));
        assert_eq!(entries[6].5, (0, 0));
        let (name, mode, _, ino, data, _) = &entries[8];
        assert_eq!((name.as_str(), *mode, *ino), (TRAILER, 0, 0));
        assert!(data.is_empty());
        // Distinct inodes, none of them the trailer's 0.
        let mut inodes: Vec<u32> = entries[..8].iter().map(|e| e.3).collect();
        inodes.sort_unstable();
        inodes.dedup();
        assert_eq!(inodes.len(), 8);
        assert!(!inodes.contains(&0));
    }

    #[test]
    fn header_is_110_bytes_of_ascii_with_namesize_counting_the_nul() {
        let mut archive = Archive::new();
        archive.file("init", 0o755, b"#!x\n").unwrap();
        let bytes = archive.finish().unwrap();
        assert_eq!(HEADER_LEN, 110);
        assert!(bytes[..HEADER_LEN].is_ascii());
        // namesize is field 11: "init" + NUL = 5.
        assert_eq!(&bytes[6 + 8 * 11..6 + 8 * 12], b"00000005");
        // filesize is field 6.
        assert_eq!(&bytes[6 + 8 * 6..6 + 8 * 7], b"00000004");
        // 110 + 5 = 115, padded to 116: the data starts there.
        assert_eq!(&bytes[116..120], b"#!x\n");
    }

    #[test]
    fn refuses_absolute_and_reserved_names() {
        let mut archive = Archive::new();
        assert!(archive.file("/init", 0o755, b"").is_err());
        assert!(archive.file("", 0o755, b"").is_err());
        assert!(archive.dir(TRAILER, 0o755).is_err());
    }

    #[test]
    fn gzip_round_trips() {
        let mut archive = Archive::new();
        archive.file("a", 0o644, &[7u8; 1000]).unwrap();
        let raw = archive.finish().unwrap();
        let packed = gzip(&raw).unwrap();
        assert_eq!(&packed[..2], &[0x1f, 0x8b], "gzip magic");
        assert!(packed.len() < raw.len());
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, raw);
    }
}
