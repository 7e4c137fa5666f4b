//! The consumer's metrics, served on `/metrics` with the prefix `event_consumer`. Labels are
//! few and bounded: topic and partition for lag, an outcome or a reason elsewhere.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

type LatencyFamily = Family<OutcomeLabels, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug)]
pub struct ConsumerMetrics {
    /// Events the sink accepted.
    pub delivered: Counter,
    /// Attempts made again after a failure.
    pub retried: Counter,
    /// Records written to the dead-letter topic, by reason.
    pub dead_lettered: Family<ReasonLabels, Counter>,
    /// Events whose type the filter does not take, committed without delivery.
    pub filtered: Counter,
    /// Records that are not CloudEvents, skipped because there is no dead-letter topic.
    pub invalid_skipped: Counter,
    /// Sink request duration in seconds, by outcome.
    pub sink_latency: LatencyFamily,
    /// Records between the committed offset and the end of the partition.
    pub lag: Family<PartitionLabels, Gauge>,
    /// Events read and not yet finished.
    pub in_flight: Gauge,
    /// Events that failed and wait with no dead-letter topic to take them.
    pub blocked: Gauge,
    /// 1 while the sink's circuit breaker is open.
    pub circuit_open: Gauge,
    /// 1 while the assigned partitions are paused.
    pub paused: Gauge,
}

fn latency_histogram() -> Histogram {
    // 1 ms to about 33 s: the default timeout (10 s) falls inside.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl ConsumerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            delivered: Counter::default(),
            retried: Counter::default(),
            dead_lettered: Family::default(),
            filtered: Counter::default(),
            invalid_skipped: Counter::default(),
            sink_latency: Family::new_with_constructor(latency_histogram),
            lag: Family::default(),
            in_flight: Gauge::default(),
            blocked: Gauge::default(),
            circuit_open: Gauge::default(),
            paused: Gauge::default(),
        };
        registry.register(
            "events_delivered",
            "Events the sink accepted",
            metrics.delivered.clone(),
        );
        registry.register(
            "delivery_retries",
            "Delivery attempts made again after a failure",
            metrics.retried.clone(),
        );
        registry.register(
            "events_dead_lettered",
            "Records written to the dead-letter topic, by reason",
            metrics.dead_lettered.clone(),
        );
        registry.register(
            "events_filtered",
            "Events whose type the filter does not take, committed without delivery",
            metrics.filtered.clone(),
        );
        registry.register(
            "invalid_records_skipped",
            "Records that are not CloudEvents, skipped because no dead-letter topic is configured",
            metrics.invalid_skipped.clone(),
        );
        registry.register(
            "sink_request_duration_seconds",
            "Duration of requests to the sink, by outcome",
            metrics.sink_latency.clone(),
        );
        registry.register(
            "partition_lag",
            "Records between the committed offset and the end of the partition",
            metrics.lag.clone(),
        );
        registry.register(
            "events_in_flight",
            "Events read from Kafka and not yet finished",
            metrics.in_flight.clone(),
        );
        registry.register(
            "events_blocked",
            "Events that failed and wait because no dead-letter topic is configured",
            metrics.blocked.clone(),
        );
        registry.register(
            "sink_circuit_open",
            "1 while the circuit breaker in front of the sink is open",
            metrics.circuit_open.clone(),
        );
        registry.register(
            "partitions_paused",
            "1 while the assigned partitions are paused: the maxInFlight bound held for a second, or the circuit breaker is open",
            metrics.paused.clone(),
        );
        metrics
    }
}
