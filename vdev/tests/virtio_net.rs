//! The virtio-net model driven the way Linux's `drivers/virtio/virtio_mmio.c`,
//! `drivers/virtio/virtio.c` and `drivers/net/virtio_net.c` drive it (the sequence read
//! from their sources, not yet observed under the hypervisor), and by hostile drivers,
//! through the public API:
//! guest memory is a `Vec` behind the window check, the hypervisor's side is written
//! out in each test (pop, transmit, the fabric's one copy, complete).

use std::cell::Cell;

use iqdio_vdev::virtio_net::*;

const BASE: u64 = 0x4000_0000;
const RAM: usize = 0x10_0000;
const MAC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0A];
const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0B];
const MTU: u16 = 8192;
const QSIZE: u16 = 256;

/// A guest's window: every access outside it is refused and counted as an escape.
struct Ram {
    bytes: Vec<u8>,
    escaped: Cell<u64>,
    accesses: Cell<u64>,
}

impl Ram {
    fn new() -> Self {
        Self {
            bytes: vec![0; RAM],
            escaped: Cell::new(0),
            accesses: Cell::new(0),
        }
    }

    fn range(&self, ipa: u64, len: usize) -> Result<std::ops::Range<usize>, OutsideWindow> {
        self.accesses.set(self.accesses.get() + 1);
        if !self.contains(ipa, len as u64) {
            self.escaped.set(self.escaped.get() + 1);
            return Err(OutsideWindow);
        }
        let start = (ipa - BASE) as usize;
        Ok(start..start + len)
    }

    fn put(&mut self, ipa: u64, data: &[u8]) {
        let r = self.range(ipa, data.len()).unwrap();
        self.bytes[r].copy_from_slice(data);
    }

    fn get(&self, ipa: u64, len: usize) -> Vec<u8> {
        self.bytes[self.range(ipa, len).unwrap()].to_vec()
    }

    fn u16_at(&self, ipa: u64) -> u16 {
        u16::from_le_bytes(self.get(ipa, 2).try_into().unwrap())
    }

    fn u32_at(&self, ipa: u64) -> u32 {
        u32::from_le_bytes(self.get(ipa, 4).try_into().unwrap())
    }
}

impl GuestMemory for Ram {
    fn contains(&self, ipa: u64, len: u64) -> bool {
        len > 0
            && ipa >= BASE
            && ipa
                .checked_add(len)
                .is_some_and(|end| end <= BASE + RAM as u64)
    }

    fn read(&self, ipa: u64, buf: &mut [u8]) -> Result<(), OutsideWindow> {
        let r = self.range(ipa, buf.len())?;
        buf.copy_from_slice(&self.bytes[r]);
        Ok(())
    }

    fn write(&mut self, ipa: u64, data: &[u8]) -> Result<(), OutsideWindow> {
        let r = self.range(ipa, data.len())?;
        self.bytes[r].copy_from_slice(data);
        Ok(())
    }
}

/// The driver's view of one split queue (Linux's `vring_virtqueue`, simplified: it
/// builds chains from the descriptor table's start each time).
#[derive(Clone, Copy)]
struct Ring {
    desc: u64,
    avail: u64,
    used: u64,
    avail_idx: u16,
    last_used: u16,
    next_desc: u16,
}

impl Ring {
    fn at(base: u64) -> Self {
        Self {
            desc: base,
            avail: base + 16 * u64::from(QSIZE),
            used: base + 0x2000,
            avail_idx: 0,
            last_used: 0,
            next_desc: 0,
        }
    }

    fn set_desc(ram: &mut Ram, ring: &Ring, i: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..].copy_from_slice(&next.to_le_bytes());
        ram.put(ring.desc + 16 * u64::from(i), &d);
    }

    /// Adds a chain of buffers, all with `flags` (NEXT added between them), and
    /// publishes it: ring entry, then (after Linux's `virtio_wmb`) the index.
    fn add(&mut self, ram: &mut Ram, bufs: &[(u64, u32)], flags: u16) -> u16 {
        let head = self.next_desc;
        for (k, &(addr, len)) in bufs.iter().enumerate() {
            let i = (self.next_desc + k as u16) % QSIZE;
            let more = k + 1 < bufs.len();
            let f = flags | if more { DESC_F_NEXT } else { 0 };
            Self::set_desc(ram, self, i, addr, len, f, (i + 1) % QSIZE);
        }
        self.next_desc = (self.next_desc + bufs.len() as u16) % QSIZE;
        self.publish(ram, head);
        head
    }

    fn publish(&mut self, ram: &mut Ram, head: u16) {
        let slot = u64::from(self.avail_idx % QSIZE);
        ram.put(self.avail + 4 + 2 * slot, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        ram.put(self.avail + 2, &self.avail_idx.to_le_bytes());
    }

    /// The next used entry (id, len), as `virtqueue_get_buf` reads it.
    fn get_used(&mut self, ram: &Ram) -> Option<(u32, u32)> {
        if ram.u16_at(self.used + 2) == self.last_used {
            return None;
        }
        let slot = u64::from(self.last_used % QSIZE);
        self.last_used = self.last_used.wrapping_add(1);
        Some((
            ram.u32_at(self.used + 4 + 8 * slot),
            ram.u32_at(self.used + 8 + 8 * slot),
        ))
    }
}

/// One Linux guest: its memory, its device, its driver's rings.
struct Guest {
    ram: Ram,
    dev: VirtioNet,
    rx: Ring,
    tx: Ring,
}

