//! pjdfstest-style probes of a real `venus` mount: the granular POSIX
//! behaviour of each system call family (errno for every odd case, link
//! counts, ctime/mtime after every operation, mode bits, timestamps to the
//! nanosecond, permission checks for unprivileged users).
//!
//! Every check that POSIX/Linux defines runs twice, on a local directory
//! (ext4 or tmpfs under the temp dir, which validates the expectation) and
//! on the mount, through raw libc calls, each under the harness's timeout.
//! Checks where Coda deliberately differs from POSIX run on the mount only
//! and say what a Coda user gets instead:
//! - hard links only within one directory (`EXDEV` otherwise);
//! - no special files (FIFOs, devices, sockets): a clean `EPERM`, nothing
//!   left behind;
//! - directories' ACLs, not their mode bits, decide who may look up, insert
//!   and delete (so no sticky-bit semantics and no group/other bits on
//!   directories); on files only the owner's mode bits count, for everyone
//!   who is not the owner as well;
//! - the owner of a new object is the Coda user of the token (admin's id for
//!   root with the admin token), not the local uid, so owners are not
//!   compared with the local directory's;
//! - anyone with the `w` right may chmod a file and set its times, as in
//!   Coda's CheckSetAttrSemantics (POSIX: the owner only), so that is not
//!   checked either.
//!
//! A failing check does not stop its test: every check of a test runs and
//! the test fails at the end with the list of what went wrong, the local
//! directory's failures first (those would mean the expectation is wrong).
//!
//! Unprivileged calls run on a thread that switched its own credentials
//! with the raw `setresuid`/`setresgid`/`setgroups` system calls (per-thread
//! on Linux, unlike the libc wrappers), so FUSE sees that uid.

use std::fmt::Debug;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coda_tests::venus::{cell, fsx, run_command, timed_for, Cell, FS_TIMEOUT, TOOL_TIMEOUT};
use coda_tests::{bin, pattern};

/// A local uid with no Coda token: `System:AnyUser` only.
const ANON: u32 = 1234;
/// A local uid that holds a token for the Coda user `alice`.
const ALICE: u32 = 1235;
const ALICE_PASSWORD: &str = "alice-pw";

// ---- raw system calls: the errno, never a panic ----

type R<T> = Result<T, i32>;

/// A stat buffer with the fields the checks look at.
#[derive(Clone, Copy)]
struct St(libc::stat);

impl Debug for St {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{{type {:o} mode {:o} ino {} nlink {} uid {} gid {} size {} atime {:?} mtime {:?} ctime {:?}}}",
            self.kind(),
            self.mode(),
            self.ino(),
            self.nlink(),
            self.uid(),
            self.gid(),
            self.size(),
            self.atime(),
            self.mtime(),
            self.ctime()
        )
    }
}

impl St {
    fn kind(&self) -> u32 {
        self.0.st_mode & libc::S_IFMT
    }
    fn mode(&self) -> u32 {
        self.0.st_mode & 0o7777
    }
    fn ino(&self) -> u64 {
        self.0.st_ino
    }
    fn nlink(&self) -> u64 {
        self.0.st_nlink
    }
    fn uid(&self) -> u32 {
        self.0.st_uid
    }
    fn gid(&self) -> u32 {
        self.0.st_gid
    }
    fn size(&self) -> i64 {
        self.0.st_size
    }
    fn atime(&self) -> (i64, i64) {
        (self.0.st_atime, self.0.st_atime_nsec)
    }
    fn mtime(&self) -> (i64, i64) {
        (self.0.st_mtime, self.0.st_mtime_nsec)
    }
    fn ctime(&self) -> (i64, i64) {
        (self.0.st_ctime, self.0.st_ctime_nsec)
    }
}

mod sys {
    use super::{St, R};
    use std::ffi::CString;
    use std::path::Path;

    pub fn c(p: &Path) -> CString {
        CString::new(super::bytes(p)).expect("no NUL in test paths")
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    fn rc(r: libc::c_int) -> R<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }

    fn rcl(r: libc::c_long) -> R<()> {
        if r == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }

    pub fn open(p: &Path, flags: i32, mode: u32) -> R<i32> {
        let fd = unsafe { libc::open(c(p).as_ptr(), flags | libc::O_CLOEXEC, mode) };
        if fd >= 0 {
            Ok(fd)
        } else {
            Err(errno())
        }
    }

    pub fn close(fd: i32) -> R<()> {
        rc(unsafe { libc::close(fd) })
    }

    pub fn write(fd: i32, data: &[u8]) -> R<usize> {
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if n >= 0 {
            Ok(n as usize)
        } else {
            Err(errno())
        }
    }

    pub fn pread(fd: i32, len: usize, off: i64) -> R<Vec<u8>> {
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = unsafe {
                libc::pread(
                    fd,
                    buf[got..].as_mut_ptr().cast(),
                    len - got,
                    off + got as i64,
                )
            };
            if n < 0 {
                return Err(errno());
            }
            if n == 0 {
                break;
            }
            got += n as usize;
        }
        buf.truncate(got);
        Ok(buf)
    }

    pub fn lseek(fd: i32, off: i64, whence: i32) -> R<i64> {
        let r = unsafe { libc::lseek(fd, off, whence) };
        if r >= 0 {
            Ok(r)
        } else {
            Err(errno())
        }
    }

    fn stat_with(f: impl FnOnce(*mut libc::stat) -> libc::c_int) -> R<St> {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        rc(f(&mut st))?;
        Ok(St(st))
    }

    pub fn stat(p: &Path) -> R<St> {
        let cp = c(p);
        stat_with(|s| unsafe { libc::stat(cp.as_ptr(), s) })
    }

    pub fn lstat(p: &Path) -> R<St> {
        let cp = c(p);
        stat_with(|s| unsafe { libc::lstat(cp.as_ptr(), s) })
    }

    pub fn fstat(fd: i32) -> R<St> {
        stat_with(|s| unsafe { libc::fstat(fd, s) })
    }

    pub fn mkdir(p: &Path, mode: u32) -> R<()> {
        rc(unsafe { libc::mkdir(c(p).as_ptr(), mode) })
    }

    pub fn rmdir(p: &Path) -> R<()> {
        rc(unsafe { libc::rmdir(c(p).as_ptr()) })
    }

    pub fn unlink(p: &Path) -> R<()> {
        rc(unsafe { libc::unlink(c(p).as_ptr()) })
    }

    pub fn link(from: &Path, to: &Path) -> R<()> {
        rc(unsafe { libc::link(c(from).as_ptr(), c(to).as_ptr()) })
    }

    pub fn symlink(target: &[u8], p: &Path) -> R<()> {
        let t = CString::new(target).expect("no NUL in link targets");
        rc(unsafe { libc::symlink(t.as_ptr(), c(p).as_ptr()) })
    }

    pub fn readlink(p: &Path) -> R<Vec<u8>> {
        let mut buf = vec![0u8; 8192];
        let n = unsafe { libc::readlink(c(p).as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(errno());
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    pub fn rename(from: &Path, to: &Path) -> R<()> {
        rc(unsafe { libc::rename(c(from).as_ptr(), c(to).as_ptr()) })
    }

    pub fn renameat2(from: &Path, to: &Path, flags: u32) -> R<()> {
        let (a, b) = (c(from), c(to));
        rcl(unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD as libc::c_long,
                a.as_ptr(),
                libc::AT_FDCWD as libc::c_long,
                b.as_ptr(),
                flags as libc::c_long,
            )
        })
    }

    pub fn chmod(p: &Path, mode: u32) -> R<()> {
        rc(unsafe { libc::chmod(c(p).as_ptr(), mode) })
    }

    pub fn fchmod(fd: i32, mode: u32) -> R<()> {
        rc(unsafe { libc::fchmod(fd, mode) })
    }

    /// chown(2); `None` is -1 (unchanged).
    pub fn chown(p: &Path, uid: Option<u32>, gid: Option<u32>) -> R<()> {
        rc(unsafe {
            libc::chown(
                c(p).as_ptr(),
                uid.unwrap_or(u32::MAX),
                gid.unwrap_or(u32::MAX),
            )
        })
    }

    pub fn lchown(p: &Path, uid: Option<u32>, gid: Option<u32>) -> R<()> {
        rc(unsafe {
            libc::lchown(
                c(p).as_ptr(),
                uid.unwrap_or(u32::MAX),
                gid.unwrap_or(u32::MAX),
            )
        })
    }

    pub fn truncate(p: &Path, len: i64) -> R<()> {
        rc(unsafe { libc::truncate(c(p).as_ptr(), len) })
    }

    pub fn ftruncate(fd: i32, len: i64) -> R<()> {
        rc(unsafe { libc::ftruncate(fd, len) })
    }

    /// utimensat(AT_FDCWD, p, times, flags); `None` is NULL (both now).
    pub fn utimensat(p: &Path, times: Option<[(i64, i64); 2]>, flags: i32) -> R<()> {
        let ts = times.map(|t| {
            t.map(|(s, ns)| libc::timespec {
                tv_sec: s,
                tv_nsec: ns,
            })
        });
        let ptr = ts.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
        rc(unsafe { libc::utimensat(libc::AT_FDCWD, c(p).as_ptr(), ptr, flags) })
    }

    /// futimens(fd, times); `None` is NULL (both now).
    pub fn futimens(fd: i32, times: Option<[(i64, i64); 2]>) -> R<()> {
        let ts = times.map(|t| {
            t.map(|(s, ns)| libc::timespec {
                tv_sec: s,
                tv_nsec: ns,
            })
        });
        let ptr = ts.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
        rc(unsafe { libc::futimens(fd, ptr) })
    }

    /// statvfs(3): the longest name the file system takes.
    pub fn name_max(p: &Path) -> R<u64> {
        let mut sv: libc::statvfs = unsafe { std::mem::zeroed() };
        rc(unsafe { libc::statvfs(c(p).as_ptr(), &mut sv) })?;
        Ok(sv.f_namemax)
    }

    pub fn mknod(p: &Path, mode: u32, dev: u64) -> R<()> {
        rc(unsafe { libc::mknod(c(p).as_ptr(), mode, dev) })
    }

    pub fn mkfifo(p: &Path, mode: u32) -> R<()> {
        rc(unsafe { libc::mkfifo(c(p).as_ptr(), mode) })
    }

    /// posix_fallocate(3) returns the error number itself.
    pub fn posix_fallocate(fd: i32, off: i64, len: i64) -> R<()> {
        match unsafe { libc::posix_fallocate(fd, off, len) } {
            0 => Ok(()),
            e => Err(e),
        }
    }

    pub fn access(p: &Path, mode: i32) -> R<()> {
        rc(unsafe { libc::access(c(p).as_ptr(), mode) })
    }

    /// bind(2) of a new AF_UNIX stream socket at `p`.
    pub fn bind_unix(p: &Path) -> R<()> {
        let path = super::bytes(p);
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        assert!(path.len() < addr.sun_path.len(), "socket path too long");
        for (d, s) in addr.sun_path.iter_mut().zip(path) {
            *d = *s as libc::c_char;
        }
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(errno());
        }
        let r = rc(unsafe {
            libc::bind(
                fd,
                (&addr as *const libc::sockaddr_un).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            )
        });
        unsafe { libc::close(fd) };
        r
    }

    /// This thread (only) becomes `uid`/`uid` with no supplementary groups,
    /// dropping root's capabilities.
    pub fn become_user(uid: u32) {
        let id = uid as libc::c_long;
        unsafe {
            assert_eq!(
                libc::syscall(
                    libc::SYS_setgroups,
                    0 as libc::c_long,
                    std::ptr::null::<u32>()
                ),
                0,
                "setgroups"
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresgid, id, id, id),
                0,
                "setresgid"
            );
            assert_eq!(
                libc::syscall(libc::SYS_setresuid, id, id, id),
                0,
                "setresuid"
            );
        }
    }
}

fn bytes(p: &Path) -> &[u8] {
    p.as_os_str().as_bytes()
}

fn errname(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EACCES => "EACCES",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ENODATA => "ENODATA",
        libc::ETXTBSY => "ETXTBSY",
        _ => "",
    };
    format!("{name}({e})")
}

