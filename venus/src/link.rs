//! Venus's side of the wire: one RPC2 endpoint, a connection per server
//! and user (a user with a token binds encrypted, everyone else shares an
//! anonymous one), and the callback breaks servers send back.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use coda_proto::vice::{self, NewConnect};
use coda_proto::Errno;
use coda_rpc2::codec::{self, Decode, Encode};
use coda_rpc2::endpoint::{Auth, ConnId, Reply, SideEffect};
use coda_rpc2::udp::{ClientThread, Request};
use coda_rpc2::{Config, Credentials};

/// Who a call is made for: a user with a token, or anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Principal {
    Anyone,
    User(i32),
}

/// A call that did not get an answer code: the server is unreachable or
/// forgot the connection.
#[derive(Debug, thiserror::Error)]
#[error("{addr}: {error}")]
pub struct LinkError {
    pub addr: SocketAddr,
    pub error: coda_rpc2::Error,
}

pub struct Link {
    ct: ClientThread,
    /// This client's host id (the cache's), and this start's incarnation:
    /// told to each server on every new connection.
    host: AtomicU64,
    incarnation: u64,
    /// Shared with the threads that wait for answers come after the grace.
    bound: Arc<Bound>,
}

/// The connections bound, by server and user.
#[derive(Default)]
struct Bound {
    conns: Mutex<HashMap<(SocketAddr, Principal), ConnId>>,
    /// Connections lost (timed out, or forgotten by a restarted server):
    /// each loss means the promises made on it are gone.
    lost: AtomicU64,
}

/// What a call returned.
pub type Answer = Result<Reply, LinkError>;

/// How the core reaches servers: RPC2 over UDP ([`Link`]), or a simulated
/// network, so tests replay failures from a seed.
pub trait Transport: Send + Sync {
    /// Calls the server at `addr` for `who` (binding first if needed).
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        addr: SocketAddr,
        who: Principal,
        creds: Option<&Credentials>,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
        side_effect: Option<SideEffect>,
    ) -> Answer;
    /// [`multi_call`] done by the transport itself, if it can; else the
    /// side effects are handed back.
    #[allow(clippy::too_many_arguments)]
    fn call_each(
        &self,
        _targets: &[SocketAddr],
        _who: Principal,
        _creds: Option<&Credentials>,
        _subsystem: u16,
        _opcode: u16,
        _body: &Bytes,
        effects: Vec<Option<SideEffect>>,
        _grace: Duration,
    ) -> Result<Vec<Option<Answer>>, Vec<Option<SideEffect>>> {
        Err(effects)
    }
    /// Sets the host id servers know this client by.
    fn set_host(&self, host: u64);
    /// How many connections were lost so far (each loss means the
    /// promises made on it are gone).
    fn rebinds(&self) -> u64;
    /// Drops every connection of `who` (its token changed).
    fn forget_principal(&self, who: Principal);
}

/// Calls `targets` at once, each with its own side effect; each answer,
/// or `None` for one that had not answered `grace` after the first did.
/// Calls the transport cannot make together run on threads of their own,
/// left to finish (or time out) after the grace.
#[allow(clippy::too_many_arguments)]
pub fn multi_call(
    link: &Arc<dyn Transport>,
    targets: &[SocketAddr],
    who: Principal,
    creds: Option<&Credentials>,
    subsystem: u16,
    opcode: u16,
    body: &Bytes,
    effects: Vec<Option<SideEffect>>,
    grace: Duration,
) -> Vec<Option<Answer>> {
    let effects = match link.call_each(targets, who, creds, subsystem, opcode, body, effects, grace)
    {
        Ok(answers) => return answers,
        Err(effects) => effects,
    };
    let (tx, rx) = channel();
    for (i, (&addr, se)) in targets.iter().zip(effects).enumerate() {
        let (link, tx, creds, body) = (link.clone(), tx.clone(), creds.cloned(), body.clone());
        std::thread::spawn(move || {
            let a = link.call(addr, who, creds.as_ref(), subsystem, opcode, body, se);
            let _ = tx.send((i, a));
        });
    }
    drop(tx);
    gather(&rx, targets.len(), grace)
}

