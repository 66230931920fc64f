//! The glommio transport: one UDP socket and one [`Endpoint`] per executor,
//! driven by io_uring. [`UdpEndpoint`] is the async API for code on that
//! executor (a server core); [`ClientThread`] runs one on its own thread for
//! processes whose other threads submit calls (a client).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_channel::{Receiver, Sender};
use bytes::Bytes;
use futures_lite::future;
use glommio::net::UdpSocket;

use crate::endpoint::{Auth, CallId, ConnId, Endpoint, Error, Event, Identity, IncomingId, Reply};
use crate::endpoint::{SftpOutcome, SideEffect};
use crate::mmsg::{enable_offload, Inbox, Offload, Outbox, BATCH};
use crate::sftp::{Sink, Source};
use crate::stats::Stats;
use crate::time::Time;
use crate::Config;

/// Socket buffers big enough for a full SFTP window of large datagrams.
const SOCKET_BUFFER_BYTES: usize = 32 << 20;

/// The clock the core sees: UNIX microseconds that never go backwards.
#[derive(Clone, Copy)]
struct Clock {
    origin: Instant,
    unix_origin_us: u64,
}

impl Clock {
    fn new() -> Clock {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Clock {
            origin: Instant::now(),
            unix_origin_us: unix.as_micros() as u64,
        }
    }

    fn now(&self) -> Time {
        Time(self.unix_origin_us + self.origin.elapsed().as_micros() as u64)
    }

    fn instant(&self, t: Time) -> Instant {
        self.origin + Duration::from_micros(t.0.saturating_sub(self.unix_origin_us))
    }
}

/// A call received by this endpoint, to be answered with [`UdpEndpoint::reply`].
#[derive(Debug)]
pub struct Request {
    pub id: IncomingId,
    pub identity: Identity,
    pub subsystem: u16,
    pub opcode: u16,
    pub body: Bytes,
}

/// What arrives besides replies to our own calls.
#[derive(Debug)]
pub enum Incoming {
    Request(Request),
    Accepted {
        conn: ConnId,
        peer: SocketAddr,
        identity: Identity,
    },
    Lost {
        conn: ConnId,
        error: Error,
    },
}

struct Shared {
    endpoint: Endpoint,
    clock: Clock,
    calls: HashMap<CallId, Sender<Result<Reply, Error>>>,
    connects: HashMap<ConnId, Sender<Result<ConnId, Error>>>,
    transfers: HashMap<IncomingId, Sender<Result<SftpOutcome, Error>>>,
    incoming: Sender<Incoming>,
    outbox: Outbox,
    /// The deadline the timer loop sleeps until (`None`: no timer).
    armed: Option<Time>,
}

/// An endpoint on a glommio executor. Cheap to clone; all clones share it.
#[derive(Clone)]
pub struct UdpEndpoint {
    shared: Rc<RefCell<Shared>>,
    socket: Rc<UdpSocket>,
    kick: Sender<()>,
    incoming: Receiver<Incoming>,
    drivers: Rc<RefCell<Vec<glommio::Task<()>>>>,
}

impl UdpEndpoint {
    /// Binds `addr` and starts the driver tasks on the current executor.
    pub fn bind(addr: SocketAddr, mut config: Config) -> io::Result<UdpEndpoint> {
        if config.rng_seed == 0 {
            config.rng_seed = os_random_u64()?;
        }
        // A server's port is its own: a second server on it fails
        // (EADDRINUSE) instead of silently sharing it under SO_REUSEPORT,
        // which glommio's bind sets.
        let socket = if config.accept_binds {
            bind_exclusive(addr)?
        } else {
            UdpSocket::bind(addr)?
        };
        set_socket_buffers(&socket);
        let offload = enable_offload(socket.as_raw_fd());
        let (incoming_tx, incoming) = async_channel::unbounded();
        let (kick, kicked) = async_channel::bounded(1);
        let shared = Rc::new(RefCell::new(Shared {
            endpoint: Endpoint::new(config),
            clock: Clock::new(),
            calls: HashMap::new(),
            connects: HashMap::new(),
            transfers: HashMap::new(),
            incoming: incoming_tx,
            outbox: Outbox::new(offload),
            armed: None,
        }));
        let ep = UdpEndpoint {
            shared,
            socket: Rc::new(socket),
            kick,
            incoming,
            drivers: Default::default(),
        };
        let drivers = vec![
            glommio::spawn_local(ep.clone().receive_loop()),
            glommio::spawn_local(ep.clone().timer_loop(kicked)),
        ];
        *ep.drivers.borrow_mut() = drivers;
        Ok(ep)
    }

