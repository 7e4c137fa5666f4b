//! The largest record Kafka takes for each route's topic: the producer's
//! `message.max.bytes`, and the topic's own `max.message.bytes` read from Kafka (and read
//! again every few minutes, as a topic's config can change). An event over the limit is
//! answered 413 before anything else, so it is neither acknowledged nor spooled; a record
//! Kafka refuses after all (a limit changed meanwhile) is the drain's to quarantine.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, OwnedResourceSpecifier, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;

/// How often the topics' limits are read again.
const REFRESH: Duration = Duration::from_secs(300);
/// What a record batch of one record adds to the record (its header, about 61 bytes): the
/// topic's `max.message.bytes` bounds the whole batch.
const BATCH_OVERHEAD: usize = 64;

pub struct RecordLimits {
    /// The producer's `message.max.bytes`.
    producer: usize,
    /// Each topic's `max.message.bytes`, once read.
    topics: Mutex<HashMap<String, usize>>,
}

/// Why a record is too large: its size, the limit, and whose limit it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TooLarge {
    pub bytes: usize,
    pub limit: usize,
    pub whose: String,
}

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the event would be a Kafka record of about {} bytes (data, key and CloudEvents headers); {} at most {}",
            self.bytes, self.whose, self.limit
        )
    }
}

impl RecordLimits {
    pub fn new(producer: usize) -> Self {
        Self {
            producer,
            topics: Mutex::new(HashMap::new()),
        }
    }

    /// `Err` when a record of `bytes` (by [`crate::publisher::record_bytes`]) is larger than
    /// the producer sends or than `topic` takes.
    pub fn check(&self, topic: &str, bytes: usize) -> Result<(), TooLarge> {
        if bytes > self.producer {
            return Err(TooLarge {
                bytes,
                limit: self.producer,
                whose: "this receiver's producer sends (message.max.bytes)".into(),
            });
        }
        let topic_limit = self
            .topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .copied();
        match topic_limit {
            Some(limit) if bytes + BATCH_OVERHEAD > limit => Err(TooLarge {
                bytes,
                limit: limit.saturating_sub(BATCH_OVERHEAD),
                whose: format!("topic {topic} takes (its max.message.bytes is {limit})"),
            }),
            _ => Ok(()),
        }
    }

    fn set(&self, topic: &str, limit: usize) {
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned(), limit);
    }

    /// Reads the topics' `max.message.bytes` once. A topic whose config cannot be read
    /// (Kafka away, no `DescribeConfigs` permission) keeps the limit last read, or only
    /// the producer's; the brokers then refuse what is too large, and the drain moves it
    /// aside. Returns the error, if any, for the caller to log.
    pub async fn read(
        &self,
        admin: &AdminClient<DefaultClientContext>,
        topics: &[String],
    ) -> Option<String> {
        let specifiers: Vec<_> = topics
            .iter()
            .map(|topic| ResourceSpecifier::Topic(topic))
            .collect();
        let options = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
        let results = match admin.describe_configs(&specifiers, &options).await {
            Ok(results) => results,
            Err(error) => return Some(error.to_string()),
        };
        let mut failed = None;
        for result in results {
            match result {
                Ok(resource) => {
                    let limit = resource
                        .get("max.message.bytes")
                        .and_then(|entry| entry.value.as_deref())
                        .and_then(|value| value.parse().ok());
                    if let (OwnedResourceSpecifier::Topic(topic), Some(limit)) =
                        (&resource.specifier, limit)
                    {
                        self.set(topic, limit);
                    }
                }
                Err(error) => failed = Some(format!("{error:?}")),
            }
        }
        failed
    }

    /// Reads the limits again every [`REFRESH`], for as long as the process runs.
    pub async fn follow(&self, admin: AdminClient<DefaultClientContext>, topics: Vec<String>) {
        loop {
            tokio::time::sleep(REFRESH).await;
            if let Some(error) = self.read(&admin, &topics).await {
                tracing::debug!(%error, "cannot read the topics' max.message.bytes now");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smaller_of_the_producers_and_the_topics_limit_holds() {
        let limits = RecordLimits::new(1_000_000);
        assert!(limits.check("t", 999_999).is_ok());
        let refused = limits.check("t", 1_000_001).unwrap_err();
        assert_eq!(refused.limit, 1_000_000);
        assert!(
            refused
                .to_string()
                .ends_with("this receiver's producer sends (message.max.bytes) at most 1000000")
        );
        limits.set("t", 4096);
        assert!(limits.check("t", 4000).is_ok());
        let refused = limits.check("t", 4050).unwrap_err();
        assert_eq!(refused.limit, 4096 - BATCH_OVERHEAD);
        assert!(
            refused.whose.starts_with("topic t takes"),
            "{}",
            refused.whose
        );
        assert!(limits.check("other", 4050).is_ok(), "limits are per topic");
    }
}
