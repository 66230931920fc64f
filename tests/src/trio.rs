//! A cell of three real `codasrv` on 127.0.0.1, .2 and .3 (servers a, b
//! and c, a the SCM), each restartable at its address.

use std::path::PathBuf;
use std::process::Output;

use crate::{free_port, ok, replica_tar, run, Server, ADMIN_PASSWORD};

pub const NAMES: [&str; 3] = ["a", "b", "c"];

pub struct Trio {
    // Dropped in order: the servers (killed) before their directories.
    servers: Vec<Option<Server>>,
    pub addrs: Vec<String>,
    peers: String,
    pub dir: tempfile::TempDir,
}

impl Trio {
    pub fn start() -> Trio {
        let dir = tempfile::tempdir().unwrap();
        let addrs: Vec<String> = (1..=3)
            .map(|i| {
                let ip = format!("127.0.0.{i}");
                format!("{ip}:{}", free_port(&ip))
            })
            .collect();
        let peers = NAMES
            .iter()
            .zip(&addrs)
            .map(|(n, a)| format!("{n}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cell = Trio {
            dir,
            addrs,
            peers,
            servers: vec![None, None, None],
        };
        for i in 0..3 {
            cell.start_server(i);
        }
        cell
    }

    /// Server `i`'s root directory.
    pub fn root(&self, i: usize) -> PathBuf {
        self.dir.path().join(NAMES[i])
    }

    pub fn start_server(&mut self, i: usize) {
        let s = Server::start_peer(&self.root(i), &self.addrs[i], 1, NAMES[i], &self.peers);
        self.servers[i] = Some(s);
    }

    /// The process ids of the servers running.
    pub fn pids(&self) -> Vec<u32> {
        self.servers
            .iter()
            .flatten()
            .map(|s| s.child.id())
            .collect()
    }

    /// SIGKILL.
    pub fn kill(&mut self, i: usize) {
        drop(self.servers[i].take());
    }

    /// `volutil` at server `at`, as the administrator; its output.
    pub fn volutil(&self, at: usize, args: &[&str]) -> String {
        self.as_admin(at, args, |all| ok("volutil", all))
    }

    /// `volutil` at server `at`, as the administrator, which may fail.
    pub fn volutil_run(&self, at: usize, args: &[&str]) -> Output {
        self.as_admin(at, args, |all| run("volutil", all, ""))
    }

    fn as_admin<T>(&self, at: usize, args: &[&str], f: impl FnOnce(&[&str]) -> T) -> T {
        let pw = self.dir.path().join("admin.password");
        std::fs::write(&pw, format!("{ADMIN_PASSWORD}\n")).unwrap();
        let mut all = vec!["--server", &self.addrs[at], "--password-file"];
        all.push(pw.to_str().unwrap());
        all.extend_from_slice(args);
        f(&all)
    }

    /// Server `i`'s replica of `vol` as a tar archive (None if it cannot
    /// be dumped now).
    pub fn replica(&self, i: usize, vol: &str) -> Option<Vec<u8>> {
        replica_tar(&self.addrs[i], vol, self.dir.path(), None)
    }

    /// Whether every replica of `vol` holds the same tree.
    pub fn converged(&self, vol: &str) -> bool {
        let all: Vec<Option<Vec<u8>>> = (0..3).map(|i| self.replica(i, vol)).collect();
        all.iter().all(|r| r.is_some()) && all.windows(2).all(|w| w[0] == w[1])
    }
}
