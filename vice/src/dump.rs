//! Dumps taken on the server (`volutil dump`). A dump reads a snapshot:
//! the volume's metadata copied in memory when it begins, with the
//! containers it refers to pinned ([`crate::shard::Shard::pin`]), so the
//! volume stays writable while the dump is read out, chunk by chunk.
//!
//! An incremental dump carries every object's attributes and every name
//! (so renames and deletions need no history), but the data only of files
//! whose contents differ from those of the base dump.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use coda_proto::dump::{
    self, DumpEntry, DumpHeader, DumpRemoved, DumpVnode, DumpVolume, Writer, DATA_CHUNK,
};
use coda_proto::fid::VolumeId;
use coda_proto::status::{Timestamp, VnodeKind};
use coda_proto::volutil::ManifestItem;

use crate::container::Containers;
use crate::vnode::{Vnode, NO_CONTAINER};
use crate::volume::Volume;

/// The base dump's files: contents by (vnode, uniquifier).
pub type Manifest = HashMap<(u64, u64), [u8; 32]>;

pub fn manifest(items: &[ManifestItem]) -> Manifest {
    items
        .iter()
        .map(|i| ((i.vnode, i.unique), i.hash))
        .collect()
}

/// An object as a dump holds it.
pub fn dump_vnode(v: &Vnode, data: bool) -> DumpVnode {
    DumpVnode {
        vnode: v.fid.vnode,
        unique: v.fid.unique,
        kind: v.kind,
        mode: v.mode,
        owner: v.owner,
        group: v.group,
        author: v.author,
        link_count: v.link_count,
        length: v.length,
        mtime: v.mtime,
        ctime: v.ctime,
        atime: v.atime,
        data_version: v.data_version,
        vv: v.vv.clone(),
        content_hash: v.content_hash,
        parent_vnode: v.parent.vnode,
        parent_unique: v.parent.unique,
        acl: v.acl.clone(),
        target: v.target.clone(),
        data,
    }
}

/// What a dump of `vol` holds, in the order it goes out.
struct Contents {
    header: DumpHeader,
    volume: DumpVolume,
    /// Directories first, then by vnode number; with whether data follows.
    vnodes: Vec<(Vnode, bool)>,
    entries: Vec<DumpEntry>,
    removed: Vec<DumpRemoved>,
}

impl Contents {
    fn of(vol: &Volume, id: u64, base: Option<(u64, &Manifest)>) -> Contents {
        let mut vnodes: Vec<(Vnode, bool)> = vol
            .vnodes()
            .map(|v| {
                let has_data = v.kind == VnodeKind::File && v.length > 0;
                let unchanged = base.is_some_and(|(_, m)| {
                    m.get(&(v.fid.vnode, v.fid.unique)) == Some(&v.content_hash)
                });
                (v.clone(), has_data && !unchanged)
            })
            .collect();
        vnodes.sort_by_key(|(v, _)| (!v.is_dir(), v.fid.vnode));
        let mut entries: Vec<DumpEntry> = vol
            .dirs
            .iter()
            .filter_map(|(dir, names)| Some((vol.vnodes.get(dir)?.1.fid, names)))
            .flat_map(|(d, names)| {
                names.iter().map(move |(name, (_, fid))| DumpEntry {
                    dir_vnode: d.vnode,
                    dir_unique: d.unique,
                    name: name.clone(),
                    volume: fid.volume,
                    vnode: fid.vnode,
                    unique: fid.unique,
                })
            })
            .collect();
        entries.sort_by(|a, b| (a.dir_vnode, &a.name).cmp(&(b.dir_vnode, &b.name)));
        let mut removed: Vec<DumpRemoved> = base
            .map(|(_, m)| {
                m.keys()
                    .filter(|(vnode, unique)| {
                        vol.vnodes
                            .get(vnode)
                            .is_none_or(|(_, v)| v.fid.unique != *unique)
                    })
                    .map(|&(vnode, unique)| DumpRemoved { vnode, unique })
                    .collect()
            })
            .unwrap_or_default();
        removed.sort_by_key(|r| (r.vnode, r.unique));
        let h = &vol.header;
        Contents {
            header: DumpHeader {
                id,
                base: base.map(|(b, _)| b),
                volume: h.id,
                taken: Timestamp::now(),
                stamp: h.stamp,
            },
            volume: DumpVolume {
                name: h.name.clone(),
                kind: h.kind,
                created: h.created,
                next_vnode: h.next_vnode,
                next_unique: h.next_unique,
            },
            vnodes,
            entries,
            removed,
        }
    }

    /// The dump's size, exactly.
    fn bytes(&self) -> u64 {
        let mut n = dump::PREAMBLE_BYTES
            + dump::coded_bytes(&self.header)
            + dump::coded_bytes(&self.volume);
        for (v, data) in &self.vnodes {
            n += dump::coded_bytes(&dump_vnode(v, *data));
            if *data {
                n += dump::data_bytes(v.length);
            }
        }
        n += self.entries.iter().map(dump::coded_bytes).sum::<u64>();
        n += self.removed.iter().map(dump::coded_bytes).sum::<u64>();
        let data_bytes = self
            .vnodes
            .iter()
            .filter(|(_, data)| *data)
            .map(|(v, _)| v.length)
            .sum();
        n + dump::coded_bytes(&dump::DumpEnd {
            vnodes: self.vnodes.len() as u64,
            entries: self.entries.len() as u64,
            removed: self.removed.len() as u64,
            data_bytes,
        })
    }
}

