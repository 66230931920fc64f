//! Cached file-system objects: what Venus knows of one fid.

use coda_proto::acl::Rights;
use coda_proto::{Fid, Status, StoreId, VnodeKind};
use coda_rpc2::codec_struct;
use rvm::record::Slot;

use crate::container;

codec_struct! {
    /// An object's persistent part: one RVM record each.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ObjRecord {
        pub fid: Fid,
        /// Its inode number in the mount, stable for as long as the cache lives.
        pub ino: u64,
        pub kind: VnodeKind,
        /// None while the object is known only by a directory entry.
        pub status: Option<Status>,
        /// Its file data, or `container::NONE`.
        pub container: u64,
        /// The version (store id) the cached data (file contents,
        /// directory entries, symlink target) is of, if it is cached.
        pub data: Option<StoreId>,
        pub target: String,
        /// Rights of each principal (a user id; `None` for anyone) as the
        /// server last told them; kept, so a restart need not ask again.
        pub rights: Vec<(Option<i32>, Rights)>,
        /// Its hoard priority (0: not hoarded), from the last walk.
        pub hoard: u32,
    }
}

/// An object in the cache: its record plus what lives only in memory.
#[derive(Debug)]
pub struct FsObj {
    pub rec: ObjRecord,
    pub slot: Option<Slot>,
    /// A callback promise holds (or the object was validated since the last
    /// break); cleared by breaks and at every start.
    pub valid: bool,
    pub last_used: u64,
    /// Open file handles, and how many of them may write.
    pub opens: u32,
    pub writers: u32,
    /// Unlinked while open: dropped at the last release.
    pub orphan: bool,
}

impl FsObj {
    pub fn new(fid: Fid, ino: u64, kind: VnodeKind) -> FsObj {
        FsObj::from_record(
            ObjRecord {
                fid,
                ino,
                kind,
                status: None,
                container: container::NONE,
                data: None,
                target: String::new(),
                rights: Vec::new(),
                hoard: 0,
            },
            None,
        )
    }

    pub fn from_record(rec: ObjRecord, slot: Option<Slot>) -> FsObj {
        FsObj {
            rec,
            slot,
            valid: false,
            last_used: 0,
            opens: 0,
            writers: 0,
            orphan: false,
        }
    }

    pub fn fid(&self) -> Fid {
        self.rec.fid
    }

    /// The cached data is of the version the status names.
    pub fn has_data(&self) -> bool {
        match (&self.rec.status, self.rec.data) {
            (Some(s), Some(d)) => s.vv.store_id == d,
            _ => false,
        }
    }

    /// Takes a status from the server: new rights for `who`, and a new
    /// version leaves the cached data behind (refetched on use). Returns
    /// whether the record changed.
    pub fn take_status(&mut self, status: Status, who: Option<i32>) -> bool {
        let before = self.rec.clone();
        self.set_rights(who, status.my_rights);
        self.set_rights(None, status.any_rights);
        self.rec.kind = status.kind;
        self.rec.status = Some(status);
        self.valid = true;
        self.rec != before
    }

    pub fn rights_of(&self, who: Option<i32>) -> Option<Rights> {
        self.rec.rights.iter().find(|r| r.0 == who).map(|r| r.1)
    }

    fn set_rights(&mut self, who: Option<i32>, rights: Rights) {
        match self.rec.rights.iter_mut().find(|r| r.0 == who) {
            Some(r) => r.1 = rights,
            None => self.rec.rights.push((who, rights)),
        }
    }

    /// Forgets the rights of `who` (of everyone if `None`); returns
    /// whether there were any.
    pub fn forget_rights(&mut self, who: Option<Option<i32>>) -> bool {
        let n = self.rec.rights.len();
        self.rec.rights.retain(|r| who.is_some_and(|w| w != r.0));
        self.rec.rights.len() != n
    }
}
