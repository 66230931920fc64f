//! cmon: server statistics, refreshed (Coda's curses `cmon`, as a plain table).

use std::io::{IsTerminal, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use clap::Parser;
use coda_proto::vice::{self, Statistics};
use coda_rpc2::endpoint::{Auth, ConnId};
use coda_rpc2::udp::ClientThread;
use coda_rpc2::Config;
use coda_tools::{call, connect, exit_with, Result, ToolError};
use serde_json::{json, Value};

/// codasrv's port when a SERVER names only a host.
const PORT_DEFAULT: u16 = 2432;
/// How long a server has to answer: the interval, within these bounds
/// (the floor keeps it above rpc2's keepalive).
const ANSWER_SECS_MIN: u64 = 2;
const ANSWER_SECS_MAX: u64 = 10;

/// Shows each server's uptime, CPU, calls, traffic, disk, volumes and RVM
/// log use, refreshed every interval until interrupted. The first table
/// shows totals; later ones show rates since the one before.
#[derive(Parser)]
#[command(name = "cmon", version)]
struct Args {
    /// Show one table (or JSON array) and exit.
    #[arg(long)]
    once: bool,
    /// Print a JSON array, one object per server (a line per refresh).
    #[arg(long)]
    json: bool,
    /// Seconds between refreshes; a server answering slower shows as down.
    #[arg(long, value_name = "SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=86400))]
    interval: u64,
    /// A server shard: ADDR:PORT, or a host (port 2432).
    #[arg(value_name = "SERVER", required = true)]
    servers: Vec<String>,
}

/// One reply and when it came.
struct Sample {
    at: Instant,
    stats: Statistics,
}

/// A server as given, its connection, and the last reply it gave.
struct Monitored {
    name: String,
    addr: SocketAddr,
    conn: Option<ConnId>,
    last: Option<Sample>,
}

fn parse_server(s: &str) -> Result<SocketAddr> {
    let bad = |why: String| ToolError::Usage(format!("bad server address {s:?}: {why}"));
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, PORT_DEFAULT));
    }
    let found = if s.contains(':') {
        s.to_socket_addrs()
    } else {
        (s, PORT_DEFAULT).to_socket_addrs()
    };
    found
        .map_err(|e| bad(e.to_string()))?
        .next()
        .ok_or_else(|| bad("no address".into()))
}

