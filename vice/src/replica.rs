//! A replica's side of server replication: COP2 (adding the counts of the
//! other replicas that applied an update), and the calls a resolver makes
//! of it: its summary, the state of objects, and installing resolved
//! states (see `coda_proto::res`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};

use bytes::Bytes;
use coda_proto::acl::{PrincipalId, ANY_USER};
use coda_proto::fid::{Fid, StoreId, VolumeId};
use coda_proto::res::{
    Binding, Contents, Cop2, Inconsistent, Install, InstallObject, ObjectState, StateRequest,
    SummaryEntry, INLINE_REPLY_MAX,
};
use coda_proto::status::VnodeKind;
use coda_proto::vv::VersionVector;
use coda_proto::Errno;
use rvm::{CommitId, Durability};

use crate::fileops::{self, Caller};
use coda_rpc2::IncomingId;

use crate::service::{io_errno, rvm_errno, Action, Service, Then, Waiting};
use crate::vnode::{Vnode, EMPTY_HASH, IN_VNODE_MAX, NO_CONTAINER};

/// The principal servers of the cell call each other as: their tokens are
/// sealed by the cell key, which only servers hold.
pub const SERVER_ID: PrincipalId = 0x7fff_fff0;

/// The caller a server's token stands for.
pub fn server_caller() -> Caller {
    Caller {
        user: SERVER_ID,
        cps: vec![SERVER_ID, ANY_USER, coda_proto::acl::ADMINISTRATORS],
        admin: true,
    }
}

/// Updates whose COP2 has not come yet, kept this long at most.
pub const COP2_PENDING_MAX: usize = 1 << 16;

/// What one update (a record, or a batch) did here, until its COP2.
#[derive(Debug, Default)]
struct Cop1 {
    /// Who made the update: only they (or a server) may say who else applied it.
    user: PrincipalId,
    /// Each object changed, and how many times this replica's slot moved.
    bumps: Vec<(Fid, u64)>,
    /// The record store ids it removed names with (tombstones).
    removals: Vec<StoreId>,
}

/// COP1s waiting for their COP2, oldest first. A lost one leaves the
/// replicas' vectors apart with equal contents: resolution joins them.
#[derive(Debug, Default)]
pub struct PendingCop2 {
    by_update: HashMap<(VolumeId, StoreId), Cop1>,
    order: VecDeque<(VolumeId, StoreId)>,
}

impl PendingCop2 {
    pub fn insert(
        &mut self,
        vol: VolumeId,
        update: StoreId,
        user: PrincipalId,
        bumps: Vec<(Fid, u64)>,
        removals: Vec<StoreId>,
    ) {
        // A record sent again changed nothing: its first COP1 stands.
        if bumps.is_empty() || self.by_update.contains_key(&(vol, update)) {
            return;
        }
        if self.order.len() >= COP2_PENDING_MAX {
            if let Some(old) = self.order.pop_front() {
                self.by_update.remove(&old);
            }
        }
        self.order.push_back((vol, update));
        self.by_update.insert(
            (vol, update),
            Cop1 {
                user,
                bumps,
                removals,
            },
        );
    }

    fn take(&mut self, vol: VolumeId, update: StoreId, caller: &Caller) -> Option<Cop1> {
        let mine = self
            .by_update
            .get(&(vol, update))
            .is_some_and(|c| c.user == caller.user || caller.is_server());
        if !mine {
            return None;
        }
        let c = self.by_update.remove(&(vol, update))?;
        self.order.retain(|k| *k != (vol, update));
        Some(c)
    }

