//! What one boot of the self-test asks for beyond its cases: a case to fail on purpose
//! and a failure to inject (`cargo xtask selftest --fail CASE --inject KIND`).
//!
//! These are not build settings. The xtask writes them into a copy of the built image,
//! into the block below (found by its symbol, `IQDIO_SELFTEST_SETTINGS`), so every
//! failure kind boots the one image that the normal self-test boots and nothing is
//! recompiled per kind. The block is read with a volatile load: its bytes are what
//! QEMU's loader put in memory, not the initialiser the compiler saw.
//!
//! Layout (shared with `xtask/src/settings.rs`): the 8-byte [`MAGIC`], then the case to
//! fail and the kind to inject, each UTF-8 padded with NUL bytes to [`FIELD`] bytes (all
//! NUL: none).

/// Bytes per field.
pub const FIELD: usize = 32;

/// The block's first bytes: the xtask checks them before it writes.
pub const MAGIC: [u8; 8] = *b"IQDSET\x00\x01";

/// The settings block as it lies in the image.
#[repr(C)]
pub struct Block {
    magic: [u8; 8],
    fail: [u8; FIELD],
    inject: [u8; FIELD],
}

/// The block the xtask writes into a copy of the image (no case fails, nothing is
/// injected in the image as built).
#[unsafe(no_mangle)]
#[used]
static IQDIO_SELFTEST_SETTINGS: Block = Block {
    magic: MAGIC,
    fail: [0; FIELD],
    inject: [0; FIELD],
};

/// One field's text: the bytes up to the first NUL.
pub struct Text {
    bytes: [u8; FIELD],
    len: usize,
}

impl Text {
    fn new(bytes: [u8; FIELD]) -> Self {
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(FIELD);
        Self { bytes, len }
    }

    /// The text, `None` when the field is empty. Bytes that are not UTF-8 read as a name
    /// no case or kind has, so they fail the boot rather than go unnoticed.
    pub fn get(&self) -> Option<&str> {
        let bytes = self.bytes.get(..self.len)?;
        if bytes.is_empty() {
            return None;
        }
        Some(core::str::from_utf8(bytes).unwrap_or("(not UTF-8)"))
    }
}

fn block() -> Block {
    // SAFETY: the pointer is to a static of that type, aligned and always initialised;
    // the read is volatile because the loaded bytes may differ from the initialiser.
    unsafe { (&raw const IQDIO_SELFTEST_SETTINGS).read_volatile() }
}

/// The case to fail on purpose (`--fail`).
pub fn fail() -> Text {
    Text::new(block().fail)
}

/// The kind of failure to inject (`--inject`).
pub fn inject() -> Text {
    Text::new(block().inject)
}
