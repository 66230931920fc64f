//! The protocol core over the seeded simulated network: lossy, duplicating,
//! reordering, partitioned. Each failure names the seed that replays it.

mod support;

use std::time::Duration;

use bytes::Bytes;
use coda_rpc2::endpoint::{Auth, Event, SideEffect};
use coda_rpc2::sim::{NetConfig, Sim};
use coda_rpc2::{Error, Sink, Source};
use support::*;

fn auth_for(seed: u64) -> Auth {
    match seed % 3 {
        0 => Auth::Anonymous,
        1 => Auth::Authenticated(credentials(7, 3600, CELL)),
        _ => Auth::Encrypted(credentials(7, 3600, CELL)),
    }
}

#[test]
fn calls_complete_exactly_once_under_loss_duplication_and_reordering() {
    let mut total_ok = 0;
    for seed in 0..24 {
        let mut sim = Sim::new(seed, lossy());
        let server = sim.add("server", server_config());
        let client = sim.add("client", client_config());
        let runs = serve_echo(&mut sim, server);
        let conn = connect(&mut sim, client, server, auth_for(seed)).unwrap();
        let mut calls = Vec::new();
        for i in 0..40u32 {
            // Some calls run longer than the retransmission timeout, a few
            // longer than the peer timeout: BUSY must keep them alive.
            let ms: u32 = match i % 10 {
                0 => 15_000,
                1 | 2 => 300,
                _ => 0,
            };
            let mut body = ms.to_le_bytes().to_vec();
            body.extend_from_slice(&i.to_le_bytes());
            body.extend(std::iter::repeat_n(i as u8, (i as usize * 37) % 3000));
            let now = sim.now;
            let call = sim
                .endpoint(client)
                .call(now, conn, 9, SLOW, Bytes::from(body.clone()), None)
                .unwrap();
            calls.push((call, body));
        }
        let ids: Vec<_> = calls.iter().map(|c| c.0).collect();
        let results = wait_replies(&mut sim, client, &ids);
        let mut ok = 0;
        for (call, body) in &calls {
            let runs = runs
                .borrow()
                .get(&Bytes::from(body.clone()))
                .copied()
                .unwrap_or(0);
            assert!(runs <= 1, "seed {seed}: request ran {runs} times");
            match &results[call] {
                Ok(reply) => {
                    assert_eq!(reply.body, body[..], "seed {seed}: wrong reply");
                    assert_eq!(runs, 1, "seed {seed}");
                    ok += 1;
                }
                Err(Error::Timeout) => eprintln!(
                    "seed {seed}: call {call:?} ({} ms) timed out",
                    u32::from_le_bytes(body[..4].try_into().unwrap())
                ),
                Err(e) => panic!("seed {seed}: call failed with {e}"),
            }
        }
        // A timeout is a correct outcome, but at 30% loss a rare one.
        assert!(
            ok >= calls.len() - 1,
            "seed {seed}: only {ok} calls succeeded"
        );
        total_ok += ok;
        let stats = sim.endpoint(client).conn_stats(conn).unwrap();
        assert!(
            stats.retransmissions > 0,
            "seed {seed}: loss must cause retransmissions"
        );
        assert!(
            stats.busies_received > 0,
            "seed {seed}: long calls must be kept alive by BUSY"
        );
    }
    assert!(total_ok >= 24 * 40 - 3, "{total_ok} calls succeeded");
}

fn transfer_sizes() -> Vec<usize> {
    vec![0, 1, 1400, 1401, 65_536, 300_001]
}

fn pattern(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(salt) ^ (i >> 8) as u8)
        .collect()
}

const FETCH: u16 = 10;
const STORE: u16 = 11;

