//! What the WebhookIngress and EventConsumer controllers share: the operator's settings for
//! the workloads it runs (image, Kafka bootstrap servers, the Secret with their Kafka client
//! properties), the labels and owner reference on every object it writes, server-side
//! apply, the pruning of owned objects the spec no longer asks for, the restricted security
//! context, how the Secrets the pods mount are read, checksummed and reported when missing,
//! and how a Deployment's progress and a referenced EventTopic read as conditions.
//!
//! The "build the desired object" functions here and in `ingress_plan` / `consumer_plan` are
//! pure, so they are unit-tested without an API server.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use bridge_api::{EventTopic, condition_type, find_condition};
use bridge_events::KafkaSettings;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{
    Capabilities, PodSecurityContext, SeccompProfile, Secret, SecretVolumeSource, SecurityContext,
    Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::conditions::Decided;
use crate::metrics::Metrics;

/// The one field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "bridge-operator";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "bridge-operator";
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
/// On a pod template: a digest of everything the pods read at start (their config and the
/// Secrets they mount), so a change to any of it rolls the pods.
pub const CONFIG_CHECKSUM_ANNOTATION: &str = "bridge.omninode.io/config-checksum";

/// The key of the workloads' Kafka Secret (`--workload-kafka-secret`): a YAML map of
/// librdkafka properties.
pub const KAFKA_SECRET_KEY: &str = "properties.yaml";
/// Where every workload Pod mounts that Secret.
pub const KAFKA_SECRET_DIR: &str = "/etc/omninode-bridge/kafka";
/// The name of that volume in the pod template.
pub const KAFKA_SECRET_VOLUME: &str = "kafka-client";

/// How the operator runs the workloads, from its own flags: the same image and Kafka
/// connection for every WebhookIngress and EventConsumer.
///
/// The operator's own librdkafka properties (`--kafka-properties`) are never written into
/// a workload: ConfigMaps in user namespaces are no place for credentials. The workloads
/// read theirs from `kafka_secret`, a Secret in their own namespace that their Pods mount.
#[derive(Debug, Clone)]
pub struct WorkloadSettings {
    /// The image holding `hook-receiver` and `event-consumer` (on its PATH).
    pub image: String,
    pub image_pull_policy: Option<String>,
    /// The operator's `--kafka-bootstrap-servers`, written into every service config.
    pub kafka_bootstrap_servers: String,
    /// `--workload-kafka-secret`: the Secret, in each workload's namespace, whose key
    /// [`KAFKA_SECRET_KEY`] holds the workloads' librdkafka properties. None: the workloads
    /// connect with the bootstrap servers only.
    pub kafka_secret: Option<String>,
    /// `--spool-storage-class`: the StorageClass of the receivers' spool claims when a
    /// WebhookIngress names none. None: the cluster's default StorageClass.
    pub spool_storage_class: Option<String>,
}

impl WorkloadSettings {
    /// The `kafka:` block of every service config: the bootstrap servers, and the mounted
    /// Secret's file when there is one. Never a property of the operator's own.
    pub fn workload_kafka(&self) -> KafkaSettings {
        KafkaSettings {
            bootstrap_servers: self.kafka_bootstrap_servers.clone(),
            properties: BTreeMap::new(),
            properties_file: self
                .kafka_secret
                .as_ref()
                .map(|_| format!("{KAFKA_SECRET_DIR}/{KAFKA_SECRET_KEY}").into()),
        }
    }

    /// The volume and read-only mount of the Kafka Secret, when one is configured.
    pub fn kafka_secret_mount(&self) -> Option<(Volume, VolumeMount)> {
        let secret = self.kafka_secret.as_ref()?;
        Some((
            Volume {
                name: KAFKA_SECRET_VOLUME.into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(secret.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            VolumeMount {
                name: KAFKA_SECRET_VOLUME.into(),
                mount_path: KAFKA_SECRET_DIR.into(),
                read_only: Some(true),
                ..Default::default()
            },
        ))
    }
}

/// What a workload controller needs at reconcile time.
pub struct WorkloadContext {
    pub client: Client,
    pub settings: WorkloadSettings,
    /// The operator's own Kafka client configuration (lag, replays), with its
    /// `--kafka-properties`: never written into a workload.
    pub kafka: rdkafka::ClientConfig,
    pub events: crate::events::EventPublisher,
    pub metrics: Arc<Metrics>,
    /// How often each object is looked at again with nothing changed: lag, Secrets (which
    /// the operator may `get` but not watch) and owned objects edited by hand.
    pub resync: Duration,
}

/// The labels on every object of one workload; the first three select its pods.
pub fn labels(component: &str, instance: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(component, instance);
    labels.insert(PART_OF_LABEL.into(), "omninode-bridge".into());
    labels
}

/// The labels a workload's Deployment, Service and PodDisruptionBudget select its pods by.
pub fn selector_labels(component: &str, instance: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.into(), component.into()),
        (INSTANCE_LABEL.into(), instance.into()),
        (MANAGED_BY_LABEL.into(), MANAGED_BY.into()),
    ])
}

