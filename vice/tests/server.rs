//! The real `codasrv` process: a new cell, logins, volumes on every shard,
//! and SIGKILL at random moments during a stream of creates and stores.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use coda_proto::cml::{self, CmlRecord, Op};
use coda_proto::fid::{Fid, StoreId, LOCAL_VNODE_BASE};
use coda_proto::status::{Status, Timestamp};
use coda_proto::vice::{self, op, MutateReply, VolumeInfo};
use coda_proto::volutil::{self, CreateVolume};
use coda_proto::Errno;
use coda_rpc2::codec::{self, Decode, Encode};
use coda_rpc2::endpoint::{Auth, ConnId, SideEffect};
use coda_rpc2::udp::ClientThread;
use coda_rpc2::{Config, Credentials, Sink, Source};

struct Srv {
    inner: coda_tests::Server,
    addr: SocketAddr,
}

/// A codasrv with `cores` shards in `root` (admin password `admin-pw`).
fn start(root: &Path, cores: u32) -> Srv {
    let inner = coda_tests::Server::start_in(root, cores);
    let addr = inner.addr.parse().unwrap();
    Srv { inner, addr }
}

fn client() -> ClientThread {
    ClientThread::spawn(
        "127.0.0.1:0".parse().unwrap(),
        Config {
            peer_timeout: Duration::from_secs(3),
            ..Config::default()
        },
    )
    .unwrap()
}

fn call<T: Decode>(
    ct: &ClientThread,
    conn: ConnId,
    subsystem: u16,
    opcode: u16,
    req: &impl Encode,
) -> Result<T, Errno> {
    let r = ct
        .call_blocking(conn, subsystem, opcode, codec::to_bytes(req), None)
        .map_err(|_| Errno::ETIMEDOUT)?;
    if r.code != 0 {
        return Err(Errno(r.code));
    }
    Ok(codec::from_bytes(&r.body).unwrap())
}

