//! The operator's calls to Kafka's admin API. Calls of one kind from many reconciles are
//! gathered for a moment into one admin request ([`Batcher`]): descriptions into one
//! DescribeTopics and one DescribeConfigs request; creations, config
//! writes, partition increases and deletions into one CreateTopics, AlterConfigs,
//! CreatePartitions and DeleteTopics request each. A resync of thousands of EventTopics,
//! drift corrections included, costs a handful of round trips, not thousands.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    OwnedResourceSpecifier, ResourceSpecifier, TopicReplication, TopicResult,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::topic_descriptions::TopicDescription;
use crate::topic_plan::{DesiredTopic, ObservedTopic};
use crate::workload::backoff_after;

/// How long one admin request may take before Kafka counts as unavailable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long calls wait to join a batch, and the largest batch.
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

/// One topic's config set to write (Kafka's AlterConfigs replaces the whole set).
#[derive(Debug, Clone)]
struct ConfigWrite {
    topic: String,
    configs: BTreeMap<String, String>,
}

/// Kafka's availability as the operator's admin requests find it, for one backoff for the
/// whole cluster. Passes that find Kafka unavailable all wait [`Availability::retry_delay`],
/// which grows with each request that fails in a row, instead of each object backing off
/// on its own: at 10,000 objects, backoff per object sent thousands of passes back to
/// overloaded brokers every second or two, each one failing again.
#[derive(Debug, Default)]
pub struct Availability {
    failed_in_a_row: AtomicU32,
}

impl Availability {
    /// Counts a request that failed for want of Kafka (as a whole, or for any of its
    /// topics); any other answer, refusals included, means Kafka answered and resets the count.
    fn record<Resp>(&self, answer: &BatchAnswer<Resp>) {
        let unavailable = match answer {
            Err(error) => matches!(error, AdminError::Unavailable(_)),
            Ok(by_name) => by_name
                .values()
                .any(|result| matches!(result, Err(AdminError::Unavailable(_)))),
        };
        if unavailable {
            self.failed_in_a_row.fetch_add(1, Ordering::Relaxed);
        } else {
            self.failed_in_a_row.store(0, Ordering::Relaxed);
        }
    }

    /// How long a pass that found Kafka unavailable waits before it tries again: 1 s after
    /// one failed request, doubling with each further request failed in a row, at most
    /// 60 s; jittered by up to 10 %, so the waiting passes come back close enough together
    /// to share their requests again.
    pub fn retry_delay(&self) -> Duration {
        backoff_after(self.failed_in_a_row.load(Ordering::Relaxed))
    }
}

/// A handle on Kafka's admin API, cheap to clone. Every call goes through a [`Batcher`]:
/// calls of one kind from concurrent reconciles share one admin request.
#[derive(Clone)]
pub struct TopicAdmin {
    describes: Batcher<String, Option<ObservedTopic>>,
    creates: Batcher<DesiredTopic, ()>,
    config_writes: Batcher<ConfigWrite, ()>,
    partition_increases: Batcher<(String, i32), ()>,
    deletes: Batcher<String, ()>,
    topic_ids: Batcher<String, Option<String>>,
    audit_topic_exists: Arc<AtomicBool>,
    availability: Arc<Availability>,
}

