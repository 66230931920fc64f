//! Volumes as Venus sees them: where each is served, and whether its
//! version stamp can vouch for everything cached from it.

use std::net::SocketAddr;

use coda_proto::vice::VolumeInfo;
use coda_proto::Errno;

/// A stamp no server hands out: the cached volume must be validated
/// object by object.
pub const UNTRUSTED: u64 = u64::MAX;

/// The server (shard) to call for a volume.
pub fn server(info: &VolumeInfo) -> Result<SocketAddr, Errno> {
    info.servers
        .first()
        .and_then(|s| s.parse().ok())
        .ok_or(Errno::NO_SUCH_VOLUME)
}

/// What `cfs listvol` shows of a volume's kind.
pub fn kind_name(info: &VolumeInfo) -> &'static str {
    use coda_proto::vice::VolumeKind::*;
    match info.kind {
        ReadWrite => "read-write",
        ReadOnly => "read-only",
        Backup => "backup",
        Replicated => "replicated",
    }
}
