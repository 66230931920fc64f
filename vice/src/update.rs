//! The update thread of a server in a cell of several: every few seconds
//! it tells the SCM which volumes it holds and takes the cell's
//! configuration back (users, groups, every volume's replicas), as Coda's
//! updateclnt did; it makes the replicas the directory gives it that it
//! does not have yet (a server that was down when a volume was made, or a
//! new server replacing a dead one: resolution fills them); and at the SCM
//! it makes a new replicated volume's replicas on their servers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coda_proto::fid::VolumeId;
use coda_proto::update::{CellState, UpdateRequest, VolumeEntry};
use coda_proto::vice::op;
use coda_proto::Errno;
use coda_rpc2::codec;

use crate::cell::Cell;
use crate::peer::PeerClient;
use crate::service::Job;

/// How often a server updates from the SCM.
pub const UPDATE_INTERVAL: Duration = Duration::from_secs(3);

/// Runs a job on a shard of this server and waits for its answer.
pub type RunJob = Arc<dyn Fn(u32, Job) -> (u16, Bytes) + Send + Sync>;

/// Work on the replicas of a volume, for the update thread.
#[derive(Debug)]
pub enum CellJob {
    /// Make a new volume's replicas; answered with its `VolumeInfo`.
    MakeReplicas(VolumeEntry),
    /// Remove the replicas of a volume the SCM has removed from the cell.
    RemoveReplicas(VolumeEntry),
}

pub struct Work {
    pub job: CellJob,
    /// Answered with the job's code and body.
    pub done: async_channel::Sender<(u16, Bytes)>,
}

/// The shard of every server that holds a replicated volume's replica.
pub fn shard_of(id: VolumeId, shards: u32) -> u32 {
    (id % u64::from(shards.max(1))) as u32
}

pub struct Updater {
    pub cell: Arc<Cell>,
    pub client: PeerClient,
    pub run: RunJob,
}

