//! Disconnected operation on real processes and mounts (issue 6):
//! - `codasrv` stopped under a mounted client: the mount keeps working
//!   (edit, create, rename, delete, mkdir, rmdir), `cfs listvol` shows the
//!   volume disconnected with its log, a cache miss is ETIMEDOUT; started
//!   again, `cfs checkservers` reintegrates and a second client sees it all;
//! - `venus` SIGKILLed while disconnected with a non-empty log: started
//!   again, the log is intact, waits for a token (and says so), and
//!   reintegrates after `clog`;
//! - a full cache while disconnected: ENOSPC for the new write, and the
//!   earlier work reaches the server.

use std::path::Path;
use std::time::{Duration, Instant};

use coda_tests::venus::{eventually, fsx, Venus};
use coda_tests::{pattern, Server};

/// A client whose calls give a silent server 2 s.
fn client(addr: &str, cache: &Path, mount: &Path, extra: &[&str]) -> Venus {
    let mut args = vec!["--timeout", "2"];
    args.extend_from_slice(extra);
    Venus::start_with_args(addr, cache, mount, &args)
}

/// A cache and a mount point in `tmp`, kept by the test so a restarted
/// client can resume the cache.
fn dirs(tmp: &tempfile::TempDir) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cache, mount) = (tmp.path().join("cache"), tmp.path().join("mnt"));
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::create_dir_all(&mount).unwrap();
    (cache, mount)
}

