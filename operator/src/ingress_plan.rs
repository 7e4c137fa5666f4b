//! What a WebhookIngress becomes, as pure functions: the hook-receiver config (the receiver's
//! own type, written as YAML), its ConfigMap, StatefulSet (with a spool claim per replica),
//! Service, PodDisruptionBudget, the Jobs that drain the claims of replicas gone, Ingress or
//! HTTPRoute, the routes' URLs and the checksum that rolls the pods.
//!
//! Nothing here talks to the API server; `ingress_controller` reads the inputs (resolved
//! topics, the referenced Secrets' values) and applies what this module builds.

use std::collections::BTreeMap;
use std::path::PathBuf;

use bridge_api::WebhookIngress;
use bridge_api::webhook_ingress::{
    AuthKind, CorrelationIdSource, EventTypeSource, HmacAlgorithm, HmacEncoding, Route,
    RouteStatus, SecretRef,
};
use hook_receiver::config::{
    self as receiver, AuthConfig, BreakerConfig, HmacConfig, ReceiverConfig, RouteConfig,
    SecretFile, SpoolConfig, ValueSource,
};
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe,
    ResourceRequirements, SecretVolumeSource, Service, ServicePort, ServiceSpec, SleepAction,
    Volume, VolumeMount, VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use crate::workload::{self, CONFIG_CHECKSUM_ANNOTATION, WorkloadSettings};
pub use crate::workload::{SecretKey, SecretProblem, SecretSource};

/// The `app.kubernetes.io/name` of every object of a WebhookIngress.
pub const COMPONENT: &str = "hook-receiver";
pub const CONTAINER: &str = "hook-receiver";
/// The ConfigMap key holding the receiver's config file.
pub const CONFIG_KEY: &str = "receiver.yaml";
pub const CONFIG_DIR: &str = "/etc/hook-receiver/config";
pub const SECRETS_DIR: &str = "/etc/hook-receiver/secrets";
pub const SPOOL_DIR: &str = "/var/spool/hook-receiver";
pub const HTTP_PORT: i32 = 8080;
pub const ADMIN_PORT: i32 = 9090;
/// The Service port senders inside the cluster use.
pub const SERVICE_PORT: i32 = 80;
/// The Secret key a `secretRef` without `key` names.
pub const DEFAULT_SECRET_KEY: &str = "secret";
/// The CRD whose presence decides whether an `expose.httpRoute` can be written.
pub const HTTP_ROUTE_CRD: &str = "httproutes.gateway.networking.k8s.io";
pub const HTTP_ROUTE_GROUP_VERSION: &str = "gateway.networking.k8s.io/v1";
pub const HTTP_ROUTE_PLURAL: &str = "httproutes";
/// Time the Pod gets after SIGTERM beyond the receiver's `shutdownTimeout`: the receiver
/// then publishes its `stopping` event (2 s) and flushes the producer (5 s).
const SHUTDOWN_MARGIN_SECONDS: i64 = 15;
/// The pause before SIGTERM, long enough for the endpoints controller and kube-proxy to
/// take a stopping replica out of the Service.
const PRE_STOP_SECONDS: i64 = 5;
/// The claim template's name, the first part of each replica's claim name.
pub const SPOOL_VOLUME: &str = "spool";
/// The `app.kubernetes.io/name` of the spool drain Jobs and their Pods.
pub const DRAIN_COMPONENT: &str = "hook-receiver-spool-drain";
/// The smallest spool claim, and the headroom left below its size: the filesystem's own
/// use (block rounding, metadata, the drain checkpoint, the record being written) comes
/// out of the claim, and a spool that filled the volume would fail writes instead of
/// answering 503.
const MIN_SPOOL_BYTES: u64 = 8 << 20;
const MIN_SPOOL_HEADROOM_BYTES: u64 = 2 << 20;

/// The name of the StatefulSet, Service, ConfigMap, PodDisruptionBudget and Ingress or
/// HTTPRoute of the WebhookIngress `name`.
pub fn workload_name(name: &str) -> String {
    format!("{name}-receiver")
}

/// The spool claim of replica `ordinal` of the WebhookIngress `name`, as the StatefulSet
/// names the claims it makes from its template.
pub fn spool_claim_name(name: &str, ordinal: u32) -> String {
    format!("{SPOOL_VOLUME}-{}-{ordinal}", workload_name(name))
}

/// The replica whose claim `claim` is, when it is one of the WebhookIngress `name`.
pub fn spool_claim_ordinal(name: &str, claim: &str) -> Option<u32> {
    ordinal_after(&format!("{SPOOL_VOLUME}-{}-", workload_name(name)), claim)
}

/// The ordinal that ends `name` after `prefix`, written as a StatefulSet writes it (no
/// leading zeros).
pub fn ordinal_after(prefix: &str, name: &str) -> Option<u32> {
    let ordinal = name.strip_prefix(prefix)?;
    if ordinal.starts_with('0') && ordinal != "0" {
        return None;
    }
    ordinal.parse().ok()
}

/// The Pod of replica `ordinal`.
pub fn replica_pod_name(name: &str, ordinal: u32) -> String {
    format!("{}-{ordinal}", workload_name(name))
}

/// The Job that drains the claim of replica `ordinal` once no replica has it.
pub fn drain_job_name(name: &str, ordinal: u32) -> String {
    format!("{}-drain-{ordinal}", workload_name(name))
}

pub fn config_path() -> String {
    format!("{CONFIG_DIR}/{CONFIG_KEY}")
}

/// The file a Secret key is read from inside the container.
pub fn secret_path(secret: &str, key: &str) -> PathBuf {
    PathBuf::from(format!("{SECRETS_DIR}/{secret}/{key}"))
}

/// A spec the API server admitted but the operator cannot build from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidSpec {
    pub field: String,
    pub reason: String,
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The Secret a route's auth names, if any.
pub fn secret_ref(route: &Route) -> Option<&SecretRef> {
    match route.auth.kind()? {
        AuthKind::Github(auth) | AuthKind::StandardWebhooks(auth) | AuthKind::Bearer(auth) => {
            Some(&auth.secret_ref)
        }
        AuthKind::Hmac(auth) => Some(&auth.secret_ref),
        AuthKind::None => None,
    }
}

