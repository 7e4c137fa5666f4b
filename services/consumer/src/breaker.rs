//! The circuit breaker in front of the sink. After a run of failed attempts it opens: events
//! wait instead of spending their retries on a sink that is down, the dispatcher pauses the
//! partitions, and one probe at a time tests whether the sink is back.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::retry::RetryPolicy;

/// Failed attempts in a row, over all events, that open the breaker. Low enough that an
/// event with the default five attempts still has some left when the sink goes down.
pub const FAILURE_THRESHOLD: u32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant, opens: u32 },
    HalfOpen { opens: u32, probing: bool },
}

#[derive(Debug)]
pub struct CircuitBreaker {
    state: Mutex<State>,
    /// `true` while not closed; every change of state is sent, so waiters wake.
    open: watch::Sender<bool>,
    /// How long the breaker stays open: the retry backoff of the n-th opening in a row.
    open_for: RetryPolicy,
}

/// Leave to send one attempt. A probe that is dropped without a verdict (shutdown) lets the
/// next waiter probe instead.
#[derive(Debug)]
pub struct Pass<'a> {
    breaker: &'a CircuitBreaker,
    probe: bool,
    settled: bool,
}

impl Pass<'_> {
    /// A probe of a sink believed down: its failure is the breaker's, not the event's, so it
    /// does not use up one of the event's attempts.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// The sink took or refused the event itself: it is up.
    pub fn sink_answered(mut self) {
        self.settled = true;
        self.breaker.close();
    }

    /// The attempt failed in a way that says the sink is down or overloaded.
    pub fn sink_failed(mut self, retry_after: Option<Duration>) {
        self.settled = true;
        self.breaker.failed(self.probe, retry_after);
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            let mut state = self.breaker.lock();
            if let State::HalfOpen { opens, .. } = *state {
                *state = State::HalfOpen {
                    opens,
                    probing: false,
                };
                drop(state);
                self.breaker.open.send_replace(true);
            }
        }
    }
}

impl CircuitBreaker {
    pub fn new(open_for: RetryPolicy) -> Self {
        Self {
            state: Mutex::new(State::Closed { failures: 0 }),
            open: watch::channel(false).0,
            open_for,
        }
    }

    /// Watches whether the breaker is open (or half open).
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.open.subscribe()
    }

    pub fn is_open(&self) -> bool {
        !matches!(*self.lock(), State::Closed { .. })
    }

    /// Waits until an attempt may be sent: at once while closed; while open, until this
    /// caller is the one to probe.
    pub async fn pass(&self) -> Pass<'_> {
        loop {
            let mut changed = self.open.subscribe();
            let wait_until = {
                let mut state = self.lock();
                match *state {
                    State::Closed { .. } => return self.grant(false),
                    State::Open { until, opens } if Instant::now() >= until => {
                        *state = State::HalfOpen {
                            opens,
                            probing: true,
                        };
                        return self.grant(true);
                    }
                    State::HalfOpen {
                        opens,
                        probing: false,
                    } => {
                        *state = State::HalfOpen {
                            opens,
                            probing: true,
                        };
                        return self.grant(true);
                    }
                    State::Open { until, .. } => Some(until),
                    State::HalfOpen { probing: true, .. } => None,
                }
            };
            match wait_until {
                Some(until) => {
                    tokio::select! {
                        _ = changed.changed() => {}
                        _ = tokio::time::sleep_until(until) => {}
                    }
                }
                None => {
                    let _ = changed.changed().await;
                }
            }
        }
    }

    fn grant(&self, probe: bool) -> Pass<'_> {
        Pass {
            breaker: self,
            probe,
            settled: false,
        }
    }

    fn close(&self) {
        let mut state = self.lock();
        let was_closed = matches!(*state, State::Closed { .. });
        *state = State::Closed { failures: 0 };
        drop(state);
        if !was_closed {
            tracing::info!("the sink answers again: circuit breaker closed");
            self.open.send_replace(false);
        }
    }

    fn failed(&self, probe: bool, retry_after: Option<Duration>) {
        let mut state = self.lock();
        let opens = match *state {
            State::Closed { failures } if failures + 1 < FAILURE_THRESHOLD => {
                *state = State::Closed {
                    failures: failures + 1,
                };
                return;
            }
            State::Closed { .. } => 1,
            State::HalfOpen { opens, .. } if probe => opens + 1,
            // An attempt sent before the breaker opened: it is already open.
            State::Open { .. } | State::HalfOpen { .. } => return,
        };
        let open_for = self
            .open_for
            .backoff(opens)
            .max(retry_after.unwrap_or_default());
        *state = State::Open {
            until: Instant::now() + open_for,
            opens,
        };
        drop(state);
        tracing::warn!(?open_for, "the sink is failing: circuit breaker open");
        self.open.send_replace(true);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            jitter: false,
        })
    }

    async fn fail_times(breaker: &CircuitBreaker, times: u32) {
        for _ in 0..times {
            breaker.pass().await.sink_failed(None);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn it_opens_after_a_run_of_failures_and_a_success_in_between_resets_the_run() {
        let breaker = breaker();
        fail_times(&breaker, FAILURE_THRESHOLD - 1).await;
        breaker.pass().await.sink_answered();
        fail_times(&breaker, FAILURE_THRESHOLD - 1).await;
        assert!(!breaker.is_open());
        fail_times(&breaker, 1).await;
        assert!(breaker.is_open());
        assert!(*breaker.subscribe().borrow());
    }

    #[tokio::test(start_paused = true)]
    async fn while_open_one_probe_at_a_time_goes_out_after_the_open_period() {
        let breaker = breaker();
        fail_times(&breaker, FAILURE_THRESHOLD).await;
        let opened = Instant::now();
        let probe = breaker.pass().await;
        assert!(probe.is_probe());
        assert!(opened.elapsed() >= Duration::from_millis(100));

        // A second caller waits for the probe's verdict.
        let second = tokio::time::timeout(Duration::from_secs(5), breaker.pass()).await;
        assert!(
            second.is_err(),
            "a second pass was granted during the probe"
        );

        probe.sink_answered();
        let after = breaker.pass().await;
        assert!(!after.is_probe());
        assert!(!breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_keeps_it_open_longer_and_retry_after_stretches_it() {
        let breaker = breaker();
        fail_times(&breaker, FAILURE_THRESHOLD).await;
        breaker
            .pass()
            .await
            .sink_failed(Some(Duration::from_secs(3)));
        let reopened = Instant::now();
        let probe = breaker.pass().await;
        assert!(probe.is_probe());
        assert!(reopened.elapsed() >= Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_another_caller_probe() {
        let breaker = breaker();
        fail_times(&breaker, FAILURE_THRESHOLD).await;
        drop(breaker.pass().await);
        let next = tokio::time::timeout(Duration::from_secs(1), breaker.pass())
            .await
            .expect("another probe");
        assert!(next.is_probe());
    }
}
