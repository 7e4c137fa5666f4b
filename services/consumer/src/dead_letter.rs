//! What goes to the dead-letter topic: the original record as it was (key, value, headers)
//! plus headers that say why it failed and where it came from, so it can be read, fixed and
//! replayed.

use std::sync::Arc;

use rdkafka::message::{Header, Headers, OwnedHeaders};

/// The dead-letter headers, all UTF-8 text.
pub mod header {
    /// `invalid-event`, `rejected` or `retries-exhausted`.
    pub const REASON: &str = "dlt-reason";
    /// What went wrong, for a person.
    pub const ERROR: &str = "dlt-error";
    /// Delivery attempts made (0 for a record that was never a valid event).
    pub const ATTEMPTS: &str = "dlt-attempts";
    /// The sink's last HTTP status; absent when it never answered.
    pub const LAST_STATUS: &str = "dlt-last-status";
    pub const SOURCE_TOPIC: &str = "dlt-source-topic";
    pub const SOURCE_PARTITION: &str = "dlt-source-partition";
    pub const SOURCE_OFFSET: &str = "dlt-source-offset";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// The record is not a CloudEvent this service can read.
    InvalidEvent,
    /// The sink refused the event with an answer that retrying would not change.
    Rejected,
    /// Every attempt failed with an error worth retrying.
    RetriesExhausted,
}

impl DeadLetterReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidEvent => "invalid-event",
            Self::Rejected => "rejected",
            Self::RetriesExhausted => "retries-exhausted",
        }
    }
}

/// Why and after how much effort a record is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub reason: DeadLetterReason,
    pub error: String,
    pub attempts: u32,
    pub last_status: Option<u16>,
}

/// Where a record was read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordOrigin {
    /// Shared by every record of the topic.
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for RecordOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// The original headers, unchanged and in order, followed by the dead-letter headers.
pub fn dead_letter_headers(
    original: Option<&OwnedHeaders>,
    origin: &RecordOrigin,
    failure: &Failure,
) -> OwnedHeaders {
    let mut headers = OwnedHeaders::new_with_capacity(original.map_or(0, |h| h.count()) + 7);
    for kept in original.into_iter().flat_map(|h| h.iter()) {
        headers = headers.insert(kept);
    }
    let attempts = failure.attempts.to_string();
    let partition = origin.partition.to_string();
    let offset = origin.offset.to_string();
    let last_status = failure.last_status.map(|status| status.to_string());
    let mut added = vec![
        (header::REASON, failure.reason.as_str()),
        (header::ERROR, failure.error.as_str()),
        (header::ATTEMPTS, attempts.as_str()),
        (header::SOURCE_TOPIC, &*origin.topic),
        (header::SOURCE_PARTITION, partition.as_str()),
        (header::SOURCE_OFFSET, offset.as_str()),
    ];
    if let Some(status) = &last_status {
        added.push((header::LAST_STATUS, status.as_str()));
    }
    for (key, value) in added {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(headers: &OwnedHeaders, key: &str) -> Option<String> {
        headers
            .iter()
            .filter(|h| h.key == key)
            .last()
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    #[test]
    fn the_original_headers_come_first_then_the_failure() {
        let original = OwnedHeaders::new()
            .insert(Header {
                key: "ce_id",
                value: Some("e-1"),
            })
            .insert(Header {
                key: "raw",
                value: Some(&[0xffu8, 0x00][..]),
            });
        let origin = RecordOrigin {
            topic: "workflow-events".into(),
            partition: 2,
            offset: 41,
        };
        let failure = Failure {
            reason: DeadLetterReason::RetriesExhausted,
            error: "the sink answered 503 Service Unavailable".into(),
            attempts: 5,
            last_status: Some(503),
        };
        let headers = dead_letter_headers(Some(&original), &origin, &failure);

        let keys: Vec<_> = headers.iter().map(|h| h.key.to_owned()).collect();
        assert_eq!(&keys[..2], ["ce_id", "raw"]);
        assert_eq!(headers.get(1).value, Some(&[0xffu8, 0x00][..]));
        assert_eq!(text(&headers, header::REASON).unwrap(), "retries-exhausted");
        assert_eq!(text(&headers, header::ATTEMPTS).unwrap(), "5");
        assert_eq!(text(&headers, header::LAST_STATUS).unwrap(), "503");
        assert_eq!(
            text(&headers, header::SOURCE_TOPIC).unwrap(),
            "workflow-events"
        );
        assert_eq!(text(&headers, header::SOURCE_PARTITION).unwrap(), "2");
        assert_eq!(text(&headers, header::SOURCE_OFFSET).unwrap(), "41");
        assert!(text(&headers, header::ERROR).unwrap().contains("503"));
    }

    #[test]
    fn a_record_the_sink_never_saw_has_no_last_status() {
        let origin = RecordOrigin {
            topic: "t".into(),
            partition: 0,
            offset: 0,
        };
        let failure = Failure {
            reason: DeadLetterReason::InvalidEvent,
            error: "the CloudEvent has no `type` attribute, which is required".into(),
            attempts: 0,
            last_status: None,
        };
        let headers = dead_letter_headers(None, &origin, &failure);
        assert_eq!(text(&headers, header::REASON).unwrap(), "invalid-event");
        assert_eq!(text(&headers, header::LAST_STATUS), None);
    }
}
