//! The EventConsumer controller: each EventConsumer becomes a ConfigMap and a Deployment of
//! `event-consumer`, scaled on the group's lag, replayed on request, and its status shows lag.
//!
//! Pipeline per pass: pause → resolve the EventTopics → read the workloads' Kafka Secret
//! (when the operator names one) → read the group from Kafka → replay
//! step (if asked) → decide replicas → apply ConfigMap and Deployment → prune → status.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bridge_api::event_consumer::{LastReplay, StartFrom};
use bridge_api::{EventConsumer, EventConsumerStatus, EventTopic, condition_type, is_paused};
use event_consumer::ReplayError;
use futures::StreamExt;
use futures::future::join_all;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, watcher};
use kube::{Api, Resource, ResourceExt};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::json;
use tokio::sync::watch;

use crate::conditions::{self, Decided};
use crate::consumer_plan::{self, COMPONENT, ResolvedTopics, ScaleInput};
use crate::workload::{
    self, Backoff, FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL, WorkloadContext,
};

const KIND: &str = "EventConsumer";
/// How often a replay in progress looks again whether the consumers have stopped.
const REPLAY_POLL: Duration = Duration::from_secs(2);
/// How long one Kafka request may take before Kafka counts as unavailable.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
}

impl Error {
    /// A stable word for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubernetesApi",
        }
    }
}

pub struct Context {
    pub workload: Arc<WorkloadContext>,
    backoff: Backoff,
    /// When this process last changed each object's replica count, for the scale-down
    /// cooldown. Lost on restart, which only delays the next scale-down.
    last_scale: Mutex<HashMap<String, Instant>>,
    /// The last status written per object, and the resourceVersions of this process's own
    /// recent writes (each one's base and result). A pass that starts (on a Deployment
    /// event) before the watch has delivered those writes sees one of these versions; it
    /// must not write the same status again.
    last_written: Mutex<HashMap<String, (HashSet<String>, EventConsumerStatus)>>,
}

impl Context {
    pub fn new(workload: Arc<WorkloadContext>) -> Self {
        Self {
            workload,
            backoff: Backoff::default(),
            last_scale: Mutex::default(),
            last_written: Mutex::default(),
        }
    }

    fn already_written(
        &self,
        key: &str,
        version: Option<&str>,
        status: &EventConsumerStatus,
    ) -> bool {
        let Some(version) = version else {
            return false;
        };
        self.last_written
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .is_some_and(|(ours, written)| written == status && ours.contains(version))
    }

    fn written(&self, key: &str, versions: [Option<String>; 2], status: EventConsumerStatus) {
        let mut last_written = self.last_written.lock().unwrap_or_else(|e| e.into_inner());
        let (ours, written) = last_written.entry(key.to_owned()).or_default();
        if ours.len() > 16 {
            ours.clear();
        }
        ours.extend(versions.into_iter().flatten());
        *written = status;
    }

    fn since_last_scale(&self, key: &str) -> Option<Duration> {
        self.last_scale
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .map(Instant::elapsed)
    }

    fn scaled_now(&self, key: &str) {
        self.last_scale
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), Instant::now());
    }

    fn resync(&self) -> Action {
        Action::requeue(workload::jittered(self.workload.resync))
    }

    async fn event(&self, consumer: &EventConsumer, type_: EventType, reason: &str, note: String) {
        self.event_of(consumer, type_, reason, "Reconcile".into(), note)
            .await;
    }

    /// An Event with its own `action`, one that names the outcome (`ScaleTo4`), so that
    /// Events of one reason tell their outcomes apart in `kubectl get events`.
    async fn event_of(
        &self,
        consumer: &EventConsumer,
        type_: EventType,
        reason: &str,
        action: String,
        note: String,
    ) {
        tracing::info!(object = %object_key(consumer), reason, "{note}");
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action,
            secondary: None,
        };
        if let Err(error) = self
            .workload
            .events
            .publish(&event, &consumer.object_ref(&()))
            .await
        {
            tracing::warn!(%error, "publishing a Kubernetes Event failed");
        }
    }
}

