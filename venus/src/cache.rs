//! The persistent cache: container files, and in one RVM instance the
//! metadata — objects (with the inode↔fid map), directory entries, volume
//! information and the CML — as records of the recoverable heap. At start
//! the heap is walked and the in-memory indexes rebuilt, so RVM is the only
//! truth. Every change goes through a [`Tx`], which changes records and
//! indexes together. Cache bookkeeping is not flushed commit by commit:
//! the servers hold the truth of what was reintegrated, and a crash loses
//! at most the last second of it, which revalidation repairs. What only
//! this client knows (its CML) is written before the call returns.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::{Arc, Mutex};

use coda_proto::vice::{DirEntry, VolumeInfo};
use coda_proto::{Fid, VnodeKind, VolumeId};
use coda_rpc2::codec::{self, Decode, Encode};
use coda_rpc2::codec_struct;
use rvm::heap::Heap;
use rvm::record::{self, Slot};
use rvm::{Durability, Mode, Options, Rvm, Transaction, View};

use crate::cml::LogEntry;
use crate::conflict::Conflict;
use crate::container::{self, Containers};
use crate::fsobj::{FsObj, ObjRecord};
use crate::hoard::HoardRecord;

/// The root directory of the mount.
pub const ROOT_INO: u64 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("RVM: {0}")]
    Rvm(#[from] rvm::Error),
    #[error("cache files: {0}")]
    Io(#[from] std::io::Error),
    #[error("record at {at}: {reason}")]
    Corrupt { at: u64, reason: String },
    #[error("the cache is of format {found}, this venus keeps format {want}; start with an empty --cache directory")]
    Format { found: u32, want: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    Meta = 1,
    Obj = 2,
    Entry = 3,
    Volume = 4,
    Cml = 5,
    Conflict = 6,
    Hoard = 7,
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Meta {
        /// This client's id in store ids; kept for the cache's life.
        host: u64,
        format: u32,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    struct EntryRecord {
        dir: Fid,
        name: String,
        fid: Fid,
    }
}

const FORMAT: u32 = 5;

/// Each cached object's inode number, readable without the core: a
/// callback break tells the kernel to forget an inode before it is answered.
pub type KernelInos = Arc<Mutex<HashMap<Fid, u64>>>;

/// The in-memory indexes over the cache's records.
#[derive(Default)]
pub struct Index {
    pub objs: HashMap<Fid, FsObj>,
    pub inos: HashMap<u64, Fid>,
    pub kernel_inos: KernelInos,
    /// Cached directory entries, by directory.
    pub dirs: HashMap<Fid, BTreeMap<String, (Slot, Fid)>>,
    pub volumes: HashMap<VolumeId, (Slot, VolumeInfo)>,
    /// The client modification log, in order.
    pub cml: BTreeMap<u64, (Slot, LogEntry)>,
    /// Objects in conflict, with the records the server refused.
    pub conflicts: HashMap<Fid, (Slot, Conflict)>,
    /// The hoard database, by path below the mount.
    pub hoard: BTreeMap<String, (Slot, HoardRecord)>,
    next_ino: u64,
}

pub struct Cache {
    rvm: Rvm,
    heap: Heap,
    idx: Index,
    pub host: u64,
    pub containers: Containers,
    /// Bytes in containers.
    pub bytes: u64,
}

impl Deref for Cache {
    type Target = Index;
    fn deref(&self) -> &Index {
        &self.idx
    }
}

impl DerefMut for Cache {
    fn deref_mut(&mut self) -> &mut Index {
        &mut self.idx
    }
}

/// One transaction over the cache: records and indexes change together.
/// Containers it lets go are removed once it commits.
pub struct Tx<'a> {
    tx: Transaction<'a>,
    heap: &'a Heap,
    idx: &'a mut Index,
    dropped: Vec<u64>,
}

impl Deref for Tx<'_> {
    type Target = Index;
    fn deref(&self) -> &Index {
        self.idx
    }
}

impl DerefMut for Tx<'_> {
    fn deref_mut(&mut self) -> &mut Index {
        self.idx
    }
}

fn put<T: Encode>(
    heap: &Heap,
    tx: &mut Transaction<'_>,
    slot: Option<Slot>,
    kind: Kind,
    value: &T,
) -> rvm::Result<Slot> {
    match slot {
        Some(s) => record::update(heap, tx, s, kind as u8, |w| value.encode(w)),
        None => record::insert(heap, tx, kind as u8, |w| value.encode(w)),
    }
}

