//! What Kafka refuses for good never wedges the receiver: an event larger than the
//! producer sends, or than the topic takes (its `max.message.bytes`, read from Kafka), is
//! answered 413 with the reason instead of being spooled, and the events after it are
//! published; a spooled event Kafka refuses when the spool drains (it was spooled while
//! the topic's limit was unknown) is moved to the spool's quarantine file, the events
//! after it drain in order, and the drain (as a drain Job runs it) fails so its volume is
//! kept.
//! The topics here take at most 4 KiB per record (`max.message.bytes`).

mod common;

use std::time::Duration;

use bridge_e2e::Stack;
use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// The largest record the test topics take.
const TOPIC_MAX_BYTES: usize = 4096;

async fn small_record_topic(stack: &Stack) -> String {
    let name = bridge_e2e::unique_name("refused");
    let admin: AdminClient<DefaultClientContext> = stack.kafka_config().create().unwrap();
    let max = TOPIC_MAX_BYTES.to_string();
    let topic = NewTopic::new(&name, 1, TopicReplication::Fixed(3)).set("max.message.bytes", &max);
    for result in admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .expect("creating a topic")
    {
        result.expect("the topic is created");
    }
    name
}

fn routes(topic: &str, token_file: &std::path::Path) -> String {
    format!(
        "  - name: steps\n    path: /steps\n    topic: {topic}\n    eventType: {{value: workflow.step}}\n    correlationId: {{header: X-Workflow}}\n    auth: {{bearer: {{secretFile: {}}}}}\n",
        token_file.display()
    )
}

/// A JSON body of about `bytes` bytes carrying `seq`.
fn body(seq: u64, bytes: usize) -> String {
    format!(
        "{{\"seq\":{seq},\"padding\":\"{}\"}}",
        "x".repeat(bytes.saturating_sub(32))
    )
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> (u16, serde_json::Value) {
    let response = client
        .post(url)
        .header("Authorization", "Bearer refused-token")
        .header("X-Workflow", "workflow-1")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

fn seq_of(message: &rdkafka::message::OwnedMessage) -> u64 {
    use rdkafka::Message;
    let data: serde_json::Value = serde_json::from_slice(message.payload().unwrap()).unwrap();
    data["seq"].as_u64().unwrap()
}

#[tokio::test]
async fn an_event_kafka_cannot_take_is_answered_413_and_the_events_after_it_are_published() {
    let stack = stack();
    let topic = small_record_topic(&stack).await;
    let dir = scratch_dir("refused-direct");
    let token = dir.join("token");
    std::fs::write(&token, "refused-token").unwrap();
    let config = config_yaml(
        &dir,
        free_port(),
        free_port(),
        &stack.kafka_bootstrap_servers,
        "instance: refused-direct",
        &routes(&topic, &token),
    );
    let receiver = Receiver::start(&dir, &config).await;
    let client = reqwest::Client::new();
    let url = format!("{}/steps", receiver.url);

    // Under the route's 1 MiB body limit, over the producer's 1,000,000-byte records.
    let (status, answer) = post(&client, &url, body(0, 1_000_100)).await;
    assert_eq!(status, 413, "{answer}");
    let reason = answer["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains("producer sends (message.max.bytes) at most 1000000"),
        "{reason}"
    );
    // Under the producer's limit, over the topic's, which the receiver read from Kafka.
    let (status, answer) = post(&client, &url, body(1, 3 * TOPIC_MAX_BYTES)).await;
    assert_eq!(status, 413, "{answer}");
    let reason = answer["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("(its max.message.bytes is {TOPIC_MAX_BYTES})")),
        "{reason}"
    );

    for seq in 2..7 {
        let (status, answer) = post(&client, &url, body(seq, 100)).await;
        assert_eq!(
            (status, answer["status"].as_str()),
            (200, Some("published")),
            "event {seq} after the refused ones: {answer}\n{}",
            receiver.log()
        );
    }
    let messages = read_topic(&stack, &topic, 5, Duration::from_secs(30)).await;
    let seqs: Vec<u64> = messages.iter().map(seq_of).collect();
    assert_eq!(seqs, [2, 3, 4, 5, 6]);
    let text = receiver.metrics().await;
    assert_eq!(
        metric(
            &text,
            "hook_receiver_requests_total{route=\"steps\",outcome=\"refused_by_kafka\"}"
        ),
        Some(2.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_spooled_event_kafka_refuses_goes_to_quarantine_and_the_rest_drain_in_order() {
    let stack = stack();
    let topic = small_record_topic(&stack).await;
    let dir = scratch_dir("refused-spooled");
    let token = dir.join("token");
    std::fs::write(&token, "refused-token").unwrap();
    let routes = routes(&topic, &token);
    let nowhere = format!("127.0.0.1:{}", free_port());
    // Kafka unreachable: every event is answered from the spool.
    let extra = "publishTimeout: 1s\nshutdownTimeout: 6s\ninstance: refused-spooled";
    let mut receiver = Receiver::start(
        &dir,
        &config_yaml(&dir, free_port(), free_port(), &nowhere, extra, &routes),
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/steps", receiver.url);
    for (seq, bytes) in [(0, 100), (1, 3 * TOPIC_MAX_BYTES), (2, 100), (3, 100)] {
        let (status, answer) = post(&client, &url, body(seq, bytes)).await;
        assert_eq!(
            (status, answer["status"].as_str()),
            (200, Some("spooled")),
            "event {seq}: {answer}"
        );
    }
    receiver.signal("TERM");
    assert_eq!(
        receiver.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        receiver.log()
    );

    // The spool drained as a drain Job drains it, with Kafka reachable.
    let drain_config = dir.join("drain.yaml");
    std::fs::write(
        &drain_config,
        config_yaml(
            &dir,
            free_port(),
            free_port(),
            &stack.kafka_bootstrap_servers,
            "instance: refused-drain",
            &routes,
        ),
    )
    .unwrap();
    let mut drain = DrainProcess::start(&dir, &drain_config);
    let exit = drain.wait_exit(Duration::from_secs(120)).await;
    assert_eq!(
        exit.code(),
        Some(1),
        "a drain that left events in quarantine fails, so its volume is kept: {}",
        drain.log()
    );
    let message = std::fs::read_to_string(&drain.termination_log).unwrap();
    let quarantine = dir.join("spool").join("quarantine.log");
    assert!(
        message.trim_end().ends_with(&format!(
            "drained 3 events from {}; 1 events Kafka refused for good are kept in {}",
            dir.join("spool").display(),
            quarantine.display()
        )),
        "{message}"
    );
    let messages = read_topic(&stack, &topic, 3, Duration::from_secs(30)).await;
    let seqs: Vec<u64> = messages.iter().map(seq_of).collect();
    assert_eq!(
        seqs,
        [0, 2, 3],
        "the events around the refused one, in order"
    );
    let kept = std::fs::read(&quarantine).unwrap();
    assert!(
        kept.len() > 3 * TOPIC_MAX_BYTES,
        "the refused event is in quarantine.log ({} bytes)",
        kept.len()
    );
    assert!(
        String::from_utf8_lossy(&kept).contains("MessageSizeTooLarge"),
        "with its reason"
    );
}
