//! What every shard of a server shares: the cell key, the protection
//! database and the volume location database. Read on every bind and
//! location query, written only by administration, so a lock is cheap here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use coda_proto::fid::VolumeId;
use coda_proto::vice::VolumeKind;
use coda_rpc2::CellKey;

use crate::pdb::Pdb;

pub const ROOT_VOLUME_NAME: &str = "coda.root";
/// Volume ids start here (Coda's volumes were 0x7f000000 and up).
pub const FIRST_VOLUME_ID: VolumeId = 0x7f00_0001;

/// Where a volume is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub name: String,
    pub shard: u32,
    pub kind: VolumeKind,
}

/// The volume location database: name and shard of every volume.
#[derive(Debug, Default)]
pub struct Vldb {
    by_id: HashMap<VolumeId, Location>,
    by_name: HashMap<String, VolumeId>,
}

impl Vldb {
    pub fn insert(&mut self, id: VolumeId, loc: Location) {
        self.by_name.insert(loc.name.clone(), id);
        self.by_id.insert(id, loc);
    }

    pub fn remove(&mut self, id: VolumeId) {
        if let Some(loc) = self.by_id.remove(&id) {
            self.by_name.remove(&loc.name);
        }
    }

    pub fn get(&self, id: VolumeId) -> Option<&Location> {
        self.by_id.get(&id)
    }

    pub fn by_name(&self, name: &str) -> Option<VolumeId> {
        self.by_name.get(name).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = (VolumeId, &Location)> {
        self.by_id.iter().map(|(id, l)| (*id, l))
    }

    /// The shard with the fewest volumes, for a new one.
    pub fn emptiest_shard(&self, shards: u32) -> u32 {
        let mut count = vec![0usize; shards as usize];
        for loc in self.by_id.values() {
            if let Some(c) = count.get_mut(loc.shard as usize) {
                *c += 1;
            }
        }
        (0..shards)
            .min_by_key(|&s| (count[s as usize], s))
            .unwrap_or(0)
    }
}

pub struct Cell {
    pub key: CellKey,
    pub id: [u8; 16],
    /// Derived from the cell key: salts for unknown users.
    pub salt_secret: [u8; 32],
    pub shards: u32,
    pub name: String,
    pdb: RwLock<Pdb>,
    vldb: RwLock<Vldb>,
    /// Each shard's address, once bound.
    addrs: RwLock<Vec<String>>,
    next_volume: AtomicU64,
    /// Where the next volume id is kept, so ids are never reused, not
    /// even those of volumes removed since (none in tests).
    volume_counter: Option<std::path::PathBuf>,
    pub started: Instant,
}

impl Cell {
    pub fn new(key: CellKey, id: [u8; 16], shards: u32, name: String, pdb: Pdb) -> Cell {
        let salt_secret = blake3::derive_key("coda pdb salts for unknown users", key.as_bytes());
        Cell {
            key,
            id,
            salt_secret,
            shards,
            name,
            pdb: RwLock::new(pdb),
            vldb: RwLock::new(Vldb::default()),
            addrs: RwLock::new(vec![String::new(); shards as usize]),
            next_volume: AtomicU64::new(FIRST_VOLUME_ID),
            volume_counter: None,
            started: Instant::now(),
        }
    }

    pub fn pdb(&self) -> RwLockReadGuard<'_, Pdb> {
        self.pdb.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn pdb_mut(&self) -> RwLockWriteGuard<'_, Pdb> {
        self.pdb.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn vldb(&self) -> RwLockReadGuard<'_, Vldb> {
        self.vldb.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn vldb_mut(&self) -> RwLockWriteGuard<'_, Vldb> {
        self.vldb.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_addr(&self, shard: u32, addr: String) {
        self.addrs.write().unwrap_or_else(|p| p.into_inner())[shard as usize] = addr;
    }

    pub fn addr(&self, shard: u32) -> String {
        self.addrs.read().unwrap_or_else(|p| p.into_inner())[shard as usize].clone()
    }

    /// Keeps the volume id counter in `path` from now on (read now).
    pub fn keep_volume_counter(&mut self, path: std::path::PathBuf) -> std::io::Result<()> {
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let next = text.trim().parse::<u64>().map_err(|e| {
                    std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("{}: {e}", path.display()),
                    )
                })?;
                self.next_volume.fetch_max(next, Ordering::Relaxed);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.volume_counter = Some(path);
        Ok(())
    }

    /// A volume id never handed out before in this cell, above every one in use.
    pub fn new_volume_id(&self) -> VolumeId {
        let id = self.next_volume.fetch_add(1, Ordering::Relaxed);
        if let Some(path) = &self.volume_counter {
            let next = self.next_volume.load(Ordering::Relaxed);
            if let Err(e) =
                crate::pdb::write_atomically(path, format!("{next}\n").as_bytes(), 0o644)
            {
                tracing::error!("{}: {e}", path.display());
            }
        }
        id
    }

    /// Records a recovered volume, keeping new ids above it.
    pub fn register(&self, id: VolumeId, loc: Location) {
        self.next_volume.fetch_max(id + 1, Ordering::Relaxed);
        self.vldb_mut().insert(id, loc);
    }
}
