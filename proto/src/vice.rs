//! The file server's calls (subsystem [`SUBSYSTEM`]): opcodes, and the
//! request and reply body of each. A reply's code is an [`crate::Errno`];
//! its body is the reply type only when the code is zero.
//!
//! Direct mutations (`CREATE` … `SET_ACL`) carry one [`CmlRecord`] whose op
//! matches the opcode and answer [`MutateReply`]; `REINTEGRATE` carries many:
//! in its body when the encoded [`Reintegrate`] fits one, else with an
//! empty body and the encoded batch sent as the call's side effect.
//!
//! Answers that can outgrow a datagram come as the call's side effect (the
//! caller offers a sink): `FETCH` (file data, symlink target, or a
//! directory's encoded `Vec<DirEntry>`) and `GET_ACL` (the encoded `Acl`).
//! A `SetAcl` too large for a call body goes in a Reintegrate batch.

use coda_rpc2::codec_struct;

use crate::acl::PrincipalId;
use crate::cml::{CmlRecord, Op};
use crate::fid::{Fid, StoreId, VolumeId};
use crate::status::{Status, Timestamp, VnodeKind};

pub const SUBSYSTEM: u16 = 1001;

/// Opcodes.
pub mod op {
    pub const NEW_CONNECT: u16 = 1;
    pub const GET_ROOT_VOLUME: u16 = 2;
    pub const GET_VOLUME_INFO: u16 = 3;
    pub const GET_ATTR: u16 = 4;
    pub const VALIDATE_ATTRS: u16 = 5;
    pub const FETCH: u16 = 6;
    pub const READ_LINK: u16 = 7;
    pub const GET_ACL: u16 = 8;
    pub const ALLOC_FIDS: u16 = 9;
    pub const STAGE: u16 = 10;
    pub const STORE: u16 = 11;
    pub const SET_ATTR: u16 = 12;
    pub const CREATE: u16 = 13;
    pub const REMOVE: u16 = 14;
    pub const LINK: u16 = 15;
    pub const RENAME: u16 = 16;
    pub const MAKE_DIR: u16 = 17;
    pub const REMOVE_DIR: u16 = 18;
    pub const SYMLINK: u16 = 19;
    pub const SET_ACL: u16 = 20;
    pub const REINTEGRATE: u16 = 21;
    pub const GET_STATISTICS: u16 = 22;
    /// Names to ids and ids to names, for ACLs (anyone may ask).
    pub const LOOKUP_PRINCIPALS: u16 = 23;
    /// Replication (`crate::res`): which replicas applied updates.
    pub const COP2: u16 = 24;
    /// Asks for resolution of objects or a volume.
    pub const RESOLVE: u16 = 25;
    /// Servers only: a replica's objects and versions.
    pub const RES_SUMMARY: u16 = 26;
    /// Servers only: objects' states.
    pub const RES_STATE: u16 = 27;
    /// Servers only: installs resolved states.
    pub const RES_INSTALL: u16 = 28;
    /// Servers only: a server's volumes for the SCM, the cell's
    /// configuration back (`crate::update`).
    pub const UPDATE: u16 = 29;
    /// Servers only: make this server's replica of a volume.
    pub const MAKE_REPLICA: u16 = 30;
    /// Settles an object in conflict between replicas (`crate::res::Repair`),
    /// answered with a [`MutateReply`].
    pub const REPAIR: u16 = 31;
    /// An update carrying COP2s (`crate::res::WithCop2`): the COP2 is
    /// applied, then the call within, whose answer is the reply.
    pub const WITH_COP2: u16 = 32;
    /// The objects of a volume marked in conflict between replicas
    /// (`crate::res::Inconsistent`), answered as the call's side effect.
    pub const LIST_INCONSISTENT: u16 = 33;
    /// Servers only: remove this server's replica of a volume the SCM
    /// has removed from the cell.
    pub const REMOVE_REPLICA: u16 = 34;
}

/// The call that carries one record of this kind on its own.
pub fn direct_opcode(op: &Op) -> u16 {
    match op {
        Op::Store(_) => op::STORE,
        Op::SetAttr(_) => op::SET_ATTR,
        Op::Create(_) => op::CREATE,
        Op::Remove(_) => op::REMOVE,
        Op::Link(_) => op::LINK,
        Op::Rename(_) => op::RENAME,
        Op::MakeDir(_) => op::MAKE_DIR,
        Op::RemoveDir(_) => op::REMOVE_DIR,
        Op::SymLink(_) => op::SYMLINK,
        Op::SetAcl(_) => op::SET_ACL,
    }
}

