//! Callback promises over the simulated network: who gets a break for
//! which change, volume promises, validation, and clients that do not
//! answer.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use coda_proto::acl::{Acl, Rights, ADMINISTRATORS, ANY_USER};
use coda_proto::cml::{self, Op};
use coda_proto::fid::{Fid, StoreId, VolumeId};
use coda_proto::vice::{op, Reintegrate, ReintegrateReply, ValidateAttrs, ValidateAttrsReply};
use coda_vice::pdb::ADMIN_ID;
use support::*;

/// A world with a directory `d` everyone may change, and clients `a` and
/// `b` (alice and bob) of it.
fn setup(seed: u64) -> (World, Client, Client, Fid) {
    let mut w = World::new(seed);
    let mut adm = w.client(Some(ADMIN_ID));
    let root = w.root_fid();
    let d = w.mkdir(&mut adm, root, "d").unwrap().fid;
    let mut acl = Acl::default();
    acl.set(ANY_USER, Rights::parse("rl").unwrap(), false);
    acl.set(ADMINISTRATORS, Rights::ALL, false);
    acl.set(ALICE, Rights::ALL, false);
    acl.set(BOB, Rights::ALL, false);
    w.mutate(&mut adm, Op::SetAcl(cml::SetAcl { dir: d, acl }))
        .unwrap();
    let a = w.client(Some(ALICE));
    let b = w.client(Some(BOB));
    (w, a, b, d)
}

/// Every fid and volume named in the breaks `c` received so far; clears them.
fn take_breaks(c: &Client) -> (BTreeSet<Fid>, BTreeSet<VolumeId>) {
    let mut fids = BTreeSet::new();
    let mut vols = BTreeSet::new();
    for b in c.breaks.borrow_mut().drain(..) {
        fids.extend(b.fids);
        vols.extend(b.volumes);
    }
    (fids, vols)
}

fn validate(
    w: &mut World,
    c: &Client,
    volumes: Vec<(VolumeId, u64)>,
    fids: Vec<(Fid, StoreId)>,
) -> ValidateAttrsReply {
    w.vice(c, op::VALIDATE_ATTRS, &ValidateAttrs { volumes, fids })
        .unwrap()
}

fn set(fids: &[Fid]) -> BTreeSet<Fid> {
    fids.iter().copied().collect()
}

#[test]
fn a_store_breaks_the_promises_of_everyone_but_the_writer() {
    let (mut w, a, mut b, d) = setup(21);
    let f = w.create(&mut b, d, "f").unwrap().fid;
    let g = w.create(&mut b, d, "g").unwrap().fid;
    w.store(&mut b, f, b"one").unwrap();
    // Both cache f (a by its status, b by its data); a caches g too.
    w.get_attr(&a, f).unwrap();
    w.get_attr(&a, g).unwrap();
    w.fetch(&b, f).unwrap();
    let (sa, sb) = (w.server_conn(&a), w.server_conn(&b));
    assert!(w.svc().callbacks.holds(sa, f) && w.svc().callbacks.holds(sb, f));
    w.store(&mut b, f, b"two").unwrap();
    w.settle(&[&a, &b]);
    let (fids, vols) = take_breaks(&a);
    assert_eq!(fids, set(&[f]), "a hears of f, and of nothing else");
    assert!(vols.is_empty());
    assert!(b.breaks.borrow().is_empty(), "the writer hears nothing");
    // a's promise on f is gone, the one on g stays; the writer keeps its own.
    let svc = w.svc();
    assert!(!svc.callbacks.holds(sa, f));
    assert!(svc.callbacks.holds(sa, g));
    assert!(svc.callbacks.holds(sb, f));
    drop(svc);
    // No promise, no break: a second store tells a nothing.
    w.store(&mut b, f, b"three").unwrap();
    w.settle(&[&a, &b]);
    assert_eq!(take_breaks(&a), Default::default());
    // A fetch renews the promise; the break then comes with a's next call.
    assert_eq!(w.fetch(&a, f).unwrap().1, b"three");
    w.store(&mut b, f, b"four").unwrap();
    w.get_attr(&a, g).unwrap();
    assert_eq!(take_breaks(&a).0, set(&[f]));
    w.check();
}

