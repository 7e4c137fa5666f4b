//! The Kafka side of an EventTopic as plain data: the topic its spec asks for, what the
//! broker reports, and the changes that close the gap. No I/O here, so all of it is unit-tested.

use std::collections::BTreeMap;

use bridge_api::duration::DurationError;
use bridge_api::{EventTopic, EventTopicStatus};

/// Acknowledged writes (`acks=all`) survive the loss of one replica only with this many
/// in sync; Apache Kafka's broker default is 1, so the operator sets it on every topic.
const MIN_INSYNC_REPLICAS: i32 = 2;

/// The topic an EventTopic asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// The topic-level configs this object manages, values normalised.
    pub configs: BTreeMap<String, String>,
}

/// A topic as the broker reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedTopic {
    pub partitions: i32,
    pub replication_factor: i32,
    /// Kafka's topic id (base64, as `kafka-topics` prints it), when the broker gave one.
    pub topic_id: Option<String>,
    /// Configs set on the topic itself (Kafka's DYNAMIC_TOPIC_CONFIG), values as reported.
    pub configs: BTreeMap<String, String>,
}

/// One managed config key whose value on the broker differs from the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    pub key: String,
    /// The value on the broker, `None` when the key was not set on the topic.
    pub old: Option<String>,
    pub new: String,
}

/// What it takes to bring an existing topic in line with its spec.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TopicPlan {
    pub config_changes: Vec<ConfigChange>,
    /// `Some((current, desired))` when partitions must be added.
    pub grow_partitions: Option<(i32, i32)>,
    /// Differences the operator cannot carry out; each becomes a condition.
    pub unreconcilable: Vec<Unreconcilable>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unreconcilable {
    /// The broker has more partitions than the spec asks for; Kafka cannot remove partitions.
    PartitionsAboveSpec { on_broker: i32, in_spec: i32 },
    /// Changing the replication factor needs a partition reassignment, which the operator
    /// does not perform.
    ReplicationFactor { on_broker: i32, in_spec: i32 },
}

impl Unreconcilable {
    /// The condition reason: a stable CamelCase word.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::PartitionsAboveSpec { .. } => "PartitionsCannotDecrease",
            Self::ReplicationFactor { .. } => "ReplicationFactorChangeUnsupported",
        }
    }

    /// What a person should do about it.
    pub fn message(&self, topic: &str) -> String {
        match self {
            Self::PartitionsAboveSpec { on_broker, in_spec } => format!(
                "topic {topic} has {on_broker} partitions on the broker but spec.partitions is {in_spec}; \
                 Kafka cannot remove partitions: set spec.partitions to {on_broker} or more"
            ),
            Self::ReplicationFactor { on_broker, in_spec } => format!(
                "topic {topic} has replication factor {on_broker} on the broker but spec.replicationFactor is {in_spec}; \
                 the operator does not reassign partitions: set spec.replicationFactor back to {on_broker}, \
                 or reassign with kafka-reassign-partitions and the operator will see it"
            ),
        }
    }
}

impl TopicPlan {
    /// Whether anything would be written to Kafka.
    pub fn writes(&self) -> bool {
        !self.config_changes.is_empty() || self.grow_partitions.is_some()
    }
}

/// The topic `topic` asks for: its extra configs plus `retention.ms`, `cleanup.policy`, and
/// `min.insync.replicas` (min(2, replication factor) unless `spec.config` sets it).
pub fn desired_topic(topic: &EventTopic) -> Result<DesiredTopic, DurationError> {
    let spec = &topic.spec;
    let mut configs: BTreeMap<String, String> = spec
        .config
        .iter()
        .map(|(k, v)| (k.clone(), normalize(k, v)))
        .collect();
    configs.insert("retention.ms".into(), spec.retention_ms()?.to_string());
    configs.insert(
        "cleanup.policy".into(),
        spec.cleanup_policy.as_kafka_value().into(),
    );
    configs
        .entry("min.insync.replicas".into())
        .or_insert_with(|| spec.replication_factor.min(MIN_INSYNC_REPLICAS).to_string());
    Ok(DesiredTopic {
        name: topic.topic_name().to_owned(),
        partitions: spec.partitions,
        replication_factor: spec.replication_factor,
        configs,
    })
}

/// Whether the existing topic `name` is the one the object with `status` created or adopted:
/// the status names it, and its id is the topic's where both are known. A status naming the
/// topic without an id is a creation whose id was not known yet (the operator writes that
/// status before it sends CreateTopics); a description without an id tells nothing new.
pub fn created_or_adopted(
    status: Option<&EventTopicStatus>,
    name: &str,
    observed: &ObservedTopic,
) -> bool {
    let Some(status) = status.filter(|s| s.topic_name.as_deref() == Some(name)) else {
        return false;
    };
    match (&status.topic_id, &observed.topic_id) {
        (Some(ours), Some(on_broker)) => ours == on_broker,
        _ => true,
    }
}