impl Guest {
    fn new(mac: [u8; 6]) -> Self {
        Self {
            ram: Ram::new(),
            dev: VirtioNet::new(mac, MTU).unwrap(),
            rx: Ring::at(BASE + 0x1_0000),
            tx: Ring::at(BASE + 0x2_0000),
        }
    }

    fn r(&mut self, offset: u64) -> u32 {
        self.dev.read(offset, 4) as u32
    }

    fn w(&mut self, offset: u64, value: u32) -> Effect {
        self.dev.write(offset, 4, u64::from(value), &self.ram)
    }

    /// `virtio_add_status`: read, OR, write.
    fn add_status(&mut self, bit: u32) -> Effect {
        let s = self.r(STATUS);
        self.w(STATUS, s | bit)
    }

    /// Linux's probe, step by step (virtio_mmio_probe, register_virtio_device,
    /// virtio_dev_probe, virtnet_probe, init_vqs/vm_setup_vq, virtio_device_ready).
    /// Returns the MAC and MTU it read and the effect of DRIVER_OK.
    fn probe(&mut self) -> ([u8; 6], u16, Effect) {
        self.probe_with(u64::MAX)
    }

    /// The probe with the driver's features limited to `mask` (a kernel without
    /// EVENT_IDX support, say).
    fn probe_with(&mut self, mask: u64) -> ([u8; 6], u16, Effect) {
        assert_eq!(self.r(MAGIC_VALUE), 0x7472_6976);
        assert_eq!(self.r(VERSION), 2);
        assert_eq!(self.r(DEVICE_ID), 1);
        assert_ne!(self.r(VENDOR_ID), 0);
        assert_eq!(self.w(STATUS, 0), Effect::Reset);
        assert_eq!(self.r(STATUS), 0);
        self.add_status(S_ACKNOWLEDGE);
        self.add_status(S_DRIVER);
        // vm_get_features: high word first.
        self.w(DEVICE_FEATURES_SEL, 1);
        let mut features = u64::from(self.r(DEVICE_FEATURES)) << 32;
        self.w(DEVICE_FEATURES_SEL, 0);
        features |= u64::from(self.r(DEVICE_FEATURES));
        // What virtio_net's feature table and vring_transport_features keep of the offer.
        let wanted = (1 << 0)
            | (1 << 1)
            | F_MTU
            | F_MAC
            | (1 << 15)
            | F_STATUS
            | (1 << 17)
            | (1 << 28)
            | (1 << 29)
            | F_VERSION_1;
        assert_eq!(
            features & wanted,
            FEATURES,
            "only what the fabric honours is offered"
        );
        let accepted = features & wanted & mask;
        // vm_finalize_features.
        self.w(DRIVER_FEATURES_SEL, 1);
        self.w(DRIVER_FEATURES, (accepted >> 32) as u32);
        self.w(DRIVER_FEATURES_SEL, 0);
        self.w(DRIVER_FEATURES, accepted as u32);
        // virtnet_validate reads the MTU (16 bits) before FEATURES_OK.
        let mtu = self.dev.read(CONFIG + 10, 2) as u16;
        assert!(mtu >= 68);
        // virtio_features_ok.
        self.add_status(S_FEATURES_OK);
        assert_ne!(self.r(STATUS) & S_FEATURES_OK, 0);
        // virtio_cread_bytes(mac) inside a generation loop, then the 16-bit fields.
        let generation = self.r(CONFIG_GENERATION);
        let mac: [u8; 6] = std::array::from_fn(|i| self.dev.read(CONFIG + i as u64, 1) as u8);
        assert_eq!(self.r(CONFIG_GENERATION), generation);
        // vm_setup_vq for receiveq1 then transmitq1.
        for (index, ring) in [(0u32, self.rx), (1, self.tx)] {
            self.w(QUEUE_SEL, index);
            assert_eq!(self.r(QUEUE_READY), 0);
            let num = self.r(QUEUE_NUM_MAX_REG);
            assert_eq!(num, u32::from(QSIZE));
            self.w(QUEUE_NUM, num);
            for (low, addr) in [
                (QUEUE_DESC_LOW, ring.desc),
                (QUEUE_DRIVER_LOW, ring.avail),
                (QUEUE_DEVICE_LOW, ring.used),
            ] {
                assert_eq!(self.w(low, addr as u32), Effect::None);
                assert_eq!(self.w(low + 4, (addr >> 32) as u32), Effect::None);
            }
            assert_eq!(self.w(QUEUE_READY, 1), Effect::None);
            assert_eq!(self.r(QUEUE_READY), 1);
        }
        // virtio_device_ready; then virtnet_config_changed_work reads the link status.
        let live = self.add_status(S_DRIVER_OK);
        assert_eq!(self.dev.read(CONFIG + 6, 2), u64::from(NET_S_LINK_UP));
        (mac, mtu, live)
    }

    /// virtnet_open's try_fill_recv: `n` small buffers of header + 1514 bytes... here
    /// 12 + MTU + 14 in one descriptor each, then a kick.
    fn fill_rx(&mut self, n: u64) {
        for k in 0..n {
            let addr = BASE + 0x4_0000 + k * 0x4000;
            self.rx.add(
                &mut self.ram,
                &[(addr, 12 + u32::from(MTU) + 14)],
                DESC_F_WRITE,
            );
        }
        assert_eq!(self.w(QUEUE_NOTIFY, 0), Effect::Notify(Queue::Rx));
    }

