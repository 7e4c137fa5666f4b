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
pub mod record_limits;
pub mod server;
pub mod spool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bridge_events::{LifecyclePhase, lifecycle_event};
use bridge_runtime::Readiness;
use prometheus_client::registry::Registry;

use crate::breaker::{Breaker, BreakerState};
use crate::config::ReceiverConfig;
use crate::publisher::Publisher;
use crate::record_limits::RecordLimits;
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

/// After SIGTERM the drain stops this long before `shutdownTimeout` is spent, leaving
/// room for the `stopping` event (2 s) and the producer's final flush (3 s).
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(5);

/// Runs until `shutdown` completes, then stops intake, finishes the requests in flight
/// (each ends acknowledged or spooled), drains the spool into Kafka until it is empty or
/// `shutdownTimeout` is nearly spent, flushes the producer and returns.
pub async fn run(
    config: ReceiverConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let signal = Signal::watch(shutdown);
    let Some(core) = Core::start(&config, &signal).await? else {
        return Ok(());
    };
    let instance = config
        .instance
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("{SERVICE}-{}", std::process::id()));
    let publisher = core.publisher.clone();
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
        metrics: core.metrics.clone(),
    });
    let app = server::router(receiver, routes, config.read_timeout);

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            address: config.listen,
            source,
        })?;

    let gate = Arc::new(ReadinessGate::new(core.readiness.clone()));
    let stop_intake = {
        let mut signal = signal.clone();
        let gate = gate.clone();
        async move {
            signal.received().await;
            gate.stop("shutting down");
        }
    };
    tracing::info!(listen = %config.listen, routes = config.routes.len(), "receiving webhooks");
    let readiness_follower = tokio::spawn(follow_readiness(
        gate,
        core.spool.clone(),
        core.breaker.clone(),
    ));
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
    let mut signalled = signal.clone();
    tokio::select! {
        served = serve => {
            if let Err(error) = served {
                tracing::error!(%error, "the webhook server failed");
            }
        }
        () = async { tokio::time::sleep_until((signalled.received().await + bound).into()).await } => {
            tracing::warn!(?bound, "requests were still open when the shutdown bound passed");
        }
    }
    readiness_follower.abort();

    // What is spooled now would otherwise wait for the next process to open this spool; a
    // replica that is scaled away leaves it to a drain Job. Draining here, while Kafka
    // takes it, spares both the wait.
    let signalled_at = signal.at().unwrap_or_else(Instant::now);
    let drain_until = signalled_at + bound.saturating_sub(SHUTDOWN_MARGIN);
    let (spooled, _) = core.spool.usage();
    if spooled > 0 {
        tracing::info!(
            records = spooled,
            "intake stopped; draining the spool into Kafka before exit"
        );
    }
    let drained = tokio::time::timeout_at(drain_until.into(), publisher.until_drained()).await;
    core.drainer.abort();
    match drained {
        Ok(()) if spooled > 0 => tracing::info!("the spool is drained"),
        Ok(()) => {}
        Err(_) => tracing::warn!(
            still_spooled = core.spool.undrained_records(),
            bound = ?bound,
            "the spool was not drained before the shutdown bound; the rest stays in it for the next process that opens it"
        ),
    }

    tracing::info!("flushing the producer");
    let stopping = lifecycle_event(SERVICE, &instance, LifecyclePhase::Stopping);
    publisher
        .publish_best_effort(&config.lifecycle_topic, &stopping, Duration::from_secs(2))
        .await;
    publisher.flush(Duration::from_secs(3)).await;
    core.stop_admin().await;
    tracing::info!("stopped");
    Ok(())
}

