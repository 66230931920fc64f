//! The file server's hot calls against a real `codasrv`, beside the same
//! work on a local directory:
//! - GetAttr, Create and 4 KiB Store calls per second from 1 and from 8
//!   connections (one outstanding call each), with the server on 1 and on
//!   2 cores (8 connections spread over a volume on each shard);
//! - Reintegrate: records applied per second for a batch of 1000 creates and
//!   1000 stores of 4 KiB (staged beforehand), on one core, and two such
//!   batches at once to volumes on one shard or on two (shard scaling).
//!
//! Baselines: stat, create+fsync, and 4 KiB write+fsync in a local directory.
//!
//! cargo bench -p coda-bench --bench vice
//! (needs `cargo build --release --bins` first for codasrv)

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coda_proto::cml::{self, CmlRecord, Op};
use coda_proto::fid::{Fid, StoreId, LOCAL_VNODE_BASE};
use coda_proto::status::{Status, Timestamp};
use coda_proto::vice::{self, op, MutateReply, Reintegrate, ReintegrateReply, Stage, VolumeInfo};
use coda_proto::volutil::{self, CreateVolume};
use coda_rpc2::codec;
use coda_rpc2::endpoint::{Auth, ConnId, SideEffect};
use coda_rpc2::udp::{Incoming, UdpEndpoint};
use coda_rpc2::{Config, Credentials, Source};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

struct Srv {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for Srv {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(cores: u32) -> Srv {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("codasrv");
    let mut child = Command::new(&bin)
        .args(["--root", dir.path().join("vice").to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--cores", &cores.to_string()])
        .env("CODA_ADMIN_PASSWORD", "pw")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "start {} (cargo build --release --bins): {e}",
                bin.display()
            )
        });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().parse().unwrap();
    Srv {
        child,
        addr,
        _dir: dir,
    }
}

/// One connection's state.
struct Conn {
    id: ConnId,
    root: Fid,
    file: Fid,
    seen: StoreId,
    host: u64,
    next: u64,
}

impl Conn {
    fn record(&mut self, op: Op) -> CmlRecord {
        self.next += 1;
        CmlRecord {
            store_id: StoreId {
                host: self.host,
                unique: self.next,
            },
            time: Timestamp::now(),
            op,
        }
    }
}

type State = Rc<RefCell<Vec<Conn>>>;

/// Takes connection `i` out of the state for a task to own while it runs.
fn take(st: &State, i: usize) -> Conn {
    let placeholder = Conn {
        id: ConnId(0),
        root: Fid::default(),
        file: Fid::default(),
        seen: StoreId::default(),
        host: 0,
        next: 0,
    };
    std::mem::replace(&mut st.borrow_mut()[i], placeholder)
}
type Job =
    Box<dyn FnOnce(UdpEndpoint, State) -> Pin<Box<dyn std::future::Future<Output = ()>>> + Send>;

/// A glommio client thread holding the connections; jobs run on it.
struct Client {
    jobs: async_channel::Sender<Job>,
}

impl Client {
    fn start() -> Client {
        let (jobs, rx) = async_channel::unbounded::<Job>();
        std::thread::spawn(move || {
            let ex = glommio::LocalExecutorBuilder::default().make().unwrap();
            ex.run(async move {
                let ep =
                    UdpEndpoint::bind("127.0.0.1:0".parse().unwrap(), Config::default()).unwrap();
                let state: State = Default::default();
                // Answer callback breaks: a client that does not loses its connection.
                let breaks = ep.clone();
                glommio::spawn_local(async move {
                    loop {
                        if let Incoming::Request(r) = breaks.next_incoming().await {
                            let _ = breaks.reply(r.id, 0, Bytes::new()).await;
                        }
                    }
                })
                .detach();
                while let Ok(job) = rx.recv().await {
                    job(ep.clone(), state.clone()).await;
                }
                ep.shutdown().await;
            });
        });
        Client { jobs }
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(UdpEndpoint, State) -> Pin<Box<dyn std::future::Future<Output = T>>>
            + Send
            + 'static,
    ) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs
            .send_blocking(Box::new(move |ep, st| {
                Box::pin(async move {
                    let _ = tx.send(f(ep, st).await);
                })
            }))
            .unwrap();
        rx.recv().unwrap()
    }
}

async fn call<T: codec::Decode>(
    ep: &UdpEndpoint,
    conn: ConnId,
    sub: u16,
    opc: u16,
    body: Bytes,
    side: Option<SideEffect>,
) -> T {
    let r = ep.call(conn, sub, opc, body, side).await.unwrap();
    assert_eq!(
        r.code,
        0,
        "call {sub}/{opc} failed: {}",
        coda_proto::Errno(r.code)
    );
    codec::from_bytes(&r.body).unwrap()
}

