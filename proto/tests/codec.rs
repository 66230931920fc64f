//! Every request and reply survives the round trip through the body codec,
//! and no byte string makes a decoder panic or accept trailing garbage.

use coda_proto::acl::{Acl, AclEntry, Rights};
use coda_proto::cml::{self, CmlRecord, Op};
use coda_proto::vice::{Applied, Conflict, FidRemap, Reintegrate, ReintegrateReply};
use coda_proto::{Fid, Status, StoreId, Timestamp, VersionVector, VnodeKind};
use coda_rpc2::codec::{from_bytes, to_bytes, DecodeError};
use proptest::prelude::*;

fn fid() -> impl Strategy<Value = Fid> {
    (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(v, n, u)| Fid::new(v, n, u))
}

fn store_id() -> impl Strategy<Value = StoreId> {
    (any::<u64>(), any::<u64>()).prop_map(|(host, unique)| StoreId { host, unique })
}

fn time() -> impl Strategy<Value = Timestamp> {
    (any::<i64>(), 0u32..1_000_000_000).prop_map(|(secs, nanos)| Timestamp { secs, nanos })
}

fn name() -> impl Strategy<Value = String> {
    "[^/\u{0}]{1,40}"
}

fn acl() -> impl Strategy<Value = Acl> {
    let entry = (any::<i32>(), 0u8..128).prop_map(|(id, bits)| AclEntry {
        id,
        rights: Rights::parse(&rights_letters(bits)).unwrap_or(Rights::NONE),
    });
    (
        prop::collection::vec(entry.clone(), 0..8),
        prop::collection::vec(entry, 0..4),
    )
        .prop_map(|(positive, negative)| Acl { positive, negative })
}

fn rights_letters(bits: u8) -> String {
    "rlidwka"
        .chars()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, c)| c)
        .collect::<String>()
        + "r"
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (fid(), store_id(), any::<u64>(), any::<[u8; 32]>()).prop_map(|(fid, seen, length, h)| {
            Op::Store(cml::Store {
                fid,
                seen,
                length,
                content_hash: h,
            })
        }),
        (
            fid(),
            store_id(),
            any::<Option<u32>>(),
            any::<Option<u32>>(),
            prop::option::of(time()),
            any::<Option<u64>>()
        )
            .prop_map(|(fid, seen, mode, owner, mtime, length)| Op::SetAttr(
                cml::SetAttr {
                    fid,
                    seen,
                    mode,
                    owner,
                    mtime,
                    length,
                    group: None,
                    atime: None,
                }
            )),
        (fid(), name(), fid(), any::<u32>()).prop_map(|(dir, name, fid, mode)| Op::Create(
            cml::Create {
                dir,
                name,
                fid,
                mode,
                group: 0,
            }
        )),
        (fid(), name(), fid(), store_id()).prop_map(|(dir, name, fid, seen)| Op::Remove(
            cml::Remove {
                dir,
                name,
                fid,
                seen
            }
        )),
        (fid(), name(), fid()).prop_map(|(dir, name, fid)| Op::Link(cml::Link { dir, name, fid })),
        (fid(), name(), fid(), name(), fid(), prop::option::of(fid())).prop_map(
            |(from_dir, from_name, to_dir, to_name, fid, replaced)| Op::Rename(cml::Rename {
                from_dir,
                from_name,
                to_dir,
                to_name,
                fid,
                replaced
            })
        ),
        (fid(), name(), fid(), any::<u32>()).prop_map(|(dir, name, fid, mode)| Op::MakeDir(
            cml::MakeDir {
                dir,
                name,
                fid,
                mode,
                group: 0,
            }
        )),
        (fid(), name(), fid()).prop_map(|(dir, name, fid)| Op::RemoveDir(cml::RemoveDir {
            dir,
            name,
            fid
        })),
        (fid(), name(), fid(), ".{0,60}", any::<u32>()).prop_map(
            |(dir, name, fid, target, mode)| Op::SymLink(cml::SymLink {
                dir,
                name,
                fid,
                target,
                mode,
                group: 0,
            })
        ),
        (fid(), acl()).prop_map(|(dir, acl)| Op::SetAcl(cml::SetAcl { dir, acl })),
    ]
}

fn record() -> impl Strategy<Value = CmlRecord> {
    (store_id(), time(), op()).prop_map(|(store_id, time, op)| CmlRecord { store_id, time, op })
}