/// Answers as they come on `rx`, by index, until all `n` are in or
/// `grace` has passed since the first success.
fn gather<E>(
    rx: &Receiver<(usize, Result<Reply, E>)>,
    n: usize,
    grace: Duration,
) -> Vec<Option<Result<Reply, E>>> {
    let mut answers: Vec<Option<Result<Reply, E>>> = (0..n).map(|_| None).collect();
    let mut deadline: Option<Instant> = None;
    for _ in 0..n {
        let got = match deadline {
            None => rx.recv().ok(),
            Some(d) => rx
                .recv_timeout(d.saturating_duration_since(Instant::now()))
                .ok(),
        };
        let Some((i, a)) = got else {
            break;
        };
        if a.as_ref().is_ok_and(|r| r.code == 0) && deadline.is_none() {
            deadline = Some(Instant::now() + grace);
        }
        answers[i] = Some(a);
    }
    answers
}

/// Calls and decodes the reply body; a non-zero code is the error.
pub fn call_decode<T: Decode>(
    t: &dyn Transport,
    addr: SocketAddr,
    who: Principal,
    creds: Option<&Credentials>,
    subsystem: u16,
    opcode: u16,
    req: &impl Encode,
) -> Result<T, Errno> {
    let r = t
        .call(
            addr,
            who,
            creds,
            subsystem,
            opcode,
            codec::to_bytes(req),
            None,
        )
        .map_err(|e| e.errno())?;
    decode_reply(&r)
}

impl Transport for Link {
    /// Calls the server at `addr` for `who` (binding first if needed). A
    /// connection the server forgot (it restarted) is bound again and the
    /// call repeated, unless it carried a side effect, which went with the
    /// first attempt: then the caller repeats it ([`LinkError::rebound`]).
    fn call(
        &self,
        addr: SocketAddr,
        who: Principal,
        creds: Option<&Credentials>,
        subsystem: u16,
        opcode: u16,
        body: Bytes,
        side_effect: Option<SideEffect>,
    ) -> Answer {
        // A repeat needs the side effect again, and it went with the first try.
        let mut tries = if side_effect.is_none() { 2 } else { 1 };
        let mut side_effect = side_effect;
        loop {
            tries -= 1;
            let conn = self.conn(addr, who, creds)?;
            let err = match self.ct.call_blocking(
                conn,
                subsystem,
                opcode,
                body.clone(),
                side_effect.take(),
            ) {
                Ok(r) => return Ok(r),
                Err(error) => self.bound.failed(addr, who, conn, error),
            };
            if !err.rebound() || tries == 0 {
                return Err(err);
            }
            tracing::info!("{err}; binding again");
        }
    }

    /// All calls go out from the I/O thread at once, if every server is
    /// bound already (binds may wait long: they run on threads instead).
    fn call_each(
        &self,
        targets: &[SocketAddr],
        who: Principal,
        creds: Option<&Credentials>,
        subsystem: u16,
        opcode: u16,
        body: &Bytes,
        effects: Vec<Option<SideEffect>>,
        grace: Duration,
    ) -> Result<Vec<Option<Answer>>, Vec<Option<SideEffect>>> {
        let bound: Option<Vec<ConnId>> = {
            let conns = self.bound.conns.lock().unwrap();
            targets
                .iter()
                .map(|a| conns.get(&(*a, who)).copied())
                .collect()
        };
        let Some(bound) = bound else {
            return Err(effects);
        };
        // As in `call`: one the server forgot is bound again and repeated,
        // unless its side effect went with the first try.
        let again: Vec<bool> = effects.iter().map(Option::is_none).collect();
        let (tx, rx) = channel();
        let calls = bound.iter().copied().zip(effects).collect();
        self.ct
            .call_each(calls, subsystem, opcode, body.clone(), tx);
        let answers = gather(&rx, targets.len(), grace);
        if answers.iter().any(Option::is_none) {
            // A late failure still loses its connection and its promises.
            let (shared, targets, conns) = (self.bound.clone(), targets.to_vec(), bound.clone());
            std::thread::spawn(move || {
                for (i, a) in rx {
                    if let Err(e) = a {
                        shared.failed(targets[i], who, conns[i], e);
                    }
                }
            });
        }
        let answer = |(i, a): (usize, Option<Result<Reply, coda_rpc2::Error>>)| {
            let addr = targets[i];
            match a?.map_err(|e| self.bound.failed(addr, who, bound[i], e)) {
                Err(e) if e.rebound() && again[i] => {
                    tracing::info!("{e}; binding again");
                    Some(self.call(addr, who, creds, subsystem, opcode, body.clone(), None))
                }
                a => Some(a),
            }
        };
        Ok(answers.into_iter().enumerate().map(answer).collect())
    }

