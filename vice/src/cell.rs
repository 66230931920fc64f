//! What every shard of a server shares: the cell key, the protection
//! database, the volume location database, and the cell's directory of
//! every server's volumes. Read on every bind and location query, written
//! only by administration, so a lock is cheap here.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use coda_proto::fid::{Fid, VolumeId};
use coda_proto::res::ResolutionStats;
use coda_proto::update::VolumeEntry;
use coda_proto::vice::{VolumeInfo, VolumeKind};
use coda_rpc2::codec;
use coda_rpc2::CellKey;

use crate::pdb::Pdb;

pub const ROOT_VOLUME_NAME: &str = "coda.root";
/// Volume ids start here (Coda's volumes were 0x7f000000 and up).
pub const FIRST_VOLUME_ID: VolumeId = 0x7f00_0001;

/// Where a volume is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub name: String,
    pub shard: u32,
    pub kind: VolumeKind,
}

/// The volume location database: name and shard of every volume.
#[derive(Debug, Default)]
pub struct Vldb {
    by_id: HashMap<VolumeId, Location>,
    by_name: HashMap<String, VolumeId>,
}

impl Vldb {
    pub fn insert(&mut self, id: VolumeId, loc: Location) {
        self.by_name.insert(loc.name.clone(), id);
        self.by_id.insert(id, loc);
    }

    pub fn remove(&mut self, id: VolumeId) {
        if let Some(loc) = self.by_id.remove(&id) {
            self.by_name.remove(&loc.name);
        }
    }

    pub fn get(&self, id: VolumeId) -> Option<&Location> {
        self.by_id.get(&id)
    }

    pub fn by_name(&self, name: &str) -> Option<VolumeId> {
        self.by_name.get(name).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (VolumeId, &Location)> {
        self.by_id.iter().map(|(id, l)| (*id, l))
    }

    /// The shard with the fewest volumes, for a new one.
    pub fn emptiest_shard(&self, shards: u32) -> u32 {
        let mut count = vec![0usize; shards as usize];
        for loc in self.by_id.values() {
            if let Some(c) = count.get_mut(loc.shard as usize) {
                *c += 1;
            }
        }
        (0..shards)
            .min_by_key(|&s| (count[s as usize], s))
            .unwrap_or(0)
    }
}

/// The servers of a cell of several (`--peers NAME=ADDR,...`); the first
/// is the SCM, which keeps the cell's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peers {
    /// This server's name.
    pub me: String,
    /// Each server's name and first shard's address, the SCM first.
    pub servers: Vec<(String, SocketAddr)>,
}

impl Peers {
    /// Parses `NAME=ADDR:PORT,...`; `me` must be one of them.
    pub fn parse(spec: &str, me: &str) -> Result<Peers, String> {
        let mut servers: Vec<(String, SocketAddr)> = Vec::new();
        for item in spec.split(',').filter(|s| !s.is_empty()) {
            let (name, addr) = item
                .split_once('=')
                .ok_or_else(|| format!("--peers: {item:?} is not NAME=ADDR:PORT"))?;
            crate::volume_name_ok(name).map_err(|e| format!("--peers: {name:?}: {e}"))?;
            let addr = addr
                .parse()
                .map_err(|e| format!("--peers: {addr:?}: {e}"))?;
            if servers.iter().any(|(n, _)| n == name) {
                return Err(format!("--peers: {name} named twice"));
            }
            servers.push((name.to_string(), addr));
        }
        if !servers.iter().any(|(n, _)| n == me) {
            return Err(format!(
                "--peers does not name this server ({me}); give --name"
            ));
        }
        Ok(Peers {
            me: me.to_string(),
            servers,
        })
    }

