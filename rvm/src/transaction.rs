//! Transactions: declare ranges, change them in memory, commit or abort.

use std::sync::RwLockWriteGuard;

use crate::error::{Error, Result};
use crate::ranges::RangeSet;
use crate::rvm::Inner;
use crate::segment::{record_mut, Rec, Record, SegmentMem, View};

/// Whether a transaction keeps old values so that abort can undo it (Coda's
/// `restore` / `no_restore`). No-restore is cheaper and promises never to abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Restore,
    NoRestore,
}

/// When a commit is durable (Coda's `flush` / `no_flush`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Durable when `commit` returns.
    Flush,
    /// Durable at the next flush: far cheaper, and after a crash each such
    /// transaction is wholly present or wholly absent, in commit order.
    NoFlush,
    /// Written to the log file when `commit` returns, not synced: it outlives
    /// the process (a kill), not the machine, until the next flush.
    Written,
}

/// The number a commit gets; commits are durable in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommitId(pub u64);

/// An open transaction. It holds the segment exclusively until commit or abort;
/// readers wait. Dropping it aborts.
pub struct Transaction<'a> {
    pub(crate) inner: &'a Inner,
    pub(crate) seg: Option<RwLockWriteGuard<'a, SegmentMem>>,
    pub(crate) mode: Mode,
    pub(crate) declared: RangeSet,
    /// Old values of each byte declared, saved once, in restore mode.
    pub(crate) undo: Vec<(u64, Vec<u8>)>,
}

impl<'a> Transaction<'a> {
    fn seg(&self) -> &SegmentMem {
        self.seg
            .as_ref()
            .expect("open transaction holds the segment")
    }

    fn seg_mut(&mut self) -> &mut SegmentMem {
        self.seg
            .as_mut()
            .expect("open transaction holds the segment")
    }

    /// Declares that `[offset, offset + len)` will change (Coda's `set_range`).
    pub fn set_range(&mut self, offset: u64, len: u64) -> Result<()> {
        let end = match offset.checked_add(len) {
            Some(end) if end <= self.seg().data_len() => end,
            _ => {
                return Err(Error::OutOfBounds {
                    offset,
                    len,
                    size: self.seg().data_len(),
                })
            }
        };
        if self.declared.covers(offset, end) {
            return Ok(());
        }
        let needed = self.declared.record_bytes_after(offset, end);
        let limit = self.inner.limits.transaction_bytes_max;
        if needed > limit {
            return Err(Error::LogFull { needed, limit });
        }
        let mut fresh = Vec::new();
        self.declared.insert(offset, end, |a, b| fresh.push((a, b)));
        if self.mode == Mode::Restore {
            for (a, b) in fresh {
                let old = self.seg().bytes(a, b - a)?.to_vec();
                self.undo.push((a, old));
            }
        }
        Ok(())
    }

    /// Declares `[offset, offset + len)` and returns it for changing.
    pub fn range_mut(&mut self, offset: u64, len: u64) -> Result<&mut [u8]> {
        self.set_range(offset, len)?;
        self.seg_mut().bytes_mut(offset, len)
    }

    /// Declares and overwrites (Coda's `modify_bytes`).
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.range_mut(offset, data.len() as u64)?
            .copy_from_slice(data);
        Ok(())
    }

    pub fn write_u64(&mut self, offset: u64, value: u64) -> Result<()> {
        self.write(offset, &value.to_le_bytes())
    }

    /// Declares the record's bytes and returns it for changing.
    pub fn get_mut<T: Record>(&mut self, rec: Rec<T>) -> Result<&mut T> {
        let bytes = self.range_mut(rec.offset(), size_of::<T>() as u64)?;
        record_mut(bytes, rec.offset())
    }

    pub fn write_u32(&mut self, offset: u64, value: u32) -> Result<()> {
        self.write(offset, &value.to_le_bytes())
    }

    /// Ends the transaction. With [`Durability::Flush`] it is durable on return.
    ///
    /// An error from the log's I/O can come after the changes were buffered: the
    /// commit may or may not survive, and the RVM stops until it is reopened, when
    /// recovery shows which it was.
    pub fn commit(mut self, durability: Durability) -> Result<CommitId> {
        let seg = self.seg.take().expect("open transaction holds the segment");
        let (id, must_flush) = self.inner.log_commit(&seg, &self.declared)?;
        drop(seg);
        if durability == Durability::Flush || (must_flush && !self.inner.flush_by_driver) {
            self.inner.wait_durable(id)?;
        } else if durability == Durability::Written {
            self.inner.wait_written(id)?;
        }
        Ok(id)
    }

    /// Ends the transaction, restoring every declared byte. A no-restore transaction
    /// cannot be undone: aborting one stops the RVM until it is reopened, since memory
    /// then holds changes the log will never have.
    pub fn abort(mut self) -> Result<()> {
        self.undo_changes()
    }

    fn undo_changes(&mut self) -> Result<()> {
        let Some(mut seg) = self.seg.take() else {
            return Ok(());
        };
        if self.mode == Mode::NoRestore {
            if !self.declared.is_empty() {
                self.inner.poison();
                return Err(Error::Poisoned);
            }
            return Ok(());
        }
        for (offset, old) in self.undo.drain(..) {
            seg.bytes_mut(offset, old.len() as u64)?
                .copy_from_slice(&old);
        }
        Ok(())
    }
}

/// Reads see this transaction's own changes.
impl View for Transaction<'_> {
    fn bytes(&self, offset: u64, len: u64) -> Result<&[u8]> {
        self.seg().bytes(offset, len)
    }

    fn data_len(&self) -> u64 {
        self.seg().data_len()
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        let _ = self.undo_changes();
    }
}
