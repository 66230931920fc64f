//! Vice, Coda's file server: volumes of vnodes and directories in RVM,
//! file data in container files, served over RPC2 one shard per core.
//!
//! - [`record`], [`vnode`], [`volume`], [`shard`]: what is kept and how.
//! - [`container`]: file data.
//! - [`clone`]: volumes made and removed whole (clones, backups, restores).
//! - [`dump`], [`restore`]: volume dumps taken and restored.
//! - [`fileops`]: the semantics of every update, rights and conflicts.
//! - [`callback`]: promises to clients and breaking them.
//! - [`pdb`], [`cell`]: users and groups; what shards share.
//! - [`replica`], [`resolve`]: server replication: COP2, a replica's side
//!   of resolution, and the resolver that brings replicas together.
//! - [`peer`], [`update`], [`resolver`]: a server among others: its calls
//!   to them, the cell's configuration pulled from the SCM, and the thread
//!   that resolves replicated volumes.
//! - [`service`]: the RPC service, sans I/O.

pub mod admin;
pub mod callback;
pub mod cell;
pub mod clone;
pub mod container;
pub mod dump;
pub mod fileops;
pub mod fsck;
pub mod pdb;
pub mod peer;
pub mod record;
pub mod replica;
pub mod resolve;
pub mod resolver;
pub mod restore;
pub mod server;
pub mod service;
pub mod shard;
pub mod sim;
pub mod update;
pub mod vnode;
pub mod volume;

/// Volume names: letters, digits and `._-`, up to 64 bytes.
pub fn volume_name_ok(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "bad volume name {name:?}: letters, digits and ._- only"
        ))
    }
}
