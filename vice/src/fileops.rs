//! The semantics of every update, as one CML record applied in a [`Txn`]:
//! rights, POSIX rules and the version checks that find conflicts. The
//! same code serves a connected call (one record) and a reintegrated batch
//! (many records, with fids a client made up while disconnected remapped
//! to real ones).
//!
//! Files are checked against the store id their client last saw; directory
//! operations per name (an insert needs the name free, a remove needs it
//! still bound to the object the client saw), so updates to distinct names
//! in one directory never conflict.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;

use bytes::Bytes;

use coda_proto::acl::{Acl, PrincipalId, Rights, ANY_USER};
use coda_proto::cml::{self, CmlRecord, Op};
use coda_proto::fid::{Fid, StoreId, VolumeId, ROOT_VNODE};
use coda_proto::res::Tombstone;
use coda_proto::status::{Status, Timestamp, VnodeKind};
use coda_proto::vice::{Applied, FidRemap, VolumeKind, NAME_BYTES_MAX};
use coda_proto::vv::VersionVector;
use coda_proto::Errno;

use crate::container::Containers;
use crate::shard::Txn;
use crate::vnode::{Vnode, VolumeHeader, EMPTY_HASH, IN_VNODE_MAX, NO_CONTAINER};
use crate::volume::Volume;

/// Longest symlink target.
pub const TARGET_BYTES_MAX: usize = 4095;
/// Most entries in one ACL (positive and negative together).
pub const ACL_ENTRIES_MAX: usize = 1024;

/// Who is asking: a user's protection domain.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user; 0 for an anonymous connection.
    pub user: PrincipalId,
    pub cps: Vec<PrincipalId>,
    pub admin: bool,
}

impl Caller {
    /// Another server of the cell (resolution): reads and installs anything.
    pub fn is_server(&self) -> bool {
        self.user == crate::replica::SERVER_ID
    }

    pub fn anonymous() -> Caller {
        Caller {
            user: 0,
            cps: vec![ANY_USER],
            admin: false,
        }
    }
}

/// New file content, already in a synced container.
#[derive(Debug, Clone)]
pub struct NewData {
    pub container: u64,
    /// A small file's bytes, kept in its vnode (no container then).
    pub inline: Bytes,
    pub length: u64,
    pub hash: [u8; 32],
}

/// The rights `caller` has on the directory `dir`.
pub fn dir_rights(dir: &Vnode, caller: &Caller) -> Rights {
    let acl_rights = dir
        .acl
        .as_ref()
        .map_or(Rights::NONE, |a| a.rights_for(&caller.cps));
    if caller.admin {
        // Administrators can always repair an ACL they locked themselves out of.
        acl_rights.union(Rights::LOOKUP).union(Rights::ADMINISTER)
    } else {
        acl_rights
    }
}

/// The directory whose ACL governs `v`: itself, or its parent.
pub fn governing<'v>(vol: &'v Volume, v: &'v Vnode) -> &'v Vnode {
    if v.is_dir() {
        v
    } else {
        vol.vnode(v.parent).unwrap_or(v)
    }
}

pub fn rights_on(vol: &Volume, v: &Vnode, caller: &Caller) -> Rights {
    dir_rights(governing(vol, v), caller)
}

/// `v`'s status block as `caller` sees it.
pub fn status(vol: &Volume, v: &Vnode, caller: &Caller, promised: bool) -> Status {
    let dir = governing(vol, v);
    let any = dir
        .acl
        .as_ref()
        .map_or(Rights::NONE, |a| a.rights_for(&[ANY_USER]));
    v.status(dir_rights(dir, caller), any, promised)
}

/// Whether `caller` may read `v`'s data (or list it, for a directory).
pub fn may_read(vol: &Volume, v: &Vnode, caller: &Caller) -> Result<(), Errno> {
    let r = rights_on(vol, v, caller);
    let ok = match v.kind {
        VnodeKind::Directory => r.contains(Rights::LOOKUP),
        _ => {
            r.contains(Rights::READ)
                && (v.mode & 0o400 != 0 || v.owner as PrincipalId == caller.user || caller.admin)
        }
    };
    ok.then_some(()).ok_or(Errno::EACCES)
}

