//! The device tree of one Linux guest: the guest's window and nothing of the others'.
//!
//! Written with rust-vmm's `vm-fdt` (no `dtc` on a fresh machine, no hand-packed bytes).
//! The nodes follow QEMU's own `virt` tree (hw/arm/virt.c, as dumped with
//! `-M virt,gic-version=3,dumpdtb=FILE`), cut to what a partition has: one vCPU, PSCI
//! over HVC (the hypervisor answers it), the generic timer, the GICv3 distributor and
//! the vCPU's own redistributor frame, a PL011 console, and `/chosen`. Left out, as the
//! EL2 probe found (`LINUX-GUESTS.md`): the ITS, PCIe, flash, fw-cfg, RTC, GPIO and the
//! 32 virtio-mmio slots (each costs probes the hypervisor would have to answer), and the
//! PMU (a guest without the node never programs PMU interrupts).

use anyhow::{Context, Result};
use vm_fdt::FdtWriter;

use super::layout::Layout;

/// GICv3 distributor (hw/arm/virt.c VIRT_GIC_DIST).
pub const GICD_BASE: u64 = 0x0800_0000;
/// Size of the distributor frame.
pub const GICD_SIZE: u64 = 0x1_0000;
/// The guest's one redistributor, RD and SGI frames (VIRT_GIC_REDIST, the first
/// vCPU's): the hypervisor emulates it here for every guest, with GICR_TYPER.Last set.
pub const GICR_BASE: u64 = 0x080A_0000;
/// One redistributor: two 64 KiB frames (GICv3 architecture, 12.10).
pub const GICR_SIZE: u64 = 0x2_0000;
/// PL011 UART (VIRT_UART).
pub const UART_BASE: u64 = 0x0900_0000;
/// Size of the UART's frame.
pub const UART_SIZE: u64 = 0x1000;
/// The UART's SPI (QEMU's `a15irqmap[VIRT_UART]`).
pub const UART_SPI: u32 = 1;
/// The PL011's reference clock, fixed at 24 MHz as QEMU's `apb-pclk` node says.
pub const APB_PCLK_HZ: u32 = 24_000_000;
/// The vCPU's MPIDR affinity (the hypervisor sets VMPIDR_EL2 to match).
pub const VCPU_MPIDR: u32 = 0;
/// Where the console is, for `/chosen/stdout-path` and earlycon.
pub const UART_PATH: &str = "/pl011@9000000";

/// Interrupt specifier cells of the GIC binding (`arm,gic-v3.yaml`): type, number, flags.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
/// Flags: level high, as QEMU writes them for GICv3 (no CPU mask: that is GICv2's).
const IRQ_LEVEL_HI: u32 = 4;
/// Flags: rising edge (QEMU's virtio-mmio nodes).
const IRQ_EDGE_RISING: u32 = 1;

/// The generic timer's PPIs in the binding's order: secure physical, non-secure
/// physical, virtual, hypervisor physical (INTIDs 29, 30, 27, 26; arm,arch_timer.yaml).
pub const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// Phandles, fixed so the tree is the same byte for byte on every run.
const PHANDLE_GIC: u32 = 1;
const PHANDLE_CLOCK: u32 = 2;

/// The kernel command line every guest gets: the PL011 console from the first message
/// (`earlycon` before the driver binds), and no KASLR so addresses in a log are stable
/// from boot to boot.
pub const BASE_BOOTARGS: &str = "console=ttyAMA0 earlycon=pl011,0x9000000 nokaslr";

/// A virtio-mmio device slot, for later (the hypervisor's virtual NIC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VirtioMmio {
    /// The register frame's guest-physical address.
    pub base: u64,
    /// Its SPI number (INTID − 32).
    pub spi: u32,
}

/// Everything one guest's tree says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestTree {
    /// The guest's window (becomes `/memory`).
    pub layout: Layout,
    /// Length of the initrd placed at [`Layout::initrd`].
    pub initrd_len: u64,
    /// Words added to [`BASE_BOOTARGS`] (a scenario's own), may be empty.
    pub extra_bootargs: String,
    /// An optional virtio-mmio device.
    pub virtio: Option<VirtioMmio>,
}

