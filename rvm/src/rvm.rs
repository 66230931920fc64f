//! The RVM instance: open and recover, begin transactions, group commit, truncation.

use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::format::{
    LogPos, LogStatus, SegmentHeader, AREA_BYTES_MAX, LOG_AREA_START, RECORD_ALIGN_BYTES,
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, STATUS_SLOT_BYTES,
};
use crate::log::{apply_to_segment, FlushBatch, Group, LogState, Scanner, Step};
use crate::ranges::RangeSet;
use crate::segment::{ReadView, SegmentMem};
use crate::storage::{FileStorage, Storage};
use crate::transaction::{CommitId, Mode, Transaction};

/// The smallest record area a log may have.
pub const LOG_AREA_BYTES_MIN: u64 = 64 << 10;
/// The smallest data area a segment may have.
pub const SEGMENT_DATA_BYTES_MIN: u64 = 4096;

/// How an RVM instance behaves. Only `log_area_bytes` is fixed at creation.
#[derive(Debug, Clone)]
pub struct Options {
    /// Size of the log's record area, for a new log.
    pub log_area_bytes: u64,
    /// Truncate once this share of the log is in use (Coda's default is 50).
    pub truncate_threshold_percent: u8,
    /// Truncate in a background thread; otherwise the flush that passes the threshold does it.
    pub background_truncation: bool,
    /// Flush no-flush commits at least this often (Coda's bounded persistence).
    pub flush_interval: Option<Duration>,
    /// Buffered no-flush bytes that force a flush (Coda's `flush_buf_len`).
    pub flush_buffer_bytes: u64,
    /// A flush driver ([`Rvm::begin_flush`]) makes no-flush commits durable:
    /// such a commit never waits for a flush, not even past
    /// `flush_buffer_bytes`, so the thread that drives the flush can also
    /// commit while its flush is in flight. The driver must keep up.
    pub flush_by_driver: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            log_area_bytes: 64 << 20,
            truncate_threshold_percent: 50,
            background_truncation: true,
            flush_interval: None,
            flush_buffer_bytes: 4 << 20,
            flush_by_driver: false,
        }
    }
}

/// Bounds derived from the log size, each tied to the others.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// One transaction's record at most: a quarter of the log, so buffered commits
    /// plus one more always fit an emptied log.
    pub transaction_bytes_max: u64,
    pub pending_bytes_max: u64,
    pub truncate_at_bytes: u64,
}

impl Limits {
    fn new(area_len: u64, opts: &Options) -> Limits {
        let transaction_bytes_max = area_len / 4;
        let pending_bytes_max = opts
            .flush_buffer_bytes
            .clamp(RECORD_HEADER_BYTES, transaction_bytes_max);
        let pct = u64::from(opts.truncate_threshold_percent.clamp(1, 90));
        let limits = Limits {
            transaction_bytes_max,
            pending_bytes_max,
            truncate_at_bytes: area_len / 100 * pct,
        };
        // Buffered commits (at most pending + one transaction) fit an empty log.
        assert!(limits.pending_bytes_max + 2 * limits.transaction_bytes_max < area_len);
        limits
    }
}

/// What opening found in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryReport {
    pub records_replayed: u64,
    pub bytes_replayed: u64,
    pub tail: Tail,
}

/// How the log ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tail {
    Clean,
    /// A torn or corrupt record was cut off, never applied: where and why.
    Cut {
        offset: u64,
        reason: String,
    },
}

/// Counters, for tests and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub commits: u64,
    /// Log writes, each followed by one sync.
    pub flushes: u64,
    pub records_written: u64,
    pub log_bytes_written: u64,
    pub truncations: u64,
    pub log_used_bytes: u64,
    pub log_area_bytes: u64,
    pub pending_bytes: u64,
}

/// What a flush driver does next (see [`Rvm::begin_flush`]).
#[derive(Debug)]
pub enum FlushStep {
    /// Nothing to write now: nothing is buffered, or another flush is in flight.
    Idle,
    /// Write the job's bytes, sync, then [`FlushJob::finish`].
    Write(FlushJob),
    /// The log has no room for the next record: truncate first.
    Truncate,
}

