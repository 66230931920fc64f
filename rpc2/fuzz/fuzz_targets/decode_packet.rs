//! Hostile datagrams and bodies: no panic anywhere on the receive path.
//!
//! The first input byte picks where the rest goes:
//!
//! 0. `Header::read` (CRC and tag trailers) and `Header::peek`; a header that
//!    parses must write back to the same bytes and agree with `peek`.
//! 1. The body codec, as several types (a value that decodes must encode back to
//!    the same bytes: the encoding is canonical), and `Token::open`.
//! 2. A datagram to a fresh server endpoint.
//! 3. A datagram to a client that has just sent its anonymous bind.
//! 4. A datagram to a client that has just sent an authenticated or encrypted bind.
//! 5. A scripted exchange between a real client and server (bind, call, store,
//!    fetch, a slow call that draws BUSY, close) in which one genuine datagram,
//!    picked by index, is mutated on its way: XORed, overwritten, spliced or
//!    resized, optionally with its length field and CRC made valid again so the
//!    mutation reaches the code behind the checks.
//! 6. A datagram to either side of a pair that completed a clear bind.
//!
//! In the endpoint modes a control byte can make the bytes more plausible: append
//! a valid CRC, make the version and body length consistent, address the
//! connection that exists, send from an unknown address. After every input each
//! endpoint is drained and its timers run, then run again much later.

#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use coda_rpc2::codec::{self, Decode, Encode};
use coda_rpc2::packet::{Header, CRC_BYTES, HEADER_BYTES, TAG_BYTES};
use coda_rpc2::sftp::{Ack, Sink, Source};
use coda_rpc2::{
    Auth, CallId, CellKey, Config, ConnId, Credentials, Endpoint, Event, IncomingId, SideEffect,
    Time, Token,
};
use libfuzzer_sys::fuzz_target;

const T0: Time = coda_rpc2::sim::EPOCH;
const CELL: [u8; 32] = [1; 32];

fn server_addr() -> SocketAddr {
    "10.0.0.1:2432".parse().unwrap()
}

fn client_addr() -> SocketAddr {
    "10.0.0.2:5000".parse().unwrap()
}

fn stranger_addr() -> SocketAddr {
    "10.0.0.3:6000".parse().unwrap()
}

fn server_config() -> Config {
    Config {
        accept_binds: true,
        cell_key: Some(CellKey::from_bytes(CELL)),
        rng_seed: 1,
        ..Default::default()
    }
}

fn client_config() -> Config {
    Config {
        rng_seed: 2,
        ..Default::default()
    }
}

fn credentials() -> Credentials {
    let now = T0.as_micros() / 1_000_000;
    let token = Token {
        user_id: 7,
        session_key: [2; 32],
        issued_at: now,
        expires_at: now + 86_400,
    };
    Credentials {
        sealed_token: token.seal(&CellKey::from_bytes(CELL), [3; 24]),
        session_key: token.session_key,
    }
}

fn auth(kind: u8) -> Auth {
    match kind % 3 {
        0 => Auth::Anonymous,
        1 => Auth::Authenticated(credentials()),
        _ => Auth::Encrypted(credentials()),
    }
}

// ---- pure decoders ----

fn header(data: &[u8]) {
    let peeked = Header::peek(data);
    for trailer in [CRC_BYTES, TAG_BYTES] {
        if let Ok(h) = Header::read(data, trailer) {
            let mut out = [0u8; HEADER_BYTES];
            h.write(&mut out);
            assert_eq!(
                out[..],
                data[..HEADER_BYTES],
                "a header writes back as read"
            );
            assert_eq!(peeked, Ok((h.kind, h.conn)), "peek agrees with read");
        }
    }
}

/// Decodes `data` as `T`; a value that decodes must encode to the same bytes.
fn canonical<T: Decode + Encode>(data: &[u8]) {
    if let Ok(value) = codec::from_bytes::<T>(data) {
        assert_eq!(
            codec::to_bytes(&value)[..],
            data[..],
            "{} decodes from a non-canonical encoding",
            std::any::type_name::<T>()
        );
    }
}

fn bodies(data: &[u8]) {
    canonical::<u64>(data);
    canonical::<i64>(data);
    canonical::<String>(data);
    canonical::<Bytes>(data);
    canonical::<Vec<u32>>(data);
    canonical::<Vec<(u64, u64)>>(data);
    canonical::<Option<[u8; 32]>>(data);
    canonical::<Ack>(data);
    canonical::<Token>(data);
    let _ = Token::open(&CellKey::from_bytes(CELL), data, 0);
    let _ = Token::open(&CellKey::from_bytes(CELL), data, T0.as_micros() / 1_000_000);
}

