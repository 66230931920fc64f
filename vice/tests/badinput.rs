//! Bad input gets a clear error and loses nothing: random request bodies
//! for every call, and a metadata segment that fills up mid-batch.

mod support;

use bytes::Bytes;
use coda_proto::fid::Fid;
use coda_proto::{auth, vice, volutil, Errno};
use coda_rpc2::{ConnId, Identity, IncomingId, Level};
use coda_vice::pdb::ADMIN_ID;
use coda_vice::service::Action;
use coda_vice::shard::{Shard, ShardOptions};
use proptest::prelude::*;
use support::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_bodies_get_an_error_or_an_answer_never_a_panic(
        calls in prop::collection::vec(
            (prop::sample::select(vec![vice::SUBSYSTEM, auth::SUBSYSTEM, volutil::SUBSYSTEM, 4242]),
             prop_oneof![0u16..32, any::<u16>()],
             prop::collection::vec(any::<u8>(), 0..300)),
            1..40),
    ) {
        let w = World::new(9);
        let mut svc = w.svc();
        let admin = Identity { user_id: Some(ADMIN_ID as u32), level: Level::Encrypted };
        svc.accepted(ConnId(1), admin);
        for (seq, (subsystem, opcode, body)) in calls.into_iter().enumerate() {
            let id = IncomingId { conn: ConnId(1), seq: seq as u64 };
            let mut out = Vec::new();
            svc.request(id, admin, subsystem, opcode, Bytes::from(body), &mut out);
            // Every call is answered, or waits on a transfer it asked for.
            let answered = out.iter().any(|a| matches!(a,
                Action::Reply { id: r, .. } | Action::Pull { id: r, .. } | Action::Push { id: r, .. }
                | Action::Delegate { id: r, .. } if *r == id));
            prop_assert!(answered, "call {}/{} left unanswered", subsystem, opcode);
        }
        drop(svc);
        w.check();
    }
}

#[test]
fn a_full_segment_fails_the_batch_with_enospc_and_undoes_all_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("shard0");
    let opts = ShardOptions {
        segment_bytes: 2 << 20,
        log_bytes: 8 << 20,
        ..Default::default()
    };
    let (mut shard, vol) = standalone_volume(&dir, &opts, "small");
    let root = Fid::root(vol);
    // Batches of 100 creates until the heap runs out.
    let mut made = 0u64;
    let failure = loop {
        let batch = creates(vol, made..made + 100, |i| format!("file-{i:06}"));
        match apply_batch(&mut shard, vol, &batch) {
            Ok(()) => made += 100,
            Err(e) => break e,
        }
        assert!(made < 1_000_000, "the segment never filled");
    };
    assert_eq!(failure, Errno::ENOSPC);
    // Nothing of the failed batch is left, in memory or in RVM.
    let v = shard.meta.volume(vol).unwrap();
    assert_eq!(v.entries(root).unwrap().len() as u64, made);
    assert!(coda_vice::fsck::check_shard(&shard).is_empty());
    shard.flush().unwrap();
    drop(shard);
    let (shard, _) = Shard::open(&dir, 0, CELL_ID, &opts).unwrap();
    assert_eq!(
        shard.meta.volume(vol).unwrap().entries(root).unwrap().len() as u64,
        made
    );
    assert!(coda_vice::fsck::check_shard(&shard).is_empty());
}
