//! `venus`: mounts a Coda cell's name space (INTERFACE.md).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use coda_venus::cache::Cache;
use coda_venus::core::Venus;
use coda_venus::fuse::Fuse;
use coda_venus::link::Link;
use coda_venus::{callback, control};

/// Mounts the cell's name space, backed by a persistent whole-file cache.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The servers, ADDR:PORT[,ADDR:PORT...].
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1:2432")]
    server: Vec<SocketAddr>,
    /// The cache directory (resumed if an earlier run left one).
    #[arg(long)]
    cache: PathBuf,
    /// Where to mount (conventionally /coda).
    #[arg(long)]
    mount: PathBuf,
    /// The cache limit: bytes, or with a K, M or G suffix.
    #[arg(long, default_value = "4G", value_parser = parse_size)]
    cache_size: u64,
    /// Seconds a server may stay silent before its volumes are taken for
    /// disconnected.
    #[arg(long, default_value_t = 15)]
    timeout: u64,
    /// Settle conflicts under a path below the mount (or `volume:NAME`)
    /// without a person: PATH=server-wins|client-wins|keep-both. Repeatable.
    #[arg(long = "conflict-policy")]
    conflict_policy: Vec<coda_venus::conflict::Policy>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.trim().to_ascii_uppercase() {
        t if t.ends_with('K') => (t[..t.len() - 1].to_string(), 1u64 << 10),
        t if t.ends_with('M') => (t[..t.len() - 1].to_string(), 1 << 20),
        t if t.ends_with('G') => (t[..t.len() - 1].to_string(), 1 << 30),
        t => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("not a size: {s:?} (bytes, or a number with K, M or G)"))
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("venus: {what}: {e}");
    std::process::exit(1)
}

/// Holds the cache directory for this process alone.
fn lock_cache(dir: &std::path::Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("venus.lock"))
        .unwrap_or_else(|e| fail("cache lock", e));
    // SAFETY: flock on an fd this function owns.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        fail(
            &dir.display().to_string(),
            "another venus is using this cache",
        );
    }
    f
}

fn main() {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VENUS_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    std::fs::create_dir_all(&args.cache).unwrap_or_else(|e| fail("cache", e));
    let cache_dir = args
        .cache
        .canonicalize()
        .unwrap_or_else(|e| fail("cache", e));
    let _lock = lock_cache(&cache_dir);
    std::fs::create_dir_all(&args.mount).unwrap_or_else(|e| fail("mount point", e));
    let mount = args
        .mount
        .canonicalize()
        .unwrap_or_else(|e| fail("mount point", e));

    let cache = Cache::open(&cache_dir, 1 << 30).unwrap_or_else(|e| fail("cache", e));
    let link = Arc::new(
        Link::new(Duration::from_secs(args.timeout.max(1))).unwrap_or_else(|e| fail("network", e)),
    );
    let venus = Venus::new(cache, link.clone(), args.server.clone(), args.cache_size)
        .unwrap_or_else(|e| fail(&format!("server {}", args.server[0]), e));
    let mut venus = venus;
    venus.policies = args
        .conflict_policy
        .iter()
        .map(|p| {
            // A path may be given whole, mount point and all.
            let whole = Path::new("/").join(&p.scope);
            let scope = match whole.strip_prefix(&mount) {
                Ok(rel) => rel.to_string_lossy().into_owned(),
                Err(_) => p.scope.clone(),
            };
            coda_venus::conflict::Policy { scope, ..p.clone() }
        })
        .collect();
    let venus = Arc::new(Mutex::new(venus));

    let listener = control::bind(&cache_dir).unwrap_or_else(|e| fail("control socket", e));
    let fs = Fuse::new(venus.clone(), &control::socket_path(&cache_dir));
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName("coda".into()),
        fuser::MountOption::Subtype("venus".into()),
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
    ];
    // Every local user sees the one name space; rights are Coda's ACLs.
    config.acl = fuser::SessionACL::All;
    config.n_threads = Some(4);
    let session = fuser::Session::new(fs, &mount, &config)
        .unwrap_or_else(|e| fail(&format!("mount {}", mount.display()), e));
    let notifier = session.notifier();
    {
        let (link, venus) = (link.clone(), venus.clone());
        std::thread::spawn(move || callback::serve(link, venus, notifier));
    }
    {
        let (venus, mount) = (venus.clone(), mount.clone());
        std::thread::spawn(move || control::serve(listener, venus, mount));
    }
    {
        let venus = venus.clone();
        std::thread::spawn(move || {
            let mut last_probe = std::time::Instant::now();
            let mut last_walk = std::time::Instant::now();
            let lock = || venus.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                std::thread::sleep(Duration::from_secs(1));
                if last_probe.elapsed() >= coda_venus::reint::PROBE_INTERVAL {
                    // Every server, not only those that went away: one that
                    // restarted took its promises with it, and says so only
                    // when asked. Probed without the core held.
                    last_probe = std::time::Instant::now();
                    let (targets, link, forced) = {
                        let v = lock();
                        (v.probe_targets(), v.transport(), v.forced)
                    };
                    if !forced {
                        // At once: each silent one costs a whole timeout.
                        for (addr, (up, restarted)) in coda_venus::core::probe_each(&link, &targets)
                        {
                            lock().probed(addr, up, restarted);
                        }
                    }
                }
                {
                    let mut v = lock();
                    coda_venus::reint::background(&mut v);
                    if let Err(e) = v.sync() {
                        tracing::error!("cache flush: {e}");
                    }
                }
                if last_walk.elapsed() >= coda_venus::hoard::WALK_INTERVAL {
                    last_walk = std::time::Instant::now();
                    coda_venus::hoard::walk(&venus, |_| {});
                }
            }
        });
    }
    let bg = session.spawn().unwrap_or_else(|e| fail("FUSE session", e));
    println!("venus ready on {}", mount.display());

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .unwrap_or_else(|e| fail("signals", e));
    let stop = signals.forever().next();
    tracing::info!("signal {stop:?}: unmounting");
    if let Err(e) = bg.umount_and_join() {
        // Busy (a program holds a file open): detach it instead.
        tracing::warn!("unmount: {e}; detaching");
        let path = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()).expect("a path");
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
    }
    let flushed = venus.lock().unwrap_or_else(|p| p.into_inner()).sync();
    if let Err(e) = flushed {
        fail("cache flush", e);
    }
}
