//! The operator's calls to Kafka's admin API. Topic descriptions from many reconciles are
//! gathered into one metadata fetch and one DescribeConfigs request, so a resync of
//! thousands of EventTopics costs a handful of round trips, not thousands.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::topic_plan::{DesiredTopic, ObservedTopic};

/// How long one admin request may take before Kafka counts as unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long describe requests wait to join a batch, and the largest batch.
const BATCH_WINDOW: Duration = Duration::from_millis(20);
const BATCH_MAX: usize = 2_000;

#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    #[error("Kafka is unreachable: {0}")]
    Unavailable(String),
    #[error("Kafka refused the request: {code:?}{}", detail(.message))]
    Refused {
        code: RDKafkaErrorCode,
        message: Option<String>,
    },
}

fn detail(message: &Option<String>) -> String {
    message
        .as_deref()
        .map(|m| format!(" ({m})"))
        .unwrap_or_default()
}

impl AdminError {
    fn from_kafka(error: KafkaError) -> Self {
        match error.rdkafka_error_code() {
            Some(
                code @ (RDKafkaErrorCode::InvalidConfig
                | RDKafkaErrorCode::PolicyViolation
                | RDKafkaErrorCode::InvalidReplicationFactor
                | RDKafkaErrorCode::InvalidPartitions
                | RDKafkaErrorCode::InvalidRequest
                | RDKafkaErrorCode::TopicAlreadyExists
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed),
            ) => Self::Refused {
                code,
                message: None,
            },
            _ => Self::Unavailable(error.to_string()),
        }
    }

    fn from_code(code: RDKafkaErrorCode) -> Self {
        match code {
            RDKafkaErrorCode::RequestTimedOut
            | RDKafkaErrorCode::OperationTimedOut
            | RDKafkaErrorCode::BrokerTransportFailure
            | RDKafkaErrorCode::AllBrokersDown
            | RDKafkaErrorCode::NotController
            | RDKafkaErrorCode::BrokerNotAvailable
            | RDKafkaErrorCode::LeaderNotAvailable => Self::Unavailable(code.to_string()),
            code => Self::Refused {
                code,
                message: None,
            },
        }
    }
}

type DescribeReply = oneshot::Sender<Result<Option<ObservedTopic>, AdminError>>;
type CreateReply = oneshot::Sender<Result<(), AdminError>>;

/// A handle on Kafka's admin API, cheap to clone.
#[derive(Clone)]
pub struct TopicAdmin {
    admin: Arc<AdminClient<DefaultClientContext>>,
    describe_requests: mpsc::Sender<(String, DescribeReply)>,
    create_requests: mpsc::Sender<(DesiredTopic, CreateReply)>,
    audit_topic_exists: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

impl TopicAdmin {
    /// Connects lazily: creating the client never fails because Kafka is down.
    pub fn new(config: &ClientConfig, metrics: Arc<Metrics>) -> Result<Self, KafkaError> {
        let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(config.create()?);
        let (describe_requests, requests) = mpsc::channel(BATCH_MAX);
        let audit_topic_exists = Arc::new(AtomicBool::new(false));
        tokio::spawn(describe_batches(
            admin.clone(),
            requests,
            audit_topic_exists.clone(),
            metrics.clone(),
        ));
        let (create_requests, creates) = mpsc::channel(BATCH_MAX);
        tokio::spawn(create_batches(admin.clone(), creates, metrics.clone()));
        Ok(Self {
            admin,
            describe_requests,
            create_requests,
            audit_topic_exists,
            metrics,
        })
    }

    /// The topic as the broker reports it, or `None` when it does not exist.
    pub async fn describe(&self, topic: &str) -> Result<Option<ObservedTopic>, AdminError> {
        let (reply, answer) = oneshot::channel();
        self.describe_requests
            .send((topic.to_owned(), reply))
            .await
            .map_err(|_| AdminError::Unavailable("the admin client has shut down".into()))?;
        answer
            .await
            .map_err(|_| AdminError::Unavailable("the admin client has shut down".into()))?
    }

    /// Whether `audit-events` existed at the last description.
    pub fn audit_topic_exists(&self) -> bool {
        self.audit_topic_exists.load(Ordering::Relaxed)
    }

