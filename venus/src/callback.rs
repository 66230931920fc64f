//! Callback breaks: a server calls to say a promise is broken. Venus
//! answers at once (a slow answer would cost it every promise), then marks
//! the objects stale and tells the kernel to forget what it cached of
//! them — after releasing the core, since the kernel may be waiting on a
//! request that needs it.

use std::sync::{Arc, Mutex};

use coda_proto::callback::{self, Break};
use coda_proto::Errno;
use coda_rpc2::codec;

use crate::core::Venus;
use crate::link::Link;

/// What the kernel is told; `fuser::Notifier` in the mount.
pub trait Invalidate: Send + 'static {
    fn inode(&self, ino: u64);
    fn entry(&self, parent: u64, name: &str);
}

impl Invalidate for fuser::Notifier {
    fn inode(&self, ino: u64) {
        let _ = self.inval_inode(fuser::INodeNo(ino), 0, 0);
    }

    fn entry(&self, parent: u64, name: &str) {
        let _ = self.inval_entry(fuser::INodeNo(parent), std::ffi::OsStr::new(name));
    }
}

/// Serves the calls servers make of this client until the link closes.
pub fn serve(link: Arc<Link>, venus: Arc<Mutex<Venus>>, kernel: impl Invalidate) {
    while let Some(req) = link.next_request() {
        if req.subsystem != callback::SUBSYSTEM {
            link.answer(&req, Errno::UNKNOWN_CALL, bytes::Bytes::new());
            continue;
        }
        match req.opcode {
            callback::op::BREAK => {
                let Ok(b) = codec::from_bytes::<Break>(&req.body) else {
                    link.answer(&req, Errno::BAD_REQUEST, bytes::Bytes::new());
                    continue;
                };
                link.answer(&req, Errno::OK, bytes::Bytes::new());
                apply(&venus, &kernel, &b);
            }
            callback::op::PROBE => link.answer(&req, Errno::OK, bytes::Bytes::new()),
            _ => link.answer(&req, Errno::UNKNOWN_CALL, bytes::Bytes::new()),
        }
    }
}

fn apply(venus: &Mutex<Venus>, kernel: &impl Invalidate, b: &Break) {
    let lock = || venus.lock().unwrap_or_else(|p| p.into_inner());
    let (inos, dirs) = lock().broken(&b.fids, &b.volumes);
    for ino in inos {
        kernel.inode(ino);
    }
    for dir in dirs {
        let names = lock().refresh_dir(dir);
        for (parent, name) in names {
            kernel.entry(parent, &name);
        }
    }
}
