//! The workloads' Kafka Secret end to end (`--workload-kafka-secret`): a namespace without
//! it is told so by name, and once it exists the receiver's Pod mounts it, reads its
//! librdkafka properties through `kafka.propertiesFile`, and publishes.
//!
//! The receiver Pod runs on the stack's node, and its kubelet mounts the Secret.

mod support;

use bridge_api::{EventTopic, WebhookIngress};
use bridge_e2e::{Stack, TestNamespace, eventually, unique_name};
use futures::StreamExt;
use hook_receiver::config::ReceiverConfig;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use serde_json::json;
use support::{BOUND, Operator, create, event_topic, wait_ready};

const KAFKA_SECRET: &str = "kafka-client";
const CHECKSUM: &str = "bridge.omninode.io/config-checksum";

#[tokio::test]
async fn a_receiver_connects_with_the_properties_of_its_namespaces_kafka_secret() {
    let client = Stack::from_env().unwrap().kube_client().await;
    let ns = TestNamespace::create(&client, "wk-secret").await;
    let _operator =
        Operator::start_with(&[&ns.name], &["--workload-kafka-secret", KAFKA_SECRET]).await;
    let topics: Api<EventTopic> = Api::namespaced(client.clone(), &ns.name);
    let ingresses: Api<WebhookIngress> = Api::namespaced(client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns.name);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &ns.name);
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns.name);

    let kafka_topic = unique_name("open");
    create(
        &topics,
        &event_topic("open", json!({"topicName": kafka_topic, "partitions": 1})),
    )
    .await;
    wait_ready(&topics, "open", "True", "TopicReady").await;
    let wi: WebhookIngress = serde_json::from_value(json!({
        "apiVersion": "bridge.omninode.io/v1alpha1",
        "kind": "WebhookIngress",
        "metadata": {"name": "open"},
        "spec": {"replicas": 1, "routes": [{"name": "open", "path": "/open", "topic": "open",
            "eventType": {"value": "com.example.ping"}, "auth": {"none": {}}}]},
    }))
    .unwrap();
    ingresses.create(&PostParams::default(), &wi).await.unwrap();

    // Without the Secret in the namespace: named, and nothing is run.
    let ready = |status: &'static str, reason: &'static str| {
        let ingresses = ingresses.clone();
        async move {
            eventually(&format!("Ready={status} ({reason})"), BOUND, || async {
                let wi = ingresses.get("open").await.ok()?;
                let ready = bridge_api::find_condition(&wi.status?.conditions, "Ready")?.clone();
                (ready.status == status && ready.reason == reason).then_some(ready)
            })
            .await
        }
    };
    let missing = ready("False", "SecretNotFound").await;
    assert!(
        missing
            .message
            .contains(&format!("Secret {}/{KAFKA_SECRET} does not exist", ns.name)),
        "{}",
        missing.message
    );
    assert!(
        missing.message.contains("properties.yaml"),
        "{}",
        missing.message
    );
    assert!(sets.get_opt("open-receiver").await.unwrap().is_none());

    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": KAFKA_SECRET},
        "stringData": {"properties.yaml": "client.id: from-secret\n"},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();

    // The receiver starts only if its loader read the mounted file.
    ready("True", "Running").await;
    let config_map = config_maps.get("open-receiver").await.unwrap();
    let text = &config_map.data.unwrap()["receiver.yaml"];
    let config = ReceiverConfig::parse(text).unwrap();
    assert_eq!(
        config.kafka.properties_file.as_deref(),
        Some(std::path::Path::new(
            "/etc/omninode-bridge/kafka/properties.yaml"
        ))
    );
    assert!(config.kafka.properties.is_empty(), "{text}");
    assert!(!text.contains("from-secret"), "{text}");

    let endpoint = eventually("a ready receiver endpoint", BOUND, || async {
        support::ready_endpoints(&client, &ns.name, "open-receiver", "http")
            .await
            .into_iter()
            .next()
    })
    .await;
    let body = serde_json::to_vec(&json!({"ping": unique_name("ping")})).unwrap();
    let response = reqwest::Client::new()
        .post(format!("http://{endpoint}/open"))
        .header("content-type", "application/json")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "HTTP {}", response.status());

    let consumer: StreamConsumer = Stack::from_env()
        .unwrap()
        .kafka_config()
        .set("group.id", unique_name("wk-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[kafka_topic.as_str()]).unwrap();
    let message = tokio::time::timeout(BOUND, consumer.stream().next())
        .await
        .expect("an event on the topic")
        .unwrap()
        .unwrap();
    assert_eq!(message.payload(), Some(body.as_slice()));

    // Rotated credentials roll the pods within a resync, as a route's Secret does.
    let checksum = |deployment: StatefulSet| {
        deployment.spec?.template.metadata?.annotations?[CHECKSUM]
            .clone()
            .into()
    };
    let before: Option<String> = checksum(sets.get("open-receiver").await.unwrap());
    secrets
        .patch(
            KAFKA_SECRET,
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"properties.yaml": "client.id: rotated\n"}})),
        )
        .await
        .unwrap();
    eventually("a new checksum on the pod template", BOUND, || async {
        let now = checksum(sets.get("open-receiver").await.ok()?);
        (now.is_some() && now != before).then_some(())
    })
    .await;
}
