//! Volume administration (issue 7), in one run on one disk:
//! - `volutil restore` and `volutil dump` of a volume of `--mib` MiB
//!   (default 1024) through a real server on loopback, beside `tar x` and
//!   `tar c` of the same tree on the local disk, as throughput ratios;
//! - `volutil clone` of a volume of `--clone-files` files (default 100 000).
//!
//! `cargo run --release -p coda-bench --bin dump-bench [-- --mib N --clone-files N]`

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use coda_proto::acl::Acl;
use coda_proto::dump::{DumpEntry, DumpHeader, DumpVnode, DumpVolume, Writer};
use coda_proto::fid::StoreId;
use coda_proto::status::{Timestamp, VnodeKind};
use coda_proto::vice::VolumeKind;
use coda_proto::vv::VersionVector;
use coda_tests::Server;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2)
        .find(|w| w[0] == name)
        .map_or(default, |w| w[1].parse().expect("a number"))
}

fn timed(what: &str, cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

fn sync() -> Duration {
    timed("sync", &mut Command::new("sync"))
}

/// A tree of `mib` MiB: files of 4 MiB, and a thousand of 4 KiB, with
/// data that does not compress.
fn make_tree(root: &Path, mib: u64) {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut fill = |len: usize| -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            out.extend_from_slice(&seed.to_le_bytes());
        }
        out.truncate(len);
        out
    };
    for i in 0..mib / 4 {
        let d = root.join(format!("big{:02}", i % 16));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("f{i:04}")), fill(4 << 20)).unwrap();
    }
    for i in 0..1000 {
        let d = root.join(format!("small{:02}", i % 10));
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join(format!("s{i:04}")), fill(4096)).unwrap();
    }
}

/// An object of the generated dumps.
fn vnode(n: u64, kind: VnodeKind, parent: u64, data: &[u8]) -> DumpVnode {
    let mut vv = VersionVector::new(1);
    vv.bump(0, StoreId { host: 0, unique: n });
    let now = Timestamp::now();
    DumpVnode {
        vnode: n,
        unique: n,
        kind,
        mode: if kind == VnodeKind::Directory {
            0o755
        } else {
            0o644
        },
        owner: 0,
        group: 0,
        author: 0,
        link_count: if kind == VnodeKind::Directory { 2 } else { 1 },
        length: data.len() as u64,
        mtime: now,
        ctime: now,
        atime: now,
        data_version: 1,
        vv,
        content_hash: *blake3::hash(data).as_bytes(),
        parent_vnode: parent,
        parent_unique: parent,
        acl: (kind == VnodeKind::Directory).then(Acl::default),
        target: String::new(),
        data: !data.is_empty(),
    }
}

/// Writes a full dump of the tree under `root` (two levels: directories
/// of files) into `out`.
fn dump_tree(root: &Path, out: &Path) {
    let volume = 0x7f00_0fff;
    let mut w = Writer::new();
    let mut file = BufWriter::with_capacity(8 << 20, fs::File::create(out).unwrap());
    let mut buf = Vec::new();
    let header = DumpHeader {
        id: 1,
        base: None,
        volume,
        taken: Timestamp::now(),
        stamp: 1,
    };
    let mut dirs: Vec<_> = fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    let files: Vec<Vec<_>> = dirs
        .iter()
        .map(|d| {
            let mut f: Vec<_> = fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            f.sort();
            f
        })
        .collect();
    let count = 1 + dirs.len() as u64 + files.iter().map(|f| f.len() as u64).sum::<u64>();
    w.begin(
        &mut buf,
        &header,
        &DumpVolume {
            name: "bench".into(),
            kind: VolumeKind::ReadWrite,
            created: Timestamp::now(),
            next_vnode: count + 2,
            next_unique: count + 2,
        },
    );
    let mut root_v = vnode(1, VnodeKind::Directory, 1, b"");
    root_v.link_count = 2 + dirs.len() as u32;
    w.vnode(&mut buf, &root_v);
    let mut entries = Vec::new();
    let mut next = 2;
    let dir_ids: Vec<u64> = (0..dirs.len() as u64).map(|i| next + i).collect();
    for (d, id) in dirs.iter().zip(&dir_ids) {
        w.vnode(&mut buf, &vnode(*id, VnodeKind::Directory, 1, b""));
        entries.push((
            1,
            d.file_name().unwrap().to_string_lossy().into_owned(),
            *id,
        ));
    }
    next += dirs.len() as u64;
    for (fs_of, dir) in files.iter().zip(&dir_ids) {
        for f in fs_of {
            let data = fs::read(f).unwrap();
            w.vnode(&mut buf, &vnode(next, VnodeKind::File, *dir, &data));
            w.data(&mut buf, &data);
            entries.push((
                *dir,
                f.file_name().unwrap().to_string_lossy().into_owned(),
                next,
            ));
            next += 1;
            file.write_all(&buf).unwrap();
            buf.clear();
        }
    }
    for (dir, name, id) in entries {
        w.entry(
            &mut buf,
            &DumpEntry {
                dir_vnode: dir,
                dir_unique: dir,
                name,
                volume,
                vnode: id,
                unique: id,
            },
        );
    }
    w.end(&mut buf);
    file.write_all(&buf).unwrap();
    file.flush().unwrap();
}

