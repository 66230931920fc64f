#![allow(dead_code)]
//! A server on a simulated network, and clients that call it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use coda_proto::acl::PrincipalId;
use coda_proto::callback::{self, Break};
use coda_proto::cml::{self, CmlRecord, Op};
use coda_proto::fid::{Fid, StoreId, VolumeId, LOCAL_VNODE_BASE};
use coda_proto::status::{Status, Timestamp};
use coda_proto::vice::{self, op, DirEntry, MutateReply, VolumeInfo};
use coda_proto::Errno;
use coda_rpc2::codec::{self, Decode, Encode};
use coda_rpc2::endpoint::{Auth, ConnId, Event, SideEffect};
use coda_rpc2::sim::{NetConfig, NodeId, Sim};
use coda_rpc2::{CellKey, Config, Credentials, Sink, Source, Token};
use coda_vice::cell::{Cell, ROOT_VOLUME_NAME};
use coda_vice::pdb::{Pdb, ADMIN_ID};
use coda_vice::service::Service;
use coda_vice::shard::{Shard, ShardOptions};

pub const CELL: [u8; 32] = [0x5a; 32];
pub const CELL_ID: [u8; 16] = [7; 16];
pub const ALICE: PrincipalId = 1000;
pub const BOB: PrincipalId = 1001;
pub const CAROL: PrincipalId = 1002;

pub fn shard_options() -> ShardOptions {
    ShardOptions {
        segment_bytes: 256 << 20,
        log_bytes: 16 << 20,
        ..Default::default()
    }
}

pub struct World {
    pub sim: Sim,
    pub server: NodeId,
    service: Option<Rc<RefCell<Service>>>,
    pub dir: tempfile::TempDir,
    pub root: VolumeId,
    clients: usize,
}

pub struct Client {
    pub node: NodeId,
    pub conn: ConnId,
    pub host: u64,
    next: u64,
    pub breaks: Rc<RefCell<Vec<Break>>>,
}

impl Client {
    /// A fresh store id for this client's next update.
    pub fn sid(&mut self) -> StoreId {
        self.next += 1;
        StoreId {
            host: self.host,
            unique: self.next,
        }
    }

    pub fn record(&mut self, op: Op) -> CmlRecord {
        CmlRecord {
            store_id: self.sid(),
            time: Timestamp {
                secs: 1_700_000_000,
                nanos: 0,
            },
            op,
        }
    }

    /// A made-up fid, as a disconnected client makes for new objects.
    pub fn local_fid(&mut self, volume: VolumeId) -> Fid {
        self.next += 1;
        Fid::new(volume, LOCAL_VNODE_BASE + self.next, self.next)
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

/// Opens the server's shard in `dir` (as a restart does).
pub fn open_service(dir: &std::path::Path) -> Service {
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
    svc.cell.set_addr(0, "sim".into());
    svc
}

impl World {
    pub fn new(seed: u64) -> World {
        Self::with_net(seed, NetConfig::default())
    }

    pub fn with_net(seed: u64, net: NetConfig) -> World {
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
            assert_eq!(pdb.add_user("bob", "bob-pw", None, [3; 16]).unwrap(), BOB);
            assert_eq!(
                pdb.add_user("carol", "carol-pw", None, [4; 16]).unwrap(),
                CAROL
            );
        }
        let mut svc = open_service(dir.path());
        let root = svc.cell.new_volume_id();
        svc.new_volume(root, ROOT_VOLUME_NAME, ADMIN_ID).unwrap();
        svc.shard.flush().unwrap();
        let mut sim = Sim::new(seed, net);
        let server = sim.add("vice", server_config());
        let service = Rc::new(RefCell::new(svc));
        coda_vice::sim::serve(&mut sim, server, service.clone());
        World {
            sim,
            server,
            service: Some(service),
            dir,
            root,
            clients: 0,
        }
    }

    /// Drops the service and opens it again from disk, as after a crash
    /// (uncommitted state is gone; everything acknowledged was flushed).
    pub fn restart(&mut self) {
        self.sim.set_handler(self.server, |_, e| Some(e));
        let old = self.service.take().unwrap();
        drop(
            Rc::try_unwrap(old)
                .ok()
                .expect("the handler held the only other reference"),
        );
        let svc = Rc::new(RefCell::new(open_service(self.dir.path())));
        coda_vice::sim::serve(&mut self.sim, self.server, svc.clone());
        self.service = Some(svc);
    }

    /// Another volume on the server, owned by `owner`.
    pub fn new_volume(&self, name: &str, owner: PrincipalId) -> VolumeId {
        let mut svc = self.svc();
        let id = svc.cell.new_volume_id();
        svc.new_volume(id, name, owner).unwrap();
        svc.shard.flush().unwrap();
        id
    }

    pub fn svc(&self) -> std::cell::RefMut<'_, Service> {
        self.service.as_ref().unwrap().borrow_mut()
    }

