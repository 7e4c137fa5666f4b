//! The WebhookIngress controller: each WebhookIngress becomes a ConfigMap, StatefulSet (a
//! spool claim per replica), Service and PodDisruptionBudget of `hook-receiver` (and an
//! Ingress or HTTPRoute when exposed), built by `ingress_plan` and kept there by
//! server-side apply; the claims of replicas gone are drained by Jobs (`spool_claims`).
//!
//! Pipeline per pass: deletion (drain every claim, bounded) → finalizer → pause → resolve
//! the EventTopics → read the referenced Secrets (and the workloads' Kafka Secret, when the
//! operator names one) → plan → apply (ConfigMap first, so a new template never mounts an
//! old config) → prune → the spool claims of replicas gone → status.

use std::collections::BTreeMap;
use std::sync::Arc;

use bridge_api::{EventTopic, WebhookIngress, WebhookIngressStatus, condition_type, is_paused};
use futures::StreamExt;
use futures::future::join_all;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DynamicObject, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

use crate::conditions::{self, Decided};
use crate::ingress_plan::{
    self, COMPONENT, DRAIN_COMPONENT, IngressPlan, SecretKey, SecretProblem,
};
use crate::spool_claims::{Decisions, SpoolClaims};
use crate::workload::{
    self, Backoff, CONFIG_CHECKSUM_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, NAME_LABEL,
    WorkloadContext,
};

const KIND: &str = "WebhookIngress";
/// Holds a deleted WebhookIngress until its spool claims are drained (or the bound passed).
pub const SPOOL_FINALIZER: &str = "bridge.omninode.io/spool-drain";
/// How long a deleted WebhookIngress waits for its spools to drain before it goes and
/// leaves the claims that still hold events behind.
const SPOOL_DRAIN_BOUND: Duration = Duration::from_secs(600);
/// How soon a pass comes again while spools drain, so the status follows them.
const SPOOL_WATCH_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("applying {kind} {name} failed: {source}")]
    Apply {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// A stable word for metrics labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube(_) => "KubernetesApi",
            Self::Apply { .. } => "ApplyFailed",
        }
    }
}

pub struct Context {
    pub workload: Arc<WorkloadContext>,
    backoff: Backoff,
}

impl Context {
    pub fn new(workload: Arc<WorkloadContext>) -> Self {
        Self {
            workload,
            backoff: Backoff::default(),
        }
    }

    fn client(&self) -> Client {
        self.workload.client.clone()
    }

    /// Every object is looked at again after a resync: Secrets are not watched (the
    /// operator may only `get` them), so this is how a changed Secret value is seen.
    fn resync_action(&self) -> Action {
        Action::requeue(workload::jittered(self.workload.resync))
    }
}

fn object_key(wi: &WebhookIngress) -> String {
    format!("{}/{}", workload::namespace_of(wi), wi.name_any())
}

