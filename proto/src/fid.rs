//! File ids and store ids.

use std::fmt;
use std::str::FromStr;

use coda_rpc2::codec_struct;

/// A volume's id: 64 bits, never reused within a cell.
pub type VolumeId = u64;

/// Vnode numbers at or above this are chosen by a client while it could not
/// ask the server for fids; reintegration gives the object a real one.
pub const LOCAL_VNODE_BASE: u64 = 1 << 63;

/// Vnode numbers from here to [`LOCAL_VNODE_BASE`] are derived from a
/// client's made-up fid (and its host) by every replica of a volume alike,
/// so an object made while disconnected, or without a round trip for
/// fids, gets one fid on all of them. AllocFids hands out numbers below.
pub const DERIVED_VNODE_BASE: u64 = 1 << 62;

/// The fid every replica of `volume` gives the object `user`'s client
/// `host` made as `local`. The user is in it because a client names its
/// own host: another user claiming it cannot take the fids it will make.
pub fn derived_fid(volume: VolumeId, user: crate::acl::PrincipalId, host: u64, local: Fid) -> Fid {
    let mut h = blake3::Hasher::new_derive_key("coda derived fids");
    h.update(&user.to_le_bytes());
    for n in [volume, host, local.vnode, local.unique] {
        h.update(&n.to_le_bytes());
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.finalize().as_bytes()[..8]);
    let vnode = DERIVED_VNODE_BASE | (u64::from_le_bytes(b) & (DERIVED_VNODE_BASE - 1));
    Fid::new(volume, vnode, vnode)
}

/// The vnode of every volume's root directory.
pub const ROOT_VNODE: u64 = 1;

codec_struct! {
    /// A file id: the volume, the vnode within it, and a uniquifier that is
    /// never reused, so a fid names one object for ever.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
    pub struct Fid {
        pub volume: VolumeId,
        pub vnode: u64,
        pub unique: u64,
    }
}

impl Fid {
    pub const fn new(volume: VolumeId, vnode: u64, unique: u64) -> Fid {
        Fid {
            volume,
            vnode,
            unique,
        }
    }

    /// The root directory of `volume`.
    pub const fn root(volume: VolumeId) -> Fid {
        Fid::new(volume, ROOT_VNODE, 1)
    }

    /// Chosen by a disconnected client; remapped at reintegration.
    pub fn is_local(&self) -> bool {
        self.vnode >= LOCAL_VNODE_BASE
    }
}

/// Coda's notation: `volume.vnode.unique` in hex.
impl fmt::Display for Fid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}.{:x}.{:x}", self.volume, self.vnode, self.unique)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a fid (volume.vnode.unique in hex): {0:?}")]
pub struct BadFid(pub String);

impl FromStr for Fid {
    type Err = BadFid;

    fn from_str(s: &str) -> Result<Fid, BadFid> {
        let bad = || BadFid(s.to_string());
        let mut parts = s.split('.').map(|p| u64::from_str_radix(p, 16));
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(Ok(volume)), Some(Ok(vnode)), Some(Ok(unique)), None) => {
                Ok(Fid::new(volume, vnode, unique))
            }
            _ => Err(bad()),
        }
    }
}

codec_struct! {
    /// Names one mutation: the client (`host`) and its counter. Replicas
    /// that applied the same mutation hold the same store id, and a
    /// repeated mutation is recognised by it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
    pub struct StoreId {
        pub host: u64,
        pub unique: u64,
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}.{:x}", self.host, self.unique)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fids_print_and_parse_in_coda_notation() {
        let fid = Fid::new(0x7f00_0001, 0x1a, 3);
        assert_eq!(fid.to_string(), "7f000001.1a.3");
        assert_eq!("7f000001.1a.3".parse::<Fid>(), Ok(fid));
        assert!("7f000001.1a".parse::<Fid>().is_err());
        assert!("7f000001.1a.3.4".parse::<Fid>().is_err());
        assert!("x.1.1".parse::<Fid>().is_err());
        assert!(!fid.is_local());
        assert!(Fid::new(1, LOCAL_VNODE_BASE + 2, 1).is_local());
    }
}
