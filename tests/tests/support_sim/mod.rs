#![allow(dead_code)]
//! Venus in process over the simulated network: a real
//! `coda_vice::service::Service` on a node of `coda_rpc2::sim::Sim`, and a
//! [`SimTransport`] per Venus that makes its calls there.
//!
//! The `Sim` is built on `Rc` (not `Send`), while a Venus wants an
//! `Arc<dyn Transport>` (`Send + Sync`): the simulated world lives on a
//! thread of its own ([`SimNet`]), and every call is a job sent to it and
//! run to its end before the caller goes on. Only one job runs at a time
//! and simulated time moves only inside jobs, so a run is decided by its
//! seed (the random parts of the network and the endpoints come from it).
//!
//! Callback breaks the server sends a client node are answered by that
//! node's handler at once, as Venus's callback thread does, and queued on
//! the `breaks` of the Venus registered for the node, which applies them
//! before it trusts a status again.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use coda_proto::acl::PrincipalId;
use coda_proto::callback::{self, Break};
use coda_proto::control::TokenGrant;
use coda_proto::vice::{self, NewConnect};
use coda_proto::{Errno, Fid, VnodeKind, VolumeId};
use coda_rpc2::codec;
use coda_rpc2::endpoint::{Auth, ConnId, Event, Reply, SideEffect};
use coda_rpc2::sim::{NetConfig, NodeId, Sim};
use coda_rpc2::{CellKey, Config, Credentials, Time, Token};
use coda_venus::cache::{Cache, ROOT_INO};
use coda_venus::core::{PendingBreaks, SetAttrs, Venus};
use coda_venus::link::{Answer, LinkError, Principal, Transport};
use coda_vice::cell::{Cell, ROOT_VOLUME_NAME};
use coda_vice::pdb::{Pdb, ADMIN_ID};
use coda_vice::service::Service;
use coda_vice::shard::{Shard, ShardOptions};

pub const CELL: [u8; 32] = [0x5a; 32];
pub const CELL_ID: [u8; 16] = [7; 16];
pub const ALICE: PrincipalId = 1000;

/// The local user and group every operation runs as (its token is the
/// cell administrator's).
pub const UID: u32 = 1000;
pub const GID: u32 = 1000;

/// A call gives a silent server this long (simulated) before it fails.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A call that has not finished after this much simulated time is a hang.
const HANG: Duration = Duration::from_secs(900);

// ---------------------------------------------------------------------------
// Seeds and randomness.

/// splitmix64: small, fast, and the same everywhere.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x005e_ed0f_c0da_u64)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo)
    }

    /// True with probability `p` percent.
    pub fn pct(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    /// An index chosen by weight.
    pub fn weighted(&mut self, weights: &[u64]) -> usize {
        let total: u64 = weights.iter().sum();
        let mut x = self.below(total);
        for (i, w) in weights.iter().enumerate() {
            if x < *w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            out.extend_from_slice(&self.next().to_le_bytes());
        }
        out.truncate(n);
        out
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let s = std::env::var(name).ok()?;
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).ok()
    } else {
        s.parse().ok()
    }
}

/// Whether every step is printed as it runs (`SIM_TRACE=1`).
pub fn tracing() -> bool {
    std::env::var_os("SIM_TRACE").is_some()
}

/// A test's op log: kept for the failure report, printed live with SIM_TRACE.
#[derive(Clone, Default)]
pub struct OpLog(Arc<Mutex<Vec<String>>>);

impl OpLog {
    pub fn push(&self, line: impl Into<String>) {
        let line = line.into();
        if tracing() {
            eprintln!("    {line}");
        }
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Runs `run` for each seed: `SIM_SEED=N` picks one, `SIM_SEEDS=K` how
/// many (from `first`), else `default` of them. Every failing seed is
/// reported with its op log; the test fails after all have run.
pub fn for_seeds(test: &str, first: u64, default: u64, run: impl Fn(u64, &OpLog)) {
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(s) => vec![s],
        None => {
            let n = env_u64("SIM_SEEDS").unwrap_or(default);
            let first = env_u64("SIM_FIRST").unwrap_or(first);
            (first..first + n).collect()
        }
    };
    let began = std::time::Instant::now();
    let mut failed = Vec::new();
    for &seed in &seeds {
        let log = OpLog::default();
        if tracing() {
            eprintln!("{test}: seed {seed}");
        }
        let t = std::time::Instant::now();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed, &log)));
        if let Err(e) = r {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            let lines = log.lines();
            let mut report = format!(
                "\n==== {test}: seed {seed} FAILED after {} steps: {msg}\n\
                 reproduce: SIM_SEED={seed} cargo test --release -p coda-tests --test venus_sim -- {test} --exact\n\
                 op log:\n",
                lines.len()
            );
            for (i, l) in lines.iter().enumerate() {
                report.push_str(&format!("  {i:4} {l}\n"));
            }
            eprintln!("{report}");
            failed.push(seed);
        } else if tracing() {
            eprintln!("{test}: seed {seed} passed in {:?}", t.elapsed());
        }
    }
    eprintln!(
        "{test}: {} seeds ({:?}..), {} failed, {:?}",
        seeds.len(),
        seeds.first(),
        failed.len(),
        began.elapsed()
    );
    assert!(failed.is_empty(), "{test}: failing seeds {failed:?}");
}

