//! Every Vice operation and its errors, over the simulated network.

mod support;

use coda_proto::cml::{self, Op};
use coda_proto::fid::Fid;
use coda_proto::status::VnodeKind;
use coda_proto::vice::op;
use coda_proto::Errno;
use coda_vice::vnode::{IN_VNODE_MAX, NO_CONTAINER};
use support::*;

#[test]
fn files_are_created_stored_fetched_and_removed() {
    let mut w = World::new(1);
    let mut a = w.client(Some(coda_vice::pdb::ADMIN_ID));
    let root = w.root_fid();
    assert_eq!(w.root_info(&a).name, "coda.root");
    let f = w.create(&mut a, root, "hello.txt").unwrap();
    assert_eq!(f.kind, VnodeKind::File);
    assert!(!f.fid.is_local());
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    let st = w.store(&mut a, f.fid, &data).unwrap();
    assert_eq!(st.length, data.len() as u64);
    assert_eq!(st.content_hash, *blake3::hash(&data).as_bytes());
    let (st2, got) = w.fetch(&a, f.fid).unwrap();
    assert_eq!(got, data);
    assert_eq!(st2.vv, st.vv);
    assert_eq!(entries_of(&w.list(&a, root).unwrap())["hello.txt"], f.fid);
    assert_eq!(w.create(&mut a, root, "hello.txt"), Err(Errno::EEXIST));
    w.remove(&mut a, root, "hello.txt", f.fid).unwrap();
    assert_eq!(w.get_attr(&a, f.fid), Err(Errno::ENOENT));
    assert_eq!(
        w.remove(&mut a, root, "hello.txt", f.fid),
        Err(Errno::ENOENT)
    );
    w.check();
    w.restart();
    w.check();
}

#[test]
fn small_files_live_in_their_vnode_and_move_to_a_container_when_they_grow() {
    let mut w = World::new(11);
    let mut a = w.client(Some(coda_vice::pdb::ADMIN_ID));
    let root = w.root_fid();
    // Where a file's bytes are: (its container, the bytes in its vnode).
    let at = |w: &World, fid: Fid| {
        let svc = w.svc();
        let v = svc.shard.meta.vnode(fid).unwrap();
        (v.container, v.inline.to_vec())
    };
    let max = IN_VNODE_MAX as usize;
    let bytes = |n: usize| (0..n).map(|i| (i * 13 % 251) as u8).collect::<Vec<u8>>();
    let f = w.create(&mut a, root, "f").unwrap().fid;
    for n in [5, max, max + 1, 3, 0] {
        let st = w.store(&mut a, f, &bytes(n)).unwrap();
        assert_eq!(st.content_hash, *blake3::hash(&bytes(n)).as_bytes());
        assert_eq!(w.fetch(&a, f).unwrap().1, bytes(n), "{n} bytes");
        match at(&w, f) {
            (NO_CONTAINER, inline) if n <= max => assert_eq!(inline, bytes(n)),
            (c, inline) if n > max => assert!(c != NO_CONTAINER && inline.is_empty()),
            other => panic!("{n} bytes kept as {other:?}"),
        }
    }
    // Truncated: grown past the limit into a container (zeros after the
    // old end), then cut back into the vnode.
    let truncate = |w: &mut World, a: &mut Client, len: u64| {
        let seen = w.get_attr(a, f).unwrap().vv.store_id;
        let op = Op::SetAttr(cml::SetAttr {
            fid: f,
            seen,
            mode: None,
            owner: None,
            mtime: None,
            length: Some(len),
            group: None,
            atime: None,
        });
        w.mutate(a, op).unwrap();
    };
    w.store(&mut a, f, b"abc").unwrap();
    truncate(&mut w, &mut a, 10_000);
    let mut grown = b"abc".to_vec();
    grown.resize(10_000, 0);
    assert_eq!(w.fetch(&a, f).unwrap().1, grown);
    assert!(at(&w, f).0 != NO_CONTAINER);
    truncate(&mut w, &mut a, 2);
    assert_eq!(at(&w, f), (NO_CONTAINER, b"ab".to_vec()));
    truncate(&mut w, &mut a, 6);
    assert_eq!(w.fetch(&a, f).unwrap().0.length, 6);
    assert_eq!(at(&w, f), (NO_CONTAINER, b"ab\0\0\0\0".to_vec()));
    w.check();
    w.restart();
    w.check();
    assert_eq!(w.fetch(&a, f).unwrap().1, b"ab\0\0\0\0");
}

