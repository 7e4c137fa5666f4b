//! `EventTopic`: one Kafka topic under declarative control. The schema refuses what Kafka
//! could never carry out (illegal names, renames, fewer partitions) before the operator sees it.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::duration::{DurationError, Retention};

/// The longest topic name Kafka accepts.
pub const MAX_TOPIC_NAME_LENGTH: usize = 249;

/// Why a topic name starting with `_` is refused, by the schema and by the operator alike.
pub const INTERNAL_TOPIC_NAME_MESSAGE: &str = "topicName must not start with '_': such names are internal topics of Kafka (__consumer_offsets, __transaction_state) and of its tools (_schemas, _confluent-*), which an EventTopic must never manage";

/// A Kafka topic, created and kept in line with this spec by the operator.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bridge.omninode.io",
    version = "v1alpha1",
    kind = "EventTopic",
    namespaced,
    shortname = "et",
    status = "EventTopicStatus",
    derive = "PartialEq",
    doc = "A Kafka topic under declarative control: created, adopted, and kept in line with its spec by bridge-operator",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Topic",
        type_ = "string",
        description = "The Kafka topic name",
        json_path = ".status.topicName"
    ),
    printcolumn(
        name = "Partitions",
        type_ = "integer",
        json_path = ".spec.partitions"
    ),
    printcolumn(
        name = "RF",
        type_ = "integer",
        description = "Replication factor",
        json_path = ".spec.replicationFactor"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    validation = Rule::new(
        "(has(self.spec.topicName) ? self.spec.topicName : self.metadata.name) == (has(oldSelf.spec.topicName) ? oldSelf.spec.topicName : oldSelf.metadata.name)"
    )
    .message("spec.topicName is immutable: the Kafka topic of an EventTopic cannot be renamed; create a new EventTopic for another topic")
    .field_path(".spec.topicName"),
    validation = Rule::new("has(self.spec.topicName) || size(self.metadata.name) <= 249").message(
        "metadata.name is longer than the 249 characters Kafka allows in a topic name: set spec.topicName"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct EventTopicSpec {
    /// Kafka topic name; defaults to metadata.name. Cannot change once the object exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 249))]
    #[x_kube(
        validation = Rule::new("self.matches('^[a-zA-Z0-9._-]+$') && self != '.' && self != '..'").message(
            "topicName must be 1 to 249 letters, digits, '.', '_' or '-' (Kafka's legal topic names), and not '.' or '..'"
        ),
        validation = Rule::new("!self.startsWith('_')").message(INTERNAL_TOPIC_NAME_MESSAGE)
    )]
    pub topic_name: Option<String>,

    /// Number of partitions. Kafka can add partitions but never remove them, so this may only grow.
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10000))]
    // A messageExpression quoting oldSelf would be clearer, but `string(int)` has no size
    // bound for the API server's cost estimate, which then refuses the whole CRD.
    #[x_kube(validation = Rule::new("self >= oldSelf").message(
        "partitions can only grow: Kafka cannot remove partitions from a topic; keep the current count or raise it, or create a new EventTopic"
    ))]
    pub partitions: i32,

    /// Copies of each partition. A change the operator cannot carry out is reported as a condition.
    #[serde(default = "default_replication_factor")]
    #[schemars(range(min = 1, max = 32767))]
    pub replication_factor: i32,

    /// How long records are kept: a duration (30d, 12h, 90m) or `infinite`.
    #[serde(default)]
    pub retention: Retention,

    /// `delete` drops old records, `compact` keeps the latest record per key (state topics).
    #[serde(default)]
    pub cleanup_policy: CleanupPolicy,

    /// Further Kafka topic configs, such as `segment.ms`; values are strings.
    /// `min.insync.replicas` is min(2, replicationFactor) unless set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("!('retention.ms' in self) && !('cleanup.policy' in self)").message(
        "config must not set retention.ms or cleanup.policy: use spec.retention and spec.cleanupPolicy instead"
    ))]
    pub config: BTreeMap<String, String>,

    /// `Retain` leaves the Kafka topic when the object is deleted; `Delete` deletes the topic first.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Take over a Kafka topic that exists already and that this EventTopic did not create
    /// (made with kafka-topics, by another tool, left by a deleted EventTopic). Without it
    /// such a topic is left untouched, never deleted, and the object reports Ready=False
    /// TopicExists. With it the operator adopts the topic: sets retention.ms,
    /// cleanup.policy and spec.config on it, adds partitions, and under deletionPolicy
    /// Delete deletes it with the object. Once adopted (status.topicId names it) the topic
    /// stays this object's; the field matters only until then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt_existing: bool,
}

fn default_partitions() -> i32 {
    6
}

fn default_replication_factor() -> i32 {
    3
}

impl Default for EventTopicSpec {
    fn default() -> Self {
        Self {
            topic_name: None,
            partitions: default_partitions(),
            replication_factor: default_replication_factor(),
            retention: Retention::default(),
            cleanup_policy: CleanupPolicy::default(),
            config: BTreeMap::new(),
            deletion_policy: DeletionPolicy::default(),
            adopt_existing: false,
        }
    }
}

