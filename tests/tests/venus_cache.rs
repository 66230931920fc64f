//! The client cache across restarts, and a real workload, on a real `venus`
//! over a real `codasrv`:
//! - a Venus restarted on its cache directory (cleanly, or after SIGKILL)
//!   serves what it had, with the right bytes; after a clean stop it fetches
//!   nothing again (the server's own FETCH counter says so);
//! - a `codasrv` restarted on its root and port under a mounted client: the
//!   same mount goes on working, and a new client sees everything;
//! - a source tree nobody here wrote, unpacked, committed with git and built
//!   with cargo inside the mount, reads back identically on a second client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use coda_rpc2::endpoint::Auth;
use coda_tests::venus::{eventually, fsx, is_mounted, sh_in, Venus};
use coda_tests::{checksum, pattern, Server};

/// The server's call counters by opcode, asked anonymously (one shard).
fn server_calls(addr: &str) -> BTreeMap<u16, u64> {
    let addr: SocketAddr = addr.parse().expect("server address");
    let ct = coda_tools::client().expect("rpc2 client");
    let conn = coda_tools::connect(&ct, addr, Auth::Anonymous).expect("connect to codasrv");
    let stats: coda_proto::vice::Statistics = coda_tools::call(
        &ct,
        conn,
        coda_proto::vice::SUBSYSTEM,
        coda_proto::vice::op::GET_STATISTICS,
        &(),
    )
    .expect("GET_STATISTICS");
    assert_eq!(stats.shards, 1, "the counters are per shard");
    stats.calls_by_opcode.into_iter().collect()
}

fn fetches(addr: &str) -> u64 {
    server_calls(addr)
        .get(&coda_proto::vice::op::FETCH)
        .copied()
        .unwrap_or(0)
}

/// What changed between two counter snapshots (opcode -> calls).
fn delta(before: &BTreeMap<u16, u64>, after: &BTreeMap<u16, u64>) -> BTreeMap<u16, u64> {
    after
        .iter()
        .filter_map(|(op, n)| {
            let d = n - before.get(op).copied().unwrap_or(0);
            (d > 0).then_some((*op, d))
        })
        .collect()
}

/// The files of test 1: (relative path, contents); sizes around block and
/// page edges, several of 1 MiB and more, in the top directory and below.
fn corpus() -> Vec<(String, Vec<u8>)> {
    const MIB: usize = 1 << 20;
    let sizes = [
        0,
        1,
        17,
        511,
        4095,
        4096,
        4097,
        10_000,
        65_535,
        65_536,
        65_537,
        200_000,
        MIB - 1,
        MIB,
        MIB,
        MIB + 1,
        MIB + 4096,
        2 * MIB + 123,
        3 * MIB,
        12_345,
        777,
        3,
    ];
    sizes
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            let dir = match i % 3 {
                0 => "",
                1 => "a/",
                _ => "a/b/",
            };
            (format!("{dir}f{i:02}-{len}"), pattern(len, 1000 + i as u64))
        })
        .collect()
}

fn write_all(v: &Venus, files: &[(String, Vec<u8>)]) {
    fsx::create_dir_all(v.path("a/b")).unwrap();
    for (rel, data) in files {
        fsx::write(v.path(rel), data).unwrap_or_else(|e| panic!("write {rel}: {e}"));
    }
}

/// Reads every file through `v` and compares it byte for byte.
fn read_all_and_compare(v: &Venus, files: &[(String, Vec<u8>)], when: &str) {
    for (rel, want) in files {
        let got = fsx::read(v.path(rel)).unwrap_or_else(|e| panic!("{when}: read {rel}: {e}"));
        assert!(
            got == *want,
            "{when}: {rel}: {} bytes (fnv {:x}), want {} bytes (fnv {:x})",
            got.len(),
            checksum(&got),
            want.len(),
            checksum(want)
        );
    }
}

