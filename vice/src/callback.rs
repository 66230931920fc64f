//! Callback promises: which client connections cache which objects and
//! volumes. A change breaks the promises other clients hold on what it
//! touched; a client that cannot be reached loses all of its promises.

use std::collections::{BTreeMap, HashMap, HashSet};

use coda_proto::callback::Break;
use coda_proto::fid::{Fid, VolumeId};
use coda_rpc2::ConnId;

#[derive(Default)]
pub struct Callbacks {
    by_fid: HashMap<Fid, HashSet<ConnId>>,
    by_volume: HashMap<VolumeId, HashSet<ConnId>>,
    by_conn: HashMap<ConnId, (HashSet<Fid>, HashSet<VolumeId>)>,
    pub broken: u64,
}

impl Callbacks {
    pub fn promise(&mut self, conn: ConnId, fid: Fid) {
        self.by_fid.entry(fid).or_default().insert(conn);
        self.by_conn.entry(conn).or_default().0.insert(fid);
    }

    pub fn promise_volume(&mut self, conn: ConnId, volume: VolumeId) {
        self.by_volume.entry(volume).or_default().insert(conn);
        self.by_conn.entry(conn).or_default().1.insert(volume);
    }

    pub fn holds(&self, conn: ConnId, fid: Fid) -> bool {
        self.by_fid.get(&fid).is_some_and(|s| s.contains(&conn))
    }

    pub fn holds_volume(&self, conn: ConnId, volume: VolumeId) -> bool {
        self.by_volume
            .get(&volume)
            .is_some_and(|s| s.contains(&conn))
    }

    /// Takes back the promises on `fids` and on `volume` from everyone but
    /// `changer`; returns what to tell each client.
    pub fn break_for(
        &mut self,
        changer: Option<ConnId>,
        volume: VolumeId,
        fids: &[Fid],
    ) -> BTreeMap<ConnId, Break> {
        let mut out: BTreeMap<ConnId, Break> = BTreeMap::new();
        for fid in fids {
            let Some(holders) = self.by_fid.get_mut(fid) else {
                continue;
            };
            holders.retain(|&c| {
                if Some(c) == changer {
                    return true;
                }
                let b = out.entry(c).or_default();
                if !b.fids.contains(fid) {
                    b.fids.push(*fid);
                }
                false
            });
            if holders.is_empty() {
                self.by_fid.remove(fid);
            }
        }
        if let Some(holders) = self.by_volume.get_mut(&volume) {
            holders.retain(|&c| {
                if Some(c) == changer {
                    return true;
                }
                out.entry(c).or_default().volumes.push(volume);
                false
            });
            if holders.is_empty() {
                self.by_volume.remove(&volume);
            }
        }
        for (conn, b) in &out {
            if let Some((f, v)) = self.by_conn.get_mut(conn) {
                for fid in &b.fids {
                    f.remove(fid);
                }
                for vol in &b.volumes {
                    v.remove(vol);
                }
            }
            self.broken += (b.fids.len() + b.volumes.len()) as u64;
        }
        out
    }

    /// Forgets a client: it went away or did not answer a break.
    pub fn drop_client(&mut self, conn: ConnId) {
        let Some((fids, volumes)) = self.by_conn.remove(&conn) else {
            return;
        };
        for fid in fids {
            if let Some(s) = self.by_fid.get_mut(&fid) {
                s.remove(&conn);
                if s.is_empty() {
                    self.by_fid.remove(&fid);
                }
            }
        }
        for vol in volumes {
            if let Some(s) = self.by_volume.get_mut(&vol) {
                s.remove(&conn);
                if s.is_empty() {
                    self.by_volume.remove(&vol);
                }
            }
        }
    }

    /// Promises held, on objects and volumes.
    pub fn count(&self) -> u64 {
        self.by_conn
            .values()
            .map(|(f, v)| (f.len() + v.len()) as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_breaks_other_clients_promises_only() {
        let mut cb = Callbacks::default();
        let (a, b) = (ConnId(1), ConnId(2));
        let f = Fid::new(7, 2, 2);
        cb.promise(a, f);
        cb.promise(b, f);
        cb.promise_volume(b, 7);
        let out = cb.break_for(Some(a), 7, &[f]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[&b].fids, vec![f]);
        assert_eq!(out[&b].volumes, vec![7]);
        assert!(cb.holds(a, f) && !cb.holds(b, f) && !cb.holds_volume(b, 7));
        cb.drop_client(a);
        assert_eq!(cb.count(), 0);
    }
}
