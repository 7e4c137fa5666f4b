//! What a WebhookIngress becomes, as pure functions: the hook-receiver config (the receiver's
//! own type, written as YAML), its ConfigMap, Deployment, Service, PodDisruptionBudget, spool
//! claim, Ingress or HTTPRoute, the routes' URLs and the checksum that rolls the pods.
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
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, EnvVar,
    EnvVarSource, HTTPGetAction, ObjectFieldSelector, PersistentVolumeClaim,
    PersistentVolumeClaimVolumeSource, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
    SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
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

/// The name of the Deployment, Service, ConfigMap, PodDisruptionBudget and Ingress or
/// HTTPRoute of the WebhookIngress `name`.
pub fn workload_name(name: &str) -> String {
    format!("{name}-receiver")
}

/// The name of the spool claim, when the spec asks for one.
pub fn spool_claim_name(name: &str) -> String {
    format!("{name}-spool")
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
    let max_bytes = quantity_bytes(&wi.spec.spool.size_limit)
        .map_err(|reason| invalid("spec.spool.sizeLimit", reason))?;
    if max_bytes < 1 << 20 {
        return Err(invalid("spec.spool.sizeLimit", "must be at least 1Mi"));
    }
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

/// Everything the controller applies for one WebhookIngress.
#[derive(Debug, Clone)]
pub struct IngressPlan {
    pub config_text: String,
    /// Over the config text and every Secret value the pods read.
    pub checksum: String,
    pub config_map: ConfigMap,
    pub deployment: Deployment,
    pub service: Service,
    pub pdb: PodDisruptionBudget,
    /// Created once and never pruned: it may hold spooled events.
    pub spool_claim: Option<PersistentVolumeClaim>,
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
        deployment: desired_deployment(wi, secrets, settings, &config, &checksum),
        service: desired_service(wi),
        pdb: desired_pdb(wi),
        spool_claim: desired_spool_claim(wi),
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

pub fn desired_spool_claim(wi: &WebhookIngress) -> Option<PersistentVolumeClaim> {
    let spec = wi.spec.spool.persistent_volume_claim.clone()?;
    Some(PersistentVolumeClaim {
        metadata: metadata(wi, spool_claim_name(&wi.name_any())),
        spec: Some(spec),
        ..Default::default()
    })
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

pub fn desired_deployment(
    wi: &WebhookIngress,
    secrets: &[Option<SecretKey>],
    settings: &WorkloadSettings,
    config: &ReceiverConfig,
    checksum: &str,
) -> Deployment {
    let name = wi.name_any();
    let workload = workload_name(&name);
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
    let spool_mount = VolumeMount {
        name: "spool".into(),
        mount_path: SPOOL_DIR.into(),
        ..Default::default()
    };
    match &wi.spec.spool.persistent_volume_claim {
        Some(_) => {
            volumes.push(Volume {
                name: "spool".into(),
                persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                    claim_name: spool_claim_name(&name),
                    ..Default::default()
                }),
                ..Default::default()
            });
            // Replicas share the claim, and each needs a spool directory of its own.
            mounts.push(VolumeMount {
                sub_path_expr: Some("$(POD_NAME)".into()),
                ..spool_mount
            });
        }
        None => {
            volumes.push(Volume {
                name: "spool".into(),
                empty_dir: Some(EmptyDirVolumeSource {
                    size_limit: Some(wi.spec.spool.size_limit.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            });
            mounts.push(spool_mount);
        }
    }

    let container = Container {
        name: CONTAINER.into(),
        image: Some(settings.image.clone()),
        image_pull_policy: settings.image_pull_policy.clone(),
        command: Some(vec!["hook-receiver".into()]),
        args: Some(vec!["--config".into(), config_path()]),
        ports: Some(vec![
            ContainerPort {
                name: Some("http".into()),
                container_port: HTTP_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
            ContainerPort {
                name: Some("admin".into()),
                container_port: ADMIN_PORT,
                protocol: Some("TCP".into()),
                ..Default::default()
            },
        ]),
        // HOSTNAME names the replica in lifecycle events (the receiver's `instance`), also
        // where the Pod does not run in a container of its own.
        env: Some(vec![pod_name_env("POD_NAME"), pod_name_env("HOSTNAME")]),
        readiness_probe: Some(Probe {
            http_get: Some(http_get("/readyz")),
            period_seconds: Some(2),
            failure_threshold: Some(3),
            ..Default::default()
        }),
        liveness_probe: Some(Probe {
            http_get: Some(http_get("/healthz")),
            period_seconds: Some(10),
            failure_threshold: Some(3),
            ..Default::default()
        }),
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
    let grace = config.shutdown_timeout.as_secs() as i64 + SHUTDOWN_MARGIN_SECONDS;
    Deployment {
        metadata: metadata(wi, workload),
        spec: Some(DeploymentSpec {
            replicas: Some(wi.spec.replicas),
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
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    security_context: Some(workload::pod_security_context()),
                    termination_grace_period_seconds: Some(grace),
                    // The receiver never talks to the API server.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    ..Default::default()
                }),
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
        assert_eq!(config.spool.max_bytes, 1 << 30);
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
            .deployment
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

        let pod = with.deployment.spec.unwrap().template.spec.unwrap();
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
        let pod = plan.deployment.spec.unwrap().template.spec.unwrap();
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
    fn the_deployment_runs_hook_receiver_from_the_workload_image_with_its_probes_and_mounts() {
        let plan = plan_of(&github(), b"x", false);
        let deployment = plan.deployment;
        assert_eq!(deployment.metadata.name.as_deref(), Some("github-receiver"));
        let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.uid, "0000-1111");
        assert_eq!(owner.controller, Some(true));
        let spec = deployment.spec.unwrap();
        assert_eq!(spec.replicas, Some(2));
        let template = spec.template;
        let labels = template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels, workload::labels("hook-receiver", "github"));
        let pod = template.spec.unwrap();
        assert_eq!(pod.termination_grace_period_seconds, Some(40));
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
        let spool = volumes.iter().find(|v| v.name == "spool").unwrap();
        assert_eq!(
            spool.empty_dir.as_ref().unwrap().size_limit,
            Some(Quantity("1Gi".into()))
        );
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
            .deployment
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
    fn a_claim_spool_gets_its_own_directory_per_pod() {
        let mut wi = github();
        wi.spec.spool.persistent_volume_claim = Some(
            serde_json::from_value(json!({"accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "2Gi"}}}))
            .unwrap(),
        );
        let plan = plan_of(&wi, b"x", false);
        let claim = plan.spool_claim.unwrap();
        assert_eq!(claim.metadata.name.as_deref(), Some("github-spool"));
        let pod = plan.deployment.spec.unwrap().template.spec.unwrap();
        let spool = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "spool")
            .unwrap();
        assert_eq!(
            spool.persistent_volume_claim.unwrap().claim_name,
            "github-spool"
        );
        let mount = pod.containers[0]
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "spool")
            .cloned()
            .unwrap();
        assert_eq!(mount.sub_path_expr.as_deref(), Some("$(POD_NAME)"));
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
        wi.spec.spool.size_limit = Quantity("1Ki".into());
        let secrets = resolve_secrets(&wi, &secret_data(b"x")).unwrap();
        let error = plan(&wi, &topics(), &secrets, None, &settings(), false).unwrap_err();
        assert_eq!(error.field, "spec.spool.sizeLimit");
    }
}
