//! volutil: volume administration against a running server.

use clap::{Parser, Subcommand};
use coda_proto::vice::{VolumeInfo, VolumeKind, VolumeRef};
use std::path::PathBuf;

use coda_proto::volutil::{op, CloneVolume, CreateVolume, DumpEstimate, NameVolume, SUBSYSTEM};
use coda_tools::{dumpfile, exit_with, Admin, AdminArgs, Result};

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
        /// Servers (by name) holding its replicas, version-vector slot
        /// order; a replicated volume is made at the SCM.
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
    /// A read-only snapshot sharing the volume's unchanged data.
    Clone {
        name: String,
        /// The clone's name (default NAME.readonly).
        new_name: Option<String>,
    },
    /// Make or refresh NAME.backup, a read-only snapshot.
    Backup { name: String },
    /// Dump a volume, whole or (--since) what changed since an earlier dump.
    Dump {
        name: String,
        /// The earlier dump (a file) to make an incremental dump against.
        #[arg(long)]
        since: Option<PathBuf>,
        /// Write here instead of to standard output.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// Bytes a full dump of the volume would take.
    Dumpestimate { name: String },
    /// Restore a dump (`-`: standard input): a full dump as new volume NAME,
    /// an incremental one over NAME.
    Restore { file: PathBuf, name: String },
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
            let v: VolumeInfo =
                admin.call(SUBSYSTEM, op::CREATE, &CreateVolume { name, replicas })?;
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
        Cmd::Clone { name, new_name } => {
            let req = CloneVolume {
                volume: VolumeRef::Name(name.clone()),
                name: new_name,
            };
            let v: VolumeInfo = admin.call(SUBSYSTEM, op::CLONE, &req)?;
            match args.admin.json {
                true => println!("{}", json(&v)),
                false => println!("cloned {name} as {} ({:x})", v.name, v.id),
            }
        }
        Cmd::Backup { name } => {
            let v: VolumeInfo = admin.call(SUBSYSTEM, op::BACKUP, &named(name.clone()))?;
            match args.admin.json {
                true => println!("{}", json(&v)),
                false => println!("backed up {name} as {} ({:x})", v.name, v.id),
            }
        }
        Cmd::Dumpestimate { name } => {
            let e: DumpEstimate = admin.call(SUBSYSTEM, op::DUMP_ESTIMATE, &named(name))?;
            match args.admin.json {
                true => println!("{}", serde_json::json!({ "bytes": e.bytes })),
                false => println!("{}", e.bytes),
            }
        }
        Cmd::Dump {
            name,
            since,
            output,
        } => {
            let mut admin = admin;
            let (bytes, incremental) =
                dumpfile::dump(&mut admin, &name, since.as_deref(), output.as_deref())?;
            if let (Some(out), false) = (&output, args.admin.json) {
                let what = if incremental { "incremental" } else { "full" };
                println!("dumped {name}: {bytes} bytes ({what}) to {}", out.display());
            }
        }
        Cmd::Restore { file, name } => {
            let mut admin = admin;
            let (v, incremental) = dumpfile::restore(&mut admin, &file, &name)?;
            match args.admin.json {
                true => println!("{}", json(&v)),
                false => {
                    let what = if incremental { "incremental" } else { "full" };
                    println!(
                        "restored {} ({:x}) from {} ({what})",
                        v.name,
                        v.id,
                        file.display()
                    )
                }
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