    /// Closes every connection (telling bound peers), then stops the driver
    /// tasks so the socket closes once the last clone goes: a socket left
    /// open would keep its port, and glommio binds with SO_REUSEPORT, so a
    /// later endpoint could share the port and lose datagrams to it.
    pub async fn shutdown(&self) {
        {
            let mut s = self.shared.borrow_mut();
            let now = s.clock.now();
            s.endpoint.close_all(now);
        }
        self.flush().await;
        let drivers = std::mem::take(&mut *self.drivers.borrow_mut());
        for t in drivers {
            t.cancel().await;
        }
        let mut s = self.shared.borrow_mut();
        s.calls.clear();
        s.connects.clear();
        s.transfers.clear();
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr().map_err(Into::into)
    }

    pub fn stats(&self) -> Stats {
        self.shared.borrow().endpoint.stats()
    }

    /// How batching and UDP GSO/GRO are doing.
    pub fn offload(&self) -> Offload {
        self.shared.borrow().outbox.offload
    }

    pub fn conn_stats(&self, conn: ConnId) -> Option<Stats> {
        self.shared.borrow().endpoint.conn_stats(conn)
    }

    /// Binds a connection to `peer`.
    pub async fn connect(&self, peer: SocketAddr, auth: Auth) -> Result<ConnId, Error> {
        let (tx, rx) = async_channel::bounded(1);
        {
            let mut s = self.shared.borrow_mut();
            let now = s.clock.now();
            let conn = s.endpoint.connect(now, peer, auth);
            s.connects.insert(conn, tx);
        }
        self.settle(rx).await
    }

    /// Makes a call and waits for its reply.
    pub async fn call(
        &self,
        conn: ConnId,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
        side_effect: Option<SideEffect>,
    ) -> Result<Reply, Error> {
        let (tx, rx) = async_channel::bounded(1);
        {
            let mut s = self.shared.borrow_mut();
            let now = s.clock.now();
            let call = s
                .endpoint
                .call(now, conn, subsystem, opcode, body, side_effect)?;
            s.calls.insert(call, tx);
        }
        self.settle(rx).await
    }

    /// MultiRPC: the same call to every connection at once; results in order.
    pub async fn multi_call(
        &self,
        conns: &[ConnId],
        subsystem: u16,
        opcode: u16,
        body: Bytes,
    ) -> Vec<Result<Reply, Error>> {
        let mut waits = Vec::new();
        {
            let mut s = self.shared.borrow_mut();
            let now = s.clock.now();
            for started in s.endpoint.multi_call(now, conns, subsystem, opcode, body) {
                let (tx, rx) = async_channel::bounded(1);
                match started {
                    Ok(call) => {
                        s.calls.insert(call, tx);
                    }
                    Err(e) => {
                        let _ = tx.try_send(Err(e));
                    }
                }
                waits.push(rx);
            }
        }
        self.pump().await;
        let mut results = Vec::with_capacity(waits.len());
        for rx in waits {
            results.push(rx.recv().await.unwrap_or(Err(Error::Closed)));
        }
        results
    }

    /// The next request, bind or loss of a connection.
    pub async fn next_incoming(&self) -> Incoming {
        self.incoming
            .recv()
            .await
            .expect("the endpoint holds a sender")
    }

    /// Answers a request.
    pub async fn reply(&self, id: IncomingId, code: u16, body: Bytes) -> Result<(), Error> {
        {
            let mut s = self.shared.borrow_mut();
            let now = s.clock.now();
            s.endpoint.reply(now, id, code, body)?;
        }
        self.pump().await;
        Ok(())
    }

    /// Pushes data to the caller of `id` (a fetch) and waits until it is acknowledged.
    pub async fn sftp_send(
        &self,
        id: IncomingId,
        source: Source,
        offset: u64,
    ) -> Result<SftpOutcome, Error> {
        let rx = self.start_transfer(id, |ep, now| ep.sftp_send(now, id, source, offset))?;
        self.settle(rx).await
    }

    /// Pulls the caller's data into `sink` (a store) and waits until all arrived.
    pub async fn sftp_receive(
        &self,
        id: IncomingId,
        sink: Sink,
        offset: u64,
    ) -> Result<SftpOutcome, Error> {
        let rx = self.start_transfer(id, |ep, now| ep.sftp_receive(now, id, sink, offset))?;
        self.settle(rx).await
    }

