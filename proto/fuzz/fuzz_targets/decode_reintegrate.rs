//! A Reintegrate batch is the largest body a client sends: decoding any
//! bytes must end in a value or an error, never a panic or a huge
//! allocation; and what decodes must encode back to the same bytes.

#![no_main]

use coda_proto::vice::{Reintegrate, ReintegrateReply};
use coda_proto::Status;
use coda_rpc2::codec::{from_bytes, to_bytes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = from_bytes::<Reintegrate>(data) {
        // Canonical encoding: one value, one byte string.
        assert_eq!(&to_bytes(&batch)[..], data);
    }
    let _ = from_bytes::<ReintegrateReply>(data);
    let _ = from_bytes::<Status>(data);
});