/// Whether `caller` may change `v`'s data or attributes: `w` on the
/// governing directory, and the owner write bit unless the caller owns it.
pub fn may_write(vol: &Volume, v: &Vnode, caller: &Caller) -> Result<(), Errno> {
    if !rights_on(vol, v, caller).contains(Rights::WRITE) {
        return Err(Errno::EACCES);
    }
    let owner = v.owner as PrincipalId == caller.user || caller.admin;
    if v.kind == VnodeKind::File && v.mode & 0o200 == 0 && !owner {
        return Err(Errno::EACCES);
    }
    Ok(())
}

/// Whether `caller` may see `v`'s status.
pub fn may_stat(vol: &Volume, v: &Vnode, caller: &Caller) -> Result<(), Errno> {
    let r = rights_on(vol, v, caller);
    (r.contains(Rights::LOOKUP) || r.contains(Rights::READ))
        .then_some(())
        .ok_or(Errno::EACCES)
}

pub fn check_name(name: &str) -> Result<(), Errno> {
    if name.len() > NAME_BYTES_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    if name.is_empty() || name == "." || name == ".." || name.contains('/') || name.contains('\0') {
        return Err(Errno::EINVAL);
    }
    Ok(())
}

fn storage(e: rvm::Error) -> Errno {
    match e {
        rvm::Error::HeapExhausted { .. } => Errno::ENOSPC,
        rvm::Error::TooLarge { .. } => Errno::EFBIG,
        e => {
            tracing::error!("metadata update failed: {e}");
            Errno::EIO
        }
    }
}

fn io_error(e: std::io::Error) -> Errno {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        Errno::ENOSPC
    } else {
        tracing::error!("container I/O failed: {e}");
        Errno::EIO
    }
}

/// Applies records to one volume inside one transaction.
pub struct Apply<'t, 'a> {
    pub txn: &'t mut Txn<'a>,
    pub containers: &'t mut Containers,
    pub caller: &'t Caller,
    pub volume: VolumeId,
    header: VolumeHeader,
    /// The fid counters before the batch: local fids are numbered from here.
    first: (u64, u64),
    /// Locally made-up fids and the real ones given them.
    pub remaps: Vec<FidRemap>,
    /// Local fids of creates applied before (found, not made again).
    found: Vec<FidRemap>,
    remap: HashMap<Fid, Fid>,
    /// Every object changed, for callbacks.
    pub changed: Vec<Fid>,
    /// Containers made here (truncation), to remove if the batch fails.
    pub made: Vec<u64>,
    /// Whether a volume exists anywhere in the cell (for mount points).
    volume_exists: &'t dyn Fn(VolumeId) -> bool,
    /// This replica's version-vector slot, and how many replicas there are.
    slot: usize,
    replicas: usize,
    /// How many times each object's slot was bumped (for COP2).
    pub bumps: HashMap<Fid, u64>,
    /// The host of the client whose record is being applied.
    host: u64,
    /// A repair (`REPAIR`): every replica's vectors joined.
    pub repair: Option<VersionVector>,
}

type OpResult<T> = Result<T, Errno>;

impl<'t, 'a> Apply<'t, 'a> {
    pub fn new(
        txn: &'t mut Txn<'a>,
        containers: &'t mut Containers,
        caller: &'t Caller,
        volume: VolumeId,
        volume_exists: &'t dyn Fn(VolumeId) -> bool,
        me: &str,
    ) -> OpResult<Apply<'t, 'a>> {
        let vol = txn.volume(volume).ok_or(Errno::NO_SUCH_VOLUME)?;
        if vol.header.locked {
            return Err(Errno::VOLUME_LOCKED);
        }
        if !matches!(
            vol.header.kind,
            VolumeKind::ReadWrite | VolumeKind::Replicated
        ) {
            return Err(Errno::EROFS);
        }
        let header = vol.header.clone();
        let (slot, replicas) = (vol.slot_of(me), vol.replicas());
        Ok(Apply {
            slot,
            replicas,
            bumps: HashMap::new(),
            host: 0,
            repair: None,
            first: (header.next_vnode, header.next_unique),
            txn,
            containers,
            caller,
            volume,
            header,
            remaps: Vec::new(),
            found: Vec::new(),
            remap: HashMap::new(),
            changed: Vec::new(),
            made: Vec::new(),
            volume_exists,
        })
    }

    fn vol(&self) -> &Volume {
        self.txn.volume(self.volume).expect("checked in new")
    }

