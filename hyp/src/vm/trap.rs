//! A partition's traps: its hypervisor calls, its interrupts, and everything that stops
//! it.
//!
//! The issuing partition is always the one this core runs ([`super::running_lpar`]),
//! never a register. Every guest address goes through the fabric's window checks:
//! SBALs, SLSBs and indicators at establish and on every SIGA (inside the fabric), the
//! establish block, its storage lists and console text through
//! [`iqdio::Fabric::copy_from_partition`], read once into the hypervisor's own copy.
//!
//! A partition the hypervisor gave a virtio-net device ([`super::vnetdev`], the hostile
//! scenario's attacker) has its loads and stores in the device's slot emulated, its
//! rings read and written through its window's check.
//!
//! Any other stage-2 fault, an undefined instruction, an HVC this interface does not have (or
//! with an immediate other than 0), an SMC, or an SError stops the partition:
//! `partition N stopped: <what> at <address>` is printed, it leaves the fabric (its
//! queue sets are deregistered, so its senders get 0x11 from then on), and its core
//! returns to the hypervisor, which parks it. The other partitions run on.

use iqdio::{LparId, SigaError, SigaStatus};
use iqdio_hvc::{
    BLOCK_HEAD, BLOCK_MAX, CONSOLE_MAX, Call, EstablishBlock, RC_BAD_ARGUMENT, RC_BAD_BLOCK, RC_OK,
    RC_OUTSIDE_MEMORY, SL_LEN, ip_from_registers, mac_from_register,
};

use super::{FABRIC, Outcome, barrier, set_outcome};
use crate::board::{self, KIND_IRQ, KIND_SYNC, LEAVE, RESUME, VcpuRegs};

/// Exception classes (ESR_EL2.EC, Arm ARM D17.2.37).
const EC_UNKNOWN: u64 = 0x00;
const EC_HVC64: u64 = 0x16;
const EC_SMC64: u64 = 0x17;
const EC_IABT_LOWER: u64 = 0x20;
const EC_DABT_LOWER: u64 = 0x24;

fn esr_far_hpfar() -> (u64, u64, u64) {
    let (esr, far, hpfar): (u64, u64, u64);
    // SAFETY: reading the syndrome registers has no side effects.
    unsafe {
        core::arch::asm!(
            "mrs {}, esr_el2", "mrs {}, far_el2", "mrs {}, hpfar_el2",
            out(reg) esr, out(reg) far, out(reg) hpfar,
            options(nomem, nostack, preserves_flags)
        )
    };
    (esr, far, hpfar)
}

/// The trap entry's Rust half (see `board/exceptions.rs`): `regs` holds the
/// partition's registers; returns [`RESUME`] or [`LEAVE`].
pub(crate) extern "C" fn guest_exit(regs: &mut VcpuRegs, kind: u64) -> u64 {
    let core = board::core_id();
    if super::linux::runs_linux(core) {
        return super::linux::guest_exit(core, regs, kind);
    }
    let Some(lpar) = super::running_lpar(core) else {
        // A trap with no partition on this core cannot happen; leave rather than ERET
        // into nothing.
        return LEAVE;
    };
    match kind {
        KIND_IRQ => {
            board::exceptions::handle_irq();
            super::tick(core);
            RESUME
        }
        KIND_SYNC => sync(core, lpar, regs),
        board::KIND_FIQ => stop(core, lpar, "FIQ", regs.elr),
        _ => stop(core, lpar, "SError", regs.elr),
    }
}

fn sync(core: usize, lpar: LparId, regs: &mut VcpuRegs) -> u64 {
    let (esr, far, hpfar) = esr_far_hpfar();
    let ec = esr >> 26 & 0x3f;
    // HPFAR_EL2.FIPA holds IPA[47:12] at bits [43:4]; the page offset comes from FAR.
    let ipa = (hpfar >> 4 << 12) | (far & 0xfff);
    match ec {
        EC_HVC64 if esr & 0xffff == 0 => hvc(core, lpar, regs),
        EC_HVC64 => stop(
            core,
            lpar,
            "HVC with an immediate other than 0",
            regs.elr - 4,
        ),
        // ELR is the SMC itself (TSC trap).
        EC_SMC64 => stop(core, lpar, "SMC", regs.elr),
        // The virtio-net slot of a partition given a device (the hostile one).
        EC_DABT_LOWER if super::vnetdev::emulate(core, regs, esr, far, hpfar) => RESUME,
        EC_DABT_LOWER => {
            let what = if esr & (1 << 6) != 0 {
                "stage-2 fault (data write)"
            } else {
                "stage-2 fault (data read)"
            };
            stop(core, lpar, what, ipa)
        }
        EC_IABT_LOWER => stop(core, lpar, "stage-2 fault (instruction fetch)", ipa),
        EC_UNKNOWN => stop(core, lpar, "undefined instruction", regs.elr),
        _ => stop(core, lpar, board::exceptions::exception_class(ec), regs.elr),
    }
}

