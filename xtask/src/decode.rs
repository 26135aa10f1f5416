//! Turns the image's UART bytes into readable lines: defmt frames decoded with the ELF's
//! table (and file:line from its debug info), emergency messages printed as they are.
//!
//! The UART carries rzCOBS frames that each end in a zero byte. The board's emergency
//! console (fault reports, panics inside the logger) writes `0x00 "!iqdio! " text 0x00`,
//! which this splitter recognises before handing a frame to the defmt decoder.

use std::{fmt, path::Path};

use anyhow::{Context, Result, bail};
use defmt_decoder::{DecodeError, Locations, StreamDecoder, Table};

/// Marker after the zero byte that starts an emergency message; the same bytes as
/// `EMERGENCY_MARKER` in `hyp/src/board/uart.rs`.
pub const EMERGENCY_MARKER: &[u8] = b"!iqdio! ";

/// One decoded line of the image's output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The defmt timestamp, as the image formats it (`core N seconds`).
    pub timestamp: Option<String>,
    /// Log level (`None` for `println!` and emergency messages).
    pub level: Option<String>,
    /// The message.
    pub message: String,
    /// Where it was logged, `file:line`.
    pub location: Option<String>,
    /// Printed by the emergency console (a fault report or an unloggable panic).
    pub emergency: bool,
}

/// Log lines (`info!`, `warn!`, ...) read `[core N seconds] LEVEL message (file:line)`;
/// `println!` lines are the image's plain output and print as they are (a summary table,
/// a last line with a fixed form); emergency messages start with `!!`.
impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.emergency {
            return write!(f, "!! {}", self.message);
        }
        if self.level.is_none() {
            return write!(f, "{}", self.message);
        }
        if let Some(ts) = &self.timestamp {
            write!(f, "[{ts}] ")?;
        }
        if let Some(level) = &self.level {
            write!(f, "{level:<5} ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(location) = &self.location {
            write!(f, " ({location})")?;
        }
        Ok(())
    }
}

/// What the splitter found between two zero bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk<'a> {
    /// A defmt frame (without its terminating zero).
    Frame(&'a [u8]),
    /// An emergency message's text.
    Emergency(&'a [u8]),
}

/// Collects bytes and cuts them into zero-terminated chunks.
#[derive(Default)]
pub struct Splitter {
    pending: Vec<u8>,
}

impl Splitter {
    /// Adds bytes; calls `each` for every complete, non-empty chunk.
    pub fn push(&mut self, bytes: &[u8], mut each: impl FnMut(Chunk<'_>)) {
        for &byte in bytes {
            if byte != 0 {
                self.pending.push(byte);
                continue;
            }
            if !self.pending.is_empty() {
                let chunk = std::mem::take(&mut self.pending);
                match chunk.strip_prefix(EMERGENCY_MARKER) {
                    Some(text) => each(Chunk::Emergency(text)),
                    None => each(Chunk::Frame(&chunk)),
                }
            }
        }
    }

    /// Bytes after the last zero (a frame cut off when the machine stopped).
    pub fn leftover(&self) -> usize {
        self.pending.len()
    }
}

/// The defmt table and locations of one ELF.
pub struct Decoder {
    table: Table,
    locations: Locations,
    root: String,
}

impl Decoder {
    /// Reads the defmt table of `elf` (its `.defmt` section) and the locations.
    pub fn new(elf: &Path, workspace_root: &Path) -> Result<Self> {
        let bytes = std::fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
        let table = match Table::parse(&bytes) {
            Ok(Some(table)) => table,
            Ok(None) => bail!(
                "{} has no .defmt section (linked without defmt.x?)",
                elf.display()
            ),
            Err(e) => bail!("reading the defmt table of {}: {e}", elf.display()),
        };
        let locations = table.get_locations(&bytes).unwrap_or_default();
        Ok(Self {
            table,
            locations,
            root: format!("{}/", workspace_root.display()),
        })
    }

    /// A stream decoder for one run.
    pub fn stream(&self) -> Stream<'_> {
        Stream {
            decoder: self,
            stream: self.table.new_stream_decoder(),
            malformed: 0,
        }
    }
}

/// Decodes the frames of one run.
pub struct Stream<'a> {
    decoder: &'a Decoder,
    stream: Box<dyn StreamDecoder + Send + Sync + 'a>,
    /// Frames that did not decode.
    pub malformed: usize,
}