/// The controller owner reference to `owner`, so Kubernetes garbage-collects what the
/// operator made for it and the controller hears about changes to it.
pub fn owner_reference<K: Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    owner
        .controller_owner_ref(&())
        .expect("objects read from the API server have a name and uid")
}

/// A lowercase hex SHA-256 of `parts`, each length-prefixed so their boundaries count.
pub fn checksum<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part);
    }
    context
        .finish()
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Changes when the config text or any Secret value the pods read does, and only then.
/// Each Secret key counts once, whatever order or how many times it is given.
pub fn config_checksum<'a>(
    config_text: &str,
    secrets: impl IntoIterator<Item = &'a SecretKey>,
) -> String {
    let mut secrets: Vec<&SecretKey> = secrets.into_iter().collect();
    secrets.sort_by(|a, b| (&a.name, &a.key).cmp(&(&b.name, &b.key)));
    secrets.dedup_by(|a, b| a.name == b.name && a.key == b.key);
    let mut parts: Vec<&[u8]> = vec![config_text.as_bytes()];
    for secret in secrets {
        parts.extend([
            secret.name.as_bytes(),
            secret.key.as_bytes(),
            secret.value.as_slice(),
        ]);
    }
    checksum(parts)
}

/// One Secret key the pods read, and its value (which goes into the checksum only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretKey {
    pub name: String,
    pub key: String,
    pub value: Vec<u8>,
}

/// Who names a Secret the pods mount: what a person fixes when it is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    /// A WebhookIngress route's `auth.*.secretRef`.
    Route,
    /// The operator's `--workload-kafka-secret`, the same name in every namespace.
    KafkaClient,
}

/// A Secret the pods mount that cannot be used, as a person should read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretProblem {
    /// `key`: the key that is read, when the reference names one (or defaults to it).
    NotFound {
        name: String,
        key: Option<String>,
        source: SecretSource,
    },
    KeyMissing {
        name: String,
        key: String,
        source: SecretSource,
    },
    /// `standardWebhooks` without a key on a Secret with several keys: the receiver reads
    /// one file, so it cannot take "every key".
    KeyRequired { name: String, route: String },
}

impl SecretProblem {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotFound { .. } | Self::KeyMissing { .. } => "SecretNotFound",
            Self::KeyRequired { .. } => "SecretKeyRequired",
        }
    }

    /// The condition message; `workload` names what runs ("receiver", "consumer").
    pub fn message(&self, namespace: &str, workload: &str) -> String {
        let left = format!("the running {workload}, if any, is left as it is");
        match self {
            Self::NotFound {
                name,
                key,
                source: SecretSource::Route,
            } => {
                let key = key
                    .as_deref()
                    .map(|key| format!(" with key {key}"))
                    .unwrap_or_default();
                format!(
                    "Secret {namespace}/{name} does not exist: create it{key}, or fix the secretRef; {left}"
                )
            }
            Self::NotFound {
                name,
                key,
                source: SecretSource::KafkaClient,
            } => format!(
                "Secret {namespace}/{name} does not exist: create it with key {} (a YAML map of the librdkafka properties the workloads of this namespace connect to Kafka with; the operator's --workload-kafka-secret names it); {left}",
                key.as_deref().unwrap_or(KAFKA_SECRET_KEY)
            ),
            Self::KeyMissing {
                name,
                key,
                source: SecretSource::Route,
            } => format!(
                "Secret {namespace}/{name} has no key {key}: add it, or set secretRef.key to a key it has; {left}"
            ),
            Self::KeyMissing {
                name,
                key,
                source: SecretSource::KafkaClient,
            } => format!(
                "Secret {namespace}/{name} has no key {key}: add it, a YAML map of librdkafka properties (the operator's --workload-kafka-secret names this Secret); {left}"
            ),
            Self::KeyRequired { name, route } => format!(
                "route {route}: Secret {namespace}/{name} has several keys and the receiver reads one file: put the secrets, separated by whitespace, in one key and name it in secretRef.key"
            ),
        }
    }
}

