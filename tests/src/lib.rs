//! The end-to-end harness: real `codasrv` processes in scratch roots, and
//! the tools run exactly as INTERFACE.md writes them, each with a timeout.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod netns;
pub mod trio;
pub mod venus;

/// Prepares a command before it starts (e.g. puts it in a network
/// namespace, [`netns::Partition::enter`]).
pub type Setup = std::sync::Arc<dyn Fn(&mut Command) + Send + Sync>;

/// A UDP port free on `ip` now, for a server that may be killed and
/// started again at the same address. It is taken below the kernel's
/// ephemeral range: a socket bound to port 0 meanwhile (any client's) can
/// then never hold it when the server comes back. (Where that range
/// leaves too little room below it, any free port.)
pub fn free_port(ip: &str) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let (low, span) = (10_000, ephemeral.saturating_sub(10_000));
    // Test processes running at once start at different places.
    let base = std::process::id().wrapping_mul(7919);
    for _ in 0..span.min(1000) {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (low + base.wrapping_add(n) % span) as u16;
        if std::net::UdpSocket::bind((ip, port)).is_ok() {
            return port;
        }
    }
    let s = std::net::UdpSocket::bind((ip, 0)).expect("bind");
    s.local_addr().unwrap().port()
}

/// A workspace binary, as the sources are now: `cargo test` builds only
/// the bins of packages with integration tests, so the first call in each
/// test process brings them all up to date (a no-op when they are).
pub fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().expect("test executable");
    // target/release/deps/<test> or target/release/<bin> -> target/release/<name>
    let mut dir = exe.parent().expect("target dir");
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir = dir.parent().expect("target dir");
    }
    let path = dir.join(name);
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let status = Command::new(cargo)
            .args(["build", "--release", "--workspace", "--bins"])
            .args(["--manifest-path", manifest])
            .status();
        match status {
            Ok(s) => assert!(s.success(), "building the workspace's binaries failed"),
            // No cargo here: the binaries as they were built.
            Err(e) => assert!(path.exists(), "{name} is not built, and cargo: {e}"),
        }
    });
    path
}

/// A running `codasrv` in a scratch root; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    pub root: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

pub const ADMIN_PASSWORD: &str = "admin-pw";

impl Server {
    /// A new cell with `cores` shards.
    pub fn start(cores: u32) -> Server {
        let dir = tempfile::tempdir().expect("scratch dir");
        let root = dir.path().join("vice");
        let mut s = Server::start_in(&root, cores);
        s._dir = Some(dir);
        s
    }

    pub fn start_in(root: &Path, cores: u32) -> Server {
        // A port a restart finds free (see `free_port`).
        let listen = format!("127.0.0.1:{}", free_port("127.0.0.1"));
        Server::start_at(root, &listen, cores)
    }

    /// A server listening at `listen` (a restart keeps its address).
    pub fn start_at(root: &Path, listen: &str, cores: u32) -> Server {
        Server::start_with(root, listen, cores, &[])
    }

    /// Server `name` of a cell of several (`peers`: `NAME=ADDR,...`).
    pub fn start_peer(root: &Path, listen: &str, cores: u32, name: &str, peers: &str) -> Server {
        Server::start_with(root, listen, cores, &["--name", name, "--peers", peers])
    }

    /// As [`Server::start_peer`], the command prepared by `setup`.
    pub fn start_peer_set_up(
        root: &Path,
        listen: &str,
        name: &str,
        peers: &str,
        setup: &Setup,
    ) -> Server {
        let extra = ["--name", name, "--peers", peers];
        Server::launch(root, listen, 1, &extra, Some(setup))
    }

    fn start_with(root: &Path, listen: &str, cores: u32, extra: &[&str]) -> Server {
        Server::launch(root, listen, cores, extra, None)
    }

    fn launch(
        root: &Path,
        listen: &str,
        cores: u32,
        extra: &[&str],
        setup: Option<&Setup>,
    ) -> Server {
        let mut cmd = Command::new(bin("codasrv"));
        if let Some(f) = setup {
            f(&mut cmd);
        }
        let mut child = cmd
            .args(["--root", root.to_str().unwrap(), "--listen", listen])
            .args(["--cores", &cores.to_string()])
            .args(extra)
            .env("CODA_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .stdout(Stdio::piped())
            .spawn()
            .expect("codasrv starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("codasrv never said ready");
        let addr = line
            .trim()
            .strip_prefix("codasrv ready on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        Server {
            child,
            addr,
            root: root.to_path_buf(),
            _dir: None,
        }
    }

    /// A file holding the admin password, for `--password-file`.
    pub fn password_file(&self) -> PathBuf {
        let p = self.root.join("test-admin.password");
        std::fs::write(&p, format!("{ADMIN_PASSWORD}\n")).unwrap();
        p
    }

    /// SIGTERM, then waits (at most 30 s) for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let began = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                began.elapsed() < Duration::from_secs(30),
                "codasrv ignored SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), for file contents.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a, 64 bits: enough to tell two buffers apart in a message.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Runs a tool to completion (at most 60 s), feeding `stdin`.
pub fn run(tool: &str, args: &[&str], stdin: &str) -> Output {
    run_set_up(tool, args, stdin, None)
}

/// As [`run`], the command prepared by `setup`.
pub fn run_set_up(tool: &str, args: &[&str], stdin: &str, setup: Option<&Setup>) -> Output {
    let mut cmd = Command::new(bin(tool));
    if let Some(f) = setup {
        f(&mut cmd);
    }
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{tool}: {e}"));
    {
        use std::io::Write;
        let mut input = child.stdin.take().unwrap();
        let _ = input.write_all(stdin.as_bytes());
    }
    let began = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if began.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{tool} {args:?} hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// The server at `addr`'s copy of volume `vol` as a tar archive (its dump
/// through `codadump2tar`), made in `scratch` as the administrator; None if
/// it cannot be dumped now.
pub fn replica_tar(
    addr: &str,
    vol: &str,
    scratch: &Path,
    setup: Option<&Setup>,
) -> Option<Vec<u8>> {
    let tag = addr.replace([':', '.'], "-");
    let dump = scratch.join(format!("dump-{tag}"));
    let pw = scratch.join("admin.password");
    std::fs::write(&pw, format!("{ADMIN_PASSWORD}\n")).ok()?;
    let args = [
        "--server",
        addr,
        "--password-file",
        pw.to_str()?,
        "dump",
        vol,
        "-o",
        dump.to_str()?,
    ];
    if !run_set_up("volutil", &args, "", setup).status.success() {
        return None;
    }
    let tar = Command::new(bin("codadump2tar"))
        .args(["-i", dump.to_str()?])
        .output()
        .ok()?;
    tar.status.success().then_some(tar.stdout)
}

/// Runs a tool that must succeed; its stdout.
pub fn ok(tool: &str, args: &[&str]) -> String {
    let out = run(tool, args, "");
    assert!(
        out.status.success(),
        "{tool} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
