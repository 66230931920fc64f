//! codadump2tar: a volume dump as a POSIX tar archive.
//!
//! # One pass, and where the file data waits
//!
//! A dump lists every vnode (each file's data right after its vnode record)
//! before any directory entry, so a file's name is known only once its data
//! has gone by. A tar member's name comes *before* its data, so the data
//! has to wait somewhere that is not memory:
//!
//! - When the dump is a regular file (`-i FILE`, or a file on standard
//!   input), it waits where it already is. The one pass over the dump parses
//!   and checks every frame and remembers, for each file, where its first
//!   data frame starts; the archive is then written with each file's frames
//!   read again at that offset, their checksums and the file's content hash
//!   checked a second time (a dump that changes underneath us is refused,
//!   never half-copied). No extra disk space is used.
//! - Otherwise (a pipe, say `volutil dump ... | codadump2tar`), file data is
//!   appended to an unnamed temporary file (in `$TMPDIR`) as it arrives and
//!   copied out of it when the archive is written. That needs free space for
//!   the volume's file data; the file disappears when the tool exits,
//!   however it exits.
//!
//! Writing data at once behind reserved headers, patched when the names
//! arrive, would need a seekable output and a bound on path lengths, and
//! would leave members in dump order with no way to drop an object that no
//! entry names; a pipe-to-pipe conversion has no other place to keep the
//! data. Either way memory holds metadata only (one record per vnode and
//! entry, and the paths of files with several names) and at most one data
//! frame.
//!
//! # The archive
//!
//! POSIX.1-2001 pax: ustar headers, with a pax extended header (`x`) before a
//! member whose path or link target is long or not ASCII, whose size is
//! 8 GiB or more, whose uid or gid is too large for ustar, or whose mtime has
//! a sub-second part or lies outside ustar's range. The headers are written
//! here rather than with the `tar` crate: it encodes large sizes and ids in
//! the header in GNU's base-256 form (not POSIX), and its `Builder` writes
//! the end-of-archive blocks when dropped, even after a failed conversion.
//!
//! Members are in depth-first order, directories before their contents and
//! entries by name. A file named by several entries is written once, at its
//! first path; its other names are hard links (`1`) to that path.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, IsTerminal, Read, Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use clap::Parser as _;
use coda_proto::dump::{self, DumpError, DumpVnode, Parser, Record};
use coda_proto::fid::ROOT_VNODE;
use coda_proto::{Timestamp, VnodeKind, VolumeId};

const TOOL: &str = "codadump2tar";
/// Bytes read from the dump at a time.
const READ_CHUNK_BYTES: usize = 1 << 20;
/// Bytes copied from the spill file at a time.
const COPY_CHUNK_BYTES: usize = 1 << 20;
/// Bytes buffered on the way to the archive.
const OUTPUT_BUFFER_BYTES: usize = 1 << 20;
const NANOS_PER_SEC: u32 = 1_000_000_000;

/// Writes a volume dump (from `volutil dump`) as a POSIX tar archive.
///
/// Paths are relative to the volume root. Files, directories, symlinks and
/// hard links keep their mode, numeric owner and group, and mtime. A mount
/// point becomes an empty directory. Incremental dumps are refused: they do
/// not hold the whole tree.
#[derive(clap::Parser)]
#[command(name = "codadump2tar", version)]
struct Args {
    /// The dump to read; standard input when absent or `-`.
    #[arg(short = 'i', long = "input", value_name = "DUMP")]
    input: Option<PathBuf>,
    /// The archive to write; standard output when absent or `-`.
    ///
    /// A partly written file is removed if the conversion fails.
    #[arg(short = 'o', long = "output", value_name = "TAR")]
    output: Option<PathBuf>,
    /// Put every member under NAME/, with NAME/ itself (the volume root)
    /// as the first member.
    #[arg(long, value_name = "NAME")]
    root_name: Option<String>,
}

#[derive(Debug, thiserror::Error)]
enum Error {
    /// The `DumpError` Display: "bad dump at byte N: reason".
    #[error("{0}")]
    Dump(#[from] DumpError),
    #[error(
        "this is an incremental dump (relative to dump {base:x}): it does not hold \
         the whole tree; convert a full dump"
    )]
    Incremental { base: u64 },
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
}

impl Error {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }

    fn writing(source: io::Error) -> Error {
        Error::Io {
            what: "writing the archive".into(),
            source,
        }
    }
}

fn main() {
    let args = Args::parse();
    match run(args) {
        Ok(()) => {}
        // Whoever read the archive stopped reading: not our failure.
        Err(Error::Io { source, .. }) if source.kind() == io::ErrorKind::BrokenPipe => {}
        // As `coda_tools::exit_with` does; a `DumpError` is not a `ToolError`.
        Err(e) => {
            eprintln!("{TOOL}: {e}");
            std::process::exit(1)
        }
    }
}

