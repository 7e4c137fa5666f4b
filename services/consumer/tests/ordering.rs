//! Ordering modes under concurrency: `key` keeps each key's order while keys are delivered
//! side by side; `partition` delivers one event per partition at a time; `unordered` runs
//! freely and loses nothing.

mod support;

use std::time::Duration;

use bridge_api::event_consumer::Ordering;
use support::*;

/// A sink that takes 0-4 ms per request, so concurrent deliveries overlap and finish out
/// of order unless the consumer orders them.
async fn jittery_sink() -> TestSink {
    TestSink::start(|request, _| Reply {
        delay: Duration::from_millis(u64::from(request.seq % 5)),
        ..Reply::ok()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_ordering_keeps_each_keys_order_while_keys_run_in_parallel() {
    let stack = stack();
    let topic = create_topic(&stack, "by-key", 3).await;
    let sink = jittery_sink().await;
    let sent = events("wf-", 30, 20, "workflow.step");
    produce(&producer(&stack), &topic, &sent).await;

    let mut config = config(&stack, &[&topic], &sink);
    config.delivery.ordering = Ordering::Key;
    config.delivery.max_in_flight = 64;
    let _consumer = ConsumerProcess::start(&config);
    sink.wait_for_all(sent.iter().map(|e| e.id())).await;

    assert!(
        sink.max_in_flight() > 3,
        "keys were delivered in parallel, not one per partition ({} at once)",
        sink.max_in_flight()
    );
    let twice = sink.accepted_twice();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert!(
        sink.out_of_order().is_empty(),
        "events overtook earlier ones of their key: {:?}",
        sink.out_of_order()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_ordering_delivers_one_event_per_partition_at_a_time() {
    let stack = stack();
    let topic = create_topic(&stack, "by-partition", 1).await;
    let sink = jittery_sink().await;
    let sent = events("wf-", 10, 10, "workflow.step");
    produce(&producer(&stack), &topic, &sent).await;

    let mut config = config(&stack, &[&topic], &sink);
    config.delivery.ordering = Ordering::Partition;
    let _consumer = ConsumerProcess::start(&config);
    sink.wait_for_all(sent.iter().map(|e| e.id())).await;

    assert_eq!(sink.max_in_flight(), 1);
    let delivered: Vec<String> = sink.requests().iter().map(|r| r.id.clone()).collect();
    let written: Vec<String> = sent.iter().map(|e| e.id()).collect();
    assert_eq!(
        delivered, written,
        "delivered in the order of the partition"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unordered_delivery_runs_freely_and_loses_nothing() {
    let stack = stack();
    let topic = create_topic(&stack, "unordered", 3).await;
    let sink = jittery_sink().await;
    // Few keys: in `key` mode these could not run more than three at a time.
    let sent = events("wf-", 3, 100, "workflow.step");
    produce(&producer(&stack), &topic, &sent).await;

    let mut config = config(&stack, &[&topic], &sink);
    config.delivery.ordering = Ordering::Unordered;
    config.delivery.max_in_flight = 32;
    let _consumer = ConsumerProcess::start(&config);
    sink.wait_for_all(sent.iter().map(|e| e.id())).await;

    assert!(
        sink.max_in_flight() > 3,
        "events of one key were delivered side by side ({} at once)",
        sink.max_in_flight()
    );
    assert!(
        sink.max_in_flight() <= 32,
        "maxInFlight bounds the requests"
    );
    assert_eq!(sink.accepted().len(), sent.len());
}
