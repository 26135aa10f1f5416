//! A PL011 UART for a guest's console: transmit only, never busy, output handed to the
//! hypervisor a line at a time.
//!
//! Offsets and ID values are from the PrimeCell UART (PL011) Technical Reference Manual
//! (DDI 0183, 3.2 "Summary of registers"); `arm-gic`/`aarch64-cpu` have nothing for it,
//! and the `arm-pl011` style driver crates describe a UART to drive, not one to answer.
//! What Linux's `amba-pl011` driver and earlycon touch, and the answers that worked, are
//! from LINUX-GUESTS.md: the ID registers read once each as 32 bits, DR written with 8-
//! and 16-bit stores, FR polled; CR, IMSC, ICR, IBRD, FBRD, LCR_H, IFLS with 16-bit
//! accesses.
//!
//! Refused (RAZ/WI, counted): 64-bit accesses, misaligned ones, unknown offsets. The
//! receive side is always empty (FR.RXFE, DR reads 0) and the model never raises its
//! interrupt: FR reads TXFE | RXFE so a driver writes without waiting for one.

/// UARTDR: data.
pub const DR: u64 = 0x000;
/// UARTRSR/UARTECR: receive status, error clear.
pub const RSR: u64 = 0x004;
/// UARTFR: flags.
pub const FR: u64 = 0x018;
/// UARTILPR: IrDA low-power counter.
pub const ILPR: u64 = 0x020;
/// UARTIBRD: integer baud rate divisor.
pub const IBRD: u64 = 0x024;
/// UARTFBRD: fractional baud rate divisor.
pub const FBRD: u64 = 0x028;
/// UARTLCR_H: line control.
pub const LCR_H: u64 = 0x02C;
/// UARTCR: control.
pub const CR: u64 = 0x030;
/// UARTIFLS: interrupt FIFO level select.
pub const IFLS: u64 = 0x034;
/// UARTIMSC: interrupt mask set/clear.
pub const IMSC: u64 = 0x038;
/// UARTRIS: raw interrupt status.
pub const RIS: u64 = 0x03C;
/// UARTMIS: masked interrupt status.
pub const MIS: u64 = 0x040;
/// UARTICR: interrupt clear (write-only).
pub const ICR: u64 = 0x044;
/// UARTDMACR: DMA control.
pub const DMACR: u64 = 0x048;
/// UARTPeriphID0; PeriphID0-3 and PCellID0-3 follow every 4 bytes up to 0xFFC.
pub const PERIPH_ID0: u64 = 0xFE0;

/// The ID registers 0xFE0-0xFFC in order: PeriphID0-3 (part 0x011, designer 0x41 'A',
/// revision 1) then PCellID0-3 (0xB105F00D), as the AMBA bus reads them to match the
/// driver.
pub const ID_VALUES: [u8; 8] = [0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1];

/// UARTFR: TXFE (bit 7) | RXFE (bit 4): transmit FIFO empty, receive FIFO empty.
pub const FR_VALUE: u32 = 0x90;

/// One line of guest output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Line<'a> {
    /// The bytes, without the '\n' and a '\r' before it.
    pub bytes: &'a [u8],
    /// The guest ended the line with '\n'; false when the buffer filled or on
    /// [`Pl011::flush`] (the hypervisor prints it and marks it continued).
    pub complete: bool,
}

/// A PL011 with a line buffer of `N` bytes.
#[derive(Clone, Debug)]
pub struct Pl011<const N: usize> {
    line: [u8; N],
    len: usize,
    /// The previous write handed out the buffer: empty it before the next byte.
    handed_out: bool,
    cr: u16,
    ibrd: u16,
    fbrd: u8,
    lcr_h: u8,
    ifls: u8,
    imsc: u16,
    dmacr: u8,
    ilpr: u8,
    ignored: u64,
}

impl<const N: usize> Default for Pl011<N> {
    fn default() -> Self {
        Self::new()
    }
}

