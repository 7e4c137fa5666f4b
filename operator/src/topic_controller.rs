//! The EventTopic controller: one Kafka topic per EventTopic, created or adopted, kept in
//! line with the spec on every resync, and deleted only when the object says so.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bridge_api::event_topic::{
    DeletionPolicy, INTERNAL_TOPIC_NAME_MESSAGE, is_internal_topic_name,
};
use bridge_api::{EventTopic, EventTopicStatus, condition_type, is_paused};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{self, Action};
use kube::runtime::finalizer::{Event as FinalizerEvent, finalizer};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{Controller, Predicate, WatchStreamExt, predicates, watcher};
use kube::{Api, Client, ResourceExt};
use rdkafka::error::RDKafkaErrorCode;
use serde_json::json;

use crate::audit::{AuditLog, FieldChange, TopicAction};
use crate::conditions::{self, Decided};
use crate::kafka_admin::{AdminError, TopicAdmin};
use crate::metrics::Metrics;
use crate::topic_plan::{self, DesiredTopic, ObservedTopic};
use crate::workload::{Backoff, FIELD_MANAGER, jittered};

/// Set only under `deletionPolicy: Delete`: the topic is deleted before the object goes.
pub const FINALIZER: &str = "bridge.omninode.io/delete-topic";
const KIND: &str = "EventTopic";
/// How long after creating a topic its description may still lag: brokers learn of a new
/// topic's configs a moment after CreateTopics returns, and a describe in that moment reads
/// as drift. Within it, differences are re-checked shortly instead of "corrected".
const SETTLE: Duration = Duration::from_secs(10);
/// How long after creating a topic a description showing none of its configs is taken for
/// a broker that has not caught up yet rather than for drift. Brokers busy creating
/// thousands of topics were seen answering that way for minutes (the 10,000-topic bench);
/// "corrected", it wrote the configs again and audited changes nobody made.
const CONFIGS_PROPAGATION: Duration = Duration::from_secs(300);
/// The most passes in flight at once. Passes share admin requests (see
/// [`crate::kafka_admin`]), so this also bounds a request's topics. A thousand keep a bulk
/// change of a thousand objects in one wave: drift on 1,000 topics is corrected in one
/// AlterConfigs and one CreatePartitions request, in Kafka 1.0 s after the start; with 250
/// it took 62 and 67 requests and 23.2 s (the passes start staggered, so batches stay
/// small), for 4 MiB less peak RSS. Unbounded, the 10,000-topic bench had passes for every
/// object in flight at once, each with its status patch and Event, and admin requests of
/// up to 2,000 topics, while the brokers fell minutes behind.
const MAX_PASSES_IN_FLIGHT: u16 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("the finalizer of the EventTopic failed: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("deleting the Kafka topic failed: {0}")]
    Delete(#[source] AdminError),
}

impl Error {
    /// A stable word for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubernetesApi",
            Self::Finalizer(_) => "Finalizer",
            Self::Delete(AdminError::Unavailable(_)) => "KafkaUnavailable",
            Self::Delete(_) => "TopicDeletionRefused",
        }
    }
}

pub struct Context {
    pub client: Client,
    pub admin: TopicAdmin,
    pub audit: AuditLog,
    pub metrics: Arc<Metrics>,
    /// Every EventTopic the operator watches, across its namespaces: who claims which topic.
    pub stores: Vec<Store<EventTopic>>,
    pub resync: Duration,
    /// Consecutive Kafka failures per object, for the backoff.
    backoff: Backoff,
    /// Topics this process created, and when, for [`SETTLE`] and [`CONFIGS_PROPAGATION`].
    created: Mutex<HashMap<String, Instant>>,
}

impl Context {
    pub fn new(
        client: Client,
        admin: TopicAdmin,
        audit: AuditLog,
        metrics: Arc<Metrics>,
        stores: Vec<Store<EventTopic>>,
        resync: Duration,
    ) -> Self {
        Self {
            client,
            admin,
            audit,
            metrics,
            stores,
            resync,
            backoff: Backoff::default(),
            created: Mutex::default(),
        }
    }

