//! The service on a node of the simulated network: in-process tests of
//! the server (and later of Venus against it) run over it, reproducibly
//! from a seed. Commits are flushed before their replies go, as the real
//! server's flush driver does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use coda_rpc2::endpoint::{CallId, Endpoint, Event};
use coda_rpc2::sim::{NodeId, Sim};
use coda_rpc2::{IncomingId, Time};

use crate::service::{Action, Service, BREAK_CALL};

/// Serves `service` on `node`; events it does not take stay in the node's queue.
pub fn serve(sim: &mut Sim, node: NodeId, service: Rc<RefCell<Service>>) {
    let breaks: Rc<RefCell<HashMap<CallId, coda_rpc2::ConnId>>> = Default::default();
    sim.set_handler(node, move |ctx, event| {
        let mut svc = service.borrow_mut();
        let mut out = Vec::new();
        match event {
            Event::Accepted { conn, identity, .. } => svc.accepted(conn, identity),
            Event::Request {
                id,
                identity,
                subsystem,
                opcode,
                body,
            } => svc.request(id, identity, subsystem, opcode, body, &mut out),
            Event::SftpDone { id, result } => svc.sftp_done(id, result, &mut out),
            Event::Lost { conn, .. } => svc.client_lost(conn),
            Event::Reply { call, result } => match breaks.borrow_mut().remove(&call) {
                Some(conn) => {
                    if result.is_err() {
                        svc.break_failed(conn, &mut out);
                    }
                }
                None => return Some(Event::Reply { call, result }),
            },
            other => return Some(other),
        }
        run(
            &mut svc,
            ctx.endpoint,
            ctx.now,
            out,
            &mut breaks.borrow_mut(),
        );
        None
    });
}

fn run(
    svc: &mut Service,
    ep: &mut Endpoint,
    now: Time,
    actions: Vec<Action>,
    breaks: &mut HashMap<CallId, coda_rpc2::ConnId>,
) {
    let mut actions = std::collections::VecDeque::from(actions);
    while let Some(a) = actions.pop_front() {
        match a {
            Action::Reply {
                id,
                code,
                body,
                after,
            } => {
                if after.is_some() {
                    svc.shard.flush().expect("flush");
                }
                reply(ep, now, id, code, body);
            }
            Action::Push { id, source, offset } => {
                let _ = ep.sftp_send(now, id, source, offset);
            }
            Action::Pull { id, sink, offset } => {
                let _ = ep.sftp_receive(now, id, sink, offset);
            }
            Action::Break { conn, body } => {
                match ep.call(now, conn, BREAK_CALL.0, BREAK_CALL.1, body, None) {
                    Ok(call) => {
                        breaks.insert(call, conn);
                    }
                    Err(_) => {
                        let mut more = Vec::new();
                        svc.break_failed(conn, &mut more);
                        actions.extend(more);
                    }
                }
            }
            Action::Close { conn } => ep.close(now, conn),
            // Resolution runs where the test says (it calls other nodes).
            Action::Resolve { .. } => {}
            // A simulated server is a cell of its own.
            Action::Cell { id, .. } => actions.push_back(Action::Reply {
                id,
                code: coda_proto::Errno::NOT_SCM.0,
                body: bytes::Bytes::new(),
                after: None,
            }),
            Action::Sync { containers, then } => {
                let hash = then.wants_hashes();
                let c = &svc.shard.containers;
                let synced = containers
                    .iter()
                    .map(|&id| match hash {
                        true => c.hash_and_sync(id),
                        false => c.sync(&c.open_read(id)?).map(|()| [0; 32]),
                    })
                    .collect();
                let mut more = Vec::new();
                svc.synced(then, synced, &mut more);
                actions.extend(more);
            }
            Action::Delegate { id, job, .. } => {
                // One shard per simulated server.
                let mut more = Vec::new();
                let done = svc.run_job(job, &mut more);
                actions.extend(more);
                if done.after.is_some() {
                    svc.shard.flush().expect("flush");
                }
                reply(ep, now, id, done.code, done.body);
            }
        }
    }
}

fn reply(ep: &mut Endpoint, now: Time, id: IncomingId, code: u16, body: bytes::Bytes) {
    if let Err(e) = ep.reply(now, id, code, body) {
        tracing::debug!("reply to {id:?} not sent: {e}");
    }
}
