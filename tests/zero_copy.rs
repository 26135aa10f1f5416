//! Zero-copy transmit and receive (issue 12 items 2 and 3): the program writes frames
//! straight into its output buffers and reads them where they landed in its input
//! buffers; the fabric's copy is the only one.

mod common;

use common::*;
use iqdio::driver::{DriverConfig, DriverError, SendError};
use iqdio::qdio::SlsbState;
use iqdio::{FabricConfig, Mfs, Reason};

/// Takes every waiting frame, reading each in place: the pieces concatenated, and the
/// contiguous view when there is one (which must then equal the pieces).
fn drain_in_place(q: &mut iqdio::driver::QueueDriver) -> Vec<(Vec<u8>, bool)> {
    let mut out = Vec::new();
    while q
        .receive(|f| {
            let joined: Vec<u8> = f.pieces().flatten().copied().collect();
            assert_eq!(joined.len(), f.len());
            let contiguous = f.contiguous();
            if let Some(c) = contiguous {
                assert_eq!(c, &joined[..]);
            }
            out.push((joined, contiguous.is_some()));
        })
        .is_some()
    {}
    out
}

#[test]
fn a_frame_written_in_place_arrives_and_is_read_in_place() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, config(Mfs::K64));
    let mut b = Partition::new(&fab, 2, 1, config(Mfs::K64));
    let port = fab.port(1);
    for (seq, len) in [1usize, 64, 1500, 4064, 4065, 9000, 56 << 10]
        .into_iter()
        .enumerate()
    {
        let data = payload((1, 0), seq as u32, len);
        let r = a.queues[0].send_with(&port, v4(2, 0), len, |buf| {
            assert_eq!(buf.len(), len);
            buf.copy_from_slice(&data);
            seq
        });
        assert_eq!(r.ok(), Some(seq), "{len} B sent");
        let got = drain_in_place(&mut b.queues[0]);
        // Frames the fabric delivers into a buffer this driver armed lie in one slot.
        assert_eq!(got, vec![(data, true)], "{len} B");
    }
    assert!(a.ram.guards_intact() && b.ram.guards_intact());
}

#[test]
fn several_frames_written_in_place_share_one_sbal() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, config(Mfs::K64));
    let mut b = Partition::new(&fab, 2, 1, config(Mfs::K64));
    let frames: Vec<Vec<u8>> = [100, 5000, 1, 4070]
        .iter()
        .enumerate()
        .map(|(i, &l)| payload((1, 0), i as u32, l))
        .collect();
    let lens: Vec<usize> = frames.iter().map(Vec::len).collect();
    let mut order = Vec::new();
    a.queues[0]
        .prime_frames_with(v6(2, 0), &lens, |i, buf| {
            order.push(i);
            buf.copy_from_slice(&frames[i]);
        })
        .unwrap();
    assert_eq!(order, [0, 1, 2, 3]);
    let r = a.queues[0].flush(&fab.port(1)).unwrap();
    assert_eq!((r.delivered, r.refused.len()), (1, 0));
    let got: Vec<Vec<u8>> = drain_in_place(&mut b.queues[0])
        .into_iter()
        .map(|(f, _)| f)
        .collect();
    assert_eq!(got, frames);
}

#[test]
fn writing_in_place_checks_as_copying_does() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let cfg = DriverConfig {
        tx_buffers: 1,
        ..config(Mfs::K16)
    };
    let mut a = Partition::new(&fab, 1, 1, cfg);
    let mut called = false;
    let too_large = a.queues[0].prime_with(v4(2, 0), 16 << 10, |_| called = true);
    assert_eq!(too_large.err(), Some(DriverError::TooLarge));
    let none = a.queues[0].prime_frames_with(v4(2, 0), &[], |_, _| called = true);
    assert_eq!(none.err(), Some(DriverError::InvalidFrame));
    assert!(!called, "nothing written for a frame that cannot be primed");
    a.queues[0].prime_with(v4(2, 0), 10, |b| b.fill(1)).unwrap();
    let full = a.queues[0].prime_with(v4(2, 0), 10, |_| called = true);
    assert_eq!(full.err(), Some(DriverError::NoFreeBuffer));
    assert!(!called);
}

#[test]
fn a_refused_frame_written_in_place_is_resent_without_the_program() {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let cfg = DriverConfig {
        rx_buffers: 2,
        ..config(Mfs::K16)
    };
    let mut a = Partition::new(&fab, 1, 1, config(Mfs::K16));
    let mut b = Partition::new(&fab, 2, 1, cfg);
    let port = fab.port(1);
    // Fill b's two armed buffers, then the third frame is refused: target full.
    for seq in 0..2 {
        let data = payload((1, 0), seq, 700);
        a.queues[0]
            .send_with(&port, v4(2, 0), 700, |buf| buf.copy_from_slice(&data))
            .unwrap();
    }
    let third = payload((1, 0), 2, 700);
    let refused = a.queues[0].send_with(&port, v4(2, 0), 700, |buf| {
        buf.copy_from_slice(&third);
        "written"
    });
    let Err((Some("written"), SendError::Refused(Reason::TargetFull))) = refused else {
        panic!("expected a target-full refusal after the write, got {refused:?}");
    };
    let n = 2;
    assert_eq!(a.queues[0].output_state(n), SlsbState::OUTPUT_ERROR);
    assert_eq!(drain_in_place(&mut b.queues[0]).len(), 2);
    a.queues[0].resend(&port, n).unwrap();
    assert_eq!(drain_in_place(&mut b.queues[0]), vec![(third, true)]);
    // Only a refused buffer can be resent.
    assert_eq!(
        a.queues[0].resend(&port, n + 1),
        Err(SendError::Driver(DriverError::InvalidFrame))
    );
}