/// A cache and a mount point kept by the test, so a later venus resumes.
struct Dirs {
    _tmp: tempfile::TempDir,
    cache: PathBuf,
    mount: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::Builder::new()
        .prefix("venus-cache-test.")
        .tempdir()
        .unwrap();
    let cache = tmp.path().join("cache");
    let mount = tmp.path().join("mnt");
    std::fs::create_dir(&cache).unwrap();
    std::fs::create_dir(&mount).unwrap();
    Dirs {
        _tmp: tmp,
        cache,
        mount,
    }
}

#[test]
fn a_restarted_venus_fetches_nothing_it_had() {
    let began = Instant::now();
    let srv = Server::start(1);
    let d = dirs();
    let files = corpus();
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    assert!(
        files.len() >= 20 && total > 8 << 20,
        "{} files, {total} bytes",
        files.len()
    );

    let v = Venus::start_with(&srv.addr, &d.cache, &d.mount);
    v.clog_admin();
    write_all(&v, &files);
    read_all_and_compare(&v, &files, "first reading");

    // A clean stop and a start on the same cache.
    let before = server_calls(&srv.addr);
    let status = v.stop();
    assert!(status.success(), "venus exited with {status} on SIGTERM");
    assert!(!is_mounted(&d.mount), "venus exited but left the mount");
    let v = Venus::start_with(&srv.addr, &d.cache, &d.mount);
    v.clog_admin();
    read_all_and_compare(&v, &files, "after a clean restart");
    // Twice: the second reading is served like the first.
    read_all_and_compare(&v, &files, "after a clean restart, again");
    let after = server_calls(&srv.addr);
    let changed = delta(&before, &after);
    eprintln!("calls across the clean restart and two readings (opcode: count): {changed:?}");
    let fetched = changed
        .get(&coda_proto::vice::op::FETCH)
        .copied()
        .unwrap_or(0);
    assert_eq!(
        fetched,
        0,
        "a venus restarted on its cache fetched {fetched} times (calls by opcode: {changed:?})\n{}",
        v.log_tail()
    );

    // Files written and closed just before a crash: rewrite a few, add one.
    let mut files = files;
    for (i, (rel, data)) in files.iter_mut().enumerate().filter(|(i, _)| i % 4 == 1) {
        *data = pattern(data.len() + 3 * i, 5000 + i as u64);
        fsx::write(v.path(&*rel), &*data).unwrap();
    }
    let late = ("a/b/written-last".to_string(), pattern(300_000, 77));
    fsx::write(v.path(&late.0), &late.1).unwrap();
    files.push(late);
    let f_before_kill = fetches(&srv.addr);
    v.kill();
    assert!(!is_mounted(&d.mount), "the killed venus left the mount");
    let v = Venus::start_with(&srv.addr, &d.cache, &d.mount);
    v.clog_admin();
    read_all_and_compare(&v, &files, "after SIGKILL and a restart");
    read_all_and_compare(&v, &files, "after SIGKILL and a restart, again");
    eprintln!(
        "fetches after SIGKILL and restart: {} (allowed)",
        fetches(&srv.addr) - f_before_kill
    );
    // And a second client agrees with what the server has; its cold cache
    // fetches every file with data, which shows the counter counts.
    let w = Venus::start(&srv.addr);
    w.clog_admin();
    let f_cold = fetches(&srv.addr);
    read_all_and_compare(&w, &files, "a second client after the crash");
    let cold = fetches(&srv.addr) - f_cold;
    let with_data = files.iter().filter(|(_, b)| !b.is_empty()).count() as u64;
    assert!(
        cold >= with_data,
        "a cold client read {with_data} files with data in {cold} fetches"
    );
    drop(w);
    drop(v);
    eprintln!(
        "a_restarted_venus_fetches_nothing_it_had: {:?}",
        began.elapsed()
    );
}

