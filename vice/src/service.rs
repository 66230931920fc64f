//! One shard's RPC service, sans I/O: requests in, [`Action`]s out. The
//! glommio server and the simulated-network tests drive the same code.
//!
//! Subsystems: Vice (file service), auth (tokens for passwords) and
//! volutil (administration; encrypted administrator connections only).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use coda_proto::acl::{Acl, PrincipalId, Rights};
use coda_proto::auth::{self, ClearToken, GetSalt, GetToken};
use coda_proto::callback;
use coda_proto::cml::{CmlRecord, Op};
use coda_proto::fid::{Fid, StoreId, VolumeId, ROOT_VNODE};
use coda_proto::status::{Timestamp, VnodeKind};
use coda_proto::vice::{
    self, op, AllocFids, Applied, Conflict, DirEntry, Fetch, FidRange, GetAttr, LookupPrincipals,
    MutateReply, NewConnect, NewConnectReply, Principals, Reintegrate, ReintegrateReply, Stage,
    StageReply, Statistics, ValidateAttrs, ValidateAttrsReply, VolumeInfo, VolumeKind, VolumeRef,
};
use coda_proto::volutil::{
    self, CreateVolume, Group, GroupAdd, GroupAddMember, NameVolume, User, UserAdd,
};
use coda_proto::vv::VersionVector;
use coda_proto::Errno;
use coda_rpc2::codec::{self, Decode, Encode};
use coda_rpc2::{ConnId, Identity, IncomingId, Level, SftpOutcome, Sink, Source, Token};
use rvm::{CommitId, Durability};

use crate::callback::Callbacks;
use crate::cell::{Cell, Location, ROOT_VOLUME_NAME};
use crate::fileops::{self, Apply, Caller, NewData};
use crate::shard::Shard;
use crate::vnode::{
    AppliedRecord, Grant, Vnode, VolumeHeader, EMPTY_HASH, GRANTS_MAX, GRANTS_PER_USER,
    IN_VNODE_MAX, NO_CONTAINER,
};

/// Largest Reintegrate batch, encoded, sent as a side effect.
pub const REINTEGRATE_BYTES_MAX: u64 = 256 << 20;

/// Most fids one AllocFids call hands out.
pub const ALLOC_FIDS_MAX: u64 = 1 << 20;

/// What the driver must do for the service.
#[derive(Debug)]
pub enum Action {
    /// Answer a call, once commit `after` (if any) is durable.
    Reply {
        id: IncomingId,
        code: u16,
        body: Bytes,
        after: Option<CommitId>,
    },
    /// Send a fetch's data; then call [`Service::sftp_done`].
    Push {
        id: IncomingId,
        source: Source,
        offset: u64,
    },
    /// Pull a store's data; then call [`Service::sftp_done`].
    Pull {
        id: IncomingId,
        sink: Sink,
        offset: u64,
    },
    /// Call the client on `conn` with a callback break; if it fails, call
    /// [`Service::break_failed`].
    Break { conn: ConnId, body: Bytes },
    /// Run `job` on shard `shard` ([`Service::run_job`]) and answer `id`
    /// with its result.
    Delegate {
        id: IncomingId,
        shard: u32,
        job: Job,
    },
    /// Close a connection, so its client's next call fails and it
    /// revalidates what it cached instead of trusting lost promises.
    Close { conn: ConnId },
    /// Bring the replicas of `volume` together (`crate::resolve`), in the
    /// background.
    Resolve { volume: VolumeId },
    /// Work on a volume's replicas on their servers (`crate::update`);
    /// its answer answers `id`.
    Cell {
        id: IncomingId,
        job: crate::update::CellJob,
    },
    /// Hash these containers and make their bytes durable (a driver syncs
    /// the containers of many calls together, and hashes large ones off
    /// the shard's thread), then call [`Service::synced`] with the hashes.
    Sync {
        containers: Vec<u64>,
        then: Box<Then>,
    },
}

/// What waits for a [`Action::Sync`]: opaque to drivers.
#[derive(Debug)]
pub struct Then(pub(crate) Waiting);

impl Then {
    /// Whether what waits needs the containers' hashes (a restore checked
    /// them as the data came).
    pub fn wants_hashes(&self) -> bool {
        !matches!(self.0, Waiting::Restore { .. } | Waiting::Install { .. })
    }
}

#[derive(Debug)]
pub(crate) enum Waiting {
    /// A resolution's install: the contents it carried written, checked.
    Install {
        id: IncomingId,
        install: Box<coda_proto::res::Install>,
        written: HashMap<Fid, u64>,
    },
    Store {
        id: IncomingId,
        record: CmlRecord,
        data: Box<NewData>,
    },
    Stage {
        id: IncomingId,
        store_id: StoreId,
        received: u64,
        generation: u64,
    },
    /// A whole dump received: its containers synced, it is applied.
    Restore {
        id: IncomingId,
        session: Box<crate::restore::RestoreSession>,
    },
}

/// What [`Service::run_job`] answers.
#[derive(Debug)]
pub struct JobDone {
    pub code: u16,
    pub body: Bytes,
    /// Answer only once this commit is durable.
    pub after: Option<CommitId>,
}

/// Administration that must run on the shard owning a volume.
#[derive(Debug, Clone)]
pub enum Job {
    CreateVolume {
        id: VolumeId,
        name: String,
        owner: PrincipalId,
    },
    Info(VolumeId),
    SetLocked(VolumeId, bool),
    RemoveVolume(VolumeId),
    /// A read-only clone of a volume, as `id` named `name` (reserved).
    Clone {
        src: VolumeId,
        id: VolumeId,
        name: String,
    },
    /// Make or remake a volume's `NAME.backup`.
    Backup(VolumeId),
    DumpEstimate(VolumeId),
    /// This server's replica of a replicated volume (nothing if it
    /// exists); barren if the volume may hold contents elsewhere.
    MakeReplica {
        entry: coda_proto::update::VolumeEntry,
        barren: bool,
    },
    /// The shard's volumes, for the cell's directory.
    Entries,
}

struct Client {
    caller: Caller,
    generation: u64,
    identity: Identity,
}

/// A transfer under way.
pub(crate) enum Transfer {
    /// A fetch: the reply to send once the data went.
    Fetch(Bytes),
    /// A store's bytes arriving: into a new container, or (small ones,
    /// `None`) into memory, to be kept in the vnode.
    Store {
        record: CmlRecord,
        container: Option<(u64, std::fs::File)>,
    },
    Stage {
        store_id: StoreId,
        offset: u64,
    },
    /// A Reintegrate batch too large for a call body.
    Batch,
    /// A resolution install too large for a call body.
    Install,
    /// The manifest of an incremental dump's base.
    Manifest(coda_proto::volutil::DumpBegin),
    /// A piece of a dump being restored, for session `0`.
    Restore(u64),
}

/// File data received ahead of the Reintegrate that uses it.
struct Staged {
    container: u64,
    length: u64,
    received: u64,
    /// Set once the whole data is synced: only then may a batch use it.
    hash: Option<[u8; 32]>,
    /// Bumped when a stage writes into it again, so a sync of older bytes
    /// does not vouch for newer ones.
    generation: u64,
    at: std::time::Instant,
}

/// How long staged data waits for its batch (a client that went away
/// leaves no more than this behind).
pub const STAGED_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

#[derive(Default)]
struct Counters {
    calls: BTreeMap<u16, u64>,
    bytes_in: u64,
    bytes_out: u64,
}

pub struct Service {
    pub cell: Arc<Cell>,
    pub shard: Shard,
    pub callbacks: Callbacks,
    clients: HashMap<ConnId, Client>,
    /// Each connection's client (host, incarnation), as NewConnect said.
    hosts: HashMap<ConnId, (u64, u64)>,
    pub(crate) transfers: HashMap<IncomingId, Transfer>,
    staged: HashMap<StoreId, Staged>,
    /// Dumps being read out and restores being received, by session id.
    pub(crate) dumps: HashMap<u64, crate::dump::DumpSession>,
    pub(crate) restores: HashMap<u64, crate::restore::RestoreSession>,
    /// [`STAGED_TTL`], or shorter in tests.
    pub staged_ttl: std::time::Duration,
    counters: Counters,
    /// Updates applied here whose COP2 has not come.
    pub(crate) pending_cop2: crate::replica::PendingCop2,
}

pub(crate) type Answer = Result<Bytes, Errno>;

pub(crate) fn decode<T: Decode>(body: &[u8]) -> Result<T, Errno> {
    codec::from_bytes(body).map_err(|_| Errno::BAD_REQUEST)
}

pub(crate) fn ok<T: Encode>(value: &T) -> Answer {
    Ok(codec::to_bytes(value))
}

pub(crate) fn io_errno(e: std::io::Error) -> Errno {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        Errno::ENOSPC
    } else {
        tracing::error!("container I/O: {e}");
        Errno::EIO
    }
}

pub(crate) fn rvm_errno(e: rvm::Error) -> Errno {
    tracing::error!("RVM: {e}");
    Errno::EIO
}

