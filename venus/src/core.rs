//! The cache manager's core: the file-system calls as a plain Rust API over
//! inode numbers, served from the cache and the servers. The FUSE adapter
//! is a thin layer over it; tests drive it directly too.
//!
//! Every update is a CML record (`cml`), shipped before the call returns
//! (strongly connected): directory operations at once, a file's new
//! contents when it is closed.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::net::SocketAddr;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coda_proto::acl::{Acl, AclEntry, Rights};
use coda_proto::callback::Break;
use coda_proto::cml::{self, Op};
use coda_proto::control::{self, AclLine, Event, NamedAcl, ServerState, TokenGrant};
use coda_proto::fid::LOCAL_VNODE_BASE;
use coda_proto::vice::{
    self, op, DirEntry, LookupPrincipals, Principals, ValidateAttrs, ValidateAttrsReply,
    VolumeInfo, VolumeRef,
};
use coda_proto::{Errno, Fid, Status, StoreId, Timestamp, VnodeKind, VolumeId};
use coda_rpc2::codec;
use coda_rpc2::endpoint::SideEffect;
use coda_rpc2::{Credentials, Sink};

use crate::cache::{Cache, CacheError, ROOT_INO};
use crate::container;
use crate::emulate::LogIndex;
use crate::link::{call_decode, decode_reply, LinkError, Principal, Transport};
use crate::volume;

pub type Result<T> = std::result::Result<T, Errno>;

/// How many fids one ValidateAttrs call carries.
const VALIDATE_BATCH: usize = 1000;

/// The longest file: 16 TiB, what ext4 (the usual home of containers, on
/// clients and servers) takes.
pub const FILE_BYTES_MAX: u64 = 1 << 44;

/// A directory listing may be this large.
const LISTING_BYTES_MAX: u64 = 1 << 30;

impl From<CacheError> for Errno {
    fn from(e: CacheError) -> Errno {
        tracing::error!("cache: {e}");
        Errno::EIO
    }
}

/// An object's attributes as the kernel sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: VnodeKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: Timestamp,
    pub ctime: Timestamp,
    pub atime: Timestamp,
    pub nlink: u32,
}

/// What a setattr asks to change.
#[derive(Debug, Clone, Default)]
pub struct SetAttrs {
    pub mode: Option<u32>,
    pub owner: Option<u32>,
    /// A new group, and whether the caller belongs to it.
    pub group: Option<(u32, bool)>,
    pub length: Option<u64>,
    pub mtime: Option<Timestamp>,
    pub atime: Option<Timestamp>,
    /// The times are "now" (utimes(NULL)), which write access allows.
    pub times_now: bool,
}

/// A user's token, as `clog` handed it over.
pub struct Token {
    pub grant: TokenGrant,
    creds: Credentials,
}

/// An open file.
pub struct Handle {
    pub ino: u64,
    pub fid: Fid,
    pub file: Arc<File>,
    pub uid: u32,
    pub writable: bool,
    /// Changed through this handle in user space (passthrough writes are
    /// found by comparing the container with `opened`).
    pub dirty: bool,
    /// The container's length and mtime when opened (or last stored).
    opened: (u64, i64),
    /// The container it reads and writes, and the server's version that
    /// container last held.
    container: u64,
    base: crate::cml::Base,
}

/// How long a replica found barren is not read from before it is tried
/// again (resolution fills it within seconds).
pub const BARREN_RETRY: Duration = Duration::from_secs(10);

/// The cache manager.
pub struct Venus {
    pub cache: Cache,
    link: Arc<dyn Transport>,
    pub servers: Vec<SocketAddr>,
    pub root: Fid,
    tokens: HashMap<u32, Token>,
    last_sid: u64,
    tick: u64,
    pub cache_limit: u64,
    handles: HashMap<u64, Handle>,
    listings: HashMap<u64, Vec<(String, u64, VnodeKind)>>,
    next_fh: u64,
    /// Each `codacon` listening.
    listeners: Vec<std::sync::mpsc::Sender<Event>>,
    /// Whole-object fetches from servers, for tests and `cfs`.
    pub fetches: u64,
    /// Breaks answered but not yet applied: seen before any status is
    /// trusted again.
    pub breaks: PendingBreaks,
    /// Inodes and directories broken since the callback thread last saw.
    inos_broken: Vec<u64>,
    dirs_broken: Vec<Fid>,
    /// The CML's indexes (the records are in the cache).
    pub cml: LogIndex,
    /// Servers that stopped answering: their volumes are emulated until a
    /// probe finds them again.
    pub down: HashSet<SocketAddr>,
    /// How many times a server was found gone (see [`Venus::losses`]).
    losses: u64,
    /// `cfs disconnect`: every volume emulated until `cfs reconnect`.
    pub forced: bool,
    /// `cfs writedisconnect`: updates logged, reintegrated in the background.
    pub write_disconnected: bool,
    /// The volume being reintegrated now.
    pub reintegrating: Option<VolumeId>,
    pub bandwidth: crate::reint::Bandwidth,
    /// Set while a tool names objects: those in conflict are shown to it.
    pub repairing: bool,
    /// How conflicts are settled without a person, where configured.
    pub policies: Vec<crate::conflict::Policy>,
    /// Wakes the callback thread to pass queued breaks to the kernel.
    pub kick: Option<std::sync::mpsc::Sender<()>>,
    /// Volumes whose log waits for a user's token, and whose.
    pub waiting: HashMap<VolumeId, u32>,
    /// The replica each replicated volume is read from, kept while it answers.
    preferred: HashMap<VolumeId, SocketAddr>,
    /// Replicas found barren (made empty, not yet filled by resolution),
    /// and when: not read from for [`BARREN_RETRY`].
    barren: HashMap<(VolumeId, SocketAddr), Instant>,
    /// COP2s and resolution requests, sent off the callers' path.
    notifier: crate::replica::Notifier,
    /// Objects whose replicas were found in different versions (marked
    /// inconsistent by resolution), for `repair`.
    pub diverged: std::collections::BTreeSet<Fid>,
}

/// Where and as whom calls for a volume go, for calls made off the core
/// (several at once).
pub struct Route {
    pub addr: SocketAddr,
    pub who: Principal,
    pub creds: Option<Credentials>,
}

/// Callback breaks the callback thread has answered, for the core.
pub type PendingBreaks = Arc<Mutex<Vec<Break>>>;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A local file's error as the program should see it.
pub(crate) fn io_errno(e: std::io::Error) -> Errno {
    match e.raw_os_error() {
        Some(libc::EFBIG | libc::EINVAL) => Errno::EFBIG,
        Some(libc::ENOSPC | libc::EDQUOT) => Errno::ENOSPC,
        _ => Errno::EIO,
    }
}

fn system_time(t: Timestamp) -> std::time::SystemTime {
    let base = std::time::UNIX_EPOCH;
    let nanos = std::time::Duration::from_nanos(t.nanos as u64);
    if t.secs >= 0 {
        base + std::time::Duration::from_secs(t.secs as u64) + nanos
    } else {
        base - std::time::Duration::from_secs(t.secs.unsigned_abs()) + nanos
    }
}

fn ts_of(secs: i64, nanos: i64) -> Timestamp {
    Timestamp {
        secs,
        nanos: nanos.clamp(0, 999_999_999) as u32,
    }
}

impl Venus {
    /// Starts over `cache`, finding the root volume at `servers`.
    pub fn new(
        cache: Cache,
        link: Arc<dyn Transport>,
        servers: Vec<SocketAddr>,
        cache_limit: u64,
    ) -> Result<Venus> {
        let notifier = crate::replica::Notifier::start(link.clone());
        let mut v = Venus {
            cache,
            link,
            servers,
            root: Fid::default(),
            tokens: HashMap::new(),
            last_sid: 0,
            tick: 0,
            cache_limit,
            handles: HashMap::new(),
            listings: HashMap::new(),
            next_fh: 1,
            listeners: Vec::new(),
            fetches: 0,
            breaks: PendingBreaks::default(),
            inos_broken: Vec::new(),
            dirs_broken: Vec::new(),
            cml: LogIndex::default(),
            down: HashSet::new(),
            losses: 0,
            forced: false,
            write_disconnected: false,
            reintegrating: None,
            bandwidth: Default::default(),
            repairing: false,
            diverged: Default::default(),
            kick: None,
            policies: Vec::new(),
            waiting: HashMap::new(),
            preferred: HashMap::new(),
            barren: HashMap::new(),
            notifier,
        };
        v.cml = LogIndex::build(&v.cache.cml);
        v.link.set_host(v.cache.host);
        let addr = *v.servers.first().ok_or(Errno::EINVAL)?;
        let found: Result<VolumeInfo> = call_decode(
            &*v.link,
            addr,
            Principal::Anyone,
            None,
            vice::SUBSYSTEM,
            op::GET_ROOT_VOLUME,
            &(),
        );
        match (found, v.cache.inos.get(&ROOT_INO).copied()) {
            (Ok(info), _) => {
                v.root = info.root;
                v.cache.obj_or_new(info.root, VnodeKind::Directory, true);
                v.put_volume(info)?;
                v.emit("connect", format!("root volume at {addr}"));
            }
            // No server: a cache that knows the name space starts disconnected.
            (Err(Errno::ETIMEDOUT), Some(root)) => {
                v.root = root;
                v.down.extend(v.servers.iter().copied());
                v.emit(
                    "disconnect",
                    format!("{addr} does not answer; starting disconnected"),
                );
            }
            (Err(e), _) => return Err(e),
        }
        Ok(v)
    }

    // ---- users and calls ----

    pub fn set_token(&mut self, uid: u32, grant: TokenGrant) {
        let creds = Credentials {
            sealed_token: grant.sealed_token.clone(),
            session_key: grant.session_key,
        };
        let who = Principal::User(grant.user_id);
        let grant_user = grant.user_id;
        self.link.forget_principal(who);
        self.emit(
            "token",
            format!("uid {uid} is {} until {}", grant.user, grant.expires_at),
        );
        // A new token replacing one held may carry new group memberships,
        // so the user's rights are asked again (as AFS does); the first
        // token after a start keeps the rights the cache kept.
        if self.tokens.insert(uid, Token { grant, creds }).is_some() {
            self.forget_rights(Some(Some(grant_user)));
        }
    }

    pub fn tokens(&self, uid: u32) -> Vec<TokenGrant> {
        self.tokens
            .get(&uid)
            .map(|t| t.grant.clone())
            .into_iter()
            .collect()
    }

    pub fn unlog(&mut self, uid: u32) {
        if let Some(t) = self.tokens.remove(&uid) {
            self.link.forget_principal(Principal::User(t.grant.user_id));
            self.forget_rights(Some(Some(t.grant.user_id)));
        }
    }

    /// Forgets cached rights: of one user (`Some(key)`) or of everyone.
    fn forget_rights(&mut self, who: Option<Option<i32>>) {
        let changed: Vec<Fid> = self
            .cache
            .objs
            .values_mut()
            .filter_map(|o| o.forget_rights(who).then_some(o.fid()))
            .collect();
        for fid in changed {
            if let Err(e) = self.cache.save(fid) {
                tracing::error!("cache: {e}");
            }
        }
    }