#[test]
fn codasrv_restart_under_a_mounted_client() {
    let began = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("vice");
    let addr = format!("127.0.0.1:{}", coda_tests::free_port("127.0.0.1"));
    let srv = Server::start_at(&root, &addr, 1);
    assert_eq!(srv.addr, addr, "codasrv listens where it was told");
    let v = Venus::start(&srv.addr);
    v.clog_admin();
    let old: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| {
            let rel = if i % 2 == 0 {
                format!("old{i}")
            } else {
                format!("olddir/old{i}")
            };
            (rel, pattern(1000 + i * 150_001, 300 + i as u64))
        })
        .collect();
    fsx::create_dir(v.path("olddir")).unwrap();
    for (rel, data) in &old {
        fsx::write(v.path(rel), data).unwrap();
    }
    fsx::write(v.path("olddir/to-rename"), b"renamed after the restart").unwrap();
    read_all_and_compare(&v, &old, "before the server restart");

    assert!(
        srv.terminate().success(),
        "codasrv exits cleanly on SIGTERM"
    );
    let srv = Server::start_at(&root, &addr, 1);
    assert_eq!(srv.addr, addr, "codasrv listens where it was told");
    let restarted = Instant::now();

    // The first access that needs the server: a new file. Tried once; if it
    // fails, retried for a few seconds and reported.
    let first = v.path("new-after-restart");
    let first_data = pattern(123_456, 9);
    match fsx::write(&first, &first_data) {
        Ok(()) => eprintln!("first write after the server restart worked at once"),
        Err(e) => {
            eprintln!("RETRY NEEDED: first write after the server restart failed: {e}");
            let mut attempts = 1;
            let ok = eventually(Duration::from_secs(10), || {
                attempts += 1;
                fsx::write(&first, &first_data).is_ok()
            });
            assert!(
                ok,
                "no write through the mount within 10 s of the server restart ({attempts} attempts; first error: {e})\n{}",
                v.log_tail()
            );
            eprintln!(
                "RETRY NEEDED: the write worked after {attempts} attempts, {:?} after the restart",
                restarted.elapsed()
            );
        }
    }
    assert_eq!(fsx::read(&first).unwrap(), first_data);
    read_all_and_compare(&v, &old, "after the server restart");
    // New files, directories and renames through the same mount.
    fsx::create_dir(v.path("newdir")).unwrap();
    fsx::create_dir(v.path("newdir/sub")).unwrap();
    fsx::write(v.path("newdir/sub/n1"), pattern(2 << 20, 11)).unwrap();
    fsx::write(v.path("olddir/n2"), b"in an old directory").unwrap();
    fsx::rename(v.path("olddir/to-rename"), v.path("newdir/renamed")).unwrap();
    fsx::rename(v.path("newdir/sub"), v.path("moved-sub")).unwrap();
    fsx::write(v.path("old0"), b"overwritten after the restart").unwrap();
    let mut want: Vec<(String, Vec<u8>)> = old[1..].to_vec();
    want.push(("old0".into(), b"overwritten after the restart".to_vec()));
    want.push(("new-after-restart".into(), first_data.clone()));
    want.push(("moved-sub/n1".into(), pattern(2 << 20, 11)));
    want.push(("olddir/n2".into(), b"in an old directory".to_vec()));
    want.push((
        "newdir/renamed".into(),
        b"renamed after the restart".to_vec(),
    ));
    read_all_and_compare(&v, &want, "the same mount, after its changes");
    assert!(!fsx::exists(v.path("olddir/to-rename")).unwrap());
    assert!(!fsx::exists(v.path("newdir/sub")).unwrap());

    // A client started after the restart sees everything.
    let w = Venus::start(&srv.addr);
    w.clog_admin();
    read_all_and_compare(&w, &want, "a second client after the server restart");
    let mut top = fsx::read_dir_names(w.mount.clone()).unwrap();
    top.sort();
    for name in ["moved-sub", "new-after-restart", "newdir", "old0", "olddir"] {
        assert!(top.iter().any(|n| n == name), "{name} missing in {top:?}");
    }
    assert!(!fsx::exists(w.path("olddir/to-rename")).unwrap());
    assert!(!fsx::exists(w.path("newdir/sub")).unwrap());
    // And the first client, which held callbacks from the old server
    // incarnation, sees the second client's changes.
    fsx::write(w.path("old2"), b"changed by the second client").unwrap();
    fsx::write(w.path("olddir/from-w"), b"new from the second client").unwrap();
    let seen = eventually(Duration::from_secs(10), || {
        fsx::read(v.path("old2")).ok().as_deref() == Some(&b"changed by the second client"[..])
    });
    assert!(
        seen,
        "the first client still shows old2 as {:?} bytes\n{}",
        fsx::read(v.path("old2")).map(|b| b.len()),
        v.log_tail()
    );
    assert!(
        eventually(Duration::from_secs(10), || {
            fsx::read(v.path("olddir/from-w")).ok().as_deref()
                == Some(&b"new from the second client"[..])
        }),
        "the first client does not see olddir/from-w: {:?}",
        fsx::read_dir_names(v.path("olddir"))
    );
    drop(w);
    drop(v);
    drop(srv);
    eprintln!(
        "codasrv_restart_under_a_mounted_client: {:?}",
        began.elapsed()
    );
}