/// Bytes a full dump of `vol` takes now (the longest dump id assumed).
pub fn estimate(vol: &Volume) -> u64 {
    Contents::of(vol, u64::MAX, None).bytes()
}

/// Where a dump being read out is.
enum Cursor {
    Begin,
    Vnode(usize),
    /// Data of vnode `index`, from `offset`.
    Data {
        index: usize,
        file: Option<File>,
        offset: u64,
    },
    Entry(usize),
    Removed(usize),
    End,
    Done,
}

/// A dump being read out.
pub struct DumpSession {
    pub volume: VolumeId,
    contents: Contents,
    writer: Writer,
    cursor: Cursor,
    pub bytes: u64,
    /// Made but not yet read out.
    pending: Vec<u8>,
    /// The containers its snapshot refers to, pinned while it lives.
    pub pinned: Vec<u64>,
    pub touched: std::time::Instant,
}

impl DumpSession {
    pub fn new(vol: &Volume, id: u64, base: Option<(u64, &Manifest)>) -> DumpSession {
        let contents = Contents::of(vol, id, base);
        let pinned = contents
            .vnodes
            .iter()
            .filter(|(v, data)| *data && v.container != NO_CONTAINER)
            .map(|(v, _)| v.container)
            .collect();
        DumpSession {
            volume: vol.id(),
            bytes: contents.bytes(),
            contents,
            pending: Vec::new(),
            writer: Writer::new(),
            cursor: Cursor::Begin,
            pinned,
            touched: std::time::Instant::now(),
        }
    }

    /// The next `max` bytes of the dump (or fewer, at its end), and
    /// whether the dump is over.
    pub fn read(&mut self, containers: &Containers, max: usize) -> io::Result<(Vec<u8>, bool)> {
        self.touched = std::time::Instant::now();
        let mut out = std::mem::take(&mut self.pending);
        let more = self.make(containers, &mut out, max);
        if out.len() > max {
            self.pending = out.split_off(max);
        }
        more?;
        let done = matches!(self.cursor, Cursor::Done) && self.pending.is_empty();
        Ok((out, done))
    }

    /// Appends records to `out` until it holds `max` bytes or the dump ends.
    fn make(&mut self, containers: &Containers, out: &mut Vec<u8>, max: usize) -> io::Result<()> {
        let out = &mut *out;
        let c = &self.contents;
        while out.len() < max {
            self.cursor = match std::mem::replace(&mut self.cursor, Cursor::Done) {
                Cursor::Begin => {
                    self.writer.begin(out, &c.header, &c.volume);
                    Cursor::Vnode(0)
                }
                Cursor::Vnode(i) if i < c.vnodes.len() => {
                    let (v, data) = &c.vnodes[i];
                    self.writer.vnode(out, &dump_vnode(v, *data));
                    match data {
                        true => Cursor::Data {
                            index: i,
                            // None: the bytes are in the vnode.
                            file: match v.container {
                                NO_CONTAINER => None,
                                c => Some(containers.open_read(c)?),
                            },
                            offset: 0,
                        },
                        false => Cursor::Vnode(i + 1),
                    }
                }
                Cursor::Vnode(_) => Cursor::Entry(0),
                Cursor::Data {
                    index,
                    file,
                    offset,
                } => {
                    let v = &c.vnodes[index].0;
                    let len = v.length;
                    let n = (len - offset).min(DATA_CHUNK as u64) as usize;
                    let mut buf = vec![0u8; n];
                    let read = match &file {
                        Some(f) => f.read_exact_at(&mut buf, offset),
                        None => v
                            .inline
                            .get(offset as usize..offset as usize + n)
                            .map(|b| buf.copy_from_slice(b))
                            .ok_or_else(|| io::ErrorKind::UnexpectedEof.into()),
                    };
                    read.map_err(|e: io::Error| {
                        io::Error::new(e.kind(), format!("contents of {}: {e}", v.fid))
                    })?;
                    self.writer.data(out, &buf);
                    match offset + n as u64 {
                        end if end == len => Cursor::Vnode(index + 1),
                        end => Cursor::Data {
                            index,
                            file,
                            offset: end,
                        },
                    }
                }
                Cursor::Entry(i) if i < c.entries.len() => {
                    self.writer.entry(out, &c.entries[i]);
                    Cursor::Entry(i + 1)
                }
                Cursor::Entry(_) => Cursor::Removed(0),
                Cursor::Removed(i) if i < c.removed.len() => {
                    self.writer.removed(out, &c.removed[i]);
                    Cursor::Removed(i + 1)
                }
                Cursor::Removed(_) => Cursor::End,
                Cursor::End => {
                    self.writer.end(out);
                    Cursor::Done
                }
                Cursor::Done => return Ok(()),
            };
        }
        Ok(())
    }
}
