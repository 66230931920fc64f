//! Access control over the simulated network: which right of `rlidwka`
//! each operation needs, negative entries, nested groups, anonymous
//! clients and the owner's mode bits.

mod support;

use std::collections::BTreeMap;

use coda_proto::acl::{Acl, PrincipalId, Rights, ADMINISTRATORS, ANY_USER};
use coda_proto::cml::{self, Op};
use coda_proto::fid::Fid;
use coda_proto::status::{Status, Timestamp};
use coda_proto::vice::{op, GetAttr};
use coda_proto::Errno;
use coda_vice::pdb::ADMIN_ID;
use support::*;

/// An ACL from `(principal, rights)` pairs, positive and negative.
fn acl(positive: &[(PrincipalId, &str)], negative: &[(PrincipalId, &str)]) -> Acl {
    let mut a = Acl::default();
    for (id, r) in positive {
        a.set(*id, Rights::parse(r).unwrap(), false);
    }
    for (id, r) in negative {
        a.set(*id, Rights::parse(r).unwrap(), true);
    }
    a
}

fn set_acl(w: &mut World, c: &mut Client, dir: Fid, acl: Acl) -> Result<(), Errno> {
    w.mutate(c, Op::SetAcl(cml::SetAcl { dir, acl }))
        .map(|_| ())
}

fn get_acl(w: &mut World, c: &Client, dir: Fid) -> Result<Acl, Errno> {
    w.get_acl(c, dir)
}

fn read_link(w: &mut World, c: &Client, fid: Fid) -> Result<String, Errno> {
    w.vice(c, op::READ_LINK, &GetAttr { fid })
}

fn set_attr(
    w: &mut World,
    c: &mut Client,
    fid: Fid,
    mode: Option<u32>,
    owner: Option<u32>,
    mtime: Option<Timestamp>,
    length: Option<u64>,
) -> Result<Status, Errno> {
    let seen = w.seen(fid);
    w.mutate(
        c,
        Op::SetAttr(cml::SetAttr {
            fid,
            seen,
            mode,
            owner,
            mtime,
            length,
            group: None,
            atime: None,
        }),
    )
    .map(|s| s[0].clone())
}

fn create_mode(w: &mut World, c: &mut Client, dir: Fid, name: &str, mode: u32) -> Fid {
    let fid = c.local_fid(dir.volume);
    w.mutate(
        c,
        Op::Create(cml::Create {
            dir,
            name: name.into(),
            fid,
            mode,
            group: 0,
        }),
    )
    .unwrap()[0]
        .fid
}

fn symlink(
    w: &mut World,
    c: &mut Client,
    dir: Fid,
    name: &str,
    target: &str,
) -> Result<Status, Errno> {
    let fid = c.local_fid(dir.volume);
    w.mutate(
        c,
        Op::SymLink(cml::SymLink {
            dir,
            name: name.into(),
            fid,
            target: target.into(),
            mode: 0o777,
            group: 0,
        }),
    )
    .map(|s| s[0].clone())
}

fn rmdir(w: &mut World, c: &mut Client, dir: Fid, name: &str, fid: Fid) -> Result<(), Errno> {
    w.mutate(
        c,
        Op::RemoveDir(cml::RemoveDir {
            dir,
            name: name.into(),
            fid,
        }),
    )
    .map(|_| ())
}

fn unit<T>(r: Result<T, Errno>) -> Result<(), Errno> {
    r.map(|_| ())
}

/// Every operation of the matrix and the single rights that allow it
/// ("" for one no single right allows).
const MATRIX: &[(&str, &str)] = &[
    ("lookup", "l"),
    ("getattr-dir", "rl"),
    ("getattr-file", "rl"),
    ("getacl", "l"),
    ("fetch", "r"),
    ("readlink", "r"),
    ("create", "i"),
    ("mkdir", "i"),
    ("symlink", "i"),
    ("link", "i"),
    ("remove", "d"),
    ("rmdir", "d"),
    // A rename needs 'd' on its source and 'i' on its target.
    ("rename", ""),
    ("store", "w"),
    ("chmod", "w"),
    ("truncate", "w"),
    ("utimes", "w"),
    ("chown", "a"),
    ("setacl", "a"),
];

