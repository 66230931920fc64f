//! The running server: one pinned glommio executor per shard, each with
//! its own UDP endpoint, RVM instance and container directory, driving
//! that shard's [`Service`]. Shards talk only to run administration on the
//! shard owning a volume.
//!
//! Group commit: updates commit without flushing; their replies wait in a
//! queue, and one flush (one log sync) releases every reply queued before
//! it, after the executor has run whatever else was ready.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use async_channel::{Receiver, Sender};
use bytes::Bytes;
use coda_proto::acl::ADMINISTRATORS;
use coda_rpc2::udp::{Incoming, UdpEndpoint};
use coda_rpc2::{CellKey, Config, IncomingId};
use futures_lite::future;
use rvm::FlushStep;
use serde::{Deserialize, Serialize};

use crate::cell::{Cell, Peers, ROOT_VOLUME_NAME};
use crate::pdb::{write_atomically, Pdb, ADMINISTRATORS_NAME, ADMIN_ID};
use crate::service::{Action, Job, Service, Then, BREAK_CALL};
use crate::shard::{Shard, ShardOptions};

/// `codasrv.toml` in the server root.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CellConfig {
    /// Hex, 16 bytes.
    pub cell_id: String,
    pub name: String,
    /// Fixed when the cell is made: each shard's volumes live in its own RVM.
    pub shards: u32,
    pub segment_bytes: u64,
    pub log_bytes: u64,
    /// The cell's servers (`--peers`), kept so a restart needs no flags.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub root: PathBuf,
    pub listen: SocketAddr,
    pub cores: Option<u32>,
    pub name: Option<String>,
    /// `NAME=ADDR:PORT,...`: the servers of a cell of several, SCM first.
    pub peers: Option<String>,
    pub shard: ShardOptions,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str, out: &mut [u8]) -> Result<(), Error> {
    if s.len() != out.len() * 2 {
        return Err(format!("expected {} hex digits", out.len() * 2).into());
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16)?;
    }
    Ok(())
}

fn random<const N: usize>() -> Result<[u8; N], Error> {
    let mut b = [0u8; N];
    coda_rpc2::udp::getrandom_fill(&mut b)?;
    Ok(b)
}

/// A cell on disk: made on first start, loaded after.
pub struct Loaded {
    pub config: CellConfig,
    pub key: CellKey,
    pub id: [u8; 16],
    pub pdb: Pdb,
    pub new: bool,
}

