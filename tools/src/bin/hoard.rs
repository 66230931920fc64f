//! hoard: the client's hoard database and walks (INTERFACE.md).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use coda_proto::control::{HoardEntry, Reply, Request};
use coda_tools::venus::{unexpected, MountArgs, Venus};
use coda_tools::{exit_with, Result, ToolError};
use serde_json::json;

#[derive(Parser)]
#[command(
    name = "hoard",
    version,
    about = "What Venus keeps cached for disconnected operation"
)]
struct Args {
    #[command(flatten)]
    mount: MountArgs,
    /// Run the commands in FILE (`-`: standard input): `a PATH PRIORITY[:d+]`,
    /// `d PATH`, `clear`, `list`, `walk`, one per line.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Hoard PATH at PRIORITY (1-1000).
    Add {
        path: PathBuf,
        priority: u32,
        /// Its descendants too.
        #[arg(long)]
        children: bool,
        /// And descendants made later.
        #[arg(long)]
        future: bool,
    },
    /// Stop hoarding PATH.
    Delete { path: PathBuf },
    /// The hoard database.
    List,
    /// Fetch and refresh what is hoarded, highest priority first.
    Walk,
    /// Drop the caller's entries.
    Clear,
}

/// One line of a hoard file as a command.
fn parse_line(line: &str, n: usize) -> Result<Option<Cmd>> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    let bad = |why: &str| ToolError::Usage(format!("line {n}: {why}: {line:?}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    Ok(Some(match words.as_slice() {
        ["a" | "add", path, prio] => {
            let (num, flags) = prio.split_once(':').unwrap_or((prio, ""));
            if flags.chars().any(|c| c != 'd' && c != '+') {
                return Err(bad("flags are d and +"));
            }
            Cmd::Add {
                path: PathBuf::from(path),
                priority: num.parse().map_err(|_| bad("not a priority"))?,
                children: flags.contains('d') || flags.contains('+'),
                future: flags.contains('+'),
            }
        }
        ["a" | "add", path] => Cmd::Add {
            path: PathBuf::from(path),
            priority: 10,
            children: false,
            future: false,
        },
        ["d" | "delete", path] => Cmd::Delete {
            path: PathBuf::from(path),
        },
        ["clear"] => Cmd::Clear,
        ["list"] => Cmd::List,
        ["walk"] => Cmd::Walk,
        _ => return Err(bad("not a hoard command")),
    }))
}

fn path_of(cmd: &Cmd) -> Option<&Path> {
    match cmd {
        Cmd::Add { path, .. } | Cmd::Delete { path } => Some(path),
        _ => None,
    }
}

fn run_one(v: &mut Venus, cmd: Cmd, json: bool) -> Result<()> {
    match cmd {
        Cmd::Add {
            path,
            priority,
            children,
            future,
        } => {
            v.ask(&Request::HoardAdd(HoardEntry {
                path: v.path(&path)?,
                priority,
                children: children || future,
                future,
            }))?;
        }
        Cmd::Delete { path } => {
            v.ask(&Request::HoardDelete(v.path(&path)?))?;
        }
        Cmd::Clear => {
            v.ask(&Request::HoardClear(()))?;
        }
        Cmd::List => match v.ask(&Request::HoardList(()))? {
            Reply::Hoard(entries) => {
                if json {
                    let l: Vec<_> = entries
                        .iter()
                        .map(|e| {
                            json!({"path": e.path, "priority": e.priority,
                                        "children": e.children, "future": e.future})
                        })
                        .collect();
                    println!("{}", serde_json::Value::Array(l));
                }
                for e in entries.iter().filter(|_| !json) {
                    let flags = match (e.children, e.future) {
                        (_, true) => ":d+",
                        (true, false) => ":d",
                        _ => "",
                    };
                    println!("a {} {}{flags}", e.path, e.priority);
                }
            }
            r => return Err(unexpected(r)),
        },
        Cmd::Walk => walk(v, json)?,
    }
    Ok(())
}

fn walk(v: &mut Venus, json: bool) -> Result<()> {
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "hoard walk {bar:30} {pos}/{len} objects, {msg}",
            )
            .expect("a template"),
        );
        b
    });
    let mut reply = v.ask(&Request::HoardWalk(()))?;
    loop {
        let Reply::Walk(p) = reply else {
            return Err(unexpected(reply));
        };
        if let Some(b) = &bar {
            b.set_length(p.total);
            b.set_position(p.done);
            b.set_message(format!("{} bytes", p.bytes));
        }
        if p.finished {
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            if json {
                println!(
                    "{}",
                    json!({"objects": p.done, "bytes": p.bytes, "failed": p.failed})
                );
            } else {
                println!(
                    "hoard walk: {} objects, {} bytes fetched, {} not available",
                    p.done, p.bytes, p.failed
                );
            }
            return Ok(());
        }
        reply = v
            .next_event()?
            .ok_or_else(|| ToolError::Usage("Venus closed the connection".into()))?;
    }
}

fn run(args: Args) -> Result<()> {
    let mut cmds = Vec::new();
    if let Some(f) = &args.file {
        let text = if f.as_os_str() == "-" {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(f)?
        };
        for (i, line) in text.lines().enumerate() {
            cmds.extend(parse_line(line, i + 1)?);
        }
    }
    cmds.extend(args.cmd);
    if cmds.is_empty() {
        return Err(ToolError::Usage(
            "nothing to do: give -f FILE or a subcommand".into(),
        ));
    }
    let mut v = Venus::find(&args.mount, cmds.iter().find_map(path_of))?;
    for cmd in cmds {
        run_one(&mut v, cmd, args.mount.json)?;
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        exit_with("hoard", e);
    }
}