fn decode<T: Decode>(at: u64, body: &[u8]) -> Result<T, CacheError> {
    codec::from_bytes(body).map_err(|e| CacheError::Corrupt {
        at,
        reason: e.to_string(),
    })
}

impl Cache {
    /// Opens (or creates) the cache in `dir`.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<Cache, CacheError> {
        std::fs::create_dir_all(dir)?;
        let opts = Options {
            log_area_bytes: 64 << 20,
            ..Options::default()
        };
        let (rvm, report) = Rvm::open_files(
            &dir.join("venus.seg"),
            &dir.join("venus.log"),
            segment_bytes,
            opts,
        )?;
        tracing::info!("cache metadata recovered: {:?}", report.tail);
        let (found, fresh) = {
            let view = rvm.read()?;
            (Heap::open(&view, 0), view.u64_at(0)? == 0)
        };
        let heap = match found {
            Ok(h) => h,
            Err(rvm::Error::HeapCorrupt { .. }) if fresh => {
                let mut tx = rvm.begin(Mode::NoRestore)?;
                let heap = Heap::init(&mut tx, 0, rvm.data_len())?;
                let mut host = [0u8; 8];
                coda_rpc2::udp::getrandom_fill(&mut host)?;
                let meta = Meta {
                    host: u64::from_le_bytes(host) >> 1,
                    format: FORMAT,
                };
                put(&heap, &mut tx, None, Kind::Meta, &meta)?;
                tx.commit(Durability::Flush)?;
                heap
            }
            Err(e) => return Err(e.into()),
        };
        let mut cache = Cache {
            rvm,
            heap,
            idx: Index {
                next_ino: ROOT_INO + 1,
                ..Index::default()
            },
            host: 0,
            containers: Containers::open(&dir.join("containers"))?,
            bytes: 0,
        };
        cache.rebuild()?;
        let live: HashSet<u64> = cache
            .objs
            .values()
            .map(|o| o.rec.container)
            .filter(|&c| c != container::NONE)
            .collect();
        let swept = cache.containers.sweep(&live)?;
        cache.bytes = cache
            .idx
            .objs
            .values()
            .filter(|o| o.rec.container != container::NONE)
            .map(|o| {
                std::fs::metadata(cache.containers.path(o.rec.container)).map_or(0, |m| m.len())
            })
            .sum();
        tracing::info!(
            "cache: {} objects, {} bytes of data, {swept} stray containers removed",
            cache.objs.len(),
            cache.bytes
        );
        Ok(cache)
    }

    fn rebuild(&mut self) -> Result<(), CacheError> {
        let view = self.rvm.read()?;
        let mut entries = Vec::new();
        let mut meta = None;
        let Index {
            objs,
            volumes,
            cml,
            conflicts,
            hoard,
            ..
        } = &mut self.idx;
        record::scan(&self.heap, &view, |f| -> Result<(), CacheError> {
            match f.kind {
                k if k == Kind::Meta as u8 => {
                    // The header is the heap's first record: a cache of
                    // another format is refused before its records are read.
                    let m = decode::<Meta>(f.slot.at, f.body)?;
                    if m.format != FORMAT {
                        return Err(CacheError::Format {
                            found: m.format,
                            want: FORMAT,
                        });
                    }
                    meta = Some(m);
                }
                k if k == Kind::Obj as u8 => {
                    let rec: ObjRecord = decode(f.slot.at, f.body)?;
                    objs.insert(rec.fid, FsObj::from_record(rec, Some(f.slot)));
                }
                k if k == Kind::Entry as u8 => {
                    entries.push((f.slot, decode::<EntryRecord>(f.slot.at, f.body)?));
                }
                k if k == Kind::Volume as u8 => {
                    let v: VolumeInfo = decode(f.slot.at, f.body)?;
                    volumes.insert(v.id, (f.slot, v));
                }
                k if k == Kind::Cml as u8 => {
                    let e: LogEntry = decode(f.slot.at, f.body)?;
                    cml.insert(e.seq, (f.slot, e));
                }
                k if k == Kind::Conflict as u8 => {
                    let c: Conflict = decode(f.slot.at, f.body)?;
                    conflicts.insert(c.fid, (f.slot, c));
                }
                k if k == Kind::Hoard as u8 => {
                    let h: HoardRecord = decode(f.slot.at, f.body)?;
                    hoard.insert(h.entry.path.clone(), (f.slot, h));
                }
                k => {
                    return Err(CacheError::Corrupt {
                        at: f.slot.at,
                        reason: format!("unknown kind {k}"),
                    })
                }
            }
            Ok(())
        })?;
        let meta = meta.ok_or(CacheError::Corrupt {
            at: 0,
            reason: "no cache header".into(),
        })?;
        self.host = meta.host;
        let idx = &mut self.idx;
        let mut kernel = idx.kernel_inos.lock().unwrap_or_else(|p| p.into_inner());
        for o in idx.objs.values() {
            idx.inos.insert(o.rec.ino, o.rec.fid);
            kernel.insert(o.rec.fid, o.rec.ino);
            idx.next_ino = idx.next_ino.max(o.rec.ino + 1);
        }
        drop(kernel);
        // A directory whose entries are cached has a listing even when it
        // is empty (no entry records say so).
        for o in idx.objs.values() {
            if o.rec.kind == VnodeKind::Directory && o.rec.data.is_some() {
                idx.dirs.entry(o.rec.fid).or_default();
            }
        }
        for (slot, e) in entries {
            idx.dirs
                .entry(e.dir)
                .or_default()
                .insert(e.name, (slot, e.fid));
        }
        Ok(())
    }

    /// Makes every commit so far durable.
    pub fn flush(&self) -> Result<(), CacheError> {
        Ok(self.rvm.flush()?)
    }

    /// Runs `f` as one transaction, committed with `durability`.
    pub fn update<R>(
        &mut self,
        durability: Durability,
        f: impl FnOnce(&mut Tx<'_>) -> Result<R, CacheError>,
    ) -> Result<R, CacheError> {
        let dropped = {
            let mut t = Tx {
                tx: self.rvm.begin(Mode::NoRestore)?,
                heap: &self.heap,
                idx: &mut self.idx,
                dropped: Vec::new(),
            };
            match f(&mut t) {
                Ok(r) => {
                    t.tx.commit(durability)?;
                    (r, t.dropped)
                }
                Err(e) => {
                    // Nothing written aborts cleanly; a half-made change
                    // stops the RVM, which is what it should do.
                    t.tx.abort()?;
                    return Err(e);
                }
            }
        };
        let (r, dropped) = dropped;
        for id in dropped {
            self.drop_container(id);
        }
        Ok(r)
    }

    /// Writes `fid`'s record.
    pub fn save(&mut self, fid: Fid) -> Result<(), CacheError> {
        self.update(Durability::NoFlush, |t| t.save(fid))
    }

    /// Forgets `fid` altogether: record, container, entries, inode.
    pub fn drop_obj(&mut self, fid: Fid) -> Result<(), CacheError> {
        self.update(Durability::NoFlush, |t| t.drop_obj(fid))
    }

    /// Removes a container that no object refers to any more.
    pub fn drop_container(&mut self, id: u64) {
        if id != container::NONE {
            let len = std::fs::metadata(self.containers.path(id)).map_or(0, |m| m.len());
            self.bytes = self.bytes.saturating_sub(len);
            self.containers.remove(id);
        }
    }

    /// Replaces a directory's cached entries by a fresh listing; returns
    /// the names that changed (gone or bound to another object).
    pub fn set_entries(
        &mut self,
        dir: Fid,
        listing: &[DirEntry],
    ) -> Result<Vec<String>, CacheError> {
        self.update(Durability::NoFlush, |t| t.set_entries(dir, listing))
    }

    /// Binds `name` in `dir` to `fid` (replacing what it named).
    pub fn add_entry(&mut self, dir: Fid, name: &str, fid: Fid) -> Result<(), CacheError> {
        self.update(Durability::NoFlush, |t| t.add_entry(dir, name, fid))
    }

    pub fn remove_entry(&mut self, dir: Fid, name: &str) -> Result<(), CacheError> {
        self.update(Durability::NoFlush, |t| t.remove_entry(dir, name))
    }

    pub fn put_volume(&mut self, info: VolumeInfo) -> Result<(), CacheError> {
        self.update(Durability::NoFlush, |t| t.put_volume(info))
    }

    pub fn close(self) -> Result<(), CacheError> {
        self.rvm.flush()?;
        Ok(self.rvm.close()?)
    }
}

