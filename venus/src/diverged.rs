//! Objects whose replicas diverged: a file changed on both sides of a
//! partition, or the second of one name made on both sides. Resolution
//! leaves each replica its own version, marked inconsistent; programs get
//! EIO on the object (see `Venus::status`) until `repair` settles it by
//! installing one version on every replica (`REPAIR`):
//! - keep-server: the version of the replica this client reads from;
//! - keep-local: the version this cache holds (the one it read or wrote);
//! - keep-both: the read replica's version keeps the name, every other
//!   version is made beside it as `NAME.replica-N` (N its replica's slot,
//!   from 1).
//!
//! `repair show` shows what the replicas it reaches hold; settling needs
//! every replica (see [`all_versions`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use coda_proto::cml::{self, CmlRecord, Op};
use coda_proto::control::{ConflictDetail, ConflictLine, Resolution, Version, UNREACHABLE};
use coda_proto::res::{Inconsistent, Repair};
use coda_proto::vice::{self, op, MutateReply, Stage, StageReply};
use coda_proto::vv::{VersionVector, FLAG_INCONSISTENT};
use coda_proto::{Errno, Fid, Status, VnodeKind, VolumeId};
use coda_rpc2::codec;
use coda_rpc2::endpoint::SideEffect;
use coda_rpc2::{Sink, Source};

use crate::container;
use crate::core::{hash_file, io_errno, Result, Venus};
use crate::link::decode_reply;
use crate::repair::version;
use crate::volume;

/// The reason `repair list` gives.
fn reason() -> String {
    Errno::INCONSISTENT.to_string()
}

/// The diverged objects: those this client came across, and those the
/// replicas of each replicated volume it knows list as marked
/// (`LIST_INCONSISTENT`), so what resolution left for a person shows
/// before anyone touches it.
pub fn list(v: &mut Venus, uid: u32, mount: &Path) -> Vec<ConflictLine> {
    let mut found: BTreeMap<Fid, Vec<String>> = BTreeMap::new();
    let vols: Vec<VolumeId> = v
        .cache
        .volumes
        .values()
        .filter(|(_, info)| volume::replicated(info))
        .map(|(_, info)| info.id)
        .collect();
    for vol in vols {
        let mut listed = BTreeSet::new();
        for (_, addr) in v.replicas_of(vol) {
            match marked_at(v, uid, addr, vol) {
                Ok(marked) => {
                    for m in marked {
                        listed.insert(m.fid);
                        found.entry(m.fid).or_insert(m.path);
                    }
                }
                Err(e) => tracing::debug!("{addr}: conflicts of {vol:#x}: {e}"),
            }
        }
        // One no replica lists stays: they leave out what this user may
        // not look at, and another may; settled, it goes when touched.
        v.diverged.extend(listed);
    }
    let fids: Vec<Fid> = v.diverged.iter().copied().collect();
    fids.into_iter()
        .map(|f| line(v, mount, f, found.get(&f)))
        .collect()
}

/// What the replica at `addr` holds marked in `vol`.
fn marked_at(
    v: &mut Venus,
    uid: u32,
    addr: SocketAddr,
    vol: VolumeId,
) -> Result<Vec<Inconsistent>> {
    let body = codec::to_bytes(&vol);
    let sink = SideEffect::Receive(Sink::memory(LIST_BYTES_MAX));
    let r = v.call_at(uid, addr, op::LIST_INCONSISTENT, body, Some(sink))?;
    decode_reply::<()>(&r)?;
    let bytes = r.sink.map(Sink::into_bytes).unwrap_or_default();
    codec::from_bytes(&bytes).map_err(|_| Errno::EIO)
}

/// Largest list of marked objects taken from a replica.
const LIST_BYTES_MAX: u64 = 64 << 20;

/// A diverged object's line: at the path the replica gave (`listed`,
/// names below its volume's root), else where the cache knows it.
fn line(v: &Venus, mount: &Path, fid: Fid, listed: Option<&Vec<String>>) -> ConflictLine {
    let from_root = listed.and_then(|names| {
        let root = v.path_of(Fid::root(fid.volume))?;
        Some(root.join(names.iter().collect::<PathBuf>()))
    });
    let path = match from_root.or_else(|| v.path_of(fid)) {
        Some(p) => mount.join(p),
        None => mount.join("?").join(fid.to_string()),
    };
    ConflictLine {
        path: path.to_string_lossy().into_owned(),
        fid,
        reason: reason(),
        records: Vec::new(),
    }
}

