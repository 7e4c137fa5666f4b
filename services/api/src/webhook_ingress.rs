//! `WebhookIngress`: a `hook-receiver` StatefulSet, Service and ConfigMap that verify webhooks
//! and publish each one to Kafka as a CloudEvent, route by route.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use crate::duration::Duration;

/// Receives webhooks on a set of routes and publishes them to EventTopics.
// Several printcolumn(...) lists share `type_ = "integer"`, which clippy mistakes for a
// repeated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "bridge.omninode.io",
    version = "v1alpha1",
    kind = "WebhookIngress",
    plural = "webhookingresses",
    namespaced,
    shortname = "wi",
    status = "WebhookIngressStatus",
    derive = "PartialEq",
    doc = "A webhook receiver: verifies each request on its routes and publishes it to an EventTopic as a CloudEvent, spooling to disk while Kafka is away",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(
        name = "Ready Replicas",
        type_ = "integer",
        json_path = ".status.readyReplicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct WebhookIngressSpec {
    /// Receiver replicas, default 2.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0))]
    pub replicas: i32,

    /// The routes, each a path on the receiver that publishes to one EventTopic.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(
        merge_strategy = ListMerge::Map(vec!["name".into()]),
        validation = Rule::new("self.all(r, self.exists_one(o, o.path == r.path))").message(
            "route paths must be unique within a WebhookIngress: give each route its own path"
        ),
        validation = Rule::new("self.all(r, self.exists_one(o, o.name == r.name))").message(
            "route names must be unique within a WebhookIngress: give each route its own name"
        )
    )]
    pub routes: Vec<Route>,

    /// Each replica's spool, which holds acknowledged events while Kafka is away: a
    /// PersistentVolumeClaim per replica that outlives its Pods. Fixed at creation.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message(
        "spec.spool is fixed at creation: each replica's claim is made from it and a StatefulSet's claim template cannot change; create a new WebhookIngress for another size or StorageClass"
    ))]
    pub spool: Spool,

    /// Make the routes reachable from outside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expose: Option<Expose>,
}

fn default_replicas() -> i32 {
    2
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(credential_header_rule("eventType")).message(
        "eventType.header names a header that carries a credential (Authorization, X-Hub-Signature-256, X-Hub-Signature, webhook-signature, or this route's hmac header); its value would be published with every event: read the type from another header, the body or a fixed value"
    ),
    validation = Rule::new(credential_header_rule("correlationId")).message(
        "correlationId.header names a header that carries a credential (Authorization, X-Hub-Signature-256, X-Hub-Signature, webhook-signature, or this route's hmac header); its value would become every event's Kafka key: read the id from another header or the body"
    )
)]
pub struct Route {
    /// Route name, a DNS label; part of each event's CloudEvents source.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message(
        "route name must be a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit"
    ))]
    pub name: String,

    /// HTTP path on the receiver, such as `/github`; unique within the WebhookIngress. No
    /// `{`, `}` or `*`, and no segment starting with `:`: the receiver's router reads them
    /// as captures (and would not start).
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(
        validation = Rule::new("self.startsWith('/')").message(
            "route path must start with '/', for example /github"
        ),
        validation = Rule::new("!self.matches('[{}*]') && !self.contains('/:')").message(
            "route path must not contain '{', '}' or '*', nor a segment starting with ':': the receiver's router reads them as captures; write the literal path, for example /hooks/github"
        )
    )]
    pub path: String,

    /// EventTopic (in this namespace) the events are published to.
    #[schemars(length(min = 1, max = 253))]
    pub topic: String,

    /// Where the CloudEvents type comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_type: Option<EventTypeSource>,

    /// Where the correlation id (the Kafka record key) comes from; generated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<CorrelationIdSource>,

    /// How requests are verified: exactly one kind.
    pub auth: RouteAuth,

    /// Largest accepted body; larger ones get 413. Default 1 MiB.
    #[serde(default = "default_max_body_bytes")]
    #[schemars(range(min = 1))]
    pub max_body_bytes: i64,

    /// A delivery id seen again within this window by the same receiver is acknowledged but
    /// not published twice. Each replica keeps its own window: a retry that reaches another
    /// replica is published again, with the same CloudEvent id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_window: Option<Duration>,
}

fn default_max_body_bytes() -> i64 {
    1024 * 1024
}

/// Headers that carry a credential on any route (compared in lower case); a route's own
/// `hmac.header` is added by [`credential_header_rule`]. The receiver refuses the same.
pub const CREDENTIAL_HEADERS: [&str; 4] = [
    "authorization",
    "x-hub-signature-256",
    "x-hub-signature",
    "webhook-signature",
];

