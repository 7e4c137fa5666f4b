//! All brokers gone and back: the operator reports KafkaUnavailable, keeps running (no
//! crash loop), and converges once Kafka returns. This binary stops every broker, so it
//! holds a single test and restarts them even when the test fails.

mod support;

use bridge_api::EventTopic;
use bridge_e2e::{Stack, TestNamespace, unique_name};
use kube::api::Api;
use serde_json::json;
use support::{Broker, BrokersDown, Operator, create, event_topic, wait_ready};

#[tokio::test]
async fn kafka_outage_is_reported_and_the_operator_recovers_without_restarting() {
    let stack = Stack::from_env().unwrap();
    let client = stack.kube_client().await;
    let ns = TestNamespace::create(&client, "et-outage").await;
    let mut operator = Operator::start(&[&ns.name]).await;
    let api: Api<EventTopic> = Api::namespaced(client, &ns.name);

    let outage = BrokersDown::stop_all(stack);
    let topic = unique_name("outage");
    create(&api, &event_topic("outage", json!({"topicName": topic}))).await;
    let message = wait_ready(&api, "outage", "False", "KafkaUnavailable").await;
    assert!(message.contains("cannot reach Kafka"), "{message}");
    assert!(
        operator.is_running(),
        "the operator must not exit while Kafka is away"
    );
    assert!(
        operator
            .metric("bridge_operator_reconcile_failures_total")
            .await
            >= 1.0
    );

    drop(outage);
    wait_ready(&api, "outage", "True", "TopicReady").await;
    Broker::connect()
        .wait_for("the topic on the broker", &topic, |t| t.is_some())
        .await;
    assert!(operator.is_running());
}