/// A file server in miniature: FETCH pushes the body-named pattern, STORE
/// pulls into memory and replies with what arrived.
fn serve_files(sim: &mut Sim, server: coda_rpc2::sim::NodeId) {
    let mut pulls = std::collections::HashMap::new();
    sim.set_handler(server, move |ctx, event| match event {
        Event::Request {
            id,
            opcode: FETCH,
            body,
            ..
        } => {
            let len = u64::from_le_bytes(body[..8].try_into().unwrap()) as usize;
            let offset = u64::from_le_bytes(body[8..16].try_into().unwrap());
            let data = Bytes::from(pattern(len, body[16]));
            ctx.endpoint
                .sftp_send(ctx.now, id, Source::Memory(data), offset)
                .unwrap();
            None
        }
        Event::Request {
            id, opcode: STORE, ..
        } => {
            ctx.endpoint
                .sftp_receive(ctx.now, id, Sink::memory(1 << 30), 0)
                .unwrap();
            pulls.insert(id, ());
            None
        }
        Event::SftpDone { id, result } => {
            // Answer with the hash of what was pulled (nothing for a push).
            let (code, body) = match result {
                Ok(outcome) => {
                    let data = outcome.sink.map(Sink::into_bytes).unwrap_or_default();
                    (0, Bytes::copy_from_slice(blake3::hash(&data).as_bytes()))
                }
                Err(_) => (1, Bytes::new()),
            };
            let _ = pulls.remove(&id);
            let _ = ctx.endpoint.reply(ctx.now, id, code, body);
            None
        }
        Event::Accepted { .. } => None,
        other => Some(other),
    });
}

fn fetch_body(len: usize, offset: u64, salt: u8) -> Bytes {
    let mut b = (len as u64).to_le_bytes().to_vec();
    b.extend_from_slice(&offset.to_le_bytes());
    b.push(salt);
    Bytes::from(b)
}

#[test]
fn sftp_transfers_arrive_byte_exact_under_loss_duplication_and_reordering() {
    for seed in 0..12 {
        let mut sim = Sim::new(seed, lossy());
        let server = sim.add("server", server_config());
        let client = sim.add("client", client_config());
        serve_files(&mut sim, server);
        let conn = connect(&mut sim, client, server, auth_for(seed)).unwrap();
        let mut fetches = Vec::new();
        let mut stores = Vec::new();
        for (i, len) in transfer_sizes().into_iter().enumerate() {
            let salt = (seed as u8).wrapping_add(i as u8);
            let now = sim.now;
            let sink = SideEffect::Receive(Sink::memory(1 << 30));
            let call = sim
                .endpoint(client)
                .call(now, conn, 9, FETCH, fetch_body(len, 0, salt), Some(sink))
                .unwrap();
            fetches.push((call, pattern(len, salt)));
            let data = pattern(len, salt ^ 0xff);
            let source = SideEffect::Send(Source::Memory(Bytes::from(data.clone())));
            let call = sim
                .endpoint(client)
                .call(now, conn, 9, STORE, Bytes::new(), Some(source))
                .unwrap();
            stores.push((call, data));
        }
        let ids: Vec<_> = fetches.iter().chain(&stores).map(|c| c.0).collect();
        let mut results = wait_replies(&mut sim, client, &ids);
        for (call, expected) in fetches {
            let reply = results
                .remove(&call)
                .unwrap()
                .unwrap_or_else(|e| panic!("seed {seed}: fetch failed: {e}"));
            let got = reply.sink.unwrap().into_bytes();
            assert!(
                got == expected,
                "seed {seed}: fetch of {} bytes differs",
                expected.len()
            );
        }
        for (call, expected) in stores {
            let reply = results
                .remove(&call)
                .unwrap()
                .unwrap_or_else(|e| panic!("seed {seed}: store failed: {e}"));
            assert_eq!(reply.code, 0, "seed {seed}");
            assert!(
                reply.body == blake3::hash(&expected).as_bytes()[..],
                "seed {seed}: store of {} bytes differs",
                expected.len()
            );
        }
        let stats = sim.endpoint(client).conn_stats(conn).unwrap();
        assert!(
            stats.sftp_retransmissions > 0,
            "seed {seed}: loss must cause SFTP retransmissions"
        );
    }
}