fn status() -> impl Strategy<Value = Status> {
    (
        (fid(), 1u8..4, any::<u32>(), any::<u32>(), any::<u64>()),
        (
            time(),
            prop::collection::vec(any::<u64>(), 0..4),
            store_id(),
        ),
        (any::<[u8; 32]>(), fid(), 0u8..128),
    )
        .prop_map(
            |((fid, kind, mode, owner, length), (mtime, slots, sid), (hash, parent, r))| Status {
                fid,
                kind: match kind {
                    1 => VnodeKind::File,
                    2 => VnodeKind::Directory,
                    _ => VnodeKind::Symlink,
                },
                mode,
                owner,
                group: mode >> 7,
                author: owner,
                link_count: 1,
                length,
                mtime,
                ctime: mtime,
                atime: mtime,
                data_version: length / 3,
                vv: VersionVector {
                    slots,
                    store_id: sid,
                    flags: 0,
                },
                content_hash: hash,
                parent,
                my_rights: Rights::parse(&rights_letters(r)).unwrap(),
                any_rights: Rights::NONE,
                callback: 1,
            },
        )
}

proptest! {
    #[test]
    fn reintegrate_batches_round_trip(
        volume in any::<u64>(),
        batch in store_id(),
        records in prop::collection::vec(record(), 0..20),
    ) {
        let req = Reintegrate { volume, batch, records };
        prop_assert_eq!(from_bytes::<Reintegrate>(&to_bytes(&req)), Ok(req));
    }

    #[test]
    fn reintegrate_replies_round_trip(
        first in (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        stamp in any::<u64>(),
        index in any::<u32>(),
        code in any::<u16>(),
        f in fid(),
    ) {
        let applied = ReintegrateReply::Applied(Applied {
            volume: first.0,
            first_vnode: first.1,
            first_unique: first.2,
            created: first.3,
            stamp,
            found: vec![FidRemap { local: f, fid: f }],
        });
        prop_assert_eq!(from_bytes::<ReintegrateReply>(&to_bytes(&applied)), Ok(applied));
        let conflict = ReintegrateReply::Conflict(Conflict { index, code, fid: f });
        prop_assert_eq!(from_bytes::<ReintegrateReply>(&to_bytes(&conflict)), Ok(conflict));
    }

    #[test]
    fn statuses_round_trip(s in status()) {
        prop_assert_eq!(from_bytes::<Status>(&to_bytes(&s)), Ok(s));
    }

    #[test]
    fn every_truncation_of_a_batch_is_an_error(records in prop::collection::vec(record(), 1..4)) {
        let bytes = to_bytes(&Reintegrate { volume: 1, batch: StoreId::default(), records });
        for cut in 0..bytes.len() {
            prop_assert!(from_bytes::<Reintegrate>(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.to_vec();
        longer.push(0);
        let trailing = from_bytes::<Reintegrate>(&longer);
        prop_assert_eq!(trailing, Err(DecodeError::TrailingBytes { count: 1 }));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = from_bytes::<Reintegrate>(&bytes);
        let _ = from_bytes::<ReintegrateReply>(&bytes);
        let _ = from_bytes::<Status>(&bytes);
        let _ = from_bytes::<Acl>(&bytes);
    }
}

#[test]
fn decode_errors_name_the_variant_and_field() {
    let record = CmlRecord {
        store_id: StoreId::default(),
        time: Timestamp::default(),
        op: Op::Create(cml::Create {
            dir: Fid::root(1),
            name: "a".into(),
            fid: Fid::new(1, 2, 2),
            mode: 0o644,
            group: 0,
        }),
    };
    let bytes = to_bytes(&Reintegrate {
        volume: 1,
        batch: StoreId::default(),
        records: vec![record],
    });
    let err = from_bytes::<Reintegrate>(&bytes[..bytes.len() - 1]).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("Create.group"), "{text}");
    // An unknown op tag is refused, not guessed at.
    let mut bad = bytes.to_vec();
    // volume, batch (2), count, store id (2), time (2), then the op's tag.
    let tag_at = 8;
    assert_eq!(bad[tag_at], 3, "the Create tag");
    bad[tag_at] = 99;
    assert!(from_bytes::<Reintegrate>(&bad).is_err());
    // A rights byte with bits beyond rlidwka is refused.
    assert!(from_bytes::<Rights>(&[0x80]).is_err());
}
