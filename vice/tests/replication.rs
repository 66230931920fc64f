//! Server replication over the seeded simulated network: three servers
//! holding replicas of one volume, clients that send every update to each
//! replica they reach (COP1) and then say who applied it (COP2), cuts,
//! partitions and restarts, and the resolver bringing replicas together.
//!
//! `SIM_SEED=N` replays one seed; `SIM_SEEDS=K` runs K of them.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coda_proto::cml::{self, CmlRecord, Op};
use coda_proto::fid::{Fid, StoreId, VolumeId};
use coda_proto::res::{
    Cop2, Cop2Entry, Inconsistent, ObjectState, Repair, StateRequest, SummaryEntry, SummaryRequest,
    WithCop2,
};
use coda_proto::status::{Status, Timestamp, VnodeKind};
use coda_proto::vice::{self, op, AllocFids, FidRange, MutateReply, Stage};
use coda_proto::vv::{VersionVector, FLAG_INCONSISTENT};
use coda_proto::Errno;
use coda_rpc2::codec::{self, Decode, Encode};
use coda_rpc2::endpoint::{Auth, ConnId, Event, Reply, SideEffect};
use coda_rpc2::sim::{NetConfig, NodeId, Sim};
use coda_rpc2::{CellKey, Config, Sink, Source};
use coda_vice::cell::Cell;
use coda_vice::pdb::{Pdb, ADMIN_ID};
use coda_vice::replica::SERVER_ID;
use coda_vice::resolve::{self, Replicas, CLASH_MARK};
use coda_vice::service::Service;

mod support;
use coda_vice::shard::Shard;
use support::{credentials, shard_options, CELL, CELL_ID};

const VOL: VolumeId = 0x7f00_0100;
const N: usize = 3;
const NAMES: [&str; N] = ["s0", "s1", "s2"];

fn open_service(dir: &std::path::Path, name: &str) -> Service {
    let pdb = Pdb::open(&dir.join("pdb.toml")).unwrap();
    let cell = Arc::new(Cell::new(
        CellKey::from_bytes(CELL),
        CELL_ID,
        1,
        name.into(),
        pdb,
    ));
    let (shard, _) = Shard::open(&dir.join("shard0"), 0, CELL_ID, &shard_options()).unwrap();
    let svc = Service::new(cell, shard);
    svc.cell.set_addr(0, name.into());
    svc
}

fn quick() -> Config {
    Config {
        peer_timeout: Duration::from_secs(2),
        ..Config::default()
    }
}

/// A node's connection to each server, as some principal.
struct Node {
    node: NodeId,
    conns: Vec<ConnId>,
}

struct World {
    sim: Sim,
    servers: Vec<NodeId>,
    services: Vec<Option<Rc<RefCell<Service>>>>,
    dirs: Vec<tempfile::TempDir>,
    /// Each server's resolver: a client of every replica, as a server.
    resolvers: Vec<Node>,
    clients: Vec<Client>,
}

struct Client {
    at: Node,
    host: u64,
    next: u64,
    /// COP2s are sometimes lost (the client died after COP1), sometimes
    /// held to ride on the next update (`WITH_COP2`).
    lose_cop2: u64,
    held: Option<Cop2>,
}

impl World {
    fn new(seed: u64, clients: usize) -> World {
        let mut sim = Sim::new(seed, NetConfig::default());
        let mut servers = Vec::new();
        let mut services = Vec::new();
        let mut dirs = Vec::new();
        let replicas: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
        for name in NAMES {
            let dir = tempfile::tempdir().unwrap();
            {
                let mut pdb = Pdb::open(&dir.path().join("pdb.toml")).unwrap();
                pdb.add_user("admin", "pw", Some(ADMIN_ID), [1; 16])
                    .unwrap();
                pdb.add_member(coda_vice::pdb::ADMINISTRATORS_NAME, "admin")
                    .unwrap();
            }
            let mut svc = open_service(dir.path(), name);
            let created = Timestamp {
                secs: 1_700_000_000,
                nanos: 0,
            };
            svc.new_replica(VOL, "rep", ADMIN_ID, &replicas, created, false)
                .unwrap();
            svc.shard.flush().unwrap();
            let node = sim.add(
                name,
                Config {
                    accept_binds: true,
                    cell_key: Some(CellKey::from_bytes(CELL)),
                    ..quick()
                },
            );
            let svc = Rc::new(RefCell::new(svc));
            coda_vice::sim::serve(&mut sim, node, svc.clone());
            servers.push(node);
            services.push(Some(svc));
            dirs.push(dir);
        }
        let mut w = World {
            sim,
            servers,
            services,
            dirs,
            resolvers: Vec::new(),
            clients: Vec::new(),
        };
        for i in 0..N {
            let r = w.node(&format!("resolver{i}"), SERVER_ID as u32);
            w.resolvers.push(r);
        }
        for i in 0..clients {
            let at = w.node(&format!("client{i}"), ADMIN_ID as u32);
            w.clients.push(Client {
                at,
                host: 0x1000 + i as u64,
                next: 0,
                lose_cop2: 0,
                held: None,
            });
        }
        w
    }

    /// A node bound to every server as `user`.
    fn node(&mut self, name: &str, user: u32) -> Node {
        let node = self.sim.add(name, quick());
        let mut conns = Vec::new();
        for s in 0..N {
            let addr = self.sim.addr(self.servers[s]);
            let now = self.sim.now;
            let conn =
                self.sim
                    .endpoint(node)
                    .connect(now, addr, Auth::Encrypted(credentials(user)));
            let mut ok = None;
            self.sim.run_until(Duration::from_secs(60), |s| {
                while let Some(e) = s.nodes[node].events.pop_front() {
                    match e {
                        Event::Connected { .. } => ok = Some(true),
                        Event::ConnectFailed { error, .. } => panic!("bind failed: {error}"),
                        _ => {}
                    }
                }
                ok.is_some()
            });
            assert!(ok.is_some());
            conns.push(conn);
        }
        Node { node, conns }
    }

