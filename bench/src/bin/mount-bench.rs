//! The macro benchmark: the same workloads on a local directory and through
//! a real Venus mount of a real codasrv, in one run, reported as ratios
//! (these machines are shared and noisy: only same-run ratios mean much).
//!
//! `cargo run --release -p coda-bench --bin mount-bench [-- --size-mib N --files N]`

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use coda_tests::venus::Venus;
use coda_tests::Server;

struct Opts {
    size_mib: u64,
    files: usize,
}

fn opts() -> Opts {
    let mut o = Opts {
        size_mib: 1024,
        files: 10_000,
    };
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        match w[0].as_str() {
            "--size-mib" => o.size_mib = w[1].parse().expect("--size-mib N"),
            "--files" => o.files = w[1].parse().expect("--files N"),
            _ => {}
        }
    }
    o
}

fn write_big(path: &Path, mib: u64) -> Duration {
    let t = Instant::now();
    let mut f = File::create(path).unwrap();
    let block = vec![0x5au8; 1 << 20];
    for i in 0..mib {
        let mut b = block.clone();
        b[..8].copy_from_slice(&i.to_le_bytes());
        f.write_all(&b).unwrap();
    }
    drop(f);
    t.elapsed()
}

fn drop_page_cache(path: &Path) {
    // Only this file's pages: the rest of the machine keeps its cache.
    if let Ok(f) = File::open(path) {
        use std::os::fd::AsRawFd;
        // SAFETY: an open fd; the advice only drops clean cached pages.
        unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }
}

fn read_seq(path: &Path) -> Duration {
    let t = Instant::now();
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    assert!(total > 0);
    t.elapsed()
}

fn read_random(path: &Path, reads: u64) -> Duration {
    let f = File::open(path).unwrap();
    let blocks = f.metadata().unwrap().len() / 4096;
    let mut buf = vec![0u8; 4096];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let t = Instant::now();
    for _ in 0..reads {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.read_exact_at(&mut buf, (x % blocks) * 4096).unwrap();
    }
    t.elapsed()
}

fn small_files(dir: &Path, n: usize) -> Duration {
    fs::create_dir_all(dir).unwrap();
    let t = Instant::now();
    for i in 0..n {
        fs::write(dir.join(format!("f{i:05}")), format!("small file {i}\n")).unwrap();
    }
    t.elapsed()
}

fn shell(dir: &Path, script: &str) -> Duration {
    let t = Instant::now();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn row(what: &str, local: Duration, mount: Duration, bytes: Option<u64>) {
    let rate = |d: Duration| match bytes {
        Some(b) => format!("{:>9.1} MB/s", b as f64 / 1e6 / d.as_secs_f64()),
        None => format!("{:>9.3} s   ", d.as_secs_f64()),
    };
    println!(
        "{what:<34} local {}  mount {}  mount/local speed {:.2}",
        rate(local),
        rate(mount),
        local.as_secs_f64() / mount.as_secs_f64()
    );
}

fn main() {
    let o = opts();
    let server = Server::start(1);
    let v = Venus::start_with_args(
        &server.addr,
        &tempfile::tempdir().unwrap().keep().join("cache"),
        &tempfile::tempdir().unwrap().keep().join("mnt"),
        &["--cache-size", "8G"],
    );
    v.clog_admin();
    let local = tempfile::tempdir().unwrap();
    let (l, m) = (local.path().to_path_buf(), v.mount.clone());
    let bytes = o.size_mib << 20;
    println!(
        "mount-bench: {} MiB file, {} small files",
        o.size_mib, o.files
    );

    let (lw, mw) = (
        write_big(&l.join("big"), o.size_mib),
        write_big(&m.join("big"), o.size_mib),
    );
    row("write big file (store on close)", lw, mw, Some(bytes));

    // Warm: both in the page cache (the mount's is its container's).
    read_seq(&l.join("big"));
    read_seq(&m.join("big"));
    row(
        "sequential read, cached",
        read_seq(&l.join("big")),
        read_seq(&m.join("big")),
        Some(bytes),
    );
    let reads = 100_000;
    row(
        "4 KiB random reads, cached",
        read_random(&l.join("big"), reads),
        read_random(&m.join("big"), reads),
        Some(reads * 4096),
    );

    // Cold for the mount: flushed from the cache, fetched whole on open.
    let out = v.cfs("flushobject", &[m.join("big").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop_page_cache(&l.join("big"));
    row(
        "cold read (mount: fetch by SFTP)",
        read_seq(&l.join("big")),
        read_seq(&m.join("big")),
        Some(bytes),
    );

    row(
        &format!("create {} small files", o.files),
        small_files(&l.join("small"), o.files),
        small_files(&m.join("small"), o.files),
        None,
    );

    // A real tree: this repository's sources, unpacked, committed, built.
    let tar = l.join("src.tar");
    let status = std::process::Command::new("git")
        .args([
            "-C",
            concat!(env!("CARGO_MANIFEST_DIR"), "/.."),
            "archive",
            "-o",
        ])
        .arg(&tar)
        .args(["HEAD", "rpc2", "proto"])
        .status()
        .unwrap();
    assert!(status.success());
    let tar = tar.display();
    let untar = format!("mkdir -p tree && tar xf {tar} -C tree");
    row(
        "untar a source tree",
        shell(&l, &untar),
        shell(&m, &untar),
        None,
    );
    // Files belong to the Coda user (admin), not the local uid running git.
    let git = "cd tree && git init -q && git -c safe.directory='*' add -A \
        && git -c safe.directory='*' -c user.email=b@b -c user.name=b commit -qm import";
    row(
        "git init, add, commit",
        shell(&l, git),
        shell(&m, git),
        None,
    );
    let grep = "grep -r -c fn tree > /dev/null";
    row(
        "grep -r over the tree",
        shell(&l, grep),
        shell(&m, grep),
        None,
    );
    drop(v);
}