/// Stops the partition: report, leave the fabric (its queue sets go), leave the
/// barrier, and return to the hypervisor.
fn stop(core: usize, lpar: LparId, what: &str, address: u64) -> u64 {
    defmt::println!(
        "partition {} stopped: {=str} at {=u64:#x}",
        lpar,
        what,
        address
    );
    let _ = FABRIC.remove_partition(lpar);
    barrier::leave(core);
    set_outcome(core, Outcome::Stopped);
    LEAVE
}

/// A subchannel number from a register, or `None` above 0xFFFF.
fn subchannel(x: u64) -> Option<u16> {
    u16::try_from(x).ok()
}

fn hvc(core: usize, lpar: LparId, regs: &mut VcpuRegs) -> u64 {
    let [x0, x1, x2, x3, x4, x5, x6] = [
        regs.x[0], regs.x[1], regs.x[2], regs.x[3], regs.x[4], regs.x[5], regs.x[6],
    ];
    let Some(call) = Call::from_id(x0) else {
        return stop(core, lpar, "unknown HVC function", regs.elr - 4);
    };
    let rc = match call {
        Call::Siga => {
            let (cc, busy) = siga(lpar, x1, x2, x3, x4);
            regs.x[1] = busy;
            cc
        }
        Call::Establish => establish(lpar, x1, x2),
        Call::RegisterAddress | Call::DeregisterAddress => {
            match (subchannel(x1), ip_from_registers(x2, x3, x4)) {
                (Some(sch), Some(ip)) => {
                    let r = if call == Call::RegisterAddress {
                        FABRIC.register_address(lpar, sch, ip)
                    } else {
                        FABRIC.deregister_address(lpar, sch, ip)
                    };
                    r.map_or_else(|e| u64::from(e.code()), |()| RC_OK)
                }
                _ => RC_BAD_ARGUMENT,
            }
        }
        Call::JoinGroup | Call::LeaveGroup => {
            match (subchannel(x1), ip_from_registers(x2, x3, x4)) {
                (Some(sch), Some(group)) => {
                    let join = call == Call::JoinGroup;
                    let r = if join {
                        FABRIC.register_group(lpar, sch, group)
                    } else {
                        FABRIC.deregister_group(lpar, sch, group)
                    };
                    if r.is_ok() {
                        super::note_membership(core, sch, group, join);
                    }
                    r.map_or_else(|e| u64::from(e.code()), |()| RC_OK)
                }
                _ => RC_BAD_ARGUMENT,
            }
        }
        Call::Broadcast => match (subchannel(x1), x2) {
            (Some(sch), 0 | 1) => match FABRIC.set_broadcast(lpar, sch, x2 == 1) {
                Ok(()) => {
                    super::note_membership(core, sch, iqdio::BROADCAST_GROUP, x2 == 1);
                    RC_OK
                }
                Err(e) => u64::from(e.code()),
            },
            _ => RC_BAD_ARGUMENT,
        },
        Call::RegisterMac
        | Call::DeregisterMac
        | Call::RegisterGroupMac
        | Call::DeregisterGroupMac => match (subchannel(x1), mac_from_register(x2)) {
            (Some(sch), Some(mac)) => {
                let r = match call {
                    Call::RegisterMac => FABRIC.register_mac(lpar, sch, mac),
                    Call::DeregisterMac => FABRIC.deregister_mac(lpar, sch, mac),
                    Call::RegisterGroupMac => FABRIC.register_group_mac(lpar, sch, mac),
                    _ => FABRIC.deregister_group_mac(lpar, sch, mac),
                };
                r.map_or_else(|e| u64::from(e.code()), |()| RC_OK)
            }
            _ => RC_BAD_ARGUMENT,
        },
        Call::JoinVlan | Call::LeaveVlan => match (subchannel(x1), u16::try_from(x2)) {
            (Some(sch), Ok(vid)) => {
                let r = if call == Call::JoinVlan {
                    FABRIC.join_vlan(lpar, sch, vid)
                } else {
                    FABRIC.leave_vlan(lpar, sch, vid)
                };
                r.map_or_else(|e| u64::from(e.code()), |()| RC_OK)
            }
            // A VLAN id that does not fit 16 bits is out of the fabric's range too.
            (Some(_), Err(_)) => u64::from(iqdio::RegistrationError::InvalidAddress.code()),
            _ => RC_BAD_ARGUMENT,
        },
        Call::DeregisterQueueSet => match subchannel(x1) {
            Some(sch) => FABRIC
                .deregister_queue_set(lpar, sch)
                .map_or_else(|e| u64::from(e.code()), |_| RC_OK),
            None => RC_BAD_ARGUMENT,
        },
        Call::ConsoleWrite => console(lpar, x1, x2),
        Call::Exit => {
            super::record_exit(core, lpar);
            let _ = FABRIC.remove_partition(lpar);
            barrier::leave(core);
            set_outcome(
                core,
                Outcome::Exited {
                    status: x1,
                    results: [x2, x3, x4, x5, x6],
                },
            );
            return LEAVE;
        }
        Call::Barrier => barrier::arrive(core),
    };
    regs.x[0] = rc;
    RESUME
}

