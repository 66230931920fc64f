//! `cfs checkpointml`: a volume's CML and the data its stores refer to, as
//! a tar archive streamed to the tool (which writes it where its user
//! may): `cml.txt` lists the records, `cml.bin` holds them encoded (as the
//! cache keeps them), `data/FID.STOREID` each store's contents.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use coda_proto::cml::Op;
use coda_proto::{Errno, VolumeId};
use coda_rpc2::codec;

use crate::cml::LogEntry;
use crate::core::Venus;

/// Writes the archive of `vol`'s log into `out`.
pub fn write(venus: &Mutex<Venus>, vol: VolumeId, out: impl Write) -> std::io::Result<u64> {
    // What to archive, taken under the lock; the bytes are copied without it.
    let (entries, files): (Vec<LogEntry>, Vec<(String, PathBuf)>) = {
        let v = venus.lock().unwrap_or_else(|p| p.into_inner());
        let entries: Vec<LogEntry> = v
            .cache
            .cml
            .values()
            .map(|(_, e)| e.clone())
            .filter(|e| e.record.op.volume() == vol)
            .collect();
        let files = entries
            .iter()
            .filter_map(|e| match &e.record.op {
                Op::Store(s) => {
                    let o = v.cache.objs.get(&s.fid)?;
                    Some((
                        format!("data/{}.{}", s.fid, e.record.store_id),
                        v.cache.containers.path(o.rec.container),
                    ))
                }
                _ => None,
            })
            .collect();
        (entries, files)
    };
    let mut text = String::new();
    for e in &entries {
        text.push_str(&format!(
            "{} uid {} {} {}\n",
            e.seq,
            e.uid,
            e.record.store_id,
            crate::repair::describe(&e.record.op)
        ));
    }
    let mut tar = tar::Builder::new(out);
    let add = |tar: &mut tar::Builder<_>, name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o600);
        h.set_mtime(coda_proto::Timestamp::now().secs.max(0) as u64);
        h.set_cksum();
        tar.append_data(&mut h, name, bytes)
    };
    add(&mut tar, "cml.txt", text.as_bytes())?;
    add(&mut tar, "cml.bin", &codec::to_bytes(&entries))?;
    for (name, path) in files {
        tar.append_path_with_name(&path, &name)?;
    }
    tar.into_inner()?.flush()?;
    Ok(entries.len() as u64)
}

/// The volume a path below the mount is in.
pub fn volume_of(v: &mut Venus, uid: u32, rel: &std::path::Path) -> Result<VolumeId, Errno> {
    Ok(v.resolve(uid, rel)?.volume)
}