    fn svc(&self, s: usize) -> std::cell::RefMut<'_, Service> {
        self.services[s].as_ref().unwrap().borrow_mut()
    }

    /// Nodes that stand with server `s` (its resolver).
    fn side_of(&self, s: usize) -> Vec<NodeId> {
        vec![self.servers[s], self.resolvers[s].node]
    }

    /// Cuts the network between two groups of servers; `clients_a` and
    /// `clients_b` stand with each.
    fn split(&mut self, a: &[usize], b: &[usize], clients_a: &[usize], clients_b: &[usize]) {
        let group = |w: &World, servers: &[usize], clients: &[usize]| -> Vec<NodeId> {
            let mut g: Vec<NodeId> = servers.iter().flat_map(|&s| w.side_of(s)).collect();
            g.extend(clients.iter().map(|&c| w.clients[c].at.node));
            g
        };
        let (ga, gb) = (group(self, a, clients_a), group(self, b, clients_b));
        for x in &ga {
            for y in &gb {
                self.sim.partition(*x, *y);
            }
        }
    }

    fn heal_all(&mut self) {
        let all: Vec<NodeId> = self
            .servers
            .iter()
            .copied()
            .chain(self.resolvers.iter().map(|r| r.node))
            .chain(self.clients.iter().map(|c| c.at.node))
            .collect();
        for x in &all {
            for y in &all {
                if x != y {
                    self.sim.heal(*x, *y);
                }
            }
        }
    }

    /// Drops server `s` and opens it again from disk, as after a crash.
    fn restart(&mut self, s: usize) {
        let node = self.servers[s];
        self.sim.set_handler(node, |_, e| Some(e));
        let old = self.services[s].take().unwrap();
        drop(Rc::try_unwrap(old).ok().expect("only the handler held it"));
        let svc = Rc::new(RefCell::new(open_service(self.dirs[s].path(), NAMES[s])));
        coda_vice::sim::serve(&mut self.sim, node, svc.clone());
        self.services[s] = Some(svc);
        self.sim.restart(
            node,
            Config {
                accept_binds: true,
                cell_key: Some(CellKey::from_bytes(CELL)),
                ..quick()
            },
        );
        self.rebind_all();
    }

    /// Every client and resolver binds to every server again (after a
    /// restart, or when a cut server is back).
    fn rebind_all(&mut self) {
        for i in 0..N {
            let r = self.node(&format!("resolver{i}-again"), SERVER_ID as u32);
            self.resolvers[i] = r;
        }
        for c in 0..self.clients.len() {
            let at = self.node(&format!("client{c}-again"), ADMIN_ID as u32);
            self.clients[c].at = at;
        }
    }

    /// One call from `node` to server `s`: None if it could not be reached.
    fn call_at(
        sim: &mut Sim,
        at: &Node,
        s: usize,
        opcode: u16,
        body: Bytes,
        side: Option<SideEffect>,
    ) -> Option<Reply> {
        let now = sim.now;
        let call = sim
            .endpoint(at.node)
            .call(now, at.conns[s], vice::SUBSYSTEM, opcode, body, side)
            .ok()?;
        let node = at.node;
        let mut result = None;
        let done = sim.run_until(Duration::from_secs(600), |sim| {
            while let Some(e) = sim.nodes[node].events.pop_front() {
                match e {
                    Event::Reply {
                        call: id,
                        result: r,
                    } if id == call => result = Some(r),
                    Event::Request { id, .. } => {
                        // A callback break: answered.
                        let now = sim.now;
                        let _ = sim.endpoint(node).reply(now, id, 0, Bytes::new());
                    }
                    _ => {}
                }
            }
            result.is_some()
        });
        assert!(done, "call never finished (seed {})", sim.seed);
        result.unwrap().ok()
    }

    /// The store id of client `c`'s last update.
    fn last(&self, c: usize) -> StoreId {
        StoreId {
            host: self.clients[c].host,
            unique: self.clients[c].next,
        }
    }

    /// Client `c`'s next record of `op`.
    fn record(&mut self, c: usize, op: Op) -> CmlRecord {
        let cl = &mut self.clients[c];
        cl.next += 1;
        CmlRecord {
            store_id: StoreId {
                host: cl.host,
                unique: cl.next,
            },
            time: Timestamp {
                secs: 1_700_000_000 + cl.next as i64,
                nanos: 0,
            },
            op,
        }
    }

    /// Sends `op` from client `c` to every replica (COP1), then tells those
    /// that applied it so (COP2). The slots that applied it.
    fn update(&mut self, c: usize, op: Op, data: Option<&[u8]>) -> Result<Vec<usize>, Errno> {
        let rec = self.record(c, op);
        let body = codec::to_bytes(&rec);
        self.send(c, rec.store_id, vice::direct_opcode(&rec.op), body, data)
    }

    /// Installs `data` from client `c` over every replica's version of
    /// `fid` (`REPAIR`, its data staged first), as `repair` does; `base`
    /// joins every replica's vector.
    fn repair(
        &mut self,
        c: usize,
        fid: Fid,
        base: VersionVector,
        data: &[u8],
    ) -> Result<Vec<usize>, Errno> {
        let op = Op::Store(cml::Store {
            fid,
            seen: StoreId::default(),
            length: data.len() as u64,
            content_hash: blake(data),
        });
        let record = self.record(c, op);
        let stage = codec::to_bytes(&Stage {
            store_id: record.store_id,
            length: data.len() as u64,
            offset: 0,
        });
        for s in 0..N {
            let side = SideEffect::Send(Source::Memory(Bytes::copy_from_slice(data)));
            let at = &self.clients[c].at;
            Self::call_at(&mut self.sim, at, s, op::STAGE, stage.clone(), Some(side));
        }
        let sid = record.store_id;
        let body = codec::to_bytes(&Repair { base, record });
        self.send(c, sid, op::REPAIR, body, None)
    }

    /// COP1 of record `sid` (`opcode` with `body`) to every replica, then
    /// its COP2 to those that applied it: sent, held for the next update,
    /// or lost, by turns.
    fn send(
        &mut self,
        c: usize,
        sid: StoreId,
        opcode: u16,
        body: Bytes,
        data: Option<&[u8]>,
    ) -> Result<Vec<usize>, Errno> {
        let (opcode, body) = match self.clients[c].held.take() {
            Some(cop2) => (
                op::WITH_COP2,
                codec::to_bytes(&WithCop2 { cop2, opcode, body }),
            ),
            None => (opcode, body),
        };
        let mut applied = Vec::new();
        let mut errors = Vec::new();
        for s in 0..N {
            let side = data.map(|d| SideEffect::Send(Source::Memory(Bytes::copy_from_slice(d))));
            match Self::call_at(
                &mut self.sim,
                &self.clients[c].at,
                s,
                opcode,
                body.clone(),
                side,
            ) {
                Some(r) if r.code == 0 => {
                    let _: MutateReply = codec::from_bytes(&r.body).unwrap();
                    applied.push(s);
                }
                Some(r) => errors.push(Errno(r.code)),
                None => {}
            }
        }
        if applied.is_empty() {
            return Err(errors.first().copied().unwrap_or(Errno::ETIMEDOUT));
        }
        let cl = &mut self.clients[c];
        cl.lose_cop2 += 1;
        let cop2 = Cop2 {
            volume: VOL,
            updates: vec![Cop2Entry {
                store_id: sid,
                slots: applied.iter().map(|&s| s as u32).collect(),
            }],
        };
        if cl.lose_cop2 % 3 == 0 {
            cl.held = Some(cop2);
        } else if cl.lose_cop2 % 7 != 0 {
            for &s in &applied {
                let body = codec::to_bytes(&cop2);
                Self::call_at(&mut self.sim, &self.clients[c].at, s, op::COP2, body, None);
            }
        }
        Ok(applied)
    }

    /// A fresh fid from the first replica that answers.
    fn fid(&mut self, c: usize) -> Result<Fid, Errno> {
        for s in 0..N {
            let body = codec::to_bytes(&AllocFids {
                volume: VOL,
                count: 1,
            });
            if let Some(r) = Self::call_at(
                &mut self.sim,
                &self.clients[c].at,
                s,
                op::ALLOC_FIDS,
                body,
                None,
            ) {
                if r.code == 0 {
                    let range: FidRange = codec::from_bytes(&r.body).unwrap();
                    return Ok(range.fid(0).unwrap());
                }
            }
        }
        Err(Errno::ETIMEDOUT)
    }

    /// Runs server `s`'s resolver over the volume.
    fn resolve(&mut self, s: usize) -> Result<resolve::Outcome, Errno> {
        let mut reps = SimReplicas {
            sim: &mut self.sim,
            at: &self.resolvers[s],
        };
        resolve::resolve(&mut reps, VOL, N)
    }

    /// Resolves until nothing differs (a few rounds at most).
    fn resolve_fully(&mut self, s: usize) {
        for _ in 0..4 {
            match self.resolve(s) {
                Ok(o) if o.differing == 0 => return,
                Ok(o) if o.installed == 0 => return,
                _ => {}
            }
        }
        let o = self.resolve(s).unwrap();
        assert_eq!(o.installed, 0, "resolution does not settle: {o:?}");
    }

    /// Each replica's view: fid → state, without the parts that may differ
    /// between equal replicas.
    fn replica_state(&mut self, s: usize) -> BTreeMap<Fid, (Status, Vec<String>, String)> {
        let svc = self.svc(s);
        let vol = svc.shard.meta.volume(VOL).unwrap();
        let fids: Vec<Fid> = vol.vnodes().map(|v| v.fid).collect();
        drop(svc);
        let states = self.states(s, &fids);
        states
            .into_iter()
            .map(|st| {
                let mut status = st.status;
                status.callback = 0;
                let mut names: Vec<String> = st
                    .entries
                    .iter()
                    .map(|b| format!("{}={}", b.name, b.fid))
                    .collect();
                names.sort();
                (status.fid, (status, names, st.target))
            })
            .collect()
    }

    fn states(&mut self, s: usize, fids: &[Fid]) -> Vec<ObjectState> {
        let mut reps = SimReplicas {
            sim: &mut self.sim,
            at: &self.resolvers[s],
        };
        let req = StateRequest {
            volume: VOL,
            fids: fids.to_vec(),
            inline_max: 0,
        };
        let list: Vec<Option<ObjectState>> = bulk(&mut reps, s, op::RES_STATE, &req).unwrap();
        list.into_iter().flatten().collect()
    }

    /// What replica `s` lists as marked in conflict, asked by client `c`.
    fn marked(&mut self, c: usize, s: usize) -> Vec<String> {
        let sink = SideEffect::Receive(Sink::memory(1 << 20));
        let body = codec::to_bytes(&VOL);
        let at = &self.clients[c].at;
        let r = Self::call_at(
            &mut self.sim,
            at,
            s,
            op::LIST_INCONSISTENT,
            body,
            Some(sink),
        )
        .expect("an answer");
        assert_eq!(r.code, 0);
        let list: Vec<Inconsistent> = codec::from_bytes(&r.sink.unwrap().into_bytes()).unwrap();
        let mut paths: Vec<String> = list
            .iter()
            .map(|i| format!("/{}", i.path.join("/")))
            .collect();
        paths.sort();
        paths
    }

    fn summary(&mut self, s: usize) -> Vec<SummaryEntry> {
        let mut reps = SimReplicas {
            sim: &mut self.sim,
            at: &self.resolvers[s],
        };
        bulk(
            &mut reps,
            s,
            op::RES_SUMMARY,
            &SummaryRequest { volume: VOL },
        )
        .unwrap()
    }

    /// The tree of replica `s`: path → (kind, content hash, inconsistent).
    fn tree(&mut self, s: usize) -> Tree {
        let all = self.replica_state(s);
        let mut out = BTreeMap::new();
        let mut stack = vec![(Fid::root(VOL), String::new())];
        let mut seen = std::collections::HashSet::new();
        while let Some((dir, path)) = stack.pop() {
            let (_, names, _) = &all[&dir];
            for n in names {
                let (name, fid) = n.split_once('=').unwrap();
                let fid: Fid = fid.parse().unwrap();
                let (st, _, _) = &all[&fid];
                let p = format!("{path}/{name}");
                out.insert(
                    p.clone(),
                    (
                        st.kind,
                        st.content_hash,
                        st.vv.flags & FLAG_INCONSISTENT != 0,
                    ),
                );
                if st.kind == VnodeKind::Directory {
                    assert!(seen.insert(fid), "directory {fid} reached twice, at {p}");
                    stack.push((fid, p));
                }
            }
        }
        out
    }

    fn fsck(&self, s: usize) -> Vec<String> {
        coda_vice::fsck::check_shard(&self.svc(s).shard)
    }
}