/// The process umask, read without changing it (other tests run beside).
fn umask() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .expect("Umask in /proc/self/status");
    u32::from_str_radix(line.trim(), 8).unwrap()
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

// ---- targets and soft assertions ----

/// A directory to probe (on the mount or local) and the uid calls run as.
#[derive(Clone)]
struct T {
    base: PathBuf,
    coda: bool,
    who: Option<u32>,
    fails: Arc<Mutex<Vec<String>>>,
    check: String,
}

impl T {
    fn label(&self) -> String {
        let place = if self.coda { "coda" } else { "local" };
        match self.who {
            Some(u) => format!("{place} {}/uid {u}", self.check),
            None => format!("{place} {}", self.check),
        }
    }

    fn p(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.base.clone()
        } else {
            self.base.join(rel)
        }
    }

    /// The same directory, with calls made as `uid`.
    fn as_user(&self, uid: u32) -> T {
        T {
            who: Some(uid),
            ..self.clone()
        }
    }

    /// Runs one call (as `who`) with the harness's timeout.
    fn run<X: Send + 'static>(&self, what: &str, f: impl FnOnce() -> X + Send + 'static) -> X {
        let who = self.who;
        timed_for(
            FS_TIMEOUT,
            &format!("[{}] {what}", self.label()),
            move || {
                if let Some(u) = who {
                    sys::become_user(u);
                }
                f()
            },
        )
    }

    // -- calls by path, relative to the base --

    fn open(&self, rel: &str, flags: i32, mode: u32) -> R<i32> {
        let p = self.p(rel);
        self.run(&format!("open {rel}"), move || sys::open(&p, flags, mode))
    }
    fn stat(&self, rel: &str) -> R<St> {
        let p = self.p(rel);
        self.run(&format!("stat {rel}"), move || sys::stat(&p))
    }
    fn lstat(&self, rel: &str) -> R<St> {
        let p = self.p(rel);
        self.run(&format!("lstat {rel}"), move || sys::lstat(&p))
    }
    fn mkdir(&self, rel: &str, mode: u32) -> R<()> {
        let p = self.p(rel);
        self.run(&format!("mkdir {rel}"), move || sys::mkdir(&p, mode))
    }
    fn rmdir(&self, rel: &str) -> R<()> {
        let p = self.p(rel);
        self.run(&format!("rmdir {rel}"), move || sys::rmdir(&p))
    }
    fn unlink(&self, rel: &str) -> R<()> {
        let p = self.p(rel);
        self.run(&format!("unlink {rel}"), move || sys::unlink(&p))
    }
    fn link(&self, from: &str, to: &str) -> R<()> {
        let (a, b) = (self.p(from), self.p(to));
        self.run(&format!("link {from} {to}"), move || sys::link(&a, &b))
    }
    fn symlink(&self, target: &str, rel: &str) -> R<()> {
        let (t, p) = (target.as_bytes().to_vec(), self.p(rel));
        self.run(&format!("symlink {rel}"), move || sys::symlink(&t, &p))
    }
    fn readlink(&self, rel: &str) -> R<Vec<u8>> {
        let p = self.p(rel);
        self.run(&format!("readlink {rel}"), move || sys::readlink(&p))
    }
    fn rename(&self, from: &str, to: &str) -> R<()> {
        let (a, b) = (self.p(from), self.p(to));
        self.run(&format!("rename {from} {to}"), move || sys::rename(&a, &b))
    }
    fn renameat2(&self, from: &str, to: &str, flags: u32) -> R<()> {
        let (a, b) = (self.p(from), self.p(to));
        self.run(&format!("renameat2 {from} {to}"), move || {
            sys::renameat2(&a, &b, flags)
        })
    }
    fn chmod(&self, rel: &str, mode: u32) -> R<()> {
        let p = self.p(rel);
        self.run(&format!("chmod {rel}"), move || sys::chmod(&p, mode))
    }
    fn chown(&self, rel: &str, uid: Option<u32>, gid: Option<u32>) -> R<()> {
        let p = self.p(rel);
        self.run(&format!("chown {rel}"), move || sys::chown(&p, uid, gid))
    }
    fn lchown(&self, rel: &str, uid: Option<u32>, gid: Option<u32>) -> R<()> {
        let p = self.p(rel);
        self.run(&format!("lchown {rel}"), move || sys::lchown(&p, uid, gid))
    }
    fn truncate(&self, rel: &str, len: i64) -> R<()> {
        let p = self.p(rel);
        self.run(&format!("truncate {rel}"), move || sys::truncate(&p, len))
    }
    fn utimensat(&self, rel: &str, times: Option<[(i64, i64); 2]>, flags: i32) -> R<()> {
        let p = self.p(rel);
        self.run(&format!("utimensat {rel}"), move || {
            sys::utimensat(&p, times, flags)
        })
    }
    fn mknod(&self, rel: &str, mode: u32, dev: u64) -> R<()> {
        let p = self.p(rel);
        self.run(&format!("mknod {rel}"), move || sys::mknod(&p, mode, dev))
    }
    fn mkfifo(&self, rel: &str, mode: u32) -> R<()> {
        let p = self.p(rel);
        self.run(&format!("mkfifo {rel}"), move || sys::mkfifo(&p, mode))
    }
    fn access(&self, rel: &str, mode: i32) -> R<()> {
        let p = self.p(rel);
        self.run(&format!("access {rel}"), move || sys::access(&p, mode))
    }
    fn bind_unix(&self, rel: &str) -> R<()> {
        let p = self.p(rel);
        self.run(&format!("bind {rel}"), move || sys::bind_unix(&p))
    }

    // -- calls on descriptors --

    fn close(&self, fd: i32) -> R<()> {
        self.run("close", move || sys::close(fd))
    }
    fn write(&self, fd: i32, data: &[u8]) -> R<usize> {
        let data = data.to_vec();
        self.run("write", move || sys::write(fd, &data))
    }
    fn pread(&self, fd: i32, len: usize, off: i64) -> R<Vec<u8>> {
        self.run("pread", move || sys::pread(fd, len, off))
    }
    fn lseek(&self, fd: i32, off: i64, whence: i32) -> R<i64> {
        self.run("lseek", move || sys::lseek(fd, off, whence))
    }
    fn fstat(&self, fd: i32) -> R<St> {
        self.run("fstat", move || sys::fstat(fd))
    }
    fn ftruncate(&self, fd: i32, len: i64) -> R<()> {
        self.run("ftruncate", move || sys::ftruncate(fd, len))
    }
    fn fchmod(&self, fd: i32, mode: u32) -> R<()> {
        self.run("fchmod", move || sys::fchmod(fd, mode))
    }
    fn futimens(&self, fd: i32, times: Option<[(i64, i64); 2]>) -> R<()> {
        self.run("futimens", move || sys::futimens(fd, times))
    }
    fn name_max(&self, rel: &str) -> R<u64> {
        let p = self.p(rel);
        self.run(&format!("statvfs {rel}"), move || sys::name_max(&p))
    }
    fn posix_fallocate(&self, fd: i32, off: i64, len: i64) -> R<()> {
        self.run("posix_fallocate", move || {
            sys::posix_fallocate(fd, off, len)
        })
    }

    // -- conveniences --

    /// Creates (or truncates) `rel` with `data`, mode 0644 before umask.
    fn put(&self, rel: &str, data: &[u8]) -> R<()> {
        let (p, data) = (self.p(rel), data.to_vec());
        self.run(&format!("write file {rel}"), move || {
            let fd = sys::open(&p, libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC, 0o644)?;
            let w = sys::write(fd, &data);
            let c = sys::close(fd);
            match (w, c) {
                (Ok(n), Ok(())) if n == data.len() => Ok(()),
                (Ok(_), Ok(())) => Err(libc::EIO),
                (Err(e), _) | (_, Err(e)) => Err(e),
            }
        })
    }

    /// The whole contents of `rel`.
    fn get(&self, rel: &str) -> R<Vec<u8>> {
        let p = self.p(rel);
        self.run(&format!("read file {rel}"), move || {
            let fd = sys::open(&p, libc::O_RDONLY, 0)?;
            let r = sys::pread(fd, 1 << 20, 0);
            sys::close(fd)?;
            r
        })
    }

    /// The names in a directory, without `.` and `..`.
    fn names(&self, rel: &str) -> R<Vec<String>> {
        let p = self.p(rel);
        self.run(&format!("readdir {rel}"), move || {
            let d = std::fs::read_dir(&p).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            let mut v = Vec::new();
            for e in d {
                let e = e.map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
                v.push(e.file_name().to_string_lossy().into_owned());
            }
            v.sort();
            Ok(v)
        })
    }

    // -- soft assertions: a failure is recorded, the test goes on --

    fn fail(&self, msg: String) {
        self.fails
            .lock()
            .unwrap()
            .push(format!("[{}] {msg}", self.label()));
    }

    /// The call must succeed; its value.
    fn ok<X>(&self, what: &str, r: R<X>) -> Option<X> {
        match r {
            Ok(x) => Some(x),
            Err(e) => {
                self.fail(format!("{what}: failed with {}, want success", errname(e)));
                None
            }
        }
    }

    /// The call must fail with `want`.
    fn errno<X: Debug>(&self, what: &str, r: R<X>, want: i32) -> bool {
        self.errno_in(what, r, &[want])
    }

    /// The call must fail with one of `wants`.
    fn errno_in<X: Debug>(&self, what: &str, r: R<X>, wants: &[i32]) -> bool {
        let want: Vec<String> = wants.iter().map(|&e| errname(e)).collect();
        let want = want.join(" or ");
        match r {
            Ok(x) => {
                self.fail(format!("{what}: succeeded ({x:?}), want {want}"));
                false
            }
            Err(e) if wants.contains(&e) => true,
            Err(e) => {
                self.fail(format!("{what}: errno {}, want {want}", errname(e)));
                false
            }
        }
    }

    fn eq<X: PartialEq + Debug>(&self, what: &str, got: X, want: X) -> bool {
        if got == want {
            true
        } else {
            self.fail(format!("{what}: got {got:?}, want {want:?}"));
            false
        }
    }

    fn yes(&self, what: &str, cond: bool, detail: impl FnOnce() -> String) -> bool {
        if !cond {
            self.fail(format!("{what}: {}", detail()));
        }
        cond
    }

    /// Nothing is at `rel` (lstat gives ENOENT).
    fn absent(&self, what: &str, rel: &str) {
        match self.lstat(rel) {
            Err(libc::ENOENT) => {}
            Err(e) => self.fail(format!("{what}: lstat {rel} gave {}", errname(e))),
            Ok(st) => self.fail(format!("{what}: {rel} was left behind: {st:?}")),
        }
    }

    /// lstat that must succeed.
    fn st(&self, rel: &str) -> Option<St> {
        self.ok(&format!("lstat {rel}"), self.lstat(rel))
    }

    /// Mode (permission bits) of `rel` must be `want`.
    fn mode_is(&self, what: &str, rel: &str, want: u32) {
        if let Some(st) = self.st(rel) {
            if st.mode() != want {
                self.fail(format!(
                    "{what}: mode of {rel} {:o}, want {want:o}",
                    st.mode()
                ));
            }
        }
    }
}

/// The checks of one test, run on a local directory and on the mount.
struct Probe {
    fails: Arc<Mutex<Vec<String>>>,
    local: tempfile::TempDir,
}

impl Probe {
    fn new() -> Probe {
        let local = tempfile::Builder::new()
            .prefix("pjd-local.")
            .tempdir()
            .expect("local scratch dir");
        // Unprivileged uids must be able to reach the local directories.
        sys::chmod(local.path(), 0o755).unwrap();
        Probe {
            fails: Arc::new(Mutex::new(Vec::new())),
            local,
        }
    }

    fn target(&self, base: PathBuf, coda: bool, check: &str) -> T {
        T {
            base,
            coda,
            who: None,
            fails: self.fails.clone(),
            check: check.to_string(),
        }
    }

    /// A fresh directory `sub` in the local scratch directory.
    fn local(&self, sub: &str) -> T {
        let base = self.local.path().join(sub);
        sys::mkdir(&base, 0o755).unwrap();
        sys::chmod(&base, 0o755).unwrap();
        self.target(base, false, sub)
    }