    fn set_host(&self, host: u64) {
        self.host.store(host, Ordering::Relaxed);
    }

    fn rebinds(&self) -> u64 {
        self.bound.lost.load(Ordering::Relaxed)
    }

    fn forget_principal(&self, who: Principal) {
        self.bound
            .conns
            .lock()
            .unwrap()
            .retain(|(_, w), _| *w != who);
    }
}

impl Link {
    /// A link whose calls give a silent server `timeout` to answer.
    pub fn new(timeout: Duration) -> std::io::Result<Link> {
        let ct = ClientThread::spawn(
            "0.0.0.0:0".parse().expect("an address"),
            Config {
                peer_timeout: timeout,
                ..Config::default()
            },
        )?;
        let mut incarnation = [0u8; 8];
        coda_rpc2::udp::getrandom_fill(&mut incarnation)?;
        Ok(Link {
            ct,
            host: AtomicU64::new(0),
            incarnation: u64::from_le_bytes(incarnation),
            bound: Arc::default(),
        })
    }

    fn conn(
        &self,
        addr: SocketAddr,
        who: Principal,
        creds: Option<&Credentials>,
    ) -> Result<ConnId, LinkError> {
        if let Some(c) = self.bound.conns.lock().unwrap().get(&(addr, who)) {
            return Ok(*c);
        }
        let auth = match (who, creds) {
            (Principal::User(_), Some(c)) => Auth::Encrypted(c.clone()),
            _ => Auth::Anonymous,
        };
        let conn = self
            .ct
            .connect_blocking(addr, auth)
            .map_err(|error| LinkError { addr, error })?;
        let hello = NewConnect {
            host: self.host.load(Ordering::Relaxed),
            incarnation: self.incarnation,
            name: "venus".into(),
        };
        self.ct
            .call_blocking(
                conn,
                vice::SUBSYSTEM,
                vice::op::NEW_CONNECT,
                codec::to_bytes(&hello),
                None,
            )
            .map_err(|error| LinkError { addr, error })?;
        self.bound.conns.lock().unwrap().insert((addr, who), conn);
        Ok(conn)
    }

    /// Drops a connection (a token changed, or the server forgot it).
    pub fn forget(&self, addr: SocketAddr, who: Principal) {
        self.bound.conns.lock().unwrap().remove(&(addr, who));
    }

    /// Calls servers make of Venus (callback breaks).
    pub fn next_request(&self) -> Option<Request> {
        self.ct.requests().recv_blocking().ok()
    }

    pub fn answer(&self, req: &Request, code: Errno, body: Bytes) {
        self.ct.reply(req.id, code.0, body);
    }
}

