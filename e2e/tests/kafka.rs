//! The local Kafka is three real brokers: replication factor 3 is real, and the idempotent
//! `acks=all` producer path our services use round-trips records exactly.

use std::collections::HashSet;
use std::time::Duration;

use bridge_e2e::{Stack, eventually, unique_name};
use futures::future::join_all;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Message, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(30);

async fn create_topic(stack: &Stack, partitions: i32) -> String {
    let admin: AdminClient<DefaultClientContext> = stack.kafka_config().create().unwrap();
    let name = unique_name("e2e-topic");
    let results = admin
        .create_topics(
            &[NewTopic::new(&name, partitions, TopicReplication::Fixed(3))],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        )
        .await
        .unwrap();
    results.into_iter().next().unwrap().expect("topic created");
    name
}

#[tokio::test]
async fn topic_created_with_replication_factor_3_has_3_replicas_per_partition() {
    let stack = Stack::from_env().unwrap();
    let topic = create_topic(&stack, 3).await;
    let admin: AdminClient<DefaultClientContext> = stack.kafka_config().create().unwrap();
    // A new topic reaches every broker's metadata cache a moment after CreateTopics returns.
    let metadata = eventually(
        "the topic's metadata with 3 partitions",
        TIMEOUT,
        || async {
            let metadata = admin.inner().fetch_metadata(Some(&topic), TIMEOUT).ok()?;
            let described = metadata.topics().first()?;
            (described.error().is_none() && described.partitions().len() == 3).then_some(metadata)
        },
    )
    .await;
    assert_eq!(metadata.brokers().len(), 3);
    let described = &metadata.topics()[0];
    assert_eq!(described.partitions().len(), 3);
    for partition in described.partitions() {
        let mut replicas = partition.replicas().to_vec();
        replicas.sort();
        assert_eq!(replicas, [1, 2, 3], "partition {}", partition.id());
        assert_eq!(partition.isr().len(), 3, "partition {}", partition.id());
    }
}

#[tokio::test]
async fn ten_thousand_idempotent_acks_all_records_are_consumed_back_exactly() {
    const RECORDS: usize = 10_000;
    let stack = Stack::from_env().unwrap();
    let topic = create_topic(&stack, 3).await;

    let producer: FutureProducer = stack
        .kafka_config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let payloads: Vec<String> = (0..RECORDS).map(|i| format!("record-{i}")).collect();
    let deliveries = payloads.iter().enumerate().map(|(i, payload)| {
        let key = format!("key-{}", i % 100);
        let (producer, topic) = (&producer, &topic);
        async move {
            producer
                .send(
                    FutureRecord::to(topic).key(&key).payload(payload),
                    Timeout::After(TIMEOUT),
                )
                .await
                .map_err(|(error, _)| error)
        }
    });
    for delivery in join_all(deliveries).await {
        delivery.expect("acknowledged by all in-sync replicas");
    }

    let consumer: StreamConsumer = stack
        .kafka_config()
        .set("group.id", unique_name("e2e-group"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = TopicPartitionList::new();
    for partition in 0..3 {
        assignment
            .add_partition_offset(&topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let mut seen = HashSet::new();
    while seen.len() < RECORDS {
        let message = tokio::time::timeout(TIMEOUT, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {RECORDS} records came back", seen.len()))
            .unwrap();
        let payload = String::from_utf8(message.payload().unwrap().to_vec()).unwrap();
        assert!(seen.insert(payload.clone()), "{payload} was consumed twice");
    }
    let expected: HashSet<String> = payloads.into_iter().collect();
    assert_eq!(seen, expected);

    // Exactly: the log holds no more records than were sent (the idempotent producer wrote
    // no duplicates on retries).
    let mut total = 0;
    for partition in 0..3 {
        let (low, high) = consumer
            .fetch_watermarks(&topic, partition, TIMEOUT)
            .unwrap();
        total += high - low;
    }
    assert_eq!(total, RECORDS as i64);
}
