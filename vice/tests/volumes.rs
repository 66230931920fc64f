//! Volume administration over the simulated network: clones and backups
//! (copy-on-write), dumps and restores (full and incremental), and what a
//! crash in the middle of either leaves.

mod support;

use std::collections::BTreeMap;

use bytes::Bytes;
use coda_proto::cml::{self, Op};
use coda_proto::dump;
use coda_proto::fid::{Fid, VolumeId};
use coda_proto::status::{Timestamp, VnodeKind};
use coda_proto::vice::{AllocFids, FidRange, VolumeInfo, VolumeKind, VolumeRef};
use coda_proto::volutil::{
    self, op, CloneVolume, DumpBegin, DumpBegun, DumpChunk, DumpEstimate, NameVolume, RestoreBegin,
    RestoreReply, Session, DUMP_CHUNK_MAX,
};
use coda_proto::Errno;
use coda_rpc2::codec;
use coda_rpc2::endpoint::SideEffect;
use coda_rpc2::{Sink, Source};
use coda_vice::clone::{Image, RECORDS_PER_TXN};
use coda_vice::pdb::ADMIN_ID;
use coda_vice::vnode::{EntryRecord, Vnode, VolumeHeader, EMPTY_HASH, NO_CONTAINER};
use support::*;

fn admin<T: codec::Decode>(
    w: &mut World,
    c: &Client,
    opcode: u16,
    req: &impl codec::Encode,
) -> Result<T, Errno> {
    w.call(c, volutil::SUBSYSTEM, opcode, req)
}

fn named(name: &str) -> NameVolume {
    NameVolume {
        volume: VolumeRef::Name(name.into()),
    }
}

/// The dump of `vol`, incremental against `base` if given.
fn dump_volume(w: &mut World, c: &Client, vol: VolumeId, base: Option<&[u8]>) -> Vec<u8> {
    let (base_id, items) = match base {
        Some(b) => {
            let (h, items) = dump::manifest(b).unwrap();
            (Some(h.id), items)
        }
        None => (None, Vec::new()),
    };
    let manifest = codec::to_bytes(&items);
    let req = DumpBegin {
        volume: VolumeRef::Id(vol),
        base: base_id,
        manifest_bytes: if base.is_some() {
            manifest.len() as u64
        } else {
            0
        },
    };
    let side = base.map(|_| SideEffect::Send(Source::Memory(manifest)));
    let r = w.call_raw(
        c,
        volutil::SUBSYSTEM,
        op::DUMP_BEGIN,
        codec::to_bytes(&req),
        side,
    );
    assert_eq!(r.code, 0, "DUMP_BEGIN: {}", Errno(r.code));
    let begun: DumpBegun = codec::from_bytes(&r.body).unwrap();
    let session = Session {
        session: begun.session,
    };
    let mut out = Vec::new();
    loop {
        let r = w.call_raw(
            c,
            volutil::SUBSYSTEM,
            op::DUMP_READ,
            codec::to_bytes(&session),
            Some(SideEffect::Receive(Sink::memory(DUMP_CHUNK_MAX))),
        );
        assert_eq!(r.code, 0, "DUMP_READ: {}", Errno(r.code));
        let chunk: DumpChunk = codec::from_bytes(&r.body).unwrap();
        out.extend_from_slice(&r.sink.unwrap().into_bytes());
        if chunk.done {
            break;
        }
    }
    assert_eq!(
        out.len() as u64,
        begun.bytes,
        "the size announced is the size sent"
    );
    out
}

/// Sends `bytes` as a restore of `name`, in pieces of `piece` bytes.
fn restore(w: &mut World, c: &Client, bytes: &[u8], name: &str, piece: usize) -> RestoreReply {
    let begun: RestoreReply =
        admin(w, c, op::RESTORE_BEGIN, &RestoreBegin { name: name.into() }).unwrap();
    let RestoreReply::Accepted(session) = begun else {
        panic!("{begun:?}")
    };
    let session = Session { session };
    for chunk in bytes.chunks(piece) {
        let r = w.call_raw(
            c,
            volutil::SUBSYSTEM,
            op::RESTORE_WRITE,
            codec::to_bytes(&session),
            Some(SideEffect::Send(Source::Memory(Bytes::copy_from_slice(
                chunk,
            )))),
        );
        assert_eq!(r.code, 0);
        match codec::from_bytes(&r.body).unwrap() {
            RestoreReply::Accepted(_) => {}
            refused => return refused,
        }
    }
    admin(w, c, op::RESTORE_END, &session).unwrap()
}