// ---------------------------------------------------------------------------
// The simulated world (on its own thread).

fn shard_options() -> ShardOptions {
    ShardOptions {
        segment_bytes: 64 << 20,
        log_bytes: 16 << 20,
        ..Default::default()
    }
}

fn server_config() -> Config {
    Config {
        accept_binds: true,
        cell_key: Some(CellKey::from_bytes(CELL)),
        peer_timeout: Duration::from_secs(10),
        datagram_bytes: 1472,
        ..Config::default()
    }
}

fn client_config() -> Config {
    Config {
        peer_timeout: CALL_TIMEOUT,
        ..Config::default()
    }
}

/// Opens the server's shard in `dir` (as a restart does), known at `addr`.
fn open_service(dir: &Path, addr: SocketAddr) -> Service {
    let pdb = Pdb::open(&dir.join("pdb.toml")).unwrap();
    let cell = Arc::new(Cell::new(
        CellKey::from_bytes(CELL),
        CELL_ID,
        1,
        "sim".into(),
        pdb,
    ));
    let (shard, _) = Shard::open(&dir.join("shard0"), 0, CELL_ID, &shard_options()).unwrap();
    let svc = Service::new(cell, shard);
    svc.cell.set_addr(0, addr.to_string());
    svc
}

/// Credentials for `user`, sealed with the cell key, valid in simulated time.
pub fn credentials(user: u32) -> Credentials {
    let now = coda_rpc2::sim::EPOCH.as_micros() / 1_000_000;
    let token = Token {
        user_id: user,
        session_key: [user as u8; 32],
        issued_at: now,
        expires_at: now + 25 * 3600,
    };
    Credentials {
        sealed_token: token.seal(&CellKey::from_bytes(CELL), [3; 24]),
        session_key: token.session_key,
    }
}

/// What `clog` would hand Venus for `user`.
pub fn grant(user: PrincipalId, name: &str) -> TokenGrant {
    let c = credentials(user as u32);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    TokenGrant {
        user: name.into(),
        user_id: user,
        sealed_token: c.sealed_token,
        session_key: c.session_key,
        expires_at: now + 24 * 3600,
    }
}

/// The server and the network, owned by the sim thread.
pub struct World {
    pub sim: Sim,
    pub server: NodeId,
    service: Option<Rc<RefCell<Service>>>,
    pub dir: tempfile::TempDir,
    pub root: VolumeId,
    /// Where each client node's breaks go (the current Venus's queue).
    breaks: HashMap<NodeId, Rc<RefCell<PendingBreaks>>>,
    /// Breaks delivered, per node.
    pub delivered: HashMap<NodeId, u64>,
    /// The server crashes (and comes back) at this simulated time, in the
    /// middle of whatever call is running then.
    pub crash_at: Option<Time>,
    pub crashes: u64,
    /// The server crashes as its next reply to this node leaves (the reply
    /// is lost with it): set by `crash_on_reply`, taken by the filter.
    reply_crash: Rc<std::cell::Cell<Option<NodeId>>>,
    /// The node whose reply the filter just dropped.
    reply_crashed: Rc<std::cell::Cell<Option<NodeId>>>,
    /// Instead of the crash, the network to the node is cut as the reply
    /// leaves (the reply lost with it).
    reply_cut: Rc<std::cell::Cell<bool>>,
    /// How long the network runs on after each call (see `settle`).
    pub settle: Duration,
}

impl World {
    fn new(seed: u64, net: NetConfig) -> World {
        let net_lossy = net.loss > 0.0;
        let dir = tempfile::tempdir().unwrap();
        {
            let mut pdb = Pdb::open(&dir.path().join("pdb.toml")).unwrap();
            pdb.add_user("admin", "admin-pw", Some(ADMIN_ID), [1; 16])
                .unwrap();
            pdb.add_member(coda_vice::pdb::ADMINISTRATORS_NAME, "admin")
                .unwrap();
            assert_eq!(
                pdb.add_user("alice", "alice-pw", None, [2; 16]).unwrap(),
                ALICE
            );
        }
        let mut sim = Sim::new(seed, net);
        let server = sim.add("vice", server_config());
        let addr = sim.addr(server);
        let mut svc = open_service(dir.path(), addr);
        let root = svc.cell.new_volume_id();
        svc.new_volume(root, ROOT_VOLUME_NAME, ADMIN_ID).unwrap();
        svc.shard.flush().unwrap();
        let service = Rc::new(RefCell::new(svc));
        coda_vice::sim::serve(&mut sim, server, service.clone());
        let reply_crash: Rc<std::cell::Cell<Option<NodeId>>> = Default::default();
        let reply_crashed: Rc<std::cell::Cell<Option<NodeId>>> = Default::default();
        {
            let (armed, crashed) = (reply_crash.clone(), reply_crashed.clone());
            sim.set_filter(move |from, to, data| {
                use coda_rpc2::packet::{Header, Kind};
                if from != server || armed.get() != Some(to) {
                    return true;
                }
                if !matches!(Header::peek(data), Ok((Kind::Reply, _))) {
                    return true;
                }
                armed.set(None);
                crashed.set(Some(to));
                false
            });
        }
        World {
            sim,
            server,
            service: Some(service),
            dir,
            root,
            breaks: HashMap::new(),
            delivered: HashMap::new(),
            crash_at: None,
            crashes: 0,
            reply_crash,
            reply_crashed,
            reply_cut: Default::default(),
            settle: if net_lossy {
                Duration::from_secs(2)
            } else {
                Duration::from_millis(30)
            },
        }
    }