fn bulk<T: Decode>(
    reps: &mut dyn Replicas,
    s: usize,
    opcode: u16,
    req: &impl Encode,
) -> Result<T, Errno> {
    let r = reps.call(
        s,
        opcode,
        codec::to_bytes(req),
        Some(SideEffect::Receive(Sink::memory(1 << 30))),
    )?;
    if r.code != 0 {
        return Err(Errno(r.code));
    }
    Ok(codec::from_bytes(&r.sink.unwrap().into_bytes()).unwrap())
}

struct SimReplicas<'a> {
    sim: &'a mut Sim,
    at: &'a Node,
}

impl Replicas for SimReplicas<'_> {
    fn call(
        &mut self,
        slot: usize,
        opcode: u16,
        body: Bytes,
        side_effect: Option<SideEffect>,
    ) -> Result<Reply, Errno> {
        World::call_at(self.sim, self.at, slot, opcode, body, side_effect).ok_or(Errno::ETIMEDOUT)
    }
}

/// A create of `name` in `dir`, as `fid`.
fn create_op(dir: Fid, name: String, fid: Fid) -> Op {
    Op::Create(cml::Create {
        dir,
        name,
        fid,
        mode: 0o644,
        group: 0,
    })
}

/// A mkdir of `name` in `dir`, as `fid`.
fn mkdir_op(dir: Fid, name: String, fid: Fid) -> Op {
    Op::MakeDir(cml::MakeDir {
        dir,
        name,
        fid,
        mode: 0o755,
        group: 0,
    })
}

/// `SIM_SEED=n`: that seed; `SIM_SEEDS=n`: 1 to n; `SIM_SEEDS=a-b`: a to b;
/// else 1 to `default` and the seeds that once found bugs (`found`).
fn seeds(default: u64, found: &[u64]) -> Vec<u64> {
    let env = |n: &str| std::env::var(n).ok();
    if let Some(s) = env("SIM_SEED").and_then(|s| s.parse().ok()) {
        return vec![s];
    }
    let range = env("SIM_SEEDS").unwrap_or_default();
    let (from, to) = range.split_once('-').unwrap_or(("1", &range));
    match (from.parse(), to.parse()) {
        (Ok(a), Ok(b)) => (a..=b).collect(),
        _ => (1..=default).chain(found.iter().copied()).collect(),
    }
}

fn blake(d: &[u8]) -> [u8; 32] {
    *blake3::hash(d).as_bytes()
}

/// What the clients believe the volume holds: path → contents (None: a
/// directory), and each path's fid.
#[derive(Default, Clone)]
struct Model {
    files: BTreeMap<String, Option<Vec<u8>>>,
    fids: HashMap<String, Fid>,
    /// The store id of each object's last update (for stores).
    seen: HashMap<Fid, StoreId>,
}

impl Model {
    fn dirs(&self) -> Vec<String> {
        let mut d = vec![String::new()];
        d.extend(
            self.files
                .iter()
                .filter(|(_, c)| c.is_none())
                .map(|(p, _)| p.clone()),
        );
        d
    }

    fn files_only(&self) -> Vec<String> {
        self.files
            .iter()
            .filter(|(_, c)| c.is_some())
            .map(|(p, _)| p.clone())
            .collect()
    }

    fn fid(&self, path: &str) -> Fid {
        if path.is_empty() {
            Fid::root(VOL)
        } else {
            self.fids[path]
        }
    }

    fn expected(&self) -> Tree {
        self.files
            .iter()
            .map(|(p, c)| match c {
                None => (p.clone(), (VnodeKind::Directory, vnode_empty(), false)),
                Some(d) => (p.clone(), (VnodeKind::File, blake(d), false)),
            })
            .collect()
    }
}

fn vnode_empty() -> [u8; 32] {
    coda_vice::vnode::EMPTY_HASH
}

fn split_path(p: &str) -> (String, String) {
    let (d, n) = p.rsplit_once('/').unwrap();
    (d.to_string(), n.to_string())
}

