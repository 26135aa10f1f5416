//! Transport benchmarks (issue 5): iqdio's whole cycle against the physical limit
//! (memcpy) and what one would use instead (a `heapless::spsc` ring, a UDP datagram
//! over loopback), at the same frame sizes, in the same run; then scaling over two
//! disjoint pairs, target lookup in a small and a full address table, and a polling
//! against a sleeping receiver.
//!
//! ```text
//! cargo bench -p iqdio-bench --bench transport               # everything (criterion defaults)
//! cargo bench -p iqdio-bench --bench transport -- cycle/iqdio   # a filter
//! cargo xtask bench [--quick]                    # everything + results under docs/bench
//! ```
//!
//! Benchmarks measure; they never assert timings. Results land in
//! `target/criterion/<group>/<function>/<parameter>/new/estimates.json`;
//! `target/criterion/iqdio-extra.json` records what criterion does not (interrupts
//! per frame of the receiver benchmarks, UDP datagrams lost).

mod support;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{Ipv4Addr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering, fence};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use heapless::spsc::Queue;
use iqdio::driver::{DriverConfig, SendError};
use iqdio::{Mfs, Platform, Reason};

use support::{BenchFabric, Buf, Pair, Partition, SIZES, WakePlatform, backoff, fabric, frame, v4};

/// Side results that criterion's estimates do not hold, written at the end.
static EXTRA: Mutex<BTreeMap<String, f64>> = Mutex::new(BTreeMap::new());

fn record(key: &str, value: f64) {
    EXTRA.lock().unwrap().insert(key.to_string(), value);
}

/// The paired streams' ratios by frame size (`stream/paired/SIZE`: iqdio's time over
/// the spsc ring's, the two run back to back), one per measured call; their median
/// goes to [`EXTRA`] as `stream_paired_SIZE`.
static PAIRED: Mutex<BTreeMap<usize, Vec<f64>>> = Mutex::new(BTreeMap::new());

/// Sums and counts of the averages written with [`EXTRA`].
static AVERAGES: Mutex<BTreeMap<String, (f64, f64)>> = Mutex::new(BTreeMap::new());

fn accumulate(key: String, total: f64, count: f64) {
    let mut averages = AVERAGES.lock().unwrap();
    let e = averages.entry(key).or_default();
    e.0 += total;
    e.1 += count;
}

/// This thread's time on a CPU and time waiting for one, in ns (Linux's schedstat).
fn sched_ns() -> Option<(f64, f64)> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = text.split_whitespace().map(|f| f.parse::<f64>().ok());
    Some((fields.next()??, fields.next()??))
}

/// Frame sizes against throughput: iqdio's whole cycle, memcpy, spsc ring, UDP.
fn cycle(c: &mut Criterion) {
    let mut g = c.benchmark_group("cycle");
    for size in SIZES {
        g.throughput(Throughput::Bytes(size as u64));

        // iqdio: sender's send (prime + SIGA; the fabric copies into the receiver's
        // input buffer and signals it), receiver's poll + take + copy out + refill.
        let fab = fabric(WakePlatform::default());
        let mut pair = Pair::new(&fab, 1, size);
        g.bench_with_input(BenchmarkId::new("iqdio", size), &size, |b, _| {
            b.iter(|| black_box(pair.cycle(&fab)))
        });
        drop(pair);

        // iqdio, zero-copy: the sender writes its frame in place (a sequence stamp),
        // the fabric copies it (the only copy), the receiver reads it in place.
        let fab = fabric(WakePlatform::default());
        let mut pair = Pair::new(&fab, 1, size);
        let mut seq = 0u64;
        g.bench_with_input(BenchmarkId::new("iqdio_zc", size), &size, |b, _| {
            b.iter(|| {
                seq += 1;
                black_box(pair.cycle_in_place(&fab, seq))
            })
        });
        drop(pair);

        // The same with the smallest rings the driver takes (2 input buffers, 1
        // output buffer): a cycle has one frame in flight.
        let fab = fabric(WakePlatform::default());
        let one = DriverConfig {
            rx_buffers: 2,
            tx_buffers: 1,
            ..DriverConfig::new(0, Mfs::K64)
        };
        let mut pair = Pair::with_config(&fab, 1, size, one);
        let mut seq = 0u64;
        g.bench_with_input(BenchmarkId::new("iqdio_zc_1", size), &size, |b, _| {
            b.iter(|| {
                seq += 1;
                black_box(pair.cycle_in_place(&fab, seq))
            })
        });
        drop(pair);

        // memcpy: the frame copied once, source and destination reused (cache-warm).
        let src = frame(size);
        let mut dst = Buf::zeroed(size);
        g.bench_with_input(BenchmarkId::new("memcpy", size), &size, |b, _| {
            b.iter(|| {
                dst.copy_from_slice(black_box(&src));
                black_box(&mut dst);
            })
        });

        // memcpy into a ring: the frame copied once, from one cache-warm source into
        // the next of 16 slots of 64 KiB (iqdio's 16 input buffers of the MFS, the
        // driver's default), each 4 KiB piece's first and last byte read back, as the
        // zero-copy receiver reads its input elements: the one copy of `iqdio_zc` over
        // the same working set in the same rotation, nothing else.
        if size >= 16 << 10 {
            let stride = DriverConfig::new(0, Mfs::K64).mfs.bytes();
            let mut slots = Buf::zeroed(RING_SLOTS * stride);
            let mut next = 0usize;
            g.bench_with_input(BenchmarkId::new("memcpy_ring", size), &size, |b, _| {
                b.iter(|| {
                    let at = next * stride;
                    next = (next + 1) % RING_SLOTS;
                    let slot = &mut slots[at..at + size];
                    slot.copy_from_slice(black_box(&src));
                    for piece in black_box(&*slot).chunks(support::PAGE) {
                        black_box((piece.first(), piece.last()));
                    }
                })
            });
        }

        // spsc: a plain ring of 16 frame slots, as iqdio's 16 input buffers; the
        // producer copies the frame into the next slot and enqueues its length, the
        // consumer dequeues and copies it out.
        let mut ring = SpscRing::new(size);
        let mut out = Buf::zeroed(size);
        g.bench_with_input(BenchmarkId::new("spsc", size), &size, |b, _| {
            b.iter(|| {
                ring.push(black_box(&src));
                black_box(ring.pop(&mut out));
            })
        });

        // UDP over loopback: this thread sends, another receives.
        g.bench_with_input(BenchmarkId::new("udp", size), &size, |b, &size| {
            b.iter_custom(|iters| udp_stream(size, iters))
        });
    }
    g.finish();
}