impl Service {
    pub fn new(cell: Arc<Cell>, shard: Shard) -> Service {
        for v in shard.meta.volumes.values() {
            cell.register(
                v.id(),
                Location {
                    name: v.header.name.clone(),
                    shard: shard.index,
                    kind: v.header.kind,
                },
            );
        }
        Service {
            cell,
            shard,
            callbacks: Callbacks::default(),
            clients: HashMap::new(),
            hosts: HashMap::new(),
            transfers: HashMap::new(),
            staged: HashMap::new(),
            dumps: HashMap::new(),
            restores: HashMap::new(),
            staged_ttl: STAGED_TTL,
            counters: Counters::default(),
            pending_cop2: Default::default(),
        }
    }

    /// The shard, for a caller that is done serving (tools and tests).
    pub fn into_shard(self) -> Shard {
        self.shard
    }

    pub fn accepted(&mut self, conn: ConnId, identity: Identity) {
        let client = self.client_for(identity);
        self.clients.insert(conn, client);
    }

    fn client_for(&self, identity: Identity) -> Client {
        let pdb = self.cell.pdb();
        let caller = match identity.user_id {
            Some(u) if u as PrincipalId == crate::replica::SERVER_ID => {
                crate::replica::server_caller()
            }
            Some(u) => {
                let user = u as PrincipalId;
                Caller {
                    user,
                    cps: pdb.cps(user),
                    admin: pdb.is_admin(user),
                }
            }
            None => Caller::anonymous(),
        };
        Client {
            caller,
            generation: pdb.generation,
            identity,
        }
    }

    /// The connection is gone: its promises go with it.
    pub fn client_lost(&mut self, conn: ConnId) {
        self.callbacks.drop_client(conn);
        self.clients.remove(&conn);
        self.hosts.remove(&conn);
    }

    fn caller(&mut self, conn: ConnId, identity: Identity) -> Caller {
        let generation = self.cell.pdb().generation;
        let fresh = self
            .clients
            .get(&conn)
            .is_some_and(|c| c.generation == generation && c.identity == identity);
        if !fresh {
            let c = self.client_for(identity);
            self.clients.insert(conn, c);
        }
        self.clients[&conn].caller.clone()
    }

    /// The caller on a connection whose bind was seen (transfers and
    /// syncs finish after their request; a connection gone since is anonymous).
    fn known_caller(&mut self, conn: ConnId) -> Caller {
        match self.clients.get(&conn).map(|c| c.identity) {
            Some(identity) => self.caller(conn, identity),
            None => Caller::anonymous(),
        }
    }

    /// Handles one call.
    pub fn request(
        &mut self,
        id: IncomingId,
        identity: Identity,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
        out: &mut Vec<Action>,
    ) {
        // Vice opcodes as they are; auth's from 200, volutil's from 300;
        // anything else counted together.
        let key = match subsystem {
            vice::SUBSYSTEM..=volutil::SUBSYSTEM if opcode < 100 => {
                (subsystem - vice::SUBSYSTEM) * 100 + opcode
            }
            _ => u16::MAX,
        };
        *self.counters.calls.entry(key).or_default() += 1;
        self.counters.bytes_in += body.len() as u64;
        let caller = self.caller(id.conn, identity);
        let answer = match subsystem {
            vice::SUBSYSTEM => self.vice(id, &caller, opcode, &body, out),
            auth::SUBSYSTEM => self.auth(opcode, &body),
            volutil::SUBSYSTEM => self.volutil(id, identity, &caller, opcode, &body, out),
            _ => Err(Errno::UNKNOWN_CALL),
        };
        match answer {
            Ok(Some((body, after))) => self.reply(id, Ok(body), after, out),
            Ok(None) => {}
            Err(e) => self.reply(id, Err(e), None, out),
        }
    }

    pub(crate) fn reply(
        &mut self,
        id: IncomingId,
        answer: Answer,
        after: Option<CommitId>,
        out: &mut Vec<Action>,
    ) {
        let (code, body) = match answer {
            Ok(b) => (0, b),
            Err(e) => (e.0, Bytes::new()),
        };
        self.counters.bytes_out += body.len() as u64;
        out.push(Action::Reply {
            id,
            code,
            body,
            after,
        });
    }

