//! Rights and access lists. A directory's ACL gives each user or group a
//! set of rights from `rlidwka`; negative entries take rights away again.
//! Users have positive ids, groups negative ones (as in Coda's PDB).

use std::fmt;

use coda_rpc2::codec::{Decode, DecodeError, Encode, Reader, Writer};
use coda_rpc2::codec_struct;

/// A user (positive) or group (negative).
pub type PrincipalId = i32;

/// Every user, authenticated or not.
pub const ANY_USER: PrincipalId = -101;
/// The cell's administrators.
pub const ADMINISTRATORS: PrincipalId = -204;
/// The user of anonymous (clear) connections.
pub const ANONYMOUS: PrincipalId = 0;

/// A set of rights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Rights(u8);

impl Rights {
    /// Read files.
    pub const READ: Rights = Rights(1);
    /// List a directory and look names up in it.
    pub const LOOKUP: Rights = Rights(2);
    /// Create entries.
    pub const INSERT: Rights = Rights(4);
    /// Remove entries.
    pub const DELETE: Rights = Rights(8);
    /// Write files and change their status.
    pub const WRITE: Rights = Rights(16);
    /// Lock files.
    pub const LOCK: Rights = Rights(32);
    /// Change the ACL.
    pub const ADMINISTER: Rights = Rights(64);
    pub const NONE: Rights = Rights(0);
    pub const ALL: Rights = Rights(127);
    const LETTERS: [(char, Rights); 7] = [
        ('r', Rights::READ),
        ('l', Rights::LOOKUP),
        ('i', Rights::INSERT),
        ('d', Rights::DELETE),
        ('w', Rights::WRITE),
        ('k', Rights::LOCK),
        ('a', Rights::ADMINISTER),
    ];

    pub const fn bits(self) -> u8 {
        self.0
    }

    pub const fn contains(self, other: Rights) -> bool {
        self.0 & other.0 == other.0
    }

    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub const fn union(self, other: Rights) -> Rights {
        Rights(self.0 | other.0)
    }

    pub const fn minus(self, other: Rights) -> Rights {
        Rights(self.0 & !other.0)
    }

    /// `rlidwka` letters in any order, or `all`, `none`, `read` (`rl`),
    /// `write` (`rlidwk`), as `cfs setacl` takes them.
    pub fn parse(s: &str) -> Result<Rights, BadRights> {
        match s {
            "all" => return Ok(Rights::ALL),
            "none" => return Ok(Rights::NONE),
            "read" => return Ok(Rights::READ.union(Rights::LOOKUP)),
            "write" => return Ok(Rights::ALL.minus(Rights::ADMINISTER)),
            _ => {}
        }
        let mut rights = Rights::NONE;
        for c in s.chars() {
            let (_, r) = Rights::LETTERS
                .iter()
                .find(|(l, _)| *l == c)
                .ok_or_else(|| BadRights(s.to_string()))?;
            rights = rights.union(*r);
        }
        if s.is_empty() {
            return Err(BadRights(s.to_string()));
        }
        Ok(rights)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a set of rights (letters from rlidwka, or all, none, read, write): {0:?}")]
pub struct BadRights(pub String);

/// The letters held, in `rlidwka` order.
impl fmt::Display for Rights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (letter, r) in Rights::LETTERS {
            if self.contains(r) {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

impl Encode for Rights {
    fn encode(&self, w: &mut Writer) {
        w.push(self.0);
    }
}

impl Decode for Rights {
    fn decode(r: &mut Reader<'_>) -> Result<Rights, DecodeError> {
        match r.u8()? {
            bits if bits & !Rights::ALL.0 == 0 => Ok(Rights(bits)),
            bits => Err(DecodeError::Invalid {
                field: "Rights",
                value: u64::from(bits),
            }),
        }
    }
}

codec_struct! {
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct AclEntry {
        pub id: PrincipalId,
        pub rights: Rights,
    }
}

codec_struct! {
    /// A directory's access list. No fixed limit on its length.
    #[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
    pub struct Acl {
        pub positive: Vec<AclEntry>,
        pub negative: Vec<AclEntry>,
    }
}

impl Acl {
    /// The rights of someone who is every principal in `ids` (a user and
    /// all the groups it belongs to, directly or not): what positive entries
    /// grant, less what negative entries deny.
    pub fn rights_for(&self, ids: &[PrincipalId]) -> Rights {
        let held = |entries: &[AclEntry]| {
            entries
                .iter()
                .filter(|e| ids.contains(&e.id))
                .fold(Rights::NONE, |acc, e| acc.union(e.rights))
        };
        held(&self.positive).minus(held(&self.negative))
    }

    /// Sets the entry for `id`; empty rights remove it.
    pub fn set(&mut self, id: PrincipalId, rights: Rights, negative: bool) {
        let entries = if negative {
            &mut self.negative
        } else {
            &mut self.positive
        };
        entries.retain(|e| e.id != id);
        if !rights.is_empty() {
            entries.push(AclEntry { id, rights });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rights_parse_and_print_in_rlidwka_order() {
        assert_eq!(Rights::parse("akr").unwrap().to_string(), "rka");
        assert_eq!(Rights::parse("all").unwrap().to_string(), "rlidwka");
        assert_eq!(Rights::parse("read").unwrap().to_string(), "rl");
        assert_eq!(Rights::parse("write").unwrap().to_string(), "rlidwk");
        assert_eq!(Rights::parse("none").unwrap(), Rights::NONE);
        assert!(Rights::parse("rx").is_err());
        assert!(Rights::parse("").is_err());
    }

    #[test]
    fn negative_entries_take_away_what_positive_ones_grant() {
        let mut acl = Acl::default();
        acl.set(ANY_USER, Rights::parse("rl").unwrap(), false);
        acl.set(-300, Rights::parse("rlidwk").unwrap(), false);
        acl.set(7, Rights::parse("w").unwrap(), true);
        assert_eq!(acl.rights_for(&[5, ANY_USER]).to_string(), "rl");
        assert_eq!(acl.rights_for(&[7, -300, ANY_USER]).to_string(), "rlidk");
        assert_eq!(acl.rights_for(&[8]), Rights::NONE);
        acl.set(-300, Rights::NONE, false);
        assert_eq!(acl.positive.len(), 1);
    }
}
