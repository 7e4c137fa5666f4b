//! R3: the receiver is SIGKILLed while it spools under load, its last spool record is torn
//! as a crash mid-write leaves it, and it is started again: it comes up, and every event it
//! answered 2xx arrives on Kafka in per-key order. Kafka is kept away from the first run by
//! pointing it at a port nothing listens on, so the shared brokers are not disturbed.
//! Beside it: a spool left for a topic Kafka cannot take yet waits, and drains in order
//! once the topic is there.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

#[tokio::test]
async fn a_killed_receiver_with_a_torn_spool_recovers_and_delivers_every_acknowledged_event() {
    let stack = stack();
    let topic = create_topic(&stack, 6).await;
    let (mut receiver, with_kafka) =
        spooling_receiver(&stack, &topic, "crash", "crash-token", "").await;

    let load = KeyedLoad::start(format!("{}/steps", receiver.url), 4, "crash-token");
    load.wait_answered(60, Duration::from_secs(60)).await;
    receiver.signal("KILL");
    receiver.wait_exit(Duration::from_secs(10)).await;
    let acknowledged = load.stop().await;
    assert!(
        acknowledged
            .iter()
            .all(|(_, _, status)| status == "spooled"),
        "Kafka was unreachable, so all were spooled"
    );

    // A crash in the middle of an append leaves half a record at the end of the last segment.
    let mut segments: Vec<_> = std::fs::read_dir(receiver.dir.join("spool"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    let last = segments.last().expect("the spool has a segment");
    let mut file = std::fs::OpenOptions::new().append(true).open(last).unwrap();
    file.write_all(&[200, 1, 0, 0, 0xde, 0xad, 0xbe, 0xef, b'{', b'"'])
        .unwrap();
    drop(file);

    std::fs::write(&receiver.config_path, &with_kafka).unwrap();
    receiver.spawn().await;
    assert!(receiver.log().contains("torn record"), "{}", receiver.log());

    let messages = read_topic(&stack, &topic, acknowledged.len(), Duration::from_secs(60)).await;
    let duplicates = assert_all_arrived_in_key_order(&acknowledged, &messages);
    eprintln!(
        "R3: {} acknowledged, {} on Kafka, {duplicates} duplicates",
        acknowledged.len(),
        messages.len()
    );
    let text = receiver.metrics().await;
    assert_eq!(
        metric(&text, "hook_receiver_spool_records"),
        Some(0.0),
        "{text}"
    );
}

/// What a drain meets after a whole-cluster restart, without stopping the shared brokers:
/// Kafka answers, but the spooled records' partitions have no leader yet (here: their
/// topic does not exist yet). The drain waits and says why; once the partitions are led
/// it delivers every spooled event, in per-key order, and the spool is empty.
#[tokio::test]
async fn a_spool_for_partitions_without_a_leader_waits_and_drains_in_order_once_they_have_one() {
    let stack = stack();
    let topic = bridge_e2e::unique_name("receiver-late");
    let (mut receiver, with_kafka) =
        spooling_receiver(&stack, &topic, "late-topic", "late-token", "").await;
    let load = KeyedLoad::start(format!("{}/steps", receiver.url), 4, "late-token");
    load.wait_answered(40, Duration::from_secs(60)).await;
    let acknowledged = load.stop().await;
    receiver.signal("TERM");
    assert_eq!(receiver.wait_exit(Duration::from_secs(30)).await, Some(0));

    std::fs::write(&receiver.config_path, &with_kafka).unwrap();
    receiver.spawn().await;
    let log = bridge_e2e::eventually(
        "the drain to wait for the topic's partitions",
        Duration::from_secs(20),
        || {
            let log = receiver.log();
            async move {
                log.contains("cannot take the spooled records yet")
                    .then_some(log)
            }
        },
    )
    .await;
    assert!(log.contains("UnknownTopicOrPartition"), "{log}");
    let text = receiver.metrics().await;
    assert_eq!(
        metric(&text, "hook_receiver_drained_records_total"),
        Some(0.0),
        "nothing is drained before the partitions are led: {text}"
    );

    create_named_topic(&stack, &topic, 6).await;
    let messages = read_topic(&stack, &topic, acknowledged.len(), Duration::from_secs(25)).await;
    let duplicates = assert_all_arrived_in_key_order(&acknowledged, &messages);
    assert_eq!(duplicates, 0, "nothing was sent before the topic existed");
    assert!(
        receiver
            .log()
            .contains("Kafka leads the spooled records' partitions again"),
        "{}",
        receiver.log()
    );
    eprintln!(
        "late topic: {} spooled, {} on Kafka once the topic was created",
        acknowledged.len(),
        messages.len()
    );
}