/// The names of the Secrets the spec references, sorted, each once.
pub fn referenced_secrets(wi: &WebhookIngress) -> Vec<String> {
    let mut names: Vec<String> = wi
        .spec
        .routes
        .iter()
        .filter_map(secret_ref)
        .map(|r| r.name.clone())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Each route's Secret key (None for `none` auth), from the data of the referenced Secrets
/// that exist (`secrets`: name → key → value); the first problem in route order otherwise.
pub fn resolve_secrets(
    wi: &WebhookIngress,
    secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
) -> Result<Vec<Option<SecretKey>>, SecretProblem> {
    wi.spec
        .routes
        .iter()
        .map(|route| {
            let Some(reference) = secret_ref(route) else {
                return Ok(None);
            };
            let name = reference.name.clone();
            let standard = matches!(route.auth.kind(), Some(AuthKind::StandardWebhooks(_)));
            let Some(data) = secrets.get(&name) else {
                let key = match (&reference.key, standard) {
                    (Some(key), _) => Some(key.clone()),
                    (None, true) => None,
                    (None, false) => Some(DEFAULT_SECRET_KEY.to_owned()),
                };
                return Err(SecretProblem::NotFound {
                    name,
                    key,
                    source: SecretSource::Route,
                });
            };
            let key = match (&reference.key, standard) {
                (Some(key), _) => key.clone(),
                // Standard Webhooks without a key means "every key": one key is all of them.
                (None, true) if data.len() == 1 => data.keys().next().cloned().unwrap_or_default(),
                (None, true) if data.len() > 1 => {
                    return Err(SecretProblem::KeyRequired {
                        name,
                        route: route.name.clone(),
                    });
                }
                (None, _) => DEFAULT_SECRET_KEY.to_owned(),
            };
            match data.get(&key) {
                Some(value) => Ok(Some(SecretKey {
                    name,
                    key,
                    value: value.clone(),
                })),
                None => Err(SecretProblem::KeyMissing {
                    name,
                    key,
                    source: SecretSource::Route,
                }),
            }
        })
        .collect()
}

/// Bytes of a Kubernetes quantity such as `1Gi`, `500M` or `1073741824`.
pub fn quantity_bytes(quantity: &Quantity) -> Result<u64, String> {
    let text = quantity.0.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let multiplier: f64 = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0f64.powi(4),
        "Pi" => 1024.0f64.powi(5),
        _ => return Err(format!("`{text}` is not a size such as 1Gi or 500Mi")),
    };
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 1Gi or 500Mi"))?;
    Ok((number * multiplier) as u64)
}

fn value_source(
    header: Option<&String>,
    json_pointer: Option<&String>,
    value: Option<&String>,
    prefix: Option<&String>,
) -> ValueSource {
    ValueSource {
        header: header.cloned(),
        json_pointer: json_pointer.cloned(),
        value: value.cloned(),
        prefix: prefix.cloned().unwrap_or_default(),
    }
}

fn event_type(source: &EventTypeSource) -> ValueSource {
    value_source(
        source.header.as_ref(),
        source.json_pointer.as_ref(),
        source.value.as_ref(),
        source.prefix.as_ref(),
    )
}

fn correlation_id(source: &CorrelationIdSource) -> ValueSource {
    value_source(
        source.header.as_ref(),
        source.json_pointer.as_ref(),
        None,
        None,
    )
}

fn auth(
    route: &Route,
    index: usize,
    secret: Option<&SecretKey>,
) -> Result<AuthConfig, InvalidSpec> {
    let field = format!("spec.routes[{index}].auth");
    let kind = route
        .auth
        .kind()
        .ok_or_else(|| invalid(&field, "give exactly one auth kind"))?;
    let file = || {
        secret
            .map(|s| SecretFile {
                secret_file: secret_path(&s.name, &s.key),
            })
            .ok_or_else(|| invalid(&field, "the Secret was not resolved"))
    };
    let mut config = AuthConfig::default();
    match kind {
        AuthKind::Github(_) => config.github = Some(file()?),
        AuthKind::StandardWebhooks(_) => config.standard_webhooks = Some(file()?),
        AuthKind::Bearer(_) => config.bearer = Some(file()?),
        AuthKind::Hmac(hmac) => {
            config.hmac = Some(HmacConfig {
                secret_file: file()?.secret_file,
                header: hmac.header.clone(),
                algorithm: match hmac.algorithm {
                    HmacAlgorithm::Sha256 => receiver::HmacAlgorithm::Sha256,
                    HmacAlgorithm::Sha512 => receiver::HmacAlgorithm::Sha512,
                },
                encoding: match hmac.encoding {
                    HmacEncoding::Hex => receiver::SignatureEncoding::Hex,
                    HmacEncoding::Base64 => receiver::SignatureEncoding::Base64,
                },
                prefix: hmac.prefix.clone().unwrap_or_default(),
            })
        }
        AuthKind::None => config.none = Some(receiver::NoAuth {}),
    }
    Ok(config)
}

