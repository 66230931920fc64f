//! `codadump2tar` against GNU tar: dumps made with `coda_proto::dump::Writer`
//! go through the built tool, and GNU tar lists and extracts what comes out.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use coda_proto::dump::{
    DumpEntry, DumpHeader, DumpVnode, DumpVolume, Parser, Record, Writer, DATA_CHUNK,
};
use coda_proto::vice::VolumeKind;
use coda_proto::{Timestamp, VersionVector, VnodeKind};

const TOOL: &str = env!("CARGO_BIN_EXE_codadump2tar");
const VOLUME: u64 = 0x7f00_0002;
const OTHER_VOLUME: u64 = 0x7f00_0003;
/// No single run here comes near this.
const RUN_LIMIT: Duration = Duration::from_secs(120);

// ---- Running things, each with a time limit ----

enum Feed {
    Nothing,
    Bytes(Vec<u8>),
    File(PathBuf),
}

fn wait_or_kill(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let began = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{what}: {e}")) {
            return status;
        }
        if began.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran longer than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run(program: &str, args: &[&str], feed: Feed) -> Output {
    let what = format!("{program} {args:?}");
    let mut cmd = Command::new(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    let bytes = match feed {
        Feed::Nothing => {
            cmd.stdin(Stdio::null());
            None
        }
        Feed::Bytes(b) => {
            cmd.stdin(Stdio::piped());
            Some(b)
        }
        Feed::File(p) => {
            cmd.stdin(File::open(p).unwrap());
            None
        }
    };
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: {e}"));
    if let Some(bytes) = bytes {
        let mut input = child.stdin.take().unwrap();
        std::thread::spawn(move || {
            let _ = input.write_all(&bytes);
        });
    }
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let status = wait_or_kill(&mut child, RUN_LIMIT, &what);
    Output {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn tool(args: &[&str], feed: Feed) -> Output {
    run(TOOL, args, feed)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs GNU tar; it must succeed.
fn gnu_tar(args: &[&str]) -> String {
    let o = run("tar", args, Feed::Nothing);
    assert!(
        o.status.success(),
        "tar {args:?}: {}{}",
        text(&o.stdout),
        text(&o.stderr)
    );
    text(&o.stdout)
}

// ---- Building dumps ----

type Key = (u64, u64);
const ROOT: Key = (1, 1);

enum Content {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

struct Object {
    key: Key,
    content: Content,
    mode: u32,
    owner: u32,
    group: u32,
    mtime: Timestamp,
    /// Deliberately wrong, to test the check.
    bad_hash: bool,
}

/// A volume as a dump will hold it.
struct Volume {
    base: Option<u64>,
    objects: Vec<Object>,
    entries: Vec<DumpEntry>,
    next: u64,
}

impl Volume {
    fn new() -> Volume {
        let mut v = Volume {
            base: None,
            objects: Vec::new(),
            entries: Vec::new(),
            next: 2,
        };
        v.objects.push(Object {
            key: ROOT,
            content: Content::Dir,
            mode: 0o40755,
            owner: 0,
            group: 0,
            mtime: Timestamp {
                secs: 1_700_000_000,
                nanos: 0,
            },
            bad_hash: false,
        });
        v
    }

    fn add(&mut self, dir: Key, name: &str, content: Content, mode: u32) -> Key {
        let n = self.next;
        self.next += 1;
        let key = (n, n * 7 + 1);
        self.objects.push(Object {
            key,
            content,
            mode,
            owner: 1000 + n as u32,
            group: 2000 + n as u32,
            mtime: Timestamp {
                secs: 1_600_000_000 + n as i64 * 3600,
                // Some whole seconds, some not.
                nanos: if n % 3 == 0 {
                    0
                } else {
                    (n as u32 * 123_456_789) % 1_000_000_000
                },
            },
            bad_hash: false,
        });
        self.link(dir, name, key);
        key
    }

    fn dir(&mut self, dir: Key, name: &str, mode: u32) -> Key {
        self.add(dir, name, Content::Dir, mode)
    }

    fn file(&mut self, dir: Key, name: &str, mode: u32, data: Vec<u8>) -> Key {
        self.add(dir, name, Content::File(data), mode)
    }

    fn symlink(&mut self, dir: Key, name: &str, target: &str) -> Key {
        self.add(dir, name, Content::Symlink(target.into()), 0o777)
    }

    /// Another name for `key`.
    fn link(&mut self, dir: Key, name: &str, key: Key) {
        self.entry(dir, name, VOLUME, key);
    }

    fn mount(&mut self, dir: Key, name: &str, volume: u64) {
        self.entry(dir, name, volume, (1, 1));
    }

    fn entry(&mut self, dir: Key, name: &str, volume: u64, key: Key) {
        self.entries.push(DumpEntry {
            dir_vnode: dir.0,
            dir_unique: dir.1,
            name: name.into(),
            volume,
            vnode: key.0,
            unique: key.1,
        });
    }

    fn object(&mut self, key: Key) -> &mut Object {
        self.objects.iter_mut().find(|o| o.key == key).unwrap()
    }

    fn header(&self) -> DumpHeader {
        DumpHeader {
            id: 0x1234,
            base: self.base,
            volume: VOLUME,
            taken: Timestamp::default(),
            stamp: 1,
        }
    }

    fn vnode(o: &Object) -> DumpVnode {
        let (kind, bytes, target) = match &o.content {
            Content::Dir => (VnodeKind::Directory, &[][..], String::new()),
            Content::File(d) => (VnodeKind::File, &d[..], String::new()),
            Content::Symlink(t) => (VnodeKind::Symlink, t.as_bytes(), t.clone()),
        };
        let mut hash = *blake3::hash(bytes).as_bytes();
        if o.bad_hash {
            hash[0] ^= 1;
        }
        DumpVnode {
            vnode: o.key.0,
            unique: o.key.1,
            kind,
            mode: o.mode,
            owner: o.owner,
            group: o.group,
            author: o.owner,
            link_count: 1,
            length: bytes.len() as u64,
            mtime: o.mtime,
            ctime: o.mtime,
            atime: o.mtime,
            data_version: 1,
            vv: VersionVector::new(1),
            content_hash: hash,
            parent_vnode: 1,
            parent_unique: 1,
            acl: None,
            target,
            data: kind == VnodeKind::File && !bytes.is_empty(),
        }
    }

    /// The dump: directories first, as `volutil dump` writes it.
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = Writer::new();
        w.begin(&mut out, &self.header(), &volume_header());
        let dirs = self
            .objects
            .iter()
            .filter(|o| matches!(o.content, Content::Dir));
        let rest = self
            .objects
            .iter()
            .filter(|o| !matches!(o.content, Content::Dir));
        for o in dirs.chain(rest) {
            w.vnode(&mut out, &Volume::vnode(o));
            if let Content::File(d) = &o.content {
                w.data(&mut out, d);
            }
        }
        for e in &self.entries {
            w.entry(&mut out, e);
        }
        w.end(&mut out);
        out
    }

    /// Every path the archive should hold (directories with a trailing
    /// '/'), in walk order, and what it names: an object, or `None` for a
    /// mount point.
    fn paths(&self) -> Vec<(String, Option<Key>)> {
        fn walk(v: &Volume, dir: Key, prefix: &str, out: &mut Vec<(String, Option<Key>)>) {
            let mut names: Vec<&DumpEntry> = v
                .entries
                .iter()
                .filter(|e| (e.dir_vnode, e.dir_unique) == dir)
                .collect();
            names.sort_by(|a, b| a.name.cmp(&b.name));
            for e in names {
                let key = (e.vnode, e.unique);
                let path = format!("{prefix}{}", e.name);
                if e.volume != VOLUME {
                    out.push((format!("{path}/"), None));
                    continue;
                }
                let o = v.objects.iter().find(|o| o.key == key).unwrap();
                if let Content::Dir = o.content {
                    out.push((format!("{path}/"), Some(key)));
                    walk(v, key, &format!("{path}/"), out);
                } else {
                    out.push((path, Some(key)));
                }
            }
        }
        let mut out = Vec::new();
        walk(self, ROOT, "", &mut out);
        out
    }
}

fn volume_header() -> DumpVolume {
    DumpVolume {
        name: "u.test".into(),
        kind: VolumeKind::ReadWrite,
        created: Timestamp::default(),
        next_vnode: 1000,
        next_unique: 1000,
    }
}

/// Bytes that are not all alike.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const LONG_TARGET_BYTES: usize = 170;

/// A tree with something of everything.
fn sample() -> Volume {
    let mut v = Volume::new();
    let docs = v.dir(ROOT, "docs", 0o40750);
    v.file(docs, "readme.txt", 0o100644, b"hello, coda\n".to_vec());
    v.file(docs, "empty", 0o100600, Vec::new());
    v.file(docs, "big.bin", 0o100640, noise(3 * DATA_CHUNK + 12_345, 7));
    v.file(docs, "one-chunk", 0o100444, noise(DATA_CHUNK, 8));
    v.file(docs, "setuid-tool", 0o104755, b"#!/bin/sh\n".to_vec());
    let sub = v.dir(docs, "sub", 0o42770);
    let frozen = v.dir(sub, "frozen", 0o40555);
    v.file(frozen, "inside", 0o100644, b"still here".to_vec());
    // Several names for one file: written once, then linked.
    let shared = v.file(docs, "hard-a", 0o100664, noise(70_000, 9));
    v.link(ROOT, "hard-b", shared);
    v.link(sub, "hard-c", shared);
    v.symlink(ROOT, "link", "docs/readme.txt");
    v.symlink(ROOT, "dangling", "../nowhere");
    let long_target = format!("docs/{}", "t".repeat(LONG_TARGET_BYTES - 5));
    v.symlink(ROOT, "long-link", &long_target);
    // A path over 150 bytes through nested directories, and a name over
    // 100 bytes that no ustar split can hold.
    let mut d = ROOT;
    for i in 0..3 {
        d = v.dir(
            d,
            &format!("nested-directory-number-{i}-{}", "n".repeat(20)),
            0o40755,
        );
    }
    v.file(
        d,
        &format!("file-at-the-bottom-{}", "f".repeat(60)),
        0o100644,
        b"deep".to_vec(),
    );
    // Over 255 bytes, with a last name too long for ustar's name field.
    v.file(d, &"g".repeat(130), 0o100644, b"deeper".to_vec());
    v.file(ROOT, &"x".repeat(120), 0o100644, b"long name".to_vec());
    v.file(
        ROOT,
        "café-ünïcödé",
        0o100644,
        "non-ASCII".as_bytes().to_vec(),
    );
    let wide = v.file(ROOT, "big-uid", 0o100644, b"uid over ustar".to_vec());
    v.object(wide).owner = 3_000_000;
    v.object(wide).group = 4_000_000;
    let old = v.file(ROOT, "before-1970", 0o100644, b"old".to_vec());
    v.object(old).mtime = Timestamp {
        secs: -31_536_000,
        nanos: 250_000_000,
    };
    v.mount(docs, "mnt", OTHER_VOLUME);
    v
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Extracts `archive` and checks every path against `v`.
fn check_extraction(v: &Volume, archive: &Path, prefix: &str) {
    let dir = tempfile::tempdir().unwrap();
    let into = dir.path().to_str().unwrap();
    gnu_tar(&[
        "-x",
        "-p",
        "--numeric-owner",
        "-f",
        archive.to_str().unwrap(),
        "-C",
        into,
    ]);
    let paths = v.paths();
    let mut expected: BTreeSet<PathBuf> = paths
        .iter()
        .map(|(p, _)| dir.path().join(prefix).join(p.trim_end_matches('/')))
        .collect();
    if !prefix.is_empty() {
        expected.insert(dir.path().join(prefix));
    }
    let mut found = BTreeSet::new();
    let mut todo = vec![dir.path().to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
            found.insert(e.path());
        }
    }
    assert_eq!(found, expected, "the extraction holds exactly the volume");
    let mut inodes: HashMap<Key, u64> = HashMap::new();
    for (p, key) in &paths {
        let at = dir.path().join(prefix).join(p.trim_end_matches('/'));
        let m = std::fs::symlink_metadata(&at).unwrap();
        let Some(key) = key else {
            assert!(m.is_dir(), "mount point {p} is a directory");
            assert_eq!(std::fs::read_dir(&at).unwrap().count(), 0, "{p} is empty");
            continue;
        };
        let o = v.objects.iter().find(|o| o.key == *key).unwrap();
        match &o.content {
            Content::Dir => assert!(m.is_dir(), "{p}"),
            Content::File(data) => {
                assert!(m.is_file(), "{p}");
                assert!(std::fs::read(&at).unwrap() == *data, "{p}'s contents");
                let first = *inodes.entry(*key).or_insert(m.ino());
                assert_eq!(m.ino(), first, "{p} is a hard link of its first name");
            }
            Content::Symlink(target) => {
                assert!(m.file_type().is_symlink(), "{p}");
                assert_eq!(std::fs::read_link(&at).unwrap(), Path::new(target), "{p}");
            }
        }
        if !m.file_type().is_symlink() {
            assert_eq!(
                m.permissions().mode() & 0o7777,
                o.mode & 0o7777,
                "{p}'s mode"
            );
            assert_eq!(
                (m.mtime(), m.mtime_nsec()),
                (o.mtime.secs, i64::from(o.mtime.nanos)),
                "{p}'s mtime"
            );
        }
        if is_root() {
            assert_eq!((m.uid(), m.gid()), (o.owner, o.group), "{p}'s owner");
        }
    }
    if !prefix.is_empty() {
        let m = std::fs::metadata(dir.path().join(prefix)).unwrap();
        let root = &v.objects[0];
        assert_eq!(m.permissions().mode() & 0o7777, root.mode & 0o7777);
        assert_eq!(m.mtime(), root.mtime.secs);
    }
}

/// `tar tf`'s names, in order.
fn listing(archive: &Path) -> Vec<String> {
    gnu_tar(&[
        "-t",
        "--quoting-style=literal",
        "-f",
        archive.to_str().unwrap(),
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

// ---- The tests ----

#[test]
fn a_dump_becomes_an_archive_that_gnu_tar_extracts_exactly() {
    let v = sample();
    let dump = v.bytes();
    let work = tempfile::tempdir().unwrap();
    let dump_file = write(work.path(), "v.dump", &dump);
    let archive = work.path().join("v.tar");
    let o = tool(
        &[
            "-i",
            dump_file.to_str().unwrap(),
            "-o",
            archive.to_str().unwrap(),
        ],
        Feed::Nothing,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    // Not a terminal: no progress, only the one note.
    assert_eq!(
        text(&o.stderr),
        "codadump2tar: note: docs/mnt/ is a mount point of volume 7f000003; \
         it becomes an empty directory\n"
    );
    assert!(o.stdout.is_empty());
    let archive_bytes = std::fs::read(&archive).unwrap();
    assert_eq!(archive_bytes.len() % 512, 0);

    // Member order: directories before their contents, names sorted.
    let names = listing(&archive);
    let expected: Vec<String> = v.paths().into_iter().map(|(p, _)| p).collect();
    assert_eq!(names, expected);
    for (i, name) in names.iter().enumerate() {
        let mut parent = name.trim_end_matches('/');
        while let Some((up, _)) = parent.rsplit_once('/') {
            let up_dir = format!("{up}/");
            assert!(names[..i].contains(&up_dir), "{up_dir} comes before {name}");
            parent = up;
        }
    }
    assert!(names.iter().any(|n| n.len() > 255), "a path over 255 bytes");
    // A file with several names is stored once; the others are links.
    let verbose = gnu_tar(&[
        "-t",
        "-v",
        "--numeric-owner",
        "--quoting-style=literal",
        "-f",
        archive.to_str().unwrap(),
    ]);
    assert!(verbose.contains("hard-b link to docs/hard-a"), "{verbose}");
    assert!(
        verbose.contains("docs/sub/hard-c link to docs/hard-a"),
        "{verbose}"
    );
    assert!(verbose.contains("3000000/4000000"), "{verbose}");
    assert!(
        verbose.contains(&format!(
            "long-link -> docs/{}",
            "t".repeat(LONG_TARGET_BYTES - 5)
        )),
        "{verbose}"
    );
    // The shared file's data is in the archive once.
    let shared = noise(70_000, 9);
    let copies = archive_bytes
        .windows(64)
        .filter(|w| *w == &shared[..64])
        .count();
    assert_eq!(copies, 1, "the hard-linked file is stored once");

    check_extraction(&v, &archive, "");

    // From a pipe (data spilled), and from a file on standard input, the
    // archive is the same.
    let piped = tool(&[], Feed::Bytes(dump.clone()));
    assert!(piped.status.success(), "{}", text(&piped.stderr));
    assert!(
        piped.stdout == archive_bytes,
        "a piped dump gives the same archive"
    );
    let redirected = tool(&["-i", "-"], Feed::File(dump_file.clone()));
    assert!(redirected.status.success(), "{}", text(&redirected.stderr));
    assert!(
        redirected.stdout == archive_bytes,
        "a dump on standard input gives the same archive"
    );
}

#[test]
fn root_name_puts_everything_under_one_directory() {
    let v = sample();
    let work = tempfile::tempdir().unwrap();
    let o = tool(&["--root-name", "u.test"], Feed::Bytes(v.bytes()));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let archive = write(work.path(), "v.tar", &o.stdout);
    let names = listing(&archive);
    assert_eq!(names[0], "u.test/");
    assert!(names.iter().all(|n| n.starts_with("u.test/")), "{names:?}");
    assert_eq!(names.len(), v.paths().len() + 1);
    check_extraction(&v, &archive, "u.test");

    for bad in ["", "a/b", "..", "."] {
        let o = tool(&["--root-name", bad], Feed::Bytes(v.bytes()));
        assert_eq!(o.status.code(), Some(1), "--root-name {bad:?}");
        assert!(text(&o.stderr).starts_with("codadump2tar: --root-name"));
    }
}

#[test]
fn help_names_every_option() {
    let o = tool(&["--help"], Feed::Nothing);
    assert!(o.status.success());
    let help = text(&o.stdout);
    for word in ["Usage", "--input", "-i", "--output", "-o", "--root-name"] {
        assert!(help.contains(word), "--help shows {word}: {help}");
    }
}

/// The offset in "bad dump at byte N: ...", and the whole line.
fn bad_dump_offset(o: &Output) -> (u64, String) {
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    let rest = err
        .strip_prefix("codadump2tar: bad dump at byte ")
        .unwrap_or_else(|| panic!("{err}"));
    let (n, _) = rest.split_once(':').unwrap();
    (n.parse().unwrap(), err.trim_end().to_string())
}

#[test]
fn a_truncated_dump_fails_with_its_offset_and_leaves_no_archive() {
    let v = sample();
    let dump = v.bytes();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("out.tar");
    let big_data_at = dump.len() / 2;
    for cut in [0, 5, 12, 40, big_data_at, dump.len() - 30, dump.len() - 1] {
        let cut_file = write(work.path(), "cut.dump", &dump[..cut]);
        let o = tool(
            &[
                "-i",
                cut_file.to_str().unwrap(),
                "-o",
                archive.to_str().unwrap(),
            ],
            Feed::Nothing,
        );
        let (at, err) = bad_dump_offset(&o);
        assert!(at <= cut as u64, "cut at {cut}: {err}");
        assert!(!archive.exists(), "cut at {cut}: a partial archive is left");
        let piped = tool(&[], Feed::Bytes(dump[..cut].to_vec()));
        assert_eq!(bad_dump_offset(&piped).1, err, "piped, cut at {cut}");
        assert!(
            piped.stdout.is_empty(),
            "nothing is written from a bad dump"
        );
    }
}

#[test]
fn a_corrupted_dump_fails_with_the_damaged_frames_offset() {
    let v = sample();
    let dump = v.bytes();
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("out.tar");
    let offsets = record_offsets(&dump);
    for flip in [20, dump.len() / 3, dump.len() / 2, dump.len() - 20] {
        let mut bad = dump.clone();
        bad[flip] ^= 0x10;
        let bad_file = write(work.path(), "bad.dump", &bad);
        let o = tool(
            &[
                "-i",
                bad_file.to_str().unwrap(),
                "-o",
                archive.to_str().unwrap(),
            ],
            Feed::Nothing,
        );
        let (at, err) = bad_dump_offset(&o);
        let frame = offsets.iter().rev().find(|&&r| r <= flip as u64).unwrap();
        assert_eq!(at, *frame, "flip at {flip}: {err}");
        assert!(err.ends_with("checksum mismatch"), "{err}");
        assert!(!archive.exists());
    }
}

/// Where each record of a good dump begins.
fn record_offsets(dump: &[u8]) -> Vec<u64> {
    let mut p = Parser::new();
    p.feed(dump);
    let mut at = Vec::new();
    while let Some(_r) = p.next().unwrap() {
        at.push(p.record_offset());
    }
    p.finish().unwrap();
    at
}

/// Where the vnode record of `key` begins.
fn vnode_offset(dump: &[u8], key: Key) -> u64 {
    let mut p = Parser::new();
    p.feed(dump);
    while let Some(r) = p.next().unwrap() {
        if let Record::Vnode(v) = r {
            if (v.vnode, v.unique) == key {
                return p.record_offset();
            }
        }
    }
    panic!("no vnode {key:?}")
}

#[test]
fn data_that_does_not_match_its_hash_is_refused_at_its_vnode() {
    let mut v = sample();
    let docs = v.entries.iter().find(|e| e.name == "docs").unwrap();
    let docs = (docs.vnode, docs.unique);
    let f = v.file(docs, "damaged", 0o100644, noise(2 * DATA_CHUNK + 5, 3));
    v.object(f).bad_hash = true;
    let dump = v.bytes();
    let at = vnode_offset(&dump, f);
    for feed in [Feed::Bytes(dump.clone()), Feed::Nothing] {
        let work = tempfile::tempdir().unwrap();
        let dump_file = write(work.path(), "v.dump", &dump);
        let args: Vec<&str> = match feed {
            Feed::Nothing => vec!["-i", dump_file.to_str().unwrap()],
            _ => vec![],
        };
        let o = tool(&args, feed);
        assert_eq!(
            bad_dump_offset(&o),
            (
                at,
                format!(
                    "codadump2tar: bad dump at byte {at}: file {}.{}'s data does not match \
                     its content hash",
                    f.0, f.1
                )
            )
        );
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn an_incremental_dump_is_refused() {
    let mut v = sample();
    v.base = Some(0xabc);
    let o = tool(&[], Feed::Bytes(v.bytes()));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        "codadump2tar: this is an incremental dump (relative to dump abc): it does not hold \
         the whole tree; convert a full dump\n"
    );
    assert!(o.stdout.is_empty());
}

#[test]
fn entries_that_make_no_tree_are_refused_at_the_entry() {
    type Damage = fn(&mut Volume);
    let cases: [(&str, Damage); 5] = [
        ("two entries named", |v| v.link(ROOT, "link", (3, 22))),
        ("which is not in the dump", |v| {
            v.link(ROOT, "ghost", (900, 1))
        }),
        ("has a second name", |v| v.link(ROOT, "docs-again", (2, 15))),
        ("names the volume root", |v| v.link(ROOT, "loop", ROOT)),
        ("the name is reserved", |v| {
            let f = v.file(ROOT, "ok", 0o100644, vec![1]);
            v.link(ROOT, "..", f);
        }),
    ];
    for (why, damage) in cases {
        let mut v = sample();
        assert_eq!(
            v.entries[0].name, "docs",
            "(2, 15) is docs, as the cases assume"
        );
        assert_eq!(v.entries[1].name, "readme.txt", "(3, 22) is readme.txt");
        damage(&mut v);
        let dump = v.bytes();
        let o = tool(&[], Feed::Bytes(dump.clone()));
        let (at, err) = bad_dump_offset(&o);
        assert!(err.contains(why), "{why}: {err}");
        let offsets = record_offsets(&dump);
        let entries_from = offsets[offsets.len() - 1 - v.entries.len()];
        assert!(at >= entries_from, "{why}: the offset is an entry's: {err}");
    }
}

#[test]
fn objects_no_name_reaches_are_left_out_with_a_note() {
    let mut v = Volume::new();
    v.file(ROOT, "kept", 0o100644, b"kept".to_vec());
    let lost = v.file(ROOT, "lost", 0o100644, b"lost".to_vec());
    v.entries.retain(|e| e.name != "lost");
    let o = tool(&[], Feed::Bytes(v.bytes()));
    assert!(o.status.success(), "{}", text(&o.stderr));
    let at = vnode_offset(&v.bytes(), lost);
    assert_eq!(
        text(&o.stderr),
        format!(
            "codadump2tar: note: 1 object(s) cannot be reached from the volume root and are \
             left out (the first is vnode {}.{}, at byte {at})\n",
            lost.0, lost.1
        )
    );
    let work = tempfile::tempdir().unwrap();
    let archive = write(work.path(), "v.tar", &o.stdout);
    assert_eq!(listing(&archive), ["kept"]);
}

#[test]
fn an_empty_volume_is_an_empty_archive() {
    let v = Volume::new();
    let o = tool(&[], Feed::Bytes(v.bytes()));
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(o.stdout, vec![0u8; 1024]);
    let o = tool(&["--root-name", "r"], Feed::Bytes(v.bytes()));
    let work = tempfile::tempdir().unwrap();
    let archive = write(work.path(), "v.tar", &o.stdout);
    assert_eq!(listing(&archive), ["r/"]);
}

/// Free bytes in the file system holding `dir`.
fn free_bytes(dir: &Path) -> u64 {
    let c = std::ffi::CString::new(dir.to_str().unwrap()).unwrap();
    // SAFETY: a valid C string and a zeroed statvfs to fill.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut s) };
    assert_eq!(rc, 0, "statvfs {}", dir.display());
    s.f_bavail as u64 * s.f_frsize as u64
}

/// Over 8 GiB of zeros, streamed from a writer thread through the tool's
/// stdin and from its stdout into `tar tvf -`: nothing holds the file in
/// memory. The tool spills the data to its temporary directory (a pipe
/// cannot be read twice), so this needs that much free disk there, and
/// says so and passes if it is not free.
#[test]
fn a_file_over_8_gib_streams_through_with_a_pax_size() {
    const SIZE: u64 = (8 << 30) + 1234;
    const LIMIT: Duration = Duration::from_secs(600);
    let spill = tempfile::tempdir().unwrap();
    let free = free_bytes(spill.path());
    if free < SIZE + (1 << 30) {
        eprintln!(
            "skipped: {} has {free} bytes free, the spill needs {SIZE}",
            spill.path().display()
        );
        return;
    }
    let zeros = vec![0u8; DATA_CHUNK];
    let mut hasher = blake3::Hasher::new();
    let mut left = SIZE;
    while left > 0 {
        let n = left.min(DATA_CHUNK as u64) as usize;
        hasher.update(&zeros[..n]);
        left -= n as u64;
    }
    let hash = *hasher.finalize().as_bytes();

    let mut converter = Command::new(TOOL)
        .env("TMPDIR", spill.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lister = Command::new("tar")
        .args(["-t", "-v", "-f", "-"])
        .stdin(converter.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = converter.stdin.take().unwrap();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let mut v = Volume::new();
        let key = v.file(ROOT, "zeros", 0o100600, Vec::new());
        let mut out = Vec::new();
        let mut w = Writer::new();
        w.begin(&mut out, &v.header(), &volume_header());
        w.vnode(&mut out, &Volume::vnode(&v.objects[0]));
        let mut file = Volume::vnode(&v.objects[1]);
        assert_eq!((file.vnode, file.unique), key);
        file.length = SIZE;
        file.data = true;
        file.content_hash = hash;
        w.vnode(&mut out, &file);
        let mut left = SIZE;
        while left > 0 {
            let n = left.min(DATA_CHUNK as u64) as usize;
            w.data(&mut out, &zeros[..n]);
            input.write_all(&out)?;
            out.clear();
            left -= n as u64;
        }
        for e in &v.entries {
            w.entry(&mut out, e);
        }
        w.end(&mut out);
        input.write_all(&out)
    });
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let listed = drain(Box::new(lister.stdout.take().unwrap()));
    let tar_err = drain(Box::new(lister.stderr.take().unwrap()));
    let tool_err = drain(Box::new(converter.stderr.take().unwrap()));
    let began = Instant::now();
    let converted = wait_or_kill(&mut converter, LIMIT, "codadump2tar of 8 GiB");
    let left = LIMIT.saturating_sub(began.elapsed());
    let listed_status = wait_or_kill(&mut lister, left, "tar tvf - of 8 GiB");
    writer.join().unwrap().unwrap();
    let tool_err = text(&tool_err.join().unwrap());
    assert!(converted.success(), "{tool_err}");
    assert_eq!(tool_err, "");
    let tar_err = text(&tar_err.join().unwrap());
    assert!(listed_status.success(), "{tar_err}");
    let listed = text(&listed.join().unwrap());
    let line = listed
        .lines()
        .find(|l| l.ends_with(" zeros"))
        .unwrap_or_else(|| panic!("{listed}"));
    let size: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(size[2], SIZE.to_string(), "{line}");
    assert_eq!(listed.lines().count(), 1, "{listed}");
    eprintln!(
        "8 GiB and a bit through codadump2tar and tar in {:?}",
        began.elapsed()
    );
}

#[test]
fn the_archive_may_not_overwrite_the_dump() {
    let dump = sample().bytes();
    let work = tempfile::tempdir().unwrap();
    let dump_file = write(work.path(), "v.dump", &dump);
    let path = dump_file.to_str().unwrap();
    let o = tool(&["-i", path, "-o", path], Feed::Nothing);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        text(&o.stderr),
        format!("codadump2tar: {path} is the dump being read\n")
    );
    assert!(
        std::fs::read(&dump_file).unwrap() == dump,
        "the dump is untouched"
    );
}

#[test]
fn a_reader_that_stops_early_is_not_an_error() {
    let work = tempfile::tempdir().unwrap();
    let dump_file = write(work.path(), "v.dump", &sample().bytes());
    let mut child = Command::new(TOOL)
        .args(["-i", dump_file.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 512];
    out.read_exact(&mut first).unwrap();
    drop(out);
    let status = wait_or_kill(&mut child, RUN_LIMIT, "codadump2tar into a closed pipe");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(
        err.lines().all(|l| l.starts_with("codadump2tar: note: ")),
        "nothing but notes: {err}"
    );
}
