//! A replicated volume seen from the client. An update goes to every
//! reachable replica at once (COP1, in parallel as MultiRPC does); then the
//! replicas that applied it are told who else did (COP2), off the caller's
//! path, so an update costs one round trip. Where replicas answered
//! differently, or one comes back after being away, a replica is asked to
//! resolve the volume. Reads go to one preferred replica, kept while it
//! answers.

use std::net::SocketAddr;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coda_proto::fid::{StoreId, VolumeId};
use coda_proto::res::{Cop2, Cop2Entry, Resolve};
use coda_proto::vice::{self, op};
use coda_rpc2::codec;
use coda_rpc2::endpoint::{Reply, SideEffect};
use coda_rpc2::Credentials;

use crate::link::{Answer, Principal, Transport};

/// The calls that change a volume, sent to every replica.
pub fn is_update(opcode: u16) -> bool {
    matches!(
        opcode,
        op::STAGE | op::STORE | op::SET_ATTR | op::CREATE
            ..=op::SET_ACL | op::REINTEGRATE | op::REPAIR
    )
}

/// How long the other replicas get to answer an update once one has: a
/// replica slower than that is left out (as if down) rather than holding
/// up every update until its calls time out.
pub const REPLICA_GRACE: Duration = Duration::from_secs(2);

/// Calls `targets` at once, each with its own side effect; each answer,
/// or `None` for one that had not answered `grace` after the first did.
#[allow(clippy::too_many_arguments)]
pub fn multi_call(
    link: &Arc<dyn Transport>,
    targets: &[SocketAddr],
    who: Principal,
    creds: Option<&Credentials>,
    opcode: u16,
    body: &Bytes,
    effects: Vec<Option<SideEffect>>,
    grace: Duration,
) -> Vec<Option<Answer>> {
    let (tx, rx) = channel();
    for (i, (&addr, se)) in targets.iter().zip(effects).enumerate() {
        let (link, tx, creds, body) = (link.clone(), tx.clone(), creds.cloned(), body.clone());
        std::thread::spawn(move || {
            let a = link.call(addr, who, creds.as_ref(), vice::SUBSYSTEM, opcode, body, se);
            let _ = tx.send((i, a));
        });
    }
    drop(tx);
    let mut answers: Vec<Option<Answer>> = targets.iter().map(|_| None).collect();
    let mut deadline: Option<Instant> = None;
    for _ in targets {
        let got = match deadline {
            None => rx.recv().ok(),
            Some(d) => rx
                .recv_timeout(d.saturating_duration_since(Instant::now()))
                .ok(),
        };
        let Some((i, a)) = got else {
            break;
        };
        if a.as_ref().is_ok_and(|r| r.code == 0) && deadline.is_none() {
            deadline = Some(Instant::now() + grace);
        }
        answers[i] = Some(a);
    }
    answers
}

/// Second-phase work: COP2s and resolution requests.
struct Note {
    targets: Vec<SocketAddr>,
    who: Principal,
    creds: Option<Credentials>,
    what: What,
}

enum What {
    Cop2(Cop2),
    Resolve(Resolve),
}

/// Notes waiting together: COP2s of one volume for the same replicas and
/// user go in one call (piggy-backed, as Coda's did), so under load the
/// second phase costs far fewer calls than updates.
fn coalesce(notes: Vec<Note>) -> Vec<Note> {
    let mut out: Vec<Note> = Vec::new();
    for n in notes {
        if let (What::Cop2(c), Some(last)) = (&n.what, out.last_mut()) {
            if let What::Cop2(l) = &mut last.what {
                if l.volume == c.volume && last.targets == n.targets && last.who == n.who {
                    l.updates.extend(c.updates.iter().cloned());
                    continue;
                }
            }
        }
        out.push(n);
    }
    out
}

/// Sends COP2s and resolution requests from a thread of its own.
pub struct Notifier {
    tx: Sender<Note>,
}

impl Notifier {
    pub fn start(link: Arc<dyn Transport>) -> Notifier {
        let (tx, rx) = channel::<Note>();
        std::thread::Builder::new()
            .name("cop2".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut notes = vec![first];
                    notes.extend(rx.try_iter());
                    for n in coalesce(notes) {
                        let (opcode, body) = match &n.what {
                            What::Cop2(c) => (op::COP2, codec::to_bytes(c)),
                            What::Resolve(r) => (op::RESOLVE, codec::to_bytes(r)),
                        };
                        let effects = n.targets.iter().map(|_| None).collect();
                        let answers = multi_call(
                            &link,
                            &n.targets,
                            n.who,
                            n.creds.as_ref(),
                            opcode,
                            &body,
                            effects,
                            REPLICA_GRACE,
                        );
                        for a in answers {
                            match a {
                                Some(Ok(r)) if r.code != 0 => {
                                    tracing::debug!("second phase {opcode}: code {}", r.code)
                                }
                                Some(Ok(_)) => {}
                                Some(Err(e)) => tracing::debug!("second phase {opcode}: {e}"),
                                None => tracing::debug!("second phase {opcode}: no answer"),
                            }
                        }
                    }
                }
            })
            .expect("a thread");
        Notifier { tx }
    }

    /// Tells `applied` (the replicas in `slots`) that each applied `update`.
    pub fn cop2(
        &self,
        who: Principal,
        creds: Option<Credentials>,
        volume: VolumeId,
        update: StoreId,
        applied: Vec<(u32, SocketAddr)>,
    ) {
        let req = Cop2 {
            volume,
            updates: vec![Cop2Entry {
                store_id: update,
                slots: applied.iter().map(|(s, _)| *s).collect(),
            }],
        };
        let _ = self.tx.send(Note {
            targets: applied.into_iter().map(|(_, a)| a).collect(),
            who,
            creds,
            what: What::Cop2(req),
        });
    }

    /// Asks `at` to resolve `volume`.
    pub fn resolve(
        &self,
        who: Principal,
        creds: Option<Credentials>,
        volume: VolumeId,
        at: SocketAddr,
    ) {
        let req = Resolve {
            volume,
            fids: Vec::new(),
        };
        let _ = self.tx.send(Note {
            targets: vec![at],
            who,
            creds,
            what: What::Resolve(req),
        });
    }
}

/// What the replicas said to one update.
pub struct Outcome {
    /// The answer to give the caller: the first replica's (slot order)
    /// that applied it, else the first error.
    pub reply: Result<Reply, crate::link::LinkError>,
    /// The replicas that applied it.
    pub applied: Vec<(u32, SocketAddr)>,
    /// Whether replicas that answered disagreed.
    pub differ: bool,
}

/// Folds the answers of `targets` (slot, address) into one outcome.
pub fn outcome(targets: &[(u32, SocketAddr)], answers: Vec<Answer>) -> Outcome {
    assert!(!targets.is_empty(), "an update goes somewhere");
    let mut reply = None;
    let mut refused = None;
    let mut unreached = None;
    let mut applied = Vec::new();
    let mut codes = std::collections::BTreeSet::new();
    for (&(slot, addr), a) in targets.iter().zip(answers) {
        match a {
            Ok(r) => {
                codes.insert(r.code);
                if r.code == 0 {
                    applied.push((slot, addr));
                    reply.get_or_insert(Ok(r));
                } else {
                    refused.get_or_insert(Ok(r));
                }
            }
            Err(e) => {
                unreached.get_or_insert(Err(e));
            }
        }
    }
    Outcome {
        // A replica's refusal says more than one that did not answer.
        reply: reply
            .or(refused)
            .or(unreached)
            .expect("at least one target"),
        applied,
        differ: codes.len() > 1,
    }
}