    /// virtqueue_enable_cb_prepare with EVENT_IDX: interrupt at the next used entry.
    fn enable_cb(ram: &mut Ram, ring: &Ring) {
        ram.put(
            ring.avail + 4 + 2 * u64::from(QSIZE),
            &ring.last_used.to_le_bytes(),
        );
    }

    /// The interrupt handler (vm_interrupt): read InterruptStatus, acknowledge it.
    fn interrupt(&mut self) -> u32 {
        let status = self.r(INTERRUPT_STATUS);
        self.w(INTERRUPT_ACK, status);
        status
    }

    fn live() -> Self {
        let mut g = Self::new(MAC_A);
        g.probe();
        g
    }

    fn assert_refused(&mut self, kind: Violation) {
        assert_ne!(self.r(STATUS) & S_DEVICE_NEEDS_RESET, 0, "{kind:?}");
        assert_eq!(self.dev.violations().count(kind), 1, "{kind:?}");
        assert_eq!(self.dev.violations().total(), 1, "{kind:?}");
        assert!(self.dev.interrupt_pending(), "config change interrupt");
        assert_eq!(self.interrupt(), INT_CONFIG);
        // The queues stay stopped: nothing is popped until a reset.
        assert_eq!(self.dev.pop(Queue::Rx, &mut self.ram), Ok(None));
        assert_eq!(self.dev.pop(Queue::Tx, &mut self.ram), Ok(None));
        assert_eq!(self.ram.escaped.get(), 0, "no access outside the window");
    }
}

#[test]
fn linux_probe_sequence_negotiates_and_goes_live() {
    let mut g = Guest::new(MAC_A);
    let (mac, mtu, live) = g.probe();
    assert_eq!((mac, mtu, live), (MAC_A, MTU, Effect::Live));
    assert_eq!(g.dev.driver_features(), FEATURES);
    assert!(g.dev.is_live());
    assert_eq!(
        *g.dev.ignored(),
        Ignored::default(),
        "Linux makes no odd access"
    );
    assert_eq!(g.dev.violations().total(), 0);
    // Linux's remove: vm_del_vq stops each queue and reads QueueReady back, then resets.
    g.w(QUEUE_SEL, 1);
    assert_eq!(g.w(QUEUE_READY, 0), Effect::QueueStopped(Queue::Tx));
    assert_eq!(g.r(QUEUE_READY), 0);
    assert_eq!(g.w(STATUS, 0), Effect::Reset);
    // A second probe after the reset works the same (a reset clears "enabled once").
    let mut g2 = Guest {
        rx: Ring::at(BASE + 0x1_0000),
        tx: Ring::at(BASE + 0x2_0000),
        ..g
    };
    assert_eq!(g2.probe().2, Effect::Live);
    assert_eq!(g2.dev.violations().total(), 0);
}

/// A frame from guest A's transmit queue into guest B's posted receive buffer, with the
/// fabric's one copy between the segments the model names.
#[test]
fn a_frame_crosses_from_one_guests_tx_ring_into_anothers_rx_ring() {
    let mut a = Guest::new(MAC_A);
    a.probe();
    let mut b = Guest::new(MAC_B);
    b.probe();
    b.fill_rx(4);
    // The hypervisor posts B's receive chains as input SBALs.
    let mut posted = Vec::new();
    while let Some(chain) = b.dev.pop(Queue::Rx, &mut b.ram).unwrap() {
        let segs = VirtioNet::rx_segments(&chain);
        assert_eq!(segs.as_slice().len(), 1);
        assert_eq!(segs.bytes(), u64::from(MTU) + 14);
        posted.push(chain);
    }
    assert_eq!(posted.len(), 4);

    // Linux's xmit_skb without SG: the header in its own descriptor (can_push false),
    // then the linear frame.
    let frame: Vec<u8> = [&MAC_B[..], &MAC_A[..], &[0x08, 0x00]]
        .concat()
        .into_iter()
        .chain((0..1000u32).map(|i| (i * 7) as u8))
        .collect();
    let (hdr_at, frame_at) = (BASE + 0x8_0000, BASE + 0x8_1000);
    a.ram.put(hdr_at, &[0; 12]);
    a.ram.put(frame_at, &frame);
    let head = a.tx.add(
        &mut a.ram,
        &[(hdr_at, 12), (frame_at, frame.len() as u32)],
        0,
    );
    assert_eq!(a.w(QUEUE_NOTIFY, 1), Effect::Notify(Queue::Tx));

    let chain = a.dev.pop(Queue::Tx, &mut a.ram).unwrap().unwrap();
    assert_eq!((chain.head(), chain.descriptors()), (head, 2));
    let tx = a.dev.transmit(&chain, &a.ram).unwrap();
    assert_eq!(tx.len, frame.len() as u64);
    assert_eq!(
        tx.segments.as_slice(),
        &[Segment {
            ipa: frame_at,
            len: frame.len() as u32
        }],
        "the 12-byte header descriptor is stripped"
    );
    // The fabric's copy, segment to segment.
    let rx_chain = posted.remove(0);
    let dst = VirtioNet::rx_segments(&rx_chain);
    let mut bytes = vec![0; tx.len as usize];
    assert_eq!(tx.segments.read_prefix(&a.ram, &mut bytes), Ok(bytes.len()));
    assert_eq!(dst.write_prefix(&mut b.ram, &bytes), Ok(bytes.len()));
    let rx_head = rx_chain.head();
    assert_eq!(
        b.dev.complete_receive(rx_chain, tx.len as u32, &mut b.ram),
        Ok(Completion::Interrupt)
    );
    assert_eq!(
        a.dev.complete_transmit(chain, &mut a.ram),
        Ok(Completion::Interrupt)
    );

    // B's driver: interrupt, used entry, header, frame.
    assert_eq!(b.interrupt(), INT_VRING);
    assert!(!b.dev.interrupt_pending());
    let (id, len) = b.rx.get_used(&b.ram).unwrap();
    assert_eq!((id, len), (u32::from(rx_head), 12 + frame.len() as u32));
    let buf = BASE + 0x4_0000;
    let mut want_hdr = [0u8; 12];
    want_hdr[10] = 1; // num_buffers
    assert_eq!(b.ram.get(buf, 12), want_hdr);
    assert_eq!(b.ram.get(buf + 12, frame.len()), frame);
    // A's driver frees the transmitted buffer.
    assert_eq!(a.interrupt(), INT_VRING);
    assert_eq!(a.tx.get_used(&a.ram), Some((u32::from(head), 0)));
    assert_eq!(a.dev.counters().tx_frames, 1);
    assert_eq!(b.dev.counters().rx_frames, 1);
    assert_eq!(b.dev.counters().rx_bytes, frame.len() as u64);
    assert_eq!(a.ram.escaped.get() + b.ram.escaped.get(), 0);
}

