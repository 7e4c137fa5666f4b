//! The receiver's metrics, served on the admin server's `/metrics` with the prefix
//! `hook_receiver`. Labels stay low-cardinality: route names and fixed outcome words.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Outcome {
    /// Acknowledged by Kafka.
    published,
    /// Written to the spool; Kafka gets it later.
    spooled,
    /// A delivery id seen inside the dedupe window: acknowledged, not published again.
    duplicate,
    unauthorized,
    bad_request,
    /// The spool is full (503).
    unavailable,
    /// Kafka cannot take the event, now or later (413 too large, 500 not authorized).
    refused_by_kafka,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuarantineLabels {
    /// Kafka's error code, e.g. `MessageSizeTooLarge`.
    pub error: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignatureLabels {
    pub route: String,
    pub reason: &'static str,
}

#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub signature_failures: Family<SignatureLabels, Counter>,
    pub publish_seconds: Histogram,
    pub spool_bytes: Gauge,
    pub spool_records: Gauge,
    pub spooled: Counter,
    pub drained: Counter,
    /// Spooled copies of in-doubt events that Kafka took from their first send.
    pub already_in_kafka: Counter,
    pub spool_corrupt: Counter,
    /// Spooled records moved to `quarantine.log`, by what Kafka said.
    pub quarantined: Family<QuarantineLabels, Counter>,
    /// 0 closed, 1 half-open, 2 open.
    pub breaker_state: Gauge,
    pub audit_events_suppressed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            signature_failures: Family::default(),
            publish_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            spool_bytes: Gauge::default(),
            spool_records: Gauge::default(),
            spooled: Counter::default(),
            drained: Counter::default(),
            already_in_kafka: Counter::default(),
            spool_corrupt: Counter::default(),
            quarantined: Family::default(),
            breaker_state: Gauge::default(),
            audit_events_suppressed: Counter::default(),
        }
    }
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "Webhook requests by route and outcome",
            self.requests.clone(),
        );
        registry.register(
            "signature_failures",
            "Requests refused for their signature or token, by route and reason",
            self.signature_failures.clone(),
        );
        registry.register(
            "publish_duration_seconds",
            "Time from handing an event to the producer to Kafka's acknowledgement (acks=all)",
            self.publish_seconds.clone(),
        );
        registry.register(
            "spool_bytes",
            "Bytes in spool segment files on disk",
            self.spool_bytes.clone(),
        );
        registry.register(
            "spool_records",
            "Spooled records not yet in Kafka",
            self.spool_records.clone(),
        );
        registry.register(
            "spooled_records",
            "Records written to the spool",
            self.spooled.clone(),
        );
        registry.register(
            "drained_records",
            "Spooled records delivered to Kafka",
            self.drained.clone(),
        );
        registry.register(
            "already_in_kafka_records",
            "Spooled records not sent again: Kafka took them from the send that was still open when they were spooled",
            self.already_in_kafka.clone(),
        );
        registry.register(
            "spool_corrupt_segments",
            "Spool segments cut short because a record failed its CRC after it was written",
            self.spool_corrupt.clone(),
        );
        registry.register(
            "quarantined_records",
            "Spooled records Kafka refused for good, moved to quarantine.log in the spool's directory instead of blocking the records after them",
            self.quarantined.clone(),
        );
        registry.register(
            "breaker_state",
            "Circuit breaker towards Kafka: 0 closed, 1 half-open, 2 open",
            self.breaker_state.clone(),
        );
        registry.register(
            "audit_events_suppressed",
            "Rejected-signature audit events (and their log lines) not written because of the rate limit",
            self.audit_events_suppressed.clone(),
        );
    }

    pub fn request(&self, route: &str, outcome: Outcome) {
        self.requests
            .get_or_create(&RequestLabels {
                route: route.to_owned(),
                outcome,
            })
            .inc();
    }
}