#[test]
fn a_store_that_fits_its_request_datagram_travels_in_it() {
    let mut sim = Sim::new(3, NetConfig::default());
    let server = sim.add("server", server_config());
    let client = sim.add("client", client_config());
    // This STORE pulls from the offset its body names.
    sim.set_handler(server, |ctx, event| match event {
        Event::Request { id, body, .. } => {
            let offset = u64::from_le_bytes(body[..8].try_into().unwrap());
            let sink = Sink::memory(1 << 20);
            ctx.endpoint
                .sftp_receive(ctx.now, id, sink, offset)
                .unwrap();
            None
        }
        Event::SftpDone { id, result } => {
            let data = result.unwrap().sink.unwrap().into_bytes();
            ctx.endpoint.reply(ctx.now, id, 0, data.into()).unwrap();
            None
        }
        other => Some(other),
    });
    let conn = connect(&mut sim, client, server, auth_for(2)).unwrap();
    let before = sim.endpoint(client).conn_stats(conn).unwrap();
    let mut calls = Vec::new();
    for (len, offset) in [(0, 0), (1000, 0), (1000, 3), (10, 50)] {
        let data = pattern(len, 9);
        let source = SideEffect::Send(Source::Memory(Bytes::from(data.clone())));
        let body = Bytes::copy_from_slice(&(offset as u64).to_le_bytes());
        let now = sim.now;
        let call = sim
            .endpoint(client)
            .call(now, conn, 9, STORE, body, Some(source));
        // What the callee holds: the bytes from the offset on, in place.
        let mut want = data.clone();
        want[..offset.min(len)].fill(0);
        calls.push((call.unwrap(), want));
    }
    let ids: Vec<_> = calls.iter().map(|c| c.0).collect();
    let mut results = wait_replies(&mut sim, client, &ids);
    for (call, want) in calls {
        let reply = results.remove(&call).unwrap().unwrap();
        assert_eq!(reply.body[..], want[..]);
    }
    // One datagram each way per call: no start, data or ack packets.
    let after = sim.endpoint(client).conn_stats(conn).unwrap();
    assert_eq!(after.packets_sent - before.packets_sent, 4);
    assert_eq!(after.packets_received - before.packets_received, 4);
    assert_eq!(after.sftp_bytes_sent - before.sftp_bytes_sent, 2010);

    // Data too large for the request goes by SFTP, as ever.
    let data = pattern(5000, 1);
    let body = Bytes::copy_from_slice(&0u64.to_le_bytes());
    let reply = store(&mut sim, client, conn, body, &data);
    assert_eq!(reply.body[..], data[..]);
    let more = sim.endpoint(client).conn_stats(conn).unwrap();
    assert!(more.packets_sent - after.packets_sent > 2);
}

/// One STORE of `data` with `body`, waited for.
fn store(
    sim: &mut Sim,
    client: coda_rpc2::sim::NodeId,
    conn: coda_rpc2::endpoint::ConnId,
    body: Bytes,
    data: &[u8],
) -> coda_rpc2::endpoint::Reply {
    let source = SideEffect::Send(Source::Memory(Bytes::copy_from_slice(data)));
    let now = sim.now;
    let call = sim
        .endpoint(client)
        .call(now, conn, 9, STORE, body, Some(source))
        .unwrap();
    wait_replies(sim, client, &[call])
        .remove(&call)
        .unwrap()
        .unwrap()
}

