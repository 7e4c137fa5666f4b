//! The webhook side: one POST route per configured path. Each request is verified, turned
//! into a CloudEvent, deduplicated and made durable before it is answered 2xx.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequest, Request};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;

use crate::auth::{AuthFailure, Verifier};
use crate::dedupe::{Claim, Dedupe};
use crate::extract::EventRules;
use crate::metrics::{Outcome, SignatureLabels};
use crate::publisher::{Durable, NotDurable, Publisher, kafka_record};
use crate::spool::SpoolError;

/// Seconds a sender is asked to wait when the spool is full.
const RETRY_AFTER_SECS: u64 = 5;

pub struct Route {
    pub name: String,
    pub path: String,
    pub topic: String,
    pub verifier: Verifier,
    pub rules: EventRules,
    pub max_body_bytes: usize,
    pub dedupe_window: Option<Duration>,
}

pub struct Receiver {
    pub publisher: Arc<Publisher>,
    pub dedupe: Dedupe,
    pub audit: AuditLimiter,
    pub audit_topic: String,
    pub metrics: crate::metrics::Metrics,
}

pub fn router(receiver: Arc<Receiver>, routes: Vec<Route>, read_timeout: Duration) -> Router {
    let mut router = Router::new();
    for route in routes {
        let route = Arc::new(route);
        let path = route.path.clone();
        let limit = route.max_body_bytes;
        let receiver = receiver.clone();
        let handler = move |ConnectInfo(peer): ConnectInfo<SocketAddr>, request: Request| {
            let receiver = receiver.clone();
            let route = route.clone();
            async move {
                receiver
                    .read_and_receive(&route, peer, request, read_timeout)
                    .await
            }
        };
        router = router.route(&path, post(handler).layer(DefaultBodyLimit::max(limit)));
    }
    router
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

impl Receiver {
    async fn read_and_receive(
        &self,
        route: &Route,
        peer: SocketAddr,
        request: Request,
        read_timeout: Duration,
    ) -> Response {
        let headers = request.headers().clone();
        // One bound on the whole body, so a client trickling bytes cannot hold a connection
        // open indefinitely. The route's DefaultBodyLimit makes an oversize body a 413 here.
        let body = match tokio::time::timeout(read_timeout, Bytes::from_request(request, &())).await
        {
            Err(_) => {
                self.metrics.request(&route.name, Outcome::bad_request);
                return answer(
                    StatusCode::REQUEST_TIMEOUT,
                    json!({"error": format!("the body did not arrive within {read_timeout:?}")}),
                );
            }
            Ok(Err(rejection)) => {
                self.metrics.request(&route.name, Outcome::bad_request);
                return rejection.into_response();
            }
            Ok(Ok(body)) => body,
        };
        self.receive(route, peer, &headers, body).await
    }

    async fn receive(
        &self,
        route: &Route,
        peer: SocketAddr,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Response {
        let now = jiff::Timestamp::now();
        if let Err(failure) = route.verifier.verify(headers, &body, now.as_second()) {
            self.refuse_signature(route, peer, failure.clone());
            return answer(
                StatusCode::UNAUTHORIZED,
                json!({"error": format!("not authenticated: {failure}")}),
            );
        }
        let extracted = match route.rules.extract(headers, &body, now) {
            Ok(extracted) => extracted,
            Err(reason) => {
                self.metrics.request(&route.name, Outcome::bad_request);
                return answer(
                    StatusCode::BAD_REQUEST,
                    json!({"error": reason.to_string()}),
                );
            }
        };
        let event = extracted.event;
        let claim = match route.dedupe_window {
            Some(window) if extracted.sender_delivery_id => {
                // Source and id identify a CloudEvent; posted events carry their own source.
                let key = format!("{}\n{}", event.source, event.id);
                match self.dedupe.claim(&route.name, &key, window).await {
                    Claim::Duplicate => {
                        self.metrics.request(&route.name, Outcome::duplicate);
                        return answer(
                            StatusCode::OK,
                            json!({"id": event.id, "status": "duplicate"}),
                        );
                    }
                    Claim::First(guard) => Some(guard),
                }
            }
            _ => None,
        };
        match self
            .publisher
            .publish(kafka_record(&route.topic, &event))
            .await
        {
            Ok(durable) => {
                if let Some(guard) = claim {
                    guard.durable();
                }
                let (outcome, status) = match durable {
                    Durable::Kafka => (Outcome::published, "published"),
                    Durable::Spool => (Outcome::spooled, "spooled"),
                };
                self.metrics.request(&route.name, outcome);
                answer(StatusCode::OK, json!({"id": event.id, "status": status}))
            }
            Err(NotDurable::Refused { too_large, reason }) => {
                self.metrics.request(&route.name, Outcome::refused_by_kafka);
                tracing::warn!(route = %route.name, %reason, "refused a webhook Kafka cannot take");
                let status = if too_large {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::INTERNAL_SERVER_ERROR
                };
                answer(status, json!({"error": reason}))
            }
            Err(NotDurable::Unavailable(error)) => {
                self.metrics.request(&route.name, Outcome::unavailable);
                let reason = match error {
                    SpoolError::Full => {
                        "Kafka is unavailable and the spool is full; retry later".to_owned()
                    }
                    SpoolError::Io(detail) => {
                        format!("the event could not be made durable: {detail}")
                    }
                };
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, RETRY_AFTER_SECS.to_string())],
                    axum::Json(json!({"error": reason})),
                )
                    .into_response()
            }
        }
    }

    fn refuse_signature(&self, route: &Route, peer: SocketAddr, failure: AuthFailure) {
        self.metrics.request(&route.name, Outcome::unauthorized);
        self.metrics
            .signature_failures
            .get_or_create(&SignatureLabels {
                route: route.name.clone(),
                reason: failure.reason(),
            })
            .inc();
        // The log line and the audit event share the audit rate limit: a flood of bad
        // signatures is counted in full (signature_failures) but written at that rate.
        if !self.audit.allow() {
            self.metrics.audit_events_suppressed.inc();
            return;
        }
        tracing::info!(route = %route.name, %peer, %failure, "refused a webhook");
        let mut event = crate::publisher::audit_event(
            &route.rules.source,
            "io.omninode.bridge.audit.signature-rejected",
            json!({
                "route": route.name,
                "path": route.path,
                "reason": failure.reason(),
                "detail": failure.to_string(),
                "peer": peer.ip().to_string(),
            }),
        );
        event.subject = Some(route.name.clone());
        self.publisher.send_audit(&self.audit_topic, &event);
    }
}

/// A token bucket: `rate` events per second, bursts of up to ten seconds' worth, so a flood
/// of bad signatures cannot flood the audit topic.
pub struct AuditLimiter {
    rate: f64,
    bucket: Mutex<(f64, Instant)>,
}

impl AuditLimiter {
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second);
        Self {
            rate,
            bucket: Mutex::new((rate * 10.0, Instant::now())),
        }
    }

    pub fn allow(&self) -> bool {
        let mut bucket = self.bucket.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let (tokens, last) = *bucket;
        let tokens =
            (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.rate * 10.0);
        if tokens >= 1.0 {
            *bucket = (tokens - 1.0, now);
            true
        } else {
            *bucket = (tokens, now);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_limiter_passes_a_burst_then_the_rate() {
        let limiter = AuditLimiter::new(2);
        let passed = (0..100).filter(|_| limiter.allow()).count();
        assert_eq!(passed, 20);
    }
}
