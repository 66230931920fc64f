//! `volutil dump` and `volutil restore`: dump bytes streamed between a
//! file (or a pipe) and the server that holds the volume, a chunk per call.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Write};
use std::net::SocketAddr;
use std::path::Path;

use coda_proto::dump::{self, Record};
use coda_proto::vice::{VolumeInfo, VolumeRef};
use coda_proto::volutil::{
    op, DumpBegin, DumpBegun, DumpChunk, ManifestItem, NameVolume, RestoreBegin, RestoreReply,
    Session, DUMP_CHUNK_MAX, SUBSYSTEM,
};
use coda_proto::Errno;
use coda_rpc2::codec;
use coda_rpc2::endpoint::SideEffect;
use coda_rpc2::{Sink, Source};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{Admin, Result, ToolError};

/// A progress bar on a terminal's stderr, nothing elsewhere.
fn progress(len: Option<u64>) -> ProgressBar {
    if !io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::new_spinner(),
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Connects `admin` to the server holding `name`; its info, or `None` if
/// there is no such volume.
fn locate(admin: &mut Admin, name: &str) -> Result<Option<VolumeInfo>> {
    let req = NameVolume {
        volume: VolumeRef::Name(name.to_string()),
    };
    let info: VolumeInfo = match admin.call(SUBSYSTEM, op::INFO, &req) {
        Ok(i) => i,
        Err(ToolError::Server(Errno::NO_SUCH_VOLUME)) => return Ok(None),
        Err(e) => return Err(e),
    };
    // The replica on the server asked, if it holds one.
    let addrs: Vec<SocketAddr> = info.servers.iter().filter_map(|s| s.parse().ok()).collect();
    let addr = addrs
        .iter()
        .find(|a| a.ip() == admin.server.ip())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| ToolError::Usage(format!("volume {name} has no server address")))?;
    admin.move_to(addr)?;
    Ok(Some(info))
}

fn bad_dump(path: &Path, e: dump::DumpError) -> ToolError {
    ToolError::Usage(format!("{}: {e}", path.display()))
}

/// The dump an incremental one is against: its id, volume, and files.
fn manifest(path: &Path) -> Result<(u64, u64, Vec<ManifestItem>)> {
    let file =
        File::open(path).map_err(|e| ToolError::Usage(format!("{}: {e}", path.display())))?;
    let (h, items) = dump::manifest(io::BufReader::with_capacity(1 << 20, file))
        .map_err(|e| bad_dump(path, e))?;
    Ok((h.id, h.volume, items))
}

/// Dumps `name` to `output` (standard output if `None`): the bytes
/// written, and whether the dump is incremental.
pub fn dump(
    admin: &mut Admin,
    name: &str,
    since: Option<&Path>,
    output: Option<&Path>,
) -> Result<(u64, bool)> {
    let info = locate(admin, name)?.ok_or(ToolError::Server(Errno::NO_SUCH_VOLUME))?;
    let (base, items) = match since {
        Some(path) => {
            let (id, volume, items) = manifest(path)?;
            if volume != info.id {
                return Err(ToolError::Usage(format!(
                    "{} is a dump of volume {volume:x}, not of {name} ({:x})",
                    path.display(),
                    info.id
                )));
            }
            (Some(id), items)
        }
        None => (None, Vec::new()),
    };
    let manifest = codec::to_bytes(&items);
    let req = DumpBegin {
        volume: VolumeRef::Id(info.id),
        base,
        manifest_bytes: if base.is_some() {
            manifest.len() as u64
        } else {
            0
        },
    };
    let begun: DumpBegun = match base {
        None => admin.call(SUBSYSTEM, op::DUMP_BEGIN, &req)?,
        Some(_) => {
            let r = admin.call_sftp(
                SUBSYSTEM,
                op::DUMP_BEGIN,
                &req,
                SideEffect::Send(Source::Memory(manifest)),
            )?;
            codec::from_bytes(&r.body).map_err(|e| ToolError::Usage(format!("bad reply: {e}")))?
        }
    };
    let session = Session {
        session: begun.session,
    };
    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(io::BufWriter::with_capacity(
            1 << 20,
            File::create(p).map_err(|e| ToolError::Usage(format!("{}: {e}", p.display())))?,
        )),
        None => Box::new(io::stdout().lock()),
    };
    let bar = progress(Some(begun.bytes));
    let copied = (|| -> Result<u64> {
        let mut total = 0u64;
        loop {
            let r = admin.call_sftp(
                SUBSYSTEM,
                op::DUMP_READ,
                &session,
                SideEffect::Receive(Sink::memory(DUMP_CHUNK_MAX)),
            )?;
            let chunk: DumpChunk = codec::from_bytes(&r.body)
                .map_err(|e| ToolError::Usage(format!("bad reply: {e}")))?;
            let data = r.sink.map(|s| s.into_bytes()).unwrap_or_default();
            if data.len() as u64 != chunk.bytes {
                return Err(ToolError::Usage(format!(
                    "the server sent {} of {} bytes",
                    data.len(),
                    chunk.bytes
                )));
            }
            out.write_all(&data)?;
            total += chunk.bytes;
            bar.set_position(total);
            if chunk.done {
                out.flush()?;
                return Ok(total);
            }
        }
    })();
    bar.finish_and_clear();
    match copied {
        Ok(total) => {
            if let Some(p) = output {
                drop(out);
                File::open(p)?.sync_all()?;
            }
            Ok((total, base.is_some()))
        }
        Err(e) => {
            let _ = admin.call_unit(SUBSYSTEM, op::DUMP_END, &session);
            if let Some(p) = output {
                let _ = std::fs::remove_file(p);
            }
            Err(e)
        }
    }
}