    /// A call's answer now, later (None: a transfer or delegation is under way).
    fn vice(
        &mut self,
        id: IncomingId,
        caller: &Caller,
        opcode: u16,
        body: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<Option<(Bytes, Option<CommitId>)>, Errno> {
        let now = |a: Answer| a.map(|b| Some((b, None)));
        match opcode {
            op::NEW_CONNECT => {
                let r: NewConnect = decode(body)?;
                // A client that restarted will not answer for its earlier
                // self: breaking that one's promises would only wait out
                // a timeout while the writer waits.
                let gone: Vec<ConnId> = self
                    .hosts
                    .iter()
                    .filter(|(_, &(h, i))| h == r.host && i != r.incarnation)
                    .map(|(&c, _)| c)
                    .collect();
                for conn in gone {
                    self.break_failed(conn, out);
                }
                self.hosts.insert(id.conn, (r.host, r.incarnation));
                now(ok(&NewConnectReply {
                    server_time: Timestamp::now(),
                }))
            }
            op::GET_ROOT_VOLUME => {
                let root = self.cell.vldb().by_name(ROOT_VOLUME_NAME);
                match root {
                    Some(root) => self.on_volume_shard(id, root, Job::Info(root), out),
                    None => {
                        let name = VolumeRef::Name(ROOT_VOLUME_NAME.into());
                        now(ok(&self.elsewhere(&name).ok_or(Errno::NO_SUCH_VOLUME)?))
                    }
                }
            }
            op::GET_VOLUME_INFO => {
                let r: VolumeRef = decode(body)?;
                match self.resolve(&r) {
                    Ok(vol) => self.on_volume_shard(id, vol, Job::Info(vol), out),
                    Err(e) => now(ok(&self.elsewhere(&r).ok_or(e)?)),
                }
            }
            op::GET_ATTR => {
                let r: GetAttr = decode(body)?;
                now(self.get_attr(id.conn, caller, r.fid))
            }
            op::VALIDATE_ATTRS => {
                let r: ValidateAttrs = decode(body)?;
                now(ok(&self.validate(id.conn, caller, &r)))
            }
            op::FETCH => {
                let r: Fetch = decode(body)?;
                let (source, status) = self.fetch(id.conn, caller, r.fid)?;
                if r.offset > source.len() {
                    return Err(Errno::EINVAL);
                }
                self.transfers.insert(id, Transfer::Fetch(status));
                out.push(Action::Push {
                    id,
                    source,
                    offset: r.offset,
                });
                Ok(None)
            }
            op::READ_LINK => {
                let r: GetAttr = decode(body)?;
                let (vol, v) = self.object(r.fid, caller)?;
                if v.kind != VnodeKind::Symlink {
                    return Err(Errno::EINVAL);
                }
                fileops::may_read(vol, v, caller)?;
                now(ok(&v.target))
            }
            op::GET_ACL => {
                let r: GetAttr = decode(body)?;
                let (_, v) = self.object(r.fid, caller)?;
                if !v.is_dir() {
                    return Err(Errno::ENOTDIR);
                }
                if !fileops::dir_rights(v, caller).contains(Rights::LOOKUP) {
                    return Err(Errno::EACCES);
                }
                // By SFTP: an ACL of hundreds of entries outgrows a datagram.
                let acl = codec::to_bytes(v.acl.as_ref().unwrap_or(&Acl::default()));
                self.push_answer(id, acl, out);
                Ok(None)
            }
            op::ALLOC_FIDS => {
                let r: AllocFids = decode(body)?;
                self.alloc_fids(caller, &r).map(|(b, c)| Some((b, Some(c))))
            }
            op::STAGE => {
                let r: Stage = decode(body)?;
                // Staged data waits for a user's Reintegrate.
                if caller.user <= 0 {
                    return Err(Errno::EACCES);
                }
                self.stage(id, &r, out)?;
                Ok(None)
            }
            op::STORE => {
                let record: CmlRecord = decode(body)?;
                let Op::Store(s) = &record.op else {
                    return Err(Errno::BAD_REQUEST);
                };
                // Refused before any data moves (checked again when it has).
                let (vol, v) = self.object(s.fid, caller)?;
                match v.kind {
                    VnodeKind::File => fileops::may_write(vol, v, caller)?,
                    VnodeKind::Directory => return Err(Errno::EISDIR),
                    VnodeKind::Symlink => return Err(Errno::EINVAL),
                }
                let (container, sink) = match s.length <= IN_VNODE_MAX {
                    true => (None, Sink::memory(s.length)),
                    false => {
                        let (c, file) = self.shard.containers.create().map_err(io_errno)?;
                        let sink = Sink::File(file.try_clone().map_err(io_errno)?);
                        (Some((c, file)), sink)
                    }
                };
                self.transfers
                    .insert(id, Transfer::Store { record, container });
                out.push(Action::Pull {
                    id,
                    sink,
                    offset: 0,
                });
                Ok(None)
            }
            op::SET_ATTR..=op::SET_ACL => {
                let record: CmlRecord = decode(body)?;
                if matches!(record.op, Op::Store(_)) || vice::direct_opcode(&record.op) != opcode {
                    return Err(Errno::BAD_REQUEST);
                }
                let vol = record.op.volume();
                let (reply, commit, changed) = self
                    .mutate(id.conn, caller, vol, &[record], &mut |_| None)
                    .map_err(|c| Errno(c.code))?;
                self.breaks(Some(id.conn), vol, &changed, out);
                Ok(Some((reply, Some(commit))))
            }
            op::REINTEGRATE if body.is_empty() => {
                self.transfers.insert(id, Transfer::Batch);
                out.push(Action::Pull {
                    id,
                    sink: Sink::memory(REINTEGRATE_BYTES_MAX),
                    offset: 0,
                });
                Ok(None)
            }
            op::REINTEGRATE => {
                let r: Reintegrate = decode(body)?;
                let (reply, commit) = self.reintegrate(id.conn, caller, &r, out)?;
                Ok(Some((reply, commit)))
            }
            op::REPAIR => {
                let r: coda_proto::res::Repair = decode(body)?;
                self.repair(id.conn, caller, &r, out).map(Some)
            }
            op::GET_STATISTICS => now(ok(&self.statistics())),
            op::COP2 => {
                let r: coda_proto::res::Cop2 = decode(body)?;
                if caller.user <= 0 {
                    return Err(Errno::EACCES);
                }
                self.cop2(caller, &r).map(Some)
            }
            op::WITH_COP2 => {
                let r: coda_proto::res::WithCop2 = decode(body)?;
                if r.opcode == op::WITH_COP2 {
                    return Err(Errno::BAD_REQUEST);
                }
                // The COP2 stands on its own: the call it came with may
                // fail, and a COP2 that fails is made up by resolution.
                if caller.user > 0 {
                    if let Err(e) = self.cop2(caller, &r.cop2) {
                        tracing::debug!("piggy-backed COP2 of {:#x}: {e}", r.cop2.volume);
                    }
                }
                self.vice(id, caller, r.opcode, &r.body, out)
            }
            op::LIST_INCONSISTENT => {
                let vol: VolumeId = decode(body)?;
                if caller.user <= 0 {
                    return Err(Errno::EACCES);
                }
                let list = self.inconsistent(caller, vol)?;
                self.push_answer(id, codec::to_bytes(&list), out);
                Ok(None)
            }
            op::RESOLVE => {
                let r: coda_proto::res::Resolve = decode(body)?;
                // Each costs a read of every replica: users only.
                if caller.user <= 0 {
                    return Err(Errno::EACCES);
                }
                self.local_volume(r.volume)?;
                out.push(Action::Resolve { volume: r.volume });
                now(Ok(Bytes::new()))
            }
            op::RES_SUMMARY..=op::MAKE_REPLICA | op::REMOVE_REPLICA if !caller.is_server() => {
                Err(Errno::EACCES)
            }
            op::UPDATE => {
                let r: coda_proto::update::UpdateRequest = decode(body)?;
                if !self.cell.is_scm() {
                    return Err(Errno::NOT_SCM);
                }
                self.cell.directory_mut().merge(&r.server, r.volumes);
                let pdb = self.cell.pdb().text().map_err(|e| {
                    tracing::error!("{e}");
                    Errno::EIO
                })?;
                let dir = self.cell.directory();
                let state = coda_proto::update::CellState {
                    pdb,
                    volumes: dir.all(),
                    removed: dir.removed(),
                };
                now(ok(&state))
            }
            op::MAKE_REPLICA => {
                let e: coda_proto::update::VolumeEntry = decode(body)?;
                if !e.replicas.contains(&self.cell.name) {
                    return Err(Errno::EINVAL);
                }
                let shard = crate::update::shard_of(e.id, self.cell.shards);
                // Asked by the SCM as it makes the volume: empty everywhere.
                let job = Job::MakeReplica {
                    entry: e,
                    barren: false,
                };
                self.on_shard(id, shard, job, out)
            }
            op::REMOVE_REPLICA => {
                let vol: VolumeId = decode(body)?;
                let shard = match self.cell.vldb().get(vol) {
                    Some(l) if l.kind != VolumeKind::Replicated => return Err(Errno::EINVAL),
                    Some(l) => Some(l.shard),
                    None => None,
                };
                // Not brought back by this server's update thread before
                // it hears of the removal from the SCM.
                self.cell.directory_mut().forget(vol);
                match shard {
                    Some(shard) => self.on_shard(id, shard, Job::RemoveVolume(vol), out),
                    None => now(Ok(Bytes::new())),
                }
            }
            op::RES_SUMMARY => {
                let r: coda_proto::res::SummaryRequest = decode(body)?;
                let list = self.summary(r.volume)?;
                self.push_answer(id, codec::to_bytes(&list), out);
                Ok(None)
            }
            op::RES_STATE => {
                let r: coda_proto::res::StateRequest = decode(body)?;
                let states = self.object_states(&r)?;
                self.push_answer(id, codec::to_bytes(&states), out);
                Ok(None)
            }
            op::RES_INSTALL if body.is_empty() => {
                self.transfers.insert(id, Transfer::Install);
                out.push(Action::Pull {
                    id,
                    sink: Sink::memory(REINTEGRATE_BYTES_MAX),
                    offset: 0,
                });
                Ok(None)
            }
            op::RES_INSTALL => {
                let r: coda_proto::res::Install = decode(body)?;
                self.install_arrived(id, r, out)
            }
            op::LOOKUP_PRINCIPALS => {
                let r: LookupPrincipals = decode(body)?;
                let pdb = self.cell.pdb();
                now(ok(&Principals {
                    ids: r.names.iter().map(|n| pdb.id_of(n)).collect(),
                    names: r
                        .ids
                        .iter()
                        .map(|&i| pdb.name_of(i).map(str::to_string))
                        .collect(),
                }))
            }
            _ => Err(Errno::UNKNOWN_CALL),
        }
    }

    pub(crate) fn resolve(&self, r: &VolumeRef) -> Result<VolumeId, Errno> {
        match r {
            VolumeRef::Id(id) => self
                .cell
                .vldb()
                .get(*id)
                .map(|_| *id)
                .ok_or(Errno::NO_SUCH_VOLUME),
            VolumeRef::Name(n) => {
                let vldb = self.cell.vldb();
                vldb.by_name(n)
                    .or_else(|| {
                        n.parse::<VolumeId>()
                            .ok()
                            .filter(|id| vldb.get(*id).is_some())
                    })
                    .or_else(|| {
                        u64::from_str_radix(n.trim_start_matches("0x"), 16)
                            .ok()
                            .filter(|id| vldb.get(*id).is_some())
                    })
                    .ok_or(Errno::NO_SUCH_VOLUME)
            }
        }
    }

    /// Answers a call with `data` as its side effect (the caller offered a sink).
    fn push_answer(&mut self, id: IncomingId, data: Bytes, out: &mut Vec<Action>) {
        self.transfers.insert(id, Transfer::Fetch(Bytes::new()));
        out.push(Action::Push {
            id,
            source: Source::Memory(data),
            offset: 0,
        });
    }

    /// Staged data, once whole and synced.
    pub(crate) fn staged_data(&self, sid: StoreId) -> Option<NewData> {
        let s = self.staged.get(&sid)?;
        Some(NewData {
            container: s.container,
            inline: Bytes::new(),
            length: s.length,
            hash: s.hash?,
        })
    }

    /// Staged data now used by a vnode: no longer staged.
    pub(crate) fn take_staged(&mut self, sid: StoreId) {
        self.staged.remove(&sid);
    }

    /// Runs `job` on the shard that serves volume `vol`.
    pub(crate) fn on_volume_shard(
        &mut self,
        id: IncomingId,
        vol: VolumeId,
        job: Job,
        out: &mut Vec<Action>,
    ) -> Result<Option<(Bytes, Option<CommitId>)>, Errno> {
        let shard = self
            .cell
            .vldb()
            .get(vol)
            .ok_or(Errno::NO_SUCH_VOLUME)?
            .shard;
        self.on_shard(id, shard, job, out)
    }

    /// Runs `job` here if this is `shard`, else hands it to the driver.
    pub(crate) fn on_shard(
        &mut self,
        id: IncomingId,
        shard: u32,
        job: Job,
        out: &mut Vec<Action>,
    ) -> Result<Option<(Bytes, Option<CommitId>)>, Errno> {
        if shard != self.shard.index {
            out.push(Action::Delegate { id, shard, job });
            return Ok(None);
        }
        match self.run_job(job, out) {
            JobDone {
                code: 0,
                body,
                after,
            } => Ok(Some((body, after))),
            JobDone { code, .. } => Err(Errno(code)),
        }
    }

    pub(crate) fn local_volume(&self, vol: VolumeId) -> Result<&crate::volume::Volume, Errno> {
        match self.shard.meta.volume(vol) {
            // Half built or half removed: not there for anyone.
            Some(v) if v.header.transient => Err(Errno::NO_SUCH_VOLUME),
            Some(v) => Ok(v),
            None if self.cell.vldb().get(vol).is_some() => Err(Errno::WRONG_SHARD),
            None => Err(Errno::NO_SUCH_VOLUME),
        }
    }

    /// An object as served to `caller`: a barren replica serves servers
    /// (resolution) only.
    fn object(&self, fid: Fid, caller: &Caller) -> Result<(&crate::volume::Volume, &Vnode), Errno> {
        let vol = self.local_volume(fid.volume)?;
        if !caller.is_server() && vol.is_barren() {
            return Err(Errno::BARREN);
        }
        let v = vol.vnode(fid).ok_or(Errno::ENOENT)?;
        Ok((vol, v))
    }

    fn get_attr(&mut self, conn: ConnId, caller: &Caller, fid: Fid) -> Answer {
        let (vol, v) = self.object(fid, caller)?;
        fileops::may_stat(vol, v, caller)?;
        let status = fileops::status(vol, v, caller, true);
        self.callbacks.promise(conn, fid);
        ok(&status)
    }

    fn validate(&mut self, conn: ConnId, caller: &Caller, r: &ValidateAttrs) -> ValidateAttrsReply {
        let mut reply = ValidateAttrsReply {
            volumes: Vec::with_capacity(r.volumes.len()),
            fids: Vec::with_capacity(r.fids.len()),
        };
        for &(vol, stamp) in &r.volumes {
            let valid = self
                .shard
                .meta
                .volume(vol)
                .is_some_and(|v| v.header.stamp == stamp && !v.is_barren());
            if valid {
                self.callbacks.promise_volume(conn, vol);
            }
            reply.volumes.push(valid);
        }
        for &(fid, seen) in &r.fids {
            // An object marked inconsistent keeps its store id: the client
            // must fetch its status to see the mark.
            let valid = self.object(fid, caller).is_ok_and(|(vol, v)| {
                v.vv.store_id == seen
                    && !v.vv.is_inconsistent()
                    && fileops::may_stat(vol, v, caller).is_ok()
            });
            if valid {
                self.callbacks.promise(conn, fid);
            }
            reply.fids.push(valid);
        }
        reply
    }

    fn fetch(&mut self, conn: ConnId, caller: &Caller, fid: Fid) -> Result<(Source, Bytes), Errno> {
        let (vol, v) = self.object(fid, caller)?;
        if !caller.is_server() {
            fileops::may_read(vol, v, caller)?;
        }
        let source = match v.kind {
            VnodeKind::File if v.container == NO_CONTAINER => Source::Memory(v.inline.clone()),
            VnodeKind::File => Source::File {
                file: self
                    .shard
                    .containers
                    .open_read(v.container)
                    .map_err(io_errno)?,
                len: v.length,
            },
            VnodeKind::Symlink => Source::Memory(Bytes::from(v.target.clone().into_bytes())),
            VnodeKind::Directory => {
                let entries: Vec<DirEntry> = vol
                    .listing(fid)
                    .map(|(name, fid, kind)| DirEntry {
                        name: name.to_string(),
                        fid,
                        kind,
                    })
                    .collect();
                Source::Memory(codec::to_bytes(&entries))
            }
        };
        let status = codec::to_bytes(&fileops::status(vol, v, caller, true));
        self.callbacks.promise(conn, fid);
        Ok((source, status))
    }

    fn alloc_fids(&mut self, caller: &Caller, r: &AllocFids) -> Result<(Bytes, CommitId), Errno> {
        if r.count == 0 || r.count > ALLOC_FIDS_MAX {
            return Err(Errno::EINVAL);
        }
        let vol = self.local_volume(r.volume)?;
        let root = vol.vnode(vol.root()).ok_or(Errno::ENOENT)?;
        if !fileops::dir_rights(root, caller).contains(Rights::LOOKUP) && caller.user == 0 {
            return Err(Errno::EACCES);
        }
        let mut h = vol.header.clone();
        // Each replica hands out the numbers of its own class.
        let (stride, class) = (vol.replicas() as u64, vol.slot_of(&self.cell.name) as u64);
        let first = h.next_vnode.max(h.next_unique);
        let first = first + (class + stride - first % stride) % stride;
        let next = r
            .count
            .checked_mul(stride)
            .and_then(|n| n.checked_add(first))
            .filter(|&n| n < coda_proto::fid::DERIVED_VNODE_BASE)
            .ok_or(Errno::ENOSPC)?;
        let range = FidRange {
            volume: r.volume,
            vnode: first,
            unique: first,
            count: r.count,
            stride,
        };
        h.next_vnode = next;
        h.next_unique = next;
        h.grants.push(Grant {
            user: caller.user,
            vnode: range.vnode,
            unique: range.unique,
            count: r.count,
        });
        let user = caller.user;
        if h.grants.iter().filter(|g| g.user == user).count() > GRANTS_PER_USER {
            let oldest = h
                .grants
                .iter()
                .position(|g| g.user == user)
                .expect("counted");
            h.grants.remove(oldest);
        }
        if h.grants.len() > GRANTS_MAX {
            h.grants.remove(0);
        }
        let ((), commit) = self
            .shard
            .transact(Durability::NoFlush, |txn| txn.put_header(h))
            .map_err(rvm_errno)?;
        Ok((codec::to_bytes(&range), commit))
    }

    fn stage(&mut self, id: IncomingId, r: &Stage, out: &mut Vec<Action>) -> Result<(), Errno> {
        let (ttl, containers) = (self.staged_ttl, &self.shard.containers);
        self.staged.retain(|_, s| {
            let fresh = s.at.elapsed() < ttl;
            if !fresh {
                containers.remove(s.container);
            }
            fresh
        });
        let resume = self
            .staged
            .get(&r.store_id)
            .is_some_and(|s| s.length == r.length && r.offset <= s.received);
        if resume {
            // The bytes may change again: hash and sync them again when whole.
            let s = self.staged.get_mut(&r.store_id).expect("found above");
            s.hash = None;
            s.generation += 1;
        } else {
            if r.offset != 0 {
                return Err(Errno::EINVAL);
            }
            if let Some(old) = self.staged.remove(&r.store_id) {
                self.shard.containers.remove(old.container);
            }
            let (container, _) = self.shard.containers.create().map_err(io_errno)?;
            self.staged.insert(
                r.store_id,
                Staged {
                    container,
                    length: r.length,
                    received: 0,
                    hash: None,
                    generation: 0,
                    at: std::time::Instant::now(),
                },
            );
        }
        let s = &self.staged[&r.store_id];
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(self.shard.containers.path(s.container))
            .map_err(io_errno)?;
        self.transfers.insert(
            id,
            Transfer::Stage {
                store_id: r.store_id,
                offset: r.offset,
            },
        );
        out.push(Action::Pull {
            id,
            sink: Sink::File(file),
            offset: r.offset,
        });
        Ok(())
    }

    /// A transfer ended.
    pub fn sftp_done(
        &mut self,
        id: IncomingId,
        result: Result<SftpOutcome, coda_rpc2::Error>,
        out: &mut Vec<Action>,
    ) {
        let Some(t) = self.transfers.remove(&id) else {
            return;
        };
        let (result, sink) = match result {
            Ok(o) => (Ok(o.bytes), o.sink),
            Err(e) => (Err(e), None),
        };
        match t {
            Transfer::Fetch(status) => {
                let answer = result.map(|_| status).map_err(|_| Errno::EIO);
                self.reply(id, answer, None, out);
            }
            Transfer::Store { record, container } => {
                match (
                    check_store(&record, container.as_ref(), result, sink),
                    container,
                ) {
                    // In the vnode: only the transaction makes it durable.
                    (Ok(data), None) => self.store(id, &record, data, out),
                    (Ok(data), Some((c, _))) => out.push(Action::Sync {
                        containers: vec![c],
                        then: Box::new(Then(Waiting::Store {
                            id,
                            record,
                            data: Box::new(data),
                        })),
                    }),
                    (Err(e), container) => {
                        if let Some((c, _)) = container {
                            self.shard.containers.remove(c);
                        }
                        self.reply(id, Err(e), None, out);
                    }
                }
            }
            Transfer::Stage { store_id, offset } => {
                match self.finish_stage(store_id, offset, result) {
                    Ok((received, Some((container, generation)))) => out.push(Action::Sync {
                        containers: vec![container],
                        then: Box::new(Then(Waiting::Stage {
                            id,
                            store_id,
                            received,
                            generation,
                        })),
                    }),
                    Ok((received, None)) => self.reply(id, ok(&StageReply { received }), None, out),
                    Err(e) => self.reply(id, Err(e), None, out),
                }
            }
            Transfer::Manifest(begin) => self.manifest_arrived(id, begin, result, sink, out),
            Transfer::Restore(session) => self.restore_piece(id, session, result, sink, out),
            Transfer::Install => {
                let answer = match (result, sink) {
                    (Ok(_), Some(sink)) => decode::<coda_proto::res::Install>(&sink.into_bytes())
                        .and_then(|r| self.install_arrived(id, r, out)),
                    _ => Err(Errno::EIO),
                };
                match answer {
                    Ok(Some((body, after))) => self.reply(id, Ok(body), after, out),
                    Ok(None) => {}
                    Err(e) => self.reply(id, Err(e), None, out),
                }
            }
            Transfer::Batch => {
                let caller = self.known_caller(id.conn);
                let answer = match (result, sink) {
                    (Ok(_), Some(sink)) => decode::<Reintegrate>(&sink.into_bytes())
                        .and_then(|r| self.reintegrate(id.conn, &caller, &r, out)),
                    _ => Err(Errno::EIO),
                };
                match answer {
                    Ok((body, after)) => self.reply(id, Ok(body), after, out),
                    Err(e) => self.reply(id, Err(e), None, out),
                }
            }
        }
    }

    /// Containers synced: carry on with what waited for them.
    pub fn synced(
        &mut self,
        then: Box<Then>,
        result: std::io::Result<Vec<[u8; 32]>>,
        out: &mut Vec<Action>,
    ) {
        let hash = |hashes: Vec<[u8; 32]>| hashes.first().copied().expect("one container each");
        match then.0 {
            Waiting::Store {
                id,
                record,
                mut data,
            } => match result {
                Ok(hashes) => {
                    data.hash = hash(hashes);
                    self.store(id, &record, *data, out)
                }
                Err(e) => {
                    self.shard.containers.remove(data.container);
                    self.reply(id, Err(io_errno(e)), None, out);
                }
            },
            Waiting::Stage {
                id,
                store_id,
                received,
                generation,
            } => match result {
                Ok(hashes) => {
                    if let Some(s) = self.staged.get_mut(&store_id) {
                        if s.generation == generation {
                            s.hash = Some(hash(hashes));
                        }
                    }
                    self.reply(id, ok(&StageReply { received }), None, out)
                }
                Err(e) => {
                    if let Some(s) = self.staged.remove(&store_id) {
                        self.shard.containers.remove(s.container);
                    }
                    self.reply(id, Err(io_errno(e)), None, out);
                }
            },
            Waiting::Restore { id, session } => self.restore_synced(id, *session, result, out),
            Waiting::Install {
                id,
                install,
                written,
            } => self.install_synced(id, &install, written, result, out),
        }
    }

    /// Points the vnode at a store's new (synced) container.
    fn store(&mut self, id: IncomingId, record: &CmlRecord, data: NewData, out: &mut Vec<Action>) {
        let caller = self.known_caller(id.conn);
        let vol = record.op.volume();
        let done = self.mutate(
            id.conn,
            &caller,
            vol,
            std::slice::from_ref(record),
            &mut |_| Some(data.clone()),
        );
        match done {
            Ok((body, commit, changed)) => {
                self.reply(id, Ok(body), Some(commit), out);
                self.breaks(Some(id.conn), vol, &changed, out);
            }
            Err(c) => {
                if data.container != NO_CONTAINER {
                    self.shard.containers.remove(data.container);
                }
                self.reply(id, Err(Errno(c.code)), None, out);
            }
        }
    }

    /// Records what a stage brought; once the data is whole, the container
    /// to hash and sync before the stage is answered and the data may be
    /// used, with its generation.
    #[allow(clippy::type_complexity)]
    fn finish_stage(
        &mut self,
        store_id: StoreId,
        offset: u64,
        result: Result<u64, coda_rpc2::Error>,
    ) -> Result<(u64, Option<(u64, u64)>), Errno> {
        let got = result.map_err(|_| Errno::EIO)?;
        let s = self.staged.get_mut(&store_id).ok_or(Errno::EIO)?;
        s.received = s.received.max(offset + got);
        if s.received > s.length {
            return Err(Errno::EINVAL);
        }
        if s.received == s.length && s.hash.is_none() {
            return Ok((s.received, Some((s.container, s.generation))));
        }
        Ok((s.received, None))
    }

    /// Applies `records` to `vol` in one transaction; on the first failure
    /// nothing is applied and the failure says which record and why.
    fn mutate(
        &mut self,
        conn: ConnId,
        caller: &Caller,
        vol: VolumeId,
        records: &[CmlRecord],
        data: &mut dyn FnMut(StoreId) -> Option<NewData>,
    ) -> Result<(Bytes, CommitId, Vec<Fid>), Conflict> {
        let (statuses, _, changed, commit) =
            self.apply(conn, caller, vol, records, data, None, None)?;
        let reply = MutateReply { statuses };
        Ok((codec::to_bytes(&reply), commit, changed))
    }

    /// The one path every update takes.
    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn apply(
        &mut self,
        conn: ConnId,
        caller: &Caller,
        vol: VolumeId,
        records: &[CmlRecord],
        data: &mut dyn FnMut(StoreId) -> Option<NewData>,
        batch: Option<(u64, StoreId)>,
        repair: Option<&coda_proto::vv::VersionVector>,
    ) -> Result<(Vec<coda_proto::Status>, Applied, Vec<Fid>, CommitId), Conflict> {
        let conflict = |index: usize, code: Errno, fid: Fid| Conflict {
            index: index as u32,
            code: code.0,
            fid,
        };
        let v = self
            .local_volume(vol)
            .map_err(|e| conflict(0, e, Fid::root(vol)))?;
        // Updates to what it does not hold yet would land on an empty tree.
        if v.is_barren() && !caller.is_server() {
            return Err(conflict(0, Errno::BARREN, Fid::root(vol)));
        }
        let cell = Arc::clone(&self.cell);
        let me = self.cell.name.clone();
        let exists = move |v: VolumeId| cell.vldb().get(v).is_some();
        let (containers, txn) = self.shard.split();
        let mut txn = txn.map_err(|e| conflict(0, rvm_errno(e), Fid::root(vol)))?;
        let mut bumps = HashMap::new();
        let result = (|| {
            let mut apply = Apply::new(&mut txn, containers, caller, vol, &exists, &me)
                .map_err(|e| (0, e, Fid::root(vol), Vec::new()))?;
            apply.repair = repair.cloned();
            let mut wanted = Vec::new();
            for (i, rec) in records.iter().enumerate() {
                match apply.op(rec, data) {
                    Ok(fids) => {
                        if i == 0 {
                            wanted = fids;
                        }
                    }
                    Err(e) => {
                        let fid = rec.op.fids().first().copied().unwrap_or(Fid::root(vol));
                        return Err((i, e, fid, std::mem::take(&mut apply.made)));
                    }
                }
            }
            let made = apply.made.clone();
            bumps = std::mem::take(&mut apply.bumps);
            let wanted: Vec<Fid> = wanted.into_iter().map(|f| apply.real(f)).collect();
            let (applied, changed) = apply.finish().map_err(|e| (0, e, Fid::root(vol), made))?;
            Ok((wanted, applied, changed))
        })();
        match result {
            Ok((wanted, applied, changed)) => {
                if let Some((host, batch)) = batch {
                    let rec = AppliedRecord {
                        volume: vol,
                        user: caller.user,
                        host,
                        batch,
                        reply: applied.clone(),
                    };
                    if let Err(e) = txn.put_applied(rec) {
                        let _ = txn.abort();
                        return Err(conflict(0, rvm_errno(e), Fid::root(vol)));
                    }
                }
                let statuses = {
                    let v = txn.volume(vol).expect("checked");
                    wanted
                        .iter()
                        .filter_map(|f| v.vnode(*f).map(|vn| fileops::status(v, vn, caller, true)))
                        .collect()
                };
                let commit = txn
                    .commit(Durability::NoFlush)
                    .map_err(|e| conflict(0, rvm_errno(e), Fid::root(vol)))?;
                for f in &wanted {
                    self.callbacks.promise(conn, *f);
                }
                let replicated = self
                    .shard
                    .meta
                    .volume(vol)
                    .is_some_and(|v| v.replicas() > 1);
                if replicated {
                    // Counted here for COP2: by batch, or by the one record.
                    let update = batch.map_or(records[0].store_id, |(_, b)| b);
                    let removals = records
                        .iter()
                        .filter(|r| {
                            matches!(r.op, Op::Remove(_) | Op::RemoveDir(_) | Op::Rename(_))
                        })
                        .map(|r| r.store_id)
                        .collect();
                    let bumps = bumps.into_iter().collect();
                    self.pending_cop2
                        .insert(vol, update, caller.user, bumps, removals);
                }
                Ok((statuses, applied, changed, commit))
            }
            Err((i, e, fid, made)) => {
                if let Err(err) = txn.abort() {
                    tracing::error!("abort failed: {err}");
                }
                for c in made {
                    self.shard.containers.remove(c);
                }
                Err(conflict(i, e, fid))
            }
        }
    }
}

impl Service {
    fn reintegrate(
        &mut self,
        conn: ConnId,
        caller: &Caller,
        r: &Reintegrate,
        out: &mut Vec<Action>,
    ) -> Result<(Bytes, Option<CommitId>), Errno> {
        // A CML belongs to a user: batches are recognised per user.
        if caller.user <= 0 {
            return Err(Errno::EACCES);
        }
        if r.records.is_empty() {
            return Err(Errno::EINVAL);
        }
        let host = r.batch.host;
        let vol = self.local_volume(r.volume)?;
        if let Some(prev) = vol.applied(caller.user, host) {
            if prev.batch == r.batch {
                // Sent again (its answer was lost): answer again, apply
                // nothing, but only once what was applied is durable.
                let reply = codec::to_bytes(&ReintegrateReply::Applied(prev.reply.clone()));
                return Ok((reply, Some(self.shard.last_commit())));
            }
            if r.batch.unique < prev.batch.unique {
                return Err(Errno::EALREADY);
            }
        }
        let mut seen = std::collections::HashSet::new();
        for rec in &r.records {
            // Store ids name one update each: a repeat would let two files
            // share one staged container.
            if rec.store_id.host != host || !seen.insert(rec.store_id) {
                return Err(Errno::BAD_REQUEST);
            }
        }
        // The staged data the batch's stores use, found before `apply`
        // borrows the shard.
        let staged: HashMap<StoreId, NewData> = r
            .records
            .iter()
            .filter(|rec| matches!(rec.op, Op::Store(_)))
            .filter_map(|rec| Some((rec.store_id, self.staged_data(rec.store_id)?)))
            .collect();
        let result = self.apply(
            conn,
            caller,
            r.volume,
            &r.records,
            &mut |sid| staged.get(&sid).cloned(),
            Some((host, r.batch)),
            None,
        );
        match result {
            Ok((_, applied, changed, commit)) => {
                for sid in staged.keys() {
                    self.staged.remove(sid);
                }
                self.breaks(Some(conn), r.volume, &changed, out);
                Ok((
                    codec::to_bytes(&ReintegrateReply::Applied(applied)),
                    Some(commit),
                ))
            }
            Err(c) => Ok((codec::to_bytes(&ReintegrateReply::Conflict(c)), None)),
        }
    }

