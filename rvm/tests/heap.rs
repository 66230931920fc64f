//! The recoverable heap against a model: allocations never overlap, keep their bytes,
//! and the heap's own structure checks out after every transaction and reopening.

mod support;

use proptest::prelude::*;
use rvm::heap::{Heap, CHUNK_BYTES};
use rvm::{Durability, Error, MemStorage, Mode, Options, Rec, Rvm, View};
use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

const DATA_BYTES: u64 = 256 << 10;

fn opts() -> Options {
    Options {
        log_area_bytes: 1 << 20,
        background_truncation: false,
        ..Options::default()
    }
}

/// A vnode-like fixed-layout record.
#[derive(
    FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug, PartialEq, Clone, Copy,
)]
#[repr(C)]
struct Vnode {
    kind: u8,
    mode: U32,
    length: U64,
    version: [U64; 4],
}

#[test]
fn typed_records_are_placed_read_and_changed_in_place() {
    let (rvm, seg, log) = support::create::<MemStorage>(DATA_BYTES, opts());
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    let heap = Heap::init(&mut tx, 0, DATA_BYTES).unwrap();
    let rec: Rec<Vnode> = heap.alloc_rec(&mut tx).unwrap();
    *tx.get_mut(rec).unwrap() = Vnode {
        kind: 1,
        mode: 0o644.into(),
        length: 12.into(),
        version: [1.into(); 4],
    };
    heap.set_root(&mut tx, 0, rec.offset()).unwrap();
    tx.commit(Durability::Flush).unwrap();

    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.get_mut(rec).unwrap().length = (5u64 << 33).into();
    tx.commit(Durability::Flush).unwrap();
    drop(rvm);

    let (rvm, _) = Rvm::open(Box::new(seg), Box::new(log), opts()).unwrap();
    let view = rvm.read().unwrap();
    let heap = Heap::open(&view, 0).unwrap();
    let rec: Rec<Vnode> = Rec::at(heap.root(&view, 0).unwrap());
    let v = view.get(rec).unwrap();
    assert_eq!(
        (v.kind, v.mode.get(), v.length.get()),
        (1, 0o644, 5u64 << 33)
    );
}

#[test]
fn an_exhausted_heap_says_what_is_left() {
    let (rvm, _, _) = support::create::<MemStorage>(8192, opts());
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    let heap = Heap::init(&mut tx, 0, 8192).unwrap();
    let err = heap.alloc(&mut tx, 1 << 20).unwrap_err();
    assert!(
        matches!(err, Error::HeapExhausted { requested, largest_free } if requested == 1 << 20 && largest_free > 4096),
        "{err}"
    );
}

