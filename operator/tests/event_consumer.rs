//! EventConsumer behaviour end to end: the operator runs as a process against the real API
//! server and the three real brokers; each test reads what it wrote (ConfigMap, Deployment,
//! status) and checks the consumer group on the brokers themselves.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bridge_api::{EventConsumer, EventTopic};
use bridge_e2e::{Stack, TestNamespace, eventually, unique_name};
use event_consumer::ConsumerConfig;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::json;
use support::{BOUND, Operator, create, event_topic, wait_ready};

async fn client() -> kube::Client {
    Stack::from_env().unwrap().kube_client().await
}

/// An EventTopic with its own Kafka topic name, waited on until Ready; returns that name.
async fn ready_topic(api: &Api<EventTopic>, name: &str, partitions: i32) -> String {
    let kafka_name = unique_name(name);
    create(
        api,
        &event_topic(
            name,
            json!({"topicName": kafka_name, "partitions": partitions, "replicationFactor": 3}),
        ),
    )
    .await;
    wait_ready(api, name, "True", "TopicReady").await;
    kafka_name
}

fn event_consumer(name: &str, spec: serde_json::Value) -> EventConsumer {
    serde_json::from_value(json!({
        "apiVersion": "bridge.omninode.io/v1alpha1",
        "kind": "EventConsumer",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

async fn create_consumer(api: &Api<EventConsumer>, consumer: &EventConsumer) {
    api.create(&PostParams::default(), consumer).await.unwrap();
}

/// Waits until `check` holds for the EventConsumer `name`; returns it.
async fn wait_consumer(
    api: &Api<EventConsumer>,
    name: &str,
    what: &str,
    check: impl Fn(&EventConsumer) -> bool,
) -> EventConsumer {
    eventually(&format!("{name}: {what}"), BOUND, || async {
        let consumer = api.get(name).await.ok()?;
        check(&consumer).then_some(consumer)
    })
    .await
}

fn ready(consumer: &EventConsumer) -> Option<(String, String, String)> {
    let c = bridge_api::find_condition(&consumer.status.as_ref()?.conditions, "Ready")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn lag(consumer: &EventConsumer) -> Option<i64> {
    consumer.status.as_ref()?.lag
}

async fn wait_deployment(
    api: &Api<Deployment>,
    name: &str,
    what: &str,
    check: impl Fn(&Deployment) -> bool,
) -> Deployment {
    eventually(&format!("Deployment {name}: {what}"), BOUND, || async {
        let deployment = api.get_opt(name).await.ok()??;
        check(&deployment).then_some(deployment)
    })
    .await
}

fn replicas(deployment: &Deployment) -> Option<i32> {
    deployment.spec.as_ref()?.replicas
}

/// Produces `count` keyed CloudEvents (binary mode) to `topic` and waits for every
/// acknowledgement; returns their ids. Valid events matter when consumers really run: an invalid record would be skipped and committed, one the sink does not take is not.
async fn produce(topic: &str, count: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(count);
    let producer: FutureProducer = Stack::from_env().unwrap().kafka_config().create().unwrap();
    for i in 0..count {
        let key = format!("key-{i}");
        let id = unique_name("event");
        let headers = OwnedHeaders::new()
            .insert(header("ce_specversion", "1.0"))
            .insert(header("ce_id", &id))
            .insert(header("ce_source", "/tests/event-consumer"))
            .insert(header("ce_type", "test.event"))
            .insert(header("content-type", "application/json"));
        let payload = format!("{{\"n\": {i}}}");
        producer
            .send(
                FutureRecord::to(topic)
                    .key(&key)
                    .payload(&payload)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(error, _)| panic!("producing to {topic}: {error}"));
        ids.push(id);
    }
    ids
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

fn group_client(group: &str) -> BaseConsumer {
    Stack::from_env()
        .unwrap()
        .kafka_config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap()
}

/// Commits `offset` on `topic`'s partition 0 for `group`, as a consumer of that group would.
fn commit(group: &str, topic: &str, offset: i64) {
    let mut positions = TopicPartitionList::new();
    positions
        .add_partition_offset(topic, 0, Offset::Offset(offset))
        .unwrap();
    group_client(group)
        .commit(&positions, CommitMode::Sync)
        .unwrap();
}

/// The group's committed offset on `topic`'s partition 0, if any.
fn committed(group: &str, topic: &str) -> Option<i64> {
    let mut partitions = TopicPartitionList::new();
    partitions.add_partition(topic, 0);
    let committed = group_client(group)
        .committed_offsets(partitions, Duration::from_secs(10))
        .ok()?;
    match committed.elements().first()?.offset() {
        Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

async fn events_with_reason(client: &kube::Client, namespace: &str, reason: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    events
        .list(&ListParams::default())
        .await
        .map(|list| list.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

#[tokio::test]
async fn renders_the_config_map_and_a_deployment_owned_by_the_object() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "ec-render").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let topics: Api<EventTopic> = Api::namespaced(client.clone(), &ns.name);
    let orders = ready_topic(&topics, "orders", 2).await;
    let dead_letters = ready_topic(&topics, "orders-dlq", 1).await;
    let consumers: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    create_consumer(
        &consumers,
        &event_consumer(
            "coordinator",
            json!({
                "topics": ["orders"],
                "sink": {"service": {"name": "sink", "port": 8080, "path": "/events"}},
                "filter": {"types": ["workflow.*"]},
                "delivery": {"deadLetterTopic": "orders-dlq", "maxInFlight": 16},
                "replicas": 2,
            }),
        ),
    )
    .await;

    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let config_map = eventually("ConfigMap coordinator-consumer", BOUND, || async {
        config_maps.get_opt("coordinator-consumer").await.ok()?
    })
    .await;
    let text = &config_map.data.as_ref().unwrap()["consumer.yaml"];
    let config = ConsumerConfig::from_yaml(text).unwrap();
    assert_eq!(config.topics, [orders]);
    assert_eq!(config.group_id, format!("{}.coordinator", ns.name));
    assert_eq!(
        config.sink.url,
        format!("http://sink.{}.svc:8080/events", ns.name)
    );
    assert_eq!(
        config.delivery.dead_letter_topic.as_deref(),
        Some(dead_letters.as_str())
    );
    assert_eq!(config.delivery.max_in_flight, 16);
    assert_eq!(config.filter.types, ["workflow.*"]);
    assert_eq!(
        config.kafka.bootstrap_servers,
        Stack::from_env().unwrap().kafka_bootstrap_servers
    );
    assert_eq!(config.admin_listen.to_string(), "0.0.0.0:9090");

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let deployment =
        wait_deployment(&deployments, "coordinator-consumer", "exists", |_| true).await;
    let owner = consumers.get("coordinator").await.unwrap();
    let reference = &deployment.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(reference.kind, "EventConsumer");
    assert_eq!(reference.uid, owner.metadata.uid.clone().unwrap());
    assert_eq!(reference.controller, Some(true));
    let labels = deployment.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["app.kubernetes.io/managed-by"], "bridge-operator");
    assert_eq!(labels["app.kubernetes.io/name"], "event-consumer");
    assert_eq!(labels["app.kubernetes.io/instance"], "coordinator");
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let template = &spec.template;
    let checksum = &template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .as_ref()
        .unwrap()["bridge.omninode.io/config-checksum"];
    assert_eq!(checksum.len(), 64);
    let pod = template.spec.as_ref().unwrap();
    let container = &pod.containers[0];
    assert_eq!(container.name, "event-consumer");
    assert_eq!(
        container.image.as_deref(),
        Some(support::workload_image().as_str())
    );
    assert_eq!(
        container.command.as_deref(),
        Some(&["event-consumer".to_owned()][..])
    );
    assert_eq!(
        container.args.as_deref(),
        Some(
            &[
                "--config".to_owned(),
                "/etc/event-consumer/config/consumer.yaml".to_owned()
            ][..]
        )
    );
    let readiness = container.readiness_probe.as_ref().unwrap();
    assert_eq!(
        readiness.http_get.as_ref().unwrap().path.as_deref(),
        Some("/readyz")
    );
    let liveness = container.liveness_probe.as_ref().unwrap();
    assert_eq!(
        liveness.http_get.as_ref().unwrap().path.as_deref(),
        Some("/healthz")
    );
    assert!(container.resources.as_ref().unwrap().requests.is_some());
    let security = container.security_context.as_ref().unwrap();
    assert_eq!(security.allow_privilege_escalation, Some(false));
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.run_as_non_root, Some(true));
    assert_eq!(
        pod.security_context
            .as_ref()
            .unwrap()
            .seccomp_profile
            .as_ref()
            .unwrap()
            .type_,
        "RuntimeDefault"
    );
    let mount = &container.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(mount.mount_path, "/etc/event-consumer/config");
    assert_eq!(
        pod.volumes.as_ref().unwrap()[0]
            .config_map
            .as_ref()
            .unwrap()
            .name,
        "coordinator-consumer"
    );

    // A config change rolls the pods: the checksum on the template follows the config.
    consumers
        .patch(
            "coordinator",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"delivery": {"maxInFlight": 32}}})),
        )
        .await
        .unwrap();
    let before = checksum.clone();
    wait_deployment(
        &deployments,
        "coordinator-consumer",
        "a new config checksum",
        |d| {
            d.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()["bridge.omninode.io/config-checksum"]
                != before
        },
    )
    .await;
    let generation = owner.metadata.generation.map(|g| g + 1);
    let status = wait_consumer(
        &consumers,
        "coordinator",
        "the new generation observed",
        |c| {
            c.status
                .as_ref()
                .is_some_and(|s| s.observed_generation == generation)
        },
    )
    .await
    .status
    .unwrap();
    assert_eq!(status.replicas, Some(2));
    assert_eq!(status.dead_lettered, Some(0));
}

#[tokio::test]
async fn a_missing_event_topic_is_reported_by_name_and_healed_once_it_is_created() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "ec-missing").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let consumers: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    create_consumer(
        &consumers,
        &event_consumer(
            "late",
            json!({"topics": ["arrives-later"], "sink": {"url": "http://127.0.0.1:9/"}}),
        ),
    )
    .await;

    let consumer = wait_consumer(&consumers, "late", "Ready=False TopicNotFound", |c| {
        ready(c).is_some_and(|(s, r, _)| s == "False" && r == "TopicNotFound")
    })
    .await;
    let (_, _, message) = ready(&consumer).unwrap();
    assert!(
        message.contains(&format!("EventTopic {}/arrives-later", ns.name)),
        "{message}"
    );
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        config_maps
            .get_opt("late-consumer")
            .await
            .unwrap()
            .is_none()
    );
    let warnings = events_with_reason(&client, &ns.name, "TopicNotFound").await;
    assert!(!warnings.is_empty(), "a TopicNotFound Event");

    let topics: Api<EventTopic> = Api::namespaced(client.clone(), &ns.name);
    let kafka_name = ready_topic(&topics, "arrives-later", 1).await;
    let config_map = eventually("ConfigMap late-consumer", BOUND, || async {
        config_maps.get_opt("late-consumer").await.ok()?
    })
    .await;
    let config = ConsumerConfig::from_yaml(&config_map.data.unwrap()["consumer.yaml"]).unwrap();
    assert_eq!(config.topics, [kafka_name]);
    wait_consumer(&consumers, "late", "no longer TopicNotFound", |c| {
        ready(c).is_some_and(|(_, r, _)| r != "TopicNotFound")
    })
    .await;
}

