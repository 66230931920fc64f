//! clog: authenticate to the cell and hand the token to Venus.

use std::io::BufRead;

use clap::Parser;
use coda_proto::control::{Reply, Request, TokenGrant};
use coda_proto::Errno;
use coda_tools::venus::{unexpected, MountArgs, Venus};
use coda_tools::{client, exit_with, login_token, Result, ToolError};

/// Gets a token (about 25 hours) for USER; Venus uses it for your uid.
#[derive(Parser)]
#[command(name = "clog", version)]
struct Args {
    /// Read the password as one line of stdin instead of from the terminal.
    #[arg(long)]
    pipe: bool,
    #[command(flatten)]
    mount: MountArgs,
    user: String,
}

/// Reads a line from the terminal without echoing it.
fn ask_password() -> Result<String> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| ToolError::Usage(format!("no terminal for the password ({e}); use --pipe")))?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios calls on an open terminal, with a termios they filled.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    unsafe { libc::tcgetattr(fd, &mut old) };
    let mut quiet = old;
    quiet.c_lflag &= !libc::ECHO;
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let _ = write!(&tty, "Password: ");
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    let _ = writeln!(&tty);
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn run(args: Args) -> Result<()> {
    let mut venus = Venus::find(&args.mount, None)?;
    let addr = match venus.ask(&Request::Servers(()))? {
        Reply::Servers(s) => s
            .first()
            .and_then(|s| s.addr.parse().ok())
            .ok_or_else(|| ToolError::Usage("Venus knows no server".into()))?,
        r => return Err(unexpected(r)),
    };
    let password = if args.pipe {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        line.trim_end_matches(['\n', '\r']).to_string()
    } else {
        ask_password()?
    };
    let ct = client()?;
    let token = login_token(&ct, addr, &args.user, &password).map_err(|e| match e {
        ToolError::Server(Errno::AUTH_FAILED) => {
            ToolError::Usage("wrong user name or password".into())
        }
        e => e,
    })?;
    venus.ask(&Request::SetToken(TokenGrant {
        user: args.user,
        user_id: token.user_id,
        sealed_token: token.sealed_token.to_vec(),
        session_key: token.session_key,
        expires_at: token.expires_at,
    }))?;
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        exit_with("clog", e);
    }
}
