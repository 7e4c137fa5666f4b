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

use crate::breaker::Breaker;
use crate::config::ReceiverConfig;
use crate::publisher::Publisher;
use crate::server::{AuditLimiter, Receiver, Route};
use crate::spool::Spool;

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
    let breaker = Arc::new(Breaker::new(config.breaker.clone(), metrics.clone()));
    let producer = publisher::create_producer(&config.kafka, breaker.clone())?;
    let publisher = Publisher::new(
        producer,
        Arc::new(spool),
        breaker,
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

    let signalled = Arc::new(tokio::sync::Notify::new());
    let stop_intake = {
        let signalled = signalled.clone();
        let readiness = readiness.clone();
        async move {
            shutdown.await;
            readiness.set_not_ready("shutting down");
            signalled.notify_one();
        }
    };
    tracing::info!(listen = %config.listen, routes = config.routes.len(), "receiving webhooks");
    readiness.set_ready();
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

/// Lifecycle events are informational: published in the background, never blocking intake.
fn announce(publisher: &Arc<Publisher>, topic: &str, instance: &str, phase: LifecyclePhase) {
    let event = lifecycle_event(SERVICE, instance, phase);
    let publisher = publisher.clone();
    let topic = topic.to_owned();
    tokio::spawn(async move {
        if !publisher
            .publish_best_effort(&topic, &event, Duration::from_secs(10))
            .await
        {
            tracing::warn!(
                phase = phase.as_str(),
                "the lifecycle event was not published"
            );
        }
    });
}
