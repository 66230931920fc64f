//! Tokens for a password (subsystem [`SUBSYSTEM`], over a clear connection).
//!
//! The password never travels. Both sides derive a key from it with argon2
//! (the server keeps only the key): the client proves it knows the key, and
//! the server answers with the token sealed under that key.

use bytes::Bytes;
use coda_rpc2::codec_struct;

use crate::acl::PrincipalId;

pub const SUBSYSTEM: u16 = 1003;

pub mod op {
    /// The salt and cost of a user's password key.
    pub const GET_SALT: u16 = 1;
    pub const GET_TOKEN: u16 = 2;
}

/// How long a token lasts: about a day, as Coda's did (25 hours).
pub const TOKEN_LIFETIME_SECS: u64 = 25 * 3600;
/// How far a client's clock may be from the server's.
pub const CLOCK_SKEW_SECS: u64 = 300;

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct GetSalt {
        pub user: String,
    }
}

codec_struct! {
    /// argon2id parameters; unknown users get a stable made-up salt, so the
    /// answer does not tell who exists.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Salt {
        pub salt: [u8; 16],
        pub memory_kib: u32,
        pub iterations: u32,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct GetToken {
        pub user: String,
        /// UNIX seconds now, by the client's clock.
        pub time: u64,
        /// BLAKE3 keyed with the password key, over the user and time.
        pub proof: [u8; 32],
    }
}

codec_struct! {
    /// `sealed` opens under the password key to a [`ClearToken`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct TokenReply {
        pub nonce: [u8; 24],
        pub sealed: Bytes,
    }
}

codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ClearToken {
        pub user_id: PrincipalId,
        pub session_key: [u8; 32],
        /// The token itself, sealed under the cell key: what a bind presents.
        pub sealed_token: Bytes,
        pub expires_at: u64,
    }
}