#[test]
fn big_packet_receive_chains_fill_fifteen_elements_after_the_header() {
    // virtio_net's add_recvbuf_big for MTU 56 KiB: a 12-byte header, the rest of the
    // first page from offset 16, then 14 pages: 16 descriptors.
    let mut g = Guest::live();
    let page = BASE + 0x4_0000;
    let mut bufs = vec![(page, 12), (page + 16, 4096 - 16)];
    bufs.extend((1..=14).map(|k| (page + k * 4096, 4096)));
    g.rx.add(&mut g.ram, &bufs, DESC_F_WRITE);
    let chain = g.dev.pop(Queue::Rx, &mut g.ram).unwrap().unwrap();
    assert!(chain.is_whole());
    let segs = VirtioNet::rx_segments(&chain);
    assert_eq!(segs.as_slice().len(), MAX_FRAME_SEGMENTS);
    assert_eq!(segs.as_slice()[0].ipa, page + 16);
    assert_eq!(segs.bytes(), 4096 - 16 + 14 * 4096);
    // A frame longer than the segments is refused: the buffer goes back empty.
    assert_eq!(
        g.dev.complete_receive(chain, 15 * 4096, &mut g.ram),
        Ok(Completion::Overrun)
    );
    assert_eq!(g.rx.get_used(&g.ram).map(|u| u.1), Some(0));
}

#[test]
fn without_event_idx_the_no_interrupt_flag_suppresses_the_interrupt() {
    let mut g = Guest::new(MAC_A);
    g.probe_with(!F_EVENT_IDX);
    assert_eq!(g.dev.driver_features(), FEATURES & !F_EVENT_IDX);
    // virtqueue_disable_cb: avail->flags = VRING_AVAIL_F_NO_INTERRUPT.
    g.ram.put(g.tx.avail, &AVAIL_F_NO_INTERRUPT.to_le_bytes());
    let at = BASE + 0x8_0000;
    g.ram.put(at, &[0; 12 + 60]);
    for want in [Completion::Suppressed, Completion::Interrupt] {
        g.tx.add(&mut g.ram, &[(at, 72)], 0);
        let chain = g.dev.pop(Queue::Tx, &mut g.ram).unwrap().unwrap();
        assert_eq!(g.dev.transmit(&chain, &g.ram).map(|f| f.len), Ok(60));
        assert_eq!(g.dev.complete_transmit(chain, &mut g.ram), Ok(want));
        assert_eq!(g.dev.interrupt_pending(), want == Completion::Interrupt);
        assert!(g.tx.get_used(&g.ram).is_some(), "published either way");
        // virtqueue_enable_cb: flags back to 0.
        g.ram.put(g.tx.avail, &0u16.to_le_bytes());
    }
    // No EVENT_IDX: the device never writes avail_event.
    assert_eq!(g.dev.pop(Queue::Tx, &mut g.ram), Ok(None));
    assert_eq!(g.ram.u16_at(g.tx.used + 4 + 8 * u64::from(QSIZE)), 0);
}

#[test]
fn with_event_idx_used_event_picks_the_interrupting_entry_and_flags_are_ignored() {
    let mut g = Guest::live();
    assert_ne!(
        g.dev.driver_features() & F_EVENT_IDX,
        0,
        "Linux takes EVENT_IDX"
    );
    g.fill_rx(4);
    // Interrupt when the used index passes 2 (the third buffer); NO_INTERRUPT is set
    // too and must not matter (§2.7.7.2).
    g.ram
        .put(g.rx.avail + 4 + 2 * u64::from(QSIZE), &2u16.to_le_bytes());
    g.ram.put(g.rx.avail, &AVAIL_F_NO_INTERRUPT.to_le_bytes());
    let mut got = Vec::new();
    for _ in 0..4 {
        let chain = g.dev.pop(Queue::Rx, &mut g.ram).unwrap().unwrap();
        got.push(g.dev.complete_receive(chain, 60, &mut g.ram).unwrap());
    }
    use Completion::{Interrupt as I, Suppressed as S};
    assert_eq!(got, [S, S, I, S]);
    assert_eq!(g.interrupt(), INT_VRING);
    // used_event left behind: no interrupt until the driver re-arms it
    // (virtqueue_enable_cb_prepare), as vring_need_event says.
    g.fill_rx(1);
    let chain = g.dev.pop(Queue::Rx, &mut g.ram).unwrap().unwrap();
    assert_eq!(g.dev.complete_receive(chain, 60, &mut g.ram), Ok(S));
    while g.rx.get_used(&g.ram).is_some() {}
    Guest::enable_cb(&mut g.ram, &g.rx);
    g.fill_rx(1);
    let chain = g.dev.pop(Queue::Rx, &mut g.ram).unwrap().unwrap();
    assert_eq!(g.dev.complete_receive(chain, 60, &mut g.ram), Ok(I));
}

