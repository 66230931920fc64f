//! A recoverable heap in the segment, after Coda's RDS.
//!
//! Every allocator change is made inside the caller's transaction, so an allocation
//! and the data written into it commit (or abort) together.
//!
//! Layout: a header at `base` (magic, version, geometry, counters, 16 root slots and
//! the free-list heads), then blocks in multiples of [`CHUNK_BYTES`], then a 16-byte
//! end guard. Each block starts with `size: u64, guard: u32, flags: u32`; a free block
//! also holds `next, prev: u64` links after that and its size again in its last 8
//! bytes, so a freed neighbour can find it and merge. Segregated free lists hold one
//! size each (64, 128, ... bytes); the last holds everything larger. Guards are
//! Coda's (FREE 0x345298af, ALLOC 0x783bd92c, END 0xfd10a32e), stored XORed with a
//! fold of the block's offset.

use crate::error::{Error, Result};
use crate::segment::{Rec, Record, View};
use crate::transaction::Transaction;

pub const CHUNK_BYTES: u64 = 64;
pub const FREE_LISTS: u64 = 32;
pub const ROOTS: u64 = 16;
const MAGIC: u32 = u32::from_le_bytes(*b"RDSH");
const VERSION: u32 = 1;
const GUARD_FREE: u32 = 0x3452_98af;
const GUARD_ALLOC: u32 = 0x783b_d92c;
const GUARD_END: u32 = 0xfd10_a32e;
const FLAG_PREV_FREE: u32 = 1;
const BLOCK_HEADER_BYTES: u64 = 16;

// Header fields, as offsets from the heap base.
const H_MAGIC: u64 = 0;
const H_VERSION: u64 = 4;
const H_START: u64 = 8;
const H_END: u64 = 16;
const H_ALLOCATED: u64 = 24;
const H_FREE: u64 = 32;
const H_ROOTS: u64 = 40;
const H_LISTS: u64 = H_ROOTS + 8 * ROOTS;
const HEADER_BYTES: u64 = (H_LISTS + 8 * FREE_LISTS).div_ceil(CHUNK_BYTES) * CHUNK_BYTES;
const END_GUARD_BYTES: u64 = BLOCK_HEADER_BYTES;

// A free block must hold its header, two links and a footer.
const _: () = assert!(BLOCK_HEADER_BYTES + 16 + 8 <= CHUNK_BYTES);

/// Space a heap of `blocks_bytes` usable bytes takes, header and end guard included.
pub const fn heap_bytes(blocks_bytes: u64) -> u64 {
    HEADER_BYTES + blocks_bytes + END_GUARD_BYTES
}

/// A heap's place in the segment. The heap's state lives in the segment itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heap {
    base: u64,
    start: u64,
    end: u64,
}

/// What [`Heap::verify`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HeapStats {
    pub allocated_bytes: u64,
    pub free_bytes: u64,
    pub allocated_blocks: u64,
    pub free_blocks: u64,
    pub largest_free: u64,
}

/// Guards are stored XORed with their block's offset, so a header copied from
/// elsewhere, or bytes inside a live block that look like one, are not a block.
fn offset_fold(b: u64) -> u32 {
    (b as u32) ^ ((b >> 32) as u32).rotate_left(16)
}

fn class_of(size: u64) -> u64 {
    (size / CHUNK_BYTES - 1).min(FREE_LISTS - 1)
}

impl Heap {
    /// Lays out a new, empty heap in `[base, base + len)` inside `tx`.
    pub fn init(tx: &mut Transaction<'_>, base: u64, len: u64) -> Result<Heap> {
        match base.checked_add(len) {
            Some(end) if end <= tx.data_len() => {}
            _ => {
                return Err(Error::OutOfBounds {
                    offset: base,
                    len,
                    size: tx.data_len(),
                })
            }
        }
        let blocks = len.saturating_sub(HEADER_BYTES + END_GUARD_BYTES) / CHUNK_BYTES * CHUNK_BYTES;
        if blocks < CHUNK_BYTES {
            return Err(Error::SegmentTooSmall {
                requested: len,
                minimum: heap_bytes(CHUNK_BYTES),
            });
        }
        let heap = Heap {
            base,
            start: base + HEADER_BYTES,
            end: base + HEADER_BYTES + blocks,
        };
        tx.range_mut(base, HEADER_BYTES)?.fill(0);
        tx.write_u32(base + H_MAGIC, MAGIC)?;
        tx.write_u32(base + H_VERSION, VERSION)?;
        tx.write_u64(base + H_START, heap.start)?;
        tx.write_u64(base + H_END, heap.end)?;
        tx.write_u64(base + H_FREE, blocks)?;
        heap.write_block(tx, heap.end, 0, GUARD_END, FLAG_PREV_FREE)?;
        heap.make_free(tx, heap.start, blocks)?;
        Ok(heap)
    }

