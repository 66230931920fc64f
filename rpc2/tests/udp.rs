//! Real sockets: a server process (rpc2-testd) and this test process on
//! 127.0.0.1, over glommio and io_uring.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../src/bin/testd/pattern.rs"]
mod pattern;

use bytes::Bytes;
use coda_rpc2::endpoint::{Auth, SideEffect};
use coda_rpc2::udp::ClientThread;
use coda_rpc2::{CellKey, Config, Credentials, Sink, Source, Token};
use pattern::pattern;

const NULL: u16 = 1;
const ECHO: u16 = 2;
const FETCH: u16 = 3;
const STORE: u16 = 4;
const CELL: [u8; 32] = [0x42; 32];

/// The server process, killed however the test ends.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> Server {
    start_server_with(&[])
}

fn start_server_with(extra: &[&str]) -> Server {
    let hex: String = CELL.iter().map(|b| format!("{b:02x}")).collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rpc2-testd"))
        .args(["--listen", "127.0.0.1:0", "--cell-key", &hex])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start rpc2-testd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("rpc2-testd ready on ")
        .expect("ready line")
        .parse()
        .unwrap();
    Server { child, addr }
}

fn credentials(user_id: u32) -> Credentials {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let token = Token {
        user_id,
        session_key: [user_id as u8; 32],
        issued_at: now,
        expires_at: now + 3600,
    };
    Credentials {
        sealed_token: token.seal(&CellKey::from_bytes(CELL), [9; 24]),
        session_key: token.session_key,
    }
}

fn client() -> ClientThread {
    client_with(Config::default())
}

fn client_with(config: Config) -> ClientThread {
    let config = Config {
        peer_timeout: Duration::from_secs(10),
        ..config
    };
    ClientThread::spawn("127.0.0.1:0".parse().unwrap(), config).unwrap()
}

#[test]
fn calls_from_many_connections_and_threads_each_get_their_own_reply() {
    let server = start_server();
    let client = Arc::new(client());
    let mut threads = Vec::new();
    for t in 0..8u32 {
        let client = client.clone();
        let addr = server.addr;
        threads.push(std::thread::spawn(move || {
            let auth = match t % 3 {
                0 => Auth::Anonymous,
                1 => Auth::Authenticated(credentials(t)),
                _ => Auth::Encrypted(credentials(t)),
            };
            let conns: Vec<_> = (0..4)
                .map(|_| client.connect_blocking(addr, auth.clone()).unwrap())
                .collect();
            for i in 0..200u32 {
                let conn = conns[i as usize % conns.len()];
                let body = Bytes::from(format!("thread {t} call {i}").repeat(1 + i as usize % 7));
                let reply = client
                    .call_blocking(conn, 7, ECHO, body.clone(), None)
                    .unwrap();
                assert_eq!(reply.body, body);
                let null = client
                    .call_blocking(conn, 7, NULL, Bytes::new(), None)
                    .unwrap();
                assert!(null.body.is_empty());
            }
        }));
    }
    for t in threads {
        t.join().unwrap();
    }
    let stats = client.stats();
    assert_eq!(stats.calls_sent, 8 * 200 * 2);
    assert_eq!(stats.calls_failed, 0);
    assert_eq!(stats.drops_total(), 0);
}

fn fetch_and_store_100_mib(auth: Auth) {
    let server = start_server();
    fetch_and_store(&server, &client(), auth, 100 << 20);
}

fn fetch_and_store(server: &Server, client: &ClientThread, auth: Auth, len: usize) {
    let conn = client.connect_blocking(server.addr, auth).unwrap();

    let mut body = (len as u64).to_le_bytes().to_vec();
    body.extend_from_slice(&77u64.to_le_bytes());
    let sink = SideEffect::Receive(Sink::File(tempfile::tempfile().unwrap()));
    let reply = client
        .call_blocking(conn, 7, FETCH, Bytes::from(body), Some(sink))
        .unwrap();
    assert_eq!(reply.code, 0);
    assert_eq!(reply.sftp_bytes, len as u64);
    let Some(Sink::File(mut file)) = reply.sink else {
        panic!("no sink back")
    };
    let mut fetched = Vec::new();
    std::io::Seek::rewind(&mut file).unwrap();
    file.read_to_end(&mut fetched).unwrap();
    assert_eq!(fetched.len(), len);
    assert!(
        blake3::hash(&fetched) == blake3::hash(&pattern(77, len)),
        "fetched data differs"
    );

    let data = pattern(78, len);
    let mut file = tempfile::tempfile().unwrap();
    std::io::Write::write_all(&mut file, &data).unwrap();
    let source = SideEffect::Send(Source::File {
        file,
        len: len as u64,
    });
    let reply = client
        .call_blocking(conn, 7, STORE, Bytes::new(), Some(source))
        .unwrap();
    assert_eq!(reply.code, 0);
    assert_eq!(
        &reply.body[..],
        blake3::hash(&data).as_bytes(),
        "stored data differs"
    );
}

#[test]
fn fetch_and_store_of_100_mib_arrive_whole_in_the_clear() {
    fetch_and_store_100_mib(Auth::Anonymous);
}

#[test]
fn fetch_and_store_of_100_mib_arrive_whole_encrypted() {
    fetch_and_store_100_mib(Auth::Encrypted(credentials(5)));
}

