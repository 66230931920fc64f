//! Hoarding: the objects a user wants at hand when disconnected. The hoard
//! database (paths with priorities, kept in the cache across restarts)
//! says what; a walk (`hoard walk`, and every [`WALK_INTERVAL`]) fetches
//! and refreshes it in priority order, giving each object its hoard
//! priority, which cache replacement weighs with recent use (`evict`).
//!
//! `d` takes an entry's descendants too; `+` also those made after it was
//! added. Without `+`, the first walk records, per volume, the newest
//! object it found (fid uniquifiers grow with creation), and later walks
//! leave out anything newer.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use coda_proto::control::{HoardEntry, WalkProgress};
use coda_proto::{Errno, Fid, VnodeKind, VolumeId};
use coda_rpc2::codec_struct;
use rvm::Durability;

use crate::core::{Result, Venus};

/// Priorities run from 1 to this.
pub const PRIORITY_MAX: u32 = 1000;

/// How often the hoard database is walked in the background.
pub const WALK_INTERVAL: Duration = Duration::from_secs(600);

/// A walk stops descending past this many objects per entry.
const WALK_OBJECTS_MAX: usize = 1_000_000;

codec_struct! {
    /// One hoard database entry, persistent.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct HoardRecord {
        /// The local user whose rights fetch it.
        pub uid: u32,
        /// The entry; its path is below the mount.
        pub entry: HoardEntry,
        /// Without `future`: the newest uniquifier per volume at the first
        /// walk (empty until then).
        pub horizon: Vec<(VolumeId, u64)>,
    }
}

/// Adds (or replaces) an entry; `rel` is its path below the mount.
pub fn add(v: &mut Venus, uid: u32, rel: &Path, mut entry: HoardEntry) -> Result<()> {
    if entry.priority == 0 || entry.priority > PRIORITY_MAX {
        return Err(Errno::EINVAL);
    }
    entry.path = rel.to_string_lossy().into_owned();
    let rec = HoardRecord {
        uid,
        entry,
        horizon: Vec::new(),
    };
    Ok(v.cache.update(Durability::Flush, |t| t.put_hoard(rec))?)
}

pub fn delete(v: &mut Venus, rel: &Path) -> Result<()> {
    let path = rel.to_string_lossy().into_owned();
    if !v.cache.hoard.contains_key(&path) {
        return Err(Errno::ENOENT);
    }
    Ok(v.cache
        .update(Durability::Flush, |t| t.remove_hoard(&path))?)
}

/// Drops `uid`'s entries.
pub fn clear(v: &mut Venus, uid: u32) -> Result<()> {
    let mine: Vec<String> = v
        .cache
        .hoard
        .values()
        .filter(|(_, r)| r.uid == uid)
        .map(|(_, r)| r.entry.path.clone())
        .collect();
    Ok(v.cache.update(Durability::Flush, |t| {
        for p in &mine {
            t.remove_hoard(p)?;
        }
        Ok(())
    })?)
}

/// The entries, highest priority first, paths under `mount`.
pub fn list(v: &Venus, mount: &Path) -> Vec<HoardEntry> {
    let mut out: Vec<HoardEntry> = v
        .cache
        .hoard
        .values()
        .map(|(_, r)| HoardEntry {
            path: mount.join(&r.entry.path).to_string_lossy().into_owned(),
            ..r.entry.clone()
        })
        .collect();
    out.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.path.cmp(&b.path)));
    out
}

/// Walks the hoard database: finds what each entry covers, then makes it
/// current, highest priority first, reporting as it goes. The core is
/// locked one object at a time, so the mount stays usable meanwhile.
pub fn walk(venus: &Mutex<Venus>, mut progress: impl FnMut(&WalkProgress)) -> WalkProgress {
    let lock = || venus.lock().unwrap_or_else(|p| p.into_inner());
    let mut records: Vec<HoardRecord> = lock()
        .cache
        .hoard
        .values()
        .map(|(_, r)| r.clone())
        .collect();
    records.sort_by_key(|r| std::cmp::Reverse(r.entry.priority));
    lock().emit("hoard", format!("walk of {} entries", records.len()));
    // What each entry covers, with the priority it gives.
    let mut wanted: HashMap<Fid, (u32, u32)> = HashMap::new();
    let mut order: Vec<Fid> = Vec::new();
    let mut failed = 0;
    for r in &records {
        let covered = {
            let mut v = lock();
            cover(&mut v, r)
        };
        match covered {
            Ok((fids, horizon)) => {
                if !r.entry.future && r.horizon.is_empty() && !horizon.is_empty() {
                    let mut rec = r.clone();
                    rec.horizon = horizon;
                    if let Err(e) = lock()
                        .cache
                        .update(Durability::NoFlush, |t| t.put_hoard(rec))
                    {
                        tracing::error!("hoard: {e}");
                    }
                }
                for f in fids {
                    let e = wanted.entry(f).or_insert_with(|| {
                        order.push(f);
                        (0, r.uid)
                    });
                    e.0 = e.0.max(r.entry.priority);
                }
            }
            Err(e) => {
                tracing::info!("hoard: {}: {e}", r.entry.path);
                failed += 1;
            }
        }
    }
    order.sort_by_key(|f| std::cmp::Reverse(wanted[f].0));
    let mut p = WalkProgress {
        done: 0,
        total: order.len() as u64,
        bytes: 0,
        failed,
        finished: false,
    };
    progress(&p);
    // Priorities first, so replacement keeps what the walk fetches.
    lock().set_hoard_priorities(&wanted);
    for fid in order {
        let (_, uid) = wanted[&fid];
        match lock().make_current(uid, fid) {
            Ok(bytes) => p.bytes += bytes,
            Err(e) => {
                tracing::debug!("hoard: {fid}: {e}");
                p.failed += 1;
            }
        }
        p.done += 1;
        progress(&p);
    }
    p.finished = true;
    progress(&p);
    lock().emit(
        "hoard",
        format!(
            "walk done: {} objects, {} bytes fetched, {} not available",
            p.done, p.bytes, p.failed
        ),
    );
    p
}

/// The objects an entry covers, and (first walk without `+`) the newest
/// uniquifier seen per volume.
#[allow(clippy::type_complexity)]
fn cover(v: &mut Venus, r: &HoardRecord) -> Result<(Vec<Fid>, Vec<(VolumeId, u64)>)> {
    let root = v.resolve(r.uid, Path::new(&r.entry.path))?;
    let mut out = vec![root];
    if !r.entry.children {
        return Ok((out, Vec::new()));
    }
    let horizon: HashMap<VolumeId, u64> = r.horizon.iter().copied().collect();
    let mut newest: HashMap<VolumeId, u64> = HashMap::new();
    let mut queue = VecDeque::from([root]);
    while let Some(dir) = queue.pop_front() {
        if out.len() >= WALK_OBJECTS_MAX {
            break;
        }
        let Ok(children) = v.children(r.uid, dir) else {
            continue;
        };
        for (fid, kind) in children {
            if !r.entry.future && horizon.get(&fid.volume).is_some_and(|&h| fid.unique > h) {
                continue;
            }
            let n = newest.entry(fid.volume).or_default();
            *n = (*n).max(fid.unique);
            out.push(fid);
            if kind == VnodeKind::Directory {
                queue.push_back(fid);
            }
        }
    }
    Ok((out, newest.into_iter().collect()))
}
