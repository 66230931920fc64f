//! The protection database: users, groups and their members (Coda's pdb).
//!
//! Users have positive ids, groups negative ones. `System:AnyUser` holds
//! everyone, anonymous connections included; `System:Administrators` may
//! administer the cell. Groups nest: a user's protection domain (CPS) is
//! the user, `System:AnyUser`, and every group reachable from the user by
//! membership. Kept in `pdb.toml` under the server root, replaced whole
//! (write, sync, rename) on each change; passwords are kept only as the
//! argon2id keys they derive.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};

use coda_proto::acl::{PrincipalId, ADMINISTRATORS, ANY_USER};
use coda_proto::auth::{password_key, Salt};
use serde::{Deserialize, Serialize};

pub const ADMIN_ID: PrincipalId = 500;
const FIRST_USER_ID: PrincipalId = 1000;
const FIRST_GROUP_ID: PrincipalId = -1000;
pub const ANY_USER_NAME: &str = "System:AnyUser";
pub const ADMINISTRATORS_NAME: &str = "System:Administrators";

/// argon2id cost for new passwords (OWASP's minimum: 19 MiB, 2 passes).
pub const PASSWORD_MEMORY_KIB: u32 = 19 * 1024;
pub const PASSWORD_ITERATIONS: u32 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub id: PrincipalId,
    /// Hex: the salt and the derived key.
    pub salt: String,
    pub key: String,
    pub memory_kib: u32,
    pub iterations: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub id: PrincipalId,
    pub owner: PrincipalId,
    pub members: Vec<PrincipalId>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PdbFile {
    users: Vec<User>,
    groups: Vec<Group>,
}

