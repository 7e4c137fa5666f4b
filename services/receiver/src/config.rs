//! The receiver's configuration file (`--config FILE`), as the operator renders it into a
//! ConfigMap or a person writes it. Field names follow the WebhookIngress CRD; unknown
//! fields are refused by name. Every field is documented in the crate's README.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bridge_events::KafkaSettings;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read the config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the config file {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("the config file {path} is not valid: {field}: {reason}")]
    Invalid {
        path: PathBuf,
        field: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReceiverConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub source: String,
    pub kafka: KafkaSettings,
    pub spool: SpoolConfig,
    pub routes: Vec<RouteConfig>,
    /// How long a request waits for Kafka's acknowledgement before its event is spooled.
    #[serde(
        default = "defaults::publish_timeout",
        deserialize_with = "duration_field::publish_timeout",
        serialize_with = "duration_text"
    )]
    pub publish_timeout: Duration,
    /// Bound on reading a request body; slow clients get cut off after it.
    #[serde(
        default = "defaults::read_timeout",
        deserialize_with = "duration_field::read_timeout",
        serialize_with = "duration_text"
    )]
    pub read_timeout: Duration,
    /// Bound on the whole shutdown: finishing requests and flushing the producer.
    #[serde(
        default = "defaults::shutdown_timeout",
        deserialize_with = "duration_field::shutdown_timeout",
        serialize_with = "duration_text"
    )]
    pub shutdown_timeout: Duration,
    #[serde(default)]
    pub breaker: BreakerConfig,
    #[serde(default = "defaults::audit_topic")]
    pub audit_topic: String,
    /// Rejected-signature audit events allowed per second (a burst of ten times as many).
    #[serde(default = "defaults::audit_rate")]
    pub audit_events_per_second: u32,
    #[serde(default = "defaults::lifecycle_topic")]
    pub lifecycle_topic: String,
    /// Names this process in lifecycle events; default the `HOSTNAME` (the Pod name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    #[serde(default = "defaults::spool_max_bytes")]
    pub max_bytes: u64,
    #[serde(default = "defaults::segment_bytes")]
    pub segment_bytes: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive delivery failures that open the breaker.
    #[serde(default = "defaults::failure_threshold")]
    pub failure_threshold: u32,
    /// First wait before an open breaker lets a probe through; doubles up to `maxOpenFor`.
    #[serde(
        default = "defaults::open_for",
        deserialize_with = "duration_field::open_for",
        serialize_with = "duration_text"
    )]
    pub open_for: Duration,
    #[serde(
        default = "defaults::max_open_for",
        deserialize_with = "duration_field::max_open_for",
        serialize_with = "duration_text"
    )]
    pub max_open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: defaults::failure_threshold(),
            open_for: defaults::open_for(),
            max_open_for: defaults::max_open_for(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteConfig {
    pub name: String,
    pub path: String,
    pub topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<ValueSource>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<ValueSource>,
    /// Where the sender's delivery id is (the CloudEvent id, and the dedupe key). Default:
    /// `X-GitHub-Delivery` for `github` auth, `webhook-id` for `standardWebhooks`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<ValueSource>,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default = "defaults::max_body_bytes")]
    pub max_body_bytes: usize,
    #[serde(
        default,
        deserialize_with = "duration_field::dedupe_window",
        serialize_with = "optional_duration_text",
        skip_serializing_if = "Option::is_none"
    )]
    pub dedupe_window: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_version: Option<String>,
}

/// Where a value comes from: exactly one of `header`, `jsonPointer`, `value`, with an
/// optional `prefix` put in front of it.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValueSource {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json_pointer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
}

/// Exactly one kind is set; `none: {}` has to be written out, so no route is open by accident.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub github: Option<SecretFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standard_webhooks: Option<SecretFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hmac: Option<HmacConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bearer: Option<SecretFile>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub none: Option<NoAuth>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NoAuth {}

