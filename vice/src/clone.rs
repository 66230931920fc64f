//! Volumes made or taken apart whole: read-only clones and backups
//! (copy-on-write: a clone's vnodes share their source's containers, so
//! only metadata is copied), restored volumes, and removal.
//!
//! Work too big for one RVM transaction goes in several, with the volume
//! marked `transient` from the first to the last: a volume in that state is
//! never served, and start-up takes it apart, so a crash leaves no half
//! volume behind.

use coda_proto::fid::{Fid, VolumeId};
use coda_proto::status::Timestamp;
use coda_proto::vice::VolumeKind;
use rvm::{CommitId, Durability};

use crate::shard::{Shard, STAMP_EPOCH};
use crate::vnode::{EntryRecord, Vnode, VolumeHeader};
use crate::volume::Volume;

/// Records written or removed per transaction: below the RVM limit on one
/// transaction with the default log (halved while a smaller log refuses),
/// and few enough that no one waits long on the shard.
pub const RECORDS_PER_TXN: usize = 2048;

/// Whether RVM refused a transaction only for its size.
fn too_big(e: &rvm::Error) -> bool {
    matches!(e, rvm::Error::LogFull { .. } | rvm::Error::TooLarge { .. })
}

/// A volume's whole metadata, to be written as a new volume.
pub struct Image {
    pub header: VolumeHeader,
    pub vnodes: Vec<Vnode>,
    pub entries: Vec<EntryRecord>,
}

impl Image {
    /// A read-only clone of `src` as volume `id`: the same objects (and
    /// containers) under the new volume's fids, mount points kept as they are.
    pub fn clone_of(vol: &Volume, id: VolumeId, name: &str, kind: VolumeKind) -> Image {
        let src = vol.id();
        let map = |f: Fid| match f.volume == src {
            true => Fid { volume: id, ..f },
            false => f,
        };
        let now = Timestamp::now();
        let header = VolumeHeader {
            id,
            name: name.to_string(),
            kind,
            locked: false,
            grants: Vec::new(),
            created: now,
            parent: src,
            backup: 0,
            transient: false,
            restored: None,
            ..vol.header.clone()
        };
        let vnodes = vol
            .vnodes()
            .map(|v| Vnode {
                fid: map(v.fid),
                parent: map(v.parent),
                ..v.clone()
            })
            .collect();
        let entries = vol
            .dirs
            .iter()
            .flat_map(|(&dir, names)| {
                let dir = vol.vnodes.get(&dir).map(|(_, d)| d.fid);
                names.iter().filter_map(move |(name, (_, fid))| {
                    Some(EntryRecord {
                        dir: map(dir?),
                        name: name.clone(),
                        fid: map(*fid),
                    })
                })
            })
            .collect();
        Image {
            header,
            vnodes,
            entries,
        }
    }
}

impl Shard {
    /// Writes `image` as a new volume, in as many transactions as it takes;
    /// the last (which makes it whole) is returned. On failure whatever was
    /// written is taken apart again.
    pub fn build(&mut self, image: Image) -> Result<CommitId, rvm::Error> {
        let id = image.header.id;
        let header = image.header;
        let transient = VolumeHeader {
            transient: true,
            ..header.clone()
        };
        let built = (|| {
            self.transact(Durability::NoFlush, |txn| txn.create_volume(transient))?;
            let vnodes = &image.vnodes;
            self.in_chunks(vnodes.len(), |txn, r| {
                vnodes[r].iter().try_for_each(|v| txn.put_vnode(v.clone()))
            })?;
            let entries = &image.entries;
            self.in_chunks(entries.len(), |txn, r| {
                entries[r]
                    .iter()
                    .try_for_each(|e| txn.put_entry(e.dir, &e.name, e.fid))
            })?;
            let ((), commit) = self.transact(Durability::NoFlush, |txn| txn.put_header(header))?;
            Ok(commit)
        })();
        if built.is_err() && self.meta.volume(id).is_some() {
            if let Err(e) = self.dismantle(id) {
                tracing::error!("taking apart half-built volume {id:x}: {e}");
            }
        }
        built
    }

