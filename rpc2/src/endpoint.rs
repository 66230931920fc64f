//! The sans-IO endpoint: every connection, call and transfer of one UDP
//! address, as state machines. Drivers feed it `(now, datagram)` and time,
//! and drain, in this order after every input: `poll_transmit` until None,
//! then `poll_event`, then `poll_timeout`. It reads no clock and touches no
//! socket; randomness comes from `Config::rng_seed`.
//!
//! Either side of a bound connection may call the other: a client binds,
//! and the server breaks callbacks over the same connection.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

use crate::codec::{self, Encode, Writer};
use crate::config::{Config, CALLS_WINDOW_MAX, HALF_OPEN_MAX};
use crate::packet::{flags, Header, Kind, CRC_BYTES, HEADER_BYTES};
use crate::rtt::RttEstimator;
use crate::secure::{self, Credentials, Keys, Level, ReplayWindow, Token, TokenError, Transcript};
use crate::sftp::{Ack, Receiver, Sender, Sink, Source};
use crate::stats::{Drop, Stats};
use crate::time::Time;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u32);

/// A call this endpoint made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId {
    pub conn: ConnId,
    pub seq: u64,
}

/// A call this endpoint received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IncomingId {
    pub conn: ConnId,
    pub seq: u64,
}

/// Who is at the other end of a connection, as its bind proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// None for an anonymous (clear) connection: System:AnyUser.
    pub user_id: Option<u32>,
    pub level: Level,
}

/// How a client binds.
#[derive(Debug, Clone)]
pub enum Auth {
    Anonymous,
    Authenticated(Credentials),
    Encrypted(Credentials),
}

/// Why a server refused a bind (sent in the reject packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reject {
    NotAccepting = 1,
    LevelRefused = 2,
    ForgedToken = 3,
    ExpiredToken = 4,
    Overload = 5,
}