#[test]
fn with_event_idx_an_empty_pop_asks_for_the_next_notification() {
    let mut g = Guest::live();
    let avail_event = g.tx.used + 4 + 8 * u64::from(QSIZE);
    let at = BASE + 0x8_0000;
    g.ram.put(at, &[0; 72]);
    for _ in 0..3 {
        g.tx.add(&mut g.ram, &[(at, 72)], 0);
    }
    for _ in 0..3 {
        assert!(g.dev.pop(Queue::Tx, &mut g.ram).unwrap().is_some());
        assert_eq!(
            g.ram.u16_at(avail_event),
            0,
            "not written while buffers remain"
        );
    }
    assert_eq!(g.dev.pop(Queue::Tx, &mut g.ram), Ok(None));
    assert_eq!(
        g.ram.u16_at(avail_event),
        3,
        "kick me when entry 3 is added"
    );
    // virtqueue_kick_prepare: vring_need_event(avail_event, new, old).
    let need_event = |event: u16, new: u16, old: u16| {
        new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
    };
    let old = g.tx.avail_idx;
    g.tx.add(&mut g.ram, &[(at, 72)], 0);
    assert!(need_event(g.ram.u16_at(avail_event), g.tx.avail_idx, old));
    let old = g.tx.avail_idx;
    g.tx.add(&mut g.ram, &[(at, 72)], 0);
    assert!(
        !need_event(g.ram.u16_at(avail_event), g.tx.avail_idx, old),
        "no second kick before the device looked"
    );
    assert!(g.dev.pop(Queue::Tx, &mut g.ram).unwrap().is_some());
    assert!(g.dev.pop(Queue::Tx, &mut g.ram).unwrap().is_some());
    assert_eq!(g.dev.pop(Queue::Tx, &mut g.ram), Ok(None));
    assert_eq!(g.ram.u16_at(avail_event), 5);
    assert_eq!(g.ram.escaped.get(), 0);
}

#[test]
fn transmit_headers_asking_for_offloads_and_bad_sizes_are_dropped_and_counted() {
    let mut g = Guest::live();
    let at = BASE + 0x8_0000;
    let cases: [(&[u8], u32, TxDrop); 4] = [
        (&[1, 0], 60, TxDrop::Offload), // VIRTIO_NET_HDR_F_NEEDS_CSUM
        (&[0, 1], 60, TxDrop::Offload), // VIRTIO_NET_HDR_GSO_TCPV4
        (&[0, 0], 13, TxDrop::Runt),
        (&[0, 0], u32::from(MTU) + 19, TxDrop::Oversize),
    ];
    for (hdr, frame_len, want) in cases {
        g.ram.put(at, &[0; 12]);
        g.ram.put(at, hdr);
        g.tx.add(&mut g.ram, &[(at, 12 + frame_len)], 0);
        let chain = g.dev.pop(Queue::Tx, &mut g.ram).unwrap().unwrap();
        assert_eq!(g.dev.transmit(&chain, &g.ram), Err(want));
        assert_eq!(
            g.dev.complete_transmit(chain, &mut g.ram),
            Ok(Completion::Interrupt)
        );
        // Linux's free_old_xmit, then callbacks on again.
        assert!(g.tx.get_used(&g.ram).is_some());
        Guest::enable_cb(&mut g.ram, &g.tx);
    }
    let c = g.dev.counters();
    assert_eq!(
        (c.tx_offload, c.tx_runt, c.tx_oversize, c.tx_frames),
        (2, 1, 1, 0)
    );
    // The largest frame that fits (MTU plus a tagged Ethernet header) goes.
    g.tx.add(&mut g.ram, &[(at, 12 + u32::from(MTU) + 18)], 0);
    let chain = g.dev.pop(Queue::Tx, &mut g.ram).unwrap().unwrap();
    assert!(g.dev.transmit(&chain, &g.ram).is_ok());
    assert_eq!(
        g.dev.violations().total(),
        0,
        "drops are not ring violations"
    );
}

#[test]
fn chains_held_across_a_reset_complete_stale_and_write_nothing() {
    let mut g = Guest::live();
    g.fill_rx(1);
    let chain = g.dev.pop(Queue::Rx, &mut g.ram).unwrap().unwrap();
    let used_idx = g.ram.u16_at(g.rx.used + 2);
    assert_eq!(g.w(STATUS, 0), Effect::Reset);
    let before = g.ram.bytes.clone();
    assert_eq!(
        g.dev.complete_receive(chain, 60, &mut g.ram),
        Ok(Completion::Stale)
    );
    assert_eq!(g.ram.bytes, before);
    assert_eq!(g.ram.u16_at(g.rx.used + 2), used_idx);
}

// ---- Hostile rings: each refused, counted, the device stopped, nothing escaped. ----