#[test]
fn operations_fail_with_the_posix_error_a_program_expects() {
    let mut w = World::new(2);
    let mut a = w.client(Some(coda_vice::pdb::ADMIN_ID));
    let root = w.root_fid();
    let d = w.mkdir(&mut a, root, "d").unwrap().fid;
    let f = w.create(&mut a, d, "f").unwrap().fid;
    // ENOTDIR: a file used as a directory.
    assert_eq!(w.create(&mut a, f, "x").err(), Some(Errno::ENOTDIR));
    // ENOTEMPTY.
    assert_eq!(
        w.mutate(
            &mut a,
            Op::RemoveDir(cml::RemoveDir {
                dir: root,
                name: "d".into(),
                fid: d
            })
        ),
        Err(Errno::ENOTEMPTY)
    );
    // EISDIR: Remove of a directory; ENOTDIR: RemoveDir of a file.
    assert_eq!(w.remove(&mut a, root, "d", d).err(), Some(Errno::EISDIR));
    assert_eq!(
        w.mutate(
            &mut a,
            Op::RemoveDir(cml::RemoveDir {
                dir: d,
                name: "f".into(),
                fid: f
            })
        ),
        Err(Errno::ENOTDIR)
    );
    // ENAMETOOLONG at 256 bytes; 255 is fine.
    assert_eq!(
        w.create(&mut a, root, &"n".repeat(256)).err(),
        Some(Errno::ENAMETOOLONG)
    );
    w.create(&mut a, root, &"n".repeat(255)).unwrap();
    // ENOENT.
    assert_eq!(
        w.get_attr(&a, Fid::new(w.root, 999, 999)),
        Err(Errno::ENOENT)
    );
    // EXDEV: rename into another volume.
    let other = w.new_volume("other", 500);
    let rename = Op::Rename(cml::Rename {
        from_dir: d,
        from_name: "f".into(),
        to_dir: Fid::root(other),
        to_name: "f".into(),
        fid: f,
        replaced: None,
    });
    assert_eq!(w.mutate(&mut a, rename), Err(Errno::EXDEV));
    // EACCES: anonymous may not create in the root.
    let mut anon = w.client(None);
    assert_eq!(w.create(&mut anon, root, "x").err(), Some(Errno::EACCES));
    // EINVAL: a directory moved under itself.
    let sub = w.mkdir(&mut a, d, "sub").unwrap().fid;
    let into_self = Op::Rename(cml::Rename {
        from_dir: root,
        from_name: "d".into(),
        to_dir: sub,
        to_name: "d".into(),
        fid: d,
        replaced: None,
    });
    assert_eq!(w.mutate(&mut a, into_self), Err(Errno::EINVAL));
    w.check();
}

#[test]
fn symlinks_links_renames_and_attributes() {
    let mut w = World::new(3);
    let mut a = w.client(Some(coda_vice::pdb::ADMIN_ID));
    let root = w.root_fid();
    let fid = a.local_fid(w.root);
    let st = w
        .mutate(
            &mut a,
            Op::SymLink(cml::SymLink {
                dir: root,
                name: "l".into(),
                fid,
                target: "/etc/passwd".into(),
                mode: 0o777,
                group: 0,
            }),
        )
        .unwrap();
    let link = st[0].fid;
    let target: String = w
        .vice(&a, op::READ_LINK, &coda_proto::vice::GetAttr { fid: link })
        .unwrap();
    assert_eq!(target, "/etc/passwd");
    let f = w.create(&mut a, root, "f").unwrap().fid;
    w.store(&mut a, f, b"0123456789").unwrap();
    w.mutate(
        &mut a,
        Op::Link(cml::Link {
            dir: root,
            name: "g".into(),
            fid: f,
        }),
    )
    .unwrap();
    assert_eq!(w.get_attr(&a, f).unwrap().link_count, 2);
    // Rename over the other name of the same file: nothing happens.
    let d = w.mkdir(&mut a, root, "d").unwrap().fid;
    let seen = w.get_attr(&a, f).unwrap().vv.store_id;
    let trunc = Op::SetAttr(cml::SetAttr {
        fid: f,
        seen,
        mode: Some(0o600),
        owner: None,
        mtime: None,
        length: Some(4),
        group: None,
        atime: None,
    });
    let st = w.mutate(&mut a, trunc).unwrap();
    assert_eq!((st[0].length, st[0].mode), (4, 0o600));
    assert_eq!(w.fetch(&a, f).unwrap().1, b"0123");
    let mv = Op::Rename(cml::Rename {
        from_dir: root,
        from_name: "l".into(),
        to_dir: d,
        to_name: "m".into(),
        fid: link,
        replaced: None,
    });
    w.mutate(&mut a, mv).unwrap();
    assert_eq!(w.get_attr(&a, link).unwrap().parent, d);
    // A directory replaces an empty directory; a file may not replace one.
    let e = w.mkdir(&mut a, root, "e").unwrap().fid;
    let over = Op::Rename(cml::Rename {
        from_dir: root,
        from_name: "f".into(),
        to_dir: root,
        to_name: "e".into(),
        fid: f,
        replaced: Some(e),
    });
    assert_eq!(w.mutate(&mut a, over), Err(Errno::EISDIR));
    let over = Op::Rename(cml::Rename {
        from_dir: root,
        from_name: "d".into(),
        to_dir: root,
        to_name: "e".into(),
        fid: d,
        replaced: Some(e),
    });
    w.mutate(&mut a, over).unwrap();
    assert_eq!(w.get_attr(&a, e), Err(Errno::ENOENT));
    assert_eq!(w.get_attr(&a, root).unwrap().link_count, 3);
    w.check();
    w.restart();
    w.check();
    assert_eq!(w.fetch(&a, f).unwrap().1, b"0123");
}