// ---- endpoint helpers ----

/// Drains every datagram and event of `ep`.
fn drain(ep: &mut Endpoint, now: Time) -> (Vec<(SocketAddr, Vec<u8>)>, Vec<Event>) {
    let mut out = Vec::new();
    let mut buf = Vec::new();
    while let Some(dest) = ep.poll_transmit(now, &mut buf) {
        out.push((dest, std::mem::take(&mut buf)));
        assert!(out.len() < 100_000, "poll_transmit never runs dry");
    }
    let mut events = Vec::new();
    while let Some(e) = ep.poll_event() {
        events.push(e);
    }
    (out, events)
}

/// Runs the timers of a lone endpoint for a while, then once much later.
fn settle(ep: &mut Endpoint, mut now: Time) {
    drain(ep, now);
    for _ in 0..64 {
        let Some(at) = ep.poll_timeout() else { break };
        now = now.max(at);
        ep.handle_timeout(now);
        drain(ep, now);
    }
    now = now + Duration::from_secs(2 * 3600);
    ep.handle_timeout(now);
    drain(ep, now);
    let _ = ep.poll_timeout();
    let _ = ep.stats();
}

const CTL_CRC: u8 = 1;
const CTL_CONN: u8 = 2;
const CTL_STRANGER: u8 = 4;
const CTL_FIX_HEADER: u8 = 8;

/// Makes fuzz bytes into a datagram as `ctl` asks.
fn shape(bytes: &[u8], ctl: u8, conn: Option<u32>) -> Vec<u8> {
    let mut d = bytes.to_vec();
    let crc = ctl & CTL_CRC != 0;
    if ctl & CTL_FIX_HEADER != 0 && d.len() >= HEADER_BYTES {
        d[0] = coda_rpc2::packet::VERSION;
        let trailer = if crc { 0 } else { TAG_BYTES };
        let body = d.len().saturating_sub(HEADER_BYTES + trailer) as u32;
        d[32..36].copy_from_slice(&body.to_le_bytes());
    }
    if let (true, Some(conn)) = (ctl & CTL_CONN != 0, conn) {
        if d.len() >= 8 {
            d[4..8].copy_from_slice(&conn.to_le_bytes());
        }
    }
    if crc {
        let sum = crc32fast::hash(&d);
        d.extend_from_slice(&sum.to_le_bytes());
    }
    d
}

fn from(ctl: u8, peer: SocketAddr) -> SocketAddr {
    if ctl & CTL_STRANGER != 0 {
        stranger_addr()
    } else {
        peer
    }
}

fn fresh_server(data: &[u8]) {
    let Some((&ctl, bytes)) = data.split_first() else {
        return;
    };
    let mut server = Endpoint::new(server_config());
    let mut d = shape(bytes, ctl, None);
    server.handle(T0, from(ctl, client_addr()), &mut d);
    settle(&mut server, T0);
}

fn binding_client(data: &[u8], sealed: bool) {
    let Some((&ctl, bytes)) = data.split_first() else {
        return;
    };
    let mut client = Endpoint::new(client_config());
    let a = if sealed {
        auth(1 + (ctl >> 4) % 2)
    } else {
        Auth::Anonymous
    };
    let conn = client.connect(T0, server_addr(), a);
    drain(&mut client, T0);
    let mut d = shape(bytes, ctl, Some(conn.0));
    let now = T0 + Duration::from_millis(1);
    client.handle(now, from(ctl, server_addr()), &mut d);
    settle(&mut client, now);
}

// ---- a client and a server talking ----

const OP_ECHO: u16 = 1;
const OP_STORE: u16 = 2;
const OP_FETCH: u16 = 3;
const OP_SLOW: u16 = 4;

struct Mutation<'a> {
    /// Index of the delivered datagram to mutate.
    target: usize,
    op: u8,
    edits: &'a [u8],
}

const OP_FIX_LEN: u8 = 4;
const OP_FIX_CRC: u8 = 8;
const OP_ALSO_ORIGINAL: u8 = 16;
const OP_STRANGER: u8 = 32;

