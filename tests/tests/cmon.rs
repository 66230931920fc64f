//! cmon against a running codasrv and against ports where no one answers,
//! driven as INTERFACE.md writes it.

use std::net::UdpSocket;

use coda_tests::{ok, run, Server};

/// A bound UDP port that never answers (held until dropped).
fn silent_port() -> (UdpSocket, String) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = s.local_addr().unwrap().to_string();
    (s, addr)
}

#[test]
fn cmon_once_json_reports_a_live_servers_statistics() {
    let srv = Server::start(1);
    let out = ok("cmon", &["--once", "--json", &srv.addr]);
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    let all = all.as_array().expect("a JSON array");
    assert_eq!(all.len(), 1, "{out}");
    let s = &all[0];
    assert_eq!(s["server"], srv.addr.as_str(), "{s}");
    assert_eq!(s["up"], true, "{s}");
    assert_eq!(s["shard"], 0, "{s}");
    assert_eq!(s["shards"], 1, "{s}");
    assert!(s["uptime_secs"].is_u64(), "{s}");
    assert!(s["volumes"].as_u64().unwrap() >= 1, "the root volume: {s}");
    assert!(s["disk_bytes"].as_u64().unwrap() > 0, "{s}");
    assert!(s["calls_by_opcode"].is_object(), "{s}");
    assert!(s.get("error").is_none(), "{s}");
}

#[test]
fn cmon_shows_a_silent_server_as_down_and_still_exits_0() {
    let (_held, silent) = silent_port();
    let out = run(
        "cmon",
        &["--once", "--json", "--interval", "2", &silent],
        "",
    );
    assert!(out.status.success(), "{out:?}");
    let all: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &all[0];
    assert_eq!(s["server"], silent.as_str(), "{s}");
    assert_eq!(s["up"], false, "{s}");
    assert!(!s["error"].as_str().unwrap().is_empty(), "{s}");
}

#[test]
fn cmon_text_has_a_row_per_server_up_or_down() {
    let srv = Server::start(1);
    let silent: Vec<_> = (0..4).map(|_| silent_port()).collect();
    let mut args = vec!["--once", "--interval", "2", srv.addr.as_str()];
    args.extend(silent.iter().map(|(_, a)| a.as_str()));
    let out = ok("cmon", &args);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2 + 5, "{out}");
    for group in ["TIME", "CPU", "RPC", "DISK", "VOL", "RVM"] {
        assert!(lines[0].contains(group), "{out}");
    }
    for column in ["SERVER", "uptime", "util", "calls", "free", "volumes"] {
        assert!(lines[1].contains(column), "{out}");
    }
    let live: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(live[0], srv.addr, "{out}");
    assert_eq!(live[1], "0/1", "shard 0 of 1: {out}");
    for (line, (_, addr)) in lines[3..].iter().zip(&silent) {
        assert!(line.starts_with(addr.as_str()), "{out}");
        assert!(line.contains("down"), "{out}");
    }
}

#[test]
fn cmon_refuses_a_bad_address_or_none_in_one_line() {
    for args in [&[][..], &["--once", "no-such-host.invalid:1"][..]] {
        let out = run("cmon", args, "");
        assert!(!out.status.success(), "cmon {args:?} exits non-zero");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(err.starts_with("cmon: "), "{err:?}");
    }
}
