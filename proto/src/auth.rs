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

/// Why a token reply could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("the token reply does not open with this password")]
    WrongKey,
}

/// The key a password stands for: argon2id over the password with the
/// user's salt and cost. Servers keep only this, never the password.
pub fn password_key(password: &str, salt: &Salt) -> Result<[u8; 32], AuthError> {
    let params = argon2::Params::new(salt.memory_kib, salt.iterations, 1, Some(32))
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = [0u8; 32];
    argon
        .hash_password_into(password.as_bytes(), &salt.salt, &mut key)
        .map_err(|e| AuthError::Hash(e.to_string()))?;
    Ok(key)
}

/// What a client sends to show it holds `key` for `user` at `time`.
pub fn proof(key: &[u8; 32], user: &str, time: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"coda auth proof v1\0");
    h.update(user.as_bytes());
    h.update(b"\0");
    h.update(&time.to_le_bytes());
    *h.finalize().as_bytes()
}

const REPLY_AAD: &[u8] = b"coda token reply v1";

/// Seals a clear token under the user's key (server side).
pub fn seal_reply(key: &[u8; 32], nonce: [u8; 24], token: &ClearToken) -> TokenReply {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(key.into());
    let msg = coda_rpc2::codec::to_bytes(token);
    let sealed = cipher
        .encrypt(
            (&nonce).into(),
            Payload {
                msg: &msg,
                aad: REPLY_AAD,
            },
        )
        .expect("a token is far below the AEAD length limit");
    TokenReply {
        nonce,
        sealed: Bytes::from(sealed),
    }
}

/// Opens a token reply with the key the password gave (client side).
pub fn open_reply(key: &[u8; 32], reply: &TokenReply) -> Result<ClearToken, AuthError> {
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    let cipher = chacha20poly1305::XChaCha20Poly1305::new(key.into());
    let msg = cipher
        .decrypt(
            (&reply.nonce).into(),
            Payload {
                msg: &reply.sealed,
                aad: REPLY_AAD,
            },
        )
        .map_err(|_| AuthError::WrongKey)?;
    coda_rpc2::codec::from_bytes(&msg).map_err(|_| AuthError::WrongKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap_salt() -> Salt {
        Salt {
            salt: [7; 16],
            memory_kib: 64,
            iterations: 1,
        }
    }

    #[test]
    fn a_reply_opens_only_with_the_key_it_was_sealed_under() {
        let key = password_key("secret", &cheap_salt()).unwrap();
        let other = password_key("Secret", &cheap_salt()).unwrap();
        assert_ne!(key, other);
        let token = ClearToken {
            user_id: 1000,
            session_key: [3; 32],
            sealed_token: Bytes::from_static(b"sealed"),
            expires_at: 99,
        };
        let reply = seal_reply(&key, [1; 24], &token);
        assert_eq!(open_reply(&key, &reply).unwrap(), token);
        assert_eq!(open_reply(&other, &reply), Err(AuthError::WrongKey));
        assert_ne!(proof(&key, "bob", 5), proof(&key, "bob", 6));
        assert_ne!(proof(&key, "bob", 5), proof(&other, "bob", 5));
    }
}
