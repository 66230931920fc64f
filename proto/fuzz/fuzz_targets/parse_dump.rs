//! Dumps are read from files and pipes that anything may have damaged or
//! cut short, in whatever pieces the reads return: parsing any bytes, in any
//! pieces, must end in records or an error with an offset inside the input,
//! never a panic; the pieces must not change the outcome; and a dump that
//! parses to its end holds exactly what its end record counts.
//!
//! Input: one byte `n`, then `n % 8` little-endian u16 split points, then
//! the dump bytes.

#![no_main]

use coda_proto::dump::{DumpEnd, DumpError, Parser, Record};
use libfuzzer_sys::fuzz_target;

/// Every record, and how parsing ended.
fn parse(pieces: &[&[u8]]) -> (Vec<Record>, Result<(), DumpError>) {
    let mut parser = Parser::new();
    let mut records = Vec::new();
    for piece in pieces {
        parser.feed(piece);
        loop {
            match parser.next() {
                Ok(Some(r)) => records.push(r),
                Ok(None) => break,
                Err(e) => return (records, Err(e)),
            }
        }
    }
    let end = parser.finish();
    assert_eq!(end.is_ok(), parser.ended(), "finish agrees with ended");
    (records, end)
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let splits = usize::from(n % 8);
    if rest.len() < 2 * splits {
        return;
    }
    let (points, dump) = rest.split_at(2 * splits);
    let mut cuts: Vec<usize> = points
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (dump.len() + 1))
        .collect();
    cuts.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for cut in cuts.into_iter().chain([dump.len()]) {
        pieces.push(&dump[from..cut]);
        from = cut;
    }

    let (records, outcome) = parse(&pieces);
    let whole = parse(&[dump]);
    assert_eq!(
        (&records, &outcome),
        (&whole.0, &whole.1),
        "pieces {:?} change the outcome",
        pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
    );
    match outcome {
        Err(e) => assert!(e.offset <= dump.len() as u64, "{e} in {} bytes", dump.len()),
        Ok(()) => {
            let mut seen = DumpEnd::default();
            let mut end = None;
            for r in &records {
                assert!(end.is_none(), "a record after the end");
                match r {
                    Record::Vnode(_) => seen.vnodes += 1,
                    Record::Entry(_) => seen.entries += 1,
                    Record::Removed(_) => seen.removed += 1,
                    Record::Data(d) => seen.data_bytes += d.len() as u64,
                    Record::End(e) => end = Some(*e),
                    Record::Header(_) | Record::Volume(_) => {}
                }
            }
            assert_eq!(end, Some(seen), "the end record's counts");
            assert!(
                matches!(records.first(), Some(Record::Header(_))),
                "a dump starts with its header"
            );
        }
    }
});
