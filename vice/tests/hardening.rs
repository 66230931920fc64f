//! Holes a review found, each closed: a panic any client could cause, a
//! batch id another user could claim, an answer before durability, memory
//! and RVM parting ways on a failed removal, one container shared by two
//! files, a stale staged hash, an allocation sized by a count, anonymous
//! staging, and volume stamps reused after a crash.

mod support;

use bytes::Bytes;
use coda_proto::cml::{self, CmlRecord, Op};
use coda_proto::fid::{Fid, StoreId};
use coda_proto::vice::{self, op, Reintegrate, ReintegrateReply};
use coda_proto::{volutil, Errno};
use coda_rpc2::codec;
use coda_rpc2::{ConnId, Identity, IncomingId, Level};
use coda_vice::pdb::ADMIN_ID;
use coda_vice::service::Action;
use coda_vice::shard::ShardOptions;
use support::*;

#[test]
fn any_opcode_of_any_subsystem_is_answered() {
    let w = World::new(1);
    let mut svc = w.svc();
    let anon = Identity {
        user_id: None,
        level: Level::Clear,
    };
    svc.accepted(ConnId(1), anon);
    let id = IncomingId {
        conn: ConnId(1),
        seq: 1,
    };
    let mut out = Vec::new();
    svc.request(id, anon, volutil::SUBSYSTEM, 0xFFFF, Bytes::new(), &mut out);
    assert!(matches!(out[..], [Action::Reply { code, .. }] if code == Errno::NOT_ADMIN.0));
}

#[test]
fn batch_ids_belong_to_the_user_who_sent_them() {
    let mut w = World::new(2);
    let mut a = w.client(Some(ADMIN_ID));
    let anon = w.client(None);
    let mut bob = w.client(Some(BOB));
    let root = w.root_fid();
    let batch = a.sid();
    let (c1, _) = create_rec(&mut a, root, "precious");
    // Others know a.host (from any status's store id) and can guess the counter.
    assert_eq!(
        reintegrate(&mut w, &anon, batch, vec![]),
        Err(Errno::EACCES)
    );
    let (theirs, _) = create_rec(&mut bob, root, "bobs");
    let theirs = CmlRecord {
        store_id: StoreId {
            host: a.host,
            unique: 999,
        },
        ..theirs
    };
    assert!(matches!(
        reintegrate(&mut w, &bob, batch, vec![theirs]),
        Ok(ReintegrateReply::Conflict(_))
    ));
    assert_eq!(
        reintegrate(&mut w, &a, batch, vec![]),
        Err(Errno::EINVAL),
        "an empty batch"
    );
    let r = reintegrate(&mut w, &a, batch, vec![c1]);
    assert!(matches!(r, Ok(ReintegrateReply::Applied(_))), "{r:?}");
    let names: Vec<String> = w
        .list(&a, root)
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert!(
        names.contains(&"precious".to_string()),
        "told Applied but nothing applied"
    );
}

#[test]
fn a_batch_sent_again_is_answered_only_once_durable() {
    let w = World::new(4);
    let root = w.root_fid();
    let mut svc = w.svc();
    let admin = Identity {
        user_id: Some(ADMIN_ID as u32),
        level: Level::Encrypted,
    };
    svc.accepted(ConnId(1), admin);
    let rec = CmlRecord {
        store_id: StoreId {
            host: 77,
            unique: 2,
        },
        time: Default::default(),
        op: Op::Create(cml::Create {
            dir: root,
            name: "f".into(),
            fid: Fid::new(root.volume, coda_proto::fid::LOCAL_VNODE_BASE + 1, 1),
            mode: 0o644,
            group: 0,
        }),
    };
    let body = codec::to_bytes(&Reintegrate {
        volume: root.volume,
        batch: StoreId {
            host: 77,
            unique: 1,
        },
        records: vec![rec],
    });
    let mut out = Vec::new();
    svc.request(
        IncomingId {
            conn: ConnId(1),
            seq: 1,
        },
        admin,
        vice::SUBSYSTEM,
        op::REINTEGRATE,
        body.clone(),
        &mut out,
    );
    let c1 = out
        .iter()
        .find_map(|a| match a {
            Action::Reply { after, .. } => Some(*after),
            _ => None,
        })
        .unwrap();
    assert!(c1.is_some());
    assert!(!svc.shard.rvm().is_durable(c1.unwrap()));
    let mut out = Vec::new();
    svc.request(
        IncomingId {
            conn: ConnId(1),
            seq: 2,
        },
        admin,
        vice::SUBSYSTEM,
        op::REINTEGRATE,
        body,
        &mut out,
    );
    let c2 = out
        .iter()
        .find_map(|a| match a {
            Action::Reply { after, code, .. } => Some((*after, *code)),
            _ => None,
        })
        .unwrap();
    assert_eq!(c2.1, 0);
    assert!(
        c2.0.is_some_and(|c| c >= c1.unwrap()),
        "a resend answered before the batch is durable"
    );
}