    /// Finds the heap laid out at `base`, checking its header.
    pub fn open(view: &impl View, base: u64) -> Result<Heap> {
        let corrupt = |reason: String| Error::HeapCorrupt {
            offset: base,
            reason,
        };
        let magic = view.u32_at(base + H_MAGIC)?;
        if magic != MAGIC {
            return Err(corrupt(format!(
                "magic {magic:#010x}, expected {MAGIC:#010x}"
            )));
        }
        let version = view.u32_at(base + H_VERSION)?;
        if version != VERSION {
            return Err(corrupt(format!(
                "version {version}, this build reads version {VERSION}"
            )));
        }
        let heap = Heap {
            base,
            start: view.u64_at(base + H_START)?,
            end: view.u64_at(base + H_END)?,
        };
        let geometry_ok = heap.start == base + HEADER_BYTES
            && heap.end > heap.start
            && (heap.end - heap.start) % CHUNK_BYTES == 0
            && heap
                .end
                .checked_add(END_GUARD_BYTES)
                .is_some_and(|e| e <= view.data_len());
        if !geometry_ok {
            return Err(corrupt(format!("blocks span {}..{}", heap.start, heap.end)));
        }
        Ok(heap)
    }

    /// Allocates at least `len` bytes; returns the offset of the first.
    /// The bytes are not cleared: the caller writes them in the same transaction.
    pub fn alloc(&self, tx: &mut Transaction<'_>, len: u64) -> Result<u64> {
        let need = len
            .checked_add(BLOCK_HEADER_BYTES)
            .map(|n| n.div_ceil(CHUNK_BYTES).max(1) * CHUNK_BYTES)
            .ok_or(Error::HeapExhausted {
                requested: len,
                largest_free: 0,
            })?;
        let mut found = None;
        for class in class_of(need.min(FREE_LISTS * CHUNK_BYTES))..FREE_LISTS {
            // Exact-size lists: any block fits. The last list: first fit.
            self.walk_list(tx, class, |b, size, _| {
                if size >= need {
                    found = Some((b, size));
                }
                Ok(found.is_none())
            })?;
            if found.is_some() {
                break;
            }
        }
        let Some((b, size)) = found else {
            let largest_free = self.largest_free(tx)?;
            return Err(Error::HeapExhausted {
                requested: len,
                largest_free,
            });
        };
        self.unlink(tx, b, size)?;
        let taken = if size - need >= CHUNK_BYTES {
            self.make_free(tx, b + need, size - need)?;
            need
        } else {
            let next = b + size;
            let flags = tx.u32_at(next + 12)?;
            tx.write_u32(next + 12, flags & !FLAG_PREV_FREE)?;
            size
        };
        // A free block's predecessor is always allocated (free neighbours merge).
        self.write_block(tx, b, taken, GUARD_ALLOC, 0)?;
        self.add_counter(tx, H_ALLOCATED, taken as i64)?;
        self.add_counter(tx, H_FREE, -(taken as i64))?;
        Ok(b + BLOCK_HEADER_BYTES)
    }

    /// Frees what [`alloc`](Self::alloc) returned, merging with free neighbours.
    pub fn free(&self, tx: &mut Transaction<'_>, offset: u64) -> Result<()> {
        let bad = |reason: &str| Error::BadFree {
            offset,
            reason: reason.into(),
        };
        let b = offset
            .checked_sub(BLOCK_HEADER_BYTES)
            .ok_or_else(|| bad("before the heap"))?;
        if b < self.start || b >= self.end || (b - self.start) % CHUNK_BYTES != 0 {
            return Err(bad("not the start of a block"));
        }
        if self.guard_at(tx, b)? != GUARD_ALLOC {
            return Err(bad("not an allocated block (freed twice?)"));
        }
        let size = self.check_block(tx, b, GUARD_ALLOC)?;
        self.add_counter(tx, H_ALLOCATED, -(size as i64))?;
        self.add_counter(tx, H_FREE, size as i64)?;
        let (mut start, mut total) = (b, size);
        let next = b + size;
        if next < self.end && self.guard_at(tx, next)? == GUARD_FREE {
            let next_size = self.check_block(tx, next, GUARD_FREE)?;
            self.unlink(tx, next, next_size)?;
            total += next_size;
        }
        if tx.u32_at(b + 12)? & FLAG_PREV_FREE != 0 {
            let prev_size = tx.u64_at(b - 8)?;
            let prev = b
                .checked_sub(prev_size)
                .filter(|p| *p >= self.start)
                .ok_or_else(|| Error::HeapCorrupt {
                    offset: b,
                    reason: format!(
                        "previous free block of {prev_size} bytes starts before the heap"
                    ),
                })?;
            if self.check_block(tx, prev, GUARD_FREE)? != prev_size {
                return Err(Error::HeapCorrupt {
                    offset: prev,
                    reason: format!("free block's size disagrees with its footer ({prev_size})"),
                });
            }
            self.unlink(tx, prev, prev_size)?;
            start = prev;
            total += prev_size;
        }
        self.make_free(tx, start, total)
    }