    /// `REPAIR`: the version to keep goes over this replica's, its data
    /// staged beforehand.
    fn repair(
        &mut self,
        conn: ConnId,
        caller: &Caller,
        r: &coda_proto::res::Repair,
        out: &mut Vec<Action>,
    ) -> Result<(Bytes, Option<CommitId>), Errno> {
        if caller.user <= 0 {
            return Err(Errno::EACCES);
        }
        let sid = r.record.store_id;
        let data = match &r.record.op {
            Op::Store(_) => Some(self.staged_data(sid).ok_or(Errno::EINVAL)?),
            Op::SetAttr(_) => None,
            _ => return Err(Errno::BAD_REQUEST),
        };
        let vol = r.record.op.volume();
        let (statuses, _, changed, commit) = self
            .apply(
                conn,
                caller,
                vol,
                std::slice::from_ref(&r.record),
                &mut |s| data.clone().filter(|_| s == sid),
                None,
                Some(&r.base),
            )
            .map_err(|c| Errno(c.code))?;
        if data.is_some() {
            self.take_staged(sid);
        }
        self.breaks(Some(conn), vol, &changed, out);
        Ok((codec::to_bytes(&MutateReply { statuses }), Some(commit)))
    }

    /// Breaks other clients' promises on what changed.
    /// Breaks the promises on `changed` and on `vol`, except those of
    /// the connection that changed them.
    pub(crate) fn breaks(
        &mut self,
        changer: Option<ConnId>,
        vol: VolumeId,
        changed: &[Fid],
        out: &mut Vec<Action>,
    ) {
        for (holder, b) in self.callbacks.break_for(changer, vol, changed) {
            out.push(Action::Break {
                conn: holder,
                body: codec::to_bytes(&b),
            });
        }
    }

