//! pdbtool: users and groups of a running server's protection database.

use std::io::BufRead;

use clap::{Parser, Subcommand};
use coda_proto::volutil::{op, Group, GroupAdd, GroupAddMember, User, UserAdd, SUBSYSTEM};
use coda_tools::{exit_with, Admin, AdminArgs, Result, ToolError};

#[derive(Parser)]
#[command(name = "pdbtool", version, about = "Coda users and groups")]
struct Args {
    #[command(flatten)]
    admin: AdminArgs,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Users.
    #[command(subcommand)]
    User(UserCmd),
    /// Groups.
    #[command(subcommand)]
    Group(GroupCmd),
}

#[derive(Subcommand)]
enum UserCmd {
    /// Add a user; without --password-stdin a random password is made and printed.
    Add {
        name: String,
        /// Read the new user's password from the first line of stdin.
        #[arg(long)]
        password_stdin: bool,
    },
    List,
}

#[derive(Subcommand)]
enum GroupCmd {
    /// Add a group (conventionally OWNER:NAME).
    Add {
        name: String,
        #[arg(long)]
        owner: String,
    },
    /// Add a user or a group to a group.
    AddMember {
        group: String,
        member: String,
    },
    List,
}

fn random_password() -> Result<String> {
    let mut b = [0u8; 12];
    coda_rpc2::udp::getrandom_fill(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn run(args: Args) -> Result<()> {
    let admin = Admin::connect(&args.admin)?;
    let json = args.admin.json;
    match args.cmd {
        Cmd::User(UserCmd::Add {
            name,
            password_stdin,
        }) => {
            let (password, made) = if password_stdin {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                let p = line.trim_end_matches(['\r', '\n']).to_string();
                if p.is_empty() {
                    return Err(ToolError::Usage("empty password on stdin".into()));
                }
                (p, false)
            } else {
                (random_password()?, true)
            };
            let u: User = admin.call(
                SUBSYSTEM,
                op::USER_ADD,
                &UserAdd {
                    name,
                    password: password.clone(),
                },
            )?;
            if json {
                let mut v = serde_json::json!({ "name": u.name, "id": u.id });
                if made {
                    v["password"] = password.into();
                }
                println!("{v}");
            } else {
                println!("added user {} (id {})", u.name, u.id);
                if made {
                    println!("password: {password}");
                }
            }
        }
        Cmd::User(UserCmd::List) => {
            let users: Vec<User> = admin.call(SUBSYSTEM, op::USER_LIST, &())?;
            if json {
                let v: Vec<_> = users
                    .iter()
                    .map(|u| serde_json::json!({ "name": u.name, "id": u.id }))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for u in users {
                    println!("{:<8} {}", u.id, u.name);
                }
            }
        }
        Cmd::Group(GroupCmd::Add { name, owner }) => {
            let g: User = admin.call(SUBSYSTEM, op::GROUP_ADD, &GroupAdd { name, owner })?;
            if json {
                println!("{}", serde_json::json!({ "name": g.name, "id": g.id }));
            } else {
                println!("added group {} (id {})", g.name, g.id);
            }
        }
        Cmd::Group(GroupCmd::AddMember { group, member }) => {
            admin.call_unit(
                SUBSYSTEM,
                op::GROUP_ADD_MEMBER,
                &GroupAddMember { group, member },
            )?;
        }
        Cmd::Group(GroupCmd::List) => {
            let groups: Vec<Group> = admin.call(SUBSYSTEM, op::GROUP_LIST, &())?;
            if json {
                let v: Vec<_> = groups
                    .iter()
                    .map(|g| serde_json::json!({ "name": g.name, "id": g.id, "owner": g.owner, "members": g.members }))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for g in groups {
                    println!(
                        "{:<8} {:<28} owner {:<12} members {}",
                        g.id,
                        g.name,
                        g.owner,
                        g.members.join(" ")
                    );
                }
            }
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        exit_with("pdbtool", e);
    }
}
