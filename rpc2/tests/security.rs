//! The security claims of RPC2 over the simulated network: tampered, replayed,
//! spliced and misdirected packets are dropped and counted under the right
//! reason, never delivered, never run twice; binds with forged, expired or
//! keyless tokens, or below the server's level, fail.

mod support;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use coda_rpc2::endpoint::{Auth, CallId, ConnId, Event, Identity};
use coda_rpc2::packet::{Kind, CRC_BYTES, HEADER_BYTES};
use coda_rpc2::sim::{NetConfig, NodeId, Sim};
use coda_rpc2::{secure, Credentials, Drop, Error, Level, Reject, Reply, Stats};
use rand::{RngCore, SeedableRng};
use support::*;

const USER: u32 = 7;
const LEVELS: [Level; 3] = [Level::Clear, Level::Authenticated, Level::Encrypted];
const SEALED: [Level; 2] = [Level::Authenticated, Level::Encrypted];

/// The receiver's connection id a datagram carries (bytes 4..8).
fn conn_field(datagram: &[u8]) -> u32 {
    u32::from_le_bytes(datagram[4..8].try_into().unwrap())
}

fn set_conn_field(datagram: &mut [u8], conn: u32) {
    datagram[4..8].copy_from_slice(&conn.to_le_bytes());
}

/// A server (node 0) with a logging echo handler and a client (node 1).
fn pair(seed: u64) -> (Sim, NodeId, NodeId, Rc<RefCell<ServerLog>>) {
    let mut sim = Sim::new(seed, NetConfig::default());
    let server = sim.add("server", server_config());
    let client = sim.add("client", client_config());
    let log = serve_echo_logged(&mut sim, server);
    (sim, server, client, log)
}

fn start_call(sim: &mut Sim, client: NodeId, conn: ConnId, body: &[u8]) -> CallId {
    let now = sim.now;
    sim.endpoint(client)
        .call(now, conn, 9, ECHO, Bytes::copy_from_slice(body), None)
        .unwrap()
}

fn finish_call(sim: &mut Sim, client: NodeId, call: CallId) -> Result<Reply, Error> {
    wait_replies(sim, client, &[call]).remove(&call).unwrap()
}

/// Makes an echo call and checks that it came back intact.
fn echo(sim: &mut Sim, client: NodeId, conn: ConnId, body: &[u8]) {
    let call = start_call(sim, client, conn, body);
    let reply = finish_call(sim, client, call).expect("the echo call failed");
    assert_eq!(reply.body, body);
}

/// The bodies the server was handed, in order.
fn delivered(log: &Rc<RefCell<ServerLog>>) -> Vec<Bytes> {
    log.borrow().requests.iter().map(|r| r.2.clone()).collect()
}

/// What happened to a call one of whose datagrams had one bit flipped.
struct Tampered {
    result: Result<Reply, Error>,
    /// The counters of the endpoint that received the tampered datagram.
    receiver: Stats,
    /// The server's counters (it answers repeated requests from its cache).
    server: Stats,
    delivered: Vec<Bytes>,
    flipped: u32,
}

/// Makes one echo call at `level`; the first datagram of `kind` (a request
/// from the client, or a reply from the server) gets bit `bit(len)` flipped.
fn flip_one_bit(level: Level, seed: u64, kind: Kind, bit: fn(usize) -> usize) -> Tampered {
    let (mut sim, server, client, log) = pair(seed);
    let conn = connect(&mut sim, client, server, auth(level, USER)).unwrap();
    let flipped = Rc::new(RefCell::new(0u32));
    let count = flipped.clone();
    sim.set_filter(move |_from, _to, data| {
        if kind_of(data) == Some(kind) && *count.borrow() == 0 {
            let b = bit(data.len());
            data[b / 8] ^= 1 << (b % 8);
            *count.borrow_mut() += 1;
        }
        true
    });
    let call = start_call(&mut sim, client, conn, b"tamper with me");
    let result = finish_call(&mut sim, client, call);
    let receiver = match kind {
        Kind::Request => sim.endpoint(server).stats(),
        _ => sim.endpoint(client).conn_stats(conn).unwrap(),
    };
    let flipped = *flipped.borrow();
    Tampered {
        result,
        receiver,
        server: sim.endpoint(server).stats(),
        delivered: delivered(&log),
        flipped,
    }
}

