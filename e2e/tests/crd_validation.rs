//! The CRDs in `crds/` on the real API server: each schema and CEL rule refuses a bad object
//! with its own message, the transition rules refuse renames and shrinking, and a minimal
//! object of each kind is accepted with its defaults filled in.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use bridge_e2e::{Stack, TestNamespace, crd_established, eventually};
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use serde_json::{Value, json};

const BOUND: Duration = Duration::from_secs(60);
const GROUP: &str = "bridge.omninode.io";
const VERSION: &str = "v1alpha1";
const FIELD_MANAGER: &str = "bridge-e2e";

#[derive(Clone, Copy)]
enum Kind {
    EventTopic,
    EventConsumer,
    WebhookIngress,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::EventTopic, Kind::EventConsumer, Kind::WebhookIngress];

    fn name(self) -> &'static str {
        match self {
            Kind::EventTopic => "EventTopic",
            Kind::EventConsumer => "EventConsumer",
            Kind::WebhookIngress => "WebhookIngress",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::EventTopic => "eventtopics",
            Kind::EventConsumer => "eventconsumers",
            Kind::WebhookIngress => "webhookingresses",
        }
    }

    fn resource(self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(GROUP, VERSION, self.name()),
            self.plural(),
        )
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// kubectl from the stack (on PATH after `eval "$(e2e/stack.sh env)"`), else where
/// `stack.sh` puts it.
fn kubectl() -> Command {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("kubectl").is_file()));
    if on_path {
        Command::new("kubectl")
    } else {
        Command::new(repo_root().join("target/stack/bin/kubectl"))
    }
}

fn run(command: &mut Command) -> String {
    let output = command.output().expect("kubectl runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("kubectl prints UTF-8")
}

/// Applies `crds/` once per test binary, server-side with our field manager (forcing, so a
/// CRD another test run applied is simply taken over), the way a user's `kubectl` would.
fn apply_crds_once() {
    static APPLIED: OnceLock<()> = OnceLock::new();
    APPLIED.get_or_init(|| {
        run(kubectl()
            .args(["apply", "--server-side", "--force-conflicts"])
            .args(["--field-manager", FIELD_MANAGER, "-f"])
            .arg(repo_root().join("crds")));
    });
}

/// A namespace of the test's own with the three CRDs installed and served; the namespace is
/// deleted when the test ends, pass or fail.
struct Fixture {
    client: Client,
    namespace: TestNamespace,
}

impl Fixture {
    async fn new(prefix: &str) -> Self {
        let client = Stack::from_env().unwrap().kube_client().await;
        apply_crds_once();
        for kind in Kind::ALL {
            crd_established(&client, &format!("{}.{GROUP}", kind.plural())).await;
        }
        let namespace = TestNamespace::create(&client, prefix).await;
        let fixture = Self { client, namespace };
        // Established comes a moment before the new resources are served.
        for kind in Kind::ALL {
            let api = fixture.api(kind);
            eventually(
                &format!("{} to be served", kind.plural()),
                BOUND,
                || async { api.list(&ListParams::default()).await.ok() },
            )
            .await;
        }
        fixture
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace.name, &kind.resource())
    }

    async fn create(&self, kind: Kind, name: &str, spec: Value) -> Result<Value, kube::Error> {
        let object = DynamicObject::new(name, &kind.resource()).data(json!({"spec": spec}));
        let created = self
            .api(kind)
            .create(&PostParams::default(), &object)
            .await?;
        Ok(created.data)
    }

    async fn patch_spec(&self, kind: Kind, name: &str, spec: Value) -> Result<Value, kube::Error> {
        let patch = Patch::Merge(json!({"spec": spec}));
        let patched = self
            .api(kind)
            .patch(name, &PatchParams::default(), &patch)
            .await?;
        Ok(patched.data)
    }

    /// Creates each case and returns a line per case the API server did not refuse with a
    /// 422 carrying the expected message.
    async fn refusals(&self, kind: Kind, cases: &[Case]) -> Vec<String> {
        let mut failures = Vec::new();
        for (i, case) in cases.iter().enumerate() {
            let name = case
                .name
                .map(str::to_owned)
                .unwrap_or_else(|| format!("bad-{i}"));
            match self.create(kind, &name, case.spec.clone()).await {
                Err(kube::Error::Api(status))
                    if status.code == 422 && status.message.contains(case.message) => {}
                Err(kube::Error::Api(status)) => failures.push(format!(
                    "{}: {} ({}): expected 422 containing {:?}, got {}: {}",
                    kind.name(),
                    case.what,
                    case.spec,
                    case.message,
                    status.code,
                    status.message
                )),
                Err(other) => failures.push(format!("{}: {}: {other}", kind.name(), case.what)),
                Ok(_) => failures.push(format!(
                    "{}: {} ({}): was accepted",
                    kind.name(),
                    case.what,
                    case.spec
                )),
            }
        }
        failures
    }
}

