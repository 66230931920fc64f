//! Disconnected updates (Coda's emulation): the change a record will make
//! at its server, made here from what is cached, and the record appended
//! to the CML in the same RVM transaction. The effects mirror the server's
//! (`vice::fileops`): the same objects take the record's version, with the
//! same times and link counts, so the versions later records name as seen
//! are the ones the server will have when it replays them.
//!
//! The log is kept short by Coda's cancellation rules:
//! - a store cancels the earlier stores of its file, and the utimes and
//!   truncations between them;
//! - an attribute change merges into the attribute change before it when
//!   nothing else touched the object in between;
//! - an object that goes away takes its stores and attribute changes with
//!   it, and one made in this log leaves no trace at all.
//!
//! A cancelled record hands the versions it replaced (`LogEntry::before`)
//! to the records after it that named its own version as seen.

use std::collections::{BTreeSet, HashMap, HashSet};

use coda_proto::acl::Rights;
use coda_proto::cml::{CmlRecord, Op, SetAttr};
use coda_proto::vv::VersionVector;
use coda_proto::{Errno, Fid, Status, StoreId, Timestamp, VnodeKind};
use rvm::Durability;

use crate::cml::LogEntry;
use crate::core::{Result, Venus};

/// What a record does to the cache.
#[derive(Default)]
struct Effects {
    /// New statuses of the objects it changed (or made).
    statuses: Vec<Status>,
    unbind: Vec<(Fid, String)>,
    bind: Vec<(Fid, String, Fid)>,
    /// Objects no name holds any more.
    gone: Vec<Fid>,
    /// A new object and its kind.
    made: Option<(Fid, VnodeKind)>,
    before: Vec<(Fid, StoreId)>,
}

struct Emulation<'a> {
    v: &'a Venus,
    key: Option<i32>,
    sid: StoreId,
    t: Timestamp,
    user: u32,
    fx: Effects,
}

