//! Small transactions on RVM beside redb and SQLite, on the same disk in the same run,
//! plus the disk's raw fdatasync rate and the time to recover a 256 MiB log.
//!
//! Every engine holds the same store: 65,536 slots of 64 bytes (4 MiB). A transaction
//! overwrites 1 or 8 random slots. Each iteration is one commit, so criterion's
//! `elem/s` is commits per second.

use std::cell::OnceCell;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode,
    Throughput,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, TransactionBehavior};
use rvm::{Mode, Options, Rvm};
use tempfile::TempDir;

const SLOT_BYTES: usize = 64;
const SLOTS: u64 = 65_536;
/// Slots changed per transaction: the `1x64` and `8x64` rows.
const SHAPES: [usize; 2] = [1, 8];
const MAX_CHANGES: usize = 8;
/// Flush commits in flight in the `flush_8` group.
const COMMITTERS: usize = 8;

const REDB_TABLE: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("slots");
const SQLITE_UPDATE: &str = "UPDATE slots SET v = ?1 WHERE id = ?2";

/// Recovery fixture: a log holding this much committed, untruncated work.
const RECOVERY_LOG_BYTES: u64 = 256 << 20;
const RECOVERY_SEGMENT_BYTES: u64 = 64 << 20;
/// Flush the fixture every this many commits, so the log holds many records of
/// ordinary size (~40 KiB) rather than a few 4 MiB buffers.
const RECOVERY_FLUSH_EVERY: u64 = 64;

/// The fdatasync baseline writes what RVM writes for one 64-byte change:
/// a 40-byte record header, a 16-byte range header and the 64 bytes.
const FDATASYNC_WRITE_BYTES: usize = 120;
const FDATASYNC_FILE_BYTES: u64 = 64 << 20;

#[derive(Clone, Copy)]
enum Engine {
    Rvm,
    Redb,
    Sqlite,
}

const ENGINES: [Engine; 3] = [Engine::Rvm, Engine::Redb, Engine::Sqlite];

impl Engine {
    fn name(self) -> &'static str {
        match self {
            Engine::Rvm => "rvm",
            Engine::Redb => "redb",
            Engine::Sqlite => "sqlite",
        }
    }
}

/// The scratch directory for every engine: under the target directory, on the real
/// disk (never a tmpfs), so all engines and the fdatasync baseline share one disk.
fn scratch_dir() -> TempDir {
    tempfile::Builder::new()
        .prefix("rvm-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch directory")
}

/// RVM's ordinary configuration (Coda's defaults), written out so the benchmark does
/// not drift if the defaults change.
fn rvm_options() -> Options {
    Options {
        log_area_bytes: 64 << 20,
        truncate_threshold_percent: 50,
        background_truncation: true,
        flush_interval: None,
        flush_buffer_bytes: 4 << 20,
        flush_by_driver: false,
    }
}

/// The three stores, each already holding every slot.
struct Stores {
    rvm: Rvm,
    redb: redb::Database,
    sqlite: PathBuf,
}

impl Stores {
    fn create(dir: &Path) -> Stores {
        let data_len = SLOTS * SLOT_BYTES as u64;
        // A new segment is zero-filled: every slot exists already.
        let (rvm, _) = Rvm::open_files(
            &dir.join("rvm.seg"),
            &dir.join("rvm.log"),
            data_len,
            rvm_options(),
        )
        .expect("create rvm");

        let redb = redb::Database::create(dir.join("redb.db")).expect("create redb");
        let txn = redb.begin_write().expect("redb begin");
        {
            let mut table = txn.open_table(REDB_TABLE).expect("redb table");
            for slot in 0..SLOTS {
                table
                    .insert(slot, &[0u8; SLOT_BYTES][..])
                    .expect("redb insert");
            }
        }
        txn.commit().expect("redb commit");

        let sqlite = dir.join("sqlite.db");
        let mut conn = sqlite_connection(&sqlite, "FULL");
        conn.execute_batch("CREATE TABLE slots (id INTEGER PRIMARY KEY, v BLOB NOT NULL)")
            .expect("sqlite table");
        let txn = conn.transaction().expect("sqlite begin");
        {
            let mut insert = txn
                .prepare("INSERT INTO slots (id, v) VALUES (?1, ?2)")
                .expect("sqlite prepare");
            for slot in 0..SLOTS {
                insert
                    .execute((slot as i64, &[0u8; SLOT_BYTES][..]))
                    .expect("sqlite insert");
            }
        }
        txn.commit().expect("sqlite commit");

        Stores { rvm, redb, sqlite }
    }

