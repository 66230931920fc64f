//! Transactions, durability and recovery over files and simulated disks.

use rvm::heap::Heap;
mod support;

use std::path::Path;

use rvm::{Durability, Error, MemStorage, Mode, Options, Rvm, SimDisk, Storage, Tail, View};

fn opts() -> Options {
    Options {
        log_area_bytes: 256 << 10,
        background_truncation: false,
        ..Options::default()
    }
}

fn mem_rvm(data_len: u64) -> (Rvm, MemStorage, MemStorage) {
    support::create(data_len, opts())
}

/// The error opening this segment and log gives; panics if they open.
fn open_err(seg: MemStorage, log: MemStorage) -> Error {
    Rvm::open(Box::new(seg), Box::new(log), opts())
        .err()
        .expect("opening should fail")
}

fn sim_rvm(data_len: u64) -> (Rvm, SimDisk, SimDisk) {
    support::create(data_len, opts())
}

#[test]
fn abort_restores_every_declared_byte_exactly() {
    let (rvm, _, _) = mem_rvm(1 << 16);
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.write(100, &[7u8; 300]).unwrap();
    tx.commit(Durability::NoFlush).unwrap();
    let before = rvm.read().unwrap().bytes(0, 1 << 16).unwrap().to_vec();

    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.write(50, &[1u8; 100]).unwrap();
    // Overlapping declarations: the old value saved must be the first one.
    tx.write(120, &[2u8; 400]).unwrap();
    tx.write(60, &[3u8; 10]).unwrap();
    tx.range_mut(9000, 64).unwrap().fill(9);
    tx.abort().unwrap();
    assert_eq!(rvm.read().unwrap().bytes(0, 1 << 16).unwrap(), &before[..]);
}

#[test]
fn dropping_a_transaction_aborts_it() {
    let (rvm, _, _) = mem_rvm(1 << 16);
    {
        let mut tx = rvm.begin(Mode::Restore).unwrap();
        tx.write(0, &[5u8; 16]).unwrap();
    }
    assert_eq!(rvm.read().unwrap().bytes(0, 16).unwrap(), &[0u8; 16]);
}

#[test]
fn aborting_a_no_restore_transaction_stops_the_rvm_until_reopened() {
    let (rvm, seg, log) = mem_rvm(1 << 16);
    let mut tx = rvm.begin(Mode::NoRestore).unwrap();
    tx.write(0, &[1u8; 8]).unwrap();
    tx.commit(Durability::Flush).unwrap();
    let mut tx = rvm.begin(Mode::NoRestore).unwrap();
    tx.write(0, &[2u8; 8]).unwrap();
    assert!(matches!(tx.abort(), Err(Error::Poisoned)));
    assert!(matches!(rvm.begin(Mode::Restore), Err(Error::Poisoned)));
    drop(rvm);
    let (rvm, _) = Rvm::open(Box::new(seg), Box::new(log), opts()).unwrap();
    assert_eq!(rvm.read().unwrap().bytes(0, 8).unwrap(), &[1u8; 8]);
}

#[test]
fn writes_outside_the_segment_are_refused() {
    let (rvm, _, _) = mem_rvm(4096);
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    assert!(matches!(
        tx.write(4090, &[0u8; 8]),
        Err(Error::OutOfBounds {
            offset: 4090,
            len: 8,
            size: 4096
        })
    ));
    assert!(matches!(
        tx.set_range(u64::MAX, 2),
        Err(Error::OutOfBounds { .. })
    ));
}

#[test]
fn a_transaction_larger_than_the_log_allows_is_refused_before_it_changes_anything() {
    let (rvm, _, _) = mem_rvm(1 << 20);
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    let err = tx.set_range(0, 512 << 10).unwrap_err();
    assert!(
        matches!(err, Error::LogFull { limit, .. } if limit == (256 << 10) / 4),
        "{err}"
    );
}