    /// A client bound as `user` (None: anonymous).
    pub fn client(&mut self, user: Option<PrincipalId>) -> Client {
        self.clients += 1;
        let node = self.sim.add(
            &format!("venus{}", self.clients),
            Config {
                peer_timeout: Duration::from_secs(10),
                ..Config::default()
            },
        );
        let auth = match user {
            None => Auth::Anonymous,
            Some(u) => Auth::Encrypted(credentials(u as u32)),
        };
        let addr = self.sim.addr(self.server);
        let now = self.sim.now;
        let conn = self.sim.endpoint(node).connect(now, addr, auth);
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
        assert!(ok.is_some(), "bind never finished");
        let breaks: Rc<RefCell<Vec<Break>>> = Default::default();
        Client {
            node,
            conn,
            host: 0x1000 + self.clients as u64,
            next: 0,
            breaks,
        }
    }

    /// Makes a call and runs the network until it is answered; meanwhile
    /// every client answers callback breaks (recorded in its `breaks`).
    pub fn call_raw(
        &mut self,
        c: &Client,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
        side: Option<SideEffect>,
    ) -> coda_rpc2::Reply {
        let now = self.sim.now;
        let call = self
            .sim
            .endpoint(c.node)
            .call(now, c.conn, subsystem, opcode, body, side)
            .expect("call");
        let mut result = None;
        let node = c.node;
        let breaks = c.breaks.clone();
        let done = self.sim.run_until(Duration::from_secs(600), |s| {
            while let Some(e) = s.nodes[node].events.pop_front() {
                match e {
                    Event::Reply {
                        call: id,
                        result: r,
                    } if id == call => result = Some(r),
                    Event::Request {
                        id,
                        subsystem: callback::SUBSYSTEM,
                        body,
                        ..
                    } => {
                        breaks.borrow_mut().push(codec::from_bytes(&body).unwrap());
                        let now = s.now;
                        s.endpoint(node).reply(now, id, 0, Bytes::new()).unwrap();
                    }
                    _ => {}
                }
            }
            result.is_some()
        });
        assert!(done, "call never finished (seed {})", self.sim.seed);
        result.unwrap().expect("transport failure")
    }

    /// Runs the network a while, answering breaks at `clients`.
    pub fn settle(&mut self, clients: &[&Client]) {
        let end = self.sim.now + Duration::from_millis(500);
        self.sim.at(end, 0, |_, _| {});
        let list: Vec<(NodeId, Rc<RefCell<Vec<Break>>>)> =
            clients.iter().map(|c| (c.node, c.breaks.clone())).collect();
        self.sim.run_until(Duration::from_secs(2), |s| {
            for (node, breaks) in &list {
                while let Some(e) = s.nodes[*node].events.pop_front() {
                    if let Event::Request {
                        id,
                        subsystem: callback::SUBSYSTEM,
                        body,
                        ..
                    } = e
                    {
                        breaks.borrow_mut().push(codec::from_bytes(&body).unwrap());
                        let now = s.now;
                        s.endpoint(*node).reply(now, id, 0, Bytes::new()).unwrap();
                    }
                }
            }
            s.now >= end
        });
    }

    pub fn call<T: Decode>(
        &mut self,
        c: &Client,
        subsystem: u16,
        opcode: u16,
        req: &impl Encode,
    ) -> Result<T, Errno> {
        let r = self.call_raw(c, subsystem, opcode, codec::to_bytes(req), None);
        if r.code != 0 {
            return Err(Errno(r.code));
        }
        Ok(codec::from_bytes(&r.body).expect("reply decodes"))
    }