/// CEL on a Route: `field` (eventType or correlationId) does not read a credential header.
fn credential_header_rule(field: &str) -> String {
    let names = CREDENTIAL_HEADERS
        .iter()
        .map(|name| format!("'{name}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "!has(self.{field}) || !has(self.{field}.header) || !(self.{field}.header.lowerAscii() in [{names}] || (has(self.auth.hmac) && self.{field}.header.lowerAscii() == self.auth.hmac.header.lowerAscii()))"
    )
}

/// The rule shared by every JSON pointer field: RFC 6901 pointers into the body start with `/`.
const JSON_POINTER_RULE: &str = "self.startsWith('/')";
const JSON_POINTER_MESSAGE: &str = "jsonPointer must start with '/', for example /action";

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.header) ? 1 : 0) + (has(self.jsonPointer) ? 1 : 0) + (has(self.value) ? 1 : 0) == 1"
).message("eventType needs exactly one of header, jsonPointer or value"))]
pub struct EventTypeSource {
    /// Request header holding the type, such as `X-GitHub-Event`; not `Authorization` nor a
    /// signature header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// JSON pointer into the body, such as `/action`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(JSON_POINTER_RULE).message(JSON_POINTER_MESSAGE))]
    pub json_pointer: Option<String>,
    /// A fixed type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub value: Option<String>,
    /// Put before the type, such as `com.github.`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub prefix: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.header) != has(self.jsonPointer)").message(
    "correlationId needs exactly one of header or jsonPointer"
))]
pub struct CorrelationIdSource {
    /// Request header holding the id, such as `X-GitHub-Delivery`; not `Authorization` nor a
    /// signature header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub header: Option<String>,
    /// JSON pointer into the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new(JSON_POINTER_RULE).message(JSON_POINTER_MESSAGE))]
    pub json_pointer: Option<String>,
}

/// Exactly one verification kind; `none: {}` turns verification off and must be written out.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(has(self.github) ? 1 : 0) + (has(self.standardWebhooks) ? 1 : 0) + (has(self.hmac) ? 1 : 0) + (has(self.bearer) ? 1 : 0) + (has(self.none) ? 1 : 0) == 1"
).message(
    "auth needs exactly one of github, standardWebhooks, hmac, bearer or none (write none: {} to accept unsigned requests)"
))]
pub struct RouteAuth {
    /// GitHub's `X-Hub-Signature-256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<SecretAuth>,
    /// Standard Webhooks: webhook-id, webhook-timestamp (±5 min) and webhook-signature.
    /// With no key in secretRef every key of the Secret is accepted, so secrets can rotate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standard_webhooks: Option<SecretAuth>,
    /// A generic HMAC signature header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hmac: Option<HmacAuth>,
    /// `Authorization: Bearer <token>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer: Option<SecretAuth>,
    /// No verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub none: Option<NoAuth>,
}