#[test]
fn flushed_commits_survive_a_power_cut_and_unflushed_ones_vanish_whole() {
    // The no-flush commit reaches the log but not its sync: the power cut keeps any
    // subset of its sectors, and recovery must take all of it or none.
    for seed in 0..64 {
        let (rvm, seg, log) = sim_rvm(1 << 16);
        let mut tx = rvm.begin(Mode::Restore).unwrap();
        tx.write(0, b"durable!").unwrap();
        tx.commit(Durability::Flush).unwrap();
        let mut tx = rvm.begin(Mode::Restore).unwrap();
        tx.write(8, b"lazy....").unwrap();
        tx.write(4000, &[7u8; 1500]).unwrap();
        tx.commit(Durability::NoFlush).unwrap();
        log.fail_after(1); // the write goes out, the sync fails
        assert!(rvm.flush().is_err());
        let (seg2, log2) = (seg.crash(seed), log.crash(seed));
        drop(rvm);
        let (rvm, _) = Rvm::open(Box::new(seg2), Box::new(log2), opts()).unwrap();
        let view = rvm.read().unwrap();
        assert_eq!(view.bytes(0, 8).unwrap(), b"durable!");
        let lazy = (view.bytes(8, 8).unwrap(), view.bytes(4000, 1500).unwrap());
        let absent = lazy == (&[0u8; 8][..], &[0u8; 1500][..]);
        let present = lazy == (&b"lazy...."[..], &[7u8; 1500][..]);
        assert!(
            absent || present,
            "seed {seed}: the no-flush commit came back torn"
        );
    }
}

#[test]
fn a_failed_sync_fails_the_commit_that_waited_for_it() {
    let (rvm, _, log) = sim_rvm(1 << 16);
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.write(0, b"x").unwrap();
    log.fail_after(1); // the write succeeds, the sync does not
    assert!(
        tx.commit(Durability::Flush).is_err(),
        "a commit whose sync failed was acknowledged"
    );
    assert!(matches!(rvm.flush(), Err(Error::PreviousIo(_))));
}

#[test]
fn reopening_replays_the_log_and_truncation_empties_it() {
    let (rvm, seg, log) = mem_rvm(1 << 16);
    for i in 0..100u64 {
        let mut tx = rvm.begin(Mode::NoRestore).unwrap();
        tx.write_u64(i * 8, i + 1).unwrap();
        tx.commit(if i % 10 == 0 {
            Durability::Flush
        } else {
            Durability::NoFlush
        })
        .unwrap();
    }
    rvm.flush().unwrap();
    assert!(rvm.stats().log_used_bytes > 0);
    std::mem::forget(rvm); // a crash: no drop, no truncation
    let (rvm, report) = Rvm::open(Box::new(seg.clone()), Box::new(log.clone()), opts()).unwrap();
    assert!(report.records_replayed > 0);
    for i in 0..100u64 {
        assert_eq!(rvm.read().unwrap().u64_at(i * 8).unwrap(), i + 1);
    }
    rvm.truncate().unwrap();
    assert_eq!(rvm.stats().log_used_bytes, 0);
    drop(rvm);
    let (rvm, report) = Rvm::open(Box::new(seg), Box::new(log), opts()).unwrap();
    assert_eq!(report.records_replayed, 0);
    assert_eq!(rvm.read().unwrap().u64_at(99 * 8).unwrap(), 100);
}

#[test]
fn the_log_wraps_many_times_without_losing_a_commit() {
    let (rvm, seg, log) = mem_rvm(1 << 16);
    for i in 0..20_000u64 {
        let mut tx = rvm.begin(Mode::NoRestore).unwrap();
        tx.write_u64((i % 512) * 8, i).unwrap();
        tx.write(8192 + (i % 97) * 64, &[i as u8; 64]).unwrap();
        tx.commit(if i % 7 == 0 {
            Durability::Flush
        } else {
            Durability::NoFlush
        })
        .unwrap();
    }
    rvm.flush().unwrap();
    let stats = rvm.stats();
    assert!(stats.truncations > 3, "{stats:?}");
    let expect = rvm.read().unwrap().bytes(0, 1 << 16).unwrap().to_vec();
    std::mem::forget(rvm);
    let (rvm, _) = Rvm::open(Box::new(seg), Box::new(log), opts()).unwrap();
    assert_eq!(rvm.read().unwrap().bytes(0, 1 << 16).unwrap(), &expect[..]);
}

