//! Server replication (issue 8), three real servers on 127.0.0.1-3 and a
//! real mount, in one run:
//! - updates: `--files` creates (default 1000), then as many 4 KiB stores,
//!   through the mount to a volume replicated on all three, beside the
//!   same to a volume on one server: rates and their ratio;
//! - resolution: one server is killed, the client makes `--updates`
//!   updates (default 10 000), the server comes back, and the time until
//!   its replica is identical to the others' (dumps, as tar, byte for
//!   byte) is the figure; beside it the time the client took to make them
//!   and the time to copy the whole volume with `volutil dump` and
//!   `volutil restore` (what rebuilding the replica from nothing costs).
//!
//! Beside the update rates, the CPU time each update costs the client side
//! (this process, which makes the system calls, and Venus) and the
//! servers, and the rate those costs allow when CPU time is all there is
//! (the machine's cores, all busy): the ceiling of the ratio.
//!
//! `cargo run --release -p coda-bench --bin replication-bench [-- --files N --updates N]`

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use coda_tests::trio::Trio;
use coda_tests::venus::Venus;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .map_or(default, |w| w[1].parse().expect("a number"))
}

/// `n` updates in the mix of a working directory: directories made, files
/// created and written (two updates each), then a half of them renamed and
/// a quarter removed; what is left over is files written again.
fn updates(root: &Path, n: u64) -> u64 {
    let dirs = (n / 500).max(1);
    let files = (n - dirs) * 4 / 11;
    let (moves, removes) = (files / 2, files / 4);
    let again = n - dirs - 2 * files - moves - removes;
    // 1 KiB, different in each file.
    let data = |i: u64| format!("{i:<1023}\n");
    for d in 0..dirs {
        fs::create_dir(root.join(format!("d{d}"))).unwrap();
    }
    let path = |i: u64| root.join(format!("d{}/f{i}", i % dirs));
    for i in 0..files {
        fs::write(path(i), data(i)).unwrap();
    }
    for i in 0..again {
        fs::write(path(files - 1 - i), b"again\n").unwrap();
    }
    for i in 0..moves {
        let to = root.join(format!("d{}/moved{i}", (i + 1) % dirs));
        fs::rename(path(i), to).unwrap();
    }
    for i in 0..removes {
        fs::remove_file(path(files - 1 - i)).unwrap();
    }
    dirs + 2 * files + again + moves + removes
}

/// CPU time (user and system) process `pid` has used so far.
fn cpu(pid: u32) -> Duration {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) start at
    // the third; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let ticks = fields.get(11).unwrap_or(&0) + fields.get(12).unwrap_or(&0);
    // SAFETY: sysconf reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64(ticks as f64 / hz)
}

/// CPU time used so far by the client side and by the servers.
struct Cpu {
    client: Vec<u32>,
    servers: Vec<u32>,
}

impl Cpu {
    fn now(&self) -> (Duration, Duration) {
        let sum = |pids: &[u32]| pids.iter().map(|&p| cpu(p)).sum();
        (sum(&self.client), sum(&self.servers))
    }
}

/// One kind of update: its rate, and the CPU time each cost.
struct Rate {
    per_sec: f64,
    client_us: f64,
    servers_us: f64,
}

impl Rate {
    fn measure(n: u64, cpu: &Cpu, mut each: impl FnMut(u64)) -> Rate {
        let (c0, s0) = cpu.now();
        let t = Instant::now();
        (0..n).for_each(&mut each);
        let elapsed = t.elapsed();
        let (c1, s1) = cpu.now();
        let us = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
        Rate {
            per_sec: n as f64 / elapsed.as_secs_f64(),
            client_us: us(c1 - c0),
            servers_us: us(s1 - s0),
        }
    }

    /// The rate the CPU time allows with every core busy.
    fn ceiling(&self) -> f64 {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        cores as f64 * 1e6 / (self.client_us + self.servers_us)
    }
}

/// Creates, then 4 KiB stores, in `dir`.
fn update_rates(dir: &Path, n: u64, cpu: &Cpu) -> (Rate, Rate) {
    fs::create_dir(dir).unwrap();
    let creates = Rate::measure(n, cpu, |i| {
        fs::File::create(dir.join(format!("c{i}"))).unwrap();
    });
    let data = vec![0x5au8; 4096];
    let stores = Rate::measure(n, cpu, |i| {
        fs::write(dir.join(format!("c{i}")), &data).unwrap();
    });
    (creates, stores)
}

