//! The segment in memory: a private (copy-on-write) mapping of the segment file.
//!
//! The mapping is `MAP_PRIVATE`, so changes made in memory never reach the file by
//! themselves: the file only ever receives committed values, written by truncation
//! and recovery from the log. That is the invariant "the segment file never holds an
//! uncommitted change".

use std::marker::PhantomData;

use memmap2::{MmapMut, MmapOptions};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Error, Result};
use crate::format::SEGMENT_HEADER_BYTES;
use crate::storage::Storage;

pub(crate) struct SegmentMem {
    map: MmapMut,
    data_len: u64,
}

impl SegmentMem {
    pub fn load(store: &dyn Storage, data_len: u64) -> Result<SegmentMem> {
        let total = SEGMENT_HEADER_BYTES + data_len;
        let total_usize = usize::try_from(total).map_err(|_| Error::SegmentTooSmall {
            requested: total,
            minimum: 0,
        })?;
        let map = match store.file() {
            // SAFETY: the mapping is private, so no other mapping of the file can change
            // what this process sees in pages it wrote; RVM is the only writer of the
            // file and writes only committed values for bytes this process changed.
            Some(file) => unsafe { MmapOptions::new().len(total_usize).map_copy(file) }
                .map_err(Error::io("segment mapping"))?,
            None => {
                let mut map =
                    MmapMut::map_anon(total_usize).map_err(Error::io("segment mapping"))?;
                const CHUNK: usize = 8 << 20;
                for (i, piece) in map.chunks_mut(CHUNK).enumerate() {
                    store
                        .read_at((i * CHUNK) as u64, piece)
                        .map_err(Error::io("segment"))?;
                }
                map
            }
        };
        Ok(SegmentMem { map, data_len })
    }

    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    fn span(&self, offset: u64, len: u64) -> Result<std::ops::Range<usize>> {
        match offset.checked_add(len) {
            Some(end) if end <= self.data_len => {
                let start = (SEGMENT_HEADER_BYTES + offset) as usize;
                Ok(start..start + len as usize)
            }
            _ => Err(Error::OutOfBounds {
                offset,
                len,
                size: self.data_len,
            }),
        }
    }

    pub fn bytes(&self, offset: u64, len: u64) -> Result<&[u8]> {
        let span = self.span(offset, len)?;
        Ok(&self.map[span])
    }

    pub fn bytes_mut(&mut self, offset: u64, len: u64) -> Result<&mut [u8]> {
        let span = self.span(offset, len)?;
        Ok(&mut self.map[span])
    }
}

/// A fixed-layout type that can live in a segment: plain bytes, no padding, no
/// alignment (use `zerocopy::little_endian` integers), so the layout is byte-order
/// neutral and any offset will do.
pub trait Record: FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned {}
impl<T: FromBytes + IntoBytes + KnownLayout + Immutable + Unaligned> Record for T {}

/// The offset of a `T` in the segment: a typed pointer that survives restarts.
pub struct Rec<T> {
    offset: u64,
    _type: PhantomData<fn() -> T>,
}

impl<T> Rec<T> {
    pub const fn at(offset: u64) -> Rec<T> {
        Rec {
            offset,
            _type: PhantomData,
        }
    }
    pub const fn offset(self) -> u64 {
        self.offset
    }
}

impl<T> Clone for Rec<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Rec<T> {}
impl<T> PartialEq for Rec<T> {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset
    }
}
impl<T> Eq for Rec<T> {}
impl<T> std::fmt::Debug for Rec<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rec<{}>@{}", std::any::type_name::<T>(), self.offset)
    }
}

fn record_ref<T: Record>(bytes: &[u8], offset: u64) -> Result<&T> {
    T::ref_from_bytes(bytes).map_err(|_| bad_record::<T>(offset))
}

pub(crate) fn record_mut<T: Record>(bytes: &mut [u8], offset: u64) -> Result<&mut T> {
    T::mut_from_bytes(bytes).map_err(|_| bad_record::<T>(offset))
}

fn bad_record<T>(offset: u64) -> Error {
    Error::BadRecord {
        offset,
        size: size_of::<T>() as u64,
        type_name: std::any::type_name::<T>(),
    }
}

/// Reading the segment: what a [`ReadView`] and a [`crate::Transaction`] share.
pub trait View {
    /// The bytes at `[offset, offset + len)` of the segment's data area.
    fn bytes(&self, offset: u64, len: u64) -> Result<&[u8]>;

    fn data_len(&self) -> u64;

    fn u64_at(&self, offset: u64) -> Result<u64> {
        Ok(u64::from_le_bytes(
            self.bytes(offset, 8)?.try_into().expect("8 bytes"),
        ))
    }

    fn u32_at(&self, offset: u64) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.bytes(offset, 4)?.try_into().expect("4 bytes"),
        ))
    }

    fn get<T: Record>(&self, rec: Rec<T>) -> Result<&T> {
        record_ref(self.bytes(rec.offset, size_of::<T>() as u64)?, rec.offset)
    }
}

/// Read access to the segment while no transaction changes it.
pub struct ReadView<'a> {
    pub(crate) seg: std::sync::RwLockReadGuard<'a, SegmentMem>,
}

impl View for ReadView<'_> {
    fn bytes(&self, offset: u64, len: u64) -> Result<&[u8]> {
        self.seg.bytes(offset, len)
    }

    fn data_len(&self) -> u64 {
        self.seg.data_len()
    }
}
