//! What every OmniNode Bridge binary runs besides its job: one small admin server with
//! `/metrics`, `/healthz` and `/readyz`, logging set up from `RUST_LOG`, and the shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// Whether the process can do its job right now, and if not, why. Shared between the
/// workers that know and the admin server that reports it on `/readyz`.
#[derive(Clone, Debug)]
pub struct Readiness(Arc<Mutex<Option<String>>>);

impl Readiness {
    /// Starts not ready, with `reason` as the answer `/readyz` gives.
    pub fn new(reason: impl Into<String>) -> Self {
        Self(Arc::new(Mutex::new(Some(reason.into()))))
    }

    pub fn set_ready(&self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(reason.into());
    }

    /// `Ok` when ready, else the reason.
    pub fn check(&self) -> Result<(), String> {
        match &*self.0.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Arc<Registry>,
    readiness: Readiness,
}

/// The admin routes: `/metrics` in the OpenMetrics text format, `/healthz` (the process
/// answers), `/readyz` (200, or 503 with the reason it is not ready).
pub fn admin_router(registry: Arc<Registry>, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(AdminState {
            registry,
            readiness,
        })
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding metrics failed: {error}\n"),
        )
            .into_response(),
    }
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

/// Binds the admin server; the returned future serves until `shutdown` completes.
pub async fn serve_admin(
    listen: SocketAddr,
    registry: Arc<Registry>,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<impl Future<Output = std::io::Result<()>>> {
    serve_admin_with(listen, registry, readiness, Router::new(), shutdown).await
}

/// [`serve_admin`] with routes of the binary's own (e.g. the receiver's `/spool`) merged
/// beside the three common ones; `extra` must not repeat their paths.
pub async fn serve_admin_with(
    listen: SocketAddr,
    registry: Arc<Registry>,
    readiness: Readiness,
    extra: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<impl Future<Output = std::io::Result<()>>> {
    let listener = TcpListener::bind(listen).await?;
    tracing::info!(address = %listener.local_addr()?, "admin server listening");
    let router = admin_router(registry, readiness).merge(extra);
    Ok(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
    })
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Completes on SIGTERM (how Kubernetes stops a Pod) or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown signal received");
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    async fn start(readiness: Readiness) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let mut registry = Registry::with_prefix("test");
        let counter: Counter = Counter::default();
        counter.inc();
        registry.register("requests", "Requests seen", counter);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let router = admin_router(Arc::new(registry), readiness);
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        (address, stop)
    }

    #[tokio::test]
    async fn readyz_reports_the_reason_until_ready() {
        let readiness = Readiness::new("waiting for Kafka");
        let (address, _stop) = start(readiness.clone()).await;
        let url = format!("http://{address}/readyz");
        let response = reqwest::get(&url).await.unwrap();
        assert_eq!(response.status(), 503);
        assert_eq!(response.text().await.unwrap(), "waiting for Kafka\n");

        readiness.set_ready();
        assert_eq!(reqwest::get(&url).await.unwrap().status(), 200);
        let health = reqwest::get(format!("http://{address}/healthz"))
            .await
            .unwrap();
        assert_eq!(health.status(), 200);
    }

    #[tokio::test]
    async fn metrics_are_served_in_the_openmetrics_format() {
        let (address, _stop) = start(Readiness::new("starting")).await;
        let body = reqwest::get(format!("http://{address}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("test_requests_total 1"), "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
    }
}