    fn options() -> AdminOptions {
        AdminOptions::new()
            .request_timeout(Some(REQUEST_TIMEOUT))
            .operation_timeout(Some(REQUEST_TIMEOUT))
    }

    /// Creates the topic; creations from many reconciles share one CreateTopics request.
    pub async fn create(&self, topic: &DesiredTopic) -> Result<(), AdminError> {
        let (reply, answer) = oneshot::channel();
        self.create_requests
            .send((topic.clone(), reply))
            .await
            .map_err(|_| AdminError::Unavailable("the admin client has shut down".into()))?;
        answer
            .await
            .map_err(|_| AdminError::Unavailable("the admin client has shut down".into()))?
    }

    /// Writes the topic's whole config set (Kafka's AlterConfigs replaces it).
    pub async fn set_configs(
        &self,
        topic: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), AdminError> {
        let _timer = self.metrics.admin_call("alter_configs");
        let mut alter = AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (key, value) in configs {
            alter = alter.set(key, value);
        }
        let result = self
            .admin
            .alter_configs(&[alter], &Self::options())
            .await
            .map_err(AdminError::from_kafka)?;
        match result.into_iter().next() {
            Some(Ok(_)) => Ok(()),
            Some(Err((_, code))) => Err(AdminError::from_code(code)),
            None => Err(AdminError::Unavailable(
                "no result from AlterConfigs".into(),
            )),
        }
    }

    pub async fn grow_partitions(&self, topic: &str, partitions: i32) -> Result<(), AdminError> {
        let _timer = self.metrics.admin_call("create_partitions");
        let count = usize::try_from(partitions).unwrap_or_default();
        let result = self
            .admin
            .create_partitions(&[NewPartitions::new(topic, count)], &Self::options())
            .await
            .map_err(AdminError::from_kafka)?;
        single_result(result)
    }

