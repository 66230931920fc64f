//! The volume dump format (`volutil dump`, `volutil restore`,
//! `codadump2tar`): a stream that can be written and read in one pass.
//!
//! ```text
//! dump  = MAGIC VERSION(u32 LE) frame*
//! frame = tag(u8) length(u32 LE) body[length] crc32(u32 LE, of tag, length and body)
//! ```
//!
//! Bodies use the wire codec (varints, so byte-order neutral). The frames
//! come in this order: one [`DumpHeader`], one [`DumpVolume`], every
//! [`DumpVnode`] (directories first; a file whose data is in the dump is
//! followed by [`Record::Data`] frames holding exactly its length), every
//! [`DumpEntry`], the [`DumpRemoved`] of an incremental dump, and a
//! [`DumpEnd`] whose counts must match. [`Parser`] enforces all of it and
//! names the byte offset of whatever is wrong, so a truncated or damaged
//! dump is refused before anything is made of it.

use coda_rpc2::codec::{self, Decode, Encode};
use coda_rpc2::codec_struct;

use crate::acl::Acl;
use crate::fid::VolumeId;
use crate::status::{Timestamp, VnodeKind};
use crate::vice::VolumeKind;
use crate::vv::VersionVector;

pub const MAGIC: [u8; 8] = *b"CODADUMP";
pub const VERSION: u32 = 1;
/// Bytes before the first frame.
pub const PREAMBLE_BYTES: u64 = 12;
/// File data travels in frames of at most this much.
pub const DATA_CHUNK: usize = 1 << 20;
/// No frame body is longer: a longer length is damage, not a record.
pub const FRAME_BODY_MAX: u32 = 16 << 20;
/// Tag, length and checksum.
pub const FRAME_OVERHEAD: u64 = 9;

pub mod tag {
    pub const HEADER: u8 = 1;
    pub const VOLUME: u8 = 2;
    pub const VNODE: u8 = 3;
    pub const DATA: u8 = 4;
    pub const ENTRY: u8 = 5;
    pub const REMOVED: u8 = 6;
    pub const END: u8 = 7;
}

codec_struct! {
    /// Which dump this is, and for an incremental one, which dump it
    /// brings up to date.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DumpHeader {
        /// Chosen at random when the dump is taken.
        pub id: u64,
        /// The dump this one is relative to; `None` for a full dump.
        pub base: Option<u64>,
        pub volume: VolumeId,
        /// When the snapshot it was taken from was made.
        pub taken: Timestamp,
        /// The volume's update stamp at the snapshot.
        pub stamp: u64,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DumpVolume {
        pub name: String,
        pub kind: VolumeKind,
        pub created: Timestamp,
        pub next_vnode: u64,
        pub next_unique: u64,
    }
}

codec_struct! {
    /// One object with its attributes; directories carry their ACL,
    /// symlinks their target.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DumpVnode {
        pub vnode: u64,
        pub unique: u64,
        pub kind: VnodeKind,
        pub mode: u32,
        pub owner: u32,
        pub group: u32,
        pub author: u32,
        pub link_count: u32,
        pub length: u64,
        pub mtime: Timestamp,
        pub ctime: Timestamp,
        pub atime: Timestamp,
        pub data_version: u64,
        pub vv: VersionVector,
        /// blake3 of a file's contents: checked as its data is read back.
        pub content_hash: [u8; 32],
        pub parent_vnode: u64,
        pub parent_unique: u64,
        pub acl: Option<Acl>,
        pub target: String,
        /// `length` bytes of data frames follow. False for a file an
        /// incremental dump found unchanged since its base (and for
        /// directories, symlinks and empty files).
        pub data: bool,
    }
}

codec_struct! {
    /// A name in a directory. A target in another volume is a mount point.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DumpEntry {
        pub dir_vnode: u64,
        pub dir_unique: u64,
        pub name: String,
        pub volume: VolumeId,
        pub vnode: u64,
        pub unique: u64,
    }
}

codec_struct! {
    /// An object of the base dump that is gone (incremental dumps only).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DumpRemoved {
        pub vnode: u64,
        pub unique: u64,
    }
}