async fn create(ep: &UdpEndpoint, c: &mut Conn, name: String) -> Status {
    c.next += 1;
    let fid = Fid::new(c.root.volume, LOCAL_VNODE_BASE + c.next, 1);
    let rec = c.record(Op::Create(cml::Create {
        dir: c.root,
        name,
        fid,
        mode: 0o644,
        group: 0,
    }));
    let r: MutateReply = call(
        ep,
        c.id,
        vice::SUBSYSTEM,
        op::CREATE,
        codec::to_bytes(&rec),
        None,
    )
    .await;
    r.statuses[0].clone()
}

async fn store(ep: &UdpEndpoint, c: &mut Conn, data: &Bytes) {
    let rec = c.record(Op::Store(cml::Store {
        fid: c.file,
        seen: c.seen,
        length: data.len() as u64,
        content_hash: *blake3::hash(data).as_bytes(),
    }));
    let sid = rec.store_id;
    let side = SideEffect::Send(Source::Memory(data.clone()));
    let _: MutateReply = call(
        ep,
        c.id,
        vice::SUBSYSTEM,
        op::STORE,
        codec::to_bytes(&rec),
        Some(side),
    )
    .await;
    c.seen = sid;
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    GetAttr,
    Create,
    Store,
}

/// A server with `conns` connections, spread over one volume per shard.
fn setup(cores: u32, conns: usize) -> (Srv, Client) {
    let srv = start(cores);
    let addr = srv.addr;
    let ct = coda_tools::client().unwrap();
    let creds: Credentials = coda_tools::login(&ct, addr, "admin", "pw").unwrap();
    let admin = coda_tools::connect(&ct, addr, Auth::Encrypted(creds.clone())).unwrap();
    let mut vols: Vec<VolumeInfo> = Vec::new();
    for i in 0..cores {
        vols.push(
            coda_tools::call(
                &ct,
                admin,
                volutil::SUBSYSTEM,
                volutil::op::CREATE,
                &CreateVolume {
                    name: format!("bench{i}"),
                    replicas: Vec::new(),
                },
            )
            .unwrap(),
        );
    }
    let client = Client::start();
    client.run(move |ep, st| {
        Box::pin(async move {
            for i in 0..conns {
                let v = &vols[i % vols.len()];
                let at: SocketAddr = v.servers[0].parse().unwrap();
                let id = ep
                    .connect(at, Auth::Encrypted(creds.clone()))
                    .await
                    .unwrap();
                let mut c = Conn {
                    id,
                    root: v.root,
                    file: v.root,
                    seen: StoreId::default(),
                    host: 100 + i as u64,
                    next: 0,
                };
                // Each connection works in its own directory, so a create
                // breaks no other connection's callback on it.
                c.next += 1;
                let fid = Fid::new(c.root.volume, LOCAL_VNODE_BASE + c.next, 1);
                let rec = c.record(Op::MakeDir(cml::MakeDir {
                    dir: c.root,
                    name: format!("dir{i}"),
                    fid,
                    mode: 0o755,
                    group: 0,
                }));
                let r: MutateReply = call(
                    &ep,
                    c.id,
                    vice::SUBSYSTEM,
                    op::MAKE_DIR,
                    codec::to_bytes(&rec),
                    None,
                )
                .await;
                c.root = r.statuses[0].fid;
                let f = create(&ep, &mut c, format!("file{i}")).await;
                c.file = f.fid;
                c.seen = f.vv.store_id;
                st.borrow_mut().push(c);
            }
        })
    });
    (srv, client)
}

/// Runs `iters` calls of `kind` over every connection at once; the time it took.
fn run(client: &Client, kind: Kind, iters: u64) -> Duration {
    client.run(move |ep, st| {
        Box::pin(async move {
            let n = st.borrow().len() as u64;
            let data = Bytes::from(vec![7u8; 4096]);
            let began = Instant::now();
            let tasks: Vec<_> = (0..n)
                .map(|i| {
                    let (ep, st, data) = (ep.clone(), st.clone(), data.clone());
                    let count = iters / n + u64::from(i < iters % n);
                    glommio::spawn_local(async move {
                        // Each task owns its connection for the run.
                        let mut c = take(&st, i as usize);
                        for _ in 0..count {
                            match kind {
                                Kind::GetAttr => {
                                    let _: Status = call(
                                        &ep,
                                        c.id,
                                        vice::SUBSYSTEM,
                                        op::GET_ATTR,
                                        codec::to_bytes(&vice::GetAttr { fid: c.file }),
                                        None,
                                    )
                                    .await;
                                }
                                Kind::Create => {
                                    let name = format!("c{}-{}", c.host, c.next);
                                    create(&ep, &mut c, name).await;
                                }
                                Kind::Store => store(&ep, &mut c, &data).await,
                            }
                        }
                        st.borrow_mut()[i as usize] = c;
                    })
                })
                .collect();
            for t in tasks {
                t.await;
            }
            began.elapsed()
        })
    })
}