/// The receiver's config for `wi`: `topics` are the routes' Kafka topic names and `secrets`
/// their Secret keys, both in route order.
pub fn receiver_config(
    wi: &WebhookIngress,
    topics: &[String],
    secrets: &[Option<SecretKey>],
    settings: &WorkloadSettings,
) -> Result<ReceiverConfig, InvalidSpec> {
    let max_bytes = spool_max_bytes(&wi.spec.spool.size)?;
    let routes =
        wi.spec
            .routes
            .iter()
            .enumerate()
            .map(|(index, route)| {
                let topic = topics.get(index).cloned().ok_or_else(|| {
                    invalid(format!("spec.routes[{index}].topic"), "not resolved")
                })?;
                let dedupe_window = route
                    .dedupe_window
                    .as_ref()
                    .map(|w| w.to_std())
                    .transpose()
                    .map_err(|e| {
                        invalid(format!("spec.routes[{index}].dedupeWindow"), e.to_string())
                    })?;
                Ok(RouteConfig {
                    name: route.name.clone(),
                    path: route.path.clone(),
                    topic,
                    event_type: route.event_type.as_ref().map(event_type),
                    correlation_id: route.correlation_id.as_ref().map(correlation_id),
                    delivery_id: None,
                    auth: auth(route, index, secrets.get(index).and_then(Option::as_ref))?,
                    max_body_bytes: usize::try_from(route.max_body_bytes).map_err(|_| {
                        invalid(
                            format!("spec.routes[{index}].maxBodyBytes"),
                            "must be above 0",
                        )
                    })?,
                    dedupe_window,
                    schema_version: None,
                })
            })
            .collect::<Result<Vec<_>, InvalidSpec>>()?;
    Ok(ReceiverConfig {
        listen: ([0, 0, 0, 0], HTTP_PORT as u16).into(),
        admin_listen: ([0, 0, 0, 0], ADMIN_PORT as u16).into(),
        source: format!(
            "/namespaces/{}/webhookingresses/{}",
            workload::namespace_of(wi),
            wi.name_any()
        ),
        kafka: settings.workload_kafka(),
        spool: SpoolConfig {
            dir: PathBuf::from(SPOOL_DIR),
            max_bytes,
            // Several segments fit in a small spool, so drained ones can be deleted early.
            segment_bytes: (max_bytes / 8).clamp(1 << 20, receiver::defaults::segment_bytes()),
        },
        routes,
        publish_timeout: receiver::defaults::publish_timeout(),
        read_timeout: receiver::defaults::read_timeout(),
        shutdown_timeout: receiver::defaults::shutdown_timeout(),
        breaker: BreakerConfig::default(),
        audit_topic: receiver::defaults::audit_topic(),
        audit_events_per_second: receiver::defaults::audit_rate(),
        lifecycle_topic: receiver::defaults::lifecycle_topic(),
        // Each replica names itself by its HOSTNAME, which the Pod sets to its own name.
        instance: None,
    })
}

/// How much the spool of a claim of `size` may hold: the size less the headroom.
pub fn spool_max_bytes(size: &Quantity) -> Result<u64, InvalidSpec> {
    let size = quantity_bytes(size).map_err(|reason| invalid("spec.spool.size", reason))?;
    if size < MIN_SPOOL_BYTES {
        return Err(invalid("spec.spool.size", "must be at least 8Mi"));
    }
    Ok(size - (size / 8).max(MIN_SPOOL_HEADROOM_BYTES))
}

/// Everything the controller applies for one WebhookIngress.
#[derive(Debug, Clone)]
pub struct IngressPlan {
    pub config_text: String,
    /// Over the config text and every Secret value the pods read.
    pub checksum: String,
    pub config_map: ConfigMap,
    pub stateful_set: StatefulSet,
    pub service: Service,
    pub pdb: PodDisruptionBudget,
    pub ingress: Option<Ingress>,
    pub http_route: Option<DynamicObject>,
    /// Each route's URL; the HTTPRoute's only when `gateway_api` was true.
    pub routes: Vec<RouteStatus>,
}

/// The whole desired state of `wi`. `kafka_secret`: the workloads' Kafka Secret key, read
/// when `settings` names one. `gateway_api`: whether the HTTPRoute CRD is installed (the
/// route URLs point at the Service otherwise).
pub fn plan(
    wi: &WebhookIngress,
    topics: &[String],
    secrets: &[Option<SecretKey>],
    kafka_secret: Option<&SecretKey>,
    settings: &WorkloadSettings,
    gateway_api: bool,
) -> Result<IngressPlan, InvalidSpec> {
    let name = wi.name_any();
    let workload = workload_name(&name);
    // Service names are DNS-1035 labels: 63 characters, starting with a letter.
    if workload.len() > 63 || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(invalid(
            "metadata.name",
            format!(
                "the receiver's Service would be named {workload}, which is not a DNS-1035 label: use a name of at most 54 characters starting with a letter"
            ),
        ));
    }
    let config = receiver_config(wi, topics, secrets, settings)?;
    let config_text = serde_yaml::to_string(&config).map_err(|e| {
        invalid(
            "spec",
            format!("the receiver config cannot be written: {e}"),
        )
    })?;
    let checksum = config_checksum(&config_text, secrets, kafka_secret);
    let http_route = wi
        .spec
        .expose
        .as_ref()
        .and_then(|e| e.http_route.as_ref())
        .map(|_| desired_http_route(wi))
        .filter(|_| gateway_api);
    Ok(IngressPlan {
        config_map: desired_config_map(wi, &config_text),
        stateful_set: desired_stateful_set(wi, secrets, settings, &checksum),
        service: desired_service(wi),
        pdb: desired_pdb(wi),
        ingress: desired_ingress(wi),
        routes: route_urls(wi, gateway_api),
        http_route,
        config_text,
        checksum,
    })
}

/// Changes when the config or any Secret value the pods read (the routes' and the Kafka
/// Secret's) does, and only then.
pub fn config_checksum(
    config_text: &str,
    secrets: &[Option<SecretKey>],
    kafka_secret: Option<&SecretKey>,
) -> String {
    workload::config_checksum(config_text, secrets.iter().flatten().chain(kafka_secret))
}

fn metadata(wi: &WebhookIngress, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: wi.namespace(),
        labels: Some(workload::labels(COMPONENT, &wi.name_any())),
        owner_references: Some(vec![workload::owner_reference(wi)]),
        ..Default::default()
    }
}

pub fn desired_config_map(wi: &WebhookIngress, config_text: &str) -> ConfigMap {
    ConfigMap {
        metadata: metadata(wi, workload_name(&wi.name_any())),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            config_text.to_owned(),
        )])),
        ..Default::default()
    }
}

fn http_get(path: &str) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.into()),
        port: IntOrString::String("admin".into()),
        ..Default::default()
    }
}