fn run(args: Args) -> Result<(), Error> {
    if let Some(name) = &args.root_name {
        check_name(name).map_err(|why| Error::Usage(format!("--root-name {name:?}: {why}")))?;
    }
    let input = Input::open(dash_is_none(args.input.as_deref()))?;
    let output_path = dash_is_none(args.output.as_deref());
    let output = Output::open(output_path, &input)?;
    let progress = Progress::new(io::stderr().is_terminal());
    let mut out = BufWriter::with_capacity(OUTPUT_BUFFER_BYTES, output.file);
    let done = convert(input, &mut out, args.root_name.as_deref(), &progress).and_then(|()| {
        let file = out
            .into_inner()
            .map_err(|e| Error::writing(e.into_error()))?;
        if output_path.is_some() {
            file.sync_all().map_err(Error::writing)?;
        }
        Ok(())
    });
    progress.done();
    if done.is_err() {
        if let Some(path) = output_path {
            let _ = std::fs::remove_file(path);
        }
    }
    done
}

fn dash_is_none(p: Option<&Path>) -> Option<&Path> {
    p.filter(|p| *p != Path::new("-"))
}

/// Reads the whole dump, then writes the archive.
fn convert(
    input: Input,
    out: &mut impl Write,
    root_name: Option<&str>,
    progress: &Progress,
) -> Result<(), Error> {
    let (mut tree, source) = read_dump(input, progress)?;
    tree.check(progress)?;
    write_archive(&mut tree, &source, out, root_name, progress)
}

/// A dump object's identity within its volume: (vnode, unique).
type Key = (u64, u64);

fn show(k: Key) -> String {
    format!("{}.{}", k.0, k.1)
}

/// What a name must be to become a path component.
fn check_name(name: &str) -> Result<(), &'static str> {
    match name {
        "" => Err("the name is empty"),
        "." | ".." => Err("the name is reserved"),
        _ if name.contains('/') => Err("the name holds a '/'"),
        _ if name.contains('\0') => Err("the name holds a NUL byte"),
        _ => Ok(()),
    }
}

// ---- Input, output and progress ----

enum Input {
    /// A regular file, read from `start`: data is read again from it.
    Seekable { file: File, start: u64 },
    /// Anything else: data is spilled to a temporary file.
    Stream(Box<dyn Read>),
}

impl Input {
    fn open(path: Option<&Path>) -> Result<Input, Error> {
        let file = match path {
            Some(p) => File::open(p).map_err(Error::io(format!("cannot open {}", p.display())))?,
            None => io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
                .map_err(Error::io("cannot read standard input"))?,
        };
        let regular = file.metadata().map(|m| m.is_file()).unwrap_or(false);
        if regular {
            if let Ok(start) = (&file).stream_position() {
                return Ok(Input::Seekable { file, start });
            }
        }
        Ok(Input::Stream(Box::new(file)))
    }

    /// Bytes left to read, when known.
    fn len(&self) -> Option<u64> {
        match self {
            Input::Seekable { file, start } => {
                file.metadata().ok().map(|m| m.len().saturating_sub(*start))
            }
            Input::Stream(_) => None,
        }
    }
}

struct Output {
    file: File,
}

impl Output {
    fn open(path: Option<&Path>, input: &Input) -> Result<Output, Error> {
        let Some(path) = path else {
            let stdout = io::stdout();
            if stdout.is_terminal() {
                return Err(Error::Usage(
                    "refusing to write an archive to a terminal (use -o TAR or a pipe)".into(),
                ));
            }
            let file = stdout
                .as_fd()
                .try_clone_to_owned()
                .map(File::from)
                .map_err(Error::io("cannot write standard output"))?;
            return Ok(Output { file });
        };
        // Creating the output truncates it: it must not be the dump.
        if let (Input::Seekable { file, .. }, Ok(there)) = (input, std::fs::metadata(path)) {
            if let Ok(dump) = file.metadata() {
                if (dump.dev(), dump.ino()) == (there.dev(), there.ino()) {
                    return Err(Error::Usage(format!(
                        "{} is the dump being read",
                        path.display()
                    )));
                }
            }
        }
        let file =
            File::create(path).map_err(Error::io(format!("cannot create {}", path.display())))?;
        Ok(Output { file })
    }
}