codec_struct! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct DumpEnd {
        pub vnodes: u64,
        pub entries: u64,
        pub removed: u64,
        pub data_bytes: u64,
    }
}

/// One frame, decoded. Records are read one at a time, so the size of
/// the largest variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Header(DumpHeader),
    Volume(DumpVolume),
    Vnode(DumpVnode),
    Data(Vec<u8>),
    Entry(DumpEntry),
    Removed(DumpRemoved),
    End(DumpEnd),
}

/// What is wrong with a dump, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad dump at byte {offset}: {reason}")]
pub struct DumpError {
    pub offset: u64,
    pub reason: String,
}

impl DumpError {
    pub fn at(offset: u64, reason: impl Into<String>) -> DumpError {
        DumpError {
            offset,
            reason: reason.into(),
        }
    }
}

/// The bytes a dump begins with.
pub fn preamble() -> [u8; PREAMBLE_BYTES as usize] {
    let mut p = [0u8; PREAMBLE_BYTES as usize];
    p[..8].copy_from_slice(&MAGIC);
    p[8..].copy_from_slice(&VERSION.to_le_bytes());
    p
}

fn put_frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    let start = out.len();
    out.push(tag);
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_le_bytes());
}

fn put_coded(out: &mut Vec<u8>, tag: u8, value: &impl Encode) {
    let mut body = Vec::new();
    value.encode(&mut body);
    put_frame(out, tag, &body);
}

/// Frames a dump, counting what [`DumpEnd`] must say.
#[derive(Debug, Default)]
pub struct Writer {
    end: DumpEnd,
}

impl Writer {
    pub fn new() -> Writer {
        Writer::default()
    }

    /// The preamble, the dump header and the volume header.
    pub fn begin(&mut self, out: &mut Vec<u8>, header: &DumpHeader, volume: &DumpVolume) {
        out.extend_from_slice(&preamble());
        put_coded(out, tag::HEADER, header);
        put_coded(out, tag::VOLUME, volume);
    }

    pub fn vnode(&mut self, out: &mut Vec<u8>, v: &DumpVnode) {
        self.end.vnodes += 1;
        put_coded(out, tag::VNODE, v);
    }

    /// A file's data (or part of it), in frames of at most [`DATA_CHUNK`].
    pub fn data(&mut self, out: &mut Vec<u8>, data: &[u8]) {
        for chunk in data.chunks(DATA_CHUNK) {
            self.end.data_bytes += chunk.len() as u64;
            put_frame(out, tag::DATA, chunk);
        }
    }

    pub fn entry(&mut self, out: &mut Vec<u8>, e: &DumpEntry) {
        self.end.entries += 1;
        put_coded(out, tag::ENTRY, e);
    }

    pub fn removed(&mut self, out: &mut Vec<u8>, r: &DumpRemoved) {
        self.end.removed += 1;
        put_coded(out, tag::REMOVED, r);
    }

    pub fn end(&mut self, out: &mut Vec<u8>) {
        put_coded(out, tag::END, &self.end);
    }
}

/// Bytes a frame holding `body` bytes takes.
pub fn frame_bytes(body: u64) -> u64 {
    FRAME_OVERHEAD + body
}

/// Bytes the frames of a value take.
pub fn coded_bytes(value: &impl Encode) -> u64 {
    let mut body = Vec::new();
    value.encode(&mut body);
    frame_bytes(body.len() as u64)
}

/// Bytes the data frames of a file of `len` bytes take.
pub fn data_bytes(len: u64) -> u64 {
    len + len.div_ceil(DATA_CHUNK as u64) * FRAME_OVERHEAD
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Preamble,
    Header,
    Volume,
    Vnodes,
    Entries,
    Removed,
    Ended,
}

/// Reads a dump fed in pieces of any size, checking every frame's
/// checksum and the order and counts of the records.
#[derive(Debug)]
pub struct Parser {
    buf: Vec<u8>,
    /// Where `buf[pos]` is in the stream.
    pos: usize,
    base: u64,
    phase: Phase,
    /// Data bytes still owed to the last file.
    owed: u64,
    seen: DumpEnd,
    incremental: bool,
    /// Where the last record returned began.
    last: u64,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new()
    }
}

