//! Committed flush (and written) transactions survive SIGKILL at random moments of heavy work,
//! including in the middle of truncation; no-flush transactions after the last flush
//! are wholly present or absent, in order.
//!
//! Each round starts `rvm-basher`, lets it run a random while, kills it with SIGKILL,
//! recovers the RVM here, and checks the segment is exactly the first `n` transactions
//! of the workload with `n` at least every number the basher acknowledged.

// The checker needs only which slots each transaction writes, not how it commits.
#[allow(dead_code)]
#[path = "../src/bin/basher/workload.rs"]
mod workload;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rvm::{Options, Rvm, View};

const SEED: u64 = 0x5eed;
const SLOTS: u64 = 4096;

fn kills() -> u64 {
    std::env::var("RVM_SIGKILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

#[test]
fn acknowledged_flush_commits_survive_hundreds_of_sigkills() {
    survive_sigkills(&[], kills());
}

/// Written (not synced) commits outlive the process too: the kernel keeps them.
#[test]
fn acknowledged_written_commits_survive_sigkills() {
    survive_sigkills(&["--written"], kills() / 3);
}

fn survive_sigkills(extra: &[&str], rounds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let basher = env!("CARGO_BIN_EXE_rvm-basher");
    let data_len = workload::data_len(SLOTS);
    let mut model = vec![0u8; data_len as usize];
    let mut applied = 0u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(SEED);
    let mut survived_acks = 0;
    for round in 0..rounds {
        let mut child = Command::new(basher)
            .args([
                "--dir",
                dir.path().to_str().unwrap(),
                "--seed",
                &SEED.to_string(),
            ])
            .args(["--slots", &SLOTS.to_string(), "--log-kib", "256"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (acks, acked_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(n) = line.parse::<u64>() {
                    let _ = acks.send(n);
                }
            }
        });
        // Most rounds kill in the middle of the work, after the first acknowledgement;
        // the rest at a blind moment, which may fall in startup and recovery.
        let mut acked = 0;
        if round % 5 != 0 {
            acked = acked_rx.recv_timeout(Duration::from_secs(10)).unwrap_or(0);
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..40)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let acked = acked_rx.try_iter().max().unwrap_or(0).max(acked);

        let opts = Options {
            log_area_bytes: 256 << 10,
            background_truncation: false,
            ..Options::default()
        };
        let seg = dir.path().join("basher.seg");
        if !seg.exists() {
            assert_eq!(acked, 0, "round {round}: acknowledged work but no segment");
            continue;
        }
        let (rvm, report) = Rvm::open_files(&seg, &dir.path().join("basher.log"), data_len, opts)
            .unwrap_or_else(|e| panic!("round {round}: recovery failed: {e}"));
        let view = rvm.read().unwrap();
        let n = view.u64_at(0).unwrap();
        assert!(
            n >= acked,
            "round {round}: {acked} acknowledged but only {n} recovered ({report:?})"
        );
        assert!(
            n >= applied,
            "round {round}: went back from {applied} to {n}"
        );
        for i in applied..n {
            workload::apply(&mut model, SEED, i, SLOTS);
        }
        applied = n;
        assert!(
            view.bytes(0, data_len).unwrap() == &model[..],
            "round {round}: segment is not the first {n} transactions ({report:?})"
        );
        survived_acks += u64::from(acked > 0);
    }
    assert!(
        applied > rounds,
        "the basher made too little progress to test anything: {applied}"
    );
    assert!(
        survived_acks > rounds / 2,
        "too few rounds acknowledged anything: {survived_acks}"
    );
}