impl Monitored {
    /// Asks for the statistics; a failed connection is dropped, so the
    /// next refresh binds afresh (a restarted server is back then).
    fn ask(&mut self, ct: &ClientThread) -> std::result::Result<Sample, String> {
        let conn = match self.conn.take() {
            Some(c) => c,
            None => connect(ct, self.addr, Auth::Anonymous).map_err(|e| e.to_string())?,
        };
        let r = call::<Statistics>(ct, conn, vice::SUBSYSTEM, vice::op::GET_STATISTICS, &());
        match r {
            Ok(stats) => {
                self.conn = Some(conn);
                Ok(Sample {
                    at: Instant::now(),
                    stats,
                })
            }
            Err(ToolError::Unreachable { reason, .. }) => {
                Err(format!("cannot reach {}: {reason}", self.addr))
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// The last sample, when rates against `now` mean something.
    fn before(&self, now: &Sample) -> Option<&Sample> {
        self.last.as_ref().filter(|p| {
            p.stats.shard == now.stats.shard
                && p.stats.uptime_secs <= now.stats.uptime_secs
                && p.at < now.at
        })
    }
}

/// Every server at once, so a silent one costs one timeout per refresh.
fn poll(ct: &ClientThread, servers: &mut [Monitored]) -> Vec<std::result::Result<Sample, String>> {
    std::thread::scope(|s| {
        let asks: Vec<_> = servers.iter_mut().map(|m| s.spawn(|| m.ask(ct))).collect();
        asks.into_iter()
            .map(|a| a.join().expect("a poll thread"))
            .collect()
    })
}

fn to_json(m: &Monitored, r: &std::result::Result<Sample, String>) -> Value {
    let s = match r {
        Err(e) => return json!({"server": m.name, "up": false, "error": e}),
        Ok(sample) => &sample.stats,
    };
    let calls: serde_json::Map<String, Value> = s
        .calls_by_opcode
        .iter()
        .map(|(op, n)| (op.to_string(), json!(n)))
        .collect();
    json!({
        "server": m.name, "up": true,
        "shard": s.shard, "shards": s.shards, "uptime_secs": s.uptime_secs,
        "calls_by_opcode": calls,
        "bytes_received": s.bytes_received, "bytes_sent": s.bytes_sent,
        "clients": s.clients, "callbacks": s.callbacks, "volumes": s.volumes,
        "rvm_log_used": s.rvm_log_used, "rvm_log_bytes": s.rvm_log_bytes,
        "cpu_user_ms": s.cpu_user_ms, "cpu_system_ms": s.cpu_system_ms,
        "disk_bytes": s.disk_bytes, "disk_free_bytes": s.disk_free_bytes,
        "files": s.files, "bytes": s.bytes,
        "resolution": {"runs": s.resolution.runs, "objects": s.resolution.objects,
                       "conflicts": s.resolution.conflicts, "pending": s.resolution.pending},
    })
}

/// `1.5K`, `12M`: powers of 1024.
fn size(n: f64) -> String {
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit < 5 {
        v /= 1024.0;
        unit += 1;
    }
    let suffix = ["", "K", "M", "G", "T", "P"][unit];
    match (unit, v < 10.0) {
        (0, _) => format!("{v:.0}"),
        (_, true) => format!("{v:.1}{suffix}"),
        (_, false) => format!("{v:.0}{suffix}"),
    }
}

/// `3d04:05` or `4:05:06`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}:{m:02}")
    } else {
        format!("{h}:{m:02}:{s:02}")
    }
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.0}%", part as f64 * 100.0 / whole as f64)
}

/// Column groups as the original laid them out, and each column's width.
const COLUMNS: [(&str, &str, usize); 18] = [
    ("", "shard", 5),
    ("TIME", "uptime", 9),
    ("CPU", "user", 9),
    ("", "sys", 9),
    ("", "util", 5),
    ("RPC", "clients", 7),
    ("", "calls", 9),
    ("", "call/s", 8),
    ("", "in", 8),
    ("", "out", 8),
    ("DISK", "used", 5),
    ("", "free", 6),
    ("VOL", "volumes", 7),
    ("", "files", 8),
    ("RVM", "log", 4),
    ("RES", "runs", 6),
    ("", "objs", 7),
    ("", "confl", 5),
];

/// One row's cells: totals, and rates when there is an earlier sample.
fn cells(now: &Sample, before: Option<&Sample>) -> Vec<String> {
    let s = &now.stats;
    let calls = |s: &Statistics| s.calls_by_opcode.iter().map(|(_, n)| n).sum::<u64>();
    let (util, call_rate, bytes_in, bytes_out) = match before {
        None => (
            "-".into(),
            "-".into(),
            size(s.bytes_received as f64),
            size(s.bytes_sent as f64),
        ),
        Some(p) => {
            let wall_ms = now.at.duration_since(p.at).as_secs_f64() * 1000.0;
            let per_sec = |a: u64, b: u64| a.saturating_sub(b) as f64 * 1000.0 / wall_ms;
            let cpu = |s: &Statistics| s.cpu_user_ms + s.cpu_system_ms;
            let q = &p.stats;
            (
                format!("{:.0}%", per_sec(cpu(s), cpu(q)) / 10.0),
                format!("{:.1}", per_sec(calls(s), calls(q))),
                format!("{}/s", size(per_sec(s.bytes_received, q.bytes_received))),
                format!("{}/s", size(per_sec(s.bytes_sent, q.bytes_sent))),
            )
        }
    };
    vec![
        format!("{}/{}", s.shard, s.shards),
        duration(s.uptime_secs),
        duration(s.cpu_user_ms / 1000),
        duration(s.cpu_system_ms / 1000),
        util,
        s.clients.to_string(),
        calls(s).to_string(),
        call_rate,
        bytes_in,
        bytes_out,
        percent(s.disk_bytes.saturating_sub(s.disk_free_bytes), s.disk_bytes),
        size(s.disk_free_bytes as f64),
        s.volumes.to_string(),
        s.files.to_string(),
        percent(s.rvm_log_used, s.rvm_log_bytes),
        s.resolution.runs.to_string(),
        s.resolution.objects.to_string(),
        s.resolution.conflicts.to_string(),
    ]
}