impl Parser {
    pub fn new() -> Parser {
        Parser {
            buf: Vec::new(),
            pos: 0,
            base: 0,
            phase: Phase::Preamble,
            owed: 0,
            seen: DumpEnd::default(),
            incremental: false,
            last: 0,
        }
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes of the stream consumed so far.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    /// Where the last record returned began: errors found in it later
    /// (a wrong hash) point there.
    pub fn record_offset(&self) -> u64 {
        self.last
    }

    /// Whether the end record has been read.
    pub fn ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// The next record, `None` if more bytes are needed first (not an
    /// `Iterator`: it can fail, and `None` is not the end).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Record>, DumpError> {
        let at = self.offset();
        let avail = &self.buf[self.pos..];
        if self.phase == Phase::Preamble {
            let n = avail.len().min(8);
            if avail[..n] != MAGIC[..n] {
                return Err(DumpError::at(at, "not a Coda dump (bad magic)"));
            }
            if avail.len() < PREAMBLE_BYTES as usize {
                return Ok(None);
            }
            let version = u32::from_le_bytes(avail[8..12].try_into().expect("4 bytes"));
            if version != VERSION {
                return Err(DumpError::at(
                    at + 8,
                    format!("dump format version {version}, this program reads {VERSION}"),
                ));
            }
            self.pos += PREAMBLE_BYTES as usize;
            self.phase = Phase::Header;
            return self.next();
        }
        if self.phase == Phase::Ended {
            return match avail.is_empty() {
                true => Ok(None),
                false => Err(DumpError::at(at, "bytes after the end of the dump")),
            };
        }
        if avail.len() < 5 {
            return Ok(None);
        }
        let tag = avail[0];
        let len = u32::from_le_bytes(avail[1..5].try_into().expect("4 bytes"));
        if len > FRAME_BODY_MAX {
            return Err(DumpError::at(
                at,
                format!("frame of {len} bytes is too long"),
            ));
        }
        let total = 5 + len as usize + 4;
        if avail.len() < total {
            return Ok(None);
        }
        let stored = u32::from_le_bytes(avail[total - 4..total].try_into().expect("4 bytes"));
        if crc32fast::hash(&avail[..total - 4]) != stored {
            return Err(DumpError::at(at, "checksum mismatch"));
        }
        let buf = std::mem::take(&mut self.buf);
        let record = self.record(at, tag, &buf[self.pos + 5..self.pos + total - 4]);
        self.buf = buf;
        let record = record?;
        self.pos += total;
        self.last = at;
        Ok(Some(record))
    }

    /// Call at the end of the input: a dump that stops early is an error.
    pub fn finish(&self) -> Result<(), DumpError> {
        if self.phase != Phase::Ended {
            return Err(DumpError::at(
                self.offset(),
                "the dump is truncated (no end record)",
            ));
        }
        if self.pos < self.buf.len() {
            return Err(DumpError::at(
                self.offset(),
                "bytes after the end of the dump",
            ));
        }
        Ok(())
    }

