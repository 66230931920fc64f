//! The FUSE adapter: kernel requests to the core's calls. Open files are
//! handed to the kernel (FUSE passthrough) so reads and writes run at
//! local-disk speed; where the kernel refuses, they come here instead.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coda_proto::{Errno as CodaErrno, Timestamp, VnodeKind};
use fuser::{
    BackingId, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};

use crate::control;
use crate::core::{Attr, SetAttrs, Venus};

/// How long the kernel may answer from its own caches. Callback breaks
/// invalidate what changed at once (`callback`), so this can be long.
const TTL: Duration = Duration::from_secs(60);

pub struct Fuse {
    pub venus: Arc<Mutex<Venus>>,
    /// The control socket's path, answered as [`control::XATTR`].
    control: Vec<u8>,
    passthrough: AtomicBool,
    /// The kernel's backing file of each open inode, shared by its handles.
    /// How each open inode's handles are served.
    backings: Mutex<HashMap<u64, Backing>>,
    /// Notified when a handle of an inode is released.
    released: Condvar,
    /// Handles served in user space.
    fallback: Mutex<HashMap<u64, ()>>,
}

fn errno(e: CodaErrno) -> fuser::Errno {
    fuser::Errno::from_i32(e.posix())
}

fn time(t: Timestamp) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Timestamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        },
        Err(e) => Timestamp {
            secs: -(e.duration().as_secs() as i64),
            nanos: 0,
        },
    }
}

