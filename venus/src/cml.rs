//! The one write path: every update is a CML record. Strongly connected,
//! a record is shipped to its volume's server before the call returns and,
//! once the server applied it, the same change is made to the cache.
//! Disconnected (or while a volume's log is not empty) the record is made
//! locally instead and appended to the log (`emulate`), to be reintegrated
//! later (`reint`): the records and their effects are the same.

use std::fs::File;

use coda_proto::cml::{self, CmlRecord, Op, Store};
use coda_proto::vice::{direct_opcode, MutateReply};
use coda_proto::{Errno, Fid, Status, StoreId, Timestamp, VnodeKind};
use coda_rpc2::endpoint::SideEffect;
use coda_rpc2::Source;
use coda_rpc2::{codec, codec_struct};

use crate::core::{hash_file, Result, Venus};

codec_struct! {
    /// One record of the persistent CML: the update, in log order, and the
    /// local user it is reintegrated for.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LogEntry {
        pub seq: u64,
        pub uid: u32,
        pub record: CmlRecord,
        /// The version each object the record changed had before it: a
        /// record cancelled later hands these back to the records after it.
        pub before: Vec<(Fid, StoreId)>,
        /// On the last record of a batch sent and not yet answered: the
        /// batch's id. The records up to it are frozen until the answer.
        pub ends_batch: Option<StoreId>,
    }
}

/// Makes `op` a record, ships it (or logs it), and applies it to the
/// cache. Returns the fid of an object it created (a local one if logged).
pub fn mutate(v: &mut Venus, uid: u32, op: Op) -> Result<Option<Fid>> {
    let record = CmlRecord {
        store_id: v.store_id(),
        time: Timestamp::now(),
        op,
    };
    let vol = record.op.volume();
    v.writable(vol)?;
    if !v.logging(vol) {
        match ship(v, uid, &record, None) {
            Ok(statuses) => return apply(v, uid, &record, statuses),
            // The server went away (or kept forgetting the connection):
            // the update is logged instead, and the program never hears of
            // it. Sent again later, the server knows it by its store id if
            // it did apply it.
            Err(Errno::ETIMEDOUT) if v.disconnected(vol) => {}
            Err(Errno::EAGAIN) => {}
            Err(e) => return Err(e),
        }
    }
    crate::emulate::log(v, uid, record)
}

/// What a container held when it was last the server's version: a store
/// from it names that version, so one made on top of another client's is a
/// conflict the server finds, and an unchanged one is not sent at all.
#[derive(Debug, Clone)]
pub struct Base {
    pub seen: StoreId,
    pub length: u64,
    pub hash: [u8; 32],
    pub mtime: Timestamp,
}

impl Base {
    /// The version a cached object's status describes.
    pub fn of(status: &Status) -> Base {
        Base {
            seen: status.vv.store_id,
            length: status.length,
            hash: status.content_hash,
            mtime: status.mtime,
        }
    }
}

/// Stores a file's new contents from its container (on close), unless they
/// are what `base` has; returns the new base if it stored.
pub fn store(
    v: &mut Venus,
    uid: u32,
    fid: Fid,
    file: &File,
    mtime: Timestamp,
    base: &Base,
) -> Result<Option<Base>> {
    v.writable(fid.volume)?;
    let length = file.metadata().map_err(|_| Errno::EIO)?.len();
    let hash = hash_file(file, length).map_err(|_| Errno::EIO)?;
    if base.length == length && base.hash == hash && base.mtime == mtime {
        return Ok(None);
    }
    let record = CmlRecord {
        store_id: v.store_id(),
        time: mtime,
        op: Op::Store(Store {
            fid,
            seen: base.seen,
            length,
            content_hash: hash,
        }),
    };
    let vol = fid.volume;
    let mut logged = v.logging(vol);
    if !logged {
        match ship(v, uid, &record, Some(file)) {
            Ok(statuses) => {
                apply(v, uid, &record, statuses)?;
            }
            Err(Errno::ETIMEDOUT) if v.disconnected(vol) => logged = true,
            Err(Errno::EAGAIN) => logged = true,
            Err(e) => return Err(e),
        }
    }
    if logged {
        crate::emulate::log(v, uid, record.clone())?;
    }
    Ok(Some(Base {
        seen: record.store_id,
        length,
        hash,
        mtime,
    }))
}

