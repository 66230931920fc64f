//! Sets of byte ranges, the bookkeeping behind coalescing.
//!
//! [`RangeSet`] holds the ranges a transaction declared, so overlapping `set_range`
//! calls are logged once and old values are saved once. [`RangeMap`] holds new values
//! keyed by offset, newest winning, so consecutive no-flush transactions coalesce into
//! one log record and truncation writes each byte once.

use std::collections::BTreeMap;
use std::ops::Bound::{Excluded, Included, Unbounded};

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

    /// What [`record_bytes`](Self::record_bytes) would be after inserting
    /// `[start, end)`, computed without changing the set.
    pub fn record_bytes_after(&self, start: u64, end: u64) -> u64 {
        let (mut new_start, mut new_end, mut removed) = (start, end, 0);
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back() {
            if e >= start {
                (new_start, new_end) = (s, new_end.max(e));
                removed += RANGE_HEADER_BYTES + pad8(e - s);
            }
        }
        for (&s, &e) in self.ranges.range((Excluded(new_start), Unbounded)) {
            if s > new_end {
                break;
            }
            new_end = new_end.max(e);
            removed += RANGE_HEADER_BYTES + pad8(e - s);
        }
        self.record_bytes() - removed + RANGE_HEADER_BYTES + pad8(new_end - new_start)
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

/// Largest range [`RangeMap::insert`] copies to merge it with the range before it.
pub const ABSORB_BYTES_MAX: u64 = 4096;

/// New values keyed by offset: disjoint ranges (they may touch), newest bytes winning.
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

    /// Writes `data` at `offset`, newest bytes winning. Bytes land in place inside
    /// existing ranges, extend the range that ends where they start, or open a new
    /// range. A range absorbs the one right after it only when that one is small, so
    /// records stay compact yet any order of writes copies at most
    /// [`ABSORB_BYTES_MAX`] per insert beyond the bytes written.
    pub fn insert(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let src = |from: u64, to: u64| &data[(from - offset) as usize..(to - offset) as usize];
            let next_start = |map: &BTreeMap<u64, Vec<u8>>, after: u64| {
                map.range((Excluded(after), Unbounded))
                    .next()
                    .map_or(u64::MAX, |(&s, _)| s)
            };
            let holder = self
                .ranges
                .range(..=at)
                .next_back()
                .filter(|(&s, v)| s + v.len() as u64 >= at)
                .map(|(&s, v)| (s, s + v.len() as u64));
            match holder {
                // Inside a range: overwrite in place.
                Some((s, v_end)) if at < v_end => {
                    let upto = end.min(v_end);
                    let v = self.ranges.get_mut(&s).expect("range present");
                    v[(at - s) as usize..(upto - s) as usize].copy_from_slice(src(at, upto));
                    at = upto;
                }
                // Right after a range: extend it, up to where the next one starts.
                Some((s, v_end)) => {
                    let upto = end.min(next_start(&self.ranges, s));
                    // A range starting right here would have been the holder.
                    debug_assert!(upto > at);
                    let v = self.ranges.get_mut(&s).expect("range present");
                    self.encoded_bytes -= RANGE_HEADER_BYTES + pad8(v.len() as u64);
                    v.extend_from_slice(src(v_end, upto));
                    self.encoded_bytes += RANGE_HEADER_BYTES + pad8(v.len() as u64);
                    self.absorb_small_next(s);
                    at = upto;
                }
                // In a gap: a new range, up to where the next one starts.
                None => {
                    let upto = end.min(next_start(&self.ranges, at));
                    self.put(at, src(at, upto).to_vec());
                    self.absorb_small_next(at);
                    at = upto;
                }
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        self.ranges.iter().map(|(&s, v)| (s, v.as_slice()))
    }

    /// Merges the range right after the one at `s` into it, when they touch and the
    /// next one is small enough to copy.
    fn absorb_small_next(&mut self, s: u64) {
        let end = s + self.ranges[&s].len() as u64;
        let next = self
            .ranges
            .range((Excluded(s), Unbounded))
            .next()
            .map(|(&n, v)| (n, v.len() as u64));
        if let Some((n, len)) = next {
            if n == end && len <= ABSORB_BYTES_MAX {
                let tail = self.ranges.remove(&n).expect("range present");
                self.encoded_bytes -= RANGE_HEADER_BYTES + pad8(len);
                let v = self.ranges.get_mut(&s).expect("range present");
                self.encoded_bytes -= RANGE_HEADER_BYTES + pad8(v.len() as u64);
                v.extend_from_slice(&tail);
                self.encoded_bytes += RANGE_HEADER_BYTES + pad8(v.len() as u64);
            }
        }
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
                // Ranges are disjoint (they may touch).
                if let Some(pe) = prev_end { prop_assert!(s >= pe); }
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
                let predicted = set.record_bytes_after(s, s + len);
                set.insert(s, s + len, |a, b| {
                    for i in a..b { assert!(!fresh_now[i as usize]); fresh_now[i as usize] = true; }
                });
                for i in 0..256 {
                    let want = (s..s + len).contains(&(i as u64)) && !covered[i];
                    prop_assert_eq!(fresh_now[i], want, "byte {}", i);
                }
                for i in s..s + len { covered[i as usize] = true; }
                prop_assert!(set.covers(s, s + len));
                prop_assert_eq!(set.record_bytes(), predicted);
            }
            let total: u64 = set.iter().map(|(s, e)| e - s).sum();
            prop_assert_eq!(total, covered.iter().filter(|c| **c).count() as u64);
        }
    }
}
