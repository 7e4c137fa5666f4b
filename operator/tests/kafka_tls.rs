//! `--kafka-properties` against the stack's SSL listeners: with `security.protocol: ssl`
//! and the stack's CA the operator manages topics over TLS; without them it reports that
//! it cannot reach Kafka, and keeps running.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use bridge_api::EventTopic;
use bridge_e2e::{KafkaSsl, Stack, StackKind, TestNamespace, unique_name};
use kube::api::Api;
use rdkafka::admin::AdminClient;
use rdkafka::client::DefaultClientContext;
use serde_json::json;
use support::{Broker, Operator, create, event_topic, wait_ready};

/// The local stack's SSL listeners, once a TLS client verifying them against the stack's
/// CA has seen all three brokers there. Checked first so that the test without properties
/// cannot pass because nothing listens. None (with a note) on an external stack, whose
/// brokers have no listeners of the stack's.
async fn ssl_listeners(stack: &Stack) -> Option<KafkaSsl> {
    if stack.kind == StackKind::External {
        eprintln!("external Kafka: no SSL listeners of the stack's; skipped");
        return None;
    }
    let ssl = stack.kafka_ssl().unwrap_or_else(|error| panic!("{error}"));
    let client: std::sync::Arc<AdminClient<DefaultClientContext>> =
        std::sync::Arc::new(ssl.kafka_config().create().unwrap());
    // Brokers restarted by the test before (the outage test stops all three) take a moment
    // to be back in each other's metadata.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let client = client.clone();
        let brokers = tokio::task::spawn_blocking(move || {
            client
                .inner()
                .fetch_metadata(None, Duration::from_secs(10))
                .map(|metadata| metadata.brokers().len())
        })
        .await
        .unwrap();
        match brokers {
            Ok(3) => return Some(ssl),
            other if std::time::Instant::now() > deadline => panic!(
                "the SSL listeners at {} do not serve three brokers to a TLS client with the CA {} ({other:?}); `e2e/stack.sh status` says whether the brokers were started before they had one",
                ssl.bootstrap_servers,
                ssl.ca_file.display()
            ),
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// A `--kafka-properties` file: a YAML map of librdkafka properties.
fn properties_file(name: &str, properties: &[(&str, &str)]) -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kafka-properties");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.yaml"));
    let yaml: String = properties
        .iter()
        .map(|(key, value)| format!("{key}: {}\n", json!(value)))
        .collect();
    std::fs::write(&path, yaml).unwrap();
    path
}

#[tokio::test]
async fn with_ssl_properties_the_operator_creates_topics_through_the_ssl_listener() {
    let stack = Stack::from_env().unwrap();
    let Some(ssl) = ssl_listeners(&stack).await else {
        return;
    };
    let client = stack.kube_client().await;
    let ns = TestNamespace::create(&client, "et-tls").await;
    let ca_file = ssl.ca_file.to_string_lossy();
    let properties = properties_file(
        &ns.name,
        &[("security.protocol", "ssl"), ("ssl.ca.location", &ca_file)],
    );
    let _operator = Operator::start_with(
        &[&ns.name],
        &[
            "--kafka-bootstrap-servers",
            &ssl.bootstrap_servers,
            "--kafka-properties",
            &properties.to_string_lossy(),
        ],
    )
    .await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);

    let topic = unique_name("tls");
    create(
        &api,
        &event_topic("over-tls", json!({"topicName": topic, "partitions": 2})),
    )
    .await;

    wait_ready(&api, "over-tls", "True", "TopicReady").await;
    let described = Broker::connect()
        .wait_for("the topic on the broker", &topic, |t| t.is_some())
        .await
        .unwrap();
    assert_eq!(described.partitions, 2);
    assert_eq!(described.replication_factor, 3);
}

#[tokio::test]
async fn without_ssl_properties_the_operator_reports_kafka_unavailable_on_the_ssl_listener() {
    let stack = Stack::from_env().unwrap();
    let Some(ssl) = ssl_listeners(&stack).await else {
        return;
    };
    let client = stack.kube_client().await;
    let ns = TestNamespace::create(&client, "et-no-tls").await;
    let mut operator = Operator::start_with(
        &[&ns.name],
        &["--kafka-bootstrap-servers", &ssl.bootstrap_servers],
    )
    .await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);

    let topic = unique_name("no-tls");
    create(&api, &event_topic("plaintext", json!({"topicName": topic}))).await;

    let message = wait_ready(&api, "plaintext", "False", "KafkaUnavailable").await;
    assert!(message.contains("cannot reach Kafka"), "{message}");
    assert!(
        operator.is_running(),
        "the operator must keep running while it cannot reach Kafka"
    );
    assert_eq!(Broker::connect().describe(&topic).await, None);
}
