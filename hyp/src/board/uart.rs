//! PL011 UART output, and the emergency console that takes no lock.
//!
//! The UART carries the defmt stream: rzCOBS frames, each ended by a zero byte. An
//! emergency message is plain text framed the same way (`0x00`, [`EMERGENCY_MARKER`],
//! text, `0x00`), so the host can tell it from a defmt frame and print it as it is, and
//! a defmt frame it interrupts is merely dropped as malformed.

use core::fmt;

use super::layout::UART_BASE;

/// Data register.
const UARTDR: usize = 0x00;
/// Flag register.
const UARTFR: usize = 0x18;
/// UARTFR.TXFF: transmit FIFO full.
const FR_TXFF: u32 = 1 << 5;

/// First bytes of an emergency frame (after its leading zero byte).
pub const EMERGENCY_MARKER: &[u8] = b"!iqdio! ";

/// Writes bytes to the UART, waiting while its FIFO is full. QEMU needs no setup.
///
/// Callers serialise frames themselves (the logger holds the critical section); the
/// emergency path deliberately does not.
pub(crate) fn write_bytes(bytes: &[u8]) {
    for &byte in bytes {
        // SAFETY: UART_BASE is the PL011 of the `virt` machine, mapped as device memory by
        // the initial page table; these registers have no memory-safety side effects.
        unsafe {
            let fr = core::ptr::with_exposed_provenance::<u32>(UART_BASE + UARTFR);
            while fr.read_volatile() & FR_TXFF != 0 {
                core::hint::spin_loop();
            }
            core::ptr::with_exposed_provenance_mut::<u32>(UART_BASE + UARTDR)
                .write_volatile(u32::from(byte));
        }
    }
}

/// Writes one emergency message without taking any lock: for fault reports and panics
/// that cannot use the logger. `f` writes the text; the frame is closed afterwards.
pub fn emergency(f: impl FnOnce(&mut Emergency)) {
    write_bytes(&[0]);
    write_bytes(EMERGENCY_MARKER);
    f(&mut Emergency);
    write_bytes(b"\0");
}

/// Writer of an emergency message: text, hex and decimal numbers without `core::fmt`
/// (which a broken state may not survive), and `core::fmt::Write` when it is worth it.
pub struct Emergency;

impl Emergency {
    /// Writes text. Zero bytes are replaced, since they end the frame.
    pub fn str(&mut self, s: &str) -> &mut Self {
        for b in s.bytes() {
            write_bytes(&[if b == 0 { b'?' } else { b }]);
        }
        self
    }

    /// Writes `0x` and the number in hex.
    pub fn hex(&mut self, value: u64) -> &mut Self {
        let mut buf = [0u8; 18];
        buf[0] = b'0';
        buf[1] = b'x';
        for (i, slot) in buf[2..].iter_mut().enumerate() {
            let nibble = (value >> (60 - 4 * i)) & 0xf;
            *slot = b"0123456789abcdef"[nibble as usize];
        }
        write_bytes(&buf);
        self
    }

    /// Writes the number in decimal.
    pub fn dec(&mut self, mut value: u64) -> &mut Self {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (value % 10) as u8;
            value /= 10;
            if value == 0 {
                break;
            }
        }
        write_bytes(&buf[i..]);
        self
    }
}

impl fmt::Write for Emergency {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.str(s);
        Ok(())
    }
}
