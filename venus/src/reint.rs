//! Reintegration: a volume's CML sent to its server in batches, each
//! applied there whole or not at all.
//!
//! - A batch is frozen before it is sent (its last record carries the
//!   batch's id, written to the log), so after an interruption (a lost
//!   answer, a crash, a server gone) the same batch goes again, and the
//!   server, which remembers the last batch it applied from this client,
//!   answers it again without applying anything twice.
//! - A store's data is staged first, in fragments sized to the bandwidth
//!   measured so far; an interrupted upload resumes where it stopped.
//! - Objects made while disconnected get their real fids from the answer
//!   (`Applied::remaps`): the cache and the records still to send follow.
//! - A batch waits for a token of its user, and says so.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coda_proto::cml::Op;
use coda_proto::vice::{op, Applied, Reintegrate, ReintegrateReply, Stage, StageReply};
use coda_proto::{Errno, Fid, StoreId, VolumeId};
use coda_rpc2::codec;
use coda_rpc2::endpoint::SideEffect;
use coda_rpc2::Source;
use rvm::Durability;

use crate::cml::LogEntry;
use crate::core::{hash_file, Result, Route, Venus};
use crate::link::{decode_reply, Transport};
use std::sync::Mutex;

/// Records per batch: enough that a batch's round trip is small beside
/// its work, few enough that the server's transaction stays modest.
pub const BATCH_RECORDS: usize = 4096;

/// A batch this small travels in the call's body; larger ones as its
/// side effect.
const INLINE_BYTES_MAX: usize = 1200;

/// Stage fragments: first size, bounds, and the time one should take.
const FRAGMENT_FIRST: u64 = 1 << 20;
const FRAGMENT_MAX: u64 = 64 << 20;
const FRAGMENT_TIME: Duration = Duration::from_secs(2);

/// What is known of the way to the servers, for sizing fragments.
#[derive(Debug, Default)]
pub struct Bandwidth {
    /// Bytes per second of the last fragment staged.
    pub bytes_per_sec: Option<u64>,
    /// Bytes each server holds of each store being staged.
    pub staged: HashMap<StoreId, u64>,
    /// Stores staged again after the server had let their data go.
    pub restaged: std::collections::HashSet<StoreId>,
}

impl Bandwidth {
    fn fragment(&self) -> u64 {
        self.bytes_per_sec.map_or(FRAGMENT_FIRST, |b| {
            (b.saturating_mul(FRAGMENT_TIME.as_millis() as u64) / 1000)
                .clamp(FRAGMENT_FIRST, FRAGMENT_MAX)
        })
    }
}

/// Sends `vol`'s log until it is empty. An error leaves the rest for
/// later (the server went away, a token is missing, a file is still open).
pub fn reintegrate(v: &mut Venus, vol: VolumeId) -> Result<()> {
    if v.disconnected(vol) {
        return Err(Errno::ETIMEDOUT);
    }
    if !v.cml.records.contains_key(&vol) {
        return Ok(());
    }
    v.reintegrating = Some(vol);
    v.emit("reintegrate", format!("volume {vol:#x}: starting"));
    let started = Instant::now();
    let mut sent = 0usize;
    let result = (|| loop {
        let batch = next_batch(v, vol);
        if batch.is_empty() {
            return Ok(());
        }
        send(v, vol, batch, &mut sent)?;
    })();
    v.reintegrating = None;
    match &result {
        Ok(()) => {
            v.emit(
                "reintegrate",
                format!(
                    "volume {vol:#x}: {sent} records in {:.3} s",
                    started.elapsed().as_secs_f64()
                ),
            );
            v.refresh_stale(vol);
        }
        Err(e) => v.emit(
            "reintegrate",
            format!("volume {vol:#x}: stopped after {sent} records: {e}"),
        ),
    }
    result
}