/// The one auth kind of a route.
#[derive(Debug, Clone, Copy)]
pub enum AuthKind<'a> {
    Github(&'a SecretFile),
    StandardWebhooks(&'a SecretFile),
    Hmac(&'a HmacConfig),
    Bearer(&'a SecretFile),
    None,
}

impl AuthConfig {
    pub fn kind(&self) -> Result<AuthKind<'_>, &'static str> {
        let kinds: Vec<AuthKind<'_>> = [
            self.github.as_ref().map(AuthKind::Github),
            self.standard_webhooks
                .as_ref()
                .map(AuthKind::StandardWebhooks),
            self.hmac.as_ref().map(AuthKind::Hmac),
            self.bearer.as_ref().map(AuthKind::Bearer),
            self.none.as_ref().map(|_| AuthKind::None),
        ]
        .into_iter()
        .flatten()
        .collect();
        match kinds[..] {
            [kind] => Ok(kind),
            [] => {
                Err("give one of github, standardWebhooks, hmac, bearer, or `none: {}` for no auth")
            }
            _ => Err("give only one auth kind per route"),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretFile {
    pub secret_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HmacConfig {
    pub secret_file: PathBuf,
    pub header: String,
    #[serde(default)]
    pub algorithm: HmacAlgorithm,
    #[serde(default)]
    pub encoding: SignatureEncoding,
    #[serde(default)]
    pub prefix: String,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    #[default]
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SignatureEncoding {
    #[default]
    Hex,
    Base64,
}

/// The value of each field left out of a config file.
pub mod defaults {
    use std::time::Duration;

    pub fn publish_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn read_timeout() -> Duration {
        Duration::from_secs(30)
    }
    pub fn shutdown_timeout() -> Duration {
        Duration::from_secs(25)
    }
    pub fn audit_topic() -> String {
        bridge_events::topics::AUDIT.into()
    }
    pub fn audit_rate() -> u32 {
        5
    }
    pub fn lifecycle_topic() -> String {
        bridge_events::topics::SERVICE_LIFECYCLE.into()
    }
    pub fn spool_max_bytes() -> u64 {
        1 << 30
    }
    pub fn segment_bytes() -> u64 {
        64 << 20
    }
    pub fn failure_threshold() -> u32 {
        3
    }
    pub fn open_for() -> Duration {
        Duration::from_secs(1)
    }
    pub fn max_open_for() -> Duration {
        Duration::from_secs(30)
    }
    pub fn max_body_bytes() -> usize {
        1 << 20
    }
}

/// Durations as the CRDs write them: `10m`, `1h30m`, `200ms`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = text
        .parse()
        .map_err(|e| format!("`{text}` is not a duration like 10m, 30s or 200ms: {e}"))?;
    Duration::try_from(signed).map_err(|_| format!("`{text}` is negative"))
}

/// Writes a duration so [`parse_duration`] reads it back unchanged: whole seconds as `30s`,
/// anything finer in milliseconds.
fn duration_text<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    let text = if duration.subsec_millis() == 0 && duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    };
    serializer.serialize_str(&text)
}

fn optional_duration_text<S: Serializer>(
    duration: &Option<Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match duration {
        Some(duration) => duration_text(duration, serializer),
        None => serializer.serialize_none(),
    }
}

/// serde_yaml names the enclosing object but not the field of a custom error, so each
/// duration field says its own name.
fn duration<'de, D: Deserializer<'de>>(field: &str, deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(|e| serde::de::Error::custom(format!("{field}: {e}")))
}

mod duration_field {
    use super::*;

    pub fn publish_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        duration("publishTimeout", d)
    }
    pub fn read_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        duration("readTimeout", d)
    }
    pub fn shutdown_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        duration("shutdownTimeout", d)
    }
    pub fn open_for<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        duration("openFor", d)
    }
    pub fn max_open_for<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        duration("maxOpenFor", d)
    }
    pub fn dedupe_window<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        duration("dedupeWindow", d).map(Some)
    }
}