impl Stream<'_> {
    /// Decodes one chunk into a line (`None` if the frame is malformed).
    pub fn decode(&mut self, chunk: Chunk<'_>) -> Option<Line> {
        let frame = match chunk {
            Chunk::Emergency(text) => {
                return Some(Line {
                    timestamp: None,
                    level: None,
                    message: String::from_utf8_lossy(text).trim_end().to_string(),
                    location: None,
                    emergency: true,
                });
            }
            Chunk::Frame(frame) => frame,
        };
        self.stream.received(frame);
        self.stream.received(&[0]);
        match self.stream.decode() {
            Ok(frame) => {
                let location = self.decoder.locations.get(&frame.index()).map(|loc| {
                    let file = loc.file.display().to_string();
                    let file = file
                        .strip_prefix(&self.decoder.root)
                        .unwrap_or(&file)
                        .to_string();
                    format!("{file}:{}", loc.line)
                });
                Some(Line {
                    timestamp: frame.display_timestamp().map(|ts| ts.to_string()),
                    level: frame.level().map(|l| l.as_str().to_uppercase()),
                    message: frame.display_message().to_string(),
                    location,
                    emergency: false,
                })
            }
            Err(DecodeError::UnexpectedEof | DecodeError::Malformed) => {
                self.malformed += 1;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(bytes: &[u8]) -> Vec<String> {
        let mut splitter = Splitter::default();
        let mut out = Vec::new();
        splitter.push(bytes, |chunk| {
            out.push(match chunk {
                Chunk::Frame(f) => format!("frame {f:?}"),
                Chunk::Emergency(t) => format!("emergency {}", String::from_utf8_lossy(t)),
            })
        });
        out
    }

    #[test]
    fn splits_frames_and_emergency_messages() {
        let mut bytes = vec![0, 0, 5, 6, 0];
        bytes.extend_from_slice(b"\0!iqdio! FAULT on core 1\0");
        bytes.extend_from_slice(&[7, 0, 9]);
        assert_eq!(
            chunks(&bytes),
            ["frame [5, 6]", "emergency FAULT on core 1", "frame [7]"]
        );
    }

    #[test]
    fn a_frame_cut_by_an_emergency_message_stays_a_frame() {
        // Core 2 was mid-frame when core 1 faulted: the partial frame ends at the
        // emergency message's leading zero and fails to decode; the message survives.
        let bytes = b"\x03\x04\0!iqdio! FAULT\0";
        assert_eq!(chunks(bytes), ["frame [3, 4]", "emergency FAULT"]);
    }

    #[test]
    fn marker_matches_the_board() {
        let uart = include_str!("../../hyp/src/board/uart.rs");
        let marker = std::str::from_utf8(EMERGENCY_MARKER).unwrap();
        assert!(
            uart.contains(&format!("EMERGENCY_MARKER: &[u8] = b\"{marker}\"")),
            "hyp/src/board/uart.rs and the xtask disagree on the emergency marker"
        );
    }

    #[test]
    fn displays_lines_like_the_readme_says() {
        let line = Line {
            timestamp: Some("core 2 0.004211".into()),
            level: Some("INFO".into()),
            message: "partition 2 up".into(),
            location: Some("src/bin/partitions.rs:30".into()),
            emergency: false,
        };
        assert_eq!(
            line.to_string(),
            "[core 2 0.004211] INFO  partition 2 up (src/bin/partitions.rs:30)"
        );
        let plain = Line {
            level: None,
            message: "partitions 4, frames sent 8".into(),
            ..line.clone()
        };
        assert_eq!(plain.to_string(), "partitions 4, frames sent 8");
        let fault = Line {
            emergency: true,
            message: "FAULT on core 1".into(),
            ..line
        };
        assert_eq!(fault.to_string(), "!! FAULT on core 1");
    }
}
