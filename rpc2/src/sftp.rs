//! SFTP, the side-effect bulk transfer: the data of a fetch or store flows
//! beside its call in a window of datagrams, acknowledged selectively.
//!
//! A data packet's body is a 24-byte prefix, then the data:
//! `start u64 | offset u64 | end u64` (little-endian), the transfer being the
//! bytes `[start, end)` of its source; `start` is where a resumed transfer
//! picks up. An ack carries the receiver's contiguous prefix and up to
//! `SACK_RANGES_MAX` ranges received beyond it.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use bytes::Bytes;

use crate::rtt::RttEstimator;
use crate::time::Time;

pub const DATA_PREFIX_BYTES: usize = 24;
pub const SACK_RANGES_MAX: usize = 16;
/// A packet is lost once this many packets sent after it were acknowledged.
const REORDER_PACKETS: u64 = 3;

/// Where the data of a transfer comes from.
#[derive(Debug)]
pub enum Source {
    Memory(Bytes),
    /// The first `len` bytes of a file, read in place (no staging copy).
    File {
        file: File,
        len: u64,
    },
}

impl Source {
    pub fn len(&self) -> u64 {
        match self {
            Source::Memory(b) => b.len() as u64,
            Source::File { len, .. } => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every byte, for data small enough to travel inside a request.
    pub(crate) fn to_bytes(&self) -> io::Result<Bytes> {
        match self {
            Source::Memory(b) => Ok(b.clone()),
            Source::File { len, .. } => {
                let mut buf = vec![0; *len as usize];
                self.read_exact_at(0, &mut buf)?;
                Ok(buf.into())
            }
        }
    }

    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Source::Memory(b) => {
                let start = offset as usize;
                buf.copy_from_slice(&b[start..start + buf.len()]);
                Ok(())
            }
            Source::File { file, .. } => file.read_exact_at(buf, offset),
        }
    }
}

/// Where the data of a transfer goes.
#[derive(Debug)]
pub enum Sink {
    /// Bytes at their offsets in a vector that may not grow past `limit`.
    Memory {
        data: Vec<u8>,
        limit: u64,
    },
    File(File),
}

impl Sink {
    pub fn memory(limit: u64) -> Sink {
        Sink::Memory {
            data: Vec::new(),
            limit,
        }
    }

    pub(crate) fn write_all_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::Memory { data, limit } => {
                let end = offset + bytes.len() as u64;
                if end > *limit {
                    return Err(io::Error::new(
                        io::ErrorKind::FileTooLarge,
                        format!("transfer reaches {end} bytes, over the limit of {limit}"),
                    ));
                }
                if data.len() < end as usize {
                    data.resize(end as usize, 0);
                }
                data[offset as usize..end as usize].copy_from_slice(bytes);
                Ok(())
            }
            Sink::File(file) => file.write_all_at(bytes, offset),
        }
    }

    /// The bytes of a memory sink (empty for a file sink).
    pub fn into_bytes(self) -> Vec<u8> {
        match self {
            Sink::Memory { data, .. } => data,
            Sink::File(_) => Vec::new(),
        }
    }
}

crate::codec_struct! {
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Ack {
        pub contiguous: u64,
        pub ranges: Vec<(u64, u64)>,
    }
}

#[derive(Debug, Clone, Copy)]
struct Flight {
    len: u32,
    sent_at: Time,
    order: u64,
    retransmitted: bool,
}

/// The sending side of a transfer.
#[derive(Debug)]
pub struct Sender {
    source: Source,
    start: u64,
    end: u64,
    /// The next byte never sent.
    next: u64,
    /// Nothing to send but the end itself (an empty transfer).
    empty_pending: bool,
    flights: BTreeMap<u64, Flight>,
    lost: std::collections::BTreeSet<u64>,
    acked_to: u64,
    order: u64,
    window_packets: usize,
    /// Timeouts in a row without progress.
    backoff: u32,
    pub last_progress: Time,
    /// Queued in the endpoint's list of senders with data to go.
    pub queued: bool,
}

/// What the sender put in the buffer.
pub struct Sent {
    pub bytes: u64,
    pub retransmission: bool,
}