/// One object that breaks exactly one rule (the API server skips CEL rules once a schema
/// rule has failed, so a case never mixes them), and the text its refusal must contain.
struct Case {
    what: &'static str,
    name: Option<&'static str>,
    spec: Value,
    message: &'static str,
}

fn case(what: &'static str, spec: Value, message: &'static str) -> Case {
    Case {
        what,
        name: None,
        spec,
        message,
    }
}

fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} rule(s) did not refuse as specified:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

const DURATION_MESSAGE: &str =
    "must be a duration: a whole number and one unit of ms, s, m, h or d, for example 200ms";

const CAPTURE_PATH_MESSAGE: &str =
    "route path must not contain '{', '}' or '*', nor a segment starting with ':'";

fn consumer(extra: Value) -> Value {
    let mut spec =
        json!({"topics": ["orders"], "sink": {"url": "http://sink.team-a.svc:8080/events"}});
    merge(&mut spec, extra);
    spec
}

fn route(extra: Value) -> Value {
    let mut route =
        json!({"name": "github", "path": "/github", "topic": "orders", "auth": {"none": {}}});
    merge(&mut route, extra);
    route
}

/// JSON merge patch semantics: objects merge, anything else replaces, null removes.
fn merge(target: &mut Value, patch: Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(&key);
                } else {
                    merge(target.entry(key).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch,
    }
}

#[tokio::test]
async fn minimal_objects_are_accepted_with_their_defaults_filled_in() {
    let f = Fixture::new("e2e-crd-defaults").await;

    let topic = f
        .create(Kind::EventTopic, "orders", json!({}))
        .await
        .unwrap();
    assert_eq!(
        topic["spec"],
        json!({
            "partitions": 6,
            "replicationFactor": 3,
            "retention": "30d",
            "cleanupPolicy": "delete",
            "deletionPolicy": "Retain"
        })
    );

    let consumer = f
        .create(Kind::EventConsumer, "coordinator", consumer(json!({})))
        .await
        .unwrap();
    assert_eq!(
        consumer["spec"]["delivery"],
        json!({
            "ordering": "key",
            "retry": {"attempts": 5, "initialBackoff": "200ms", "maxBackoff": "30s", "jitter": true},
            "timeout": "10s",
            "maxInFlight": 64
        })
    );
    assert_eq!(consumer["spec"]["startFrom"], "latest");
    // No schema default for replicas: it would collide with autoscaling. The operator runs 1.
    assert!(consumer["spec"].get("replicas").is_none());

    let ingress = f
        .create(
            Kind::WebhookIngress,
            "github",
            json!({"routes": [route(json!({}))]}),
        )
        .await
        .unwrap();
    assert_eq!(ingress["spec"]["replicas"], 2);
    assert_eq!(ingress["spec"]["routes"][0]["maxBodyBytes"], 1_048_576);
    assert_eq!(ingress["spec"]["routes"][0]["auth"], json!({"none": {}}));
    assert_eq!(ingress["spec"]["spool"], json!({"size": "1Gi"}));
}