impl Index {
    /// The object for `fid`, made (known only by name, with a new inode
    /// number) if it is not cached yet. The root of the mount is `root`.
    pub fn obj_or_new(&mut self, fid: Fid, kind: VnodeKind, root: bool) -> &mut FsObj {
        if !self.objs.contains_key(&fid) {
            let ino = if root {
                ROOT_INO
            } else {
                self.next_ino += 1;
                self.next_ino - 1
            };
            let mut kernel = self.kernel_inos.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(old) = self.inos.insert(ino, fid) {
                // The root moved to another fid (a new cell at the same cache).
                self.objs.remove(&old);
                kernel.remove(&old);
            }
            kernel.insert(fid, ino);
            drop(kernel);
            self.objs.insert(fid, FsObj::new(fid, ino, kind));
        }
        self.objs.get_mut(&fid).expect("just made")
    }
}

impl Tx<'_> {
    /// Writes `fid`'s record.
    pub fn save(&mut self, fid: Fid) -> Result<(), CacheError> {
        let Some(o) = self.idx.objs.get_mut(&fid) else {
            return Ok(());
        };
        o.slot = Some(put(self.heap, &mut self.tx, o.slot, Kind::Obj, &o.rec)?);
        Ok(())
    }

    /// Forgets `fid` altogether: record, container, entries, inode.
    pub fn drop_obj(&mut self, fid: Fid) -> Result<(), CacheError> {
        let Some(o) = self.idx.objs.remove(&fid) else {
            return Ok(());
        };
        self.idx.inos.remove(&o.rec.ino);
        self.idx
            .kernel_inos
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fid);
        if let Some(s) = o.slot {
            record::remove(self.heap, &mut self.tx, s)?;
        }
        for (_, (slot, _)) in self.idx.dirs.remove(&fid).unwrap_or_default() {
            record::remove(self.heap, &mut self.tx, slot)?;
        }
        self.dropped.push(o.rec.container);
        Ok(())
    }

    /// Lets go of a container once this transaction commits.
    pub fn drop_container(&mut self, id: u64) {
        self.dropped.push(id);
    }

    /// Replaces a directory's cached entries by a fresh listing; returns
    /// the names that changed (gone or bound to another object).
    pub fn set_entries(
        &mut self,
        dir: Fid,
        listing: &[DirEntry],
    ) -> Result<Vec<String>, CacheError> {
        let mut old = self.idx.dirs.remove(&dir).unwrap_or_default();
        let mut fresh = BTreeMap::new();
        let mut changed = Vec::new();
        for e in listing {
            let rec = EntryRecord {
                dir,
                name: e.name.clone(),
                fid: e.fid,
            };
            let slot = match old.remove(&e.name) {
                Some((slot, fid)) if fid == e.fid => slot,
                Some((slot, _)) => {
                    changed.push(e.name.clone());
                    put(self.heap, &mut self.tx, Some(slot), Kind::Entry, &rec)?
                }
                None => put(self.heap, &mut self.tx, None, Kind::Entry, &rec)?,
            };
            fresh.insert(e.name.clone(), (slot, e.fid));
        }
        for (name, (slot, _)) in old {
            record::remove(self.heap, &mut self.tx, slot)?;
            changed.push(name);
        }
        self.idx.dirs.insert(dir, fresh);
        for e in listing {
            let o = self.idx.obj_or_new(e.fid, e.kind, false);
            if o.slot.is_none() {
                self.save(e.fid)?;
            }
        }
        Ok(changed)
    }

    /// Binds `name` in `dir` to `fid` (replacing what it named), if the
    /// directory's entries are cached.
    pub fn add_entry(&mut self, dir: Fid, name: &str, fid: Fid) -> Result<(), CacheError> {
        let Some(entries) = self.idx.dirs.get_mut(&dir) else {
            return Ok(());
        };
        let rec = EntryRecord {
            dir,
            name: name.to_string(),
            fid,
        };
        let old = entries.get(name).map(|(s, _)| *s);
        let slot = put(self.heap, &mut self.tx, old, Kind::Entry, &rec)?;
        entries.insert(name.to_string(), (slot, fid));
        Ok(())
    }

    pub fn remove_entry(&mut self, dir: Fid, name: &str) -> Result<(), CacheError> {
        let Some((slot, _)) = self.idx.dirs.get_mut(&dir).and_then(|e| e.remove(name)) else {
            return Ok(());
        };
        record::remove(self.heap, &mut self.tx, slot)?;
        Ok(())
    }

    pub fn put_volume(&mut self, info: VolumeInfo) -> Result<(), CacheError> {
        let old = self.idx.volumes.get(&info.id).map(|(s, _)| *s);
        let slot = put(self.heap, &mut self.tx, old, Kind::Volume, &info)?;
        self.idx.volumes.insert(info.id, (slot, info));
        Ok(())
    }

    /// Appends a record to the CML (or rewrites one already there).
    pub fn put_cml(&mut self, entry: LogEntry) -> Result<(), CacheError> {
        let old = self.idx.cml.get(&entry.seq).map(|(s, _)| *s);
        let slot = put(self.heap, &mut self.tx, old, Kind::Cml, &entry)?;
        self.idx.cml.insert(entry.seq, (slot, entry));
        Ok(())
    }

    pub fn remove_cml(&mut self, seq: u64) -> Result<(), CacheError> {
        if let Some((slot, _)) = self.idx.cml.remove(&seq) {
            record::remove(self.heap, &mut self.tx, slot)?;
        }
        Ok(())
    }

    pub fn put_conflict(&mut self, c: Conflict) -> Result<(), CacheError> {
        let old = self.idx.conflicts.get(&c.fid).map(|(s, _)| *s);
        let slot = put(self.heap, &mut self.tx, old, Kind::Conflict, &c)?;
        self.idx.conflicts.insert(c.fid, (slot, c));
        Ok(())
    }

    pub fn put_hoard(&mut self, h: HoardRecord) -> Result<(), CacheError> {
        let old = self.idx.hoard.get(&h.entry.path).map(|(s, _)| *s);
        let slot = put(self.heap, &mut self.tx, old, Kind::Hoard, &h)?;
        self.idx.hoard.insert(h.entry.path.clone(), (slot, h));
        Ok(())
    }

    pub fn remove_hoard(&mut self, path: &str) -> Result<(), CacheError> {
        if let Some((slot, _)) = self.idx.hoard.remove(path) {
            record::remove(self.heap, &mut self.tx, slot)?;
        }
        Ok(())
    }

    pub fn remove_conflict(&mut self, fid: Fid) -> Result<(), CacheError> {
        if let Some((slot, _)) = self.idx.conflicts.remove(&fid) {
            record::remove(self.heap, &mut self.tx, slot)?;
        }
        Ok(())
    }

    /// An object made here under a local fid got its real one: its record,
    /// inode, names, and (a directory) its entries and children follow.
    pub fn remap(&mut self, local: Fid, real: Fid) -> Result<(), CacheError> {
        let Some(mut o) = self.idx.objs.remove(&local) else {
            return Ok(());
        };
        o.rec.fid = real;
        let parent = o.rec.status.as_mut().map(|s| {
            s.fid = real;
            s.parent
        });
        self.idx.inos.insert(o.rec.ino, real);
        {
            let mut kernel = self
                .idx
                .kernel_inos
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            kernel.remove(&local);
            kernel.insert(real, o.rec.ino);
        }
        self.idx.objs.insert(real, o);
        self.save(real)?;
        // Its names (hard links stay in one directory).
        if let Some(entries) = parent.and_then(|p| self.idx.dirs.get_mut(&p)) {
            let names: Vec<String> = entries
                .iter()
                .filter(|(_, (_, f))| *f == local)
                .map(|(n, _)| n.clone())
                .collect();
            let dir = parent.expect("found");
            for name in names {
                self.add_entry(dir, &name, real)?;
            }
        }
        // Its entries, and its children's parent.
        if let Some(entries) = self.idx.dirs.remove(&local) {
            let mut fresh = BTreeMap::new();
            for (name, (slot, fid)) in entries {
                let rec = EntryRecord {
                    dir: real,
                    name: name.clone(),
                    fid,
                };
                let slot = put(self.heap, &mut self.tx, Some(slot), Kind::Entry, &rec)?;
                fresh.insert(name, (slot, fid));
                if let Some(s) = self
                    .idx
                    .objs
                    .get_mut(&fid)
                    .and_then(|c| c.rec.status.as_mut())
                {
                    if s.parent == local {
                        s.parent = real;
                        self.save(fid)?;
                    }
                }
            }
            self.idx.dirs.insert(real, fresh);
        }
        Ok(())
    }
}
