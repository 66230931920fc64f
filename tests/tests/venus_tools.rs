//! The client tools (`clog`, `ctokens`, `cunlog`, `cfs`, `codacon`) against a
//! real `venus` over a real `codasrv`, run exactly as INTERFACE.md writes
//! them: found through `--mount M`, `$CODA_MOUNT`, or the mount holding the
//! path argument (or the current directory).
//!
//! Anonymous access is checked from another local uid (1234, through
//! `setpriv`): Venus keys tokens by the caller's uid, so uid 0 keeps admin's
//! token while uid 1234 is `System:AnyUser` only.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use coda_tests::venus::{eventually, fsx, run_command, Venus, TOOL_TIMEOUT};
use coda_tests::{bin, checksum, pattern, Server, ADMIN_PASSWORD};

/// The local uid (and gid) that holds no token.
const ANON_UID: u32 = 1234;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts the tool succeeded; its stdout.
fn success(what: &str, out: &Output, v: &Venus) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): stdout {:?} stderr {:?}\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        v.log_tail()
    );
    text(&out.stdout)
}

/// Asserts the tool failed with exit status non-zero and a one-line reason
/// `TOOL: ...` on stderr; that line.
fn one_line_failure(tool: &str, what: &str, out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{what} must fail but succeeded: stdout {:?} stderr {:?}",
        text(&out.stdout),
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

/// A client tool with neither `--mount` nor `$CODA_MOUNT`: it must find its
/// Venus from the path it is given or the directory it runs in.
fn bare(tool: &str, args: &[&str], cwd: &Path, stdin: &str) -> Output {
    let mut cmd = Command::new(bin(tool));
    cmd.args(args).env_remove("CODA_MOUNT").current_dir(cwd);
    run_command(
        cmd,
        stdin,
        TOOL_TIMEOUT,
        &format!("{tool} {args:?} (no CODA_MOUNT, in {})", cwd.display()),
    )
}

/// `sh -c SCRIPT sh ARGS...` as uid/gid [`ANON_UID`] with no groups: a
/// local user without a token.
fn as_anon(script: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={ANON_UID}"))
        .arg(format!("--regid={ANON_UID}"))
        .arg("--clear-groups")
        .args(["sh", "-c", script, "sh"])
        .args(args)
        .env_remove("CODA_MOUNT")
        .current_dir("/");
    run_command(
        cmd,
        "",
        TOOL_TIMEOUT,
        &format!("as uid {ANON_UID}: {script}"),
    )
}

/// Uid [`ANON_UID`] creates `path` holding `data`.
fn anon_write(path: &Path, data: &str) -> Output {
    as_anon(r#"printf %s "$2" > "$1""#, &[path.to_str().unwrap(), data])
}

/// Uid [`ANON_UID`] reads `path`.
fn anon_read(path: &Path) -> Output {
    as_anon(r#"cat "$1""#, &[path.to_str().unwrap()])
}

/// The shell's refusal must be EACCES ("Permission denied"), not any error.
fn assert_anon_denied(what: &str, out: &Output) {
    assert!(
        !out.status.success(),
        "{what}: uid {ANON_UID} without a token must be refused, but succeeded (stdout {:?})",
        text(&out.stdout)
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("Permission denied"),
        "{what}: want EACCES (Permission denied), got {err:?}"
    );
}

fn assert_anon_ok(what: &str, out: &Output, v: &Venus) {
    assert!(
        out.status.success(),
        "{what}: uid {ANON_UID} must succeed but failed: {:?}\n{}",
        text(&out.stderr),
        v.log_tail()
    );
}

fn assert_eacces<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>) {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}) but must fail with EACCES"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(libc::EACCES),
            "{what}: want EACCES, got {e}"
        ),
    }
}

fn json(what: &str, s: &str) -> serde_json::Value {
    serde_json::from_str(s.trim()).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {s:?}"))
}

/// `vol.vnode.unique` in hex.
fn parse_fid(s: &str) -> (u64, u64, u64) {
    let parts: Vec<u64> = s
        .split('.')
        .map(|p| u64::from_str_radix(p, 16).unwrap_or_else(|_| panic!("not a hex fid: {s:?}")))
        .collect();
    assert_eq!(parts.len(), 3, "a fid is vol.vnode.unique: {s:?}");
    (parts[0], parts[1], parts[2])
}

/// The fid in `cfs getfid` text output: `FID = vol.vnode.unique  PATH`.
fn fid_from_text(out: &str) -> (u64, u64, u64) {
    let line = out.lines().next().unwrap_or("");
    let rest = line
        .strip_prefix("FID = ")
        .unwrap_or_else(|| panic!("cfs getfid prints `FID = ...`, got {out:?}"));
    parse_fid(rest.split_whitespace().next().unwrap_or(""))
}

/// `cfs getfid PATH` (text and `--json`, which must agree); the fid.
fn getfid(v: &Venus, path: &Path) -> (u64, u64, u64) {
    let p = path.to_str().unwrap();
    let t = v.cfs_ok("getfid", &[p]);
    let fid = fid_from_text(&t);
    assert!(t.contains(p), "cfs getfid names the path: {t:?}");
    let j = json("cfs getfid --json", &v.cfs_ok("getfid", &["--json", p]));
    assert_eq!(
        parse_fid(j["fid"].as_str().expect("fid string")),
        fid,
        "--json and text differ: {j} vs {t:?}"
    );
    fid
}