    /// A fresh directory `sub` at the top of the mount (made by root, with
    /// admin's token).
    fn coda(&self, c: &Cell, sub: &str) -> T {
        let base = c.v.path(sub);
        fsx::create_dir(&base).unwrap_or_else(|e| panic!("mkdir {sub} on the mount: {e}"));
        self.target(base, true, sub)
    }

    /// Runs `f` on a local directory, then on the mount.
    fn both(&self, c: &Cell, sub: &str, f: impl Fn(&T)) {
        f(&self.local(sub));
        f(&self.coda(c, sub));
    }

    /// Runs `f` on the mount only: where Coda deliberately differs.
    fn coda_only(&self, c: &Cell, sub: &str, f: impl Fn(&T)) {
        f(&self.coda(c, sub));
    }

    /// Fails the test with every recorded failure, local ones first.
    fn finish(self, c: &Cell) {
        let fails = self.fails.lock().unwrap().clone();
        if fails.is_empty() {
            return;
        }
        let (local, coda): (Vec<_>, Vec<_>) = fails.iter().partition(|f| f.starts_with("[local"));
        let mut msg = String::new();
        if !local.is_empty() {
            msg += "the LOCAL directory disagrees (the expectation itself is wrong):\n";
            for f in &local {
                msg += &format!("  {f}\n");
            }
        }
        if !coda.is_empty() {
            msg += &format!("{} check(s) failed on the mount:\n", coda.len());
            for f in &coda {
                msg += &format!("  {f}\n");
            }
        }
        eprintln!("{msg}");
        eprintln!("--- venus (last output) ---\n{}", c.v.log_tail());
        panic!("{msg}");
    }
}

const O_RW_CREAT: i32 = libc::O_RDWR | libc::O_CREAT;
const O_W_CREAT: i32 = libc::O_WRONLY | libc::O_CREAT;

// ---- open(2) ----

#[test]
fn open_creat_excl_trunc_append_and_flag_errors() {
    let c = cell();
    let r = Probe::new();
    let um = umask();

    // O_CREAT: the mode (less the umask), a regular file of one link; a
    // file created mode 0 is still written through the descriptor.
    r.both(&c, "creat", |t| {
        if let Some(fd) = t.ok("open O_CREAT 0640", t.open("f", O_W_CREAT, 0o640)) {
            t.ok("close", t.close(fd));
        }
        if let Some(st) = t.st("f") {
            t.eq("new file type", st.kind(), libc::S_IFREG);
            t.eq("new file mode", st.mode(), 0o640 & !um);
            t.eq("new file nlink", st.nlink(), 1);
            t.eq("new file size", st.size(), 0);
        }
        if let Some(fd) = t.ok("open O_CREAT mode 0", t.open("zero", O_RW_CREAT, 0)) {
            t.ok("write to a mode-0 file", t.write(fd, b"abc"));
            t.ok("close", t.close(fd));
        }
        t.mode_is("created with mode 0", "zero", 0);
        t.eq(
            "root reads a mode-0 file",
            t.get("zero").ok(),
            Some(b"abc".to_vec()),
        );
    });

    // O_EXCL: any existing name, a dangling symlink included, is EEXIST and
    // nothing is created or changed.
    r.both(&c, "excl", |t| {
        let excl = O_W_CREAT | libc::O_EXCL;
        t.ok("put f", t.put("f", b"keep"));
        t.errno("O_EXCL on a file", t.open("f", excl, 0o644), libc::EEXIST);
        t.eq("file intact", t.get("f").ok(), Some(b"keep".to_vec()));
        t.ok("symlink", t.symlink("nowhere", "dangling"));
        t.errno(
            "O_EXCL on a dangling symlink",
            t.open("dangling", excl, 0o644),
            libc::EEXIST,
        );
        t.absent("O_EXCL through a dangling symlink", "nowhere");
        t.ok("symlink", t.symlink("f", "sl"));
        t.errno(
            "O_EXCL on a symlink",
            t.open("sl", excl, 0o644),
            libc::EEXIST,
        );
        t.ok("mkdir", t.mkdir("d", 0o755));
        t.errno(
            "O_CREAT|O_EXCL on a directory",
            t.open("d", libc::O_RDONLY | libc::O_CREAT | libc::O_EXCL, 0o644),
            libc::EEXIST,
        );
        t.errno(
            "O_CREAT on a directory",
            t.open("d", libc::O_RDONLY | libc::O_CREAT, 0o644),
            libc::EISDIR,
        );
    });

    // O_CREAT through a dangling symlink creates its target; O_NOFOLLOW
    // refuses a symlink with ELOOP.
    r.both(&c, "dangling", |t| {
        t.ok("symlink", t.symlink("target", "ln"));
        if let Some(fd) = t.ok(
            "O_CREAT through a dangling symlink",
            t.open("ln", O_W_CREAT, 0o644),
        ) {
            t.ok("write", t.write(fd, b"x"));
            t.ok("close", t.close(fd));
        }
        if let Some(st) = t.st("target") {
            t.eq("created target type", st.kind(), libc::S_IFREG);
            t.eq("created target size", st.size(), 1);
        }
        if let Some(st) = t.st("ln") {
            t.eq("the link stays a link", st.kind(), libc::S_IFLNK);
        }
        t.errno(
            "O_NOFOLLOW on a symlink",
            t.open("ln", libc::O_RDONLY | libc::O_NOFOLLOW, 0),
            libc::ELOOP,
        );
        t.errno(
            "O_CREAT|O_NOFOLLOW on a symlink",
            t.open("ln", O_W_CREAT | libc::O_NOFOLLOW, 0o644),
            libc::ELOOP,
        );
    });

    // Path and type errors.
    r.both(&c, "patherr", |t| {
        t.ok("put f", t.put("f", b"f"));
        t.errno(
            "O_DIRECTORY on a file",
            t.open("f", libc::O_RDONLY | libc::O_DIRECTORY, 0),
            libc::ENOTDIR,
        );
        t.errno(
            "a file with a trailing slash",
            t.open("f/", libc::O_RDONLY, 0),
            libc::ENOTDIR,
        );
        t.errno(
            "O_CREAT under a file",
            t.open("f/x", O_W_CREAT, 0o644),
            libc::ENOTDIR,
        );
        t.errno(
            "O_CREAT under a missing directory",
            t.open("missing/x", O_W_CREAT, 0o644),
            libc::ENOENT,
        );
        t.errno(
            "O_CREAT with a trailing slash",
            t.open("new/", O_W_CREAT, 0o644),
            libc::EISDIR,
        );
        t.absent("O_CREAT with a trailing slash", "new");
        t.ok("mkdir", t.mkdir("d", 0o755));
        if let Some(fd) = t.ok(
            "open a directory O_RDONLY|O_DIRECTORY",
            t.open("d", libc::O_RDONLY | libc::O_DIRECTORY, 0),
        ) {
            t.ok("close", t.close(fd));
        }
    });

    // O_TRUNC empties a file and moves its mtime.
    r.both(&c, "trunc", |t| {
        t.ok("put f", t.put("f", &pattern(100, 1)));
        t.ok(
            "utimensat to 2001",
            t.utimensat("f", Some([(1_000_000_000, 0); 2]), 0),
        );
        if let Some(fd) = t.ok(
            "open O_TRUNC",
            t.open("f", libc::O_WRONLY | libc::O_TRUNC, 0),
        ) {
            if let Some(st) = t.ok("fstat after O_TRUNC", t.fstat(fd)) {
                t.eq("size through the fd after O_TRUNC", st.size(), 0);
            }
            t.ok("close", t.close(fd));
        }
        if let Some(st) = t.st("f") {
            t.eq("size after O_TRUNC", st.size(), 0);
            t.yes("O_TRUNC moves mtime", st.mtime().0 > 1_000_000_000, || {
                format!("mtime {:?} still the 2001 value", st.mtime())
            });
        }
        t.eq("contents after O_TRUNC", t.get("f").ok(), Some(vec![]));
    });

    // O_APPEND writes at the end whatever the offset.
    r.both(&c, "append", |t| {
        t.ok("put f", t.put("f", b"hello"));
        if let Some(fd) = t.ok(
            "open O_APPEND",
            t.open("f", libc::O_WRONLY | libc::O_APPEND, 0),
        ) {
            t.ok("lseek 0", t.lseek(fd, 0, libc::SEEK_SET));
            t.ok("write", t.write(fd, b"XY"));
            t.ok("lseek 1", t.lseek(fd, 1, libc::SEEK_SET));
            t.ok("write", t.write(fd, b"Z"));
            if let Some(st) = t.ok("fstat", t.fstat(fd)) {
                t.eq("size through the fd", st.size(), 8);
            }
            t.ok("close", t.close(fd));
        }
        t.eq(
            "O_APPEND contents",
            t.get("f").ok(),
            Some(b"helloXYZ".to_vec()),
        );
    });

    // A file open for writing keeps its data across a rename, and two
    // descriptors of one file see each other's writes.
    r.both(&c, "shared_fd", |t| {
        if let Some(fd) = t.ok("create", t.open("f", O_W_CREAT, 0o644)) {
            t.ok("write", t.write(fd, b"one"));
            t.ok("rename while open", t.rename("f", "g"));
            t.ok("write after the rename", t.write(fd, b"two"));
            t.ok("close", t.close(fd));
        }
        t.absent("renamed while open", "f");
        t.eq(
            "written across a rename",
            t.get("g").ok(),
            Some(b"onetwo".to_vec()),
        );
        let a = t.open("h", O_RW_CREAT, 0o644);
        let b = t.open("h", libc::O_RDWR, 0);
        if let (Some(a), Some(b)) = (t.ok("open a", a), t.ok("open b", b)) {
            t.ok("write a", t.write(a, b"AAAA"));
            t.eq(
                "b reads a's write",
                t.pread(b, 10, 0).ok(),
                Some(b"AAAA".to_vec()),
            );
            t.ok("close a", t.close(a));
            t.ok("write b", t.write(b, b"B"));
            t.ok("close b", t.close(b));
        }
        t.eq("both writes", t.get("h").ok(), Some(b"BAAA".to_vec()));
    });

    // A program runs from the file system, and its file cannot be opened
    // for writing or truncated while it runs (ETXTBSY, pjdfstest open/20,
    // truncate/11).
    r.both(&c, "txtbsy", |t| {
        let exe = std::fs::read("/bin/sleep").expect("/bin/sleep");
        t.ok("copy sleep", t.put("sl", &exe));
        t.ok("chmod 0755", t.chmod("sl", 0o755));
        let p = t.p("sl");
        let child = t.run("exec a program from the directory", move || {
            Command::new(&p).arg("10").spawn()
        });
        let Some(mut child) = t.ok("exec", child.map_err(|e| e.raw_os_error().unwrap_or(0))) else {
            return;
        };
        // Until the kernel has mapped the new program.
        let pid = child.id();
        let mapped = (0..200).any(|_| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe"));
            if exe.is_ok_and(|e| e.ends_with("sl")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
            false
        });
        t.yes("the program runs", mapped, || "never exec'd".into());
        t.errno(
            "open a running program for writing",
            t.open("sl", libc::O_WRONLY, 0),
            libc::ETXTBSY,
        );
        t.errno(
            "truncate a running program",
            t.truncate("sl", 0),
            libc::ETXTBSY,
        );
        let _ = child.kill();
        let _ = child.wait();
        t.eq(
            "the program intact",
            t.st("sl").map(|s| s.size()),
            Some(exe.len() as i64),
        );
    });

    // Sizes are right while the file is open, holes read as zeros.
    r.both(&c, "holes", |t| {
        let data = pattern(1000, 2);
        if let Some(fd) = t.ok("create", t.open("f", O_RW_CREAT, 0o644)) {
            t.ok("write", t.write(fd, &data));
            if let Some(st) = t.ok("fstat", t.fstat(fd)) {
                t.eq("fstat size while open", st.size(), 1000);
            }
            if let Some(st) = t.st("f") {
                t.eq("stat size while open", st.size(), 1000);
            }
            t.ok("lseek past the end", t.lseek(fd, 5000, libc::SEEK_SET));
            t.ok("write past the end", t.write(fd, b"z"));
            if let Some(st) = t.ok("fstat", t.fstat(fd)) {
                t.eq("fstat size after a write past the end", st.size(), 5001);
            }
            t.eq(
                "a hole reads as zeros",
                t.pread(fd, 10, 2000).ok(),
                Some(vec![0u8; 10]),
            );
            t.ok("close", t.close(fd));
        }
        if let Some(back) = t.ok("read back", t.get("f")) {
            let mut want = data.clone();
            want.resize(5000, 0);
            want.push(b'z');
            t.yes("contents with a hole", back == want, || {
                format!("{} bytes read, not the 5001 written", back.len())
            });
        }
    });

    r.finish(&c);
}

