//! Recovery from arbitrary log bytes: no panic, no out-of-bounds access, and a log
//! that opens keeps working.
//!
//! The first input byte picks where the bytes go: over the record area of a valid log
//! (so the status block points the scanner at them), over the whole file, or XORed
//! into a log that holds real records.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rvm::{Durability, MemStorage, Mode, Options, Rvm, LOG_AREA_START};

fn opts() -> Options {
    Options { log_area_bytes: 64 << 10, background_truncation: false, ..Options::default() }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    let (seg, log) = (MemStorage::new(), MemStorage::new());
    let rvm = Rvm::create(Box::new(seg.clone()), Box::new(log.clone()), 16 << 10, opts()).unwrap();
    if mode % 3 == 2 {
        for i in 0..6u64 {
            let mut tx = rvm.begin(Mode::NoRestore).unwrap();
            tx.write(i * 700, &[i as u8; 300]).unwrap();
            tx.commit(Durability::Flush).unwrap();
        }
    }
    drop(rvm); // flushes, never truncates: the log keeps its records
    let mut bytes = log.to_bytes();
    let start = if mode % 3 == 0 { 0 } else { LOG_AREA_START as usize };
    for (i, b) in data.iter().enumerate() {
        let Some(slot) = bytes.get_mut(start + i) else { break };
        if mode % 3 == 2 {
            *slot ^= b;
        } else {
            *slot = *b;
        }
    }
    let Ok((rvm, _)) = Rvm::open(Box::new(seg), Box::new(MemStorage::from_bytes(bytes)), opts()) else { return };
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.write(0, b"still works").unwrap();
    tx.commit(Durability::Flush).unwrap();
    rvm.truncate().unwrap();
});