impl ReceiverConfig {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config = Self::parse(&text).map_err(|error| match error {
            ParseError::Yaml(source) => ConfigError::Parse {
                path: path.to_owned(),
                source,
            },
            ParseError::Invalid { field, reason } => ConfigError::Invalid {
                path: path.to_owned(),
                field,
                reason,
            },
        })?;
        // `kafka.propertiesFile` is read here, once: `parse` alone leaves it unread, as the
        // operator renders configs that name a file only the receiver's Pod mounts.
        config.kafka = config
            .kafka
            .resolve()
            .map_err(|error| ConfigError::Invalid {
                path: path.to_owned(),
                field: "kafka.propertiesFile".into(),
                reason: error.to_string(),
            })?;
        Ok(config)
    }

    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let config: Self = serde_yaml::from_str(text).map_err(ParseError::Yaml)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ParseError> {
        let invalid = |field: String, reason: &str| ParseError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        if self.routes.is_empty() {
            return Err(invalid("routes".into(), "at least one route is needed"));
        }
        if self.spool.segment_bytes == 0
            || self.spool.max_bytes < self.spool.segment_bytes.min(1 << 20)
        {
            return Err(invalid(
                "spool".into(),
                "maxBytes must be at least 1 MiB (or the segment size) and segmentBytes above 0",
            ));
        }
        let mut names = HashSet::new();
        let mut paths = HashSet::new();
        for (index, route) in self.routes.iter().enumerate() {
            let at = |field: &str| format!("routes[{index}].{field}");
            if route.name.is_empty() || !names.insert(route.name.as_str()) {
                return Err(invalid(at("name"), "route names are non-empty and unique"));
            }
            // axum 0.8 panics at start on a segment starting with `:` or `*` (0.7's capture
            // syntax) and reads `{...}` as a capture: every replica would crash-loop.
            if !route.path.starts_with('/')
                || route.path.contains(['{', '}', '*'])
                || route.path.contains("/:")
            {
                return Err(invalid(
                    at("path"),
                    "a path starts with `/`, has no `{`, `}` or `*`, and no segment starting with `:` (the router would read them as captures), for example /hooks/github",
                ));
            }
            if !paths.insert(route.path.as_str()) {
                return Err(invalid(at("path"), "another route has the same path"));
            }
            if route.topic.is_empty() {
                return Err(invalid(at("topic"), "the Kafka topic name is empty"));
            }
            if route.max_body_bytes == 0 {
                return Err(invalid(at("maxBodyBytes"), "must be above 0"));
            }
            if route.dedupe_window.is_some_and(|w| w.is_zero()) {
                return Err(invalid(
                    at("dedupeWindow"),
                    "must be above 0; leave it out to turn dedupe off",
                ));
            }
            for (field, source) in [
                ("eventType", &route.event_type),
                ("correlationId", &route.correlation_id),
                ("deliveryId", &route.delivery_id),
            ] {
                if let Some(source) = source {
                    source
                        .validate()
                        .map_err(|reason| invalid(at(field), reason))?;
                }
            }
            let kind = route
                .auth
                .kind()
                .map_err(|reason| invalid(at("auth"), reason))?;
            for (field, source) in [
                ("eventType", &route.event_type),
                ("correlationId", &route.correlation_id),
                ("deliveryId", &route.delivery_id),
            ] {
                if let Some(header) = source.as_ref().and_then(|s| s.header.as_deref())
                    && carries_credential(header, kind)
                {
                    return Err(ParseError::Invalid {
                        field: at(&format!("{field}.header")),
                        reason: format!(
                            "`{header}` carries a credential (a signature or token); its value would be published with every event: read the value from another header or the body"
                        ),
                    });
                }
            }
            if let AuthKind::Hmac(hmac) = kind
                && http::HeaderName::try_from(hmac.header.as_str()).is_err()
            {
                return Err(invalid(
                    at("auth.hmac.header"),
                    "not a valid HTTP header name",
                ));
            }
        }
        Ok(())
    }
}

/// Headers that hold a route's credential, in any route: `Authorization` and the signature
/// headers of the auth kinds, plus the header the route's own `hmac` auth names.
const CREDENTIAL_HEADERS: [&str; 4] = [
    "authorization",
    "x-hub-signature-256",
    "x-hub-signature",
    "webhook-signature",
];