/// The data of the Secret `name` of `namespace`, if it exists: `get` only, never a list or
/// a watch (the operator may do no more with Secrets).
pub async fn read_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<Option<BTreeMap<String, Vec<u8>>>, kube::Error> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    Ok(api.get_opt(name).await?.map(|secret| {
        secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(key, value)| (key, value.0))
            .collect()
    }))
}

/// The workloads' Kafka properties key of the Secret `name`, from its data if it exists.
pub fn resolve_kafka_secret(
    name: &str,
    data: Option<&BTreeMap<String, Vec<u8>>>,
) -> Result<SecretKey, SecretProblem> {
    let Some(data) = data else {
        return Err(SecretProblem::NotFound {
            name: name.into(),
            key: Some(KAFKA_SECRET_KEY.into()),
            source: SecretSource::KafkaClient,
        });
    };
    match data.get(KAFKA_SECRET_KEY) {
        Some(value) => Ok(SecretKey {
            name: name.into(),
            key: KAFKA_SECRET_KEY.into(),
            value: value.clone(),
        }),
        None => Err(SecretProblem::KeyMissing {
            name: name.into(),
            key: KAFKA_SECRET_KEY.into(),
            source: SecretSource::KafkaClient,
        }),
    }
}

/// Reads the workloads' Kafka Secret in `namespace`, when one is configured: its
/// properties key (for the checksum), or what is wrong with it.
pub async fn read_kafka_secret(
    client: &Client,
    namespace: &str,
    settings: &WorkloadSettings,
) -> Result<Result<Option<SecretKey>, SecretProblem>, kube::Error> {
    let Some(name) = &settings.kafka_secret else {
        return Ok(Ok(None));
    };
    let data = read_secret(client, namespace, name).await?;
    Ok(resolve_kafka_secret(name, data.as_ref()).map(Some))
}

/// Server-side apply of the whole desired object, owned by the operator's field manager.
/// Forced: the operator is the authority on the fields it sets. Applying an unchanged
/// object is a no-op on the API server (no new resourceVersion, no event to watchers).
pub async fn apply<K>(api: &Api<K>, object: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
{
    let name = object.meta().name.clone().unwrap_or_default();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(object),
    )
    .await
}

/// Deletes the objects of kind `K` in `api` that `owner` controls and that are not in
/// `keep` (by name): what the spec asked for once and no longer does.
pub async fn prune<K, O>(
    api: &Api<K>,
    owner: &O,
    keep: &[String],
) -> Result<Vec<String>, kube::Error>
where
    K: Resource + Clone + Debug + DeserializeOwned,
    O: Resource<DynamicType = ()>,
{
    let owner_uid = owner.meta().uid.clone().unwrap_or_default();
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    let mut deleted = Vec::new();
    for object in api.list(&ListParams::default().labels(&selector)).await? {
        let controlled = object
            .meta()
            .owner_references
            .iter()
            .flatten()
            .any(|r| r.controller == Some(true) && r.uid == owner_uid);
        let name = object.meta().name.clone().unwrap_or_default();
        if controlled && !keep.contains(&name) {
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => deleted.push(name),
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(deleted)
}

/// The pod-level half of the restricted Pod Security Standard.
pub fn pod_security_context() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(65532),
        run_as_group: Some(65532),
        fs_group: Some(65532),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The container-level half of the restricted Pod Security Standard.
pub fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// An EventTopic reference that cannot be used yet, as a person should read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicProblem {
    NotFound { name: String },
    NotReady { name: String, reason: String },
}

impl TopicProblem {
    pub fn decided(&self, namespace: &str) -> Decided {
        match self {
            Self::NotFound { name } => Decided::new(
                condition_type::READY,
                false,
                "TopicNotFound",
                format!(
                    "EventTopic {namespace}/{name} does not exist: create it, or fix the topic name in the spec"
                ),
            ),
            Self::NotReady { name, reason } => Decided::new(
                condition_type::READY,
                false,
                "TopicNotReady",
                format!(
                    "EventTopic {namespace}/{name} is not Ready ({reason}): see `kubectl describe eventtopic -n {namespace} {name}`"
                ),
            ),
        }
    }
}

/// The Kafka topic name of the EventTopic `name`, if it exists and is Ready, or was made in
/// Kafka and only Kafka is away now: a workload then still changes with its spec or a
/// rotated Secret (its Pods wait for Kafka, or spool, as they would anyway).
pub fn resolve_topic(topic: Option<&EventTopic>, name: &str) -> Result<String, TopicProblem> {
    let Some(topic) = topic else {
        return Err(TopicProblem::NotFound { name: name.into() });
    };
    let conditions = topic
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let made_in_kafka = topic.status.as_ref().is_some_and(|s| s.topic_id.is_some());
    match find_condition(conditions, condition_type::READY) {
        Some(c) if c.status == "True" => Ok(topic.topic_name().to_owned()),
        Some(c) if c.reason == "KafkaUnavailable" && made_in_kafka => {
            Ok(topic.topic_name().to_owned())
        }
        Some(c) => Err(TopicProblem::NotReady {
            name: name.into(),
            reason: c.reason.clone(),
        }),
        None => Err(TopicProblem::NotReady {
            name: name.into(),
            reason: "not reconciled yet".into(),
        }),
    }
}

/// Reads each named EventTopic of `namespace` and resolves it to its Kafka topic name; the
/// first problem, in the order given, is returned.
pub async fn resolve_topics(
    client: &Client,
    namespace: &str,
    names: &[&str],
) -> Result<Result<Vec<String>, TopicProblem>, kube::Error> {
    let api: Api<EventTopic> = Api::namespaced(client.clone(), namespace);
    let mut resolved = Vec::with_capacity(names.len());
    for name in names {
        let topic = api.get_opt(name).await?;
        match resolve_topic(topic.as_ref(), name) {
            Ok(kafka_name) => resolved.push(kafka_name),
            Err(problem) => return Ok(Err(problem)),
        }
    }
    Ok(Ok(resolved))
}

/// A workload's rollout as its Deployment or StatefulSet reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollout {
    pub kind: &'static str,
    pub name: String,
    pub wanted: i32,
    pub ready: i32,
    /// Replicas of the current template.
    pub updated: i32,
    pub total: i32,
    /// The controller has seen the latest spec.
    pub observed: bool,
}