    pub fn vice<T: Decode>(
        &mut self,
        c: &Client,
        opcode: u16,
        req: &impl Encode,
    ) -> Result<T, Errno> {
        self.call(c, vice::SUBSYSTEM, opcode, req)
    }

    /// A direct (connected) update: the statuses it answers.
    pub fn mutate(&mut self, c: &mut Client, op: Op) -> Result<Vec<Status>, Errno> {
        assert!(!matches!(op, Op::Store(_)), "use store()");
        let opcode = vice::direct_opcode(&op);
        let rec = c.record(op);
        self.vice::<MutateReply>(c, opcode, &rec)
            .map(|r| r.statuses)
    }

    pub fn root_fid(&self) -> Fid {
        Fid::root(self.root)
    }

    pub fn get_attr(&mut self, c: &Client, fid: Fid) -> Result<Status, Errno> {
        self.vice(c, op::GET_ATTR, &vice::GetAttr { fid })
    }

    pub fn create(&mut self, c: &mut Client, dir: Fid, name: &str) -> Result<Status, Errno> {
        let fid = c.local_fid(dir.volume);
        self.mutate(
            c,
            Op::Create(cml::Create {
                dir,
                name: name.into(),
                fid,
                mode: 0o644,
                group: 0,
            }),
        )
        .map(|s| s[0].clone())
    }

    pub fn mkdir(&mut self, c: &mut Client, dir: Fid, name: &str) -> Result<Status, Errno> {
        let fid = c.local_fid(dir.volume);
        self.mutate(
            c,
            Op::MakeDir(cml::MakeDir {
                dir,
                name: name.into(),
                fid,
                mode: 0o755,
                group: 0,
            }),
        )
        .map(|s| s[0].clone())
    }

    pub fn remove(
        &mut self,
        c: &mut Client,
        dir: Fid,
        name: &str,
        fid: Fid,
    ) -> Result<Vec<Status>, Errno> {
        let seen = self
            .svc()
            .shard
            .meta
            .vnode(fid)
            .map(|v| v.vv.store_id)
            .unwrap_or_default();
        self.mutate(
            c,
            Op::Remove(cml::Remove {
                dir,
                name: name.into(),
                fid,
                seen,
            }),
        )
    }

    /// Stores `data` as `fid`'s new content (seen: its current store id).
    pub fn store(&mut self, c: &mut Client, fid: Fid, data: &[u8]) -> Result<Status, Errno> {
        let seen = self
            .svc()
            .shard
            .meta
            .vnode(fid)
            .map(|v| v.vv.store_id)
            .unwrap_or_default();
        self.store_seen(c, fid, seen, data)
    }

    pub fn store_seen(
        &mut self,
        c: &mut Client,
        fid: Fid,
        seen: StoreId,
        data: &[u8],
    ) -> Result<Status, Errno> {
        let rec = c.record(Op::Store(cml::Store {
            fid,
            seen,
            length: data.len() as u64,
            content_hash: *blake3::hash(data).as_bytes(),
        }));
        let side = SideEffect::Send(Source::Memory(Bytes::copy_from_slice(data)));
        let r = self.call_raw(
            c,
            vice::SUBSYSTEM,
            op::STORE,
            codec::to_bytes(&rec),
            Some(side),
        );
        if r.code != 0 {
            return Err(Errno(r.code));
        }
        let m: MutateReply = codec::from_bytes(&r.body).unwrap();
        Ok(m.statuses[0].clone())
    }

    /// A file's or symlink's bytes, or a directory's encoded entries.
    pub fn fetch(&mut self, c: &Client, fid: Fid) -> Result<(Status, Vec<u8>), Errno> {
        let body = codec::to_bytes(&vice::Fetch { fid, offset: 0 });
        let side = SideEffect::Receive(Sink::memory(1 << 30));
        let r = self.call_raw(c, vice::SUBSYSTEM, op::FETCH, body, Some(side));
        if r.code != 0 {
            return Err(Errno(r.code));
        }
        let data = r.sink.map(|s| s.into_bytes()).unwrap_or_default();
        Ok((codec::from_bytes(&r.body).unwrap(), data))
    }