    /// A committer on `engine`; `durable` picks the flush (or fsync) setting.
    fn committer(&self, engine: Engine, durable: bool, seed: u64) -> Committer<'_> {
        let target = match engine {
            Engine::Rvm => Target::Rvm(
                &self.rvm,
                if durable {
                    rvm::Durability::Flush
                } else {
                    rvm::Durability::NoFlush
                },
            ),
            Engine::Redb => Target::Redb(
                &self.redb,
                if durable {
                    redb::Durability::Immediate
                } else {
                    redb::Durability::None
                },
            ),
            Engine::Sqlite => Target::Sqlite(sqlite_connection(
                &self.sqlite,
                if durable { "FULL" } else { "OFF" },
            )),
        };
        Committer::new(target, SLOTS, seed)
    }
}

/// One connection in WAL mode. Several may share the file; they take turns as
/// writers, waiting on the busy timeout rather than failing.
fn sqlite_connection(path: &Path, synchronous: &str) -> Connection {
    let conn = Connection::open(path).expect("sqlite open");
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .expect("sqlite wal");
    assert_eq!(mode, "wal");
    conn.pragma_update(None, "synchronous", synchronous)
        .expect("sqlite synchronous");
    conn.busy_timeout(Duration::from_secs(10))
        .expect("sqlite busy timeout");
    conn
}

enum Target<'a> {
    Rvm(&'a Rvm, rvm::Durability),
    Redb(&'a redb::Database, redb::Durability),
    Sqlite(Connection),
}

/// Commits transactions of random slot overwrites to one engine. Each thread has its own.
struct Committer<'a> {
    target: Target<'a>,
    slots: u64,
    rng: SmallRng,
    value: [u8; SLOT_BYTES],
    commits: u64,
}

impl<'a> Committer<'a> {
    fn new(target: Target<'a>, slots: u64, seed: u64) -> Committer<'a> {
        Committer {
            target,
            slots,
            rng: SmallRng::seed_from_u64(seed),
            value: [0; SLOT_BYTES],
            commits: 0,
        }
    }

    /// One transaction overwriting `changes` random slots.
    fn commit(&mut self, changes: usize) {
        let mut slots = [0u64; MAX_CHANGES];
        for slot in &mut slots[..changes] {
            *slot = self.rng.random_range(0..self.slots);
        }
        let slots = &slots[..changes];
        // A fresh value each time, so no engine can skip a write as unchanged.
        self.commits += 1;
        self.value[..8].copy_from_slice(&self.commits.to_le_bytes());
        let value = &self.value[..];
        match &mut self.target {
            Target::Rvm(rvm, durability) => {
                let mut tx = rvm.begin(Mode::NoRestore).expect("rvm begin");
                for &slot in slots {
                    tx.write(slot * SLOT_BYTES as u64, value)
                        .expect("rvm write");
                }
                tx.commit(*durability).expect("rvm commit");
            }
            Target::Redb(db, durability) => {
                let mut txn = db.begin_write().expect("redb begin");
                txn.set_durability(*durability).expect("redb durability");
                {
                    let mut table = txn.open_table(REDB_TABLE).expect("redb table");
                    for &slot in slots {
                        table.insert(slot, value).expect("redb insert");
                    }
                }
                txn.commit().expect("redb commit");
            }
            Target::Sqlite(conn) => {
                // IMMEDIATE takes the write lock up front, as any writer among several must.
                let txn = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .expect("sqlite begin");
                {
                    let mut update = txn.prepare_cached(SQLITE_UPDATE).expect("sqlite prepare");
                    for &slot in slots {
                        update.execute((value, slot as i64)).expect("sqlite update");
                    }
                }
                txn.commit().expect("sqlite commit");
            }
        }
    }
}

fn shape(changes: usize) -> String {
    format!("{changes}x{SLOT_BYTES}")
}

/// Fast groups run many short iterations; groups paced by the disk take fewer,
/// flat samples so the run stays short.
fn group<'a>(c: &'a mut Criterion, name: &str, disk_bound: bool) -> BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1))
        .warm_up_time(Duration::from_secs(1));
    if disk_bound {
        g.sample_size(15)
            .measurement_time(Duration::from_secs(4))
            .sampling_mode(SamplingMode::Flat);
    } else {
        g.measurement_time(Duration::from_secs(3));
    }
    g
}

/// One committer per engine, timed commit by commit.
fn single_committer_rows(g: &mut BenchmarkGroup<'_, WallTime>, stores: &Stores, durable: bool) {
    for changes in SHAPES {
        for engine in ENGINES {
            let mut committer = stores.committer(engine, durable, 1);
            g.bench_function(BenchmarkId::new(shape(changes), engine.name()), |b| {
                b.iter(|| committer.commit(changes))
            });
        }
    }
}

