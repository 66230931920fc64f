//! Finding and talking to a running Venus over its control socket.
//!
//! A tool finds its Venus from `--mount M`, else `$CODA_MOUNT`, else the
//! mount holding the path it was given (or the current directory), else
//! the only Venus mounted: every object in a Venus mount answers the
//! extended attribute `user.coda.control` with the socket's path.

use std::ffi::CString;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use coda_proto::control::{self, Reply, Request};

use crate::{Result, ToolError};

const XATTR: &str = "user.coda.control";

/// How a client tool names its Venus.
#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// The Venus mount to talk to (else $CODA_MOUNT, the path's mount, or the only one).
    #[arg(long, global = true, env = "CODA_MOUNT")]
    pub mount: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The control socket behind `path`, if `path` is in a Venus mount.
fn socket_behind(path: &Path) -> Option<PathBuf> {
    let p = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    let name = CString::new(XATTR).expect("no NUL");
    let mut buf = vec![0u8; 4096];
    // SAFETY: NUL-terminated strings and a buffer of the length given.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n <= 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(PathBuf::from(String::from_utf8(buf).ok()?))
}

/// Every Venus mount on this machine.
fn venus_mounts() -> Vec<PathBuf> {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return Vec::new();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_, at, kind) = (f.next()?, f.next()?, f.next()?);
            (kind == "fuse.venus").then(|| PathBuf::from(at.replace("\\040", " ")))
        })
        .collect()
}

/// A session with a Venus.
pub struct Venus {
    stream: UnixStream,
    /// The mount point it serves.
    pub mount: PathBuf,
}

impl Venus {
    /// Finds the Venus for `args` and the path a tool was given.
    pub fn find(args: &MountArgs, path: Option<&Path>) -> Result<Venus> {
        let mut tried = Vec::new();
        if let Some(m) = &args.mount {
            tried.push(m.clone());
        } else {
            let here = match path {
                Some(p) => std::path::absolute(p)?,
                None => std::env::current_dir()?,
            };
            // The path itself may not exist yet (makemount): its parents do.
            tried.extend(here.ancestors().map(Path::to_path_buf));
            tried.extend(match venus_mounts().as_slice() {
                [only] => vec![only.clone()],
                _ => Vec::new(),
            });
        }
        for t in &tried {
            if let Some(sock) = socket_behind(t) {
                let stream = UnixStream::connect(&sock)
                    .map_err(|e| ToolError::Usage(format!("{}: {e}", sock.display())))?;
                let mount = mount_of(t);
                return Ok(Venus { stream, mount });
            }
        }
        Err(ToolError::Usage(match &args.mount {
            Some(m) => format!("{}: no Venus serves this mount", m.display()),
            None => "no Venus found: give --mount M or set CODA_MOUNT".into(),
        }))
    }

    /// One request, one reply; a Venus error is the tool's error.
    pub fn ask(&mut self, req: &Request) -> Result<Reply> {
        control::send(&mut self.stream, req)?;
        match control::receive::<Reply>(&mut self.stream)? {
            Some(Reply::Error(e)) => Err(ToolError::Usage(e)),
            Some(r) => Ok(r),
            None => Err(ToolError::Usage("Venus closed the connection".into())),
        }
    }

    /// The next event of a stream begun with `Request::Events`.
    pub fn next_event(&mut self) -> Result<Option<Reply>> {
        Ok(control::receive(&mut self.stream)?)
    }

    /// A path as Venus wants it: absolute, not resolved (so a symlink or
    /// mount point is named, not what it leads to).
    pub fn path(&self, p: &Path) -> Result<String> {
        let abs = std::path::absolute(p)?;
        Ok(abs.to_string_lossy().into_owned())
    }
}

/// The mount point holding `path`: the highest ancestor in the same mount.
fn mount_of(path: &Path) -> PathBuf {
    let mut at = path.to_path_buf();
    for a in path.ancestors().skip(1) {
        if socket_behind(a).is_none() {
            break;
        }
        at = a.to_path_buf();
    }
    at
}

/// A reply of a kind the request does not have.
pub fn unexpected(r: Reply) -> ToolError {
    ToolError::Usage(format!("unexpected answer from Venus: {r:?}"))
}

/// UNIX seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(super::utc(1_700_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(super::utc(951_782_400), "2000-02-29 00:00:00 UTC");
    }
}
