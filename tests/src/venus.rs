//! Real `venus` clients for end-to-end tests: a FUSE mount in a scratch
//! directory, driven as INTERFACE.md writes it, and file-system calls that
//! each carry a timeout.
//!
//! Two rules hold however a test ends (DESIGN.md §6):
//! - nothing stays mounted: dropping a [`Venus`] kills the daemon, detaches
//!   the mount (`umount -l`) and reaps the child, also when `venus` mounted
//!   but never said it was ready;
//! - no call into the mount can hang the test run: [`fsx`] wraps every call
//!   in [`timed`], which fails the test after [`FS_TIMEOUT`].

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{bin, ADMIN_PASSWORD};

/// How long a single file-system call into a mount may take.
pub const FS_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `venus` may take to say `venus ready on M`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `venus` may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a tool (`clog`, `cfs`, ...) may run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

/// Lines of venus output kept for the failure report.
const LOG_LINES: usize = 200;

/// A running `venus` with its cache and mount point; see the module docs for
/// what dropping it does.
pub struct Venus {
    pub child: Child,
    pub mount: PathBuf,
    pub cache: PathBuf,
    /// The `--server` argument it was started with.
    pub server: String,
    log: Arc<Mutex<Vec<String>>>,
    // Scratch directories owned by this client (None when the test gave its
    // own). Removed after `Drop::drop` has unmounted and reaped the child.
    cache_dir: Option<tempfile::TempDir>,
    mount_dir: Option<tempfile::TempDir>,
    /// Applied to the command before it starts (a network namespace).
    setup: Option<crate::Setup>,
}

impl Venus {
    /// A new client of `server_addr` with a fresh cache and mount point.
    pub fn start(server_addr: &str) -> Venus {
        Venus::start_set_up(server_addr, None)
    }

    /// As [`Venus::start`], the command prepared by `setup` (e.g. put in
    /// a network namespace); a restart does the same.
    pub fn start_set_up(server_addr: &str, setup: Option<crate::Setup>) -> Venus {
        let cache_dir = tempfile::Builder::new()
            .prefix("venus-cache.")
            .tempdir()
            .expect("cache dir");
        let mount_dir = tempfile::Builder::new()
            .prefix("venus-mnt.")
            .tempdir()
            .expect("mount dir");
        let mut v = Venus::launch(server_addr, cache_dir.path(), mount_dir.path(), &[], setup);
        v.cache_dir = Some(cache_dir);
        v.mount_dir = Some(mount_dir);
        v
    }

    /// A client using the given cache and mount directories (both must
    /// exist); the test keeps them, so a later client can resume the cache.
    pub fn start_with(server_addr: &str, cache: &Path, mount: &Path) -> Venus {
        Venus::start_with_args(server_addr, cache, mount, &[])
    }

    /// As [`Venus::start_with`], with extra arguments (e.g.
    /// `["--cache-size", "64M"]`).
    pub fn start_with_args(server_addr: &str, cache: &Path, mount: &Path, extra: &[&str]) -> Venus {
        Venus::launch(server_addr, cache, mount, extra, None)
    }