/// An IPv4 packet to `dest` of `len` bytes (the device reads only the version and
/// the destination), its other bytes a pattern of `seed`.
#[cfg(feature = "smoltcp")]
fn ipv4_packet(dest: [u8; 4], len: usize, seed: u8) -> Vec<u8> {
    let mut p: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
    p[0] = 0x45;
    p[16..20].copy_from_slice(&dest);
    p
}

/// The smoltcp device reads a buffer of one frame in place (issue 12 item 4): the
/// packet smoltcp gets lies in the partition's input buffer, which stays the
/// program's (0x82) while the token may borrow it and goes back to the fabric at the
/// device's next call; a buffer of several frames is still copied out. Nothing is
/// handed over twice, and every packet is counted once.
#[cfg(feature = "smoltcp")]
#[test]
fn the_smoltcp_device_reads_a_single_frame_in_place() {
    use iqdio::phy::{IqdioDevice, rx_buffer_len, tx_buffer_len};
    use smoltcp::phy::{Device, RxToken};
    use smoltcp::time::Instant;

    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let mut a = Partition::new(&fab, 1, 1, config(Mfs::K64));
    let mut b = Partition::new(&fab, 2, 1, config(Mfs::K64));
    let port = fab.port(1);
    let dest = [10, 0, 2, 1];
    let one = ipv4_packet(dest, 1500, 1);
    let two = [ipv4_packet(dest, 100, 2), ipv4_packet(dest, 200, 3)];
    let three = ipv4_packet(dest, 9000, 4);
    a.queues[0].send(&port, v4(2, 0), &one).unwrap();
    a.queues[0]
        .prime_frames(v4(2, 0), &[&two[0], &two[1]])
        .unwrap();
    a.queues[0].flush(&port).unwrap();
    a.queues[0].send(&port, v4(2, 0), &three).unwrap();

    let ram = b.ram.host().as_ptr() as usize..b.ram.host().as_ptr() as usize + b.ram.len();
    let in_ram = |p: &[u8]| {
        ram.contains(&(p.as_ptr() as usize)) && ram.contains(&(p.as_ptr() as usize + p.len() - 1))
    };
    let (mut rxb, mut txb) = (
        vec![0u8; rx_buffer_len(Mfs::K64)],
        vec![0u8; tx_buffer_len(Mfs::K64)],
    );
    let mut dev = IqdioDevice::new(&mut b.queues[0], fab.port(2), &mut rxb, &mut txb).unwrap();

    // Buffer 0: one frame, read where it landed.
    let (rx, _tx) = dev.receive(Instant::ZERO).unwrap();
    assert_eq!(rx.consume(|p| (in_ram(p), p.to_vec())), (true, one.clone()));
    // Held until the device's next call: still the program's, and not input any more.
    assert_eq!(dev.driver().input_state(0), SlsbState::INPUT_PRIMED);
    assert!(dev.has_input(), "buffers 1 and 2 wait");

    // Buffer 1: two frames, copied out (buffer 0 handed back first).
    for want in &two {
        let (rx, _tx) = dev.receive(Instant::ZERO).unwrap();
        assert_eq!(
            rx.consume(|p| (in_ram(p), p.to_vec())),
            (false, want.clone())
        );
    }
    assert_ne!(dev.driver().input_state(0), SlsbState::INPUT_PRIMED);
    assert_ne!(dev.driver().input_state(1), SlsbState::INPUT_PRIMED);

    // Buffer 2: one frame in place again; then no more input.
    let (rx, _tx) = dev.receive(Instant::ZERO).unwrap();
    assert_eq!(
        rx.consume(|p| (in_ram(p), p.to_vec())),
        (true, three.clone())
    );
    assert!(!dev.has_input());
    assert!(dev.receive(Instant::ZERO).is_none());
    assert_eq!(dev.counters().rx_packets, 4);
    assert_eq!(dev.counters().rx_errors, 0);

    // A held buffer goes back when the device is dropped: its frame is not handed
    // over a second time.
    a.queues[0].send(&port, v4(2, 0), &one).unwrap();
    let (rx, _tx) = dev.receive(Instant::ZERO).unwrap();
    assert!(rx.consume(|p| in_ram(p)));
    drop(dev);
    assert_ne!(b.queues[0].input_state(3), SlsbState::INPUT_PRIMED);
    assert_eq!(b.queues[0].receive(|_| panic!("handed over twice")), None);
    let c = b.queues[0].rx_counters();
    assert_eq!((c.frames, c.bad_frames), (5, 0));
    assert!(a.ram.guards_intact() && b.ram.guards_intact());
}