/// The records of the next batch: the one in flight, if any, else the
/// oldest records of one user.
fn next_batch(v: &Venus, vol: VolumeId) -> Vec<LogEntry> {
    let frozen = v.cml.frozen.get(&vol).copied();
    let mut out: Vec<LogEntry> = Vec::new();
    for (_, e) in v.cache.cml.values() {
        if e.record.op.volume() != vol {
            continue;
        }
        if let Some(end) = frozen {
            out.push(e.clone());
            if e.seq == end {
                break;
            }
            continue;
        }
        if out
            .first()
            .is_some_and(|f| f.uid != e.uid || out.len() >= BATCH_RECORDS)
        {
            break;
        }
        out.push(e.clone());
    }
    out
}

fn send(v: &mut Venus, vol: VolumeId, mut batch: Vec<LogEntry>, sent: &mut usize) -> Result<()> {
    let uid = batch[0].uid;
    if !v.has_token(uid) {
        if v.waiting.insert(vol, uid).is_none() {
            v.emit(
                "reintegrate",
                format!("volume {vol:#x} waits for a token: uid {uid} should run clog"),
            );
        }
        return Err(Errno::EACCES);
    }
    v.waiting.remove(&vol);
    if batch.last().is_some_and(|e| e.ends_batch.is_none()) {
        // A file open for writing may have changed since its store was
        // logged: its store, and what comes after about it, wait for its
        // close; the rest (about other objects, so independent of it) goes.
        let mut busy = std::collections::HashSet::new();
        batch.retain(|e| {
            if let Op::Store(s) = &e.record.op {
                if v.cache.objs.get(&s.fid).is_some_and(|o| o.writers > 0) {
                    busy.insert(s.fid);
                }
            }
            !e.record.op.fids().iter().any(|f| busy.contains(f))
        });
        if batch.is_empty() {
            return Err(Errno::EBUSY);
        }
    }
    // The data of each store, and the record's length and hash as the
    // container has them now.
    stage_all(v, uid, &mut batch)?;
    let last = batch.last().expect("not empty");
    let id = match last.ends_batch {
        Some(id) => id,
        None => {
            let id = StoreId {
                host: v.cache.host,
                unique: last.record.store_id.unique,
            };
            let mut frozen = last.clone();
            frozen.ends_batch = Some(id);
            // Durable before it is sent: after any crash the same batch goes
            // again, and the server knows it.
            v.cache
                .update(Durability::Flush, |t| t.put_cml(frozen.clone()))?;
            v.cml.rewrote(&frozen);
            id
        }
    };
    let req = Reintegrate {
        volume: vol,
        batch: id,
        records: batch.iter().map(|e| e.record.clone()).collect(),
    };
    let body = codec::to_bytes(&req);
    let (reply, _): (ReintegrateReply, _) = if body.len() <= INLINE_BYTES_MAX {
        v.call_update(uid, vol, op::REINTEGRATE, body, id, |_| Ok(None))?
    } else {
        v.call_update(uid, vol, op::REINTEGRATE, Bytes::new(), id, |_| {
            Ok(Some(SideEffect::Send(Source::Memory(body.clone()))))
        })?
    };
    match reply {
        ReintegrateReply::Applied(a) => {
            applied(v, vol, &batch, &a)?;
            *sent += batch.len();
            Ok(())
        }
        ReintegrateReply::Conflict(c) => {
            // Nothing went in: what was staged for it is staged again
            // (the server may have let it go).
            for e in &batch {
                v.bandwidth.staged.remove(&e.record.store_id);
            }
            let at = batch.get(c.index as usize).ok_or(Errno::EIO)?.clone();
            let code = Errno(c.code);
            if transient(code) {
                // Not the record's fault: the batch goes again later.
                v.emit(
                    "reintegrate",
                    format!("volume {vol:#x}: the server cannot take it now: {code}"),
                );
                return Err(code);
            }
            let store = matches!(at.record.op, Op::Store(_));
            if store && code == Errno::EINVAL && v.bandwidth.restaged.insert(at.record.store_id) {
                // The server let its staged data go (a restart, or it
                // waited too long): staged again, once.
                return Err(Errno::EAGAIN);
            }
            crate::conflict::record_failed(v, vol, &batch, at, code)
        }
    }
}