fn pod_name_env(name: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One Secret volume per referenced Secret: (volume name, Secret name), sorted by Secret.
fn secret_volumes(secrets: &[Option<SecretKey>]) -> Vec<(String, String)> {
    let mut names: Vec<&str> = secrets.iter().flatten().map(|s| s.name.as_str()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| (format!("secret-{i}"), name.to_owned()))
        .collect()
}

/// The receiver's Pod. A replica of the StatefulSet serves webhooks and mounts its own spool
/// claim through the claim template; a drain Job's Pod (`drain` names the claim it mounts)
/// serves nothing and only sends what that spool holds to Kafka: it reads the config and
/// the Kafka Secret, not the routes' Secrets, so it runs even when those are gone.
fn receiver_pod(
    wi: &WebhookIngress,
    secrets: &[Option<SecretKey>],
    settings: &WorkloadSettings,
    drain: Option<&str>,
) -> PodSpec {
    let workload = workload_name(&wi.name_any());
    let secret_volumes = secret_volumes(secrets);

    let mut volumes = vec![Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: workload.clone(),
            ..Default::default()
        }),
        ..Default::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: "config".into(),
        mount_path: CONFIG_DIR.into(),
        read_only: Some(true),
        ..Default::default()
    }];
    for (volume, secret) in &secret_volumes {
        volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
        mounts.push(VolumeMount {
            name: volume.clone(),
            mount_path: format!("{SECRETS_DIR}/{secret}"),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if let Some((volume, mount)) = settings.kafka_secret_mount() {
        volumes.push(volume);
        mounts.push(mount);
    }
    mounts.push(VolumeMount {
        name: SPOOL_VOLUME.into(),
        mount_path: SPOOL_DIR.into(),
        ..Default::default()
    });
    if let Some(claim) = drain {
        volumes.push(Volume {
            name: SPOOL_VOLUME.into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: claim.into(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    let mut args = vec!["--config".into(), config_path()];
    let mut ports = vec![ContainerPort {
        name: Some("admin".into()),
        container_port: ADMIN_PORT,
        protocol: Some("TCP".into()),
        ..Default::default()
    }];
    let mut readiness_probe = Some(Probe {
        http_get: Some(http_get("/readyz")),
        period_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    });
    let mut lifecycle = Some(Lifecycle {
        // SIGTERM comes after this pause: meanwhile the Pod is out of the Service's
        // endpoints, so no webhook meets a closed port during a rollout.
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction {
                seconds: PRE_STOP_SECONDS,
            }),
            ..Default::default()
        }),
        ..Default::default()
    });
    if drain.is_some() {
        args.push("--drain".into());
        readiness_probe = None;
        lifecycle = None;
    } else {
        ports.insert(
            0,
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        );
    }
    let container = Container {
        name: CONTAINER.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(vec!["hook-receiver".into()]),
        args: Some(args),
        ports: Some(ports),
        // HOSTNAME names the replica in lifecycle events (the receiver's `instance`), also
        // where the Pod does not run in a container of its own.
        env: Some(vec![pod_name_env("POD_NAME"), pod_name_env("HOSTNAME")]),
        readiness_probe,
        liveness_probe: Some(Probe {
            http_get: Some(http_get("/healthz")),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        lifecycle,
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([
                ("cpu".into(), Quantity("100m".into())),
                ("memory".into(), Quantity("64Mi".into())),
            ])),
            limits: Some(BTreeMap::from([(
                "memory".into(),
                Quantity("256Mi".into()),
            )])),
            ..Default::default()
        }),
        security_context: Some(workload::container_security_context()),
        volume_mounts: Some(mounts),
        ..Default::default()
    };
    PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        security_context: Some(workload::pod_security_context()),
        termination_grace_period_seconds: Some(
            PRE_STOP_SECONDS
                + receiver::defaults::shutdown_timeout().as_secs() as i64
                + SHUTDOWN_MARGIN_SECONDS,
        ),
        // The receiver never talks to the API server.
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        restart_policy: drain.map(|_| "OnFailure".into()),
        ..Default::default()
    }
}

/// The receivers: a StatefulSet, so that replica N always gets claim N back and a Pod
/// that replaces another (a rollout, a delete, an eviction) drains what its predecessor
/// spooled. Claims are retained when the set scales down or goes away; the controller
/// drains and deletes them (`desired_drain_job`).
pub fn desired_stateful_set(
    wi: &WebhookIngress,
    secrets: &[Option<SecretKey>],
    settings: &WorkloadSettings,
    checksum: &str,
) -> StatefulSet {
    let name = wi.name_any();
    let workload = workload_name(&name);
    StatefulSet {
        metadata: metadata(wi, workload.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(wi.spec.replicas),
            service_name: Some(workload),
            // Replicas start and stop together; a rollout still replaces one at a time.
            pod_management_policy: Some("Parallel".into()),
            selector: LabelSelector {
                match_labels: Some(workload::selector_labels(COMPONENT, &name)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(workload::labels(COMPONENT, &name)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_CHECKSUM_ANNOTATION.to_owned(),
                        checksum.to_owned(),
                    )])),
                    ..Default::default()
                }),
                spec: Some(receiver_pod(wi, secrets, settings, None)),
            },
            volume_claim_templates: Some(vec![spool_claim_template(wi, settings)]),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Each replica's spool claim, `spool-<name>-receiver-<ordinal>`.
fn spool_claim_template(wi: &WebhookIngress, settings: &WorkloadSettings) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(SPOOL_VOLUME.into()),
            labels: Some(workload::labels(COMPONENT, &wi.name_any())),
            ..Default::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: wi
                .spec
                .spool
                .storage_class_name
                .clone()
                .or_else(|| settings.spool_storage_class.clone()),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".into(),
                    wi.spec.spool.size.clone(),
                )])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A Job that sends what the spool claim `claim` holds to Kafka and ends once it is empty:
/// for the claim of a replica scaled away, or of every replica while the WebhookIngress is
/// being deleted. Its Pods carry labels of their own, so no Service sends them webhooks.
pub fn desired_drain_job(wi: &WebhookIngress, settings: &WorkloadSettings, ordinal: u32) -> Job {
    let name = wi.name_any();
    let claim = spool_claim_name(&name, ordinal);
    Job {
        metadata: ObjectMeta {
            labels: Some(workload::labels(DRAIN_COMPONENT, &name)),
            ..metadata(wi, drain_job_name(&name, ordinal))
        },
        spec: Some(JobSpec {
            // The drain waits through Kafka outages itself; it fails only on what a person
            // must look at (a spool it cannot read), and a few retries are enough then.
            backoff_limit: Some(3),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(workload::labels(DRAIN_COMPONENT, &name)),
                    ..Default::default()
                }),
                spec: Some(receiver_pod(wi, &[], settings, Some(&claim))),
            },
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn desired_service(wi: &WebhookIngress) -> Service {
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    Service {
        metadata: metadata(wi, workload_name(&wi.name_any())),
        spec: Some(ServiceSpec {
            selector: Some(workload::selector_labels(COMPONENT, &wi.name_any())),
            ports: Some(vec![port("http", SERVICE_PORT), port("admin", ADMIN_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn desired_pdb(wi: &WebhookIngress) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: metadata(wi, workload_name(&wi.name_any())),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(workload::selector_labels(COMPONENT, &wi.name_any())),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub fn desired_ingress(wi: &WebhookIngress) -> Option<Ingress> {
    let expose = wi.spec.expose.as_ref()?.ingress.as_ref()?;
    let service = workload_name(&wi.name_any());
    let paths = wi
        .spec
        .routes
        .iter()
        .map(|route| HTTPIngressPath {
            path: Some(route.path.clone()),
            path_type: "Exact".into(),
            backend: IngressBackend {
                service: Some(IngressServiceBackend {
                    name: service.clone(),
                    port: Some(ServiceBackendPort {
                        name: Some("http".into()),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            },
        })
        .collect();
    Some(Ingress {
        metadata: metadata(wi, service),
        spec: Some(IngressSpec {
            ingress_class_name: expose.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(expose.host.clone()),
                http: Some(HTTPIngressRuleValue { paths }),
            }]),
            tls: expose.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![expose.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The Gateway API HTTPRoute resource (`gateway.networking.k8s.io/v1`).
pub fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute"),
        HTTP_ROUTE_PLURAL,
    )
}

pub fn desired_http_route(wi: &WebhookIngress) -> DynamicObject {
    let expose = wi.spec.expose.as_ref().and_then(|e| e.http_route.as_ref());
    let service = workload_name(&wi.name_any());
    let matches: Vec<serde_json::Value> = wi
        .spec
        .routes
        .iter()
        .map(|r| json!({"path": {"type": "Exact", "value": r.path}}))
        .collect();
    let mut spec = json!({
        "parentRefs": expose.map(|e| e.parent_refs.clone()).unwrap_or_default(),
        "rules": [{
            "matches": matches,
            "backendRefs": [{"name": service, "port": SERVICE_PORT}],
        }],
    });
    if let Some(expose) = expose.filter(|e| !e.hostnames.is_empty()) {
        spec["hostnames"] = json!(expose.hostnames);
    }
    let mut route =
        DynamicObject::new(&service, &http_route_resource()).data(json!({"spec": spec}));
    route.metadata = metadata(wi, service);
    route
}

/// Each route's URL: the Ingress host (https with TLS), the HTTPRoute's first hostname, or
/// else the Service's in-cluster name.
pub fn route_urls(wi: &WebhookIngress, gateway_api: bool) -> Vec<RouteStatus> {
    let expose = wi.spec.expose.as_ref();
    let base = if let Some(ingress) = expose.and_then(|e| e.ingress.as_ref()) {
        let scheme = if ingress.tls_secret_name.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", ingress.host)
    } else if let Some(host) = expose
        .and_then(|e| e.http_route.as_ref())
        .filter(|_| gateway_api)
        .and_then(|r| r.hostnames.first())
    {
        // TLS is the Gateway's listener's business, which this route cannot see.
        format!("http://{host}")
    } else {
        format!(
            "http://{}.{}.svc:{SERVICE_PORT}",
            workload_name(&wi.name_any()),
            workload::namespace_of(wi)
        )
    };
    wi.spec
        .routes
        .iter()
        .map(|r| RouteStatus {
            name: r.name.clone(),
            url: format!("{base}{}", r.path),
        })
        .collect()
}

/// The kind and API version a DynamicObject needs to be applied.
pub fn is_http_route(object: &DynamicObject) -> bool {
    object
        .types
        .as_ref()
        .is_some_and(|t| t.kind == "HTTPRoute" && t.api_version == "gateway.networking.k8s.io/v1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use bridge_events::KafkaSettings;

    fn settings() -> WorkloadSettings {
        WorkloadSettings {
            image: "omninode/bridge:test".into(),
            image_pull_policy: Some("IfNotPresent".into()),
            kafka_bootstrap_servers: "kafka-0:9092,kafka-1:9092".into(),
            kafka_secret: None,
            spool_storage_class: None,
        }
    }

    fn kafka_secret(properties: &str) -> SecretKey {
        SecretKey {
            name: "kafka-client".into(),
            key: "properties.yaml".into(),
            value: properties.as_bytes().to_vec(),
        }
    }

    fn ingress(spec: serde_json::Value) -> WebhookIngress {
        serde_json::from_value(json!({
            "apiVersion": "bridge.omninode.io/v1alpha1",
            "kind": "WebhookIngress",
            "metadata": {"name": "github", "namespace": "team-a", "uid": "0000-1111", "generation": 1},
            "spec": spec,
        }))
        .unwrap()
    }

    fn github() -> WebhookIngress {
        ingress(json!({"routes": [
            {"name": "github", "path": "/github", "topic": "tools",
             "eventType": {"header": "X-GitHub-Event", "prefix": "com.github."},
             "correlationId": {"header": "X-GitHub-Delivery"},
             "auth": {"github": {"secretRef": {"name": "github-webhook"}}},
             "dedupeWindow": "10m"},
            {"name": "open", "path": "/open", "topic": "audit",
             "eventType": {"value": "com.example.ping"},
             "auth": {"none": {}}},
            {"name": "signed", "path": "/signed", "topic": "tools",
             "eventType": {"jsonPointer": "/type"},
             "auth": {"hmac": {"secretRef": {"name": "hmac", "key": "token"}, "header": "X-Sig",
                               "algorithm": "sha512", "encoding": "base64", "prefix": "v1="}}}
        ]}))
    }

    fn secret_data(github: &[u8]) -> BTreeMap<String, BTreeMap<String, Vec<u8>>> {
        BTreeMap::from([
            (
                "github-webhook".into(),
                BTreeMap::from([("secret".into(), github.to_vec())]),
            ),
            (
                "hmac".into(),
                BTreeMap::from([("token".into(), b"hmac-key".to_vec())]),
            ),
        ])
    }

    fn topics() -> Vec<String> {
        vec![
            "team-a.tools".into(),
            "team-a.audit".into(),
            "team-a.tools".into(),
        ]
    }

    fn plan_of(wi: &WebhookIngress, github_secret: &[u8], gateway: bool) -> IngressPlan {
        let secrets = resolve_secrets(wi, &secret_data(github_secret)).unwrap();
        plan(wi, &topics(), &secrets, None, &settings(), gateway).unwrap()
    }

    #[test]
    fn the_config_reads_back_through_the_receivers_own_loader() {
        let plan = plan_of(&github(), b"s3cret", false);
        let text = &plan.config_map.data.as_ref().unwrap()[CONFIG_KEY];
        let config = ReceiverConfig::parse(text).unwrap();
        assert_eq!(config.source, "/namespaces/team-a/webhookingresses/github");
        assert_eq!(config.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(config.admin_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(
            config.kafka,
            KafkaSettings {
                bootstrap_servers: "kafka-0:9092,kafka-1:9092".into(),
                properties: BTreeMap::new(),
                properties_file: None,
            }
        );
        assert_eq!(config.spool.dir, PathBuf::from(SPOOL_DIR));
        assert_eq!(config.spool.max_bytes, (1 << 30) - (128 << 20));
        let github = &config.routes[0];
        assert_eq!(github.topic, "team-a.tools");
        assert_eq!(
            github.auth.github.as_ref().unwrap().secret_file,
            PathBuf::from("/etc/hook-receiver/secrets/github-webhook/secret")
        );
        assert_eq!(github.event_type.as_ref().unwrap().prefix, "com.github.");
        assert_eq!(
            github.dedupe_window,
            Some(std::time::Duration::from_secs(600))
        );
        assert!(config.routes[1].auth.none.is_some());
        let hmac = config.routes[2].auth.hmac.as_ref().unwrap();
        assert_eq!(
            hmac.secret_file,
            PathBuf::from("/etc/hook-receiver/secrets/hmac/token")
        );
        assert_eq!(hmac.algorithm, receiver::HmacAlgorithm::Sha512);
        assert_eq!(hmac.encoding, receiver::SignatureEncoding::Base64);
        assert_eq!(hmac.prefix, "v1=");
        assert!(!text.contains("s3cret"), "no secret value in the ConfigMap");
    }

    #[test]
    fn the_checksum_changes_with_a_secret_value_and_not_otherwise() {
        let wi = github();
        let a = plan_of(&wi, b"one", false).checksum;
        assert_eq!(a, plan_of(&wi, b"one", false).checksum);
        assert_ne!(a, plan_of(&wi, b"two", false).checksum);
        let annotations = plan_of(&wi, b"one", false)
            .stateful_set
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap();
        assert_eq!(annotations[CONFIG_CHECKSUM_ANNOTATION], a);

        let mut changed = wi.clone();
        changed.spec.routes[0].path = "/gh".into();
        assert_ne!(a, plan_of(&changed, b"one", false).checksum);
        // A change that does not reach the pods does not roll them.
        let mut scaled = wi.clone();
        scaled.spec.replicas = 5;
        assert_eq!(a, plan_of(&scaled, b"one", false).checksum);
    }

    #[test]
    fn a_missing_secret_or_key_is_named() {
        let wi = github();
        let mut data = secret_data(b"x");
        data.remove("github-webhook");
        assert_eq!(
            resolve_secrets(&wi, &data),
            Err(SecretProblem::NotFound {
                name: "github-webhook".into(),
                key: Some("secret".into()),
                source: SecretSource::Route,
            })
        );
        let problem = resolve_secrets(&wi, &data).unwrap_err();
        assert!(
            problem
                .message("team-a", "receiver")
                .contains("Secret team-a/github-webhook does not exist: create it with key secret"),
            "{}",
            problem.message("team-a", "receiver")
        );
        let mut data = secret_data(b"x");
        data.get_mut("hmac").unwrap().clear();
        let problem = resolve_secrets(&wi, &data).unwrap_err();
        assert_eq!(problem.reason(), "SecretNotFound");
        assert!(
            problem
                .message("team-a", "receiver")
                .contains("team-a/hmac has no key token")
        );
        assert_eq!(referenced_secrets(&wi), vec!["github-webhook", "hmac"]);
    }

    #[test]
    fn with_a_kafka_secret_the_pods_mount_it_and_the_config_names_its_file() {
        let wi = github();
        let secrets = resolve_secrets(&wi, &secret_data(b"x")).unwrap();
        let settings = WorkloadSettings {
            kafka_secret: Some("kafka-client".into()),
            ..settings()
        };
        let kafka = kafka_secret("sasl.password: one\n");
        let plan_with = |kafka: &SecretKey| {
            plan(&wi, &topics(), &secrets, Some(kafka), &settings, false).unwrap()
        };
        let with = plan_with(&kafka);
        let text = &with.config_map.data.as_ref().unwrap()[CONFIG_KEY];
        let config = ReceiverConfig::parse(text).unwrap();
        assert_eq!(
            config.kafka,
            KafkaSettings {
                bootstrap_servers: "kafka-0:9092,kafka-1:9092".into(),
                properties: BTreeMap::new(),
                properties_file: Some("/etc/omninode-bridge/kafka/properties.yaml".into()),
            }
        );
        assert!(!text.contains("sasl"), "{text}");

        let pod = with.stateful_set.spec.unwrap().template.spec.unwrap();
        let mount = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.mount_path == "/etc/omninode-bridge/kafka")
            .cloned()
            .unwrap();
        assert_eq!(mount.read_only, Some(true));
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == mount.name)
            .unwrap();
        assert_eq!(
            volume.secret.unwrap().secret_name.as_deref(),
            Some("kafka-client")
        );

        // Rotated credentials roll the pods.
        assert_eq!(with.checksum, plan_with(&kafka).checksum);
        assert_ne!(
            with.checksum,
            plan_with(&kafka_secret("sasl.password: two\n")).checksum
        );
    }

    #[test]
    fn without_a_kafka_secret_nothing_of_kafka_is_mounted() {
        let plan = plan_of(&github(), b"x", false);
        let text = &plan.config_map.data.as_ref().unwrap()[CONFIG_KEY];
        assert!(!text.contains("propertiesFile"), "{text}");
        assert!(!text.contains("properties"), "{text}");
        let pod = plan.stateful_set.spec.unwrap().template.spec.unwrap();
        assert!(
            pod.volumes
                .unwrap()
                .iter()
                .all(|v| v.name != workload::KAFKA_SECRET_VOLUME)
        );
    }

    #[test]
    fn standard_webhooks_without_a_key_takes_the_one_key_or_asks_for_one() {
        let wi = ingress(json!({"routes": [
            {"name": "sw", "path": "/sw", "topic": "t", "eventType": {"value": "x"},
             "auth": {"standardWebhooks": {"secretRef": {"name": "sw"}}}}]}));
        let one = BTreeMap::from([(
            "sw".to_owned(),
            BTreeMap::from([("current".to_owned(), b"whsec_a".to_vec())]),
        )]);
        let resolved = resolve_secrets(&wi, &one).unwrap();
        assert_eq!(resolved[0].as_ref().unwrap().key, "current");
        let mut two = one.clone();
        two.get_mut("sw")
            .unwrap()
            .insert("previous".into(), b"whsec_b".to_vec());
        assert_eq!(
            resolve_secrets(&wi, &two).unwrap_err().reason(),
            "SecretKeyRequired"
        );
    }

    #[test]
    fn the_stateful_set_runs_hook_receiver_from_the_workload_image_with_its_probes_and_mounts() {
        let plan = plan_of(&github(), b"x", false);
        let set = plan.stateful_set;
        assert_eq!(set.metadata.name.as_deref(), Some("github-receiver"));
        let owner = &set.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, "0000-1111");
        assert_eq!(owner.controller, Some(true));
        let spec = set.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let template = spec.template;
        let labels = template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels, workload::labels("hook-receiver", "github"));
        let pod = template.spec.unwrap();
        // The preStop pause, the receiver's shutdownTimeout and the final flush.
        assert_eq!(pod.termination_grace_period_seconds, Some(45));
        let pre_stop = pod.containers[0]
            .lifecycle
            .as_ref()
            .unwrap()
            .pre_stop
            .as_ref();
        assert_eq!(pre_stop.unwrap().sleep.as_ref().unwrap().seconds, 5);
        let container = &pod.containers[0];
        assert_eq!(container.name, "hook-receiver");
        assert_eq!(container.image.as_deref(), Some("omninode/bridge:test"));
        assert_eq!(container.image_pull_policy.as_deref(), Some("IfNotPresent"));
        assert_eq!(container.command, Some(vec!["hook-receiver".to_owned()]));
        assert_eq!(
            container.args,
            Some(vec![
                "--config".to_owned(),
                "/etc/hook-receiver/config/receiver.yaml".to_owned()
            ])
        );
        let readiness = container.readiness_probe.as_ref().unwrap();
        assert_eq!(readiness.period_seconds, Some(2));
        let get = readiness.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some("/readyz"));
        assert_eq!(get.port, IntOrString::String("admin".into()));
        let liveness = container.liveness_probe.as_ref().unwrap();
        assert_eq!(
            liveness.http_get.as_ref().unwrap().path.as_deref(),
            Some("/healthz")
        );
        let mounts: BTreeMap<String, String> = container
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| (m.mount_path.clone(), m.name.clone()))
            .collect();
        assert_eq!(
            mounts.keys().collect::<Vec<_>>(),
            vec![
                "/etc/hook-receiver/config",
                "/etc/hook-receiver/secrets/github-webhook",
                "/etc/hook-receiver/secrets/hmac",
                "/var/spool/hook-receiver",
            ]
        );
        let volumes = pod.volumes.unwrap();
        // The spool comes from the claim template, not from a volume of the Pod.
        assert!(volumes.iter().all(|v| v.name != "spool"));
        let secret = volumes
            .iter()
            .find(|v| v.name == mounts["/etc/hook-receiver/secrets/hmac"])
            .unwrap();
        assert_eq!(
            secret.secret.as_ref().unwrap().secret_name.as_deref(),
            Some("hmac")
        );
        let env: Vec<&str> = container
            .env
            .iter()
            .flatten()
            .map(|e| e.name.as_str())
            .collect();
        assert_eq!(env, vec!["POD_NAME", "HOSTNAME"]);
    }

    #[test]
    fn the_pods_run_under_the_restricted_security_standard() {
        let pod = plan_of(&github(), b"x", false)
            .stateful_set
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let pod_context = pod.security_context.unwrap();
        assert_eq!(pod_context.run_as_non_root, Some(true));
        assert_eq!(pod_context.seccomp_profile.unwrap().type_, "RuntimeDefault");
        let context = pod.containers[0].security_context.clone().unwrap();
        assert_eq!(context.allow_privilege_escalation, Some(false));
        assert_eq!(context.read_only_root_filesystem, Some(true));
        assert_eq!(
            context.capabilities.unwrap().drop,
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
    }

    #[test]
    fn each_replica_gets_a_spool_claim_that_outlives_its_pods() {
        let mut wi = github();
        wi.spec.spool.size = Quantity("2Gi".into());
        wi.spec.spool.storage_class_name = Some("fast".into());
        let spec = plan_of(&wi, b"x", false).stateful_set.spec.unwrap();
        assert_eq!(spec.service_name.as_deref(), Some("github-receiver"));
        let template = &spec.volume_claim_templates.as_ref().unwrap()[0];
        assert_eq!(template.metadata.name.as_deref(), Some("spool"));
        let claim = template.spec.as_ref().unwrap();
        assert_eq!(claim.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"],
            Quantity("2Gi".into())
        );
        let retention = spec.persistent_volume_claim_retention_policy.unwrap();
        assert_eq!(retention.when_deleted.as_deref(), Some("Retain"));
        assert_eq!(retention.when_scaled.as_deref(), Some("Retain"));
        assert_eq!(
            spool_claim_name("github", 2),
            "spool-github-receiver-2",
            "the name the StatefulSet gives replica 2's claim"
        );
        assert_eq!(
            spool_claim_ordinal("github", "spool-github-receiver-2"),
            Some(2)
        );

        // Without a class in the spec, the operator's default, else the cluster's.
        let settings = WorkloadSettings {
            spool_storage_class: Some("standard".into()),
            ..settings()
        };
        let set = desired_stateful_set(&github(), &[], &settings, "c");
        let claim = set.spec.unwrap().volume_claim_templates.unwrap()[0].clone();
        assert_eq!(
            claim.spec.unwrap().storage_class_name.as_deref(),
            Some("standard")
        );
    }

    #[test]
    fn the_spool_holds_less_than_its_claim() {
        let config = |size: &str| {
            let mut wi = github();
            wi.spec.spool.size = Quantity(size.into());
            let secrets = resolve_secrets(&wi, &secret_data(b"x")).unwrap();
            receiver_config(&wi, &topics(), &secrets, &settings())
        };
        assert_eq!(
            config("1Gi").unwrap().spool.max_bytes,
            (1 << 30) - (128 << 20)
        );
        // At least 2Mi of headroom.
        assert_eq!(config("8Mi").unwrap().spool.max_bytes, 6 << 20);
        let error = config("4Mi").unwrap_err();
        assert_eq!(error.field, "spec.spool.size");
    }

    #[test]
    fn a_drain_job_mounts_one_claim_and_serves_no_webhooks() {
        let job = desired_drain_job(&github(), &settings(), 1);
        assert_eq!(
            job.metadata.name.as_deref(),
            Some("github-receiver-drain-1")
        );
        let template = job.spec.unwrap().template;
        let labels = template.metadata.unwrap().labels.unwrap();
        // Not the receivers' labels: the Service must not send it webhooks.
        assert_eq!(labels[workload::NAME_LABEL], DRAIN_COMPONENT);
        let pod = template.spec.unwrap();
        let container = &pod.containers[0];
        assert_eq!(container.args.as_ref().unwrap().last().unwrap(), "--drain");
        assert!(container.readiness_probe.is_none());
        assert!(
            container
                .ports
                .iter()
                .flatten()
                .all(|p| p.name.as_deref() != Some("http"))
        );
        let spool = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "spool")
            .unwrap();
        assert_eq!(
            spool.persistent_volume_claim.as_ref().unwrap().claim_name,
            "spool-github-receiver-1"
        );
        // The routes' Secrets are not mounted: a drain needs only the config and Kafka.
        assert!(pod.volumes.iter().flatten().all(|v| v.secret.is_none()));
        assert_eq!(pod.restart_policy.as_deref(), Some("OnFailure"));
    }

    #[test]
    fn without_expose_the_routes_are_reached_through_the_service() {
        let plan = plan_of(&github(), b"x", false);
        assert!(plan.ingress.is_none());
        assert!(plan.http_route.is_none());
        assert_eq!(
            plan.routes[0].url,
            "http://github-receiver.team-a.svc:80/github"
        );
        let service = plan.service.spec.unwrap();
        let ports: Vec<(String, i32)> = service
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port))
            .collect();
        assert_eq!(ports, vec![("http".into(), 80), ("admin".into(), 9090)]);
        assert_eq!(
            service.selector.unwrap(),
            workload::selector_labels("hook-receiver", "github")
        );
        let pdb = plan.pdb.spec.unwrap();
        assert_eq!(pdb.max_unavailable, Some(IntOrString::Int(1)));
    }

    #[test]
    fn an_ingress_expose_gives_https_urls_with_tls() {
        let mut wi = github();
        wi.spec.expose = Some(
            serde_json::from_value(json!({"ingress": {"className": "nginx",
                "host": "hooks.example.com", "tlsSecretName": "hooks-tls"}}))
            .unwrap(),
        );
        let plan = plan_of(&wi, b"x", false);
        let ingress = plan.ingress.unwrap();
        assert_eq!(ingress.metadata.name.as_deref(), Some("github-receiver"));
        let spec = ingress.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let rules = spec.rules.unwrap();
        let paths = &rules[0].http.as_ref().unwrap().paths;
        assert_eq!(paths.len(), 3);
        assert_eq!(paths[0].path.as_deref(), Some("/github"));
        assert_eq!(
            paths[0].backend.service.as_ref().unwrap().name,
            "github-receiver"
        );
        assert_eq!(
            spec.tls.unwrap()[0].secret_name.as_deref(),
            Some("hooks-tls")
        );
        assert_eq!(plan.routes[0].url, "https://hooks.example.com/github");

        wi.spec
            .expose
            .as_mut()
            .unwrap()
            .ingress
            .as_mut()
            .unwrap()
            .tls_secret_name = None;
        assert_eq!(
            plan_of(&wi, b"x", false).routes[1].url,
            "http://hooks.example.com/open"
        );
    }

    #[test]
    fn an_http_route_is_built_only_when_gateway_api_is_installed() {
        let mut wi = github();
        wi.spec.expose = Some(
            serde_json::from_value(json!({"httpRoute": {
                "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
                "hostnames": ["hooks.example.com"]}}))
            .unwrap(),
        );
        let without = plan_of(&wi, b"x", false);
        assert!(without.http_route.is_none());
        assert_eq!(
            without.routes[0].url,
            "http://github-receiver.team-a.svc:80/github"
        );
        let with = plan_of(&wi, b"x", true);
        let route = with.http_route.unwrap();
        assert!(is_http_route(&route));
        assert_eq!(route.metadata.name.as_deref(), Some("github-receiver"));
        assert_eq!(
            route.data["spec"]["parentRefs"][0],
            json!({"name": "public", "namespace": "gateways", "sectionName": "https"})
        );
        assert_eq!(
            route.data["spec"]["hostnames"],
            json!(["hooks.example.com"])
        );
        let rule = &route.data["spec"]["rules"][0];
        assert_eq!(
            rule["matches"][2]["path"],
            json!({"type": "Exact", "value": "/signed"})
        );
        assert_eq!(
            rule["backendRefs"][0],
            json!({"name": "github-receiver", "port": 80})
        );
        assert_eq!(with.routes[0].url, "http://hooks.example.com/github");
        let text = serde_json::to_value(&route).unwrap();
        assert_eq!(text["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(text["kind"], "HTTPRoute");
    }

    #[test]
    fn sizes_read_as_kubernetes_quantities() {
        let bytes = |q: &str| quantity_bytes(&Quantity(q.into()));
        assert_eq!(bytes("1Gi"), Ok(1 << 30));
        assert_eq!(bytes("500Mi"), Ok(500 << 20));
        assert_eq!(bytes("2G"), Ok(2_000_000_000));
        assert_eq!(bytes("1048576"), Ok(1 << 20));
        assert!(bytes("lots").is_err());
        let mut wi = github();
        wi.spec.spool.size = Quantity("1Ki".into());
        let secrets = resolve_secrets(&wi, &secret_data(b"x")).unwrap();
        let error = plan(&wi, &topics(), &secrets, None, &settings(), false).unwrap_err();
        assert_eq!(error.field, "spec.spool.size");
    }
}
