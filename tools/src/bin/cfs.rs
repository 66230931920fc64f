//! cfs: the client's file-system commands (INTERFACE.md).

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use coda_proto::control::{AclLine, MakeMount, Reply, Request, SetAcl};
use coda_tools::venus::{unexpected, MountArgs, Venus};
use coda_tools::{exit_with, Result};
use serde_json::json;

#[derive(Parser)]
#[command(name = "cfs", version, about = "Coda client file-system commands")]
struct Args {
    #[command(flatten)]
    mount: MountArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Probe the servers now; reconnect what answers.
    #[command(visible_alias = "cs")]
    Checkservers,
    /// Force disconnected operation: updates are logged.
    Disconnect,
    /// End forced disconnection; the logs are reintegrated.
    Reconnect,
    /// Write-through: reintegrate what is logged, then ship every update.
    Strong,
    /// Log updates and reintegrate them in the background.
    #[command(visible_alias = "wd")]
    Writedisconnect,
    /// Back to write-through after reintegrating.
    #[command(visible_alias = "wr")]
    Writereconnect,
    /// Write the volume's CML and the data it refers to as a tar archive.
    #[command(visible_alias = "ck")]
    Checkpointml { path: PathBuf, out: PathBuf },
    /// A volume's name, id, servers, state and CML.
    #[command(visible_alias = "lv")]
    Listvol { path: PathBuf },
    /// A directory's access list.
    #[command(visible_alias = "la")]
    Listacl { path: PathBuf },
    /// Change a directory's access list: NAME RIGHTS pairs.
    #[command(visible_alias = "sa")]
    Setacl {
        /// Set negative (denying) entries.
        #[arg(long)]
        negative: bool,
        /// Start from an empty list.
        #[arg(long)]
        clear: bool,
        path: PathBuf,
        /// NAME RIGHTS [NAME RIGHTS...]; rights from rlidwka, all, none, read, write.
        #[arg(num_args = 2.., required = true)]
        pairs: Vec<String>,
    },
    /// Mount a volume at a new name.
    #[command(visible_alias = "mkm")]
    Makemount { path: PathBuf, volume: String },
    /// Remove a mount point.
    #[command(visible_alias = "rmm")]
    Removemount { path: PathBuf },
    /// Drop cached data of objects.
    #[command(visible_alias = "fl")]
    Flushobject {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// What is cached (of the volume holding PATH).
    #[command(visible_alias = "lc")]
    Listcache { path: Option<PathBuf> },
    /// An object's fid.
    Getfid { path: PathBuf },
    /// The servers of the volume holding PATH.
    Whereis { path: PathBuf },
}

impl Cmd {
    /// The path that names the Venus to ask.
    fn path(&self) -> Option<&Path> {
        match self {
            Cmd::Checkservers
            | Cmd::Disconnect
            | Cmd::Reconnect
            | Cmd::Strong
            | Cmd::Writedisconnect
            | Cmd::Writereconnect => None,
            Cmd::Listvol { path }
            | Cmd::Checkpointml { path, .. }
            | Cmd::Listacl { path }
            | Cmd::Setacl { path, .. }
            | Cmd::Makemount { path, .. }
            | Cmd::Removemount { path }
            | Cmd::Getfid { path }
            | Cmd::Whereis { path } => Some(path),
            Cmd::Flushobject { paths } => paths.first().map(PathBuf::as_path),
            Cmd::Listcache { path } => path.as_deref(),
        }
    }
}

fn run(args: Args) -> Result<()> {
    let mut v = Venus::find(&args.mount, args.cmd.path())?;
    let json = args.mount.json;
    match args.cmd {
        Cmd::Checkservers => match v.ask(&Request::CheckServers(()))? {
            Reply::Servers(s) => {
                if json {
                    let l: Vec<_> = s
                        .iter()
                        .map(|s| json!({"server": s.addr, "up": s.up}))
                        .collect();
                    println!("{}", serde_json::Value::Array(l));
                } else if s.iter().all(|s| s.up) {
                    println!("All servers up");
                } else {
                    let down: Vec<_> = s
                        .iter()
                        .filter(|s| !s.up)
                        .map(|s| s.addr.as_str())
                        .collect();
                    println!("These servers still down: {}", down.join(" "));
                }
            }
            r => return Err(unexpected(r)),
        },
        Cmd::Disconnect => {
            v.ask(&Request::Disconnect(()))?;
        }
        Cmd::Reconnect => {
            v.ask(&Request::Reconnect(()))?;
        }
        Cmd::Writedisconnect => {
            v.ask(&Request::WriteDisconnect(()))?;
        }
        Cmd::Strong | Cmd::Writereconnect => {
            v.ask(&Request::WriteReconnect(()))?;
        }
        Cmd::Checkpointml { path, out } => {
            let mut file = std::fs::File::create(&out)?;
            let mut reply = v.ask(&Request::CheckpointMl(v.path(&path)?))?;
            loop {
                match reply {
                    Reply::Data(bytes) => std::io::Write::write_all(&mut file, &bytes)?,
                    Reply::Ok(()) => break,
                    r => return Err(unexpected(r)),
                }
                reply = match v.next_event()? {
                    Some(Reply::Error(e)) => return Err(coda_tools::ToolError::Usage(e)),
                    Some(r) => r,
                    None => {
                        return Err(coda_tools::ToolError::Usage(
                            "Venus closed the connection".into(),
                        ))
                    }
                };
            }
            file.sync_all()?;
        }
        Cmd::Listvol { path } => match v.ask(&Request::ListVol(v.path(&path)?))? {
            Reply::Volume(s) => {
                if json {
                    println!(
                        "{}",
                        json!({"name": s.name, "id": format!("{:x}", s.id), "servers": s.servers,
                               "state": s.state, "cml_records": s.cml_records, "cml_bytes": s.cml_bytes,
                               "waits_for_token_of_uid": s.waits_for_token_of_uid,
                               "replicas": s.replicas.iter().map(|r| json!({"server": r.server,
                                   "up": r.up, "read": r.read})).collect::<Vec<_>>()})
                    );
                } else {
                    println!("Status of volume {:x} (named \"{}\")", s.id, s.name);
                    println!("  servers: {}", s.servers.join(" "));
                    if s.replicas.len() > 1 {
                        let states: Vec<String> = s
                            .replicas
                            .iter()
                            .map(|r| format!("{} ({})", r.server, replica_state(r)))
                            .collect();
                        println!("  replicas: {}", states.join(" "));
                    }
                    println!("  state: {}", s.state);
                    println!("  CML: {} records, {} bytes", s.cml_records, s.cml_bytes);
                    if let Some(uid) = s.waits_for_token_of_uid {
                        println!("  reintegration waits for a token: uid {uid} should run clog");
                    }
                }
            }
            r => return Err(unexpected(r)),
        },
        Cmd::Listacl { path } => match v.ask(&Request::ListAcl(v.path(&path)?))? {
            Reply::Acl(acl) => {
                if json {
                    let l = |v: &[AclLine]| -> Vec<_> {
                        v.iter()
                            .map(|a| json!({"name": a.name, "rights": a.rights}))
                            .collect()
                    };
                    println!(
                        "{}",
                        json!({"positive": l(&acl.positive), "negative": l(&acl.negative)})
                    );
                } else {
                    for a in &acl.positive {
                        println!("{:>24}  {}", a.name, a.rights);
                    }
                    if !acl.negative.is_empty() {
                        println!("Negative rights:");
                        for a in &acl.negative {
                            println!("{:>24}  {}", a.name, a.rights);
                        }
                    }
                }
            }
            r => return Err(unexpected(r)),
        },
        Cmd::Setacl {
            negative,
            clear,
            path,
            pairs,
        } => {
            if pairs.len() % 2 != 0 {
                return Err(coda_tools::ToolError::Usage(
                    "setacl takes NAME RIGHTS pairs".into(),
                ));
            }
            let entries = pairs
                .chunks(2)
                .map(|p| AclLine {
                    name: p[0].clone(),
                    rights: p[1].clone(),
                })
                .collect();
            v.ask(&Request::SetAcl(SetAcl {
                path: v.path(&path)?,
                clear,
                negative,
                entries,
            }))?;
        }
        Cmd::Makemount { path, volume } => {
            v.ask(&Request::MakeMount(MakeMount {
                path: v.path(&path)?,
                volume,
            }))?;
        }
        Cmd::Removemount { path } => {
            v.ask(&Request::RemoveMount(v.path(&path)?))?;
        }
        Cmd::Flushobject { paths } => {
            let paths = paths.iter().map(|p| v.path(p)).collect::<Result<_>>()?;
            v.ask(&Request::FlushObject(paths))?;
        }
        Cmd::Listcache { path } => {
            let path = path.map(|p| v.path(&p)).transpose()?;
            match v.ask(&Request::ListCache(path))? {
                Reply::Cache(entries) => {
                    if json {
                        let l: Vec<_> = entries
                            .iter()
                            .map(|e| {
                                json!({"fid": e.fid.to_string(), "path": e.path, "kind": e.kind,
                                       "length": e.length, "has_data": e.has_data, "valid": e.valid})
                            })
                            .collect();
                        println!("{}", serde_json::Value::Array(l));
                    } else {
                        for e in entries {
                            let flags = format!(
                                "{}{}",
                                if e.has_data { "D" } else { "-" },
                                if e.valid { "V" } else { "-" }
                            );
                            println!(
                                "{flags} {:<10} {:>12} {:<28} {}",
                                e.kind, e.length, e.fid, e.path
                            );
                        }
                    }
                }
                r => return Err(unexpected(r)),
            }
        }
        Cmd::Getfid { path } => match v.ask(&Request::GetFid(v.path(&path)?))? {
            Reply::Fid(f) => {
                if json {
                    println!("{}", json!({"path": path, "fid": f.to_string()}));
                } else {
                    println!("FID = {f}  {}", path.display());
                }
            }
            r => return Err(unexpected(r)),
        },
        Cmd::Whereis { path } => match v.ask(&Request::WhereIs(v.path(&path)?))? {
            Reply::WhereIs(replicas) => {
                if json {
                    let servers: Vec<&str> = replicas.iter().map(|r| r.server.as_str()).collect();
                    println!("{}", json!(servers));
                } else {
                    let shown: Vec<String> = replicas
                        .iter()
                        .map(|r| match r.up {
                            true => r.server.clone(),
                            false => format!("{} (down)", r.server),
                        })
                        .collect();
                    println!("  {}", shown.join("  "));
                }
            }
            r => return Err(unexpected(r)),
        },
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        exit_with("cfs", e);
    }
}

/// `up, read` / `down`: a replica's state for `cfs listvol`.
fn replica_state(r: &coda_proto::control::ReplicaState) -> &'static str {
    match (r.up, r.read) {
        (true, true) => "up, read",
        (true, false) => "up",
        (false, _) => "down",
    }
}