/// Frame sizes of the copy-primitive comparison (issue 12 item 1).
const COPY_SIZES: [usize; 4] = [64, 1500, 16 << 10, 56 << 10];

/// The fabric's copy primitive (`iqdio::copy`, the one kept: inline assembly) against
/// the candidates it was chosen over (word-wise relaxed atomics, volatile words) and
/// against plain memcpy, page-aligned buffers, cache-warm, at the issue's sizes.
fn copy(c: &mut Criterion) {
    use iqdio::copy::candidates;
    type CopyFn = unsafe fn(*mut u8, *const u8, usize);
    let fns: [(&str, CopyFn); 4] = [
        ("memcpy", candidates::memcpy),
        ("asm", candidates::kept),
        ("atomic_words", candidates::atomic_words),
        ("volatile_words", candidates::volatile_words),
    ];
    let mut g = c.benchmark_group("copy");
    for size in COPY_SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let src = frame(size);
        let mut dst = Buf::zeroed(size);
        for (name, f) in fns {
            // Checked once here, not after the benchmark: a filter that skips it
            // (`cargo bench -p iqdio-bench --bench transport -- stream/`) leaves `dst` untouched.
            // SAFETY: two distinct buffers of `size` bytes, no other thread.
            unsafe { f(dst.as_mut_ptr(), src.as_ptr(), size) };
            assert_eq!(&dst[..], &src[..], "{name} copies the frame");
            dst.fill(0);
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, &n| {
                b.iter(|| {
                    // SAFETY: two distinct buffers of `n` bytes, no other thread.
                    unsafe { f(black_box(dst.as_mut_ptr()), black_box(src.as_ptr()), n) };
                    black_box(&mut dst);
                })
            });
        }
    }
    g.finish();
}

/// Frame sizes of the two-core streaming benchmark (issue 12 item 6).
const STREAM_SIZES: [usize; 4] = [64, 1500, 16 << 10, 56 << 10];