impl Bound {
    /// A call on `conn` that failed: a connection the server forgot, or
    /// one gone silent, is lost with its promises, and dropped (the next
    /// call binds again) unless another took its place meanwhile.
    fn failed(
        &self,
        addr: SocketAddr,
        who: Principal,
        conn: ConnId,
        error: coda_rpc2::Error,
    ) -> LinkError {
        let err = LinkError { addr, error };
        if err.drops_connection() {
            let mut conns = self.conns.lock().unwrap();
            if conns.get(&(addr, who)) == Some(&conn) {
                conns.remove(&(addr, who));
            }
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        err
    }
}

impl LinkError {
    /// The server forgot the connection (it restarted); a new one is bound
    /// on the next call.
    pub fn rebound(&self) -> bool {
        matches!(
            self.error,
            coda_rpc2::Error::Unbound | coda_rpc2::Error::NoConnection
        )
    }

    /// The connection is no more: the server forgot it, or went silent.
    pub fn drops_connection(&self) -> bool {
        self.rebound()
            || matches!(
                self.error,
                coda_rpc2::Error::Timeout | coda_rpc2::Error::Closed
            )
    }

    /// What a program sees when the server could not be reached.
    pub fn errno(&self) -> Errno {
        match self.error {
            coda_rpc2::Error::Rejected(_) => Errno::EACCES,
            coda_rpc2::Error::Io { .. } => Errno::EIO,
            _ => Errno::ETIMEDOUT,
        }
    }
}

/// The reply's body as `T`, or its code as the error.
pub fn decode_reply<T: Decode>(r: &Reply) -> Result<T, Errno> {
    if r.code != 0 {
        return Err(Errno(r.code));
    }
    codec::from_bytes(&r.body).map_err(|e| {
        tracing::warn!("a reply that does not decode: {e}");
        Errno::EIO
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::sync::atomic::AtomicBool;

    /// A server answering every call.
    fn server() -> SocketAddr {
        let config = Config {
            accept_binds: true,
            ..Config::default()
        };
        let ct = ClientThread::spawn("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let addr = ct.local_addr();
        std::thread::spawn(move || {
            while let Ok(req) = ct.requests().recv_blocking() {
                ct.reply(req.id, 0, Bytes::new());
            }
        });
        addr
    }

    /// A relay to `to` for one client, that drops everything once `cut`.
    fn relay(to: SocketAddr, cut: Arc<AtomicBool>) -> SocketAddr {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut client, mut buf) = (None, vec![0u8; 65536]);
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let dest = match from == to {
                    true => client,
                    false => {
                        client = Some(from);
                        Some(to)
                    }
                };
                if let Some(dest) = dest.filter(|_| !cut.load(Ordering::Relaxed)) {
                    let _ = sock.send_to(&buf[..n], dest);
                }
            }
        });
        addr
    }

    #[test]
    fn a_call_failing_after_the_grace_still_loses_its_connection() {
        let cut = Arc::new(AtomicBool::new(false));
        let (a, b) = (server(), relay(server(), cut.clone()));
        let link: Arc<dyn Transport> = Arc::new(Link::new(Duration::from_secs(2)).unwrap());
        let call = |addr| {
            link.call(addr, Principal::Anyone, None, 1, 1, Bytes::new(), None)
                .map(|r| r.code)
        };
        assert_eq!(call(a).unwrap(), 0);
        assert_eq!(call(b).unwrap(), 0);
        cut.store(true, Ordering::Relaxed);
        let lost = link.rebinds();
        let answers = multi_call(
            &link,
            &[a, b],
            Principal::Anyone,
            None,
            1,
            1,
            &Bytes::new(),
            vec![None, None],
            Duration::from_millis(50),
        );
        assert!(answers[0].as_ref().is_some_and(|r| r.is_ok()));
        assert!(answers[1].is_none(), "{:?}", answers[1]);
        // b's call times out after the grace: its promises go with it, and
        // the next call binds again.
        let deadline = Instant::now() + Duration::from_secs(30);
        while link.rebinds() == lost {
            assert!(Instant::now() < deadline, "the late timeout went unnoticed");
            std::thread::sleep(Duration::from_millis(20));
        }
        cut.store(false, Ordering::Relaxed);
        assert_eq!(call(b).unwrap(), 0);
    }
}
