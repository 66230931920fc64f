//! Volume administration end to end: `volutil clone`, `backup`, `dump`,
//! `dumpestimate` and `restore`, and `codadump2tar`, against real `codasrv`
//! processes, with every volume read back through real `venus` mounts.
//!
//! How the trees are compared: a [`Tree`] is taken of a directory through a
//! mount (names, kinds, contents by checksum, mode bits, owner and group,
//! link counts, mtime to the nanosecond, symlink targets, which names share
//! an inode, and each directory's `cfs la`). Restored volumes are always
//! read through a freshly started `venus` (see [`reader`]), and so is the
//! original they are compared with: a restore changes a volume behind the
//! back of any client that cached it, and a fresh cache reads only what the
//! server holds.
//!
//! Every call into a mount goes through `fsx` (each with a timeout); every
//! tool runs under a limit and is killed (its process group) past it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coda_tests::venus::{cell, fsx, Venus};
use coda_tests::{bin, checksum, pattern, Server};

/// How long an administration command on a small volume may run.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a dump or restore of tens of MiB may run.
const BULK_TIMEOUT: Duration = Duration::from_secs(600);
/// How long `volutil` may take to give up once its server is gone.
const DEAD_SERVER_TIMEOUT: Duration = Duration::from_secs(120);

/// A Coda user the test trees give rights to.
const ACL_USER: &str = "dumpuser";

// ---------------------------------------------------------------------------
// Running the tools

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn wait_until(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let began = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if began.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// As the harness's `run_command`, with binary stdin and stdout: runs `cmd`
/// in its own process group, feeding `stdin`, and kills the group and
/// panics after `limit`.
fn run_bytes(mut cmd: Command, stdin: Vec<u8>, limit: Duration, what: &str) -> Output {
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    let pgid = child.id() as i32;
    let mut input = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let Some(status) = wait_until(&mut child, limit) else {
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        let _ = child.wait();
        panic!("{what} ran longer than {limit:?}");
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// Asserts the command succeeded; its stdout as text.
fn succeeded(what: &str, out: &Output) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): stderr {:?} stdout {:?}",
        out.status,
        text(&out.stderr),
        text(&out.stdout).chars().take(2000).collect::<String>()
    );
    text(&out.stdout)
}

/// Asserts the command failed with a one-line `TOOL: reason` on stderr;
/// that line.
fn refused(tool: &str, what: &str, out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{what} must fail but succeeded: stdout {:?} stderr {:?}",
        text(&out.stdout).chars().take(2000).collect::<String>(),
        text(&out.stderr)
    );
    let err = text(&out.stderr);
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: want a one-line reason on stderr, got {err:?}"
    );
    assert!(
        lines[0].starts_with(&format!("{tool}: ")) && lines[0].len() > tool.len() + 2,
        "{what}: the reason must read `{tool}: ...`, got {err:?}"
    );
    lines[0].to_string()
}

/// The `N` of the first `byte N` in an error message.
fn byte_offset(err: &str) -> Option<u64> {
    let at = err.find("byte ")?;
    let digits: String = err[at + 5..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn json(what: &str, s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {s:?}"))
}

fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .len()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// The administration tools, run against one server as `admin` with
/// `--password-file`, exactly as INTERFACE.md writes them. Holds only the
/// address and the file, so it outlives a server restarted at the same
/// address.
struct Admin {
    server: String,
    password_file: PathBuf,
}

impl Admin {
    fn of(srv: &Server) -> Admin {
        Admin {
            server: srv.addr.clone(),
            password_file: srv.password_file(),
        }
    }

    fn command(&self, tool: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin(tool));
        cmd.args(["--server", &self.server, "--password-file"])
            .arg(&self.password_file)
            .args(args);
        cmd
    }

    fn tool_in(&self, tool: &str, args: &[&str], stdin: Vec<u8>, limit: Duration) -> Output {
        run_bytes(
            self.command(tool, args),
            stdin,
            limit,
            &format!("{tool} {args:?}"),
        )
    }

    fn volutil(&self, args: &[&str]) -> Output {
        self.tool_in("volutil", args, Vec::new(), ADMIN_TIMEOUT)
    }

    fn volutil_ok(&self, args: &[&str]) -> String {
        succeeded(&format!("volutil {args:?}"), &self.volutil(args))
    }

    fn create(&self, name: &str) {
        let out = self.volutil_ok(&["create", name]);
        assert!(out.starts_with(&format!("created volume {name}")), "{out}");
    }

    fn add_user(&self, name: &str) {
        let out = self.tool_in("pdbtool", &["user", "add", name], Vec::new(), ADMIN_TIMEOUT);
        succeeded(&format!("pdbtool user add {name}"), &out);
    }

    fn info(&self, name: &str) -> serde_json::Value {
        let out = self.volutil_ok(&["info", name, "--json"]);
        json(&format!("volutil info {name} --json"), &out)
    }

    /// Whether the server knows volume `name`, asked both ways; the two
    /// answers must agree.
    fn exists(&self, name: &str) -> bool {
        let info = self.volutil(&["info", name]);
        let list = json("volutil list --json", &self.volutil_ok(&["list", "--json"]));
        let listed = list
            .as_array()
            .expect("volutil list --json is an array")
            .iter()
            .any(|v| v["name"].as_str() == Some(name));
        assert_eq!(
            info.status.success(),
            listed,
            "volutil info {name} ({}, {:?}) and volutil list ({list}) disagree",
            info.status,
            text(&info.stderr)
        );
        listed
    }

    /// `volutil dump NAME [--since BASE] -o OUT`; the dump's size.
    fn dump(&self, name: &str, since: Option<&Path>, out: &Path) -> u64 {
        let mut args = vec!["dump", name];
        if let Some(base) = since {
            args.extend(["--since", s(base)]);
        }
        args.extend(["-o", s(out)]);
        let o = self.tool_in("volutil", &args, Vec::new(), BULK_TIMEOUT);
        succeeded(&format!("volutil {args:?}"), &o);
        let len = file_len(out);
        assert!(len > 0, "volutil {args:?} wrote an empty dump");
        len
    }

    fn restore(&self, file: &Path, name: &str) -> Output {
        self.tool_in(
            "volutil",
            &["restore", s(file), name],
            Vec::new(),
            BULK_TIMEOUT,
        )
    }

    fn restore_ok(&self, file: &Path, name: &str) {
        let out = self.restore(file, name);
        succeeded(&format!("volutil restore {} {name}", file.display()), &out);
    }
}

/// A fresh client of `srv` logged in as admin: it has cached nothing, so it
/// shows what the server holds now.
fn reader(srv: &Server) -> Venus {
    let v = Venus::start(&srv.addr);
    v.clog_admin();
    v
}

/// A new volume mounted (as admin) at `rel` below the top of `v`'s mount.
fn mounted_volume(admin: &Admin, v: &Venus, name: &str, rel: &str) -> PathBuf {
    admin.create(name);
    mount(v, name, rel)
}

fn mount(v: &Venus, name: &str, rel: &str) -> PathBuf {
    let mp = v.path(rel);
    v.cfs_ok("makemount", &[s(&mp), name]);
    let md = fsx::metadata(&mp).unwrap();
    assert!(md.is_dir(), "the mount point of {name} is a directory");
    mp
}

fn at(secs: u64, nanos: u32) -> SystemTime {
    UNIX_EPOCH + Duration::new(secs, nanos)
}

fn set_mtime(p: &Path, secs: u64, nanos: u32) {
    fsx::utimes(p, at(secs, nanos), at(secs, nanos)).unwrap();
}

fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("volume-admin.")
        .tempdir()
        .expect("scratch dir")
}