#[test]
fn directory_updates_break_the_directory_and_what_they_touch() {
    let (mut w, a, mut b, d) = setup(22);
    let e = w.mkdir(&mut b, d, "e").unwrap().fid;
    let f = w.create(&mut b, d, "f").unwrap().fid;
    let g = w.create(&mut b, d, "g").unwrap().fid;
    let sa = w.server_conn(&a);

    // A create in a directory a listed.
    w.list(&a, d).unwrap();
    let n = w.create(&mut b, d, "new").unwrap().fid;
    w.settle(&[&a, &b]);
    assert_eq!(take_breaks(&a).0, set(&[d]));
    assert!(b.breaks.borrow().is_empty());

    // A rename from d into e: both directories and the object moved.
    w.list(&a, d).unwrap();
    w.list(&a, e).unwrap();
    w.get_attr(&a, f).unwrap();
    w.get_attr(&a, g).unwrap();
    let mv = Op::Rename(cml::Rename {
        from_dir: d,
        from_name: "f".into(),
        to_dir: e,
        to_name: "f2".into(),
        fid: f,
        replaced: None,
    });
    w.mutate(&mut b, mv).unwrap();
    w.settle(&[&a, &b]);
    assert_eq!(take_breaks(&a).0, set(&[d, e, f]));
    assert!(w.svc().callbacks.holds(sa, g), "g was not touched");

    // A remove: the directory and the file.
    w.list(&a, d).unwrap();
    w.remove(&mut b, d, "g", g).unwrap();
    w.settle(&[&a, &b]);
    assert_eq!(take_breaks(&a).0, set(&[d, g]));
    assert!(!w.svc().callbacks.holds(sa, g));

    // A remove of a directory.
    w.list(&a, e).unwrap();
    w.get_attr(&a, n).unwrap();
    w.remove(&mut b, e, "f2", f).unwrap();
    w.settle(&[&a, &b]);
    assert_eq!(take_breaks(&a).0, set(&[e]));
    w.list(&a, d).unwrap();
    w.list(&a, e).unwrap();
    w.mutate(
        &mut b,
        Op::RemoveDir(cml::RemoveDir {
            dir: d,
            name: "e".into(),
            fid: e,
        }),
    )
    .unwrap();
    w.settle(&[&a, &b]);
    assert_eq!(take_breaks(&a).0, set(&[d, e]));
    assert!(w.svc().callbacks.holds(sa, n));
    assert!(b.breaks.borrow().is_empty(), "the changer hears nothing");
    w.check();
}

#[test]
fn a_reintegrated_batch_breaks_promises_like_direct_updates() {
    let (mut w, a, mut b, d) = setup(23);
    let f = w.create(&mut b, d, "f").unwrap().fid;
    w.list(&a, d).unwrap();
    w.get_attr(&a, f).unwrap();
    w.list(&b, d).unwrap();
    let batch = b.sid();
    let local = b.local_fid(d.volume);
    let records = vec![
        b.record(Op::Create(cml::Create {
            dir: d,
            name: "from-batch".into(),
            fid: local,
            mode: 0o644,
            group: 0,
        })),
        b.record(Op::SetAttr(cml::SetAttr {
            fid: f,
            seen: w.seen(f),
            mode: Some(0o600),
            owner: None,
            mtime: None,
            length: None,
            group: None,
            atime: None,
        })),
    ];
    let r: ReintegrateReply = w
        .vice(
            &b,
            op::REINTEGRATE,
            &Reintegrate {
                volume: d.volume,
                batch,
                records: records.clone(),
            },
        )
        .unwrap();
    let ReintegrateReply::Applied(applied) = r else {
        panic!("conflict: {r:?}")
    };
    let made = applied.remaps(&records)[0].fid;
    w.settle(&[&a, &b]);
    let (fids, _) = take_breaks(&a);
    assert_eq!(fids, set(&[d, f]));
    assert!(
        !fids.contains(&made),
        "nobody held a promise on the new file"
    );
    assert!(b.breaks.borrow().is_empty());
}