    /// Allocates room for one `T`.
    pub fn alloc_rec<T: Record>(&self, tx: &mut Transaction<'_>) -> Result<Rec<T>> {
        Ok(Rec::at(self.alloc(tx, size_of::<T>() as u64)?))
    }

    pub fn free_rec<T: Record>(&self, tx: &mut Transaction<'_>, rec: Rec<T>) -> Result<()> {
        self.free(tx, rec.offset())
    }

    /// Root slot `i`: where a program keeps the offsets it finds its data from.
    pub fn root(&self, view: &impl View, i: u64) -> Result<u64> {
        view.u64_at(self.root_offset(i)?)
    }

    pub fn set_root(&self, tx: &mut Transaction<'_>, i: u64, value: u64) -> Result<()> {
        tx.write_u64(self.root_offset(i)?, value)
    }

    /// Calls `each(offset, capacity)` for every allocated block in address order,
    /// with the offset [`alloc`](Self::alloc) returned and the bytes usable there:
    /// how a program finds its records again after a restart.
    pub fn for_each_allocated(
        &self,
        view: &impl View,
        mut each: impl FnMut(u64, u64) -> Result<()>,
    ) -> Result<()> {
        let mut b = self.start;
        while b < self.end {
            let guard = self.guard_at(view, b)?;
            let size = self.check_block(view, b, guard)?;
            if guard == GUARD_ALLOC {
                each(b + BLOCK_HEADER_BYTES, size - BLOCK_HEADER_BYTES)?;
            }
            b += size;
        }
        Ok(())
    }

    /// Walks every block and every free list, checking guards, sizes, links and
    /// counters.
    pub fn verify(&self, view: &impl View) -> Result<HeapStats> {
        let corrupt = |offset: u64, reason: String| Error::HeapCorrupt { offset, reason };
        let mut stats = HeapStats::default();
        let mut b = self.start;
        let mut prev_free = false;
        while b < self.end {
            let guard = self.guard_at(view, b)?;
            let size = self.check_block(view, b, guard)?;
            let flagged = view.u32_at(b + 12)? & FLAG_PREV_FREE != 0;
            if flagged != prev_free {
                return Err(corrupt(
                    b,
                    format!("previous-free flag {flagged}, neighbour free {prev_free}"),
                ));
            }
            match guard {
                GUARD_FREE => {
                    if prev_free {
                        return Err(corrupt(b, "two free blocks side by side".into()));
                    }
                    if view.u64_at(b + size - 8)? != size {
                        return Err(corrupt(
                            b,
                            "free block footer does not match its size".into(),
                        ));
                    }
                    stats.free_blocks += 1;
                    stats.free_bytes += size;
                    stats.largest_free = stats.largest_free.max(size);
                }
                _ => {
                    stats.allocated_blocks += 1;
                    stats.allocated_bytes += size;
                }
            }
            prev_free = guard == GUARD_FREE;
            b += size;
        }
        if b != self.end || self.guard_at(view, self.end)? != GUARD_END {
            return Err(corrupt(self.end, "end guard missing".into()));
        }
        if (view.u32_at(self.end + 12)? & FLAG_PREV_FREE != 0) != prev_free {
            return Err(corrupt(
                self.end,
                "end guard's previous-free flag is wrong".into(),
            ));
        }
        let mut listed = 0;
        for class in 0..FREE_LISTS {
            self.walk_list(view, class, |b, size, prev| {
                if class_of(size) != class || view.u64_at(b + 24)? != prev {
                    return Err(corrupt(
                        b,
                        format!("free list {class} links are inconsistent"),
                    ));
                }
                listed += 1;
                Ok(true)
            })?;
        }
        if listed != stats.free_blocks {
            return Err(corrupt(
                self.base,
                format!("{listed} blocks listed, {} free", stats.free_blocks),
            ));
        }
        let counted = (
            view.u64_at(self.base + H_ALLOCATED)?,
            view.u64_at(self.base + H_FREE)?,
        );
        if counted != (stats.allocated_bytes, stats.free_bytes) {
            return Err(corrupt(
                self.base,
                format!("counters {counted:?} disagree with the blocks"),
            ));
        }
        Ok(stats)
    }