/// The verification kind of a route, for code that matches on it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AuthKind<'a> {
    Github(&'a SecretAuth),
    StandardWebhooks(&'a SecretAuth),
    Hmac(&'a HmacAuth),
    Bearer(&'a SecretAuth),
    None,
}

impl RouteAuth {
    /// The one kind set, or `None` when the object breaks the exactly-one rule (which the
    /// API server refuses, so only a hand-made value can).
    pub fn kind(&self) -> Option<AuthKind<'_>> {
        let kinds = [
            self.github.as_ref().map(AuthKind::Github),
            self.standard_webhooks
                .as_ref()
                .map(AuthKind::StandardWebhooks),
            self.hmac.as_ref().map(AuthKind::Hmac),
            self.bearer.as_ref().map(AuthKind::Bearer),
            self.none.as_ref().map(|_| AuthKind::None),
        ];
        let mut set = kinds.into_iter().flatten();
        match (set.next(), set.next()) {
            (Some(kind), None) => Some(kind),
            _ => None,
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretAuth {
    pub secret_ref: SecretRef,
}

/// A Secret in the object's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the Secret; default `secret` (standardWebhooks: every key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HmacAuth {
    pub secret_ref: SecretRef,
    /// Request header carrying the signature.
    #[schemars(length(min = 1, max = 256))]
    pub header: String,
    /// `sha256` (default) or `sha512`.
    #[serde(default)]
    pub algorithm: HmacAlgorithm,
    /// `hex` (default) or `base64`.
    #[serde(default)]
    pub encoding: HmacEncoding,
    /// Text before the signature in the header, such as `sha256=`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub prefix: Option<String>,
}

#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum HmacAlgorithm {
    #[default]
    Sha256,
    Sha512,
}

#[derive(
    Serialize, Deserialize, schemars::JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum HmacEncoding {
    #[default]
    Hex,
    Base64,
}

/// `none: {}`: deliberately no verification.
#[derive(Serialize, Deserialize, schemars::JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
pub struct NoAuth {}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Spool {
    /// The storage each replica's claim requests, at least 8Mi. The spool holds up to an
    /// eighth less (at least 2Mi less), room for the filesystem's own use; past that the
    /// receiver answers 503. Default 1Gi.
    #[serde(default = "default_spool_size")]
    pub size: Quantity,
    /// The claims' StorageClass; when absent, the operator's default
    /// (`--spool-storage-class`), else the cluster's default StorageClass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub storage_class_name: Option<String>,
}

fn default_spool_size() -> Quantity {
    Quantity("1Gi".into())
}

impl Default for Spool {
    fn default() -> Self {
        Self {
            size: default_spool_size(),
            storage_class_name: None,
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.ingress) != has(self.httpRoute)").message(
    "expose needs exactly one of ingress or httpRoute"
))]
pub struct Expose {
    /// An Ingress for the routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressExpose>,
    /// A Gateway API HTTPRoute for the routes (needs the Gateway API CRDs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_route: Option<HttpRouteExpose>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct IngressExpose {
    /// IngressClass name; the cluster default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub class_name: Option<String>,
    /// Host name senders use.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Secret holding the TLS certificate for host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub tls_secret_name: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteExpose {
    /// Gateways (or their listeners) the route attaches to.
    #[schemars(length(min = 1, max = 32))]
    pub parent_refs: Vec<ParentRef>,
    /// Host names the route answers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(min = 1, max = 253)))]
    pub hostnames: Vec<String>,
}

/// A Gateway API parent reference.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub namespace: Option<String>,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub section_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebhookIngressStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, and Paused or Degraded where they apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Receiver replicas that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,
    /// Where each route is reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub routes: Vec<RouteStatus>,
    /// Each replica's spool claim and the events it holds, including claims of replicas
    /// scaled away (or of a WebhookIngress being deleted) until they are drained.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["claim".into()]))]
    pub spools: Vec<SpoolStatus>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SpoolStatus {
    /// The PersistentVolumeClaim.
    pub claim: String,
    /// `Serving`: a replica spools into it. `Draining`: no replica has it any more, and a
    /// drain Job is sending what it holds to Kafka; the claim is deleted once it is empty.
    /// `Pending`: the claim waits for a volume.
    pub state: String,
    /// The Pod that has the claim mounted: the replica or the drain Job's Pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Events in the spool not yet in Kafka, as that Pod last reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub records: Option<i64>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    /// The route's name.
    pub name: String,
    /// The external URL when exposed, else the Service's.
    pub url: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(spec: serde_json::Value) -> WebhookIngress {
        serde_json::from_value(json!({
            "apiVersion": "bridge.omninode.io/v1alpha1",
            "kind": "WebhookIngress",
            "metadata": {"name": "github", "namespace": "team-a"},
            "spec": spec,
        }))
        .unwrap()
    }

    #[test]
    fn a_minimal_route_reads_as_the_documented_defaults() {
        let wi = ingress(json!({"routes": [
            {"name": "github", "path": "/github", "topic": "tool-execution-events",
             "auth": {"none": {}}}
        ]}));
        assert_eq!(wi.spec.replicas, 2);
        assert_eq!(wi.spec.routes[0].max_body_bytes, 1_048_576);
        assert_eq!(wi.spec.spool.size.0, "1Gi");
        assert_eq!(wi.spec.routes[0].auth.kind(), Some(AuthKind::None));
    }

    #[test]
    fn explicit_none_auth_survives_a_round_trip() {
        let auth = RouteAuth {
            none: Some(NoAuth {}),
            ..Default::default()
        };
        assert_eq!(serde_json::to_value(&auth).unwrap(), json!({"none": {}}));
    }

    #[test]
    fn auth_kind_is_refused_when_none_or_two_are_set() {
        let secret = SecretAuth {
            secret_ref: SecretRef {
                name: "github".into(),
                key: None,
            },
        };
        let two = RouteAuth {
            github: Some(secret.clone()),
            bearer: Some(secret.clone()),
            ..Default::default()
        };
        assert_eq!(two.kind(), None);
        assert_eq!(RouteAuth::default().kind(), None);
        let one = RouteAuth {
            github: Some(secret.clone()),
            ..Default::default()
        };
        assert_eq!(one.kind(), Some(AuthKind::Github(&secret)));
    }

    #[test]
    fn hmac_defaults_to_sha256_in_hex() {
        let hmac: HmacAuth = serde_json::from_value(json!({
            "secretRef": {"name": "s"}, "header": "X-Signature"
        }))
        .unwrap();
        assert_eq!(hmac.algorithm, HmacAlgorithm::Sha256);
        assert_eq!(hmac.encoding, HmacEncoding::Hex);
    }

    #[test]
    fn routes_are_a_list_map_keyed_by_name_with_bounded_size() {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(WebhookIngress::crd()).unwrap();
        let routes = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["routes"];
        assert_eq!(routes["x-kubernetes-list-type"], "map");
        assert_eq!(routes["x-kubernetes-list-map-keys"], json!(["name"]));
        assert_eq!(routes["maxItems"], 64);
    }
}