#[test]
fn a_descriptor_loop_ends_within_the_queue_size() {
    let mut g = Guest::live();
    let at = BASE + 0x8_0000;
    Ring::set_desc(&mut g.ram, &g.tx, 0, at, 64, DESC_F_NEXT, 1);
    Ring::set_desc(&mut g.ram, &g.tx, 1, at, 64, DESC_F_NEXT, 0);
    g.tx.publish(&mut g.ram, 0);
    let before = g.ram.accesses.get();
    assert_eq!(
        g.dev.pop(Queue::Tx, &mut g.ram),
        Err(Violation::DescriptorLoop)
    );
    // Two index reads and one read per descriptor visited: bounded by the size.
    assert!(g.ram.accesses.get() - before <= u64::from(QSIZE) + 2);
    g.assert_refused(Violation::DescriptorLoop);
}

#[test]
fn a_buffer_outside_the_window_is_refused() {
    let mut g = Guest::live();
    for addr in [BASE - 0x1000, BASE + RAM as u64 - 8, 0x0800_0000] {
        let mut h = Guest::live();
        h.tx.add(&mut h.ram, &[(addr, 64)], 0);
        assert_eq!(
            h.dev.pop(Queue::Tx, &mut h.ram),
            Err(Violation::BufferOutsideWindow),
            "{addr:#x}"
        );
        h.assert_refused(Violation::BufferOutsideWindow);
    }
    // Also as the second descriptor of a chain.
    g.tx.add(
        &mut g.ram,
        &[(BASE + 0x8_0000, 12), (BASE + RAM as u64, 1)],
        0,
    );
    assert_eq!(
        g.dev.pop(Queue::Tx, &mut g.ram),
        Err(Violation::BufferOutsideWindow)
    );
    g.assert_refused(Violation::BufferOutsideWindow);
}

#[test]
fn a_wrapped_length_is_refused() {
    let mut g = Guest::live();
    g.tx.add(&mut g.ram, &[(u64::MAX - 0x10, 0x1000)], 0);
    assert_eq!(
        g.dev.pop(Queue::Tx, &mut g.ram),
        Err(Violation::WrappedBuffer)
    );
    g.assert_refused(Violation::WrappedBuffer);
}

#[test]
fn an_index_jump_beyond_the_size_is_refused() {
    let mut g = Guest::live();
    g.ram.put(g.rx.avail + 2, &(QSIZE + 1).to_le_bytes());
    assert_eq!(g.dev.pop(Queue::Rx, &mut g.ram), Err(Violation::IndexJump));
    g.assert_refused(Violation::IndexJump);
}

#[test]
fn heads_and_nexts_beyond_the_table_are_refused() {
    let mut g = Guest::live();
    g.tx.publish(&mut g.ram, QSIZE);
    assert_eq!(
        g.dev.pop(Queue::Tx, &mut g.ram),
        Err(Violation::HeadOutOfRange)
    );
    g.assert_refused(Violation::HeadOutOfRange);

    let mut g = Guest::live();
    Ring::set_desc(
        &mut g.ram,
        &g.tx,
        0,
        BASE + 0x8_0000,
        64,
        DESC_F_NEXT,
        0xFFFF,
    );
    g.tx.publish(&mut g.ram, 0);
    assert_eq!(
        g.dev.pop(Queue::Tx, &mut g.ram),
        Err(Violation::NextOutOfRange)
    );
    g.assert_refused(Violation::NextOutOfRange);
}

#[test]
fn zero_length_and_short_chains_are_refused() {
    let mut g = Guest::live();
    g.rx.add(&mut g.ram, &[(BASE + 0x8_0000, 0)], DESC_F_WRITE);
    assert_eq!(g.dev.pop(Queue::Rx, &mut g.ram), Err(Violation::ZeroLength));
    g.assert_refused(Violation::ZeroLength);

    let mut g = Guest::live();
    g.rx.add(
        &mut g.ram,
        &[(BASE + 0x8_0000, 4), (BASE + 0x9_0000, 4)],
        DESC_F_WRITE,
    );
    assert_eq!(g.dev.pop(Queue::Rx, &mut g.ram), Err(Violation::ShortChain));
    g.assert_refused(Violation::ShortChain);
}

#[test]
fn buffers_of_the_wrong_direction_are_refused() {
    // A device-readable (read-only) buffer posted for receive: the device would write it.
    let mut g = Guest::live();
    g.rx.add(&mut g.ram, &[(BASE + 0x8_0000, 1600)], 0);
    assert_eq!(
        g.dev.pop(Queue::Rx, &mut g.ram),
        Err(Violation::WrongDirection)
    );
    g.assert_refused(Violation::WrongDirection);
    assert_eq!(g.ram.get(BASE + 0x8_0000, 12), [0; 12], "nothing written");

    // Device-writable buffers on the transmit queue.
    let mut g = Guest::live();
    g.tx.add(
        &mut g.ram,
        &[(BASE + 0x8_0000, 12), (BASE + 0x8_1000, 64)],
        DESC_F_WRITE,
    );
    assert_eq!(
        g.dev.pop(Queue::Tx, &mut g.ram),
        Err(Violation::WrongDirection)
    );
    g.assert_refused(Violation::WrongDirection);
}

#[test]
fn indirect_descriptors_are_refused_since_not_offered() {
    let mut g = Guest::live();
    g.tx.add(&mut g.ram, &[(BASE + 0x8_0000, 64)], DESC_F_INDIRECT);
    assert_eq!(g.dev.pop(Queue::Tx, &mut g.ram), Err(Violation::Indirect));
    g.assert_refused(Violation::Indirect);
}

