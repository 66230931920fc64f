//! The consistency checker: walks every volume of a shard and reports what
//! breaks an invariant (heap structure, parent pointers, link counts,
//! directory entries, containers holding the bytes their vnode's hash
//! names, each referenced by one object: the same vnode in clones of one
//! volume share it, nothing else does).

use std::collections::HashMap;

use coda_proto::fid::{Fid, ROOT_VNODE};
use coda_proto::status::VnodeKind;

use crate::fileops::hash_file;
use crate::shard::Shard;
use crate::vnode::{IN_VNODE_MAX, NO_CONTAINER};

/// Every problem found; empty when the shard is consistent.
pub fn check_shard(shard: &Shard) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = shard.verify_heap() {
        problems.push(format!("heap: {e}"));
    }
    let mut containers: HashMap<u64, (Fid, u32)> = HashMap::new();
    for vol in shard.meta.volumes.values() {
        let name = &vol.header.name;
        let mut p = |s: String| problems.push(format!("volume {name}: {s}"));
        match vol.vnodes.get(&ROOT_VNODE) {
            Some((_, r)) if r.is_dir() => {}
            _ => p("no root directory".into()),
        }
        // Names pointing at each vnode, and subdirectories of each directory.
        let mut names: HashMap<u64, Vec<u64>> = HashMap::new();
        for (dir, entries) in &vol.dirs {
            if !vol.vnodes.get(dir).is_some_and(|(_, d)| d.is_dir()) {
                p(format!("entries under {dir:x}, which is not a directory"));
            }
            for (n, (_, fid)) in entries {
                if fid.volume != vol.id() {
                    continue; // a mount point
                }
                match vol.vnode(*fid) {
                    Some(_) => names.entry(fid.vnode).or_default().push(*dir),
                    None => p(format!("entry {n:?} in {dir:x} names missing {fid}")),
                }
            }
        }
        let mut bytes = 0;
        for (vnode, (_, v)) in &vol.vnodes {
            if v.fid.vnode != *vnode || v.fid.volume != vol.id() {
                p(format!("vnode {vnode:x} says it is {}", v.fid));
            }
            // Replicas hand out numbers of their own class; others come
            // from the other replicas. Derived fids are numbered apart.
            let counted = *vnode < coda_proto::fid::DERIVED_VNODE_BASE;
            if vol.replicas() == 1 && counted && *vnode >= vol.header.next_vnode {
                p(format!("vnode {vnode:x} at or past next_vnode"));
            }
            let parents = names.get(vnode).cloned().unwrap_or_default();
            if *vnode == ROOT_VNODE {
                if !parents.is_empty() {
                    p("the root has names".into());
                }
            } else if parents.is_empty() {
                p(format!("{} has no name", v.fid));
            } else if parents.iter().any(|d| *d != v.parent.vnode) {
                p(format!(
                    "{} has names outside its parent {}",
                    v.fid, v.parent
                ));
            }
            match v.kind {
                VnodeKind::Directory => {
                    if parents.len() > 1 {
                        p(format!("directory {} has {} names", v.fid, parents.len()));
                    }
                    let subdirs = vol.dirs.get(vnode).map_or(0, |e| {
                        e.values()
                            .filter(|(_, f)| vol.vnode(*f).is_some_and(|c| c.is_dir()))
                            .count()
                    });
                    if v.link_count as usize != 2 + subdirs {
                        p(format!(
                            "{} has link count {}, {} subdirectories",
                            v.fid, v.link_count, subdirs
                        ));
                    }
                    if v.acl.is_none() {
                        p(format!("directory {} has no ACL", v.fid));
                    }
                }
                _ => {
                    bytes += v.length;
                    if v.link_count as usize != parents.len() {
                        p(format!(
                            "{} has link count {}, {} names",
                            v.fid,
                            v.link_count,
                            parents.len()
                        ));
                    }
                }
            }
            if v.container != NO_CONTAINER {
                let users = containers.entry(v.container).or_insert((v.fid, 0));
                users.1 += 1;
                let other = users.0;
                // Two vnodes of one volume never have the same number.
                if (other.vnode, other.unique) != (v.fid.vnode, v.fid.unique) {
                    p(format!(
                        "container {:x} used by {} and {other}",
                        v.container, v.fid
                    ));
                }
                match shard.containers.open_read(v.container) {
                    Err(e) => p(format!("{}: container {:x}: {e}", v.fid, v.container)),
                    Ok(f) => {
                        let len = f.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
                        if len != v.length {
                            p(format!(
                                "{}: container holds {len} bytes, vnode says {}",
                                v.fid, v.length
                            ));
                        } else if hash_file(&f).ok() != Some(v.content_hash) {
                            p(format!(
                                "{}: container bytes do not match the content hash",
                                v.fid
                            ));
                        }
                    }
                }
                if !v.inline.is_empty() {
                    p(format!(
                        "{}: bytes in its vnode beside its container",
                        v.fid
                    ));
                }
            } else if v.kind == VnodeKind::File {
                let held = v.inline.len() as u64;
                if held != v.length {
                    p(format!(
                        "{} has {} bytes but no container and {held} in its vnode",
                        v.fid, v.length
                    ));
                } else if held > IN_VNODE_MAX {
                    p(format!(
                        "{}: {held} bytes in its vnode, over the limit",
                        v.fid
                    ));
                } else if *blake3::hash(&v.inline).as_bytes() != v.content_hash {
                    p(format!("{}: bytes do not match the content hash", v.fid));
                }
            }
        }
        if bytes != vol.bytes {
            p(format!("byte count {} but files hold {bytes}", vol.bytes));
        }
    }
    for (c, (fid, users)) in containers {
        let counted = shard.meta.refs(c);
        if counted != users {
            problems.push(format!(
                "container {c:x} (of {fid}) has {users} users, {counted} counted"
            ));
        }
    }
    problems
}
