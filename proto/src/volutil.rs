//! Volume and user administration (subsystem [`SUBSYSTEM`]); every call
//! needs an encrypted connection of a member of `System:Administrators`
//! (`USER_ADD` carries a password).

use coda_rpc2::codec_struct;

use crate::acl::PrincipalId;
use crate::vice::{VolumeInfo, VolumeRef};

pub const SUBSYSTEM: u16 = 1004;

pub mod op {
    pub const CREATE: u16 = 1;
    pub const LIST: u16 = 2;
    pub const INFO: u16 = 3;
    pub const LOCK: u16 = 4;
    pub const UNLOCK: u16 = 5;
    pub const REMOVE: u16 = 6;
    pub const CLONE: u16 = 7;
    pub const BACKUP: u16 = 8;
    pub const DUMP_ESTIMATE: u16 = 9;
    pub const DUMP_BEGIN: u16 = 10;
    pub const DUMP_READ: u16 = 11;
    pub const DUMP_END: u16 = 12;
    pub const RESTORE_BEGIN: u16 = 13;
    pub const RESTORE_WRITE: u16 = 14;
    pub const RESTORE_END: u16 = 15;
    pub const USER_ADD: u16 = 20;
    pub const USER_LIST: u16 = 21;
    pub const GROUP_ADD: u16 = 22;
    pub const GROUP_ADD_MEMBER: u16 = 23;
    pub const GROUP_LIST: u16 = 24;
    /// A new server's first call to the SCM (`crate::update::Join`).
    pub const JOIN: u16 = 25;
}

codec_struct! {
    /// `CREATE`; answered with a `vice::VolumeInfo`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CreateVolume {
        pub name: String,
        /// The servers (by name) holding its replicas, in version-vector
        /// slot order; empty: the server called.
        pub replicas: Vec<String>,
    }
}

codec_struct! {
    /// `INFO`, `LOCK`, `UNLOCK`, `REMOVE`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NameVolume {
        pub volume: VolumeRef,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct UserAdd {
        pub name: String,
        pub password: String,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct User {
        pub name: String,
        pub id: PrincipalId,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct GroupAdd {
        pub name: String,
        pub owner: String,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct GroupAddMember {
        pub group: String,
        /// A user or another group.
        pub member: String,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Group {
        pub name: String,
        pub id: PrincipalId,
        pub owner: String,
        pub members: Vec<String>,
    }
}

codec_struct! {
    /// `CLONE`: a read-only snapshot of `volume` named `name` (by default
    /// `NAME.readonly`); answered with the clone's `VolumeInfo`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CloneVolume {
        pub volume: VolumeRef,
        pub name: Option<String>,
    }
}

codec_struct! {
    /// `DUMP_ESTIMATE`'s answer.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DumpEstimate {
        pub bytes: u64,
    }
}

codec_struct! {
    /// A file of the dump an incremental dump is relative to.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ManifestItem {
        pub vnode: u64,
        pub unique: u64,
        pub hash: [u8; 32],
    }
}

codec_struct! {
    /// `DUMP_BEGIN`, sent to the server that holds the volume. For an
    /// incremental dump, `base` names the earlier dump and the files it
    /// holds (a `Vec<ManifestItem>`, `manifest_bytes` long) come as a side
    /// effect: the server cannot know what an earlier dump held.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DumpBegin {
        pub volume: VolumeRef,
        pub base: Option<u64>,
        pub manifest_bytes: u64,
    }
}

codec_struct! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DumpBegun {
        pub session: u64,
        /// The dump's size, exactly (for progress).
        pub bytes: u64,
    }
}

codec_struct! {
    /// `DUMP_READ`, `DUMP_END` (which also abandons a restore),
    /// `RESTORE_WRITE` (with the dump bytes as a side effect), `RESTORE_END`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Session {
        pub session: u64,
    }
}

codec_struct! {
    /// `DUMP_READ`'s answer; the bytes come as a side effect.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DumpChunk {
        pub bytes: u64,
        pub done: bool,
    }
}

/// Most dump bytes one `DUMP_READ` or `RESTORE_WRITE` carries.
pub const DUMP_CHUNK_MAX: u64 = 8 << 20;

/// Largest incremental-dump manifest.
pub const MANIFEST_BYTES_MAX: u64 = 1 << 30;

codec_struct! {
    /// `RESTORE_BEGIN`: restore a dump as (full) or over (incremental) `name`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RestoreBegin {
        pub name: String,
    }
}

codec_struct! {
    /// Why a dump was refused, and the byte offset where that was found.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Refusal {
        pub offset: u64,
        pub reason: String,
    }
}

codec_union! {
    /// Answer of `RESTORE_BEGIN` (`Accepted(session)`), `RESTORE_WRITE`
    /// (`Accepted(bytes so far)`) and `RESTORE_END` (`Done`). A refused
    /// dump leaves nothing behind.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum RestoreReply {
        Accepted(u64) = 1,
        Refused(Refusal) = 2,
        Done(VolumeInfo) = 3,
    }
}
