//! Dumps restored on the server (`volutil restore`). The stream is checked
//! as it arrives ([`coda_proto::dump::Parser`]); file data goes straight
//! into new containers, hashed on the way; metadata waits in memory. Only a
//! whole, valid dump changes anything: a full dump becomes a new volume
//! ([`Shard::build`]), an incremental one is applied in one transaction over
//! the volume that holds exactly its base. A refused dump leaves nothing.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;

use bytes::Bytes;
use coda_proto::dump::{DumpEntry, DumpError, DumpHeader, DumpVnode, DumpVolume, Parser, Record};
use coda_proto::fid::{Fid, VolumeId, DERIVED_VNODE_BASE, ROOT_VNODE};
use coda_proto::status::VnodeKind;
use coda_proto::vice::VolumeKind;
use rvm::{CommitId, Durability};

use crate::clone::Image;
use crate::container::Containers;
use crate::shard::Shard;
use crate::vnode::{EntryRecord, Vnode, VolumeHeader, NO_CONTAINER};
use crate::volume::Volume;

/// A file whose data is arriving.
#[derive(Debug)]
struct Filling {
    file: File,
    hasher: blake3::Hasher,
    written: u64,
    /// Where its vnode record began, for errors about it.
    at: u64,
}

/// A dump being received.
#[derive(Debug)]
pub struct RestoreSession {
    pub name: String,
    parser: Parser,
    header: Option<DumpHeader>,
    volume: Option<DumpVolume>,
    /// With the container its data went to, if it came.
    vnodes: Vec<(DumpVnode, u64)>,
    entries: Vec<DumpEntry>,
    removed: Vec<(u64, u64)>,
    filling: Option<Filling>,
    /// Containers made so far: removed if the dump is refused.
    pub made: Vec<u64>,
    pub touched: std::time::Instant,
}

/// What a restore did.
pub enum Restored {
    /// A new volume from a full dump.
    Made(VolumeId, CommitId),
    /// An incremental dump applied over a volume: the objects it changed.
    Applied(VolumeId, CommitId, Vec<Fid>),
}

impl RestoreSession {
    pub fn new(name: String) -> RestoreSession {
        RestoreSession {
            name,
            parser: Parser::new(),
            header: None,
            volume: None,
            vnodes: Vec::new(),
            entries: Vec::new(),
            removed: Vec::new(),
            filling: None,
            made: Vec::new(),
            touched: std::time::Instant::now(),
        }
    }

    pub fn header(&self) -> Option<&DumpHeader> {
        self.header.as_ref()
    }

    /// Bytes received so far.
    pub fn offset(&self) -> u64 {
        self.parser.offset()
    }

    /// Takes the next piece of the dump.
    pub fn feed(&mut self, containers: &mut Containers, bytes: &[u8]) -> Result<u64, DumpError> {
        self.touched = std::time::Instant::now();
        self.parser.feed(bytes);
        while let Some(record) = self.parser.next()? {
            let at = self.parser.record_offset();
            let io = |e: std::io::Error| DumpError::at(at, format!("server: {e}"));
            match record {
                Record::Header(h) => self.header = Some(h),
                Record::Volume(v) => self.volume = Some(v),
                Record::Vnode(v) => {
                    let mut container = NO_CONTAINER;
                    if v.data {
                        let (id, file) = containers.create().map_err(io)?;
                        self.made.push(id);
                        container = id;
                        self.filling = Some(Filling {
                            file,
                            hasher: blake3::Hasher::new(),
                            written: 0,
                            at,
                        });
                    }
                    self.vnodes.push((v, container));
                }
                Record::Data(d) => {
                    let f = self
                        .filling
                        .as_mut()
                        .expect("the parser checks data follows a file");
                    f.file.write_all_at(&d, f.written).map_err(io)?;
                    f.hasher.update(&d);
                    f.written += d.len() as u64;
                    let (v, _) = self.vnodes.last().expect("a file came first");
                    if f.written == v.length {
                        if *f.hasher.finalize().as_bytes() != v.content_hash {
                            return Err(DumpError::at(
                                f.at,
                                format!(
                                    "the data of object {}.{} does not match its hash",
                                    v.vnode, v.unique
                                ),
                            ));
                        }
                        self.filling = None;
                    }
                }
                Record::Entry(e) => self.entries.push(e),
                Record::Removed(r) => self.removed.push((r.vnode, r.unique)),
                Record::End(_) => {}
            }
        }
        Ok(self.parser.offset())
    }