/// What a volume holds, with its own id taken out: objects by
/// (vnode, uniquifier), and names by (directory, name).
type Shape = (
    BTreeMap<(u64, u64), String>,
    BTreeMap<(u64, String), (u64, u64, bool)>,
);

fn shape(w: &World, vol: VolumeId) -> Shape {
    let svc = w.svc();
    let v = svc.shard.meta.volume(vol).expect("the volume exists");
    let objects = v
        .vnodes()
        .map(|n| {
            let what = format!(
                "{:?} {:o} {} {} {} {} {:?} {:?} {:?} {} {} {:?} {:?} {:?}",
                n.kind,
                n.mode,
                n.owner,
                n.group,
                n.link_count,
                n.length,
                n.mtime,
                n.ctime,
                n.content_hash,
                n.parent.vnode,
                n.parent.unique,
                n.acl,
                n.target,
                n.vv
            );
            ((n.fid.vnode, n.fid.unique), what)
        })
        .collect();
    let mut names = BTreeMap::new();
    for n in v.vnodes().filter(|n| n.is_dir()) {
        for (name, (_, f)) in v.entries(n.fid).unwrap() {
            names.insert(
                (n.fid.vnode, name.clone()),
                (f.vnode, f.unique, f.volume == vol),
            );
        }
    }
    (objects, names)
}

/// Bytes in containers (the pool of empty ones made ahead counts nothing).
fn containers_on_disk(w: &World) -> u64 {
    let svc = w.svc();
    let c = &svc.shard.containers;
    c.list()
        .unwrap()
        .into_iter()
        .map(|id| std::fs::metadata(c.path(id)).unwrap().len())
        .sum()
}

fn settle_flush(w: &mut World) {
    let mut svc = w.svc();
    svc.shard.flush().unwrap();
}

