//! Server replication end to end: three real `codasrv` on 127.0.0.1, .2
//! and .3 in one cell, a volume replicated on all three, a real mount.
//! A server killed during a workload goes unnoticed by the client; when it
//! comes back, resolution makes its replica identical to the others (the
//! replicas' dumps, as tar archives, are compared byte for byte); a server
//! that lost everything joins again and resolution fills its replica.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coda_tests::ok;
use coda_tests::trio::Trio;
use coda_tests::venus::{eventually, fsx as fs, Venus};

fn mount_replicated(cell: &Trio) -> (Venus, PathBuf) {
    mount_replicas(cell, &["a", "b", "c"])
}

/// `rep` replicated on the servers named, in that order (the first is
/// the one clients read from).
fn mount_replicas(cell: &Trio, names: &[&str]) -> (Venus, PathBuf) {
    let mut args = vec!["create", "rep", "--replicas"];
    args.extend_from_slice(names);
    let made = cell.volutil(0, &args);
    for a in &cell.addrs {
        assert!(made.contains(a.as_str()), "{made}");
    }
    let v = Venus::start(&cell.addrs[0]);
    v.clog_admin();
    let root = v.path("rep");
    let out = v.cfs_ok("makemount", &[root.to_str().unwrap(), "rep"]);
    drop(out);
    (v, root)
}

fn write_files(dir: &Path, prefix: &str, n: usize) {
    fs::create_dir_all(dir).unwrap();
    for i in 0..n {
        fs::write(dir.join(format!("{prefix}{i}")), format!("{prefix} {i}\n")).unwrap();
    }
}

fn check_files(dir: &Path, prefix: &str, n: usize) {
    for i in 0..n {
        let got = fs::read_to_string(dir.join(format!("{prefix}{i}"))).unwrap();
        assert_eq!(got, format!("{prefix} {i}\n"));
    }
}

#[test]
fn a_killed_replica_goes_unnoticed_and_is_resolved_when_it_returns() {
    let mut cell = Trio::start();
    let (v, root) = mount_replicated(&cell);
    let where_ = v.cfs_ok("whereis", &[root.to_str().unwrap()]);
    for a in &cell.addrs {
        assert!(where_.contains(a.as_str()), "whereis: {where_}");
    }
    write_files(&root.join("before"), "f", 20);
    assert!(
        eventually(Duration::from_secs(30), || cell.converged("rep")),
        "replicas differ after updates with all three up"
    );

    // SIGKILL one replica mid-workload: every call still succeeds.
    cell.kill(1);
    write_files(&root.join("during"), "g", 20);
    for i in 0..10 {
        fs::remove_file(root.join("before").join(format!("f{i}"))).unwrap();
    }
    fs::rename(root.join("before/f10"), root.join("during/moved")).unwrap();
    fs::write(root.join("before/f11"), "changed while b was down\n").unwrap();
    let state = v.cfs_ok("listvol", &[root.to_str().unwrap()]);
    assert!(state.contains("connected"), "{state}");
    // Each replica's state: b is left out, the others answer.
    assert!(
        state.contains(&format!("{} (down)", cell.addrs[1])),
        "{state}"
    );
    assert!(state.contains(&format!("{} (up", cell.addrs[2])), "{state}");
    let w = v.cfs_ok("whereis", &[root.to_str().unwrap()]);
    assert!(w.contains(&format!("{} (down)", cell.addrs[1])), "{w}");
    check_files(&root.join("during"), "g", 20);

    // Back: resolution (the servers' sweep, or the client's request)
    // brings its replica up to date.
    cell.start_server(1);
    assert!(
        eventually(Duration::from_secs(60), || cell.converged("rep")),
        "the returned replica was not resolved"
    );
    // cmon shows the resolution work the servers did.
    let mut args = vec!["--once", "--json"];
    args.extend(cell.addrs.iter().map(String::as_str));
    let stats: serde_json::Value = serde_json::from_str(&ok("cmon", &args)).unwrap();
    let field = |f: &str| -> u64 {
        stats
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["resolution"][f].as_u64().unwrap_or(0))
            .sum()
    };
    assert!(field("runs") > 0 && field("objects") > 0, "{stats}");
    let tar = cell.replica(1, "rep").unwrap();
    let listing = String::from_utf8_lossy(&tar);
    assert!(listing.contains("during/moved") && listing.contains("changed while b was down"));
    assert!(!listing.contains("before/f0\0"));

    // Updates after the return reach all three again.
    write_files(&root.join("after"), "h", 5);
    assert!(eventually(Duration::from_secs(30), || cell.converged("rep")));
    check_files(&root.join("after"), "h", 5);
}