/// A refusal that says nothing about the record: the volume is locked or
/// moved, the server is short of space or failed; the batch waits.
fn transient(code: Errno) -> bool {
    [
        Errno::VOLUME_LOCKED,
        Errno::WRONG_SHARD,
        Errno::NO_SUCH_VOLUME,
        Errno::ENOSPC,
        Errno::EDQUOT,
        Errno::EIO,
        Errno::EROFS,
        Errno::EAGAIN,
        Errno::ETIMEDOUT,
        Errno::TOKEN_EXPIRED,
        Errno::BARREN,
    ]
    .contains(&code)
}

/// How many small stores are staged at once: their round trips overlap,
/// and so do the server's syncs of their containers.
const STAGE_PARALLEL: usize = 16;

/// Stages the data of every store in a batch: small ones several at a
/// time, large ones alone in fragments (and whatever failed in the first
/// way, again the second).
fn stage_all(v: &mut Venus, uid: u32, batch: &mut [LogEntry]) -> Result<()> {
    let mut small = Vec::new();
    let mut large = Vec::new();
    for (i, e) in batch.iter_mut().enumerate() {
        let Some((file, length)) = check(v, e)? else {
            continue;
        };
        let sid = e.record.store_id;
        let offset = v.bandwidth.staged.get(&sid).copied().unwrap_or(0);
        if offset >= length && length > 0 {
            continue;
        }
        // A replicated volume's go to every replica, one at a time.
        let replicated = v
            .cached_volume(e.record.op.volume())
            .is_some_and(|info| crate::volume::replicated(&info));
        if length <= FRAGMENT_FIRST && offset == 0 && !replicated {
            small.push((i, sid, length, file));
        } else {
            large.push(i);
        }
    }
    if let Some(&(first, ..)) = small.first() {
        let vol = batch[first].record.op.volume();
        let route = v.route(uid, vol)?;
        let link = v.transport();
        let failed = Mutex::new(Vec::new());
        // The first alone, so that one connection is bound for them all.
        let (i, sid, length, file) = small.remove(0);
        if upload_whole(&*link, &route, sid, length, &file).is_err() {
            failed.lock().expect("failed").push(i);
        }
        let queue = Mutex::new(small.into_iter());
        std::thread::scope(|scope| {
            for _ in 0..STAGE_PARALLEL {
                scope.spawn(|| loop {
                    let Some((i, sid, length, file)) = queue.lock().expect("queue").next() else {
                        return;
                    };
                    if upload_whole(&*link, &route, sid, length, &file).is_err() {
                        failed.lock().expect("failed").push(i);
                    }
                });
            }
        });
        large.extend(failed.into_inner().expect("failed"));
    }
    for i in large {
        stage(v, uid, &mut batch[i])?;
    }
    Ok(())
}

/// Stages a small store whole in one call.
fn upload_whole(
    link: &dyn Transport,
    route: &Route,
    store_id: StoreId,
    length: u64,
    file: &std::fs::File,
) -> Result<()> {
    let mut buf = vec![0u8; length as usize];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut buf, 0).map_err(|_| Errno::EIO)?;
    let req = Stage {
        store_id,
        length,
        offset: 0,
    };
    let reply = link
        .call(
            route.addr,
            route.who,
            route.creds.as_ref(),
            coda_proto::vice::SUBSYSTEM,
            op::STAGE,
            codec::to_bytes(&req),
            Some(SideEffect::Send(Source::Memory(Bytes::from(buf)))),
        )
        .map_err(|e| e.errno())?;
    let got: StageReply = decode_reply(&reply)?;
    if got.received != length {
        return Err(Errno::EIO);
    }
    Ok(())
}