    /// The object that owns `topic`'s Kafka topic when it is not `topic` itself: the oldest
    /// claimant wins, ties broken by namespace and name.
    fn other_owner(&self, topic: &EventTopic) -> Option<Arc<EventTopic>> {
        let name = topic.topic_name();
        self.stores
            .iter()
            .flat_map(|s| s.state_filter(|t| t.topic_name() == name))
            .min_by_key(|t| {
                (
                    t.metadata.creation_timestamp.clone().map(|t| t.0),
                    t.namespace(),
                    t.name_any(),
                )
            })
            .filter(|owner| owner.uid() != topic.uid())
    }

    fn resync_action(&self) -> Action {
        Action::requeue(jittered(self.resync))
    }

    /// Exponential backoff per object while Kafka refuses its changes or the API server
    /// fails: 1 s doubling to 60 s, jittered. An unavailable Kafka is one backoff for every
    /// object instead ([`TopicAdmin::retry_delay`]).
    fn backoff(&self, key: &str) -> Action {
        Action::requeue(self.backoff.failed(key))
    }

    /// Records a creation about to be requested; returns whether this process had asked for
    /// one already (within [`CONFIGS_PROPAGATION`]), which may have gone through.
    fn created_now(&self, topic: &str) -> bool {
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        created.retain(|_, at| at.elapsed() < CONFIGS_PROPAGATION);
        created.insert(topic.to_owned(), Instant::now()).is_some()
    }

    /// Forgets a creation Kafka refused: whatever has the name was not made by this process.
    fn forget_created(&self, topic: &str) {
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        created.remove(topic);
    }

    /// How long ago this process created `topic`, if it did within [`CONFIGS_PROPAGATION`].
    fn created_ago(&self, topic: &str) -> Option<Duration> {
        self.created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .map(Instant::elapsed)
            .filter(|ago| *ago < CONFIGS_PROPAGATION)
    }

    /// Whether the description of `topic` may lag behind its creation: within [`SETTLE`]
    /// of creating it, or later within [`CONFIGS_PROPAGATION`] while the broker shows none
    /// of the configs it was created with.
    fn settling(&self, topic: &DesiredTopic, observed: &ObservedTopic) -> bool {
        self.created_ago(&topic.name).is_some_and(|ago| {
            ago < SETTLE || (observed.configs.is_empty() && !topic.configs.is_empty())
        })
    }

    fn succeeded(&self, key: &str) {
        self.backoff.succeeded(key);
    }

    /// Whether the existing topic is `topic`'s to change and delete: it created or adopted
    /// it (status; or this process created it moments ago, before a status write landed),
    /// or its spec asks to adopt it.
    fn owns(&self, topic: &EventTopic, observed: &ObservedTopic) -> bool {
        let name = topic.topic_name();
        topic.spec.adopt_existing
            || self.created_ago(name).is_some()
            || topic_plan::created_or_adopted(topic.status.as_ref(), name, observed)
    }
}

/// Keeps the `topics_managed` gauge at the number of distinct Kafka topics the watched
/// EventTopics name. Counted every few seconds, not on every pass: a count walks every
/// object, and at 10,000 objects a count per pass made the passes quadratic.
pub async fn count_managed_topics(ctx: Arc<Context>) {
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        every.tick().await;
        let mut topics = HashSet::new();
        for store in &ctx.stores {
            for topic in store.state() {
                topics.insert(topic.topic_name().to_owned());
            }
        }
        ctx.metrics.topics_managed.set(topics.len() as i64);
    }
}

fn object_key(topic: &EventTopic) -> String {
    format!(
        "{}/{}",
        topic.namespace().unwrap_or_default(),
        topic.name_any()
    )
}

