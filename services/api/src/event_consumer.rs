//! `EventConsumer`: a consumer group that delivers the events of some EventTopics to an HTTP
//! sink, run by the operator as a Deployment of `event-consumer`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// A consumer group delivering events to an HTTP sink, at least once.
// Several printcolumn(...) lists share `type_ = "integer"`, which clippy mistakes for a
// repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bridge.omninode.io",
    version = "v1alpha1",
    kind = "EventConsumer",
    namespaced,
    shortname = "ec",
    status = "EventConsumerStatus",
    derive = "PartialEq",
    doc = "A consumer group that delivers the events of EventTopics to an HTTP sink as CloudEvents, at least once, with retries and an optional dead-letter topic",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(
        name = "Ready Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        description = "Records not yet consumed, summed over partitions",
        json_path = ".status.lag"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.replicas) && has(self.autoscaling))").message(
    "set either replicas or autoscaling, not both: with autoscaling the operator chooses replicas between minReplicas and maxReplicas"
))]
pub struct EventConsumerSpec {
    /// Names of EventTopics in this namespace to consume (at least one).
    #[schemars(length(min = 1, max = 32), inner(length(min = 1, max = 253)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub topics: Vec<String>,

    /// Kafka consumer group id; defaults to `<namespace>.<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub group_id: Option<String>,

    /// Fixed number of consumer replicas; 1 when neither this nor autoscaling is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,

    /// Scale on consumer lag instead of a fixed replica count (never beyond the partitions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Autoscaling>,

    /// Where events go: an absolute URL, or a Service in this namespace.
    pub sink: Sink,

    /// Which events to deliver; the others are skipped and committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,

    /// Ordering, retries, timeout, dead-letter topic and backpressure.
    #[serde(default)]
    pub delivery: Delivery,

    /// Where a new consumer group starts: `latest` (default) or `earliest`.
    #[serde(default)]
    pub start_from: StartFrom,

    /// Move the group's offsets back to a point in time; recorded in status.lastReplay once done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replay>,
}

impl EventConsumerSpec {
    /// The fixed replica count, or `None` when autoscaling decides it.
    pub fn fixed_replicas(&self) -> Option<i32> {
        match self.autoscaling {
            Some(_) => None,
            None => Some(self.replicas.unwrap_or(1)),
        }
    }
}

impl EventConsumer {
    /// The Kafka consumer group: spec.groupId, else `<namespace>.<name>`.
    pub fn group_id(&self) -> String {
        match &self.spec.group_id {
            Some(group) => group.clone(),
            None => format!(
                "{}.{}",
                self.metadata.namespace.as_deref().unwrap_or_default(),
                self.metadata.name.as_deref().unwrap_or_default()
            ),
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message(
    "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"
))]
pub struct Autoscaling {
    /// Fewest replicas, default 1.
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 1))]
    pub min_replicas: i32,
    /// Most replicas; the operator never runs more than the topics have partitions.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Lag per replica above which the operator adds a replica, default 1000.
    #[serde(default = "default_lag_threshold")]
    #[schemars(range(min = 1))]
    pub lag_threshold: i64,
}

fn default_min_replicas() -> i32 {
    1
}

fn default_lag_threshold() -> i64 {
    1000
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.url) != has(self.service)").message(
    "sink needs exactly one of url or service"
))]
pub struct Sink {
    /// Absolute http:// or https:// URL that receives each event as a binary-mode CloudEvent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(
        validation = Rule::new("isURL(self) && url(self).getScheme() in ['http', 'https']").message(
            "sink.url must be an absolute http:// or https:// URL, for example http://sink.team-a.svc:8080/events"
        ),
        validation = Rule::new("!self.matches('^[^:/?#]+://[^/?#]*@')").message(
            "sink.url must not carry credentials (user:password@): event-consumer does not send them"
        )
    )]
    pub url: Option<String>,
    /// A Service in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceSink>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSink {
    /// Service name.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Service port, default 80.
    #[serde(default = "default_service_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// HTTP path, default `/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message(
        "sink.service.path must start with '/', for example /events"
    ))]
    pub path: Option<String>,
}

fn default_service_port() -> i32 {
    80
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    /// Event type patterns to deliver, such as `workflow.task.*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 256)))]
    pub types: Vec<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// `key` (default): per-key order, parallel across keys; `partition`: per-partition
    /// order; `unordered`: no order.
    #[serde(default)]
    pub ordering: Ordering,
    /// Retries of a failed delivery.
    #[serde(default)]
    pub retry: Retry,
    /// Per-request timeout, default 10s.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// EventTopic (in this namespace) receiving what failed, the error in headers. Without
    /// one, a failure blocks its key and is reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub dead_letter_topic: Option<String>,
    /// Events in flight per replica (backpressure), default 64.
    #[serde(default = "default_max_in_flight")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_in_flight: i32,
}