/// Two-core streaming: a sender thread and a polling receiver thread (pinned to CPUs
/// 0 and 1 where the machine allows), frames of each size; iqdio zero-copy (the sender
/// writes a stamp in place, the fabric copies, the receiver reads in place) against a
/// `heapless::spsc` ring of [`RING_SLOTS`] frame slots between the same two threads
/// (the producer stamps the slot, the consumer reads it in place). Time per frame;
/// memcpy's is in the `copy` group. At 64 and 1500 B, also the ring with the
/// protocol's per-frame fence (`spsc_fenced`), at 16 and 56 KiB the ring with the
/// frame's one copy (`spsc_copy`): see [`spsc_stream`].
///
/// The same working set on both sides: the receiver arms [`RING_SLOTS`] input buffers
/// ([`stream_config`]), the ring has as many slots, and each ring slot is as large as
/// an input buffer's data (the MFS, 64 KiB), so the frames land in the same amount of
/// memory, reused in the same rotation. What iqdio has beyond the ring is inherent to
/// two address spaces: the sender's own output buffers (8 of 64 KiB, the fabric's copy
/// reads them), and the SBALs and SLSBs.
fn streaming(c: &mut Criterion) {
    let mut g = c.benchmark_group("stream");
    for size in STREAM_SIZES {
        g.throughput(Throughput::Bytes(size as u64));
        let platform = WakePlatform::default();
        let fab = fabric(platform.clone());
        let mut tx = Partition::with_config(&fab, 1, 1, stream_config());
        let mut rx = Partition::with_config(&fab, 2, 1, stream_config());
        g.bench_with_input(BenchmarkId::new("iqdio", size), &size, |b, &size| {
            b.iter_custom(|iters| stream_in_place(&fab, &mut tx, &mut rx, size, iters))
        });
        if let Some(k) = packed_per_buffer(size) {
            g.bench_with_input(BenchmarkId::new("iqdio_packed", size), &size, |b, &size| {
                b.iter_custom(|iters| stream_packed(&fab, &mut tx, &mut rx, size, k, iters))
            });
        }
        g.bench_with_input(BenchmarkId::new("spsc", size), &size, |b, &size| {
            b.iter_custom(|iters| spsc_stream(size, iters, RingMode::Stamp))
        });
        // The ring each paired call sets iqdio's stream against: at 64 B the plain
        // one (`stream_spsc_64`), at 56 KiB the one with the frame's copy.
        let pair_with = match size {
            64 => Some(RingMode::Stamp),
            s if s == 56 << 10 => Some(RingMode::Copy),
            _ => None,
        };
        if let Some(mode) = pair_with {
            // Paired: each call streams its frames through iqdio, then as many through
            // the spsc ring, on the same two pinned threads, and keeps the ratio of the
            // two times. This machine's two-core timings are bimodal (its two vCPUs
            // land close together or apart, and that can change between two
            // benchmarks of one run), so the ratio of two benchmarks' medians can set
            // one mode against the other; one call's two halves, a few milliseconds
            // apart, see the same. Criterion times iqdio's half.
            g.bench_with_input(BenchmarkId::new("paired", size), &size, |b, &size| {
                b.iter_custom(|iters| {
                    let t = stream_in_place(&fab, &mut tx, &mut rx, size, iters);
                    let ring = spsc_stream(size, iters, mode);
                    // Calls of a few frames (criterion's first warm-up ones) are mostly
                    // the threads' start: left out.
                    if iters >= PAIRED_MIN_FRAMES {
                        PAIRED
                            .lock()
                            .unwrap()
                            .entry(size)
                            .or_default()
                            .push(t.as_secs_f64() / ring.as_secs_f64());
                    }
                    t
                })
            });
        }
        if size <= 1500 {
            g.bench_with_input(BenchmarkId::new("spsc_fenced", size), &size, |b, &size| {
                b.iter_custom(|iters| spsc_stream(size, iters, RingMode::Fenced))
            });
        } else {
            g.bench_with_input(BenchmarkId::new("spsc_copy", size), &size, |b, &size| {
                b.iter_custom(|iters| spsc_stream(size, iters, RingMode::Copy))
            });
        }
    }
    g.finish();
}

/// The fewest frames a call of `stream/paired` must stream for its ratio to count.
const PAIRED_MIN_FRAMES: u64 = 1000;

/// Frames the packed stream puts into one output buffer at `size` (none above 1500 B,
/// where a buffer carries one or two frames anyway): 16 frames of 64 B (one element
/// each, the SBAL's 16), 8 of 1500 B (a page boundary cuts some in two: 11 elements).
fn packed_per_buffer(size: usize) -> Option<usize> {
    match size {
        0..=64 => Some(16),
        65..=1500 => Some(8),
        _ => None,
    }
}

/// The streaming partitions' driver configuration: [`RING_SLOTS`] input buffers (the
/// spsc ring's slots), 8 output buffers, 64 KiB frames.
fn stream_config() -> DriverConfig {
    DriverConfig {
        rx_buffers: RING_SLOTS as u8,
        ..DriverConfig::new(0, Mfs::K64)
    }
}

