//! Security: tokens sealed by the cell key, the bind proofs, per-connection
//! keys, packet sealing and the replay window.
//!
//! Nothing here is new cryptography. Tokens are XChaCha20-Poly1305 boxes
//! under the cell key. The bind proves possession of the token's session key
//! with BLAKE3 in keyed mode over both sides' fresh nonces; BLAKE3's key
//! derivation mode turns the session key and those nonces into one
//! ChaCha20-Poly1305 key per direction. Each packet's nonce is its packet
//! number, never reused under one key, and the header is always
//! authenticated data.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, Tag, XChaCha20Poly1305, XNonce};

use crate::codec::{self, Encode, Writer};
use crate::packet::{CRC_BYTES, HEADER_BYTES, TAG_BYTES};

pub const KEY_BYTES: usize = 32;
pub const NONCE_BYTES: usize = 32;
pub const PROOF_BYTES: usize = 32;
const TOKEN_VERSION: u8 = 1;
const TOKEN_AAD: &[u8] = b"coda-rpc2 token v1";
const KEY_CONTEXT: &str = "coda-rpc2 2026-11 connection keys v1";
/// Packets whose numbers fall this far behind the newest are refused as replays.
pub const REPLAY_WINDOW_PACKETS: u64 = 128;

/// How much protection a connection's packets get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Level {
    /// Anonymous; a CRC catches corruption, nothing stops forgery.
    Clear = 0,
    /// Every packet carries a Poly1305 tag over header and body.
    Authenticated = 1,
    /// As authenticated, and the body is encrypted.
    Encrypted = 2,
}

impl Level {
    pub fn from_u8(value: u8) -> Option<Level> {
        match value {
            0 => Some(Level::Clear),
            1 => Some(Level::Authenticated),
            2 => Some(Level::Encrypted),
            _ => None,
        }
    }

    pub fn trailer_bytes(self) -> usize {
        match self {
            Level::Clear => CRC_BYTES,
            Level::Authenticated | Level::Encrypted => TAG_BYTES,
        }
    }
}

/// The key the cell's servers share; it seals and opens tokens.
#[derive(Clone)]
pub struct CellKey([u8; KEY_BYTES]);

impl CellKey {
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> CellKey {
        CellKey(bytes)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }
}

impl std::fmt::Debug for CellKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CellKey(..)")
    }
}

crate::codec_struct! {
    /// What the auth service vouches for: a user and the session key only
    /// that user (and the servers, through the cell key) knows.
    #[derive(Clone, PartialEq, Eq)]
    pub struct Token {
        pub user_id: u32,
        pub session_key: [u8; KEY_BYTES],
        /// Seconds since the UNIX epoch.
        pub issued_at: u64,
        pub expires_at: u64,
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("user_id", &self.user_id)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is malformed or was not sealed by this cell")]
    Forged,
    #[error("token expired at {expires_at} (now {now})")]
    Expired { expires_at: u64, now: u64 },
}

impl Token {
    /// Seals the token under the cell key; `nonce` must be fresh random bytes.
    pub fn seal(&self, cell: &CellKey, nonce: [u8; 24]) -> Vec<u8> {
        let mut body = Writer::new();
        self.encode(&mut body);
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&cell.0));
        let tag = cipher
            .encrypt_in_place_detached(XNonce::from_slice(&nonce), TOKEN_AAD, &mut body)
            .expect("a token is far below the AEAD length limit");
        let mut sealed = Vec::with_capacity(1 + 24 + body.len() + TAG_BYTES);
        sealed.push(TOKEN_VERSION);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&body);
        sealed.extend_from_slice(&tag);
        sealed
    }

    /// Opens a sealed token and checks that it is valid at `now` (UNIX seconds).
    pub fn open(cell: &CellKey, sealed: &[u8], now: u64) -> Result<Token, TokenError> {
        if sealed.len() < 1 + 24 + TAG_BYTES || sealed[0] != TOKEN_VERSION {
            return Err(TokenError::Forged);
        }
        let (nonce, rest) = sealed[1..].split_at(24);
        let (body, tag) = rest.split_at(rest.len() - TAG_BYTES);
        let mut body = body.to_vec();
        let cipher = XChaCha20Poly1305::new(Key::from_slice(&cell.0));
        cipher
            .decrypt_in_place_detached(
                XNonce::from_slice(nonce),
                TOKEN_AAD,
                &mut body,
                Tag::from_slice(tag),
            )
            .map_err(|_| TokenError::Forged)?;
        let token: Token = codec::from_bytes(&body).map_err(|_| TokenError::Forged)?;
        if now >= token.expires_at || now < token.issued_at.saturating_sub(CLOCK_SKEW_SECS) {
            return Err(TokenError::Expired {
                expires_at: token.expires_at,
                now,
            });
        }
        Ok(token)
    }
}

