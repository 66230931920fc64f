//! Container files: the data of files, one file per version, named by a
//! number that is never reused. A store writes a new container and syncs it
//! before the transaction that points a vnode at it commits; the old one is
//! unlinked only once that commit is durable. So a crash leaves at worst an
//! unreferenced container, which the start-up sweep removes.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

pub struct Containers {
    dir: PathBuf,
    next: u64,
}

impl Containers {
    /// Opens the container directory, creating it if need be.
    pub fn open(dir: &Path) -> io::Result<Containers> {
        fs::create_dir_all(dir)?;
        let mut c = Containers {
            dir: dir.to_path_buf(),
            next: 1,
        };
        let highest = c.list()?.into_iter().max().unwrap_or(0);
        c.next = highest + 1;
        Ok(c)
    }

    pub fn path(&self, id: u64) -> PathBuf {
        self.dir
            .join(format!("{:02x}", id & 0xff))
            .join(format!("{id:016x}"))
    }

    /// A new, empty container; numbers never repeat, even across restarts,
    /// because they start above every container left on disk and above
    /// every number RVM references (see [`Containers::reserve_above`]).
    pub fn create(&mut self) -> io::Result<(u64, File)> {
        let id = self.next;
        self.next += 1;
        let path = self.path(id);
        let file = match open_new(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A new subdirectory: its name is made durable here, once,
                // so syncing a container later needs only its own directory.
                fs::create_dir_all(path.parent().expect("containers live in subdirectories"))?;
                File::open(&self.dir)?.sync_all()?;
                open_new(&path)?
            }
            other => other?,
        };
        Ok((id, file))
    }

    pub fn open_read(&self, id: u64) -> io::Result<File> {
        File::open(self.path(id))
    }

    /// Makes a container's bytes and its name durable.
    pub fn sync(&self, id: u64, file: &File) -> io::Result<()> {
        file.sync_all()?;
        let parent = self.path(id);
        File::open(parent.parent().expect("containers live in subdirectories"))?.sync_all()
    }

    /// [`sync`](Self::sync) by number.
    pub fn sync_id(&self, id: u64) -> io::Result<()> {
        self.sync(id, &File::open(self.path(id))?)
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

fn open_new(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
}
