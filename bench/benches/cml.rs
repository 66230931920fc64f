//! CML appends (issue 6): one record appended per RVM transaction, written
//! to the log before the call returns (`Durability::Written`, as Venus
//! logs a disconnected update), beside SQLite inserting one row per
//! transaction with `synchronous=OFF` in WAL mode (written, not synced: the
//! same promise), on the same disk in the same run.
//!
//! `cargo bench -p coda-bench --bench cml`; appends per second =
//! 1 / (time per append).

use std::time::{Duration, Instant};

use coda_proto::cml::{CmlRecord, Op, Store};
use coda_proto::{Fid, StoreId, Timestamp};
use coda_venus::cache::Cache;
use coda_venus::cml::LogEntry;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rvm::Durability;

/// Appends per measured batch; the batch is removed again untimed, so the
/// log stays the size a long disconnection gives it.
const BATCH: u64 = 20_000;

fn entry(seq: u64) -> LogEntry {
    let fid = Fid::new(0x7f00_0001, 1000 + seq % 5000, 1000 + seq % 5000);
    LogEntry {
        seq,
        uid: 1000,
        record: CmlRecord {
            store_id: StoreId {
                host: 0x1234,
                unique: 1_700_000_000_000_000 + seq,
            },
            time: Timestamp {
                secs: 1_700_000_000,
                nanos: 0,
            },
            op: Op::Store(Store {
                fid,
                seen: StoreId {
                    host: 0x99,
                    unique: seq,
                },
                length: 4096,
                content_hash: [7; 32],
            }),
        },
        before: vec![(
            fid,
            StoreId {
                host: 0x99,
                unique: seq,
            },
        )],
        ends_batch: None,
    }
}

fn cml_append(c: &mut Criterion) {
    let dir = tempfile::Builder::new()
        .prefix("cml-bench-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch");
    let mut cache = Cache::open(&dir.path().join("cache"), 256 << 20).expect("cache");
    let sqlite = rusqlite::Connection::open(dir.path().join("cml.sqlite")).expect("sqlite");
    sqlite
        .execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;
             CREATE TABLE cml (seq INTEGER PRIMARY KEY, body BLOB NOT NULL)",
        )
        .expect("sqlite setup");
    let body = coda_rpc2::codec::to_bytes(&entry(0));
    let mut g = c.benchmark_group("cml_append");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(10));
    let mut seq = 0u64;
    g.bench_function("venus_cml_written", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(BATCH);
                let first = seq + 1;
                let t = Instant::now();
                for _ in 0..n {
                    seq += 1;
                    let e = entry(seq);
                    cache
                        .update(Durability::Written, |t| t.put_cml(e))
                        .expect("append");
                }
                total += t.elapsed();
                cache
                    .update(Durability::NoFlush, |t| {
                        for s in first..=seq {
                            t.remove_cml(s)?;
                        }
                        Ok(())
                    })
                    .expect("trim");
                left -= n;
            }
            total
        })
    });
    let mut row = 0i64;
    g.bench_function("sqlite_insert_wal_sync_off", |b| {
        let mut insert = sqlite
            .prepare("INSERT INTO cml (seq, body) VALUES (?1, ?2)")
            .expect("prepare");
        b.iter(|| {
            row += 1;
            insert.execute((row, &body[..])).expect("insert");
        })
    });
    g.finish();
}

criterion_group!(cml_benches, cml_append);
criterion_main!(cml_benches);