    fn auth(
        &mut self,
        opcode: u16,
        body: &[u8],
    ) -> Result<Option<(Bytes, Option<CommitId>)>, Errno> {
        let answer = match opcode {
            auth::op::GET_SALT => {
                let r: GetSalt = decode(body)?;
                ok(&self.cell.pdb().salt_of(&r.user, &self.cell.salt_secret))
            }
            auth::op::GET_TOKEN => {
                let r: GetToken = decode(body)?;
                let now = unix_now();
                if r.time.abs_diff(now) > auth::CLOCK_SKEW_SECS {
                    return Err(Errno::AUTH_FAILED);
                }
                let (user_id, key) = self.cell.pdb().key_of(&r.user).ok_or(Errno::AUTH_FAILED)?;
                let expected = auth::proof(&key, &r.user, r.time);
                if !coda_rpc2::secure::proofs_equal(&expected, &r.proof) {
                    return Err(Errno::AUTH_FAILED);
                }
                let mut session_key = [0u8; 32];
                let mut nonces = [0u8; 48];
                coda_rpc2::udp::getrandom_fill(&mut session_key).map_err(io_errno)?;
                coda_rpc2::udp::getrandom_fill(&mut nonces).map_err(io_errno)?;
                let token = Token {
                    user_id: user_id as u32,
                    session_key,
                    issued_at: now,
                    expires_at: now + auth::TOKEN_LIFETIME_SECS,
                };
                let sealed = token.seal(&self.cell.key, nonces[..24].try_into().unwrap());
                let clear = ClearToken {
                    user_id,
                    session_key,
                    sealed_token: Bytes::from(sealed),
                    expires_at: token.expires_at,
                };
                ok(&auth::seal_reply(
                    &key,
                    nonces[24..].try_into().unwrap(),
                    &clear,
                ))
            }
            _ => Err(Errno::UNKNOWN_CALL),
        };
        answer.map(|b| Some((b, None)))
    }

