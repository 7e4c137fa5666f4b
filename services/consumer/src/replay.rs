//! Replay: moves a consumer group's committed offsets back to a point in time, so its
//! consumers deliver again from there. Kafka only lets offsets move while the group has no
//! members, so the caller (the operator) stops the consumers first; this refuses otherwise.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Where one partition's committed offset was moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayedPartition {
    pub topic: String,
    pub partition: i32,
    /// The first offset at or after the replay time; the end of the partition when nothing
    /// was written since.
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "consumer group `{group}` still has {members} member(s) ({clients}): stop its consumers (scale the workload to 0 replicas) before replaying"
    )]
    GroupActive {
        group: String,
        members: usize,
        clients: String,
    },
    #[error("topic `{0}` does not exist on the Kafka cluster")]
    UnknownTopic(String),
    #[error("the replay time is before 1970")]
    TimeBeforeEpoch,
    #[error("replaying consumer group `{group}`: {action} failed: {source}")]
    Kafka {
        group: String,
        action: &'static str,
        #[source]
        source: KafkaError,
    },
}

/// Commits, for every partition of `topics`, the first offset whose record is at or after
/// `from` as the position of `group_id`. `kafka` carries the connection settings
/// (`KafkaSettings::client_config()`). Blocks for up to a few times `timeout`; from async
/// code call [`replay_group_to_time_async`].
pub fn replay_group_to_time(
    kafka: &ClientConfig,
    group_id: &str,
    topics: &[String],
    from: SystemTime,
    timeout: Duration,
) -> Result<Vec<ReplayedPartition>, ReplayError> {
    let failed = |action: &'static str| {
        let group = group_id.to_owned();
        move |source| ReplayError::Kafka {
            group,
            action,
            source,
        }
    };
    let millis = from
        .duration_since(UNIX_EPOCH)
        .map_err(|_| ReplayError::TimeBeforeEpoch)?
        .as_millis() as i64;

    let mut config = kafka.clone();
    config
        .set("group.id", group_id)
        .set("enable.auto.commit", "false");
    let consumer: BaseConsumer = config.create().map_err(failed("creating a Kafka client"))?;

    refuse_active_group(&consumer, group_id, timeout)?;

    let mut times = TopicPartitionList::new();
    for topic in topics {
        let metadata = consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(failed("reading topic metadata"))?;
        let partitions = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
            .filter(|count| *count > 0)
            .ok_or_else(|| ReplayError::UnknownTopic(topic.clone()))?;
        for partition in 0..partitions as i32 {
            times
                .add_partition_offset(topic, partition, Offset::Offset(millis))
                .map_err(failed("building the partition list"))?;
        }
    }
    let found = consumer
        .offsets_for_times(times, timeout)
        .map_err(failed("looking up offsets by time"))?;

    let mut positions = TopicPartitionList::new();
    let mut replayed = Vec::new();
    for element in found.elements() {
        let offset = match element.offset() {
            Offset::Offset(offset) => offset,
            // Nothing was written at or after the time: start at the end.
            _ => {
                consumer
                    .fetch_watermarks(element.topic(), element.partition(), timeout)
                    .map_err(failed("reading the end of a partition"))?
                    .1
            }
        };
        positions
            .add_partition_offset(element.topic(), element.partition(), Offset::Offset(offset))
            .map_err(failed("building the partition list"))?;
        replayed.push(ReplayedPartition {
            topic: element.topic().to_owned(),
            partition: element.partition(),
            offset,
        });
    }
    // A consumer that joined between the check and here makes the broker refuse this
    // commit, so the group is never moved under a running member.
    consumer
        .commit(&positions, CommitMode::Sync)
        .map_err(failed("committing the new offsets"))?;
    tracing::info!(
        group = group_id,
        from_millis = millis,
        partitions = replayed.len(),
        "consumer group offsets moved for replay"
    );
    Ok(replayed)
}

/// [`replay_group_to_time`] on a blocking thread.
pub async fn replay_group_to_time_async(
    kafka: ClientConfig,
    group_id: String,
    topics: Vec<String>,
    from: SystemTime,
    timeout: Duration,
) -> Result<Vec<ReplayedPartition>, ReplayError> {
    tokio::task::spawn_blocking(move || {
        replay_group_to_time(&kafka, &group_id, &topics, from, timeout)
    })
    .await
    .expect("the replay thread does not panic")
}

fn refuse_active_group(
    consumer: &BaseConsumer,
    group_id: &str,
    timeout: Duration,
) -> Result<(), ReplayError> {
    let groups = consumer
        .fetch_group_list(Some(group_id), timeout)
        .map_err(|source| ReplayError::Kafka {
            group: group_id.to_owned(),
            action: "describing the consumer group",
            source,
        })?;
    if let Some(group) = groups.groups().iter().find(|g| g.name() == group_id) {
        let members = group.members();
        if !members.is_empty() {
            let clients = members
                .iter()
                .map(|m| format!("{} on {}", m.client_id(), m.client_host()))
                .collect::<Vec<_>>()
                .join(", ");
            return Err(ReplayError::GroupActive {
                group: group_id.to_owned(),
                members: members.len(),
                clients,
            });
        }
    }
    Ok(())
}
