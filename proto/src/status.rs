//! An object's status block, as every reply that names an object carries it.

use coda_rpc2::codec_struct;

use crate::acl::Rights;
use crate::fid::Fid;
use crate::vv::VersionVector;

codec_tags! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub enum VnodeKind {
        File = 1,
        Directory = 2,
        Symlink = 3,
    }
}

codec_struct! {
    /// Seconds and nanoseconds since the UNIX epoch.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
    pub struct Timestamp {
        pub secs: i64,
        pub nanos: u32,
    }
}

impl Timestamp {
    pub fn now() -> Timestamp {
        let d = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp {
            secs: d.as_secs() as i64,
            nanos: d.subsec_nanos(),
        }
    }
}

/// The caller holds a callback promise on the object with this status.
pub const CALLBACK_PROMISED: u8 = 1;

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    pub struct Status {
        pub fid: Fid,
        pub kind: VnodeKind,
        /// Permission bits (the owner's matter for files; directories go by ACL).
        pub mode: u32,
        pub owner: u32,
        /// The group owner: a local (POSIX) group id the clients keep for
        /// their users; Coda's rights never depend on it.
        pub group: u32,
        /// Who made the last change.
        pub author: u32,
        pub link_count: u32,
        pub length: u64,
        pub mtime: Timestamp,
        pub ctime: Timestamp,
        /// Set only by an explicit utimes (reads do not move it).
        pub atime: Timestamp,
        /// Bumped by every change of the data.
        pub data_version: u64,
        pub vv: VersionVector,
        /// BLAKE3 of the contents (files and symlinks), so equal versions are
        /// recognised without comparing bytes.
        pub content_hash: [u8; 32],
        /// The directory holding it; for a volume root, itself.
        pub parent: Fid,
        /// The caller's rights, and those of anyone (`System:AnyUser`).
        pub my_rights: Rights,
        pub any_rights: Rights,
        pub callback: u8,
    }
}