/// The objects one round of the matrix works on, in directory `d`.
struct Round {
    d: Fid,
    f: Fid,
    link: Fid,
    victim: Fid,
    victim_dir: Fid,
    mover: Fid,
    letter: char,
}

/// Tries every operation of the matrix as `c`; each one's outcome.
fn probe(w: &mut World, c: &mut Client, r: &Round) -> BTreeMap<&'static str, Result<(), Errno>> {
    let l = r.letter;
    let mut out = BTreeMap::new();
    out.insert("lookup", unit(w.list(c, r.d)));
    let dir_status = w.get_attr(c, r.d);
    if let Ok(st) = &dir_status {
        // The status says what the caller may do.
        assert_eq!(st.my_rights, Rights::parse(&l.to_string()).unwrap());
        assert_eq!(st.any_rights, Rights::NONE);
    }
    out.insert("getattr-dir", unit(dir_status));
    out.insert("getattr-file", unit(w.get_attr(c, r.f)));
    out.insert("getacl", unit(get_acl(w, c, r.d)));
    out.insert("fetch", unit(w.fetch(c, r.f)));
    out.insert("readlink", unit(read_link(w, c, r.link)));
    out.insert("create", unit(w.create(c, r.d, &format!("new-{l}"))));
    out.insert("mkdir", unit(w.mkdir(c, r.d, &format!("newdir-{l}"))));
    out.insert(
        "symlink",
        unit(symlink(w, c, r.d, &format!("sym-{l}"), "f")),
    );
    let link = Op::Link(cml::Link {
        dir: r.d,
        name: format!("ln-{l}"),
        fid: r.f,
    });
    out.insert("link", unit(w.mutate(c, link)));
    out.insert(
        "remove",
        unit(w.remove(c, r.d, &format!("rm-{l}"), r.victim)),
    );
    out.insert(
        "rmdir",
        rmdir(w, c, r.d, &format!("rmdir-{l}"), r.victim_dir),
    );
    let mv = Op::Rename(cml::Rename {
        from_dir: r.d,
        from_name: format!("mv-{l}"),
        to_dir: r.d,
        to_name: format!("moved-{l}"),
        fid: r.mover,
        replaced: None,
    });
    out.insert("rename", unit(w.mutate(c, mv)));
    out.insert(
        "store",
        unit(w.store(c, r.f, format!("data-{l}-0123456789").as_bytes())),
    );
    out.insert(
        "chmod",
        unit(set_attr(w, c, r.f, Some(0o644), None, None, None)),
    );
    out.insert(
        "truncate",
        unit(set_attr(w, c, r.f, None, None, None, Some(4))),
    );
    let t = Timestamp {
        secs: 1_000_000,
        nanos: 0,
    };
    out.insert(
        "utimes",
        unit(set_attr(w, c, r.f, None, None, Some(t), None)),
    );
    let owner = w.svc().shard.meta.vnode(r.f).unwrap().owner;
    let new_owner = if owner == CAROL as u32 { BOB } else { CAROL } as u32;
    out.insert(
        "chown",
        unit(set_attr(w, c, r.f, None, Some(new_owner), None, None)),
    );
    let same = acl(&[(ADMINISTRATORS, "all"), (ALICE, &l.to_string())], &[]);
    out.insert("setacl", set_acl(w, c, r.d, same));
    out
}

