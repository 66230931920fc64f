//! A replicated volume seen from the client. An update goes to every
//! reachable replica at once (COP1, in parallel as MultiRPC does); then the
//! replicas that applied it are told who else did (COP2), carried on the
//! volume's next update or sent on its own a little later, so an update
//! costs one call to each replica. Where replicas answered
//! differently, or one comes back after being away, a replica is asked to
//! resolve the volume. Reads go to one preferred replica, kept while it
//! answers.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coda_proto::fid::{StoreId, VolumeId};
use coda_proto::res::{Cop2, Cop2Entry, Resolve};
use coda_proto::vice::{self, op};
use coda_rpc2::codec;
use coda_rpc2::endpoint::Reply;
use coda_rpc2::Credentials;

use crate::link::{Answer, Principal, Transport};

/// How long the other replicas get to answer an update once one has: a
/// replica slower than that is left out (as if down) rather than holding
/// up every update until its calls time out.
pub const REPLICA_GRACE: Duration = Duration::from_secs(2);

/// How long a COP2 waits for the next update to the volume to carry it
/// (piggy-backed, as Coda's did) before it is sent on its own. Until it
/// arrives the replicas' vectors stand apart over equal contents; a
/// resolution meanwhile joins them, and the late COP2 then counts for
/// nothing, so the delay costs no correctness.
pub const COP2_DELAY: Duration = Duration::from_millis(500);

/// Most updates one COP2 call names (about 30 bytes each: far below a
/// call body's limit).
const COP2_BATCH_MAX: usize = 1024;

/// Most updates carried on another call.
const PIGGY_MAX: usize = 64;

/// COP2s of one volume and user not yet sent.
struct Batch {
    creds: Option<Credentials>,
    /// The replicas that applied any of them.
    targets: BTreeSet<SocketAddr>,
    updates: Vec<Cop2Entry>,
    since: Instant,
}

type Waiting = HashMap<(VolumeId, Principal), Batch>;

/// Resolution requests, and wake-ups for a new COP2 batch.
enum Note {
    Wake,
    Resolve {
        who: Principal,
        creds: Option<Credentials>,
        req: Resolve,
        at: SocketAddr,
    },
}

/// The second phase: COP2s, carried on the volume's next update or sent
/// from a thread of its own, and resolution requests.
pub struct Notifier {
    tx: Sender<Note>,
    waiting: Arc<Mutex<Waiting>>,
}

impl Notifier {
    pub fn start(link: Arc<dyn Transport>) -> Notifier {
        let (tx, rx) = channel::<Note>();
        let waiting: Arc<Mutex<Waiting>> = Default::default();
        let shared = waiting.clone();
        std::thread::Builder::new()
            .name("cop2".into())
            .spawn(move || loop {
                let next = shared
                    .lock()
                    .expect("cop2 lock")
                    .values()
                    .map(|b| b.since + COP2_DELAY)
                    .min();
                // The Venus is going: what waits is sent now, then no more.
                let mut closing = false;
                let got = match next {
                    Some(at) => match rx.recv_timeout(at.saturating_duration_since(Instant::now()))
                    {
                        Err(RecvTimeoutError::Disconnected) => {
                            closing = true;
                            None
                        }
                        got => got.ok(),
                    },
                    None => match rx.recv() {
                        Ok(n) => Some(n),
                        Err(_) => return,
                    },
                };
                if let Some(Note::Resolve {
                    who,
                    creds,
                    req,
                    at,
                }) = got
                {
                    let body = codec::to_bytes(&req);
                    send(&link, &[at], who, creds.as_ref(), op::RESOLVE, &body);
                }
                for (vol, who, b) in due(&shared, closing) {
                    let targets: Vec<SocketAddr> = b.targets.into_iter().collect();
                    for chunk in b.updates.chunks(COP2_BATCH_MAX) {
                        let body = codec::to_bytes(&Cop2 {
                            volume: vol,
                            updates: chunk.to_vec(),
                        });
                        send(&link, &targets, who, b.creds.as_ref(), op::COP2, &body);
                    }
                }
                if closing {
                    return;
                }
            })
            .expect("a thread");
        Notifier { tx, waiting }
    }