    fn volutil(
        &mut self,
        id: IncomingId,
        identity: Identity,
        caller: &Caller,
        opcode: u16,
        body: &[u8],
        out: &mut Vec<Action>,
    ) -> Result<Option<(Bytes, Option<CommitId>)>, Errno> {
        let listing = matches!(opcode, volutil::op::LIST | volutil::op::INFO);
        if !listing && (!caller.admin || identity.level != Level::Encrypted) {
            return Err(Errno::NOT_ADMIN);
        }
        let pdb_err = |e: crate::pdb::PdbError| match e {
            crate::pdb::PdbError::Exists(_) => Errno::EEXIST,
            crate::pdb::PdbError::NoSuch(_) => Errno::ENOENT,
            crate::pdb::PdbError::Invalid(_) => Errno::EINVAL,
            e => {
                tracing::error!("pdb: {e}");
                Errno::EIO
            }
        };
        match opcode {
            volutil::op::CREATE => {
                let r: CreateVolume = decode(body)?;
                crate::volume_name_ok(&r.name).map_err(|_| Errno::EINVAL)?;
                if self.cell.directory().by_name(&r.name).is_some() {
                    return Err(Errno::EEXIST);
                }
                if !r.replicas.is_empty() {
                    return self.create_replicated(id, caller, r, out);
                }
                let (vol, shard) = {
                    let mut vldb = self.cell.vldb_mut();
                    if vldb.by_name(&r.name).is_some() {
                        return Err(Errno::EEXIST);
                    }
                    let vol = self.cell.new_volume_id();
                    let shard = vldb.emptiest_shard(self.cell.shards);
                    // Reserved now so a second create of the name fails at once.
                    vldb.insert(
                        vol,
                        Location {
                            name: r.name.clone(),
                            shard,
                            kind: VolumeKind::ReadWrite,
                        },
                    );
                    (vol, shard)
                };
                let job = Job::CreateVolume {
                    id: vol,
                    name: r.name,
                    owner: caller.user,
                };
                self.on_shard(id, shard, job, out)
            }
            volutil::op::LIST => ok(&self.list_volumes()).map(|b| Some((b, None))),
            volutil::op::INFO | volutil::op::LOCK | volutil::op::UNLOCK | volutil::op::REMOVE => {
                let r: NameVolume = decode(body)?;
                if opcode == volutil::op::REMOVE && self.is_replicated(&r.volume) {
                    return self.remove_replicated(id, &r.volume, out);
                }
                let vol = match self.resolve(&r.volume) {
                    Err(e) if opcode == volutil::op::INFO => {
                        return ok(&self.elsewhere(&r.volume).ok_or(e)?).map(|b| Some((b, None)))
                    }
                    vol => vol?,
                };
                let job = match opcode {
                    volutil::op::INFO => Job::Info(vol),
                    volutil::op::LOCK => Job::SetLocked(vol, true),
                    volutil::op::UNLOCK => Job::SetLocked(vol, false),
                    _ => Job::RemoveVolume(vol),
                };
                self.on_volume_shard(id, vol, job, out)
            }
            volutil::op::CLONE..=volutil::op::RESTORE_END => {
                self.volume_admin(id, opcode, body, out)
            }
            volutil::op::USER_ADD | volutil::op::GROUP_ADD | volutil::op::GROUP_ADD_MEMBER
                if !self.cell.is_scm() =>
            {
                // The others take the SCM's database as it is.
                Err(Errno::NOT_SCM)
            }
            volutil::op::JOIN => {
                let r: coda_proto::update::Join = decode(body)?;
                let peers = self.cell.peers.as_ref().ok_or(Errno::NOT_SCM)?;
                if !peers.is_scm() {
                    return Err(Errno::NOT_SCM);
                }
                if peers.addr(&r.server).is_none() || r.server == peers.me {
                    return Err(Errno::EINVAL);
                }
                if r.peers != peers.names() {
                    tracing::warn!(
                        "server {} names the servers {}; this cell's are {}",
                        r.server,
                        r.peers.join(","),
                        peers.names().join(",")
                    );
                    return Err(Errno::EINVAL);
                }
                tracing::info!("server {} joins the cell", r.server);
                let reply = coda_proto::update::JoinReply {
                    cell_id: self.cell.id,
                    cell_key: *self.cell.key.as_bytes(),
                };
                ok(&reply).map(|b| Some((b, None)))
            }
            volutil::op::USER_ADD => {
                let r: UserAdd = decode(body)?;
                let mut salt = [0u8; 16];
                coda_rpc2::udp::getrandom_fill(&mut salt).map_err(io_errno)?;
                let id = self
                    .cell
                    .pdb_mut()
                    .add_user(&r.name, &r.password, None, salt)
                    .map_err(pdb_err)?;
                ok(&User { name: r.name, id }).map(|b| Some((b, None)))
            }
            volutil::op::USER_LIST => {
                let pdb = self.cell.pdb();
                let users: Vec<User> = pdb
                    .users()
                    .map(|u| User {
                        name: u.name.clone(),
                        id: u.id,
                    })
                    .collect();
                ok(&users).map(|b| Some((b, None)))
            }
            volutil::op::GROUP_ADD => {
                let r: GroupAdd = decode(body)?;
                let id = self
                    .cell
                    .pdb_mut()
                    .add_group(&r.name, &r.owner)
                    .map_err(pdb_err)?;
                ok(&User { name: r.name, id }).map(|b| Some((b, None)))
            }
            volutil::op::GROUP_ADD_MEMBER => {
                let r: GroupAddMember = decode(body)?;
                self.cell
                    .pdb_mut()
                    .add_member(&r.group, &r.member)
                    .map_err(pdb_err)?;
                Ok(Some((Bytes::new(), None)))
            }
            volutil::op::GROUP_LIST => {
                let pdb = self.cell.pdb();
                let name = |id: PrincipalId| pdb.name_of(id).unwrap_or("?").to_string();
                let groups: Vec<Group> = pdb
                    .groups()
                    .map(|g| Group {
                        name: g.name.clone(),
                        id: g.id,
                        owner: name(g.owner),
                        members: g.members.iter().map(|m| name(*m)).collect(),
                    })
                    .collect();
                ok(&groups).map(|b| Some((b, None)))
            }
            _ => Err(Errno::UNKNOWN_CALL),
        }
    }

