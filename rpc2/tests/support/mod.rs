#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use coda_rpc2::endpoint::{Auth, CallId, ConnId, Event, Identity, IncomingId};
use coda_rpc2::packet::Kind;
use coda_rpc2::sim::{NetConfig, NodeId, Sim};
use coda_rpc2::{CellKey, Config, Credentials, Error, Level, Reply, Token};

pub const CELL: [u8; 32] = [0x5a; 32];
pub const ECHO: u16 = 1;
/// Replies after the number of milliseconds in the first 4 body bytes.
pub const SLOW: u16 = 2;

pub fn client_config() -> Config {
    Config {
        peer_timeout: Duration::from_secs(10),
        datagram_bytes: 1472,
        ..Config::default()
    }
}

pub fn server_config() -> Config {
    Config {
        accept_binds: true,
        cell_key: Some(CellKey::from_bytes(CELL)),
        ..client_config()
    }
}

pub fn credentials(user_id: u32, lifetime_secs: u64, cell: [u8; 32]) -> Credentials {
    let now = coda_rpc2::sim::EPOCH.as_micros() / 1_000_000;
    let token = Token {
        user_id,
        session_key: [user_id as u8; 32],
        issued_at: now,
        expires_at: now + lifetime_secs,
    };
    Credentials {
        sealed_token: token.seal(&CellKey::from_bytes(cell), [3; 24]),
        session_key: token.session_key,
    }
}

/// How often the server ran each request, keyed by the request body.
pub type Executions = Rc<RefCell<HashMap<Bytes, u32>>>;

/// A server that echoes bodies (ECHO) or echoes them after a delay (SLOW).
pub fn serve_echo(sim: &mut Sim, server: NodeId) -> Executions {
    let runs: Executions = Default::default();
    let seen = runs.clone();
    sim.set_handler(server, move |ctx, event| match event {
        Event::Request {
            id, opcode, body, ..
        } => {
            *seen.borrow_mut().entry(body.clone()).or_default() += 1;
            if opcode == SLOW {
                let ms = u32::from_le_bytes(body[..4].try_into().unwrap());
                let at = ctx.now + Duration::from_millis(ms.into());
                ctx.at(at, move |ep, now| ep.reply(now, id, 0, body).unwrap());
            } else {
                ctx.endpoint.reply(ctx.now, id, 0, body).unwrap();
            }
            None
        }
        Event::Accepted { .. } => None,
        other => Some(other),
    });
    runs
}

pub fn connect(sim: &mut Sim, client: NodeId, server: NodeId, auth: Auth) -> Result<ConnId, Error> {
    let addr = sim.addr(server);
    let now = sim.now;
    let conn = sim.endpoint(client).connect(now, addr, auth);
    let mut result = None;
    sim.run_until(Duration::from_secs(120), |s| {
        while let Some(e) = s.nodes[client].events.pop_front() {
            match e {
                Event::Connected { conn: c } if c == conn => result = Some(Ok(conn)),
                Event::ConnectFailed { conn: c, error } if c == conn => result = Some(Err(error)),
                other => panic!("unexpected event while connecting: {other:?}"),
            }
        }
        result.is_some()
    });
    result.expect("connect neither succeeded nor failed")
}

/// Runs until every call in `calls` has a result.
pub fn wait_replies(
    sim: &mut Sim,
    client: NodeId,
    calls: &[CallId],
) -> HashMap<CallId, Result<Reply, Error>> {
    let mut results = HashMap::new();
    let done = sim.run_until(Duration::from_secs(3600), |s| {
        while let Some(e) = s.nodes[client].events.pop_front() {
            match e {
                Event::Reply { call, result } => {
                    assert!(
                        results.insert(call, result).is_none(),
                        "two results for {call:?}"
                    );
                }
                Event::Lost { .. } => {}
                other => panic!("unexpected event: {other:?}"),
            }
        }
        calls.iter().all(|c| results.contains_key(c))
    });
    assert!(done, "calls never finished (seed {})", sim.seed);
    results
}

pub fn lossy() -> NetConfig {
    NetConfig {
        loss: 0.3,
        duplicate: 0.1,
        reorder: 0.2,
        ..NetConfig::default()
    }
}

/// What a logging echo server saw: the binds it accepted and every request
/// delivered to it, with the connection and identity it arrived on.
#[derive(Debug, Default)]
pub struct ServerLog {
    pub accepted: Vec<(ConnId, Identity)>,
    pub requests: Vec<(IncomingId, Identity, Bytes)>,
}

/// An echo server (every opcode answered at once) that logs accepted binds
/// and delivered requests.
pub fn serve_echo_logged(sim: &mut Sim, server: NodeId) -> Rc<RefCell<ServerLog>> {
    let log: Rc<RefCell<ServerLog>> = Default::default();
    let seen = log.clone();
    sim.set_handler(server, move |ctx, event| match event {
        Event::Request {
            id, identity, body, ..
        } => {
            seen.borrow_mut()
                .requests
                .push((id, identity, body.clone()));
            ctx.endpoint.reply(ctx.now, id, 0, body).unwrap();
            None
        }
        Event::Accepted { conn, identity, .. } => {
            seen.borrow_mut().accepted.push((conn, identity));
            None
        }
        other => Some(other),
    });
    log
}

/// Advances virtual time by exactly `span`, running everything due in it.
/// `Sim::run_for` may not: it jumps to the next event even past its span
/// (say a server's idle timeout an hour away), and stands still when
/// nothing is pending.
pub fn advance(sim: &mut Sim, span: Duration) {
    let end = sim.now + span;
    sim.at(end, 0, |_, _| {});
    assert!(sim.run_until(span + Duration::from_secs(1), |s| s.now >= end));
    assert_eq!(sim.now, end, "advance overshot");
}

/// Credentials (or none) for a bind at `level`.
pub fn auth(level: Level, user: u32) -> Auth {
    match level {
        Level::Clear => Auth::Anonymous,
        Level::Authenticated => Auth::Authenticated(credentials(user, 3600, CELL)),
        Level::Encrypted => Auth::Encrypted(credentials(user, 3600, CELL)),
    }
}

/// The packet kind of a datagram on the wire, if it has one.
pub fn kind_of(datagram: &[u8]) -> Option<Kind> {
    datagram.get(1).copied().and_then(Kind::from_u8)
}