    /// The servers' names, in order: every server must give the same.
    pub fn names(&self) -> Vec<String> {
        self.servers.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Whether a restart may take `self` in place of `before`: addresses
    /// may change and servers be added at the end, but a server's place
    /// says which is the SCM and which volume ids each hands out, so no
    /// server moves or leaves.
    pub fn may_follow(&self, before: &Peers) -> Result<(), String> {
        let (old, new) = (before.names(), self.names());
        if new.starts_with(&old) {
            return Ok(());
        }
        Err(format!(
            "--peers: this cell's servers are {}, in that order (the first is \
             the SCM); a restart may change their addresses and add servers \
             at the end, not reorder or drop them",
            old.join(",")
        ))
    }

    pub fn scm(&self) -> (&str, SocketAddr) {
        let (n, a) = &self.servers[0];
        (n, *a)
    }

    pub fn is_scm(&self) -> bool {
        self.servers[0].0 == self.me
    }

    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.servers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| *a)
    }

    /// This server's place in the list: volume ids it hands out are its own.
    pub fn index(&self) -> u64 {
        self.servers
            .iter()
            .position(|(n, _)| *n == self.me)
            .unwrap_or(0) as u64
    }
}

/// Work handed to another thread, taken in order.
pub struct Mailbox<T> {
    queue: Mutex<VecDeque<T>>,
    ready: Condvar,
}

impl<T> Default for Mailbox<T> {
    fn default() -> Self {
        Mailbox {
            queue: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
        }
    }
}

impl<T> Mailbox<T> {
    /// Posts `item` unless it waits already.
    pub fn post_once(&self, item: T)
    where
        T: PartialEq,
    {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if !q.contains(&item) {
            q.push_back(item);
            self.ready.notify_all();
        }
    }

    pub fn post(&self, item: T) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(item);
        self.ready.notify_all();
    }

    /// The next item, waiting at most `wait` for one.
    pub fn take(&self, wait: Duration) -> Option<T> {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let (mut q, _) = self
            .ready
            .wait_timeout_while(q, wait, |q| q.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        q.pop_front()
    }
}

coda_rpc2::codec_struct! {
    /// `directory.bin`.
    struct SavedDirectory {
        volumes: Vec<VolumeEntry>,
        removed: Vec<VolumeId>,
    }
}

/// Every volume of the cell and where its replicas are: the SCM's is the
/// truth (kept in `directory.bin`), every other server's a copy pulled
/// from it (kept too, so a server serves while the SCM is down).
#[derive(Debug, Default)]
pub struct Directory {
    volumes: BTreeMap<VolumeId, VolumeEntry>,
    /// Volumes removed from the cell, so that a replica a server still
    /// holds (it was down) is removed rather than brought back.
    removed: BTreeSet<VolumeId>,
    path: Option<PathBuf>,
}