#[tokio::test]
async fn fully_specified_objects_are_accepted() {
    let f = Fixture::new("e2e-crd-full").await;

    f.create(
        Kind::EventTopic,
        "workflow-state",
        json!({
            "topicName": "workflow.state_v1",
            "partitions": 12,
            "replicationFactor": 3,
            "retention": "infinite",
            "cleanupPolicy": "compact,delete",
            "config": {"min.insync.replicas": "2", "segment.ms": "3600000"},
            "deletionPolicy": "Delete"
        }),
    )
    .await
    .unwrap();

    f.create(
        Kind::EventConsumer,
        "coordinator",
        json!({
            "topics": ["workflow-events", "tool-execution-events"],
            "groupId": "team-a.coordinator",
            "autoscaling": {"minReplicas": 1, "maxReplicas": 6, "lagThreshold": 500},
            "sink": {"service": {"name": "coordinator", "port": 8080, "path": "/events"}},
            "filter": {"types": ["workflow.task.*", "workflow.run.*"]},
            "delivery": {
                "ordering": "partition",
                "retry": {"attempts": 10, "initialBackoff": "100ms", "maxBackoff": "1m", "jitter": false},
                "timeout": "30s",
                "deadLetterTopic": "workflow-events-dlq",
                "maxInFlight": 128
            },
            "startFrom": "earliest",
            "replay": {"from": "2026-11-01T00:00:00Z"}
        }),
    )
    .await
    .unwrap();

    let secret = |name: &str| json!({"secretRef": {"name": name}});
    f.create(
        Kind::WebhookIngress,
        "hooks",
        json!({
            "replicas": 3,
            "routes": [
                {"name": "github", "path": "/github", "topic": "tool-execution-events",
                 "eventType": {"header": "X-GitHub-Event", "prefix": "com.github."},
                 "correlationId": {"header": "X-GitHub-Delivery"},
                 "auth": {"github": secret("github")},
                 "maxBodyBytes": 4_194_304, "dedupeWindow": "10m"},
                {"name": "billing", "path": "/billing", "topic": "audit-events",
                 "eventType": {"jsonPointer": "/type"},
                 "correlationId": {"jsonPointer": "/data/id"},
                 "auth": {"standardWebhooks": secret("billing")}},
                {"name": "ci", "path": "/ci/v1:finished", "topic": "workflow-events",
                 "eventType": {"value": "com.example.ci.finished"},
                 "correlationId": {"header": "X-Request-Id"},
                 "auth": {"hmac": {"secretRef": {"name": "ci", "key": "token"}, "header": "X-Signature",
                                   "algorithm": "sha512", "encoding": "base64", "prefix": "sha512="}}},
                {"name": "alerts", "path": "/alerts", "topic": "audit-events",
                 "auth": {"bearer": secret("alerts")}}
            ],
            "spool": {"size": "2Gi", "storageClassName": "fast"},
            "expose": {"ingress": {"className": "nginx", "host": "hooks.example.com", "tlsSecretName": "hooks-tls"}}
        }),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn event_topic_schema_refuses_each_invalid_spec_with_its_message() {
    let f = Fixture::new("e2e-crd-et").await;
    let long_name: &'static str = "a".repeat(250).leak();
    let cases = [
        case(
            "topicName with a character Kafka forbids",
            json!({"topicName": "orders/v1"}),
            "topicName must be 1 to 249 letters, digits, '.', '_' or '-'",
        ),
        case(
            "topicName '..'",
            json!({"topicName": ".."}),
            "topicName must be 1 to 249 letters, digits, '.', '_' or '-'",
        ),
        case(
            "topicName of Kafka's offsets topic",
            json!({"topicName": "__consumer_offsets"}),
            "topicName must not start with '_': such names are internal topics of Kafka",
        ),
        case(
            "topicName of a schema registry's topic",
            json!({"topicName": "_schemas"}),
            "topicName must not start with '_'",
        ),
        case(
            "topicName longer than Kafka allows",
            json!({"topicName": long_name}),
            "spec.topicName: Too long: may not be more than 249",
        ),
        Case {
            what: "an object name too long for a topic, and no topicName",
            name: Some(long_name),
            spec: json!({}),
            message: "metadata.name is longer than the 249 characters Kafka allows in a topic name: set spec.topicName",
        },
        case(
            "no partitions",
            json!({"partitions": 0}),
            "spec.partitions in body should be greater than or equal to 1",
        ),
        case(
            "too many partitions",
            json!({"partitions": 10001}),
            "spec.partitions in body should be less than or equal to 10000",
        ),
        case(
            "replication factor 0",
            json!({"replicationFactor": 0}),
            "spec.replicationFactor in body should be greater than or equal to 1",
        ),
        case(
            "retention in years",
            json!({"retention": "1y"}),
            "retention must be a duration such as 30d, 12h or 90m",
        ),
        case(
            "retention 'forever'",
            json!({"retention": "forever"}),
            "or `infinite` to keep records forever",
        ),
        case(
            "an unknown cleanup policy",
            json!({"cleanupPolicy": "compaction"}),
            r#"spec.cleanupPolicy: Unsupported value: "compaction": supported values: "delete", "compact", "compact,delete""#,
        ),
        case(
            "a lowercase deletion policy",
            json!({"deletionPolicy": "delete"}),
            r#"spec.deletionPolicy: Unsupported value: "delete": supported values: "Retain", "Delete""#,
        ),
        case(
            "retention.ms in config",
            json!({"config": {"retention.ms": "1000"}}),
            "config must not set retention.ms or cleanup.policy: use spec.retention and spec.cleanupPolicy instead",
        ),
        case(
            "cleanup.policy in config",
            json!({"config": {"cleanup.policy": "compact"}}),
            "config must not set retention.ms or cleanup.policy",
        ),
    ];
    assert_no_failures(f.refusals(Kind::EventTopic, &cases).await);
}

#[tokio::test]
async fn event_consumer_schema_refuses_each_invalid_spec_with_its_message() {
    let f = Fixture::new("e2e-crd-ec").await;
    let cases = [
        case(
            "no topics",
            consumer(json!({"topics": []})),
            "spec.topics in body should have at least 1 items",
        ),
        case(
            "the same topic twice",
            consumer(json!({"topics": ["orders", "orders"]})),
            r#"spec.topics[1]: Duplicate value: "orders""#,
        ),
        case(
            "negative replicas",
            consumer(json!({"replicas": -1})),
            "spec.replicas in body should be greater than or equal to 0",
        ),
        case(
            "replicas and autoscaling",
            consumer(json!({"replicas": 2, "autoscaling": {"maxReplicas": 4}})),
            "set either replicas or autoscaling, not both",
        ),
        case(
            "minReplicas above maxReplicas",
            consumer(json!({"autoscaling": {"minReplicas": 5, "maxReplicas": 2}})),
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        ),
        case(
            "a sink with neither url nor service",
            consumer(json!({"sink": {"url": null}})),
            "sink needs exactly one of url or service",
        ),
        case(
            "a sink with both url and service",
            consumer(json!({"sink": {"service": {"name": "coordinator"}}})),
            "sink needs exactly one of url or service",
        ),
        case(
            "a sink URL that is not http",
            consumer(json!({"sink": {"url": "ftp://files.example.com/in"}})),
            "sink.url must be an absolute http:// or https:// URL",
        ),
        case(
            "a relative sink URL",
            consumer(json!({"sink": {"url": "/events"}})),
            "sink.url must be an absolute http:// or https:// URL",
        ),
        case(
            "a sink URL with credentials",
            consumer(json!({"sink": {"url": "https://svc:secret@sink.example.com/events"}})),
            "sink.url must not carry credentials",
        ),
        case(
            "a sink service port out of range",
            consumer(
                json!({"sink": {"url": null, "service": {"name": "coordinator", "port": 70000}}}),
            ),
            "spec.sink.service.port in body should be less than or equal to 65535",
        ),
        case(
            "a sink service path without '/'",
            consumer(
                json!({"sink": {"url": null, "service": {"name": "coordinator", "path": "events"}}}),
            ),
            "sink.service.path must start with '/'",
        ),
        case(
            "an unknown ordering",
            consumer(json!({"delivery": {"ordering": "fifo"}})),
            r#"spec.delivery.ordering: Unsupported value: "fifo": supported values: "key", "partition", "unordered""#,
        ),
        case(
            "zero attempts",
            consumer(json!({"delivery": {"retry": {"attempts": 0}}})),
            "spec.delivery.retry.attempts in body should be greater than or equal to 1",
        ),
        case(
            "a fractional initialBackoff",
            consumer(json!({"delivery": {"retry": {"initialBackoff": "1.5s"}}})),
            DURATION_MESSAGE,
        ),
        case(
            "a maxBackoff without unit",
            consumer(json!({"delivery": {"retry": {"maxBackoff": "30"}}})),
            DURATION_MESSAGE,
        ),
        case(
            "a timeout in words",
            consumer(json!({"delivery": {"timeout": "ten seconds"}})),
            DURATION_MESSAGE,
        ),
        case(
            "maxInFlight 0",
            consumer(json!({"delivery": {"maxInFlight": 0}})),
            "spec.delivery.maxInFlight in body should be greater than or equal to 1",
        ),
        case(
            "an unknown startFrom",
            consumer(json!({"startFrom": "beginning"})),
            r#"spec.startFrom: Unsupported value: "beginning": supported values: "latest", "earliest""#,
        ),
        case(
            "a replay time that is not RFC 3339",
            consumer(json!({"replay": {"from": "yesterday"}})),
            "spec.replay.from in body must be of type date-time",
        ),
    ];
    assert_no_failures(f.refusals(Kind::EventConsumer, &cases).await);
}

#[tokio::test]
async fn webhook_ingress_schema_refuses_each_invalid_spec_with_its_message() {
    let f = Fixture::new("e2e-crd-wi").await;
    let one = |extra: Value| json!({"routes": [route(extra)]});
    let hmac = |extra: Value| {
        let mut hmac = json!({"secretRef": {"name": "ci"}, "header": "X-Signature"});
        merge(&mut hmac, extra);
        one(json!({"auth": {"none": null, "hmac": hmac}}))
    };
    let cases = [
        case(
            "no routes",
            json!({"routes": []}),
            "spec.routes in body should have at least 1 items",
        ),
        case(
            "two routes on one path",
            json!({"routes": [route(json!({"name": "a"})), route(json!({"name": "b"}))]}),
            "route paths must be unique within a WebhookIngress: give each route its own path",
        ),
        case(
            "two routes with one name",
            json!({"routes": [route(json!({"path": "/a"})), route(json!({"path": "/b"}))]}),
            "route names must be unique within a WebhookIngress: give each route its own name",
        ),
        case(
            "a route without an auth kind",
            one(json!({"auth": {"none": null}})),
            "auth needs exactly one of github, standardWebhooks, hmac, bearer or none",
        ),
        case(
            "a route with two auth kinds",
            one(json!({"auth": {"github": {"secretRef": {"name": "github"}}}})),
            "auth needs exactly one of github, standardWebhooks, hmac, bearer or none",
        ),
        case(
            "a route name with capitals",
            one(json!({"name": "GitHub"})),
            "route name must be a DNS label",
        ),
        case(
            "a path without '/'",
            one(json!({"path": "github"})),
            "route path must start with '/', for example /github",
        ),
        case(
            "a path segment starting with ':'",
            one(json!({"path": "/hooks/:id"})),
            CAPTURE_PATH_MESSAGE,
        ),
        case(
            "a path segment starting with '*'",
            one(json!({"path": "/a/*rest"})),
            CAPTURE_PATH_MESSAGE,
        ),
        case(
            "a path with a brace capture",
            one(json!({"path": "/hooks/{id}"})),
            CAPTURE_PATH_MESSAGE,
        ),
        case(
            "eventType from the Authorization header",
            one(json!({"eventType": {"header": "authorization"}})),
            "eventType.header names a header that carries a credential",
        ),
        case(
            "correlationId from GitHub's signature header",
            one(json!({"correlationId": {"header": "X-HUB-SIGNATURE-256"}})),
            "correlationId.header names a header that carries a credential",
        ),
        case(
            "eventType from the Standard Webhooks signature",
            one(json!({"eventType": {"header": "Webhook-Signature"}})),
            "eventType.header names a header that carries a credential",
        ),
        case(
            "correlationId from the route's own HMAC header",
            one(json!({
                "auth": {"none": null, "hmac": {"secretRef": {"name": "ci"}, "header": "X-Signature"}},
                "correlationId": {"header": "x-signature"}
            })),
            "correlationId.header names a header that carries a credential",
        ),
        case(
            "eventType from a header and a fixed value",
            one(json!({"eventType": {"header": "X-GitHub-Event", "value": "push"}})),
            "eventType needs exactly one of header, jsonPointer or value",
        ),
        case(
            "eventType with only a prefix",
            one(json!({"eventType": {"prefix": "com.github."}})),
            "eventType needs exactly one of header, jsonPointer or value",
        ),
        case(
            "an eventType pointer without '/'",
            one(json!({"eventType": {"jsonPointer": "action"}})),
            "jsonPointer must start with '/', for example /action",
        ),
        case(
            "correlationId from nowhere",
            one(json!({"correlationId": {}})),
            "correlationId needs exactly one of header or jsonPointer",
        ),
        case(
            "correlationId from a header and a pointer",
            one(json!({"correlationId": {"header": "X-Request-Id", "jsonPointer": "/id"}})),
            "correlationId needs exactly one of header or jsonPointer",
        ),
        case(
            "an HMAC algorithm not offered",
            hmac(json!({"algorithm": "md5"})),
            r#"Unsupported value: "md5": supported values: "sha256", "sha512""#,
        ),
        case(
            "an HMAC encoding not offered",
            hmac(json!({"encoding": "base32"})),
            r#"Unsupported value: "base32": supported values: "hex", "base64""#,
        ),
        case(
            "maxBodyBytes 0",
            one(json!({"maxBodyBytes": 0})),
            "spec.routes[0].maxBodyBytes in body should be greater than or equal to 1",
        ),
        case(
            "a dedupe window in words",
            one(json!({"dedupeWindow": "ten minutes"})),
            DURATION_MESSAGE,
        ),
        case(
            "negative replicas",
            json!({"replicas": -1, "routes": [route(json!({}))]}),
            "spec.replicas in body should be greater than or equal to 0",
        ),
        case(
            "expose with neither ingress nor httpRoute",
            json!({"routes": [route(json!({}))], "expose": {}}),
            "expose needs exactly one of ingress or httpRoute",
        ),
        case(
            "expose with both ingress and httpRoute",
            json!({"routes": [route(json!({}))], "expose": {
                "ingress": {"host": "hooks.example.com"},
                "httpRoute": {"parentRefs": [{"name": "gateway"}]}
            }}),
            "expose needs exactly one of ingress or httpRoute",
        ),
    ];
    assert_no_failures(f.refusals(Kind::WebhookIngress, &cases).await);
}

#[tokio::test]
async fn topic_name_cannot_change_once_the_event_topic_exists() {
    let f = Fixture::new("e2e-crd-rename").await;
    const IMMUTABLE: &str = "spec.topicName is immutable: the Kafka topic of an EventTopic cannot be renamed; create a new EventTopic for another topic";
    let refused = |result: Result<Value, kube::Error>| match result {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{}", status.message);
            assert!(status.message.contains(IMMUTABLE), "{}", status.message);
        }
        other => panic!("expected the rename to be refused, got {other:?}"),
    };

    f.create(Kind::EventTopic, "named", json!({"topicName": "orders.v1"}))
        .await
        .unwrap();
    refused(
        f.patch_spec(Kind::EventTopic, "named", json!({"topicName": "orders.v2"}))
            .await,
    );
    // Dropping topicName would fall back to metadata.name: a rename too.
    refused(
        f.patch_spec(Kind::EventTopic, "named", json!({"topicName": null}))
            .await,
    );

    f.create(Kind::EventTopic, "defaulted", json!({}))
        .await
        .unwrap();
    refused(
        f.patch_spec(Kind::EventTopic, "defaulted", json!({"topicName": "other"}))
            .await,
    );
    // Writing out the name the topic already has changes nothing and is allowed.
    f.patch_spec(
        Kind::EventTopic,
        "defaulted",
        json!({"topicName": "defaulted"}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_spool_of_a_webhook_ingress_is_fixed_at_creation() {
    let f = Fixture::new("e2e-crd-spool").await;
    f.create(
        Kind::WebhookIngress,
        "hooks",
        json!({"routes": [route(json!({}))], "spool": {"size": "2Gi"}}),
    )
    .await
    .unwrap();
    for spool in [
        json!({"size": "4Gi"}),
        json!({"size": "2Gi", "storageClassName": "fast"}),
    ] {
        match f
            .patch_spec(Kind::WebhookIngress, "hooks", json!({"spool": spool}))
            .await
        {
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "{}", status.message);
                assert!(
                    status.message.contains("spec.spool is fixed at creation"),
                    "{}",
                    status.message
                );
            }
            other => panic!("expected {spool} to be refused, got {other:?}"),
        }
    }
    // Everything else still changes.
    f.patch_spec(Kind::WebhookIngress, "hooks", json!({"replicas": 3}))
        .await
        .unwrap();
}

#[tokio::test]
async fn partitions_can_grow_but_never_shrink() {
    let f = Fixture::new("e2e-crd-partitions").await;
    f.create(Kind::EventTopic, "orders", json!({"partitions": 6}))
        .await
        .unwrap();

    let grown = f
        .patch_spec(Kind::EventTopic, "orders", json!({"partitions": 12}))
        .await
        .unwrap();
    assert_eq!(grown["spec"]["partitions"], 12);

    match f
        .patch_spec(Kind::EventTopic, "orders", json!({"partitions": 3}))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{}", status.message);
            assert!(
                status.message.contains(
                    "partitions can only grow: Kafka cannot remove partitions from a topic"
                ),
                "{}",
                status.message
            );
        }
        other => panic!("expected shrinking to be refused, got {other:?}"),
    }
}

