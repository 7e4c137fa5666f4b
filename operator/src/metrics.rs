//! The operator's Prometheus metrics (prefix `bridge_operator`). Labels stay low-cardinality:
//! kinds, reasons and admin operations, never object names.

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub kind: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: &'static str,
}

pub struct Metrics {
    pub reconciles: Family<KindLabel, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub reconcile_duration: Family<KindLabel, Histogram>,
    pub status_patches: Family<KindLabel, Counter>,
    pub topics_managed: Gauge,
    /// 1 while this replica holds the leader-election Lease and runs the controllers.
    pub leader: Gauge,
    pub admin_call_duration: Family<OperationLabel, Histogram>,
    /// Admin calls that change Kafka; steady state must leave these still.
    pub kafka_writes: Family<OperationLabel, Counter>,
    /// Topics per batched admin request, by operation.
    pub admin_batch_size: Family<OperationLabel, Histogram>,
}

fn duration_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            reconciles: Family::default(),
            failures: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            status_patches: Family::default(),
            topics_managed: Gauge::default(),
            leader: Gauge::default(),
            admin_call_duration: Family::new_with_constructor(duration_histogram),
            kafka_writes: Family::default(),
            admin_batch_size: Family::new_with_constructor(|| {
                // 1 .. 2,048 topics
                Histogram::new(exponential_buckets(1.0, 2.0, 12))
            }),
        };
        registry.register(
            "reconciles",
            "Reconciliations run, by kind",
            metrics.reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciliations that did not reach the desired state, by kind and reason",
            metrics.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconciliation",
            metrics.reconcile_duration.clone(),
        );
        registry.register(
            "status_patches",
            "Status subresource writes, by kind",
            metrics.status_patches.clone(),
        );
        registry.register(
            "topics_managed",
            "Kafka topics this operator manages (EventTopics it owns the topic of)",
            metrics.topics_managed.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader-election Lease and runs the controllers",
            metrics.leader.clone(),
        );
        registry.register(
            "kafka_admin_call_duration_seconds",
            "Duration of Kafka admin calls, by operation",
            metrics.admin_call_duration.clone(),
        );
        registry.register(
            "kafka_writes",
            "Admin calls that changed Kafka, by operation",
            metrics.kafka_writes.clone(),
        );
        registry.register(
            "kafka_admin_batch_size",
            "Topics per batched Kafka admin request, by operation",
            metrics.admin_batch_size.clone(),
        );
        metrics
    }

    /// Times one reconciliation of `kind` and counts it, when the guard drops.
    pub fn reconcile_timer(&self, kind: &'static str) -> DurationGuard<'_> {
        self.reconciles.get_or_create(&KindLabel { kind }).inc();
        DurationGuard {
            histogram: self
                .reconcile_duration
                .get_or_create(&KindLabel { kind })
                .clone(),
            started: Instant::now(),
            _metrics: std::marker::PhantomData,
        }
    }

    pub fn failure(&self, kind: &'static str, reason: &'static str) {
        self.failures
            .get_or_create(&FailureLabels { kind, reason })
            .inc();
    }

    /// Times one admin call that writes to Kafka, and counts it.
    pub fn admin_call(&self, operation: &'static str) -> DurationGuard<'_> {
        self.kafka_writes
            .get_or_create(&OperationLabel { operation })
            .inc();
        DurationGuard {
            histogram: self
                .admin_call_duration
                .get_or_create(&OperationLabel { operation })
                .clone(),
            started: Instant::now(),
            _metrics: std::marker::PhantomData,
        }
    }

    /// Records how many topics one batched admin request carries.
    pub fn observe_batch(&self, operation: &'static str, topics: usize) {
        self.admin_batch_size
            .get_or_create(&OperationLabel { operation })
            .observe(topics as f64);
    }

    pub fn observe_admin_call(&self, operation: &'static str, elapsed: Duration) {
        self.admin_call_duration
            .get_or_create(&OperationLabel { operation })
            .observe(elapsed.as_secs_f64());
    }
}

/// Records the time since its creation into a histogram when dropped.
pub struct DurationGuard<'a> {
    histogram: Histogram,
    started: Instant,
    _metrics: std::marker::PhantomData<&'a Metrics>,
}

impl Drop for DurationGuard<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}