impl Emulation<'_> {
    /// An object's status as the record sees it: as changed so far by it.
    fn status(&self, fid: Fid) -> Result<Status> {
        if let Some(s) = self.fx.statuses.iter().rev().find(|s| s.fid == fid) {
            return Ok(s.clone());
        }
        self.v
            .cache
            .objs
            .get(&fid)
            .and_then(|o| o.rec.status.clone())
            .ok_or(Errno::ETIMEDOUT)
    }

    fn put(&mut self, s: Status) {
        self.fx.statuses.retain(|x| x.fid != s.fid);
        self.fx.statuses.push(s);
    }

    /// The record's version on `s`, with its time as mtime and ctime.
    fn touch(&mut self, s: &mut Status) {
        self.bump(s);
        s.data_version += 1;
        s.mtime = self.t;
        s.ctime = self.t;
        s.author = self.user;
    }

    fn bump(&mut self, s: &mut Status) {
        if !self.fx.before.iter().any(|(f, _)| *f == s.fid) {
            self.fx.before.push((s.fid, s.vv.store_id));
        }
        s.vv.bump(0, self.sid);
    }

    /// The caller's rights on an object (a file's are its directory's), as
    /// last cached; anyone's where the caller's were never asked.
    fn rights(&self, fid: Fid) -> Rights {
        self.v.cache.objs.get(&fid).map_or(Rights::NONE, |o| {
            o.rights_of(self.key)
                .or_else(|| o.rights_of(None))
                .unwrap_or(Rights::NONE)
        })
    }

    fn need(&self, dir: Fid, rights: Rights) -> Result<()> {
        self.rights(dir)
            .contains(rights)
            .then_some(())
            .ok_or(Errno::EACCES)
    }

    fn dir(&self, fid: Fid) -> Result<Status> {
        let s = self.status(fid)?;
        if s.kind != VnodeKind::Directory {
            return Err(Errno::ENOTDIR);
        }
        Ok(s)
    }

    /// What `name` names in `dir`; its entries must be cached.
    fn lookup(&self, dir: Fid, name: &str) -> Result<Option<Fid>> {
        let entries = self.v.cache.dirs.get(&dir).ok_or(Errno::ETIMEDOUT)?;
        Ok(entries.get(name).map(|(_, f)| *f))
    }

    fn empty(&self, dir: Fid) -> Result<bool> {
        let entries = self.v.cache.dirs.get(&dir).ok_or(Errno::ETIMEDOUT)?;
        Ok(entries.is_empty())
    }

    fn owner(&self, s: &Status) -> bool {
        self.key == Some(s.owner as i32)
    }

    fn may_write_file(&self, s: &Status) -> Result<()> {
        let ok =
            self.rights(s.fid).contains(Rights::WRITE) && (s.mode & 0o200 != 0 || self.owner(s));
        ok.then_some(()).ok_or(Errno::EACCES)
    }

    /// Drops one name of a non-directory; the object goes with its last.
    fn unlink(&mut self, mut s: Status) {
        if s.link_count <= 1 {
            self.fx.gone.push(s.fid);
            return;
        }
        s.link_count -= 1;
        s.ctime = self.t;
        self.bump(&mut s);
        self.put(s);
    }

    fn make(
        &mut self,
        dir: Fid,
        name: &str,
        fid: Fid,
        kind: VnodeKind,
        (mode, group): (u32, u32),
        target: &str,
    ) -> Result<()> {
        let mut d = self.dir(dir)?;
        self.need(dir, Rights::INSERT)?;
        if self.lookup(dir, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let is_dir = kind == VnodeKind::Directory;
        let mut vv = VersionVector::new(1);
        vv.bump(0, self.sid);
        let s = Status {
            fid,
            kind,
            mode: mode & 0o7777,
            owner: self.user,
            group,
            author: self.user,
            link_count: if is_dir { 2 } else { 1 },
            length: target.len() as u64,
            mtime: self.t,
            ctime: self.t,
            atime: self.t,
            data_version: 1,
            vv,
            content_hash: *blake3::hash(target.as_bytes()).as_bytes(),
            parent: dir,
            my_rights: self.rights(dir),
            any_rights: self
                .v
                .cache
                .objs
                .get(&dir)
                .and_then(|o| o.rights_of(None))
                .unwrap_or(Rights::NONE),
            callback: 0,
        };
        self.put(s);
        self.fx.made = Some((fid, kind));
        self.fx.bind.push((dir, name.into(), fid));
        if is_dir {
            d.link_count += 1;
        }
        self.touch(&mut d);
        self.put(d);
        Ok(())
    }

    fn record(&mut self, rec: &CmlRecord) -> Result<()> {
        match &rec.op {
            Op::Store(r) => {
                let mut s = self.status(r.fid)?;
                if s.kind != VnodeKind::File {
                    return Err(Errno::EISDIR);
                }
                s.length = r.length;
                s.content_hash = r.content_hash;
                self.touch(&mut s);
                self.put(s);
            }
            Op::SetAttr(r) => {
                let mut s = self.status(r.fid)?;
                let owner = self.owner(&s);
                if r.owner.is_some_and(|o| o != s.owner) {
                    self.need(r.fid, Rights::ADMINISTER)?;
                }
                if r.group.is_some_and(|g| g != s.group) && !owner {
                    self.need(r.fid, Rights::ADMINISTER)?;
                }
                if r.mode.is_some() && !owner {
                    self.need(r.fid, Rights::WRITE)?;
                }
                let times = r.mtime.is_some() || r.atime.is_some();
                if times && !owner || r.length.is_some() {
                    self.may_write_file(&s)?;
                }
                let old_mtime = s.mtime;
                self.touch(&mut s);
                match r.length {
                    Some(len) => s.length = len,
                    None => {
                        s.mtime = old_mtime;
                        s.data_version -= 1;
                    }
                }
                if let Some(m) = r.mode {
                    s.mode = m & 0o7777;
                }
                if let Some(o) = r.owner {
                    s.owner = o;
                }
                if let Some(g) = r.group {
                    s.group = g;
                }
                if let Some(m) = r.mtime {
                    s.mtime = m;
                }
                if let Some(a) = r.atime {
                    s.atime = a;
                }
                self.put(s);
            }
            Op::Create(r) => self.make(
                r.dir,
                &r.name,
                r.fid,
                VnodeKind::File,
                (r.mode, r.group),
                "",
            )?,
            Op::MakeDir(r) => self.make(
                r.dir,
                &r.name,
                r.fid,
                VnodeKind::Directory,
                (r.mode, r.group),
                "",
            )?,
            Op::SymLink(r) => self.make(
                r.dir,
                &r.name,
                r.fid,
                VnodeKind::Symlink,
                (0o777, r.group),
                &r.target,
            )?,
            Op::Link(r) => {
                let mut d = self.dir(r.dir)?;
                self.need(r.dir, Rights::INSERT)?;
                if self.lookup(r.dir, &r.name)?.is_some() {
                    return Err(Errno::EEXIST);
                }
                let mut s = self.status(r.fid)?;
                if s.kind == VnodeKind::Directory {
                    // Mount points are made connected.
                    return Err(Errno::EPERM);
                }
                if s.parent != r.dir {
                    return Err(Errno::EXDEV);
                }
                s.link_count += 1;
                s.ctime = self.t;
                self.bump(&mut s);
                self.put(s);
                self.touch(&mut d);
                self.put(d);
                self.fx.bind.push((r.dir, r.name.clone(), r.fid));
            }
            Op::Remove(r) => {
                let mut d = self.dir(r.dir)?;
                self.need(r.dir, Rights::DELETE)?;
                if r.fid.volume != r.dir.volume {
                    return Err(Errno::EPERM);
                }
                let s = self.status(r.fid)?;
                if s.kind == VnodeKind::Directory {
                    return Err(Errno::EISDIR);
                }
                self.unlink(s);
                self.fx.unbind.push((r.dir, r.name.clone()));
                self.touch(&mut d);
                self.put(d);
            }
            Op::RemoveDir(r) => {
                let mut d = self.dir(r.dir)?;
                self.need(r.dir, Rights::DELETE)?;
                self.dir(r.fid)?;
                if !self.empty(r.fid)? {
                    return Err(Errno::ENOTEMPTY);
                }
                self.fx.unbind.push((r.dir, r.name.clone()));
                self.fx.gone.push(r.fid);
                d.link_count -= 1;
                self.touch(&mut d);
                self.put(d);
            }
            Op::Rename(r) => self.rename(r)?,
            // Access lists change only where a server hears of it at once.
            Op::SetAcl(_) => return Err(Errno::ETIMEDOUT),
        }
        Ok(())
    }

    fn rename(&mut self, r: &coda_proto::cml::Rename) -> Result<()> {
        self.dir(r.from_dir)?;
        self.dir(r.to_dir)?;
        self.need(r.from_dir, Rights::DELETE)?;
        self.need(r.to_dir, Rights::INSERT)?;
        let mut moving = self.status(r.fid)?;
        let moving_dir = moving.kind == VnodeKind::Directory;
        let across = r.from_dir != r.to_dir;
        if across && !moving_dir && moving.link_count > 1 {
            return Err(Errno::EXDEV);
        }
        if moving_dir && across {
            // A directory may not move under itself.
            let mut at = r.to_dir;
            for _ in 0..4096 {
                if at == r.fid {
                    return Err(Errno::EINVAL);
                }
                match self.status(at) {
                    Ok(s) if s.parent != at => at = s.parent,
                    _ => break,
                }
            }
        }
        if let Some(old) = r.replaced {
            self.need(r.to_dir, Rights::DELETE)?;
            let o = self.status(old)?;
            if o.kind == VnodeKind::Directory {
                if !self.empty(old)? {
                    return Err(Errno::ENOTEMPTY);
                }
                self.fx.gone.push(old);
                let mut to = self.status(r.to_dir)?;
                to.link_count -= 1;
                self.put(to);
            } else {
                self.unlink(o);
            }
        }
        self.fx.unbind.push((r.from_dir, r.from_name.clone()));
        self.fx.bind.push((r.to_dir, r.to_name.clone(), r.fid));
        if across {
            moving.parent = r.to_dir;
        }
        moving.ctime = self.t;
        self.bump(&mut moving);
        self.put(moving);
        let mut from = self.status(r.from_dir)?;
        if moving_dir && across {
            from.link_count -= 1;
        }
        self.touch(&mut from);
        self.put(from);
        if across {
            let mut to = self.status(r.to_dir)?;
            if moving_dir {
                to.link_count += 1;
            }
            self.touch(&mut to);
            self.put(to);
        }
        Ok(())
    }
}