    /// A fid as the server knows it: remapped if the client made it up.
    pub fn real(&self, fid: Fid) -> Fid {
        self.remap.get(&fid).copied().unwrap_or(fid)
    }

    fn vnode(&self, fid: Fid) -> OpResult<Vnode> {
        let fid = self.real(fid);
        if fid.volume != self.volume {
            return Err(Errno::EXDEV);
        }
        self.vol().vnode(fid).cloned().ok_or(Errno::ENOENT)
    }

    fn dir(&self, fid: Fid) -> OpResult<Vnode> {
        let d = self.vnode(fid)?;
        if !d.is_dir() {
            return Err(Errno::ENOTDIR);
        }
        Ok(d)
    }

    fn need(&self, dir: &Vnode, rights: Rights) -> OpResult<()> {
        dir_rights(dir, self.caller)
            .contains(rights)
            .then_some(())
            .ok_or(Errno::EACCES)
    }

    fn need_file_write(&self, v: &Vnode) -> OpResult<()> {
        may_write(self.vol(), v, self.caller)
    }

    /// Counts one update of `v` in this replica's slot.
    fn bump(&mut self, v: &mut Vnode, store_id: StoreId) {
        v.vv.bump(self.slot, store_id);
        if v.history.last() != Some(&store_id) {
            v.history.push(store_id);
            let extra = v.history.len().saturating_sub(crate::vnode::HISTORY_MAX);
            v.history.drain(..extra);
        }
        // Counted for COP2, which only replicated volumes have.
        if self.replicas > 1 {
            *self.bumps.entry(v.fid).or_default() += 1;
        }
    }

    /// Remembers, in a replicated volume, that `name` no longer binds
    /// `fid` (whose version was `vv`), for resolution.
    fn tombstone(&mut self, dir: Fid, name: &str, fid: Fid, sid: StoreId) -> OpResult<()> {
        if self.replicas < 2 {
            return Ok(());
        }
        let (vv, history) = match self.vol().vnode(fid) {
            Some(v) => (v.vv.clone(), v.history.clone()),
            None => Default::default(),
        };
        let tomb = Tombstone {
            name: name.to_string(),
            fid,
            store_id: sid,
            vv,
            history,
        };
        self.txn.put_tombstone(dir, tomb).map_err(storage)
    }

    fn touch(&mut self, v: &mut Vnode, store_id: StoreId, time: Timestamp) {
        self.bump(v, store_id);
        v.data_version += 1;
        v.mtime = time;
        v.ctime = time;
        v.author = self.caller.user as u32;
        self.changed.push(v.fid);
    }

    fn put(&mut self, v: Vnode) -> OpResult<()> {
        self.txn.put_vnode(v).map_err(storage)
    }

    /// A fresh fid for `asked`: a made-up (local) fid gets the next vnode;
    /// a real one must come from [`crate::service`]'s AllocFids and be unused.
    fn new_fid(&mut self, asked: Fid) -> OpResult<Fid> {
        if asked.is_local() {
            if let Some(f) = self.remap.get(&asked) {
                return Err(if self.vol().vnode(*f).is_some() {
                    Errno::EEXIST
                } else {
                    Errno::EINVAL
                });
            }
            let fid = if self.replicas > 1 {
                // Every replica must give the object the same fid.
                let fid =
                    coda_proto::fid::derived_fid(self.volume, self.caller.user, self.host, asked);
                if self.vol().vnodes.contains_key(&fid.vnode) {
                    return Err(Errno::EEXIST);
                }
                fid
            } else {
                if self.header.next_vnode.max(self.header.next_unique)
                    >= coda_proto::fid::DERIVED_VNODE_BASE
                {
                    return Err(Errno::ENOSPC);
                }
                let fid = Fid::new(self.volume, self.header.next_vnode, self.header.next_unique);
                self.header.next_vnode += 1;
                self.header.next_unique += 1;
                fid
            };
            self.remap.insert(asked, fid);
            self.remaps.push(FidRemap { local: asked, fid });
            return Ok(fid);
        }
        if asked.volume != self.volume {
            return Err(Errno::EXDEV);
        }
        if self.vol().vnodes.contains_key(&asked.vnode) {
            return Err(Errno::EEXIST);
        }
        // Only from a range AllocFids gave this user; a fid of another
        // replica's class was that replica's to check.
        let stride = self.replicas as u64;
        if asked.vnode % stride != self.slot as u64 % stride {
            // Fids of every class are their vnode number twice.
            if asked.unique != asked.vnode || asked.vnode <= ROOT_VNODE {
                return Err(Errno::EINVAL);
            }
            return Ok(asked);
        }
        let granted = self
            .header
            .grants
            .iter()
            .any(|g| g.covers(self.caller.user, asked.vnode, asked.unique, stride));
        if !granted {
            return Err(Errno::EINVAL);
        }
        Ok(asked)
    }