    /// A directory's ACL (it comes by SFTP).
    pub fn get_acl(&mut self, c: &Client, dir: Fid) -> Result<coda_proto::acl::Acl, Errno> {
        let body = codec::to_bytes(&vice::GetAttr { fid: dir });
        let side = SideEffect::Receive(Sink::memory(16 << 20));
        let r = self.call_raw(c, vice::SUBSYSTEM, op::GET_ACL, body, Some(side));
        if r.code != 0 {
            return Err(Errno(r.code));
        }
        Ok(codec::from_bytes(&r.sink.unwrap().into_bytes()).unwrap())
    }

    pub fn list(&mut self, c: &Client, dir: Fid) -> Result<Vec<DirEntry>, Errno> {
        let (_, bytes) = self.fetch(c, dir)?;
        Ok(codec::from_bytes(&bytes).unwrap())
    }

    pub fn lookup(&mut self, c: &Client, dir: Fid, name: &str) -> Option<Fid> {
        self.list(c, dir)
            .ok()?
            .into_iter()
            .find(|e| e.name == name)
            .map(|e| e.fid)
    }

    pub fn root_info(&mut self, c: &Client) -> VolumeInfo {
        let r = self.call_raw(c, vice::SUBSYSTEM, op::GET_ROOT_VOLUME, Bytes::new(), None);
        assert_eq!(r.code, 0);
        codec::from_bytes(&r.body).unwrap()
    }

    /// The server's id for `c`'s connection (the one the service's
    /// callback bookkeeping keys promises by): read off the header of a
    /// harmless request `c` sends.
    pub fn server_conn(&mut self, c: &Client) -> ConnId {
        use coda_rpc2::packet::{Header, Kind};
        let seen: Rc<RefCell<Option<u32>>> = Default::default();
        let found = seen.clone();
        let (client, server) = (c.node, self.server);
        self.sim.set_filter(move |from, to, data| {
            if (from, to) == (client, server) {
                if let Ok((Kind::Request, conn)) = Header::peek(data) {
                    *found.borrow_mut() = Some(conn);
                }
            }
            true
        });
        let r = self.call_raw(c, vice::SUBSYSTEM, op::GET_STATISTICS, Bytes::new(), None);
        assert_eq!(r.code, 0);
        self.sim.set_filter(|_, _, _| true);
        let conn = ConnId(seen.borrow().expect("saw the request"));
        assert_eq!(
            self.sim.endpoint(self.server).peer(conn),
            Some(self.sim.addr(c.node)),
            "the server knows the connection by that id"
        );
        conn
    }

    /// The current store id of `fid` on the server (what a client that
    /// just fetched it would hold).
    pub fn seen(&self, fid: Fid) -> StoreId {
        self.svc()
            .shard
            .meta
            .vnode(fid)
            .map(|v| v.vv.store_id)
            .unwrap_or_default()
    }

    /// The volume's current stamp, as GetVolumeInfo answers it.
    pub fn stamp(&mut self, c: &Client, volume: VolumeId) -> u64 {
        let info: VolumeInfo = self
            .vice(c, op::GET_VOLUME_INFO, &vice::VolumeRef::Id(volume))
            .unwrap();
        info.stamp
    }

    /// Runs the consistency checker over the server's shard.
    pub fn check(&self) {
        let svc = self.svc();
        let problems = coda_vice::fsck::check_shard(&svc.shard);
        assert!(problems.is_empty(), "consistency check: {problems:#?}");
    }
}

/// A shard with one volume `name`, outside any server (for tests that
/// drive [`coda_vice::fileops::Apply`] directly).
pub fn standalone_volume(
    dir: &std::path::Path,
    opts: &ShardOptions,
    name: &str,
) -> (Shard, VolumeId) {
    let (shard, _) = Shard::open(dir, 0, CELL_ID, opts).unwrap();
    let pdb = Pdb::open(&dir.join("pdb.toml")).unwrap();
    let cell = Arc::new(Cell::new(
        CellKey::from_bytes(CELL),
        CELL_ID,
        1,
        "t".into(),
        pdb,
    ));
    let mut svc = Service::new(cell, shard);
    let id = svc.cell.new_volume_id();
    svc.new_volume(id, name, ADMIN_ID).unwrap();
    svc.shard.flush().unwrap();
    (svc.into_shard(), id)
}