    fn record(&mut self, at: u64, tag: u8, body: &[u8]) -> Result<Record, DumpError> {
        fn decode<T: Decode>(at: u64, body: &[u8]) -> Result<T, DumpError> {
            codec::from_bytes(body).map_err(|e| DumpError::at(at, format!("bad record: {e}")))
        }
        let order = |what: &str| DumpError::at(at, format!("{what} out of order"));
        if self.owed > 0 && tag != tag::DATA {
            return Err(DumpError::at(
                at,
                format!("file data ends {} bytes early", self.owed),
            ));
        }
        Ok(match tag {
            tag::HEADER if self.phase == Phase::Header => {
                let h: DumpHeader = decode(at, body)?;
                self.incremental = h.base.is_some();
                self.phase = Phase::Volume;
                Record::Header(h)
            }
            tag::VOLUME if self.phase == Phase::Volume => {
                self.phase = Phase::Vnodes;
                Record::Volume(decode(at, body)?)
            }
            tag::VNODE if self.phase == Phase::Vnodes => {
                let v: DumpVnode = decode(at, body)?;
                if v.data && (v.kind != VnodeKind::File || v.length == 0) {
                    return Err(DumpError::at(
                        at,
                        "data for an object that is not a file, or empty",
                    ));
                }
                if v.data {
                    self.owed = v.length;
                }
                self.seen.vnodes += 1;
                Record::Vnode(v)
            }
            tag::DATA if self.owed > 0 => {
                if body.len() as u64 > self.owed {
                    return Err(DumpError::at(at, "more file data than the file's length"));
                }
                self.owed -= body.len() as u64;
                self.seen.data_bytes += body.len() as u64;
                Record::Data(body.to_vec())
            }
            tag::DATA => return Err(DumpError::at(at, "file data without a file")),
            tag::ENTRY if matches!(self.phase, Phase::Vnodes | Phase::Entries) => {
                self.phase = Phase::Entries;
                self.seen.entries += 1;
                Record::Entry(decode(at, body)?)
            }
            tag::REMOVED if !self.incremental => {
                return Err(DumpError::at(at, "a removal in a full dump"))
            }
            tag::REMOVED
                if matches!(self.phase, Phase::Vnodes | Phase::Entries | Phase::Removed) =>
            {
                self.phase = Phase::Removed;
                self.seen.removed += 1;
                Record::Removed(decode(at, body)?)
            }
            tag::END if matches!(self.phase, Phase::Vnodes | Phase::Entries | Phase::Removed) => {
                let end: DumpEnd = decode(at, body)?;
                if end != self.seen {
                    return Err(DumpError::at(
                        at,
                        format!(
                            "the end record counts {end:?} but the dump holds {:?}",
                            self.seen
                        ),
                    ));
                }
                self.phase = Phase::Ended;
                Record::End(end)
            }
            tag::HEADER => return Err(order("dump header")),
            tag::VOLUME => return Err(order("volume header")),
            tag::VNODE => return Err(order("vnode")),
            tag::ENTRY => return Err(order("directory entry")),
            tag::REMOVED => return Err(order("removal")),
            tag::END => return Err(order("end record")),
            t => return Err(DumpError::at(at, format!("unknown record tag {t}"))),
        })
    }
}

/// Reads every record of a dump from `input`, in pieces.
pub fn read_all(
    mut input: impl std::io::Read,
    mut each: impl FnMut(&Parser, Record) -> Result<(), DumpError>,
) -> Result<(), DumpError> {
    let mut parser = Parser::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = loop {
            match input.read(&mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DumpError::at(parser.offset(), format!("reading: {e}"))),
            }
        };
        if n == 0 {
            return parser.finish();
        }
        parser.feed(&buf[..n]);
        while let Some(r) = parser.next()? {
            each(&parser, r)?;
        }
    }
}

