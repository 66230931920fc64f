//! Two hosts' worth of network, for partition tests: two network
//! namespaces joined by a veth pair, cut by bringing the link down. Each
//! side's servers listen on addresses of their own (`10.201.1.N` on side
//! A, `10.201.2.N` on side B, on the namespace's loopback), so they reach
//! each other within a side whatever the link does. Processes are put in
//! a side by `setns` before they start: only their network changes, so a
//! client's FUSE mount is seen by the test as any other.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// One side of the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// Two namespaces and the link between them; removed when dropped (drop
/// the processes inside first).
pub struct Partition {
    names: [String; 2],
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip runs");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The link's addresses, and each side's subnet of server addresses.
const LINK: [&str; 2] = ["10.200.0.1", "10.200.0.2"];
const SUBNET: [&str; 2] = ["10.201.1.0/24", "10.201.2.0/24"];

impl Partition {
    pub fn new() -> Partition {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let base = format!("coda{}x{n}", std::process::id());
        let names = [format!("{base}a"), format!("{base}b")];
        for ns in &names {
            // One left by a crashed run of the same pid: replaced.
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            ip(&["netns", "add", ns]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        let p = Partition { names };
        ip(&[
            "link",
            "add",
            "veth0",
            "netns",
            &p.names[0],
            "type",
            "veth",
            "peer",
            "name",
            "veth0",
            "netns",
            &p.names[1],
        ]);
        for (i, ns) in p.names.iter().enumerate() {
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/30", LINK[i]),
                "dev",
                "veth0",
            ]);
        }
        p.heal();
        p
    }

    fn ns(&self, side: Side) -> &str {
        &self.names[side as usize]
    }

    /// A new address on `side` (N from 1 to 254), for a server.
    pub fn host(&self, side: Side, n: u8) -> String {
        let addr = format!("10.201.{}.{n}", side as usize + 1);
        ip(&[
            "-n",
            self.ns(side),
            "addr",
            "add",
            &format!("{addr}/32"),
            "dev",
            "lo",
        ]);
        addr
    }

    /// Cuts the link: neither side reaches the other.
    pub fn cut(&self) {
        ip(&["-n", &self.names[0], "link", "set", "veth0", "down"]);
        ip(&["-n", &self.names[1], "link", "set", "veth0", "down"]);
    }

    /// Brings the link up, with the routes to the other side's servers
    /// (taking a link down drops the routes through it).
    pub fn heal(&self) {
        for ns in &self.names {
            ip(&["-n", ns, "link", "set", "veth0", "up"]);
        }
        for (i, ns) in self.names.iter().enumerate() {
            let other = 1 - i;
            ip(&[
                "-n",
                ns,
                "route",
                "replace",
                SUBNET[other],
                "via",
                LINK[other],
            ]);
        }
    }

    /// What puts a command in `side`'s namespace (see [`crate::Setup`]).
    pub fn side(&self, side: Side) -> crate::Setup {
        let ns = self.ns(side).to_string();
        std::sync::Arc::new(move |cmd: &mut Command| enter(cmd, &ns))
    }
}

/// Makes `cmd` start in network namespace `ns`.
fn enter(cmd: &mut Command, ns: &str) {
    let path = std::ffi::CString::new(format!("/run/netns/{ns}")).unwrap();
    // SAFETY: only async-signal-safe calls (open, setns, close) run
    // between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let fd = libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let r = libc::setns(fd, libc::CLONE_NEWNET);
            libc::close(fd);
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

impl Default for Partition {
    fn default() -> Partition {
        Partition::new()
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for ns in &self.names {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}
