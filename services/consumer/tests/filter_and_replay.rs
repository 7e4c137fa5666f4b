//! The type filter skips and commits what it does not take; replay moves a stopped group
//! back to a time so the consumer delivers again from there, and refuses while it runs.

mod support;

use std::time::Duration;

use bridge_e2e::eventually;
use event_consumer::{ReplayError, replay_group_to_time};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_filter_does_not_take_are_skipped_and_committed() {
    let stack = stack();
    let topic = create_topic(&stack, "filtered", 2).await;
    let sink = TestSink::accepting().await;
    let wanted = events("wf-", 4, 3, "workflow.task.completed");
    // Written last, so only their commit can bring the group to the end of the topic.
    let unwanted = events("audit-", 4, 3, "audit.login");
    let producer = producer(&stack);
    produce(&producer, &topic, &wanted).await;
    produce(&producer, &topic, &unwanted).await;

    let mut config = config(&stack, &[&topic], &sink);
    config.filter.types = vec!["workflow.*".into()];
    let consumer = ConsumerProcess::start(&config);
    sink.wait_for_all(wanted.iter().map(|e| e.id())).await;
    eventually("the group to commit the end of the topic", WAIT, || {
        let done = committed(&stack, &config.group_id, &topic, 2) == end_offsets(&stack, &topic, 2);
        async move { done.then_some(()) }
    })
    .await;

    assert!(
        sink.requests()
            .iter()
            .all(|r| r.ty.starts_with("workflow.")),
        "only workflow events reach the sink"
    );
    assert_eq!(
        consumer
            .metric("event_consumer_events_filtered_total")
            .await,
        Some(unwanted.len() as f64)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_to_a_time_delivers_again_from_there_and_only_while_the_group_is_stopped() {
    let stack = stack();
    let topic = create_topic(&stack, "replay", 2).await;
    let sink = TestSink::accepting().await;
    let producer = producer(&stack);
    let old = events("old-", 4, 3, "workflow.step");
    produce(&producer, &topic, &old).await;

    let config = config(&stack, &[&topic], &sink);
    let kafka = config.kafka.client_config();
    let mut consumer = ConsumerProcess::start(&config);
    sink.wait_for_all(old.iter().map(|e| e.id())).await;
    // Kafka timestamps are milliseconds: keep the two batches apart.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let replay_from = now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let recent = events("recent-", 4, 3, "workflow.step");
    produce(&producer, &topic, &recent).await;
    sink.wait_for_all(recent.iter().map(|e| e.id())).await;

    let topics = vec![topic.clone()];
    let refused = replay_group_to_time(
        &kafka,
        &config.group_id,
        &topics,
        replay_from,
        Duration::from_secs(10),
    )
    .unwrap_err();
    assert!(
        matches!(refused, ReplayError::GroupActive { .. }),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("stop its consumers"),
        "{refused}"
    );

    assert!(consumer.terminate().success());
    let moved = replay_group_to_time(
        &kafka,
        &config.group_id,
        &topics,
        replay_from,
        Duration::from_secs(10),
    )
    .expect("the replay of a stopped group");
    assert_eq!(moved.len(), 2, "{moved:?}");

    let _restarted = ConsumerProcess::start(&config);
    eventually("the recent events to be delivered again", WAIT, || {
        let accepted = sink.accepted();
        let again = recent.iter().all(|e| accepted.get(&e.id()) == Some(&2));
        async move { again.then_some(()) }
    })
    .await;
    let accepted = sink.accepted();
    assert!(
        old.iter().all(|e| accepted.get(&e.id()) == Some(&1)),
        "events before the replay time are not delivered again"
    );
}
