//! Client modification log records as they travel in a Reintegrate batch.
//!
//! Each record names the versions its client last saw, so the server can
//! tell an update made in ignorance of another from one made on top of it:
//! files by the store id of their last update (`seen`), directories per
//! name (an insert needs the name free, a remove needs it still bound to the
//! same object), so changes to distinct names never conflict.

use coda_rpc2::codec_struct;

use crate::acl::Acl;
use crate::fid::{Fid, StoreId};
use crate::status::Timestamp;

codec_struct! {
    /// New contents for a file. The data was staged on the server under the
    /// record's store id before the batch was sent.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Store {
        pub fid: Fid,
        pub seen: StoreId,
        pub length: u64,
        pub content_hash: [u8; 32],
    }
}

codec_struct! {
    /// Changes of status; a length truncates or extends.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SetAttr {
        pub fid: Fid,
        pub seen: StoreId,
        pub mode: Option<u32>,
        pub owner: Option<u32>,
        pub group: Option<u32>,
        pub mtime: Option<Timestamp>,
        pub atime: Option<Timestamp>,
        pub length: Option<u64>,
    }
}

codec_struct! {
    /// A new empty file. `fid` may be local (see `Fid::is_local`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Create {
        pub dir: Fid,
        pub name: String,
        pub fid: Fid,
        pub mode: u32,
        /// The creator's group (a local POSIX gid).
        pub group: u32,
    }
}

codec_struct! {
    /// Unbinds `name`, which must still name `fid` as last `seen`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Remove {
        pub dir: Fid,
        pub name: String,
        pub fid: Fid,
        pub seen: StoreId,
    }
}

codec_struct! {
    /// A second name for a file in the same volume.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Link {
        pub dir: Fid,
        pub name: String,
        pub fid: Fid,
    }
}

codec_struct! {
    /// Moves `fid` from one name to another in the same volume; `replaced`
    /// is what the target name held, if anything, as the client saw it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Rename {
        pub from_dir: Fid,
        pub from_name: String,
        pub to_dir: Fid,
        pub to_name: String,
        pub fid: Fid,
        pub replaced: Option<Fid>,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MakeDir {
        pub dir: Fid,
        pub name: String,
        pub fid: Fid,
        pub mode: u32,
        /// The creator's group (a local POSIX gid).
        pub group: u32,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RemoveDir {
        pub dir: Fid,
        pub name: String,
        pub fid: Fid,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SymLink {
        pub dir: Fid,
        pub name: String,
        pub fid: Fid,
        pub target: String,
        pub mode: u32,
        /// The creator's group (a local POSIX gid).
        pub group: u32,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SetAcl {
        pub dir: Fid,
        pub acl: Acl,
    }
}

codec_union! {
    /// What a record does (Coda's CML opcodes, minus the ones subsumed:
    /// Truncate, Utimes, Chmod and Chown are all `SetAttr`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Op {
        Store(Store) = 1,
        SetAttr(SetAttr) = 2,
        Create(Create) = 3,
        Remove(Remove) = 4,
        Link(Link) = 5,
        Rename(Rename) = 6,
        MakeDir(MakeDir) = 7,
        RemoveDir(RemoveDir) = 8,
        SymLink(SymLink) = 9,
        SetAcl(SetAcl) = 10,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CmlRecord {
        /// Names this mutation; becomes the store id of what it changes.
        pub store_id: StoreId,
        /// When the client made the change: the new mtime of what it touches.
        pub time: Timestamp,
        pub op: Op,
    }
}

impl Op {
    /// The volume a record changes (a rename's source directory's).
    pub fn volume(&self) -> crate::fid::VolumeId {
        match self {
            Op::Store(r) => r.fid.volume,
            Op::SetAttr(r) => r.fid.volume,
            Op::Create(r) => r.dir.volume,
            Op::Remove(r) => r.dir.volume,
            Op::Link(r) => r.dir.volume,
            Op::Rename(r) => r.from_dir.volume,
            Op::MakeDir(r) => r.dir.volume,
            Op::RemoveDir(r) => r.dir.volume,
            Op::SymLink(r) => r.dir.volume,
            Op::SetAcl(r) => r.dir.volume,
        }
    }

    /// The objects a record changes, for locking and callbacks.
    pub fn fids(&self) -> Vec<Fid> {
        match self {
            Op::Store(r) => vec![r.fid],
            Op::SetAttr(r) => vec![r.fid],
            Op::Create(r) => vec![r.dir, r.fid],
            Op::Remove(r) => vec![r.dir, r.fid],
            Op::Link(r) => vec![r.dir, r.fid],
            Op::Rename(r) => {
                let mut v = vec![r.from_dir, r.to_dir, r.fid];
                v.extend(r.replaced);
                v
            }
            Op::MakeDir(r) => vec![r.dir, r.fid],
            Op::RemoveDir(r) => vec![r.dir, r.fid],
            Op::SymLink(r) => vec![r.dir, r.fid],
            Op::SetAcl(r) => vec![r.dir],
        }
    }

    /// Renames the objects a record names (local fids the server gave real
    /// ones, at reintegration).
    pub fn map_fids(&mut self, mut f: impl FnMut(Fid) -> Fid) {
        match self {
            Op::Store(r) => r.fid = f(r.fid),
            Op::SetAttr(r) => r.fid = f(r.fid),
            Op::Create(r) => (r.dir, r.fid) = (f(r.dir), f(r.fid)),
            Op::Remove(r) => (r.dir, r.fid) = (f(r.dir), f(r.fid)),
            Op::Link(r) => (r.dir, r.fid) = (f(r.dir), f(r.fid)),
            Op::Rename(r) => {
                (r.from_dir, r.to_dir, r.fid) = (f(r.from_dir), f(r.to_dir), f(r.fid));
                r.replaced = r.replaced.map(&mut f);
            }
            Op::MakeDir(r) => (r.dir, r.fid) = (f(r.dir), f(r.fid)),
            Op::RemoveDir(r) => (r.dir, r.fid) = (f(r.dir), f(r.fid)),
            Op::SymLink(r) => (r.dir, r.fid) = (f(r.dir), f(r.fid)),
            Op::SetAcl(r) => r.dir = f(r.dir),
        }
    }

    /// The version a record names as last seen of `fid`, if it names one.
    pub fn seen_mut(&mut self, fid: Fid) -> Option<&mut StoreId> {
        match self {
            Op::Store(r) if r.fid == fid => Some(&mut r.seen),
            Op::SetAttr(r) if r.fid == fid => Some(&mut r.seen),
            Op::Remove(r) if r.fid == fid => Some(&mut r.seen),
            _ => None,
        }
    }
}