/// The controller of the EventTopics `api` reaches (one namespace, or all). A change starts
/// a pass only when it touches what a pass acts on: the spec (the generation), annotations
/// (pause), finalizers, or deletion. Status-only updates, the operator's own status writes
/// above all, start none: each pass costs a DescribeTopics and a DescribeConfigs, and at a
/// thousand new objects the passes their first status writes started were as many again,
/// each reading all their topics from Kafka while the brokers were busiest creating them.
/// Resyncs and requeues come from the controller's scheduler, unfiltered.
///
/// The cache keeps objects without their `managedFields`, which no pass reads: they are
/// nearly half of an EventTopic's JSON (700 of 1,500 bytes with kubectl's apply and the
/// operator's status), held in memory as trees of JSON maps, for every object watched.
pub fn controller(api: Api<EventTopic>) -> Controller<EventTopic> {
    let (store, writer) = reflector::store();
    let changes = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|topic| topic.managed_fields_mut().clear())
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation
                .combine(predicates::annotations)
                .combine(predicates::finalizers)
                .combine(|topic: &EventTopic| {
                    Some(u64::from(topic.metadata.deletion_timestamp.is_some()))
                }),
            Default::default(),
        );
    Controller::for_stream(changes, store)
        .with_config(controller::Config::default().concurrency(MAX_PASSES_IN_FLIGHT))
}

