//! Time as the core sees it: microseconds from an origin its driver picks.
//! The core reads no clock; the glommio driver passes monotonic time, the
//! simulator virtual time.

use std::ops::{Add, Sub};
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time(pub u64);

impl Time {
    pub const ZERO: Time = Time(0);

    pub fn from_micros(micros: u64) -> Time {
        Time(micros)
    }

    pub fn as_micros(self) -> u64 {
        self.0
    }

    /// The time since `earlier`, zero if it is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }

    /// The low 32 bits, as carried in packet timestamps.
    pub fn stamp(self) -> u32 {
        self.0 as u32
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_add(d.as_micros().min(u64::MAX as u128) as u64),
        )
    }
}

impl Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time(
            self.0
                .saturating_sub(d.as_micros().min(u64::MAX as u128) as u64),
        )
    }
}