    /// Notes that `applied` (the replicas in `slots`) each applied `update`.
    pub fn cop2(
        &self,
        who: Principal,
        creds: Option<Credentials>,
        volume: VolumeId,
        update: StoreId,
        applied: Vec<(u32, SocketAddr)>,
    ) {
        let mut w = self.waiting.lock().expect("cop2 lock");
        let b = w.entry((volume, who)).or_insert_with(|| Batch {
            creds: None,
            targets: BTreeSet::new(),
            updates: Vec::new(),
            since: Instant::now(),
        });
        let first = b.updates.is_empty();
        b.creds = creds;
        b.targets.extend(applied.iter().map(|(_, a)| *a));
        b.updates.push(Cop2Entry {
            store_id: update,
            slots: applied.iter().map(|(s, _)| *s).collect(),
        });
        if first || b.updates.len() > PIGGY_MAX {
            let _ = self.tx.send(Note::Wake);
        }
    }

    /// The COP2s of `volume` by `who` that a call to `targets` can carry:
    /// all of them, if each replica that applied one is among `targets`.
    pub fn piggy(&self, who: Principal, volume: VolumeId, targets: &[SocketAddr]) -> Option<Cop2> {
        let mut w = self.waiting.lock().expect("cop2 lock");
        let b = w.get(&(volume, who))?;
        if b.updates.len() > PIGGY_MAX || !b.targets.iter().all(|t| targets.contains(t)) {
            return None;
        }
        let b = w.remove(&(volume, who))?;
        Some(Cop2 {
            volume,
            updates: b.updates,
        })
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
        let _ = self.tx.send(Note::Resolve {
            who,
            creds,
            req,
            at,
        });
    }
}

/// The batches whose time is up, or too large to be carried (or all of
/// them), taken.
fn due(waiting: &Mutex<Waiting>, all: bool) -> Vec<(VolumeId, Principal, Batch)> {
    let mut w = waiting.lock().expect("cop2 lock");
    let now = Instant::now();
    let keys: Vec<(VolumeId, Principal)> = w
        .iter()
        .filter(|(_, b)| all || now >= b.since + COP2_DELAY || b.updates.len() > PIGGY_MAX)
        .map(|(k, _)| *k)
        .collect();
    keys.into_iter()
        .filter_map(|k| w.remove(&k).map(|b| (k.0, k.1, b)))
        .collect()
}