impl TopicAdmin {
    /// Connects lazily: creating the client never fails because Kafka is down.
    pub fn new(config: &ClientConfig, metrics: Arc<Metrics>) -> Result<Self, KafkaError> {
        let admin: Arc<AdminClient<DefaultClientContext>> = Arc::new(config.create()?);
        let audit_topic_exists = Arc::new(AtomicBool::new(false));
        let availability = Arc::new(Availability::default());
        let describes = {
            let (admin, metrics, audit) =
                (admin.clone(), metrics.clone(), audit_topic_exists.clone());
            Batcher::spawn(String::as_str, &availability, move |names: Vec<String>| {
                let (admin, metrics, audit) = (admin.clone(), metrics.clone(), audit.clone());
                async move {
                    metrics.observe_batch("describe", names.len());
                    let mut found = describe_topics(&admin, &names, &audit, &metrics).await?;
                    Ok(names
                        .into_iter()
                        .map(|name| {
                            let observed = found.remove(&name);
                            (name, Ok(observed))
                        })
                        .collect())
                }
            })
        };
        let creates = {
            let (admin, metrics) = (admin.clone(), metrics.clone());
            Batcher::spawn(
                |topic: &DesiredTopic| topic.name.as_str(),
                &availability,
                move |topics: Vec<DesiredTopic>| {
                    let (admin, metrics) = (admin.clone(), metrics.clone());
                    async move { create_topics(&admin, &metrics, &topics).await }
                },
            )
        };
        let config_writes = {
            let (admin, metrics) = (admin.clone(), metrics.clone());
            Batcher::spawn(
                |write: &ConfigWrite| write.topic.as_str(),
                &availability,
                move |writes: Vec<ConfigWrite>| {
                    let (admin, metrics) = (admin.clone(), metrics.clone());
                    async move { alter_configs(&admin, &metrics, &writes).await }
                },
            )
        };
        let partition_increases = {
            let (admin, metrics) = (admin.clone(), metrics.clone());
            Batcher::spawn(
                |(topic, _): &(String, i32)| topic.as_str(),
                &availability,
                move |increases: Vec<(String, i32)>| {
                    let (admin, metrics) = (admin.clone(), metrics.clone());
                    async move { create_partitions(&admin, &metrics, &increases).await }
                },
            )
        };
        let deletes = {
            let (admin, metrics) = (admin.clone(), metrics.clone());
            Batcher::spawn(String::as_str, &availability, move |topics: Vec<String>| {
                let (admin, metrics) = (admin.clone(), metrics.clone());
                async move { delete_topics(&admin, &metrics, &topics).await }
            })
        };
        let topic_ids = {
            let (admin, metrics) = (admin.clone(), metrics.clone());
            Batcher::spawn(String::as_str, &availability, move |names: Vec<String>| {
                let (admin, metrics) = (admin.clone(), metrics.clone());
                async move {
                    let mut described =
                        describe_named_topics(&admin, names.clone(), &metrics).await?;
                    Ok(names
                        .into_iter()
                        .map(|name| {
                            let id = described.remove(&name).and_then(|d| d.id);
                            (name, Ok(id))
                        })
                        .collect())
                }
            })
        };
        Ok(Self {
            describes,
            creates,
            config_writes,
            partition_increases,
            deletes,
            topic_ids,
            audit_topic_exists,
            availability,
        })
    }

    /// The topic as the broker reports it, or `None` when it does not exist.
    pub async fn describe(&self, topic: &str) -> Result<Option<ObservedTopic>, AdminError> {
        self.describes.call(topic.to_owned()).await
    }

    /// Kafka's id of the topic (base64, as `kafka-topics --describe` prints it), or `None`
    /// when the broker does not know the topic (yet) or the lookup failed.
    pub async fn topic_id(&self, topic: &str) -> Option<String> {
        self.topic_ids.call(topic.to_owned()).await.ok().flatten()
    }

    /// How long a pass that found Kafka unavailable waits: one backoff for the cluster.
    pub fn retry_delay(&self) -> Duration {
        self.availability.retry_delay()
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
        self.creates.call(topic.clone()).await
    }

    /// Writes the topic's whole config set (Kafka's AlterConfigs replaces it); writes from
    /// many reconciles share one AlterConfigs request.
    pub async fn set_configs(
        &self,
        topic: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), AdminError> {
        self.config_writes
            .call(ConfigWrite {
                topic: topic.to_owned(),
                configs: configs.clone(),
            })
            .await
    }

    /// Grows the topic to `partitions`; increases from many reconciles share one
    /// CreatePartitions request.
    pub async fn grow_partitions(&self, topic: &str, partitions: i32) -> Result<(), AdminError> {
        self.partition_increases
            .call((topic.to_owned(), partitions))
            .await
    }

    /// Deletes the topic (a topic already gone counts as deleted); deletions from many
    /// reconciles share one DeleteTopics request.
    pub async fn delete(&self, topic: &str) -> Result<(), AdminError> {
        match self.deletes.call(topic.to_owned()).await {
            Err(AdminError::Refused {
                code: RDKafkaErrorCode::UnknownTopicOrPartition,
                ..
            }) => Ok(()),
            other => other,
        }
    }
}

