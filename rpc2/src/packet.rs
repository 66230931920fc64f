//! The packet header: 44 bytes, little-endian, trusted only after its
//! trailer (CRC-32 or AEAD tag) has been checked.
//!
//! ```text
//! off size field
//!  0   1   version (1)
//!  1   1   kind
//!  2   2   flags
//!  4   4   connection id (the receiver's)
//!  8   8   packet number: unique per direction of a connection; the AEAD nonce
//! 16   8   call sequence number
//! 24   4   aux: in a request, how many calls below this one are still unanswered
//! 28   2   subsystem
//! 30   2   code: opcode in a request, result in a reply
//! 32   4   body length
//! 36   4   timestamp (sender's clock, microseconds, wrapping)
//! 40   4   timestamp echo (0 = none)
//! 44   -   body, then the trailer: 4-byte CRC-32 (clear) or 16-byte tag (sealed)
//! ```

pub const VERSION: u8 = 1;
pub const HEADER_BYTES: usize = 44;
pub const CRC_BYTES: usize = 4;
pub const TAG_BYTES: usize = 16;
/// The largest datagram any transport carries: the UDP maximum on IPv4.
pub const DATAGRAM_BYTES_MAX: usize = 65_507;
/// The smallest datagram a path may be configured for.
pub const DATAGRAM_BYTES_MIN: usize = 576;
/// A request or reply body must fit one datagram; bulk data goes by SFTP.
pub const BODY_BYTES_MAX: usize = DATAGRAM_BYTES_MAX - HEADER_BYTES - TAG_BYTES;
const _: () = assert!(HEADER_BYTES < 60, "smaller than Coda's header");
const _: () = assert!(DATAGRAM_BYTES_MIN > HEADER_BYTES + TAG_BYTES + 256);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Request = 1,
    Reply = 2,
    /// The callee has the request and is working on it.
    Busy = 3,
    BindInit = 4,
    BindChallenge = 5,
    BindProof = 6,
    BindOk = 7,
    BindReject = 8,
    /// The receiver of side-effect data asks for it from an offset.
    SftpStart = 9,
    SftpData = 10,
    SftpAck = 11,
    SftpAbort = 12,
    Unbind = 13,
    /// "No such connection here": the peer forgot us (restart, idle expiry).
    Unbound = 14,
}

impl Kind {
    pub fn from_u8(value: u8) -> Option<Kind> {
        use Kind::*;
        Some(match value {
            1 => Request,
            2 => Reply,
            3 => Busy,
            4 => BindInit,
            5 => BindChallenge,
            6 => BindProof,
            7 => BindOk,
            8 => BindReject,
            9 => SftpStart,
            10 => SftpData,
            11 => SftpAck,
            12 => SftpAbort,
            13 => Unbind,
            14 => Unbound,
            _ => return None,
        })
    }

    /// Handshake packets travel before there are keys: CRC only.
    pub fn is_handshake(self) -> bool {
        matches!(
            self,
            Kind::BindInit
                | Kind::BindChallenge
                | Kind::BindProof
                | Kind::BindReject
                | Kind::Unbound
        )
    }
}

pub mod flags {
    /// An SFTP packet sent by the callee of its call (so it concerns a call
    /// the receiver made).
    pub const FROM_CALLEE: u16 = 1 << 0;
    /// A reply saying the callee ran the call but no longer holds its reply.
    pub const REPLY_LOST: u16 = 1 << 1;
    /// A request carrying its side effect's data (SFTP's piggy-backing of
    /// small files): the body is `n u32 | the call's n bytes | data`.
    pub const PIGGY: u16 = 1 << 2;
    pub const ALL: u16 = FROM_CALLEE | REPLY_LOST | PIGGY;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub flags: u16,
    pub conn: u32,
    pub packet_number: u64,
    pub seq: u64,
    pub aux: u32,
    pub subsystem: u16,
    pub code: u16,
    pub body_len: u32,
    pub timestamp: u32,
    pub echo: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("datagram of {len} bytes is shorter than a header")]
    Short { len: usize },
    #[error("unknown protocol version {found}")]
    Version { found: u8 },
    #[error("unknown packet kind {found}")]
    Kind { found: u8 },
    #[error("unknown flags {found:#x}")]
    Flags { found: u16 },
    #[error("body length {body_len} does not fit a datagram of {len} bytes")]
    Length { body_len: u32, len: usize },
}

impl Header {
    pub fn new(kind: Kind, conn: u32) -> Header {
        Header {
            kind,
            flags: 0,
            conn,
            packet_number: 0,
            seq: 0,
            aux: 0,
            subsystem: 0,
            code: 0,
            body_len: 0,
            timestamp: 0,
            echo: 0,
        }
    }

