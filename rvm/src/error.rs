//! Typed errors. Each variant carries the facts a person needs to act on it.

use std::io;

/// Everything an RVM operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("I/O error on {what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// An earlier write or sync failed; nothing more is done until the RVM is reopened,
    /// because the state on disk is no longer known (a failed fsync may have dropped pages).
    #[error("an earlier I/O error stopped this RVM instance ({0}); reopen it to recover")]
    PreviousIo(String),
    /// A no-restore transaction was abandoned: memory holds changes that are not logged.
    #[error("a no-restore transaction was aborted; reopen the RVM to recover")]
    Poisoned,
    #[error("{path} is in use by another RVM instance")]
    InUse { path: String },
    #[error("{what} is not an RVM file: magic {found:#010x}, expected {expected:#010x}")]
    BadMagic {
        what: &'static str,
        found: u32,
        expected: u32,
    },
    #[error("{what} has format version {found}, this build reads version {supported}")]
    VersionMismatch {
        what: &'static str,
        found: u16,
        supported: u16,
    },
    #[error("corrupt {what} at offset {offset}: {reason}")]
    Corrupt {
        what: &'static str,
        offset: u64,
        reason: String,
    },
    #[error("segment too small: {requested} bytes requested, at least {minimum} needed")]
    SegmentTooSmall { requested: u64, minimum: u64 },
    #[error("{what} too large: {requested} bytes requested, at most {maximum} supported")]
    TooLarge {
        what: &'static str,
        requested: u64,
        maximum: u64,
    },
    #[error("log too small: {requested} bytes requested, at least {minimum} needed")]
    LogTooSmall { requested: u64, minimum: u64 },
    #[error(
        "log {log_id:#018x} does not belong to segment (segment expects log {expected:#018x})"
    )]
    LogMismatch { log_id: u64, expected: u64 },
    #[error("range {offset}+{len} lies outside the segment's {size} bytes")]
    OutOfBounds { offset: u64, len: u64, size: u64 },
    #[error("range {offset}+{len} was not declared with set_range in this transaction")]
    RangeNotDeclared { offset: u64, len: u64 },
    /// The transaction would not fit in the log even when the log is empty.
    #[error("log full: the transaction needs {needed} log bytes, at most {limit} fit in one transaction")]
    LogFull { needed: u64, limit: u64 },
    #[error(
        "heap exhausted: {requested} bytes requested, largest free block is {largest_free} bytes"
    )]
    HeapExhausted { requested: u64, largest_free: u64 },
    #[error("heap corrupt at offset {offset}: {reason}")]
    HeapCorrupt { offset: u64, reason: String },
    #[error("heap root slot {slot} does not exist: there are {slots}")]
    NoSuchRoot { slot: u64, slots: u64 },
    #[error("offset {offset} is not a live heap block: {reason}")]
    BadFree { offset: u64, reason: String },
    #[error("record at offset {offset} does not fit a {type_name} ({size} bytes)")]
    BadRecord {
        offset: u64,
        size: u64,
        type_name: &'static str,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { what, source }
    }
}
