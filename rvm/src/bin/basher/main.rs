//! rvm-basher: random transaction stress with verification, after Coda's `rvm_basher`.
//!
//! Opens (recovering) or creates an RVM in `--dir`; with `--verify`, checks that the
//! segment holds exactly the first `n` transactions of the seeded workload. Then runs transactions
//! `n..`, printing `n` on stdout each time a flush commit of transaction `n - 1`
//! returns (with `--written`, each time any commit returns, the others being
//! written-not-synced). A crash test kills it at random and checks every printed
//! number survives.

mod workload;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use rvm::{Durability, Mode, Options, Rvm, View};

struct Args {
    dir: PathBuf,
    seed: u64,
    slots: u64,
    transactions: u64,
    log_kib: u64,
    verify: bool,
    written: bool,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        dir: PathBuf::from("."),
        seed: 1,
        slots: 4096,
        transactions: u64::MAX,
        log_kib: 256,
        verify: false,
        written: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--dir" => args.dir = PathBuf::from(value()?),
            "--seed" => args.seed = number(value()?)?,
            "--slots" => args.slots = number(value()?)?,
            "--transactions" => args.transactions = number(value()?)?,
            "--log-kib" => args.log_kib = number(value()?)?,
            "--verify" => args.verify = true,
            "--written" => args.written = true,
            "--help" | "-h" => {
                println!("usage: rvm-basher [--dir DIR] [--seed N] [--slots N] [--transactions N] [--log-kib N] [--verify] [--written]");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn run(args: Args) -> Result<(), String> {
    let opts = Options {
        log_area_bytes: args.log_kib << 10,
        ..Options::default()
    };
    let data_len = workload::data_len(args.slots);
    let (rvm, _report) = Rvm::open_files(
        &args.dir.join("basher.seg"),
        &args.dir.join("basher.log"),
        data_len,
        opts,
    )
    .map_err(|e| e.to_string())?;
    let start = rvm
        .read()
        .and_then(|v| v.u64_at(0))
        .map_err(|e| e.to_string())?;
    if args.verify {
        let mut expect = vec![0u8; data_len as usize];
        for i in 0..start {
            workload::apply(&mut expect, args.seed, i, args.slots);
        }
        let intact = rvm
            .read()
            .and_then(|v| v.bytes(0, data_len).map(|b| b == expect))
            .map_err(|e| e.to_string())?;
        if !intact {
            return Err(format!(
                "segment is not the first {start} transactions of the workload"
            ));
        }
        eprintln!("rvm-basher: recovered {start} transactions intact");
    }
    let mut out = std::io::stdout().lock();
    for i in start..args.transactions {
        let plan = workload::plan(args.seed, i, args.slots);
        let mut tx = rvm.begin(Mode::NoRestore).map_err(|e| e.to_string())?;
        for &s in &plan.slots {
            tx.write(
                workload::COUNTER_BYTES + s * workload::SLOT_BYTES,
                &workload::slot_bytes(i, s),
            )
            .map_err(|e| e.to_string())?;
        }
        tx.write_u64(0, i + 1).map_err(|e| e.to_string())?;
        let durability = match (plan.flush, args.written) {
            (true, _) => Durability::Flush,
            (false, true) => Durability::Written,
            (false, false) => Durability::NoFlush,
        };
        tx.commit(durability).map_err(|e| e.to_string())?;
        if durability != Durability::NoFlush {
            writeln!(out, "{}", i + 1)
                .and_then(|_| out.flush())
                .map_err(|e| e.to_string())?;
        }
        if plan.truncate {
            rvm.truncate().map_err(|e| e.to_string())?;
        }
    }
    rvm.close().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    match parse().and_then(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rvm-basher: {e}");
            ExitCode::FAILURE
        }
    }
}