// ---------------------------------------------------------------------------
// Trees

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

/// What a comparison looks at for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: Kind,
    /// Permission bits (`st_mode & 0o7777`).
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    /// Seconds and nanoseconds.
    mtime: (i64, i64),
    /// Files: the length read and its checksum.
    size: u64,
    hash: u64,
    /// Symlinks: the target text.
    target: String,
    /// Files: the first path (in sorted order) with the same inode, so two
    /// names of one file carry the same value in either tree.
    link_group: String,
    /// Directories read through a client: `cfs la`, see [`acl_entries`].
    acl: String,
}

/// `cfs la` text with each section's entries sorted: rights do not depend
/// on the order of entries, so a restore need not keep it.
fn acl_entries(listing: &str) -> String {
    let (mut positive, mut negative) = (Vec::new(), Vec::new());
    let mut in_negative = false;
    for line in listing.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line == "Negative rights:" {
            in_negative = true;
        } else if in_negative {
            negative.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        } else {
            positive.push(line.split_whitespace().collect::<Vec<_>>().join(" "));
        }
    }
    positive.sort();
    negative.sort();
    format!("{}; negative: {}", positive.join(", "), negative.join(", "))
}

/// Relative path (`.` for the top) to what is there.
type Tree = BTreeMap<String, Node>;

/// Everything under `top`, read with timed calls; ACLs through `acl_from`
/// when `top` is in a Coda mount.
fn snapshot(top: &Path, acl_from: Option<&Venus>) -> Tree {
    let mut tree = Tree::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut todo = vec![String::from(".")];
    while let Some(rel) = todo.pop() {
        let path = if rel == "." {
            top.to_path_buf()
        } else {
            top.join(&rel)
        };
        let md = fsx::symlink_metadata(&path)
            .unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File
        } else if ft.is_symlink() {
            Kind::Symlink
        } else {
            Kind::Other
        };
        let mut node = Node {
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            nlink: md.nlink(),
            mtime: (md.mtime(), md.mtime_nsec()),
            size: 0,
            hash: 0,
            target: String::new(),
            link_group: String::new(),
            acl: String::new(),
        };
        match kind {
            Kind::Dir => {
                let mut names = fsx::read_dir_names(&path)
                    .unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()));
                names.sort();
                for name in names {
                    todo.push(if rel == "." {
                        name
                    } else {
                        format!("{rel}/{name}")
                    });
                }
                if let Some(v) = acl_from {
                    node.acl = acl_entries(&v.cfs_ok("la", &[s(&path)]));
                }
            }
            Kind::File => {
                let data =
                    fsx::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                node.size = data.len() as u64;
                node.hash = checksum(&data);
                inodes.entry(md.ino()).or_default().push(rel.clone());
            }
            Kind::Symlink => {
                node.target = fsx::read_link(&path)
                    .unwrap_or_else(|e| panic!("readlink {}: {e}", path.display()))
                    .to_string_lossy()
                    .into_owned();
            }
            Kind::Other => {}
        }
        tree.insert(rel, node);
    }
    for names in inodes.values() {
        let first = names.iter().min().unwrap().clone();
        for n in names {
            tree.get_mut(n).unwrap().link_group = first.clone();
        }
    }
    tree
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    /// Two Coda trees: everything [`Node`] holds.
    Exact,
    /// A Coda tree and a local extraction by GNU tar: no ACLs, owners, link
    /// counts of directories, nanoseconds, symlinks' own mode and times, nor
    /// the top directory (its attributes belong to where it was extracted).
    Tar,
}

fn view(n: &Node, how: Compare) -> Node {
    let mut n = n.clone();
    if how == Compare::Tar {
        n.acl.clear();
        n.uid = 0;
        n.gid = 0;
        n.mtime.1 = 0;
        if n.kind == Kind::Dir {
            n.nlink = 0;
        }
        if n.kind == Kind::Symlink {
            n.mode = 0;
            n.mtime = (0, 0);
        }
    }
    n
}

/// What differs between `want` and `got`, one line each.
fn differences(want: &Tree, got: &Tree, how: Compare) -> Vec<String> {
    let skip = |k: &str| how == Compare::Tar && k == ".";
    let mut out = Vec::new();
    for (k, w) in want {
        if skip(k) {
            continue;
        }
        match got.get(k) {
            None => out.push(format!("{k:?}: missing (want {w:?})")),
            Some(g) => {
                let (w, g) = (view(w, how), view(g, how));
                if w != g {
                    out.push(format!("{k:?}:\n    want {w:?}\n    got  {g:?}"));
                }
            }
        }
    }
    for (k, g) in got {
        if !skip(k) && !want.contains_key(k) {
            out.push(format!("{k:?}: unexpected {g:?}"));
        }
    }
    out
}

