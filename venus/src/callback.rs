//! Callback breaks: a server calls to say a promise is broken, and the
//! update that broke it returns only once the break is answered. Before
//! answering, Venus tells the kernel to forget the objects' attributes and
//! pages and queues the break for the core, which applies it before it
//! trusts any status again; so once the other client's update returns,
//! nothing here serves the old version. The answer never waits for the
//! core (whose holder may be waiting on the very update that broke it).
//! Broken directories are refetched afterwards and their changed names
//! forgotten by the kernel, outside the core's lock, by a thread of their
//! own: the next break must be answered however long that takes.

use std::sync::{Arc, Mutex};

use coda_proto::callback::{self, Break};
use coda_proto::Errno;
use coda_rpc2::codec;

use crate::cache::KernelInos;
use crate::core::{PendingBreaks, Venus};
use crate::link::Link;

/// What the kernel is told; `fuser::Notifier` in the mount.
pub trait Invalidate: Clone + Send + 'static {
    /// Attributes only: takes no page locks, so it cannot wait on a
    /// request that waits on this client.
    fn attributes(&self, ino: u64);
    fn inode(&self, ino: u64);
    fn entry(&self, parent: u64, name: &str);
}

impl Invalidate for fuser::Notifier {
    fn attributes(&self, ino: u64) {
        let _ = self.inval_inode(fuser::INodeNo(ino), -1, 0);
    }

    fn inode(&self, ino: u64) {
        let _ = self.inval_inode(fuser::INodeNo(ino), 0, 0);
    }

    fn entry(&self, parent: u64, name: &str) {
        let _ = self.inval_entry(fuser::INodeNo(parent), std::ffi::OsStr::new(name));
    }
}

/// Serves the calls servers make of this client until the link closes.
pub fn serve(link: Arc<Link>, venus: Arc<Mutex<Venus>>, kernel: impl Invalidate) {
    let (pending, inos): (PendingBreaks, KernelInos) = {
        let v = venus.lock().unwrap_or_else(|p| p.into_inner());
        (v.breaks.clone(), v.cache.kernel_inos.clone())
    };
    let (refresh_tx, refresh_rx) = std::sync::mpsc::channel::<()>();
    venus.lock().unwrap_or_else(|p| p.into_inner()).kick = Some(refresh_tx.clone());
    {
        let kernel = kernel.clone();
        std::thread::spawn(move || {
            while refresh_rx.recv().is_ok() {
                while refresh_rx.try_recv().is_ok() {}
                refresh(&venus, &kernel);
            }
        });
    }
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
                {
                    let inos = inos.lock().unwrap_or_else(|p| p.into_inner());
                    for ino in b.fids.iter().filter_map(|f| inos.get(f)) {
                        kernel.attributes(*ino);
                    }
                }
                pending.lock().unwrap_or_else(|p| p.into_inner()).push(b);
                link.answer(&req, Errno::OK, bytes::Bytes::new());
                let _ = refresh_tx.send(());
            }
            callback::op::PROBE => link.answer(&req, Errno::OK, bytes::Bytes::new()),
            _ => link.answer(&req, Errno::UNKNOWN_CALL, bytes::Bytes::new()),
        }
    }
}

/// Applies the breaks queued, and refetches the directories they broke.
fn refresh(venus: &Mutex<Venus>, kernel: &impl Invalidate) {
    let lock = || venus.lock().unwrap_or_else(|p| p.into_inner());
    let (inos, dirs) = lock().apply_breaks();
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
