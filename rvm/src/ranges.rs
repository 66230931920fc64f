//! Sets of byte ranges, the bookkeeping behind coalescing.
//!
//! [`RangeSet`] holds the ranges a transaction declared, so overlapping `set_range`
//! calls are logged once and old values are saved once. [`RangeMap`] holds new values
//! keyed by offset, newest winning, so consecutive no-flush transactions coalesce into
//! one log record and truncation writes each byte once.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included};

use crate::format::{pad8, RANGE_HEADER_BYTES, RECORD_HEADER_BYTES};

/// Disjoint, non-touching half-open ranges `[start, end)`.
#[derive(Debug, Default, Clone)]
pub struct RangeSet {
    ranges: BTreeMap<u64, u64>,
    /// What these ranges cost in a log record (headers and padded data).
    encoded_bytes: u64,
}

impl RangeSet {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Log bytes a record holding exactly these ranges would take.
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES + self.encoded_bytes
    }

    /// Adds `[start, end)` and calls `fresh` for each piece that was not covered before.
    pub fn insert(&mut self, start: u64, end: u64, mut fresh: impl FnMut(u64, u64)) {
        if start >= end {
            return;
        }
        let (mut new_start, mut new_end) = (start, end);
        // The first byte of [start, end) not yet known to be covered.
        let mut fresh_from = start;
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                new_start = s;
                new_end = new_end.max(e);
                fresh_from = e.min(end);
                self.remove(s, e);
            }
        }
        // Successors that overlap or touch merge in; the gaps before them are fresh.
        while let Some((&s, &e)) = self
            .ranges
            .range((Excluded(new_start), Included(new_end)))
            .next()
        {
            if s > fresh_from {
                fresh(fresh_from, s);
            }
            fresh_from = e.min(end);
            new_end = new_end.max(e);
            self.remove(s, e);
        }
        if fresh_from < end {
            fresh(fresh_from, end);
        }
        self.add(new_start, new_end);
    }

    /// True when `[start, end)` lies inside one declared range.
    pub fn covers(&self, start: u64, end: u64) -> bool {
        match self.ranges.range(..=start).next_back() {
            Some((_, &e)) => end <= e,
            None => false,
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&s, &e)| (s, e))
    }

    fn remove(&mut self, s: u64, e: u64) {
        self.ranges.remove(&s);
        self.encoded_bytes -= RANGE_HEADER_BYTES + pad8(e - s);
    }

    fn add(&mut self, s: u64, e: u64) {
        self.ranges.insert(s, e);
        self.encoded_bytes += RANGE_HEADER_BYTES + pad8(e - s);
    }
}

/// New values keyed by offset: disjoint, non-touching ranges, newest bytes winning.
#[derive(Debug, Default, Clone)]
pub struct RangeMap {
    ranges: BTreeMap<u64, Vec<u8>>,
    encoded_bytes: u64,
}

impl RangeMap {
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Log bytes a record holding exactly these ranges would take.
    pub fn record_bytes(&self) -> u64 {
        RECORD_HEADER_BYTES + self.encoded_bytes
    }

    /// Writes `data` at `offset`, replacing older bytes and merging with neighbours.
    pub fn insert(&mut self, offset: u64, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let end = offset + data.len() as u64;
        let (start, mut buf) = match self.ranges.range(..=offset).next_back() {
            Some((&s, v)) if s + v.len() as u64 >= offset => {
                let v = self.take(s);
                (s, v)
            }
            _ => (offset, Vec::new()),
        };
        let rel = (offset - start) as usize;
        if buf.len() < rel + data.len() {
            buf.resize(rel + data.len(), 0);
        }
        buf[rel..rel + data.len()].copy_from_slice(data);
        // Successors starting inside or right at the end of the new bytes merge in;
        // only their part beyond `end` survives.
        while let Some((&s, _)) = self.ranges.range((Excluded(start), Included(end))).next() {
            let v = self.take(s);
            let v_end = s + v.len() as u64;
            if v_end > end {
                buf.extend_from_slice(&v[(end - s) as usize..]);
            }
        }
        self.put(start, buf);
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.ranges.iter().map(|(&s, v)| (s, v.as_slice()))
    }

    fn take(&mut self, s: u64) -> Vec<u8> {
        let v = self.ranges.remove(&s).expect("range present");
        self.encoded_bytes -= RANGE_HEADER_BYTES + pad8(v.len() as u64);
        v
    }

    fn put(&mut self, s: u64, v: Vec<u8>) {
        self.encoded_bytes += RANGE_HEADER_BYTES + pad8(v.len() as u64);
        self.ranges.insert(s, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn range_map_matches_a_byte_array(writes in prop::collection::vec((0u64..200, 1usize..40, any::<u8>()), 0..40)) {
            let mut map = RangeMap::default();
            let mut model = vec![None::<u8>; 256];
            for (off, len, byte) in writes {
                map.insert(off, &vec![byte; len]);
                for b in &mut model[off as usize..off as usize + len] { *b = Some(byte); }
            }
            let mut seen = vec![None::<u8>; 256];
            let mut prev_end = None;
            for (s, v) in map.iter() {
                // Ranges are disjoint and never touch: merging is complete.
                if let Some(pe) = prev_end { prop_assert!(s > pe); }
                prev_end = Some(s + v.len() as u64);
                for (i, b) in v.iter().enumerate() { seen[s as usize + i] = Some(*b); }
            }
            prop_assert_eq!(&seen, &model);
            let data: u64 = model.iter().filter(|b| b.is_some()).count() as u64;
            prop_assert_eq!(map.iter().map(|(_, v)| v.len() as u64).sum::<u64>(), data);
        }

        #[test]
        fn range_set_reports_each_byte_fresh_once(inserts in prop::collection::vec((0u64..200, 1u64..40), 0..40)) {
            let mut set = RangeSet::default();
            let mut covered = [false; 256];
            for (s, len) in inserts {
                let mut fresh_now = [false; 256];
                set.insert(s, s + len, |a, b| {
                    for i in a..b { assert!(!fresh_now[i as usize]); fresh_now[i as usize] = true; }
                });
                for i in 0..256 {
                    let want = (s..s + len).contains(&(i as u64)) && !covered[i];
                    prop_assert_eq!(fresh_now[i], want, "byte {}", i);
                }
                for i in s..s + len { covered[i as usize] = true; }
                prop_assert!(set.covers(s, s + len));
            }
            let total: u64 = set.iter().map(|(s, e)| e - s).sum();
            prop_assert_eq!(total, covered.iter().filter(|c| **c).count() as u64);
        }
    }
}