fn assert_same_tree(what: &str, want: &Tree, got: &Tree, how: Compare) {
    let diff = differences(want, got, how);
    assert!(
        diff.is_empty(),
        "{what}: {} difference(s) over {} names:\n{}",
        diff.len(),
        want.len(),
        diff.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// The 200-byte name in every test tree.
fn long_name() -> String {
    format!("{}-200", "n".repeat(196))
}

const UNICODE_NAME: &str = "with space and ünïcødé ☃.txt";

/// Builds below `top` (a volume's root, through `v`) a tree with every kind
/// of object: nested and empty directories, empty, small and `big_len`-byte
/// files, relative, absolute and dangling symlinks, a file with two names,
/// unusual modes, fixed past mtimes (also of directories, set after filling
/// them), ACLs naming [`ACL_USER`] (positive and negative) and
/// `System:AnyUser`, names with spaces, unicode and 200 bytes.
fn build_tree(v: &Venus, top: &Path, big_len: usize) {
    let p = |rel: &str| top.join(rel);
    for d in [
        "a",
        "a/b",
        "a/b/c",
        "a/empty-dir",
        "links",
        "hard",
        "modes",
        "acl-user",
        "acl-any",
        "old",
    ] {
        fsx::create_dir(p(d)).unwrap();
    }
    fsx::write(p("empty"), b"").unwrap();
    fsx::write(p("small.txt"), b"hello, coda\n").unwrap();
    fsx::write(p("big.bin"), pattern(big_len, 1)).unwrap();
    fsx::write(p(UNICODE_NAME), "unicode contents ✓\n").unwrap();
    fsx::write(p(&long_name()), b"a long name\n").unwrap();
    fsx::write(p("a/b/mid.txt"), pattern(3000, 2)).unwrap();
    fsx::write(p("a/b/c/deep.txt"), b"deep\n").unwrap();
    fsx::symlink("../small.txt", p("links/rel")).unwrap();
    fsx::symlink("/etc/hostname", p("links/abs")).unwrap();
    fsx::symlink("no/such/target", p("links/dangling")).unwrap();
    fsx::symlink("../a/b", p("links/to-dir")).unwrap();
    fsx::write(p("hard/one"), pattern(5000, 3)).unwrap();
    fsx::hard_link(p("hard/one"), p("hard/two")).unwrap();
    fsx::write(p("modes/private"), b"secret\n").unwrap();
    fsx::set_permissions(p("modes/private"), 0o600).unwrap();
    fsx::write(p("modes/exec"), b"#!/bin/sh\necho hi\n").unwrap();
    fsx::set_permissions(p("modes/exec"), 0o755).unwrap();
    fsx::write(p("modes/readonly"), b"look, don't touch\n").unwrap();
    fsx::set_permissions(p("modes/readonly"), 0o444).unwrap();
    fsx::set_permissions(p("modes"), 0o750).unwrap();
    fsx::write(p("acl-user/f"), b"for dumpuser\n").unwrap();
    v.cfs_ok("sa", &[s(&p("acl-user")), ACL_USER, "rl"]);
    v.cfs_ok("sa", &["--negative", s(&p("acl-user")), ACL_USER, "w"]);
    v.cfs_ok("sa", &[s(&p("acl-any")), "System:AnyUser", "rlidwk"]);
    fsx::write(p("old/past"), b"from long ago\n").unwrap();
    fsx::write(p("old/also-past"), b"also\n").unwrap();
    set_mtime(&p("old/past"), 1_000_000_000, 123_456_789);
    set_mtime(&p("old/also-past"), 1_000_000_001, 0);
    set_mtime(&p("a/b/c/deep.txt"), 1_200_000_000, 5);
    // Directories last: filling them would move their mtimes again.
    set_mtime(&p("old"), 1_100_000_000, 987_654_321);
    set_mtime(&p("a/b/c"), 1_150_000_000, 0);
    let md = fsx::metadata(p("old")).unwrap();
    assert_eq!(md.mtime(), 1_100_000_000, "utimes on a directory");
}

/// The first round of changes after a full dump: one of each kind of update.
fn change_round_one(top: &Path) {
    let p = |rel: &str| top.join(rel);
    fsx::write(p("small.txt"), b"hello again, coda\n").unwrap();
    fsx::append(p("a/b/mid.txt"), b"appended\n").unwrap();
    fsx::remove_file(p("empty")).unwrap();
    // A directory tree goes.
    fsx::remove_file(p("a/b/c/deep.txt")).unwrap();
    fsx::remove_dir(p("a/b/c")).unwrap();
    // A file moves across directories; a directory is renamed.
    fsx::rename(p("modes/exec"), p("a/exec-moved")).unwrap();
    fsx::rename(p("links"), p("symlinks")).unwrap();
    // New files and a new directory.
    fsx::create_dir(p("new")).unwrap();
    fsx::write(p("new/one.txt"), b"one\n").unwrap();
    fsx::write(p("new/two.txt"), b"two\n").unwrap();
    fsx::write(p("added.txt"), b"added\n").unwrap();
    set_mtime(&p("new/one.txt"), 1_300_000_000, 42);
    fsx::set_permissions(p("modes/private"), 0o640).unwrap();
    fsx::hard_link(p("hard/one"), p("hard/three")).unwrap();
}

/// The second round: the big file, a name of a linked file, a rename over
/// an existing name, ACLs, directory times, a deep new directory.
fn change_round_two(v: &Venus, top: &Path, big_len: usize) {
    let p = |rel: &str| top.join(rel);
    fsx::write(p("big.bin"), pattern(big_len, 7)).unwrap();
    fsx::remove_file(p("hard/one")).unwrap();
    fsx::rename(p("new/two.txt"), p("added.txt")).unwrap();
    v.cfs_ok("sa", &[s(&p("acl-user")), ACL_USER, "none"]);
    v.cfs_ok("sa", &[s(&p("acl-any")), "System:AnyUser", "rl"]);
    fsx::create_dir_all(p("new/x/y/z")).unwrap();
    fsx::write(p("new/x/y/z/leaf"), pattern(10_000, 9)).unwrap();
    set_mtime(&p("new"), 1_400_000_000, 1);
}

// ---------------------------------------------------------------------------

#[test]
fn dump_restore_gives_an_identical_tree() {
    let c = cell();
    let admin = Admin::of(&c.srv);
    admin.add_user(ACL_USER);
    let work = scratch();
    let src = mounted_volume(&admin, &c.v, "u.dump", "src");
    build_tree(&c.v, &src, 5 << 20);

    let full = work.path().join("full.dump");
    let full_len = admin.dump("u.dump", None, &full);
    assert!(
        full_len > 5 << 20,
        "a full dump holds the 5 MiB file: {full_len} bytes"
    );

    // The estimate: one number on one line, and {"bytes": N}, both close.
    let est = admin.volutil_ok(&["dumpestimate", "u.dump"]);
    assert_eq!(
        est.lines().count(),
        1,
        "dumpestimate prints one line: {est:?}"
    );
    let est: u64 = est
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("dumpestimate prints a byte count: {est:?}"));
    let est_json = json(
        "volutil dumpestimate --json",
        &admin.volutil_ok(&["dumpestimate", "u.dump", "--json"]),
    );
    let est_json = est_json["bytes"]
        .as_u64()
        .unwrap_or_else(|| panic!("dumpestimate --json has a number `bytes`: {est_json}"));
    for (what, e) in [("text", est), ("--json", est_json)] {
        let slack = full_len / 20 + 4096;
        assert!(
            e.abs_diff(full_len) <= slack,
            "dumpestimate ({what}) says {e} bytes, the dump is {full_len} (allowed ±{slack})"
        );
    }

    // The same dump on stdout.
    let out = admin.tool_in("volutil", &["dump", "u.dump"], Vec::new(), BULK_TIMEOUT);
    succeeded("volutil dump u.dump (to stdout)", &out);
    let stdout_dump = out.stdout;
    let stdout_len = stdout_dump.len() as u64;
    assert!(
        stdout_len.abs_diff(full_len) <= full_len / 100 + 4096,
        "a dump to stdout ({stdout_len} bytes) and with -o ({full_len} bytes) differ in size"
    );

    // Restored from the file and from stdin (`-`), each a new volume.
    admin.restore_ok(&full, "u.restored");
    let out = admin.tool_in(
        "volutil",
        &["restore", "-", "u.from-stdin"],
        stdout_dump,
        BULK_TIMEOUT,
    );
    succeeded("volutil restore - u.from-stdin", &out);
    for name in ["u.restored", "u.from-stdin"] {
        let info = admin.info(name);
        assert_eq!(info["kind"], "read-write", "a restored volume: {info}");
        assert_eq!(
            info["files"],
            admin.info("u.dump")["files"],
            "{name} has as many files as u.dump"
        );
    }
    // A full dump never lands on an existing volume.
    let before = admin.info("u.restored");
    let again = admin.restore(&full, "u.restored");
    refused("volutil", "a full restore over an existing volume", &again);
    let after = admin.info("u.restored");
    assert_eq!(before["id"], after["id"]);
    assert_eq!(before["files"], after["files"]);
    assert_eq!(before["bytes"], after["bytes"]);

    mount(&c.v, "u.restored", "restored");
    mount(&c.v, "u.from-stdin", "from-stdin");
    let r = reader(&c.srv);
    let want = snapshot(&r.path("src"), Some(&r));
    // The tree is what build_tree made (so the comparison is not vacuous).
    for k in [
        "big.bin",
        "links/abs",
        "hard/two",
        "old/past",
        UNICODE_NAME,
        long_name().as_str(),
    ] {
        assert!(want.contains_key(k), "the source tree has {k:?}");
    }
    assert_eq!(want["hard/one"].link_group, want["hard/two"].link_group);
    assert_eq!(want["hard/one"].nlink, 2, "{:?}", want["hard/one"]);
    assert_eq!(want["links/abs"].target, "/etc/hostname");
    assert_eq!(want["modes/private"].mode, 0o600);
    assert_eq!(want["modes/exec"].mode, 0o755);
    assert_eq!(want["old/past"].mtime.0, 1_000_000_000);
    assert_eq!(want["old"].mtime.0, 1_100_000_000);
    assert!(
        want["acl-user"].acl.contains(ACL_USER),
        "{:?}",
        want["acl-user"].acl
    );
    assert_eq!(want["big.bin"].size, 5 << 20);
    for rel in ["restored", "from-stdin"] {
        let got = snapshot(&r.path(rel), Some(&r));
        assert_same_tree(
            &format!("the volume restored as {rel}"),
            &want,
            &got,
            Compare::Exact,
        );
    }
    // The restored copy is a volume of its own: writing it leaves the
    // original alone.
    fsx::write(c.v.path("restored/small.txt"), b"changed in the copy\n").unwrap();
    assert_eq!(
        fsx::read(c.v.path("src/small.txt")).unwrap(),
        b"hello, coda\n"
    );
}

/// A refused incremental says why: the volume does not hold its base.
fn assert_names_mismatch(why: &str) {
    let lower = why.to_lowercase();
    assert!(
        ["match", "base", "changed", "appl"]
            .iter()
            .any(|w| lower.contains(w)),
        "the refusal names the mismatch (its base, or a change since): {why:?}"
    );
}

#[test]
fn incremental_dump_restored_over_the_full_gives_the_changed_tree() {
    let c = cell();
    let admin = Admin::of(&c.srv);
    admin.add_user(ACL_USER);
    let work = scratch();
    let big_len = 4 << 20;
    let orig = mounted_volume(&admin, &c.v, "u.inc", "orig");
    build_tree(&c.v, &orig, big_len);

    let full = work.path().join("full.dump");
    let full_len = admin.dump("u.inc", None, &full);
    let at_full = {
        let r = reader(&c.srv);
        snapshot(&r.path("orig"), Some(&r))
    };
    // R takes every dump in turn; R2 stays at the full dump; R3 is changed
    // after its restore.
    for name in ["u.r", "u.r2", "u.r3"] {
        admin.restore_ok(&full, name);
    }

    change_round_one(&orig);
    let inc = work.path().join("inc.dump");
    let inc_len = admin.dump("u.inc", Some(&full), &inc);
    assert!(
        inc_len < full_len / 2,
        "an incremental dump of small changes ({inc_len} bytes) must not carry the \
         unchanged {big_len}-byte file (full dump: {full_len} bytes)"
    );
    // Applied over a volume that does not exist: refused.
    let none = admin.restore(&inc, "u.no-such-volume");
    refused("volutil", "an incremental over a missing volume", &none);
    assert!(!admin.exists("u.no-such-volume"));

    let out = admin.restore(&inc, "u.r");
    succeeded("volutil restore inc.dump u.r", &out);
    mount(&c.v, "u.r", "r");
    {
        let r = reader(&c.srv);
        let want = snapshot(&r.path("orig"), Some(&r));
        let got = snapshot(&r.path("r"), Some(&r));
        assert!(want.contains_key("symlinks/rel") && !want.contains_key("links"));
        assert!(want.contains_key("a/exec-moved") && !want.contains_key("a/b/c"));
        assert_same_tree(
            "u.r after the incremental dump",
            &want,
            &got,
            Compare::Exact,
        );
    }

    // A volume changed since its restore does not take the incremental.
    let r3 = mount(&c.v, "u.r3", "r3");
    fsx::write(r3.join("written-after-restore"), b"local change\n").unwrap();
    let out = admin.restore(&inc, "u.r3");
    let why = refused("volutil", "an incremental over a changed volume", &out);
    assert_names_mismatch(&why);

    // A second incremental, relative to the first.
    change_round_two(&c.v, &orig, big_len);
    let inc2 = work.path().join("inc2.dump");
    admin.dump("u.inc", Some(&inc), &inc2);
    // It does not apply over a volume holding only the full dump...
    let out = admin.restore(&inc2, "u.r2");
    let why = refused(
        "volutil",
        "a second incremental over a volume holding the full dump",
        &out,
    );
    assert_names_mismatch(&why);
    // ...but over R it does.
    let out = admin.restore(&inc2, "u.r");
    succeeded("volutil restore inc2.dump u.r", &out);
    mount(&c.v, "u.r2", "r2");

    let r = reader(&c.srv);
    let want = snapshot(&r.path("orig"), Some(&r));
    assert!(want.contains_key("new/x/y/z/leaf") && !want.contains_key("hard/one"));
    let got = snapshot(&r.path("r"), Some(&r));
    assert_same_tree(
        "u.r after the second incremental dump",
        &want,
        &got,
        Compare::Exact,
    );
    // R2 was left exactly as the full dump made it...
    let got = snapshot(&r.path("r2"), Some(&r));
    assert_same_tree(
        "u.r2 after a refused incremental",
        &at_full,
        &got,
        Compare::Exact,
    );
    // ...so the dumps apply to it in order.
    admin.restore_ok(&inc, "u.r2");
    admin.restore_ok(&inc2, "u.r2");
    let r = reader(&c.srv);
    let got = snapshot(&r.path("r2"), Some(&r));
    assert_same_tree(
        "u.r2 after both incremental dumps",
        &want,
        &got,
        Compare::Exact,
    );
    // R3 keeps what was written to it.
    assert_eq!(
        fsx::read(r.path("r3/written-after-restore")).unwrap(),
        b"local change\n"
    );
}

#[test]
fn codadump2tar_output_is_read_by_gnu_tar() {
    let c = cell();
    let admin = Admin::of(&c.srv);
    admin.add_user(ACL_USER);
    let work = scratch();
    let top = mounted_volume(&admin, &c.v, "u.tar", "t");
    build_tree(&c.v, &top, 1 << 20);
    // Paths past ustar's 100-byte name field: deep, and one long name.
    let deep =
        top.join("deep-directory-number-one/deep-directory-number-two/deep-directory-number-three");
    fsx::create_dir_all(&deep).unwrap();
    let deep_file = deep.join("a-file-whose-whole-path-is-well-past-one-hundred-bytes.txt");
    fsx::write(&deep_file, b"deep and long\n").unwrap();
    fsx::write(top.join("x".repeat(150)), b"a 150-byte name\n").unwrap();
    fsx::hard_link(&deep_file, deep.join("its-hard-link")).unwrap();
    fsx::symlink("../../../small.txt", deep.join("up-link")).unwrap();

    let dump = work.path().join("t.dump");
    admin.dump("u.tar", None, &dump);
    let tar = work.path().join("t.tar");
    let out = run_bytes(
        {
            let mut cmd = Command::new(bin("codadump2tar"));
            cmd.args(["-i", s(&dump), "-o", s(&tar)]);
            cmd
        },
        Vec::new(),
        BULK_TIMEOUT,
        "codadump2tar -i t.dump -o t.tar",
    );
    succeeded("codadump2tar -i -o", &out);
    let bytes = std::fs::read(&tar).unwrap();
    assert!(
        bytes.len() >= 1024 && bytes.len() % 512 == 0,
        "a tar is whole 512-byte blocks: {} bytes",
        bytes.len()
    );
    assert_eq!(
        &bytes[257..265],
        b"ustar\x0000",
        "a POSIX (pax/ustar) header, not GNU's `ustar  `"
    );

    let r = reader(&c.srv);
    let want = snapshot(&r.path("t"), None);
    let mut want_names: Vec<String> = want.keys().filter(|k| *k != ".").cloned().collect();
    want_names.sort();
    assert!(
        want_names.iter().any(|n| n.len() > 100),
        "the tree has a path past 100 bytes"
    );

    let list = |tar: &Path| -> Vec<String> {
        let out = run_bytes(
            {
                let mut cmd = Command::new("tar");
                cmd.arg("tf").arg(tar);
                cmd
            },
            Vec::new(),
            ADMIN_TIMEOUT,
            "tar tf",
        );
        succeeded("tar tf", &out);
        assert!(
            out.stderr.is_empty(),
            "GNU tar reads the archive without complaint: {:?}",
            text(&out.stderr)
        );
        let mut names: Vec<String> = text(&out.stdout)
            .lines()
            .map(|l| l.trim_start_matches("./").trim_end_matches('/').to_string())
            .filter(|l| !l.is_empty() && l != ".")
            .collect();
        for n in &names {
            assert!(
                !n.starts_with('/') && !n.split('/').any(|c| c == ".."),
                "members are relative to the volume root: {n:?}"
            );
        }
        names.sort();
        names
    };
    assert_eq!(list(&tar), want_names, "tar tf lists every path once");

    // stdin to stdout gives an archive listing the same.
    let out = run_bytes(
        Command::new(bin("codadump2tar")),
        std::fs::read(&dump).unwrap(),
        BULK_TIMEOUT,
        "codadump2tar < t.dump",
    );
    succeeded("codadump2tar (stdin to stdout)", &out);
    let piped = work.path().join("piped.tar");
    std::fs::write(&piped, &out.stdout).unwrap();
    assert_eq!(list(&piped), want_names, "the piped archive lists the same");

    let dest = work.path().join("x");
    std::fs::create_dir(&dest).unwrap();
    let out = run_bytes(
        {
            let mut cmd = Command::new("tar");
            cmd.arg("xf").arg(&tar).arg("-C").arg(&dest);
            cmd
        },
        Vec::new(),
        ADMIN_TIMEOUT,
        "tar xf",
    );
    succeeded("tar xf", &out);
    assert!(
        out.stderr.is_empty(),
        "GNU tar extracts without complaint: {:?}",
        text(&out.stderr)
    );
    let got = snapshot(&dest, None);
    assert_same_tree("the tree GNU tar extracted", &want, &got, Compare::Tar);
    let deep_rel =
        "deep-directory-number-one/deep-directory-number-two/deep-directory-number-three";
    assert_eq!(
        got[&format!("{deep_rel}/its-hard-link")].nlink,
        2,
        "the hard link is extracted as one file with two names"
    );
}

#[test]
fn a_truncated_or_corrupted_dump_is_refused_with_its_offset() {
    let c = cell();
    let admin = Admin::of(&c.srv);
    admin.add_user(ACL_USER);
    let work = scratch();
    let orig = mounted_volume(&admin, &c.v, "u.src", "orig");
    build_tree(&c.v, &orig, 2 << 20);
    let full = work.path().join("full.dump");
    admin.dump("u.src", None, &full);
    let good = std::fs::read(&full).unwrap();
    let len = good.len();

    // Each damaged copy: refused with the offset, and nothing left behind.
    let refuse = |bad: Vec<u8>, what: &str, target: &str| -> String {
        let path = work.path().join("bad.dump");
        let bad_len = bad.len() as u64;
        std::fs::write(&path, bad).unwrap();
        let out = admin.restore(&path, target);
        let why = refused("volutil", &format!("restore of {what}"), &out);
        let offset = byte_offset(&why)
            .unwrap_or_else(|| panic!("restore of {what}: the reason names `byte N`: {why:?}"));
        assert!(
            offset <= bad_len,
            "restore of {what}: byte {offset} is past the end ({bad_len} bytes): {why:?}"
        );
        why
    };
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for cut in [0, 8, 12, 64, len / 2, len - 1] {
        cases.push((
            format!("a dump truncated to {cut} of {len} bytes"),
            good[..cut].to_vec(),
        ));
    }
    for at in [30, len / 2, len - 5] {
        let mut bad = good.clone();
        bad[at] ^= 0xff;
        cases.push((format!("a dump with byte {at} of {len} flipped"), bad));
    }
    for (what, bad) in cases {
        refuse(bad, &what, "u.bad");
        assert!(
            !admin.exists("u.bad"),
            "after a refused restore of {what}, no volume u.bad exists"
        );
    }
    // The intact dump restores under the same name.
    admin.restore_ok(&full, "u.bad");

    // A damaged incremental leaves its target exactly as it was.
    admin.restore_ok(&full, "u.target");
    mount(&c.v, "u.target", "target");
    change_round_one(&orig);
    let inc = work.path().join("inc.dump");
    admin.dump("u.src", Some(&full), &inc);
    let good_inc = std::fs::read(&inc).unwrap();
    let ilen = good_inc.len();
    let before = {
        let r = reader(&c.srv);
        snapshot(&r.path("target"), Some(&r))
    };
    let info_before = admin.info("u.target");
    let mut flipped = good_inc.clone();
    flipped[ilen / 2] ^= 0xff;
    let mut flipped_end = good_inc.clone();
    flipped_end[ilen - 5] ^= 0xff;
    for (what, bad) in [
        ("an incremental cut in half", good_inc[..ilen / 2].to_vec()),
        (
            "an incremental one byte short",
            good_inc[..ilen - 1].to_vec(),
        ),
        ("an incremental with a middle byte flipped", flipped),
        (
            "an incremental with a byte near its end flipped",
            flipped_end,
        ),
    ] {
        refuse(bad, what, "u.target");
        let info = admin.info("u.target");
        for k in ["id", "kind", "locked", "files", "bytes"] {
            assert_eq!(
                info[k], info_before[k],
                "after {what}, u.target's {k} is unchanged: {info} vs {info_before}"
            );
        }
    }
    let r = reader(&c.srv);
    let after = snapshot(&r.path("target"), Some(&r));
    assert_same_tree(
        "u.target after refused incrementals",
        &before,
        &after,
        Compare::Exact,
    );
    // Still exactly the full dump: the intact incremental applies.
    admin.restore_ok(&inc, "u.target");
    let r = reader(&c.srv);
    assert_same_tree(
        "u.target after the intact incremental",
        &snapshot(&r.path("orig"), Some(&r)),
        &snapshot(&r.path("target"), Some(&r)),
        Compare::Exact,
    );
}

/// Sum of the sizes of the regular files under `dir` (like `du -sb`, but
/// apparent sizes of files only): where a server keeps containers.
fn container_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.path().symlink_metadata() else {
                continue;
            };
            if md.is_dir() {
                todo.push(e.path());
            } else if md.is_file() {
                total += md.len();
            }
        }
    }
    total
}