/// Runs the controller over `namespaces` (all when empty) until `stop` turns true.
pub async fn run(ctx: Arc<WorkloadContext>, namespaces: Vec<String>, stop: watch::Receiver<bool>) {
    let client = ctx.client.clone();
    let context = Arc::new(Context::new(ctx));
    let owned = watcher::Config::default()
        .labels(&format!(
            "{NAME_LABEL}={COMPONENT},{MANAGED_BY_LABEL}={MANAGED_BY}"
        ))
        .any_semantic();
    let consumers = workload::apis::<EventConsumer>(&client, &namespaces);
    let deployments = workload::apis::<Deployment>(&client, &namespaces);
    let config_maps = workload::apis::<ConfigMap>(&client, &namespaces);
    let topics = workload::apis::<EventTopic>(&client, &namespaces);
    let runs = consumers
        .into_iter()
        .zip(deployments)
        .zip(config_maps)
        .zip(topics)
        .map(|(((consumers, deployments), config_maps), topics)| {
            let controller = Controller::new(consumers, watcher::Config::default().any_semantic());
            let store = controller.store();
            controller
                .owns(deployments, owned.clone())
                .owns(config_maps, owned.clone())
                // An EventTopic appearing or turning Ready brings its consumers back at once.
                .watches(
                    topics,
                    watcher::Config::default().any_semantic(),
                    move |topic: EventTopic| {
                        let namespace = topic.namespace();
                        let name = topic.name_any();
                        store
                            .state()
                            .into_iter()
                            .filter(|c| c.namespace() == namespace && references(c, &name))
                            .map(|c| ObjectRef::from_obj(&*c))
                            .collect::<Vec<_>>()
                    },
                )
                .graceful_shutdown_on(workload::until_stopped(stop.clone()))
                .run(reconcile, error_policy, context.clone())
                .for_each(|result| async move {
                    match result {
                        Ok((object, _)) => tracing::debug!(object = %object.name, "reconciled"),
                        Err(error) => tracing::debug!(%error, "reconcile error"),
                    }
                })
        });
    join_all(runs).await;
}

/// Whether `consumer` reads from or dead-letters to the EventTopic `topic`.
fn references(consumer: &EventConsumer, topic: &str) -> bool {
    consumer.spec.topics.iter().any(|t| t == topic)
        || consumer.spec.delivery.dead_letter_topic.as_deref() == Some(topic)
}

fn object_key(consumer: &EventConsumer) -> String {
    format!(
        "{}/{}",
        workload::namespace_of(consumer),
        consumer.name_any()
    )
}

pub fn error_policy(consumer: Arc<EventConsumer>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(object = %object_key(&consumer), %error, "reconcile failed");
    ctx.workload.metrics.failure(KIND, error.reason());
    Action::requeue(ctx.backoff.failed(&object_key(&consumer)))
}

/// What one pass decided about the object's status.
struct Report {
    status: EventConsumerStatus,
    now: Time,
    generation: Option<i64>,
}

impl Report {
    fn new(consumer: &EventConsumer) -> Self {
        Self {
            status: consumer.status.clone().unwrap_or_default(),
            now: Time(Timestamp::now()),
            generation: consumer.metadata.generation,
        }
    }

    fn set(&mut self, decided: Decided) {
        conditions::upsert(
            &mut self.status.conditions,
            decided,
            self.generation,
            &self.now,
        );
    }

    fn ready(&mut self, status: bool, reason: &'static str, message: impl Into<String>) {
        self.set(Decided::new(condition_type::READY, status, reason, message));
    }

    /// Whether `decided` says something else than the Ready condition the object has.
    fn ready_news(&self, decided: &Decided) -> bool {
        bridge_api::find_condition(&self.status.conditions, condition_type::READY)
            .is_none_or(|c| c.reason != decided.reason || c.message != decided.message)
    }

