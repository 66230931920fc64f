//! repair: find and settle conflicts (INTERFACE.md).

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use coda_proto::control::{ConflictLine, Repair, Reply, Request, Resolution, Version, UNREACHABLE};
use coda_tools::venus::{unexpected, MountArgs, Venus};
use coda_tools::{exit_with, Result};
use serde_json::json;

#[derive(Parser)]
#[command(name = "repair", version, about = "Find and settle conflicts")]
struct Args {
    #[command(flatten)]
    mount: MountArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The objects in conflict.
    List,
    /// Both versions of an object in conflict.
    Show { path: PathBuf },
    /// Keep the local version (it goes over the server's).
    KeepLocal { path: PathBuf },
    /// Keep the server's version (the local one is dropped).
    KeepServer { path: PathBuf },
    /// Keep both: the server's under the name, the local one as NAME.local.
    KeepBoth { path: PathBuf },
}

impl Cmd {
    fn path(&self) -> Option<&Path> {
        match self {
            Cmd::List => None,
            Cmd::Show { path }
            | Cmd::KeepLocal { path }
            | Cmd::KeepServer { path }
            | Cmd::KeepBoth { path } => Some(path),
        }
    }
}

fn line_json(c: &ConflictLine) -> serde_json::Value {
    json!({"path": c.path, "fid": c.fid.to_string(), "reason": c.reason, "records": c.records})
}

fn version_json(v: &Version) -> serde_json::Value {
    json!({"exists": v.exists, "kind": v.kind, "length": v.length, "mtime": v.mtime,
           "mode": format!("{:o}", v.mode), "hash": v.hash})
}

fn print_version(who: &str, v: &Version) {
    if v.exists {
        println!(
            "  {who}: {} of {} bytes, mode {:o}, mtime {}, blake3 {}",
            v.kind,
            v.length,
            v.mode,
            v.mtime,
            &v.hash[..v.hash.len().min(16)]
        );
    } else if v.kind == UNREACHABLE {
        println!("  {who}: (unreachable)");
    } else {
        println!("  {who}: (none)");
    }
}

fn run(args: Args) -> Result<()> {
    let mut v = Venus::find(&args.mount, args.cmd.path())?;
    let json = args.mount.json;
    let resolution = |r: Resolution, path: &Path, v: &Venus| -> Result<Request> {
        Ok(Request::Repair(Repair {
            path: v.path(path)?,
            resolution: r,
        }))
    };
    let req = match &args.cmd {
        Cmd::List => Request::ListConflicts(()),
        Cmd::Show { path } => Request::ShowConflict(v.path(path)?),
        Cmd::KeepLocal { path } => resolution(Resolution::KeepLocal(()), path, &v)?,
        Cmd::KeepServer { path } => resolution(Resolution::KeepServer(()), path, &v)?,
        Cmd::KeepBoth { path } => resolution(Resolution::KeepBoth(()), path, &v)?,
    };
    match v.ask(&req)? {
        Reply::Conflicts(list) => {
            if json {
                let l: Vec<_> = list.iter().map(line_json).collect();
                println!("{}", serde_json::Value::Array(l));
            } else if list.is_empty() {
                println!("No conflicts");
            } else {
                for c in &list {
                    println!("{}: {} ({})", c.path, c.reason, c.records.join("; "));
                }
            }
        }
        Reply::Conflict(d) => {
            if json {
                println!(
                    "{}",
                    json!({"conflict": line_json(&d.conflict), "local": version_json(&d.local),
                           "server": version_json(&d.server),
                           "replicas": d.replicas.iter()
                               .map(|(at, v)| json!({"server": at, "version": version_json(v)}))
                               .collect::<Vec<_>>()})
                );
            } else {
                println!("{}: {}", d.conflict.path, d.conflict.reason);
                for r in &d.conflict.records {
                    println!("  refused: {r}");
                }
                print_version("local ", &d.local);
                print_version("server", &d.server);
                for (i, (at, r)) in d.replicas.iter().enumerate() {
                    print_version(&format!("replica {} ({at})", i + 1), r);
                }
            }
        }
        Reply::Repaired(done) => {
            if json {
                println!("{}", json!(done));
            } else {
                for l in done {
                    println!("{l}");
                }
            }
        }
        r => return Err(unexpected(r)),
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        exit_with("repair", e);
    }
}