#[tokio::test]
async fn lag_is_what_was_produced_minus_what_the_group_committed_refreshed_on_resync() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "ec-lag").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let topics: Api<EventTopic> = Api::namespaced(client.clone(), &ns.name);
    let topic = ready_topic(&topics, "lagging", 1).await;
    let consumers: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    // No replicas: nothing but this test moves the group's offsets.
    create_consumer(
        &consumers,
        &event_consumer(
            "counter",
            json!({"topics": ["lagging"], "sink": {"url": "http://127.0.0.1:9/"}, "replicas": 0}),
        ),
    )
    .await;
    wait_consumer(
        &consumers,
        "counter",
        "lag 0 before anything is produced",
        |c| lag(c) == Some(0),
    )
    .await;

    produce(&topic, 100).await;
    let group = format!("{}.counter", ns.name);
    commit(&group, &topic, 40);
    wait_consumer(&consumers, "counter", "lag 60", |c| lag(c) == Some(60)).await;

    commit(&group, &topic, 70);
    wait_consumer(&consumers, "counter", "lag 30 on the next resync", |c| {
        lag(c) == Some(30)
    })
    .await;
}

#[tokio::test]
async fn lag_above_the_threshold_scales_up_but_never_beyond_the_partitions() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "ec-scale").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let topics: Api<EventTopic> = Api::namespaced(client.clone(), &ns.name);
    let topic = ready_topic(&topics, "busy", 4).await;
    let consumers: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    create_consumer(
        &consumers,
        &event_consumer(
            "scaled",
            json!({
                "topics": ["busy"],
                // Unreachable: if consumers really run, nothing is committed and lag stays.
                "sink": {"url": "http://127.0.0.1:9/"},
                "startFrom": "earliest",
                "autoscaling": {"minReplicas": 1, "maxReplicas": 10, "lagThreshold": 10},
            }),
        ),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    wait_deployment(
        &deployments,
        "scaled-consumer",
        "1 replica at no lag",
        |d| replicas(d) == Some(1),
    )
    .await;

    // 100 records, 10 per replica: 10 wanted, 4 partitions.
    produce(&topic, 100).await;
    wait_deployment(&deployments, "scaled-consumer", "4 replicas", |d| {
        replicas(d) == Some(4)
    })
    .await;
    wait_consumer(&consumers, "scaled", "status replicas 4 and lag 100", |c| {
        c.status
            .as_ref()
            .is_some_and(|s| s.replicas == Some(4) && s.lag == Some(100))
    })
    .await;
    let scaled = eventually("a Scaled Event up to 4 replicas", BOUND, || async {
        events_with_reason(&client, &ns.name, "Scaled")
            .await
            .into_iter()
            .find(|e| {
                e.note
                    .as_deref()
                    .is_some_and(|n| n.contains("to 4 replicas"))
            })
    })
    .await;
    assert!(
        scaled.note.as_deref().unwrap().contains("lagThreshold 10"),
        "{:?}",
        scaled.note
    );
    // Lag unchanged: still 4 a few resyncs later, never more.
    tokio::time::sleep(support::RESYNC * 3).await;
    let deployment = deployments.get("scaled-consumer").await.unwrap();
    assert_eq!(replicas(&deployment), Some(4));
}