/// Pins this thread to CPU `cpu` where the machine allows: `taskset -pc` on its
/// thread id (from `/proc/thread-self`); best effort, nothing happens without them.
fn pin(cpu: usize) {
    let Ok(link) = std::fs::read_link("/proc/thread-self") else {
        return;
    };
    let Some(tid) = link.file_name().and_then(|t| t.to_str()).map(String::from) else {
        return;
    };
    let _ = std::process::Command::new("taskset")
        .args(["-pc", &cpu.to_string(), &tid])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// Streams `iters` frames of `size` bytes from `tx` to `rx` (on another thread),
/// zero-copy; returns the time until the receiver has read the last one in place.
fn stream_in_place(
    fab: &BenchFabric<WakePlatform>,
    tx: &mut Partition,
    rx: &mut Partition,
    size: usize,
    iters: u64,
) -> Duration {
    let dest = v4(rx.lpar, 0);
    let go = Barrier::new(2);
    let done = AtomicBool::new(false);
    let port = fab.port(tx.lpar);
    std::thread::scope(|s| {
        s.spawn(|| {
            pin(1);
            rx.queues[0].start_polling();
            let mut got = 0u64;
            let mut spins = 0;
            go.wait();
            // Polling (0x81 on the newest consumed buffer), the receiver finds its
            // work in the SLSB and leaves its indicator bytes alone, as Linux's qeth
            // does under NAPI: resetting them for every frame would pull three cache
            // lines back from the sender's core each time the fabric sets them.
            while got < iters {
                while let Some(n) = rx.queues[0].receive(|f| {
                    for p in f.pieces() {
                        black_box((p.first(), p.last()));
                    }
                }) {
                    got += n as u64;
                    spins = 0;
                }
                if got < iters {
                    backoff(&mut spins);
                }
            }
            // Nothing more is sent, so whatever it reports is already taken.
            let _ = rx.stop_polling();
            done.store(true, Ordering::Release);
        });
        // The sender on a thread of its own too, so that pinning leaves the bench's
        // main thread (and the threads later benchmarks spawn from it) unpinned.
        let sender = s.spawn(|| {
            pin(0);
            go.wait();
            let start = Instant::now();
            for seq in 0..iters {
                let mut spins = 0;
                let mut outcome = tx.queues[0]
                    .send_with(&port, dest, size, |b| support::stamp(b, seq))
                    .map(|_| ())
                    .map_err(|(_, e)| e);
                loop {
                    match outcome {
                        Ok(()) => break,
                        Err(SendError::Refused(Reason::TargetFull)) => {
                            backoff(&mut spins);
                            let refused = tx.queues[0].last_primed();
                            outcome = tx.queues[0].resend(&port, refused);
                        }
                        Err(e) => panic!("send: {e:?}"),
                    }
                }
            }
            let mut spins = 0;
            while !done.load(Ordering::Acquire) {
                backoff(&mut spins);
            }
            start.elapsed()
        });
        sender.join().expect("sender")
    })
}

/// Streams `iters` frames of `size` bytes from `tx` to `rx` (on another thread),
/// zero-copy, `per_buffer` frames written in place into each output buffer and sent
/// with one SIGA, as Linux's qeth packs frames that share a next hop into one buffer
/// (`qeth_iqd_may_bulk`, `drivers/s390/net/qeth_core_main.c`) and defers the SIGA
/// while the stack has more to send (`xmit_more`). The receiver takes a buffer's
/// frames in place, one `receive` call each buffer. Returns the time until the
/// receiver has read the last frame.
///
/// The sender keeps at most `RING_SLOTS - 2` buffers in flight (the receiver counts
/// the buffers it took, as the spsc consumer counts its slots); a buffer refused
/// anyway (target full) has its frames written again into the next buffer, as a
/// program that still holds them would.
fn stream_packed(
    fab: &BenchFabric<WakePlatform>,
    tx: &mut Partition,
    rx: &mut Partition,
    size: usize,
    per_buffer: usize,
    iters: u64,
) -> Duration {
    let dest = v4(rx.lpar, 0);
    let go = Barrier::new(2);
    let taken = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let port = fab.port(tx.lpar);
    let lens = [size; 16];
    std::thread::scope(|s| {
        s.spawn(|| {
            pin(1);
            rx.queues[0].start_polling();
            let (mut got, mut buffers) = (0u64, 0u64);
            let mut spins = 0;
            go.wait();
            // Polling, the SLSB alone (see `stream_in_place`).
            while got < iters {
                while let Some(n) = rx.queues[0].receive(|f| {
                    for p in f.pieces() {
                        black_box((p.first(), p.last()));
                    }
                }) {
                    got += n as u64;
                    buffers += 1;
                    // Release: the buffer was read (and re-armed) before the sender
                    // counts it free.
                    taken.store(buffers, Ordering::Release);
                    spins = 0;
                }
                if got < iters {
                    backoff(&mut spins);
                }
            }
            // Nothing more is sent, so whatever it reports is already taken.
            let _ = rx.stop_polling();
            done.store(true, Ordering::Release);
        });
        let sender = s.spawn(|| {
            pin(0);
            go.wait();
            let start = Instant::now();
            let (mut seq, mut sent) = (0u64, 0u64);
            while seq < iters {
                let k = per_buffer.min((iters - seq) as usize);
                let mut spins = 0;
                while sent - taken.load(Ordering::Acquire) >= (RING_SLOTS - 2) as u64 {
                    backoff(&mut spins);
                }
                loop {
                    tx.queues[0]
                        .prime_frames_with(dest, &lens[..k], |i, b| {
                            support::stamp(b, seq + i as u64)
                        })
                        .expect("a free output buffer");
                    let report = tx.queues[0].flush(&port).expect("SIGA");
                    match report.refused.first() {
                        None => break,
                        Some((_, Reason::TargetFull)) => backoff(&mut spins),
                        Some((_, r)) => panic!("refused: {r:?}"),
                    }
                }
                seq += k as u64;
                sent += 1;
            }
            let mut spins = 0;
            while !done.load(Ordering::Acquire) {
                backoff(&mut spins);
            }
            start.elapsed()
        });
        sender.join().expect("sender")
    })
}

/// The same stream through a `heapless::spsc` ring of [`RING_SLOTS`] frame slots, each
/// as large as an iqdio input buffer's data (the MFS: see [`streaming`]): the producer
/// stamps the next free slot and enqueues its length; the consumer dequeues, reads the
/// slot in place, and frees it (a counter the producer waits on).
///
/// `Fenced` (`stream/spsc_fenced`): the ring with what iqdio's interrupt decision adds
/// to each frame and nothing else. The consumer writes a mark after each frame, as a
/// polling receiver marks its newest buffer 0x81. After each enqueue the producer
/// issues a SeqCst fence and reads that mark, as the fabric does after it sets the
/// summary byte (`initiative::signal`). The fence is the protocol's: without it, a
/// send and a receiver that stops polling at the same moment can miss each other.
/// It measures the floor that the fence and the mark's line set for a one-frame
/// SIGA, on the same two threads.
///
/// `Copy` (`stream/spsc_copy`, 16 and 56 KiB): the producer copies a whole frame into
/// the slot (memcpy, from one page-aligned frame it keeps, as a sender's output buffer
/// stays in its cache), and the consumer reads the first and last byte of each 4 KiB
/// piece, as iqdio's streaming receiver reads its input elements. That is the one copy
/// a frame takes through iqdio, into the same 16 slots of 64 KiB in the same rotation,
/// with nothing else: the floor that working set sets for `stream_56k`, on the same
/// two threads.
fn spsc_stream(size: usize, iters: u64, mode: RingMode) -> Duration {
    let fenced = mode == RingMode::Fenced;
    // The frame a `Copy` producer copies (no other mode reads one).
    let source = (mode == RingMode::Copy).then(|| frame(size));
    let source = source.as_deref();
    let stride = stream_config().mfs.bytes();
    assert!(size <= stride, "a frame fits its slot");
    let mut slots = Buf::zeroed(RING_SLOTS * stride);
    let base = slots.as_mut_ptr() as usize;
    let mut queue: Queue<usize, RING_SLOTS> = Queue::new();
    let (mut producer, mut consumer) = queue.split();
    let freed = AtomicU64::new(0);
    let mark = AtomicU8::new(0);
    let go = Barrier::new(2);
    let (go, freed, mark) = (&go, &freed, &mark);
    std::thread::scope(|s| {
        s.spawn(move || {
            pin(1);
            go.wait();
            let mut got = 0u64;
            let mut spins = 0;
            while got < iters {
                match consumer.dequeue() {
                    Some(len) => {
                        let at = base + (got as usize % RING_SLOTS) * stride;
                        // SAFETY: the producer wrote this slot before enqueueing (the
                        // queue's Release/Acquire orders it) and does not write it
                        // again until `freed` says so.
                        let slot = unsafe { std::slice::from_raw_parts(at as *const u8, len) };
                        if mode == RingMode::Copy {
                            for piece in slot.chunks(support::PAGE) {
                                black_box((piece.first(), piece.last()));
                            }
                        } else {
                            black_box((slot.first(), slot.last()));
                        }
                        got += 1;
                        if fenced {
                            mark.store(got as u8, Ordering::Relaxed);
                        }
                        // Release: the reads above happen before the producer reuses it.
                        freed.store(got, Ordering::Release);
                        spins = 0;
                    }
                    None => backoff(&mut spins),
                }
            }
        });
        let producer = s.spawn(move || {
            pin(0);
            go.wait();
            let start = Instant::now();
            for seq in 0..iters {
                let mut spins = 0;
                // Acquire pairs with the consumer's Release: the slot is free again.
                while seq - freed.load(Ordering::Acquire) >= (RING_SLOTS - 1) as u64 {
                    backoff(&mut spins);
                }
                let at = base + (seq as usize % RING_SLOTS) * stride;
                // SAFETY: slot `seq % 16` is free (checked above) and only this thread
                // writes slots; the buffer outlives the scope.
                let slot = unsafe { std::slice::from_raw_parts_mut(at as *mut u8, size) };
                if let Some(source) = source {
                    slot.copy_from_slice(source);
                }
                support::stamp(slot, seq);
                while producer.enqueue(size).is_err() {
                    backoff(&mut spins);
                }
                if fenced {
                    fence(Ordering::SeqCst);
                    black_box(mark.load(Ordering::Relaxed));
                }
            }
            let mut spins = 0;
            while freed.load(Ordering::Acquire) < iters {
                backoff(&mut spins);
            }
            start.elapsed()
        });
        producer.join().expect("producer")
    })
}

/// What the producer and the consumer of [`spsc_stream`] do with each frame.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RingMode {
    /// The producer stamps the slot, the consumer reads its first and last byte.
    Stamp,
    /// As `Stamp`, with the protocol's per-frame fence and mark.
    Fenced,
    /// The producer copies the whole frame into the slot, the consumer reads each
    /// 4 KiB piece's first and last byte.
    Copy,
}

