//! Round-trip time estimation (Jacobson/Karels, RFC 6298) and the
//! retransmission timeout with exponential back-off.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct RttEstimator {
    /// Smoothed RTT and its mean deviation, in microseconds; None before the
    /// first sample.
    srtt_us: Option<u64>,
    rttvar_us: u64,
    initial: Duration,
    min: Duration,
    max: Duration,
}

impl RttEstimator {
    pub fn new(initial: Duration, min: Duration, max: Duration) -> RttEstimator {
        assert!(min <= initial && initial <= max);
        RttEstimator {
            srtt_us: None,
            rttvar_us: 0,
            initial,
            min,
            max,
        }
    }

    pub fn sample(&mut self, rtt: Duration) {
        let r = rtt.as_micros().min(u64::MAX as u128) as u64;
        match self.srtt_us {
            None => {
                self.srtt_us = Some(r);
                self.rttvar_us = r / 2;
            }
            Some(srtt) => {
                // rttvar = 3/4 rttvar + 1/4 |srtt - r|; srtt = 7/8 srtt + 1/8 r
                self.rttvar_us = (3 * self.rttvar_us + srtt.abs_diff(r)) / 4;
                self.srtt_us = Some((7 * srtt + r) / 8);
            }
        }
    }

    pub fn srtt(&self) -> Option<Duration> {
        self.srtt_us.map(Duration::from_micros)
    }

    pub fn rttvar(&self) -> Duration {
        Duration::from_micros(self.rttvar_us)
    }

    /// The timeout for a first transmission.
    pub fn rto(&self) -> Duration {
        let rto = match self.srtt_us {
            None => self.initial,
            Some(srtt) => Duration::from_micros(srtt + 4 * self.rttvar_us),
        };
        rto.clamp(self.min, self.max)
    }

    /// The timeout after `retries` retransmissions: doubled each time.
    pub fn backoff(&self, retries: u32) -> Duration {
        let factor = 1u32 << retries.min(16);
        self.rto().saturating_mul(factor).min(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_follows_samples_and_backs_off_to_the_cap() {
        let ms = Duration::from_millis;
        let mut e = RttEstimator::new(ms(100), ms(1), ms(2000));
        assert_eq!(e.rto(), ms(100));
        e.sample(ms(10));
        assert_eq!(e.srtt(), Some(ms(10)));
        assert_eq!(e.rto(), ms(30)); // 10 + 4 * 5
        for _ in 0..50 {
            e.sample(ms(10));
        }
        assert!(e.rto() < ms(12), "{:?}", e.rto());
        assert!(e.backoff(1) >= e.rto() * 2 - Duration::from_micros(1));
        assert_eq!(e.backoff(30), ms(2000));
        e.sample(Duration::ZERO);
        assert!(e.rto() >= ms(1));
    }
}