/// The `name rights` lines of `cfs listacl` text output: (positive, negative).
type AclLines = (Vec<(String, String)>, Vec<(String, String)>);

fn parse_acl(out: &str) -> AclLines {
    let (mut pos, mut neg) = (Vec::new(), Vec::new());
    let mut negative = false;
    for line in out.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if line.trim() == "Negative rights:" {
            negative = true;
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f.len(), 2, "a listacl line is `NAME  RIGHTS`: {line:?}");
        let e = (f[0].to_string(), f[1].to_string());
        if negative {
            neg.push(e)
        } else {
            pos.push(e)
        }
    }
    (pos, neg)
}

/// `cfs listacl PATH` as text and `--json`, which must agree.
fn listacl(v: &Venus, sub: &str, path: &Path) -> AclLines {
    let p = path.to_str().unwrap();
    let t = v.cfs_ok(sub, &[p]);
    let acl = parse_acl(&t);
    let j = json("cfs listacl --json", &v.cfs_ok(sub, &["--json", p]));
    let pairs = |k: &str| -> Vec<(String, String)> {
        j[k].as_array()
            .unwrap_or_else(|| panic!("listacl --json has `{k}`: {j}"))
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap().to_string(),
                    e["rights"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let sorted = |mut v: Vec<(String, String)>| {
        v.sort();
        v
    };
    assert_eq!(
        sorted(pairs("positive")),
        sorted(acl.0.clone()),
        "listacl --json and text differ: {j} vs {t:?}"
    );
    assert_eq!(
        sorted(pairs("negative")),
        sorted(acl.1.clone()),
        "listacl --json and text differ: {j} vs {t:?}"
    );
    acl
}

fn entry(name: &str, rights: &str) -> (String, String) {
    (name.to_string(), rights.to_string())
}

/// `cfs listcache --json` (optionally of PATH's volume): entries by path.
fn listcache_json(v: &Venus, sub: &str, path: Option<&Path>) -> Vec<serde_json::Value> {
    let mut args = vec!["--json"];
    if let Some(p) = path {
        args.push(p.to_str().unwrap());
    }
    json("cfs listcache --json", &v.cfs_ok(sub, &args))
        .as_array()
        .expect("listcache --json is an array")
        .clone()
}

fn cache_entry<'a>(list: &'a [serde_json::Value], path: &Path) -> &'a serde_json::Value {
    list.iter()
        .find(|e| e["path"].as_str() == path.to_str())
        .unwrap_or_else(|| panic!("cfs listcache does not list {}: {list:?}", path.display()))
}