fn kind(k: VnodeKind) -> FileType {
    match k {
        VnodeKind::File => FileType::RegularFile,
        VnodeKind::Directory => FileType::Directory,
        VnodeKind::Symlink => FileType::Symlink,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    FileAttr {
        ino: INodeNo(a.ino),
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time(a.atime),
        mtime: time(a.mtime),
        ctime: time(a.ctime),
        crtime: time(a.ctime),
        kind: kind(a.kind),
        perm: a.mode as u16,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Whether the process making `req` belongs to group `gid` (its file
/// system gid or a supplementary group), as /proc tells.
fn in_group(req: &Request, gid: u32) -> bool {
    if req.gid() == gid {
        return true;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", req.pid())) else {
        return false;
    };
    status.lines().any(|l| {
        let ids = match l.split_once(':') {
            Some(("Gid", ids)) => ids.split_whitespace().nth(3),
            Some(("Groups", ids)) => return ids.split_whitespace().any(|g| g == gid.to_string()),
            _ => None,
        };
        ids == Some(&gid.to_string())
    })
}

/// How an open file's reads and writes are served.
enum Served {
    /// By the kernel, from the container (FUSE passthrough).
    Passthrough,
    /// By Venus.
    Here,
    /// Not at all: the kernel holds another version for the inode.
    Refused,
}

/// Answers a request that returns nothing but success or an error.
fn done(reply: ReplyEmpty, r: Result<(), fuser::Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn name(n: &OsStr) -> Result<&str, fuser::Errno> {
    n.to_str().ok_or(fuser::Errno::EINVAL)
}

impl Fuse {
    pub fn new(venus: Arc<Mutex<Venus>>, control: &Path) -> Fuse {
        Fuse {
            venus,
            control: control.as_os_str().as_encoded_bytes().to_vec(),
            passthrough: AtomicBool::new(false),
            backings: Mutex::new(HashMap::new()),
            released: Condvar::new(),
            fallback: Mutex::new(HashMap::new()),
        }
    }

    /// Runs an operation on Venus. One that timed out because a server
    /// was found gone during it runs again: another replica, or the cache
    /// if none is left, serves it, and the program never hears of the
    /// loss. Each run that repeats has left one more server out, so this
    /// ends.
    fn with<T>(
        &self,
        mut f: impl FnMut(&mut Venus) -> Result<T, CodaErrno>,
    ) -> Result<T, fuser::Errno> {
        let mut v = self.venus.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let losses = v.losses();
            match f(&mut v) {
                Err(CodaErrno::ETIMEDOUT) if v.losses() != losses => {}
                r => return r.map_err(errno),
            }
        }
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Attr, fuser::Errno>) {
        match r {
            Ok(a) => reply.entry(&TTL, &file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    /// Registers `file` as the kernel's backing file of `ino` (once per
    /// inode: its handles share it); false where the kernel refuses.
    fn backing(
        &self,
        ino: u64,
        file: &std::fs::File,
        open_backing: impl FnOnce(&std::fs::File) -> std::io::Result<BackingId>,
    ) -> Served {
        use std::os::unix::fs::MetadataExt;
        if !self.passthrough.load(Ordering::Relaxed) {
            return Served::Here;
        }
        let Ok(m) = file.metadata() else {
            return Served::Here;
        };
        let of = (m.dev(), m.ino());
        let mut b = self.backings.lock().unwrap();
        match b.get_mut(&ino) {
            Some(e) if e.of == of => {
                e.handles += 1;
                Served::Passthrough
            }
            // Another thread attached another version meanwhile: the kernel
            // refuses a second backing file for one inode.
            Some(_) => Served::Refused,
            None => match open_backing(file) {
                Ok(id) => {
                    b.insert(ino, Backing { id, handles: 1, of });
                    Served::Passthrough
                }
                Err(err) => {
                    tracing::warn!("passthrough refused ({err}); serving reads and writes here");
                    self.passthrough.store(false, Ordering::Relaxed);
                    Served::Here
                }
            },
        }
    }

    /// Waits (a while) until no version of `ino` is attached to the kernel
    /// any more; false if one still is.
    fn wait_detached(&self, ino: u64) -> bool {
        let deadline = std::time::Instant::now() + RELEASE_WAIT;
        let mut b = self.backings.lock().unwrap();
        while b.contains_key(&ino) {
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            b = self.released.wait_timeout(b, deadline - now).unwrap().0;
        }
        true
    }

    fn drop_backing(&self, ino: u64) {
        let mut b = self.backings.lock().unwrap();
        if let Some(e) = b.get_mut(&ino) {
            e.handles -= 1;
            if e.handles == 0 {
                b.remove(&ino);
            }
        }
        self.released.notify_all();
    }
}

/// How long an open of a newer version waits for the handles of the one
/// the kernel holds to be released (closed handles are released a moment
/// after close returns) before it shares that version instead.
const RELEASE_WAIT: Duration = Duration::from_secs(5);

/// A container the kernel reads and writes for an inode (FUSE passthrough
/// takes one backing file per inode, whatever its handles).
struct Backing {
    id: BackingId,
    handles: u32,
    /// The container's (device, inode).
    of: (u64, u64),
}

impl Filesystem for Fuse {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.add_capabilities(InitFlags::FUSE_ATOMIC_O_TRUNC);
        let want = InitFlags::FUSE_PASSTHROUGH;
        if config.capabilities().contains(want)
            && config.add_capabilities(want).is_ok()
            && config.set_max_stack_depth(1).is_ok()
        {
            self.passthrough.store(true, Ordering::Relaxed);
        }
        tracing::info!(
            "kernel passthrough: {}",
            self.passthrough.load(Ordering::Relaxed)
        );
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEntry) {
        let r = name(n).and_then(|n| self.with(|v| v.lookup(req.uid(), parent.0, n)));
        self.entry(reply, r);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.with(|v| v.getattr(req.uid(), ino.0)) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let at = |t: TimeOrNow| match t {
            TimeOrNow::SpecificTime(t) => timestamp(t),
            TimeOrNow::Now => Timestamp::now(),
        };
        let ch = SetAttrs {
            mode,
            owner: uid,
            group: gid.map(|g| (g, in_group(req, g))),
            length: size,
            times_now: matches!(mtime, Some(TimeOrNow::Now)),
            mtime: mtime.map(at),
            atime: atime.map(at),
        };
        match self.with(|v| v.setattr(req.uid(), ino.0, ch.clone())) {
            Ok(a) => reply.attr(&TTL, &file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.with(|v| v.readlink(req.uid(), ino.0)) {
            Ok(t) => reply.data(t.as_bytes()),
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = name(n)
            .and_then(|n| self.with(|v| v.mkdir(req.uid(), req.gid(), parent.0, n, mode & !umask)));
        self.entry(reply, r);
    }

    /// Regular files only: Coda keeps no devices, FIFOs or sockets.
    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = name(n).and_then(|n| {
            self.with(|v| {
                if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
                    return match v.lookup(req.uid(), parent.0, n) {
                        Ok(_) => Err(CodaErrno::EEXIST),
                        Err(CodaErrno::ENOENT) => Err(CodaErrno::EPERM),
                        Err(e) => Err(e),
                    };
                }
                v.mknod(req.uid(), req.gid(), parent.0, n, mode & !umask & 0o7777)
            })
        });
        self.entry(reply, r);
    }

    fn unlink(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        done(
            reply,
            name(n).and_then(|n| self.with(|v| v.unlink(req.uid(), parent.0, n))),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, n: &OsStr, reply: ReplyEmpty) {
        done(
            reply,
            name(n).and_then(|n| self.with(|v| v.rmdir(req.uid(), parent.0, n))),
        );
    }

    fn symlink(&self, req: &Request, parent: INodeNo, n: &OsStr, target: &Path, reply: ReplyEntry) {
        let r = name(n).and_then(|n| {
            let t = target.to_str().ok_or(fuser::Errno::EINVAL)?;
            self.with(|v| v.symlink(req.uid(), req.gid(), parent.0, n, t))
        });
        self.entry(reply, r);
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.bits() != 0 {
            // RENAME_NOREPLACE / EXCHANGE / WHITEOUT are not offered.
            return reply.error(fuser::Errno::EINVAL);
        }
        let r = name(n).and_then(|n| {
            let nn = name(newname)?;
            self.with(|v| v.rename(req.uid(), parent.0, n, newparent.0, nn))
        });
        done(reply, r);
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let r = name(newname).and_then(|n| self.with(|v| v.link(req.uid(), ino.0, newparent.0, n)));
        self.entry(reply, r);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = flags.acc_mode() != fuser::OpenAccMode::O_RDONLY;
        let truncate = flags.0 & libc::O_TRUNC != 0;
        // A newer version than the one the kernel holds for this inode can
        // be handed over only once that one's handles are released.
        let attached = self.backings.lock().unwrap().contains_key(&ino.0);
        let stale = attached && self.with(|v| v.current(req.uid(), ino.0)) == Ok(false);
        let keep = stale && !self.wait_detached(ino.0);
        if keep {
            tracing::warn!(
                "inode {}: an older version is still open; this open shares it",
                ino.0
            );
        }
        let opened = self.with(|v| v.open(req.uid(), ino.0, write, truncate, keep));
        let (fh, file) = match opened {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        match self.backing(ino.0, &file, |f| reply.open_backing(f)) {
            Served::Passthrough => {
                let b = self.backings.lock().unwrap();
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b[&ino.0].id);
            }
            Served::Here => {
                self.fallback.lock().unwrap().insert(fh, ());
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Served::Refused => {
                let _ = self.with(|v| v.release(fh));
                reply.error(fuser::Errno::EBUSY);
            }
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.with(|v| v.read(fh.0, offset, size)) {
            Ok(d) => reply.data(&d),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.with(|v| v.write(fh.0, offset, data)) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        done(reply, self.with(|v| v.flush(fh.0)));
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        done(reply, self.with(|v| v.flush(fh.0)));
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let r = self.with(|v| {
            // A close that skipped flush (the kernel sends one per close,
            // but mmap writes can outlive it) still stores.
            let stored = v.flush(fh.0);
            v.release(fh.0)?;
            stored
        });
        if self.fallback.lock().unwrap().remove(&fh.0).is_none() {
            self.drop_backing(ino.0);
        }
        done(reply, r);
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.with(|v| v.open_dir(req.uid(), ino.0)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let r = self.with(|v| {
            let entries = v.listing(fh.0)?;
            for (i, (n, ino, k)) in entries.iter().enumerate().skip(offset as usize) {
                if reply.add(INodeNo(*ino), i as u64 + 1, kind(*k), n) {
                    break;
                }
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _ = self.with(|v| {
            v.close_dir(fh.0);
            Ok(())
        });
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let (total, free, files) = self
            .venus
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .statfs();
        let bs = 4096u64;
        reply.statfs(
            total / bs,
            free / bs,
            free / bs,
            files + 1_000_000,
            1_000_000,
            bs as u32,
            255,
            bs as u32,
        );
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        n: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let made = name(n).and_then(|n| {
            self.with(|v| v.create(req.uid(), req.gid(), parent.0, n, mode & !umask))
        });
        let (attr, fh, file) = match made {
            Ok(x) => x,
            Err(e) => return reply.error(e),
        };
        let fa = file_attr(&attr);
        match self.backing(attr.ino, &file, |f| reply.open_backing(f)) {
            Served::Passthrough => {
                let b = self.backings.lock().unwrap();
                let id = &b[&attr.ino].id;
                reply.created_passthrough(
                    &TTL,
                    &fa,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                    id,
                );
            }
            // A new inode has no backing yet: never refused.
            Served::Here | Served::Refused => {
                self.fallback.lock().unwrap().insert(fh, ());
                reply.created(
                    &TTL,
                    &fa,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                );
            }
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: fuser::AccessFlags, reply: ReplyEmpty) {
        let (r, w, x) = (
            mask.contains(fuser::AccessFlags::R_OK),
            mask.contains(fuser::AccessFlags::W_OK),
            mask.contains(fuser::AccessFlags::X_OK),
        );
        done(reply, self.with(|v| v.access(req.uid(), ino.0, r, w, x)));
    }

    /// Tools find the Venus behind any path by this attribute.
    fn getxattr(&self, _req: &Request, _ino: INodeNo, n: &OsStr, size: u32, reply: ReplyXattr) {
        if n != control::XATTR {
            return reply.error(fuser::Errno::from_i32(libc::ENODATA));
        }
        let value = &self.control;
        match size {
            0 => reply.size(value.len() as u32),
            s if (s as usize) < value.len() => reply.error(fuser::Errno::from_i32(libc::ERANGE)),
            _ => reply.data(value),
        }
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: ReplyXattr) {
        // The control attribute is not listed: copies must not carry it.
        match size {
            0 => reply.size(0),
            _ => reply.data(&[]),
        }
    }
}