    /// Checks the dump is whole.
    pub fn finish(&self) -> Result<(), DumpError> {
        self.parser.finish()
    }

    /// Removes what a refused dump left.
    pub fn abandon(self, containers: &Containers) {
        for c in self.made {
            containers.remove(c);
        }
    }

    fn refuse(&self, reason: impl Into<String>) -> DumpError {
        DumpError::at(self.parser.offset(), reason)
    }

    /// The volume the dump describes, as volume `id`; file data not in the
    /// dump comes from `old`, which must hold the same contents.
    fn image(&self, id: VolumeId, old: Option<&Volume>, cell: &str) -> Result<Image, DumpError> {
        let (Some(h), Some(dv)) = (&self.header, &self.volume) else {
            return Err(self.refuse("no dump header"));
        };
        let map = |volume: VolumeId, vnode: u64, unique: u64| Fid {
            volume: if volume == h.volume { id } else { volume },
            vnode,
            unique,
        };
        let mut kinds: HashMap<u64, (u64, VnodeKind)> = HashMap::new();
        let mut vnodes = Vec::with_capacity(self.vnodes.len());
        for (v, container) in &self.vnodes {
            let fid = map(h.volume, v.vnode, v.unique);
            if fid.is_local() {
                return Err(self.refuse(format!(
                    "object {:x} is numbered as a client makes up fids",
                    v.vnode
                )));
            }
            if kinds.insert(v.vnode, (v.unique, v.kind)).is_some() {
                return Err(self.refuse(format!("object {} appears twice", v.vnode)));
            }
            let mut container = *container;
            let mut inline = Bytes::new();
            if v.kind == VnodeKind::File && v.length > 0 && !v.data {
                let kept = old.and_then(|o| o.vnode(fid)).filter(|o| {
                    o.kind == VnodeKind::File
                        && o.content_hash == v.content_hash
                        && o.length == v.length
                });
                (container, inline) = match kept {
                    Some(o) => (o.container, o.inline.clone()),
                    None => {
                        return Err(self.refuse(format!(
                            "object {}.{} has no data here and the volume holds no copy of it: \
                             the dump is not based on what the volume holds",
                            v.vnode, v.unique
                        )))
                    }
                };
            }
            vnodes.push(Vnode {
                fid,
                kind: v.kind,
                mode: v.mode,
                owner: v.owner,
                group: v.group,
                author: v.author,
                link_count: v.link_count,
                length: if v.kind == VnodeKind::Directory {
                    0
                } else {
                    v.length
                },
                mtime: v.mtime,
                ctime: v.ctime,
                atime: v.atime,
                data_version: v.data_version,
                vv: v.vv.clone(),
                content_hash: v.content_hash,
                container,
                parent: map(h.volume, v.parent_vnode, v.parent_unique),
                acl: v.acl.clone().filter(|_| v.kind == VnodeKind::Directory),
                target: v.target.clone(),
                history: vec![v.vv.store_id],
                inline,
            });
        }
        match kinds.get(&ROOT_VNODE) {
            Some((_, VnodeKind::Directory)) => {}
            _ => return Err(self.refuse("the dump has no root directory")),
        }
        let mut names = HashSet::new();
        let mut entries = Vec::with_capacity(self.entries.len());
        for e in &self.entries {
            if kinds.get(&e.dir_vnode) != Some(&(e.dir_unique, VnodeKind::Directory)) {
                return Err(self.refuse(format!(
                    "entry {:?} is in {}.{}, which is not a directory of the dump",
                    e.name, e.dir_vnode, e.dir_unique
                )));
            }
            if e.volume == id && id != h.volume {
                return Err(self.refuse(format!(
                    "entry {:?} names the volume being restored as another volume",
                    e.name
                )));
            }
            let internal = e.volume == h.volume;
            if internal && kinds.get(&e.vnode).map(|k| k.0) != Some(e.unique) {
                return Err(self.refuse(format!(
                    "entry {:?} names object {}.{}, which the dump does not hold",
                    e.name, e.vnode, e.unique
                )));
            }
            if e.name.is_empty() || e.name.contains('/') || e.name == "." || e.name == ".." {
                return Err(self.refuse(format!("bad name {:?}", e.name)));
            }
            if !names.insert((e.dir_vnode, e.name.as_str())) {
                return Err(self.refuse(format!("name {:?} appears twice", e.name)));
            }
            entries.push(EntryRecord {
                dir: map(h.volume, e.dir_vnode, e.dir_unique),
                name: e.name.clone(),
                fid: map(e.volume, e.vnode, e.unique),
            });
        }
        self.check_tree(&kinds)?;
        for (vnode, unique) in &self.removed {
            if kinds.get(vnode).is_some_and(|k| k.0 == *unique) {
                return Err(
                    self.refuse(format!("object {vnode}.{unique} is both kept and removed"))
                );
            }
        }
        // Objects made in a replicated volume have derived fids, numbered
        // apart from the counters (which stay below them).
        let counted = kinds.iter().filter(|(&v, _)| v < DERIVED_VNODE_BASE);
        let max_vnode = counted.clone().map(|(&v, _)| v).max().unwrap_or(ROOT_VNODE);
        let max_unique = counted.map(|(_, k)| k.0).max().unwrap_or(ROOT_VNODE);
        let stamp = old.map_or(1, |o| o.header.stamp + 1);
        let header = VolumeHeader {
            id,
            name: self.name.clone(),
            kind: VolumeKind::ReadWrite,
            locked: old.is_some_and(|o| o.header.locked),
            replicas: vec![cell.to_string()],
            next_vnode: dv.next_vnode.max(max_vnode + 1).min(DERIVED_VNODE_BASE),
            next_unique: dv.next_unique.max(max_unique + 1).min(DERIVED_VNODE_BASE),
            stamp,
            created: dv.created,
            grants: Vec::new(),
            parent: 0,
            backup: old.map_or(0, |o| o.header.backup),
            transient: false,
            restored: Some((h.id, stamp)),
        };
        Ok(Image {
            header,
            vnodes,
            entries,
        })
    }