/// What an incremental dump against the dump in `input` must know of
/// it: its header and the contents of each file it holds.
pub fn manifest(
    input: impl std::io::Read,
) -> Result<(DumpHeader, Vec<crate::volutil::ManifestItem>), DumpError> {
    let mut header = None;
    let mut items = Vec::new();
    read_all(input, |_, r| {
        match r {
            Record::Header(h) => header = Some(h),
            Record::Vnode(v) if v.kind == VnodeKind::File => {
                items.push(crate::volutil::ManifestItem {
                    vnode: v.vnode,
                    unique: v.unique,
                    hash: v.content_hash,
                })
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok((header.expect("a whole dump has a header"), items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fid::StoreId;

    fn vnode(n: u64, kind: VnodeKind, data: &[u8]) -> DumpVnode {
        let mut vv = VersionVector::new(1);
        vv.bump(0, StoreId { host: 1, unique: n });
        DumpVnode {
            vnode: n,
            unique: n,
            kind,
            mode: 0o644,
            owner: 1,
            group: 2,
            author: 1,
            link_count: 1,
            length: data.len() as u64,
            mtime: Timestamp { secs: 5, nanos: 6 },
            ctime: Timestamp::default(),
            atime: Timestamp::default(),
            data_version: 1,
            vv,
            content_hash: *blake3::hash(data).as_bytes(),
            parent_vnode: 1,
            parent_unique: 1,
            acl: None,
            target: String::new(),
            data: kind == VnodeKind::File && !data.is_empty(),
        }
    }

    fn sample(big: usize) -> (Vec<u8>, Vec<Record>) {
        let mut out = Vec::new();
        let mut w = Writer::new();
        let header = DumpHeader {
            id: 7,
            base: None,
            volume: 0x7f00_0002,
            taken: Timestamp::default(),
            stamp: 9,
        };
        let volume = DumpVolume {
            name: "v".into(),
            kind: VolumeKind::ReadWrite,
            created: Timestamp::default(),
            next_vnode: 10,
            next_unique: 10,
        };
        w.begin(&mut out, &header, &volume);
        let data: Vec<u8> = (0..big).map(|i| (i * 7) as u8).collect();
        let dir = vnode(1, VnodeKind::Directory, b"");
        let file = vnode(2, VnodeKind::File, &data);
        w.vnode(&mut out, &dir);
        w.vnode(&mut out, &file);
        w.data(&mut out, &data);
        let entry = DumpEntry {
            dir_vnode: 1,
            dir_unique: 1,
            name: "f".into(),
            volume: 0x7f00_0002,
            vnode: 2,
            unique: 2,
        };
        w.entry(&mut out, &entry);
        w.end(&mut out);
        let mut records = vec![
            Record::Header(header),
            Record::Volume(volume),
            Record::Vnode(dir),
            Record::Vnode(file),
        ];
        records.extend(data.chunks(DATA_CHUNK).map(|c| Record::Data(c.to_vec())));
        records.push(Record::Entry(entry));
        records.push(Record::End(DumpEnd {
            vnodes: 2,
            entries: 1,
            removed: 0,
            data_bytes: big as u64,
        }));
        (out, records)
    }

    fn parse_in(bytes: &[u8], piece: usize) -> Result<Vec<Record>, DumpError> {
        let mut p = Parser::new();
        let mut got = Vec::new();
        for chunk in bytes.chunks(piece.max(1)) {
            p.feed(chunk);
            while let Some(r) = p.next()? {
                got.push(r);
            }
        }
        p.finish()?;
        Ok(got)
    }

    #[test]
    fn a_dump_reads_back_whole_in_pieces_of_any_size() {
        let (bytes, records) = sample(DATA_CHUNK * 2 + 17);
        for piece in [1, 3, 4096, 1 << 20, bytes.len()] {
            if piece == 1 && bytes.len() > 100_000 {
                continue;
            }
            assert_eq!(parse_in(&bytes, piece).unwrap(), records, "piece {piece}");
        }
        let (small, records) = sample(100);
        assert_eq!(parse_in(&small, 1).unwrap(), records);
    }

    #[test]
    fn truncation_anywhere_is_refused_with_an_offset() {
        let (bytes, _) = sample(3000);
        for cut in 0..bytes.len() {
            let e = parse_in(&bytes[..cut], 977).unwrap_err();
            assert!(e.offset <= cut as u64, "cut {cut}: {e}");
        }
    }

    #[test]
    fn any_flipped_byte_is_refused() {
        let (bytes, _) = sample(500);
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x40;
            assert!(parse_in(&bad, 64).is_err(), "flip at {at} passed");
        }
    }

    #[test]
    fn the_estimates_match_what_the_writer_writes() {
        let data = vec![1u8; DATA_CHUNK + 5];
        let mut out = Vec::new();
        Writer::new().data(&mut out, &data);
        assert_eq!(out.len() as u64, data_bytes(data.len() as u64));
        let v = vnode(3, VnodeKind::File, &data);
        let mut out = Vec::new();
        Writer::new().vnode(&mut out, &v);
        assert_eq!(out.len() as u64, coded_bytes(&v));
    }

    #[test]
    fn records_out_of_order_are_refused() {
        let mut out = Vec::new();
        out.extend_from_slice(&preamble());
        put_coded(&mut out, tag::END, &DumpEnd::default());
        let e = parse_in(&out, 100).unwrap_err();
        assert_eq!(e.offset, PREAMBLE_BYTES);
        assert!(e.reason.contains("out of order"), "{e}");
    }
}