fn carries_credential(header: &str, auth: AuthKind<'_>) -> bool {
    CREDENTIAL_HEADERS
        .iter()
        .any(|name| header.eq_ignore_ascii_case(name))
        || matches!(auth, AuthKind::Hmac(hmac) if header.eq_ignore_ascii_case(&hmac.header))
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("{0}")]
    Yaml(serde_yaml::Error),
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
}

impl ValueSource {
    fn validate(&self) -> Result<(), &'static str> {
        let set = [
            self.header.is_some(),
            self.json_pointer.is_some(),
            self.value.is_some(),
        ];
        if set.iter().filter(|s| **s).count() != 1 {
            return Err("give exactly one of `header`, `jsonPointer`, `value`");
        }
        if let Some(header) = &self.header
            && http::HeaderName::try_from(header.as_str()).is_err()
        {
            return Err("`header` is not a valid HTTP header name");
        }
        if let Some(pointer) = &self.json_pointer
            && !pointer.is_empty()
            && !pointer.starts_with('/')
        {
            return Err("a `jsonPointer` is empty or starts with `/` (RFC 6901)");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
listen: 127.0.0.1:8080
adminListen: 127.0.0.1:9090
source: /namespaces/team-a/webhookingresses/github
kafka: {bootstrapServers: "127.0.0.1:9092", properties: {}}
spool: {dir: /var/spool/hook-receiver, maxBytes: 1073741824}
routes:
  - name: github
    path: /github
    topic: tool-execution-events
    eventType: {header: X-GitHub-Event, prefix: "com.github."}
    correlationId: {header: X-GitHub-Delivery}
    auth: {github: {secretFile: /etc/hook-receiver/secrets/github/secret}}
    maxBodyBytes: 1048576
    dedupeWindow: 10m
  - name: open
    path: /open
    topic: t
    auth: {none: {}}
"#;

    #[test]
    fn the_design_example_is_accepted() {
        let config = ReceiverConfig::parse(EXAMPLE).unwrap();
        let route = &config.routes[0];
        assert_eq!(route.dedupe_window, Some(Duration::from_secs(600)));
        assert_eq!(
            route.event_type.as_ref().unwrap().header.as_deref(),
            Some("X-GitHub-Event")
        );
        assert!(matches!(route.auth.kind(), Ok(AuthKind::Github(_))));
        assert!(matches!(config.routes[1].auth.kind(), Ok(AuthKind::None)));
        assert_eq!(config.routes[1].max_body_bytes, 1 << 20);
        assert_eq!(config.publish_timeout, Duration::from_secs(5));
    }

    #[test]
    fn a_written_config_reads_back_as_the_same_config() {
        let config = ReceiverConfig::parse(EXAMPLE).unwrap();
        let text = serde_yaml::to_string(&config).unwrap();
        let again = ReceiverConfig::parse(&text).unwrap();
        assert_eq!(serde_yaml::to_string(&again).unwrap(), text);
        assert_eq!(
            again.routes[0].dedupe_window,
            Some(Duration::from_secs(600))
        );
        assert!(text.contains("publishTimeout: 5s"), "{text}");
        assert!(!text.contains("deliveryId"), "{text}");
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let text = EXAMPLE.replace("maxBodyBytes:", "maxBodySize:");
        let error = ReceiverConfig::parse(&text).unwrap_err().to_string();
        assert!(error.contains("maxBodySize"), "{error}");
        let text = EXAMPLE.replace("secretFile:", "secretRef:");
        let error = ReceiverConfig::parse(&text).unwrap_err().to_string();
        assert!(error.contains("secretRef"), "{error}");
    }

    #[test]
    fn mistakes_name_the_field_and_the_fix() {
        for (from, to, needle) in [
            (
                "dedupeWindow: 10m",
                "dedupeWindow: soon",
                "routes[0]: dedupeWindow: `soon`",
            ),
            ("path: /open", "path: /github", "routes[1].path"),
            (
                "{header: X-GitHub-Delivery}",
                "{header: X-GitHub-Delivery, value: x}",
                "routes[0].correlationId",
            ),
            ("auth: {none: {}}", "", "auth"),
        ] {
            let text = EXAMPLE.replace(from, to);
            let error = ReceiverConfig::parse(&text).unwrap_err().to_string();
            assert!(error.contains(needle), "{error} lacks {needle}");
        }
    }

    #[test]
    fn a_path_the_router_reads_as_a_capture_is_refused() {
        for path in ["/hooks/:id", "/a/*rest", "/*", "/hooks/{id}", "/a/b}"] {
            let text = EXAMPLE.replace("path: /open", &format!("path: \"{path}\""));
            let error = ReceiverConfig::parse(&text)
                .map(|_| "accepted".to_owned())
                .unwrap_or_else(|e| e.to_string());
            assert!(
                error.starts_with("routes[1].path: ")
                    && error.contains("no segment starting with `:`"),
                "{path}: {error}"
            );
        }
        // Only a segment's first character matters to the router.
        let text = EXAMPLE.replace("path: /open", "path: /hooks/v1:push");
        assert!(ReceiverConfig::parse(&text).is_ok());
    }

    #[test]
    fn a_value_read_from_a_credential_header_is_refused() {
        let hmac_route = "auth: {hmac: {secretFile: /s, header: X-Shop-Signature}}";
        for (field, header, auth) in [
            ("eventType", "Authorization", "auth: {none: {}}"),
            ("correlationId", "x-hub-signature-256", "auth: {none: {}}"),
            ("correlationId", "X-Hub-Signature", "auth: {none: {}}"),
            ("eventType", "Webhook-Signature", "auth: {none: {}}"),
            ("deliveryId", "authorization", "auth: {none: {}}"),
            ("correlationId", "x-shop-signature", hmac_route),
        ] {
            let route = format!("{auth}\n    {field}: {{header: {header}}}");
            let text = EXAMPLE.replace("auth: {none: {}}", &route);
            let error = ReceiverConfig::parse(&text)
                .map(|_| "accepted".to_owned())
                .unwrap_or_else(|e| e.to_string());
            assert!(
                error.starts_with(&format!("routes[1].{field}.header: `{header}` carries")),
                "{field} from {header}: {error}"
            );
        }
        // Another route's signature header is just a header here.
        let text = EXAMPLE.replace(
            "auth: {none: {}}",
            "auth: {none: {}}\n    eventType: {header: X-Shop-Signature}",
        );
        assert!(ReceiverConfig::parse(&text).is_ok());
    }

    #[test]
    fn the_loader_reads_the_kafka_properties_file_and_names_it_when_it_is_missing() {
        let dir = std::env::temp_dir().join(format!("hook-receiver-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let properties = dir.join("properties.yaml");
        std::fs::write(
            &properties,
            "client.id: from-file\nsocket.timeout.ms: \"5000\"\n",
        )
        .unwrap();
        let config_path = dir.join("receiver.yaml");
        let kafka = format!(
            "kafka: {{bootstrapServers: \"127.0.0.1:9092\", propertiesFile: {}, properties: {{socket.timeout.ms: \"7000\"}}}}",
            properties.display()
        );
        let text = EXAMPLE.replace(
            "kafka: {bootstrapServers: \"127.0.0.1:9092\", properties: {}}",
            &kafka,
        );
        std::fs::write(&config_path, &text).unwrap();
        let config = ReceiverConfig::load(&config_path).unwrap();
        assert_eq!(config.kafka.properties["client.id"], "from-file");
        assert_eq!(config.kafka.properties["socket.timeout.ms"], "7000");
        assert_eq!(config.kafka.properties_file, None);

        std::fs::remove_file(&properties).unwrap();
        let error = ReceiverConfig::load(&config_path).unwrap_err().to_string();
        assert!(error.contains("kafka.propertiesFile"), "{error}");
        assert!(error.contains(&properties.display().to_string()), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
