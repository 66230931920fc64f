//! The control socket: the tools (`clog`, `cfs`, `codacon`, ...) talk to
//! Venus here, never by touching its files. The caller's uid comes from
//! the socket (SO_PEERCRED), so a token goes to the user who got it.

use std::collections::HashMap;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use coda_proto::cml::{self, Op};
use coda_proto::control::{self, CacheEntry, Reply, Request, ServerState, TokenInfo, VolumeState};
use coda_proto::vice::{op, VolumeInfo, VolumeRef};
use coda_proto::{Errno, Fid, VnodeKind};
use coda_rpc2::codec;

use crate::core::Venus;

/// The extended attribute every object in the mount answers with the
/// control socket's path: how a tool finds the Venus behind a path.
pub const XATTR: &str = "user.coda.control";

/// Serves tools until the listener closes.
pub fn serve(listener: UnixListener, venus: Arc<Mutex<Venus>>, mount: PathBuf) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (venus, mount) = (venus.clone(), mount.clone());
        std::thread::spawn(move || {
            if let Err(e) = session(stream, &venus, &mount) {
                tracing::debug!("control session: {e}");
            }
        });
    }
}

fn peer_uid(s: &UnixStream) -> std::io::Result<u32> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the buffer is a ucred of the length given.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

fn session(mut s: UnixStream, venus: &Mutex<Venus>, mount: &Path) -> std::io::Result<()> {
    let uid = peer_uid(&s)?;
    while let Some(req) = control::receive::<Request>(&mut s)? {
        if let Request::Events(()) = req {
            let events = venus.lock().unwrap_or_else(|p| p.into_inner()).listen();
            control::send(&mut s, &Reply::Ok(()))?;
            for e in events {
                control::send(&mut s, &Reply::Event(e))?;
            }
            return Ok(());
        }
        if let Request::CheckpointMl(path) = &req {
            let vol = {
                let mut v = venus.lock().unwrap_or_else(|p| p.into_inner());
                below(mount, path).and_then(|rel| {
                    v.repairing = true;
                    let r = crate::checkpoint::volume_of(&mut v, uid, rel)
                        .map_err(|e| format!("{path}: {e}"));
                    v.repairing = false;
                    r
                })
            };
            match vol {
                Ok(vol) => {
                    let mut frames = Frames {
                        s: &mut s,
                        buf: Vec::new(),
                    };
                    let written = crate::checkpoint::write(venus, vol, &mut frames);
                    match written {
                        Ok(_) => control::send(&mut s, &Reply::Ok(()))?,
                        Err(e) => control::send(&mut s, &Reply::Error(format!("{path}: {e}")))?,
                    }
                }
                Err(e) => control::send(&mut s, &Reply::Error(e))?,
            }
            continue;
        }
        if let Request::HoardWalk(()) = req {
            // Progress as it goes; the core is not held between objects.
            let mut sent = Ok(());
            crate::hoard::walk(venus, |p| {
                if sent.is_ok() {
                    sent = control::send(&mut s, &Reply::Walk(p.clone()));
                }
            });
            sent?;
            continue;
        }
        let reply = {
            let mut v = venus.lock().unwrap_or_else(|p| p.into_inner());
            match answer(&mut v, uid, mount, req) {
                Ok(r) => r,
                Err(e) => Reply::Error(e),
            }
        };
        control::send(&mut s, &reply)?;
    }
    Ok(())
}

/// Bytes for the tool, sent as `Reply::Data` frames of up to 1 MiB.
struct Frames<'a> {
    s: &'a mut UnixStream,
    buf: Vec<u8>,
}

impl std::io::Write for Frames<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 1 << 20 {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            control::send(self.s, &Reply::Data(chunk))?;
        }
        Ok(())
    }
}

/// A path the tool named, below the mount.
fn below<'a>(mount: &Path, path: &'a str) -> Result<&'a Path, String> {
    Path::new(path)
        .strip_prefix(mount)
        .map_err(|_| format!("{path}: not in the Coda mount {}", mount.display()))
}

/// Tools name objects in conflict too (`repair` must).
fn resolve(v: &mut Venus, uid: u32, mount: &Path, path: &str) -> Result<Fid, String> {
    let rel = below(mount, path)?;
    v.resolve(uid, rel).map_err(|e| format!("{path}: {e}"))
}

/// The directory holding `path`, and the last name in it.
fn parent_and_name(
    v: &mut Venus,
    uid: u32,
    mount: &Path,
    path: &str,
) -> Result<(Fid, String), String> {
    let rel = below(mount, path)?;
    let name = rel
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{path}: names no entry"))?
        .to_string();
    let dir = v
        .resolve(uid, rel.parent().unwrap_or(Path::new("")))
        .map_err(|e| format!("{path}: {e}"))?;
    Ok((dir, name))
}