    /// The server crashes as its next reply to `node` leaves.
    pub fn crash_on_reply(&mut self, node: NodeId) {
        self.reply_cut.set(false);
        self.reply_crash.set(Some(node));
    }

    /// The network between `node` and the server is cut as the server's
    /// next reply to it leaves (the update applied, its answer lost).
    pub fn cut_on_reply(&mut self, node: NodeId) {
        self.reply_cut.set(true);
        self.reply_crash.set(Some(node));
    }

    /// What `crash_on_reply` or `cut_on_reply` asked for, now due.
    fn reply_fault(&mut self) -> bool {
        let Some(node) = self.reply_crashed.take() else {
            return false;
        };
        if self.reply_cut.replace(false) {
            self.partition(node);
        } else {
            self.restart_server();
        }
        true
    }

    pub fn server_addr(&self) -> SocketAddr {
        self.sim.addr(self.server)
    }

    pub fn svc(&self) -> std::cell::RefMut<'_, Service> {
        self.service.as_ref().unwrap().borrow_mut()
    }

    /// The server crashes and starts again from its disk: its endpoint
    /// (every connection) and its memory (callback promises, staged data)
    /// are gone; everything it acknowledged was flushed.
    pub fn restart_server(&mut self) {
        self.sim.set_handler(self.server, |_, e| Some(e));
        let old = self.service.take().unwrap();
        drop(
            Rc::try_unwrap(old)
                .ok()
                .expect("the handler held the only other reference"),
        );
        self.sim.restart(self.server, server_config());
        let svc = Rc::new(RefCell::new(open_service(
            self.dir.path(),
            self.server_addr(),
        )));
        coda_vice::sim::serve(&mut self.sim, self.server, svc.clone());
        self.service = Some(svc);
        self.crashes += 1;
    }

    /// A client node: it answers the server's callback calls at once.
    pub fn add_client(&mut self, name: &str) -> NodeId {
        let node = self.sim.add(name, client_config());
        let sink: Rc<RefCell<PendingBreaks>> = Default::default();
        self.breaks.insert(node, sink.clone());
        self.set_client_handler(node, sink);
        node
    }

    fn set_client_handler(&mut self, node: NodeId, sink: Rc<RefCell<PendingBreaks>>) {
        self.sim.set_handler(node, move |ctx, e| match e {
            Event::Request {
                id,
                subsystem,
                opcode,
                body,
                ..
            } => {
                let code = if subsystem != callback::SUBSYSTEM {
                    Errno::UNKNOWN_CALL
                } else if opcode == callback::op::BREAK {
                    match codec::from_bytes::<Break>(&body) {
                        Ok(b) => {
                            sink.borrow()
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(b);
                            Errno::OK
                        }
                        Err(_) => Errno::BAD_REQUEST,
                    }
                } else if opcode == callback::op::PROBE {
                    Errno::OK
                } else {
                    Errno::UNKNOWN_CALL
                };
                let _ = ctx.endpoint.reply(ctx.now, id, code.0, Bytes::new());
                None
            }
            other => Some(other),
        });
    }

    /// The client crashed: its endpoint starts afresh (its connections,
    /// and the promises the server made on them, are gone).
    pub fn restart_client(&mut self, node: NodeId) {
        self.sim.restart(node, client_config());
    }

    /// Breaks for `node` go to `queue` from now on.
    pub fn register_breaks(&mut self, node: NodeId, queue: PendingBreaks) {
        *self.breaks[&node].borrow_mut() = queue;
    }

    pub fn partition(&mut self, node: NodeId) {
        let s = self.server;
        self.sim.partition(node, s);
    }

    pub fn heal(&mut self, node: NodeId) {
        let s = self.server;
        self.sim.heal(node, s);
    }

    /// Runs the network until `pick` takes an event of `node` (others are
    /// dropped: calls are made one at a time, so nothing else waits), or
    /// the server's crash time comes.
    fn wait<T>(&mut self, node: NodeId, mut pick: impl FnMut(Event) -> Option<T>) -> T {
        let start = self.sim.now;
        let mut found = None;
        loop {
            let crash_at = self.crash_at;
            let crashed = self.reply_crashed.clone();
            let left = HANG.saturating_sub(self.sim.now.since(start));
            self.sim.run_until(left, |s| {
                while found.is_none() {
                    let Some(e) = s.nodes[node].events.pop_front() else {
                        break;
                    };
                    found = pick(e);
                }
                found.is_some() || crash_at.is_some_and(|t| s.now >= t) || crashed.get().is_some()
            });
            let reply_crash = self.reply_fault();
            if let Some(x) = found {
                return x;
            }
            if self.crash_at.is_some_and(|t| self.sim.now >= t) {
                self.crash_at = None;
                self.restart_server();
                continue;
            }
            if reply_crash {
                continue;
            }
            panic!(
                "a call of node {node} never finished ({:?} simulated; seed {})",
                HANG, self.sim.seed
            );
        }
    }

    /// Binds a connection from `node` to `addr`.
    pub fn connect(
        &mut self,
        node: NodeId,
        addr: SocketAddr,
        auth: Auth,
    ) -> Result<ConnId, coda_rpc2::Error> {
        let now = self.sim.now;
        let conn = self.sim.endpoint(node).connect(now, addr, auth);
        self.wait(node, |e| match e {
            Event::Connected { conn: c } if c == conn => Some(Ok(conn)),
            Event::ConnectFailed { conn: c, error } if c == conn => Some(Err(error)),
            _ => None,
        })
    }

    /// Makes a call from `node` and runs the network until it is answered.
    pub fn call(
        &mut self,
        node: NodeId,
        conn: ConnId,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
        side: Option<SideEffect>,
    ) -> Result<Reply, coda_rpc2::Error> {
        let now = self.sim.now;
        let call = self
            .sim
            .endpoint(node)
            .call(now, conn, subsystem, opcode, body, side)?;
        let r = self.wait(node, |e| match e {
            Event::Reply { call: c, result } if c == call => Some(result),
            _ => None,
        });
        self.settle();
        r
    }

    /// The real server answers an update only once the callback breaks it
    /// caused were answered (or after 2 s); the simulated driver answers
    /// at once. So that a client hears of a break before the update that
    /// caused it returns, the network runs on a little after each call.
    fn settle(&mut self) {
        let end = self.sim.now + self.settle;
        loop {
            let crash_at = self.crash_at;
            self.sim.run_until(end.since(self.sim.now), |s| {
                crash_at.is_some_and(|t| s.now >= t)
            });
            if self.crash_at.is_some_and(|t| self.sim.now >= t) {
                self.crash_at = None;
                self.restart_server();
                continue;
            }
            self.reply_fault();
            return;
        }
    }

    /// Runs the consistency checker over the server's shard.
    pub fn fsck(&self) -> Vec<String> {
        let svc = self.svc();
        coda_vice::fsck::check_shard(&svc.shard)
            .into_iter()
            .map(|p| format!("{p:?}"))
            .collect()
    }
}