/// Bits in the header fields a flip leaves parseable: packet number (the
/// AEAD nonce), call sequence number, opcode or result, timestamp.
const HEADER_BITS: [fn(usize) -> usize; 4] =
    [|_| 8 * 8 + 2, |_| 16 * 8, |_| 30 * 8 + 5, |_| 37 * 8 + 7];
const BODY_BITS: [fn(usize) -> usize; 2] = [|_| HEADER_BYTES * 8, |_| (HEADER_BYTES + 9) * 8 + 3];
const TRAILER_BITS: [fn(usize) -> usize; 2] = [|len| len * 8 - 1, |len| (len - 4) * 8];

/// The tampered datagram was dropped for `reason` (and for nothing else),
/// yet the call completed, and its request ran exactly once and unaltered.
fn assert_dropped_and_recovered(t: &Tampered, reason: Drop, case: &str) {
    assert_eq!(t.flipped, 1, "{case}: the filter flipped no bit");
    let reply = t.result.as_ref().unwrap_or_else(|e| panic!("{case}: {e}"));
    assert_eq!(reply.body, &b"tamper with me"[..], "{case}");
    assert_eq!(t.receiver.dropped(reason), 1, "{case}: {reason:?} drops");
    assert_eq!(
        t.receiver.drops_total(),
        1,
        "{case}: other drops {:?}",
        t.receiver.drops
    );
    assert_eq!(
        t.delivered,
        vec![Bytes::from_static(b"tamper with me")],
        "{case}: the server must run the unaltered request exactly once"
    );
}

#[test]
fn a_flipped_bit_in_a_sealed_request_header_is_forged_and_the_call_completes_by_retransmission() {
    for level in SEALED {
        for (i, bit) in HEADER_BITS.into_iter().enumerate() {
            let t = flip_one_bit(level, i as u64, Kind::Request, bit);
            assert_dropped_and_recovered(&t, Drop::Forged, &format!("{level:?} header bit {i}"));
            assert_eq!(t.server.duplicate_requests, 0);
        }
    }
}

#[test]
fn a_flipped_bit_in_a_sealed_request_body_or_tag_is_forged_and_the_call_completes_by_retransmission(
) {
    for level in SEALED {
        for (i, bit) in BODY_BITS.into_iter().chain(TRAILER_BITS).enumerate() {
            let t = flip_one_bit(level, i as u64, Kind::Request, bit);
            assert_dropped_and_recovered(&t, Drop::Forged, &format!("{level:?} body/tag bit {i}"));
            assert_eq!(t.server.duplicate_requests, 0);
        }
    }
}

#[test]
fn a_flipped_bit_in_a_sealed_reply_is_forged_at_the_client_and_the_reply_is_resent_from_the_cache()
{
    for level in SEALED {
        for (i, bit) in HEADER_BITS.into_iter().chain(BODY_BITS).enumerate() {
            let t = flip_one_bit(level, i as u64, Kind::Reply, bit);
            assert_dropped_and_recovered(&t, Drop::Forged, &format!("{level:?} reply bit {i}"));
            assert_eq!(
                t.server.duplicate_requests, 1,
                "{level:?} reply bit {i}: the retransmitted request is answered from the cache"
            );
        }
    }
}

#[test]
fn a_flipped_bit_in_a_clear_packet_fails_its_checksum_and_the_call_completes_by_retransmission() {
    let bits = HEADER_BITS.into_iter().chain(BODY_BITS).chain(TRAILER_BITS);
    for (i, bit) in bits.enumerate() {
        let t = flip_one_bit(Level::Clear, i as u64, Kind::Request, bit);
        assert_dropped_and_recovered(&t, Drop::Checksum, &format!("clear request bit {i}"));
        let t = flip_one_bit(Level::Clear, i as u64, Kind::Reply, bit);
        assert_dropped_and_recovered(&t, Drop::Checksum, &format!("clear reply bit {i}"));
    }
}