#[tokio::test]
async fn replay_stops_the_consumers_moves_the_group_back_in_time_and_scales_back() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "ec-replay").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let topics: Api<EventTopic> = Api::namespaced(client.clone(), &ns.name);
    let topic = ready_topic(&topics, "history", 1).await;

    // 10 records before the replay time, 10 after; the group has read all 20. Committed
    // before any consumer runs: Kafka takes a commit from outside only for an empty group.
    produce(&topic, 10).await;
    let from = {
        // Status times have second precision: replay from a whole second.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let now = k8s_openapi::jiff::Timestamp::now();
        let from = k8s_openapi::jiff::Timestamp::from_second(now.as_second() + 1).unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        from
    };
    produce(&topic, 10).await;
    let group = format!("{}.replayer", ns.name);
    commit(&group, &topic, 20);

    let consumers: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    create_consumer(
        &consumers,
        &event_consumer(
            "replayer",
            // Unreachable: consumers that really run commit nothing.
            json!({"topics": ["history"], "sink": {"url": "http://127.0.0.1:9/"}, "replicas": 1}),
        ),
    )
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    wait_deployment(&deployments, "replayer-consumer", "1 replica", |d| {
        replicas(d) == Some(1)
    })
    .await;
    wait_consumer(&consumers, "replayer", "lag 0", |c| lag(c) == Some(0)).await;

    consumers
        .patch(
            "replayer",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replay": {"from": from.to_string()}}})),
        )
        .await
        .unwrap();
    wait_deployment(&deployments, "replayer-consumer", "scaled to 0", |d| {
        replicas(d) == Some(0)
    })
    .await;
    let consumer = wait_consumer(&consumers, "replayer", "lastReplay recorded", |c| {
        c.status
            .as_ref()
            .and_then(|s| s.last_replay.as_ref())
            .is_some()
    })
    .await;
    let last = consumer
        .status
        .as_ref()
        .unwrap()
        .last_replay
        .clone()
        .unwrap();
    assert_eq!(last.from.0, from);
    assert!(last.completed_at.0 >= from);
    assert_eq!(
        committed(&group, &topic),
        Some(10),
        "the group starts again at the first record at or after the replay time"
    );
    wait_deployment(&deployments, "replayer-consumer", "scaled back to 1", |d| {
        replicas(d) == Some(1)
    })
    .await;
    wait_consumer(&consumers, "replayer", "lag 10 after the replay", |c| {
        lag(c) == Some(10)
    })
    .await;
    for reason in ["ReplayStarted", "ReplayCompleted"] {
        assert!(
            !events_with_reason(&client, &ns.name, reason)
                .await
                .is_empty(),
            "a {reason} Event"
        );
    }
}