#[test]
fn each_right_allows_exactly_the_operations_that_need_it() {
    let mut w = World::new(11);
    let mut adm = w.client(Some(ADMIN_ID));
    let mut alice = w.client(Some(ALICE));
    let root = w.root_fid();
    let d = w.mkdir(&mut adm, root, "d").unwrap().fid;
    let f = w.create(&mut adm, d, "f").unwrap().fid;
    w.store(&mut adm, f, b"the file's first contents").unwrap();
    let link = symlink(&mut w, &mut adm, d, "link", "f").unwrap().fid;
    for letter in "rlidwka".chars() {
        // Fresh objects for the updates that consume them (made while the
        // ACL gives administrators everything, as it always does here).
        let victim = w.create(&mut adm, d, &format!("rm-{letter}")).unwrap().fid;
        let victim_dir = w
            .mkdir(&mut adm, d, &format!("rmdir-{letter}"))
            .unwrap()
            .fid;
        let mover = w.create(&mut adm, d, &format!("mv-{letter}")).unwrap().fid;
        let only = acl(
            &[(ADMINISTRATORS, "all"), (ALICE, &letter.to_string())],
            &[],
        );
        set_acl(&mut w, &mut adm, d, only.clone()).unwrap();
        assert_eq!(get_acl(&mut w, &adm, d).unwrap(), only);
        let round = Round {
            d,
            f,
            link,
            victim,
            victim_dir,
            mover,
            letter,
        };
        let got = probe(&mut w, &mut alice, &round);
        let mut wrong = Vec::new();
        for (name, allowed_by) in MATRIX {
            let expect = if allowed_by.contains(letter) {
                Ok(())
            } else {
                Err(Errno::EACCES)
            };
            if got[name] != expect {
                wrong.push(format!("{name}: got {:?}, expected {expect:?}", got[name]));
            }
        }
        assert_eq!(got.len(), MATRIX.len());
        assert!(wrong.is_empty(), "with only '{letter}': {wrong:#?}");
    }
    // What succeeded really happened; what failed left no trace.
    let names = entries_of(&w.list(&adm, d).unwrap());
    for n in [
        "new-i", "newdir-i", "sym-i", "ln-i", "mv-d", "mv-i", "rm-r", "rmdir-w",
    ] {
        assert!(names.contains_key(n), "{n} missing: {names:?}");
    }
    for n in [
        "new-r", "new-d", "newdir-a", "sym-w", "ln-l", "rm-d", "rmdir-d", "moved-d", "moved-i",
    ] {
        assert!(!names.contains_key(n), "{n} present: {names:?}");
    }
    let st = w.get_attr(&adm, f).unwrap();
    assert_eq!(st.length, 4, "the 'w' round stored and then truncated");
    assert_eq!(st.owner, CAROL as u32, "the 'a' round changed the owner");
    assert_eq!(w.fetch(&adm, f).unwrap().1, b"data");
    // Someone with no entry at all gets nothing.
    let bob = w.client(Some(BOB));
    assert_eq!(w.list(&bob, d).err(), Some(Errno::EACCES));
    assert_eq!(w.get_attr(&bob, f).err(), Some(Errno::EACCES));
    w.check();
}

#[test]
fn administrators_can_always_look_up_and_fix_an_acl() {
    let mut w = World::new(12);
    let mut adm = w.client(Some(ADMIN_ID));
    let root = w.root_fid();
    let d = w.mkdir(&mut adm, root, "locked").unwrap().fid;
    let f = w.create(&mut adm, d, "f").unwrap().fid;
    // An ACL without the administrators: they keep 'l' and 'a' only.
    set_acl(&mut w, &mut adm, d, acl(&[(ALICE, "all")], &[])).unwrap();
    let st = w.get_attr(&adm, d).unwrap();
    assert_eq!(st.my_rights, Rights::parse("la").unwrap());
    w.list(&adm, d).unwrap();
    get_acl(&mut w, &adm, d).unwrap();
    assert_eq!(w.fetch(&adm, f).err(), Some(Errno::EACCES));
    assert_eq!(w.create(&mut adm, d, "x").err(), Some(Errno::EACCES));
    assert_eq!(w.remove(&mut adm, d, "f", f).err(), Some(Errno::EACCES));
    // ... which is enough to give themselves the rest back.
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(&[(ALICE, "all"), (ADMINISTRATORS, "all")], &[]),
    )
    .unwrap();
    w.create(&mut adm, d, "x").unwrap();
    w.remove(&mut adm, d, "f", f).unwrap();
    // A plain user is not so lucky.
    let mut alice = w.client(Some(ALICE));
    set_acl(&mut w, &mut alice, d, acl(&[(ALICE, "rl")], &[])).unwrap();
    assert_eq!(
        set_acl(&mut w, &mut alice, d, acl(&[(ALICE, "all")], &[])),
        Err(Errno::EACCES)
    );
    assert_eq!(
        get_acl(&mut w, &alice, d).unwrap(),
        acl(&[(ALICE, "rl")], &[])
    );
    w.check();
}

