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

/// Work for the update thread.
pub enum Work {
    /// Make a new volume's replicas; answer `done` with its `VolumeInfo`.
    MakeReplicas {
        entry: VolumeEntry,
        done: async_channel::Sender<(u16, Bytes)>,
    },
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
            self.cell.directory_mut().merge(self.me(), mine);
        } else {
            let (scm, addr) = peers.scm();
            let req = UpdateRequest {
                server: self.me().to_string(),
                volumes: mine,
            };
            match self.client.call_decode::<CellState>(addr, op::UPDATE, &req) {
                Ok(state) => {
                    if let Err(e) = self.cell.pdb_mut().adopt(&state.pdb) {
                        tracing::error!("the SCM's protection database: {e}");
                    }
                    self.cell.directory_mut().adopt(state.volumes);
                }
                Err(e) => tracing::debug!("update from the SCM {scm} at {addr}: {e}"),
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
        match work {
            Work::MakeReplicas { entry, done } => {
                let answer = match self.make_replicas(&entry) {
                    Ok(info) => (0, codec::to_bytes(&info)),
                    Err(e) => (e.0, Bytes::new()),
                };
                let _ = done.send_blocking(answer);
            }
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