    /// Runs administration on this shard: the answer, to send once commit
    /// `after` (if any) is durable.
    pub fn run_job(&mut self, job: Job, out: &mut Vec<Action>) -> JobDone {
        let result: Result<(Bytes, Option<CommitId>), Errno> = (|| match job {
            job @ (Job::Clone { .. } | Job::Backup(_) | Job::DumpEstimate(_)) => {
                self.admin_job(job, out)
            }
            Job::CreateVolume { id, name, owner } => {
                let (info, commit) = self.new_volume(id, &name, owner)?;
                Ok((codec::to_bytes(&info), Some(commit)))
            }
            Job::Info(id) => Ok((codec::to_bytes(&self.info(id)?), None)),
            Job::MakeReplica { entry: e, barren } => {
                let made = match self.shard.meta.volume(e.id) {
                    Some(_) => None,
                    None => {
                        let (_, commit) = self.new_replica(
                            e.id,
                            &e.name,
                            e.owner,
                            &e.replicas,
                            e.created,
                            barren,
                        )?;
                        tracing::info!("made a replica of volume {} ({:x})", e.name, e.id);
                        if barren {
                            // Filled now, not at the next sweep.
                            out.push(Action::Resolve { volume: e.id });
                        }
                        Some(commit)
                    }
                };
                let v = self.local_volume(e.id)?;
                Ok((codec::to_bytes(&self.entry(e.id, v)), made))
            }
            Job::Entries => Ok((codec::to_bytes(&self.entries()), None)),
            Job::SetLocked(id, locked) => {
                let mut h = self.local_volume(id)?.header.clone();
                h.locked = locked;
                let ((), commit) = self
                    .shard
                    .transact(Durability::NoFlush, |txn| txn.put_header(h))
                    .map_err(rvm_errno)?;
                Ok((codec::to_bytes(&self.info(id)?), Some(commit)))
            }
            Job::RemoveVolume(id) => {
                self.local_volume(id)?;
                let commit = self.shard.dismantle(id).map_err(rvm_errno)?;
                self.cell.vldb_mut().remove(id);
                Ok((Bytes::new(), Some(commit)))
            }
        })();
        match result {
            Ok((body, after)) => JobDone {
                code: 0,
                body,
                after,
            },
            Err(e) => JobDone {
                code: e.0,
                body: Bytes::new(),
                after: None,
            },
        }
    }

    pub(crate) fn info(&self, id: VolumeId) -> Result<VolumeInfo, Errno> {
        let v = self.local_volume(id)?;
        let me = self.cell.addr(self.shard.index);
        // Every replica's address in slot order (empty: not known yet),
        // this one's as it is now.
        let servers = match self.cell.directory().get(id) {
            Some(e) if v.header.replicas.len() > 1 => {
                let mut addrs = e.addrs.clone();
                addrs.resize(v.header.replicas.len(), String::new());
                addrs[v.slot_of(&self.cell.name)] = me;
                addrs
            }
            _ => vec![me],
        };
        Ok(VolumeInfo {
            id,
            name: v.header.name.clone(),
            kind: v.header.kind,
            servers,
            root: v.root(),
            stamp: v.header.stamp,
            locked: v.header.locked,
            files: v.files(),
            bytes: v.bytes,
        })
    }

    /// This shard's volumes as the cell's directory lists them.
    fn entries(&self) -> Vec<coda_proto::update::VolumeEntry> {
        self.shard
            .meta
            .volumes
            .iter()
            .filter(|(_, v)| !v.header.transient)
            .map(|(&id, v)| self.entry(id, v))
            .collect()
    }

    fn entry(&self, id: VolumeId, v: &crate::volume::Volume) -> coda_proto::update::VolumeEntry {
        let mut replicas = v.header.replicas.clone();
        if replicas.is_empty() {
            replicas.push(self.cell.name.clone());
        }
        let mut addrs = vec![String::new(); replicas.len()];
        addrs[v.slot_of(&self.cell.name).min(replicas.len() - 1)] =
            self.cell.addr(self.shard.index);
        coda_proto::update::VolumeEntry {
            id,
            name: v.header.name.clone(),
            kind: v.header.kind,
            owner: v.vnode(v.root()).map_or(0, |r| r.owner as PrincipalId),
            created: v.header.created,
            replicas,
            addrs,
        }
    }

    /// A volume this server does not hold, as the cell's directory has it.
    fn elsewhere(&self, r: &VolumeRef) -> Option<VolumeInfo> {
        let dir = self.cell.directory();
        let e = match r {
            VolumeRef::Id(id) => dir.get(*id),
            VolumeRef::Name(n) => dir.by_name(n),
        }?;
        Some(crate::cell::entry_info(e))
    }

    /// Every volume of the cell: the directory's, and this server's own
    /// (those it has not told the SCM of yet too).
    fn list_volumes(&self) -> Vec<VolumeInfo> {
        let mut all: BTreeMap<VolumeId, VolumeInfo> = self
            .cell
            .directory()
            .all()
            .iter()
            .map(|e| (e.id, crate::cell::entry_info(e)))
            .collect();
        for (i, l) in self.cell.vldb().iter() {
            all.entry(i).or_insert_with(|| VolumeInfo {
                id: i,
                name: l.name.clone(),
                kind: l.kind,
                servers: vec![self.cell.addr(l.shard)],
                root: Fid::root(i),
                stamp: 0,
                locked: false,
                files: 0,
                bytes: 0,
            });
        }
        all.into_values().collect()
    }

    /// `volutil create NAME --replicas S...` at the SCM: the volume is
    /// entered in the cell's directory, and the update thread makes each
    /// replica (a server that is down makes its own when it next updates).
    fn create_replicated(
        &mut self,
        id: IncomingId,
        caller: &Caller,
        r: CreateVolume,
        out: &mut Vec<Action>,
    ) -> Result<Option<(Bytes, Option<CommitId>)>, Errno> {
        let peers = self.cell.peers.as_ref().ok_or(Errno::NOT_SCM)?;
        if !peers.is_scm() {
            return Err(Errno::NOT_SCM);
        }
        let mut seen = HashSet::new();
        if r.replicas
            .iter()
            .any(|s| peers.addr(s).is_none() || !seen.insert(s))
        {
            return Err(Errno::EINVAL);
        }
        if self.cell.vldb().by_name(&r.name).is_some() {
            return Err(Errno::EEXIST);
        }
        let n = r.replicas.len();
        let entry = coda_proto::update::VolumeEntry {
            id: self.cell.new_volume_id(),
            name: r.name,
            kind: if n > 1 {
                VolumeKind::Replicated
            } else {
                VolumeKind::ReadWrite
            },
            owner: caller.user,
            created: Timestamp::now(),
            replicas: r.replicas,
            addrs: vec![String::new(); n],
        };
        self.cell.directory_mut().insert(entry.clone());
        out.push(Action::Cell {
            id,
            job: crate::update::CellJob::MakeReplicas(entry),
        });
        Ok(None)
    }