#[derive(Debug, Clone)]
enum Op {
    Alloc(u64),
    Free(usize),
    Commit,
    Abort,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop_oneof![1u64..200, 200u64..5000, Just(CHUNK_BYTES - 16)].prop_map(Op::Alloc),
        4 => any::<usize>().prop_map(Op::Free),
        2 => Just(Op::Commit),
        1 => Just(Op::Abort),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_heap_holds_against_a_model(ops in prop::collection::vec(op(), 1..200)) {
        let (seg, log) = (MemStorage::new(), MemStorage::new());
        let rvm = Rvm::create(Box::new(seg.clone()), Box::new(log.clone()), DATA_BYTES, opts()).unwrap();
        let mut tx = rvm.begin(Mode::Restore).unwrap();
        let heap = Heap::init(&mut tx, 0, DATA_BYTES).unwrap();
        tx.commit(Durability::Flush).unwrap();
        drop(rvm);
        // Committed allocations (offset, len, fill byte), and the open transaction's view.
        let mut committed: Vec<(u64, u64, u8)> = Vec::new();
        let mut fill = 0u8;
        // Each stretch between reopenings runs on a freshly recovered instance.
        for stretch in ops.split(|op| matches!(op, Op::Reopen)) {
            let rvm = Rvm::open(Box::new(seg.clone()), Box::new(log.clone()), opts()).unwrap().0;
            let mut live = committed.clone();
            let mut tx = rvm.begin(Mode::Restore).unwrap();
            for op in stretch {
                match op {
                    Op::Alloc(len) => match heap.alloc(&mut tx, *len) {
                        Ok(at) => {
                            fill = fill.wrapping_add(1);
                            for &(o, l, _) in &live {
                                prop_assert!(at + len <= o || o + l <= at, "allocation overlaps a live one");
                            }
                            tx.write(at, &vec![fill; *len as usize]).unwrap();
                            live.push((at, *len, fill));
                        }
                        Err(Error::HeapExhausted { .. }) => {}
                        Err(e) => return Err(TestCaseError::fail(e.to_string())),
                    },
                    Op::Free(i) if !live.is_empty() => {
                        let (at, _, _) = live.swap_remove(i % live.len());
                        heap.free(&mut tx, at).unwrap();
                    }
                    Op::Free(_) | Op::Reopen => {}
                    Op::Commit => {
                        tx.commit(Durability::NoFlush).unwrap();
                        committed = live.clone();
                        tx = rvm.begin(Mode::Restore).unwrap();
                    }
                    Op::Abort => {
                        tx.abort().unwrap();
                        live = committed.clone();
                        tx = rvm.begin(Mode::Restore).unwrap();
                    }
                }
                let stats = heap.verify(&tx).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(stats.allocated_blocks, live.len() as u64);
                let mut found = Vec::new();
                heap.for_each_allocated(&tx, |at, cap| { found.push((at, cap)); Ok(()) }).unwrap();
                let mut want: Vec<u64> = live.iter().map(|&(at, _, _)| at).collect();
                want.sort_unstable();
                prop_assert_eq!(found.iter().map(|&(at, _)| at).collect::<Vec<_>>(), want);
                for &(at, len, _) in &live {
                    let cap = found.iter().find(|&&(o, _)| o == at).unwrap().1;
                    prop_assert!(cap >= len && (cap + 16) % CHUNK_BYTES == 0);
                }
                for &(at, len, f) in &live {
                    prop_assert!(tx.bytes(at, len).unwrap().iter().all(|b| *b == f), "allocation lost its bytes");
                }
            }
            tx.commit(Durability::NoFlush).unwrap();
            committed = live;
        }
    }
}

#[test]
fn bytes_inside_a_live_block_that_look_like_a_header_are_not_a_block() {
    let (rvm, _, _) = support::create::<MemStorage>(DATA_BYTES, opts());
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    let heap = Heap::init(&mut tx, 0, DATA_BYTES).unwrap();
    let a = heap.alloc(&mut tx, 1000).unwrap();
    let b = heap.alloc(&mut tx, 100).unwrap();
    // Copy b's real header into a's data, at a chunk boundary, then free "it".
    let header = tx.bytes(b - 16, 16).unwrap().to_vec();
    let inner = a - 16 + 128;
    tx.write(inner, &header).unwrap();
    assert!(matches!(
        heap.free(&mut tx, inner + 16),
        Err(Error::BadFree { .. })
    ));
    heap.verify(&tx).unwrap();
}

#[test]
fn a_free_list_that_loops_is_reported_not_walked_forever() {
    let (rvm, _, _) = support::create::<MemStorage>(DATA_BYTES, opts());
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    let heap = Heap::init(&mut tx, 0, DATA_BYTES).unwrap();
    // Large enough for the last free list, the one a large request walks.
    let a = heap.alloc(&mut tx, 4000).unwrap();
    let _keep = heap.alloc(&mut tx, 40).unwrap();
    heap.free(&mut tx, a).unwrap();
    // A stray write points the freed block's `next` link at itself.
    tx.write_u64(a - 16 + 16, a - 16).unwrap();
    assert!(matches!(
        heap.alloc(&mut tx, 1 << 20),
        Err(Error::HeapCorrupt { .. })
    ));
    assert!(matches!(heap.verify(&tx), Err(Error::HeapCorrupt { .. })));
}

#[test]
fn bad_heap_arguments_are_errors() {
    let (rvm, _, _) = support::create::<MemStorage>(DATA_BYTES, opts());
    let mut tx = rvm.begin(Mode::NoRestore).unwrap();
    assert!(matches!(
        Heap::init(&mut tx, u64::MAX - 100, 4096),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        Heap::init(&mut tx, 4096, DATA_BYTES),
        Err(Error::OutOfBounds { .. })
    ));
    let heap = Heap::init(&mut tx, 0, DATA_BYTES).unwrap();
    assert!(matches!(
        heap.set_root(&mut tx, 16, 1),
        Err(Error::NoSuchRoot {
            slot: 16,
            slots: 16
        })
    ));
    assert!(matches!(heap.root(&tx, 99), Err(Error::NoSuchRoot { .. })));
    tx.commit(Durability::Flush).unwrap(); // nothing above poisoned the instance
}
