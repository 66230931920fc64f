//! Torn and corrupt log tails are detected and cut, never applied; damaged logs of
//! any kind recover to a prefix of the commits or fail with an error, never a panic.

mod support;

use proptest::prelude::*;
use rvm::{Durability, MemStorage, Mode, Options, Rvm, Tail, View, LOG_AREA_START};

const DATA_BYTES: u64 = 16 << 10;

fn opts() -> Options {
    Options {
        log_area_bytes: 64 << 10,
        background_truncation: false,
        ..Options::default()
    }
}

/// A log holding `commits` flush commits, never truncated; the states after each
/// commit (the first is the empty segment); and the log bytes before the last commit.
fn logged(commits: u64, seed: u64) -> (MemStorage, MemStorage, Vec<Vec<u8>>, Vec<u8>) {
    let (rvm, seg, log) = support::create::<MemStorage>(DATA_BYTES, opts());
    let mut states = vec![vec![0u8; DATA_BYTES as usize]];
    let mut before_last = Vec::new();
    for i in 0..commits {
        if i + 1 == commits {
            before_last = log.to_bytes();
        }
        let mut tx = rvm.begin(Mode::NoRestore).unwrap();
        for k in 0..3 {
            let at = (seed.wrapping_mul(31).wrapping_add(i * 977 + k * 4099)) % (DATA_BYTES - 100);
            tx.write(at, &[(i as u8) ^ (k as u8) ^ 0x5a; 100]).unwrap();
        }
        tx.commit(Durability::Flush).unwrap();
        states.push(rvm.read().unwrap().bytes(0, DATA_BYTES).unwrap().to_vec());
    }
    std::mem::forget(rvm); // crash: leave the log untruncated
    (seg, log, states, before_last)
}

fn reopen(seg: &MemStorage, log: Vec<u8>) -> rvm::Result<(Rvm, rvm::RecoveryReport)> {
    Rvm::open(
        Box::new(MemStorage::from_bytes(seg.to_bytes())),
        Box::new(MemStorage::from_bytes(log)),
        opts(),
    )
}

fn state(rvm: &Rvm) -> Vec<u8> {
    rvm.read().unwrap().bytes(0, DATA_BYTES).unwrap().to_vec()
}

/// The byte range the last commit's record occupies in the log file.
fn last_record(before: &[u8], after: &[u8]) -> std::ops::Range<usize> {
    let first = (0..after.len()).find(|&i| before[i] != after[i]).unwrap();
    let last = (0..after.len())
        .rev()
        .find(|&i| before[i] != after[i])
        .unwrap();
    first..last + 1
}

#[test]
fn every_single_bit_flip_in_the_last_record_is_detected_and_cut() {
    let (seg, log, states, before) = logged(5, 1);
    let after = log.to_bytes();
    let record = last_record(&before, &after);
    assert!(record.start as u64 >= LOG_AREA_START);
    for byte in record.clone() {
        for bit in 0..8 {
            let mut damaged = after.clone();
            damaged[byte] ^= 1 << bit;
            let (rvm, report) = reopen(&seg, damaged).unwrap();
            assert_eq!(
                state(&rvm),
                states[4],
                "flip at byte {byte} bit {bit} was applied"
            );
            match report.tail {
                Tail::Cut { offset, .. } => {
                    assert_eq!(offset, record.start as u64 - (record.start as u64 % 8))
                }
                Tail::Clean => panic!("flip at byte {byte} bit {bit} went unreported"),
            }
        }
    }
}

#[test]
fn a_torn_last_record_is_never_applied_and_is_reported_once_its_header_landed() {
    let (seg, log, states, before) = logged(5, 2);
    let after = log.to_bytes();
    let record = last_record(&before, &after);
    for cut in record.clone() {
        // The record's bytes before `cut` reached the disk; the rest did not.
        let mut torn = before.clone();
        torn[record.start..cut].copy_from_slice(&after[record.start..cut]);
        let (rvm, report) = reopen(&seg, torn).unwrap();
        assert_eq!(
            state(&rvm),
            states[4],
            "torn at {cut}: a partial record was applied"
        );
        if cut - record.start >= 40 {
            assert!(
                matches!(report.tail, Tail::Cut { .. }),
                "torn at {cut}: not reported"
            );
        }
        // Recovery blanks what it cut: the next open finds a clean end.
        let log_after = rvm_log_after_recovery(&seg, &after, record.start, cut, &before);
        let (_, again) = reopen(&seg, log_after).unwrap();
        assert_eq!(again.tail, Tail::Clean);
    }
}

