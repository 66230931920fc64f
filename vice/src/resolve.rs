//! The resolver: brings the replicas of a volume together. It reads every
//! reachable replica's summary (each object's version vector), then the
//! state of each object whose versions differ, computes the state every
//! replica should hold, and installs it where it is not:
//!
//! - Versions with equal contents (a lost COP2) only get their vectors
//!   joined.
//! - A version that saw every update the others saw (its vector dominates)
//!   is copied to them, data and all.
//! - Directories changed on both sides of a partition merge name by name:
//!   a name one side removed (it keeps a tombstone) goes, unless the other
//!   side changed the object since (an update beats a removal); a name one
//!   side made is added; one name made on both sides for different objects
//!   keeps the first and gives the other a `NAME.conflict-N` name, marked
//!   for `repair`.
//! - A file or symlink changed on both sides is marked inconsistent on
//!   every replica, each keeping its own version, for `repair`.
//!
//! It is a client of the replicas, itself included, through [`Replicas`]:
//! the server drives it over RPC2 from a thread of its own, tests over the
//! simulated network.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use bytes::Bytes;
use coda_proto::acl::{Acl, AclEntry, PrincipalId, Rights};
use coda_proto::fid::{Fid, StoreId, VolumeId};
use coda_proto::res::{
    Binding, Contents, Install, InstallObject, ObjectState, StateRequest, SummaryEntry,
    SummaryRequest, Tombstone, INLINE_INSTALL_MAX,
};
use coda_proto::status::{Status, VnodeKind};
use coda_proto::vice::{op, Fetch, Stage, StageReply};
use coda_proto::vv::{VersionVector, VvOrder, FLAG_BARREN, FLAG_INCONSISTENT};
use coda_proto::Errno;
use coda_rpc2::codec::{self, Decode, Encode};
use coda_rpc2::endpoint::{Reply, SideEffect};
use coda_rpc2::{Sink, Source};

/// How the resolver reaches each replica of a volume, by slot.
pub trait Replicas {
    /// Calls the replica in `slot` (a Vice call of the server principal);
    /// an error means it could not be reached.
    fn call(
        &mut self,
        slot: usize,
        opcode: u16,
        body: Bytes,
        side_effect: Option<SideEffect>,
    ) -> Result<Reply, Errno>;
}

/// Most objects one install carries.
const INSTALL_OBJECTS_MAX: usize = 2048;

/// Largest reply the resolver takes (a summary or a batch of states).
const STATE_BYTES_MAX: u64 = 1 << 30;

/// The host part of the store ids resolution gives what it merged.
pub const RESOLVER_HOST: u64 = u64::MAX - 1;

/// What a resolution did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Replicas that took part.
    pub reachable: Vec<usize>,
    /// Objects whose versions differed.
    pub differing: usize,
    /// Objects installed or removed, over all replicas.
    pub installed: usize,
    /// Objects left in conflict (marked inconsistent).
    pub conflicts: usize,
}

fn call_decode<T: Decode>(
    reps: &mut dyn Replicas,
    slot: usize,
    opcode: u16,
    req: &impl Encode,
    bulk: bool,
) -> Result<T, Errno> {
    let side = bulk.then(|| SideEffect::Receive(Sink::memory(STATE_BYTES_MAX)));
    let r = reps.call(slot, opcode, codec::to_bytes(req), side)?;
    if r.code != 0 {
        return Err(Errno(r.code));
    }
    let bytes = match (bulk, r.sink) {
        (true, Some(sink)) => Bytes::from(sink.into_bytes()),
        (true, None) => return Err(Errno::EIO),
        (false, _) => r.body,
    };
    codec::from_bytes(&bytes).map_err(|_| Errno::EIO)
}

/// Slot-wise maximum of vectors.
fn join(vvs: &[&VersionVector]) -> VersionVector {
    let mut out = VersionVector::default();
    for v in vvs {
        out.raise(v);
    }
    out.store_id = vvs.iter().map(|v| v.store_id).max().unwrap_or_default();
    out
}

/// Whether two versions hold the same thing, whatever their vectors say.
fn same_contents(a: &ObjectState, b: &ObjectState) -> bool {
    let (x, y) = (&a.status, &b.status);
    x.kind == y.kind
        && x.mode == y.mode
        && x.owner == y.owner
        && x.group == y.group
        && x.length == y.length
        && x.mtime == y.mtime
        && x.content_hash == y.content_hash
        && x.link_count == y.link_count
        && x.parent == y.parent
        && a.acl == b.acl
        && a.target == b.target
        && sorted(&a.entries) == sorted(&b.entries)
        && (x.vv.flags & FLAG_INCONSISTENT) == (y.vv.flags & FLAG_INCONSISTENT)
}

