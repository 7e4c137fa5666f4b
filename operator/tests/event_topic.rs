//! EventTopic behaviour end to end: the operator runs as a process against the real API
//! server and the three real brokers, and each test checks the topic on the broker itself.

mod support;

use bridge_api::EventTopic;
use bridge_e2e::{Stack, TestNamespace, eventually, unique_name};
use futures::StreamExt;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;
use serde_json::json;
use support::{BOUND, Broker, Operator, RESYNC, condition, create, event_topic, wait_ready};

async fn client() -> kube::Client {
    Stack::from_env().unwrap().kube_client().await
}

async fn patch_spec(api: &Api<EventTopic>, name: &str, spec: serde_json::Value) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": spec})),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn creates_the_topic_with_replication_retention_cleanup_policy_and_configs() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "et-create").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);
    let topic = unique_name("state");
    create(
        &api,
        &event_topic(
            "state",
            json!({"topicName": topic, "partitions": 3, "cleanupPolicy": "compact", "config": {"segment.ms": "3600000"}}),
        ),
    )
    .await;

    wait_ready(&api, "state", "True", "TopicReady").await;
    let on_broker = Broker::connect()
        .wait_for("the topic on the broker", &topic, |t| t.is_some())
        .await
        .unwrap();
    assert_eq!(on_broker.partitions, 3);
    assert_eq!(on_broker.replication_factor, 3);
    assert_eq!(on_broker.configs["retention.ms"], "2592000000");
    assert_eq!(on_broker.configs["cleanup.policy"], "compact");
    assert_eq!(on_broker.configs["segment.ms"], "3600000");

    let status = api.get("state").await.unwrap().status.unwrap();
    assert_eq!(status.topic_name.as_deref(), Some(topic.as_str()));
    assert_eq!(status.partitions, Some(3));
    assert_eq!(status.replication_factor, Some(3));
    // Kafka's own spelling of the id, as its Java tools print it.
    let id = kafka_topics_id(&topic);
    assert_eq!(wait_topic_id(&api, "state", |_| true).await, id);
}

/// The `TopicId` that Kafka's `kafka-topics --describe` prints for `topic`.
fn kafka_topics_id(topic: &str) -> String {
    let stack = Stack::from_env().unwrap();
    let output = std::process::Command::new("kafka-topics")
        .args([
            "--bootstrap-server",
            &stack.kafka_bootstrap_servers,
            "--describe",
            "--topic",
            topic,
        ])
        .output()
        .expect("kafka-topics runs (the stack's bin directory is on PATH)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .split_whitespace()
        .skip_while(|word| *word != "TopicId:")
        .nth(1)
        .unwrap_or_else(|| panic!("no TopicId in kafka-topics' output: {stdout}"))
        .to_owned()
}

/// Waits until `status.topicId` is set and `check` holds for it; returns it.
async fn wait_topic_id(api: &Api<EventTopic>, name: &str, check: impl Fn(&str) -> bool) -> String {
    eventually(&format!("{name}: status.topicId"), BOUND, || async {
        let id = api.get(name).await.ok()?.status?.topic_id?;
        check(&id).then_some(id)
    })
    .await
}

#[tokio::test]
async fn adopts_an_existing_topic_and_brings_it_to_the_spec_keeping_unmanaged_keys() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "et-adopt").await;
    let broker = Broker::connect();
    let topic = unique_name("legacy");
    broker
        .create_topic(
            &topic,
            2,
            &[("retention.ms", "1000"), ("max.message.bytes", "2000000")],
        )
        .await;
    let _operator = Operator::start(&[&ns.name]).await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);
    create(
        &api,
        &event_topic(
            "legacy",
            json!({"topicName": topic, "partitions": 4, "adoptExisting": true}),
        ),
    )
    .await;

    wait_ready(&api, "legacy", "True", "TopicReady").await;
    let on_broker = broker
        .wait_for("4 partitions", &topic, |t| {
            t.is_some_and(|t| t.partitions == 4)
        })
        .await
        .unwrap();
    assert_eq!(on_broker.partitions, 4);
    assert_eq!(on_broker.configs["retention.ms"], "2592000000");
    assert_eq!(on_broker.configs["cleanup.policy"], "delete");
    assert_eq!(
        on_broker.configs["max.message.bytes"], "2000000",
        "a key the spec does not manage is left alone"
    );
}