/// Slots of the spsc rings, and the input buffers the streaming receiver arms at once
/// ([`stream_config`]).
const RING_SLOTS: usize = 16;

/// The spsc ring: a queue of frame lengths over 16 page-aligned frame slots.
struct SpscRing {
    queue: Queue<usize, RING_SLOTS>,
    slots: Buf,
    stride: usize,
    head: usize,
    tail: usize,
}

impl SpscRing {
    fn new(size: usize) -> Self {
        Self {
            queue: Queue::new(),
            slots: Buf::zeroed(RING_SLOTS * size.next_multiple_of(support::PAGE)),
            stride: size.next_multiple_of(support::PAGE),
            head: 0,
            tail: 0,
        }
    }

    fn push(&mut self, frame: &[u8]) {
        let (mut producer, _) = self.queue.split();
        let at = self.head * self.stride;
        self.slots[at..at + frame.len()].copy_from_slice(frame);
        producer.enqueue(frame.len()).expect("one frame in flight");
        self.head = (self.head + 1) % RING_SLOTS;
    }

    fn pop(&mut self, out: &mut [u8]) -> usize {
        let (_, mut consumer) = self.queue.split();
        let len = consumer.dequeue().expect("a frame was pushed");
        let at = self.tail * self.stride;
        out[..len].copy_from_slice(&self.slots[at..at + len]);
        self.tail = (self.tail + 1) % RING_SLOTS;
        len
    }
}

