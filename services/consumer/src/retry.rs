//! How long to wait before trying a failed delivery again: exponential backoff with jitter
//! and a cap, stretched to what the sink asked for in `Retry-After`.

use std::time::{Duration, SystemTime};

/// The longest `Retry-After` obeyed. A sink asking for more still gets this long a pause,
/// but an event does not hold its key for hours on one answer.
pub const RETRY_AFTER_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per event, the first included.
    pub attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Spreads each wait over its upper half, so that events that failed together do not
    /// come back together.
    pub jitter: bool,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry): `initialBackoff`
    /// doubled per retry, at most `maxBackoff`, with jitter between half and all of it.
    pub fn backoff(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        let full = self
            .initial_backoff
            .saturating_mul(1 << doublings)
            .min(self.max_backoff);
        if self.jitter {
            let half = full / 2;
            half + half.mul_f64(fastrand::f64())
        } else {
            full
        }
    }

    /// The wait before retry number `retry`, never shorter than the sink's `Retry-After`
    /// (as [`parse_retry_after`] bounds it).
    pub fn wait_before(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        let backoff = self.backoff(retry);
        match retry_after {
            Some(asked) => backoff.max(asked),
            None => backoff,
        }
    }
}

/// Reads a `Retry-After` value: delay seconds (`120`) or an HTTP date, relative to `now`,
/// at most [`RETRY_AFTER_LIMIT`]. Bounded here, where it enters, so that no later use
/// (a retry's wait, how long the breaker stays open, `Instant` arithmetic) sees a sink's
/// `18446744073709551615` or a date in the year 9999.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let asked = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = httpdate::parse_http_date(value).ok()?;
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(asked.min(RETRY_AFTER_LIMIT))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: bool) -> RetryPolicy {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(1),
            jitter,
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let waits: Vec<_> = (1..=5).map(|retry| policy(false).backoff(retry)).collect();
        assert_eq!(
            waits,
            [200, 400, 800, 1000, 1000].map(Duration::from_millis)
        );
    }

    #[test]
    fn jitter_stays_within_the_upper_half_of_the_wait() {
        for retry in 1..=6 {
            let full = policy(false).backoff(retry);
            for _ in 0..100 {
                let wait = policy(true).backoff(retry);
                assert!(wait >= full / 2 && wait <= full, "{wait:?} for {full:?}");
            }
        }
    }

    #[test]
    fn a_longer_retry_after_wins_over_the_backoff() {
        let wait = policy(false).wait_before(1, Some(Duration::from_secs(7)));
        assert_eq!(wait, Duration::from_secs(7));
        let wait = policy(false).wait_before(1, Some(Duration::from_millis(10)));
        assert_eq!(wait, Duration::from_millis(200));
        // What parse_retry_after let through, however long: the backoff cap does not cut it.
        let wait = policy(false).wait_before(1, Some(RETRY_AFTER_LIMIT));
        assert_eq!(wait, RETRY_AFTER_LIMIT);
    }

    #[test]
    fn retry_after_is_read_as_seconds_or_as_a_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn a_retry_after_beyond_the_limit_is_read_as_the_limit() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        for hostile in [
            "18446744073709551615",
            "86400",
            "Fri, 31 Dec 9999 23:59:59 GMT",
        ] {
            assert_eq!(
                parse_retry_after(hostile, now),
                Some(RETRY_AFTER_LIMIT),
                "{hostile}"
            );
        }
    }
}