/// A bar on stderr when it is a terminal; nothing otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    fn new(enabled: bool) -> Progress {
        Progress {
            bar: enabled.then(indicatif::ProgressBar::hidden),
        }
    }

    fn phase(&self, what: &'static str, total: Option<u64>) {
        let Some(bar) = &self.bar else { return };
        let template = match total {
            Some(_) => "{msg} {wide_bar} {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
            None => "{spinner} {msg} {bytes} ({bytes_per_sec})",
        };
        bar.set_length(total.unwrap_or(0));
        bar.reset();
        bar.set_style(indicatif::ProgressStyle::with_template(template).expect("a template"));
        bar.set_message(what);
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
    }

    fn set(&self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
    }

    fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    fn note(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{TOOL}: note: {line}")),
            None => eprintln!("{TOOL}: note: {line}"),
        }
    }

    fn done(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

// ---- Reading the dump ----

/// Where file data waits between the dump and the archive.
enum Store {
    Input { file: File, start: u64 },
    Spill { file: BufWriter<File>, len: u64 },
}

/// Where file data is read back from.
enum Source {
    /// `data_at` is a position in this file (the dump's offset plus `start`).
    Input { file: File, start: u64 },
    /// `data_at` is a position in the spill file.
    Spill { file: File },
}

impl Store {
    /// Where the data of a file whose data frames begin at dump offset
    /// `frames_at` will be.
    fn position(&self, frames_at: u64) -> u64 {
        match self {
            Store::Input { start, .. } => start + frames_at,
            Store::Spill { len, .. } => *len,
        }
    }

    fn append(&mut self, data: &[u8]) -> Result<(), Error> {
        if let Store::Spill { file, len } = self {
            file.write_all(data).map_err(Error::io(
                "spilling file data to a temporary file (point TMPDIR somewhere roomier)",
            ))?;
            *len += data.len() as u64;
        }
        Ok(())
    }

    fn into_source(self) -> Result<Source, Error> {
        Ok(match self {
            Store::Input { file, start } => Source::Input { file, start },
            Store::Spill { file, .. } => Source::Spill {
                file: file.into_inner().map_err(|e| Error::Io {
                    what: "spilling file data to a temporary file".into(),
                    source: e.into_error(),
                })?,
            },
        })
    }
}

struct Object {
    unique: u64,
    kind: VnodeKind,
    mode: u32,
    owner: u32,
    group: u32,
    mtime: Timestamp,
    length: u64,
    /// A symlink's target.
    target: String,
    hash: [u8; 32],
    /// Where a file's data is in the [`Source`]; `None` for no data.
    data_at: Option<u64>,
    /// Where its vnode record is in the dump.
    at: u64,
    /// Entries naming it.
    names: u32,
    /// Whether a walk from the root finds it.
    reached: bool,
}

enum Child {
    Object(Key),
    /// An entry naming another volume's root.
    Mount(VolumeId),
}

struct Entry {
    name: String,
    child: Child,
    /// Where its record is in the dump.
    at: u64,
}

/// Everything but the file data: bounded by the dump's metadata.
struct Tree {
    volume: VolumeId,
    /// Vnode [`ROOT_VNODE`], whatever its uniquifier.
    root: Key,
    /// By vnode number: a volume holds one object per vnode number at a time.
    objects: HashMap<u64, Object>,
    /// Each directory's entries; sorted by name once [`Tree::check`]ed.
    entries: HashMap<Key, Vec<Entry>>,
    /// Where the end record is in the dump.
    end_at: u64,
}

/// The file whose data frames are arriving.
struct Filling {
    key: Key,
    owed: u64,
    hasher: blake3::Hasher,
}

fn read_dump(input: Input, progress: &Progress) -> Result<(Tree, Source), Error> {
    progress.phase("reading the dump", input.len());
    let (mut reader, mut store): (Box<dyn Read>, Store) = match input {
        Input::Seekable { file, start } => {
            let reader = file
                .try_clone()
                .map_err(Error::io("cannot read the dump"))?;
            (Box::new(reader), Store::Input { file, start })
        }
        Input::Stream(reader) => {
            let spill = tempfile::tempfile().map_err(Error::io(
                "cannot make a temporary file for file data (set TMPDIR)",
            ))?;
            let file = BufWriter::with_capacity(COPY_CHUNK_BYTES, spill);
            (reader, Store::Spill { file, len: 0 })
        }
    };
    let mut parser = Parser::new();
    let mut tree = Tree {
        volume: 0,
        root: (ROOT_VNODE, 0),
        objects: HashMap::new(),
        entries: HashMap::new(),
        end_at: 0,
    };
    let mut filling: Option<Filling> = None;
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(Error::Io {
                    what: format!("reading the dump at byte {}", parser.offset()),
                    source: e,
                })
            }
        };
        parser.feed(&buf[..n]);
        while let Some(record) = parser.next()? {
            let at = parser.record_offset();
            match record {
                Record::Header(h) => {
                    if let Some(base) = h.base {
                        return Err(Error::Incremental { base });
                    }
                    tree.volume = h.volume;
                }
                Record::Volume(_) => {}
                Record::Vnode(v) => {
                    let frames_at = parser.offset();
                    filling = tree.vnode(at, v, store.position(frames_at))?;
                }
                Record::Data(data) => {
                    let Some(f) = filling.as_mut() else {
                        return Err(DumpError::at(at, "file data without a file").into());
                    };
                    let Some(owed) = f.owed.checked_sub(data.len() as u64) else {
                        return Err(
                            DumpError::at(at, "more file data than the file's length").into()
                        );
                    };
                    f.owed = owed;
                    f.hasher.update(&data);
                    store.append(&data)?;
                    if owed == 0 {
                        let f = filling.take().expect("a file is filling");
                        tree.filled(f)?;
                    }
                }
                Record::Entry(e) => tree.entry(at, e)?,
                // The parser takes removals only after an incremental header.
                Record::Removed(_) => {
                    return Err(DumpError::at(at, "a removal in a full dump").into())
                }
                Record::End(_) => tree.end_at = at,
            }
        }
        progress.set(parser.offset());
    }
    parser.finish()?;
    // The parser checked that every file got all its data.
    assert!(filling.is_none(), "a file still owed data after the end");
    Ok((tree, store.into_source()?))
}

