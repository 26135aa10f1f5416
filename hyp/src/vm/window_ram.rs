//! A partition's window as a virtio device model sees it
//! ([`iqdio_vdev::virtio_net::GuestMemory`]): guest addresses `[ipa, ipa + size)` are
//! physical `[pa, pa + size)`, mapped as normal memory in the hypervisor's own tables.
//!
//! Every access is checked against the window first (overflow-safe; a range that is
//! empty, wraps or leaves the window is refused, never shortened); the copies are
//! volatile byte accesses (the partition runs on this memory too), and 16-bit indices
//! single aligned loads and stores, as the model's ordering notes ask.
//!
//! The bare-metal partition's device ([`super::vnetdev`]) uses it over the partition's
//! window; `linux::GuestRam` is this type over a Linux guest's RAM.

use iqdio_vdev::virtio_net::{GuestMemory, OutsideWindow};

/// One window of guest memory, hypervisor-mapped.
#[derive(Clone, Copy, Debug)]
pub struct WindowRam {
    ipa: u64,
    pa: u64,
    size: u64,
}

impl WindowRam {
    /// The window of `size` bytes at guest address `ipa`, at physical (and hypervisor
    /// virtual, the map is flat) address `pa`.
    ///
    /// # Safety
    ///
    /// `[pa, pa + size)` must be mapped normal memory in the hypervisor's tables for as
    /// long as the value is used, belong to the partition the device serves, hold
    /// nothing of the hypervisor's own, and never be referenced by Rust references
    /// meanwhile (the partition and the fabric touch it through raw accesses only).
    pub const unsafe fn new(ipa: u64, pa: u64, size: u64) -> Self {
        Self { ipa, pa, size }
    }

    /// The window: its guest address, physical address and size.
    pub fn bounds(&self) -> (u64, u64, u64) {
        (self.ipa, self.pa, self.size)
    }

    /// The physical address of `[ipa, ipa + len)`, if it lies wholly in the window.
    fn at(&self, ipa: u64, len: u64) -> Result<usize, OutsideWindow> {
        let off = ipa.checked_sub(self.ipa).ok_or(OutsideWindow)?;
        let end = off.checked_add(len).ok_or(OutsideWindow)?;
        if len == 0 || end > self.size {
            return Err(OutsideWindow);
        }
        usize::try_from(self.pa + off).map_err(|_| OutsideWindow)
    }
}

impl GuestMemory for WindowRam {
    fn contains(&self, ipa: u64, len: u64) -> bool {
        self.at(ipa, len).is_ok()
    }

    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), OutsideWindow> {
        let pa = self.at(ipa, buf.len() as u64)?;
        for (i, b) in buf.iter_mut().enumerate() {
            let p = core::ptr::with_exposed_provenance::<u8>(pa + i);
            // SAFETY: `at` checked the range lies in the window, which `new`'s contract
            // makes mapped normal memory with nothing of the hypervisor's in it.
            *b = unsafe { p.read_volatile() };
        }
        Ok(())
    }

    fn write(&mut self, ipa: u64, data: &[u8]) -> Result<(), OutsideWindow> {
        let pa = self.at(ipa, data.len() as u64)?;
        for (i, &b) in data.iter().enumerate() {
            let p = core::ptr::with_exposed_provenance_mut::<u8>(pa + i);
            // SAFETY: as in `read`: inside the window.
            unsafe { p.write_volatile(b) };
        }
        Ok(())
    }

    fn read_u16(&self, ipa: u64) -> Result<u16, OutsideWindow> {
        let pa = self.at(ipa, 2)?;
        if pa % 2 != 0 {
            return Err(OutsideWindow);
        }
        let p = core::ptr::with_exposed_provenance::<u16>(pa);
        // SAFETY: inside the window (checked), 2-aligned: one single-copy-atomic load.
        Ok(u16::from_le(unsafe { p.read_volatile() }))
    }

    fn write_u16(&mut self, ipa: u64, value: u16) -> Result<(), OutsideWindow> {
        let pa = self.at(ipa, 2)?;
        if pa % 2 != 0 {
            return Err(OutsideWindow);
        }
        let p = core::ptr::with_exposed_provenance_mut::<u16>(pa);
        // SAFETY: inside the window (checked), 2-aligned: one single-copy-atomic store.
        unsafe { p.write_volatile(value.to_le()) };
        Ok(())
    }
}