    fn start_transfer(
        &self,
        id: IncomingId,
        start: impl FnOnce(&mut Endpoint, Time) -> Result<(), Error>,
    ) -> Result<Receiver<Result<SftpOutcome, Error>>, Error> {
        let (tx, rx) = async_channel::bounded(1);
        let mut s = self.shared.borrow_mut();
        let now = s.clock.now();
        start(&mut s.endpoint, now)?;
        s.transfers.insert(id, tx);
        Ok(rx)
    }

    pub async fn close(&self, conn: ConnId) {
        {
            let mut s = self.shared.borrow_mut();
            let now = s.clock.now();
            s.endpoint.close(now, conn);
        }
        self.pump().await;
    }

    /// Sends what a command queued, then waits for its outcome.
    async fn settle<T>(&self, rx: Receiver<Result<T, Error>>) -> Result<T, Error> {
        self.pump().await;
        rx.recv().await.unwrap_or(Err(Error::Closed))
    }

    /// Sends what the core has queued, hands out its events, and wakes the
    /// timer loop if the next deadline moved before the one it sleeps to.
    /// Only then: re-arming cancels an io_uring timeout, and doing it on
    /// every call was a tenth of a busy server's CPU.
    async fn pump(&self) {
        self.flush().await;
        let earlier = {
            let mut s = self.shared.borrow_mut();
            let next = s.endpoint.poll_timeout();
            match (next, s.armed) {
                (Some(n), Some(a)) => n < a,
                (Some(_), None) => true,
                (None, _) => false,
            }
        };
        if earlier {
            let _ = self.kick.try_send(());
        }
    }

    /// Moves what the core has queued to the socket in batches. When the
    /// socket buffer is full, one run waits on io_uring for room.
    async fn flush(&self) {
        let fd = self.socket.as_raw_fd();
        loop {
            let stuck = {
                let mut guard = self.shared.borrow_mut();
                let s = &mut *guard;
                let now = s.clock.now();
                loop {
                    while !s.outbox.is_full() {
                        let mut buf = s.outbox.buffer();
                        match s.endpoint.poll_transmit(now, &mut buf) {
                            Some(dest) => s.outbox.push(dest, buf),
                            None => {
                                s.outbox.recycle(buf);
                                break;
                            }
                        }
                    }
                    if s.outbox.is_empty() {
                        dispatch(s);
                        return;
                    }
                    if s.outbox.send(fd).is_err() {
                        break s.outbox.pop_front().expect("a run is waiting");
                    }
                }
            };
            for d in stuck.datagrams() {
                // A failed send is a lost datagram: retransmission covers it.
                let _ = self.socket.send_to(d, stuck.dest).await;
            }
            let mut s = self.shared.borrow_mut();
            s.outbox.count_sent(&stuck);
            s.outbox.recycle(stuck.data);
        }
    }

    async fn receive_loop(self) {
        let fd = self.socket.as_raw_fd();
        let mut inbox = Inbox::default();
        let mut probe = [0u8; 1];
        loop {
            let received = {
                let mut guard = self.shared.borrow_mut();
                let s = &mut *guard;
                let now = s.clock.now();
                let endpoint = &mut s.endpoint;
                inbox.receive(fd, &mut s.outbox.offload, |from, datagram| {
                    endpoint.handle(now, from, datagram)
                })
            };
            let drained = match received {
                Ok(n) => {
                    self.pump().await;
                    n < BATCH
                }
                Err(e) => e.kind() == io::ErrorKind::WouldBlock,
                // Other errors are ICMP reports; the peer's silence is what
                // the core acts on.
            };
            if drained {
                // io_uring tells when the next datagram arrives.
                let _ = self.socket.peek_from(&mut probe).await;
            }
            glommio::yield_if_needed().await;
        }
    }

    async fn timer_loop(self, kicked: Receiver<()>) {
        loop {
            let deadline = {
                let mut s = self.shared.borrow_mut();
                s.armed = s.endpoint.poll_timeout();
                s.armed.map(|t| s.clock.instant(t))
            };
            let wait = async {
                match deadline {
                    Some(at) => {
                        glommio::timer::sleep(at.saturating_duration_since(Instant::now())).await
                    }
                    None => future::pending::<()>().await,
                }
            };
            future::or(wait, async {
                let _ = kicked.recv().await;
            })
            .await;
            {
                let mut s = self.shared.borrow_mut();
                let now = s.clock.now();
                s.endpoint.handle_timeout(now);
            }
            // This loop re-reads the deadline itself: no kick needed.
            self.flush().await;
        }
    }
}