fn report(what: &str, one: &Rate, three: &Rate) {
    println!(
        "  {what}/s 1 replica {:.0}, 3 replicas {:.0} (ratio {:.2}); CPU per update \
         client {:.0}/{:.0} us, servers {:.0}/{:.0} us (1/3 replicas); \
         CPU-bound ceiling of the ratio {:.2}",
        one.per_sec,
        three.per_sec,
        three.per_sec / one.per_sec,
        one.client_us,
        three.client_us,
        one.servers_us,
        three.servers_us,
        three.ceiling() / one.ceiling()
    );
}

fn main() {
    let n = arg("--updates", 10_000);
    let mut cell = Trio::start();
    cell.volutil(0, &["create", "rep", "--replicas", "a", "b", "c"]);
    cell.volutil(0, &["create", "one"]);
    let v = Venus::start(&cell.addrs[0]);
    v.clog_admin();
    let root = v.path("rep");
    v.cfs_ok("makemount", &[root.to_str().unwrap(), "rep"]);
    let one = v.path("one");
    v.cfs_ok("makemount", &[one.to_str().unwrap(), "one"]);

    let files = arg("--files", 1000);
    let cpu = Cpu {
        client: vec![std::process::id(), v.child.id()],
        servers: cell.pids(),
    };
    for round in 0..2 {
        let (c1, s1) = update_rates(&one.join(format!("r{round}")), files, &cpu);
        let (c3, s3) = update_rates(&root.join(format!("r{round}")), files, &cpu);
        println!("round {round}:");
        report("creates", &c1, &c3);
        report("4 KiB stores", &s1, &s3);
    }
    fs::write(root.join("hello"), "before\n").unwrap();
    // Every replica holds the same before one goes.
    let settled = Instant::now();
    while cell.replica(0, "rep") != cell.replica(1, "rep")
        || cell.replica(1, "rep") != cell.replica(2, "rep")
    {
        assert!(
            settled.elapsed() < Duration::from_secs(120),
            "never settled"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // b misses everything from here.
    cell.kill(1);
    let t = Instant::now();
    let made = updates(&root, n);
    let making = t.elapsed();

    // a's tree (tar holds names, modes, times and contents: what
    // resolution changes on a, vectors, it does not show).
    let want = cell.replica(0, "rep").expect("a dumps");
    let t = Instant::now();
    cell.start_server(1);
    // The client notices at once (no waiting for its probe).
    v.cfs_ok("checkservers", &[]);
    let mut polls = 0;
    let mut poll_cost = Duration::ZERO;
    let resolving = loop {
        let p = Instant::now();
        let b = cell.replica(1, "rep");
        poll_cost = poll_cost.max(p.elapsed());
        polls += 1;
        if b.as_ref() == Some(&want) {
            break t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(1800),
            "b's replica was not resolved in 30 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(cell.replica(0, "rep") == Some(want.clone()), "a changed");
    assert!(cell.replica(2, "rep") == Some(want), "c differs from a");

    // Rebuilding the replica from nothing instead: dump and restore.
    let dump = cell.dir.path().join("full.dump");
    let t = Instant::now();
    cell.volutil(0, &["dump", "rep", "-o", dump.to_str().unwrap()]);
    cell.volutil(1, &["restore", dump.to_str().unwrap(), "copy"]);
    let copying = t.elapsed();

    println!("updates missed by b: {made}");
    println!(
        "made by the client in {:.2}s ({:.0}/s)",
        making.as_secs_f64(),
        made as f64 / making.as_secs_f64()
    );
    println!(
        "resolved (b identical to a) {:.2}s after b restarted ({:.0} updates/s; \
         {polls} polls, a poll costs at most {:.2}s)",
        resolving.as_secs_f64(),
        made as f64 / resolving.as_secs_f64(),
        poll_cost.as_secs_f64()
    );
    println!(
        "full copy (volutil dump + restore) {:.2}s",
        copying.as_secs_f64()
    );
    println!(
        "ratios: resolution / making {:.2}, resolution / full copy {:.2}",
        resolving.as_secs_f64() / making.as_secs_f64(),
        resolving.as_secs_f64() / copying.as_secs_f64()
    );
}