/// The flags column (`D`/`-` for data, `V`/`-` for valid) of PATH's line in
/// `cfs listcache` text output.
fn listcache_flags(out: &str, path: &Path) -> String {
    let p = path.to_str().unwrap();
    let line = out
        .lines()
        .find(|l| l.split_whitespace().last() == Some(p))
        .unwrap_or_else(|| panic!("cfs listcache has no line for {p}: {out:?}"));
    line.split_whitespace().next().unwrap().to_string()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------

#[test]
fn clog_ctokens_and_cunlog_manage_the_callers_token() {
    let srv = Server::start(1);
    let v = Venus::start(&srv.addr);
    let m = v.mount.to_str().unwrap().to_string();

    // No token yet: anyone, and the root volume gives anyone only `rl`.
    let none = success("ctokens", &v.tool("ctokens", &[], ""), &v);
    assert!(none.contains("no tokens"), "ctokens before clog: {none:?}");
    let none = json(
        "ctokens --json",
        &success("ctokens --json", &v.tool("ctokens", &["--json"], ""), &v),
    );
    assert_eq!(none, serde_json::json!([]), "ctokens --json before clog");
    assert_eacces(
        "a write in the root without a token",
        fsx::write(v.path("before-clog"), b"x"),
    );

    // A wrong password: refused with one line, and still no token.
    let bad = v.tool(
        "clog",
        &["--pipe", "--mount", &m, "admin"],
        "not-the-password\n",
    );
    one_line_failure("clog", "clog --pipe admin with a wrong password", &bad);
    let unknown = v.tool(
        "clog",
        &["--pipe", "--mount", &m, "nobody-such"],
        "whatever\n",
    );
    one_line_failure("clog", "clog --pipe for an unknown user", &unknown);
    let still = json(
        "ctokens --json",
        &success("ctokens --json", &v.tool("ctokens", &["--json"], ""), &v),
    );
    assert_eq!(still, serde_json::json!([]), "a failed clog left a token");

    // `clog --pipe admin` (found through $CODA_MOUNT alone), then ctokens.
    let out = v.tool("clog", &["--pipe", "admin"], &format!("{ADMIN_PASSWORD}\n"));
    success("clog --pipe admin", &out, &v);
    let listed = success("ctokens", &v.tool("ctokens", &[], ""), &v);
    let line = listed
        .lines()
        .find(|l| l.starts_with("admin"))
        .unwrap_or_else(|| panic!("ctokens does not list admin: {listed:?}"));
    assert!(
        line.contains("expires"),
        "ctokens shows the expiry: {line:?}"
    );
    assert!(!listed.contains("no tokens"), "{listed:?}");
    // --mount M gives the same.
    let listed_m = success(
        "ctokens --mount M",
        &v.tool("ctokens", &["--mount", &m], ""),
        &v,
    );
    assert!(
        listed_m.lines().any(|l| l.starts_with("admin")),
        "{listed_m:?}"
    );
    let toks = json(
        "ctokens --json",
        &success("ctokens --json", &v.tool("ctokens", &["--json"], ""), &v),
    );
    let toks = toks.as_array().expect("ctokens --json is an array");
    assert_eq!(toks.len(), 1, "{toks:?}");
    assert_eq!(toks[0]["user"], "admin", "{toks:?}");
    let expires = toks[0]["expires_at"].as_u64().expect("expires_at seconds");
    let now = unix_now();
    assert!(
        expires > now + 20 * 3600 && expires < now + 30 * 3600,
        "a token lasts about 25 h: expires_at {expires}, now {now}"
    );

    // The token belongs to the uid that ran clog: uid 1234 has none.
    let other = as_anon(
        r#""$1" --mount "$2" --json"#,
        &[bin("ctokens").to_str().unwrap(), &m],
    );
    assert_anon_ok("ctokens as another uid", &other, &v);
    assert_eq!(
        json("ctokens --json as another uid", &text(&other.stdout)),
        serde_json::json!([]),
        "another uid sees admin's token"
    );

    // With the token, admin writes in the root.
    fsx::write(v.path("with-token"), b"admin was here").unwrap();
    assert_eq!(fsx::read(v.path("with-token")).unwrap(), b"admin was here");

    // cunlog: no token again, and writes in the root are refused again.
    success("cunlog", &v.tool("cunlog", &["--mount", &m], ""), &v);
    let gone = success("ctokens", &v.tool("ctokens", &[], ""), &v);
    assert!(
        gone.contains("no tokens") && !gone.lines().any(|l| l.starts_with("admin")),
        "ctokens after cunlog: {gone:?}"
    );
    let gone = json(
        "ctokens --json",
        &success("ctokens --json", &v.tool("ctokens", &["--json"], ""), &v),
    );
    assert_eq!(gone, serde_json::json!([]), "ctokens --json after cunlog");
    assert_eacces(
        "a new file in the root after cunlog",
        fsx::write(v.path("after-cunlog"), b"x"),
    );
    assert_eacces(
        "overwriting admin's file after cunlog",
        fsx::write(v.path("with-token"), b"y"),
    );
    // Reading is still allowed to anyone (`rl`), and the data is intact.
    assert_eq!(fsx::read(v.path("with-token")).unwrap(), b"admin was here");
}

#[test]
fn cfs_getfid_whereis_listvol_and_checkservers() {
    let srv = Server::start(1);
    let v = Venus::start(&srv.addr);
    v.clog_admin();
    fsx::create_dir(v.path("d")).unwrap();
    fsx::write(v.path("d/a"), b"file a").unwrap();
    fsx::write(v.path("d/b"), b"file b").unwrap();
    let (a, b) = (v.path("d/a"), v.path("d/b"));

    // getfid: vol.vnode.unique in hex, the same in --json; distinct files
    // have distinct fids, all in the root volume.
    let fa = getfid(&v, &a);
    let fb = getfid(&v, &b);
    let fd = getfid(&v, &v.path("d"));
    let froot = getfid(&v, &v.mount);
    assert_ne!(fa, fb, "two files, one fid");
    assert_ne!(fa, fd);
    assert_ne!(fd, froot);
    assert_eq!(fa.0, froot.0, "d/a is in the root volume");
    assert_eq!(fb.0, froot.0, "d/b is in the root volume");
    // A fid names the object, not the name: stable across calls.
    assert_eq!(getfid(&v, &a), fa);
    // A missing path fails with one line.
    let missing = v.cfs("getfid", &[v.path("d/missing").to_str().unwrap()]);
    one_line_failure("cfs", "cfs getfid of a missing file", &missing);

    // Discovery by the path argument: no --mount, no CODA_MOUNT. A second
    // client is mounted too, so "the only Venus running" cannot answer.
    let _other = Venus::start(&srv.addr);
    let found = bare("cfs", &["getfid", a.to_str().unwrap()], Path::new("/"), "");
    let found = success("cfs getfid PATH without --mount/CODA_MOUNT", &found, &v);
    assert_eq!(fid_from_text(&found), fa, "{found:?}");
    // ... and a relative path from a directory inside the mount.
    let rel = bare("cfs", &["getfid", "b"], &v.path("d"), "");
    let rel = success("cfs getfid b (in the mount's d/)", &rel, &v);
    assert_eq!(fid_from_text(&rel), fb, "{rel:?}");

    // whereis: the server's address.
    let w = v.cfs_ok("whereis", &[a.to_str().unwrap()]);
    assert!(
        w.split_whitespace().any(|s| s == srv.addr),
        "cfs whereis names {}: {w:?}",
        srv.addr
    );
    let wj = json(
        "cfs whereis --json",
        &v.cfs_ok("whereis", &["--json", a.to_str().unwrap()]),
    );
    assert!(
        wj.as_array()
            .is_some_and(|l| l.iter().any(|s| s.as_str() == Some(&srv.addr))),
        "cfs whereis --json: {wj}"
    );

    // listvol / lv: the volume is coda.root, with the fid's volume id.
    for sub in ["listvol", "lv"] {
        let t = v.cfs_ok(sub, &[a.to_str().unwrap()]);
        assert!(
            t.contains("\"coda.root\""),
            "cfs {sub} names coda.root: {t:?}"
        );
        assert!(t.contains(&srv.addr), "cfs {sub} names the server: {t:?}");
        assert!(
            t.contains(&format!("{:x}", fa.0)),
            "cfs {sub} shows the volume id {:x}: {t:?}",
            fa.0
        );
    }
    let lj = json(
        "cfs lv --json",
        &v.cfs_ok("lv", &["--json", a.to_str().unwrap()]),
    );
    assert_eq!(lj["name"], "coda.root", "{lj}");
    assert_eq!(
        u64::from_str_radix(lj["id"].as_str().expect("id"), 16).ok(),
        Some(fa.0),
        "{lj}"
    );
    assert!(
        lj["servers"]
            .as_array()
            .is_some_and(|l| l.iter().any(|s| s.as_str() == Some(&srv.addr))),
        "{lj}"
    );

    // checkservers / cs: all up.
    for sub in ["checkservers", "cs"] {
        let t = v.cfs_ok(sub, &[]);
        assert!(
            t.contains("All servers up"),
            "cfs {sub} with the server running: {t:?}"
        );
    }
    let cj = json("cfs cs --json", &v.cfs_ok("cs", &["--json"]));
    let cj = cj.as_array().expect("cs --json is an array");
    assert!(!cj.is_empty(), "cs --json lists the servers");
    assert!(
        cj.iter()
            .any(|s| s["server"].as_str() == Some(&srv.addr) && s["up"] == true),
        "{cj:?}"
    );
    assert!(cj.iter().all(|s| s["up"] == true), "{cj:?}");
}

#[test]
fn cfs_listacl_and_setacl_govern_access() {
    let srv = Server::start(1);
    let v = Venus::start(&srv.addr);
    // uid 0 is admin; uid 1234 (no token) is anyone.
    v.clog_admin();

    // The root's ACL, through both names.
    for sub in ["listacl", "la"] {
        let t = v.cfs_ok(sub, &[v.mount.to_str().unwrap()]);
        assert!(t.contains("System:AnyUser  rl"), "cfs {sub} /mount: {t:?}");
        assert!(
            t.contains("System:Administrators  rlidwka"),
            "cfs {sub} /mount: {t:?}"
        );
    }
    let (pos, neg) = listacl(&v, "la", &v.mount);
    assert!(pos.contains(&entry("System:AnyUser", "rl")), "{pos:?}");
    assert!(
        pos.contains(&entry("System:Administrators", "rlidwka")),
        "{pos:?}"
    );
    assert!(neg.is_empty(), "{neg:?}");

    // Anyone may read the root but not write in it.
    fsx::write(v.path("public"), b"for everyone").unwrap();
    let r = anon_read(&v.path("public"));
    assert_anon_ok("anyone reads the root", &r, &v);
    assert_eq!(text(&r.stdout), "for everyone");
    assert_anon_denied(
        "anyone creates in the root",
        &anon_write(&v.path("anon-in-root"), "x"),
    );

    // A new directory: anyone may not create there until the ACL says so.
    let dir = v.path("shared");
    let d = dir.to_str().unwrap();
    fsx::create_dir(&dir).unwrap();
    assert_anon_denied(
        "anyone creates in a new directory",
        &anon_write(&dir.join("too-early"), "x"),
    );
    v.cfs_ok("setacl", &[d, "System:AnyUser", "rlidwk"]);
    let (pos, neg) = listacl(&v, "listacl", &dir);
    assert!(pos.contains(&entry("System:AnyUser", "rlidwk")), "{pos:?}");
    assert!(neg.is_empty(), "{neg:?}");
    let w = anon_write(&dir.join("by-anyone"), "anonymous data");
    assert_anon_ok("anyone creates after setacl rlidwk", &w, &v);
    assert_eq!(
        fsx::read(dir.join("by-anyone")).unwrap(),
        b"anonymous data",
        "admin reads what anyone wrote"
    );
    // The root's ACL is untouched.
    let (pos, _) = listacl(&v, "la", &v.mount);
    assert!(pos.contains(&entry("System:AnyUser", "rl")), "{pos:?}");

    // --negative: deny insert to anyone; reading stays allowed.
    v.cfs_ok("sa", &["--negative", d, "System:AnyUser", "i"]);
    let t = v.cfs_ok("la", &[d]);
    assert!(t.contains("Negative rights:"), "{t:?}");
    let (pos, neg) = listacl(&v, "la", &dir);
    assert_eq!(neg, vec![entry("System:AnyUser", "i")], "{t:?}");
    assert!(
        pos.contains(&entry("System:AnyUser", "rlidwk")),
        "--negative keeps the positive entries: {pos:?}"
    );
    assert_anon_denied(
        "anyone creates with a negative `i`",
        &anon_write(&dir.join("denied"), "x"),
    );
    let r = anon_read(&dir.join("by-anyone"));
    assert_anon_ok("anyone reads with only `i` denied", &r, &v);
    assert_eq!(text(&r.stdout), "anonymous data");

    // --clear: start from an empty list; only what is given remains.
    v.cfs_ok("sa", &["--clear", d, "System:Administrators", "all"]);
    let (pos, neg) = listacl(&v, "la", &dir);
    assert_eq!(
        pos,
        vec![entry("System:Administrators", "rlidwka")],
        "after --clear"
    );
    assert!(
        neg.is_empty(),
        "--clear drops negative entries too: {neg:?}"
    );
    assert_anon_denied(
        "anyone reads after --clear",
        &anon_read(&dir.join("by-anyone")),
    );
    assert_anon_denied(
        "anyone creates after --clear",
        &anon_write(&dir.join("after-clear"), "x"),
    );
    fsx::write(dir.join("admin-after-clear"), b"still mine").unwrap();
    assert_eq!(
        fsx::read(dir.join("admin-after-clear")).unwrap(),
        b"still mine"
    );

    // Rights by word: `read` is rl: anyone reads, but cannot create.
    v.cfs_ok("sa", &[d, "System:AnyUser", "read"]);
    let (pos, _) = listacl(&v, "la", &dir);
    assert!(pos.contains(&entry("System:AnyUser", "rl")), "{pos:?}");
    let r = anon_read(&dir.join("by-anyone"));
    assert_anon_ok("anyone reads with `read`", &r, &v);
    assert_eq!(text(&r.stdout), "anonymous data");
    assert_anon_denied(
        "anyone creates with `read`",
        &anon_write(&dir.join("read-only"), "x"),
    );
    // `none` removes the entry.
    v.cfs_ok("sa", &[d, "System:AnyUser", "none"]);
    let (pos, _) = listacl(&v, "la", &dir);
    assert!(
        !pos.iter().any(|(n, _)| n == "System:AnyUser"),
        "`none` removes the entry: {pos:?}"
    );
    assert_anon_denied(
        "anyone reads after `none`",
        &anon_read(&dir.join("by-anyone")),
    );

    // Mistakes: one line each, and the ACL is unchanged.
    let odd = v.cfs("sa", &[d, "System:AnyUser", "rl", "System:Administrators"]);
    one_line_failure("cfs", "cfs sa with a name but no rights", &odd);
    let bad = v.cfs("sa", &[d, "System:AnyUser", "rxq"]);
    one_line_failure("cfs", "cfs sa with bad rights", &bad);
    let nobody = v.cfs("sa", &[d, "no-such-user-or-group", "rl"]);
    one_line_failure("cfs", "cfs sa naming nobody", &nobody);
    let (pos, neg) = listacl(&v, "la", &dir);
    assert_eq!(pos, vec![entry("System:Administrators", "rlidwka")]);
    assert!(neg.is_empty());

    // Without a token, changing an ACL is refused (one line).
    success("cunlog", &v.tool("cunlog", &[], ""), &v);
    let refused = v.cfs("sa", &[d, "System:AnyUser", "all"]);
    one_line_failure("cfs", "cfs sa without a token", &refused);
    v.clog_admin();
    let (pos, _) = listacl(&v, "la", &dir);
    assert_eq!(pos, vec![entry("System:Administrators", "rlidwka")]);
}

#[test]
fn cfs_makemount_and_removemount_volumes() {
    let srv = Server::start(1);
    let pw = srv.password_file();
    let pw = pw.to_str().unwrap();
    for vol in ["u.tools", "u.other"] {
        let out = coda_tests::run(
            "volutil",
            &["--server", &srv.addr, "--password-file", pw, "create", vol],
            "",
        );
        assert!(
            out.status.success(),
            "volutil create {vol}: {}",
            text(&out.stderr)
        );
        assert!(text(&out.stdout).starts_with(&format!("created volume {vol}")));
    }
    let v = Venus::start(&srv.addr);
    v.clog_admin();
    let root_fid = getfid(&v, &v.mount);

    // makemount: the mount point is a directory of the new volume.
    let mp = v.path("vol");
    let mps = mp.to_str().unwrap();
    v.cfs_ok("makemount", &[mps, "u.tools"]);
    let md = fsx::metadata(&mp).unwrap();
    assert!(md.is_dir(), "the mount point is a directory: {md:?}");
    let names = fsx::read_dir_names(&v.mount).unwrap();
    assert!(names.contains(&"vol".to_string()), "{names:?}");
    assert!(
        fsx::read_dir_names(&mp).unwrap().is_empty(),
        "a new volume is empty"
    );
    let data = pattern(70_000, 11);
    fsx::write(mp.join("inside"), &data).unwrap();
    fsx::create_dir(mp.join("sub")).unwrap();
    fsx::write(mp.join("sub/deeper"), b"deeper").unwrap();
    assert_eq!(fsx::read(mp.join("inside")).unwrap(), data);
    let f_in = getfid(&v, &mp.join("inside"));
    let f_mp = getfid(&v, &mp);
    assert_ne!(f_in.0, root_fid.0, "a file in the mounted volume");
    assert_eq!(f_mp.0, f_in.0, "the mount point is the volume's root");
    assert_eq!(getfid(&v, &mp.join("sub/deeper")).0, f_in.0);
    for sub in ["listvol", "lv"] {
        let t = v.cfs_ok(sub, &[mp.join("inside").to_str().unwrap()]);
        assert!(t.contains("\"u.tools\""), "cfs {sub}: {t:?}");
        assert!(t.contains(&format!("{:x}", f_in.0)), "cfs {sub}: {t:?}");
    }
    let lj = json(
        "cfs lv --json",
        &v.cfs_ok("lv", &["--json", mp.join("inside").to_str().unwrap()]),
    );
    assert_eq!(lj["name"], "u.tools", "{lj}");
    // Outside the mount point it is still coda.root.
    let lj = json(
        "cfs lv --json",
        &v.cfs_ok("lv", &["--json", v.mount.to_str().unwrap()]),
    );
    assert_eq!(lj["name"], "coda.root", "{lj}");

    // mkm (alias) in a subdirectory, for a second volume.
    fsx::create_dir(v.path("d")).unwrap();
    let mp2 = v.path("d/other");
    v.cfs_ok("mkm", &[mp2.to_str().unwrap(), "u.other"]);
    fsx::write(mp2.join("x"), b"in u.other").unwrap();
    let f_x = getfid(&v, &mp2.join("x"));
    assert_ne!(f_x.0, root_fid.0);
    assert_ne!(f_x.0, f_in.0, "two volumes, one id");
    let lj = json(
        "cfs lv --json",
        &v.cfs_ok("lv", &["--json", mp2.join("x").to_str().unwrap()]),
    );
    assert_eq!(lj["name"], "u.other", "{lj}");

    // Mistakes: one line each.
    let exists = v.cfs("mkm", &[v.path("d").to_str().unwrap(), "u.tools"]);
    one_line_failure("cfs", "cfs mkm onto an existing name", &exists);
    let novol = v.cfs(
        "mkm",
        &[v.path("novol").to_str().unwrap(), "no.such.volume"],
    );
    one_line_failure("cfs", "cfs mkm of a missing volume", &novol);
    assert!(!fsx::exists(v.path("novol")).unwrap());
    let plain = v.cfs("rmm", &[v.path("d").to_str().unwrap()]);
    one_line_failure("cfs", "cfs rmm of a plain directory", &plain);
    assert!(fsx::metadata(v.path("d")).unwrap().is_dir());

    // removemount / rmm: the names go, the volumes stay.
    v.cfs_ok("removemount", &[mps]);
    assert!(
        !fsx::exists(&mp).unwrap(),
        "{} still exists after cfs removemount",
        mp.display()
    );
    let names = fsx::read_dir_names(&v.mount).unwrap();
    assert!(!names.contains(&"vol".to_string()), "{names:?}");
    v.cfs_ok("rmm", &[mp2.to_str().unwrap()]);
    assert!(!fsx::exists(&mp2).unwrap(), "d/other after cfs rmm");
    assert!(
        fsx::read_dir_names(v.path("d")).unwrap().is_empty(),
        "d after cfs rmm"
    );
    let info = coda_tests::run(
        "volutil",
        &[
            "--server",
            &srv.addr,
            "--password-file",
            pw,
            "info",
            "u.tools",
        ],
        "",
    );
    assert!(
        info.status.success(),
        "removemount must not remove the volume: {}",
        text(&info.stderr)
    );
    // Mounted again (under another name): its files are there.
    let again = v.path("again");
    v.cfs_ok("mkm", &[again.to_str().unwrap(), "u.tools"]);
    assert_eq!(fsx::read(again.join("inside")).unwrap(), data);
    assert_eq!(fsx::read(again.join("sub/deeper")).unwrap(), b"deeper");
}

#[test]
fn cfs_listcache_and_flushobject() {
    let srv = Server::start(1);
    let v = Venus::start(&srv.addr);
    v.clog_admin();
    fsx::create_dir(v.path("c")).unwrap();
    let (p, q) = (v.path("c/big"), v.path("c/small"));
    let data = pattern(300_000, 3);
    fsx::write(&p, &data).unwrap();
    fsx::write(&q, b"small file").unwrap();
    assert_eq!(fsx::read(&p).unwrap(), data);
    assert_eq!(fsx::read(&q).unwrap(), b"small file");
    let fid_p = getfid(&v, &p);

    // listcache / lc: the files with their paths, data cached.
    for sub in ["listcache", "lc"] {
        let t = v.cfs_ok(sub, &[]);
        let flags = listcache_flags(&t, &p);
        assert!(flags.starts_with('D'), "{sub}: {p:?} has data: {t:?}");
        assert!(listcache_flags(&t, &q).starts_with('D'), "{t:?}");
        assert!(
            t.lines()
                .any(|l| l.ends_with(v.path("c").to_str().unwrap())),
            "{sub} lists the directory c: {t:?}"
        );
    }
    let list = listcache_json(&v, "lc", None);
    let e = cache_entry(&list, &p);
    assert_eq!(e["has_data"], true, "{e}");
    assert_eq!(e["kind"], "file", "{e}");
    assert_eq!(e["length"], 300_000, "{e}");
    assert_eq!(parse_fid(e["fid"].as_str().unwrap()), fid_p, "{e}");
    assert_eq!(cache_entry(&list, &v.path("c"))["kind"], "directory");
    // lc PATH: the volume holding PATH.
    let list = listcache_json(&v, "listcache", Some(&v.path("c")));
    assert_eq!(cache_entry(&list, &p)["has_data"], true);

    // flushobject / fl: the data goes, the object stays listed.
    v.cfs_ok("fl", &[p.to_str().unwrap()]);
    let t = v.cfs_ok("lc", &[]);
    assert!(
        listcache_flags(&t, &p).starts_with('-'),
        "after cfs fl, {} has no data: {t:?}",
        p.display()
    );
    assert!(
        listcache_flags(&t, &q).starts_with('D'),
        "cfs fl of one file dropped another: {t:?}"
    );
    let list = listcache_json(&v, "lc", None);
    assert_eq!(cache_entry(&list, &p)["has_data"], false, "after cfs fl");
    assert_eq!(cache_entry(&list, &q)["has_data"], true);
    // A later read fetches the same bytes, and the data is cached again.
    let back = fsx::read(&p).unwrap();
    assert_eq!(
        checksum(&back),
        checksum(&data),
        "read after cfs fl: {} bytes",
        back.len()
    );
    assert_eq!(back, data);
    let list = listcache_json(&v, "lc", None);
    assert_eq!(cache_entry(&list, &p)["has_data"], true, "after re-reading");

    // Several paths at once, by the long name.
    v.cfs_ok("flushobject", &[p.to_str().unwrap(), q.to_str().unwrap()]);
    let list = listcache_json(&v, "lc", None);
    assert_eq!(cache_entry(&list, &p)["has_data"], false);
    assert_eq!(cache_entry(&list, &q)["has_data"], false);
    assert_eq!(fsx::read(&q).unwrap(), b"small file");
    assert_eq!(fsx::read(&p).unwrap(), data);

    // A missing path: one line.
    let missing = v.cfs("fl", &[v.path("c/missing").to_str().unwrap()]);
    one_line_failure("cfs", "cfs fl of a missing file", &missing);
}

/// A streaming `codacon` with its stdout lines on a channel; killed when
/// dropped.
struct Stream {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Stream {
    fn start(v: &Venus, args: &[&str]) -> Stream {
        let mut child = Command::new(bin("codacon"))
            .args(args)
            .env("CODA_MOUNT", &v.mount)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("codacon starts");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Stream {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits at most `limit` for a line (new or already seen) that `want` accepts.
    fn wait_for(&mut self, limit: Duration, want: impl Fn(&str) -> bool) -> bool {
        if self.seen.iter().any(|l| want(l)) {
            return true;
        }
        let began = Instant::now();
        while let Some(left) = limit.checked_sub(began.elapsed()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = want(&line);
                    self.seen.push(line);
                    if hit {
                        return true;
                    }
                }
                Err(_) => break,
            }
        }
        false
    }

    /// Asserts it is still streaming, then stops it.
    fn finish(mut self, what: &str) {
        let exited = self.child.try_wait().unwrap();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        assert!(
            exited.is_none(),
            "{what} stopped streaming ({exited:?}): stderr {err:?}, lines {:?}",
            self.seen
        );
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_kind(line: &str, kind: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(line)
        .is_ok_and(|j| j["kind"] == kind && j["time"].is_u64() && j["text"].is_string())
}

#[test]
fn codacon_streams_token_and_callback_events() {
    let srv = Server::start(1);
    let v = Venus::start(&srv.addr);
    let w = Venus::start(&srv.addr);
    w.clog_admin();
    let mut plain = Stream::start(&v, &[]);
    let mut js = Stream::start(&v, &["--json"]);

    // clog on v: a `token` event. codacon subscribes asynchronously, so
    // clog again until both streams show one (each clog is an event).
    let is_token = |l: &str| l.contains(" token: ") && l.contains("admin");
    let mut got = false;
    for _ in 0..10 {
        v.clog_admin();
        if plain.wait_for(Duration::from_secs(2), is_token)
            && js.wait_for(Duration::from_secs(2), |l| json_kind(l, "token"))
        {
            got = true;
            break;
        }
    }
    assert!(
        got,
        "no `token` event after clog: codacon {:?}, codacon --json {:?}\n{}",
        plain.seen,
        js.seen,
        v.log_tail()
    );
    // The text form: `YYYY-MM-DD HH:MM:SS UTC token: ...`.
    let line = plain.seen.iter().find(|l| is_token(l)).unwrap();
    assert!(line.contains(" UTC token: "), "codacon text line: {line:?}");

    // A change from the second client breaks v's callback on the root.
    let mut got = false;
    for i in 0..10 {
        let names = fsx::read_dir_names(&v.mount).unwrap();
        assert!(!names.contains(&format!("from-w-{i}")));
        fsx::write(w.path(format!("from-w-{i}")), format!("change {i}")).unwrap();
        if plain.wait_for(Duration::from_secs(3), |l| l.contains(" callback: "))
            && js.wait_for(Duration::from_secs(3), |l| json_kind(l, "callback"))
        {
            got = true;
            break;
        }
    }
    assert!(
        got,
        "no `callback` event after another client changed the root: codacon {:?}, codacon --json {:?}\n{}",
        plain.seen,
        js.seen,
        v.log_tail()
    );
    // And v sees the change.
    assert!(
        eventually(Duration::from_secs(10), || {
            fsx::read_dir_names(&v.mount)
                .unwrap()
                .contains(&"from-w-0".to_string())
        }),
        "v never saw w's file"
    );
    // Every --json line is an event object.
    for l in &js.seen {
        let j = json("codacon --json line", l);
        assert!(
            j["kind"].is_string() && j["time"].is_u64() && j["text"].is_string(),
            "codacon --json line {l:?}"
        );
    }
    plain.finish("codacon");
    js.finish("codacon --json");
}

#[test]
fn every_tool_has_help_and_fails_cleanly_without_a_venus() {
    let outside = tempfile::tempdir().unwrap();
    let out_dir = outside.path();
    for tool in ["clog", "ctokens", "cunlog", "cfs", "codacon"] {
        let h = bare(tool, &["--help"], out_dir, "");
        assert!(
            h.status.success(),
            "{tool} --help exits {}: {}",
            h.status,
            text(&h.stderr)
        );
        let t = text(&h.stdout);
        assert!(t.contains("Usage"), "{tool} --help: {t:?}");
        assert!(t.contains("--mount"), "{tool} --help shows --mount: {t:?}");
    }
    for sub in [
        "checkservers",
        "listvol",
        "listacl",
        "setacl",
        "makemount",
        "removemount",
        "flushobject",
        "listcache",
        "getfid",
        "whereis",
    ] {
        let h = bare("cfs", &[sub, "--help"], out_dir, "");
        assert!(h.status.success(), "cfs {sub} --help exits {}", h.status);
        assert!(text(&h.stdout).contains("Usage"), "cfs {sub} --help");
    }
    let cfs_help = text(&bare("cfs", &["--help"], out_dir, "").stdout);
    for word in [
        "checkservers",
        "listacl",
        "setacl",
        "makemount",
        "getfid",
        "whereis",
    ] {
        assert!(
            cfs_help.contains(word),
            "cfs --help lists {word}: {cfs_help:?}"
        );
    }

    // Two clients: without --mount or CODA_MOUNT, a tool finds the one
    // holding its path or working directory, and none from elsewhere.
    let srv = Server::start(1);
    let v = Venus::start(&srv.addr);
    let w = Venus::start(&srv.addr);
    v.clog_admin();
    fsx::write(v.path("f"), b"f").unwrap();
    let in_v = success(
        "ctokens in v's mount",
        &bare("ctokens", &[], &v.mount, ""),
        &v,
    );
    assert!(
        in_v.lines().any(|l| l.starts_with("admin")),
        "ctokens run in v's mount: {in_v:?}"
    );
    let in_w = success(
        "ctokens in w's mount",
        &bare("ctokens", &[], &w.mount, ""),
        &w,
    );
    assert!(
        in_w.contains("no tokens"),
        "ctokens run in w's mount talks to w: {in_w:?}"
    );
    let via_w = bare(
        "cfs",
        &["getfid", w.path("f").to_str().unwrap()],
        out_dir,
        "",
    );
    success("cfs getfid on w's path", &via_w, &w);
    assert!(fid_from_text(&text(&via_w.stdout)).0 != 0);

    // A path outside any Venus mount, no CODA_MOUNT: non-zero, one line.
    let stray = out_dir.join("not-coda");
    std::fs::write(&stray, b"local").unwrap();
    let s = stray.to_str().unwrap();
    for (tool, args) in [
        ("cfs", vec!["getfid", s]),
        ("cfs", vec!["listvol", s]),
        ("cfs", vec!["listacl", out_dir.to_str().unwrap()]),
        ("cfs", vec!["flushobject", s]),
    ] {
        let out = bare(tool, &args, out_dir, "");
        one_line_failure(tool, &format!("{tool} {args:?} outside any mount"), &out);
    }
    // With two Venus mounted nothing is "the only one": tools run outside
    // every mount fail with one line.
    for tool in ["ctokens", "cunlog", "codacon"] {
        let out = bare(tool, &[], out_dir, "");
        one_line_failure(tool, &format!("{tool} outside any mount"), &out);
    }
    let out = bare(
        "clog",
        &["--pipe", "admin"],
        out_dir,
        &format!("{ADMIN_PASSWORD}\n"),
    );
    one_line_failure("clog", "clog outside any mount", &out);
    let out = bare("cfs", &["checkservers"], out_dir, "");
    one_line_failure("cfs", "cfs checkservers outside any mount", &out);

    // --mount or CODA_MOUNT naming a directory no Venus serves: one line.
    let m = out_dir.to_str().unwrap();
    let out = bare("ctokens", &["--mount", m], out_dir, "");
    one_line_failure("ctokens", "ctokens --mount of a plain directory", &out);
    let mut cmd = Command::new(bin("cfs"));
    cmd.args(["getfid", v.path("f").to_str().unwrap()])
        .env("CODA_MOUNT", out_dir);
    let out = run_command(cmd, "", TOOL_TIMEOUT, "cfs getfid with a bad CODA_MOUNT");
    one_line_failure("cfs", "CODA_MOUNT naming a plain directory", &out);
}