    fn clear(&mut self, type_: &str) {
        conditions::remove(&mut self.status.conditions, type_);
    }

    fn observed_deployment(&mut self, replicas: i32, deployment: Option<&Deployment>) {
        self.status.replicas = Some(replicas);
        self.status.ready_replicas = Some(
            deployment
                .and_then(|d| d.status.as_ref())
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
        );
    }

    fn observed_kafka(&mut self, view: &KafkaView) {
        self.status.lag = Some(view.lag);
        self.status.dead_lettered = view.dead_lettered;
    }

    /// Writes the status only when it differs from what the object already has.
    async fn write(
        &mut self,
        consumer: &EventConsumer,
        api: &Api<EventConsumer>,
        ctx: &Context,
    ) -> Result<(), Error> {
        self.status.observed_generation = self.generation;
        if consumer.status.as_ref() == Some(&self.status) {
            return Ok(());
        }
        let key = object_key(consumer);
        let version = consumer.resource_version();
        if ctx.already_written(&key, version.as_deref(), &self.status) {
            return Ok(());
        }
        let patch = json!({
            "apiVersion": "bridge.omninode.io/v1alpha1",
            "kind": KIND,
            "status": self.status,
        });
        let updated = api
            .patch_status(
                &consumer.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await?;
        ctx.workload
            .metrics
            .status_patches
            .get_or_create(&crate::metrics::KindLabel { kind: KIND })
            .inc();
        ctx.written(
            &key,
            [version, updated.resource_version()],
            self.status.clone(),
        );
        Ok(())
    }
}

pub async fn reconcile(consumer: Arc<EventConsumer>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.workload.metrics.reconcile_timer(KIND);
    reconcile_consumer(&consumer, &ctx).await
}

async fn reconcile_consumer(consumer: &EventConsumer, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.workload.client;
    let namespace = workload::namespace_of(consumer);
    let name = consumer.name_any();
    let key = object_key(consumer);
    let api: Api<EventConsumer> = Api::namespaced(client.clone(), &namespace);
    let mut report = Report::new(consumer);

    if is_paused(&consumer.metadata) {
        report.set(Decided::new(
            condition_type::PAUSED,
            true,
            "Paused",
            format!(
                "reconciling is paused by the annotation {}: \"true\"; the Deployment and ConfigMap are left as they are until it is removed",
                bridge_api::PAUSED_ANNOTATION
            ),
        ));
        report.write(consumer, &api, ctx).await?;
        return Ok(Action::await_change());
    }
    report.clear(condition_type::PAUSED);

    // The EventTopics must exist and be Ready: the config names their Kafka topics.
    let mut names: Vec<&str> = consumer.spec.topics.iter().map(String::as_str).collect();
    let dead_letter = consumer.spec.delivery.dead_letter_topic.as_deref();
    names.extend(dead_letter);
    let resolved = match workload::resolve_topics(client, &namespace, &names).await? {
        Ok(mut kafka_names) => {
            let dead_letter_topic = dead_letter.and_then(|_| kafka_names.pop());
            ResolvedTopics {
                topics: kafka_names,
                dead_letter_topic,
            }
        }
        Err(problem) => {
            // The EventTopic watch brings the object back once the topic is there.
            let decided = problem.decided(&namespace);
            return reference_problem(consumer, &api, ctx, report, decided).await;
        }
    };

    // The Secret is not watched (the operator may only `get` Secrets): a resync sees it
    // created or rotated. The running consumers are left as they are meanwhile.
    let kafka_secret =
        match workload::read_kafka_secret(client, &namespace, &ctx.workload.settings).await? {
            Ok(secret) => secret,
            Err(problem) => {
                let decided = Decided::new(
                    condition_type::READY,
                    false,
                    problem.reason(),
                    problem.message(&namespace, "consumer"),
                );
                return reference_problem(consumer, &api, ctx, report, decided).await;
            }
        };

    let group = consumer.group_id();
    let kafka = ctx.workload.kafka.clone();
    let view = observe_kafka(
        kafka.clone(),
        group.clone(),
        resolved.topics.clone(),
        resolved.dead_letter_topic.clone(),
        consumer.spec.start_from,
    )
    .await;
    if let Ok(view) = &view {
        report.observed_kafka(view);
    }

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let object_name = consumer_plan::object_name(&name);
    let existing = deployments.get_opt(&object_name).await?;
    let current = existing
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas);

