//! codacon: the client's events as they happen.

use clap::Parser;
use coda_proto::control::{Reply, Request};
use coda_tools::venus::{unexpected, utc, MountArgs, Venus};
use coda_tools::{exit_with, Result};

/// Streams Venus's events: connects, disconnects, callbacks, tokens,
/// reintegrations, conflicts, hoard walks.
#[derive(Parser)]
#[command(name = "codacon", version)]
struct Args {
    #[command(flatten)]
    mount: MountArgs,
}

fn run(args: Args) -> Result<()> {
    let mut venus = Venus::find(&args.mount, None)?;
    venus.ask(&Request::Events(()))?;
    while let Some(r) = venus.next_event()? {
        let Reply::Event(e) = r else {
            return Err(unexpected(r));
        };
        if args.mount.json {
            println!(
                "{}",
                serde_json::json!({"time": e.time, "kind": e.kind, "text": e.text})
            );
        } else {
            println!("{} {}: {}", utc(e.time), e.kind, e.text);
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        exit_with("codacon", e);
    }
}