fn answer(v: &mut Venus, uid: u32, mount: &Path, req: Request) -> Result<Reply, String> {
    v.repairing = true;
    let r = answer_tool(v, uid, mount, req);
    v.repairing = false;
    r
}

fn answer_tool(v: &mut Venus, uid: u32, mount: &Path, req: Request) -> Result<Reply, String> {
    let fail = |what: &str, e: Errno| format!("{what}: {e}");
    Ok(match req {
        Request::SetToken(g) => {
            v.set_token(uid, g);
            Reply::Ok(())
        }
        Request::Tokens(()) => Reply::Tokens(
            v.tokens(uid)
                .into_iter()
                .map(|g| TokenInfo {
                    user: g.user,
                    user_id: g.user_id,
                    expires_at: g.expires_at,
                })
                .collect(),
        ),
        Request::Unlog(()) => {
            v.unlog(uid);
            Reply::Ok(())
        }
        Request::Servers(()) => Reply::Servers(
            v.servers
                .iter()
                .map(|a| ServerState {
                    addr: a.to_string(),
                    up: true,
                })
                .collect(),
        ),
        Request::CheckServers(()) => {
            let states = v.probe_servers();
            crate::reint::reintegrate_all(v);
            Reply::Servers(states)
        }
        Request::Disconnect(()) => {
            v.set_forced(true);
            Reply::Ok(())
        }
        Request::Reconnect(()) => {
            v.set_forced(false);
            v.probe_servers();
            crate::reint::reintegrate_all(v);
            Reply::Ok(())
        }
        Request::WriteDisconnect(()) => {
            v.write_disconnected = true;
            v.emit("state", "write-disconnected: updates are logged".into());
            Reply::Ok(())
        }
        Request::WriteReconnect(()) => {
            v.write_disconnected = false;
            crate::reint::reintegrate_all(v);
            v.emit("state", "write-through".into());
            Reply::Ok(())
        }
        Request::ListVol(path) => {
            let fid = resolve(v, uid, mount, &path)?;
            let info = match v.volume_info(fid.volume) {
                Ok(info) => info,
                // Emulated: what the cache knows.
                Err(e) => v.cached_volume(fid.volume).ok_or_else(|| fail(&path, e))?,
            };
            let (cml_records, cml_bytes) = v.cml_records(info.id);
            let replicas = v.replica_states(&info);
            Reply::Volume(VolumeState {
                replicas,
                id: info.id,
                name: info.name,
                servers: info.servers,
                state: v.volume_state(info.id).name().into(),
                cml_records,
                cml_bytes,
                waits_for_token_of_uid: v.waiting.get(&info.id).copied(),
            })
        }
        Request::GetFid(path) => Reply::Fid(resolve(v, uid, mount, &path)?),
        Request::WhereIs(path) => {
            let fid = resolve(v, uid, mount, &path)?;
            let info = v.volume_info(fid.volume).map_err(|e| fail(&path, e))?;
            Reply::WhereIs(v.replica_states(&info))
        }
        Request::FlushObject(paths) => {
            for p in paths {
                let fid = resolve(v, uid, mount, &p)?;
                v.flush_object(fid).map_err(|e| fail(&p, e))?;
            }
            Reply::Ok(())
        }
        Request::ListCache(path) => {
            let within = match path {
                Some(p) => Some(resolve(v, uid, mount, &p)?.volume),
                None => None,
            };
            Reply::Cache(list_cache(v, mount, within))
        }
        Request::MakeMount(m) => {
            let (dir, name) = parent_and_name(v, uid, mount, &m.path)?;
            let info: VolumeInfo = v
                .call_decode(
                    uid,
                    dir.volume,
                    op::GET_VOLUME_INFO,
                    &VolumeRef::Name(m.volume.clone()),
                )
                .map_err(|e| fail(&m.volume, e))?;
            let link = Op::Link(cml::Link {
                dir,
                name,
                fid: info.root,
            });
            crate::cml::mutate(v, uid, link).map_err(|e| fail(&m.path, e))?;
            Reply::Ok(())
        }
        Request::RemoveMount(path) => {
            let (dir, name) = parent_and_name(v, uid, mount, &path)?;
            let fid = resolve(v, uid, mount, &path)?;
            if fid.volume == dir.volume {
                return Err(format!("{path}: not a mount point"));
            }
            let seen = v.seen(fid);
            let remove = Op::Remove(cml::Remove {
                dir,
                name,
                fid,
                seen,
            });
            crate::cml::mutate(v, uid, remove).map_err(|e| fail(&path, e))?;
            Reply::Ok(())
        }
        Request::ListAcl(path) => {
            let fid = resolve(v, uid, mount, &path)?;
            Reply::Acl(v.list_acl(uid, fid).map_err(|e| fail(&path, e))?)
        }
        Request::SetAcl(s) => {
            let fid = resolve(v, uid, mount, &s.path)?;
            v.set_acl(uid, fid, &s).map_err(|e| fail(&s.path, e))?;
            Reply::Ok(())
        }
        Request::ListConflicts(()) => {
            let mut all = crate::repair::list(v, mount);
            all.extend(crate::diverged::list(v, uid, mount));
            Reply::Conflicts(all)
        }
        Request::ShowConflict(path) => {
            let rel = below(mount, &path)?;
            let fid = crate::repair::find(v, uid, rel).map_err(|e| fail(&path, e))?;
            let shown = match v.cache.conflicts.contains_key(&fid) {
                true => crate::repair::show(v, uid, mount, fid),
                false => crate::diverged::show(v, uid, mount, fid),
            };
            Reply::Conflict(shown.map_err(|e| fail(&path, e))?)
        }
        Request::Repair(r) => {
            let rel = below(mount, &r.path)?;
            let fid = crate::repair::find(v, uid, rel).map_err(|e| fail(&r.path, e))?;
            let done = match v.cache.conflicts.contains_key(&fid) {
                true => crate::repair::settle(v, uid, fid, r.resolution),
                false => crate::diverged::settle(v, uid, fid, r.resolution),
            };
            Reply::Repaired(done.map_err(|e| fail(&r.path, e))?)
        }
        Request::HoardAdd(e) => {
            let rel = below(mount, &e.path)?.to_path_buf();
            let path = e.path.clone();
            crate::hoard::add(v, uid, &rel, e).map_err(|err| fail(&path, err))?;
            Reply::Ok(())
        }
        Request::HoardDelete(path) => {
            let rel = below(mount, &path)?;
            crate::hoard::delete(v, rel).map_err(|e| fail(&path, e))?;
            Reply::Ok(())
        }
        Request::HoardClear(()) => {
            crate::hoard::clear(v, uid).map_err(|e| fail("clear", e))?;
            Reply::Ok(())
        }
        Request::HoardList(()) => Reply::Hoard(crate::hoard::list(v, mount)),
        Request::Events(()) | Request::HoardWalk(()) | Request::CheckpointMl(_) => {
            unreachable!("handled by the session")
        }
    })
}

