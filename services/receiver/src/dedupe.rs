//! Remembers delivery ids for a route's dedupe window, so a sender's retry of a delivery
//! already made durable is acknowledged without publishing it twice. A retry that arrives
//! while the first attempt is still in flight waits for its outcome rather than racing it.
//! Kept per process, in memory: replicas do not share it and a restart empties it, so a
//! retry that reaches another replica (or a restarted one) is published again.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// Bound on remembered ids, so a flood of unique ids cannot grow memory without limit.
const MAX_ENTRIES: usize = 200_000;

/// A route and the SHA-256 of the delivery id: ids are held as digests, so an entry has
/// the same size however long the sender made its id (up to the header limit), and the
/// bound on entries bounds the bytes.
type Key = (String, [u8; 32]);

fn key(route: &str, delivery_id: &str) -> Key {
    let digest = ring::digest::digest(&ring::digest::SHA256, delivery_id.as_bytes());
    let mut bytes = [0; 32];
    bytes.copy_from_slice(digest.as_ref());
    (route.to_owned(), bytes)
}

enum Entry {
    /// The first attempt is publishing; `true` is sent when it became durable.
    InFlight(watch::Receiver<Option<bool>>),
    Durable {
        until: Instant,
    },
}

#[derive(Default)]
pub struct Dedupe {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Key, Entry>,
    /// Durable entries in the order they expire (windows differ per route, so roughly).
    expiry: VecDeque<(Instant, Key)>,
}

pub enum Claim<'a> {
    /// This request publishes; report the outcome through the guard.
    First(ClaimGuard<'a>),
    Duplicate,
}

/// Dropping it without `durable()` forgets the id, so the sender's retry publishes.
pub struct ClaimGuard<'a> {
    dedupe: &'a Dedupe,
    key: Option<Key>,
    window: Duration,
    outcome: watch::Sender<Option<bool>>,
}

impl ClaimGuard<'_> {
    pub fn durable(mut self) {
        if let Some(key) = self.key.take() {
            let until = Instant::now() + self.window;
            let mut inner = self.dedupe.lock();
            inner.expiry.push_back((until, key.clone()));
            inner.entries.insert(key, Entry::Durable { until });
            self.outcome.send_replace(Some(true));
        }
    }
}

impl Drop for ClaimGuard<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.dedupe.lock().entries.remove(&key);
            self.outcome.send_replace(Some(false));
        }
    }
}

impl Dedupe {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn claim(&self, route: &str, delivery_id: &str, window: Duration) -> Claim<'_> {
        let key = key(route, delivery_id);
        loop {
            let mut waiting = {
                let mut inner = self.lock();
                let now = Instant::now();
                inner.expire(now);
                match inner.entries.get(&key) {
                    Some(Entry::Durable { until }) if *until > now => return Claim::Duplicate,
                    Some(Entry::InFlight(outcome)) => outcome.clone(),
                    _ => {
                        let (outcome, receiver) = watch::channel(None);
                        inner.entries.insert(key.clone(), Entry::InFlight(receiver));
                        return Claim::First(ClaimGuard {
                            dedupe: self,
                            key: Some(key),
                            window,
                            outcome,
                        });
                    }
                }
            };
            // Wait for the first attempt; if it failed, try again as the first.
            let _ = waiting.wait_for(Option::is_some).await;
        }
    }
}

impl Inner {
    fn expire(&mut self, now: Instant) {
        while let Some((until, _)) = self.expiry.front() {
            if *until > now && self.expiry.len() <= MAX_ENTRIES {
                break;
            }
            let (until, key) = self.expiry.pop_front().expect("front exists");
            // Only the entry this expiry was queued for; a later claim may have renewed it.
            if matches!(self.entries.get(&key), Some(Entry::Durable { until: u }) if *u == until) {
                self.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_durable_delivery_is_a_duplicate_inside_the_window_only() {
        let dedupe = Dedupe::default();
        let window = Duration::from_millis(50);
        match dedupe.claim("r", "d1", window).await {
            Claim::First(guard) => guard.durable(),
            Claim::Duplicate => panic!("first delivery taken for a duplicate"),
        }
        assert!(matches!(
            dedupe.claim("r", "d1", window).await,
            Claim::Duplicate
        ));
        assert!(matches!(
            dedupe.claim("other", "d1", window).await,
            Claim::First(_)
        ));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(matches!(
            dedupe.claim("r", "d1", window).await,
            Claim::First(_)
        ));
    }

    #[tokio::test]
    async fn a_failed_first_attempt_lets_the_retry_publish() {
        let dedupe = Dedupe::default();
        let window = Duration::from_secs(60);
        let first = dedupe.claim("r", "d", window).await;
        let retry = async { dedupe.claim("r", "d", window).await };
        let fail_first = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(first);
        };
        let (claim, ()) = tokio::join!(retry, fail_first);
        assert!(matches!(claim, Claim::First(_)));
    }

    #[tokio::test]
    async fn ids_of_header_length_are_told_apart_and_held_as_digests() {
        let dedupe = Dedupe::default();
        let window = Duration::from_secs(60);
        let long = "x".repeat(8 * 1024);
        let (a, b) = (format!("{long}a"), format!("{long}b"));
        match dedupe.claim("r", &a, window).await {
            Claim::First(guard) => guard.durable(),
            Claim::Duplicate => panic!("first delivery taken for a duplicate"),
        }
        assert!(matches!(
            dedupe.claim("r", &a, window).await,
            Claim::Duplicate
        ));
        assert!(matches!(
            dedupe.claim("r", &b, window).await,
            Claim::First(_)
        ));
        let inner = dedupe.lock();
        let held: usize = inner
            .entries
            .keys()
            .map(|(route, _)| route.len() + 32)
            .sum();
        assert!(held < 100, "{held} bytes of keys for two 8 KiB ids");
    }
}
