//! The redo log: a circular record area behind a two-slot status block.
//!
//! This module does no I/O of its own for the hot path. [`LogState::prepare_flush`]
//! turns buffered commits into the bytes and positions to write; the caller writes
//! them, syncs, and calls [`LogState::complete_flush`]. The blocking group commit in
//! `rvm.rs` is one driver of that cycle; an io_uring driver can be another.
//! [`Scanner`] reads records back for recovery and truncation.

use std::collections::VecDeque;
use std::io;

use crate::error::{Error, Result};
use crate::format::{
    decode_ranges, pad8, LogPos, RecordFault, RecordHeader, RecordKind, LOG_AREA_START,
    RECORD_HEADER_BYTES,
};
use crate::pages::PageBuffer;
use crate::ranges::RangeMap;
use crate::storage::Storage;

/// Committed transactions not yet written to the log, coalesced; one group becomes
/// one record, so a group is wholly present after a crash or wholly absent.
#[derive(Debug, Default)]
pub(crate) struct Group {
    pub map: RangeMap,
    pub last_commit: u64,
}

/// Bytes to write at positions of the record area, where the log ends after them, and
/// the groups they hold (given back to the buffer if the flush is abandoned).
#[derive(Debug)]
pub(crate) struct FlushBatch {
    /// Contiguous runs: (offset in the log file, bytes).
    pub writes: Vec<(u64, Vec<u8>)>,
    pub end: LogPos,
    pub last_commit: u64,
    pub records: u64,
    groups: Vec<Group>,
}

#[derive(Debug)]
pub(crate) struct LogState {
    pub area_len: u64,
    /// The first record not yet applied to the segment.
    pub head: LogPos,
    /// Where the last completed flush ended; the next record goes here.
    pub tail: LogPos,
    pub pending: VecDeque<Group>,
    pub pending_bytes: u64,
    pub last_commit: u64,
    /// Written to the log file (in the kernel's cache: it outlives the
    /// process) but not yet synced past `durable_commit`.
    pub written_commit: u64,
    pub durable_commit: u64,
    pub flushing: bool,
    /// Set by the first failed write or sync; every later call reports it.
    pub failed: Option<String>,
    pub status_generation: u64,
    pub stats: LogStats,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct LogStats {
    pub commits: u64,
    pub flushes: u64,
    pub records_written: u64,
    pub bytes_written: u64,
    pub truncations: u64,
}

impl LogState {
    pub fn new(area_len: u64, head: LogPos, status_generation: u64) -> LogState {
        LogState {
            area_len,
            head,
            tail: head,
            pending: VecDeque::new(),
            pending_bytes: 0,
            last_commit: 0,
            written_commit: 0,
            durable_commit: 0,
            flushing: false,
            failed: None,
            status_generation,
            stats: LogStats::default(),
        }
    }

    pub fn check(&self) -> Result<()> {
        match &self.failed {
            Some(why) => Err(Error::PreviousIo(why.clone())),
            None => Ok(()),
        }
    }

    /// Bytes of the record area between head and tail.
    pub fn used(&self) -> u64 {
        circular_distance(self.head.offset, self.tail.offset, self.area_len)
    }

    /// Whether a flush has anything to do: buffered groups to write, or written
    /// ones to sync.
    pub fn has_work(&self) -> bool {
        !self.pending.is_empty() || self.written_commit > self.durable_commit
    }