    fn name_free(&self, dir: &Vnode, name: &str) -> OpResult<()> {
        check_name(name)?;
        match self.vol().lookup(dir.fid, name) {
            Some(_) => Err(Errno::EEXIST),
            None => Ok(()),
        }
    }

    /// The fid `name` is bound to, which must be `expected`.
    fn bound(&self, dir: &Vnode, name: &str, expected: Fid) -> OpResult<Fid> {
        let found = self.vol().lookup(dir.fid, name).ok_or(Errno::ENOENT)?;
        if found != self.real(expected) {
            return Err(Errno::CONFLICT);
        }
        Ok(found)
    }

    /// Checks that the caller saw the version it changes. An object the
    /// replicas disagree on takes no update but a repair, which needs no
    /// such check: its vector is raised to every replica's (so the update
    /// counted next follows all of them) and the mark goes.
    fn check_seen(&self, v: &mut Vnode, seen: StoreId) -> OpResult<()> {
        if let Some(base) = &self.repair {
            v.vv.raise(base);
            v.vv.flags &= !coda_proto::vv::FLAG_INCONSISTENT;
            return Ok(());
        }
        if v.vv.is_inconsistent() {
            return Err(Errno::INCONSISTENT);
        }
        if v.vv.store_id != seen {
            return Err(Errno::CONFLICT);
        }
        Ok(())
    }

    /// A record this volume applied already (its answer was lost and the
    /// client sent it again, after a crash or a timeout), recognised by its
    /// store id: the version it gave what it changed, if nothing changed
    /// that since. Answered as done, never applied twice. The fids the
    /// caller wants back.
    fn already(&mut self, rec: &CmlRecord) -> Option<Vec<Fid>> {
        let sid = rec.store_id;
        let vol = self.vol();
        let has = |fid: Fid| vol.vnode(fid).is_some_and(|v| v.vv.store_id == sid);
        let real = |f: Fid| self.remap.get(&f).copied().unwrap_or(f);
        match &rec.op {
            Op::Store(r) => has(real(r.fid)).then(|| vec![real(r.fid)]),
            Op::SetAttr(r) => has(real(r.fid)).then(|| vec![real(r.fid)]),
            Op::Create(cml::Create { dir, name, fid, .. })
            | Op::MakeDir(cml::MakeDir { dir, name, fid, .. })
            | Op::SymLink(cml::SymLink { dir, name, fid, .. }) => {
                let d = real(*dir);
                let made = vol.lookup(d, name).filter(|f| has(*f))?;
                if fid.is_local() && !self.remap.contains_key(fid) {
                    self.remap.insert(*fid, made);
                    self.found.push(FidRemap {
                        local: *fid,
                        fid: made,
                    });
                }
                Some(vec![made, d])
            }
            Op::Remove(r) => {
                let d = real(r.dir);
                (has(d) && vol.lookup(d, &r.name).is_none()).then(|| vec![d])
            }
            Op::RemoveDir(r) => {
                let d = real(r.dir);
                (has(d) && vol.lookup(d, &r.name).is_none()).then(|| vec![d])
            }
            Op::Link(r) => {
                let d = real(r.dir);
                let bound = vol.lookup(d, &r.name) == Some(real(r.fid));
                (has(d) && bound).then(|| vec![d, real(r.fid)])
            }
            Op::Rename(r) => {
                let (from, to) = (real(r.from_dir), real(r.to_dir));
                let bound = vol.lookup(to, &r.to_name) == Some(real(r.fid));
                (has(real(r.fid)) && bound).then(|| vec![from, to])
            }
            Op::SetAcl(r) => has(real(r.dir)).then(|| vec![real(r.dir)]),
        }
    }