/// A topic as another team's tool would make it: not what an EventTopic's defaults ask for.
async fn made_outside(broker: &Broker, prefix: &str) -> (String, support::BrokerTopic) {
    let topic = unique_name(prefix);
    broker
        .create_topic(
            &topic,
            2,
            &[("retention.ms", "1000"), ("cleanup.policy", "compact")],
        )
        .await;
    let before = broker
        .wait_for("the topic made outside", &topic, |t| {
            t.is_some_and(|t| t.configs.contains_key("cleanup.policy"))
        })
        .await
        .unwrap();
    (topic, before)
}

#[tokio::test]
async fn a_topic_made_outside_is_left_untouched_and_reported_until_the_object_opts_in() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "et-foreign").await;
    let broker = Broker::connect();
    let (topic, before) = made_outside(&broker, "foreign").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);
    create(
        &api,
        &event_topic("foreign", json!({"topicName": topic, "partitions": 4})),
    )
    .await;

    let message = wait_ready(&api, "foreign", "False", "TopicExists").await;
    assert!(message.contains("spec.adoptExisting: true"), "{message}");
    tokio::time::sleep(RESYNC * 2).await;
    assert_eq!(
        broker.describe(&topic).await.as_ref(),
        Some(&before),
        "neither configs nor partitions changed"
    );
    let status = api.get("foreign").await.unwrap().status.unwrap();
    assert_eq!(status.topic_id, None, "the topic is not the object's");
}

#[tokio::test]
async fn deleting_an_object_under_delete_policy_leaves_a_topic_it_never_adopted() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "et-foreign-del").await;
    let broker = Broker::connect();
    let (topic, before) = made_outside(&broker, "foreign-del").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);
    create(
        &api,
        &event_topic(
            "foreign",
            json!({"topicName": topic, "deletionPolicy": "Delete"}),
        ),
    )
    .await;
    // Reconciled once: the finalizer of deletionPolicy Delete is on.
    eventually("the object reconciled", BOUND, || async {
        let t = api.get("foreign").await.ok()?;
        condition(&t, "Ready").and(t.metadata.finalizers)
    })
    .await;

    api.delete("foreign", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the object gone", BOUND, || async {
        api.get_opt("foreign").await.ok()?.is_none().then_some(())
    })
    .await;
    assert_eq!(broker.describe(&topic).await, Some(before));
}

#[tokio::test]
async fn topics_get_min_insync_replicas_of_two_at_most_their_replication_factor() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "et-minisr").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);
    let replicated = unique_name("rf3");
    let single = unique_name("rf1");
    create(&api, &event_topic("rf3", json!({"topicName": replicated}))).await;
    create(
        &api,
        &event_topic("rf1", json!({"topicName": single, "replicationFactor": 1})),
    )
    .await;
    wait_ready(&api, "rf3", "True", "TopicReady").await;
    wait_ready(&api, "rf1", "True", "TopicReady").await;

    // Configs set on the topic itself: the stack's brokers default to 2, which must not count.
    let broker = Broker::connect();
    let min_insync = |topic: String| {
        let broker = &broker;
        async move {
            let on_broker = broker
                .wait_for("the topic's configs", &topic, |t| {
                    t.is_some_and(|t| t.configs.contains_key("cleanup.policy"))
                })
                .await
                .unwrap();
            on_broker.configs.get("min.insync.replicas").cloned()
        }
    };
    assert_eq!(min_insync(replicated).await.as_deref(), Some("2"));
    assert_eq!(min_insync(single).await.as_deref(), Some("1"));
}

#[tokio::test]
async fn drift_is_corrected_and_a_topic_deleted_behind_its_back_is_recreated_with_a_warning() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "et-drift").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let api: Api<EventTopic> = Api::namespaced(client.clone(), &ns.name);
    let topic = unique_name("drift");
    create(
        &api,
        &event_topic("drift", json!({"topicName": topic, "partitions": 2})),
    )
    .await;
    wait_ready(&api, "drift", "True", "TopicReady").await;
    let first_id = wait_topic_id(&api, "drift", |_| true).await;
    let broker = Broker::connect();

    // Someone changes retention and drops cleanup.policy.
    broker
        .set_configs(&topic, &[("retention.ms", "1000")])
        .await;
    broker
        .wait_for("managed configs restored", &topic, |t| {
            t.is_some_and(|t| {
                t.configs.get("retention.ms").map(String::as_str) == Some("2592000000")
                    && t.configs.get("cleanup.policy").map(String::as_str) == Some("delete")
            })
        })
        .await;

    broker.delete_topic(&topic).await;
    broker
        .wait_for("the topic re-created", &topic, |t| {
            t.is_some_and(|t| t.partitions == 2)
        })
        .await;
    let events: Api<Event> = Api::namespaced(client, &ns.name);
    let warning = eventually("a TopicRecreated warning Event", BOUND, || async {
        events
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("TopicRecreated"))
    })
    .await;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    assert!(warning.note.unwrap().contains(&topic));
    // The re-created topic is another topic to Kafka: status follows its new id.
    let new_id = wait_topic_id(&api, "drift", |id| id != first_id).await;
    assert_eq!(new_id, kafka_topics_id(&topic));
}