impl Updater {
    /// Updates now, then every [`UPDATE_INTERVAL`] and whenever work comes,
    /// until `stop`.
    pub fn run(&self, stop: &AtomicBool) {
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if Instant::now() >= next {
                self.update();
                next = Instant::now() + UPDATE_INTERVAL;
            }
            if let Some(work) = self.cell.work.take(Duration::from_millis(200)) {
                self.work(work);
            }
        }
    }

    fn me(&self) -> &str {
        &self.cell.name
    }

    /// Tells the SCM this server's volumes and takes the cell's
    /// configuration; then makes what replicas are missing here.
    pub fn update(&self) {
        let Some(peers) = &self.cell.peers else {
            return;
        };
        let mut mine = Vec::new();
        for shard in 0..self.cell.shards {
            match (self.run)(shard, Job::Entries) {
                (0, body) => match codec::from_bytes::<Vec<VolumeEntry>>(&body) {
                    Ok(list) => mine.extend(list),
                    Err(e) => tracing::error!("shard {shard}'s volumes: {e}"),
                },
                (code, _) => tracing::error!("shard {shard}'s volumes: {}", Errno(code)),
            }
        }
        if peers.is_scm() {
            self.cell.directory_mut().merge(self.me(), mine.clone());
        } else {
            let (scm, addr) = peers.scm();
            let req = UpdateRequest {
                server: self.me().to_string(),
                volumes: mine.clone(),
            };
            match self.client.call_decode::<CellState>(addr, op::UPDATE, &req) {
                Ok(state) => {
                    if let Err(e) = self.cell.pdb_mut().adopt(&state.pdb) {
                        tracing::error!("the SCM's protection database: {e}");
                    }
                    self.cell
                        .directory_mut()
                        .adopt(state.volumes, state.removed);
                }
                Err(e) => tracing::debug!("update from the SCM {scm} at {addr}: {e}"),
            }
        }
        // Replicas of volumes removed while this server was away.
        let gone: Vec<VolumeEntry> = {
            let dir = self.cell.directory();
            mine.into_iter().filter(|e| dir.is_removed(e.id)).collect()
        };
        for e in gone {
            match self.remove_here(e.id) {
                Ok(()) => tracing::info!("removed volume {}, removed from the cell", e.name),
                Err(err) => tracing::warn!("removing volume {}: {err}", e.name),
            }
        }
        let missing: Vec<VolumeEntry> = {
            let vldb = self.cell.vldb();
            self.cell
                .directory()
                .all()
                .into_iter()
                .filter(|e| e.replicas.iter().any(|r| r == self.me()) && vldb.get(e.id).is_none())
                .collect()
        };
        for e in missing {
            // Others may have filled it already.
            if let Err(e) = self.make_here(&e, true) {
                tracing::warn!("making a replica of a volume: {e}");
            }
        }
    }

    /// Makes this server's replica of `e`; its entry, with its address.
    fn make_here(&self, e: &VolumeEntry, barren: bool) -> Result<VolumeEntry, Errno> {
        let job = Job::MakeReplica {
            entry: e.clone(),
            barren,
        };
        match (self.run)(shard_of(e.id, self.cell.shards), job) {
            (0, body) => codec::from_bytes(&body).map_err(|_| Errno::EIO),
            (code, _) => Err(Errno(code)),
        }
    }

    fn work(&self, work: Work) {
        let answer = match work.job {
            CellJob::MakeReplicas(entry) => self
                .make_replicas(&entry)
                .map(|info| codec::to_bytes(&info)),
            CellJob::RemoveReplicas(entry) => {
                self.remove_replicas(&entry);
                Ok(Bytes::new())
            }
        };
        let _ = work.done.send_blocking(match answer {
            Ok(body) => (0, body),
            Err(e) => (e.0, Bytes::new()),
        });
    }

    /// The SCM removes a removed volume's replica from each of its
    /// servers; one that is down removes its own when it next updates.
    fn remove_replicas(&self, entry: &VolumeEntry) {
        let Some(peers) = &self.cell.peers else {
            return;
        };
        for server in &entry.replicas {
            let removed = if server == self.me() {
                self.remove_here(entry.id)
            } else {
                let addr = peers.addr(server).ok_or(Errno::EINVAL);
                let body = codec::to_bytes(&entry.id);
                match addr.and_then(|a| self.client.call(a, op::REMOVE_REPLICA, body, None)) {
                    Ok(r) if r.code != 0 => Err(Errno(r.code)),
                    r => r.map(drop),
                }
            };
            match removed {
                Ok(()) => tracing::info!("volume {}: removed on {server}", entry.name),
                Err(e) => tracing::warn!("volume {}: removing on {server}: {e}", entry.name),
            }
        }
    }

    /// Removes this server's replica of volume `id`, if it has one.
    fn remove_here(&self, id: VolumeId) -> Result<(), Errno> {
        match (self.run)(shard_of(id, self.cell.shards), Job::RemoveVolume(id)) {
            (0, _) => Ok(()),
            (code, _) if Errno(code) == Errno::NO_SUCH_VOLUME => Ok(()),
            (code, _) => Err(Errno(code)),
        }
    }

    /// The SCM makes a new volume's replica on each of its servers; one
    /// that is down makes its own when it next updates.
    fn make_replicas(&self, entry: &VolumeEntry) -> Result<coda_proto::vice::VolumeInfo, Errno> {
        let peers = self.cell.peers.as_ref().ok_or(Errno::NOT_SCM)?;
        let mut first_error = None;
        for server in &entry.replicas {
            let made = if server == self.me() {
                self.make_here(entry, false)
            } else {
                let addr: SocketAddr = peers.addr(server).ok_or(Errno::EINVAL)?;
                self.client.call_decode(addr, op::MAKE_REPLICA, entry)
            };
            match made {
                Ok(e) => self.cell.directory_mut().record(server, e),
                Err(e) => {
                    tracing::warn!("volume {}: replica on {server}: {e}", entry.name);
                    first_error.get_or_insert(e);
                }
            }
        }
        let mut dir = self.cell.directory_mut();
        let e = dir.get(entry.id).ok_or(Errno::EIO)?;
        match (e.addrs.iter().all(String::is_empty), first_error) {
            // Made nowhere: not made.
            (true, Some(err)) => {
                dir.remove(entry.id);
                Err(err)
            }
            _ => Ok(crate::cell::entry_info(e)),
        }
    }
}
