//! Recovery from arbitrary log bytes: no panic, no out-of-bounds access, and a log
//! that opens keeps working.
//!
//! The first input byte picks where the bytes go: over the record area of a valid log
//! (so the status block points the scanner at them), over the whole file, XORed into a
//! log that holds real records, or into the status block's fields with its checksum
//! made valid again (so hostile sizes, heads and counters reach the code behind it).

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
    let mode = mode % 4;
    if mode >= 2 {
        for i in 0..6u64 {
            let mut tx = rvm.begin(Mode::NoRestore).unwrap();
            tx.write(i * 700, &[i as u8; 300]).unwrap();
            tx.commit(Durability::Flush).unwrap();
        }
    }
    drop(rvm); // flushes, never truncates: the log keeps its records
    let mut bytes = log.to_bytes();
    if mode == 3 {
        // Fields after magic and version; the generation picks the slot in use.
        let slot = if bytes[4096..4100] == *b"RVMT" { 4096 } else { 0 };
        for (i, b) in data.iter().take(52 - 8).enumerate() {
            bytes[slot + 8 + i] = *b;
        }
        let crc = crc32fast::hash(&bytes[slot..slot + 52]);
        bytes[slot + 52..slot + 56].copy_from_slice(&crc.to_le_bytes());
    } else {
        let start = if mode == 0 { 0 } else { LOG_AREA_START as usize };
        for (i, b) in data.iter().enumerate() {
            let Some(slot) = bytes.get_mut(start + i) else { break };
            if mode == 2 {
                *slot ^= b;
            } else {
                *slot = *b;
            }
        }
    }
    let Ok((rvm, _)) = Rvm::open(Box::new(seg), Box::new(MemStorage::from_bytes(bytes)), opts()) else { return };
    let mut tx = rvm.begin(Mode::Restore).unwrap();
    tx.write(0, b"still works").unwrap();
    // A log whose status names an area larger than the log can fail its writes; it
    // must fail with an error, never a panic.
    if tx.commit(Durability::Flush).is_ok() {
        let _ = rvm.truncate();
    }
});