#[test]
fn a_replayed_request_is_dropped_as_a_replay_and_runs_only_once() {
    for level in LEVELS {
        let (mut sim, server, client, log) = pair(11);
        let conn = connect(&mut sim, client, server, auth(level, USER)).unwrap();
        let captured: Rc<RefCell<Option<Vec<u8>>>> = Default::default();
        let copy = captured.clone();
        sim.set_filter(move |_, _, data| {
            if kind_of(data) == Some(Kind::Request) && copy.borrow().is_none() {
                *copy.borrow_mut() = Some(data.clone());
            }
            true
        });
        echo(&mut sim, client, conn, b"transfer 100 to mallory");
        let replay = captured.borrow().clone().expect("no request captured");
        if level == Level::Encrypted {
            assert!(
                !replay.windows(8).any(|w| w == b"transfer"),
                "an encrypted body travels in clear"
            );
        }
        let client_addr = sim.addr(client);
        let server_before = sim.endpoint(server).stats();

        // At once, while the server still holds the reply ...
        sim.inject(client_addr, server, replay.clone());
        advance(&mut sim, Duration::from_secs(1));
        // ... and after it has forgotten it.
        advance(
            &mut sim,
            server_config().reply_keep + Duration::from_secs(5),
        );
        sim.inject(client_addr, server, replay.clone());
        advance(&mut sim, Duration::from_secs(1));

        let stats = sim.endpoint(server).stats();
        assert_eq!(stats.dropped(Drop::Replay), 2, "{level:?}");
        assert_eq!(stats.drops_total(), 2, "{level:?}: {:?}", stats.drops);
        assert_eq!(
            stats.duplicate_requests, server_before.duplicate_requests,
            "{level:?}: a replay must not reach the call table"
        );
        assert_eq!(
            stats.packets_sent, server_before.packets_sent,
            "{level:?}: a replay must not be answered"
        );
        assert_eq!(
            delivered(&log),
            vec![Bytes::from_static(b"transfer 100 to mallory")],
            "{level:?}: the request must run exactly once"
        );
        assert!(sim.nodes[client].events.is_empty(), "{level:?}");
    }
}

#[test]
fn a_request_spliced_onto_another_connection_is_forged_and_not_delivered_there() {
    for level in SEALED {
        let (mut sim, server, client, log) = pair(21);
        // Both connections bind with the same credentials, so the same
        // session key: only the per-connection keys tell them apart.
        let a = connect(&mut sim, client, server, auth(level, USER)).unwrap();
        let b = connect(&mut sim, client, server, auth(level, USER)).unwrap();
        let requests: Rc<RefCell<Vec<Vec<u8>>>> = Default::default();
        let copy = requests.clone();
        sim.set_filter(move |_, _, data| {
            if kind_of(data) == Some(Kind::Request) {
                copy.borrow_mut().push(data.clone());
            }
            true
        });
        echo(&mut sim, client, a, b"only for A");
        echo(&mut sim, client, b, b"only for B");
        let requests = requests.borrow().clone();
        assert_eq!(requests.len(), 2, "{level:?}: one request per call");
        let (a_server, b_server) = (conn_field(&requests[0]), conn_field(&requests[1]));
        assert_ne!(a_server, b_server);
        let accepted: Vec<u32> = log.borrow().accepted.iter().map(|(c, _)| c.0).collect();
        assert_eq!(accepted, vec![a_server, b_server], "{level:?}");

        let mut spliced = requests[0].clone();
        set_conn_field(&mut spliced, b_server);
        let client_addr = sim.addr(client);
        sim.inject(client_addr, server, spliced);
        advance(&mut sim, Duration::from_secs(1));

        let on_b = sim.endpoint(server).conn_stats(ConnId(b_server)).unwrap();
        let on_a = sim.endpoint(server).conn_stats(ConnId(a_server)).unwrap();
        assert_eq!(on_b.dropped(Drop::Forged), 1, "{level:?}");
        assert_eq!(on_b.drops_total(), 1, "{level:?}: {:?}", on_b.drops);
        assert_eq!(on_a.drops_total(), 0, "{level:?}: {:?}", on_a.drops);
        let on_b_requests: Vec<Bytes> = log
            .borrow()
            .requests
            .iter()
            .filter(|r| r.0.conn.0 == b_server)
            .map(|r| r.2.clone())
            .collect();
        assert_eq!(
            on_b_requests,
            vec![Bytes::from_static(b"only for B")],
            "{level:?}: nothing spliced may be delivered on B"
        );
        assert_eq!(log.borrow().requests.len(), 2, "{level:?}");
        assert!(sim.nodes[client].events.is_empty(), "{level:?}");
        // B is unharmed.
        echo(&mut sim, client, b, b"B again");
    }
}