/// SIGA: the condition code and the busy bit, exactly what crosses the trap. `qaob` is
/// the QAOB address a WRITEQ carries (x4); the fabric checks it against the window.
fn siga(lpar: LparId, function: u64, sch: u64, mask: u64, qaob: u64) -> (u64, u64) {
    let result = match (
        u32::try_from(function),
        subchannel(sch),
        u32::try_from(mask),
    ) {
        (Ok(f), Some(sch), Ok(mask)) => FABRIC.siga_aob(lpar, sch, f, mask, qaob).map(|_| ()),
        // A subchannel number no subchannel has is not IQDIO; the rest names nothing.
        (_, None, _) => Err(SigaError::NotIqdio),
        (Err(_), _, _) => Err(SigaError::InvalidFunction),
        (_, _, Err(_)) => Err(SigaError::InvalidQueueMask),
    };
    let status = SigaStatus::from(&result);
    (status.condition_code as u64, u64::from(status.busy))
}

/// Establish: read the block's head for its queue counts, then the whole block once
/// and decode that copy, then each storage list once (the completion queue's too, when
/// it has one), and hand the fabric the copies (it checks every address in them against
/// the window, and refuses more output queues than it offers, 0xF012).
fn establish(lpar: LparId, sch: u64, block_addr: u64) -> u64 {
    let Some(sch) = subchannel(sch) else {
        return RC_BAD_ARGUMENT;
    };
    let mut raw = [0u8; BLOCK_MAX];
    let Some(head) = raw.get_mut(..BLOCK_HEAD) else {
        return RC_BAD_BLOCK;
    };
    if FABRIC.copy_from_partition(lpar, block_addr, head).is_none() {
        return RC_OUTSIDE_MEMORY;
    }
    let Some(len) = EstablishBlock::len_of(head) else {
        return RC_BAD_BLOCK;
    };
    // The whole block, read again: a count changed meanwhile no longer matches the
    // length, and the copy does not decode.
    let Some(whole) = raw.get_mut(..len) else {
        return RC_BAD_BLOCK;
    };
    if FABRIC
        .copy_from_partition(lpar, block_addr, whole)
        .is_none()
    {
        return RC_OUTSIDE_MEMORY;
    }
    let Some(block) = EstablishBlock::decode(whole) else {
        return RC_BAD_BLOCK;
    };
    let mut input = [0u8; SL_LEN];
    if FABRIC
        .copy_from_partition(lpar, block.input.sl, &mut input)
        .is_none()
    {
        return RC_OUTSIDE_MEMORY;
    }
    let params = block.params(&input, |k, sl| {
        let addr = block.storage_list(k)?;
        FABRIC.copy_from_partition(lpar, addr, sl)
    });
    let Some(mut params) = params else {
        return RC_OUTSIDE_MEMORY;
    };
    params.interrupt_cookie = super::interrupt_cookie(lpar);
    FABRIC
        .establish(lpar, sch, &params)
        .map_or_else(|e| u64::from(e.code()), |_| RC_OK)
}

/// Console write: copy the text once, show it as one line of this partition.
fn console(lpar: LparId, addr: u64, len: u64) -> u64 {
    let Some(len) = usize::try_from(len).ok().filter(|&l| l <= CONSOLE_MAX) else {
        return RC_BAD_ARGUMENT;
    };
    let mut text = [0u8; CONSOLE_MAX];
    let mut text = &mut text[..len];
    if FABRIC.copy_from_partition(lpar, addr, text).is_none() {
        return RC_OUTSIDE_MEMORY;
    }
    while let [rest @ .., b'\n' | b'\r'] = text {
        text = rest;
    }
    // Printable ASCII only: the line cannot forge frames or escapes on the console.
    for b in text.iter_mut() {
        if !(0x20..0x7f).contains(b) {
            *b = b'?';
        }
    }
    let line = core::str::from_utf8(text).unwrap_or("?");
    defmt::println!("partition {}: {=str}", lpar, line);
    RC_OK
}
