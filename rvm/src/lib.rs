//! Recoverable virtual memory, after Coda's RVM and RDS.
//!
//! A segment file is mapped into memory. Programs read it directly and change it only
//! inside a [`Transaction`]: declare ranges ([`Transaction::set_range`]), change them,
//! then commit with [`Durability::Flush`] (durable on return) or
//! [`Durability::NoFlush`] (durable at the next flush, far cheaper), or abort, which
//! restores the old values in [`Mode::Restore`].
//!
//! Commits go to a redo log of checksummed, chained records (layout in `FORMAT.md`).
//! Opening replays the log up to the last intact record; a torn or corrupt tail is cut
//! off and reported in the [`RecoveryReport`], never applied. Truncation applies the
//! log to the segment file and reclaims log space, in the background and whenever the
//! log passes a threshold. Concurrent flush commits share one sync (group commit);
//! overlapping ranges are logged once and consecutive no-flush commits coalesce.
//!
//! [`heap::Heap`] is a recoverable allocator on top (Coda's RDS), [`Rec`] places
//! fixed-layout records in the segment, and [`record`] keeps tagged variable-length
//! records in the heap.
//!
//! All storage access goes through [`Storage`], so the same code runs over files,
//! memory, and the power-cut simulating [`SimDisk`].
//!
//! ```
//! use rvm::{Durability, Mode, Options, Rvm, View};
//!
//! let dir = tempfile::tempdir()?;
//! let (seg, log) = (dir.path().join("meta.seg"), dir.path().join("meta.log"));
//! let opts = Options { log_area_bytes: 1 << 20, ..Options::default() };
//! let (rvm, _report) = Rvm::open_files(&seg, &log, 1 << 20, opts.clone())?;
//! let mut tx = rvm.begin(Mode::Restore)?; // restore: abort undoes
//! tx.write(4096, b"hello")?; // declare the range and change it
//! tx.commit(Durability::Flush)?; // durable on return
//! drop(rvm);
//! let (rvm, _report) = Rvm::open_files(&seg, &log, 1 << 20, opts)?;
//! assert_eq!(rvm.read()?.bytes(4096, 5)?, b"hello");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod format;
pub mod heap;
mod log;
mod pages;
mod ranges;
pub mod record;
mod rvm;
mod segment;
pub mod storage;
mod transaction;

pub use crate::error::{Error, Result};
pub use crate::format::{AREA_BYTES_MAX, FORMAT_VERSION, LOG_AREA_START, SEGMENT_HEADER_BYTES};
pub use crate::rvm::{
    FlushJob, FlushStep, Options, RecoveryReport, Rvm, Stats, Tail, LOG_AREA_BYTES_MIN,
    SEGMENT_DATA_BYTES_MIN,
};
pub use crate::segment::{ReadView, Rec, Record, View};
pub use crate::storage::{FileStorage, MemStorage, SimDisk, Storage};
pub use crate::transaction::{CommitId, Durability, Mode, Transaction};