type Job = Box<dyn FnOnce(&mut World) + Send>;

/// The handle on the sim thread: `Send + Sync`, shared by the transports.
pub struct SimNet {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub seed: u64,
    pub server_addr: SocketAddr,
    pub root: VolumeId,
    /// The network loses packets.
    pub lossy: bool,
    incarnations: AtomicU64,
    /// The server crashes right after it answered a call of this opcode
    /// (once).
    crash_after: Mutex<Option<u16>>,
}

impl SimNet {
    pub fn start(seed: u64, net: NetConfig) -> Arc<SimNet> {
        let lossy = net.loss > 0.0;
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("sim-{seed}"))
            .spawn(move || {
                let mut world = World::new(seed, net);
                let _ = ready_tx.send((world.server_addr(), world.root));
                while let Ok(job) = rx.recv() {
                    job(&mut world);
                }
            })
            .unwrap();
        let (server_addr, root) = ready_rx.recv().expect("the sim thread started");
        Arc::new(SimNet {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            seed,
            server_addr,
            root,
            lossy,
            incarnations: AtomicU64::new(1),
            crash_after: Mutex::new(None),
        })
    }

    /// Runs `f` on the world, on the sim thread; a panic there is passed on.
    pub fn with<R: Send + 'static>(&self, f: impl FnOnce(&mut World) -> R + Send + 'static) -> R {
        let (rtx, rrx) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |w| {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(w)));
            let _ = rtx.send(r);
        });
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .expect("the sim is running")
            .send(job)
            .expect("the sim thread is alive");
        match rrx.recv().expect("the sim thread answered") {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e),
        }
    }

    fn next_incarnation(&self) -> u64 {
        self.seed.wrapping_mul(0x1_0000) + self.incarnations.fetch_add(1, Ordering::Relaxed)
    }

    pub fn add_client(&self, name: &str) -> NodeId {
        let name = name.to_string();
        self.with(move |w| w.add_client(&name))
    }

    pub fn partition(&self, node: NodeId) {
        self.with(move |w| w.partition(node))
    }

    pub fn heal(&self, node: NodeId) {
        self.with(move |w| w.heal(node))
    }

    pub fn restart_server(&self) {
        self.with(|w| w.restart_server())
    }

    /// The server will crash `after` (simulated) into the next calls.
    pub fn crash_server_in(&self, after: Duration) {
        self.with(move |w| w.crash_at = Some(w.sim.now + after))
    }

    /// The server will crash right after it answers the next call of
    /// `opcode` (a Vice opcode).
    pub fn crash_after_reply(&self, opcode: u16) {
        *self.crash_after.lock().unwrap() = Some(opcode);
    }

    /// Called after each answered call: the crash asked for, if due.
    fn answered(&self, subsystem: u16, opcode: u16) {
        let due = {
            let mut c = self.crash_after.lock().unwrap();
            let due = subsystem == vice::SUBSYSTEM && *c == Some(opcode);
            if due {
                *c = None;
            }
            due
        };
        if due {
            self.restart_server();
        }
    }

    /// The server will crash as its next reply to `node` leaves (after it
    /// applied and committed the call), the reply lost with it.
    pub fn crash_on_reply(&self, node: NodeId) {
        self.with(move |w| w.crash_on_reply(node))
    }

    /// The network between `node` and the server is cut as the server's
    /// next reply to it leaves.
    pub fn cut_on_reply(&self, node: NodeId) {
        self.with(move |w| w.cut_on_reply(node))
    }

    /// Calls off a crash asked for by `crash_server_in`; whether one was.
    pub fn disarm_crash(&self) -> bool {
        self.with(|w| w.crash_at.take().is_some())
    }

    pub fn crashes(&self) -> u64 {
        self.with(|w| w.crashes)
    }

    pub fn now(&self) -> Time {
        self.with(|w| w.sim.now)
    }

    pub fn fsck(&self) -> Vec<String> {
        self.with(|w| w.fsck())
    }
}

