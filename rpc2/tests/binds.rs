//! The server's bound on binds in progress (`HALF_OPEN_MAX`), over the
//! simulated network: it counts only binds still in the challenge step, so
//! bound connections never fill it, binds stuck in that step do, past it a
//! server refuses with `Overload`, and it empties as stuck binds expire.

mod support;

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use coda_rpc2::config::HALF_OPEN_MAX;
use coda_rpc2::endpoint::{CallId, ConnId, Event};
use coda_rpc2::packet::Kind;
use coda_rpc2::sim::{NetConfig, NodeId, Sim};
use coda_rpc2::{Drop, Error, Level, Reject};
use support::*;

/// Moves the bind failures `node` reported into `outcomes`.
fn take_outcomes(sim: &mut Sim, node: NodeId, outcomes: &mut HashMap<ConnId, Error>) {
    while let Some(e) = sim.nodes[node].events.pop_front() {
        match e {
            Event::ConnectFailed { conn, error } => {
                let twice = outcomes.insert(conn, error);
                assert!(twice.is_none(), "two outcomes for {conn:?}");
            }
            other => panic!("unexpected event: {other:?}"),
        }
    }
}

/// How many binds ended each way, for failure messages.
fn summary(outcomes: &HashMap<ConnId, Error>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for e in outcomes.values() {
        *counts.entry(format!("{e:?}")).or_default() += 1;
    }
    counts
}

fn dropped(sim: &mut Sim, node: NodeId, reason: Drop) -> u64 {
    sim.endpoint(node).stats().dropped(reason)
}

fn echo_body(conn: ConnId) -> Bytes {
    Bytes::from(format!("echo on {conn:?}"))
}

/// Makes one ECHO call on each of `conns` at once and checks every reply.
fn echo_on(sim: &mut Sim, client: NodeId, conns: &[ConnId]) {
    let now = sim.now;
    let calls: Vec<(CallId, Bytes)> = conns
        .iter()
        .map(|&conn| {
            let body = echo_body(conn);
            let call = sim
                .endpoint(client)
                .call(now, conn, 9, ECHO, body.clone(), None)
                .unwrap_or_else(|e| panic!("call on {conn:?}: {e}"));
            (call, body)
        })
        .collect();
    let ids: Vec<CallId> = calls.iter().map(|c| c.0).collect();
    let mut results = wait_replies(sim, client, &ids);
    for (call, body) in calls {
        let reply = results
            .remove(&call)
            .unwrap()
            .unwrap_or_else(|e| panic!("call on {:?} failed: {e}", call.conn));
        assert_eq!(reply.body, body);
    }
}

#[test]
fn bound_connections_do_not_count_against_the_half_open_limit() {
    const BINDS: usize = HALF_OPEN_MAX + 1000;
    let mut sim = Sim::new(1, NetConfig::default());
    let server = sim.add("server", server_config());
    let client = sim.add("client", client_config());
    let log = serve_echo_logged(&mut sim, server);
    // One after another, each through the challenge step (sealed levels
    // only: a clear bind has none) and bound before the next starts.
    let mut conns = Vec::with_capacity(BINDS);
    for i in 0..BINDS {
        let level = if i % 4 == 3 {
            Level::Authenticated
        } else {
            Level::Encrypted
        };
        let conn = connect(&mut sim, client, server, auth(level, 1 + i as u32 % 97))
            .unwrap_or_else(|e| panic!("bind {i} of {BINDS} ({level:?}) failed: {e}"));
        conns.push((conn, level));
    }
    assert_eq!(sim.endpoint(server).connections(), BINDS);
    assert_eq!(sim.endpoint(client).connections(), BINDS);
    {
        let log = log.borrow();
        assert_eq!(log.accepted.len(), BINDS);
        for ((_, identity), (_, level)) in log.accepted.iter().zip(&conns) {
            assert_eq!(identity.level, *level);
        }
    }
    assert_eq!(dropped(&mut sim, server, Drop::Overload), 0);
    assert_eq!(sim.endpoint(server).stats().drops_total(), 0);

    // The very last connection, the ones around the limit and a few early
    // ones all still carry calls.
    let picks = [
        0,
        1,
        2,
        HALF_OPEN_MAX - 1,
        HALF_OPEN_MAX,
        HALF_OPEN_MAX + 1,
        BINDS - 2,
        BINDS - 1,
    ];
    let picked: Vec<ConnId> = picks.iter().map(|&i| conns[i].0).collect();
    echo_on(&mut sim, client, &picked);
    // Each request arrived with the level its connection was bound at.
    let log = log.borrow();
    assert_eq!(log.requests.len(), picks.len());
    for &i in &picks {
        let (conn, level) = conns[i];
        let body = echo_body(conn);
        let (_, identity, _) = log
            .requests
            .iter()
            .find(|r| r.2 == body)
            .unwrap_or_else(|| panic!("no request on connection {i}"));
        assert_eq!(identity.level, level, "connection {i}");
    }
    assert_eq!(dropped(&mut sim, server, Drop::Overload), 0);
}