/// Loads the cell in `root`, or makes a new one if `root` is missing or empty.
pub fn load_or_init(opts: &ServerOptions) -> Result<Loaded, Error> {
    let root = &opts.root;
    let config_path = root.join("codasrv.toml");
    if config_path.exists() {
        let mut config: CellConfig = toml::from_str(&std::fs::read_to_string(&config_path)?)
            .map_err(|e| format!("{}: {e}", config_path.display()))?;
        if let Some(name) = opts.name.as_ref().filter(|n| **n != config.name) {
            return Err(format!("this server is {}, not {name}", config.name).into());
        }
        if let Some(spec) = opts
            .peers
            .as_ref()
            .filter(|p| config.peers.as_ref() != Some(*p))
        {
            let peers = Peers::parse(spec, &config.name)?;
            match &config.peers {
                Some(before) => peers.may_follow(&Peers::parse(before, &config.name)?)?,
                // Its cell id, key and users are its own: the others could
                // not talk to it, nor take its volume ids for theirs.
                None if !peers.is_scm() => {
                    return Err(format!(
                        "--peers: this server made a cell of its own, so it can only \
                         be the first of --peers (the SCM of the cell it grows into); \
                         to join {}'s cell, start it on an empty --root",
                        peers.scm().0
                    )
                    .into())
                }
                None => {}
            }
            config.peers = opts.peers.clone();
            write_atomically(&config_path, toml::to_string(&config)?.as_bytes(), 0o644)?;
        }
        let mut id = [0u8; 16];
        unhex(&config.cell_id, &mut id)?;
        let mut key = [0u8; 32];
        unhex(
            std::fs::read_to_string(root.join("cell.key"))?.trim(),
            &mut key,
        )
        .map_err(|e| format!("{}: {e}", root.join("cell.key").display()))?;
        let pdb = Pdb::open(&root.join("pdb.toml"))?;
        if let Some(cores) = opts.cores.filter(|&c| c != config.shards) {
            tracing::warn!(
                "--cores {cores} ignored: this cell was made with {} shards",
                config.shards
            );
        }
        return Ok(Loaded {
            config,
            key: CellKey::from_bytes(key),
            id,
            pdb,
            new: false,
        });
    }
    if root.exists() && std::fs::read_dir(root)?.next().is_some() {
        return Err(format!(
            "{} is neither empty nor a cell (no codasrv.toml)",
            root.display()
        )
        .into());
    }
    let name = opts.name.clone().unwrap_or_else(|| "codasrv".into());
    let peers = match &opts.peers {
        Some(spec) => Some(Peers::parse(spec, &name)?),
        None => None,
    };
    let given_password = std::env::var("CODA_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    // A server joining a cell takes its id and key from the SCM.
    let joined = match &peers {
        Some(p) if !p.is_scm() => {
            let password = given_password.as_deref().ok_or(
                "joining a cell needs the SCM's administrator password in CODA_ADMIN_PASSWORD",
            )?;
            Some(crate::peer::join(p, password)?)
        }
        _ => None,
    };
    std::fs::create_dir_all(root)?;
    let shards = opts
        .cores
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let (id, key): ([u8; 16], [u8; 32]) = match &joined {
        Some(j) => (j.cell_id, j.cell_key),
        None => (random()?, random()?),
    };
    write_atomically(&root.join("cell.key"), hex(&key).as_bytes(), 0o600)?;
    let mut pdb = Pdb::open(&root.join("pdb.toml"))?;
    let password = match given_password {
        // The SCM's database comes with the first update.
        _ if joined.is_some() => None,
        Some(p) => Some(p),
        None => {
            let p = hex(&random::<12>()?);
            write_atomically(
                &root.join("admin.password"),
                format!("{p}\n").as_bytes(),
                0o600,
            )?;
            Some(p)
        }
    };
    if let Some(password) = password {
        pdb.add_user("admin", &password, Some(ADMIN_ID), random()?)?;
        pdb.add_member(ADMINISTRATORS_NAME, "admin")?;
        debug_assert!(pdb.cps(ADMIN_ID).contains(&ADMINISTRATORS));
    }
    let config = CellConfig {
        cell_id: hex(&id),
        name,
        shards: shards.max(1),
        segment_bytes: opts.shard.segment_bytes,
        log_bytes: opts.shard.log_bytes,
        peers: opts.peers.clone(),
    };
    // Written last: a cell is complete once its configuration exists.
    write_atomically(
        &root.join("codasrv.toml"),
        toml::to_string(&config)?.as_bytes(),
        0o644,
    )?;
    Ok(Loaded {
        config,
        key: CellKey::from_bytes(key),
        id,
        pdb,
        new: true,
    })
}

enum ShardMsg {
    Job(Job, Sender<(u16, Bytes)>),
    Stop,
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub cell: Arc<Cell>,
    stops: Vec<Sender<ShardMsg>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The update and resolver threads, in a cell of several.
    helpers: Vec<std::thread::JoinHandle<()>>,
    stop_helpers: Arc<std::sync::atomic::AtomicBool>,
}

impl Server {
    /// Opens every shard, binds, and returns once all serve.
    pub fn start(opts: ServerOptions) -> Result<Server, Error> {
        let loaded = load_or_init(&opts)?;
        let shards = loaded.config.shards;
        let shard_opts = ShardOptions {
            segment_bytes: loaded.config.segment_bytes,
            log_bytes: loaded.config.log_bytes,
            flush_by_driver: true,
        };
        let mut cell = Cell::new(
            loaded.key.clone(),
            loaded.id,
            shards,
            loaded.config.name.clone(),
            loaded.pdb,
        );
        if let Some(spec) = &loaded.config.peers {
            let peers = Peers::parse(spec, &loaded.config.name)?;
            cell.join_peers(peers, opts.root.join("directory.bin"))?;
        }
        cell.keep_volume_counter(opts.root.join("volume.next"))?;
        let cell = Arc::new(cell);
        let channels: Vec<(Sender<ShardMsg>, Receiver<ShardMsg>)> =
            (0..shards).map(|_| async_channel::unbounded()).collect();
        let peers: Arc<Vec<Sender<ShardMsg>>> =
            Arc::new(channels.iter().map(|(s, _)| s.clone()).collect());
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<SocketAddr, String>>();
        let mut threads = Vec::new();
        for (i, (_, inbox)) in channels.into_iter().enumerate() {
            let i = i as u32;
            let dir = opts.root.join(format!("shard{i}"));
            let listen = if i == 0 {
                opts.listen
            } else {
                SocketAddr::new(opts.listen.ip(), 0)
            };
            let (cell, peers, ready, shard_opts) = (
                cell.clone(),
                peers.clone(),
                ready_tx.clone(),
                shard_opts.clone(),
            );
            let builder =
                glommio::LocalExecutorBuilder::new(glommio::Placement::Fixed(i as usize % cpus))
                    .name(&format!("shard{i}"));
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shard{i}"))
                    .spawn(move || {
                        let ex = match builder.make() {
                            Ok(ex) => ex,
                            Err(e) => {
                                let _ = ready.send(Err(format!("shard {i}: executor: {e}")));
                                return;
                            }
                        };
                        ex.run(run_shard(ShardStart {
                            index: i,
                            dir,
                            listen,
                            cell,
                            peers,
                            inbox,
                            ready,
                            shard_opts,
                        }));
                    })?,
            );
        }
        drop(ready_tx);
        let mut addr = None;
        for _ in 0..shards {
            let a = ready_rx
                .recv()
                .map_err(|_| "a shard died while starting")??;
            if addr.is_none() || a.port() == opts.listen.port() {
                addr = Some(a);
            }
        }
        let addr = cell.addr(0).parse().unwrap_or(addr.expect("shards > 0"));
        let stop_helpers = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let helpers = match cell.peers {
            Some(_) => start_helpers(&cell, &peers, &stop_helpers)?,
            None => Vec::new(),
        };
        Ok(Server {
            addr,
            cell,
            stops: peers.iter().cloned().collect(),
            threads,
            helpers,
            stop_helpers,
        })
    }

    /// Stops every shard cleanly (flushed, closed) and waits for them.
    pub fn stop(self) {
        self.stop_helpers
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.helpers {
            let _ = t.join();
        }
        for s in &self.stops {
            let _ = s.send_blocking(ShardMsg::Stop);
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The update thread (after one update, so a server that just joined
/// knows the cell's users before it serves) and the resolver thread.
fn start_helpers(
    cell: &Arc<Cell>,
    shards: &Arc<Vec<Sender<ShardMsg>>>,
    stop: &Arc<std::sync::atomic::AtomicBool>,
) -> Result<Vec<std::thread::JoinHandle<()>>, Error> {
    let senders = shards.clone();
    let run: crate::update::RunJob = Arc::new(move |shard, job| {
        let (tx, rx) = async_channel::bounded(1);
        let failed = (coda_proto::Errno::EIO.0, Bytes::new());
        if senders[shard as usize]
            .send_blocking(ShardMsg::Job(job, tx))
            .is_err()
        {
            return failed;
        }
        rx.recv_blocking().unwrap_or(failed)
    });
    let updater = crate::update::Updater {
        cell: cell.clone(),
        client: crate::peer::PeerClient::new(cell.key.clone())?,
        run,
    };
    updater.update();
    let resolver = crate::resolver::Resolver {
        cell: cell.clone(),
        client: crate::peer::PeerClient::new(cell.key.clone())?,
    };
    let (s1, s2) = (stop.clone(), stop.clone());
    Ok(vec![
        std::thread::Builder::new()
            .name("update".into())
            .spawn(move || updater.run(&s1))?,
        std::thread::Builder::new()
            .name("resolver".into())
            .spawn(move || resolver.run(&s2))?,
    ])
}

struct ShardStart {
    index: u32,
    dir: PathBuf,
    listen: SocketAddr,
    cell: Arc<Cell>,
    peers: Arc<Vec<Sender<ShardMsg>>>,
    inbox: Receiver<ShardMsg>,
    ready: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
    shard_opts: ShardOptions,
}

/// What a shard's tasks share.
struct Ctx {
    service: RefCell<Service>,
    ep: UdpEndpoint,
    peers: Arc<Vec<Sender<ShardMsg>>>,
    /// Answers waiting for their commit to be durable.
    durable: RefCell<Vec<Waiter>>,
    /// Work waiting for its containers to be synced.
    syncs: RefCell<Vec<(Vec<u64>, Box<Then>)>>,
    kick: Sender<()>,
    /// The shard's RVM log, written and synced on io_uring.
    log: glommio::io::BufferedFile,
}

/// An answer waiting for durability: to a call, or to another shard's job.
enum Waiter {
    Reply(IncomingId, u16, Bytes),
    Job(Sender<(u16, Bytes)>, u16, Bytes),
}

/// How long a shard waits for its address to be let go.
const BIND_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Binds the shard's socket. A server started again just after it died
/// may find its address still held: the kernel lets go of the old
/// process's sockets only once it has torn down its io_uring, which it
/// does in the background.
fn bind_listen(listen: SocketAddr, config: Config) -> Result<UdpEndpoint, String> {
    let began = std::time::Instant::now();
    loop {
        match UdpEndpoint::bind(listen, config.clone()) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && began.elapsed() < BIND_RETRY => {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r.map_err(|e| format!("binding {listen}: {e}")),
        }
    }
}

fn open_shard(s: &ShardStart) -> Result<(Service, UdpEndpoint), String> {
    let (shard, report) = Shard::open(&s.dir, s.index, s.cell.id, &s.shard_opts)
        .map_err(|e| format!("shard {}: {e}", s.index))?;
    tracing::info!(
        "shard {}: {} volumes, {} vnodes, {} stray containers removed, log tail {}",
        s.index,
        report.volumes,
        report.vnodes,
        report.swept_containers,
        report.log_tail
    );
    let mut service = Service::new(s.cell.clone(), shard);
    // Shard 0 holds the root volume; a crash during the first start may
    // have left the cell without it.
    let has_root = service
        .shard
        .meta
        .volumes
        .values()
        .any(|v| v.header.name == ROOT_VOLUME_NAME);
    // The SCM's: the others find it in the cell's directory.
    if s.index == 0 && !has_root && s.cell.is_scm() {
        let id = s.cell.new_volume_id();
        service
            .new_volume(id, ROOT_VOLUME_NAME, ADMIN_ID)
            .map_err(|e| format!("making {ROOT_VOLUME_NAME}: {e}"))?;
        // No flush driver runs yet: flush here.
        service.shard.flush().map_err(|e| e.to_string())?;
    }
    let config = Config {
        accept_binds: true,
        cell_key: Some(s.cell.key.clone()),
        ..Config::default()
    };
    let ep = bind_listen(s.listen, config)?;
    let mut addr = ep.local_addr().map_err(|e| e.to_string())?;
    // Listening on every address (0.0.0.0): the others reach this server
    // at the address `--peers` gives it, and clients are told that one.
    let named = s.cell.peers.as_ref().and_then(|p| p.addr(&s.cell.name));
    if let (true, Some(named)) = (addr.ip().is_unspecified(), named) {
        addr.set_ip(named.ip());
    }
    s.cell.set_addr(s.index, addr.to_string());
    Ok((service, ep))
}

async fn run_shard(s: ShardStart) {
    let (service, ep) = match open_shard(&s) {
        Ok(x) => x,
        Err(e) => {
            let _ = s.ready.send(Err(e));
            return;
        }
    };
    let (kick, kicked) = async_channel::bounded(1);
    let log = glommio::io::OpenOptions::new()
        .write(true)
        .buffered_open(s.dir.join("meta.log"))
        .await;
    let log = match log {
        Ok(log) => log,
        Err(e) => {
            let _ = s.ready.send(Err(format!("shard {}: log: {e}", s.index)));
            return;
        }
    };
    let ctx = Rc::new(Ctx {
        service: RefCell::new(service),
        ep: ep.clone(),
        peers: s.peers.clone(),
        durable: RefCell::new(Vec::new()),
        syncs: RefCell::new(Vec::new()),
        kick,
        log,
    });
    let flusher = glommio::spawn_local(flush_loop(ctx.clone(), kicked));
    let _ = s.ready.send(Ok(ep.local_addr().expect("bound")));
    enum Ev {
        Net(Incoming),
        Msg(Option<ShardMsg>),
    }
    loop {
        let ev = future::or(async { Ev::Net(ep.next_incoming().await) }, async {
            Ev::Msg(s.inbox.recv().await.ok())
        })
        .await;
        let mut out = Vec::new();
        match ev {
            Ev::Net(Incoming::Request(r)) => {
                let identity = r.identity;
                ctx.service.borrow_mut().request(
                    r.id,
                    identity,
                    r.subsystem,
                    r.opcode,
                    r.body,
                    &mut out,
                );
                dispatch(&ctx, out);
            }
            Ev::Net(Incoming::Accepted { conn, identity, .. }) => {
                ctx.service.borrow_mut().accepted(conn, identity)
            }
            Ev::Net(Incoming::Lost { conn, .. }) => ctx.service.borrow_mut().client_lost(conn),
            Ev::Msg(Some(ShardMsg::Job(job, done))) => {
                let mut out = Vec::new();
                let answer = ctx.service.borrow_mut().run_job(job, &mut out);
                dispatch(&ctx, out);
                if answer.after.is_some() {
                    let waiter = Waiter::Job(done, answer.code, answer.body);
                    ctx.durable.borrow_mut().push(waiter);
                    let _ = ctx.kick.try_send(());
                } else {
                    let _ = done.send((answer.code, answer.body)).await;
                }
            }
            Ev::Msg(Some(ShardMsg::Stop) | None) => break,
        }
    }
    flusher.cancel().await;
    flush_and_reply(&ctx).await;
    ep.shutdown().await;
    let closed = ctx.service.borrow_mut().shard.close_cleanly();
    if let Err(e) = closed {
        tracing::error!("shard {}: final flush: {e}", s.index);
    }
}

/// Carries out the service's actions; transfers and calls run as tasks.
/// A reply waits until the callback breaks its request caused were answered
/// (or failed, which drops that client's promises): once an update returns,
/// no other client still trusts what it replaced (close-to-open).
fn dispatch(ctx: &Rc<Ctx>, actions: Vec<Action>) {
    let mut breaks = Vec::new();
    let mut rest = Vec::with_capacity(actions.len());
    for a in actions {
        match a {
            Action::Break { conn, body } => {
                let c = ctx.clone();
                breaks.push(
                    glommio::spawn_local(async move {
                        let r =
                            c.ep.call(conn, BREAK_CALL.0, BREAK_CALL.1, body, None)
                                .await;
                        if r.is_err() {
                            let mut out = Vec::new();
                            c.service.borrow_mut().break_failed(conn, &mut out);
                            dispatch(&c, out);
                        }
                    })
                    .detach(),
                );
            }
            a => rest.push(a),
        }
    }
    for a in rest {
        let c = ctx.clone();
        match a {
            Action::Reply {
                id,
                code,
                body,
                after,
            } if !breaks.is_empty() => {
                let answered = std::mem::take(&mut breaks);
                drop(
                    glommio::spawn_local(async move {
                        // A client that does not answer soon is not waited
                        // for longer: its break goes on, and if it fails the
                        // client loses every promise and its connection.
                        let all = async {
                            for b in answered {
                                b.await;
                            }
                        };
                        future::or(all, glommio::timer::sleep(BREAK_WAIT)).await;
                        reply(&c, id, code, body, after.is_some());
                    })
                    .detach(),
                )
            }
            Action::Reply {
                id,
                code,
                body,
                after,
            } => reply(&c, id, code, body, after.is_some()),
            Action::Break { .. } => unreachable!("breaks were sent above"),
            Action::Push { id, source, offset } => drop(
                glommio::spawn_local(async move {
                    let r = c.ep.sftp_send(id, source, offset).await;
                    let mut out = Vec::new();
                    c.service.borrow_mut().sftp_done(id, r, &mut out);
                    dispatch(&c, out);
                })
                .detach(),
            ),
            Action::Pull { id, sink, offset } => drop(
                glommio::spawn_local(async move {
                    let r = c.ep.sftp_receive(id, sink, offset).await;
                    let mut out = Vec::new();
                    c.service.borrow_mut().sftp_done(id, r, &mut out);
                    dispatch(&c, out);
                })
                .detach(),
            ),
            Action::Sync { containers, then } => {
                ctx.syncs.borrow_mut().push((containers, then));
                let _ = ctx.kick.try_send(());
            }
            Action::Resolve { volume } => {
                let cell = ctx.service.borrow().cell.clone();
                if cell.peers.is_some() {
                    cell.resolve.post_once(volume);
                }
            }
            Action::Cell { id, job } => drop(
                glommio::spawn_local(async move {
                    let (done, answer) = async_channel::bounded(1);
                    let cell = c.service.borrow().cell.clone();
                    cell.work.post(crate::update::Work { job, done });
                    let (code, body) = answer
                        .recv()
                        .await
                        .unwrap_or((coda_proto::Errno::EIO.0, Bytes::new()));
                    let _ = c.ep.reply(id, code, body).await;
                })
                .detach(),
            ),
            Action::Close { conn } => drop(
                glommio::spawn_local(async move {
                    c.ep.close(conn).await;
                })
                .detach(),
            ),
            Action::Delegate { id, shard, job } => drop(
                glommio::spawn_local(async move {
                    let (tx, rx) = async_channel::bounded(1);
                    let answer = match c.peers[shard as usize].send(ShardMsg::Job(job, tx)).await {
                        Ok(()) => rx
                            .recv()
                            .await
                            .unwrap_or((coda_proto::Errno::EIO.0, Bytes::new())),
                        Err(_) => (coda_proto::Errno::EIO.0, Bytes::new()),
                    };
                    let _ = c.ep.reply(id, answer.0, answer.1).await;
                })
                .detach(),
            ),
        }
    }
}

/// How long an update's reply waits for the breaks it caused to be answered.
const BREAK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Answers a call: once its commit is durable, if it made one.
fn reply(c: &Rc<Ctx>, id: IncomingId, code: u16, body: Bytes, durable: bool) {
    if durable {
        c.durable.borrow_mut().push(Waiter::Reply(id, code, body));
        let _ = c.kick.try_send(());
    } else {
        let c = c.clone();
        drop(
            glommio::spawn_local(async move {
                let _ = c.ep.reply(id, code, body).await;
            })
            .detach(),
        );
    }
}

async fn flush_loop(ctx: Rc<Ctx>, kicked: Receiver<()>) {
    while kicked.recv().await.is_ok() {
        // Let whatever else is ready run first, so one sync covers it too.
        future::yield_now().await;
        flush_and_reply(&ctx).await;
    }
}

async fn flush_and_reply(ctx: &Rc<Ctx>) {
    sync_containers(ctx).await;
    let waiting = std::mem::take(&mut *ctx.durable.borrow_mut());
    if waiting.is_empty() {
        return;
    }
    let flushed = flush_log(ctx).await;
    ctx.service.borrow_mut().shard.reap();
    for w in waiting {
        let fail = |e: &String| {
            tracing::error!("flush failed: {e}");
            (coda_proto::Errno::EIO.0, Bytes::new())
        };
        match w {
            Waiter::Reply(id, code, body) => {
                let (code, body) = flushed.as_ref().map_or_else(fail, |()| (code, body));
                let _ = ctx.ep.reply(id, code, body).await;
            }
            Waiter::Job(done, code, body) => {
                let answer = flushed.as_ref().map_or_else(fail, |()| (code, body));
                let _ = done.send(answer).await;
            }
        }
    }
}

/// Makes every commit so far durable: the log's new records written and
/// synced on io_uring, so the shard serves on meanwhile (group commit).
async fn flush_log(ctx: &Rc<Ctx>) -> Result<(), String> {
    loop {
        let step = ctx.service.borrow().shard.rvm().begin_flush();
        match step.map_err(|e| e.to_string())? {
            FlushStep::Idle => return Ok(()),
            FlushStep::Truncate => {
                let truncated = ctx.service.borrow().shard.rvm().truncate();
                truncated.map_err(|e| e.to_string())?;
            }
            FlushStep::Write(job) => {
                let runs: Vec<(u64, Vec<u8>)> =
                    job.writes().map(|(at, b)| (at, b.to_vec())).collect();
                let written = write_log(&ctx.log, runs).await;
                job.finish(written).map_err(|e| e.to_string())?;
            }
        }
    }
}

async fn write_log(
    log: &glommio::io::BufferedFile,
    runs: Vec<(u64, Vec<u8>)>,
) -> std::io::Result<()> {
    for (mut at, mut bytes) in runs {
        while !bytes.is_empty() {
            let n = log.write_at(bytes.clone(), at).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "log write",
                ));
            }
            bytes.drain(..n);
            at += n as u64;
        }
    }
    log.fdatasync().await.map_err(Into::into)
}

/// Syncs every container waiting, all at once on io_uring (their names
/// are durable already: see [`crate::container`]), then lets what waited
/// on them go on.
async fn sync_containers(ctx: &Rc<Ctx>) {
    let syncs = std::mem::take(&mut *ctx.syncs.borrow_mut());
    if syncs.is_empty() {
        return;
    }
    let paths: Vec<(Vec<PathBuf>, bool)> = {
        let svc = ctx.service.borrow();
        syncs
            .iter()
            .map(|(cs, then)| {
                let paths = cs.iter().map(|&c| svc.shard.containers.path(c)).collect();
                (paths, then.wants_hashes())
            })
            .collect()
    };
    let tasks: Vec<Vec<_>> = paths
        .into_iter()
        .map(|(ps, hash)| {
            ps.into_iter()
                .map(|p| glommio::spawn_local(hash_and_sync(p, hash)))
                .collect()
        })
        .collect();
    // Each waiter hears how its own containers went.
    for ((_, then), group) in syncs.into_iter().zip(tasks) {
        let mut result = Ok(Vec::new());
        for t in group {
            match (t.await, &mut result) {
                (Ok(h), Ok(hashes)) => hashes.push(h),
                (Err(e), _) => result = Err(e),
                (Ok(_), Err(_)) => {}
            }
        }
        let mut out = Vec::new();
        ctx.service.borrow_mut().synced(then, result, &mut out);
        dispatch(ctx, out);
    }
}

/// Containers at least this large are hashed off the shard's thread.
const HASH_ELSEWHERE_BYTES: u64 = 1 << 20;

/// A container's hash (if `hash`; zeros if not), and its bytes made
/// durable on io_uring; a large one is hashed and synced on glommio's
/// blocking pool, so the shard serves on.
async fn hash_and_sync(path: PathBuf, hash: bool) -> std::io::Result<[u8; 32]> {
    let len = std::fs::metadata(&path)?.len();
    if hash && len >= HASH_ELSEWHERE_BYTES {
        return glommio::executor()
            .spawn_blocking(move || crate::container::hash_and_sync(&path))
            .await;
    }
    let hash = match hash {
        true => crate::fileops::hash_file(&std::fs::File::open(&path)?)?,
        false => [0; 32],
    };
    let f = glommio::io::BufferedFile::open(&path).await?;
    f.fdatasync().await?;
    f.close().await?;
    Ok(hash)
}

/// The root directory's files, for tools and tests.
pub fn admin_password_file(root: &Path) -> PathBuf {
    root.join("admin.password")
}