#[test]
fn a_volume_promise_breaks_on_any_change_in_the_volume() {
    let (mut w, a, mut b, d) = setup(24);
    let root = w.root;
    let e = w.mkdir(&mut b, d, "e").unwrap().fid;
    let stamp = w.stamp(&a, root);
    // A stale stamp: not valid, and no promise.
    let r = validate(&mut w, &a, vec![(root, stamp - 1)], vec![]);
    assert_eq!(r.volumes, vec![false]);
    let sa = w.server_conn(&a);
    assert!(!w.svc().callbacks.holds_volume(sa, root));
    // The current stamp: valid, with a promise on the whole volume.
    let r = validate(&mut w, &a, vec![(root, stamp)], vec![]);
    assert_eq!(r.volumes, vec![true]);
    assert!(w.svc().callbacks.holds_volume(sa, root));
    // b's volume promise does not break for its own change.
    let r = validate(&mut w, &b, vec![(root, stamp)], vec![]);
    assert_eq!(r.volumes, vec![true]);
    // A change somewhere a never looked.
    w.create(&mut b, e, "deep").unwrap();
    w.settle(&[&a, &b]);
    let (fids, vols) = take_breaks(&a);
    assert_eq!(vols, BTreeSet::from([root]));
    assert!(
        fids.is_empty(),
        "a held no promise on the objects: {fids:?}"
    );
    assert!(b.breaks.borrow().is_empty());
    assert!(!w.svc().callbacks.holds_volume(sa, root));
    // The old stamp is stale now; the new one is good.
    let now = w.stamp(&a, root);
    assert!(now > stamp);
    let r = validate(&mut w, &a, vec![(root, stamp), (root, now)], vec![]);
    assert_eq!(r.volumes, vec![false, true]);
    // Another volume's change does not touch it.
    let other = w.new_volume("other", ADMIN_ID);
    let mut adm = w.client(Some(ADMIN_ID));
    w.create(&mut adm, Fid::root(other), "x").unwrap();
    w.settle(&[&a, &b]);
    assert_eq!(take_breaks(&a), Default::default());
    assert!(w.svc().callbacks.holds_volume(sa, root));
    w.check();
}

#[test]
fn validation_confirms_what_is_unchanged_and_promises_it() {
    let (mut w, a, mut b, d) = setup(25);
    let f = w.create(&mut b, d, "f").unwrap().fid;
    let g = w.create(&mut b, d, "g").unwrap().fid;
    let h = w.create(&mut b, d, "h").unwrap().fid;
    w.store(&mut b, f, b"f").unwrap();
    w.store(&mut b, g, b"g").unwrap();
    // What a cached while connected (no promises kept: a "reconnects").
    let seen: Vec<(Fid, StoreId)> = [f, g, h, d]
        .iter()
        .map(|&x| (x, w.get_attr(&a, x).unwrap().vv.store_id))
        .collect();
    let sa = w.server_conn(&a);
    w.svc().callbacks.drop_client(sa);
    // Meanwhile g changed and h went away.
    w.store(&mut b, g, b"g2").unwrap();
    w.remove(&mut b, d, "h", h).unwrap();
    let r = validate(&mut w, &a, vec![], seen.clone());
    assert_eq!(r.fids, vec![true, false, false, false]);
    // Only f is promised again.
    {
        let svc = w.svc();
        assert!(svc.callbacks.holds(sa, f));
        assert!(!svc.callbacks.holds(sa, g));
        assert!(!svc.callbacks.holds(sa, d));
    }
    // ... so a change of f is told, one of g is not.
    w.store(&mut b, f, b"f2").unwrap();
    w.store(&mut b, g, b"g3").unwrap();
    w.settle(&[&a, &b]);
    assert_eq!(take_breaks(&a).0, set(&[f]));
    // An object a may not see does not validate either.
    let mut adm = w.client(Some(ADMIN_ID));
    let mut acl = Acl::default();
    acl.set(ADMINISTRATORS, Rights::ALL, false);
    w.mutate(&mut adm, Op::SetAcl(cml::SetAcl { dir: d, acl }))
        .unwrap();
    let fresh = w.seen(f);
    let r = validate(&mut w, &a, vec![], vec![(f, fresh)]);
    assert_eq!(r.fids, vec![false]);
    let r = validate(&mut w, &adm, vec![], vec![(f, fresh)]);
    assert_eq!(r.fids, vec![true]);
}