    /// The cell directory's entry of a volume.
    fn entry_of(&self, r: &VolumeRef) -> Option<coda_proto::update::VolumeEntry> {
        let dir = self.cell.directory();
        match r {
            VolumeRef::Id(id) => dir.get(*id),
            VolumeRef::Name(n) => dir.by_name(n),
        }
        .cloned()
    }

    /// Whether a volume has several replicas, as this server's own
    /// replica or the cell's directory (which may not know it yet) says.
    fn is_replicated(&self, r: &VolumeRef) -> bool {
        let here = self
            .resolve(r)
            .ok()
            .and_then(|v| self.cell.vldb().get(v).cloned());
        here.is_some_and(|l| l.kind == VolumeKind::Replicated)
            || self.entry_of(r).is_some_and(|e| e.replicas.len() > 1)
    }

    /// `volutil remove` of a replicated volume, at the SCM: gone from the
    /// cell's directory for good, then from each server holding a replica
    /// (a server that is down removes its own when it comes back; removed
    /// from one server alone, the replica would be made again, barren).
    fn remove_replicated(
        &mut self,
        id: IncomingId,
        r: &VolumeRef,
        out: &mut Vec<Action>,
    ) -> Result<Option<(Bytes, Option<CommitId>)>, Errno> {
        if !self.cell.is_scm() {
            return Err(Errno::NOT_SCM);
        }
        let e = self.entry_of(r).ok_or(Errno::NO_SUCH_VOLUME)?;
        self.cell.directory_mut().forget(e.id);
        out.push(Action::Cell {
            id,
            job: crate::update::CellJob::RemoveReplicas(e),
        });
        Ok(None)
    }

    /// Makes volume `id` here and records where it is served; durable once
    /// the commit returned is.
    pub fn new_volume(
        &mut self,
        id: VolumeId,
        name: &str,
        owner: PrincipalId,
    ) -> Result<(VolumeInfo, CommitId), Errno> {
        let me = vec![self.cell.name.clone()];
        self.new_replica(id, name, owner, &me, Timestamp::now(), false)
    }

    /// Makes this server's replica of volume `id`, whose replicas are the
    /// servers `replicas` (in version-vector slot order): every replica
    /// starts the same, so they are equal until updates come.
    pub fn new_replica(
        &mut self,
        id: VolumeId,
        name: &str,
        owner: PrincipalId,
        replicas: &[String],
        created: Timestamp,
        barren: bool,
    ) -> Result<(VolumeInfo, CommitId), Errno> {
        let kind = match replicas.len() {
            0 | 1 => VolumeKind::ReadWrite,
            _ => VolumeKind::Replicated,
        };
        let commit = match self.create_volume(id, name, owner, replicas, created, barren) {
            Ok(c) => c,
            Err(e) => {
                self.cell.vldb_mut().remove(id);
                return Err(e);
            }
        };
        self.cell.register(
            id,
            Location {
                name: name.to_string(),
                shard: self.shard.index,
                kind,
            },
        );
        Ok((self.info(id)?, commit))
    }

    /// A new volume: its header and its root directory, in one transaction.
    /// Its root's ACL is the cell root's (`System:AnyUser rl`,
    /// `System:Administrators all`) plus `all` for a user `owner`.
    fn create_volume(
        &mut self,
        id: VolumeId,
        name: &str,
        owner: PrincipalId,
        replicas: &[String],
        now: Timestamp,
        barren: bool,
    ) -> Result<CommitId, Errno> {
        let mut acl = fileops::root_acl();
        if owner > 0 && !self.cell.pdb().is_admin(owner) {
            acl.set(owner, Rights::ALL, false);
        }
        let root = Fid::root(id);
        let store_id = StoreId {
            host: 0,
            unique: id,
        };
        let n = replicas.len().max(1);
        let mut vv = VersionVector::new(n);
        vv.store_id = store_id;
        if n == 1 {
            vv.bump(0, store_id);
        }
        if barren {
            vv.flags |= coda_proto::vv::FLAG_BARREN;
        }
        let kind = match n {
            1 => VolumeKind::ReadWrite,
            _ => VolumeKind::Replicated,
        };
        let replicas = match replicas.is_empty() {
            true => vec![self.cell.name.clone()],
            false => replicas.to_vec(),
        };
        let made = self.shard.transact(Durability::NoFlush, |txn| {
            txn.create_volume(VolumeHeader {
                id,
                name: name.to_string(),
                kind,
                locked: false,
                replicas,
                next_vnode: ROOT_VNODE + 1,
                next_unique: ROOT_VNODE + 1,
                stamp: 1,
                created: now,
                grants: Vec::new(),
                parent: 0,
                backup: 0,
                transient: false,
                restored: None,
            })?;
            txn.put_vnode(Vnode {
                fid: root,
                kind: VnodeKind::Directory,
                mode: 0o755,
                owner: owner.max(0) as u32,
                group: 0,
                author: owner.max(0) as u32,
                link_count: 2,
                length: 0,
                mtime: now,
                ctime: now,
                atime: now,
                data_version: 1,
                vv,
                content_hash: EMPTY_HASH,
                container: NO_CONTAINER,
                parent: root,
                acl: Some(acl),
                target: String::new(),
                history: vec![store_id],
                inline: Bytes::new(),
            })
        });
        made.map(|((), commit)| commit).map_err(rvm_errno)
    }

    pub fn statistics(&self) -> Statistics {
        let stats = self.shard.rvm().stats();
        let (cpu_user_ms, cpu_system_ms) = cpu_times();
        let (disk_bytes, disk_free_bytes) = disk_space(self.shard.containers.dir());
        let volumes = self.shard.meta.volumes.values();
        Statistics {
            shard: self.shard.index,
            cpu_user_ms,
            cpu_system_ms,
            disk_bytes,
            disk_free_bytes,
            files: volumes.clone().map(|v| v.files()).sum(),
            bytes: volumes.map(|v| v.bytes).sum(),
            uptime_secs: self.cell.started.elapsed().as_secs(),
            calls_by_opcode: self.counters.calls.iter().map(|(k, v)| (*k, *v)).collect(),
            bytes_received: self.counters.bytes_in,
            bytes_sent: self.counters.bytes_out,
            clients: self.clients.len() as u64,
            callbacks: self.callbacks.count(),
            volumes: self.shard.meta.volumes.len() as u64,
            rvm_log_used: stats.log_used_bytes,
            rvm_log_bytes: stats.log_area_bytes,
            shards: self.cell.shards,
            resolution: self.cell.resolution().clone(),
        }
    }

    /// Called by the driver when a callback break failed: the client is
    /// unreachable, so it loses every promise (no one waits for it) and its
    /// connection, so it cannot go on trusting a cache it was not told about.
    pub fn break_failed(&mut self, conn: ConnId, out: &mut Vec<Action>) {
        self.client_lost(conn);
        out.push(Action::Close { conn });
    }
}

/// Checks a store's data arrived whole; its new content (no container
/// for an empty file; the hash of any other comes with its sync).
fn check_store(
    record: &CmlRecord,
    container: Option<&(u64, std::fs::File)>,
    result: Result<u64, coda_rpc2::Error>,
    sink: Option<Sink>,
) -> Result<NewData, Errno> {
    let Op::Store(s) = &record.op else {
        unreachable!("only stores pull")
    };
    let got = result.map_err(|_| Errno::EIO)?;
    if got != s.length {
        return Err(Errno::EINVAL);
    }
    match container {
        Some((container, file)) => {
            if file.metadata().map_err(io_errno)?.len() != s.length {
                return Err(Errno::EINVAL);
            }
            // Hashed when it is synced.
            Ok(NewData {
                container: *container,
                inline: Bytes::new(),
                length: s.length,
                hash: EMPTY_HASH,
            })
        }
        None => {
            let bytes = sink.map(Sink::into_bytes).unwrap_or_default();
            if bytes.len() as u64 != s.length {
                return Err(Errno::EINVAL);
            }
            Ok(NewData {
                container: NO_CONTAINER,
                hash: *blake3::hash(&bytes).as_bytes(),
                length: s.length,
                inline: Bytes::from(bytes),
            })
        }
    }
}

/// Whether a direct mutation's record is the one its opcode names.
/// User and system CPU time of the server process, in milliseconds.
fn cpu_times() -> (u64, u64) {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0, 0);
    }
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    (ms(ru.ru_utime), ms(ru.ru_stime))
}

/// Size and free bytes of the file system holding `dir`.
fn disk_space(dir: &std::path::Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return (0, 0);
    };
    // SAFETY: statvfs only writes the struct it is given; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return (0, 0);
    }
    let unit = st.f_frsize as u64;
    (st.f_blocks as u64 * unit, st.f_bavail as u64 * unit)
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The callback subsystem's break call, for drivers.
pub const BREAK_CALL: (u16, u16) = (callback::SUBSYSTEM, callback::op::BREAK);