#[test]
fn binds_stuck_in_the_challenge_step_fill_the_limit_then_expire() {
    const EXCESS: usize = 100;
    const BINDS: usize = HALF_OPEN_MAX + EXCESS;
    let mut sim = Sim::new(2, NetConfig::default());
    let server = sim.add("server", server_config());
    let flood = sim.add("flood", client_config());
    let bystander = sim.add("bystander", client_config());
    let latecomer = sim.add("latecomer", client_config());
    serve_echo(&mut sim, server);
    let peer_timeout = server_config().peer_timeout;

    // A connection bound before the flood keeps working through it.
    let bound = connect(&mut sim, bystander, server, auth(Level::Encrypted, 3)).unwrap();

    // The flood's proofs never arrive: its binds stay in the challenge step.
    let drop_proofs = Rc::new(Cell::new(true));
    let dropping = drop_proofs.clone();
    sim.set_filter(move |from, to, data| {
        !(dropping.get() && from == flood && to == server && kind_of(data) == Some(Kind::BindProof))
    });
    let (flood_start, addr) = (sim.now, sim.addr(server));
    let pending: Vec<ConnId> = (0..BINDS)
        .map(|i| {
            let level = if i % 2 == 0 {
                Level::Encrypted
            } else {
                Level::Authenticated
            };
            sim.endpoint(flood)
                .connect(flood_start, addr, auth(level, 1 + i as u32 % 97))
        })
        .collect();
    let mut outcomes: HashMap<ConnId, Error> = HashMap::new();

    // The excess is refused at once; the rest wait in the challenge step.
    let refused = sim.run_until(Duration::from_secs(1), |s| {
        take_outcomes(s, flood, &mut outcomes);
        outcomes.len() >= EXCESS
    });
    assert!(
        refused,
        "binds refused in the first second: {:?}",
        summary(&outcomes)
    );
    sim.run_for(Duration::from_millis(500));
    take_outcomes(&mut sim, flood, &mut outcomes);
    assert_eq!(outcomes.len(), EXCESS, "{:?}", summary(&outcomes));
    assert!(
        outcomes
            .values()
            .all(|e| *e == Error::Rejected(Reject::Overload)),
        "{:?}",
        summary(&outcomes)
    );
    assert_eq!(dropped(&mut sim, server, Drop::Overload), EXCESS as u64);
    // The bound connection and the challenged binds: no more.
    assert_eq!(sim.endpoint(server).connections(), 1 + HALF_OPEN_MAX);

    // While full, a new bind from elsewhere is refused too, and the bound
    // connection still carries calls.
    assert_eq!(
        connect(&mut sim, latecomer, server, auth(Level::Encrypted, 4)),
        Err(Error::Rejected(Reject::Overload))
    );
    assert_eq!(dropped(&mut sim, server, Drop::Overload), EXCESS as u64 + 1);
    echo_on(&mut sim, bystander, &[bound]);

    // The stuck binds time out at the flood and expire at the server.
    let expired = sim.run_until(peer_timeout + Duration::from_secs(2), |s| {
        take_outcomes(s, flood, &mut outcomes);
        outcomes.len() == BINDS && s.endpoint(server).connections() == 1
    });
    assert!(
        expired,
        "bind outcomes {:?}; server connections {}",
        summary(&outcomes),
        sim.endpoint(server).connections()
    );
    let took = sim.now.since(flood_start);
    assert!(
        took <= peer_timeout + Duration::from_millis(100),
        "{took:?}"
    );
    for conn in &pending {
        assert!(outcomes.contains_key(conn), "no outcome for {conn:?}");
    }
    let timeouts = outcomes.values().filter(|e| **e == Error::Timeout).count();
    assert_eq!(timeouts, HALF_OPEN_MAX, "{:?}", summary(&outcomes));
    assert_eq!(sim.endpoint(flood).connections(), 0);

    // Room again: a fresh client binds and calls, and so does the flood
    // once its proofs get through.
    let conn = connect(&mut sim, latecomer, server, auth(Level::Encrypted, 5)).unwrap();
    echo_on(&mut sim, latecomer, &[conn]);
    drop_proofs.set(false);
    let conns: Vec<ConnId> = [Level::Clear, Level::Authenticated, Level::Encrypted]
        .into_iter()
        .map(|level| connect(&mut sim, flood, server, auth(level, 6)).unwrap())
        .collect();
    echo_on(&mut sim, flood, &conns);
    echo_on(&mut sim, bystander, &[bound]);
    assert_eq!(dropped(&mut sim, server, Drop::Overload), EXCESS as u64 + 1);
}