impl Sender {
    pub fn new(source: Source, start: u64, window_packets: usize, now: Time) -> Sender {
        let end = source.len();
        let start = start.min(end);
        Sender {
            source,
            start,
            end,
            next: start,
            empty_pending: start == end,
            flights: BTreeMap::new(),
            lost: Default::default(),
            acked_to: start,
            order: 0,
            window_packets: window_packets.max(1),
            backoff: 0,
            last_progress: now,
            queued: false,
        }
    }

    pub fn can_send(&self) -> bool {
        !self.lost.is_empty()
            || (self.flights.len() < self.window_packets
                && (self.next < self.end || self.empty_pending))
    }

    pub fn done(&self) -> bool {
        !self.empty_pending && self.acked_to >= self.end && self.flights.is_empty()
    }

    /// Appends the next data body (prefix and up to `chunk` bytes) to `out`.
    pub fn write_next(&mut self, now: Time, chunk: usize, out: &mut Vec<u8>) -> io::Result<Sent> {
        let (offset, len, retransmission) = if let Some(offset) = self.lost.pop_first() {
            (offset, self.flights[&offset].len, true)
        } else {
            let len = (self.end - self.next).min(chunk as u64) as u32;
            let offset = self.next;
            self.next += u64::from(len);
            self.empty_pending = false;
            (offset, len, false)
        };
        out.extend_from_slice(&self.start.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&self.end.to_le_bytes());
        let at = out.len();
        out.resize(at + len as usize, 0);
        self.source.read_exact_at(offset, &mut out[at..])?;
        self.order += 1;
        self.flights.insert(
            offset,
            Flight {
                len,
                sent_at: now,
                order: self.order,
                retransmitted: retransmission,
            },
        );
        Ok(Sent {
            bytes: len.into(),
            retransmission,
        })
    }

    /// Takes an ack; returns the bytes newly acknowledged.
    pub fn on_ack(&mut self, now: Time, ack: &Ack, rtt: &mut RttEstimator) -> u64 {
        let covered = |offset: u64, len: u32| {
            let end = offset + u64::from(len);
            end <= ack.contiguous
                || ack
                    .ranges
                    .iter()
                    .any(|&(s, e)| s <= offset && end <= e && s < e)
        };
        let mut newest: Option<Flight> = None;
        let mut acked_bytes = 0;
        self.flights.retain(|&offset, f| {
            if !covered(offset, f.len) {
                return true;
            }
            acked_bytes += u64::from(f.len);
            if newest.is_none_or(|n| f.order > n.order) {
                newest = Some(*f);
            }
            false
        });
        self.lost.retain(|o| self.flights.contains_key(o));
        if let Some(n) = newest {
            if !n.retransmitted {
                rtt.sample(now.since(n.sent_at));
            }
            for (&offset, f) in &self.flights {
                if f.order + REORDER_PACKETS <= n.order {
                    self.lost.insert(offset);
                }
            }
        }
        // A contiguous prefix past the end means "everything".
        self.acked_to = self.acked_to.max(ack.contiguous.min(self.end));
        if acked_bytes > 0 {
            self.last_progress = now;
            self.backoff = 0;
        }
        acked_bytes
    }

    /// Marks packets unacknowledged for `rto` as lost; true if any were.
    pub fn on_timeout(&mut self, now: Time, rto: Duration) -> bool {
        let rto = self.backed_off(rto);
        let before = self.lost.len();
        for (&offset, f) in &self.flights {
            if f.sent_at + rto <= now {
                self.lost.insert(offset);
            }
        }
        let any = self.lost.len() > before;
        if any {
            self.backoff += 1;
        }
        any
    }

    /// Timeouts double while no ack makes progress.
    fn backed_off(&self, rto: Duration) -> Duration {
        rto * (1u32 << self.backoff.min(6))
    }

    /// When the oldest unacknowledged packet times out.
    pub fn deadline(&self, rto: Duration) -> Option<Time> {
        let rto = self.backed_off(rto);
        self.flights
            .iter()
            .filter(|(o, _)| !self.lost.contains(o))
            .map(|(_, f)| f.sent_at + rto)
            .min()
    }