/// One random update by client `c`, made on the model when any replica
/// applied it.
fn random_update(w: &mut World, m: &mut Model, rng: &mut Rng, c: usize, log: &mut Vec<String>) {
    let dirs = m.dirs();
    let files = m.files_only();
    let choice = rng.below(100);
    if choice < 30 || files.is_empty() {
        let dir = rng.pick(&dirs).clone();
        let name = format!("f{}", rng.below(1000));
        let path = format!("{dir}/{name}");
        if m.files.contains_key(&path) {
            return;
        }
        let Ok(fid) = w.fid(c) else { return };
        let mkdir = rng.below(4) == 0;
        let op = if mkdir {
            mkdir_op(m.fid(&dir), name.clone(), fid)
        } else {
            create_op(m.fid(&dir), name.clone(), fid)
        };
        let sid = StoreId {
            host: w.clients[c].host,
            unique: w.clients[c].next + 1,
        };
        let r = w.update(c, op, None);
        log.push(format!(
            "client {c}: {} {path}: {r:?}",
            if mkdir { "mkdir" } else { "create" }
        ));
        if r.is_ok() {
            m.files
                .insert(path.clone(), if mkdir { None } else { Some(Vec::new()) });
            m.fids.insert(path, fid);
            m.seen.insert(fid, sid);
        }
    } else if choice < 65 {
        let path = rng.pick(&files).clone();
        let fid = m.fids[&path];
        // Some past what resolution carries inline (64 KiB): staged.
        let len = match rng.below(8) {
            0 => 60_000 + rng.below(20_000),
            _ => rng.below(3000),
        } as usize;
        let data = rng.bytes(len);
        let sid = StoreId {
            host: w.clients[c].host,
            unique: w.clients[c].next + 1,
        };
        let op = Op::Store(cml::Store {
            fid,
            seen: m.seen[&fid],
            length: data.len() as u64,
            content_hash: blake(&data),
        });
        let r = w.update(c, op, Some(&data));
        log.push(format!(
            "client {c}: store {path} ({} bytes): {r:?}",
            data.len()
        ));
        if r.is_ok() {
            m.files.insert(path, Some(data));
            m.seen.insert(fid, sid);
        }
    } else if choice < 80 {
        let path = rng.pick(&files).clone();
        let fid = m.fids[&path];
        let (dir, name) = split_path(&path);
        let op = Op::Remove(cml::Remove {
            dir: m.fid(&dir),
            name,
            fid,
            seen: m.seen[&fid],
        });
        let r = w.update(c, op, None);
        log.push(format!("client {c}: remove {path}: {r:?}"));
        if r.is_ok() {
            m.files.remove(&path);
            m.fids.remove(&path);
        }
    } else if choice < 92 {
        // Rename a file within or between directories.
        let path = rng.pick(&files).clone();
        let fid = m.fids[&path];
        let (from_dir, from_name) = split_path(&path);
        let to_dir = rng.pick(&dirs).clone();
        let to_name = format!("r{}", rng.below(1000));
        let to = format!("{to_dir}/{to_name}");
        if m.files.contains_key(&to) {
            return;
        }
        let op = Op::Rename(cml::Rename {
            from_dir: m.fid(&from_dir),
            from_name,
            to_dir: m.fid(&to_dir),
            to_name,
            fid,
            replaced: None,
        });
        let sid = StoreId {
            host: w.clients[c].host,
            unique: w.clients[c].next + 1,
        };
        let r = w.update(c, op, None);
        log.push(format!("client {c}: rename {path} -> {to}: {r:?}"));
        // Hard links stay in one directory: a move of a multi-linked file
        // is refused; here every file has one name.
        if r.is_ok() {
            let data = m.files.remove(&path).unwrap();
            m.fids.remove(&path);
            m.files.insert(to.clone(), data);
            m.fids.insert(to, fid);
            m.seen.insert(fid, sid);
        }
    } else {
        // Remove an empty directory.
        let empty: Vec<String> = dirs
            .iter()
            .filter(|d| !d.is_empty() && !m.files.keys().any(|p| p.starts_with(&format!("{d}/"))))
            .cloned()
            .collect();
        if empty.is_empty() {
            return;
        }
        let path = rng.pick(&empty).clone();
        let fid = m.fids[&path];
        let (dir, name) = split_path(&path);
        let op = Op::RemoveDir(cml::RemoveDir {
            dir: m.fid(&dir),
            name,
            fid,
        });
        let r = w.update(c, op, None);
        log.push(format!("client {c}: rmdir {path}: {r:?}"));
        if r.is_ok() {
            m.files.remove(&path);
            m.fids.remove(&path);
        }
    }
}

#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Checks every replica equals the others (versions too) and the model.
fn check_converged(w: &mut World, m: &Model, log: &[String], seed: u64) {
    let report = |what: &str| -> String {
        format!(
            "seed {seed}: {what}\nSIM_SEED={seed} to replay; ops:\n  {}",
            log.join("\n  ")
        )
    };
    let first = w.replica_state(0);
    for s in 1..N {
        let other = w.replica_state(s);
        for (f, st) in &first {
            assert_eq!(
                other.get(f),
                Some(st),
                "{}",
                report(&format!("replica {s} differs from replica 0 at {f}"))
            );
        }
        assert_eq!(
            other.len(),
            first.len(),
            "{}",
            report(&format!("replica {s} has other objects"))
        );
    }
    let s0 = w.summary(0);
    for s in 1..N {
        assert_eq!(
            w.summary(s),
            s0,
            "{}",
            report(&format!("replica {s}'s versions differ from replica 0's"))
        );
    }
    let tree = w.tree(0);
    let want = m.expected();
    for (p, got) in &tree {
        assert_eq!(
            Some(got),
            want.get(p),
            "{}",
            report(&format!("{p} on the replicas is not the model's"))
        );
    }
    for p in want.keys() {
        assert!(
            tree.contains_key(p),
            "{}",
            report(&format!("{p} of the model is not on the replicas"))
        );
    }
    for s in 0..N {
        let problems = w.fsck(s);
        assert!(
            problems.is_empty(),
            "{}",
            report(&format!("replica {s}: {problems:?}"))
        );
    }
}

/// Clients on one side only (a server down or cut off, any restarted),
/// with COP2s sometimes lost: after healing and resolution every replica
/// equals the model exactly, with no conflict.
#[test]
fn replicas_converge_after_cuts_and_restarts() {
    for seed in seeds(12, &[48, 233, 312, 634, 1212]) {
        let mut w = World::new(seed, 2);
        let mut rng = Rng(seed * 7919);
        let mut m = Model::default();
        let mut log = Vec::new();
        let mut cut: Option<usize> = None;
        for step in 0..120 {
            let r = rng.below(100);
            if r < 6 {
                // One server out of date at a time: a server back from a
                // cut is brought up to date (the background sweep) before
                // another goes.
                w.heal_all();
                w.rebind_all();
                if cut.take().is_some() {
                    let k = rng.below(N as u64) as usize;
                    w.resolve_fully(k);
                    log.push(format!("step {step}: healed, resolved by {k}"));
                }
                let k = rng.below(N as u64) as usize;
                let rest: Vec<usize> = (0..N).filter(|&s| s != k).collect();
                w.split(&[k], &rest, &[], &[0, 1]);
                cut = Some(k);
                log.push(format!("step {step}: server {k} cut off"));
            } else if r < 10 {
                w.heal_all();
                // Clients notice the server is back, as Venus's probes do.
                w.rebind_all();
                cut = None;
                log.push(format!("step {step}: healed"));
            } else if r < 13 {
                let k = rng.below(N as u64) as usize;
                w.restart(k);
                if let Some(c) = cut {
                    let rest: Vec<usize> = (0..N).filter(|&s| s != c).collect();
                    w.split(&[c], &rest, &[], &[0, 1]);
                }
                log.push(format!("step {step}: server {k} restarted"));
            } else if r < 17 {
                let k = rng.below(N as u64) as usize;
                let o = w.resolve(k);
                log.push(format!("step {step}: resolution by {k}: {o:?}"));
            } else {
                let c = rng.below(2) as usize;
                random_update(&mut w, &mut m, &mut rng, c, &mut log);
            }
        }
        w.heal_all();
        // As a server's peer client does after a failed call: a
        // connection a server dropped while cut off is bound again.
        w.rebind_all();
        log.push("healed; resolving".into());
        let k = rng.below(N as u64) as usize;
        w.resolve_fully(k);
        check_converged(&mut w, &m, &log, seed);
    }
}

