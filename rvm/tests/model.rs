//! RVM held against an in-memory model over random sequences of transactions, aborts,
//! flushes, truncations, clean reopenings and power cuts.
//!
//! After a power cut the segment must equal the model's durable state followed by some
//! prefix of the commits made since: every flushed commit present, every later
//! no-flush commit wholly present or wholly absent, in commit order.

use proptest::prelude::*;
use rvm::{Durability, Mode, Options, Rvm, SimDisk, Tail, View};

const DATA_BYTES: u64 = 8192;

#[derive(Debug, Clone)]
enum Outcome {
    Commit(Durability),
    Abort,
}

#[derive(Debug, Clone)]
enum Op {
    Txn {
        writes: Vec<(u64, usize, u8)>,
        restore: bool,
        outcome: Outcome,
    },
    Flush,
    Truncate,
    Reopen,
    /// A power cut in the middle of a flush (and, with `truncate`, of a truncation):
    /// the disks stop after `log_ops` and `seg_ops` more operations.
    Crash {
        seed: u64,
        log_ops: u64,
        seg_ops: u64,
        truncate: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let write = (0..DATA_BYTES - 200, 1usize..200, any::<u8>());
    let outcome = prop_oneof![
        3 => Just(Outcome::Commit(Durability::NoFlush)),
        // Written outlives a process, not a power cut: a no-flush commit here.
        1 => Just(Outcome::Commit(Durability::Written)),
        2 => Just(Outcome::Commit(Durability::Flush)),
        1 => Just(Outcome::Abort),
    ];
    prop_oneof![
        12 => (prop::collection::vec(write, 1..10), any::<bool>(), outcome)
            .prop_map(|(writes, restore, outcome)| {
                // Only restore-mode transactions may abort.
                let restore = restore || matches!(outcome, Outcome::Abort);
                Op::Txn { writes, restore, outcome }
            }),
        1 => Just(Op::Flush),
        1 => Just(Op::Truncate),
        1 => Just(Op::Reopen),
        3 => (any::<u64>(), 0..4u64, 0..8u64, any::<bool>())
            .prop_map(|(seed, log_ops, seg_ops, truncate)| Op::Crash { seed, log_ops, seg_ops, truncate }),
    ]
}

fn options(background: bool) -> Options {
    Options {
        log_area_bytes: 64 << 10,
        background_truncation: background,
        flush_buffer_bytes: 4096,
        ..Options::default()
    }
}

fn state(rvm: &Rvm) -> Vec<u8> {
    rvm.read().unwrap().bytes(0, DATA_BYTES).unwrap().to_vec()
}

fn run(ops: Vec<Op>, background: bool) -> Result<(), TestCaseError> {
    let (mut seg, mut log) = (SimDisk::new(), SimDisk::new());
    let mut rvm = Rvm::create(
        Box::new(seg.clone()),
        Box::new(log.clone()),
        DATA_BYTES,
        options(background),
    )
    .unwrap();
    let mut durable = vec![0u8; DATA_BYTES as usize];
    // States after each commit that may not be durable yet, oldest first.
    let mut since: Vec<Vec<u8>> = Vec::new();
    for op in ops {
        let current = since.last().unwrap_or(&durable).clone();
        match op {
            Op::Txn {
                writes,
                restore,
                outcome,
            } => {
                let mut tx = rvm
                    .begin(if restore {
                        Mode::Restore
                    } else {
                        Mode::NoRestore
                    })
                    .unwrap();
                let mut next = current.clone();
                for (offset, len, byte) in writes {
                    tx.write(offset, &vec![byte; len]).unwrap();
                    next[offset as usize..offset as usize + len].fill(byte);
                }
                match outcome {
                    Outcome::Abort => tx.abort().unwrap(),
                    Outcome::Commit(d) => {
                        tx.commit(d).unwrap();
                        if d == Durability::Flush {
                            since.clear();
                            durable = next;
                        } else {
                            since.push(next);
                        }
                    }
                }
            }
            Op::Flush => {
                rvm.flush().unwrap();
                durable = current;
                since.clear();
            }
            Op::Truncate => rvm.truncate().unwrap(),
            Op::Reopen => {
                drop(rvm);
                let (reopened, _) = Rvm::open(
                    Box::new(seg.clone()),
                    Box::new(log.clone()),
                    options(background),
                )
                .unwrap();
                rvm = reopened;
                durable = current;
                since.clear();
            }
            Op::Crash {
                seed,
                log_ops,
                seg_ops,
                truncate,
            } => {
                log.fail_after(log_ops);
                seg.fail_after(seg_ops);
                let _ = rvm.flush();
                if truncate {
                    let _ = rvm.truncate();
                }
                // Take the power-cut image first: dropping the old instance flushes.
                let (seg2, log2) = (seg.crash(seed), log.crash(seed.rotate_left(17)));
                drop(rvm);
                (seg, log) = (seg2, log2);
                let (reopened, report) = Rvm::open(
                    Box::new(seg.clone()),
                    Box::new(log.clone()),
                    options(background),
                )
                .unwrap();
                rvm = reopened;
                let got = state(&rvm);
                let matched = std::iter::once(&durable)
                    .chain(since.iter())
                    .position(|s| *s == got);
                prop_assert!(
                    matched.is_some(),
                    "after a power cut the segment is no prefix of the commits ({report:?})"
                );
                durable = got;
                since.clear();
                if let Tail::Cut { offset, .. } = report.tail {
                    prop_assert!(offset >= rvm::LOG_AREA_START);
                }
            }
        }
        let want = since.last().unwrap_or(&durable);
        prop_assert!(state(&rvm) == *want, "live state differs from the model");
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn rvm_matches_the_model_through_power_cuts(ops in prop::collection::vec(op(), 1..150)) {
        run(ops, false)?;
    }

    #[test]
    fn rvm_matches_the_model_with_background_truncation(ops in prop::collection::vec(op(), 1..150)) {
        run(ops, true)?;
    }
}