// Writable widths of each register (DDI 0183 3.3).
const CR_MASK: u16 = 0xFF87;
const IBRD_MASK: u16 = 0xFFFF;
const FBRD_MASK: u8 = 0x3F;
const IFLS_MASK: u8 = 0x3F;
const IMSC_MASK: u16 = 0x7FF;
const DMACR_MASK: u8 = 0x7;

impl<const N: usize> Pl011<N> {
    /// A UART at reset: CR 0x300 (TXE | RXE, DDI 0183 3.3.8), IFLS 0x12 (half full),
    /// everything else 0.
    pub const fn new() -> Self {
        Self {
            line: [0; N],
            len: 0,
            handed_out: false,
            cr: 0x300,
            ibrd: 0,
            fbrd: 0,
            lcr_h: 0,
            ifls: 0x12,
            imsc: 0,
            dmacr: 0,
            ilpr: 0,
            ignored: 0,
        }
    }

    /// Accesses answered RAZ/WI: unknown offsets, 64-bit or misaligned accesses.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    fn access_ok(&mut self, offset: u64, size: u8) -> bool {
        // The PL011's registers are 32-bit slots; 8/16/32-bit accesses to the low bytes of
        // a slot are what drivers make (Linux uses 16-bit, earlycon 8-bit on DR).
        let ok = matches!(size, 1 | 2 | 4) && offset.is_multiple_of(4) && offset < 0x1000;
        if !ok {
            self.ignored += 1;
        }
        ok
    }

    /// A guest read.
    pub fn read(&mut self, offset: u64, size: u8) -> u64 {
        if !self.access_ok(offset, size) {
            return 0;
        }
        let value: u32 = match offset {
            // Nothing is ever received.
            DR | RSR | RIS | MIS => 0,
            FR => FR_VALUE,
            ILPR => self.ilpr.into(),
            IBRD => self.ibrd.into(),
            FBRD => self.fbrd.into(),
            LCR_H => self.lcr_h.into(),
            CR => self.cr.into(),
            IFLS => self.ifls.into(),
            IMSC => self.imsc.into(),
            DMACR => self.dmacr.into(),
            0xFE0..=0xFFC => ID_VALUES[((offset - PERIPH_ID0) / 4) as usize].into(),
            // ICR is write-only: reads as 0 without counting.
            ICR => 0,
            _ => {
                self.ignored += 1;
                0
            }
        };
        u64::from(value) & size_mask(size)
    }

    /// A guest write. A byte to DR that ends a line (or fills the buffer) hands the line
    /// out; the hypervisor prints it with its partition prefix before the next access.
    pub fn write(&mut self, offset: u64, size: u8, value: u64) -> Option<Line<'_>> {
        if !self.access_ok(offset, size) {
            return None;
        }
        let value = value & size_mask(size);
        match offset {
            DR => return self.push(value as u8),
            ILPR => self.ilpr = value as u8,
            IBRD => self.ibrd = value as u16 & IBRD_MASK,
            FBRD => self.fbrd = value as u8 & FBRD_MASK,
            LCR_H => self.lcr_h = value as u8,
            CR => self.cr = value as u16 & CR_MASK,
            IFLS => self.ifls = value as u8 & IFLS_MASK,
            IMSC => self.imsc = value as u16 & IMSC_MASK,
            DMACR => self.dmacr = value as u8 & DMACR_MASK,
            // Clearing interrupts that never rise; read-only registers ignore writes.
            RSR | ICR | FR | RIS | MIS | 0xFE0..=0xFFC => {}
            _ => self.ignored += 1,
        }
        None
    }

    fn push(&mut self, byte: u8) -> Option<Line<'_>> {
        if self.handed_out {
            self.len = 0;
            self.handed_out = false;
        }
        if byte == b'\n' {
            self.handed_out = true;
            let mut end = self.len;
            if end > 0 && self.line[end - 1] == b'\r' {
                end -= 1;
            }
            return Some(Line {
                bytes: &self.line[..end],
                complete: true,
            });
        }
        let slot = self.line.get_mut(self.len)?;
        *slot = byte;
        self.len += 1;
        if self.len == N {
            self.handed_out = true;
            return Some(Line {
                bytes: &self.line[..N],
                complete: false,
            });
        }
        None
    }

    /// Output not yet ended by '\n' (at the guest's poweroff or reset), handed out once.
    pub fn flush(&mut self) -> Option<Line<'_>> {
        if self.handed_out || self.len == 0 {
            return None;
        }
        self.handed_out = true;
        Some(Line {
            bytes: &self.line[..self.len],
            complete: false,
        })
    }
}

fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        _ => 0xFFFF_FFFF,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amba_id_probe_reads_the_pl011_ids() {
        let mut uart = Pl011::<16>::new();
        let ids: [u64; 8] = core::array::from_fn(|i| uart.read(PERIPH_ID0 + 4 * i as u64, 4));
        assert_eq!(ids, [0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1]);
        assert_eq!(uart.ignored(), 0);
    }

    #[test]
    fn earlycon_polls_fr_and_writes_dr_bytes_into_lines() {
        let mut uart = Pl011::<64>::new();
        let mut lines = 0;
        for &byte in b"Booting Linux\r\n" {
            assert_eq!(uart.read(FR, 4), 0x90);
            if let Some(line) = uart.write(DR, 1, u64::from(byte)) {
                assert_eq!(
                    line,
                    Line {
                        bytes: b"Booting Linux",
                        complete: true
                    }
                );
                lines += 1;
            }
        }
        assert_eq!(lines, 1);
        // The next line starts empty; a 16-bit store keeps only the byte.
        assert_eq!(uart.write(DR, 2, 0x0141), None);
        assert_eq!(uart.write(DR, 2, u64::from(b'\n')).unwrap().bytes, b"A");
    }

    #[test]
    fn a_full_buffer_is_handed_out_unfinished_and_flush_hands_out_the_rest() {
        let mut uart = Pl011::<4>::new();
        let mut out = None;
        for &byte in b"abcd" {
            out = uart
                .write(DR, 1, u64::from(byte))
                .map(|l| (l.bytes.len(), l.complete));
        }
        assert_eq!(out, Some((4, false)));
        uart.write(DR, 1, u64::from(b'e'));
        assert_eq!(
            uart.flush(),
            Some(Line {
                bytes: b"e",
                complete: false
            })
        );
        assert_eq!(uart.flush(), None);
        assert_eq!(
            uart.write(DR, 1, u64::from(b'\n')),
            Some(Line {
                bytes: b"",
                complete: true
            })
        );
    }

    #[test]
    fn driver_registers_read_back_with_16_bit_accesses() {
        let mut uart = Pl011::<8>::new();
        assert_eq!(uart.read(CR, 2), 0x300);
        for (offset, value) in [
            (IBRD, 0x27),
            (FBRD, 0x4),
            (LCR_H, 0x70),
            (CR, 0x301),
            (IFLS, 0x12),
            (IMSC, 0x50),
        ] {
            uart.write(offset, 2, value);
            assert_eq!(uart.read(offset, 2), value, "offset {offset:#x}");
        }
        uart.write(ICR, 2, 0x7FF);
        uart.write(FR, 2, 0);
        assert_eq!(uart.read(FR, 2), 0x90);
        // Bits beyond a register's width are dropped.
        uart.write(FBRD, 4, 0xFFFF);
        assert_eq!(uart.read(FBRD, 4), 0x3F);
        assert_eq!(uart.read(DR, 2), 0, "nothing received");
        assert_eq!(uart.ignored(), 0);
    }

    #[test]
    fn wide_misaligned_and_unknown_accesses_are_counted() {
        let mut uart = Pl011::<8>::new();
        assert_eq!(uart.read(FR, 8), 0);
        assert_eq!(uart.write(DR + 1, 1, u64::from(b'\n')), None);
        assert_eq!(uart.read(0x100, 4), 0);
        uart.write(0x2000, 4, 1);
        assert_eq!(uart.ignored(), 4);
        assert_eq!(uart.flush(), None, "the misaligned byte was not taken");
    }
}
