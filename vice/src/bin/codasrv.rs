//! codasrv: the Coda file server (Vice).
//!
//! `codasrv --root DIR [--listen ADDR:PORT] [--cores N] [--name NAME] [--peers NAME=ADDR,...]`
//! An empty or missing DIR becomes a new cell. Prints
//! `codasrv ready on ADDR:PORT` once it answers calls; SIGTERM stops it cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::Parser;
use coda_vice::server::{Server, ServerOptions};
use coda_vice::shard::ShardOptions;

#[derive(Parser)]
#[command(name = "codasrv", version, about = "The Coda file server (Vice)")]
struct Args {
    /// Server root: configuration, RVM files, containers, users, cell key.
    #[arg(long)]
    root: PathBuf,
    /// Address and port of the first shard (the others take free ports on the same address).
    #[arg(long, default_value = "127.0.0.1:2432")]
    listen: SocketAddr,
    /// Shards (one pinned thread each) for a new cell; defaults to all cores.
    #[arg(long)]
    cores: Option<u32>,
    /// This server's name in the cell.
    #[arg(long)]
    name: Option<String>,
    /// The servers of a cell of several, `NAME=ADDR:PORT,...`, the SCM
    /// first; a new server joins with CODA_ADMIN_PASSWORD.
    #[arg(long)]
    peers: Option<String>,
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CODA_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.cores == Some(0) {
        fail("--cores must be at least 1");
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if let Err(e) = signal_hook::flag::register(sig, stop.clone()) {
            fail(&format!("signal handler: {e}"));
        }
    }
    let server = match Server::start(ServerOptions {
        root: args.root,
        listen: args.listen,
        cores: args.cores,
        name: args.name,
        peers: args.peers,
        shard: ShardOptions::default(),
    }) {
        Ok(s) => s,
        Err(e) => fail(&e.to_string()),
    };
    println!("codasrv ready on {}", server.addr);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    server.stop();
}

fn fail(msg: &str) -> ! {
    eprintln!("codasrv: {msg}");
    std::process::exit(1);
}