impl Mutation<'_> {
    fn apply(&self, d: &mut Vec<u8>) {
        let e = self.edits;
        match self.op & 3 {
            0 | 1 => {
                for edit in e.chunks_exact(3) {
                    if d.is_empty() {
                        break;
                    }
                    let at = usize::from(u16::from_le_bytes([edit[0], edit[1]])) % d.len();
                    if self.op & 3 == 0 {
                        d[at] ^= edit[2];
                    } else {
                        d[at] = edit[2];
                    }
                }
            }
            2 => {
                if let [a, b, rest @ ..] = e {
                    let at = usize::from(u16::from_le_bytes([*a, *b])) % (d.len() + 1);
                    for (i, byte) in rest.iter().enumerate() {
                        match d.get_mut(at + i) {
                            Some(slot) => *slot = *byte,
                            None => d.push(*byte),
                        }
                    }
                }
            }
            _ => {
                if let [a, b, rest @ ..] = e {
                    let len = usize::from(u16::from_le_bytes([*a, *b])) % 2048;
                    let old = d.len();
                    d.resize(len, 0);
                    for (slot, byte) in d.iter_mut().skip(old).zip(rest.iter().cycle()) {
                        *slot = *byte;
                    }
                }
            }
        }
        if self.op & OP_FIX_LEN != 0 && d.len() >= HEADER_BYTES + CRC_BYTES {
            let body = (d.len() - HEADER_BYTES - CRC_BYTES) as u32;
            d[32..36].copy_from_slice(&body.to_le_bytes());
        }
        if self.op & OP_FIX_CRC != 0 && d.len() >= CRC_BYTES {
            let split = d.len() - CRC_BYTES;
            let sum = crc32fast::hash(&d[..split]);
            d[split..].copy_from_slice(&sum.to_le_bytes());
        }
    }
}

struct World<'a> {
    now: Time,
    server: Endpoint,
    client: Endpoint,
    delivered: usize,
    mutation: Option<Mutation<'a>>,
    client_events: Vec<Event>,
    server_conn: Option<ConnId>,
    slow: Option<(IncomingId, Time)>,
}

impl<'a> World<'a> {
    fn new(mutation: Option<Mutation<'a>>) -> Self {
        World {
            now: T0,
            server: Endpoint::new(server_config()),
            client: Endpoint::new(client_config()),
            delivered: 0,
            mutation,
            client_events: Vec::new(),
            server_conn: None,
            slow: None,
        }
    }

    fn deliver(&mut self, to_server: bool, mut d: Vec<u8>) {
        let index = self.delivered;
        self.delivered += 1;
        let (src, ep) = if to_server {
            (client_addr(), &mut self.server)
        } else {
            (server_addr(), &mut self.client)
        };
        match &self.mutation {
            Some(m) if m.target == index => {
                if m.op & OP_ALSO_ORIGINAL != 0 {
                    ep.handle(self.now, src, &mut d.clone());
                }
                m.apply(&mut d);
                let src = if m.op & OP_STRANGER != 0 {
                    stranger_addr()
                } else {
                    src
                };
                ep.handle(self.now, src, &mut d);
            }
            _ => ep.handle(self.now, src, &mut d),
        }
    }