/// Logs `record` for `uid`: its effect made in the cache and the record
/// appended (or cancelled against the log) in one transaction, written
/// before the call returns. Returns the fid of an object it made.
pub fn log(v: &mut Venus, uid: u32, record: CmlRecord) -> Result<Option<Fid>> {
    let key = v.rights_key_of(uid);
    let mut em = Emulation {
        v,
        key,
        sid: record.store_id,
        t: record.time,
        // Anyone's updates are refused by rights before they get here.
        user: key.map_or(u32::MAX, |k| k as u32),
        fx: Effects::default(),
    };
    em.record(&record)?;
    let mut fx = em.fx;
    // A cut or extended file: its container follows, before the log says so.
    if let Op::SetAttr(SetAttr {
        fid,
        length: Some(len),
        ..
    }) = &record.op
    {
        let o = &v.cache.objs[fid];
        if o.rec.container != crate::container::NONE {
            let f = v
                .cache
                .containers
                .open_rw(o.rec.container)
                .map_err(|_| Errno::EIO)?;
            f.set_len(*len).map_err(crate::core::io_errno)?;
            let hash = crate::core::hash_file(&f, *len).map_err(|_| Errno::EIO)?;
            if let Some(s) = fx.statuses.iter_mut().find(|s| s.fid == *fid) {
                s.content_hash = hash;
            }
        }
    }
    let made = fx.made.map(|(f, _)| f);
    let entry = LogEntry {
        seq: v.cml.next_seq(),
        uid,
        record,
        before: fx.before.clone(),
        ends_batch: None,
    };
    let plan = Cancel::plan(v, entry, &fx.gone);
    let is_store = matches!(&plan.kept, Some(e) if matches!(e.record.op, Op::Store(_)));
    let (kept, cancelled, written) = (
        plan.kept.clone(),
        plan.cancelled.clone(),
        plan.rewritten.clone(),
    );
    let reverted = plan.reverted.clone();
    let statuses = std::mem::take(&mut fx.statuses);
    // An object gone whose store is in a batch in flight keeps its data
    // until that batch is answered (it may be sent again).
    let in_flight: HashSet<Fid> = fx
        .gone
        .iter()
        .copied()
        .filter(|f| {
            v.cml.by_fid.get(f).is_some_and(|seqs| {
                seqs.iter().any(|s| {
                    !plan.cancelled.contains(s)
                        && matches!(v.cache.cml[s].1.record.op, Op::Store(_))
                })
            })
        })
        .collect();
    v.cache.update(Durability::Written, |t| {
        if let Some((fid, kind)) = fx.made {
            t.obj_or_new(fid, kind, false);
        }
        for s in statuses {
            let fid = s.fid;
            let o = t.obj_or_new(fid, s.kind, false);
            // What was cached stays current: the same change is made to it
            // here (a store's data is the container itself).
            let current = o.has_data() || is_store;
            o.rec.data = current.then_some(s.vv.store_id);
            // The rights a new object has are its directory's.
            o.take_status(s, key);
            o.valid = false;
        }
        // Versions a cancelled record gave are handed back.
        for ((fid, sid), prev) in &reverted {
            let Some(o) = t.objs.get_mut(fid) else {
                continue;
            };
            if let Some(s) = o.rec.status.as_mut().filter(|s| s.vv.store_id == *sid) {
                s.vv.store_id = *prev;
                if o.rec.data == Some(*sid) {
                    o.rec.data = Some(*prev);
                }
            }
        }
        for fid in fx
            .before
            .iter()
            .map(|b| b.0)
            .chain(reverted.keys().map(|k| k.0))
            .chain(made)
        {
            t.save(fid)?;
        }
        for (dir, name) in &fx.unbind {
            t.remove_entry(*dir, name)?;
        }
        for (dir, name, fid) in &fx.bind {
            t.add_entry(*dir, name, *fid)?;
        }
        for fid in &fx.gone {
            let Some(o) = t.objs.get_mut(fid) else {
                continue;
            };
            if o.opens > 0 || in_flight.contains(fid) {
                o.orphan = true;
            } else {
                t.drop_obj(*fid)?;
            }
        }
        for seq in &cancelled {
            t.remove_cml(*seq)?;
        }
        for e in written {
            t.put_cml(e)?;
        }
        if let Some(e) = kept {
            t.put_cml(e)?;
        }
        Ok(())
    })?;
    v.cml.note(&plan);
    for e in &plan.removed {
        v.cml.stale.extend(e.record.op.fids());
    }
    // Open handles of what kept its data move on to the new version.
    for fid in fx.before.iter().map(|b| b.0) {
        v.rebase(fid);
    }
    Ok(made)
}

