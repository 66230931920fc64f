//! What the tools share: logging in with a password, and calling a
//! server as an administrator.

pub mod dumpfile;
pub mod venus;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use coda_proto::auth::{self, GetSalt, GetToken, Salt, TokenReply};
use coda_proto::Errno;
use coda_rpc2::codec::{self, Decode, Encode};
use coda_rpc2::endpoint::{Auth, ConnId, Reply, SideEffect};
use coda_rpc2::udp::ClientThread;
use coda_rpc2::{Config, Credentials};

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{0}")]
    Server(Errno),
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: SocketAddr, reason: String },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T> = std::result::Result<T, ToolError>;

pub fn client() -> Result<ClientThread> {
    Ok(ClientThread::spawn(
        "0.0.0.0:0".parse().expect("an address"),
        Config {
            peer_timeout: Duration::from_secs(10),
            ..Config::default()
        },
    )?)
}

pub fn connect(ct: &ClientThread, addr: SocketAddr, auth: Auth) -> Result<ConnId> {
    ct.connect_blocking(addr, auth)
        .map_err(|e| ToolError::Unreachable {
            addr,
            reason: e.to_string(),
        })
}

/// Calls and decodes; a non-zero reply code is the error.
pub fn call<T: Decode>(
    ct: &ClientThread,
    conn: ConnId,
    subsystem: u16,
    opcode: u16,
    req: &impl Encode,
) -> Result<T> {
    let r = ct
        .call_blocking(conn, subsystem, opcode, codec::to_bytes(req), None)
        .map_err(|e| ToolError::Unreachable {
            addr: "0.0.0.0:0".parse().expect("an address"),
            reason: e.to_string(),
        })?;
    if r.code != 0 {
        return Err(ToolError::Server(Errno(r.code)));
    }
    codec::from_bytes(&r.body).map_err(|e| ToolError::Usage(format!("bad reply: {e}")))
}

/// Trades a password for a token (the password never travels), as `clog` does.
pub fn login(
    ct: &ClientThread,
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<Credentials> {
    let clear = login_token(ct, addr, user, password)?;
    Ok(Credentials {
        sealed_token: clear.sealed_token.to_vec(),
        session_key: clear.session_key,
    })
}

/// The token itself, with its user id and expiry.
pub fn login_token(
    ct: &ClientThread,
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<auth::ClearToken> {
    let conn = connect(ct, addr, Auth::Anonymous)?;
    let salt: Salt = call(
        ct,
        conn,
        auth::SUBSYSTEM,
        auth::op::GET_SALT,
        &GetSalt { user: user.into() },
    )?;
    let key = auth::password_key(password, &salt).map_err(|e| ToolError::Usage(e.to_string()))?;
    let time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let req = GetToken {
        user: user.into(),
        time,
        proof: auth::proof(&key, user, time),
    };
    let reply: TokenReply = call(ct, conn, auth::SUBSYSTEM, auth::op::GET_TOKEN, &req)?;
    auth::open_reply(&key, &reply).map_err(|e| ToolError::Usage(e.to_string()))
}

/// How an administration tool reaches and authenticates to a server.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The server (its first shard's address).
    #[arg(
        long,
        global = true,
        env = "CODA_SERVER",
        default_value = "127.0.0.1:2432"
    )]
    pub server: SocketAddr,
    /// Authenticate as this member of System:Administrators.
    #[arg(long, global = true, default_value = "admin")]
    pub user: String,
    /// Read the password from the first line of this file.
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// An encrypted, authenticated connection for administration.
pub struct Admin {
    pub ct: ClientThread,
    pub conn: ConnId,
    /// The server first called.
    pub server: SocketAddr,
    creds: Credentials,
}

impl Admin {
    pub fn connect(args: &AdminArgs) -> Result<Admin> {
        let Some(file) = &args.password_file else {
            return Err(ToolError::Usage(
                "no credentials: give --password-file FILE (a server's first password is in ROOT/admin.password)".into(),
            ));
        };
        let password = std::fs::read_to_string(file)
            .map_err(|e| ToolError::Usage(format!("{}: {e}", file.display())))?;
        let password = password.lines().next().unwrap_or("").to_string();
        let ct = client()?;
        let creds = login(&ct, args.server, &args.user, &password)?;
        let conn = connect(&ct, args.server, Auth::Encrypted(creds.clone()))?;
        Ok(Admin {
            ct,
            conn,
            server: args.server,
            creds,
        })
    }

    /// Talks to `addr` (the shard serving a volume) from now on.
    pub fn move_to(&mut self, addr: SocketAddr) -> Result<()> {
        self.conn = connect(&self.ct, addr, Auth::Encrypted(self.creds.clone()))?;
        Ok(())
    }

    /// A call with a side effect (SFTP data sent or received); a non-zero
    /// reply code is the error.
    pub fn call_sftp(
        &self,
        subsystem: u16,
        opcode: u16,
        req: &impl Encode,
        side_effect: SideEffect,
    ) -> Result<Reply> {
        let r = self
            .ct
            .call_blocking(
                self.conn,
                subsystem,
                opcode,
                codec::to_bytes(req),
                Some(side_effect),
            )
            .map_err(|e| ToolError::Usage(e.to_string()))?;
        match r.code {
            0 => Ok(r),
            c => Err(ToolError::Server(Errno(c))),
        }
    }

    pub fn call<T: Decode>(&self, subsystem: u16, opcode: u16, req: &impl Encode) -> Result<T> {
        call(&self.ct, self.conn, subsystem, opcode, req)
    }

    /// A call whose reply has no body.
    pub fn call_unit(&self, subsystem: u16, opcode: u16, req: &impl Encode) -> Result<()> {
        let r = self
            .ct
            .call_blocking(self.conn, subsystem, opcode, codec::to_bytes(req), None)
            .map_err(|e| ToolError::Usage(e.to_string()))?;
        match r.code {
            0 => Ok(()),
            c => Err(ToolError::Server(Errno(c))),
        }
    }
}

/// Prints the one-line reason and exits non-zero, as every tool does on error.
pub fn exit_with(tool: &str, e: ToolError) -> ! {
    eprintln!("{tool}: {e}");
    std::process::exit(1)
}
