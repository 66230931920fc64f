//! `fsx` for a real `venus` mount: one file driven through a long, seeded,
//! random sequence of operations, each checked against an in-memory model,
//! in the manner of the classic File System eXerciser (BSD, Apple,
//! xfstests): pwrite at random offsets (also past EOF, leaving holes),
//! ftruncate and truncate(2) up and down, pread, mmap read (the rest of the
//! page past EOF must read zero), mmap write (MAP_SHARED, with or without
//! msync), copy_file_range, fallocate and its hole and zero modes (left out
//! once the mount answers EOPNOTSUPP), fsync, close and reopen, reopen with
//! O_TRUNC, and a file length checked with fstat after every op.
//!
//! A second client on the same server reads the whole file now and then
//! after the writer closed (Coda's close-to-open semantics: it sees what the
//! writer closed), or writes to it itself before the first reopens. One run
//! keeps two handles open on the file on the first client; one works a
//! sparse file longer than 4 GiB of which only a few MiB are written. The
//! reduced cases of the failures found so far follow the runs.
//!
//! Reproduce a failure with the seed and op count it prints:
//! `FSX_SEED=<seed> FSX_OPS=<n> cargo test --release -p coda-tests --test venus_fsx -- <test>`
//! (`FSX_SEED=random` picks a new seed from the clock; `FSX_SKIP=Op,Op`
//! leaves ops out, to look past a known failure; `FSX_TRACE=1` prints every
//! op as it runs).
//!
//! Every byte written by op `n` at file offset `o` is `1 + (7n + o) mod 253`:
//! never zero (so a hole reads differently from data), shifted data shows,
//! and a wrong byte names the op that wrote it (modulo 253).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coda_tests::venus::{fsx, timed_for, Venus, FS_TIMEOUT};
use coda_tests::Server;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// An op taking longer than this is reported (not failed).
const SLOW: Duration = Duration::from_secs(1);

/// Lines of the op log printed on a failure.
const LOG_TAIL: usize = 60;

// ---------------------------------------------------------------------------
// The random source: splitmix64, seeded once per run.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }
}

/// The byte op `op` writes at file offset `off`.
fn byte_of(op: u64, off: u64) -> u8 {
    (1 + (op.wrapping_mul(7).wrapping_add(off)) % 253) as u8
}

fn data_of(op: u64, off: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| byte_of(op, off + i)).collect()
}

/// Which op (modulo 253) wrote `b` at `off`, if any op could have.
fn writer_of(b: u8, off: u64) -> Option<u64> {
    if b == 0 || b > 253 {
        return None;
    }
    // 7 * 217 = 1 (mod 253)
    let r = (b as u64 - 1 + 253 - off % 253) % 253;
    Some(r * 217 % 253)
}

// ---------------------------------------------------------------------------
// The model: what the file must hold, sparse so a file past 4 GiB costs only
// the chunks written.

const CHUNK: u64 = 64 * KIB;

#[derive(Default)]
struct Model {
    len: u64,
    /// Chunk index -> its CHUNK bytes; an absent chunk is zeros.
    chunks: BTreeMap<u64, Vec<u8>>,
}

impl Model {
    fn write(&mut self, off: u64, data: &[u8]) {
        let mut pos = 0usize;
        while pos < data.len() {
            let at = off + pos as u64;
            let (ci, co) = (at / CHUNK, (at % CHUNK) as usize);
            let n = (CHUNK as usize - co).min(data.len() - pos);
            let chunk = self
                .chunks
                .entry(ci)
                .or_insert_with(|| vec![0; CHUNK as usize]);
            chunk[co..co + n].copy_from_slice(&data[pos..pos + n]);
            pos += n;
        }
        self.len = self.len.max(off + data.len() as u64);
    }

    fn truncate(&mut self, len: u64) {
        if len < self.len {
            let first_gone = len.div_ceil(CHUNK);
            self.chunks.split_off(&first_gone);
            if len % CHUNK != 0 {
                if let Some(c) = self.chunks.get_mut(&(len / CHUNK)) {
                    c[(len % CHUNK) as usize..].fill(0);
                }
            }
        }
        self.len = len;
    }

    /// What a read of `len` bytes at `off` returns (short at EOF).
    fn read(&self, off: u64, len: u64) -> Vec<u8> {
        let end = (off + len).min(self.len);
        if off >= end {
            return Vec::new();
        }
        let mut out = vec![0u8; (end - off) as usize];
        for (&ci, chunk) in self.chunks.range(off / CHUNK..=(end - 1) / CHUNK) {
            let (cs, ce) = (ci * CHUNK, ci * CHUNK + CHUNK);
            let (s, e) = (cs.max(off), ce.min(end));
            out[(s - off) as usize..(e - off) as usize]
                .copy_from_slice(&chunk[(s - cs) as usize..(e - cs) as usize]);
        }
        out
    }

    /// Bytes of data (chunks) the model holds.
    fn resident(&self) -> u64 {
        self.chunks.len() as u64 * CHUNK
    }
}

// ---------------------------------------------------------------------------
// Calls into the mount, each under a timeout.

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_PAGESIZE) as u64 }
}

fn pread_full(f: &File, off: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut n = 0;
    while n < len {
        match f.read_at(&mut buf[n..], off + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// A mapping of `len` bytes of `f` from `off` (any alignment); the pointer to
/// `off` inside it, with the mapping's base and length for munmap.
struct Mapping {
    base: *mut libc::c_void,
    map_len: usize,
    delta: usize,
}

impl Mapping {
    fn new(f: &File, off: u64, len: usize, write: bool) -> io::Result<Mapping> {
        let pg = page_size();
        let start = off & !(pg - 1);
        let delta = (off - start) as usize;
        let map_len = delta + len;
        let prot = if write {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        };
        // SAFETY: a fresh shared mapping of an open file; unmapped on drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                prot,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                start as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            base,
            map_len,
            delta,
        })
    }

    /// The bytes from `off` to `off + len`, plus `extra` bytes after them
    /// (which must lie in the last mapped page).
    fn read(&self, len: usize, extra: usize) -> Vec<u8> {
        let mut out = vec![0u8; len + extra];
        // SAFETY: the range lies within the mapping, or within its last page.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (self.base as *const u8).add(self.delta),
                out.as_mut_ptr(),
                len + extra,
            )
        };
        out
    }

    /// Writes `data` at the mapped offset, then msync(MS_SYNC) if `sync`.
    fn write(&self, data: &[u8], sync: bool) -> io::Result<()> {
        // SAFETY: the mapping is writable and holds `delta + data.len()` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.base as *mut u8).add(self.delta),
                data.len(),
            );
            if sync && libc::msync(self.base, self.map_len, libc::MS_SYNC) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