#[test]
fn a_server_that_lost_everything_rejoins_and_its_replica_is_filled() {
    let mut cell = Trio::start();
    let (_v, root) = mount_replicated(&cell);
    write_files(&root.join("d"), "x", 30);
    fs::create_dir_all(root.join("d/sub/deeper")).unwrap();
    fs::write(root.join("d/sub/deeper/file"), "deep\n").unwrap();
    assert!(eventually(Duration::from_secs(30), || cell.converged("rep")));

    // Its disk is gone: a new server of the same name joins the cell with
    // the administrator's password and is given an empty replica.
    cell.kill(2);
    std::fs::remove_dir_all(cell.root(2)).unwrap();
    cell.start_server(2);
    assert!(
        eventually(Duration::from_secs(60), || cell.converged("rep")),
        "the new server's replica was not filled"
    );
    let tar = cell.replica(2, "rep").unwrap();
    assert!(String::from_utf8_lossy(&tar).contains("deep\n"));
}

#[test]
fn the_replica_a_client_reads_from_dying_is_never_seen_by_programs() {
    // b first: the client reads from b, and the root volume stays on a.
    let mut cell = Trio::start();
    let (v, root) = mount_replicas(&cell, &["b", "c", "a"]);
    write_files(&root.join("d"), "f", 10);
    assert!(eventually(Duration::from_secs(30), || cell.converged("rep")));

    // A restarted client vouches for nothing it cached: its first calls
    // go to b, which is gone. They go to another replica instead, and no
    // program hears of the timeout.
    let v = v.restart();
    cell.kill(1);
    check_files(&root.join("d"), "f", 10);
    v.clog_admin();
    fs::write(root.join("d/new"), "after b died\n").unwrap();
    assert_eq!(
        fs::read_to_string(root.join("d/new")).unwrap(),
        "after b died\n"
    );
    let state = v.cfs_ok("listvol", &[root.to_str().unwrap()]);
    assert!(
        state.contains(&format!("{} (down)", cell.addrs[1])),
        "{state}"
    );
}

#[test]
fn a_server_listening_on_every_address_is_known_by_its_peers_address() {
    let dir = tempfile::tempdir().unwrap();
    let a = format!("127.0.0.1:{}", coda_tests::free_port("0.0.0.0"));
    let b = format!("127.0.0.2:{}", coda_tests::free_port("127.0.0.2"));
    let peers = format!("a={a},b={b}");
    let listen_a = a.replace("127.0.0.1", "0.0.0.0");
    let _sa = coda_tests::Server::start_peer(&dir.path().join("a"), &listen_a, 1, "a", &peers);
    let _sb = coda_tests::Server::start_peer(&dir.path().join("b"), &b, 1, "b", &peers);
    let pw = dir.path().join("pw");
    std::fs::write(&pw, format!("{}\n", coda_tests::ADMIN_PASSWORD)).unwrap();
    let made = ok(
        "volutil",
        &[
            "--server",
            &a,
            "--password-file",
            pw.to_str().unwrap(),
            "create",
            "rep",
            "--replicas",
            "a",
            "b",
        ],
    );
    assert!(made.contains(&a) && made.contains(&b), "{made}");
    assert!(!made.contains("0.0.0.0"), "{made}");
}

#[test]
fn a_removed_replicated_volume_goes_from_every_server_even_one_that_was_down() {
    let mut cell = Trio::start();
    cell.volutil(0, &["create", "rep", "--replicas", "a", "b", "c"]);
    let held = |cell: &Trio, i| cell.replica(i, "rep").is_some();
    assert!(eventually(Duration::from_secs(30), || (0..3).all(|i| held(&cell, i))));
    cell.kill(2);

    // Removed from one server alone, a replica would be made again: only
    // the SCM removes a replicated volume.
    let refused = cell.volutil_run(1, &["remove", "rep"]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("SCM"), "{err}");
    assert!(held(&cell, 1));

    let out = cell.volutil(0, &["remove", "rep"]);
    assert!(out.contains("removed volume rep"), "{out}");
    assert!(!held(&cell, 0) && !held(&cell, 1));
    for i in 0..2 {
        assert!(!cell.volutil_run(i, &["info", "rep"]).status.success());
    }

    // c held its replica through the removal; it drops it when it comes
    // back, and no server makes the volume again.
    cell.start_server(2);
    assert!(eventually(Duration::from_secs(30), || !held(&cell, 2)));
    std::thread::sleep(2 * coda_vice::update::UPDATE_INTERVAL + Duration::from_secs(1));
    for i in 0..3 {
        assert!(!held(&cell, i), "server {i} made the removed volume again");
    }
    let list = cell.volutil(0, &["list"]);
    assert!(!list.contains("rep"), "{list}");

    // The name is free again.
    cell.volutil(0, &["create", "rep", "--replicas", "a", "b", "c"]);
    assert!(eventually(Duration::from_secs(30), || (0..3).all(|i| held(&cell, i))));
}

