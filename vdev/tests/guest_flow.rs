//! The hypervisor's path through the models, from raw syndrome registers to the values
//! written back, with the public API only: the QEMU virt layout the guests' device tree
//! gives (GICD 0x0800_0000, GICR 0x080A_0000, PL011 0x0900_0000, BARE-METAL-NOTES.md).

use iqdio_vdev::esr::{self, AbortKind, GuestContext, Trap};
use iqdio_vdev::psci::{Outcome, Psci};
use iqdio_vdev::vgic::{self, Vgic};
use iqdio_vdev::vpl011::Pl011;

const GICD: u64 = 0x0800_0000;
const GICR: u64 = 0x080A_0000;
const UART: u64 = 0x0900_0000;
const MPIDR: u64 = 0x8000_0000;

/// What one emulated trap did to the guest.
#[derive(Debug, PartialEq)]
enum Done {
    /// x[reg] = value (None: a store or XZR), ELR += 4.
    Emulated(Option<(u8, u64)>),
    /// Reflected as an external abort with this ESR_EL1 and vector.
    Aborted { esr_el1: u64, vector: u64 },
    /// A console line printed with the partition's prefix.
    Printed,
}

struct Guest {
    gic: Vgic,
    uart: Pl011<80>,
    printed: [u8; 128],
    printed_len: usize,
    regs: [u64; 31],
}

impl Guest {
    fn new() -> Self {
        Self {
            gic: Vgic::new(MPIDR),
            uart: Pl011::new(),
            printed: [0; 128],
            printed_len: 0,
            regs: [0; 31],
        }
    }

    /// The trap handler as the hypervisor would write it.
    fn trap(&mut self, esr_el2: u64, far_el2: u64, hpfar_el2: u64, spsr_el2: u64) -> Done {
        match esr::decode(esr_el2, far_el2, hpfar_el2) {
            Trap::Mmio(access) => {
                let value = access.store_value(if access.reg < 31 {
                    self.regs[access.reg as usize]
                } else {
                    0
                });
                let raw = match access.ipa {
                    ipa if (GICD..GICD + vgic::gicd::SIZE as u64).contains(&ipa) => {
                        if access.write {
                            self.gic.dist_write(ipa - GICD, access.size, value);
                            0
                        } else {
                            self.gic.dist_read(ipa - GICD, access.size)
                        }
                    }
                    ipa if (GICR..GICR + vgic::gicr::SIZE as u64).contains(&ipa) => {
                        if access.write {
                            self.gic.redist_write(ipa - GICR, access.size, value);
                            0
                        } else {
                            self.gic.redist_read(ipa - GICR, access.size)
                        }
                    }
                    ipa if (UART..UART + 0x1000).contains(&ipa) => {
                        if access.write {
                            if let Some(line) = self.uart.write(ipa - UART, access.size, value) {
                                let prefix = b"[p1] ";
                                let out = &mut self.printed[self.printed_len..];
                                out[..prefix.len()].copy_from_slice(prefix);
                                out[prefix.len()..prefix.len() + line.bytes.len()]
                                    .copy_from_slice(line.bytes);
                                self.printed_len += prefix.len() + line.bytes.len();
                                return Done::Printed;
                            }
                            0
                        } else {
                            self.uart.read(ipa - UART, access.size)
                        }
                    }
                    _ => return self.abort(spsr_el2, far_el2),
                };
                if access.write {
                    return Done::Emulated(None);
                }
                let result = access.load_result(raw);
                if let Some((reg, value)) = result {
                    self.regs[reg as usize] = value;
                }
                Done::Emulated(result)
            }
            Trap::DataAbort { .. } => self.abort(spsr_el2, far_el2),
            other => panic!("unexpected trap {other:?}"),
        }
    }

    fn abort(&self, spsr_el2: u64, far_el2: u64) -> Done {
        let guest = GuestContext {
            spsr_el2,
            elr_el2: 0x40_1000,
            far_el2,
            vbar_el1: 0xffff_8000_0801_0800,
            sctlr_el1: 0x30d0_0800,
        };
        let entry = esr::external_abort(&guest, AbortKind::Data).unwrap();
        Done::Aborted {
            esr_el1: entry.esr_el1,
            vector: entry.elr_el2 - guest.vbar_el1,
        }
    }
}