impl Reject {
    fn from_u8(value: u8) -> Option<Reject> {
        Some(match value {
            1 => Reject::NotAccepting,
            2 => Reject::LevelRefused,
            3 => Reject::ForgedToken,
            4 => Reject::ExpiredToken,
            5 => Reject::Overload,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("the peer did not answer in time")]
    Timeout,
    #[error("the peer ran the call but no longer holds its reply")]
    ReplyLost,
    #[error("the peer no longer knows this connection")]
    Unbound,
    #[error("the peer refused the bind: {0:?}")]
    Rejected(Reject),
    #[error("no such connection")]
    NoConnection,
    #[error("the connection is not bound")]
    NotBound,
    #[error("too many calls outstanding on this connection")]
    TooManyCalls,
    #[error("a body of {0} bytes does not fit one datagram")]
    BodyTooLarge(usize),
    #[error("no such call, or it has no transfer")]
    NoCall,
    #[error("the side-effect transfer was aborted by the peer")]
    Aborted,
    #[error("the call's side-effect transfer is over; it cannot run again")]
    TransferOver,
    #[error("side-effect I/O failed: {message}")]
    Io {
        kind: io::ErrorKind,
        message: String,
    },
    #[error("the connection was closed")]
    Closed,
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error::Io {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// The data that goes with a call.
#[derive(Debug)]
pub enum SideEffect {
    /// A store: the callee pulls this from the offset it chooses.
    Send(Source),
    /// A fetch: the callee pushes data into this.
    Receive(Sink),
}

#[derive(Debug)]
pub struct Reply {
    pub code: u16,
    pub body: Bytes,
    /// The sink of a `SideEffect::Receive`, with what arrived.
    pub sink: Option<Sink>,
    /// Side-effect bytes that arrived (a fetch) or were acknowledged (a store).
    pub sftp_bytes: u64,
}

#[derive(Debug)]
pub struct SftpOutcome {
    pub bytes: u64,
    /// The sink of a pull, with what arrived.
    pub sink: Option<Sink>,
}

#[derive(Debug)]
pub enum Event {
    Connected {
        conn: ConnId,
    },
    ConnectFailed {
        conn: ConnId,
        error: Error,
    },
    Accepted {
        conn: ConnId,
        peer: SocketAddr,
        identity: Identity,
    },
    Request {
        id: IncomingId,
        identity: Identity,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
    },
    Reply {
        call: CallId,
        result: Result<Reply, Error>,
    },
    SftpDone {
        id: IncomingId,
        result: Result<SftpOutcome, Error>,
    },
    /// The connection is gone; its calls have failed with this error.
    Lost {
        conn: ConnId,
        error: Error,
    },
}

crate::codec_struct! {
    struct BindInit {
        client_conn: u32,
        level: u8,
        nonce: [u8; 32],
        token: Bytes,
    }
}

crate::codec_struct! {
    struct BindChallenge {
        server_conn: u32,
        nonce: [u8; 32],
        proof: [u8; 32],
    }
}

/// What a side-effect slot of a call holds.
#[derive(Debug)]
enum Side {
    None,
    /// A store's data, waiting for the callee to ask for it.
    Source(Source),
    Sending(Sender),
    /// A fetch's sink, before data arrives.
    Sink(Sink),
    Receiving(Receiver),
    /// The callee pulls: it repeats its start packet until data flows.
    Pulling {
        receiver: Receiver,
        offset: u64,
        start_sent_at: Option<Time>,
        retries: u32,
    },
    /// The transfer is over (done, failed or aborted).
    Finished(u64),
    /// A store's data that came inside its request: a pull takes it from
    /// here, with no packet sent.
    Piggy(Bytes),
}

#[derive(Debug)]
struct OutCall {
    subsystem: u16,
    opcode: u16,
    body: Bytes,
    /// `flags::PIGGY` if the body carries the side effect's data.
    flags: u16,
    sent_at: Time,
    retries: u32,
    /// The callee is known to have the request.
    busy: bool,
    last_heard: Time,
    side: Side,
}

#[derive(Debug)]
enum InCall {
    Running {
        arrived: Time,
        request_stamp: u32,
        next_busy: Time,
        side: Side,
    },
    Done {
        code: u16,
        flags: u16,
        body: Bytes,
        at: Time,
    },
    /// Ran, but the reply was evicted.
    Forgotten,
}

/// A client's bind step in flight: when it was last sent, how often it was
/// retried, and when the bind began (the peer timeout runs from there).
#[derive(Clone, Copy)]
struct Attempt {
    sent_at: Time,
    retries: u32,
    started: Time,
}

impl Attempt {
    fn new(now: Time, started: Time) -> Attempt {
        Attempt {
            sent_at: now,
            retries: 0,
            started,
        }
    }

    fn resend_at(&self, rtt: &RttEstimator) -> Time {
        self.sent_at + rtt.backoff(self.retries)
    }
}

enum Bind {
    Initiating {
        nonce: [u8; 32],
        creds: Option<Credentials>,
        attempt: Attempt,
    },
    Proving {
        proof: [u8; 32],
        attempt: Attempt,
    },
    Challenged {
        expected: [u8; 32],
        challenge: Bytes,
        created: Time,
    },
    Bound,
}

struct Conn {
    id: u32,
    peer_conn: u32,
    peer: SocketAddr,
    server_side: bool,
    identity: Identity,
    bind: Bind,
    keys: Option<Keys>,
    /// Server side: the client's proof, to recognise a repeated one.
    client_proof: Option<[u8; 32]>,
    half_open_key: Option<(SocketAddr, u32)>,
    replay: ReplayWindow,
    next_pn: u64,
    rtt: RttEstimator,
    last_heard: Time,
    datagram_bytes: usize,
    next_seq: u64,
    outgoing: BTreeMap<u64, OutCall>,
    floor: u64,
    incoming: BTreeMap<u64, InCall>,
    reply_bytes: usize,
    stats: Stats,
    timer: Option<Time>,
    /// Listed in `Endpoint::dirty`.
    dirty: bool,
}

impl Conn {
    fn level(&self) -> Level {
        self.identity.level
    }

    fn bound(&self) -> bool {
        matches!(self.bind, Bind::Bound)
    }

    /// The largest body a datagram carries on this path unfragmented.
    fn payload_bytes(&self) -> usize {
        self.datagram_bytes - HEADER_BYTES - self.level().trailer_bytes()
    }

    /// The largest data a single SFTP datagram carries on this path.
    fn chunk_bytes(&self) -> usize {
        self.payload_bytes() - crate::sftp::DATA_PREFIX_BYTES
    }

    fn body_bytes_max(&self) -> usize {
        crate::packet::DATAGRAM_BYTES_MAX - HEADER_BYTES - self.level().trailer_bytes()
    }

    /// Writes a whole datagram into `out`: header, body, trailer.
    fn build(&mut self, now: Time, mut h: Header, body: &[u8], out: &mut Vec<u8>) {
        out.clear();
        out.resize(HEADER_BYTES, 0);
        out.extend_from_slice(body);
        self.finish(now, &mut h, out);
    }

    /// Seals a datagram whose body is already in `out` after the header space.
    fn finish(&mut self, now: Time, h: &mut Header, out: &mut Vec<u8>) {
        h.packet_number = self.next_pn;
        self.next_pn += 1;
        h.timestamp = stamp(now);
        h.body_len = (out.len() - HEADER_BYTES) as u32;
        h.write(out);
        let level = if h.kind.is_handshake() {
            Level::Clear
        } else {
            self.level()
        };
        secure::seal(level, self.keys.as_ref(), h.packet_number, out);
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += out.len() as u64;
    }

    fn header(&self, kind: Kind, seq: u64) -> Header {
        let mut h = Header::new(kind, self.peer_conn);
        h.seq = seq;
        h
    }
}

/// A packet timestamp; never 0, which means "no timestamp".
fn stamp(now: Time) -> u32 {
    now.stamp().max(1)
}

/// The round trip measured by an echoed timestamp, if it is plausible.
fn echoed_rtt(now: Time, echo: u32) -> Option<Duration> {
    if echo == 0 {
        return None;
    }
    let micros = stamp(now).wrapping_sub(echo);
    (micros < 60_000_000).then(|| Duration::from_micros(micros.into()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TransferKey {
    conn: u32,
    seq: u64,
    /// True for a transfer of a call this endpoint made.
    outgoing: bool,
}

pub struct Endpoint {
    config: Config,
    rng: ChaCha20Rng,
    conns: HashMap<u32, Conn>,
    /// Server-side connections by their client's address and id, to answer
    /// a repeated bind the same way.
    half_open: HashMap<(SocketAddr, u32), u32>,
    /// How many of those are still in the challenge step (the bounded ones).
    challenged: usize,
    queue: VecDeque<(SocketAddr, Vec<u8>)>,
    spare: Vec<Vec<u8>>,
    events: VecDeque<Event>,
    timers: BinaryHeap<Reverse<(Time, u32)>>,
    /// Connections whose deadline may have moved. Recomputing a deadline
    /// scans the connection's calls, so it is done once per batch of
    /// datagrams, when the driver next asks for the deadline.
    dirty: Vec<u32>,
    senders: VecDeque<TransferKey>,
    /// Counters for packets that belong to no connection.
    stats: Stats,
}

impl Endpoint {
    pub fn new(config: Config) -> Endpoint {
        config.validate();
        Endpoint {
            rng: ChaCha20Rng::seed_from_u64(config.rng_seed),
            config,
            conns: HashMap::new(),
            half_open: HashMap::new(),
            challenged: 0,
            queue: VecDeque::new(),
            spare: Vec::new(),
            events: VecDeque::new(),
            timers: BinaryHeap::new(),
            dirty: Vec::new(),
            senders: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    // ---- getters ----

    /// Counters of this endpoint: its own plus every live connection's.
    pub fn stats(&self) -> Stats {
        let mut total = self.stats.clone();
        for c in self.conns.values() {
            total.absorb(&c.stats);
        }
        total
    }

    pub fn conn_stats(&self, conn: ConnId) -> Option<Stats> {
        self.conns.get(&conn.0).map(|c| {
            let mut s = c.stats.clone();
            s.srtt_us = c.rtt.srtt().map_or(0, |d| d.as_micros() as u64);
            s.rttvar_us = c.rtt.rttvar().as_micros() as u64;
            s
        })
    }

    pub fn identity(&self, conn: ConnId) -> Option<Identity> {
        self.conns.get(&conn.0).map(|c| c.identity)
    }

    pub fn peer(&self, conn: ConnId) -> Option<SocketAddr> {
        self.conns.get(&conn.0).map(|c| c.peer)
    }

    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    // ---- commands ----

    /// Starts binding to `peer`; `Event::Connected` or `ConnectFailed` follows.
    pub fn connect(&mut self, now: Time, peer: SocketAddr, auth: Auth) -> ConnId {
        let (level, creds) = match auth {
            Auth::Anonymous => (Level::Clear, None),
            Auth::Authenticated(c) => (Level::Authenticated, Some(c)),
            Auth::Encrypted(c) => (Level::Encrypted, Some(c)),
        };
        let mut nonce = [0u8; 32];
        self.rng.fill_bytes(&mut nonce);
        let id = self.new_conn_id();
        let mut conn = self.new_conn(
            id,
            peer,
            false,
            Identity {
                user_id: None,
                level,
            },
            now,
        );
        conn.bind = Bind::Initiating {
            nonce,
            creds,
            attempt: Attempt::new(now, now),
        };
        self.conns.insert(id, conn);
        self.send_bind_init(now, id);
        self.rearm(id);
        ConnId(id)
    }

    /// Starts a call; `Event::Reply` follows with its result.
    pub fn call(
        &mut self,
        now: Time,
        conn: ConnId,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
        side_effect: Option<SideEffect>,
    ) -> Result<CallId, Error> {
        let c = self.conns.get_mut(&conn.0).ok_or(Error::NoConnection)?;
        if !c.bound() {
            return Err(Error::NotBound);
        }
        if body.len() > c.body_bytes_max() {
            return Err(Error::BodyTooLarge(body.len()));
        }
        let seq = c.next_seq;
        let oldest = c.outgoing.keys().next().copied().unwrap_or(seq);
        if seq - oldest >= CALLS_WINDOW_MAX {
            return Err(Error::TooManyCalls);
        }
        c.next_seq += 1;
        let (mut body, mut flags) = (body, 0);
        let side = match side_effect {
            None => Side::None,
            Some(SideEffect::Send(source)) => match piggy(c, &body, &source) {
                // What fits in the request's datagram goes with it: no
                // round trip for the callee to ask, no packets of its own.
                Some(packed) => {
                    c.stats.sftp_bytes_sent += source.len();
                    (body, flags) = (packed, flags::PIGGY);
                    Side::Finished(source.len())
                }
                None => Side::Source(source),
            },
            Some(SideEffect::Receive(sink)) => Side::Sink(sink),
        };
        let call = OutCall {
            subsystem,
            opcode,
            body,
            flags,
            sent_at: now,
            retries: 0,
            busy: false,
            last_heard: now,
            side,
        };
        c.outgoing.insert(seq, call);
        c.stats.calls_sent += 1;
        self.send_request(now, conn.0, seq);
        self.rearm(conn.0);
        Ok(CallId { conn, seq })
    }

    /// MultiRPC: the same call on each connection; a result per connection.
    pub fn multi_call(
        &mut self,
        now: Time,
        conns: &[ConnId],
        subsystem: u16,
        opcode: u16,
        body: Bytes,
    ) -> Vec<Result<CallId, Error>> {
        conns
            .iter()
            .map(|&c| self.call(now, c, subsystem, opcode, body.clone(), None))
            .collect()
    }

    /// Answers a received call. The reply is kept for retransmitted requests.
    pub fn reply(
        &mut self,
        now: Time,
        id: IncomingId,
        code: u16,
        body: Bytes,
    ) -> Result<(), Error> {
        let c = self.conns.get_mut(&id.conn.0).ok_or(Error::NoConnection)?;
        if body.len() > c.body_bytes_max() {
            return Err(Error::BodyTooLarge(body.len()));
        }
        let request_stamp = match c.incoming.get(&id.seq) {
            Some(InCall::Running {
                request_stamp,
                arrived,
                ..
            }) => request_stamp.wrapping_add(now.since(*arrived).as_micros() as u32),
            _ => return Err(Error::NoCall),
        };
        c.reply_bytes += body.len();
        c.incoming.insert(
            id.seq,
            InCall::Done {
                code,
                flags: 0,
                body: body.clone(),
                at: now,
            },
        );
        let mut h = c.header(Kind::Reply, id.seq);
        h.code = code;
        h.echo = request_stamp;
        let mut out = self.spare.pop().unwrap_or_default();
        c.build(now, h, &body, &mut out);
        self.queue.push_back((c.peer, out));
        Self::evict_replies(c, self.config.reply_cache_bytes_max);
        self.rearm(id.conn.0);
        Ok(())
    }

    /// Pushes `source` from `offset` to the caller (a fetch); `SftpDone` follows.
    pub fn sftp_send(
        &mut self,
        now: Time,
        id: IncomingId,
        source: Source,
        offset: u64,
    ) -> Result<(), Error> {
        let window = self.config.sftp_window_packets;
        let side = self.running_side(id)?;
        if let Side::Finished(_) = side {
            return Err(Error::TransferOver);
        }
        *side = Side::Sending(Sender::new(source, offset, window, now));
        self.queue_sender(TransferKey {
            conn: id.conn.0,
            seq: id.seq,
            outgoing: false,
        });
        self.rearm(id.conn.0);
        Ok(())
    }

    /// Pulls the caller's data from `offset` into `sink` (a store); `SftpDone` follows.
    pub fn sftp_receive(
        &mut self,
        now: Time,
        id: IncomingId,
        mut sink: Sink,
        offset: u64,
    ) -> Result<(), Error> {
        let window = self.receive_window_bytes();
        let side = self.running_side(id)?;
        if let Side::Piggy(data) = side {
            // Kept: another pull of it (from another offset) costs nothing.
            let start = offset.min(data.len() as u64);
            let rest = data.slice(start as usize..);
            let result = match sink.write_all_at(start, &rest) {
                Ok(()) => {
                    let c = self.conns.get_mut(&id.conn.0).unwrap();
                    c.stats.sftp_bytes_received += rest.len() as u64;
                    Ok(SftpOutcome {
                        bytes: rest.len() as u64,
                        sink: Some(sink),
                    })
                }
                Err(e) => Err(e.into()),
            };
            self.events.push_back(Event::SftpDone { id, result });
            return Ok(());
        }
        if let Side::Finished(_) = side {
            // The caller's data went with the first pull: asking again
            // would only wait for the peer timeout.
            return Err(Error::TransferOver);
        }
        let receiver = Receiver::new(sink, Some(offset), window, now);
        *side = Side::Pulling {
            receiver,
            offset,
            start_sent_at: None,
            retries: 0,
        };
        self.send_sftp_start(now, id);
        self.rearm(id.conn.0);
        Ok(())
    }

    /// Closes a connection: its calls fail with `Closed`, the peer is told.
    pub fn close(&mut self, now: Time, conn: ConnId) {
        if let Some(mut c) = self.conns.remove(&conn.0) {
            if c.bound() {
                let h = c.header(Kind::Unbind, 0);
                let mut out = self.spare.pop().unwrap_or_default();
                c.build(now, h, &[], &mut out);
                self.queue.push_back((c.peer, out));
            }
            self.fail_calls(&mut c, Error::Closed);
            self.stats.absorb(&c.stats);
            self.unindex(&c);
        }
    }

    /// Closes every connection, as an endpoint going away does.
    pub fn close_all(&mut self, now: Time) {
        let ids: Vec<u32> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(now, ConnId(id));
        }
    }

    // ---- inputs ----

    /// Takes one datagram from `from`. The buffer is decrypted in place.
    pub fn handle(&mut self, now: Time, from: SocketAddr, datagram: &mut [u8]) {
        let (kind, conn_id) = match Header::peek(datagram) {
            Ok(k) => k,
            Err(_) => return self.drop_packet(None, Drop::Malformed, datagram.len()),
        };
        if kind.is_handshake() {
            let h = match Header::read(datagram, CRC_BYTES) {
                Ok(h) => h,
                Err(_) => return self.drop_packet(None, Drop::Malformed, datagram.len()),
            };
            if !secure::open(Level::Clear, None, h.packet_number, datagram) {
                return self.drop_packet(None, Drop::Checksum, datagram.len());
            }
            let body =
                Bytes::copy_from_slice(&datagram[HEADER_BYTES..HEADER_BYTES + h.body_len as usize]);
            return self.handle_handshake(now, from, h, body, datagram.len());
        }
        let Some(c) = self.conns.get_mut(&conn_id) else {
            self.drop_packet(None, Drop::UnknownConnection, datagram.len());
            return self.send_unbound(now, from, datagram);
        };
        let reason = if c.peer != from {
            Some(Drop::WrongPeer)
        } else {
            match Header::read(datagram, c.level().trailer_bytes()) {
                Err(_) => Some(Drop::Malformed),
                Ok(h) if !secure::open(c.level(), c.keys.as_ref(), h.packet_number, datagram) => {
                    Some(if c.level() == Level::Clear {
                        Drop::Checksum
                    } else {
                        Drop::Forged
                    })
                }
                Ok(h) if !c.replay.accept(h.packet_number) => Some(Drop::Replay),
                Ok(h) => {
                    c.stats.packets_received += 1;
                    c.stats.bytes_received += datagram.len() as u64;
                    c.last_heard = now;
                    let body = &datagram[HEADER_BYTES..HEADER_BYTES + h.body_len as usize];
                    self.handle_conn_packet(now, conn_id, h, body);
                    self.rearm(conn_id);
                    None
                }
            }
        };
        if let Some(reason) = reason {
            self.drop_packet(Some(conn_id), reason, datagram.len());
        }
    }

    /// Runs every timer due at `now`. An early call does nothing.
    pub fn handle_timeout(&mut self, now: Time) {
        self.settle_timers();
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match self.conns.get(&id) {
                Some(c) if c.timer == Some(at) => {}
                _ => continue, // superseded
            }
            self.conns.get_mut(&id).unwrap().timer = None;
            self.conn_timeout(now, id);
            self.rearm(id);
        }
        self.settle_timers();
    }

    // ---- outputs ----

    /// The next datagram to send, written into `buf`; its destination.
    pub fn poll_transmit(&mut self, now: Time, buf: &mut Vec<u8>) -> Option<SocketAddr> {
        if let Some((dest, mut packet)) = self.queue.pop_front() {
            std::mem::swap(buf, &mut packet);
            packet.clear();
            if self.spare.len() < 64 {
                self.spare.push(packet);
            }
            return Some(dest);
        }
        while let Some(key) = self.senders.pop_front() {
            if let Some(dest) = self.write_sftp_data(now, key, buf) {
                return Some(dest);
            }
        }
        None
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` should next be called.
    pub fn poll_timeout(&mut self) -> Option<Time> {
        self.settle_timers();
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            match self.conns.get(&id) {
                Some(c) if c.timer == Some(at) => return Some(at),
                _ => {
                    self.timers.pop();
                }
            }
        }
        None
    }

    /// True while datagrams wait to be sent.
    pub fn has_transmit(&self) -> bool {
        !self.queue.is_empty() || !self.senders.is_empty()
    }

    // ---- internals: connections ----

    fn new_conn_id(&mut self) -> u32 {
        loop {
            let id: u32 = self.rng.random();
            if id != 0 && !self.conns.contains_key(&id) {
                return id;
            }
        }
    }

    fn new_conn(
        &self,
        id: u32,
        peer: SocketAddr,
        server_side: bool,
        identity: Identity,
        now: Time,
    ) -> Conn {
        let cfg = &self.config;
        let datagram_bytes = if peer.ip().is_loopback() {
            cfg.loopback_datagram_bytes
        } else {
            cfg.datagram_bytes
        };
        Conn {
            id,
            peer_conn: 0,
            peer,
            server_side,
            identity,
            bind: Bind::Bound,
            keys: None,
            client_proof: None,
            half_open_key: None,
            replay: ReplayWindow::default(),
            next_pn: 0,
            rtt: RttEstimator::new(cfg.rto_initial, cfg.rto_min, cfg.rto_max),
            last_heard: now,
            datagram_bytes,
            next_seq: 0,
            outgoing: BTreeMap::new(),
            floor: 0,
            incoming: BTreeMap::new(),
            reply_bytes: 0,
            stats: Stats::default(),
            timer: None,
            dirty: false,
        }
    }

    fn receive_window_bytes(&self) -> u64 {
        (self.config.sftp_window_packets * crate::packet::DATAGRAM_BYTES_MAX) as u64 * 2
    }

    fn drop_packet(&mut self, conn: Option<u32>, reason: Drop, len: usize) {
        let stats = match conn.and_then(|id| self.conns.get_mut(&id)) {
            Some(c) => &mut c.stats,
            None => &mut self.stats,
        };
        stats.drops[reason as usize] += 1;
        stats.packets_received += 1;
        stats.bytes_received += len as u64;
    }

    fn push(&mut self, now: Time, id: u32, h: Header, body: &[u8]) {
        let mut out = self.spare.pop().unwrap_or_default();
        let c = self.conns.get_mut(&id).unwrap();
        c.build(now, h, body, &mut out);
        self.queue.push_back((c.peer, out));
    }

    /// Re-registers a connection's next deadline after anything changed it.
    fn rearm(&mut self, id: u32) {
        if let Some(c) = self.conns.get_mut(&id) {
            if !c.dirty {
                c.dirty = true;
                self.dirty.push(id);
            }
        }
    }

    fn settle_timers(&mut self) {
        let cfg = &self.config;
        for id in self.dirty.drain(..) {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            c.dirty = false;
            let next = conn_deadline(c, cfg);
            if next != c.timer {
                c.timer = next;
                if let Some(at) = next {
                    self.timers.push(Reverse((at, id)));
                }
            }
        }
    }

    fn fail_calls(&mut self, c: &mut Conn, error: Error) {
        for (seq, _) in std::mem::take(&mut c.outgoing) {
            c.stats.calls_failed += 1;
            let call = CallId {
                conn: ConnId(c.id),
                seq,
            };
            self.events.push_back(Event::Reply {
                call,
                result: Err(error.clone()),
            });
        }
        for (seq, call) in std::mem::take(&mut c.incoming) {
            if let InCall::Running { side, .. } = call {
                if transfer_active(&side) {
                    let id = IncomingId {
                        conn: ConnId(c.id),
                        seq,
                    };
                    self.events.push_back(Event::SftpDone {
                        id,
                        result: Err(error.clone()),
                    });
                }
            }
        }
    }

    /// Drops a removed connection from the bind index and the challenge count.
    fn unindex(&mut self, c: &Conn) {
        if let Some(k) = c.half_open_key {
            self.half_open.remove(&k);
        }
        if matches!(c.bind, Bind::Challenged { .. }) {
            self.challenged -= 1;
        }
    }

    fn remove_conn(&mut self, id: u32, error: Error, report: bool) {
        if let Some(mut c) = self.conns.remove(&id) {
            self.fail_calls(&mut c, error.clone());
            self.stats.absorb(&c.stats);
            self.unindex(&c);
            if report {
                self.events.push_back(Event::Lost {
                    conn: ConnId(id),
                    error,
                });
            }
        }
    }

    /// Tells a sender that we do not know the connection it used.
    fn send_unbound(&mut self, now: Time, to: SocketAddr, datagram: &[u8]) {
        let Ok((kind, conn)) = Header::peek(datagram) else {
            return;
        };
        if matches!(kind, Kind::Unbind | Kind::Unbound) || datagram.len() < 16 {
            return;
        }
        let pn = u64::from_le_bytes(datagram[8..16].try_into().unwrap());
        let mut h = Header::new(Kind::Unbound, conn);
        h.timestamp = stamp(now);
        let body = codec::to_bytes(&pn);
        let mut out = self.spare.pop().unwrap_or_default();
        out.clear();
        out.resize(HEADER_BYTES, 0);
        out.extend_from_slice(&body);
        h.body_len = body.len() as u32;
        h.write(&mut out);
        secure::seal(Level::Clear, None, 0, &mut out);
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += out.len() as u64;
        self.queue.push_back((to, out));
    }

    // ---- internals: bind ----

    fn send_bind_init(&mut self, now: Time, id: u32) {
        let c = self.conns.get_mut(&id).unwrap();
        let Bind::Initiating { nonce, creds, .. } = &c.bind else {
            return;
        };
        let init = BindInit {
            client_conn: id,
            level: c.level() as u8,
            nonce: *nonce,
            token: creds
                .as_ref()
                .map_or_else(Bytes::new, |k| Bytes::copy_from_slice(&k.sealed_token)),
        };
        let h = Header::new(Kind::BindInit, 0);
        self.push(now, id, h, &codec::to_bytes(&init));
    }

    fn send_reject(&mut self, now: Time, to: SocketAddr, client_conn: u32, reason: Reject) {
        let mut h = Header::new(Kind::BindReject, client_conn);
        h.code = reason as u16;
        h.timestamp = stamp(now);
        let mut out = self.spare.pop().unwrap_or_default();
        out.clear();
        out.resize(HEADER_BYTES, 0);
        h.write(&mut out);
        secure::seal(Level::Clear, None, 0, &mut out);
        self.stats.packets_sent += 1;
        self.queue.push_back((to, out));
    }

    fn handle_handshake(
        &mut self,
        now: Time,
        from: SocketAddr,
        h: Header,
        body: Bytes,
        len: usize,
    ) {
        match h.kind {
            Kind::BindInit => self.on_bind_init(now, from, &body, len),
            Kind::BindChallenge => self.on_bind_challenge(now, from, h, &body, len),
            Kind::BindProof => self.on_bind_proof(now, from, h, &body, len),
            Kind::BindReject => self.on_bind_reject(from, h, len),
            Kind::Unbound => self.on_unbound(from, h, &body, len),
            _ => unreachable!("not a handshake kind"),
        }
    }

    fn on_bind_init(&mut self, now: Time, from: SocketAddr, body: &[u8], len: usize) {
        let Ok(init) = codec::from_bytes::<BindInit>(body) else {
            return self.drop_packet(None, Drop::BadBody, len);
        };
        if let Some(&id) = self.half_open.get(&(from, init.client_conn)) {
            // A repeated init: answer as before.
            self.stats.packets_received += 1;
            return self.resend_bind_answer(now, id);
        }
        let Some(level) = Level::from_u8(init.level) else {
            return self.drop_packet(None, Drop::BadBody, len);
        };
        let refuse = if !self.config.accept_binds {
            Some((Drop::Refused, Reject::NotAccepting))
        } else if level < self.config.level_min {
            Some((Drop::Refused, Reject::LevelRefused))
        } else if self.challenged >= HALF_OPEN_MAX {
            Some((Drop::Overload, Reject::Overload))
        } else {
            None
        };
        if let Some((drop, reject)) = refuse {
            self.drop_packet(None, drop, len);
            return self.send_reject(now, from, init.client_conn, reject);
        }
        let unix_secs = now.as_micros() / 1_000_000;
        let token = match (level, &self.config.cell_key) {
            (Level::Clear, _) => None,
            (_, None) => {
                self.drop_packet(None, Drop::Refused, len);
                return self.send_reject(now, from, init.client_conn, Reject::LevelRefused);
            }
            (_, Some(cell)) => match Token::open(cell, &init.token, unix_secs) {
                Ok(t) => Some(t),
                Err(e) => {
                    let (drop, reject) = match e {
                        TokenError::Forged => (Drop::ForgedToken, Reject::ForgedToken),
                        TokenError::Expired { .. } => (Drop::ExpiredToken, Reject::ExpiredToken),
                    };
                    self.drop_packet(None, drop, len);
                    return self.send_reject(now, from, init.client_conn, reject);
                }
            },
        };
        self.stats.packets_received += 1;
        let id = self.new_conn_id();
        let identity = Identity {
            user_id: token.as_ref().map(|t| t.user_id),
            level,
        };
        let mut c = self.new_conn(id, from, true, identity, now);
        c.peer_conn = init.client_conn;
        c.half_open_key = Some((from, init.client_conn));
        match token {
            None => {
                c.bind = Bind::Bound;
                self.conns.insert(id, c);
                self.half_open.insert((from, init.client_conn), id);
                self.events.push_back(Event::Accepted {
                    conn: ConnId(id),
                    peer: from,
                    identity,
                });
                self.send_bind_ok(now, id);
            }
            Some(token) => {
                let mut server_nonce = [0u8; 32];
                self.rng.fill_bytes(&mut server_nonce);
                let t = Transcript {
                    client_conn: init.client_conn,
                    server_conn: id,
                    level,
                    client_nonce: init.nonce,
                    server_nonce,
                };
                let (c2s, s2c) = t.keys(&token.session_key);
                c.keys = Some(Keys::new(&s2c, &c2s));
                let challenge = BindChallenge {
                    server_conn: id,
                    nonce: server_nonce,
                    proof: t.server_proof(&token.session_key),
                };
                c.bind = Bind::Challenged {
                    expected: t.client_proof(&token.session_key),
                    challenge: codec::to_bytes(&challenge),
                    created: now,
                };
                self.conns.insert(id, c);
                self.half_open.insert((from, init.client_conn), id);
                self.challenged += 1;
                self.resend_bind_answer(now, id);
            }
        }
        self.rearm(id);
    }

    /// The server's answer to an init: the challenge, or (once bound) the ok.
    fn resend_bind_answer(&mut self, now: Time, id: u32) {
        let c = self.conns.get(&id).unwrap();
        match &c.bind {
            Bind::Challenged { challenge, .. } => {
                let challenge = challenge.clone();
                let h = c.header(Kind::BindChallenge, 0);
                self.push(now, id, h, &challenge);
            }
            Bind::Bound => self.send_bind_ok(now, id),
            _ => {}
        }
    }

    fn send_bind_ok(&mut self, now: Time, id: u32) {
        let c = self.conns.get(&id).unwrap();
        let h = c.header(Kind::BindOk, 0);
        self.push(now, id, h, &codec::to_bytes(&id));
    }

    fn on_bind_challenge(
        &mut self,
        now: Time,
        from: SocketAddr,
        h: Header,
        body: &[u8],
        len: usize,
    ) {
        let Some(c) = self.conns.get_mut(&h.conn).filter(|c| c.peer == from) else {
            return self.drop_packet(None, Drop::UnknownConnection, len);
        };
        let Ok(ch) = codec::from_bytes::<BindChallenge>(body) else {
            return self.drop_packet(Some(h.conn), Drop::BadBody, len);
        };
        let Bind::Initiating {
            nonce,
            creds: Some(creds),
            attempt,
        } = &c.bind
        else {
            return self.drop_packet(Some(h.conn), Drop::Unexpected, len);
        };
        let t = Transcript {
            client_conn: c.id,
            server_conn: ch.server_conn,
            level: c.level(),
            client_nonce: *nonce,
            server_nonce: ch.nonce,
        };
        if !secure::proofs_equal(&t.server_proof(&creds.session_key), &ch.proof) {
            return self.drop_packet(Some(h.conn), Drop::BadProof, len);
        }
        let (c2s, s2c) = t.keys(&creds.session_key);
        let proof = t.client_proof(&creds.session_key);
        let started = attempt.started;
        c.keys = Some(Keys::new(&c2s, &s2c));
        c.peer_conn = ch.server_conn;
        c.last_heard = now;
        c.stats.packets_received += 1;
        c.bind = Bind::Proving {
            proof,
            attempt: Attempt::new(now, started),
        };
        let id = c.id;
        self.send_bind_proof(now, id);
    }

    fn send_bind_proof(&mut self, now: Time, id: u32) {
        let c = &self.conns[&id];
        let Bind::Proving { proof, .. } = c.bind else {
            return;
        };
        let h = c.header(Kind::BindProof, 0);
        self.push(now, id, h, &proof);
    }

    fn on_bind_proof(&mut self, now: Time, from: SocketAddr, h: Header, body: &[u8], len: usize) {
        let Some(c) = self
            .conns
            .get_mut(&h.conn)
            .filter(|c| c.peer == from && c.server_side)
        else {
            return self.drop_packet(None, Drop::UnknownConnection, len);
        };
        let Ok(proof) = <[u8; 32]>::try_from(body) else {
            return self.drop_packet(Some(h.conn), Drop::BadBody, len);
        };
        let expected = match &c.bind {
            Bind::Challenged { expected, .. } => *expected,
            // A repeated proof: the ok was lost.
            Bind::Bound if c.client_proof == Some(proof) => {
                c.stats.packets_received += 1;
                return self.send_bind_ok(now, h.conn);
            }
            _ => return self.drop_packet(Some(h.conn), Drop::Unexpected, len),
        };
        if !secure::proofs_equal(&expected, &proof) {
            return self.drop_packet(Some(h.conn), Drop::BadProof, len);
        }
        c.stats.packets_received += 1;
        c.client_proof = Some(proof);
        c.bind = Bind::Bound;
        self.challenged -= 1;
        c.last_heard = now;
        let event = Event::Accepted {
            conn: ConnId(c.id),
            peer: from,
            identity: c.identity,
        };
        self.events.push_back(event);
        self.send_bind_ok(now, h.conn);
        self.rearm(h.conn);
    }

    fn on_bind_reject(&mut self, from: SocketAddr, h: Header, len: usize) {
        let binding = self.conns.get(&h.conn).is_some_and(|c| {
            c.peer == from && matches!(c.bind, Bind::Initiating { .. } | Bind::Proving { .. })
        });
        let reason = Reject::from_u8(h.code as u8).filter(|_| h.code <= u8::MAX as u16);
        match (binding, reason) {
            (true, Some(reason)) => {
                self.conns.get_mut(&h.conn).unwrap().stats.packets_received += 1;
                self.remove_conn(h.conn, Error::Rejected(reason), false);
                let event = Event::ConnectFailed {
                    conn: ConnId(h.conn),
                    error: Error::Rejected(reason),
                };
                self.events.push_back(event);
            }
            (true, None) => self.drop_packet(Some(h.conn), Drop::BadBody, len),
            (false, _) => self.drop_packet(None, Drop::Unexpected, len),
        }
    }

    /// The peer says it does not know the connection we addressed as `h.conn`.
    fn on_unbound(&mut self, from: SocketAddr, h: Header, body: &[u8], len: usize) {
        let Ok(pn) = codec::from_bytes::<u64>(body) else {
            return self.drop_packet(None, Drop::BadBody, len);
        };
        // Believe it only for a packet we sent recently on a bound connection:
        // a blind forger must guess the connection id and a live packet number.
        let victim = self.conns.values().find(|c| {
            c.peer == from
                && c.peer_conn == h.conn
                && c.bound()
                && pn < c.next_pn
                && pn + crate::secure::REPLAY_WINDOW_PACKETS >= c.next_pn
        });
        match victim.map(|c| c.id) {
            Some(id) => {
                self.conns.get_mut(&id).unwrap().stats.packets_received += 1;
                self.remove_conn(id, Error::Unbound, true);
            }
            None => self.drop_packet(None, Drop::Unexpected, len),
        }
    }

    // ---- internals: packets on a connection ----

    fn handle_conn_packet(&mut self, now: Time, id: u32, h: Header, body: &[u8]) {
        let c = self.conns.get_mut(&id).unwrap();
        match h.kind {
            Kind::BindOk => {
                let server_conn = codec::from_bytes::<u32>(body);
                match (&c.bind, server_conn) {
                    (Bind::Initiating { .. } | Bind::Proving { .. }, Ok(server_conn))
                        if !c.server_side && (c.peer_conn == 0 || c.peer_conn == server_conn) =>
                    {
                        c.peer_conn = server_conn;
                        c.bind = Bind::Bound;
                        self.events.push_back(Event::Connected { conn: ConnId(id) });
                    }
                    (Bind::Bound, _) => {} // a duplicate
                    _ => self.drop_counted(id, Drop::Unexpected),
                }
            }
            _ if !c.bound() => self.drop_counted(id, Drop::Unexpected),
            Kind::Request => self.on_request(now, id, h, body),
            Kind::Reply => self.on_reply(now, id, h, body),
            Kind::Busy => {
                let rtt = echoed_rtt(now, h.echo);
                match c.outgoing.get_mut(&h.seq) {
                    Some(call) => {
                        c.stats.busies_received += 1;
                        if let Some(r) = rtt {
                            c.rtt.sample(r);
                        }
                        call.busy = true;
                        call.last_heard = now;
                        call.retries = 0;
                    }
                    None => self.drop_counted(id, Drop::Stale),
                }
            }
            Kind::SftpStart | Kind::SftpData | Kind::SftpAck | Kind::SftpAbort => {
                self.on_sftp(now, id, h, body)
            }
            Kind::Unbind => {
                self.remove_conn(id, Error::Closed, true);
            }
            Kind::BindInit
            | Kind::BindChallenge
            | Kind::BindProof
            | Kind::BindReject
            | Kind::Unbound => {
                unreachable!("handshake kinds are handled before the connection")
            }
        }
    }

    fn drop_counted(&mut self, id: u32, reason: Drop) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.stats.drops[reason as usize] += 1;
        }
    }

    fn on_request(&mut self, now: Time, id: u32, h: Header, body: &[u8]) {
        let c = self.conns.get_mut(&id).unwrap();
        if h.seq < c.floor || h.seq >= c.floor + 2 * CALLS_WINDOW_MAX || u64::from(h.aux) > h.seq {
            return self.drop_counted(id, Drop::Stale);
        }
        // Every call below seq - aux has its reply at the caller: forget them.
        let floor = h.seq - u64::from(h.aux);
        if floor > c.floor {
            let keep = c.incoming.split_off(&floor);
            for (_, old) in std::mem::replace(&mut c.incoming, keep) {
                if let InCall::Done { body, .. } = old {
                    c.reply_bytes -= body.len();
                }
            }
            c.floor = floor;
        }
        match c.incoming.get(&h.seq) {
            Some(InCall::Running { .. }) => {
                c.stats.duplicate_requests += 1;
                self.send_busy(now, id, h.seq, h.timestamp);
            }
            Some(InCall::Done {
                code, flags, body, ..
            }) => {
                c.stats.duplicate_requests += 1;
                let mut r = c.header(Kind::Reply, h.seq);
                r.code = *code;
                r.flags = *flags;
                r.echo = h.timestamp;
                let body = body.clone();
                self.push(now, id, r, &body);
            }
            Some(InCall::Forgotten) => {
                c.stats.duplicate_requests += 1;
                let mut r = c.header(Kind::Reply, h.seq);
                r.flags = flags::REPLY_LOST;
                r.echo = h.timestamp;
                self.push(now, id, r, &[]);
            }
            None => {
                let (body, side) = match h.flags & flags::PIGGY {
                    0 => (body, Side::None),
                    _ => match unpiggy(body) {
                        Some((body, data)) => (body, Side::Piggy(Bytes::copy_from_slice(data))),
                        None => return self.drop_counted(id, Drop::BadBody),
                    },
                };
                let c = self.conns.get_mut(&id).unwrap();
                c.stats.calls_received += 1;
                let call = InCall::Running {
                    arrived: now,
                    request_stamp: h.timestamp,
                    next_busy: now + self.config.busy_delay,
                    side,
                };
                c.incoming.insert(h.seq, call);
                self.events.push_back(Event::Request {
                    id: IncomingId {
                        conn: ConnId(id),
                        seq: h.seq,
                    },
                    identity: c.identity,
                    subsystem: h.subsystem,
                    opcode: h.code,
                    body: Bytes::copy_from_slice(body),
                });
            }
        }
    }

    fn send_busy(&mut self, now: Time, id: u32, seq: u64, echo: u32) {
        let c = self.conns.get_mut(&id).unwrap();
        c.stats.busies_sent += 1;
        let mut h = c.header(Kind::Busy, seq);
        h.echo = echo;
        self.push(now, id, h, &[]);
    }

    fn on_reply(&mut self, now: Time, id: u32, h: Header, body: &[u8]) {
        let c = self.conns.get_mut(&id).unwrap();
        let Some(call) = c.outgoing.remove(&h.seq) else {
            return self.drop_counted(id, Drop::Stale);
        };
        if let Some(r) = echoed_rtt(now, h.echo) {
            c.rtt.sample(r);
        }
        let result = if h.flags & flags::REPLY_LOST != 0 {
            c.stats.calls_failed += 1;
            Err(Error::ReplyLost)
        } else {
            let (sink, sftp_bytes) = match call.side {
                Side::Receiving(r) => {
                    let bytes = r.received_bytes;
                    (Some(r.into_sink()), bytes)
                }
                Side::Sink(s) => (Some(s), 0),
                Side::Finished(bytes) => (None, bytes),
                _ => (None, 0),
            };
            Ok(Reply {
                code: h.code,
                body: Bytes::copy_from_slice(body),
                sink,
                sftp_bytes,
            })
        };
        let call = CallId {
            conn: ConnId(id),
            seq: h.seq,
        };
        self.events.push_back(Event::Reply { call, result });
    }

    fn send_request(&mut self, now: Time, id: u32, seq: u64) {
        let c = self.conns.get_mut(&id).unwrap();
        let oldest = *c.outgoing.keys().next().unwrap();
        let call = c.outgoing.get_mut(&seq).unwrap();
        call.sent_at = now;
        let mut h = Header::new(Kind::Request, c.peer_conn);
        h.seq = seq;
        h.aux = (seq - oldest) as u32;
        h.subsystem = call.subsystem;
        h.code = call.opcode;
        h.flags = call.flags;
        let body = call.body.clone();
        self.push(now, id, h, &body);
    }

    /// Keeps the reply cache under its byte budget, forgetting the oldest.
    fn evict_replies(c: &mut Conn, bytes_max: usize) {
        while c.reply_bytes > bytes_max {
            let oldest = c
                .incoming
                .iter()
                .find(|(_, v)| matches!(v, InCall::Done { .. }))
                .map(|(&k, _)| k);
            let Some(seq) = oldest else { break };
            if let Some(InCall::Done { body, .. }) = c.incoming.insert(seq, InCall::Forgotten) {
                c.reply_bytes -= body.len();
            }
        }
    }

    // ---- internals: SFTP ----

    fn running_side(&mut self, id: IncomingId) -> Result<&mut Side, Error> {
        let c = self.conns.get_mut(&id.conn.0).ok_or(Error::NoConnection)?;
        match c.incoming.get_mut(&id.seq) {
            Some(InCall::Running { side, .. }) => Ok(side),
            _ => Err(Error::NoCall),
        }
    }

    fn queue_sender(&mut self, key: TransferKey) {
        if let Some(sender) = self.sender_mut(key) {
            if !sender.queued && sender.can_send() {
                sender.queued = true;
                self.senders.push_back(key);
            }
        }
    }

    fn side_mut(&mut self, key: TransferKey) -> Option<&mut Side> {
        let c = self.conns.get_mut(&key.conn)?;
        side_of(&mut c.outgoing, &mut c.incoming, key)
    }

    fn sender_mut(&mut self, key: TransferKey) -> Option<&mut Sender> {
        match self.side_mut(key)? {
            Side::Sending(s) => Some(s),
            _ => None,
        }
    }

    fn send_sftp_start(&mut self, now: Time, id: IncomingId) {
        let c = self.conns.get_mut(&id.conn.0).unwrap();
        let Some(InCall::Running {
            side:
                Side::Pulling {
                    offset,
                    start_sent_at,
                    retries,
                    ..
                },
            ..
        }) = c.incoming.get_mut(&id.seq)
        else {
            return;
        };
        if start_sent_at.is_some() {
            *retries += 1;
        }
        *start_sent_at = Some(now);
        let body = codec::to_bytes(offset);
        let mut h = c.header(Kind::SftpStart, id.seq);
        h.flags = flags::FROM_CALLEE;
        self.push(now, id.conn.0, h, &body);
    }

    fn sftp_header(c: &Conn, kind: Kind, key: TransferKey) -> Header {
        let mut h = c.header(kind, key.seq);
        if !key.outgoing {
            h.flags = flags::FROM_CALLEE;
        }
        h
    }

    fn write_sftp_data(
        &mut self,
        now: Time,
        key: TransferKey,
        buf: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        let c = self.conns.get_mut(&key.conn)?;
        let chunk = c.chunk_bytes();
        let Some(Side::Sending(sender)) = side_of(&mut c.outgoing, &mut c.incoming, key) else {
            return None;
        };
        if !sender.can_send() {
            sender.queued = false;
            return None;
        }
        buf.clear();
        buf.resize(HEADER_BYTES, 0);
        match sender.write_next(now, chunk, buf) {
            Ok(sent) => {
                let again = sender.can_send();
                if !again {
                    sender.queued = false;
                }
                c.stats.sftp_bytes_sent += sent.bytes;
                if sent.retransmission {
                    c.stats.sftp_retransmissions += 1;
                }
                let mut h = Self::sftp_header(c, Kind::SftpData, key);
                c.finish(now, &mut h, buf);
                let dest = c.peer;
                if again {
                    self.senders.push_back(key);
                }
                self.rearm(key.conn);
                Some(dest)
            }
            Err(e) => {
                self.abort_transfer(now, key, e.into());
                self.rearm(key.conn);
                None
            }
        }
    }

    /// Ends a transfer that failed here, telling the peer.
    fn abort_transfer(&mut self, now: Time, key: TransferKey, error: Error) {
        let Some(side) = self.side_mut(key) else {
            return;
        };
        *side = Side::Finished(0);
        let c = &self.conns[&key.conn];
        let h = Self::sftp_header(c, Kind::SftpAbort, key);
        self.push(now, key.conn, h, &[]);
        self.transfer_failed(key, error);
    }

    fn transfer_failed(&mut self, key: TransferKey, error: Error) {
        if key.outgoing {
            // The call itself fails; its reply, if any, is ignored.
            let c = self.conns.get_mut(&key.conn).unwrap();
            if c.outgoing.remove(&key.seq).is_some() {
                c.stats.calls_failed += 1;
                let call = CallId {
                    conn: ConnId(key.conn),
                    seq: key.seq,
                };
                self.events.push_back(Event::Reply {
                    call,
                    result: Err(error),
                });
            }
        } else {
            let id = IncomingId {
                conn: ConnId(key.conn),
                seq: key.seq,
            };
            self.events.push_back(Event::SftpDone {
                id,
                result: Err(error),
            });
        }
    }

    fn on_sftp(&mut self, now: Time, id: u32, h: Header, body: &[u8]) {
        // A packet from the callee concerns a call we made.
        let key = TransferKey {
            conn: id,
            seq: h.seq,
            outgoing: h.flags & flags::FROM_CALLEE != 0,
        };
        let window_packets = self.config.sftp_window_packets;
        let window_bytes = self.receive_window_bytes();
        let ack_every = self.config.sftp_ack_every_packets;
        let ack_delay = self.config.sftp_ack_delay;
        let c = self.conns.get_mut(&id).unwrap();
        if key.outgoing {
            match c.outgoing.get_mut(&h.seq) {
                Some(call) => {
                    call.last_heard = now;
                    call.busy = true;
                }
                None => return self.drop_counted(id, Drop::Stale),
            }
        }
        let Some(side) = self.side_mut(key) else {
            return self.drop_counted(id, Drop::Stale);
        };
        match (h.kind, side) {
            (Kind::SftpStart, side @ Side::Source(_)) if key.outgoing => {
                let Ok(offset) = codec::from_bytes::<u64>(body) else {
                    return self.drop_counted(id, Drop::BadBody);
                };
                let Side::Source(source) = std::mem::replace(side, Side::None) else {
                    unreachable!()
                };
                *side = Side::Sending(Sender::new(source, offset, window_packets, now));
                self.queue_sender(key);
            }
            (Kind::SftpStart, Side::Sending(_)) => {} // a repeated start
            (Kind::SftpStart, Side::None | Side::Sink(_)) if key.outgoing => {
                // The callee wants data this call does not have.
                self.abort_transfer(now, key, Error::Aborted);
            }
            (
                Kind::SftpData,
                side @ (Side::Sink(_) | Side::Receiving(_) | Side::Pulling { .. }),
            ) => {
                if let Side::Sink(_) = side {
                    let Side::Sink(sink) = std::mem::replace(side, Side::None) else {
                        unreachable!()
                    };
                    *side = Side::Receiving(Receiver::new(sink, None, window_bytes, now));
                }
                let receiver = match side {
                    Side::Receiving(r) => r,
                    Side::Pulling {
                        receiver,
                        start_sent_at,
                        ..
                    } => {
                        *start_sent_at = None;
                        receiver
                    }
                    _ => unreachable!(),
                };
                match receiver.on_data(now, body) {
                    Err(io) => return self.abort_transfer(now, key, io.into()),
                    Ok(Err(_)) => return self.drop_counted(id, Drop::BadBody),
                    Ok(Ok(_)) => {}
                }
                let complete = receiver.complete();
                if receiver.ack_now(ack_every) {
                    let ack = receiver.ack();
                    self.send_sftp_ack(now, key, &ack);
                } else if receiver.ack_due.is_none() {
                    receiver.ack_due = Some(now + ack_delay);
                }
                if complete && !key.outgoing {
                    self.pull_complete(key);
                }
            }
            (Kind::SftpData, Side::Finished(_)) if !key.outgoing => {
                // The ack of the last data was lost: say again that all arrived.
                let all = Ack {
                    contiguous: u64::MAX,
                    ranges: Vec::new(),
                };
                self.send_sftp_ack(now, key, &all);
            }
            (Kind::SftpAck, Side::Sending(_)) => {
                let Ok(ack) = codec::from_bytes::<Ack>(body) else {
                    return self.drop_counted(id, Drop::BadBody);
                };
                let c = self.conns.get_mut(&id).unwrap();
                let side = side_of(&mut c.outgoing, &mut c.incoming, key).unwrap();
                let Side::Sending(sender) = side else {
                    unreachable!()
                };
                sender.on_ack(now, &ack, &mut c.rtt);
                if sender.done() {
                    let bytes = sender.bytes();
                    *side = Side::Finished(bytes);
                    if !key.outgoing {
                        let id = IncomingId {
                            conn: ConnId(key.conn),
                            seq: key.seq,
                        };
                        let result = Ok(SftpOutcome { bytes, sink: None });
                        self.events.push_back(Event::SftpDone { id, result });
                    }
                } else {
                    self.queue_sender(key);
                }
            }
            (Kind::SftpAbort, side)
                if transfer_active(side) || matches!(side, Side::Source(_) | Side::Sink(_)) =>
            {
                *side = Side::Finished(0);
                self.transfer_failed(key, Error::Aborted);
            }
            _ => self.drop_counted(id, Drop::Unexpected),
        }
    }

    fn send_sftp_ack(&mut self, now: Time, key: TransferKey, ack: &Ack) {
        let c = &self.conns[&key.conn];
        let h = Self::sftp_header(c, Kind::SftpAck, key);
        let mut w = Writer::new();
        ack.encode(&mut w);
        self.push(now, key.conn, h, &w);
    }

    /// A pull has all its data: hand the sink to the application.
    fn pull_complete(&mut self, key: TransferKey) {
        let Some(side) = self.side_mut(key) else {
            return;
        };
        let Side::Pulling { receiver, .. } = std::mem::replace(side, Side::None) else {
            return;
        };
        let bytes = receiver.received_bytes;
        *side = Side::Finished(bytes);
        let c = self.conns.get_mut(&key.conn).unwrap();
        c.stats.sftp_bytes_received += bytes;
        let id = IncomingId {
            conn: ConnId(key.conn),
            seq: key.seq,
        };
        let result = Ok(SftpOutcome {
            bytes,
            sink: Some(receiver.into_sink()),
        });
        self.events.push_back(Event::SftpDone { id, result });
    }

    // ---- internals: timers ----

    fn conn_timeout(&mut self, now: Time, id: u32) {
        let cfg = self.config.clone();
        let c = self.conns.get_mut(&id).unwrap();
        let silent = now.since(c.last_heard);
        match &mut c.bind {
            Bind::Initiating { attempt, .. } | Bind::Proving { attempt, .. } => {
                if now.since(attempt.started) >= cfg.peer_timeout {
                    self.remove_conn(id, Error::Timeout, false);
                    let event = Event::ConnectFailed {
                        conn: ConnId(id),
                        error: Error::Timeout,
                    };
                    self.events.push_back(event);
                    return;
                }
                if attempt.resend_at(&c.rtt) <= now {
                    attempt.retries += 1;
                    attempt.sent_at = now;
                    c.stats.retransmissions += 1;
                    match c.bind {
                        Bind::Initiating { .. } => self.send_bind_init(now, id),
                        _ => self.send_bind_proof(now, id),
                    }
                }
                return;
            }
            Bind::Challenged { created, .. } => {
                if now.since(*created) >= cfg.peer_timeout {
                    self.remove_conn(id, Error::Timeout, false);
                }
                return;
            }
            Bind::Bound => {}
        }
        if c.server_side && silent >= cfg.idle_timeout && c.outgoing.is_empty() && !has_running(c) {
            return self.remove_conn(id, Error::Timeout, true);
        }
        // Outgoing calls: give up, retransmit or probe.
        let mut failed = Vec::new();
        let mut resend = Vec::new();
        for (&seq, call) in &mut c.outgoing {
            if now.since(call.last_heard) >= cfg.peer_timeout {
                failed.push(seq);
            } else if call.sent_at + request_timeout(&c.rtt, call, &cfg) <= now {
                resend.push(seq);
            }
        }
        for seq in failed {
            c.outgoing.remove(&seq);
            c.stats.calls_failed += 1;
            let call = CallId {
                conn: ConnId(id),
                seq,
            };
            self.events.push_back(Event::Reply {
                call,
                result: Err(Error::Timeout),
            });
        }
        for seq in resend {
            let c = self.conns.get_mut(&id).unwrap();
            let call = c.outgoing.get_mut(&seq).unwrap();
            if !call.busy {
                call.retries += 1;
            }
            c.stats.retransmissions += 1;
            self.send_request(now, id, seq);
        }
        // Incoming calls: BUSY while running, forget old replies.
        let c = self.conns.get_mut(&id).unwrap();
        let mut busy = Vec::new();
        for (&seq, call) in &mut c.incoming {
            match call {
                InCall::Running {
                    next_busy,
                    request_stamp,
                    arrived,
                    ..
                } if *next_busy <= now => {
                    *next_busy = now + cfg.keepalive;
                    busy.push((
                        seq,
                        request_stamp.wrapping_add(now.since(*arrived).as_micros() as u32),
                    ));
                }
                InCall::Done { at, body, .. } if now.since(*at) >= cfg.reply_keep => {
                    c.reply_bytes -= body.len();
                    *call = InCall::Forgotten;
                }
                _ => {}
            }
        }
        for (seq, echo) in busy {
            self.send_busy(now, id, seq, echo);
        }
        self.transfer_timeouts(now, id, &cfg);
    }

    fn transfer_timeouts(&mut self, now: Time, id: u32, cfg: &Config) {
        let c = &self.conns[&id];
        let keys: Vec<TransferKey> = c
            .outgoing
            .iter()
            .filter(|(_, call)| transfer_active(&call.side))
            .map(|(&seq, _)| TransferKey {
                conn: id,
                seq,
                outgoing: true,
            })
            .chain(c.incoming.iter().filter_map(|(&seq, call)| match call {
                InCall::Running { side, .. } if transfer_active(side) => Some(TransferKey {
                    conn: id,
                    seq,
                    outgoing: false,
                }),
                _ => None,
            }))
            .collect();
        for key in keys {
            let c = self.conns.get_mut(&id).unwrap();
            let rto = c.rtt.rto();
            let side = side_of(&mut c.outgoing, &mut c.incoming, key).unwrap();
            match side {
                Side::Sending(sender) => {
                    if !key.outgoing && now.since(sender.last_progress) >= cfg.peer_timeout {
                        *side = Side::Finished(0);
                        self.transfer_failed(key, Error::Timeout);
                    } else if sender.on_timeout(now, rto) {
                        self.queue_sender(key);
                    }
                }
                Side::Receiving(receiver) | Side::Pulling { receiver, .. }
                    if receiver.ack_due.is_some_and(|t| t <= now) =>
                {
                    let ack = receiver.ack();
                    self.send_sftp_ack(now, key, &ack);
                }
                _ => {}
            }
            let c = self.conns.get_mut(&id).unwrap();
            let rto = c.rtt.rto();
            if let Some(InCall::Running {
                side:
                    Side::Pulling {
                        receiver,
                        start_sent_at,
                        retries,
                        ..
                    },
                ..
            }) = c.incoming.get_mut(&key.seq).filter(|_| !key.outgoing)
            {
                if now.since(receiver.last_progress) >= cfg.peer_timeout {
                    let c = self.conns.get_mut(&id).unwrap();
                    if let Some(InCall::Running { side, .. }) = c.incoming.get_mut(&key.seq) {
                        *side = Side::Finished(0);
                    }
                    self.transfer_failed(key, Error::Timeout);
                } else if start_sent_at.is_some_and(|t| t + rto * (1 << (*retries).min(8)) <= now) {
                    let id = IncomingId {
                        conn: ConnId(key.conn),
                        seq: key.seq,
                    };
                    self.send_sftp_start(now, id);
                }
            }
        }
    }
}

/// The side-effect slot of a transfer, borrowing only the call tables.
/// The request body carrying `source` as well, if both fit one datagram
/// of the path (and the data can be read).
fn piggy(c: &Conn, body: &[u8], source: &Source) -> Option<Bytes> {
    if body.len() as u64 + 4 + source.len() > c.payload_bytes() as u64 {
        return None;
    }
    let data = source.to_bytes().ok()?;
    let mut out = Vec::with_capacity(4 + body.len() + data.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&data);
    Some(out.into())
}

/// A piggy-backed request's body and data.
fn unpiggy(packed: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u32::from_le_bytes(packed.get(..4)?.try_into().ok()?) as usize;
    let rest = &packed[4..];
    (n <= rest.len()).then(|| rest.split_at(n))
}

fn side_of<'a>(
    outgoing: &'a mut BTreeMap<u64, OutCall>,
    incoming: &'a mut BTreeMap<u64, InCall>,
    key: TransferKey,
) -> Option<&'a mut Side> {
    if key.outgoing {
        outgoing.get_mut(&key.seq).map(|call| &mut call.side)
    } else {
        match incoming.get_mut(&key.seq) {
            Some(InCall::Running { side, .. }) => Some(side),
            _ => None,
        }
    }
}

fn has_running(c: &Conn) -> bool {
    c.incoming
        .values()
        .any(|v| matches!(v, InCall::Running { .. }))
}

fn transfer_active(side: &Side) -> bool {
    matches!(
        side,
        Side::Sending(_) | Side::Receiving(_) | Side::Pulling { .. }
    )
}

/// How long a caller waits before sending a request again.
fn request_timeout(rtt: &RttEstimator, call: &OutCall, cfg: &Config) -> Duration {
    if call.busy {
        cfg.keepalive
    } else {
        // At least eight tries fit in the peer timeout, whatever the RTT.
        rtt.backoff(call.retries).min(cfg.peer_timeout / 8) + cfg.busy_delay
    }
}

/// The earliest moment anything on the connection needs attention.
fn conn_deadline(c: &Conn, cfg: &Config) -> Option<Time> {
    let mut next: Option<Time> = None;
    let mut at = |t: Time| next = Some(next.map_or(t, |n| n.min(t)));
    match &c.bind {
        Bind::Initiating { attempt, .. } | Bind::Proving { attempt, .. } => {
            at(attempt.resend_at(&c.rtt));
            at(attempt.started + cfg.peer_timeout);
            return next;
        }
        Bind::Challenged { created, .. } => {
            at(*created + cfg.peer_timeout);
            return next;
        }
        Bind::Bound => {}
    }
    if c.server_side {
        at(c.last_heard + cfg.idle_timeout);
    }
    let rto = c.rtt.rto();
    for call in c.outgoing.values() {
        at(call.last_heard + cfg.peer_timeout);
        at(call.sent_at + request_timeout(&c.rtt, call, cfg));
        side_deadline(&call.side, rto, &mut at);
    }
    for call in c.incoming.values() {
        match call {
            InCall::Running {
                next_busy, side, ..
            } => {
                at(*next_busy);
                side_deadline(side, rto, &mut at);
                match side {
                    Side::Sending(s) => at(s.last_progress + cfg.peer_timeout),
                    Side::Pulling {
                        receiver,
                        start_sent_at,
                        retries,
                        ..
                    } => {
                        at(receiver.last_progress + cfg.peer_timeout);
                        if let Some(t) = start_sent_at {
                            at(*t + rto * (1 << (*retries).min(8)));
                        }
                    }
                    _ => {}
                }
            }
            InCall::Done { at: done_at, .. } => at(*done_at + cfg.reply_keep),
            InCall::Forgotten => {}
        }
    }
    next
}

fn side_deadline(side: &Side, rto: Duration, at: &mut impl FnMut(Time)) {
    match side {
        Side::Sending(s) => {
            if let Some(t) = s.deadline(rto) {
                at(t)
            }
        }
        Side::Receiving(r) | Side::Pulling { receiver: r, .. } => {
            if let Some(t) = r.ack_due {
                at(t)
            }
        }
        _ => {}
    }
}