    fn launch(
        server_addr: &str,
        cache: &Path,
        mount: &Path,
        extra: &[&str],
        setup: Option<crate::Setup>,
    ) -> Venus {
        let mut cmd = Command::new(bin("venus"));
        if let Some(f) = &setup {
            f(&mut cmd);
        }
        let mut child = cmd
            .arg("--server")
            .arg(server_addr)
            .arg("--cache")
            .arg(cache)
            .arg("--mount")
            .arg(mount)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("venus does not start: {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        // stdout: watch for the ready line, then keep draining so venus never
        // blocks on a full pipe.
        let stdout = child.stdout.take().unwrap();
        let out_log = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.trim().strip_prefix("venus ready on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(rest.to_string());
                    }
                }
                keep(&out_log, format!("[venus stdout] {line}"));
            }
        });
        let stderr = child.stderr.take().unwrap();
        let err_log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                keep(&err_log, format!("[venus stderr] {line}"));
            }
        });
        // From here on a panic drops `v`, which kills venus and unmounts, so a
        // venus that mounted but never said ready leaves nothing behind.
        let mut v = Venus {
            child,
            mount: mount.to_path_buf(),
            cache: cache.to_path_buf(),
            server: server_addr.to_string(),
            log,
            cache_dir: None,
            mount_dir: None,
            setup,
        };
        let began = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(_said) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed without the ready line: it exited (or
                    // closed stdout, which is as bad).
                    let status = wait_for(&mut v.child, Duration::from_secs(5));
                    panic!(
                        "venus closed stdout without saying ready (exit: {status:?})\n{}",
                        v.log_tail()
                    );
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
            }
            if let Some(status) = v.child.try_wait().unwrap() {
                panic!(
                    "venus exited with {status} before saying ready\n{}",
                    v.log_tail()
                );
            }
            if began.elapsed() > READY_TIMEOUT {
                panic!(
                    "venus never said `venus ready on {}` within {READY_TIMEOUT:?}\n{}",
                    mount.display(),
                    v.log_tail()
                );
            }
        }
        // "Ready" means the mount serves: it must be in the mount table.
        let began = Instant::now();
        while !is_mounted(mount) {
            if began.elapsed() > Duration::from_secs(5) {
                panic!(
                    "venus said ready but {} is not mounted\n{}",
                    mount.display(),
                    v.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        v
    }

    /// `self.mount` joined with `rel`.
    pub fn path(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mount.join(rel)
    }

    /// The last lines venus wrote on stdout and stderr.
    pub fn log_tail(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// SIGTERM, then waits (at most [`STOP_TIMEOUT`]) for it to exit; its
    /// exit status. Panics if it ignores the signal (the drop then kills it).
    pub fn stop(mut self) -> ExitStatus {
        self.terminate()
    }

    fn terminate(&mut self) -> ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        match wait_for(&mut self.child, STOP_TIMEOUT) {
            Some(status) => status,
            None => panic!(
                "venus did not exit within {STOP_TIMEOUT:?} of SIGTERM\n{}",
                self.log_tail()
            ),
        }
    }

    /// SIGKILL (a crash): the mount is detached by the drop, the cache stays.
    pub fn kill(self) {
        // Drop does exactly this: SIGKILL, umount -l, reap.
    }

    /// Stops cleanly (asserting a zero exit and that the mount is gone) and
    /// starts a new client on the same server, cache and mount point. Scratch
    /// directories owned by this client move to the new one.
    pub fn restart(mut self) -> Venus {
        let cache_dir = self.cache_dir.take();
        let mount_dir = self.mount_dir.take();
        let (server, cache, mount) = (self.server.clone(), self.cache.clone(), self.mount.clone());
        let setup = self.setup.clone();
        let status = self.terminate();
        assert!(
            status.success(),
            "venus exited with {status} on SIGTERM\n{}",
            self.log_tail()
        );
        assert!(
            !is_mounted(&mount),
            "venus exited but left {} mounted",
            mount.display()
        );
        drop(self);
        let mut v = Venus::launch(&server, &cache, &mount, &[], setup);
        v.cache_dir = cache_dir;
        v.mount_dir = mount_dir;
        v
    }

    /// `clog --pipe --mount M USER` with `CODA_MOUNT=M` and the password on
    /// stdin, as the calling uid; its output, whatever it is.
    pub fn clog_output(&self, user: &str, password: &str) -> Output {
        self.tool(
            "clog",
            &["--pipe", "--mount", self.mount_str(), user],
            &format!("{password}\n"),
        )
    }

    /// As [`Venus::clog_output`], asserting success.
    pub fn clog(&self, user: &str, password: &str) {
        let out = self.clog_output(user, password);
        assert!(
            out.status.success(),
            "clog {user} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
    }

    /// `clog admin` with the cell's admin password: full rights in `coda.root`.
    pub fn clog_admin(&self) {
        self.clog("admin", ADMIN_PASSWORD);
    }

    /// `cfs SUBCOMMAND --mount M ARGS...` (and `CODA_MOUNT=M`); its output.
    pub fn cfs(&self, sub: &str, args: &[&str]) -> Output {
        let mut all = vec![sub, "--mount", self.mount_str()];
        all.extend_from_slice(args);
        self.tool("cfs", &all, "")
    }

    /// As [`Venus::cfs`], asserting success; its stdout.
    pub fn cfs_ok(&self, sub: &str, args: &[&str]) -> String {
        let out = self.cfs(sub, args);
        assert!(
            out.status.success(),
            "cfs {sub} {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Any client tool with `CODA_MOUNT=M` in its environment, fed `stdin`,
    /// at most [`TOOL_TIMEOUT`].
    pub fn tool(&self, tool: &str, args: &[&str], stdin: &str) -> Output {
        let mut cmd = Command::new(bin(tool));
        // Where the client's network is: clog asks the servers itself.
        if let Some(f) = &self.setup {
            f(&mut cmd);
        }
        cmd.args(args).env("CODA_MOUNT", &self.mount);
        run_command(cmd, stdin, TOOL_TIMEOUT, &format!("{tool} {args:?}"))
    }

    /// `sh -c SCRIPT` with its working directory at the top of the mount, at
    /// most `limit`; its output.
    pub fn sh(&self, script: &str, limit: Duration) -> Output {
        sh_in(&self.mount, script, limit)
    }

    fn mount_str(&self) -> &str {
        self.mount.to_str().expect("mount path is UTF-8")
    }
}

impl Drop for Venus {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- venus on {} (last output) ---\n{}\n---",
                self.mount.display(),
                self.log_tail()
            );
        }
        // Killing the daemon first aborts the FUSE connection, so any thread
        // stuck in a call into the mount returns (ENOTCONN) instead of hanging.
        let _ = self.child.kill();
        umount_lazy(&self.mount);
        let _ = wait_for(&mut self.child, Duration::from_secs(10));
    }
}

fn keep(log: &Mutex<Vec<String>>, line: String) {
    let mut log = log.lock().unwrap();
    if log.len() >= LOG_LINES {
        log.remove(0);
    }
    log.push(line);
}

/// Polls a child until it exits or `limit` passes.
fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let began = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(_) => return None,
        }
        if began.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `umount -l PATH` for every mount stacked there; errors are ignored.
