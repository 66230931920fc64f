//! Volume administration that copies or streams whole volumes: clone,
//! backup, dump estimates (jobs on the shard that owns the volume), and
//! dumps and restores (sessions of calls to that shard, with the dump
//! bytes as SFTP side effects).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coda_proto::dump::DumpError;
use coda_proto::vice::VolumeKind;
use coda_proto::volutil::{
    op, CloneVolume, DumpBegin, DumpBegun, DumpChunk, DumpEstimate, ManifestItem, NameVolume,
    Refusal, RestoreBegin, RestoreReply, Session, DUMP_CHUNK_MAX, MANIFEST_BYTES_MAX,
};
use coda_proto::Errno;
use coda_rpc2::codec;
use coda_rpc2::{IncomingId, Sink, Source};
use rvm::CommitId;

use crate::cell::Location;
use crate::dump::{self, DumpSession};
use crate::restore::{RestoreSession, Restored};
use crate::service::{
    decode, io_errno, ok, rvm_errno, Action, Job, Service, Then, Transfer, Waiting,
};

/// A dump or restore no call has touched for this long is dropped.
pub const SESSION_IDLE: Duration = Duration::from_secs(600);

type Answer = Result<Option<(Bytes, Option<CommitId>)>, Errno>;

fn now(answer: crate::service::Answer) -> Answer {
    answer.map(|b| Some((b, None)))
}

fn session_id() -> Result<u64, Errno> {
    coda_rpc2::udp::os_random_u64().map_err(io_errno)
}

fn refused(e: DumpError) -> RestoreReply {
    RestoreReply::Refused(Refusal {
        offset: e.offset,
        reason: e.reason,
    })
}

