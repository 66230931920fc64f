//! Applying new values to the segment file, page by page.
//!
//! Recovery and truncation replay records in log order onto copies of the segment's
//! pages, each read once, newer bytes simply overwriting older ones; full pages then
//! go back in runs of consecutive pages. A log of many small scattered changes thus
//! costs one read and one write per touched page run, not a system call per range.

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::storage::Storage;

pub const PAGE_BYTES: u64 = 4096;
/// Pages held before they are written out, bounding memory whatever the log holds.
const PAGES_HELD_MAX: usize = 16 << 10;
/// Largest single write of consecutive pages.
const RUN_BYTES_MAX: u64 = 8 << 20;

pub(crate) struct PageBuffer<'a> {
    segment: &'a dyn Storage,
    data_start: u64,
    data_len: u64,
    pages: HashMap<u64, Box<[u8]>>,
}

impl<'a> PageBuffer<'a> {
    pub fn new(segment: &'a dyn Storage, data_start: u64, data_len: u64) -> PageBuffer<'a> {
        PageBuffer {
            segment,
            data_start,
            data_len,
            pages: HashMap::new(),
        }
    }

    /// Bytes of page `n`: a full page, or what is left of the data area.
    fn page_len(&self, n: u64) -> u64 {
        PAGE_BYTES.min(self.data_len - n * PAGE_BYTES)
    }

    /// Writes `data` at `offset` of the data area (already checked to lie inside it).
    pub fn apply(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let mut at = offset;
        let end = offset + data.len() as u64;
        while at < end {
            let n = at / PAGE_BYTES;
            if !self.pages.contains_key(&n) {
                if self.pages.len() >= PAGES_HELD_MAX {
                    self.write_out()?;
                }
                let mut page = vec![0u8; self.page_len(n) as usize].into_boxed_slice();
                self.segment
                    .read_at(self.data_start + n * PAGE_BYTES, &mut page)
                    .map_err(Error::io("segment"))?;
                self.pages.insert(n, page);
            }
            let page = self.pages.get_mut(&n).expect("page loaded");
            let within = (at - n * PAGE_BYTES) as usize;
            let take = ((end - at) as usize).min(page.len() - within);
            let from = (at - offset) as usize;
            page[within..within + take].copy_from_slice(&data[from..from + take]);
            at += take as u64;
        }
        Ok(())
    }

    /// Writes every held page to the segment, consecutive pages in one write.
    pub fn write_out(&mut self) -> Result<()> {
        let mut numbers: Vec<u64> = self.pages.keys().copied().collect();
        numbers.sort_unstable();
        let mut run = Vec::new();
        let mut run_first = 0;
        for (i, &n) in numbers.iter().enumerate() {
            if run.is_empty() {
                run_first = n;
            }
            run.extend_from_slice(&self.pages[&n]);
            let next_follows = numbers.get(i + 1) == Some(&(n + 1));
            if !next_follows || run.len() as u64 >= RUN_BYTES_MAX {
                self.segment
                    .write_at(self.data_start + run_first * PAGE_BYTES, &run)
                    .map_err(Error::io("segment"))?;
                run.clear();
            }
        }
        self.pages.clear();
        Ok(())
    }
}