// ---- ctime and mtime after each operation ----

/// The objects the times test changes, made before the pause.
fn times_setup(t: &T) {
    for f in [
        "chmod_f", "chown_f", "trunc_f", "ftrunc_f", "write_f", "otrunc_f", "utime_f", "fchmod_f",
        "falloc_f",
    ] {
        t.ok(&format!("put {f}"), t.put(f, &pattern(100, 3)));
    }
    for d in [
        "chmod_d",
        "link_d",
        "unlink_d",
        "rn_src",
        "rn_dst",
        "rn_in",
        "mkdir_d",
        "rmdir_d",
        "symlink_d",
        "create_d",
    ] {
        t.ok(&format!("mkdir {d}"), t.mkdir(d, 0o755));
    }
    t.ok("put", t.put("link_d/a", b"a"));
    t.ok("put", t.put("unlink_d/a", b"a"));
    t.ok("link", t.link("unlink_d/a", "unlink_d/b"));
    t.ok("put", t.put("rn_src/f", b"f"));
    t.ok("mkdir", t.mkdir("rn_src/dd", 0o755));
    t.ok("put", t.put("rn_in/x", b"x"));
    t.ok("mkdir", t.mkdir("rmdir_d/sub", 0o755));
}

/// Every object's lstat before the operations.
type Snapshot = Vec<(String, St)>;

fn times_snapshot(t: &T) -> Snapshot {
    let names = [
        "chmod_f",
        "chown_f",
        "trunc_f",
        "ftrunc_f",
        "write_f",
        "otrunc_f",
        "utime_f",
        "fchmod_f",
        "falloc_f",
        "chmod_d",
        "link_d",
        "link_d/a",
        "unlink_d",
        "unlink_d/a",
        "rn_src",
        "rn_src/f",
        "rn_src/dd",
        "rn_dst",
        "rn_in",
        "rn_in/x",
        "mkdir_d",
        "rmdir_d",
        "symlink_d",
        "create_d",
    ];
    names
        .iter()
        .filter_map(|n| t.st(n).map(|s| (n.to_string(), s)))
        .collect()
}

fn times_ops(t: &T) {
    t.ok("chmod", t.chmod("chmod_f", 0o600));
    t.ok("chown", t.chown("chown_f", Some(4321), None));
    t.ok("truncate", t.truncate("trunc_f", 10));
    if let Some(fd) = t.ok("open", t.open("ftrunc_f", libc::O_RDWR, 0)) {
        t.ok("ftruncate", t.ftruncate(fd, 10));
        t.ok("close", t.close(fd));
    }
    if let Some(fd) = t.ok("open", t.open("write_f", libc::O_WRONLY, 0)) {
        t.ok("write", t.write(fd, b"more"));
        t.ok("close", t.close(fd));
    }
    if let Some(fd) = t.ok(
        "open O_TRUNC",
        t.open("otrunc_f", libc::O_WRONLY | libc::O_TRUNC, 0),
    ) {
        t.ok("close", t.close(fd));
    }
    t.ok(
        "utimensat",
        t.utimensat("utime_f", Some([(1_000_000_000, 0); 2]), 0),
    );
    if let Some(fd) = t.ok("open", t.open("fchmod_f", libc::O_RDONLY, 0)) {
        t.ok("fchmod", t.fchmod(fd, 0o640));
        t.ok("close", t.close(fd));
    }
    if let Some(fd) = t.ok("open", t.open("falloc_f", libc::O_RDWR, 0)) {
        t.ok("posix_fallocate", t.posix_fallocate(fd, 0, 8192));
        t.ok("close", t.close(fd));
    }
    t.ok("chmod dir", t.chmod("chmod_d", 0o700));
    t.ok("link", t.link("link_d/a", "link_d/b"));
    t.ok("unlink", t.unlink("unlink_d/b"));
    t.ok("rename file", t.rename("rn_src/f", "rn_dst/f"));
    t.ok("rename dir", t.rename("rn_src/dd", "rn_dst/dd"));
    t.ok("rename within", t.rename("rn_in/x", "rn_in/y"));
    t.ok("mkdir", t.mkdir("mkdir_d/new", 0o755));
    t.ok("rmdir", t.rmdir("rmdir_d/sub"));
    t.ok("symlink", t.symlink("t", "symlink_d/l"));
    t.ok("create", t.put("create_d/new", b""));
}

fn times_verify(t: &T, before: &Snapshot) {
    let old = |n: &str| before.iter().find(|(m, _)| m == n).map(|(_, s)| *s);
    // (object before, object after, what, ctime must advance, mtime: advance / same / don't care)
    #[derive(Clone, Copy, PartialEq)]
    enum M {
        Up,
        Same,
        Any,
    }
    let expect: &[(&str, &str, &str, M)] = &[
        ("chmod_f", "chmod_f", "chmod", M::Same),
        ("chown_f", "chown_f", "chown", M::Same),
        ("trunc_f", "trunc_f", "truncate", M::Up),
        ("ftrunc_f", "ftrunc_f", "ftruncate", M::Up),
        ("write_f", "write_f", "write", M::Up),
        ("otrunc_f", "otrunc_f", "open O_TRUNC", M::Up),
        ("utime_f", "utime_f", "utimensat", M::Any),
        ("fchmod_f", "fchmod_f", "fchmod", M::Same),
        ("falloc_f", "falloc_f", "posix_fallocate", M::Up),
        ("chmod_d", "chmod_d", "chmod of a directory", M::Same),
        ("link_d", "link_d", "link: the directory", M::Up),
        ("link_d/a", "link_d/a", "link: the file", M::Same),
        ("unlink_d", "unlink_d", "unlink: the directory", M::Up),
        (
            "unlink_d/a",
            "unlink_d/a",
            "unlink: the other link",
            M::Same,
        ),
        ("rn_src", "rn_src", "rename: the source directory", M::Up),
        ("rn_dst", "rn_dst", "rename: the target directory", M::Up),
        ("rn_src/f", "rn_dst/f", "rename: the moved file", M::Same),
        (
            "rn_src/dd",
            "rn_dst/dd",
            "rename: the moved directory",
            M::Any,
        ),
        ("rn_in", "rn_in", "rename within a directory", M::Up),
        ("rn_in/x", "rn_in/y", "rename within: the file", M::Same),
        ("mkdir_d", "mkdir_d", "mkdir: the parent", M::Up),
        ("rmdir_d", "rmdir_d", "rmdir: the parent", M::Up),
        ("symlink_d", "symlink_d", "symlink: the parent", M::Up),
        ("create_d", "create_d", "create: the parent", M::Up),
    ];
    for &(was, is, what, m) in expect {
        let (Some(b), Some(a)) = (old(was), t.st(is)) else {
            continue;
        };
        t.yes(
            &format!("{what} advances ctime of {is}"),
            a.ctime() > b.ctime(),
            || format!("ctime {:?} -> {:?}", b.ctime(), a.ctime()),
        );
        match m {
            M::Up => {
                t.yes(
                    &format!("{what} advances mtime of {is}"),
                    a.mtime() > b.mtime(),
                    || format!("mtime {:?} -> {:?}", b.mtime(), a.mtime()),
                );
            }
            M::Same => {
                t.yes(
                    &format!("{what} keeps mtime of {is}"),
                    a.mtime() == b.mtime(),
                    || format!("mtime {:?} -> {:?}", b.mtime(), a.mtime()),
                );
            }
            M::Any => {}
        }
    }
    // utimensat set the mtime it was given.
    if let Some(a) = t.st("utime_f") {
        t.eq("utimensat mtime", a.mtime(), (1_000_000_000, 0));
    }
}

#[test]
fn ctime_and_mtime_follow_every_operation() {
    let c = cell();
    let r = Probe::new();
    let local = r.local("times");
    let coda = r.coda(&c, "times");
    times_setup(&local);
    times_setup(&coda);
    let (lb, cb) = (times_snapshot(&local), times_snapshot(&coda));
    // Past a whole second, so file systems of any granularity show a change.
    std::thread::sleep(Duration::from_millis(1100));
    times_ops(&local);
    times_ops(&coda);
    times_verify(&local, &lb);
    times_verify(&coda, &cb);
    r.finish(&c);
}

// ---- link(2), unlink(2) ----

#[test]
fn link_counts_exdev_and_unlink_of_open_files() {
    let c = cell();
    let r = Probe::new();

    // Link counts follow link, unlink and rename of every name.
    r.both(&c, "counts", |t| {
        t.ok("put a", t.put("a", b"data"));
        t.ok("link a b", t.link("a", "b"));
        t.ok("link a c", t.link("a", "c"));
        let ino = t.st("a").map(|s| s.ino());
        for n in ["a", "b", "c"] {
            if let Some(st) = t.st(n) {
                t.eq(&format!("nlink of {n} with 3 names"), st.nlink(), 3);
                t.eq(&format!("inode of {n}"), Some(st.ino()), ino);
            }
        }
        t.ok("unlink b", t.unlink("b"));
        if let Some(st) = t.st("a") {
            t.eq("nlink after unlink", st.nlink(), 2);
        }
        t.ok("rename c d", t.rename("c", "d"));
        if let Some(st) = t.st("d") {
            t.eq("nlink after rename", st.nlink(), 2);
        }
        // Renaming one name of a file onto another name of the same file
        // does nothing (POSIX): both names remain.
        t.ok("rename a d (same inode)", t.rename("a", "d"));
        t.ok("a stays after a same-inode rename", t.lstat("a"));
        if let Some(st) = t.st("d") {
            t.eq("nlink after a same-inode rename", st.nlink(), 2);
        }
        t.ok("unlink a", t.unlink("a"));
        if let Some(st) = t.st("d") {
            t.eq("nlink of the last name", st.nlink(), 1);
        }
        t.eq(
            "contents via the last name",
            t.get("d").ok(),
            Some(b"data".to_vec()),
        );
    });

    // Errors.
    r.both(&c, "errors", |t| {
        t.ok("put f", t.put("f", b"f"));
        t.ok("mkdir d", t.mkdir("d", 0o755));
        t.errno("link a missing file", t.link("missing", "x"), libc::ENOENT);
        t.errno("link a directory", t.link("d", "d2"), libc::EPERM);
        t.absent("link a directory", "d2");
        t.errno(
            "link under a missing dir",
            t.link("f", "missing/x"),
            libc::ENOENT,
        );
        t.errno("link under a file", t.link("f", "f/x"), libc::ENOTDIR);
        t.errno("link onto a directory", t.link("f", "d"), libc::EEXIST);
        t.errno("unlink a missing name", t.unlink("missing"), libc::ENOENT);
        t.errno(
            "unlink with a trailing slash",
            t.unlink("f/"),
            libc::ENOTDIR,
        );
        t.ok("f stays", t.lstat("f"));
    });

    // link(2) does not follow a symlink: the new name is the link itself.
    r.both(&c, "symlink", |t| {
        t.ok("put f", t.put("f", b"f"));
        t.ok("symlink s -> f", t.symlink("f", "s"));
        t.ok("link s s2", t.link("s", "s2"));
        if let (Some(s), Some(s2)) = (t.st("s"), t.st("s2")) {
            t.eq("link of a symlink: type", s2.kind(), libc::S_IFLNK);
            t.eq("link of a symlink: inode", s2.ino(), s.ino());
            t.eq("link of a symlink: nlink", s2.nlink(), 2);
        }
        t.eq("readlink s2", t.readlink("s2").ok(), Some(b"f".to_vec()));
        if let Some(st) = t.st("f") {
            t.eq("the target keeps one link", st.nlink(), 1);
        }
    });

    // An open file lives on after its last unlink: fstat says nlink 0,
    // reads and writes through the descriptor go on (pjdfstest unlink/14).
    r.both(&c, "open_unlinked", |t| {
        if let Some(fd) = t.ok("create", t.open("f", O_RW_CREAT, 0o644)) {
            t.ok("write", t.write(fd, b"before"));
            t.ok("unlink", t.unlink("f"));
            if let Some(st) = t.ok("fstat after unlink", t.fstat(fd)) {
                t.eq("nlink of an open unlinked file", st.nlink(), 0);
            }
            t.ok("write after unlink", t.write(fd, b"+after"));
            t.eq(
                "read after unlink",
                t.pread(fd, 100, 0).ok(),
                Some(b"before+after".to_vec()),
            );
            t.ok("close", t.close(fd));
        }
        t.absent("unlinked while open", "f");
        t.eq("listing after unlink", t.names("").ok(), Some(vec![]));
    });

    // Coda links within one directory only: across directories link(2) is
    // EXDEV (as between file systems), and nothing is left behind.
    r.coda_only(&c, "xdev", |t| {
        t.ok("mkdir d1", t.mkdir("d1", 0o755));
        t.ok("mkdir d2", t.mkdir("d2", 0o755));
        t.ok("put d1/f", t.put("d1/f", b"f"));
        t.errno(
            "link into another directory",
            t.link("d1/f", "d2/g"),
            libc::EXDEV,
        );
        t.absent("a cross-directory link", "d2/g");
        t.errno("link into the parent", t.link("d1/f", "g"), libc::EXDEV);
        t.absent("a cross-directory link", "g");
        if let Some(st) = t.st("d1/f") {
            t.eq("nlink after refused links", st.nlink(), 1);
        }
        t.eq("d2 stays empty", t.names("d2").ok(), Some(vec![]));
        // Nor may a renamed file with several links leave its directory
        // (its links would then span two directories).
        t.ok("link d1/f d1/h", t.link("d1/f", "d1/h"));
        t.errno(
            "rename a multiply-linked file to another directory",
            t.rename("d1/f", "d2/f"),
            libc::EXDEV,
        );
        t.absent("a refused rename", "d2/f");
        t.ok(
            "rename a multiply-linked file within its directory",
            t.rename("d1/f", "d1/f2"),
        );
        t.eq(
            "nlink after the rename",
            t.st("d1/f2").map(|s| s.nlink()),
            Some(2),
        );
    });

    r.finish(&c);
}

