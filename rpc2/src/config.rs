//! An endpoint's settings, and the limits that bound every table.

use std::time::Duration;

use crate::packet::{DATAGRAM_BYTES_MAX, DATAGRAM_BYTES_MIN};
use crate::secure::{CellKey, Level};

/// Calls a caller may have outstanding on one connection: the span from its
/// oldest unanswered call to its newest. The callee's reply cache is
/// bounded by the same number.
pub const CALLS_WINDOW_MAX: u64 = 1024;
/// Binds in progress a server keeps at once.
pub const HALF_OPEN_MAX: usize = 4096;
/// Most SFTP datagrams in flight per transfer.
pub const SFTP_WINDOW_PACKETS_MAX: usize = 4096;
const _: () = assert!(
    CALLS_WINDOW_MAX <= u32::MAX as u64,
    "the window fits the aux field"
);

#[derive(Debug, Clone)]
pub struct Config {
    /// A call fails with a timeout after this long without a word from its
    /// peer; so does a bind.
    pub peer_timeout: Duration,
    pub rto_initial: Duration,
    pub rto_min: Duration,
    pub rto_max: Duration,
    /// How long a callee may take before it says BUSY; also added to a
    /// request's timeout as the callee's allowance for work.
    pub busy_delay: Duration,
    /// While a call is known to be running: how often the caller probes and
    /// the callee repeats BUSY.
    pub keepalive: Duration,
    /// How long a reply is kept for a caller that may not have it.
    pub reply_keep: Duration,
    /// Reply bytes kept per connection; past it the oldest are forgotten
    /// (their callers then get `ReplyLost`, never a second execution).
    pub reply_cache_bytes_max: usize,
    /// A server forgets a connection idle this long.
    pub idle_timeout: Duration,
    /// Datagram size on paths other than loopback (Ethernet MTU less IP and UDP).
    pub datagram_bytes: usize,
    /// Datagram size towards loopback peers.
    pub loopback_datagram_bytes: usize,
    pub sftp_window_packets: usize,
    pub sftp_ack_every_packets: u32,
    pub sftp_ack_delay: Duration,
    /// Whether this endpoint accepts binds, and below which level it refuses them.
    pub accept_binds: bool,
    pub level_min: Level,
    /// Opens tokens at bind; a server without it accepts only clear binds.
    pub cell_key: Option<CellKey>,
    /// Seeds connection ids and bind nonces; the glommio driver takes it
    /// from the OS, a simulation from its seed.
    pub rng_seed: u64,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            peer_timeout: Duration::from_secs(15),
            rto_initial: Duration::from_millis(100),
            rto_min: Duration::from_millis(1),
            rto_max: Duration::from_secs(2),
            busy_delay: Duration::from_millis(10),
            keepalive: Duration::from_millis(1000),
            reply_keep: Duration::from_secs(30),
            reply_cache_bytes_max: 1 << 20,
            idle_timeout: Duration::from_secs(3600),
            datagram_bytes: 1472,
            loopback_datagram_bytes: DATAGRAM_BYTES_MAX,
            sftp_window_packets: 64,
            sftp_ack_every_packets: 8,
            sftp_ack_delay: Duration::from_millis(1),
            accept_binds: false,
            level_min: Level::Clear,
            cell_key: None,
            rng_seed: 0,
        }
    }
}

impl Config {
    /// Checks the settings against each other; a bad one is a programming error.
    pub fn validate(&self) {
        assert!(self.rto_min <= self.rto_initial && self.rto_initial <= self.rto_max);
        assert!(
            self.keepalive < self.peer_timeout,
            "keepalive must be below the peer timeout"
        );
        for d in [self.datagram_bytes, self.loopback_datagram_bytes] {
            assert!(
                (DATAGRAM_BYTES_MIN..=DATAGRAM_BYTES_MAX).contains(&d),
                "datagram size {d}"
            );
        }
        assert!((1..=SFTP_WINDOW_PACKETS_MAX).contains(&self.sftp_window_packets));
        assert!(self.sftp_ack_every_packets >= 1);
    }
}
