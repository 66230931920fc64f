//! The CML, conflicts and the hoard database are read back from the cache
//! at every start, whatever a crash or a full disk left there: decoding any
//! bytes must end in a value or an error, never a panic or a huge
//! allocation; and what decodes must encode back to the same bytes.

#![no_main]

use coda_rpc2::codec::{from_bytes, to_bytes};
use coda_venus::cml::LogEntry;
use coda_venus::conflict::Conflict;
use coda_venus::hoard::HoardRecord;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = from_bytes::<LogEntry>(data) {
        assert_eq!(&to_bytes(&e)[..], data);
    }
    let _ = from_bytes::<Conflict>(data);
    let _ = from_bytes::<HoardRecord>(data);
});
