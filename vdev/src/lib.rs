//! The devices a stock Linux guest needs under the iqdio EL2 hypervisor, as pure models:
//! no MMIO, no assembly, no global items, no heap, no unsafe. The hypervisor owns the
//! traps and the hardware; this crate owns the rules, and every rule is tested on the
//! host with the access sequences Linux 6.1 was seen to make (LINUX-GUESTS.md).
//!
//! ```text
//!  guest EL1 ── trap ──▶ hypervisor (EL2) ─ ESR_EL2, FAR_EL2, HPFAR_EL2 ─▶ esr::decode
//!                                                                            │
//!      ┌────────────────────────┬─────────────────────┬──────────────────────┤
//!      ▼                        ▼                     ▼                      ▼
//!  Trap::Mmio(access)       Trap::Hvc{imm}       Trap::DataAbort{..}   Wfx / SysReg / ...
//!   by IPA window:           psci::Psci::call      esr::external_abort   (hypervisor's own)
//!   GICD → vgic::Vgic::dist_*  → Outcome
//!   GICR → vgic::Vgic::redist_*
//!   UART → vpl011::Pl011::read/write → Line to print
//!   NET  → virtio_net::VirtioNet::read/write → Effect (notify, live, reset, ...)
//!   none → esr::external_abort
//! ```
//!
//! What the hypervisor calls, when:
//!
//! 1. **Every synchronous trap from the guest**: [`esr::decode`]`(ESR_EL2, FAR_EL2,
//!    HPFAR_EL2)`.
//! 2. [`esr::Trap::Mmio`]: find the device by [`esr::MmioAccess::ipa`] in the guest's
//!    device tree layout. A store: `value = access.store_value(x[reg])`, then the model's
//!    write. A load: the model's read, then `access.load_result(raw)` names the register
//!    to write (or none for XZR). Then ELR_EL2 += 4. An IPA no device claims (a hole,
//!    another partition's window, the hypervisor's memory) is reflected like an
//!    unemulable abort (point 3).
//! 3. [`esr::Trap::DataAbort`] / [`esr::Trap::InstructionAbort`]: [`esr::external_abort`]
//!    gives ESR_EL1, FAR_EL1, ELR_EL1, SPSR_EL1 to write and the new ELR_EL2/SPSR_EL2;
//!    ERET then enters the guest's own synchronous vector, at EL1 or from EL0 (a Linux
//!    process's `devmem` gets SIGBUS, the kernel an Oops), never the hypervisor's panic.
//! 4. [`esr::Trap::Hvc`]: [`psci::Psci::call`]`(imm, [x0, x1, x2, x3])`:
//!    `Return(v)` → x0 = v; `PowerOff`/`Reset` → end or restart this guest alone;
//!    `PassOn` → the hypervisor's own calls (iqdio's vendor range).
//! 5. **Interrupts**: a physical interrupt for the guest (the timer's PPI 27 at EL2, the
//!    UART or the network device's SPI) → [`vgic::Vgic::raise`]; then, and after every
//!    GIC register write (a [`vgic::WriteEffect`] may enable what was pending; mirror
//!    enables of hardware-backed interrupts onto the physical GIC) and whenever
//!    ICH_ELRSR_EL2 shows an LR freed ([`vgic::Vgic::lr_retired`] with its old value),
//!    fill free LRs from [`vgic::Vgic::next_lr`] until it returns `None`. What does not
//!    fit stays in the model's pending set.
//! 6. **Network** (not wired yet: it waits for layer-2 queue sets):
//!    [`virtio_net::VirtioNet::write`] returns an [`virtio_net::Effect`]; on `Notify(Tx)`
//!    the hypervisor pops transmit chains, [`virtio_net::VirtioNet::transmit`] names each
//!    frame's guest buffers for an output SBAL, and the chain goes back with
//!    `complete_transmit`; receive chains become input SBALs and come back with
//!    `complete_receive` once the fabric filled them. Guest memory is reached only
//!    through [`virtio_net::GuestMemory`], the window check; the module docs give the
//!    SBAL mapping.
//! 7. **Console**: [`vpl011::Pl011::write`] hands out a [`vpl011::Line`] at each '\n' or
//!    when the buffer fills; the hypervisor prints it with the partition's prefix, and
//!    [`vpl011::Pl011::flush`] at the guest's end prints what is left.
//!
//! What each model refuses:
//! - [`esr`]: data aborts without a syndrome (ISV = 0: load/store pair, writeback, SIMD,
//!   atomics), with FAR not valid, on a stage-1 walk, or with a fault status other than
//!   translation/access flag/permission: [`esr::NotEmulable`], reflected as an external
//!   abort. AArch32 and EL2 modes cannot be injected into ([`esr::InjectError`]).
//! - [`vgic`]: LPIs, the ITS, Group 0 security (DS = 1), IDs at or past 96, more than one
//!   vCPU. Unknown offsets and accesses of a width the GIC does not allow read as zero
//!   and ignore writes, counted in [`vgic::Ignored`].
//! - [`vpl011`]: receiving, interrupts, 64-bit or misaligned accesses (RAZ/WI, counted).
//! - [`virtio_net`]: every feature but VERSION_1, MAC, MTU, STATUS and EVENT_IDX (no
//!   offloads, no indirect descriptors, no packed rings); control registers other than
//!   as aligned 32 bits (RAZ/WI, counted in [`virtio_net::Ignored`]). A ring that breaks a
//!   rule (a descriptor loop, a buffer outside the window or wrapping, an index jump, a
//!   ring moved while in use, a zero-length or wrong-direction buffer) is a
//!   [`virtio_net::Violation`]: DEVICE_NEEDS_RESET, counted per kind, queues stopped.
//!   Transmit headers asking for an offload are dropped and counted ([`virtio_net::TxDrop`]).
//! - [`psci`]: every call but version, features, MIGRATE_INFO_TYPE, CPU_ON/AFFINITY_INFO
//!   (the only vCPU is on, others do not exist), SYSTEM_OFF/RESET: NOT_SUPPORTED.
//!
//! Kept crates, and where they fit: `aarch64-cpu` gives ESR_EL2's EC/ISS/IL fields and
//! `ICH_LR<n>_EL2`'s layout (used through its `Field`s on plain values); it has no ISS
//! sub-fields per class, so those are constants with their Arm ARM section. `arm-gic`
//! 0.10's register structs (`Gicd`, `Gicr`, `Sgi`) are MMIO views for a driver, not
//! state an emulator can hold, but their `#[repr(C)]` layout gives every offset through
//! `offset_of!`, and its bitflags give GICD_CTLR and GICR_WAKER bits. `smccc` gives the
//! PSCI/SMCCC function IDs and return codes, and `iqdio-hvc` the hypervisor's own range
//! that [`psci`] passes on. The PL011 has no kept model: its offsets are constants from
//! its TRM.
#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod esr;
pub mod psci;
pub mod vgic;
pub mod virtio_net;
pub mod vpl011;