/// The CML's in-memory indexes: which records name each object (so the
/// rules above look at a few records, never the whole log).
#[derive(Default)]
pub struct LogIndex {
    next: u64,
    pub by_fid: HashMap<Fid, BTreeSet<u64>>,
    /// The last record of each volume's batch in flight.
    pub frozen: HashMap<coda_proto::VolumeId, u64>,
    /// How many records each volume has in the log.
    pub records: HashMap<coda_proto::VolumeId, u64>,
    /// Objects whose cached status a cancellation turned back to a version
    /// the server has, with other times: asked for again once reintegrated.
    pub stale: HashSet<Fid>,
}

impl LogIndex {
    pub fn build(cml: &std::collections::BTreeMap<u64, (rvm::record::Slot, LogEntry)>) -> Self {
        let mut ix = LogIndex::default();
        for (seq, (_, e)) in cml {
            ix.add(e);
            ix.next = ix.next.max(seq + 1);
        }
        ix
    }

    /// Builds the indexes again after the log changed wholesale (a batch
    /// went in, records went into conflict); sequence numbers go on.
    pub fn rebuild(
        &mut self,
        cml: &std::collections::BTreeMap<u64, (rvm::record::Slot, LogEntry)>,
    ) {
        let fresh = LogIndex::build(cml);
        self.by_fid = fresh.by_fid;
        self.frozen = fresh.frozen;
        self.records = fresh.records;
        self.next = self.next.max(fresh.next);
    }

