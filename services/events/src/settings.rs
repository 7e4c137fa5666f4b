//! The `kafka:` block of every service config: where the brokers are, and librdkafka
//! properties passed through as they are (TLS, SASL, tuning), written inline or read from a
//! file (`propertiesFile`, for example a mounted Secret holding credentials).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSettings {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// librdkafka configuration properties, for example `security.protocol: SASL_SSL`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// A YAML map of librdkafka property names to string values, read when the service
    /// loads its config ([`KafkaSettings::resolve`]); `properties` apply on top of it.
    /// Credentials belong here rather than inline: the file can be a mounted Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties_file: Option<PathBuf>,
}

/// A `propertiesFile` that cannot be used; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("the librdkafka properties file {} cannot be read: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the librdkafka properties file {} is not a YAML map of property names to string values: {reason}",
        path.display()
    )]
    NotAMap { path: PathBuf, reason: String },
    #[error(
        "the librdkafka properties file {}: the value of `{key}` is {value}, not a string: a librdkafka property is one value, such as `{key}: \"...\"`",
        path.display()
    )]
    NotAString {
        path: PathBuf,
        key: String,
        value: String,
    },
}

impl KafkaSettings {
    /// These settings with `propertiesFile` read: its properties, then the inline
    /// `properties` on top (an inline property wins over the file's of the same name), and
    /// no file left to read. Without a file, the settings as they are.
    pub fn resolve(self) -> Result<Self, SettingsError> {
        let Some(path) = self.properties_file else {
            return Ok(self);
        };
        let mut properties = read_properties_file(&path)?;
        properties.extend(self.properties);
        Ok(Self {
            bootstrap_servers: self.bootstrap_servers,
            properties,
            properties_file: None,
        })
    }

    /// A client configuration with the properties applied, then `bootstrap.servers`, so
    /// the field named for it wins over a property of the same name. A `propertiesFile`
    /// not yet [resolved](Self::resolve) is not read here.
    pub fn client_config(&self) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        for (key, value) in &self.properties {
            config.set(key, value);
        }
        config.set("bootstrap.servers", &self.bootstrap_servers);
        config
    }
}

/// The librdkafka properties of a YAML file: a map of names to string values (a plain
/// number or boolean is taken as its text, as inline; an empty file is an empty map).
pub fn read_properties_file(path: &Path) -> Result<BTreeMap<String, String>, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_owned(),
        source,
    })?;
    let not_a_map = |reason: String| SettingsError::NotAMap {
        path: path.to_owned(),
        reason,
    };
    let value: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| not_a_map(e.to_string()))?;
    let map = match value {
        serde_yaml::Value::Null => return Ok(BTreeMap::new()),
        serde_yaml::Value::Mapping(map) => map,
        other => return Err(not_a_map(format!("found {}", kind(&other)))),
    };
    let mut properties = BTreeMap::new();
    for (key, value) in map {
        let serde_yaml::Value::String(key) = key else {
            return Err(not_a_map(format!(
                "the key {} is not a string",
                serde_yaml::to_string(&key).unwrap_or_default().trim()
            )));
        };
        // As in the inline `properties`, a plain number or boolean is taken as its text.
        match value {
            serde_yaml::Value::String(value) => {
                properties.insert(key, value);
            }
            serde_yaml::Value::Number(value) => {
                properties.insert(key, value.to_string());
            }
            serde_yaml::Value::Bool(value) => {
                properties.insert(key, value.to_string());
            }
            other => {
                return Err(SettingsError::NotAString {
                    path: path.to_owned(),
                    key,
                    value: kind(&other).to_owned(),
                });
            }
        }
    }
    Ok(properties)
}

fn kind(value: &serde_yaml::Value) -> &'static str {
    match value {
        serde_yaml::Value::Null => "nothing",
        serde_yaml::Value::Bool(_) => "a boolean",
        serde_yaml::Value::Number(_) => "a number",
        serde_yaml::Value::String(_) => "a string",
        serde_yaml::Value::Sequence(_) => "a list",
        serde_yaml::Value::Mapping(_) => "a map",
        serde_yaml::Value::Tagged(_) => "a tagged value",
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

    /// A file of its own under the temp dir, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn with(text: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let path = std::env::temp_dir().join(format!(
                "bridge-events-properties-{}-{}.yaml",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn with_file(path: &Path, inline: &str) -> KafkaSettings {
        serde_yaml::from_str(&format!(
            "bootstrapServers: 127.0.0.1:9092\npropertiesFile: {}\nproperties: {inline}\n",
            path.display()
        ))
        .unwrap()
    }

    #[test]
    fn the_files_properties_apply_and_inline_ones_win() {
        let file = TempFile::with(
            "security.protocol: SASL_SSL\nsasl.password: from-file\nclient.id: file\nlinger.ms: 5\nenable.ssl.certificate.verification: false\n",
        );
        let resolved = with_file(&file.0, "{client.id: inline}").resolve().unwrap();
        assert_eq!(resolved.properties_file, None);
        assert_eq!(
            resolved.properties,
            BTreeMap::from([
                ("client.id".to_owned(), "inline".to_owned()),
                (
                    "enable.ssl.certificate.verification".to_owned(),
                    "false".to_owned()
                ),
                ("linger.ms".to_owned(), "5".to_owned()),
                ("sasl.password".to_owned(), "from-file".to_owned()),
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
            ])
        );
        let config = resolved.client_config();
        assert_eq!(config.get("sasl.password"), Some("from-file"));
        assert_eq!(config.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    }

    #[test]
    fn without_a_file_the_settings_stay_as_they_are() {
        let settings: KafkaSettings =
            serde_yaml::from_str("bootstrapServers: a:1\nproperties: {x: y}\n").unwrap();
        assert_eq!(settings.clone().resolve().unwrap(), settings);
        assert!(
            !serde_yaml::to_string(&settings)
                .unwrap()
                .contains("propertiesFile")
        );
        let empty = TempFile::with("");
        assert_eq!(
            with_file(&empty.0, "{}").resolve().unwrap().properties,
            BTreeMap::new()
        );
    }

    #[test]
    fn each_problem_with_the_file_names_it() {
        let missing = std::env::temp_dir().join("bridge-events-no-such-file.yaml");
        let error = with_file(&missing, "{}").resolve().unwrap_err().to_string();
        assert!(error.contains(&missing.display().to_string()), "{error}");
        assert!(error.contains("cannot be read"), "{error}");

        let list = TempFile::with("- security.protocol\n");
        let error = with_file(&list.0, "{}").resolve().unwrap_err().to_string();
        assert!(error.contains(&list.0.display().to_string()), "{error}");
        assert!(error.contains("is not a YAML map"), "{error}");
        assert!(error.contains("found a list"), "{error}");

        let nested = TempFile::with("sasl.jaas.config: {user: u}\n");
        let error = with_file(&nested.0, "{}")
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(error.contains(&nested.0.display().to_string()), "{error}");
        assert!(
            error.contains("the value of `sasl.jaas.config` is a map, not a string"),
            "{error}"
        );
    }
}