/// A volume on a shard whose log holds little, so a transaction soon
/// outgrows it.
fn small_log_volume(dir: &std::path::Path) -> (coda_vice::shard::Shard, u64) {
    let opts = ShardOptions {
        segment_bytes: 64 << 20,
        log_bytes: 1 << 20,
        ..Default::default()
    };
    standalone_volume(dir, &opts, "v")
}

#[test]
fn a_removal_refused_by_rvm_leaves_memory_as_rvm_has_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard0");
    let (mut shard, vol) = small_log_volume(&dir);
    let root = Fid::root(vol);
    // victims: entries pointing at root (fid value does not matter here)
    {
        let mut txn = shard.begin().unwrap();
        for i in 0..50 {
            txn.put_entry(root, &format!("victim{i}"), Fid::new(vol, 100 + i, 100 + i))
                .unwrap();
        }
        txn.commit(rvm::Durability::Flush).unwrap();
    }
    let mut txn = shard.begin().unwrap();
    let mut i = 0u64;
    loop {
        if txn
            .put_entry(root, &format!("filler-{i:08}-{}", "x".repeat(100)), root)
            .is_err()
        {
            break;
        }
        i += 1;
    }
    let mut failed = None;
    for j in 0..50 {
        match txn.remove_entry(root, &format!("victim{j}")) {
            Ok(()) => {}
            Err(_) => {
                failed = Some(j);
                break;
            }
        }
    }
    txn.abort().unwrap();
    let j = failed.expect("a remove failed");
    let v = shard.meta.volume(vol).unwrap();
    let present = v.lookup(root, &format!("victim{j}")).is_some();
    assert!(present, "in-memory entry lost although RVM still has it");
    assert!(v.lookup(root, "victim0").is_some());
    assert!(v.lookup(root, "filler-00000000-x").is_none());
}

#[test]
fn one_store_id_cannot_give_two_files_one_container() {
    let mut w = World::new(5);
    let mut a = w.client(Some(ADMIN_ID));
    let root = w.root_fid();
    let f1 = w.create(&mut a, root, "f1").unwrap().fid;
    let f2 = w.create(&mut a, root, "f2").unwrap().fid;
    let data = b"shared bytes";
    let sid = a.sid();
    assert_eq!(stage_at(&mut w, &a, sid, data, data.len() as u64, 0), 0);
    let hash = *blake3::hash(data).as_bytes();
    let st = |fid, seen| CmlRecord {
        store_id: sid,
        time: Default::default(),
        op: Op::Store(cml::Store {
            fid,
            seen,
            length: data.len() as u64,
            content_hash: hash,
        }),
    };
    let (s1, s2) = (w.seen(f1), w.seen(f2));
    let batch = a.sid();
    let r = reintegrate(&mut w, &a, batch, vec![st(f1, s1), st(f2, s2)]);
    assert_eq!(r, Err(Errno::BAD_REQUEST));
    // The staged data is still there for a correct batch.
    let batch = a.sid();
    assert!(matches!(
        reintegrate(&mut w, &a, batch, vec![st(f1, s1)]),
        Ok(ReintegrateReply::Applied(_))
    ));
    assert_eq!(w.fetch(&a, f1).unwrap().1, data);
    w.check();
}