/// A callee that pulls a store's data a second time gets it again at once
/// when it came inside the request, and an error at once when it came as
/// a transfer of its own: never a wait for the peer timeout.
#[test]
fn a_second_pull_of_a_stores_data_answers_at_once() {
    let mut sim = Sim::new(4, NetConfig::default());
    let server = sim.add("server", server_config());
    let client = sim.add("client", client_config());
    let mut pulled = std::collections::HashMap::new();
    sim.set_handler(server, move |ctx, event| match event {
        Event::Request { id, .. } => {
            let sink = Sink::memory(1 << 20);
            ctx.endpoint.sftp_receive(ctx.now, id, sink, 0).unwrap();
            None
        }
        Event::SftpDone { id, result } => {
            let data = result.unwrap().sink.unwrap().into_bytes();
            if pulled.insert(id, data.len()).is_none() {
                let sink = Sink::memory(1 << 20);
                let again = ctx.endpoint.sftp_receive(ctx.now, id, sink, 0);
                match (again, data.len() < 1400) {
                    (Ok(()), true) => return None,
                    (Err(Error::TransferOver), false) => {}
                    (r, _) => panic!("second pull of {} bytes: {r:?}", data.len()),
                }
            }
            let hash = Bytes::copy_from_slice(blake3::hash(&data).as_bytes());
            ctx.endpoint.reply(ctx.now, id, 0, hash).unwrap();
            None
        }
        other => Some(other),
    });
    let conn = connect(&mut sim, client, server, auth_for(2)).unwrap();
    for len in [1000, 100_000] {
        let data = pattern(len, 3);
        let now = sim.now;
        let reply = store(&mut sim, client, conn, Bytes::new(), &data);
        assert_eq!(
            reply.body[..],
            blake3::hash(&data).as_bytes()[..],
            "{len} bytes"
        );
        assert!(
            sim.now.since(now) < Duration::from_secs(1),
            "{len} bytes: {:?}",
            sim.now.since(now)
        );
    }
}

#[test]
fn an_interrupted_fetch_resumes_from_its_offset() {
    let mut sim = Sim::new(
        5,
        NetConfig {
            bandwidth: Some(1_000_000),
            ..NetConfig::default()
        },
    );
    let server = sim.add("server", server_config());
    let client = sim.add("client", client_config());
    serve_files(&mut sim, server);
    let conn = connect(&mut sim, client, server, Auth::Anonymous).unwrap();
    let len = 2_000_000;
    let expected = pattern(len, 1);
    let now = sim.now;
    let sink = SideEffect::Receive(Sink::memory(1 << 30));
    let call = sim
        .endpoint(client)
        .call(now, conn, 9, FETCH, fetch_body(len, 0, 1), Some(sink))
        .unwrap();
    // Cut the link half way: the call fails after the peer timeout.
    sim.run_for(Duration::from_millis(1000));
    sim.partition(client, server);
    let result = wait_replies(&mut sim, client, &[call])
        .remove(&call)
        .unwrap();
    assert_eq!(result.unwrap_err(), Error::Timeout);
    sim.heal(client, server);
    // Not kept by the failed call; the application resumes from what it
    // has. Here it has nothing, so ask for the second half and check it.
    let offset = len as u64 / 2;
    let now = sim.now;
    let sink = SideEffect::Receive(Sink::memory(1 << 30));
    let call = sim
        .endpoint(client)
        .call(now, conn, 9, FETCH, fetch_body(len, offset, 1), Some(sink))
        .unwrap();
    let reply = wait_replies(&mut sim, client, &[call])
        .remove(&call)
        .unwrap()
        .unwrap();
    assert_eq!(reply.sftp_bytes, len as u64 - offset);
    let got = reply.sink.unwrap().into_bytes();
    assert!(got[offset as usize..] == expected[offset as usize..]);
}

#[test]
fn a_partition_fails_calls_within_the_peer_timeout_and_heals() {
    for seed in 0..6 {
        let mut sim = Sim::new(seed, NetConfig::default());
        let server = sim.add("server", server_config());
        let client = sim.add("client", client_config());
        serve_echo(&mut sim, server);
        let conn = connect(&mut sim, client, server, auth_for(seed)).unwrap();
        sim.partition(client, server);
        let start = sim.now;
        let now = sim.now;
        let call = sim
            .endpoint(client)
            .call(now, conn, 9, ECHO, Bytes::from_static(b"x"), None)
            .unwrap();
        let result = wait_replies(&mut sim, client, &[call])
            .remove(&call)
            .unwrap();
        assert_eq!(result.unwrap_err(), Error::Timeout, "seed {seed}");
        let took = sim.now.since(start);
        let limit = client_config().peer_timeout;
        assert!(
            took >= limit && took <= limit + Duration::from_millis(100),
            "seed {seed}: {took:?}"
        );
        sim.heal(client, server);
        let now = sim.now;
        let call = sim
            .endpoint(client)
            .call(now, conn, 9, ECHO, Bytes::from_static(b"y"), None)
            .unwrap();
        let reply = wait_replies(&mut sim, client, &[call])
            .remove(&call)
            .unwrap()
            .unwrap();
        assert_eq!(reply.body, &b"y"[..]);
    }
}