    /// Removes volume `id` and everything in it, however big: marked
    /// transient first, so a crash part-way finishes the job at start-up.
    pub fn dismantle(&mut self, id: VolumeId) -> Result<CommitId, rvm::Error> {
        let mut per = RECORDS_PER_TXN;
        loop {
            let Some(vol) = self.meta.volume(id) else {
                return Ok(self.last_commit());
            };
            let records = vol.vnodes.len()
                + vol.dirs.values().map(|d| d.len()).sum::<usize>()
                + vol.tombs.values().map(|t| t.len()).sum::<usize>();
            if records <= per {
                match self.transact(Durability::NoFlush, |txn| txn.remove_volume(id)) {
                    Ok(((), commit)) => return Ok(commit),
                    Err(e) if too_big(&e) && per > 1 => {
                        per /= 2;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let mut header = vol.header.clone();
            // By directory number: entries outlive a lost directory record.
            let entries: Vec<(Fid, String)> = vol
                .dirs
                .iter()
                .flat_map(|(&dir, names)| {
                    let dir = Fid::new(id, dir, 0);
                    names.keys().map(move |n| (dir, n.clone()))
                })
                .take(per)
                .collect();
            let vnodes: Vec<Fid> = match entries.len() < per {
                true => vol.vnodes().map(|v| v.fid).take(per).collect(),
                false => Vec::new(),
            };
            let tombs: Vec<Fid> = vol
                .tombs
                .keys()
                .map(|&d| Fid::new(id, d, 0))
                .take(per)
                .collect();
            let removed = self.transact(Durability::NoFlush, |txn| {
                if !header.transient {
                    header.transient = true;
                    txn.put_header(header)?;
                }
                entries
                    .iter()
                    .try_for_each(|(dir, name)| txn.remove_entry(*dir, name))?;
                tombs
                    .iter()
                    .try_for_each(|d| txn.drop_tombstones(*d, |_| true))?;
                vnodes.iter().try_for_each(|f| txn.remove_vnode(*f))
            });
            match removed {
                Ok(_) => {}
                Err(e) if too_big(&e) && per > 1 => per /= 2,
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs `f` over `0..len` in transactions of at most
    /// [`RECORDS_PER_TXN`] items, fewer where RVM finds them too big.
    fn in_chunks(
        &mut self,
        len: usize,
        f: impl Fn(&mut crate::shard::Txn<'_>, std::ops::Range<usize>) -> Result<(), rvm::Error>,
    ) -> Result<(), rvm::Error> {
        let (mut at, mut per) = (0, RECORDS_PER_TXN);
        while at < len {
            let r = at..len.min(at + per);
            match self.transact(Durability::NoFlush, |txn| f(txn, r.clone())) {
                Ok(_) => at = r.end,
                Err(e) if too_big(&e) && per > 1 => per /= 2,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Takes apart every transient volume (start-up, after a crash).
    pub fn dismantle_transient(&mut self) -> Result<usize, rvm::Error> {
        let transient: Vec<VolumeId> = self
            .meta
            .volumes
            .values()
            .filter(|v| v.header.transient)
            .map(|v| v.id())
            .collect();
        for &id in &transient {
            tracing::warn!("volume {id:x} was left half built or half removed: removing it");
            self.dismantle(id)?;
        }
        Ok(transient.len())
    }

    /// Makes (or remakes) the read-only clone `id` of `src` (`None` if
    /// there is no `src`): an existing volume `id` is replaced, and its
    /// stamp moves on so no client keeps what it cached of the older snapshot.
    pub fn clone_volume(
        &mut self,
        src: VolumeId,
        id: VolumeId,
        name: &str,
        kind: VolumeKind,
    ) -> Result<Option<CommitId>, rvm::Error> {
        let Some(vol) = self.meta.volume(src) else {
            return Ok(None);
        };
        let mut image = Image::clone_of(vol, id, name, kind);
        if let Some(old) = self.meta.volume(id).map(|v| v.header.stamp) {
            image.header.stamp = image.header.stamp.max(old) + STAMP_EPOCH;
            self.dismantle(id)?;
        }
        self.build(image).map(Some)
    }
}