#[test]
fn files_are_created_once_and_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, log) = (dir.path().join("data.seg"), dir.path().join("data.log"));
    let (rvm, _) = Rvm::open_files(&seg, &log, 1 << 20, opts()).unwrap();
    let id = rvm.log_id();
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.write(12345, b"hello").unwrap();
    tx.commit(Durability::Flush).unwrap();
    drop(rvm); // closes without truncating: the record stays in the log
    let (rvm, report) = Rvm::open_files(&seg, &log, 1 << 20, opts()).unwrap();
    assert_eq!(rvm.log_id(), id);
    assert_eq!(report.records_replayed, 1);
    assert_eq!(rvm.read().unwrap().bytes(12345, 5).unwrap(), b"hello");
}

#[test]
fn a_log_from_another_segment_is_refused() {
    let (_a, seg_a, _) = mem_rvm(1 << 16);
    let (_b, _, log_b) = mem_rvm(1 << 16);
    let err = Rvm::open(Box::new(seg_a), Box::new(log_b), opts())
        .err()
        .unwrap();
    assert!(matches!(err, Error::LogMismatch { .. }), "{err}");
}

#[test]
fn a_newer_format_version_is_refused_with_the_version_found() {
    let (rvm, seg, log) = mem_rvm(1 << 16);
    drop(rvm);
    let mut bytes = seg.to_bytes();
    // What a newer program writes: another version under a valid checksum.
    bytes[4] = 9;
    let crc = crc32fast::hash(&bytes[..24]);
    bytes[24..28].copy_from_slice(&crc.to_le_bytes());
    let err = open_err(MemStorage::from_bytes(bytes), log);
    assert!(
        matches!(
            err,
            Error::VersionMismatch {
                found: 9,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_failed_log_sync_stops_every_later_call() {
    let (rvm, _, log) = sim_rvm(1 << 16);
    log.fail_after(0);
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.write(0, b"x").unwrap();
    assert!(tx.commit(Durability::Flush).is_err());
    assert!(matches!(
        rvm.begin(Mode::Restore),
        Err(Error::PreviousIo(_))
    ));
    assert!(matches!(rvm.flush(), Err(Error::PreviousIo(_))));
}

/// A disk whose sync takes a while, as a real one does.
struct SlowSync(MemStorage);

impl Storage for SlowSync {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.0.read_at(offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.0.write_at(offset, buf)
    }
    fn sync(&self) -> std::io::Result<()> {
        std::thread::sleep(std::time::Duration::from_millis(2));
        Ok(())
    }
    fn size(&self) -> std::io::Result<u64> {
        self.0.size()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.0.set_len(len)
    }
}

#[test]
fn concurrent_flush_commits_share_syncs() {
    let (seg, log) = (MemStorage::new(), MemStorage::new());
    let rvm = Rvm::create(Box::new(seg), Box::new(SlowSync(log)), 1 << 16, opts()).unwrap();
    let rvm = std::sync::Arc::new(rvm);
    let before = rvm.stats();
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let rvm = rvm.clone();
            std::thread::spawn(move || {
                for i in 0..100u64 {
                    let mut tx = rvm.begin(Mode::NoRestore).unwrap();
                    tx.write_u64(t * 8, i).unwrap();
                    tx.commit(Durability::Flush).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let stats = rvm.stats();
    assert_eq!(stats.commits - before.commits, 800);
    // Eight committers wait on each sync together: far fewer syncs than commits.
    let flushes = stats.flushes - before.flushes;
    assert!(
        flushes * 2 < 800,
        "{flushes} log syncs for 800 flush commits"
    );
    for t in 0..8 {
        assert_eq!(rvm.read().unwrap().u64_at(t * 8).unwrap(), 99);
    }
}

#[test]
fn heap_allocations_commit_and_abort_with_their_transaction() {
    let (rvm, seg, log) = mem_rvm(1 << 20);
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    let heap = Heap::init(&mut tx, 0, 1 << 20).unwrap();
    let a = heap.alloc(&mut tx, 100).unwrap();
    tx.write(a, &[0xAA; 100]).unwrap();
    heap.set_root(&mut tx, 0, a).unwrap();
    tx.commit(Durability::Flush).unwrap();

    let mut tx = rvm.begin(Mode::Restore).unwrap();
    let b = heap.alloc(&mut tx, 5000).unwrap();
    heap.free(&mut tx, a).unwrap();
    assert!(b != a);
    tx.abort().unwrap();
    let stats = heap.verify(&rvm.read().unwrap()).unwrap();
    assert_eq!(stats.allocated_blocks, 1);

    let mut tx = rvm.begin(Mode::Restore).unwrap();
    assert!(matches!(
        heap.free(&mut tx, a + 8),
        Err(Error::BadFree { .. })
    ));
    heap.free(&mut tx, a).unwrap();
    assert!(matches!(heap.free(&mut tx, a), Err(Error::BadFree { .. })));
    tx.commit(Durability::Flush).unwrap();
    std::mem::forget(rvm);
    let (rvm, _) = Rvm::open(Box::new(seg), Box::new(log), opts()).unwrap();
    let view = rvm.read().unwrap();
    let heap = Heap::open(&view, 0).unwrap();
    assert_eq!(heap.root(&view, 0).unwrap(), a);
    let stats = heap.verify(&view).unwrap();
    assert_eq!((stats.allocated_blocks, stats.free_blocks), (0, 1));
}

#[test]
fn an_empty_commit_behind_a_flush_in_flight_becomes_durable() {
    let (seg, log) = (MemStorage::new(), MemStorage::new());
    let rvm = Rvm::create(Box::new(seg), Box::new(SlowSync(log)), 1 << 16, opts()).unwrap();
    let rvm = std::sync::Arc::new(rvm);
    let writers: Vec<_> = (0..2u64)
        .map(|t| {
            let rvm = rvm.clone();
            std::thread::spawn(move || {
                for i in 0..200u64 {
                    let mut tx = rvm.begin(Mode::Restore).unwrap();
                    if t == 0 {
                        tx.write_u64(0, i).unwrap();
                    }
                    tx.commit(Durability::Flush).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(rvm.stats().commits, 400);
}

#[test]
fn truncation_and_size_queries_work_while_a_transaction_is_open() {
    let (rvm, _, _) = mem_rvm(1 << 16);
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.write(100, b"logged").unwrap();
    tx.commit(Durability::Flush).unwrap();
    let truncations = rvm.stats().truncations;
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.write(0, b"open").unwrap();
    assert_eq!(rvm.data_len(), 1 << 16);
    rvm.truncate().unwrap();
    assert_eq!(
        rvm.stats().truncations,
        truncations + 1,
        "truncation had work to do"
    );
    tx.commit(Durability::Flush).unwrap();
}

/// Commits one record of exactly `record_bytes` (one range: 56 bytes of headers).
fn commit_record(rvm: &Rvm, record_bytes: u64, fill: u8) {
    let len = record_bytes - 56;
    let mut tx = rvm.begin(Mode::NoRestore).unwrap();
    tx.write(u64::from(fill) * 97 % (60 << 10), &vec![fill; len as usize])
        .unwrap();
    tx.commit(Durability::Flush).unwrap();
}

#[test]
fn records_ending_at_every_position_near_the_end_of_the_area_wrap_cleanly() {
    const AREA: u64 = 256 << 10;
    // `left` bytes remain after the last record of the lap: none (exact fit), too few
    // for a header (the writer and reader skip them), or room for a wrap record.
    for left in (0..=64).step_by(8) {
        let (rvm, seg, log) = mem_rvm(1 << 16);
        let mut at = 0;
        let mut fill = 0u8;
        while AREA - at - left > 8192 {
            commit_record(&rvm, 4096, fill);
            (at, fill) = (at + 4096, fill.wrapping_add(1));
        }
        commit_record(&rvm, AREA - at - left, fill);
        for _ in 0..40 {
            fill = fill.wrapping_add(1);
            commit_record(&rvm, 2048, fill);
        }
        let expect = rvm.read().unwrap().bytes(0, 1 << 16).unwrap().to_vec();
        drop(rvm);
        let (rvm, _) = Rvm::open(Box::new(seg.clone()), Box::new(log.clone()), opts()).unwrap();
        assert_eq!(
            rvm.read().unwrap().bytes(0, 1 << 16).unwrap(),
            &expect[..],
            "{left} bytes left"
        );
        rvm.truncate().unwrap();
        drop(rvm);
        let (rvm, _) = Rvm::open(Box::new(seg), Box::new(log), opts()).unwrap();
        assert_eq!(
            rvm.read().unwrap().bytes(0, 1 << 16).unwrap(),
            &expect[..],
            "{left} bytes left"
        );
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// Records of every size end at every position of the area, including exactly at
    /// its end and too close to it for another header; reopening finds them all.
    #[test]
    fn records_ending_anywhere_in_the_area_reopen_intact(
        sizes in proptest::collection::vec(
            proptest::prop_oneof![1u64..3000, proptest::strategy::Just(968), proptest::strategy::Just(4040)],
            50..400,
        ),
        flush_every in 1usize..5,
    ) {
        let (rvm, seg, log) = mem_rvm(1 << 16);
        for (i, len) in sizes.iter().enumerate() {
            let mut tx = rvm.begin(Mode::NoRestore).unwrap();
            tx.write((i as u64 * 131) % ((1 << 16) - len), &vec![i as u8; *len as usize]).unwrap();
            let d = if i % flush_every == 0 { Durability::Flush } else { Durability::NoFlush };
            tx.commit(d).unwrap();
        }
        rvm.flush().unwrap();
        let expect = rvm.read().unwrap().bytes(0, 1 << 16).unwrap().to_vec();
        drop(rvm);
        let (rvm, _) = Rvm::open(Box::new(seg), Box::new(log), opts()).unwrap();
        proptest::prop_assert!(rvm.read().unwrap().bytes(0, 1 << 16).unwrap() == &expect[..]);
    }
}

#[test]
fn overlapping_ranges_in_one_transaction_are_logged_once() {
    let (rvm, _, _) = mem_rvm(1 << 16);
    let before = rvm.stats().log_bytes_written;
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.write(0, &[1; 100]).unwrap();
    tx.write(50, &[2; 100]).unwrap();
    tx.write(10, &[3; 20]).unwrap();
    tx.commit(Durability::Flush).unwrap();
    // One record: 40-byte header, one 16-byte range header, 150 bytes padded to 152.
    assert_eq!(rvm.stats().log_bytes_written - before, 40 + 16 + 152);
}

#[test]
fn consecutive_no_flush_transactions_coalesce_into_one_record() {
    let (rvm, _, _) = mem_rvm(1 << 16);
    let before = rvm.stats();
    for i in 0..1000u64 {
        let mut tx = rvm.begin(Mode::NoRestore).unwrap();
        tx.write_u64(64, i).unwrap();
        tx.write_u64(4096 + (i % 4) * 8, i).unwrap();
        tx.commit(Durability::NoFlush).unwrap();
    }
    rvm.flush().unwrap();
    let after = rvm.stats();
    assert_eq!(after.records_written - before.records_written, 1);
    // Two ranges survive: 8 bytes at 64 and 32 bytes at 4096.
    assert_eq!(
        after.log_bytes_written - before.log_bytes_written,
        40 + 16 + 8 + 16 + 32
    );
}

#[test]
fn a_segment_of_many_gib_is_addressed_with_64_bit_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, log) = (dir.path().join("big.seg"), dir.path().join("big.log"));
    let size = 6u64 << 30; // sparse on disk, mapped lazily
    let (rvm, _) = Rvm::open_files(&seg, &log, size, opts()).unwrap();
    let far = size - 4096 - 3;
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.write(far, b"beyond four gigabytes").unwrap();
    tx.write((4u64 << 30) + 1, b"just past 2^32").unwrap();
    tx.commit(Durability::Flush).unwrap();
    rvm.truncate().unwrap();
    drop(rvm);
    let (rvm, _) = Rvm::open_files(&seg, &log, size, opts()).unwrap();
    let view = rvm.read().unwrap();
    assert_eq!(view.bytes(far, 21).unwrap(), b"beyond four gigabytes");
    assert_eq!(view.bytes((4u64 << 30) + 1, 14).unwrap(), b"just past 2^32");
    assert_eq!(view.data_len(), size);
}

#[test]
fn a_driver_doing_its_own_log_io_makes_commits_durable() {
    let (rvm, seg, log) = sim_rvm(1 << 16);
    let mut ids = Vec::new();
    for i in 0..50u64 {
        let mut tx = rvm.begin(Mode::NoRestore).unwrap();
        tx.write_u64(i * 8, i + 1).unwrap();
        ids.push(tx.commit(Durability::NoFlush).unwrap());
    }
    assert!(!rvm.is_durable(*ids.last().unwrap()));
    // The driver's own I/O, as an io_uring executor would do it.
    match rvm.begin_flush().unwrap() {
        rvm::FlushStep::Write(job) => {
            assert!(
                matches!(rvm.begin_flush().unwrap(), rvm::FlushStep::Idle),
                "one flush at a time"
            );
            let written = job
                .writes()
                .try_for_each(|(at, bytes)| log.write_at(at, bytes))
                .and_then(|_| log.sync());
            job.finish(written).unwrap();
        }
        other => panic!("expected a job, got {other:?}"),
    }
    assert!(ids.iter().all(|id| rvm.is_durable(*id)));
    let (seg2, log2) = (seg.crash(9), log.crash(9));
    drop(rvm);
    let (rvm, _) = Rvm::open(Box::new(seg2), Box::new(log2), opts()).unwrap();
    assert_eq!(rvm.read().unwrap().u64_at(49 * 8).unwrap(), 50);
}

#[test]
fn a_damaged_version_field_reads_as_damage_not_as_a_newer_format() {
    let (rvm, seg, log) = mem_rvm(1 << 16);
    drop(rvm);
    let mut bytes = seg.to_bytes();
    bytes[4] ^= 2;
    let err = open_err(MemStorage::from_bytes(bytes), log);
    assert!(
        matches!(
            err,
            Error::Corrupt {
                what: "segment header",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_log_status_of_a_newer_format_is_refused_though_the_other_slot_is_older() {
    let (rvm, seg, log) = mem_rvm(1 << 16);
    drop(rvm);
    let mut bytes = log.to_bytes();
    // Slot 1 written by a newer program (its status block is 56 bytes, CRC last).
    let slot: Vec<u8> = bytes[0..56].to_vec();
    let mut newer = slot.clone();
    newer[4] = 2;
    newer[8] = 1; // generation 1
    let crc = crc32fast::hash(&newer[..52]);
    newer[52..56].copy_from_slice(&crc.to_le_bytes());
    bytes[4096..4096 + 56].copy_from_slice(&newer);
    let err = open_err(seg, MemStorage::from_bytes(bytes));
    assert!(
        matches!(
            err,
            Error::VersionMismatch {
                found: 2,
                supported: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn a_cut_record_never_returns_after_the_same_record_is_written_again() {
    let (rvm, seg, log) = mem_rvm(1 << 16);
    let put = |rvm: &Rvm, at: u64, v: u8| {
        let mut tx = rvm.begin(Mode::Restore).unwrap();
        tx.write(at, &[v; 8]).unwrap();
        tx.commit(Durability::Flush).unwrap();
    };
    put(&rvm, 0, 1); // a 64-byte record at the start of the area
    put(&rvm, 100, 2); // the next one
    drop(rvm);
    let mut bytes = log.to_bytes();
    bytes[8192 + 56] ^= 0xff; // damage the first record's data: both are cut
    let log = MemStorage::from_bytes(bytes);
    let (rvm, report) = Rvm::open(Box::new(seg.clone()), Box::new(log.clone()), opts()).unwrap();
    assert!(matches!(report.tail, Tail::Cut { .. }));
    put(&rvm, 0, 1); // the program writes the first record again, byte for byte
    drop(rvm);
    let (rvm, _) = Rvm::open(Box::new(seg), Box::new(log), opts()).unwrap();
    assert_eq!(rvm.read().unwrap().bytes(0, 1).unwrap()[0], 1);
    assert_eq!(
        rvm.read().unwrap().bytes(100, 1).unwrap()[0],
        0,
        "the cut record came back"
    );
}

#[test]
fn files_named_without_a_directory_are_created_in_the_current_one() {
    let dir = tempfile::tempdir().unwrap();
    // Every other test here names files by absolute path, so moving is safe.
    std::env::set_current_dir(dir.path()).unwrap();
    let (rvm, _) = Rvm::open_files(
        Path::new("bare.seg"),
        Path::new("bare.log"),
        1 << 16,
        opts(),
    )
    .unwrap();
    drop(rvm);
    assert!(dir.path().join("bare.seg").exists());
}

#[test]
fn records_left_unsynced_by_a_dead_process_are_made_durable_before_replay() {
    let put = |rvm: &Rvm, writes: &[(u64, u8)]| {
        let mut tx = rvm.begin(Mode::NoRestore).unwrap();
        for &(at, v) in writes {
            tx.write(at, &[v; 512]).unwrap();
        }
        tx.commit(Durability::NoFlush).unwrap();
    };
    let state = |rvm: &Rvm| {
        let view = rvm.read().unwrap();
        (
            view.bytes(0, 1).unwrap()[0],
            view.bytes(4096, 1).unwrap()[0],
        )
    };
    // Power fails at every point of the recovery, with every choice of lost sectors.
    for fail_after in 0..24 {
        for seed in 0..8 {
            let (rvm, seg, log) = sim_rvm(1 << 16);
            put(&rvm, &[(0, 1)]); // A: durable
            rvm.flush().unwrap();
            put(&rvm, &[(0, 2), (4096, 2)]); // B: written, never synced, then the process dies
            let rvm::FlushStep::Write(job) = rvm.begin_flush().unwrap() else {
                panic!("no job")
            };
            for (at, bytes) in job.writes() {
                log.write_at(at, bytes).unwrap();
            }
            std::mem::forget(job); // the process dies with the flush in flight
            std::mem::forget(rvm);
            log.fail_after(fail_after);
            let _ = Rvm::open(Box::new(seg.clone()), Box::new(log.clone()), opts());
            let (rvm, _) = Rvm::open(
                Box::new(seg.crash(seed)),
                Box::new(log.crash(seed + 1)),
                opts(),
            )
            .unwrap();
            let got = state(&rvm);
            assert!(
                got == (1, 0) || got == (2, 2),
                "power cut {fail_after} ops into recovery, seed {seed}: {got:?} is no prefix of the commits"
            );
        }
    }
}

#[test]
fn a_missing_segment_beside_a_used_log_is_refused_not_recreated() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, log) = (dir.path().join("d.seg"), dir.path().join("d.log"));
    let (rvm, _) = Rvm::open_files(&seg, &log, 1 << 16, opts()).unwrap();
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.write(0, b"precious").unwrap();
    tx.commit(Durability::Flush).unwrap();
    drop(rvm);
    std::fs::remove_file(&seg).unwrap();
    let err = Rvm::open_files(&seg, &log, 1 << 16, opts()).err().unwrap();
    assert!(err.to_string().contains("not a new, unused log"), "{err}");
}

#[test]
fn a_file_that_is_no_rvm_log_is_never_overwritten_as_one() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, log) = (dir.path().join("d.seg"), dir.path().join("notes.txt"));
    std::fs::write(&log, b"someone's precious notes").unwrap();
    assert!(Rvm::open_files(&seg, &log, 1 << 16, opts()).is_err());
    assert_eq!(std::fs::read(&log).unwrap(), b"someone's precious notes");
}

#[test]
fn a_creation_cut_short_is_started_again() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, log) = (dir.path().join("d.seg"), dir.path().join("d.log"));
    std::fs::write(&log, vec![0u8; 3000]).unwrap(); // zeros cut short, no status yet
    let (rvm, _) = Rvm::open_files(&seg, &log, 1 << 16, opts()).unwrap();
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.write(0, b"fresh").unwrap();
    tx.commit(Durability::Flush).unwrap();
}

#[test]
fn a_flush_job_dropped_unfinished_gives_its_commits_back() {
    let (rvm, seg, log) = sim_rvm(1 << 16);
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.write(0, b"kept").unwrap();
    let id = tx.commit(Durability::NoFlush).unwrap();
    let rvm::FlushStep::Write(job) = rvm.begin_flush().unwrap() else {
        panic!("no job")
    };
    drop(job); // the driver gave up (an error, a cancelled future)
    assert!(!rvm.is_durable(id));
    rvm.flush().unwrap(); // neither hangs nor loses the commit
    assert!(rvm.is_durable(id));
    let (seg2, log2) = (seg.crash(3), log.crash(3));
    drop(rvm);
    let (rvm, _) = Rvm::open(Box::new(seg2), Box::new(log2), opts()).unwrap();
    assert_eq!(rvm.read().unwrap().bytes(0, 4).unwrap(), b"kept");
}

#[test]
fn a_second_instance_on_the_same_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, log) = (dir.path().join("d.seg"), dir.path().join("d.log"));
    let (first, _) = Rvm::open_files(&seg, &log, 1 << 16, opts()).unwrap();
    let err = Rvm::open_files(&seg, &log, 1 << 16, opts()).err().unwrap();
    assert!(matches!(err, Error::InUse { .. }), "{err}");
    drop(first);
    assert!(Rvm::open_files(&seg, &log, 1 << 16, opts()).is_ok());
}

#[test]
fn with_a_flush_driver_commits_never_wait_even_while_its_flush_is_in_flight() {
    let o = Options {
        flush_by_driver: true,
        flush_buffer_bytes: 1024,
        ..opts()
    };
    let (rvm, _seg, log) = support::create::<SimDisk>(64 << 10, o);
    let commit = |at: u64| {
        let mut tx = rvm.begin(Mode::Restore).unwrap();
        tx.write(at, &[7u8; 2048]).unwrap();
        tx.commit(Durability::NoFlush).unwrap()
    };
    // Past the buffer limit, and nothing waits for a flush.
    let first = commit(0);
    assert!(!rvm.is_durable(first));
    let rvm::FlushStep::Write(job) = rvm.begin_flush().unwrap() else {
        panic!("no job")
    };
    // The same thread commits while its flush is in flight (this would wait
    // forever without the driver mode).
    let second = commit(8192);
    for (at, bytes) in job.writes() {
        log.write_at(at, bytes).unwrap();
    }
    job.finish(log.sync()).unwrap();
    assert!(rvm.is_durable(first) && !rvm.is_durable(second));
    while let rvm::FlushStep::Write(job) = rvm.begin_flush().unwrap() {
        for (at, bytes) in job.writes() {
            log.write_at(at, bytes).unwrap();
        }
        job.finish(log.sync()).unwrap();
    }
    assert!(rvm.is_durable(second));
}