/// Files in Coda belong to the Coda user who made them (here `admin`, id
/// 500), not to the local uid that runs git (root), so git's
/// `safe.directory` check refuses the repository ("detected dubious
/// ownership"). Trusting it is git policy, not a file-system property.
const TRUST_GIT: &str =
    "export GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*'; ";

/// `sh -c SCRIPT` in the mount, which must succeed; its stdout.
fn sh_ok(v: &Venus, what: &str, script: &str, limit: Duration) -> String {
    let t = Instant::now();
    let out = v.sh(script, limit);
    eprintln!("{what}: {:?}", t.elapsed());
    check(v, what, &out);
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn check(v: &Venus, what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}\n--- venus ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        v.log_tail()
    );
}

/// What `/work/main/Cargo.toml` defines for its members, for the rvm crate
/// built on its own.
const WORKSPACE_TOML: &str = r#"[workspace]
resolver = "2"
members = ["rvm"]
exclude = ["rvm/fuzz"]

[workspace.package]
edition = "2021"
version = "0.1.0"
license = "MIT OR Apache-2.0"
rust-version = "1.85"

[workspace.dependencies]
memmap2 = "0.9"
crc32fast = "1.4"
thiserror = "2"
zerocopy = { version = "0.8", features = ["derive"] }
libc = "0.2"
proptest = "1"
tempfile = "3"
rand = "0.9"
"#;

/// Every file, symlink and directory under `dirs` (relative to the mount):
/// kind, mode, path, link target; then the sha256 of every regular file.
const MANIFEST: &str = "export LC_ALL=C; \
    find w t -printf '%y %m %p -> %l\\n' | sort && \
    find w t -type f -print0 | sort -z | xargs -0 sha256sum";

