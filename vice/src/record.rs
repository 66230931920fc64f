//! The shard's kinds of heap record (`rvm::record`), with bodies in the
//! wire codec.

use coda_rpc2::codec::{self, Decode, Encode};
use rvm::heap::Heap;
use rvm::Transaction;

pub use rvm::record::Slot;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Shard = 1,
    /// A volume header in its first layout ([`crate::vnode::VolumeHeaderV1`]),
    /// read at start-up and rewritten as `Volume2` by the next change.
    Volume = 2,
    Vnode = 3,
    Entry = 4,
    Applied = 5,
    Volume2 = 6,
    /// A name removed from a directory of a replicated volume
    /// ([`crate::vnode::TombRecord`]).
    Tombstone = 7,
    /// A vnode with its update history ([`crate::vnode::VnodeV2`]).
    Vnode2 = 8,
    /// A vnode that may hold a small file's bytes; kinds `Vnode` and
    /// `Vnode2` ([`crate::vnode::VnodeV2`]) are read and rewritten as this
    /// by their next change.
    Vnode3 = 9,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Shard,
            2 => Kind::Volume,
            3 => Kind::Vnode,
            4 => Kind::Entry,
            5 => Kind::Applied,
            6 => Kind::Volume2,
            7 => Kind::Tombstone,
            8 => Kind::Vnode2,
            9 => Kind::Vnode3,
            _ => return None,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Rvm(#[from] rvm::Error),
    #[error("record at {at}: {reason}")]
    Corrupt { at: u64, reason: String },
}

pub fn insert<T: Encode>(
    heap: &Heap,
    tx: &mut Transaction<'_>,
    kind: Kind,
    value: &T,
) -> rvm::Result<Slot> {
    rvm::record::insert(heap, tx, kind as u8, |w| value.encode(w))
}

pub fn update<T: Encode>(
    heap: &Heap,
    tx: &mut Transaction<'_>,
    slot: Slot,
    kind: Kind,
    value: &T,
) -> rvm::Result<Slot> {
    rvm::record::update(heap, tx, slot, kind as u8, |w| value.encode(w))
}

pub use rvm::record::remove;

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
pub fn scan<V: rvm::View>(
    heap: &Heap,
    view: &V,
    mut each: impl FnMut(Found<'_>) -> Result<(), RecordError>,
) -> Result<(), RecordError> {
    rvm::record::scan(heap, view, |f| {
        let kind = Kind::from_u8(f.kind).ok_or_else(|| RecordError::Corrupt {
            at: f.slot.at,
            reason: format!("unknown kind {}", f.kind),
        })?;
        each(Found {
            slot: f.slot,
            kind,
            body: f.body,
        })
    })
}