/// Each replica's version of `fid` (or why it gave none), by slot.
fn versions(v: &mut Venus, uid: u32, fid: Fid) -> Result<Vec<(u32, SocketAddr, Result<Status>)>> {
    let reps = v.replicas_of(fid.volume);
    if reps.is_empty() {
        return Err(Errno::NO_SUCH_VOLUME);
    }
    // Those left out since the partition may be back: asked now.
    let down: Vec<SocketAddr> = reps
        .iter()
        .map(|(_, a)| *a)
        .filter(|a| v.down.contains(a))
        .collect();
    for (addr, (up, restarted)) in crate::core::probe_each(&v.transport(), &down) {
        v.probed(addr, up, restarted);
    }
    Ok(reps
        .into_iter()
        .map(|(slot, addr)| {
            let body = codec::to_bytes(&vice::GetAttr { fid });
            let got = v
                .call_at(uid, addr, op::GET_ATTR, body, None)
                .and_then(|r| decode_reply::<Status>(&r));
            (slot, addr, got)
        })
        .collect())
}

/// Every replica's version: settling needs them all, since one left out
/// would come back holding a version the others' vectors never saw, and
/// be in conflict again.
fn all_versions(v: &mut Venus, uid: u32, fid: Fid) -> Result<Vec<(u32, SocketAddr, Status)>> {
    versions(v, uid, fid)?
        .into_iter()
        .map(|(slot, addr, got)| match got {
            Ok(s) => Ok((slot, addr, s)),
            Err(e) => {
                tracing::warn!("{fid}: replica {} at {addr}: {e}", slot + 1);
                Err(e)
            }
        })
        .collect()
}

/// What this cache holds of the object: its status and data, if any.
fn local(v: &Venus, fid: Fid) -> Option<(Status, Option<File>)> {
    let o = v.cache.objs.get(&fid)?;
    let status = o.rec.status.clone()?;
    let data = (o.rec.container != container::NONE && o.rec.data.is_some())
        .then(|| v.cache.containers.open_rw(o.rec.container).ok())
        .flatten();
    Some((status, data))
}

fn local_version(v: &Venus, fid: Fid) -> Version {
    match local(v, fid) {
        Some((s, data)) => {
            let hash = data.and_then(|f| hash_file(&f, f.metadata().ok()?.len()).ok());
            version(Some(&s), hash)
        }
        None => version(None, None),
    }
}

/// `repair show`: every replica's version, and the cached one.
/// `repair show`: every replica's version, and the cached one. A replica
/// that cannot be reached is shown as such: the others' versions are
/// worth seeing while it is gone.
pub fn show(v: &mut Venus, uid: u32, mount: &Path, fid: Fid) -> Result<ConflictDetail> {
    let reps = versions(v, uid, fid)?;
    if let Some(e) = reps.iter().find_map(|(_, _, got)| got.as_ref().err()) {
        if reps.iter().all(|(_, _, got)| got.is_err()) {
            return Err(*e);
        }
    }
    let preferred = v.preferred_replica(fid.volume)?;
    let server = reps
        .iter()
        .find(|(_, a, _)| *a == preferred)
        .and_then(|(_, _, got)| got.as_ref().ok());
    Ok(ConflictDetail {
        conflict: line(v, mount, fid, None),
        local: local_version(v, fid),
        server: version(server, None),
        replicas: reps
            .iter()
            .map(|(_, a, got)| {
                let shown = match got {
                    Ok(s) => version(Some(s), None),
                    Err(Errno::ETIMEDOUT) => Version {
                        kind: UNREACHABLE.into(),
                        ..version(None, None)
                    },
                    Err(_) => version(None, None),
                };
                (a.to_string(), shown)
            })
            .collect(),
    })
}

/// The contents of the version `addr` holds, fetched into a scratch
/// container of the cache (dropped by the caller).
fn fetch_from(v: &mut Venus, uid: u32, addr: SocketAddr, fid: Fid) -> Result<(u64, File)> {
    let (id, file) = v.cache.containers.create().map_err(io_errno)?;
    let sink = Sink::File(file.try_clone().map_err(io_errno)?);
    let body = codec::to_bytes(&vice::Fetch { fid, offset: 0 });
    let got = v
        .call_at(uid, addr, op::FETCH, body, Some(SideEffect::Receive(sink)))
        .and_then(|r| decode_reply::<Status>(&r));
    match got {
        Ok(_) => Ok((id, file)),
        Err(e) => {
            v.cache.drop_container(id);
            Err(e)
        }
    }
}

