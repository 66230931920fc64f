//! A volume in memory: its header and indexes over its vnodes and
//! directory entries, rebuilt from RVM at start and kept in step with it by
//! [`crate::shard::Txn`].

use std::collections::{BTreeMap, HashMap};

use coda_proto::fid::{Fid, VolumeId, ROOT_VNODE};
use coda_proto::status::VnodeKind;

use crate::record::Slot;
use crate::vnode::{AppliedRecord, TombRecord, Vnode, VolumeHeader};

/// A directory's entries by name.
pub type Entries = BTreeMap<String, (Slot, Fid)>;

#[derive(Debug)]
pub struct Volume {
    pub header: VolumeHeader,
    pub slot: Slot,
    pub(crate) vnodes: HashMap<u64, (Slot, Vnode)>,
    pub(crate) dirs: HashMap<u64, Entries>,
    pub(crate) applied: HashMap<(i32, u64), (Slot, AppliedRecord)>,
    /// Each directory's tombstones (replicated volumes).
    pub(crate) tombs: HashMap<u64, Vec<(Slot, TombRecord)>>,
    /// Sum of file lengths.
    pub bytes: u64,
}

impl Volume {
    pub fn new(header: VolumeHeader, slot: Slot) -> Volume {
        Volume {
            header,
            slot,
            vnodes: HashMap::new(),
            dirs: HashMap::new(),
            applied: HashMap::new(),
            tombs: HashMap::new(),
            bytes: 0,
        }
    }

    pub fn id(&self) -> VolumeId {
        self.header.id
    }

    pub fn root(&self) -> Fid {
        self.vnodes
            .get(&ROOT_VNODE)
            .map(|(_, v)| v.fid)
            .unwrap_or(Fid::root(self.header.id))
    }

    /// The vnode `fid` names, if it is in this volume and still the same
    /// object (its uniquifier matches).
    pub fn vnode(&self, fid: Fid) -> Option<&Vnode> {
        if fid.volume != self.header.id {
            return None;
        }
        self.vnodes
            .get(&fid.vnode)
            .map(|(_, v)| v)
            .filter(|v| v.fid.unique == fid.unique)
    }

    pub fn entries(&self, dir: Fid) -> Option<&Entries> {
        self.vnode(dir)?;
        self.dirs.get(&dir.vnode)
    }

    pub fn lookup(&self, dir: Fid, name: &str) -> Option<Fid> {
        self.entries(dir)?.get(name).map(|(_, f)| *f)
    }

    /// A directory's names, each with its fid and what it holds (a fid of
    /// another volume is a mount point: a directory).
    pub fn listing(&self, dir: Fid) -> impl Iterator<Item = (&str, Fid, VnodeKind)> {
        self.entries(dir)
            .into_iter()
            .flatten()
            .map(|(name, (_, f))| {
                let kind = self.vnode(*f).map_or(VnodeKind::Directory, |c| c.kind);
                (name.as_str(), *f, kind)
            })
    }

    /// A directory's tombstones.
    pub fn tombstones(&self, dir: Fid) -> impl Iterator<Item = &coda_proto::res::Tombstone> {
        self.tombs
            .get(&dir.vnode)
            .into_iter()
            .flatten()
            .map(|(_, t)| &t.tomb)
    }

    /// How many replicas the volume has (its version vectors' slots).
    pub fn replicas(&self) -> usize {
        self.header.replicas.len().max(1)
    }

    /// This server's slot among the volume's replicas (`me` is the
    /// server's name); a volume made before replication has one, 0.
    pub fn slot_of(&self, me: &str) -> usize {
        self.header
            .replicas
            .iter()
            .position(|n| n == me)
            .unwrap_or(0)
    }

    /// Made empty while the volume held contents elsewhere, and not yet
    /// filled by resolution.
    pub fn is_barren(&self) -> bool {
        self.vnode(self.root()).is_some_and(|r| r.vv.is_barren())
    }

    pub fn vnodes(&self) -> impl Iterator<Item = &Vnode> {
        self.vnodes.values().map(|(_, v)| v)
    }

    pub fn files(&self) -> u64 {
        self.vnodes.len() as u64
    }

    /// The last batch `user` reintegrated from client `host`.
    pub fn applied(&self, user: i32, host: u64) -> Option<&AppliedRecord> {
        self.applied.get(&(user, host)).map(|(_, a)| a)
    }

    pub(crate) fn account(&mut self, old: Option<&Vnode>, new: Option<&Vnode>) {
        let len = |v: Option<&Vnode>| v.filter(|v| !v.is_dir()).map_or(0, |v| v.length);
        self.bytes = self.bytes - len(old) + len(new);
    }
}
