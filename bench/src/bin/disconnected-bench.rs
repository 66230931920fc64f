//! Disconnected operation end to end (issue 6), in one run:
//! - a workload (unpack a source tree, then edit it: append to every file,
//!   chmod some, rename some, remove some, add new ones) on a local
//!   directory and through a disconnected Venus mount, as a speed ratio;
//! - the reintegration of the log that workload left, on loopback, in
//!   records per second, beside the same workload run connected
//!   (write-through: one call per update).
//!
//! `cargo run --release -p coda-bench --bin disconnected-bench [-- --files N]`

use std::fs;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use coda_tests::venus::Venus;
use coda_tests::Server;

fn files_arg() -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == "--files")
        .map_or(4000, |w| w[1].parse().expect("--files N"))
}

/// A tar of `files` files of 2 KiB in 100 directories.
fn make_tar(dir: &Path, files: usize) -> std::path::PathBuf {
    let src = dir.join("src");
    for i in 0..files {
        let d = src.join(format!("d{:03}", i % 100));
        fs::create_dir_all(&d).unwrap();
        let body: String = (0..64)
            .map(|l| format!("line {l} of file {i}: some text for the tree\n"))
            .collect();
        fs::write(d.join(format!("f{i:05}.c")), &body.as_bytes()[..2048]).unwrap();
    }
    let tar = dir.join("tree.tar");
    let ok = std::process::Command::new("tar")
        .arg("cf")
        .arg(&tar)
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar cf");
    tar
}

/// Unpacks `tar` into `root/w` and edits it; the time taken.
fn workload(root: &Path, tar: &Path, files: usize) -> Duration {
    let t = Instant::now();
    let w = root.join("w");
    fs::create_dir_all(&w).unwrap();
    let ok = std::process::Command::new("tar")
        .arg("xf")
        .arg(tar)
        .arg("-C")
        .arg(&w)
        .status()
        .unwrap()
        .success();
    assert!(ok, "tar xf");
    for i in 0..files {
        let d = w.join(format!("d{:03}", i % 100));
        let f = d.join(format!("f{i:05}.c"));
        if i % 20 == 7 {
            fs::remove_file(&f).unwrap();
            continue;
        }
        let mut h = fs::OpenOptions::new().append(true).open(&f).unwrap();
        h.write_all(b"/* edited */\n").unwrap();
        drop(h);
        if i % 5 == 1 {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(&f, fs::Permissions::from_mode(0o600)).unwrap();
        }
        if i % 10 == 3 {
            fs::rename(&f, d.join(format!("f{i:05}.renamed.c"))).unwrap();
        }
    }
    let n = w.join("new");
    fs::create_dir_all(&n).unwrap();
    for i in 0..files / 4 {
        fs::write(n.join(format!("n{i:05}")), [b'n'; 1024]).unwrap();
    }
    t.elapsed()
}

fn cml_records(v: &Venus) -> u64 {
    let out = v.cfs("listvol", &["--json", v.mount.to_str().unwrap()]);
    assert!(out.status.success());
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    j["cml_records"].as_u64().unwrap()
}

fn cfs(v: &Venus, sub: &str) {
    let out = v.cfs(sub, &[]);
    assert!(
        out.status.success(),
        "cfs {sub}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn main() {
    let files = files_arg();
    let server = Server::start(1);
    let v = Venus::start_with_args(
        &server.addr,
        &tempfile::tempdir().unwrap().keep().join("cache"),
        &tempfile::tempdir().unwrap().keep().join("mnt"),
        &["--cache-size", "8G"],
    );
    v.clog_admin();
    let scratch = tempfile::tempdir().unwrap();
    let tar = make_tar(scratch.path(), files);
    let local = scratch.path().join("local");
    fs::create_dir_all(&local).unwrap();
    println!("disconnected-bench: {files} files of 2 KiB, unpacked and edited");

    let lt = workload(&local, &tar, files);
    fs::create_dir_all(v.path("disc")).unwrap();
    cfs(&v, "disconnect");
    let mt = workload(&v.path("disc"), &tar, files);
    println!(
        "unpack + edit                  local {:>8.3} s  disconnected mount {:>8.3} s  mount/local speed {:.2}",
        lt.as_secs_f64(),
        mt.as_secs_f64(),
        lt.as_secs_f64() / mt.as_secs_f64()
    );
    let records = cml_records(&v);
    let t = Instant::now();
    cfs(&v, "reconnect");
    let rt = t.elapsed();
    let left = cml_records(&v);
    assert_eq!(left, 0, "the log was reintegrated");
    println!(
        "reintegrate {records} records      {:>8.3} s  {:>10.0} records/s",
        rt.as_secs_f64(),
        records as f64 / rt.as_secs_f64()
    );
    fs::create_dir_all(v.path("conn")).unwrap();
    let ct = workload(&v.path("conn"), &tar, files);
    println!(
        "the same workload connected    {:>8.3} s  (write-through; {:.0} updates/s if as many as logged)",
        ct.as_secs_f64(),
        records as f64 / ct.as_secs_f64()
    );
    drop(v);
}