fn rvm_log_after_recovery(
    seg: &MemStorage,
    after: &[u8],
    start: usize,
    cut: usize,
    before: &[u8],
) -> Vec<u8> {
    let mut torn = before.to_vec();
    torn[start..cut].copy_from_slice(&after[start..cut]);
    let log = MemStorage::from_bytes(torn);
    let seg = MemStorage::from_bytes(seg.to_bytes());
    let (rvm, _) = Rvm::open(Box::new(seg), Box::new(log.clone()), opts()).unwrap();
    drop(rvm);
    log.to_bytes()
}

#[test]
fn a_torn_status_block_falls_back_to_the_other_slot() {
    let (seg, log, states, _) = logged(3, 3);
    // Recover once so a second status generation exists, then tear the newer slot.
    let (rvm, _) = reopen(&seg, log.to_bytes()).unwrap();
    drop(rvm);
    let mut bytes = log.to_bytes();
    for b in &mut bytes[4096..4096 + 30] {
        *b = 0xff;
    }
    let (rvm, _) = reopen(&seg, bytes).unwrap();
    assert_eq!(state(&rvm), states[3]);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random damage to the record area: the result is a prefix of the commits.
    #[test]
    fn a_damaged_log_recovers_to_a_prefix_of_the_commits(
        seed in any::<u64>(),
        damage in prop::collection::vec((0u64..(64 << 10), any::<u8>()), 1..20),
    ) {
        let (seg, log, states, _) = logged(8, seed);
        let mut bytes = log.to_bytes();
        for (at, value) in damage {
            bytes[(LOG_AREA_START + at) as usize] = value;
        }
        let (rvm, _) = reopen(&seg, bytes).unwrap();
        let got = state(&rvm);
        prop_assert!(states.contains(&got), "recovered state is no prefix of the commits");
    }

    /// Status blocks that pass their checksum but carry hostile values (sizes, head,
    /// sequence number, generation): an error or a prefix, never a panic, and a log
    /// that opens keeps working.
    #[test]
    fn status_blocks_with_valid_checksums_and_hostile_values_never_panic(
        seed in any::<u64>(),
        generation in prop_oneof![Just(u64::MAX), Just(1u64 << 62), any::<u64>(), 0u64..4],
        area_len in prop_oneof![Just(u64::MAX - 7), Just(1u64 << 48), Just(64u64 << 10), any::<u64>()],
        head in prop_oneof![Just(0u64), any::<u64>(), Just((64u64 << 10) - 8)],
        seq in prop_oneof![Just(u64::MAX), Just(1u64), any::<u64>()],
        slot in 0usize..2,
    ) {
        let (seg, log, states, _) = logged(4, seed);
        let mut bytes = log.to_bytes();
        let at = slot * 4096;
        let mut status = bytes[at..at + 56].to_vec();
        if status[0..4] != *b"RVMT" {
            status = bytes[(1 - slot) * 4096..(1 - slot) * 4096 + 56].to_vec();
        }
        status[8..16].copy_from_slice(&generation.to_le_bytes());
        status[24..32].copy_from_slice(&area_len.to_le_bytes());
        status[32..40].copy_from_slice(&head.to_le_bytes());
        status[40..48].copy_from_slice(&seq.to_le_bytes());
        let crc = crc32fast::hash(&status[..52]);
        status[52..56].copy_from_slice(&crc.to_le_bytes());
        bytes[at..at + 56].copy_from_slice(&status);
        if let Ok((rvm, _)) = reopen(&seg, bytes) {
            prop_assert!(states.contains(&state(&rvm)) || generation > 0);
            let mut tx = rvm.begin(Mode::Restore).unwrap();
            tx.write(0, b"still works").unwrap();
            let _ = tx.commit(Durability::Flush);
        }
    }

    /// Arbitrary bytes anywhere in the log file: an error or a prefix, never a panic.
    #[test]
    fn arbitrary_log_bytes_never_panic(
        seed in any::<u64>(),
        at in 0u64..(LOG_AREA_START + 4096),
        junk in prop::collection::vec(any::<u8>(), 0..8192),
    ) {
        let (seg, log, states, _) = logged(4, seed);
        let mut bytes = log.to_bytes();
        let start = at as usize;
        let end = (start + junk.len()).min(bytes.len());
        bytes[start..end].copy_from_slice(&junk[..end - start]);
        if let Ok((rvm, _)) = reopen(&seg, bytes) {
            prop_assert!(states.contains(&state(&rvm)));
        }
    }
}
