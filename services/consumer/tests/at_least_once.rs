//! At least once, with the consumer as a real process: a clean stop commits what is done, a
//! killed consumer loses nothing after restart, and a replica joining and leaving the group
//! loses nothing either.

mod support;

use std::time::Duration;

use bridge_e2e::eventually;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_as_binary_cloud_events_and_sigterm_commits_what_was_delivered() {
    let stack = stack();
    let topic = create_topic(&stack, "delivered", 3).await;
    let lifecycle_topic = create_topic(&stack, "lifecycle", 1).await;
    let sink = TestSink::accepting().await;
    let sent = events("flow-", 10, 5, "workflow.task.completed");
    produce(&producer(&stack), &topic, &sent).await;

    let mut config = config(&stack, &[&topic], &sink);
    config.lifecycle_topic = lifecycle_topic.clone();
    let mut consumer = ConsumerProcess::start(&config);
    sink.wait_for_all(sent.iter().map(|e| e.id())).await;
    consumer.wait_ready().await;

    let requests = sink.requests();
    let first = requests.iter().find(|r| r.id == "flow-3-2").unwrap();
    assert_eq!(first.ty, "workflow.task.completed");
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(
        first.traceparent,
        TestEvent::new("flow-3", 2, "").cloud_event().traceparent,
        "the traceparent travels to the sink unchanged"
    );
    assert_eq!(first.key, "flow-3");
    assert_eq!(
        consumer
            .metric("event_consumer_events_delivered_total")
            .await,
        Some(sent.len() as f64)
    );

    let status = consumer.terminate();
    assert!(status.success(), "SIGTERM ends the consumer with {status}");
    assert_eq!(
        committed(&stack, &config.group_id, &topic, 3),
        end_offsets(&stack, &topic, 3),
        "everything delivered is committed on SIGTERM"
    );

    // Started again, the group has nothing left to deliver.
    let restarted = ConsumerProcess::start(&config);
    restarted.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let duplicates = sink.accepted_twice();
    assert!(
        duplicates.is_empty(),
        "delivered again after a clean stop: {duplicates:?}"
    );

    let phases: Vec<String> = read_topic(&stack, &lifecycle_topic, 3)
        .await
        .iter()
        .filter_map(|r| header(r, "ce_type"))
        .collect();
    assert_eq!(
        &phases[..3],
        [
            "io.omninode.bridge.service.starting",
            "io.omninode.bridge.service.ready",
            "io.omninode.bridge.service.stopping"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_mid_stream_delivers_everything_after_restart() {
    let stack = stack();
    let topic = create_topic(&stack, "killed", 6).await;
    let sink = TestSink::start(|_, _| Reply {
        delay: Duration::from_millis(2),
        ..Reply::ok()
    })
    .await;
    let sent = events("order-", 50, 40, "workflow.step");
    produce(&producer(&stack), &topic, &sent).await;

    let config = config(&stack, &[&topic], &sink);
    let mut consumer = ConsumerProcess::start(&config);
    let quarter = sent.len() / 4;
    eventually("a quarter of the events to arrive", WAIT, || {
        let count = sink.accepted().len();
        async move { (count >= quarter).then_some(()) }
    })
    .await;
    consumer.kill();
    let before_restart = sink.accepted().len();
    assert!(
        before_restart < sent.len(),
        "the consumer was killed mid-stream, not after the end"
    );

    let _restarted = ConsumerProcess::start(&config);
    sink.wait_for_all(sent.iter().map(|e| e.id())).await;
    let accepted = sink.accepted();
    let duplicates: u32 = accepted.values().map(|n| n - 1).sum();
    eprintln!(
        "{} events, {before_restart} delivered before SIGKILL, {duplicates} delivered twice after restart",
        sent.len()
    );
    assert_eq!(accepted.len(), sent.len(), "no event is skipped");
    eventually(
        "the group to commit the end of every partition",
        WAIT,
        || {
            let done =
                committed(&stack, &config.group_id, &topic, 6) == end_offsets(&stack, &topic, 6);
            async move { done.then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_replica_joining_and_leaving_loses_nothing() {
    let stack = stack();
    let topic = create_topic(&stack, "replicas", 6).await;
    let sink = TestSink::start(|_, _| Reply {
        delay: Duration::from_millis(5),
        ..Reply::ok()
    })
    .await;
    let producer = producer(&stack);
    let config = config(&stack, &[&topic], &sink);
    let _first = ConsumerProcess::start(&config);

    let mut sent = events("before-k", 20, 15, "workflow.step");
    produce(&producer, &topic, &sent).await;

    let mut second_config = config.clone();
    second_config.admin_listen = support::config(&stack, &[&topic], &sink).admin_listen;
    let mut second = ConsumerProcess::start(&second_config);
    // Keep events coming until the group has rebalanced and the new replica delivers.
    let mut batch = 0;
    eventually("the second replica to deliver its share", WAIT, || {
        batch += 1;
        let more = events(&format!("during{batch}-k"), 12, 5, "workflow.step");
        sent.extend(more.iter().cloned());
        let (producer, topic, second) = (&producer, &topic, &second);
        async move {
            produce(producer, topic, &more).await;
            let delivered = second
                .metric("event_consumer_events_delivered_total")
                .await
                .unwrap_or_default();
            (delivered > 0.0).then_some(())
        }
    })
    .await;
    assert!(second.terminate().success());
    let after = events("after-k", 20, 15, "workflow.step");
    produce(&producer, &topic, &after).await;
    sent.extend(after);

    sink.wait_for_all(sent.iter().map(|e| e.id())).await;
    let duplicates: u32 = sink.accepted().values().map(|n| n - 1).sum();
    eprintln!(
        "{} events while a replica joined and left: {duplicates} delivered twice",
        sent.len()
    );
}

/// With the default `startFrom: latest`, an event that arrives after the consumer joined
/// and is still being retried when the consumer is killed is delivered by its successor:
/// the group's start was committed when the partition was assigned, so the successor does
/// not start at the (later) end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_during_its_first_retries_leaves_them_to_its_successor() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stack = stack();
    let topic = create_topic(&stack, "first-retries", 1).await;
    let sink_up = Arc::new(AtomicBool::new(false));
    let sink = TestSink::start({
        let sink_up = sink_up.clone();
        move |_, _| {
            if sink_up.load(Ordering::SeqCst) {
                Reply::ok()
            } else {
                Reply::status(503)
            }
        }
    })
    .await;
    let mut config = config(&stack, &[&topic], &sink);
    config.start_from = event_consumer::config::StartFrom::Latest;
    config.delivery.retry.attempts = 1_000;
    let mut consumer = ConsumerProcess::start(&config);
    consumer.wait_ready().await;

    let sent = events("first-", 1, 3, "workflow.step");
    produce(&producer(&stack), &topic, &sent).await;
    eventually("the sink to refuse the first event", WAIT, || {
        let tried = !sink.requests().is_empty();
        async move { tried.then_some(()) }
    })
    .await;
    consumer.kill();
    assert!(sink.accepted().is_empty());

    sink_up.store(true, Ordering::SeqCst);
    let _successor = ConsumerProcess::start(&config);
    sink.wait_for_all(sent.iter().map(|e| e.id())).await;
}
