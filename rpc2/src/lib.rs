//! RPC2 and SFTP: Coda's wire. A sans-IO protocol core ([`Endpoint`]) driven
//! by a glommio UDP transport ([`udp`]) or a seeded simulated network ([`sim`]).

pub mod codec;
pub mod config;
pub mod endpoint;
pub mod mmsg;
pub mod packet;
pub mod rtt;
pub mod secure;
pub mod sftp;
pub mod sim;
pub mod stats;
pub mod time;
pub mod udp;

pub use config::Config;
pub use endpoint::{
    Auth, CallId, ConnId, Endpoint, Error, Event, Identity, IncomingId, Reject, Reply, SftpOutcome,
    SideEffect,
};
pub use secure::{CellKey, Credentials, Level, Token};
pub use sftp::{Sink, Source};
pub use stats::{Drop, Stats};
pub use time::Time;