pub fn umount_lazy(path: &Path) {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return;
    };
    for _ in 0..8 {
        let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        if rc != 0 || !is_mounted(path) {
            break;
        }
    }
}

/// Whether `path` is a mount point in this process's mount namespace.
pub fn is_mounted(path: &Path) -> bool {
    let want = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let want = want.as_os_str().as_bytes();
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return false;
    };
    info.split(|&b| b == b'\n').any(|line| {
        line.split(|&b| b == b' ')
            .nth(4)
            .is_some_and(|mp| unescape_mountinfo(mp) == want)
    })
}

/// Undoes the octal escapes (`\040` for a space) of /proc/self/mountinfo.
fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

/// Runs `f` on its own thread and returns its result; panics (failing the
/// test) if it takes longer than [`FS_TIMEOUT`]. A panic inside `f` is
/// passed on. The thread of a hung call is abandoned; it returns once the
/// daemon is killed.
pub fn timed<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    timed_for(FS_TIMEOUT, "file-system call", f)
}

/// As [`timed`], with a limit and a description for the failure message.
pub fn timed_for<T: Send + 'static>(
    limit: Duration,
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name(format!("timed: {what}"))
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        })
        .expect("spawn a thread");
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => v,
        Ok(Err(payload)) => std::panic::resume_unwind(payload),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!("{what} took more than {limit:?}: the mount hangs")
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what}: its thread vanished"),
    }
}