#[test]
fn mount_points_are_entries_naming_another_volumes_root() {
    let mut w = World::new(4);
    let mut a = w.client(Some(coda_vice::pdb::ADMIN_ID));
    let mut alice = w.client(Some(ALICE));
    let root = w.root_fid();
    let other = w.new_volume("u.alice", ALICE);
    let mount = Op::Link(cml::Link {
        dir: root,
        name: "alice".into(),
        fid: Fid::root(other),
    });
    // Making a mount point needs 'a' on the directory.
    assert_eq!(w.mutate(&mut alice, mount.clone()), Err(Errno::EACCES));
    w.mutate(&mut a, mount).unwrap();
    assert_eq!(
        entries_of(&w.list(&a, root).unwrap())["alice"],
        Fid::root(other)
    );
    // Only a volume's root can be mounted, and only an existing volume.
    let bad = Op::Link(cml::Link {
        dir: root,
        name: "bad".into(),
        fid: Fid::new(other, 5, 5),
    });
    assert_eq!(w.mutate(&mut a, bad), Err(Errno::NO_SUCH_VOLUME));
    let gone = Op::Link(cml::Link {
        dir: root,
        name: "gone".into(),
        fid: Fid::root(0x7777),
    });
    assert_eq!(w.mutate(&mut a, gone), Err(Errno::NO_SUCH_VOLUME));
    // The mounted volume's owner works inside it.
    let f = w.create(&mut alice, Fid::root(other), "notes").unwrap();
    assert_eq!(f.fid.volume, other);
    w.check();
    w.restart();
    assert_eq!(
        entries_of(&w.list(&a, root).unwrap())["alice"],
        Fid::root(other)
    );
    // Removing the mount point leaves the volume.
    let unmount = Op::Remove(cml::Remove {
        dir: root,
        name: "alice".into(),
        fid: Fid::root(other),
        seen: Default::default(),
    });
    w.mutate(&mut a, unmount).unwrap();
    assert!(!entries_of(&w.list(&a, root).unwrap()).contains_key("alice"));
    assert!(w.get_attr(&alice, f.fid).is_ok());
    w.check();
}

#[test]
fn statistics_count_calls_clients_callbacks_and_log_use() {
    let mut w = World::new(5);
    let mut a = w.client(Some(coda_vice::pdb::ADMIN_ID));
    let root = w.root_fid();
    for i in 0..5 {
        w.create(&mut a, root, &format!("f{i}")).unwrap();
    }
    w.get_attr(&a, root).unwrap();
    let stats: coda_proto::vice::Statistics = w.vice(&a, op::GET_STATISTICS, &()).unwrap();
    let calls: std::collections::HashMap<u16, u64> =
        stats.calls_by_opcode.iter().copied().collect();
    assert_eq!(calls[&op::CREATE], 5);
    assert_eq!(calls[&op::GET_ATTR], 1);
    assert_eq!(stats.clients, 1);
    assert!(stats.callbacks >= 1, "{stats:?}");
    assert_eq!(stats.volumes, 1);
    assert!(
        stats.rvm_log_bytes > 0 && stats.rvm_log_used > 0,
        "{stats:?}"
    );
    assert!(stats.bytes_received > 0 && stats.bytes_sent > 0);
}

/// On Ethernet-sized datagrams (the simulated network's), an ACL of
/// hundreds of entries is set through a Reintegrate batch sent as a side
/// effect and read back by SFTP.
#[test]
fn acls_of_hundreds_of_entries_travel_on_small_datagrams() {
    use coda_proto::acl::{Acl, Rights};
    use coda_proto::vice::{Reintegrate, ReintegrateReply};
    use coda_rpc2::codec;
    use coda_rpc2::endpoint::SideEffect;
    let mut w = World::new(8);
    let mut a = w.client(Some(coda_vice::pdb::ADMIN_ID));
    let root = w.root_fid();
    let d = w.mkdir(&mut a, root, "shared").unwrap().fid;
    let mut acl = coda_vice::fileops::root_acl();
    for id in 2000..2600 {
        acl.set(id, Rights::READ.union(Rights::LOOKUP), false);
    }
    acl.set(3000, Rights::WRITE, true);
    let rec = a.record(Op::SetAcl(cml::SetAcl {
        dir: d,
        acl: acl.clone(),
    }));
    let batch = Reintegrate {
        volume: w.root,
        batch: a.sid(),
        records: vec![rec],
    };
    let body = codec::to_bytes(&batch);
    assert!(body.len() > 1472, "the batch must outgrow one datagram");
    let side = SideEffect::Send(coda_rpc2::Source::Memory(body));
    let r = w.call_raw(
        &a,
        coda_proto::vice::SUBSYSTEM,
        op::REINTEGRATE,
        bytes::Bytes::new(),
        Some(side),
    );
    assert_eq!(r.code, 0);
    let reply: ReintegrateReply = codec::from_bytes(&r.body).unwrap();
    assert!(matches!(reply, ReintegrateReply::Applied(_)), "{reply:?}");
    let back: Acl = w.get_acl(&a, d).unwrap();
    assert_eq!(back, acl);
}