    /// Who `uid` is to the servers: its token's user, or anyone.
    fn who(&self, uid: u32) -> (Principal, Option<&Credentials>) {
        match self.tokens.get(&uid) {
            Some(t) if t.grant.expires_at > unix_now() => {
                (Principal::User(t.grant.user_id), Some(&t.creds))
            }
            _ => (Principal::Anyone, None),
        }
    }

    /// The key of `uid`'s rights in an object's rights cache.
    pub(crate) fn rights_key_of(&self, uid: u32) -> Option<i32> {
        self.rights_key(uid)
    }

    fn rights_key(&self, uid: u32) -> Option<i32> {
        match self.who(uid).0 {
            Principal::User(u) => Some(u),
            Principal::Anyone => None,
        }
    }

    fn server_of(&mut self, vol: VolumeId) -> Result<SocketAddr> {
        if let Some((_, info)) = self.cache.volumes.get(&vol) {
            if !volume::replicated(info) {
                return volume::server(info);
            }
            return self.preferred_replica(vol);
        }
        let addr = *self.servers.first().ok_or(Errno::EINVAL)?;
        if self.forced || self.down.contains(&addr) {
            return Err(Errno::ETIMEDOUT);
        }
        let info: VolumeInfo = call_decode(
            &*self.link,
            addr,
            Principal::Anyone,
            None,
            vice::SUBSYSTEM,
            op::GET_VOLUME_INFO,
            &VolumeRef::Id(vol),
        )?;
        let addr = volume::server(&info)?;
        self.put_volume(info)?;
        Ok(addr)
    }

    /// The replica of `vol` reads go to: the one used last while it
    /// answers (a replica that comes back may be stale until resolved),
    /// else the first that answers. A new one's stamp vouches for nothing
    /// the cache holds.
    pub(crate) fn preferred_replica(&mut self, vol: VolumeId) -> Result<SocketAddr> {
        let reps = self.replicas_of(vol);
        let before = self.preferred.get(&vol).copied();
        let kept = before.filter(|p| {
            !self.down.contains(p) && !self.is_barren(vol, *p) && reps.iter().any(|(_, a)| a == p)
        });
        let chosen = match kept {
            Some(p) => p,
            None => {
                let up: Vec<SocketAddr> = reps
                    .iter()
                    .map(|(_, a)| *a)
                    .filter(|a| !self.down.contains(a) && !self.is_barren(vol, *a))
                    .collect();
                // One was lost (maybe the one read from): the others may
                // be cut off with it, and trying them in turn would cost
                // a timeout each. They race; the first to answer is read
                // from.
                let pick = match up.len() > 1 && (before.is_some() || up.len() < reps.len()) {
                    true => self.first_answering(up),
                    false => up.first().copied(),
                };
                pick.or_else(|| reps.first().map(|(_, a)| *a))
                    .ok_or(Errno::NO_SUCH_VOLUME)?
            }
        };
        if before != Some(chosen) {
            // Each replica counts its own stamps: one cached from another
            // (or before a restart, from any) vouches for nothing here.
            self.preferred.insert(vol, chosen);
            self.untrust(vol);
            if before.is_some() {
                self.emit(
                    "replica",
                    format!("volume {vol:x} is read from {chosen} now"),
                );
            }
        }
        Ok(chosen)
    }

    /// Records where a volume is served. What the cache keeps as its stamp
    /// stays: a stamp vouches for the cache only once everything cached of
    /// the volume was found current at it.
    fn put_volume(&mut self, mut info: VolumeInfo) -> Result<()> {
        info.stamp = self
            .cache
            .volumes
            .get(&info.id)
            .map_or(volume::UNTRUSTED, |(_, v)| v.stamp);
        Ok(self.cache.put_volume(info)?)
    }

    /// Calls the server of `vol` for `uid`; a server that forgot us (it
    /// restarted) broke every promise, so everything is validated again.
    pub(crate) fn call(
        &mut self,
        uid: u32,
        vol: VolumeId,
        opcode: u16,
        body: bytes::Bytes,
        side_effect: Option<SideEffect>,
    ) -> Result<coda_rpc2::endpoint::Reply> {
        let addr = self.server_of(vol)?;
        // Only the replica left (the others down, or barren too): asking
        // it again before its time would loop.
        if self.is_barren(vol, addr) {
            return Err(Errno::ETIMEDOUT);
        }
        let r = self.call_at(uid, addr, opcode, body, side_effect)?;
        if !self.is_replicated(vol) {
            return Ok(r);
        }
        // A replica not made yet (its server was down, or lost its disk)
        // knows no such volume; nor does any, once the volume is removed.
        if r.code == Errno::NO_SUCH_VOLUME.0 && self.removed(vol) {
            return Ok(r);
        }
        if [Errno::BARREN.0, Errno::NO_SUCH_VOLUME.0].contains(&r.code) {
            return Err(self.found_barren(uid, vol, addr));
        }
        Ok(r)
    }

    /// Whether the cell removed `vol`: every replica's server knows no
    /// such volume. Were it taken for a replica not filled yet, the volume
    /// would be emulated from the cache, and updates logged that no server
    /// can ever take. One server alone may just have lost its disk (and
    /// the cell's directory with it): all must say so.
    fn removed(&mut self, vol: VolumeId) -> bool {
        let targets: Vec<SocketAddr> = self.replicas_of(vol).into_iter().map(|(_, a)| a).collect();
        if targets.iter().any(|a| self.down.contains(a)) {
            return false;
        }
        let body = codec::to_bytes(&VolumeRef::Id(vol));
        let got = crate::link::multi_call(
            &self.link,
            &targets,
            Principal::Anyone,
            None,
            vice::SUBSYSTEM,
            op::GET_VOLUME_INFO,
            &body,
            targets.iter().map(|_| None).collect(),
            crate::replica::REPLICA_GRACE,
        );
        let mut unknown = 0;
        for r in got.into_iter().flatten().flatten() {
            if r.code == Errno::NO_SUCH_VOLUME.0 {
                unknown += 1;
            } else if let Ok(info) = decode_reply::<VolumeInfo>(&r) {
                // Its replicas may have moved meanwhile.
                if let Err(e) = self.put_volume(info) {
                    tracing::warn!("volume {vol:x}: {e}");
                }
                return false;
            }
        }
        let gone = unknown == targets.len();
        if gone {
            self.emit("volume", format!("volume {vol:x} was removed"));
        }
        gone
    }

    /// Whether `addr`'s replica of `vol` was found barren lately.
    fn is_barren(&self, vol: VolumeId, addr: SocketAddr) -> bool {
        self.barren
            .get(&(vol, addr))
            .is_some_and(|t| t.elapsed() < BARREN_RETRY)
    }

    /// `addr`'s replica of `vol` is empty until resolution fills it: it is
    /// asked to resolve, and read from no more for a while. The operation
    /// runs again (a loss, as [`Venus::losses`] counts them): on another
    /// replica, or, if none may serve, emulated from the cache.
    fn found_barren(&mut self, uid: u32, vol: VolumeId, addr: SocketAddr) -> Errno {
        self.barren.retain(|_, t| t.elapsed() < BARREN_RETRY);
        self.barren.insert((vol, addr), Instant::now());
        self.preferred.remove(&vol);
        let (who, creds) = self.who(uid);
        self.notifier.resolve(who, creds.cloned(), vol, addr);
        self.losses += 1;
        self.emit(
            "replica",
            format!("volume {vol:x}: {addr} is not filled yet; read elsewhere"),
        );
        Errno::ETIMEDOUT
    }

    /// Calls one server (one replica of a volume) for `uid`.
    pub(crate) fn call_at(
        &mut self,
        uid: u32,
        addr: SocketAddr,
        opcode: u16,
        body: bytes::Bytes,
        side_effect: Option<SideEffect>,
    ) -> Result<coda_rpc2::endpoint::Reply> {
        if self.forced || self.down.contains(&addr) {
            return Err(Errno::ETIMEDOUT);
        }
        let (who, creds) = self.who(uid);
        let creds = creds.cloned();
        let rebinds = self.link.rebinds();
        let result = self.link.call(
            addr,
            who,
            creds.as_ref(),
            vice::SUBSYSTEM,
            opcode,
            body,
            side_effect,
        );
        if self.link.rebinds() != rebinds {
            // The server forgot us (it restarted): its promises are gone.
            self.invalidate_all();
            self.emit(
                "reconnect",
                format!("{addr} bound again; revalidating the cache"),
            );
        }
        result.map_err(|e| self.lost(e))
    }

    /// Contact with a server broke: its promises are gone, and a server
    /// that stopped answering has its volumes emulated from now on.
    fn lost(&mut self, e: LinkError) -> Errno {
        tracing::warn!("{e}");
        self.invalidate_all();
        if e.rebound() {
            self.emit("disconnect", e.to_string());
            return Errno::EAGAIN;
        }
        let errno = e.errno();
        if errno == Errno::ETIMEDOUT && self.mark_down(e.addr) {
            self.emit(
                "disconnect",
                format!("{}: {}; its volumes are disconnected", e.addr, e.error),
            );
        }
        errno
    }

    /// Leaves `addr` out until a probe finds it again (false if it was
    /// already): its promises are gone with it.
    fn mark_down(&mut self, addr: SocketAddr) -> bool {
        if !self.down.insert(addr) {
            return false;
        }
        self.losses += 1;
        self.invalidate_all();
        true
    }

    /// How many times a server was found gone so far. An operation that
    /// failed with a timeout while this grew can be run again: it then
    /// goes to another replica, or is served from the cache.
    pub fn losses(&self) -> u64 {
        self.losses
    }

    /// Whether the cache holds the only copy of a change to `fid` (in the
    /// log, or in conflict): never validated, refetched or evicted.
    pub fn held(&self, fid: Fid) -> bool {
        self.cml.dirty(fid) || self.cache.conflicts.contains_key(&fid)
    }

    /// Where calls of `uid` for `vol` go.
    pub fn route(&mut self, uid: u32, vol: VolumeId) -> Result<Route> {
        let addr = self.server_of(vol)?;
        if self.forced || self.down.contains(&addr) {
            return Err(Errno::ETIMEDOUT);
        }
        let (who, creds) = self.who(uid);
        Ok(Route {
            addr,
            who,
            creds: creds.cloned(),
        })
    }

    pub fn transport(&self) -> Arc<dyn Transport> {
        self.link.clone()
    }

    /// Whether `uid` has a token that has not expired.
    pub fn has_token(&self, uid: u32) -> bool {
        self.who(uid).1.is_some()
    }

    /// Where a cached object is named: its directory and a name.
    pub fn name_of(&self, fid: Fid) -> Option<(Fid, String)> {
        let named_in = |dir: Fid| {
            let entries = self.cache.dirs.get(&dir)?;
            let (name, _) = entries.iter().find(|(_, (_, f))| *f == fid)?;
            Some((dir, name.clone()))
        };
        let parent = self
            .cache
            .objs
            .get(&fid)
            .and_then(|o| Some(o.rec.status.as_ref()?.parent));
        // Without its status (an object whose status it refused, say),
        // any cached directory naming it.
        parent
            .and_then(named_in)
            .or_else(|| self.cache.dirs.keys().find_map(|d| named_in(*d)))
    }

