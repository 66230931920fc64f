//! Server replication across a real network partition: servers a and b
//! and client X on one side, server c and client Y on the other, each side
//! a network namespace, the link between them brought down and up again.
//! - Both halves update different files of one directory: after the link
//!   comes back, resolution merges them with no person, and every replica
//!   ends identical (their dumps, as tar archives, compared byte for byte).
//! - Both halves change the same file, and make one name: the replicas
//!   are left in conflict, which programs see as EIO on those objects
//!   only, `repair list` shows (from the servers, before anyone touches
//!   them), and `repair` settles.

use std::path::{Path, PathBuf};
use std::time::Duration;

use coda_tests::netns::{Partition, Side};
use coda_tests::venus::{eventually, fsx as fs, Venus};
use coda_tests::{replica_tar, run_set_up, Server, Setup, ADMIN_PASSWORD};

const PORT: u16 = 2432;

struct Cell {
    // Dropped in order: clients, servers, then the namespaces.
    clients: Vec<Venus>,
    servers: Vec<Server>,
    peers: String,
    net: Partition,
    dir: tempfile::TempDir,
    addrs: Vec<String>,
    sides: Vec<Side>,
}

impl Cell {
    /// a and b on side A, c on side B; the volume `rep` on all three; X
    /// (side A) and Y (side B) mounted, both reading from a.
    fn start() -> (Cell, PathBuf, PathBuf) {
        let net = Partition::new();
        let sides = vec![Side::A, Side::A, Side::B];
        let addrs: Vec<String> = sides
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{}:{PORT}", net.host(*s, i as u8 + 1)))
            .collect();
        let peers = ["a", "b", "c"]
            .iter()
            .zip(&addrs)
            .map(|(n, a)| format!("{n}={a}"))
            .collect::<Vec<_>>()
            .join(",");
        let dir = tempfile::tempdir().unwrap();
        let mut servers = Vec::new();
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let root = dir.path().join(name);
            let setup = net.side(sides[i]);
            servers.push(Server::start_peer_set_up(
                &root, &addrs[i], name, &peers, &setup,
            ));
        }
        let mut cell = Cell {
            clients: Vec::new(),
            servers,
            peers,
            net,
            dir,
            addrs,
            sides,
        };
        let made = cell.volutil(0, &["create", "rep", "--replicas", "a", "b", "c"]);
        assert!(made.contains(&cell.addrs[2]), "{made}");
        let x = Venus::start_set_up(&cell.addrs[0], Some(cell.net.side(Side::A)));
        x.clog_admin();
        let rx = x.path("rep");
        x.cfs_ok("makemount", &[rx.to_str().unwrap(), "rep"]);
        fs::create_dir(rx.join("shared")).unwrap();
        // Y learns of the volume from c once c's update thread has it.
        let y = Venus::start_set_up(&cell.addrs[2], Some(cell.net.side(Side::B)));
        y.clog_admin();
        let ry = y.path("rep");
        assert!(
            eventually(Duration::from_secs(30), || fs::metadata(ry.join("shared"))
                .is_ok()),
            "Y never saw rep/shared\n{}",
            y.log_tail()
        );
        // Each client knows all three replicas (c learns of the others
        // from the SCM within seconds, and tells Y).
        for (v, root) in [(&x, &rx), (&y, &ry)] {
            assert!(
                eventually(Duration::from_secs(30), || {
                    let state = v.cfs_ok("listvol", &[root.to_str().unwrap()]);
                    cell.addrs
                        .iter()
                        .all(|a| state.contains(&format!("{a} (up")))
                }),
                "{} does not know every replica",
                root.display()
            );
        }
        cell.clients = vec![x, y];
        (cell, rx.join("shared"), ry.join("shared"))
    }

    /// Server `i` killed (SIGKILL) and started again, its volumes lost
    /// (the cell's configuration kept).
    fn restart_without_volumes(&mut self, i: usize) {
        drop(self.servers.remove(i));
        let root = self.dir.path().join(["a", "b", "c"][i]);
        std::fs::remove_dir_all(root.join("shard0")).unwrap();
        let name = ["a", "b", "c"][i];
        let s = Server::start_peer_set_up(&root, &self.addrs[i], name, &self.peers, &self.setup(i));
        self.servers.insert(i, s);
    }

    fn setup(&self, i: usize) -> Setup {
        self.net.side(self.sides[i])
    }

    fn volutil(&self, at: usize, args: &[&str]) -> String {
        let pw = self.dir.path().join("admin.password");
        std::fs::write(&pw, format!("{ADMIN_PASSWORD}\n")).unwrap();
        let mut all = vec!["--server", &self.addrs[at], "--password-file"];
        all.push(pw.to_str().unwrap());
        all.extend_from_slice(args);
        let out = run_set_up("volutil", &all, "", Some(&self.setup(at)));
        assert!(
            out.status.success(),
            "volutil {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Server `i`'s replica of `rep` as a tar archive (None if it cannot
    /// be dumped now).
    fn replica(&self, i: usize) -> Option<Vec<u8>> {
        replica_tar(&self.addrs[i], "rep", self.dir.path(), Some(&self.setup(i)))
    }

    fn converged(&self) -> bool {
        let all: Vec<Option<Vec<u8>>> = (0..3).map(|i| self.replica(i)).collect();
        all.iter().all(|r| r.is_some()) && all.windows(2).all(|w| w[0] == w[1])
    }
}

fn write_files(dir: &Path, prefix: &str, n: usize) {
    for i in 0..n {
        fs::write(dir.join(format!("{prefix}{i}")), format!("{prefix} {i}\n"))
            .unwrap_or_else(|e| panic!("{prefix}{i}: {e}"));
    }
}

fn has_files(dir: &Path, prefix: &str, n: usize) -> bool {
    (0..n).all(|i| {
        fs::read_to_string(dir.join(format!("{prefix}{i}"))).ok() == Some(format!("{prefix} {i}\n"))
    })
}

/// `repair HOW PATH` on `v`, which must succeed.
fn repair(v: &Venus, how: &str, path: &Path) {
    let out = v.tool("repair", &[how, path.to_str().unwrap()], "");
    assert!(
        out.status.success(),
        "repair {how}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        v.log_tail()
    );
}

#[test]
fn partitioned_halves_updating_different_files_are_merged_with_no_person() {
    let (mut cell, sx, sy) = Cell::start();
    write_files(&sx, "base", 3);
    assert!(eventually(Duration::from_secs(30), || cell.converged()));

    cell.net.cut();
    // Y restarts, trusting nothing it cached. Its first read (a file it
    // never fetched) goes to a, now cut off with b: after one timeout, b
    // and c race, c answers, and the program never hears of it (trying b
    // next would cost a second timeout, past what the test allows a call).
    let y = cell.clients.remove(1).restart();
    y.clog_admin();
    cell.clients.push(y);
    assert_eq!(fs::read_to_string(sy.join("base2")).unwrap(), "base 2\n");
    // Each half goes on with the replicas it reaches, without errors.
    write_files(&sx, "x", 10);
    write_files(&sy, "y", 10);
    fs::remove_file(sx.join("base0")).unwrap();
    fs::write(sy.join("base1"), "changed on side B\n").unwrap();
    assert!(has_files(&sx, "x", 10) && has_files(&sy, "y", 10));
    let names = fs::read_dir_names(&sx).unwrap();
    assert!(!names.iter().any(|n| n.starts_with('y')), "{names:?}");
    // The link really is down: each side's replicas hold only its half.
    let a = String::from_utf8_lossy(&cell.replica(0).unwrap()).into_owned();
    let c = String::from_utf8_lossy(&cell.replica(2).unwrap()).into_owned();
    assert!(a.contains("shared/x9") && !a.contains("shared/y0"));
    assert!(c.contains("shared/y9") && !c.contains("shared/x0"));

    cell.net.heal();
    assert!(
        eventually(Duration::from_secs(90), || cell.converged()),
        "the replicas were not resolved after the partition healed"
    );
    let tar = String::from_utf8_lossy(&cell.replica(2).unwrap()).into_owned();
    assert!(tar.contains("shared/x9") && tar.contains("shared/y9"));
    assert!(tar.contains("changed on side B"));
    assert!(!tar.contains("shared/base0"));
    // Both clients see the merged directory.
    for dir in [&sx, &sy] {
        assert!(
            eventually(Duration::from_secs(30), || has_files(dir, "x", 10)
                && has_files(dir, "y", 10)
                && !fs::exists(dir.join("base0")).unwrap_or(true)),
            "{} does not show the merge",
            dir.display()
        );
    }
    assert!(!cell.clients[0]
        .tool("repair", &["list"], "")
        .stdout
        .windows(6)
        .any(|w| w == b"shared"));
}

#[test]
fn the_same_file_changed_on_both_sides_is_a_conflict_that_repair_settles() {
    let (mut cell, sx, sy) = Cell::start();
    fs::write(sx.join("f"), "before\n").unwrap();
    fs::write(sx.join("other"), "untouched\n").unwrap();
    assert!(eventually(Duration::from_secs(30), || cell.converged()));
    assert!(eventually(Duration::from_secs(30), || fs::read_to_string(
        sy.join("f")
    )
    .ok()
        == Some("before\n".into())));

    cell.net.cut();
    fs::write(sx.join("f"), "from side A\n").unwrap();
    fs::write(sy.join("f"), "from side B, longer\n").unwrap();
    // One name made on both sides: both objects stay, the second under
    // a `g.conflict-N` name, marked for repair.
    fs::write(sx.join("g"), "g from side A\n").unwrap();
    fs::write(sy.join("g"), "g from side B\n").unwrap();
    cell.net.heal();

    // Y restarts and touches nothing: what it lists comes from the
    // servers, once resolution has marked the conflicts.
    let y = cell.clients.remove(1).restart();
    y.clog_admin();
    cell.clients.push(y);
    let y = &cell.clients[1];
    let mut list = String::new();
    assert!(
        eventually(Duration::from_secs(90), || {
            list = String::from_utf8(y.tool("repair", &["list"], "").stdout).unwrap();
            list.contains("shared/f") && list.contains("shared/g.conflict-")
        }),
        "Y's repair list never showed the conflicts: {list}\n{}",
        y.log_tail()
    );
    // `PATH: REASON (…)`
    let clash = list
        .lines()
        .find(|l| l.contains("shared/g.conflict-"))
        .and_then(|l| l.split(": ").next())
        .unwrap()
        .to_string();

    // Resolution cannot merge two versions of one file: it stays in
    // conflict, EIO to programs, and nothing else is held up.
    let x = &cell.clients[0];
    assert!(
        eventually(Duration::from_secs(90), || fs::read(sx.join("f"))
            .err()
            .and_then(|e| e.raw_os_error())
            == Some(libc::EIO)),
        "f never showed its conflict: {:?}, {:?}\n{}",
        fs::read_to_string(sx.join("f")),
        (0..3)
            .map(|i| cell
                .replica(i)
                .map(|t| String::from_utf8_lossy(&t).contains("from side A")))
            .collect::<Vec<_>>(),
        x.log_tail()
    );
    assert_eq!(fs::read_to_string(sx.join("other")).unwrap(), "untouched\n");
    fs::write(sx.join("after"), "written during the conflict\n").unwrap();
    let list = String::from_utf8(x.tool("repair", &["list"], "").stdout).unwrap();
    assert!(list.contains("shared/f"), "repair list: {list}");
    let f = sx.join("f");
    let show = x.tool("repair", &["show", f.to_str().unwrap()], "");
    let err = String::from_utf8_lossy(&show.stderr).into_owned();
    let show = String::from_utf8(show.stdout).unwrap();
    for a in &cell.addrs {
        assert!(show.contains(a.as_str()), "repair show: {show} {err}");
    }

    // c cut off again: X still shows the versions it reaches, and c as
    // unreachable; settling needs c, and changes nothing without it.
    cell.net.cut();
    let out = x.tool("repair", &["show", f.to_str().unwrap()], "");
    let show = String::from_utf8(out.stdout).unwrap();
    let line_of = |addr: &str| {
        show.lines()
            .find(|l| l.contains(addr))
            .unwrap_or_else(|| panic!("{addr} not in repair show: {show}"))
            .to_string()
    };
    assert!(out.status.success(), "repair show: {show}");
    for a in &cell.addrs[..2] {
        assert!(line_of(a).contains("bytes"), "repair show: {show}");
    }
    assert!(
        line_of(&cell.addrs[2]).ends_with("(unreachable)"),
        "repair show: {show}"
    );
    let out = x.tool("repair", &["keep-both", f.to_str().unwrap()], "");
    assert!(!out.status.success(), "repair settled without c");
    assert!(!fs::exists(sx.join("f.replica-3")).unwrap());
    cell.net.heal();

    // Keep both: X's replica's version under the name, c's beside it.
    repair(x, "keep-both", &f);
    assert_eq!(fs::read_to_string(sx.join("f")).unwrap(), "from side A\n");
    assert_eq!(
        fs::read_to_string(sx.join("f.replica-3")).unwrap(),
        "from side B, longer\n"
    );
    assert!(
        eventually(Duration::from_secs(60), || cell.converged()),
        "the replicas differ after the repair"
    );
    assert!(
        eventually(Duration::from_secs(30), || fs::read_to_string(sy.join("f"))
            .ok()
            == Some("from side A\n".into())),
        "Y does not see the repaired file"
    );
    let list = String::from_utf8(x.tool("repair", &["list"], "").stdout).unwrap();
    assert!(!list.contains("shared/f"), "still listed: {list}");
    // Updates to it go through again.
    fs::write(sx.join("f"), "after the repair\n").unwrap();
    assert!(eventually(Duration::from_secs(30), || cell.converged()));

    // The clash: both versions are there under their two names; the
    // marked one is EIO until repaired, then readable and no longer listed.
    let y = &cell.clients[1];
    let clash = PathBuf::from(clash);
    assert_eq!(
        fs::read(&clash).err().and_then(|e| e.raw_os_error()),
        Some(libc::EIO)
    );
    repair(y, "keep-server", &clash);
    let read = |p: &Path| {
        fs::read_to_string(p).unwrap_or_else(|e| {
            panic!(
                "{}: {e}\nY: {:?}\nX: {:?}\nreplica a has g: {}\n{}",
                p.display(),
                fs::read_dir_names(&sy),
                fs::read_dir_names(&sx),
                String::from_utf8_lossy(&cell.replica(0).unwrap()).contains("shared/g\0"),
                y.log_tail()
            )
        })
    };
    let mut both = vec![read(&sy.join("g")), read(&clash)];
    both.sort();
    assert_eq!(both, ["g from side A\n", "g from side B\n"]);
    let list = String::from_utf8(y.tool("repair", &["list"], "").stdout).unwrap();
    assert!(!list.contains("g.conflict-"), "still listed: {list}");
    assert!(eventually(Duration::from_secs(60), || cell.converged()));
}

/// A server whose volumes were lost comes back cut off from the others:
/// its new replica is empty until resolution can fill it, and the client
/// that read from it never sees it empty (what it cached serves); once
/// the link is back, resolution fills it.
#[test]
fn a_replica_made_empty_is_read_by_no_one_until_it_is_filled() {
    let (mut cell, sx, sy) = Cell::start();
    write_files(&sx, "base", 5);
    assert!(eventually(Duration::from_secs(30), || cell.converged()));
    assert!(eventually(Duration::from_secs(30), || has_files(
        &sy, "base", 5
    )));

    // Y, cut off with c, reads from c (restarted, it trusts nothing it
    // cached: a times out, then c answers).
    cell.net.cut();
    let y = cell.clients.remove(1).restart();
    y.clog_admin();
    cell.clients.push(y);
    assert!(has_files(&sy, "base", 5));
    // c comes back without its volumes, and cannot reach the others.
    cell.restart_without_volumes(2);
    // Past c's making its replica (once its call to the SCM times out),
    // and past Y's trying c again.
    let y = &cell.clients[1];
    for round in 0..16 {
        let names = fs::read_dir_names(&sy)
            .unwrap_or_else(|e| panic!("round {round}: {e}\n{}", y.log_tail()));
        assert!(
            names.len() >= 5,
            "round {round}: {names:?}\n{}",
            y.log_tail()
        );
        assert!(has_files(&sy, "base", 5), "round {round}\n{}", y.log_tail());
        std::thread::sleep(Duration::from_secs(1));
    }
    cell.net.heal();
    assert!(
        eventually(Duration::from_secs(90), || cell.converged()),
        "c's replica was not filled"
    );
    assert!(String::from_utf8_lossy(&cell.replica(2).unwrap()).contains("base 4\n"));
    assert!(has_files(&sy, "base", 5));
}