    pub async fn delete(&self, topic: &str) -> Result<(), AdminError> {
        let _timer = self.metrics.admin_call("delete_topics");
        let result = self
            .admin
            .delete_topics(&[topic], &Self::options())
            .await
            .map_err(AdminError::from_kafka)?;
        match single_result(result) {
            Err(AdminError::Refused {
                code: RDKafkaErrorCode::UnknownTopicOrPartition,
                ..
            }) => Ok(()),
            other => other,
        }
    }
}

fn single_result(
    result: Vec<Result<String, (String, RDKafkaErrorCode)>>,
) -> Result<(), AdminError> {
    match result.into_iter().next() {
        Some(Ok(_)) => Ok(()),
        Some(Err((_, code))) => Err(AdminError::from_code(code)),
        None => Err(AdminError::Unavailable("no result from Kafka".into())),
    }
}

/// The requests waiting now, and those arriving within [`BATCH_WINDOW`] after `first`, up
/// to [`BATCH_MAX`].
async fn gather<T>(first: T, requests: &mut mpsc::Receiver<T>) -> Vec<T> {
    let mut batch = vec![first];
    let window = tokio::time::sleep(BATCH_WINDOW);
    tokio::pin!(window);
    while batch.len() < BATCH_MAX {
        tokio::select! {
            request = requests.recv() => match request {
                Some(request) => batch.push(request),
                None => break,
            },
            _ = &mut window => break,
        }
    }
    batch
}

/// Serves describe requests in batches until every sender is gone.
async fn describe_batches(
    admin: Arc<AdminClient<DefaultClientContext>>,
    mut requests: mpsc::Receiver<(String, DescribeReply)>,
    audit_topic_exists: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = requests.recv().await {
        let batch = gather(first, &mut requests).await;
        let names: Vec<String> = batch.iter().map(|(name, _)| name.clone()).collect();
        let result = describe_topics(&admin, &names, &audit_topic_exists, &metrics).await;
        for (name, reply) in batch {
            let answer = match &result {
                Ok(found) => Ok(found.get(&name).cloned()),
                Err(error) => Err(error.clone()),
            };
            let _ = reply.send(answer);
        }
    }
}

/// Serves create requests in batches (one CreateTopics request each) until every sender is gone.
async fn create_batches(
    admin: Arc<AdminClient<DefaultClientContext>>,
    mut requests: mpsc::Receiver<(DesiredTopic, CreateReply)>,
    metrics: Arc<Metrics>,
) {
    while let Some(first) = requests.recv().await {
        let batch = gather(first, &mut requests).await;
        let _timer = metrics.admin_call("create_topics");
        let new_topics: Vec<NewTopic> = batch
            .iter()
            .map(|(topic, _)| {
                topic.configs.iter().fold(
                    NewTopic::new(
                        &topic.name,
                        topic.partitions,
                        TopicReplication::Fixed(topic.replication_factor),
                    ),
                    |new_topic, (key, value)| new_topic.set(key, value),
                )
            })
            .collect();
        let results = admin
            .create_topics(&new_topics, &TopicAdmin::options())
            .await;
        match results {
            Ok(results) => {
                // Kafka answers per topic, in request order.
                let mut by_name: HashMap<String, Result<(), AdminError>> = results
                    .into_iter()
                    .map(|r| match r {
                        Ok(name) => (name, Ok(())),
                        Err((name, code)) => (name, Err(AdminError::from_code(code))),
                    })
                    .collect();
                for (topic, reply) in batch {
                    let answer = by_name.remove(&topic.name).unwrap_or_else(|| {
                        Err(AdminError::Unavailable(
                            "no result from CreateTopics".into(),
                        ))
                    });
                    let _ = reply.send(answer);
                }
            }
            Err(error) => {
                let error = AdminError::from_kafka(error);
                for (_, reply) in batch {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// One metadata fetch and one DescribeConfigs request for all of `names`.
async fn describe_topics(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    names: &[String],
    audit_topic_exists: &AtomicBool,
    metrics: &Metrics,
) -> Result<HashMap<String, ObservedTopic>, AdminError> {
    let started = Instant::now();
    let client = admin.clone();
    // librdkafka's metadata call blocks its thread; it asks for all topics because it
    // cannot ask for a list.
    let metadata = tokio::task::spawn_blocking(move || {
        client
            .inner()
            .fetch_metadata(None, REQUEST_TIMEOUT)
            .map(|m| {
                m.topics()
                    .iter()
                    .filter(|t| t.error().is_none())
                    .map(|t| {
                        let replication_factor = t
                            .partitions()
                            .iter()
                            .map(|p| p.replicas().len())
                            .max()
                            .unwrap_or_default();
                        (
                            t.name().to_owned(),
                            (t.partitions().len() as i32, replication_factor as i32),
                        )
                    })
                    .collect::<HashMap<_, _>>()
            })
    })
    .await
    .map_err(|e| AdminError::Unavailable(format!("metadata task failed: {e}")))?
    .map_err(|e| AdminError::Unavailable(e.to_string()))?;
    metrics.observe_admin_call("metadata", started.elapsed());
    audit_topic_exists.store(
        metadata.contains_key(crate::audit::AUDIT_TOPIC),
        Ordering::Relaxed,
    );

    let existing: Vec<&String> = names.iter().filter(|n| metadata.contains_key(*n)).collect();
    let mut found = HashMap::new();
    if existing.is_empty() {
        return Ok(found);
    }
    let started = Instant::now();
    let specifiers: Vec<ResourceSpecifier> = existing
        .iter()
        .map(|n| ResourceSpecifier::Topic(n.as_str()))
        .collect();
    let described = admin
        .describe_configs(&specifiers, &TopicAdmin::options())
        .await
        .map_err(AdminError::from_kafka)?;
    metrics.observe_admin_call("describe_configs", started.elapsed());
    for (name, result) in existing.into_iter().zip(described) {
        let resource = match result {
            Ok(resource) => resource,
            // Deleted between the two calls: absent, like a topic never seen.
            Err(RDKafkaErrorCode::UnknownTopicOrPartition) => continue,
            Err(code) => return Err(AdminError::from_code(code)),
        };
        let configs = resource
            .entries
            .into_iter()
            .filter(|e| matches!(e.source, ConfigSource::DynamicTopic))
            .filter_map(|e| e.value.map(|v| (e.name, v)))
            .collect();
        let (partitions, replication_factor) = metadata[name];
        found.insert(
            name.clone(),
            ObservedTopic {
                partitions,
                replication_factor,
                configs,
            },
        );
    }
    Ok(found)
}