#[test]
fn a_real_workload_unpack_git_build() {
    let began = Instant::now();
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf();
    let scratch = tempfile::tempdir().unwrap();
    let tar = scratch.path().join("rvm.tar");
    let out = Command::new("git")
        .arg("-C")
        .arg(&workspace)
        .args(["archive", "-o"])
        .arg(&tar)
        .args(["HEAD", "rvm"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git archive: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same tree unpacked outside Coda, as the reference for the sources.
    let local = scratch.path().join("local");
    std::fs::create_dir(&local).unwrap();
    let out = sh_in(
        &local,
        &format!("tar xf {} && export LC_ALL=C && find rvm -type f -print0 | sort -z | xargs -0 sha256sum", tar.display()),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "local unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reference = String::from_utf8(out.stdout).unwrap();
    assert!(reference.lines().count() > 20, "{reference}");

    let srv = Server::start(1);
    let v = Venus::start(&srv.addr);
    v.clog_admin();
    let lock = workspace.join("Cargo.lock");
    std::fs::write(scratch.path().join("Cargo.toml"), WORKSPACE_TOML).unwrap();
    sh_ok(
        &v,
        "tar x",
        &format!(
            "set -e; mkdir w t; cd w; tar xf {tar}; cp {toml} Cargo.toml; cp {lock} Cargo.lock",
            tar = tar.display(),
            toml = scratch.path().join("Cargo.toml").display(),
            lock = lock.display()
        ),
        Duration::from_secs(300),
    );
    sh_ok(
        &v,
        "git init, add, commit",
        // `cargo metadata` first trims the copied lock file to rvm's needs,
        // so the build leaves the committed tree as it was.
        &format!(
            "{TRUST_GIT}set -e; cd w; cargo metadata --offline --format-version 1 >/dev/null; \
         git init -q; git add -A; \
         git -c user.email=t@t -c user.name=t commit -qm import; git log --oneline"
        ),
        Duration::from_secs(300),
    );
    let build = sh_ok(
        &v,
        "cargo build",
        "set -e; cd w; CARGO_TARGET_DIR=\"$PWD/../t\" cargo build --offline --release -p rvm --lib 2>&1",
        Duration::from_secs(15 * 60),
    );
    eprintln!("{build}");
    assert!(
        fsx::metadata(v.path("t/release/librvm.rlib"))
            .unwrap()
            .len()
            > 10_000,
        "no rlib"
    );
    let first = sh_ok(
        &v,
        "manifest on the first client",
        MANIFEST,
        Duration::from_secs(600),
    );

    // The sources in Coda are the sources of the archive.
    let in_coda: Vec<&str> = first.lines().filter(|l| l.contains("  w/rvm/")).collect();
    let want: Vec<String> = reference
        .lines()
        .map(|l| l.replacen("  rvm/", "  w/rvm/", 1))
        .collect();
    assert_eq!(
        in_coda, want,
        "the unpacked sources differ from the archive"
    );
    for needle in [
        "  t/release/librvm.rlib",
        "  w/.git/objects/",
        "  w/.git/index",
    ] {
        assert!(first.contains(needle), "{needle} missing from the manifest");
    }

    // A second client on the same server reads the same tree.
    let w = Venus::start(&srv.addr);
    w.clog_admin();
    let second = sh_ok(
        &w,
        "manifest on the second client",
        MANIFEST,
        Duration::from_secs(600),
    );
    if first != second {
        let a: Vec<&str> = first.lines().collect();
        let b: Vec<&str> = second.lines().collect();
        let only_a: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).take(20).collect();
        let only_b: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).take(20).collect();
        panic!(
            "the two clients disagree ({} vs {} lines)\nonly on the first: {only_a:#?}\nonly on the second: {only_b:#?}",
            a.len(),
            b.len()
        );
    }
    eprintln!("{} manifest lines agree", first.lines().count());
    // git on the second client finds the repository whole and the work
    // tree as committed.
    let status = sh_ok(
        &w,
        "git fsck and status on the second client",
        &format!("{TRUST_GIT}set -e; cd w; git fsck --full --strict 2>&1; git status --porcelain; git log --format=%s"),
        Duration::from_secs(300),
    );
    assert_eq!(status.trim_end().lines().last(), Some("import"), "{status}");
    assert!(
        !status
            .lines()
            .any(|l| l.starts_with(" M") || l.starts_with("??") || l.starts_with(" D")),
        "the second client's work tree differs from the commit:\n{status}"
    );
    drop(w);
    drop(v);
    eprintln!("a_real_workload_unpack_git_build: {:?}", began.elapsed());
}

/// What `rust-lld` (and many editors and installers) do: write a file,
/// rename or link it while it is still open, then close it. The close
/// stores the data; it must succeed and the data must be what was written,
/// on this client and on a fresh one. (The build in
/// `a_real_workload_unpack_git_build` fails on exactly this.)
#[test]
fn a_file_renamed_or_linked_while_open_keeps_its_data() {
    use std::io::Write;
    let began = Instant::now();
    let srv = Server::start(1);
    let v = Venus::start(&srv.addr);
    v.clog_admin();
    fsx::create_dir(v.path("other")).unwrap();
    fsx::write(v.path("existing.tmp"), b"old").unwrap();
    let data = pattern(70_000, 4);
    // (label, file created or opened, name it ends with, how)
    type Name = fn(&Path, &Path) -> std::io::Result<()>;
    let cases: [(&str, &str, &str, Name); 4] = [
        ("new file, renamed", "new.tmp", "new", |a, b| {
            fsx::rename(a, b)
        }),
        (
            "new file, renamed into another directory",
            "moved.tmp",
            "other/moved",
            |a, b| fsx::rename(a, b),
        ),
        (
            "existing file, renamed",
            "existing.tmp",
            "existing",
            |a, b| fsx::rename(a, b),
        ),
        ("new file, hard-linked", "linked", "linked2", |a, b| {
            fsx::hard_link(a, b)
        }),
    ];
    let mut failures = Vec::new();
    for (label, from, to, how) in cases {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        let f = fsx::open_with(v.path(from), opts).unwrap();
        let payload = data.clone();
        let f = coda_tests::venus::timed(move || {
            let mut f = f;
            f.write_all(&payload).unwrap();
            f
        });
        how(&v.path(from), &v.path(to)).unwrap_or_else(|e| panic!("{label}: {e}"));
        // close(2) reports the store's result; std's drop ignores it.
        let closed = coda_tests::venus::timed(move || {
            use std::os::fd::IntoRawFd;
            let fd = f.into_raw_fd();
            if unsafe { libc::close(fd) } == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
        let here = fsx::read(v.path(to)).map(|b| b == data);
        eprintln!("{label}: close {closed:?}, reads back right here: {here:?}");
        if closed.is_err() || !matches!(here, Ok(true)) {
            failures.push(format!("{label}: close {closed:?}, data right: {here:?}"));
        }
    }
    let w = Venus::start(&srv.addr);
    w.clog_admin();
    for (label, to) in [
        ("new file, renamed", "new"),
        ("new file, renamed into another directory", "other/moved"),
        ("existing file, renamed", "existing"),
        ("new file, hard-linked", "linked2"),
    ] {
        let there = fsx::read(w.path(to)).map(|b| (b.len(), b == data));
        if !matches!(there, Ok((_, true))) {
            failures.push(format!(
                "{label}: a fresh client reads {to} as (len, right) {there:?}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}\n{}", v.log_tail());
    eprintln!(
        "a_file_renamed_or_linked_while_open_keeps_its_data: {:?}",
        began.elapsed()
    );
}

/// Lists every name under `dir` with its attributes, through the mount.
fn stat_tree(v: &Venus, rel: &str) -> usize {
    let names = fsx::read_dir_names(v.path(rel)).unwrap();
    for n in &names {
        fsx::metadata(v.path(format!("{rel}/{n}"))).unwrap();
    }
    names.len()
}

#[test]
fn a_volume_stamp_vouches_for_a_restarted_cache() {
    use coda_proto::vice::op::{GET_ATTR, GET_VOLUME_INFO, VALIDATE_ATTRS};
    let srv = Server::start(1);
    let d = dirs();
    // More objects than one validation call carries (a thousand), so a
    // cache validated object by object needs two calls; one by the stamp.
    const FILES: usize = 1100;
    let v = Venus::start_with(&srv.addr, &d.cache, &d.mount);
    v.clog_admin();
    let out = v.sh(
        "mkdir many && cd many && for i in $(seq 1 1100); do : > f$i; done && echo one > f1",
        Duration::from_secs(120),
    );
    assert!(out.status.success(), "{out:?}");
    assert_eq!(stat_tree(&v, "many"), FILES);

    let count = |v: Venus, what: &str| -> (Venus, BTreeMap<u16, u64>) {
        assert!(v.stop().success());
        let before = server_calls(&srv.addr);
        let v = Venus::start_with(&srv.addr, &d.cache, &d.mount);
        v.clog_admin();
        assert_eq!(stat_tree(&v, "many"), FILES, "{what}");
        let calls = delta(&before, &server_calls(&srv.addr));
        eprintln!("{what}: calls by opcode {calls:?}");
        (v, calls)
    };
    let n = |c: &BTreeMap<u16, u64>, op| c.get(&op).copied().unwrap_or(0);

    // The first restart checks every object (our own updates moved the
    // stamp on), taking the stamp first; no object is asked for alone.
    let (v, first) = count(v, "first restart");
    assert!(n(&first, VALIDATE_ATTRS) >= 2, "{first:?}");
    assert!(n(&first, GET_ATTR) <= 2, "{first:?}");
    // The second restart: nothing changed, so the stamp vouches for all.
    let (v, second) = count(v, "second restart");
    assert_eq!(
        n(&second, VALIDATE_ATTRS),
        1,
        "{second:?}\n{}",
        v.log_tail()
    );
    assert_eq!(n(&second, GET_VOLUME_INFO), 0, "{second:?}");
    assert!(n(&second, GET_ATTR) <= 2, "{second:?}");

    // A change made by another client while this one is down moves the
    // stamp: the restarted client checks object by object and sees it.
    assert!(v.stop().success());
    let w = Venus::start(&srv.addr);
    w.clog_admin();
    fsx::write(w.path("many/f1"), "changed elsewhere").unwrap();
    drop(w);
    let v = Venus::start_with(&srv.addr, &d.cache, &d.mount);
    v.clog_admin();
    assert_eq!(
        fsx::read_to_string(v.path("many/f1")).unwrap(),
        "changed elsewhere"
    );
    assert_eq!(stat_tree(&v, "many"), FILES);
}

/// Bytes of file data the cache holds now (its container files).
fn container_bytes(cache: &Path) -> u64 {
    std::fs::read_dir(cache.join("containers"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

#[test]
fn the_cache_limit_evicts_the_least_recently_used_files() {
    const MIB: usize = 1 << 20;
    const LIMIT: u64 = 24 << 20;
    let srv = Server::start(1);
    let d = dirs();
    let v = Venus::start_with_args(&srv.addr, &d.cache, &d.mount, &["--cache-size", "24M"]);
    v.clog_admin();
    let files: Vec<(String, Vec<u8>)> = (0..8)
        .map(|i| (format!("f{i}"), pattern(6 * MIB, 300 + i)))
        .collect();
    // Written data counts against the limit: after each close the cache
    // is back under it, with the newest files kept.
    for (rel, data) in &files {
        fsx::write(v.path(rel), data).unwrap();
        let held = container_bytes(&d.cache);
        assert!(held <= LIMIT, "{held} bytes cached after writing {rel}");
    }
    let fetched = |rel: &str| {
        let before = fetches(&srv.addr);
        let got = fsx::read(v.path(rel)).unwrap();
        let want = &files.iter().find(|f| f.0 == rel).unwrap().1;
        assert!(got == *want, "{rel} read back wrong");
        let held = container_bytes(&d.cache);
        assert!(held <= LIMIT, "{held} bytes cached after reading {rel}");
        fetches(&srv.addr) - before
    };
    // Four fit: f4..f7 are cached, f0 is not.
    assert_eq!(fetched("f7"), 0, "the newest file was evicted");
    assert_eq!(fetched("f0"), 1, "an evicted file must be fetched");
    // f0 pushed out the least recently used (f4), not f5.
    assert_eq!(fetched("f5"), 0, "f5 was used after f4, yet evicted first");
    assert_eq!(fetched("f4"), 1, "f4 was the least recently used");

    // An open file is never evicted, even when the limit is passed.
    let held_open = fsx::open(v.path("f1")).unwrap();
    for rel in ["f2", "f3", "f6", "f7", "f0"] {
        fetched(rel);
    }
    let (f, data) = fsx::read_handle(held_open);
    assert!(data.unwrap() == files[1].1, "an open file lost its data");
    fsx::close(f);
    eprintln!("calls: {:?}", server_calls(&srv.addr));
}
