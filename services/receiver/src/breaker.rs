//! The circuit breaker between the receiver and Kafka. A send does not fail fast on its
//! own (librdkafka queues it for `message.timeout.ms`), so the breaker also listens to
//! librdkafka's broker-down and error signals; while it is not closed, events go to the spool.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::config::BreakerConfig;
use crate::metrics::Metrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Kafka is presumed away; nothing is sent until `open_for` has passed.
    Open,
    /// One probe may go through: its success closes the breaker, its failure reopens it.
    HalfOpen,
}

struct Inner {
    state: BreakerState,
    consecutive_failures: u32,
    open_until: Instant,
    open_for: Duration,
}

pub struct Breaker {
    config: BreakerConfig,
    inner: Mutex<Inner>,
    changes: watch::Sender<BreakerState>,
    metrics: Metrics,
}

impl Breaker {
    pub fn new(config: BreakerConfig, metrics: Metrics) -> Self {
        Self {
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                open_until: Instant::now(),
                open_for: config.open_for,
            }),
            config,
            changes: watch::Sender::new(BreakerState::Closed),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn state(&self) -> BreakerState {
        let mut inner = self.lock();
        if inner.state == BreakerState::Open && Instant::now() >= inner.open_until {
            self.transition(&mut inner, BreakerState::HalfOpen);
        }
        inner.state
    }

    /// The state as it stands, without moving an open breaker whose wait has passed to
    /// half-open (only the drainer's probing should do that).
    pub fn current(&self) -> BreakerState {
        self.lock().state
    }

    /// When an open breaker lets the next probe through.
    pub fn probe_at(&self) -> Instant {
        self.lock().open_until
    }

    pub fn subscribe(&self) -> watch::Receiver<BreakerState> {
        self.changes.subscribe()
    }

    pub fn record_success(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures = 0;
        inner.open_for = self.config.open_for;
        self.transition(&mut inner, BreakerState::Closed);
    }

    pub fn record_failure(&self) {
        let mut inner = self.lock();
        inner.consecutive_failures += 1;
        match inner.state {
            BreakerState::Closed if inner.consecutive_failures >= self.config.failure_threshold => {
                self.open(&mut inner, "delivery failures")
            }
            BreakerState::HalfOpen => self.reopen(&mut inner, "the probe failed"),
            _ => {}
        }
    }

    /// librdkafka says no broker is reachable (or the producer hit a fatal error). In
    /// half-open that is a failed probe: the wait doubles, as it does for a failed delivery.
    pub fn brokers_down(&self, why: &str) {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => self.open(&mut inner, why),
            BreakerState::HalfOpen => self.reopen(&mut inner, why),
            BreakerState::Open => {}
        }
    }

    /// Back to open after a half-open probe failed, waiting twice as long (up to the cap).
    fn reopen(&self, inner: &mut Inner, why: &str) {
        inner.open_for = (inner.open_for * 2).min(self.config.max_open_for);
        self.open(inner, why);
    }

    /// librdkafka has a broker connection up: an open breaker may probe at once.
    pub fn brokers_up(&self) {
        let mut inner = self.lock();
        if inner.state == BreakerState::Open {
            inner.open_until = Instant::now();
            self.transition(&mut inner, BreakerState::HalfOpen);
        }
    }

    fn open(&self, inner: &mut Inner, why: &str) {
        inner.open_until = Instant::now() + inner.open_for;
        tracing::warn!(reason = why, retry_in = ?inner.open_for, "circuit breaker open: events go to the spool");
        self.transition(inner, BreakerState::Open);
    }

    fn transition(&self, inner: &mut Inner, to: BreakerState) {
        if inner.state == to {
            return;
        }
        if to == BreakerState::Closed {
            tracing::info!("circuit breaker closed: Kafka acknowledges again");
        }
        inner.state = to;
        self.metrics.breaker_state.set(match to {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        });
        self.changes.send_replace(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(open_for_ms: u64) -> Breaker {
        Breaker::new(
            BreakerConfig {
                failure_threshold: 3,
                open_for: Duration::from_millis(open_for_ms),
                max_open_for: Duration::from_millis(open_for_ms * 4),
            },
            Metrics::default(),
        )
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_in_between_resets_the_count() {
        let breaker = breaker(10_000);
        breaker.record_failure();
        breaker.record_failure();
        breaker.record_success();
        breaker.record_failure();
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn an_open_breaker_half_opens_after_its_wait_and_a_failed_probe_reopens_it() {
        let breaker = breaker(20);
        breaker.brokers_down("all brokers down");
        assert_eq!(breaker.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        breaker.brokers_up();
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn brokers_down_in_half_open_doubles_the_wait_up_to_the_cap() {
        let breaker = breaker(100);
        breaker.brokers_down("all brokers down");
        let waits: Vec<Duration> = (0..4)
            .map(|_| {
                breaker.brokers_up();
                assert_eq!(breaker.current(), BreakerState::HalfOpen);
                let before = Instant::now();
                breaker.brokers_down("all brokers down");
                assert_eq!(breaker.current(), BreakerState::Open);
                breaker.probe_at() - before
            })
            .collect();
        for (wait, expected_ms) in waits.iter().zip([200, 400, 400, 400]) {
            let expected = Duration::from_millis(expected_ms);
            assert!(
                *wait >= expected && *wait < expected + Duration::from_millis(50),
                "waits {waits:?}, expected doubling from 100 ms to the 400 ms cap"
            );
        }
        breaker.record_success();
        breaker.brokers_down("all brokers down");
        let wait = breaker.probe_at() - Instant::now();
        assert!(
            wait <= Duration::from_millis(100),
            "{wait:?}: a success resets the wait"
        );
    }
}
