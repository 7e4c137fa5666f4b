//! hook-receiver: receives webhooks, verifies their signatures, and publishes each as a
//! CloudEvent on Kafka; while Kafka is away it spools to local disk, and nothing it answered
//! 2xx is lost. `run` is the whole service; `main.rs` only reads the command line.

pub mod auth;
pub mod breaker;
pub mod config;
pub mod dedupe;
pub mod extract;
pub mod metrics;
pub mod publisher;
pub mod server;
pub mod spool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bridge_events::{LifecyclePhase, lifecycle_event};
use bridge_runtime::Readiness;
use prometheus_client::registry::Registry;

use crate::breaker::{Breaker, BreakerState};
use crate::config::ReceiverConfig;
use crate::publisher::Publisher;
use crate::server::{AuditLimiter, Receiver, Route};
use crate::spool::{Spool, SpoolFull};

pub const SERVICE: &str = "hook-receiver";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the spool at {dir}: {source}")]
    Spool {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the Kafka producer: {0}")]
    Producer(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Secret(#[from] auth::SecretError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Runs until `shutdown` completes, then stops intake, finishes the requests in flight
/// (each ends acknowledged or spooled), flushes the producer and returns.
pub async fn run(
    config: ReceiverConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = metrics::Metrics::default();
    let mut registry = Registry::with_prefix("hook_receiver");
    metrics.register(&mut registry);
    let readiness = Readiness::new("starting");
    let instance = config
        .instance
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("{SERVICE}-{}", std::process::id()));

    let (spool, recovery) = Spool::open(
        &config.spool.dir,
        config.spool.max_bytes,
        config.spool.segment_bytes,
        metrics.clone(),
    )
    .map_err(|source| Error::Spool {
        dir: config.spool.dir.display().to_string(),
        source,
    })?;
    if recovery.records > 0 || recovery.torn_bytes > 0 {
        tracing::info!(
            records = recovery.records,
            torn_bytes = recovery.torn_bytes,
            "recovered the spool of an earlier run; it drains before new events"
        );
    }
    let spool = Arc::new(spool);
    let breaker = Arc::new(Breaker::new(config.breaker.clone(), metrics.clone()));
    let idempotence = Arc::new(publisher::IdempotenceState::default());
    let producer = publisher::create_producer(&config.kafka, breaker.clone(), idempotence.clone())?;
    let publisher = Publisher::new(
        producer,
        idempotence,
        spool.clone(),
        breaker.clone(),
        config.publish_timeout,
        metrics.clone(),
    );
    tokio::spawn(publisher.clone().follow_breaker());
    let drainer = tokio::spawn(publisher.clone().drain());
    announce(
        &publisher,
        &config.lifecycle_topic,
        &instance,
        LifecyclePhase::Starting,
    );

    let routes = config
        .routes
        .iter()
        .map(|route| {
            Ok(Route {
                name: route.name.clone(),
                path: route.path.clone(),
                topic: route.topic.clone(),
                verifier: auth::Verifier::load(&route.name, &route.auth)?,
                rules: extract::EventRules::new(&config.source, route),
                max_body_bytes: route.max_body_bytes,
                dedupe_window: route.dedupe_window,
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let receiver = Arc::new(Receiver {
        publisher: publisher.clone(),
        dedupe: dedupe::Dedupe::default(),
        audit: AuditLimiter::new(config.audit_events_per_second),
        audit_topic: config.audit_topic.clone(),
        metrics: metrics.clone(),
    });
    let app = server::router(receiver, routes, config.read_timeout);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            address: config.listen,
            source,
        })?;
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = bridge_runtime::serve_admin(
        config.admin_listen,
        Arc::new(registry),
        readiness.clone(),
        async {
            let _ = admin_stopped.await;
        },
    )
    .await
    .map_err(|source| Error::Listen {
        address: config.admin_listen,
        source,
    })?;
    let admin = tokio::spawn(admin);

    let gate = Arc::new(ReadinessGate::new(readiness));
    let signalled = Arc::new(tokio::sync::Notify::new());
    let stop_intake = {
        let signalled = signalled.clone();
        let gate = gate.clone();
        async move {
            shutdown.await;
            gate.stop("shutting down");
            signalled.notify_one();
        }
    };
    tracing::info!(listen = %config.listen, routes = config.routes.len(), "receiving webhooks");
    let readiness_follower = tokio::spawn(follow_readiness(gate, spool, breaker));
    announce(
        &publisher,
        &config.lifecycle_topic,
        &instance,
        LifecyclePhase::Ready,
    );

    let serve = axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop_intake);
    let bound = config.shutdown_timeout;
    tokio::select! {
        served = serve => {
            if let Err(error) = served {
                tracing::error!(%error, "the webhook server failed");
            }
        }
        () = async { signalled.notified().await; tokio::time::sleep(bound).await } => {
            tracing::warn!(?bound, "requests were still open when the shutdown bound passed");
        }
    }

    tracing::info!("intake stopped; flushing the producer");
    readiness_follower.abort();
    drainer.abort();
    let stopping = lifecycle_event(SERVICE, &instance, LifecyclePhase::Stopping);
    publisher
        .publish_best_effort(&config.lifecycle_topic, &stopping, Duration::from_secs(2))
        .await;
    publisher.flush(Duration::from_secs(5)).await;
    let _ = stop_admin.send(());
    let _ = admin.await;
    tracing::info!("stopped");
    Ok(())
}

/// What `/readyz` says while the receiver serves: ready, unless the spool is full while
/// Kafka is away (the breaker is open or half-open). Such a replica can only answer 503, so
/// a load balancer or a Kubernetes Service should send webhooks to another one. It is ready
/// again as soon as the spool has room, or Kafka is back (the breaker closed: the drain
/// then makes room).
pub fn serving_readiness(
    spool_full: Option<SpoolFull>,
    breaker: BreakerState,
) -> Result<(), String> {
    let kafka = match breaker {
        BreakerState::Closed => return Ok(()),
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half-open",
    };
    match spool_full {
        None => Ok(()),
        Some(full) => Err(format!(
            "spool full: {full}, and Kafka is unavailable (circuit breaker {kafka}); new webhooks get 503 until the spool has room or Kafka is back"
        )),
    }
}

/// `/readyz` after start: the serving verdict, until shutdown makes it not ready for good.
struct ReadinessGate {
    readiness: Readiness,
    state: std::sync::Mutex<Gate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gate {
    Starting,
    Ready,
    NotReady,
    Stopping,
}

impl ReadinessGate {
    fn new(readiness: Readiness) -> Self {
        Self {
            readiness,
            state: std::sync::Mutex::new(Gate::Starting),
        }
    }

    /// Applies the serving verdict, unless shutdown has begun.
    fn serve(&self, verdict: Result<(), String>) {
        let mut gate = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match (*gate, verdict) {
            (Gate::Stopping, _) => {}
            (was, Ok(())) => {
                if was == Gate::NotReady {
                    tracing::info!("ready again: the spool has room or Kafka is back");
                }
                self.readiness.set_ready();
                *gate = Gate::Ready;
            }
            (was, Err(reason)) => {
                if was != Gate::NotReady {
                    tracing::warn!(%reason, "not ready");
                }
                self.readiness.set_not_ready(reason);
                *gate = Gate::NotReady;
            }
        }
    }

    /// Not ready from now on, whatever the spool and the breaker do.
    fn stop(&self, reason: &str) {
        let mut gate = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *gate = Gate::Stopping;
        self.readiness.set_not_ready(reason);
    }
}

/// Keeps `/readyz` in step with the spool and the breaker: at each change of either, and
/// every second (so the figures in the reason stay current).
async fn follow_readiness(gate: Arc<ReadinessGate>, spool: Arc<Spool>, breaker: Arc<Breaker>) {
    let mut full = spool.subscribe_full();
    let mut breaker_states = breaker.subscribe();
    loop {
        gate.serve(serving_readiness(spool.full(), breaker.current()));
        tokio::select! {
            changed = full.changed() => if changed.is_err() { return },
            changed = breaker_states.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Lifecycle events are informational: handed to the producer at once, in the order of the
/// calls (so `starting` precedes `ready` on the partition), and their delivery awaited in
/// the background, never blocking intake.
fn announce(publisher: &Arc<Publisher>, topic: &str, instance: &str, phase: LifecyclePhase) {
    let event = lifecycle_event(SERVICE, instance, phase);
    let delivery = publisher.enqueue_best_effort(topic, &event);
    tokio::spawn(async move {
        let delivered = match delivery {
            Some(delivery) => publisher::delivered_within(delivery, Duration::from_secs(10)).await,
            None => false,
        };
        if !delivered {
            tracing::warn!(
                phase = phase.as_str(),
                "the lifecycle event was not published"
            );
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: SpoolFull = SpoolFull {
        used_bytes: 8000,
        max_bytes: 8192,
        refused_bytes: 300,
    };

    #[test]
    fn only_a_full_spool_with_kafka_away_makes_the_receiver_unready() {
        assert_eq!(serving_readiness(None, BreakerState::Closed), Ok(()));
        assert_eq!(serving_readiness(None, BreakerState::Open), Ok(()));
        assert_eq!(serving_readiness(None, BreakerState::HalfOpen), Ok(()));
        // Kafka is back: the drain makes room, the replica stays in rotation.
        assert_eq!(serving_readiness(Some(FULL), BreakerState::Closed), Ok(()));
        let open = serving_readiness(Some(FULL), BreakerState::Open).unwrap_err();
        assert!(
            open.starts_with("spool full: 8000 of 8192 bytes used"),
            "{open}"
        );
        assert!(open.contains("circuit breaker open"), "{open}");
        let probing = serving_readiness(Some(FULL), BreakerState::HalfOpen).unwrap_err();
        assert!(probing.contains("circuit breaker half-open"), "{probing}");
    }

    #[test]
    fn after_shutdown_begins_no_verdict_makes_the_receiver_ready() {
        let readiness = Readiness::new("starting");
        let gate = ReadinessGate::new(readiness.clone());
        assert_eq!(readiness.check(), Err("starting".into()));
        gate.serve(Ok(()));
        assert_eq!(readiness.check(), Ok(()));
        gate.serve(Err("spool full: x".into()));
        assert_eq!(readiness.check(), Err("spool full: x".into()));
        gate.serve(Ok(()));
        assert_eq!(readiness.check(), Ok(()));
        gate.stop("shutting down");
        gate.serve(Ok(()));
        assert_eq!(readiness.check(), Err("shutting down".into()));
    }

    /// The follower with a real spool and breaker: unready once the spool refuses an event
    /// while the breaker is open, ready when Kafka is back, unready again when it goes, and
    /// ready once a drain has made room.
    #[tokio::test]
    async fn readiness_follows_the_spool_and_the_breaker() {
        use crate::spool::SpoolRecord;
        let dir = std::env::temp_dir().join(format!(
            "hook-receiver-readiness-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let record = |n: u32| SpoolRecord {
            topic: "t".into(),
            key: b"k".to_vec(),
            headers: vec![],
            value: format!("{{\"n\":{n:04}}}").into_bytes(),
        };
        let metrics = metrics::Metrics::default();
        // Room for three records, a segment per record, so draining one frees room.
        let (spool, _) = Spool::open(&dir, 3 * 40, 1, metrics.clone()).unwrap();
        let spool = Arc::new(spool);
        let writer = spool.start_writer();
        let breaker = Arc::new(Breaker::new(
            config::BreakerConfig {
                failure_threshold: 3,
                open_for: Duration::from_secs(60),
                max_open_for: Duration::from_secs(60),
            },
            metrics,
        ));
        let readiness = Readiness::new("starting");
        let gate = Arc::new(ReadinessGate::new(readiness.clone()));
        let follower = tokio::spawn(follow_readiness(gate, spool.clone(), breaker.clone()));
        let settled = |want_ready: bool| {
            let readiness = readiness.clone();
            async move {
                for _ in 0..200 {
                    if readiness.check().is_ok() == want_ready {
                        return readiness.check();
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!(
                    "readiness did not become {want_ready}: {:?}",
                    readiness.check()
                );
            }
        };
        settled(true).await.unwrap();

        breaker.brokers_down("test: all brokers down");
        let mut appended = 0;
        loop {
            let result = writer.append(&spool, &record(appended)).await.unwrap();
            if result.is_err() {
                break;
            }
            appended += 1;
        }
        assert!(appended >= 1, "at least one record fits");
        let reason = settled(false).await.unwrap_err();
        assert!(reason.starts_with("spool full: "), "{reason}");

        breaker.brokers_up();
        breaker.record_success();
        settled(true).await.unwrap();
        breaker.brokers_down("test: all brokers down again");
        settled(false).await.unwrap_err();

        // The drain takes the oldest record: its segment is deleted and there is room.
        let batch = spool.read_batch(1, u64::MAX);
        spool.commit(batch[0].1, 1);
        assert_eq!(spool.full(), None);
        settled(true).await.unwrap();
        follower.abort();
    }
}