/// One second-phase call to `targets`; its failures only logged (a lost
/// COP2 or resolution request is made up by the servers' sweep).
fn send(
    link: &Arc<dyn Transport>,
    targets: &[SocketAddr],
    who: Principal,
    creds: Option<&Credentials>,
    opcode: u16,
    body: &Bytes,
) {
    let effects = targets.iter().map(|_| None).collect();
    for a in crate::link::multi_call(
        link,
        targets,
        who,
        creds,
        vice::SUBSYSTEM,
        opcode,
        body,
        effects,
        REPLICA_GRACE,
    ) {
        match a {
            Some(Ok(r)) if r.code != 0 => tracing::debug!("second phase {opcode}: code {}", r.code),
            Some(Ok(_)) => {}
            Some(Err(e)) => tracing::debug!("second phase {opcode}: {e}"),
            None => tracing::debug!("second phase {opcode}: no answer"),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::LinkError;
    use coda_rpc2::endpoint::SideEffect;

    /// Records the calls made, answering each with success.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<(SocketAddr, u16, Bytes)>>);

    impl Transport for Recorder {
        fn call(
            &self,
            addr: SocketAddr,
            _who: Principal,
            _creds: Option<&Credentials>,
            _subsystem: u16,
            opcode: u16,
            body: Bytes,
            _side_effect: Option<SideEffect>,
        ) -> Result<Reply, LinkError> {
            self.0.lock().unwrap().push((addr, opcode, body));
            Ok(Reply {
                code: 0,
                body: Bytes::new(),
                sink: None,
                sftp_bytes: 0,
            })
        }
        fn set_host(&self, _host: u64) {}
        fn rebinds(&self) -> u64 {
            0
        }
        fn forget_principal(&self, _who: Principal) {}
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], 2432))
    }

    fn sid(unique: u64) -> StoreId {
        StoreId { host: 7, unique }
    }

    const VOL: VolumeId = 0x7f00_0001;
    const WHO: Principal = Principal::User(1000);

    #[test]
    fn a_cop2_rides_on_the_next_update_to_the_replicas_that_applied_it() {
        let rec = Arc::new(Recorder::default());
        let n = Notifier::start(rec.clone());
        let applied = vec![(0, addr(1)), (1, addr(2))];
        n.cop2(WHO, None, VOL, sid(1), applied.clone());
        n.cop2(WHO, None, VOL, sid(2), applied);
        // Another user's update, or one to another volume, carries none.
        assert!(n
            .piggy(Principal::User(1001), VOL, &[addr(1), addr(2)])
            .is_none());
        assert!(n.piggy(WHO, VOL + 1, &[addr(1), addr(2)]).is_none());
        // Nor one that misses a replica that applied them.
        assert!(n.piggy(WHO, VOL, &[addr(1)]).is_none());
        let c = n
            .piggy(WHO, VOL, &[addr(1), addr(2), addr(3)])
            .expect("carried");
        assert_eq!(c.volume, VOL);
        let sids: Vec<StoreId> = c.updates.iter().map(|u| u.store_id).collect();
        assert_eq!(sids, vec![sid(1), sid(2)]);
        assert_eq!(c.updates[0].slots, vec![0, 1]);
        // Carried once, and never sent on its own.
        assert!(n.piggy(WHO, VOL, &[addr(1), addr(2)]).is_none());
        std::thread::sleep(COP2_DELAY * 3);
        assert!(rec.0.lock().unwrap().is_empty());
    }

    #[test]
    fn a_cop2_no_update_carries_is_sent_on_its_own_after_the_delay() {
        let rec = Arc::new(Recorder::default());
        let n = Notifier::start(rec.clone());
        let t = Instant::now();
        n.cop2(WHO, None, VOL, sid(1), vec![(0, addr(1)), (2, addr(3))]);
        while rec.0.lock().unwrap().len() < 2 {
            assert!(t.elapsed() < COP2_DELAY * 20, "never sent");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(t.elapsed() >= COP2_DELAY);
        let mut calls = rec.0.lock().unwrap().clone();
        calls.sort_by_key(|c| c.0);
        assert_eq!(
            calls.iter().map(|c| c.0).collect::<Vec<_>>(),
            vec![addr(1), addr(3)]
        );
        for (_, opcode, body) in calls {
            assert_eq!(opcode, op::COP2);
            let c: Cop2 = codec::from_bytes(&body).unwrap();
            assert_eq!(c.updates.len(), 1);
            assert_eq!(c.updates[0].slots, vec![0, 2]);
        }
        assert!(n.piggy(WHO, VOL, &[addr(1), addr(3)]).is_none());
    }

    #[test]
    fn cop2s_waiting_when_the_notifier_goes_are_sent() {
        let rec = Arc::new(Recorder::default());
        let n = Notifier::start(rec.clone());
        n.cop2(WHO, None, VOL, sid(1), vec![(0, addr(1))]);
        let t = Instant::now();
        drop(n);
        while rec.0.lock().unwrap().is_empty() {
            assert!(t.elapsed() < COP2_DELAY * 20, "never sent");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(rec.0.lock().unwrap()[0].1, op::COP2);
    }
}
