//! The cell's configuration, kept by its SCM (the first server of
//! `--peers`) and pulled by every other server, as Coda's
//! updatesrv/updateclnt did: the protection database and where every
//! volume's replicas are. No person copies files between servers.
//!
//! A new server joins once with the administrator's password (`JOIN`,
//! which hands it the cell key over the encrypted connection); from then
//! on it calls `UPDATE` as a server, telling the SCM its own volumes and
//! getting the cell's configuration back.

use coda_rpc2::codec_struct;

use crate::acl::PrincipalId;
use crate::fid::VolumeId;
use crate::status::Timestamp;
use crate::vice::VolumeKind;

codec_struct! {
    /// One volume of the cell and where its replicas are.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct VolumeEntry {
        pub id: VolumeId,
        pub name: String,
        pub kind: VolumeKind,
        pub owner: PrincipalId,
        pub created: Timestamp,
        /// The servers holding it, by name, in version-vector slot order.
        pub replicas: Vec<String>,
        /// `ADDR:PORT` of each replica's shard, as its server last said;
        /// empty where it has not said yet (it was down).
        pub addrs: Vec<String>,
    }
}

codec_struct! {
    /// `UPDATE`: the calling server's volumes, each with its own address.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct UpdateRequest {
        pub server: String,
        pub volumes: Vec<VolumeEntry>,
    }
}

codec_struct! {
    /// `UPDATE`'s answer: the cell as the SCM knows it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CellState {
        /// The protection database (`pdb.toml`).
        pub pdb: String,
        pub volumes: Vec<VolumeEntry>,
        /// Volumes removed from the cell: a replica of one still held is
        /// removed, never remade (volume ids are not reused).
        pub removed: Vec<VolumeId>,
    }
}

codec_struct! {
    /// `volutil::op::JOIN` (administrators, encrypted): a new server's
    /// name, and the names its `--peers` gives, in order (which must be
    /// the SCM's: a server's place decides which is the SCM).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Join {
        pub server: String,
        pub peers: Vec<String>,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct JoinReply {
        pub cell_id: [u8; 16],
        pub cell_key: [u8; 32],
    }
}