impl Drop for SimNet {
    fn drop(&mut self) {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// A Venus's way to the servers over the simulated network: as
/// `coda_venus::link::Link` does it over UDP (a connection per server and
/// principal, NewConnect with host and incarnation on each, one repeat of
/// a call the server forgot the connection of, losses counted).
pub struct SimTransport {
    net: Arc<SimNet>,
    node: NodeId,
    host: AtomicU64,
    incarnation: u64,
    conns: Mutex<HashMap<(SocketAddr, Principal), ConnId>>,
    lost: AtomicU64,
}

impl SimTransport {
    pub fn new(net: Arc<SimNet>, node: NodeId) -> SimTransport {
        let incarnation = net.next_incarnation();
        SimTransport {
            net,
            node,
            host: AtomicU64::new(0),
            incarnation,
            conns: Mutex::new(HashMap::new()),
            lost: AtomicU64::new(0),
        }
    }

    fn forget(&self, addr: SocketAddr, who: Principal) {
        self.conns.lock().unwrap().remove(&(addr, who));
    }

    fn conn(
        &self,
        addr: SocketAddr,
        who: Principal,
        creds: Option<&Credentials>,
    ) -> Result<ConnId, LinkError> {
        if let Some(c) = self.conns.lock().unwrap().get(&(addr, who)) {
            return Ok(*c);
        }
        let auth = match (who, creds) {
            (Principal::User(_), Some(c)) => Auth::Encrypted(c.clone()),
            _ => Auth::Anonymous,
        };
        let hello = NewConnect {
            host: self.host.load(Ordering::Relaxed),
            incarnation: self.incarnation,
            name: "venus".into(),
        };
        let node = self.node;
        let node_ = self.node;
        let conn = self.net.with(move |w| {
            let conn = w.connect(node, addr, auth)?;
            w.call(
                node,
                conn,
                vice::SUBSYSTEM,
                vice::op::NEW_CONNECT,
                codec::to_bytes(&hello),
                None,
            )?;
            Ok(conn)
        });
        if std::env::var_os("SIM_TRACE_CALLS").is_some() {
            eprintln!("      node {node_} {who:?} bind: {conn:?}");
        }
        let conn = conn.map_err(|error| LinkError { addr, error })?;
        self.conns.lock().unwrap().insert((addr, who), conn);
        Ok(conn)
    }
}

impl Transport for SimTransport {
    fn call(
        &self,
        addr: SocketAddr,
        who: Principal,
        creds: Option<&Credentials>,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
        side_effect: Option<SideEffect>,
    ) -> Answer {
        let mut tries = if side_effect.is_none() { 2 } else { 1 };
        let mut side_effect = side_effect;
        loop {
            tries -= 1;
            let conn = self.conn(addr, who, creds)?;
            let (node, body, side) = (self.node, body.clone(), side_effect.take());
            let r = self
                .net
                .with(move |w| w.call(node, conn, subsystem, opcode, body, side));
            if std::env::var_os("SIM_TRACE_CALLS").is_some() {
                let now = self.net.now();
                eprintln!(
                    "      [{}] node {} {who:?} conn {} op {subsystem}/{opcode}: {:?}",
                    now.as_micros() % 100_000_000,
                    self.node,
                    conn.0,
                    r.as_ref().map(|r| r.code)
                );
            }
            let err = match r {
                Ok(r) => {
                    self.net.answered(subsystem, opcode);
                    return Ok(r);
                }
                Err(error) => LinkError { addr, error },
            };
            if err.drops_connection() {
                self.forget(addr, who);
                self.lost.fetch_add(1, Ordering::Relaxed);
            }
            if !err.rebound() || tries == 0 {
                return Err(err);
            }
        }
    }

    fn set_host(&self, host: u64) {
        self.host.store(host, Ordering::Relaxed);
    }

    fn rebinds(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    fn forget_principal(&self, who: Principal) {
        self.conns.lock().unwrap().retain(|(_, w), _| *w != who);
    }
}

// ---------------------------------------------------------------------------
// A client: a cache directory, a node, and the Venus running on them.

/// How a client is cut off from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    Connected,
    /// `cfs disconnect`.
    Forced,
    /// The network between it and the server is cut.
    Partitioned,
    /// Partitioned, and the server crashes before the network comes back.
    ServerDown,
    /// Venus found the server gone by itself (a server crash cut a bind
    /// short): it probes again to come back.
    Noticed,
}

pub struct SimClient {
    pub net: Arc<SimNet>,
    pub node: NodeId,
    pub name: String,
    cache_dir: tempfile::TempDir,
    pub v: Option<Venus>,
    pub cut: Cut,
    pub user: PrincipalId,
    pub starts: u64,
    /// The network loses packets: a call may time out with no outage.
    pub lossy: bool,
}

impl SimClient {
    /// As `new`, None if Venus could not start (the server did not answer).
    pub fn try_new(net: &Arc<SimNet>, name: &str) -> Option<SimClient> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| SimClient::new(net, name))).ok()
    }

    /// A client with an empty cache, started (connected, with a token).
    pub fn new(net: &Arc<SimNet>, name: &str) -> SimClient {
        let node = net.add_client(name);
        let mut c = SimClient {
            net: net.clone(),
            node,
            name: name.into(),
            cache_dir: tempfile::tempdir().unwrap(),
            v: None,
            cut: Cut::Connected,
            user: ADMIN_ID,
            starts: 0,
            lossy: false,
        };
        c.start();
        c
    }

    pub fn cache_path(&self) -> PathBuf {
        self.cache_dir.path().join("cache")
    }

    /// Starts Venus on the cache (a new endpoint, a new incarnation);
    /// the token is given again, and `cfs disconnect` repeated if it was on.
    pub fn start(&mut self) {
        assert!(self.v.is_none());
        if self.starts > 0 {
            let node = self.node;
            self.net.with(move |w| w.restart_client(node));
        }
        self.starts += 1;
        let cache = Cache::open(&self.cache_path(), 64 << 20).expect("cache opens");
        let link = Arc::new(SimTransport::new(self.net.clone(), self.node));
        let mut v = Venus::new(cache, link, vec![self.net.server_addr], 1 << 30)
            .unwrap_or_else(|e| panic!("{}: venus starts: {e}", self.name));
        let queue = v.breaks.clone();
        let node = self.node;
        self.net.with(move |w| w.register_breaks(node, queue));
        v.set_token(UID, grant(self.user, "admin"));
        if self.cut == Cut::Forced {
            v.set_forced(true);
        }
        self.v = Some(v);
    }

    /// Venus stops (its cache closed, as at a clean exit) and starts again.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    pub fn stop(&mut self) {
        if let Some(v) = self.v.take() {
            let Venus { cache, .. } = v;
            cache.close().expect("cache closes");
        }
    }

    pub fn v(&mut self) -> &mut Venus {
        self.v.as_mut().expect("venus is running")
    }

    /// Cuts the client off (as `how` says).
    pub fn disconnect(&mut self, how: Cut) {
        assert_eq!(self.cut, Cut::Connected);
        match how {
            Cut::Connected | Cut::Noticed => {}
            Cut::Forced => self.v().set_forced(true),
            Cut::Partitioned | Cut::ServerDown => self.net.partition(self.node),
        }
        self.cut = how;
    }

    /// Ends the cut, then what `cfs checkservers` and the background
    /// thread do: servers probed, logs reintegrated, again (a few times)
    /// while the server is not back or the log not empty (a server crash
    /// may stop a reintegration). Returns what each round did.
    pub fn reconnect(&mut self) -> Vec<String> {
        match self.cut {
            Cut::Connected | Cut::Noticed => {}
            Cut::Forced => self.v().set_forced(false),
            Cut::Partitioned => self.net.heal(self.node),
            Cut::ServerDown => {
                self.net.restart_server();
                self.net.heal(self.node);
            }
        }
        self.cut = Cut::Connected;
        let mut rounds = Vec::new();
        for _ in 0..8 {
            let v = self.v();
            let states = v.probe_servers();
            let mut round = format!(
                "probe: {}",
                states
                    .iter()
                    .map(|s| format!("{} {}", s.addr, if s.up { "up" } else { "down" }))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            for vol in v.logged_volumes() {
                if !v.disconnected(vol) {
                    let n = v.cml_records(vol).0;
                    let r = coda_venus::reint::reintegrate(v, vol);
                    round.push_str(&format!("; reintegrate {n} records: {r:?}"));
                }
            }
            rounds.push(round);
            let v = self.v();
            if v.down.is_empty() && v.logged_volumes().is_empty() {
                break;
            }
        }
        rounds
    }

    /// Whether Venus holds the server for gone.
    pub fn sees_server_down(&mut self) -> bool {
        !self.v().down.is_empty()
    }

    /// Whether the server may be out of this client's reach now.
    pub fn may_be_cut(&self) -> bool {
        self.cut != Cut::Connected
    }

    pub fn root_volume(&self) -> VolumeId {
        self.net.root
    }

    pub fn cml(&mut self) -> u64 {
        let vol = self.root_volume();
        self.v().cml_records(vol).0
    }
}