#[tokio::test]
async fn partitions_grow_and_a_replication_factor_change_is_reported_not_ignored() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "et-grow").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);
    let topic = unique_name("grow");
    create(
        &api,
        &event_topic("grow", json!({"topicName": topic, "partitions": 3})),
    )
    .await;
    wait_ready(&api, "grow", "True", "TopicReady").await;
    let broker = Broker::connect();

    patch_spec(&api, "grow", json!({"partitions": 6})).await;
    broker
        .wait_for("6 partitions", &topic, |t| {
            t.is_some_and(|t| t.partitions == 6)
        })
        .await;

    patch_spec(&api, "grow", json!({"replicationFactor": 2})).await;
    let message = wait_ready(&api, "grow", "False", "ReplicationFactorChangeUnsupported").await;
    assert!(
        message.contains("spec.replicationFactor back to 3"),
        "{message}"
    );
    assert_eq!(broker.describe(&topic).await.unwrap().replication_factor, 3);
}

#[tokio::test]
async fn the_oldest_object_wins_a_topic_name_and_the_loser_never_deletes_it() {
    let client = client().await;
    let first = TestNamespace::create(&client, "et-owner").await;
    let second = TestNamespace::create(&client, "et-rival").await;
    let _operator = Operator::start(&[&first.name, &second.name]).await;
    let topic = unique_name("shared");
    let owner_api: Api<EventTopic> = Api::namespaced(client.clone(), &first.name);
    let rival_api: Api<EventTopic> = Api::namespaced(client.clone(), &second.name);
    create(
        &owner_api,
        &event_topic("owner", json!({"topicName": topic})),
    )
    .await;
    wait_ready(&owner_api, "owner", "True", "TopicReady").await;

    create(
        &rival_api,
        &event_topic(
            "rival",
            json!({"topicName": topic, "deletionPolicy": "Delete", "partitions": 12}),
        ),
    )
    .await;
    let message = wait_ready(&rival_api, "rival", "False", "Conflict").await;
    assert!(
        message.contains(&format!("{}/owner", first.name)),
        "{message}"
    );
    let rival = rival_api.get("rival").await.unwrap();
    assert_eq!(
        condition(&rival, "Conflict").unwrap().reason,
        "TopicClaimed"
    );

    rival_api
        .delete("rival", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the rival object gone", BOUND, || async {
        rival_api
            .get_opt("rival")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let on_broker = Broker::connect().describe(&topic).await;
    assert_eq!(
        on_broker.map(|t| t.partitions),
        Some(6),
        "the owner's topic is untouched by the rival"
    );
}

#[tokio::test]
async fn retain_leaves_the_topic_and_delete_removes_it_through_a_finalizer() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "et-delete").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);
    let broker = Broker::connect();
    let kept = unique_name("kept");
    let removed = unique_name("removed");
    create(&api, &event_topic("kept", json!({"topicName": kept}))).await;
    create(
        &api,
        &event_topic(
            "removed",
            json!({"topicName": removed, "deletionPolicy": "Delete"}),
        ),
    )
    .await;
    wait_ready(&api, "kept", "True", "TopicReady").await;
    wait_ready(&api, "removed", "True", "TopicReady").await;
    assert!(api.get("kept").await.unwrap().metadata.finalizers.is_none());
    assert_eq!(
        api.get("removed").await.unwrap().metadata.finalizers,
        Some(vec!["bridge.omninode.io/delete-topic".to_string()])
    );

    api.delete("kept", &DeleteParams::default()).await.unwrap();
    api.delete("removed", &DeleteParams::default())
        .await
        .unwrap();
    broker
        .wait_for("the Delete topic gone", &removed, |t| t.is_none())
        .await;
    eventually("both objects gone", BOUND, || async {
        let left = api.list(&ListParams::default()).await.ok()?;
        left.items.is_empty().then_some(())
    })
    .await;
    assert!(
        broker.describe(&kept).await.is_some(),
        "Retain keeps the topic"
    );
}