/// A replica on a new, empty server is filled by resolution.
#[test]
fn an_empty_replica_is_filled() {
    let mut w = World::new(5, 1);
    let mut rng = Rng(99);
    let mut m = Model::default();
    let mut log = Vec::new();
    for _ in 0..60 {
        random_update(&mut w, &mut m, &mut rng, 0, &mut log);
    }
    // Server 2 is replaced: a fresh root, an empty replica.
    let node = w.servers[2];
    w.sim.set_handler(node, |_, e| Some(e));
    w.services[2] = None;
    w.dirs[2] = tempfile::tempdir().unwrap();
    {
        let mut pdb = Pdb::open(&w.dirs[2].path().join("pdb.toml")).unwrap();
        pdb.add_user("admin", "pw", Some(ADMIN_ID), [1; 16])
            .unwrap();
    }
    let mut svc = open_service(w.dirs[2].path(), "s2");
    let replicas: Vec<String> = NAMES.iter().map(|s| s.to_string()).collect();
    let created = Timestamp {
        secs: 1_700_000_000,
        nanos: 0,
    };
    svc.new_replica(VOL, "rep", ADMIN_ID, &replicas, created, true)
        .unwrap();
    svc.shard.flush().unwrap();
    let svc = Rc::new(RefCell::new(svc));
    coda_vice::sim::serve(&mut w.sim, node, svc.clone());
    w.services[2] = Some(svc);
    w.restart(2);
    assert_eq!(w.tree(2).len(), 0);
    // Until it is filled it serves no client: an empty root would read
    // as everything gone.
    w.rebind_all();
    let root_attr = |w: &mut World, s: usize| {
        let body = codec::to_bytes(&vice::GetAttr {
            fid: Fid::root(VOL),
        });
        let at = &w.clients[0].at;
        World::call_at(&mut w.sim, at, s, op::GET_ATTR, body, None)
            .expect("an answer")
            .code
    };
    assert_eq!(root_attr(&mut w, 2), Errno::BARREN.0);
    assert_eq!(root_attr(&mut w, 0), 0);
    // Nor does it take updates: they would land on an empty tree.
    let fid = w.fid(0).unwrap();
    let made = create_op(Fid::root(VOL), "while_barren".into(), fid);
    assert_eq!(w.update(0, made, None).unwrap(), vec![0, 1]);
    m.files.insert("/while_barren".into(), Some(Vec::new()));
    let o = w.resolve(0).unwrap();
    assert!(o.installed > 0);
    w.resolve_fully(1);
    check_converged(&mut w, &m, &log, 5);
    assert_eq!(root_attr(&mut w, 2), 0);
}

/// Two halves that update different files of one directory, make and
/// remove different names: merged with no one asked. The same file
/// changed on both sides, and one name made on both: conflicts, marked,
/// each replica keeping its side's version.
#[test]
fn partitioned_halves_merge_and_true_conflicts_are_marked() {
    for seed in seeds(6, &[]) {
        let mut w = World::new(seed, 2);
        let mut log = Vec::new();
        let mut m = Model::default();
        let root = Fid::root(VOL);
        // A directory with some files, on every replica.
        let d = w.fid(0).unwrap();
        w.update(0, mkdir_op(root, "d".into(), d), None).unwrap();
        m.files.insert("/d".into(), None);
        m.fids.insert("/d".into(), d);
        let mut seen = HashMap::new();
        for name in ["a1", "a2", "b1", "b2", "shared", "gone_a", "gone_b"] {
            let f = w.fid(0).unwrap();
            w.update(0, create_op(d, name.into(), f), None).unwrap();
            let sid = w.last(0);
            seen.insert(name.to_string(), (f, sid));
            m.files.insert(format!("/d/{name}"), Some(Vec::new()));
            m.fids.insert(format!("/d/{name}"), f);
        }
        w.resolve_fully(0);
        // Servers 0 and 1 with client 0; server 2 with client 1 (or the
        // other way round, by seed).
        let (a, b): (Vec<usize>, Vec<usize>) = if seed % 2 == 0 {
            (vec![0, 1], vec![2])
        } else {
            (vec![0], vec![1, 2])
        };
        w.split(&a, &b, &[0], &[1]);
        for (c, mine, gone) in [
            (0usize, ["a1", "a2"], "gone_a"),
            (1, ["b1", "b2"], "gone_b"),
        ] {
            for name in mine {
                let (f, sid) = seen[name];
                let data = format!("{name} from client {c} seed {seed}").into_bytes();
                let op = Op::Store(cml::Store {
                    fid: f,
                    seen: sid,
                    length: data.len() as u64,
                    content_hash: blake(&data),
                });
                w.update(c, op, Some(&data)).unwrap();
                m.files.insert(format!("/d/{name}"), Some(data));
            }
            let (f, sid) = seen[gone];
            w.update(
                c,
                Op::Remove(cml::Remove {
                    dir: d,
                    name: gone.into(),
                    fid: f,
                    seen: sid,
                }),
                None,
            )
            .unwrap();
            m.files.remove(&format!("/d/{gone}"));
            let made = w.fid(c).unwrap();
            let name = format!("new_{c}");
            w.update(c, create_op(d, name.clone(), made), None).unwrap();
            m.files.insert(format!("/d/{name}"), Some(Vec::new()));
            // The same file, both sides.
            let (f, sid) = seen["shared"];
            let data = format!("shared by {c}").into_bytes();
            let op = Op::Store(cml::Store {
                fid: f,
                seen: sid,
                length: data.len() as u64,
                content_hash: blake(&data),
            });
            w.update(c, op, Some(&data)).unwrap();
            // One name, made on both sides.
            let dup = w.fid(c).unwrap();
            w.update(c, create_op(d, "dup".into(), dup), None).unwrap();
        }
        log.push(format!(
            "seed {seed}: partition {a:?} | {b:?}; both sides updated"
        ));
        w.heal_all();
        w.resolve_fully(2);
        // Every replica agrees on names and non-conflicting contents.
        let trees: Vec<_> = (0..N).map(|s| w.tree(s)).collect();
        for (s, t) in trees.iter().enumerate() {
            for (p, want) in m.expected() {
                if p == "/d/shared" {
                    continue;
                }
                assert_eq!(t.get(&p), Some(&want), "seed {seed}: replica {s}: {p}");
            }
            assert!(!t.contains_key("/d/gone_a") && !t.contains_key("/d/gone_b"));
            // The shared file: in conflict, each side's own contents.
            let (kind, hash, incon) = t["/d/shared"];
            assert_eq!(kind, VnodeKind::File);
            assert!(
                incon,
                "seed {seed}: replica {s}: /d/shared should be in conflict"
            );
            let side = if a.contains(&s) { 0 } else { 1 };
            assert_eq!(
                hash,
                blake(format!("shared by {side}").as_bytes()),
                "seed {seed}: replica {s} keeps its side's version"
            );
            // The name made twice: one keeps it, the other is renamed and marked.
            let dups: Vec<&String> = t.keys().filter(|p| p.starts_with("/d/dup")).collect();
            assert_eq!(dups.len(), 2, "seed {seed}: replica {s}: {dups:?}");
            assert!(dups.iter().any(|p| *p == "/d/dup"));
            let renamed = dups
                .iter()
                .find(|p| p.contains(CLASH_MARK))
                .expect("a renamed twin");
            assert!(t[*renamed].2, "the renamed twin is marked for repair");
        }
        // Each replica lists what is marked, by path, for `repair list`.
        w.rebind_all();
        let renamed = trees[0]
            .keys()
            .find(|p| p.contains(CLASH_MARK))
            .unwrap()
            .clone();
        let mut want = vec!["/d/shared".to_string(), renamed];
        want.sort();
        for s in 0..N {
            assert_eq!(w.marked(0, s), want, "seed {seed}: replica {s}");
        }
        // Names are the same on every replica.
        let names = |t: &Tree| t.keys().cloned().collect::<Vec<_>>();
        for s in 1..N {
            assert_eq!(names(&trees[s]), names(&trees[0]), "seed {seed}");
        }
        for s in 0..N {
            let problems = w.fsck(s);
            assert!(
                problems.is_empty(),
                "seed {seed}: replica {s}: {problems:?}"
            );
        }
    }
}