    /// Checks the dump's objects form one tree under the root: every
    /// object's parent is a directory of the dump that names it, every
    /// directory has one name and is reached from the root (so no cycle).
    fn check_tree(&self, kinds: &HashMap<u64, (u64, VnodeKind)>) -> Result<(), DumpError> {
        let h = self
            .header
            .as_ref()
            .ok_or_else(|| self.refuse("no dump header"))?;
        let mut names: HashMap<u64, Vec<u64>> = HashMap::new();
        let mut children: HashMap<u64, Vec<u64>> = HashMap::new();
        for e in self.entries.iter().filter(|e| e.volume == h.volume) {
            names.entry(e.vnode).or_default().push(e.dir_vnode);
            children.entry(e.dir_vnode).or_default().push(e.vnode);
        }
        for (v, _) in &self.vnodes {
            if v.vnode == ROOT_VNODE {
                if names.contains_key(&v.vnode) {
                    return Err(self.refuse("the root directory has a name"));
                }
                continue;
            }
            let parent_ok =
                kinds.get(&v.parent_vnode) == Some(&(v.parent_unique, VnodeKind::Directory));
            let named = names.get(&v.vnode).map_or(&[][..], |n| n.as_slice());
            let fits = match v.kind {
                VnodeKind::Directory => named == [v.parent_vnode],
                _ => !named.is_empty() && named.contains(&v.parent_vnode),
            };
            if !parent_ok || !fits {
                return Err(self.refuse(format!(
                    "object {}.{} is not named in its parent {}.{} as the tree needs",
                    v.vnode, v.unique, v.parent_vnode, v.parent_unique
                )));
            }
        }
        for (v, _) in &self.vnodes {
            let links = match v.kind {
                VnodeKind::Directory => {
                    let subdirs = children.get(&v.vnode).into_iter().flatten();
                    let is_dir =
                        |c: &&u64| kinds.get(c).is_some_and(|k| k.1 == VnodeKind::Directory);
                    2 + subdirs.filter(is_dir).count()
                }
                _ => names.get(&v.vnode).map_or(0, |n| n.len()),
            };
            if v.link_count as usize != links {
                return Err(self.refuse(format!(
                    "object {}.{} has link count {}, but the tree gives it {links}",
                    v.vnode, v.unique, v.link_count
                )));
            }
        }
        let mut reached = std::collections::HashSet::from([ROOT_VNODE]);
        let mut todo = vec![ROOT_VNODE];
        while let Some(d) = todo.pop() {
            for &c in children.get(&d).into_iter().flatten() {
                if kinds.get(&c).is_some_and(|k| k.1 == VnodeKind::Directory) && reached.insert(c) {
                    todo.push(c);
                }
            }
        }
        let dirs = kinds
            .values()
            .filter(|k| k.1 == VnodeKind::Directory)
            .count();
        if reached.len() != dirs {
            return Err(self.refuse("some directories are not reached from the root"));
        }
        Ok(())
    }