fn table(servers: &[Monitored], results: &[std::result::Result<Sample, String>]) -> String {
    let name_width = servers
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(0)
        .max(6);
    let mut groups = format!("{:name_width$}", "");
    let mut names = format!("{:name_width$}", "SERVER");
    for (group, name, width) in COLUMNS {
        groups.push_str(&format!(" {group:width$}"));
        names.push_str(&format!(" {name:>width$}"));
    }
    let mut out = format!("{}\n{names}\n", groups.trim_end());
    for (m, r) in servers.iter().zip(results) {
        out.push_str(&format!("{:name_width$}", m.name));
        match r {
            Ok(now) => {
                for ((_, _, width), cell) in COLUMNS.iter().zip(cells(now, m.before(now))) {
                    out.push_str(&format!(" {cell:>width$}"));
                }
            }
            Err(e) => out.push_str(&format!(" down: {e}")),
        }
        out.push('\n');
    }
    out
}

fn run(args: Args) -> Result<()> {
    let mut servers = args
        .servers
        .iter()
        .map(|s| {
            Ok(Monitored {
                name: s.clone(),
                addr: parse_server(s)?,
                conn: None,
                last: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let ct = ClientThread::spawn(
        "0.0.0.0:0".parse().expect("an address"),
        Config {
            peer_timeout: Duration::from_secs(
                args.interval.clamp(ANSWER_SECS_MIN, ANSWER_SECS_MAX),
            ),
            ..Config::default()
        },
    )?;
    let interval = Duration::from_secs(args.interval);
    let redraw = !args.once && !args.json && std::io::stdout().is_terminal();
    let mut stdout = std::io::stdout();
    for refresh in 0u64.. {
        let began = Instant::now();
        let results = poll(&ct, &mut servers);
        let text = if args.json {
            let all: Vec<Value> = servers
                .iter()
                .zip(&results)
                .map(|(m, r)| to_json(m, r))
                .collect();
            format!("{}\n", Value::Array(all))
        } else if redraw {
            format!("\x1b[H\x1b[2J{}", table(&servers, &results))
        } else if refresh > 0 {
            format!("\n{}", table(&servers, &results))
        } else {
            table(&servers, &results)
        };
        if let Err(e) = stdout
            .write_all(text.as_bytes())
            .and_then(|()| stdout.flush())
        {
            // `cmon --json | head` ends quietly.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e.into());
        }
        if args.once {
            break;
        }
        for (m, r) in servers.iter_mut().zip(results) {
            if let Ok(sample) = r {
                m.last = Some(sample);
            }
        }
        std::thread::sleep(interval.saturating_sub(began.elapsed()));
    }
    Ok(())
}

fn main() {
    // Clap's usage errors run to several lines; the interface wants one.
    let args = Args::try_parse().unwrap_or_else(|e| {
        if !e.use_stderr() {
            e.exit() // --help, --version
        }
        let text = e.to_string();
        let first: Vec<&str> = text
            .lines()
            .map(str::trim)
            .take_while(|l| !l.is_empty())
            .collect();
        eprintln!("cmon: {}", first.join(" ").trim_start_matches("error: "));
        std::process::exit(2)
    });
    if let Err(e) = run(args) {
        exit_with("cmon", e);
    }
}
