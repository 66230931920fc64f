//! rpc2-testd: a small RPC2 server for tests and benchmarks. It answers
//! NULL (empty reply), ECHO (the body back), FETCH (pushes `len` bytes of a
//! seeded pattern by SFTP) and STORE (pulls the caller's data into a scratch
//! file and replies with its BLAKE3 hash), on one glommio core.
//!
//! usage: rpc2-testd [--listen ADDR] [--cell-key HEX64] [--datagram-bytes N]
//! (`--datagram-bytes` sets the size towards loopback peers, to exercise
//! Ethernet-sized datagrams and UDP GSO on 127.0.0.1.)
//! Prints `rpc2-testd ready on ADDR` once serving.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

#[path = "testd/pattern.rs"]
mod pattern;

use bytes::Bytes;
use coda_rpc2::udp::{Incoming, UdpEndpoint};
use coda_rpc2::{CellKey, Config, Sink, Source};
use pattern::pattern;

pub const NULL: u16 = 1;
pub const ECHO: u16 = 2;
pub const FETCH: u16 = 3;
pub const STORE: u16 = 4;

fn main() {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut cell_key = None;
    let mut config = Config::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                listen = args
                    .next()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--cell-key" => cell_key = Some(parse_key(&args.next().unwrap_or_else(|| usage()))),
            "--datagram-bytes" => {
                config.loopback_datagram_bytes = args
                    .next()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    let config = Config {
        accept_binds: true,
        cell_key: cell_key.map(CellKey::from_bytes),
        ..config
    };
    let ex = glommio::LocalExecutorBuilder::default()
        .make()
        .expect("glommio executor");
    ex.run(async move {
        // Patterns are made once, so a benchmark measures the transfer alone.
        let patterns: Rc<RefCell<HashMap<(u64, u64), Bytes>>> = Default::default();
        let ep = UdpEndpoint::bind(listen, config).expect("bind");
        println!("rpc2-testd ready on {}", ep.local_addr().unwrap());
        loop {
            let Incoming::Request(req) = ep.next_incoming().await else {
                continue;
            };
            let ep = ep.clone();
            let patterns = patterns.clone();
            glommio::spawn_local(async move {
                let (code, body) = match req.opcode {
                    NULL => (0, Bytes::new()),
                    ECHO => (0, req.body),
                    FETCH if req.body.len() == 16 => {
                        let len = u64::from_le_bytes(req.body[..8].try_into().unwrap());
                        let seed = u64::from_le_bytes(req.body[8..].try_into().unwrap());
                        let data = patterns
                            .borrow_mut()
                            .entry((seed, len))
                            .or_insert_with(|| Bytes::from(pattern(seed, len as usize)))
                            .clone();
                        match ep.sftp_send(req.id, Source::Memory(data), 0).await {
                            Ok(_) => (0, Bytes::new()),
                            Err(_) => (1, Bytes::new()),
                        }
                    }
                    STORE => {
                        let file = tempfile::tempfile().expect("scratch file");
                        match ep.sftp_receive(req.id, Sink::File(file), 0).await {
                            Ok(done) => {
                                let Some(Sink::File(file)) = done.sink else {
                                    unreachable!()
                                };
                                (0, Bytes::copy_from_slice(hash_file(&file).as_bytes()))
                            }
                            Err(_) => (1, Bytes::new()),
                        }
                    }
                    _ => (2, Bytes::new()),
                };
                let _ = ep.reply(req.id, code, body).await;
            })
            .detach();
        }
    });
}

fn hash_file(file: &std::fs::File) -> blake3::Hash {
    let mut hasher = blake3::Hasher::new();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    std::io::copy(&mut reader, &mut hasher).expect("read scratch file");
    hasher.finalize()
}

fn parse_key(hex: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    if hex.len() != 64 {
        usage();
    }
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or_else(|_| usage());
    }
    key
}

fn usage() -> ! {
    eprintln!("usage: rpc2-testd [--listen ADDR] [--cell-key HEX64]");
    std::process::exit(2);
}