#[test]
fn data_staged_again_is_hashed_again() {
    let mut w = World::new(6);
    let mut a = w.client(Some(ADMIN_ID));
    let root = w.root_fid();
    let f = w.create(&mut a, root, "f").unwrap().fid;
    let sid = a.sid();
    assert_eq!(stage_at(&mut w, &a, sid, b"AAAA", 4, 0), 0);
    assert_eq!(stage_at(&mut w, &a, sid, b"BBBB", 4, 0), 0);
    let rec = CmlRecord {
        store_id: sid,
        time: Default::default(),
        op: Op::Store(cml::Store {
            fid: f,
            seen: w.seen(f),
            length: 4,
            content_hash: *blake3::hash(b"AAAA").as_bytes(),
        }),
    };
    let batch = a.sid();
    // The record names the first bytes' hash: the bytes now staged differ.
    let c = match reintegrate(&mut w, &a, batch, vec![rec.clone()]) {
        Ok(ReintegrateReply::Conflict(c)) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!(Errno(c.code), Errno::EINVAL);
    let Op::Store(s) = &rec.op else {
        unreachable!()
    };
    let fixed = CmlRecord {
        op: Op::Store(cml::Store {
            content_hash: *blake3::hash(b"BBBB").as_bytes(),
            ..s.clone()
        }),
        ..rec
    };
    let batch = a.sid();
    assert!(matches!(
        reintegrate(&mut w, &a, batch, vec![fixed]),
        Ok(ReintegrateReply::Applied(_))
    ));
    assert_eq!(w.fetch(&a, f).unwrap().1, b"BBBB");
    w.check();
}

#[test]
fn an_anonymous_or_empty_batch_changes_nothing() {
    let mut w = World::new(7);
    let a = w.client(Some(ADMIN_ID));
    let evil = w.client(None);
    let before = w.stamp(&a, w.root);
    let r = reintegrate(
        &mut w,
        &evil,
        StoreId {
            host: 999,
            unique: 1,
        },
        vec![],
    );
    assert_eq!(r, Err(Errno::EACCES));
    assert_eq!(
        w.stamp(&a, w.root),
        before,
        "anonymous caller changed the volume stamp"
    );
}

/// A count of records far beyond what the body's bytes could hold in
/// memory fails to decode without first asking for that memory.
#[test]
fn a_huge_record_count_is_refused_without_a_huge_allocation() {
    let mut buf = codec::to_bytes(&Reintegrate {
        volume: 1,
        batch: StoreId::default(),
        records: vec![],
    })
    .to_vec();
    assert_eq!(buf.pop(), Some(0));
    let n: u64 = 200 << 20;
    coda_rpc2::codec::put_varint(&mut buf, n);
    buf.resize(buf.len() + n as usize, 0);
    let r: Result<Reintegrate, _> = codec::from_bytes(&buf);
    assert!(r.is_err());
}

/// A volume too big for one RVM transaction is removed in several (see
/// `volumes.rs` for a crash in between).
#[test]
fn a_volume_too_big_for_one_transaction_is_removed_in_several() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard0");
    let (mut shard, vol) = small_log_volume(&dir);
    for b in 0..20u64 {
        apply_batch(
            &mut shard,
            vol,
            &creates(vol, b * 200..(b + 1) * 200, |i| format!("f{i}")),
        )
        .unwrap();
    }
    shard.flush().unwrap();
    let pdb = coda_vice::pdb::Pdb::open(&dir.join("pdb.toml")).unwrap();
    let cell = std::sync::Arc::new(coda_vice::cell::Cell::new(
        coda_rpc2::CellKey::from_bytes(CELL),
        CELL_ID,
        1,
        "t".into(),
        pdb,
    ));
    let mut svc = coda_vice::service::Service::new(cell, shard);
    let job = coda_vice::service::Job::RemoveVolume(vol);
    let code = svc.run_job(job, &mut Vec::new()).code;
    assert_eq!(code, 0);
    assert!(svc.shard.meta.volume(vol).is_none());
    assert!(coda_vice::fsck::check_shard(&svc.shard).is_empty());
}

#[test]
fn anonymous_callers_may_not_stage_data() {
    let mut w = World::new(11);
    let evil = w.client(None);
    let data = vec![7u8; 100_000];
    let code = stage_at(
        &mut w,
        &evil,
        StoreId { host: 5, unique: 1 },
        &data,
        data.len() as u64,
        0,
    );
    assert_eq!(Errno(code), Errno::EACCES);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let p = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &p)
        } else {
            std::fs::copy(e.path(), p).unwrap();
        }
    }
}

