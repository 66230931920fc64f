//! Byte layouts of the segment header, the log status block and log records.
//!
//! All integers are little-endian and fixed-width; `FORMAT.md` beside this crate draws
//! every layout and walks through the crash cases. Decoders check each field before
//! anything uses it and say which one failed.

use crate::error::{Error, Result};

/// The version of every on-disk structure this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"RVMS");
pub const STATUS_MAGIC: u32 = u32::from_le_bytes(*b"RVMT");
pub const RECORD_MAGIC: u32 = u32::from_le_bytes(*b"RVMR");

/// The segment file starts with one header page; recoverable data follows it.
pub const SEGMENT_HEADER_BYTES: u64 = 4096;
/// Two status slots at the start of the log file, written alternately.
pub const STATUS_SLOT_BYTES: u64 = 4096;
pub const LOG_AREA_START: u64 = 2 * STATUS_SLOT_BYTES;
pub const RECORD_HEADER_BYTES: u64 = 40;
/// Each range in a transaction record: offset, length, then the bytes padded to 8.
pub const RANGE_HEADER_BYTES: u64 = 16;
pub const RECORD_ALIGN_BYTES: u64 = 8;
/// Largest log record area and segment data area: 256 TiB each, so that no sum of
/// sizes and offsets read from disk can overflow.
pub const AREA_BYTES_MAX: u64 = 1 << 48;
/// Largest sequence number or status generation a log may carry: far beyond what any
/// log writes, and far enough from `u64::MAX` that counting on from it cannot overflow.
pub const COUNTER_MAX: u64 = 1 << 62;

const SEGMENT_HEADER_LEN: usize = 28;
const STATUS_LEN: usize = 56;

const _: () = assert!(SEGMENT_HEADER_LEN as u64 <= SEGMENT_HEADER_BYTES);
const _: () = assert!(STATUS_LEN as u64 <= STATUS_SLOT_BYTES);
const _: () = assert!(RECORD_HEADER_BYTES % RECORD_ALIGN_BYTES == 0);
const _: () = assert!(RANGE_HEADER_BYTES % RECORD_ALIGN_BYTES == 0);

pub fn pad8(n: u64) -> u64 {
    n.div_ceil(RECORD_ALIGN_BYTES) * RECORD_ALIGN_BYTES
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks a fixed block that ends in a CRC-32 of everything before it: its length,
/// magic, checksum and version.
fn check_block(what: &'static str, b: &[u8], offset: u64, len: usize, magic: u32) -> Result<()> {
    if b.len() < len {
        return Err(Error::Corrupt {
            what,
            offset,
            reason: format!("only {} bytes", b.len()),
        });
    }
    let found = u32_at(b, 0);
    if found != magic {
        return Err(Error::BadMagic {
            what,
            found,
            expected: magic,
        });
    }
    // The checksum comes before the version, so that a damaged version field reads as
    // damage; an intact block of another version is a program of another version.
    let version = u16_at(b, 4);
    let crc = u32_at(b, len - 4);
    let actual = crc32fast::hash(&b[..len - 4]);
    if crc != actual {
        let also = if version == FORMAT_VERSION {
            String::new()
        } else {
            format!(" (and format version {version}; this build reads version {FORMAT_VERSION})")
        };
        return Err(Error::Corrupt {
            what,
            offset: offset + len as u64 - 4,
            reason: format!("checksum {crc:#010x}, computed {actual:#010x}{also}"),
        });
    }
    if version != FORMAT_VERSION {
        return Err(Error::VersionMismatch {
            what,
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    Ok(())
}

/// The first page of a segment file: what it is, how big, and which log it pairs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub data_len: u64,
    pub log_id: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(SEGMENT_HEADER_LEN);
        b.extend_from_slice(&SEGMENT_MAGIC.to_le_bytes());
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&self.data_len.to_le_bytes());
        b.extend_from_slice(&self.log_id.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(b.len(), SEGMENT_HEADER_LEN);
        b
    }

    pub fn decode(b: &[u8]) -> Result<SegmentHeader> {
        check_block("segment header", b, 0, SEGMENT_HEADER_LEN, SEGMENT_MAGIC)?;
        let header = SegmentHeader {
            data_len: u64_at(b, 8),
            log_id: u64_at(b, 16),
        };
        if header.data_len > AREA_BYTES_MAX {
            return Err(Error::Corrupt {
                what: "segment header",
                offset: 8,
                reason: format!(
                    "data area of {} bytes, beyond {AREA_BYTES_MAX}",
                    header.data_len
                ),
            });
        }
        Ok(header)
    }
}

/// Where the next record the log expects lies: a position in the record area, the
/// record's sequence number, and the chain value it must carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogPos {
    pub offset: u64,
    pub seq: u64,
    pub chain: u32,
}

impl LogPos {
    /// The position records really start at: a record never begins in the last
    /// `RECORD_HEADER_BYTES - 1` bytes of the area, so there the log wraps to 0.
    pub fn wrapped(self, area_len: u64) -> LogPos {
        if area_len - self.offset < RECORD_HEADER_BYTES {
            LogPos { offset: 0, ..self }
        } else {
            self
        }
    }
}

/// The log's status block: identity, geometry, and where unapplied records start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogStatus {
    pub generation: u64,
    pub log_id: u64,
    pub area_len: u64,
    pub head: LogPos,
}