/// Sends one record by its direct call; the statuses of what it touched.
fn ship(v: &mut Venus, uid: u32, record: &CmlRecord, data: Option<&File>) -> Result<Vec<Status>> {
    let body = codec::to_bytes(record);
    let (reply, _): (MutateReply, _) = v.call_update(
        uid,
        record.op.volume(),
        direct_opcode(&record.op),
        body,
        record.store_id,
        |_| {
            Ok(match data {
                Some(f) => Some(SideEffect::Send(Source::File {
                    file: f.try_clone().map_err(|_| Errno::EIO)?,
                    len: f.metadata().map_err(|_| Errno::EIO)?.len(),
                })),
                None => None,
            })
        },
    )?;
    Ok(reply.statuses)
}

/// Makes in the cache the change the server made.
fn apply(
    v: &mut Venus,
    uid: u32,
    record: &CmlRecord,
    statuses: Vec<Status>,
) -> Result<Option<Fid>> {
    let key = v.rights_key_of(uid);
    // Directories whose cached entries were current stay current: the
    // same change is made to them here.
    let current: Vec<Fid> = record
        .op
        .fids()
        .into_iter()
        .filter(|f| v.cache.objs.get(f).is_some_and(|o| o.has_data()))
        .collect();
    let touched: Vec<Fid> = statuses.iter().map(|s| s.fid).collect();
    for s in statuses {
        v.take_status(s.fid, s, key)?;
    }
    let made = |dir: Fid| touched.iter().copied().find(|f| *f != dir);
    // An object the record unbound: gone, or kept while open.
    let gone = |v: &mut Venus, fid: Fid| -> Result<()> {
        let Some(o) = v.cache.objs.get_mut(&fid) else {
            return Ok(());
        };
        // A directory's count includes its own "." and its children's "..".
        let links = match o.rec.status.as_ref() {
            Some(s) if s.kind != VnodeKind::Directory => s.link_count,
            _ => 0,
        };
        if touched.contains(&fid) || links > 1 {
            // Another name still holds it: refreshed below.
            return Ok(());
        }
        if o.opens > 0 {
            o.orphan = true;
            return Ok(());
        }
        Ok(v.cache.drop_obj(fid)?)
    };
    let mut created = None;
    match &record.op {
        Op::Create(c) => created = made(c.dir),
        Op::MakeDir(c) => created = made(c.dir),
        Op::SymLink(c) => created = made(c.dir),
        _ => {}
    }
    match &record.op {
        Op::Create(cml::Create { dir, name, .. })
        | Op::MakeDir(cml::MakeDir { dir, name, .. })
        | Op::SymLink(cml::SymLink { dir, name, .. }) => {
            if let Some(f) = created {
                v.cache.add_entry(*dir, name, f)?;
            }
        }
        Op::Link(l) => v.cache.add_entry(l.dir, &l.name, l.fid)?,
        Op::Remove(r) => {
            v.cache.remove_entry(r.dir, &r.name)?;
            gone(v, r.fid)?;
        }
        Op::RemoveDir(r) => {
            v.cache.remove_entry(r.dir, &r.name)?;
            gone(v, r.fid)?;
        }
        Op::Rename(r) => {
            v.cache.remove_entry(r.from_dir, &r.from_name)?;
            v.cache.add_entry(r.to_dir, &r.to_name, r.fid)?;
            if let Some(old) = r.replaced {
                gone(v, old)?;
            }
        }
        Op::SetAttr(a) => {
            // The server cut or extended its copy; the cached one follows.
            if let (Some(len), true) = (a.length, current.contains(&a.fid)) {
                let o = &v.cache.objs[&a.fid];
                if o.rec.kind == VnodeKind::File {
                    let f = v
                        .cache
                        .containers
                        .open_rw(o.rec.container)
                        .map_err(|_| Errno::EIO)?;
                    f.set_len(len).map_err(|_| Errno::EIO)?;
                }
            }
        }
        Op::Store(_) | Op::SetAcl(_) => {}
    }
    // Every object the record touched now has a new version. Cached data
    // that was current still is (the same change was made to it here, or
    // the change left the data alone): a later store from an open file
    // must name the new version, or the server sees a conflict.
    for fid in record.op.fids() {
        let Some(o) = v.cache.objs.get(&fid) else {
            continue;
        };
        if o.orphan || fid.is_local() {
            continue;
        }
        if !touched.contains(&fid) {
            v.refresh(uid, fid)?;
        }
        if current.contains(&fid) || matches!(record.op, Op::Store(_)) {
            let o = v.cache.objs.get_mut(&fid).expect("still cached");
            o.rec.data = o.rec.status.as_ref().map(|s| s.vv.store_id);
            v.cache.save(fid)?;
            v.rebase(fid);
        }
    }
    v.untrust(record.op.volume());
    Ok(created)
}
