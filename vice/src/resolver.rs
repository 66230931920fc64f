//! The resolver thread of a server in a cell of several: it resolves a
//! volume when a client asks (`RESOLVE`, sent when it sees replicas
//! differ) and sweeps every replicated volume it holds now and then, so a
//! replica that missed updates (it was down, or cut off) catches up with
//! no one asking. Installs refuse objects that changed since they were
//! read, so two servers resolving one volume at once do no harm.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coda_proto::fid::VolumeId;
use coda_proto::vice::VolumeKind;
use coda_proto::Errno;
use coda_rpc2::endpoint::{Reply, SideEffect};

use crate::cell::Cell;
use crate::peer::PeerClient;
use crate::resolve::{self, Replicas};

/// How often every replicated volume is checked.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Tries of a volume that kept changing while it was resolved, before it
/// is left to the sweep.
const RETRIES: u32 = 5;

/// The first wait before trying such a volume again.
const RETRY_BASE: Duration = Duration::from_millis(250);

/// The replicas of one volume, by slot, over the network.
struct NetReplicas<'a> {
    client: &'a PeerClient,
    addrs: Vec<Option<SocketAddr>>,
}

impl Replicas for NetReplicas<'_> {
    fn call(
        &mut self,
        slot: usize,
        opcode: u16,
        body: Bytes,
        side_effect: Option<SideEffect>,
    ) -> Result<Reply, Errno> {
        let addr = self.addrs.get(slot).copied().flatten();
        self.client
            .call(addr.ok_or(Errno::ETIMEDOUT)?, opcode, body, side_effect)
    }
}

pub struct Resolver {
    pub cell: Arc<Cell>,
    pub client: PeerClient,
}

impl Resolver {
    /// Resolves what is asked for, and sweeps, until `stop`. A volume asked
    /// for that changed while it was resolved (a client's update, or
    /// another server resolving it too) is tried again soon, not left to
    /// the next sweep.
    pub fn run(&self, stop: &AtomicBool) {
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        let mut again: BTreeMap<VolumeId, (Instant, u32)> = BTreeMap::new();
        while !stop.load(Ordering::Relaxed) {
            let mut wanted = BTreeSet::new();
            if let Some(v) = self.cell.resolve.take(Duration::from_millis(100)) {
                wanted.insert(v);
                while let Some(v) = self.cell.resolve.take(Duration::ZERO) {
                    wanted.insert(v);
                }
            }
            let now = Instant::now();
            wanted.extend(
                again
                    .iter()
                    .filter(|(_, (at, _))| *at <= now)
                    .map(|(v, _)| *v),
            );
            let asked = wanted.clone();
            if now >= next_sweep {
                wanted.extend(self.replicated());
                next_sweep = now + SWEEP_INTERVAL;
            }
            for v in wanted {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let tries = again.remove(&v).map_or(0, |(_, n)| n);
                let busy = self.resolve(v) == Err(Errno::EAGAIN);
                if busy && asked.contains(&v) && tries < RETRIES {
                    again.insert(v, (Instant::now() + self.backoff(tries), tries + 1));
                }
            }
        }
    }

    /// How long before try `tries + 1`: growing, and different on each
    /// server, so two resolving one volume at once fall apart.
    fn backoff(&self, tries: u32) -> Duration {
        let spread = self
            .cell
            .name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31) + u64::from(b));
        RETRY_BASE * (1 << tries.min(4)) + Duration::from_millis(spread % 200)
    }

    /// The replicated volumes this server holds.
    fn replicated(&self) -> Vec<VolumeId> {
        self.cell
            .vldb()
            .iter()
            .filter(|(_, l)| l.kind == VolumeKind::Replicated)
            .map(|(id, _)| id)
            .collect()
    }

    /// Resolves `volume` once; `EAGAIN` if a replica changed meanwhile.
    pub fn resolve(&self, volume: VolumeId) -> Result<(), Errno> {
        let Some(loc) = self.cell.vldb().get(volume).cloned() else {
            return Ok(());
        };
        let Some(entry) = self.cell.directory().get(volume).cloned() else {
            tracing::debug!("volume {volume:#x}: not in the cell's directory yet");
            return Ok(());
        };
        let mut addrs: Vec<Option<SocketAddr>> =
            entry.addrs.iter().map(|a| a.parse().ok()).collect();
        addrs.resize(entry.replicas.len(), None);
        if let Some(slot) = entry.replicas.iter().position(|r| *r == self.cell.name) {
            addrs[slot] = self.cell.addr(loc.shard).parse().ok();
        }
        let mut reps = NetReplicas {
            client: &self.client,
            addrs,
        };
        let n = entry.replicas.len();
        match resolve::resolve(&mut reps, volume, n) {
            Ok(o) => {
                let mut stats = self.cell.resolution();
                stats.runs += 1;
                stats.conflicts += o.conflicts as u64;
                if o.installed > 0 || o.conflicts > 0 {
                    tracing::info!(
                        "volume {}: resolved {} of {} differing objects over replicas {:?}, {} in conflict",
                        entry.name,
                        o.installed,
                        o.differing,
                        o.reachable,
                        o.conflicts
                    );
                }
                Ok(())
            }
            Err(e) => {
                tracing::info!("volume {}: resolution: {e}", entry.name);
                Err(e)
            }
        }
    }
}