    pub fn write(&self, out: &mut [u8]) {
        let out = &mut out[..HEADER_BYTES];
        out[0] = VERSION;
        out[1] = self.kind as u8;
        out[2..4].copy_from_slice(&self.flags.to_le_bytes());
        out[4..8].copy_from_slice(&self.conn.to_le_bytes());
        out[8..16].copy_from_slice(&self.packet_number.to_le_bytes());
        out[16..24].copy_from_slice(&self.seq.to_le_bytes());
        out[24..28].copy_from_slice(&self.aux.to_le_bytes());
        out[28..30].copy_from_slice(&self.subsystem.to_le_bytes());
        out[30..32].copy_from_slice(&self.code.to_le_bytes());
        out[32..36].copy_from_slice(&self.body_len.to_le_bytes());
        out[36..40].copy_from_slice(&self.timestamp.to_le_bytes());
        out[40..44].copy_from_slice(&self.echo.to_le_bytes());
    }

    /// Parses a header and checks that the datagram holds exactly the header,
    /// the body it announces and a trailer of `trailer` bytes.
    pub fn read(datagram: &[u8], trailer: usize) -> Result<Header, HeaderError> {
        let len = datagram.len();
        if len < HEADER_BYTES {
            return Err(HeaderError::Short { len });
        }
        let u16_at = |o: usize| u16::from_le_bytes([datagram[o], datagram[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(datagram[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(datagram[o..o + 8].try_into().unwrap());
        if datagram[0] != VERSION {
            return Err(HeaderError::Version { found: datagram[0] });
        }
        let kind = Kind::from_u8(datagram[1]).ok_or(HeaderError::Kind { found: datagram[1] })?;
        let flags = u16_at(2);
        if flags & !flags::ALL != 0 {
            return Err(HeaderError::Flags { found: flags });
        }
        let body_len = u32_at(32);
        if HEADER_BYTES as u64 + u64::from(body_len) + trailer as u64 != len as u64 {
            return Err(HeaderError::Length { body_len, len });
        }
        Ok(Header {
            kind,
            flags,
            conn: u32_at(4),
            packet_number: u64_at(8),
            seq: u64_at(16),
            aux: u32_at(24),
            subsystem: u16_at(28),
            code: u16_at(30),
            body_len,
            timestamp: u32_at(36),
            echo: u32_at(40),
        })
    }

    /// Reads only the kind and connection id, enough to find the keys that
    /// authenticate the rest.
    pub fn peek(datagram: &[u8]) -> Result<(Kind, u32), HeaderError> {
        let len = datagram.len();
        if len < HEADER_BYTES {
            return Err(HeaderError::Short { len });
        }
        if datagram[0] != VERSION {
            return Err(HeaderError::Version { found: datagram[0] });
        }
        let kind = Kind::from_u8(datagram[1]).ok_or(HeaderError::Kind { found: datagram[1] })?;
        Ok((kind, u32::from_le_bytes(datagram[4..8].try_into().unwrap())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_round_trips_and_checks_its_length() {
        let mut h = Header::new(Kind::Request, 7);
        h.flags = flags::FROM_CALLEE;
        h.packet_number = u64::MAX - 1;
        h.seq = 1 << 40;
        h.aux = 3;
        h.subsystem = 1001;
        h.code = 42;
        h.body_len = 5;
        h.timestamp = 123;
        h.echo = 456;
        let mut buf = vec![0u8; HEADER_BYTES + 5 + CRC_BYTES];
        h.write(&mut buf);
        assert_eq!(Header::read(&buf, CRC_BYTES).unwrap(), h);
        assert_eq!(Header::peek(&buf).unwrap(), (Kind::Request, 7));
        assert!(matches!(
            Header::read(&buf, TAG_BYTES),
            Err(HeaderError::Length { .. })
        ));
        buf[0] = 9;
        assert_eq!(
            Header::read(&buf, CRC_BYTES),
            Err(HeaderError::Version { found: 9 })
        );
        buf[0] = VERSION;
        buf[1] = 99;
        assert_eq!(
            Header::read(&buf, CRC_BYTES),
            Err(HeaderError::Kind { found: 99 })
        );
        buf[1] = 1;
        buf[2] = 0x80;
        assert_eq!(
            Header::read(&buf, CRC_BYTES),
            Err(HeaderError::Flags { found: 0x80 })
        );
        assert_eq!(
            Header::read(&buf[..10], 0),
            Err(HeaderError::Short { len: 10 })
        );
    }
}