    /// A cached object's path below the mount, as far as the cache knows.
    pub fn path_of(&self, fid: Fid) -> Option<std::path::PathBuf> {
        let mut names = Vec::new();
        let mut at = fid;
        while at != self.root {
            let (dir, name) = self.name_of(at)?;
            names.push(name);
            at = dir;
            if names.len() > 4096 {
                return None;
            }
        }
        Some(names.iter().rev().collect())
    }

    /// Has the kernel forget what it cached of these objects (a repair
    /// replaced them): queued as a break, for the callback thread.
    pub fn kernel_forget(&mut self, fids: &[Fid]) {
        self.breaks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Break {
                fids: fids.to_vec(),
                volumes: Vec::new(),
            });
        if let Some(k) = &self.kick {
            let _ = k.send(());
        }
    }

    /// Objects made here took real fids: so do their open handles.
    pub fn remapped(&mut self, remaps: &HashMap<Fid, Fid>) {
        for h in self.handles.values_mut() {
            if let Some(real) = remaps.get(&h.fid) {
                h.fid = *real;
            }
        }
    }

    /// Objects whose status a cancelled record turned back are asked for
    /// again once their volume is reintegrated.
    pub fn refresh_stale(&mut self, vol: VolumeId) {
        let stale: Vec<Fid> = self
            .cml
            .stale
            .iter()
            .copied()
            .filter(|f| f.volume == vol && !f.is_local())
            .collect();
        for fid in stale {
            self.cml.stale.remove(&fid);
            if self.cache.objs.contains_key(&fid) {
                if let Err(e) = self.refresh(0, fid) {
                    tracing::debug!("{fid}: {e}");
                }
            }
        }
    }

    /// Whether `vol` is emulated: its server is out of reach (or
    /// disconnection is forced).
    pub fn disconnected(&self, vol: VolumeId) -> bool {
        if self.forced {
            return true;
        }
        match self.cache.volumes.get(&vol) {
            // Only once every replica is out of reach (or not filled yet).
            Some((_, info)) => {
                let reps = volume::replicas(info);
                !reps.is_empty()
                    && reps
                        .iter()
                        .all(|(_, a)| self.down.contains(a) || self.is_barren(vol, *a))
            }
            None => self.servers.iter().all(|a| self.down.contains(a)),
        }
    }

    /// Whether updates to `vol` are logged rather than shipped: it is
    /// emulated or write-disconnected, or its log is not empty yet.
    pub fn logging(&self, vol: VolumeId) -> bool {
        self.write_disconnected || self.disconnected(vol) || self.cml.records.contains_key(&vol)
    }

    /// How many records of `vol` the CML holds, and their encoded bytes.
    pub fn cml_records(&self, vol: VolumeId) -> (u64, u64) {
        self.cache
            .cml
            .values()
            .filter(|(_, e)| e.record.op.volume() == vol)
            .fold((0, 0), |(n, b), (_, e)| {
                (n + 1, b + codec::to_bytes(&e.record).len() as u64)
            })
    }

    /// A volume's state as `cfs listvol` shows it.
    pub fn volume_state(&self, vol: VolumeId) -> volume::State {
        if self.reintegrating == Some(vol) {
            volume::State::Reintegrating
        } else if self.disconnected(vol) {
            volume::State::Emulating
        } else if self.write_disconnected {
            volume::State::WriteDisconnected
        } else {
            volume::State::Hoarding
        }
    }

    /// Our own change moved the volume's stamp on: it vouches for nothing.
    pub(crate) fn untrust(&mut self, vol: VolumeId) {
        if let Some((_, info)) = self.cache.volumes.get(&vol) {
            if info.stamp != volume::UNTRUSTED {
                let mut info = info.clone();
                info.stamp = volume::UNTRUSTED;
                if let Err(e) = self.cache.put_volume(info) {
                    tracing::error!("cache: {e}");
                }
            }
        }
    }

    fn invalidate_all(&mut self) {
        for o in self.cache.objs.values_mut() {
            o.valid = false;
        }
    }

    /// A call that is repeated once if the server had forgotten the
    /// connection (a fresh side effect is made for the repeat).
    pub(crate) fn call_retry<T: codec::Decode>(
        &mut self,
        uid: u32,
        vol: VolumeId,
        opcode: u16,
        body: bytes::Bytes,
        mut effect: impl FnMut(&mut Venus) -> Result<Option<SideEffect>>,
    ) -> Result<(T, coda_rpc2::endpoint::Reply)> {
        if opcode == op::STAGE && self.is_replicated(vol) {
            return self.call_replicas(uid, vol, opcode, body, None, effect);
        }
        let mut again = true;
        loop {
            let se = effect(self)?;
            match self.call(uid, vol, opcode, body.clone(), se) {
                Err(Errno::EAGAIN) if again => again = false,
                Err(e) => return Err(e),
                Ok(r) => {
                    let t = decode_reply(&r)?;
                    return Ok((t, r));
                }
            }
        }
    }

    /// An update (record `update`, or a batch by its id): to every
    /// reachable replica of a replicated volume, else as [`Self::call_retry`].
    pub(crate) fn call_update<T: codec::Decode>(
        &mut self,
        uid: u32,
        vol: VolumeId,
        opcode: u16,
        body: bytes::Bytes,
        update: StoreId,
        effect: impl FnMut(&mut Venus) -> Result<Option<SideEffect>>,
    ) -> Result<(T, coda_rpc2::endpoint::Reply)> {
        if self.is_replicated(vol) {
            return self.call_replicas(uid, vol, opcode, body, Some(update), effect);
        }
        self.call_retry(uid, vol, opcode, body, effect)
    }

    /// Each server of a volume (replica, in slot order) as seen from here.
    pub fn replica_states(&self, info: &VolumeInfo) -> Vec<coda_proto::control::ReplicaState> {
        let replicated = volume::replicated(info);
        info.servers
            .iter()
            .map(|s| {
                let addr: Option<SocketAddr> = s.parse().ok();
                let up = addr.is_some_and(|a| !self.forced && !self.down.contains(&a));
                let read = match replicated {
                    true => addr.is_some() && self.preferred.get(&info.id) == addr.as_ref(),
                    false => true,
                };
                coda_proto::control::ReplicaState {
                    server: s.clone(),
                    up,
                    read,
                }
            })
            .collect()
    }

    /// Each replica of a cached volume, by slot.
    pub(crate) fn replicas_of(&self, vol: VolumeId) -> Vec<(u32, SocketAddr)> {
        self.cache
            .volumes
            .get(&vol)
            .map(|(_, info)| volume::replicas(info))
            .unwrap_or_default()
    }

    fn is_replicated(&self, vol: VolumeId) -> bool {
        self.cache
            .volumes
            .get(&vol)
            .is_some_and(|(_, info)| volume::replicated(info))
    }

    /// COP1: the call to every reachable replica at once, each with its own
    /// side effect; a replica that had forgotten the connection is called
    /// once more. The update stands if any replica applied it (the others
    /// catch up by resolution); those that did hear of each other by COP2.
    fn call_replicas<T: codec::Decode>(
        &mut self,
        uid: u32,
        vol: VolumeId,
        opcode: u16,
        body: bytes::Bytes,
        update: Option<StoreId>,
        mut effect: impl FnMut(&mut Venus) -> Result<Option<SideEffect>>,
    ) -> Result<(T, coda_rpc2::endpoint::Reply)> {
        let reps = self.replicas_of(vol);
        let (who, creds) = self.who(uid);
        let creds = creds.cloned();
        let mut targets: Vec<(u32, SocketAddr)> = reps
            .into_iter()
            .filter(|(_, a)| !self.forced && !self.down.contains(a) && !self.is_barren(vol, *a))
            .collect();
        // COP2s waiting for this volume ride along.
        let addrs: Vec<SocketAddr> = targets.iter().map(|(_, a)| *a).collect();
        let (opcode, body) = match self.notifier.piggy(who, vol, &addrs) {
            Some(cop2) => (
                op::WITH_COP2,
                codec::to_bytes(&coda_proto::res::WithCop2 { cop2, opcode, body }),
            ),
            None => (opcode, body),
        };
        let mut answers: Vec<((u32, SocketAddr), crate::link::Answer)> = Vec::new();
        for _attempt in 0..2 {
            if targets.is_empty() {
                break;
            }
            let mut effects = Vec::with_capacity(targets.len());
            for _ in &targets {
                effects.push(effect(self)?);
            }
            let addrs: Vec<SocketAddr> = targets.iter().map(|(_, a)| *a).collect();
            let rebinds = self.link.rebinds();
            let got = crate::link::multi_call(
                &self.link,
                &addrs,
                who,
                creds.as_ref(),
                vice::SUBSYSTEM,
                opcode,
                &body,
                effects,
                crate::replica::REPLICA_GRACE,
            );
            if self.link.rebinds() != rebinds {
                self.invalidate_all();
            }
            let mut again = Vec::new();
            for (t, a) in targets.into_iter().zip(got) {
                let Some(a) = a else {
                    // Too slow: left out until a probe finds it again.
                    if self.mark_down(t.1) {
                        self.emit(
                            "disconnect",
                            format!("{}: too slow to answer; left out of updates", t.1),
                        );
                    }
                    continue;
                };
                match a {
                    Err(e) if e.rebound() => {
                        tracing::info!("{e}; binding again");
                        again.push(t);
                        answers.push((t, Err(e)));
                    }
                    a => answers.push((t, a)),
                }
            }
            answers.retain(|(t, a)| !(again.contains(t) && a.is_err()));
            targets = again;
        }
        if answers.is_empty() {
            return Err(Errno::ETIMEDOUT);
        }
        let (slots, got): (Vec<_>, Vec<_>) = answers.into_iter().unzip();
        // Lost replicas are marked down; the others carry on.
        let got: Vec<crate::link::Answer> = got
            .into_iter()
            .map(|a| match a {
                Err(e) if e.errno() == Errno::ETIMEDOUT && !e.rebound() => {
                    let errno = self.lost(crate::link::LinkError {
                        addr: e.addr,
                        error: e.error.clone(),
                    });
                    debug_assert_eq!(errno, Errno::ETIMEDOUT);
                    Err(e)
                }
                a => a,
            })
            .collect();
        let out = crate::replica::outcome(&slots, got);
        if let (Some(update), false) = (update, out.applied.is_empty()) {
            self.notifier
                .cop2(who, creds.clone(), vol, update, out.applied.clone());
        }
        let all_applied = out.applied.len() == slots.len();
        if out.differ || (!out.applied.is_empty() && !all_applied) {
            // Some refused what others applied: they differ now.
            if let Some(&(_, at)) = out.applied.first() {
                self.notifier.resolve(who, creds.clone(), vol, at);
            }
        }
        let r = out.reply.map_err(|e| self.lost(e))?;
        let t = decode_reply(&r)?;
        Ok((t, r))
    }

    /// A server that answers again may hold stale replicas: each
    /// replicated volume it serves is resolved.
    fn resolve_returned(&mut self, addr: SocketAddr) {
        let Some((who, creds)) = self
            .tokens
            .values()
            .find(|t| t.grant.expires_at > unix_now())
            .map(|t| (Principal::User(t.grant.user_id), t.creds.clone()))
        else {
            // With no token to ask as, the servers' own sweep does it.
            return;
        };
        let vols: Vec<VolumeId> = self
            .cache
            .volumes
            .values()
            .filter(|(_, info)| {
                volume::replicated(info) && volume::replicas(info).iter().any(|(_, a)| *a == addr)
            })
            .map(|(_, info)| info.id)
            .collect();
        for vol in vols {
            self.notifier.resolve(who, Some(creds.clone()), vol, addr);
        }
    }

    /// A fresh store id: never repeated by this cache, even across
    /// restarts (the clock moves on), and rising, as batches must.
    pub(crate) fn store_id(&mut self) -> StoreId {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.last_sid = (self.last_sid + 1).max(micros);
        StoreId {
            host: self.cache.host,
            unique: self.last_sid,
        }
    }

    /// A made-up fid for an object this client creates; the server gives
    /// it a real one.
    pub(crate) fn local_fid(&mut self, vol: VolumeId) -> Fid {
        let sid = self.store_id();
        Fid::new(
            vol,
            LOCAL_VNODE_BASE | (sid.unique & (LOCAL_VNODE_BASE - 1)),
            sid.unique,
        )
    }

    // ---- events ----

    pub fn listen(&mut self) -> std::sync::mpsc::Receiver<Event> {
        let (tx, rx) = std::sync::mpsc::channel();
        self.listeners.push(tx);
        rx
    }

    pub fn emit(&mut self, kind: &str, text: String) {
        tracing::info!("{kind}: {text}");
        let e = Event {
            time: unix_now(),
            kind: kind.into(),
            text,
        };
        self.listeners.retain(|l| l.send(e.clone()).is_ok());
    }

    // ---- objects ----

    pub fn fid_of(&self, ino: u64) -> Result<Fid> {
        if ino == ROOT_INO {
            return Ok(self.root);
        }
        self.cache.inos.get(&ino).copied().ok_or(Errno::ENOENT)
    }

    fn touch(&mut self, fid: Fid) {
        self.tick += 1;
        if let Some(o) = self.cache.objs.get_mut(&fid) {
            o.last_used = self.tick;
        }
    }

    /// Validates what is cached of `vol` in one call per thousand objects,
    /// or in one call by the volume's stamp when that vouches for it all.
    fn validate_volume(&mut self, uid: u32, vol: VolumeId) -> Result<()> {
        let stamp = self
            .cache
            .volumes
            .get(&vol)
            .map_or(volume::UNTRUSTED, |(_, v)| v.stamp);
        let cached: Vec<(Fid, StoreId, bool)> = self
            .cache
            .objs
            .values()
            // Objects changed in the log are the log's until reintegrated.
            .filter(|o| o.fid().volume == vol && !o.fid().is_local() && !self.held(o.fid()))
            .filter_map(|o| {
                let s = o.rec.status.as_ref()?;
                Some((o.fid(), s.vv.store_id, o.valid))
            })
            .collect();
        let stale = cached.iter().filter(|c| !c.2).count();
        if stale == 0 {
            return Ok(());
        }
        if stamp != volume::UNTRUSTED {
            let req = ValidateAttrs {
                volumes: vec![(vol, stamp)],
                fids: Vec::new(),
            };
            let (reply, _): (ValidateAttrsReply, _) =
                self.call_retry(uid, vol, op::VALIDATE_ATTRS, codec::to_bytes(&req), |_| {
                    Ok(None)
                })?;
            if reply.volumes.first() == Some(&true) {
                for o in self.cache.objs.values_mut() {
                    if o.fid().volume == vol && o.rec.status.is_some() {
                        o.valid = true;
                    }
                }
                return Ok(());
            }
            self.untrust(vol);
        }
        // When most of the volume is stale (contact broke, or Venus
        // restarted), everything is checked, so that a stamp taken before
        // the check can vouch for the volume from then on: if it is still
        // the server's at the last call, nothing changed in between.
        let whole = stale * 2 >= cached.len();
        let candidate = if whole {
            Some(self.fresh_stamp(uid, vol)?)
        } else {
            None
        };
        let check: Vec<(Fid, StoreId)> = cached
            .iter()
            .filter(|c| whole || !c.2)
            .map(|c| (c.0, c.1))
            .collect();
        let chunks = check.len().div_ceil(VALIDATE_BATCH);
        let mut all_valid = true;
        for (i, chunk) in check.chunks(VALIDATE_BATCH).enumerate() {
            let last = i + 1 == chunks;
            let req = ValidateAttrs {
                volumes: match candidate {
                    Some(c) if last => vec![(vol, c)],
                    _ => Vec::new(),
                },
                fids: chunk.to_vec(),
            };
            let (reply, _): (ValidateAttrsReply, _) =
                self.call_retry(uid, vol, op::VALIDATE_ATTRS, codec::to_bytes(&req), |_| {
                    Ok(None)
                })?;
            for ((fid, _), ok) in chunk.iter().zip(&reply.fids) {
                all_valid &= *ok;
                if let Some(o) = self.cache.objs.get_mut(fid) {
                    o.valid = *ok;
                }
            }
            all_valid &= reply.fids.len() == chunk.len();
            if let (Some(c), true, Some(true)) = (candidate, last, reply.volumes.first()) {
                if all_valid {
                    self.trust(vol, c)?;
                }
            }
        }
        Ok(())
    }

    /// The volume's current stamp, and where it is served now.
    fn fresh_stamp(&mut self, uid: u32, vol: VolumeId) -> Result<u64> {
        let (info, _): (VolumeInfo, _) = self.call_retry(
            uid,
            vol,
            op::GET_VOLUME_INFO,
            codec::to_bytes(&VolumeRef::Id(vol)),
            |_| Ok(None),
        )?;
        let stamp = info.stamp;
        self.put_volume(info)?;
        Ok(stamp)
    }

    /// Everything cached of `vol` was found current at `stamp`.
    fn trust(&mut self, vol: VolumeId, stamp: u64) -> Result<()> {
        if let Some((_, info)) = self.cache.volumes.get(&vol) {
            let mut info = info.clone();
            info.stamp = stamp;
            self.cache.put_volume(info)?;
            self.emit(
                "validate",
                format!("volume {vol:#x} vouched for by stamp {stamp}"),
            );
        }
        Ok(())
    }

    /// Applies the breaks answered since the last call (the kernel forgot
    /// their attributes already). Returns the inodes whose cached pages the
    /// kernel should drop and the directories to refetch, broken since the
    /// last call.
    pub fn apply_breaks(&mut self) -> (Vec<u64>, Vec<Fid>) {
        self.note_breaks();
        (
            std::mem::take(&mut self.inos_broken),
            std::mem::take(&mut self.dirs_broken),
        )
    }

    fn note_breaks(&mut self) {
        let breaks = std::mem::take(&mut *self.breaks.lock().unwrap_or_else(|p| p.into_inner()));
        for b in breaks {
            let (inos, dirs) = self.broken(&b.fids, &b.volumes);
            self.inos_broken.extend(inos);
            self.dirs_broken.extend(dirs);
        }
    }

    /// The object's status, current (validated or fetched) for `uid`; or
    /// as cached, while its volume is emulated or the log holds changes to
    /// it the server has not seen.
    fn status(&mut self, uid: u32, fid: Fid) -> Result<Status> {
        self.note_breaks();
        let local = |v: &Venus| {
            let o = v.cache.objs.get(&fid)?;
            let s = o.rec.status.as_ref()?;
            (v.disconnected(fid.volume) || v.held(fid)).then(|| s.clone())
        };
        if self.cache.conflicts.contains_key(&fid) && !self.repairing {
            // Until `repair` settles which version it is.
            return Err(Errno::EIO);
        }
        let s = match local(self) {
            Some(s) => {
                self.touch(fid);
                s
            }
            None => match self.status_from_server(uid, fid) {
                // The server just went away: what is cached serves.
                Err(Errno::ETIMEDOUT) => local(self).ok_or(Errno::ETIMEDOUT)?,
                r => r?,
            },
        };
        if s.vv.is_inconsistent() {
            self.diverged.insert(fid);
            if !self.repairing {
                // Until `repair` settles which replica's version it is.
                return Err(Errno::EIO);
            }
        } else {
            self.diverged.remove(&fid);
        }
        Ok(s)
    }

    fn status_from_server(&mut self, uid: u32, fid: Fid) -> Result<Status> {
        let key = self.rights_key(uid);
        let need = |v: &Venus| {
            v.cache
                .objs
                .get(&fid)
                .is_none_or(|o| !o.valid || o.rec.status.is_none() || o.rights_of(key).is_none())
        };
        if self
            .cache
            .objs
            .get(&fid)
            .is_some_and(|o| !o.valid && o.rec.status.is_some())
        {
            self.validate_volume(uid, fid.volume)?;
        }
        if need(self) {
            let (status, _): (Status, _) = self.call_retry(
                uid,
                fid.volume,
                op::GET_ATTR,
                codec::to_bytes(&vice::GetAttr { fid }),
                |_| Ok(None),
            )?;
            self.take_status(fid, status, key)?;
        }
        self.touch(fid);
        let o = &self.cache.objs[&fid];
        Ok(o.rec.status.clone().expect("status just made current"))
    }

    /// Fetches an object's status afresh.
    pub(crate) fn refresh(&mut self, uid: u32, fid: Fid) -> Result<()> {
        if let Some(o) = self.cache.objs.get_mut(&fid) {
            o.valid = false;
            o.forget_rights(None);
        }
        self.status(uid, fid).map(|_| ())
    }

    /// Records a status from a server.
    pub(crate) fn take_status(&mut self, fid: Fid, status: Status, key: Option<i32>) -> Result<()> {
        let root = fid == self.root;
        let o = self.cache.obj_or_new(fid, status.kind, root);
        if o.take_status(status, key) {
            self.cache.save(fid)?;
        }
        Ok(())
    }

    fn rights(&mut self, uid: u32, fid: Fid) -> Result<(Status, Rights)> {
        let s = self.status(uid, fid)?;
        let key = self.rights_key(uid);
        let o = &self.cache.objs[&fid];
        // Emulated, rights never asked for are anyone's.
        let r = o
            .rights_of(key)
            .or_else(|| o.rights_of(None))
            .unwrap_or(Rights::NONE);
        Ok((s, r))
    }

    fn may_read(&mut self, uid: u32, fid: Fid) -> Result<Status> {
        let (s, r) = self.rights(uid, fid)?;
        let user = self.rights_key(uid);
        let ok = match s.kind {
            VnodeKind::Directory => r.contains(Rights::LOOKUP),
            _ => r.contains(Rights::READ) && (s.mode & 0o400 != 0 || user == Some(s.owner as i32)),
        };
        ok.then_some(s).ok_or(Errno::EACCES)
    }

    /// Snapshots (clones, backups) take no update: refused before
    /// anything is written, cached or logged.
    pub(crate) fn writable(&self, vol: VolumeId) -> Result<()> {
        match self.cache.volumes.get(&vol) {
            Some((_, i))
                if matches!(
                    i.kind,
                    vice::VolumeKind::ReadOnly | vice::VolumeKind::Backup
                ) =>
            {
                Err(Errno::EROFS)
            }
            _ => Ok(()),
        }
    }

    fn may_write(&mut self, uid: u32, fid: Fid) -> Result<Status> {
        self.writable(fid.volume)?;
        let (s, r) = self.rights(uid, fid)?;
        let user = self.rights_key(uid);
        let ok = r.contains(Rights::WRITE) && (s.mode & 0o200 != 0 || user == Some(s.owner as i32));
        ok.then_some(s).ok_or(Errno::EACCES)
    }

    /// Makes the object's data (contents, entries, target) current.
    fn data(&mut self, uid: u32, fid: Fid) -> Result<()> {
        let status = self.may_read(uid, fid)?;
        if self.cache.objs[&fid].has_data() {
            return Ok(());
        }
        if self.held(fid) {
            // The server's version is older than the logged change.
            return Err(Errno::ETIMEDOUT);
        }
        let key = self.rights_key(uid);
        let req = codec::to_bytes(&vice::Fetch { fid, offset: 0 });
        match status.kind {
            VnodeKind::File => {
                let mut made = None;
                let fetched = self.call_retry::<Status>(uid, fid.volume, op::FETCH, req, |v| {
                    if let Some(id) = made.take() {
                        v.cache.drop_container(id);
                    }
                    let (id, file) = v.cache.containers.create().map_err(|_| Errno::EIO)?;
                    made = Some(id);
                    Ok(Some(SideEffect::Receive(Sink::File(file))))
                });
                let id = made.expect("a container was made");
                let (status, _) = match fetched {
                    Ok(x) => x,
                    Err(e) => {
                        self.cache.drop_container(id);
                        return Err(e);
                    }
                };
                let len = std::fs::metadata(self.cache.containers.path(id)).map_or(0, |m| m.len());
                if len != status.length {
                    // A short transfer: never cache a partial file.
                    tracing::warn!("{fid}: fetched {len} bytes of {}", status.length);
                    self.cache.drop_container(id);
                    return Err(Errno::EIO);
                }
                self.cache.bytes += len;
                let sid = status.vv.store_id;
                self.take_status(fid, status, key)?;
                let o = self.cache.objs.get_mut(&fid).expect("status taken");
                let old = std::mem::replace(&mut o.rec.container, id);
                o.rec.data = Some(sid);
                self.cache.save(fid)?;
                self.cache.drop_container(old);
                // Not the file just fetched: it is about to be used, even
                // if it alone is more than the cache holds.
                self.evict(Some(fid))?;
            }
            VnodeKind::Directory | VnodeKind::Symlink => {
                let (status, reply) =
                    self.call_retry::<Status>(uid, fid.volume, op::FETCH, req, |_| {
                        Ok(Some(SideEffect::Receive(Sink::memory(LISTING_BYTES_MAX))))
                    })?;
                let bytes = reply.sink.map(Sink::into_bytes).unwrap_or_default();
                let sid = status.vv.store_id;
                let kind = status.kind;
                self.take_status(fid, status, key)?;
                if kind == VnodeKind::Directory {
                    let listing: Vec<DirEntry> =
                        codec::from_bytes(&bytes).map_err(|_| Errno::EIO)?;
                    self.cache.set_entries(fid, &listing)?;
                } else {
                    let target = String::from_utf8(bytes).map_err(|_| Errno::EIO)?;
                    self.cache
                        .objs
                        .get_mut(&fid)
                        .expect("status taken")
                        .rec
                        .target = target;
                }
                self.cache
                    .objs
                    .get_mut(&fid)
                    .expect("status taken")
                    .rec
                    .data = Some(sid);
                self.cache.save(fid)?;
            }
        }
        self.fetches += 1;
        Ok(())
    }

    /// Gives the objects a hoard walk covers their priorities (and takes
    /// them from those it no longer covers).
    pub fn set_hoard_priorities(&mut self, wanted: &HashMap<Fid, (u32, u32)>) {
        let changed: Vec<Fid> = self
            .cache
            .objs
            .values_mut()
            .filter_map(|o| {
                let p = wanted.get(&o.fid()).map_or(0, |w| w.0);
                (o.rec.hoard != p).then(|| {
                    o.rec.hoard = p;
                    o.fid()
                })
            })
            .collect();
        for fid in changed {
            if let Err(e) = self.cache.save(fid) {
                tracing::error!("cache: {e}");
            }
        }
    }

    /// Makes an object's status and data current (a hoard walk); the
    /// bytes fetched.
    pub fn make_current(&mut self, uid: u32, fid: Fid) -> Result<u64> {
        let before = self.cache.bytes;
        self.status(uid, fid)?;
        self.data(uid, fid)?;
        Ok(self.cache.bytes.saturating_sub(before))
    }

    /// A directory's entries (made current): fid and kind.
    pub fn children(&mut self, uid: u32, dir: Fid) -> Result<Vec<(Fid, VnodeKind)>> {
        if self.status(uid, dir)?.kind != VnodeKind::Directory {
            return Ok(Vec::new());
        }
        self.data(uid, dir)?;
        Ok(self
            .cache
            .dirs
            .get(&dir)
            .map(|e| {
                e.values()
                    .filter_map(|(_, f)| Some((*f, self.cache.objs.get(f)?.rec.kind)))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Logged updates need room in the cache (they cannot be evicted until
    /// reintegrated): a new one is refused when it is full.
    fn room(&mut self, vol: VolumeId) -> Result<()> {
        if !self.logging(vol) {
            return Ok(());
        }
        self.evict(None)?;
        if self.cache.bytes >= self.cache_limit {
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }

    /// Evicts the least recently used clean, closed files until the cache
    /// fits its limit.
    fn evict(&mut self, keep: Option<Fid>) -> Result<()> {
        if self.cache.bytes <= self.cache_limit {
            return Ok(());
        }
        // Coda's replacement priority: three parts hoard priority, one
        // part recent use; the lowest goes first.
        let tick = self.tick.max(1) as f64;
        let mut victims: Vec<(u64, Fid)> = self
            .cache
            .objs
            .values()
            .filter(|o| o.rec.container != container::NONE && o.opens == 0)
            .filter(|o| Some(o.fid()) != keep && !self.held(o.fid()))
            .map(|o| {
                let hoard = f64::from(o.rec.hoard) / f64::from(crate::hoard::PRIORITY_MAX);
                let recent = o.last_used as f64 / tick;
                ((1e9 * (0.75 * hoard + 0.25 * recent)) as u64, o.fid())
            })
            .collect();
        victims.sort();
        for (_, fid) in victims {
            if self.cache.bytes <= self.cache_limit {
                break;
            }
            let o = self.cache.objs.get_mut(&fid).expect("listed");
            let id = std::mem::replace(&mut o.rec.container, container::NONE);
            o.rec.data = None;
            self.cache.save(fid)?;
            self.cache.drop_container(id);
        }
        Ok(())
    }

    fn attr(&self, fid: Fid) -> Result<Attr> {
        let o = self.cache.objs.get(&fid).ok_or(Errno::ENOENT)?;
        let s = o.rec.status.as_ref().ok_or(Errno::EIO)?;
        let mut a = Attr {
            ino: o.rec.ino,
            kind: s.kind,
            mode: s.mode & 0o7777,
            uid: s.owner,
            gid: s.group,
            size: s.length,
            mtime: s.mtime,
            ctime: s.ctime,
            atime: s.atime,
            // Unlinked while open: no name holds it any more.
            nlink: if o.orphan { 0 } else { s.link_count.max(1) },
        };
        if o.writers > 0 && o.rec.container != container::NONE && o.has_data() {
            // Writes go straight to the container: it is the truth now
            // (unless the server has a newer version than it holds).
            if let Ok(m) = std::fs::metadata(self.cache.containers.path(o.rec.container)) {
                a.size = m.len();
                a.mtime = ts_of(m.mtime(), m.mtime_nsec());
                a.ctime = a.ctime.max(ts_of(m.ctime(), m.ctime_nsec()));
            }
        }
        if s.kind == VnodeKind::Directory {
            a.nlink = a.nlink.max(2);
        }
        Ok(a)
    }

    // ---- the API ----

    pub fn getattr(&mut self, uid: u32, ino: u64) -> Result<Attr> {
        let fid = self.fid_of(ino)?;
        self.status(uid, fid)?;
        self.attr(fid)
    }

    /// The fid `name` names in the directory `dir`.
    fn entry(&mut self, uid: u32, dir: Fid, name: &str) -> Result<Fid> {
        if name.len() > vice::NAME_BYTES_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let s = self.status(uid, dir)?;
        if s.kind != VnodeKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        self.data(uid, dir)?;
        self.cache
            .dirs
            .get(&dir)
            .and_then(|e| e.get(name))
            .map(|(_, f)| *f)
            .ok_or(Errno::ENOENT)
    }

    pub fn lookup(&mut self, uid: u32, parent: u64, name: &str) -> Result<Attr> {
        let dir = self.fid_of(parent)?;
        let fid = self.entry(uid, dir, name)?;
        self.status(uid, fid)?;
        self.attr(fid)
    }

    /// The entries of a directory: name, inode, kind.
    pub fn readdir(&mut self, uid: u32, ino: u64) -> Result<Vec<(String, u64, VnodeKind)>> {
        let dir = self.fid_of(ino)?;
        self.data(uid, dir)?;
        let parent = self.cache.objs[&dir]
            .rec
            .status
            .as_ref()
            .map_or(dir, |s| s.parent);
        let parent_ino = self.cache.objs.get(&parent).map_or(ino, |o| o.rec.ino);
        let mut out = vec![
            (".".to_string(), ino, VnodeKind::Directory),
            ("..".to_string(), parent_ino, VnodeKind::Directory),
        ];
        if let Some(entries) = self.cache.dirs.get(&dir) {
            for (name, (_, fid)) in entries {
                if let Some(o) = self.cache.objs.get(fid) {
                    out.push((name.clone(), o.rec.ino, o.rec.kind));
                }
            }
        }
        Ok(out)
    }

    /// Opens a directory: its listing is taken now, so reading it in
    /// pieces sees one consistent list.
    pub fn open_dir(&mut self, uid: u32, ino: u64) -> Result<u64> {
        let listing = self.readdir(uid, ino)?;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.listings.insert(fh, listing);
        Ok(fh)
    }

    pub fn listing(&self, fh: u64) -> Result<&[(String, u64, VnodeKind)]> {
        self.listings
            .get(&fh)
            .map(Vec::as_slice)
            .ok_or(Errno::EBADF)
    }

    pub fn close_dir(&mut self, fh: u64) {
        self.listings.remove(&fh);
    }

    pub fn readlink(&mut self, uid: u32, ino: u64) -> Result<String> {
        let fid = self.fid_of(ino)?;
        let s = self.status(uid, fid)?;
        if s.kind != VnodeKind::Symlink {
            return Err(Errno::EINVAL);
        }
        self.data(uid, fid)?;
        Ok(self.cache.objs[&fid].rec.target.clone())
    }

    /// Opens a file: fetched whole if absent or stale. Returns the handle
    /// and the container for the kernel.
    /// Opens a file. With `keep`, a file open here already keeps the
    /// version it has even if the server has a newer one (the kernel
    /// cannot take the newer one while the older is open).
    pub fn open(
        &mut self,
        uid: u32,
        ino: u64,
        write: bool,
        truncate: bool,
        keep: bool,
    ) -> Result<(u64, Arc<File>)> {
        self.open_as(uid, ino, write, truncate, false, keep)
    }

    /// Whether the cached data of a file is the server's version.
    pub fn current(&mut self, uid: u32, ino: u64) -> Result<bool> {
        let fid = self.fid_of(ino)?;
        self.status(uid, fid)?;
        Ok(self.cache.objs[&fid].has_data())
    }

    /// Opens; a file's `creator` may write it whatever its mode bits say.
    fn open_as(
        &mut self,
        uid: u32,
        ino: u64,
        write: bool,
        truncate: bool,
        creator: bool,
        keep: bool,
    ) -> Result<(u64, Arc<File>)> {
        let fid = self.fid_of(ino)?;
        let s = self.status(uid, fid)?;
        match s.kind {
            VnodeKind::Directory => return Err(if write { Errno::EISDIR } else { Errno::EACCES }),
            VnodeKind::Symlink => return Err(Errno::ELOOP),
            VnodeKind::File => {}
        }
        if write && !creator {
            self.may_write(uid, fid)?;
            self.room(fid.volume)?;
        }
        let o = &self.cache.objs[&fid];
        let held = o.opens > 0 && o.rec.container != container::NONE;
        let overwrite = truncate && write;
        if keep && held {
            // The kernel holds this container for the inode (an open or a
            // mapping outlives its close): the newer version goes into it,
            // unless it has changes not stored yet, which stay (their store
            // meets the newer version as a conflict).
            if !o.has_data() && !overwrite && self.container_clean(fid) {
                self.data_in_place(uid, fid)?;
            }
        } else if !(held && o.has_data()) {
            // A file open here is shared by its opens while it is current;
            // a newer version gets a container of its own, and the handles
            // open already keep theirs (session semantics).
            if overwrite && !o.has_data() {
                self.empty_container(fid)?;
            } else {
                self.data(uid, fid)?;
            }
        }
        let o = &self.cache.objs[&fid];
        let id = o.rec.container;
        // A container open already holds the version its handles know; one
        // being overwritten replaces the version the server has.
        let status = o.rec.status.as_ref().ok_or(Errno::EIO)?;
        let base = match self
            .handles
            .values()
            .find(|h| h.fid == fid && h.container == id)
        {
            Some(h) if !overwrite => h.base.clone(),
            _ => crate::cml::Base::of(status),
        };
        let file = self.cache.containers.open_rw(id).map_err(|e| {
            tracing::warn!("{fid}: container {id}: {e}");
            Errno::EIO
        })?;
        if truncate && write {
            file.set_len(0).map_err(|_| Errno::EIO)?;
        }
        let m = file.metadata().map_err(|_| Errno::EIO)?;
        let o = self.cache.objs.get_mut(&fid).expect("current");
        o.opens += 1;
        if write {
            o.writers += 1;
        }
        let fh = self.next_fh;
        self.next_fh += 1;
        let file = Arc::new(file);
        self.handles.insert(
            fh,
            Handle {
                ino,
                fid,
                file: file.clone(),
                uid,
                writable: write,
                dirty: truncate && write,
                opened: (m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000),
                container: id,
                base,
            },
        );
        Ok((fh, file))
    }

    /// Whether the container the handles of `fid` share still holds the
    /// version they know (nothing written since it was fetched or stored).
    fn container_clean(&self, fid: Fid) -> bool {
        let id = self.cache.objs[&fid].rec.container;
        let known = self
            .handles
            .values()
            .filter(|h| h.fid == fid && h.container == id)
            .map(|h| (&h.base, &h.file))
            .next();
        let Some((base, file)) = known else {
            return true;
        };
        let len = file.metadata().map_or(u64::MAX, |m| m.len());
        len == base.length && hash_file(file, len).is_ok_and(|h| h == base.hash)
    }

    /// Fetches the newer version of `fid` into the container the kernel
    /// holds (so its handles, and mappings of them, see it too).
    fn data_in_place(&mut self, uid: u32, fid: Fid) -> Result<()> {
        let held = self.cache.objs[&fid].rec.container;
        let target = self.cache.containers.open_rw(held).map_err(io_errno)?;
        // Fetched into a fresh container first, which then stands aside.
        self.cache.objs.get_mut(&fid).expect("cached").rec.container = container::NONE;
        let fetched = self.data(uid, fid);
        let o = self.cache.objs.get_mut(&fid).expect("cached");
        let fresh = std::mem::replace(&mut o.rec.container, held);
        if let Err(e) = fetched {
            o.rec.data = None;
            self.cache.save(fid)?;
            return Err(e);
        }
        let copied = (|| {
            let source = self.cache.containers.open_rw(fresh)?;
            target.set_len(0)?;
            std::io::copy(&mut &source, &mut &target)?;
            Ok::<_, std::io::Error>(())
        })();
        self.cache.save(fid)?;
        self.cache.drop_container(fresh);
        if let Err(e) = copied {
            self.cache.objs.get_mut(&fid).expect("cached").rec.data = None;
            self.cache.save(fid)?;
            return Err(io_errno(e));
        }
        let o = &self.cache.objs[&fid];
        let base = crate::cml::Base::of(o.rec.status.as_ref().ok_or(Errno::EIO)?);
        let m = target.metadata().map_err(io_errno)?;
        let now = (m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000);
        self.stored(fid, held, &base);
        for h in self
            .handles
            .values_mut()
            .filter(|h| h.fid == fid && h.container == held)
        {
            h.opened = now;
        }
        Ok(())
    }

    /// Gives a file an empty container (its old contents are not needed:
    /// it is being truncated, or was just made).
    pub(crate) fn empty_container(&mut self, fid: Fid) -> Result<()> {
        let (id, _) = self.cache.containers.create().map_err(|_| Errno::EIO)?;
        let o = self.cache.objs.get_mut(&fid).ok_or(Errno::ENOENT)?;
        let old = std::mem::replace(&mut o.rec.container, id);
        o.rec.data = o.rec.status.as_ref().map(|s| s.vv.store_id);
        self.cache.save(fid)?;
        self.cache.drop_container(old);
        Ok(())
    }

    pub fn handle(&self, fh: u64) -> Result<&Handle> {
        self.handles.get(&fh).ok_or(Errno::EBADF)
    }

    /// A user-space write (where the kernel cannot pass the file through).
    pub fn write(&mut self, fh: u64, offset: u64, data: &[u8]) -> Result<usize> {
        let h = self.handles.get_mut(&fh).ok_or(Errno::EBADF)?;
        if !h.writable {
            return Err(Errno::EBADF);
        }
        h.file.write_all_at(data, offset).map_err(|_| Errno::EIO)?;
        h.dirty = true;
        Ok(data.len())
    }

    /// Stores the file if it changed through this handle (on every close).
    pub fn flush(&mut self, fh: u64) -> Result<()> {
        let Some(h) = self.handles.get(&fh) else {
            return Ok(());
        };
        if !h.writable || self.cache.objs.get(&h.fid).is_none_or(|o| o.orphan) {
            // Nothing to store: unchanged, or no name holds it any more.
            return Ok(());
        }
        let m = h.file.metadata().map_err(|_| Errno::EIO)?;
        let now = (m.len(), m.mtime_nsec() + m.mtime() * 1_000_000_000);
        if !h.dirty && now == h.opened {
            return Ok(());
        }
        let (fid, uid, file, before) = (h.fid, h.uid, h.file.clone(), h.opened.0);
        let (container, base) = (h.container, h.base.clone());
        let mtime = ts_of(m.mtime(), m.mtime_nsec());
        let result = crate::cml::store(self, uid, fid, &file, mtime, &base);
        if let Some(h) = self.handles.get_mut(&fh) {
            h.dirty = false;
            h.opened = now;
        }
        if let Ok(Some(stored)) = &result {
            self.stored(fid, container, stored);
        }
        let result = result.map(|_| ());
        // Written data counts against the cache limit like fetched data.
        self.cache.bytes = (self.cache.bytes + now.0).saturating_sub(before);
        self.evict(None)?;
        result
    }

    /// The object's cached data took its new version (a rename, link or
    /// attribute change left the contents alone): so did the handles on
    /// its container, whatever they wrote and have not stored yet.
    pub(crate) fn rebase(&mut self, fid: Fid) {
        let Some(o) = self.cache.objs.get(&fid) else {
            return;
        };
        let Some(status) = o.rec.status.as_ref() else {
            return;
        };
        let base = crate::cml::Base::of(status);
        let id = o.rec.container;
        self.stored(fid, id, &base);
    }

    /// Every handle on `container` now holds the version `base` stored.
    fn stored(&mut self, fid: Fid, container: u64, base: &crate::cml::Base) {
        for h in self
            .handles
            .values_mut()
            .filter(|h| h.fid == fid && h.container == container)
        {
            h.base = base.clone();
        }
    }

    pub fn release(&mut self, fh: u64) -> Result<()> {
        let Some(h) = self.handles.remove(&fh) else {
            return Ok(());
        };
        let Some(o) = self.cache.objs.get_mut(&h.fid) else {
            return Ok(());
        };
        o.opens = o.opens.saturating_sub(1);
        if h.writable {
            o.writers = o.writers.saturating_sub(1);
        }
        if o.opens == 0 && o.orphan {
            self.cache.drop_obj(h.fid)?;
        }
        Ok(())
    }

    /// Makes a file and opens it for writing (whatever its mode says: its
    /// creator may write it).
    pub fn create(
        &mut self,
        uid: u32,
        gid: u32,
        parent: u64,
        name: &str,
        mode: u32,
    ) -> Result<(Attr, u64, Arc<File>)> {
        let attr = self.mknod(uid, gid, parent, name, mode)?;
        let (fh, file) = self.open_as(uid, attr.ino, true, false, true, false)?;
        Ok((attr, fh, file))
    }

    /// Makes an empty file.
    pub fn mknod(
        &mut self,
        uid: u32,
        gid: u32,
        parent: u64,
        name: &str,
        mode: u32,
    ) -> Result<Attr> {
        let fid = self.make(uid, gid, parent, name, |dir, name, fid, group, _| {
            Op::Create(cml::Create {
                dir,
                name,
                fid,
                mode: mode & 0o7777,
                group,
            })
        })?;
        self.empty_container(fid)?;
        self.attr(fid)
    }

    /// Makes a new object named `name` in `parent` by the record `op`
    /// builds (from the directory, the name and a made-up fid); its real fid.
    /// The new object's group is the creator's `gid`, or its directory's
    /// when that is set-group-id (whose bit new directories inherit).
    fn make(
        &mut self,
        uid: u32,
        gid: u32,
        parent: u64,
        name: &str,
        op: impl FnOnce(Fid, String, Fid, u32, bool) -> Op,
    ) -> Result<Fid> {
        let dir = self.fid_of(parent)?;
        self.check_new_name(uid, dir, name)?;
        self.room(dir.volume)?;
        let d = self.status(uid, dir)?;
        let setgid = d.mode & 0o2000 != 0;
        let group = if setgid { d.group } else { gid };
        let fid = self.local_fid(dir.volume);
        crate::cml::mutate(self, uid, op(dir, name.into(), fid, group, setgid))?.ok_or(Errno::EIO)
    }

    /// The directory exists and is current, and `name` is a valid new name.
    fn check_new_name(&mut self, uid: u32, dir: Fid, name: &str) -> Result<()> {
        match self.entry(uid, dir, name) {
            Ok(_) => Err(Errno::EEXIST),
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub fn mkdir(
        &mut self,
        uid: u32,
        gid: u32,
        parent: u64,
        name: &str,
        mode: u32,
    ) -> Result<Attr> {
        let fid = self.make(uid, gid, parent, name, |dir, name, fid, group, setgid| {
            Op::MakeDir(cml::MakeDir {
                dir,
                name,
                fid,
                mode: (mode & 0o7777) | if setgid { 0o2000 } else { 0 },
                group,
            })
        })?;
        // A new directory is empty: nothing to fetch.
        self.cache.set_entries(fid, &[])?;
        let o = self.cache.objs.get_mut(&fid).expect("made");
        o.rec.data = o.rec.status.as_ref().map(|s| s.vv.store_id);
        self.cache.save(fid)?;
        self.attr(fid)
    }

    pub fn symlink(
        &mut self,
        uid: u32,
        gid: u32,
        parent: u64,
        name: &str,
        target: &str,
    ) -> Result<Attr> {
        let fid = self.make(uid, gid, parent, name, |dir, name, fid, group, _| {
            Op::SymLink(cml::SymLink {
                dir,
                name,
                fid,
                target: target.into(),
                mode: 0o777,
                group,
            })
        })?;
        let o = self.cache.objs.get_mut(&fid).expect("made");
        o.rec.target = target.into();
        o.rec.data = o.rec.status.as_ref().map(|s| s.vv.store_id);
        self.cache.save(fid)?;
        self.attr(fid)
    }

    pub fn link(&mut self, uid: u32, ino: u64, parent: u64, name: &str) -> Result<Attr> {
        let fid = self.fid_of(ino)?;
        let dir = self.fid_of(parent)?;
        self.check_new_name(uid, dir, name)?;
        if fid.volume != dir.volume {
            return Err(Errno::EXDEV);
        }
        crate::cml::mutate(
            self,
            uid,
            Op::Link(cml::Link {
                dir,
                name: name.into(),
                fid,
            }),
        )?;
        self.attr(fid)
    }

    pub fn unlink(&mut self, uid: u32, parent: u64, name: &str) -> Result<()> {
        let dir = self.fid_of(parent)?;
        let fid = self.entry(uid, dir, name)?;
        let s = self.status(uid, fid)?;
        if s.kind == VnodeKind::Directory {
            return Err(Errno::EISDIR);
        }
        crate::cml::mutate(
            self,
            uid,
            Op::Remove(cml::Remove {
                dir,
                name: name.into(),
                fid,
                seen: s.vv.store_id,
            }),
        )?;
        Ok(())
    }

    pub fn rmdir(&mut self, uid: u32, parent: u64, name: &str) -> Result<()> {
        let dir = self.fid_of(parent)?;
        let fid = self.entry(uid, dir, name)?;
        let s = self.status(uid, fid)?;
        if s.kind != VnodeKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        if fid.volume != dir.volume {
            // A mount point: `cfs removemount` removes it.
            return Err(Errno::EBUSY);
        }
        crate::cml::mutate(
            self,
            uid,
            Op::RemoveDir(cml::RemoveDir {
                dir,
                name: name.into(),
                fid,
            }),
        )?;
        Ok(())
    }

    pub fn rename(
        &mut self,
        uid: u32,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
    ) -> Result<()> {
        let from_dir = self.fid_of(parent)?;
        let to_dir = self.fid_of(new_parent)?;
        let fid = self.entry(uid, from_dir, name)?;
        if new_name.len() > vice::NAME_BYTES_MAX {
            return Err(Errno::ENAMETOOLONG);
        }
        let replaced = match self.entry(uid, to_dir, new_name) {
            Ok(f) => Some(f),
            Err(Errno::ENOENT) => None,
            Err(e) => return Err(e),
        };
        if replaced == Some(fid) {
            return Ok(());
        }
        if from_dir.volume != to_dir.volume || fid.volume != from_dir.volume {
            return Err(Errno::EXDEV);
        }
        if let Some(r) = replaced {
            let (moving, target) = (self.status(uid, fid)?.kind, self.status(uid, r)?.kind);
            match (
                moving == VnodeKind::Directory,
                target == VnodeKind::Directory,
            ) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                _ => {}
            }
        }
        crate::cml::mutate(
            self,
            uid,
            Op::Rename(cml::Rename {
                from_dir,
                from_name: name.into(),
                to_dir,
                to_name: new_name.into(),
                fid,
                replaced,
            }),
        )?;
        Ok(())
    }

    /// Changes attributes; a length truncates or extends the cached copy too.
    /// Changes attributes. Refusals of ownership, mode and explicit times
    /// are EPERM, as POSIX has them.
    pub fn setattr(&mut self, uid: u32, ino: u64, ch: SetAttrs) -> Result<Attr> {
        let fid = self.fid_of(ino)?;
        let s = self.status(uid, fid)?;
        if ch.length.is_some() && s.kind == VnodeKind::Directory {
            return Err(Errno::EISDIR);
        }
        if ch.length.is_some_and(|l| l > FILE_BYTES_MAX) {
            return Err(Errno::EFBIG);
        }
        let caller_owns = self.rights_key(uid) == Some(s.owner as i32);
        let owner = ch.owner.filter(|&o| o != s.owner);
        let group = match ch.group {
            Some((g, _)) if g == s.group => None,
            // Root gives any group; an owner only one they belong to.
            Some((g, member)) if uid == 0 || (caller_owns && member) => Some(g),
            Some(_) => return Err(Errno::EPERM),
            None => None,
        };
        if owner.is_some() && uid != 0 {
            return Err(Errno::EPERM);
        }
        // A chown's mode is the kernel clearing set-id bits, and this
        // kernel's FUSE clears the sticky bit with them: it stays.
        let mode = match ch.mode {
            Some(m) if ch.owner.is_some() || ch.group.is_some() => Some(m | (s.mode & 0o1000)),
            m => m,
        };
        let ch = SetAttrs { mode, ..ch };
        if ch.mode.is_none()
            && owner.is_none()
            && group.is_none()
            && ch.length.is_none()
            && ch.mtime.is_none()
            && ch.atime.is_none()
        {
            return self.attr(fid);
        }
        let o = &self.cache.objs[&fid];
        let open_for_writing = o.writers > 0 && o.rec.container != container::NONE;
        if open_for_writing {
            // The container is the truth until close stores it: cut it
            // here, and give it the times asked for, which that store keeps.
            let f = self
                .cache
                .containers
                .open_rw(o.rec.container)
                .map_err(|_| Errno::EIO)?;
            if let Some(len) = ch.length {
                f.set_len(len).map_err(io_errno)?;
            }
            if let Some(t) = ch.mtime {
                f.set_modified(system_time(t)).map_err(io_errno)?;
            }
            for h in self
                .handles
                .values_mut()
                .filter(|h| h.fid == fid && h.writable)
            {
                h.dirty = true;
            }
            let rest =
                ch.mode.is_some() || owner.is_some() || group.is_some() || ch.atime.is_some();
            if !rest && ch.mtime.is_none() {
                return self.attr(fid);
            }
        }
        let explicit = ch.mode.is_some() || owner.is_some() || group.is_some();
        let result = crate::cml::mutate(
            self,
            uid,
            Op::SetAttr(cml::SetAttr {
                fid,
                seen: s.vv.store_id,
                mode: ch.mode.map(|m| m & 0o7777),
                owner,
                group,
                mtime: ch.mtime,
                atime: ch.atime,
                length: if open_for_writing { None } else { ch.length },
            }),
        );
        match result {
            Err(Errno::EACCES) if explicit || (ch.mtime.is_some() && !ch.times_now) => {
                Err(Errno::EPERM)
            }
            Err(e) => Err(e),
            Ok(_) => self.attr(fid),
        }
    }

    /// access(2) by Coda's rights: reading a file needs `r` (and the owner
    /// read bit), writing `w`, executing `r` and an execute bit; in a
    /// directory, looking up needs `l`, changing it `i` or `d`.
    pub fn access(
        &mut self,
        uid: u32,
        ino: u64,
        read: bool,
        write: bool,
        exec: bool,
    ) -> Result<()> {
        let fid = self.fid_of(ino)?;
        let (s, r) = self.rights(uid, fid)?;
        let owner = self.rights_key(uid) == Some(s.owner as i32);
        let ok = match s.kind {
            VnodeKind::Directory => {
                (!(read || exec) || r.contains(Rights::LOOKUP))
                    && (!write || r.contains(Rights::INSERT) || r.contains(Rights::DELETE))
            }
            _ => {
                (!read || (r.contains(Rights::READ) && (s.mode & 0o400 != 0 || owner)))
                    && (!write || (r.contains(Rights::WRITE) && (s.mode & 0o200 != 0 || owner)))
                    && (!exec || (r.contains(Rights::READ) && s.mode & 0o111 != 0))
            }
        };
        ok.then_some(()).ok_or(Errno::EACCES)
    }

    pub fn statfs(&self) -> (u64, u64, u64) {
        let used = self.cache.bytes;
        (
            self.cache_limit,
            self.cache_limit.saturating_sub(used),
            self.cache.objs.len() as u64,
        )
    }

    /// Applies a callback break: the named objects (and volumes' stamps)
    /// are no longer vouched for. Returns the inodes to invalidate in the
    /// kernel and the directories whose names may have changed.
    pub fn broken(&mut self, fids: &[Fid], volumes: &[VolumeId]) -> (Vec<u64>, Vec<Fid>) {
        let mut inos = Vec::new();
        let mut dirs = Vec::new();
        for fid in fids {
            if let Some(o) = self.cache.objs.get_mut(fid) {
                o.valid = false;
                inos.push(o.rec.ino);
                if o.rec.kind == VnodeKind::Directory && self.cache.dirs.contains_key(fid) {
                    dirs.push(*fid);
                }
            }
        }
        let touched: std::collections::BTreeSet<VolumeId> = volumes
            .iter()
            .copied()
            .chain(fids.iter().map(|f| f.volume))
            .collect();
        for vol in touched {
            self.untrust(vol);
        }
        self.emit(
            "callback",
            format!("{} objects, {} volumes", fids.len(), volumes.len()),
        );
        (inos, dirs)
    }

    /// Fetches a broken directory again; returns the names whose binding
    /// changed, for the kernel to forget.
    pub fn refresh_dir(&mut self, dir: Fid) -> Vec<(u64, String)> {
        let Some(o) = self.cache.objs.get(&dir) else {
            return Vec::new();
        };
        let ino = o.rec.ino;
        let before: HashMap<String, Fid> = self
            .cache
            .dirs
            .get(&dir)
            .map(|e| e.iter().map(|(n, (_, f))| (n.clone(), *f)).collect())
            .unwrap_or_default();
        // As root, the user any kernel request could come from; without
        // rights the whole directory is forgotten instead.
        let ok = self.data(0, dir).is_ok();
        let after = self.cache.dirs.get(&dir);
        before
            .into_iter()
            .filter(|(n, f)| !ok || after.and_then(|e| e.get(n)).map(|(_, g)| g) != Some(f))
            .map(|(n, _)| (ino, n))
            .collect()
    }

    /// Flushes the cache's metadata (periodically, and at shutdown).
    pub fn sync(&mut self) -> Result<()> {
        Ok(self.cache.flush()?)
    }

    /// Where a path below the mount leads: its fid, walked as `uid`.
    pub fn resolve(&mut self, uid: u32, rel: &std::path::Path) -> Result<Fid> {
        let mut fid = self.root;
        for part in rel.components() {
            use std::path::Component::*;
            match part {
                Normal(n) => {
                    let name = n.to_str().ok_or(Errno::EINVAL)?;
                    fid = self.entry(uid, fid, name)?;
                }
                CurDir | RootDir => {}
                ParentDir => {
                    let s = self.status(uid, fid)?;
                    fid = s.parent;
                }
                Prefix(_) => return Err(Errno::EINVAL),
            }
        }
        self.status(uid, fid)?;
        Ok(fid)
    }

    /// Drops an object's cached data (`cfs flushobject`); open files keep theirs.
    pub fn flush_object(&mut self, fid: Fid) -> Result<()> {
        let held = self.held(fid);
        let Some(o) = self.cache.objs.get_mut(&fid) else {
            return Ok(());
        };
        o.valid = false;
        if o.opens > 0 || held {
            return Err(Errno::EBUSY);
        }
        o.rec.data = None;
        let id = std::mem::replace(&mut o.rec.container, container::NONE);
        self.cache.save(fid)?;
        self.cache.drop_container(id);
        Ok(())
    }

    /// A volume's information, fresh from its server.
    pub fn volume_info(&mut self, vol: VolumeId) -> Result<VolumeInfo> {
        let info: VolumeInfo =
            self.call_decode(0, vol, op::GET_VOLUME_INFO, &VolumeRef::Id(vol))?;
        self.put_volume(info.clone())?;
        Ok(info)
    }

    /// The version of `fid` this client last saw.
    pub fn seen(&self, fid: Fid) -> StoreId {
        self.cache
            .objs
            .get(&fid)
            .and_then(|o| o.rec.status.as_ref())
            .map(|s| s.vv.store_id)
            .unwrap_or_default()
    }

    /// Asks every server (those volumes are served by too) whether it
    /// answers; those that do are connected again (unless disconnection
    /// is forced), those that do not are disconnected.
    pub fn probe_servers(&mut self) -> Vec<ServerState> {
        let targets = self.probe_targets();
        let mut found: HashMap<SocketAddr, bool> = HashMap::new();
        for (addr, (up, restarted)) in probe_each(&self.link, &targets) {
            self.probed(addr, up, restarted);
            found.insert(addr, up);
        }
        targets
            .into_iter()
            .map(|addr| ServerState {
                addr: addr.to_string(),
                up: found.get(&addr).copied().unwrap_or(false),
            })
            .collect()
    }

    /// The first of `addrs` to answer a probe; None (and all of them
    /// down) if none does. The others' probes finish on their own.
    fn first_answering(&mut self, addrs: Vec<SocketAddr>) -> Option<SocketAddr> {
        for (addr, (up, restarted)) in probe_each(&self.link, &addrs) {
            self.probed(addr, up, restarted);
            if up {
                return Some(addr);
            }
        }
        None
    }

    /// The servers to probe: those Venus was started with and those its
    /// volumes are served by.
    pub fn probe_targets(&self) -> Vec<SocketAddr> {
        let mut servers = self.servers.clone();
        for (_, info) in self.cache.volumes.values() {
            for (_, a) in volume::replicas(info) {
                if !servers.contains(&a) {
                    servers.push(a);
                }
            }
        }
        servers
    }

    /// What a probe of `addr` found: it answers or not, and whether it had
    /// forgotten this client (restarted: its promises are gone).
    pub fn probed(&mut self, addr: SocketAddr, up: bool, restarted: bool) {
        if restarted {
            self.invalidate_all();
        }
        if up && self.down.remove(&addr) {
            self.invalidate_all();
            self.emit("connect", format!("{addr} answers again"));
            self.resolve_returned(addr);
        } else if !up && self.mark_down(addr) {
            self.emit(
                "disconnect",
                format!("{addr} does not answer; its volumes are disconnected"),
            );
        }
    }

    /// `cfs disconnect` (true) and `cfs reconnect` (false).
    pub fn set_forced(&mut self, on: bool) {
        if self.forced != on {
            self.forced = on;
            self.invalidate_all();
            self.emit(
                if on { "disconnect" } else { "connect" },
                if on {
                    "forced: every volume is disconnected".into()
                } else {
                    "forced disconnection ended".into()
                },
            );
        }
    }

    /// What the cache knows of a volume.
    pub fn cached_volume(&self, vol: VolumeId) -> Option<VolumeInfo> {
        self.cache.volumes.get(&vol).map(|(_, i)| i.clone())
    }

    /// The volumes with records in the log.
    pub fn logged_volumes(&self) -> Vec<VolumeId> {
        let mut vols: Vec<VolumeId> = self.cml.records.keys().copied().collect();
        vols.sort_unstable();
        vols
    }

    /// When `vol`'s oldest logged record was made.
    pub fn oldest_record(&self, vol: VolumeId) -> Option<Timestamp> {
        self.cache
            .cml
            .values()
            .find(|(_, e)| e.record.op.volume() == vol)
            .map(|(_, e)| e.record.time)
    }

    fn acl(&mut self, uid: u32, dir: Fid) -> Result<Acl> {
        let req = codec::to_bytes(&vice::GetAttr { fid: dir });
        let (_, reply) = self.call_retry::<()>(uid, dir.volume, op::GET_ACL, req, |_| {
            Ok(Some(SideEffect::Receive(Sink::memory(16 << 20))))
        })?;
        let bytes = reply.sink.map(Sink::into_bytes).unwrap_or_default();
        codec::from_bytes(&bytes).map_err(|_| Errno::EIO)
    }

    fn principals(
        &mut self,
        uid: u32,
        vol: VolumeId,
        req: &LookupPrincipals,
    ) -> Result<Principals> {
        self.call_decode(uid, vol, op::LOOKUP_PRINCIPALS, req)
    }

    /// A directory's access list, names resolved (`cfs listacl`).
    pub fn list_acl(&mut self, uid: u32, dir: Fid) -> Result<NamedAcl> {
        let acl = self.acl(uid, dir)?;
        let ids: Vec<i32> = acl
            .positive
            .iter()
            .chain(&acl.negative)
            .map(|e| e.id)
            .collect();
        let names = self
            .principals(
                uid,
                dir.volume,
                &LookupPrincipals {
                    names: Vec::new(),
                    ids,
                },
            )?
            .names;
        let mut names = names.into_iter();
        let mut line = |e: &AclEntry| AclLine {
            name: names.next().flatten().unwrap_or_else(|| e.id.to_string()),
            rights: e.rights.to_string(),
        };
        let positive = acl.positive.iter().map(&mut line).collect();
        let negative = acl.negative.iter().map(&mut line).collect();
        Ok(NamedAcl { positive, negative })
    }

    /// Changes a directory's access list (`cfs setacl`).
    pub fn set_acl(&mut self, uid: u32, dir: Fid, req: &control::SetAcl) -> Result<()> {
        let mut acl = if req.clear {
            Acl::default()
        } else {
            self.acl(uid, dir)?
        };
        let names = req.entries.iter().map(|e| e.name.clone()).collect();
        let ids = self
            .principals(
                uid,
                dir.volume,
                &LookupPrincipals {
                    names,
                    ids: Vec::new(),
                },
            )?
            .ids;
        for (e, id) in req.entries.iter().zip(ids) {
            let id = match id {
                Some(id) => id,
                None => e.name.parse().map_err(|_| Errno::ENOENT)?,
            };
            let rights = Rights::parse(&e.rights).map_err(|_| Errno::EINVAL)?;
            acl.set(id, rights, req.negative);
        }
        crate::cml::mutate(self, uid, Op::SetAcl(cml::SetAcl { dir, acl }))?;
        // Everyone's rights below may have changed.
        self.forget_rights(None);
        Ok(())
    }

    /// Reads a user-space fallback handle.
    pub fn read(&self, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>> {
        let h = self.handle(fh)?;
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match h.file.read_at(&mut buf[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(_) => return Err(Errno::EIO),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }
}

/// BLAKE3 of a file's first `len` bytes.
pub fn hash_file(file: &File, len: u64) -> std::io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    // Small files (most of them) need no megabyte of zeros.
    let mut buf = vec![0u8; len.min(1 << 20) as usize];
    let mut off = 0u64;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], off)?;
        h.update(&buf[..n]);
        off += n as u64;
    }
    Ok(*h.finalize().as_bytes())
}

/// Probes `addrs` at once: their answers ([`probe`]'s) in the order
/// they come, ending when all came.
pub fn probe_each(
    link: &Arc<dyn Transport>,
    addrs: &[SocketAddr],
) -> std::sync::mpsc::Receiver<(SocketAddr, (bool, bool))> {
    let (tx, rx) = std::sync::mpsc::channel();
    for &addr in addrs {
        let (link, tx) = (link.clone(), tx.clone());
        std::thread::spawn(move || {
            let _ = tx.send((addr, probe(&*link, addr)));
        });
    }
    rx
}

/// Asks a server whether it answers (without the core: a silent one takes
/// the whole timeout). Whether it answered, and whether it had forgotten
/// this client's connection.
pub fn probe(link: &dyn Transport, addr: SocketAddr) -> (bool, bool) {
    let rebinds = link.rebinds();
    let answer = call_decode::<VolumeInfo>(
        link,
        addr,
        Principal::Anyone,
        None,
        vice::SUBSYSTEM,
        op::GET_ROOT_VOLUME,
        &(),
    );
    (
        !matches!(answer, Err(Errno::ETIMEDOUT)),
        link.rebinds() != rebinds,
    )
}