// ---- rename(2) ----

#[test]
fn rename_errors_and_directory_moves() {
    let c = cell();
    let r = Probe::new();

    // A directory cannot move into itself or below itself.
    r.both(&c, "into_self", |t| {
        t.ok("mkdir", t.mkdir("d", 0o755));
        t.ok("mkdir", t.mkdir("d/sub", 0o755));
        t.errno("rename d d/x", t.rename("d", "d/x"), libc::EINVAL);
        t.errno("rename d d/sub/x", t.rename("d", "d/sub/x"), libc::EINVAL);
        t.errno("rename d onto d/sub", t.rename("d", "d/sub"), libc::EINVAL);
        t.ok("d stays", t.lstat("d/sub"));
    });

    // File onto directory and back; a directory replaces an empty one.
    r.both(&c, "types", |t| {
        t.ok("put f", t.put("f", b"f"));
        t.ok("mkdir d", t.mkdir("d", 0o755));
        t.ok("mkdir e", t.mkdir("e", 0o755));
        t.ok("put d/inner", t.put("d/inner", b"i"));
        t.errno(
            "rename a file onto a directory",
            t.rename("f", "e"),
            libc::EISDIR,
        );
        t.errno(
            "rename a directory onto a file",
            t.rename("d", "f"),
            libc::ENOTDIR,
        );
        let ino = t.st("d").map(|s| s.ino());
        t.ok("rename a directory onto an empty one", t.rename("d", "e"));
        t.absent("renamed directory", "d");
        t.eq("the moved directory", t.st("e").map(|s| s.ino()), ino);
        t.eq("its contents", t.get("e/inner").ok(), Some(b"i".to_vec()));
        t.ok("rename a file onto itself", t.rename("f", "f"));
        t.eq(
            "the file after renaming onto itself",
            t.get("f").ok(),
            Some(b"f".to_vec()),
        );
    });

    // Moving a directory: link counts of both parents, and `..` follows.
    r.both(&c, "dotdot", |t| {
        t.ok("mkdir a", t.mkdir("a", 0o755));
        t.ok("mkdir b", t.mkdir("b", 0o755));
        t.ok("mkdir a/m", t.mkdir("a/m", 0o755));
        t.eq(
            "nlink of a with a subdirectory",
            t.st("a").map(|s| s.nlink()),
            Some(3),
        );
        t.eq("nlink of b", t.st("b").map(|s| s.nlink()), Some(2));
        t.ok("rename a/m b/m", t.rename("a/m", "b/m"));
        t.eq(
            "nlink of the old parent",
            t.st("a").map(|s| s.nlink()),
            Some(2),
        );
        t.eq(
            "nlink of the new parent",
            t.st("b").map(|s| s.nlink()),
            Some(3),
        );
        t.eq(
            "nlink of the moved directory",
            t.st("b/m").map(|s| s.nlink()),
            Some(2),
        );
        t.eq(
            ".. of the moved directory",
            t.stat("b/m/..").ok().map(|s| s.ino()),
            t.st("b").map(|s| s.ino()),
        );
        // Over an existing empty directory in another parent.
        t.ok("mkdir a/m2", t.mkdir("a/m2", 0o755));
        t.ok("rename b/m a/m2", t.rename("b/m", "a/m2"));
        t.eq(
            "nlink of b after the move back",
            t.st("b").map(|s| s.nlink()),
            Some(2),
        );
        t.eq(
            "nlink of a after the replace",
            t.st("a").map(|s| s.nlink()),
            Some(3),
        );
    });

    // Errors leave everything as it was.
    r.both(&c, "errors", |t| {
        t.ok("put f", t.put("f", b"f"));
        t.ok("put g", t.put("g", b"g"));
        t.errno(
            "rename a missing name",
            t.rename("missing", "x"),
            libc::ENOENT,
        );
        t.errno(
            "rename into a missing dir",
            t.rename("f", "missing/x"),
            libc::ENOENT,
        );
        t.errno("rename under a file", t.rename("f", "g/x"), libc::ENOTDIR);
        let long = "n".repeat(256);
        t.errno(
            "rename to a 256-byte name",
            t.rename("f", &long),
            libc::ENAMETOOLONG,
        );
        t.eq("f stays", t.get("f").ok(), Some(b"f".to_vec()));
        t.eq(
            "names",
            t.names("").ok(),
            Some(vec!["f".into(), "g".into()]),
        );
    });

    // Replacing a file with other links drops one of its links only.
    r.both(&c, "replace_linked", |t| {
        t.ok("put a", t.put("a", b"a"));
        t.ok("put b", t.put("b", b"b"));
        t.ok("link b b2", t.link("b", "b2"));
        t.ok("rename a b", t.rename("a", "b"));
        t.eq(
            "b2 keeps the old contents",
            t.get("b2").ok(),
            Some(b"b".to_vec()),
        );
        t.eq(
            "nlink of the replaced file",
            t.st("b2").map(|s| s.nlink()),
            Some(1),
        );
        t.eq("b is the moved file", t.get("b").ok(), Some(b"a".to_vec()));
    });

    // A symlink moves as itself.
    r.both(&c, "symlink", |t| {
        t.ok("symlink", t.symlink("some/target", "s"));
        t.ok("rename s t", t.rename("s", "t"));
        t.eq(
            "readlink after rename",
            t.readlink("t").ok(),
            Some(b"some/target".to_vec()),
        );
        t.eq(
            "type after rename",
            t.st("t").map(|s| s.kind()),
            Some(libc::S_IFLNK),
        );
    });

    // renameat2(RENAME_NOREPLACE): Linux, not POSIX; a file system may say
    // EINVAL (not offered), but must then change nothing.
    r.both(&c, "noreplace", |t| {
        t.ok("put a", t.put("a", b"a"));
        t.ok("put b", t.put("b", b"b"));
        const NOREPLACE: u32 = 1;
        t.errno_in(
            "RENAME_NOREPLACE onto a file",
            t.renameat2("a", "b", NOREPLACE),
            &[libc::EEXIST, libc::EINVAL],
        );
        t.eq("a intact", t.get("a").ok(), Some(b"a".to_vec()));
        t.eq("b intact", t.get("b").ok(), Some(b"b".to_vec()));
        match t.renameat2("a", "c", NOREPLACE) {
            Ok(()) => {
                t.absent("RENAME_NOREPLACE source", "a");
                t.eq(
                    "RENAME_NOREPLACE target",
                    t.get("c").ok(),
                    Some(b"a".to_vec()),
                );
            }
            Err(libc::EINVAL) => {
                t.ok("a stays after EINVAL", t.lstat("a"));
                t.absent("RENAME_NOREPLACE refused", "c");
            }
            Err(e) => t.fail(format!("RENAME_NOREPLACE to a new name: {}", errname(e))),
        }
    });

    r.finish(&c);
}

// ---- mkdir(2), rmdir(2), symlink(2), readlink(2) ----

