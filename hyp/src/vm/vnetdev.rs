//! A virtio-net device for a bare-metal partition: the hostile scenario's attacker
//! drives it with bad rings (issue 16: "a bare-metal partition that drives a virtio
//! device with bad rings joins `--scenario hostile`").
//!
//! Only a partition whose core the hypervisor [`attach`]ed a device to has one (the
//! hostile partition's refusal run); for every other bare-metal partition the slot stays
//! what the rest of its IPA space is, a stage-2 fault that stops it. The device is the
//! Linux guests' model, `iqdio_vdev::virtio_net::VirtioNet` (virtio-mmio version 2,
//! split queues read as hostile input), at the same slot, IPA
//! [`iqdio_hvc::hostile::VIRTIO_NET`] (512 bytes, unmapped at stage 2): every load or
//! store there with a syndrome (ISV = 1) is decoded by `iqdio_vdev::esr` and emulated;
//! one without (a pair, a writeback form) stops the partition as any other fault does.
//! Its memory is the partition's window ([`WindowRam`] over
//! `board::partition_window`, IPA [`super::GUEST_BASE`], 48 MiB): every ring area and
//! every descriptor's buffer is checked against it before the model names it, and the
//! window's own check refuses any access the model did not check.
//!
//! It is not on the fabric: its transmit queue loops back into its receive queue. A
//! transmitted chain's frame (checked by the model: header, length, segments) is copied
//! into the next chain the partition posted on the receive queue (taken when the frame
//! is there; both chains window-checked, the copy in 256-byte pieces through the
//! window), then both are returned. So the device reads and writes guest buffers on
//! both paths, which is what bad rings attack. No interrupt is wired (the partition's
//! virtual interface carries only its adapter interrupt): the partition polls
//! InterruptStatus and Status.
//!
//! A ring rule broken ([`Violation`]) sets DEVICE_NEEDS_RESET in the model, stops its
//! queues until the partition resets the device, is counted by kind and printed
//! `partition N: virtio-net needs reset: <kind>`. Every loop here is bounded: a
//! notification takes at most a queue's worth of chains (`QUEUE_NUM_MAX`), the model
//! bounds each chain by the queue size.

use iqdio::LparId;
use iqdio_vdev::esr::{self, Trap};
use iqdio_vdev::virtio_net::{
    self as vnet, GuestMemory, Ignored, OutsideWindow, Queue, Segment, Segments, TxDrop, Violation,
    Violations, VirtioNet,
};

use super::GUEST_BASE;
use super::window_ram::WindowRam;
use crate::board::{self, MAX_CORES, VcpuRegs};

/// The device's MTU: a standard Ethernet payload (nothing leaves the partition).
pub const MTU: u16 = 1500;

/// The MAC of the device of partition `lpar`: `02:00:00:00:EE:<lpar>`, the locally
/// administered address the hostile partition's layer-2 cases register too.
pub const fn mac(lpar: LparId) -> [u8; 6] {
    [0x02, 0, 0, 0, 0xEE, lpar]
}

/// What one partition's device did, read when it is [`detach`]ed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Report {
    /// Emulated loads and stores.
    pub accesses: u64,
    /// Frames transmitted and delivered into a posted receive buffer.
    pub looped: u64,
    /// Frames transmitted that no receive buffer took (none posted, or too short).
    pub rx_dropped: u64,
    /// Transmit chains whose frame the model's checks dropped (offload, runt, ...).
    pub tx_dropped: u64,
    /// Ring rules broken, by kind (each set DEVICE_NEEDS_RESET).
    pub violations: Violations,
    /// Register accesses the model ignored, by reason.
    pub ignored: Ignored,
}

struct Device {
    lpar: LparId,
    dev: VirtioNet,
    ram: WindowRam,
    report: Report,
}

/// Each core's device, touched only on that core: by [`attach`]/[`detach`] around its
/// partition's run and by its traps meanwhile.
static DEVICES: [spin::Mutex<Option<Device>>; MAX_CORES] =
    [const { spin::Mutex::new(None) }; MAX_CORES];

/// Gives the partition `core` runs next (LPAR id `core`) a fresh device over its window;
/// false if the core has none.
pub fn attach(core: usize) -> bool {
    let Some(slot) = DEVICES.get(core) else {
        return false;
    };
    let (host, len) = board::partition_window(core);
    let lpar = core as LparId;
    // SAFETY: the core's window is mapped normal memory in the hypervisor's tables, its
    // partition's alone, with nothing of the hypervisor's in it; the hypervisor holds no
    // reference to it (the loader and the fabric use raw accesses).
    let ram = unsafe { WindowRam::new(GUEST_BASE, host.addr() as u64, len as u64) };
    let Ok(dev) = VirtioNet::new(mac(lpar), MTU) else {
        return false;
    };
    *slot.lock() = Some(Device {
        lpar,
        dev,
        ram,
        report: Report::default(),
    });
    true
}

/// Takes the core's device away (after its partition ended): what it did.
pub fn detach(core: usize) -> Option<Report> {
    let d = DEVICES.get(core)?.lock().take()?;
    let mut report = d.report;
    report.violations = *d.dev.violations();
    report.ignored = *d.dev.ignored();
    Some(report)
}