    /// The length of the transfer.
    pub fn bytes(&self) -> u64 {
        self.end - self.start
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    #[error("data packet body shorter than its prefix")]
    Short,
    #[error("data packet range is inconsistent")]
    Inconsistent,
    #[error("data beyond the receive window")]
    BeyondWindow,
}

/// The receiving side of a transfer.
#[derive(Debug)]
pub struct Receiver {
    sink: Sink,
    start: Option<u64>,
    end: Option<u64>,
    contiguous: u64,
    /// Ranges received beyond the contiguous prefix, start to end.
    beyond: BTreeMap<u64, u64>,
    window_bytes: u64,
    since_ack: u32,
    pub ack_due: Option<Time>,
    pub last_progress: Time,
    pub received_bytes: u64,
}

pub enum Received {
    New,
    Duplicate,
}

impl Receiver {
    /// A receiver for data from `start` on (None: from wherever the sender starts).
    pub fn new(sink: Sink, start: Option<u64>, window_bytes: u64, now: Time) -> Receiver {
        Receiver {
            sink,
            start,
            end: None,
            contiguous: start.unwrap_or(0),
            beyond: BTreeMap::new(),
            window_bytes,
            since_ack: 0,
            ack_due: None,
            last_progress: now,
            received_bytes: 0,
        }
    }

    pub fn complete(&self) -> bool {
        self.end == Some(self.contiguous)
    }

    pub fn expected_end(&self) -> Option<u64> {
        self.end
    }

    /// Takes one data body; an I/O error of the sink is the transfer's end.
    pub fn on_data(
        &mut self,
        now: Time,
        body: &[u8],
    ) -> Result<Result<Received, DataError>, io::Error> {
        if body.len() < DATA_PREFIX_BYTES {
            return Ok(Err(DataError::Short));
        }
        let word = |i: usize| u64::from_le_bytes(body[i * 8..i * 8 + 8].try_into().unwrap());
        let (start, offset, end) = (word(0), word(1), word(2));
        let data = &body[DATA_PREFIX_BYTES..];
        let data_end = match offset.checked_add(data.len() as u64) {
            Some(e) if start <= offset && e <= end => e,
            _ => return Ok(Err(DataError::Inconsistent)),
        };
        match self.start {
            None => {
                self.start = Some(start);
                self.contiguous = start;
            }
            Some(s) if s != start => return Ok(Err(DataError::Inconsistent)),
            Some(_) => {}
        }
        match self.end {
            None => self.end = Some(end),
            Some(e) if e != end => return Ok(Err(DataError::Inconsistent)),
            Some(_) => {}
        }
        if data_end > self.contiguous.saturating_add(self.window_bytes) {
            return Ok(Err(DataError::BeyondWindow));
        }
        let duplicate = data_end <= self.contiguous && !data.is_empty()
            || self
                .beyond
                .range(..=offset)
                .next_back()
                .is_some_and(|(_, &e)| e >= data_end)
                && !data.is_empty();
        if duplicate {
            return Ok(Ok(Received::Duplicate));
        }
        self.sink.write_all_at(offset, data)?;
        self.received_bytes += data.len() as u64;
        self.last_progress = now;
        self.insert(offset.max(self.contiguous), data_end);
        self.since_ack += 1;
        Ok(Ok(Received::New))
    }

    fn insert(&mut self, mut start: u64, mut end: u64) {
        if end <= start {
            return;
        }
        // Merge with every range that touches [start, end).
        let touching: Vec<u64> = self
            .beyond
            .range(..=end)
            .filter(|(&s, &e)| e >= start && s <= end)
            .map(|(&s, _)| s)
            .collect();
        for s in touching {
            let e = self.beyond.remove(&s).unwrap();
            start = start.min(s);
            end = end.max(e);
        }
        if start <= self.contiguous {
            self.contiguous = self.contiguous.max(end);
        } else {
            self.beyond.insert(start, end);
        }
    }