/// A file removed on one side of a partition and written on the other is
/// kept, with the new contents, on every replica: the update wins, even
/// though the removing side's directory saw every change of the other's.
#[test]
fn an_update_beats_a_concurrent_removal() {
    let mut w = World::new(3, 2);
    let root = Fid::root(VOL);
    let f = w.fid(0).unwrap();
    let create = create_op(root, "f".into(), f);
    w.update(0, create, None).unwrap();
    let made = w.last(0);
    w.split(&[0], &[1, 2], &[0], &[1]);
    let data = b"written while another side removed it".to_vec();
    let store = Op::Store(cml::Store {
        fid: f,
        seen: made,
        length: data.len() as u64,
        content_hash: blake(&data),
    });
    assert_eq!(w.update(0, store, Some(&data)).unwrap(), vec![0]);
    let remove = Op::Remove(cml::Remove {
        dir: root,
        name: "f".into(),
        fid: f,
        seen: made,
    });
    assert_eq!(w.update(1, remove, None).unwrap(), vec![1, 2]);
    w.heal_all();
    w.rebind_all();
    w.resolve_fully(1);
    for s in 0..N {
        let t = w.tree(s);
        assert_eq!(
            t.get("/f"),
            Some(&(VnodeKind::File, blake(&data), false)),
            "replica {s}"
        );
        assert!(w.fsck(s).is_empty(), "replica {s}: {:?}", w.fsck(s));
    }
}

/// A replica that learns a rename through a merge (with one other
/// replica) learns the removal of the old name too: its later merge with
/// a replica that still has the old name drops it instead of binding the
/// file twice (replication sim seed 312).
#[test]
fn a_removal_learned_in_a_merge_is_passed_on_to_the_next_merge() {
    let mut w = World::new(5, 1);
    let root = Fid::root(VOL);
    // Made while replica 0 is cut off: on 1 and 2 alone.
    w.split(&[0], &[1, 2], &[], &[0]);
    let f = w.fid(0).unwrap();
    assert_eq!(
        w.update(0, create_op(root, "f".into(), f), None).unwrap(),
        vec![1, 2]
    );
    // Renamed on 2 alone.
    w.heal_all();
    w.rebind_all();
    w.split(&[2], &[0, 1], &[0], &[]);
    let rename = Op::Rename(cml::Rename {
        from_dir: root,
        from_name: "f".into(),
        to_dir: root,
        to_name: "g".into(),
        fid: f,
        replaced: None,
    });
    assert_eq!(w.update(0, rename, None).unwrap(), vec![2]);
    // 0 and 2 merge while 1 is away; then 0 and 1 while 2 is.
    w.heal_all();
    w.rebind_all();
    w.split(&[1], &[0, 2], &[], &[]);
    assert!(w.resolve(2).unwrap().installed > 0);
    w.heal_all();
    w.rebind_all();
    w.split(&[2], &[0, 1], &[], &[]);
    assert!(w.resolve(0).unwrap().installed > 0);
    for s in [0, 1] {
        let names: Vec<String> = w.tree(s).into_keys().collect();
        assert_eq!(names, vec!["/g".to_string()], "replica {s}");
    }
    w.heal_all();
    w.rebind_all();
    w.resolve_fully(0);
    for s in 0..N {
        let names: Vec<String> = w.tree(s).into_keys().collect();
        assert_eq!(names, vec!["/g".to_string()], "replica {s}");
        assert!(w.fsck(s).is_empty(), "replica {s}: {:?}", w.fsck(s));
    }
}

/// Each path of a replica's tree: its kind, contents hash, and whether it
/// is marked inconsistent.
type Tree = BTreeMap<String, (VnodeKind, [u8; 32], bool)>;

fn rename_op(dir: Fid, from: &str, to: &str, fid: Fid) -> Op {
    Op::Rename(cml::Rename {
        from_dir: dir,
        from_name: from.into(),
        to_dir: dir,
        to_name: to.into(),
        fid,
        replaced: None,
    })
}

/// Makes `f` in the root (`make`), changes it (`change`) while replica 2
/// is cut off, renames it to `g` on 1 and 2 while 0 is, merges 0 and 2
/// while 1 is away, then all three: the trees of 0 and 2 after their
/// merge, and each replica's after the last.
fn rename_after_a_change_2_missed(
    seed: u64,
    make: fn(Fid, String, Fid) -> Op,
    change: impl FnOnce(&mut World, Fid),
) -> Vec<Tree> {
    let mut trees = Vec::new();
    let mut w = World::new(seed, 1);
    let root = Fid::root(VOL);
    let f = w.fid(0).unwrap();
    w.update(0, make(root, "f".into(), f), None).unwrap();
    w.split(&[2], &[0, 1], &[], &[0]);
    change(&mut w, f);
    w.heal_all();
    w.rebind_all();
    w.split(&[0], &[1, 2], &[], &[0]);
    assert_eq!(
        w.update(0, rename_op(root, "f", "g", f), None).unwrap(),
        vec![1, 2]
    );
    w.heal_all();
    w.rebind_all();
    w.split(&[1], &[0, 2], &[], &[]);
    w.resolve(2).unwrap();
    trees.extend([w.tree(0), w.tree(2)]);
    w.heal_all();
    w.rebind_all();
    w.resolve_fully(0);
    for s in 0..N {
        assert!(w.fsck(s).is_empty(), "replica {s}: {:?}", w.fsck(s));
        trees.push(w.tree(s));
    }
    trees
}

/// A file renamed on replicas one of which missed its last store keeps
/// only its new name when merged with a replica that has the store: the
/// rename came after the store, and the object lives on under the new
/// name (replication sim seed 634).
#[test]
fn a_file_renamed_on_a_stale_replica_does_not_keep_its_old_name() {
    let data = b"stored before the rename".to_vec();
    let store = |w: &mut World, f: Fid| {
        let seen = w.last(0);
        let store = Op::Store(cml::Store {
            fid: f,
            seen,
            length: data.len() as u64,
            content_hash: blake(&data),
        });
        assert_eq!(w.update(0, store, Some(&data)).unwrap(), vec![0, 1]);
    };
    for (s, t) in rename_after_a_change_2_missed(6, create_op, store)
        .iter()
        .enumerate()
    {
        let names: Vec<&String> = t.keys().collect();
        assert_eq!(names, vec!["/g"], "tree {s}");
        // 0 and 2 alone hold versions apart (a store, a rename): the
        // conflict they show goes once 1, which saw both, is back.
        if s >= 2 {
            assert_eq!(t["/g"], (VnodeKind::File, blake(&data), false), "tree {s}");
        }
    }
}

/// The same for a directory that gained a name 2 missed.
#[test]
fn a_directory_renamed_on_a_stale_replica_does_not_keep_its_old_name() {
    let fill = |w: &mut World, d: Fid| {
        let x = w.fid(0).unwrap();
        assert_eq!(
            w.update(0, create_op(d, "x".into(), x), None).unwrap(),
            vec![0, 1]
        );
    };
    for (s, t) in rename_after_a_change_2_missed(8, mkdir_op, fill)
        .iter()
        .enumerate()
    {
        let names: Vec<&String> = t.keys().collect();
        assert_eq!(names, vec!["/g", "/g/x"], "tree {s}");
    }
}