impl LogStatus {
    /// The slot this status is written to; slots alternate so a torn write of one
    /// leaves the other intact.
    pub fn slot_offset(&self) -> u64 {
        (self.generation % 2) * STATUS_SLOT_BYTES
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(STATUS_LEN);
        b.extend_from_slice(&STATUS_MAGIC.to_le_bytes());
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(&self.generation.to_le_bytes());
        b.extend_from_slice(&self.log_id.to_le_bytes());
        b.extend_from_slice(&self.area_len.to_le_bytes());
        b.extend_from_slice(&self.head.offset.to_le_bytes());
        b.extend_from_slice(&self.head.seq.to_le_bytes());
        b.extend_from_slice(&self.head.chain.to_le_bytes());
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        debug_assert_eq!(b.len(), STATUS_LEN);
        b
    }

    pub fn decode(b: &[u8], slot_offset: u64) -> Result<LogStatus> {
        const WHAT: &str = "log status block";
        check_block(WHAT, b, slot_offset, STATUS_LEN, STATUS_MAGIC)?;
        let status = LogStatus {
            generation: u64_at(b, 8),
            log_id: u64_at(b, 16),
            area_len: u64_at(b, 24),
            head: LogPos {
                offset: u64_at(b, 32),
                seq: u64_at(b, 40),
                chain: u32_at(b, 48),
            },
        };
        // Geometry and counters are checked before any arithmetic trusts them.
        if status.area_len < RECORD_HEADER_BYTES
            || status.area_len % RECORD_ALIGN_BYTES != 0
            || status.area_len > AREA_BYTES_MAX
        {
            return Err(Error::Corrupt {
                what: WHAT,
                offset: slot_offset + 24,
                reason: format!("record area of {} bytes", status.area_len),
            });
        }
        if status.head.offset >= status.area_len || status.head.offset % RECORD_ALIGN_BYTES != 0 {
            return Err(Error::Corrupt {
                what: WHAT,
                offset: slot_offset + 32,
                reason: format!(
                    "head {} outside the {}-byte record area",
                    status.head.offset, status.area_len
                ),
            });
        }
        for (value, field_offset, name) in [
            (status.generation, 8, "generation"),
            (status.head.seq, 40, "sequence number"),
        ] {
            if value > COUNTER_MAX {
                return Err(Error::Corrupt {
                    what: WHAT,
                    offset: slot_offset + field_offset,
                    reason: format!("{name} {value} beyond {COUNTER_MAX}"),
                });
            }
        }
        Ok(status)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// New values of the ranges of one or more coalesced transactions.
    Transaction = 1,
    /// The rest of the record area is unused; the next record is at offset 0.
    Wrap = 2,
}

/// The fixed header of every log record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub kind: RecordKind,
    /// Whole record in bytes, header included, a multiple of 8.
    pub length: u64,
    pub seq: u64,
    pub ranges: u32,
    /// The `header_crc` of the record before this one (or the status block's chain for
    /// the first record after the head), so a stale record can never extend the log.
    pub prev_chain: u32,
    pub body_crc: u32,
}

/// Why the bytes at a log position are not the record the log expects next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordFault {
    /// The bytes are not meant to be the next record: never written, or left from an
    /// earlier lap of the circular log. The log ends cleanly here.
    End,
    /// The bytes claim to be the next record but fail a check: a torn or corrupt tail.
    Bad(String),
}