/// Sends `iters` datagrams of `size` bytes from this thread to a receiving thread over
/// 127.0.0.1 and returns the time until the last one is received. A few datagrams are
/// in flight at most (a window, as any sender that must not lose data keeps), so the
/// receiver's socket buffer (default size) does not overflow; a datagram lost anyway
/// is counted after a 200 ms silence and the run goes on, so it always ends.
fn udp_stream(size: usize, iters: u64) -> Duration {
    let rx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind receiver");
    rx.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind sender");
    tx.connect(rx.local_addr().unwrap()).unwrap();
    // A datagram takes its size plus up to a few KiB of kernel overhead (its
    // "truesize") in the receiver's default 208 KiB buffer: keep well below it, and
    // at least 2 in flight so that sending and receiving overlap.
    let window = (160 * 1024 / (size as u64 + 4096)).clamp(2, 64);
    let data = frame(size);
    let accounted = AtomicU64::new(0);
    let sent = AtomicU64::new(0);
    let lost = AtomicU64::new(0);
    let ready = Barrier::new(2);
    let elapsed = std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = vec![0u8; size.max(1) + 1];
            ready.wait();
            let mut got = 0u64;
            while got < iters {
                match rx.recv(&mut buf) {
                    Ok(n) => {
                        debug_assert_eq!(n, size);
                        got += 1;
                    }
                    Err(_) => {
                        // Silence: whatever was sent and not received is lost.
                        let s = sent.load(Ordering::Acquire);
                        lost.fetch_add(s - got, Ordering::Relaxed);
                        got = s;
                    }
                }
                accounted.store(got, Ordering::Release);
            }
        });
        ready.wait();
        let start = Instant::now();
        for i in 0..iters {
            let mut spins = 0;
            while i - accounted.load(Ordering::Acquire) >= window {
                backoff(&mut spins);
            }
            tx.send(&data).expect("send datagram");
            sent.store(i + 1, Ordering::Release);
        }
        let mut spins = 0;
        while accounted.load(Ordering::Acquire) < iters {
            backoff(&mut spins);
        }
        start.elapsed()
    });
    let lost = lost.load(Ordering::Relaxed);
    if lost > 0 {
        eprintln!("udp {size} B: {lost} of {iters} datagrams lost");
        let mut extra = EXTRA.lock().unwrap();
        *extra.entry(format!("udp_lost_{size}")).or_default() += lost as f64;
    }
    elapsed
}