impl Directory {
    /// Loads `path` (absent: empty).
    pub fn open(path: PathBuf) -> std::io::Result<Directory> {
        let saved = match std::fs::read(&path) {
            Ok(bytes) => codec::from_bytes::<SavedDirectory>(&bytes).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {e}", path.display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => SavedDirectory {
                volumes: Vec::new(),
                removed: Vec::new(),
            },
            Err(e) => return Err(e),
        };
        Ok(Directory {
            volumes: saved.volumes.into_iter().map(|e| (e.id, e)).collect(),
            removed: saved.removed.into_iter().collect(),
            path: Some(path),
        })
    }

    fn save(&self) {
        if let Some(path) = &self.path {
            let bytes = codec::to_bytes(&SavedDirectory {
                volumes: self.all(),
                removed: self.removed(),
            });
            if let Err(e) = crate::pdb::write_atomically(path, &bytes, 0o644) {
                tracing::error!("{}: {e}", path.display());
            }
        }
    }

    pub fn get(&self, id: VolumeId) -> Option<&VolumeEntry> {
        self.volumes.get(&id)
    }

    pub fn by_name(&self, name: &str) -> Option<&VolumeEntry> {
        self.volumes.values().find(|e| e.name == name)
    }

    pub fn all(&self) -> Vec<VolumeEntry> {
        self.volumes.values().cloned().collect()
    }

    pub fn removed(&self) -> Vec<VolumeId> {
        self.removed.iter().copied().collect()
    }

    pub fn is_removed(&self, id: VolumeId) -> bool {
        self.removed.contains(&id)
    }

    /// Volume `id` is removed from the cell, for good.
    pub fn forget(&mut self, id: VolumeId) {
        self.volumes.remove(&id);
        self.removed.insert(id);
        self.save();
    }

    /// A volume reserved at the SCM before its replicas exist.
    pub fn insert(&mut self, entry: VolumeEntry) {
        self.volumes.insert(entry.id, entry);
        self.save();
    }

    pub fn remove(&mut self, id: VolumeId) {
        if self.volumes.remove(&id).is_some() {
            self.save();
        }
    }

    /// The SCM's side of `UPDATE`: `server` holds `volumes` now, each
    /// with its address in its own slot.
    pub fn merge(&mut self, server: &str, volumes: Vec<VolumeEntry>) {
        let before = self.all();
        let held: std::collections::HashSet<VolumeId> = volumes.iter().map(|v| v.id).collect();
        // A volume of this server alone that it no longer has was removed.
        self.volumes
            .retain(|id, e| held.contains(id) || e.replicas != [server]);
        for v in volumes {
            self.place(server, v);
        }
        if self.all() != before {
            self.save();
        }
    }

    /// `server` holds its replica of `v` at the address in its slot.
    pub fn record(&mut self, server: &str, v: VolumeEntry) {
        self.place(server, v);
        self.save();
    }

    fn place(&mut self, server: &str, v: VolumeEntry) {
        let Some(slot) = v.replicas.iter().position(|r| r == server) else {
            return;
        };
        if self.removed.contains(&v.id) {
            return;
        }
        let addr = v.addrs.get(slot).cloned().unwrap_or_default();
        let e = self.volumes.entry(v.id).or_insert_with(|| VolumeEntry {
            addrs: vec![String::new(); v.replicas.len()],
            ..v.clone()
        });
        e.addrs.resize(e.replicas.len(), String::new());
        if let Some(a) = e.addrs.get_mut(slot) {
            *a = addr;
        }
    }

    /// A copy of the SCM's directory.
    pub fn adopt(&mut self, volumes: Vec<VolumeEntry>, removed: Vec<VolumeId>) {
        if self.all() != volumes || self.removed() != removed {
            self.volumes = volumes.into_iter().map(|e| (e.id, e)).collect();
            self.removed = removed.into_iter().collect();
            self.save();
        }
    }
}

/// What a client is told of a volume this server does not hold.
pub fn entry_info(e: &VolumeEntry) -> VolumeInfo {
    VolumeInfo {
        id: e.id,
        name: e.name.clone(),
        kind: e.kind,
        // In slot order; empty where not known yet.
        servers: e.addrs.clone(),
        root: Fid::root(e.id),
        stamp: 0,
        locked: false,
        files: 0,
        bytes: 0,
    }
}

pub struct Cell {
    pub key: CellKey,
    pub id: [u8; 16],
    /// Derived from the cell key: salts for unknown users.
    pub salt_secret: [u8; 32],
    pub shards: u32,
    pub name: String,
    /// The other servers, in a cell of several.
    pub peers: Option<Peers>,
    pdb: RwLock<Pdb>,
    vldb: RwLock<Vldb>,
    directory: RwLock<Directory>,
    /// Volumes whose replicas should be resolved, for the resolver thread.
    pub resolve: Mailbox<VolumeId>,
    /// Administration that needs the other servers, for the update thread.
    pub work: Mailbox<crate::update::Work>,
    resolution: Mutex<ResolutionStats>,
    /// Each shard's address, once bound.
    addrs: RwLock<Vec<String>>,
    next_volume: AtomicU64,
    /// Where the next volume id is kept, so ids are never reused, not
    /// even those of volumes removed since (none in tests).
    volume_counter: Option<std::path::PathBuf>,
    pub started: Instant,
}