    /// Takes as many pending groups as fit before the head (none, to sync what was
    /// written already). `None` when not even the first fits: truncation must free
    /// space first.
    pub fn prepare_flush(&mut self) -> Option<FlushBatch> {
        let area = self.area_len;
        let mut used = self.used();
        let mut pos = self.tail;
        let mut writes: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut run = Vec::new();
        let mut run_start = pos.offset;
        let mut taken = 0usize;
        let mut last_commit = self.written_commit;
        let mut records = 0;
        for group in &self.pending {
            let len = group.map.record_bytes();
            let room = area - pos.offset;
            let start = if len <= room { pos.offset } else { 0 };
            // The end of the area a record leaves too small for a header is skipped,
            // and so counts as used: the tail must never reach the head.
            let end = LogPos {
                offset: start + len,
                ..pos
            };
            let wraps_after = end.wrapped(area) != end;
            let skipped_after = if wraps_after { area - end.offset } else { 0 };
            let consumed = if len <= room { len } else { room + len } + skipped_after;
            if used + consumed >= area {
                break;
            }
            if len > room {
                if room >= RECORD_HEADER_BYTES {
                    let wrap = RecordHeader {
                        kind: RecordKind::Wrap,
                        length: RECORD_HEADER_BYTES,
                        seq: pos.seq,
                        ranges: 0,
                        prev_chain: pos.chain,
                        body_crc: crc32fast::hash(&[]),
                    }
                    .encode();
                    run.extend_from_slice(&wrap);
                    pos.seq += 1;
                    pos.chain = RecordHeader::chain_of(&wrap);
                    records += 1;
                }
                if !run.is_empty() {
                    writes.push((LOG_AREA_START + run_start, std::mem::take(&mut run)));
                }
                pos.offset = 0;
                run_start = 0;
            }
            pos = encode_transaction(&group.map, pos, &mut run);
            if wraps_after {
                writes.push((LOG_AREA_START + run_start, std::mem::take(&mut run)));
                pos = pos.wrapped(area);
                run_start = 0;
            }
            used += consumed;
            taken += 1;
            records += 1;
            last_commit = group.last_commit;
        }
        if taken == 0 && !self.pending.is_empty() {
            return None;
        }
        if !run.is_empty() {
            writes.push((LOG_AREA_START + run_start, run));
        }
        let groups: Vec<Group> = self.pending.drain(..taken).collect();
        self.pending_bytes -= groups.iter().map(|g| g.map.record_bytes()).sum::<u64>();
        Some(FlushBatch {
            writes,
            end: pos,
            last_commit,
            records,
            groups,
        })
    }

    /// Gives an unwritten batch's groups back to the front of the buffer, in order.
    pub fn abandon_flush(&mut self, batch: FlushBatch) {
        for group in batch.groups.into_iter().rev() {
            self.pending_bytes += group.map.record_bytes();
            self.pending.push_front(group);
        }
    }

    /// Records that a batch from [`prepare_flush`](Self::prepare_flush) is written,
    /// and durable if it was `synced` (with everything written before it).
    pub fn complete_flush(&mut self, batch: &FlushBatch, synced: bool) {
        assert!(
            batch.last_commit >= self.written_commit && batch.last_commit >= self.durable_commit,
            "durability only moves forward"
        );
        self.tail = batch.end;
        self.written_commit = batch.last_commit;
        if synced {
            self.durable_commit = batch.last_commit;
        }
        self.stats.flushes += 1;
        self.stats.records_written += batch.records;
        self.stats.bytes_written += batch
            .writes
            .iter()
            .map(|(_, b)| b.len() as u64)
            .sum::<u64>();
    }
}

fn circular_distance(from: u64, to: u64, area: u64) -> u64 {
    if to >= from {
        to - from
    } else {
        area - from + to
    }
}

/// Appends one transaction record for `map` at `pos`; returns the position after it.
fn encode_transaction(map: &RangeMap, pos: LogPos, out: &mut Vec<u8>) -> LogPos {
    let start = out.len();
    out.resize(start + RECORD_HEADER_BYTES as usize, 0);
    for (offset, data) in map.iter() {
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&(data.len() as u64).to_le_bytes());
        out.extend_from_slice(data);
        let padding = pad8(data.len() as u64) - data.len() as u64;
        out.extend(std::iter::repeat_n(0u8, padding as usize));
    }
    let length = (out.len() - start) as u64;
    debug_assert_eq!(length, map.record_bytes());
    let body_crc = crc32fast::hash(&out[start + RECORD_HEADER_BYTES as usize..]);
    let header = RecordHeader {
        kind: RecordKind::Transaction,
        length,
        seq: pos.seq,
        ranges: u32::try_from(map.len()).expect("a record holds fewer than 2^32 ranges"),
        prev_chain: pos.chain,
        body_crc,
    }
    .encode();
    out[start..start + RECORD_HEADER_BYTES as usize].copy_from_slice(&header);
    LogPos {
        offset: pos.offset + length,
        seq: pos.seq + 1,
        chain: RecordHeader::chain_of(&header),
    }
}

/// What the scanner found at its position.
#[derive(Debug)]
pub(crate) enum Step {
    /// A transaction or wrap record, checked whole; its ranges were passed on.
    Record { bytes: u64 },
    /// The log ends cleanly here.
    End,
    /// A torn or corrupt record at this log-file offset.
    Bad { offset: u64, reason: String },
}

const SCAN_WINDOW_BYTES: usize = 1 << 20;

/// Reads records forward from a position, checking each before handing it out.
pub(crate) struct Scanner<'a> {
    store: &'a dyn Storage,
    area_len: u64,
    data_len: u64,
    pub pos: LogPos,
    window: Vec<u8>,
    window_start: u64,
}