impl Drop for SimClient {
    fn drop(&mut self) {
        // Venus goes before the network it calls through.
        if let Some(v) = self.v.take() {
            drop(v);
        }
    }
}

// ---------------------------------------------------------------------------
// Paths and what a client sees.

pub type Path_ = Vec<String>;

pub fn show(p: &[String]) -> String {
    if p.is_empty() {
        "/".into()
    } else {
        format!("/{}", p.join("/"))
    }
}

pub fn path(s: &str) -> Path_ {
    s.split('/')
        .filter(|c| !c.is_empty())
        .map(String::from)
        .collect()
}

/// The inode `p` names, looked up step by step.
pub fn resolve(v: &mut Venus, p: &[String]) -> Result<u64, Errno> {
    let mut ino = ROOT_INO;
    for c in p {
        ino = v.lookup(UID, ino, c)?.ino;
    }
    Ok(ino)
}

/// A file's whole contents through a handle.
pub fn read_ino(v: &mut Venus, ino: u64) -> Result<Vec<u8>, Errno> {
    let (fh, file) = v.open(UID, ino, false, false, false)?;
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let r = v.read(fh, 0, len as u32 + 1);
    v.release(fh)?;
    r
}

pub fn read_file(v: &mut Venus, p: &[String]) -> Result<Vec<u8>, Errno> {
    let ino = resolve(v, p)?;
    read_ino(v, ino)
}