/// Connects with `auth`, checks the bind is refused for `reject`, and that
/// the server accepted nothing and keeps no connection for it.
fn assert_refused(
    sim: &mut Sim,
    server: NodeId,
    client: NodeId,
    log: &Rc<RefCell<ServerLog>>,
    auth: Auth,
    reject: Reject,
    case: &str,
) {
    let result = connect(sim, client, server, auth);
    assert_eq!(result, Err(Error::Rejected(reject)), "{case}");
    assert!(log.borrow().accepted.is_empty(), "{case}: accepted");
    assert_eq!(sim.endpoint(server).connections(), 0, "{case}");
    assert_eq!(sim.endpoint(client).connections(), 0, "{case}");
}

#[test]
fn a_token_sealed_with_another_cell_key_or_made_of_garbage_is_refused_as_forged() {
    let (mut sim, server, client, log) = pair(31);
    let foreign = credentials(USER, 3600, [0x11; 32]);
    let mut cases = vec![
        (
            "foreign, authenticated",
            Auth::Authenticated(foreign.clone()),
        ),
        ("foreign, encrypted", Auth::Encrypted(foreign)),
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(31);
    for len in [0, 1, 40, 41, 57, 73, 200] {
        let mut sealed_token = vec![0u8; len];
        rng.fill_bytes(&mut sealed_token);
        if let Some(first) = sealed_token.first_mut() {
            *first = 1; // the token version, so the tag is what refuses it
        }
        let creds = Credentials {
            sealed_token,
            session_key: [USER as u8; 32],
        };
        cases.push(("garbage", Auth::Encrypted(creds.clone())));
        cases.push(("garbage", Auth::Authenticated(creds)));
    }
    let mut flipped = credentials(USER, 3600, CELL);
    let last = flipped.sealed_token.len() - 1;
    flipped.sealed_token[last] ^= 0x01;
    cases.push(("genuine with a flipped bit", Auth::Encrypted(flipped)));

    for (i, (case, auth)) in cases.into_iter().enumerate() {
        let case = format!("{case} #{i}");
        assert_refused(
            &mut sim,
            server,
            client,
            &log,
            auth,
            Reject::ForgedToken,
            &case,
        );
        let stats = sim.endpoint(server).stats();
        assert_eq!(stats.dropped(Drop::ForgedToken), i as u64 + 1, "{case}");
        assert_eq!(
            stats.drops_total(),
            i as u64 + 1,
            "{case}: {:?}",
            stats.drops
        );
    }
    assert!(log.borrow().requests.is_empty());
}

#[test]
fn an_expired_token_is_refused_as_expired() {
    let (mut sim, server, client, log) = pair(41);
    // Expires at the moment it is issued.
    let cases = [
        Auth::Authenticated(credentials(USER, 0, CELL)),
        Auth::Encrypted(credentials(USER, 0, CELL)),
    ];
    for (i, auth) in cases.into_iter().enumerate() {
        assert_refused(
            &mut sim,
            server,
            client,
            &log,
            auth,
            Reject::ExpiredToken,
            &format!("zero lifetime #{i}"),
        );
        let stats = sim.endpoint(server).stats();
        assert_eq!(stats.dropped(Drop::ExpiredToken), i as u64 + 1);
        assert_eq!(stats.drops_total(), i as u64 + 1, "{:?}", stats.drops);
    }

    // A token good for a minute binds now, and not after that minute.
    let minute = credentials(USER, 60, CELL);
    let conn = connect(&mut sim, client, server, Auth::Encrypted(minute.clone())).unwrap();
    let now = sim.now;
    sim.endpoint(client).close(now, conn);
    advance(&mut sim, Duration::from_secs(61));
    log.borrow_mut().accepted.clear();
    assert_refused(
        &mut sim,
        server,
        client,
        &log,
        Auth::Encrypted(minute),
        Reject::ExpiredToken,
        "after its lifetime",
    );
    assert_eq!(sim.endpoint(server).stats().dropped(Drop::ExpiredToken), 3);
}

#[test]
fn a_client_with_a_genuine_token_but_not_its_session_key_cannot_bind() {
    for level in SEALED {
        let (mut sim, server, client, log) = pair(51);
        let proofs: Rc<RefCell<u32>> = Default::default();
        let count = proofs.clone();
        sim.set_filter(move |_, _, data| {
            if kind_of(data) == Some(Kind::BindProof) {
                *count.borrow_mut() += 1;
            }
            true
        });
        let mut stolen = credentials(USER, 3600, CELL);
        stolen.session_key = [0xee; 32];
        let auth = match level {
            Level::Authenticated => Auth::Authenticated(stolen),
            _ => Auth::Encrypted(stolen),
        };
        let start = sim.now;
        // The client refuses the server's proof, so it never proves
        // anything itself and gives up after the peer timeout.
        assert_eq!(
            connect(&mut sim, client, server, auth),
            Err(Error::Timeout),
            "{level:?}"
        );
        let took = sim.now.since(start);
        assert!(took >= client_config().peer_timeout, "{level:?}: {took:?}");
        let client_stats = sim.endpoint(client).stats();
        assert!(
            client_stats.dropped(Drop::BadProof) >= 1,
            "{level:?}: {:?}",
            client_stats.drops
        );
        assert_eq!(
            client_stats.drops_total(),
            client_stats.dropped(Drop::BadProof),
            "{level:?}: {:?}",
            client_stats.drops
        );
        assert_eq!(*proofs.borrow(), 0, "{level:?}: a proof was sent");
        advance(&mut sim, Duration::from_secs(20));
        assert!(log.borrow().accepted.is_empty(), "{level:?}: accepted");
        assert_eq!(
            sim.endpoint(server).connections(),
            0,
            "{level:?}: the half-open bind must expire"
        );
        assert_eq!(sim.endpoint(client).connections(), 0, "{level:?}");
    }
}

#[test]
fn a_bind_proof_forged_without_the_session_key_is_refused_by_the_server() {
    for level in SEALED {
        let (mut sim, server, client, log) = pair(61);
        // The genuine proof never arrives; an attacker who saw it (and the
        // challenge) sends others.
        let genuine: Rc<RefCell<Option<Vec<u8>>>> = Default::default();
        let copy = genuine.clone();
        sim.set_filter(move |_, _, data| {
            if kind_of(data) == Some(Kind::BindProof) {
                copy.borrow_mut().get_or_insert_with(|| data.clone());
                return false;
            }
            true
        });
        let (now, addr) = (sim.now, sim.addr(server));
        let conn = sim.endpoint(client).connect(now, addr, auth(level, USER));
        assert!(sim.run_until(Duration::from_secs(5), |_| genuine.borrow().is_some()));
        let genuine = genuine.borrow().clone().unwrap();
        let client_addr = sim.addr(client);
        let forgeries = [[0u8; 32], [0xff; 32], {
            let mut p: [u8; 32] = genuine[HEADER_BYTES..HEADER_BYTES + 32].try_into().unwrap();
            p[17] ^= 0x40;
            p
        }];
        for proof in forgeries {
            let mut forged = genuine[..genuine.len() - CRC_BYTES].to_vec();
            forged[HEADER_BYTES..].copy_from_slice(&proof);
            secure::seal(Level::Clear, None, 0, &mut forged);
            sim.inject(client_addr, server, forged);
        }
        let mut failed = None;
        assert!(sim.run_until(Duration::from_secs(30), |s| {
            while let Some(e) = s.nodes[client].events.pop_front() {
                match e {
                    Event::ConnectFailed { conn: c, error } if c == conn => failed = Some(error),
                    other => panic!("{level:?}: unexpected {other:?}"),
                }
            }
            failed.is_some()
        }));
        assert_eq!(failed, Some(Error::Timeout), "{level:?}");
        let stats = sim.endpoint(server).stats();
        assert_eq!(
            stats.dropped(Drop::BadProof),
            3,
            "{level:?}: {:?}",
            stats.drops
        );
        assert!(log.borrow().accepted.is_empty(), "{level:?}: accepted");
    }
}

#[test]
fn a_server_with_an_encrypted_minimum_refuses_anonymous_and_authenticated_binds() {
    let mut sim = Sim::new(71, NetConfig::default());
    let server = sim.add(
        "server",
        coda_rpc2::Config {
            level_min: Level::Encrypted,
            ..server_config()
        },
    );
    let client = sim.add("client", client_config());
    let log = serve_echo_logged(&mut sim, server);
    assert_refused(
        &mut sim,
        server,
        client,
        &log,
        Auth::Anonymous,
        Reject::LevelRefused,
        "anonymous",
    );
    assert_refused(
        &mut sim,
        server,
        client,
        &log,
        auth(Level::Authenticated, USER),
        Reject::LevelRefused,
        "authenticated",
    );
    let stats = sim.endpoint(server).stats();
    assert_eq!(stats.dropped(Drop::Refused), 2, "{:?}", stats.drops);
    assert_eq!(stats.drops_total(), 2, "{:?}", stats.drops);
    let conn = connect(&mut sim, client, server, auth(Level::Encrypted, USER)).unwrap();
    echo(&mut sim, client, conn, b"encrypted is enough");
    let identity = Identity {
        user_id: Some(USER),
        level: Level::Encrypted,
    };
    assert_eq!(log.borrow().accepted.len(), 1);
    assert_eq!(log.borrow().accepted[0].1, identity);
}

#[test]
fn an_anonymous_connection_has_no_user_and_an_authenticated_one_has_its_user() {
    let (mut sim, server, client, log) = pair(81);
    let cases = [
        (Level::Clear, None),
        (Level::Authenticated, Some(8)),
        (Level::Encrypted, Some(9)),
    ];
    for (i, (level, user)) in cases.into_iter().enumerate() {
        let conn = connect(&mut sim, client, server, auth(level, user.unwrap_or(0))).unwrap();
        echo(&mut sim, client, conn, level_name(level).as_bytes());
        let expected = Identity {
            user_id: user,
            level,
        };
        let log = log.borrow();
        let (server_conn, accepted) = log.accepted[i];
        assert_eq!(accepted, expected, "{level:?}: accepted");
        let (id, request_identity, ref body) = log.requests[i];
        assert_eq!(id.conn, server_conn, "{level:?}");
        assert_eq!(body, level_name(level).as_bytes());
        assert_eq!(request_identity, expected, "{level:?}: request");
        assert_eq!(
            sim.endpoint(server).identity(server_conn),
            Some(expected),
            "{level:?}"
        );
    }
}

fn level_name(level: Level) -> String {
    format!("{level:?}")
}

#[test]
fn a_packet_with_the_right_connection_id_from_another_address_is_dropped_as_wrong_peer() {
    for level in LEVELS {
        let (mut sim, server, client, log) = pair(91);
        let mallory = sim.add("mallory", client_config());
        let conn = connect(&mut sim, client, server, auth(level, USER)).unwrap();
        // The genuine request is taken off the wire, never delivered: the
        // copy from the other address is the first the server sees.
        let captured: Rc<RefCell<Option<Vec<u8>>>> = Default::default();
        let copy = captured.clone();
        sim.set_filter(move |_, _, data| {
            if kind_of(data) == Some(Kind::Request) && copy.borrow().is_none() {
                *copy.borrow_mut() = Some(data.clone());
                return false;
            }
            true
        });
        let call = start_call(&mut sim, client, conn, b"from the client only");
        advance(&mut sim, Duration::from_millis(1));
        assert!(
            captured.borrow().is_some(),
            "{level:?}: no request captured"
        );
        let stolen = captured.borrow().clone().unwrap();
        let mallory_addr: SocketAddr = sim.addr(mallory);
        sim.inject(mallory_addr, server, stolen);
        // Long enough for the copy to arrive, not for the retransmission.
        advance(&mut sim, Duration::from_millis(50));
        let stats = sim.endpoint(server).stats();
        assert_eq!(
            stats.dropped(Drop::WrongPeer),
            1,
            "{level:?}: {:?}",
            stats.drops
        );
        assert_eq!(stats.drops_total(), 1, "{level:?}: {:?}", stats.drops);
        assert!(
            log.borrow().requests.is_empty(),
            "{level:?}: delivered from the wrong address"
        );
        assert_eq!(
            sim.endpoint(mallory).stats().packets_received,
            0,
            "{level:?}: the server answered the other address"
        );
        // The client's retransmission still gets through, once.
        let reply = finish_call(&mut sim, client, call).unwrap();
        assert_eq!(reply.body, &b"from the client only"[..]);
        assert_eq!(
            delivered(&log),
            vec![Bytes::from_static(b"from the client only")]
        );
        let (server_conn, _) = log.borrow().accepted[0];
        assert_eq!(
            sim.endpoint(server).peer(server_conn),
            Some(sim.addr(client))
        );
        assert!(sim.nodes[mallory].events.is_empty());
    }
}