fn default_timeout() -> Duration {
    Duration::parse("10s").expect("a valid duration")
}

fn default_max_in_flight() -> i32 {
    64
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            ordering: Ordering::default(),
            retry: Retry::default(),
            timeout: default_timeout(),
            dead_letter_topic: None,
            max_in_flight: default_max_in_flight(),
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    /// Tries per event including the first, default 5.
    #[serde(default = "default_attempts")]
    #[schemars(range(min = 1, max = 1000))]
    pub attempts: i32,
    /// Wait before the first retry, doubled each time, default 200ms.
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: Duration,
    /// Longest wait between retries, default 30s. A sink's `Retry-After` is honoured.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
    /// Randomise each wait, default true.
    #[serde(default = "default_jitter")]
    pub jitter: bool,
}

fn default_attempts() -> i32 {
    5
}

fn default_initial_backoff() -> Duration {
    Duration::parse("200ms").expect("a valid duration")
}

fn default_max_backoff() -> Duration {
    Duration::parse("30s").expect("a valid duration")
}

fn default_jitter() -> bool {
    true
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            jitter: default_jitter(),
        }
    }
}

#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    #[default]
    Key,
    Partition,
    Unordered,
}

#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum StartFrom {
    #[default]
    Latest,
    Earliest,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Replay {
    /// RFC 3339 time to move the group's offsets back to.
    pub from: Time,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventConsumerStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, and Paused or Degraded where they apply; a missing or not-ready EventTopic is
    /// reported here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Replicas the operator runs: the consumer Deployment's spec.replicas (0 during a replay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Replicas that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Records not yet consumed, summed over partitions: each partition's end offset minus the
    /// group's committed offset; a partition without a committed offset counts 0 under
    /// `startFrom: latest` and all its records under `earliest`. Measured on every resync.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Records in the dead-letter topic: the sum over its partitions of the high minus the
    /// low watermark, so it counts what every consumer writing there dead-lettered, less what
    /// retention has removed. Absent without a dead-letter topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<i64>,
    /// The last replay carried out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_replay: Option<LastReplay>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LastReplay {
    /// The time the offsets were moved back to (spec.replay.from).
    pub from: Time,
    /// When the offsets were moved.
    pub completed_at: Time,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn consumer(spec: serde_json::Value) -> EventConsumer {
        serde_json::from_value(json!({
            "apiVersion": "bridge.omninode.io/v1alpha1",
            "kind": "EventConsumer",
            "metadata": {"name": "workflow-coordinator", "namespace": "team-a"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn group_id_defaults_to_namespace_dot_name() {
        let c = consumer(json!({"topics": ["workflow-events"], "sink": {"url": "http://x/"}}));
        assert_eq!(c.group_id(), "team-a.workflow-coordinator");
    }

    #[test]
    fn group_id_from_the_spec_wins() {
        let c = consumer(json!({
            "topics": ["workflow-events"], "groupId": "legacy", "sink": {"url": "http://x/"}
        }));
        assert_eq!(c.group_id(), "legacy");
    }

    #[test]
    fn a_minimal_spec_reads_as_the_documented_defaults() {
        let c = consumer(json!({"topics": ["workflow-events"], "sink": {"url": "http://x/"}}));
        let d = &c.spec.delivery;
        assert_eq!(d.ordering, Ordering::Key);
        assert_eq!(d.retry.attempts, 5);
        assert_eq!(d.retry.initial_backoff.to_std().unwrap().as_millis(), 200);
        assert_eq!(d.retry.max_backoff.to_std().unwrap().as_secs(), 30);
        assert!(d.retry.jitter);
        assert_eq!(d.timeout.to_std().unwrap().as_secs(), 10);
        assert_eq!(d.max_in_flight, 64);
        assert_eq!(d.dead_letter_topic, None);
        assert_eq!(c.spec.start_from, StartFrom::Latest);
        assert_eq!(c.spec.fixed_replicas(), Some(1));
    }

    #[test]
    fn autoscaling_leaves_the_replica_count_to_the_operator() {
        let c = consumer(json!({
            "topics": ["workflow-events"], "sink": {"url": "http://x/"},
            "autoscaling": {"maxReplicas": 4}
        }));
        assert_eq!(c.spec.fixed_replicas(), None);
        let a = c.spec.autoscaling.unwrap();
        assert_eq!(
            (a.min_replicas, a.max_replicas, a.lag_threshold),
            (1, 4, 1000)
        );
    }

    #[test]
    fn replicas_has_no_schema_default_so_that_autoscaling_can_be_chosen() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(EventConsumer::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert!(spec["properties"]["replicas"].get("default").is_none());
        assert_eq!(spec["properties"]["delivery"]["default"]["maxInFlight"], 64);
        assert_eq!(
            spec["properties"]["topics"]["x-kubernetes-list-type"],
            "set"
        );
    }
}
