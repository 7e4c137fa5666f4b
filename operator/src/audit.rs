//! The audit trail of what the operator changes in Kafka: each change is published as a
//! CloudEvent on `audit-events` (when that topic exists) and told in one line as a
//! Kubernetes Event on the object.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bridge_api::EventTopic;
use bridge_events::CloudEvent;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::{Event, EventType};
use kube::{Resource, ResourceExt};
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::events::EventPublisher;

pub use bridge_events::topics::AUDIT as AUDIT_TOPIC;

/// One value the operator changed: `field` is `partitions` or `config.<key>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    pub field: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// A change the operator made to a Kafka topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TopicAction {
    Created,
    /// Created again after it was deleted behind the operator's back.
    Recreated,
    ConfigChanged,
    PartitionsIncreased,
    Deleted,
}

impl TopicAction {
    fn type_suffix(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Recreated => "recreated",
            Self::ConfigChanged => "configchanged",
            Self::PartitionsIncreased => "partitionsincreased",
            Self::Deleted => "deleted",
        }
    }

    /// The Kubernetes Event reason.
    fn reason(self) -> &'static str {
        match self {
            Self::Created => "TopicCreated",
            Self::Recreated => "TopicRecreated",
            Self::ConfigChanged => "TopicConfigChanged",
            Self::PartitionsIncreased => "PartitionsIncreased",
            Self::Deleted => "TopicDeleted",
        }
    }

    /// A topic that vanished and had to be re-created is something a person should look at.
    fn event_type(self) -> EventType {
        match self {
            Self::Recreated => EventType::Warning,
            _ => EventType::Normal,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct AuditData<'a> {
    object: ObjectIdentity<'a>,
    topic: &'a str,
    action: TopicAction,
    changes: &'a [FieldChange],
}

#[derive(Serialize)]
struct ObjectIdentity<'a> {
    kind: &'static str,
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
}

/// The one-line account of a change, as the Kubernetes Event note says it.
pub fn describe_change(action: TopicAction, topic: &str, changes: &[FieldChange]) -> String {
    let verb = match action {
        TopicAction::Created => "created Kafka topic",
        TopicAction::Recreated => {
            "re-created Kafka topic, which had been deleted outside the operator:"
        }
        TopicAction::ConfigChanged => "changed configs of Kafka topic",
        TopicAction::PartitionsIncreased => "added partitions to Kafka topic",
        TopicAction::Deleted => "deleted Kafka topic",
    };
    let details: Vec<String> = changes
        .iter()
        .map(|c| {
            format!(
                "{} {} -> {}",
                c.field,
                c.old.as_deref().unwrap_or("(unset)"),
                c.new.as_deref().unwrap_or("(unset)")
            )
        })
        .collect();
    if details.is_empty() {
        format!("{verb} {topic}")
    } else {
        format!("{verb} {topic}: {}", details.join(", "))
    }
}

#[derive(Clone)]
pub struct AuditLog {
    producer: FutureProducer,
    events: EventPublisher,
    sequence: Arc<AtomicU64>,
}

impl AuditLog {
    pub fn new(kafka: &ClientConfig, events: EventPublisher) -> Result<Self, KafkaError> {
        let producer = kafka
            .clone()
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("partitioner", "murmur2_random")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self {
            producer,
            events,
            sequence: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Records `action` on the object's Events and, when `audit-events` exists, on Kafka.
    /// Neither may fail the reconcile: a lost audit line is logged, not retried.
    pub async fn record(
        &self,
        object: &EventTopic,
        action: TopicAction,
        changes: &[FieldChange],
        publish_to_kafka: bool,
    ) {
        let topic = object.topic_name();
        let note = describe_change(action, topic, changes);
        tracing::info!(object = %object.name_any(), namespace = ?object.namespace(), "{note}");
        let event = Event {
            type_: action.event_type(),
            reason: action.reason().into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = self.events.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%error, "publishing a Kubernetes Event failed");
        }
        if publish_to_kafka {
            self.publish(object, action, changes);
        }
    }

    fn publish(&self, object: &EventTopic, action: TopicAction, changes: &[FieldChange]) {
        let namespace = object.namespace().unwrap_or_default();
        let name = object.name_any();
        let uid = object.uid().unwrap_or_default();
        let data = AuditData {
            object: ObjectIdentity {
                kind: "EventTopic",
                namespace: &namespace,
                name: &name,
                uid: &uid,
            },
            topic: object.topic_name(),
            action,
            changes,
        };
        let now = Timestamp::now();
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let mut event = CloudEvent::new(
            format!("{uid}-{}-{sequence}", now.as_nanosecond()),
            format!("/bridge-operator/namespaces/{namespace}/eventtopics/{name}"),
            format!("io.omninode.bridge.topic.{}", action.type_suffix()),
            // The object's uid keeps one object's audit trail in one partition, in order.
            uid.clone(),
            serde_json::to_vec(&data).unwrap_or_default(),
        );
        event.time = Some(now.to_string());
        event.subject = Some(object.topic_name().to_owned());
        event.datacontenttype = Some("application/json".into());
        event.schema_version = Some("1".into());
        let producer = self.producer.clone();
        tokio::spawn(async move {
            let headers = event.to_kafka_headers();
            let record = FutureRecord::to(AUDIT_TOPIC)
                .key(event.kafka_key())
                .payload(&event.data)
                .headers(headers);
            if let Err((error, _)) = producer.send(record, Duration::from_secs(30)).await {
                tracing::warn!(%error, "publishing an audit event to {AUDIT_TOPIC} failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_note_names_each_old_and_new_value() {
        let note = describe_change(
            TopicAction::ConfigChanged,
            "orders",
            &[FieldChange {
                field: "config.retention.ms".into(),
                old: Some("1000".into()),
                new: Some("2592000000".into()),
            }],
        );
        assert_eq!(
            note,
            "changed configs of Kafka topic orders: config.retention.ms 1000 -> 2592000000"
        );
    }

    #[test]
    fn a_recreated_topic_is_a_warning() {
        assert_eq!(TopicAction::Recreated.event_type(), EventType::Warning);
        assert_eq!(TopicAction::Created.event_type(), EventType::Normal);
    }
}