/// Restores the dump in `path` (`-`: standard input) as or over volume
/// `name`: the volume, and whether the dump was incremental.
pub fn restore(admin: &mut Admin, path: &Path, name: &str) -> Result<(VolumeInfo, bool)> {
    let mut input: Box<dyn Read> = match path.to_str() {
        Some("-") => Box::new(io::stdin().lock()),
        _ => Box::new(
            File::open(path).map_err(|e| ToolError::Usage(format!("{}: {e}", path.display())))?,
        ),
    };
    let size = std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    locate(admin, name)?;
    let refused = |r: coda_proto::volutil::Refusal| {
        bad_dump(
            path,
            dump::DumpError {
                offset: r.offset,
                reason: r.reason,
            },
        )
    };
    let session = match admin.call(
        SUBSYSTEM,
        op::RESTORE_BEGIN,
        &RestoreBegin { name: name.into() },
    )? {
        RestoreReply::Accepted(s) => Session { session: s },
        _ => return Err(ToolError::Usage("unexpected reply to RESTORE_BEGIN".into())),
    };
    let bar = progress(size);
    let mut incremental = None;
    let mut buf = vec![0u8; DUMP_CHUNK_MAX as usize];
    let sent = (|| -> Result<()> {
        loop {
            let n = read_full(&mut input, &mut buf)?;
            if n == 0 {
                return Ok(());
            }
            if incremental.is_none() {
                incremental = Some(is_incremental(&buf[..n]));
            }
            let chunk = bytes::Bytes::copy_from_slice(&buf[..n]);
            let mut tries = 0;
            let reply = loop {
                let r = admin.call_sftp(
                    SUBSYSTEM,
                    op::RESTORE_WRITE,
                    &session,
                    SideEffect::Send(Source::Memory(chunk.clone())),
                );
                match r {
                    Err(ToolError::Server(Errno::EIO)) if tries < 3 => tries += 1,
                    r => break r?,
                }
            };
            match codec::from_bytes(&reply.body)
                .map_err(|e| ToolError::Usage(format!("bad reply: {e}")))?
            {
                RestoreReply::Accepted(offset) => bar.set_position(offset),
                RestoreReply::Refused(r) => return Err(refused(r)),
                RestoreReply::Done(_) => {
                    return Err(ToolError::Usage("unexpected reply to RESTORE_WRITE".into()))
                }
            }
            if n < buf.len() {
                return Ok(());
            }
        }
    })();
    bar.finish_and_clear();
    if let Err(e) = sent {
        // Whatever the server holds of it goes.
        let _ = admin.call_unit(SUBSYSTEM, op::DUMP_END, &session);
        return Err(e);
    }
    match admin.call(SUBSYSTEM, op::RESTORE_END, &session)? {
        RestoreReply::Done(v) => Ok((v, incremental.unwrap_or(false))),
        RestoreReply::Refused(r) => Err(refused(r)),
        RestoreReply::Accepted(_) => {
            Err(ToolError::Usage("unexpected reply to RESTORE_END".into()))
        }
    }
}

/// Fills `buf` unless the input ends first; the bytes read.
fn read_full(input: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Whether a dump's first bytes are those of an incremental dump.
fn is_incremental(first: &[u8]) -> bool {
    let mut p = dump::Parser::new();
    p.feed(first);
    matches!(p.next(), Ok(Some(Record::Header(h))) if h.base.is_some())
}