fn dispatch(s: &mut Shared) {
    while let Some(event) = s.endpoint.poll_event() {
        match event {
            Event::Reply { call, result } => {
                if let Some(tx) = s.calls.remove(&call) {
                    let _ = tx.try_send(result);
                }
            }
            Event::Connected { conn } => {
                if let Some(tx) = s.connects.remove(&conn) {
                    let _ = tx.try_send(Ok(conn));
                }
            }
            Event::ConnectFailed { conn, error } => {
                if let Some(tx) = s.connects.remove(&conn) {
                    let _ = tx.try_send(Err(error));
                }
            }
            Event::SftpDone { id, result } => {
                if let Some(tx) = s.transfers.remove(&id) {
                    let _ = tx.try_send(result);
                }
            }
            Event::Request {
                id,
                identity,
                subsystem,
                opcode,
                body,
            } => {
                let request = Request {
                    id,
                    identity,
                    subsystem,
                    opcode,
                    body,
                };
                let _ = s.incoming.try_send(Incoming::Request(request));
            }
            Event::Accepted {
                conn,
                peer,
                identity,
            } => {
                let _ = s.incoming.try_send(Incoming::Accepted {
                    conn,
                    peer,
                    identity,
                });
            }
            Event::Lost { conn, error } => {
                let _ = s.incoming.try_send(Incoming::Lost { conn, error });
            }
        }
    }
}

fn set_socket_buffers(socket: &UdpSocket) {
    let fd = socket.as_raw_fd();
    let size = SOCKET_BUFFER_BYTES as libc::c_int;
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        // FORCE passes the rmem_max cap when privileged; otherwise ask plainly.
        for opt in [force, plain] {
            // SAFETY: fd is a live socket and `size` outlives the call.
            let rc = unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    opt,
                    (&size as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if rc == 0 {
                break;
            }
        }
    }
}

/// Seeds the core's RNG (connection ids, bind nonces) from the OS.
/// Binds without SO_REUSEPORT.
fn bind_exclusive(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = std::net::UdpSocket::bind(addr)?;
    // SAFETY: the descriptor is a bound UDP socket whose ownership moves
    // to glommio; nothing else uses or closes it.
    Ok(unsafe { UdpSocket::from_raw_fd(socket.into_raw_fd()) })
}

