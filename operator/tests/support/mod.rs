//! Runs bridge-operator as a real process against the local stack, and reads what it did
//! from the broker and from its own metrics.

#![allow(dead_code)] // each test binary uses its own part of this support module

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bridge_api::EventTopic;
use bridge_e2e::{Stack, eventually};
use kube::api::{Api, PostParams};
use rdkafka::admin::{
    AdminClient, AdminOptions, ConfigSource, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::RDKafkaErrorCode;

pub const BOUND: Duration = Duration::from_secs(60);
/// The resync interval the tests run the operator with, so drift shows within seconds.
pub const RESYNC: Duration = Duration::from_secs(3);

pub struct Operator {
    child: Child,
    pub admin: SocketAddr,
    pub log: std::path::PathBuf,
}

impl Operator {
    /// Starts the operator watching `namespaces` (its leader-election Lease lives in the
    /// first), and waits until it leads.
    pub async fn start(namespaces: &[&str]) -> Self {
        Self::start_with(namespaces, &[]).await
    }

    /// As [`Operator::start`], with `extra_args` appended to the operator's command line.
    pub async fn start_with(namespaces: &[&str], extra_args: &[&str]) -> Self {
        let stack = Stack::from_env().unwrap();
        install_crds(&stack.kube_client().await).await;
        let admin = free_address();
        let log_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("operator-logs");
        std::fs::create_dir_all(&log_dir).unwrap();
        let log = log_dir.join(format!("{}.log", namespaces[0]));
        let log_file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_bridge-operator"))
            .args([
                "--watch-namespaces",
                &namespaces.join(","),
                "--resync-interval",
                &format!("{}s", RESYNC.as_secs()),
                "--admin-listen",
                &admin.to_string(),
                "--leader-election-namespace",
                namespaces[0],
                "--identity",
                &format!("test-{}", namespaces[0]),
            ])
            .args(extra_args)
            .env("KAFKA_BOOTSTRAP_SERVERS", &stack.kafka_bootstrap_servers)
            .env("RUST_LOG", "info,kube=warn")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("bridge-operator starts");
        let operator = Self { child, admin, log };
        eventually("the operator to lead", BOUND, || async {
            (operator.metric("bridge_operator_leader").await == 1.0).then_some(())
        })
        .await;
        operator
    }

    /// The sum of every sample of `metric` (any labels) on the operator's /metrics.
    /// A metric the operator has not served yet (it is still starting) reads as 0.
    pub async fn metric(&self, metric: &str) -> f64 {
        let Ok(response) = reqwest::get(format!("http://{}/metrics", self.admin)).await else {
            return 0.0;
        };
        let body = response.text().await.unwrap_or_default();
        body.lines()
            .filter(|line| {
                line.strip_prefix(metric)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGKILL: the operator gets no chance to finish what it was doing.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Applies `crds/` (server-side, as users do) once per test binary and waits until the
/// three CRDs are Established, so the operator's start-up check passes and the API server
/// keeps every status field this build writes.
async fn install_crds(client: &kube::Client) {
    static APPLIED: std::sync::Once = std::sync::Once::new();
    APPLIED.call_once(|| {
        let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../crds");
        let output = Command::new("kubectl")
            .args(["apply", "--server-side", "--force-conflicts", "-f", crds])
            .output()
            .expect("kubectl runs");
        assert!(
            output.status.success(),
            "kubectl apply -f crds/: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    });
    for crd in bridge_api::crds() {
        let name = crd.crd.metadata.name.unwrap();
        bridge_e2e::crd_established(client, &name).await;
    }
}

fn free_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The image the operator under test runs its workloads from: the one `e2e/stack.sh up`
/// pushed (`BRIDGE_WORKLOAD_IMAGE`, which the operator reads too), else its default.
pub fn workload_image() -> String {
    std::env::var("BRIDGE_WORKLOAD_IMAGE")
        .unwrap_or_else(|_| concat!("omninode/bridge:", env!("CARGO_PKG_VERSION")).to_owned())
}

pub fn event_topic(name: &str, spec: serde_json::Value) -> EventTopic {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "bridge.omninode.io/v1alpha1",
        "kind": "EventTopic",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

pub async fn create(api: &Api<EventTopic>, topic: &EventTopic) {
    api.create(&PostParams::default(), topic).await.unwrap();
}

/// Waits until the object's `Ready` condition has `status` and `reason`; returns its message.
pub async fn wait_ready(api: &Api<EventTopic>, name: &str, status: &str, reason: &str) -> String {
    eventually(
        &format!("{name}: Ready={status} ({reason})"),
        BOUND,
        || async {
            let topic = api.get(name).await.ok()?;
            let ready = condition(&topic, "Ready")?;
            (ready.status == status && ready.reason == reason).then_some(ready.message)
        },
    )
    .await
}

pub fn condition(
    topic: &EventTopic,
    type_: &str,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    bridge_api::find_condition(&topic.status.as_ref()?.conditions, type_).cloned()
}

/// Every broker stopped; started again when dropped, so a failing test leaves Kafka up for
/// the next.
pub struct BrokersDown(Stack);

impl BrokersDown {
    pub fn stop_all(stack: Stack) -> Self {
        stack
            .kafka_stop_brokers(&[1, 2, 3])
            .expect("brokers stopped");
        Self(stack)
    }
}

impl Drop for BrokersDown {
    fn drop(&mut self) {
        if let Err(error) = self.0.kafka_start_brokers(&[1, 2, 3]) {
            eprintln!("restarting the brokers: {error}");
        }
    }
}

/// A Kafka topic as the broker reports it: partitions, replication factor, and the configs
/// set on the topic itself.
#[derive(Debug, Clone, PartialEq)]
pub struct BrokerTopic {
    pub partitions: usize,
    pub replication_factor: usize,
    pub configs: BTreeMap<String, String>,
}

pub struct Broker {
    admin: AdminClient<DefaultClientContext>,
}

impl Broker {
    pub fn connect() -> Self {
        let admin = Stack::from_env().unwrap().kafka_config().create().unwrap();
        Self { admin }
    }

    pub async fn describe(&self, topic: &str) -> Option<BrokerTopic> {
        let metadata = self
            .admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .ok()?;
        let described = metadata.topics().first()?;
        if described.error().is_some() || described.partitions().is_empty() {
            return None;
        }
        let configs = self
            .admin
            .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
            .await
            .ok()?
            .pop()?
            .ok()?
            .entries
            .into_iter()
            .filter(|e| matches!(e.source, ConfigSource::DynamicTopic))
            .filter_map(|e| Some((e.name, e.value?)))
            .collect();
        Some(BrokerTopic {
            partitions: described.partitions().len(),
            replication_factor: described.partitions()[0].replicas().len(),
            configs,
        })
    }

    /// Waits until `check` holds for the topic on the broker (`None`: absent).
    pub async fn wait_for(
        &self,
        what: &str,
        topic: &str,
        check: impl Fn(Option<&BrokerTopic>) -> bool,
    ) -> Option<BrokerTopic> {
        eventually(what, BOUND, || async {
            let described = self.describe(topic).await;
            check(described.as_ref()).then_some(described)
        })
        .await
    }

    pub async fn create_topic(&self, topic: &str, partitions: i32, configs: &[(&str, &str)]) {
        let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(3));
        for (key, value) in configs {
            new_topic = new_topic.set(key, value);
        }
        let result = self
            .admin
            .create_topics(&[new_topic], &AdminOptions::new())
            .await
            .unwrap();
        match result.into_iter().next().unwrap() {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => panic!("creating {topic}: {code}"),
        }
    }

    /// Sets the topic's whole config set, as an out-of-band change by someone else.
    pub async fn set_configs(&self, topic: &str, configs: &[(&str, &str)]) {
        let mut alter = rdkafka::admin::AlterConfig::new(ResourceSpecifier::Topic(topic));
        for (key, value) in configs {
            alter = alter.set(key, value);
        }
        let result = self
            .admin
            .alter_configs(&[alter], &AdminOptions::new())
            .await
            .unwrap();
        result.into_iter().next().unwrap().expect("configs altered");
    }

    pub async fn delete_topic(&self, topic: &str) {
        let result = self
            .admin
            .delete_topics(&[topic], &AdminOptions::new())
            .await
            .unwrap();
        result.into_iter().next().unwrap().expect("topic deleted");
    }
}

/// GitHub's `X-Hub-Signature-256` of `body` under `secret`.
pub fn github_signature(secret: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, body);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256={hex}")
}

/// The ready endpoints of a Service's port `port_name`, read from its EndpointSlices as an
/// in-cluster client (kube-proxy) would use them, as `pod-ip:port` to connect to (this
/// machine routes the node's Pod range to its Pods).
pub async fn ready_endpoints(
    client: &kube::Client,
    namespace: &str,
    service: &str,
    port_name: &str,
) -> Vec<String> {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let Ok(list) = slices
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("kubernetes.io/service-name={service}")),
        )
        .await
    else {
        return Vec::new();
    };
    let mut endpoints = std::collections::BTreeSet::new();
    for slice in list {
        let Some(port) = slice
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(port_name))
            .and_then(|p| p.port)
        else {
            continue;
        };
        for endpoint in slice.endpoints.into_iter().flatten() {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(false);
            if ready {
                for address in endpoint.addresses {
                    endpoints.insert(format!("{address}:{port}"));
                }
            }
        }
    }
    endpoints.into_iter().collect()
}

/// Webhooks sent one after another, each with its own correlation id (the Kafka key) in
/// the header `x-delivery`, counted by how they were answered.
pub struct Webhooks {
    http: reqwest::Client,
    url: String,
    sent: usize,
    /// Correlation ids of the webhooks answered 2xx: the ones that must reach Kafka.
    pub acknowledged: Vec<String>,
    /// Answers other than 2xx, and requests that got no answer (refused, reset).
    pub failed: Vec<String>,
}

impl Webhooks {
    pub fn new(url: String) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap(),
            url,
            sent: 0,
            acknowledged: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// Sends `count` webhooks with ids `<prefix>-<n>`.
    pub async fn send(&mut self, prefix: &str, count: usize) {
        for n in 0..count {
            let id = format!("{prefix}-{n}");
            self.sent += 1;
            let answer = self
                .http
                .post(&self.url)
                .header("content-type", "application/json")
                .header("x-delivery", &id)
                .body(serde_json::json!({"id": id}).to_string())
                .send()
                .await;
            match answer {
                Ok(response) if response.status().is_success() => self.acknowledged.push(id),
                Ok(response) => self
                    .failed
                    .push(format!("{id}: HTTP {}", response.status())),
                Err(error) => self.failed.push(format!("{id}: {error}")),
            }
        }
    }

    pub fn sent(&self) -> usize {
        self.sent
    }
}

/// What reached Kafka of what was acknowledged.
#[derive(Debug)]
pub struct Delivered {
    pub on_kafka: usize,
    pub duplicates: usize,
    pub missing: Vec<String>,
    /// The id of every record read, in the order read: the topic's order where it has
    /// one partition (or one key), duplicates included.
    pub order: Vec<String>,
}

/// Reads `topic` from the start until every id in `acknowledged` is there (the `id` field
/// of a record's JSON data, as [`Webhooks`] sends it) or `bound` passes, then counts what
/// came twice and what never came.
pub async fn delivered(topic: &str, acknowledged: &[String], bound: Duration) -> Delivered {
    use futures::StreamExt;
    use rdkafka::Message;
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = Stack::from_env()
        .unwrap()
        .kafka_config()
        .set("group.id", bridge_e2e::unique_name("spool-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let wanted: std::collections::BTreeSet<&str> =
        acknowledged.iter().map(String::as_str).collect();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut order = Vec::new();
    let mut stream = consumer.stream();
    let deadline = tokio::time::Instant::now() + bound;
    /// Counts the record by the `id` of its JSON data and appends it to `order`.
    fn read(seen: &mut BTreeMap<String, usize>, order: &mut Vec<String>, record: &impl Message) {
        let data = record
            .payload()
            .and_then(|data| serde_json::from_slice::<serde_json::Value>(data).ok());
        if let Some(id) = data.as_ref().and_then(|data| data["id"].as_str()) {
            *seen.entry(id.to_owned()).or_default() += 1;
            order.push(id.to_owned());
        }
    }
    while wanted.iter().any(|id| !seen.contains_key(*id)) {
        // Errors (brokers still coming back) are librdkafka's to retry: keep reading.
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(message))) => read(&mut seen, &mut order, &message),
            Ok(Some(Err(_))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    // Duplicates that arrive a moment after the last missing id are counted too.
    while let Ok(Some(next)) = tokio::time::timeout(Duration::from_secs(3), stream.next()).await {
        if let Ok(message) = next {
            read(&mut seen, &mut order, &message);
        }
    }
    Delivered {
        on_kafka: wanted.iter().filter(|id| seen.contains_key(**id)).count(),
        duplicates: seen.values().map(|n| n - 1).sum(),
        missing: wanted
            .iter()
            .filter(|id| !seen.contains_key(**id))
            .map(|id| id.to_string())
            .collect(),
        order,
    }
}

/// Creates the EventTopic `name` in `namespace` on a new Kafka topic (`prefix` and a
/// unique suffix) with `partitions`, waits until it is Ready, and returns the Kafka topic.
pub async fn ready_event_topic(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    prefix: &str,
    partitions: i32,
) -> String {
    let topics: Api<EventTopic> = Api::namespaced(client.clone(), namespace);
    let topic = bridge_e2e::unique_name(prefix);
    create(
        &topics,
        &event_topic(
            name,
            serde_json::json!({"topicName": topic, "partitions": partitions}),
        ),
    )
    .await;
    wait_ready(&topics, name, "True", "TopicReady").await;
    topic
}

/// A WebhookIngress with one unsigned route `/hooks` to the EventTopic `topic`, keyed by
/// the `x-delivery` header, and a small spool per replica.
pub fn spooling_ingress(name: &str, replicas: i32, topic: &str) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "bridge.omninode.io/v1alpha1",
        "kind": "WebhookIngress",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "spool": {"size": "64Mi"},
            "routes": [{
                "name": "hooks", "path": "/hooks", "topic": topic, "auth": {"none": {}},
                "eventType": {"value": "com.example.spooled"},
                "correlationId": {"header": "x-delivery"},
            }],
        },
    })
}

/// The Service's cluster address for senders, `http://<cluster-ip>/hooks`.
pub async fn service_url(client: &kube::Client, namespace: &str, service: &str) -> String {
    use k8s_openapi::api::core::v1::Service;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let ip = services
        .get(service)
        .await
        .unwrap()
        .spec
        .and_then(|s| s.cluster_ip)
        .unwrap();
    format!("http://{ip}/hooks")
}

/// The names of the claims in `namespace`.
pub async fn claim_names(client: &kube::Client, namespace: &str) -> Vec<String> {
    use k8s_openapi::api::core::v1::PersistentVolumeClaim;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    claims
        .list(&Default::default())
        .await
        .unwrap()
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect()
}

/// Whether the StatefulSet has rolled every replica to its latest template and all are ready.
pub async fn rolled(
    sets: &Api<k8s_openapi::api::apps::v1::StatefulSet>,

    name: &str,
    replicas: i32,
) -> Option<()> {
    let set = sets.get(name).await.ok()?;
    let status = set.status?;
    (status.observed_generation >= set.metadata.generation
        && status.update_revision == status.current_revision
        && status.ready_replicas == Some(replicas)
        && status.replicas == replicas)
        .then_some(())
}
