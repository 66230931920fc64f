//! ctokens: the caller's tokens and when they expire.

use clap::Parser;
use coda_proto::control::{Reply, Request};
use coda_tools::venus::{unexpected, utc, MountArgs, Venus};
use coda_tools::{exit_with, Result};

/// Lists the tokens Venus holds for your uid.
#[derive(Parser)]
#[command(name = "ctokens", version)]
struct Args {
    #[command(flatten)]
    mount: MountArgs,
}

fn run(args: Args) -> Result<()> {
    let mut venus = Venus::find(&args.mount, None)?;
    let tokens = match venus.ask(&Request::Tokens(()))? {
        Reply::Tokens(t) => t,
        r => return Err(unexpected(r)),
    };
    if args.mount.json {
        let list: Vec<_> = tokens
            .iter()
            .map(|t| serde_json::json!({"user": t.user, "id": t.user_id, "expires_at": t.expires_at}))
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if tokens.is_empty() {
        println!("no tokens");
    }
    for t in tokens {
        println!(
            "{} (id {}): expires {}",
            t.user,
            t.user_id,
            utc(t.expires_at)
        );
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        exit_with("ctokens", e);
    }
}