/// How far a server's clock may run behind the auth service's.
const CLOCK_SKEW_SECS: u64 = 300;

/// What a client holds to bind as a user: the sealed token for the server and
/// the session key inside it, which never travels.
#[derive(Clone)]
pub struct Credentials {
    pub sealed_token: Vec<u8>,
    pub session_key: [u8; KEY_BYTES],
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(..)")
    }
}

/// The transcript both proofs and the connection keys are bound to.
pub struct Transcript {
    pub client_conn: u32,
    pub server_conn: u32,
    pub level: Level,
    pub client_nonce: [u8; NONCE_BYTES],
    pub server_nonce: [u8; NONCE_BYTES],
}

impl Transcript {
    fn bytes(&self, label: &[u8]) -> Vec<u8> {
        let mut t = Vec::with_capacity(label.len() + 9 + 2 * NONCE_BYTES);
        t.extend_from_slice(label);
        t.extend_from_slice(&self.client_conn.to_le_bytes());
        t.extend_from_slice(&self.server_conn.to_le_bytes());
        t.push(self.level as u8);
        t.extend_from_slice(&self.client_nonce);
        t.extend_from_slice(&self.server_nonce);
        t
    }

    /// The server's proof that it could open the token.
    pub fn server_proof(&self, session_key: &[u8; KEY_BYTES]) -> [u8; PROOF_BYTES] {
        *blake3::keyed_hash(session_key, &self.bytes(b"server proof")).as_bytes()
    }

    /// The client's proof that it holds the token's session key.
    pub fn client_proof(&self, session_key: &[u8; KEY_BYTES]) -> [u8; PROOF_BYTES] {
        *blake3::keyed_hash(session_key, &self.bytes(b"client proof")).as_bytes()
    }

    /// One key per direction: (client to server, server to client).
    pub fn keys(&self, session_key: &[u8; KEY_BYTES]) -> ([u8; KEY_BYTES], [u8; KEY_BYTES]) {
        let mut hasher = blake3::Hasher::new_derive_key(KEY_CONTEXT);
        hasher.update(session_key);
        hasher.update(&self.bytes(b"keys"));
        let mut out = [0u8; 2 * KEY_BYTES];
        hasher.finalize_xof().fill(&mut out);
        let (a, b) = out.split_at(KEY_BYTES);
        (a.try_into().unwrap(), b.try_into().unwrap())
    }
}

/// Constant-time comparison of proofs.
pub fn proofs_equal(a: &[u8; PROOF_BYTES], b: &[u8; PROOF_BYTES]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A connection's ciphers, one per direction.
pub struct Keys {
    send: ChaCha20Poly1305,
    recv: ChaCha20Poly1305,
}

impl Keys {
    pub fn new(send: &[u8; KEY_BYTES], recv: &[u8; KEY_BYTES]) -> Keys {
        Keys {
            send: ChaCha20Poly1305::new(Key::from_slice(send)),
            recv: ChaCha20Poly1305::new(Key::from_slice(recv)),
        }
    }
}

fn nonce(packet_number: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&packet_number.to_le_bytes());
    *Nonce::from_slice(&n)
}

/// Appends the trailer to `packet` (header and body): a CRC-32 for clear
/// packets, else a tag, encrypting the body in place at `Encrypted`.
pub fn seal(level: Level, keys: Option<&Keys>, packet_number: u64, packet: &mut Vec<u8>) {
    match (level, keys) {
        (Level::Clear, _) => {
            let crc = crc32fast::hash(packet);
            packet.extend_from_slice(&crc.to_le_bytes());
        }
        (Level::Authenticated, Some(keys)) => {
            let tag = keys
                .send
                .encrypt_in_place_detached(&nonce(packet_number), packet, &mut [])
                .expect("datagrams are far below the AEAD length limit");
            packet.extend_from_slice(&tag);
        }
        (Level::Encrypted, Some(keys)) => {
            let (header, body) = packet.split_at_mut(HEADER_BYTES);
            let tag = keys
                .send
                .encrypt_in_place_detached(&nonce(packet_number), header, body)
                .expect("datagrams are far below the AEAD length limit");
            packet.extend_from_slice(&tag);
        }
        (_, None) => panic!("a sealed level without keys"),
    }
}

