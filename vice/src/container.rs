//! Container files: the data of files, one file per version, named by a
//! number that is never reused (files of at most
//! [`crate::vnode::IN_VNODE_MAX`] bytes keep theirs in the vnode instead). A store writes a new container and syncs it
//! before the transaction that points a vnode at it commits; the old one is
//! unlinked only once that commit is durable. So a crash leaves at worst an
//! unreferenced container, which the start-up sweep removes.
//!
//! New containers come from a pool made ahead in batches whose names are
//! made durable together (one directory sync per batch), so a store syncs
//! only its own data.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Containers made ahead per batch (and so per directory sync).
const POOL_BATCH: u64 = 256;

pub struct Containers {
    dir: PathBuf,
    next: u64,
    /// Empty containers whose names are durable, ready for stores.
    ready: VecDeque<u64>,
}

impl Containers {
    /// Opens the container directory, creating it if need be.
    pub fn open(dir: &Path) -> io::Result<Containers> {
        fs::create_dir_all(dir)?;
        let mut c = Containers {
            dir: dir.to_path_buf(),
            next: 1,
            ready: VecDeque::new(),
        };
        let highest = c.list()?.into_iter().max().unwrap_or(0);
        c.next = highest + 1;
        Ok(c)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A pool batch shares one directory (256 containers to each).
    pub fn path(&self, id: u64) -> PathBuf {
        self.dir
            .join(format!("{:x}", id >> 8))
            .join(format!("{id:016x}"))
    }

    /// A new, empty container whose name is durable. Numbers never
    /// repeat, even across restarts: they start above every container left
    /// on disk and every number RVM references ([`Containers::reserve_above`]).
    pub fn create(&mut self) -> io::Result<(u64, File)> {
        if self.ready.is_empty() {
            self.refill()?;
        }
        let id = self.ready.pop_front().expect("refilled");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(id))?;
        Ok((id, file))
    }

    /// Makes a batch of empty containers and syncs their directories.
    fn refill(&mut self) -> io::Result<()> {
        let mut dirs = BTreeSet::new();
        let mut new_dir = false;
        let mut made = Vec::with_capacity(POOL_BATCH as usize);
        for _ in 0..POOL_BATCH {
            let id = self.next;
            self.next += 1;
            let path = self.path(id);
            let parent = path.parent().expect("containers live in subdirectories");
            match open_new(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir_all(parent)?;
                    new_dir = true;
                    open_new(&path)?;
                }
                other => drop(other?),
            }
            dirs.insert(parent.to_path_buf());
            made.push(id);
        }
        for d in dirs {
            File::open(d)?.sync_all()?;
        }
        if new_dir {
            File::open(&self.dir)?.sync_all()?;
        }
        // Ready only once their names are durable.
        self.ready.extend(made);
        Ok(())
    }

    pub fn open_read(&self, id: u64) -> io::Result<File> {
        File::open(self.path(id))
    }

    /// Makes a container's bytes durable (its name already is).
    pub fn sync(&self, file: &File) -> io::Result<()> {
        file.sync_data()
    }

    /// Hashes container `id` and makes its bytes durable.
    pub fn hash_and_sync(&self, id: u64) -> io::Result<[u8; 32]> {
        hash_and_sync(&self.path(id))
    }

    pub fn remove(&self, id: u64) {
        if let Err(e) = fs::remove_file(self.path(id)) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!("removing container {id:016x}: {e}");
            }
        }
    }

    /// Numbers handed out from now on exceed `id`.
    pub fn reserve_above(&mut self, id: u64) {
        self.next = self.next.max(id + 1);
    }

    /// Every container on disk.
    pub fn list(&self) -> io::Result<Vec<u64>> {
        let mut out = Vec::new();
        for sub in fs::read_dir(&self.dir)? {
            let sub = sub?;
            if !sub.file_type()?.is_dir() {
                continue;
            }
            for f in fs::read_dir(sub.path())? {
                let name = f?.file_name();
                if let Some(id) = name.to_str().and_then(|n| u64::from_str_radix(n, 16).ok()) {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// Removes every container not in `live`; returns how many went.
    pub fn sweep(&self, live: &HashSet<u64>) -> io::Result<usize> {
        let mut removed = 0;
        for id in self.list()? {
            if !live.contains(&id) {
                self.remove(id);
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// The blake3 hash of a container's bytes, which are made durable too.
pub fn hash_and_sync(path: &Path) -> io::Result<[u8; 32]> {
    let file = File::open(path)?;
    let hash = crate::fileops::hash_file(&file)?;
    file.sync_data()?;
    Ok(hash)
}

fn open_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
}