#[test]
fn multirpc_with_one_of_three_peers_dead_returns_two_results_and_one_timeout() {
    for seed in 0..6 {
        let mut sim = Sim::new(seed, lossy());
        let servers: Vec<_> = (0..3)
            .map(|i| sim.add(&format!("server{i}"), server_config()))
            .collect();
        let client = sim.add("client", client_config());
        let mut conns = Vec::new();
        for &s in &servers {
            serve_echo(&mut sim, s);
            conns.push(
                connect(
                    &mut sim,
                    client,
                    s,
                    Auth::Encrypted(credentials(3, 3600, CELL)),
                )
                .unwrap(),
            );
        }
        sim.partition(client, servers[1]);
        let start = sim.now;
        let now = sim.now;
        let calls: Vec<_> = sim
            .endpoint(client)
            .multi_call(now, &conns, 9, ECHO, Bytes::from_static(b"all"))
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let results = wait_replies(&mut sim, client, &calls);
        assert_eq!(results[&calls[0]].as_ref().unwrap().body, &b"all"[..]);
        assert_eq!(results[&calls[2]].as_ref().unwrap().body, &b"all"[..]);
        assert_eq!(results[&calls[1]].as_ref().unwrap_err(), &Error::Timeout);
        let took = sim.now.since(start);
        assert!(
            took <= client_config().peer_timeout + Duration::from_millis(100),
            "{took:?}"
        );
    }
}

#[test]
fn a_server_calls_its_client_back_over_the_same_connection() {
    let mut sim = Sim::new(1, lossy());
    let server = sim.add("server", server_config());
    let client = sim.add("client", client_config());
    let (now, addr) = (sim.now, sim.addr(server));
    let conn =
        sim.endpoint(client)
            .connect(now, addr, Auth::Authenticated(credentials(9, 3600, CELL)));
    let mut server_conn = None;
    assert!(sim.run_until(Duration::from_secs(60), |s| {
        while let Some(e) = s.nodes[server].events.pop_front() {
            if let Event::Accepted { conn, identity, .. } = e {
                assert_eq!(identity.user_id, Some(9));
                server_conn = Some(conn);
            }
        }
        server_conn.is_some()
            && s.nodes[client]
                .events
                .iter()
                .any(|e| matches!(e, Event::Connected { .. }))
    }));
    sim.nodes[client].events.clear();
    serve_echo(&mut sim, client); // the client answers callback breaks
    let sc = server_conn.unwrap();
    let now = sim.now;
    let call = sim
        .endpoint(server)
        .call(now, sc, 2, ECHO, Bytes::from_static(b"break"), None)
        .unwrap();
    let reply = wait_replies(&mut sim, server, &[call])
        .remove(&call)
        .unwrap()
        .unwrap();
    assert_eq!(reply.body, &b"break"[..]);
    // And the client's own calls still work.
    sim.set_handler(server, |ctx, e| match e {
        Event::Request { id, body, .. } => {
            ctx.endpoint.reply(ctx.now, id, 0, body).unwrap();
            None
        }
        other => Some(other),
    });
    let now = sim.now;
    let call = sim
        .endpoint(client)
        .call(now, conn, 1, ECHO, Bytes::from_static(b"fetch"), None)
        .unwrap();
    let reply = wait_replies(&mut sim, client, &[call])
        .remove(&call)
        .unwrap()
        .unwrap();
    assert_eq!(reply.body, &b"fetch"[..]);
}