#[tokio::test]
async fn a_paused_object_is_left_alone_until_the_annotation_goes() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "et-pause").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);
    let topic = unique_name("paused");
    create(&api, &event_topic("paused", json!({"topicName": topic}))).await;
    wait_ready(&api, "paused", "True", "TopicReady").await;
    let annotate = |value: serde_json::Value| {
        Patch::Merge(json!({"metadata": {"annotations": {"bridge.omninode.io/paused": value}}}))
    };
    api.patch("paused", &PatchParams::default(), &annotate(json!("true")))
        .await
        .unwrap();
    eventually("the Paused condition", BOUND, || async {
        let t = api.get("paused").await.ok()?;
        (condition(&t, "Paused")?.status == "True").then_some(())
    })
    .await;

    let broker = Broker::connect();
    broker
        .set_configs(&topic, &[("retention.ms", "1000")])
        .await;
    tokio::time::sleep(RESYNC * 3).await;
    let on_broker = broker.describe(&topic).await.unwrap();
    assert_eq!(
        on_broker.configs["retention.ms"], "1000",
        "paused: drift stays"
    );

    api.patch(
        "paused",
        &PatchParams::default(),
        &annotate(serde_json::Value::Null),
    )
    .await
    .unwrap();
    broker
        .wait_for("drift corrected after unpausing", &topic, |t| {
            t.is_some_and(|t| t.configs["retention.ms"] == "2592000000")
        })
        .await;
    let t = api.get("paused").await.unwrap();
    assert!(condition(&t, "Paused").is_none());
}

#[tokio::test]
async fn a_config_kafka_refuses_is_reported_with_what_to_fix() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "et-badcfg").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);
    let topic = unique_name("badcfg");
    create(
        &api,
        &event_topic(
            "badcfg",
            json!({"topicName": topic, "config": {"no.such.config": "1"}}),
        ),
    )
    .await;
    let message = wait_ready(&api, "badcfg", "False", "InvalidConfig").await;
    assert!(message.contains("spec.config"), "{message}");
    assert!(Broker::connect().describe(&topic).await.is_none());
}

#[tokio::test]
async fn steady_state_makes_no_kafka_writes_and_no_status_writes() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "et-steady").await;
    let operator = Operator::start(&[&ns.name]).await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);
    for i in 0..5 {
        let name = format!("steady-{i}");
        create(
            &api,
            &event_topic(&name, json!({"topicName": unique_name("steady")})),
        )
        .await;
    }
    for i in 0..5 {
        wait_ready(&api, &format!("steady-{i}"), "True", "TopicReady").await;
    }
    // Let the writes of the first pass settle, then watch several resyncs.
    tokio::time::sleep(RESYNC * 2).await;
    let writes = operator.metric("bridge_operator_kafka_writes_total").await;
    let patches = operator
        .metric("bridge_operator_status_patches_total")
        .await;
    let reconciles = operator.metric("bridge_operator_reconciles_total").await;
    tokio::time::sleep(RESYNC * 4).await;
    assert!(
        operator.metric("bridge_operator_reconciles_total").await >= reconciles + 10.0,
        "the resyncs ran"
    );
    assert_eq!(
        operator.metric("bridge_operator_kafka_writes_total").await,
        writes
    );
    assert_eq!(
        operator
            .metric("bridge_operator_status_patches_total")
            .await,
        patches
    );
}

#[tokio::test]
async fn a_restarted_operator_converges_every_object() {
    let client = client().await;
    let ns = TestNamespace::create(&client, "et-restart").await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);
    let topics: Vec<String> = (0..20).map(|_| unique_name("restart")).collect();
    for (i, topic) in topics.iter().enumerate() {
        create(
            &api,
            &event_topic(
                &format!("t{i}"),
                json!({"topicName": topic, "partitions": 2}),
            ),
        )
        .await;
    }
    let mut operator = Operator::start(&[&ns.name]).await;
    wait_ready(&api, "t0", "True", "TopicReady").await;
    operator.kill();
    // Same identity as the killed process (a restarted Pod keeps its name), so it takes
    // the Lease back at once and picks up wherever the first one stopped.
    let _operator = Operator::start(&[&ns.name]).await;
    let broker = Broker::connect();
    for (i, topic) in topics.iter().enumerate() {
        wait_ready(&api, &format!("t{i}"), "True", "TopicReady").await;
        broker
            .wait_for("2 partitions", topic, |t| {
                t.is_some_and(|t| t.partitions == 2)
            })
            .await;
    }
}

