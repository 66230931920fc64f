//! `repair`: settling conflicts (see `conflict`), connected. The local
//! version is what the cache holds of the object (or its absence, when the
//! refused update removed it); the server's is what the server has at the
//! same place now.
//! - keep-server: the local version is dropped;
//! - keep-local: the local version goes to the server over the server's
//!   (stored against the server's current version, or made anew);
//! - keep-both: the server's version keeps the name and the local one is
//!   made beside it as `NAME.local` (`NAME.local.N` if taken).

use std::path::Path;

use coda_proto::cml::{self, Op};
use coda_proto::control::{ConflictDetail, ConflictLine, Resolution, Version};
use coda_proto::vice::{self, op, DirEntry};
use coda_proto::{Errno, Fid, Status, VnodeKind};
use coda_rpc2::codec;
use coda_rpc2::endpoint::SideEffect;
use coda_rpc2::Sink;
use rvm::Durability;

use crate::conflict::Conflict;
use crate::container;
use crate::core::{hash_file, Result, Venus};

/// The objects in conflict, with the paths they had.
pub fn list(v: &Venus, mount: &Path) -> Vec<ConflictLine> {
    v.cache
        .conflicts
        .values()
        .map(|(_, c)| line(v, mount, c))
        .collect()
}

fn line(v: &Venus, mount: &Path, c: &Conflict) -> ConflictLine {
    let path = match v.path_of(c.dir) {
        Some(dir) => mount.join(dir).join(&c.name),
        None => mount.join("?").join(&c.name),
    };
    ConflictLine {
        path: path.to_string_lossy().into_owned(),
        fid: c.fid,
        reason: Errno(c.code).to_string(),
        records: c.records.iter().map(|e| describe(&e.record.op)).collect(),
    }
}

/// One line for a record.
pub(crate) fn describe(op: &Op) -> String {
    match op {
        Op::Store(s) => format!("store {} bytes", s.length),
        Op::SetAttr(a) => {
            let mut parts = Vec::new();
            if let Some(m) = a.mode {
                parts.push(format!("mode {m:o}"));
            }
            if let Some(o) = a.owner {
                parts.push(format!("owner {o}"));
            }
            if let Some(g) = a.group {
                parts.push(format!("group {g}"));
            }
            if let Some(l) = a.length {
                parts.push(format!("length {l}"));
            }
            if a.mtime.is_some() || a.atime.is_some() {
                parts.push("times".into());
            }
            format!("setattr {}", parts.join(", "))
        }
        Op::Create(c) => format!("create {}", c.name),
        Op::Remove(r) => format!("remove {}", r.name),
        Op::Link(l) => format!("link {}", l.name),
        Op::Rename(r) => format!("rename {} to {}", r.from_name, r.to_name),
        Op::MakeDir(m) => format!("mkdir {}", m.name),
        Op::RemoveDir(r) => format!("rmdir {}", r.name),
        Op::SymLink(s) => format!("symlink {} -> {}", s.name, s.target),
        Op::SetAcl(_) => "setacl".into(),
    }
}

/// The conflict a path names: the object there, or the one that was there
/// here (a name the server's version took meanwhile).
pub fn find(v: &mut Venus, uid: u32, rel: &Path) -> Result<Fid> {
    if let Ok(fid) = v.resolve(uid, rel) {
        if v.cache.conflicts.contains_key(&fid) || v.diverged.contains(&fid) {
            return Ok(fid);
        }
    }
    let name = rel
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or(Errno::ENOENT)?;
    let dir = v.resolve(uid, rel.parent().unwrap_or(Path::new("")))?;
    v.cache
        .conflicts
        .values()
        .find(|(_, c)| c.dir == dir && c.name == name)
        .map(|(_, c)| c.fid)
        .ok_or(Errno::ENOENT)
}

/// Whether the refused update removed the object here.
fn removed_here(c: &Conflict) -> bool {
    c.records.first().is_some_and(|e| {
        matches!(&e.record.op, Op::Remove(r) if r.fid == c.fid)
            || matches!(&e.record.op, Op::RemoveDir(r) if r.fid == c.fid)
    })
}

/// A directory's entries as the server has them now (the cache's may be
/// the log's).
fn server_listing(v: &mut Venus, uid: u32, dir: Fid) -> Result<Vec<DirEntry>> {
    let req = codec::to_bytes(&vice::Fetch {
        fid: dir,
        offset: 0,
    });
    let (_, reply) = v.call_retry::<Status>(uid, dir.volume, op::FETCH, req, |_| {
        Ok(Some(SideEffect::Receive(Sink::memory(1 << 30))))
    })?;
    let bytes = reply.sink.map(Sink::into_bytes).unwrap_or_default();
    codec::from_bytes(&bytes).map_err(|_| Errno::EIO)
}