impl Service {
    /// `CLONE` to `RESTORE_END` (the caller checked the rights).
    pub(crate) fn volume_admin(
        &mut self,
        id: IncomingId,
        opcode: u16,
        body: &[u8],
        out: &mut Vec<Action>,
    ) -> Answer {
        self.expire_sessions();
        match opcode {
            op::CLONE => {
                let r: CloneVolume = decode(body)?;
                let src = self.resolve(&r.volume)?;
                let (clone, shard) = {
                    let mut vldb = self.cell.vldb_mut();
                    let loc = vldb.get(src).ok_or(Errno::NO_SUCH_VOLUME)?.clone();
                    let name = r.name.unwrap_or(format!("{}.readonly", loc.name));
                    crate::volume_name_ok(&name).map_err(|_| Errno::EINVAL)?;
                    if vldb.by_name(&name).is_some() {
                        return Err(Errno::EEXIST);
                    }
                    let clone = self.cell.new_volume_id();
                    let kind = VolumeKind::ReadOnly;
                    let shard = loc.shard;
                    vldb.insert(clone, Location { name, shard, kind });
                    (clone, shard)
                };
                let name = self.cell.vldb().get(clone).map(|l| l.name.clone());
                let job = Job::Clone {
                    src,
                    id: clone,
                    name: name.unwrap_or_default(),
                };
                self.on_shard(id, shard, job, out)
            }
            op::BACKUP | op::DUMP_ESTIMATE => {
                let r: NameVolume = decode(body)?;
                let vol = self.resolve(&r.volume)?;
                let job = match opcode {
                    op::BACKUP => Job::Backup(vol),
                    _ => Job::DumpEstimate(vol),
                };
                self.on_volume_shard(id, vol, job, out)
            }
            op::DUMP_BEGIN => {
                let r: DumpBegin = decode(body)?;
                self.local_volume(self.resolve(&r.volume)?)?;
                if r.base.is_none() {
                    return now(self.begin_dump(r, &[]));
                }
                if r.manifest_bytes > MANIFEST_BYTES_MAX {
                    return Err(Errno::EFBIG);
                }
                let sink = Sink::memory(r.manifest_bytes);
                self.transfers.insert(id, Transfer::Manifest(r));
                out.push(Action::Pull {
                    id,
                    sink,
                    offset: 0,
                });
                Ok(None)
            }
            op::DUMP_READ => {
                let r: Session = decode(body)?;
                let s = self.dumps.get_mut(&r.session).ok_or(Errno::EINVAL)?;
                let read = s.read(&self.shard.containers, DUMP_CHUNK_MAX as usize);
                let (bytes, done) = match read {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::error!("dump of volume {:x}: {e}", s.volume);
                        self.end_dump(r.session);
                        return Err(io_errno(e));
                    }
                };
                if done {
                    self.end_dump(r.session);
                }
                let reply = DumpChunk {
                    bytes: bytes.len() as u64,
                    done,
                };
                self.transfers
                    .insert(id, Transfer::Fetch(codec::to_bytes(&reply)));
                out.push(Action::Push {
                    id,
                    source: Source::Memory(Bytes::from(bytes)),
                    offset: 0,
                });
                Ok(None)
            }
            op::DUMP_END => {
                let r: Session = decode(body)?;
                self.end_dump(r.session);
                if let Some(s) = self.restores.remove(&r.session) {
                    s.abandon(&self.shard.containers);
                }
                now(Ok(Bytes::new()))
            }
            op::RESTORE_BEGIN => {
                let r: RestoreBegin = decode(body)?;
                crate::volume_name_ok(&r.name).map_err(|_| Errno::EINVAL)?;
                let existing = self.cell.vldb().by_name(&r.name);
                if let Some(vol) = existing {
                    // An incremental dump is applied where the volume is.
                    self.local_volume(vol)?;
                }
                let session = session_id()?;
                self.restores.insert(session, RestoreSession::new(r.name));
                now(ok(&RestoreReply::Accepted(session)))
            }
            op::RESTORE_WRITE => {
                let r: Session = decode(body)?;
                if !self.restores.contains_key(&r.session) {
                    return Err(Errno::EINVAL);
                }
                self.transfers.insert(id, Transfer::Restore(r.session));
                out.push(Action::Pull {
                    id,
                    sink: Sink::memory(DUMP_CHUNK_MAX),
                    offset: 0,
                });
                Ok(None)
            }
            op::RESTORE_END => {
                let r: Session = decode(body)?;
                let session = self.restores.remove(&r.session).ok_or(Errno::EINVAL)?;
                if let Err(e) = session.finish() {
                    session.abandon(&self.shard.containers);
                    return now(ok(&refused(e)));
                }
                // Its data must be durable before any vnode points at it.
                out.push(Action::Sync {
                    containers: session.made.clone(),
                    then: Box::new(Then(Waiting::Restore {
                        id,
                        session: Box::new(session),
                    })),
                });
                Ok(None)
            }
            _ => Err(Errno::UNKNOWN_CALL),
        }
    }

    /// Clone, backup and estimate, on the shard that owns the volume.
    pub(crate) fn admin_job(
        &mut self,
        job: Job,
        out: &mut Vec<Action>,
    ) -> Result<(Bytes, Option<CommitId>), Errno> {
        match job {
            Job::Clone { src, id, name } => {
                let made = self
                    .shard
                    .clone_volume(src, id, &name, VolumeKind::ReadOnly);
                let commit = match made {
                    Ok(Some(c)) => c,
                    Ok(None) | Err(_) => {
                        self.cell.vldb_mut().remove(id);
                        return Err(made.map_or_else(rvm_errno, |_| Errno::NO_SUCH_VOLUME));
                    }
                };
                Ok((codec::to_bytes(&self.info(id)?), Some(commit)))
            }
            Job::Backup(src) => {
                let h = self.local_volume(src)?.header.clone();
                if h.kind != VolumeKind::ReadWrite {
                    return Err(Errno::EROFS);
                }
                let name = format!("{}.backup", h.name);
                crate::volume_name_ok(&name).map_err(|_| Errno::EINVAL)?;
                let taken = self.cell.vldb().by_name(&name);
                if taken.is_some_and(|t| t != h.backup) {
                    return Err(Errno::EEXIST);
                }
                let id = match h.backup {
                    0 => self.cell.new_volume_id(),
                    id => id,
                };
                // Whoever cached the older snapshot must not keep it.
                if let Some(old) = self.shard.meta.volume(id) {
                    let fids: Vec<_> = old.vnodes().map(|v| v.fid).collect();
                    self.breaks(None, id, &fids, out);
                }
                // Recorded first: a crash part-way leaves a transient
                // volume of this id, which the next backup replaces.
                let ((), _) = self
                    .shard
                    .transact(rvm::Durability::NoFlush, |txn| {
                        txn.put_header(crate::vnode::VolumeHeader { backup: id, ..h })
                    })
                    .map_err(rvm_errno)?;
                let kind = VolumeKind::Backup;
                let commit = self
                    .shard
                    .clone_volume(src, id, &name, kind)
                    .map_err(rvm_errno)?
                    .ok_or(Errno::NO_SUCH_VOLUME)?;
                let shard = self.shard.index;
                self.cell.register(id, Location { name, shard, kind });
                Ok((codec::to_bytes(&self.info(id)?), Some(commit)))
            }
            Job::DumpEstimate(vol) => {
                let bytes = dump::estimate(self.local_volume(vol)?);
                Ok((codec::to_bytes(&DumpEstimate { bytes }), None))
            }
            _ => Err(Errno::UNKNOWN_CALL),
        }
    }

    /// A dump's snapshot taken: its containers pinned till it ends.
    fn begin_dump(&mut self, r: DumpBegin, manifest: &[ManifestItem]) -> crate::service::Answer {
        let vol = self.local_volume(self.resolve(&r.volume)?)?;
        let session = session_id()?;
        let m = dump::manifest(manifest);
        let base = r.base.map(|b| (b, &m));
        let s = DumpSession::new(vol, session_id()?, base);
        let begun = DumpBegun {
            session,
            bytes: s.bytes,
        };
        self.shard.pin(&s.pinned);
        self.dumps.insert(session, s);
        ok(&begun)
    }

    fn end_dump(&mut self, session: u64) {
        if let Some(s) = self.dumps.remove(&session) {
            self.shard.unpin(&s.pinned);
        }
    }

    pub(crate) fn manifest_arrived(
        &mut self,
        id: IncomingId,
        begin: DumpBegin,
        result: Result<u64, coda_rpc2::Error>,
        sink: Option<Sink>,
        out: &mut Vec<Action>,
    ) {
        let answer = match (result, sink) {
            (Ok(_), Some(sink)) => decode::<Vec<ManifestItem>>(&sink.into_bytes())
                .and_then(|m| self.begin_dump(begin, &m)),
            _ => Err(Errno::EIO),
        };
        self.reply(id, answer, None, out);
    }

    pub(crate) fn restore_piece(
        &mut self,
        id: IncomingId,
        session: u64,
        result: Result<u64, coda_rpc2::Error>,
        sink: Option<Sink>,
        out: &mut Vec<Action>,
    ) {
        let Some(s) = self.restores.get_mut(&session) else {
            return self.reply(id, Err(Errno::EINVAL), None, out);
        };
        let fed = match (result, sink) {
            (Ok(_), Some(sink)) => s.feed(&mut self.shard.containers, &sink.into_bytes()),
            // The piece did not arrive: the tool sends it again.
            _ => return self.reply(id, Err(Errno::EIO), None, out),
        };
        let reply = match fed {
            Ok(offset) => RestoreReply::Accepted(offset),
            Err(e) => {
                if let Some(s) = self.restores.remove(&session) {
                    s.abandon(&self.shard.containers);
                }
                refused(e)
            }
        };
        self.reply(id, ok(&reply), None, out);
    }

    pub(crate) fn restore_synced(
        &mut self,
        id: IncomingId,
        session: RestoreSession,
        synced: std::io::Result<Vec<[u8; 32]>>,
        out: &mut Vec<Action>,
    ) {
        let target = self.cell.vldb().by_name(&session.name);
        let local = target.filter(|v| self.shard.meta.volume(*v).is_some());
        let applied = match synced {
            Err(e) => Err(DumpError::at(
                session.offset(),
                format!("server: syncing: {e}"),
            )),
            Ok(_) if target.is_some() && local.is_none() => Err(DumpError::at(
                session.offset(),
                format!("volume {} is served by another shard", session.name),
            )),
            Ok(_) => {
                let cell = self.cell.clone();
                let shard = self.shard.index;
                // A full restore reserves its name while it builds.
                let new_id = || {
                    let id = cell.new_volume_id();
                    let kind = VolumeKind::ReadWrite;
                    let name = session.name.clone();
                    cell.vldb_mut().insert(id, Location { name, shard, kind });
                    id
                };
                let applied = session.apply(&mut self.shard, local, new_id, &cell.name);
                if applied.is_err() && local.is_none() {
                    let mut vldb = cell.vldb_mut();
                    if let Some(id) = vldb.by_name(&session.name) {
                        if self.shard.meta.volume(id).is_none() {
                            vldb.remove(id);
                        }
                    }
                }
                applied
            }
        };
        let (vol, commit) = match applied {
            Ok(Restored::Made(vol, commit)) => {
                let loc = Location {
                    name: session.name.clone(),
                    shard: self.shard.index,
                    kind: VolumeKind::ReadWrite,
                };
                self.cell.register(vol, loc);
                (vol, commit)
            }
            Ok(Restored::Applied(vol, commit, changed)) => {
                self.breaks(Some(id.conn), vol, &changed, out);
                (vol, commit)
            }
            Err(e) => {
                session.abandon(&self.shard.containers);
                return self.reply(id, ok(&refused(e)), None, out);
            }
        };
        let answer = self.info(vol).and_then(|i| ok(&RestoreReply::Done(i)));
        self.reply(id, answer, Some(commit), out);
    }

    /// Drops dumps and restores nobody carried on with.
    fn expire_sessions(&mut self) {
        fn idle<T>(map: &HashMap<u64, T>, touched: impl Fn(&T) -> Instant) -> Vec<u64> {
            let old = |t: &T| touched(t).elapsed() > SESSION_IDLE;
            map.iter()
                .filter(|(_, s)| old(s))
                .map(|(k, _)| *k)
                .collect()
        }
        for d in idle(&self.dumps, |s| s.touched) {
            self.end_dump(d);
        }
        for r in idle(&self.restores, |s| s.touched) {
            if let Some(s) = self.restores.remove(&r) {
                s.abandon(&self.shard.containers);
            }
        }
    }
}