    // A replay asked for and not yet done: stop the consumers, move the group, go on.
    let mut current_after_replay = current;
    if let Some(replay) = pending_replay(consumer) {
        let from = replay.from.clone();
        let deployment = apply_workload(consumer, &resolved, kafka_secret.as_ref(), ctx, 0).await?;
        if current != Some(0) {
            ctx.scaled_now(&key);
        }
        report.observed_deployment(0, Some(&deployment));
        let view = match &view {
            Ok(view) => view,
            Err(error) => {
                return kafka_unavailable(consumer, &api, ctx, report, error).await;
            }
        };
        let running = running_pods(consumer, ctx).await?;
        if running > 0 || view.members > 0 {
            let decided = Decided::new(
                condition_type::READY,
                false,
                "Replaying",
                format!(
                    "replaying group {group} from {}: step 1 of 3, stopping the consumers ({running} pod(s) running, {} group member(s)); consumption is stopped until the replay is done",
                    from.0, view.members
                ),
            );
            if !replaying(&report) {
                ctx.event(
                    consumer,
                    EventType::Normal,
                    "ReplayStarted",
                    format!(
                        "replaying group {group} from {}: scaled to 0 replicas to stop the consumers",
                        from.0
                    ),
                )
                .await;
            }
            report.set(decided);
            report.write(consumer, &api, ctx).await?;
            ctx.backoff.succeeded(&key);
            return Ok(Action::requeue(REPLAY_POLL));
        }
        let moved = event_consumer::replay_group_to_time_async(
            kafka.clone(),
            group.clone(),
            resolved.topics.clone(),
            SystemTime::from(from.0),
            KAFKA_TIMEOUT,
        )
        .await;
        match moved {
            Ok(partitions) => {
                report.status.last_replay = Some(LastReplay {
                    from: from.clone(),
                    completed_at: Time(Timestamp::now()),
                });
                // Recorded before scaling back: were it lost after the consumers ran again,
                // the next pass would move their progress back a second time.
                report.write(consumer, &api, ctx).await?;
                ctx.event(
                    consumer,
                    EventType::Normal,
                    "ReplayCompleted",
                    format!(
                        "moved the offsets of group {group} on {} partition(s) to {}; scaling back",
                        partitions.len(),
                        from.0
                    ),
                )
                .await;
                current_after_replay = Some(0);
            }
            Err(ReplayError::GroupActive { .. }) => {
                // A member joined between the check and the commit: look again shortly.
                return Ok(Action::requeue(REPLAY_POLL));
            }
            Err(ReplayError::Kafka { source, .. }) => {
                return kafka_unavailable(consumer, &api, ctx, report, &source).await;
            }
            Err(error) => {
                let message = format!(
                    "replay of group {group} to {} failed: {error}; fix spec.replay or the topics, the consumers stay stopped until then",
                    from.0
                );
                ctx.event(
                    consumer,
                    EventType::Warning,
                    "ReplayFailed",
                    message.clone(),
                )
                .await;
                ctx.workload.metrics.failure(KIND, "ReplayFailed");
                report.ready(false, "ReplayFailed", message);
                report.write(consumer, &api, ctx).await?;
                return Ok(Action::requeue(ctx.backoff.failed(&key)));
            }
        }
    }