/// Runs the controller over `namespaces` (all when empty) until `stop` turns true.
pub async fn run(ctx: Arc<WorkloadContext>, namespaces: Vec<String>, stop: watch::Receiver<bool>) {
    let context = Arc::new(Context::new(ctx.clone()));
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    // Only this controller's children: the receiver's objects carry these two labels.
    let owned = watcher::Config::default().labels(&format!(
        "{NAME_LABEL}={COMPONENT},{MANAGED_BY_LABEL}={MANAGED_BY}"
    ));
    let runs = scopes.into_iter().map(|namespace| {
        let client = ctx.client.clone();
        let controller = Controller::new(
            scoped::<WebhookIngress>(&client, namespace.as_deref()),
            watcher::Config::default().any_semantic(),
        );
        let store = controller.store();
        controller
            .owns(
                scoped::<ConfigMap>(&client, namespace.as_deref()),
                owned.clone(),
            )
            .owns(
                scoped::<StatefulSet>(&client, namespace.as_deref()),
                owned.clone(),
            )
            .owns(
                scoped::<Job>(&client, namespace.as_deref()),
                watcher::Config::default().labels(&format!(
                    "{NAME_LABEL}={DRAIN_COMPONENT},{MANAGED_BY_LABEL}={MANAGED_BY}"
                )),
            )
            .owns(
                scoped::<Service>(&client, namespace.as_deref()),
                owned.clone(),
            )
            .owns(
                scoped::<PodDisruptionBudget>(&client, namespace.as_deref()),
                owned.clone(),
            )
            .owns(
                scoped::<Ingress>(&client, namespace.as_deref()),
                owned.clone(),
            )
            .watches(
                scoped::<EventTopic>(&client, namespace.as_deref()),
                watcher::Config::default().any_semantic(),
                move |topic| referencing(&store, &topic),
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

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// The WebhookIngresses with a route to `topic`: they wait on it, or publish to it.
fn referencing(
    store: &Store<WebhookIngress>,
    topic: &EventTopic,
) -> Vec<ObjectRef<WebhookIngress>> {
    let namespace = topic.namespace();
    let name = topic.name_any();
    store
        .state()
        .iter()
        .filter(|wi| wi.namespace() == namespace && wi.spec.routes.iter().any(|r| r.topic == name))
        .map(|wi| ObjectRef::from_obj(wi.as_ref()))
        .collect()
}

pub fn error_policy(wi: Arc<WebhookIngress>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(object = %object_key(&wi), %error, "reconcile failed");
    ctx.workload.metrics.failure(KIND, error.reason());
    Action::requeue(ctx.backoff.failed(&object_key(&wi)))
}

/// What one pass decided about the object's status.
struct Report {
    status: WebhookIngressStatus,
    now: Time,
    generation: Option<i64>,
}

impl Report {
    fn new(wi: &WebhookIngress) -> Self {
        Self {
            status: wi.status.clone().unwrap_or_default(),
            now: Time(Timestamp::now()),
            generation: wi.metadata.generation,
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

    fn clear(&mut self, type_: &str) {
        conditions::remove(&mut self.status.conditions, type_);
    }

    fn ready_reason(&self) -> Option<&str> {
        bridge_api::find_condition(&self.status.conditions, condition_type::READY)
            .map(|c| c.reason.as_str())
    }

    /// Writes the status (a merge patch on /status) only when it differs from the object's.
    async fn write(
        mut self,
        wi: &WebhookIngress,
        api: &Api<WebhookIngress>,
        ctx: &Context,
    ) -> Result<(), Error> {
        self.status.observed_generation = self.generation;
        if wi.status.as_ref() == Some(&self.status) {
            return Ok(());
        }
        let mut status = serde_json::to_value(&self.status).unwrap_or_default();
        // A merge patch keeps what it does not mention: absent fields are cleared explicitly.
        for field in [
            "observedGeneration",
            "conditions",
            "readyReplicas",
            "routes",
            "spools",
        ] {
            if let Some(fields) = status.as_object_mut() {
                fields.entry(field).or_insert(serde_json::Value::Null);
            }
        }
        api.patch_status(
            &wi.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await?;
        ctx.workload
            .metrics
            .status_patches
            .get_or_create(&crate::metrics::KindLabel { kind: KIND })
            .inc();
        Ok(())
    }
}

pub async fn reconcile(wi: Arc<WebhookIngress>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.workload.metrics.reconcile_timer(KIND);
    let namespace = workload::namespace_of(wi.as_ref());
    let api: Api<WebhookIngress> = Api::namespaced(ctx.client(), &namespace);
    let mut report = Report::new(&wi);

    if wi.metadata.deletion_timestamp.is_some() {
        return finalize(&wi, &ctx, &api, report).await;
    }
    if !wi.finalizers().iter().any(|f| f == SPOOL_FINALIZER) {
        let mut finalizers = wi.finalizers().to_vec();
        finalizers.push(SPOOL_FINALIZER.into());
        set_finalizers(&wi, &api, &finalizers).await?;
    }

    if is_paused(&wi.metadata) {
        report.set(Decided::new(
            condition_type::PAUSED,
            true,
            "Paused",
            format!(
                "reconciling is paused by the annotation {}: \"true\"; the receiver's objects are left as they are until it is removed",
                bridge_api::PAUSED_ANNOTATION
            ),
        ));
        report.write(&wi, &api, &ctx).await?;
        return Ok(Action::await_change());
    }
    report.clear(condition_type::PAUSED);

    // A problem with a reference leaves the running receiver alone: it keeps serving
    // the routes it has, and the condition says what to fix.
    let names: Vec<&str> = wi.spec.routes.iter().map(|r| r.topic.as_str()).collect();
    let topics = match workload::resolve_topics(&ctx.client(), &namespace, &names).await? {
        Ok(topics) => topics,
        Err(problem) => {
            report.set(problem.decided(&namespace));
            report.write(&wi, &api, &ctx).await?;
            ctx.backoff.succeeded(&object_key(&wi));
            return Ok(ctx.resync_action());
        }
    };

    let secrets = match read_secrets(&wi, &ctx, &namespace).await? {
        Ok(secrets) => secrets,
        Err(problem) => {
            let message = problem.message(&namespace, "receiver");
            if report.ready_reason() != Some(problem.reason()) {
                event(&ctx, &wi, EventType::Warning, problem.reason(), &message).await;
            }
            report.set(Decided::new(
                condition_type::READY,
                false,
                problem.reason(),
                message,
            ));
            report.write(&wi, &api, &ctx).await?;
            ctx.backoff.succeeded(&object_key(&wi));
            return Ok(ctx.resync_action());
        }
    };

    let wants_http_route = wi
        .spec
        .expose
        .as_ref()
        .is_some_and(|e| e.http_route.is_some());
    let gateway_api = gateway_api_installed(&ctx.client()).await?;
    let plan = match ingress_plan::plan(
        &wi,
        &topics,
        &secrets.routes,
        secrets.kafka.as_ref(),
        &ctx.workload.settings,
        gateway_api,
    ) {
        Ok(plan) => plan,
        Err(invalid) => {
            report.set(Decided::new(
                condition_type::READY,
                false,
                "InvalidSpec",
                invalid.to_string(),
            ));
            report.write(&wi, &api, &ctx).await?;
            return Ok(Action::await_change());
        }
    };

    let stateful_set = apply_plan(&wi, &plan, &ctx, &namespace, gateway_api).await?;

    if wants_http_route && !gateway_api {
        report.set(Decided::new(
            condition_type::DEGRADED,
            true,
            "GatewayAPINotInstalled",
            format!(
                "spec.expose.httpRoute needs the Gateway API CRDs ({}), which this cluster does not have: install them, or use expose.ingress; the routes are reachable through the Service meanwhile",
                ingress_plan::HTTP_ROUTE_CRD
            ),
        ));
    } else {
        report.clear(condition_type::DEGRADED);
    }
    let (ready_replicas, ready) =
        workload::rollout_progress(Some((&stateful_set).into()), "receiver");
    report.set(ready);
    report.status.ready_replicas = Some(ready_replicas);
    report.status.routes = plan.routes.clone();

    let replicas = u32::try_from(wi.spec.replicas).unwrap_or(0);
    let (spools, decisions) = drain_spools(&wi, &ctx, replicas).await?;
    report.status.spools = spools.status(&decisions).await;
    if let Some(claim) = spools.claims.values().find(|c| c.without_class) {
        report.set(Decided::new(
            condition_type::READY,
            false,
            "NoStorageClass",
            format!(
                "spool claim {} waits for a volume: it names no StorageClass and the cluster has no default one; set spec.spool.storageClassName (or the operator's --spool-storage-class), or mark a StorageClass as the default",
                claim.name
            ),
        ));
    }
    if !decisions.failed.is_empty() {
        report.set(Decided::new(
            condition_type::DEGRADED,
            true,
            "SpoolDrainFailed",
            drain_failed_message(&wi, &decisions),
        ));
    }
    let in_motion = spools_in_motion(&decisions, &report.status.spools);
    report.write(&wi, &api, &ctx).await?;
    ctx.backoff.succeeded(&object_key(&wi));
    if in_motion {
        return Ok(Action::requeue(SPOOL_WATCH_INTERVAL));
    }
    Ok(ctx.resync_action())
}

/// Reads the spool claims, starts a drain Job for each claim no replica has, and deletes
/// the claims their Jobs found empty (with an Event each).
async fn drain_spools(
    wi: &WebhookIngress,
    ctx: &Context,
    replicas: u32,
) -> Result<(SpoolClaims, Decisions), Error> {
    let client = ctx.client();
    let spools = SpoolClaims::read(&client, wi).await?;
    let decisions = spools.decide(replicas);
    let jobs: Vec<Job> = decisions
        .start_drain
        .iter()
        .map(|&ordinal| ingress_plan::desired_drain_job(wi, &ctx.workload.settings, ordinal))
        .collect();
    for (&ordinal, job) in decisions.start_drain.iter().zip(&jobs) {
        let note = format!(
            "no replica has spool claim {} any more: Job {} drains it into Kafka",
            ingress_plan::spool_claim_name(&wi.name_any(), ordinal),
            job.name_any()
        );
        event(ctx, wi, EventType::Normal, "SpoolDraining", &note).await;
    }
    for note in spools.apply(&client, &decisions, &jobs).await? {
        event(ctx, wi, EventType::Normal, "SpoolDrained", &note).await;
    }
    Ok((spools, decisions))
}

fn drain_failed_message(wi: &WebhookIngress, decisions: &Decisions) -> String {
    let jobs: Vec<String> = decisions
        .failed
        .iter()
        .map(|&o| ingress_plan::drain_job_name(&wi.name_any(), o))
        .collect();
    format!(
        "drain Job {} failed; its claim is kept with the events it holds: see `kubectl logs job/<name>`, fix the cause, then delete the Job to drain again",
        jobs.join(", ")
    )
}

/// Whether a claim is on its way somewhere or holds events, so the status is worth
/// refreshing soon.
fn spools_in_motion(
    decisions: &Decisions,
    spools: &[bridge_api::webhook_ingress::SpoolStatus],
) -> bool {
    !(decisions.stopping.is_empty()
        && decisions.start_drain.is_empty()
        && decisions.draining.is_empty()
        && decisions.drained.is_empty()
        && decisions.stale_jobs.is_empty())
        || spools.iter().any(|s| s.records.unwrap_or(0) > 0)
}

/// A deleted WebhookIngress: the receivers stop (each drains on SIGTERM what it can), every
/// claim is drained by a Job and deleted once empty, and the finalizer goes when no claim is
/// left, or after `SPOOL_DRAIN_BOUND` with an Event naming the claims that still hold events
/// (they are kept: a WebhookIngress of the same name drains them).
async fn finalize(
    wi: &WebhookIngress,
    ctx: &Context,
    api: &Api<WebhookIngress>,
    mut report: Report,
) -> Result<Action, Error> {
    if !wi.finalizers().iter().any(|f| f == SPOOL_FINALIZER) {
        return Ok(Action::await_change());
    }
    let namespace = workload::namespace_of(wi);
    let name = ingress_plan::workload_name(&wi.name_any());
    let sets: Api<StatefulSet> = Api::namespaced(ctx.client(), &namespace);
    if let Some(set) = sets.get_opt(&name).await? {
        if set.spec.as_ref().and_then(|s| s.replicas) != Some(0) {
            sets.patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 0}})),
            )
            .await?;
        }
    }
    let (spools, decisions) = drain_spools(wi, ctx, 0).await?;
    let left = spools.status(&decisions).await;
    let deleted_at = wi
        .metadata
        .deletion_timestamp
        .as_ref()
        .map_or(report.now.0, |t| t.0);
    let waited = Duration::try_from(report.now.0.duration_since(deleted_at)).unwrap_or_default();
    let all_failed = !left.is_empty() && left.iter().all(|s| s.state == "DrainFailed");
    if !left.is_empty() && waited < SPOOL_DRAIN_BOUND && !all_failed {
        report.set(Decided::new(
            condition_type::READY,
            false,
            "DrainingSpools",
            format!(
                "being deleted: waiting for {} spool claim(s) to drain into Kafka ({}s of at most {}s); the claims that still hold events then stay behind",
                left.len(),
                waited.as_secs(),
                SPOOL_DRAIN_BOUND.as_secs()
            ),
        ));
        report.status.spools = left;
        report.write(wi, api, ctx).await?;
        return Ok(Action::requeue(SPOOL_WATCH_INTERVAL));
    }
    if !left.is_empty() {
        let claims: Vec<String> = left
            .iter()
            .map(|s| match s.records {
                Some(records) => format!("{} ({records} events)", s.claim),
                None => s.claim.clone(),
            })
            .collect();
        let note = format!(
            "deleted with spools not drained: claims {} are kept with the events they hold; a WebhookIngress named {} in this namespace drains them, or delete the claims to discard the events",
            claims.join(", "),
            wi.name_any()
        );
        event(ctx, wi, EventType::Warning, "SpoolClaimsLeft", &note).await;
    }
    let finalizers: Vec<String> = wi
        .finalizers()
        .iter()
        .filter(|f| *f != SPOOL_FINALIZER)
        .cloned()
        .collect();
    set_finalizers(wi, api, &finalizers).await?;
    Ok(Action::await_change())
}

/// Replaces the finalizers, only if the object has not changed since it was read.
async fn set_finalizers(
    wi: &WebhookIngress,
    api: &Api<WebhookIngress>,
    finalizers: &[String],
) -> Result<(), Error> {
    let patch = json!({
        "metadata": {
            "finalizers": finalizers,
            "resourceVersion": wi.resource_version(),
        }
    });
    api.patch(
        &wi.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}

/// The Secret keys the receiver's pods read.
struct Secrets {
    /// Each route's, in route order (None for `none` auth).
    routes: Vec<Option<SecretKey>>,
    /// The workloads' Kafka Secret's, when the operator names one.
    kafka: Option<SecretKey>,
}

/// The referenced Secrets' keys, then the Kafka Secret's; the first problem otherwise.
/// `get` only, never a watch.
async fn read_secrets(
    wi: &WebhookIngress,
    ctx: &Context,
    namespace: &str,
) -> Result<Result<Secrets, SecretProblem>, Error> {
    let client = ctx.client();
    let mut found = BTreeMap::new();
    for name in ingress_plan::referenced_secrets(wi) {
        if let Some(data) = workload::read_secret(&client, namespace, &name).await? {
            found.insert(name, data);
        }
    }
    let routes = match ingress_plan::resolve_secrets(wi, &found) {
        Ok(routes) => routes,
        Err(problem) => return Ok(Err(problem)),
    };
    let kafka =
        match workload::read_kafka_secret(&client, namespace, &ctx.workload.settings).await? {
            Ok(kafka) => kafka,
            Err(problem) => return Ok(Err(problem)),
        };
    Ok(Ok(Secrets { routes, kafka }))
}

/// Whether the HTTPRoute CRD is installed (and so whether an HTTPRoute can be written or
/// has to be pruned). Asked through discovery, which every client may read, so the
/// operator needs no rights on CustomResourceDefinitions beyond its own.
async fn gateway_api_installed(client: &Client) -> Result<bool, Error> {
    match client
        .list_api_group_resources(ingress_plan::HTTP_ROUTE_GROUP_VERSION)
        .await
    {
        Ok(resources) => Ok(resources
            .resources
            .iter()
            .any(|r| r.name == ingress_plan::HTTP_ROUTE_PLURAL)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(error) => Err(error.into()),
    }
}

async fn apply_one<K>(api: &Api<K>, object: &K, kind: &'static str) -> Result<K, Error>
where
    K: Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    workload::apply(api, object)
        .await
        .map_err(|source| Error::Apply {
            kind,
            name: object.meta().name.clone().unwrap_or_default(),
            source,
        })
}

/// Applies every object of the plan, prunes what the spec no longer asks for, and returns
/// the StatefulSet as the API server has it.
async fn apply_plan(
    wi: &WebhookIngress,
    plan: &IngressPlan,
    ctx: &Context,
    namespace: &str,
    gateway_api: bool,
) -> Result<StatefulSet, Error> {
    let client = ctx.client();
    let name = ingress_plan::workload_name(&wi.name_any());
    let keep = vec![name.clone()];

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    apply_one(&config_maps, &plan.config_map, "ConfigMap").await?;

    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), namespace);
    let before = sets.get_opt(&name).await?;
    let stateful_set = apply_one(&sets, &plan.stateful_set, "StatefulSet").await?;
    match before {
        None => {
            let note = format!(
                "created StatefulSet {name} of {} replicas, each with a spool claim of {}",
                wi.spec.replicas, wi.spec.spool.size.0
            );
            event(ctx, wi, EventType::Normal, "StatefulSetCreated", &note).await;
        }
        Some(before) if checksum_of(&before) != Some(plan.checksum.as_str()) => {
            let note = format!(
                "the receiver's config or a Secret it reads changed: rolling the pods of StatefulSet {name}"
            );
            event(ctx, wi, EventType::Normal, "ConfigChanged", &note).await;
        }
        Some(_) => {}
    }

    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    apply_one(&services, &plan.service, "Service").await?;
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), namespace);
    apply_one(&pdbs, &plan.pdb, "PodDisruptionBudget").await?;

    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), namespace);
    match &plan.ingress {
        Some(ingress) => {
            apply_one(&ingresses, ingress, "Ingress").await?;
        }
        None => prune(&ingresses, wi, &[], ctx, "Ingress").await?,
    }
    if gateway_api {
        let routes: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            namespace,
            &ingress_plan::http_route_resource(),
        );
        match &plan.http_route {
            Some(route) => {
                apply_one(&routes, route, "HTTPRoute").await?;
            }
            None => prune(&routes, wi, &[], ctx, "HTTPRoute").await?,
        }
    }
    // Objects of an earlier naming, or made by hand with this owner, go too.
    prune(&config_maps, wi, &keep, ctx, "ConfigMap").await?;
    prune(&sets, wi, &keep, ctx, "StatefulSet").await?;
    // Receivers of an earlier version ran as a Deployment.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    prune(&deployments, wi, &[], ctx, "Deployment").await?;
    prune(&services, wi, &keep, ctx, "Service").await?;
    prune(&pdbs, wi, &keep, ctx, "PodDisruptionBudget").await?;
    Ok(stateful_set)
}

async fn prune<K>(
    api: &Api<K>,
    wi: &WebhookIngress,
    keep: &[String],
    ctx: &Context,
    kind: &'static str,
) -> Result<(), Error>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    for name in workload::prune(api, wi, keep).await? {
        let note = format!("deleted {kind} {name}: the spec no longer asks for it");
        event(ctx, wi, EventType::Normal, "Pruned", &note).await;
    }
    Ok(())
}

fn checksum_of(set: &StatefulSet) -> Option<&str> {
    set.spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(CONFIG_CHECKSUM_ANNOTATION)
        .map(String::as_str)
}

/// A Kubernetes Event on the WebhookIngress; failing to publish one only logs.
async fn event(ctx: &Context, wi: &WebhookIngress, type_: EventType, reason: &str, note: &str) {
    tracing::info!(object = %object_key(wi), reason, "{note}");
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note.into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx
        .workload
        .events
        .publish(&event, &wi.object_ref(&()))
        .await
    {
        tracing::warn!(%error, "publishing a Kubernetes Event failed");
    }
}