/// Longest name in a directory, in bytes.
pub const NAME_BYTES_MAX: usize = 255;

codec_struct! {
    /// A client introduces itself; the server will break callbacks by
    /// calling back on this connection.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NewConnect {
        /// Stable across the client's restarts: its store ids' host part.
        pub host: u64,
        /// New at each start of the client: connections of the same host
        /// from an earlier incarnation are gone, with their promises.
        pub incarnation: u64,
        pub name: String,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NewConnectReply {
        pub server_time: Timestamp,
    }
}

codec_tags! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub enum VolumeKind {
        ReadWrite = 0,
        ReadOnly = 1,
        Backup = 2,
        Replicated = 3,
    }
}

codec_union! {
    /// A volume by name or by id.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum VolumeRef {
        Name(String) = 1,
        Id(VolumeId) = 2,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct VolumeInfo {
        pub id: VolumeId,
        pub name: String,
        pub kind: VolumeKind,
        /// `ADDR:PORT` of each server (shard) that serves it; a replicated
        /// volume's in version-vector slot order, empty where not known yet.
        pub servers: Vec<String>,
        pub root: Fid,
        /// Bumped by every change in the volume: a client whose stamp still
        /// matches knows its whole cached volume is current.
        pub stamp: u64,
        pub locked: bool,
        pub files: u64,
        pub bytes: u64,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct GetAttr {
        pub fid: Fid,
    }
}

codec_struct! {
    /// Many objects and volumes checked in one call.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ValidateAttrs {
        pub volumes: Vec<(VolumeId, u64)>,
        pub fids: Vec<(Fid, StoreId)>,
    }
}

codec_struct! {
    /// One flag per volume and per fid asked about: still current. A current
    /// answer comes with a fresh callback promise.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ValidateAttrsReply {
        pub volumes: Vec<bool>,
        pub fids: Vec<bool>,
    }
}

codec_struct! {
    /// The object's data, by SFTP from `offset` on: a file's contents, a
    /// symlink's target, or a directory's entries (a `Vec<DirEntry>` body).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Fetch {
        pub fid: Fid,
        pub offset: u64,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
    pub struct DirEntry {
        pub name: String,
        pub fid: Fid,
        /// What the name holds (a mount point is a `Directory`), so a
        /// listing tells programs each entry's type without a call per name.
        pub kind: VnodeKind,
    }
}

codec_struct! {
    /// Sends file data ahead of the record that uses it, by SFTP from
    /// `offset` on: an interrupted upload resumes where it stopped.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Stage {
        pub store_id: StoreId,
        pub length: u64,
        pub offset: u64,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct StageReply {
        /// Bytes held so far.
        pub received: u64,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct AllocFids {
        pub volume: VolumeId,
        pub count: u64,
    }
}

codec_struct! {
    /// Fids `(volume, vnode + i * stride, unique + i * stride)` for `i`
    /// below `count`: each replica of a volume hands out its own class of
    /// numbers (`stride` is the replica count), so fids never clash.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FidRange {
        pub volume: VolumeId,
        pub vnode: u64,
        pub unique: u64,
        pub count: u64,
        pub stride: u64,
    }
}

impl FidRange {
    pub fn fid(&self, i: u64) -> Option<Fid> {
        if i >= self.count {
            return None;
        }
        let step = i.checked_mul(self.stride.max(1))?;
        Some(Fid::new(
            self.volume,
            self.vnode.checked_add(step)?,
            self.unique.checked_add(step)?,
        ))
    }
}

codec_struct! {
    /// The status after the change of every object the record touched.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MutateReply {
        pub statuses: Vec<Status>,
    }
}

codec_struct! {
    /// A batch of records for one volume, applied all or none.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Reintegrate {
        pub volume: VolumeId,
        /// Names the batch: one sent again is recognised and not reapplied.
        pub batch: StoreId,
        pub records: Vec<CmlRecord>,
    }
}

codec_struct! {
    /// A locally created object and the fid the server gave it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FidRemap {
        pub local: Fid,
        pub fid: Fid,
    }
}

codec_struct! {
    /// A batch went in whole. The objects it created from made-up (local)
    /// fids were numbered consecutively from `first_vnode`/`first_unique`
    /// in record order, so the answer stays one small datagram however
    /// large the batch: [`Applied::remaps`] spells the mapping out.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Applied {
        pub volume: VolumeId,
        pub first_vnode: u64,
        pub first_unique: u64,
        pub created: u64,
        /// The volume's version stamp after the batch.
        pub stamp: u64,
        /// Objects whose create the server had applied already (an answer
        /// lost on the way): their fids, outside the numbering above.
        pub found: Vec<FidRemap>,
    }
}