impl RecordHeader {
    pub fn encode(self) -> [u8; RECORD_HEADER_BYTES as usize] {
        let mut b = [0u8; RECORD_HEADER_BYTES as usize];
        b[0..4].copy_from_slice(&RECORD_MAGIC.to_le_bytes());
        b[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&(self.kind as u16).to_le_bytes());
        b[8..16].copy_from_slice(&self.length.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..28].copy_from_slice(&self.ranges.to_le_bytes());
        b[28..32].copy_from_slice(&self.prev_chain.to_le_bytes());
        b[32..36].copy_from_slice(&self.body_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// The chain value the record after this one must carry: this header's checksum,
    /// which covers the body checksum and the previous chain value in turn.
    pub fn chain_of(encoded: &[u8]) -> u32 {
        u32_at(encoded, 36)
    }

    /// Decodes the header expected at `expected` with `room` bytes left before the end
    /// of the record area.
    pub fn decode(
        b: &[u8],
        expected: LogPos,
        room: u64,
    ) -> std::result::Result<RecordHeader, RecordFault> {
        let b = &b[..RECORD_HEADER_BYTES as usize];
        let seq = u64_at(b, 16);
        let prev_chain = u32_at(b, 28);
        let header_crc = u32_at(b, 36);
        let crc_ok = crc32fast::hash(&b[..36]) == header_crc;
        let claims_next = seq == expected.seq || prev_chain == expected.chain;
        if !crc_ok {
            // Bytes that name neither the expected sequence number nor the expected
            // chain are leftovers; bytes that do were meant to be this record.
            return Err(if claims_next {
                RecordFault::Bad(format!("header checksum {header_crc:#010x} does not match"))
            } else {
                RecordFault::End
            });
        }
        if seq != expected.seq || prev_chain != expected.chain {
            // An intact record that does not follow the one before: a leftover from an
            // earlier lap, or from a tail that recovery already cut.
            return Err(RecordFault::End);
        }
        let magic = u32_at(b, 0);
        if magic != RECORD_MAGIC {
            return Err(RecordFault::Bad(format!("magic {magic:#010x}")));
        }
        let version = u16_at(b, 4);
        if version != FORMAT_VERSION {
            return Err(RecordFault::Bad(format!(
                "format version {version}, this build reads version {FORMAT_VERSION}"
            )));
        }
        let kind = match u16_at(b, 6) {
            1 => RecordKind::Transaction,
            2 => RecordKind::Wrap,
            k => return Err(RecordFault::Bad(format!("unknown record kind {k}"))),
        };
        let length = u64_at(b, 8);
        if length < RECORD_HEADER_BYTES || length % RECORD_ALIGN_BYTES != 0 || length > room {
            return Err(RecordFault::Bad(format!(
                "length {length} with {room} bytes of room"
            )));
        }
        if kind == RecordKind::Wrap && length != RECORD_HEADER_BYTES {
            return Err(RecordFault::Bad(format!("wrap record of length {length}")));
        }
        Ok(RecordHeader {
            kind,
            length,
            seq,
            ranges: u32_at(b, 24),
            prev_chain,
            body_crc: u32_at(b, 32),
        })
    }
}

/// Walks the ranges of a transaction record body, checking each against the segment.
pub fn decode_ranges(
    body: &[u8],
    ranges: u32,
    data_len: u64,
    mut each: impl FnMut(u64, &[u8]),
) -> std::result::Result<(), String> {
    let mut at = 0usize;
    for i in 0..ranges {
        let rest = &body[at..];
        if (rest.len() as u64) < RANGE_HEADER_BYTES {
            return Err(format!("range {i} header runs past the record"));
        }
        let offset = u64_at(rest, 0);
        let len = u64_at(rest, 8);
        let padded = pad8(len.min(u64::MAX - RECORD_ALIGN_BYTES));
        if len == 0 || padded > rest.len() as u64 - RANGE_HEADER_BYTES {
            return Err(format!("range {i} of {len} bytes does not fit the record"));
        }
        if offset.checked_add(len).is_none_or(|end| end > data_len) {
            return Err(format!(
                "range {i} at {offset}+{len} lies outside the {data_len}-byte segment"
            ));
        }
        let start = RANGE_HEADER_BYTES as usize;
        each(offset, &rest[start..start + len as usize]);
        at += start + padded as usize;
    }
    if at != body.len() {
        return Err(format!("{} bytes follow the last range", body.len() - at));
    }
    Ok(())
}
