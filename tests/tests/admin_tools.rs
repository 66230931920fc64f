//! volutil and pdbtool against a running codasrv, driven as INTERFACE.md
//! writes them.

use coda_tests::{ok, run, Server};

#[test]
fn volutil_creates_lists_locks_and_removes_volumes() {
    let srv = Server::start(2);
    let pw = srv.password_file();
    let pw = pw.to_str().unwrap();
    let a = |args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "--server".into(),
            srv.addr.clone(),
            "--password-file".into(),
            pw.into(),
        ];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    let created = ok(
        "volutil",
        &a(&["create", "u.alice"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(created.starts_with("created volume u.alice"), "{created}");
    let list = ok(
        "volutil",
        &a(&["list", "--json"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"coda.root") && names.contains(&"u.alice"),
        "{names:?}"
    );
    let info = ok(
        "volutil",
        &a(&["info", "u.alice", "--json"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["locked"], false);
    assert_eq!(info["files"], 1); // its root directory
    let locked = ok(
        "volutil",
        &a(&["lock", "u.alice", "--json"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&locked).unwrap()["locked"],
        true
    );
    let unlocked = ok(
        "volutil",
        &a(&["unlock", "u.alice"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(unlocked.contains("state:   online"), "{unlocked}");
    // A second volume of the same name, and errors, exit non-zero with one line.
    let dup = run(
        "volutil",
        &a(&["create", "u.alice"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "",
    );
    assert!(!dup.status.success());
    let err = String::from_utf8(dup.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("volutil: "), "{err}");
    ok(
        "volutil",
        &a(&["remove", "u.alice"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let gone = run(
        "volutil",
        &a(&["info", "u.alice"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "",
    );
    assert!(!gone.status.success());
    // Without credentials: a clear refusal.
    let none = run("volutil", &["--server", &srv.addr, "create", "x"], "");
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("--password-file"));
    // A wrong password is refused.
    let bad = srv.root.join("bad.password");
    std::fs::write(&bad, "nope\n").unwrap();
    let refused = run(
        "volutil",
        &[
            "--server",
            &srv.addr,
            "--password-file",
            bad.to_str().unwrap(),
            "list",
        ],
        "",
    );
    assert!(!refused.status.success());
    // SIGTERM stops the server cleanly.
    assert!(srv.terminate().success());
}

#[test]
fn pdbtool_adds_users_and_nested_groups_that_can_log_in() {
    let srv = Server::start(1);
    let pw = srv.password_file();
    let base = [
        "--server",
        srv.addr.as_str(),
        "--password-file",
        pw.to_str().unwrap(),
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let args = with(&["user", "add", "alice", "--password-stdin"]);
    let out = run(
        "pdbtool",
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "alice-secret\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let made = ok(
        "pdbtool",
        &with(&["user", "add", "bob", "--json"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let made: serde_json::Value = serde_json::from_str(&made).unwrap();
    let bob_pw = made["password"].as_str().unwrap().to_string();
    ok(
        "pdbtool",
        &with(&["group", "add", "alice:friends", "--owner", "alice"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    ok(
        "pdbtool",
        &with(&["group", "add", "alice:close", "--owner", "alice"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    ok(
        "pdbtool",
        &with(&["group", "add-member", "alice:close", "bob"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    ok(
        "pdbtool",
        &with(&["group", "add-member", "alice:friends", "alice:close"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let groups = ok(
        "pdbtool",
        &with(&["group", "list", "--json"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let groups: serde_json::Value = serde_json::from_str(&groups).unwrap();
    let friends = groups
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "alice:friends")
        .unwrap();
    assert_eq!(friends["owner"], "alice");
    assert_eq!(friends["members"], serde_json::json!(["alice:close"]));
    let users = ok(
        "pdbtool",
        &with(&["user", "list"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(
        users.contains("alice") && users.contains("bob") && users.contains("admin"),
        "{users}"
    );
    // The new users' passwords work (and bob is no administrator).
    let bob_file = srv.root.join("bob.password");
    std::fs::write(&bob_file, format!("{bob_pw}\n")).unwrap();
    let as_bob = [
        "--server",
        srv.addr.as_str(),
        "--user",
        "bob",
        "--password-file",
        bob_file.to_str().unwrap(),
    ];
    let denied = run(
        "pdbtool",
        &[&as_bob[..], &["user", "add", "eve"]].concat(),
        "",
    );
    assert!(!denied.status.success());
    assert!(String::from_utf8_lossy(&denied.stderr).contains("administrators only"));
    // Duplicates are refused.
    let dup = run(
        "pdbtool",
        &with(&["user", "add", "alice"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "",
    );
    assert!(!dup.status.success());
}