#[test]
fn a_ring_moved_while_in_use_is_refused() {
    // The descriptor table's address rewritten while the queue is ready.
    let mut g = Guest::live();
    g.w(QUEUE_SEL, 0);
    assert_eq!(
        g.w(QUEUE_DESC_LOW, (BASE + 0x9_0000) as u32),
        Effect::NeedsReset(Violation::RingMoved)
    );
    g.assert_refused(Violation::RingMoved);

    // QueueReady toggled: stopped (legal), then enabled again over a new ring without a
    // device reset.
    let mut g = Guest::live();
    g.fill_rx(2);
    let held = g.dev.pop(Queue::Rx, &mut g.ram).unwrap().unwrap();
    g.w(QUEUE_SEL, 0);
    assert_eq!(g.w(QUEUE_READY, 0), Effect::QueueStopped(Queue::Rx));
    assert_eq!(
        g.w(QUEUE_DRIVER_LOW, (BASE + 0x9_0000) as u32),
        Effect::None
    );
    assert_eq!(
        g.w(QUEUE_READY, 1),
        Effect::NeedsReset(Violation::RingMoved)
    );
    assert_eq!(g.r(QUEUE_READY), 0);
    g.assert_refused(Violation::RingMoved);
    // The chain taken before the move is stale: nothing is written for it.
    let used = g.ram.u16_at(g.rx.used + 2);
    assert_eq!(
        g.dev.complete_receive(held, 60, &mut g.ram),
        Ok(Completion::Stale)
    );
    assert_eq!(g.ram.u16_at(g.rx.used + 2), used);
}

#[test]
fn bad_queue_setups_are_refused_at_queue_ready() {
    let cases: [(u32, u64, Violation); 5] = [
        (3, BASE + 0x1_0000, Violation::BadQueueSetup),
        (512, BASE + 0x1_0000, Violation::BadQueueSetup),
        (0, BASE + 0x1_0000, Violation::BadQueueSetup),
        (256, BASE + 0x1_0008, Violation::BadQueueSetup), // descriptor table not 16-aligned
        (256, BASE + RAM as u64 - 0x800, Violation::RingOutsideWindow),
    ];
    for (num, desc, kind) in cases {
        let mut g = Guest::new(MAC_A);
        g.w(STATUS, 0);
        for s in [S_ACKNOWLEDGE, S_DRIVER] {
            g.add_status(s);
        }
        g.w(DRIVER_FEATURES_SEL, 1);
        g.w(DRIVER_FEATURES, 1);
        g.add_status(S_FEATURES_OK);
        g.w(QUEUE_SEL, 0);
        g.w(QUEUE_NUM, num);
        g.w(QUEUE_DESC_LOW, desc as u32);
        g.w(QUEUE_DRIVER_LOW, (BASE + 0x1_1000) as u32);
        g.w(QUEUE_DEVICE_LOW, (BASE + 0x1_2000) as u32);
        assert_eq!(
            g.w(QUEUE_READY, 1),
            Effect::NeedsReset(kind),
            "{num} {desc:#x}"
        );
        assert_eq!(g.r(QUEUE_READY), 0);
        assert_ne!(g.r(STATUS) & S_DEVICE_NEEDS_RESET, 0);
        assert_eq!(g.dev.violations().count(kind), 1);
        // Before DRIVER_OK there is no configuration interrupt (§2.1.2).
        assert!(!g.dev.interrupt_pending());
        // DRIVER_OK does not make a device that needs a reset live.
        assert_eq!(g.add_status(S_DRIVER_OK), Effect::None);
        assert!(!g.dev.is_live());
    }
}

#[test]
fn a_reset_after_a_violation_makes_the_device_usable_again() {
    let mut g = Guest::live();
    g.tx.add(&mut g.ram, &[(u64::MAX - 0x10, 0x1000)], 0);
    assert!(g.dev.pop(Queue::Tx, &mut g.ram).is_err());
    g.rx = Ring::at(BASE + 0x1_0000);
    g.tx = Ring::at(BASE + 0x2_0000);
    g.ram.bytes.fill(0);
    assert_eq!(g.probe().2, Effect::Live);
    assert_eq!(g.r(STATUS) & S_DEVICE_NEEDS_RESET, 0);
    g.fill_rx(1);
    assert!(g.dev.pop(Queue::Rx, &mut g.ram).unwrap().is_some());
    assert_eq!(g.dev.violations().total(), 1, "counters outlive the reset");
}