/// Writes a whole file (created if missing), as `cat > p` does.
pub fn write_file(v: &mut Venus, p: &[String], data: &[u8]) -> Result<(), Errno> {
    let (dir, name) = p.split_at(p.len() - 1);
    let parent = resolve(v, dir)?;
    let fh = match v.lookup(UID, parent, &name[0]) {
        Ok(a) => v.open(UID, a.ino, true, true, false)?.0,
        Err(Errno::ENOENT) => v.create(UID, GID, parent, &name[0], 0o644)?.1,
        Err(e) => return Err(e),
    };
    let r = v.write(fh, 0, data).and_then(|_| v.flush(fh));
    v.release(fh)?;
    r
}

pub fn chmod(v: &mut Venus, p: &[String], mode: u32) -> Result<(), Errno> {
    let ino = resolve(v, p)?;
    v.setattr(
        UID,
        ino,
        SetAttrs {
            mode: Some(mode),
            ..Default::default()
        },
    )
    .map(|_| ())
}

/// One object as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    File { data: Digest, mode: u32, nlink: u32 },
    Dir { mode: u32 },
    Symlink(String),
}

/// File contents, compared whole but shown short.
#[derive(Clone, PartialEq, Eq)]
pub struct Digest(pub Vec<u8>);

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = blake3_short(&self.0);
        write!(f, "{} bytes #{h}", self.0.len())
    }
}

pub fn blake3_short(data: &[u8]) -> String {
    // FNV-1a: enough to tell contents apart in a report.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    format!("{:08x}", h as u32)
}

/// A whole tree: each path, what is there, and which paths name one
/// object (hard links), by an identity number.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    pub objs: BTreeMap<String, Seen>,
    pub same: BTreeSet<BTreeSet<String>>,
}

impl Tree {
    /// Paths that differ between two trees, explained.
    pub fn diff(&self, other: &Tree, a: &str, b: &str) -> String {
        let mut out = String::new();
        let keys: BTreeSet<&String> = self.objs.keys().chain(other.objs.keys()).collect();
        for k in keys {
            let (x, y) = (self.objs.get(k), other.objs.get(k));
            if x != y {
                out.push_str(&format!("  {k}: {a} {x:?}, {b} {y:?}\n"));
            }
        }
        if self.same != other.same {
            out.push_str(&format!(
                "  hard links: {a} {:?}, {b} {:?}\n",
                self.same, other.same
            ));
        }
        out
    }
}