#[tokio::test]
async fn each_change_to_kafka_is_published_on_audit_events() {
    let broker = Broker::connect();
    broker.create_topic("audit-events", 3, &[]).await;
    let client = client().await;
    let ns = TestNamespace::create(&client, "et-audit").await;
    let _operator = Operator::start(&[&ns.name]).await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);
    let topic = unique_name("audited");
    create(
        &api,
        &event_topic("audited", json!({"topicName": topic, "partitions": 1})),
    )
    .await;
    wait_ready(&api, "audited", "True", "TopicReady").await;
    patch_spec(&api, "audited", json!({"partitions": 2})).await;
    broker
        .wait_for("2 partitions", &topic, |t| {
            t.is_some_and(|t| t.partitions == 2)
        })
        .await;

    let consumer: StreamConsumer = Stack::from_env()
        .unwrap()
        .kafka_config()
        .set("group.id", unique_name("audit-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&["audit-events"]).unwrap();
    let mut stream = consumer.stream();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + BOUND;
    while seen.len() < 2 {
        let message = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("audit events for {topic} seen so far: {seen:?}"))
            .unwrap()
            .unwrap();
        let headers = message.headers().unwrap();
        let header = |name: &str| {
            headers
                .iter()
                .find(|h| h.key == name)
                .and_then(|h| h.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        if header("ce_subject").as_deref() != Some(topic.as_str()) {
            continue;
        }
        let data: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
        seen.push((header("ce_type").unwrap(), data));
    }
    // Exactly these two, in order: no spurious config write after the creation.
    assert_eq!(seen[0].0, "io.omninode.bridge.topic.created", "{seen:#?}");
    assert_eq!(seen[0].1["object"]["namespace"], ns.name);
    assert_eq!(
        seen[1].0, "io.omninode.bridge.topic.partitionsincreased",
        "{seen:#?}"
    );
    assert_eq!(
        seen[1].1["changes"],
        json!([{"field": "partitions", "old": "1", "new": "2"}])
    );
}

/// The value of the sample `name{labels}` on the operator's /metrics (0 when absent).
async fn sample(operator: &Operator, name: &str, labels: &str) -> f64 {
    let body = reqwest::get(format!("http://{}/metrics", operator.admin))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}{{{labels}}} ")))
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn drift_on_many_topics_at_once_is_corrected_in_one_request_per_kind() {
    const TOPICS: usize = 10;
    let client = client().await;
    let ns = TestNamespace::create(&client, "et-batch").await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);
    let topics: Vec<String> = (0..TOPICS).map(|_| unique_name("batch")).collect();
    for (i, topic) in topics.iter().enumerate() {
        create(
            &api,
            &event_topic(
                &format!("t{i}"),
                json!({"topicName": topic, "partitions": 1}),
            ),
        )
        .await;
    }
    let mut operator = Operator::start(&[&ns.name]).await;
    for i in 0..TOPICS {
        wait_ready(&api, &format!("t{i}"), "True", "TopicReady").await;
    }
    // While no operator runs, every topic drifts and every spec asks for more partitions;
    // the next operator reconciles all of them at once.
    operator.kill();
    let broker = Broker::connect();
    for (i, topic) in topics.iter().enumerate() {
        broker.set_configs(topic, &[("retention.ms", "1000")]).await;
        patch_spec(&api, &format!("t{i}"), json!({"partitions": 2})).await;
    }
    let operator = Operator::start(&[&ns.name]).await;
    for topic in &topics {
        broker
            .wait_for("configs restored and 2 partitions", topic, |t| {
                t.is_some_and(|t| {
                    t.partitions == 2
                        && t.configs.get("retention.ms").map(String::as_str) == Some("2592000000")
                })
            })
            .await;
    }
    // Typically one request each; a loaded machine may spread the reconciles over a few
    // batch windows, never back to one request per topic.
    let most = (TOPICS / 2) as f64;
    for operation in ["alter_configs", "create_partitions"] {
        let label = format!("operation=\"{operation}\"");
        let topics_written = sample(
            &operator,
            "bridge_operator_kafka_admin_batch_size_sum",
            &label,
        )
        .await;
        let sent = sample(&operator, "bridge_operator_kafka_writes_total", &label).await;
        assert_eq!(
            topics_written, TOPICS as f64,
            "{operation}: every topic written once"
        );
        assert!(
            sent <= most,
            "{operation}: {TOPICS} topics in {sent} requests, expected at most {most}"
        );
    }
}
