//! RPC2 beside its baselines, all between two processes on loopback:
//! - null calls per second against a raw UDP echo of the same datagram size
//!   and a tokio TCP request/response echo, with 1 and 64 calls outstanding;
//! - SFTP fetch of 256 MiB into a file against a TCP copy into a file;
//!
//! each with encryption off (clear) and on (encrypted).
//!
//! cargo bench -p coda-bench --bench rpc2

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coda_rpc2::endpoint::{Auth, SideEffect};
use coda_rpc2::packet::{CRC_BYTES, HEADER_BYTES, TAG_BYTES};
use coda_rpc2::udp::{ClientThread, UdpEndpoint};
use coda_rpc2::{CellKey, Config, Credentials, Sink, Token};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const NULL: u16 = 1;
const FETCH: u16 = 3;
const CELL: [u8; 32] = [0x42; 32];
const SFTP_BYTES: u64 = 256 << 20;

/// A server process, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(program: &str, args: &[&str]) -> Server {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let mut child = Command::new(dir.join(program))
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("start {program} (build it with cargo build --release --workspace): {e}")
        });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    Server { child, addr }
}

fn rpc2_server() -> Server {
    let hex: String = CELL.iter().map(|b| format!("{b:02x}")).collect();
    start(
        "rpc2-testd",
        &["--listen", "127.0.0.1:0", "--cell-key", &hex],
    )
}