#[test]
fn negative_entries_override_positive_ones() {
    let mut w = World::new(13);
    let mut adm = w.client(Some(ADMIN_ID));
    let mut alice = w.client(Some(ALICE));
    let mut bob = w.client(Some(BOB));
    let mut carol = w.client(Some(CAROL));
    let root = w.root_fid();
    let d = w.mkdir(&mut adm, root, "d").unwrap().fid;
    let f = w.create(&mut adm, d, "f").unwrap().fid;
    w.store(&mut adm, f, b"contents").unwrap();

    // A right granted through System:AnyUser, taken from one user.
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(
            &[(ANY_USER, "rl"), (ADMINISTRATORS, "all")],
            &[(ALICE, "l")],
        ),
    )
    .unwrap();
    assert_eq!(w.list(&alice, d).err(), Some(Errno::EACCES));
    assert_eq!(
        w.get_attr(&alice, d).unwrap().my_rights,
        Rights::READ,
        "'r' from System:AnyUser stays"
    );
    assert_eq!(w.fetch(&alice, f).unwrap().1, b"contents");
    w.list(&bob, d).unwrap();

    // Rights granted through a group (the clients bound before the group
    // existed: their protection domains are renewed).
    let team = {
        let svc = w.svc();
        let mut pdb = svc.cell.pdb_mut();
        let team = pdb.add_group("bob:team", "bob").unwrap();
        pdb.add_member("bob:team", "alice").unwrap();
        pdb.add_member("bob:team", "carol").unwrap();
        team
    };
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(
            &[(ANY_USER, "rl"), (ADMINISTRATORS, "all"), (team, "rlidw")],
            &[(CAROL, "i")],
        ),
    )
    .unwrap();
    let made = w.create(&mut alice, d, "by-alice").unwrap().fid;
    assert_eq!(
        w.create(&mut carol, d, "by-carol").err(),
        Some(Errno::EACCES),
        "a negative entry for a user beats the group's positive one"
    );
    // Carol keeps the group's other rights.
    w.remove(&mut carol, d, "by-alice", made).unwrap();
    w.store(&mut carol, f, b"carol was here").unwrap();
    // Bob owns the group but is not in it: System:AnyUser's rights only.
    assert_eq!(w.create(&mut bob, d, "by-bob").err(), Some(Errno::EACCES));
    assert_eq!(
        w.get_attr(&bob, d).unwrap().my_rights,
        Rights::parse("rl").unwrap()
    );

    // A negative entry for the group takes 'r' from its members, even
    // though System:AnyUser grants it.
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(
            &[(ANY_USER, "rl"), (ADMINISTRATORS, "all"), (team, "rlidw")],
            &[(team, "r")],
        ),
    )
    .unwrap();
    assert_eq!(w.fetch(&alice, f).err(), Some(Errno::EACCES));
    assert_eq!(w.fetch(&carol, f).err(), Some(Errno::EACCES));
    assert_eq!(w.fetch(&bob, f).unwrap().1, b"carol was here");
    assert_eq!(
        w.get_attr(&alice, d).unwrap().my_rights,
        Rights::parse("lidw").unwrap()
    );

    // A negative System:AnyUser entry denies everyone, positive entries or not.
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(
            &[(ANY_USER, "rl"), (ADMINISTRATORS, "all"), (ALICE, "all")],
            &[(ANY_USER, "i")],
        ),
    )
    .unwrap();
    assert_eq!(w.create(&mut alice, d, "x").err(), Some(Errno::EACCES));
    assert_eq!(w.create(&mut adm, d, "x").err(), Some(Errno::EACCES));
    w.store(&mut alice, f, b"alice still writes").unwrap();
    w.check();
}