/// Frame sizes of the scaling benchmark.
const SCALING_SIZES: [usize; 2] = [64, 1500];

/// One sender/receiver pair on one thread against two disjoint pairs on two threads,
/// on one fabric (they share its table lock, taken shared by every send). Each
/// iteration moves one frame per pair.
fn scaling(c: &mut Criterion) {
    let mut g = c.benchmark_group("scaling");
    for size in SCALING_SIZES {
        let fab = fabric(WakePlatform::default());
        let mut pairs = [Pair::new(&fab, 1, size), Pair::new(&fab, 3, size)];
        for n in [1usize, 2] {
            g.throughput(Throughput::Elements(n as u64));
            let name = if n == 1 { "1pair" } else { "2pairs" };
            g.bench_with_input(BenchmarkId::new(name, size), &size, |b, _| {
                let key = format!("{name}_{size}");
                b.iter_custom(|iters| run_pairs(&fab, &mut pairs[..n], iters, &key))
            });
        }
    }
    g.finish();
}

/// Runs `iters` cycles on each pair, each pair on its own thread, all starting
/// together; returns the time until the last pair is done. Also records each thread's
/// CPU time per cycle, and its time waiting for a CPU (`scaling_cpu_ns_<key>`,
/// `scaling_wait_ns_<key>`): on a machine whose cores are not all free, wall time
/// cannot show scaling, but CPU time per cycle still shows what sharing a fabric costs.
fn run_pairs<P: Platform>(
    fab: &BenchFabric<P>,
    pairs: &mut [Pair],
    iters: u64,
    key: &str,
) -> Duration {
    let go = Barrier::new(pairs.len() + 1);
    let start = std::thread::scope(|s| {
        for pair in pairs.iter_mut() {
            let go = &go;
            s.spawn(move || {
                go.wait();
                let before = sched_ns();
                for _ in 0..iters {
                    black_box(pair.cycle(fab));
                }
                if let (Some(a), Some(b)) = (before, sched_ns()) {
                    let n = iters as f64;
                    accumulate(format!("scaling_cpu_ns_{key}"), b.0 - a.0, n);
                    accumulate(format!("scaling_wait_ns_{key}"), b.1 - a.1, n);
                }
            });
        }
        go.wait();
        Instant::now()
    });
    start.elapsed()
}

/// Target lookup: the whole 64 B cycle, to one of 8 addresses of the receiver, in a
/// fabric with 16 against 4096 (its capacity) registered addresses. The other
/// addresses belong to four queue sets of a third partition.
fn lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("lookup");
    g.throughput(Throughput::Elements(1));
    for total in [16usize, 4096] {
        let fab = fabric(WakePlatform::default());
        let (mut pair, filler, dests) = support::lookup_setup(&fab, total);
        g.bench_with_input(BenchmarkId::new("send_64", total), &total, |b, _| {
            let mut i = 0usize;
            b.iter(|| {
                pair.dest = dests[i % dests.len()];
                i += 1;
                black_box(pair.cycle(&fab))
            })
        });
        drop(filler);
    }
    g.finish();
}

