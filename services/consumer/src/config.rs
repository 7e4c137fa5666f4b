//! The `event-consumer --config FILE` format: the operator renders it from an EventConsumer
//! and a person can write it by hand. Field names follow the CRD; unknown fields are refused.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration as StdDuration;

use bridge_api::duration::Duration;
pub use bridge_api::event_consumer::{Ordering, StartFrom};
use bridge_events::KafkaSettings;
use serde::{Deserialize, Serialize};

use crate::retry::RetryPolicy;

/// librdkafka properties this service sets itself because its delivery guarantee rests on
/// them, with the field to use instead where there is one.
const OWNED_KAFKA_PROPERTIES: &[(&str, &str)] = &[
    ("group.id", "set `groupId`"),
    (
        "enable.auto.offset.store",
        "only the offsets of finished events count",
    ),
    (
        "enable.auto.commit",
        "finished offsets are committed every second, on revoke and on shutdown",
    ),
    (
        "partition.assignment.strategy",
        "cooperative-sticky keeps rebalances incremental",
    ),
    ("auto.offset.reset", "set `startFrom`"),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub admin_listen: SocketAddr,
    pub kafka: KafkaSettings,
    pub group_id: String,
    /// Kafka topic names.
    pub topics: Vec<String>,
    pub sink: SinkConfig,
    #[serde(default, skip_serializing_if = "FilterConfig::is_empty")]
    pub filter: FilterConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub start_from: StartFrom,
    /// Where start, ready and stopping are announced.
    #[serde(default = "default_lifecycle_topic")]
    pub lifecycle_topic: String,
}