impl From<&Deployment> for Rollout {
    fn from(deployment: &Deployment) -> Self {
        let status = deployment.status.clone().unwrap_or_default();
        Self {
            kind: "Deployment",
            name: deployment.name_any(),
            wanted: deployment
                .spec
                .as_ref()
                .and_then(|s| s.replicas)
                .unwrap_or(1),
            ready: status.ready_replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            total: status.replicas.unwrap_or(0),
            observed: status.observed_generation >= deployment.metadata.generation,
        }
    }
}

impl From<&StatefulSet> for Rollout {
    fn from(set: &StatefulSet) -> Self {
        let status = set.status.clone().unwrap_or_default();
        // A finished rollout makes the update revision current; until then, Pods of the
        // old revision are still to be replaced.
        let rolled = status.update_revision == status.current_revision;
        Self {
            kind: "StatefulSet",
            name: set.name_any(),
            wanted: set.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1),
            ready: status.ready_replicas.unwrap_or(0),
            updated: if rolled {
                status.current_replicas.unwrap_or(0)
            } else {
                status.updated_replicas.unwrap_or(0)
            },
            total: status.replicas,
            observed: status.observed_generation >= set.metadata.generation,
        }
    }
}

/// How far a workload has come, as the owner's `Ready` condition: ready when the rollout
/// of the current template is complete and every wanted replica is ready.
pub fn rollout_progress(rollout: Option<Rollout>, what: &str) -> (i32, Decided) {
    let Some(Rollout {
        kind,
        name,
        wanted,
        ready,
        updated,
        total,
        observed,
    }) = rollout
    else {
        return (
            0,
            Decided::new(
                condition_type::READY,
                false,
                "Progressing",
                format!("creating the {what} workload"),
            ),
        );
    };
    let decided = if !observed {
        Decided::new(
            condition_type::READY,
            false,
            "Progressing",
            format!("{kind} {name} has not seen its latest spec yet"),
        )
    } else if wanted == 0 {
        Decided::new(
            condition_type::READY,
            true,
            "ScaledToZero",
            format!("the {what} runs no replicas"),
        )
    } else if updated < wanted || total > wanted {
        Decided::new(
            condition_type::READY,
            false,
            "Progressing",
            format!("rolling out {kind} {name}: {updated} of {wanted} replicas updated"),
        )
    } else if ready < wanted {
        let resource = kind.to_lowercase();
        Decided::new(
            condition_type::READY,
            false,
            "ReplicasNotReady",
            format!(
                "{ready} of {wanted} replicas of {kind} {name} are ready; see `kubectl describe {resource} {name}` and the pods' /readyz"
            ),
        )
    } else {
        Decided::new(
            condition_type::READY,
            true,
            "Running",
            format!("{ready} of {wanted} replicas ready"),
        )
    };
    (ready, decided)
}