#[test]
fn a_client_that_does_not_answer_loses_its_promises_and_delays_no_one() {
    let (mut w, a, mut b, d) = setup(26);
    let root = w.root;
    let f = w.create(&mut b, d, "f").unwrap().fid;
    let g = w.create(&mut b, d, "g").unwrap().fid;
    w.get_attr(&a, f).unwrap();
    w.get_attr(&a, g).unwrap();
    let stamp = w.stamp(&a, root);
    assert_eq!(
        validate(&mut w, &a, vec![(root, stamp)], vec![]).volumes,
        vec![true]
    );
    let sa = w.server_conn(&a);
    {
        let svc = w.svc();
        assert!(svc.callbacks.holds(sa, f) && svc.callbacks.holds(sa, g));
        assert!(svc.callbacks.holds_volume(sa, root));
    }
    w.sim.partition(a.node, w.server);
    // b's store must not wait for a.
    let before = w.sim.now;
    w.store(&mut b, f, b"while a is away").unwrap();
    let took = w.sim.now.since(before);
    assert!(took < Duration::from_secs(1), "the store took {took:?}");
    {
        let svc = w.svc();
        assert!(!svc.callbacks.holds(sa, f), "broken at once");
        assert!(!svc.callbacks.holds_volume(sa, root), "broken at once");
        assert!(svc.callbacks.holds(sa, g), "kept until the break fails");
    }
    // More changes meanwhile are just as quick.
    let before = w.sim.now;
    w.create(&mut b, d, "more").unwrap();
    assert!(w.sim.now.since(before) < Duration::from_secs(1));
    let held = w.svc().callbacks.count();
    // Past the peer timeout, the break has failed: a lost everything,
    // including the promise on g, which nothing changed.
    w.sim.run_for(Duration::from_secs(30));
    {
        let svc = w.svc();
        assert!(!svc.callbacks.holds(sa, g));
        assert_eq!(svc.callbacks.count(), held - 1, "a's promise on g went");
    }
    // b, who answered, still holds its own.
    let sb = w.server_conn(&b);
    assert!(w.svc().callbacks.holds(sb, f));
    // Changes after that are still quick, and tell nobody.
    let before = w.sim.now;
    w.store(&mut b, g, b"later").unwrap();
    assert!(w.sim.now.since(before) < Duration::from_secs(1));
    w.check();
}

/// Once the server has dropped a client's promises because a break could
/// not be delivered, the client must find out before it trusts its cache
/// again: either the break still reaches it, or its next call fails (so it
/// revalidates everything, as Coda's Venus does when a server tears down
/// its connection). Today the connection outlives the failed break and the
/// next call succeeds, so the client goes on believing it holds a promise
/// on an object that changed.
#[test]
fn a_client_whose_break_failed_learns_of_it_before_trusting_its_cache() {
    use coda_rpc2::endpoint::Event;
    let (mut w, a, mut b, d) = setup(27);
    let f = w.create(&mut b, d, "f").unwrap().fid;
    let g = w.create(&mut b, d, "g").unwrap().fid;
    w.get_attr(&a, f).unwrap();
    w.get_attr(&a, g).unwrap();
    let sa = w.server_conn(&a);
    w.sim.partition(a.node, w.server);
    w.store(&mut b, f, b"while a is away").unwrap();
    w.sim.run_for(Duration::from_secs(30));
    assert!(!w.svc().callbacks.holds(sa, g), "the break failed");
    w.sim.heal(a.node, w.server);
    // a's next call, on the connection it has.
    let now = w.sim.now;
    let body = coda_rpc2::codec::to_bytes(&coda_proto::vice::GetAttr { fid: g });
    let outcome = w
        .sim
        .endpoint(a.node)
        .call(
            now,
            a.conn,
            coda_proto::vice::SUBSYSTEM,
            op::GET_ATTR,
            body,
            None,
        )
        .map_err(|e| format!("{e}"));
    let mut succeeded = false;
    if let Ok(call) = outcome {
        let node = a.node;
        let breaks = a.breaks.clone();
        let mut done = false;
        w.sim.run_until(Duration::from_secs(60), |s| {
            while let Some(e) = s.nodes[node].events.pop_front() {
                match e {
                    Event::Reply { call: c, result } if c == call => {
                        succeeded = result.is_ok_and(|r| r.code == 0);
                        done = true;
                    }
                    Event::Lost { .. } => done = true,
                    Event::Request { id, body, .. } => {
                        breaks
                            .borrow_mut()
                            .push(coda_rpc2::codec::from_bytes(&body).unwrap());
                        let now = s.now;
                        let _ = s.endpoint(node).reply(now, id, 0, bytes::Bytes::new());
                    }
                    _ => {}
                }
            }
            done
        });
    }
    let told = take_breaks(&a).0.contains(&f);
    assert!(
        told || !succeeded,
        "a was never told that f changed, and its connection works as before"
    );
}