    /// The ack to send now.
    pub fn ack(&mut self) -> Ack {
        self.since_ack = 0;
        self.ack_due = None;
        Ack {
            contiguous: self.contiguous,
            ranges: self
                .beyond
                .iter()
                .take(SACK_RANGES_MAX)
                .map(|(&s, &e)| (s, e))
                .collect(),
        }
    }

    /// Whether an ack should go at once: a gap, the end, or enough packets.
    pub fn ack_now(&self, every_packets: u32) -> bool {
        self.complete() || !self.beyond.is_empty() || self.since_ack >= every_packets
    }

    pub fn into_sink(self) -> Sink {
        self.sink
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtt() -> RttEstimator {
        RttEstimator::new(
            Duration::from_millis(10),
            Duration::from_millis(1),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn a_transfer_with_losses_and_reordering_arrives_whole() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut tx = Sender::new(Source::Memory(Bytes::from(data.clone())), 0, 8, Time(0));
        let mut rx = Receiver::new(Sink::memory(1 << 20), None, 1 << 20, Time(0));
        let mut rtt = rtt();
        let mut now = Time(0);
        let mut round = 0u64;
        while !tx.done() {
            round += 1;
            assert!(round < 10_000, "transfer stuck");
            let mut batch = Vec::new();
            while tx.can_send() {
                let mut body = Vec::new();
                tx.write_next(now, 700, &mut body).unwrap();
                batch.push(body);
            }
            batch.reverse(); // reorder
            for (i, body) in batch.iter().enumerate() {
                if (i as u64 + round) % 3 == 0 {
                    continue; // lose it
                }
                rx.on_data(now, body).unwrap().unwrap();
            }
            now = now + Duration::from_millis(20);
            let ack = rx.ack();
            tx.on_ack(now, &ack, &mut rtt);
            tx.on_timeout(now, rtt.rto());
        }
        assert!(rx.complete());
        assert_eq!(rx.into_sink().into_bytes(), data);
    }

    #[test]
    fn a_resumed_transfer_sends_only_from_its_offset() {
        let data = Bytes::from(vec![5u8; 3000]);
        let mut tx = Sender::new(Source::Memory(data), 2000, 4, Time(0));
        let mut body = Vec::new();
        let sent = tx.write_next(Time(0), 5000, &mut body).unwrap();
        assert_eq!(sent.bytes, 1000);
        let mut rx = Receiver::new(Sink::memory(4000), Some(2000), 1 << 20, Time(0));
        assert!(matches!(
            rx.on_data(Time(0), &body).unwrap(),
            Ok(Received::New)
        ));
        assert!(rx.complete());
        assert!(matches!(
            rx.on_data(Time(0), &body).unwrap(),
            Ok(Received::Duplicate)
        ));
    }

    #[test]
    fn an_empty_transfer_still_sends_its_end() {
        let mut tx = Sender::new(Source::Memory(Bytes::new()), 0, 4, Time(0));
        assert!(tx.can_send() && !tx.done());
        let mut body = Vec::new();
        tx.write_next(Time(0), 100, &mut body).unwrap();
        let mut rx = Receiver::new(Sink::memory(0), None, 1 << 20, Time(0));
        rx.on_data(Time(0), &body).unwrap().unwrap();
        assert!(rx.complete());
        tx.on_ack(Time(1), &rx.ack(), &mut rtt());
        assert!(tx.done());
    }

    #[test]
    fn inconsistent_or_oversized_data_is_refused() {
        let mut rx = Receiver::new(Sink::memory(100), None, 1 << 20, Time(0));
        let mut body = Vec::new();
        for w in [0u64, 50, 40] {
            body.extend_from_slice(&w.to_le_bytes());
        }
        assert!(matches!(
            rx.on_data(Time(0), &body).unwrap(),
            Err(DataError::Inconsistent)
        ));
        assert!(matches!(
            rx.on_data(Time(0), &body[..10]).unwrap(),
            Err(DataError::Short)
        ));
        let mut big = Vec::new();
        for w in [0u64, 0, 1000] {
            big.extend_from_slice(&w.to_le_bytes());
        }
        big.extend_from_slice(&[1u8; 200]);
        assert!(rx.on_data(Time(0), &big).is_err(), "memory sink limit");
    }
}