/// Reintegrates `records` into the root volume as one batch.
pub fn reintegrate(
    w: &mut World,
    c: &Client,
    batch: StoreId,
    records: Vec<CmlRecord>,
) -> Result<vice::ReintegrateReply, Errno> {
    let volume = w.root;
    w.vice(
        c,
        op::REINTEGRATE,
        &vice::Reintegrate {
            volume,
            batch,
            records,
        },
    )
}

/// Stages `data` at `offset` of a `length`-byte store: the reply code.
pub fn stage_at(
    w: &mut World,
    c: &Client,
    store_id: StoreId,
    data: &[u8],
    length: u64,
    offset: u64,
) -> u16 {
    let body = codec::to_bytes(&vice::Stage {
        store_id,
        length,
        offset,
    });
    let side = SideEffect::Send(Source::Memory(Bytes::copy_from_slice(data)));
    let r = w.call_raw(c, vice::SUBSYSTEM, op::STAGE, body, Some(side));
    if r.code == 0 {
        let got: vice::StageReply = codec::from_bytes(&r.body).unwrap();
        assert_eq!(got.received, offset + data.len() as u64);
    }
    r.code
}

/// A Create record for `name` in `dir`, with a made-up fid.
pub fn create_rec(c: &mut Client, dir: Fid, name: &str) -> (CmlRecord, Fid) {
    let fid = c.local_fid(dir.volume);
    let rec = c.record(Op::Create(cml::Create {
        dir,
        name: name.into(),
        fid,
        mode: 0o644,
        group: 0,
    }));
    (rec, fid)
}

/// An administrator, for tests that apply records without a network.
pub fn admin_caller() -> coda_vice::fileops::Caller {
    coda_vice::fileops::Caller {
        user: ADMIN_ID,
        cps: vec![
            ADMIN_ID,
            coda_proto::acl::ANY_USER,
            coda_proto::acl::ADMINISTRATORS,
        ],
        admin: true,
    }
}

/// Record number `n` of client 1.
pub fn record_n(n: u64, op: Op) -> CmlRecord {
    CmlRecord {
        store_id: StoreId { host: 1, unique: n },
        time: Timestamp { secs: 1, nanos: 0 },
        op,
    }
}

/// Creates of files named by `name` in `vol`'s root, one per number.
pub fn creates(
    vol: VolumeId,
    numbers: std::ops::Range<u64>,
    name: impl Fn(u64) -> String,
) -> Vec<CmlRecord> {
    numbers
        .map(|i| {
            let fid = Fid::new(vol, LOCAL_VNODE_BASE + i, i);
            record_n(
                i + 1,
                Op::Create(cml::Create {
                    dir: Fid::root(vol),
                    name: name(i),
                    fid,
                    mode: 0o644,
                    group: 0,
                }),
            )
        })
        .collect()
}

/// Applies `records` to `vol` as an administrator, in one transaction:
/// all of them, or (aborted) none.
pub fn apply_batch(shard: &mut Shard, vol: VolumeId, records: &[CmlRecord]) -> Result<(), Errno> {
    let caller = admin_caller();
    let exists = |_| true;
    let (containers, txn) = shard.split();
    let mut txn = txn.unwrap();
    let mut a = coda_vice::fileops::Apply::new(&mut txn, containers, &caller, vol, &exists, "sim")?;
    let applied = records
        .iter()
        .try_for_each(|r| a.op(r, &mut |_| None).map(|_| ()))
        .and_then(|()| a.finish().map(|_| ()));
    match applied {
        Ok(()) => {
            txn.commit(rvm::Durability::NoFlush).unwrap();
            Ok(())
        }
        Err(e) => {
            txn.abort().unwrap();
            Err(e)
        }
    }
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

pub fn entries_of(list: &[DirEntry]) -> HashMap<String, Fid> {
    list.iter().map(|e| (e.name.clone(), e.fid)).collect()
}