/// Reads the whole tree below the root through `v`.
pub fn read_tree(v: &mut Venus) -> Result<Tree, (String, Errno)> {
    let mut tree = Tree::default();
    let mut by_ino: BTreeMap<u64, BTreeSet<String>> = BTreeMap::new();
    let mut todo = vec![(ROOT_INO, Vec::<String>::new())];
    while let Some((ino, p)) = todo.pop() {
        let list = v.readdir(UID, ino).map_err(|e| (show(&p), e))?;
        for (name, _, _) in list {
            if name == "." || name == ".." {
                continue;
            }
            let mut child = p.clone();
            child.push(name.clone());
            let shown = show(&child);
            let a = v.lookup(UID, ino, &name).map_err(|e| (shown.clone(), e))?;
            let seen = match a.kind {
                VnodeKind::File => {
                    let data = read_ino(v, a.ino).map_err(|e| (shown.clone(), e))?;
                    by_ino.entry(a.ino).or_default().insert(shown.clone());
                    Seen::File {
                        data: Digest(data),
                        mode: a.mode & 0o7777,
                        nlink: a.nlink,
                    }
                }
                VnodeKind::Directory => {
                    todo.push((a.ino, child));
                    Seen::Dir {
                        mode: a.mode & 0o7777,
                    }
                }
                VnodeKind::Symlink => {
                    Seen::Symlink(v.readlink(UID, a.ino).map_err(|e| (shown.clone(), e))?)
                }
            };
            tree.objs.insert(shown, seen);
        }
    }
    tree.same = by_ino.into_values().filter(|s| s.len() > 1).collect();
    Ok(tree)
}

/// The server's tree as a client with an empty cache reads it (a node of
/// its own, connected).
/// On a lossy network a call may time out: then it is tried again (a new
/// client, a few times).
pub fn server_tree(net: &Arc<SimNet>, name: &str) -> Tree {
    let tries = if net.lossy { 5 } else { 1 };
    for i in 1..=tries {
        let Some(mut fresh) = SimClient::try_new(net, name) else {
            assert!(i < tries, "{name}: no root from the server");
            continue;
        };
        match read_tree(fresh.v()) {
            Ok(t) => {
                fresh.stop();
                return t;
            }
            Err((_, Errno::ETIMEDOUT)) if i < tries => fresh.stop(),
            Err((p, e)) => panic!("{name}: reading {p} from the server: {e}"),
        }
    }
    unreachable!()
}

/// The fid of what `p` names, through `v`.
pub fn fid_of(v: &mut Venus, p: &[String]) -> Result<Fid, Errno> {
    let ino = resolve(v, p)?;
    v.fid_of(ino)
}

/// A short form of a fid: its vnode (local fids by their low bits).
pub fn short_fid(f: &Fid) -> String {
    if f.is_local() {
        format!("L{:x}", f.vnode & 0xffff)
    } else {
        format!("{}", f.vnode)
    }
}

fn short_sid(s: &coda_proto::StoreId) -> String {
    format!("{:x}", s.unique & 0xfffff)
}

/// The log, one line a record (for reports).
pub fn cml_lines(v: &Venus) -> Vec<String> {
    use coda_proto::cml::Op;
    v.cache
        .cml
        .values()
        .map(|(_, e)| {
            let r = &e.record;
            let what = match &r.op {
                Op::Store(s) => format!(
                    "store {} seen {} len {}",
                    short_fid(&s.fid),
                    short_sid(&s.seen),
                    s.length
                ),
                Op::SetAttr(a) => format!(
                    "setattr {} seen {} mode {:?} len {:?}",
                    short_fid(&a.fid),
                    short_sid(&a.seen),
                    a.mode.map(|m| format!("{m:o}")),
                    a.length
                ),
                Op::Create(c) => format!(
                    "create {}/{} = {}",
                    short_fid(&c.dir),
                    c.name,
                    short_fid(&c.fid)
                ),
                Op::Remove(c) => format!(
                    "remove {}/{} = {} seen {}",
                    short_fid(&c.dir),
                    c.name,
                    short_fid(&c.fid),
                    short_sid(&c.seen)
                ),
                Op::Link(c) => format!(
                    "link {}/{} = {}",
                    short_fid(&c.dir),
                    c.name,
                    short_fid(&c.fid)
                ),
                Op::Rename(c) => format!(
                    "rename {}/{} -> {}/{} ({}, replacing {:?})",
                    short_fid(&c.from_dir),
                    c.from_name,
                    short_fid(&c.to_dir),
                    c.to_name,
                    short_fid(&c.fid),
                    c.replaced.as_ref().map(short_fid)
                ),
                Op::MakeDir(c) => format!(
                    "mkdir {}/{} = {}",
                    short_fid(&c.dir),
                    c.name,
                    short_fid(&c.fid)
                ),
                Op::RemoveDir(c) => format!(
                    "rmdir {}/{} = {}",
                    short_fid(&c.dir),
                    c.name,
                    short_fid(&c.fid)
                ),
                Op::SymLink(c) => format!(
                    "symlink {}/{} = {}",
                    short_fid(&c.dir),
                    c.name,
                    short_fid(&c.fid)
                ),
                Op::SetAcl(c) => format!("setacl {}", short_fid(&c.dir)),
            };
            let before: Vec<String> = e
                .before
                .iter()
                .map(|(f, s)| format!("{}@{}", short_fid(f), short_sid(s)))
                .collect();
            format!(
                "#{} sid {} {what} (before {}){}",
                e.seq,
                short_sid(&r.store_id),
                before.join(" "),
                if e.ends_batch.is_some() {
                    " [ends batch]"
                } else {
                    ""
                }
            )
        })
        .collect()
}