#[test]
fn mkdir_rmdir_and_symlink_details() {
    let c = cell();
    let r = Probe::new();
    let um = umask();

    r.both(&c, "mkdir", |t| {
        t.ok("mkdir 0755", t.mkdir("d1", 0o755));
        t.mode_is("mkdir 0755", "d1", 0o755 & !um);
        t.ok("mkdir 01777", t.mkdir("d2", 0o1777));
        t.mode_is("mkdir keeps the sticky bit", "d2", 0o1777 & !um);
        t.ok("mkdir 0", t.mkdir("d3", 0));
        t.mode_is("mkdir 0", "d3", 0);
        if let Some(st) = t.st("d1") {
            t.eq("a new directory's type", st.kind(), libc::S_IFDIR);
            t.eq("a new directory's nlink", st.nlink(), 2);
        }
        // The parent counts its subdirectories (`..` of each), not files.
        t.eq(
            "nlink of the parent of 3 dirs",
            t.st("").map(|s| s.nlink()),
            Some(5),
        );
        t.ok("put f", t.put("f", b""));
        t.eq(
            "a file does not count",
            t.st("").map(|s| s.nlink()),
            Some(5),
        );
        t.ok("rmdir d3", t.rmdir("d3"));
        t.eq("nlink after rmdir", t.st("").map(|s| s.nlink()), Some(4));
        t.errno("mkdir under a file", t.mkdir("f/x", 0o755), libc::ENOTDIR);
        t.ok("symlink", t.symlink("nowhere", "s"));
        t.errno(
            "mkdir onto a dangling symlink",
            t.mkdir("s", 0o755),
            libc::EEXIST,
        );
        t.absent("mkdir through a dangling symlink", "nowhere");
        t.ok("mkdir with a trailing slash", t.mkdir("d4/", 0o755));
        t.eq(
            "d4 is a directory",
            t.st("d4").map(|s| s.kind()),
            Some(libc::S_IFDIR),
        );
    });

    r.both(&c, "rmdir", |t| {
        t.ok("mkdir d", t.mkdir("d", 0o755));
        t.ok("put f", t.put("f", b""));
        t.ok("symlink", t.symlink("d", "s"));
        t.errno("rmdir a missing name", t.rmdir("missing"), libc::ENOENT);
        t.errno("rmdir d/.", t.rmdir("d/."), libc::EINVAL);
        t.errno("rmdir d/..", t.rmdir("d/.."), libc::ENOTEMPTY);
        t.errno("rmdir a symlink to a dir", t.rmdir("s"), libc::ENOTDIR);
        t.errno("rmdir under a file", t.rmdir("f/x"), libc::ENOTDIR);
        t.ok("d stays", t.lstat("d"));
        t.ok("rmdir d/ (trailing slash)", t.rmdir("d/"));
        t.absent("rmdir", "d");
    });

    r.both(&c, "symlink", |t| {
        for len in [1usize, 255, 1023, 4095] {
            let target = "t".repeat(len);
            let name = format!("l{len}");
            if t.ok(
                &format!("symlink of {len} bytes"),
                t.symlink(&target, &name),
            )
            .is_some()
            {
                t.eq(
                    &format!("readlink of {len} bytes"),
                    t.readlink(&name).ok().map(|v| v.len()),
                    Some(len),
                );
                if let Some(st) = t.st(&name) {
                    t.eq(
                        &format!("lstat size of a {len}-byte link"),
                        st.size(),
                        len as i64,
                    );
                    t.eq("symlink mode (always 0777)", st.mode(), 0o777);
                    t.eq("symlink nlink", st.nlink(), 1);
                }
            }
        }
        t.errno(
            "symlink with an empty target",
            t.symlink("", "e"),
            libc::ENOENT,
        );
        t.absent("symlink with an empty target", "e");
        t.ok("mkdir d", t.mkdir("d", 0o755));
        t.errno(
            "symlink onto a directory",
            t.symlink("x", "d"),
            libc::EEXIST,
        );
        t.errno("readlink of a directory", t.readlink("d"), libc::EINVAL);
        t.errno(
            "readlink of a missing name",
            t.readlink("missing"),
            libc::ENOENT,
        );
        t.errno(
            "symlink under a missing dir",
            t.symlink("x", "missing/l"),
            libc::ENOENT,
        );
        // Loops.
        t.ok("symlink loop1", t.symlink("loop2", "loop1"));
        t.ok("symlink loop2", t.symlink("loop1", "loop2"));
        t.ok("symlink self", t.symlink("self", "self"));
        t.errno("stat a symlink loop", t.stat("loop1"), libc::ELOOP);
        t.errno("stat a self loop", t.stat("self"), libc::ELOOP);
        t.errno(
            "open a loop",
            t.open("loop1", libc::O_RDONLY, 0),
            libc::ELOOP,
        );
        t.errno(
            "create through a loop",
            t.open("loop1", O_W_CREAT, 0o644),
            libc::ELOOP,
        );
        t.errno("a loop as a path prefix", t.stat("loop1/x"), libc::ELOOP);
        t.errno("mkdir below a loop", t.mkdir("self/x", 0o755), libc::ELOOP);
        // A relative link resolves from its own directory.
        t.ok("put d/f", t.put("d/f", b"rel"));
        t.ok("symlink d/up -> ../d/f", t.symlink("../d/f", "d/up"));
        t.eq(
            "read through ../",
            t.get("d/up").ok(),
            Some(b"rel".to_vec()),
        );
    });

    r.finish(&c);
}

// ---- chmod(2), chown(2), utimensat(2), access(2) as root ----

#[test]
fn chmod_chown_utimensat_and_access_as_root() {
    let c = cell();
    let r = Probe::new();

    r.both(&c, "chmod", |t| {
        t.ok("put f", t.put("f", b"f"));
        for mode in [0o7777, 0o4755, 0o2755, 0o1644, 0, 0o644] {
            t.ok(&format!("chmod {mode:o}"), t.chmod("f", mode));
            t.mode_is(&format!("chmod {mode:o} of a file"), "f", mode);
        }
        t.ok("mkdir d", t.mkdir("d", 0o755));
        for mode in [0o7777, 0o1777, 0o711, 0o755] {
            t.ok(&format!("chmod {mode:o} dir"), t.chmod("d", mode));
            t.mode_is(&format!("chmod {mode:o} of a directory"), "d", mode);
        }
        // chmod follows symlinks; the link keeps 0777.
        t.ok("symlink", t.symlink("f", "s"));
        t.ok("chmod through a symlink", t.chmod("s", 0o600));
        t.mode_is("chmod through a symlink: the target", "f", 0o600);
        t.mode_is("chmod through a symlink: the link", "s", 0o777);
        // fchmod on an open file, and the mode shows through fstat.
        if let Some(fd) = t.ok("open", t.open("f", libc::O_RDONLY, 0)) {
            t.ok("fchmod 0640", t.fchmod(fd, 0o640));
            t.eq(
                "fstat mode after fchmod",
                t.fstat(fd).ok().map(|s| s.mode()),
                Some(0o640),
            );
            t.ok("close", t.close(fd));
        }
        t.mode_is("fchmod", "f", 0o640);
        t.errno(
            "chmod a missing name",
            t.chmod("missing", 0o644),
            libc::ENOENT,
        );
        t.errno("chmod under a file", t.chmod("f/x", 0o644), libc::ENOTDIR);
    });

    // chown by root: owners change, set-id bits of a regular file go (Linux
    // clears S_ISUID, and S_ISGID with group execute, on every chown of a
    // non-directory), the sticky bit stays; directories keep every bit.
    r.both(&c, "chown", |t| {
        t.ok("put f", t.put("f", b"f"));
        t.ok("chown 1234", t.chown("f", Some(1234), None));
        t.eq("uid after chown", t.st("f").map(|s| s.uid()), Some(1234));
        t.ok("chmod 06755", t.chmod("f", 0o6755));
        t.ok("chown 4321", t.chown("f", Some(4321), None));
        t.mode_is("root's chown clears setuid and setgid", "f", 0o755);
        t.ok("chmod 07777", t.chmod("f", 0o7777));
        t.ok("chown 1234", t.chown("f", Some(1234), None));
        t.mode_is("root's chown keeps the sticky bit", "f", 0o1777);
        t.ok("chmod 02745", t.chmod("f", 0o2745));
        t.ok("chown 4321", t.chown("f", Some(4321), None));
        t.mode_is("chown keeps setgid without group execute", "f", 0o2745);
        t.ok("chmod 06755", t.chmod("f", 0o6755));
        t.ok("chown -1 -1", t.chown("f", None, None));
        t.mode_is("chown -1 -1 clears setuid too", "f", 0o755);
        t.eq(
            "chown -1 -1 keeps the owner",
            t.st("f").map(|s| s.uid()),
            Some(4321),
        );
        t.ok("mkdir d", t.mkdir("d", 0o755));
        t.ok("chmod 07777 dir", t.chmod("d", 0o7777));
        t.ok("chown dir", t.chown("d", Some(1234), None));
        t.mode_is("chown of a directory keeps set-id bits", "d", 0o7777);
        t.eq(
            "uid of the directory",
            t.st("d").map(|s| s.uid()),
            Some(1234),
        );
        // chown follows a symlink, lchown changes the link itself.
        t.ok("chown f back", t.chown("f", Some(0), None));
        let f_uid = t.st("f").map(|s| s.uid());
        t.ok("symlink", t.symlink("f", "s"));
        t.ok("lchown the link", t.lchown("s", Some(1234), None));
        t.eq(
            "lchown: the link's owner",
            t.st("s").map(|s| s.uid()),
            Some(1234),
        );
        t.eq(
            "lchown: the target's owner",
            t.st("f").map(|s| s.uid()),
            f_uid,
        );
        t.ok("chown through the link", t.chown("s", Some(4321), None));
        t.eq(
            "chown through a link: the target",
            t.st("f").map(|s| s.uid()),
            Some(4321),
        );
        t.eq(
            "chown through a link: the link",
            t.st("s").map(|s| s.uid()),
            Some(1234),
        );
        t.errno(
            "chown a missing name",
            t.chown("missing", Some(1), None),
            libc::ENOENT,
        );
    });

    // utimensat: both times to the nanosecond, UTIME_OMIT, UTIME_NOW, NULL,
    // times before 1970 and after 2038, symlinks themselves.
    r.both(&c, "utimensat", |t| {
        t.ok("put f", t.put("f", b"f"));
        let (a, m) = ((1_000_000_000, 111_111_111), (1_100_000_000, 222_222_222));
        t.ok("utimensat", t.utimensat("f", Some([a, m]), 0));
        if let Some(st) = t.st("f") {
            t.eq("atime to the nanosecond", st.atime(), a);
            t.eq("mtime to the nanosecond", st.mtime(), m);
        }
        let m2 = (1_200_000_000, 0);
        t.ok(
            "utimensat UTIME_OMIT atime",
            t.utimensat("f", Some([(0, libc::UTIME_OMIT), m2]), 0),
        );
        if let Some(st) = t.st("f") {
            t.eq("UTIME_OMIT keeps atime", st.atime(), a);
            t.eq("mtime with UTIME_OMIT atime", st.mtime(), m2);
        }
        let now = now_secs();
        t.ok(
            "utimensat UTIME_NOW mtime",
            t.utimensat("f", Some([(0, libc::UTIME_OMIT), (0, libc::UTIME_NOW)]), 0),
        );
        if let Some(st) = t.st("f") {
            t.eq("UTIME_OMIT keeps atime", st.atime(), a);
            t.yes(
                "UTIME_NOW sets mtime to now",
                (st.mtime().0 - now).abs() < 60,
                || format!("mtime {:?}, now {now}", st.mtime()),
            );
        }
        t.ok("utimensat NULL", t.utimensat("f", None, 0));
        if let Some(st) = t.st("f") {
            t.yes(
                "NULL sets atime to now",
                (st.atime().0 - now).abs() < 60,
                || format!("atime {:?}, now {now}", st.atime()),
            );
            t.yes(
                "NULL sets mtime to now",
                (st.mtime().0 - now).abs() < 60,
                || format!("mtime {:?}, now {now}", st.mtime()),
            );
        }
        for secs in [-86_400 * 365, 10_000_000_000] {
            t.ok(
                &format!("utimensat {secs}"),
                t.utimensat("f", Some([(secs, 0); 2]), 0),
            );
            t.eq(
                &format!("mtime {secs}"),
                t.st("f").map(|s| s.mtime()),
                Some((secs, 0)),
            );
        }
        t.errno(
            "utimensat with tv_nsec 1e9",
            t.utimensat("f", Some([(0, 1_000_000_000); 2]), 0),
            libc::EINVAL,
        );
        t.ok("mkdir d", t.mkdir("d", 0o755));
        t.ok("utimensat dir", t.utimensat("d", Some([a, m]), 0));
        t.eq("directory mtime", t.st("d").map(|s| s.mtime()), Some(m));
        // AT_SYMLINK_NOFOLLOW: the link's own times, not the target's.
        t.ok(
            "utimensat f",
            t.utimensat("f", Some([(1_000_000_000, 0); 2]), 0),
        );
        t.ok("symlink", t.symlink("f", "s"));
        t.ok(
            "utimensat AT_SYMLINK_NOFOLLOW",
            t.utimensat("s", Some([a, m]), libc::AT_SYMLINK_NOFOLLOW),
        );
        t.eq("the link's mtime", t.st("s").map(|s| s.mtime()), Some(m));
        t.eq(
            "the target's mtime",
            t.st("f").map(|s| s.mtime()),
            Some((1_000_000_000, 0)),
        );
    });

    // `cp -p`, `install -p`: write, then fix times and mode through the
    // descriptor before close; close must not undo them.
    r.both(&c, "cp_p", |t| {
        if let Some(fd) = t.ok("create", t.open("f", O_W_CREAT | libc::O_EXCL, 0o600)) {
            t.ok("write", t.write(fd, b"copied"));
            t.ok("futimens", t.futimens(fd, Some([(1_000_000_000, 5); 2])));
            t.ok("fchmod 0644", t.fchmod(fd, 0o644));
            t.ok("close", t.close(fd));
        }
        if let Some(st) = t.st("f") {
            t.eq(
                "mtime set before close survives the close",
                st.mtime(),
                (1_000_000_000, 5),
            );
            t.eq("mode set before close survives the close", st.mode(), 0o644);
            t.eq("size", st.size(), 6);
        }
        // The same through the path while the file is open for writing.
        if let Some(fd) = t.ok("open", t.open("f", libc::O_WRONLY | libc::O_APPEND, 0)) {
            t.ok("write", t.write(fd, b"+more"));
            t.ok(
                "utimensat while open",
                t.utimensat("f", Some([(1_100_000_000, 0); 2]), 0),
            );
            t.ok("close", t.close(fd));
        }
        t.eq(
            "mtime set by path while open survives the close",
            t.st("f").map(|s| s.mtime()),
            Some((1_100_000_000, 0)),
        );
        t.eq("contents", t.get("f").ok(), Some(b"copied+more".to_vec()));
    });

    // access(2) as root: read and write always, execute only with an x bit.
    r.both(&c, "access", |t| {
        t.ok("put f", t.put("f", b"f"));
        t.ok("chmod 0", t.chmod("f", 0));
        t.ok(
            "root may read and write a mode-0 file",
            t.access("f", libc::R_OK | libc::W_OK),
        );
        t.errno(
            "root may not execute a mode-0 file",
            t.access("f", libc::X_OK),
            libc::EACCES,
        );
        t.ok("chmod 0100", t.chmod("f", 0o100));
        t.ok("root may execute with one x bit", t.access("f", libc::X_OK));
        t.errno(
            "access a missing name",
            t.access("missing", libc::F_OK),
            libc::ENOENT,
        );
    });

    r.finish(&c);
}

