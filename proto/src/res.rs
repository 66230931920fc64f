//! Server replication: the second phase of an update (COP2), resolution
//! requests, and the calls one replica's resolver makes of the others
//! (subsystem [`crate::vice::SUBSYSTEM`], opcodes in [`crate::vice::op`]).
//!
//! A replicated volume has one id on every server of its group (VSG); each
//! replica counts the updates it applies in its own slot of an object's
//! version vector (COP1), and adds the others' counts when a client tells it
//! which replicas applied the update too (COP2). Replicas whose vectors
//! differ are brought together by a resolver: it reads every reachable
//! replica's summary (each object's vector) and the state of the objects
//! that differ, computes the merged state, and installs it where it is
//! missing. Directories merge name by name, helped by their tombstones (the
//! names removed since every replica last agreed); an object changed on both
//! sides of a partition is marked inconsistent for `repair`.

use bytes::Bytes;
use coda_rpc2::codec_struct;

use crate::acl::Acl;
use crate::fid::{Fid, StoreId, VolumeId};
use crate::status::{Status, VnodeKind};
use crate::vv::VersionVector;

codec_struct! {
    /// One update and the replicas (version-vector slots) that applied it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Cop2Entry {
        pub store_id: StoreId,
        pub slots: Vec<u32>,
    }
}

codec_struct! {
    /// `COP2`: updates of `volume` and who applied them.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Cop2 {
        pub volume: VolumeId,
        pub updates: Vec<Cop2Entry>,
    }
}

codec_struct! {
    /// `WITH_COP2`: COP2s piggy-backed on another call to the same
    /// replicas (`opcode`, with `body`: an update).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct WithCop2 {
        pub cop2: Cop2,
        pub opcode: u16,
        pub body: Bytes,
    }
}

codec_struct! {
    /// One object of a `LIST_INCONSISTENT` answer (asked with the
    /// volume's id): in conflict between replicas, at `path` (names from
    /// the volume's root).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Inconsistent {
        pub fid: Fid,
        pub path: Vec<String>,
    }
}

codec_struct! {
    /// `RESOLVE`: asks a replica to bring the volume's replicas together,
    /// for these objects (none: the whole volume). Answered at once; the
    /// work goes on in the background.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Resolve {
        pub volume: VolumeId,
        pub fids: Vec<Fid>,
    }
}

codec_struct! {
    /// `REPAIR`: settles an object the replicas hold in different versions
    /// (marked inconsistent). `record` is the version to keep: a `Store`
    /// (its data staged under its store id) for a file, an empty `SetAttr`
    /// for anything else. Each replica takes it over whatever it holds,
    /// its vector raised to `base` (every replica's, joined) before the
    /// update is counted, and the mark cleared; COP2 then makes the
    /// replicas' vectors equal.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Repair {
        pub base: VersionVector,
        pub record: crate::cml::CmlRecord,
    }
}

codec_struct! {
    /// One object's version, as `RES_SUMMARY` lists them.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SummaryEntry {
        pub fid: Fid,
        pub vv: VersionVector,
    }
}

codec_struct! {
    /// `RES_SUMMARY` (servers only): every object of a replica and its
    /// version vector, as the call's side effect (a `Vec<SummaryEntry>`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SummaryRequest {
        pub volume: VolumeId,
    }
}

codec_struct! {
    /// A name removed from a directory: kept until every replica saw the
    /// removal, so a merge tells "removed here" from "made there".
    #[derive(Debug, Clone, PartialEq, Eq, Hash)]
    pub struct Tombstone {
        pub name: String,
        pub fid: Fid,
        /// The update that removed it.
        pub store_id: StoreId,
        /// The object's version when it was removed: a later update of it
        /// elsewhere keeps it (an update beats a concurrent removal).
        pub vv: VersionVector,
        /// Its last updates' store ids, oldest first.
        pub history: Vec<StoreId>,
    }
}

codec_struct! {
    /// A directory entry as resolution sees it.
    #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct Binding {
        pub name: String,
        pub fid: Fid,
        /// What the name holds (a mount point is a directory).
        pub kind: VnodeKind,
    }
}

codec_struct! {
    /// Everything one replica holds of an object.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ObjectState {
        pub status: Status,
        /// Directories only.
        pub acl: Option<Acl>,
        /// Symlinks only.
        pub target: String,
        /// Directories only, by name.
        pub entries: Vec<Binding>,
        pub tombstones: Vec<Tombstone>,
        /// The store ids of its last updates, oldest first.
        pub history: Vec<StoreId>,
        /// A small file's contents, when asked for (see
        /// [`StateRequest::inline_max`]); None: fetch them.
        pub data: Option<Bytes>,
    }
}

codec_struct! {
    /// `RES_STATE` (servers only): the state of these objects, as the
    /// call's side effect (a `Vec<Option<ObjectState>>`, None for an object
    /// this replica lacks).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct StateRequest {
        pub volume: VolumeId,
        pub fids: Vec<Fid>,
        /// Files up to this long come with their contents, while the reply
        /// carries at most [`INLINE_REPLY_MAX`] bytes of them (0: none).
        pub inline_max: u64,
    }
}

codec_struct! {
    /// One object as resolution leaves it on a replica.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct InstallObject {
        /// The version the replica had when it was read (None: it had no
        /// such object); another one means it changed since, and the
        /// install is refused with `EAGAIN`.
        pub expect: Option<VersionVector>,
        /// The object's new status (its rights and promise are ignored).
        pub status: Status,
        pub acl: Option<Acl>,
        pub target: String,
        pub history: Vec<StoreId>,
        /// A directory's new entries (None: unchanged).
        pub entries: Option<Vec<Binding>>,
        /// Drop the directory's tombstones: every replica saw them.
        pub clear_tombstones: bool,
        /// Tombstones the directory takes (a merge some replica missed:
        /// it must learn the removals the others saw, or its next merge
        /// with one that still has the names brings them back).
        pub tombstones: Vec<Tombstone>,
        /// A file's new contents (None: the replica's contents already
        /// have the status's hash).
        pub data: Option<Contents>,
    }
}

codec_union! {
    /// Where an installed file's new contents are.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Contents {
        /// Staged under this store id beforehand (large files).
        Staged(StoreId) = 1,
        /// Here (small files: no round trip of their own).
        Inline(Bytes) = 2,
    }
}

/// Most bytes of file contents one `RES_STATE` reply carries.
pub const INLINE_REPLY_MAX: u64 = 8 << 20;

/// Most bytes of file contents one `RES_INSTALL` carries.
pub const INLINE_INSTALL_MAX: u64 = 16 << 20;

codec_struct! {
    /// `RES_INSTALL` (servers only): applied in one transaction, all or none.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Install {
        pub volume: VolumeId,
        pub objects: Vec<InstallObject>,
        /// Objects no version keeps, and the version each had when read.
        pub removals: Vec<(Fid, VersionVector)>,
    }
}

codec_struct! {
    /// What a replica says of its resolution work, for `cmon`.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct ResolutionStats {
        /// Resolutions run by this server as coordinator.
        pub runs: u64,
        /// Objects installed on replicas by them.
        pub objects: u64,
        /// Objects found in conflict.
        pub conflicts: u64,
        /// Resolutions waiting to run.
        pub pending: u64,
    }
}