    /// Applies one record; returns the fids whose status the caller wants back.
    pub fn op(
        &mut self,
        rec: &CmlRecord,
        data: &mut dyn FnMut(StoreId) -> Option<NewData>,
    ) -> OpResult<Vec<Fid>> {
        if let Some(fids) = self.already(rec) {
            return Ok(fids);
        }
        let (sid, t) = (rec.store_id, rec.time);
        self.host = sid.host;
        match &rec.op {
            Op::Store(r) => {
                let mut v = self.vnode(r.fid)?;
                match v.kind {
                    VnodeKind::File => {}
                    VnodeKind::Directory => return Err(Errno::EISDIR),
                    VnodeKind::Symlink => return Err(Errno::EINVAL),
                }
                self.need_file_write(&v)?;
                self.check_seen(&mut v, r.seen)?;
                let d = data(sid).ok_or(Errno::EINVAL)?;
                if d.length != r.length || d.hash != r.content_hash {
                    return Err(Errno::EINVAL);
                }
                v.container = d.container;
                v.inline = d.inline;
                v.length = d.length;
                v.content_hash = d.hash;
                self.touch(&mut v, sid, t);
                let fid = v.fid;
                self.put(v)?;
                Ok(vec![fid])
            }
            Op::SetAttr(r) => {
                let mut v = self.vnode(r.fid)?;
                let dir = governing(self.vol(), &v).clone();
                let owner = v.owner as PrincipalId == self.caller.user;
                let chown = r.owner.is_some_and(|o| o != v.owner);
                if chown {
                    self.need(&dir, Rights::ADMINISTER)?;
                }
                // The group is the owner's to give (the client checks the
                // owner belongs to it), else an administrator's.
                let chgrp = r.group.is_some_and(|g| g != v.group);
                if chgrp && !owner {
                    self.need(&dir, Rights::ADMINISTER)?;
                }
                if r.mode.is_some() && !owner {
                    self.need(&dir, Rights::WRITE)?;
                }
                let times = r.mtime.is_some() || r.atime.is_some();
                if times && !owner || r.length.is_some() {
                    self.need_file_write(&v)?;
                }
                // A SetAttr asking for none of the above (every field None,
                // or the owner it has already) still bumps the version,
                // ctime and author and breaks callbacks: like a utimes it
                // needs 'w', unless the caller owns the object.
                let guarded = chown || chgrp || r.mode.is_some() || times || r.length.is_some();
                if !guarded && !owner {
                    self.need(&dir, Rights::WRITE)?;
                }
                // Rights before versions, as for every other update, so a
                // caller without them cannot probe store ids.
                self.check_seen(&mut v, r.seen)?;
                if let Some(len) = r.length {
                    match v.kind {
                        VnodeKind::File => self.truncate(&mut v, len)?,
                        VnodeKind::Directory => return Err(Errno::EISDIR),
                        VnodeKind::Symlink => return Err(Errno::EINVAL),
                    }
                }
                let old_mtime = v.mtime;
                self.touch(&mut v, sid, t);
                if r.length.is_none() {
                    v.mtime = old_mtime;
                    v.data_version -= 1;
                }
                if let Some(m) = r.mode {
                    v.mode = m & 0o7777;
                }
                if let Some(o) = r.owner {
                    v.owner = o;
                }
                if let Some(g) = r.group {
                    v.group = g;
                }
                if let Some(m) = r.mtime {
                    v.mtime = m;
                }
                if let Some(a) = r.atime {
                    v.atime = a;
                }
                let fid = v.fid;
                self.put(v)?;
                Ok(vec![fid])
            }
            Op::Create(r) => self.make(
                sid,
                t,
                r.dir,
                &r.name,
                r.fid,
                VnodeKind::File,
                (r.mode, r.group),
                "",
            ),
            Op::MakeDir(r) => self.make(
                sid,
                t,
                r.dir,
                &r.name,
                r.fid,
                VnodeKind::Directory,
                (r.mode, r.group),
                "",
            ),
            Op::SymLink(r) => {
                if r.target.len() > TARGET_BYTES_MAX {
                    return Err(Errno::ENAMETOOLONG);
                }
                if r.target.is_empty() {
                    return Err(Errno::ENOENT);
                }
                self.make(
                    sid,
                    t,
                    r.dir,
                    &r.name,
                    r.fid,
                    VnodeKind::Symlink,
                    (0o777, r.group),
                    &r.target,
                )
            }
            Op::Link(r) => {
                let mut d = self.dir(r.dir)?;
                self.need(&d, Rights::INSERT)?;
                self.name_free(&d, &r.name)?;
                let target = self.real(r.fid);
                if target.volume != self.volume {
                    // A mount point: an entry naming another volume's root.
                    self.need(&d, Rights::ADMINISTER)?;
                    if target.vnode != ROOT_VNODE || !(self.volume_exists)(target.volume) {
                        return Err(Errno::NO_SUCH_VOLUME);
                    }
                    self.txn
                        .put_entry(d.fid, &r.name, target)
                        .map_err(storage)?;
                    self.touch(&mut d, sid, t);
                    let dfid = d.fid;
                    self.put(d)?;
                    return Ok(vec![dfid]);
                }
                let mut v = self.vnode(target)?;
                if v.is_dir() {
                    return Err(Errno::EPERM);
                }
                // As in Coda, hard links stay in one directory, so every
                // object has exactly one parent.
                if v.parent != d.fid {
                    return Err(Errno::EXDEV);
                }
                self.txn.put_entry(d.fid, &r.name, v.fid).map_err(storage)?;
                v.link_count += 1;
                v.ctime = t;
                self.bump(&mut v, sid);
                self.changed.push(v.fid);
                self.touch(&mut d, sid, t);
                let ids = vec![d.fid, v.fid];
                self.put(v)?;
                self.put(d)?;
                Ok(ids)
            }
            Op::Remove(r) => {
                let mut d = self.dir(r.dir)?;
                self.need(&d, Rights::DELETE)?;
                check_name(&r.name)?;
                let fid = self.bound(&d, &r.name, r.fid)?;
                self.tombstone(d.fid, &r.name, fid, sid)?;
                if fid.volume != self.volume {
                    self.need(&d, Rights::ADMINISTER)?;
                } else {
                    let v = self.vnode(fid)?;
                    if v.is_dir() {
                        return Err(Errno::EISDIR);
                    }
                    // Removing an object the replicas disagree on settles
                    // it: whichever version the caller saw goes.
                    if !v.vv.is_inconsistent() && v.vv.store_id != r.seen {
                        return Err(Errno::CONFLICT);
                    }
                    self.unlink(v, sid, t)?;
                }
                self.txn.remove_entry(d.fid, &r.name).map_err(storage)?;
                self.touch(&mut d, sid, t);
                let dfid = d.fid;
                self.put(d)?;
                Ok(vec![dfid])
            }
            Op::RemoveDir(r) => {
                let mut d = self.dir(r.dir)?;
                self.need(&d, Rights::DELETE)?;
                check_name(&r.name)?;
                let fid = self.bound(&d, &r.name, r.fid)?;
                let v = self.vnode(fid)?;
                if !v.is_dir() {
                    return Err(Errno::ENOTDIR);
                }
                if self.vol().entries(fid).is_some_and(|e| !e.is_empty()) {
                    return Err(Errno::ENOTEMPTY);
                }
                self.tombstone(d.fid, &r.name, fid, sid)?;
                self.txn.remove_entry(d.fid, &r.name).map_err(storage)?;
                self.txn.remove_vnode(fid).map_err(storage)?;
                self.changed.push(fid);
                d.link_count -= 1;
                self.touch(&mut d, sid, t);
                let dfid = d.fid;
                self.put(d)?;
                Ok(vec![dfid])
            }
            Op::Rename(r) => self.rename(sid, t, r),
            Op::SetAcl(r) => {
                let mut d = self.dir(r.dir)?;
                self.need(&d, Rights::ADMINISTER)?;
                if r.acl.positive.len() + r.acl.negative.len() > ACL_ENTRIES_MAX {
                    return Err(Errno::EINVAL);
                }
                d.acl = Some(r.acl.clone());
                let time = d.mtime;
                self.touch(&mut d, sid, t);
                d.mtime = time;
                let dfid = d.fid;
                self.put(d)?;
                Ok(vec![dfid])
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn make(
        &mut self,
        sid: StoreId,
        t: Timestamp,
        dir: Fid,
        name: &str,
        asked: Fid,
        kind: VnodeKind,
        (mode, group): (u32, u32),
        target: &str,
    ) -> OpResult<Vec<Fid>> {
        let mut d = self.dir(dir)?;
        self.need(&d, Rights::INSERT)?;
        self.name_free(&d, name)?;
        let fid = self.new_fid(asked)?;
        let is_dir = kind == VnodeKind::Directory;
        let vv = VersionVector::new(self.replicas);
        let mut v = Vnode {
            fid,
            kind,
            mode: mode & 0o7777,
            owner: self.caller.user as u32,
            group,
            author: self.caller.user as u32,
            link_count: if is_dir { 2 } else { 1 },
            length: target.len() as u64,
            mtime: t,
            ctime: t,
            atime: t,
            data_version: 1,
            vv,
            content_hash: if target.is_empty() {
                EMPTY_HASH
            } else {
                *blake3::hash(target.as_bytes()).as_bytes()
            },
            container: NO_CONTAINER,
            parent: d.fid,
            // A new directory starts with its parent's ACL, as in Coda.
            acl: is_dir.then(|| d.acl.clone().unwrap_or_default()),
            target: target.to_string(),
            history: Vec::new(),
            inline: Bytes::new(),
        };
        self.bump(&mut v, sid);
        self.put(v)?;
        self.changed.push(fid);
        self.txn.put_entry(d.fid, name, fid).map_err(storage)?;
        if is_dir {
            d.link_count += 1;
        }
        self.touch(&mut d, sid, t);
        let dfid = d.fid;
        self.put(d)?;
        Ok(vec![fid, dfid])
    }

    /// Drops one link to a non-directory; the object goes with its last.
    fn unlink(&mut self, mut v: Vnode, sid: StoreId, t: Timestamp) -> OpResult<()> {
        self.changed.push(v.fid);
        if v.link_count <= 1 {
            return self.txn.remove_vnode(v.fid).map_err(storage);
        }
        v.link_count -= 1;
        v.ctime = t;
        self.bump(&mut v, sid);
        self.put(v)
    }

    fn rename(
        &mut self,
        sid: StoreId,
        t: Timestamp,
        r: &coda_proto::cml::Rename,
    ) -> OpResult<Vec<Fid>> {
        let from = self.dir(r.from_dir)?;
        let to = match self.dir(r.to_dir) {
            Err(Errno::EXDEV) => return Err(Errno::EXDEV),
            other => other?,
        };
        check_name(&r.from_name)?;
        check_name(&r.to_name)?;
        self.need(&from, Rights::DELETE)?;
        self.need(&to, Rights::INSERT)?;
        let fid = self.bound(&from, &r.from_name, r.fid)?;
        let existing = self.vol().lookup(to.fid, &r.to_name);
        if existing != r.replaced.map(|f| self.real(f)) {
            return Err(Errno::CONFLICT);
        }
        if existing == Some(fid) {
            // Two names of one object: POSIX says do nothing.
            return Ok(vec![from.fid, to.fid]);
        }
        let moving = if fid.volume == self.volume {
            Some(self.vnode(fid)?)
        } else {
            None
        };
        let moving_dir = moving.as_ref().is_some_and(|v| v.is_dir());
        if let Some(v) = &moving {
            if from.fid != to.fid && !v.is_dir() && v.link_count > 1 {
                return Err(Errno::EXDEV);
            }
        }
        if moving_dir && from.fid != to.fid {
            // A directory may not move under itself.
            let mut at = to.clone();
            loop {
                if at.fid == fid {
                    return Err(Errno::EINVAL);
                }
                if at.fid.vnode == ROOT_VNODE || at.parent == at.fid {
                    break;
                }
                at = self.vnode(at.parent)?;
            }
        }
        let mut ids = vec![from.fid, to.fid];
        if let Some(old) = existing {
            self.need(&to, Rights::DELETE)?;
            if old.volume != self.volume {
                return Err(Errno::EBUSY);
            }
            let ov = self.vnode(old)?;
            match (moving_dir, ov.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                _ => {}
            }
            self.tombstone(to.fid, &r.to_name, old, sid)?;
            self.txn.remove_entry(to.fid, &r.to_name).map_err(storage)?;
            if ov.is_dir() {
                if self.vol().entries(old).is_some_and(|e| !e.is_empty()) {
                    return Err(Errno::ENOTEMPTY);
                }
                self.txn.remove_vnode(old).map_err(storage)?;
                self.changed.push(old);
                let mut to_now = self.vnode(to.fid)?;
                to_now.link_count -= 1;
                self.put(to_now)?;
            } else {
                self.unlink(ov, sid, t)?;
            }
            ids.push(old);
        }
        self.tombstone(from.fid, &r.from_name, fid, sid)?;
        self.txn
            .remove_entry(from.fid, &r.from_name)
            .map_err(storage)?;
        self.txn
            .put_entry(to.fid, &r.to_name, fid)
            .map_err(storage)?;
        if let Some(mut v) = moving {
            if from.fid != to.fid {
                v.parent = to.fid;
            }
            v.ctime = t;
            self.bump(&mut v, sid);
            self.changed.push(v.fid);
            ids.push(v.fid);
            self.put(v)?;
        }
        let mut from_now = self.vnode(from.fid)?;
        if moving_dir && from.fid != to.fid {
            from_now.link_count -= 1;
        }
        self.touch(&mut from_now, sid, t);
        self.put(from_now)?;
        if from.fid != to.fid {
            let mut to_now = self.vnode(to.fid)?;
            if moving_dir {
                to_now.link_count += 1;
            }
            self.touch(&mut to_now, sid, t);
            self.put(to_now)?;
        }
        Ok(ids)
    }

    /// Gives `v` its first `len` bytes (zeros past the old end): in the
    /// vnode if they are few, else in a new container.
    fn truncate(&mut self, v: &mut Vnode, len: u64) -> OpResult<()> {
        if len == v.length {
            return Ok(());
        }
        let kept = len.min(v.length);
        if len <= IN_VNODE_MAX {
            let mut bytes = vec![0u8; len as usize];
            if v.container != NO_CONTAINER {
                let old = self.containers.open_read(v.container).map_err(io_error)?;
                old.read_exact_at(&mut bytes[..kept as usize], 0)
                    .map_err(io_error)?;
            } else {
                bytes[..kept as usize].copy_from_slice(&v.inline[..kept as usize]);
            }
            v.content_hash = *blake3::hash(&bytes).as_bytes();
            v.inline = Bytes::from(bytes);
            v.container = NO_CONTAINER;
            v.length = len;
            return Ok(());
        }
        let (id, mut file) = self.containers.create().map_err(io_error)?;
        self.made.push(id);
        if v.container != NO_CONTAINER {
            let old = self.containers.open_read(v.container).map_err(io_error)?;
            std::io::copy(&mut std::io::Read::take(&old, kept), &mut file).map_err(io_error)?;
        } else {
            std::io::Write::write_all(&mut file, &v.inline[..kept as usize]).map_err(io_error)?;
        }
        file.set_len(len).map_err(io_error)?;
        self.containers.sync(&file).map_err(io_error)?;
        v.container = id;
        v.inline = Bytes::new();
        v.length = len;
        v.content_hash = hash_file(&file).map_err(io_error)?;
        Ok(())
    }

    /// Writes the volume header (new stamp, fid counters) and ends the
    /// batch: what to answer, and every object changed.
    pub fn finish(mut self) -> OpResult<(Applied, Vec<Fid>)> {
        self.header.stamp += 1;
        let applied = Applied {
            volume: self.volume,
            first_vnode: self.first.0,
            first_unique: self.first.1,
            created: self.remaps.len() as u64,
            stamp: self.header.stamp,
            found: std::mem::take(&mut self.found),
        };
        self.txn.put_header(self.header).map_err(storage)?;
        Ok((applied, self.changed))
    }
}

/// The blake3 hash of a file's bytes.
pub fn hash_file(file: &std::fs::File) -> std::io::Result<[u8; 32]> {
    let mut h = blake3::Hasher::new();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    std::io::Seek::seek(&mut reader, std::io::SeekFrom::Start(0))?;
    std::io::copy(&mut reader, &mut h)?;
    Ok(*h.finalize().as_bytes())
}

/// The ACL of a new cell's root volume: `System:AnyUser rl`,
/// `System:Administrators rlidwka`.
pub fn root_acl() -> Acl {
    let mut acl = Acl::default();
    acl.set(ANY_USER, Rights::READ.union(Rights::LOOKUP), false);
    acl.set(coda_proto::acl::ADMINISTRATORS, Rights::ALL, false);
    acl
}