/// Whether two versions are the same in every part a replica keeps.
fn identical(a: &ObjectState, b: &ObjectState) -> bool {
    let plain = |s: &ObjectState| {
        let mut st = s.status.clone();
        st.my_rights = Default::default();
        st.any_rights = Default::default();
        st.callback = 0;
        st
    };
    plain(a) == plain(b)
        && a.acl == b.acl
        && a.target == b.target
        && a.history == b.history
        && sorted(&a.entries) == sorted(&b.entries)
}

/// Whether two tombstones record one removal (vectors of replicas a COP2
/// missed may differ).
fn same_removal(a: &Tombstone, b: &Tombstone) -> bool {
    a.name == b.name && a.fid == b.fid && a.store_id == b.store_id
}

/// Whether directory version `s` binds `name` to `fid`.
fn binds(s: &ObjectState, name: &str, fid: Fid) -> bool {
    s.entries.iter().any(|e| e.name == name && e.fid == fid)
}

fn sorted(b: &[Binding]) -> Vec<&Binding> {
    let mut v: Vec<&Binding> = b.iter().collect();
    v.sort();
    v
}

/// Whether version `a` (counted under vector `vv`) saw everything version
/// `b` saw: the vector says so, or (files and symlinks) `a`'s history
/// holds every update of `b`'s (all that `a` remembers, if it forgot
/// older ones). The second survives a lost COP2, which leaves vectors
/// apart with equal histories. Directories are merged instead: their
/// updates do not name the version they change.
fn descends(a: &ObjectState, vv: &VersionVector, b: &ObjectState) -> bool {
    let by_vector = matches!(
        vv.compare(&b.status.vv),
        VvOrder::Equal | VvOrder::Dominates
    );
    let by_history = a.status.kind != VnodeKind::Directory
        && a.history.contains(&b.status.vv.store_id)
        && (a.history.len() >= crate::vnode::HISTORY_MAX
            || b.history.iter().all(|x| a.history.contains(x)));
    by_vector || by_history
}

/// The version that saw all the others saw, if there is one. Versions
/// with equal contents count as one, their vectors joined: replicas that
/// took an update whose COP2 has not come yet (or was lost) hold it under
/// vectors apart, and with histories apart too where the update was a
/// repair of versions that had them. Read beside a replica the update has
/// not reached, they must not look like a conflict.
fn dominant<'a>(versions: &[(usize, &'a ObjectState)]) -> Option<(usize, &'a ObjectState)> {
    versions.iter().copied().find(|(_, a)| {
        let alike: Vec<&VersionVector> = versions
            .iter()
            .filter(|(_, b)| same_contents(a, b))
            .map(|(_, b)| &b.status.vv)
            .collect();
        let vv = join(&alike);
        versions
            .iter()
            .all(|(_, b)| same_contents(a, b) || descends(a, &vv, b))
    })
}

/// One object as it should be on every replica, and where it comes from.
struct Merged {
    state: ObjectState,
    /// A replica holding the merged contents (for file data).
    source: usize,
    /// Each replica keeps its own version, marked (a file in conflict).
    conflict: bool,
    /// A directory whose entries resolution computed.
    entries_set: bool,
}