#[test]
fn ethernet_sized_datagrams_travel_by_udp_gso_and_gro() {
    const DATAGRAM: usize = 1472;
    let server = start_server_with(&["--datagram-bytes", &DATAGRAM.to_string()]);
    let client = client_with(Config {
        loopback_datagram_bytes: DATAGRAM,
        ..Config::default()
    });
    for auth in [Auth::Anonymous, Auth::Encrypted(credentials(6))] {
        fetch_and_store(&server, &client, auth, 16 << 20);
    }
    let offload = client.offload();
    assert!(offload.gso && offload.gro, "{offload:?}");
    // Stores leave in GSO runs; fetches arrive coalesced by GRO, which
    // loopback does only for what the server sent as GSO runs.
    assert!(offload.gso_sends > 0, "{offload:?}");
    assert!(offload.gro_receives > 0, "{offload:?}");
    // Each way, two transfers of 16 MiB in datagrams of 1472 bytes at most.
    let least = (32 << 20) / DATAGRAM as u64;
    assert!(offload.datagrams_sent >= least, "{offload:?}");
    assert!(offload.datagrams_received >= least, "{offload:?}");
    assert!(
        offload.send_calls < offload.datagrams_sent / 4,
        "{offload:?}"
    );
}

#[test]
fn a_dead_server_fails_calls_with_a_timeout() {
    let mut server = start_server();
    let config = Config {
        peer_timeout: Duration::from_secs(1),
        keepalive: Duration::from_millis(200),
        ..Config::default()
    };
    let client = ClientThread::spawn("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let conn = client
        .connect_blocking(server.addr, Auth::Anonymous)
        .unwrap();
    client
        .call_blocking(conn, 7, NULL, Bytes::new(), None)
        .unwrap();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let started = std::time::Instant::now();
    let err = client
        .call_blocking(conn, 7, NULL, Bytes::new(), None)
        .unwrap_err();
    assert_eq!(err, coda_rpc2::Error::Timeout);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// How many IPv4 UDP sockets on this machine are bound to `port`
/// (/proc/net/udp), for failure messages.
fn udp_sockets_bound_to(port: u16) -> usize {
    let suffix = format!(":{port:04X}");
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|a| a.ends_with(&suffix))
        })
        .count()
}

/// Hundreds of client endpoints, one after another, each binding (mostly
/// encrypted) to the same server, making one call and going away without
/// unbinding, so the server still holds every earlier connection. Some
/// take the port of a client gone before them, as the OS does when it
/// hands a port out again: the server then meets a new connection from an
/// address it already knows.
#[test]
fn hundreds_of_short_lived_client_endpoints_each_bind_and_call() {
    const CLIENTS: u32 = 300;
    let server = start_server();
    let started = Instant::now();
    // Local port -> the clients that had it.
    let mut ports: HashMap<u16, Vec<u32>> = HashMap::new();
    let mut local_ports = Vec::new();
    for i in 0..CLIENTS {
        let (name, auth) = match i % 5 {
            3 => ("authenticated", Auth::Authenticated(credentials(i))),
            4 => ("anonymous", Auth::Anonymous),
            _ => ("encrypted", Auth::Encrypted(credentials(i))),
        };
        // Every seventh takes the port of the client three before it, so
        // binds of every level meet a reused port.
        let port = if i % 7 == 6 {
            local_ports[i as usize - 3]
        } else {
            0
        };
        let client = ClientThread::spawn(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Config {
                peer_timeout: Duration::from_secs(10),
                ..Config::default()
            },
        )
        .unwrap_or_else(|e| panic!("client {i} on port {port}: {e}"));
        let local = client.local_addr();
        local_ports.push(local.port());
        let earlier = ports.entry(local.port()).or_default();
        earlier.push(i);
        let earlier = earlier[..earlier.len() - 1].to_vec();
        let t0 = Instant::now();
        let context = |what: &str, e: coda_rpc2::Error| {
            format!(
                "client {i} ({name}, {local}, port earlier used by clients {earlier:?}, \
                 {} sockets now bound to it): {what} failed after {:?} ({:?} into the \
                 test): {e}; client stats {:?}",
                udp_sockets_bound_to(local.port()),
                t0.elapsed(),
                started.elapsed(),
                client.stats()
            )
        };
        let conn = client
            .connect_blocking(server.addr, auth)
            .unwrap_or_else(|e| panic!("{}", context("bind", e)));
        let body = Bytes::from(format!("client {i} from {local}"));
        let reply = client
            .call_blocking(conn, 7, ECHO, body.clone(), None)
            .unwrap_or_else(|e| panic!("{}", context("call", e)));
        assert_eq!(reply.body, body, "client {i}");
        let stats = client.stats();
        assert_eq!(stats.calls_failed, 0, "client {i}: {stats:?}");
        assert_eq!(stats.drops_total(), 0, "client {i}: {stats:?}");
    }
    let reused = ports.values().filter(|c| c.len() > 1).count();
    eprintln!(
        "{CLIENTS} client endpoints in {:?}; {reused} local ports served more than one",
        started.elapsed()
    );
}

/// A client endpoint that goes away closes its socket: its port is free
/// again. A socket left open keeps the port, and since glommio binds with
/// SO_REUSEPORT the OS may give that port to a later endpoint, which then
/// shares it with the dead socket and loses the datagrams steered there.
#[test]
fn a_dropped_client_endpoint_closes_its_socket() {
    let server = start_server();
    for auth in [Auth::Anonymous, Auth::Encrypted(credentials(8))] {
        let client = client();
        let port = client.local_addr().port();
        let conn = client.connect_blocking(server.addr, auth).unwrap();
        client
            .call_blocking(conn, 7, ECHO, Bytes::from_static(b"bye"), None)
            .unwrap();
        drop(client);
        let since = Instant::now();
        // A plain bind (no SO_REUSEPORT) succeeds only on a free port.
        while std::net::UdpSocket::bind(("127.0.0.1", port)).is_err() {
            assert!(
                since.elapsed() < Duration::from_secs(2),
                "port {port} still bound {:?} after its client endpoint was dropped \
                 ({} sockets bound to it)",
                since.elapsed(),
                udp_sockets_bound_to(port)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