impl Tree {
    fn get(&self, key: Key) -> Option<&Object> {
        self.objects.get(&key.0).filter(|o| o.unique == key.1)
    }

    fn get_mut(&mut self, key: Key) -> Option<&mut Object> {
        self.objects.get_mut(&key.0).filter(|o| o.unique == key.1)
    }

    /// Takes a vnode record; a file with data to come is returned.
    fn vnode(&mut self, at: u64, v: DumpVnode, data_at: u64) -> Result<Option<Filling>, Error> {
        let key = (v.vnode, v.unique);
        let bad = |why: String| -> Error { DumpError::at(at, why).into() };
        if self.objects.contains_key(&v.vnode) {
            return Err(bad(format!("vnode {} appears twice", v.vnode)));
        }
        if v.mtime.nanos >= NANOS_PER_SEC {
            return Err(bad(format!(
                "vnode {} has an mtime of {} nanoseconds past the second",
                show(key),
                v.mtime.nanos
            )));
        }
        match v.kind {
            VnodeKind::File if v.length > 0 && !v.data => {
                return Err(bad(format!(
                    "file {} has no data, which a full dump holds for every file",
                    show(key)
                )));
            }
            VnodeKind::Symlink if v.target.contains('\0') => {
                return Err(bad(format!(
                    "symlink {} has a target holding a NUL byte",
                    show(key)
                )));
            }
            _ => {}
        }
        let filling = v.data.then(|| Filling {
            key,
            owed: v.length,
            hasher: blake3::Hasher::new(),
        });
        if v.vnode == ROOT_VNODE {
            self.root = key;
        }
        self.objects.insert(
            v.vnode,
            Object {
                unique: v.unique,
                kind: v.kind,
                mode: v.mode & 0o7777,
                owner: v.owner,
                group: v.group,
                mtime: v.mtime,
                length: if v.kind == VnodeKind::File {
                    v.length
                } else {
                    0
                },
                target: v.target,
                hash: v.content_hash,
                data_at: v.data.then_some(data_at),
                at,
                names: 0,
                reached: false,
            },
        );
        match filling {
            // An empty file's data is all there already.
            Some(f) if f.owed == 0 => self.filled(f).map(|()| None),
            f => Ok(f),
        }
    }

    /// Checks a file whose data has all arrived.
    fn filled(&mut self, f: Filling) -> Result<(), Error> {
        let o = &self.objects[&f.key.0];
        if *f.hasher.finalize().as_bytes() != o.hash {
            return Err(DumpError::at(
                o.at,
                format!(
                    "file {}'s data does not match its content hash",
                    show(f.key)
                ),
            )
            .into());
        }
        Ok(())
    }

    fn entry(&mut self, at: u64, e: dump::DumpEntry) -> Result<(), Error> {
        let bad = |why: String| -> Error { DumpError::at(at, why).into() };
        let dir = (e.dir_vnode, e.dir_unique);
        match self.get(dir) {
            Some(o) if o.kind == VnodeKind::Directory => {}
            Some(_) => {
                return Err(bad(format!(
                    "entry {:?} is in vnode {}, which is not a directory",
                    e.name,
                    show(dir)
                )))
            }
            None => {
                return Err(bad(format!(
                    "entry {:?} is in directory {}, which is not in the dump",
                    e.name,
                    show(dir)
                )))
            }
        }
        check_name(&e.name).map_err(|why| {
            bad(format!(
                "entry {:?} in directory {}: {why}",
                e.name,
                show(dir)
            ))
        })?;
        let child = if e.volume != self.volume {
            Child::Mount(e.volume)
        } else {
            let key = (e.vnode, e.unique);
            if key == self.root {
                return Err(bad(format!("entry {:?} names the volume root", e.name)));
            }
            let Some(o) = self.get_mut(key) else {
                return Err(bad(format!(
                    "entry {:?} names vnode {}, which is not in the dump",
                    e.name,
                    show(key)
                )));
            };
            o.names += 1;
            if o.kind == VnodeKind::Directory && o.names > 1 {
                return Err(bad(format!(
                    "directory {} has a second name, {:?}",
                    show(key),
                    e.name
                )));
            }
            Child::Object(key)
        };
        self.entries.entry(dir).or_default().push(Entry {
            name: e.name,
            child,
            at,
        });
        Ok(())
    }