/// A tree of `n` empty files in directories of a thousand.
fn make_empty_tree(root: &Path, n: u64) {
    for i in 0..n {
        let d = root.join(format!("d{:04}", i / 1000));
        if i % 1000 == 0 {
            fs::create_dir_all(&d).unwrap();
        }
        fs::File::create(d.join(format!("f{i:06}"))).unwrap();
    }
}

fn mb_s(bytes: u64, t: Duration) -> f64 {
    bytes as f64 / (1 << 20) as f64 / t.as_secs_f64()
}

fn main() {
    let mib = arg("--mib", 1024);
    let clone_files = arg("--clone-files", 100_000);
    let base = std::env::current_dir().unwrap().join("target");
    fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::tempdir_in(&base).unwrap();
    let tree = tmp.path().join("tree");
    make_tree(&tree, mib);
    sync();
    let bytes = mib << 20;

    let tar = tmp.path().join("tree.tar");
    let t_tar_c = timed(
        "tar c",
        Command::new("tar")
            .arg("cf")
            .arg(&tar)
            .arg("-C")
            .arg(&tree)
            .arg("."),
    ) + sync();
    let out = tmp.path().join("untar");
    fs::create_dir_all(&out).unwrap();
    let t_tar_x = timed(
        "tar x",
        Command::new("tar").arg("xf").arg(&tar).arg("-C").arg(&out),
    );
    let t_tar_x_sync = t_tar_x + sync();
    fs::remove_file(&tar).unwrap();
    fs::remove_dir_all(&out).unwrap();

    let dump_in = tmp.path().join("in.dump");
    dump_tree(&tree, &dump_in);
    fs::remove_dir_all(&tree).unwrap();
    sync();
    let srv = Server::start(1);
    let volutil = |args: &[&str]| {
        let mut c = Command::new(coda_tests::bin("volutil"));
        c.arg("--server")
            .arg(&srv.addr)
            .arg("--password-file")
            .arg(srv.password_file())
            .args(args);
        c
    };
    let t_restore = timed(
        "volutil restore",
        &mut volutil(&["restore", dump_in.to_str().unwrap(), "bench"]),
    );
    fs::remove_file(&dump_in).unwrap();
    let dump_out = tmp.path().join("out.dump");
    let t_dump = timed(
        "volutil dump",
        &mut volutil(&["dump", "bench", "-o", dump_out.to_str().unwrap()]),
    );
    let dumped = fs::metadata(&dump_out).unwrap().len();
    fs::remove_file(&dump_out).unwrap();

    println!(
        "dump and restore of {mib} MiB ({} files of 4 MiB, 1000 of 4 KiB)",
        mib / 4
    );
    println!("  tar c (+sync)        {:8.1} MB/s", mb_s(bytes, t_tar_c));
    println!(
        "  volutil dump -o      {:8.1} MB/s   ratio {:.2} of tar c ({dumped} bytes)",
        mb_s(bytes, t_dump),
        t_tar_c.as_secs_f64() / t_dump.as_secs_f64()
    );
    println!(
        "  tar x                {:8.1} MB/s   (+sync {:.1} MB/s)",
        mb_s(bytes, t_tar_x),
        mb_s(bytes, t_tar_x_sync)
    );
    println!(
        "  volutil restore      {:8.1} MB/s   ratio {:.2} of tar x, {:.2} of tar x + sync (restore syncs)",
        mb_s(bytes, t_restore),
        t_tar_x.as_secs_f64() / t_restore.as_secs_f64(),
        t_tar_x_sync.as_secs_f64() / t_restore.as_secs_f64()
    );

    let small = tmp.path().join("small");
    make_empty_tree(&small, clone_files);
    let small_dump = tmp.path().join("small.dump");
    dump_tree(&small, &small_dump);
    let t_small = timed(
        "volutil restore",
        &mut volutil(&["restore", small_dump.to_str().unwrap(), "many"]),
    );
    let t_clone = timed("volutil clone", &mut volutil(&["clone", "many"]));
    let t_backup = timed("volutil backup", &mut volutil(&["backup", "many"]));
    let t_backup2 = timed("volutil backup", &mut volutil(&["backup", "many"]));
    println!("a volume of {clone_files} files");
    println!("  restore              {:8.2} s", t_small.as_secs_f64());
    println!(
        "  clone                {:8.2} s   ({:.1} µs a file)",
        t_clone.as_secs_f64(),
        t_clone.as_secs_f64() * 1e6 / clone_files as f64
    );
    println!(
        "  backup, first/again  {:8.2} s / {:.2} s",
        t_backup.as_secs_f64(),
        t_backup2.as_secs_f64()
    );
}