/// Every cached object (of one volume), with the path it is known by.
fn list_cache(v: &Venus, mount: &Path, within: Option<u64>) -> Vec<CacheEntry> {
    let mut names: HashMap<Fid, (Fid, &str)> = HashMap::new();
    for (dir, entries) in &v.cache.dirs {
        for (name, (_, fid)) in entries {
            names.insert(*fid, (*dir, name));
        }
    }
    let path_of = |fid: Fid| {
        let mut parts = Vec::new();
        let mut at = fid;
        while at != v.root {
            let (dir, name) = names.get(&at)?;
            parts.push(*name);
            at = *dir;
            if parts.len() > 4096 {
                return None;
            }
        }
        parts.reverse();
        Some(mount.join(parts.join("/")).display().to_string())
    };
    let mut out: Vec<CacheEntry> = v
        .cache
        .objs
        .values()
        .filter(|o| within.is_none_or(|vol| o.fid().volume == vol))
        .filter(|o| o.rec.status.is_some())
        .map(|o| CacheEntry {
            fid: o.fid(),
            path: path_of(o.fid()).unwrap_or_default(),
            kind: match o.rec.kind {
                VnodeKind::File => "file",
                VnodeKind::Directory => "directory",
                VnodeKind::Symlink => "symlink",
            }
            .into(),
            length: o.rec.status.as_ref().map_or(0, |s| s.length),
            has_data: o.has_data(),
            valid: o.valid,
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The socket's path for a cache directory.
pub fn socket_path(cache: &Path) -> PathBuf {
    cache.join(control::SOCKET_NAME)
}

pub fn bind(cache: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(cache);
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path)?;
    // Any local user may hand Venus a token or ask about the cache.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
    Ok(l)
}

/// A call for `cfs`, made as `uid`.
impl Venus {
    pub fn call_decode<T: codec::Decode>(
        &mut self,
        uid: u32,
        vol: u64,
        opcode: u16,
        req: &impl codec::Encode,
    ) -> Result<T, Errno> {
        self.call_retry(uid, vol, opcode, codec::to_bytes(req), |_| Ok(None))
            .map(|(t, _)| t)
    }
}
