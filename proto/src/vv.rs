//! Version vectors: one update counter per replica of a volume, plus the
//! store id of the last update, on every object and every volume.

use coda_rpc2::codec_struct;

use crate::fid::StoreId;

/// Set when the replicas of an object diverged in ways resolution could not
/// reconcile: the object waits for `repair`.
pub const FLAG_INCONSISTENT: u8 = 1;

/// On a replica's root: the replica was made empty after its volume held
/// contents elsewhere (a server that lost its disk, or was down when the
/// volume was made), and serves no client until resolution fills it.
/// Resolution never installs it.
pub const FLAG_BARREN: u8 = 4;

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
    pub struct VersionVector {
        /// Updates each replica saw, by replica index in the volume's group.
        pub slots: Vec<u64>,
        pub store_id: StoreId,
        pub flags: u8,
    }
}

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VvOrder {
    Equal,
    /// The left saw every update the right saw, and more.
    Dominates,
    Dominated,
    /// Each saw updates the other did not: a conflict.
    Concurrent,
}

impl VersionVector {
    /// A fresh vector for a volume of `replicas` replicas.
    pub fn new(replicas: usize) -> VersionVector {
        VersionVector {
            slots: vec![0; replicas],
            ..VersionVector::default()
        }
    }

    /// Records one update made at `replica` by the mutation `store_id`.
    pub fn bump(&mut self, replica: usize, store_id: StoreId) {
        if self.slots.len() <= replica {
            self.slots.resize(replica + 1, 0);
        }
        self.slots[replica] += 1;
        self.store_id = store_id;
    }

    /// Raises each slot to `other`'s where that is higher.
    pub fn raise(&mut self, other: &VersionVector) {
        if self.slots.len() < other.slots.len() {
            self.slots.resize(other.slots.len(), 0);
        }
        for (s, o) in self.slots.iter_mut().zip(&other.slots) {
            *s = (*s).max(*o);
        }
    }

    /// Compares slot by slot; a missing slot counts as zero.
    pub fn compare(&self, other: &VersionVector) -> VvOrder {
        let (mut more, mut less) = (false, false);
        for i in 0..self.slots.len().max(other.slots.len()) {
            let a = self.slots.get(i).copied().unwrap_or(0);
            let b = other.slots.get(i).copied().unwrap_or(0);
            more |= a > b;
            less |= a < b;
        }
        match (more, less) {
            (false, false) => VvOrder::Equal,
            (true, false) => VvOrder::Dominates,
            (false, true) => VvOrder::Dominated,
            (true, true) => VvOrder::Concurrent,
        }
    }

    /// Different counts but the same last mutation: a lost COP2, not a conflict.
    pub fn weakly_equal(&self, other: &VersionVector) -> bool {
        self.store_id == other.store_id
    }

    pub fn is_inconsistent(&self) -> bool {
        self.flags & FLAG_INCONSISTENT != 0
    }

    pub fn is_barren(&self) -> bool {
        self.flags & FLAG_BARREN != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(slots: &[u64]) -> VersionVector {
        VersionVector {
            slots: slots.to_vec(),
            ..VersionVector::default()
        }
    }

    #[test]
    fn comparison_finds_order_and_conflict() {
        assert_eq!(vv(&[1, 2]).compare(&vv(&[1, 2])), VvOrder::Equal);
        assert_eq!(vv(&[2, 2]).compare(&vv(&[1, 2])), VvOrder::Dominates);
        assert_eq!(vv(&[1, 2]).compare(&vv(&[1, 3])), VvOrder::Dominated);
        assert_eq!(vv(&[2, 1]).compare(&vv(&[1, 2])), VvOrder::Concurrent);
        assert_eq!(vv(&[1]).compare(&vv(&[1, 0])), VvOrder::Equal);
        assert_eq!(vv(&[1]).compare(&vv(&[1, 1])), VvOrder::Dominated);
    }

    #[test]
    fn bump_counts_at_the_replica_and_takes_the_store_id() {
        let mut v = VersionVector::new(1);
        let sid = StoreId { host: 9, unique: 4 };
        v.bump(2, sid);
        assert_eq!(v.slots, vec![0, 0, 1]);
        assert_eq!(v.store_id, sid);
        assert!(v.weakly_equal(&VersionVector {
            store_id: sid,
            ..VersionVector::new(3)
        }));
    }
}
