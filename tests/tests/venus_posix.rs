//! POSIX behaviour of a real `venus` mount over a real `codasrv`: every test
//! starts its own cell and client, authenticates as admin (the root volume
//! gives `System:AnyUser` only `rl`), and checks what programs see.

use std::collections::HashMap;
use std::fmt::Debug;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coda_tests::venus::{cell, eventually, fsx, is_mounted, timed_for, Venus};
use coda_tests::{checksum, pattern, Server};

/// The errno of a call that must fail.
fn errno<T: Debug>(what: &str, r: io::Result<T>) -> i32 {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}) but must fail"),
        Err(e) => e
            .raw_os_error()
            .unwrap_or_else(|| panic!("{what}: not an OS error: {e}")),
    }
}

fn assert_errno<T: Debug>(what: &str, r: io::Result<T>, want: i32) {
    let got = errno(what, r);
    assert_eq!(
        got,
        want,
        "{what}: errno {got} ({}), want {want} ({})",
        io::Error::from_raw_os_error(got),
        io::Error::from_raw_os_error(want)
    );
}

#[test]
fn create_write_and_read_back() {
    let c = cell();
    let p = c.v.path("hello.txt");
    fsx::write(&p, b"hello, coda\n").unwrap();
    assert_eq!(fsx::read(&p).unwrap(), b"hello, coda\n");
    let m = fsx::metadata(&p).unwrap();
    assert!(m.is_file());
    assert_eq!(m.len(), 12);
    // Overwrite with shorter contents: no stale tail.
    fsx::write(&p, b"bye").unwrap();
    assert_eq!(fsx::read(&p).unwrap(), b"bye");
    assert_eq!(fsx::metadata(&p).unwrap().len(), 3);
    let names = fsx::read_dir_names(&c.v.mount).unwrap();
    assert_eq!(
        names.iter().filter(|n| *n == "hello.txt").count(),
        1,
        "{names:?}"
    );
    // An empty file exists and reads empty.
    let e = c.v.path("empty");
    fsx::write(&e, b"").unwrap();
    assert_eq!(fsx::read(&e).unwrap(), b"");
    assert_eq!(fsx::metadata(&e).unwrap().len(), 0);
}

#[test]
fn truncate_shrinks_and_grows_with_zeros() {
    let c = cell();
    let p = c.v.path("t");
    let data = pattern(100, 7);
    fsx::write(&p, &data).unwrap();
    fsx::truncate(&p, 10).unwrap();
    assert_eq!(fsx::metadata(&p).unwrap().len(), 10);
    assert_eq!(fsx::read(&p).unwrap(), &data[..10]);
    fsx::truncate(&p, 5000).unwrap();
    let back = fsx::read(&p).unwrap();
    assert_eq!(back.len(), 5000);
    assert_eq!(&back[..10], &data[..10]);
    assert!(back[10..].iter().all(|&b| b == 0), "grown part not zero");
    // ftruncate through an open handle, and to zero.
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    let f = fsx::open_with(&p, opts).unwrap();
    let f = timed_for(Duration::from_secs(30), "ftruncate", move || {
        f.set_len(3).unwrap();
        f
    });
    fsx::close(f);
    assert_eq!(fsx::read(&p).unwrap(), &data[..3]);
    fsx::truncate(&p, 0).unwrap();
    assert_eq!(fsx::read(&p).unwrap(), b"");
    assert_eq!(fsx::metadata(&p).unwrap().len(), 0);
}

#[test]
fn append_extends_the_file() {
    let c = cell();
    let p = c.v.path("log");
    fsx::write(&p, b"hello ").unwrap();
    fsx::append(&p, b"world").unwrap();
    fsx::append(&p, b"!\n").unwrap();
    assert_eq!(fsx::read(&p).unwrap(), b"hello world!\n");
    assert_eq!(fsx::metadata(&p).unwrap().len(), 13);
}