/// Logs in with a password, as `clog` does.
fn login(
    ct: &ClientThread,
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<Credentials, Errno> {
    coda_tools::login(ct, addr, user, password).map_err(|e| match e {
        coda_tools::ToolError::Server(code) => code,
        other => panic!("login: {other}"),
    })
}

struct Session {
    ct: ClientThread,
    conn: ConnId,
    host: u64,
    next: u64,
}

impl Session {
    fn new(addr: SocketAddr, creds: &Credentials, host: u64) -> Session {
        let ct = client();
        let conn = ct
            .connect_blocking(addr, Auth::Encrypted(creds.clone()))
            .unwrap();
        Session {
            ct,
            conn,
            host,
            next: 0,
        }
    }

    fn record(&mut self, op: Op) -> CmlRecord {
        self.next += 1;
        CmlRecord {
            store_id: StoreId {
                host: self.host,
                unique: self.next,
            },
            time: Timestamp::now(),
            op,
        }
    }

    fn create(&mut self, dir: Fid, name: &str) -> Result<Status, Errno> {
        self.next += 1;
        let fid = Fid::new(dir.volume, LOCAL_VNODE_BASE + self.next, 1);
        let rec = self.record(Op::Create(cml::Create {
            dir,
            name: name.into(),
            fid,
            mode: 0o644,
            group: 0,
        }));
        let r: MutateReply = call(&self.ct, self.conn, vice::SUBSYSTEM, op::CREATE, &rec)?;
        Ok(r.statuses[0].clone())
    }

    fn store(&mut self, st: &Status, data: &[u8]) -> Result<Status, Errno> {
        let rec = self.record(Op::Store(cml::Store {
            fid: st.fid,
            seen: st.vv.store_id,
            length: data.len() as u64,
            content_hash: *blake3::hash(data).as_bytes(),
        }));
        let side = SideEffect::Send(Source::Memory(Bytes::copy_from_slice(data)));
        let r = self
            .ct
            .call_blocking(
                self.conn,
                vice::SUBSYSTEM,
                op::STORE,
                codec::to_bytes(&rec),
                Some(side),
            )
            .map_err(|_| Errno::ETIMEDOUT)?;
        if r.code != 0 {
            return Err(Errno(r.code));
        }
        Ok(codec::from_bytes::<MutateReply>(&r.body).unwrap().statuses[0].clone())
    }

    fn fetch(&self, fid: Fid) -> Result<Vec<u8>, Errno> {
        let body = codec::to_bytes(&vice::Fetch { fid, offset: 0 });
        let side = SideEffect::Receive(Sink::memory(1 << 30));
        let r = self
            .ct
            .call_blocking(self.conn, vice::SUBSYSTEM, op::FETCH, body, Some(side))
            .map_err(|_| Errno::ETIMEDOUT)?;
        if r.code != 0 {
            return Err(Errno(r.code));
        }
        Ok(r.sink.unwrap().into_bytes())
    }

    fn entries(&self, dir: Fid) -> Vec<vice::DirEntry> {
        codec::from_bytes(&self.fetch(dir).unwrap()).unwrap()
    }
}

fn root_info(ct: &ClientThread, conn: ConnId) -> VolumeInfo {
    let r = ct
        .call_blocking(
            conn,
            vice::SUBSYSTEM,
            op::GET_ROOT_VOLUME,
            Bytes::new(),
            None,
        )
        .unwrap();
    assert_eq!(r.code, 0);
    codec::from_bytes(&r.body).unwrap()
}

#[test]
fn a_new_cell_logs_in_its_admin_and_spreads_volumes_over_both_shards() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("srv");
    let srv = start(&root, 2);
    // The cell as INTERFACE.md describes it.
    for f in ["codasrv.toml", "cell.key", "pdb.toml"] {
        assert!(root.join(f).exists(), "{f} missing");
    }
    let anon = client();
    let conn = anon.connect_blocking(srv.addr, Auth::Anonymous).unwrap();
    let info = root_info(&anon, conn);
    assert_eq!(info.name, "coda.root");
    // Wrong passwords and unknown users fail alike.
    assert_eq!(
        login(&anon, srv.addr, "admin", "wrong").err(),
        Some(Errno::AUTH_FAILED)
    );
    assert_eq!(
        login(&anon, srv.addr, "nobody", "x").err(),
        Some(Errno::AUTH_FAILED)
    );
    let creds = login(&anon, srv.addr, "admin", coda_tests::ADMIN_PASSWORD).unwrap();
    let mut admin = Session::new(srv.addr, &creds, 1);
    // Anonymous may read the root but not write it.
    let anon_create = {
        let mut s = Session {
            ct: client(),
            conn: ConnId(0),
            host: 9,
            next: 0,
        };
        s.conn = s.ct.connect_blocking(srv.addr, Auth::Anonymous).unwrap();
        s.create(info.root, "x")
    };
    assert_eq!(anon_create.err(), Some(Errno::EACCES));
    // Volumes land on both shards, and each shard serves its own.
    let mut servers = std::collections::HashSet::new();
    for i in 0..4 {
        let v: VolumeInfo = call(
            &admin.ct,
            admin.conn,
            volutil::SUBSYSTEM,
            volutil::op::CREATE,
            &CreateVolume {
                name: format!("u.vol{i}"),
                replicas: Vec::new(),
            },
        )
        .unwrap();
        servers.insert(v.servers[0].clone());
        let at: SocketAddr = v.servers[0].parse().unwrap();
        let mut s = Session::new(at, &creds, 10 + i);
        let st = s.create(v.root, "f").unwrap();
        s.store(&st, format!("volume {i}").as_bytes()).unwrap();
        assert_eq!(s.fetch(st.fid).unwrap(), format!("volume {i}").as_bytes());
        if at != srv.addr {
            // Asked of the wrong shard, a call says where to go.
            assert_eq!(admin.create(v.root, "g").err(), Some(Errno::WRONG_SHARD));
        }
    }
    assert_eq!(servers.len(), 2, "volumes on both shards: {servers:?}");
    // A volume name is taken once.
    let again: Result<VolumeInfo, _> = call(
        &admin.ct,
        admin.conn,
        volutil::SUBSYSTEM,
        volutil::op::CREATE,
        &CreateVolume {
            name: "u.vol0".into(),
            replicas: Vec::new(),
        },
    );
    assert_eq!(again.err(), Some(Errno::EEXIST));
    let st = admin.create(info.root, "top").unwrap();
    admin.store(&st, b"top data").unwrap();
    // A large file is hashed off the shard's thread; its bytes and hash hold.
    let big: Vec<u8> = (0..3u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let st = admin.create(info.root, "big").unwrap();
    let stored = admin.store(&st, &big).unwrap();
    assert_eq!(stored.content_hash, *blake3::hash(&big).as_bytes());
    assert_eq!(admin.fetch(st.fid).unwrap(), big);
    drop(srv);
}

#[test]
fn sigkill_during_creates_and_stores_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("srv");
    let mut acknowledged: Vec<(String, Vec<u8>)> = Vec::new();
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| coda_rpc2::udp::os_random_u64().unwrap());
    eprintln!("CRASH_SEED={seed}");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for round in 0..6u64 {
        let srv = start(&root, 1);
        let probe = client();
        let creds = login(&probe, srv.addr, "admin", coda_tests::ADMIN_PASSWORD).unwrap();
        let mut s = Session::new(srv.addr, &creds, 100 + round);
        let rootfid = root_info(&s.ct, s.conn).root;
        // Everything acknowledged before is there, whole.
        let names: std::collections::HashMap<String, Fid> = s
            .entries(rootfid)
            .into_iter()
            .map(|e| (e.name, e.fid))
            .collect();
        for (name, data) in &acknowledged {
            let fid = names
                .get(name)
                .unwrap_or_else(|| panic!("round {round}: {name} lost"));
            assert_eq!(
                &s.fetch(*fid).unwrap(),
                data,
                "round {round}: {name} changed"
            );
        }
        // A stream of creates and stores, killed at a random moment.
        let kill_after = Duration::from_millis(50 + next() % 400);
        let pid = srv.inner.child.id();
        let killer = std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        });
        let began = Instant::now();
        for i in 0.. {
            let name = format!("r{round}-{i}");
            let Ok(st) = s.create(rootfid, &name) else {
                break;
            };
            acknowledged.push((name.clone(), Vec::new()));
            let len = (next() % 200_000) as usize;
            let data: Vec<u8> = (0..len).map(|j| (j as u64 ^ next()) as u8).collect();
            match s.store(&st, &data) {
                Ok(_) => acknowledged.last_mut().unwrap().1 = data,
                Err(_) => {
                    // Not acknowledged: after the restart the file holds its
                    // old (empty) or its new content, never part of it; the
                    // checker below compares every container with its hash.
                    acknowledged.pop();
                    break;
                }
            }
            assert!(began.elapsed() < Duration::from_secs(60));
        }
        killer.join().unwrap();
        drop(s);
        drop(srv);
        // The checker finds nothing wrong in what recovery gives.
        check_offline(&root);
    }
    assert!(!acknowledged.is_empty());
}