pub fn os_random_u64() -> io::Result<u64> {
    let mut b = [0u8; 8];
    getrandom_fill(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// Fresh random bytes from the OS (token nonces, session keys).
pub fn getrandom_fill(buf: &mut [u8]) -> io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: the pointer and length describe the unfilled part of `buf`.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(())
}

enum Command {
    Connect {
        peer: SocketAddr,
        auth: Auth,
        done: Sender<Result<ConnId, Error>>,
    },
    Call {
        conn: ConnId,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
        side_effect: Option<SideEffect>,
        done: Sender<Result<Reply, Error>>,
    },
    Each {
        calls: Vec<(ConnId, Option<SideEffect>)>,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
        done: std::sync::mpsc::Sender<(usize, Result<Reply, Error>)>,
    },
    Multi {
        conns: Vec<ConnId>,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
        done: Sender<Vec<Result<Reply, Error>>>,
    },
    Reply {
        id: IncomingId,
        code: u16,
        body: Bytes,
    },
    Stats {
        done: Sender<Stats>,
    },
    Offload {
        done: Sender<Offload>,
    },
}

/// An endpoint on its own I/O thread; any thread may submit calls, blocking
/// or async. Requests from peers (callback breaks) arrive on `requests()`.
pub struct ClientThread {
    commands: Sender<Command>,
    requests: Receiver<Request>,
    local_addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ClientThread {
    pub fn spawn(addr: SocketAddr, config: Config) -> io::Result<ClientThread> {
        let (commands, command_rx) = async_channel::unbounded::<Command>();
        let (requests_tx, requests) = async_channel::unbounded();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("rpc2-io".into())
            .spawn(move || {
                let ex = glommio::LocalExecutorBuilder::default()
                    .make()
                    .expect("glommio executor");
                ex.run(async move {
                    let ep = match UdpEndpoint::bind(addr, config) {
                        Ok(ep) => ep,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = ready_tx.send(ep.local_addr());
                    let forward = ep.clone();
                    let forward = glommio::spawn_local(async move {
                        loop {
                            if let Incoming::Request(r) = forward.next_incoming().await {
                                if requests_tx.send(r).await.is_err() {
                                    return;
                                }
                            }
                        }
                    });
                    while let Ok(cmd) = command_rx.recv().await {
                        let ep = ep.clone();
                        glommio::spawn_local(async move { run_command(&ep, cmd).await }).detach();
                    }
                    forward.cancel().await;
                    ep.shutdown().await;
                });
            })?;
        let local_addr = ready_rx
            .recv()
            .map_err(|_| io::Error::other("rpc2 I/O thread died"))??;
        Ok(ClientThread {
            commands,
            requests,
            local_addr,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    fn submit<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Receiver<T> {
        let (tx, rx) = async_channel::bounded(1);
        // The I/O thread lives as long as `self`, so the send succeeds.
        let _ = self.commands.send_blocking(make(tx));
        rx
    }

    pub async fn connect(&self, peer: SocketAddr, auth: Auth) -> Result<ConnId, Error> {
        let rx = self.submit(|done| Command::Connect { peer, auth, done });
        rx.recv().await.unwrap_or(Err(Error::Closed))
    }

    pub fn connect_blocking(&self, peer: SocketAddr, auth: Auth) -> Result<ConnId, Error> {
        future::block_on(self.connect(peer, auth))
    }

    pub async fn call(
        &self,
        conn: ConnId,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
        side_effect: Option<SideEffect>,
    ) -> Result<Reply, Error> {
        let rx = self.submit(|done| Command::Call {
            conn,
            subsystem,
            opcode,
            body,
            side_effect,
            done,
        });
        rx.recv().await.unwrap_or(Err(Error::Closed))
    }

    pub fn call_blocking(
        &self,
        conn: ConnId,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
        side_effect: Option<SideEffect>,
    ) -> Result<Reply, Error> {
        future::block_on(self.call(conn, subsystem, opcode, body, side_effect))
    }

    pub fn multi_call_blocking(
        &self,
        conns: &[ConnId],
        subsystem: u16,
        opcode: u16,
        body: Bytes,
    ) -> Vec<Result<Reply, Error>> {
        let conns = conns.to_vec();
        let rx = self.submit(|done| Command::Multi {
            conns,
            subsystem,
            opcode,
            body,
            done,
        });
        rx.recv_blocking().unwrap_or_default()
    }

    /// The same call on each connection, each with its own side effect,
    /// all sent at once; each result goes to `done` with its index as it
    /// arrives, so the caller decides how long to wait for the slow ones.
    pub fn call_each(
        &self,
        calls: Vec<(ConnId, Option<SideEffect>)>,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
        done: std::sync::mpsc::Sender<(usize, Result<Reply, Error>)>,
    ) {
        let _ = self.commands.send_blocking(Command::Each {
            calls,
            subsystem,
            opcode,
            body,
            done,
        });
    }

    /// Requests peers made of this endpoint (callback breaks).
    pub fn requests(&self) -> &Receiver<Request> {
        &self.requests
    }

    pub fn reply(&self, id: IncomingId, code: u16, body: Bytes) {
        let _ = self
            .commands
            .send_blocking(Command::Reply { id, code, body });
    }

    pub fn stats(&self) -> Stats {
        self.submit(|done| Command::Stats { done })
            .recv_blocking()
            .unwrap_or_default()
    }

    pub fn offload(&self) -> Offload {
        self.submit(|done| Command::Offload { done })
            .recv_blocking()
            .unwrap_or_default()
    }
}

impl Drop for ClientThread {
    fn drop(&mut self) {
        self.commands.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn run_command(ep: &UdpEndpoint, cmd: Command) {
    match cmd {
        Command::Connect { peer, auth, done } => {
            let _ = done.send(ep.connect(peer, auth).await).await;
        }
        Command::Call {
            conn,
            subsystem,
            opcode,
            body,
            side_effect,
            done,
        } => {
            let _ = done
                .send(ep.call(conn, subsystem, opcode, body, side_effect).await)
                .await;
        }
        Command::Each {
            calls,
            subsystem,
            opcode,
            body,
            done,
        } => {
            for (i, (conn, side_effect)) in calls.into_iter().enumerate() {
                let (ep, body, done) = (ep.clone(), body.clone(), done.clone());
                glommio::spawn_local(async move {
                    let r = ep.call(conn, subsystem, opcode, body, side_effect).await;
                    let _ = done.send((i, r));
                })
                .detach();
            }
        }
        Command::Multi {
            conns,
            subsystem,
            opcode,
            body,
            done,
        } => {
            let _ = done
                .send(ep.multi_call(&conns, subsystem, opcode, body).await)
                .await;
        }
        Command::Reply { id, code, body } => {
            let _ = ep.reply(id, code, body).await;
        }
        Command::Stats { done } => {
            let _ = done.send(ep.stats()).await;
        }
        Command::Offload { done } => {
            let _ = done.send(ep.offload()).await;
        }
    }
}