#[tokio::test]
async fn kubectl_applies_the_crds_and_lists_each_kind_by_short_name_with_its_columns() {
    let f = Fixture::new("e2e-crd-kubectl").await;
    // The README's `kubectl apply -f crds/` (client-side apply) is accepted too; a server
    // dry run proves it without adding a second field manager to the shared CRDs.
    run(kubectl()
        .args(["apply", "--dry-run=server", "-f"])
        .arg(repo_root().join("crds")));

    f.create(Kind::EventTopic, "orders", json!({"partitions": 12}))
        .await
        .unwrap();
    f.create(Kind::EventConsumer, "coordinator", consumer(json!({})))
        .await
        .unwrap();
    f.create(
        Kind::WebhookIngress,
        "github",
        json!({"routes": [route(json!({}))]}),
    )
    .await
    .unwrap();

    let get = |short: &str| run(kubectl().args(["get", short, "-n", &f.namespace.name]));
    let header = |table: &str| -> Vec<String> {
        let first = table.lines().next().unwrap_or_default();
        // Column titles are separated by runs of spaces; titles may contain single spaces.
        first
            .split("  ")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };

    let topics = get("et");
    assert_eq!(
        header(&topics),
        ["NAME", "READY", "TOPIC", "PARTITIONS", "RF", "AGE"],
        "{topics}"
    );
    let row: Vec<&str> = topics.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(row[..3], ["orders", "12", "3"], "{topics}");

    let consumers = get("ec");
    assert_eq!(
        header(&consumers),
        ["NAME", "READY", "REPLICAS", "READY REPLICAS", "LAG", "AGE"],
        "{consumers}"
    );
    assert!(consumers.contains("coordinator"), "{consumers}");

    let ingresses = get("wi");
    assert_eq!(
        header(&ingresses),
        ["NAME", "READY", "REPLICAS", "READY REPLICAS", "AGE"],
        "{ingresses}"
    );
    let row: Vec<&str> = ingresses
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .collect();
    assert_eq!(row[..2], ["github", "2"], "{ingresses}");
}