/// Brings the replicas of `volume` (`n` of them, by slot) together. An
/// error (`EAGAIN`: a replica changed meanwhile) leaves the work for the
/// next try; what was installed before it stays (each install is whole).
pub fn resolve(reps: &mut dyn Replicas, volume: VolumeId, n: usize) -> Result<Outcome, Errno> {
    let mut out = Outcome::default();
    // 1. Who holds what.
    let mut summaries: BTreeMap<usize, HashMap<Fid, VersionVector>> = BTreeMap::new();
    for slot in 0..n {
        let req = SummaryRequest { volume };
        match call_decode::<Vec<SummaryEntry>>(reps, slot, op::RES_SUMMARY, &req, true) {
            Ok(list) => {
                summaries.insert(slot, list.into_iter().map(|e| (e.fid, e.vv)).collect());
            }
            Err(e) => tracing::debug!("volume {volume:#x}: replica {slot}: {e}"),
        }
    }
    out.reachable = summaries.keys().copied().collect();
    if summaries.len() < 2 {
        return Ok(out);
    }
    let every_replica = summaries.len() == n;
    let mut all: BTreeSet<Fid> = BTreeSet::new();
    for s in summaries.values() {
        all.extend(s.keys().copied());
    }
    let differing: Vec<Fid> = all
        .into_iter()
        .filter(|f| {
            let mut vvs = summaries.values().map(|s| s.get(f));
            let first = vvs.next().flatten();
            first.is_none() || vvs.any(|v| v != first)
        })
        .collect();
    out.differing = differing.len();
    if differing.is_empty() {
        return Ok(out);
    }
    // 2. What each holds of the objects that differ.
    let mut states: BTreeMap<usize, HashMap<Fid, ObjectState>> = BTreeMap::new();
    for &slot in summaries.keys() {
        states.insert(slot, read_states(reps, volume, slot, &differing)?);
    }
    // Summaries are read one replica after another: one read before a
    // replica changed (another's call waited out a cut) misses objects
    // made since, which the states just read may name. Merging on it
    // would drop those names. Read everything again.
    let known = |f: &Fid| f.volume != volume || summaries.values().any(|s| s.contains_key(f));
    let unknown: BTreeSet<Fid> = states
        .values()
        .flat_map(|m| m.values())
        .flat_map(|s| s.entries.iter())
        .map(|b| b.fid)
        .filter(|f| !known(f))
        .collect();
    if !unknown.is_empty() && exist_anywhere(reps, volume, &summaries, &unknown)? {
        tracing::debug!("volume {volume:#x}: a replica changed while it was read");
        return Err(Errno::EAGAIN);
    }
    let versions_of = |f: &Fid| -> Vec<(usize, &ObjectState)> {
        states
            .iter()
            .filter_map(|(slot, m)| m.get(f).map(|s| (*slot, s)))
            .collect()
    };
    // 3. The state each object should have.
    let mut merged: HashMap<Fid, Merged> = HashMap::new();
    // Objects renamed because one name was made on both sides: marked.
    let mut clashed: HashSet<Fid> = HashSet::new();
    let mut moved: Vec<(Fid, Binding)> = Vec::new();
    let dirs: Vec<Fid> = differing
        .iter()
        .copied()
        .filter(|f| {
            versions_of(f)
                .first()
                .is_some_and(|(_, s)| s.status.kind == VnodeKind::Directory)
        })
        .collect();
    for f in &differing {
        let versions = versions_of(f);
        let Some(&(first_slot, first)) = versions.first() else {
            continue;
        };
        let vvs: Vec<&VersionVector> = versions.iter().map(|(_, s)| &s.status.vv).collect();
        let mut joined = join(&vvs);
        let mut m = if versions.iter().all(|(_, s)| same_contents(s, first)) {
            joined.store_id = first.status.vv.store_id;
            joined.flags = first.status.vv.flags;
            let mut state = first.clone();
            state.status.vv = joined;
            Merged {
                state,
                source: first_slot,
                conflict: false,
                entries_set: false,
            }
        } else if let Some((slot, d)) = dominant(&versions).filter(|(_, d)| {
            // A directory whose names differ is merged even where one
            // version saw every update of the others: a name it removed
            // may hold an object changed elsewhere since (a store bumps the
            // file, not its directory), and the update must win.
            d.status.kind != VnodeKind::Directory
                || versions
                    .iter()
                    .all(|(_, v)| sorted(&v.entries) == sorted(&d.entries))
        }) {
            let mut state = d.clone();
            joined.store_id = d.status.vv.store_id;
            joined.flags = d.status.vv.flags;
            state.status.vv = joined;
            Merged {
                state,
                source: slot,
                conflict: false,
                entries_set: first.status.kind == VnodeKind::Directory,
            }
        } else if first.status.kind == VnodeKind::Directory {
            let (mut state, merge) = merge_dir(&versions, &states);
            clashed.extend(merge.clashes);
            moved.extend(merge.moved.into_iter().map(|b| (*f, b)));
            joined.store_id = StoreId {
                host: RESOLVER_HOST,
                unique: derived(&[&f.vnode.to_le_bytes(), &codec::to_bytes(&joined)]),
            };
            state.status.vv = joined;
            Merged {
                state,
                source: first_slot,
                conflict: false,
                entries_set: true,
            }
        } else {
            // Changed on both sides: each keeps its own, marked.
            let mut state = first.clone();
            state.status.vv.flags |= FLAG_INCONSISTENT;
            out.conflicts += 1;
            Merged {
                state,
                source: first_slot,
                conflict: true,
                entries_set: false,
            }
        };
        // A replica resolution reaches is barren no more.
        m.state.status.vv.flags &= !FLAG_BARREN;
        // A directory keeps every side's updates (the others' before its
        // own): a removal recorded against it later then tells "unchanged
        // since" for each side's last update.
        if m.state.status.kind == VnodeKind::Directory {
            let own = std::mem::take(&mut m.state.history);
            let mut history: Vec<StoreId> = Vec::new();
            for h in versions.iter().flat_map(|(_, s)| &s.history) {
                if !own.contains(h) && !history.contains(h) {
                    history.push(*h);
                }
            }
            history.extend(own);
            let extra = history.len().saturating_sub(crate::vnode::HISTORY_MAX);
            history.drain(..extra);
            m.state.history = history;
        }
        // Every removal any version saw, for the replicas that missed it.
        m.state.tombstones =
            versions
                .iter()
                .flat_map(|(_, s)| &s.tombstones)
                .fold(Vec::new(), |mut all, t| {
                    if !all.iter().any(|a| same_removal(a, t)) {
                        all.push(t.clone());
                    }
                    all
                });
        merged.insert(*f, m);
    }
    // A name kept because its object changed since a replica that moved
    // it on removed it goes where the merge names the object elsewhere.
    let named: HashSet<Fid> = merged
        .iter()
        .filter(|(_, m)| m.entries_set)
        .flat_map(|(d, m)| m.state.entries.iter().map(move |b| (d, b)))
        .filter(|(d, b)| !moved.contains(&(**d, (*b).clone())))
        .map(|(_, b)| b.fid)
        .collect();
    for (d, b) in &moved {
        if named.contains(&b.fid) {
            if let Some(m) = merged.get_mut(d) {
                m.state.entries.retain(|e| e != b);
            }
        }
    }
    // 4. Names decide what exists: an object no merged directory binds
    // (where its directory was merged) goes, one bound where a replica
    // lacks it is made there.
    let merged_dirs: HashSet<Fid> = dirs
        .iter()
        .copied()
        .filter(|d| merged.get(d).is_some_and(|m| m.entries_set))
        .collect();
    // Until nothing changes: the objects of a directory that goes, go too.
    let mut removed: HashSet<Fid> = HashSet::new();
    let bound_by = loop {
        let mut bound_by = bindings(&merged, &merged_dirs, &removed);
        // A directory moved on both sides (each side changed it, so
        // neither removal holds) would have two names, and two moved into
        // each other a loop: it stays where the first replica put it.
        let mut unbind: Vec<(Fid, Fid)> = Vec::new();
        for (f, binds) in bound_by.iter_mut() {
            let is_dir = merged
                .get(f)
                .is_some_and(|m| m.state.status.kind == VnodeKind::Directory);
            if !is_dir || binds.len() < 2 {
                continue;
            }
            let first_parent = versions_of(f)
                .iter()
                .map(|(_, s)| s.status.parent)
                .find(|p| binds.iter().any(|(d, _)| d == p));
            let keep = first_parent.unwrap_or(binds[0].0);
            let kept = binds
                .iter()
                .position(|(d, _)| *d == keep)
                .expect("a binding");
            for (i, (d, _)) in binds.iter().enumerate() {
                if i != kept {
                    unbind.push((*d, *f));
                }
            }
            let k = binds.swap_remove(kept);
            *binds = vec![k];
        }
        for (d, f) in unbind {
            if let Some(m) = merged.get_mut(&d) {
                m.state.entries.retain(|b| b.fid != f);
            }
        }
        let mut more = false;
        for f in &differing {
            let Some(m) = merged.get(f) else { continue };
            if removed.contains(f) || m.conflict || f.vnode == coda_proto::fid::ROOT_VNODE {
                continue;
            }
            let decided_by_merge = versions_of(f).iter().all(|(_, s)| {
                merged_dirs.contains(&s.status.parent) || removed.contains(&s.status.parent)
            });
            if decided_by_merge && !bound_by.contains_key(f) {
                removed.insert(*f);
                more = true;
            }
        }
        if !more {
            break bound_by;
        }
    };
    // Link counts and parents follow the merged names.
    for f in differing.iter() {
        if removed.contains(f) {
            continue;
        }
        let Some(m) = merged.get_mut(f) else { continue };
        if clashed.contains(f) && m.state.status.kind != VnodeKind::Directory {
            m.state.status.vv.flags |= FLAG_INCONSISTENT;
        }
        if let Some(binds) = bound_by.get(f) {
            if !binds.iter().any(|(d, _)| *d == m.state.status.parent) {
                m.state.status.parent = binds[0].0;
            }
            if m.state.status.kind != VnodeKind::Directory
                && merged_dirs.contains(&m.state.status.parent)
            {
                m.state.status.link_count = binds
                    .iter()
                    .filter(|(d, _)| *d == m.state.status.parent)
                    .count() as u32;
            }
        }
        if m.entries_set {
            let subdirs = m
                .state
                .entries
                .iter()
                .filter(|b| b.kind == VnodeKind::Directory && b.fid.volume == volume)
                .count();
            m.state.status.link_count = 2 + subdirs as u32;
        }
    }
    // Directories lose names of objects that exist nowhere.
    let exists = |f: &Fid| f.volume != volume || summaries.values().any(|s| s.contains_key(f));
    for d in &merged_dirs {
        if let Some(m) = merged.get_mut(d) {
            m.state.entries.retain(|b| exists(&b.fid));
        }
    }
    // 5. Install, replica by replica.
    for (&slot, have) in &states {
        // Each object, and the replica to bring its new contents from.
        let mut objects: Vec<(InstallObject, Option<usize>)> = Vec::new();
        let mut removals: Vec<(Fid, VersionVector)> = Vec::new();
        for f in &differing {
            let mine = have.get(f);
            if removed.contains(f) {
                if let Some(s) = mine {
                    removals.push((*f, s.status.vv.clone()));
                }
                continue;
            }
            let Some(m) = merged.get(f) else { continue };
            let want = if m.conflict {
                match mine {
                    // Each keeps its own version, marked.
                    Some(s) => {
                        let mut s = s.clone();
                        s.status.vv.flags |= FLAG_INCONSISTENT;
                        s
                    }
                    None => m.state.clone(),
                }
            } else {
                m.state.clone()
            };
            // Tombstones stay until every replica saw the merge.
            let tombstones: Vec<Tombstone> = match every_replica {
                true => Vec::new(),
                false => want
                    .tombstones
                    .iter()
                    .filter(|t| !binds(&want, &t.name, t.fid))
                    .filter(|t| {
                        mine.is_none_or(|s| !s.tombstones.iter().any(|h| same_removal(h, t)))
                    })
                    .cloned()
                    .collect(),
            };
            // Every replica saw the merge: its removals need no record.
            let clear = m.entries_set && every_replica;
            let stale = clear && mine.is_some_and(|s| !s.tombstones.is_empty());
            if mine.is_some_and(|s| identical(s, &want)) && tombstones.is_empty() && !stale {
                continue;
            }
            let needs_data = want.status.kind == VnodeKind::File
                && want.status.length > 0
                && mine.is_none_or(|s| s.status.content_hash != want.status.content_hash);
            let made_dir = mine.is_none() && want.status.kind == VnodeKind::Directory;
            let object = InstallObject {
                expect: mine.map(|s| s.status.vv.clone()),
                status: want.status,
                acl: want.acl,
                target: want.target,
                history: want.history,
                // A directory made here takes its names too.
                entries: (m.entries_set || made_dir).then_some(want.entries),
                clear_tombstones: clear,
                tombstones,
                data: None,
            };
            objects.push((object, needs_data.then_some(m.source)));
        }
        if objects.is_empty() && removals.is_empty() {
            continue;
        }
        out.installed += objects.len() + removals.len();
        // Objects first, directories after (their names then bind what
        // exists), the root last (a barren replica serves once it has
        // all), removals with it.
        objects.sort_by_key(|(o, _)| {
            (
                o.status.kind == VnodeKind::Directory,
                o.status.fid.vnode == coda_proto::fid::ROOT_VNODE,
            )
        });
        let mut chunks = install_chunks(objects);
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.iter_mut().enumerate() {
            bring_contents(reps, volume, slot, chunk)?;
            let install = Install {
                volume,
                objects: chunk.drain(..).map(|(o, _)| o).collect(),
                // Removals ride with the last chunk.
                removals: match i == last {
                    true => std::mem::take(&mut removals),
                    false => Vec::new(),
                },
            };
            send_install(reps, slot, &install)?;
        }
    }
    Ok(out)
}