/// What one admin request answered for each topic of a batch, by topic name; `Err` when
/// the request as a whole failed.
type BatchAnswer<Resp> = Result<HashMap<String, Result<Resp, AdminError>>, AdminError>;
type Reply<Resp> = oneshot::Sender<Result<Resp, AdminError>>;

/// Gathers calls of one kind from concurrent reconciles: the calls waiting now and those
/// arriving within [`BATCH_WINDOW`] after the first (up to [`BATCH_MAX`]) go to `run` as one
/// list, and each caller gets the answer for its own topic back. A topic appears at most
/// once per list (Kafka refuses a request naming a topic twice): a second call for the
/// same topic goes into the next list, after the first, so calls for one topic keep their
/// order.
struct Batcher<Req, Resp> {
    requests: mpsc::Sender<(Req, Reply<Resp>)>,
}

impl<Req, Resp> Clone for Batcher<Req, Resp> {
    fn clone(&self) -> Self {
        Self {
            requests: self.requests.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Batcher<Req, Resp> {
    /// Starts the task that serves the batches; it ends when every handle is gone. Every
    /// request's answer is recorded in `availability`.
    fn spawn<F, Fut>(key: fn(&Req) -> &str, availability: &Arc<Availability>, run: F) -> Self
    where
        F: FnMut(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = BatchAnswer<Resp>> + Send,
    {
        Self::spawn_with(key, availability, BATCH_WINDOW, BATCH_MAX, run)
    }

    fn spawn_with<F, Fut>(
        key: fn(&Req) -> &str,
        availability: &Arc<Availability>,
        window: Duration,
        max: usize,
        mut run: F,
    ) -> Self
    where
        F: FnMut(Vec<Req>) -> Fut + Send + 'static,
        Fut: Future<Output = BatchAnswer<Resp>> + Send,
    {
        let (requests, mut receiver) = mpsc::channel::<(Req, Reply<Resp>)>(max);
        let availability = availability.clone();
        tokio::spawn(async move {
            while let Some(first) = receiver.recv().await {
                let batch = gather(first, &mut receiver, window, max).await;
                for round in distinct_rounds(batch, |(request, _)| key(request)) {
                    let (batch, replies): (Vec<Req>, Vec<Reply<Resp>>) = round.into_iter().unzip();
                    let names: Vec<String> = batch.iter().map(|r| key(r).to_owned()).collect();
                    let answer = run(batch).await;
                    availability.record(&answer);
                    route(answer, names.into_iter().zip(replies));
                }
            }
        });
        Self { requests }
    }

    /// Queues `request` for the next batch and waits for its answer.
    async fn call(&self, request: Req) -> Result<Resp, AdminError> {
        let shut_down = || AdminError::Unavailable("the admin client has shut down".into());
        let (reply, answer) = oneshot::channel();
        self.requests
            .send((request, reply))
            .await
            .map_err(|_| shut_down())?;
        answer.await.map_err(|_| shut_down())?
    }
}

/// The requests waiting now, and those arriving within `window` after `first`, up to `max`.
async fn gather<T>(
    first: T,
    requests: &mut mpsc::Receiver<T>,
    window: Duration,
    max: usize,
) -> Vec<T> {
    let mut batch = vec![first];
    let window = tokio::time::sleep(window);
    tokio::pin!(window);
    while batch.len() < max {
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

/// Splits `batch` into lists in which no key appears twice: the n-th item of a key goes
/// into the n-th list. Order within each list is the order of `batch`.
fn distinct_rounds<T>(batch: Vec<T>, key: impl Fn(&T) -> &str) -> Vec<Vec<T>> {
    let mut rounds: Vec<Vec<T>> = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for item in batch {
        let count = seen.entry(key(&item).to_owned()).or_default();
        if *count == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[*count].push(item);
        *count += 1;
    }
    rounds
}

/// Hands each caller the answer for its topic, or the request's error.
fn route<Resp>(answer: BatchAnswer<Resp>, callers: impl Iterator<Item = (String, Reply<Resp>)>) {
    match answer {
        Ok(mut by_name) => {
            for (name, reply) in callers {
                let result = by_name.remove(&name).unwrap_or_else(|| {
                    Err(AdminError::Unavailable(format!(
                        "Kafka's answer did not mention topic {name}"
                    )))
                });
                let _ = reply.send(result);
            }
        }
        Err(error) => {
            for (_, reply) in callers {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// Per-topic results of CreateTopics, CreatePartitions or DeleteTopics, by name.
fn by_topic(results: Vec<TopicResult>) -> HashMap<String, Result<(), AdminError>> {
    results
        .into_iter()
        .map(|r| match r {
            Ok(name) => (name, Ok(())),
            Err((name, code)) => (name, Err(AdminError::from_code(code))),
        })
        .collect()
}

/// One CreateTopics request.
async fn create_topics(
    admin: &AdminClient<DefaultClientContext>,
    metrics: &Metrics,
    topics: &[DesiredTopic],
) -> BatchAnswer<()> {
    metrics.observe_batch("create_topics", topics.len());
    let _timer = metrics.admin_call("create_topics");
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|topic| {
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
        .await
        .map_err(AdminError::from_kafka)?;
    Ok(by_topic(results))
}

/// One AlterConfigs request carrying every topic's whole config set.
async fn alter_configs(
    admin: &AdminClient<DefaultClientContext>,
    metrics: &Metrics,
    writes: &[ConfigWrite],
) -> BatchAnswer<()> {
    metrics.observe_batch("alter_configs", writes.len());
    let _timer = metrics.admin_call("alter_configs");
    let alters: Vec<AlterConfig> = writes
        .iter()
        .map(|write| {
            write.configs.iter().fold(
                AlterConfig::new(ResourceSpecifier::Topic(&write.topic)),
                |alter, (key, value)| alter.set(key, value),
            )
        })
        .collect();
    let results = admin
        .alter_configs(&alters, &TopicAdmin::options())
        .await
        .map_err(AdminError::from_kafka)?;
    Ok(results
        .into_iter()
        .filter_map(|result| match result {
            Ok(OwnedResourceSpecifier::Topic(name)) => Some((name, Ok(()))),
            Err((OwnedResourceSpecifier::Topic(name), code)) => {
                Some((name, Err(AdminError::from_code(code))))
            }
            _ => None,
        })
        .collect())
}

/// One CreatePartitions request.
async fn create_partitions(
    admin: &AdminClient<DefaultClientContext>,
    metrics: &Metrics,
    increases: &[(String, i32)],
) -> BatchAnswer<()> {
    metrics.observe_batch("create_partitions", increases.len());
    let _timer = metrics.admin_call("create_partitions");
    let new_partitions: Vec<NewPartitions> = increases
        .iter()
        .map(|(topic, count)| {
            NewPartitions::new(topic, usize::try_from(*count).unwrap_or_default())
        })
        .collect();
    let results = admin
        .create_partitions(&new_partitions, &TopicAdmin::options())
        .await
        .map_err(AdminError::from_kafka)?;
    Ok(by_topic(results))
}

/// One DeleteTopics request.
async fn delete_topics(
    admin: &AdminClient<DefaultClientContext>,
    metrics: &Metrics,
    topics: &[String],
) -> BatchAnswer<()> {
    metrics.observe_batch("delete_topics", topics.len());
    let _timer = metrics.admin_call("delete_topics");
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let results = admin
        .delete_topics(&names, &TopicAdmin::options())
        .await
        .map_err(AdminError::from_kafka)?;
    Ok(by_topic(results))
}

/// One DescribeTopics request for `names` (see [`crate::topic_descriptions`]).
async fn describe_named_topics(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    names: Vec<String>,
    metrics: &Metrics,
) -> Result<HashMap<String, TopicDescription>, AdminError> {
    metrics.observe_batch("describe_topics", names.len());
    let started = Instant::now();
    let client = admin.clone();
    let described = tokio::task::spawn_blocking(move || {
        crate::topic_descriptions::describe(&client, &names, REQUEST_TIMEOUT)
    })
    .await
    .map_err(|e| AdminError::Unavailable(format!("DescribeTopics task failed: {e}")))?
    .map_err(AdminError::Unavailable)?;
    metrics.observe_admin_call("describe_topics", started.elapsed());
    Ok(described)
}

/// One DescribeTopics request (which also tells whether `audit-events` exists) and one
/// DescribeConfigs request for those of `names` that exist.
async fn describe_topics(
    admin: &Arc<AdminClient<DefaultClientContext>>,
    names: &[String],
    audit_topic_exists: &AtomicBool,
    metrics: &Metrics,
) -> Result<HashMap<String, ObservedTopic>, AdminError> {
    let mut asked = names.to_vec();
    if !asked.iter().any(|n| n == crate::audit::AUDIT_TOPIC) {
        asked.push(crate::audit::AUDIT_TOPIC.to_owned());
    }
    let mut described = describe_named_topics(admin, asked, metrics).await?;
    audit_topic_exists.store(
        described.contains_key(crate::audit::AUDIT_TOPIC),
        Ordering::Relaxed,
    );

    let existing: Vec<&String> = names
        .iter()
        .filter(|n| described.contains_key(*n))
        .collect();
    let mut found = HashMap::new();
    if existing.is_empty() {
        return Ok(found);
    }
    let started = Instant::now();
    let specifiers: Vec<ResourceSpecifier> = existing
        .iter()
        .map(|n| ResourceSpecifier::Topic(n.as_str()))
        .collect();
    let configs = admin
        .describe_configs(&specifiers, &TopicAdmin::options())
        .await
        .map_err(AdminError::from_kafka)?;
    metrics.observe_admin_call("describe_configs", started.elapsed());
    for (name, result) in existing.into_iter().zip(configs) {
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
        let Some(description) = described.remove(name) else {
            continue;
        };
        found.insert(
            name.clone(),
            ObservedTopic {
                partitions: description.partitions,
                replication_factor: description.replication_factor,
                topic_id: description.id,
                configs,
            },
        );
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Every list a test batcher's "Kafka" was handed, in order.
    type Requests = Arc<Mutex<Vec<Vec<String>>>>;

    /// A batcher whose "Kafka" records each list it is handed and answers every topic
    /// with its own name, except topics starting with `bad`, which it refuses.
    fn recording_batcher(window: Duration, max: usize) -> (Batcher<String, String>, Requests) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let batcher = Batcher::spawn_with(
            String::as_str,
            &Arc::default(),
            window,
            max,
            move |names: Vec<String>| {
                log.lock().unwrap().push(names.clone());
                async move {
                    Ok(names
                        .into_iter()
                        .map(|name| {
                            let answer = if name.starts_with("bad") {
                                Err(AdminError::Refused {
                                    code: RDKafkaErrorCode::InvalidConfig,
                                    message: None,
                                })
                            } else {
                                Ok(format!("answer for {name}"))
                            };
                            (name, answer)
                        })
                        .collect())
                }
            },
        );
        (batcher, seen)
    }

    #[tokio::test]
    async fn concurrent_calls_share_one_request_and_each_gets_its_own_answer() {
        let (batcher, seen) = recording_batcher(Duration::from_millis(50), 100);
        let calls = ["a", "bad-b", "c"].map(|name| {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.call(name.to_owned()).await })
        });
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.unwrap());
        }
        assert_eq!(answers[0].as_deref().unwrap(), "answer for a");
        assert!(matches!(
            answers[1],
            Err(AdminError::Refused {
                code: RDKafkaErrorCode::InvalidConfig,
                ..
            })
        ));
        assert_eq!(answers[2].as_deref().unwrap(), "answer for c");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "one request: {seen:?}");
        let mut names = seen[0].clone();
        names.sort();
        assert_eq!(names, ["a", "bad-b", "c"]);
    }

    #[tokio::test]
    async fn calls_after_the_window_go_into_the_next_request() {
        let (batcher, seen) = recording_batcher(Duration::from_millis(10), 100);
        batcher.call("first".into()).await.unwrap();
        batcher.call("second".into()).await.unwrap();
        assert_eq!(*seen.lock().unwrap(), [vec!["first"], vec!["second"]]);
    }

    #[tokio::test]
    async fn a_request_carries_at_most_the_largest_batch() {
        let (batcher, seen) = recording_batcher(Duration::from_millis(50), 2);
        let calls: Vec<_> = (0..5)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { batcher.call(format!("t{i}")).await })
            })
            .collect();
        for call in calls {
            call.await.unwrap().unwrap();
        }
        let seen = seen.lock().unwrap();
        assert!(seen.iter().all(|batch| batch.len() <= 2), "{seen:?}");
        assert_eq!(seen.iter().map(Vec::len).sum::<usize>(), 5);
    }

    #[test]
    fn a_topic_is_named_once_per_request_and_repeats_keep_their_order() {
        let batch = vec![("a", 1), ("b", 1), ("a", 2), ("c", 1), ("a", 3), ("b", 2)];
        let rounds = distinct_rounds(batch, |(name, _)| name);
        assert_eq!(
            rounds,
            [
                vec![("a", 1), ("b", 1), ("c", 1)],
                vec![("a", 2), ("b", 2)],
                vec![("a", 3)],
            ]
        );
    }

    #[tokio::test]
    async fn a_failed_request_fails_every_call_in_it_and_a_missing_answer_is_an_error() {
        let failing: Batcher<String, ()> = Batcher::spawn(
            String::as_str,
            &Arc::default(),
            |_names: Vec<String>| async { Err(AdminError::Unavailable("all brokers down".into())) },
        );
        let (one, two) = tokio::join!(failing.call("x".into()), failing.call("y".into()));
        for answer in [one, two] {
            assert!(
                matches!(&answer, Err(AdminError::Unavailable(m)) if m == "all brokers down"),
                "{answer:?}"
            );
        }

        let forgetful: Batcher<String, ()> = Batcher::spawn(
            String::as_str,
            &Arc::default(),
            |_names: Vec<String>| async { Ok(HashMap::new()) },
        );
        let answer = forgetful.call("x".into()).await;
        assert!(
            matches!(&answer, Err(AdminError::Unavailable(m)) if m.contains("topic x")),
            "{answer:?}"
        );
    }

    #[tokio::test]
    async fn kafka_unavailable_is_one_backoff_for_every_caller_and_an_answer_resets_it() {
        let availability = Arc::new(Availability::default());
        let kafka_down = Arc::new(AtomicBool::new(true));
        let down = kafka_down.clone();
        let batcher: Batcher<String, ()> =
            Batcher::spawn(String::as_str, &availability, move |names: Vec<String>| {
                let down = down.load(Ordering::Relaxed);
                async move {
                    if down {
                        return Err(AdminError::Unavailable("Local: Timed out".into()));
                    }
                    Ok(names.into_iter().map(|name| (name, Ok(()))).collect())
                }
            });
        let within = |delay: Duration, secs: f64| {
            let secs = Duration::from_secs_f64(secs);
            delay >= secs.mul_f64(0.9) && delay <= secs.mul_f64(1.1)
        };

        // A hundred passes failing in one request are one failure of Kafka, not a hundred.
        let answers =
            futures::future::join_all((0..100).map(|i| batcher.call(format!("t{i}")))).await;
        assert!(answers.iter().all(Result::is_err));
        let delay = availability.retry_delay();
        assert!(within(delay, 1.0), "{delay:?}");

        for _ in 0..3 {
            batcher.call("t".into()).await.unwrap_err();
        }
        let delay = availability.retry_delay();
        assert!(
            within(delay, 8.0),
            "four requests failed in a row: {delay:?}"
        );

        kafka_down.store(false, Ordering::Relaxed);
        batcher.call("t".into()).await.unwrap();
        let delay = availability.retry_delay();
        assert!(within(delay, 1.0), "after an answer: {delay:?}");
    }

    #[test]
    fn per_topic_results_are_routed_by_name() {
        let results = by_topic(vec![
            Ok("a".to_owned()),
            Err(("b".to_owned(), RDKafkaErrorCode::TopicAlreadyExists)),
        ]);
        assert!(results["a"].is_ok());
        assert!(matches!(
            results["b"],
            Err(AdminError::Refused {
                code: RDKafkaErrorCode::TopicAlreadyExists,
                ..
            })
        ));
    }
}