impl Cell {
    pub fn new(key: CellKey, id: [u8; 16], shards: u32, name: String, pdb: Pdb) -> Cell {
        let salt_secret = blake3::derive_key("coda pdb salts for unknown users", key.as_bytes());
        Cell {
            key,
            id,
            salt_secret,
            shards,
            name,
            peers: None,
            pdb: RwLock::new(pdb),
            vldb: RwLock::new(Vldb::default()),
            directory: RwLock::new(Directory::default()),
            resolve: Mailbox::default(),
            work: Mailbox::default(),
            resolution: Mutex::default(),
            addrs: RwLock::new(vec![String::new(); shards as usize]),
            next_volume: AtomicU64::new(FIRST_VOLUME_ID),
            volume_counter: None,
            started: Instant::now(),
        }
    }

    pub fn pdb(&self) -> RwLockReadGuard<'_, Pdb> {
        self.pdb.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pdb_mut(&self) -> RwLockWriteGuard<'_, Pdb> {
        self.pdb.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn vldb(&self) -> RwLockReadGuard<'_, Vldb> {
        self.vldb.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn vldb_mut(&self) -> RwLockWriteGuard<'_, Vldb> {
        self.vldb.write().unwrap_or_else(|p| p.into_inner())
    }

    /// What resolution did here, for `cmon`.
    pub fn resolution(&self) -> std::sync::MutexGuard<'_, ResolutionStats> {
        self.resolution.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn directory(&self) -> RwLockReadGuard<'_, Directory> {
        self.directory.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn directory_mut(&self) -> RwLockWriteGuard<'_, Directory> {
        self.directory.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins a cell of several servers: volume ids it hands out are its
    /// own (the SCM's from the first), and its directory is kept in `path`.
    pub fn join_peers(&mut self, peers: Peers, path: PathBuf) -> std::io::Result<()> {
        let first = FIRST_VOLUME_ID + (peers.index() << 32);
        self.next_volume.fetch_max(first, Ordering::Relaxed);
        *self.directory_mut() = Directory::open(path)?;
        self.peers = Some(peers);
        Ok(())
    }

    /// A cell of one server is its own SCM.
    pub fn is_scm(&self) -> bool {
        self.peers.as_ref().is_none_or(Peers::is_scm)
    }

    pub fn set_addr(&self, shard: u32, addr: String) {
        self.addrs.write().unwrap_or_else(|p| p.into_inner())[shard as usize] = addr;
    }

    pub fn addr(&self, shard: u32) -> String {
        self.addrs.read().unwrap_or_else(|p| p.into_inner())[shard as usize].clone()
    }

    /// Keeps the volume id counter in `path` from now on (read now).
    pub fn keep_volume_counter(&mut self, path: std::path::PathBuf) -> std::io::Result<()> {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let next = text.trim().parse::<u64>().map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                self.next_volume.fetch_max(next, Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.volume_counter = Some(path);
        Ok(())
    }

    /// A volume id never handed out before in this cell, above every one in use.
    pub fn new_volume_id(&self) -> VolumeId {
        let id = self.next_volume.fetch_add(1, Ordering::Relaxed);
        if let Some(path) = &self.volume_counter {
            let next = self.next_volume.load(Ordering::Relaxed);
            if let Err(e) =
                crate::pdb::write_atomically(path, format!("{next}\n").as_bytes(), 0o644)
            {
                tracing::error!("{}: {e}", path.display());
            }
        }
        id
    }

    /// Records a recovered volume, keeping new ids above it.
    pub fn register(&self, id: VolumeId, loc: Location) {
        self.next_volume.fetch_max(id + 1, Ordering::Relaxed);
        self.vldb_mut().insert(id, loc);
    }
}

#[cfg(test)]
mod tests {
    use super::Peers;

    #[test]
    fn a_restart_may_move_and_add_servers_but_not_reorder_or_drop_them() {
        let p = |spec| Peers::parse(spec, "b").unwrap();
        let before = p("a=127.0.0.1:1,b=127.0.0.2:1");
        assert!(p("a=127.0.0.9:5,b=127.0.0.2:1,c=127.0.0.3:1")
            .may_follow(&before)
            .is_ok());
        let swapped = p("b=127.0.0.2:1,a=127.0.0.1:1").may_follow(&before);
        assert!(swapped.unwrap_err().contains("a,b, in that order"));
        assert!(p("b=127.0.0.2:1").may_follow(&before).is_err());
    }
}
