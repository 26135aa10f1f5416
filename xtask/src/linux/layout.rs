//! Where a Linux guest's pieces sit in its partition window, in one place.
//!
//! The hypervisor follows this layout: it gives each Linux partition a window of
//! [`WINDOW_SIZE`] bytes that the guest sees at intermediate physical address
//! [`WINDOW_IPA_BASE`] (stage 2 maps the IPA window onto the partition's physical
//! window), enters the kernel at [`Layout::image`] with x0 = [`Layout::dtb`], and leaves
//! the blobs to QEMU's generic loader, which writes them straight into the physical
//! window ([`Placement::loader_arguments`]), so the hypervisor image need not embed a
//! 27 MB kernel.
//!
//! Boot-protocol rules this layout keeps (Linux `Documentation/arch/arm64/booting.rst`):
//! the Image at a 2 MiB-aligned base plus its `text_offset` (0 in Debian's kernels);
//! the initrd anywhere in RAM the kernel maps linearly; the device tree 8-byte aligned,
//! at most 2 MiB, and alone in its 2 MiB region.

use std::path::Path;

use anyhow::{Result, bail};

/// One mebibyte.
pub const MIB: u64 = 1 << 20;

/// The guest-physical (IPA) base of every Linux guest's window: RAM's base on QEMU's
/// `virt` machine (hw/arm/virt.c, VIRT_MEM), so the device addresses of the guest's
/// device tree ([`super::dtb`]) are the ones QEMU's own board uses, and a bare QEMU
/// boot of the same tree (`cargo xtask linux-bare`) is the identity case.
pub const WINDOW_IPA_BASE: u64 = 0x4000_0000;

/// Size of a Linux guest's window. Debian's cloud kernel needs about 28 MB for its image
/// (BSS included) and boots to a shell in 128 MiB; 512 MiB leaves the initrd and the
/// workload room, and is what the EL2 probe booted (`LINUX-GUESTS.md`).
pub const WINDOW_SIZE: u64 = 512 * MIB;

/// Alignment of a window, in physical and in IPA space: the kernel's base must be 2 MiB
/// aligned (booting.rst), and stage 2 maps RAM as 2 MiB blocks.
pub const WINDOW_ALIGN: u64 = 2 * MIB;

/// The Image's offset in the window: its `text_offset` is 0, so it sits at the base.
pub const IMAGE_OFFSET: u64 = 0;

/// The initrd's offset: 128 MiB, well past the kernel's image_size (27.9 MB for
/// 6.1 cloud-arm64) and its early allocations.
pub const INITRD_OFFSET: u64 = 128 * MIB;

/// The device tree's distance from the window's end: it takes the last 2 MiB region,
/// which it has to itself.
pub const DTB_FROM_END: u64 = 2 * MIB;

/// The largest device tree booting.rst allows.
pub const DTB_MAX: u64 = 2 * MIB;

/// A guest's window and where each blob goes, as guest-physical (IPA) addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The window's base as the guest sees it.
    pub base: u64,
    /// The window's size.
    pub size: u64,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            base: WINDOW_IPA_BASE,
            size: WINDOW_SIZE,
        }
    }
}

impl Layout {
    /// Where the Image goes, and where the kernel is entered.
    pub fn image(&self) -> u64 {
        self.base + IMAGE_OFFSET
    }

    /// Where the initrd goes.
    pub fn initrd(&self) -> u64 {
        self.base + INITRD_OFFSET
    }

    /// Where the device tree goes (x0 at entry).
    pub fn dtb(&self) -> u64 {
        self.end() - DTB_FROM_END
    }

    /// The first byte past the window.
    pub fn end(&self) -> u64 {
        self.base + self.size
    }

    /// Checks that blobs of these sizes fit without overlapping: `image_size` is the
    /// memory the kernel claims from its header (BSS included), not the file's length.
    pub fn check(&self, image_size: u64, initrd_len: u64, dtb_len: u64) -> Result<()> {
        if !self.base.is_multiple_of(WINDOW_ALIGN) || !self.size.is_multiple_of(WINDOW_ALIGN) {
            bail!(
                "window {:#x}+{:#x} is not {} MiB aligned",
                self.base,
                self.size,
                WINDOW_ALIGN / MIB
            );
        }
        if self.size <= INITRD_OFFSET || self.dtb() < self.initrd() {
            bail!(
                "window of {} MiB too small for this layout",
                self.size / MIB
            );
        }
        if IMAGE_OFFSET + image_size > INITRD_OFFSET {
            bail!(
                "kernel needs {image_size} bytes; the initrd starts {} MiB into the window",
                INITRD_OFFSET / MIB
            );
        }
        if self.initrd() + initrd_len > self.dtb() {
            bail!(
                "initrd of {initrd_len} bytes overruns the device tree at {:#x} \
                 (at most {} bytes fit)",
                self.dtb(),
                self.dtb() - self.initrd()
            );
        }
        if dtb_len > DTB_MAX || dtb_len > self.end() - self.dtb() {
            bail!("device tree of {dtb_len} bytes does not fit in its 2 MiB region");
        }
        Ok(())
    }
}