#[test]
fn a_client_of_a_removed_replicated_volume_gets_errors_not_its_cache() {
    let cell = Trio::start();
    let (v, root) = mount_replicated(&cell);
    write_files(&root, "f", 3);
    let out = cell.volutil(0, &["remove", "rep"]);
    assert!(out.contains("removed volume rep"), "{out}");

    // Every replica knows no such volume now: that is not one replica
    // waiting to be filled, so nothing is emulated from the cache.
    let f0 = root.join("f0");
    v.cfs_ok("flushobject", &[f0.to_str().unwrap()]);
    let read = fs::read(&f0);
    assert_eq!(
        read.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::NotFound)
    );
    let made = fs::write(root.join("late"), "no server can take this\n");
    assert_eq!(
        made.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::NotFound)
    );
    let state = v.cfs("listvol", &[root.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&state.stdout);
    assert!(!text.contains("disconnected"), "{text}");
}

#[test]
fn servers_must_keep_the_order_of_peers_that_decides_the_scm() {
    let dir = tempfile::tempdir().unwrap();
    let a = format!("127.0.0.1:{}", coda_tests::free_port("127.0.0.1"));
    let b = format!("127.0.0.2:{}", coda_tests::free_port("127.0.0.2"));
    let c = format!("127.0.0.3:{}", coda_tests::free_port("127.0.0.3"));
    let codasrv = |name: &str, listen: &str, peers: &str| {
        let mut cmd = std::process::Command::new(coda_tests::bin("codasrv"));
        let root = dir.path().join(name);
        cmd.args(["--root", root.to_str().unwrap(), "--listen", listen])
            .args(["--cores", "1", "--name", name, "--peers", peers])
            .env("CODA_ADMIN_PASSWORD", coda_tests::ADMIN_PASSWORD);
        let what = format!("codasrv {name}");
        coda_tests::venus::run_command(cmd, "", Duration::from_secs(60), &what)
    };
    let peers = format!("a={a},b={b}");
    let sa = coda_tests::Server::start_peer(&dir.path().join("a"), &a, 1, "a", &peers);

    // A new server listing the servers otherwise than the SCM does is
    // not let in.
    let out = codasrv("b", &b, &format!("a={a},c={c},b={b}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("same order"), "{err}");

    // Restarted, a server may move and gain peers at the end, not see
    // them in another order (b would be the SCM then).
    drop(sa);
    let out = codasrv("a", &a, &format!("b={b},a={a}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a,b, in that order"), "{err}");
    let _sa = coda_tests::Server::start_peer(
        &dir.path().join("a"),
        &a,
        1,
        "a",
        &format!("{peers},c={c}"),
    );

    // A server that made a cell of its own cannot join another one by
    // naming it; it may grow its own, as the first of --peers.
    let solo = dir.path().join("codasrv");
    drop(coda_tests::Server::start_at(&solo, &c, 1));
    let out = codasrv("codasrv", &c, &format!("{peers},codasrv={c}"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("a cell of its own"), "{err}");
    let _grown =
        coda_tests::Server::start_peer(&solo, &c, 1, "codasrv", &format!("codasrv={c},d={b}"));
}

#[test]
fn a_multirpc_to_a_restarted_server_binds_again_and_gets_its_answer() {
    use coda_venus::link::{Link, Principal, Transport};
    let mut cell = Trio::start();
    cell.volutil(0, &["create", "rep", "--replicas", "a", "b", "c"]);
    let link: std::sync::Arc<dyn Transport> =
        std::sync::Arc::new(Link::new(Duration::from_secs(5)).unwrap());
    let addrs: Vec<std::net::SocketAddr> = cell.addrs.iter().map(|a| a.parse().unwrap()).collect();
    let body = coda_rpc2::codec::to_bytes(&coda_proto::vice::VolumeRef::Name("rep".into()));
    let ask = || {
        let none = addrs.iter().map(|_| None).collect();
        let (sub, op) = (
            coda_proto::vice::SUBSYSTEM,
            coda_proto::vice::op::GET_VOLUME_INFO,
        );
        let grace = Duration::from_secs(5);
        let who = Principal::Anyone;
        coda_venus::link::multi_call(&link, &addrs, who, None, sub, op, &body, none, grace)
    };
    let codes = |answers: Vec<Option<coda_venus::link::Answer>>| -> Vec<u16> {
        answers
            .into_iter()
            .map(|a| a.expect("answered").expect("no error").code)
            .collect()
    };
    assert_eq!(codes(ask()), [0, 0, 0]);
    // b forgets every connection; a call without a side effect is bound
    // again and repeated, as a single call is.
    cell.kill(1);
    cell.start_server(1);
    assert_eq!(codes(ask()), [0, 0, 0]);
}