/// The same work on a local directory, `conns` threads at once.
fn local(dir: &std::path::Path, kind: Kind, conns: u64, iters: u64) -> Duration {
    let began = Instant::now();
    std::thread::scope(|s| {
        for t in 0..conns {
            let count = iters / conns + u64::from(t < iters % conns);
            s.spawn(move || {
                let file = dir.join(format!("f{t}"));
                std::fs::write(&file, b"x").unwrap();
                for i in 0..count {
                    match kind {
                        Kind::GetAttr => {
                            std::hint::black_box(std::fs::metadata(&file).unwrap().size());
                        }
                        Kind::Create => {
                            let f = std::fs::File::create(
                                dir.join(format!("c{t}-{i}-{}", rand::random::<u32>())),
                            )
                            .unwrap();
                            f.sync_all().unwrap();
                        }
                        Kind::Store => {
                            let mut f = std::fs::File::create(&file).unwrap();
                            f.write_all(&[7u8; 4096]).unwrap();
                            f.sync_all().unwrap();
                        }
                    }
                }
            });
        }
    });
    began.elapsed()
}

fn calls(c: &mut Criterion) {
    let scratch = tempfile::tempdir().unwrap();
    for kind in [Kind::GetAttr, Kind::Create, Kind::Store] {
        let mut g = c.benchmark_group(format!("vice/{kind:?}"));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(4))
            .throughput(Throughput::Elements(1));
        for conns in [1usize, 8] {
            g.bench_function(BenchmarkId::new("local-dir", conns), |b| {
                b.iter_custom(|iters| local(scratch.path(), kind, conns as u64, iters))
            });
            for cores in [1u32, 2] {
                let (_srv, client) = setup(cores, conns);
                g.bench_function(
                    BenchmarkId::new(format!("codasrv-{cores}core"), conns),
                    |b| b.iter_custom(|iters| run(&client, kind, iters)),
                );
            }
        }
        g.finish();
    }
}

/// A batch of `files` creates and 4 KiB stores on connection `c`, its
/// data staged already: the encoded batch, ready to send.
async fn staged_batch(ep: &UdpEndpoint, c: &mut Conn, files: u64) -> Bytes {
    let data = Bytes::from(vec![9u8; 4096]);
    let hash = *blake3::hash(&data).as_bytes();
    let mut records = Vec::new();
    for i in 0..files {
        c.next += 1;
        let fid = Fid::new(c.root.volume, LOCAL_VNODE_BASE + c.next, 1);
        let create = c.record(Op::Create(cml::Create {
            dir: c.root,
            name: format!("r{}-{i}", c.next),
            fid,
            mode: 0o644,
            group: 0,
        }));
        let seen = create.store_id;
        records.push(create);
        let s = c.record(Op::Store(cml::Store {
            fid,
            seen,
            length: 4096,
            content_hash: hash,
        }));
        let stage = Stage {
            store_id: s.store_id,
            length: 4096,
            offset: 0,
        };
        let side = SideEffect::Send(Source::Memory(data.clone()));
        let _: vice::StageReply = call(
            ep,
            c.id,
            vice::SUBSYSTEM,
            op::STAGE,
            codec::to_bytes(&stage),
            Some(side),
        )
        .await;
        records.push(s);
    }
    c.next += 1;
    codec::to_bytes(&Reintegrate {
        volume: c.root.volume,
        batch: StoreId {
            host: c.host,
            unique: c.next,
        },
        records,
    })
}

/// Records per second for batches of creates and stores (data staged
/// first, untimed), one batch per connection at once: on one core, and with
/// two volumes on one core or on two (a load whose client is nearly idle,
/// so it shows the shards scale).
fn reintegrate(c: &mut Criterion) {
    const FILES: u64 = 1000;
    let mut g = c.benchmark_group("vice/reintegrate");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    for (cores, conns) in [(1u32, 1usize), (1, 2), (2, 2)] {
        let (_srv, client) = setup(cores, conns);
        g.throughput(Throughput::Elements(2 * FILES * conns as u64));
        let id = BenchmarkId::new(format!("creates+stores/{cores}core"), format!("{conns}vol"));
        g.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += client.run(move |ep, st| {
                        Box::pin(async move {
                            let mut batches = Vec::new();
                            for i in 0..conns {
                                let mut c = take(&st, i);
                                batches.push(staged_batch(&ep, &mut c, FILES).await);
                                st.borrow_mut()[i] = c;
                            }
                            let began = Instant::now();
                            let sends: Vec<_> = batches
                                .into_iter()
                                .enumerate()
                                .map(|(i, body)| {
                                    let (ep, conn) = (ep.clone(), st.borrow()[i].id);
                                    glommio::spawn_local(async move {
                                        let side = Some(SideEffect::Send(Source::Memory(body)));
                                        let r: ReintegrateReply = call(
                                            &ep,
                                            conn,
                                            vice::SUBSYSTEM,
                                            op::REINTEGRATE,
                                            Bytes::new(),
                                            side,
                                        )
                                        .await;
                                        assert!(matches!(r, ReintegrateReply::Applied(_)), "{r:?}");
                                    })
                                })
                                .collect();
                            for t in sends {
                                t.await;
                            }
                            began.elapsed()
                        })
                    });
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, calls, reintegrate);
criterion_main!(benches);