fn auth(encrypted: bool) -> Auth {
    if !encrypted {
        return Auth::Anonymous;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = Token {
        user_id: 1,
        session_key: [1; 32],
        issued_at: now,
        expires_at: now + 86_400,
    };
    let sealed_token = token.seal(&CellKey::from_bytes(CELL), [2; 24]);
    Auth::Encrypted(Credentials {
        sealed_token,
        session_key: token.session_key,
    })
}

/// The size of a null request datagram at a level: what the baselines echo.
fn null_datagram_bytes(encrypted: bool) -> usize {
    HEADER_BYTES + if encrypted { TAG_BYTES } else { CRC_BYTES }
}

/// A glommio executor thread with one connection per level to the server;
/// it runs batches of null calls and reports how long each took.
struct NullCaller {
    jobs: async_channel::Sender<(bool, u64, u64, std::sync::mpsc::Sender<Duration>)>,
}

impl NullCaller {
    fn start(addr: SocketAddr) -> NullCaller {
        let (jobs, rx) =
            async_channel::unbounded::<(bool, u64, u64, std::sync::mpsc::Sender<Duration>)>();
        std::thread::spawn(move || {
            let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
            ex.run(async move {
                let ep =
                    UdpEndpoint::bind("127.0.0.1:0".parse().unwrap(), Config::default()).unwrap();
                let clear = ep.connect(addr, auth(false)).await.unwrap();
                let encrypted = ep.connect(addr, auth(true)).await.unwrap();
                while let Ok((enc, outstanding, iters, done)) = rx.recv().await {
                    let conn = if enc { encrypted } else { clear };
                    let start = Instant::now();
                    let tasks: Vec<_> = (0..outstanding)
                        .map(|t| {
                            let ep = ep.clone();
                            let n = iters / outstanding + u64::from(t < iters % outstanding);
                            glommio::spawn_local(async move {
                                for _ in 0..n {
                                    ep.call(conn, 7, NULL, Bytes::new(), None).await.unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await;
                    }
                    let _ = done.send(start.elapsed());
                }
            });
        });
        NullCaller { jobs }
    }

    fn run(&self, encrypted: bool, outstanding: u64, iters: u64) -> Duration {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs
            .send_blocking((encrypted, outstanding, iters, tx))
            .unwrap();
        rx.recv().unwrap()
    }
}

fn udp_echo(addr: SocketAddr, size: usize, outstanding: u64, iters: u64) -> Duration {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.connect(addr).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let msg = vec![7u8; size];
    let mut buf = vec![0u8; 65_536];
    let start = Instant::now();
    let mut sent = 0;
    let mut received = 0;
    while received < iters {
        while sent < iters && sent - received < outstanding {
            socket.send(&msg).unwrap();
            sent += 1;
        }
        match socket.recv(&mut buf) {
            Ok(_) => received += 1,
            // A datagram lost on loopback: count it and send another.
            Err(_) => sent = received,
        }
    }
    start.elapsed()
}

fn tcp_echo(addr: SocketAddr, size: usize, outstanding: u64, iters: u64) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let msg = vec![7u8; size];
        let mut buf = vec![0u8; size];
        let start = Instant::now();
        let mut sent = 0;
        let mut received = 0;
        while received < iters {
            while sent < iters && sent - received < outstanding {
                wr.write_all(&msg).await.unwrap();
                sent += 1;
            }
            rd.read_exact(&mut buf).await.unwrap();
            received += 1;
        }
        start.elapsed()
    })
}

fn null_calls(c: &mut Criterion) {
    let rpc2 = rpc2_server();
    let caller = NullCaller::start(rpc2.addr);
    let udp = start("bench-echo", &["udp"]);
    for encrypted in [false, true] {
        let size = null_datagram_bytes(encrypted);
        let tcp = start("bench-echo", &["tcp", &size.to_string()]);
        let level = if encrypted { "encrypted" } else { "clear" };
        let mut g = c.benchmark_group(format!("null_call_{level}"));
        g.throughput(Throughput::Elements(1));
        g.warm_up_time(Duration::from_secs(1));
        g.measurement_time(Duration::from_secs(3));
        for outstanding in [1u64, 64] {
            g.bench_function(BenchmarkId::new("rpc2", outstanding), |b| {
                b.iter_custom(|iters| caller.run(encrypted, outstanding, iters))
            });
            g.bench_function(
                BenchmarkId::new(format!("udp_echo_{size}B"), outstanding),
                |b| b.iter_custom(|iters| udp_echo(udp.addr, size, outstanding, iters)),
            );
            g.bench_function(
                BenchmarkId::new(format!("tokio_tcp_echo_{size}B"), outstanding),
                |b| b.iter_custom(|iters| tcp_echo(tcp.addr, size, outstanding, iters)),
            );
        }
        g.finish();
    }
}

fn sftp_fetch(c: &mut Criterion) {
    let rpc2 = rpc2_server();
    let source = start("bench-echo", &["source"]);
    let client = ClientThread::spawn("127.0.0.1:0".parse().unwrap(), Config::default()).unwrap();
    let mut g = c.benchmark_group("fetch_256MiB");
    g.throughput(Throughput::Bytes(SFTP_BYTES));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(10));
    let mut request = SFTP_BYTES.to_le_bytes().to_vec();
    request.extend_from_slice(&1u64.to_le_bytes());
    let request = Bytes::from(request);
    for encrypted in [false, true] {
        let conn = client.connect_blocking(rpc2.addr, auth(encrypted)).unwrap();
        let name = if encrypted {
            "sftp_encrypted"
        } else {
            "sftp_clear"
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                let sink = SideEffect::Receive(Sink::File(tempfile::tempfile().unwrap()));
                let reply = client
                    .call_blocking(conn, 7, FETCH, request.clone(), Some(sink))
                    .unwrap();
                assert_eq!(reply.sftp_bytes, SFTP_BYTES);
            })
        });
    }
    g.bench_function("tcp_copy", |b| {
        b.iter(|| {
            let mut stream = TcpStream::connect(source.addr).unwrap();
            stream.write_all(&SFTP_BYTES.to_le_bytes()).unwrap();
            let mut file = tempfile::tempfile().unwrap();
            let copied = std::io::copy(&mut stream, &mut file).unwrap();
            assert_eq!(copied, SFTP_BYTES);
        })
    });
    g.finish();
}

criterion_group!(benches, null_calls, sftp_fetch);
criterion_main!(benches);