/// A data abort of the partition on `core`: emulated (true: resume after the access)
/// if the core has a device and the abort is a load or store with a syndrome in its
/// slot; false otherwise (the caller stops the partition).
pub(crate) fn emulate(core: usize, regs: &mut VcpuRegs, esr: u64, far: u64, hpfar: u64) -> bool {
    let Trap::Mmio(access) = esr::decode(esr, far, hpfar) else {
        return false;
    };
    let Some(off) = access
        .ipa
        .checked_sub(iqdio_hvc::hostile::VIRTIO_NET)
        .filter(|&off| off < vnet::WINDOW_SIZE)
    else {
        return false;
    };
    let Some(slot) = DEVICES.get(core) else {
        return false;
    };
    let mut slot = slot.lock();
    let Some(d) = slot.as_mut() else {
        return false;
    };
    d.report.accesses += 1;
    if access.write {
        let value = access.store_value(regs.x.get(usize::from(access.reg)).copied().unwrap_or(0));
        let effect = d.dev.write(off, access.size, value, &d.ram);
        d.effect(effect);
    } else {
        let raw = d.dev.read(off, access.size);
        if let Some((reg, v)) = access.load_result(raw)
            && let Some(x) = regs.x.get_mut(usize::from(reg))
        {
            *x = v;
        }
    }
    regs.elr += 4;
    true
}

impl Device {
    /// Carries out what a register write asked. Nothing is held across traps (a
    /// transmit chain and its receive chain are completed in the notification that
    /// offered the frame), so a reset, a stopped queue or a violation leaves nothing to
    /// withdraw.
    fn effect(&mut self, effect: vnet::Effect) {
        match effect {
            vnet::Effect::Notify(Queue::Tx) => self.transmit(),
            vnet::Effect::NeedsReset(v) => self.refused(v),
            // Receive buffers are taken when a frame is there for one.
            vnet::Effect::Notify(Queue::Rx)
            | vnet::Effect::Live
            | vnet::Effect::Reset
            | vnet::Effect::QueueStopped(_)
            | vnet::Effect::None => {}
        }
    }

    /// A violation the model counted (DEVICE_NEEDS_RESET is set): one line.
    fn refused(&self, v: Violation) {
        defmt::println!(
            "partition {}: virtio-net needs reset: {=str}",
            self.lpar,
            v.name()
        );
    }

    /// Takes every available transmit chain (at most a queue's worth), loops its frame
    /// back and returns it.
    fn transmit(&mut self) {
        for _ in 0..vnet::QUEUE_NUM_MAX {
            let chain = match self.dev.pop(Queue::Tx, &mut self.ram) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(v) => return self.refused(v),
            };
            match self.dev.transmit(&chain, &self.ram) {
                Ok(frame) => self.loop_back(frame.segments, frame.len),
                Err(TxDrop::Unreadable) => self.refused(Violation::MemoryFault),
                Err(_) => self.report.tx_dropped += 1,
            }
            // Stale (not written) when the receive side broke a rule meanwhile.
            if let Err(v) = self.dev.complete_transmit(chain, &mut self.ram) {
                return self.refused(v);
            }
        }
    }

    /// Delivers a frame of `len` bytes at `frame` into the next posted receive chain.
    fn loop_back(&mut self, frame: Segments, len: u64) {
        let chain = match self.dev.pop(Queue::Rx, &mut self.ram) {
            Ok(Some(chain)) => chain,
            Ok(None) => {
                self.report.rx_dropped += 1;
                return;
            }
            Err(v) => return self.refused(v),
        };
        let into = VirtioNet::rx_segments(&chain);
        // A frame longer than the buffers is not copied: completing it with its length
        // returns the chain empty (the model's overrun) and the frame is dropped.
        let copied = len <= into.bytes()
            && copy(&mut self.ram, frame.as_slice(), into.as_slice(), len).is_ok();
        let frame_len = if copied { len as u32 } else { u32::MAX };
        match self.dev.complete_receive(chain, frame_len, &mut self.ram) {
            Ok(vnet::Completion::Interrupt | vnet::Completion::Suppressed) => {
                self.report.looped += 1
            }
            Ok(_) => self.report.rx_dropped += 1,
            Err(v) => self.refused(v),
        }
    }
}

/// Where byte `pos` of the buffers `segs` lies: its address and the bytes left in its
/// segment.
fn locate(segs: &[Segment], pos: u64) -> Option<(u64, u64)> {
    let mut pos = pos;
    for s in segs {
        let len = u64::from(s.len);
        if pos < len {
            return Some((s.ipa + pos, len - pos));
        }
        pos -= len;
    }
    None
}

/// Copies `len` bytes from the buffers `from` to the buffers `to` (both checked by the
/// model, both read and written through the window's check again), in pieces of at
/// most 256 bytes: each step moves at least one byte, so at most `len` steps.
fn copy(
    ram: &mut WindowRam,
    from: &[Segment],
    to: &[Segment],
    len: u64,
) -> Result<(), OutsideWindow> {
    let mut piece = [0u8; 256];
    let mut done = 0;
    while done < len {
        let (src, src_room) = locate(from, done).ok_or(OutsideWindow)?;
        let (dst, dst_room) = locate(to, done).ok_or(OutsideWindow)?;
        let n = (len - done)
            .min(src_room)
            .min(dst_room)
            .min(piece.len() as u64);
        let buf = &mut piece[..n as usize];
        ram.read(src, buf)?;
        ram.write(dst, buf)?;
        done += n;
    }
    Ok(())
}