#[tokio::test]
async fn a_paused_consumer_gets_the_paused_condition_and_nothing_else() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "ec-paused").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let topics: Api<EventTopic> = Api::namespaced(client.clone(), &ns.name);
    ready_topic(&topics, "quiet", 1).await;
    let consumers: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    let mut consumer = event_consumer(
        "held",
        json!({"topics": ["quiet"], "sink": {"url": "http://127.0.0.1:9/"}}),
    );
    consumer.metadata.annotations = Some(
        [("bridge.omninode.io/paused".to_owned(), "true".to_owned())]
            .into_iter()
            .collect(),
    );
    create_consumer(&consumers, &consumer).await;
    wait_consumer(&consumers, "held", "Paused=True", |c| {
        c.status.as_ref().is_some_and(|s| {
            bridge_api::find_condition(&s.conditions, "Paused").is_some_and(|p| p.status == "True")
        })
    })
    .await;
    tokio::time::sleep(support::RESYNC).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    assert!(
        deployments
            .get_opt("held-consumer")
            .await
            .unwrap()
            .is_none()
    );
}

/// A tiny HTTP sink on the node's address that answers 200 to every request and counts the
/// requests per `ce-id`: what the consumers (containers on the stack's node) delivered.
struct RecordingSink {
    address: std::net::SocketAddr,
    ids: Arc<Mutex<HashMap<String, usize>>>,
}

