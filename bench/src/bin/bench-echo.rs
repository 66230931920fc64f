//! bench-echo: the baselines the RPC2 benchmarks run beside, as a separate
//! process like rpc2-testd.
//!
//! - `udp`: a raw UDP echo (each datagram sent straight back).
//! - `tcp SIZE`: a tokio TCP request/response echo of SIZE-byte messages.
//! - `source`: on each TCP connection, reads a u64 length and writes that
//!   many bytes from memory (the bulk-copy baseline).
//!
//! Prints `bench-echo ready on ADDR`.

use std::net::{SocketAddr, UdpSocket};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("udp") => udp_echo(),
        Some("tcp") => {
            let size: usize = args.get(1).and_then(|s| s.parse().ok()).expect("tcp SIZE");
            tcp(move |stream| tcp_echo(stream, size));
        }
        Some("source") => tcp(source),
        _ => {
            eprintln!("usage: bench-echo udp | tcp SIZE | source");
            std::process::exit(2);
        }
    }
}

fn ready(addr: SocketAddr) {
    println!("bench-echo ready on {addr}");
}

fn udp_echo() {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    ready(socket.local_addr().unwrap());
    let mut buf = vec![0u8; 65_536];
    loop {
        let (len, from) = socket.recv_from(&mut buf).unwrap();
        let _ = socket.send_to(&buf[..len], from);
    }
}

fn tcp<F, Fut>(serve: F)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Copy + 'static,
    Fut: std::future::Future<Output = std::io::Result<()>> + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        ready(listener.local_addr().unwrap());
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            stream.set_nodelay(true).unwrap();
            tokio::task::spawn_local(async move {
                let _ = serve(stream).await;
            });
        }
    });
}

async fn tcp_echo(mut stream: tokio::net::TcpStream, size: usize) -> std::io::Result<()> {
    let mut buf = vec![0u8; size];
    loop {
        stream.read_exact(&mut buf).await?;
        stream.write_all(&buf).await?;
    }
}

async fn source(mut stream: tokio::net::TcpStream) -> std::io::Result<()> {
    let len = stream.read_u64_le().await? as usize;
    let data = vec![0x5au8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(data.len());
        stream.write_all(&data[..n]).await?;
        left -= n;
    }
    stream.shutdown().await
}