    /// Makes the dump's volume: new (`target` None) from a full dump, or
    /// over volume `target` from an incremental one.
    pub fn apply(
        &self,
        shard: &mut Shard,
        target: Option<VolumeId>,
        new_id: impl FnOnce() -> VolumeId,
        cell: &str,
    ) -> Result<Restored, DumpError> {
        let h = self
            .header
            .as_ref()
            .ok_or_else(|| self.refuse("no dump header"))?;
        let Some(target) = target else {
            if h.base.is_some() {
                return Err(self.refuse(format!(
                    "this is an incremental dump: restore a full dump as {} first",
                    self.name
                )));
            }
            let id = new_id();
            let image = self.image(id, None, cell)?;
            let commit = shard
                .build(image)
                .map_err(|e| self.refuse(format!("server: {e}")))?;
            return Ok(Restored::Made(id, commit));
        };
        let old = shard.meta.volume(target).expect("the caller found it");
        let Some(base) = h.base else {
            return Err(self.refuse(format!(
                "volume {} exists: a full dump restores only as a new volume",
                self.name
            )));
        };
        match old.header.restored {
            Some((dump, stamp)) if dump == base && stamp == old.header.stamp => {}
            Some((dump, stamp)) if dump == base => {
                return Err(self.refuse(format!(
                    "volume {} changed since dump {dump:016x} was restored (stamp {stamp}, now {}): \
                     this incremental dump no longer applies",
                    self.name, old.header.stamp
                )))
            }
            Some((dump, _)) => {
                return Err(self.refuse(format!(
                    "this incremental dump is based on dump {base:016x}, but volume {} holds dump {dump:016x}",
                    self.name
                )))
            }
            None => {
                return Err(self.refuse(format!(
                    "this incremental dump is based on dump {base:016x}, but volume {} was not restored from a dump",
                    self.name
                )))
            }
        }
        let image = self.image(target, Some(old), cell)?;
        let (changed, commit) = apply_over(shard, target, image)
            .map_err(|e| self.refuse(format!("server: applying the incremental dump: {e}")))?;
        Ok(Restored::Applied(target, commit, changed))
    }
}

/// Turns volume `id` into `image` in one transaction, writing only what
/// differs; returns the objects changed.
fn apply_over(
    shard: &mut Shard,
    id: VolumeId,
    image: Image,
) -> Result<(Vec<Fid>, CommitId), rvm::Error> {
    let old = shard.meta.volume(id).expect("the caller found it");
    let wanted: HashMap<(u64, &str), Fid> = image
        .entries
        .iter()
        .map(|e| ((e.dir.vnode, e.name.as_str()), e.fid))
        .collect();
    let mut stale_entries = Vec::new();
    for (&dir, names) in &old.dirs {
        let Some((_, d)) = old.vnodes.get(&dir) else {
            continue;
        };
        for (name, (_, fid)) in names {
            if wanted.get(&(dir, name.as_str())) != Some(fid) {
                stale_entries.push((d.fid, name.clone()));
            }
        }
    }
    let new_entries: Vec<&EntryRecord> = image
        .entries
        .iter()
        .filter(|e| old.lookup(e.dir, &e.name) != Some(e.fid))
        .collect();
    let kept: HashSet<u64> = image.vnodes.iter().map(|v| v.fid.vnode).collect();
    let gone: Vec<Fid> = old
        .vnodes()
        .filter(|v| !kept.contains(&v.fid.vnode))
        .map(|v| v.fid)
        .collect();
    let changed_vnodes: Vec<&Vnode> = image
        .vnodes
        .iter()
        .filter(|v| old.vnodes.get(&v.fid.vnode).map(|(_, o)| o) != Some(*v))
        .collect();
    let mut changed: Vec<Fid> = gone.clone();
    changed.extend(changed_vnodes.iter().map(|v| v.fid));
    changed.extend(stale_entries.iter().map(|(d, _)| *d));
    changed.extend(new_entries.iter().map(|e| e.dir));
    changed.sort();
    changed.dedup();
    let ((), commit) = shard.transact(Durability::NoFlush, |txn| {
        for (dir, name) in &stale_entries {
            txn.remove_entry(*dir, name)?;
        }
        for f in &gone {
            txn.remove_vnode(*f)?;
        }
        for v in &changed_vnodes {
            txn.put_vnode((*v).clone())?;
        }
        for e in &new_entries {
            txn.put_entry(e.dir, &e.name, e.fid)?;
        }
        txn.put_header(image.header.clone())
    })?;
    Ok((changed, commit))
}