/// A stamp read before its update was durable is never handed out again
/// for a different update after a crash.
#[test]
fn volume_stamps_are_not_reused_after_a_crash() {
    let w = World::new(12);
    let root = w.root_fid();
    let admin = Identity {
        user_id: Some(ADMIN_ID as u32),
        level: Level::Encrypted,
    };
    let mk = |name: &str, n: u64| CmlRecord {
        store_id: StoreId { host: 9, unique: n },
        time: Default::default(),
        op: Op::Create(cml::Create {
            dir: root,
            name: name.into(),
            fid: Fid::new(root.volume, coda_proto::fid::LOCAL_VNODE_BASE + n, n),
            mode: 0o644,
            group: 0,
        }),
    };
    let info = |svc: &mut coda_vice::service::Service, seq| {
        let mut out = Vec::new();
        svc.request(
            IncomingId {
                conn: ConnId(2),
                seq,
            },
            admin,
            vice::SUBSYSTEM,
            op::GET_VOLUME_INFO,
            codec::to_bytes(&vice::VolumeRef::Id(root.volume)),
            &mut out,
        );
        match &out[0] {
            Action::Reply { body, after, .. } => (
                codec::from_bytes::<coda_proto::vice::VolumeInfo>(body)
                    .unwrap()
                    .stamp,
                *after,
            ),
            a => panic!("{a:?}"),
        }
    };
    let create = |svc: &mut coda_vice::service::Service, name: &str, n: u64| {
        let id = IncomingId {
            conn: ConnId(1),
            seq: n,
        };
        let body = codec::to_bytes(&mk(name, n));
        svc.request(
            id,
            admin,
            vice::SUBSYSTEM,
            op::CREATE,
            body,
            &mut Vec::new(),
        );
    };
    let crash = tempfile::tempdir().unwrap();
    let seen;
    {
        let mut svc = w.svc();
        svc.accepted(ConnId(1), admin);
        svc.accepted(ConnId(2), admin);
        create(&mut svc, "lost", 1);
        let (stamp, _) = info(&mut svc, 1);
        seen = stamp;
        copy_dir(w.dir.path(), crash.path()); // power loss now
    }
    let mut svc = open_service(crash.path());
    svc.accepted(ConnId(1), admin);
    svc.accepted(ConnId(2), admin);
    let (s0, _) = info(&mut svc, 1);
    create(&mut svc, "other", 2);
    let (s1, _) = info(&mut svc, 2);
    let names: Vec<String> = svc
        .shard
        .meta
        .volume(root.volume)
        .unwrap()
        .entries(root)
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(names, vec!["other".to_string()], "the lost create is gone");
    assert!(
        s0 > seen && s1 > seen,
        "stamp {seen} seen before the crash, {s0} and {s1} after"
    );
}

/// A real fid is usable only by the user AllocFids gave it to.
#[test]
fn allocated_fids_belong_to_the_user_they_were_given_to() {
    use coda_proto::vice::{AllocFids, FidRange, MutateReply};
    let mut w = World::new(13);
    let mut alice = w.client(Some(ALICE));
    let mut bob = w.client(Some(BOB));
    let root = w.root_fid();
    // Both may insert in a directory of their own making under an open ACL.
    let mut admin = w.client(Some(ADMIN_ID));
    let mut acl = coda_vice::fileops::root_acl();
    acl.set(ALICE, coda_proto::acl::Rights::ALL, false);
    acl.set(BOB, coda_proto::acl::Rights::ALL, false);
    w.mutate(&mut admin, Op::SetAcl(cml::SetAcl { dir: root, acl }))
        .unwrap();
    let range: FidRange = w
        .vice(
            &alice,
            op::ALLOC_FIDS,
            &AllocFids {
                volume: w.root,
                count: 4,
            },
        )
        .unwrap();
    let create = |c: &mut Client, fid: Fid, name: &str| {
        c.record(Op::Create(cml::Create {
            dir: root,
            name: name.into(),
            fid,
            mode: 0o644,
            group: 0,
        }))
    };
    // Bob may not take Alice's fids, nor make one up.
    let rec = create(&mut bob, range.fid(0).unwrap(), "bobs");
    assert_eq!(
        w.vice::<MutateReply>(&bob, op::CREATE, &rec).err(),
        Some(Errno::EINVAL)
    );
    let made_up = Fid::new(w.root, range.vnode + 1, 12345);
    let rec = create(&mut alice, made_up, "forged");
    assert_eq!(
        w.vice::<MutateReply>(&alice, op::CREATE, &rec).err(),
        Some(Errno::EINVAL)
    );
    // Alice may, once.
    let rec = create(&mut alice, range.fid(1).unwrap(), "alices");
    let st = w
        .vice::<MutateReply>(&alice, op::CREATE, &rec)
        .unwrap()
        .statuses;
    assert_eq!(st[0].fid, range.fid(1).unwrap());
    let rec = create(&mut alice, range.fid(1).unwrap(), "again");
    assert_eq!(
        w.vice::<MutateReply>(&alice, op::CREATE, &rec).err(),
        Some(Errno::EEXIST)
    );
    // Grants survive a restart.
    w.restart();
    let rec = create(&mut alice, range.fid(2).unwrap(), "after");
    assert!(w.vice::<MutateReply>(&alice, op::CREATE, &rec).is_ok());
    w.check();
}
