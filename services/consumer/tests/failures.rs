//! R7: what happens when events or the sink fail. A record that is not a CloudEvent goes to
//! the dead-letter topic while the rest flow; a sink down for a while gets everything once
//! it is back; a 400 dead-letters at once; `Retry-After` is obeyed; with no dead-letter
//! topic a failed event blocks its key and the consumer says so.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bridge_e2e::eventually;
use event_consumer::dead_letter::header as dlt;
use rdkafka::message::{Headers, Message};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_goes_to_the_dead_letter_topic_while_the_others_flow() {
    let stack = stack();
    let topic = create_topic(&stack, "poison", 2).await;
    let dead_letters = create_topic(&stack, "poison-dlt", 1).await;
    let sink = TestSink::accepting().await;
    let producer = producer(&stack);
    let before = events("k", 6, 3, "workflow.step");
    let after = events("late-k", 6, 3, "workflow.step");
    produce(&producer, &topic, &before).await;
    produce_raw(&producer, &topic, "k3", b"{ this is not a CloudEvent").await;
    produce(&producer, &topic, &after).await;

    let mut config = config(&stack, &[&topic], &sink);
    config.delivery.dead_letter_topic = Some(dead_letters.clone());
    let consumer = ConsumerProcess::start(&config);
    sink.wait_for_all(before.iter().chain(&after).map(|e| e.id()))
        .await;

    let records = read_topic(&stack, &dead_letters, 1).await;
    let poison = &records[0];
    assert_eq!(poison.payload(), Some(&b"{ this is not a CloudEvent"[..]));
    assert_eq!(poison.key(), Some(&b"k3"[..]));
    assert_eq!(
        header(poison, dlt::REASON).as_deref(),
        Some("invalid-event")
    );
    assert!(header(poison, dlt::ERROR).unwrap().contains("CloudEvent"));
    assert_eq!(header(poison, dlt::ATTEMPTS).as_deref(), Some("0"));
    assert_eq!(header(poison, dlt::SOURCE_TOPIC), Some(topic.clone()));
    let partition: i32 = header(poison, dlt::SOURCE_PARTITION)
        .unwrap()
        .parse()
        .unwrap();
    let offset: i64 = header(poison, dlt::SOURCE_OFFSET).unwrap().parse().unwrap();
    assert!(partition < 2 && offset >= 0);
    assert_eq!(
        consumer
            .metric("event_consumer_events_dead_lettered_total{reason=\"invalid-event\"}")
            .await,
        Some(1.0)
    );
    eventually(
        "the poison record's partition to be committed to its end",
        WAIT,
        || {
            let done =
                committed(&stack, &config.group_id, &topic, 2) == end_offsets(&stack, &topic, 2);
            async move { done.then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_answering_503_for_a_while_gets_every_event_once_it_recovers() {
    let stack = stack();
    let topic = create_topic(&stack, "outage", 3).await;
    let dead_letters = create_topic(&stack, "outage-dlt", 1).await;
    // Down for 8 s from its first request: far longer than the five attempts with
    // backoff up to 500 ms take (about 1.5 s), so only the circuit breaker saves them.
    let outage = Duration::from_secs(8);
    let first_request = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let sink = TestSink::start({
        let first_request = first_request.clone();
        move |_, _| {
            let started = *first_request
                .lock()
                .unwrap()
                .get_or_insert_with(Instant::now);
            if started.elapsed() < outage {
                Reply::status(503)
            } else {
                Reply::ok()
            }
        }
    })
    .await;
    let sent = events("k", 10, 5, "workflow.step");
    produce(&producer(&stack), &topic, &sent).await;

    let mut config = config(&stack, &[&topic], &sink);
    config.delivery.dead_letter_topic = Some(dead_letters.clone());
    let consumer = ConsumerProcess::start(&config);
    let (_, reason) = eventually(
        "/readyz to report the open circuit breaker",
        WAIT,
        || async {
            match consumer.readyz().await {
                Some((503, reason)) if reason.contains("circuit breaker open") => {
                    Some(((), reason))
                }
                _ => None,
            }
        },
    )
    .await;
    assert!(reason.contains(&sink.url()), "{reason}");

    sink.wait_for_all(sent.iter().map(|e| e.id())).await;
    consumer.wait_ready().await;
    assert_eq!(
        end_offsets(&stack, &dead_letters, 1),
        [0],
        "nothing was dead-lettered"
    );
    let retried = consumer
        .metric("event_consumer_delivery_retries_total")
        .await
        .unwrap();
    assert!(retried > 0.0);
    let failed = sink.requests().iter().filter(|r| r.status == 503).count();
    assert!(failed > 0, "the sink did refuse events for a while");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_sends_the_event_to_the_dead_letter_topic_at_once_and_its_key_goes_on() {
    let stack = stack();
    let topic = create_topic(&stack, "refused", 2).await;
    let dead_letters = create_topic(&stack, "refused-dlt", 1).await;
    let sink = TestSink::start(|request, _| {
        if request.id == "k1-2" {
            Reply::status(400)
        } else {
            Reply::ok()
        }
    })
    .await;
    let sent = events("k", 4, 5, "workflow.step");
    produce(&producer(&stack), &topic, &sent).await;

    let mut config = config(&stack, &[&topic], &sink);
    config.delivery.dead_letter_topic = Some(dead_letters.clone());
    let consumer = ConsumerProcess::start(&config);
    sink.wait_for_all(sent.iter().map(|e| e.id()).filter(|id| id != "k1-2"))
        .await;

    let records = read_topic(&stack, &dead_letters, 1).await;
    let refused = &records[0];
    assert_eq!(header(refused, dlt::REASON).as_deref(), Some("rejected"));
    assert_eq!(header(refused, dlt::ATTEMPTS).as_deref(), Some("1"));
    assert_eq!(header(refused, dlt::LAST_STATUS).as_deref(), Some("400"));
    assert_eq!(header(refused, "ce_id").as_deref(), Some("k1-2"));
    assert_eq!(refused.key(), Some(&b"k1"[..]));
    // The record as it was read: its value, and its headers first and in order.
    let original = sent
        .iter()
        .find(|e| e.id() == "k1-2")
        .unwrap()
        .cloud_event();
    assert_eq!(refused.payload(), Some(&original.data[..]));
    let original_headers: Vec<_> = original
        .to_kafka_headers()
        .iter()
        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
        .collect();
    let kept_headers: Vec<_> = refused
        .headers()
        .unwrap()
        .iter()
        .take(original_headers.len())
        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
        .collect();
    assert_eq!(kept_headers, original_headers);
    let tries = sink.requests().iter().filter(|r| r.id == "k1-2").count();
    assert_eq!(tries, 1, "a 400 is not retried");
    assert!(sink.out_of_order().is_empty(), "{:?}", sink.out_of_order());
    assert_eq!(
        consumer
            .metric("event_consumer_events_dead_lettered_total{reason=\"rejected\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_obeyed_even_beyond_the_maximum_backoff() {
    let stack = stack();
    let topic = create_topic(&stack, "retry-after", 1).await;
    let sink = TestSink::start(|request, attempt| {
        if request.id == "k0-0" && attempt == 1 {
            Reply {
                retry_after: Some("2".into()),
                ..Reply::status(429)
            }
        } else {
            Reply::ok()
        }
    })
    .await;
    let sent = events("k", 1, 1, "workflow.step");
    produce(&producer(&stack), &topic, &sent).await;

    // maxBackoff is 500 ms: only Retry-After explains a wait of 2 s.
    let config = config(&stack, &[&topic], &sink);
    let _consumer = ConsumerProcess::start(&config);
    sink.wait_for_all(["k0-0".to_owned()]).await;

    let requests = sink.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(requests[0].status, 429);
    let waited = requests[1].at - requests[0].at;
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_dead_letter_topic_a_failed_event_blocks_its_key_and_readyz_says_so() {
    let stack = stack();
    let topic = create_topic(&stack, "blocked", 1).await;
    let sink_fixed = Arc::new(AtomicBool::new(false));
    let sink = TestSink::start({
        let sink_fixed = sink_fixed.clone();
        move |request, _| {
            if request.id == "k0-1" && !sink_fixed.load(Ordering::SeqCst) {
                Reply::status(500)
            } else {
                Reply::ok()
            }
        }
    })
    .await;
    let sent = events("k", 3, 4, "workflow.step");
    produce(&producer(&stack), &topic, &sent).await;

    let mut config = config(&stack, &[&topic], &sink);
    config.delivery.retry.attempts = 2;
    let consumer = ConsumerProcess::start(&config);

    // Other keys flow; k0 stops at its failed event.
    let others: Vec<String> = sent
        .iter()
        .filter(|e| e.key != "k0")
        .map(|e| e.id())
        .collect();
    sink.wait_for_all(others).await;
    let (_, reason) = eventually("/readyz to report the blocked event", WAIT, || async {
        match consumer.readyz().await {
            Some((503, reason)) if reason.contains("no dead-letter topic") => Some(((), reason)),
            _ => None,
        }
    })
    .await;
    assert!(reason.contains(&format!("{topic}/0@")), "{reason}");
    assert_eq!(
        consumer.metric("event_consumer_events_blocked").await,
        Some(1.0)
    );
    let accepted = sink.accepted();
    assert!(accepted.contains_key("k0-0"));
    for later in ["k0-1", "k0-2", "k0-3"] {
        assert!(
            !accepted.contains_key(later),
            "{later} overtook the blocked event"
        );
    }
    // Events are written round-robin over the keys, so k0-1 is at offset 3: the commit
    // stops right there, however far the other keys got.
    eventually("the commit to stop at the blocked event", WAIT, || {
        let at_blocked = committed(&stack, &config.group_id, &topic, 1) == [3];
        async move { at_blocked.then_some(()) }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(committed(&stack, &config.group_id, &topic, 1), [3]);

    sink_fixed.store(true, Ordering::SeqCst);
    sink.wait_for_all(sent.iter().map(|e| e.id())).await;
    consumer.wait_ready().await;
    assert!(sink.out_of_order().is_empty(), "{:?}", sink.out_of_order());
    assert_eq!(
        consumer.metric("event_consumer_events_blocked").await,
        Some(0.0)
    );
}