/// A name moved away on two replicas, then moved back on one of them
/// while the other and the third are cut off: merging the two keeps the
/// object under the name it has now (each still holds a removal of one of
/// its names, and the object lives on at both).
#[test]
fn a_name_moved_back_while_cut_off_keeps_its_object() {
    let mut w = World::new(10, 1);
    let root = Fid::root(VOL);
    let f = w.fid(0).unwrap();
    w.update(0, create_op(root, "n".into(), f), None).unwrap();
    w.split(&[2], &[0, 1], &[], &[0]);
    assert_eq!(
        w.update(0, rename_op(root, "n", "m", f), None).unwrap(),
        vec![0, 1]
    );
    w.heal_all();
    w.rebind_all();
    w.split(&[0], &[1, 2], &[], &[0]);
    w.split(&[2], &[0, 1], &[], &[0]);
    assert_eq!(
        w.update(0, rename_op(root, "m", "n", f), None).unwrap(),
        vec![1]
    );
    w.heal_all();
    w.rebind_all();
    w.split(&[2], &[0, 1], &[], &[]);
    w.resolve(0).unwrap();
    let mut trees = vec![w.tree(0), w.tree(1)];
    w.heal_all();
    w.rebind_all();
    w.resolve_fully(0);
    trees.extend((0..N).map(|s| w.tree(s)));
    for (i, t) in trees.iter().enumerate() {
        let names: Vec<&String> = t.keys().collect();
        assert_eq!(names, vec!["/n"], "tree {i}");
    }
}

/// A file moved on two replicas and then removed on one, while the third
/// stored into it under its old name: the store wins over the removal, and
/// the move, which the storing side never saw, does not take its name.
#[test]
fn a_store_beats_a_move_then_removal_it_never_saw() {
    let mut w = World::new(11, 2);
    let root = Fid::root(VOL);
    let f = w.fid(0).unwrap();
    w.update(0, create_op(root, "n".into(), f), None).unwrap();
    let made = w.last(0);
    w.split(&[1], &[0, 2], &[1], &[0]);
    assert_eq!(
        w.update(0, rename_op(root, "n", "m", f), None).unwrap(),
        vec![0, 2]
    );
    let moved = w.last(0);
    let data = b"stored while it was moved and removed".to_vec();
    let store = Op::Store(cml::Store {
        fid: f,
        seen: made,
        length: data.len() as u64,
        content_hash: blake(&data),
    });
    assert_eq!(w.update(1, store, Some(&data)).unwrap(), vec![1]);
    w.split(&[0], &[2], &[0], &[]);
    let remove = Op::Remove(cml::Remove {
        dir: root,
        name: "m".into(),
        fid: f,
        seen: moved,
    });
    let removed = w.update(0, remove, None);
    assert_eq!(removed, Ok(vec![0]));
    w.heal_all();
    w.rebind_all();
    w.resolve_fully(0);
    for s in 0..N {
        let t = w.tree(s);
        let names: Vec<&String> = t.keys().collect();
        assert_eq!(names, vec!["/n"], "replica {s}");
        assert!(w.fsck(s).is_empty(), "replica {s}: {:?}", w.fsck(s));
    }
    assert_eq!(w.tree(1)["/n"].1, blake(&data));
}

/// A file renamed away and back on one side of a partition, while the
/// other side changed its directory, keeps its name.
#[test]
fn a_name_renamed_away_and_back_survives_a_merge() {
    let mut w = World::new(7, 2);
    let root = Fid::root(VOL);
    let f = w.fid(0).unwrap();
    w.update(0, create_op(root, "a".into(), f), None).unwrap();
    w.split(&[0], &[1, 2], &[1], &[0]);
    assert_eq!(
        w.update(0, rename_op(root, "a", "b", f), None).unwrap(),
        vec![1, 2]
    );
    assert_eq!(
        w.update(0, rename_op(root, "b", "a", f), None).unwrap(),
        vec![1, 2]
    );
    let c = w.fid(1).unwrap();
    assert_eq!(
        w.update(1, create_op(root, "c".into(), c), None).unwrap(),
        vec![0]
    );
    w.heal_all();
    w.rebind_all();
    w.resolve_fully(0);
    for s in 0..N {
        let names: Vec<String> = w.tree(s).into_keys().collect();
        assert_eq!(
            names,
            vec!["/a".to_string(), "/c".to_string()],
            "replica {s}"
        );
        assert!(w.fsck(s).is_empty(), "replica {s}: {:?}", w.fsck(s));
    }
}

/// A COP2 carried on the client's next update (`WITH_COP2`) is applied
/// as one sent on its own: the first update's objects hold equal vectors
/// on every replica with no resolution, and the carrying update stands.
#[test]
fn a_cop2_carried_on_the_next_update_joins_the_vectors() {
    let mut w = World::new(5, 1);
    let root = Fid::root(VOL);
    let create = |w: &mut World, name: &str| {
        let fid = w.fid(0).unwrap();
        create_op(root, name.into(), fid)
    };
    let vvs = |w: &mut World| -> Vec<Vec<SummaryEntry>> { (0..N).map(|s| w.summary(s)).collect() };
    // The first update's COP2 is held for the next one.
    w.clients[0].lose_cop2 = 2;
    let f = create(&mut w, "f");
    assert_eq!(w.update(0, f, None).unwrap(), vec![0, 1, 2]);
    assert!(w.clients[0].held.is_some());
    let apart = vvs(&mut w);
    assert!(
        apart[0] != apart[1] && apart[1] != apart[2],
        "before its COP2 each replica counted only itself"
    );
    let g = create(&mut w, "g");
    assert_eq!(w.update(0, g, None).unwrap(), vec![0, 1, 2]);
    let joined = vvs(&mut w);
    assert_eq!(joined[0], joined[1]);
    assert_eq!(joined[1], joined[2]);
    assert!(w.tree(0).contains_key("/g"));
}

/// A repair reaches two replicas of a file in conflict, the third not yet
/// (or the resolver reads that one first), and its COP2 is lost: the two
/// repaired replicas hold the same version under vectors apart, with the
/// histories of the versions they had. Together they saw everything the
/// third saw: resolution copies the repaired version to it and marks
/// nothing again.
#[test]
fn a_repair_half_done_is_finished_by_resolution_not_marked_again() {
    for seed in seeds(4, &[]) {
        let mut w = World::new(seed, 2);
        let root = Fid::root(VOL);
        let f = w.fid(0).unwrap();
        w.update(0, create_op(root, "f".into(), f), None).unwrap();
        let made = w.last(0);
        w.split(&[0, 1], &[2], &[0], &[1]);
        for (c, data) in [(0, &b"from side A"[..]), (1, b"from side B, longer")] {
            let op = Op::Store(cml::Store {
                fid: f,
                seen: made,
                length: data.len() as u64,
                content_hash: blake(data),
            });
            w.update(c, op, Some(data)).unwrap();
        }
        w.heal_all();
        w.rebind_all();
        w.resolve_fully(0);
        let states: Vec<ObjectState> = (0..N).map(|s| w.states(s, &[f]).remove(0)).collect();
        assert!(states.iter().all(|s| s.status.vv.is_inconsistent()));
        let mut base = VersionVector::default();
        for s in &states {
            base.raise(&s.status.vv);
        }
        // Slot 1 (with side A) or 0 is not reached; the COP2 is lost
        // (every seventh is).
        let missed = (seed % 2) as usize;
        let (client, server) = (w.clients[0].at.node, w.servers[missed]);
        w.sim.partition(client, server);
        w.clients[0].lose_cop2 = 6;
        let repaired = b"the repaired version";
        let mut took = (0..N).filter(|s| *s != missed).collect::<Vec<_>>();
        assert_eq!(w.repair(0, f, base, repaired).unwrap(), took);
        w.sim.heal(client, server);
        let vvs: Vec<VersionVector> = took
            .iter()
            .map(|&s| w.states(s, &[f]).remove(0).status.vv)
            .collect();
        assert_ne!(vvs[0], vvs[1], "the COP2 was lost");
        w.resolve_fully(missed);
        took.push(missed);
        for s in took {
            let t = w.tree(s);
            assert_eq!(
                t.get("/f"),
                Some(&(VnodeKind::File, blake(repaired), false)),
                "seed {seed}: replica {s}"
            );
            assert!(w.fsck(s).is_empty(), "replica {s}: {:?}", w.fsck(s));
        }
    }
}

