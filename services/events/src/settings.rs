//! The `kafka:` block of every service config: where the brokers are, and librdkafka
//! properties passed through as they are (TLS, SASL, tuning).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSettings {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// librdkafka configuration properties, for example `security.protocol: SASL_SSL`.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

impl KafkaSettings {
    /// A client configuration with the properties applied, then `bootstrap.servers`, so
    /// the field named for it wins over a property of the same name.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config.set("bootstrap.servers", &self.bootstrap_servers);
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_pass_through_to_librdkafka() {
        let settings: KafkaSettings = serde_yaml::from_str(
            "bootstrapServers: 127.0.0.1:9092\nproperties: {security.protocol: SASL_SSL}\n",
        )
        .unwrap();
        let config = settings.client_config();
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
    }

    #[test]
    fn an_unknown_field_is_refused_by_name() {
        let error =
            serde_yaml::from_str::<KafkaSettings>("bootstrapServers: a:1\nbootstrapServer: b\n")
                .unwrap_err();
        assert!(error.to_string().contains("bootstrapServer"), "{error}");
    }
}
