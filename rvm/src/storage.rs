//! The narrow seam between RVM and the disk.
//!
//! RVM reaches its segment and log only through [`Storage`], so the same transaction
//! logic runs over plain files ([`FileStorage`]), memory ([`MemStorage`]) and a disk that
//! forgets unsynced writes when it "loses power" ([`SimDisk`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// Positioned reads and writes, a durability barrier, and a size.
///
/// Calls may come from several threads at once: RVM appends to the log while
/// truncation reads older parts of it. A read may span bytes a concurrent write is
/// changing; RVM never uses the bytes of such a span.
pub trait Storage: Send + Sync {
    /// Fill `buf` from `offset`; reading past the end is an `UnexpectedEof` error.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()>;
    /// Make every completed write durable (fdatasync).
    fn sync(&self) -> io::Result<()>;
    fn size(&self) -> io::Result<u64>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file behind this storage, when there is one, so the segment can be mapped
    /// lazily instead of read into memory.
    fn file(&self) -> Option<&File> {
        None
    }
}

/// A plain file.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
}

impl FileStorage {
    /// Opens `path`, creating it when `create` is set, and locks it for this handle
    /// alone: a second opener, in this process or another, gets `WouldBlock`. Two
    /// instances on one log would overwrite each other's records.
    pub fn open(path: &Path, create: bool) -> io::Result<FileStorage> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .open(path)?;
        // SAFETY: flock on a descriptor that `file` keeps open; the lock goes with it.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(FileStorage { file })
    }
}

impl Storage for FileStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }
    fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
    fn size(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
    fn file(&self) -> Option<&File> {
        Some(&self.file)
    }
}

fn read_vec(data: &[u8], offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| eof())?;
    let end = start.checked_add(buf.len()).ok_or_else(eof)?;
    let src = data.get(start..end).ok_or_else(eof)?;
    buf.copy_from_slice(src);
    Ok(())
}

fn write_vec(data: &mut Vec<u8>, offset: u64, buf: &[u8]) -> io::Result<()> {
    let start = usize::try_from(offset).map_err(|_| eof())?;
    let end = start.checked_add(buf.len()).ok_or_else(eof)?;
    if data.len() < end {
        data.resize(end, 0);
    }
    data[start..end].copy_from_slice(buf);
    Ok(())
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of storage")
}

/// Bytes in memory, shared between clones (a clone is the same "disk").
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    data: Arc<Mutex<Vec<u8>>>,
}

impl MemStorage {
    pub fn new() -> MemStorage {
        MemStorage::default()
    }
    pub fn from_bytes(bytes: Vec<u8>) -> MemStorage {
        MemStorage {
            data: Arc::new(Mutex::new(bytes)),
        }
    }
    pub fn to_bytes(&self) -> Vec<u8> {
        lock(&self.data).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Storage for MemStorage {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        read_vec(&lock(&self.data), offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        write_vec(&mut lock(&self.data), offset, buf)
    }
    fn sync(&self) -> io::Result<()> {
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(lock(&self.data).len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| eof())?;
        lock(&self.data).resize(len, 0);
        Ok(())
    }
}

/// A disk that loses power.
///
/// Fault model: reads see every completed write. `sync` makes all completed writes
/// durable. [`SimDisk::crash`] returns the disk as a power cut leaves it: everything
/// synced, plus an arbitrary subset of the 512-byte sectors written since the last
/// sync (so unsynced writes may be lost, reordered or torn at sector boundaries).
/// [`SimDisk::fail_after`] makes every operation after the next `n` fail.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<SimState>>,
}

#[derive(Debug, Default)]
struct SimState {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Sectors written since the last sync, in write order, with their contents.
    unsynced: Vec<(u64, Vec<u8>)>,
    ops_until_failure: Option<u64>,
}

/// Sector size of the simulated disk: the unit a power cut may tear writes at.
pub const SIM_SECTOR_BYTES: u64 = 512;

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// Every operation after the next `ops` fails with an I/O error (no errno).
    pub fn fail_after(&self, ops: u64) {
        lock(&self.state).ops_until_failure = Some(ops);
    }

    /// The disk after a power cut. `seed` picks which unsynced sectors survive.
    pub fn crash(&self, seed: u64) -> SimDisk {
        let st = lock(&self.state);
        let mut image = st.durable.clone();
        let mut rng = seed | 1;
        for (offset, sector) in &st.unsynced {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            if rng % 3 != 0 {
                // A surviving sector past the durable end grows the file, as on ext4.
                let _ = write_vec(&mut image, *offset, sector);
            }
        }
        SimDisk {
            state: Arc::new(Mutex::new(SimState {
                live: image.clone(),
                durable: image,
                unsynced: Vec::new(),
                ops_until_failure: None,
            })),
        }
    }

    /// The bytes a reader sees now.
    pub fn live_bytes(&self) -> Vec<u8> {
        lock(&self.state).live.clone()
    }

    fn tick(st: &mut SimState) -> io::Result<()> {
        match &mut st.ops_until_failure {
            Some(0) => Err(io::Error::other("simulated disk failure")),
            Some(n) => {
                *n -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

impl Storage for SimDisk {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let mut st = lock(&self.state);
        SimDisk::tick(&mut st)?;
        read_vec(&st.live, offset, buf)
    }
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut st = lock(&self.state);
        SimDisk::tick(&mut st)?;
        write_vec(&mut st.live, offset, buf)?;
        // Record the write sector by sector so a crash can keep any subset.
        let mut pos = offset;
        let end = offset + buf.len() as u64;
        while pos < end {
            let sector_end = ((pos / SIM_SECTOR_BYTES) + 1) * SIM_SECTOR_BYTES;
            let piece_end = sector_end.min(end);
            let piece = buf[(pos - offset) as usize..(piece_end - offset) as usize].to_vec();
            st.unsynced.push((pos, piece));
            pos = piece_end;
        }
        Ok(())
    }
    fn sync(&self) -> io::Result<()> {
        let mut st = lock(&self.state);
        SimDisk::tick(&mut st)?;
        st.durable = st.live.clone();
        st.unsynced.clear();
        Ok(())
    }
    fn size(&self) -> io::Result<u64> {
        Ok(lock(&self.state).live.len() as u64)
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = lock(&self.state);
        SimDisk::tick(&mut st)?;
        let len = usize::try_from(len).map_err(|_| eof())?;
        st.live.resize(len, 0);
        Ok(())
    }
}