/// A store's container as the record should say it: the record is brought
/// up to date with the container (unless the file is still open for
/// writing, when its close logs a newer store). The container and length.
fn check(v: &mut Venus, e: &mut LogEntry) -> Result<Option<(std::fs::File, u64)>> {
    let Op::Store(s) = &mut e.record.op else {
        return Ok(None);
    };
    let o = v.cache.objs.get(&s.fid).ok_or(Errno::EIO)?;
    let writers = o.writers;
    let file = v
        .cache
        .containers
        .open_rw(o.rec.container)
        .map_err(|_| Errno::EIO)?;
    let length = file.metadata().map_err(|_| Errno::EIO)?.len();
    if length != s.length || hash_file(&file, length).map_err(|_| Errno::EIO)? != s.content_hash {
        if writers > 0 {
            // Written since, and still open: its close logs a new store.
            return Err(Errno::EBUSY);
        }
        s.length = length;
        s.content_hash = hash_file(&file, length).map_err(|_| Errno::EIO)?;
        // What was staged of the old contents is of no use.
        v.bandwidth.staged.remove(&e.record.store_id);
        let fixed = e.clone();
        v.cache
            .update(Durability::Written, |t| t.put_cml(fixed.clone()))?;
    }
    Ok(Some((file, length)))
}

/// Stages a store's data from its container, in fragments.
fn stage(v: &mut Venus, uid: u32, e: &mut LogEntry) -> Result<()> {
    let Some((file, _)) = check(v, e)? else {
        return Ok(());
    };
    let Op::Store(s) = &e.record.op else {
        unreachable!("a store")
    };
    let sid = e.record.store_id;
    let mut offset = v.bandwidth.staged.get(&sid).copied().unwrap_or(0);
    if offset >= s.length && s.length > 0 {
        return Ok(());
    }
    loop {
        let n = v.bandwidth.fragment().min(s.length - offset.min(s.length));
        let req = Stage {
            store_id: sid,
            length: s.length,
            offset,
        };
        let began = Instant::now();
        // SFTP sends a source from the call's offset on: this fragment is
        // the container's bytes from `offset` to `offset + n`.
        let staged: Result<(StageReply, _)> =
            v.call_retry(uid, s.fid.volume, op::STAGE, codec::to_bytes(&req), |_| {
                Ok(Some(SideEffect::Send(Source::File {
                    file: file.try_clone().map_err(|_| Errno::EIO)?,
                    len: offset + n,
                })))
            });
        let reply = match staged {
            // The server lost what it had (it restarted): from the start.
            Err(Errno::EINVAL) if offset > 0 => {
                offset = 0;
                v.bandwidth.staged.remove(&sid);
                continue;
            }
            r => r?.0,
        };
        let took = began.elapsed().as_secs_f64().max(1e-6);
        if n >= FRAGMENT_FIRST {
            v.bandwidth.bytes_per_sec = Some((n as f64 / took) as u64);
        }
        offset = reply.received;
        v.bandwidth.staged.insert(sid, offset);
        if offset >= s.length {
            return Ok(());
        }
        if n == 0 {
            return Err(Errno::EIO);
        }
    }
}