/// Polls `cond` (each call timed) until it holds or `limit` passes; whether
/// it held. For effects that arrive asynchronously, like callback breaks.
pub fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let began = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if began.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `sh -c SCRIPT` in `dir` (in its own process group, killed whole on
/// timeout); panics if it runs longer than `limit`.
pub fn sh_in(dir: &Path, script: &str, limit: Duration) -> Output {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(script).current_dir(dir);
    run_command(
        cmd,
        "",
        limit,
        &format!("sh -c {script:?} in {}", dir.display()),
    )
}

/// Runs a command to completion with piped stdio (drained while it runs),
/// feeding `stdin`; kills its process group and panics after `limit`.
pub fn run_command(mut cmd: Command, stdin: &str, limit: Duration, what: &str) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let pgid = child.id() as i32;
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.as_bytes().to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = match wait_for(&mut child, limit) {
        Some(status) => status,
        None => {
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            let _ = child.wait();
            panic!("{what} ran longer than {limit:?}");
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// File-system calls with a timeout each ([`FS_TIMEOUT`]); they return what
/// the underlying call returns, so tests can assert on errors:
/// `fsx::read(p).unwrap_err().raw_os_error() == Some(libc::ENOENT)`.
pub mod fsx {
    use super::timed_for;
    use super::FS_TIMEOUT;
    use std::ffi::CString;
    use std::fs;
    use std::io::{self, Write};
    use std::os::unix::ffi::OsStrExt;
    use std::path::{Path, PathBuf};
    use std::time::{SystemTime, UNIX_EPOCH};

    fn owned(p: impl AsRef<Path>) -> PathBuf {
        p.as_ref().to_path_buf()
    }

    fn cpath(p: &Path) -> io::Result<CString> {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn check(rc: libc::c_int) -> io::Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Runs one call with a timeout, naming it in the failure message.
    pub fn call<T: Send + 'static>(what: String, f: impl FnOnce() -> T + Send + 'static) -> T {
        timed_for(FS_TIMEOUT, &what, f)
    }

    pub fn write(p: impl AsRef<Path>, data: impl AsRef<[u8]>) -> io::Result<()> {
        let (p, data) = (owned(p), data.as_ref().to_vec());
        call(format!("write {}", p.display()), move || {
            fs::write(&p, data)
        })
    }

    pub fn read(p: impl AsRef<Path>) -> io::Result<Vec<u8>> {
        let p = owned(p);
        call(format!("read {}", p.display()), move || fs::read(&p))
    }

    pub fn read_to_string(p: impl AsRef<Path>) -> io::Result<String> {
        let p = owned(p);
        call(format!("read {}", p.display()), move || {
            fs::read_to_string(&p)
        })
    }

    /// Appends `data` (O_APPEND) to an existing file.
    pub fn append(p: impl AsRef<Path>, data: impl AsRef<[u8]>) -> io::Result<()> {
        let (p, data) = (owned(p), data.as_ref().to_vec());
        call(format!("append {}", p.display()), move || {
            let mut f = fs::OpenOptions::new().append(true).open(&p)?;
            f.write_all(&data)
        })
    }

    /// Creates the file with O_EXCL (EEXIST if it exists) and writes `data`.
    pub fn create_new(p: impl AsRef<Path>, data: impl AsRef<[u8]>) -> io::Result<()> {
        let (p, data) = (owned(p), data.as_ref().to_vec());
        call(format!("create_new {}", p.display()), move || {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)?;
            f.write_all(&data)
        })
    }

    /// truncate(2) by path.
    pub fn truncate(p: impl AsRef<Path>, len: u64) -> io::Result<()> {
        let p = owned(p);
        call(format!("truncate {}", p.display()), move || {
            let c = cpath(&p)?;
            check(unsafe { libc::truncate(c.as_ptr(), len as libc::off_t) })
        })
    }

    pub fn create_dir(p: impl AsRef<Path>) -> io::Result<()> {
        let p = owned(p);
        call(format!("mkdir {}", p.display()), move || fs::create_dir(&p))
    }

    pub fn create_dir_all(p: impl AsRef<Path>) -> io::Result<()> {
        let p = owned(p);
        call(format!("mkdir -p {}", p.display()), move || {
            fs::create_dir_all(&p)
        })
    }

    pub fn remove_file(p: impl AsRef<Path>) -> io::Result<()> {
        let p = owned(p);
        call(format!("unlink {}", p.display()), move || {
            fs::remove_file(&p)
        })
    }

    pub fn remove_dir(p: impl AsRef<Path>) -> io::Result<()> {
        let p = owned(p);
        call(format!("rmdir {}", p.display()), move || fs::remove_dir(&p))
    }

    pub fn rename(from: impl AsRef<Path>, to: impl AsRef<Path>) -> io::Result<()> {
        let (a, b) = (owned(from), owned(to));
        call(
            format!("rename {} {}", a.display(), b.display()),
            move || fs::rename(&a, &b),
        )
    }

    /// link(2): `link` becomes a new name for `original`.
    pub fn hard_link(original: impl AsRef<Path>, link: impl AsRef<Path>) -> io::Result<()> {
        let (a, b) = (owned(original), owned(link));
        call(format!("link {} {}", a.display(), b.display()), move || {
            fs::hard_link(&a, &b)
        })
    }

    /// symlink(2): `link` is a symbolic link whose text is `target`.
    pub fn symlink(target: impl AsRef<Path>, link: impl AsRef<Path>) -> io::Result<()> {
        let (a, b) = (owned(target), owned(link));
        call(
            format!("symlink {} {}", a.display(), b.display()),
            move || std::os::unix::fs::symlink(&a, &b),
        )
    }

    pub fn read_link(p: impl AsRef<Path>) -> io::Result<PathBuf> {
        let p = owned(p);
        call(format!("readlink {}", p.display()), move || {
            fs::read_link(&p)
        })
    }

    pub fn metadata(p: impl AsRef<Path>) -> io::Result<fs::Metadata> {
        let p = owned(p);
        call(format!("stat {}", p.display()), move || fs::metadata(&p))
    }

    pub fn symlink_metadata(p: impl AsRef<Path>) -> io::Result<fs::Metadata> {
        let p = owned(p);
        call(format!("lstat {}", p.display()), move || {
            fs::symlink_metadata(&p)
        })
    }

    /// Whether lstat(2) finds `p`; any error but ENOENT is returned.
    pub fn exists(p: impl AsRef<Path>) -> io::Result<bool> {
        match symlink_metadata(p) {
            Ok(_) => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The names in a directory (without `.` and `..`), in readdir order.
    pub fn read_dir_names(p: impl AsRef<Path>) -> io::Result<Vec<String>> {
        let p = owned(p);
        call(format!("readdir {}", p.display()), move || {
            let mut names = Vec::new();
            for e in fs::read_dir(&p)? {
                names.push(e?.file_name().to_string_lossy().into_owned());
            }
            Ok(names)
        })
    }

    /// chmod(2) to `mode` (permission bits).
    pub fn set_permissions(p: impl AsRef<Path>, mode: u32) -> io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let p = owned(p);
        call(format!("chmod {mode:o} {}", p.display()), move || {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))
        })
    }

    /// chown(2); `None` leaves that id unchanged.
    pub fn chown(p: impl AsRef<Path>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
        let p = owned(p);
        call(
            format!("chown {uid:?}:{gid:?} {}", p.display()),
            move || {
                let c = cpath(&p)?;
                let uid = uid.unwrap_or(u32::MAX) as libc::uid_t;
                let gid = gid.unwrap_or(u32::MAX) as libc::gid_t;
                check(unsafe { libc::chown(c.as_ptr(), uid, gid) })
            },
        )
    }

    /// utimensat(2) by path, following symlinks.
    pub fn utimes(p: impl AsRef<Path>, atime: SystemTime, mtime: SystemTime) -> io::Result<()> {
        let p = owned(p);
        call(format!("utimes {}", p.display()), move || {
            let c = cpath(&p)?;
            let ts = |t: SystemTime| {
                let d = t.duration_since(UNIX_EPOCH).expect("time after 1970");
                libc::timespec {
                    tv_sec: d.as_secs() as libc::time_t,
                    tv_nsec: d.subsec_nanos() as _,
                }
            };
            let times = [ts(atime), ts(mtime)];
            check(unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), 0) })
        })
    }

    /// Opens an existing file read-only.
    pub fn open(p: impl AsRef<Path>) -> io::Result<fs::File> {
        let p = owned(p);
        call(format!("open {}", p.display()), move || fs::File::open(&p))
    }

    /// Opens with the given options.
    pub fn open_with(p: impl AsRef<Path>, opts: fs::OpenOptions) -> io::Result<fs::File> {
        let p = owned(p);
        call(format!("open {}", p.display()), move || opts.open(&p))
    }

    /// Reads an open file to its end from the start (pread loop), giving the
    /// handle back.
    pub fn read_handle(f: fs::File) -> (fs::File, io::Result<Vec<u8>>) {
        call("read through an open handle".into(), move || {
            use std::os::unix::fs::FileExt;
            let mut data = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match f.read_at(&mut buf, data.len() as u64) {
                    Ok(0) => break,
                    Ok(n) => data.extend_from_slice(&buf[..n]),
                    Err(e) => return (f, Err(e)),
                }
            }
            (f, Ok(data))
        })
    }

    /// Closes an open file (close(2) may block on a store to the server).
    pub fn close(f: fs::File) {
        call("close".into(), move || drop(f))
    }
}