/// A write into a snapshot: it must fail with EROFS or EACCES.
fn assert_read_only<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>) {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}) in a read-only volume"),
        Err(e) => assert!(
            matches!(e.raw_os_error(), Some(libc::EROFS) | Some(libc::EACCES)),
            "{what}: want EROFS or EACCES, got {e}"
        ),
    }
}

/// open(2) with `flags`, write(2) of `data`, then close(2), whose error
/// counts too (std's `File` drops close errors, and a client may refuse a
/// store only when the file is closed); the first error.
fn write_and_close(p: &Path, flags: libc::c_int, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let data = data.to_vec();
    fsx::call(format!("open, write, close {}", p.display()), move || {
        let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_WRONLY | libc::O_CLOEXEC, 0o644) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        let written = if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        };
        let closed = if unsafe { libc::close(fd) } != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        };
        written.and(closed)
    })
}

/// Every kind of write into the snapshot mounted at `snap` fails (at the
/// latest when the file is closed), and nothing changes, as seen by the
/// client that tried.
fn assert_writes_refused(snap: &Path, small_contents: &[u8]) {
    let small = snap.join("small");
    assert_read_only(
        "overwrite a file",
        write_and_close(&small, libc::O_TRUNC, b"written into a snapshot"),
    );
    assert_eq!(
        text(&fsx::read(&small).unwrap()),
        text(small_contents),
        "a refused overwrite leaves the file as it was"
    );
    assert_read_only(
        "append to a file",
        write_and_close(&small, libc::O_APPEND, b"more"),
    );
    assert_read_only(
        "create a file",
        write_and_close(
            &snap.join("new-in-snapshot"),
            libc::O_CREAT | libc::O_EXCL,
            b"x",
        ),
    );
    assert_read_only("unlink a file", fsx::remove_file(&small));
    assert_read_only("mkdir", fsx::create_dir(snap.join("dir-in-snapshot")));
    assert_read_only("rename a file", fsx::rename(&small, snap.join("renamed")));
    assert_eq!(
        text(&fsx::read(&small).unwrap()),
        text(small_contents),
        "the file is unchanged"
    );
    assert!(!fsx::exists(snap.join("new-in-snapshot")).unwrap());
    assert!(!fsx::exists(snap.join("dir-in-snapshot")).unwrap());
    assert!(!fsx::exists(snap.join("renamed")).unwrap());
}