/// Whether any replica read holds one of `fids` (else they are names of
/// objects gone everywhere, which merging drops).
fn exist_anywhere(
    reps: &mut dyn Replicas,
    volume: VolumeId,
    summaries: &BTreeMap<usize, HashMap<Fid, VersionVector>>,
    fids: &BTreeSet<Fid>,
) -> Result<bool, Errno> {
    let fids: Vec<Fid> = fids.iter().copied().collect();
    for &slot in summaries.keys() {
        if !read_states(reps, volume, slot, &fids)?.is_empty() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What replica `slot` holds of `fids` (those it has).
fn read_states(
    reps: &mut dyn Replicas,
    volume: VolumeId,
    slot: usize,
    fids: &[Fid],
) -> Result<HashMap<Fid, ObjectState>, Errno> {
    let mut got = HashMap::new();
    for chunk in fids.chunks(INSTALL_OBJECTS_MAX) {
        let req = StateRequest {
            volume,
            fids: chunk.to_vec(),
            inline_max: 0,
        };
        let list: Vec<Option<ObjectState>> = call_decode(reps, slot, op::RES_STATE, &req, true)?;
        for (f, s) in chunk.iter().zip(list) {
            if let Some(s) = s {
                got.insert(*f, s);
            }
        }
    }
    Ok(got)
}

/// What marks the name given to the second object of a name made on both
/// sides of a partition.
pub const CLASH_MARK: &str = ".conflict-";

/// Merges a directory changed on both sides, name by name.
fn merge_dir(
    versions: &[(usize, &ObjectState)],
    states: &BTreeMap<usize, HashMap<Fid, ObjectState>>,
) -> (ObjectState, DirMerge) {
    // Attributes: the latest change wins.
    let (_, newest) = versions
        .iter()
        .max_by_key(|(slot, s)| (s.status.ctime, std::cmp::Reverse(*slot)))
        .copied()
        .expect("versions");
    let mut out = newest.clone();
    out.acl = merge_acls(versions.iter().filter_map(|(_, s)| s.acl.as_ref()));
    // The object's version where a replica holds the name: newer than the
    // removal (its tombstone) means it changed since, and it stays.
    let version_at = |slot: usize, f: &Fid| {
        states
            .get(&slot)
            .and_then(|m| m.get(f))
            .map(|s| &s.status.vv)
    };
    // The object lives on where the name was removed (a rename, another
    // link): a directory only under a new name here, as one moved away may
    // have been moved under itself on the other side.
    let lives_on = |slot: usize, s: &ObjectState, name: &str, b: &Binding| {
        version_at(slot, &b.fid).is_some()
            && (b.kind != VnodeKind::Directory
                || s.entries.iter().any(|e| e.fid == b.fid && e.name != name))
    };
    let mut by_name: BTreeMap<String, Vec<(usize, Binding)>> = BTreeMap::new();
    let mut moved: HashSet<(String, Fid)> = HashSet::new();
    for (slot, s) in versions {
        for b in &s.entries {
            by_name
                .entry(b.name.clone())
                .or_default()
                .push((*slot, b.clone()));
        }
    }
    let mut kept_by_name: Vec<(String, Vec<Binding>)> = Vec::new();
    for (name, holders) in by_name {
        let mut kept: Vec<Binding> = Vec::new();
        for (slot, b) in &holders {
            if kept.iter().any(|k| k.fid == b.fid) {
                continue;
            }
            // Unchanged since it was removed there: the same version (a
            // lost COP2 may part their vectors), or one the removed
            // version saw.
            let unchanged = |t: &Tombstone| {
                version_at(*slot, &b.fid).is_none_or(|v| {
                    v.store_id == t.vv.store_id
                        || t.history.contains(&v.store_id)
                        || matches!(v.compare(&t.vv), VvOrder::Equal | VvOrder::Dominated)
                })
            };
            let (mut removed, mut moved_there) = (false, false);
            for (at, s) in versions {
                // A version binding the name again has undone its removal.
                if binds(s, &name, b.fid) {
                    continue;
                }
                for t in s
                    .tombstones
                    .iter()
                    .filter(|t| t.name == name && t.fid == b.fid)
                {
                    removed |= unchanged(t);
                    moved_there |= lives_on(*at, s, &name, b);
                }
            }
            if removed {
                continue;
            }
            if moved_there {
                moved.insert((name.clone(), b.fid));
            }
            kept.push(b.clone());
        }
        kept_by_name.push((name, kept));
    }
    let mut taken: HashSet<String> = kept_by_name
        .iter()
        .filter(|(_, kept)| !kept.is_empty())
        .map(|(name, _)| name.clone())
        .collect();
    let mut merge = DirMerge::default();
    for (name, kept) in kept_by_name {
        for (i, b) in kept.into_iter().enumerate() {
            let was_moved = moved.contains(&(name.clone(), b.fid));
            let b = match i {
                0 => b,
                _ => {
                    merge.clashes.push(b.fid);
                    let name = clash_name(&name, b.fid.vnode, &taken);
                    taken.insert(name.clone());
                    Binding { name, ..b }
                }
            };
            if was_moved {
                merge.moved.push(b.clone());
            }
            merge.entries.push(b);
        }
    }
    merge.entries.sort();
    out.entries = std::mem::take(&mut merge.entries);
    (out, merge)
}

/// What merging a directory found besides its state.
#[derive(Default)]
struct DirMerge {
    entries: Vec<Binding>,
    /// Objects renamed because one name was made on both sides.
    clashes: Vec<Fid>,
    /// Names kept only because their object changed since a replica
    /// removed them where it lives on: they go if the merge names the
    /// object elsewhere (the side that changed it never saw it moved).
    moved: Vec<Binding>,
}

/// Each object the merged directories name, with where and as what.
fn bindings(
    merged: &HashMap<Fid, Merged>,
    merged_dirs: &HashSet<Fid>,
    removed: &HashSet<Fid>,
) -> HashMap<Fid, Vec<(Fid, String)>> {
    let mut bound_by: HashMap<Fid, Vec<(Fid, String)>> = HashMap::new();
    for d in merged_dirs.iter().filter(|d| !removed.contains(d)) {
        for b in &merged[d].state.entries {
            bound_by
                .entry(b.fid)
                .or_default()
                .push((*d, b.name.clone()));
        }
    }
    // In one order whatever the set's: a seed replays exactly.
    bound_by.values_mut().for_each(|b| b.sort());
    bound_by
}

/// The access list of a directory whose list may have changed on both
/// sides: which side changed it is not known, so each principal keeps
/// the rights every side grants it and loses those any side denies. A
/// right revoked during a partition is never given back; one granted
/// meanwhile on one side alone may have to be granted again.
fn merge_acls<'a>(mut acls: impl Iterator<Item = &'a Acl>) -> Option<Acl> {
    let first = acls.next()?.clone();
    Some(acls.fold(first, |merged, acl| {
        if merged == *acl {
            return merged;
        }
        let rights = |entries: &[AclEntry], id| {
            entries
                .iter()
                .filter(|e| e.id == id)
                .fold(Rights::NONE, |r, e| r.union(e.rights))
        };
        let ids = |x: &[AclEntry], y: &[AclEntry]| -> BTreeSet<PrincipalId> {
            x.iter().chain(y).map(|e| e.id).collect()
        };
        let mut out = Acl::default();
        for id in ids(&merged.positive, &acl.positive) {
            let (a, b) = (rights(&merged.positive, id), rights(&acl.positive, id));
            out.set(id, a.minus(a.minus(b)), false);
        }
        for id in ids(&merged.negative, &acl.negative) {
            let denied = rights(&merged.negative, id).union(rights(&acl.negative, id));
            out.set(id, denied, true);
        }
        out
    }))
}

/// The name the second object of a name made twice gets: the name and
/// the mark, the name cut short if the whole would be too long for a
/// directory, and numbered on if a name already has it (every replica
/// computes the same).
fn clash_name(name: &str, vnode: u64, taken: &HashSet<String>) -> String {
    (0u32..)
        .map(|n| {
            let suffix = match n {
                0 => format!("{CLASH_MARK}{vnode:x}"),
                n => format!("{CLASH_MARK}{vnode:x}-{n}"),
            };
            let mut cut = name
                .len()
                .min(coda_proto::vice::NAME_BYTES_MAX - suffix.len());
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            format!("{}{suffix}", &name[..cut])
        })
        .find(|candidate| !taken.contains(candidate))
        .expect("a free name")
}

/// A number named by what it is for: the same merge gets the same store
/// id on every replica and in every run (seeded tests replay exactly).
fn derived(parts: &[&[u8]]) -> u64 {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
    }
    u64::from_le_bytes(h.finalize().as_bytes()[..8].try_into().expect("8 bytes"))
}

