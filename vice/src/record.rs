//! Variable-length records in a shard's recoverable heap.
//!
//! A record is one heap block: `kind: u8, 3 reserved bytes, len: u32`, then
//! `len` bytes of codec-encoded body. A record is rewritten in place while
//! it fits its block, else moved to a new one. On start the heap is walked
//! block by block and every record decoded into the in-memory indexes, so
//! RVM alone is the truth and the indexes are never stored.

use coda_rpc2::codec::{self, Decode, Encode, Writer};
use rvm::heap::Heap;
use rvm::{Transaction, View};

pub const HEADER_BYTES: u64 = 8;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Shard = 1,
    Volume = 2,
    Vnode = 3,
    Entry = 4,
    Applied = 5,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Shard,
            2 => Kind::Volume,
            3 => Kind::Vnode,
            4 => Kind::Entry,
            5 => Kind::Applied,
            _ => return None,
        })
    }
}

/// Where a record lives: its block's offset and usable bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub at: u64,
    pub cap: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Rvm(#[from] rvm::Error),
    #[error("record at {at}: {reason}")]
    Corrupt { at: u64, reason: String },
}

fn framed<T: Encode>(kind: Kind, value: &T) -> Writer {
    let mut w: Writer = vec![kind as u8, 0, 0, 0, 0, 0, 0, 0];
    value.encode(&mut w);
    let len = (w.len() - HEADER_BYTES as usize) as u32;
    w[4..8].copy_from_slice(&len.to_le_bytes());
    w
}

/// Writes a new record; returns its slot.
pub fn insert<T: Encode>(
    heap: &Heap,
    tx: &mut Transaction<'_>,
    kind: Kind,
    value: &T,
) -> rvm::Result<Slot> {
    let bytes = framed(kind, value);
    let at = heap.alloc(tx, bytes.len() as u64)?;
    tx.write(at, &bytes)?;
    Ok(Slot {
        at,
        cap: capacity(bytes.len() as u64),
    })
}

/// Rewrites the record in `slot`, in place when it fits; returns where it is now.
pub fn update<T: Encode>(
    heap: &Heap,
    tx: &mut Transaction<'_>,
    slot: Slot,
    kind: Kind,
    value: &T,
) -> rvm::Result<Slot> {
    let bytes = framed(kind, value);
    if bytes.len() as u64 <= slot.cap {
        tx.write(slot.at, &bytes)?;
        return Ok(slot);
    }
    let moved = insert(heap, tx, kind, value)?;
    heap.free(tx, slot.at)?;
    Ok(moved)
}

pub fn remove(heap: &Heap, tx: &mut Transaction<'_>, slot: Slot) -> rvm::Result<()> {
    heap.free(tx, slot.at)
}

/// The bytes a block allocated for `len` bytes can hold at least (blocks
/// are whole 64-byte chunks with a 16-byte header).
fn capacity(len: u64) -> u64 {
    let chunk = rvm::heap::CHUNK_BYTES;
    (len + 16).div_ceil(chunk).max(1) * chunk - 16
}

/// One record found by [`scan`].
pub struct Found<'a> {
    pub slot: Slot,
    pub kind: Kind,
    pub body: &'a [u8],
}

impl Found<'_> {
    pub fn decode<T: Decode>(&self) -> Result<T, RecordError> {
        codec::from_bytes(self.body).map_err(|e| RecordError::Corrupt {
            at: self.slot.at,
            reason: format!("{:?} record: {e}", self.kind),
        })
    }
}

/// Calls `each` on every record in the heap, in address order.
pub fn scan<V: View>(
    heap: &Heap,
    view: &V,
    mut each: impl FnMut(Found<'_>) -> Result<(), RecordError>,
) -> Result<(), RecordError> {
    let mut failure = None;
    heap.for_each_allocated(view, |at, cap| {
        let step = (|| {
            let head = view.bytes(at, HEADER_BYTES)?;
            let kind = Kind::from_u8(head[0]).ok_or_else(|| RecordError::Corrupt {
                at,
                reason: format!("unknown kind {}", head[0]),
            })?;
            let len = u64::from(u32::from_le_bytes(head[4..8].try_into().unwrap()));
            if HEADER_BYTES + len > cap {
                return Err(RecordError::Corrupt {
                    at,
                    reason: format!("{len} bytes do not fit a block of {cap}"),
                });
            }
            let body = view.bytes(at + HEADER_BYTES, len)?;
            each(Found {
                slot: Slot { at, cap },
                kind,
                body,
            })
        })();
        match step {
            Ok(()) => Ok(()),
            Err(RecordError::Rvm(e)) => Err(e),
            Err(e) => {
                failure = Some(e);
                // Stop the walk; the error is reported below.
                Err(rvm::Error::HeapCorrupt {
                    offset: at,
                    reason: String::new(),
                })
            }
        }
    })
    .map_err(|e| failure.take().unwrap_or(RecordError::Rvm(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_is_never_more_than_the_block_holds() {
        for len in [1u64, 8, 47, 48, 49, 111, 112, 113, 300] {
            let cap = capacity(len);
            assert!(cap >= len);
            assert_eq!((cap + 16) % 64, 0);
            assert!(cap - len < 64);
        }
    }
}