// ---- the group owner ----

/// POSIX files have a group owner that chown(2) sets and stat(2) reports;
/// pjdfstest's chown, open and mkdir tests check it everywhere. (Old Coda
/// kept no group in its status block.)
#[test]
fn chown_sets_the_group_owner() {
    let c = cell();
    let r = Probe::new();
    r.both(&c, "group", |t| {
        t.ok("put f", t.put("f", b"f"));
        t.ok("chown -1:1234", t.chown("f", None, Some(1234)));
        t.eq("gid after chown", t.st("f").map(|s| s.gid()), Some(1234));
        t.ok("chown 4321:4321", t.chown("f", Some(4321), Some(4321)));
        t.eq(
            "uid and gid after chown",
            t.st("f").map(|s| (s.uid(), s.gid())),
            Some((4321, 4321)),
        );
        t.ok("mkdir d", t.mkdir("d", 0o755));
        t.ok("chown dir -1:1234", t.chown("d", None, Some(1234)));
        t.eq("gid of a directory", t.st("d").map(|s| s.gid()), Some(1234));
        t.ok("symlink", t.symlink("f", "s"));
        t.ok("lchown -1:1234", t.lchown("s", None, Some(1234)));
        t.eq("gid of a symlink", t.st("s").map(|s| s.gid()), Some(1234));
    });
    r.finish(&c);
}

// ---- truncate(2), ftruncate(2), posix_fallocate(3) ----

#[test]
fn truncate_ftruncate_and_posix_fallocate() {
    let c = cell();
    let r = Probe::new();

    r.both(&c, "truncate", |t| {
        t.ok("put f", t.put("f", b"0123456789"));
        t.ok("mkdir d", t.mkdir("d", 0o755));
        t.errno("truncate to -1", t.truncate("f", -1), libc::EINVAL);
        t.errno("truncate a directory", t.truncate("d", 0), libc::EISDIR);
        t.errno(
            "truncate a missing name",
            t.truncate("missing", 0),
            libc::ENOENT,
        );
        t.errno("truncate under a file", t.truncate("f/x", 0), libc::ENOTDIR);
        t.eq(
            "size after refused truncates",
            t.st("f").map(|s| s.size()),
            Some(10),
        );
        t.ok("symlink", t.symlink("f", "s"));
        t.ok("truncate through a symlink", t.truncate("s", 4));
        t.eq(
            "truncate follows a symlink",
            t.get("f").ok(),
            Some(b"0123".to_vec()),
        );
    });

    // A length beyond the largest file is EFBIG (or EINVAL), not EIO
    // (pjdfstest truncate/12, ftruncate/12).
    r.both(&c, "efbig", |t| {
        const HUGE: i64 = 999_999_999_999_999_999;
        t.ok("put f", t.put("f", b"small"));
        t.errno_in(
            "truncate past the largest file",
            t.truncate("f", HUGE),
            &[libc::EFBIG, libc::EINVAL],
        );
        if let Some(fd) = t.ok("open", t.open("f", libc::O_RDWR, 0)) {
            t.errno_in(
                "ftruncate past the largest file",
                t.ftruncate(fd, HUGE),
                &[libc::EFBIG, libc::EINVAL],
            );
            t.ok("close", t.close(fd));
        }
        t.eq("size unchanged", t.st("f").map(|s| s.size()), Some(5));
        t.eq(
            "contents unchanged",
            t.get("f").ok(),
            Some(b"small".to_vec()),
        );
    });

    r.both(&c, "ftruncate", |t| {
        t.ok("put f", t.put("f", b"abc"));
        if let Some(fd) = t.ok("open O_RDONLY", t.open("f", libc::O_RDONLY, 0)) {
            t.errno("ftruncate a read-only fd", t.ftruncate(fd, 0), libc::EINVAL);
            t.ok("close", t.close(fd));
        }
        if let Some(fd) = t.ok("open O_RDWR", t.open("f", libc::O_RDWR, 0)) {
            t.errno("ftruncate to -1", t.ftruncate(fd, -1), libc::EINVAL);
            t.ok("ftruncate grows", t.ftruncate(fd, 10));
            t.eq(
                "fstat after growing",
                t.fstat(fd).ok().map(|s| s.size()),
                Some(10),
            );
            t.eq(
                "grown bytes read as zeros",
                t.pread(fd, 20, 0).ok(),
                Some(b"abc\0\0\0\0\0\0\0".to_vec()),
            );
            // The descriptor's write access, not the mode now, decides.
            t.ok("fchmod 0", t.fchmod(fd, 0));
            t.ok("ftruncate after fchmod 0", t.ftruncate(fd, 1));
            t.eq(
                "fstat after shrinking",
                t.fstat(fd).ok().map(|s| s.size()),
                Some(1),
            );
            t.ok("close", t.close(fd));
        }
        t.eq("size after close", t.st("f").map(|s| s.size()), Some(1));
        t.eq("contents after close", t.get("f").ok(), Some(b"a".to_vec()));
        t.mode_is("mode after fchmod 0", "f", 0);
    });

    // posix_fallocate must work everywhere (glibc writes zeros where the
    // file system lacks fallocate(2)).
    r.both(&c, "fallocate", |t| {
        if let Some(fd) = t.ok("create", t.open("f", O_RW_CREAT, 0o644)) {
            t.ok("posix_fallocate 0+567", t.posix_fallocate(fd, 0, 567));
            t.eq(
                "size after posix_fallocate",
                t.fstat(fd).ok().map(|s| s.size()),
                Some(567),
            );
            t.ok("write", t.write(fd, b"head"));
            t.ok("posix_fallocate 1000+24", t.posix_fallocate(fd, 1000, 24));
            t.eq(
                "size after the 2nd",
                t.fstat(fd).ok().map(|s| s.size()),
                Some(1024),
            );
            t.ok("posix_fallocate inside", t.posix_fallocate(fd, 0, 100));
            t.eq(
                "allocating inside keeps the size",
                t.fstat(fd).ok().map(|s| s.size()),
                Some(1024),
            );
            t.errno(
                "posix_fallocate len 0",
                t.posix_fallocate(fd, 0, 0),
                libc::EINVAL,
            );
            t.errno(
                "posix_fallocate offset -1",
                t.posix_fallocate(fd, -1, 1),
                libc::EINVAL,
            );
            t.ok("close", t.close(fd));
        }
        if let Some(back) = t.ok("read back", t.get("f")) {
            let mut want = b"head".to_vec();
            want.resize(1024, 0);
            t.yes("posix_fallocate contents", back == want, || {
                format!(
                    "{} bytes, first {:?}",
                    back.len(),
                    &back[..back.len().min(8)]
                )
            });
        }
        if let Some(fd) = t.ok("open O_RDONLY", t.open("f", libc::O_RDONLY, 0)) {
            t.errno(
                "posix_fallocate on a read-only fd",
                t.posix_fallocate(fd, 0, 2048),
                libc::EBADF,
            );
            t.ok("close", t.close(fd));
        }
        t.eq(
            "size after refused fallocate",
            t.st("f").map(|s| s.size()),
            Some(1024),
        );
    });

    r.finish(&c);
}

// ---- mknod(2), mkfifo(3), sockets ----

#[test]
fn special_files_are_refused_cleanly_and_regular_mknod_works() {
    let c = cell();
    let r = Probe::new();
    let um = umask();

    // mknod(S_IFREG) (or no type) is another way to create a regular file.
    r.both(&c, "mknod_reg", |t| {
        t.ok("mknod S_IFREG", t.mknod("r", libc::S_IFREG | 0o640, 0));
        if let Some(st) = t.st("r") {
            t.eq("mknod S_IFREG type", st.kind(), libc::S_IFREG);
            t.eq("mknod S_IFREG mode", st.mode(), 0o640 & !um);
            t.eq("mknod S_IFREG size", st.size(), 0);
        }
        t.ok("mknod without a type", t.mknod("r0", 0o644, 0));
        t.eq(
            "mknod 0 type",
            t.st("r0").map(|s| s.kind()),
            Some(libc::S_IFREG),
        );
        t.errno(
            "mknod onto an existing name",
            t.mknod("r", libc::S_IFREG | 0o644, 0),
            libc::EEXIST,
        );
    });

    // Coda keeps no special files: FIFOs, devices and sockets are refused
    // with EPERM ("the file system does not support the type of node",
    // mknod(2)) and nothing is left behind — not ENOSYS, which says the
    // system call itself does not exist.
    r.coda_only(&c, "special", |t| {
        t.errno("mkfifo", t.mkfifo("fifo", 0o644), libc::EPERM);
        t.absent("mkfifo", "fifo");
        t.errno(
            "mknod S_IFIFO",
            t.mknod("fifo2", libc::S_IFIFO | 0o644, 0),
            libc::EPERM,
        );
        t.absent("mknod S_IFIFO", "fifo2");
        t.errno(
            "mknod S_IFCHR",
            t.mknod("chr", libc::S_IFCHR | 0o644, libc::makedev(1, 3)),
            libc::EPERM,
        );
        t.absent("mknod S_IFCHR", "chr");
        t.errno(
            "mknod S_IFBLK",
            t.mknod("blk", libc::S_IFBLK | 0o644, libc::makedev(7, 0)),
            libc::EPERM,
        );
        t.absent("mknod S_IFBLK", "blk");
        t.errno("bind a unix socket", t.bind_unix("sock"), libc::EPERM);
        t.absent("bind", "sock");
        t.eq("nothing listed", t.names("").ok(), Some(vec![]));
    });

    r.finish(&c);
}

// ---- ENAMETOOLONG, ENOTDIR, ELOOP from every call ----

#[test]
fn enametoolong_enotdir_and_eloop_from_every_call() {
    let c = cell();
    let r = Probe::new();
    r.both(&c, "patherr", |t| {
        t.ok("put f", t.put("f", b"f"));
        t.ok("symlink loop", t.symlink("loop", "loop"));
        // pjdfstest sizes its names by NAME_MAX from statvfs/pathconf.
        t.eq("statvfs f_namemax", t.name_max("").ok(), Some(255));
        let long = "x".repeat(256);
        // Each bad path, and the errno any call through it must give.
        let bad: [(&str, String, i32); 4] = [
            ("a 256-byte name", long.clone(), libc::ENAMETOOLONG),
            ("a file as a directory", "f/x".into(), libc::ENOTDIR),
            (
                "a symlink loop as a directory",
                "loop/x".into(),
                libc::ELOOP,
            ),
            (
                "a path over PATH_MAX",
                format!("{}/x", ["d"; 2100].join("/")),
                libc::ENAMETOOLONG,
            ),
        ];
        for (what, p, e) in &bad {
            let (p, e) = (p.as_str(), *e);
            t.errno(&format!("open {what}"), t.open(p, libc::O_RDONLY, 0), e);
            t.errno(&format!("create {what}"), t.open(p, O_W_CREAT, 0o644), e);
            t.errno(&format!("stat {what}"), t.stat(p), e);
            t.errno(&format!("lstat {what}"), t.lstat(p), e);
            t.errno(&format!("mkdir {what}"), t.mkdir(p, 0o755), e);
            t.errno(&format!("rmdir {what}"), t.rmdir(p), e);
            t.errno(&format!("unlink {what}"), t.unlink(p), e);
            t.errno(&format!("link from {what}"), t.link(p, "new"), e);
            t.errno(&format!("link to {what}"), t.link("f", p), e);
            t.errno(&format!("symlink at {what}"), t.symlink("f", p), e);
            t.errno(&format!("rename from {what}"), t.rename(p, "new"), e);
            t.errno(&format!("rename to {what}"), t.rename("f", p), e);
            t.errno(&format!("chmod {what}"), t.chmod(p, 0o644), e);
            t.errno(&format!("chown {what}"), t.chown(p, Some(1), None), e);
            t.errno(&format!("lchown {what}"), t.lchown(p, Some(1), None), e);
            t.errno(&format!("truncate {what}"), t.truncate(p, 0), e);
            t.errno(&format!("utimensat {what}"), t.utimensat(p, None, 0), e);
            t.errno(&format!("readlink {what}"), t.readlink(p), e);
            t.errno(&format!("mkfifo {what}"), t.mkfifo(p, 0o644), e);
            t.errno(
                &format!("mknod {what}"),
                t.mknod(p, libc::S_IFREG | 0o644, 0),
                e,
            );
        }
        t.eq(
            "nothing new after the refused calls",
            t.names("").ok(),
            Some(vec!["f".into(), "loop".into()]),
        );
        t.eq("f intact", t.get("f").ok(), Some(b"f".to_vec()));
    });
    r.finish(&c);
}