/// What the server has where the conflict is: the object itself, or what
/// holds its name now.
fn server_version(v: &mut Venus, uid: u32, c: &Conflict) -> Result<Option<Status>> {
    let fid = if c.fid.is_local() || removed_here(c) {
        match server_listing(v, uid, c.dir)?
            .into_iter()
            .find(|e| e.name == c.name)
        {
            Some(e) => e.fid,
            None => return Ok(None),
        }
    } else {
        c.fid
    };
    let req = codec::to_bytes(&vice::GetAttr { fid });
    match v.call_retry::<Status>(uid, fid.volume, op::GET_ATTR, req, |_| Ok(None)) {
        Ok((s, _)) => Ok(Some(s)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub(crate) fn version(s: Option<&Status>, hash: Option<[u8; 32]>) -> Version {
    match s {
        None => Version {
            exists: false,
            kind: String::new(),
            length: 0,
            mtime: 0,
            mode: 0,
            hash: String::new(),
        },
        Some(s) => Version {
            exists: true,
            kind: match s.kind {
                VnodeKind::File => "file",
                VnodeKind::Directory => "directory",
                VnodeKind::Symlink => "symlink",
            }
            .into(),
            length: s.length,
            mtime: s.mtime.secs,
            mode: s.mode,
            hash: hex(&hash.unwrap_or(s.content_hash)),
        },
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The local version's status and contents hash.
fn local_version(v: &Venus, c: &Conflict) -> (Option<Status>, Option<[u8; 32]>) {
    if removed_here(c) {
        return (None, None);
    }
    let Some(o) = v.cache.objs.get(&c.fid) else {
        return (None, None);
    };
    let hash = (o.rec.container != container::NONE)
        .then(|| v.cache.containers.open_rw(o.rec.container).ok())
        .flatten()
        .and_then(|f| {
            let len = f.metadata().ok()?.len();
            hash_file(&f, len).ok()
        });
    (o.rec.status.clone(), hash)
}

/// `repair show`: both versions of an object in conflict.
pub fn show(v: &mut Venus, uid: u32, mount: &Path, fid: Fid) -> Result<ConflictDetail> {
    let c = v.cache.conflicts.get(&fid).ok_or(Errno::ENOENT)?.1.clone();
    let (local, hash) = local_version(v, &c);
    let server = server_version(v, uid, &c)?;
    Ok(ConflictDetail {
        conflict: line(v, mount, &c),
        local: version(local.as_ref(), hash),
        server: version(server.as_ref(), None),
        replicas: Vec::new(),
    })
}

/// Settles a conflict; what was done, a line each.
pub fn settle(v: &mut Venus, uid: u32, fid: Fid, how: Resolution) -> Result<Vec<String>> {
    let c = v.cache.conflicts.get(&fid).ok_or(Errno::ENOENT)?.1.clone();
    if v.disconnected(fid.volume) {
        return Err(Errno::ETIMEDOUT);
    }
    let (local, _) = local_version(v, &c);
    let server = server_version(v, uid, &c)?;
    let mut done = Vec::new();
    let keep_local_copy = match how {
        Resolution::KeepServer(()) => None,
        Resolution::KeepLocal(()) => Some(c.name.clone()),
        Resolution::KeepBoth(()) => {
            let taken: Vec<String> = server_listing(v, uid, c.dir)?
                .into_iter()
                .map(|e| e.name)
                .collect();
            // The name, shortened where the suffix would make it too long.
            let beside = |n: u32| {
                let suffix = if n == 1 {
                    ".local".to_string()
                } else {
                    format!(".local.{n}")
                };
                let mut base = c.name.clone();
                while base.len() + suffix.len() > vice::NAME_BYTES_MAX {
                    base.pop();
                }
                base + &suffix
            };
            let mut n = 1;
            while taken.contains(&beside(n)) {
                n += 1;
            }
            Some(beside(n))
        }
    };
    // The local contents, read before the local version is let go.
    let data = match (&local, keep_local_copy.is_some()) {
        (Some(s), true) if s.kind == VnodeKind::File => {
            let o = &v.cache.objs[&fid];
            let f = v
                .cache
                .containers
                .open_rw(o.rec.container)
                .map_err(|_| Errno::EIO)?;
            Some(f)
        }
        (Some(s), true) if s.kind == VnodeKind::Directory => return Err(Errno::EISDIR),
        _ => None,
    };
    let target = v.cache.objs.get(&fid).map(|o| o.rec.target.clone());
    let same_object = server.as_ref().is_some_and(|s| s.fid == fid);
    let in_place = matches!(how, Resolution::KeepLocal(())) && same_object && local.is_some();
    // The local version is let go only once what keeps it is on the
    // server: a failure on the way leaves the conflict as it was.
    match (&local, keep_local_copy) {
        (_, None) => done.push(format!("{}: the server's version kept", c.name)),
        (None, Some(_)) => {
            // The local version is the object's removal.
            if let (Some(s), Resolution::KeepLocal(())) = (&server, how) {
                let op = if s.kind == VnodeKind::Directory {
                    Op::RemoveDir(cml::RemoveDir {
                        dir: c.dir,
                        name: c.name.clone(),
                        fid: s.fid,
                    })
                } else {
                    Op::Remove(cml::Remove {
                        dir: c.dir,
                        name: c.name.clone(),
                        fid: s.fid,
                        seen: s.vv.store_id,
                    })
                };
                crate::cml::mutate(v, uid, op)?;
                done.push(format!("{}: removed, as it was here", c.name));
            } else {
                done.push(format!("{}: the server's version kept", c.name));
            }
        }
        (Some(l), Some(name)) => {
            let onto = if in_place {
                // The same object: the local contents over the server's.
                let s = server.clone().expect("same object");
                let key = v.rights_key_of(uid);
                v.take_status(fid, s, key)?;
                fid
            } else {
                if name == c.name {
                    if let Some(s) = &server {
                        crate::cml::mutate(
                            v,
                            uid,
                            Op::Remove(cml::Remove {
                                dir: c.dir,
                                name: c.name.clone(),
                                fid: s.fid,
                                seen: s.vv.store_id,
                            }),
                        )?;
                    }
                }
                make(v, uid, c.dir, &name, l, target.as_deref())?
            };
            if let Some(from) = data {
                let o = &v.cache.objs[&onto];
                let s = o.rec.status.clone().ok_or(Errno::EIO)?;
                let f = v
                    .cache
                    .containers
                    .open_rw(o.rec.container)
                    .map_err(|_| Errno::EIO)?;
                if onto != fid {
                    std::io::copy(&mut &from, &mut &f).map_err(crate::core::io_errno)?;
                }
                let base = crate::cml::Base::of(&s);
                crate::cml::store(v, uid, onto, &f, l.mtime, &base)?;
            }
            done.push(format!("{name}: the local version"));
            if name != c.name {
                done.push(format!("{}: the server's version", c.name));
            }
        }
    }
    forget_local(v, c.fid, c.dir, !in_place)?;
    v.emit(
        "conflict",
        format!("{}: repaired ({})", c.name, done.join("; ")),
    );
    Ok(done)
}

/// Makes a version (`l`) anew under `name` in `dir`, empty.
pub(crate) fn make(
    v: &mut Venus,
    uid: u32,
    dir: Fid,
    name: &str,
    l: &Status,
    target: Option<&str>,
) -> Result<Fid> {
    let fid = v.local_fid(dir.volume);
    let op = match l.kind {
        VnodeKind::Symlink => Op::SymLink(cml::SymLink {
            dir,
            name: name.into(),
            fid,
            target: target.unwrap_or_default().into(),
            mode: 0o777,
            group: l.group,
        }),
        _ => Op::Create(cml::Create {
            dir,
            name: name.into(),
            fid,
            mode: l.mode & 0o7777,
            group: l.group,
        }),
    };
    let made = crate::cml::mutate(v, uid, op)?.ok_or(Errno::EIO)?;
    if l.kind == VnodeKind::File {
        v.empty_container(made)?;
    }
    Ok(made)
}

/// Lets the local version go: the conflict record (if any), and the
/// object's cached state (refetched from the server on next use).
/// Without `drop`, the object stays as it is (its contents went to the
/// server over the server's).
pub(crate) fn forget_local(v: &mut Venus, fid: Fid, dir: Fid, drop: bool) -> Result<()> {
    let opens = v.cache.objs.get(&fid).map_or(0, |o| o.opens);
    v.cache.update(Durability::Written, |t| {
        t.remove_conflict(fid)?;
        if drop && fid.is_local() && opens == 0 {
            t.drop_obj(fid)?;
        } else if let Some(o) = t.objs.get_mut(&fid).filter(|_| drop) {
            o.valid = false;
            o.rec.data = None;
            if opens == 0 {
                let id = std::mem::replace(&mut o.rec.container, container::NONE);
                t.drop_container(id);
            }
            t.save(fid)?;
        }
        // The directory's names are asked for again.
        if let Some(d) = t.objs.get_mut(&dir) {
            d.valid = false;
            d.rec.data = None;
            t.save(dir)?;
        }
        Ok(())
    })?;
    v.kernel_forget(&[dir, fid]);
    Ok(())
}