#[test]
fn rename_over_an_existing_file_replaces_it() {
    let c = cell();
    let (a, b) = (c.v.path("a"), c.v.path("b"));
    fsx::write(&a, b"AAA").unwrap();
    fsx::write(&b, b"BBBBBB").unwrap();
    let ino_a = fsx::metadata(&a).unwrap().ino();
    fsx::rename(&a, &b).unwrap();
    assert_eq!(fsx::read(&b).unwrap(), b"AAA");
    assert_eq!(fsx::metadata(&b).unwrap().len(), 3);
    assert_eq!(
        fsx::metadata(&b).unwrap().ino(),
        ino_a,
        "rename keeps the inode"
    );
    assert_errno("stat renamed source", fsx::metadata(&a), libc::ENOENT);
    let names = fsx::read_dir_names(&c.v.mount).unwrap();
    assert!(!names.contains(&"a".to_string()), "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "b").count(), 1, "{names:?}");
    // A plain rename to a new name.
    fsx::rename(&b, c.v.path("c")).unwrap();
    assert_eq!(fsx::read(c.v.path("c")).unwrap(), b"AAA");
    assert_errno("stat old name", fsx::metadata(&b), libc::ENOENT);
}

#[test]
fn rename_a_directory_moves_its_subtree() {
    let c = cell();
    fsx::create_dir(c.v.path("d1")).unwrap();
    fsx::create_dir(c.v.path("d1/sub")).unwrap();
    fsx::write(c.v.path("d1/f"), b"f data").unwrap();
    fsx::write(c.v.path("d1/sub/g"), b"g data").unwrap();
    fsx::rename(c.v.path("d1"), c.v.path("d2")).unwrap();
    assert_errno("stat d1", fsx::metadata(c.v.path("d1")), libc::ENOENT);
    assert_eq!(fsx::read(c.v.path("d2/f")).unwrap(), b"f data");
    assert_eq!(fsx::read(c.v.path("d2/sub/g")).unwrap(), b"g data");
    // Into another directory.
    fsx::create_dir(c.v.path("p")).unwrap();
    fsx::rename(c.v.path("d2"), c.v.path("p/d3")).unwrap();
    assert_errno("stat d2", fsx::metadata(c.v.path("d2")), libc::ENOENT);
    assert_eq!(fsx::read(c.v.path("p/d3/sub/g")).unwrap(), b"g data");
    let mut names = fsx::read_dir_names(c.v.path("p/d3")).unwrap();
    names.sort();
    assert_eq!(names, ["f", "sub"]);
    let root = fsx::read_dir_names(&c.v.mount).unwrap();
    assert!(!root.iter().any(|n| n == "d1" || n == "d2"), "{root:?}");
}

#[test]
fn hard_links_share_inode_and_data() {
    let c = cell();
    // Coda links within one directory.
    let (a, b) = (c.v.path("a"), c.v.path("b"));
    fsx::write(&a, b"shared").unwrap();
    fsx::hard_link(&a, &b).unwrap();
    let (ma, mb) = (fsx::metadata(&a).unwrap(), fsx::metadata(&b).unwrap());
    assert_eq!(ma.ino(), mb.ino(), "one inode");
    assert_eq!(ma.nlink(), 2);
    assert_eq!(mb.nlink(), 2);
    assert_eq!(fsx::read(&b).unwrap(), b"shared");
    // A write through one name shows through the other.
    fsx::write(&b, b"changed via b").unwrap();
    assert_eq!(fsx::read(&a).unwrap(), b"changed via b");
    // Unlinking one name keeps the other.
    fsx::remove_file(&a).unwrap();
    assert_errno("stat removed link", fsx::metadata(&a), libc::ENOENT);
    assert_eq!(fsx::read(&b).unwrap(), b"changed via b");
    assert_eq!(fsx::metadata(&b).unwrap().nlink(), 1);
    // link to an existing name is EEXIST.
    fsx::write(c.v.path("x"), b"x").unwrap();
    assert_errno(
        "link onto existing",
        fsx::hard_link(&b, c.v.path("x")),
        libc::EEXIST,
    );
}

#[test]
fn symlinks_read_and_follow() {
    let c = cell();
    fsx::write(c.v.path("target.txt"), b"through the link").unwrap();
    let l = c.v.path("link");
    fsx::symlink("target.txt", &l).unwrap();
    assert_eq!(fsx::read_link(&l).unwrap().to_str(), Some("target.txt"));
    let lm = fsx::symlink_metadata(&l).unwrap();
    assert!(lm.file_type().is_symlink());
    assert_eq!(lm.len(), "target.txt".len() as u64);
    let m = fsx::metadata(&l).unwrap();
    assert!(m.is_file());
    assert_eq!(m.len(), 16);
    assert_eq!(fsx::read(&l).unwrap(), b"through the link");
    // A link into a directory, followed as a path component.
    fsx::create_dir(c.v.path("dir")).unwrap();
    fsx::write(c.v.path("dir/inner"), b"inner").unwrap();
    fsx::symlink("dir", c.v.path("dirlink")).unwrap();
    assert_eq!(fsx::read(c.v.path("dirlink/inner")).unwrap(), b"inner");
    // A dangling link: readlink works, following gives ENOENT.
    let d = c.v.path("dangling");
    fsx::symlink("no-such-file", &d).unwrap();
    assert_eq!(fsx::read_link(&d).unwrap().to_str(), Some("no-such-file"));
    assert_errno("follow dangling link", fsx::metadata(&d), libc::ENOENT);
    // readlink of a regular file is EINVAL.
    assert_errno(
        "readlink a file",
        fsx::read_link(c.v.path("target.txt")),
        libc::EINVAL,
    );
}

#[test]
fn chmod_chown_and_utimes_read_back() {
    let c = cell();
    let p = c.v.path("f");
    fsx::write(&p, b"mode").unwrap();
    fsx::set_permissions(&p, 0o600).unwrap();
    assert_eq!(
        fsx::metadata(&p).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    fsx::set_permissions(&p, 0o755).unwrap();
    assert_eq!(
        fsx::metadata(&p).unwrap().permissions().mode() & 0o7777,
        0o755
    );
    fsx::chown(&p, Some(4321), None).unwrap();
    assert_eq!(fsx::metadata(&p).unwrap().uid(), 4321);
    let mtime = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let atime = UNIX_EPOCH + Duration::from_secs(1_100_000_000);
    fsx::utimes(&p, atime, mtime).unwrap();
    assert_eq!(fsx::metadata(&p).unwrap().mtime(), 1_000_000_000);
    // The contents are untouched by attribute changes.
    assert_eq!(fsx::read(&p).unwrap(), b"mode");
    // A write moves mtime to about now.
    fsx::write(&p, b"later").unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let m = fsx::metadata(&p).unwrap().mtime();
    assert!((m - now).abs() < 600, "mtime {m} after a write, now {now}");
    // Directories take modes too.
    let d = c.v.path("d");
    fsx::create_dir(&d).unwrap();
    fsx::set_permissions(&d, 0o711).unwrap();
    let md = fsx::metadata(&d).unwrap();
    assert!(md.is_dir());
    assert_eq!(md.permissions().mode() & 0o777, 0o711);
}

#[test]
fn mkdir_and_rmdir() {
    let c = cell();
    let d = c.v.path("d");
    fsx::create_dir(&d).unwrap();
    assert!(fsx::metadata(&d).unwrap().is_dir());
    fsx::create_dir(d.join("e")).unwrap();
    assert_eq!(fsx::read_dir_names(&d).unwrap(), ["e"]);
    assert!(fsx::read_dir_names(d.join("e")).unwrap().is_empty());
    assert!(fsx::metadata(&d).unwrap().nlink() >= 2);
    fsx::remove_dir(d.join("e")).unwrap();
    assert!(fsx::read_dir_names(&d).unwrap().is_empty());
    fsx::remove_dir(&d).unwrap();
    assert_errno("stat removed dir", fsx::metadata(&d), libc::ENOENT);
    let root = fsx::read_dir_names(&c.v.mount).unwrap();
    assert!(!root.contains(&"d".to_string()), "{root:?}");
    // The name is free again.
    fsx::create_dir(&d).unwrap();
    assert!(fsx::metadata(&d).unwrap().is_dir());
}

#[test]
fn enoent_opening_a_missing_file() {
    let c = cell();
    assert_errno("open missing", fsx::open(c.v.path("missing")), libc::ENOENT);
    assert_errno("read missing", fsx::read(c.v.path("missing")), libc::ENOENT);
    assert_errno(
        "unlink missing",
        fsx::remove_file(c.v.path("missing")),
        libc::ENOENT,
    );
    assert_errno(
        "mkdir under missing",
        fsx::create_dir(c.v.path("missing/d")),
        libc::ENOENT,
    );
    // A name looked up as missing, then created, is found (no stale negative entry).
    fsx::write(c.v.path("missing"), b"now here").unwrap();
    assert_eq!(fsx::read(c.v.path("missing")).unwrap(), b"now here");
}

#[test]
fn eexist_for_mkdir_and_exclusive_create() {
    let c = cell();
    fsx::create_dir(c.v.path("d")).unwrap();
    assert_errno(
        "mkdir existing dir",
        fsx::create_dir(c.v.path("d")),
        libc::EEXIST,
    );
    fsx::write(c.v.path("f"), b"keep me").unwrap();
    assert_errno(
        "mkdir over a file",
        fsx::create_dir(c.v.path("f")),
        libc::EEXIST,
    );
    assert_errno(
        "create_new existing",
        fsx::create_new(c.v.path("f"), b"x"),
        libc::EEXIST,
    );
    assert_eq!(fsx::read(c.v.path("f")).unwrap(), b"keep me");
    assert_errno(
        "symlink onto existing",
        fsx::symlink("t", c.v.path("f")),
        libc::EEXIST,
    );
    fsx::create_new(c.v.path("g"), b"new").unwrap();
    assert_eq!(fsx::read(c.v.path("g")).unwrap(), b"new");
}

#[test]
fn enotempty_removing_a_full_directory() {
    let c = cell();
    fsx::create_dir(c.v.path("d")).unwrap();
    fsx::write(c.v.path("d/f"), b"x").unwrap();
    assert_errno(
        "rmdir non-empty",
        fsx::remove_dir(c.v.path("d")),
        libc::ENOTEMPTY,
    );
    assert_eq!(fsx::read(c.v.path("d/f")).unwrap(), b"x");
    // Renaming a directory over a non-empty one fails the same way.
    fsx::create_dir(c.v.path("e")).unwrap();
    assert_errno(
        "rename over non-empty dir",
        fsx::rename(c.v.path("e"), c.v.path("d")),
        libc::ENOTEMPTY,
    );
    fsx::remove_file(c.v.path("d/f")).unwrap();
    fsx::remove_dir(c.v.path("d")).unwrap();
}

#[test]
fn enotdir_through_a_file() {
    let c = cell();
    fsx::write(c.v.path("f"), b"plain").unwrap();
    assert_errno("stat f/x", fsx::metadata(c.v.path("f/x")), libc::ENOTDIR);
    assert_errno(
        "create f/x",
        fsx::write(c.v.path("f/x"), b"y"),
        libc::ENOTDIR,
    );
    assert_errno(
        "readdir a file",
        fsx::read_dir_names(c.v.path("f")),
        libc::ENOTDIR,
    );
    assert_errno(
        "rmdir a file",
        fsx::remove_dir(c.v.path("f")),
        libc::ENOTDIR,
    );
}

#[test]
fn eisdir_opening_a_directory_for_write() {
    let c = cell();
    fsx::create_dir(c.v.path("d")).unwrap();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true);
    assert_errno(
        "open dir for write",
        fsx::open_with(c.v.path("d"), opts),
        libc::EISDIR,
    );
    assert_errno(
        "write to a dir",
        fsx::write(c.v.path("d"), b"x"),
        libc::EISDIR,
    );
    assert_errno(
        "unlink a dir",
        fsx::remove_file(c.v.path("d")),
        libc::EISDIR,
    );
}

#[test]
fn enametoolong_for_a_256_byte_name() {
    let c = cell();
    let long = "n".repeat(256);
    assert_errno(
        "create 256-byte name",
        fsx::write(c.v.path(&long), b"x"),
        libc::ENAMETOOLONG,
    );
    assert_errno(
        "mkdir 256-byte name",
        fsx::create_dir(c.v.path(&long)),
        libc::ENAMETOOLONG,
    );
    assert_errno(
        "stat 256-byte name",
        fsx::metadata(c.v.path(&long)),
        libc::ENAMETOOLONG,
    );
    // 255 bytes is the limit and works.
    let max = "m".repeat(255);
    fsx::write(c.v.path(&max), b"max").unwrap();
    assert_eq!(fsx::read(c.v.path(&max)).unwrap(), b"max");
    assert!(fsx::read_dir_names(&c.v.mount).unwrap().contains(&max));
}

#[test]
fn readdir_lists_10000_entries_exactly_once() {
    const N: usize = 10_000;
    let c = cell();
    let d = c.v.path("big");
    fsx::create_dir(&d).unwrap();
    // 500 creates per timed call: thousands of threads would only add noise.
    for chunk in 0..N / 500 {
        let d = d.clone();
        timed_for(
            Duration::from_secs(30),
            &format!("creating entries {}..{}", chunk * 500, chunk * 500 + 500),
            move || {
                for i in chunk * 500..chunk * 500 + 500 {
                    std::fs::File::create(d.join(format!("f{i:05}")))
                        .unwrap_or_else(|e| panic!("create f{i:05}: {e}"));
                }
            },
        );
    }
    let names = {
        let d = d.clone();
        timed_for(Duration::from_secs(60), "readdir of 10000", move || {
            std::fs::read_dir(&d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for n in &names {
        *seen.entry(n.as_str()).or_default() += 1;
    }
    let dups: Vec<_> = seen.iter().filter(|(_, &k)| k > 1).take(10).collect();
    assert!(dups.is_empty(), "listed more than once: {dups:?}");
    let missing: Vec<_> = (0..N)
        .map(|i| format!("f{i:05}"))
        .filter(|n| !seen.contains_key(n.as_str()))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "not listed: {missing:?}");
    assert_eq!(names.len(), N, "extra names listed");
    // A few entries are real files.
    for i in [0, 4999, 9999] {
        assert!(fsx::metadata(d.join(format!("f{i:05}"))).unwrap().is_file());
    }
}

#[test]
fn an_open_file_reads_after_unlink() {
    let c = cell();
    let p = c.v.path("doomed");
    let data = pattern(200_000, 3);
    fsx::write(&p, &data).unwrap();
    let f = fsx::open(&p).unwrap();
    fsx::remove_file(&p).unwrap();
    assert_errno("stat unlinked", fsx::metadata(&p), libc::ENOENT);
    assert!(!fsx::read_dir_names(&c.v.mount)
        .unwrap()
        .contains(&"doomed".to_string()));
    let (f, back) = fsx::read_handle(f);
    let back = back.expect("read through the open handle");
    assert_eq!(back.len(), data.len());
    assert!(back == data, "contents changed after unlink");
    fsx::close(f);
    // The name can be reused at once.
    fsx::write(&p, b"reborn").unwrap();
    assert_eq!(fsx::read(&p).unwrap(), b"reborn");
}

#[test]
fn a_3_mib_file_round_trips() {
    let c = cell();
    let p = c.v.path("big.bin");
    let data = pattern(3 << 20, 0x5eed);
    let sum = checksum(&data);
    fsx::write(&p, &data).unwrap();
    assert_eq!(fsx::metadata(&p).unwrap().len(), data.len() as u64);
    let back = fsx::read(&p).unwrap();
    assert_eq!(back.len(), data.len());
    assert_eq!(checksum(&back), sum, "read back differs");
    // A second client with an empty cache must fetch it from the server.
    let other = Venus::start(&c.srv.addr);
    let fetched = fsx::read(other.path("big.bin")).unwrap();
    assert_eq!(fetched.len(), data.len());
    assert_eq!(checksum(&fetched), sum, "fetched copy differs");
}

#[test]
fn data_survives_a_venus_restart() {
    let srv = Server::start(1);
    let cache = tempfile::tempdir().unwrap();
    let mount = tempfile::tempdir().unwrap();
    let v = Venus::start_with(&srv.addr, cache.path(), mount.path());
    v.clog_admin();
    let data = pattern(100_000, 11);
    fsx::create_dir(v.path("d")).unwrap();
    fsx::write(v.path("d/file"), &data).unwrap();
    fsx::write(v.path("small"), b"small").unwrap();
    let status = v.stop();
    assert!(status.success(), "venus exited with {status} on SIGTERM");
    assert!(!is_mounted(mount.path()), "venus left its mount behind");
    assert!(
        std::fs::read_dir(cache.path()).unwrap().next().is_some(),
        "the cache directory is empty"
    );
    // Same cache, same mount point.
    let v = Venus::start_with(&srv.addr, cache.path(), mount.path());
    assert_eq!(fsx::read(v.path("d/file")).unwrap(), data);
    assert_eq!(fsx::read(v.path("small")).unwrap(), b"small");
    let mut names = fsx::read_dir_names(&v.mount).unwrap();
    names.sort();
    assert_eq!(names, ["d", "small"]);
    // And once more through `restart`.
    let v = v.restart();
    assert_eq!(fsx::read(v.path("small")).unwrap(), b"small");
}

#[test]
fn anonymous_writes_get_eacces_until_clog() {
    let srv = Server::start(1);
    let v = Venus::start(&srv.addr);
    // System:AnyUser has `rl` on the root: listing works, writing does not.
    fsx::read_dir_names(&v.mount).unwrap();
    assert_errno(
        "anonymous create",
        fsx::write(v.path("f"), b"x"),
        libc::EACCES,
    );
    assert_errno(
        "anonymous mkdir",
        fsx::create_dir(v.path("d")),
        libc::EACCES,
    );
    assert!(
        !fsx::exists(v.path("f")).unwrap(),
        "a refused create left a file"
    );
    v.clog_admin();
    fsx::write(v.path("f"), b"as admin").unwrap();
    fsx::create_dir(v.path("d")).unwrap();
    assert_eq!(fsx::read(v.path("f")).unwrap(), b"as admin");
    // A wrong password is refused and changes nothing.
    let bad = v.clog_output("admin", "not-the-password");
    assert!(
        !bad.status.success(),
        "clog with a wrong password succeeded"
    );
}

#[test]
fn two_clients_see_each_others_updates() {
    let srv = Server::start(1);
    let a = Venus::start(&srv.addr);
    let b = Venus::start(&srv.addr);
    a.clog_admin();
    let limit = Duration::from_secs(10);
    let reads = |v: &Venus, want: &[u8]| {
        let p = v.path("shared");
        let want = want.to_vec();
        let mut last = None;
        let ok = eventually(limit, || {
            let got = fsx::read(&p);
            let same = matches!(&got, Ok(d) if *d == want);
            last = Some(got);
            same
        });
        assert!(
            ok,
            "client B never read {:?}; last {:?}",
            String::from_utf8_lossy(&want),
            last.map(|r| r.map(|d| String::from_utf8_lossy(&d).into_owned()))
        );
    };
    fsx::write(a.path("shared"), b"version-1").unwrap();
    reads(&b, b"version-1");
    // Same length, new bytes: B must not serve its cached copy.
    fsx::write(a.path("shared"), b"version-2").unwrap();
    reads(&b, b"version-2");
    // Longer.
    fsx::write(a.path("shared"), b"version three, longer").unwrap();
    reads(&b, b"version three, longer");
    // A new name appears in B's listing of a directory it has read.
    assert!(!fsx::read_dir_names(&b.mount)
        .unwrap()
        .contains(&"new".to_string()));
    fsx::write(a.path("new"), b"n").unwrap();
    assert!(
        eventually(limit, || fsx::read_dir_names(&b.mount)
            .unwrap()
            .contains(&"new".to_string())),
        "B never listed the file A created"
    );
    // A removal reaches B.
    fsx::remove_file(a.path("new")).unwrap();
    assert!(
        eventually(limit, || !fsx::exists(b.path("new")).unwrap()),
        "B still sees the file A removed"
    );
}