impl EventTopicSpec {
    /// Kafka's `retention.ms` for this topic (`-1` for `infinite`).
    pub fn retention_ms(&self) -> Result<i64, DurationError> {
        self.retention.retention_ms()
    }
}

impl EventTopic {
    /// The Kafka topic this object manages: spec.topicName, else metadata.name.
    pub fn topic_name(&self) -> &str {
        self.spec
            .topic_name
            .as_deref()
            .or(self.metadata.name.as_deref())
            .unwrap_or_default()
    }
}

/// Whether `name` is an internal topic of Kafka or of a tool around it (`__consumer_offsets`,
/// `_schemas`, ...): none an EventTopic may manage. The schema refuses them; objects made
/// before that rule still reach the operator.
pub fn is_internal_topic_name(name: &str) -> bool {
    name.starts_with('_')
}

/// Kafka's `cleanup.policy`.
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum CleanupPolicy {
    #[default]
    #[serde(rename = "delete")]
    Delete,
    #[serde(rename = "compact")]
    Compact,
    #[serde(rename = "compact,delete")]
    CompactDelete,
}

impl CleanupPolicy {
    /// The value of Kafka's `cleanup.policy` topic config.
    pub fn as_kafka_value(self) -> &'static str {
        match self {
            Self::Delete => "delete",
            Self::Compact => "compact",
            Self::CompactDelete => "compact,delete",
        }
    }
}

/// What deleting the EventTopic does to the Kafka topic. `Retain` leaves it and sets no
/// finalizer, so a namespace never hangs on it; `Delete` uses a finalizer that deletes the
/// topic before the object goes. (Variants carry no doc comments: schemars would turn them
/// into a `oneOf`, which is not a plain enum in the CRD.)
#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Delete,
}

/// What the operator last saw on the broker.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventTopicStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, and Paused, Conflict or Degraded where they apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The Kafka topic name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_name: Option<String>,
    /// Kafka's id of the topic, which changes when the topic is deleted and re-created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_id: Option<String>,
    /// Partitions as seen on the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// Replication factor as seen on the broker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_factor: Option<i32>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;
    use serde_json::json;

    fn spec_schema() -> serde_json::Value {
        let crd = EventTopic::crd();
        let schema = serde_json::to_value(&crd.spec.versions[0].schema).unwrap();
        schema["openAPIV3Schema"]["properties"]["spec"].clone()
    }

    #[test]
    fn topic_name_defaults_to_the_object_name() {
        let topic = EventTopic::new("orders", EventTopicSpec::default());
        assert_eq!(topic.topic_name(), "orders");
    }

    #[test]
    fn topic_name_from_the_spec_wins() {
        let spec = EventTopicSpec {
            topic_name: Some("orders.v2".into()),
            ..Default::default()
        };
        assert_eq!(EventTopic::new("orders", spec).topic_name(), "orders.v2");
    }

    #[test]
    fn an_empty_spec_reads_as_the_documented_defaults() {
        let spec: EventTopicSpec = serde_json::from_value(json!({})).unwrap();
        assert_eq!(spec, EventTopicSpec::default());
        assert_eq!(spec.partitions, 6);
        assert_eq!(spec.replication_factor, 3);
        assert_eq!(spec.retention.as_str(), "30d");
        assert_eq!(spec.retention_ms(), Ok(2_592_000_000));
        assert_eq!(spec.cleanup_policy, CleanupPolicy::Delete);
        assert_eq!(spec.deletion_policy, DeletionPolicy::Retain);
    }

    #[test]
    fn schema_defaults_match_the_rust_defaults() {
        let spec = spec_schema();
        let props = &spec["properties"];
        assert_eq!(props["partitions"]["default"], 6);
        assert_eq!(props["replicationFactor"]["default"], 3);
        assert_eq!(props["retention"]["default"], "30d");
        assert_eq!(props["cleanupPolicy"]["default"], "delete");
        assert_eq!(props["deletionPolicy"]["default"], "Retain");
    }

    #[test]
    fn cleanup_policy_uses_kafkas_spelling() {
        let spec: EventTopicSpec =
            serde_json::from_value(json!({"cleanupPolicy": "compact,delete"})).unwrap();
        assert_eq!(spec.cleanup_policy.as_kafka_value(), "compact,delete");
        let props = &spec_schema()["properties"];
        assert_eq!(
            props["cleanupPolicy"]["enum"],
            json!(["delete", "compact", "compact,delete"])
        );
        assert_eq!(props["deletionPolicy"]["enum"], json!(["Retain", "Delete"]));
    }

    #[test]
    fn unset_optional_fields_are_not_serialized() {
        let value = serde_json::to_value(EventTopicSpec::default()).unwrap();
        assert!(value.get("topicName").is_none());
        assert!(value.get("config").is_none());
        assert!(value.get("adoptExisting").is_none());
    }

    #[test]
    fn internal_topics_of_kafka_and_its_tools_are_recognised() {
        for name in [
            "__consumer_offsets",
            "__transaction_state",
            "_schemas",
            "_confluent-metrics",
        ] {
            assert!(is_internal_topic_name(name), "{name}");
        }
        assert!(!is_internal_topic_name("orders_v1"));
    }
}