#[test]
fn rights_flow_through_nested_groups() {
    let mut w = World::new(14);
    let mut adm = w.client(Some(ADMIN_ID));
    let mut carol = w.client(Some(CAROL));
    let mut bob = w.client(Some(BOB));
    let root = w.root_fid();
    let d = w.mkdir(&mut adm, root, "d").unwrap().fid;
    let (outer, middle, inner) = {
        let svc = w.svc();
        let mut pdb = svc.cell.pdb_mut();
        let outer = pdb.add_group("alice:outer", "alice").unwrap();
        let middle = pdb.add_group("alice:middle", "alice").unwrap();
        let inner = pdb.add_group("alice:inner", "alice").unwrap();
        pdb.add_member("alice:outer", "alice:middle").unwrap();
        pdb.add_member("alice:middle", "alice:inner").unwrap();
        (outer, middle, inner)
    };
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(&[(ADMINISTRATORS, "all"), (outer, "rli")], &[]),
    )
    .unwrap();
    // Carol is in none of them yet (and the ACL has no System:AnyUser).
    assert_eq!(w.list(&carol, d).err(), Some(Errno::EACCES));
    assert_eq!(w.create(&mut carol, d, "c").err(), Some(Errno::EACCES));
    // In the innermost group she gets the outermost group's rights, at once
    // on the connection she already has.
    w.svc()
        .cell
        .pdb_mut()
        .add_member("alice:inner", "carol")
        .unwrap();
    w.list(&carol, d).unwrap();
    let c = w.create(&mut carol, d, "c").unwrap();
    assert_eq!(c.my_rights, Rights::parse("rli").unwrap());
    assert_eq!(c.owner, CAROL as u32);
    assert_eq!(
        w.remove(&mut carol, d, "c", c.fid).err(),
        Some(Errno::EACCES)
    );
    // A negative entry on the middle group reaches her through the inner one.
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(&[(ADMINISTRATORS, "all"), (outer, "rli")], &[(middle, "i")]),
    )
    .unwrap();
    assert_eq!(w.create(&mut carol, d, "c2").err(), Some(Errno::EACCES));
    w.list(&carol, d).unwrap();
    // An entry on the inner group itself adds to what the outer gives.
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(
            &[(ADMINISTRATORS, "all"), (outer, "rli"), (inner, "d")],
            &[],
        ),
    )
    .unwrap();
    w.remove(&mut carol, d, "c", c.fid).unwrap();
    // Bob is in none of them.
    assert_eq!(w.list(&bob, d).err(), Some(Errno::EACCES));
    assert_eq!(w.create(&mut bob, d, "b").err(), Some(Errno::EACCES));
    w.check();
}