    /// Resolution set these objects' versions: COP2s still to come must
    /// not count on top of them.
    fn forget(&mut self, fids: &HashSet<Fid>) {
        for c in self.by_update.values_mut() {
            c.bumps.retain(|(f, _)| !fids.contains(f));
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

impl Service {
    /// `COP2`: every object an update changed counts it for the replicas
    /// that applied it too. Once all did, its tombstones are no longer needed.
    pub(crate) fn cop2(
        &mut self,
        caller: &Caller,
        r: &Cop2,
    ) -> Result<(Bytes, Option<CommitId>), Errno> {
        let vol = self.local_volume(r.volume)?;
        let (me, n) = (vol.slot_of(&self.cell.name), vol.replicas());
        let mut work = Vec::new();
        for u in &r.updates {
            if let Some(c) = self.pending_cop2.take(r.volume, u.store_id, caller) {
                let mut slots: Vec<usize> = u.slots.iter().map(|&s| s as usize).collect();
                slots.sort_unstable();
                slots.dedup();
                let all = (0..n).all(|s| slots.contains(&s));
                slots.retain(|&s| s != me && s < n);
                work.push((c, slots, all));
            }
        }
        if work.is_empty() {
            return Ok((Bytes::new(), None));
        }
        let volume = r.volume;
        // Answered without waiting for the log: a COP2 lost in a crash
        // leaves vectors apart over equal contents, which resolution joins.
        self.shard
            .transact(Durability::NoFlush, |txn| {
                for (c, slots, all) in &work {
                    for (fid, count) in &c.bumps {
                        let Some(mut v) = txn.volume(volume).and_then(|v| v.vnode(*fid)).cloned()
                        else {
                            continue;
                        };
                        for &s in slots {
                            if v.vv.slots.len() <= s {
                                v.vv.slots.resize(s + 1, 0);
                            }
                            v.vv.slots[s] += count;
                        }
                        let dir = v.is_dir();
                        txn.put_vnode(v)?;
                        if *all && dir && !c.removals.is_empty() {
                            txn.drop_tombstones(*fid, |t| c.removals.contains(&t.store_id))?;
                        }
                    }
                }
                Ok(())
            })
            .map_err(rvm_errno)?;
        Ok((Bytes::new(), None))
    }

    /// `RES_SUMMARY`: every object of the replica and its version.
    pub(crate) fn summary(&self, vol: VolumeId) -> Result<Vec<SummaryEntry>, Errno> {
        let v = self.local_volume(vol)?;
        let mut out: Vec<SummaryEntry> = v
            .vnodes()
            .map(|vn| SummaryEntry {
                fid: vn.fid,
                vv: vn.vv.clone(),
            })
            .collect();
        out.sort_by_key(|e| e.fid);
        Ok(out)
    }

    /// `LIST_INCONSISTENT`: the objects of `vol` marked in conflict, so
    /// `repair list` shows them before anyone comes across them. Those
    /// below a directory the caller may not look in are left out.
    pub(crate) fn inconsistent(
        &self,
        caller: &Caller,
        vol: VolumeId,
    ) -> Result<Vec<Inconsistent>, Errno> {
        let v = self.local_volume(vol)?;
        let mut out: Vec<Inconsistent> = v
            .vnodes()
            .filter(|vn| vn.vv.is_inconsistent())
            .filter_map(|vn| {
                Some(Inconsistent {
                    fid: vn.fid,
                    path: path_in(v, vn, caller)?,
                })
            })
            .collect();
        out.sort_by_key(|i| i.fid);
        Ok(out)
    }

    /// `RES_STATE`: what this replica holds of each object, small files'
    /// contents with them (see [`coda_proto::res::StateRequest`]).
    pub(crate) fn object_states(
        &self,
        r: &StateRequest,
    ) -> Result<Vec<Option<ObjectState>>, Errno> {
        let v = self.local_volume(r.volume)?;
        let caller = server_caller();
        let mut budget = INLINE_REPLY_MAX;
        r.fids
            .iter()
            .map(|&f| {
                let Some(vn) = v.vnode(f) else {
                    return Ok(None);
                };
                let small = vn.kind == VnodeKind::File
                    && vn.length > 0
                    && vn.length <= r.inline_max.min(budget);
                let data = match small {
                    true => {
                        budget -= vn.length;
                        Some(self.contents(vn)?)
                    }
                    false => None,
                };
                Ok(Some(ObjectState {
                    status: fileops::status(v, vn, &caller, false),
                    acl: vn.acl.clone(),
                    target: vn.target.clone(),
                    entries: v
                        .listing(f)
                        .map(|(name, fid, kind)| Binding {
                            name: name.to_string(),
                            fid,
                            kind,
                        })
                        .collect(),
                    tombstones: v.tombstones(f).cloned().collect(),
                    history: vn.history.clone(),
                    data,
                }))
            })
            .collect()
    }

    /// A (small) file's whole contents, read here.
    fn contents(&self, vn: &Vnode) -> Result<Bytes, Errno> {
        if vn.container == NO_CONTAINER {
            return Ok(vn.inline.clone());
        }
        let mut data = Vec::with_capacity(vn.length as usize);
        let file = self
            .shard
            .containers
            .open_read(vn.container)
            .map_err(io_errno)?;
        file.take(vn.length)
            .read_to_end(&mut data)
            .map_err(io_errno)?;
        if data.len() as u64 != vn.length {
            return Err(Errno::EIO);
        }
        Ok(Bytes::from(data))
    }

    /// A `RES_INSTALL` arrived: the contents it carries are written to new
    /// containers, and once those are durable, it is installed.
    pub(crate) fn install_arrived(
        &mut self,
        id: IncomingId,
        r: Install,
        out: &mut Vec<Action>,
    ) -> Result<Option<(Bytes, Option<CommitId>)>, Errno> {
        let mut written: HashMap<Fid, u64> = HashMap::new();
        let mut carried = HashSet::new();
        for o in &r.objects {
            let Some(Contents::Inline(data)) = &o.data else {
                continue;
            };
            let fits = o.status.kind == VnodeKind::File
                && data.len() as u64 == o.status.length
                && *blake3::hash(data).as_bytes() == o.status.content_hash
                && carried.insert(o.status.fid);
            let made = match fits {
                // Kept in its vnode (see `install`).
                true if o.status.length <= IN_VNODE_MAX => continue,
                true => self.write_container(data),
                false => Err(Errno::EINVAL),
            };
            match made {
                Ok(c) => {
                    written.insert(o.status.fid, c);
                }
                Err(e) => {
                    self.drop_containers(written.values());
                    return Err(e);
                }
            }
        }
        if written.is_empty() {
            return self.install(&r, &written, out).map(Some);
        }
        out.push(Action::Sync {
            containers: written.values().copied().collect(),
            then: Box::new(Then(Waiting::Install {
                id,
                install: Box::new(r),
                written,
            })),
        });
        Ok(None)
    }

    fn write_container(&mut self, data: &[u8]) -> Result<u64, Errno> {
        let (c, mut file) = self.shard.containers.create().map_err(io_errno)?;
        if let Err(e) = file.write_all(data) {
            self.shard.containers.remove(c);
            return Err(io_errno(e));
        }
        Ok(c)
    }

    fn drop_containers<'a>(&self, cs: impl IntoIterator<Item = &'a u64>) {
        for c in cs {
            self.shard.containers.remove(*c);
        }
    }

    /// The containers of an install are durable (or failed to be): it is
    /// installed now, and answered.
    pub(crate) fn install_synced(
        &mut self,
        id: IncomingId,
        r: &Install,
        written: HashMap<Fid, u64>,
        synced: std::io::Result<Vec<[u8; 32]>>,
        out: &mut Vec<Action>,
    ) {
        let answer = synced
            .map_err(io_errno)
            .and_then(|_| self.install(r, &written, out));
        if answer.is_err() {
            self.drop_containers(written.values());
        }
        match answer {
            Ok((body, after)) => self.reply(id, Ok(body), after, out),
            Err(e) => self.reply(id, Err(e), None, out),
        }
    }

    /// `RES_INSTALL`: makes the objects exactly as resolution says, in one
    /// transaction, if none changed since it read them.
    fn install(
        &mut self,
        r: &Install,
        written: &HashMap<Fid, u64>,
        out: &mut Vec<Action>,
    ) -> Result<(Bytes, Option<CommitId>), Errno> {
        let vol = self.local_volume(r.volume)?;
        if vol.header.locked {
            return Err(Errno::VOLUME_LOCKED);
        }
        let same = |have: Option<&Vnode>, want: Option<&VersionVector>| match (have, want) {
            (None, None) => true,
            (Some(v), Some(w)) => v.vv == *w,
            _ => false,
        };
        for o in &r.objects {
            let f = o.status.fid;
            if f.volume != r.volume || f.is_local() || f.vnode == 0 {
                return Err(Errno::BAD_REQUEST);
            }
            if !same(vol.vnode(o.status.fid), o.expect.as_ref()) {
                return Err(Errno::EAGAIN);
            }
            // A number taken by another object: never given twice.
            let taken = vol
                .vnodes
                .get(&o.status.fid.vnode)
                .is_some_and(|(_, v)| v.fid != o.status.fid);
            if taken {
                return Err(Errno::EEXIST);
            }
        }
        for (fid, vv) in &r.removals {
            if vol.vnode(*fid).is_some_and(|v| v.vv != *vv) {
                return Err(Errno::EAGAIN);
            }
        }
        // Each new content: its staged or written container, or its bytes.
        let mut data: HashMap<Fid, (u64, Bytes, bool)> = HashMap::new();
        for o in &r.objects {
            let st = &o.status;
            let have = vol.vnode(st.fid);
            let container = match (st.kind, &o.data) {
                (VnodeKind::File, Some(Contents::Staged(sid))) => {
                    let s = self.staged_data(*sid).ok_or(Errno::EINVAL)?;
                    if s.length != st.length || s.hash != st.content_hash {
                        return Err(Errno::EINVAL);
                    }
                    (s.container, Bytes::new(), true)
                }
                (VnodeKind::File, Some(Contents::Inline(bytes))) => match written.get(&st.fid) {
                    Some(&c) => (c, Bytes::new(), false),
                    None if bytes.len() as u64 == st.length && st.length <= IN_VNODE_MAX => {
                        (NO_CONTAINER, bytes.clone(), false)
                    }
                    None => return Err(Errno::EINVAL),
                },
                (VnodeKind::File, None) if st.length == 0 => (NO_CONTAINER, Bytes::new(), false),
                (VnodeKind::File, None) => match have {
                    Some(h) if h.content_hash == st.content_hash && h.length == st.length => {
                        (h.container, h.inline.clone(), false)
                    }
                    _ => return Err(Errno::EINVAL),
                },
                _ => (NO_CONTAINER, Bytes::new(), false),
            };
            data.insert(st.fid, container);
        }
        let volume = r.volume;
        let mut changed = Vec::new();
        let mut used = Vec::new();
        let mut txn = self.shard.begin().map_err(rvm_errno)?;
        let result = (|| -> Result<(), rvm::Error> {
            let mut header = txn.volume(volume).expect("checked").header.clone();
            for o in &r.objects {
                let (container, inline, staged) = data[&o.status.fid].clone();
                if let (true, Some(Contents::Staged(sid))) = (staged, &o.data) {
                    used.push(*sid);
                }
                let v = vnode_of(o, container, inline);
                // Derived fids are numbered apart from the counters.
                if v.fid.vnode < coda_proto::fid::DERIVED_VNODE_BASE {
                    header.next_vnode = header.next_vnode.max(v.fid.vnode.saturating_add(1));
                    header.next_unique = header.next_unique.max(v.fid.unique.saturating_add(1));
                }
                changed.push(v.fid);
                txn.put_vnode(v)?;
                if let Some(entries) = &o.entries {
                    set_entries(&mut txn, o.status.fid, entries)?;
                }
                if o.clear_tombstones {
                    txn.drop_tombstones(o.status.fid, |_| true)?;
                }
                for t in &o.tombstones {
                    txn.put_tombstone(o.status.fid, t.clone())?;
                }
            }
            for (fid, _) in &r.removals {
                let names: Vec<String> = txn
                    .volume(volume)
                    .and_then(|v| v.entries(*fid))
                    .map(|e| e.keys().cloned().collect())
                    .unwrap_or_default();
                for n in names {
                    txn.remove_entry(*fid, &n)?;
                }
                txn.remove_vnode(*fid)?;
                changed.push(*fid);
            }
            header.stamp += 1;
            txn.put_header(header)
        })();
        if let Err(e) = result {
            let _ = txn.abort();
            return Err(rvm_errno(e));
        }
        let commit = txn.commit(Durability::NoFlush).map_err(rvm_errno)?;
        for sid in used {
            self.take_staged(sid);
        }
        let set: HashSet<Fid> = changed.iter().copied().collect();
        self.pending_cop2.forget(&set);
        self.cell.resolution().objects += r.objects.len() as u64 + r.removals.len() as u64;
        self.breaks(None, volume, &changed, out);
        Ok((Bytes::new(), Some(commit)))
    }
}

/// The vnode an install makes.
fn vnode_of(o: &InstallObject, container: u64, inline: Bytes) -> Vnode {
    let s = &o.status;
    Vnode {
        fid: s.fid,
        kind: s.kind,
        mode: s.mode,
        owner: s.owner,
        group: s.group,
        author: s.author,
        link_count: s.link_count,
        length: s.length,
        mtime: s.mtime,
        ctime: s.ctime,
        atime: s.atime,
        data_version: s.data_version,
        vv: s.vv.clone(),
        content_hash: if s.kind == VnodeKind::Directory {
            EMPTY_HASH
        } else {
            s.content_hash
        },
        container,
        parent: s.parent,
        acl: o.acl.clone(),
        target: o.target.clone(),
        history: o.history.clone(),
        inline,
    }
}

/// Makes `dir`'s entries exactly `want`.
fn set_entries(
    txn: &mut crate::shard::Txn<'_>,
    dir: Fid,
    want: &[Binding],
) -> Result<(), rvm::Error> {
    let have: Vec<(String, Fid)> = txn
        .volume(dir.volume)
        .and_then(|v| v.entries(dir))
        .map(|e| e.iter().map(|(n, (_, f))| (n.clone(), *f)).collect())
        .unwrap_or_default();
    let want_map: HashMap<&str, Fid> = want.iter().map(|b| (b.name.as_str(), b.fid)).collect();
    for (n, f) in &have {
        if want_map.get(n.as_str()) != Some(f) {
            txn.remove_entry(dir, n)?;
        }
    }
    let have_map: HashMap<&str, Fid> = have.iter().map(|(n, f)| (n.as_str(), *f)).collect();
    for b in want {
        if have_map.get(b.name.as_str()) != Some(&b.fid) {
            txn.put_entry(dir, &b.name, b.fid)?;
        }
    }
    Ok(())
}

/// The names from `v`'s root down to `vn`, if `caller` may look in each
/// directory on the way.
fn path_in(v: &crate::volume::Volume, vn: &Vnode, caller: &Caller) -> Option<Vec<String>> {
    let mut names = Vec::new();
    let (mut at, mut parent) = (vn.fid, vn.parent);
    while at != v.root() {
        let dir = v.vnode(parent)?;
        if !fileops::dir_rights(dir, caller).contains(coda_proto::acl::Rights::LOOKUP)
            || names.len() > 4096
        {
            return None;
        }
        let (name, _, _) = v.listing(parent).find(|(_, f, _)| *f == at)?;
        names.push(name.to_string());
        (at, parent) = (parent, dir.parent);
    }
    names.reverse();
    Some(names)
}