/// Files up to this long travel inside the resolver's calls; longer ones
/// are fetched and staged one by one.
const INLINE_MAX: u64 = 64 << 10;

/// Whether a file's contents travel inside the install.
fn inline(o: &InstallObject) -> bool {
    o.status.length <= INLINE_MAX
}

/// An install's objects in chunks of at most [`INSTALL_OBJECTS_MAX`]
/// objects and [`INLINE_INSTALL_MAX`] bytes of contents carried; at least
/// one chunk, for the removals.
fn install_chunks(
    objects: Vec<(InstallObject, Option<usize>)>,
) -> Vec<Vec<(InstallObject, Option<usize>)>> {
    let mut chunks = vec![Vec::new()];
    let mut bytes = 0;
    for (o, source) in objects {
        let carried = match (source, inline(&o)) {
            (Some(_), true) => o.status.length,
            _ => 0,
        };
        let full = chunks.last().expect("one").len() >= INSTALL_OBJECTS_MAX
            || bytes + carried > INLINE_INSTALL_MAX;
        if full {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += carried;
        chunks.last_mut().expect("one").push((o, source));
    }
    chunks
}

/// Gives each object of an install chunk the new contents it needs: small
/// files' in the install, read from their sources many at a time; large
/// ones' staged at `slot`. Contents that changed meanwhile: `EAGAIN`.
fn bring_contents(
    reps: &mut dyn Replicas,
    volume: VolumeId,
    slot: usize,
    chunk: &mut [(InstallObject, Option<usize>)],
) -> Result<(), Errno> {
    let mut small: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, (o, source)) in chunk.iter_mut().enumerate() {
        match source {
            Some(s) if inline(o) => small.entry(*s).or_default().push(i),
            Some(s) => o.data = Some(Contents::Staged(stage_copy(reps, *s, slot, &o.status)?)),
            None => {}
        }
    }
    for (source, mut rest) in small {
        while !rest.is_empty() {
            let req = StateRequest {
                volume,
                fids: rest.iter().map(|&i| chunk[i].0.status.fid).collect(),
                inline_max: INLINE_MAX,
            };
            let got: Vec<Option<ObjectState>> =
                call_decode(reps, source, op::RES_STATE, &req, true)?;
            let mut left = Vec::new();
            for (&i, state) in rest
                .iter()
                .zip(got.into_iter().chain(std::iter::repeat(None)))
            {
                let o = &mut chunk[i].0;
                match state.and_then(|s| s.data) {
                    Some(d) if *blake3::hash(&d).as_bytes() == o.status.content_hash => {
                        o.data = Some(Contents::Inline(d));
                    }
                    Some(_) => return Err(Errno::EAGAIN),
                    // Past what one reply carries (or gone: see below).
                    None => left.push(i),
                }
            }
            if left.len() == rest.len() {
                // Nothing came: the objects changed or went meanwhile.
                return Err(Errno::EAGAIN);
            }
            rest = left;
        }
    }
    Ok(())
}