/// One Api per watched namespace, or one across all namespaces.
pub fn apis<K>(client: &Client, namespaces: &[String]) -> Vec<Api<K>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    if namespaces.is_empty() {
        vec![Api::all(client.clone())]
    } else {
        namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect()
    }
}

/// Resolves once `stop` turns true: the graceful-shutdown signal every controller follows.
pub async fn until_stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// The namespace of a namespaced object read from the API server.
pub fn namespace_of<K: Resource>(object: &K) -> String {
    object.namespace().unwrap_or_default()
}

/// `base` scaled by a random factor in [0.9, 1.1), so many objects do not requeue in
/// lockstep.
pub fn jittered(base: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let random = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let factor = 0.9 + (random % 1000) as f64 / 5000.0;
    base.mul_f64(factor)
}

/// The wait after `failures` failures in a row (at least one): 1 s doubling to 60 s, jittered.
pub fn backoff_after(failures: u32) -> Duration {
    let delay = Duration::from_secs(1 << (failures.max(1) - 1).min(6)).min(Duration::from_secs(60));
    jittered(delay)
}

/// Consecutive failures per object and the wait they earn ([`backoff_after`]): what every
/// controller retries with, from `error_policy` and while Kafka fails.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: std::sync::Mutex<std::collections::HashMap<String, u32>>,
}

impl Backoff {
    /// Counts one more failure of `key` and returns how long to wait before the next try.
    pub fn failed(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let attempt = failures.entry(key.to_owned()).or_default();
        *attempt = attempt.saturating_add(1);
        backoff_after(*attempt)
    }

