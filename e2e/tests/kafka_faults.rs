//! Broker faults on the real three-node cluster: `acks=all` with `min.insync.replicas=2`
//! survives one broker down, refuses (in bounded time) with two down, and recovers.
//! This binary stops and starts brokers, so it holds a single test.

use std::time::{Duration, Instant};

use bridge_e2e::{Stack, eventually, unique_name};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

const PARTITIONS: i32 = 3;
/// How long librdkafka may try one record before it reports failure.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

async fn produce(producer: &FutureProducer, topic: &str, count: usize) -> Result<(), KafkaError> {
    for i in 0..count {
        let key = format!("key-{i}");
        producer
            .send(
                FutureRecord::to(topic).key(&key).payload("payload"),
                Timeout::After(MESSAGE_TIMEOUT),
            )
            .await
            .map_err(|(error, _)| error)?;
    }
    Ok(())
}

fn full_isr(admin: &AdminClient<DefaultClientContext>, topic: &str) -> bool {
    admin
        .inner()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .is_ok_and(|metadata| {
            let partitions = metadata.topics()[0].partitions();
            partitions.len() == PARTITIONS as usize
                && partitions
                    .iter()
                    .all(|p| p.leader() > 0 && p.isr().len() == 3)
        })
}

#[tokio::test]
async fn acks_all_survives_one_broker_down_and_fails_in_bounded_time_with_two_down() {
    let stack = Stack::from_env().unwrap();
    let admin: AdminClient<DefaultClientContext> = stack.kafka_config().create().unwrap();
    let topic = unique_name("e2e-faults");
    admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(3),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await
        .unwrap()
        .remove(0)
        .unwrap();
    let producer: FutureProducer = stack
        .kafka_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set(
            "message.timeout.ms",
            MESSAGE_TIMEOUT.as_millis().to_string(),
        )
        .set("request.timeout.ms", "5000")
        .create()
        .unwrap();
    produce(&producer, &topic, 50)
        .await
        .expect("all brokers up");

    stack.kafka_stop(3).unwrap();
    produce(&producer, &topic, 50)
        .await
        .expect("acks=all succeeds with 2 of 3 replicas in sync");

    stack.kafka_stop(2).unwrap();
    let started = Instant::now();
    let error = produce(&producer, &topic, 1)
        .await
        .expect_err("acks=all must not succeed with 1 of 3 replicas");
    let elapsed = started.elapsed();
    let code = error.rdkafka_error_code();
    assert!(
        matches!(
            code,
            Some(
                RDKafkaErrorCode::NotEnoughReplicas
                    | RDKafkaErrorCode::NotEnoughReplicasAfterAppend
                    | RDKafkaErrorCode::MessageTimedOut
                    | RDKafkaErrorCode::RequestTimedOut
            )
        ),
        "unexpected error {error:?}"
    );
    assert!(
        elapsed < MESSAGE_TIMEOUT + Duration::from_secs(5),
        "refusal took {elapsed:?}"
    );

    stack.kafka_start(2).unwrap();
    stack.kafka_start(3).unwrap();
    eventually(
        "every partition back to 3 in-sync replicas",
        Duration::from_secs(120),
        || async { full_isr(&admin, &topic).then_some(()) },
    )
    .await;
    produce(&producer, &topic, 50)
        .await
        .expect("acks=all succeeds again after the brokers return");
}
