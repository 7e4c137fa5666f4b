//! `hook-receiver --drain`, as the drain Job of a replica that was scaled away runs it: a
//! receiver spools while Kafka is unreachable (a port nothing listens on, so the shared
//! brokers are not disturbed); a drain started meanwhile waits for the spool's lock,
//! answering `/healthz`; once the receiver has stopped, the drain empties the spool into
//! the real brokers, every event once, and exits 0 with its termination message.
//! Beside it: SIGTERM drains the spool into Kafka before the receiver exits.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test]
async fn a_drain_waits_for_the_spools_owner_then_delivers_every_spooled_event_once_and_exits_0() {
    let stack = stack();
    let topic = create_topic(&stack, 6).await;
    // A short bound: Kafka is away, so the shutdown drain cannot empty the spool.
    let (mut receiver, with_kafka) = spooling_receiver(
        &stack,
        &topic,
        "drain",
        "drain-token",
        "shutdownTimeout: 6s",
    )
    .await;
    let load = KeyedLoad::start(format!("{}/steps", receiver.url), 4, "drain-token");
    load.wait_answered(80, Duration::from_secs(60)).await;
    let acknowledged = load.stop().await;
    assert!(
        acknowledged
            .iter()
            .all(|(_, _, status)| status == "spooled")
    );

    let spool: serde_json::Value = reqwest::get(format!("{}/spool", receiver.admin_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spool["records"], acknowledged.len() as u64, "{spool}");
    assert!(spool["bytes"].as_u64().unwrap() > 0, "{spool}");
    assert_eq!(spool["draining"], false, "Kafka is away: {spool}");

    // The drain Job's config: the real brokers, an admin port of its own.
    let receiver_admin = receiver.admin_url.trim_start_matches("http://").to_owned();
    let drain_admin = format!("127.0.0.1:{}", free_port());
    let drain_config = receiver.dir.join("drain.yaml");
    std::fs::write(
        &drain_config,
        with_kafka.replace(&receiver_admin, &drain_admin),
    )
    .unwrap();
    let mut drain = DrainProcess::start(&receiver.dir, &drain_config);

    let waiting = bridge_e2e::eventually(
        "the drain to wait for the spool's lock",
        Duration::from_secs(20),
        || {
            let readyz = format!("http://{drain_admin}/readyz");
            async move {
                let response = reqwest::get(&readyz).await.ok()?;
                let (status, reason) = (response.status(), response.text().await.ok()?);
                (status == 503 && reason.starts_with("waiting for the spool's lock"))
                    .then_some(reason)
            }
        },
    )
    .await;
    assert!(waiting.contains("spool.lock"), "{waiting}");
    let health = reqwest::get(format!("http://{drain_admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "alive while it waits");
    let spool_while_waiting = reqwest::get(format!("http://{drain_admin}/spool"))
        .await
        .unwrap();
    assert_eq!(spool_while_waiting.status(), 503);
    assert!(drain.child.try_wait().unwrap().is_none(), "{}", drain.log());

    receiver.signal("TERM");
    assert_eq!(
        receiver.wait_exit(Duration::from_secs(30)).await,
        Some(0),
        "{}",
        receiver.log()
    );
    let exit = drain.wait_exit(Duration::from_secs(120)).await;
    assert_eq!(exit.code(), Some(0), "{}", drain.log());

    let messages = read_topic(&stack, &topic, acknowledged.len(), Duration::from_secs(60)).await;
    let duplicates = assert_all_arrived_in_key_order(&acknowledged, &messages);
    assert_eq!(duplicates, 0, "every spooled event once");
    assert_eq!(messages.len(), acknowledged.len());
    let spool_dir = receiver.dir.join("spool");
    assert_eq!(
        std::fs::read_to_string(&drain.termination_log).unwrap(),
        format!(
            "drained {} events from {}\n",
            acknowledged.len(),
            spool_dir.display()
        )
    );
    let segments_left = segments_in(&spool_dir);
    assert_eq!(segments_left, 0, "drained segments are deleted");
    eprintln!(
        "drain: {} spooled, {} on Kafka after the drain",
        acknowledged.len(),
        messages.len()
    );
}

/// SIGTERM does not leave a drainable spool behind: after intake stops, the receiver goes
/// on draining into Kafka until the spool is empty (within `shutdownTimeout`). The spool
/// is held back first by a topic Kafka does not have yet (as after a whole-cluster
/// restart, without disturbing the shared brokers); the topic appears after the signal.
#[tokio::test]
async fn sigterm_drains_the_spool_into_kafka_before_the_receiver_exits() {
    let stack = stack();
    let topic = bridge_e2e::unique_name("receiver-stopping");
    let (mut receiver, with_kafka) = spooling_receiver(
        &stack,
        &topic,
        "shutdown-drain",
        "stop-token",
        "shutdownTimeout: 30s",
    )
    .await;
    let load = KeyedLoad::start(format!("{}/steps", receiver.url), 4, "stop-token");
    load.wait_answered(40, Duration::from_secs(60)).await;
    let acknowledged = load.stop().await;
    receiver.signal("KILL");
    receiver.wait_exit(Duration::from_secs(10)).await;

    std::fs::write(&receiver.config_path, &with_kafka).unwrap();
    receiver.spawn().await;
    bridge_e2e::eventually(
        "the drain to wait for the topic",
        Duration::from_secs(20),
        || {
            let log = receiver.log();
            async move {
                log.contains("cannot take the spooled records yet")
                    .then_some(())
            }
        },
    )
    .await;
    receiver.signal("TERM");
    create_named_topic(&stack, &topic, 6).await;
    assert_eq!(
        receiver.wait_exit(Duration::from_secs(35)).await,
        Some(0),
        "{}",
        receiver.log()
    );

    let log = receiver.log();
    assert!(
        log.contains("draining the spool into Kafka before exit"),
        "{log}"
    );
    assert!(log.contains("the spool is drained"), "{log}");
    let messages = read_topic(&stack, &topic, acknowledged.len(), Duration::from_secs(30)).await;
    assert_eq!(assert_all_arrived_in_key_order(&acknowledged, &messages), 0);
    let segments_left = segments_in(&receiver.dir.join("spool"));
    assert_eq!(segments_left, 0, "the claim is left empty");
}

/// How many spool segment files `dir` holds.
fn segments_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|entry| {
            entry
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("segment-")
        })
        .count()
}
