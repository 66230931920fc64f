//! No small fixed limits: a directory of a million entries, an ACL of
//! hundreds of entries, names of 255 bytes, 64-bit lengths.

mod support;

use coda_proto::acl::{Acl, AclEntry, Rights};
use coda_proto::cml::{self, CmlRecord, Op};
use coda_proto::fid::{Fid, LOCAL_VNODE_BASE};
use coda_vice::pdb::ADMIN_ID;
use coda_vice::shard::{Shard, ShardOptions};
use support::{apply_batch, record_n};

const CELL: [u8; 16] = support::CELL_ID;

fn options() -> ShardOptions {
    ShardOptions {
        segment_bytes: 2 << 30,
        log_bytes: 64 << 20,
        ..Default::default()
    }
}

fn new_volume(dir: &std::path::Path) -> (Shard, u64) {
    support::standalone_volume(dir, &options(), "big")
}

#[test]
fn a_directory_of_a_million_entries_survives_a_restart() {
    const ENTRIES: u64 = 1_000_000;
    const BATCH: u64 = 5_000;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard0");
    let (mut shard, vol) = new_volume(&dir);
    let root = Fid::root(vol);
    let mut n = 0;
    while n < ENTRIES {
        let records: Vec<CmlRecord> = (n..n + BATCH)
            .map(|i| {
                let name = format!("entry-{i:07}-{}", "x".repeat((i % 200) as usize));
                let fid = Fid::new(vol, LOCAL_VNODE_BASE + i, i);
                record_n(
                    i + 1,
                    Op::Create(cml::Create {
                        dir: root,
                        name,
                        fid,
                        mode: 0o644,
                        group: 0,
                    }),
                )
            })
            .collect();
        apply_batch(&mut shard, vol, &records).unwrap();
        n += BATCH;
    }
    shard.flush().unwrap();
    drop(shard);
    let (shard, report) = Shard::open(&dir, 0, CELL, &options()).unwrap();
    assert_eq!(report.vnodes as u64, ENTRIES + 1);
    let v = shard.meta.volume(vol).unwrap();
    let entries = v.entries(root).unwrap();
    assert_eq!(entries.len() as u64, ENTRIES);
    let name = format!("entry-{:07}-{}", 777_777, "x".repeat(777_777 % 200));
    assert!(v.lookup(root, &name).is_some());
    let problems = coda_vice::fsck::check_shard(&shard);
    assert!(
        problems.is_empty(),
        "{:?}",
        &problems[..problems.len().min(5)]
    );
}

#[test]
fn acls_of_hundreds_of_entries_and_long_names_are_kept() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard0");
    let (mut shard, vol) = new_volume(&dir);
    let root = Fid::root(vol);
    let mut acl = Acl::default();
    for id in 1000..1600 {
        acl.positive.push(AclEntry {
            id,
            rights: Rights::READ.union(Rights::LOOKUP),
        });
    }
    for id in 2000..2200 {
        acl.negative.push(AclEntry {
            id,
            rights: Rights::WRITE,
        });
    }
    acl.positive.push(AclEntry {
        id: ADMIN_ID,
        rights: Rights::ALL,
    });
    let long = "n".repeat(255);
    apply_batch(
        &mut shard,
        vol,
        &[
            record_n(
                1,
                Op::SetAcl(cml::SetAcl {
                    dir: root,
                    acl: acl.clone(),
                }),
            ),
            record_n(
                2,
                Op::MakeDir(cml::MakeDir {
                    dir: root,
                    name: long.clone(),
                    fid: Fid::new(vol, LOCAL_VNODE_BASE + 1, 1),
                    mode: 0o755,
                    group: 0,
                }),
            ),
        ],
    )
    .unwrap();
    shard.flush().unwrap();
    drop(shard);
    let (shard, _) = Shard::open(&dir, 0, CELL, &options()).unwrap();
    let v = shard.meta.volume(vol).unwrap();
    assert_eq!(v.vnode(root).unwrap().acl.as_ref(), Some(&acl));
    let sub = v.lookup(root, &long).unwrap();
    // A new directory starts with its parent's ACL.
    assert_eq!(v.vnode(sub).unwrap().acl.as_ref(), Some(&acl));
    assert!(coda_vice::fsck::check_shard(&shard).is_empty());
}