#[test]
fn clone_and_backup_are_read_only_snapshots_sharing_data() {
    let c = cell();
    let admin = Admin::of(&c.srv);
    let big_len: usize = 16 << 20;
    let orig = mounted_volume(&admin, &c.v, "u.snap", "orig");
    let big_v1 = pattern(big_len, 21);
    fsx::write(orig.join("big"), &big_v1).unwrap();
    fsx::write(orig.join("small"), b"v1").unwrap();
    fsx::create_dir(orig.join("d")).unwrap();
    fsx::write(orig.join("d/inner"), b"inner v1").unwrap();
    // A cloned volume's data is shared, not copied: allow metadata only.
    let slack = (big_len / 4) as u64;
    let grown = |before: u64, what: &str| {
        let after = container_bytes(&c.srv.root);
        assert!(
            after < before + slack,
            "{what} grew the server's files from {before} to {after} bytes: \
             the {big_len}-byte file was copied, not shared"
        );
    };

    let before = container_bytes(&c.srv.root);
    assert!(
        before >= big_len as u64,
        "the server holds the big file: {before} bytes under {}",
        c.srv.root.display()
    );
    let out = admin.volutil_ok(&["clone", "u.snap"]);
    let line = out.trim();
    let id = line
        .strip_prefix("cloned u.snap as u.snap.readonly (")
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("volutil clone prints `cloned NAME as NEWNAME (ID)`: {out:?}"));
    let info = admin.info("u.snap.readonly");
    assert_eq!(info["kind"], "read-only", "{info}");
    assert_eq!(
        id.trim_start_matches("0x"),
        info["id"].as_str().unwrap(),
        "the id volutil clone printed is the clone's"
    );
    assert_ne!(info["id"], admin.info("u.snap")["id"]);
    let txt = admin.volutil_ok(&["info", "u.snap.readonly"]);
    assert!(txt.contains("kind:    read-only"), "{txt}");
    grown(before, "volutil clone");
    // A clone under a name of one's own.
    let out = admin.volutil_ok(&["clone", "u.snap", "u.snap.named"]);
    assert!(
        out.trim().starts_with("cloned u.snap as u.snap.named ("),
        "{out:?}"
    );
    assert_eq!(admin.info("u.snap.named")["kind"], "read-only");

    let ro = mount(&c.v, "u.snap.readonly", "ro");
    assert_eq!(
        checksum(&fsx::read(ro.join("big")).unwrap()),
        checksum(&big_v1)
    );
    assert_eq!(fsx::read(ro.join("small")).unwrap(), b"v1");
    assert_eq!(fsx::read(ro.join("d/inner")).unwrap(), b"inner v1");

    // The original moves on; the clone does not.
    let mut big_v2 = big_v1.clone();
    big_v2[1000..1010].copy_from_slice(b"0123456789");
    fsx::write(orig.join("big"), &big_v2).unwrap();
    fsx::write(orig.join("small"), b"v2").unwrap();
    fsx::remove_file(orig.join("d/inner")).unwrap();
    fsx::write(orig.join("added-after-clone"), b"later").unwrap();
    let check_clone = |v: &Venus, rel: &str| {
        let ro = v.path(rel);
        assert_eq!(
            checksum(&fsx::read(ro.join("big")).unwrap()),
            checksum(&big_v1),
            "{rel}/big is as at clone time"
        );
        assert_eq!(fsx::read(ro.join("small")).unwrap(), b"v1");
        assert_eq!(fsx::read(ro.join("d/inner")).unwrap(), b"inner v1");
        assert!(!fsx::exists(ro.join("added-after-clone")).unwrap());
    };
    check_clone(&c.v, "ro");
    assert_writes_refused(&ro, b"v1");

    // A backup: NAME.backup, read-only, sharing data too.
    let before = container_bytes(&c.srv.root);
    admin.volutil_ok(&["backup", "u.snap"]);
    let info = admin.info("u.snap.backup");
    assert_eq!(info["kind"], "backup", "{info}");
    let backup_id = info["id"].clone();
    let txt = admin.volutil_ok(&["info", "u.snap.backup"]);
    assert!(txt.contains("kind:    backup"), "{txt}");
    grown(before, "volutil backup");
    let bk = mount(&c.v, "u.snap.backup", "bk");
    assert_eq!(fsx::read(bk.join("small")).unwrap(), b"v2");
    assert_eq!(
        checksum(&fsx::read(bk.join("big")).unwrap()),
        checksum(&big_v2)
    );
    assert!(!fsx::exists(bk.join("d/inner")).unwrap());
    assert_eq!(fsx::read(bk.join("added-after-clone")).unwrap(), b"later");
    assert_writes_refused(&bk, b"v2");

    // A second backup replaces the first, under the same id.
    fsx::write(orig.join("small"), b"v3").unwrap();
    fsx::remove_file(orig.join("added-after-clone")).unwrap();
    fsx::write(orig.join("added-before-second-backup"), b"newer").unwrap();
    admin.volutil_ok(&["backup", "u.snap"]);
    let info = admin.info("u.snap.backup");
    assert_eq!(info["id"], backup_id, "a second backup keeps the id");
    assert_eq!(info["kind"], "backup");
    let listed = json("volutil list", &admin.volutil_ok(&["list", "--json"]));
    let backups = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["name"] == "u.snap.backup")
        .count();
    assert_eq!(backups, 1, "one u.snap.backup: {listed}");
    // Read through a client that cached nothing.
    let r = reader(&c.srv);
    let bk = r.path("bk");
    assert_eq!(fsx::read(bk.join("small")).unwrap(), b"v3");
    assert_eq!(
        fsx::read(bk.join("added-before-second-backup")).unwrap(),
        b"newer"
    );
    assert!(
        !fsx::exists(bk.join("added-after-clone")).unwrap(),
        "the older backup's contents are gone"
    );
    assert_writes_refused(&bk, b"v3");
    // The clone still shows the time it was made.
    check_clone(&r, "ro");
}