/// A claimed flush: the log writes to make, and the commits they make durable.
/// Finish or drop it before dropping its [`Rvm`], which flushes and so waits for it.
pub struct FlushJob {
    inner: Arc<Inner>,
    batch: Option<FlushBatch>,
}

impl FlushJob {
    /// The runs to write: (offset in the log, bytes).
    pub fn writes(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        let batch = self
            .batch
            .as_ref()
            .expect("an unfinished job holds its batch");
        batch
            .writes
            .iter()
            .map(|(at, bytes)| (*at, bytes.as_slice()))
    }

    /// Reports how the writes and the sync went; the job's commits are durable once
    /// this returns `Ok`. A failure stops the RVM until it is reopened.
    pub fn finish(mut self, written: std::io::Result<()>) -> Result<()> {
        let batch = self
            .batch
            .take()
            .expect("an unfinished job holds its batch");
        self.inner.end_flush(&batch, written, true)
    }
}

impl Drop for FlushJob {
    fn drop(&mut self) {
        if let Some(batch) = self.batch.take() {
            self.inner.abandon_flush(batch);
        }
    }
}

impl std::fmt::Debug for FlushJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bytes: usize = self.writes().map(|(_, b)| b.len()).sum();
        write!(f, "FlushJob({bytes} bytes)")
    }
}

/// The next step towards durability, as [`Inner::claim_flush`] sees it.
enum Claim {
    Idle,
    Write(FlushBatch),
    Truncate,
}

pub(crate) struct Inner {
    seg_store: Box<dyn Storage>,
    log_store: Box<dyn Storage>,
    segment: RwLock<SegmentMem>,
    data_len: u64,
    log_id: u64,
    pub(crate) limits: Limits,
    log: Mutex<LogState>,
    /// Signalled when a flush completes or truncation frees space.
    log_changed: Condvar,
    /// One truncation at a time.
    truncation: Mutex<()>,
    daemon: Mutex<DaemonSignal>,
    daemon_wake: Condvar,
    poisoned: AtomicBool,
    background_truncation: bool,
    flush_interval: Option<Duration>,
    pub(crate) flush_by_driver: bool,
}