/// The changes that bring `observed` to `desired`. Only the keys the spec manages are
/// compared: keys set on the topic by someone else are left as they are.
pub fn plan(desired: &DesiredTopic, observed: &ObservedTopic) -> TopicPlan {
    let config_changes = desired
        .configs
        .iter()
        .filter_map(|(key, want)| {
            let have = observed.configs.get(key);
            match have {
                Some(value) if normalize(key, value) == *want => None,
                _ => Some(ConfigChange {
                    key: key.clone(),
                    old: have.cloned(),
                    new: want.clone(),
                }),
            }
        })
        .collect();
    let mut unreconcilable = Vec::new();
    let grow_partitions = match observed.partitions.cmp(&desired.partitions) {
        std::cmp::Ordering::Less => Some((observed.partitions, desired.partitions)),
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => {
            unreconcilable.push(Unreconcilable::PartitionsAboveSpec {
                on_broker: observed.partitions,
                in_spec: desired.partitions,
            });
            None
        }
    };
    if observed.replication_factor != desired.replication_factor {
        unreconcilable.push(Unreconcilable::ReplicationFactor {
            on_broker: observed.replication_factor,
            in_spec: desired.replication_factor,
        });
    }
    TopicPlan {
        config_changes,
        grow_partitions,
        unreconcilable,
    }
}

/// The full set of topic configs to write when `changes` are applied. Kafka's AlterConfigs
/// replaces a topic's whole config set, so keys the operator does not manage are carried
/// over unchanged.
pub fn configs_after(
    observed: &BTreeMap<String, String>,
    desired: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut all = observed.clone();
    all.extend(desired.iter().map(|(k, v)| (k.clone(), v.clone())));
    all
}