    /// Moves datagrams and reacts to events until both sides are quiet.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let now = self.now;
            let (to_server, client_events) = drain(&mut self.client, now);
            let (to_client, server_events) = drain(&mut self.server, now);
            self.client_events.extend(client_events);
            let mut moved = !to_server.is_empty() || !to_client.is_empty();
            for (dest, d) in to_server {
                if dest == server_addr() {
                    self.deliver(true, d);
                }
            }
            for (dest, d) in to_client {
                if dest == client_addr() {
                    self.deliver(false, d);
                }
            }
            for e in server_events {
                moved = true;
                self.serve(e);
            }
            if let Some((id, at)) = self.slow {
                if at <= self.now {
                    self.slow = None;
                    let _ = self
                        .server
                        .reply(self.now, id, 0, Bytes::from_static(b"slow"));
                    moved = true;
                }
            }
            if !moved {
                return;
            }
            self.now = self.now + Duration::from_micros(200);
        }
    }

    fn serve(&mut self, e: Event) {
        let now = self.now;
        match e {
            Event::Accepted { conn, .. } => self.server_conn = Some(conn),
            Event::Request {
                id, opcode, body, ..
            } => match opcode {
                OP_STORE => {
                    let _ = self.server.sftp_receive(now, id, Sink::memory(1 << 16), 0);
                }
                OP_FETCH => {
                    let data = Bytes::from((0..5000u32).map(|i| i as u8).collect::<Vec<_>>());
                    let _ = self.server.sftp_send(now, id, Source::Memory(data), 0);
                }
                OP_SLOW => self.slow = Some((id, now + Duration::from_millis(50))),
                _ => {
                    let _ = self.server.reply(now, id, 0, body);
                }
            },
            Event::SftpDone { id, result } => {
                let code = u16::from(result.is_err());
                let _ = self
                    .server
                    .reply(now, id, code, Bytes::from_static(b"sftp"));
            }
            _ => {}
        }
    }

    /// Pumps, running timers when quiet, until `done` or nothing is left to do.
    fn run_until(&mut self, mut done: impl FnMut(&[Event]) -> bool) -> bool {
        for _ in 0..200 {
            self.pump();
            if done(&self.client_events) {
                return true;
            }
            let next = [
                self.client.poll_timeout(),
                self.server.poll_timeout(),
                self.slow.map(|(_, at)| at),
            ]
            .into_iter()
            .flatten()
            .min();
            let Some(at) = next else { return false };
            self.now = self.now.max(at);
            self.client.handle_timeout(self.now);
            self.server.handle_timeout(self.now);
        }
        false
    }

    fn call(
        &mut self,
        conn: ConnId,
        op: u16,
        body: &'static [u8],
        side: Option<SideEffect>,
    ) -> bool {
        let Ok(call) = self
            .client
            .call(self.now, conn, 1, op, Bytes::from_static(body), side)
        else {
            return false;
        };
        self.run_until(|events| replied(events, call).is_some())
            && replied(&self.client_events, call) == Some(true)
    }

    fn connect(&mut self, a: Auth) -> Option<ConnId> {
        let conn = self.client.connect(self.now, server_addr(), a);
        let done = |events: &[Event]| {
            events.iter().any(|e| {
                matches!(e, Event::Connected { conn: c } | Event::ConnectFailed { conn: c, .. } if *c == conn)
            })
        };
        self.run_until(done);
        let ok = self
            .client_events
            .iter()
            .any(|e| matches!(e, Event::Connected { conn: c } if *c == conn));
        ok.then_some(conn)
    }

    /// The whole conversation; true if every step succeeded.
    fn script(&mut self, a: Auth) -> bool {
        let Some(conn) = self.connect(a) else {
            return false;
        };
        let mut ok = self.call(conn, OP_ECHO, b"hello", None);
        let store = Bytes::from((0..4000u32).map(|i| (i * 7) as u8).collect::<Vec<_>>());
        let side = SideEffect::Send(Source::Memory(store));
        ok &= self.call(conn, OP_STORE, b"store", Some(side));
        let side = SideEffect::Receive(Sink::memory(1 << 16));
        ok &= self.call(conn, OP_FETCH, b"fetch", Some(side));
        ok &= self.call(conn, OP_SLOW, b"slow", None);
        self.client.close(self.now, conn);
        self.pump();
        ok
    }

    fn finish(mut self) {
        let later = self.now + Duration::from_secs(1);
        settle(&mut self.client, later);
        settle(&mut self.server, later);
    }
}

/// Some(true) once the call succeeded, Some(false) once it failed.
fn replied(events: &[Event], call: CallId) -> Option<bool> {
    events.iter().find_map(|e| match e {
        Event::Reply { call: c, result } if *c == call => {
            Some(matches!(result, Ok(r) if r.code == 0))
        }
        _ => None,
    })
}

/// How many datagrams the unmutated conversation delivers, per auth kind.
fn script_lengths() -> &'static [usize; 3] {
    static LENGTHS: OnceLock<[usize; 3]> = OnceLock::new();
    LENGTHS.get_or_init(|| {
        std::array::from_fn(|kind| {
            let mut w = World::new(None);
            assert!(w.script(auth(kind as u8)), "the unmutated script succeeds");
            w.delivered
        })
    })
}

fn mutated_script(data: &[u8]) {
    let [kind, i0, i1, op, edits @ ..] = data else {
        return;
    };
    let kind = kind % 3;
    let count = script_lengths()[usize::from(kind)];
    let mutation = Mutation {
        target: usize::from(u16::from_le_bytes([*i0, *i1])) % count,
        op: *op,
        edits,
    };
    let mut w = World::new(Some(mutation));
    w.script(auth(kind));
    w.finish();
}

fn bound_pair(data: &[u8]) {
    let Some((&ctl, bytes)) = data.split_first() else {
        return;
    };
    let mut w = World::new(None);
    let Some(client_conn) = w.connect(Auth::Anonymous) else {
        panic!("a clear bind completes");
    };
    let server_conn = w.server_conn.expect("the server accepted").0;
    w.now = w.now + Duration::from_millis(1);
    if ctl & 16 != 0 {
        let mut d = shape(bytes, ctl, Some(client_conn.0));
        w.client.handle(w.now, from(ctl, server_addr()), &mut d);
    } else {
        let mut d = shape(bytes, ctl, Some(server_conn));
        w.server.handle(w.now, from(ctl, client_addr()), &mut d);
    }
    w.pump();
    w.finish();
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 7 {
        0 => header(rest),
        1 => bodies(rest),
        2 => fresh_server(rest),
        3 => binding_client(rest, false),
        4 => binding_client(rest, true),
        5 => mutated_script(rest),
        _ => bound_pair(rest),
    }
});
