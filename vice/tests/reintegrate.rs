//! Reintegration over the simulated network: a disconnected client's
//! batch of updates applied all or none, with its made-up fids remapped,
//! conflicts found per object and per name, and a batch sent twice
//! recognised (across a restart too).

mod support;

use std::collections::BTreeSet;

use coda_proto::cml::{self, CmlRecord, Op};
use coda_proto::fid::{Fid, StoreId};
use coda_proto::vice::{op, AllocFids, Applied, Conflict, FidRange, GetAttr, ReintegrateReply};
use coda_proto::Errno;
use coda_vice::pdb::ADMIN_ID;
use support::*;

fn applied(r: Result<ReintegrateReply, Errno>) -> Applied {
    match r {
        Ok(ReintegrateReply::Applied(a)) => a,
        other => panic!("expected the batch applied, got {other:?}"),
    }
}

fn conflict(r: Result<ReintegrateReply, Errno>) -> Conflict {
    match r {
        Ok(ReintegrateReply::Conflict(c)) => c,
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Sends `data` ahead of the Store record `store_id` names.
fn stage(w: &mut World, c: &Client, store_id: StoreId, data: &[u8]) {
    let code = stage_at(w, c, store_id, data, data.len() as u64, 0);
    assert_eq!(code, 0, "stage failed: {}", Errno(code));
}

/// A Store record for `data`, staged already.
fn staged_store(w: &mut World, c: &mut Client, fid: Fid, seen: StoreId, data: &[u8]) -> CmlRecord {
    let rec = c.record(Op::Store(cml::Store {
        fid,
        seen,
        length: data.len() as u64,
        content_hash: *blake3::hash(data).as_bytes(),
    }));
    stage(w, c, rec.store_id, data);
    rec
}

fn names(w: &mut World, c: &Client, dir: Fid) -> BTreeSet<String> {
    w.list(c, dir)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_mixed_batch_is_applied_whole_with_every_local_fid_remapped() {
    let mut w = World::new(31);
    let mut a = w.client(Some(ADMIN_ID));
    let root = w.root_fid();
    let d = w.mkdir(&mut a, root, "d").unwrap().fid;
    let old = w.create(&mut a, d, "old").unwrap().fid;
    w.store(&mut a, old, b"moved along").unwrap();
    let gone = w.create(&mut a, d, "gone").unwrap().fid;
    let attr = w.create(&mut a, d, "attr").unwrap().fid;
    let stamp = w.stamp(&a, w.root);
    let files = w.svc().shard.meta.volume(w.root).unwrap().files();

    // What the client did while disconnected.
    let batch = a.sid();
    let new_dir = a.local_fid(w.root);
    let mkdir = a.record(Op::MakeDir(cml::MakeDir {
        dir: d,
        name: "new".into(),
        fid: new_dir,
        mode: 0o755,
        group: 0,
    }));
    let (create, file) = create_rec(&mut a, new_dir, "file");
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let store = staged_store(&mut w, &mut a, file, create.store_id, &data);
    let link = a.local_fid(w.root);
    let symlink = a.record(Op::SymLink(cml::SymLink {
        dir: new_dir,
        name: "link".into(),
        fid: link,
        target: "file".into(),
        mode: 0o777,
        group: 0,
    }));
    let rename = a.record(Op::Rename(cml::Rename {
        from_dir: d,
        from_name: "old".into(),
        to_dir: new_dir,
        to_name: "moved".into(),
        fid: old,
        replaced: None,
    }));
    let remove = a.record(Op::Remove(cml::Remove {
        dir: d,
        name: "gone".into(),
        fid: gone,
        seen: w.seen(gone),
    }));
    let setattr = a.record(Op::SetAttr(cml::SetAttr {
        fid: attr,
        seen: w.seen(attr),
        mode: Some(0o600),
        owner: None,
        mtime: None,
        length: None,
        group: None,
        atime: None,
    }));
    let records = vec![mkdir, create, store, symlink, rename, remove, setattr];
    let got = applied(reintegrate(&mut w, &a, batch, records.clone()));
    // The answer is compact; the client spells the remaps out from its records.
    assert_eq!(got.created, 3);
    let remaps = got.remaps(&records);

    // One remap per made-up fid, each to a fresh real fid of the volume.
    let remap = |local: Fid| {
        remaps
            .iter()
            .find(|r| r.local == local)
            .unwrap_or_else(|| panic!("no remap for {local}"))
            .fid
    };
    assert_eq!(remaps.len(), 3);
    let (new_dir, file, link) = (remap(new_dir), remap(file), remap(link));
    for fid in [new_dir, file, link] {
        assert!(!fid.is_local());
        assert_eq!(fid.volume, w.root);
    }
    assert_eq!(
        BTreeSet::from([new_dir, file, link]).len(),
        3,
        "distinct fids"
    );
    // One batch, one new stamp.
    assert_eq!(got.stamp, stamp + 1);
    assert_eq!(w.stamp(&a, w.root), stamp + 1);

    // Everything happened.
    assert_eq!(names(&mut w, &a, d), set(&["attr", "new"]));
    assert_eq!(entries_of(&w.list(&a, d).unwrap())["new"], new_dir);
    let inside = entries_of(&w.list(&a, new_dir).unwrap());
    assert_eq!(inside.len(), 3);
    assert_eq!(inside["file"], file);
    assert_eq!(inside["link"], link);
    assert_eq!(inside["moved"], old);
    assert_eq!(w.fetch(&a, file).unwrap().1, data);
    let st = w.get_attr(&a, file).unwrap();
    assert_eq!(st.parent, new_dir);
    assert_eq!(st.vv.store_id.host, a.host);
    let target: String = w.vice(&a, op::READ_LINK, &GetAttr { fid: link }).unwrap();
    assert_eq!(target, "file");
    assert_eq!(w.get_attr(&a, old).unwrap().parent, new_dir);
    assert_eq!(w.fetch(&a, old).unwrap().1, b"moved along");
    assert_eq!(w.get_attr(&a, gone), Err(Errno::ENOENT));
    assert_eq!(w.get_attr(&a, attr).unwrap().mode, 0o600);
    assert_eq!(w.get_attr(&a, d).unwrap().link_count, 3);
    assert_eq!(
        w.svc().shard.meta.volume(w.root).unwrap().files(),
        files + 3 - 1
    );
    w.check();
    w.restart();
    w.check();
    assert_eq!(w.fetch(&a, file).unwrap().1, data);
}

#[test]
fn remaps_hold_around_preallocated_fids_and_objects_gone_again() {
    let mut w = World::new(36);
    let mut a = w.client(Some(ADMIN_ID));
    let root = w.root_fid();
    let d = w.mkdir(&mut a, root, "d").unwrap().fid;
    // Fids asked for while connected, used while disconnected.
    let range: FidRange = w
        .vice(
            &a,
            op::ALLOC_FIDS,
            &AllocFids {
                volume: w.root,
                count: 2,
            },
        )
        .unwrap();
    let pre = range.fid(0).unwrap();

    let batch = a.sid();
    let (first, first_local) = create_rec(&mut a, d, "first");
    let pre_rec = a.record(Op::Create(cml::Create {
        dir: d,
        name: "pre".into(),
        fid: pre,
        mode: 0o644,
        group: 0,
    }));
    let (tmp, tmp_local) = create_rec(&mut a, d, "tmp");
    let rm_tmp = a.record(Op::Remove(cml::Remove {
        dir: d,
        name: "tmp".into(),
        fid: tmp_local,
        seen: tmp.store_id,
    }));
    let sub_local = a.local_fid(w.root);
    let sub = a.record(Op::MakeDir(cml::MakeDir {
        dir: d,
        name: "sub".into(),
        fid: sub_local,
        mode: 0o755,
        group: 0,
    }));
    let (deep, deep_local) = create_rec(&mut a, sub_local, "deep");
    let records = vec![first, pre_rec, tmp, rm_tmp, sub, deep];
    let got = applied(reintegrate(&mut w, &a, batch, records.clone()));
    let remaps = got.remaps(&records);
    let locals: Vec<Fid> = remaps.iter().map(|r| r.local).collect();
    assert_eq!(locals, vec![first_local, tmp_local, sub_local, deep_local]);
    assert_eq!(got.created, 4);
    let fid = |i: usize| remaps[i].fid;
    for r in &remaps {
        assert!(!r.fid.is_local());
        assert_ne!(r.fid.vnode, pre.vnode, "no clash with the preallocated fid");
    }
    // The client's reading of the answer names the objects the server made.
    let top = entries_of(&w.list(&a, d).unwrap());
    assert_eq!(top.len(), 3);
    assert_eq!(top["first"], fid(0));
    assert_eq!(top["pre"], pre);
    assert_eq!(top["sub"], fid(2));
    assert_eq!(entries_of(&w.list(&a, fid(2)).unwrap())["deep"], fid(3));
    assert_eq!(w.get_attr(&a, fid(1)), Err(Errno::ENOENT), "tmp is gone");
    assert_eq!(w.get_attr(&a, fid(3)).unwrap().parent, fid(2));
    w.check();
}

#[test]
fn a_stale_store_conflicts_and_nothing_in_the_batch_is_applied() {
    let mut w = World::new(32);
    let mut a = w.client(Some(ADMIN_ID));
    let mut b = w.client(Some(ADMIN_ID));
    let root = w.root_fid();
    let d = w.mkdir(&mut a, root, "d").unwrap().fid;
    let f = w.create(&mut a, d, "f").unwrap().fid;
    let g = w.create(&mut a, d, "g").unwrap().fid;
    w.store(&mut a, f, b"as a saw it").unwrap();
    let seen = w.seen(f);
    // b stores f after a saw it.
    w.store(&mut b, f, b"b's version").unwrap();
    let stamp = w.stamp(&a, w.root);
    let before = w.list(&a, d).unwrap();
    let g_seen = w.seen(g);

    let batch = a.sid();
    let (create, _) = create_rec(&mut a, d, "made");
    let touch_g = staged_store(&mut w, &mut a, g, g_seen, b"g's new data");
    let store_f = staged_store(&mut w, &mut a, f, seen, b"a's version");
    let (later, _) = create_rec(&mut a, d, "later");
    let records = vec![create, touch_g.clone(), store_f, later];
    let c = conflict(reintegrate(&mut w, &a, batch, records));
    assert_eq!(
        c,
        Conflict {
            index: 2,
            code: Errno::CONFLICT.0,
            fid: f,
        }
    );
    // Nothing of it: not the create before, not the store to g.
    assert_eq!(w.list(&a, d).unwrap(), before);
    assert_eq!(w.fetch(&a, f).unwrap().1, b"b's version");
    assert_eq!(w.fetch(&a, g).unwrap().1, b"");
    assert_eq!(w.seen(g), g_seen);
    assert_eq!(w.stamp(&a, w.root), stamp);
    w.check();

    // A batch that conflicted was not recorded: the client may send the
    // same batch id again with what it made of the conflict. The data it
    // staged is still held, and the store to g goes in this time.
    let (create, made) = create_rec(&mut a, d, "made");
    let records = vec![create, touch_g];
    let got = applied(reintegrate(&mut w, &a, batch, records.clone()));
    let remaps = got.remaps(&records);
    assert_eq!(remaps.len(), 1);
    assert_eq!(remaps[0].local, made);
    assert_eq!(entries_of(&w.list(&a, d).unwrap())["made"], remaps[0].fid);
    assert_eq!(names(&mut w, &a, d), set(&["f", "g", "made"]));
    assert_eq!(w.fetch(&a, g).unwrap().1, b"g's new data");
    assert_eq!(w.fetch(&a, f).unwrap().1, b"b's version");
    w.check();
}

#[test]
fn directory_updates_conflict_per_name_only() {
    let mut w = World::new(33);
    let mut a = w.client(Some(ADMIN_ID));
    let mut b = w.client(Some(ADMIN_ID));
    let root = w.root_fid();
    let d = w.mkdir(&mut a, root, "d").unwrap().fid;
    let z = w.create(&mut a, d, "z").unwrap().fid;

    // a, disconnected, creates "y" and "x"; meanwhile b creates "x".
    let batch = a.sid();
    let (y_rec, _) = create_rec(&mut a, d, "y");
    let (x_rec, _) = create_rec(&mut a, d, "x");
    let bx = w.create(&mut b, d, "x").unwrap().fid;
    let c = conflict(reintegrate(&mut w, &a, batch, vec![y_rec, x_rec]));
    assert_eq!(
        c,
        Conflict {
            index: 1,
            code: Errno::EEXIST.0,
            fid: d,
        }
    );
    assert_eq!(names(&mut w, &a, d), set(&["x", "z"]));
    assert_eq!(entries_of(&w.list(&a, d).unwrap())["x"], bx);

    // "y" alone does not conflict with b's "x", though both changed d.
    let batch = a.sid();
    let (y_rec, y_local) = create_rec(&mut a, d, "y");
    let records = vec![y_rec];
    let got = applied(reintegrate(&mut w, &a, batch, records.clone()));
    let remaps = got.remaps(&records);
    let y = remaps[0].fid;
    assert_eq!(remaps[0].local, y_local);
    assert_eq!(names(&mut w, &a, d), set(&["x", "y", "z"]));
    assert_eq!(entries_of(&w.list(&a, d).unwrap())["y"], y);

    // A remove conflicts when the name is bound to another object now.
    let z_seen = w.seen(z);
    w.remove(&mut b, d, "z", z).unwrap();
    let z2 = w.create(&mut b, d, "z").unwrap().fid;
    let batch = a.sid();
    let rm = a.record(Op::Remove(cml::Remove {
        dir: d,
        name: "z".into(),
        fid: z,
        seen: z_seen,
    }));
    let c = conflict(reintegrate(&mut w, &a, batch, vec![rm]));
    assert_eq!((c.index, c.code), (0, Errno::CONFLICT.0));
    assert_eq!(entries_of(&w.list(&a, d).unwrap())["z"], z2);
    // ... and a rename does when its target name was taken meanwhile.
    let batch = a.sid();
    let mv = a.record(Op::Rename(cml::Rename {
        from_dir: d,
        from_name: "y".into(),
        to_dir: d,
        to_name: "w".into(),
        fid: y,
        replaced: None,
    }));
    w.create(&mut b, d, "w").unwrap();
    let c = conflict(reintegrate(&mut w, &a, batch, vec![mv]));
    assert_eq!((c.index, c.code), (0, Errno::CONFLICT.0));
    assert_eq!(names(&mut w, &a, d), set(&["w", "x", "y", "z"]));
    // ... or when its source name is bound to another object now.
    let batch = a.sid();
    let mv = a.record(Op::Rename(cml::Rename {
        from_dir: d,
        from_name: "y".into(),
        to_dir: d,
        to_name: "v".into(),
        fid: y,
        replaced: None,
    }));
    let by = w.seen(y);
    w.remove(&mut b, d, "y", y).unwrap();
    let y2 = w.create(&mut b, d, "y").unwrap().fid;
    let c = conflict(reintegrate(&mut w, &a, batch, vec![mv]));
    assert_eq!((c.index, c.code), (0, Errno::CONFLICT.0));
    assert_eq!(entries_of(&w.list(&a, d).unwrap())["y"], y2);
    assert_ne!(w.seen(y2), by);
    // A directory removed and made again under the same name is not the
    // one a client saw and meant to remove.
    let e = w.mkdir(&mut a, d, "e").unwrap().fid;
    let batch = a.sid();
    let rmdir = a.record(Op::RemoveDir(cml::RemoveDir {
        dir: d,
        name: "e".into(),
        fid: e,
    }));
    w.mutate(
        &mut b,
        Op::RemoveDir(cml::RemoveDir {
            dir: d,
            name: "e".into(),
            fid: e,
        }),
    )
    .unwrap();
    let e2 = w.mkdir(&mut b, d, "e").unwrap().fid;
    let c = conflict(reintegrate(&mut w, &a, batch, vec![rmdir]));
    assert_eq!((c.index, c.code), (0, Errno::CONFLICT.0));
    assert_eq!(entries_of(&w.list(&a, d).unwrap())["e"], e2);
    w.check();
}

#[test]
fn a_batch_sent_again_is_answered_again_and_not_reapplied() {
    let mut w = World::new(34);
    let mut a = w.client(Some(ADMIN_ID));
    let root = w.root_fid();
    let d = w.mkdir(&mut a, root, "d").unwrap().fid;
    let f = w.create(&mut a, d, "f").unwrap().fid;

    let batch = a.sid();
    let (c1, _) = create_rec(&mut a, d, "one");
    let (c2, _) = create_rec(&mut a, d, "two");
    let f_seen = w.seen(f);
    let store = staged_store(&mut w, &mut a, f, f_seen, b"stored once");
    let records = vec![c1, c2, store];
    let first = applied(reintegrate(&mut w, &a, batch, records.clone()));
    let listing = w.list(&a, d).unwrap();
    let f_status = w.get_attr(&a, f).unwrap();
    let stamp = w.stamp(&a, w.root);
    assert_eq!(stamp, first.stamp);

    // The reply was lost; the client sends the batch again.
    let again = applied(reintegrate(&mut w, &a, batch, records.clone()));
    assert_eq!(again, first);
    assert_eq!(w.list(&a, d).unwrap(), listing, "no duplicates");
    assert_eq!(w.get_attr(&a, f).unwrap(), f_status);
    assert_eq!(w.stamp(&a, w.root), stamp, "nothing applied");

    // A batch that would apply cleanly twice (SetAcl checks no version)
    // is still applied once.
    let batch2 = a.sid();
    let acl_rec = a.record(Op::SetAcl(cml::SetAcl {
        dir: d,
        acl: coda_vice::fileops::root_acl(),
    }));
    let second = applied(reintegrate(&mut w, &a, batch2, vec![acl_rec.clone()]));
    assert_eq!(second.stamp, stamp + 1);
    let d_seen = w.seen(d);
    let again = applied(reintegrate(&mut w, &a, batch2, vec![acl_rec.clone()]));
    assert_eq!(again, second);
    assert_eq!(w.stamp(&a, w.root), stamp + 1);
    assert_eq!(w.seen(d), d_seen);

    // The older batch now is one the client has moved past.
    assert_eq!(
        reintegrate(&mut w, &a, batch, records),
        Err(Errno::EALREADY)
    );
    // Records must come from the batch's own client.
    let mut b = w.client(Some(ADMIN_ID));
    let stranger = b.record(Op::SetAcl(cml::SetAcl {
        dir: d,
        acl: coda_vice::fileops::root_acl(),
    }));
    let batch3 = a.sid();
    assert_eq!(
        reintegrate(&mut w, &a, batch3, vec![stranger]),
        Err(Errno::BAD_REQUEST)
    );
    assert_eq!(w.stamp(&a, w.root), stamp + 1);
    w.check();
}

#[test]
fn a_batch_sent_again_after_a_restart_is_still_recognised() {
    let mut w = World::new(35);
    let mut a = w.client(Some(ADMIN_ID));
    let root = w.root_fid();
    let d = w.mkdir(&mut a, root, "d").unwrap().fid;

    let batch = a.sid();
    let (mk, local) = {
        let fid = a.local_fid(w.root);
        let rec = a.record(Op::MakeDir(cml::MakeDir {
            dir: d,
            name: "sub".into(),
            fid,
            mode: 0o755,
            group: 0,
        }));
        (rec, fid)
    };
    let (cr, _) = create_rec(&mut a, local, "file");
    let acl = a.record(Op::SetAcl(cml::SetAcl {
        dir: local,
        acl: coda_vice::fileops::root_acl(),
    }));
    let records = vec![mk, cr, acl];
    let first = applied(reintegrate(&mut w, &a, batch, records.clone()));
    let remaps = first.remaps(&records);
    assert_eq!(remaps.len(), 2);
    assert_eq!(remaps[0].local, local);
    let sub = remaps[0].fid;
    let stamp = w.stamp(&a, w.root);

    // The server crashes before the client hears the answer.
    w.restart();
    w.check();
    let again = applied(reintegrate(&mut w, &a, batch, records.clone()));
    assert_eq!(again, first, "the same answer, remaps and all");
    // Not applied again; the stamp moved only as every stamp does after a
    // crash (so none seen before it is reused).
    let stamp = stamp + coda_vice::shard::STAMP_EPOCH;
    assert_eq!(w.stamp(&a, w.root), stamp);
    assert_eq!(names(&mut w, &a, d), set(&["sub"]));
    assert_eq!(names(&mut w, &a, sub), set(&["file"]));

    // The next batch goes on as usual, and is recognised after another restart.
    let batch2 = a.sid();
    let (cr, _) = create_rec(&mut a, sub, "second");
    let next = applied(reintegrate(&mut w, &a, batch2, vec![cr.clone()]));
    assert_eq!(next.stamp, stamp + 1);
    w.restart();
    assert_eq!(applied(reintegrate(&mut w, &a, batch2, vec![cr])), next);
    assert_eq!(
        reintegrate(&mut w, &a, batch, records),
        Err(Errno::EALREADY)
    );
    assert_eq!(names(&mut w, &a, sub), set(&["file", "second"]));
    w.check();
}

#[test]
fn staged_data_left_waiting_too_long_is_dropped() {
    let mut w = World::new(77);
    let mut a = w.client(Some(coda_vice::pdb::ADMIN_ID));
    let root = w.root_fid();
    let (create, fid) = create_rec(&mut a, root, "late");
    let seen = create.store_id;
    let store = staged_store(&mut w, &mut a, fid, seen, b"staged long ago");
    // Another stage sweeps what waited past the limit.
    w.svc().staged_ttl = std::time::Duration::ZERO;
    let other = a.sid();
    stage(&mut w, &a, other, b"new");
    let batch = a.sid();
    let c = conflict(reintegrate(&mut w, &a, batch, vec![create, store]));
    assert_eq!((c.index, Errno(c.code)), (1, Errno::EINVAL));
    w.check();
}