    /// Checks what only the whole tree shows, before any of the archive
    /// is written; sorts each directory's entries by name.
    fn check(&mut self, progress: &Progress) -> Result<(), Error> {
        match self.get(self.root) {
            Some(o) if o.kind == VnodeKind::Directory => {}
            _ => {
                return Err(DumpError::at(
                    self.end_at,
                    format!("the dump has no root directory (vnode {ROOT_VNODE})"),
                )
                .into())
            }
        }
        // The first repeated name in the dump, whatever the map's order.
        let mut repeated: Option<(u64, Key, &str)> = None;
        for (dir, list) in self.entries.iter_mut() {
            list.sort_by(|a, b| a.name.cmp(&b.name));
            for w in list.windows(2).filter(|w| w[0].name == w[1].name) {
                let at = w[0].at.max(w[1].at);
                if repeated.is_none_or(|(first, _, _)| at < first) {
                    repeated = Some((at, *dir, &w[0].name));
                }
            }
        }
        if let Some((at, dir, name)) = repeated {
            return Err(DumpError::at(
                at,
                format!("directory {} has two entries named {name:?}", show(dir)),
            )
            .into());
        }
        // Every directory has at most one name and the root none, so this
        // walk visits each directory once; a cycle is never reached.
        let mut todo = vec![self.root];
        while let Some(dir) = todo.pop() {
            self.get_mut(dir).expect("a known directory").reached = true;
            for e in self.entries.get(&dir).into_iter().flatten() {
                if let Child::Object(key) = e.child {
                    let o = self
                        .objects
                        .get_mut(&key.0)
                        .expect("entries name known objects");
                    if !o.reached {
                        o.reached = true;
                        if o.kind == VnodeKind::Directory {
                            todo.push(key);
                        }
                    }
                }
            }
        }
        let lost = self.objects.values().filter(|o| !o.reached).count();
        if lost > 0 {
            let (vnode, o) = self
                .objects
                .iter()
                .filter(|(_, o)| !o.reached)
                .min_by_key(|(_, o)| o.at)
                .expect("one is lost");
            progress.note(&format!(
                "{lost} object(s) cannot be reached from the volume root and are left out \
                 (the first is vnode {}, at byte {})",
                show((*vnode, o.unique)),
                o.at
            ));
        }
        Ok(())
    }
}

// ---- Writing the archive ----

struct Frame {
    dir: Key,
    entries: std::vec::IntoIter<Entry>,
    /// The length of the path prefix outside this directory.
    restore: usize,
}

fn write_archive(
    tree: &mut Tree,
    source: &Source,
    out: &mut impl Write,
    root_name: Option<&str>,
    progress: &Progress,
) -> Result<(), Error> {
    let total: u64 = tree
        .objects
        .values()
        .filter(|o| o.reached && o.kind == VnodeKind::File)
        .map(|o| o.length)
        .sum();
    progress.phase("writing the archive", Some(total));
    let mut copier = Copier::default();
    // The first path of each object with several names.
    let mut first_paths: HashMap<Key, String> = HashMap::new();
    let mut prefix = String::new();
    if let Some(name) = root_name {
        prefix = format!("{name}/");
        let root = tree.get(tree.root).expect("a checked root");
        put(out, &member(&prefix, ustar::Kind::Directory, root))?;
    }
    let mut stack = vec![Frame {
        dir: tree.root,
        entries: tree
            .entries
            .remove(&tree.root)
            .unwrap_or_default()
            .into_iter(),
        restore: prefix.len(),
    }];
    while let Some(frame) = stack.last_mut() {
        let Some(e) = frame.entries.next() else {
            let frame = stack.pop().expect("a frame");
            prefix.truncate(frame.restore);
            continue;
        };
        let dir = frame.dir;
        let mut path = format!("{prefix}{}", e.name);
        let key = match e.child {
            Child::Mount(volume) => {
                path.push('/');
                progress.note(&format!(
                    "{path} is a mount point of volume {volume:x}; it becomes an empty directory"
                ));
                let parent = tree.get(dir).expect("a known directory");
                let m = ustar::Member {
                    mode: 0o755,
                    ..member(&path, ustar::Kind::Directory, parent)
                };
                put(out, &m)?;
                continue;
            }
            Child::Object(key) => key,
        };
        let o = tree.get(key).expect("entries name known objects");
        if let Some(first) = first_paths.get(&key) {
            put(out, &member(&path, ustar::Kind::HardLink { to: first }, o))?;
            continue;
        }
        if o.names > 1 && o.kind != VnodeKind::Directory {
            first_paths.insert(key, path.clone());
        }
        match o.kind {
            VnodeKind::Directory => {
                path.push('/');
                put(out, &member(&path, ustar::Kind::Directory, o))?;
                let restore = prefix.len();
                prefix = path;
                stack.push(Frame {
                    dir: key,
                    entries: tree.entries.remove(&key).unwrap_or_default().into_iter(),
                    restore,
                });
            }
            VnodeKind::Symlink => {
                put(
                    out,
                    &member(&path, ustar::Kind::Symlink { to: &o.target }, o),
                )?;
            }
            VnodeKind::File => {
                let kind = ustar::Kind::File { size: o.length };
                put(out, &member(&path, kind, o))?;
                copier.copy(source, key, o, out, progress)?;
                let pad = ustar::padding(o.length);
                out.write_all(&[0u8; ustar::BLOCK_BYTES as usize][..pad])
                    .map_err(Error::writing)?;
            }
        }
    }
    out.write_all(&ustar::end_of_archive())
        .map_err(Error::writing)?;
    out.flush().map_err(Error::writing)
}

