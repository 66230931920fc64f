//! volutil: volume administration against a running server.

use clap::{Parser, Subcommand};
use coda_proto::vice::{VolumeInfo, VolumeKind, VolumeRef};
use coda_proto::volutil::{op, CreateVolume, NameVolume, SUBSYSTEM};
use coda_tools::{exit_with, Admin, AdminArgs, Result, ToolError};

#[derive(Parser)]
#[command(name = "volutil", version, about = "Coda volume administration")]
struct Args {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a new volume.
    Create {
        name: String,
        /// Servers holding replicas (replication comes later: only this server now).
        #[arg(long, num_args = 1..)]
        replicas: Vec<String>,
    },
    /// List every volume.
    List,
    /// One volume's id, servers, state, files and bytes.
    Info { name: String },
    /// Refuse updates to a volume.
    Lock { name: String },
    /// Accept updates again.
    Unlock { name: String },
    /// Remove a volume and everything in it.
    Remove { name: String },
}

fn kind(k: VolumeKind) -> &'static str {
    match k {
        VolumeKind::ReadWrite => "read-write",
        VolumeKind::ReadOnly => "read-only",
        VolumeKind::Backup => "backup",
        VolumeKind::Replicated => "replicated",
    }
}

fn json(v: &VolumeInfo) -> serde_json::Value {
    serde_json::json!({
        "id": format!("{:x}", v.id),
        "name": v.name,
        "kind": kind(v.kind),
        "servers": v.servers,
        "root": v.root.to_string(),
        "stamp": v.stamp,
        "locked": v.locked,
        "files": v.files,
        "bytes": v.bytes,
    })
}

fn show(v: &VolumeInfo, as_json: bool) {
    if as_json {
        println!("{}", json(v));
        return;
    }
    println!("name:    {}", v.name);
    println!("id:      {:x}", v.id);
    println!("kind:    {}", kind(v.kind));
    println!("servers: {}", v.servers.join(" "));
    println!("state:   {}", if v.locked { "locked" } else { "online" });
    println!("files:   {}", v.files);
    println!("bytes:   {}", v.bytes);
}

fn run(args: Args) -> Result<()> {
    let admin = Admin::connect(&args.admin)?;
    let named = |name: String| NameVolume {
        volume: VolumeRef::Name(name),
    };
    match args.cmd {
        Cmd::Create { name, replicas } => {
            if replicas.len() > 1 {
                return Err(ToolError::Usage(
                    "replicated volumes are not supported yet: give at most one server".into(),
                ));
            }
            let v: VolumeInfo = admin.call(SUBSYSTEM, op::CREATE, &CreateVolume { name })?;
            if args.admin.json {
                println!("{}", json(&v));
            } else {
                println!(
                    "created volume {} ({:x}) on {}",
                    v.name,
                    v.id,
                    v.servers.join(" ")
                );
            }
        }
        Cmd::List => {
            let all: Vec<VolumeInfo> = admin.call(SUBSYSTEM, op::LIST, &())?;
            if args.admin.json {
                println!(
                    "{}",
                    serde_json::Value::Array(all.iter().map(json).collect())
                );
            } else {
                println!("{:<10} {:<24} {:<11} SERVER", "ID", "NAME", "KIND");
                for v in all {
                    println!(
                        "{:<10x} {:<24} {:<11} {}",
                        v.id,
                        v.name,
                        kind(v.kind),
                        v.servers.join(" ")
                    );
                }
            }
        }
        Cmd::Info { name } => show(
            &admin.call(SUBSYSTEM, op::INFO, &named(name))?,
            args.admin.json,
        ),
        Cmd::Lock { name } => show(
            &admin.call(SUBSYSTEM, op::LOCK, &named(name))?,
            args.admin.json,
        ),
        Cmd::Unlock { name } => show(
            &admin.call(SUBSYSTEM, op::UNLOCK, &named(name))?,
            args.admin.json,
        ),
        Cmd::Remove { name } => {
            admin.call_unit(SUBSYSTEM, op::REMOVE, &named(name.clone()))?;
            if !args.admin.json {
                println!("removed volume {name}");
            }
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        exit_with("volutil", e);
    }
}