/// A tree with every kind of object in volume `vol`.
fn populate(w: &mut World, a: &mut Client, vol: VolumeId) -> Fid {
    let root = Fid::root(vol);
    let d = w.mkdir(a, root, "dir").unwrap().fid;
    let sub = w.mkdir(a, d, "sub").unwrap().fid;
    let f = w.create(a, d, "file").unwrap().fid;
    let big: Vec<u8> = (0..(3 << 20) + 11u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    w.store(a, f, &big).unwrap();
    let e = w.create(a, sub, "empty").unwrap().fid;
    let small = w.create(a, root, "small").unwrap().fid;
    w.store(a, small, b"hello").unwrap();
    w.mutate(
        a,
        Op::Link(cml::Link {
            dir: root,
            name: "hard".into(),
            fid: small,
        }),
    )
    .unwrap();
    let sym = a.local_fid(vol);
    w.mutate(
        a,
        Op::SymLink(cml::SymLink {
            dir: d,
            name: "link".into(),
            fid: sym,
            target: "../small".into(),
            mode: 0o777,
            group: 0,
        }),
    )
    .unwrap();
    w.store(a, e, b"").unwrap();
    f
}

#[test]
fn a_dump_restores_as_the_same_tree_and_incrementals_bring_it_up_to_date() {
    let mut w = World::new(71);
    let mut a = w.client(Some(ADMIN_ID));
    let vol = w.new_volume("v", ADMIN_ID);
    let big = populate(&mut w, &mut a, vol);
    let estimate: DumpEstimate = admin(&mut w, &a, op::DUMP_ESTIMATE, &named("v")).unwrap();
    let full = dump_volume(&mut w, &a, vol, None);
    assert!(estimate.bytes >= full.len() as u64 && estimate.bytes < full.len() as u64 + 16);
    // Pieces of any size, even ones that split frames.
    let RestoreReply::Done(r) = restore(&mut w, &a, &full, "r", 100_003) else {
        panic!("refused")
    };
    assert_eq!(shape(&w, r.id), shape(&w, vol));
    w.check();
    // A crash moves every stamp on, but the restored volume is unchanged.
    w.restart();
    let mut a = w.client(Some(ADMIN_ID));

    // Changes: a store, a delete, a rename across directories, a new file.
    let root = Fid::root(vol);
    let d = w.lookup(&a, root, "dir").unwrap();
    let sub = w.lookup(&a, d, "sub").unwrap();
    let small = w.lookup(&a, root, "small").unwrap();
    w.store(&mut a, small, b"changed").unwrap();
    let empty = w.lookup(&a, sub, "empty").unwrap();
    w.remove(&mut a, sub, "empty", empty).unwrap();
    w.mutate(
        &mut a,
        Op::Rename(cml::Rename {
            from_dir: d,
            from_name: "file".into(),
            to_dir: root,
            to_name: "moved".into(),
            fid: big,
            replaced: None,
        }),
    )
    .unwrap();
    w.create(&mut a, sub, "new").unwrap();
    let inc = dump_volume(&mut w, &a, vol, Some(&full));
    assert!(
        inc.len() < full.len() / 10,
        "the big file is not in it again"
    );
    let before = shape(&w, r.id);
    let RestoreReply::Done(r2) = restore(&mut w, &a, &inc, "r", 333) else {
        panic!("refused")
    };
    assert_eq!(r2.id, r.id, "an incremental dump keeps the volume");
    assert_ne!(shape(&w, r.id), before);
    assert_eq!(shape(&w, r.id), shape(&w, vol));
    w.check();

    // The same incremental again no longer fits: the volume moved on.
    let again = restore(&mut w, &a, &inc, "r", 1 << 20);
    assert!(
        matches!(&again, RestoreReply::Refused(f) if f.reason.contains("based on")),
        "{again:?}"
    );
    // A full dump never lands on an existing volume.
    assert!(matches!(
        restore(&mut w, &a, &full, "r", 1 << 20),
        RestoreReply::Refused(_)
    ));
    // An incremental dump needs its base.
    assert!(matches!(
        restore(&mut w, &a, &inc, "fresh", 1 << 20),
        RestoreReply::Refused(_)
    ));
    assert_eq!(w.svc().cell.vldb().by_name("fresh"), None);
    w.restart();
    w.check();
    assert_eq!(shape(&w, r.id), shape(&w, vol));
}

#[test]
fn a_damaged_dump_is_refused_at_its_offset_and_leaves_nothing() {
    let mut w = World::new(72);
    let mut a = w.client(Some(ADMIN_ID));
    let vol = w.new_volume("v", ADMIN_ID);
    populate(&mut w, &mut a, vol);
    let full = dump_volume(&mut w, &a, vol, None);
    settle_flush(&mut w);
    let containers = containers_on_disk(&w);
    for cut in [full.len() / 2, 40, full.len() - 1] {
        match restore(&mut w, &a, &full[..cut], "cut", 4096) {
            RestoreReply::Refused(f) => assert!(f.offset <= cut as u64, "{f:?}"),
            other => panic!("a dump cut at {cut} was taken: {other:?}"),
        }
    }
    let mut bad = full.clone();
    let at = full.len() / 2;
    bad[at] ^= 1;
    match restore(&mut w, &a, &bad, "bad", 1 << 20) {
        RestoreReply::Refused(f) => {
            assert!(f.offset <= at as u64 && f.offset + (2 << 20) > at as u64)
        }
        other => panic!("a damaged dump was taken: {other:?}"),
    }
    for name in ["cut", "bad"] {
        assert_eq!(
            admin::<VolumeInfo>(&mut w, &a, op::INFO, &named(name)),
            Err(Errno::NO_SUCH_VOLUME)
        );
    }
    assert_eq!(containers_on_disk(&w), containers, "no data left behind");
    w.check();
}

#[test]
fn a_clone_shares_data_and_keeps_it_when_its_source_changes_or_goes() {
    let mut w = World::new(73);
    let mut a = w.client(Some(ADMIN_ID));
    let vol = w.new_volume("v", ADMIN_ID);
    let f = w.create(&mut a, Fid::root(vol), "f").unwrap().fid;
    w.store(&mut a, f, &[1u8; 100_000]).unwrap();
    settle_flush(&mut w);
    let containers = containers_on_disk(&w);
    let req = CloneVolume {
        volume: VolumeRef::Name("v".into()),
        name: None,
    };
    let c: VolumeInfo = admin(&mut w, &a, op::CLONE, &req).unwrap();
    assert_eq!(
        (c.name.as_str(), c.kind),
        ("v.readonly", VolumeKind::ReadOnly)
    );
    assert_eq!(containers_on_disk(&w), containers, "no data copied");
    let cf = Fid { volume: c.id, ..f };
    assert_eq!(w.fetch(&a, cf).unwrap().1, vec![1u8; 100_000]);
    assert_eq!(w.store(&mut a, cf, b"no"), Err(Errno::EROFS));
    assert_eq!(
        admin::<VolumeInfo>(&mut w, &a, op::CLONE, &req),
        Err(Errno::EEXIST)
    );
    // The source changes: the clone keeps what it had.
    w.store(&mut a, f, b"new").unwrap();
    settle_flush(&mut w);
    assert_eq!(w.fetch(&a, cf).unwrap().1, vec![1u8; 100_000]);
    w.check();
    // The source goes: still.
    admin::<()>(&mut w, &a, op::REMOVE, &named("v")).unwrap();
    settle_flush(&mut w);
    assert_eq!(w.fetch(&a, cf).unwrap().1, vec![1u8; 100_000]);
    w.check();
    w.restart();
    w.check();
    assert_eq!(w.fetch(&a, cf).unwrap().1, vec![1u8; 100_000]);
    admin::<()>(&mut w, &a, op::REMOVE, &named("v.readonly")).unwrap();
    settle_flush(&mut w);
    assert_eq!(
        containers_on_disk(&w),
        containers - 100_000,
        "the last user took it"
    );
    w.check();
}

#[test]
fn a_backup_keeps_its_id_and_breaks_what_clients_cached_of_the_older_one() {
    let mut w = World::new(74);
    let mut a = w.client(Some(ADMIN_ID));
    let b = w.client(Some(ADMIN_ID));
    let vol = w.new_volume("v", ADMIN_ID);
    let f = w.create(&mut a, Fid::root(vol), "f").unwrap().fid;
    w.store(&mut a, f, b"one").unwrap();
    let first: VolumeInfo = admin(&mut w, &a, op::BACKUP, &named("v")).unwrap();
    assert_eq!(
        (first.name.as_str(), first.kind),
        ("v.backup", VolumeKind::Backup)
    );
    let bf = Fid {
        volume: first.id,
        ..f
    };
    assert_eq!(w.fetch(&b, bf).unwrap().1, b"one");
    w.store(&mut a, f, b"two").unwrap();
    let second: VolumeInfo = admin(&mut w, &a, op::BACKUP, &named("v")).unwrap();
    assert_eq!(second.id, first.id);
    assert!(second.stamp > first.stamp);
    w.settle(&[&b]);
    assert!(
        b.breaks.borrow().iter().any(|br| br.fids.contains(&bf)),
        "the promise on the older snapshot was broken"
    );
    assert_eq!(w.fetch(&b, bf).unwrap().1, b"two");
    w.check();
    // A backup of a backup makes no sense.
    assert_eq!(
        admin::<VolumeInfo>(&mut w, &a, op::BACKUP, &named("v.backup")),
        Err(Errno::EROFS)
    );
}

fn file(vol: VolumeId, n: u64) -> Vnode {
    Vnode {
        fid: Fid {
            volume: vol,
            vnode: n,
            unique: n,
        },
        kind: VnodeKind::File,
        mode: 0o644,
        owner: 1,
        group: 0,
        author: 1,
        link_count: 1,
        length: 0,
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
        atime: Timestamp::default(),
        data_version: 1,
        vv: coda_proto::vv::VersionVector::new(1),
        content_hash: EMPTY_HASH,
        container: NO_CONTAINER,
        parent: Fid::root(vol),
        acl: None,
        target: String::new(),
        history: Vec::new(),
        inline: Default::default(),
    }
}

/// A volume of `n` empty files, too big for one transaction.
fn big_image(w: &World, vol: VolumeId, n: u64, transient: bool) -> Image {
    let svc = w.svc();
    let root = svc.shard.meta.volume(w.root).unwrap();
    let mut root_dir = root.vnode(root.root()).unwrap().clone();
    root_dir.fid = Fid::root(vol);
    root_dir.parent = Fid::root(vol);
    let header = VolumeHeader {
        id: vol,
        name: format!("big{vol:x}"),
        next_vnode: n + 2,
        next_unique: n + 2,
        transient,
        ..root.header.clone()
    };
    let mut vnodes = vec![root_dir];
    vnodes.extend((2..n + 2).map(|i| file(vol, i)));
    let entries = (2..n + 2)
        .map(|i| EntryRecord {
            dir: Fid::root(vol),
            name: format!("f{i}"),
            fid: Fid {
                volume: vol,
                vnode: i,
                unique: i,
            },
        })
        .collect();
    Image {
        header,
        vnodes,
        entries,
    }
}

#[test]
fn big_volumes_are_built_cloned_and_removed_in_many_transactions() {
    let mut w = World::new(75);
    let mut a = w.client(Some(ADMIN_ID));
    let n = 3 * RECORDS_PER_TXN as u64;
    let vol = w.svc().cell.new_volume_id();
    let image = big_image(&w, vol, n, false);
    w.svc().shard.build(image).unwrap();
    let name = format!("big{vol:x}");
    w.svc().cell.register(
        vol,
        coda_vice::cell::Location {
            name: name.clone(),
            shard: 0,
            kind: VolumeKind::ReadWrite,
        },
    );
    w.check();
    let req = CloneVolume {
        volume: VolumeRef::Id(vol),
        name: Some("big.snap".into()),
    };
    let c: VolumeInfo = admin(&mut w, &a, op::CLONE, &req).unwrap();
    assert_eq!(c.files, n + 1);
    w.check();
    admin::<()>(&mut w, &a, op::REMOVE, &named(&name)).unwrap();
    admin::<()>(&mut w, &a, op::REMOVE, &named("big.snap")).unwrap();
    assert!(w.svc().shard.meta.volume(vol).is_none());
    w.check();
    w.restart();
    w.check();
    let _ = &mut a;
}

#[test]
fn volumes_left_half_built_or_half_removed_by_a_crash_go_at_start() {
    let mut w = World::new(76);
    let n = 2 * RECORDS_PER_TXN as u64;
    // Half built: the header says transient, some records are in.
    let half = w.svc().cell.new_volume_id();
    let image = big_image(&w, half, n, true);
    {
        let mut svc = w.svc();
        svc.shard
            .transact(rvm::Durability::Flush, |txn| {
                txn.create_volume(image.header.clone())?;
                image.vnodes[..100]
                    .iter()
                    .try_for_each(|v| txn.put_vnode(v.clone()))
            })
            .unwrap();
    }
    // Half removed: a whole volume marked transient by a removal that
    // went no further.
    let gone = w.svc().cell.new_volume_id();
    let image = big_image(&w, gone, n, false);
    let mut header = image.header.clone();
    w.svc().shard.build(image).unwrap();
    header.transient = true;
    header.stamp = w.svc().shard.meta.volume(gone).unwrap().header.stamp;
    {
        let mut svc = w.svc();
        svc.shard
            .transact(rvm::Durability::Flush, |txn| txn.put_header(header))
            .unwrap();
    }
    w.restart();
    let svc = w.svc();
    assert!(svc.shard.meta.volume(half).is_none());
    assert!(svc.shard.meta.volume(gone).is_none());
    assert!(svc.shard.meta.volume(w.root).is_some());
    drop(svc);
    w.check();
}

#[test]
fn a_dump_longer_than_one_read_comes_in_reads_of_at_most_the_limit() {
    let mut w = World::new(77);
    let mut a = w.client(Some(ADMIN_ID));
    let vol = w.new_volume("v", ADMIN_ID);
    let f = w.create(&mut a, Fid::root(vol), "f").unwrap().fid;
    let data: Vec<u8> = (0..DUMP_CHUNK_MAX as u32 + 3_000_000)
        .map(|i| (i % 253) as u8)
        .collect();
    w.store(&mut a, f, &data).unwrap();
    // dump_volume checks each read against the sink's limit.
    let full = dump_volume(&mut w, &a, vol, None);
    let RestoreReply::Done(r) = restore(&mut w, &a, &full, "r", DUMP_CHUNK_MAX as usize) else {
        panic!("refused")
    };
    assert_eq!(w.fetch(&a, Fid { volume: r.id, ..f }).unwrap().1, data);
}

/// A dump whose directories `a` and `b` (vnodes 2 and `b`) have the
/// parents given, both named in the root.
fn crafted(b: u64, parent_a: u64, parent_b: u64, root_links: u32) -> Vec<u8> {
    use coda_proto::dump::{DumpEntry, DumpHeader, DumpVnode, DumpVolume, Writer};
    let volume = 0x7f00_0099;
    let dir = |n: u64, parent: u64| DumpVnode {
        vnode: n,
        unique: n,
        kind: VnodeKind::Directory,
        mode: 0o755,
        owner: 0,
        group: 0,
        author: 0,
        link_count: 2,
        length: 0,
        mtime: Timestamp::default(),
        ctime: Timestamp::default(),
        atime: Timestamp::default(),
        data_version: 1,
        vv: coda_proto::vv::VersionVector::new(1),
        content_hash: EMPTY_HASH,
        parent_vnode: parent,
        parent_unique: parent,
        acl: Some(coda_proto::acl::Acl::default()),
        target: String::new(),
        data: false,
    };
    let mut out = Vec::new();
    let mut w = Writer::new();
    let header = DumpHeader {
        id: 5,
        base: None,
        volume,
        taken: Timestamp::default(),
        stamp: 1,
    };
    let vol = DumpVolume {
        name: "x".into(),
        kind: VolumeKind::ReadWrite,
        created: Timestamp::default(),
        next_vnode: 4,
        next_unique: 4,
    };
    w.begin(&mut out, &header, &vol);
    w.vnode(
        &mut out,
        &DumpVnode {
            link_count: root_links,
            ..dir(1, 1)
        },
    );
    w.vnode(&mut out, &dir(2, parent_a));
    w.vnode(&mut out, &dir(b, parent_b));
    for (name, n) in [("a", 2), ("b", b)] {
        let e = DumpEntry {
            dir_vnode: 1,
            dir_unique: 1,
            name: name.into(),
            volume,
            vnode: n,
            unique: n,
        };
        w.entry(&mut out, &e);
    }
    w.end(&mut out);
    out
}

#[test]
fn a_dump_whose_objects_are_not_one_tree_is_refused() {
    let mut w = World::new(78);
    let a = w.client(Some(ADMIN_ID));
    let good = restore(&mut w, &a, &crafted(3, 1, 1, 4), "good", 1 << 20);
    assert!(matches!(good, RestoreReply::Done(_)), "{good:?}");
    // Parents pointing at each other: a loop no walk up the tree ends.
    let looped = restore(&mut w, &a, &crafted(3, 3, 2, 4), "looped", 1 << 20);
    assert!(
        matches!(&looped, RestoreReply::Refused(r) if r.reason.contains("tree")),
        "{looped:?}"
    );
    let miscounted = restore(&mut w, &a, &crafted(3, 1, 1, 2), "miscounted", 1 << 20);
    assert!(
        matches!(&miscounted, RestoreReply::Refused(r) if r.reason.contains("link count")),
        "{miscounted:?}"
    );
    for name in ["looped", "miscounted"] {
        assert_eq!(w.svc().cell.vldb().by_name(name), None);
    }
    w.check();
}

#[test]
fn a_dump_with_derived_fids_restores_with_fids_to_hand_out() {
    use coda_proto::fid::{DERIVED_VNODE_BASE, LOCAL_VNODE_BASE};
    let mut w = World::new(79);
    let mut a = w.client(Some(ADMIN_ID));
    // An object made in a replicated volume: its fid is derived, numbered
    // far above the counters (here as high as one can be).
    let derived = LOCAL_VNODE_BASE - 1;
    let RestoreReply::Done(r) = restore(&mut w, &a, &crafted(derived, 1, 1, 4), "r", 1 << 20)
    else {
        panic!("refused")
    };
    let root = Fid::root(r.id);
    let mut acl = coda_proto::acl::Acl::default();
    acl.set(ADMIN_ID, coda_proto::acl::Rights::ALL, false);
    w.mutate(&mut a, Op::SetAcl(cml::SetAcl { dir: root, acl }))
        .unwrap();
    let made = w.create(&mut a, root, "new").unwrap();
    assert!(made.fid.vnode < DERIVED_VNODE_BASE, "{}", made.fid);
    let fids: FidRange = w
        .vice(
            &a,
            coda_proto::vice::op::ALLOC_FIDS,
            &AllocFids {
                volume: r.id,
                count: 4,
            },
        )
        .unwrap();
    assert!(fids.vnode < DERIVED_VNODE_BASE);
    w.check();
    // A number clients make up, in a dump, is refused.
    let local = restore(
        &mut w,
        &a,
        &crafted(LOCAL_VNODE_BASE + 7, 1, 1, 4),
        "l",
        1 << 20,
    );
    assert!(
        matches!(&local, RestoreReply::Refused(r) if r.reason.contains("makes up")),
        "{local:?}"
    );
}