/// A batch went in: its records leave the log, objects made from local
/// fids take their real ones (in the cache and in the records still to
/// send), and what it touched is validated again on next use.
fn applied(v: &mut Venus, vol: VolumeId, batch: &[LogEntry], a: &Applied) -> Result<()> {
    let records: Vec<_> = batch.iter().map(|e| e.record.clone()).collect();
    let remaps: HashMap<Fid, Fid> = a
        .remaps(&records)
        .into_iter()
        .map(|m| (m.local, m.fid))
        .collect();
    let real = |f: Fid| remaps.get(&f).copied().unwrap_or(f);
    let sent: std::collections::HashSet<u64> = batch.iter().map(|e| e.seq).collect();
    let rest: Vec<LogEntry> = v
        .cache
        .cml
        .values()
        .map(|(_, e)| e)
        .filter(|e| e.record.op.volume() == vol && !sent.contains(&e.seq))
        .filter(|e| e.record.op.fids().iter().any(|f| remaps.contains_key(f)))
        .cloned()
        .map(|mut e| {
            e.record.op.map_fids(real);
            for b in e.before.iter_mut() {
                b.0 = real(b.0);
            }
            e
        })
        .collect();
    // Directories the rest of the log still changes keep the listing the
    // log made: only the server's, with those changes, would be right.
    let still: std::collections::HashSet<Fid> = v
        .cache
        .cml
        .values()
        .filter(|(_, e)| !sent.contains(&e.seq))
        .flat_map(|(_, e)| e.record.op.fids())
        .map(real)
        .collect();
    let conflicts: Vec<crate::conflict::Conflict> = v
        .cache
        .conflicts
        .values()
        .map(|(_, c)| c)
        .filter(|c| {
            c.records
                .iter()
                .any(|e| e.record.op.fids().iter().any(|f| remaps.contains_key(f)))
                || remaps.contains_key(&c.dir)
        })
        .cloned()
        .collect();
    let mut dirs = Vec::new();
    // Durable at once: the server applied it, and a crash must not send it
    // again under another batch id.
    v.cache.update(Durability::Flush, |t| {
        for e in batch {
            t.remove_cml(e.seq)?;
        }
        // Conflicts waiting beside the log name the real fids too.
        for mut c in conflicts {
            c.dir = real(c.dir);
            for e in c.records.iter_mut() {
                e.record.op.map_fids(real);
            }
            t.put_conflict(c)?;
        }
        for (local, fid) in &remaps {
            t.remap(*local, *fid)?;
        }
        for e in rest {
            t.put_cml(e)?;
        }
        for r in &records {
            for f in r.op.fids() {
                if let Some(o) = t.objs.get_mut(&real(f)) {
                    o.valid = false;
                    // The server changed its names on top of others'
                    // changes it may hold: the listing is asked for again.
                    if o.rec.kind == coda_proto::VnodeKind::Directory
                        && o.rec.data.is_some()
                        && !still.contains(&o.fid())
                    {
                        o.rec.data = None;
                        dirs.push(o.fid());
                    }
                }
            }
        }
        for d in &dirs {
            t.save(*d)?;
        }
        Ok(())
    })?;
    dirs.sort_unstable();
    dirs.dedup();
    v.kernel_forget(&dirs);
    for e in batch {
        if let Op::Store(_) = e.record.op {
            v.bandwidth.staged.remove(&e.record.store_id);
        }
    }
    v.remapped(&remaps);
    // Objects gone here that waited for this batch's answer.
    let orphans: Vec<Fid> = records
        .iter()
        .flat_map(|r| r.op.fids())
        .map(real)
        .filter(|f| {
            v.cache
                .objs
                .get(f)
                .is_some_and(|o| o.orphan && o.opens == 0)
        })
        .collect();
    v.cml.rebuild(&v.cache.cml);
    for f in orphans {
        if !v.held(f) {
            v.cache.drop_obj(f)?;
        }
    }
    v.cml.stale = std::mem::take(&mut v.cml.stale)
        .into_iter()
        .map(real)
        .collect();
    v.untrust(vol);
    Ok(())
}

/// Reintegrates every volume with a log whose server answers.
pub fn reintegrate_all(v: &mut Venus) {
    for vol in v.logged_volumes() {
        if !v.disconnected(vol) {
            if let Err(e) = reintegrate(v, vol) {
                tracing::info!("volume {vol:#x}: reintegration stopped: {e}");
            }
        }
    }
}

/// How long a write-disconnected update waits before it is sent, so that
/// the log's cancellation rules get to work on it.
pub const AGING: Duration = Duration::from_secs(3);

/// How often servers are probed (those that went away, for coming back;
/// the others, for a restart that broke every promise).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// The background work, run about once a second: reintegrate what is
/// logged on volumes whose servers answer (write-disconnected: once it has
/// aged).
pub fn background(v: &mut Venus) {
    let now = coda_proto::Timestamp::now();
    for vol in v.logged_volumes() {
        if v.disconnected(vol) {
            continue;
        }
        if let Some(&uid) = v.waiting.get(&vol) {
            if !v.has_token(uid) {
                continue;
            }
        }
        if v.write_disconnected {
            let aged = v
                .oldest_record(vol)
                .is_some_and(|t| now.secs - t.secs >= AGING.as_secs() as i64);
            if !aged {
                continue;
            }
        }
        if let Err(e) = reintegrate(v, vol) {
            tracing::debug!("volume {vol:#x}: reintegration stopped: {e}");
        }
    }
}