/// ESR_EL2 for a data abort from EL1/EL0 with ISV = 1, a level-3 translation fault.
fn esr_mmio(size_log2: u64, reg: u64, sixty_four: bool, write: bool) -> u64 {
    (0x24 << 26)
        | (1 << 25)
        | (1 << 24)
        | (size_log2 << 22)
        | (reg << 16)
        | (u64::from(sixty_four) << 15)
        | (u64::from(write) << 6)
        | 0x07
}

fn hpfar(ipa: u64) -> u64 {
    ipa >> 12 << 4
}

const EL1H: u64 = 0x3c5;
const EL0T: u64 = 0x0;

#[test]
fn gic_probe_loads_reach_the_guest_registers() {
    let mut guest = Guest::new();
    let pidr2 = GICD + 0xFFE8;
    assert_eq!(
        guest.trap(esr_mmio(2, 1, false, false), pidr2, hpfar(pidr2), EL1H),
        Done::Emulated(Some((1, 0x3B)))
    );
    let typer = GICR + 0x8;
    assert_eq!(
        guest.trap(esr_mmio(3, 5, true, false), typer, hpfar(typer), EL1H),
        Done::Emulated(Some((5, 0x10)))
    );
    assert_eq!(guest.regs[1], 0x3B);
}

#[test]
fn stores_reach_the_models_and_the_timer_then_goes_to_an_lr() {
    let mut guest = Guest::new();
    // GICD_CTLR <- 0x13 from x2, GICR_IGROUPR0 and ISENABLER0 <- 1 << 27 from x3.
    guest.regs[2] = 0x13;
    assert_eq!(
        guest.trap(esr_mmio(2, 2, false, true), GICD, hpfar(GICD), EL1H),
        Done::Emulated(None)
    );
    guest.regs[3] = 1 << 27;
    for offset in [vgic::gicr::IGROUPR0, vgic::gicr::ISENABLER0] {
        let ipa = GICR + offset as u64;
        guest.trap(esr_mmio(2, 3, false, true), ipa, hpfar(ipa), EL1H);
    }
    assert!(guest.gic.raise(vgic::VTIMER_PPI).unwrap().deliverable);
    assert_eq!(
        guest.gic.next_lr(),
        Some(vgic::lr_pending(27, 0, true, None))
    );
}

#[test]
fn console_bytes_become_prefixed_lines() {
    let mut guest = Guest::new();
    let mut printed = 0;
    for &byte in b"ok\r\n" {
        guest.regs[0] = u64::from(byte);
        if guest.trap(esr_mmio(0, 0, false, true), UART, hpfar(UART), EL1H) == Done::Printed {
            printed += 1;
        }
    }
    assert_eq!(printed, 1);
    assert_eq!(&guest.printed[..guest.printed_len], b"[p1] ok");
}

#[test]
fn devmem_on_a_hole_or_a_pair_load_is_reflected_as_an_external_abort() {
    let mut guest = Guest::new();
    // A Linux process reads outside its window (0x4000_0000 + 512 MiB): no device there.
    let other = 0x7000_0000;
    assert_eq!(
        guest.trap(esr_mmio(2, 0, false, false), other, hpfar(other), EL0T),
        Done::Aborted {
            esr_el1: 0x9200_0010,
            vector: 0x400
        }
    );
    // The kernel does an ldp on the GIC: ISV = 0.
    let no_syndrome = esr_mmio(3, 0, true, false) & !(1 << 24);
    assert_eq!(
        guest.trap(no_syndrome, GICD + 0x100, hpfar(GICD), EL1H),
        Done::Aborted {
            esr_el1: 0x9600_0010,
            vector: 0x200
        }
    );
}

#[test]
fn poweroff_hvc_ends_this_guest() {
    let psci = Psci::new(MPIDR);
    let Trap::Hvc { imm } = esr::decode(0x5A00_0000, 0, 0) else {
        panic!("not an HVC")
    };
    assert_eq!(psci.call(imm, [0x8400_0008, 0, 0, 0]), Outcome::PowerOff);
}