/// A cell with one shard and one client logged in as admin. The client is
/// declared first so it is dropped (unmounted) before the server.
pub struct Cell {
    pub v: Venus,
    pub srv: crate::Server,
}

pub fn cell() -> Cell {
    let srv = crate::Server::start(1);
    let v = Venus::start(&srv.addr);
    v.clog_admin();
    Cell { v, srv }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_returns_the_result_and_passes_panics_on() {
        assert_eq!(timed(|| 6 * 7), 42);
        let r = std::panic::catch_unwind(|| timed(|| panic!("inner")));
        assert!(r.is_err());
    }

    #[test]
    #[should_panic(expected = "the mount hangs")]
    fn timed_fails_a_call_that_hangs() {
        timed_for(Duration::from_millis(200), "sleep", || {
            std::thread::sleep(Duration::from_secs(5))
        });
    }

    #[test]
    fn sh_in_runs_in_the_directory_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let out = sh_in(dir.path(), "echo hi > f; cat f; echo err >&2", TOOL_TIMEOUT);
        assert!(out.status.success());
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"err\n");
        assert!(dir.path().join("f").exists());
        let hung = std::panic::catch_unwind(|| {
            sh_in(dir.path(), "sleep 30 & wait", Duration::from_millis(300))
        });
        assert!(hung.is_err());
    }

    #[test]
    fn is_mounted_reads_the_mount_table() {
        assert!(is_mounted(Path::new("/")));
        assert!(is_mounted(Path::new("/proc")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mounted(dir.path()));
        assert_eq!(unescape_mountinfo(b"/a\\040b"), b"/a b");
        assert_eq!(unescape_mountinfo(b"/a\\04"), b"/a\\04");
    }
}