// SAFETY: the mapping is process-wide memory; it is used by one thread at a
// time (each timed call hands it on).
unsafe impl Send for Mapping {}

/// The mount does not implement the call (fsx then leaves it out).
fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    )
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`.
        unsafe { libc::munmap(self.base, self.map_len) };
    }
}

// ---------------------------------------------------------------------------
// The exerciser.

/// How one run draws its operations.
#[derive(Clone)]
struct Config {
    name: &'static str,
    seed: u64,
    ops: u64,
    /// Handles open on the file at once (on the first client).
    handles: usize,
    /// Where offsets fall: (start, length) windows, each picked equally.
    windows: Vec<(u64, u64)>,
    /// Where truncations go (besides the odd one anywhere below EOF).
    truncate_windows: Vec<(u64, u64)>,
    /// Before the final checks the file is grown (by a write) past this if
    /// it is shorter: the run ends with a file this long at least.
    final_len: u64,
    /// Largest single read or write.
    max_op: u64,
    /// Relative weights of the operations.
    w: Weights,
    /// Extra `venus` arguments for both clients.
    venus_args: &'static [&'static str],
    /// The time limit for a call that moves the whole file (close, fetch).
    whole_file_limit: Duration,
}

#[derive(Clone, Copy)]
struct Weights {
    read: u64,
    write: u64,
    map_read: u64,
    map_write: u64,
    truncate: u64,
    truncate_path: u64,
    fsync: u64,
    stat: u64,
    close_open: u64,
    open_trunc: u64,
    verify_local: u64,
    verify_remote: u64,
    write_remote: u64,
    copy_range: u64,
    fallocate: u64,
    map_outlives_close: u64,
    restart: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Read,
    Write,
    MapRead,
    MapWrite,
    Truncate,
    TruncatePath,
    Fsync,
    Stat,
    CloseOpen,
    OpenTrunc,
    VerifyLocal,
    VerifyRemote,
    WriteRemote,
    CopyRange,
    Fallocate,
    MapOutlivesClose,
    Restart,
}

impl Weights {
    fn table(&self) -> [(Op, u64); 17] {
        [
            (Op::Read, self.read),
            (Op::Write, self.write),
            (Op::MapRead, self.map_read),
            (Op::MapWrite, self.map_write),
            (Op::Truncate, self.truncate),
            (Op::TruncatePath, self.truncate_path),
            (Op::Fsync, self.fsync),
            (Op::Stat, self.stat),
            (Op::CloseOpen, self.close_open),
            (Op::OpenTrunc, self.open_trunc),
            (Op::VerifyLocal, self.verify_local),
            (Op::VerifyRemote, self.verify_remote),
            (Op::WriteRemote, self.write_remote),
            (Op::CopyRange, self.copy_range),
            (Op::Fallocate, self.fallocate),
            (Op::MapOutlivesClose, self.map_outlives_close),
            (Op::Restart, self.restart),
        ]
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let s = std::env::var(name).ok()?;
    let s = s.trim();
    if s == "random" {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        return Some(t.as_nanos() as u64 ^ (std::process::id() as u64) << 32);
    }
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={s:?} is not a number")))
}

/// The seed and op count of a run: the test's defaults unless FSX_SEED /
/// FSX_OPS say otherwise.
fn configured(mut cfg: Config) -> Config {
    if let Some(seed) = env_u64("FSX_SEED") {
        cfg.seed = seed;
    }
    if let Some(ops) = env_u64("FSX_OPS") {
        cfg.ops = ops;
    }
    // FSX_SKIP=op,op (names as in the op counts, e.g. MapOutlivesClose):
    // for hunting a second bug while a first one is open. Not for CI.
    if let Ok(skip) = std::env::var("FSX_SKIP") {
        for name in skip.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let w = &mut cfg.w;
            let slot = match name {
                "Read" => &mut w.read,
                "Write" => &mut w.write,
                "MapRead" => &mut w.map_read,
                "MapWrite" => &mut w.map_write,
                "Truncate" => &mut w.truncate,
                "TruncatePath" => &mut w.truncate_path,
                "Fsync" => &mut w.fsync,
                "Stat" => &mut w.stat,
                "CloseOpen" => &mut w.close_open,
                "OpenTrunc" => &mut w.open_trunc,
                "VerifyLocal" => &mut w.verify_local,
                "VerifyRemote" => &mut w.verify_remote,
                "WriteRemote" => &mut w.write_remote,
                "CopyRange" => &mut w.copy_range,
                "Fallocate" => &mut w.fallocate,
                "MapOutlivesClose" => &mut w.map_outlives_close,
                "Restart" => &mut w.restart,
                other => panic!("FSX_SKIP: no op {other:?}"),
            };
            *slot = 0;
        }
        eprintln!("fsx {}: FSX_SKIP={skip}", cfg.name);
    }
    cfg
}

/// One run: the clients are declared first so they are dropped (killed and
/// unmounted) before the open handles are closed and before the server.
struct Fsx {
    a: Client,
    b: Client,
    handles: Vec<Option<Arc<File>>>,
    cfg: Config,
    rel: &'static str,
    rng: Rng,
    model: Model,
    /// The number of the op being run (1-based).
    op: u64,
    log: VecDeque<String>,
    /// FSX_TRACE set: every op is printed as it runs.
    trace: bool,
    counts: BTreeMap<Op, u64>,
    /// Ops after which the file was longer than 4 GiB.
    past_4gib: u64,
    /// Operations the mount refused with EOPNOTSUPP (skipped from then on,
    /// as xfstests' fsx does).
    unsupported: BTreeMap<&'static str, i32>,
    _srv: Server,
}

impl Fsx {
    fn new(cfg: Config) -> Fsx {
        let srv = Server::start(1);
        let start = |srv: &Server| {
            let cache = tempfile::Builder::new()
                .prefix("venus-cache.")
                .tempdir()
                .unwrap();
            let mount = tempfile::Builder::new()
                .prefix("venus-mnt.")
                .tempdir()
                .unwrap();
            let v = Venus::start_with_args(&srv.addr, cache.path(), mount.path(), cfg.venus_args);
            v.clog_admin();
            Client {
                v: Some(v),
                _cache: cache,
                _mount: mount,
            }
        };
        let a = start(&srv);
        let b = start(&srv);
        eprintln!(
            "fsx {}: seed {} ({:#x}), {} ops, {} handle(s)",
            cfg.name, cfg.seed, cfg.seed, cfg.ops, cfg.handles
        );
        let mut fx = Fsx {
            a,
            b,
            handles: Vec::new(),
            rng: Rng(cfg.seed),
            cfg,
            rel: "fsx.data",
            model: Model::default(),
            op: 0,
            log: VecDeque::new(),
            trace: std::env::var_os("FSX_TRACE").is_some(),
            counts: BTreeMap::new(),
            past_4gib: 0,
            unsupported: BTreeMap::new(),
            _srv: srv,
        };
        // Created empty through the first handle; the rest open it.
        for i in 0..fx.cfg.handles {
            let f = fx.open(i == 0, false);
            fx.handles.push(Some(f));
        }
        fx
    }

    fn path(&self) -> PathBuf {
        self.a.v().path(self.rel)
    }

    // -- reporting ----------------------------------------------------------

    fn note(&mut self, line: String) {
        if self.log.len() == LOG_TAIL {
            self.log.pop_front();
        }
        let line = format!("#{} {line}", self.op);
        if self.trace {
            eprintln!("fsx {}: {line}", self.cfg.name);
        }
        self.log.push_back(line);
    }

    fn fail(&self, msg: &str) -> ! {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "fsx {} FAILED at op #{} of {}: {msg}",
            self.cfg.name, self.op, self.cfg.ops
        );
        let skip = std::env::var("FSX_SKIP")
            .map(|s| format!("FSX_SKIP={s} "))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "seed {} ({:#x}); model length {:#x}; reproduce with FSX_SEED={} FSX_OPS={} {skip}\
             cargo test --release -p coda-tests --test venus_fsx -- {} --nocapture \
             (a failure of the other client to see a close depends on timing: run it on a \
             busy machine)",
            self.cfg.seed,
            self.cfg.seed,
            self.model.len,
            self.cfg.seed,
            self.op.min(self.cfg.ops),
            self.cfg.name
        );
        let _ = writeln!(s, "last {} ops:", self.log.len());
        for l in &self.log {
            let _ = writeln!(s, "  {l}");
        }
        panic!("{s}");
    }

    fn ok<T>(&self, what: &str, r: io::Result<T>) -> T {
        r.unwrap_or_else(|e| self.fail(&format!("{what}: {e}")))
    }

    /// Compares what a read returned with the model.
    fn check(&self, what: &str, off: u64, want: &[u8], got: &[u8]) {
        if want == got {
            return;
        }
        let mut msg = format!(
            "{what}: data differs from the model (got {:#x} bytes, want {:#x})",
            got.len(),
            want.len()
        );
        let n = want.len().min(got.len());
        let bad: Vec<usize> = (0..n).filter(|&i| want[i] != got[i]).collect();
        if let Some(&first) = bad.first() {
            let at = off + first as u64;
            let last = *bad.last().unwrap();
            let _ = write!(
                msg,
                "\n  {} bad bytes in {:#x}..={:#x}; first at {at:#x}: got {:#04x}, want {:#04x}",
                bad.len(),
                at,
                off + last as u64,
                got[first],
                want[first]
            );
            match writer_of(got[first], at) {
                Some(op) => {
                    // The ops up to this one that write that byte there.
                    let ops: Vec<String> = (op..=self.op)
                        .step_by(253)
                        .map(|n| format!("#{n}"))
                        .collect();
                    let _ = write!(
                        msg,
                        " (the bad byte is what op {} wrote there)",
                        if ops.is_empty() {
                            format!("#{op} mod 253")
                        } else {
                            ops.join(" or ")
                        }
                    );
                }
                None => {
                    let _ = write!(msg, " (the bad byte is zero: a hole or a lost write)");
                }
            }
            let (s, e) = (first.saturating_sub(8), (first + 24).min(n));
            let _ = write!(
                msg,
                "\n  at {:#x}: got  {:02x?}\n  at {:#x}: want {:02x?}",
                off + s as u64,
                &got[s..e],
                off + s as u64,
                &want[s..e]
            );
        }
        self.fail(&msg);
    }

    // -- handles ----------------------------------------------------------

    fn open(&self, create: bool, truncate: bool) -> Arc<File> {
        let mut o = OpenOptions::new();
        o.read(true).write(true).create(create).truncate(truncate);
        let f = fsx::call(
            format!("open {}", self.path().display()),
            move_open(self.path(), o),
        );
        Arc::new(self.ok("open O_RDWR", f))
    }

    fn close(&self, f: Arc<File>) {
        let f = Arc::try_unwrap(f).unwrap_or_else(|_| self.fail("a handle is still shared"));
        // close(2)'s answer is checked: a store that failed is data lost.
        let closed = timed_for(
            self.cfg.whole_file_limit,
            "close (stores the file)",
            move || {
                use std::os::fd::IntoRawFd;
                // SAFETY: the descriptor is ours alone, closed once.
                match unsafe { libc::close(f.into_raw_fd()) } {
                    0 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            },
        );
        if let Err(e) = closed {
            self.fail(&format!("close failed: {e}"));
        }
    }

    /// A random open handle.
    fn pick(&mut self) -> (usize, Arc<File>) {
        let i = self.rng.below(self.handles.len() as u64) as usize;
        (
            i,
            self.handles[i]
                .clone()
                .expect("handles are open between ops"),
        )
    }

    fn close_all(&mut self) {
        for i in 0..self.handles.len() {
            if let Some(f) = self.handles[i].take() {
                self.close(f);
            }
        }
    }

    fn reopen_all(&mut self) {
        for i in 0..self.handles.len() {
            let f = self.open(false, false);
            self.handles[i] = Some(f);
        }
    }

    // -- drawing ------------------------------------------------------------

    fn offset(&mut self) -> u64 {
        let w = self.rng.below(self.cfg.windows.len() as u64) as usize;
        let (start, len) = self.cfg.windows[w];
        start + self.rng.below(len)
    }

    /// An offset to read at: inside the file mostly, anywhere sometimes.
    fn read_offset(&mut self) -> u64 {
        match self.rng.below(4) {
            0 => self.offset(),
            1 => self.rng.below(self.model.len),
            _ => {
                // Near data the model holds, so big sparse files are read
                // where they were written, not only in their holes.
                let o = self.offset();
                o.min(self.model.len.saturating_sub(1))
            }
        }
    }

    fn size(&mut self) -> u64 {
        match self.rng.below(10) {
            0..=2 => self.rng.between(1, 16),
            3..=8 => self.rng.between(1, 64 * KIB),
            _ => self.rng.between(1, self.cfg.max_op),
        }
    }

    fn draw(&mut self) -> Op {
        let table = self.cfg.w.table();
        let total: u64 = table.iter().map(|t| t.1).sum();
        let mut r = self.rng.below(total);
        for (op, w) in table {
            if r < w {
                return op;
            }
            r -= w;
        }
        unreachable!()
    }

    // -- the operations -------------------------------------------------------

    fn run(&mut self) {
        let began = Instant::now();
        let mut last_report = Instant::now();
        while self.op < self.cfg.ops {
            self.op += 1;
            let op = self.draw();
            *self.counts.entry(op).or_default() += 1;
            let t = Instant::now();
            self.step(op);
            self.check_size();
            if self.model.len > 4 * GIB {
                self.past_4gib += 1;
            }
            let took = t.elapsed();
            if took > SLOW {
                eprintln!(
                    "fsx {}: slow op ({took:.1?}): {}",
                    self.cfg.name,
                    self.log.back().map_or("", String::as_str)
                );
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                last_report = Instant::now();
                eprintln!(
                    "fsx {}: op {} of {}, {:.1?}, length {:#x}",
                    self.cfg.name,
                    self.op,
                    self.cfg.ops,
                    began.elapsed(),
                    self.model.len
                );
            }
        }
        if self.model.len < self.cfg.final_len {
            // One more write, as an op of the run, past the final length.
            self.op += 1;
            let (off, len) = (self.cfg.final_len, self.rng.between(1, 64 * KIB));
            let (i, f) = self.pick();
            let what = format!("pwrite h{i} {off:#x}+{len:#x} (the final length)");
            self.note(what.clone());
            let data = data_of(self.op, off, len as usize);
            self.model.write(off, &data);
            let r = fsx::call(what.clone(), move || f.write_all_at(&data, off));
            self.ok(&what, r);
            self.check_size();
        }
        let ops_took = began.elapsed();
        // The end: everything closed, the whole file checked on both clients.
        self.note("final: close all, verify the whole file on both clients".into());
        let t = Instant::now();
        self.close_all();
        let closed = t.elapsed();
        self.verify_path(false);
        let local = t.elapsed() - closed;
        self.verify_path(true);
        let remote = t.elapsed() - closed - local;
        eprintln!(
            "fsx {}: final close {closed:.1?}, whole-file check on the first client \
             {local:.1?}, on the second (fetch and read) {remote:.1?}",
            self.cfg.name
        );
        let past_4gib = if self.past_4gib > 0 {
            format!("{} ops left it past 4 GiB; ", self.past_4gib)
        } else {
            String::new()
        };
        eprintln!(
            "fsx {}: seed {} passed: {} ops in {:.1?} (+ final verify {:.1?}); \
             final length {:#x}, model holds {} KiB; {past_4gib}ops {:?}; unsupported {:?}",
            self.cfg.name,
            self.cfg.seed,
            self.cfg.ops,
            ops_took,
            began.elapsed() - ops_took,
            self.model.len,
            self.model.resident() / KIB,
            self.counts,
            self.unsupported
        );
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Read => self.read(),
            Op::Write => self.write(),
            Op::MapRead => self.map_read(),
            Op::MapWrite => self.map_write(),
            Op::Truncate => self.truncate(false),
            Op::TruncatePath => self.truncate(true),
            Op::Fsync => {
                let (i, f) = self.pick();
                self.note(format!("fsync h{i}"));
                let r = fsx::call(format!("fsync h{i}"), move || f.sync_all());
                self.ok("fsync", r);
            }
            Op::Stat => {
                self.note("stat by path".into());
                let m = self.ok("stat", fsx::metadata(self.path()));
                if m.len() != self.model.len {
                    self.fail(&format!(
                        "stat by path: length {:#x}, model {:#x}",
                        m.len(),
                        self.model.len
                    ));
                }
            }
            Op::CloseOpen => {
                let i = self.rng.below(self.handles.len() as u64) as usize;
                self.note(format!("close and reopen h{i}"));
                let f = self.handles[i].take().unwrap();
                self.close(f);
                let f = self.open(false, false);
                self.handles[i] = Some(f);
            }
            Op::OpenTrunc => {
                self.note("close all, open O_TRUNC, reopen the rest".into());
                self.close_all();
                let f = self.open(false, true);
                self.model.truncate(0);
                self.handles[0] = Some(f);
                for i in 1..self.handles.len() {
                    let f = self.open(false, false);
                    self.handles[i] = Some(f);
                }
            }
            Op::VerifyLocal => {
                let (i, f) = self.pick();
                self.note(format!("verify the whole file through h{i}"));
                self.verify_handle(&f, &format!("whole-file read through h{i}"));
            }
            Op::VerifyRemote => {
                self.note("close all; second client verifies the whole file".into());
                self.close_all();
                self.verify_path(true);
                self.reopen_all();
            }
            Op::WriteRemote => self.write_remote(),
            Op::CopyRange => self.copy_range(),
            Op::Fallocate => self.fallocate(),
            Op::MapOutlivesClose => self.map_outlives_close(),
            Op::Restart => {
                self.note("close all; restart the first client (its cache kept)".into());
                self.close_all();
                let v = self.a.v.take().expect("a running venus");
                let v = timed_for(Duration::from_secs(120), "venus restart", move || {
                    v.restart()
                });
                v.clog_admin();
                self.a.v = Some(v);
                self.reopen_all();
                let (i, f) = self.pick();
                self.verify_handle(
                    &f,
                    &format!("whole-file read through h{i} after the restart"),
                );
            }
        }
    }

    fn read(&mut self) {
        let (i, f) = self.pick();
        let (off, len) = (self.read_offset(), self.size());
        let what = format!("pread h{i} {off:#x}+{len:#x}");
        self.note(what.clone());
        let got = fsx::call(what.clone(), move || pread_full(&f, off, len as usize));
        let got = self.ok(&what, got);
        self.check(&what, off, &self.model.read(off, len), &got);
    }

    fn write(&mut self) {
        let (i, f) = self.pick();
        let (off, len) = (self.offset(), self.size());
        let what = format!(
            "pwrite h{i} {off:#x}+{len:#x}{}",
            if off > self.model.len {
                " (past EOF: a hole)"
            } else {
                ""
            }
        );
        self.note(what.clone());
        let data = data_of(self.op, off, len as usize);
        self.model.write(off, &data);
        let r = fsx::call(what.clone(), move || f.write_all_at(&data, off));
        self.ok(&what, r);
    }

    fn map_read(&mut self) {
        if self.model.len == 0 {
            self.note("mapread skipped: empty file".into());
            return;
        }
        let (i, f) = self.pick();
        let (off, len) = if self.rng.percent(25) {
            // A range ending at EOF.
            let len = self.size().min(self.model.len);
            (self.model.len - len, len)
        } else {
            let off = self.read_offset().min(self.model.len - 1);
            (off, self.size().min(self.model.len - off))
        };
        // Up to EOF, the rest of the last page must read as zeros.
        let pg = page_size();
        let end = off + len;
        let extra = if end == self.model.len {
            (end.next_multiple_of(pg) - end) as usize
        } else {
            0
        };
        let what = format!("mapread h{i} {off:#x}+{len:#x}");
        self.note(what.clone());
        let got = fsx::call(what.clone(), move || {
            let m = Mapping::new(&f, off, len as usize, false)?;
            Ok(m.read(len as usize, extra))
        });
        let mut got = self.ok(&what, got);
        let tail = got.split_off(len as usize);
        self.check(&what, off, &self.model.read(off, len), &got);
        if let Some(p) = tail.iter().position(|&b| b != 0) {
            self.fail(&format!(
                "{what}: the page past EOF {:#x} is not zero: byte at {:#x} is {:#04x}",
                self.model.len,
                end + p as u64,
                tail[p]
            ));
        }
    }

    fn map_write(&mut self) {
        let (i, f) = self.pick();
        let what = format!("mapwrite h{i}");
        let (off, len) = self.map_range(&f, &what);
        // Without msync the data is only in the shared pages when the
        // mapping goes: reads and the store at close must still see it.
        let sync = self.rng.percent(70);
        if !sync {
            self.note("  (no msync before munmap)".into());
        }
        let data = data_of(self.op, off, len as usize);
        self.model.write(off, &data);
        let r = fsx::call(what.clone(), move || {
            let m = Mapping::new(&f, off, data.len(), true)?;
            m.write(&data, sync)
        });
        self.ok(&what, r);
    }

    /// Offset and length of a mapped write: grows the file first where the
    /// range passes EOF (a mapping cannot extend a file).
    fn map_range(&mut self, f: &Arc<File>, what: &str) -> (u64, u64) {
        let (off, len) = (self.offset(), self.size());
        let end = off + len;
        if end > self.model.len {
            let w = format!("{what} {off:#x}+{len:#x}: ftruncate up to {end:#x} first");
            self.note(w.clone());
            let g = f.clone();
            let r = fsx::call(w.clone(), move || g.set_len(end));
            self.ok(&w, r);
            self.model.truncate(end);
        } else {
            self.note(format!("{what} {off:#x}+{len:#x}"));
        }
        (off, len)
    }

    /// A shared writable mapping written before and after every handle is
    /// closed: the kernel releases the file only at munmap, and that store
    /// must carry the late writes to the server (the second client sees
    /// them, allowing for the release being asynchronous).
    fn map_outlives_close(&mut self) {
        let (i, f) = self.pick();
        let what = format!("mapping outlives close: map h{i}");
        let (off, len) = self.map_range(&f, &what);
        let before = data_of(self.op, off, len as usize);
        self.model.write(off, &before);
        let m = fsx::call(format!("{what}: mmap and write"), move || {
            let m = Mapping::new(&f, off, before.len(), true)?;
            m.write(&before, false)?;
            Ok(m)
        });
        let m = self.ok(&what, m);
        self.note("  close all handles (the mapping stays)".into());
        self.close_all();
        // The same bytes again, new values: the file is closed but mapped.
        let late_op = self.op + 100;
        let late = data_of(late_op, off, len as usize);
        let sync = self.rng.percent(50);
        self.note(format!(
            "  write the mapping again after close (as op #{late_op}), {}munmap",
            if sync { "msync, " } else { "" }
        ));
        self.model.write(off, &late);
        let r = fsx::call(format!("{what}: write after close, munmap"), move || {
            m.write(&late, sync)?;
            drop(m);
            Ok(())
        });
        self.ok(&what, r);
        self.reopen_all();
        let (_, f) = self.pick();
        self.verify_handle(&f, "whole-file read after munmap on the first client");
        let limit = Duration::from_secs(10);
        let began = Instant::now();
        loop {
            match self.try_verify_path(true) {
                Ok(()) => break,
                Err(e) if began.elapsed() > limit => {
                    self.note(format!("  {limit:?} on, the second client differs: {e}"));
                    // Fails with the details of the difference.
                    self.verify_path(true);
                    self.fail(&format!("the second client differed for {limit:?}: {e}"));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// copy_file_range(2) within the file (between two handles when there
    /// are two), to a range not overlapping the source.
    fn copy_range(&mut self) {
        if self.model.len == 0 || self.unsupported.contains_key("copy_file_range") {
            self.note("copy_range skipped".into());
            return;
        }
        let (i, src) = self.pick();
        let (j, dst) = self.pick();
        let src_off = self.read_offset().min(self.model.len - 1);
        let len = self.size().min(self.model.len - src_off);
        let mut dst_off = self.offset();
        for _ in 0..8 {
            if dst_off + len <= src_off || src_off + len <= dst_off {
                break;
            }
            dst_off = self.offset();
        }
        if !(dst_off + len <= src_off || src_off + len <= dst_off) {
            self.note("copy_range skipped: no range apart from the source".into());
            return;
        }
        let what = format!("copy_range h{i} {src_off:#x}+{len:#x} -> h{j} {dst_off:#x}");
        self.note(what.clone());
        let r = fsx::call(what.clone(), move || {
            let (mut so, mut doff) = (src_off as libc::loff_t, dst_off as libc::loff_t);
            let mut left = len as usize;
            while left > 0 {
                // SAFETY: two open descriptors and offsets owned here.
                let n = unsafe {
                    libc::copy_file_range(
                        src.as_raw_fd(),
                        &mut so,
                        dst.as_raw_fd(),
                        &mut doff,
                        left,
                        0,
                    )
                };
                match n {
                    n if n < 0 => {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::Interrupted {
                            return Err(e);
                        }
                    }
                    0 => return Err(io::Error::other("copy_file_range returned 0 early")),
                    n => left -= n as usize,
                }
            }
            Ok(())
        });
        match r {
            Err(e) if unsupported(&e) && len == 0 => {}
            Err(e) if unsupported(&e) => {
                self.note(format!("  copy_file_range unsupported: {e}"));
                self.unsupported
                    .insert("copy_file_range", e.raw_os_error().unwrap_or(0));
            }
            r => {
                self.ok(&what, r);
                let data = self.model.read(src_off, len);
                self.model.write(dst_off, &data);
            }
        }
    }

    /// fallocate(2) in one of its modes: allocate (may extend), keep size,
    /// punch a hole, zero a range (may extend).
    fn fallocate(&mut self) {
        let modes: [(&'static str, libc::c_int); 5] = [
            ("fallocate", 0),
            ("fallocate keep-size", libc::FALLOC_FL_KEEP_SIZE),
            (
                "punch hole",
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            ),
            ("zero range", libc::FALLOC_FL_ZERO_RANGE),
            (
                "zero range keep-size",
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            ),
        ];
        let (name, mode) = modes[self.rng.below(modes.len() as u64) as usize];
        if self.unsupported.contains_key(name) {
            self.note(format!("{name} skipped: unsupported"));
            return;
        }
        let (i, f) = self.pick();
        let (off, len) = (self.offset(), self.size());
        let what = format!("{name} h{i} {off:#x}+{len:#x}");
        self.note(what.clone());
        let r = fsx::call(what.clone(), move || {
            // SAFETY: an open descriptor.
            let rc = unsafe {
                libc::fallocate(f.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t)
            };
            if rc == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        });
        match r {
            Err(e) if unsupported(&e) => {
                self.note(format!("  {name} unsupported: {e}"));
                self.unsupported.insert(name, e.raw_os_error().unwrap_or(0));
            }
            r => {
                self.ok(&what, r);
                let end = off + len;
                let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
                if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
                    let zend = if keep { end.min(self.model.len) } else { end };
                    if zend > off {
                        self.model.write(off, &vec![0; (zend - off) as usize]);
                    }
                }
                if !keep && end > self.model.len {
                    self.model.truncate(end);
                }
            }
        }
    }

    fn truncate(&mut self, by_path: bool) {
        let to = if self.rng.percent(10) {
            self.rng.below(self.model.len + 1) // down, often far
        } else {
            let ws = &self.cfg.truncate_windows;
            let (start, len) = ws[self.rng.below(ws.len() as u64) as usize];
            start + self.rng.below(len + 1)
        };
        let dir = match to.cmp(&self.model.len) {
            std::cmp::Ordering::Less => "down",
            std::cmp::Ordering::Equal => "same",
            std::cmp::Ordering::Greater => "up",
        };
        let r = if by_path {
            let what = format!("truncate(path) {:#x} -> {to:#x} ({dir})", self.model.len);
            self.note(what);
            fsx::truncate(self.path(), to)
        } else {
            let (i, f) = self.pick();
            let what = format!("ftruncate h{i} {:#x} -> {to:#x} ({dir})", self.model.len);
            self.note(what.clone());
            fsx::call(what, move || f.set_len(to))
        };
        self.ok("truncate", r);
        self.model.truncate(to);
    }

    /// The second client opens the file (it was closed on the first),
    /// writes to it and closes; the first reopens.
    fn write_remote(&mut self) {
        self.note("close all; second client writes".into());
        self.close_all();
        let p = self.b.v().path(self.rel);
        let mut o = OpenOptions::new();
        o.read(true).write(true);
        let f = timed_for(
            self.cfg.whole_file_limit,
            "open on the second client (fetches the file)",
            move_open(p, o),
        );
        let f = Arc::new(self.ok("open on the second client", f));
        let len = self.ok(
            "fstat on the second client",
            fsx::call("fstat".into(), {
                let f = f.clone();
                move || f.metadata().map(|m| m.len())
            }),
        );
        if len != self.model.len {
            self.fail(&format!(
                "second client opened a file of {len:#x} bytes; the first closed {:#x}",
                self.model.len
            ));
        }
        for _ in 0..self.rng.between(1, 3) {
            if self.rng.percent(20) {
                let to = self.offset();
                let what = format!("  remote ftruncate {:#x} -> {to:#x}", self.model.len);
                self.note(what.clone());
                let g = f.clone();
                let r = fsx::call(what.clone(), move || g.set_len(to));
                self.ok(&what, r);
                self.model.truncate(to);
            } else {
                let (off, len) = (self.offset(), self.size());
                let what = format!("  remote pwrite {off:#x}+{len:#x}");
                self.note(what.clone());
                let data = data_of(self.op, off, len as usize);
                self.model.write(off, &data);
                let g = f.clone();
                let r = fsx::call(what.clone(), move || g.write_all_at(&data, off));
                self.ok(&what, r);
            }
        }
        self.close(f);
        self.note("  remote close; first client reopens".into());
        self.reopen_all();
    }

    // -- whole-file checks ----------------------------------------------------

    /// Reads the whole file through `f` (in slices, each timed) against the
    /// model, and its length with fstat.
    fn verify_handle(&self, f: &Arc<File>, what: &str) {
        let g = f.clone();
        let len = fsx::call(format!("{what}: fstat"), move || {
            g.metadata().map(|m| m.len())
        });
        let len = self.ok(what, len);
        if len != self.model.len {
            self.fail(&format!(
                "{what}: length {len:#x}, model {:#x}",
                self.model.len
            ));
        }
        const SLICE: u64 = 8 * MIB;
        let mut off = 0;
        loop {
            let g = f.clone();
            let got = fsx::call(format!("{what}: pread {off:#x}"), move || {
                pread_full(&g, off, SLICE as usize)
            });
            let got = self.ok(what, got);
            self.check(what, off, &self.model.read(off, SLICE), &got);
            if (got.len() as u64) < SLICE {
                break;
            }
            off += SLICE;
        }
    }

    /// As [`Fsx::verify_path`], returning a mismatch instead of failing.
    fn try_verify_path(&self, second: bool) -> Result<(), String> {
        let v = if second { self.b.v() } else { self.a.v() };
        let p = v.path(self.rel);
        let o = {
            let mut o = OpenOptions::new();
            o.read(true);
            o
        };
        let f = timed_for(self.cfg.whole_file_limit, "open", move_open(p, o))
            .map_err(|e| format!("open: {e}"))?;
        let f = Arc::new(f);
        let g = f.clone();
        let r = fsx::call("read the whole file".into(), move || {
            let len = g.metadata()?.len();
            pread_full(&g, 0, len as usize + 1)
        });
        self.close(f);
        let got = r.map_err(|e| format!("read: {e}"))?;
        let want = self.model.read(0, self.model.len);
        if got == want {
            return Ok(());
        }
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        Err(format!(
            "length {:#x} (model {:#x}), first differing byte at {first:x?}",
            got.len(),
            want.len()
        ))
    }

    /// Opens the file by path on the first client or the second (which
    /// fetches it whole), checks it all, and closes it.
    fn verify_path(&self, second: bool) {
        let (v, who) = if second {
            (self.b.v(), "second client")
        } else {
            (self.a.v(), "first client")
        };
        let p = v.path(self.rel);
        let m = self.ok(&format!("stat on the {who}"), fsx::metadata(&p));
        if m.len() != self.model.len {
            self.fail(&format!(
                "stat on the {who}: length {:#x}, model {:#x}",
                m.len(),
                self.model.len
            ));
        }
        let mut o = OpenOptions::new();
        o.read(true);
        let f = timed_for(
            self.cfg.whole_file_limit,
            &format!("open on the {who} (may fetch the file)"),
            move_open(p, o),
        );
        let f = Arc::new(self.ok(&format!("open on the {who}"), f));
        self.verify_handle(&f, &format!("whole-file read on the {who}"));
        self.close(f);
    }

    fn check_size(&mut self) {
        let (i, f) = self.pick();
        let len = fsx::call(format!("fstat h{i}"), move || f.metadata().map(|m| m.len()));
        let len = self.ok("fstat", len);
        if len != self.model.len {
            self.fail(&format!(
                "after the op, fstat h{i}: length {len:#x}, model {:#x}",
                self.model.len
            ));
        }
    }

    /// Closes everything (a clean end) and removes the file.
    fn finish(mut self) {
        self.close_all();
        let p = self.path();
        self.ok("unlink", fsx::remove_file(p));
    }
}

/// A client with its own scratch directories, removed after it is dropped
/// (killed and unmounted).
struct Client {
    /// None only inside a restart.
    v: Option<Venus>,
    _cache: tempfile::TempDir,
    _mount: tempfile::TempDir,
}

impl Client {
    fn v(&self) -> &Venus {
        self.v.as_ref().expect("a running venus")
    }
}

fn move_open(p: PathBuf, o: OpenOptions) -> impl FnOnce() -> io::Result<File> + Send + 'static {
    move || o.open(&p)
}

// ---------------------------------------------------------------------------
// The runs.

const SMALL: Weights = Weights {
    read: 20,
    write: 22,
    map_read: 10,
    map_write: 10,
    truncate: 9,
    truncate_path: 2,
    fsync: 4,
    stat: 3,
    close_open: 5,
    open_trunc: 1,
    verify_local: 2,
    verify_remote: 3,
    write_remote: 2,
    copy_range: 4,
    fallocate: 3,
    // Off: a mapping that outlives close is a known gap (see mmap_writes_after_close_reach_the_server).
    map_outlives_close: 0,
    restart: 0,
};

fn small(name: &'static str, seed: u64, handles: usize) -> Config {
    Config {
        name,
        seed,
        ops: 3000,
        handles,
        windows: vec![(0, 4 * MIB)],
        truncate_windows: vec![(0, 4 * MIB)],
        final_len: 0,
        max_op: 512 * KIB,
        w: SMALL,
        venus_args: &[],
        whole_file_limit: FS_TIMEOUT,
    }
}

/// The long runs go one at a time: the 4 GiB run moves some 12 GiB through
/// two caches and a server, and each run starts two clients and a server,
/// so on a 2-core machine two at once measure the machine (their calls have
/// 30 s and 60 s limits), not the file system. The short tests share.
static DISK: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn sharing_the_disk() -> std::sync::RwLockReadGuard<'static, ()> {
    DISK.read().unwrap_or_else(|p| p.into_inner())
}

fn alone() -> std::sync::RwLockWriteGuard<'static, ()> {
    DISK.write().unwrap_or_else(|p| p.into_inner())
}

/// One handle, a file of up to 4 MiB.
#[test]
fn fsx_one_handle() {
    let _alone = alone();
    let mut fx = Fsx::new(configured(small("fsx_one_handle", 0xc0da_f5c5_0001, 1)));
    fx.run();
    fx.finish();
}

/// Two O_RDWR handles on the file on the first client, each op through
/// either: what one writes the other reads; closing one stores the file
/// while the other stays open.
#[test]
fn fsx_two_handles_on_one_client() {
    let _alone = alone();
    let mut fx = Fsx::new(configured(small(
        "fsx_two_handles_on_one_client",
        0xc0da_f5c5_0002,
        2,
    )));
    fx.run();
    fx.finish();
}

#[test]
fn fsx_sparse_past_4gib() {
    let _alone = alone();
    // Offsets in the first MiB and around 4 GiB: the file is longer than
    // 4 GiB (a 32-bit length or offset would wrap) but only a few MiB of it
    // are written. Whole-file traffic (a close or an fsync stores it, the
    // second client fetches it) moves all 4 GiB, some 15 s each: it happens
    // once, at the end, when the file is closed and checked on both clients.
    let cfg = Config {
        name: "fsx_sparse_past_4gib",
        seed: 0xc0da_f5c5_0004,
        ops: 5000,
        handles: 1,
        windows: vec![(0, MIB), (4 * GIB - 3 * MIB, 8 * MIB)],
        // Mostly around 4 GiB, so the file stays long.
        truncate_windows: vec![(4 * GIB - 3 * MIB, 8 * MIB)],
        final_len: 4 * GIB + 3 * MIB,
        max_op: 512 * KIB,
        w: Weights {
            truncate_path: 1,
            stat: 3,
            close_open: 0,
            open_trunc: 0,
            verify_local: 0,
            verify_remote: 0,
            write_remote: 0,
            map_outlives_close: 0,
            fsync: 0,
            ..SMALL
        },
        // The cache counts a file by its length: 4 GiB would not fit the
        // default 4G limit.
        venus_args: &["--cache-size", "16G"],
        whole_file_limit: Duration::from_secs(300),
    };
    let mut fx = Fsx::new(configured(cfg));
    fx.run();
    fx.finish();
}

#[test]
fn fsx_tiny_cache_and_restarts() {
    let _alone = alone();
    // A cache smaller than the file: every close leaves it over the limit,
    // so a closed file is evicted and the next open fetches it again; and
    // now and then the first client restarts on its cache.
    let mut cfg = small("fsx_tiny_cache_and_restarts", 0xc0da_f5c5_0005, 1);
    cfg.ops = 1500;
    cfg.w.restart = 1;
    cfg.venus_args = &["--cache-size", "1M"];
    let mut fx = Fsx::new(configured(cfg));
    fx.run();
    fx.finish();
}

/// The reduced case of what `map_outlives_close` finds: a file mapped
/// shared and writable, closed, written through the mapping, unmapped. By
/// POSIX the mapping keeps the file open, and Coda's kernel module keeps its
/// file (so the CLOSE upcall) alive until munmap for this reason: the late
/// write must be stored when the last reference goes, or the server (and
/// every other client) keeps the contents of the close while this client's
/// cache holds the later ones.
#[test]
#[ignore = "known gap: Venus cannot see a mapping outlive close without deadlocking (see the issue-5 note)"]
fn mmap_writes_after_close_reach_the_server() {
    let _disk = sharing_the_disk();
    let srv = Server::start(1);
    let a = Venus::start(&srv.addr);
    a.clog_admin();
    let b = Venus::start(&srv.addr);
    b.clog_admin();
    let p = a.path("mapped");
    fsx::write(&p, vec![b'.'; 4096]).unwrap();
    let mut o = OpenOptions::new();
    o.read(true).write(true);
    let f = fsx::open_with(&p, o).unwrap();
    let m = fsx::call("mmap".into(), move || {
        let m = Mapping::new(&f, 0, 4096, true)?;
        Ok::<_, io::Error>((m, f))
    });
    let (m, f) = m.unwrap();
    fsx::close(f); // the mapping holds the file open
    fsx::call("write Y through the mapping, munmap".into(), move || {
        m.write(b"Y", false).unwrap();
        drop(m); // the release: the last reference to the open file
    });
    // The first client sees its own write.
    assert_eq!(fsx::read(&p).unwrap()[0], b'Y');
    let seen = |v: &Venus| fsx::read(v.path("mapped")).unwrap()[0];
    let began = Instant::now();
    while seen(&b) != b'Y' && began.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        seen(&b) as char,
        'Y',
        "the second client still reads the byte before the mapped write 10 s \
         after munmap; the first reads {:?}",
        seen(&a) as char
    );
}

/// Spins two threads per CPU until dropped: a busy machine, on which the
/// daemons' threads wait for a core, so races between them show.
struct Busy(
    Arc<std::sync::atomic::AtomicBool>,
    Vec<std::thread::JoinHandle<()>>,
);

impl Busy {
    fn new() -> Busy {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let n = 2 * std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        std::hint::spin_loop();
                    }
                })
            })
            .collect();
        Busy(stop, threads)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

/// The reduced case of the close-to-open failures the runs above meet on a
/// busy machine: a writer closes, and at once the other client (which has
/// the file cached, with a callback promise) stats and reads it. The close
/// returns when the server has the store; the other client must not go on
/// serving the version before it. The machine is kept busy meanwhile (the
/// race is rare on an idle one).
#[test]
fn the_other_client_sees_a_close_at_once() {
    let _disk = sharing_the_disk();
    let srv = Server::start(1);
    let a = Venus::start(&srv.addr);
    a.clog_admin();
    let b = Venus::start(&srv.addr);
    b.clog_admin();
    let (pa, pb) = (a.path("ping"), b.path("ping"));
    let rounds = 500;
    let mut stale = Vec::new();
    let began = Instant::now();
    let busy = Busy::new();
    for i in 0..rounds {
        // Alternate the writer, so each client in turn holds a promise the
        // other's close must break. Lengths change every round.
        let (w, r) = if i % 2 == 0 { (&pa, &pb) } else { (&pb, &pa) };
        let data = format!("round {i} {}", ".".repeat(i as usize % 7));
        fsx::write(w, &data).unwrap();
        let len = fsx::metadata(r).unwrap().len();
        let got = fsx::read(r).unwrap();
        if len != data.len() as u64 || got != data.as_bytes() {
            stale.push(format!(
                "round {i}: wrote {data:?} ({} bytes) on {}; the other stat {len}, read {:?}",
                data.len(),
                if i % 2 == 0 { "a" } else { "b" },
                String::from_utf8_lossy(&got)
            ));
        }
    }
    drop(busy);
    eprintln!(
        "{rounds} rounds in {:.1?}; {} stale",
        began.elapsed(),
        stale.len()
    );
    assert!(
        stale.is_empty(),
        "{} of {rounds} rounds read the version before the other client's close:\n{}",
        stale.len(),
        stale.join("\n")
    );
}

/// The reduced case of what `fsx_tiny_cache_and_restarts` finds: a client
/// whose cache limit is smaller than a file fetches the file whole to open
/// it. The file being opened is in use, so it is no victim for eviction:
/// the open succeeds and reads the file (the cache is over its limit until
/// the file is closed).
#[test]
fn a_file_larger_than_the_cache_limit_opens() {
    let _disk = sharing_the_disk();
    let srv = Server::start(1);
    let a = Venus::start(&srv.addr);
    a.clog_admin();
    let cache = tempfile::tempdir().unwrap();
    let mount = tempfile::tempdir().unwrap();
    let b = Venus::start_with_args(
        &srv.addr,
        cache.path(),
        mount.path(),
        &["--cache-size", "1M"],
    );
    b.clog_admin();
    let data = coda_tests::pattern(2 * MIB as usize, 5);
    fsx::write(a.path("big"), &data).unwrap();
    let got = fsx::read(b.path("big"));
    assert!(
        matches!(&got, Ok(d) if d == &data),
        "reading a 2 MiB file through a client with a 1 MiB cache: {:?}",
        got.map(|d| format!("{} bytes, equal: {}", d.len(), d == data))
    );
}
