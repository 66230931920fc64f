//! Conflicts: a logged update the server refused (another client changed
//! the object first, or took the name). The record, and every later one
//! naming the same object, leave the log and wait beside it with the
//! object's local version, which stays cached; programs get EIO on the
//! object until `repair` settles it (keep the local version, the
//! server's, or both under two names). Nothing is lost either way.

use coda_proto::cml::Op;
use coda_proto::{Errno, Fid, VolumeId};
use coda_rpc2::codec_struct;
use rvm::Durability;

use crate::cml::LogEntry;
use crate::core::{Result, Venus};

codec_struct! {
    /// An object in conflict, persistent: what the server refused, and
    /// where the object was.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Conflict {
        pub fid: Fid,
        /// The directory and name it had here.
        pub dir: Fid,
        pub name: String,
        /// What the server answered.
        pub code: u16,
        /// The refused record and the later ones naming the object.
        pub records: Vec<LogEntry>,
    }
}

/// The object a refused record is about.
fn subject(op: &Op) -> Fid {
    match op {
        Op::Store(r) => r.fid,
        Op::SetAttr(r) => r.fid,
        Op::Create(r) => r.fid,
        Op::Remove(r) => r.fid,
        Op::Link(r) => r.fid,
        Op::Rename(r) => r.fid,
        Op::MakeDir(r) => r.fid,
        Op::RemoveDir(r) => r.fid,
        Op::SymLink(r) => r.fid,
        Op::SetAcl(r) => r.dir,
    }
}

/// The server refused `failed` (of the batch `batch`, none of which was
/// applied): its object goes into conflict with the records about it, and
/// the rest of the log goes on.
pub fn record_failed(
    v: &mut Venus,
    vol: VolumeId,
    batch: &[LogEntry],
    failed: LogEntry,
    code: Errno,
) -> Result<()> {
    let fid = subject(&failed.record.op);
    let (dir, name) = v.name_of(fid).unwrap_or((fid, String::new()));
    let records: Vec<LogEntry> = v
        .cache
        .cml
        .values()
        .map(|(_, e)| e)
        .filter(|e| e.record.op.volume() == vol && e.seq >= failed.seq)
        .filter(|e| e.record.op.fids().contains(&fid))
        .cloned()
        .collect();
    let c = Conflict {
        fid,
        dir,
        name,
        code: code.0,
        records,
    };
    // The batch is not in flight any more; it is made again without them.
    let unfreeze: Vec<LogEntry> = batch
        .iter()
        .filter(|e| e.ends_batch.is_some())
        .map(|e| LogEntry {
            ends_batch: None,
            ..e.clone()
        })
        .collect();
    v.cache.update(Durability::Written, |t| {
        for e in &c.records {
            t.remove_cml(e.seq)?;
        }
        for e in unfreeze {
            if t.cml.contains_key(&e.seq) {
                t.put_cml(e)?;
            }
        }
        t.put_conflict(c.clone())
    })?;
    v.cml.rebuild(&v.cache.cml);
    v.emit(
        "conflict",
        format!(
            "{} ({fid}): the server refused a logged update: {code}; see repair list",
            c.name
        ),
    );
    Ok(())
}
