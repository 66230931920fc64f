//! Venus reads control requests from any local user, and the tools read
//! Venus's replies and events: no frame may panic either side or make it
//! allocate more than the frame limit.

#![no_main]

use coda_proto::control::{receive, Reply, Request};
use coda_proto::vice::{DirEntry, Principals};
use coda_rpc2::codec::from_bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(Some(_)) = receive::<Request>(&mut r) {}
    let mut r = data;
    while let Ok(Some(_)) = receive::<Reply>(&mut r) {}
    // Directory listings come from servers into the client's cache.
    let _ = from_bytes::<Vec<DirEntry>>(data);
    let _ = from_bytes::<Principals>(data);
});