    fn next_seq(&mut self) -> u64 {
        self.next += 1;
        self.next
    }

    /// Indexes a record appended (or rewritten: `fresh` is false).
    fn index(&mut self, e: &LogEntry, fresh: bool) {
        if fresh {
            *self.records.entry(e.record.op.volume()).or_default() += 1;
        }
        for f in e.record.op.fids() {
            self.by_fid.entry(f).or_default().insert(e.seq);
        }
        if e.ends_batch.is_some() {
            self.frozen.insert(e.record.op.volume(), e.seq);
        }
    }

    /// Indexes a record appended.
    pub fn add(&mut self, e: &LogEntry) {
        self.index(e, true);
    }

    /// Indexes a record rewritten in place (a batch frozen).
    pub fn rewrote(&mut self, e: &LogEntry) {
        self.index(e, false);
    }

    pub fn remove(&mut self, e: &LogEntry) {
        let vol = e.record.op.volume();
        if let Some(n) = self.records.get_mut(&vol) {
            *n -= 1;
            if *n == 0 {
                self.records.remove(&vol);
            }
        }
        for f in e.record.op.fids() {
            if let Some(s) = self.by_fid.get_mut(&f) {
                s.remove(&e.seq);
                if s.is_empty() {
                    self.by_fid.remove(&f);
                }
            }
        }
    }

    /// Whether a record in the log names `fid`: its cached state is the
    /// only copy of a change the server has not seen.
    pub fn dirty(&self, fid: Fid) -> bool {
        self.by_fid.contains_key(&fid)
    }

    fn note(&mut self, plan: &Cancel) {
        for e in &plan.removed {
            self.remove(e);
        }
        if let Some(e) = &plan.kept {
            self.add(e);
        }
    }
}

/// What appending one record does to the log.
struct Cancel {
    /// The record, as appended (None: cancelled with what it undid).
    kept: Option<LogEntry>,
    /// Earlier records dropped (their seqs), and as they were.
    cancelled: Vec<u64>,
    removed: Vec<LogEntry>,
    /// Earlier records whose seen versions changed.
    rewritten: Vec<LogEntry>,
    /// (object, cancelled version) → the version before it.
    reverted: HashMap<(Fid, StoreId), StoreId>,
}

