//! A shard: the volumes one core serves, their metadata in one RVM
//! instance and their data in one container directory. Every change goes
//! through a [`Txn`], which keeps RVM and the in-memory indexes in step:
//! both change together, and an abort undoes both.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use coda_proto::fid::{Fid, VolumeId};
use coda_proto::res::Tombstone;
use coda_proto::status::Timestamp;
use rvm::heap::Heap;
use rvm::{CommitId, Durability, Mode, Options, Rvm, Transaction, View};

use crate::container::Containers;
use crate::record::{self, Kind, RecordError, Slot};
use crate::vnode::{
    AppliedRecord, EntryRecord, ShardHeader, TombRecord, Vnode, VnodeV1, VnodeV2, VolumeHeader,
    VolumeHeaderV1, NO_CONTAINER,
};
use crate::volume::Volume;

#[derive(Debug, Clone)]
pub struct ShardOptions {
    /// Size of the recoverable segment (a sparse file; pages cost only when used).
    pub segment_bytes: u64,
    pub log_bytes: u64,
    /// The server's flush driver makes commits durable on io_uring (see
    /// `rvm::Options::flush_by_driver`); otherwise [`Shard::flush`] does.
    pub flush_by_driver: bool,
}

impl Default for ShardOptions {
    fn default() -> Self {
        ShardOptions {
            segment_bytes: 4 << 30,
            log_bytes: 64 << 20,
            flush_by_driver: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("RVM: {0}")]
    Rvm(#[from] rvm::Error),
    #[error("metadata: {0}")]
    Record(#[from] RecordError),
    #[error("containers: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Inconsistent(String),
}

/// The volumes of a shard, as the in-memory indexes hold them.
#[derive(Default)]
pub struct Meta {
    pub volumes: HashMap<VolumeId, Volume>,
    /// Vnodes using each container: clones share their source's, so a
    /// container goes only when its last user does.
    refs: HashMap<u64, u32>,
}

impl Meta {
    /// Vnodes using container `c`.
    pub fn refs(&self, c: u64) -> u32 {
        self.refs.get(&c).copied().unwrap_or(0)
    }

    fn hold(&mut self, v: Option<&Vnode>) {
        if let Some(c) = v.map(|v| v.container).filter(|&c| c != NO_CONTAINER) {
            *self.refs.entry(c).or_default() += 1;
        }
    }

    fn release(&mut self, v: Option<&Vnode>) {
        if let Some(c) = v.map(|v| v.container).filter(|&c| c != NO_CONTAINER) {
            if let std::collections::hash_map::Entry::Occupied(mut e) = self.refs.entry(c) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }

    pub fn volume(&self, id: VolumeId) -> Option<&Volume> {
        self.volumes.get(&id)
    }

    pub fn vnode(&self, fid: Fid) -> Option<&Vnode> {
        self.volumes.get(&fid.volume)?.vnode(fid)
    }
}

/// Present in a shard directory only after a clean shutdown.
const CLEAN_MARK: &str = "clean";

/// How far every volume stamp moves after a crash: more updates than can
/// be lost in one, so no stamp a client saw before is handed out again.
pub const STAMP_EPOCH: u64 = 1 << 32;

pub struct Shard {
    pub index: u32,
    pub header: ShardHeader,
    rvm: Rvm,
    heap: Heap,
    pub meta: Meta,
    pub containers: Containers,
    /// Containers to unlink once the commit that dropped them is durable.
    doomed: Vec<(CommitId, u64)>,
    /// Containers a dump is still to read: kept even once dropped.
    pins: HashMap<u64, u32>,
    last_commit: CommitId,
}

/// What [`Shard::open`] found.
#[derive(Debug, Default)]
pub struct OpenReport {
    pub created: bool,
    pub volumes: usize,
    pub vnodes: usize,
    pub swept_containers: usize,
    /// Volumes left half built or half removed by a crash, removed now.
    pub dismantled: usize,
    pub log_tail: String,
}

impl Shard {
    /// Opens (or creates) the shard in `dir`: recovers RVM, rebuilds the
    /// indexes and removes containers nothing references.
    pub fn open(
        dir: &Path,
        index: u32,
        cell: [u8; 16],
        opts: &ShardOptions,
    ) -> Result<(Shard, OpenReport), ShardError> {
        std::fs::create_dir_all(dir)?;
        let rvm_opts = Options {
            log_area_bytes: opts.log_bytes,
            flush_by_driver: opts.flush_by_driver,
            ..Options::default()
        };
        let (rvm, recovery) = Rvm::open_files(
            &dir.join("meta.seg"),
            &dir.join("meta.log"),
            opts.segment_bytes,
            rvm_opts,
        )?;
        let mut report = OpenReport {
            log_tail: format!("{:?}", recovery.tail),
            ..OpenReport::default()
        };
        let (found, fresh) = {
            let view = rvm.read()?;
            (Heap::open(&view, 0), view.u64_at(0)? == 0)
        };
        let heap = match found {
            Ok(heap) => heap,
            Err(rvm::Error::HeapCorrupt { .. }) if fresh => {
                // A fresh segment: lay out the heap and the shard header.
                let mut tx = rvm.begin(Mode::NoRestore)?;
                let heap = Heap::init(&mut tx, 0, rvm.data_len())?;
                let header = ShardHeader {
                    shard: index,
                    cell,
                    created: Timestamp::now(),
                };
                let slot = record::insert(&heap, &mut tx, Kind::Shard, &header)?;
                heap.set_root(&mut tx, 0, slot.at)?;
                tx.commit(Durability::Flush)?;
                report.created = true;
                heap
            }
            Err(e) => return Err(e.into()),
        };
        let mut shard = Shard {
            index,
            header: ShardHeader {
                shard: index,
                cell,
                created: Timestamp::default(),
            },
            rvm,
            heap,
            meta: Meta::default(),
            containers: Containers::open(&dir.join("containers"))?,
            doomed: Vec::new(),
            pins: HashMap::new(),
            last_commit: CommitId(0),
        };
        shard.rebuild()?;
        if shard.header.shard != index || shard.header.cell != cell {
            return Err(ShardError::Inconsistent(format!(
                "{} holds shard {} of another cell or position (expected shard {index})",
                dir.display(),
                shard.header.shard
            )));
        }
        report.dismantled = shard.dismantle_transient()?;
        let mut live = HashSet::new();
        for v in shard.meta.volumes.values() {
            for vn in v.vnodes() {
                if vn.container != NO_CONTAINER {
                    live.insert(vn.container);
                    shard.containers.reserve_above(vn.container);
                }
            }
        }
        report.swept_containers = shard.containers.sweep(&live)?;
        let clean = dir.join(CLEAN_MARK);
        if clean.exists() {
            std::fs::remove_file(&clean)?;
            std::fs::File::open(dir)?.sync_all()?;
        } else if !report.created {
            shard.bump_stamps()?;
        }
        report.volumes = shard.meta.volumes.len();
        report.vnodes = shard.meta.volumes.values().map(|v| v.vnodes.len()).sum();
        Ok((shard, report))
    }

    fn rebuild(&mut self) -> Result<(), ShardError> {
        let view = self.rvm.read()?;
        let root = self.heap.root(&view, 0)?;
        let mut vnodes = Vec::new();
        let mut entries = Vec::new();
        let mut applied = Vec::new();
        let mut tombs = Vec::new();
        let mut header = None;
        let Meta { volumes, refs } = &mut self.meta;
        record::scan(&self.heap, &view, |found| {
            match found.kind {
                Kind::Shard if found.slot.at == root => header = Some(found.decode()?),
                Kind::Shard => {
                    return Err(RecordError::Corrupt {
                        at: found.slot.at,
                        reason: "a second shard header".into(),
                    })
                }
                Kind::Volume => {
                    let h: VolumeHeader = found.decode::<VolumeHeaderV1>()?.into();
                    volumes.insert(h.id, Volume::new(h, found.slot));
                }
                Kind::Volume2 => {
                    let h: VolumeHeader = found.decode()?;
                    volumes.insert(h.id, Volume::new(h, found.slot));
                }
                Kind::Vnode => vnodes.push((found.slot, found.decode::<VnodeV1>()?.into())),
                Kind::Vnode2 => vnodes.push((found.slot, found.decode::<VnodeV2>()?.into())),
                Kind::Vnode3 => vnodes.push((found.slot, found.decode::<Vnode>()?)),
                Kind::Entry => entries.push((found.slot, found.decode::<EntryRecord>()?)),
                Kind::Applied => applied.push((found.slot, found.decode::<AppliedRecord>()?)),
                Kind::Tombstone => tombs.push((found.slot, found.decode::<TombRecord>()?)),
            }
            Ok(())
        })?;
        self.header =
            header.ok_or_else(|| ShardError::Inconsistent("the shard header is missing".into()))?;
        let orphan = |what: &str, at: u64, vol: VolumeId| {
            ShardError::Inconsistent(format!("{what} at {at} belongs to missing volume {vol:x}"))
        };
        for (slot, v) in vnodes {
            let vol = volumes
                .get_mut(&v.fid.volume)
                .ok_or_else(|| orphan("vnode", slot.at, v.fid.volume))?;
            vol.account(None, Some(&v));
            if v.is_dir() {
                vol.dirs.entry(v.fid.vnode).or_default();
            }
            if v.container != NO_CONTAINER {
                *refs.entry(v.container).or_default() += 1;
            }
            vol.vnodes.insert(v.fid.vnode, (slot, v));
        }
        for (slot, e) in entries {
            let vol = volumes
                .get_mut(&e.dir.volume)
                .ok_or_else(|| orphan("entry", slot.at, e.dir.volume))?;
            vol.dirs
                .entry(e.dir.vnode)
                .or_default()
                .insert(e.name, (slot, e.fid));
        }
        for (slot, a) in applied {
            let vol = volumes
                .get_mut(&a.volume)
                .ok_or_else(|| orphan("batch record", slot.at, a.volume))?;
            vol.applied.insert((a.user, a.host), (slot, a));
        }
        for (slot, t) in tombs {
            let vol = volumes
                .get_mut(&t.dir.volume)
                .ok_or_else(|| orphan("tombstone", slot.at, t.dir.volume))?;
            vol.tombs.entry(t.dir.vnode).or_default().push((slot, t));
        }
        Ok(())
    }

    pub fn begin(&mut self) -> Result<Txn<'_>, rvm::Error> {
        self.split().1
    }

    /// Runs `f` in a transaction: committed if it succeeds, aborted (in
    /// RVM and in memory) if it fails.
    pub fn transact<T>(
        &mut self,
        durability: Durability,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, rvm::Error>,
    ) -> Result<(T, CommitId), rvm::Error> {
        let mut txn = self.begin()?;
        match f(&mut txn) {
            Ok(v) => Ok((v, txn.commit(durability)?)),
            Err(e) => {
                txn.abort()?;
                Err(e)
            }
        }
    }

    /// A transaction, and the containers beside it.
    pub fn split(&mut self) -> (&mut Containers, Result<Txn<'_>, rvm::Error>) {
        let txn = self.rvm.begin(Mode::Restore).map(|tx| Txn {
            tx,
            heap: self.heap,
            meta: &mut self.meta,
            doomed: &mut self.doomed,
            last_commit: &mut self.last_commit,
            dropped: Vec::new(),
            undo: Vec::new(),
        });
        (&mut self.containers, txn)
    }

    /// The latest commit: durable once every update so far is.
    pub fn last_commit(&self) -> CommitId {
        self.last_commit
    }

    pub fn rvm(&self) -> &Rvm {
        &self.rvm
    }

    /// Makes every commit durable and unlinks the containers that waited on it.
    pub fn flush(&mut self) -> Result<(), rvm::Error> {
        self.rvm.flush()?;
        self.reap();
        Ok(())
    }

    /// After a crash, stamps of updates that were answered (read replies
    /// do not wait for durability) but lost must never be reused: every
    /// volume's stamp jumps, and clients revalidate object by object.
    fn bump_stamps(&mut self) -> Result<(), ShardError> {
        let headers: Vec<VolumeHeader> = self
            .meta
            .volumes
            .values()
            .map(|v| v.header.clone())
            .collect();
        if headers.is_empty() {
            return Ok(());
        }
        self.transact(Durability::Flush, |txn| {
            headers.into_iter().try_for_each(|mut h| {
                // A volume unchanged since its restore still is: an
                // incremental dump may still be applied over it.
                if let Some((dump, stamp)) = h.restored.filter(|r| r.1 == h.stamp) {
                    h.restored = Some((dump, stamp + STAMP_EPOCH));
                }
                h.stamp += STAMP_EPOCH;
                txn.put_header(h)
            })
        })?;
        Ok(())
    }

    /// Flushes and marks the shard as shut down cleanly, so the next open
    /// keeps the volume stamps.
    pub fn close_cleanly(&mut self) -> Result<(), ShardError> {
        self.flush()?;
        let dir = self
            .containers
            .dir()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        std::fs::File::create(dir.join(CLEAN_MARK))?.sync_all()?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(())
    }

    /// Unlinks containers whose dropping commit is durable and that no
    /// dump still reads.
    pub fn reap(&mut self) {
        let rvm = &self.rvm;
        let containers = &self.containers;
        let pins = &self.pins;
        self.doomed.retain(|&(commit, id)| {
            let gone = rvm.is_durable(commit) && !pins.contains_key(&id);
            if gone {
                containers.remove(id);
            }
            !gone
        });
    }

    /// Keeps `containers` on disk until [`Shard::unpin`], even if their
    /// vnodes change meanwhile (a dump's snapshot reads them later).
    pub fn pin(&mut self, containers: &[u64]) {
        for &c in containers {
            *self.pins.entry(c).or_default() += 1;
        }
    }

    pub fn unpin(&mut self, containers: &[u64]) {
        for c in containers {
            if let std::collections::hash_map::Entry::Occupied(mut e) = self.pins.entry(*c) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
        self.reap();
    }

    /// Checks the heap's own structure (the consistency checker's first step).
    pub fn verify_heap(&self) -> Result<rvm::heap::HeapStats, rvm::Error> {
        self.heap.verify(&self.rvm.read()?)
    }
}

enum Undo {
    Vnode(VolumeId, u64, Option<(Slot, Vnode)>),
    Entry(Fid, String, Option<(Slot, Fid)>),
    Header(VolumeId, Slot, VolumeHeader),
    Applied(VolumeId, (i32, u64), Option<(Slot, AppliedRecord)>),
    /// A directory's tombstones before the change.
    Tombs(Fid, Vec<(Slot, TombRecord)>),
    /// A tombstone added to a directory (undone without copying the rest).
    TombAdded(Fid, Slot),
    VolumeCreated(VolumeId),
    VolumeRemoved(Box<Volume>),
}

/// One RVM transaction over a shard's metadata, applied to the in-memory
/// indexes as it goes and undone from both on abort.
pub struct Txn<'a> {
    tx: Transaction<'a>,
    heap: Heap,
    pub meta: &'a mut Meta,
    doomed: &'a mut Vec<(CommitId, u64)>,
    last_commit: &'a mut CommitId,
    /// Containers no longer referenced once this commits.
    dropped: Vec<u64>,
    undo: Vec<Undo>,
}

type TxResult<T> = Result<T, rvm::Error>;

impl Txn<'_> {
    pub fn volume(&self, id: VolumeId) -> Option<&Volume> {
        self.meta.volumes.get(&id)
    }

    fn volume_mut(&mut self, id: VolumeId) -> &mut Volume {
        self.meta
            .volumes
            .get_mut(&id)
            .expect("callers check that the volume exists")
    }

    /// Writes `v` (new or changed). A container it no longer uses is
    /// unlinked once the commit is durable.
    pub fn put_vnode(&mut self, v: Vnode) -> TxResult<()> {
        let (id, vnode) = (v.fid.volume, v.fid.vnode);
        let old = self.volume_mut(id).vnodes.get(&vnode).cloned();
        let slot = match &old {
            Some((slot, _)) => record::update(&self.heap, &mut self.tx, *slot, Kind::Vnode3, &v)?,
            None => record::insert(&self.heap, &mut self.tx, Kind::Vnode3, &v)?,
        };
        if let Some((_, o)) = &old {
            if o.container != NO_CONTAINER && o.container != v.container {
                self.dropped.push(o.container);
            }
        }
        self.meta.release(old.as_ref().map(|(_, o)| o));
        self.meta.hold(Some(&v));
        let vol = self.volume_mut(id);
        vol.account(old.as_ref().map(|(_, o)| o), Some(&v));
        if v.is_dir() {
            vol.dirs.entry(v.fid.vnode).or_default();
        } else {
            // A directory replaced by a file (a restore) takes its (empty) map along.
            vol.dirs.remove(&v.fid.vnode);
        }
        vol.vnodes.insert(v.fid.vnode, (slot, v));
        self.undo.push(Undo::Vnode(id, vnode, old));
        Ok(())
    }

    pub fn remove_vnode(&mut self, fid: Fid) -> TxResult<()> {
        let vol = self.volume_mut(fid.volume);
        let Some((slot, v)) = vol.vnodes.remove(&fid.vnode) else {
            return Ok(());
        };
        vol.account(Some(&v), None);
        if v.is_dir() {
            vol.dirs.remove(&fid.vnode);
        }
        self.meta.release(Some(&v));
        let container = v.container;
        // Undo first: if RVM refuses the change, the abort restores memory.
        self.undo
            .push(Undo::Vnode(fid.volume, fid.vnode, Some((slot, v))));
        record::remove(&self.heap, &mut self.tx, slot)?;
        if container != NO_CONTAINER {
            self.dropped.push(container);
        }
        // A directory's tombstones go with it.
        self.drop_tombstones(fid, |_| true)
    }

    pub fn put_entry(&mut self, dir: Fid, name: &str, fid: Fid) -> TxResult<()> {
        let rec = EntryRecord {
            dir,
            name: name.to_string(),
            fid,
        };
        let old = self
            .volume_mut(dir.volume)
            .dirs
            .get(&dir.vnode)
            .and_then(|d| d.get(name))
            .copied();
        let slot = match old {
            Some((slot, _)) => record::update(&self.heap, &mut self.tx, slot, Kind::Entry, &rec)?,
            None => record::insert(&self.heap, &mut self.tx, Kind::Entry, &rec)?,
        };
        self.volume_mut(dir.volume)
            .dirs
            .entry(dir.vnode)
            .or_default()
            .insert(rec.name.clone(), (slot, fid));
        self.undo.push(Undo::Entry(dir, rec.name, old));
        Ok(())
    }

    pub fn remove_entry(&mut self, dir: Fid, name: &str) -> TxResult<()> {
        let old = self
            .volume_mut(dir.volume)
            .dirs
            .get_mut(&dir.vnode)
            .and_then(|d| d.remove(name));
        if let Some((slot, _)) = old {
            self.undo.push(Undo::Entry(dir, name.to_string(), old));
            record::remove(&self.heap, &mut self.tx, slot)?;
        }
        Ok(())
    }

    pub fn put_header(&mut self, h: VolumeHeader) -> TxResult<()> {
        let vol = self.volume_mut(h.id);
        let (slot, old) = (vol.slot, vol.header.clone());
        let new_slot = record::update(&self.heap, &mut self.tx, slot, Kind::Volume2, &h)?;
        let vol = self.volume_mut(h.id);
        vol.slot = new_slot;
        vol.header = h;
        self.undo.push(Undo::Header(old.id, slot, old));
        Ok(())
    }

    pub fn create_volume(&mut self, h: VolumeHeader) -> TxResult<()> {
        let slot = record::insert(&self.heap, &mut self.tx, Kind::Volume2, &h)?;
        let id = h.id;
        self.meta.volumes.insert(id, Volume::new(h, slot));
        self.undo.push(Undo::VolumeCreated(id));
        Ok(())
    }

    /// Removes a volume and everything in it.
    pub fn remove_volume(&mut self, id: VolumeId) -> TxResult<()> {
        let Some(vol) = self.meta.volumes.remove(&id) else {
            return Ok(());
        };
        let heap = self.heap;
        let slots: Vec<Slot> = std::iter::once(vol.slot)
            .chain(vol.vnodes.values().map(|(s, _)| *s))
            .chain(vol.dirs.values().flat_map(|d| d.values().map(|(s, _)| *s)))
            .chain(vol.applied.values().map(|(s, _)| *s))
            .chain(vol.tombs.values().flat_map(|t| t.iter().map(|(s, _)| *s)))
            .collect();
        let containers: Vec<u64> = vol
            .vnodes
            .values()
            .map(|(_, v)| v.container)
            .filter(|&c| c != NO_CONTAINER)
            .collect();
        for (_, v) in vol.vnodes.values() {
            self.meta.release(Some(v));
        }
        self.undo.push(Undo::VolumeRemoved(Box::new(vol)));
        for slot in slots {
            record::remove(&heap, &mut self.tx, slot)?;
        }
        self.dropped.extend(containers);
        Ok(())
    }

    pub fn put_applied(&mut self, a: AppliedRecord) -> TxResult<()> {
        let (vol_id, host) = (a.volume, (a.user, a.host));
        let old = self.volume_mut(vol_id).applied.get(&host).cloned();
        let slot = match &old {
            Some((slot, _)) => record::update(&self.heap, &mut self.tx, *slot, Kind::Applied, &a)?,
            None => record::insert(&self.heap, &mut self.tx, Kind::Applied, &a)?,
        };
        self.volume_mut(vol_id).applied.insert(host, (slot, a));
        self.undo.push(Undo::Applied(vol_id, host, old));
        Ok(())
    }

    /// Records that `tomb` was removed from directory `dir`.
    pub fn put_tombstone(&mut self, dir: Fid, tomb: Tombstone) -> TxResult<()> {
        let rec = TombRecord { dir, tomb };
        let slot = record::insert(&self.heap, &mut self.tx, Kind::Tombstone, &rec)?;
        self.volume_mut(dir.volume)
            .tombs
            .entry(dir.vnode)
            .or_default()
            .push((slot, rec));
        self.undo.push(Undo::TombAdded(dir, slot));
        Ok(())
    }

    /// Drops the tombstones of `dir` that `drop` picks.
    pub fn drop_tombstones(&mut self, dir: Fid, drop: impl Fn(&Tombstone) -> bool) -> TxResult<()> {
        let Some(tombs) = self.volume_mut(dir.volume).tombs.get(&dir.vnode).cloned() else {
            return Ok(());
        };
        let (gone, kept): (Vec<_>, Vec<_>) =
            tombs.iter().cloned().partition(|(_, t)| drop(&t.tomb));
        if gone.is_empty() {
            return Ok(());
        }
        self.undo.push(Undo::Tombs(dir, tombs));
        let vol = self.volume_mut(dir.volume);
        if kept.is_empty() {
            vol.tombs.remove(&dir.vnode);
        } else {
            vol.tombs.insert(dir.vnode, kept);
        }
        for (slot, _) in gone {
            record::remove(&self.heap, &mut self.tx, slot)?;
        }
        Ok(())
    }

    /// Commits; the containers this dropped are unlinked once it is durable.
    /// A commit RVM refuses leaves memory as it was before, too.
    pub fn commit(self, durability: Durability) -> TxResult<CommitId> {
        match self.tx.commit(durability) {
            Ok(id) => {
                *self.last_commit = id;
                // A clone may still use what this vnode let go of.
                let meta = &*self.meta;
                self.doomed.extend(
                    self.dropped
                        .into_iter()
                        .filter(|&c| meta.refs(c) == 0)
                        .map(|c| (id, c)),
                );
                Ok(id)
            }
            Err(e) => {
                restore(self.meta, self.undo);
                Err(e)
            }
        }
    }

    /// Undoes everything, in RVM and in memory.
    pub fn abort(self) -> TxResult<()> {
        restore(self.meta, self.undo);
        self.tx.abort()
    }
}

/// Replays `undo` backwards over the in-memory indexes.
fn restore(meta: &mut Meta, undo: Vec<Undo>) {
    for u in undo.into_iter().rev() {
        match u {
            Undo::Vnode(vol, vnode, old) => {
                let v = meta.volumes.get_mut(&vol).expect("undo follows do");
                let now = v.vnodes.remove(&vnode);
                v.account(now.as_ref().map(|(_, n)| n), old.as_ref().map(|(_, o)| o));
                meta.release(now.as_ref().map(|(_, n)| n));
                meta.hold(old.as_ref().map(|(_, o)| o));
                let v = meta.volumes.get_mut(&vol).expect("undo follows do");
                match old {
                    Some((slot, o)) => {
                        if o.is_dir() {
                            v.dirs.entry(vnode).or_default();
                        }
                        v.vnodes.insert(vnode, (slot, o));
                    }
                    None => {
                        v.dirs.remove(&vnode);
                    }
                }
            }
            Undo::Entry(dir, name, old) => {
                let v = meta.volumes.get_mut(&dir.volume).expect("undo follows do");
                let d = v.dirs.entry(dir.vnode).or_default();
                match old {
                    Some(e) => {
                        d.insert(name, e);
                    }
                    None => {
                        d.remove(&name);
                    }
                }
            }
            Undo::Header(vol, slot, old) => {
                let v = meta.volumes.get_mut(&vol).expect("undo follows do");
                v.slot = slot;
                v.header = old;
            }
            Undo::Applied(vol, host, old) => {
                let v = meta.volumes.get_mut(&vol).expect("undo follows do");
                match old {
                    Some(a) => v.applied.insert(host, a),
                    None => v.applied.remove(&host),
                };
            }
            Undo::Tombs(dir, old) => {
                let v = meta.volumes.get_mut(&dir.volume).expect("undo follows do");
                if old.is_empty() {
                    v.tombs.remove(&dir.vnode);
                } else {
                    v.tombs.insert(dir.vnode, old);
                }
            }
            Undo::TombAdded(dir, slot) => {
                let v = meta.volumes.get_mut(&dir.volume).expect("undo follows do");
                if let Some(t) = v.tombs.get_mut(&dir.vnode) {
                    t.retain(|(s, _)| *s != slot);
                    if t.is_empty() {
                        v.tombs.remove(&dir.vnode);
                    }
                }
            }
            Undo::VolumeCreated(id) => {
                meta.volumes.remove(&id);
            }
            Undo::VolumeRemoved(vol) => {
                for (_, v) in vol.vnodes.values() {
                    meta.hold(Some(v));
                }
                meta.volumes.insert(vol.id(), *vol);
            }
        }
    }
}
