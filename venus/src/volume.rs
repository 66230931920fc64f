//! Volumes as Venus sees them: where each is served, and whether its
//! version stamp can vouch for everything cached from it.

use std::net::SocketAddr;

use coda_proto::vice::VolumeInfo;
use coda_proto::Errno;

/// A stamp no server hands out: the cached volume must be validated
/// object by object.
pub const UNTRUSTED: u64 = u64::MAX;

/// The server (shard) to call for a volume: its first replica's.
pub fn server(info: &VolumeInfo) -> Result<SocketAddr, Errno> {
    replicas(info)
        .first()
        .map(|(_, a)| *a)
        .ok_or(Errno::NO_SUCH_VOLUME)
}

/// Each replica's server and its version-vector slot (one whose address
/// the cell does not know yet is left out).
pub fn replicas(info: &VolumeInfo) -> Vec<(u32, SocketAddr)> {
    info.servers
        .iter()
        .enumerate()
        .filter_map(|(slot, s)| Some((slot as u32, s.parse().ok()?)))
        .collect()
}

/// Whether updates go to several replicas.
pub fn replicated(info: &VolumeInfo) -> bool {
    info.kind == coda_proto::vice::VolumeKind::Replicated && info.servers.len() > 1
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

/// What Venus does with a volume's updates (Coda's volume states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Connected: updates go to the server as they are made.
    Hoarding,
    /// Disconnected: updates are made in the cache and logged.
    Emulating,
    /// Connected, updates logged and reintegrated in the background.
    WriteDisconnected,
    /// The log is being sent.
    Reintegrating,
}

impl State {
    /// The name `cfs listvol` and `codacon` use.
    pub fn name(self) -> &'static str {
        match self {
            State::Hoarding => "connected",
            State::Emulating => "disconnected",
            State::WriteDisconnected => "write-disconnected",
            State::Reintegrating => "reintegrating",
        }
    }
}