impl<'a> Scanner<'a> {
    pub fn new(store: &'a dyn Storage, area_len: u64, data_len: u64, pos: LogPos) -> Scanner<'a> {
        Scanner {
            store,
            area_len,
            data_len,
            pos,
            window: Vec::new(),
            window_start: 0,
        }
    }

    /// The bytes at `[offset, offset + len)` of the record area (never past its end).
    fn bytes(&mut self, offset: u64, len: u64) -> io::Result<&[u8]> {
        let have = offset >= self.window_start
            && offset + len <= self.window_start + self.window.len() as u64;
        if !have {
            let want = len
                .max(SCAN_WINDOW_BYTES as u64)
                .min(self.area_len - offset);
            self.window.resize(want as usize, 0);
            self.store
                .read_at(LOG_AREA_START + offset, &mut self.window)?;
            self.window_start = offset;
        }
        let at = (offset - self.window_start) as usize;
        Ok(&self.window[at..at + len as usize])
    }

    /// Checks the record at the current position and, when whole, passes each range
    /// to `apply` and moves past it.
    pub fn next(&mut self, mut apply: impl FnMut(u64, &[u8])) -> Result<Step> {
        self.pos = self.pos.wrapped(self.area_len);
        let room = self.area_len - self.pos.offset;
        let expected = self.pos;
        let data_len = self.data_len;
        let at = self.pos.offset;
        let bad = |reason: String| Step::Bad {
            offset: LOG_AREA_START + at,
            reason,
        };
        let header_bytes = self
            .bytes(at, RECORD_HEADER_BYTES)
            .map_err(Error::io("log"))?;
        let header = match RecordHeader::decode(header_bytes, expected, room) {
            Ok(h) => h,
            Err(RecordFault::End) => return Ok(Step::End),
            Err(RecordFault::Bad(reason)) => return Ok(bad(reason)),
        };
        let chain = RecordHeader::chain_of(header_bytes);
        let record = self.bytes(at, header.length).map_err(Error::io("log"))?;
        let body = &record[RECORD_HEADER_BYTES as usize..];
        let body_crc = crc32fast::hash(body);
        if body_crc != header.body_crc {
            return Ok(bad(format!(
                "body checksum {body_crc:#010x}, header says {:#010x}",
                header.body_crc
            )));
        }
        match header.kind {
            RecordKind::Wrap => {
                self.pos = LogPos {
                    offset: 0,
                    seq: expected.seq + 1,
                    chain,
                };
            }
            RecordKind::Transaction => {
                // Check every range before applying any: a record is applied whole or not at all.
                if let Err(reason) = decode_ranges(body, header.ranges, data_len, |_, _| {}) {
                    return Ok(bad(reason));
                }
                decode_ranges(body, header.ranges, data_len, &mut apply).expect("checked above");
                self.pos = LogPos {
                    offset: at + header.length,
                    seq: expected.seq + 1,
                    chain,
                }
                .wrapped(self.area_len);
            }
        }
        Ok(Step::Record {
            bytes: header.length,
        })
    }
}

/// Applies log records from `from` to the segment, stopping at `until` (truncation:
/// every record up to there must be whole) or at the end of the log (recovery).
pub(crate) fn apply_to_segment(
    log: &dyn Storage,
    segment: &dyn Storage,
    segment_data_start: u64,
    area_len: u64,
    data_len: u64,
    from: LogPos,
    until: Option<LogPos>,
) -> Result<Applied> {
    let mut scanner = Scanner::new(log, area_len, data_len, from);
    let mut pages = PageBuffer::new(segment, segment_data_start, data_len);
    let mut failed = None;
    let mut applied = Applied {
        end: from,
        records: 0,
        bytes: 0,
        cut: None,
    };
    loop {
        if until == Some(scanner.pos) {
            break;
        }
        let step = scanner.next(|offset, data| {
            if failed.is_none() {
                failed = pages.apply(offset, data).err();
            }
        })?;
        if let Some(e) = failed.take() {
            return Err(e);
        }
        match step {
            Step::Record { bytes } => {
                applied.records += 1;
                applied.bytes += bytes;
            }
            Step::End if until.is_none() => break,
            Step::Bad { offset, reason } if until.is_none() => {
                applied.cut = Some((offset, reason));
                break;
            }
            Step::End | Step::Bad { .. } => {
                return Err(Error::Corrupt {
                    what: "log",
                    offset: LOG_AREA_START + scanner.pos.offset,
                    reason: "a record that was flushed no longer reads back whole".into(),
                })
            }
        }
    }
    pages.write_out()?;
    applied.end = scanner.pos;
    Ok(applied)
}

#[derive(Debug)]
pub(crate) struct Applied {
    pub end: LogPos,
    pub records: u64,
    pub bytes: u64,
    pub cut: Option<(u64, String)>,
}