impl RecordingSink {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind((bridge_e2e::node_ip().unwrap(), 0))
            .await
            .unwrap();
        let address = listener.local_addr().unwrap();
        let ids: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let recorded = ids.clone();
        tokio::spawn(async move {
            while let Ok((connection, _)) = listener.accept().await {
                tokio::spawn(serve_connection(connection, recorded.clone()));
            }
        });
        Self { address, ids }
    }

    /// How many times each of `ids` arrived, the fewest.
    fn fewest_deliveries(&self, ids: &[String]) -> usize {
        let received = self.ids.lock().unwrap();
        ids.iter()
            .map(|id| received.get(id).copied().unwrap_or(0))
            .min()
            .unwrap_or(0)
    }
}

/// HTTP/1.1 with keep-alive: headers, a `content-length` body, a 200 with no body.
async fn serve_connection(
    mut connection: tokio::net::TcpStream,
    ids: Arc<Mutex<HashMap<String, usize>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = Vec::new();
    loop {
        let head_end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match connection.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
        let header = |name: &str| {
            head.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_owned())
            })
        };
        let length: usize = header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buffer.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match connection.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        }
        if let Some(id) = header("ce-id") {
            *ids.lock().unwrap().entry(id).or_default() += 1;
        }
        buffer.drain(..head_end + length);
        let response = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        if connection.write_all(response).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn running_replicas_become_ready_deliver_to_the_sink_and_deliver_again_after_a_replay() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "ec-deliver").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let topics: Api<EventTopic> = Api::namespaced(client.clone(), &ns.name);
    let topic = ready_topic(&topics, "deliveries", 2).await;
    let sink = RecordingSink::start().await;
    let consumers: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    create_consumer(
        &consumers,
        &event_consumer(
            "deliverer",
            json!({
                "topics": ["deliveries"],
                "sink": {"url": format!("http://{}/events", sink.address)},
                "startFrom": "earliest",
                "replicas": 2,
            }),
        ),
    )
    .await;

    // Ready needs the pods' /readyz, which answers once the group assigned partitions:
    // only real event-consumer containers get there.
    let consumer = wait_consumer(&consumers, "deliverer", "2 ready replicas, Ready", |c| {
        c.status.as_ref().and_then(|s| s.ready_replicas) == Some(2)
            && ready(c).is_some_and(|(s, r, _)| s == "True" && r == "Running")
    })
    .await;
    assert_eq!(consumer.status.unwrap().replicas, Some(2));

    // Replay from a whole second before the events were produced.
    let from = k8s_openapi::jiff::Timestamp::from_second(
        k8s_openapi::jiff::Timestamp::now().as_second() - 1,
    )
    .unwrap();
    let produced = produce(&topic, 20).await;
    eventually("every produced event at the sink", BOUND, || async {
        (sink.fewest_deliveries(&produced) >= 1).then_some(())
    })
    .await;
    wait_consumer(&consumers, "deliverer", "lag 0 once delivered", |c| {
        lag(c) == Some(0)
    })
    .await;

    // A replay delivers them all again, and the replicas come back ready.
    consumers
        .patch(
            "deliverer",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replay": {"from": from.to_string()}}})),
        )
        .await
        .unwrap();
    eventually("every event delivered a second time", BOUND, || async {
        (sink.fewest_deliveries(&produced) >= 2).then_some(())
    })
    .await;
    let consumer = wait_consumer(&consumers, "deliverer", "replayed, 2 ready again", |c| {
        c.status.as_ref().is_some_and(|s| {
            s.last_replay.as_ref().is_some_and(|r| r.from.0 == from) && s.ready_replicas == Some(2)
        })
    })
    .await;
    assert_eq!(consumer.status.unwrap().replicas, Some(2));
}

