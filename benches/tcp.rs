//! TCP over the smoltcp device against Linux TCP over loopback (issue 12 item 6): the
//! same payload from a client thread to a server thread, both ways of carrying it.
//!
//! ```text
//! cargo bench -p iqdio-bench --bench tcp            # 64 MiB, 3 runs each
//! IQDIO_TCP_QUICK=1 cargo bench -p iqdio-bench --bench tcp   # 16 MiB
//! ```
//!
//! - **iqdio**: two partitions on one fabric, each thread a smoltcp `Interface` over an
//!   `IqdioDevice` on its own queue set (MFS 64 KiB, so 56 KiB segments; socket
//!   buffers of 512 KiB, Nagle off on the client, no delayed ACK on the server), the
//!   client sending from a slice, the server comparing what it reads with the payload.
//! - **loopback**: `std::net::TcpStream` over 127.0.0.1, the client writing the same
//!   slice in 64 KiB writes, the server reading into 64 KiB and comparing the same way.
//!
//! Each run is timed from the connection's first byte at the server to its last; the
//! best of the runs is kept (the machine is shared). Every byte must arrive as sent
//! (compared with the payload, a `memcmp` per read, cheap next to the transport), or
//! the bench fails. Results go to `<criterion dir>/iqdio-tcp.json`, which
//! `cargo xtask bench` reads for `ratios.tcp_vs_loopback`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant as StdInstant};

use common::{Partition, TestPlatform, fabric, v4};
use iqdio::driver::DriverConfig;
use iqdio::phy::{IqdioDevice, rx_buffer_len, tx_buffer_len};
use iqdio::{FabricConfig, Mfs};
use smoltcp::iface::{Config, Interface, SocketSet, SocketStorage};
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

const PORT: u16 = 5001;
/// A run that takes longer than this has failed.
const TIMEOUT: Duration = Duration::from_secs(120);

fn payload(n: usize) -> Arc<Vec<u8>> {
    let mut x = 0x5eed_u32;
    Arc::new(
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (x >> 24) as u8
            })
            .collect(),
    )
}