// ---- unprivileged users ----

/// Adds the Coda user alice and logs local uid [`ALICE`] in as her.
fn alice_logs_in(c: &Cell) {
    let pw = c.srv.password_file();
    let add = coda_tests::run(
        "pdbtool",
        &[
            "--server",
            &c.srv.addr,
            "--password-file",
            pw.to_str().unwrap(),
            "user",
            "add",
            "alice",
            "--password-stdin",
        ],
        &format!("{ALICE_PASSWORD}\n"),
    );
    assert!(
        add.status.success(),
        "pdbtool user add alice: {}",
        String::from_utf8_lossy(&add.stderr)
    );
    let mount = c.v.mount.to_str().unwrap();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={ALICE}"))
        .arg(format!("--regid={ALICE}"))
        .arg("--clear-groups")
        .arg(bin("clog"))
        .args(["--pipe", "--mount", mount, "alice"])
        .env("CODA_MOUNT", mount)
        .current_dir("/");
    let out = run_command(
        cmd,
        &format!("{ALICE_PASSWORD}\n"),
        TOOL_TIMEOUT,
        &format!("clog alice as uid {ALICE}"),
    );
    assert!(
        out.status.success(),
        "clog alice as uid {ALICE}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn unprivileged_users_get_eacces_and_eperm() {
    let c = cell();
    alice_logs_in(&c);
    let r = Probe::new();

    // In a directory where they may only look (locally root's 0755
    // directory; on Coda the top's ACL `System:AnyUser rl`): every change
    // by anyone else is EACCES and leaves nothing behind; chown of a file
    // they do not own is EPERM, chmod and explicit times EPERM or EACCES.
    r.both(&c, "lookonly", |t| {
        t.ok("put f", t.put("f", b"root's"));
        t.ok("mkdir ed", t.mkdir("ed", 0o755));
        let a = t.as_user(ANON);
        a.eq(
            "anyone reads a 0644 file",
            a.get("f").ok(),
            Some(b"root's".to_vec()),
        );
        // O_CREAT on an existing file only opens it: no insert right needed.
        if let Some(fd) = a.ok(
            "O_RDONLY|O_CREAT of an existing file",
            a.open("f", libc::O_RDONLY | libc::O_CREAT, 0o644),
        ) {
            a.ok("close", a.close(fd));
        }
        a.ok("access R_OK", a.access("f", libc::R_OK));
        a.errno("access W_OK", a.access("f", libc::W_OK), libc::EACCES);
        a.errno("create", a.open("new", O_W_CREAT, 0o644), libc::EACCES);
        a.absent("refused create", "new");
        a.errno("mkdir", a.mkdir("newd", 0o755), libc::EACCES);
        a.absent("refused mkdir", "newd");
        a.errno("symlink", a.symlink("f", "news"), libc::EACCES);
        a.absent("refused symlink", "news");
        a.errno("unlink root's file", a.unlink("f"), libc::EACCES);
        a.errno("rmdir root's dir", a.rmdir("ed"), libc::EACCES);
        a.errno("rename root's file", a.rename("f", "g"), libc::EACCES);
        a.absent("refused rename", "g");
        a.errno(
            "open root's file for writing",
            a.open("f", libc::O_WRONLY, 0),
            libc::EACCES,
        );
        a.errno("truncate root's file", a.truncate("f", 0), libc::EACCES);
        // POSIX says EPERM (not the owner); Coda checks the `w` right
        // first and says EACCES. Either refuses.
        a.errno_in(
            "chmod root's file",
            a.chmod("f", 0o666),
            &[libc::EPERM, libc::EACCES],
        );
        a.errno_in(
            "utimensat explicit times on root's file",
            a.utimensat("f", Some([(1_000_000_000, 0); 2]), 0),
            &[libc::EPERM, libc::EACCES],
        );
        // Giving a file away is EPERM everywhere: `cp -p`, `install` and
        // `tar` as a plain user ignore EPERM (and EINVAL) from chown, but
        // fail on anything else.
        a.errno(
            "chown root's file",
            a.chown("f", Some(ANON), None),
            libc::EPERM,
        );
        a.errno(
            "utimensat NULL on root's file without write access",
            a.utimensat("f", None, 0),
            libc::EACCES,
        );
        t.eq(
            "root's file intact",
            t.get("f").ok(),
            Some(b"root's".to_vec()),
        );
        t.mode_is("root's file mode", "f", 0o644);
        t.ok("ed stays", t.lstat("ed"));
    });

    // In a directory where everyone may insert, write and delete (locally
    // 0777; on Coda the ACL `System:AnyUser rlidwk`).
    r.both(&c, "shared", |t| {
        if t.coda {
            c.v.cfs_ok(
                "sa",
                &[t.base.to_str().unwrap(), "System:AnyUser", "rlidwk"],
            );
        } else {
            t.ok("chmod 0777", t.chmod("", 0o777));
        }
        let (anon, alice) = (t.as_user(ANON), t.as_user(ALICE));

        // Exclusive creation and writing as a plain user.
        let excl = O_W_CREAT | libc::O_EXCL;
        if let Some(fd) = anon.ok("create O_EXCL", anon.open("a", excl, 0o644)) {
            anon.ok("write", anon.write(fd, b"anon"));
            anon.ok("close", anon.close(fd));
        }
        anon.errno("O_EXCL again", anon.open("a", excl, 0o644), libc::EEXIST);
        anon.eq("read back", anon.get("a").ok(), Some(b"anon".to_vec()));

        // A file created read-only is written through the descriptor that
        // created it (git's objects, `install -m 444`): close must store it.
        for (u, name) in [(&alice, "obj_alice"), (&anon, "obj_anon")] {
            if let Some(fd) = u.ok("create 0444", u.open(name, excl, 0o444)) {
                u.ok("write to a new 0444 file", u.write(fd, b"blob"));
                u.ok("close a new 0444 file", u.close(fd));
            }
            t.eq(
                &format!("{name} stored"),
                t.get(name).ok(),
                Some(b"blob".to_vec()),
            );
            t.mode_is("a new 0444 file", name, 0o444);
        }

        // A write by someone without CAP_FSETID clears setuid, and setgid
        // with group execute (pjdfstest's write-clears-suid checks).
        t.ok("put suid", t.put("suid", b"root's"));
        t.ok("chmod 04777", t.chmod("suid", 0o4777));
        t.ok("put sgid", t.put("sgid", b"root's"));
        t.ok("chmod 02777", t.chmod("sgid", 0o2777));
        for (f, want) in [("suid", 0o777), ("sgid", 0o777)] {
            if let Some(fd) = anon.ok(&format!("open {f}"), anon.open(f, libc::O_WRONLY, 0)) {
                anon.ok("write", anon.write(fd, b"X"));
                anon.ok("close", anon.close(fd));
            }
            t.mode_is(
                &format!("a user's write clears the set-id bit of {f}"),
                f,
                want,
            );
            t.eq(
                &format!("{f} written"),
                t.get(f).ok(),
                Some(b"Xoot's".to_vec()),
            );
        }
        t.ok("put suid2", t.put("suid2", b"root's"));
        t.ok("chmod 06777", t.chmod("suid2", 0o6777));
        anon.ok("truncate by a user", anon.truncate("suid2", 2));
        t.mode_is("a user's truncate clears set-id bits", "suid2", 0o777);

        // The owner's mode bits bind everyone else: no owner read bit, no
        // reading; no owner write bit, no writing (Coda checks the owner's
        // bits for non-owners, POSIX the other bits: both refuse here).
        t.ok("put wonly", t.put("wonly", b"w"));
        t.ok("chmod 0200", t.chmod("wonly", 0o200));
        anon.errno(
            "read a 0200 file",
            anon.open("wonly", libc::O_RDONLY, 0),
            libc::EACCES,
        );
        t.ok("put ronly", t.put("ronly", b"r"));
        t.ok("chmod 0444", t.chmod("ronly", 0o444));
        anon.errno(
            "write a 0444 file",
            anon.open("ronly", libc::O_WRONLY, 0),
            libc::EACCES,
        );
        anon.errno(
            "truncate a 0444 file",
            anon.truncate("ronly", 0),
            libc::EACCES,
        );
        t.eq("0444 file intact", t.get("ronly").ok(), Some(b"r".to_vec()));

        // The owner may chmod and set times; others may not; nobody but
        // root gives a file away.
        if let Some(fd) = alice.ok("alice creates", alice.open("al", excl, 0o644)) {
            alice.ok("close", alice.close(fd));
        }
        alice.ok("the owner chmods", alice.chmod("al", 0o600));
        t.mode_is("the owner's chmod", "al", 0o600);
        alice.ok(
            "the owner sets explicit times",
            alice.utimensat("al", Some([(1_000_000_000, 0); 2]), 0),
        );
        t.eq(
            "the owner's times",
            t.st("al").map(|s| s.mtime()),
            Some((1_000_000_000, 0)),
        );
        // (POSIX also refuses chmod and explicit times to a non-owner who
        // may write the file; Coda lets anyone with `w` do both, as its
        // CheckSetAttrSemantics always did, so neither is checked here.)
        alice.errno(
            "the owner gives the file away",
            alice.chown("al", Some(0), None),
            libc::EPERM,
        );
        anon.errno(
            "another user takes the file",
            anon.chown("al", Some(ANON), None),
            libc::EPERM,
        );
        if let Some(own) = t.st("al").map(|s| s.uid()) {
            alice.ok(
                "the owner chowns to herself",
                alice.chown("al", Some(own), None),
            );
            t.eq("owner unchanged", t.st("al").map(|s| s.uid()), Some(own));
        }
        t.mode_is("mode after refused calls", "al", 0o600);
        t.eq(
            "times after refused calls",
            t.st("al").map(|s| s.mtime()),
            Some((1_000_000_000, 0)),
        );

        // Write access is enough to set both times to now.
        t.ok("put touchme", t.put("touchme", b"t"));
        t.ok("chmod 0666", t.chmod("touchme", 0o666));
        t.ok(
            "utimensat to 2001",
            t.utimensat("touchme", Some([(1_000_000_000, 0); 2]), 0),
        );
        anon.ok(
            "utimensat NULL with write access",
            anon.utimensat("touchme", None, 0),
        );
        t.yes(
            "utimensat NULL by a writer sets mtime to now",
            t.st("touchme")
                .is_some_and(|s| (s.mtime().0 - now_secs()).abs() < 60),
            || format!("{:?}", t.st("touchme")),
        );

        // Delete rights in the directory let anyone remove root's file.
        t.ok("put rootf", t.put("rootf", b"r"));
        anon.ok("a user removes root's file", anon.unlink("rootf"));
        t.absent("removed by a user", "rootf");
    });

    r.finish(&c);
}
