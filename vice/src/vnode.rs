//! What a shard keeps in RVM, record by record: its header, volume headers,
//! vnodes, directory entries and the last batch each client reintegrated.
//! Each is one heap record (see [`crate::record`]), encoded with the wire
//! codec, so a format change is a codec change in one place.

use bytes::Bytes;
use coda_proto::acl::{Acl, Rights};
use coda_proto::fid::{Fid, StoreId, VolumeId};
use coda_proto::res::Tombstone;
use coda_proto::status::{Status, Timestamp, VnodeKind, CALLBACK_PROMISED};
use coda_proto::vice::{Applied, VolumeKind};
use coda_proto::vv::VersionVector;
use coda_rpc2::codec_struct;

/// The blake3 hash of no bytes: the content of every empty file.
pub const EMPTY_HASH: [u8; 32] = [
    0xaf, 0x13, 0x49, 0xb9, 0xf5, 0xf9, 0xa1, 0xa6, 0xa0, 0x40, 0x4d, 0xea, 0x36, 0xdc, 0xc9, 0x49,
    0x9b, 0xcb, 0x25, 0xc9, 0xad, 0xc1, 0x12, 0xb7, 0xcc, 0x9a, 0x93, 0xca, 0xe4, 0x1f, 0x32, 0x62,
];

/// Container number of an empty file: no container at all.
pub const NO_CONTAINER: u64 = 0;

codec_struct! {
    /// Root slot 0 of a shard's heap points here.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ShardHeader {
        pub shard: u32,
        pub cell: [u8; 16],
        pub created: Timestamp,
    }
}

codec_struct! {
    /// The header as record kind `Volume` held it, before clones and dumps.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct VolumeHeaderV1 {
        pub id: VolumeId,
        pub name: String,
        pub kind: VolumeKind,
        pub locked: bool,
        /// Replica names, in version-vector slot order; this server is slot 0.
        pub replicas: Vec<String>,
        /// Vnode numbers are never reused, so a fid names one object forever.
        pub next_vnode: u64,
        pub next_unique: u64,
        /// Bumped by every update in the volume: a client whose stamp still
        /// matches may keep everything it cached from the volume.
        pub stamp: u64,
        pub created: Timestamp,
        /// Fid ranges handed out by AllocFids, newest last: a create may use
        /// a real fid only from a range given to its user.
        pub grants: Vec<Grant>,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct VolumeHeader {
        pub id: VolumeId,
        pub name: String,
        pub kind: VolumeKind,
        pub locked: bool,
        /// Replica names, in version-vector slot order; this server is slot 0.
        pub replicas: Vec<String>,
        /// Vnode numbers are never reused, so a fid names one object forever.
        pub next_vnode: u64,
        pub next_unique: u64,
        /// Bumped by every update in the volume: a client whose stamp still
        /// matches may keep everything it cached from the volume.
        pub stamp: u64,
        pub created: Timestamp,
        /// Fid ranges handed out by AllocFids, newest last: a create may use
        /// a real fid only from a range given to its user.
        pub grants: Vec<Grant>,
        /// A clone's source volume; 0 for others.
        pub parent: VolumeId,
        /// This volume's backup clone (`NAME.backup`), kept across
        /// refreshes so mount points of it stay good; 0 if none.
        pub backup: VolumeId,
        /// Being built (clone, restore) or taken apart: never served, and
        /// removed at start-up, so a crash leaves no half volume.
        pub transient: bool,
        /// The dump this volume was restored from, and its stamp then: an
        /// incremental dump applies only over the dump it is based on, to
        /// a volume unchanged since.
        pub restored: Option<(u64, u64)>,
    }
}

impl From<VolumeHeaderV1> for VolumeHeader {
    fn from(h: VolumeHeaderV1) -> VolumeHeader {
        VolumeHeader {
            id: h.id,
            name: h.name,
            kind: h.kind,
            locked: h.locked,
            replicas: h.replicas,
            next_vnode: h.next_vnode,
            next_unique: h.next_unique,
            stamp: h.stamp,
            created: h.created,
            grants: h.grants,
            parent: 0,
            backup: 0,
            transient: false,
            restored: None,
        }
    }
}

codec_struct! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Grant {
        pub user: i32,
        pub vnode: u64,
        pub unique: u64,
        pub count: u64,
    }
}

/// Ranges kept per user, and in all, per volume: older ones lapse.
pub const GRANTS_PER_USER: usize = 16;
pub const GRANTS_MAX: usize = 1024;

impl Grant {
    /// Whether this grant gave `user` the fid (`vnode`, `unique`): the
    /// range's fids are `stride` apart (the replica count: each replica
    /// hands out its own class of numbers).
    pub fn covers(&self, user: i32, vnode: u64, unique: u64, stride: u64) -> bool {
        let stride = stride.max(1);
        self.user == user
            && vnode >= self.vnode
            && (vnode - self.vnode) % stride == 0
            && (vnode - self.vnode) / stride < self.count
            && unique == self.unique + (vnode - self.vnode)
    }
}