#[test]
fn anonymous_clients_get_only_system_anyuser_rights() {
    let mut w = World::new(15);
    let mut adm = w.client(Some(ADMIN_ID));
    let alice = w.client(Some(ALICE));
    let mut anon = w.client(None);
    let root = w.root_fid();
    let d = w.mkdir(&mut adm, root, "d").unwrap().fid;
    let f = w.create(&mut adm, d, "f").unwrap().fid;
    w.store(&mut adm, f, b"public").unwrap();
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(
            &[(ANY_USER, "rl"), (ADMINISTRATORS, "all"), (ALICE, "all")],
            &[],
        ),
    )
    .unwrap();
    let st = w.get_attr(&anon, d).unwrap();
    assert_eq!(st.my_rights, Rights::parse("rl").unwrap());
    assert_eq!(st.any_rights, Rights::parse("rl").unwrap());
    assert_eq!(w.get_attr(&alice, d).unwrap().my_rights, Rights::ALL);
    w.list(&anon, d).unwrap();
    assert_eq!(w.fetch(&anon, f).unwrap().1, b"public");
    assert_eq!(w.create(&mut anon, d, "x").err(), Some(Errno::EACCES));
    assert_eq!(w.store(&mut anon, f, b"defaced").err(), Some(Errno::EACCES));
    assert_eq!(w.remove(&mut anon, d, "f", f).err(), Some(Errno::EACCES));
    assert_eq!(
        set_acl(&mut w, &mut anon, d, acl(&[(ANY_USER, "all")], &[])),
        Err(Errno::EACCES)
    );
    // Without a System:AnyUser entry, anonymous clients get nothing.
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(&[(ADMINISTRATORS, "all"), (ALICE, "all")], &[]),
    )
    .unwrap();
    assert_eq!(w.list(&anon, d).err(), Some(Errno::EACCES));
    assert_eq!(w.get_attr(&anon, f).err(), Some(Errno::EACCES));
    assert_eq!(w.fetch(&anon, f).err(), Some(Errno::EACCES));
    assert_eq!(get_acl(&mut w, &anon, d).err(), Some(Errno::EACCES));
    w.list(&alice, d).unwrap();
    // Nor do they get a group's rights (they are in none).
    let team = {
        let svc = w.svc();
        let mut pdb = svc.cell.pdb_mut();
        let team = pdb.add_group("alice:team", "alice").unwrap();
        pdb.add_member("alice:team", "alice").unwrap();
        team
    };
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(&[(ADMINISTRATORS, "all"), (team, "rli")], &[]),
    )
    .unwrap();
    assert_eq!(w.list(&anon, d).err(), Some(Errno::EACCES));
    w.list(&alice, d).unwrap();
    // What System:AnyUser is given, they have.
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(&[(ADMINISTRATORS, "all"), (ANY_USER, "rli")], &[]),
    )
    .unwrap();
    let made = w.create(&mut anon, d, "by-anon").unwrap();
    assert_eq!(made.owner, 0);
    w.list(&anon, d).unwrap();
    w.check();
}

#[test]
fn mode_bits_guard_files_from_everyone_but_their_owner() {
    let mut w = World::new(16);
    let mut adm = w.client(Some(ADMIN_ID));
    let mut alice = w.client(Some(ALICE));
    let mut bob = w.client(Some(BOB));
    let root = w.root_fid();
    let d = w.mkdir(&mut adm, root, "d").unwrap().fid;
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(
            &[(ADMINISTRATORS, "all"), (ALICE, "rlidw"), (BOB, "rlidw")],
            &[],
        ),
    )
    .unwrap();
    // Read-only, owned by the administrator: 'w' is not enough to write it.
    let ro = create_mode(&mut w, &mut adm, d, "ro", 0o444);
    w.store(&mut adm, ro, b"original").unwrap();
    assert_eq!(
        w.store(&mut alice, ro, b"changed").err(),
        Some(Errno::EACCES)
    );
    assert_eq!(
        set_attr(&mut w, &mut alice, ro, None, None, None, Some(0)).err(),
        Some(Errno::EACCES)
    );
    let t = Timestamp { secs: 5, nanos: 0 };
    assert_eq!(
        set_attr(&mut w, &mut alice, ro, None, None, Some(t), None).err(),
        Some(Errno::EACCES)
    );
    assert_eq!(w.fetch(&alice, ro).unwrap().1, b"original");
    // Its owner may.
    w.store(&mut adm, ro, b"owner's change").unwrap();
    // A read-only file of alice's own: she may write it, bob may not.
    let mine = create_mode(&mut w, &mut alice, d, "mine", 0o644);
    let st = set_attr(&mut w, &mut alice, mine, Some(0o444), None, None, None).unwrap();
    assert_eq!(st.mode, 0o444);
    w.store(&mut alice, mine, b"alice's").unwrap();
    assert_eq!(w.store(&mut bob, mine, b"bob's").err(), Some(Errno::EACCES));
    assert_eq!(w.fetch(&bob, mine).unwrap().1, b"alice's");
    // ... but the mode bits never replace the ACL: without 'w' on the
    // directory, not even the owner writes.
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(
            &[(ADMINISTRATORS, "all"), (ALICE, "rli"), (BOB, "rlidw")],
            &[],
        ),
    )
    .unwrap();
    assert_eq!(
        w.store(&mut alice, mine, b"again").err(),
        Some(Errno::EACCES)
    );
    // No owner read bit: only the owner (or an administrator) reads it.
    let wo = create_mode(&mut w, &mut bob, d, "wo", 0o200);
    w.store(&mut bob, wo, b"secret").unwrap();
    assert_eq!(w.fetch(&alice, wo).err(), Some(Errno::EACCES));
    assert_eq!(w.fetch(&bob, wo).unwrap().1, b"secret");
    assert_eq!(w.fetch(&adm, wo).unwrap().1, b"secret");
    // Its status is still visible.
    assert_eq!(w.get_attr(&alice, wo).unwrap().length, 6);
    w.check();
}