/// A config value in the one form the broker and the spec are compared in: trimmed,
/// integers without leading zeros or sign noise, booleans lower-case, and list values
/// (`cleanup.policy=delete,compact`) sorted, so equivalent spellings never cause a write.
pub fn normalize(key: &str, value: &str) -> String {
    let value = value.trim();
    if key == "cleanup.policy" {
        let mut parts: Vec<&str> = value.split(',').map(str::trim).collect();
        parts.sort_unstable();
        parts.dedup();
        return parts.join(",");
    }
    if let Ok(n) = value.parse::<i64>() {
        return n.to_string();
    }
    if value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false") {
        return value.to_ascii_lowercase();
    }
    value.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge_api::event_topic::CleanupPolicy;
    use bridge_api::{EventTopicSpec, Retention};

    fn topic(spec: EventTopicSpec) -> EventTopic {
        EventTopic::new("orders", spec)
    }

    fn observed(partitions: i32, rf: i32, configs: &[(&str, &str)]) -> ObservedTopic {
        ObservedTopic {
            partitions,
            replication_factor: rf,
            topic_id: None,
            configs: configs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn defaults_ask_for_thirty_days_of_retention_and_delete_cleanup() {
        let desired = desired_topic(&topic(EventTopicSpec::default())).unwrap();
        assert_eq!(desired.name, "orders");
        assert_eq!(desired.partitions, 6);
        assert_eq!(desired.replication_factor, 3);
        assert_eq!(desired.configs["retention.ms"], "2592000000");
        assert_eq!(desired.configs["cleanup.policy"], "delete");
        assert_eq!(desired.configs["min.insync.replicas"], "2");
    }

    #[test]
    fn min_insync_replicas_is_two_at_most_the_replication_factor_unless_the_spec_says() {
        let with_rf = |rf| {
            desired_topic(&topic(EventTopicSpec {
                replication_factor: rf,
                ..Default::default()
            }))
            .unwrap()
            .configs["min.insync.replicas"]
                .clone()
        };
        assert_eq!(with_rf(1), "1");
        assert_eq!(with_rf(2), "2");
        assert_eq!(with_rf(5), "2");

        let mut spec = EventTopicSpec::default();
        spec.config.insert("min.insync.replicas".into(), "3".into());
        assert_eq!(
            desired_topic(&topic(spec)).unwrap().configs["min.insync.replicas"],
            "3"
        );
    }

    fn status(topic_name: Option<&str>, topic_id: Option<&str>) -> EventTopicStatus {
        EventTopicStatus {
            topic_name: topic_name.map(Into::into),
            topic_id: topic_id.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn a_topic_is_the_objects_own_only_when_its_status_names_it_with_the_same_id() {
        let own = |s: Option<EventTopicStatus>, on_broker_id: Option<&str>| {
            let mut on_broker = observed(6, 3, &[]);
            on_broker.topic_id = on_broker_id.map(Into::into);
            created_or_adopted(s.as_ref(), "orders", &on_broker)
        };
        let id = Some("AAAA");
        assert!(!own(None, id), "a new object finds another's topic");
        assert!(!own(Some(status(None, None)), id));
        assert!(
            !own(Some(status(Some("orders"), Some("BBBB"))), id),
            "re-created by someone else"
        );
        assert!(own(Some(status(Some("orders"), id)), id));
        assert!(
            own(Some(status(Some("orders"), None)), id),
            "created, id not yet known"
        );
        assert!(
            own(Some(status(Some("orders"), id)), None),
            "the broker gave no id this time"
        );
        assert!(!own(None, None));
    }

    #[test]
    fn state_topics_compact_and_infinite_retention_is_minus_one() {
        let desired = desired_topic(&topic(EventTopicSpec {
            cleanup_policy: CleanupPolicy::Compact,
            retention: Retention::parse("infinite").unwrap(),
            ..Default::default()
        }))
        .unwrap();
        assert_eq!(desired.configs["cleanup.policy"], "compact");
        assert_eq!(desired.configs["retention.ms"], "-1");
    }

    #[test]
    fn extra_configs_are_managed_alongside() {
        let mut spec = EventTopicSpec::default();
        spec.config.insert("segment.ms".into(), " 3600000 ".into());
        let desired = desired_topic(&topic(spec)).unwrap();
        assert_eq!(desired.configs["segment.ms"], "3600000");
    }

    #[test]
    fn a_topic_in_line_with_its_spec_needs_no_write() {
        let desired = desired_topic(&topic(EventTopicSpec::default())).unwrap();
        let on_broker = observed(
            6,
            3,
            &[
                ("retention.ms", "2592000000"),
                ("cleanup.policy", "delete"),
                ("min.insync.replicas", "2"),
            ],
        );
        let plan = plan(&desired, &on_broker);
        assert!(!plan.writes(), "{plan:?}");
        assert!(plan.unreconcilable.is_empty());
    }

    #[test]
    fn equivalent_spellings_are_not_drift() {
        let mut spec = EventTopicSpec {
            cleanup_policy: CleanupPolicy::CompactDelete,
            ..Default::default()
        };
        spec.config
            .insert("unclean.leader.election.enable".into(), "False".into());
        let desired = desired_topic(&topic(spec)).unwrap();
        let on_broker = observed(
            6,
            3,
            &[
                ("retention.ms", "2592000000"),
                ("cleanup.policy", "delete,compact"),
                ("unclean.leader.election.enable", "false"),
                ("min.insync.replicas", "02"),
            ],
        );
        assert!(!plan(&desired, &on_broker).writes());
    }

    #[test]
    fn changed_and_removed_keys_are_restored_with_old_and_new_values() {
        let desired = desired_topic(&topic(EventTopicSpec::default())).unwrap();
        let on_broker = observed(6, 3, &[("retention.ms", "1000")]);
        let plan = plan(&desired, &on_broker);
        assert_eq!(
            plan.config_changes,
            vec![
                ConfigChange {
                    key: "cleanup.policy".into(),
                    old: None,
                    new: "delete".into()
                },
                ConfigChange {
                    key: "min.insync.replicas".into(),
                    old: None,
                    new: "2".into()
                },
                ConfigChange {
                    key: "retention.ms".into(),
                    old: Some("1000".into()),
                    new: "2592000000".into()
                },
            ]
        );
    }

    #[test]
    fn partitions_grow_but_never_shrink() {
        let desired = desired_topic(&topic(EventTopicSpec {
            partitions: 12,
            ..Default::default()
        }))
        .unwrap();
        let mut on_broker = observed(6, 3, &[]);
        assert_eq!(plan(&desired, &on_broker).grow_partitions, Some((6, 12)));

        on_broker.partitions = 24;
        let plan = plan(&desired, &on_broker);
        assert_eq!(plan.grow_partitions, None);
        assert_eq!(
            plan.unreconcilable,
            vec![Unreconcilable::PartitionsAboveSpec {
                on_broker: 24,
                in_spec: 12
            }]
        );
    }

    #[test]
    fn a_replication_factor_change_is_reported_not_ignored() {
        let desired = desired_topic(&topic(EventTopicSpec {
            replication_factor: 1,
            ..Default::default()
        }))
        .unwrap();
        let plan = plan(&desired, &observed(6, 3, &[]));
        assert_eq!(
            plan.unreconcilable,
            vec![Unreconcilable::ReplicationFactor {
                on_broker: 3,
                in_spec: 1
            }]
        );
        let message = plan.unreconcilable[0].message("orders");
        assert!(
            message.contains("spec.replicationFactor back to 3"),
            "{message}"
        );
    }

    #[test]
    fn writing_configs_keeps_keys_the_operator_does_not_manage() {
        let observed = BTreeMap::from([
            ("min.insync.replicas".to_string(), "2".to_string()),
            ("retention.ms".to_string(), "1000".to_string()),
        ]);
        let desired = BTreeMap::from([("retention.ms".to_string(), "5000".to_string())]);
        let all = configs_after(&observed, &desired);
        assert_eq!(all["min.insync.replicas"], "2");
        assert_eq!(all["retention.ms"], "5000");
    }
}