/// `cfs listvol` of the root volume as JSON.
fn listvol(v: &Venus) -> serde_json::Value {
    let out = v.cfs("listvol", &["--json", v.mount.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "cfs listvol: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("listvol --json")
}

fn cml_records(v: &Venus) -> u64 {
    listvol(v)["cml_records"].as_u64().unwrap()
}

fn state(v: &Venus) -> String {
    listvol(v)["state"].as_str().unwrap().to_string()
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// The tree every test starts from, made while connected.
fn connected_tree(v: &Venus) {
    fsx::create_dir(v.path("d")).unwrap();
    fsx::create_dir(v.path("d/empty")).unwrap();
    fsx::write(v.path("d/edit"), b"before\n").unwrap();
    fsx::write(v.path("d/gone"), b"to be removed").unwrap();
    fsx::write(v.path("d/moved"), b"to be renamed").unwrap();
    fsx::write(v.path("uncached"), b"flushed before the disconnection").unwrap();
    fsx::write(v.path("d/emptied"), b"emptied while disconnected").unwrap();
}

/// What the work done while disconnected should leave.
fn disconnected_work(v: &Venus) {
    fsx::append(v.path("d/edit"), b"after\n").unwrap();
    fsx::write(v.path("d/new"), pattern(300_000, 7)).unwrap();
    // Larger than a stage fragment: staged in pieces.
    fsx::write(v.path("d/big"), pattern((5 << 20) + 5, 8)).unwrap();
    fsx::rename(v.path("d/moved"), v.path("d/renamed")).unwrap();
    fsx::remove_file(v.path("d/gone")).unwrap();
    fsx::remove_dir(v.path("d/empty")).unwrap();
    fsx::create_dir(v.path("d/sub")).unwrap();
    fsx::write(v.path("d/sub/inner"), b"in a directory made disconnected").unwrap();
    fsx::symlink("sub/inner", v.path("d/link")).unwrap();
    fsx::set_permissions(v.path("d/new"), 0o600).unwrap();
    fsx::write(v.path("d/emptied"), b"").unwrap();
    // Made and unmade while disconnected: leaves no trace.
    fsx::write(v.path("d/scratch"), b"temporary").unwrap();
    fsx::remove_file(v.path("d/scratch")).unwrap();
    fsx::create_dir(v.path("d/tmpdir")).unwrap();
    fsx::remove_dir(v.path("d/tmpdir")).unwrap();
}

/// Checks a client sees exactly the result of `disconnected_work`.
fn check_result(v: &Venus, who: &str) {
    let read = |rel: &str| {
        fsx::read(v.path(rel)).unwrap_or_else(|e| panic!("{who}: {rel}: {e}\n{}", v.log_tail()))
    };
    assert_eq!(read("d/edit"), b"before\nafter\n", "{who}");
    assert_eq!(read("d/new"), pattern(300_000, 7), "{who}");
    assert!(read("d/big") == pattern((5 << 20) + 5, 8), "{who}: d/big");
    assert_eq!(read("d/renamed"), b"to be renamed", "{who}");
    assert_eq!(
        read("d/sub/inner"),
        b"in a directory made disconnected",
        "{who}"
    );
    assert_eq!(read("d/link"), b"in a directory made disconnected", "{who}");
    assert_eq!(read("d/emptied"), b"", "{who}");
    let mut names = fsx::read_dir_names(v.path("d")).unwrap();
    names.sort();
    assert_eq!(
        names,
        ["big", "edit", "emptied", "link", "new", "renamed", "sub"],
        "{who}: the directory's names"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &fsx::metadata(v.path("d/new")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "{who}: chmod while disconnected");
}

#[test]
fn work_done_while_the_server_is_down_reaches_a_second_client() {
    let began = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("vice");
    let addr = format!("127.0.0.1:{}", coda_tests::free_port("127.0.0.1"));
    let (cache, mount) = dirs(&tmp);
    let srv = Server::start_at(&root, &addr, 1);
    let v = client(&addr, &cache, &mount, &[]);
    v.clog_admin();
    connected_tree(&v);
    v.cfs_ok("flushobject", &[v.path("uncached").to_str().unwrap()]);
    assert_eq!(state(&v), "connected");

    drop(srv); // SIGKILL
    disconnected_work(&v);
    assert_eq!(state(&v), "disconnected", "{}", v.log_tail());
    let logged = cml_records(&v);
    assert!(logged >= 8, "the log holds the work: {logged} records");
    assert_eq!(
        errno_of(fsx::read(v.path("uncached"))),
        Some(libc::ETIMEDOUT),
        "a cache miss while disconnected"
    );
    // The mount serves the work itself.
    check_result(&v, "the disconnected client");
    // The log and its data, as a tar archive.
    let archive = tmp.path().join("cml.tar");
    v.cfs_ok(
        "checkpointml",
        &[v.mount.to_str().unwrap(), archive.to_str().unwrap()],
    );
    let listing = std::process::Command::new("tar")
        .arg("tvf")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(listing.status.success(), "tar reads the checkpoint");
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(
        names.contains("cml.txt") && names.contains("cml.bin"),
        "{names}"
    );
    let stores = names.lines().filter(|l| l.contains("data/")).count();
    assert!(stores >= 3, "the stores' data is in the archive:\n{names}");
    let text = std::process::Command::new("tar")
        .args(["xOf", archive.to_str().unwrap(), "cml.txt"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert_eq!(text.lines().count() as u64, logged, "{text}");
    assert!(text.contains("mkdir sub"), "{text}");
    assert!(
        !text.contains("scratch"),
        "cancelled records are gone: {text}"
    );

    let srv = Server::start_at(&root, &addr, 1);
    v.cfs_ok("checkservers", &[]);
    assert_eq!(state(&v), "connected", "{}", v.log_tail());
    assert_eq!(cml_records(&v), 0, "reintegrated\n{}", v.log_tail());
    check_result(&v, "the reintegrated client");
    assert_eq!(
        fsx::read(v.path("uncached")).unwrap(),
        b"flushed before the disconnection"
    );

    let other = Venus::start(&srv.addr);
    other.clog_admin();
    check_result(&other, "a second client");
    eprintln!(
        "work_done_while_the_server_is_down_reaches_a_second_client: {:?}",
        began.elapsed()
    );
}

#[test]
fn a_log_survives_sigkill_and_waits_for_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, mount) = dirs(&tmp);
    let srv = Server::start(1);
    let v = client(&srv.addr, &cache, &mount, &[]);
    v.clog_admin();
    connected_tree(&v);
    v.cfs_ok("disconnect", &[]);
    assert_eq!(state(&v), "disconnected");
    disconnected_work(&v);
    let logged = cml_records(&v);
    assert!(logged >= 8, "{logged} records logged");
    v.kill();

    // Started again (connected now): the log is there, and waits for its
    // user's token.
    let v = client(&srv.addr, &cache, &mount, &[]);
    assert_eq!(
        cml_records(&v),
        logged,
        "the log after SIGKILL and a restart"
    );
    assert!(
        eventually(Duration::from_secs(10), || listvol(&v)
            ["waits_for_token_of_uid"]
            == serde_json::json!(0)),
        "the log says it waits for a token: {}",
        listvol(&v)
    );
    assert_eq!(cml_records(&v), logged, "nothing sent without a token");
    v.clog_admin();
    assert!(
        eventually(Duration::from_secs(20), || cml_records(&v) == 0),
        "reintegrated after clog\n{}",
        v.log_tail()
    );
    check_result(&v, "the restarted client");
    let other = Venus::start(&srv.addr);
    other.clog_admin();
    check_result(&other, "a second client");
}

#[test]
fn a_restart_while_the_server_is_down_starts_disconnected() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("vice");
    let addr = format!("127.0.0.1:{}", coda_tests::free_port("127.0.0.1"));
    let (cache, mount) = dirs(&tmp);
    let srv = Server::start_at(&root, &addr, 1);
    let v = client(&addr, &cache, &mount, &[]);
    v.clog_admin();
    connected_tree(&v);
    drop(srv);
    fsx::write(v.path("d/before-kill"), b"logged, then venus was killed").unwrap();
    v.kill();
    let v = client(&addr, &cache, &mount, &[]);
    assert_eq!(state(&v), "disconnected");
    assert_eq!(
        fsx::read(v.path("d/before-kill")).unwrap(),
        b"logged, then venus was killed"
    );
    assert_eq!(fsx::read(v.path("d/edit")).unwrap(), b"before\n");
    let _srv = Server::start_at(&root, &addr, 1);
    v.clog_admin();
    v.cfs_ok("checkservers", &[]);
    assert!(
        eventually(Duration::from_secs(20), || cml_records(&v) == 0),
        "reintegrated\n{}",
        v.log_tail()
    );
    let other = Venus::start(&addr);
    other.clog_admin();
    assert_eq!(
        fsx::read(other.path("d/before-kill")).unwrap(),
        b"logged, then venus was killed"
    );
}

#[test]
fn a_full_cache_while_disconnected_is_enospc_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (cache, mount) = dirs(&tmp);
    let srv = Server::start(1);
    let v = client(&srv.addr, &cache, &mount, &["--cache-size", "8M"]);
    v.clog_admin();
    fsx::create_dir(v.path("fill")).unwrap();
    v.cfs_ok("disconnect", &[]);
    let mut written = Vec::new();
    let mut refused = None;
    for i in 0..32 {
        let data = pattern(1 << 20, i);
        match fsx::write(v.path(format!("fill/f{i}")), &data) {
            Ok(()) => written.push((i, data)),
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("a full cache refuses a new write");
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    assert!(written.len() >= 4, "{} files fit", written.len());
    for (i, data) in &written {
        assert_eq!(&fsx::read(v.path(format!("fill/f{i}"))).unwrap(), data);
    }
    v.cfs_ok("reconnect", &[]);
    assert_eq!(cml_records(&v), 0, "{}", v.log_tail());
    let other = Venus::start(&srv.addr);
    other.clog_admin();
    for (i, data) in &written {
        assert_eq!(
            &fsx::read(other.path(format!("fill/f{i}"))).unwrap(),
            data,
            "f{i} on a second client"
        );
    }
}

/// `repair SUB ARGS...` on `v`'s mount; its stdout, asserting success.
fn repair(v: &Venus, args: &[&str]) -> String {
    let mut all = vec!["--mount", v.mount.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = v.tool("repair", &all, "");
    assert!(
        out.status.success(),
        "repair {args:?}: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        v.log_tail()
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits (10 s at most) for `path` to read `want`: the kernel may hold an
/// older version until a callback reaches it.
fn reads_eventually(path: std::path::PathBuf, want: &[u8], what: &str) {
    let mut got = Vec::new();
    let ok = eventually(Duration::from_secs(10), || {
        got = fsx::read(&path).unwrap_or_default();
        got == want
    });
    assert!(
        ok,
        "{what}: {} reads {:?}",
        path.display(),
        String::from_utf8_lossy(&got)
    );
}

/// Two clients of `srv`, each logged in as admin.
fn two_clients(srv: &Server) -> (Venus, Venus) {
    let (a, b) = (Venus::start(&srv.addr), Venus::start(&srv.addr));
    a.clog_admin();
    b.clog_admin();
    (a, b)
}

fn conflicts(v: &Venus) -> Vec<serde_json::Value> {
    let out = repair(v, &["--json", "list"]);
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn two_disconnected_clients_conflict_only_on_the_same_file() {
    let srv = Server::start(1);
    let (a, b) = two_clients(&srv);
    fsx::create_dir(a.path("shared")).unwrap();
    fsx::write(a.path("shared/doc"), b"original\n").unwrap();
    fsx::write(a.path("shared/same"), b"original\n").unwrap();
    // b caches it all.
    assert_eq!(fsx::read(b.path("shared/doc")).unwrap(), b"original\n");
    assert_eq!(fsx::read(b.path("shared/same")).unwrap(), b"original\n");
    a.cfs_ok("disconnect", &[]);
    b.cfs_ok("disconnect", &[]);
    fsx::write(a.path("shared/from-a"), b"a's new file").unwrap();
    fsx::write(b.path("shared/from-b"), b"b's new file").unwrap();
    fsx::write(a.path("shared/doc"), b"a's edit\n").unwrap();
    fsx::write(b.path("shared/doc"), b"b's edit\n").unwrap();
    // The same change on both sides is no conflict.
    fsx::write(a.path("shared/same"), b"both made this\n").unwrap();
    fsx::write(b.path("shared/same"), b"both made this\n").unwrap();

    a.cfs_ok("reconnect", &[]);
    assert_eq!(cml_records(&a), 0, "{}", a.log_tail());
    assert!(conflicts(&a).is_empty());
    b.cfs_ok("reconnect", &[]);
    assert_eq!(cml_records(&b), 0, "{}", b.log_tail());
    let found = conflicts(&b);
    assert_eq!(found.len(), 1, "exactly one conflict: {found:?}");
    assert!(
        found[0]["path"].as_str().unwrap().ends_with("shared/doc"),
        "{found:?}"
    );
    assert_eq!(
        errno_of(fsx::read(b.path("shared/doc"))),
        Some(libc::EIO),
        "a program gets EIO on an object in conflict"
    );
    // Distinct names in one directory: both on the server, both clients.
    for v in [&a, &b] {
        assert_eq!(fsx::read(v.path("shared/from-a")).unwrap(), b"a's new file");
        assert_eq!(fsx::read(v.path("shared/from-b")).unwrap(), b"b's new file");
        assert_eq!(
            fsx::read(v.path("shared/same")).unwrap(),
            b"both made this\n"
        );
    }
    let shown = repair(&b, &["show", b.path("shared/doc").to_str().unwrap()]);
    assert!(shown.contains("local"), "{shown}");
    repair(&b, &["keep-both", b.path("shared/doc").to_str().unwrap()]);
    assert!(conflicts(&b).is_empty());
    for v in [&a, &b] {
        reads_eventually(
            v.path("shared/doc"),
            b"a's edit\n",
            "the server's version keeps the name",
        );
        reads_eventually(
            v.path("shared/doc.local"),
            b"b's edit\n",
            "the local version beside it",
        );
    }
}

#[test]
fn repair_keep_local_and_keep_server() {
    let srv = Server::start(1);
    let (a, b) = two_clients(&srv);
    for name in ["one", "two"] {
        fsx::write(a.path(name), b"original").unwrap();
        assert_eq!(fsx::read(b.path(name)).unwrap(), b"original");
    }
    b.cfs_ok("disconnect", &[]);
    fsx::write(a.path("one"), b"server side").unwrap();
    fsx::write(a.path("two"), b"server side").unwrap();
    fsx::write(b.path("one"), b"local side").unwrap();
    fsx::write(b.path("two"), b"local side").unwrap();
    b.cfs_ok("reconnect", &[]);
    assert_eq!(conflicts(&b).len(), 2, "{}", b.log_tail());
    repair(&b, &["keep-local", b.path("one").to_str().unwrap()]);
    repair(&b, &["keep-server", b.path("two").to_str().unwrap()]);
    assert!(conflicts(&b).is_empty());
    for v in [&a, &b] {
        reads_eventually(v.path("one"), b"local side", "keep-local");
        reads_eventually(v.path("two"), b"server side", "keep-server");
    }
}

#[test]
fn hoarded_files_are_there_when_disconnected() {
    let srv = Server::start(1);
    let a = Venus::start(&srv.addr);
    a.clog_admin();
    fsx::create_dir_all(a.path("tree/deep/deeper")).unwrap();
    let hoarded: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            let dir = ["tree", "tree/deep", "tree/deep/deeper", "tree"][i];
            (format!("{dir}/h{i}"), pattern(2 << 20, 100 + i as u64))
        })
        .collect();
    for (rel, data) in &hoarded {
        fsx::write(a.path(rel), data).unwrap();
    }
    fsx::create_dir(a.path("other")).unwrap();
    for i in 0..6 {
        fsx::write(a.path(format!("other/o{i}")), pattern(2 << 20, 200 + i)).unwrap();
    }

    let tmp = tempfile::tempdir().unwrap();
    let (cache, mount) = dirs(&tmp);
    let b = client(&srv.addr, &cache, &mount, &["--cache-size", "16M"]);
    b.clog_admin();
    let file = tmp.path().join("hoardfile");
    std::fs::write(
        &file,
        format!(
            "# what b needs on the road\na {} 600:d+\nlist\nwalk\n",
            b.path("tree").display()
        ),
    )
    .unwrap();
    let mut args = vec!["--mount", b.mount.to_str().unwrap(), "-f"];
    args.push(file.to_str().unwrap());
    let out = b.tool("hoard", &args, "");
    assert!(
        out.status.success(),
        "hoard -f: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("600:d+"), "hoard list: {text}");
    assert!(text.contains("hoard walk: "), "{text}");
    // More recent, unhoarded reads go past the cache limit: replacement
    // takes them before the hoarded files.
    for i in 0..6 {
        fsx::read(b.path(format!("other/o{i}"))).unwrap();
    }
    // The hoard database survives a restart.
    let b = b.restart();
    let out = b.tool("hoard", &["--mount", b.mount.to_str().unwrap(), "list"], "");
    assert!(String::from_utf8_lossy(&out.stdout).contains("600:d+"));
    b.clog_admin();
    b.cfs_ok("disconnect", &[]);
    for (rel, data) in &hoarded {
        assert_eq!(
            &fsx::read(b.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}")),
            data,
            "{rel}: hoarded"
        );
    }
    let misses = (0..6)
        .filter(|i| errno_of(fsx::read(b.path(format!("other/o{i}")))) == Some(libc::ETIMEDOUT))
        .count();
    assert!(
        misses >= 2,
        "unhoarded files were evicted first ({misses} misses)"
    );
    b.cfs_ok("reconnect", &[]);
}

#[test]
fn write_disconnected_updates_trickle_to_the_server() {
    let srv = Server::start(1);
    let (a, b) = two_clients(&srv);
    a.cfs_ok("writedisconnect", &[]);
    assert_eq!(state(&a), "write-disconnected");
    fsx::write(a.path("wd-file"), b"logged first").unwrap();
    fsx::create_dir(a.path("wd-dir")).unwrap();
    assert!(cml_records(&a) >= 2, "updates are logged, not shipped");
    // They reach the server after aging, without anyone asking.
    assert!(
        eventually(Duration::from_secs(30), || fsx::read(b.path("wd-file"))
            .is_ok_and(|d| d == b"logged first")),
        "the log trickles to the server\n{}",
        a.log_tail()
    );
    assert!(eventually(Duration::from_secs(10), || cml_records(&a) == 0));
    fsx::write(a.path("wd-file2"), b"then write-through").unwrap();
    a.cfs_ok("wr", &[]);
    assert_eq!(state(&a), "connected");
    assert_eq!(cml_records(&a), 0);
    fsx::write(a.path("strong"), b"shipped at once").unwrap();
    assert_eq!(cml_records(&a), 0, "write-through again");
    assert_eq!(
        fsx::read(b.path("wd-file2")).unwrap(),
        b"then write-through"
    );
    assert_eq!(fsx::read(b.path("strong")).unwrap(), b"shipped at once");
}

#[test]
fn conflict_policies_settle_conflicts_unattended() {
    let srv = Server::start(1);
    let a = Venus::start(&srv.addr);
    a.clog_admin();
    let tmp = tempfile::tempdir().unwrap();
    let (cache, mount) = dirs(&tmp);
    let both = format!("{}/both=keep-both", mount.display());
    let b = client(
        &srv.addr,
        &cache,
        &mount,
        &[
            "--conflict-policy",
            "server=server-wins",
            "--conflict-policy",
            &both,
            "--conflict-policy",
            "client=client-wins",
        ],
    );
    b.clog_admin();
    for d in ["server", "both", "client", "manual"] {
        fsx::create_dir(a.path(d)).unwrap();
        fsx::write(a.path(format!("{d}/f")), b"original").unwrap();
        assert_eq!(fsx::read(b.path(format!("{d}/f"))).unwrap(), b"original");
    }
    b.cfs_ok("disconnect", &[]);
    for d in ["server", "both", "client", "manual"] {
        fsx::write(a.path(format!("{d}/f")), b"from the server").unwrap();
        fsx::write(b.path(format!("{d}/f")), b"from the client").unwrap();
    }
    b.cfs_ok("reconnect", &[]);
    assert!(
        eventually(Duration::from_secs(20), || cml_records(&b) == 0),
        "{}",
        b.log_tail()
    );
    let left = conflicts(&b);
    assert_eq!(left.len(), 1, "only the one no policy covers: {left:?}");
    assert!(left[0]["path"].as_str().unwrap().ends_with("manual/f"));
    for v in [&a, &b] {
        reads_eventually(v.path("server/f"), b"from the server", "server-wins");
        reads_eventually(v.path("client/f"), b"from the client", "client-wins");
        reads_eventually(v.path("both/f"), b"from the server", "keep-both");
        reads_eventually(v.path("both/f.local"), b"from the client", "keep-both");
    }
}

#[test]
fn refusals_that_are_not_conflicts_wait_and_conflicts_take_their_subtree() {
    let srv = Server::start(1);
    let (a, b) = two_clients(&srv);
    let long = "l".repeat(250);
    for name in ["doc", long.as_str()] {
        fsx::write(a.path(name), b"original").unwrap();
        assert_eq!(fsx::read(b.path(name)).unwrap(), b"original");
    }
    b.cfs_ok("disconnect", &[]);
    // Made on both sides: the client's directory and what it put in it
    // are one conflict.
    fsx::create_dir(a.path("proj")).unwrap();
    fsx::create_dir(b.path("proj")).unwrap();
    fsx::write(b.path("proj/notes"), b"b's notes").unwrap();
    fsx::write(a.path(&long), b"server side").unwrap();
    fsx::write(b.path(&long), b"local side").unwrap();
    fsx::write(b.path("doc"), b"b's doc").unwrap();
    // A file held open for writing holds back only its own store.
    fsx::write(b.path("held"), b"stored at its first close").unwrap();
    let held = fsx::open_with(b.path("held"), {
        let mut o = std::fs::OpenOptions::new();
        o.append(true);
        o
    })
    .unwrap();
    let mut held = held;
    std::io::Write::write_all(&mut held, b", then more").unwrap();
    fsx::write(b.path("after-held"), b"not held back").unwrap();
    // The volume is locked (a backup, say) when b comes back: no conflict,
    // the log waits.
    let pw = srv.password_file();
    let volutil = |cmd: &str| {
        let out = coda_tests::run(
            "volutil",
            &[
                "--server",
                &srv.addr,
                "--password-file",
                pw.to_str().unwrap(),
                cmd,
                "coda.root",
            ],
            "",
        );
        assert!(out.status.success(), "volutil {cmd}: {out:?}");
    };
    volutil("lock");
    b.cfs_ok("reconnect", &[]);
    assert!(conflicts(&b).is_empty(), "a locked volume is no conflict");
    assert!(cml_records(&b) > 0, "the log waits");
    volutil("unlock");
    assert!(
        eventually(Duration::from_secs(20), || fsx::read(a.path("after-held"))
            .is_ok_and(|d| d == b"not held back")),
        "reintegrated past the open file\n{}",
        b.log_tail()
    );
    assert!(
        cml_records(&b) > 0,
        "the open file's store waits for its close"
    );
    fsx::close(held);
    reads_eventually(
        a.path("held"),
        b"stored at its first close, then more",
        "stored at close",
    );
    assert!(
        eventually(Duration::from_secs(20), || cml_records(&b) == 0),
        "{}",
        b.log_tail()
    );
    let found = conflicts(&b);
    let paths: Vec<&str> = found.iter().map(|c| c["path"].as_str().unwrap()).collect();
    assert_eq!(
        found.len(),
        2,
        "proj (with its notes) and the long name: {paths:?}"
    );
    // keep-both where NAME.local would be too long: the name is shortened.
    repair(&b, &["keep-both", b.path(&long).to_str().unwrap()]);
    let beside = format!("{}.local", &long[..255 - ".local".len()]);
    reads_eventually(a.path(&beside), b"local side", "keep-both, shortened");
    reads_eventually(a.path(&long), b"server side", "keep-both");
    repair(&b, &["keep-server", b.path("proj").to_str().unwrap()]);
    assert!(conflicts(&b).is_empty());
    reads_eventually(b.path("doc"), b"b's doc", "an unrelated store");
}
