//! cunlog: drop the caller's tokens.

use clap::Parser;
use coda_proto::control::Request;
use coda_tools::venus::{MountArgs, Venus};
use coda_tools::{exit_with, Result};

/// Drops the tokens Venus holds for your uid: you are anyone again.
#[derive(Parser)]
#[command(name = "cunlog", version)]
struct Args {
    #[command(flatten)]
    mount: MountArgs,
}

fn run(args: Args) -> Result<()> {
    Venus::find(&args.mount, None)?.ask(&Request::Unlog(()))?;
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        exit_with("cunlog", e);
    }
}