/// One side's smoltcp stack over its partition's queue set, polled until `step`
/// says it is done and the peer is done too.
fn run_side(
    fab: &common::TestFabric,
    part: &mut Partition,
    done: &AtomicU8,
    step: &mut dyn FnMut(&mut tcp::Socket<'_>) -> bool,
    setup: &dyn Fn(&mut tcp::Socket<'_>, &mut Interface),
) {
    let lpar = part.lpar;
    let mut rxb = vec![0u8; rx_buffer_len(Mfs::K64)];
    let mut txb = vec![0u8; tx_buffer_len(Mfs::K64)];
    let mut dev = IqdioDevice::new(&mut part.queues[0], fab.port(lpar), &mut rxb, &mut txb)
        .expect("device buffers");
    let start = StdInstant::now();
    let now = || Instant::from_micros(start.elapsed().as_micros() as i64);
    let mut config = Config::new(HardwareAddress::Ip);
    config.random_seed = 0x1d10_0000 + u64::from(lpar);
    let mut iface = Interface::new(config, &mut dev, now());
    iface.update_ip_addrs(|a| {
        a.push(IpCidr::new(IpAddress::from(v4(lpar, 0)), 16))
            .expect("one address");
    });
    let (mut srx, mut stx) = (vec![0u8; 512 << 10], vec![0u8; 512 << 10]);
    let mut sock = tcp::Socket::new(
        tcp::SocketBuffer::new(&mut srx[..]),
        tcp::SocketBuffer::new(&mut stx[..]),
    );
    setup(&mut sock, &mut iface);
    let mut storage: [SocketStorage; 1] = Default::default();
    let mut sockets = SocketSet::new(&mut storage[..]);
    let h = sockets.add(sock);
    let deadline = StdInstant::now() + TIMEOUT;
    let mut mine = false;
    loop {
        iface.poll(now(), &mut dev, &mut sockets);
        if !mine && step(sockets.get_mut::<tcp::Socket>(h)) {
            mine = true;
            done.fetch_add(1, Ordering::SeqCst);
        }
        if mine && done.load(Ordering::SeqCst) >= 2 {
            break;
        }
        assert!(
            StdInstant::now() < deadline,
            "tcp bench: LPAR {lpar} timed out; counters {:?}, last error {:?}",
            dev.counters(),
            dev.last_error()
        );
        if !dev.has_input() {
            std::thread::yield_now();
        }
    }
    let c = dev.counters();
    assert_eq!(c.tx_dropped(), 0, "tcp bench: packets lost: {c:?}");
}

/// One run over iqdio: time from the first byte at the server to the last.
fn iqdio_run(data: &Arc<Vec<u8>>) -> Duration {
    let fab = fabric(TestPlatform::new(), FabricConfig::DEFAULT);
    let cfg = DriverConfig::new(0, Mfs::K64);
    let mut client_part = Partition::new(&fab, 1, 1, cfg);
    let mut server_part = Partition::new(&fab, 2, 1, cfg);
    let done = Arc::new(AtomicU8::new(0));
    let server_addr = IpAddress::from(v4(2, 0));

    let server = {
        let (fab, done, data) = (fab.clone(), done.clone(), data.clone());
        std::thread::spawn(move || {
            let mut same = true;
            let mut got = 0usize;
            let mut first: Option<StdInstant> = None;
            let mut elapsed = Duration::ZERO;
            let mut closed = false;
            run_side(
                &fab,
                &mut server_part,
                &done,
                &mut |s| {
                    while s.can_recv() {
                        let n = s
                            .recv(|b| {
                                same &= data.get(got..got + b.len()) == Some(b);
                                (b.len(), b.len())
                            })
                            .expect("recv");
                        got += n;
                        first.get_or_insert_with(StdInstant::now);
                    }
                    if !closed && got > 0 && !s.may_recv() {
                        elapsed = first.map_or(Duration::ZERO, |t| t.elapsed());
                        s.close();
                        closed = true;
                    }
                    closed && s.state() == tcp::State::Closed
                },
                &|s, _| {
                    s.set_ack_delay(None);
                    s.listen(PORT).expect("listen");
                },
            );
            (server_part, got, same, elapsed)
        })
    };
    let client = {
        let (fab, done, data) = (fab.clone(), done.clone(), data.clone());
        std::thread::spawn(move || {
            let mut off = 0usize;
            let mut closed = false;
            run_side(
                &fab,
                &mut client_part,
                &done,
                &mut |s| {
                    if off < data.len() && s.can_send() {
                        off += s.send_slice(&data[off..]).expect("send");
                    }
                    if off == data.len() && !closed {
                        s.close();
                        closed = true;
                    }
                    closed && matches!(s.state(), tcp::State::TimeWait | tcp::State::Closed)
                },
                &|s, iface| {
                    s.set_nagle_enabled(false);
                    s.connect(iface.context(), (server_addr, PORT), 49152u16)
                        .expect("connect");
                },
            );
            client_part
        })
    };
    let client_part = client.join().expect("client thread");
    let (server_part, got, same, elapsed) = server.join().expect("server thread");
    assert_eq!(got, data.len(), "tcp bench: bytes received over iqdio");
    assert!(same, "tcp bench: bytes changed over iqdio");
    for p in [&client_part, &server_part] {
        fab.remove_partition(p.lpar).expect("remove partition");
    }
    elapsed
}

/// One run over Linux TCP loopback, the same payload.
fn loopback_run(data: &Arc<Vec<u8>>) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let at = listener.local_addr().expect("address");
    let ready = Arc::new(Barrier::new(2));
    let server = {
        let (ready, data) = (ready.clone(), data.clone());
        std::thread::spawn(move || {
            ready.wait();
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = vec![0u8; 64 << 10];
            let mut same = true;
            let mut first: Option<StdInstant> = None;
            let mut got = 0usize;
            loop {
                let n = s.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                first.get_or_insert_with(StdInstant::now);
                same &= data.get(got..got + n) == Some(&buf[..n]);
                got += n;
            }
            (got, same, first.map_or(Duration::ZERO, |t| t.elapsed()))
        })
    };
    ready.wait();
    let mut c = TcpStream::connect(at).expect("connect");
    c.set_nodelay(true).expect("nodelay");
    for chunk in data.chunks(64 << 10) {
        c.write_all(chunk).expect("write");
    }
    drop(c);
    let (got, same, elapsed) = server.join().expect("server thread");
    assert_eq!(got, data.len(), "tcp bench: bytes received over loopback");
    assert!(same, "tcp bench: bytes changed over loopback");
    elapsed
}

fn main() {
    // `cargo bench` passes `--bench`; any other argument is a filter no run here
    // matches (criterion's convention): run nothing then.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && !a.is_empty())
    {
        return;
    }
    let quick = std::env::var_os("IQDIO_TCP_QUICK").is_some();
    let bytes = if quick { 16 << 20 } else { 64 << 20 };
    let runs = 3;
    let data = payload(bytes);
    let best = |f: &dyn Fn(&Arc<Vec<u8>>) -> Duration, name: &str| {
        let mut times = Vec::new();
        for _ in 0..runs {
            times.push(f(&data).as_secs_f64().max(1e-9));
        }
        times.sort_by(f64::total_cmp);
        let rate = bytes as f64 / times[0];
        println!(
            "tcp/{name}: {bytes} bytes, best of {runs}: {:.3} s, {:.1} MiB/s (runs: {times:?})",
            times[0],
            rate / f64::from(1 << 20)
        );
        rate
    };
    let iqdio = best(&iqdio_run, "iqdio");
    let loopback = best(&loopback_run, "loopback");
    println!("tcp: iqdio / loopback = {:.3}", iqdio / loopback);
    let dir = std::env::var_os("CRITERION_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "target/criterion".into());
    let _ = std::fs::create_dir_all(&dir);
    std::fs::write(
        dir.join("iqdio-tcp.json"),
        format!(
            "{{\n  \"bytes\": {bytes},\n  \"runs\": {runs},\n  \"iqdio_bytes_per_s\": {iqdio},\n  \
             \"loopback_bytes_per_s\": {loopback}\n}}\n"
        ),
    )
    .expect("writing iqdio-tcp.json");
}
