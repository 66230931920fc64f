//! Tagged variable-length records in a recoverable heap.
//!
//! A record is one heap block: `kind: u8, 3 reserved bytes, len: u32`, then
//! `len` bytes of body. A record is rewritten in place while it fits its
//! block, else moved to a new one. [`scan`] walks the heap block by block,
//! so a program can keep RVM as the only truth and rebuild its in-memory
//! indexes at start instead of storing them.

use crate::heap::{Heap, CHUNK_BYTES};
use crate::{Error, Result, Transaction, View};

pub const HEADER_BYTES: u64 = 8;

/// Where a record lives: its block's offset and usable bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub at: u64,
    pub cap: u64,
}

fn framed(kind: u8, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut w = vec![kind, 0, 0, 0, 0, 0, 0, 0];
    body(&mut w);
    let len = (w.len() - HEADER_BYTES as usize) as u32;
    w[4..8].copy_from_slice(&len.to_le_bytes());
    w
}

/// Writes a new record whose body `body` appends to the buffer it is given.
pub fn insert(
    heap: &Heap,
    tx: &mut Transaction<'_>,
    kind: u8,
    body: impl FnOnce(&mut Vec<u8>),
) -> Result<Slot> {
    place(heap, tx, &framed(kind, body))
}

fn place(heap: &Heap, tx: &mut Transaction<'_>, bytes: &[u8]) -> Result<Slot> {
    let at = heap.alloc(tx, bytes.len() as u64)?;
    tx.write(at, bytes)?;
    Ok(Slot {
        at,
        cap: capacity(bytes.len() as u64),
    })
}

/// Rewrites the record in `slot`, in place when it fits; returns where it is now.
pub fn update(
    heap: &Heap,
    tx: &mut Transaction<'_>,
    slot: Slot,
    kind: u8,
    body: impl FnOnce(&mut Vec<u8>),
) -> Result<Slot> {
    let bytes = framed(kind, body);
    if bytes.len() as u64 <= slot.cap {
        tx.write(slot.at, &bytes)?;
        return Ok(slot);
    }
    let moved = place(heap, tx, &bytes)?;
    heap.free(tx, slot.at)?;
    Ok(moved)
}

pub fn remove(heap: &Heap, tx: &mut Transaction<'_>, slot: Slot) -> Result<()> {
    heap.free(tx, slot.at)
}

/// The bytes a block allocated for `len` bytes can hold at least (blocks
/// are whole chunks with a 16-byte header).
fn capacity(len: u64) -> u64 {
    (len + 16).div_ceil(CHUNK_BYTES).max(1) * CHUNK_BYTES - 16
}

/// One record found by [`scan`].
pub struct Found<'a> {
    pub slot: Slot,
    pub kind: u8,
    pub body: &'a [u8],
}

/// Calls `each` on every record in the heap, in address order; the first
/// error (the walk's or `each`'s) stops the walk and is returned.
pub fn scan<V: View, E: From<Error>>(
    heap: &Heap,
    view: &V,
    mut each: impl FnMut(Found<'_>) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let mut failure = None;
    let walked = heap.for_each_allocated(view, |at, cap| {
        let head = view.bytes(at, HEADER_BYTES)?;
        let len = u64::from(u32::from_le_bytes(head[4..8].try_into().unwrap()));
        if HEADER_BYTES + len > cap {
            return Err(Error::HeapCorrupt {
                offset: at,
                reason: format!("a record of {len} bytes does not fit its block of {cap}"),
            });
        }
        let found = Found {
            slot: Slot { at, cap },
            kind: head[0],
            body: view.bytes(at + HEADER_BYTES, len)?,
        };
        each(found).map_err(|e| {
            failure = Some(e);
            // Stops the walk; the caller's error is returned below.
            Error::HeapCorrupt {
                offset: at,
                reason: String::new(),
            }
        })
    });
    match (walked, failure) {
        (_, Some(e)) => Err(e),
        (Err(e), None) => Err(e.into()),
        (Ok(()), None) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Durability, Mode, Options, Rvm};

    #[test]
    fn capacity_is_never_more_than_the_block_holds() {
        for len in [1u64, 8, 47, 48, 49, 111, 112, 113, 300] {
            let cap = capacity(len);
            assert!(cap >= len);
            assert_eq!((cap + 16) % 64, 0);
            assert!(cap - len < 64);
        }
    }

    #[test]
    fn records_grow_move_and_scan_back_after_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (seg, log) = (dir.path().join("s"), dir.path().join("l"));
        let opts = Options {
            log_area_bytes: 1 << 20,
            ..Options::default()
        };
        let (rvm, _) = Rvm::open_files(&seg, &log, 1 << 20, opts.clone()).unwrap();
        let mut tx = rvm.begin(Mode::NoRestore).unwrap();
        let heap = Heap::init(&mut tx, 0, rvm.data_len()).unwrap();
        let a = insert(&heap, &mut tx, 1, |w| w.extend_from_slice(b"small")).unwrap();
        let b = insert(&heap, &mut tx, 2, |w| w.extend_from_slice(b"gone")).unwrap();
        let a2 = update(&heap, &mut tx, a, 3, |w| w.extend_from_slice(&[7; 500])).unwrap();
        assert_ne!(a2.at, a.at, "a record that outgrows its block moves");
        remove(&heap, &mut tx, b).unwrap();
        tx.commit(Durability::Flush).unwrap();
        drop(rvm);
        let (rvm, _) = Rvm::open_files(&seg, &log, 1 << 20, opts).unwrap();
        let view = rvm.read().unwrap();
        let heap = Heap::open(&view, 0).unwrap();
        let mut seen = Vec::new();
        scan::<_, Error>(&heap, &view, |f| {
            seen.push((f.kind, f.body.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(3, vec![7; 500])]);
        let stop: std::result::Result<(), Error> = scan(&heap, &view, |f| {
            Err(Error::HeapCorrupt {
                offset: f.slot.at,
                reason: "caller".into(),
            })
        });
        assert!(matches!(stop, Err(Error::HeapCorrupt { reason, .. }) if reason == "caller"));
    }
}