    // How many replicas: the spec's count, or what lag calls for.
    let mut requeue = ctx.workload.resync;
    let replicas = match (consumer.spec.fixed_replicas(), &consumer.spec.autoscaling) {
        (Some(fixed), _) => fixed,
        (None, Some(policy)) => match &view {
            Ok(view) => {
                let input = ScaleInput {
                    lag: view.lag,
                    partitions: view.partitions,
                    current: current_after_replay,
                    since_last_scale: ctx.since_last_scale(&key),
                };
                let replicas = consumer_plan::autoscale(policy, input);
                let unhindered = consumer_plan::autoscale(
                    policy,
                    ScaleInput {
                        since_last_scale: None,
                        ..input
                    },
                );
                if unhindered < replicas {
                    // A scale-down waits for the cooldown: look again when it has passed.
                    let waited = input.since_last_scale.unwrap_or_default();
                    let left = consumer_plan::SCALE_DOWN_COOLDOWN.saturating_sub(waited);
                    requeue = requeue.min(left + Duration::from_secs(1));
                }
                replicas
            }
            // Without a lag reading, keep what runs.
            Err(_) => current_after_replay.unwrap_or(policy.min_replicas.max(1)),
        },
        (None, None) => 1,
    };

    let deployment =
        apply_workload(consumer, &resolved, kafka_secret.as_ref(), ctx, replicas).await?;
    if let Some(before) = current_after_replay.filter(|before| *before != replicas) {
        ctx.scaled_now(&key);
        let why = match (&consumer.spec.autoscaling, &view) {
            (Some(policy), Ok(view)) => format!(
                ": lag {} with lagThreshold {} over {} partition(s)",
                view.lag, policy.lag_threshold, view.partitions
            ),
            _ => String::new(),
        };
        ctx.event_of(
            consumer,
            EventType::Normal,
            "Scaled",
            format!("ScaleTo{replicas}"),
            format!("scaled Deployment {object_name} from {before} to {replicas} replicas{why}"),
        )
        .await;
    }
    report.observed_deployment(replicas, Some(&deployment));

    if let Err(error) = view {
        return kafka_unavailable(consumer, &api, ctx, report, &error).await;
    }
    let (_, decided) = workload::rollout_progress(Some((&deployment).into()), "event-consumer");
    report.set(decided);
    report.write(consumer, &api, ctx).await?;
    // Only a pass that got through resets the backoff: Kafka failures and a refused replay
    // return earlier and keep doubling it.
    ctx.backoff.succeeded(&key);
    Ok(Action::requeue(workload::jittered(requeue)))
}

/// `spec.replay` when it asks for a time not yet recorded in `status.lastReplay`. Compared
/// to the second: status times are written with second precision.
fn pending_replay(consumer: &EventConsumer) -> Option<&bridge_api::event_consumer::Replay> {
    let replay = consumer.spec.replay.as_ref()?;
    let done = consumer
        .status
        .as_ref()
        .and_then(|s| s.last_replay.as_ref())
        .is_some_and(|last| last.from.0.as_second() == replay.from.0.as_second());
    (!done).then_some(replay)
}

fn replaying(report: &Report) -> bool {
    bridge_api::find_condition(&report.status.conditions, condition_type::READY)
        .is_some_and(|c| c.reason == "Replaying")
}

/// A reference that cannot be used yet (an EventTopic, the Kafka Secret): Ready=False as
/// `decided` says, an Event when that is news, and a look again after a resync; nothing
/// is applied, so a running Deployment is left as it is.
async fn reference_problem(
    consumer: &EventConsumer,
    api: &Api<EventConsumer>,
    ctx: &Context,
    mut report: Report,
    decided: Decided,
) -> Result<Action, Error> {
    if report.ready_news(&decided) {
        ctx.event(
            consumer,
            EventType::Warning,
            decided.reason,
            decided.message.clone(),
        )
        .await;
    }
    ctx.workload.metrics.failure(KIND, decided.reason);
    report.set(decided);
    report.write(consumer, api, ctx).await?;
    ctx.backoff.succeeded(&object_key(consumer));
    Ok(ctx.resync())
}