/// What a drain-only run did, for the exit code and the termination message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    pub dir: std::path::PathBuf,
    /// Records Kafka acknowledged (or had already) and the spool let go of.
    pub records: u64,
    /// Records still in the spool (stopped by a signal before it was empty).
    pub remaining: u64,
    /// Segments cut short by a record that failed its CRC: their rest is lost.
    pub corrupt_segments: u64,
    /// Records in the spool's quarantine file: refused by Kafka for good, kept there.
    pub quarantined: u64,
    /// Stopped by a signal while another process held the spool: nothing was looked at.
    pub lock_not_taken: bool,
}

impl Drained {
    /// The line for the log and the termination message.
    pub fn message(&self) -> String {
        let dir = self.dir.display();
        if self.lock_not_taken {
            return format!(
                "stopped while another process held {}; nothing drained",
                self.dir.join(spool::LOCK_FILE).display()
            );
        }
        let mut line = if self.remaining == 0 {
            format!("drained {} events from {dir}", self.records)
        } else {
            format!(
                "stopped after draining {} events from {dir}; {} remain in the spool for the next process that opens it",
                self.records, self.remaining
            )
        };
        if self.corrupt_segments > 0 {
            line.push_str(&format!(
                "; {} spool segments held a corrupt record and were cut short there (see the log)",
                self.corrupt_segments
            ));
        }
        if self.quarantined > 0 {
            line.push_str(&format!(
                "; {} events Kafka refused for good are kept in {}",
                self.quarantined,
                self.dir.join(spool::QUARANTINE).display()
            ));
        }
        line
    }

    /// 0, unless records were lost to corruption or wait in quarantine: a person has to
    /// look at that, and the volume must not be deleted as drained.
    pub fn exit_code(&self) -> u8 {
        if self.corrupt_segments > 0 || self.quarantined > 0 {
            1
        } else {
            0
        }
    }
}

