//! Counters per connection and per endpoint, for `cmon` and `codacon`.

/// Why a datagram was dropped instead of delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(usize)]
pub enum Drop {
    /// Too short, an unknown version, kind or flag, or a bad length.
    Malformed,
    /// A clear packet whose CRC-32 does not match.
    Checksum,
    /// A sealed packet whose tag does not verify: tampered, spliced or forged.
    Forged,
    /// A packet number already seen or too old.
    Replay,
    /// No connection has this id.
    UnknownConnection,
    /// From another address than the connection's peer.
    WrongPeer,
    /// A bind with a token the cell did not seal.
    ForgedToken,
    /// A bind with a token past its lifetime.
    ExpiredToken,
    /// A bind whose proof of the session key is wrong.
    BadProof,
    /// A bind below the endpoint's minimum level, or binds not accepted.
    Refused,
    /// A body the codec could not read.
    BadBody,
    /// A packet that makes no sense in the connection's state.
    Unexpected,
    /// A request for a call already forgotten, or too far ahead.
    Stale,
    /// A bounded table was full.
    Overload,
}

pub const DROP_REASONS: usize = 14;

impl Drop {
    pub const ALL: [Drop; DROP_REASONS] = [
        Drop::Malformed,
        Drop::Checksum,
        Drop::Forged,
        Drop::Replay,
        Drop::UnknownConnection,
        Drop::WrongPeer,
        Drop::ForgedToken,
        Drop::ExpiredToken,
        Drop::BadProof,
        Drop::Refused,
        Drop::BadBody,
        Drop::Unexpected,
        Drop::Stale,
        Drop::Overload,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Drop::Malformed => "malformed",
            Drop::Checksum => "checksum",
            Drop::Forged => "forged",
            Drop::Replay => "replay",
            Drop::UnknownConnection => "unknown-connection",
            Drop::WrongPeer => "wrong-peer",
            Drop::ForgedToken => "forged-token",
            Drop::ExpiredToken => "expired-token",
            Drop::BadProof => "bad-proof",
            Drop::Refused => "refused",
            Drop::BadBody => "bad-body",
            Drop::Unexpected => "unexpected",
            Drop::Stale => "stale",
            Drop::Overload => "overload",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub calls_sent: u64,
    pub calls_received: u64,
    pub calls_failed: u64,
    pub retransmissions: u64,
    pub busies_sent: u64,
    pub busies_received: u64,
    pub duplicate_requests: u64,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub sftp_bytes_sent: u64,
    pub sftp_bytes_received: u64,
    pub sftp_retransmissions: u64,
    /// Smoothed round-trip time and its variation, microseconds (0: none yet).
    pub srtt_us: u64,
    pub rttvar_us: u64,
    pub drops: [u64; DROP_REASONS],
}

impl Stats {
    pub fn dropped(&self, reason: Drop) -> u64 {
        self.drops[reason as usize]
    }

    pub fn drops_total(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Adds another connection's counters (RTT fields are not sums: kept).
    pub fn absorb(&mut self, other: &Stats) {
        self.calls_sent += other.calls_sent;
        self.calls_received += other.calls_received;
        self.calls_failed += other.calls_failed;
        self.retransmissions += other.retransmissions;
        self.busies_sent += other.busies_sent;
        self.busies_received += other.busies_received;
        self.duplicate_requests += other.duplicate_requests;
        self.packets_sent += other.packets_sent;
        self.packets_received += other.packets_received;
        self.bytes_sent += other.bytes_sent;
        self.bytes_received += other.bytes_received;
        self.sftp_bytes_sent += other.sftp_bytes_sent;
        self.sftp_bytes_received += other.sftp_bytes_received;
        self.sftp_retransmissions += other.sftp_retransmissions;
        for (a, b) in self.drops.iter_mut().zip(other.drops) {
            *a += b;
        }
    }
}