    /// The block kind at `b`: its stored guard with the block's offset folded out.
    fn guard_at(&self, view: &impl View, b: u64) -> Result<u32> {
        Ok(view.u32_at(b + 8)? ^ offset_fold(b))
    }

    /// Free-list walks stop at this many steps: more blocks than the heap can hold
    /// means a cycle, which only corruption makes.
    fn blocks_max(&self) -> u64 {
        (self.end - self.start) / CHUNK_BYTES
    }

    fn root_offset(&self, i: u64) -> Result<u64> {
        if i >= ROOTS {
            return Err(Error::NoSuchRoot {
                slot: i,
                slots: ROOTS,
            });
        }
        Ok(self.base + H_ROOTS + 8 * i)
    }

    fn list_head(&self, class: u64) -> u64 {
        self.base + H_LISTS + 8 * class
    }

    /// Checks a block header has `guard` and a sane size; returns the size.
    fn check_block(&self, view: &impl View, b: u64, guard: u32) -> Result<u64> {
        let size = view.u64_at(b)?;
        let found = self.guard_at(view, b)?;
        let fits = size >= CHUNK_BYTES
            && size % CHUNK_BYTES == 0
            && b.checked_add(size).is_some_and(|e| e <= self.end);
        if found != guard || !(guard == GUARD_FREE || guard == GUARD_ALLOC) || !fits {
            return Err(Error::HeapCorrupt {
                offset: b,
                reason: format!(
                    "block guard {found:#010x} size {size}, expected guard {guard:#010x}"
                ),
            });
        }
        Ok(size)
    }

    fn write_block(
        &self,
        tx: &mut Transaction<'_>,
        b: u64,
        size: u64,
        guard: u32,
        flags: u32,
    ) -> Result<()> {
        let mut header = [0u8; BLOCK_HEADER_BYTES as usize];
        header[0..8].copy_from_slice(&size.to_le_bytes());
        header[8..12].copy_from_slice(&(guard ^ offset_fold(b)).to_le_bytes());
        header[12..16].copy_from_slice(&flags.to_le_bytes());
        tx.write(b, &header)
    }

    fn make_free(&self, tx: &mut Transaction<'_>, b: u64, size: u64) -> Result<()> {
        let head = self.list_head(class_of(size));
        let next = tx.u64_at(head)?;
        self.write_block(tx, b, size, GUARD_FREE, 0)?;
        tx.write_u64(b + 16, next)?;
        tx.write_u64(b + 24, 0)?;
        tx.write_u64(b + size - 8, size)?;
        if next != 0 {
            tx.write_u64(next + 24, b)?;
        }
        tx.write_u64(head, b)?;
        let after = b + size;
        let flags = tx.u32_at(after + 12)?;
        tx.write_u32(after + 12, flags | FLAG_PREV_FREE)
    }

    fn unlink(&self, tx: &mut Transaction<'_>, b: u64, size: u64) -> Result<()> {
        let next = tx.u64_at(b + 16)?;
        let prev = tx.u64_at(b + 24)?;
        if prev == 0 {
            tx.write_u64(self.list_head(class_of(size)), next)?;
        } else {
            tx.write_u64(prev + 16, next)?;
        }
        if next != 0 {
            tx.write_u64(next + 24, prev)?;
        }
        Ok(())
    }

    fn add_counter(&self, tx: &mut Transaction<'_>, field: u64, delta: i64) -> Result<()> {
        let v = tx.u64_at(self.base + field)?;
        tx.write_u64(self.base + field, v.wrapping_add_signed(delta))
    }

    fn largest_free(&self, view: &impl View) -> Result<u64> {
        let mut largest = 0;
        for class in (0..FREE_LISTS).rev() {
            self.walk_list(view, class, |_, size, _| {
                largest = largest.max(size);
                Ok(true)
            })?;
            if largest > 0 {
                break;
            }
        }
        Ok(largest.saturating_sub(BLOCK_HEADER_BYTES))
    }

    /// Calls `each(block, size, previous block)` along free list `class`, checking each
    /// block, until it returns `false`. A list longer than the heap can hold is a cycle.
    fn walk_list(
        &self,
        view: &impl View,
        class: u64,
        mut each: impl FnMut(u64, u64, u64) -> Result<bool>,
    ) -> Result<()> {
        let (mut b, mut prev) = (view.u64_at(self.list_head(class))?, 0);
        let mut steps = 0;
        while b != 0 {
            steps += 1;
            if steps > self.blocks_max() {
                return Err(Error::HeapCorrupt {
                    offset: b,
                    reason: format!("free list {class} runs in a cycle"),
                });
            }
            let size = self.check_block(view, b, GUARD_FREE)?;
            if !each(b, size, prev)? {
                return Ok(());
            }
            prev = b;
            b = view.u64_at(b + 16)?;
        }
        Ok(())
    }
}