fn member<'a>(path: &'a str, kind: ustar::Kind<'a>, o: &Object) -> ustar::Member<'a> {
    ustar::Member {
        path,
        kind,
        mode: o.mode,
        uid: o.owner,
        gid: o.group,
        mtime: o.mtime,
    }
}

fn put(out: &mut impl Write, m: &ustar::Member) -> Result<(), Error> {
    out.write_all(&ustar::header_blocks(m))
        .map_err(Error::writing)
}

/// Copies file data from where it waited into the archive.
#[derive(Default)]
struct Copier {
    buf: Vec<u8>,
}

impl Copier {
    fn copy(
        &mut self,
        source: &Source,
        key: Key,
        o: &Object,
        out: &mut impl Write,
        progress: &Progress,
    ) -> Result<(), Error> {
        let Some(mut pos) = o.data_at else {
            assert_eq!(o.length, 0, "a file with no data is empty");
            return Ok(());
        };
        let mut left = o.length;
        match source {
            Source::Spill { file } => {
                self.buf.resize(COPY_CHUNK_BYTES, 0);
                while left > 0 {
                    let n = left.min(COPY_CHUNK_BYTES as u64) as usize;
                    file.read_exact_at(&mut self.buf[..n], pos)
                        .map_err(Error::io("reading back the spilled file data"))?;
                    out.write_all(&self.buf[..n]).map_err(Error::writing)?;
                    pos += n as u64;
                    left -= n as u64;
                    progress.inc(n as u64);
                }
            }
            Source::Input { file, start } => {
                // The frames were checked on the first reading; they are
                // checked again in case the file changed since.
                let changed = |pos: u64, why: &str| -> Error {
                    DumpError::at(
                        pos - start,
                        format!("the dump changed while it was being converted ({why})"),
                    )
                    .into()
                };
                let reading =
                    |pos: u64| Error::io(format!("reading the dump at byte {}", pos - start));
                let mut hasher = blake3::Hasher::new();
                while left > 0 {
                    let mut head = [0u8; 5];
                    file.read_exact_at(&mut head, pos).map_err(reading(pos))?;
                    let len = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes"));
                    // (The parser takes empty data frames; so does this.)
                    if head[0] != dump::tag::DATA
                        || len > dump::FRAME_BODY_MAX
                        || u64::from(len) > left
                    {
                        return Err(changed(pos, "not the data frame read before"));
                    }
                    let len = len as usize;
                    self.buf.resize(len + 4, 0);
                    file.read_exact_at(&mut self.buf[..len + 4], pos + 5)
                        .map_err(reading(pos))?;
                    let (body, crc) = self.buf.split_at(len);
                    let mut crc32 = crc32fast::Hasher::new();
                    crc32.update(&head);
                    crc32.update(body);
                    if crc32.finalize().to_le_bytes() != crc {
                        return Err(changed(pos, "checksum mismatch"));
                    }
                    hasher.update(body);
                    out.write_all(body).map_err(Error::writing)?;
                    pos += dump::frame_bytes(len as u64);
                    left -= len as u64;
                    progress.inc(len as u64);
                }
                if *hasher.finalize().as_bytes() != o.hash {
                    return Err(changed(
                        o.at + start,
                        &format!("file {}'s data no longer matches its hash", show(key)),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// ustar headers and pax extended headers (POSIX.1-2001, `pax` "Extended
/// header"); everything the archive is made of but the data.
mod ustar {
    use coda_proto::Timestamp;

    pub const BLOCK_BYTES: u64 = 512;
    const NAME_BYTES: usize = 100;
    const PREFIX_BYTES: usize = 155;
    const LINKNAME_BYTES: usize = 100;
    /// Largest value of an 8-byte octal field (7 digits and a NUL).
    const OCTAL_7_MAX: u64 = 0o777_7777;
    /// Largest value of a 12-byte octal field (11 digits and a NUL).
    pub const OCTAL_11_MAX: u64 = 0o777_7777_7777;
    const _: () = assert!(OCTAL_11_MAX == (8 << 30) - 1);
    const _: () = assert!(NAME_BYTES + PREFIX_BYTES < BLOCK_BYTES as usize);
    /// The pax header's own name: ignored by pax readers, and a harmless
    /// file for an old reader that extracts it.
    const PAX_NAME_DIR: &str = "PaxHeaders/";

    pub enum Kind<'a> {
        File { size: u64 },
        HardLink { to: &'a str },
        Symlink { to: &'a str },
        Directory,
    }

    pub struct Member<'a> {
        /// Relative; a directory's ends in '/'.
        pub path: &'a str,
        pub kind: Kind<'a>,
        /// Permission bits (up to 0o7777).
        pub mode: u32,
        pub uid: u32,
        pub gid: u32,
        /// `nanos` below one second.
        pub mtime: Timestamp,
    }

    /// The blocks that go before a member's data: a pax extended header
    /// when some field does not fit ustar, then the ustar header.
    pub fn header_blocks(m: &Member) -> Vec<u8> {
        assert!(m.mode <= 0o7777, "mode {:o}", m.mode);
        assert!(m.mtime.nanos < 1_000_000_000, "nanos {}", m.mtime.nanos);
        let mut pax = Vec::new();
        let mut h = [0u8; BLOCK_BYTES as usize];
        match split(m.path) {
            Some((prefix, name)) => {
                h[..name.len()].copy_from_slice(name.as_bytes());
                h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
            }
            None => {
                record(&mut pax, "path", m.path);
                let cut = truncate(m.path, NAME_BYTES);
                h[..cut.len()].copy_from_slice(cut.as_bytes());
            }
        }
        octal(&mut h[100..108], u64::from(m.mode));
        for (field, key, id) in [(108..116, "uid", m.uid), (116..124, "gid", m.gid)] {
            let id = u64::from(id);
            if id > OCTAL_7_MAX {
                record(&mut pax, key, &id.to_string());
                octal(&mut h[field], 0);
            } else {
                octal(&mut h[field], id);
            }
        }
        let size = match m.kind {
            Kind::File { size } => size,
            _ => 0,
        };
        if size > OCTAL_11_MAX {
            record(&mut pax, "size", &size.to_string());
            octal(&mut h[124..136], 0);
        } else {
            octal(&mut h[124..136], size);
        }
        let secs = ustar_secs(m.mtime);
        if m.mtime.nanos != 0 || secs != m.mtime.secs as u64 || m.mtime.secs < 0 {
            record(&mut pax, "mtime", &pax_time(m.mtime));
        }
        octal(&mut h[136..148], secs);
        let (typeflag, link) = match m.kind {
            Kind::File { .. } => (b'0', None),
            Kind::HardLink { to } => (b'1', Some(to)),
            Kind::Symlink { to } => (b'2', Some(to)),
            Kind::Directory => (b'5', None),
        };
        h[156] = typeflag;
        if let Some(to) = link {
            let cut = if to.len() <= LINKNAME_BYTES && to.is_ascii() {
                to
            } else {
                record(&mut pax, "linkpath", to);
                truncate(to, LINKNAME_BYTES)
            };
            h[157..157 + cut.len()].copy_from_slice(cut.as_bytes());
        }
        ustar_tail(&mut h);
        let mut blocks = Vec::with_capacity(3 * BLOCK_BYTES as usize);
        if !pax.is_empty() {
            let mut x = [0u8; BLOCK_BYTES as usize];
            let base = m
                .path
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("");
            let name = format!(
                "{PAX_NAME_DIR}{}",
                truncate(base, NAME_BYTES - PAX_NAME_DIR.len())
            );
            x[..name.len()].copy_from_slice(name.as_bytes());
            octal(&mut x[100..108], 0o644);
            octal(&mut x[108..116], 0);
            octal(&mut x[116..124], 0);
            octal(&mut x[124..136], pax.len() as u64);
            octal(&mut x[136..148], secs);
            x[156] = b'x';
            ustar_tail(&mut x);
            blocks.extend_from_slice(&x);
            blocks.extend_from_slice(&pax);
            blocks.resize(blocks.len() + padding(pax.len() as u64), 0);
        }
        blocks.extend_from_slice(&h);
        blocks
    }

    /// Two zero blocks.
    pub fn end_of_archive() -> [u8; 2 * BLOCK_BYTES as usize] {
        [0u8; 2 * BLOCK_BYTES as usize]
    }

    /// Zero bytes that bring `len` bytes of data to a whole block.
    pub fn padding(len: u64) -> usize {
        ((BLOCK_BYTES - len % BLOCK_BYTES) % BLOCK_BYTES) as usize
    }

    /// ustar's (prefix, name) for a path, if it has one: ASCII, and either
    /// short or split at a '/' into two parts that fit.
    pub fn split(path: &str) -> Option<(&str, &str)> {
        if !path.is_ascii() {
            return None;
        }
        if path.len() <= NAME_BYTES {
            return Some(("", path));
        }
        // The name part must not be empty: a directory keeps its '/'.
        path.bytes()
            .enumerate()
            .filter(|&(i, b)| b == b'/' && i > 0 && i + 1 < path.len())
            .map(|(i, _)| (&path[..i], &path[i + 1..]))
            .find(|(prefix, name)| prefix.len() <= PREFIX_BYTES && name.len() <= NAME_BYTES)
    }

    /// One pax record: "LEN key=value\n", LEN counting itself.
    pub fn record(out: &mut Vec<u8>, key: &str, value: &str) {
        let rest = key.len() + value.len() + 3;
        let mut len = rest + 1;
        while len != rest + digits(len) {
            len = rest + digits(len);
        }
        out.extend_from_slice(format!("{len} {key}={value}\n").as_bytes());
    }

    fn digits(n: usize) -> usize {
        n.to_string().len()
    }

    /// Seconds as pax writes them: "-1.5" is half a second before -1.
    pub fn pax_time(t: Timestamp) -> String {
        let total = i128::from(t.secs) * 1_000_000_000 + i128::from(t.nanos);
        let sign = if total < 0 { "-" } else { "" };
        let (secs, nanos) = (total.abs() / 1_000_000_000, total.abs() % 1_000_000_000);
        if nanos == 0 {
            return format!("{sign}{secs}");
        }
        let frac = format!("{nanos:09}");
        format!("{sign}{secs}.{}", frac.trim_end_matches('0'))
    }

    /// The mtime field: whole seconds, 0 when out of range (pax has it).
    fn ustar_secs(t: Timestamp) -> u64 {
        u64::try_from(t.secs)
            .ok()
            .filter(|&s| s <= OCTAL_11_MAX)
            .unwrap_or(0)
    }

    /// At most `max` bytes of `s`, cut at a character boundary.
    fn truncate(s: &str, max: usize) -> &str {
        let mut n = max.min(s.len());
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        &s[..n]
    }

    /// Zero-padded octal and a NUL, filling the field.
    fn octal(field: &mut [u8], v: u64) {
        let width = field.len() - 1;
        let s = format!("{v:0width$o}");
        assert_eq!(s.len(), width, "{v} fits a {width}-digit field");
        field[..width].copy_from_slice(s.as_bytes());
        field[width] = 0;
    }

    /// Magic, version, device numbers and the checksum.
    fn ustar_tail(h: &mut [u8; BLOCK_BYTES as usize]) {
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        octal(&mut h[329..337], 0);
        octal(&mut h[337..345], 0);
        h[148..156].fill(b' ');
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::ustar::*;
    use super::*;

    fn member(path: &str, kind: Kind<'static>) -> Vec<u8> {
        header_blocks(&Member {
            path: Box::leak(path.to_string().into_boxed_str()),
            kind,
            mode: 0o644,
            uid: 1,
            gid: 2,
            mtime: Timestamp { secs: 5, nanos: 0 },
        })
    }

    /// The pax records of a header, if it has them.
    fn pax_of(blocks: &[u8]) -> Option<String> {
        (blocks[156] == b'x').then(|| {
            let size =
                usize::from_str_radix(std::str::from_utf8(&blocks[124..135]).unwrap(), 8).unwrap();
            String::from_utf8(blocks[512..512 + size].to_vec()).unwrap()
        })
    }

    fn checksum_holds(h: &[u8]) -> bool {
        let stored = u32::from_str_radix(std::str::from_utf8(&h[148..154]).unwrap(), 8).unwrap();
        let sum: u32 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        stored == sum
    }

    #[test]
    fn pax_records_count_their_own_length() {
        for n in 0..2000 {
            let value = "v".repeat(n);
            let mut out = Vec::new();
            record(&mut out, "path", &value);
            let text = String::from_utf8(out.clone()).unwrap();
            let (len, _) = text.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), out.len(), "value of {n}");
        }
    }

    #[test]
    fn short_ascii_paths_need_no_pax_header() {
        let h = member("a/b/c", Kind::File { size: 3 });
        assert_eq!(h.len(), 512);
        assert_eq!(&h[..6], b"a/b/c\0");
        assert_eq!(h[156], b'0');
        assert!(checksum_holds(&h));
    }

    #[test]
    fn a_long_path_splits_at_a_slash_or_goes_to_pax() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        assert_eq!(split(&long), Some((&long[..120], &long[121..])));
        let h = member(&long, Kind::File { size: 0 });
        assert_eq!(h.len(), 512, "the split fits ustar");
        let unsplittable = "x".repeat(101);
        assert_eq!(split(&unsplittable), None);
        let dir = format!("{}/", "y".repeat(100));
        assert_eq!(split(&dir), None, "a name part may not be empty");
        let h = member(&dir, Kind::Directory);
        assert_eq!(pax_of(&h).unwrap(), format!("111 path={dir}\n"));
        assert!(checksum_holds(&h[..512]));
        assert!(checksum_holds(&h[h.len() - 512..]));
        assert_eq!(h[h.len() - 512 + 156], b'5');
        assert_eq!(split("café"), None, "non-ASCII paths go to pax");
    }

    #[test]
    fn sizes_from_8_gib_go_to_pax() {
        let h = member("f", Kind::File { size: OCTAL_11_MAX });
        assert_eq!(h.len(), 512);
        assert_eq!(&h[124..136], b"77777777777\0");
        let h = member(
            "f",
            Kind::File {
                size: OCTAL_11_MAX + 1,
            },
        );
        assert_eq!(pax_of(&h).unwrap(), "19 size=8589934592\n");
        assert_eq!(
            &h[h.len() - 512 + 124..h.len() - 512 + 136],
            b"00000000000\0"
        );
    }

    #[test]
    fn pax_times_keep_nanoseconds_and_sign() {
        let t = |secs, nanos| pax_time(Timestamp { secs, nanos });
        assert_eq!(t(5, 0), "5");
        assert_eq!(t(5, 500_000_000), "5.5");
        assert_eq!(t(5, 1), "5.000000001");
        assert_eq!(t(-2, 500_000_000), "-1.5");
        assert_eq!(t(-1, 0), "-1");
        assert_eq!(t(0, 0), "0");
    }

    #[test]
    fn names_that_cannot_be_components_are_refused() {
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        for good in ["a", "...", ".hidden", "café", "a b"] {
            assert!(check_name(good).is_ok(), "{good:?}");
        }
    }
}