/// `bridge_operator_status_patches_total{kind="EventConsumer"}` on the operator's /metrics.
async fn consumer_status_patches(operator: &Operator) -> f64 {
    let body = reqwest::get(format!("http://{}/metrics", operator.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .filter(|line| {
            line.starts_with("bridge_operator_status_patches_total{")
                && line.contains("kind=\"EventConsumer\"")
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_settled_consumer_writes_nothing_on_resync() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "ec-steady").await;
    let operator = Operator::start(&[&ns.name]).await;
    let topics: Api<EventTopic> = Api::namespaced(client.clone(), &ns.name);
    ready_topic(&topics, "calm", 1).await;
    let consumers: Api<EventConsumer> = Api::namespaced(client.clone(), &ns.name);
    create_consumer(
        &consumers,
        &event_consumer(
            "steady",
            json!({"topics": ["calm"], "sink": {"url": "http://127.0.0.1:9/"}, "replicas": 0}),
        ),
    )
    .await;
    let settled = wait_consumer(&consumers, "steady", "Ready (scaled to zero)", |c| {
        ready(c).is_some_and(|(s, r, _)| s == "True" && r == "ScaledToZero")
    })
    .await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let versions = || async {
        (
            deployments
                .get("steady-consumer")
                .await
                .unwrap()
                .metadata
                .resource_version,
            config_maps
                .get("steady-consumer")
                .await
                .unwrap()
                .metadata
                .resource_version,
        )
    };
    let before = versions().await;

    tokio::time::sleep(support::RESYNC * 3).await;
    assert_eq!(
        versions().await,
        before,
        "Deployment and ConfigMap untouched"
    );
    assert_eq!(
        consumers
            .get("steady")
            .await
            .unwrap()
            .metadata
            .resource_version,
        settled.metadata.resource_version,
        "status not rewritten"
    );
    // Not asserted: the operator's status-patch count. A pass that read the object before
    // the watch delivered the operator's own last write can still send that same status
    // once; the API server then stores nothing (the resourceVersion checks above).
    assert!(consumer_status_patches(&operator).await > 0.0);
    assert!(operator.metric("bridge_operator_reconciles_total").await > 0.0);
}