fn no_flush(c: &mut Criterion, stores: &Stores) {
    let mut g = group(c, "no_flush", false);
    single_committer_rows(&mut g, stores, false);
    g.finish();
}

fn flush_1(c: &mut Criterion, stores: &Stores, dir: &Path) {
    let mut g = group(c, "flush_1", true);
    single_committer_rows(&mut g, stores, true);
    let mut baseline = FdatasyncBaseline::create(&dir.join("fdatasync.dat"));
    g.bench_function("fdatasync", |b| b.iter(|| baseline.write_and_sync()));
    g.finish();
}

fn flush_8(c: &mut Criterion, stores: &Stores) {
    let mut g = group(c, "flush_8", true);
    for changes in SHAPES {
        for engine in ENGINES {
            let mut round = 0;
            g.bench_function(BenchmarkId::new(shape(changes), engine.name()), |b| {
                b.iter_custom(|iters| {
                    round += 1;
                    concurrent_commits(stores, engine, changes, iters, round)
                })
            });
        }
    }
    g.finish();
}

/// Runs `COMMITTERS` threads committing at once, each with its own committer (and, for
/// SQLite, its own connection), and returns the wall time per `iters` commits.
fn concurrent_commits(
    stores: &Stores,
    engine: Engine,
    changes: usize,
    iters: u64,
    round: u64,
) -> Duration {
    // Every thread commits at least once, so all of them are in flight.
    let per_thread = iters.div_ceil(COMMITTERS as u64).max(1);
    let committers: Vec<_> = (0..COMMITTERS as u64)
        .map(|t| stores.committer(engine, true, round * COMMITTERS as u64 + t))
        .collect();
    let start_line = Barrier::new(COMMITTERS + 1);
    let elapsed = thread::scope(|s| {
        let handles: Vec<_> = committers
            .into_iter()
            .map(|mut committer| {
                let start_line = &start_line;
                s.spawn(move || {
                    start_line.wait();
                    for _ in 0..per_thread {
                        committer.commit(changes);
                    }
                })
            })
            .collect();
        // Start the clock once every thread is ready, not while they are being spawned.
        start_line.wait();
        let start = Instant::now();
        for h in handles {
            h.join().expect("committer thread");
        }
        start.elapsed()
    });
    // Scale to the commits criterion asked for when they did not split evenly.
    elapsed.mul_f64(iters as f64 / (per_thread * COMMITTERS as u64) as f64)
}

/// The disk's physical limit for one committer: a small sequential write and an
/// fdatasync, with no engine in the way.
struct FdatasyncBaseline {
    file: File,
    at: u64,
}

impl FdatasyncBaseline {
    fn create(path: &Path) -> FdatasyncBaseline {
        // Written out with zeros first, as RVM does with its log, so each sync has data
        // to flush but no block allocation or file size change.
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .expect("fdatasync file");
        let zeros = vec![0u8; 1 << 20];
        for i in 0..FDATASYNC_FILE_BYTES / zeros.len() as u64 {
            file.write_all_at(&zeros, i * zeros.len() as u64)
                .expect("fdatasync file fill");
        }
        file.sync_all().expect("fdatasync file sync");
        FdatasyncBaseline { file, at: 0 }
    }

    fn write_and_sync(&mut self) {
        if self.at + FDATASYNC_WRITE_BYTES as u64 > FDATASYNC_FILE_BYTES {
            self.at = 0;
        }
        self.file
            .write_all_at(&[0xa5; FDATASYNC_WRITE_BYTES], self.at)
            .expect("fdatasync write");
        // SAFETY: the descriptor belongs to `self.file`, open for the whole call.
        let rc = unsafe { libc::fdatasync(self.file.as_raw_fd()) };
        assert_eq!(rc, 0, "fdatasync: {}", std::io::Error::last_os_error());
        self.at += FDATASYNC_WRITE_BYTES as u64;
    }
}

/// A crashed RVM whose log holds `RECOVERY_LOG_BYTES` of committed records, kept
/// pristine and copied to a work path before each recovery.
struct RecoveryFixture {
    pristine: [PathBuf; 2],
    work: [PathBuf; 2],
    records: u64,
}

/// A large log area and no truncation, so the whole log survives the "crash".
fn recovery_options() -> Options {
    Options {
        log_area_bytes: 600 << 20,
        truncate_threshold_percent: 90,
        background_truncation: false,
        ..rvm_options()
    }
}

