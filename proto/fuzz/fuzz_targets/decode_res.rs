//! Replication messages come from other servers and from clients (COP2,
//! RESOLVE, REPAIR, WITH_COP2), and the cell's configuration (UPDATE,
//! MAKE_REPLICA, JOIN) from other servers: decoding any bytes must end in a value or an error,
//! never a panic or a huge allocation; and what decodes must encode back
//! to the same bytes.

#![no_main]

use coda_proto::res::{
    Cop2, Install, ObjectState, Repair, Resolve, StateRequest, SummaryEntry, SummaryRequest,
    WithCop2, Inconsistent,
};
use coda_proto::update::{CellState, Join, JoinReply, UpdateRequest, VolumeEntry};
use coda_rpc2::codec::{from_bytes, to_bytes, Decode, Encode};
use libfuzzer_sys::fuzz_target;

fn canonical<T: Decode + Encode>(data: &[u8]) {
    if let Ok(v) = from_bytes::<T>(data) {
        assert_eq!(&to_bytes(&v)[..], data);
    }
}

fuzz_target!(|data: &[u8]| {
    canonical::<Install>(data);
    canonical::<Vec<Option<ObjectState>>>(data);
    canonical::<Vec<SummaryEntry>>(data);
    canonical::<StateRequest>(data);
    canonical::<SummaryRequest>(data);
    canonical::<Cop2>(data);
    canonical::<Resolve>(data);
    canonical::<Repair>(data);
    canonical::<WithCop2>(data);
    canonical::<Vec<Inconsistent>>(data);
    canonical::<UpdateRequest>(data);
    canonical::<CellState>(data);
    canonical::<VolumeEntry>(data);
    canonical::<Join>(data);
    canonical::<JoinReply>(data);
});