fn default_lifecycle_topic() -> String {
    bridge_events::topics::SERVICE_LIFECYCLE.to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkConfig {
    /// `http://` or `https://` URL each event is POSTed to.
    pub url: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterConfig {
    /// Event type patterns to deliver (`workflow.*`); empty delivers every type.
    #[serde(default)]
    pub types: Vec<String>,
}

impl FilterConfig {
    fn is_empty(&self) -> bool {
        self.types.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeliveryConfig {
    #[serde(default)]
    pub ordering: Ordering,
    /// Events read from Kafka and not yet finished, at most.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: u32,
    /// Per request to the sink.
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Kafka topic name; without one a failed event blocks its key (or partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
}

fn default_max_in_flight() -> u32 {
    64
}

fn default_timeout() -> Duration {
    Duration::parse("10s").expect("a valid duration")
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            ordering: Ordering::default(),
            max_in_flight: default_max_in_flight(),
            timeout: default_timeout(),
            retry: RetryConfig::default(),
            dead_letter_topic: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryConfig {
    /// Tries per event, the first included.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default = "default_initial_backoff")]
    pub initial_backoff: Duration,
    #[serde(default = "default_max_backoff")]
    pub max_backoff: Duration,
    #[serde(default = "default_jitter")]
    pub jitter: bool,
}

fn default_attempts() -> u32 {
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

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            jitter: default_jitter(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read the config file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] serde_yaml::Error),
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    InFile {
        path: PathBuf,
        #[source]
        source: Box<ConfigError>,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// Refuses the librdkafka properties the service sets itself; `field` is where they were
/// written (inline, or the file `kafka.propertiesFile` added).
fn owned_properties_unset(kafka: &KafkaSettings, field: &'static str) -> Result<(), ConfigError> {
    for (property, instead) in OWNED_KAFKA_PROPERTIES {
        if kafka.properties.contains_key(*property) {
            return Err(invalid(
                field,
                format!("`{property}` is set by event-consumer itself ({instead}); remove it"),
            ));
        }
    }
    Ok(())
}

impl ConsumerConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let in_file = |error: ConfigError| ConfigError::InFile {
            path: path.to_owned(),
            source: Box::new(error),
        };
        let mut config = Self::from_yaml(&text).map_err(in_file)?;
        // `kafka.propertiesFile` is read here, once: `from_yaml` alone leaves it unread, as
        // the operator renders configs that name a file only the consumer's Pod mounts.
        if config.kafka.properties_file.is_some() {
            config.kafka = config
                .kafka
                .resolve()
                .map_err(|error| in_file(invalid("kafka.propertiesFile", error.to_string())))?;
            owned_properties_unset(&config.kafka, "kafka.propertiesFile").map_err(in_file)?;
        }
        Ok(config)
    }

    /// Parses and checks a config; an error names the field and what to write instead.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        // serde_yaml names the path of a nested field itself (`delivery.retry: unknown
        // field ...`), and the line and column.
        let config: Self = serde_yaml::from_str(text)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.group_id.trim().is_empty() {
            return Err(invalid("groupId", "must not be empty"));
        }
        if self.topics.is_empty() || self.topics.iter().any(|t| t.trim().is_empty()) {
            return Err(invalid(
                "topics",
                "list at least one Kafka topic name, none empty",
            ));
        }
        self.sink_url()?;
        if self.delivery.max_in_flight == 0 {
            return Err(invalid("delivery.maxInFlight", "must be at least 1"));
        }
        if self.delivery.retry.attempts == 0 {
            return Err(invalid(
                "delivery.retry.attempts",
                "must be at least 1 (the first try counts)",
            ));
        }
        let timeout = duration("delivery.timeout", &self.delivery.timeout)?;
        if timeout.is_zero() {
            return Err(invalid("delivery.timeout", "must be longer than 0"));
        }
        let policy = self.retry_policy()?;
        if policy.initial_backoff > policy.max_backoff {
            return Err(invalid(
                "delivery.retry.initialBackoff",
                format!(
                    "{} is longer than maxBackoff ({})",
                    self.delivery.retry.initial_backoff, self.delivery.retry.max_backoff
                ),
            ));
        }
        if let Some(topic) = &self.delivery.dead_letter_topic {
            if topic.trim().is_empty() {
                return Err(invalid(
                    "delivery.deadLetterTopic",
                    "must not be empty; leave it out to have no dead-letter topic",
                ));
            }
            if self.topics.contains(topic) {
                return Err(invalid(
                    "delivery.deadLetterTopic",
                    format!("`{topic}` is also in `topics`: failed events would come back forever"),
                ));
            }
        }
        owned_properties_unset(&self.kafka, "kafka.properties")
    }

    /// The sink's URL, normalised the way browsers do (WHATWG), as the request URI.
    pub fn sink_url(&self) -> Result<http::Uri, ConfigError> {
        let url = url::Url::parse(&self.sink.url)
            .map_err(|e| invalid("sink.url", format!("`{}` is not a URL: {e}", self.sink.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(invalid(
                "sink.url",
                format!("`{}` must start with http:// or https://", self.sink.url),
            ));
        }
        // The client sends no credentials from the URL; refused rather than dropped, so a
        // sink that needs them does not answer every event with 401.
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "sink.url",
                format!(
                    "`{}://{}{}` carries credentials (user:password@), which event-consumer does not send: give the URL without them",
                    url.scheme(),
                    url.host_str().unwrap_or_default(),
                    url.path()
                ),
            ));
        }
        http::Uri::try_from(url.as_str()).map_err(|e| {
            invalid(
                "sink.url",
                format!("`{}` cannot be a request URI: {e}", self.sink.url),
            )
        })
    }

    pub fn retry_policy(&self) -> Result<RetryPolicy, ConfigError> {
        let retry = &self.delivery.retry;
        Ok(RetryPolicy {
            attempts: retry.attempts,
            initial_backoff: duration("delivery.retry.initialBackoff", &retry.initial_backoff)?,
            max_backoff: duration("delivery.retry.maxBackoff", &retry.max_backoff)?,
            jitter: retry.jitter,
        })
    }

    pub fn request_timeout(&self) -> Result<StdDuration, ConfigError> {
        duration("delivery.timeout", &self.delivery.timeout)
    }
}

fn duration(field: &'static str, value: &Duration) -> Result<StdDuration, ConfigError> {
    value.to_std().map_err(|e| invalid(field, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESIGN_EXAMPLE: &str = r#"
adminListen: 127.0.0.1:9091
kafka: {bootstrapServers: "127.0.0.1:9092", properties: {}}
groupId: team-a.workflow-coordinator
topics: [workflow-events]
sink: {url: "http://127.0.0.1:8088/events"}
filter: {types: ["workflow.*"]}
delivery:
  ordering: key
  maxInFlight: 64
  timeout: 10s
  retry: {attempts: 5, initialBackoff: 200ms, maxBackoff: 30s}
  deadLetterTopic: workflow-events-dlq
startFrom: latest
"#;

    fn error_of(text: &str) -> String {
        ConsumerConfig::from_yaml(text).unwrap_err().to_string()
    }

    #[test]
    fn the_example_of_the_design_is_read_as_written() {
        let config = ConsumerConfig::from_yaml(DESIGN_EXAMPLE).unwrap();
        assert_eq!(config.group_id, "team-a.workflow-coordinator");
        assert_eq!(config.delivery.ordering, Ordering::Key);
        assert_eq!(
            config.delivery.dead_letter_topic.as_deref(),
            Some("workflow-events-dlq")
        );
        let policy = config.retry_policy().unwrap();
        assert_eq!(policy.initial_backoff, StdDuration::from_millis(200));
        assert_eq!(policy.max_backoff, StdDuration::from_secs(30));
        assert_eq!(
            config.request_timeout().unwrap(),
            StdDuration::from_secs(10)
        );
        assert_eq!(config.lifecycle_topic, "service-lifecycle-events");
    }

    #[test]
    fn a_minimal_config_takes_the_documented_defaults() {
        let config = ConsumerConfig::from_yaml(
            "adminListen: 127.0.0.1:9091\nkafka: {bootstrapServers: k:9092}\ngroupId: g\ntopics: [t]\nsink: {url: http://s/}\n",
        )
        .unwrap();
        assert_eq!(config.delivery, DeliveryConfig::default());
        assert_eq!(config.delivery.max_in_flight, 64);
        assert_eq!(config.delivery.retry.attempts, 5);
        assert!(config.delivery.retry.jitter);
        assert_eq!(config.start_from, StartFrom::Latest);
        assert!(config.filter.types.is_empty());
    }

    #[test]
    fn rendering_and_reading_back_gives_the_same_config() {
        let config = ConsumerConfig::from_yaml(DESIGN_EXAMPLE).unwrap();
        let text = serde_yaml::to_string(&config).unwrap();
        assert_eq!(ConsumerConfig::from_yaml(&text).unwrap(), config);
    }

    #[test]
    fn an_unknown_field_is_refused_with_its_path() {
        let text = DESIGN_EXAMPLE.replace("attempts: 5", "atempts: 5");
        let error = error_of(&text);
        assert!(error.contains("delivery.retry"), "{error}");
        assert!(error.contains("atempts"), "{error}");
    }

    #[test]
    fn a_bad_duration_names_its_field() {
        let text = DESIGN_EXAMPLE.replace("timeout: 10s", "timeout: 10 seconds");
        let error = error_of(&text);
        assert!(error.starts_with("delivery.timeout:"), "{error}");
    }

    #[test]
    fn an_unknown_ordering_lists_the_choices() {
        let text = DESIGN_EXAMPLE.replace("ordering: key", "ordering: keyed");
        let error = error_of(&text);
        assert!(error.contains("delivery.ordering"), "{error}");
        assert!(error.contains("unordered"), "{error}");
    }

    #[test]
    fn properties_the_service_owns_are_refused() {
        let text = DESIGN_EXAMPLE.replace(
            "properties: {}",
            "properties: {enable.auto.commit: 'false'}",
        );
        let error = error_of(&text);
        assert!(error.contains("kafka.properties"), "{error}");
        assert!(error.contains("enable.auto.commit"), "{error}");
    }

    #[test]
    fn a_dead_letter_topic_among_the_inputs_is_refused() {
        let text = DESIGN_EXAMPLE.replace(
            "deadLetterTopic: workflow-events-dlq",
            "deadLetterTopic: workflow-events",
        );
        assert!(error_of(&text).starts_with("delivery.deadLetterTopic:"));
    }

    #[test]
    fn the_sink_must_be_an_http_url() {
        let text = DESIGN_EXAMPLE.replace("http://127.0.0.1:8088/events", "ftp://x/");
        assert!(error_of(&text).starts_with("sink.url:"));
    }

    #[test]
    fn credentials_in_the_sink_url_are_refused_without_echoing_them() {
        let text = DESIGN_EXAMPLE.replace(
            "http://127.0.0.1:8088/events",
            "https://svc:s3cret@sink.example/events",
        );
        let error = error_of(&text);
        assert!(error.starts_with("sink.url:"), "{error}");
        assert!(error.contains("carries credentials"), "{error}");
        assert!(!error.contains("s3cret"), "{error}");
    }

    #[test]
    fn the_loader_reads_the_kafka_properties_file_and_refuses_owned_properties_in_it() {
        let dir =
            std::env::temp_dir().join(format!("event-consumer-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let properties = dir.join("properties.yaml");
        let config_path = dir.join("consumer.yaml");
        let kafka = format!(
            "kafka: {{bootstrapServers: \"127.0.0.1:9092\", propertiesFile: {}, properties: {{client.id: inline}}}}",
            properties.display()
        );
        let text = DESIGN_EXAMPLE.replace(
            "kafka: {bootstrapServers: \"127.0.0.1:9092\", properties: {}}",
            &kafka,
        );
        std::fs::write(&config_path, &text).unwrap();

        std::fs::write(&properties, "client.id: from-file\nsasl.username: u\n").unwrap();
        let config = ConsumerConfig::load(&config_path).unwrap();
        assert_eq!(config.kafka.properties["client.id"], "inline");
        assert_eq!(config.kafka.properties["sasl.username"], "u");

        std::fs::write(&properties, "enable.auto.commit: \"true\"\n").unwrap();
        let error = ConsumerConfig::load(&config_path).unwrap_err().to_string();
        assert!(error.contains("kafka.propertiesFile"), "{error}");
        assert!(error.contains("enable.auto.commit"), "{error}");

        std::fs::write(&properties, "sasl.username: [u]\n").unwrap();
        let error = ConsumerConfig::load(&config_path).unwrap_err().to_string();
        assert!(error.contains(&properties.display().to_string()), "{error}");
        assert!(
            error.contains("`sasl.username` is a list, not a string"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