    /// Forgets the failures of `key`: its next failure waits 1 s again.
    pub fn succeeded(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn the_checksum_changes_with_any_part_and_with_part_boundaries() {
        let a = checksum([b"ab".as_slice(), b"c".as_slice()]);
        assert_eq!(a.len(), 64);
        assert_eq!(a, checksum([b"ab".as_slice(), b"c".as_slice()]));
        assert_ne!(a, checksum([b"a".as_slice(), b"bc".as_slice()]));
        assert_ne!(a, checksum([b"ab".as_slice(), b"d".as_slice()]));
    }

    #[test]
    fn the_kafka_secret_resolves_to_its_properties_key_or_is_named_as_missing() {
        let data = BTreeMap::from([("properties.yaml".to_owned(), b"a: b\n".to_vec())]);
        assert_eq!(
            resolve_kafka_secret("kafka-client", Some(&data)),
            Ok(SecretKey {
                name: "kafka-client".into(),
                key: "properties.yaml".into(),
                value: b"a: b\n".to_vec(),
            })
        );
        let missing = resolve_kafka_secret("kafka-client", None).unwrap_err();
        assert_eq!(missing.reason(), "SecretNotFound");
        let message = missing.message("team-a", "consumer");
        assert!(
            message.contains(
                "Secret team-a/kafka-client does not exist: create it with key properties.yaml"
            ),
            "{message}"
        );
        assert!(message.contains("--workload-kafka-secret"), "{message}");
        assert!(message.contains("the running consumer"), "{message}");
        let no_key = resolve_kafka_secret("kafka-client", Some(&BTreeMap::new())).unwrap_err();
        assert_eq!(no_key.reason(), "SecretNotFound");
        assert!(
            no_key
                .message("team-a", "receiver")
                .contains("Secret team-a/kafka-client has no key properties.yaml"),
            "{}",
            no_key.message("team-a", "receiver")
        );
    }

    #[test]
    fn workloads_get_the_bootstrap_servers_and_at_most_the_secrets_file() {
        let mut settings = WorkloadSettings {
            image: "i".into(),
            image_pull_policy: None,
            kafka_bootstrap_servers: "k:9092".into(),
            kafka_secret: None,
            spool_storage_class: None,
        };
        let kafka = settings.workload_kafka();
        assert_eq!(kafka.bootstrap_servers, "k:9092");
        assert!(kafka.properties.is_empty() && kafka.properties_file.is_none());
        assert!(settings.kafka_secret_mount().is_none());
        settings.kafka_secret = Some("kafka-client".into());
        assert_eq!(
            settings.workload_kafka().properties_file,
            Some("/etc/omninode-bridge/kafka/properties.yaml".into())
        );
        let (volume, mount) = settings.kafka_secret_mount().unwrap();
        assert_eq!(volume.name, mount.name);
        assert_eq!(mount.mount_path, "/etc/omninode-bridge/kafka");
    }

    fn topic(ready: Option<(&str, &str)>) -> EventTopic {
        let mut topic = EventTopic::new("orders", serde_json::from_str("{}").unwrap());
        topic.spec.topic_name = Some("team-a.orders".into());
        topic.status = ready.map(|(status, reason)| bridge_api::EventTopicStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: status.into(),
                reason: reason.into(),
                message: String::new(),
                observed_generation: None,
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            }],
            ..Default::default()
        });
        topic
    }

    #[test]
    fn a_topic_resolves_to_its_kafka_name_only_when_ready() {
        assert_eq!(
            resolve_topic(Some(&topic(Some(("True", "TopicReady")))), "orders"),
            Ok("team-a.orders".into())
        );
        assert_eq!(
            resolve_topic(None, "orders"),
            Err(TopicProblem::NotFound {
                name: "orders".into()
            })
        );
        let mut away = topic(Some(("False", "KafkaUnavailable")));
        away.status.as_mut().unwrap().topic_id = Some("4rK0Ow1mQ2yQ0bEMcAGPFw".into());
        assert_eq!(
            resolve_topic(Some(&away), "orders"),
            Ok("team-a.orders".into()),
            "a topic made in Kafka keeps its name while Kafka is away"
        );
        let problem =
            resolve_topic(Some(&topic(Some(("False", "KafkaUnavailable")))), "orders").unwrap_err();
        let decided = problem.decided("team-a");
        assert_eq!(decided.reason, "TopicNotReady");
        assert!(
            decided.message.contains("team-a/orders"),
            "{}",
            decided.message
        );
        assert!(
            decided.message.contains("KafkaUnavailable"),
            "{}",
            decided.message
        );
        assert!(matches!(
            resolve_topic(Some(&topic(None)), "orders"),
            Err(TopicProblem::NotReady { .. })
        ));
    }

    fn deployment(wanted: i32, updated: i32, ready: i32, observed: bool) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("github-receiver".into()),
                generation: Some(2),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(wanted),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(if observed { 2 } else { 1 }),
                replicas: Some(updated.max(ready)),
                updated_replicas: Some(updated),
                ready_replicas: Some(ready),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_deployment_is_ready_only_when_its_rollout_is_complete() {
        let reason = |d: &Deployment| rollout_progress(Some(d.into()), "receiver").1.reason;
        assert_eq!(reason(&deployment(2, 2, 2, true)), "Running");
        assert_eq!(reason(&deployment(2, 2, 2, false)), "Progressing");
        assert_eq!(reason(&deployment(2, 1, 2, true)), "Progressing");
        assert_eq!(reason(&deployment(2, 2, 1, true)), "ReplicasNotReady");
        assert_eq!(reason(&deployment(0, 0, 0, true)), "ScaledToZero");
        assert_eq!(rollout_progress(None, "receiver").1.reason, "Progressing");
        assert_eq!(
            rollout_progress(Some((&deployment(3, 3, 3, true)).into()), "r").0,
            3
        );
    }

    #[test]
    fn backoff_doubles_per_failure_up_to_a_minute_and_resets_on_success() {
        let backoff = Backoff::default();
        let waits: Vec<Duration> = (0..9).map(|_| backoff.failed("ns/a")).collect();
        assert!(waits[0] < Duration::from_millis(1100), "{waits:?}");
        assert!(waits[1] >= Duration::from_millis(1800), "{waits:?}");
        assert!(waits[8] >= Duration::from_secs(54) && waits[8] < Duration::from_secs(67));
        assert!(backoff.failed("ns/b") < Duration::from_millis(1100));
        backoff.succeeded("ns/a");
        assert!(backoff.failed("ns/a") < Duration::from_millis(1100));
    }

    #[test]
    fn selector_labels_are_a_subset_of_the_labels() {
        let all = labels("hook-receiver", "github");
        for (key, value) in selector_labels("hook-receiver", "github") {
            assert_eq!(all.get(&key), Some(&value));
        }
        assert_eq!(all[MANAGED_BY_LABEL], "bridge-operator");
    }
}