impl Cancel {
    fn plan(v: &Venus, mut new: LogEntry, gone: &[Fid]) -> Cancel {
        let vol = new.record.op.volume();
        let frozen = v.cml.frozen.get(&vol).copied().unwrap_or(0);
        let cml = &v.cache.cml;
        let open = |fid: Fid| -> Vec<u64> {
            v.cml
                .by_fid
                .get(&fid)
                .map(|s| s.range(frozen + 1..).copied().collect())
                .unwrap_or_default()
        };
        let record = |seq: u64| -> &LogEntry { &cml[&seq].1 };
        let mut cancel: BTreeSet<u64> = BTreeSet::new();
        let mut drop_new = false;
        match &mut new.record.op {
            Op::Store(s) => {
                for seq in open(s.fid) {
                    match &record(seq).record.op {
                        Op::Store(_) => {
                            cancel.insert(seq);
                        }
                        Op::SetAttr(a)
                            if a.fid == s.fid
                                && a.mode.is_none()
                                && a.owner.is_none()
                                && a.group.is_none() =>
                        {
                            cancel.insert(seq);
                        }
                        _ => {}
                    }
                }
            }
            Op::SetAttr(a) => {
                let last = open(a.fid).last().copied();
                if let Some(seq) = last.filter(|s| record(*s).uid == new.uid) {
                    if let Op::SetAttr(prev) = &record(seq).record.op {
                        // Two lengths do not make one: a cut then an
                        // extension leaves zeros, not the old bytes.
                        if prev.fid == a.fid && (prev.length.is_none() || a.length.is_none()) {
                            a.mode = a.mode.or(prev.mode);
                            a.owner = a.owner.or(prev.owner);
                            a.group = a.group.or(prev.group);
                            a.mtime = a.mtime.or(prev.mtime);
                            a.atime = a.atime.or(prev.atime);
                            a.length = a.length.or(prev.length);
                            cancel.insert(seq);
                        }
                    }
                }
            }
            _ => {}
        }
        for &fid in gone {
            let history = open(fid);
            for &seq in &history {
                if matches!(record(seq).record.op, Op::Store(_) | Op::SetAttr(_)) {
                    cancel.insert(seq);
                }
            }
            // Made in this log: its whole history goes.
            let made_here = history.iter().any(|&seq| {
                matches!(&record(seq).record.op,
                    Op::Create(c) if c.fid == fid)
                    || matches!(&record(seq).record.op, Op::MakeDir(c) if c.fid == fid)
                    || matches!(&record(seq).record.op, Op::SymLink(c) if c.fid == fid)
            });
            let only_its_own = history.iter().all(|&seq| match &record(seq).record.op {
                Op::Create(c) => c.fid == fid,
                Op::MakeDir(c) => c.fid == fid,
                Op::SymLink(c) => c.fid == fid,
                Op::Store(_) | Op::SetAttr(_) => true,
                Op::Link(l) => l.fid == fid,
                Op::Remove(r) => r.fid == fid,
                Op::Rename(r) => r.fid == fid && r.replaced.is_none(),
                _ => false,
            });
            if fid.is_local() && made_here && only_its_own {
                cancel.extend(history);
                match &mut new.record.op {
                    Op::Rename(r) if r.replaced == Some(fid) => r.replaced = None,
                    Op::Remove(r) if r.fid == fid => drop_new = true,
                    Op::RemoveDir(r) if r.fid == fid => drop_new = true,
                    _ => {}
                }
            }
        }
        // Hand each cancelled record's versions back to those after it.
        let mut later: HashMap<u64, LogEntry> = HashMap::new();
        let mut reverted: HashMap<(Fid, StoreId), StoreId> = HashMap::new();
        let mut removed = Vec::new();
        let mut order: Vec<LogEntry> = cancel.iter().map(|s| record(*s).clone()).collect();
        if drop_new {
            order.push(new.clone());
        }
        for r in &order {
            let sid = r.record.store_id;
            for &(f, prev) in &r.before {
                let prev = reverted.get(&(f, prev)).copied().unwrap_or(prev);
                reverted.insert((f, sid), prev);
                let after: Vec<u64> = open(f).into_iter().filter(|&s| s > r.seq).collect();
                for seq in after.into_iter().filter(|s| !cancel.contains(s)) {
                    let e = later.entry(seq).or_insert_with(|| record(seq).clone());
                    hand_back(e, f, sid, prev);
                }
                hand_back(&mut new, f, sid, prev);
            }
            if r.seq != new.seq {
                removed.push(r.clone());
            }
        }
        Cancel {
            kept: (!drop_new).then_some(new),
            cancelled: cancel.into_iter().collect(),
            removed,
            rewritten: later.into_values().collect(),
            reverted,
        }
    }
}

/// `e` named `sid` as the version of `f`; that version never happened.
pub(crate) fn hand_back(e: &mut LogEntry, f: Fid, sid: StoreId, prev: StoreId) {
    if let Some(seen) = e.record.op.seen_mut(f) {
        if *seen == sid {
            *seen = prev;
        }
    }
    for b in e.before.iter_mut() {
        if b.0 == f && b.1 == sid {
            b.1 = prev;
        }
    }
}