/// Checks the trailer of a whole datagram and decrypts its body in place.
/// False means it was corrupted, tampered with or forged.
pub fn open(level: Level, keys: Option<&Keys>, packet_number: u64, datagram: &mut [u8]) -> bool {
    let split = datagram.len() - level.trailer_bytes();
    let (packet, trailer) = datagram.split_at_mut(split);
    match (level, keys) {
        (Level::Clear, _) => crc32fast::hash(packet).to_le_bytes() == trailer[..],
        (Level::Authenticated, Some(keys)) => keys
            .recv
            .decrypt_in_place_detached(
                &nonce(packet_number),
                packet,
                &mut [],
                Tag::from_slice(trailer),
            )
            .is_ok(),
        (Level::Encrypted, Some(keys)) => {
            let (header, body) = packet.split_at_mut(HEADER_BYTES);
            keys.recv
                .decrypt_in_place_detached(
                    &nonce(packet_number),
                    header,
                    body,
                    Tag::from_slice(trailer),
                )
                .is_ok()
        }
        (_, None) => false,
    }
}

/// Remembers which recent packet numbers arrived, so none is accepted twice.
#[derive(Debug, Default)]
pub struct ReplayWindow {
    /// One more than the highest packet number seen (0: none yet).
    next: u64,
    /// Bit i set: packet `next - 1 - i` has been seen.
    seen: u128,
}

const _: () = assert!(REPLAY_WINDOW_PACKETS == u128::BITS as u64);

impl ReplayWindow {
    /// True if `pn` is new; call only after the packet was authenticated.
    pub fn accept(&mut self, pn: u64) -> bool {
        if pn == u64::MAX {
            return false; // senders stop before this number
        }
        if pn >= self.next {
            let shift = pn - self.next + 1;
            self.seen = if shift >= 128 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.next = pn + 1;
            return true;
        }
        let age = self.next - 1 - pn;
        if age >= REPLAY_WINDOW_PACKETS || self.seen & (1u128 << age) != 0 {
            return false;
        }
        self.seen |= 1u128 << age;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell() -> CellKey {
        CellKey::from_bytes([7; 32])
    }

    fn token() -> Token {
        Token {
            user_id: 42,
            session_key: [9; 32],
            issued_at: 1000,
            expires_at: 2000,
        }
    }

    #[test]
    fn a_token_opens_only_with_its_cell_key_and_in_its_lifetime() {
        let sealed = token().seal(&cell(), [1; 24]);
        assert_eq!(Token::open(&cell(), &sealed, 1500).unwrap(), token());
        let other = CellKey::from_bytes([8; 32]);
        assert_eq!(Token::open(&other, &sealed, 1500), Err(TokenError::Forged));
        assert_eq!(
            Token::open(&cell(), &sealed, 2000),
            Err(TokenError::Expired {
                expires_at: 2000,
                now: 2000
            })
        );
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x10;
            assert_eq!(
                Token::open(&cell(), &bad, 1500),
                Err(TokenError::Forged),
                "byte {i}"
            );
        }
        assert_eq!(
            Token::open(&cell(), &sealed[..20], 1500),
            Err(TokenError::Forged)
        );
    }

    #[test]
    fn sealed_packets_detect_any_flipped_bit() {
        for level in [Level::Clear, Level::Authenticated, Level::Encrypted] {
            let keys = Keys::new(&[1; 32], &[1; 32]);
            let mut packet = vec![0xabu8; HEADER_BYTES + 10];
            seal(level, Some(&keys), 5, &mut packet);
            let mut ok = packet.clone();
            assert!(open(level, Some(&keys), 5, &mut ok));
            assert_eq!(ok[..HEADER_BYTES + 10], vec![0xabu8; HEADER_BYTES + 10][..]);
            if level != Level::Clear {
                let mut wrong_number = packet.clone();
                assert!(!open(level, Some(&keys), 6, &mut wrong_number));
            }
            for bit in 0..packet.len() * 8 {
                let mut bad = packet.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    !open(level, Some(&keys), 5, &mut bad),
                    "{level:?} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn the_replay_window_accepts_each_number_once() {
        let mut w = ReplayWindow::default();
        assert!(w.accept(0));
        assert!(!w.accept(0));
        assert!(w.accept(5));
        assert!(w.accept(3));
        assert!(!w.accept(3));
        assert!(w.accept(200));
        assert!(!w.accept(5), "fell out of the window");
        assert!(w.accept(199));
        assert!(w.accept(200 - 127));
        assert!(!w.accept(200 - 128));
        assert!(w.accept(u64::MAX - 1));
        assert!(!w.accept(u64::MAX - 1));
    }

    #[test]
    fn both_sides_derive_the_same_keys_and_proofs_differ_by_role() {
        let t = Transcript {
            client_conn: 1,
            server_conn: 2,
            level: Level::Encrypted,
            client_nonce: [3; 32],
            server_nonce: [4; 32],
        };
        let k = [5; 32];
        assert_ne!(t.client_proof(&k), t.server_proof(&k));
        let (c2s, s2c) = t.keys(&k);
        assert_ne!(c2s, s2c);
        assert!(proofs_equal(&t.client_proof(&k), &t.client_proof(&k)));
        assert!(!proofs_equal(&t.client_proof(&k), &t.server_proof(&k)));
    }
}
