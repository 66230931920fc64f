//! The resolver thread of a server in a cell of several: it resolves a
//! volume when a client asks (`RESOLVE`, sent when it sees replicas
//! differ) and sweeps every replicated volume it holds now and then, so a
//! replica that missed updates (it was down, or cut off) catches up with
//! no one asking. Installs refuse objects that changed since they were
//! read, so two servers resolving one volume at once do no harm.

use std::collections::BTreeSet;
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
    /// Resolves what is asked for, and sweeps, until `stop`.
    pub fn run(&self, stop: &AtomicBool) {
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        while !stop.load(Ordering::Relaxed) {
            let mut wanted = BTreeSet::new();
            if let Some(v) = self.cell.resolve.take(Duration::from_millis(200)) {
                wanted.insert(v);
                while let Some(v) = self.cell.resolve.take(Duration::ZERO) {
                    wanted.insert(v);
                }
            }
            if Instant::now() >= next_sweep {
                wanted.extend(self.replicated());
                next_sweep = Instant::now() + SWEEP_INTERVAL;
            }
            for v in wanted {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                self.resolve(v);
            }
        }
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

    pub fn resolve(&self, volume: VolumeId) {
        let Some(loc) = self.cell.vldb().get(volume).cloned() else {
            return;
        };
        let Some(entry) = self.cell.directory().get(volume).cloned() else {
            tracing::debug!("volume {volume:#x}: not in the cell's directory yet");
            return;
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
            }
            // Changed while it was read: the next sweep tries again.
            Err(e) => tracing::info!("volume {}: resolution: {e}", entry.name),
        }
    }
}