/// `hook-receiver --drain`: empties the spool into Kafka and returns, serving no webhooks
/// (the admin server runs). Waits for the spool's lock, and through Kafka outages, without
/// a bound; `shutdown` stops it early, leaving the rest in the spool. The outcome (or the
/// error) is logged and written to `termination_log` when that file exists and is writable.
pub async fn drain_only(
    config: ReceiverConfig,
    termination_log: &std::path::Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Drained, Error> {
    let outcome = drain_spool(config, shutdown).await;
    let line = match &outcome {
        Ok(drained) => {
            tracing::info!("{}", drained.message());
            drained.message()
        }
        Err(error) => format!("hook-receiver --drain: {error}"),
    };
    write_termination_message(termination_log, &line);
    outcome
}

async fn drain_spool(
    config: ReceiverConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<Drained, Error> {
    let dir = config.spool.dir.clone();
    let mut drained = Drained {
        dir: dir.clone(),
        records: 0,
        remaining: 0,
        corrupt_segments: 0,
        quarantined: 0,
        lock_not_taken: false,
    };
    // A replica that never spooled may have no directory; making one here would only
    // leave an empty spool behind.
    if !dir.exists() {
        tracing::info!(dir = %dir.display(), "no spool directory; nothing to drain");
        return Ok(drained);
    }
    let signal = Signal::watch(shutdown);
    let Some(core) = Core::start(&config, &signal).await? else {
        drained.lock_not_taken = true;
        return Ok(drained);
    };
    core.readiness.set_ready();
    let (records, _) = core.spool.usage();
    if records > 0 {
        tracing::info!(records, dir = %dir.display(), "draining the spool into Kafka");
    }
    let mut signalled = signal.clone();
    let emptied = tokio::select! {
        () = core.publisher.until_drained() => true,
        _ = signalled.received() => false,
    };
    core.drainer.abort();
    // Every drained batch is acknowledged already; this is for sends a signal cut short.
    core.publisher.flush(Duration::from_secs(3)).await;
    drained.records = core.metrics.drained.get() + core.metrics.already_in_kafka.get();
    drained.remaining = if emptied {
        0
    } else {
        core.spool.undrained_records()
    };
    drained.corrupt_segments = core.metrics.spool_corrupt.get();
    drained.quarantined = core.spool.quarantined_records();
    core.stop_admin().await;
    Ok(drained)
}

/// Writes `line` to Kubernetes' termination message file, when there is one to write to
/// (not outside Kubernetes, nor in a container without it).
pub fn write_termination_message(path: &std::path::Path, line: &str) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .and_then(|mut file| writeln!(file, "{line}"));
    if let Err(error) = written {
        tracing::debug!(path = %path.display(), %error, "no termination message written");
    }
}

/// The shutdown signal, seen by every phase of a run: when it came (`None` before).
#[derive(Clone)]
struct Signal(tokio::sync::watch::Receiver<Option<Instant>>);

impl Signal {
    fn watch(shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Self {
        let (sender, receiver) = tokio::sync::watch::channel(None);
        tokio::spawn(async move {
            shutdown.await;
            sender.send_replace(Some(Instant::now()));
            // Kept, so the receivers never see the channel closed.
            std::future::pending::<()>().await;
        });
        Self(receiver)
    }

    /// When the signal came, if it has.
    fn at(&self) -> Option<Instant> {
        *self.0.borrow()
    }

    /// When the signal came; waits for it.
    async fn received(&mut self) -> Instant {
        // The guard is dropped before any other await: the future stays `Send`.
        let at = match self.0.wait_for(Option::is_some).await {
            Ok(at) => *at,
            Err(_) => None,
        };
        match at {
            Some(at) => at,
            None => std::future::pending().await,
        }
    }
}

/// What a serving run and a drain-only run share: the admin server (up first, so
/// `/healthz` answers while the spool's lock is awaited), the spool, the breaker, the one
/// producer, and the drainer.
struct Core {
    metrics: metrics::Metrics,
    readiness: Readiness,
    spool: Arc<Spool>,
    breaker: Arc<Breaker>,
    publisher: Arc<Publisher>,
    drainer: tokio::task::JoinHandle<()>,
    admin: tokio::task::JoinHandle<std::io::Result<()>>,
    stop_admin: tokio::sync::oneshot::Sender<()>,
}

impl Core {
    /// `None` when the signal came while another process held the spool.
    async fn start(config: &ReceiverConfig, signal: &Signal) -> Result<Option<Core>, Error> {
        let metrics = metrics::Metrics::default();
        let mut registry = Registry::with_prefix("hook_receiver");
        metrics.register(&mut registry);
        let readiness = Readiness::new("starting");
        let opened = Arc::new(std::sync::OnceLock::new());
        let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin = bridge_runtime::serve_admin_with(
            config.admin_listen,
            Arc::new(registry),
            readiness.clone(),
            spool_status_router(opened.clone()),
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

        let spool_error = |source| Error::Spool {
            dir: config.spool.dir.display().to_string(),
            source,
        };
        let opening = {
            let (dir, max_bytes, segment_bytes) = (
                config.spool.dir.clone(),
                config.spool.max_bytes,
                config.spool.segment_bytes,
            );
            let (metrics, readiness, signal) = (metrics.clone(), readiness.clone(), signal.clone());
            tokio::task::spawn_blocking(move || {
                Spool::open_waiting(&dir, max_bytes, segment_bytes, metrics, |lock| {
                    readiness.set_not_ready(format!(
                        "waiting for the spool's lock {}: another process (a receiver still stopping, or a drain) has the spool open",
                        lock.display()
                    ));
                    signal.at().is_none()
                })
            })
        };
        let (spool, recovery) = match opening.await.expect("the spool opener does not panic") {
            Ok(opened) => opened,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {
                tracing::info!("stopped while waiting for the spool's lock");
                let _ = stop_admin.send(());
                let _ = admin.await;
                return Ok(None);
            }
            Err(error) => return Err(spool_error(error)),
        };
        readiness.set_not_ready("starting");
        if recovery.records > 0 || recovery.torn_bytes > 0 {
            tracing::info!(
                records = recovery.records,
                torn_bytes = recovery.torn_bytes,
                "recovered the spool of an earlier run; it drains before new events"
            );
        }
        let spool = Arc::new(spool);
        let breaker = Arc::new(Breaker::new(config.breaker.clone(), metrics.clone()));
        let _ = opened.set(SpoolStatus {
            spool: spool.clone(),
            breaker: breaker.clone(),
        });
        let limits = Arc::new(RecordLimits::new(publisher::max_record_bytes(
            &publisher::producer_config(&config.kafka),
        )));
        let idempotence = Arc::new(publisher::IdempotenceState::default());
        let producer =
            publisher::create_producer(&config.kafka, breaker.clone(), idempotence.clone())?;
        let publisher = Publisher::new(
            producer,
            idempotence,
            spool.clone(),
            breaker.clone(),
            metrics.clone(),
            publisher::PublishOptions {
                publish_timeout: config.publish_timeout,
                limits: limits.clone(),
                audit_topic: config.audit_topic.clone(),
            },
        );
        tokio::spawn(publisher.clone().follow_breaker());
        // Before the first request, where Kafka answers in time: a record over a topic's
        // limit is then answered 413 from the start.
        let topic_admin = config.kafka.client_config().create()?;
        let topics: Vec<String> = config
            .routes
            .iter()
            .map(|route| route.topic.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        match tokio::time::timeout(Duration::from_secs(3), limits.read(&topic_admin, &topics)).await
        {
            Ok(None) => {}
            Ok(Some(error)) => {
                tracing::warn!(%error, "cannot read the topics' max.message.bytes; an event over a topic's limit is refused by Kafka and quarantined instead of answered 413")
            }
            Err(_) => tracing::info!(
                "Kafka did not tell the topics' max.message.bytes within 3 s; reading them again later"
            ),
        }
        tokio::spawn(async move { limits.follow(topic_admin, topics).await });
        let drainer = tokio::spawn(publisher.clone().drain());
        Ok(Some(Core {
            metrics,
            readiness,
            spool,
            breaker,
            publisher,
            drainer,
            admin,
            stop_admin,
        }))
    }

    async fn stop_admin(self) {
        let _ = self.stop_admin.send(());
        let _ = self.admin.await;
    }
}

/// What `GET /spool` reads, once the spool is open.
struct SpoolStatus {
    spool: Arc<Spool>,
    breaker: Arc<Breaker>,
}

/// `GET /spool` on the admin server: `{"records", "bytes", "draining", "quarantined"}`
/// (`quarantined`: records Kafka refused for good, in `quarantine.log`), so the operator
/// can report what each replica's claim holds. `draining`: records are spooled and the
/// breaker lets the drain send them (false while Kafka is away: they wait). 503 until the
/// spool is open (its lock is held by another process).
fn spool_status_router(opened: Arc<std::sync::OnceLock<SpoolStatus>>) -> axum::Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    axum::Router::new().route(
        "/spool",
        axum::routing::get(move || async move {
            match opened.get() {
                Some(status) => {
                    let (records, bytes) = status.spool.usage();
                    let draining = records > 0 && status.breaker.current() == BreakerState::Closed;
                    axum::Json(serde_json::json!({
                        "records": records,
                        "bytes": bytes,
                        "draining": draining,
                        "quarantined": status.spool.quarantined_records(),
                    }))
                    .into_response()
                }
                None => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    axum::Json(serde_json::json!({
                        "error": "the spool is not open yet: waiting for its lock (see /readyz)",
                    })),
                )
                    .into_response(),
            }
        }),
    )
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
        filesystem_free: None,
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

    fn drain_config(dir: &std::path::Path) -> ReceiverConfig {
        ReceiverConfig::parse(&format!(
            "listen: 127.0.0.1:0\n\
             adminListen: 127.0.0.1:0\n\
             source: /test\n\
             kafka: {{bootstrapServers: \"127.0.0.1:1\"}}\n\
             spool: {{dir: {}}}\n\
             routes:\n  - {{name: r, path: /r, topic: t, eventType: {{value: x}}, auth: {{none: {{}}}}}}\n",
            dir.display()
        ))
        .unwrap()
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "hook-receiver-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A claim whose replica never spooled has nothing to drain: the Job ends at once,
    /// successfully, and says so in its termination message, leaving no directory behind.
    #[tokio::test]
    async fn a_drain_of_a_missing_spool_exits_at_once_with_its_termination_message() {
        let scratch = scratch("drain-missing");
        let dir = scratch.join("spool");
        let termination_log = scratch.join("termination-log");
        std::fs::write(&termination_log, "").unwrap();

        let drained = tokio::time::timeout(
            Duration::from_secs(5),
            drain_only(drain_config(&dir), &termination_log, std::future::pending()),
        )
        .await
        .expect("at once")
        .unwrap();

        assert_eq!(drained.exit_code(), 0);
        let message = std::fs::read_to_string(&termination_log).unwrap();
        assert_eq!(
            message,
            format!("drained 0 events from {}\n", dir.display())
        );
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn a_drain_of_an_empty_spool_exits_at_once_without_reaching_kafka() {
        let dir = scratch("drain-empty");
        let drained = tokio::time::timeout(
            Duration::from_secs(10),
            drain_only(
                drain_config(&dir),
                &dir.join("no-termination-log"),
                std::future::pending(),
            ),
        )
        .await
        .expect("at once, though Kafka is unreachable")
        .unwrap();
        assert_eq!((drained.records, drained.remaining), (0, 0));
        assert_eq!(drained.exit_code(), 0);
        assert!(
            !dir.join("no-termination-log").exists(),
            "a missing termination log is not created"
        );
    }

    /// A drain Job that is stopped while the old Pod still holds the claim's spool exits 0
    /// without touching it, and says why.
    #[tokio::test]
    async fn a_drain_stopped_while_another_process_holds_the_spool_leaves_it_alone() {
        let dir = scratch("drain-locked");
        let (held, _) = Spool::open(&dir, 1 << 20, 1 << 20, metrics::Metrics::default()).unwrap();
        let termination_log = dir.join("termination-log");
        std::fs::write(&termination_log, "").unwrap();

        let drained = tokio::time::timeout(
            Duration::from_secs(10),
            drain_only(
                drain_config(&dir),
                &termination_log,
                tokio::time::sleep(Duration::from_millis(1500)),
            ),
        )
        .await
        .expect("the signal ends the wait")
        .unwrap();

        assert!(drained.lock_not_taken);
        assert_eq!(drained.exit_code(), 0);
        let message = std::fs::read_to_string(&termination_log).unwrap();
        assert!(
            message.starts_with("stopped while another process held"),
            "{message}"
        );
        drop(held);
    }

    #[test]
    fn a_drain_that_met_corrupt_records_fails_so_a_person_looks() {
        let drained = Drained {
            dir: "/var/spool/hook-receiver".into(),
            records: 329,
            remaining: 0,
            corrupt_segments: 1,
            quarantined: 0,
            lock_not_taken: false,
        };
        assert_eq!(drained.exit_code(), 1);
        assert!(
            drained
                .message()
                .starts_with("drained 329 events from /var/spool/hook-receiver; 1 spool segments held a corrupt record"),
            "{}",
            drained.message()
        );
    }

    #[test]
    fn a_drain_that_left_records_in_quarantine_fails_so_the_claim_is_kept() {
        let drained = Drained {
            dir: "/var/spool/hook-receiver".into(),
            records: 12,
            remaining: 0,
            corrupt_segments: 0,
            quarantined: 2,
            lock_not_taken: false,
        };
        assert_eq!(drained.exit_code(), 1);
        assert_eq!(
            drained.message(),
            "drained 12 events from /var/spool/hook-receiver; 2 events Kafka refused for good are kept in /var/spool/hook-receiver/quarantine.log"
        );
    }
}
