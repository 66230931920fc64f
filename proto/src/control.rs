//! The local control channel between the client tools and a running Venus:
//! a Unix stream socket beside the cache, carrying [`Request`]s and
//! [`Reply`]s, each framed as a little-endian `u32` length and a body in
//! the wire codec. Venus learns the caller's uid from the socket itself.
//!
//! After [`Request::Events`] the connection carries a stream of
//! [`Reply::Event`]s until the tool hangs up.

use std::io::{self, Read, Write};

use coda_rpc2::codec::{self, Decode, Encode};
use coda_rpc2::codec_struct;

use crate::fid::{Fid, VolumeId};

/// The longest frame either side accepts.
pub const FRAME_BYTES_MAX: u32 = 16 << 20;

/// The socket's name in the cache directory.
pub const SOCKET_NAME: &str = "venus.sock";

codec_struct! {
    /// What `clog` hands Venus: a token for the calling uid.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct TokenGrant {
        pub user: String,
        pub user_id: i32,
        pub sealed_token: Vec<u8>,
        pub session_key: [u8; 32],
        /// UNIX seconds.
        pub expires_at: u64,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct TokenInfo {
        pub user: String,
        pub user_id: i32,
        pub expires_at: u64,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ServerState {
        pub addr: String,
        pub up: bool,
    }
}

codec_struct! {
    /// One server of a volume, as this client sees it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ReplicaState {
        pub server: String,
        /// It answers (else its part is emulated or left out).
        pub up: bool,
        /// Reads go to it (a replicated volume's preferred replica).
        pub read: bool,
    }
}

codec_struct! {
    /// `cfs listvol`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct VolumeState {
        pub id: VolumeId,
        pub name: String,
        pub servers: Vec<String>,
        /// `connected`, `disconnected`, `write-disconnected`, `reintegrating`.
        pub state: String,
        pub cml_records: u64,
        pub cml_bytes: u64,
        /// The log waits for a token of this local user to be reintegrated.
        pub waits_for_token_of_uid: Option<u32>,
        /// Each server (replica) and its state, in slot order.
        pub replicas: Vec<ReplicaState>,
    }
}

codec_struct! {
    /// One cached object, for `cfs listcache`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct CacheEntry {
        pub fid: Fid,
        /// A path below the mount point, as far as Venus knows it.
        pub path: String,
        pub kind: String,
        pub length: u64,
        /// Its data (a file's contents, a directory's entries) is cached.
        pub has_data: bool,
        /// A callback promise (or a validation since the last break) holds.
        pub valid: bool,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct AclLine {
        pub name: String,
        pub rights: String,
    }
}

codec_struct! {
    /// A directory's access list with names resolved.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NamedAcl {
        pub positive: Vec<AclLine>,
        pub negative: Vec<AclLine>,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct SetAcl {
        pub path: String,
        pub clear: bool,
        pub negative: bool,
        /// Names and rights (`rlidwka`, `all`, `none`, `read`, `write`).
        pub entries: Vec<AclLine>,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct MakeMount {
        pub path: String,
        pub volume: String,
    }
}

codec_struct! {
    /// Something that happened in Venus, for `codacon`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Event {
        /// UNIX seconds.
        pub time: u64,
        /// `connect`, `disconnect`, `reintegrate`, `conflict`, `hoard`, `callback`, `token`, ...
        pub kind: String,
        pub text: String,
    }
}

codec_struct! {
    /// An object in conflict, for `repair list`.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ConflictLine {
        pub path: String,
        pub fid: Fid,
        /// Why the server refused the update (an errno name).
        pub reason: String,
        /// The refused updates, one line each.
        pub records: Vec<String>,
    }
}

codec_struct! {
    /// One version of an object in conflict.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Version {
        pub exists: bool,
        pub kind: String,
        pub length: u64,
        /// UNIX seconds.
        pub mtime: i64,
        pub mode: u32,
        /// BLAKE3 of the contents, hex.
        pub hash: String,
    }
}

/// [`Version::kind`] of a replica `repair show` could not reach (which
/// then does not exist as far as it knows).
pub const UNREACHABLE: &str = "unreachable";

codec_struct! {
    /// `repair show`: both versions; for an object whose replicas
    /// diverged, each replica's too (by server address, in slot order).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ConflictDetail {
        pub conflict: ConflictLine,
        pub local: Version,
        pub server: Version,
        pub replicas: Vec<(String, Version)>,
    }
}