impl GuestTree {
    /// The full kernel command line.
    pub fn bootargs(&self) -> String {
        let extra = self.extra_bootargs.trim();
        if extra.is_empty() {
            BASE_BOOTARGS.to_string()
        } else {
            format!("{BASE_BOOTARGS} {extra}")
        }
    }

    /// The flattened device tree blob.
    pub fn build(&self) -> Result<Vec<u8>> {
        self.write().context("building the guest device tree")
    }

    fn write(&self) -> vm_fdt::FdtWriterResult<Vec<u8>> {
        let mut fdt = FdtWriter::new()?;
        let root = fdt.begin_node("")?;
        fdt.property_string("compatible", "linux,dummy-virt")?;
        fdt.property_string("model", "iqdio Linux partition")?;
        fdt.property_u32("#address-cells", 2)?;
        fdt.property_u32("#size-cells", 2)?;
        fdt.property_u32("interrupt-parent", PHANDLE_GIC)?;

        let chosen = fdt.begin_node("chosen")?;
        fdt.property_string("bootargs", &self.bootargs())?;
        fdt.property_string("stdout-path", UART_PATH)?;
        let initrd = self.layout.initrd();
        fdt.property_u64("linux,initrd-start", initrd)?;
        fdt.property_u64("linux,initrd-end", initrd + self.initrd_len)?;
        fdt.end_node(chosen)?;

        let memory = fdt.begin_node(&format!("memory@{:x}", self.layout.base))?;
        fdt.property_string("device_type", "memory")?;
        fdt.property_array_u64("reg", &[self.layout.base, self.layout.size])?;
        fdt.end_node(memory)?;

        let cpus = fdt.begin_node("cpus")?;
        fdt.property_u32("#address-cells", 1)?;
        fdt.property_u32("#size-cells", 0)?;
        let cpu = fdt.begin_node(&format!("cpu@{VCPU_MPIDR:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_u32("reg", VCPU_MPIDR)?;
        fdt.property_string("enable-method", "psci")?;
        fdt.end_node(cpu)?;
        fdt.end_node(cpus)?;

        // "hvc": the hypervisor owns the PSCI calls of its guests; left at "smc", Linux
        // reads PSCI v65535.65535 and cannot power off (LINUX-GUESTS.md).
        let psci = fdt.begin_node("psci")?;
        fdt.property_string_list(
            "compatible",
            vec![
                "arm,psci-1.0".into(),
                "arm,psci-0.2".into(),
                "arm,psci".into(),
            ],
        )?;
        fdt.property_string("method", "hvc")?;
        fdt.end_node(psci)?;

        let timer = fdt.begin_node("timer")?;
        fdt.property_string_list(
            "compatible",
            vec!["arm,armv8-timer".into(), "arm,armv7-timer".into()],
        )?;
        let cells: Vec<u32> = TIMER_PPIS
            .iter()
            .flat_map(|&ppi| [GIC_PPI, ppi, IRQ_LEVEL_HI])
            .collect();
        fdt.property_array_u32("interrupts", &cells)?;
        fdt.property_null("always-on")?;
        fdt.end_node(timer)?;

        let gic = fdt.begin_node(&format!("intc@{GICD_BASE:x}"))?;
        fdt.property_string("compatible", "arm,gic-v3")?;
        fdt.property_u32("#interrupt-cells", 3)?;
        fdt.property_null("interrupt-controller")?;
        fdt.property_u32("#redistributor-regions", 1)?;
        fdt.property_array_u64("reg", &[GICD_BASE, GICD_SIZE, GICR_BASE, GICR_SIZE])?;
        fdt.property_phandle(PHANDLE_GIC)?;
        fdt.end_node(gic)?;

        let clock = fdt.begin_node("apb-pclk")?;
        fdt.property_string("compatible", "fixed-clock")?;
        fdt.property_u32("#clock-cells", 0)?;
        fdt.property_u32("clock-frequency", APB_PCLK_HZ)?;
        fdt.property_string("clock-output-names", "clk24mhz")?;
        fdt.property_phandle(PHANDLE_CLOCK)?;
        fdt.end_node(clock)?;

        let uart = fdt.begin_node(&UART_PATH[1..])?;
        fdt.property_string_list(
            "compatible",
            vec!["arm,pl011".into(), "arm,primecell".into()],
        )?;
        fdt.property_array_u64("reg", &[UART_BASE, UART_SIZE])?;
        fdt.property_array_u32("interrupts", &[GIC_SPI, UART_SPI, IRQ_LEVEL_HI])?;
        fdt.property_array_u32("clocks", &[PHANDLE_CLOCK, PHANDLE_CLOCK])?;
        fdt.property_string_list("clock-names", vec!["uartclk".into(), "apb_pclk".into()])?;
        fdt.end_node(uart)?;

        if let Some(virtio) = self.virtio {
            let node = fdt.begin_node(&format!("virtio_mmio@{:x}", virtio.base))?;
            fdt.property_string("compatible", "virtio,mmio")?;
            // One virtio-mmio register frame (virtio 1.2, 4.2.2: registers to 0x100 plus
            // the configuration space; QEMU gives each slot 0x200).
            fdt.property_array_u64("reg", &[virtio.base, 0x200])?;
            fdt.property_array_u32("interrupts", &[GIC_SPI, virtio.spi, IRQ_EDGE_RISING])?;
            fdt.property_null("dma-coherent")?;
            fdt.end_node(node)?;
        }

        fdt.end_node(root)?;
        fdt.finish()
    }
}

#[cfg(test)]
mod tests {
    use fdt::Fdt;

    use super::*;

    fn tree(virtio: Option<VirtioMmio>) -> GuestTree {
        GuestTree {
            layout: Layout::default(),
            initrd_len: 0x12_3456,
            extra_bootargs: " quiet ".into(),
            virtio,
        }
    }

    fn u32s(bytes: &[u8]) -> Vec<u32> {
        bytes
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    fn u64s(bytes: &[u8]) -> Vec<u64> {
        bytes
            .chunks_exact(8)
            .map(|c| u64::from_be_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn memory_is_the_window_and_chosen_names_the_initrd() {
        let blob = tree(None).build().unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let regions: Vec<_> = fdt.memory().regions().collect();
        assert_eq!(regions.len(), 1);
        assert_eq!(regions[0].starting_address as u64, 0x4000_0000);
        assert_eq!(regions[0].size, Some(512 << 20));
        let chosen = fdt.chosen();
        assert_eq!(
            chosen.bootargs(),
            Some("console=ttyAMA0 earlycon=pl011,0x9000000 nokaslr quiet")
        );
        let node = fdt.find_node("/chosen").unwrap();
        let start = u64s(node.property("linux,initrd-start").unwrap().value);
        let end = u64s(node.property("linux,initrd-end").unwrap().value);
        assert_eq!(start, [0x4800_0000]);
        assert_eq!(end, [0x4800_0000 + 0x12_3456]);
        assert_eq!(
            node.property("stdout-path").unwrap().as_str(),
            Some("/pl011@9000000")
        );
        // stdout-path names a node that exists.
        assert!(fdt.find_node(UART_PATH).is_some());
    }

    #[test]
    fn one_cpu_with_psci_over_hvc() {
        let blob = tree(None).build().unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let cpus: Vec<_> = fdt.cpus().collect();
        assert_eq!(cpus.len(), 1);
        assert_eq!(cpus[0].ids().first(), 0);
        let cpu = fdt.find_node("/cpus/cpu@0").unwrap();
        assert_eq!(
            cpu.property("enable-method").unwrap().as_str(),
            Some("psci")
        );
        let psci = fdt.find_node("/psci").unwrap();
        assert_eq!(psci.property("method").unwrap().as_str(), Some("hvc"));
        let compatible: Vec<_> = psci.compatible().unwrap().all().collect();
        assert_eq!(compatible, ["arm,psci-1.0", "arm,psci-0.2", "arm,psci"]);
    }

    #[test]
    fn timer_gic_and_uart_are_where_qemu_virt_has_them() {
        let blob = tree(None).build().unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let timer = fdt.find_node("/timer").unwrap();
        assert_eq!(
            u32s(timer.property("interrupts").unwrap().value),
            [1, 13, 4, 1, 14, 4, 1, 11, 4, 1, 10, 4]
        );
        assert!(timer.property("always-on").is_some());

        let gic = fdt.find_node("/intc@8000000").unwrap();
        assert_eq!(gic.compatible().unwrap().first(), "arm,gic-v3");
        let reg: Vec<_> = gic
            .reg()
            .unwrap()
            .map(|r| (r.starting_address as u64, r.size.unwrap()))
            .collect();
        assert_eq!(reg, [(0x0800_0000, 0x1_0000), (0x080A_0000, 0x2_0000)]);
        assert!(gic.property("interrupt-controller").is_some());
        assert_eq!(gic.interrupt_cells(), Some(3));
        // Every interrupt in the tree goes to this GIC.
        let phandle = gic.property("phandle").unwrap().as_usize().unwrap();
        let root = fdt.find_node("/").unwrap();
        assert_eq!(
            root.property("interrupt-parent").unwrap().as_usize(),
            Some(phandle)
        );

        let uart = fdt.find_node(UART_PATH).unwrap();
        let reg: Vec<_> = uart
            .reg()
            .unwrap()
            .map(|r| (r.starting_address as u64, r.size.unwrap()))
            .collect();
        assert_eq!(reg, [(0x0900_0000, 0x1000)]);
        assert_eq!(u32s(uart.property("interrupts").unwrap().value), [0, 1, 4]);
        // Both clocks point at the fixed 24 MHz apb-pclk.
        let clock = fdt.find_node("/apb-pclk").unwrap();
        let clock_phandle = clock.property("phandle").unwrap().as_usize().unwrap() as u32;
        assert_eq!(
            u32s(uart.property("clocks").unwrap().value),
            [clock_phandle, clock_phandle]
        );
        assert_eq!(
            clock.property("clock-frequency").unwrap().as_usize(),
            Some(24_000_000)
        );
    }

    #[test]
    fn nothing_else_unless_a_virtio_slot_is_asked_for() {
        let blob = tree(None).build().unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let mut names: Vec<_> = fdt
            .find_node("/")
            .unwrap()
            .children()
            .map(|n| n.name)
            .collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "apb-pclk",
                "chosen",
                "cpus",
                "intc@8000000",
                "memory@40000000",
                "pl011@9000000",
                "psci",
                "timer"
            ]
        );
        assert!(fdt.find_compatible(&["virtio,mmio"]).is_none());

        let blob = tree(Some(VirtioMmio {
            base: 0x0a00_0000,
            spi: 16,
        }))
        .build()
        .unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let virtio = fdt.find_compatible(&["virtio,mmio"]).unwrap();
        assert_eq!(virtio.name, "virtio_mmio@a000000");
        assert_eq!(
            u32s(virtio.property("interrupts").unwrap().value),
            [0, 16, 1]
        );
    }

    #[test]
    fn the_tree_follows_its_window() {
        let mut guest = tree(None);
        guest.layout = Layout {
            base: 0x8000_0000,
            size: 1 << 30,
        };
        let blob = guest.build().unwrap();
        let fdt = Fdt::new(&blob).unwrap();
        let region = fdt.memory().regions().next().unwrap();
        assert_eq!(region.starting_address as u64, 0x8000_0000);
        assert_eq!(region.size, Some(1 << 30));
        let chosen = fdt.find_node("/chosen").unwrap();
        assert_eq!(
            u64s(chosen.property("linux,initrd-start").unwrap().value),
            [0x8800_0000]
        );
    }

    #[test]
    fn the_same_inputs_give_the_same_bytes() {
        assert_eq!(tree(None).build().unwrap(), tree(None).build().unwrap());
    }
}
