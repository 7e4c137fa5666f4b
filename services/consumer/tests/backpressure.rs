//! The `maxInFlight` bound: at it the consumer stops taking records; when the bound holds
//! for a second it pauses every partition, and once the sink lets the events go the
//! partitions resume and every event arrives, none lost and none twice.

mod support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bridge_e2e::eventually;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_held_for_a_second_pauses_the_partitions_and_a_released_sink_gets_everything() {
    let stack = stack();
    let topic = create_topic(&stack, "held", 3).await;
    // The sink holds every request until 4 s after its first one, then answers at once.
    let hold = Duration::from_secs(4);
    let first_request = Arc::new(Mutex::new(None::<Instant>));
    let sink = TestSink::start({
        let first_request = first_request.clone();
        move |_, _| {
            let release = *first_request
                .lock()
                .unwrap()
                .get_or_insert_with(Instant::now)
                + hold;
            Reply {
                delay: release.saturating_duration_since(Instant::now()),
                ..Reply::ok()
            }
        }
    })
    .await;
    let sent = events("k", 20, 5, "workflow.step");
    produce(&producer(&stack), &topic, &sent).await;

    let mut config = config(&stack, &[&topic], &sink);
    config.delivery.max_in_flight = 4;
    let consumer = ConsumerProcess::start(&config);

    // While the sink holds the first events, watch for the pause.
    let paused_after = loop {
        let first = *first_request.lock().unwrap();
        if let Some(first) = first {
            assert!(
                first.elapsed() < hold,
                "the partitions were not paused while the sink held the bound for {hold:?}"
            );
            if consumer.metric("event_consumer_partitions_paused").await == Some(1.0) {
                break first.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        paused_after >= Duration::from_millis(800),
        "paused {paused_after:?} after the first request: it should take no records at the \
         bound, and pause only once the bound has held for a second"
    );
    assert_eq!(
        consumer.metric("event_consumer_events_in_flight").await,
        Some(4.0)
    );

    sink.wait_for_all(sent.iter().map(|e| e.id())).await;
    let twice = sink.accepted_twice();
    assert!(twice.is_empty(), "delivered twice: {twice:?}");
    assert!(
        sink.max_in_flight() <= 4,
        "{} requests at once with maxInFlight 4",
        sink.max_in_flight()
    );
    assert!(sink.out_of_order().is_empty(), "{:?}", sink.out_of_order());
    eventually("the partitions to resume", WAIT, || async {
        (consumer.metric("event_consumer_partitions_paused").await == Some(0.0)).then_some(())
    })
    .await;
    eventually("every offset to be committed", WAIT, || {
        let done = committed(&stack, &config.group_id, &topic, 3) == end_offsets(&stack, &topic, 3);
        async move { done.then_some(()) }
    })
    .await;
}
