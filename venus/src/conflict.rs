//! Conflicts: a logged update the server refused (another client changed
//! the object first, or took the name). The record, and every later one
//! naming the same object, leave the log and wait beside it with the
//! object's local version, which stays cached; programs get EIO on the
//! object until `repair` settles it (keep the local version, the
//! server's, or both under two names). Nothing is lost either way.

use coda_proto::cml::Op;
use coda_proto::vice::{self, op};
use coda_proto::{Errno, Fid, Status, VolumeId};
use coda_rpc2::{codec, codec_struct};
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
    if same_contents(v, vol, &failed)? {
        return Ok(());
    }
    let (dir, name) = v.name_of(fid).unwrap_or((fid, String::new()));
    // The records about it, and about whatever they made (a directory's
    // new contents go with it).
    let mut about = std::collections::HashSet::from([fid]);
    let mut records: Vec<LogEntry> = Vec::new();
    for (_, e) in v.cache.cml.values() {
        if e.record.op.volume() != vol || e.seq < failed.seq {
            continue;
        }
        if e.record.op.fids().iter().any(|f| about.contains(f)) {
            if let Op::Create(c) = &e.record.op {
                about.insert(c.fid);
            }
            if let Op::MakeDir(c) = &e.record.op {
                about.insert(c.fid);
            }
            if let Op::SymLink(c) = &e.record.op {
                about.insert(c.fid);
            }
            records.push(e.clone());
        }
    }
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
    if let Some(how) = policy_for(v, &c) {
        // An unattended machine: its configuration settles it.
        match crate::repair::settle(v, failed.uid, fid, how) {
            Ok(done) => tracing::info!("{}: settled by policy: {}", c.name, done.join("; ")),
            Err(e) => tracing::warn!("{}: the conflict policy could not settle it: {e}", c.name),
        }
    }
    Ok(())
}

/// A conflict policy (`venus --conflict-policy`): conflicts under a path
/// below the mount (or in a volume) settled without a person.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `volume:NAME`, or a path below the mount ("" for all of it).
    pub scope: String,
    pub resolution: coda_proto::control::Resolution,
}

impl std::str::FromStr for Policy {
    type Err = String;

    /// `SCOPE=server-wins|client-wins|keep-both`.
    fn from_str(s: &str) -> std::result::Result<Policy, String> {
        use coda_proto::control::Resolution::*;
        let (scope, how) = s
            .rsplit_once('=')
            .ok_or_else(|| format!("{s:?}: want PATH=POLICY or volume:NAME=POLICY"))?;
        let resolution = match how {
            "server-wins" => KeepServer(()),
            "client-wins" => KeepLocal(()),
            "keep-both" => KeepBoth(()),
            _ => {
                return Err(format!(
                    "{how:?}: policies are server-wins, client-wins, keep-both"
                ))
            }
        };
        Ok(Policy {
            scope: scope.trim_matches('/').to_string(),
            resolution,
        })
    }
}

/// The policy that covers a conflict: the most specific one.
fn policy_for(v: &Venus, c: &Conflict) -> Option<coda_proto::control::Resolution> {
    let path = v.path_of(c.dir).map(|d| d.join(&c.name));
    let volume = v.cached_volume(c.fid.volume).map(|i| i.name);
    v.policies
        .iter()
        .filter(|p| match p.scope.strip_prefix("volume:") {
            Some(name) => volume.as_deref() == Some(name),
            None => path
                .as_ref()
                .is_some_and(|path| p.scope.is_empty() || path.starts_with(&p.scope)),
        })
        .max_by_key(|p| p.scope.len())
        .map(|p| p.resolution)
}

/// A refused store of contents the server has already (both clients made
/// the same change): no conflict. The record goes, and the server's version
/// is the cache's, as the records after it now say.
fn same_contents(v: &mut Venus, vol: VolumeId, failed: &LogEntry) -> Result<bool> {
    let Op::Store(s) = &failed.record.op else {
        return Ok(false);
    };
    let req = codec::to_bytes(&vice::GetAttr { fid: s.fid });
    let server: Status = match v.call_retry(failed.uid, vol, op::GET_ATTR, req, |_| Ok(None)) {
        Ok((status, _)) => status,
        Err(_) => return Ok(false),
    };
    if server.length != s.length || server.content_hash != s.content_hash {
        return Ok(false);
    }
    let (fid, sid, prev) = (s.fid, failed.record.store_id, server.vv.store_id);
    let later: Vec<LogEntry> = v
        .cache
        .cml
        .values()
        .map(|(_, e)| e)
        .filter(|e| e.seq > failed.seq && e.record.op.fids().contains(&fid))
        .cloned()
        .map(|mut e| {
            crate::emulate::hand_back(&mut e, fid, sid, prev);
            e
        })
        .collect();
    let key = v.rights_key_of(failed.uid);
    let superseded = v
        .cache
        .objs
        .get(&fid)
        .and_then(|o| o.rec.status.as_ref())
        .is_some_and(|st| st.vv.store_id == sid);
    v.cache.update(Durability::Written, |t| {
        t.remove_cml(failed.seq)?;
        for e in later {
            t.put_cml(e)?;
        }
        if superseded {
            // Nothing later changed it here: the server's status is ours.
            let o = t.obj_or_new(fid, server.kind, false);
            o.rec.data = Some(prev);
            o.take_status(server.clone(), key);
            t.save(fid)?;
        }
        Ok(())
    })?;
    v.cml.rebuild(&v.cache.cml);
    v.emit(
        "conflict",
        format!("{fid}: the same contents on both sides; resolved by itself"),
    );
    Ok(true)
}