#[derive(Default)]
struct DaemonSignal {
    wake: bool,
    shutdown: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Recoverable virtual memory: a segment mapped into memory, changed only inside
/// transactions, made durable by a redo log, recovered on open.
pub struct Rvm {
    inner: Arc<Inner>,
    daemon: Option<JoinHandle<()>>,
}

fn random_id() -> u64 {
    let mut h = std::hash::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    h.write_u128(now.map_or(0, |d| d.as_nanos()));
    h.write_u32(std::process::id());
    h.finish()
}

fn initial_chain(log_id: u64) -> u32 {
    (log_id as u32) ^ ((log_id >> 32) as u32) ^ 0x5256_4d21
}

fn write_status(log: &dyn Storage, status: &LogStatus) -> Result<()> {
    log.write_at(status.slot_offset(), &status.encode())
        .map_err(Error::io("log status"))?;
    log.sync().map_err(Error::io("log status"))
}

fn read_status(log: &dyn Storage) -> Result<LogStatus> {
    let mut slots = Vec::new();
    let mut first_error = None;
    for slot in 0..2 {
        let offset = slot * STATUS_SLOT_BYTES;
        let mut b = vec![0u8; 64];
        let decoded = log
            .read_at(offset, &mut b)
            .map_err(Error::io("log status"))
            .and_then(|_| LogStatus::decode(&b, offset));
        match decoded {
            Ok(s) => slots.push(s),
            // A newer format in either slot means a newer program wrote this log.
            Err(
                e @ Error::VersionMismatch {
                    found, supported, ..
                },
            ) if found > supported => return Err(e),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    // A torn status write spoils one slot; the other still names a consistent head.
    slots
        .into_iter()
        .max_by_key(|s| s.generation)
        .ok_or_else(|| first_error.expect("both slots failed"))
}

impl Rvm {
    /// Creates a new segment of `data_len` bytes and an empty log, and opens them.
    pub fn create(
        segment: Box<dyn Storage>,
        log: Box<dyn Storage>,
        data_len: u64,
        opts: Options,
    ) -> Result<Rvm> {
        init_log_and_segment(segment.as_ref(), log.as_ref(), data_len, &opts)?;
        Ok(Rvm::open(segment, log, opts)?.0)
    }

    /// Opens a segment and its log, replaying committed records into the segment.
    pub fn open(
        segment: Box<dyn Storage>,
        log: Box<dyn Storage>,
        opts: Options,
    ) -> Result<(Rvm, RecoveryReport)> {
        let mut header = vec![0u8; 64];
        segment
            .read_at(0, &mut header)
            .map_err(Error::io("segment header"))?;
        let seg_header = SegmentHeader::decode(&header)?;
        let seg_len = segment.size().map_err(Error::io("segment"))?;
        let want = SEGMENT_HEADER_BYTES.saturating_add(seg_header.data_len);
        if seg_len < want {
            return Err(Error::Corrupt {
                what: "segment",
                offset: seg_len,
                reason: format!("file has {seg_len} bytes, header promises {want}"),
            });
        }
        let status = read_status(log.as_ref())?;
        if status.log_id != seg_header.log_id {
            return Err(Error::LogMismatch {
                log_id: status.log_id,
                expected: seg_header.log_id,
            });
        }
        let log_len = log.size().map_err(Error::io("log"))?;
        if log_len < LOG_AREA_START + status.area_len {
            return Err(Error::Corrupt {
                what: "log",
                offset: log_len,
                reason: format!(
                    "file has {log_len} bytes, status promises {}",
                    LOG_AREA_START + status.area_len
                ),
            });
        }
        if status.area_len < LOG_AREA_BYTES_MIN {
            return Err(Error::LogTooSmall {
                requested: status.area_len,
                minimum: LOG_AREA_BYTES_MIN,
            });
        }

        // A process that died after writing records but before syncing them left them
        // in the page cache only: make them durable before any reaches the segment, or
        // a power cut could keep their effect in the segment and lose them from the log.
        log.sync().map_err(Error::io("log"))?;
        let mut applied = apply_to_segment(
            log.as_ref(),
            segment.as_ref(),
            SEGMENT_HEADER_BYTES,
            status.area_len,
            seg_header.data_len,
            status.head,
            None,
        )?;
        let mut generation = status.generation;
        if applied.records > 0 || applied.cut.is_some() {
            segment.sync().map_err(Error::io("segment"))?;
            generation += 1;
            if let Some((offset, _)) = &applied.cut {
                // Blank the bad header so the next open does not report it again, and
                // start a fresh chain: a record after the cut one can then never
                // follow a new record, even one written byte for byte the same.
                log.write_at(*offset, &[0u8; RECORD_HEADER_BYTES as usize])
                    .map_err(Error::io("log"))?;
                let mut chain = crc32fast::Hasher::new_with_initial(applied.end.chain);
                chain.update(&generation.to_le_bytes());
                applied.end.chain = chain.finalize();
            }
            write_status(
                log.as_ref(),
                &LogStatus {
                    generation,
                    head: applied.end,
                    ..status
                },
            )?;
        }
        let report = RecoveryReport {
            records_replayed: applied.records,
            bytes_replayed: applied.bytes,
            tail: match applied.cut {
                None => Tail::Clean,
                Some((offset, reason)) => Tail::Cut { offset, reason },
            },
        };

        let mem = SegmentMem::load(segment.as_ref(), seg_header.data_len)?;
        let inner = Arc::new(Inner {
            seg_store: segment,
            log_store: log,
            segment: RwLock::new(mem),
            data_len: seg_header.data_len,
            log_id: seg_header.log_id,
            limits: Limits::new(status.area_len, &opts),
            log: Mutex::new(LogState::new(status.area_len, applied.end, generation)),
            log_changed: Condvar::new(),
            truncation: Mutex::new(()),
            daemon: Mutex::new(DaemonSignal::default()),
            daemon_wake: Condvar::new(),
            poisoned: AtomicBool::new(false),
            background_truncation: opts.background_truncation,
            flush_interval: opts.flush_interval,
            flush_by_driver: opts.flush_by_driver,
        });
        let daemon = if opts.background_truncation || opts.flush_interval.is_some() {
            let inner = Arc::clone(&inner);
            Some(
                std::thread::Builder::new()
                    .name("rvm-daemon".into())
                    .spawn(move || inner.daemon_loop())
                    .map_err(Error::io("daemon thread"))?,
            )
        } else {
            None
        };
        Ok((Rvm { inner, daemon }, report))
    }

    /// Opens the segment and log files at these paths, creating both (with a segment
    /// of `data_len` bytes) when the segment file does not exist.
    pub fn open_files(
        segment: &Path,
        log: &Path,
        data_len: u64,
        opts: Options,
    ) -> Result<(Rvm, RecoveryReport)> {
        // The log stays locked from here on, so two processes creating the same
        // pair take turns, and nothing changes the pair between creation and open.
        let log_store = open_store(log, !segment.exists(), "log")?;
        if !segment.exists() {
            if log_holds_state(&log_store)? {
                return Err(Error::Corrupt {
                    what: "segment",
                    offset: 0,
                    reason: format!(
                        "{} is missing but {} is not a new, unused log; \
                         restore the segment, or move the log away to start afresh",
                        segment.display(),
                        log.display()
                    ),
                });
            }
            // Build the segment under a temporary name and rename it into place, so a
            // crash during creation never leaves a half-made segment behind.
            let tmp = segment.with_extension("creating");
            let seg_store = open_store(&tmp, true, "segment")?;
            init_log_and_segment(&seg_store, &log_store, data_len, &opts)?;
            std::fs::rename(&tmp, segment).map_err(Error::io("segment"))?;
            if let Some(dir) = segment.parent() {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                std::fs::File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(Error::io("segment directory"))?;
            }
        }
        let seg_store = open_store(segment, false, "segment")?;
        Rvm::open(Box::new(seg_store), Box::new(log_store), opts)
    }

    /// Begins a transaction; it holds the segment until it commits or aborts.
    pub fn begin(&self, mode: Mode) -> Result<Transaction<'_>> {
        self.inner.check()?;
        let seg = self
            .inner
            .segment
            .write()
            .unwrap_or_else(|p| p.into_inner());
        Ok(Transaction {
            inner: &self.inner,
            seg: Some(seg),
            mode,
            declared: RangeSet::default(),
            undo: Vec::new(),
        })
    }

    /// Reads the committed state (and nothing a transaction is changing). It waits
    /// while a transaction is open, so a thread holding one reads through the
    /// transaction instead: calling this then would wait forever.
    pub fn read(&self) -> Result<ReadView<'_>> {
        self.inner.check()?;
        Ok(ReadView {
            seg: self.inner.segment.read().unwrap_or_else(|p| p.into_inner()),
        })
    }

    /// Makes every commit so far durable (Coda's `rvm_flush`).
    pub fn flush(&self) -> Result<()> {
        let last = lock(&self.inner.log).last_commit;
        self.inner.wait_durable(CommitId(last))
    }

    /// For a driver that does the log's I/O itself (an io_uring executor) instead of
    /// waiting in [`flush`](Self::flush): the next step towards durability. After
    /// `Write`, write each of the job's runs at its log offset, sync the log, and
    /// report with [`FlushJob::finish`]; no other flush starts meanwhile, and a job
    /// dropped unfinished gives its commits back to be flushed again.
    /// `Truncate`: call [`truncate`](Self::truncate) first. `Idle`: nothing buffered,
    /// or a flush is in flight.
    pub fn begin_flush(&self) -> Result<FlushStep> {
        let mut log = lock(&self.inner.log);
        log.check()?;
        Ok(match self.inner.claim_flush(&mut log)? {
            Claim::Idle => FlushStep::Idle,
            Claim::Truncate => FlushStep::Truncate,
            Claim::Write(batch) => FlushStep::Write(FlushJob {
                inner: Arc::clone(&self.inner),
                batch: Some(batch),
            }),
        })
    }

    /// Whether commit `id` is durable.
    pub fn is_durable(&self, id: CommitId) -> bool {
        lock(&self.inner.log).durable_commit >= id.0
    }

    /// Applies the durable log to the segment file and reclaims the log (Coda's
    /// `rvm_truncate`). Commits may go on meanwhile.
    pub fn truncate(&self) -> Result<()> {
        self.inner.check()?;
        self.inner.truncate()
    }

    pub fn data_len(&self) -> u64 {
        self.inner.data_len
    }

    pub fn log_id(&self) -> u64 {
        self.inner.log_id
    }

    pub fn stats(&self) -> Stats {
        let log = lock(&self.inner.log);
        Stats {
            commits: log.stats.commits,
            flushes: log.stats.flushes,
            records_written: log.stats.records_written,
            log_bytes_written: log.stats.bytes_written,
            truncations: log.stats.truncations,
            log_used_bytes: log.used(),
            log_area_bytes: log.area_len,
            pending_bytes: log.pending_bytes,
        }
    }

    /// Flushes, truncates and stops the background thread.
    pub fn close(mut self) -> Result<()> {
        self.stop_daemon();
        self.flush()?;
        self.inner.truncate()
    }

    fn stop_daemon(&mut self) {
        if let Some(handle) = self.daemon.take() {
            lock(&self.inner.daemon).shutdown = true;
            self.inner.daemon_wake.notify_all();
            let _ = handle.join();
        }
    }
}

impl Drop for Rvm {
    fn drop(&mut self) {
        self.stop_daemon();
        // A normal exit keeps buffered commits; errors have nowhere to go here.
        let _ = self.flush();
    }
}

fn open_store(path: &Path, create: bool, what: &'static str) -> Result<FileStorage> {
    FileStorage::open(path, create).map_err(|source| match source.kind() {
        std::io::ErrorKind::WouldBlock => Error::InUse {
            path: path.display().to_string(),
        },
        _ => Error::Io { what, source },
    })
}

/// Whether the log file must be kept rather than made into a new log: anything
/// but a missing or empty file, a log whose status was never written (all zeros), or
/// a log RVM created and never used (generation 0 and no record).
fn log_holds_state(store: &FileStorage) -> Result<bool> {
    let status = match read_status(store) {
        Ok(status) => status,
        Err(e @ Error::VersionMismatch { .. }) => return Err(e),
        Err(_) => {
            // Creation writes zeros first and the status last: a creation cut short
            // leaves status slots that are zeros or not there yet.
            let size = store.size().map_err(Error::io("log"))?.min(LOG_AREA_START);
            let mut slots = vec![0u8; size as usize];
            store.read_at(0, &mut slots).map_err(Error::io("log"))?;
            return Ok(slots.iter().any(|b| *b != 0));
        }
    };
    if status.generation > 0 {
        return Ok(true);
    }
    let mut scanner = Scanner::new(store, status.area_len, u64::MAX, status.head);
    Ok(matches!(scanner.next(|_, _| {}), Ok(Step::Record { .. })))
}

fn init_log_and_segment(
    segment: &dyn Storage,
    log: &dyn Storage,
    data_len: u64,
    opts: &Options,
) -> Result<()> {
    if data_len < SEGMENT_DATA_BYTES_MIN {
        return Err(Error::SegmentTooSmall {
            requested: data_len,
            minimum: SEGMENT_DATA_BYTES_MIN,
        });
    }
    if data_len > AREA_BYTES_MAX {
        return Err(Error::TooLarge {
            what: "segment",
            requested: data_len,
            maximum: AREA_BYTES_MAX,
        });
    }
    if opts.log_area_bytes > AREA_BYTES_MAX {
        return Err(Error::TooLarge {
            what: "log",
            requested: opts.log_area_bytes,
            maximum: AREA_BYTES_MAX,
        });
    }
    let area_len = opts.log_area_bytes / RECORD_ALIGN_BYTES * RECORD_ALIGN_BYTES;
    if area_len < LOG_AREA_BYTES_MIN {
        return Err(Error::LogTooSmall {
            requested: opts.log_area_bytes,
            minimum: LOG_AREA_BYTES_MIN,
        });
    }
    let log_id = random_id();
    // Zero the whole log so later writes land on allocated blocks: a sync then has
    // no file metadata to write, and leftovers of an old file cannot look like records.
    log.set_len(0).map_err(Error::io("log"))?;
    let zeros = vec![0u8; 1 << 20];
    let total = LOG_AREA_START + area_len;
    let mut at = 0;
    while at < total {
        let n = (total - at).min(zeros.len() as u64);
        log.write_at(at, &zeros[..n as usize])
            .map_err(Error::io("log"))?;
        at += n;
    }
    let head = LogPos {
        offset: 0,
        seq: 1,
        chain: initial_chain(log_id),
    };
    write_status(
        log,
        &LogStatus {
            generation: 0,
            log_id,
            area_len,
            head,
        },
    )?;
    segment.set_len(0).map_err(Error::io("segment"))?;
    segment
        .set_len(SEGMENT_HEADER_BYTES + data_len)
        .map_err(Error::io("segment"))?;
    segment
        .write_at(0, &SegmentHeader { data_len, log_id }.encode())
        .map_err(Error::io("segment"))?;
    segment.sync().map_err(Error::io("segment"))
}

impl Inner {
    pub(crate) fn check(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        lock(&self.log).check()
    }

    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::Release);
    }

    /// Copies the declared ranges' new values into the commit buffer. Called with the
    /// segment held, so commit order is the order transactions changed memory.
    /// Returns the commit's id and whether the buffer is full enough to flush now.
    pub(crate) fn log_commit(
        &self,
        seg: &SegmentMem,
        declared: &RangeSet,
    ) -> Result<(CommitId, bool)> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned);
        }
        let mut log = lock(&self.log);
        log.check()?;
        log.last_commit += 1;
        log.stats.commits += 1;
        let id = log.last_commit;
        if declared.is_empty() {
            // Nothing to log: durable as soon as everything before it is.
            // Behind unsynced writes, "durable" must wait for their sync.
            let behind = log.flushing || log.written_commit != log.durable_commit;
            match log.pending.back_mut() {
                Some(g) => g.last_commit = id,
                None if !behind => {
                    log.written_commit = id;
                    log.durable_commit = id;
                }
                // Behind a flush in flight or a write not synced: an empty
                // record marks the point.
                None => {
                    let group = Group {
                        last_commit: id,
                        ..Group::default()
                    };
                    log.pending_bytes += group.map.record_bytes();
                    log.pending.push_back(group);
                }
            }
            return Ok((CommitId(id), false));
        }
        let fits_last = log.pending.back().is_some_and(|g| {
            g.map.record_bytes() + declared.record_bytes() <= self.limits.transaction_bytes_max
        });
        if !fits_last {
            log.pending.push_back(Group::default());
        }
        let group = log.pending.back_mut().expect("a group was just ensured");
        // A new group's record header is part of what it adds to the buffer.
        let before = if fits_last {
            group.map.record_bytes()
        } else {
            0
        };
        for (start, end) in declared.iter() {
            group.map.insert(start, seg.bytes(start, end - start)?);
        }
        group.last_commit = id;
        // Overwriting in place can leave a record as it was, or grow it.
        let after = group.map.record_bytes();
        log.pending_bytes = log.pending_bytes + after - before;
        Ok((
            CommitId(id),
            log.pending_bytes > self.limits.pending_bytes_max,
        ))
    }

    /// Waits until commit `id` is durable, writing the log itself when no other thread
    /// is: everything buffered by then goes in one write and one sync (group commit).
    pub(crate) fn wait_durable(&self, id: CommitId) -> Result<()> {
        self.wait(id, true)
    }

    /// Waits until commit `id` is written to the log file (synced or not).
    pub(crate) fn wait_written(&self, id: CommitId) -> Result<()> {
        self.wait(id, false)
    }

    fn wait(&self, id: CommitId, sync: bool) -> Result<()> {
        let mut log = lock(&self.log);
        loop {
            let reached = if sync {
                log.durable_commit
            } else {
                log.written_commit
            };
            if reached >= id.0 {
                return Ok(());
            }
            log.check()?;
            match self.claim_flush(&mut log)? {
                Claim::Idle => {
                    assert!(
                        log.flushing,
                        "a commit that is not durable is buffered or being flushed"
                    );
                    log = self
                        .log_changed
                        .wait(log)
                        .unwrap_or_else(|p| p.into_inner());
                }
                Claim::Truncate => {
                    drop(log);
                    self.truncate()?;
                    log = lock(&self.log);
                }
                Claim::Write(batch) => {
                    drop(log);
                    let written = self.write_batch(&batch, sync);
                    self.end_flush(&batch, written, sync)?;
                    log = lock(&self.log);
                }
            }
        }
    }

    /// The next step towards making buffered commits durable; `Write` claims the
    /// flush until [`end_flush`](Self::end_flush) or [`abandon_flush`](Self::abandon_flush).
    fn claim_flush(&self, log: &mut LogState) -> Result<Claim> {
        if log.flushing || !log.has_work() {
            return Ok(Claim::Idle);
        }
        if let Some(batch) = log.prepare_flush() {
            log.flushing = true;
            return Ok(Claim::Write(batch));
        }
        if log.used() == 0 {
            let needed = log.pending.front().map_or(0, |g| g.map.record_bytes());
            return Err(Error::LogFull {
                needed,
                limit: self.limits.transaction_bytes_max,
            });
        }
        Ok(Claim::Truncate)
    }

    fn abandon_flush(&self, batch: FlushBatch) {
        let mut log = lock(&self.log);
        assert!(log.flushing, "only a claimed flush is abandoned");
        log.flushing = false;
        log.abandon_flush(batch);
        self.log_changed.notify_all();
    }

    fn end_flush(
        &self,
        batch: &FlushBatch,
        written: std::io::Result<()>,
        synced: bool,
    ) -> Result<()> {
        let mut log = lock(&self.log);
        assert!(log.flushing, "end_flush without a claimed flush");
        log.flushing = false;
        let result = match written {
            Ok(()) => {
                log.complete_flush(batch, synced);
                Ok(())
            }
            Err(source) => {
                let e = Error::Io {
                    what: "log",
                    source,
                };
                log.failed.get_or_insert_with(|| e.to_string());
                Err(e)
            }
        };
        self.log_changed.notify_all();
        if result.is_ok() && log.used() >= self.limits.truncate_at_bytes {
            if self.background_truncation {
                lock(&self.daemon).wake = true;
                self.daemon_wake.notify_all();
            } else {
                drop(log);
                self.truncate()?;
            }
        }
        result
    }

    fn write_batch(&self, batch: &FlushBatch, sync: bool) -> std::io::Result<()> {
        for (offset, bytes) in &batch.writes {
            self.log_store.write_at(*offset, bytes)?;
        }
        if sync {
            self.log_store.sync()?;
        }
        Ok(())
    }

    /// Applies durable records to the segment file, syncs it, then moves the head.
    /// A crash anywhere in between replays the same records again: redo is idempotent.
    pub(crate) fn truncate(&self) -> Result<()> {
        let _one = lock(&self.truncation);
        let (head, end, area_len, generation) = {
            let log = lock(&self.log);
            log.check()?;
            (log.head, log.tail, log.area_len, log.status_generation)
        };
        if head == end {
            return Ok(());
        }
        let data_len = self.data_len;
        let result = (|| {
            apply_to_segment(
                self.log_store.as_ref(),
                self.seg_store.as_ref(),
                SEGMENT_HEADER_BYTES,
                area_len,
                data_len,
                head,
                Some(end),
            )?;
            self.seg_store.sync().map_err(Error::io("segment"))?;
            let status = LogStatus {
                generation: generation + 1,
                log_id: self.log_id,
                area_len,
                head: end,
            };
            write_status(self.log_store.as_ref(), &status)
        })();
        let mut log = lock(&self.log);
        match result {
            Ok(()) => {
                log.head = end;
                log.status_generation = generation + 1;
                log.stats.truncations += 1;
            }
            Err(ref e) => {
                log.failed.get_or_insert_with(|| e.to_string());
            }
        }
        self.log_changed.notify_all();
        result
    }

    fn daemon_loop(&self) {
        let mut last_flush = Instant::now();
        loop {
            let tick = self
                .flush_interval
                .unwrap_or(Duration::from_secs(1))
                .max(Duration::from_millis(1));
            {
                let mut sig = lock(&self.daemon);
                if !sig.wake && !sig.shutdown {
                    sig = self
                        .daemon_wake
                        .wait_timeout(sig, tick)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
                if sig.shutdown {
                    return;
                }
                sig.wake = false;
            }
            if let Some(every) = self.flush_interval {
                if last_flush.elapsed() >= every {
                    last_flush = Instant::now();
                    let last = lock(&self.log).last_commit;
                    if self.wait_durable(CommitId(last)).is_err() {
                        return;
                    }
                }
            }
            let over = lock(&self.log).used() >= self.limits.truncate_at_bytes;
            if self.background_truncation && over && self.truncate().is_err() {
                return;
            }
        }
    }
}