impl RecoveryFixture {
    fn build(dir: &Path) -> RecoveryFixture {
        let pristine = [dir.join("recovery.seg"), dir.join("recovery.log")];
        let work = [dir.join("recovery-work.seg"), dir.join("recovery-work.log")];
        let options = recovery_options();
        let truncate_at =
            options.log_area_bytes / 100 * u64::from(options.truncate_threshold_percent);
        let (rvm, _) = Rvm::open_files(&pristine[0], &pristine[1], RECOVERY_SEGMENT_BYTES, options)
            .expect("create recovery rvm");
        let mut committer = Committer::new(
            Target::Rvm(&rvm, rvm::Durability::NoFlush),
            RECOVERY_SEGMENT_BYTES / SLOT_BYTES as u64,
            7,
        );
        let started = Instant::now();
        while rvm.stats().log_used_bytes < RECOVERY_LOG_BYTES {
            for _ in 0..RECOVERY_FLUSH_EVERY {
                committer.commit(MAX_CHANGES);
            }
            rvm.flush().expect("recovery fixture flush");
        }
        let stats = rvm.stats();
        assert_eq!(
            stats.truncations, 0,
            "the fixture's log must not be truncated"
        );
        assert!(
            stats.log_used_bytes < truncate_at,
            "the fixture's log must stay below the truncation threshold"
        );
        eprintln!(
            "recovery fixture: {} commits in {} records, {} MiB of log, built in {:.1?}",
            stats.commits,
            stats.records_written,
            stats.log_used_bytes >> 20,
            started.elapsed()
        );
        drop(committer);
        // A crash: nothing truncated, nothing closed.
        std::mem::forget(rvm);
        RecoveryFixture {
            pristine,
            work,
            records: stats.records_written,
        }
    }

    /// Copies the crashed files to the work paths and times their recovery. The copies
    /// are synced first so recovery does not pay for writing them back; when `cold`,
    /// they are then dropped from the page cache so recovery reads the disk, as after
    /// a power failure.
    fn recover(&self, cold: bool) -> (Duration, rvm::RecoveryReport) {
        for (from, to) in self.pristine.iter().zip(&self.work) {
            std::fs::copy(from, to).expect("copy crashed files");
            let file = File::open(to).expect("open copy");
            file.sync_all().expect("sync copy");
            if cold {
                // SAFETY: plain advice on a descriptor open for the whole call.
                let rc = unsafe {
                    libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
                };
                assert_eq!(rc, 0, "posix_fadvise failed: {rc}");
            }
        }
        let start = Instant::now();
        let (rvm, report) = Rvm::open_files(
            &self.work[0],
            &self.work[1],
            RECOVERY_SEGMENT_BYTES,
            recovery_options(),
        )
        .expect("recover");
        let elapsed = start.elapsed();
        assert_eq!(
            report.records_replayed, self.records,
            "recovery replays every record"
        );
        drop(rvm);
        (elapsed, report)
    }
}

fn recovery(c: &mut Criterion, dir: &Path) {
    let mut g = c.benchmark_group("recovery");
    // Each recovery takes long and a copy of 660 MiB precedes it: few samples, and
    // hardly any warm-up (there is nothing to warm; the cache state is set per run).
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_secs(5))
        .sampling_mode(SamplingMode::Flat);
    // Built on first use, so a filtered run that skips recovery does not pay for it.
    let fixture = OnceCell::new();
    for (name, cold) in [("rvm_256MiB_log", true), ("rvm_256MiB_log_cached", false)] {
        let mut reported = false;
        g.bench_function(name, |b| {
            let fixture = fixture.get_or_init(|| RecoveryFixture::build(dir));
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (elapsed, report) = fixture.recover(cold);
                    if !reported {
                        eprintln!(
                            "recovery ({name}): {} records, {} bytes replayed, tail {:?}",
                            report.records_replayed, report.bytes_replayed, report.tail
                        );
                        reported = true;
                    }
                    total += elapsed;
                }
                total
            })
        });
    }
    g.finish();
}

fn benches(c: &mut Criterion) {
    let dir = scratch_dir();
    let stores = Stores::create(dir.path());
    // RVM's counters after each group tell whether flushes or truncations ran inside it.
    no_flush(c, &stores);
    eprintln!("rvm after no_flush: {:?}", stores.rvm.stats());
    flush_1(c, &stores, dir.path());
    eprintln!("rvm after flush_1: {:?}", stores.rvm.stats());
    flush_8(c, &stores);
    eprintln!("rvm after flush_8: {:?}", stores.rvm.stats());
    drop(stores);
    recovery(c, dir.path());
}

criterion_group!(rvm_benches, benches);
criterion_main!(rvm_benches);