codec_union! {
    /// How `repair` settles a conflict.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Resolution {
        KeepLocal(()) = 1,
        KeepServer(()) = 2,
        /// The server's version keeps the name; the local one is kept
        /// beside it (as `NAME.local`, or `NAME.local.N` if taken).
        KeepBoth(()) = 3,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Repair {
        pub path: String,
        pub resolution: Resolution,
    }
}

codec_struct! {
    /// A hoard database entry (`hoard add`, `a PATH PRIORITY[:d+]`).
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct HoardEntry {
        /// A path in the mount.
        pub path: String,
        /// 1 (least) to 1000 (most).
        pub priority: u32,
        /// Its descendants too (`d`), and those made later (`+`).
        pub children: bool,
        pub future: bool,
    }
}

codec_struct! {
    /// How far a hoard walk is.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct WalkProgress {
        pub done: u64,
        pub total: u64,
        /// Bytes fetched so far.
        pub bytes: u64,
        /// Objects that could not be had (no rights, gone, disconnected).
        pub failed: u64,
        pub finished: bool,
    }
}

codec_union! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Request {
        SetToken(TokenGrant) = 1,
        Tokens(()) = 2,
        Unlog(()) = 3,
        /// The servers Venus was started with (where `clog` logs in).
        Servers(()) = 4,
        CheckServers(()) = 5,
        ListVol(String) = 6,
        GetFid(String) = 7,
        ListCache(Option<String>) = 8,
        FlushObject(Vec<String>) = 9,
        WhereIs(String) = 10,
        ListAcl(String) = 11,
        SetAcl(SetAcl) = 12,
        MakeMount(MakeMount) = 13,
        RemoveMount(String) = 14,
        Events(()) = 15,
        /// `cfs disconnect` / `cfs reconnect`.
        Disconnect(()) = 16,
        Reconnect(()) = 17,
        /// `cfs writedisconnect` / `cfs writereconnect` (and `cfs strong`).
        WriteDisconnect(()) = 18,
        WriteReconnect(()) = 19,
        /// `repair list` / `repair show PATH` / `repair keep-*`.
        ListConflicts(()) = 20,
        ShowConflict(String) = 21,
        Repair(Repair) = 22,
        HoardAdd(HoardEntry) = 23,
        HoardDelete(String) = 24,
        HoardClear(()) = 25,
        HoardList(()) = 26,
        /// Answered by `Reply::Walk` frames, the last one `finished`.
        HoardWalk(()) = 27,
        /// `cfs checkpointml PATH OUT`: answered by `Reply::Data` frames
        /// of a tar archive, then `Reply::Ok`.
        CheckpointMl(String) = 28,
    }
}

codec_union! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Reply {
        Ok(()) = 1,
        /// A one-line reason.
        Error(String) = 2,
        Tokens(Vec<TokenInfo>) = 3,
        Servers(Vec<ServerState>) = 4,
        Volume(VolumeState) = 5,
        Fid(Fid) = 6,
        Cache(Vec<CacheEntry>) = 7,
        WhereIs(Vec<ReplicaState>) = 8,
        Acl(NamedAcl) = 9,
        Event(Event) = 10,
        Conflicts(Vec<ConflictLine>) = 11,
        Conflict(ConflictDetail) = 12,
        /// What a repair did, one line each.
        Repaired(Vec<String>) = 13,
        Hoard(Vec<HoardEntry>) = 14,
        Walk(WalkProgress) = 15,
        Data(Vec<u8>) = 16,
    }
}

/// Writes one frame.
pub fn send(w: &mut impl Write, msg: &impl Encode) -> io::Result<()> {
    let body = codec::to_bytes(msg);
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&body);
    w.write_all(&frame)?;
    w.flush()
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub fn receive<T: Decode>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len);
    if len > FRAME_BYTES_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a control frame of {len} bytes (the limit is {FRAME_BYTES_MAX})"),
        ));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    codec::from_bytes(&body)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_or_garbled_ones_are_refused() {
        let mut buf = Vec::new();
        let req = Request::ListCache(Some("/coda/x".into()));
        send(&mut buf, &req).unwrap();
        send(&mut buf, &Reply::Error("no".into())).unwrap();
        let mut r = &buf[..];
        assert_eq!(receive::<Request>(&mut r).unwrap(), Some(req));
        assert_eq!(
            receive::<Reply>(&mut r).unwrap(),
            Some(Reply::Error("no".into()))
        );
        assert_eq!(receive::<Reply>(&mut r).unwrap(), None);
        let huge = (FRAME_BYTES_MAX + 1).to_le_bytes();
        assert!(receive::<Reply>(&mut &huge[..]).is_err());
        let garbled = [1u8, 0, 0, 0, 99];
        assert!(receive::<Reply>(&mut &garbled[..]).is_err());
    }
}