/// Opens each shard of a stopped server and runs the consistency checker.
fn check_offline(root: &Path) {
    let config: coda_vice::server::CellConfig =
        toml::from_str(&std::fs::read_to_string(root.join("codasrv.toml")).unwrap()).unwrap();
    let mut id = [0u8; 16];
    for (i, b) in id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&config.cell_id[2 * i..2 * i + 2], 16).unwrap();
    }
    for i in 0..config.shards {
        let opts = coda_vice::shard::ShardOptions {
            segment_bytes: config.segment_bytes,
            log_bytes: config.log_bytes,
            ..Default::default()
        };
        let (shard, _) =
            coda_vice::shard::Shard::open(&root.join(format!("shard{i}")), i, id, &opts).unwrap();
        let problems = coda_vice::fsck::check_shard(&shard);
        assert!(problems.is_empty(), "shard {i}: {problems:#?}");
    }
}

#[test]
fn volume_stamps_survive_a_clean_stop_and_jump_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("srv");
    let stamp = |srv: &Srv| {
        let ct = client();
        let conn = ct.connect_blocking(srv.addr, Auth::Anonymous).unwrap();
        root_info(&ct, conn).stamp
    };
    let srv = start(&root, 1);
    let first = stamp(&srv);
    assert!(srv.inner.terminate().success());
    let srv = start(&root, 1);
    assert_eq!(
        stamp(&srv),
        first,
        "a clean stop keeps stamps, so clients keep their caches"
    );
    drop(srv); // SIGKILL
    let srv = start(&root, 1);
    assert_eq!(stamp(&srv), first + coda_vice::shard::STAMP_EPOCH);
}

#[test]
fn a_second_server_on_a_taken_port_fails_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(&dir.path().join("a"), 1);
    let second_root = dir.path().join("b");
    let out = coda_tests::run(
        "codasrv",
        &[
            "--root",
            second_root.to_str().unwrap(),
            "--listen",
            &first.addr.to_string(),
            "--cores",
            "1",
        ],
        "",
    );
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("codasrv: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("in use"), "{err}");
    // The first still answers.
    let ct = client();
    let conn = ct.connect_blocking(first.addr, Auth::Anonymous).unwrap();
    assert_eq!(root_info(&ct, conn).name, "coda.root");
}