/// Fetches a (large) file's contents from `source` and stages them at
/// `slot`; the store id they are staged under.
fn stage_copy(
    reps: &mut dyn Replicas,
    source: usize,
    slot: usize,
    want: &Status,
) -> Result<StoreId, Errno> {
    let hash = want.content_hash;
    let r = reps.call(
        source,
        op::FETCH,
        codec::to_bytes(&Fetch {
            fid: want.fid,
            offset: 0,
        }),
        Some(SideEffect::Receive(Sink::memory(want.length))),
    )?;
    if r.code != 0 {
        return Err(Errno(r.code));
    }
    let data = Bytes::from(r.sink.ok_or(Errno::EIO)?.into_bytes());
    if *blake3::hash(&data).as_bytes() != hash {
        // Changed meanwhile: the next try reads it again.
        return Err(Errno::EAGAIN);
    }
    let sid = StoreId {
        host: RESOLVER_HOST,
        unique: derived(&[
            &hash,
            &(slot as u64).to_le_bytes(),
            &codec::to_bytes(&want.vv),
        ]),
    };
    let req = Stage {
        store_id: sid,
        length: data.len() as u64,
        offset: 0,
    };
    let r = reps.call(
        slot,
        op::STAGE,
        codec::to_bytes(&req),
        Some(SideEffect::Send(Source::Memory(data))),
    )?;
    if r.code != 0 {
        return Err(Errno(r.code));
    }
    let got: StageReply = codec::from_bytes(&r.body).map_err(|_| Errno::EIO)?;
    if got.received != want.length {
        return Err(Errno::EIO);
    }
    Ok(sid)
}

fn send_install(reps: &mut dyn Replicas, slot: usize, install: &Install) -> Result<(), Errno> {
    let body = codec::to_bytes(install);
    let r = reps.call(
        slot,
        op::RES_INSTALL,
        Bytes::new(),
        Some(SideEffect::Send(Source::Memory(body))),
    )?;
    match r.code {
        0 => Ok(()),
        c => Err(Errno(c)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clash_name_fits_a_directory_and_is_free() {
        let none = HashSet::new();
        assert_eq!(clash_name("f", 0xab, &none), "f.conflict-ab");
        // Too long with the mark: cut, at a character's edge.
        let long = "é".repeat(127);
        let got = clash_name(&long, u64::MAX, &none);
        assert!(
            got.len() <= coda_proto::vice::NAME_BYTES_MAX,
            "{}",
            got.len()
        );
        assert!(got.ends_with(".conflict-ffffffffffffffff"));
        // A name someone made already is not taken over.
        let taken: HashSet<String> = ["f.conflict-ab".to_string()].into();
        assert_eq!(clash_name("f", 0xab, &taken), "f.conflict-ab-1");
    }
}