/// Installs `keep` (with `data`, for a file) over every replica's version.
fn install(
    v: &mut Venus,
    uid: u32,
    fid: Fid,
    base: VersionVector,
    keep: &Status,
    data: Option<&File>,
) -> Result<()> {
    let vol = fid.volume;
    let store_id = v.store_id();
    let op = match (keep.kind, data) {
        (VnodeKind::File, Some(f)) => {
            let length = f.metadata().map_err(io_errno)?.len();
            let req = codec::to_bytes(&Stage {
                store_id,
                length,
                offset: 0,
            });
            let (got, _): (StageReply, _) = v.call_retry(uid, vol, op::STAGE, req, |_| {
                Ok(Some(SideEffect::Send(Source::File {
                    file: f.try_clone().map_err(io_errno)?,
                    len: length,
                })))
            })?;
            if got.received != length {
                return Err(Errno::EIO);
            }
            Op::Store(cml::Store {
                fid,
                seen: keep.vv.store_id,
                length,
                content_hash: hash_file(f, length).map_err(io_errno)?,
            })
        }
        (VnodeKind::File, None) => return Err(Errno::ENOENT),
        _ => Op::SetAttr(cml::SetAttr {
            fid,
            seen: keep.vv.store_id,
            mode: None,
            owner: None,
            group: None,
            mtime: None,
            atime: None,
            length: None,
        }),
    };
    let record = CmlRecord {
        store_id,
        time: keep.mtime,
        op,
    };
    let body = codec::to_bytes(&Repair { base, record });
    let _: (MutateReply, _) = v.call_update(uid, vol, op::REPAIR, body, store_id, |_| Ok(None))?;
    Ok(())
}

/// Makes `status`'s version anew as `name` in `dir`, with `data`.
fn copy_beside(
    v: &mut Venus,
    uid: u32,
    dir: Fid,
    name: &str,
    status: &Status,
    data: Option<&File>,
) -> Result<()> {
    let made = crate::repair::make(v, uid, dir, name, status, None)?;
    if let Some(from) = data {
        let o = &v.cache.objs[&made];
        let s = o.rec.status.clone().ok_or(Errno::EIO)?;
        let f = v
            .cache
            .containers
            .open_rw(o.rec.container)
            .map_err(io_errno)?;
        std::io::copy(&mut &*from, &mut &f).map_err(io_errno)?;
        crate::cml::store(v, uid, made, &f, status.mtime, &crate::cml::Base::of(&s))?;
    }
    Ok(())
}

/// Settles a diverged object; what was done, a line each.
pub fn settle(v: &mut Venus, uid: u32, fid: Fid, how: Resolution) -> Result<Vec<String>> {
    if v.disconnected(fid.volume) {
        return Err(Errno::ETIMEDOUT);
    }
    let reps = all_versions(v, uid, fid)?;
    let mut base = VersionVector::default();
    for (_, _, s) in &reps {
        base.raise(&s.vv);
    }
    let (dir, name) = v
        .name_of(fid)
        .unwrap_or((reps[0].2.parent, fid.to_string()));
    let preferred = v.preferred_replica(fid.volume)?;
    let (read_slot, _, read) = reps
        .iter()
        .find(|(_, a, _)| *a == preferred)
        .unwrap_or(&reps[0])
        .clone();
    let mut done = Vec::new();
    let mut scratch = Vec::new();
    let result = (|| -> Result<()> {
        let (keep, data) = match how {
            Resolution::KeepLocal(()) => {
                let (s, data) = local(v, fid).ok_or(Errno::ENOENT)?;
                done.push(format!("{name}: the local version kept"));
                (s, data)
            }
            _ => {
                let data = match read.kind {
                    VnodeKind::File => {
                        let (id, f) = fetch_from(v, uid, preferred, fid)?;
                        scratch.push(id);
                        Some(f)
                    }
                    _ => None,
                };
                done.push(format!(
                    "{name}: the version of replica {} kept",
                    read_slot + 1
                ));
                (read.clone(), data)
            }
        };
        if matches!(how, Resolution::KeepBoth(())) {
            let mut copied = vec![keep.content_hash];
            for (slot, addr, s) in &reps {
                if s.kind != VnodeKind::File || copied.contains(&s.content_hash) {
                    continue;
                }
                copied.push(s.content_hash);
                let (id, f) = fetch_from(v, uid, *addr, fid)?;
                scratch.push(id);
                let beside = format!("{name}.replica-{}", slot + 1);
                copy_beside(v, uid, dir, &beside, s, Some(&f))?;
                done.push(format!("{beside}: the version of replica {}", slot + 1));
            }
        }
        install(v, uid, fid, base, &keep, data.as_ref())
    })();
    for id in scratch {
        v.cache.drop_container(id);
    }
    result?;
    // Every replica must have taken it.
    let left: Vec<String> = all_versions(v, uid, fid)?
        .iter()
        .filter(|(_, _, s)| s.vv.flags & FLAG_INCONSISTENT != 0)
        .map(|(_, a, _)| a.to_string())
        .collect();
    if !left.is_empty() {
        tracing::warn!("{name}: still diverged at {}", left.join(", "));
        return Err(Errno::INCONSISTENT);
    }
    v.diverged.remove(&fid);
    crate::repair::forget_local(v, fid, dir, true)?;
    v.emit(
        "conflict",
        format!("{name}: repaired ({})", done.join("; ")),
    );
    Ok(done)
}