/// A receiver that polls (its newest consumed buffer reads 0x81: the fabric raises no
/// interrupt) against one that sleeps on its condvar until the fabric's interrupt,
/// while the sender streams 64 B frames as fast as the receiver takes them.
fn receiver(c: &mut Criterion) {
    let mut g = c.benchmark_group("receiver");
    g.throughput(Throughput::Elements(1));
    for polling in [true, false] {
        let platform = WakePlatform::default();
        let fab = fabric(platform.clone());
        let mut tx = Partition::new(&fab, 1, 1);
        let mut rx = Partition::new(&fab, 2, 1);
        let name = if polling { "polling" } else { "sleeping" };
        let frames = AtomicU64::new(0);
        let before = fab.counters_of(2, 0).unwrap();
        g.bench_function(BenchmarkId::new(name, 64), |b| {
            b.iter_custom(|iters| {
                frames.fetch_add(iters, Ordering::Relaxed);
                stream(&fab, &platform, &mut tx, &mut rx, polling, iters)
            })
        });
        let after = fab.counters_of(2, 0).unwrap();
        let n = frames.load(Ordering::Relaxed);
        let raised = (after.interrupts_raised - before.interrupts_raised) as f64;
        // Nothing streamed when a filter left the benchmark out: no figure (0 / 0
        // would write a NaN, which is not JSON).
        if n > 0 {
            record(&format!("interrupts_per_frame_{name}"), raised / n as f64);
        }
    }
    g.finish();
}

/// Streams `iters` 64 B frames from `tx` to `rx` (on another thread); returns the time
/// until the receiver has taken the last one. A full receiver is retried.
fn stream(
    fab: &BenchFabric<WakePlatform>,
    platform: &WakePlatform,
    tx: &mut Partition,
    rx: &mut Partition,
    polling: bool,
    iters: u64,
) -> Duration {
    let data = frame(64);
    let dest = v4(rx.lpar, 0);
    let done = AtomicBool::new(false);
    let go = Barrier::new(2);
    let port = fab.port(tx.lpar);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut out = [0u8; 64];
            let mut got = 0u64;
            if polling {
                rx.queues[0].start_polling();
            }
            let mut seen = platform.raised(rx.lpar);
            let mut spins = 0;
            go.wait();
            loop {
                // Sleeping, high → low: reset each indicator before taking what it
                // announces. Polling, the SLSB alone (see `stream_in_place`).
                rx.initiative();
                while let Some(n) = rx.queues[0].receive(|f| {
                    f.copy_to(&mut out);
                }) {
                    got += n as u64;
                    spins = 0;
                }
                if got >= iters {
                    break;
                }
                if polling {
                    backoff(&mut spins);
                } else {
                    // Any interrupt since `seen` (even one raised while we drained)
                    // returns at once: no wake-up is lost.
                    seen = platform.wait(rx.lpar, seen, Duration::from_millis(10));
                }
            }
            if polling {
                // Nothing more is sent, so whatever it reports is already taken.
                let _ = rx.stop_polling();
            }
            done.store(true, Ordering::Release);
        });
        go.wait();
        let start = Instant::now();
        for _ in 0..iters {
            let mut spins = 0;
            loop {
                match tx.queues[0].send(&port, dest, &data) {
                    Ok(()) => break,
                    Err(SendError::Refused(Reason::TargetFull)) => backoff(&mut spins),
                    Err(e) => panic!("send: {e:?}"),
                }
            }
        }
        let mut spins = 0;
        while !done.load(Ordering::Acquire) {
            backoff(&mut spins);
        }
        start.elapsed()
    })
}

/// Writes [`EXTRA`] next to criterion's results.
fn write_extra(_: &mut Criterion) {
    let dir = std::env::var_os("CRITERION_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR")
                .map(|t| std::path::PathBuf::from(t).join("criterion"))
        })
        .unwrap_or_else(|| "target/criterion".into());
    let mut extra = EXTRA.lock().unwrap().clone();
    for (k, (total, count)) in AVERAGES.lock().unwrap().iter() {
        extra.insert(k.clone(), total / count);
    }
    for (size, ratios) in PAIRED.lock().unwrap().iter() {
        let mut paired = ratios.clone();
        paired.sort_by(f64::total_cmp);
        let (Some(first), Some(last)) = (paired.first(), paired.last()) else {
            continue;
        };
        let mid = paired.len() / 2;
        let median = if paired.len() % 2 == 1 {
            paired[mid]
        } else {
            (paired[mid - 1] + paired[mid]) / 2.0
        };
        extra.insert(format!("stream_paired_{size}"), median);
        extra.insert(format!("stream_paired_{size}_min"), *first);
        extra.insert(format!("stream_paired_{size}_max"), *last);
        extra.insert(format!("stream_paired_{size}_calls"), paired.len() as f64);
    }
    let body: Vec<String> = extra
        .iter()
        .map(|(k, v)| format!("  \"{k}\": {v}"))
        .collect();
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("iqdio-extra.json"),
        format!("{{\n{}\n}}\n", body.join(",\n")),
    );
}

criterion_group!(
    benches,
    copy,
    cycle,
    streaming,
    scaling,
    lookup,
    receiver,
    write_extra
);
criterion_main!(benches);