#[test]
fn a_server_killed_during_restore_leaves_no_half_volume() {
    let keep = scratch();
    let root = keep.path().join("vice");
    let work = keep.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let srv = Server::start_in(&root, 1);
    let addr = srv.addr.clone();
    let admin = Admin::of(&srv);
    const FILES: u64 = 4;
    const FILE_LEN: usize = 16 << 20;
    {
        let v = Venus::start(&srv.addr);
        v.clog_admin();
        let top = mounted_volume(&admin, &v, "u.big", "big");
        for i in 0..FILES {
            fsx::write(top.join(format!("f{i}")), pattern(FILE_LEN, 100 + i)).unwrap();
        }
        assert!(v.stop().success(), "venus stops cleanly");
    }
    let dump = work.join("big.dump");
    let dump_len = admin.dump("u.big", None, &dump);
    assert!(dump_len >= FILES * FILE_LEN as u64);

    // `volutil restore - u.slow`, fed a MiB at a time.
    let mut cmd = admin.command("volutil", &["restore", "-", "u.slow"]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().expect("volutil starts");
    let pgid = child.id() as i32;
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let mut input = child.stdin.take().unwrap();
        let data = std::fs::read(&dump).unwrap();
        let written = written.clone();
        std::thread::spawn(move || {
            for chunk in data.chunks(1 << 20) {
                if input.write_all(chunk).is_err() {
                    return;
                }
                written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(25));
            }
        })
    };
    let began = Instant::now();
    while written.load(Ordering::SeqCst) < dump_len / 2 {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "volutil restore - exited ({status}) after {} of {dump_len} bytes: {:?}",
                written.load(Ordering::SeqCst),
                text(&err.join().unwrap_or_default())
            );
        }
        if began.elapsed() > BULK_TIMEOUT {
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            panic!(
                "volutil restore - took only {} of {dump_len} bytes in {BULK_TIMEOUT:?}",
                written.load(Ordering::SeqCst)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Mid-restore: the server dies.
    let mut srv = srv;
    srv.child.kill().expect("SIGKILL codasrv");
    let _ = srv.child.wait();
    drop(srv);
    let Some(status) = wait_until(&mut child, DEAD_SERVER_TIMEOUT) else {
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        let _ = child.wait();
        panic!("volutil restore - did not give up within {DEAD_SERVER_TIMEOUT:?} of its server's death");
    };
    writer.join().unwrap();
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    assert!(
        !status.success(),
        "a restore whose server died must fail: stdout {:?} stderr {:?}",
        text(&out),
        text(&err)
    );

    // Restarted on the same root: no trace of u.slow, and u.big intact.
    let srv = Server::start_at(&root, &addr, 1);
    assert!(!admin.exists("u.slow"), "a half-restored u.slow survived");
    assert!(admin.exists("u.big"));
    admin.restore_ok(&dump, "u.slow");
    let info = admin.info("u.slow");
    assert_eq!(info["files"], admin.info("u.big")["files"], "{info}");
    let v = reader(&srv);
    let top = mount(&v, "u.slow", "slow");
    for i in 0..FILES {
        let data = fsx::read(top.join(format!("f{i}"))).unwrap();
        assert_eq!(data.len(), FILE_LEN, "f{i}");
        assert_eq!(
            checksum(&data),
            checksum(&pattern(FILE_LEN, 100 + i)),
            "f{i} of the restored volume"
        );
    }
    drop(v);
    drop(srv);
}