/// Ready=False KafkaUnavailable, the last lag kept, and a backed-off retry.
async fn kafka_unavailable(
    consumer: &EventConsumer,
    api: &Api<EventConsumer>,
    ctx: &Context,
    mut report: Report,
    error: &KafkaError,
) -> Result<Action, Error> {
    ctx.workload.metrics.failure(KIND, "KafkaUnavailable");
    report.ready(
        false,
        "KafkaUnavailable",
        format!(
            "cannot read consumer group {} from Kafka ({error}); status.lag is the last measured, retrying with backoff",
            consumer.group_id()
        ),
    );
    report.write(consumer, api, ctx).await?;
    Ok(Action::requeue(ctx.backoff.failed(&object_key(consumer))))
}

/// Applies the ConfigMap and the Deployment with `replicas`, and deletes what the object
/// owned under other names.
async fn apply_workload(
    consumer: &EventConsumer,
    resolved: &ResolvedTopics,
    kafka_secret: Option<&workload::SecretKey>,
    ctx: &Context,
    replicas: i32,
) -> Result<Deployment, Error> {
    let settings = &ctx.workload.settings;
    let client = &ctx.workload.client;
    let namespace = workload::namespace_of(consumer);
    let config = consumer_plan::consumer_config(consumer, resolved, settings);
    let rendered = consumer_plan::render_config(&config);
    let checksum = consumer_plan::config_checksum(&rendered, kafka_secret);
    let keep = [consumer_plan::object_name(&consumer.name_any())];

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    workload::apply(
        &config_maps,
        &consumer_plan::desired_config_map(consumer, &rendered),
    )
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let deployment = workload::apply(
        &deployments,
        &consumer_plan::desired_deployment(consumer, settings, &checksum, replicas),
    )
    .await?;
    workload::prune(&deployments, consumer, &keep).await?;
    workload::prune(&config_maps, consumer, &keep).await?;
    Ok(deployment)
}

/// Pods of the consumer's Deployment that may still be group members: any not finished.
async fn running_pods(consumer: &EventConsumer, ctx: &Context) -> Result<usize, Error> {
    let pods: Api<Pod> = Api::namespaced(
        ctx.workload.client.clone(),
        &workload::namespace_of(consumer),
    );
    let selector = workload::selector_labels(COMPONENT, &consumer.name_any())
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let listed = pods.list(&ListParams::default().labels(&selector)).await?;
    Ok(listed
        .items
        .iter()
        .filter(|pod| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .count())
}

/// What the operator reads about a consumer group from Kafka on each pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaView {
    /// Records not yet consumed, summed over the partitions of the group's topics.
    pub lag: i64,
    /// Partitions of the group's topics.
    pub partitions: i32,
    /// Records in the dead-letter topic (sum of high − low watermarks), when there is one.
    pub dead_lettered: Option<i64>,
    /// Members of the group now.
    pub members: usize,
}

/// Reads lag, partitions, the dead-letter topic's size and the group's members, on a
/// blocking thread. The client has the group's id but never subscribes, so it never joins
/// the group (and never moves its offsets).
pub async fn observe_kafka(
    kafka: ClientConfig,
    group: String,
    topics: Vec<String>,
    dead_letter_topic: Option<String>,
    start_from: StartFrom,
) -> Result<KafkaView, KafkaError> {
    tokio::task::spawn_blocking(move || {
        observe_kafka_blocking(
            &kafka,
            &group,
            &topics,
            dead_letter_topic.as_deref(),
            start_from,
        )
    })
    .await
    .expect("the Kafka observation thread does not panic")
}