/// Two directories each moved into the other, one on each side of a
/// partition: merged name by name, each would be named twice and each
/// would hold the other, a loop no walk from the root reaches. Every
/// replica must still hold one tree, with both directories in it.
#[test]
fn directories_moved_into_each_other_on_both_sides_stay_one_tree() {
    let mut w = World::new(9, 2);
    let root = Fid::root(VOL);
    let mkdir = |w: &mut World, name: &str| {
        let fid = w.fid(0).unwrap();
        let op = mkdir_op(root, name.into(), fid);
        assert_eq!(w.update(0, op, None).unwrap(), vec![0, 1, 2]);
        fid
    };
    let (a, b) = (mkdir(&mut w, "a"), mkdir(&mut w, "b"));
    let f = w.fid(0).unwrap();
    let create = create_op(a, "in_a".into(), f);
    assert_eq!(w.update(0, create, None).unwrap(), vec![0, 1, 2]);
    w.split(&[0, 1], &[2], &[0], &[1]);
    let mv = |fid: Fid, name: &str, to: Fid| {
        Op::Rename(cml::Rename {
            from_dir: root,
            from_name: name.into(),
            to_dir: to,
            to_name: name.into(),
            fid,
            replaced: None,
        })
    };
    assert_eq!(w.update(0, mv(a, "a", b), None).unwrap(), vec![0, 1]);
    assert_eq!(w.update(1, mv(b, "b", a), None).unwrap(), vec![2]);
    w.heal_all();
    w.resolve_fully(0);
    let first = w.replica_state(0);
    for s in 0..N {
        assert_eq!(w.fsck(s), Vec::<String>::new(), "replica {s}");
        assert_eq!(w.replica_state(s), first, "replica {s}");
        let tree = w.tree(s);
        let found = |end: &str| tree.keys().any(|p| p.ends_with(end));
        assert!(found("/a") && found("/b") && found("/in_a"), "{tree:?}");
    }
}

/// Which side of a partition changed a directory's access list is not
/// known when both changed the directory: a right revoked on one side
/// stays revoked, even when the other side changed the directory later.
#[test]
fn a_right_revoked_during_a_partition_stays_revoked() {
    use coda_proto::acl::{Acl, Rights, ANY_USER};
    let mut w = World::new(8, 2);
    let root = Fid::root(VOL);
    let acl = |any: &str| {
        let mut a = Acl::default();
        a.set(ADMIN_ID, Rights::ALL, false);
        a.set(ANY_USER, Rights::parse(any).unwrap(), false);
        a
    };
    let set = |a: Acl| Op::SetAcl(cml::SetAcl { dir: root, acl: a });
    assert_eq!(
        w.update(0, set(acl("rlidwk")), None).unwrap(),
        vec![0, 1, 2]
    );
    w.split(&[0, 1], &[2], &[0], &[1]);
    assert_eq!(w.update(0, set(acl("rl")), None).unwrap(), vec![0, 1]);
    // The other side's change comes later.
    w.clients[1].next += 10;
    let f = w.fid(1).unwrap();
    let create = create_op(root, "late".into(), f);
    assert_eq!(w.update(1, create, None).unwrap(), vec![2]);
    w.heal_all();
    w.resolve_fully(0);
    for s in 0..N {
        let st = w.states(s, &[root]).remove(0);
        let rights = st.acl.unwrap().rights_for(&[ANY_USER]);
        assert_eq!(rights.to_string(), "rl", "replica {s}");
        assert!(st.entries.iter().any(|b| b.name == "late"), "replica {s}");
    }
}

/// Objects a client makes with made-up fids get fids every replica derives
/// alike from the client's host, which the client names itself: another
/// user naming that host first cannot take the fids it will make.
#[test]
fn another_user_naming_a_clients_host_cannot_take_its_fids() {
    let mut w = World::new(6, 1);
    let root = Fid::root(VOL);
    let mut open = coda_proto::acl::Acl::default();
    open.set(
        coda_proto::acl::ANY_USER,
        coda_proto::acl::Rights::ALL,
        false,
    );
    let set = Op::SetAcl(cml::SetAcl {
        dir: root,
        acl: open,
    });
    assert_eq!(w.update(0, set, None).unwrap(), vec![0, 1, 2]);
    let at = w.node("intruder", 2000);
    let host = w.clients[0].host;
    w.clients.push(Client {
        at,
        host,
        next: 0,
        lose_cop2: 0,
        held: None,
    });
    let local = Fid::new(VOL, coda_proto::fid::LOCAL_VNODE_BASE + 1, 1);
    let create = |name: &str| create_op(root, name.into(), local);
    assert_eq!(w.update(1, create("squat"), None).unwrap(), vec![0, 1, 2]);
    assert_eq!(w.update(0, create("mine"), None).unwrap(), vec![0, 1, 2]);
    let tree = w.tree(0);
    assert!(tree.contains_key("/squat") && tree.contains_key("/mine"));
}

/// Summaries are read one replica after another. A replica that makes an
/// object after its summary was read (while a call to another waited out
/// a cut) names it in the directory states read later: that name, and
/// the object, are kept, not merged away.
#[test]
fn an_object_made_while_the_summaries_were_read_is_kept() {
    let mut w = World::new(11, 2);
    let root = Fid::root(VOL);
    let create = |w: &mut World, c: usize, name: &str| {
        let fid = w.fid(c).unwrap();
        create_op(root, name.into(), fid)
    };
    let base = create(&mut w, 0, "base");
    w.update(0, base, None).unwrap();
    // Replica 2 makes a name of its own: the root differs, and merges.
    w.split(&[0, 1], &[2], &[0], &[1]);
    let apart = create(&mut w, 1, "apart");
    assert_eq!(w.update(1, apart, None).unwrap(), vec![2]);
    w.heal_all();
    w.rebind_all();
    // Made at replica 1 alone, once its summary has been read.
    let late = create(&mut w, 0, "late");
    let record = CmlRecord {
        store_id: StoreId {
            host: w.clients[0].host,
            unique: 1 << 40,
        },
        time: Timestamp {
            secs: 1_700_000_100,
            nanos: 0,
        },
        op: late,
    };
    let mut reps = Racing {
        inner: SimReplicas {
            sim: &mut w.sim,
            at: &w.resolvers[0],
        },
        client: &w.clients[0].at,
        late: Some(codec::to_bytes(&record)),
    };
    let first = resolve::resolve(&mut reps, VOL, N);
    assert!(reps.late.is_none(), "the object was made meanwhile");
    assert_eq!(first.err(), Some(Errno::EAGAIN), "summaries read stale");
    w.resolve_fully(0);
    for s in 0..N {
        let t = w.tree(s);
        for name in ["/base", "/apart", "/late"] {
            assert!(t.contains_key(name), "replica {s} lacks {name}: {t:?}");
        }
        assert!(w.fsck(s).is_empty(), "replica {s}: {:?}", w.fsck(s));
    }
}

/// Replicas whose replica 1 makes an object (`late`, a Create) just
/// before replica 2's summary is read.
struct Racing<'a> {
    inner: SimReplicas<'a>,
    client: &'a Node,
    late: Option<Bytes>,
}

impl Replicas for Racing<'_> {
    fn call(
        &mut self,
        slot: usize,
        opcode: u16,
        body: Bytes,
        side_effect: Option<SideEffect>,
    ) -> Result<Reply, Errno> {
        if slot == 2 && opcode == op::RES_SUMMARY {
            if let Some(late) = self.late.take() {
                let r = World::call_at(self.inner.sim, self.client, 1, op::CREATE, late, None);
                assert_eq!(r.map(|r| r.code), Some(0));
            }
        }
        self.inner.call(slot, opcode, body, side_effect)
    }
}
