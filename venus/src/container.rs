//! Container files: the cached contents of files, one local file each,
//! named by a number that is never reused while Venus runs.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// No container: the object's data is not cached.
pub const NONE: u64 = 0;

pub struct Containers {
    dir: PathBuf,
    next: u64,
}

impl Containers {
    pub fn open(dir: &Path) -> io::Result<Containers> {
        std::fs::create_dir_all(dir)?;
        Ok(Containers {
            dir: dir.to_path_buf(),
            next: 1,
        })
    }

    pub fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:016x}"))
    }

    /// A new empty container.
    pub fn create(&mut self) -> io::Result<(u64, File)> {
        loop {
            let id = self.next;
            self.next += 1;
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(self.path(id))
            {
                Ok(f) => return Ok((id, f)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn open_rw(&self, id: u64) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(id))
    }

    pub fn remove(&self, id: u64) {
        if id != NONE {
            if let Err(e) = std::fs::remove_file(self.path(id)) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::warn!("container {id:x}: {e}");
                }
            }
        }
    }

    /// Removes containers no object refers to (left by a crash between
    /// making a container and recording it); numbers new ones above all.
    pub fn sweep(&mut self, live: &HashSet<u64>) -> io::Result<usize> {
        let mut removed = 0;
        for e in std::fs::read_dir(&self.dir)? {
            let e = e?;
            let Some(id) = e
                .file_name()
                .to_str()
                .and_then(|n| u64::from_str_radix(n, 16).ok())
            else {
                continue;
            };
            self.next = self.next.max(id + 1);
            if !live.contains(&id) {
                std::fs::remove_file(e.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}