fn observe_kafka_blocking(
    kafka: &ClientConfig,
    group: &str,
    topics: &[String],
    dead_letter_topic: Option<&str>,
    start_from: StartFrom,
) -> Result<KafkaView, KafkaError> {
    let mut config = kafka.clone();
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("client.id", "bridge-operator-lag");
    let consumer: BaseConsumer = config.create()?;

    let partitions_of = |topic: &str| -> Result<i32, KafkaError> {
        let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT)?;
        Ok(metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len() as i32)
            .unwrap_or(0))
    };

    let mut assignment = TopicPartitionList::new();
    let mut partitions = 0;
    for topic in topics {
        let count = partitions_of(topic)?;
        partitions += count;
        for partition in 0..count {
            assignment.add_partition(topic, partition);
        }
    }
    let committed = consumer.committed_offsets(assignment, KAFKA_TIMEOUT)?;
    let mut lag = 0i64;
    for element in committed.elements() {
        let (low, high) =
            consumer.fetch_watermarks(element.topic(), element.partition(), KAFKA_TIMEOUT)?;
        lag += match element.offset() {
            Offset::Offset(offset) => (high - offset.max(low)).max(0),
            // No committed offset: the group starts where startFrom says once it runs.
            _ => match start_from {
                StartFrom::Latest => 0,
                StartFrom::Earliest => (high - low).max(0),
            },
        };
    }

    let dead_lettered = match dead_letter_topic {
        Some(topic) => {
            let mut records = 0i64;
            for partition in 0..partitions_of(topic)? {
                let (low, high) = consumer.fetch_watermarks(topic, partition, KAFKA_TIMEOUT)?;
                records += (high - low).max(0);
            }
            Some(records)
        }
        None => None,
    };

    let members = consumer
        .fetch_group_list(Some(group), KAFKA_TIMEOUT)?
        .groups()
        .iter()
        .find(|g| g.name() == group)
        .map(|g| g.members().len())
        .unwrap_or(0);

    Ok(KafkaView {
        lag,
        partitions,
        dead_lettered,
        members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn consumer(spec: serde_json::Value, status: serde_json::Value) -> EventConsumer {
        serde_json::from_value(json!({
            "apiVersion": "bridge.omninode.io/v1alpha1",
            "kind": "EventConsumer",
            "metadata": {"name": "coordinator", "namespace": "team-a"},
            "spec": spec,
            "status": status,
        }))
        .unwrap()
    }

    #[test]
    fn a_replay_is_pending_until_its_time_is_recorded_to_the_second() {
        let spec = json!({
            "topics": ["t"], "sink": {"url": "http://s/"},
            "replay": {"from": "2026-11-27T10:00:00.250Z"}
        });
        assert!(pending_replay(&consumer(spec.clone(), json!({}))).is_some());
        let done = json!({"lastReplay": {"from": "2026-11-27T10:00:00Z", "completedAt": "2026-11-27T10:01:00Z"}});
        assert!(pending_replay(&consumer(spec.clone(), done)).is_none());
        let older = json!({"lastReplay": {"from": "2026-11-26T10:00:00Z", "completedAt": "2026-11-26T10:01:00Z"}});
        assert!(pending_replay(&consumer(spec, older)).is_some());
        let no_replay = json!({"topics": ["t"], "sink": {"url": "http://s/"}});
        assert!(pending_replay(&consumer(no_replay, json!({}))).is_none());
    }

    #[tokio::test]
    async fn unreachable_kafka_is_an_error_to_report_not_a_crash() {
        let mut kafka = ClientConfig::new();
        kafka.set("bootstrap.servers", "127.0.0.1:1");
        let started = Instant::now();
        let view = observe_kafka(
            kafka,
            "team-a.coordinator".into(),
            vec!["orders".into()],
            None,
            StartFrom::Latest,
        )
        .await;
        assert!(view.is_err(), "{view:?}");
        assert!(
            started.elapsed() < KAFKA_TIMEOUT * 2,
            "bounded by the request timeout"
        );
    }

    #[test]
    fn a_consumer_references_its_topics_and_its_dead_letter_topic() {
        let c = consumer(
            json!({"topics": ["a", "b"], "sink": {"url": "http://s/"}, "delivery": {"deadLetterTopic": "dlq"}}),
            json!({}),
        );
        assert!(references(&c, "a") && references(&c, "b") && references(&c, "dlq"));
        assert!(!references(&c, "c"));
    }
}