#[test]
fn a_setattr_that_changes_nothing_still_needs_rights() {
    let mut w = World::new(17);
    let mut adm = w.client(Some(ADMIN_ID));
    let mut bob = w.client(Some(BOB));
    let root = w.root_fid();
    let d = w.mkdir(&mut adm, root, "d").unwrap().fid;
    let f = w.create(&mut adm, d, "f").unwrap().fid;
    set_acl(&mut w, &mut adm, d, acl(&[(ADMINISTRATORS, "all")], &[])).unwrap();
    let before = w.get_attr(&adm, f).unwrap();
    let stamp = w.stamp(&adm, w.root);
    // Bob has no right at all on d: not even an empty SetAttr (nor one
    // "changing" the owner to the owner it has) may touch f's version,
    // ctime or author, or hand him its status.
    assert_eq!(
        set_attr(&mut w, &mut bob, f, None, None, None, None).err(),
        Some(Errno::EACCES)
    );
    assert_eq!(
        set_attr(&mut w, &mut bob, f, None, Some(before.owner), None, None).err(),
        Some(Errno::EACCES)
    );
    // Nor may he tell a stale version from a current one.
    let stale = w.mutate(
        &mut bob,
        Op::SetAttr(cml::SetAttr {
            fid: f,
            seen: Default::default(),
            mode: None,
            owner: None,
            mtime: None,
            length: None,
            group: None,
            atime: None,
        }),
    );
    assert_eq!(stale.err(), Some(Errno::EACCES));
    assert_eq!(w.get_attr(&adm, f).unwrap(), before);
    assert_eq!(w.stamp(&adm, w.root), stamp);
    // With 'w' he may (it is a utimes-like touch).
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(&[(ADMINISTRATORS, "all"), (BOB, "w")], &[]),
    )
    .unwrap();
    let st = set_attr(&mut w, &mut bob, f, None, None, None, None).unwrap();
    assert_eq!(st.author, BOB as u32);
    // And the owner's own chmod needs no right on the directory, as in POSIX.
    let mut alice = w.client(Some(ALICE));
    set_acl(
        &mut w,
        &mut adm,
        d,
        acl(&[(ADMINISTRATORS, "all"), (ALICE, "i")], &[]),
    )
    .unwrap();
    let mine = w.create(&mut alice, d, "mine").unwrap().fid;
    set_acl(&mut w, &mut adm, d, acl(&[(ADMINISTRATORS, "all")], &[])).unwrap();
    let st = set_attr(&mut w, &mut alice, mine, Some(0o600), None, None, None).unwrap();
    assert_eq!(st.mode, 0o600);
    w.check();
}
