//! The Vice, callback and auth interfaces: what Venus, Vice and the tools
//! say to each other, and the body codec of every request and reply
//! (`coda_rpc2::codec`). No I/O here.
//!
//! - [`fid`]: file ids and store ids.
//! - [`vv`]: version vectors.
//! - [`acl`]: rights (`rlidwka`) and access lists.
//! - [`errno`]: the reply codes, POSIX errno values plus Coda's own.
//! - [`status`]: an object's status block.
//! - [`cml`]: client modification log records, as reintegrated.
//! - [`vice`]: the file server's calls.
//! - [`callback`]: the calls a server makes of its clients.
//! - [`control`]: the local channel between the tools and Venus.
//! - [`auth`]: tokens for a user's password.
//! - [`volutil`]: volume and user administration.
//! - [`dump`]: the volume dump format.
//! - [`res`]: server replication: COP2, resolution.
//! - [`update`]: the cell's configuration, from the SCM to every server.

#[macro_use]
mod union;

pub mod acl;
pub mod auth;
pub mod callback;
pub mod cml;
pub mod control;
pub mod dump;
pub mod errno;
pub mod fid;
pub mod res;
pub mod status;
pub mod update;
pub mod vice;
pub mod volutil;
pub mod vv;

pub use acl::{Acl, Rights};
pub use errno::Errno;
pub use fid::{Fid, StoreId, VolumeId};
pub use status::{Status, Timestamp, VnodeKind};
pub use vv::{VersionVector, VvOrder};