/// A guest's window in physical memory and the IPA layout it sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// The window's physical base (where QEMU's loader writes).
    pub phys_base: u64,
    /// What the guest sees.
    pub layout: Layout,
}

impl Placement {
    /// A window at `phys_base`: the guest sees it as [`Layout::default`], whatever its
    /// physical place.
    pub fn new(phys_base: u64) -> Self {
        Self {
            phys_base,
            layout: Layout::default(),
        }
    }

    /// A window seen where it is, physical = guest-physical: a boot with no stage 2
    /// (`cargo xtask linux-bare`).
    pub fn identity(base: u64) -> Self {
        Self {
            phys_base: base,
            layout: Layout {
                base,
                size: WINDOW_SIZE,
            },
        }
    }

    /// The physical address of a guest-physical one inside the window.
    pub fn phys(&self, ipa: u64) -> u64 {
        ipa - self.layout.base + self.phys_base
    }

    /// QEMU's generic-loader arguments that write the Image, the initrd and the device
    /// tree into the physical window, raw (`force-raw=on`: an arm64 Image is no ELF).
    pub fn loader_arguments(&self, image: &Path, initrd: &Path, dtb: &Path) -> Vec<String> {
        [
            (image, self.layout.image()),
            (initrd, self.layout.initrd()),
            (dtb, self.layout.dtb()),
        ]
        .into_iter()
        .flat_map(|(file, ipa)| {
            [
                "-device".to_string(),
                format!(
                    "loader,file={},addr={:#x},force-raw=on",
                    qemu_escape(&file.display().to_string()),
                    self.phys(ipa)
                ),
            ]
        })
        .collect()
    }
}

/// A value inside a QEMU option list: a comma is written twice.
pub fn qemu_escape(value: &str) -> String {
    value.replace(',', ",,")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_layout_addresses() {
        let layout = Layout::default();
        assert_eq!(layout.image(), 0x4000_0000);
        assert_eq!(layout.initrd(), 0x4800_0000);
        assert_eq!(layout.dtb(), 0x5fe0_0000);
        assert_eq!(layout.end(), 0x6000_0000);
        assert!(layout.image().is_multiple_of(2 * MIB));
        assert!(layout.dtb().is_multiple_of(2 * MIB));
    }

    #[test]
    fn check_accepts_debian_sizes_and_refuses_overlaps() {
        let layout = Layout::default();
        // Debian 6.1 cloud-arm64: image_size 27 918 336; an initramfs of about 2 MB.
        layout.check(27_918_336, 2_000_000, 2_000).unwrap();
        // The kernel running into the initrd.
        assert!(layout.check(INITRD_OFFSET + 1, 0, 0).is_err());
        layout.check(INITRD_OFFSET, 0, 0).unwrap();
        // The initrd running into the device tree: exactly fitting is fine.
        let room = layout.dtb() - layout.initrd();
        layout.check(0, room, 0).unwrap();
        assert!(layout.check(0, room + 1, 0).is_err());
        // A device tree over 2 MiB.
        assert!(layout.check(0, 0, DTB_MAX + 1).is_err());
        layout.check(0, 0, DTB_MAX).unwrap();
    }

    #[test]
    fn check_refuses_misaligned_or_small_windows() {
        let odd = Layout {
            base: WINDOW_IPA_BASE + 4096,
            size: WINDOW_SIZE,
        };
        assert!(odd.check(0, 0, 0).is_err());
        let small = Layout {
            base: WINDOW_IPA_BASE,
            size: 64 * MIB,
        };
        assert!(small.check(0, 0, 0).is_err());
    }

    #[test]
    fn a_larger_window_keeps_the_dtb_in_its_last_2_mib() {
        let layout = Layout {
            base: WINDOW_IPA_BASE,
            size: 1024 * MIB,
        };
        assert_eq!(layout.dtb(), 0x7fe0_0000);
        layout.check(27_918_336, 100 * MIB, 4096).unwrap();
    }

    #[test]
    fn loader_writes_each_blob_at_its_physical_place() {
        // Partition 2 of a hypervisor that puts 512 MiB windows from 0x6000_0000.
        let placement = Placement::new(0x6000_0000 + 2 * WINDOW_SIZE);
        assert_eq!(placement.phys(placement.layout.image()), 0xa000_0000);
        let args = placement.loader_arguments(
            Path::new("/t/Image"),
            Path::new("/t/initrd,1.gz"),
            Path::new("/t/guest2.dtb"),
        );
        assert_eq!(
            args,
            [
                "-device",
                "loader,file=/t/Image,addr=0xa0000000,force-raw=on",
                "-device",
                "loader,file=/t/initrd,,1.gz,addr=0xa8000000,force-raw=on",
                "-device",
                "loader,file=/t/guest2.dtb,addr=0xbfe00000,force-raw=on",
            ]
        );
    }

    #[test]
    fn identity_placement_is_the_ipa_layout() {
        let placement = Placement::identity(0x4020_0000);
        let layout = placement.layout;
        assert_eq!(layout.image(), 0x4020_0000);
        for ipa in [layout.image(), layout.initrd(), layout.dtb()] {
            assert_eq!(placement.phys(ipa), ipa);
        }
    }
}
