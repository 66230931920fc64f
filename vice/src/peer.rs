//! A server as a client of the other servers of its cell: the update
//! thread's calls to the SCM, the SCM's to the servers it makes replicas
//! on, and the resolver's to every replica. It binds as the server
//! principal, with a token it seals itself under the cell key.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use coda_proto::auth::{self, GetSalt, GetToken, Salt, TokenReply};
use coda_proto::update::{Join, JoinReply};
use coda_proto::{vice, volutil, Errno};
use coda_rpc2::codec::{self, Decode, Encode};
use coda_rpc2::endpoint::{Auth, ConnId, Reply, SideEffect};
use coda_rpc2::udp::ClientThread;
use coda_rpc2::{CellKey, Config, Credentials, Token};

use crate::cell::Peers;
use crate::replica::SERVER_ID;

/// How long a peer may stay silent before a call to it fails.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// A token is sealed again when less than this is left of it.
const RESEAL_SECS: u64 = 3600;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub struct PeerClient {
    ct: ClientThread,
    key: CellKey,
    creds: Mutex<(Credentials, u64)>,
    conns: Mutex<HashMap<SocketAddr, ConnId>>,
}

fn seal(key: &CellKey) -> std::io::Result<(Credentials, u64)> {
    let mut random = [0u8; 56];
    coda_rpc2::udp::getrandom_fill(&mut random)?;
    let now = unix_now();
    let token = Token {
        user_id: SERVER_ID as u32,
        session_key: random[..32].try_into().expect("32 bytes"),
        issued_at: now,
        expires_at: now + auth::TOKEN_LIFETIME_SECS,
    };
    let creds = Credentials {
        sealed_token: token.seal(key, random[32..].try_into().expect("24 bytes")),
        session_key: token.session_key,
    };
    Ok((creds, token.expires_at))
}

fn unreachable(e: coda_rpc2::Error) -> Errno {
    tracing::debug!("peer call: {e}");
    Errno::ETIMEDOUT
}

impl PeerClient {
    pub fn new(key: CellKey) -> std::io::Result<PeerClient> {
        let ct = ClientThread::spawn(
            "0.0.0.0:0".parse().expect("an address"),
            Config {
                peer_timeout: PEER_TIMEOUT,
                ..Config::default()
            },
        )?;
        let creds = seal(&key)?;
        Ok(PeerClient {
            ct,
            key,
            creds: Mutex::new(creds),
            conns: Mutex::new(HashMap::new()),
        })
    }

    fn conn(&self, addr: SocketAddr) -> Result<ConnId, Errno> {
        if let Some(c) = self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
        {
            return Ok(*c);
        }
        let creds = {
            let mut held = self.creds.lock().unwrap_or_else(|p| p.into_inner());
            if held.1 < unix_now() + RESEAL_SECS {
                *held = seal(&self.key).map_err(|_| Errno::EIO)?;
            }
            held.0.clone()
        };
        let conn = self
            .ct
            .connect_blocking(addr, Auth::Encrypted(creds))
            .map_err(unreachable)?;
        self.conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, conn);
        Ok(conn)
    }

    /// A Vice call of the server at `addr`; an error means it could not be
    /// reached (the reply's code is the caller's to read).
    pub fn call(
        &self,
        addr: SocketAddr,
        opcode: u16,
        body: Bytes,
        side_effect: Option<SideEffect>,
    ) -> Result<Reply, Errno> {
        let conn = self.conn(addr)?;
        self.ct
            .call_blocking(conn, vice::SUBSYSTEM, opcode, body, side_effect)
            .map_err(|e| {
                // Bound again on the next call: the peer may have restarted.
                self.conns
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&addr);
                unreachable(e)
            })
    }

    /// A call decoded; a non-zero reply code is the error.
    pub fn call_decode<T: Decode>(
        &self,
        addr: SocketAddr,
        opcode: u16,
        req: &impl Encode,
    ) -> Result<T, Errno> {
        let r = self.call(addr, opcode, codec::to_bytes(req), None)?;
        if r.code != 0 {
            return Err(Errno(r.code));
        }
        codec::from_bytes(&r.body).map_err(|_| Errno::BAD_REQUEST)
    }
}

/// A new server's first contact with the SCM at `scm`: it proves it knows
/// the administrator's password and is handed the cell's id and key.
pub fn join(peers: &Peers, password: &str) -> Result<JoinReply, String> {
    let scm = peers.scm().1;
    let ct = ClientThread::spawn(
        "0.0.0.0:0".parse().expect("an address"),
        Config {
            peer_timeout: PEER_TIMEOUT,
            ..Config::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let unreachable = |e: coda_rpc2::Error| format!("cannot reach the SCM at {scm}: {e}");
    let call = |conn, subsystem, opcode, body: Bytes| -> Result<Bytes, String> {
        let r = ct
            .call_blocking(conn, subsystem, opcode, body, None)
            .map_err(unreachable)?;
        match r.code {
            0 => Ok(r.body),
            c => Err(format!("the SCM at {scm} refused: {}", Errno(c))),
        }
    };
    let bad = |e: codec::DecodeError| format!("the SCM at {scm} answered badly: {e}");
    let conn = ct
        .connect_blocking(scm, Auth::Anonymous)
        .map_err(unreachable)?;
    let user = "admin";
    let req = codec::to_bytes(&GetSalt { user: user.into() });
    let salt: Salt =
        codec::from_bytes(&call(conn, auth::SUBSYSTEM, auth::op::GET_SALT, req)?).map_err(bad)?;
    let key = auth::password_key(password, &salt).map_err(|e| e.to_string())?;
    let time = unix_now();
    let req = codec::to_bytes(&GetToken {
        user: user.into(),
        time,
        proof: auth::proof(&key, user, time),
    });
    let reply: TokenReply =
        codec::from_bytes(&call(conn, auth::SUBSYSTEM, auth::op::GET_TOKEN, req)?).map_err(bad)?;
    let token = auth::open_reply(&key, &reply).map_err(|e| e.to_string())?;
    let creds = Credentials {
        sealed_token: token.sealed_token.to_vec(),
        session_key: token.session_key,
    };
    let conn = ct
        .connect_blocking(scm, Auth::Encrypted(creds))
        .map_err(unreachable)?;
    let req = codec::to_bytes(&Join {
        server: peers.me.clone(),
        peers: peers.names(),
    });
    // A refusal (not silence) is most likely a list that differs.
    let hint = "its --peers must name this server, and list the same servers in the same order";
    let reply = call(conn, volutil::SUBSYSTEM, volutil::op::JOIN, req).map_err(|e| {
        match e.contains(" refused: ") {
            true => format!("{e} ({hint})"),
            false => e,
        }
    })?;
    codec::from_bytes(&reply).map_err(bad)
}