impl Applied {
    /// The real fid of each object `records` created from a local fid.
    pub fn remaps(&self, records: &[CmlRecord]) -> Vec<FidRemap> {
        let mut out: Vec<FidRemap> = Vec::new();
        for r in records {
            let made = match &r.op {
                Op::Create(c) => c.fid,
                Op::MakeDir(m) => m.fid,
                Op::SymLink(s) => s.fid,
                _ => continue,
            };
            if !made.is_local() || out.iter().any(|m| m.local == made) {
                continue;
            }
            if let Some(f) = self.found.iter().find(|f| f.local == made) {
                out.push(*f);
                continue;
            }
            let k = out.iter().filter(|m| !self.found.contains(m)).count() as u64;
            if k >= self.created {
                break;
            }
            out.push(FidRemap {
                local: made,
                fid: Fid::new(self.volume, self.first_vnode + k, self.first_unique + k),
            });
        }
        out
    }
}

codec_struct! {
    /// The first record that could not be applied; none was.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Conflict {
        pub index: u32,
        pub code: u16,
        pub fid: Fid,
    }
}

codec_union! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ReintegrateReply {
        Applied(Applied) = 1,
        Conflict(Conflict) = 2,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct LookupPrincipals {
        pub names: Vec<String>,
        pub ids: Vec<PrincipalId>,
    }
}

codec_struct! {
    /// One answer per name and per id asked about; None for unknown ones.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct Principals {
        pub ids: Vec<Option<PrincipalId>>,
        pub names: Vec<Option<String>>,
    }
}

codec_struct! {
    /// For `cmon`: one shard's counters, and the server process's CPU
    /// time and the free space where the shard keeps its data.
    #[derive(Debug, Clone, PartialEq, Eq, Default)]
    pub struct Statistics {
        /// The shard that answered.
        pub shard: u32,
        pub uptime_secs: u64,
        pub calls_by_opcode: Vec<(u16, u64)>,
        pub bytes_received: u64,
        pub bytes_sent: u64,
        pub clients: u64,
        pub callbacks: u64,
        pub volumes: u64,
        pub rvm_log_used: u64,
        pub rvm_log_bytes: u64,
        pub shards: u32,
        /// CPU time of the whole server process, in milliseconds.
        pub cpu_user_ms: u64,
        pub cpu_system_ms: u64,
        /// The file system under the shard's directory.
        pub disk_bytes: u64,
        pub disk_free_bytes: u64,
        /// Files and bytes in the shard's volumes.
        pub files: u64,
        pub bytes: u64,
        /// What this server's resolver did (the same on every shard).
        pub resolution: crate::res::ResolutionStats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cml::{Create, MakeDir, Store};
    use crate::fid::LOCAL_VNODE_BASE;

    #[test]
    fn remaps_number_local_creations_in_record_order() {
        let local = |n| Fid::new(7, LOCAL_VNODE_BASE + n, n);
        let rec = |op| CmlRecord {
            store_id: StoreId::default(),
            time: Timestamp::default(),
            op,
        };
        let records = vec![
            rec(Op::MakeDir(MakeDir {
                dir: Fid::root(7),
                name: "d".into(),
                fid: local(1),
                mode: 0,
                group: 0,
            })),
            rec(Op::Create(Create {
                dir: local(1),
                name: "f".into(),
                fid: local(2),
                mode: 0,
                group: 0,
            })),
            rec(Op::Store(Store {
                fid: local(2),
                seen: StoreId::default(),
                length: 0,
                content_hash: [0; 32],
            })),
            // A real fid (from AllocFids) takes no number.
            rec(Op::Create(Create {
                dir: Fid::root(7),
                name: "g".into(),
                fid: Fid::new(7, 40, 40),
                mode: 0,
                group: 0,
            })),
            rec(Op::Create(Create {
                dir: Fid::root(7),
                name: "h".into(),
                fid: local(3),
                mode: 0,
                group: 0,
            })),
        ];
        let applied = Applied {
            volume: 7,
            first_vnode: 100,
            first_unique: 500,
            created: 3,
            stamp: 9,
            found: Vec::new(),
        };
        let remaps = applied.remaps(&records);
        assert_eq!(
            remaps.iter().map(|m| (m.local, m.fid)).collect::<Vec<_>>(),
            vec![
                (local(1), Fid::new(7, 100, 500)),
                (local(2), Fid::new(7, 101, 501)),
                (local(3), Fid::new(7, 102, 502)),
            ]
        );
    }
}