#[derive(Debug, thiserror::Error)]
pub enum PdbError {
    #[error("{0} exists already")]
    Exists(String),
    #[error("no user or group {0}")]
    NoSuch(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
}

#[derive(Debug)]
pub struct Pdb {
    path: PathBuf,
    users: BTreeMap<PrincipalId, User>,
    groups: BTreeMap<PrincipalId, Group>,
    /// Bumped by every change, so cached protection domains know to renew.
    pub generation: u64,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    if s.len() != 2 * N {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Pdb {
    /// Loads `path`, or starts an empty database (with the two system
    /// groups) if it does not exist.
    pub fn open(path: &Path) -> Result<Pdb, PdbError> {
        let io = |source| PdbError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file: PdbFile = match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| PdbError::Format {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PdbFile::default(),
            Err(e) => return Err(io(e)),
        };
        let mut pdb = Pdb {
            path: path.to_path_buf(),
            users: file.users.into_iter().map(|u| (u.id, u)).collect(),
            groups: file.groups.into_iter().map(|g| (g.id, g)).collect(),
            generation: 0,
        };
        for (id, name) in [
            (ANY_USER, ANY_USER_NAME),
            (ADMINISTRATORS, ADMINISTRATORS_NAME),
        ] {
            pdb.groups.entry(id).or_insert_with(|| Group {
                name: name.into(),
                id,
                owner: ADMIN_ID,
                members: Vec::new(),
            });
        }
        Ok(pdb)
    }

    /// The database as its file holds it, for the other servers of the cell.
    pub fn text(&self) -> Result<String, PdbError> {
        let file = PdbFile {
            users: self.users.values().cloned().collect(),
            groups: self.groups.values().cloned().collect(),
        };
        toml::to_string(&file).map_err(|e| PdbError::Format {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }

    /// Takes the SCM's database (`text`) if it differs from this one;
    /// true if it did.
    pub fn adopt(&mut self, text: &str) -> Result<bool, PdbError> {
        if self.text()? == text {
            return Ok(false);
        }
        let file: PdbFile = toml::from_str(text).map_err(|e| PdbError::Format {
            path: self.path.clone(),
            reason: e.to_string(),
        })?;
        self.users = file.users.into_iter().map(|u| (u.id, u)).collect();
        self.groups = file.groups.into_iter().map(|g| (g.id, g)).collect();
        self.save()?;
        Ok(true)
    }

    fn save(&mut self) -> Result<(), PdbError> {
        self.generation += 1;
        let text = self.text()?;
        write_atomically(&self.path, text.as_bytes(), 0o600).map_err(|source| PdbError::Io {
            path: self.path.clone(),
            source,
        })
    }

    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.values().find(|u| u.name == name)
    }

    pub fn user_by_id(&self, id: PrincipalId) -> Option<&User> {
        self.users.get(&id)
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.values().find(|g| g.name == name)
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values()
    }

    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// A user or group id by name (`System:AnyUser`, `alice`, `alice:friends`).
    pub fn id_of(&self, name: &str) -> Option<PrincipalId> {
        self.user(name)
            .map(|u| u.id)
            .or_else(|| self.group(name).map(|g| g.id))
    }

    pub fn name_of(&self, id: PrincipalId) -> Option<&str> {
        self.users
            .get(&id)
            .map(|u| u.name.as_str())
            .or_else(|| self.groups.get(&id).map(|g| g.name.as_str()))
    }

    /// Adds a user; `id` None takes the next free one.
    pub fn add_user(
        &mut self,
        name: &str,
        password: &str,
        id: Option<PrincipalId>,
        salt: [u8; 16],
    ) -> Result<PrincipalId, PdbError> {
        check_name(name, false)?;
        if self.id_of(name).is_some() {
            return Err(PdbError::Exists(name.into()));
        }
        let id = id.unwrap_or_else(|| {
            self.users
                .keys()
                .next_back()
                .map_or(FIRST_USER_ID, |&last| (last + 1).max(FIRST_USER_ID))
        });
        // The servers' own principal is no one's to take.
        if id == crate::replica::SERVER_ID {
            return Err(PdbError::Invalid(format!("user id {id} is reserved")));
        }
        if self.users.contains_key(&id) {
            return Err(PdbError::Exists(format!("user id {id}")));
        }
        let s = Salt {
            salt,
            memory_kib: PASSWORD_MEMORY_KIB,
            iterations: PASSWORD_ITERATIONS,
        };
        let key = password_key(password, &s).map_err(|e| PdbError::Invalid(e.to_string()))?;
        self.users.insert(
            id,
            User {
                name: name.into(),
                id,
                salt: hex(&salt),
                key: hex(&key),
                memory_kib: s.memory_kib,
                iterations: s.iterations,
            },
        );
        self.save()?;
        Ok(id)
    }

    pub fn add_group(&mut self, name: &str, owner: &str) -> Result<PrincipalId, PdbError> {
        check_name(name, true)?;
        if self.id_of(name).is_some() {
            return Err(PdbError::Exists(name.into()));
        }
        let owner = self
            .user(owner)
            .ok_or_else(|| PdbError::NoSuch(owner.into()))?
            .id;
        let id = self
            .groups
            .keys()
            .next()
            .map_or(FIRST_GROUP_ID, |&low| (low - 1).min(FIRST_GROUP_ID));
        self.groups.insert(
            id,
            Group {
                name: name.into(),
                id,
                owner,
                members: Vec::new(),
            },
        );
        self.save()?;
        Ok(id)
    }

    /// Adds a user or a group to a group; a group may not contain itself,
    /// even through others.
    pub fn add_member(&mut self, group: &str, member: &str) -> Result<(), PdbError> {
        let gid = self
            .group(group)
            .ok_or_else(|| PdbError::NoSuch(group.into()))?
            .id;
        if gid == ANY_USER {
            return Err(PdbError::Invalid(format!(
                "{ANY_USER_NAME} holds everyone already"
            )));
        }
        let mid = self
            .id_of(member)
            .ok_or_else(|| PdbError::NoSuch(member.into()))?;
        if mid == gid || self.cps(gid).contains(&mid) {
            return Err(PdbError::Invalid(format!(
                "{member} contains {group}: membership would loop"
            )));
        }
        let g = self.groups.get_mut(&gid).expect("found above");
        if !g.members.contains(&mid) {
            g.members.push(mid);
            self.save()?;
        }
        Ok(())
    }

    /// The protection domain of `id`: itself, `System:AnyUser`, and every
    /// group it belongs to directly or through other groups.
    pub fn cps(&self, id: PrincipalId) -> Vec<PrincipalId> {
        let mut seen: HashSet<PrincipalId> = HashSet::from([id, ANY_USER]);
        let mut queue = VecDeque::from([id]);
        while let Some(p) = queue.pop_front() {
            for g in self.groups.values() {
                if g.members.contains(&p) && seen.insert(g.id) {
                    queue.push_back(g.id);
                }
            }
        }
        let mut out: Vec<_> = seen.into_iter().collect();
        out.sort_unstable();
        out
    }

    /// The salt and cost to derive `name`'s key with. An unknown user gets
    /// a salt made from `secret`, the same each time, so the answer does
    /// not tell who exists.
    pub fn salt_of(&self, name: &str, secret: &[u8; 32]) -> Salt {
        match self
            .user(name)
            .and_then(|u| Some((unhex::<16>(&u.salt)?, u)))
        {
            Some((salt, u)) => Salt {
                salt,
                memory_kib: u.memory_kib,
                iterations: u.iterations,
            },
            None => {
                let h = blake3::keyed_hash(secret, name.as_bytes());
                Salt {
                    salt: h.as_bytes()[..16].try_into().unwrap(),
                    memory_kib: PASSWORD_MEMORY_KIB,
                    iterations: PASSWORD_ITERATIONS,
                }
            }
        }
    }

    /// The stored key of `name`.
    pub fn key_of(&self, name: &str) -> Option<(PrincipalId, [u8; 32])> {
        let u = self.user(name)?;
        Some((u.id, unhex::<32>(&u.key)?))
    }

    pub fn is_admin(&self, id: PrincipalId) -> bool {
        self.cps(id).contains(&ADMINISTRATORS)
    }
}

fn check_name(name: &str, group: bool) -> Result<(), PdbError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-:@".contains(c))
        && (group || !name.contains(':'))
        && !name.starts_with("System:");
    if ok {
        Ok(())
    } else {
        Err(PdbError::Invalid(format!(
            "bad name {name:?}: letters, digits and ._-@ only{}",
            if group { " (and ':')" } else { "" }
        )))
    }
}

/// Replaces `path` with `bytes`: a temporary file, synced, renamed over it,
/// and the directory synced, so a crash leaves the old or the new whole.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_nest_and_may_not_loop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pdb.toml");
        let mut pdb = Pdb::open(&path).unwrap();
        let alice = pdb.add_user("alice", "pw", None, [1; 16]).unwrap();
        pdb.add_user("bob", "pw", None, [2; 16]).unwrap();
        let inner = pdb.add_group("alice:inner", "alice").unwrap();
        let outer = pdb.add_group("alice:outer", "alice").unwrap();
        pdb.add_member("alice:inner", "bob").unwrap();
        pdb.add_member("alice:outer", "alice:inner").unwrap();
        let bob = pdb.id_of("bob").unwrap();
        assert_eq!(pdb.cps(bob), {
            let mut v = vec![outer, inner, ANY_USER, bob];
            v.sort_unstable();
            v
        });
        assert!(!pdb.cps(alice).contains(&inner));
        assert!(pdb.add_member("alice:inner", "alice:outer").is_err());
        assert!(matches!(
            pdb.add_user("bob", "x", None, [3; 16]),
            Err(PdbError::Exists(_))
        ));
        // It all survives a reload.
        let again = Pdb::open(&path).unwrap();
        assert_eq!(again.cps(bob), pdb.cps(bob));
        assert_eq!(again.key_of("alice"), pdb.key_of("alice"));
    }
}