pub async fn reconcile(topic: Arc<EventTopic>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer(KIND);
    let namespace = topic.namespace().unwrap_or_default();
    let api: Api<EventTopic> = Api::namespaced(ctx.client.clone(), &namespace);
    let has_finalizer = topic.finalizers().iter().any(|f| f == FINALIZER);
    if topic.spec.deletion_policy == DeletionPolicy::Retain && !has_finalizer {
        // Retain sets no finalizer, so deleting the object (or its namespace) never waits on Kafka.
        return apply(&topic, &ctx, &api).await;
    }
    finalizer(&api, FINALIZER, topic, |event| async {
        match event {
            FinalizerEvent::Apply(topic) => apply(&topic, &ctx, &api).await,
            FinalizerEvent::Cleanup(topic) => cleanup(&topic, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

pub fn error_policy(topic: Arc<EventTopic>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(object = %object_key(&topic), %error, "reconcile failed");
    ctx.metrics.failure(KIND, error.reason());
    match error {
        Error::Delete(AdminError::Unavailable(_)) => Action::requeue(ctx.admin.retry_delay()),
        _ => ctx.backoff(&object_key(&topic)),
    }
}

/// What one pass decided about the object's status.
struct Report {
    status: EventTopicStatus,
    /// The status the object has: as read, or as this pass last wrote it.
    written: Option<EventTopicStatus>,
    now: Time,
    generation: Option<i64>,
}

impl Report {
    fn new(topic: &EventTopic) -> Self {
        Self {
            status: topic.status.clone().unwrap_or_default(),
            written: topic.status.clone(),
            now: Time(Timestamp::now()),
            generation: topic.metadata.generation,
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

    fn clear(&mut self, type_: &str) {
        conditions::remove(&mut self.status.conditions, type_);
    }

    fn observed(&mut self, topic: &str, partitions: i32, replication_factor: i32) {
        self.status.topic_name = Some(topic.to_owned());
        self.status.partitions = Some(partitions);
        self.status.replication_factor = Some(replication_factor);
    }

    /// Claims `name` in status before CreateTopics is sent, so that a topic this object
    /// created is known as its own even when the pass ends before its id is written (an
    /// operator restarted, a status write failed).
    fn creating(&mut self, name: &str) {
        self.status.topic_name = Some(name.to_owned());
        self.status.topic_id = None;
    }

    /// Gives back the claim of [`Self::creating`] when Kafka refused the creation: the status
    /// names the topic as before the pass.
    fn not_created(&mut self, topic: &EventTopic) {
        let before = topic.status.as_ref();
        self.status.topic_name = before.and_then(|s| s.topic_name.clone());
        self.status.topic_id = before.and_then(|s| s.topic_id.clone());
    }

    /// Writes the status only when it differs from what the object already has.
    async fn write(
        &mut self,
        topic: &EventTopic,
        api: &Api<EventTopic>,
        ctx: &Context,
    ) -> Result<(), Error> {
        self.status.observed_generation = self.generation;
        if self.written.as_ref() == Some(&self.status) {
            return Ok(());
        }
        let patch = json!({
            "apiVersion": "bridge.omninode.io/v1alpha1",
            "kind": "EventTopic",
            "status": self.status,
        });
        api.patch_status(
            &topic.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
        self.written = Some(self.status.clone());
        ctx.metrics
            .status_patches
            .get_or_create(&crate::metrics::KindLabel { kind: KIND })
            .inc();
        Ok(())
    }
}

async fn apply(topic: &EventTopic, ctx: &Context, api: &Api<EventTopic>) -> Result<Action, Error> {
    let mut report = Report::new(topic);
    if topic.spec.deletion_policy == DeletionPolicy::Retain
        && topic.finalizers().iter().any(|f| f == FINALIZER)
    {
        remove_finalizer(topic, api).await?;
    }

    if is_paused(&topic.metadata) {
        report.set(Decided::new(
            condition_type::PAUSED,
            true,
            "Paused",
            format!(
                "reconciling is paused by the annotation {}: \"true\"; the Kafka topic is left as it is until it is removed",
                bridge_api::PAUSED_ANNOTATION
            ),
        ));
        report.write(topic, api, ctx).await?;
        return Ok(Action::await_change());
    }
    report.clear(condition_type::PAUSED);

    let topic_name = topic.topic_name().to_owned();
    if let Some(owner) = ctx.other_owner(topic) {
        let message = format!(
            "Kafka topic {topic_name} is managed by EventTopic {}/{}, which claimed it first; \
             set another spec.topicName, or delete that EventTopic",
            owner.namespace().unwrap_or_default(),
            owner.name_any()
        );
        report.set(Decided::new(
            condition_type::CONFLICT,
            true,
            "TopicClaimed",
            message.clone(),
        ));
        report.ready(false, "Conflict", message);
        report.write(topic, api, ctx).await?;
        // The owner may go away; a later resync takes the topic over then.
        return Ok(ctx.resync_action());
    }
    report.clear(condition_type::CONFLICT);

    let desired = match desired_topic(topic) {
        Ok(desired) => desired,
        Err(message) => {
            report.ready(false, "InvalidSpec", message);
            report.write(topic, api, ctx).await?;
            return Ok(Action::await_change());
        }
    };

    let key = object_key(topic);
    let outcome = match ctx.admin.describe(&topic_name).await {
        Ok(None) => {
            report.creating(&desired.name);
            report.write(topic, api, ctx).await?;
            create(topic, &desired, ctx, &mut report).await
        }
        Ok(Some(observed)) if !ctx.owns(topic, &observed) => {
            Ok(not_adopted(&desired, ctx, &mut report))
        }
        Ok(Some(observed)) => converge(topic, &desired, &observed, ctx, &mut report).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(action) => {
            ctx.succeeded(&key);
            report.write(topic, api, ctx).await?;
            Ok(action)
        }
        Err(AdminError::Unavailable(error)) => {
            ctx.metrics.failure(KIND, "KafkaUnavailable");
            report.ready(
                false,
                "KafkaUnavailable",
                format!("cannot reach Kafka ({error}); retrying with backoff"),
            );
            report.write(topic, api, ctx).await?;
            Ok(Action::requeue(ctx.admin.retry_delay()))
        }
        Err(AdminError::Refused { code, .. }) => {
            let (reason, message, action) = refusal(code, &desired, ctx, &key);
            tracing::warn!(object = %key, topic = %desired.name, ?code, "Kafka refused a change");
            ctx.metrics.failure(KIND, reason);
            report.ready(false, reason, message);
            report.write(topic, api, ctx).await?;
            Ok(action)
        }
    }
}

/// The topic the spec asks for, or why none can be asked for (the Ready message).
fn desired_topic(topic: &EventTopic) -> Result<DesiredTopic, String> {
    let name = topic.topic_name();
    // The schema refuses these names; objects made before that rule still come here.
    if is_internal_topic_name(name) {
        return Err(format!(
            "spec.{INTERNAL_TOPIC_NAME_MESSAGE}; nothing is written to Kafka for {name}: delete this EventTopic (topicName cannot change)"
        ));
    }
    topic_plan::desired_topic(topic).map_err(|error| format!("spec.retention: {error}"))
}

/// Leaves a topic that exists and is not the object's alone and says how to adopt it. Looked
/// at again on resync: the topic may go, and then it is created.
fn not_adopted(desired: &DesiredTopic, ctx: &Context, report: &mut Report) -> Action {
    report.ready(
        false,
        "TopicExists",
        format!(
            "Kafka topic {} exists and was not created by this EventTopic; nothing in Kafka was changed. \
             To manage it, set spec.adoptExisting: true: the operator then sets its retention, cleanup policy and spec.config, \
             adds partitions, and under deletionPolicy Delete deletes it with this object",
            desired.name
        ),
    );
    ctx.resync_action()
}

/// What to tell the user when Kafka refuses a request, and whether to retry.
fn refusal(
    code: RDKafkaErrorCode,
    desired: &DesiredTopic,
    ctx: &Context,
    key: &str,
) -> (&'static str, String, Action) {
    match code {
        RDKafkaErrorCode::InvalidConfig => (
            "InvalidConfig",
            format!(
                "Kafka refused the configs of topic {} ({code}): check each key of spec.config is a Kafka topic config and its value is valid",
                desired.name
            ),
            Action::await_change(),
        ),
        RDKafkaErrorCode::PolicyViolation => (
            "PolicyViolation",
            format!(
                "Kafka's create-topic policy refused topic {} ({code}); change the spec to satisfy it",
                desired.name
            ),
            Action::await_change(),
        ),
        RDKafkaErrorCode::InvalidReplicationFactor => (
            "InvalidReplicationFactor",
            format!(
                "Kafka cannot place {} replicas of topic {}: fewer brokers are available; lower spec.replicationFactor or bring brokers back",
                desired.replication_factor, desired.name
            ),
            ctx.backoff(key),
        ),
        RDKafkaErrorCode::TopicAuthorizationFailed
        | RDKafkaErrorCode::ClusterAuthorizationFailed => (
            "NotAuthorized",
            format!(
                "the operator's Kafka principal may not manage topic {} ({code}): grant it the topic ACLs",
                desired.name
            ),
            ctx.backoff(key),
        ),
        code => (
            "KafkaRefused",
            format!(
                "Kafka refused a change to topic {} ({code}); retrying with backoff",
                desired.name
            ),
            ctx.backoff(key),
        ),
    }
}

async fn create(
    topic: &EventTopic,
    desired: &DesiredTopic,
    ctx: &Context,
    report: &mut Report,
) -> Result<Action, AdminError> {
    // Recorded before the request: a CreateTopics that timed out may still have created
    // the topic, and its configs lag like those of any new topic.
    let asked_before = ctx.created_now(&desired.name);
    match ctx.admin.create(desired).await {
        Ok(()) => {}
        // Nothing was created by this request. Unless an earlier one of ours may have gone
        // through, whatever has the name is not this object's.
        Err(error @ AdminError::Refused { .. }) => {
            if !asked_before {
                ctx.forget_created(&desired.name);
                report.not_created(topic);
            }
            if !matches!(
                error,
                AdminError::Refused {
                    code: RDKafkaErrorCode::TopicAlreadyExists,
                    ..
                }
            ) {
                return Err(error);
            }
            // The description a moment ago did not show it: a broker behind the controller,
            // or a creation of ours that timed out and went through after all. The next pass
            // decides from a fresh description whose it is.
            tracing::debug!(topic = %desired.name, "already exists; describing it again");
            return Ok(Action::requeue(Duration::from_secs(2)));
        }
        Err(error) => return Err(error),
    }
    // A new topic has a new id (a re-created one too): the old one goes. The broker may
    // not know the new id this instant; then a pass once the topic has settled fills it in.
    report.status.topic_id = ctx.admin.topic_id(&desired.name).await;
    let next = if report.status.topic_id.is_some() {
        ctx.resync_action()
    } else {
        Action::requeue(SETTLE.min(ctx.resync))
    };
    // A status that already names a topic means the operator had it once: someone deleted it.
    let action = if report.status.partitions.is_some() {
        TopicAction::Recreated
    } else {
        TopicAction::Created
    };
    let changes: Vec<FieldChange> = std::iter::once(FieldChange {
        field: "partitions".into(),
        old: None,
        new: Some(desired.partitions.to_string()),
    })
    .chain(desired.configs.iter().map(|(k, v)| FieldChange {
        field: format!("config.{k}"),
        old: None,
        new: Some(v.clone()),
    }))
    .collect();
    ctx.audit
        .record(topic, action, &changes, ctx.admin.audit_topic_exists())
        .await;
    report.observed(
        &desired.name,
        desired.partitions,
        desired.replication_factor,
    );
    report.ready(
        true,
        "TopicReady",
        in_line_message(desired, desired.partitions, desired.replication_factor),
    );
    Ok(next)
}

async fn converge(
    topic: &EventTopic,
    desired: &DesiredTopic,
    observed: &ObservedTopic,
    ctx: &Context,
    report: &mut Report,
) -> Result<Action, AdminError> {
    let plan = topic_plan::plan(desired, observed);
    if plan.writes() && ctx.settling(desired, observed) {
        return Ok(Action::requeue(Duration::from_secs(2)));
    }
    let publish = ctx.admin.audit_topic_exists();
    // Both writes are sent at once, before any Event or audit record is written: reconciles
    // that start together then reach Kafka together and share one AlterConfigs and one
    // CreatePartitions request, instead of being spread out by the Event writes between.
    let write_configs = async {
        if plan.config_changes.is_empty() {
            return Ok(false);
        }
        let configs = topic_plan::configs_after(&observed.configs, &desired.configs);
        ctx.admin.set_configs(&desired.name, &configs).await?;
        Ok::<_, AdminError>(true)
    };
    let grow_partitions = async {
        match plan.grow_partitions {
            Some((_, to)) => ctx
                .admin
                .grow_partitions(&desired.name, to)
                .await
                .map(|()| true),
            None => Ok(false),
        }
    };
    let (configs_written, partitions_grown) = tokio::join!(write_configs, grow_partitions);
    // What was carried out is recorded even when the other write failed.
    if matches!(configs_written, Ok(true)) {
        let changes: Vec<FieldChange> = plan
            .config_changes
            .iter()
            .map(|c| FieldChange {
                field: format!("config.{}", c.key),
                old: c.old.clone(),
                new: Some(c.new.clone()),
            })
            .collect();
        ctx.audit
            .record(topic, TopicAction::ConfigChanged, &changes, publish)
            .await;
    }
    let mut partitions = observed.partitions;
    if let (Ok(true), Some((from, to))) = (&partitions_grown, plan.grow_partitions) {
        partitions = to;
        let change = FieldChange {
            field: "partitions".into(),
            old: Some(from.to_string()),
            new: Some(to.to_string()),
        };
        ctx.audit
            .record(topic, TopicAction::PartitionsIncreased, &[change], publish)
            .await;
    }
    configs_written?;
    partitions_grown?;
    report.observed(&desired.name, partitions, observed.replication_factor);
    // Without an id this pass (DescribeTopics failed), the one in status stays.
    if observed.topic_id.is_some() {
        report.status.topic_id.clone_from(&observed.topic_id);
    }
    match plan.unreconcilable.first() {
        Some(gap) => {
            report.ready(false, gap.reason(), gap.message(&desired.name));
            // Nothing the operator can do until the spec (or the topic) changes; resync
            // still looks, in case someone reassigns the partitions by hand.
            Ok(ctx.resync_action())
        }
        None => {
            report.ready(
                true,
                "TopicReady",
                in_line_message(desired, partitions, observed.replication_factor),
            );
            Ok(ctx.resync_action())
        }
    }
}

/// The Ready message of a topic in line with its spec: the same words whether it was just
/// created or found so, so the first resync after a create writes no status.
fn in_line_message(desired: &DesiredTopic, partitions: i32, replication_factor: i32) -> String {
    format!(
        "Kafka topic {} has {partitions} partitions, replication factor {replication_factor}, and the configs of the spec",
        desired.name
    )
}

async fn cleanup(topic: &EventTopic, ctx: &Context) -> Result<Action, Error> {
    let topic_name = topic.topic_name();
    if topic.spec.deletion_policy == DeletionPolicy::Retain || is_internal_topic_name(topic_name) {
        return Ok(Action::await_change());
    }
    if let Some(owner) = ctx.other_owner(topic) {
        tracing::info!(
            object = %object_key(topic),
            owner = %object_key(&owner),
            "Kafka topic {topic_name} belongs to another EventTopic; not deleting it"
        );
        return Ok(Action::await_change());
    }
    if is_paused(&topic.metadata) {
        tracing::info!(object = %object_key(topic), "paused: Kafka topic {topic_name} left in place");
        return Ok(Action::await_change());
    }
    if !deletes_its_own(topic, ctx).await? {
        tracing::info!(
            object = %object_key(topic),
            "Kafka topic {topic_name} was not created or adopted by this EventTopic; not deleting it"
        );
        return Ok(Action::await_change());
    }
    ctx.admin.delete(topic_name).await.map_err(Error::Delete)?;
    ctx.audit
        .record(
            topic,
            TopicAction::Deleted,
            &[],
            ctx.admin.audit_topic_exists(),
        )
        .await;
    Ok(Action::await_change())
}

/// Whether the object's topic exists and is its own to delete. A topic this process created
/// moments ago counts even while descriptions do not show it yet.
async fn deletes_its_own(topic: &EventTopic, ctx: &Context) -> Result<bool, Error> {
    let name = topic.topic_name();
    Ok(
        match ctx.admin.describe(name).await.map_err(Error::Delete)? {
            Some(observed) => ctx.owns(topic, &observed),
            None => ctx.created_ago(name).is_some(),
        },
    )
}

/// Drops the operator's finalizer after `deletionPolicy` went from Delete to Retain.
async fn remove_finalizer(topic: &EventTopic, api: &Api<EventTopic>) -> Result<(), Error> {
    let remaining: Vec<&String> = topic
        .finalizers()
        .iter()
        .filter(|f| *f != FINALIZER)
        .collect();
    let patch = json!({
        "metadata": {
            "finalizers": remaining,
            "resourceVersion": topic.resource_version(),
        }
    });
    api.patch(
        &topic.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_made_before_the_schema_refused_internal_names_gets_invalid_spec() {
        let spec = bridge_api::EventTopicSpec {
            topic_name: Some("__consumer_offsets".into()),
            ..Default::default()
        };
        let message = desired_topic(&EventTopic::new("offsets", spec)).unwrap_err();
        assert!(
            message.starts_with("spec.topicName must not start with '_'"),
            "{message}"
        );
        assert!(message.contains("nothing is written to Kafka"), "{message}");
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(300));
            assert!(
                d >= Duration::from_secs(270) && d < Duration::from_secs(330),
                "{d:?}"
            );
        }
    }
}