/// Random rings (xorshift, fixed seeds; values biased towards the plausible so the walk
/// gets past the first checks): every pop ends in a chain or a counted violation, no
/// access leaves the window, and a chain's segments all lie inside it.
#[test]
fn random_rings_never_escape_the_window() {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut chains, mut refused) = (0u64, 0u64);
    let mut kinds = std::collections::BTreeSet::new();
    for _ in 0..300 {
        let mut g = Guest::live();
        g.fill_rx(0);
        for i in 0..QSIZE {
            let r = next();
            let addr = match r % 8 {
                0 => next(),
                1 => BASE + next() % (RAM as u64 + 0x1000),
                _ => BASE + 0x4_0000 + (next() % 0x8000),
            };
            let len = match (r >> 8) % 8 {
                0 => next() as u32,
                1 => 0,
                _ => 12 + (next() % 2048) as u32,
            };
            let flags = if (r >> 16) % 10 < 7 {
                DESC_F_WRITE | if (r >> 40) % 3 == 0 { DESC_F_NEXT } else { 0 }
            } else {
                ((r >> 44) & 0x7) as u16
            };
            let next_i = if (r >> 24) % 8 == 0 {
                (r >> 32) as u16
            } else {
                (r >> 32) as u16 % QSIZE
            };
            Ring::set_desc(&mut g.ram, &g.rx, i, addr, len, flags, next_i);
            Ring::set_desc(
                &mut g.ram,
                &g.tx,
                i,
                addr,
                len,
                flags ^ DESC_F_WRITE,
                next_i,
            );
        }
        let avail_rx = (next() % (u64::from(QSIZE) + 8)) as u16;
        let avail_tx = (next() % 16) as u16;
        for k in 0..QSIZE {
            let head = (next() % (u64::from(QSIZE) + 2)) as u16;
            g.ram
                .put(g.rx.avail + 4 + 2 * u64::from(k), &head.to_le_bytes());
            g.ram
                .put(g.tx.avail + 4 + 2 * u64::from(k), &head.to_le_bytes());
        }
        g.ram.put(g.rx.avail + 2, &avail_rx.to_le_bytes());
        g.ram.put(g.tx.avail + 2, &avail_tx.to_le_bytes());
        for queue in [Queue::Rx, Queue::Tx] {
            for _ in 0..=QSIZE {
                match g.dev.pop(queue, &mut g.ram) {
                    Ok(Some(chain)) => {
                        chains += 1;
                        for s in chain.segments().as_slice() {
                            assert!(g.ram.contains(s.ipa, u64::from(s.len)));
                        }
                        let done = if queue == Queue::Tx {
                            let _ = g.dev.transmit(&chain, &g.ram);
                            g.dev.complete_transmit(chain, &mut g.ram)
                        } else {
                            g.dev.complete_receive(chain, 60, &mut g.ram)
                        };
                        assert!(done.is_ok());
                    }
                    Ok(None) => break,
                    Err(kind) => {
                        kinds.insert(kind.name());
                        refused += 1;
                        break;
                    }
                }
            }
        }
        assert_eq!(g.ram.escaped.get(), 0);
        assert_eq!(
            g.dev.violations().total(),
            u64::from(g.r(STATUS) & S_DEVICE_NEEDS_RESET != 0)
        );
    }
    // The sample reached both outcomes, and most kinds of refusal.
    assert!(
        chains > 100 && refused > 100,
        "chains {chains}, refused {refused}"
    );
    assert!(kinds.len() >= 8, "{kinds:?}");
}

/// Random register traffic from a hostile driver (any offset in and around the window,
/// any width, any value, QueueReady and Status included) interleaved with the
/// hypervisor's pops and completions: nothing panics, nothing leaves the window, and a
/// device that needs a reset hands out no chain.
#[test]
fn random_register_traffic_keeps_the_device_consistent() {
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    const REGS: [u64; 24] = [
        MAGIC_VALUE,
        DEVICE_FEATURES,
        DEVICE_FEATURES_SEL,
        DRIVER_FEATURES,
        DRIVER_FEATURES_SEL,
        QUEUE_SEL,
        QUEUE_NUM_MAX_REG,
        QUEUE_NUM,
        QUEUE_READY,
        QUEUE_NOTIFY,
        INTERRUPT_STATUS,
        INTERRUPT_ACK,
        STATUS,
        QUEUE_DESC_LOW,
        QUEUE_DESC_LOW + 4,
        QUEUE_DRIVER_LOW,
        QUEUE_DRIVER_LOW + 4,
        QUEUE_DEVICE_LOW,
        QUEUE_DEVICE_LOW + 4,
        SHM_SEL,
        QUEUE_RESET,
        CONFIG_GENERATION,
        CONFIG,
        CONFIG + 10,
    ];
    let (mut live_pops, mut chains) = (0u64, 0u64);
    for round in 0..200 {
        let mut g = Guest::live();
        g.fill_rx(8);
        for _ in 0..200 {
            let r = next();
            let offset = match r % 8 {
                0 => next() % 0x400,
                1 => next(),
                _ => REGS[(next() % REGS.len() as u64) as usize],
            };
            let size = [1u8, 2, 4, 4, 4, 8][(r >> 8) as usize % 6];
            let value = match (r >> 16) % 4 {
                0 => next(),
                1 => (r >> 24) % 4,
                // Plausible ring addresses inside and outside the window.
                2 => (BASE + next() % (RAM as u64 + 0x2000)) & !0xF,
                _ => [0, 1, 3, 0xF, 0x4F, 0x80, 256, 512][(r >> 24) as usize % 8],
            };
            if r & (1 << 40) != 0 {
                g.dev.read(offset, size);
            } else {
                g.dev.write(offset, size, value, &g.ram);
            }
            for queue in [Queue::Rx, Queue::Tx] {
                let needs_reset = g.dev.status() & S_DEVICE_NEEDS_RESET != 0;
                match g.dev.pop(queue, &mut g.ram) {
                    Ok(Some(chain)) => {
                        assert!(!needs_reset && g.dev.is_live());
                        chains += 1;
                        let done = if queue == Queue::Rx {
                            g.dev.complete_receive(chain, 14, &mut g.ram)
                        } else {
                            g.dev.complete_transmit(chain, &mut g.ram)
                        };
                        assert!(done.is_ok());
                    }
                    Ok(None) => live_pops += u64::from(g.dev.is_live()),
                    Err(_) => assert!(!needs_reset, "a stopped device found a violation"),
                }
            }
            assert_eq!(
                g.dev.interrupt_pending(),
                g.dev.read(INTERRUPT_STATUS, 4) != 0
            );
        }
        assert_eq!(g.ram.escaped.get(), 0, "round {round}");
    }
    assert!(
        chains > 100 && live_pops > 1000,
        "chains {chains}, live pops {live_pops}"
    );
}