codec_struct! {
    /// A vnode as record kind `Vnode` held it, before replication.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct VnodeV1 {
        pub fid: Fid,
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
        pub content_hash: [u8; 32],
        /// Container file number; [`NO_CONTAINER`] for empty files and
        /// for directories and symlinks, whose content is in RVM.
        pub container: u64,
        pub parent: Fid,
        /// Directories only.
        pub acl: Option<Acl>,
        /// Symlinks only.
        pub target: String,
    }
}

codec_struct! {
    /// A vnode as record kind `Vnode2` held it, before small files' bytes
    /// were kept in it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct VnodeV2 {
        pub fid: Fid,
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
        pub content_hash: [u8; 32],
        /// Container file number; [`NO_CONTAINER`] for empty files and
        /// for directories and symlinks, whose content is in RVM.
        pub container: u64,
        pub parent: Fid,
        /// Directories only.
        pub acl: Option<Acl>,
        /// Symlinks only.
        pub target: String,
        /// The store ids of the last updates this version went through,
        /// oldest first (the current one last): a version whose history
        /// holds another's store id descends from it, whatever a lost COP2
        /// left in their vectors.
        pub history: Vec<StoreId>,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Vnode {
        pub fid: Fid,
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
        pub content_hash: [u8; 32],
        /// Container file number; [`NO_CONTAINER`] for empty files, for
        /// files whose bytes are `inline`, and for directories and
        /// symlinks, whose content is in RVM.
        pub container: u64,
        pub parent: Fid,
        /// Directories only.
        pub acl: Option<Acl>,
        /// Symlinks only.
        pub target: String,
        /// The store ids of the last updates this version went through,
        /// oldest first (the current one last): a version whose history
        /// holds another's store id descends from it, whatever a lost COP2
        /// left in their vectors.
        pub history: Vec<StoreId>,
        /// A small file's bytes ([`IN_VNODE_MAX`] at most), kept here: a
        /// store of one costs no container to make and sync, only its
        /// transaction. Empty for every other object.
        pub inline: Bytes,
    }
}

/// Files of at most this many bytes are stored in their vnode (a page:
/// most files people make are smaller, and a vnode record still fits a
/// log write of its own).
pub const IN_VNODE_MAX: u64 = 4096;

/// Updates a vnode remembers (its history): by it resolution tells a
/// version that went on from another's last update (a COP2 lost) from a
/// conflict. Only objects updated this often pay for all of it.
pub const HISTORY_MAX: usize = 16;

impl From<VnodeV1> for VnodeV2 {
    fn from(v: VnodeV1) -> VnodeV2 {
        VnodeV2 {
            fid: v.fid,
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
            history: vec![v.vv.store_id],
            vv: v.vv,
            content_hash: v.content_hash,
            container: v.container,
            parent: v.parent,
            acl: v.acl,
            target: v.target,
        }
    }
}

impl From<VnodeV1> for Vnode {
    fn from(v: VnodeV1) -> Vnode {
        VnodeV2::from(v).into()
    }
}

impl From<VnodeV2> for Vnode {
    fn from(v: VnodeV2) -> Vnode {
        Vnode {
            fid: v.fid,
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
            vv: v.vv,
            content_hash: v.content_hash,
            container: v.container,
            parent: v.parent,
            acl: v.acl,
            target: v.target,
            history: v.history,
            inline: Bytes::new(),
        }
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct EntryRecord {
        pub dir: Fid,
        pub name: String,
        /// A fid in another volume makes this entry a mount point.
        pub fid: Fid,
    }
}

codec_struct! {
    /// A directory's tombstone (replicated volumes only): kept until every
    /// replica saw the removal.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct TombRecord {
        pub dir: Fid,
        pub tomb: Tombstone,
    }
}

codec_struct! {
    /// The last batch a client reintegrated into a volume, with its answer,
    /// so a batch sent again is answered again instead of applied twice.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct AppliedRecord {
        pub volume: VolumeId,
        /// The user who sent it: batch ids are the client's to choose, so
        /// they are only recognised for the user they came from.
        pub user: i32,
        pub host: u64,
        pub batch: StoreId,
        pub reply: Applied,
    }
}

impl Vnode {
    pub fn is_dir(&self) -> bool {
        self.kind == VnodeKind::Directory
    }

    /// The status block as `my_rights`/`any_rights` holders see it.
    pub fn status(&self, my_rights: Rights, any_rights: Rights, promised: bool) -> Status {
        Status {
            fid: self.fid,
            kind: self.kind,
            mode: self.mode,
            owner: self.owner,
            group: self.group,
            author: self.author,
            link_count: self.link_count,
            length: self.length,
            mtime: self.mtime,
            ctime: self.ctime,
            atime: self.atime,
            data_version: self.data_version,
            vv: self.vv.clone(),
            content_hash: self.content_hash,
            parent: self.parent,
            my_rights,
            any_rights,
            callback: if promised { CALLBACK_PROMISED } else { 0 },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_empty_hash_is_blake3_of_nothing() {
        assert_eq!(*blake3::hash(b"").as_bytes(), EMPTY_HASH);
    }
}
